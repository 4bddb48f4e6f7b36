/* Unit tests of the router's budget ledger (router/ledger.c) against the
 * real state machine: each simulated node has its own ledger; its "lease
 * client" here builds budget_lease commands from the ledger, applies them
 * to one kp_fsm (as the leader would) and feeds the answers back, exactly
 * as node/lease.c does over Raft.
 *
 * Checked: a call reserves only what its node was granted; settles reach
 * the state machine once; a budget is never passed by any number of nodes
 * racing on it (randomized, with the invariant after every step); a
 * window rollover; a refusal once the room is gone; giving back what a
 * node cannot use; and a node that crashed counting its old grant as
 * spent, never reusing it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "raftstore/raftstore.h"
#include "router/router_internal.h"

#define T0   1767225600000LL /* 2026-01-01T00:00:00Z */
#define HOUR 3600000LL
#define DAY  86400000LL

#define LIMIT 1000000000LL /* $1 */

static struct kp_fsm *fsm;
static uint64_t next_index;
static struct kp_audit_ctx who = {.actor = (char *)"test", .role = (char *)"admin"};

struct node {
    uint64_t id;
    uint64_t seq;
    struct kp_budget_ledger *ledger;
};

static void apply(struct kp_command *cmd, struct kp_fsm_result *res)
{
    struct kp_buf buf;
    char errmsg[256];
    kp_buf_init(&buf);
    assert_int_equal(kp_command_encode(cmd, &buf, errmsg, sizeof(errmsg)), KP_OK);
    assert_int_equal(kp_fsm_apply(fsm, ++next_index, buf.data, buf.len, res), KP_OK);
    kp_buf_free(&buf);
}

static void put_policy(const char *kind)
{
    struct kp_budget b = {.name = (char *)"daily",
                          .window = KP_BUDGET_DAILY,
                          .limit_nanousd = LIMIT,
                          .kind = strcmp(kind, "hard") == 0 ? KP_BUDGET_HARD : KP_BUDGET_SOFT};
    struct kp_policy p = {0};
    p.e.id = (char *)"pol";
    p.scope_kind = KP_SCOPE_GLOBAL;
    p.budgets = &b;
    p.nbudgets = 1;
    struct kp_command cmd = {
        .v = KP_COMMAND_VERSION, .op = KP_OP_PUT_POLICY, .ts = T0, .audit = who, .body.policy = &p};
    struct kp_fsm_result res;
    apply(&cmd, &res);
    assert_int_equal(res.code, KP_OK);
}

static int setup(void **state)
{
    (void)state;
    next_index = 0;
    fsm = kp_fsm_new();
    return fsm == NULL;
}

static int teardown(void **state)
{
    (void)state;
    kp_fsm_free(fsm);
    return 0;
}

static void node_init(struct node *n, uint64_t id)
{
    n->id = id;
    n->seq = 0;
    n->ledger = kp_budget_ledger_new(NULL, NULL);
    assert_non_null(n->ledger);
}

/* One round of the node's lease client: build, apply, answer. Returns
 * the number of items sent. */
static unsigned exchange(struct node *n, int64_t now, bool final)
{
    static struct kp_lease_batch b;
    if (kp_budget_ledger_build(n->ledger, now, final, &b) == 0)
        return 0;
    struct kp_cmd_budget_lease body = {n->id, ++n->seq, b.items, b.n};
    struct kp_command cmd = {.v = KP_COMMAND_VERSION,
                             .op = KP_OP_BUDGET_LEASE,
                             .ts = now,
                             .audit = who,
                             .body.budget_lease = &body};
    static struct kp_fsm_result res;
    apply(&cmd, &res);
    assert_int_equal(res.code, KP_OK);
    assert_int_equal(res.lease.n, b.n);
    for (unsigned i = 0; i < b.n; i++)
        kp_budget_ledger_answer(n->ledger, &b, i, &res.lease.items[i]);
    return b.n;
}

static void hold_init(struct node *n, struct kp_ledger_hold *h, bool hard, kp_nanousd amount)
{
    memset(h, 0, sizeof(*h));
    h->slot = kp_budget_ledger__slot(n->ledger, "pol", "daily");
    assert_non_null(h->slot);
    h->window_def = (struct kp_budget_window_def){.kind = KP_BUDGET_DAILY};
    h->hard = hard;
    h->amount = amount;
}

static const struct kp_budget_window_state *window(void)
{
    return kp_fsm_budget_window(fsm, "pol", "daily");
}

static void check_invariant(void)
{
    const struct kp_budget_window_state *w = window();
    if (w != NULL)
        assert_true(w->spent + kp_budget_window_granted(w) <= LIMIT + w->excess);
}

/* A call waits for a grant, gets it, settles less than it reserved;
 * the settle reaches the state machine with the next report. */
static void test_reserve_wait_settle(void **state)
{
    (void)state;
    put_policy("hard");
    struct node n;
    node_init(&n, 1);
    struct kp_ledger_hold h;
    hold_init(&n, &h, true, 30000000);
    int64_t now = T0 + HOUR;
    assert_int_equal(kp_budget_ledger_reserve(n.ledger, &h, now), KP_LEDGER_WAIT);
    assert_int_equal(exchange(&n, now, false), 1);
    assert_int_equal(kp_budget_window_grant(window(), 1) >= 30000000, true);
    assert_int_equal(kp_budget_ledger_reserve(n.ledger, &h, now), KP_LEDGER_OK);
    assert_int_equal(h.window, T0);
    kp_budget_ledger_settle(n.ledger, &h, 12345, now);
    exchange(&n, now + 100, false);
    assert_int_equal(window()->spent, 12345);
    struct kp_ledger_local loc;
    kp_budget_ledger_local(n.ledger, "pol", "daily", &loc);
    assert_int_equal(loc.reserved, 0);
    assert_int_equal(loc.unreported, 0);
    /* A clean stop gives the grant back. */
    while (exchange(&n, now + 200, true) > 0)
        ;
    assert_int_equal(kp_budget_window_grant(window(), 1), 0);
    assert_false(kp_budget_ledger_holds(n.ledger));
    kp_budget_ledger_free(n.ledger);
}

/* Once the room is gone and no call of the node holds a reservation, a
 * call is refused (exhausted); giving back what is left lets another node
 * use it. */
static void test_exhausted_and_give_back(void **state)
{
    (void)state;
    put_policy("hard");
    struct node a, b;
    node_init(&a, 1);
    node_init(&b, 2);
    int64_t now = T0 + HOUR;
    struct kp_ledger_hold h;
    /* Node a spends most of the limit. */
    for (int i = 0; i < 200; i++) {
        hold_init(&a, &h, true, 100000000);
        enum kp_ledger_result rc = kp_budget_ledger_reserve(a.ledger, &h, now);
        if (rc == KP_LEDGER_EXHAUSTED)
            break;
        if (rc == KP_LEDGER_WAIT) {
            exchange(&a, now, false);
            continue;
        }
        kp_budget_ledger_settle(a.ledger, &h, 90000000, now);
        exchange(&a, now, false);
        check_invariant();
    }
    hold_init(&a, &h, true, 100000000);
    assert_int_equal(kp_budget_ledger_reserve(a.ledger, &h, now), KP_LEDGER_EXHAUSTED);
    assert_true(h.avail < 100000000);
    kp_nanousd left = h.avail;
    assert_true(left > 0);
    /* b cannot get anything while a holds the rest. */
    struct kp_ledger_hold hb;
    hold_init(&b, &hb, true, left);
    assert_int_equal(kp_budget_ledger_reserve(b.ledger, &hb, now), KP_LEDGER_WAIT);
    exchange(&b, now, false);
    assert_int_equal(kp_budget_ledger_reserve(b.ledger, &hb, now), KP_LEDGER_EXHAUSTED);
    /* a gives back what it cannot use; then b gets it. */
    kp_budget_ledger_give_back(a.ledger, &h);
    exchange(&a, now + 100, false);
    assert_int_equal(kp_budget_window_grant(window(), 1), 0);
    hold_init(&b, &hb, true, left);
    kp_budget_ledger_reserve(b.ledger, &hb, now + 100);
    exchange(&b, now + 100, false);
    assert_int_equal(kp_budget_ledger_reserve(b.ledger, &hb, now + 100), KP_LEDGER_OK);
    kp_budget_ledger_settle(b.ledger, &hb, left, now + 100);
    exchange(&b, now + 200, false);
    assert_int_equal(window()->spent, LIMIT);
    check_invariant();
    kp_budget_ledger_free(a.ledger);
    kp_budget_ledger_free(b.ledger);
}

/* Many nodes racing on one hard budget with random calls: the state
 * machine's spent is exactly what was settled, and never above the
 * limit. */
static void test_random_race_never_passes_the_limit(void **state)
{
    (void)state;
    put_policy("hard");
    enum { NODES = 5, CALLS = 64 };
    struct node nodes[NODES];
    struct kp_ledger_hold holds[NODES][CALLS];
    bool live[NODES][CALLS];
    memset(live, 0, sizeof(live));
    for (int i = 0; i < NODES; i++)
        node_init(&nodes[i], (uint64_t)i + 1);
    srand(42);
    kp_nanousd settled = 0;
    int64_t now = T0 + HOUR;
    for (int step = 0; step < 20000; step++) {
        int i = rand() % NODES, j = rand() % CALLS;
        struct node *n = &nodes[i];
        struct kp_ledger_hold *h = &holds[i][j];
        if (live[i][j]) {
            /* The actual cost never passes the reservation. */
            kp_nanousd actual = h->amount ? rand() % (h->amount + 1) : 0;
            kp_budget_ledger_settle(n->ledger, h, actual, now);
            settled += actual;
            live[i][j] = false;
        } else {
            hold_init(n, h, true, 1000000 + rand() % 50000000);
            live[i][j] = kp_budget_ledger_reserve(n->ledger, h, now) == KP_LEDGER_OK;
        }
        if (rand() % 8 == 0)
            exchange(n, now, false);
        now += rand() % 3;
        check_invariant();
    }
    for (int i = 0; i < NODES; i++) {
        for (int j = 0; j < CALLS; j++)
            if (live[i][j]) {
                kp_budget_ledger_settle(nodes[i].ledger, &holds[i][j], holds[i][j].amount, now);
                settled += holds[i][j].amount;
            }
        while (exchange(&nodes[i], now, true) > 0)
            ;
        kp_budget_ledger_free(nodes[i].ledger);
    }
    assert_int_equal(window()->spent, settled);
    assert_true(settled <= LIMIT);
    assert_true(settled > LIMIT / 2); /* the race did spend the budget */
    assert_int_equal(kp_budget_window_granted(window()), 0);
    assert_int_equal(window()->overshoot, 0);
}

/* A call reserved before midnight settles against the old window after
 * the grant moved to the new one. */
static void test_rollover(void **state)
{
    (void)state;
    put_policy("hard");
    struct node n;
    node_init(&n, 1);
    struct kp_ledger_hold h, h2;
    int64_t late = T0 + DAY - 1000;
    hold_init(&n, &h, true, 5000000);
    kp_budget_ledger_reserve(n.ledger, &h, late);
    exchange(&n, late, false);
    assert_int_equal(kp_budget_ledger_reserve(n.ledger, &h, late), KP_LEDGER_OK);
    /* Past midnight: the grant of the old window is not reused. */
    int64_t next = T0 + DAY + 1000;
    hold_init(&n, &h2, true, 5000000);
    assert_int_equal(kp_budget_ledger_reserve(n.ledger, &h2, next), KP_LEDGER_WAIT);
    exchange(&n, next, false);
    assert_int_equal(window()->start_ms, T0 + DAY);
    assert_int_equal(kp_budget_ledger_reserve(n.ledger, &h2, next), KP_LEDGER_OK);
    assert_int_equal(h2.window, T0 + DAY);
    /* The old call settles into the previous window. */
    kp_budget_ledger_settle(n.ledger, &h, 777, next);
    kp_budget_ledger_settle(n.ledger, &h2, 888, next);
    exchange(&n, next + 100, false);
    exchange(&n, next + 200, false);
    assert_int_equal(window()->prev_spent, 777);
    assert_int_equal(window()->spent, 888);
    kp_budget_ledger_free(n.ledger);
}

/* A node crashes holding a grant; its next process counts that grant as
 * spent, never reserves against it. */
static void test_crash_counts_the_old_grant_as_spent(void **state)
{
    (void)state;
    put_policy("hard");
    struct node n;
    node_init(&n, 1);
    struct kp_ledger_hold h;
    int64_t now = T0 + HOUR;
    hold_init(&n, &h, true, 200000000);
    kp_budget_ledger_reserve(n.ledger, &h, now);
    exchange(&n, now, false);
    assert_int_equal(kp_budget_ledger_reserve(n.ledger, &h, now), KP_LEDGER_OK);
    kp_nanousd held = kp_budget_window_grant(window(), 1);
    assert_true(held >= 200000000);
    /* kill -9: the ledger is gone with the call in flight. */
    kp_budget_ledger_free(n.ledger);

    /* The next process, without adopt (a view that lagged): its first
     * item for the budget counts what the node held as spent. */
    n.ledger = kp_budget_ledger_new(NULL, NULL);
    hold_init(&n, &h, true, 1000000);
    assert_int_equal(kp_budget_ledger_reserve(n.ledger, &h, now + 1000), KP_LEDGER_WAIT);
    exchange(&n, now + 1000, false);
    assert_int_equal(window()->spent, held);
    assert_int_equal(window()->overshoot, 0);
    /* What it holds now is only what this process was granted. */
    struct kp_ledger_local loc;
    kp_budget_ledger_local(n.ledger, "pol", "daily", &loc);
    assert_int_equal(loc.grant, kp_budget_window_grant(window(), 1));
    assert_true(loc.grant >= 1000000);
    /* Later items do not count it again. */
    assert_int_equal(kp_budget_ledger_reserve(n.ledger, &h, now + 1000), KP_LEDGER_OK);
    kp_budget_ledger_settle(n.ledger, &h, 10, now + 1000);
    exchange(&n, now + 1100, false);
    assert_int_equal(window()->spent, held + 10);
    check_invariant();
    kp_budget_ledger_free(n.ledger);

    /* With adopt (the view had it): counted before anything is asked. */
    n.ledger = kp_budget_ledger_new(NULL, NULL);
    kp_nanousd held2 = kp_budget_window_grant(window(), 1);
    struct kp_budget_window_def daily = {.kind = KP_BUDGET_DAILY};
    kp_budget_ledger_adopt(n.ledger, "pol", "daily", &daily, true, T0, held2);
    assert_true(kp_budget_ledger_holds(n.ledger)); /* something to say: the old grant */
    exchange(&n, now + 2000, false);
    assert_int_equal(window()->spent, held + 10 + held2);
    assert_int_equal(kp_budget_window_grant(window(), 1), 0);
    assert_int_equal(window()->overshoot, 0);
    assert_false(kp_budget_ledger_holds(n.ledger));
    kp_budget_ledger_free(n.ledger);
}

/* While a command gives a grant back, nothing is reserved against it: the
 * state machine drops all of the grant, whatever a call took meanwhile. */
static void test_no_reservation_while_giving_back(void **state)
{
    (void)state;
    put_policy("hard");
    struct node n;
    node_init(&n, 1);
    struct kp_ledger_hold h, h2;
    int64_t now = T0 + HOUR;
    hold_init(&n, &h, true, 1000000);
    kp_budget_ledger_reserve(n.ledger, &h, now);
    exchange(&n, now, false);
    assert_int_equal(kp_budget_ledger_reserve(n.ledger, &h, now), KP_LEDGER_OK);
    kp_budget_ledger_settle(n.ledger, &h, 400000, now); /* 600000 of the grant left */
    kp_budget_ledger_give_back(n.ledger, &h);
    static struct kp_lease_batch b;
    assert_int_equal(kp_budget_ledger_build(n.ledger, now + 100, false, &b), 1);
    assert_true(b.items[0].release);
    /* The command is in flight: a call must wait. */
    hold_init(&n, &h2, true, 1000);
    assert_int_equal(kp_budget_ledger_reserve(n.ledger, &h2, now + 100), KP_LEDGER_WAIT);
    kp_budget_ledger_unsend(n.ledger, &b, 0);
    kp_budget_ledger_free(n.ledger);
}

/* A budget deleted while the node holds it is forgotten; calls that held
 * reservations on it settle nowhere, and a budget of the same name made
 * later starts afresh. */
static void test_forget_a_deleted_budget(void **state)
{
    (void)state;
    put_policy("hard");
    struct node n;
    node_init(&n, 1);
    struct kp_ledger_hold h, h2;
    int64_t now = T0 + HOUR;
    hold_init(&n, &h, true, 5000000);
    kp_budget_ledger_reserve(n.ledger, &h, now);
    exchange(&n, now, false);
    assert_int_equal(kp_budget_ledger_reserve(n.ledger, &h, now), KP_LEDGER_OK);
    static struct kp_lease_batch b;
    hold_init(&n, &h2, true, 1);
    kp_budget_ledger_reserve(n.ledger, &h2, now); /* something to report */
    kp_budget_ledger_settle(n.ledger, &h2, 1, now);
    assert_int_equal(kp_budget_ledger_build(n.ledger, now, false, &b), 1);
    kp_budget_ledger_forget(n.ledger, &b, 0);
    kp_budget_ledger_settle(n.ledger, &h, 5000000, now); /* the old call ends */
    struct kp_ledger_local loc;
    kp_budget_ledger_local(n.ledger, "pol", "daily", &loc);
    assert_int_equal(loc.grant, 0);
    assert_int_equal(loc.reserved, 0);
    assert_int_equal(loc.unreported, 0);
    assert_int_equal(kp_budget_ledger_build(n.ledger, now + 100, false, &b), 0);
    /* A new call on a budget of that name asks afresh. */
    hold_init(&n, &h2, true, 1000);
    assert_int_equal(kp_budget_ledger_reserve(n.ledger, &h2, now + 200), KP_LEDGER_WAIT);
    kp_budget_ledger_free(n.ledger);
}

/* Soft budgets hold nothing back and are charged all the same. */
static void test_soft_budget_is_charged_never_refused(void **state)
{
    (void)state;
    put_policy("soft");
    struct node n;
    node_init(&n, 1);
    struct kp_ledger_hold h;
    int64_t now = T0 + HOUR;
    for (int i = 0; i < 30; i++) {
        hold_init(&n, &h, false, 0);
        assert_int_equal(kp_budget_ledger_reserve(n.ledger, &h, now), KP_LEDGER_OK);
        kp_budget_ledger_settle(n.ledger, &h, 100000000, now);
    }
    exchange(&n, now, false);
    assert_int_equal(window()->spent, 3000000000LL);
    /* Settling beyond a (soft) grant is no sign of an earlier process. */
    exchange(&n, now + 100, false);
    assert_int_equal(window()->spent, 3000000000LL);
    kp_budget_ledger_free(n.ledger);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_reserve_wait_settle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exhausted_and_give_back, setup, teardown),
        cmocka_unit_test_setup_teardown(test_random_race_never_passes_the_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rollover, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crash_counts_the_old_grant_as_spent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_reservation_while_giving_back, setup, teardown),
        cmocka_unit_test_setup_teardown(test_forget_a_deleted_budget, setup, teardown),
        cmocka_unit_test_setup_teardown(test_soft_budget_is_charged_never_refused, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

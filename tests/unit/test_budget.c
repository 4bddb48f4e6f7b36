/* Unit tests of the budget lease protocol in the registry state machine
 * (raftstore/budget.c, docs/budgets.md): grants, settles, releases,
 * replays, window rollover, refusals, soft budgets and overshoot, policy
 * changes under live leases, the operator's reset, and a randomized run
 * of several nodes that checks the invariant after every apply.
 *
 * Commands go through the public API (struct kp_command, kp_command_encode,
 * kp_fsm_apply) exactly as a router's node would build them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "raftstore/raftstore.h"

#define T0   1767225600000LL /* 2026-01-01T00:00:00Z */
#define HOUR 3600000LL
#define DAY  86400000LL
#define FEB1 1769904000000LL /* 2026-02-01T00:00:00Z */

/* The test policy's budgets. */
#define DAILY_LIMIT   6400000000LL /* $6.40: grant floor limit/64 = 0.1 USD */
#define MONTHLY_LIMIT 20000000000LL
#define SOFT_LIMIT    1000000LL

static struct kp_fsm_result res;
static uint64_t next_index;

static struct kp_audit_ctx who = {.actor = (char *)"router", .role = (char *)"node"};

static int setup(void **state)
{
    next_index = 0;
    *state = kp_fsm_new();
    return *state == NULL;
}

static int teardown(void **state)
{
    kp_fsm_free(*state);
    return 0;
}

static void encode_at(enum kp_op op, void *body, int64_t ts, struct kp_buf *b)
{
    char err[256];
    struct kp_command c = {.v = 1, .op = op, .ts = ts, .audit = who, .body.any = body};
    kp_buf_init(b);
    assert_int_equal(kp_command_encode(&c, b, err, sizeof(err)), KP_OK);
}

static int apply_bytes(struct kp_fsm *f, const struct kp_buf *b)
{
    assert_int_equal(kp_fsm_apply(f, ++next_index, b->data, b->len, &res), KP_OK);
    return res.code;
}

static int apply_at(struct kp_fsm *f, enum kp_op op, void *body, int64_t ts)
{
    struct kp_buf b;
    encode_at(op, body, ts, &b);
    int rc = apply_bytes(f, &b);
    kp_buf_free(&b);
    return rc;
}

#define assert_ok(expr)                                                                            \
    do {                                                                                           \
        int rc_ = (expr);                                                                          \
        if (rc_ != KP_OK)                                                                          \
            fail_msg("%s -> %s: %s", #expr, kp_err_name(rc_), res.message);                        \
    } while (0)

#define assert_refused(expr, code, msg)                                                            \
    do {                                                                                           \
        int rc_ = (expr);                                                                          \
        if (rc_ != (code) || strcmp(res.message, (msg)) != 0)                                      \
            fail_msg("%s -> %s '%s', wanted %s '%s'", #expr, kp_err_name(rc_), res.message,        \
                     kp_err_name(code), (msg));                                                    \
    } while (0)

/* A global policy @id with up to three budgets: "daily" (hard), "monthly"
 * (hard) and "alerts" (soft), each included when its limit is >= 0. */
static int put_policy_at(struct kp_fsm *f, const char *id, int64_t daily, uint8_t daily_window,
                         int64_t monthly, int64_t soft, int64_t ts)
{
    struct kp_budget b[3];
    uint32_t n = 0;
    if (daily >= 0)
        b[n++] = (struct kp_budget){(char *)"daily", daily_window, daily, KP_BUDGET_HARD};
    if (monthly >= 0)
        b[n++] = (struct kp_budget){(char *)"monthly", KP_BUDGET_MONTHLY, monthly, KP_BUDGET_HARD};
    if (soft >= 0)
        b[n++] = (struct kp_budget){(char *)"alerts", KP_BUDGET_DAILY, soft, KP_BUDGET_SOFT};
    struct kp_policy p = {
        .e.id = (char *)id, .scope_kind = KP_SCOPE_GLOBAL, .budgets = b, .nbudgets = n};
    return apply_at(f, KP_OP_PUT_POLICY, &p, ts);
}

static int put_policy(struct kp_fsm *f)
{
    return put_policy_at(f, "pol", DAILY_LIMIT, KP_BUDGET_DAILY, MONTHLY_LIMIT, SOFT_LIMIT, T0);
}

static struct kp_lease_item item(const char *budget, int64_t window, kp_nanousd settled,
                                 bool release, kp_nanousd want)
{
    return (struct kp_lease_item){(char *)"pol", (char *)budget, window, settled, release, want};
}

static void encode_lease(uint64_t node, uint64_t seq, int64_t ts, struct kp_lease_item *items,
                         uint32_t n, struct kp_buf *b)
{
    struct kp_cmd_budget_lease c = {node, seq, items, n};
    encode_at(KP_OP_BUDGET_LEASE, &c, ts, b);
}

static int lease(struct kp_fsm *f, uint64_t node, uint64_t seq, int64_t ts,
                 struct kp_lease_item *items, uint32_t n)
{
    struct kp_buf b;
    encode_lease(node, seq, ts, items, n, &b);
    int rc = apply_bytes(f, &b);
    kp_buf_free(&b);
    return rc;
}

/* One item, the common case. */
static int lease1(struct kp_fsm *f, uint64_t node, uint64_t seq, int64_t ts, const char *budget,
                  int64_t window, kp_nanousd settled, bool release, kp_nanousd want)
{
    struct kp_lease_item it = item(budget, window, settled, release, want);
    return lease(f, node, seq, ts, &it, 1);
}

static const struct kp_budget_window_state *win(struct kp_fsm *f, const char *budget)
{
    return kp_fsm_budget_window(f, "pol", budget);
}

static const struct kp_lease_node *node_rec(struct kp_fsm *f, uint64_t node)
{
    char id[24];
    snprintf(id, sizeof(id), "%llu", (unsigned long long)node);
    return (const struct kp_lease_node *)kp_fsm_get(f, KP_KIND_LEASE_NODE, id);
}

static kp_nanousd committed(const struct kp_budget_window_state *w)
{
    return w->spent + kp_budget_window_granted(w);
}

/* --- windows ------------------------------------------------------------------------------- */

/* Windows are UTC days and calendar months, leap years and year ends
 * included. */
static void test_window_math(void **state)
{
    (void)state;
    assert_int_equal(kp_budget_window_start(KP_BUDGET_DAILY, T0), T0);
    assert_int_equal(kp_budget_window_start(KP_BUDGET_DAILY, T0 + DAY - 1), T0);
    assert_int_equal(kp_budget_window_end(KP_BUDGET_DAILY, T0 + 5), T0 + DAY);
    assert_int_equal(kp_budget_window_start(KP_BUDGET_MONTHLY, FEB1 - 1), T0);
    assert_int_equal(kp_budget_window_start(KP_BUDGET_MONTHLY, FEB1), FEB1);
    assert_int_equal(kp_budget_window_end(KP_BUDGET_MONTHLY, T0 + 17 * DAY), FEB1);
    /* December rolls into the next year; February 2028 has 29 days. */
    assert_int_equal(kp_budget_window_end(KP_BUDGET_MONTHLY, 1796083200000 + DAY), 1798761600000);
    assert_int_equal(kp_budget_window_start(KP_BUDGET_MONTHLY, 1835395200000), 1832976000000);
    assert_int_equal(kp_budget_window_end(KP_BUDGET_MONTHLY, 1835395200000), 1835481600000);
    assert_int_equal(kp_budget_window_start(KP_BUDGET_MONTHLY, 0), 0);
}

/* --- the protocol -------------------------------------------------------------------------- */

/* A lone node is granted what it asks for out of the room, settles part
 * of it (the grant shrinks by as much as spent grows) and releases the
 * rest; the node's seq and report time are recorded, and the view shows
 * the same. */
static void test_grant_settle_release(void **state)
{
    struct kp_fsm *f = *state;
    assert_ok(put_policy(f));
    assert_null(win(f, "daily"));
    assert_ok(lease1(f, 7, 1, T0 + HOUR, "daily", T0, 0, false, 1000000000));
    assert_int_equal(res.lease.n, 1);
    assert_false(res.lease.duplicate);
    assert_int_equal(res.lease.items[0].granted, 1000000000);
    assert_int_equal(res.lease.items[0].grant, 1000000000);
    assert_int_equal(res.lease.items[0].window_start_ms, T0);
    assert_int_equal(res.audit_seq, 0); /* leases leave no audit entry */
    const struct kp_budget_window_state *w = win(f, "daily");
    assert_non_null(w);
    assert_int_equal(w->start_ms, T0);
    assert_int_equal(w->spent, 0);
    assert_int_equal(w->ngrants, 1);
    assert_int_equal(w->grants[0].node_id, 7);
    assert_int_equal(kp_budget_window_grant(w, 7), 1000000000);
    assert_null(win(f, "monthly")); /* untouched budgets have no window */
    assert_int_equal(node_rec(f, 7)->seq, 1);
    assert_int_equal(node_rec(f, 7)->last_report_ms, T0 + HOUR);

    assert_ok(lease1(f, 7, 2, T0 + 2 * HOUR, "daily", T0, 300000000, false, 0));
    assert_int_equal(res.lease.items[0].granted, 0);
    assert_int_equal(res.lease.items[0].grant, 700000000);
    w = win(f, "daily");
    assert_int_equal(w->spent, 300000000);
    assert_int_equal(committed(w), 1000000000);
    assert_int_equal(w->overshoot, 0);

    assert_ok(lease1(f, 7, 3, T0 + 3 * HOUR, "daily", T0, 100000000, true, 0));
    assert_int_equal(res.lease.items[0].grant, 0);
    w = win(f, "daily");
    assert_int_equal(w->spent, 400000000);
    assert_int_equal(w->ngrants, 0);
    assert_int_equal(node_rec(f, 7)->seq, 3);

    /* Several budgets in one command; the view shows what the state does. */
    struct kp_lease_item two[2] = {item("monthly", T0, 0, false, 5),
                                   item("daily", T0, 0, false, 6)};
    assert_ok(lease(f, 7, 4, T0 + 4 * HOUR, two, 2));
    assert_int_equal(res.lease.items[0].grant, 5);
    assert_int_equal(res.lease.items[1].grant, 6);
    struct kp_view *v = kp_fsm_view_build(f);
    assert_non_null(v);
    assert_int_equal(kp_budget_window_grant(kp_view_budget_window(v, "pol", "monthly"), 7), 5);
    assert_int_equal(kp_view_budget_window(v, "pol", "daily")->spent, 400000000);
    assert_int_equal(kp_view_budget_state(v, "pol")->nwindows, 2);
    assert_string_equal(kp_view_budget_state(v, "pol")->windows[0].budget, "daily");
    assert_int_equal(kp_view_lease_node(v, 7)->seq, 4);
    assert_null(kp_view_lease_node(v, 8));
    assert_null(kp_view_budget_window(v, "pol", "alerts"));
    assert_null(kp_view_budget_window(v, "nope", "daily"));
    kp_view_release(v);
}

/* The grant rule: a lone node may take the whole room; with k others
 * holding grants one ask gets at most room / (2k + 1), and never less than
 * limit / 64 while the room allows; the budget is handed out exactly to
 * its limit and not one nano-dollar beyond; a release gives room back. */
static void test_grant_rule(void **state)
{
    struct kp_fsm *f = *state;
    uint64_t seq[4] = {0};
    assert_ok(put_policy(f));
    assert_ok(lease1(f, 1, ++seq[1], T0 + 1, "daily", T0, 0, false, 1000000000));
    assert_int_equal(res.lease.items[0].granted, 1000000000); /* k = 0: want */
    assert_ok(lease1(f, 2, ++seq[2], T0 + 2, "daily", T0, 0, false, 10000000000));
    assert_int_equal(res.lease.items[0].granted, 1800000000); /* 5.4e9 / 3 */
    assert_ok(lease1(f, 3, ++seq[3], T0 + 3, "daily", T0, 0, false, 10000000000));
    assert_int_equal(res.lease.items[0].granted, 720000000); /* 3.6e9 / 5 */
    assert_ok(lease1(f, 1, ++seq[1], T0 + 4, "daily", T0, 0, false, 10000000000));
    assert_int_equal(res.lease.items[0].granted, 576000000); /* 2.88e9 / 5 */
    assert_int_equal(res.lease.items[0].grant, 1576000000);

    /* Keep asking round robin: shares shrink, then the floor hands out the
     * last slices, then nothing. */
    int zero = 0, asks = 0;
    for (int64_t t = 5; zero < 3; t++) {
        uint64_t node = 1 + (uint64_t)t % 3;
        kp_nanousd room = DAILY_LIMIT - committed(win(f, "daily"));
        assert_ok(lease1(f, node, ++seq[node], T0 + t, "daily", T0, 0, false, 10000000000));
        kp_nanousd g = res.lease.items[0].granted;
        kp_nanousd share = room / 5; /* two others hold grants: 2k + 1 = 5 */
        kp_nanousd floor = room < DAILY_LIMIT / 64 ? room : DAILY_LIMIT / 64;
        assert_int_equal(g, share > floor ? share : floor);
        assert_true(committed(win(f, "daily")) <= DAILY_LIMIT);
        zero += g == 0;
        asks += g > 0;
    }
    assert_int_equal(committed(win(f, "daily")), DAILY_LIMIT);
    assert_int_equal(asks, 12); /* seven shares, four floor slices, the rest */
    print_message("budget of $6.40 handed out to 3 nodes in %d asks after the first four\n", asks);

    /* A release returns the node's whole grant to the pool. */
    kp_nanousd held = kp_budget_window_grant(win(f, "daily"), 3);
    assert_ok(lease1(f, 3, ++seq[3], T0 + 100, "daily", T0, 0, true, 0));
    assert_int_equal(committed(win(f, "daily")), DAILY_LIMIT - held);
    assert_ok(lease1(f, 1, ++seq[1], T0 + 101, "daily", T0, 0, false, 1));
    assert_int_equal(res.lease.items[0].granted, 1);
}

/* A seq at or below the node's last is a replay: nothing changes (not
 * even the node's record), and the answer is what the node holds now. A
 * refused command does not use its seq up. */
static void test_replay(void **state)
{
    struct kp_fsm *f = *state;
    struct kp_buf b;
    assert_ok(put_policy(f));
    encode_lease(3, 5, T0 + HOUR, (struct kp_lease_item[]){item("daily", T0, 0, false, 1000)}, 1,
                 &b);
    assert_ok(apply_bytes(f, &b));
    assert_false(res.lease.duplicate);
    assert_int_equal(res.lease.items[0].granted, 1000);
    uint64_t state_version = kp_fsm_get(f, KP_KIND_BUDGET_STATE, "pol")->version;
    assert_ok(apply_bytes(f, &b)); /* the same entry committed twice */
    assert_true(res.lease.duplicate);
    assert_int_equal(res.lease.items[0].granted, 0);
    assert_int_equal(res.lease.items[0].grant, 1000);
    assert_int_equal(res.lease.items[0].window_start_ms, T0);
    assert_int_equal(kp_fsm_get(f, KP_KIND_BUDGET_STATE, "pol")->version, state_version);
    assert_int_equal(node_rec(f, 3)->e.version, 1);
    kp_buf_free(&b);
    /* An older seq with other contents is ignored as well. */
    assert_ok(lease1(f, 3, 4, T0 + 2 * HOUR, "daily", T0, 900, true, 0));
    assert_true(res.lease.duplicate);
    assert_int_equal(win(f, "daily")->spent, 0);
    assert_int_equal(kp_budget_window_grant(win(f, "daily"), 3), 1000);
    /* Another node's seqs are its own. */
    assert_ok(lease1(f, 4, 1, T0 + 2 * HOUR, "daily", T0, 0, false, 10));
    assert_false(res.lease.duplicate);
    /* Refused: the seq is not used up, and the next one still applies. */
    assert_refused(lease1(f, 3, 6, T0 + 3 * HOUR, "nope", T0, 10, false, 0), KP_ENOENT,
                   "items[0].budget: policy 'pol' has no budget 'nope'");
    assert_int_equal(node_rec(f, 3)->seq, 5);
    assert_ok(lease1(f, 3, 6, T0 + 3 * HOUR, "daily", T0, 10, false, 0));
    assert_false(res.lease.duplicate);
    assert_int_equal(win(f, "daily")->spent, 10);
    /* Seqs may skip: only order matters. */
    assert_ok(lease1(f, 3, 1000, T0 + 4 * HOUR, "daily", T0, 10, false, 0));
    assert_false(res.lease.duplicate);
    assert_int_equal(win(f, "daily")->spent, 20);
}

/* The first lease after a window's end rolls it over: spent and every
 * node's grant go to zero in the same apply, the old spend is kept as the
 * previous window's; settles for the previous window land there, older
 * ones in late; a node whose clock lags settles into the previous window
 * rather than reopening it; monthly windows roll on the first of the
 * month and are independent of daily ones. */
static void test_rollover(void **state)
{
    struct kp_fsm *f = *state;
    assert_ok(put_policy(f));
    struct kp_lease_item both[2] = {item("daily", T0, 0, false, 1000000000),
                                    item("monthly", T0, 0, false, 1000000000)};
    assert_ok(lease(f, 1, 1, T0 + HOUR, both, 2));
    assert_ok(lease1(f, 2, 1, T0 + 2 * HOUR, "daily", T0, 0, false, 1000000000));
    assert_int_equal(res.lease.items[0].granted, 1000000000);
    assert_ok(lease1(f, 1, 2, T0 + 3 * HOUR, "daily", T0, 400000000, false, 0));
    const struct kp_budget_window_state *w = win(f, "daily");
    assert_int_equal(w->spent, 400000000);
    assert_int_equal(w->ngrants, 2);

    /* Node 2, next day, settles what it spent yesterday and asks. */
    assert_ok(lease1(f, 2, 2, T0 + DAY + HOUR, "daily", T0, 200000000, false, 500000000));
    w = win(f, "daily");
    assert_int_equal(w->start_ms, T0 + DAY);
    assert_int_equal(w->spent, 0);
    assert_int_equal(w->ngrants, 1); /* node 1's grant went with the window */
    assert_int_equal(kp_budget_window_grant(w, 2), 500000000);
    assert_int_equal(w->prev_start_ms, T0);
    assert_int_equal(w->prev_spent, 600000000);
    assert_int_equal(res.lease.items[0].window_start_ms, T0 + DAY);
    assert_int_equal(kp_budget_window_grant(win(f, "monthly"), 1), 1000000000);

    /* Node 1's clock still says yesterday: no going back. */
    assert_ok(lease1(f, 1, 3, T0 + 3 * HOUR + 1, "daily", T0, 100000000, false, 100000000));
    w = win(f, "daily");
    assert_int_equal(w->start_ms, T0 + DAY);
    assert_int_equal(w->prev_spent, 700000000);
    assert_int_equal(w->spent, 0);
    assert_int_equal(res.lease.items[0].window_start_ms, T0 + DAY);
    assert_int_equal(res.lease.items[0].grant, 100000000);
    /* A settle for a window older than the previous one. */
    assert_ok(lease1(f, 1, 4, T0 + DAY + 2 * HOUR, "daily", T0 - 5 * DAY, 50000000, false, 0));
    w = win(f, "daily");
    assert_int_equal(w->late, 50000000);
    assert_int_equal(w->prev_spent, 700000000);
    assert_int_equal(w->spent, 0);
    assert_int_equal(kp_budget_window_grant(w, 1), 100000000); /* untouched */

    /* The monthly window rolls on February 1st; its late settle for
     * January goes to January. */
    assert_ok(lease1(f, 1, 5, FEB1, "monthly", T0, 100000000, false, 0));
    w = win(f, "monthly");
    assert_int_equal(w->start_ms, FEB1);
    assert_int_equal(w->prev_start_ms, T0);
    assert_int_equal(w->prev_spent, 100000000);
    assert_int_equal(w->ngrants, 0);
    assert_int_equal(win(f, "daily")->start_ms, T0 + DAY); /* not named: not rolled */
}

/* A command naming a policy or budget that does not exist, or a budget
 * twice, is refused whole, with the item's path, and changes nothing;
 * malformed ones are refused by the decoder. */
static void test_refusals(void **state)
{
    struct kp_fsm *f = *state;
    assert_ok(put_policy(f));
    struct kp_lease_item two[2] = {item("daily", T0, 0, false, 1000), item("daily", T0, 0, 0, 1)};
    two[1].policy = (char *)"nopol";
    assert_refused(lease(f, 1, 1, T0, two, 2), KP_ENOENT, "items[1].policy: no policy 'nopol'");
    assert_int_equal(res.lease.n, 0);
    two[1].policy = (char *)"pol";
    two[1].budget = (char *)"weekly";
    assert_refused(lease(f, 1, 1, T0, two, 2), KP_ENOENT,
                   "items[1].budget: policy 'pol' has no budget 'weekly'");
    two[1].budget = (char *)"daily";
    assert_refused(lease(f, 1, 1, T0, two, 2), KP_EINVAL, "items[1]: same budget as items[0]");
    assert_null(kp_fsm_get(f, KP_KIND_BUDGET_STATE, "pol"));
    assert_null(node_rec(f, 1));
    assert_int_equal(kp_fsm_count(f, KP_KIND_LEASE_NODE), 0);

    struct kp_lease_item many[KP_LEASE_ITEMS_MAX + 1];
    for (size_t i = 0; i < KP_LEASE_ITEMS_MAX + 1; i++)
        many[i] = item("daily", T0, 0, false, 1);
    assert_refused(lease(f, 1, 1, T0, many, KP_LEASE_ITEMS_MAX + 1), KP_EINVAL,
                   "items: more than 64 entries");
    struct kp_lease_item neg = item("daily", T0, -1, false, 0);
    assert_refused(lease(f, 1, 1, T0, &neg, 1), KP_EINVAL,
                   "items[0].settled_nanousd: must be 0..1000000000000000000");
    assert_refused(lease(f, 1, 0, T0, NULL, 0), KP_EINVAL, "seq: must be at least 1");
    struct kp_buf b;
    char err[256];
    struct kp_cmd_budget_lease c = {1, 1, NULL, 0};
    struct kp_command cmd = {.v = 1,
                             .op = KP_OP_BUDGET_LEASE,
                             .ts = T0,
                             .audit = who,
                             .has_expect_version = true,
                             .expect_version = 1,
                             .body.budget_lease = &c};
    kp_buf_init(&b);
    assert_int_equal(kp_command_encode(&cmd, &b, err, sizeof(err)), KP_OK);
    assert_refused(apply_bytes(f, &b), KP_EINVAL, "expect_version: not accepted by budget_lease");
    kp_buf_free(&b);

    /* A command without items is a heartbeat: only the node's record. */
    assert_ok(lease(f, 1, 1, T0 + 5, NULL, 0));
    assert_int_equal(node_rec(f, 1)->last_report_ms, T0 + 5);
    assert_null(kp_fsm_get(f, KP_KIND_BUDGET_STATE, "pol"));
    assert_int_equal(kp_fsm_audit_count(f), 1); /* put_policy only */
}

/* A soft budget grants what is asked, beyond its limit too, and records
 * spend beyond a grant as overshoot. On a hard budget such spend (a buggy
 * router, or one whose grant a reset dropped) is counted in full and
 * raises excess by as much, so the invariant still holds; nothing more is
 * granted while spent + grants is at or above the limit. */
static void test_soft_and_overshoot(void **state)
{
    struct kp_fsm *f = *state;
    assert_ok(put_policy(f));
    assert_ok(lease1(f, 1, 1, T0, "alerts", T0, 0, false, 5 * SOFT_LIMIT));
    assert_int_equal(res.lease.items[0].granted, 5 * SOFT_LIMIT);
    assert_ok(lease1(f, 1, 2, T0, "alerts", T0, 7 * SOFT_LIMIT, false, 0));
    const struct kp_budget_window_state *w = win(f, "alerts");
    assert_int_equal(w->spent, 7 * SOFT_LIMIT);
    assert_int_equal(w->overshoot, 2 * SOFT_LIMIT);
    assert_int_equal(w->ngrants, 0);

    assert_ok(lease1(f, 1, 3, T0, "daily", T0, 0, false, 1000000000));
    assert_ok(lease1(f, 1, 4, T0, "daily", T0, 1500000000, false, 0));
    w = win(f, "daily");
    assert_int_equal(w->spent, 1500000000);
    assert_int_equal(w->overshoot, 500000000);
    assert_int_equal(w->excess, 500000000);
    assert_ok(lease1(f, 1, 5, T0, "daily", T0, 0, false, DAILY_LIMIT));
    assert_int_equal(res.lease.items[0].granted, DAILY_LIMIT - 1500000000);
    assert_ok(lease1(f, 1, 6, T0, "daily", T0, DAILY_LIMIT - 500000000, false, 1));
    w = win(f, "daily");
    assert_int_equal(res.lease.items[0].granted, 0);
    assert_int_equal(w->spent, DAILY_LIMIT + 1000000000);
    assert_int_equal(w->excess, 1500000000);
    assert_true(committed(w) <= DAILY_LIMIT + w->excess);
}

/* Policy changes under live leases: a limit lowered below spent + grants
 * raises excess (no grant until back under); raising it again changes no
 * state; a new window type re-anchors the window and keeps spent and
 * grants; a removed budget's window goes, the state with the last one,
 * and with the policy. */
static void test_policy_changes(void **state)
{
    struct kp_fsm *f = *state;
    int64_t t = T0 + 10 * DAY + HOUR;
    assert_ok(put_policy(f));
    assert_ok(lease1(f, 1, 1, t, "daily", T0 + 10 * DAY, 0, false, 3000000000));
    assert_ok(lease1(f, 2, 1, t, "daily", T0 + 10 * DAY, 0, false, 1000000000));
    assert_int_equal(res.lease.items[0].granted, 1000000000);
    assert_ok(lease1(f, 1, 2, t, "daily", T0 + 10 * DAY, 1000000000, false, 0));
    assert_ok(lease1(f, 1, 3, t, "monthly", T0, 0, false, 42));
    assert_int_equal(committed(win(f, "daily")), 4000000000);
    uint64_t v = kp_fsm_get(f, KP_KIND_BUDGET_STATE, "pol")->version;

    assert_ok(put_policy_at(f, "pol", 3000000000, KP_BUDGET_DAILY, MONTHLY_LIMIT, SOFT_LIMIT, t));
    assert_int_equal(kp_fsm_get(f, KP_KIND_BUDGET_STATE, "pol")->version, v + 1);
    assert_int_equal(win(f, "daily")->excess, 1000000000);
    assert_ok(lease1(f, 2, 2, t, "daily", T0 + 10 * DAY, 0, false, 1));
    assert_int_equal(res.lease.items[0].granted, 0);

    v = kp_fsm_get(f, KP_KIND_BUDGET_STATE, "pol")->version;
    assert_ok(put_policy_at(f, "pol", DAILY_LIMIT, KP_BUDGET_DAILY, MONTHLY_LIMIT, SOFT_LIMIT, t));
    assert_int_equal(kp_fsm_get(f, KP_KIND_BUDGET_STATE, "pol")->version, v);
    assert_ok(lease1(f, 2, 3, t, "daily", T0 + 10 * DAY, 0, false, 1));
    assert_int_equal(res.lease.items[0].granted, 1);

    /* daily -> monthly: the window is now January's, spend and grants kept. */
    assert_ok(
        put_policy_at(f, "pol", DAILY_LIMIT, KP_BUDGET_MONTHLY, MONTHLY_LIMIT, SOFT_LIMIT, t + 1));
    const struct kp_budget_window_state *w = win(f, "daily");
    assert_int_equal(w->start_ms, T0);
    assert_int_equal(w->spent, 1000000000);
    assert_int_equal(kp_budget_window_grant(w, 1), 2000000000);
    assert_ok(lease1(f, 1, 4, t + 2, "daily", T0, 500000000, false, 0));
    assert_int_equal(win(f, "daily")->spent, 1500000000);
    /* A router still on the daily view settles into late, not refused. */
    assert_ok(lease1(f, 2, 4, t + 3, "daily", T0 + 10 * DAY, 7, false, 0));
    assert_int_equal(win(f, "daily")->late, 7);

    assert_ok(put_policy_at(f, "pol", -1, 0, MONTHLY_LIMIT, SOFT_LIMIT, t + 4));
    assert_null(win(f, "daily"));
    assert_int_equal(kp_budget_window_grant(win(f, "monthly"), 1), 42);
    assert_refused(lease1(f, 1, 5, t + 5, "daily", T0, 1, false, 0), KP_ENOENT,
                   "items[0].budget: policy 'pol' has no budget 'daily'");
    assert_ok(put_policy_at(f, "pol", -1, 0, -1, SOFT_LIMIT, t + 6));
    assert_null(kp_fsm_get(f, KP_KIND_BUDGET_STATE, "pol"));

    assert_ok(lease1(f, 1, 6, t + 7, "alerts", T0 + 10 * DAY, 0, false, 1));
    assert_non_null(kp_fsm_get(f, KP_KIND_BUDGET_STATE, "pol"));
    struct kp_cmd_target del = {(char *)"pol"};
    assert_ok(apply_at(f, KP_OP_DELETE_POLICY, &del, t + 8));
    assert_null(kp_fsm_get(f, KP_KIND_BUDGET_STATE, "pol"));
    assert_int_equal(kp_fsm_count(f, KP_KIND_BUDGET_STATE), 0);
    assert_int_equal(kp_fsm_count(f, KP_KIND_LEASE_NODE), 2); /* nodes stay known */
}

/* budget_reset zeroes spent and drops every grant of one budget, and is
 * audited with what it dropped (leases are not); routers that still
 * spend what they held show up as overshoot. */
static void test_reset(void **state)
{
    struct kp_fsm *f = *state;
    assert_ok(put_policy(f));
    assert_ok(lease1(f, 1, 1, T0 + 1, "daily", T0, 0, false, 1000000000));
    assert_ok(lease1(f, 1, 2, T0 + 2, "daily", T0, 200000000, false, 0));
    assert_ok(lease1(f, 2, 1, T0 + 3, "monthly", T0, 0, false, 9));
    assert_int_equal(kp_fsm_audit_count(f), 1);
    struct kp_cmd_budget_reset r = {(char *)"pol", (char *)"daily"};
    assert_ok(apply_at(f, KP_OP_BUDGET_RESET, &r, T0 + 4));
    assert_int_equal(res.version, kp_fsm_get(f, KP_KIND_BUDGET_STATE, "pol")->version);
    assert_int_equal(kp_fsm_audit_count(f), 2);
    const struct kp_audit_entry *a = kp_fsm_audit_entry(f, 1);
    assert_string_equal(a->action, "budget_reset");
    assert_string_equal(a->target, "pol");
    assert_string_equal(a->result, "ok (budget daily: spent 200000000 and 1 grants of 800000000 "
                                   "dropped, window 1767225600000)");
    const struct kp_budget_window_state *w = win(f, "daily");
    assert_int_equal(w->spent, 0);
    assert_int_equal(w->ngrants, 0);
    assert_int_equal(kp_budget_window_grant(win(f, "monthly"), 2), 9); /* one budget only */

    assert_ok(lease1(f, 1, 3, T0 + 5, "daily", T0, 300000000, false, 0));
    w = win(f, "daily");
    assert_int_equal(w->spent, 300000000);
    assert_int_equal(w->overshoot, 300000000);

    r.budget = (char *)"alerts";
    assert_ok(apply_at(f, KP_OP_BUDGET_RESET, &r, T0 + 6));
    assert_string_equal(kp_fsm_audit_entry(f, 2)->result,
                        "ok (budget alerts: no lease yet, nothing to reset)");
    r.budget = (char *)"x";
    assert_refused(apply_at(f, KP_OP_BUDGET_RESET, &r, T0 + 7), KP_ENOENT,
                   "budget: policy 'pol' has no budget 'x'");
    r.id = (char *)"nope";
    assert_refused(apply_at(f, KP_OP_BUDGET_RESET, &r, T0 + 8), KP_ENOENT, "no policy 'nope'");
    assert_string_equal(kp_fsm_audit_entry(f, 4)->result, "refused: no policy 'nope'");

    /* A reset after the window's end rolls it over first. */
    r = (struct kp_cmd_budget_reset){(char *)"pol", (char *)"daily"};
    assert_ok(apply_at(f, KP_OP_BUDGET_RESET, &r, T0 + DAY));
    w = win(f, "daily");
    assert_int_equal(w->start_ms, T0 + DAY);
    assert_int_equal(w->prev_spent, 300000000);
}

/* Both ops can be built from JSON the way the control API builds
 * commands (docs/registry.md), with the same refusals a replica makes. */
static void test_from_json(void **state)
{
    struct kp_fsm *f = *state;
    struct kp_buf b;
    char err[256], field[64];
    assert_ok(put_policy(f));
    json_error_t jerr;
    json_t *body = json_loads("{\"node_id\": 3, \"seq\": 1, \"items\": [{\"policy\": \"pol\", "
                              "\"budget\": \"daily\", \"window_start_ms\": 1767225600000, "
                              "\"want_nanousd\": 5}]}",
                              0, &jerr);
    assert_non_null(body);
    kp_buf_init(&b);
    assert_int_equal(kp_command_from_json(KP_OP_BUDGET_LEASE, NULL, body, T0, &who, false, 0, &b,
                                          err, sizeof(err), field, sizeof(field)),
                     KP_OK);
    assert_ok(apply_bytes(f, &b));
    assert_int_equal(res.lease.items[0].granted, 5);
    kp_buf_free(&b);
    json_decref(body);

    body = json_loads("{\"budget\": \"daily\"}", 0, &jerr);
    kp_buf_init(&b);
    assert_int_equal(kp_command_from_json(KP_OP_BUDGET_RESET, "pol", body, T0, &who, false, 0, &b,
                                          err, sizeof(err), field, sizeof(field)),
                     KP_OK);
    assert_ok(apply_bytes(f, &b));
    assert_int_equal(win(f, "daily")->ngrants, 0);
    kp_buf_free(&b);
    json_decref(body);

    body = json_loads("{\"node_id\": 3, \"seq\": 2, \"items\": [{\"policy\": \"pol\", "
                      "\"budget\": \"daily\", \"window_start_ms\": 0, \"want_nanousd\": -1}]}",
                      0, &jerr);
    kp_buf_init(&b);
    assert_int_equal(kp_command_from_json(KP_OP_BUDGET_LEASE, NULL, body, T0, &who, false, 0, &b,
                                          err, sizeof(err), field, sizeof(field)),
                     KP_EINVAL);
    assert_string_equal(err, "items[0].want_nanousd: must be 0..1000000000000000000");
    assert_string_equal(field, "items[0].want_nanousd");
    kp_buf_free(&b);
    json_decref(body);
}

/* --- the invariant under random traffic ---------------------------------------------------- */

enum { NODES = 4, NBUDGETS = 4, STEPS = 4000 };

static const struct {
    const char *policy, *budget;
    bool hard;
    int64_t limit;
    uint8_t window;
} budgets[NBUDGETS] = {
    {"pol", "daily", true, DAILY_LIMIT, KP_BUDGET_DAILY},
    {"pol", "monthly", true, MONTHLY_LIMIT, KP_BUDGET_MONTHLY},
    {"pol", "alerts", false, SOFT_LIMIT, KP_BUDGET_DAILY},
    {"pol2", "small", true, 1000000, KP_BUDGET_DAILY},
};

/* What a correct router knows: the grant it was last told it holds of
 * each budget and that grant's window. It spends only out of it. */
struct router {
    uint64_t seq;
    kp_nanousd grant[NBUDGETS];
    int64_t window[NBUDGETS];
    int64_t skew;       /* its clock's offset */
    struct kp_buf last; /* its last command, replayed now and then */
};

static uint64_t rng = 88172645463325252ull;
static unsigned overshoots; /* settles beyond the grant */

static uint64_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static kp_nanousd rand_upto(kp_nanousd n)
{
    return n > 0 ? (kp_nanousd)(next_rand() % ((uint64_t)n + 1)) : 0;
}

static const struct kp_budget_window_state *rwin(struct kp_fsm *f, int b)
{
    return kp_fsm_budget_window(f, budgets[b].policy, budgets[b].budget);
}

/* After every apply: for hard budgets spent + grants <= limit + excess,
 * where excess is exactly the overshoot of the one buggy router (there are
 * no policy changes here); spent never goes down within a window, and
 * windows only move forward. */
static void check_invariants(struct kp_fsm *f, int64_t last_start[], kp_nanousd last_spent[])
{
    for (int b = 0; b < NBUDGETS; b++) {
        const struct kp_budget_window_state *w = rwin(f, b);
        if (w == NULL)
            continue;
        if (budgets[b].hard) {
            if (committed(w) > budgets[b].limit + w->excess)
                fail_msg("%s: spent %lld + grants %lld > limit %lld + excess %lld",
                         budgets[b].budget, (long long)w->spent,
                         (long long)kp_budget_window_granted(w), (long long)budgets[b].limit,
                         (long long)w->excess);
            assert_int_equal(w->excess, w->overshoot);
        }
        assert_true(w->start_ms >= last_start[b]);
        if (w->start_ms == last_start[b])
            assert_true(w->spent >= last_spent[b]);
        last_start[b] = w->start_ms;
        last_spent[b] = w->spent;
    }
}

/* One router's report: for a few budgets, spend some of what it holds,
 * maybe give the rest back, and ask for more. A @buggy one now and then
 * settles more than it held. */
static uint32_t build_items(struct router *r, int64_t ts, struct kp_lease_item *items, int which[],
                            bool buggy)
{
    uint32_t n = 0;
    for (int b = 0; b < NBUDGETS; b++) {
        if (next_rand() % 2)
            continue;
        int64_t win_now = kp_budget_window_start(budgets[b].window, ts);
        bool have = r->grant[b] > 0;
        kp_nanousd spend = rand_upto(r->grant[b]);
        if (buggy && next_rand() % 40 == 0) {
            spend += 1 + rand_upto(budgets[b].limit / 100);
            overshoots++;
        }
        kp_nanousd want = rand_upto(budgets[b].limit / 3);
        items[n] = (struct kp_lease_item){(char *)budgets[b].policy,     (char *)budgets[b].budget,
                                          have ? r->window[b] : win_now, spend,
                                          next_rand() % 8 == 0,          want};
        which[n++] = b;
    }
    return n;
}

/* Four nodes with skewed clocks report and ask at random over two months
 * of virtual time (many daily and a monthly rollover), now and then
 * replaying their last command or naming a budget that does not exist;
 * one of them sometimes settles more than it held. After every apply the
 * invariant holds (spent + grants <= limit, plus exactly that overshoot),
 * nothing is granted beyond the limit, spent never decreases within a
 * window, replays and refusals change nothing, and every answer matches
 * the state. A replica restored from a snapshot half way and one fed
 * everything end byte-identical. */
static void test_invariant_random(void **state)
{
    struct kp_fsm *f = *state, *whole = kp_fsm_new(), *half = NULL;
    struct router nodes[NODES] = {{0}};
    struct kp_buf *log = calloc(2 * STEPS + 2, sizeof(*log));
    size_t nlog = 0, replays = 0, refused = 0, zero_grants = 0, grants = 0;
    int64_t last_start[NBUDGETS] = {0}, now = T0;
    kp_nanousd last_spent[NBUDGETS] = {0};
    char err[256];
    assert_non_null(whole);
    struct kp_budget b1[3] = {
        {(char *)"daily", KP_BUDGET_DAILY, DAILY_LIMIT, KP_BUDGET_HARD},
        {(char *)"monthly", KP_BUDGET_MONTHLY, MONTHLY_LIMIT, KP_BUDGET_HARD},
        {(char *)"alerts", KP_BUDGET_DAILY, SOFT_LIMIT, KP_BUDGET_SOFT},
    };
    struct kp_budget b2 = {(char *)"small", KP_BUDGET_DAILY, 1000000, KP_BUDGET_HARD};
    struct kp_policy p1 = {
        .e.id = (char *)"pol", .scope_kind = KP_SCOPE_GLOBAL, .budgets = b1, .nbudgets = 3};
    struct kp_policy p2 = {
        .e.id = (char *)"pol2", .scope_kind = KP_SCOPE_GLOBAL, .budgets = &b2, .nbudgets = 1};
    encode_at(KP_OP_PUT_POLICY, &p1, T0, &log[nlog]);
    assert_ok(apply_bytes(f, &log[nlog++]));
    encode_at(KP_OP_PUT_POLICY, &p2, T0, &log[nlog]);
    assert_ok(apply_bytes(f, &log[nlog++]));
    for (int i = 0; i < NODES; i++)
        nodes[i].skew = (int64_t)(next_rand() % 600001) - 300000;

    for (int step = 0; step < STEPS; step++) {
        now += (int64_t)(next_rand() % (2 * HOUR / 3));
        int n = (int)(next_rand() % NODES);
        struct router *r = &nodes[n];
        struct kp_buf b;
        if (r->seq > 0 && next_rand() % 20 == 0) { /* a replay of its last */
            uint64_t before = node_rec(f, (uint64_t)n + 1)->e.version;
            assert_ok(apply_bytes(f, &r->last));
            assert_true(res.lease.duplicate);
            assert_int_equal(node_rec(f, (uint64_t)n + 1)->e.version, before);
            kp_buf_init(&log[nlog]);
            kp_buf_append(&log[nlog++], r->last.data, r->last.len);
            replays++;
            continue;
        }
        struct kp_lease_item items[NBUDGETS + 1];
        int which[NBUDGETS + 1];
        int64_t ts = now + r->skew;
        uint32_t k = build_items(r, ts, items, which, n == NODES - 1);
        if (next_rand() % 50 == 0) { /* a bogus item: refused whole */
            items[k] = (struct kp_lease_item){(char *)"pol", (char *)"gone", ts, 1, false, 1};
            encode_lease((uint64_t)n + 1, r->seq + 1, ts, items, k + 1, &b);
            assert_int_equal(apply_bytes(f, &b), KP_ENOENT);
            log[nlog++] = b;
            refused++;
            check_invariants(f, last_start, last_spent);
        }
        encode_lease((uint64_t)n + 1, ++r->seq, ts, items, k, &b);
        assert_ok(apply_bytes(f, &b));
        assert_false(res.lease.duplicate);
        assert_int_equal(res.lease.n, k);
        for (uint32_t i = 0; i < k; i++) {
            int bi = which[i];
            const struct kp_lease_grant *g = &res.lease.items[i];
            const struct kp_budget_window_state *w = rwin(f, bi);
            assert_int_equal(g->grant, kp_budget_window_grant(w, (uint64_t)n + 1));
            assert_int_equal(g->window_start_ms, w->start_ms);
            if (!budgets[bi].hard)
                assert_int_equal(g->granted, items[i].want);
            else if (g->granted > 0) /* grants only ever come out of room */
                assert_true(committed(w) <= budgets[bi].limit);
            r->grant[bi] = g->grant;
            r->window[bi] = g->window_start_ms;
            zero_grants += items[i].want > 0 && g->granted == 0;
            grants += items[i].want > 0;
        }
        check_invariants(f, last_start, last_spent);
        kp_buf_free(&r->last);
        kp_buf_init(&r->last);
        kp_buf_append(&r->last, b.data, b.len);
        log[nlog++] = b;
        if (step == STEPS / 2) {
            struct kp_buf s;
            kp_buf_init(&s);
            assert_int_equal(kp_fsm_snapshot(f, &s, err, sizeof(err)), KP_OK);
            half = kp_fsm_new();
            assert_int_equal(kp_fsm_restore(half, s.data, s.len, 0, err, sizeof(err)), KP_OK);
            kp_buf_free(&s);
        }
    }
    /* Replay the same entries into two more replicas. */
    struct kp_fsm_result r2;
    uint64_t half_index = kp_fsm_applied_index(half);
    assert_int_equal(kp_fsm_applied_index(f), nlog);
    for (size_t i = 0; i < nlog; i++) {
        uint64_t index = 1 + i;
        assert_int_equal(kp_fsm_apply(whole, index, log[i].data, log[i].len, &r2), KP_OK);
        if (index > half_index)
            assert_int_equal(kp_fsm_apply(half, index, log[i].data, log[i].len, &r2), KP_OK);
        kp_buf_free(&log[i]);
    }
    struct kp_buf sa, sb, sc;
    kp_buf_init(&sa);
    kp_buf_init(&sb);
    kp_buf_init(&sc);
    assert_int_equal(kp_fsm_snapshot(f, &sa, err, sizeof(err)), KP_OK);
    assert_int_equal(kp_fsm_snapshot(whole, &sb, err, sizeof(err)), KP_OK);
    assert_int_equal(kp_fsm_snapshot(half, &sc, err, sizeof(err)), KP_OK);
    assert_int_equal(sa.len, sb.len);
    assert_memory_equal(sa.data, sb.data, sa.len);
    assert_int_equal(sa.len, sc.len);
    assert_memory_equal(sa.data, sc.data, sa.len);
    print_message("%d steps over %lld days: %zu replays, %zu refused, %u overshooting settles, "
                  "%zu of %zu asks granted nothing\n",
                  STEPS, (long long)((now - T0) / DAY), replays, refused, overshoots, zero_grants,
                  grants);
    assert_true(overshoots > 0);
    kp_buf_free(&sa);
    kp_buf_free(&sb);
    kp_buf_free(&sc);
    for (int i = 0; i < NODES; i++)
        kp_buf_free(&nodes[i].last);
    free(log);
    kp_fsm_free(whole);
    kp_fsm_free(half);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_window_math),
        cmocka_unit_test_setup_teardown(test_grant_settle_release, setup, teardown),
        cmocka_unit_test_setup_teardown(test_grant_rule, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replay, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rollover, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_soft_and_overshoot, setup, teardown),
        cmocka_unit_test_setup_teardown(test_policy_changes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reset, setup, teardown),
        cmocka_unit_test_setup_teardown(test_from_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_invariant_random, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

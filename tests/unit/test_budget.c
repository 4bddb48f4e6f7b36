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
        b[n++] = (struct kp_budget){.name = (char *)"daily",
                                    .window = daily_window,
                                    .limit_nanousd = daily,
                                    .kind = KP_BUDGET_HARD};
    if (monthly >= 0)
        b[n++] = (struct kp_budget){.name = (char *)"monthly",
                                    .window = KP_BUDGET_MONTHLY,
                                    .limit_nanousd = monthly,
                                    .kind = KP_BUDGET_HARD};
    if (soft >= 0)
        b[n++] = (struct kp_budget){.name = (char *)"alerts",
                                    .window = KP_BUDGET_DAILY,
                                    .limit_nanousd = soft,
                                    .kind = KP_BUDGET_SOFT};
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
    return (struct kp_lease_item){(char *)"pol", (char *)budget, window, settled,
                                  release,       want,           false};
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

/* The window of a definition containing @ms: [*start, *end). */
static void bounds(uint8_t kind, int32_t offset, int64_t anchor, int64_t period, int64_t ms,
                   int64_t *start, int64_t *end)
{
    struct kp_budget_window_def w = {kind, offset, anchor, period};
    *start = kp_budget_window_def_start(&w, ms);
    *end = kp_budget_window_def_end(&w, ms);
}

#define assert_window(kind, offset, anchor, period, ms, want_start, want_end)                      \
    do {                                                                                           \
        int64_t s_, e_;                                                                            \
        bounds(kind, offset, anchor, period, ms, &s_, &e_);                                        \
        if (s_ != (want_start) || e_ != (want_end))                                                \
            fail_msg("%s at %lld: [%lld, %lld), wanted [%lld, %lld)", #kind, (long long)(ms),      \
                     (long long)s_, (long long)e_, (long long)(want_start),                        \
                     (long long)(want_end));                                                       \
    } while (0)

#define MINUTE    60000LL
#define IST       330                   /* +05:30 */
#define PST       -480                  /* -08:00 */
#define JAN5      (T0 + 4 * DAY)        /* Monday 2026-01-05 */
#define DEC29     (T0 - 3 * DAY)        /* Monday 2025-12-29 */
#define FEB1_IST  1769884200000LL       /* 2026-02-01T00:00+05:30 = 01-31T18:30Z */
#define MAR1_IST  1772303400000LL       /* 2026-03-01T00:00+05:30 */
#define JAN1_IST  (T0 - IST * MINUTE)   /* 2026-01-01T00:00+05:30 */
#define JAN1_PST  (T0 - PST * MINUTE)   /* 2026-01-01T00:00-08:00 = 08:00Z */
#define FEB1_PST  (FEB1 - PST * MINUTE) /* 2026-02-01T00:00-08:00 */
#define LEAP_NOON 1835438400000LL       /* 2028-02-29T12:00Z */

/* Daily and monthly UTC windows: days and calendar months, leap years and
 * year ends included. */
static void test_window_utc(void **state)
{
    (void)state;
    assert_window(KP_BUDGET_DAILY, 0, 0, 0, T0, T0, T0 + DAY);
    assert_window(KP_BUDGET_DAILY, 0, 0, 0, T0 + DAY - 1, T0, T0 + DAY);
    assert_window(KP_BUDGET_MONTHLY, 0, 0, 0, FEB1 - 1, T0, FEB1);
    assert_window(KP_BUDGET_MONTHLY, 0, 0, 0, FEB1, FEB1, FEB1 + 28 * DAY);
    /* December rolls into the next year; February 2028 has 29 days. */
    assert_window(KP_BUDGET_MONTHLY, 0, 0, 0, 1796083200000 + DAY, 1796083200000, 1798761600000);
    assert_window(KP_BUDGET_MONTHLY, 0, 0, 0, 1835395200000, 1832976000000, 1835481600000);
    assert_window(KP_BUDGET_MONTHLY, 0, 0, 0, 0, 0, 31 * DAY);
    /* The budget form gives the same. */
    struct kp_budget b = {.name = (char *)"m", .window = KP_BUDGET_MONTHLY};
    assert_int_equal(kp_budget_window_start_of(&b, FEB1 + 5), FEB1);
    assert_int_equal(kp_budget_window_end_of(&b, FEB1 - 5), FEB1);
}

/* Weekly windows are ISO weeks: from Monday 00:00 to the next Monday, a
 * Sunday's last millisecond still in the week it ends. */
static void test_window_weekly(void **state)
{
    (void)state;
    assert_window(KP_BUDGET_WEEKLY, 0, 0, 0, T0, DEC29, JAN5); /* a Thursday */
    assert_window(KP_BUDGET_WEEKLY, 0, 0, 0, JAN5, JAN5, JAN5 + 7 * DAY);
    assert_window(KP_BUDGET_WEEKLY, 0, 0, 0, JAN5 - 1, DEC29, JAN5); /* Sunday night */
    assert_window(KP_BUDGET_WEEKLY, 0, 0, 0, JAN5 + 7 * DAY - 1, JAN5, JAN5 + 7 * DAY);
    /* The Unix epoch was a Thursday. */
    assert_window(KP_BUDGET_WEEKLY, 0, 0, 0, 0, -3 * DAY, 4 * DAY);
}

/* Fixed UTC offsets move every calendar boundary: +05:30 starts the day
 * at 18:30 UTC the day before, -08:00 at 08:00 UTC; +01:00 at 23:00 UTC
 * the day before. Months and weeks follow local dates, so an instant in
 * January in UTC may be in February locally, or the reverse. */
static void test_window_offsets(void **state)
{
    (void)state;
    assert_window(KP_BUDGET_DAILY, 60, 0, 0, T0, T0 - HOUR, T0 + DAY - HOUR);
    /* +05:30 across local midnight. */
    assert_window(KP_BUDGET_DAILY, IST, 0, 0, T0, JAN1_IST, JAN1_IST + DAY);
    assert_window(KP_BUDGET_DAILY, IST, 0, 0, JAN1_IST - 1, JAN1_IST - DAY, JAN1_IST);
    assert_window(KP_BUDGET_DAILY, IST, 0, 0, JAN1_IST + DAY, JAN1_IST + DAY, JAN1_IST + 2 * DAY);
    /* -08:00: 00:00 UTC on January 1st is still December 31st. */
    assert_window(KP_BUDGET_DAILY, PST, 0, 0, T0, JAN1_PST - DAY, JAN1_PST);
    assert_window(KP_BUDGET_DAILY, PST, 0, 0, JAN1_PST, JAN1_PST, JAN1_PST + DAY);
    /* Month ends: January 31st 18:30 UTC is February 1st in India... */
    assert_window(KP_BUDGET_MONTHLY, IST, 0, 0, FEB1_IST, FEB1_IST, MAR1_IST);
    assert_window(KP_BUDGET_MONTHLY, IST, 0, 0, FEB1_IST - 1, JAN1_IST, FEB1_IST);
    /* ... and February 1st 03:00 UTC still January 31st in California. */
    assert_window(KP_BUDGET_MONTHLY, PST, 0, 0, FEB1 + 3 * HOUR, JAN1_PST, FEB1_PST);
    assert_window(KP_BUDGET_MONTHLY, PST, 0, 0, FEB1_PST, FEB1_PST, 1772352000000);
    /* A leap day, locally. */
    assert_window(KP_BUDGET_DAILY, IST, 0, 0, LEAP_NOON, 1835375400000, 1835461800000);
    assert_window(KP_BUDGET_MONTHLY, IST, 0, 0, LEAP_NOON, 1832956200000, 1835461800000);
    assert_window(KP_BUDGET_MONTHLY, PST, 0, 0, LEAP_NOON, 1833004800000, 1835510400000);
    /* Weeks: Sunday 18:30 UTC is Monday in India; Monday 03:00 UTC is
     * Sunday in California. */
    assert_window(KP_BUDGET_WEEKLY, IST, 0, 0, JAN5 - IST * MINUTE, JAN5 - IST * MINUTE,
                  JAN5 + 7 * DAY - IST * MINUTE);
    assert_window(KP_BUDGET_WEEKLY, IST, 0, 0, JAN5 - IST * MINUTE - 1, DEC29 - IST * MINUTE,
                  JAN5 - IST * MINUTE);
    assert_window(KP_BUDGET_WEEKLY, PST, 0, 0, JAN5 + 3 * HOUR, DEC29 + 8 * HOUR, JAN5 + 8 * HOUR);
    /* West of UTC the first window starts before the epoch. */
    assert_window(KP_BUDGET_MONTHLY, PST, 0, 0, 0, -2649600000, 8 * HOUR);
    /* Extremes of the range. */
    assert_window(KP_BUDGET_DAILY, 840, 0, 0, T0, T0 - 14 * HOUR, T0 + 10 * HOUR);
    assert_window(KP_BUDGET_DAILY, -720, 0, 0, T0, T0 - 12 * HOUR, T0 + 12 * HOUR);
}

/* Fixed periods repeat from their anchor in both directions: a 14-day
 * sprint, a contract year, an hour anchored at half past; an offset is
 * ignored. */
static void test_window_fixed(void **state)
{
    (void)state;
    int64_t sprint = 14 * DAY;
    assert_window(KP_BUDGET_FIXED, 0, JAN5, sprint, JAN5, JAN5, JAN5 + sprint);
    assert_window(KP_BUDGET_FIXED, 0, JAN5, sprint, JAN5 + sprint - 1, JAN5, JAN5 + sprint);
    assert_window(KP_BUDGET_FIXED, 0, JAN5, sprint, JAN5 + 30 * DAY, JAN5 + 2 * sprint,
                  JAN5 + 3 * sprint);
    /* Before the anchor: k is negative. */
    assert_window(KP_BUDGET_FIXED, 0, JAN5, sprint, JAN5 - 1, JAN5 - sprint, JAN5);
    assert_window(KP_BUDGET_FIXED, 0, JAN5, sprint, JAN5 - 100 * DAY, JAN5 - 8 * sprint,
                  JAN5 - 7 * sprint);
    assert_window(KP_BUDGET_FIXED, 0, JAN5, sprint, JAN5 - sprint, JAN5 - sprint, JAN5);
    /* A contract year from 2025-07-01 (365 days: no leap day in it). */
    assert_window(KP_BUDGET_FIXED, 0, 1751328000000, 365 * DAY, FEB1, 1751328000000, 1782864000000);
    assert_window(KP_BUDGET_FIXED, 0, T0 + 30 * MINUTE, HOUR, T0 + 10 * MINUTE, T0 - 30 * MINUTE,
                  T0 + 30 * MINUTE);
    assert_window(KP_BUDGET_FIXED, IST, JAN5, sprint, JAN5, JAN5, JAN5 + sprint);
    /* Equal definitions, and what differs. */
    struct kp_budget a = {.window = KP_BUDGET_FIXED, .period_start_ms = JAN5, .period_ms = sprint};
    struct kp_budget b = a;
    struct kp_budget_window_def da = kp_budget_window_def_of(&a), db = kp_budget_window_def_of(&b);
    assert_true(kp_budget_window_def_equal(&da, &db));
    b.period_start_ms += DAY;
    db = kp_budget_window_def_of(&b);
    assert_false(kp_budget_window_def_equal(&da, &db));
    assert_int_equal(kp_budget_window_start_of(&a, JAN5 + DAY), JAN5);
    assert_int_equal(kp_budget_window_end_of(&b, JAN5 + DAY), JAN5 + DAY + sprint);
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

/* Policy "pol" with the one budget @b (its name is "b"). */
static int put_budget_at(struct kp_fsm *f, struct kp_budget b, int64_t ts)
{
    b.name = (char *)"b";
    struct kp_policy p = {
        .e.id = (char *)"pol", .scope_kind = KP_SCOPE_GLOBAL, .budgets = &b, .nbudgets = 1};
    return apply_at(f, KP_OP_PUT_POLICY, &p, ts);
}

/* Rollover with each kind of window: weekly at +05:30, monthly at -08:00
 * and a 14-day fixed period: nothing moves until the window's last
 * millisecond has passed, then the next lease starts the next window
 * (the previous one keeps what was spent in it), also when the clock
 * jumps several windows ahead. */
static void test_rollover_kinds(void **state)
{
    (void)state;
    static const struct kp_budget defs[] = {
        {.window = KP_BUDGET_WEEKLY, .limit_nanousd = 1000, .utc_offset_minutes = IST},
        {.window = KP_BUDGET_MONTHLY, .limit_nanousd = 1000, .utc_offset_minutes = PST},
        {.window = KP_BUDGET_FIXED,
         .limit_nanousd = 1000,
         .period_start_ms = JAN5 + 9 * HOUR,
         .period_ms = 14 * DAY},
    };
    for (size_t i = 0; i < sizeof(defs) / sizeof(defs[0]); i++) {
        struct kp_fsm *f = kp_fsm_new();
        int64_t ts = T0 + 17 * DAY + 5 * HOUR, start = kp_budget_window_start_of(&defs[i], ts);
        int64_t end = kp_budget_window_end_of(&defs[i], ts);
        next_index = 0;
        assert_ok(put_budget_at(f, defs[i], ts));
        assert_ok(lease1(f, 1, 1, ts, "b", start, 0, false, 400));
        assert_int_equal(win(f, "b")->start_ms, start);
        assert_ok(lease1(f, 1, 2, end - 1, "b", start, 300, false, 0));
        assert_int_equal(win(f, "b")->start_ms, start);
        assert_int_equal(win(f, "b")->spent, 300);
        assert_ok(lease1(f, 2, 1, end, "b", end, 0, false, 50));
        const struct kp_budget_window_state *w = win(f, "b");
        assert_int_equal(w->start_ms, end);
        assert_int_equal(w->prev_start_ms, start);
        assert_int_equal(w->prev_spent, 300);
        assert_int_equal(w->spent, 0);
        assert_int_equal(w->ngrants, 1);
        assert_int_equal(res.lease.items[0].window_start_ms, end);
        /* Node 1 settles the rest of the old window: it goes to prev. */
        assert_ok(lease1(f, 1, 3, end + 1, "b", start, 100, false, 0));
        assert_int_equal(win(f, "b")->prev_spent, 400);
        /* Three windows later. */
        int64_t later = kp_budget_window_end_of(&defs[i], kp_budget_window_end_of(&defs[i], end));
        assert_ok(lease1(f, 2, 2, later + 7, "b", end, 20, false, 0));
        w = win(f, "b");
        assert_int_equal(w->start_ms, later);
        assert_int_equal(w->prev_start_ms, end);
        assert_int_equal(w->prev_spent, 20);
        kp_fsm_free(f);
    }
}

/* Changing a budget's window definition (offset, type, anchor, period)
 * under live leases re-anchors its window on the new definition's window
 * containing the put's ts and keeps spent and grants, which routers hold;
 * a put that changes nothing about the window leaves the state alone; a
 * change after the old window ended rolls over instead. */
static void test_window_redefine(void **state)
{
    struct kp_fsm *f = *state;
    int64_t t = T0 + 10 * DAY + HOUR; /* 01:00 UTC, a Sunday */
    struct kp_budget b = {.window = KP_BUDGET_DAILY, .limit_nanousd = DAILY_LIMIT};
    assert_ok(put_budget_at(f, b, T0));
    assert_ok(lease1(f, 1, 1, t, "b", T0 + 10 * DAY, 0, false, 1000000000));
    assert_ok(lease1(f, 1, 2, t, "b", T0 + 10 * DAY, 200000000, false, 0));
    uint64_t v = kp_fsm_get(f, KP_KIND_BUDGET_STATE, "pol")->version;

    /* The same window again (a new limit only): untouched. */
    b.limit_nanousd += 1;
    assert_ok(put_budget_at(f, b, t + 1));
    assert_int_equal(kp_fsm_get(f, KP_KIND_BUDGET_STATE, "pol")->version, v);

    /* +05:30: 01:00 UTC is 06:30 in India, the day began at 18:30 UTC. */
    b.utc_offset_minutes = IST;
    assert_ok(put_budget_at(f, b, t + 2));
    const struct kp_budget_window_state *w = win(f, "b");
    assert_int_equal(w->start_ms, T0 + 10 * DAY - IST * MINUTE);
    assert_int_equal(w->spent, 200000000);
    assert_int_equal(kp_budget_window_grant(w, 1), 800000000);
    assert_int_equal(w->prev_start_ms, 0);
    /* Settles tagged with the new start count in the window. */
    assert_ok(lease1(f, 1, 3, t + 3, "b", w->start_ms, 100000000, false, 0));
    assert_int_equal(win(f, "b")->spent, 300000000);

    /* Weekly at the same offset: the week began on Monday 5th, India. */
    b.window = KP_BUDGET_WEEKLY;
    assert_ok(put_budget_at(f, b, t + 4));
    w = win(f, "b");
    assert_int_equal(w->start_ms, JAN5 - IST * MINUTE);
    assert_int_equal(w->spent, 300000000);
    assert_int_equal(kp_budget_window_grant(w, 1), 700000000);

    /* Fixed 14 days from January 5th, then the same period moved by a day. */
    b = (struct kp_budget){.window = KP_BUDGET_FIXED,
                           .limit_nanousd = DAILY_LIMIT,
                           .period_start_ms = JAN5,
                           .period_ms = 14 * DAY};
    assert_ok(put_budget_at(f, b, t + 5));
    assert_int_equal(win(f, "b")->start_ms, JAN5);
    b.period_start_ms = JAN5 + DAY;
    assert_ok(put_budget_at(f, b, t + 6));
    w = win(f, "b");
    assert_int_equal(w->start_ms, JAN5 + DAY);
    assert_int_equal(w->spent, 300000000);
    /* A shorter period whose window containing ts started later. */
    b.period_ms = 2 * DAY;
    assert_ok(put_budget_at(f, b, t + 7));
    w = win(f, "b");
    assert_int_equal(w->start_ms, JAN5 + 5 * DAY); /* January 10th */
    assert_int_equal(w->spent, 300000000);
    assert_int_equal(kp_budget_window_grant(w, 1), 700000000);
    assert_int_equal(w->prev_start_ms, 0);

    /* Past that window's end, a change rolls over: spend and grants
     * went with the old window. */
    int64_t later = JAN5 + 9 * DAY;
    b.period_ms = 3 * DAY;
    assert_ok(put_budget_at(f, b, later));
    w = win(f, "b");
    assert_int_equal(w->start_ms, JAN5 + 7 * DAY);
    assert_int_equal(w->spent, 0);
    assert_int_equal(w->ngrants, 0);
    assert_int_equal(w->prev_start_ms, JAN5 + 5 * DAY);
    assert_int_equal(w->prev_spent, 300000000);
}

/* Threshold actions and window fields are checked when a command is
 * decoded (on every replica, before apply), with the field's path; at
 * most 8 actions, ascending by at_percent. */
static void test_action_refusals(void **state)
{
    struct kp_fsm *f = *state;
    struct kp_budget_action a[9] = {
        {.at_percent = 50, .action = KP_BUDGET_ACTION_ALERT},
        {.at_percent = 90, .action = KP_BUDGET_ACTION_DOWNGRADE},
    };
    struct kp_budget b = {.window = KP_BUDGET_WEEKLY,
                          .limit_nanousd = 5,
                          .utc_offset_minutes = PST,
                          .actions = a,
                          .nactions = 2};
    assert_refused(put_budget_at(f, b, T0), KP_EINVAL,
                   "budgets[0].actions[1].model: required for downgrade");
    a[1].model = (char *)"gpt-4o-mini";
    a[0].rpm = 3;
    assert_refused(put_budget_at(f, b, T0), KP_EINVAL,
                   "budgets[0].actions[0].rpm: only for throttle, not alert");
    a[0].rpm = 0;
    a[0].at_percent = 95;
    assert_refused(put_budget_at(f, b, T0), KP_EINVAL,
                   "budgets[0].actions[1]: at_percent 90 is below actions[0]'s 95 (actions ascend "
                   "by at_percent)");
    a[0].at_percent = 1001;
    assert_refused(put_budget_at(f, b, T0), KP_EINVAL,
                   "budgets[0].actions[0].at_percent: must be 1..1000");
    a[0].at_percent = 50;
    for (int i = 2; i < 9; i++)
        a[i] = (struct kp_budget_action){.at_percent = (uint32_t)(100 + i),
                                         .action = KP_BUDGET_ACTION_ALERT};
    b.nactions = 9;
    assert_refused(put_budget_at(f, b, T0), KP_EINVAL, "budgets[0].actions: more than 8 entries");
    b.nactions = 8;
    assert_ok(put_budget_at(f, b, T0));
    b.nactions = 0;
    b.utc_offset_minutes = -721;
    assert_refused(put_budget_at(f, b, T0), KP_EINVAL,
                   "budgets[0].utc_offset_minutes: must be -720..840");
    b.utc_offset_minutes = 0;
    b.period_ms = HOUR;
    assert_refused(put_budget_at(f, b, T0), KP_EINVAL,
                   "budgets[0].period_ms: only for a fixed window, not weekly");
    b.window = KP_BUDGET_FIXED;
    b.period_ms = HOUR - 1;
    assert_refused(put_budget_at(f, b, T0), KP_EINVAL,
                   "budgets[0].period_ms: must be 3600000..31622400000 for a fixed window (1 hour "
                   "to 366 days)");
    b.period_ms = 366 * DAY;
    b.utc_offset_minutes = 60;
    assert_refused(put_budget_at(f, b, T0), KP_EINVAL,
                   "budgets[0].utc_offset_minutes: must be 0 for a fixed window (it is anchored "
                   "at period_start_ms)");
    b.utc_offset_minutes = 0;
    assert_ok(put_budget_at(f, b, T0));
}

/* A budget's new fields survive every form it takes: the command
 * (encode, decode, encode: the same bytes), the state machine and its
 * snapshot (restored, then the same bytes), and JSON (the rendered
 * policy, put back through the control API's path, gives the same
 * command). */
static void test_budget_roundtrip(void **state)
{
    struct kp_fsm *f = *state;
    struct kp_budget_action a[5] = {
        {.at_percent = 50, .action = KP_BUDGET_ACTION_ALERT},
        {.at_percent = 80, .action = KP_BUDGET_ACTION_DOWNGRADE, .model = (char *)"gpt-4o-mini"},
        {.at_percent = 100, .action = KP_BUDGET_ACTION_THROTTLE, .rpm = 60},
        {.at_percent = 100, .action = KP_BUDGET_ACTION_BLOCK},
        {.at_percent = 1000,
         .action = KP_BUDGET_ACTION_DISABLE_FEATURE,
         .feature = (char *)"summarize"},
    };
    struct kp_budget b[2] = {{.name = (char *)"week",
                              .window = KP_BUDGET_WEEKLY,
                              .limit_nanousd = 7000000000,
                              .kind = KP_BUDGET_SOFT,
                              .utc_offset_minutes = IST,
                              .actions = a,
                              .nactions = 5},
                             {.name = (char *)"sprint",
                              .window = KP_BUDGET_FIXED,
                              .limit_nanousd = 9,
                              .period_start_ms = JAN5,
                              .period_ms = 14 * DAY}};
    struct kp_policy p = {
        .e.id = (char *)"pol", .scope_kind = KP_SCOPE_GLOBAL, .budgets = b, .nbudgets = 2};
    struct kp_buf c1, c2, s1, s2;
    struct kp_command cmd;
    char err[256], field[128];
    encode_at(KP_OP_PUT_POLICY, &p, T0, &c1);
    assert_int_equal(kp_command_decode(c1.data, c1.len, &cmd, err, sizeof(err)), KP_OK);
    const struct kp_budget *d = &cmd.body.policy->budgets[0];
    assert_int_equal(d->utc_offset_minutes, IST);
    assert_int_equal(d->nactions, 5);
    assert_string_equal(d->actions[1].model, "gpt-4o-mini");
    assert_int_equal(d->actions[2].rpm, 60);
    assert_string_equal(d->actions[4].feature, "summarize");
    assert_int_equal(cmd.body.policy->budgets[1].period_ms, 14 * DAY);
    kp_buf_init(&c2);
    assert_int_equal(kp_command_encode(&cmd, &c2, err, sizeof(err)), KP_OK);
    assert_int_equal(c1.len, c2.len);
    assert_memory_equal(c1.data, c2.data, c1.len);
    kp_command_free(&cmd);
    kp_buf_free(&c2);
    assert_ok(apply_bytes(f, &c1));
    kp_buf_free(&c1);
    assert_ok(lease1(f, 1, 1, T0 + HOUR, "week", DEC29 - IST * MINUTE, 0, false, 5));
    assert_int_equal(win(f, "week")->start_ms, DEC29 - IST * MINUTE);

    /* Snapshot and restore. */
    struct kp_fsm *g = kp_fsm_new();
    kp_buf_init(&s1);
    kp_buf_init(&s2);
    assert_int_equal(kp_fsm_snapshot(f, &s1, err, sizeof(err)), KP_OK);
    assert_int_equal(kp_fsm_restore(g, s1.data, s1.len, 0, err, sizeof(err)), KP_OK);
    assert_int_equal(kp_fsm_snapshot(g, &s2, err, sizeof(err)), KP_OK);
    assert_int_equal(s1.len, s2.len);
    assert_memory_equal(s1.data, s2.data, s1.len);
    const struct kp_policy *rp = (const struct kp_policy *)kp_fsm_get(g, KP_KIND_POLICY, "pol");
    assert_int_equal(rp->budgets[0].nactions, 5);
    assert_int_equal(rp->budgets[0].actions[3].action, KP_BUDGET_ACTION_BLOCK);
    assert_int_equal(rp->budgets[1].period_start_ms, JAN5);
    kp_buf_free(&s1);
    kp_buf_free(&s2);
    kp_fsm_free(g);

    /* JSON: rendered without what means nothing (rpm but for throttle,
     * periods but for fixed), and accepted back as the same command. */
    const struct kp_entity *e = kp_fsm_get(f, KP_KIND_POLICY, "pol");
    json_t *j = kp_entity_json(e);
    assert_non_null(j);
    json_t *jb = json_array_get(json_object_get(j, "budgets"), 0);
    assert_int_equal(json_integer_value(json_object_get(jb, "utc_offset_minutes")), IST);
    assert_null(json_object_get(jb, "period_ms"));
    json_t *ja = json_object_get(jb, "actions");
    assert_int_equal(json_array_size(ja), 5);
    assert_string_equal(json_string_value(json_object_get(json_array_get(ja, 1), "do")),
                        "downgrade");
    assert_null(json_object_get(json_array_get(ja, 0), "rpm"));
    assert_int_equal(json_integer_value(json_object_get(json_array_get(ja, 2), "rpm")), 60);
    json_t *one = kp_budget_json(&b[1]);
    assert_true(json_equal(one, json_array_get(json_object_get(j, "budgets"), 1)));
    json_decref(one);
    static const char *const registry_set[] = {"kind", "id", "version", "created_ms", "updated_ms"};
    for (size_t i = 0; i < 5; i++)
        json_object_del(j, registry_set[i]);
    kp_buf_init(&c1);
    kp_buf_init(&c2);
    assert_int_equal(kp_command_from_json(KP_OP_PUT_POLICY, "pol", j, T0, &who, false, 0, &c1, err,
                                          sizeof(err), field, sizeof(field)),
                     KP_OK);
    encode_at(KP_OP_PUT_POLICY, &p, T0, &c2);
    struct kp_command x, y;
    assert_int_equal(kp_command_decode(c1.data, c1.len, &x, err, sizeof(err)), KP_OK);
    assert_int_equal(kp_command_decode(c2.data, c2.len, &y, err, sizeof(err)), KP_OK);
    kp_buf_free(&c1);
    kp_buf_free(&c2);
    kp_buf_init(&c1);
    kp_buf_init(&c2);
    assert_int_equal(kp_command_encode(&x, &c1, err, sizeof(err)), KP_OK);
    assert_int_equal(kp_command_encode(&y, &c2, err, sizeof(err)), KP_OK);
    assert_int_equal(c1.len, c2.len);
    assert_memory_equal(c1.data, c2.data, c1.len);
    kp_command_free(&x);
    kp_command_free(&y);
    kp_buf_free(&c1);
    kp_buf_free(&c2);
    json_decref(j);
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

/* spend_held (a restarted router's first item) moves what the node holds
 * to spent before the settle and the grant: no overshoot, the sum is
 * unchanged, and other nodes' grants are untouched. */
static void test_spend_held(void **state)
{
    struct kp_fsm *f = *state;
    assert_ok(put_policy(f));
    assert_ok(lease1(f, 1, 1, T0, "daily", T0, 0, false, 1000000000));
    assert_ok(lease1(f, 2, 1, T0, "daily", T0, 0, false, 500000000));
    kp_nanousd held = kp_budget_window_grant(win(f, "daily"), 1);
    kp_nanousd before = committed(win(f, "daily"));
    struct kp_lease_item it = item("daily", T0, 0, false, 100000000);
    it.spend_held = true;
    assert_ok(lease(f, 1, 2, T0 + HOUR, &it, 1));
    const struct kp_budget_window_state *w = win(f, "daily");
    assert_int_equal(w->spent, held);
    assert_int_equal(w->overshoot, 0);
    assert_int_equal(kp_budget_window_grant(w, 1), res.lease.items[0].granted);
    assert_int_equal(res.lease.items[0].grant, res.lease.items[0].granted);
    assert_int_equal(kp_budget_window_grant(w, 2), 500000000);
    assert_int_equal(committed(w), before + res.lease.items[0].granted);
    /* Nothing held: nothing moves. */
    it.want = 0;
    it.settled = 7;
    assert_ok(lease(f, 3, 1, T0 + HOUR, &it, 1));
    assert_int_equal(win(f, "daily")->spent, held + 7);
    assert_int_equal(win(f, "daily")->overshoot, 7);
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

enum { NODES = 4, NBUDGETS = 5, STEPS = 4000 };

static const struct {
    const char *policy, *budget;
    bool hard;
    int64_t limit;
    uint8_t window;
    int32_t offset;
    int64_t period_start, period;
} budgets[NBUDGETS] = {
    {"pol", "daily", true, DAILY_LIMIT, KP_BUDGET_DAILY, 0, 0, 0},
    {"pol", "monthly", true, MONTHLY_LIMIT, KP_BUDGET_MONTHLY, 0, 0, 0},
    {"pol", "alerts", false, SOFT_LIMIT, KP_BUDGET_DAILY, 0, 0, 0},
    {"pol2", "small", true, 1000000, KP_BUDGET_WEEKLY, IST, 0, 0},
    {"pol2", "sprint", true, 5000000, KP_BUDGET_FIXED, 0, JAN5 + 3 * HOUR, 14 * DAY},
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
        struct kp_budget_window_def def = {budgets[b].window, budgets[b].offset,
                                           budgets[b].period_start, budgets[b].period};
        int64_t win_now = kp_budget_window_def_start(&def, ts);
        bool have = r->grant[b] > 0;
        kp_nanousd spend = rand_upto(r->grant[b]);
        if (buggy && next_rand() % 40 == 0) {
            spend += 1 + rand_upto(budgets[b].limit / 100);
            overshoots++;
        }
        kp_nanousd want = rand_upto(budgets[b].limit / 3);
        items[n] = (struct kp_lease_item){(char *)budgets[b].policy,
                                          (char *)budgets[b].budget,
                                          have ? r->window[b] : win_now,
                                          spend,
                                          next_rand() % 8 == 0,
                                          want,
                                          false};
        which[n++] = b;
    }
    return n;
}

/* Four nodes with skewed clocks report and ask at random over two months
 * of virtual time (many daily, weekly at +05:30 and 14-day rollovers, and
 * a monthly one), now and then
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
        {.name = (char *)"daily",
         .window = KP_BUDGET_DAILY,
         .limit_nanousd = DAILY_LIMIT,
         .kind = KP_BUDGET_HARD},
        {.name = (char *)"monthly",
         .window = KP_BUDGET_MONTHLY,
         .limit_nanousd = MONTHLY_LIMIT,
         .kind = KP_BUDGET_HARD},
        {.name = (char *)"alerts",
         .window = KP_BUDGET_DAILY,
         .limit_nanousd = SOFT_LIMIT,
         .kind = KP_BUDGET_SOFT},
    };
    struct kp_budget b2[2] = {{.name = (char *)"small",
                               .window = KP_BUDGET_WEEKLY,
                               .limit_nanousd = 1000000,
                               .utc_offset_minutes = IST},
                              {.name = (char *)"sprint",
                               .window = KP_BUDGET_FIXED,
                               .limit_nanousd = 5000000,
                               .period_start_ms = JAN5 + 3 * HOUR,
                               .period_ms = 14 * DAY}};
    struct kp_policy p1 = {
        .e.id = (char *)"pol", .scope_kind = KP_SCOPE_GLOBAL, .budgets = b1, .nbudgets = 3};
    struct kp_policy p2 = {
        .e.id = (char *)"pol2", .scope_kind = KP_SCOPE_GLOBAL, .budgets = b2, .nbudgets = 2};
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
            items[k] =
                (struct kp_lease_item){(char *)"pol", (char *)"gone", ts, 1, false, 1, false};
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
        cmocka_unit_test(test_window_utc),
        cmocka_unit_test(test_window_weekly),
        cmocka_unit_test(test_window_offsets),
        cmocka_unit_test(test_window_fixed),
        cmocka_unit_test_setup_teardown(test_grant_settle_release, setup, teardown),
        cmocka_unit_test_setup_teardown(test_grant_rule, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replay, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rollover, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_soft_and_overshoot, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spend_held, setup, teardown),
        cmocka_unit_test_setup_teardown(test_policy_changes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reset, setup, teardown),
        cmocka_unit_test(test_rollover_kinds),
        cmocka_unit_test_setup_teardown(test_window_redefine, setup, teardown),
        cmocka_unit_test_setup_teardown(test_action_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_budget_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_from_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_invariant_random, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

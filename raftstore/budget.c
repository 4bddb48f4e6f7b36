/* Budget leases: the state machine's half of "budgets that hold across
 * the cluster" (DESIGN.md; docs/budgets.md is the reference).
 *
 * Routers do not commit each request. A router holds a grant (an escrow
 * slice) of each budget it serves, reserves a request's worst case against
 * it locally and settles the actual cost when the request ends. Every
 * ~100 ms, or when a grant runs low, its node proposes one budget_lease:
 * per budget, what was settled since the last report, whether to give
 * back the rest of the grant, and how much more it wants. Applying it:
 *
 *   1. replays: seq must be above the node's last (struct kp_lease_node).
 *      A replay (a proposal retried after a lost answer, committed twice)
 *      changes nothing and answers with what the node holds now;
 *   2. every item names an existing policy and budget, each budget once,
 *      or the whole command is refused (nothing of it applies);
 *   3. per item, on a staged copy of the policy's budget state: roll the
 *      window over when ts is past its end, settle, release, grant;
 *   4. the node's seq and report time.
 *
 * THE INVARIANT (struct kp_budget_window_state): for a hard budget, after every
 * apply,
 *
 *     spent + sum(grants) <= limit + excess
 *
 * and excess stays 0 unless money arrived that the protocol did not grant.
 * It is kept by these rules, and nothing else changes these fields:
 *   - a grant comes only out of room = limit - spent - sum(grants), never
 *     below zero, so it cannot lift the sum above the limit (grant_rule);
 *   - a settle moves money from the node's grant to spent, leaving the sum
 *     as it was, except for any part beyond the node's grant (overshoot: a
 *     buggy router, or one whose grant a reset dropped), which really was
 *     spent and raises excess by as much (settle);
 *   - a release, a rollover or a reset only lower the sum;
 *   - a put_policy that lowers the limit below the sum, or makes a budget
 *     hard above it, raises excess to the difference (policy_put).
 * Room is measured against the limit alone, so excess never makes room:
 * once the sum is at or above the limit nothing more is granted until
 * spend leaves with the window. fsm.c checks the invariant after every
 * apply that touches budget state (check_budgets); restore checks it too.
 *
 * Determinism: the only clock is the command's ts; windows are computed
 * from it and the budget's definition alone (fixed UTC offsets, never a
 * tz database, which could differ between replicas' hosts). */
#include "raftstore/internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define DAY_MS 86400000LL

/* Smallest grant, as a fraction of the limit (grant_rule). */
#define GRANT_FLOOR_DIVISOR 64

/* Amounts are never negative; sums stop at INT64_MAX rather than wrap. */
static kp_nanousd add_sat(kp_nanousd x, kp_nanousd y)
{
    return x > INT64_MAX - y ? INT64_MAX : x + y;
}

static kp_nanousd min_money(kp_nanousd x, kp_nanousd y)
{
    return x < y ? x : y;
}

/* --- windows --------------------------------------------------------------------------------- */

static int64_t floor_div(int64_t x, int64_t y)
{
    int64_t q = x / y;
    return (x % y != 0 && x < 0) ? q - 1 : q;
}

struct kp_budget_window_def kp_budget_window_def_of(const struct kp_budget *b)
{
    return (struct kp_budget_window_def){
        .kind = b->window,
        .utc_offset_minutes = b->utc_offset_minutes,
        .period_start_ms = b->period_start_ms,
        .period_ms = b->period_ms,
    };
}

bool kp_budget_window_def_equal(const struct kp_budget_window_def *a,
                                const struct kp_budget_window_def *b)
{
    return a->kind == b->kind && a->utc_offset_minutes == b->utc_offset_minutes &&
           a->period_start_ms == b->period_start_ms && a->period_ms == b->period_ms;
}

/* The window of @w containing @ms: its start, and its end in *@end.
 *
 * Calendar windows are computed on local days: day numbers since
 * 1970-01-01 of the time shifted by the offset, so that a local midnight
 * is a multiple of DAY_MS; the boundary in UTC is that midnight minus the
 * offset. 1970-01-01 was a Thursday, so day d is a Monday when (d + 3) is
 * a multiple of 7. A fixed window needs no calendar: floor division by the
 * period from the anchor, which works on either side of it. A fixed
 * definition without a period (never a validated budget's) is read as
 * daily rather than divided by zero. */
static int64_t window_bounds(const struct kp_budget_window_def *w, int64_t ms, int64_t *end)
{
    if (w->kind == KP_BUDGET_FIXED && w->period_ms > 0) {
        int64_t start =
            w->period_start_ms + floor_div(ms - w->period_start_ms, w->period_ms) * w->period_ms;
        *end = start + w->period_ms;
        return start;
    }
    int64_t off = w->kind == KP_BUDGET_FIXED ? 0 : (int64_t)w->utc_offset_minutes * 60000;
    int64_t day = floor_div(ms + off, DAY_MS), next = day + 1, y;
    int m, dd;
    if (w->kind == KP_BUDGET_WEEKLY) {
        day -= (day + 3) - floor_div(day + 3, 7) * 7;
        next = day + 7;
    } else if (w->kind == KP_BUDGET_MONTHLY) {
        kp_civil_from_days(day, &y, &m, &dd);
        day = kp_days_from_civil(y, m, 1);
        next = kp_days_from_civil(m == 12 ? y + 1 : y, m == 12 ? 1 : m + 1, 1);
    }
    *end = next * DAY_MS - off;
    return day * DAY_MS - off;
}

int64_t kp_budget_window_def_start(const struct kp_budget_window_def *w, int64_t ms)
{
    int64_t end;
    return window_bounds(w, ms, &end);
}

int64_t kp_budget_window_def_end(const struct kp_budget_window_def *w, int64_t ms)
{
    int64_t end;
    window_bounds(w, ms, &end);
    return end;
}

int64_t kp_budget_window_start_of(const struct kp_budget *b, int64_t ms)
{
    struct kp_budget_window_def w = kp_budget_window_def_of(b);
    return kp_budget_window_def_start(&w, ms);
}

int64_t kp_budget_window_end_of(const struct kp_budget *b, int64_t ms)
{
    struct kp_budget_window_def w = kp_budget_window_def_of(b);
    return kp_budget_window_def_end(&w, ms);
}

/* --- lookups --------------------------------------------------------------------------------- */

const struct kp_budget *kp_policy_budget(const struct kp_policy *p, const char *name)
{
    for (uint32_t i = 0; i < p->nbudgets; i++) {
        if (strcmp(p->budgets[i].name, name) == 0)
            return &p->budgets[i];
    }
    return NULL;
}

const struct kp_budget_window_state *kp_budget_state_window(const struct kp_budget_state *s,
                                                            const char *budget)
{
    for (uint32_t i = 0; i < s->nwindows; i++) {
        if (strcmp(s->windows[i].budget, budget) == 0)
            return &s->windows[i];
    }
    return NULL;
}

kp_nanousd kp_budget_window_grant(const struct kp_budget_window_state *w, uint64_t node_id)
{
    for (uint32_t i = 0; i < w->ngrants; i++) {
        if (w->grants[i].node_id == node_id)
            return w->grants[i].amount;
    }
    return 0;
}

kp_nanousd kp_budget_window_granted(const struct kp_budget_window_state *w)
{
    kp_nanousd sum = 0;
    for (uint32_t i = 0; i < w->ngrants; i++)
        sum = add_sat(sum, w->grants[i].amount);
    return sum;
}

/* spent + sum(grants): what the window has let go of. */
static kp_nanousd committed(const struct kp_budget_window_state *w)
{
    return add_sat(w->spent, kp_budget_window_granted(w));
}

/* --- the invariant --------------------------------------------------------------------------- */

static int bad(char *msg, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int bad(char *msg, size_t len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, len, fmt, ap);
    va_end(ap);
    return KP_EINVAL;
}

int kp_store__budget_check(const struct kp_policy *p, const struct kp_budget_state *s, char *msg,
                           size_t len)
{
    for (uint32_t i = 0; i < s->nwindows; i++) {
        const struct kp_budget_window_state *w = &s->windows[i];
        const struct kp_budget *b = kp_policy_budget(p, w->budget);
        if (i > 0 && strcmp(s->windows[i - 1].budget, w->budget) >= 0)
            return bad(msg, len, "windows[%u].budget: not ascending", i);
        if (b == NULL)
            return bad(msg, len, "windows[%u].budget: policy '%s' has no budget '%s'", i, p->e.id,
                       w->budget);
        if (w->start_ms != kp_budget_window_start_of(b, w->start_ms))
            return bad(msg, len, "windows[%u].start_ms: not the start of a %s window", i,
                       kp_budget_window_name(b->window));
        for (uint32_t j = 0; j < w->ngrants; j++) {
            if (w->grants[j].amount <= 0 ||
                (j > 0 && w->grants[j - 1].node_id >= w->grants[j].node_id))
                return bad(msg, len, "windows[%u].grants[%u]: not ascending or not positive", i, j);
        }
        /* The invariant: for a hard budget, spent + grants <= limit +
         * excess (saturating sums: a stored value is never above the true
         * one, so the check never passes a true violation). */
        kp_nanousd sum = committed(w), ceiling = add_sat(b->limit_nanousd, w->excess);
        if (b->kind == KP_BUDGET_HARD && sum > ceiling)
            return bad(msg, len,
                       "windows[%u] (budget '%s'): spent %lld + grants %lld exceed limit %lld + "
                       "excess %lld",
                       i, w->budget, (long long)w->spent, (long long)kp_budget_window_granted(w),
                       (long long)b->limit_nanousd, (long long)w->excess);
    }
    return KP_OK;
}

/* --- window changes -------------------------------------------------------------------------- */

/* Set @node's grant in @w to @amount (0 removes it), node ids ascending. */
static int set_grant(struct kp_budget_window_state *w, uint64_t node, kp_nanousd amount)
{
    uint32_t i = 0;
    while (i < w->ngrants && w->grants[i].node_id < node)
        i++;
    bool found = i < w->ngrants && w->grants[i].node_id == node;
    if (found && amount > 0) {
        w->grants[i].amount = amount;
        return KP_OK;
    }
    if (found) {
        memmove(&w->grants[i], &w->grants[i + 1], (w->ngrants - i - 1) * sizeof(*w->grants));
        w->ngrants--;
        return KP_OK;
    }
    if (amount == 0)
        return KP_OK;
    struct kp_budget_grant *v = kp_realloc(w->grants, (w->ngrants + 1) * sizeof(*v));
    if (v == NULL)
        return KP_ENOMEM;
    memmove(&v[i + 1], &v[i], (w->ngrants - i) * sizeof(*v));
    v[i] = (struct kp_budget_grant){node, amount};
    w->grants = v;
    w->ngrants++;
    return KP_OK;
}

static void drop_grants(struct kp_budget_window_state *w)
{
    kp_free(w->grants);
    w->grants = NULL;
    w->ngrants = 0;
}

/* Rollover to the window starting at @start: the current one becomes the
 * previous one, and spent and every grant go to zero in the same apply,
 * so no view ever shows a new window with old grants or the reverse.
 * Grants of routers that did not report are gone with their window: what
 * they settle for it later lands in prev_spent (or late). */
static void roll(struct kp_budget_window_state *w, int64_t start)
{
    w->prev_start_ms = w->start_ms;
    w->prev_spent = w->spent;
    w->start_ms = start;
    w->spent = w->overshoot = w->excess = w->late = 0;
    drop_grants(w);
}

/* Settle @amount spent by a node holding @mine of @w in the window the
 * money was spent in; returns what the node holds after. */
static kp_nanousd settle(struct kp_budget_window_state *w, int64_t window_start, kp_nanousd mine,
                         kp_nanousd amount)
{
    if (window_start == w->start_ms) {
        /* Moves money from the grant to spent: the sum stays, except for
         * what lies beyond the grant, which raises excess as much. */
        kp_nanousd over = amount > mine ? amount - mine : 0;
        w->spent = add_sat(w->spent, amount);
        w->overshoot = add_sat(w->overshoot, over);
        w->excess = add_sat(w->excess, over);
        return mine - (amount - over);
    }
    if (window_start == w->prev_start_ms)
        w->prev_spent = add_sat(w->prev_spent, amount);
    else
        w->late = add_sat(w->late, amount);
    return mine;
}

/* THE GRANT RULE: how much of @want node @node gets of @w under @b, given
 * what every node (this one included) holds now.
 *
 * Soft budgets only alert: they grant @want.
 *
 * Hard budgets: room = limit - spent - sum(grants), at least 0, and
 *
 *     grant = min(want, max(room / (2k + 1), min(room, limit / 64)))
 *
 * where k counts the other nodes holding a grant. Why:
 *   - never more than room: the invariant;
 *   - room / (2k + 1): a lone node may take all the room; with others
 *     around, one ask leaves more than half of it to them and to nodes yet
 *     to ask, so no router hoards the rest while others are refused;
 *   - it shrinks with room, so grants get small near the end, and what a
 *     router that dies (its grant stays counted until it returns and
 *     settles) or idles can strand shrinks with them;
 *   - limit / 64: the floor that stops grants shrinking to dust, where
 *     every request would need its own Raft command; capped by room, so
 *     the last slices still never pass the limit. */
static kp_nanousd grant_rule(const struct kp_budget *b, const struct kp_budget_window_state *w,
                             uint64_t node, kp_nanousd want)
{
    kp_nanousd sum = w->spent;
    kp_nanousd others = 0;
    for (uint32_t i = 0; i < w->ngrants; i++) {
        sum = add_sat(sum, w->grants[i].amount);
        others += w->grants[i].node_id != node;
    }
    if (b->kind == KP_BUDGET_SOFT)
        return min_money(want, INT64_MAX - sum);
    kp_nanousd room = b->limit_nanousd > sum ? b->limit_nanousd - sum : 0;
    kp_nanousd share = room / (2 * others + 1);
    kp_nanousd floor = min_money(room, b->limit_nanousd / GRANT_FLOOR_DIVISOR);
    return min_money(want, share > floor ? share : floor);
}

/* --- staging --------------------------------------------------------------------------------- */

/* The budget state of @policy this apply changes: staged already, or a
 * copy of the current one (a new one if none) staged now. */
static int staged_state(struct kp_apply *a, const char *policy, struct kp_budget_state **out)
{
    for (size_t i = 0; i < a->n; i++) {
        struct kp_change *c = &a->changes[i];
        if (c->kind == KP_KIND_BUDGET_STATE && c->put != NULL && strcmp(c->put->id, policy) == 0) {
            *out = (struct kp_budget_state *)c->put;
            return KP_OK;
        }
    }
    const struct kp_entity *old = kp_store__get(a->st, KP_KIND_BUDGET_STATE, policy);
    struct kp_entity *e =
        old ? kp_store__entity_clone(old) : kp_store__entity_alloc(KP_KIND_BUDGET_STATE);
    if (e == NULL)
        return KP_ENOMEM;
    if (old == NULL && (e->id = kp_strdup(policy)) == NULL) {
        kp_store__entity_unref(e);
        return KP_ENOMEM;
    }
    e->version = old != NULL ? old->version + 1 : 1;
    e->created_ms = old != NULL ? old->created_ms : a->cmd->ts;
    e->updated_ms = a->cmd->ts;
    int rc = kp_store__stage(a, KP_KIND_BUDGET_STATE, e, NULL);
    *out = (struct kp_budget_state *)e;
    return rc;
}

/* The window of @budget in @s, added (empty, starting at @start, in name
 * order) when it has none. */
static int state_window(struct kp_budget_state *s, const char *budget, int64_t start,
                        struct kp_budget_window_state **out)
{
    uint32_t i = 0;
    while (i < s->nwindows && strcmp(s->windows[i].budget, budget) < 0)
        i++;
    if (i < s->nwindows && strcmp(s->windows[i].budget, budget) == 0) {
        *out = &s->windows[i];
        return KP_OK;
    }
    struct kp_budget_window_state *v = kp_realloc(s->windows, (s->nwindows + 1) * sizeof(*v));
    if (v == NULL)
        return KP_ENOMEM;
    s->windows = v;
    char *name = kp_strdup(budget);
    if (name == NULL)
        return KP_ENOMEM;
    memmove(&v[i + 1], &v[i], (s->nwindows - i) * sizeof(*v));
    v[i] = (struct kp_budget_window_state){.budget = name, .start_ms = start};
    s->nwindows++;
    *out = &v[i];
    return KP_OK;
}

/* --- budget_lease ---------------------------------------------------------------------------- */

static const struct kp_lease_node *lease_node(const struct kp_state *st, uint64_t node_id)
{
    char id[24];
    snprintf(id, sizeof(id), "%llu", (unsigned long long)node_id);
    return (const struct kp_lease_node *)kp_store__get(st, KP_KIND_LEASE_NODE, id);
}

/* A seq already applied: nothing changes; the answer is what the node
 * holds now, so that a proposer that lost the first answer learns it. */
static int replay(struct kp_apply *a, const struct kp_cmd_budget_lease *c)
{
    a->res->lease.duplicate = true;
    for (uint32_t i = 0; i < c->nitems; i++) {
        const struct kp_entity *s = kp_store__get(a->st, KP_KIND_BUDGET_STATE, c->items[i].policy);
        const struct kp_budget_window_state *w =
            s ? kp_budget_state_window((const struct kp_budget_state *)s, c->items[i].budget)
              : NULL;
        if (w != NULL)
            a->res->lease.items[i] =
                (struct kp_lease_grant){0, kp_budget_window_grant(w, c->node_id), w->start_ms};
    }
    return KP_OK;
}

/* Every item names an existing budget, and each budget once. */
static int check_items(struct kp_apply *a, const struct kp_cmd_budget_lease *c)
{
    for (uint32_t i = 0; i < c->nitems; i++) {
        const struct kp_lease_item *it = &c->items[i];
        const struct kp_policy *p =
            (const struct kp_policy *)kp_store__get(a->st, KP_KIND_POLICY, it->policy);
        if (p == NULL)
            return kp_store__refuse(a, KP_ENOENT, "items[%u].policy: no policy '%s'", i,
                                    it->policy);
        if (kp_policy_budget(p, it->budget) == NULL)
            return kp_store__refuse(a, KP_ENOENT,
                                    "items[%u].budget: policy '%s' has no budget '%s'", i,
                                    it->policy, it->budget);
        for (uint32_t j = 0; j < i; j++) {
            if (strcmp(c->items[j].policy, it->policy) == 0 &&
                strcmp(c->items[j].budget, it->budget) == 0)
                return kp_store__refuse(a, KP_EINVAL, "items[%u]: same budget as items[%u]", i, j);
        }
    }
    return KP_OK;
}

/* One item: rollover, spend what is held, settle, release, grant, in
 * this order. */
static int lease_item(struct kp_apply *a, const struct kp_cmd_budget_lease *c, uint32_t i)
{
    const struct kp_lease_item *it = &c->items[i];
    const struct kp_policy *p =
        (const struct kp_policy *)kp_store__get(a->st, KP_KIND_POLICY, it->policy);
    const struct kp_budget *b = kp_policy_budget(p, it->budget);
    int64_t now = kp_budget_window_start_of(b, a->cmd->ts);
    struct kp_budget_state *s;
    struct kp_budget_window_state *w;
    int rc = staged_state(a, it->policy, &s);
    if (rc == KP_OK)
        rc = state_window(s, it->budget, now, &w);
    if (rc != KP_OK)
        return rc;
    /* Windows only move forward: a proposer whose clock lags another's
     * settles into the previous window instead of reopening it. */
    if (w->start_ms < now)
        roll(w, now);
    /* spend_held moves the node's whole grant to spent: the sum
     * spent + grants is unchanged (the invariant holds as it did). */
    if (it->spend_held) {
        w->spent += kp_budget_window_grant(w, c->node_id);
        if ((rc = set_grant(w, c->node_id, 0)) != KP_OK)
            return rc;
    }
    kp_nanousd mine =
        settle(w, it->window_start_ms, kp_budget_window_grant(w, c->node_id), it->settled);
    if (it->release && it->window_start_ms == w->start_ms)
        mine = 0;
    if ((rc = set_grant(w, c->node_id, mine)) != KP_OK)
        return rc;
    kp_nanousd granted = it->want > 0 ? grant_rule(b, w, c->node_id, it->want) : 0;
    if ((rc = set_grant(w, c->node_id, mine + granted)) != KP_OK)
        return rc;
    a->res->lease.items[i] = (struct kp_lease_grant){granted, mine + granted, w->start_ms};
    return KP_OK;
}

static int stage_node(struct kp_apply *a, const struct kp_cmd_budget_lease *c,
                      const struct kp_lease_node *old)
{
    char id[24];
    snprintf(id, sizeof(id), "%llu", (unsigned long long)c->node_id);
    struct kp_lease_node *n = (struct kp_lease_node *)kp_store__entity_alloc(KP_KIND_LEASE_NODE);
    if (n == NULL)
        return KP_ENOMEM;
    if ((n->e.id = kp_strdup(id)) == NULL) {
        kp_store__entity_unref(&n->e);
        return KP_ENOMEM;
    }
    n->e.version = old != NULL ? old->e.version + 1 : 1;
    n->e.created_ms = old != NULL ? old->e.created_ms : a->cmd->ts;
    n->e.updated_ms = a->cmd->ts;
    n->node_id = c->node_id;
    n->seq = c->seq;
    n->last_report_ms = a->cmd->ts;
    return kp_store__stage(a, KP_KIND_LEASE_NODE, &n->e, NULL);
}

int kp_store__op_budget_lease(struct kp_apply *a)
{
    const struct kp_cmd_budget_lease *c = a->cmd->body.budget_lease;
    const struct kp_lease_node *node = lease_node(a->st, c->node_id);
    a->res->lease.n = c->nitems;
    if (node != NULL && c->seq <= node->seq)
        return replay(a, c);
    int rc = check_items(a, c);
    for (uint32_t i = 0; rc == KP_OK && i < c->nitems; i++)
        rc = lease_item(a, c, i);
    if (rc == KP_OK)
        rc = stage_node(a, c, node);
    return rc;
}

/* --- budget_reset ---------------------------------------------------------------------------- */

/* An operator's override: spent back to 0 and every grant dropped, for one
 * budget. Routers keep spending what they held; those settles arrive
 * beyond their (now empty) grants and are counted as overshoot. */
int kp_store__op_budget_reset(struct kp_apply *a)
{
    const struct kp_cmd_budget_reset *c = a->cmd->body.budget_reset;
    a->target = c->id;
    const struct kp_policy *p =
        (const struct kp_policy *)kp_store__get(a->st, KP_KIND_POLICY, c->id);
    if (p == NULL)
        return kp_store__refuse(a, KP_ENOENT, "no policy '%s'", c->id);
    const struct kp_budget *b = kp_policy_budget(p, c->budget);
    if (b == NULL)
        return kp_store__refuse(a, KP_ENOENT, "budget: policy '%s' has no budget '%s'", c->id,
                                c->budget);
    const struct kp_entity *cur = kp_store__get(a->st, KP_KIND_BUDGET_STATE, c->id);
    if (cur == NULL ||
        kp_budget_state_window((const struct kp_budget_state *)cur, c->budget) == NULL) {
        snprintf(a->detail, sizeof(a->detail), "budget %s: no lease yet, nothing to reset",
                 c->budget);
        return KP_OK;
    }
    int64_t now = kp_budget_window_start_of(b, a->cmd->ts);
    struct kp_budget_state *s;
    struct kp_budget_window_state *w;
    int rc = staged_state(a, c->id, &s);
    if (rc == KP_OK)
        rc = state_window(s, c->budget, now, &w);
    if (rc != KP_OK)
        return rc;
    if (w->start_ms < now)
        roll(w, now);
    snprintf(a->detail, sizeof(a->detail),
             "budget %s: spent %lld and %u grants of %lld dropped, window %lld", c->budget,
             (long long)w->spent, w->ngrants, (long long)kp_budget_window_granted(w),
             (long long)w->start_ms);
    w->spent = w->overshoot = w->excess = 0;
    drop_grants(w);
    a->res->version = s->e.version;
    return KP_OK;
}

/* --- put_policy ------------------------------------------------------------------------------ */

/* Whether @ob (NULL: none) and @nb have different windows: any change of
 * type, offset, anchor or period. */
static bool window_changed(const struct kp_budget *ob, const struct kp_budget *nb)
{
    if (ob == NULL)
        return true;
    struct kp_budget_window_def o = kp_budget_window_def_of(ob), n = kp_budget_window_def_of(nb);
    return !kp_budget_window_def_equal(&o, &n);
}

/* What a policy change means for window @w: 0 nothing, 1 it goes (its
 * budget went), 2 it changes. */
static int policy_effect(const struct kp_budget_window_state *w, const struct kp_budget *ob,
                         const struct kp_budget *nb)
{
    if (nb == NULL)
        return 1;
    if (window_changed(ob, nb))
        return 2;
    if (nb->kind == KP_BUDGET_HARD && committed(w) > add_sat(nb->limit_nanousd, w->excess))
        return 2;
    return 0;
}

static void drop_window(struct kp_budget_state *s, uint32_t i)
{
    kp_free(s->windows[i].budget);
    kp_free(s->windows[i].grants);
    memmove(&s->windows[i], &s->windows[i + 1], (s->nwindows - i - 1) * sizeof(*s->windows));
    s->nwindows--;
}

/* A window under a changed budget definition @nb (@ob before, may be
 * NULL). A new window (type, offset, anchor or period) re-anchors the
 * window on the new definition's window containing ts, keeping spent and
 * grants (they are real: routers hold the grants), unless the old window
 * had ended anyway, which rolls it over. A limit now below spent + grants
 * raises excess to the gap: the money is out, and no more is granted
 * until it is back under. */
static void redefine(struct kp_budget_window_state *w, const struct kp_budget *ob,
                     const struct kp_budget *nb, int64_t ts)
{
    if (window_changed(ob, nb)) {
        int64_t start = kp_budget_window_start_of(nb, ts);
        if (ob == NULL || w->start_ms < kp_budget_window_start_of(ob, ts))
            roll(w, start);
        else
            w->start_ms = start;
    }
    kp_nanousd sum = committed(w);
    if (nb->kind == KP_BUDGET_HARD && sum > add_sat(nb->limit_nanousd, w->excess))
        w->excess = sum - nb->limit_nanousd;
}

int kp_store__budget_policy_put(struct kp_apply *a, const struct kp_policy *old,
                                const struct kp_policy *p)
{
    const struct kp_budget_state *cur =
        (const struct kp_budget_state *)kp_store__get(a->st, KP_KIND_BUDGET_STATE, p->e.id);
    if (cur == NULL)
        return KP_OK;
    uint32_t drops = 0, changes = 0;
    for (uint32_t i = 0; i < cur->nwindows; i++) {
        const struct kp_budget_window_state *w = &cur->windows[i];
        int effect = policy_effect(w, old ? kp_policy_budget(old, w->budget) : NULL,
                                   kp_policy_budget(p, w->budget));
        drops += effect == 1;
        changes += effect == 2;
    }
    if (drops == cur->nwindows) /* the state goes with the last budget */
        return kp_store__stage(a, KP_KIND_BUDGET_STATE, NULL, p->e.id);
    if (drops + changes == 0)
        return KP_OK;
    struct kp_budget_state *s;
    int rc = staged_state(a, p->e.id, &s);
    if (rc != KP_OK)
        return rc;
    for (uint32_t i = s->nwindows; i-- > 0;) {
        struct kp_budget_window_state *w = &s->windows[i];
        const struct kp_budget *nb = kp_policy_budget(p, w->budget);
        if (nb == NULL)
            drop_window(s, i);
        else
            redefine(w, old ? kp_policy_budget(old, w->budget) : NULL, nb, a->cmd->ts);
    }
    return KP_OK;
}

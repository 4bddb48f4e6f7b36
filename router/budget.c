/* Budgets on the request path (docs/budgets.md, "The router side").
 *
 * Before a call goes upstream, every budget that covers it (policies
 * scoped to the call's tenant, project, feature, pool or token, or
 * global) must hold the call's worst case:
 *
 *     input bound x input price + max_tokens x n x output price + request fee
 *
 * The input bound is one token per byte of the request body (a token is
 * never less than a byte of the text it encodes, and the JSON around the
 * text costs more bytes than the chat template costs tokens), plus
 * IMAGE_TOKENS per image part. The output bound is the app's max_tokens
 * (or the endpoint's field for it); when the app set none and a hard
 * budget covers the call, the gateway sets DEFAULT_MAX_TOKENS, so that
 * the provider cannot produce more than was reserved.
 *
 * Hard budgets reserve the worst case out of what this node holds (the
 * ledger); soft ones only record the spend. A call that does not fit
 * waits (at most WAIT_MS) while the node's lease client asks the leader
 * for more; if the answer grants nothing, the budget is exhausted: the
 * call's max_tokens is lowered to what is left when that still leaves
 * MIN_OUTPUT_TOKENS, otherwise the app gets 429 budget_exceeded naming
 * the budget, what remains and when it resets. When the call ends its
 * actual cost is settled and the rest of the reservation freed.
 *
 * A stream is cut if the provider sends more events than the reservation
 * allows tokens (each content event carries at least one token): a
 * provider that ignores max_tokens cannot run the budget over. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "router_internal.h"

enum {
    DEFAULT_MAX_TOKENS = 4096,
    MIN_OUTPUT_TOKENS = 16,
    IMAGE_TOKENS = 2000,
    WAIT_MS = 5000,
    STREAM_EVENT_MARGIN = 16,
};

/* --- which budgets cover the call ------------------------------------------------------ */

struct cover_scan {
    struct kp_call *c;
    bool full;
};

/* Add @p's budgets to @holds (*@n of @max used); false when full. */
static bool add_holds(struct kp_call *c, const struct kp_policy *p, struct kp_ledger_hold *holds,
                      unsigned *n, unsigned max)
{
    for (uint32_t i = 0; i < p->nbudgets; i++) {
        if (*n == max)
            return false;
        struct kp_ledger_hold *h = &holds[*n];
        memset(h, 0, sizeof(*h));
        h->slot = kp_budget_ledger__slot(c->r->sh.budgets, p->e.id, p->budgets[i].name);
        if (h->slot == NULL)
            return false;
        h->policy = p;
        h->budget = &p->budgets[i];
        h->window_def = kp_budget_window_def_of(&p->budgets[i]);
        h->hard = p->budgets[i].kind == KP_BUDGET_HARD;
        (*n)++;
        c->budget_hard |= h->hard;
    }
    return true;
}

static int collect_policy(const struct kp_entity *e, void *arg)
{
    struct cover_scan *s = arg;
    const struct kp_policy *p = (const struct kp_policy *)e;
    struct kp_call *c = s->c;
    if (p->nbudgets > 0 && p->scope_kind == KP_SCOPE_KEY)
        c->key_budgets_exist = true; /* kp_router__budget_begin looks at the keys */
    if (p->nbudgets == 0 || p->scope_kind == KP_SCOPE_KEY || !kp_router__policy_covers(p, c))
        return 0;
    if (!add_holds(c, p, c->holds, &c->nholds, KP_CALL_BUDGETS)) {
        s->full = true;
        return 1;
    }
    return 0;
}

/* The budgets covering the call into c->holds, once. */
static int collect(struct kp_call *c)
{
    struct cover_scan s = {c, false};
    c->nholds = 0;
    c->budget_hard = false;
    c->budget_collected = true;
    kp_view_each(c->view, KP_KIND_POLICY, collect_policy, &s);
    if (!s.full)
        return KP_OK;
    c->nholds = 0;
    return kp_router__fail(c, 503, "server_error", "budget_unavailable",
                           "more budgets cover this call than this node can track; an "
                           "operator should look at the node's log");
}

/* --- threshold actions -------------------------------------------------------------------- */

/* How far the budget's current window is spent, in percent of its limit
 * (as this node's view has it: within ~100 ms of the calls). */
static double percent_spent(const struct kp_call *c, const struct kp_ledger_hold *h, int64_t now)
{
    const struct kp_budget *b = h->budget;
    if (b->limit_nanousd <= 0)
        return 0;
    const struct kp_budget_window_state *w =
        kp_view_budget_window(c->view, h->policy->e.id, b->name);
    if (w == NULL || w->start_ms != kp_budget_window_start_of(b, now))
        return 0;
    return (double)w->spent * 100.0 / (double)b->limit_nanousd;
}

static int act_block(struct kp_call *c, const struct kp_ledger_hold *h, double pct, int64_t now)
{
    char when[40], msg[500];
    int64_t reset = kp_budget_window_end_of(h->budget, now);
    kp_format_time_ms(reset, when, sizeof(when));
    snprintf(msg, sizeof(msg),
             "budget %s/%s is at %.1f%% of its limit, where its actions block calls; resets %s",
             h->policy->e.id, h->budget->name, pct, when);
    snprintf(c->budget_refused, sizeof(c->budget_refused), "%s/%s", h->policy->e.id,
             h->budget->name);
    int64_t secs = (reset - now + 999) / 1000;
    c->retry_after_s = (int)(secs > 0 ? (secs < 2678400 ? secs : 2678400) : 1);
    kp_usage_set_str(c->ev.error_class, "budget");
    return kp_router__fail(c, 429, "insufficient_quota", "budget_exceeded", msg);
}

static int act_throttle(struct kp_call *c, const struct kp_ledger_hold *h,
                        const struct kp_budget_action *a, double pct)
{
    char id[KP_LEDGER_POLICY_MAX + KP_LEDGER_BUDGET_MAX + 16];
    snprintf(id, sizeof(id), "%s/%s@%u", h->policy->e.id, h->budget->name, a->at_percent);
    int64_t wait = kp_router__limit_take(c, "budget", id, a->rpm);
    if (wait == 0)
        return KP_OK;
    c->retry_after_s = (int)(wait / 1000) + 1;
    c->rl_limit = a->rpm;
    kp_usage_set_str(c->ev.error_class, "rate_limit");
    char msg[400];
    snprintf(msg, sizeof(msg),
             "rate limited: budget %s/%s is at %.1f%% of its limit, where its actions allow "
             "%u requests per minute; retry in %d s",
             h->policy->e.id, h->budget->name, pct, a->rpm, c->retry_after_s);
    return kp_router__fail(c, 429, "rate_limit_error", "rate_limited", msg);
}

static int act_disable_feature(struct kp_call *c, const struct kp_ledger_hold *h,
                               const struct kp_budget_action *a, double pct)
{
    if (strcmp(c->ev.feature, a->feature) != 0)
        return KP_OK;
    char msg[400];
    snprintf(msg, sizeof(msg),
             "feature %s is disabled: budget %s/%s is at %.1f%% of its limit, where its "
             "actions turn the feature off",
             a->feature, h->policy->e.id, h->budget->name, pct);
    kp_usage_set_str(c->ev.error_class, "budget");
    return kp_router__fail(c, 403, "permission_error", "feature_disabled", msg);
}

/* The app's model is replaced in the body the provider gets; the usage
 * event keeps the model asked for, and the served one shows the switch. */
static int act_downgrade(struct kp_call *c, const struct kp_budget_action *a)
{
    if (strcmp(c->model, a->model) == 0)
        return KP_OK;
    json_t *body = kp_router__body(c);
    json_t *m = body ? json_string(a->model) : NULL;
    if (m == NULL || json_object_set_new(body, "model", m) != 0)
        return kp_router__fail(c, 503, "server_error", "out_of_memory", "out of memory; retry");
    c->model = json_string_value(json_object_get(body, "model"));
    c->body_changed = true;
    c->budget_downgraded = true;
    return KP_OK;
}

int kp_router__budget_actions(struct kp_call *c)
{
    if (c->r->sh.budgets == NULL)
        return KP_OK;
    if (collect(c) != KP_OK)
        return KP_EPERM;
    int64_t now = kp_now_unix_ms();
    for (unsigned i = 0; i < c->nholds; i++) {
        const struct kp_ledger_hold *h = &c->holds[i];
        if (h->budget->nactions == 0)
            continue;
        double pct = percent_spent(c, h, now);
        for (uint32_t j = 0; j < h->budget->nactions; j++) {
            const struct kp_budget_action *a = &h->budget->actions[j];
            if (pct < (double)a->at_percent)
                break; /* ascending */
            int rc = KP_OK;
            switch (a->action) {
            case KP_BUDGET_ACTION_BLOCK:
                return act_block(c, h, pct, now);
            case KP_BUDGET_ACTION_THROTTLE:
                rc = act_throttle(c, h, a, pct);
                break;
            case KP_BUDGET_ACTION_DISABLE_FEATURE:
                rc = act_disable_feature(c, h, a, pct);
                break;
            case KP_BUDGET_ACTION_DOWNGRADE:
                rc = act_downgrade(c, a);
                break;
            default: /* alert: the leader's (docs/alerts.md) */
                break;
            }
            if (rc != KP_OK)
                return rc;
        }
    }
    return KP_OK;
}

/* --- the worst case --------------------------------------------------------------------- */

/* @tokens x @per_mtok nano-USD per million tokens, rounded up. */
static kp_nanousd tokens_cost(uint64_t tokens, kp_nanousd per_mtok)
{
    unsigned __int128 n = (unsigned __int128)tokens * (uint64_t)(per_mtok > 0 ? per_mtok : 0);
    n = (n + 999999u) / 1000000u;
    return n > (unsigned __int128)KP_LEASE_AMOUNT_MAX ? KP_LEASE_AMOUNT_MAX : (kp_nanousd)n;
}

static size_t count_images(const char *body, size_t len)
{
    size_t n = 0;
    const char *p = body, *end = body + len;
    while (p < end && (p = memmem(p, (size_t)(end - p), "image", 5)) != NULL) {
        n++;
        p += 5;
    }
    return n;
}

/* The body field that caps output tokens for this endpoint ("" when the
 * endpoint has no output). */
static const char *cap_field(struct kp_call *c)
{
    switch (c->ep) {
    case KP_EP_EMBEDDINGS:
        return "";
    case KP_EP_RESPONSES:
        return "max_output_tokens";
    case KP_EP_CHAT:
        return json_object_get(kp_router__body(c), "max_completion_tokens") != NULL
                   ? "max_completion_tokens"
                   : "max_tokens";
    default:
        return "max_tokens";
    }
}

static uint64_t positive_int(const json_t *v)
{
    return json_is_integer(v) && json_integer_value(v) > 0 ? (uint64_t)json_integer_value(v) : 0;
}

/* Read the call's bounds once: input tokens, output cap, choices. */
static int read_bounds(struct kp_call *c)
{
    c->in_bound = c->body_len + IMAGE_TOKENS * count_images(c->req->body, c->req->body_len);
    const char *field = cap_field(c);
    c->choices = 1;
    if (field[0] == '\0') {
        c->out_cap = 0;
        return KP_OK;
    }
    json_t *body = kp_router__body(c); /* NULL (out of memory): the defaults */
    uint64_t n = positive_int(json_object_get(body, "n"));
    uint64_t best = positive_int(json_object_get(body, "best_of"));
    c->choices = n > best ? n : best > 0 ? best : 1;
    if (c->choices > 128)
        c->choices = 128;
    uint64_t cap = positive_int(json_object_get(body, field));
    if (c->ep == KP_EP_CHAT && cap == 0)
        cap = positive_int(json_object_get(body, "max_tokens"));
    c->out_cap = cap > 0 ? cap : DEFAULT_MAX_TOKENS;
    c->out_cap_set = cap == 0; /* the gateway must write it */
    return KP_OK;
}

static kp_nanousd worst_case(const struct kp_call *c, const struct kp_price *p, uint64_t out_cap)
{
    kp_nanousd in = tokens_cost(c->in_bound, p->input_per_mtok);
    kp_nanousd out = tokens_cost(out_cap * c->choices, p->output_per_mtok);
    kp_nanousd sum = in + out + (p->request_fee > 0 ? p->request_fee : 0);
    return sum > KP_LEASE_AMOUNT_MAX ? KP_LEASE_AMOUNT_MAX : sum;
}

/* The largest output cap whose worst case fits in @room (0: none does). */
static uint64_t cap_that_fits(const struct kp_call *c, const struct kp_price *p, kp_nanousd room)
{
    kp_nanousd fixed = worst_case(c, p, 0);
    if (room <= fixed)
        return 0;
    if (p->output_per_mtok <= 0)
        return c->out_cap;
    unsigned __int128 tokens =
        (unsigned __int128)(room - fixed) * 1000000u / (uint64_t)p->output_per_mtok;
    tokens /= c->choices;
    return tokens >= c->out_cap ? c->out_cap : (uint64_t)tokens;
}

/* Write the output cap into the body the provider gets. */
static int write_cap(struct kp_call *c)
{
    const char *field = cap_field(c);
    if (field[0] == '\0' || !c->body_changed)
        return KP_OK;
    json_t *body = kp_router__body(c);
    if (body == NULL || json_object_set_new(body, field, json_integer((json_int_t)c->out_cap)) != 0)
        return KP_ENOMEM;
    /* A chat request may carry both names: lower the other one too. */
    const char *other = strcmp(field, "max_tokens") == 0 ? "max_completion_tokens" : "max_tokens";
    if (c->ep == KP_EP_CHAT && json_object_get(body, other) != NULL &&
        json_object_set_new(body, other, json_integer((json_int_t)c->out_cap)) != 0)
        return KP_ENOMEM;
    return KP_OK;
}

/* --- reserving -------------------------------------------------------------------------- */

static void release_all(struct kp_call *c)
{
    int64_t now = kp_now_unix_ms();
    for (unsigned i = 0; i < c->nholds; i++)
        if (c->holds[i].held) {
            kp_budget_ledger_settle(c->r->sh.budgets, &c->holds[i], 0, now);
            c->holds[i].held = false;
        }
}

/* Reserve @amount on every budget; all or nothing. The index of the
 * first budget that refused is in *@which. */
static enum kp_ledger_result reserve_all(struct kp_call *c, kp_nanousd amount, unsigned *which)
{
    int64_t now = kp_now_unix_ms();
    enum kp_ledger_result worst = KP_LEDGER_OK;
    for (unsigned i = 0; i < c->nholds; i++) {
        struct kp_ledger_hold *h = &c->holds[i];
        h->amount = amount;
        enum kp_ledger_result rc = kp_budget_ledger_reserve(c->r->sh.budgets, h, now);
        if (rc == KP_LEDGER_OK) {
            h->held = true;
            continue;
        }
        /* Keep asking on every budget that is short, so one answer can
         * bring all of them; exhaustion outranks waiting. */
        if (worst == KP_LEDGER_OK || (rc == KP_LEDGER_EXHAUSTED && worst != rc)) {
            worst = rc;
            *which = i;
        }
    }
    if (worst != KP_LEDGER_OK)
        release_all(c);
    return worst;
}

static void refuse_exhausted(struct kp_call *c, const struct kp_ledger_hold *h)
{
    const struct kp_budget *b = h->budget;
    int64_t now = kp_now_unix_ms();
    int64_t reset = kp_budget_window_end_of(b, now);
    const struct kp_budget_window_state *w =
        kp_view_budget_window(c->view, h->policy->e.id, b->name);
    kp_nanousd left = b->limit_nanousd;
    if (w != NULL && now < kp_budget_window_end_of(b, w->start_ms))
        left -= w->spent + kp_budget_window_granted(w);
    if (left < 0)
        left = 0;
    left += h->avail > 0 ? h->avail : 0; /* this node's unused part is counted in grants */
    char when[40], msg[600], left_s[32], limit_s[32], worst_s[32];
    kp_format_time_ms(reset, when, sizeof(when));
    kp_recon_format_usd(left, left_s, sizeof(left_s));
    kp_recon_format_usd(b->limit_nanousd, limit_s, sizeof(limit_s));
    kp_recon_format_usd(h->amount, worst_s, sizeof(worst_s));
    snprintf(msg, sizeof(msg),
             "budget %s/%s exhausted: %s of its %s %s limit is left, less than this "
             "call's worst case (%s); resets %s",
             h->policy->e.id, b->name, left_s, limit_s, kp_budget_window_name(b->window), worst_s,
             when);
    snprintf(c->budget_refused, sizeof(c->budget_refused), "%s/%s", h->policy->e.id, b->name);
    int64_t secs = (reset - now + 999) / 1000;
    c->retry_after_s = (int)(secs > 0 ? (secs < 2678400 ? secs : 2678400) : 1);
    kp_budget_ledger_give_back(c->r->sh.budgets, h);
    kp_usage_set_str(c->ev.error_class, "budget");
    kp_router__fail(c, 429, "insufficient_quota", "budget_exceeded", msg);
}

/* One try: KP_OK (reserved: go), KP_EBUSY (waiting for a grant), or
 * KP_EPERM (answered). */
static int try_reserve(struct kp_call *c)
{
    const struct kp_price *p = c->budget_price;
    for (int round = 0; round < 3; round++) {
        unsigned which = 0;
        kp_nanousd amount = p ? worst_case(c, p, c->out_cap) : 0;
        enum kp_ledger_result rc = reserve_all(c, amount, &which);
        if (rc == KP_LEDGER_OK) {
            c->reserved = amount;
            return KP_OK;
        }
        if (rc == KP_LEDGER_WAIT)
            return KP_EBUSY;
        /* Exhausted: what is left may still hold a shorter answer. */
        const struct kp_ledger_hold *h = &c->holds[which];
        uint64_t fit = p ? cap_that_fits(c, p, h->avail) : 0;
        uint64_t floor = c->out_cap < MIN_OUTPUT_TOKENS ? c->out_cap : MIN_OUTPUT_TOKENS;
        if (c->out_cap == 0 || fit < floor || fit == 0) {
            refuse_exhausted(c, h);
            return KP_EPERM;
        }
        c->out_cap = fit;
        c->body_changed = true;
    }
    refuse_exhausted(c, &c->holds[0]);
    return KP_EPERM;
}

/* The budgets of key-scoped policies on the keys the call may try. */
struct key_scan {
    struct kp_call *c;
    const char *key; /* NULL: any candidate */
    bool any, hard;
};

static bool is_candidate(const struct kp_call *c, const char *key)
{
    for (unsigned i = 0; i < c->ncand; i++)
        if (strcmp(c->cand[i].key->e.id, key) == 0)
            return true;
    return false;
}

static int find_key_budget(const struct kp_entity *e, void *arg)
{
    struct key_scan *s = arg;
    const struct kp_policy *p = (const struct kp_policy *)e;
    if (p->nbudgets == 0 || p->scope_kind != KP_SCOPE_KEY || p->scope_target == NULL ||
        !is_candidate(s->c, p->scope_target))
        return 0;
    s->any = true;
    for (uint32_t i = 0; i < p->nbudgets; i++)
        s->hard |= p->budgets[i].kind == KP_BUDGET_HARD;
    return 0;
}

static int unpriced(struct kp_call *c)
{
    char what[200] = "a hard budget on one of its keys";
    for (unsigned i = 0; i < c->nholds; i++)
        if (c->holds[i].hard) {
            snprintf(what, sizeof(what), "hard budget %s/%s", c->holds[i].policy->e.id,
                     c->holds[i].budget->name);
            break;
        }
    char msg[500];
    snprintf(msg, sizeof(msg),
             "model %s has no price, and %s covers this call: keyplane cannot bound its cost; "
             "ask an operator to set one (PUT /admin/v1/prices/%s)",
             c->model, what, c->model);
    kp_usage_set_str(c->ev.error_class, "budget");
    return kp_router__fail(c, 403, "permission_error", "model_not_priced", msg);
}

int kp_router__budget_begin(struct kp_call *c)
{
    struct kp_budget_ledger *l = c->r->sh.budgets;
    if (l == NULL)
        return KP_OK;
    if (!c->budget_collected && collect(c) != KP_OK)
        return KP_EPERM;
    /* A hard budget on a key the call may try needs the same bounds, and
     * the cap written before the body is: see kp_router__budget_key. */
    struct key_scan ks = {c, NULL, false, false};
    if (c->key_budgets_exist) /* one pass over the policies less in the common case */
        kp_view_each(c->view, KP_KIND_POLICY, find_key_budget, &ks);
    if (c->nholds == 0 && !ks.any)
        return KP_OK;
    read_bounds(c);
    c->budget_price = kp_price_lookup(c->view, c->model, NULL);
    c->budget_hard |= ks.hard;
    if (c->budget_hard && c->budget_price == NULL)
        return unpriced(c);
    if (c->nholds == 0) {
        if (c->budget_hard && c->out_cap_set) {
            c->body_changed = true;
            if (write_cap(c) != KP_OK)
                return kp_router__fail(c, 503, "server_error", "out_of_memory",
                                       "out of memory; retry");
        }
        return KP_OK;
    }
    if (c->budget_hard && c->out_cap_set)
        c->body_changed = true;
    int rc = try_reserve(c);
    if (rc == KP_EBUSY) {
        c->budget_wait_until_ms = kp_now_unix_ms() + WAIT_MS;
        c->budget_waiting = true;
    }
    if (rc == KP_OK && write_cap(c) != KP_OK) {
        release_all(c);
        return kp_router__fail(c, 503, "server_error", "out_of_memory", "out of memory; retry");
    }
    return rc;
}

/* --- budgets of the key being tried ------------------------------------------------------ */

static int collect_key_policy(const struct kp_entity *e, void *arg)
{
    struct key_scan *s = arg;
    const struct kp_policy *p = (const struct kp_policy *)e;
    struct kp_call *c = s->c;
    if (p->nbudgets == 0 || p->scope_kind != KP_SCOPE_KEY || p->scope_target == NULL ||
        strcmp(p->scope_target, s->key) != 0)
        return 0;
    if (!add_holds(c, p, c->key_holds, &c->nkey_holds, KP_KEY_BUDGETS)) {
        s->any = true; /* full */
        return 1;
    }
    return 0;
}

static void release_key(struct kp_call *c)
{
    int64_t now = kp_now_unix_ms();
    for (unsigned i = 0; i < c->nkey_holds; i++)
        if (c->key_holds[i].held)
            kp_budget_ledger_settle(c->r->sh.budgets, &c->key_holds[i], 0, now);
    c->nkey_holds = 0;
    c->key_holds_for = NULL;
}

int kp_router__budget_key(struct kp_call *c, const struct kp_key *k)
{
    if (c->r->sh.budgets == NULL)
        return KP_OK;
    if (c->key_holds_for != k) {
        release_key(c);
        struct key_scan s = {c, k->e.id, false, false};
        kp_view_each(c->view, KP_KIND_POLICY, collect_key_policy, &s);
        if (s.any) {
            release_key(c);
            return KP_ENOENT; /* more budgets than a call tracks: not this key */
        }
        c->key_holds_for = k;
        c->key_wait_until_ms = 0;
    }
    if (c->nkey_holds == 0 || c->key_holds[0].held)
        return KP_OK;
    kp_nanousd amount = c->budget_price ? worst_case(c, c->budget_price, c->out_cap) : 0;
    int64_t now = kp_now_unix_ms();
    enum kp_ledger_result worst = KP_LEDGER_OK;
    unsigned which = 0;
    for (unsigned i = 0; i < c->nkey_holds; i++) {
        struct kp_ledger_hold *h = &c->key_holds[i];
        h->amount = amount;
        enum kp_ledger_result rc = kp_budget_ledger_reserve(c->r->sh.budgets, h, now);
        h->held = rc == KP_LEDGER_OK;
        if (rc != KP_LEDGER_OK && (worst == KP_LEDGER_OK || rc == KP_LEDGER_EXHAUSTED)) {
            worst = rc;
            which = i;
        }
    }
    if (worst == KP_LEDGER_OK)
        return KP_OK;
    for (unsigned i = 0; i < c->nkey_holds; i++)
        if (c->key_holds[i].held) {
            kp_budget_ledger_settle(c->r->sh.budgets, &c->key_holds[i], 0, now);
            c->key_holds[i].held = false;
        }
    if (worst == KP_LEDGER_WAIT && c->key_wait_until_ms == 0)
        c->key_wait_until_ms = now + WAIT_MS;
    if (worst == KP_LEDGER_WAIT && now < c->key_wait_until_ms) {
        c->budget_waiting = true;
        c->budget_waiting_key = true;
        c->budget_wait_until_ms = c->key_wait_until_ms;
        return KP_EBUSY;
    }
    /* Exhausted (or no grant in time): this key is out of its budget. */
    c->key_refused = c->key_holds[which];
    c->key_refused_set = true;
    c->key_holds_for = NULL;
    c->nkey_holds = 0;
    return KP_ENOENT;
}

void kp_router__budget_refuse_key(struct kp_call *c)
{
    refuse_exhausted(c, &c->key_refused);
}

/* A grant came (or the wait ran out) for a waiting call. */
static void resume(struct kp_call *c, int64_t now_ms)
{
    if (c->budget_waiting_key) {
        /* Waiting for a key's budget: try that key again (it is skipped
         * once its wait ran out). */
        c->budget_waiting = false;
        c->budget_waiting_key = false;
        (void)now_ms;
        kp_router__attempt_next(c);
        return;
    }
    int rc = try_reserve(c);
    if (rc == KP_EPERM)
        return; /* answered: c is gone */
    if (rc == KP_EBUSY && now_ms < c->budget_wait_until_ms)
        return;
    c->budget_waiting = false;
    if (rc == KP_EBUSY) {
        kp_usage_set_str(c->ev.error_class, "budget");
        c->retry_after_s = 1;
        kp_router__fail(c, 503, "server_error", "budget_unavailable",
                        "no budget grant came from the cluster's leader in time (is there a "
                        "leader?); retry shortly");
        return;
    }
    if (write_cap(c) != KP_OK) {
        release_all(c);
        kp_router__fail(c, 503, "server_error", "out_of_memory", "out of memory; retry");
        return;
    }
    kp_router__go(c);
}

static void wake_calls(struct kp_router *r)
{
    int64_t now = kp_now_unix_ms();
    struct kp_call *c = r->calls;
    while (c != NULL) {
        struct kp_call *next = c->next; /* resume may free c */
        if (c->budget_waiting)
            resume(c, now);
        c = next;
    }
}

static void wake(uv_async_t *a)
{
    wake_calls(a->data);
}

/* Waits run out even when no answer comes. */
static void tick(uv_timer_t *t)
{
    wake_calls(t->data);
}

/* The wake and tick handles, apart from the router so that they can
 * finish closing after it is freed. */
struct kp_budget_wake {
    uv_async_t wake;
    uv_timer_t tick;
    int open;
};

static void handle_closed(uv_handle_t *h)
{
    struct kp_budget_wake *w = h->data;
    if (--w->open == 0)
        kp_free(w);
}

void kp_router__budget_init(struct kp_router *r)
{
    if (r->sh.budgets == NULL)
        return;
    struct kp_budget_wake *w = kp_calloc(1, sizeof(*w));
    if (w == NULL) {
        kp_warn("router", "out of memory: calls waiting for a budget grant are woken by their "
                          "deadline only");
        return;
    }
    uv_async_init(r->loop, &w->wake, wake);
    w->wake.data = r;
    uv_timer_init(r->loop, &w->tick);
    w->tick.data = r;
    uv_timer_start(&w->tick, tick, 250, 250);
    uv_unref((uv_handle_t *)&w->tick);
    w->open = 2;
    r->budget_wake = w;
    if (kp_budget_ledger_watch(r->sh.budgets, &w->wake) != KP_OK)
        kp_warn("router", "too many workers for the budget ledger: calls waiting for a budget "
                          "grant on this one are woken every 250 ms");
}

void kp_router__budget_close(struct kp_router *r)
{
    struct kp_budget_wake *w = r->budget_wake;
    if (w == NULL)
        return;
    r->budget_wake = NULL;
    kp_budget_ledger_unwatch(r->sh.budgets, &w->wake);
    w->wake.data = w;
    w->tick.data = w;
    uv_close((uv_handle_t *)&w->wake, handle_closed);
    uv_close((uv_handle_t *)&w->tick, handle_closed);
}

void kp_router__budget_settle(struct kp_call *c)
{
    if ((c->nholds == 0 && c->nkey_holds == 0) || c->r->sh.budgets == NULL)
        return;
    int64_t now = kp_now_unix_ms();
    for (unsigned i = 0; i < c->nholds; i++) {
        struct kp_ledger_hold *h = &c->holds[i];
        if (h->held) /* soft budgets hold 0 but are charged all the same */
            kp_budget_ledger_settle(c->r->sh.budgets, h, c->ev.cost, now);
        h->held = false;
    }
    c->nholds = 0;
    /* The key that served holds the only key reservation left. */
    for (unsigned i = 0; i < c->nkey_holds; i++)
        if (c->key_holds[i].held)
            kp_budget_ledger_settle(c->r->sh.budgets, &c->key_holds[i], c->ev.cost, now);
    c->nkey_holds = 0;
}

int kp_router__budget_stream_guard(struct kp_call *c)
{
    if (c->reserved == 0 || c->out_cap == 0 || !c->budget_hard)
        return KP_OK;
    if (++c->stream_events <= c->out_cap * c->choices + STREAM_EVENT_MARGIN)
        return KP_OK;
    snprintf(c->stream_error, sizeof(c->stream_error),
             "the provider went on past the %" PRIu64 " output tokens this call's budget "
             "reservation allows; the stream was stopped",
             c->out_cap * c->choices);
    c->stream_error_class = "budget";
    return KP_ETOOBIG;
}

/* --- GET /v1/keyplane/budget ---------------------------------------------------------- */

static json_t *time_or_null(int64_t ms)
{
    char s[40];
    if (ms <= 0)
        return json_null();
    kp_format_time_ms(ms, s, sizeof(s));
    return json_string(s);
}

/* One budget as an app sees it: the cluster's numbers as this node's view
 * has them, the burn rate over the window so far, and when the remaining
 * money runs out at that rate (null: not before the window resets). */
static json_t *budget_json(const struct kp_call *c, const struct kp_policy *p,
                           const struct kp_budget *b, int64_t now)
{
    int64_t start = kp_budget_window_start_of(b, now);
    int64_t reset = kp_budget_window_end_of(b, now);
    const struct kp_budget_window_state *w = kp_view_budget_window(c->view, p->e.id, b->name);
    kp_nanousd spent = 0, held = 0;
    if (w != NULL && w->start_ms == start) {
        spent = w->spent;
        held = kp_budget_window_granted(w);
    }
    kp_nanousd remaining = b->limit_nanousd - spent - held;
    if (remaining < 0)
        remaining = 0;
    double hours = (double)(now - start) / 3600000.0;
    double rate = hours > 0 ? (double)spent / hours : 0; /* nano-USD per hour */
    int64_t exhaustion = 0;
    if (rate > 0 && b->kind == KP_BUDGET_HARD) {
        double ms = (double)remaining / rate * 3600000.0;
        if ((double)now + ms < (double)reset)
            exhaustion = now + (int64_t)ms;
    }
    json_t *o = json_object();
    json_object_set_new(o, "policy", json_string(p->e.id));
    json_object_set_new(o, "budget", json_string(b->name));
    json_object_set_new(o, "scope_kind", json_string(kp_scope_kind_name(p->scope_kind)));
    json_object_set_new(o, "scope_target",
                        p->scope_target ? json_string(p->scope_target) : json_null());
    json_object_set_new(o, "kind", json_string(b->kind == KP_BUDGET_HARD ? "hard" : "soft"));
    json_object_set_new(o, "window", json_string(kp_budget_window_name(b->window)));
    json_object_set_new(o, "limit_usd", kp_json_usd(b->limit_nanousd));
    json_object_set_new(o, "spent_usd", kp_json_usd(spent));
    json_object_set_new(o, "held_usd", kp_json_usd(held));
    json_object_set_new(o, "remaining_usd", kp_json_usd(remaining));
    json_object_set_new(o, "limit_nanousd", json_integer(b->limit_nanousd));
    json_object_set_new(o, "spent_nanousd", json_integer(spent));
    json_object_set_new(o, "held_nanousd", json_integer(held));
    json_object_set_new(o, "remaining_nanousd", json_integer(remaining));
    json_object_set_new(o, "burn_rate_usd_per_hour", kp_json_usd((kp_nanousd)rate));
    json_object_set_new(o, "window_start", time_or_null(start));
    json_object_set_new(o, "resets_at", time_or_null(reset));
    json_object_set_new(o, "projected_exhaustion", time_or_null(exhaustion));
    return o;
}

struct show_scan {
    struct kp_call *c;
    json_t *data;
    int64_t now;
};

static int show_policy(const struct kp_entity *e, void *arg)
{
    struct show_scan *s = arg;
    const struct kp_policy *p = (const struct kp_policy *)e;
    if (p->nbudgets == 0 || p->scope_kind == KP_SCOPE_KEY || !kp_router__policy_covers(p, s->c))
        return 0;
    for (uint32_t i = 0; i < p->nbudgets; i++)
        json_array_append_new(s->data, budget_json(s->c, p, &p->budgets[i], s->now));
    return 0;
}

void kp_router__budget_show(struct kp_call *c)
{
    struct show_scan s = {c, json_array(), kp_now_unix_ms()};
    if (s.data != NULL)
        kp_view_each(c->view, KP_KIND_POLICY, show_policy, &s);
    kp_router__respond_list(c, s.data);
}

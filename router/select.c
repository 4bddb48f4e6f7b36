/* Which keys a call may use, in the order it tries them: the pool's
 * members by priority (lower first; members of equal priority in their
 * listed order, rotated per call so load spreads), skipping keys that are
 * disabled, revoked, frozen by an operator, unhealthy (invalid, quota
 * exhausted, disabled by health), without a usable secret, not allowed the
 * model, or of a provider the endpoint cannot be sent to; then the
 * fallback pool's (unless it is frozen), and so on down the fallback chain
 * (each pool must be in the token's scope).
 *
 * Two refusals come out of here: 404 when no key of any pool in the chain
 * may serve the model at all, and 503 when some may but none is usable
 * now (the message names the pool and why, never a secret). */
#include <stdio.h>
#include <string.h>

#include "router_internal.h"

static bool model_allowed(const struct kp_key *k, const char *model)
{
    if (k->models.n == 0)
        return true;
    for (uint32_t i = 0; i < k->models.n; i++) {
        const char *m = k->models.v[i];
        size_t n = strlen(m);
        if (n > 0 && m[n - 1] == '*' ? strncmp(m, model, n - 1) == 0 : strcmp(m, model) == 0)
            return true;
    }
    return false;
}

static bool endpoint_supported(enum kp_endpoint ep, const struct kp_provider *p)
{
    return kp_router__shape_of(ep, p->kind) >= 0;
}

static uint64_t next_random(struct kp_router *r)
{
    /* xorshift64*: per worker, no syscall per call. */
    if (r->rng == 0)
        r->rng = kp_now_mono_us() | 1;
    r->rng ^= r->rng >> 12;
    r->rng ^= r->rng << 25;
    r->rng ^= r->rng >> 27;
    return r->rng * 2685821657736338717ull;
}

/* The next member of priority @prio (@count of them left unused) by the
 * pool's strategy: priority rotates the starting member per call;
 * weighted draws by weight; least_inflight takes the one with the fewest
 * attempts in flight on this worker; lowest_latency the one with the
 * shortest smoothed time to answer (an unmeasured key first, to measure
 * it). Ties go to the rotation order. */
static uint32_t pick(struct kp_call *c, const struct kp_pool *pool, const bool *used, uint32_t prio,
                     uint32_t count, unsigned start)
{
    uint32_t n = pool->nmembers, first = UINT32_MAX, skip = start % count;
    uint32_t order[256], m = 0;
    /* Members of the group in rotation order. */
    for (uint32_t pass = 0; pass < 2; pass++)
        for (uint32_t i = 0; i < n; i++) {
            if (used[i] || pool->members[i].priority != prio)
                continue;
            if (pass == 0 && skip > 0) {
                skip--;
                continue;
            }
            if (m < count)
                order[m++] = i;
        }
    if (m == 0)
        return first;
    if (pool->strategy == KP_POOL_WEIGHTED) {
        uint64_t total = 0;
        for (uint32_t j = 0; j < m; j++)
            total += pool->members[order[j]].weight;
        uint64_t r = total ? next_random(c->r) % total : 0;
        for (uint32_t j = 0; j < m; j++) {
            uint32_t w = pool->members[order[j]].weight;
            if (r < w)
                return order[j];
            r -= w;
        }
        return order[0];
    }
    if (pool->strategy == KP_POOL_LEAST_INFLIGHT || pool->strategy == KP_POOL_LOWEST_LATENCY) {
        uint32_t best = order[0];
        uint64_t best_v = UINT64_MAX;
        for (uint32_t j = 0; j < m; j++) {
            const struct kp_key *k = kp_view_pool_key(c->view, pool, order[j]);
            unsigned inflight = 0;
            uint64_t ewma = 0;
            if (k != NULL)
                kp_keystat_get(c->r->breakers, k->e.id, &inflight, &ewma);
            uint64_t v = pool->strategy == KP_POOL_LEAST_INFLIGHT ? inflight : ewma;
            if (v < best_v) {
                best_v = v;
                best = order[j];
            }
        }
        return best;
    }
    return order[0];
}

/* Why the last skipped key was skipped, for the 503 message. */
struct reasons {
    unsigned model_ok; /* keys that may serve the model */
    char last[200];
    int64_t wait_ms;   /* the soonest a cooling key is usable again */
    bool rate_limited; /* some key waits for a provider's Retry-After */
};

/* A degraded or rate-limited key (docs/health.md) stays usable but goes
 * after the pool's healthy keys, whatever its priority: the candidates from
 * @first on whose bit is set in @unwell_bits (bit i: c->cand[i]) move to
 * the end, each group keeping its order. */
static void demote_unwell(struct kp_call *c, uint32_t first, uint64_t unwell_bits)
{
    struct kp_candidate well[KP_MAX_CANDIDATES], unwell[KP_MAX_CANDIDATES];
    uint32_t nw = 0, nu = 0;
    if (unwell_bits == 0)
        return;
    for (uint32_t i = first; i < c->ncand; i++) {
        if (unwell_bits & (UINT64_C(1) << i))
            unwell[nu++] = c->cand[i];
        else
            well[nw++] = c->cand[i];
    }
    memcpy(&c->cand[first], well, nw * sizeof(well[0]));
    memcpy(&c->cand[first + nw], unwell, nu * sizeof(unwell[0]));
}

/* Room for one more candidate: the call's few inline slots, then the
 * longest list there can be, at once. */
static bool cand_room(struct kp_call *c)
{
    if (c->cand == NULL)
        c->cand = c->cand_small;
    if (c->cand != c->cand_small || c->ncand < sizeof(c->cand_small) / sizeof(c->cand_small[0]))
        return true;
    struct kp_candidate *all = kp_malloc(KP_MAX_CANDIDATES * sizeof(*all));
    if (all == NULL)
        return false;
    memcpy(all, c->cand_small, c->ncand * sizeof(*all));
    c->cand = all;
    return true;
}

static void consider(struct kp_call *c, const struct kp_pool *pool, struct reasons *why,
                     unsigned start)
{
    /* Priority groups, lowest first; within a group the pool's strategy
     * orders the members (pick). */
    uint32_t n = pool->nmembers, first = c->ncand;
    uint64_t unwell = 0;
    bool used[256] = {false};
    for (uint32_t round = 0; round < n && c->ncand < KP_MAX_CANDIDATES; round++) {
        uint32_t best = UINT32_MAX, best_prio = UINT32_MAX, count = 0;
        for (uint32_t i = 0; i < n; i++)
            if (!used[i] && pool->members[i].priority < best_prio)
                best_prio = pool->members[i].priority;
        for (uint32_t i = 0; i < n; i++)
            count += !used[i] && pool->members[i].priority == best_prio;
        if (count == 0)
            break;
        best = pick(c, pool, used, best_prio, count, start);
        if (best >= n)
            break;
        used[best] = true;
        const struct kp_key *k = kp_view_pool_key(c->view, pool, best);
        if (k == NULL)
            continue;
        if (!model_allowed(k, c->model)) {
            snprintf(why->last, sizeof(why->last), "key %s is not allowed model %s", k->e.id,
                     c->model);
            continue;
        }
        why->model_ok++;
        const struct kp_provider *p = kp_view_provider(c->view, k->provider);
        const struct kp_key_health *h = kp_view_key_health(c->view, k->e.id);
        if (k->status != KP_KEY_ACTIVE) {
            snprintf(why->last, sizeof(why->last), "key %s is %s", k->e.id,
                     kp_key_status_name(k->status));
        } else if (kp_view_freeze(c->view, KP_FREEZE_KEY, k->e.id) != NULL) {
            snprintf(why->last, sizeof(why->last), "key %s is frozen by an operator", k->e.id);
        } else if (h != NULL &&
                   (h->status == KP_HEALTH_INVALID || h->status == KP_HEALTH_QUOTA_EXHAUSTED ||
                    h->status == KP_HEALTH_DISABLED)) {
            snprintf(why->last, sizeof(why->last), "key %s is %s", k->e.id,
                     kp_health_status_name(h->status));
        } else if (kp_key_primary(k) == NULL) {
            snprintf(why->last, sizeof(why->last), "key %s has no secret", k->e.id);
        } else if (p == NULL || !endpoint_supported(c->ep, p)) {
            snprintf(why->last, sizeof(why->last),
                     "key %s's provider (%s) cannot serve this endpoint", k->e.id,
                     p ? kp_provider_kind_name(p->kind) : "missing");
        } else {
            bool limited = false;
            int64_t wait = kp_breaker_wait_ms(c->r->breakers, k->e.id, c->start_ms, &limited);
            if (wait > 0) {
                snprintf(why->last, sizeof(why->last), "key %s is cooling down (%s) for %lld ms",
                         k->e.id, limited ? "rate limited" : "failing", (long long)wait);
                if (why->wait_ms == 0 || wait < why->wait_ms)
                    why->wait_ms = wait;
                why->rate_limited |= limited;
                continue;
            }
            if (!cand_room(c)) {
                snprintf(why->last, sizeof(why->last), "out of memory listing keys");
                break;
            }
            if (h != NULL &&
                (h->status == KP_HEALTH_DEGRADED || h->status == KP_HEALTH_RATE_LIMITED))
                unwell |= UINT64_C(1) << c->ncand;
            c->cand[c->ncand++] = (struct kp_candidate){k, p, pool->e.id};
        }
    }
    demote_unwell(c, first, unwell);
}

/* The last resort of a call whose model no key could serve: the pool's
 * downgrade rule for it ({"from": model, "to": cheaper}), at most twice per
 * call. The body's model is rewritten (and re-serialised for providers
 * that get it as is); the usage event keeps the model the app asked for. */
bool kp_router__downgrade(struct kp_call *c)
{
    const struct kp_pool *pool = kp_view_pool(c->view, c->pool_name);
    if (pool == NULL || c->downgrades >= 2)
        return false;
    const char *to = NULL;
    for (uint32_t i = 0; i < pool->ndowngrades && to == NULL; i++)
        if (strcmp(pool->downgrades[i].from, c->model) == 0)
            to = pool->downgrades[i].to;
    struct kp_token_refusal r;
    if (to == NULL ||
        kp_token_scope_allows(&c->scope, c->start_ms, NULL, NULL, NULL, NULL, to, &r) != KP_OK)
        return false;
    kp_info("router", "request %s: model %s downgraded to %s by pool %s", c->rid, c->model, to,
            pool->e.id);
    /* c->model points into the body: replaced together. */
    json_t *body = kp_router__body(c);
    if (body == NULL || json_object_set_new(body, "model", json_string(to)) != 0)
        return false;
    c->model = json_string_value(json_object_get(body, "model"));
    c->downgrades++;
    size_t len;
    char *text = kp_json_dumps(body, &len);
    if (text == NULL)
        return false;
    kp_buf_consume(&c->rewritten_body, c->rewritten_body.len);
    bool ok = kp_buf_append(&c->rewritten_body, text, len) == 0;
    kp_free(text);
    if (!ok)
        return false;
    c->ncand = c->next_cand = 0;
    return true;
}

int kp_router__select(struct kp_call *c)
{
    struct reasons why = {0, "", 0, false};
    const char *name = c->pool_name;
    unsigned start = (unsigned)(c->start_us / 7);
    for (int depth = 0; name != NULL && depth < 8; depth++) {
        const struct kp_pool *pool = kp_view_pool(c->view, name);
        if (pool == NULL) {
            if (depth == 0) {
                char msg[300];
                snprintf(msg, sizeof(msg),
                         "no pool named %s: set X-Keyplane-Pool to a pool of your token, or "
                         "ask your operator to create it",
                         name);
                return kp_router__fail(c, 404, "invalid_request_error", "pool_not_found", msg);
            }
            break;
        }
        struct kp_token_refusal r;
        if (depth > 0 && kp_token_scope_allows(&c->scope, c->start_ms, NULL, NULL, NULL, name, NULL,
                                               &r) != KP_OK)
            break;
        /* A frozen fallback lends no keys; its own fallback still may (a
         * frozen first pool refused the call already: freeze.c). */
        if (depth == 0 || kp_view_freeze(c->view, KP_FREEZE_POOL, name) == NULL)
            consider(c, pool, &why, start);
        name = pool->fallback;
    }
    if (c->ncand > 0)
        return KP_OK;
    if (kp_router__downgrade(c))
        return kp_router__select(c);
    char msg[512];
    if (why.model_ok == 0) {
        snprintf(msg, sizeof(msg), "model %s is not served by pool %s (or its fallbacks)", c->model,
                 c->pool_name);
        return kp_router__fail(c, 404, "invalid_request_error", "model_not_found", msg);
    }
    snprintf(msg, sizeof(msg), "no usable key in pool %s for model %s: %s", c->pool_name, c->model,
             why.last);
    if (why.wait_ms > 0) {
        /* Every usable key is cooling down: say when to come back, without
         * sending the provider anything meanwhile. */
        c->retry_after_s = (int)((why.wait_ms + 999) / 1000);
        kp_usage_set_str(c->ev.error_class, why.rate_limited ? "rate_limit" : "server");
        if (why.rate_limited)
            return kp_router__fail(c, 429, "rate_limit_error", "rate_limited", msg);
    }
    return kp_router__fail(c, 503, "server_error", "no_usable_key", msg);
}

/* Rate limits: requests and tokens per minute, for keys (the provider's
 * ceiling, `rpm`/`tpm` on the key) and for policies (`rpm`/`tpm` on a
 * policy whose scope covers the call: global, tenant, project, token,
 * pool, feature; a key-scoped policy limits the calls sent to that key,
 * check_key_policy).
 *
 * A limit holds across the cluster without any coordination per request:
 * each node enforces limit / N, where N is the number of routers in its
 * registry view (nodes_of: members that can route, less those an open
 * node_down alert says are down), so the shares follow nodes joining,
 * leaving and dying. Within a node every worker shares one bucket per
 * limit.
 *
 * Buckets use GCRA (the generic cell rate algorithm): one atomic number per
 * limit, the "theoretical arrival time". A request of cost c at time t
 * moves TAT to max(TAT, t) + c x (60 s / share), and is allowed when that is
 * at most one minute ahead of t (so a full minute's share may come at
 * once). One compare-and-swap, no lock, exact under any
 * number of workers. Tokens are charged after the call, with the count the
 * provider reported; a call is refused while the bucket is over. Buckets
 * live in a fixed table keyed by a 64-bit hash of the limit's name
 * (open addressing; a full table lets calls through and counts it). */
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "router_internal.h"

#define SLOTS    4096 /* power of two */
#define PROBE    32
#define BURST_US INT64_C(60000000) /* one minute's worth may come at once */

struct bucket {
    atomic_uint_least64_t tag; /* hash of the name; 0 = free */
    atomic_int_least64_t tat_us;
};

static struct bucket table[SLOTS];

static uint64_t name_hash(const char *kind, const char *id, const char *unit)
{
    uint64_t h = 1469598103934665603ull;
    const char *parts[] = {kind, "\x1f", id, "\x1f", unit};
    for (size_t p = 0; p < 5; p++)
        for (const char *s = parts[p]; *s; s++)
            h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h ? h : 1;
}

static struct bucket *bucket_of(uint64_t tag)
{
    for (uint32_t i = 0; i < PROBE; i++) {
        struct bucket *b = &table[(tag + i) & (SLOTS - 1)];
        uint64_t seen = atomic_load_explicit(&b->tag, memory_order_acquire);
        if (seen == tag)
            return b;
        if (seen == 0) {
            uint64_t zero = 0;
            if (atomic_compare_exchange_strong(&b->tag, &zero, tag) || zero == tag)
                return b;
        }
    }
    kp_router__count_ratelimit_table_full();
    return NULL;
}

/* Microseconds one unit costs at @limit per minute shared by @nodes. */
static int64_t interval_us(uint64_t limit, unsigned nodes)
{
    double share = (double)limit / (double)(nodes ? nodes : 1);
    if (share < 1e-6)
        share = 1e-6;
    return (int64_t)(60000000.0 / share);
}

/* Take @cost units now, or say how long until it could (KP_EBUSY). */
static int take(struct bucket *b, int64_t cost_us, int64_t now_us, int64_t *wait_us)
{
    int64_t tat = atomic_load_explicit(&b->tat_us, memory_order_relaxed);
    for (;;) {
        int64_t base = tat > now_us ? tat : now_us;
        if (base + cost_us - now_us > BURST_US) {
            *wait_us = base + cost_us - now_us - BURST_US;
            return KP_EBUSY;
        }
        if (atomic_compare_exchange_weak_explicit(&b->tat_us, &tat, base + cost_us,
                                                  memory_order_relaxed, memory_order_relaxed))
            return KP_OK;
    }
}

/* Whether the bucket is over (a token limit checked before the call). */
static bool over(struct bucket *b, int64_t now_us, int64_t *wait_us)
{
    int64_t tat = atomic_load_explicit(&b->tat_us, memory_order_relaxed);
    if (tat - now_us > BURST_US) {
        *wait_us = tat - now_us - BURST_US;
        return true;
    }
    return false;
}

static void charge(struct bucket *b, int64_t cost_us, int64_t now_us)
{
    int64_t tat = atomic_load_explicit(&b->tat_us, memory_order_relaxed);
    for (;;) {
        int64_t base = tat > now_us ? tat : now_us;
        if (atomic_compare_exchange_weak_explicit(&b->tat_us, &tat, base + cost_us,
                                                  memory_order_relaxed, memory_order_relaxed))
            return;
    }
}

/* --- what covers a call ----------------------------------------------------------------- */

struct limit {
    const char *kind; /* "policy", "key" */
    const char *id;
    uint64_t rpm, tpm;
};

bool kp_router__policy_covers(const struct kp_policy *p, const struct kp_call *c)
{
    const char *t = p->scope_target;
    switch (p->scope_kind) {
    case KP_SCOPE_GLOBAL:
        return true;
    case KP_SCOPE_TENANT:
        return t && strcmp(t, c->ev.tenant) == 0;
    case KP_SCOPE_PROJECT:
        return t && strcmp(t, c->ev.project) == 0;
    case KP_SCOPE_TOKEN:
        return t && c->token && strcmp(t, c->token->e.id) == 0;
    case KP_SCOPE_POOL:
        return t && c->pool_name && strcmp(t, c->pool_name) == 0;
    case KP_SCOPE_FEATURE:
        return t && strcmp(t, c->ev.feature) == 0;
    case KP_SCOPE_KEY:
        /* Checked per key as keys are tried (kp_router__limit_key); here
         * only once a key served the call (empty before: no match), so
         * that its tokens are charged. */
        return t && c->ev.key_id[0] != '\0' && strcmp(t, c->ev.key_id) == 0;
    default:
        return false;
    }
}

struct scan {
    struct kp_call *c;
    int64_t now_us;
    unsigned nodes;
    int64_t wait_us;
    uint64_t limit; /* the refusing limit, for X-RateLimit-Limit */
    char why[200];
};

/* What a successful answer tells the app of the tightest per-minute limit
 * covering it, of requests or of tokens (x-ratelimit-*-requests, -tokens):
 * the limit, what is left of it, and when the bucket is full again. Each
 * node holds its share of the limit, so the cluster's remaining is
 * estimated as this node's times the number of nodes. @interval is the
 * bucket's cost of one request or one token. */
static void note_remaining(struct kp_rl_seen *seen, struct bucket *b, uint64_t limit,
                           int64_t interval, unsigned nodes, int64_t now_us)
{
    int64_t tat = atomic_load_explicit(&b->tat_us, memory_order_relaxed);
    int64_t used = tat > now_us ? tat - now_us : 0;
    int64_t left = used >= BURST_US ? 0 : (BURST_US - used) / (interval > 0 ? interval : 1);
    uint64_t remaining = (uint64_t)left * (nodes ? nodes : 1);
    if (remaining > limit)
        remaining = limit;
    /* The tightest: least left, as a share of its limit. */
    if (seen->limit != 0 &&
        (double)remaining / (double)limit >= (double)seen->remaining / (double)seen->limit)
        return;
    seen->limit = limit;
    seen->remaining = remaining;
    seen->reset_ms = used / 1000;
}

static int check_policy(const struct kp_entity *e, void *arg)
{
    struct scan *s = arg;
    const struct kp_policy *p = (const struct kp_policy *)e;
    if ((p->rpm == 0 && p->tpm == 0) || !kp_router__policy_covers(p, s->c))
        return 0;
    int64_t wait = 0;
    if (p->tpm > 0) {
        struct bucket *b = bucket_of(name_hash("policy", p->e.id, "tpm"));
        if (b != NULL && over(b, s->now_us, &wait)) {
            snprintf(s->why, sizeof(s->why), "policy %s allows %llu tokens per minute", p->e.id,
                     (unsigned long long)p->tpm);
            s->wait_us = wait;
            s->limit = p->tpm;
            return 1;
        }
        if (b != NULL)
            note_remaining(&s->c->rl_ok_tok, b, p->tpm, interval_us(p->tpm, s->nodes), s->nodes,
                           s->now_us);
    }
    if (p->rpm > 0) {
        struct bucket *b = bucket_of(name_hash("policy", p->e.id, "rpm"));
        int64_t interval = interval_us(p->rpm, s->nodes);
        if (b != NULL && take(b, interval, s->now_us, &wait) != KP_OK) {
            snprintf(s->why, sizeof(s->why), "policy %s allows %llu requests per minute", p->e.id,
                     (unsigned long long)p->rpm);
            s->wait_us = wait;
            s->limit = p->rpm;
            return 1;
        }
        if (b != NULL)
            note_remaining(&s->c->rl_ok_req, b, p->rpm, interval, s->nodes, s->now_us);
    }
    return 0;
}

struct live {
    const struct kp_view *view;
    unsigned n;
};

static int count_router(const struct kp_entity *e, void *arg)
{
    const struct kp_member *m = (const struct kp_member *)e;
    struct live *l = arg;
    if (m->role == KP_MEMBER_SPARE)
        return 0; /* holds no registry: routes nothing */
    char id[129];
    kp_alert_id(id, "node:%s:down", m->e.id); /* the node_down rule's id */
    const struct kp_alert *down = (const struct kp_alert *)kp_view_get(l->view, KP_KIND_ALERT, id);
    if (down == NULL || down->resolved_ms != 0)
        l->n++;
    return 0;
}

/* The routers a cluster-wide limit is shared among: the members that can
 * route (voters and standbys), less those the leader's node_down alert
 * says are out of contact (docs/alerts.md: after 30 s by default), so the
 * survivors take up a dead router's share and give it back when it is
 * heard from again. Counted once per view on each thread. */
static unsigned nodes_of(const struct kp_view *v)
{
    static _Thread_local const struct kp_view *memo_view;
    static _Thread_local uint64_t memo_index;
    static _Thread_local unsigned memo_n;
    uint64_t index = kp_view_applied_index(v);
    if (v == memo_view && index == memo_index)
        return memo_n;
    struct live l = {v, 0};
    kp_view_each(v, KP_KIND_MEMBER, count_router, &l);
    memo_view = v;
    memo_index = index;
    memo_n = l.n > 0 ? l.n : 1;
    return memo_n;
}

int kp_router__limit_call(struct kp_call *c)
{
    struct scan s = {c, (int64_t)kp_now_mono_us(), nodes_of(c->view), 0, 0, ""};
    if (kp_view_each(c->view, KP_KIND_POLICY, check_policy, &s) == 0)
        return KP_OK;
    c->retry_after_s = (int)(s.wait_us / 1000000) + 1;
    c->rl_limit = s.limit;
    kp_usage_set_str(c->ev.error_class, "rate_limit");
    char msg[300];
    snprintf(msg, sizeof(msg), "rate limited: %s; retry in %d s", s.why, c->retry_after_s);
    return kp_router__fail(c, 429, "rate_limit_error", "rate_limited", msg);
}

/* The policies scoped to one key: its internal limits, beside the
 * provider's ceiling in the key itself. */
struct key_scan {
    const char *key_id;
    int64_t now_us;
    unsigned nodes;
    int64_t wait_us;
};

static int check_key_policy(const struct kp_entity *e, void *arg)
{
    struct key_scan *s = arg;
    const struct kp_policy *p = (const struct kp_policy *)e;
    if (p->scope_kind != KP_SCOPE_KEY || p->scope_target == NULL ||
        strcmp(p->scope_target, s->key_id) != 0 || (p->rpm == 0 && p->tpm == 0))
        return 0;
    if (p->tpm > 0) {
        struct bucket *b = bucket_of(name_hash("policy", p->e.id, "tpm"));
        if (b != NULL && over(b, s->now_us, &s->wait_us))
            return 1;
    }
    if (p->rpm > 0) {
        struct bucket *b = bucket_of(name_hash("policy", p->e.id, "rpm"));
        if (b != NULL && take(b, interval_us(p->rpm, s->nodes), s->now_us, &s->wait_us) != KP_OK)
            return 1;
    }
    return 0;
}

int64_t kp_router__limit_key(const struct kp_call *c, const struct kp_key *k)
{
    int64_t now = (int64_t)kp_now_mono_us(), wait = 0;
    unsigned nodes = nodes_of(c->view);
    struct key_scan ks = {k->e.id, now, nodes, 0};
    if (kp_view_each(c->view, KP_KIND_POLICY, check_key_policy, &ks) != 0)
        return ks.wait_us / 1000 + 1;
    if (k->tpm > 0) {
        struct bucket *b = bucket_of(name_hash("key", k->e.id, "tpm"));
        if (b != NULL && over(b, now, &wait))
            return wait / 1000 + 1;
    }
    if (k->rpm > 0) {
        struct bucket *b = bucket_of(name_hash("key", k->e.id, "rpm"));
        if (b != NULL && take(b, interval_us(k->rpm, nodes), now, &wait) != KP_OK)
            return wait / 1000 + 1;
    }
    return 0;
}

int64_t kp_router__limit_take(const struct kp_call *c, const char *kind, const char *id,
                              uint64_t rpm)
{
    int64_t now = (int64_t)kp_now_mono_us(), wait = 0;
    struct bucket *b = bucket_of(name_hash(kind, id, "rpm"));
    if (b != NULL && take(b, interval_us(rpm, nodes_of(c->view)), now, &wait) != KP_OK)
        return wait / 1000 + 1;
    return 0;
}

static int charge_policy(const struct kp_entity *e, void *arg)
{
    struct scan *s = arg;
    const struct kp_policy *p = (const struct kp_policy *)e;
    if (p->tpm == 0 || !kp_router__policy_covers(p, s->c))
        return 0;
    struct bucket *b = bucket_of(name_hash("policy", p->e.id, "tpm"));
    uint64_t tokens = s->c->ev.tokens_in + s->c->ev.tokens_out;
    if (b != NULL)
        charge(b, (int64_t)tokens * interval_us(p->tpm, s->nodes), s->now_us);
    return 0;
}

void kp_router__limit_charge(struct kp_call *c)
{
    uint64_t tokens = c->ev.tokens_in + c->ev.tokens_out;
    if (tokens == 0 || c->view == NULL || c->limit_charged)
        return;
    c->limit_charged = true;
    struct scan s = {c, (int64_t)kp_now_mono_us(), nodes_of(c->view), 0, 0, ""};
    kp_view_each(c->view, KP_KIND_POLICY, charge_policy, &s);
    const struct kp_key *k = c->ev.key_id[0] ? kp_view_key(c->view, c->ev.key_id) : NULL;
    if (k != NULL && k->tpm > 0) {
        struct bucket *b = bucket_of(name_hash("key", k->e.id, "tpm"));
        if (b != NULL)
            charge(b, (int64_t)tokens * interval_us(k->tpm, s.nodes), s.now_us);
    }
}

/* "850ms" under a second, else whole seconds rounded up ("12s"), as
 * OpenAI writes its reset headers. */
static void format_reset(char *out, size_t len, int64_t ms)
{
    if (ms < 1000)
        snprintf(out, len, "%lldms", (long long)ms);
    else
        snprintf(out, len, "%llds", (long long)(ms + 999) / 1000);
}

unsigned kp_router__limit_headers(const struct kp_call *c, struct kp_rl_headers *v,
                                  struct kp_http_header *out)
{
    unsigned n = 0;
    if (c->rl_ok_req.limit != 0) {
        snprintf(v->limit, sizeof(v->limit), "%llu", (unsigned long long)c->rl_ok_req.limit);
        snprintf(v->remaining, sizeof(v->remaining), "%llu",
                 (unsigned long long)c->rl_ok_req.remaining);
        format_reset(v->reset, sizeof(v->reset), c->rl_ok_req.reset_ms);
        out[n++] = (struct kp_http_header)KP_HTTP_HEADER("x-ratelimit-limit-requests", v->limit);
        out[n++] =
            (struct kp_http_header)KP_HTTP_HEADER("x-ratelimit-remaining-requests", v->remaining);
        out[n++] = (struct kp_http_header)KP_HTTP_HEADER("x-ratelimit-reset-requests", v->reset);
    }
    if (c->rl_ok_tok.limit != 0) {
        snprintf(v->tok_limit, sizeof(v->tok_limit), "%llu",
                 (unsigned long long)c->rl_ok_tok.limit);
        snprintf(v->tok_remaining, sizeof(v->tok_remaining), "%llu",
                 (unsigned long long)c->rl_ok_tok.remaining);
        format_reset(v->tok_reset, sizeof(v->tok_reset), c->rl_ok_tok.reset_ms);
        out[n++] = (struct kp_http_header)KP_HTTP_HEADER("x-ratelimit-limit-tokens", v->tok_limit);
        out[n++] =
            (struct kp_http_header)KP_HTTP_HEADER("x-ratelimit-remaining-tokens", v->tok_remaining);
        out[n++] = (struct kp_http_header)KP_HTTP_HEADER("x-ratelimit-reset-tokens", v->tok_reset);
    }
    return n;
}

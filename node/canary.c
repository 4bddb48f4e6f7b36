/* Canaries on the Raft leader (docs/health.md): one cheap probe per
 * active key every canary_interval_ms, jittered by ±20%.
 *
 * The leader itself sends the probes (it does not spread them over the
 * routers): a timer ticks ten times per interval; on each tick, once a
 * barrier has made sure this leader applied everything its predecessors
 * committed, every key whose due time (canary_rules.c, from the registry's
 * last_canary_ms) has come is probed with its opened secret through
 * kp_call_start (libcurl on the threadpool). The answer is metered as
 * canary traffic (no tenant) and committed with set_key_health: the
 * probe's start time, its result, the streak and the status the rules
 * give. A key stays "in flight" until that commit applied, so no tick
 * probes it twice.
 *
 *   due --send--> in flight --answer--> recording --commit--> (due later)
 *
 * A new leader computes the same due times from the registry, so it
 * resumes without a gap and without probing a key whose probe committed.
 * A probe whose leader died before its result committed is sent again by
 * the next leader (at most one extra probe per key per failover). Losing
 * leadership drops what is in flight: answers of an old generation are
 * metered but not committed. */
#include <stdio.h>
#include <string.h>

#include "canary.h"
#include "node.h"

enum {
    MAX_INFLIGHT = 32, /* probes and their records; more wait for a later tick */
    PROBE_TIMEOUT_MS = 10000,
};

struct kp_canary {
    struct kp_node *n;
    uv_timer_t timer;
    bool timer_open, closing;
    unsigned calls, proposing;
    uint64_t generation; /* bumped when leadership is lost */
    bool leader, ready, barrier;
    char inflight[MAX_INFLIGHT][129]; /* "" when free */
};

struct probe {
    struct kp_canary *c;
    uint64_t generation;
    size_t slot;
    int64_t started_ms;
    uint64_t mono_start_us;
    char key[129];
    char provider[129];
};

static void maybe_free(struct kp_canary *c)
{
    if (c->closing && !c->timer_open && c->calls == 0 && c->proposing == 0)
        kp_free(c);
}

static void meter(struct kp_canary *c, const struct probe *p, long status, const char *cls)
{
    struct kp_usage_event ev;
    kp_usage_event_init(&ev);
    ev.time_ms = p->started_ms;
    char rid[64];
    snprintf(rid, sizeof(rid), "canary-%s-%lld", c->n->cfg->node_name, (long long)p->started_ms);
    kp_usage_set_str(ev.request_id, rid);
    kp_usage_set_str(ev.node, c->n->cfg->node_name);
    kp_usage_set_str(ev.key_id, p->key);
    kp_usage_set_str(ev.provider, p->provider);
    kp_usage_set_str(ev.kind, KP_USAGE_KIND_CANARY);
    kp_usage_set_str(ev.error_class, cls);
    ev.status = status > 0 && status < 1000 ? (uint16_t)status : 0;
    ev.total_us = kp_now_mono_us() - p->mono_start_us;
    kp_metering_record(c->n, &ev);
}

static void recorded(void *arg, int code, const struct kp_fsm_result *res)
{
    struct probe *p = arg;
    struct kp_canary *c = p->c;
    c->proposing--;
    if (code != KP_OK || res->code != KP_OK)
        kp_warn("canary", "key %s: the probe's result did not commit (%s); probing again", p->key,
                code != KP_OK ? kp_err_msg(code) : res->message);
    if (p->generation == c->generation)
        c->inflight[p->slot][0] = '\0';
    kp_free(p);
    maybe_free(c);
}

static int record(struct kp_canary *c, struct probe *p, enum kp_canary_outcome outcome,
                  const char *cls)
{
    const struct kp_key_health *old = (const struct kp_key_health *)kp_fsm_get(
        kp_store_fsm(c->n->store), KP_KIND_KEY_HEALTH, p->key);
    int status = old ? old->status : KP_HEALTH_HEALTHY;
    struct kp_key_health h = {0};
    h.e.id = p->key;
    h.status =
        (uint8_t)kp_canary_next(status, old ? old->canary_streak : 0, outcome, &h.canary_streak);
    h.last_error_class = cls[0] ? (char *)cls : old ? old->last_error_class : NULL;
    h.last_canary_ms = p->started_ms;
    h.last_canary_result = cls[0] ? (char *)cls : (char *)"ok";
    if (h.status != status)
        kp_info("canary", "key %s: %s -> %s after a probe (%s)", p->key,
                kp_health_status_name(status), kp_health_status_name(h.status),
                h.last_canary_result);
    struct kp_command cmd = {
        .v = KP_COMMAND_VERSION,
        .op = KP_OP_SET_KEY_HEALTH,
        .ts = kp_now_unix_ms(),
        .audit = {.actor = (char *)"system", .role = (char *)"leader", .source = (char *)"canary"},
        .body.key_health = &h};
    char errmsg[256];
    struct kp_buf buf;
    kp_buf_init(&buf);
    int rc = kp_command_encode(&cmd, &buf, errmsg, sizeof(errmsg));
    if (rc == KP_OK)
        rc = kp_store_propose(c->n->store, buf.data, buf.len, recorded, p);
    kp_buf_free(&buf);
    return rc;
}

static void answered(void *arg, const struct kp_call_result *r)
{
    struct probe *p = arg;
    struct kp_canary *c = p->c;
    c->calls--;
    const char *cls;
    bool timed_out = r->status == 0 && strstr(r->error, "imeout") != NULL;
    enum kp_canary_outcome outcome =
        kp_canary_classify(r->status, (const char *)r->body.data, timed_out, &cls);
    meter(c, p, r->status, cls);
    bool current = !c->closing && p->generation == c->generation && kp_store_is_leader(c->n->store);
    if (current && record(c, p, outcome, cls) == KP_OK) {
        c->proposing++;
        return;
    }
    if (current)
        c->inflight[p->slot][0] = '\0';
    kp_free(p);
    maybe_free(c);
}

/* Open the key's primary secret; NULL (and a warning) when it cannot be. */
static struct kp_secret *open_secret(struct kp_node *n, const struct kp_key *key)
{
    const struct kp_key_secret *ks = kp_key_primary(key);
    struct kp_secret *s = NULL;
    char why[256];
    if (ks == NULL)
        return NULL;
    int rc = kp_seal_open(n->kek, ks->sealed.p, ks->sealed.n, key->e.id, ks->version, &s, why,
                          sizeof(why));
    if (rc == KP_EPERM && n->prev_kek != NULL)
        rc = kp_seal_open(n->prev_kek, ks->sealed.p, ks->sealed.n, key->e.id, ks->version, &s, why,
                          sizeof(why));
    if (rc != KP_OK)
        kp_warn("canary", "key %s: cannot open its secret: %s", key->e.id, why);
    return rc == KP_OK ? s : NULL;
}

static void probe(struct kp_canary *c, size_t slot, const struct kp_key *key,
                  const struct kp_provider *prov, int64_t now)
{
    struct kp_canary_request req;
    if (kp_canary_request(prov, key, &req) != KP_OK)
        return;
    struct kp_secret *secret = open_secret(c->n, key);
    if (secret == NULL)
        return;
    size_t slen = kp_secret_len(secret);
    struct probe *p = kp_calloc(1, sizeof(*p));
    char auth[1200];
    int pre = snprintf(auth, sizeof(auth), "%s: %s", req.auth_name, req.bearer ? "Bearer " : "");
    if (p == NULL || pre < 0 || (size_t)pre + slen + 1 > sizeof(auth)) {
        kp_free(p);
        kp_secret_free(secret);
        return;
    }
    memcpy(auth + pre, kp_secret_data(secret), slen);
    auth[(size_t)pre + slen] = '\0';
    kp_secret_free(secret);
    const char *hdrs[6] = {auth, "Accept: application/json"};
    size_t nh = 2;
    if (req.body[0])
        hdrs[nh++] = "Content-Type: application/json";
    if (req.anthropic_version)
        hdrs[nh++] = "anthropic-version: 2023-06-01";
    hdrs[nh] = NULL;
    p->c = c;
    p->generation = c->generation;
    p->slot = slot;
    p->started_ms = now;
    p->mono_start_us = kp_now_mono_us();
    snprintf(p->key, sizeof(p->key), "%s", key->e.id);
    snprintf(p->provider, sizeof(p->provider), "%s", prov->e.id);
    int rc =
        kp_call_start(c->n->rt->main_loop, req.method, req.url, hdrs, req.body[0] ? req.body : NULL,
                      strlen(req.body), PROBE_TIMEOUT_MS, answered, p);
    kp_secret_wipe(auth, sizeof(auth));
    if (rc != KP_OK) {
        kp_free(p);
        return;
    }
    c->calls++;
    snprintf(c->inflight[slot], sizeof(c->inflight[slot]), "%s", key->e.id);
}

struct walk {
    struct kp_canary *c;
    const struct kp_view *v;
    int64_t now;
};

static bool in_flight(const struct kp_canary *c, const char *key, size_t *free_slot)
{
    *free_slot = MAX_INFLIGHT;
    for (size_t i = 0; i < MAX_INFLIGHT; i++) {
        if (strcmp(c->inflight[i], key) == 0 && c->inflight[i][0])
            return true;
        if (!c->inflight[i][0] && *free_slot == MAX_INFLIGHT)
            *free_slot = i;
    }
    return false;
}

static int probe_if_due(const struct kp_entity *e, void *arg)
{
    struct walk *w = arg;
    const struct kp_key *key = (const struct kp_key *)e;
    const struct kp_key_health *h = kp_view_key_health(w->v, key->e.id);
    if (!kp_canary_wanted(key, h))
        return 0;
    /* A key never probed is first due an interval after it was created,
     * so a new cluster does not probe everything at once. */
    int64_t last = h != NULL && h->last_canary_ms > 0 ? h->last_canary_ms : key->e.created_ms;
    int64_t due = kp_canary_due_ms(key->e.id, last, w->c->n->cfg->canary_interval_ms);
    size_t slot;
    if (due > w->now || in_flight(w->c, key->e.id, &slot))
        return 0;
    if (slot == MAX_INFLIGHT)
        return 1; /* full: the rest wait for a later tick */
    const struct kp_provider *prov = kp_view_provider(w->v, key->provider);
    if (prov != NULL)
        probe(w->c, slot, key, prov, w->now);
    return 0;
}

static void barrier_done(void *arg, int code, const char *message)
{
    struct kp_canary *c = arg;
    c->barrier = false;
    c->proposing--;
    if (code == KP_OK && c->leader)
        c->ready = true;
    else if (code != KP_OK && !c->closing)
        kp_info("canary", "barrier before probing: %s", message ? message : kp_err_msg(code));
    maybe_free(c);
}

static void on_tick(uv_timer_t *t)
{
    struct kp_canary *c = t->data;
    struct kp_node *n = c->n;
    if (c->closing || n->stopping || n->store == NULL)
        return;
    if (!kp_store_is_leader(n->store)) {
        if (c->leader) {
            c->leader = c->ready = false;
            c->generation++;
            memset(c->inflight, 0, sizeof(c->inflight));
        }
        return;
    }
    if (!c->leader) {
        c->leader = true;
        kp_info("canary", "leading: probing every key every %lld ms (±20%%)",
                (long long)n->cfg->canary_interval_ms);
    }
    if (!c->ready) {
        if (!c->barrier && kp_store_barrier(n->store, barrier_done, c) == KP_OK) {
            c->barrier = true;
            c->proposing++;
        }
        return;
    }
    struct kp_view *v = kp_fsm_view_build((struct kp_fsm *)kp_store_fsm(n->store));
    if (v == NULL)
        return;
    struct walk w = {c, v, kp_now_unix_ms()};
    kp_view_each(v, KP_KIND_KEY, probe_if_due, &w);
    kp_view_release(v);
}

static void timer_closed(uv_handle_t *h)
{
    struct kp_canary *c = h->data;
    c->timer_open = false;
    maybe_free(c);
}

void kp_canary_start(struct kp_node *n)
{
    struct kp_canary *c = kp_calloc(1, sizeof(*c));
    if (c == NULL) {
        kp_error("canary", "out of memory: this node never probes keys");
        return;
    }
    c->n = n;
    uv_timer_init(n->rt->main_loop, &c->timer);
    c->timer.data = c;
    c->timer_open = true;
    uint64_t every = (uint64_t)(n->cfg->canary_interval_ms / 10);
    if (every < 50)
        every = 50;
    if (every > 5000)
        every = 5000;
    uv_timer_start(&c->timer, on_tick, every, every);
    n->canary = c;
}

void kp_canary_stop(struct kp_node *n)
{
    struct kp_canary *c = n->canary;
    if (c == NULL)
        return;
    n->canary = NULL;
    c->closing = true;
    c->generation++;
    uv_close((uv_handle_t *)&c->timer, timer_closed);
}

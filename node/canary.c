/* Canaries led by the Raft leader (docs/health.md): one cheap probe per
 * active key every canary_interval_ms, jittered by ±20%, sent by one of
 * the live routers in turn.
 *
 * A timer ticks ten times per interval. On each tick, once a barrier has
 * made sure this leader applied everything its predecessors committed,
 * every key whose due time (canary_rules.c, from the registry's
 * last_canary_ms) has come goes through three steps:
 *
 *   claim:  set_key_health with last_canary_ms = now and result "pending"
 *           commits first, so that no later leader probes the key again
 *           before its next due time;
 *   probe:  the next live member in turn (raft's recent contact; the
 *           leader itself included) sends it: kp_canary_probe here, POST
 *           /internal/v1/canary elsewhere. The node that sends it meters
 *           it as canary traffic (no tenant);
 *   record: set_key_health with the result, the streak and the status the
 *           rules give (canary_rules.c).
 *
 * A key is "in flight" from its claim until its record applied, so no tick
 * probes it twice. A leader that dies after its claim committed leaves the
 * result "pending": the key is probed again at its next due time, never
 * twice in one interval, and never more than an interval plus a failover
 * late. Losing leadership drops what is in flight (answers of an old
 * generation are metered by whoever sent them but not committed). */
#include <stdio.h>
#include <string.h>

#include "canary.h"
#include "node.h"

enum {
    MAX_INFLIGHT = 32, /* probes between claim and record; more wait for a later tick */
    RELAY_TIMEOUT_MS = 15000,
};

struct kp_canary {
    struct kp_node *n;
    uv_timer_t timer;
    bool timer_open, closing;
    unsigned calls, proposing;
    uint64_t generation; /* bumped when leadership is lost */
    bool leader, ready, barrier;
    uint64_t last_target;             /* the node id the last probe went to */
    char inflight[MAX_INFLIGHT][129]; /* "" when free */
};

struct probe {
    struct kp_canary *c;
    uint64_t generation;
    size_t slot;
    int64_t started_ms;
    uint64_t target;
    bool has_balance; /* the provider's balance endpoint was read */
    kp_nanousd balance;
    char key[129];
};

static void maybe_free(struct kp_canary *c)
{
    if (c->closing && !c->timer_open && c->calls == 0 && c->proposing == 0)
        kp_free(c);
}

static bool current(const struct kp_canary *c, const struct probe *p)
{
    return !c->closing && p->generation == c->generation && kp_store_is_leader(c->n->store);
}

/* The probe is over (recorded, dropped or failed): free its slot. */
static void finish(struct kp_canary *c, struct probe *p)
{
    if (p->generation == c->generation)
        c->inflight[p->slot][0] = '\0';
    kp_free(p);
    maybe_free(c);
}

/* set_key_health for @p: the claim (@outcome NULL: status, streak and
 * error class as they are, result "pending") or the record of @outcome. */
static int propose_health(struct kp_canary *c, struct probe *p,
                          const enum kp_canary_outcome *outcome, const char *cls,
                          kp_store_apply_cb cb)
{
    const struct kp_key_health *old = (const struct kp_key_health *)kp_fsm_get(
        kp_store_fsm(c->n->store), KP_KIND_KEY_HEALTH, p->key);
    int status = old ? old->status : KP_HEALTH_HEALTHY;
    struct kp_key_health h = {0};
    h.e.id = p->key;
    h.last_canary_ms = p->started_ms;
    h.last_error_class = old ? old->last_error_class : NULL;
    h.provider_balance_ms = old ? old->provider_balance_ms : 0;
    h.provider_balance = old ? old->provider_balance : 0;
    if (outcome != NULL && p->has_balance) {
        h.provider_balance_ms = p->started_ms;
        h.provider_balance = p->balance;
    }
    if (outcome == NULL) {
        h.status = (uint8_t)status;
        h.canary_streak = old ? old->canary_streak : 0;
        h.last_canary_result = (char *)"pending";
    } else {
        h.status = (uint8_t)kp_canary_next(status, old ? old->canary_streak : 0, *outcome,
                                           &h.canary_streak);
        /* Out through traffic, back only once the traffic is fine too. */
        if (h.status == KP_HEALTH_HEALTHY &&
            (status == KP_HEALTH_DEGRADED || status == KP_HEALTH_RATE_LIMITED) &&
            kp_alerts_key_troubled(c->n, p->key))
            h.status = (uint8_t)status;
        if (cls[0])
            h.last_error_class = (char *)cls;
        h.last_canary_result = cls[0] ? (char *)cls : (char *)"ok";
        if (h.status != status)
            kp_info("canary", "key %s: %s -> %s after a probe (%s)", p->key,
                    kp_health_status_name(status), kp_health_status_name(h.status),
                    h.last_canary_result);
    }
    int rc = kp_health_commit(c->n, &h, "leader", "canary", cb, p);
    if (rc == KP_OK)
        c->proposing++;
    return rc;
}

static void recorded(void *arg, int code, const struct kp_fsm_result *res)
{
    struct probe *p = arg;
    p->c->proposing--;
    if (code != KP_OK || res->code != KP_OK)
        kp_warn("canary", "key %s: the probe's result did not commit (%s); it stays pending",
                p->key, code != KP_OK ? kp_err_msg(code) : res->message);
    finish(p->c, p);
}

static void got_answer(struct probe *p, enum kp_canary_outcome outcome, const char *cls)
{
    struct kp_canary *c = p->c;
    if (current(c, p) && propose_health(c, p, &outcome, cls, recorded) == KP_OK)
        return;
    finish(c, p);
}

static void local_answered(void *arg, const struct kp_canary_answer *a)
{
    struct probe *p = arg;
    p->c->calls--;
    p->has_balance = a->has_balance;
    p->balance = a->balance;
    got_answer(p, a->outcome, a->error_class);
}

static void probe_here(struct kp_canary *c, struct probe *p)
{
    char errmsg[256];
    if (kp_canary_probe(c->n, p->key, p->started_ms, local_answered, p, errmsg, sizeof(errmsg)) ==
        KP_OK) {
        c->calls++;
        return;
    }
    kp_warn("canary", "key %s: probe not sent: %s", p->key, errmsg);
    finish(c, p);
}

static void relay_answered(void *arg, const struct kp_call_result *r)
{
    struct probe *p = arg;
    struct kp_canary *c = p->c;
    c->calls--;
    enum kp_canary_outcome outcome;
    json_t *v =
        r->status == 200 ? json_loadb((const char *)r->body.data, r->body.len, 0, NULL) : NULL;
    const char *name = json_string_value(json_object_get(v, "outcome"));
    const char *cls = json_string_value(json_object_get(v, "error_class"));
    json_t *bal = json_object_get(v, "balance_nanousd");
    if (json_is_integer(bal)) {
        p->has_balance = true;
        p->balance = json_integer_value(bal);
    }
    if (v != NULL && kp_canary_outcome_parse(name, &outcome) && cls != NULL) {
        /* cls lives in @v: copy what the record needs first. */
        char cls_copy[32];
        snprintf(cls_copy, sizeof(cls_copy), "%s", cls);
        json_decref(v);
        got_answer(p, outcome, cls_copy);
        return;
    }
    json_decref(v);
    /* Not connected: the node never got the request, so nothing was sent
     * to the provider and the leader may probe in its place. */
    if (r->status == 0 && strstr(r->error, "onnect") != NULL &&
        strstr(r->error, "imeout") == NULL && current(c, p)) {
        kp_info("canary", "key %s: node %llu unreachable (%s); probing here", p->key,
                (unsigned long long)p->target, r->error);
        probe_here(c, p);
        return;
    }
    kp_warn("canary", "key %s: node %llu did not run the probe (%ld %s); it stays pending", p->key,
            (unsigned long long)p->target, r->status,
            r->status ? (const char *)r->body.data : r->error);
    finish(c, p);
}

static void probe_at(struct kp_canary *c, struct probe *p, const char *control)
{
    char url[320], auth[160];
    if (kp_node_peer_url(url, sizeof(url), control, "/internal/v1/canary") != KP_OK) {
        probe_here(c, p); /* nothing left this node */
        return;
    }
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", kp_node_out_token(c->n));
    const char *hdrs[] = {auth, "Content-Type: application/json", NULL};
    json_t *body = json_pack("{s:s,s:I}", "key", p->key, "started_ms", (json_int_t)p->started_ms);
    size_t len = 0;
    char *text = body ? kp_json_dumps(body, &len) : NULL;
    json_decref(body);
    int rc = text ? kp_call_start_peer(c->n->rt->main_loop, "POST", url, hdrs, text, len,
                                       RELAY_TIMEOUT_MS, relay_answered, p)
                  : KP_ENOMEM;
    kp_free(text);
    kp_secret_wipe(auth, sizeof(auth));
    if (rc == KP_OK) {
        c->calls++;
        return;
    }
    probe_here(c, p); /* nothing left this node */
}

/* The live member after the last one used, in node id order: raft's voters
 * and standbys the leader heard from recently, and the leader itself. */
static uint64_t next_target(struct kp_canary *c)
{
    struct kp_store_status st;
    uint64_t self = c->n->node_id, first = 0, next = 0;
    if (kp_store_status(c->n->store, &st) != KP_OK)
        return self;
    for (uint32_t i = 0; i < st.nservers; i++) {
        const struct kp_store_server *s = &st.servers[i];
        if (s->role == KP_STORE_SPARE || (!s->recent_contact && s->id != self))
            continue;
        if (first == 0 || s->id < first)
            first = s->id;
        if (s->id > c->last_target && (next == 0 || s->id < next))
            next = s->id;
    }
    kp_store_status_free(&st);
    uint64_t t = next ? next : first ? first : self;
    c->last_target = t;
    return t;
}

static void claimed(void *arg, int code, const struct kp_fsm_result *res)
{
    struct probe *p = arg;
    struct kp_canary *c = p->c;
    c->proposing--;
    if (code != KP_OK || res->code != KP_OK || !current(c, p)) {
        if (code != KP_OK || res->code != KP_OK)
            kp_info("canary", "key %s: the probe's claim did not commit (%s)", p->key,
                    code != KP_OK ? kp_err_msg(code) : res->message);
        finish(c, p);
        return;
    }
    char control[256];
    p->target = next_target(c);
    if (p->target != c->n->node_id &&
        kp_node_member_control(c->n, p->target, control, sizeof(control)))
        probe_at(c, p, control);
    else
        probe_here(c, p);
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
        if (c->inflight[i][0] && strcmp(c->inflight[i], key) == 0)
            return true;
        if (!c->inflight[i][0] && *free_slot == MAX_INFLIGHT)
            *free_slot = i;
    }
    return false;
}

static int claim_if_due(const struct kp_entity *e, void *arg)
{
    struct walk *w = arg;
    struct kp_canary *c = w->c;
    const struct kp_key *key = (const struct kp_key *)e;
    const struct kp_key_health *h = kp_view_key_health(w->v, key->e.id);
    if (!kp_canary_wanted(key, h) || kp_view_provider(w->v, key->provider) == NULL)
        return 0;
    /* A key never probed is first due an interval after it was created,
     * so a new cluster does not probe everything at once. */
    int64_t last = h != NULL && h->last_canary_ms > 0 ? h->last_canary_ms : key->e.created_ms;
    int64_t due = kp_canary_due_ms(key->e.id, last, c->n->cfg->canary_interval_ms);
    size_t slot;
    if (due > w->now || in_flight(c, key->e.id, &slot))
        return 0;
    if (slot == MAX_INFLIGHT)
        return 1; /* full: the rest wait for a later tick */
    struct probe *p = kp_calloc(1, sizeof(*p));
    if (p == NULL)
        return 1;
    *p = (struct probe){.c = c, .generation = c->generation, .slot = slot, .started_ms = w->now};
    snprintf(p->key, sizeof(p->key), "%s", key->e.id);
    if (propose_health(c, p, NULL, "", claimed) != KP_OK) {
        kp_free(p);
        return 1; /* not the leader any more, or out of memory */
    }
    snprintf(c->inflight[slot], sizeof(c->inflight[slot]), "%s", key->e.id);
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
    kp_view_each(v, KP_KIND_KEY, claim_if_due, &w);
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

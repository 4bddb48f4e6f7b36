/* Alerts on the Raft leader: evaluate the rules, record the result in the
 * registry, deliver it to webhooks (docs/alerts.md).
 *
 * Every node runs one timer (alert_interval_ms, 5 s by default). On every
 * node it samples the router's per-key attempt counters into an outcome
 * window, which GET /internal/v1/health reports with the node's spool.
 * On the leader it also:
 *
 *   1. notes which members the leader has heard from (kp_store_status);
 *   2. polls every other member's /internal/v1/health (cluster secret) and
 *      keeps the last answer;
 *   3. evaluates the rules (alert_rules.c) and proposes put_alert and
 *      resolve_alert for what changed, as "system" with role "leader";
 *   4. delivers: for each alert event (open, resolved) of the current
 *      episode that a webhook has no record of, POSTs the body, retries
 *      with exponential backoff, and proposes alert_delivery once it was
 *      answered 2xx (sent) or every attempt failed (dead: a dead letter).
 *
 * Everything a later leader needs is in the registry: which alerts are
 * open, since when, and which deliveries ended. What is only in the
 * leader's memory (reports, contact times, retries in progress) is
 * rebuilt by the next one, whose rules hold rather than resolve while
 * they lack it. Delivery is at least once: a leader that delivered but
 * lost leadership before its record committed leaves the delivery to the
 * next one, which sends it again with the same delivery id.
 *
 * A delivery in memory:
 *
 *   due --send--> in flight --2xx--> recording (sent) --commit--> gone
 *    ^                |
 *    +--backoff-------+--failed, attempts left
 *                     +--failed, none left--> recording (dead) --commit--> gone
 *
 * Leadership lost, or a record that does not commit: the entry is dropped
 * (the next leader finds the event unrecorded and delivers it). Webhook
 * calls run on libuv's threadpool (forward.c), which raft's disk work
 * shares, so at most MAX_SENDING are in flight, each bounded by
 * SEND_TIMEOUT_MS. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "alerts.h"
#include "canary.h"
#include "node.h"

enum {
    MAX_SENDING = 4,
    SEND_TIMEOUT_MS = 5000,
    POLL_TIMEOUT_MS = 2000,
    MAX_DELIVERIES = 1024, /* in memory; more wait for a later tick */
    MAX_STEPS = 64,        /* proposals per evaluation */
    MAX_MEMBERS = 64,
};

struct member_state {
    uint64_t node_id;
    int64_t last_contact_ms; /* wall clock when last heard from (or leadership began) */
    bool seen;               /* in the Raft configuration as voter or standby */
    bool polling;
    int64_t report_ms; /* when the report arrived, 0: none */
    struct kp_alert_report report;
};

struct delivery {
    char alert[129];
    int64_t started_ms;
    char webhook[129];
    uint8_t event;
    unsigned attempts;
    int64_t next_ms;
    bool sending;
    bool recording;
    char error[64];
};

struct kp_alerts {
    struct kp_node *n;
    uv_timer_t timer;
    bool timer_open, closing;
    unsigned calls; /* node-to-node calls in flight (polls and deliveries) */
    unsigned sending;
    unsigned proposing;  /* put/resolve proposals not yet applied */
    uint64_t generation; /* bumped when leadership is lost */
    bool leader;
    int64_t leader_since_ms;
    struct kp_outcome_window *window;
    /* The last evaluation's per-key traffic, summed over the members
     * (classify_keys), sorted by key; cleared when leadership is lost. */
    struct kp_alert_key_stats *key_stats;
    size_t nkey_stats;
    struct member_state members[MAX_MEMBERS];
    size_t nmembers;
    struct delivery *dl;
    size_t ndl;
    struct kp_alert_plan plan;
    struct kp_metric_family *open_gauge, *deliveries;
    /* key_balance: the meter's last answer for every key with a balance
     * (this node's store, queried on the threadpool, one batch at a time). */
    struct kp_alert_key_spend *spends;
    size_t nspends;
    int64_t spends_ms; /* when asked; 0: never */
    bool spending;
};

/* A call's completion context: which generation sent it. */
struct call_ctx {
    struct kp_alerts *a;
    uint64_t generation;
    uint64_t node_id; /* polls */
    size_t slot;      /* deliveries: index when sent (re-found by key) */
    char alert[129];
    int64_t started_ms;
    char webhook[129];
    uint8_t event;
};

static void maybe_free(struct kp_alerts *a)
{
    if (!a->closing || a->timer_open || a->calls > 0 || a->proposing > 0)
        return;
    for (size_t i = 0; i < a->nmembers; i++)
        kp_alert_report_free(&a->members[i].report);
    kp_alert_plan_free(&a->plan);
    kp_free(a->spends);
    kp_free(a->dl);
    kp_free(a->window);
    kp_free(a->key_stats);
    kp_free(a);
}

static void count_delivery(struct kp_alerts *a, const char *result)
{
    kp_metric_family_add(a->deliveries, (const char *[]){result}, 1);
}

/* --- proposals ------------------------------------------------------------------------ */

static int propose(struct kp_alerts *a, enum kp_op op, void *body, kp_store_apply_cb cb, void *arg)
{
    struct kp_command cmd = {
        .v = KP_COMMAND_VERSION,
        .op = op,
        .ts = kp_now_unix_ms(),
        .audit = {.actor = (char *)"system", .role = (char *)"leader", .source = (char *)"alerts"},
        .body.any = body};
    char errmsg[256];
    struct kp_buf buf;
    kp_buf_init(&buf);
    int rc = kp_command_encode(&cmd, &buf, errmsg, sizeof(errmsg));
    if (rc == KP_OK)
        rc = kp_store_propose(a->n->store, buf.data, buf.len, cb, arg);
    kp_buf_free(&buf);
    return rc;
}

static void step_applied(void *arg, int code, const struct kp_fsm_result *res)
{
    struct kp_alerts *a = arg;
    a->proposing--;
    if (code != KP_OK)
        kp_warn("alerts", "an alert change did not commit (%s); the next evaluation retries",
                kp_err_msg(code));
    else if (res->code != KP_OK)
        kp_warn("alerts", "an alert change was refused: %s", res->message);
    maybe_free(a);
}

static void propose_step(struct kp_alerts *a, const struct kp_alert_step *s)
{
    int rc;
    if (s->resolve) {
        struct kp_cmd_resolve_alert body = {.id = s->alert->e.id,
                                            .last_value = s->alert->last_value};
        rc = propose(a, KP_OP_RESOLVE_ALERT, &body, step_applied, a);
        if (rc == KP_OK)
            kp_info("alerts", "resolved %s: %s", s->alert->e.id, s->alert->subject);
    } else {
        const struct kp_alert_want *w = s->want;
        struct kp_alert body = {.e.id = (char *)w->id,
                                .severity = w->severity,
                                .rule = (char *)kp_alert_rule_name(w->rule),
                                .subject = (char *)w->subject,
                                .message = (char *)w->message,
                                .action = (char *)w->action,
                                .last_value = w->last_value};
        rc = propose(a, KP_OP_PUT_ALERT, &body, step_applied, a);
        if (rc == KP_OK)
            kp_info("alerts", "%s %s: %s", kp_alert_severity_name(w->severity), w->id, w->message);
    }
    if (rc == KP_OK)
        a->proposing++;
}

/* --- members: contact and reports ---------------------------------------------------- */

static struct member_state *member(struct kp_alerts *a, uint64_t node_id, bool add)
{
    for (size_t i = 0; i < a->nmembers; i++) {
        if (a->members[i].node_id == node_id)
            return &a->members[i];
    }
    if (!add || a->nmembers == MAX_MEMBERS)
        return NULL;
    struct member_state *m = &a->members[a->nmembers++];
    memset(m, 0, sizeof(*m));
    m->node_id = node_id;
    return m;
}

static void note_contact(struct kp_alerts *a, int64_t now)
{
    struct kp_store_status st;
    for (size_t i = 0; i < a->nmembers; i++)
        a->members[i].seen = false;
    if (kp_store_status(a->n->store, &st) != KP_OK)
        return;
    for (uint32_t i = 0; i < st.nservers; i++) {
        const struct kp_store_server *s = &st.servers[i];
        if (s->role == KP_STORE_SPARE)
            continue;
        struct member_state *m = member(a, s->id, true);
        if (m == NULL)
            continue;
        if (m->last_contact_ms == 0)
            m->last_contact_ms = a->leader_since_ms; /* first look: from when we lead */
        if (s->recent_contact || s->id == a->n->node_id)
            m->last_contact_ms = now;
        m->seen = true;
    }
    kp_store_status_free(&st);
}

static void poll_done(void *arg, const struct kp_call_result *r)
{
    struct call_ctx *c = arg;
    struct kp_alerts *a = c->a;
    a->calls--;
    struct member_state *m = member(a, c->node_id, false);
    if (m != NULL && c->generation == a->generation)
        m->polling = false;
    if (!a->closing && c->generation == a->generation && m != NULL && r->status == 200) {
        json_t *v = json_loadb(r->body.data, r->body.len, 0, NULL);
        struct kp_alert_report rep;
        if (v != NULL && kp_alert_report_from_json(v, &rep) == KP_OK) {
            kp_alert_report_free(&m->report);
            m->report = rep;
            m->report_ms = kp_now_unix_ms();
        }
        json_decref(v);
    }
    kp_free(c);
    maybe_free(a);
}

/* This node's report, as GET /internal/v1/health answers it. */
static json_t *own_report(struct kp_alerts *a, int64_t now);

static void poll_members(struct kp_alerts *a, int64_t now)
{
    for (size_t i = 0; i < a->nmembers; i++) {
        struct member_state *m = &a->members[i];
        if (!m->seen || m->polling)
            continue;
        if (m->node_id == a->n->node_id) {
            json_t *j = own_report(a, now);
            struct kp_alert_report rep;
            if (j != NULL && kp_alert_report_from_json(j, &rep) == KP_OK) {
                kp_alert_report_free(&m->report);
                m->report = rep;
                m->report_ms = now;
            }
            json_decref(j);
            continue;
        }
        char control[256], url[400], auth[128];
        if (!kp_node_member_control(a->n, m->node_id, control, sizeof(control)))
            continue;
        struct call_ctx *c = kp_calloc(1, sizeof(*c));
        if (c == NULL)
            return;
        c->a = a;
        c->generation = a->generation;
        c->node_id = m->node_id;
        kp_node_peer_url(url, sizeof(url), control, "/internal/v1/health");
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", kp_node_out_token(a->n));
        const char *hdrs[] = {auth, NULL};
        int rc = kp_call_start_peer(a->n->rt->main_loop, "GET", url, hdrs, NULL, 0, POLL_TIMEOUT_MS,
                                    poll_done, c);
        kp_secret_wipe(auth, sizeof(auth));
        if (rc != KP_OK) {
            kp_free(c);
            return;
        }
        a->calls++;
        m->polling = true;
    }
}

/* What the rules see of each registry member. */
struct members_in {
    struct kp_alerts *a;
    struct kp_alert_member *out;
    size_t n, max;
    int64_t now, stale_ms;
};

static int member_in(const struct kp_entity *e, void *arg)
{
    struct members_in *in = arg;
    const struct kp_member *rm = (const struct kp_member *)e;
    if (in->n == in->max)
        return 1;
    struct member_state *m = member(in->a, rm->node_id, false);
    struct kp_alert_member *o = &in->out[in->n++];
    o->name = rm->e.id;
    o->node_id = rm->node_id;
    o->out_of_contact_ms = -1;
    o->report = NULL;
    if (m != NULL && m->seen)
        o->out_of_contact_ms = in->now - m->last_contact_ms > 0 ? in->now - m->last_contact_ms : 0;
    if (m != NULL && m->report_ms != 0 && in->now - m->report_ms <= in->stale_ms)
        o->report = &m->report;
    return 0;
}

/* --- balances: what the meter says the keys with a balance cost ------------------------- */

/* At most this many balances are checked per evaluation (the rest hold). */
enum { MAX_SPENDS = 1024 };

struct spend_work {
    uv_work_t work;
    struct kp_alerts *a;
    struct kp_meter_store *store;
    uint64_t generation;
    int64_t now;
    struct kp_alert_key_spend *v;
    size_t n;
    bool failed;
};

static int collect_balance(const struct kp_entity *e, void *arg)
{
    struct spend_work *u = arg;
    const struct kp_key_balance *b = (const struct kp_key_balance *)e;
    if (u->n == MAX_SPENDS)
        return 1;
    struct kp_alert_key_spend *s = &u->v[u->n++];
    snprintf(s->key, sizeof(s->key), "%s", b->e.id);
    s->since_ms = b->since_ms;
    return 0;
}

static void spend_query(uv_work_t *w)
{
    struct spend_work *u = w->data;
    char errmsg[256];
    for (size_t i = 0; i < u->n && !u->failed; i++) {
        struct kp_alert_key_spend *s = &u->v[i];
        if (kp_balance_query(u->store, s->key, s->since_ms, u->now, &s->spend, errmsg,
                             sizeof(errmsg)) != KP_OK) {
            kp_warn("alerts", "key_balance: the meter query for key %s failed: %s", s->key, errmsg);
            u->failed = true;
        }
    }
}

static void spend_done(uv_work_t *w, int status)
{
    struct spend_work *u = w->data;
    struct kp_alerts *a = u->a;
    (void)status;
    a->spending = false;
    a->calls--;
    if (!u->failed && u->generation == a->generation && !a->closing) {
        kp_free(a->spends);
        a->spends = u->v;
        a->nspends = u->n;
        a->spends_ms = u->now;
        u->v = NULL;
    }
    kp_free(u->v);
    kp_free(u);
    maybe_free(a);
}

/* Ask this node's meter store what each key with a balance cost, unless
 * a batch is still running. A leader that is no meter has no answer: the
 * key_balance rule holds there (docs/balances.md). */
static void query_spends(struct kp_alerts *a, const struct kp_view *v, int64_t now)
{
    size_t count = kp_view_count(v, KP_KIND_KEY_BALANCE);
    struct kp_meter_store *store = count > 0 ? kp_metering_store(a->n) : NULL;
    if (a->spending || store == NULL)
        return;
    struct spend_work *u = kp_calloc(1, sizeof(*u));
    size_t cap = count < MAX_SPENDS ? count : MAX_SPENDS;
    if (u == NULL || (u->v = kp_calloc(cap, sizeof(*u->v))) == NULL) {
        kp_free(u);
        return;
    }
    u->a = a;
    u->store = store;
    u->generation = a->generation;
    u->now = now;
    kp_view_each(v, KP_KIND_KEY_BALANCE, collect_balance, u);
    u->work.data = u;
    if (uv_queue_work(a->n->rt->main_loop, &u->work, spend_query, spend_done) != 0) {
        kp_free(u->v);
        kp_free(u);
        return;
    }
    a->spending = true;
    a->calls++;
}

/* --- evaluation ------------------------------------------------------------------------ */

/* Passive classification (docs/health.md): the members' traffic over the
 * last minute, summed, moves a healthy key to rate_limited or degraded
 * (canary_rules.c). The sums are kept for the canaries, which bring a key
 * back only once its traffic is no longer troubled. */
static void classify_keys(struct kp_alerts *a, const struct kp_view *v,
                          const struct kp_alert_member *members, size_t n, int64_t now)
{
    struct kp_alert_key_stats *stats;
    size_t ns;
    bool complete;
    if (kp_alert_sum_key_stats(members, n, &stats, &ns, &complete) != KP_OK)
        return;
    kp_free(a->key_stats);
    a->key_stats = stats;
    a->nkey_stats = ns;
    for (size_t i = 0; i < ns; i++) {
        const struct kp_key_health *h = kp_view_key_health(v, stats[i].key);
        int status = h != NULL ? h->status : KP_HEALTH_HEALTHY;
        /* When it last came back: a first record (history of one) is no
         * return, so a new key can be judged at once. */
        int64_t back = h != NULL && h->nhistory >= 2 ? now - h->last_change_ms : INT64_MAX;
        const char *cls;
        int next = kp_passive_next(status, &stats[i], back, &cls);
        if (next == status || kp_view_key(v, stats[i].key) == NULL)
            continue;
        kp_info("health",
                "key %s: %s -> %s from traffic (last minute: %llu attempts, %llu failed, %llu "
                "rate limited)",
                stats[i].key, kp_health_status_name(status), kp_health_status_name(next),
                (unsigned long long)stats[i].attempts_1m, (unsigned long long)stats[i].errors_1m,
                (unsigned long long)stats[i].rate_limited_1m);
        kp_health_propose(a->n, stats[i].key, next, cls, "traffic", NULL, NULL);
    }
}

bool kp_alerts_key_troubled(struct kp_node *n, const char *key)
{
    const struct kp_alerts *a = n->alerts;
    const char *cls;
    for (size_t i = 0; a != NULL && i < a->nkey_stats; i++)
        if (strcmp(a->key_stats[i].key, key) == 0)
            return kp_passive_troubled(&a->key_stats[i], &cls);
    return false;
}

static void evaluate(struct kp_alerts *a, const struct kp_view *v, int64_t now)
{
    if (a->proposing > 0)
        return; /* the last changes are not applied yet: they would be proposed again */
    struct kp_alert_member members[MAX_MEMBERS];
    int64_t interval = a->n->cfg->alert_interval_ms;
    struct members_in in = {a, members, 0, MAX_MEMBERS, now, 3 * interval + 5000};
    kp_view_each(v, KP_KIND_MEMBER, member_in, &in);
    /* The meter's answer counts while it is as fresh as a member's report. */
    struct kp_alert_spends spends = {a->spends, a->nspends};
    bool fresh = a->spends_ms != 0 && now - a->spends_ms <= in.stale_ms;
    if (kp_alert_rules_eval(v, now, members, in.n, fresh ? &spends : NULL, &a->plan) != KP_OK) {
        kp_warn("alerts", "evaluating the alert rules ran out of memory; next time");
        return;
    }
    struct kp_alert_step steps[MAX_STEPS];
    size_t n = kp_alert_reconcile(v, &a->plan, steps, MAX_STEPS);
    for (size_t i = 0; i < n; i++)
        propose_step(a, &steps[i]);
    classify_keys(a, v, members, in.n, now);
}

/* --- deliveries -------------------------------------------------------------------------- */

static struct delivery *find_delivery(struct kp_alerts *a, const char *alert, int64_t started,
                                      const char *webhook, int event)
{
    for (size_t i = 0; i < a->ndl; i++) {
        struct delivery *d = &a->dl[i];
        if (d->started_ms == started && d->event == event && strcmp(d->alert, alert) == 0 &&
            strcmp(d->webhook, webhook) == 0)
            return d;
    }
    return NULL;
}

static void drop_delivery(struct kp_alerts *a, struct delivery *d)
{
    size_t i = (size_t)(d - a->dl);
    a->dl[i] = a->dl[--a->ndl];
}

static const struct kp_alert_delivery *record_of(const struct kp_alert *al, const char *webhook,
                                                 int event)
{
    for (uint32_t i = 0; i < al->ndeliveries; i++) {
        if (al->deliveries[i].event == event && strcmp(al->deliveries[i].webhook, webhook) == 0)
            return &al->deliveries[i];
    }
    return NULL;
}

/* A short, credential-free reason for a failed attempt. */
static void failure_reason(const struct kp_call_result *r, char *out, size_t len)
{
    const char *e = r->error;
    if (r->status != 0)
        snprintf(out, len, "HTTP %ld", r->status);
    else if (strstr(e, "timed out") != NULL || strstr(e, "Timeout") != NULL)
        snprintf(out, len, "timed out");
    else if (strstr(e, "resolve") != NULL)
        snprintf(out, len, "could not resolve the host");
    else if (strstr(e, "onnect") != NULL)
        snprintf(out, len, "could not connect");
    else if (strstr(e, "SSL") != NULL || strstr(e, "TLS") != NULL || strstr(e, "certif") != NULL)
        snprintf(out, len, "TLS error");
    else
        snprintf(out, len, "transfer failed");
}

static void recorded(void *arg, int code, const struct kp_fsm_result *res)
{
    struct call_ctx *c = arg;
    struct kp_alerts *a = c->a;
    a->proposing--;
    if (code != KP_OK || res->code != KP_OK)
        kp_warn("alerts", "recording a delivery of alert %s to webhook %s did not %s: %s", c->alert,
                c->webhook, code != KP_OK ? "commit" : "apply",
                code != KP_OK ? kp_err_msg(code) : res->message);
    if (!a->closing) {
        /* Committed: the registry has it, the entry goes. Not: dropped, so
         * that the event is delivered again (at least once). */
        struct delivery *d = find_delivery(a, c->alert, c->started_ms, c->webhook, c->event);
        if (d != NULL)
            drop_delivery(a, d);
    }
    kp_free(c);
    maybe_free(a);
}

static void record(struct kp_alerts *a, struct delivery *d, int state)
{
    struct call_ctx *c = kp_calloc(1, sizeof(*c));
    if (c == NULL) {
        drop_delivery(a, d);
        return;
    }
    c->a = a;
    snprintf(c->alert, sizeof(c->alert), "%s", d->alert);
    snprintf(c->webhook, sizeof(c->webhook), "%s", d->webhook);
    c->started_ms = d->started_ms;
    c->event = d->event;
    struct kp_cmd_alert_delivery body = {.id = d->alert,
                                         .started_ms = d->started_ms,
                                         .webhook = d->webhook,
                                         .event = d->event,
                                         .state = (uint8_t)state,
                                         .attempts = d->attempts,
                                         .error = d->error[0] ? d->error : NULL};
    if (propose(a, KP_OP_ALERT_DELIVERY, &body, recorded, c) != KP_OK) {
        kp_free(c);
        drop_delivery(a, d);
        return;
    }
    a->proposing++;
    d->recording = true;
}

static void sent(void *arg, const struct kp_call_result *r)
{
    struct call_ctx *c = arg;
    struct kp_alerts *a = c->a;
    a->calls--;
    a->sending--;
    struct delivery *d = NULL;
    if (!a->closing && c->generation == a->generation && kp_store_is_leader(a->n->store))
        d = find_delivery(a, c->alert, c->started_ms, c->webhook, c->event);
    if (d != NULL) {
        d->sending = false;
        d->attempts++;
        if (r->status >= 200 && r->status <= 299) {
            count_delivery(a, "sent");
            d->error[0] = '\0';
            record(a, d, KP_DELIVERY_SENT);
        } else {
            const struct kp_webhook *wh = (const struct kp_webhook *)kp_fsm_get(
                kp_store_fsm(a->n->store), KP_KIND_WEBHOOK, d->webhook);
            struct kp_webhook_target t;
            char why[200];
            failure_reason(r, d->error, sizeof(d->error));
            count_delivery(a, "failed");
            if (wh == NULL ||
                kp_webhook_check(wh->kind, &wh->params, &t, why, sizeof(why)) != KP_OK) {
                drop_delivery(a, d); /* the webhook went away or changed */
            } else if (d->attempts >= t.max_attempts) {
                kp_warn("alerts",
                        "webhook %s: %s of alert %s failed %u times (last: %s); dead-lettered",
                        d->webhook, kp_alert_event_name(d->event), d->alert, d->attempts, d->error);
                count_delivery(a, "dead");
                record(a, d, KP_DELIVERY_DEAD);
            } else {
                d->next_ms = kp_now_unix_ms() + kp_webhook_backoff(&t, d->attempts);
            }
        }
    }
    kp_free(c);
    maybe_free(a);
}

static void send_one(struct kp_alerts *a, struct delivery *d, const struct kp_alert *al,
                     const struct kp_webhook_target *t)
{
    size_t len = 0;
    char *body = kp_webhook_body(t->kind, al, d->event, &len);
    struct call_ctx *c = body != NULL ? kp_calloc(1, sizeof(*c)) : NULL;
    if (c == NULL) {
        kp_free(body);
        return;
    }
    char id[300], h_event[64], h_id[340], h_alert[160], h_sig[120] = "", h_agent[80];
    kp_webhook_delivery_id(al, d->event, id, sizeof(id));
    snprintf(h_event, sizeof(h_event), "X-Keyplane-Event: %s", kp_alert_event_name(d->event));
    snprintf(h_id, sizeof(h_id), "X-Keyplane-Delivery: %s", id);
    snprintf(h_alert, sizeof(h_alert), "X-Keyplane-Alert: %s", al->e.id);
    snprintf(h_agent, sizeof(h_agent), "User-Agent: keyplane/%s", kp_version());
    const char *hdrs[8] = {"Content-Type: application/json", h_event, h_id, h_alert, h_agent};
    size_t nh = 5;
    char sig[72];
    if (t->secret != NULL && kp_webhook_signature(t->secret, body, len, sig) == KP_OK) {
        snprintf(h_sig, sizeof(h_sig), "X-Keyplane-Signature: %s", sig);
        hdrs[nh++] = h_sig;
    }
    hdrs[nh] = NULL;
    c->a = a;
    c->generation = a->generation;
    snprintf(c->alert, sizeof(c->alert), "%s", d->alert);
    snprintf(c->webhook, sizeof(c->webhook), "%s", d->webhook);
    c->started_ms = d->started_ms;
    c->event = d->event;
    int rc = kp_call_start(a->n->rt->main_loop, "POST", t->url, hdrs, body, len, SEND_TIMEOUT_MS,
                           sent, c);
    kp_free(body);
    if (rc != KP_OK) {
        kp_free(c);
        return;
    }
    a->calls++;
    a->sending++;
    d->sending = true;
}

struct deliver_walk {
    struct kp_alerts *a;
    const struct kp_view *v;
    int64_t now;
    const struct kp_webhook **hooks;
    struct kp_webhook_target *targets;
    size_t nhooks;
};

/* Whether @event of @al is due for webhook @wh: not recorded, happened
 * after the webhook was made (a new webhook gets no history), and, for a
 * resolve, its open was recorded or was never due. */
static bool due(const struct kp_alert *al, const struct kp_webhook *wh, int event)
{
    int64_t at = event == KP_ALERT_EVENT_OPEN ? al->started_ms : al->resolved_ms;
    if (at == 0 || at < wh->e.created_ms || record_of(al, wh->e.id, event) != NULL)
        return false;
    if (event == KP_ALERT_EVENT_RESOLVED && al->started_ms >= wh->e.created_ms &&
        record_of(al, wh->e.id, KP_ALERT_EVENT_OPEN) == NULL)
        return false;
    return true;
}

static int deliver_alert(const struct kp_entity *e, void *arg)
{
    struct deliver_walk *w = arg;
    struct kp_alerts *a = w->a;
    const struct kp_alert *al = (const struct kp_alert *)e;
    for (size_t h = 0; h < w->nhooks; h++) {
        for (int ev = KP_ALERT_EVENT_OPEN; ev <= KP_ALERT_EVENT_RESOLVED; ev++) {
            if (!due(al, w->hooks[h], ev))
                continue;
            struct delivery *d = find_delivery(a, al->e.id, al->started_ms, w->hooks[h]->e.id, ev);
            if (d == NULL) {
                if (a->ndl == MAX_DELIVERIES)
                    return 0;
                d = &a->dl[a->ndl++];
                memset(d, 0, sizeof(*d));
                snprintf(d->alert, sizeof(d->alert), "%s", al->e.id);
                snprintf(d->webhook, sizeof(d->webhook), "%s", w->hooks[h]->e.id);
                d->started_ms = al->started_ms;
                d->event = (uint8_t)ev;
                d->next_ms = w->now;
            }
            if (d->sending || d->recording || d->next_ms > w->now || a->sending >= MAX_SENDING)
                continue;
            send_one(a, d, al, &w->targets[h]);
        }
    }
    return 0;
}

struct hooks {
    const struct kp_webhook **v;
    struct kp_webhook_target *t;
    size_t n, cap;
};

static int collect_hook(const struct kp_entity *e, void *arg)
{
    struct hooks *h = arg;
    const struct kp_webhook *wh = (const struct kp_webhook *)e;
    char why[200];
    if (h->n < h->cap &&
        kp_webhook_check(wh->kind, &wh->params, &h->t[h->n], why, sizeof(why)) == KP_OK)
        h->v[h->n++] = wh;
    return 0;
}

/* Forget entries whose event is recorded, or whose episode is over. */
static void gc_deliveries(struct kp_alerts *a, const struct kp_view *v)
{
    for (size_t i = 0; i < a->ndl;) {
        struct delivery *d = &a->dl[i];
        const struct kp_alert *al =
            (const struct kp_alert *)kp_view_get(v, KP_KIND_ALERT, d->alert);
        bool stale = al == NULL || al->started_ms != d->started_ms ||
                     record_of(al, d->webhook, d->event) != NULL ||
                     kp_view_get(v, KP_KIND_WEBHOOK, d->webhook) == NULL;
        if (stale && !d->sending && !d->recording)
            drop_delivery(a, d);
        else
            i++;
    }
}

static void deliver(struct kp_alerts *a, const struct kp_view *v, int64_t now)
{
    if (a->dl == NULL && (a->dl = kp_calloc(MAX_DELIVERIES, sizeof(*a->dl))) == NULL)
        return;
    gc_deliveries(a, v);
    size_t nh = kp_view_count(v, KP_KIND_WEBHOOK);
    if (nh == 0)
        return;
    struct hooks h = {kp_malloc(nh * sizeof(*h.v)), kp_malloc(nh * sizeof(*h.t)), 0, nh};
    if (h.v != NULL && h.t != NULL) {
        kp_view_each(v, KP_KIND_WEBHOOK, collect_hook, &h);
        struct deliver_walk w = {a, v, now, h.v, h.t, h.n};
        kp_view_each(v, KP_KIND_ALERT, deliver_alert, &w);
    }
    kp_free(h.v);
    kp_free(h.t);
}

/* --- the node's own side: outcome window, report, gauges ------------------------------- */

static void add_series(void *arg, const char *const values[], int64_t value)
{
    /* keyplane_router_attempts_total{provider, key, outcome} */
    if (value > 0)
        kp_outcome_window_add(arg, values[1], values[2], (uint64_t)value);
}

static void sample(struct kp_alerts *a, int64_t now)
{
    kp_outcome_window_begin(a->window);
    kp_metric_family_each("keyplane_router_attempts_total", add_series, a->window);
    kp_outcome_window_sample(a->window, now);
}

static json_t *own_report(struct kp_alerts *a, int64_t now)
{
    struct kp_metering_health mh;
    sample(a, now);
    kp_metering_health(a->n, &mh);
    json_t *keys = json_array();
    for (unsigned k = 0; keys != NULL && k < a->window->nkeys; k++) {
        struct kp_outcome_counts c5 = kp_outcome_window_span(a->window, k, now, 300000);
        struct kp_outcome_counts c1 = kp_outcome_window_span(a->window, k, now, 60000);
        if (c5.attempts == 0 && c1.rate_limited == 0)
            continue;
        json_array_append_new(
            keys, json_pack("{s:s,s:I,s:I,s:I,s:I,s:I}", "key", a->window->keys[k], "attempts_5m",
                            (json_int_t)c5.attempts, "errors_5m", (json_int_t)c5.errors,
                            "rate_limited_1m", (json_int_t)c1.rate_limited, "attempts_1m",
                            (json_int_t)c1.attempts, "errors_1m", (json_int_t)c1.errors));
    }
    if (keys == NULL)
        return NULL;
    return json_pack("{s:s,s:I,s:I,s:I,s:I,s:o}", "node", a->n->cfg->node_name, "spool_bytes",
                     (json_int_t)mh.spool_bytes, "spool_cap_bytes", (json_int_t)mh.spool_cap_bytes,
                     "spool_segments_waiting", (json_int_t)mh.spool_waiting, "oldest_unshipped_ms",
                     (json_int_t)mh.oldest_unshipped_ms, "keys", keys);
}

void kp_alerts_report(struct kp_node *n, struct kp_http_exchange *ex, const char *rid)
{
    json_t *v = n->alerts != NULL ? own_report(n->alerts, kp_now_unix_ms()) : NULL;
    if (v == NULL) {
        kp_admin_error(ex, 503, rid, "unavailable", "not_ready", NULL,
                       "this node's alert state is not available; retry shortly");
        return;
    }
    kp_node_respond_json(ex, 200, rid, v);
}

struct open_counts {
    int64_t n[3];
};

static int count_open(const struct kp_entity *e, void *arg)
{
    struct open_counts *c = arg;
    const struct kp_alert *al = (const struct kp_alert *)e;
    if (al->resolved_ms == 0 && al->severity < 3)
        c->n[al->severity]++;
    return 0;
}

static void set_gauges(struct kp_alerts *a)
{
    struct open_counts c = {{0, 0, 0}};
    struct kp_view *v = kp_view_acquire(&a->n->views);
    if (v == NULL)
        return;
    kp_view_each(v, KP_KIND_ALERT, count_open, &c);
    kp_view_release(v);
    for (int s = 0; s < 3; s++)
        kp_metric_family_set(a->open_gauge, (const char *[]){kp_alert_severity_name(s)}, c.n[s]);
}

/* --- the timer ------------------------------------------------------------------------- */

static void lost_leadership(struct kp_alerts *a)
{
    a->leader = false;
    a->generation++;
    for (size_t i = 0; i < a->nmembers; i++)
        kp_alert_report_free(&a->members[i].report);
    a->nmembers = 0;
    a->ndl = 0; /* answers of this generation are ignored */
    a->nspends = 0;
    a->spends_ms = 0;
    kp_free(a->key_stats);
    a->key_stats = NULL;
    a->nkey_stats = 0;
}

static void on_tick(uv_timer_t *t)
{
    struct kp_alerts *a = t->data;
    struct kp_node *n = a->n;
    int64_t now = kp_now_unix_ms();
    if (a->closing || n->stopping || n->store == NULL)
        return;
    sample(a, now);
    set_gauges(a);
    if (!kp_store_is_leader(n->store)) {
        if (a->leader)
            lost_leadership(a);
        return;
    }
    if (!a->leader) {
        a->leader = true;
        a->leader_since_ms = now;
        kp_info("alerts", "leading: evaluating alert rules every %" PRId64 " ms",
                n->cfg->alert_interval_ms);
    }
    /* The state machine as applied now (the published view may be one
     * batch behind; building a view only takes references). */
    struct kp_view *v = kp_fsm_view_build((struct kp_fsm *)kp_store_fsm(n->store));
    if (v == NULL)
        return;
    note_contact(a, now);
    poll_members(a, now);
    query_spends(a, v, now);
    evaluate(a, v, now);
    deliver(a, v, now);
    kp_view_release(v);
}

static void timer_closed(uv_handle_t *h)
{
    struct kp_alerts *a = h->data;
    a->timer_open = false;
    maybe_free(a);
}

void kp_alerts_start(struct kp_node *n)
{
    struct kp_alerts *a = kp_calloc(1, sizeof(*a));
    if (a != NULL && (a->window = kp_calloc(1, sizeof(*a->window))) == NULL) {
        kp_free(a);
        a = NULL;
    }
    if (a == NULL) {
        kp_error("alerts", "out of memory: no alerts on this node");
        return;
    }
    a->n = n;
    a->open_gauge = kp_metric_family_gauge("keyplane_alerts_open",
                                           "Alerts open now, by severity (every node shows the "
                                           "registry's; use max across nodes).",
                                           1, (const char *[]){"severity"}, 8);
    a->deliveries = kp_metric_family_counter(
        "keyplane_alert_deliveries_total",
        "Webhook delivery attempts by this node as leader: sent, failed (an attempt), dead "
        "(given up: a dead letter).",
        1, (const char *[]){"result"}, 8);
    uv_timer_init(n->rt->main_loop, &a->timer);
    a->timer.data = a;
    a->timer_open = true;
    uint64_t every = (uint64_t)n->cfg->alert_interval_ms;
    uv_timer_start(&a->timer, on_tick, every, every);
    n->alerts = a;
}

void kp_alerts_stop(struct kp_node *n)
{
    struct kp_alerts *a = n->alerts;
    if (a == NULL)
        return;
    n->alerts = NULL;
    a->closing = true;
    uv_close((uv_handle_t *)&a->timer, timer_closed);
}

/* Alerts in the state machine: put_alert, resolve_alert, ack_alert and
 * alert_delivery (docs/alerts.md, docs/registry.md).
 *
 * The Raft leader's evaluator (node/alerts.c) decides what is wrong; this
 * file only keeps the record, so that a new leader carries on where the
 * old one stopped: which alerts are open, since when, who acknowledged
 * them, and which webhooks were told (or given up on). An alert's id is its
 * deduplication key, and one key has one episode at a time:
 *
 *   (none) --put_alert--> open --resolve_alert--> resolved
 *                          |  ^                       |
 *                 put_alert (update:                  | put_alert (a new episode:
 *                 texts, severity, value)             |  started_ms moves, ack and
 *                                                     v  deliveries cleared)
 *                                                   open
 *
 * ack_alert may come in either state. alert_delivery records how the
 * delivery of one event (open or resolved) of the current episode to one
 * webhook ended: sent, or dead after every retry (a dead letter); a record
 * naming an older episode is refused, so a slow leader cannot mark the new
 * episode delivered.
 *
 * The registry stays bounded whatever the rules find: at most
 * KP_ALERTS_OPEN_MAX open alerts (a new one beyond is refused), and at most
 * KP_ALERTS_RESOLVED_MAX resolved ones: a resolve beyond that drops the
 * oldest resolved alerts, by resolved_ms then id, in the same apply, so
 * every replica drops the same ones. */
#include "raftstore/internal.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void kp_alert_id(char out[129], const char *fmt, ...)
{
    char full[600];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(full, sizeof(full), fmt, ap);
    va_end(ap);
    if (n >= 0 && n <= 128) {
        memcpy(out, full, (size_t)n + 1);
        return;
    }
    uint64_t h = 14695981039346656037ull;
    for (const char *p = full; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    snprintf(out, 129, "%.110s~%016" PRIx64, full, h);
}

static const struct kp_alert *alert_get(const struct kp_apply *a, const char *id)
{
    return (const struct kp_alert *)kp_store__get(a->st, KP_KIND_ALERT, id);
}

static int check_expect(struct kp_apply *a, const char *id, const struct kp_alert *cur)
{
    if (!a->cmd->has_expect_version)
        return KP_OK;
    uint64_t have = cur != NULL ? cur->e.version : 0, want = a->cmd->expect_version;
    if (have == want)
        return KP_OK;
    if (cur == NULL)
        return kp_store__refuse(a, KP_ECONFLICT,
                                "expect_version: alert '%s' does not exist (expected %" PRIu64 ")",
                                id, want);
    return kp_store__refuse(a, KP_ECONFLICT,
                            "expect_version: alert '%s' is at version %" PRIu64 ", not %" PRIu64,
                            id, have, want);
}

/* The alert an op names, which must exist. */
static int target(struct kp_apply *a, const char *id, const struct kp_alert **out)
{
    a->target = id;
    if ((*out = alert_get(a, id)) == NULL)
        return kp_store__refuse(a, KP_ENOENT, "no alert '%s'", id);
    return check_expect(a, id, *out);
}

/* A copy of @old to change and stage, version and times moved on. */
static int next_version(struct kp_apply *a, const struct kp_alert *old, struct kp_alert **out)
{
    struct kp_entity *e = kp_store__entity_clone(&old->e);
    if (e == NULL)
        return KP_ENOMEM;
    e->version = old->e.version + 1;
    e->updated_ms = a->cmd->ts;
    a->res->version = e->version;
    *out = (struct kp_alert *)e;
    return KP_OK;
}

static size_t count_open(const struct kp_state *st)
{
    const struct kp_table *t = st->tables[KP_KIND_ALERT];
    size_t n = 0;
    for (uint32_t i = 0; i < t->cap; i++)
        n += t->slots[i] != NULL && ((const struct kp_alert *)t->slots[i])->resolved_ms == 0;
    return n;
}

static void take(char **dst, char **src)
{
    kp_free(*dst);
    *dst = *src;
    *src = NULL;
}

/* put_alert: open a new episode, or update the texts, severity and value
 * of the open one (its start, ack and delivery records stay). */
int kp_store__op_put_alert(struct kp_apply *a)
{
    struct kp_alert *in = a->cmd->body.alert;
    const struct kp_alert *old = alert_get(a, in->e.id);
    a->target = in->e.id;
    int rc = check_expect(a, in->e.id, old);
    if (rc != KP_OK)
        return rc;
    if (old != NULL && old->resolved_ms == 0) {
        struct kp_alert *e;
        if ((rc = next_version(a, old, &e)) != KP_OK)
            return rc;
        e->severity = in->severity;
        e->last_value = in->last_value;
        take(&e->rule, &in->rule);
        take(&e->subject, &in->subject);
        take(&e->message, &in->message);
        take(&e->action, &in->action);
        snprintf(a->detail, sizeof(a->detail), "updated, %s", kp_alert_severity_name(e->severity));
        return kp_store__stage(a, KP_KIND_ALERT, &e->e, NULL);
    }
    if (old == NULL && count_open(a->st) >= KP_ALERTS_OPEN_MAX)
        return kp_store__refuse(a, KP_ECONFLICT,
                                "alerts: %d are open, the most the registry keeps; resolve some",
                                KP_ALERTS_OPEN_MAX);
    /* A new episode: the command's state fields are empty (commands cannot
     * set them), so only the times need setting. */
    in->started_ms = a->cmd->ts;
    in->e.version = old != NULL ? old->e.version + 1 : 1;
    in->e.created_ms = old != NULL ? old->e.created_ms : a->cmd->ts;
    in->e.updated_ms = a->cmd->ts;
    a->res->version = in->e.version;
    snprintf(a->detail, sizeof(a->detail), "opened, %s", kp_alert_severity_name(in->severity));
    a->cmd->body.any = NULL; /* the alert now belongs to the change */
    return kp_store__stage(a, KP_KIND_ALERT, &in->e, NULL);
}

static int cmp_resolved(const void *pa, const void *pb)
{
    const struct kp_alert *x = *(const struct kp_alert *const *)pa;
    const struct kp_alert *y = *(const struct kp_alert *const *)pb;
    if (x->resolved_ms != y->resolved_ms)
        return x->resolved_ms < y->resolved_ms ? -1 : 1;
    return strcmp(x->e.id, y->e.id);
}

/* Beyond KP_ALERTS_RESOLVED_MAX resolved alerts (@fresh, being resolved
 * now, counted and never dropped), stage deletes of the oldest others,
 * by resolved_ms then id: hash order never matters. */
static int prune_resolved(struct kp_apply *a, const struct kp_alert *fresh)
{
    const struct kp_table *t = a->st->tables[KP_KIND_ALERT];
    const struct kp_alert **v = kp_malloc((t->count + 1) * sizeof(*v));
    size_t n = 0;
    if (v == NULL)
        return KP_ENOMEM;
    for (uint32_t i = 0; i < t->cap; i++) {
        const struct kp_alert *x = (const struct kp_alert *)t->slots[i];
        if (x != NULL && x->resolved_ms != 0 && strcmp(x->e.id, fresh->e.id) != 0)
            v[n++] = x;
    }
    int rc = KP_OK;
    if (n + 1 > KP_ALERTS_RESOLVED_MAX) {
        size_t drop = n + 1 - KP_ALERTS_RESOLVED_MAX;
        qsort(v, n, sizeof(*v), cmp_resolved);
        for (size_t i = 0; i < drop && rc == KP_OK; i++)
            rc = kp_store__stage(a, KP_KIND_ALERT, NULL, v[i]->e.id);
        if (rc == KP_OK) {
            snprintf(a->detail, sizeof(a->detail),
                     "resolved; %zu older resolved alerts dropped, the last '%s'", drop,
                     v[drop - 1]->e.id);
            kp_store__utf8_trim(a->detail);
        }
    }
    kp_free(v);
    return rc;
}

/* resolve_alert: the open episode ends now. */
int kp_store__op_resolve_alert(struct kp_apply *a)
{
    const struct kp_cmd_resolve_alert *c = a->cmd->body.resolve_alert;
    const struct kp_alert *old;
    struct kp_alert *e;
    int rc = target(a, c->id, &old);
    if (rc != KP_OK)
        return rc;
    if (old->resolved_ms != 0)
        return kp_store__refuse(a, KP_ECONFLICT, "alert '%s' is already resolved", c->id);
    if ((rc = next_version(a, old, &e)) != KP_OK)
        return rc;
    e->resolved_ms = a->cmd->ts > old->started_ms ? a->cmd->ts : old->started_ms;
    e->last_value = c->last_value;
    snprintf(a->detail, sizeof(a->detail), "resolved");
    if ((rc = kp_store__stage(a, KP_KIND_ALERT, &e->e, NULL)) != KP_OK)
        return rc;
    return prune_resolved(a, e);
}

/* ack_alert: an operator has seen it. The first ack is kept. */
int kp_store__op_ack_alert(struct kp_apply *a)
{
    const struct kp_alert *old;
    struct kp_alert *e;
    int rc = target(a, a->cmd->body.target->id, &old);
    if (rc != KP_OK)
        return rc;
    if (old->acked_by != NULL) {
        a->res->version = old->e.version;
        snprintf(a->detail, sizeof(a->detail), "already acknowledged by %s", old->acked_by);
        kp_store__utf8_trim(a->detail);
        return KP_OK;
    }
    if ((rc = next_version(a, old, &e)) != KP_OK)
        return rc;
    if ((e->acked_by = kp_strdup(a->cmd->audit.actor)) == NULL) {
        kp_store__entity_unref(&e->e);
        return KP_ENOMEM;
    }
    e->acked_ms = a->cmd->ts;
    return kp_store__stage(a, KP_KIND_ALERT, &e->e, NULL);
}

static int check_delivery(struct kp_apply *a, const struct kp_cmd_alert_delivery *c,
                          const struct kp_alert *old)
{
    if (old->started_ms != c->started_ms)
        return kp_store__refuse(a, KP_ECONFLICT,
                                "started_ms: alert '%s' is in the episode that started at %" PRId64
                                ", not %" PRId64,
                                c->id, old->started_ms, c->started_ms);
    if (c->event == KP_ALERT_EVENT_RESOLVED && old->resolved_ms == 0)
        return kp_store__refuse(a, KP_ECONFLICT, "event: alert '%s' is not resolved", c->id);
    return KP_OK;
}

/* alert_delivery: how one event's delivery to one webhook ended. */
int kp_store__op_alert_delivery(struct kp_apply *a)
{
    struct kp_cmd_alert_delivery *c = a->cmd->body.alert_delivery;
    const struct kp_alert *old;
    struct kp_alert *e;
    int rc = target(a, c->id, &old);
    if (rc == KP_OK)
        rc = check_delivery(a, c, old);
    if (rc != KP_OK)
        return rc;
    uint32_t i = 0;
    while (i < old->ndeliveries && (old->deliveries[i].event != c->event ||
                                    strcmp(old->deliveries[i].webhook, c->webhook) != 0))
        i++;
    if (i == KP_ALERT_DELIVERIES_MAX)
        return kp_store__refuse(a, KP_ECONFLICT, "alert '%s' holds %d delivery records already",
                                c->id, KP_ALERT_DELIVERIES_MAX);
    if ((rc = next_version(a, old, &e)) != KP_OK)
        return rc;
    if (i == e->ndeliveries) {
        struct kp_alert_delivery *v = kp_realloc(e->deliveries, (i + 1) * sizeof(*v));
        if (v == NULL) {
            kp_store__entity_unref(&e->e);
            return KP_ENOMEM;
        }
        memset(&v[i], 0, sizeof(v[i]));
        e->deliveries = v;
        e->ndeliveries++;
    }
    struct kp_alert_delivery *d = &e->deliveries[i];
    take(&d->webhook, &c->webhook);
    take(&d->error, &c->error);
    d->event = c->event;
    d->state = c->state;
    d->attempts = c->attempts;
    d->at_ms = a->cmd->ts;
    snprintf(a->detail, sizeof(a->detail), "%s to webhook %s: %s after %u attempts",
             kp_alert_event_name(d->event), d->webhook, kp_delivery_state_name(d->state),
             d->attempts);
    return kp_store__stage(a, KP_KIND_ALERT, &e->e, NULL);
}

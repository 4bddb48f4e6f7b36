/* Alerts in the control API (docs/alerts.md, docs/control-api.md):
 *
 *   GET  /admin/v1/alerts                ?state=open|resolved|all (open), rule=, severity=
 *   GET  /admin/v1/alerts/dead-letters   deliveries given up after every retry
 *   GET  /admin/v1/alerts/{id}           one alert
 *   POST /admin/v1/alerts/{id}/ack       ack_alert (operate)
 *
 * Reads need read_alerts (admin, operator, finance, auditor) and answer
 * from this node's state machine, like every registry read. The leader's
 * evaluator (alerts.c) makes the alerts; an operator only acknowledges.
 *
 * Also here: what the API adds to the generic registry routes for the
 * kinds alerts give meaning to. A PUT of an alert rule or a webhook is
 * checked against the rules of alert_rules.c and alert_webhook.c before it
 * is proposed (the registry itself stores any kind and params), and a
 * webhook's credentials are never shown: "secret" renders as
 * MASKED_SECRET and a url with a path as scheme://host/… (the path of a
 * Slack url is its key). A PUT that sends those masked values back keeps
 * the stored ones, so what a GET shows can be PUT again. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin_internal.h"
#include "alerts.h"

#define MASKED_SECRET "********"
#define ELLIPSIS      "\xe2\x80\xa6" /* U+2026 */

/* --- rendering ----------------------------------------------------------------------------- */

static json_t *time_json(int64_t ms)
{
    char t[32];
    if (ms == 0)
        return json_null();
    kp_format_time_ms(ms, t, sizeof(t));
    return json_string(t);
}

/* scheme://host/… for a url with anything after the host, into @out. */
static void mask_url(const char *url, char *out, size_t len)
{
    const char *host = strstr(url, "://");
    host = host != NULL ? host + 3 : url;
    size_t n = strcspn(host, "/?#");
    if (host[n] == '\0' || (host[n] == '/' && host[n + 1] == '\0'))
        snprintf(out, len, "%s", url);
    else
        snprintf(out, len, "%.*s/" ELLIPSIS, (int)(host + n - url), url);
}

void kp_admin__decorate(json_t *v, const struct kp_entity *e)
{
    if (e->kind == KP_KIND_WEBHOOK) {
        json_t *params = json_object_get(v, "params");
        const char *url = json_string_value(json_object_get(params, "url"));
        if (url != NULL) {
            char masked[2100];
            mask_url(url, masked, sizeof(masked));
            json_object_set_new(params, "url", json_string(masked));
        }
        if (json_object_get(params, "secret") != NULL)
            json_object_set_new(params, "secret", json_string(MASKED_SECRET));
        return;
    }
    if (e->kind != KP_KIND_ALERT)
        return;
    const struct kp_alert *a = (const struct kp_alert *)e;
    json_object_set_new(v, "state", json_string(a->resolved_ms ? "resolved" : "open"));
    json_object_set_new(v, "started_at", time_json(a->started_ms));
    json_object_set_new(v, "resolved_at", time_json(a->resolved_ms));
    json_object_set_new(v, "acked_at", time_json(a->acked_ms));
    json_t *ds = json_object_get(v, "deliveries");
    size_t i;
    json_t *d;
    json_array_foreach(ds, i, d)
    {
        char id[300];
        if (i < a->ndeliveries) {
            kp_webhook_delivery_id(a, a->deliveries[i].event, id, sizeof(id));
            json_object_set_new(d, "delivery_id", json_string(id));
        }
    }
}

/* --- PUT of alert rules and webhooks -------------------------------------------------------- */

/* The body's params as a strmap over its strings (valid while @body is);
 * false when they are not an object of strings (the decoder refuses those
 * with the field named, so they pass through here). */
static bool params_of(const json_t *body, struct kp_strpair *pairs, size_t max,
                      struct kp_strmap *out)
{
    const json_t *p = json_object_get(body, "params");
    const char *k;
    json_t *val;
    out->v = pairs;
    out->n = 0;
    if (p == NULL)
        return true;
    if (!json_is_object(p) || json_object_size(p) > max)
        return false;
    json_object_foreach((json_t *)p, k, val)
    {
        if (!json_is_string(val))
            return false;
        pairs[out->n++] = (struct kp_strpair){(char *)k, (char *)json_string_value(val)};
    }
    return true;
}

/* A webhook PUT that sends back the masked url or secret keeps the stored
 * one. */
static void unmask(struct kp_admin_req *r, json_t *body)
{
    const struct kp_webhook *old =
        (const struct kp_webhook *)kp_fsm_get(kp_admin__fsm(r), KP_KIND_WEBHOOK, r->id);
    json_t *params = json_object_get(body, "params");
    if (old == NULL || !json_is_object(params))
        return;
    for (uint32_t i = 0; i < old->params.n; i++) {
        const char *k = old->params.v[i].key, *stored = old->params.v[i].value;
        const char *sent = json_string_value(json_object_get(params, k));
        char masked[2100];
        if (sent == NULL)
            continue;
        if (strcmp(k, "secret") == 0 && strcmp(sent, MASKED_SECRET) == 0)
            json_object_set_new(params, k, json_string(stored));
        if (strcmp(k, "url") == 0) {
            mask_url(stored, masked, sizeof(masked));
            if (strcmp(sent, masked) == 0 && strcmp(sent, stored) != 0)
                json_object_set_new(params, k, json_string(stored));
        }
    }
}

bool kp_admin__check_alerting(struct kp_admin_req *r, json_t *body)
{
    if (r->kind != KP_KIND_WEBHOOK && r->kind != KP_KIND_ALERT_RULE)
        return true;
    if (r->kind == KP_KIND_WEBHOOK)
        unmask(r, body);
    struct kp_strpair pairs[64];
    struct kp_strmap params;
    const char *kind = json_string_value(json_object_get(body, "kind"));
    char why[300];
    if (!params_of(body, pairs, 64, &params))
        return true; /* the decoder names the field */
    int rc = r->kind == KP_KIND_WEBHOOK ? kp_webhook_check(kind, &params, NULL, why, sizeof(why))
                                        : kp_alert_rule_check(kind, &params, why, sizeof(why));
    if (rc == KP_OK)
        return true;
    char field[80];
    kp_admin__fail(r, 400, "invalid_field", kp_admin__field_of(why, field, sizeof(field)), "%s",
                   why);
    return false;
}

/* --- reads ----------------------------------------------------------------------------------- */

struct filter {
    int state; /* 0 open, 1 resolved, 2 all */
    const char *rule;
    int severity; /* -1: any */
};

struct collect {
    const struct kp_alert **v;
    size_t n, cap;
    const struct filter *f;
};

static int collect_alert(const struct kp_entity *e, void *arg)
{
    struct collect *c = arg;
    const struct kp_alert *a = (const struct kp_alert *)e;
    const struct filter *f = c->f;
    if (c->n == c->cap || (f->state == 0 && a->resolved_ms != 0) ||
        (f->state == 1 && a->resolved_ms == 0) || (f->rule != NULL && strcmp(a->rule, f->rule)) ||
        (f->severity >= 0 && a->severity != f->severity))
        return 0;
    c->v[c->n++] = a;
    return 0;
}

/* Newest first (by start, then id). */
static int cmp_alert(const void *pa, const void *pb)
{
    const struct kp_alert *x = *(const struct kp_alert *const *)pa;
    const struct kp_alert *y = *(const struct kp_alert *const *)pb;
    if (x->started_ms != y->started_ms)
        return x->started_ms > y->started_ms ? -1 : 1;
    return strcmp(x->e.id, y->e.id);
}

static bool parse_filter(struct kp_admin_req *r, struct filter *f)
{
    const char *state = kp_admin__query(r, "state");
    const char *sev = kp_admin__query(r, "severity");
    f->state = 0;
    f->rule = kp_admin__query(r, "rule");
    f->severity = -1;
    if (state != NULL && strcmp(state, "open") != 0) {
        if (strcmp(state, "resolved") == 0)
            f->state = 1;
        else if (strcmp(state, "all") == 0)
            f->state = 2;
        else {
            kp_admin__fail(r, 400, "invalid_query", "state", "state: open, resolved or all");
            return false;
        }
    }
    for (int s = 0; sev != NULL && kp_alert_severity_name(s) != NULL; s++) {
        if (strcmp(sev, kp_alert_severity_name(s)) == 0)
            f->severity = s;
    }
    if (sev != NULL && f->severity < 0) {
        kp_admin__fail(r, 400, "invalid_query", "severity", "severity: info, warning or critical");
        return false;
    }
    return true;
}

void kp_admin__alerts_list(struct kp_admin_req *r)
{
    struct filter f;
    size_t limit;
    if (!parse_filter(r, &f) || !kp_admin__list_limit(r, &limit))
        return;
    struct kp_view *view = kp_admin__view(r);
    if (view == NULL)
        return;
    struct collect c = {NULL, 0, kp_view_count(view, KP_KIND_ALERT), &f};
    json_t *items = json_array();
    bool ok = items != NULL && (c.v = kp_malloc((c.cap + 1) * sizeof(*c.v))) != NULL;
    if (ok) {
        kp_view_each(view, KP_KIND_ALERT, collect_alert, &c);
        qsort(c.v, c.n, sizeof(*c.v), cmp_alert);
    }
    for (size_t i = 0; ok && i < c.n && i < limit; i++)
        ok = json_array_append_new(items, kp_admin__entity_json(&c.v[i]->e)) == 0;
    json_int_t applied = (json_int_t)kp_view_applied_index(view);
    kp_free(c.v);
    kp_view_release(view);
    json_t *v = ok ? json_pack("{s:o,s:I,s:I}", "items", items, "total", (json_int_t)c.n,
                               "applied_index", applied)
                   : NULL;
    if (v == NULL) {
        if (!ok)
            json_decref(items);
        kp_admin__oom(r);
        return;
    }
    kp_admin__respond(r, 200, v, 0, false);
}

void kp_admin__alert_get(struct kp_admin_req *r)
{
    const struct kp_entity *e = kp_fsm_get(kp_admin__fsm(r), KP_KIND_ALERT, r->id);
    if (e == NULL) {
        char id[130];
        kp_admin__quote(id, sizeof(id), r->id);
        kp_admin__fail(r, 404, "not_found", NULL, "no alert '%s'", id);
        return;
    }
    json_t *v = kp_admin__entity_json(e);
    if (v == NULL)
        kp_admin__oom(r);
    else
        kp_admin__respond(r, 200, v, e->version, false);
}

static int add_dead(const struct kp_entity *e, void *arg)
{
    json_t *items = arg;
    const struct kp_alert *a = (const struct kp_alert *)e;
    for (uint32_t i = 0; i < a->ndeliveries; i++) {
        const struct kp_alert_delivery *d = &a->deliveries[i];
        char id[300];
        if (d->state != KP_DELIVERY_DEAD)
            continue;
        kp_webhook_delivery_id(a, d->event, id, sizeof(id));
        json_t *o = json_pack("{s:s,s:s,s:s,s:s,s:i,s:s?,s:I,s:o,s:s,s:s,s:s}", "alert", a->e.id,
                              "delivery_id", id, "webhook", d->webhook, "event",
                              kp_alert_event_name(d->event), "attempts", (int)d->attempts, "error",
                              d->error, "at_ms", (json_int_t)d->at_ms, "at", time_json(d->at_ms),
                              "severity", kp_alert_severity_name(a->severity), "subject",
                              a->subject, "state", a->resolved_ms ? "resolved" : "open");
        if (o == NULL || json_array_append_new(items, o) != 0)
            return 1;
    }
    return 0;
}

/* Every delivery given up after its retries, newest first. They stay as
 * long as their alert does (at most KP_ALERTS_RESOLVED_MAX resolved). */
void kp_admin__alerts_dead_letters(struct kp_admin_req *r)
{
    struct kp_view *view = kp_admin__view(r);
    if (view == NULL)
        return;
    json_t *items = json_array();
    int stop = items != NULL ? kp_view_each(view, KP_KIND_ALERT, add_dead, items) : 1;
    json_int_t applied = (json_int_t)kp_view_applied_index(view);
    kp_view_release(view);
    json_t *v = stop == 0 ? json_pack("{s:o,s:I}", "items", items, "applied_index", applied) : NULL;
    if (v == NULL) {
        if (stop != 0)
            json_decref(items); /* else json_pack took it */
        kp_admin__oom(r);
        return;
    }
    /* Newest first, as the list of alerts. */
    size_t n = json_array_size(items);
    for (size_t i = 1; i < n; i++) {
        for (size_t j = i; j > 0; j--) {
            json_t *x = json_array_get(items, j - 1), *y = json_array_get(items, j);
            if (json_integer_value(json_object_get(x, "at_ms")) >=
                json_integer_value(json_object_get(y, "at_ms")))
                break;
            json_incref(x);
            json_array_set(items, j - 1, y);
            json_array_set_new(items, j, x);
        }
    }
    kp_admin__respond(r, 200, v, 0, false);
}

/* --- ack -------------------------------------------------------------------------------------- */

void kp_admin__alert_ack(struct kp_admin_req *r)
{
    struct kp_audit_ctx audit = kp_admin_audit_ctx(&r->who, r->rid);
    struct kp_buf cmd;
    char msg[256] = "", field[160] = "";
    kp_buf_init(&cmd);
    int rc =
        kp_command_from_json(KP_OP_ACK_ALERT, r->id, NULL, kp_now_unix_ms(), &audit, r->has_expect,
                             r->expect, &cmd, msg, sizeof(msg), field, sizeof(field));
    if (rc != KP_OK) {
        if (rc == KP_ENOMEM)
            kp_admin__oom(r);
        else
            kp_admin__fail(r, 400, "invalid_field", field[0] != '\0' ? field : NULL, "%s", msg);
        return;
    }
    struct kp_admin_write *w = kp_admin__write_new(r, KP_KIND_ALERT, r->id);
    if (w == NULL) {
        kp_buf_free(&cmd);
        return;
    }
    kp_admin__submit(w, &cmd, true);
}

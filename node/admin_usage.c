/* GET /admin/v1/usage and GET /admin/v1/usage/events (docs/usage-api.md).
 *
 * A meter answers from its store; the query runs and is rendered on
 * libuv's threadpool (it reads day files and raw segments) and answered on
 * the main loop. A node that is not a meter relays the request to one. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "admin_internal.h"

bool kp_admin__relay_to_meter(struct kp_admin_req *r)
{
    if (kp_metering_store(r->n) != NULL)
        return false;
    char control[300];
    if (kp_http_request_header(r->req, "x-keyplane-forwarded") != NULL ||
        !kp_metering_find_meter(r->n, control, sizeof(control))) {
        kp_admin__fail(r, 503, "no_meter", NULL,
                       "no meter node is available to answer usage queries; mark one with "
                       "clusterctl members meter NAME on (docs/meter.md)");
        return true;
    }
    kp_forward_to(r->n, r->ex, r->req, r->rid, control, "meter");
    return true;
}

struct usage_work {
    uv_work_t work;
    struct kp_admin_req *r;
    struct kp_meter_store *store;
    struct kp_usage_query q;
    struct kp_usage_event_filter f;
    bool events;
    bool csv;
    int rc;
    json_t *json;
    struct kp_buf text;
    char errmsg[512];
};

static void usage_work(uv_work_t *w)
{
    struct usage_work *u = w->data;
    if (u->events) {
        u->rc = kp_meter_store_events(u->store, &u->f, &u->json, u->errmsg, sizeof(u->errmsg));
        return;
    }
    struct kp_usage_result *res = NULL;
    u->rc = kp_meter_store_query(u->store, &u->q, &res, u->errmsg, sizeof(u->errmsg));
    if (u->rc != KP_OK)
        return;
    if (u->csv) {
        u->rc = kp_usage_result_csv(res, &u->text);
    } else {
        u->json = kp_usage_result_json(res, u->r->n->cfg->node_name);
        u->rc = u->json != NULL ? KP_OK : KP_ENOMEM;
    }
    kp_usage_result_free(res);
}

static void usage_done(uv_work_t *w, int status)
{
    struct usage_work *u = w->data;
    struct kp_admin_req *r = u->r;
    (void)status;
    if (u->rc == KP_ETOOBIG) {
        kp_admin__fail(r, 400, "too_many_rows", NULL, "%s", u->errmsg);
    } else if (u->rc == KP_ENOMEM) {
        kp_admin__oom(r);
    } else if (u->rc != KP_OK) {
        kp_admin__fail(r, 503, "meter_storage", NULL, "%s", u->errmsg);
    } else if (u->csv) {
        struct kp_http_header h[] = {KP_HTTP_HEADER("X-Request-Id", r->rid),
                                     KP_HTTP_HEADER("Content-Type", "text/csv; charset=utf-8")};
        kp_http_respond(r->ex, 200, h, 2, u->text.data, u->text.len);
    } else {
        if (u->events)
            json_object_set_new(u->json, "meter", json_string(r->n->cfg->node_name));
        kp_admin__respond(r, 200, u->json, 0, false);
        u->json = NULL;
    }
    json_decref(u->json);
    kp_buf_free(&u->text);
    kp_usage_query_free(&u->q);
    kp_free(u);
}

static void run(struct usage_work *u)
{
    u->work.data = u;
    u->store = kp_metering_store(u->r->n);
    if (uv_queue_work(kp_http_loop(u->r->ex), &u->work, usage_work, usage_done) != 0) {
        kp_usage_query_free(&u->q);
        kp_admin__fail(u->r, 503, "busy", NULL, "retry shortly");
        kp_free(u);
    }
}

static struct usage_work *work_new(struct kp_admin_req *r)
{
    struct usage_work *u = kp_calloc(1, sizeof(*u));
    if (u == NULL) {
        kp_admin__oom(r);
        return NULL;
    }
    u->r = r;
    kp_buf_init(&u->text);
    return u;
}

/* --- GET /admin/v1/usage ------------------------------------------------------- */

struct param_ctx {
    struct usage_work *u;
    char errmsg[300];
    int rc;
};

static int query_param(void *arg, const char *name, const char *value)
{
    struct param_ctx *p = arg;
    p->rc = kp_usage_query_param(&p->u->q, name, value, p->errmsg, sizeof(p->errmsg));
    return p->rc;
}

void kp_admin__usage_query(struct kp_admin_req *r)
{
    if (kp_admin__relay_to_meter(r))
        return;
    struct usage_work *u = work_new(r);
    if (u == NULL)
        return;
    kp_usage_query_init(&u->q, kp_now_unix_ms());
    struct param_ctx p = {.u = u};
    int rc = kp_admin__query_each(r, query_param, &p);
    if (rc == KP_OK)
        rc = p.rc = kp_usage_query_finish(&u->q, p.errmsg, sizeof(p.errmsg));
    if (rc != KP_OK) {
        if (p.rc == KP_OK)
            snprintf(p.errmsg, sizeof(p.errmsg), "a query parameter has a bad %%-escape");
        kp_usage_query_free(&u->q);
        kp_free(u);
        if (rc == KP_ENOMEM)
            kp_admin__oom(r);
        else
            kp_admin__fail(r, 400, "invalid_query", NULL, "%s", p.errmsg);
        return;
    }
    const char *accept = kp_http_request_header(r->req, "accept");
    u->csv = u->q.csv || (accept != NULL && strncasecmp(accept, "text/csv", 8) == 0);
    run(u);
}

/* --- GET /admin/v1/usage/events ------------------------------------------------ */

static const char *const event_params[] = {"from",   "to",       "request_id", "key",
                                           "tenant", "project",  "model",      "error_class",
                                           "kind",   "trace_id", "limit",      NULL};

static int check_event_param(void *arg, const char *name, const char *value)
{
    (void)value;
    char *bad = arg;
    for (size_t i = 0; event_params[i] != NULL; i++)
        if (strcmp(name, event_params[i]) == 0)
            return KP_OK;
    kp_admin__quote(bad, 64, name);
    return KP_EINVAL;
}

void kp_admin__usage_events(struct kp_admin_req *r)
{
    if (kp_admin__relay_to_meter(r))
        return;
    char bad[64] = "";
    if (kp_admin__query_each(r, check_event_param, bad) != KP_OK) {
        if (bad[0])
            kp_admin__fail(r, 400, "invalid_query", bad, "unknown parameter %s", bad);
        else
            kp_admin__fail(r, 400, "invalid_query", NULL, "a query parameter has a bad %%-escape");
        return;
    }
    struct kp_usage_event_filter f = {.limit = 100};
    const char *from = kp_admin__query(r, "from"), *to = kp_admin__query(r, "to");
    const char *lim = kp_admin__query(r, "limit");
    f.to_ms = kp_now_unix_ms() + 1;
    if (to != NULL && kp_usage_parse_time(to, &f.to_ms) != KP_OK) {
        kp_admin__fail(r, 400, "invalid_query", "to",
                       "to: an RFC 3339 UTC time, a date YYYY-MM-DD or Unix milliseconds");
        return;
    }
    f.from_ms = f.to_ms - 86400000;
    if (from != NULL && kp_usage_parse_time(from, &f.from_ms) != KP_OK) {
        kp_admin__fail(r, 400, "invalid_query", "from",
                       "from: an RFC 3339 UTC time, a date YYYY-MM-DD or Unix milliseconds");
        return;
    }
    if (f.to_ms <= f.from_ms) {
        kp_admin__fail(r, 400, "invalid_query", "to", "to must be after from");
        return;
    }
    if (lim != NULL) {
        char *end = NULL;
        long v = strtol(lim, &end, 10);
        if (end == lim || *end != '\0' || v < 1 || v > 10000) {
            kp_admin__fail(r, 400, "invalid_query", "limit", "limit: an integer from 1 to 10000");
            return;
        }
        f.limit = (size_t)v;
    }
    f.request_id = kp_admin__query(r, "request_id");
    f.key = kp_admin__query(r, "key");
    f.tenant = kp_admin__query(r, "tenant");
    f.project = kp_admin__query(r, "project");
    f.model = kp_admin__query(r, "model");
    f.error_class = kp_admin__query(r, "error_class");
    f.kind = kp_admin__query(r, "kind");
    f.trace_id = kp_admin__query(r, "trace_id");
    struct usage_work *u = work_new(r);
    if (u == NULL)
        return;
    u->events = true;
    u->f = f;
    run(u);
}

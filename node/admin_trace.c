/* Control-plane spans (docs/observability.md): one SERVER span per admin
 * write on the control listener, from the request to its answer, and an
 * INTERNAL child "raft.commit" from the first proposal to the last entry
 * applied (a write may take several, such as a token whose id clashed).
 *
 * The span's state lives in the exchange's memory and is exported from the
 * exchange's finish callback, on the main loop, through the same sink as
 * the gateway's spans. The app's traceparent is continued; sampling is
 * parent-based, else the ratio, and a write that failed (4xx, 5xx) is
 * always kept. */
#include <stdio.h>
#include <string.h>

#include "admin_internal.h"

struct kp_admin_span {
    struct kp_admin_req *r;
    const char *route;
    uint8_t trace_id[16], span_id[8], parent_id[8];
    bool sampled;
    int64_t start_ns;
    int64_t commit_start_ns, commit_end_ns;
    unsigned proposals, applied, lost; /* lost: not committed */
};

static void add_commit(struct kp_span_set *s, const struct kp_admin_span *a)
{
    struct kp_span *sp = kp_span_add(s, "raft.commit", KP_SPAN_INTERNAL, 4);
    if (sp == NULL)
        return;
    uint8_t id[8];
    kp_trace_new_id(id, sizeof(id));
    memcpy(sp->trace_id, a->trace_id, sizeof(sp->trace_id));
    memcpy(sp->span_id, id, sizeof(sp->span_id));
    memcpy(sp->parent_id, a->span_id, sizeof(sp->parent_id));
    sp->start_ns = a->commit_start_ns;
    sp->end_ns = a->commit_end_ns;
    kp_span_int(sp, "keyplane.raft.proposals", a->proposals);
    kp_span_int(sp, "keyplane.raft.applied", a->applied);
    if (a->lost > 0)
        kp_span_status(s, sp, KP_SPAN_ERROR, "not committed");
}

static void span_end(struct kp_http_exchange *ex, int status, void *arg)
{
    struct kp_admin_span *a = arg;
    struct kp_admin_req *r = a->r;
    const struct kp_trace_sink *sink = &r->n->router.trace;
    (void)ex;
    if (sink->submit == NULL || !sink->spans || !kp_trace_keep(a->sampled, status >= 400))
        return;
    struct kp_span_set *s = kp_span_set_new(2);
    char name[160];
    snprintf(name, sizeof(name), "%s %s", r->req->method, a->route);
    struct kp_span *sp = s ? kp_span_add(s, name, KP_SPAN_SERVER, 12) : NULL;
    if (sp == NULL) {
        kp_span_set_free(s);
        return;
    }
    memcpy(sp->trace_id, a->trace_id, sizeof(sp->trace_id));
    memcpy(sp->span_id, a->span_id, sizeof(sp->span_id));
    memcpy(sp->parent_id, a->parent_id, sizeof(sp->parent_id));
    sp->start_ns = a->start_ns;
    sp->end_ns = kp_now_unix_ns();
    kp_span_str(s, sp, "http.request.method", r->req->method);
    kp_span_str(s, sp, "http.route", a->route);
    kp_span_int(sp, "http.response.status_code", status);
    kp_span_str(s, sp, "keyplane.request_id", r->rid);
    kp_span_str(s, sp, "keyplane.node", r->n->cfg->node_name);
    kp_span_str(s, sp, "keyplane.actor", r->who.token_id);
    kp_span_int(sp, "keyplane.raft.proposals", a->proposals);
    if (a->applied > 0)
        kp_span_int(sp, "keyplane.raft.commit_us", (a->commit_end_ns - a->commit_start_ns) / 1000);
    if (status >= 500) {
        char msg[32];
        snprintf(msg, sizeof(msg), "HTTP %d", status);
        kp_span_status(s, sp, KP_SPAN_ERROR, msg);
    }
    if (a->commit_end_ns > 0)
        add_commit(s, a);
    sink->submit(sink->arg, s, NULL);
}

void kp_admin__span_begin(struct kp_admin_req *r, const char *route)
{
    const struct kp_trace_sink *sink = &r->n->router.trace;
    if (!sink->spans)
        return;
    struct kp_admin_span *a = kp_http_alloc(r->ex, sizeof(*a));
    if (a == NULL)
        return; /* best effort */
    memset(a, 0, sizeof(*a));
    a->r = r;
    a->route = route;
    a->start_ns = kp_now_unix_ns();
    struct kp_trace_parent p;
    const char *tp = kp_http_request_header(r->req, "traceparent");
    if (tp != NULL && kp_traceparent_parse(tp, strlen(tp), &p) == KP_OK) {
        memcpy(a->trace_id, p.trace_id, sizeof(a->trace_id));
        memcpy(a->parent_id, p.span_id, sizeof(a->parent_id));
        a->sampled = (p.flags & KP_TRACE_SAMPLED) != 0;
    } else {
        kp_trace_new_id(a->trace_id, sizeof(a->trace_id));
        a->sampled = kp_trace_ratio_keeps(a->trace_id, sink->sample_ratio);
    }
    kp_trace_new_id(a->span_id, sizeof(a->span_id));
    r->span = a;
    kp_http_on_finish(r->ex, span_end, a);
}

void kp_admin__span_proposed(struct kp_admin_req *r)
{
    struct kp_admin_span *a = r->span;
    if (a != NULL && a->proposals++ == 0)
        a->commit_start_ns = kp_now_unix_ns();
}

void kp_admin__span_applied(struct kp_admin_req *r, int code)
{
    struct kp_admin_span *a = r->span;
    if (a == NULL)
        return;
    if (code == KP_OK)
        a->applied++;
    else
        a->lost++;
    a->commit_end_ns = kp_now_unix_ns();
}

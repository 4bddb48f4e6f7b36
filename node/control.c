/* Handlers of the control listener: health, readiness, metrics, status,
 * and the dispatch of /admin/v1/ (admin*.c), /internal/v1/ (cluster.c) and
 * the web console's files under /ui/ (console.c).
 *
 * Every answer is JSON except /metrics and /ui/. Errors have the OpenAI shape that
 * apps and clusterctl both parse: {"error":{"message","type","code","param"}}
 * with the request id in X-Request-Id. */
#include <stdio.h>
#include <string.h>

#include "node.h"

void kp_node_error(struct kp_http_exchange *ex, int status, const char *rid, const char *type,
                   const char *code, const char *message)
{
    size_t len;
    char *body = kp_json_error_body(message, type, code, &len);
    struct kp_http_header h[3] = {
        KP_HTTP_HEADER("Content-Type", "application/json"),
        KP_HTTP_HEADER("X-Request-Id", rid),
        KP_HTTP_HEADER("X-Keyplane-Error", code),
    };
    if (body == NULL) {
        kp_http_respond(ex, 503, h + 1, 2, NULL, 0);
        return;
    }
    kp_http_respond(ex, status, h, 3, body, len);
    kp_free(body);
}

void kp_admin_error(struct kp_http_exchange *ex, int status, const char *rid, const char *type,
                    const char *code, const char *field, const char *message)
{
    json_t *v =
        json_pack("{s:{s:s,s:s,s:s}}", "error", "message", message, "type", type, "code", code);
    if (v != NULL && field != NULL)
        json_object_set_new(json_object_get(v, "error"), "field", json_string(field));
    size_t len;
    char *body = v ? kp_json_dumps(v, &len) : NULL;
    json_decref(v);
    struct kp_http_header h[4] = {
        KP_HTTP_HEADER("X-Request-Id", rid),
        KP_HTTP_HEADER("Content-Type", "application/json"),
        KP_HTTP_HEADER("Retry-After", "1"),
    };
    unsigned nh = status == 503 ? 3 : 2;
    if (body == NULL) {
        kp_http_respond(ex, 503, h, 1, NULL, 0);
        return;
    }
    kp_http_respond(ex, status, h, nh, body, len);
    kp_free(body);
}

void kp_node_respond_json(struct kp_http_exchange *ex, int status, const char *rid, json_t *v)
{
    size_t len;
    char *body = v ? kp_json_dumps(v, &len) : NULL;
    json_decref(v);
    if (body == NULL) {
        kp_node_error(ex, 503, rid, "server_error", "out_of_memory", "out of memory; retry");
        return;
    }
    struct kp_http_header h[2] = {KP_HTTP_HEADER("Content-Type", "application/json"),
                                  KP_HTTP_HEADER("X-Request-Id", rid)};
    kp_http_respond(ex, status, h, 2, body, len);
    kp_free(body);
}

void kp_node_note_leader(struct kp_node *n)
{
    uint64_t id;
    char addr[8];
    if (n->store != NULL && !n->store_closing &&
        kp_store_leader(n->store, &id, addr, sizeof(addr)) == KP_OK)
        n->leader_seen_ms = kp_now_unix_ms();
}

/* Ready (docs/operations.md, "Readiness"): started and caught up with the
 * leader (lifecycle.c), not draining, still a member, a Raft leader known
 * within ready_max_staleness_ms (else this node's registry view may be
 * stale: it is cut off from the leader), and a spool that takes usage
 * events. */
static void handle_readyz(struct kp_http_exchange *ex, struct kp_node *n, const char *rid)
{
    struct kp_runtime *rt = n->rt;
    const char *state = "ready", *why = NULL;
    int status = 200;
    kp_node_note_leader(n);
    int64_t since = kp_now_unix_ms() - n->leader_seen_ms;
    if (atomic_load(&rt->draining)) {
        state = "draining";
        status = 503;
    } else if (!atomic_load(&rt->ready)) {
        state = "starting";
        status = 503;
    } else if (n->removed) {
        state = "removed";
        why = "this node is no longer in the cluster's Raft configuration: stop it";
        status = 503;
    } else if (since > n->cfg->ready_max_staleness_ms) {
        state = "stale";
        why = "no Raft leader known: the registry view may be stale";
        status = 503;
    } else if (!kp_metering_spool_ok(n, &why)) {
        state = "spool";
        status = 503;
    }
    kp_node_respond_json(ex, status, rid, json_pack("{s:s,s:s*}", "status", state, "reason", why));
}

/* Raft's state as gauges, read when scraped (the main loop owns raft). */
static void raft_gauges(struct kp_node *n)
{
    static struct kp_metric *leader, *term, *commit, *applied, *known, *members;
    if (leader == NULL) {
        leader = kp_metric_gauge("keyplane_raft_leader", "1 while this node is the Raft leader");
        term = kp_metric_gauge("keyplane_raft_term", "Raft term this node is in");
        commit = kp_metric_gauge("keyplane_raft_commit_index", "Raft commit index");
        applied = kp_metric_gauge("keyplane_raft_applied_index",
                                  "Raft entries applied to this node's registry");
        known =
            kp_metric_gauge("keyplane_raft_leader_known", "1 while this node knows a Raft leader");
        members = kp_metric_gauge("keyplane_raft_servers", "servers in the Raft configuration");
    }
    struct kp_store_status st;
    if (n->store == NULL || n->store_closing || kp_store_status(n->store, &st) != KP_OK)
        return;
    kp_metric_set(leader, strcmp(st.state, "leader") == 0);
    kp_metric_set(term, (int64_t)st.term);
    kp_metric_set(commit, (int64_t)st.commit_index);
    kp_metric_set(applied, (int64_t)st.applied_index);
    kp_metric_set(known, st.leader_id != 0);
    kp_metric_set(members, (int64_t)st.nservers);
    kp_store_status_free(&st);
}

static void handle_metrics(struct kp_http_exchange *ex, struct kp_node *n, const char *rid)
{
    struct kp_buf out;
    raft_gauges(n);
    kp_buf_init(&out);
    if (kp_metrics_render(&out) != 0) {
        kp_buf_free(&out);
        kp_node_error(ex, 503, rid, "server_error", "out_of_memory", "out of memory; retry");
        return;
    }
    struct kp_http_header h[1] = {
        KP_HTTP_HEADER("Content-Type", "text/plain; version=0.0.4; charset=utf-8")};
    kp_http_respond(ex, 200, h, 1, out.data, out.len);
    kp_buf_free(&out);
}

static void handle_status(struct kp_http_exchange *ex, struct kp_runtime *rt, const char *rid)
{
    int64_t now = kp_now_unix_ms();
    char started[32];
    kp_format_time_ms(rt->started_unix_ms, started, sizeof(started));
    json_t *v = json_pack(
        "{s:s,s:s,s:s,s:s,s:I,s:b,s:b,s:i,s:{s:s,s:s},s:{s:i,s:i},s:{s:i,s:i}}", "version",
        kp_version(), "commit", kp_build_commit(), "node", rt->cfg->node_name, "started_at",
        started, "uptime_s", (json_int_t)((now - rt->started_unix_ms) / 1000), "ready",
        atomic_load(&rt->ready), "draining", atomic_load(&rt->draining), "workers", rt->n_workers,
        "listen", "gateway", rt->gateway_addr, "control", rt->control_addr, "connections",
        "gateway", (int)kp_runtime_connections(rt, "gateway"), "control",
        (int)kp_runtime_connections(rt, "control"), "inflight", "gateway",
        (int)kp_runtime_inflight(rt, "gateway"), "control",
        (int)kp_runtime_inflight(rt, "control"));
    /* What any TLS client sees anyway: which listeners serve TLS and the
     * certificate they present (after the last reload). */
    char cert[512] = "";
    if (rt->tls != NULL)
        kp_tls_server_describe(rt->tls, cert, sizeof(cert));
    json_object_set_new(v, "tls",
                        json_pack("{s:b,s:b,s:s?}", "gateway", rt->cfg->tls_gateway, "control",
                                  rt->cfg->tls_control, "certificate",
                                  rt->tls != NULL ? cert : NULL));
    kp_node_respond_json(ex, 200, rid, v);
}

struct route {
    const char *path;
    const char *method;
    int id;
};

enum { R_HEALTHZ, R_READYZ, R_METRICS, R_STATUS };

static const struct route control_routes[] = {
    {"/healthz", "GET", R_HEALTHZ},
    {"/readyz", "GET", R_READYZ},
    {"/metrics", "GET", R_METRICS},
    {"/admin/v1/status", "GET", R_STATUS},
};

void kp_control_handle(struct kp_http_exchange *ex, const struct kp_http_request *req, void *arg)
{
    struct kp_node *n = arg;
    struct kp_runtime *rt = n->rt;
    const char *rid = kp_http_request_id(ex, req);
    if (strncmp(req->path, "/admin/v1/", 10) == 0 && strcmp(req->path, "/admin/v1/status") != 0) {
        kp_http_set_route(ex, "/admin/v1/*");
        kp_admin_handle(n, ex, req, rid);
        return;
    }
    if (strcmp(req->path, "/ui") == 0 || strncmp(req->path, "/ui/", 4) == 0) {
        kp_console_handle(ex, req, rid);
        return;
    }
    if (strncmp(req->path, "/internal/v1/", 13) == 0) {
        kp_http_set_route(ex, "/internal/v1/*");
        kp_internal_handle(n, ex, req, rid);
        return;
    }
    for (size_t i = 0; i < sizeof(control_routes) / sizeof(control_routes[0]); i++) {
        const struct route *r = &control_routes[i];
        if (strcmp(req->path, r->path) != 0)
            continue;
        kp_http_set_route(ex, r->path);
        if (strcmp(req->method, r->method) != 0 &&
            !(strcmp(req->method, "HEAD") == 0 && strcmp(r->method, "GET") == 0)) {
            char msg[128];
            snprintf(msg, sizeof(msg), "%s %s is not allowed; use %s", req->method, r->path,
                     r->method);
            kp_node_error(ex, 405, rid, "invalid_request_error", "method_not_allowed", msg);
            return;
        }
        switch (r->id) {
        case R_HEALTHZ:
            kp_node_respond_json(ex, 200, rid, json_pack("{s:s}", "status", "ok"));
            return;
        case R_READYZ:
            handle_readyz(ex, n, rid);
            return;
        case R_METRICS:
            handle_metrics(ex, n, rid);
            return;
        case R_STATUS:
            handle_status(ex, rt, rid);
            return;
        }
    }
    kp_node_error(ex, 404, rid, "invalid_request_error", "not_found",
                  "no such endpoint on the control port; see docs/architecture.md");
}

/* The daemon's wiring, internal to node/: runtime (workers, signals, drain),
 * data directory, and the control and gateway handlers. Nothing outside
 * node/ includes this. */
#ifndef KP_NODE_H
#define KP_NODE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <uv.h>

#include "config.h"
#include "core/core.h"
#include "raftstore/raftstore.h"
#include "raftstore/token.h"

struct kp_worker;

struct kp_runtime {
    struct kp_config *cfg;
    struct kp_http_limits limits;
    int n_workers;
    struct kp_worker *workers;
    char gateway_addr[128]; /* as bound (port resolved) */
    char control_addr[128];
    int64_t started_unix_ms;
    atomic_bool ready;
    atomic_bool draining;
    uv_loop_t *main_loop;
    uv_signal_t sig_term, sig_int, sig_hup;
    uv_timer_t drain_timer;
    uint64_t drain_deadline_ms;
    bool drain_accepting_over;
    int exit_code;
};

/* runtime.c: start the workers and install the signal handlers; then
 * kp_runtime_wait() runs until a signal has drained and stopped them. */
int kp_runtime_run(struct kp_runtime *rt, char *errmsg, size_t errlen);
int kp_runtime_wait(struct kp_runtime *rt);
unsigned kp_runtime_inflight(struct kp_runtime *rt, const char *listener);
unsigned kp_runtime_connections(struct kp_runtime *rt, const char *listener);

/* datadir.c */
struct kp_datadir {
    char *path;
    int lock_fd;
};
int kp_datadir_open(struct kp_datadir *d, const char *path, char *errmsg, size_t errlen);
/* Write DATA_DIR/listen.json atomically with the bound addresses. */
int kp_datadir_write_listen(struct kp_datadir *d, const char *gateway, const char *control,
                            char *errmsg, size_t errlen);
void kp_datadir_close(struct kp_datadir *d);

/* control.c and gateway handler */
void kp_control_handle(struct kp_http_exchange *ex, const struct kp_http_request *req, void *arg);
void kp_gateway_handle(struct kp_http_exchange *ex, const struct kp_http_request *req, void *arg);
/* Answer an OpenAI-shaped error with X-Request-Id (and X-Keyplane-Error). */
void kp_node_error(struct kp_http_exchange *ex, int status, const char *request_id,
                   const char *type, const char *code, const char *message);

/* The node: what the control API handlers need, owned by main.c. Lives on
 * the main loop, which runs raft and the control listener. */
struct kp_node {
    struct kp_runtime *rt;
    struct kp_config *cfg;
    struct kp_store *store;
    struct kp_seal_kek *kek;
    uint64_t node_id;
    char raft_addr[128];   /* as advertised */
    char internal_token[65]; /* hex HMAC(KEK, "keyplane internal v1"): the
                                cluster secret for /internal/v1/ (secret) */
};

/* admin.c: /admin/v1/... (docs/control-api.md). Called by the control
 * handler on the main loop with the request id already chosen. */
void kp_admin_handle(struct kp_node *n, struct kp_http_exchange *ex,
                     const struct kp_http_request *req, const char *rid);

/* forward.c: relay this request to the leader's control listener and answer
 * with what it answered (status, body, Content-Type, ETag, Retry-After).
 * With no known leader, or when the request was already forwarded once
 * (X-Keyplane-Forwarded), answers 503 with Retry-After: 1. */
void kp_forward_to_leader(struct kp_node *n, struct kp_http_exchange *ex,
                          const struct kp_http_request *req, const char *rid);

/* control.c: JSON answers shared by the control handlers. @v is consumed. */
void kp_node_respond_json(struct kp_http_exchange *ex, int status, const char *rid, json_t *v);
/* The control API's error shape (docs/control-api.md):
 * {"error":{"message","type","code","field"}}; @field may be NULL. 503
 * answers add Retry-After: 1. */
void kp_admin_error(struct kp_http_exchange *ex, int status, const char *rid, const char *type,
                    const char *code, const char *field, const char *message);

/* Who made an authenticated control API request (admin.c). */
struct kp_admin_caller {
    char token_id[KP_TOKEN_ID_SIZE]; /* "tk_..." */
    enum kp_role role;
};

/* The audit context of a request (pointers into @who, @rid and static
 * storage; valid while the exchange is). */
struct kp_audit_ctx kp_admin_audit_ctx(const struct kp_admin_caller *who, const char *rid);

/* Map a refused apply (struct kp_fsm_result) to the control API's error
 * answer: 400 (with the field path taken from the message), 404, 409. */
void kp_admin_refused(struct kp_http_exchange *ex, const char *rid, const struct kp_fsm_result *res);

/* cluster.c: GET /admin/v1/cluster, POST /admin/v1/members,
 * PUT /admin/v1/members/{name}/role, DELETE /admin/v1/members/{name},
 * POST /admin/v1/cluster/transfer. admin.c calls it after authenticating
 * @who and checking the permission (GET: read_registry; others: change);
 * writes arrive here only on the leader. */
void kp_cluster_admin(struct kp_node *n, struct kp_http_exchange *ex,
                      const struct kp_http_request *req, const char *rid,
                      const struct kp_admin_caller *who);

#endif

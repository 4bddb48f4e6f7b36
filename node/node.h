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
#include "router/router.h"

struct kp_worker;

struct kp_runtime {
    struct kp_config *cfg;
    struct kp_http_limits limits;         /* the gateway's */
    struct kp_http_limits control_limits; /* the control listener's: a larger body
                                             when usage segments need it */
    int n_workers;
    struct kp_worker *workers;
    char gateway_addr[128]; /* as bound (port resolved) */
    char control_addr[128];
    int64_t started_unix_ms;
    atomic_bool ready;
    atomic_bool draining;
    uv_loop_t *main_loop;
    struct kp_http_server *control;        /* on the main loop */
    struct kp_tls_server *tls;             /* tls.c: the gateway's and control's context when
                                              a certificate is configured, else NULL */
    const struct kp_router_shared *router; /* each worker makes a router from it */
    void *control_arg;                     /* the control handler's arg (struct kp_node *) */
    void (*on_stop)(void *arg);            /* called with control_arg when stopping */
    void (*on_hup)(void *arg);             /* called with control_arg on SIGHUP */
    void (*on_drain)(void *arg);           /* called with control_arg on SIGTERM/SIGINT */
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
/* Stop at once (no drain) and exit with @exit_code: a node that must not go
 * on (wrong master key, refused join). Main loop only. */
void kp_runtime_fail(struct kp_runtime *rt, int exit_code, const char *why);
unsigned kp_runtime_inflight(struct kp_runtime *rt, const char *listener);
unsigned kp_runtime_connections(struct kp_runtime *rt, const char *listener);

/* datadir.c */
struct kp_datadir {
    char *path;
    int lock_fd;
};
int kp_datadir_open(struct kp_datadir *d, const char *path, char *errmsg, size_t errlen);
/* DATA_DIR/cluster.json, {"cluster_id": ...}: the cluster this data
 * directory belongs to, written once the node knows it. Read: KP_OK with
 * the id in @out ("" when the file does not exist); KP_ECONFIG when it is
 * unreadable or malformed (@errmsg says which). */
int kp_datadir_read_cluster(const char *dir, char *out, size_t len, char *errmsg, size_t errlen);
int kp_datadir_write_cluster(const char *dir, const char *cluster_id, char *errmsg, size_t errlen);
/* Write DATA_DIR/listen.json atomically with the bound addresses. */
int kp_datadir_write_listen(struct kp_datadir *d, const char *gateway, const char *control,
                            const char *raft, char *errmsg, size_t errlen);
void kp_datadir_close(struct kp_datadir *d);

/* control.c */
void kp_control_handle(struct kp_http_exchange *ex, const struct kp_http_request *req, void *arg);
/* console.c: GET /ui and /ui/... (the web console's files, docs/console.md). */
void kp_console_handle(struct kp_http_exchange *ex, const struct kp_http_request *req,
                       const char *rid);
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
    char raft_addr[128]; /* as advertised */
    /* A port picked for raft_listen ":0" stays bound here (SO_REUSEADDR,
     * not listening) until the raft listener has it, so that no other
     * process takes it in between (kp_node_release_raft_port). */
    bool raft_port_held;
    int raft_port_fd;
    char internal_token[65];      /* hex HMAC(KEK, "keyplane internal v1"): the
                                     cluster secret for /internal/v1/ (secret) */
    struct kp_seal_kek *prev_kek; /* during a rotation, else NULL */
    char internal_token_prev[65]; /* from prev_kek, "" without one */
    bool rotation_warned;
    struct kp_view_slot views;      /* the store publishes, routers read */
    struct kp_router_shared router; /* what every worker's router shares */
    struct kp_usage_log *usage;     /* usage.c */
    struct kp_metering *metering;   /* metering.c */
    int64_t leader_seen_ms;         /* control.c: when a Raft leader was last known */
    struct kp_health_queue *health; /* health.c */
    struct kp_lease_client *lease;  /* lease.c */
    struct kp_alerts *alerts;       /* alerts.c */
    struct kp_canary *canary;       /* canary.c */
    struct kp_telemetry *telemetry; /* telemetry.c, NULL: no export, no access log */
    /* lifecycle.c */
    bool fresh;         /* the raft directory was empty */
    bool bootstrap;     /* this start makes a new cluster */
    bool init_proposed; /* the bootstrap commands are on their way */
    bool joined;        /* in a cluster (or never needed to join) */
    bool join_inflight;
    bool stopping;
    bool store_closing;
    bool join_timer_open;
    bool self_record_ok; /* the registry has this node's control address */
    bool restored;       /* this start made a new cluster from cfg->restore */
    bool removed;        /* no longer in the Raft configuration: not ready */
    /* DATA_DIR/cluster.json: the cluster this data directory belongs to
     * ("" until known), and whether a join address confirmed it is the
     * cluster join names (or nothing was to be checked). */
    char dir_cluster[64];
    bool cluster_checked;
    /* Readiness waits until this node has applied what the leader had
     * committed when it asked (catch_target, once catch_known). */
    uint64_t catch_target;
    bool catch_known;
    bool catch_inflight;
    int64_t catch_tried_ms;
    int64_t record_tried_ms;
    unsigned join_attempt;
    char join_target[256];
    uv_timer_t join_timer;
    uv_timer_t ready_timer; /* re-checks readiness until the node is ready */
    bool ready_timer_open;
    uv_timer_t sweep_timer; /* sweeper.c */
    bool sweep_timer_open;
};

/* lifecycle.c: kp_node_prepare (before the runtime starts): node id, master
 * keys, cluster secret, raft address. kp_node_start (after kp_runtime_run,
 * on the main loop): the raft store, bootstrap or join. kp_node_stop is the
 * runtime's on_stop. */
int kp_node_prepare(struct kp_node *n, char *errmsg, size_t errlen);
int kp_node_start(struct kp_node *n, char *errmsg, size_t errlen);
void kp_node_stop(void *node);
/* The runtime's on_hup: reopen the access log. */
void kp_node_hup(void *node);
/* The runtime's on_drain: a leader hands leadership over before it stops. */
void kp_node_draining(void *node);
/* The leader took this node out of the Raft configuration: /readyz answers
 * 503 "removed" from now on. */
void kp_node_removed(struct kp_node *n);
/* lifecycle.c, for restore.c: write @data to @path (mode 0600) atomically;
 * the node's id (DATA_DIR/node.id, made on the first start) and its raft
 * address (raft_listen, or DATA_DIR/raft.addr with port 0). */
int kp_node_write_private(const char *path, const char *data, size_t len, char *errmsg,
                          size_t errlen);
int kp_node_load_id(struct kp_node *n, char *errmsg, size_t errlen);
int kp_node_resolve_raft_addr(struct kp_node *n, char *errmsg, size_t errlen);
void kp_node_release_raft_port(struct kp_node *n);
/* This node's Raft identity for the store: @raft_dir, its id, its raft
 * address and the TLS files of the config (the rest of @sc zeroed). */
void kp_node_store_identity(const struct kp_node *n, const char *raft_dir,
                            struct kp_store_config *sc);

/* restore.c: a new cluster from a registry snapshot (cfg->restore), made in
 * the empty raft directory @raft_dir before the store opens (kp_node_prepare
 * calls it with the master key loaded); and --recover, the offline
 * operation that makes a stopped node the only voter of its cluster. */
int kp_node_restore(struct kp_node *n, const char *raft_dir, char *errmsg, size_t errlen);
int kp_node_recover(struct kp_config *cfg, char *errmsg, size_t errlen);
/* Look at the registry again (what a registry change triggers): retries a
 * bootstrap or an own-record update that did not go through. */
void kp_node_check(struct kp_node *n);
/* The cluster secret to send on node-to-node calls: the one from the key
 * the cluster's secrets are sealed under (any thread). */
const char *kp_node_out_token(struct kp_node *n);

/* health.c: key health learned by routers, committed cluster-wide. */
struct kp_health_queue *kp_health_queue_new(struct kp_node *n, uv_loop_t *loop);
void kp_health_queue_close(struct kp_health_queue *q);
void kp_health_queue_free(struct kp_health_queue *q);
/* The router's health sink (thread-safe). */
void kp_health_report(void *queue, const char *key, uint64_t key_version, int status,
                      const char *error_class);
/* Propose set_key_health with @h as it is, audited as actor "system" in
 * @role from @source, on the leader (KP_ENOTLEADER elsewhere); @cb may be
 * NULL (failures are logged). */
int kp_health_commit(struct kp_node *n, const struct kp_key_health *h, const char *role,
                     const char *source, kp_store_apply_cb cb, void *arg);
/* The same for a status and error class (the canary fields kept). */
int kp_health_propose(struct kp_node *n, const char *key, int status, const char *error_class,
                      const char *source, kp_store_apply_cb cb, void *arg);

/* lease.c: the budget lease client (docs/budgets.md, "The router side").
 * kp_lease_start makes the ledger (n->router.budgets) and the client on
 * the main loop, before the workers start; kp_lease_stop gives every grant
 * back (bounded wait) and then calls @stopped. */
struct kp_lease_client;
int kp_lease_start(struct kp_node *n);
void kp_lease_stop(struct kp_node *n, void (*stopped)(struct kp_node *n));
struct kp_budget_ledger *kp_lease_ledger(struct kp_node *n);
/* POST /internal/v1/budget-lease (cluster secret checked by the caller). */
void kp_lease_internal(struct kp_node *n, struct kp_http_exchange *ex,
                       const struct kp_http_request *req, const char *rid);

/* control.c: note whether a Raft leader is known now (readiness). */
void kp_node_note_leader(struct kp_node *n);
/* metering.c: whether the spool can take usage events (readiness). */
bool kp_metering_spool_ok(struct kp_node *n, const char **why);
/* metering.c: the spool's fill and how long its oldest sealed segment has
 * been waiting for the meters (for the alert rules). */
struct kp_metering_health {
    uint64_t spool_bytes, spool_cap_bytes, spool_waiting;
    int64_t oldest_unshipped_ms; /* 0: nothing waiting */
};
void kp_metering_health(struct kp_node *n, struct kp_metering_health *out);

/* telemetry.c: the thread that exports spans over OTLP/HTTP and writes the
 * access log (docs/observability.md). */
struct kp_telemetry;
/* Access records waiting for the thread at most (~3.6 KiB each). */
#define KP_ACCESS_QUEUE_MAX 8192
struct kp_telemetry_options {
    const char *endpoint;   /* OTLP base URL, NULL: spans are not exported */
    const char *headers;    /* "Name: value" lines, NULL */
    int64_t timeout_ms;     /* per export request */
    unsigned queue_spans;   /* spans waiting at most */
    const char *access_log; /* NULL, "stderr" or a file */
    const char *node_name;
    bool thread; /* false (tests): nothing runs until kp_telemetry_poll */
};
struct kp_telemetry_stats {
    uint64_t queued_spans, dropped, exported, failed_spans, failed_requests;
    uint64_t access_lines, access_dropped, access_write_errors;
};
int kp_telemetry_new(const struct kp_telemetry_options *o, struct kp_telemetry **out, char *errmsg,
                     size_t errlen);
/* Stops the thread (pending spans get one try within 2 s), writes the
 * last access lines, frees everything. NULL is fine. */
void kp_telemetry_free(struct kp_telemetry *t);
/* The router's trace sink (struct kp_trace_sink): any thread, never blocks. */
void kp_telemetry_submit(void *t, struct kp_span_set *spans, struct kp_access_record *access);
/* SIGHUP: reopen the access log file (any thread; NULL is fine). */
void kp_telemetry_reopen(struct kp_telemetry *t);
void kp_telemetry_get_stats(struct kp_telemetry *t, struct kp_telemetry_stats *st);
/* One turn of the thread's loop (tests drive it without a thread). */
void kp_telemetry_poll(struct kp_telemetry *t, bool stopping);
/* From the configuration: n->telemetry and n->router.trace, when an OTLP
 * endpoint or an access log is set (before the workers start). KP_EIO:
 * the access log cannot be opened. kp_telemetry_close: after the workers
 * and the main loop are done. */
int kp_telemetry_open(struct kp_node *n, char *errmsg, size_t errlen);
void kp_telemetry_close(struct kp_node *n);
/* usage.c: recent usage events in memory (GET /admin/v1/usage/recent). */
struct kp_usage_log *kp_usage_log_new(void);
void kp_usage_log_free(struct kp_usage_log *l);
/* Keep the encoded event (kp_usage_event_encode) of @len bytes at @enc
 * (any thread). */
void kp_usage_log_record(struct kp_usage_log *l, const void *enc, size_t len);
/* The last @limit events, oldest first, as a JSON array. */
json_t *kp_usage_log_recent(struct kp_usage_log *l, size_t limit);

/* metering.c: the usage spool and shipper of every node, and the meter
 * store of a meter node (docs/meter.md). */
struct kp_metering;
/* The largest sealed segment this node's settings can produce. */
size_t kp_metering_segment_max(const struct kp_config *cfg);
/* Open the spool (before the workers start). KP_ECONFIG for a node name
 * too long for segment headers. */
int kp_metering_open(struct kp_node *n, char *errmsg, size_t errlen);
/* Start shipping and the 1 s tick (main loop running). */
int kp_metering_start(struct kp_node *n, char *errmsg, size_t errlen);
/* Close the tick's handle (when the node stops). */
void kp_metering_stop_timer(struct kp_node *n);
/* Stop shipping, seal the spool, close the store: after the workers and
 * the main loop's pending work are done. */
void kp_metering_close(struct kp_node *n);
/* The router's usage sink: the recent log and the spool. */
void kp_metering_record(void *node, const struct kp_usage_event *ev);
bool kp_metering_accepting(void *node);
/* This node's meter store (opened now if the registry has just named this
 * node a meter), NULL when it is not a meter. Main loop only. */
struct kp_meter_store *kp_metering_store(struct kp_node *n);
/* The control address of a meter other than this node; false when none. */
bool kp_metering_find_meter(struct kp_node *n, char *control, size_t len);
/* POST /internal/v1/segments (cluster secret checked by the caller). */
void kp_metering_ingest(struct kp_node *n, struct kp_http_exchange *ex,
                        const struct kp_http_request *req, const char *rid);

/* sweeper.c: the leader's periodic housekeeping (retiring secrets whose
 * grace period ended); it starts and stops the alerts too. */
void kp_sweeper_start(struct kp_node *n);
void kp_sweeper_stop(struct kp_node *n);

/* alerts.c: the alert rules evaluated on the leader, their record in the
 * registry and their delivery to webhooks (docs/alerts.md). Stop closes
 * the timer; the state goes once the calls in flight have answered. */
void kp_alerts_start(struct kp_node *n);
void kp_alerts_stop(struct kp_node *n);
/* On the leader: whether @key's traffic over the last minute, summed over
 * the members at the last evaluation, is troubled (canary_rules.c); false
 * when not known. */
bool kp_alerts_key_troubled(struct kp_node *n, const char *key);
/* canary.c: the leader's key probes (docs/health.md). */
void kp_canary_start(struct kp_node *n);
void kp_canary_stop(struct kp_node *n);
/* GET /internal/v1/health (cluster secret checked by the caller): this
 * node's spool and per-key attempt outcomes, for the leader's rules. */
void kp_alerts_report(struct kp_node *n, struct kp_http_exchange *ex, const char *rid);

/* admin.c: /admin/v1/... (docs/control-api.md). Called by the control
 * handler on the main loop with the request id already chosen. */
void kp_admin_handle(struct kp_node *n, struct kp_http_exchange *ex,
                     const struct kp_http_request *req, const char *rid);

/* forward.c: node-to-node HTTP calls from the main loop (libcurl on the
 * threadpool). The callback runs on the loop; @res is valid during it. */
#define KP_CALL_HEADER_MAX 128
#define KP_CALL_EXTRA_MAX  6
struct kp_call_result {
    long status;        /* 0 when the peer could not be reached (see error) */
    struct kp_buf body; /* NUL-terminated */
    char content_type[KP_CALL_HEADER_MAX];
    char etag[KP_CALL_HEADER_MAX];
    char retry_after[KP_CALL_HEADER_MAX];
    char allow[KP_CALL_HEADER_MAX];
    /* X-Keyplane-* answer headers (a snapshot's checksum, index, cluster):
     * the lower-case name and the value of the first KP_CALL_EXTRA_MAX. */
    struct {
        char name[64];
        char value[KP_CALL_HEADER_MAX];
    } extra[KP_CALL_EXTRA_MAX];
    unsigned n_extra;
    char error[256];
};
typedef void (*kp_call_cb)(void *arg, const struct kp_call_result *res);
/* @headers: NULL-terminated "Name: value" lines (copied; wipe yours after).
 * @body (copied) may be NULL. KP_OK, or KP_ENOMEM with no callback. */
int kp_call_start(uv_loop_t *loop, const char *method, const char *url, const char *const *headers,
                  const void *body, size_t body_len, long timeout_ms, kp_call_cb cb, void *arg);
/* The same to another node's control port (a URL from kp_node_peer_url):
 * over https it verifies the peer against the cluster CA and presents this
 * node's certificate (kp_call_set_tls), where kp_call_start uses the
 * system's CAs (webhooks). */
int kp_call_start_peer(uv_loop_t *loop, const char *method, const char *url,
                       const char *const *headers, const void *body, size_t body_len,
                       long timeout_ms, kp_call_cb cb, void *arg);
/* Calls to https:// URLs verify the peer against @ca_file and present
 * @cert_file/@key_file (tls.c sets it once, before any call; the strings
 * must outlive every call). kp_call_https: whether it was set. */
void kp_call_set_tls(const char *ca_file, const char *cert_file, const char *key_file);
bool kp_call_https(void);

/* tls.c (docs/operations.md, "TLS"): the listeners' context from the
 * configuration, files checked (before the runtime starts; KP_ECONFIG with
 * a message naming the setting), and the TLS of calls to other nodes;
 * SIGHUP's reload (keeps the old context when the new files are bad);
 * freeing the context after the listeners closed. */
int kp_node_tls_open(struct kp_node *n, char *errmsg, size_t errlen);
void kp_node_tls_reload(struct kp_node *n);
void kp_node_tls_close(struct kp_runtime *rt);
/* "https://CONTROL/PATH" when this node runs tls.control (so every node
 * does), else "http://CONTROL/PATH". KP_ETOOBIG when it does not fit. */
int kp_node_peer_url(char *out, size_t len, const char *control, const char *path);

/* The control address of member @node_id from the published registry view;
 * false when unknown. */
bool kp_node_member_control(struct kp_node *n, uint64_t node_id, char *out, size_t len);

/* forward.c: relay this request to the leader's control listener and answer
 * with what it answered (status, body, Content-Type, ETag, Retry-After).
 * With no known leader, or when the request was already forwarded once
 * (X-Keyplane-Forwarded), answers 503 with Retry-After: 1. */
void kp_forward_to_leader(struct kp_node *n, struct kp_http_exchange *ex,
                          const struct kp_http_request *req, const char *rid);

/* forward.c: the same to the node whose control listener is @control;
 * @to ("leader", "meter", a static string) names it in messages. */
void kp_forward_to(struct kp_node *n, struct kp_http_exchange *ex,
                   const struct kp_http_request *req, const char *rid, const char *control,
                   const char *to);

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
void kp_admin_refused(struct kp_http_exchange *ex, const char *rid,
                      const struct kp_fsm_result *res);

/* cluster.c: /internal/v1/ (join, raft status), authenticated by the
 * cluster secret. */
void kp_internal_handle(struct kp_node *n, struct kp_http_exchange *ex,
                        const struct kp_http_request *req, const char *rid);

/* cluster.c: GET /admin/v1/cluster, POST /admin/v1/members,
 * PUT /admin/v1/members/{name}/role, DELETE /admin/v1/members/{name},
 * POST /admin/v1/cluster/transfer. admin.c calls it after authenticating
 * @who and checking the permission (GET: read_registry; others: change);
 * writes arrive here only on the leader. */
void kp_cluster_admin(struct kp_node *n, struct kp_http_exchange *ex,
                      const struct kp_http_request *req, const char *rid,
                      const struct kp_admin_caller *who);

#endif

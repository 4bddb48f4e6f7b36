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

#endif

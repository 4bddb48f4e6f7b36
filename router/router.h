/* router: the request path behind the gateway listener.
 *
 * One struct kp_router per worker loop. It reads the registry only through
 * the views raftstore publishes (no locks, no waiting for consensus), opens
 * provider secrets with the master key, calls providers through its own
 * upstream client, and hands one usage event per call to the usage sink.
 * docs/router.md describes the behaviour apps see. */
#ifndef KP_ROUTER_H
#define KP_ROUTER_H

#include <stdbool.h>
#include <uv.h>

#include "core/core.h"
#include "meter/meter.h"
#include "raftstore/raftstore.h"

/* Where usage events go. @record is called from worker threads: it must be
 * thread-safe and must not block. */
struct kp_usage_sink {
    void (*record)(void *arg, const struct kp_usage_event *ev);
    /* May be NULL. False while calls must be refused because their usage
     * could not be recorded (the spool is full and set to refuse): the
     * gateway answers 503. */
    bool (*accepting)(void *arg);
    void *arg;
};

/* Where a router reports what real traffic taught it about a key (an
 * upstream 401: invalid; out of quota: quota_exhausted), so that the
 * whole cluster stops using it. Called from worker threads: thread-safe and
 * non-blocking. @status is enum kp_health_status. */
struct kp_health_sink {
    /* @key_version: the key entity's version the call used; a report about
     * a key that changed since (a new secret) is dropped. */
    void (*report)(void *arg, const char *key_id, uint64_t key_version, int status,
                   const char *error_class);
    void *arg;
};

/* What every worker's router shares, owned by the daemon and valid until
 * every router is closed. */
struct kp_router_shared {
    struct kp_view_slot *views;
    const char *node_name;
    const struct kp_seal_kek *kek;      /* opens sealed provider secrets */
    const struct kp_seal_kek *prev_kek; /* during a rotation, or NULL */
    struct kp_usage_sink usage;
    struct kp_health_sink health;
};

struct kp_router;

int kp_router_new(struct kp_router **out, uv_loop_t *loop, const struct kp_router_shared *shared,
                  char *errmsg, size_t errlen);
/* Calls in flight are cancelled; @cb runs once everything is freed. */
void kp_router_close(struct kp_router *r, void (*cb)(void *arg), void *arg);

/* The gateway listener's handler (@router is the struct kp_router *). */
void kp_router_handle(struct kp_http_exchange *ex, const struct kp_http_request *req, void *router);

#endif

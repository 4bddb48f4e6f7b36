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

/* --- traces and the access log (trace.c; docs/observability.md) ---
 *
 * Every gateway call carries a W3C trace context (the app's traceparent,
 * or a new trace); each upstream attempt sends the provider a traceparent
 * naming the attempt's own span. At the end of a call the router builds,
 * for the sink, the call's spans (one server span, one client span per
 * attempt) when the trace is kept, and its access log record. */

/* One line of the access log: what the usage event says, and a little
 * more. */
struct kp_access_record {
    struct kp_access_record *next; /* the sink's (a queue) */
    struct kp_usage_event ev;
    const char *route; /* static: "/v1/chat/completions", ... */
    unsigned attempts; /* upstream attempts made, retries included */
    char budget[200];  /* "policy/budget" that refused the call, "" */
};

/* The access log line of @r: one JSON object and a newline, appended to
 * @out (redacted like a log line). KP_ENOMEM. */
int kp_access_record_line(const struct kp_access_record *r, struct kp_buf *out);

/* Where a router hands each call's telemetry. @submit is called from
 * worker threads (thread-safe, never blocking) and takes @spans and
 * @access whatever happens (either may be NULL): it frees them with
 * kp_span_set_free and kp_free. NULL @submit: nothing is built. */
struct kp_trace_sink {
    void (*submit)(void *arg, struct kp_span_set *spans, struct kp_access_record *access);
    void *arg;
    bool spans;          /* build spans (an OTLP endpoint is set) */
    bool access_log;     /* build access records */
    double sample_ratio; /* traces without a parent: the share kept */
};

/* Whether a trace is kept (tail decision, at the end of the call): when
 * its head was sampled (the app's sampled flag, else the ratio), and
 * always when the call @failed in any way (an error class, or an attempt
 * that failed before another served). */
bool kp_trace_keep(bool head_sampled, bool failed);

/* --- the node's budget ledger (ledger.c; docs/budgets.md) ---
 *
 * What this node holds of every budget's grant, shared by the workers
 * (which reserve each call's worst case against it and settle the actual
 * cost) and the node's lease client (which reports settled spend and asks
 * for grants in one budget_lease command at a time). Thread-safe. */
#define KP_LEDGER_POLICY_MAX 128
#define KP_LEDGER_BUDGET_MAX 64

struct kp_budget_ledger;
struct kp_ledger_slot;

/* @need_cb (any thread, may be NULL) is called when a worker needs a
 * grant now: the lease client should send without waiting for its tick. */
struct kp_budget_ledger *kp_budget_ledger_new(void (*need_cb)(void *arg), void *arg);
void kp_budget_ledger_free(struct kp_budget_ledger *l);

/* One budget_lease command's items, and the slots they came from. */
struct kp_lease_batch {
    struct kp_lease_item items[KP_LEASE_ITEMS_MAX];
    struct kp_ledger_slot *slots[KP_LEASE_ITEMS_MAX];
    unsigned n;
};

/* Fill @b with every slot that has settles to report, a grant to ask for
 * or one to give back (@final: give back every grant, ask for nothing:
 * the node is stopping). Those slots are then "in flight" until
 * kp_budget_ledger_answer or _unsend. Returns b->n. */
unsigned kp_budget_ledger_build(struct kp_budget_ledger *l, int64_t now_ms, bool final,
                                struct kp_lease_batch *b);
/* Item @i of @b was applied: @g is what the state machine answered. */
void kp_budget_ledger_answer(struct kp_budget_ledger *l, struct kp_lease_batch *b, unsigned i,
                             const struct kp_lease_grant *g);
/* Item @i of @b will not be sent again (refused): its settles go back to
 * be reported in the next command. */
void kp_budget_ledger_unsend(struct kp_budget_ledger *l, struct kp_lease_batch *b, unsigned i);
/* At start: the registry says this node holds @grant of the budget's
 * window @window (of definition @def, copied), left by an earlier process
 * of this node (a crash). It is reported as spent in the first command,
 * never reused. */
void kp_budget_ledger_adopt(struct kp_budget_ledger *l, const char *policy, const char *budget,
                            const struct kp_budget_window_def *def, bool hard, int64_t window,
                            kp_nanousd grant);
/* Item @i of @b names a budget the registry no longer has: forget the
 * slot (a budget of that name made later starts afresh). */
void kp_budget_ledger_forget(struct kp_budget_ledger *l, struct kp_lease_batch *b, unsigned i);
/* After the answers of a command: wake the workers' waiting calls. */
void kp_budget_ledger_answered(struct kp_budget_ledger *l);
/* A worker asked for a grant since the last build. */
bool kp_budget_ledger_urgent(struct kp_budget_ledger *l);
/* Anything held or unreported (the stop waits for it to be given back). */
bool kp_budget_ledger_holds(struct kp_budget_ledger *l);

/* What this node holds of one budget, for display. */
struct kp_ledger_local {
    int64_t window;
    kp_nanousd grant, reserved, unreported;
    double rate_per_s; /* nano-USD reserved per second, smoothed */
};
void kp_budget_ledger_local(struct kp_budget_ledger *l, const char *policy, const char *budget,
                            struct kp_ledger_local *out);

/* What every worker's router shares, owned by the daemon and valid until
 * every router is closed. */
struct kp_router_shared {
    struct kp_view_slot *views;
    const char *node_name;
    const struct kp_seal_kek *kek;      /* opens sealed provider secrets */
    const struct kp_seal_kek *prev_kek; /* during a rotation, or NULL */
    struct kp_usage_sink usage;
    struct kp_health_sink health;
    struct kp_budget_ledger *budgets; /* NULL: budgets are not enforced */
    struct kp_trace_sink trace;       /* spans and access log records */
    /* Calls in flight on this node beyond which new ones are refused with
     * 503 overloaded (each holds its buffers until it ends); 0: no cap. */
    uint32_t max_inflight;
};

struct kp_router;

int kp_router_new(struct kp_router **out, uv_loop_t *loop, const struct kp_router_shared *shared,
                  char *errmsg, size_t errlen);
/* Calls in flight are cancelled; @cb runs once everything is freed. */
void kp_router_close(struct kp_router *r, void (*cb)(void *arg), void *arg);

/* The gateway listener's handler (@router is the struct kp_router *). */
void kp_router_handle(struct kp_http_exchange *ex, const struct kp_http_request *req, void *router);

#endif

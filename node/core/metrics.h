/* Process-wide metrics in Prometheus text format.
 *
 * Writers use relaxed atomics and never lock, so the request path can count
 * freely from any worker thread. Registration (which allocates) happens at
 * start-up or on first use of a (listener, route) pair, under a lock. */
#ifndef KP_CORE_METRICS_H
#define KP_CORE_METRICS_H

#include <stdint.h>

#include "alloc.h"

/* Count a finished HTTP exchange: listener and route are static strings. */
void kp_metrics_http_observe(const char *listener, const char *route, int status,
                             uint64_t duration_us);
void kp_metrics_http_conn_delta(const char *listener, int delta);

/* A named counter/gauge registered once; returns a stable pointer. */
struct kp_metric;
struct kp_metric *kp_metric_counter(const char *name, const char *help);
struct kp_metric *kp_metric_gauge(const char *name, const char *help);
void kp_metric_add(struct kp_metric *m, int64_t v);
void kp_metric_set(struct kp_metric *m, int64_t v);
int64_t kp_metric_value(const struct kp_metric *m);

/* Render everything (build info included) as Prometheus text. */
int kp_metrics_render(struct kp_buf *out);
/* Forget everything (tests). */
void kp_metrics_reset(void);

#endif

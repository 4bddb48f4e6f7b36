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

/* A counter with 1 to 4 labels, registered once (the same name returns the
 * same family). At most @max_series label sets are kept; after that every
 * new one counts under the values "overflow", so cardinality stays bounded
 * whatever outside input the values come from. Values are cut at 64 bytes
 * and escaped when rendered. Adding is lock-free for a label set seen
 * before; a new set takes the registration lock once. NULL when out of
 * room (adding to NULL does nothing). */
struct kp_metric_family;
struct kp_metric_family *kp_metric_family_counter(const char *name, const char *help,
                                                  unsigned nlabels, const char *const labels[],
                                                  unsigned max_series);
void kp_metric_family_add(struct kp_metric_family *f, const char *const values[], int64_t delta);
/* The same with a gauge's value set rather than counted. */
struct kp_metric_family *kp_metric_family_gauge(const char *name, const char *help,
                                                unsigned nlabels, const char *const labels[],
                                                unsigned max_series);
void kp_metric_family_set(struct kp_metric_family *f, const char *const values[], int64_t v);
/* The same as a histogram of durations, rendered in seconds with the
 * buckets of keyplane_http_request_duration_seconds (0.5 ms to 60 s); its
 * value in kp_metric_family_each is the sum in microseconds. */
struct kp_metric_family *kp_metric_family_histogram(const char *name, const char *help,
                                                    unsigned nlabels, const char *const labels[],
                                                    unsigned max_series);
void kp_metric_family_observe_us(struct kp_metric_family *f, const char *const values[],
                                 uint64_t us);
/* Call @fn with the label values and the value of every series of the
 * family named @name that has one (the "overflow" series once it counted),
 * in the order they were first seen. Nothing when there is no such
 * family. Any thread; a series added meanwhile may or may not be seen. */
void kp_metric_family_each(const char *name,
                           void (*fn)(void *arg, const char *const values[], int64_t value),
                           void *arg);

/* Render everything (build info included) as Prometheus text. */
int kp_metrics_render(struct kp_buf *out);
/* Forget everything (tests). */
void kp_metrics_reset(void);

#endif

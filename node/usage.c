/* The usage events of recent calls, kept in memory beside the spool (which
 * is the durable record, metering.c): a bounded ring the router workers
 * append to (through kp_metering_record) and the control API reads
 * (GET /admin/v1/usage/recent, read_usage). A mutex guards the ring; a
 * worker holds it for one struct copy, a reader for a memcpy of what it
 * reads (rendering happens outside). */
#include <pthread.h>
#include <string.h>

#include "node.h"

#define RING 10000

struct kp_usage_log {
    pthread_mutex_t mu;
    struct kp_usage_event ev[RING];
    uint64_t count; /* events ever recorded */
};

struct kp_usage_log *kp_usage_log_new(void)
{
    struct kp_usage_log *l = kp_calloc(1, sizeof(*l));
    if (l != NULL)
        pthread_mutex_init(&l->mu, NULL);
    return l;
}

void kp_usage_log_free(struct kp_usage_log *l)
{
    if (l == NULL)
        return;
    pthread_mutex_destroy(&l->mu);
    kp_free(l);
}

void kp_usage_log_record(void *arg, const struct kp_usage_event *ev)
{
    struct kp_usage_log *l = arg;
    pthread_mutex_lock(&l->mu);
    l->ev[l->count % RING] = *ev;
    l->count++;
    pthread_mutex_unlock(&l->mu);
}

static json_t *event_json(const struct kp_usage_event *e)
{
    return json_pack("{s:I,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:I,s:I,s:I,s:b,s:I,s:I,"
                     "s:I,s:i,s:s,s:i,s:b,s:s,s:s}",
                     "time_ms", (json_int_t)e->time_ms, "request_id", e->request_id, "node",
                     e->node, "key_id", e->key_id, "pool", e->pool, "tenant", e->tenant, "project",
                     e->project, "feature", e->feature, "provider", e->provider, "model_requested",
                     e->model_requested, "model_served", e->model_served, "tokens_in",
                     (json_int_t)e->tokens_in, "tokens_out", (json_int_t)e->tokens_out,
                     "tokens_cached", (json_int_t)e->tokens_cached, "tokens_estimated",
                     e->tokens_estimated, "cost_nanousd", (json_int_t)e->cost, "ttfb_us",
                     (json_int_t)e->ttfb_us, "total_us", (json_int_t)e->total_us, "status",
                     (int)e->status, "error_class", e->error_class, "retries", (int)e->retries,
                     "streamed", e->streamed, "kind", e->kind, "trace_id", e->trace_id);
}

/* The events are copied out under the lock (a memcpy) and rendered
 * after it, so that workers recording usage never wait on JSON work. */
json_t *kp_usage_log_recent(struct kp_usage_log *l, size_t limit)
{
    struct kp_usage_event *copy = kp_malloc((limit ? limit : 1) * sizeof(*copy));
    json_t *out = json_array();
    if (copy == NULL || out == NULL) {
        kp_free(copy);
        json_decref(out);
        return NULL;
    }
    pthread_mutex_lock(&l->mu);
    uint64_t n = l->count < RING ? l->count : RING;
    if (limit < n)
        n = limit;
    for (uint64_t i = 0; i < n; i++)
        copy[i] = l->ev[(l->count - n + i) % RING];
    pthread_mutex_unlock(&l->mu);
    for (uint64_t i = 0; i < n; i++)
        json_array_append_new(out, event_json(&copy[i]));
    kp_free(copy);
    return out;
}

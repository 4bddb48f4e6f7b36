/* The usage events of recent calls, kept in memory beside the spool (which
 * is the durable record, metering.c): a bounded ring the router workers
 * append to (through kp_metering_record) and the control API reads
 * (GET /admin/v1/usage/recent, read_usage). The ring keeps events as the
 * spool does, msgpack-encoded: about 300 bytes each in a slot of its own,
 * not the 3 KiB of a decoded event, so 10,000 of them take 5 MiB and a
 * worker copies 300 bytes. A mutex guards the ring; a worker holds it for
 * that copy, a reader for a copy of what it reads (decoding and rendering
 * happen outside). */
#include <pthread.h>
#include <string.h>

#include "node.h"

#define RING       10000
#define SLOT_BYTES 488 /* an event longer than this lives on the heap */

struct slot {
    uint32_t len;
    uint8_t *big; /* the event when longer than SLOT_BYTES */
    uint8_t bytes[SLOT_BYTES];
};

struct kp_usage_log {
    pthread_mutex_t mu;
    struct slot ring[RING];
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
    for (size_t i = 0; i < RING; i++)
        kp_free(l->ring[i].big);
    pthread_mutex_destroy(&l->mu);
    kp_free(l);
}

void kp_usage_log_record(struct kp_usage_log *l, const void *enc, size_t len)
{
    uint8_t *big = NULL;
    if (len > UINT32_MAX)
        return;
    if (len > SLOT_BYTES) {
        big = kp_malloc(len);
        if (big == NULL)
            return; /* the spool still has it */
        memcpy(big, enc, len);
    }
    pthread_mutex_lock(&l->mu);
    struct slot *s = &l->ring[l->count % RING];
    uint8_t *old = s->big;
    s->big = big;
    s->len = (uint32_t)len;
    if (big == NULL)
        memcpy(s->bytes, enc, len);
    l->count++;
    pthread_mutex_unlock(&l->mu);
    kp_free(old);
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

/* The events' bytes are copied out under the lock and decoded and
 * rendered after it, so that workers recording usage never wait on that. */
json_t *kp_usage_log_recent(struct kp_usage_log *l, size_t limit)
{
    json_t *out = json_array();
    struct kp_buf bytes;
    size_t *ends = kp_malloc((limit ? limit : 1) * sizeof(*ends));
    kp_buf_init(&bytes);
    if (out == NULL || ends == NULL)
        goto err_nomem;
    pthread_mutex_lock(&l->mu);
    uint64_t n = l->count < RING ? l->count : RING;
    if (limit < n)
        n = limit;
    int rc = KP_OK;
    for (uint64_t i = 0; i < n && rc == KP_OK; i++) {
        const struct slot *s = &l->ring[(l->count - n + i) % RING];
        rc = kp_buf_append(&bytes, s->big ? s->big : s->bytes, s->len);
        ends[i] = bytes.len;
    }
    pthread_mutex_unlock(&l->mu);
    if (rc != KP_OK)
        goto err_nomem;
    struct kp_usage_event *ev = kp_malloc(sizeof(*ev));
    if (ev == NULL)
        goto err_nomem;
    for (uint64_t i = 0, at = 0; i < n; at = ends[i++]) {
        char why[200];
        size_t used;
        /* Encoded here by kp_usage_event_encode: it decodes. */
        if (kp_usage_event_decode(bytes.data + at, ends[i] - at, ev, &used, why, sizeof(why)) ==
            KP_OK)
            json_array_append_new(out, event_json(ev));
    }
    kp_free(ev);
    kp_free(ends);
    kp_buf_free(&bytes);
    return out;

err_nomem:
    json_decref(out);
    kp_free(ends);
    kp_buf_free(&bytes);
    return NULL;
}

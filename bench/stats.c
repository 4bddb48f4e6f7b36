/* The figures of a run: one set per generator thread, merged at the end, so
 * that recording never takes a lock. Pure. */
#include <string.h>

#include "bench.h"
#include "core/core.h"

/* An hour in nanoseconds: the longest latency kept to three digits; longer
 * ones still count, at this value, with the true maximum beside them. */
#define HIGHEST_NS     (3600ull * 1000 * 1000 * 1000)
#define HIGHEST_EVENTS (1ull << 32)

static const char *const error_names[KP_BENCH_N_ERRORS] = {
    [KP_BENCH_ERR_CONNECT] = "connect", [KP_BENCH_ERR_WRITE] = "write",
    [KP_BENCH_ERR_READ] = "read",       [KP_BENCH_ERR_CLOSED] = "closed",
    [KP_BENCH_ERR_PARSE] = "parse",     [KP_BENCH_ERR_TIMEOUT] = "timeout",
    [KP_BENCH_ERR_UNSENT] = "unsent",
};

const char *kp_bench_error_name(int kind)
{
    if (kind < 0 || kind >= KP_BENCH_N_ERRORS)
        return "unknown";
    return error_names[kind];
}

int kp_bench_stats_init(struct kp_bench_stats *s)
{
    memset(s, 0, sizeof(*s));
    struct kp_bench_hist *time_hists[] = {&s->latency, &s->ttfb, &s->first_event, &s->stream_total,
                                          &s->lag};
    for (size_t i = 0; i < sizeof(time_hists) / sizeof(time_hists[0]); i++)
        if (kp_bench_hist_init(time_hists[i], HIGHEST_NS) != KP_OK)
            goto err;
    if (kp_bench_hist_init(&s->events, HIGHEST_EVENTS) != KP_OK)
        goto err;
    return KP_OK;
err:
    kp_bench_stats_close(s);
    return KP_ENOMEM;
}

void kp_bench_stats_close(struct kp_bench_stats *s)
{
    kp_bench_hist_close(&s->latency);
    kp_bench_hist_close(&s->ttfb);
    kp_bench_hist_close(&s->first_event);
    kp_bench_hist_close(&s->stream_total);
    kp_bench_hist_close(&s->events);
    kp_bench_hist_close(&s->lag);
}

int kp_bench_stats_merge(struct kp_bench_stats *dst, const struct kp_bench_stats *src)
{
    int rv = kp_bench_hist_merge(&dst->latency, &src->latency);
    rv |= kp_bench_hist_merge(&dst->ttfb, &src->ttfb);
    rv |= kp_bench_hist_merge(&dst->first_event, &src->first_event);
    rv |= kp_bench_hist_merge(&dst->stream_total, &src->stream_total);
    rv |= kp_bench_hist_merge(&dst->events, &src->events);
    rv |= kp_bench_hist_merge(&dst->lag, &src->lag);
    if (rv != KP_OK)
        return KP_EINVAL;
    dst->completed += src->completed;
    dst->streams += src->streams;
    for (size_t i = 0; i < 600; i++)
        dst->status[i] += src->status[i];
    for (size_t i = 0; i < KP_BENCH_N_ERRORS; i++)
        dst->errors[i] += src->errors[i];
    dst->waited += src->waited;
    dst->bytes_sent += src->bytes_sent;
    dst->bytes_received += src->bytes_received;
    dst->warmup_completed += src->warmup_completed;
    if (src->last_done_ns > dst->last_done_ns)
        dst->last_done_ns = src->last_done_ns;
    return KP_OK;
}

uint64_t kp_bench_stats_errors(const struct kp_bench_stats *s)
{
    uint64_t n = 0;
    for (size_t i = 0; i < KP_BENCH_N_ERRORS; i++)
        n += s->errors[i];
    return n;
}

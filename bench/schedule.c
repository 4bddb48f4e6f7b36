/* The open-loop schedule (see schedule.h). Due times are computed from the
 * request's index every time rather than accumulated, so rounding never
 * drifts over a long run. */
#include "schedule.h"

#include <math.h>

void kp_bench_sched_init(struct kp_bench_sched *s, double rate, uint64_t start_ns, unsigned stride,
                         unsigned offset, uint64_t limit, uint64_t end_ns)
{
    s->start_ns = start_ns;
    s->interval_ns = 1e9 / rate;
    s->stride = stride ? stride : 1;
    s->offset = offset;
    s->next = 0;
    s->limit = limit;
    s->end_ns = end_ns;
}

uint64_t kp_bench_sched_time(const struct kp_bench_sched *s, uint64_t global)
{
    return s->start_ns + (uint64_t)((double)global * s->interval_ns);
}

static uint64_t global_of(const struct kp_bench_sched *s, uint64_t local)
{
    return local * s->stride + s->offset;
}

uint64_t kp_bench_sched_next_time(const struct kp_bench_sched *s)
{
    uint64_t g = global_of(s, s->next);
    if (s->limit != KP_BENCH_NEVER && g >= s->limit)
        return KP_BENCH_NEVER;
    uint64_t t = kp_bench_sched_time(s, g);
    if (t >= s->end_ns)
        return KP_BENCH_NEVER;
    return t;
}

bool kp_bench_sched_take(struct kp_bench_sched *s, uint64_t now_ns, uint64_t *global,
                         uint64_t *due_ns)
{
    uint64_t t = kp_bench_sched_next_time(s);
    if (t == KP_BENCH_NEVER || t > now_ns)
        return false;
    *global = global_of(s, s->next);
    *due_ns = t;
    s->next++;
    return true;
}

/* Global requests due at or before @horizon (at least one, since the caller
 * checked that this thread's next one is due), capped by the limit. */
static uint64_t due_by(const struct kp_bench_sched *s, uint64_t horizon)
{
    double est = floor((double)(horizon - s->start_ns) / s->interval_ns) + 1;
    if (s->limit != KP_BENCH_NEVER && est >= (double)s->limit)
        return s->limit;
    uint64_t due = (uint64_t)est;
    /* The estimate is off by at most one either way from rounding. */
    while (due > 0 && kp_bench_sched_time(s, due - 1) > horizon)
        due--;
    while (kp_bench_sched_time(s, due) <= horizon && (s->limit == KP_BENCH_NEVER || due < s->limit))
        due++;
    return due;
}

uint64_t kp_bench_sched_backlog(const struct kp_bench_sched *s, uint64_t now_ns)
{
    if (kp_bench_sched_next_time(s) > now_ns)
        return 0;
    uint64_t horizon = now_ns < s->end_ns ? now_ns : s->end_ns - 1;
    uint64_t due = due_by(s, horizon);
    /* This thread's share: the global indexes offset, offset + stride, ... */
    uint64_t mine = due > s->offset ? (due - s->offset + s->stride - 1) / s->stride : 0;
    return mine > s->next ? mine - s->next : 0;
}

bool kp_bench_sched_done(const struct kp_bench_sched *s)
{
    return kp_bench_sched_next_time(s) == KP_BENCH_NEVER;
}

uint64_t kp_bench_sched_count_before(double rate, uint64_t ns_after_start)
{
    return (uint64_t)ceil((double)ns_after_start * rate / 1e9);
}

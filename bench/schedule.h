/* The open-loop schedule: request i of a run at R requests per second is due
 * at start + i / R, whatever happened to the requests before it.
 *
 * That is the point of an open-loop generator. A closed-loop one sends the
 * next request only when an earlier one returned, so when the server stalls
 * it stops asking, and the few requests it did send are all the stall ever
 * costs in the percentiles ("coordinated omission"). Here a request that
 * could not be sent on time -- because every pooled connection was still
 * waiting -- stays due, is handed out as soon as a connection frees up, and
 * its latency is counted from the time in the schedule, not from the time it
 * finally left.
 *
 * With several generator threads, thread k of T takes the global requests
 * k, k + T, k + 2T, ...: the threads together keep exactly the one schedule.
 * Pure: the caller passes the time in. */
#ifndef KP_BENCH_SCHEDULE_H
#define KP_BENCH_SCHEDULE_H

#include <stdbool.h>
#include <stdint.h>

#define KP_BENCH_NEVER UINT64_MAX

struct kp_bench_sched {
    uint64_t start_ns;  /* when global request 0 is due */
    double interval_ns; /* 1e9 / rate: between two global requests */
    uint64_t stride;    /* threads */
    uint64_t offset;    /* this thread's index */
    uint64_t next;      /* this thread's next request (local index) */
    uint64_t limit;     /* global requests in the run; KP_BENCH_NEVER: none */
    uint64_t end_ns;    /* nothing is due at or after this; KP_BENCH_NEVER */
};

/* One thread (@offset of @stride) of a schedule of @rate requests per second
 * that starts at @start_ns and ends after @limit global requests or at
 * @end_ns, whichever comes first. */
void kp_bench_sched_init(struct kp_bench_sched *s, double rate, uint64_t start_ns, unsigned stride,
                         unsigned offset, uint64_t limit, uint64_t end_ns);

/* When the global request @global is due. */
uint64_t kp_bench_sched_time(const struct kp_bench_sched *s, uint64_t global);

/* When this thread's next request is due; KP_BENCH_NEVER once all are taken. */
uint64_t kp_bench_sched_next_time(const struct kp_bench_sched *s);

/* If this thread's next request is due at @now_ns, hand it out: its global
 * index and due time go to *global and *due_ns. */
bool kp_bench_sched_take(struct kp_bench_sched *s, uint64_t now_ns, uint64_t *global,
                         uint64_t *due_ns);

/* Requests of this thread due at @now_ns and not yet handed out. */
uint64_t kp_bench_sched_backlog(const struct kp_bench_sched *s, uint64_t now_ns);

bool kp_bench_sched_done(const struct kp_bench_sched *s);

/* How many global requests are due before @ns_after_start (the warm-up's
 * share of a schedule at @rate): ceil(ns * rate / 1e9). */
uint64_t kp_bench_sched_count_before(double rate, uint64_t ns_after_start);

#endif

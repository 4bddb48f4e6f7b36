/* An HDR-style latency histogram: log-linear buckets with three significant
 * digits, so any recorded value is reported within 0.1% whatever its size,
 * from a nanosecond to an hour, in fixed memory and O(1) per record.
 *
 * Values below 2048 are counted exactly. Above that, each power of two is cut
 * into 1024 equal sub-buckets; a value shares its bucket with the values that
 * differ from it in the bits below the top eleven. A percentile is reported
 * as the highest value of its bucket (never below the true value, as in
 * HdrHistogram), clipped to the largest value recorded. Count, min, max and
 * mean are exact. Pure: no I/O, no clock, no threads. */
#ifndef KP_BENCH_HIST_H
#define KP_BENCH_HIST_H

#include <stddef.h>
#include <stdint.h>

struct kp_bench_hist {
    uint64_t *counts;
    size_t n_counts;
    uint64_t highest_trackable; /* larger values are counted here */
    uint64_t total;
    uint64_t min;
    uint64_t max;
    double sum;
};

/* Tracks values from 0 to @highest_trackable (at least 2048). Returns KP_OK
 * or KP_ENOMEM. */
int kp_bench_hist_init(struct kp_bench_hist *h, uint64_t highest_trackable);
void kp_bench_hist_close(struct kp_bench_hist *h);
void kp_bench_hist_reset(struct kp_bench_hist *h);

void kp_bench_hist_record(struct kp_bench_hist *h, uint64_t value);
/* Adds @src into @dst; both must have been made with the same range
 * (KP_EINVAL otherwise). */
int kp_bench_hist_merge(struct kp_bench_hist *dst, const struct kp_bench_hist *src);

/* The value at or below which @pct percent of the recorded values fall
 * (0 < pct <= 100); 0 when empty. */
uint64_t kp_bench_hist_percentile(const struct kp_bench_hist *h, double pct);
double kp_bench_hist_mean(const struct kp_bench_hist *h);

/* The bounds of the bucket that holds @value (tests and reports). */
uint64_t kp_bench_hist_lowest_equivalent(uint64_t value);
uint64_t kp_bench_hist_highest_equivalent(uint64_t value);

#endif

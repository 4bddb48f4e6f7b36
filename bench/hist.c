/* The HDR-style histogram (see hist.h for the layout).
 *
 * Index of a value v:
 *   v < 2048:  v itself (exact);
 *   otherwise: with m the position of v's top bit and s = m - 10, the value
 *              sits in sub-bucket v >> s (1024..2047) of the power of two
 *              2^m, and its index is 2048 + (s - 1) * 1024 + (v >> s) - 1024.
 * The indexes are contiguous, so the bucket of a value is one array slot and
 * walking the array in order walks the values in order. */
#include "hist.h"

#include <string.h>

#include "core/core.h"

#define SUB_BITS  11
#define SUB_COUNT (1u << SUB_BITS)       /* 2048: values counted exactly */
#define SUB_HALF  (1u << (SUB_BITS - 1)) /* 1024 sub-buckets per power of two */

static size_t index_of(uint64_t v)
{
    if (v < SUB_COUNT)
        return (size_t)v;
    unsigned top = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = top - (SUB_BITS - 1);
    return SUB_COUNT + (size_t)(shift - 1) * SUB_HALF + (size_t)((v >> shift) - SUB_HALF);
}

static uint64_t lowest_of_index(size_t i)
{
    if (i < SUB_COUNT)
        return i;
    size_t k = i - SUB_COUNT;
    unsigned shift = (unsigned)(k / SUB_HALF) + 1;
    return (uint64_t)(k % SUB_HALF + SUB_HALF) << shift;
}

static uint64_t highest_of_index(size_t i)
{
    if (i < SUB_COUNT)
        return i;
    unsigned shift = (unsigned)((i - SUB_COUNT) / SUB_HALF) + 1;
    return lowest_of_index(i) + ((uint64_t)1 << shift) - 1;
}

uint64_t kp_bench_hist_lowest_equivalent(uint64_t value)
{
    return lowest_of_index(index_of(value));
}

uint64_t kp_bench_hist_highest_equivalent(uint64_t value)
{
    return highest_of_index(index_of(value));
}

int kp_bench_hist_init(struct kp_bench_hist *h, uint64_t highest_trackable)
{
    memset(h, 0, sizeof(*h));
    if (highest_trackable < SUB_COUNT)
        highest_trackable = SUB_COUNT;
    /* Keep the top bucket's upper bound representable in 64 bits. */
    if (highest_trackable > ((uint64_t)1 << 62))
        highest_trackable = (uint64_t)1 << 62;
    h->n_counts = index_of(highest_trackable) + 1;
    h->counts = kp_calloc(h->n_counts, sizeof(*h->counts));
    if (h->counts == NULL)
        return KP_ENOMEM;
    h->highest_trackable = highest_trackable;
    h->min = UINT64_MAX;
    return KP_OK;
}

void kp_bench_hist_close(struct kp_bench_hist *h)
{
    kp_free(h->counts);
    h->counts = NULL;
    h->n_counts = 0;
}

void kp_bench_hist_reset(struct kp_bench_hist *h)
{
    memset(h->counts, 0, h->n_counts * sizeof(*h->counts));
    h->total = 0;
    h->min = UINT64_MAX;
    h->max = 0;
    h->sum = 0;
}

void kp_bench_hist_record(struct kp_bench_hist *h, uint64_t value)
{
    /* min, max and the mean keep the true value; only the bucket is capped. */
    uint64_t capped = value > h->highest_trackable ? h->highest_trackable : value;
    h->counts[index_of(capped)]++;
    h->total++;
    h->sum += (double)value;
    if (value < h->min)
        h->min = value;
    if (value > h->max)
        h->max = value;
}

int kp_bench_hist_merge(struct kp_bench_hist *dst, const struct kp_bench_hist *src)
{
    if (dst->n_counts != src->n_counts)
        return KP_EINVAL;
    for (size_t i = 0; i < src->n_counts; i++)
        dst->counts[i] += src->counts[i];
    dst->total += src->total;
    dst->sum += src->sum;
    if (src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
    return KP_OK;
}

uint64_t kp_bench_hist_percentile(const struct kp_bench_hist *h, double pct)
{
    if (h->total == 0)
        return 0;
    if (pct >= 100.0)
        return h->max;
    if (pct < 0.0)
        pct = 0.0;
    /* The rank of the value asked for, rounded to the nearest count as
     * HdrHistogram does, and at least the first value. */
    uint64_t rank = (uint64_t)(pct / 100.0 * (double)h->total + 0.5);
    if (rank == 0)
        rank = 1;
    uint64_t seen = 0;
    for (size_t i = 0; i < h->n_counts; i++) {
        seen += h->counts[i];
        if (seen >= rank) {
            uint64_t v = highest_of_index(i);
            return v > h->max ? h->max : v;
        }
    }
    return h->max;
}

double kp_bench_hist_mean(const struct kp_bench_hist *h)
{
    return h->total ? h->sum / (double)h->total : 0.0;
}

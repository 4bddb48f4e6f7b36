/* The latency sketch: DDSketch (Masson, Rim and Lee, VLDB 2019) over
 * non-negative integers, with a sparse store of integer counts.
 *
 * A value v >= 1 goes to bucket i = ceil(log(v) / log(gamma)), which holds
 * (gamma^(i-1), gamma^i]; reporting 2 gamma^i / (gamma + 1) for any value of
 * the bucket is off by at most (gamma - 1) / (gamma + 1) = alpha, relative.
 * The bucket index is the one floating-point step of the meter's pipeline:
 * log() on the same binary and C library gives the same index every time,
 * and the multiplier 1 / log(gamma) is a literal rather than computed, so
 * that no compiler folds it differently from the library. Everything else,
 * counts and merging, is integer arithmetic, hence exact and independent of
 * order.
 *
 * The store is a sorted array of (index, count). When it would hold more
 * than KP_SKETCH_MAX_BUCKETS buckets, the lowest ones are folded into the
 * lowest kept one. That too is independent of order: whatever the order of
 * adds and merges, the result keeps the KP_SKETCH_MAX_BUCKETS highest
 * indices ever seen, with every count from below them in the lowest. */
#include "meter/meter.h"

#include <math.h>
#include <string.h>

/* 1 / log((1 + 0.01) / (1 - 0.01)). */
#define INDEX_MULTIPLIER 0x1.8ffc9629d2370p+5
#define GAMMA            ((1.0 + KP_SKETCH_ALPHA) / (1.0 - KP_SKETCH_ALPHA))

static uint64_t sat_add(uint64_t a, uint64_t b)
{
    return b > KP_ROLLUP_COUNT_MAX - a ? KP_ROLLUP_COUNT_MAX : a + b;
}

void kp_sketch_init(struct kp_sketch *s)
{
    memset(s, 0, sizeof(*s));
}

void kp_sketch_free(struct kp_sketch *s)
{
    kp_free(s->buckets);
    kp_sketch_init(s);
}

int kp_sketch_reserve(struct kp_sketch *s, size_t n)
{
    if (n <= s->cap)
        return KP_OK;
    if (n > UINT32_MAX / 2)
        return KP_ENOMEM;
    size_t cap = s->cap ? s->cap : 4;
    while (cap < n)
        cap *= 2;
    struct kp_sketch_bucket *b = kp_realloc(s->buckets, cap * sizeof(*b));
    if (b == NULL)
        return KP_ENOMEM;
    s->buckets = b;
    s->cap = (uint32_t)cap;
    return KP_OK;
}

int32_t kp_sketch_index(uint64_t value)
{
    return (int32_t)ceil(log((double)value) * INDEX_MULTIPLIER);
}

double kp_sketch_bucket_value(int32_t index)
{
    return 2.0 * pow(GAMMA, index) / (GAMMA + 1.0);
}

/* Fold the lowest buckets into the lowest kept one. */
static void collapse(struct kp_sketch *s)
{
    if (s->n <= KP_SKETCH_MAX_BUCKETS)
        return;
    uint32_t drop = s->n - KP_SKETCH_MAX_BUCKETS;
    uint64_t folded = s->buckets[drop].count;
    for (uint32_t i = 0; i < drop; i++)
        folded = sat_add(folded, s->buckets[i].count);
    s->buckets[drop].count = folded;
    memmove(s->buckets, s->buckets + drop, KP_SKETCH_MAX_BUCKETS * sizeof(*s->buckets));
    s->n = KP_SKETCH_MAX_BUCKETS;
}

/* The position of the first bucket whose index is >= @index. */
static uint32_t lower_bound(const struct kp_sketch *s, int32_t index)
{
    uint32_t lo = 0, hi = s->n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (s->buckets[mid].index < index)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

int kp_sketch_add(struct kp_sketch *s, uint64_t value)
{
    if (value == 0) {
        s->zero = sat_add(s->zero, 1);
        s->count = sat_add(s->count, 1);
        return KP_OK;
    }
    int32_t index = kp_sketch_index(value);
    uint32_t at = lower_bound(s, index);
    if (at < s->n && s->buckets[at].index == index) {
        s->buckets[at].count = sat_add(s->buckets[at].count, 1);
    } else {
        if (kp_sketch_reserve(s, (size_t)s->n + 1) != KP_OK)
            return KP_ENOMEM;
        memmove(s->buckets + at + 1, s->buckets + at, (s->n - at) * sizeof(*s->buckets));
        s->buckets[at] = (struct kp_sketch_bucket){.index = index, .count = 1};
        s->n++;
        collapse(s);
    }
    s->count = sat_add(s->count, 1);
    return KP_OK;
}

/* Merge from the back into the reserved room, then slide the result to the
 * front (equal indices combine, so it may be shorter than n + src->n). */
int kp_sketch_merge(struct kp_sketch *dst, const struct kp_sketch *src)
{
    if (kp_sketch_reserve(dst, (size_t)dst->n + src->n) != KP_OK)
        return KP_ENOMEM;
    dst->zero = sat_add(dst->zero, src->zero);
    dst->count = sat_add(dst->count, src->count);
    if (src->n == 0)
        return KP_OK;
    struct kp_sketch_bucket *b = dst->buckets;
    int64_t i = (int64_t)dst->n - 1, j = (int64_t)src->n - 1;
    int64_t w = (int64_t)dst->n + src->n;
    while (j >= 0) {
        const struct kp_sketch_bucket *sb = &src->buckets[j];
        if (i >= 0 && b[i].index > sb->index) {
            b[--w] = b[i--];
        } else if (i >= 0 && b[i].index == sb->index) {
            b[--w] = (struct kp_sketch_bucket){sb->index, sat_add(b[i].count, sb->count)};
            i--;
            j--;
        } else {
            b[--w] = *sb;
            j--;
        }
    }
    while (i >= 0)
        b[--w] = b[i--];
    uint32_t n = dst->n + src->n - (uint32_t)w;
    memmove(b, b + w, n * sizeof(*b));
    dst->n = n;
    collapse(dst);
    return KP_OK;
}

double kp_sketch_quantile(const struct kp_sketch *s, double q)
{
    if (s->count == 0 || !(q >= 0.0 && q <= 1.0))
        return NAN;
    double rank = q * (double)(s->count - 1);
    if ((double)s->zero > rank)
        return 0.0;
    uint64_t running = s->zero;
    for (uint32_t i = 0; i < s->n; i++) {
        running = sat_add(running, s->buckets[i].count);
        if ((double)running > rank)
            return kp_sketch_bucket_value(s->buckets[i].index);
    }
    /* Only when counts saturated: the highest bucket. */
    return s->n ? kp_sketch_bucket_value(s->buckets[s->n - 1].index) : 0.0;
}

bool kp_sketch_equal(const struct kp_sketch *a, const struct kp_sketch *b)
{
    if (a->count != b->count || a->zero != b->zero || a->n != b->n)
        return false;
    for (uint32_t i = 0; i < a->n; i++) {
        if (a->buckets[i].index != b->buckets[i].index ||
            a->buckets[i].count != b->buckets[i].count)
            return false;
    }
    return true;
}

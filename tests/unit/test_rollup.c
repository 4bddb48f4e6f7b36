/* Unit tests of the meter's rollups (meter/rollup.h): the latency sketch's
 * error bound and exact merging, rollup days built from segments (order
 * independence, idempotence, midnight, all-or-nothing on torn, corrupt and
 * unsealed segments and on allocation failure), the rollup file (the bytes
 * docs/rollups.md specifies, written here by hand; round trips; every
 * truncation and bit flip refused; hostile content refused with a reason),
 * and usage queries checked against sums computed directly from the
 * events, plus a CSV answer written out in full.
 *
 * Events come from a seeded generator as small records ("lite" events)
 * that both the segments and the expected answers are computed from. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <math.h>
#include <msgpack.h>
#include <zstd.h>

#include "meter/meter.h"

#define T0     1767225600000 /* 2026-01-01T00:00:00Z */
#define MIN_MS 60000
#define HOUR   3600000
#define DAY    86400000

/* --- helpers ------------------------------------------------------------- */

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

static double uniform(uint64_t *s)
{
    return (double)(splitmix(s) >> 11) / 9007199254740992.0;
}

static void assert_contains(const char *haystack, const char *needle)
{
    if (strstr(haystack, needle) == NULL)
        fail_msg("'%s' does not contain '%s'", haystack, needle);
}

static bool buf_equal(const struct kp_buf *a, const struct kp_buf *b)
{
    return a->len == b->len && memcmp(a->data, b->data, a->len) == 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* --- the event generator ------------------------------------------------- */

static const char *const tenants[] = {"acme", "globex", "initech", ""};
static const char *const projects[] = {"search", "chat", "prj,with comma"};
static const char *const features[] = {"", "summarize", "translate"};
static const char *const providers[] = {"openai-main", "anthropic"};
static const char *const models[] = {"gpt-4o", "gpt-4o-mini", "claude-sonnet-4"};
static const char *const keys[] = {"", "key-1", "key-2", "key-3"};
static const uint16_t statuses[] = {200, 200, 200, 200, 429, 500, 0, 400};
static const char *const status_errors[] = {"",           "",       "",        "",
                                            "rate_limit", "server", "connect", "client"};
#define N(a) (sizeof(a) / sizeof((a)[0]))

/* An event as a few small numbers. */
struct lite {
    int64_t t;
    uint8_t tenant, project, feature, provider, model, served, key, status, canary;
    uint64_t tokens_in, tokens_out, tokens_cached, total_us;
    int64_t cost;
    uint32_t retries;
    bool streamed;
};

static void lite_gen(uint64_t *s, int64_t from, int64_t span, struct lite *l)
{
    memset(l, 0, sizeof(*l));
    l->t = from + (int64_t)(splitmix(s) % (uint64_t)span);
    l->tenant = (uint8_t)(splitmix(s) % N(tenants));
    l->project = (uint8_t)(splitmix(s) % N(projects));
    l->feature = (uint8_t)(splitmix(s) % N(features));
    l->provider = (uint8_t)(splitmix(s) % N(providers));
    l->model = (uint8_t)(splitmix(s) % N(models));
    l->served = (uint8_t)(splitmix(s) % 8); /* 0: none served, 1: a fallback, else as asked */
    l->key = (uint8_t)(splitmix(s) % N(keys));
    l->status = (uint8_t)(splitmix(s) % N(statuses));
    l->canary = splitmix(s) % 40 == 0;
    l->tokens_in = splitmix(s) % 5000;
    l->tokens_out = splitmix(s) % 2000;
    l->tokens_cached = splitmix(s) % 3 ? 0 : l->tokens_in / 2;
    l->cost = (int64_t)(l->tokens_in * 2500 + l->tokens_out * 10000);
    if (splitmix(s) % 50 == 0)
        l->cost = -l->cost; /* a refund */
    l->total_us =
        statuses[l->status] == 0 && splitmix(s) % 2 ? 0 : (uint64_t)exp(6 + 9 * uniform(s));
    l->retries = (uint32_t)(splitmix(s) % 4 == 0 ? splitmix(s) % 3 : 0);
    l->streamed = splitmix(s) % 3 == 0;
}

static const char *lite_model(const struct lite *l)
{
    return l->served == 1 ? "gpt-4o-mini" : models[l->model];
}

/* The value of dimension @dim, as docs/usage-api.md defines it. */
static const char *lite_dim(const struct lite *l, int dim)
{
    static const char *const cls[] = {"2xx", "2xx", "2xx", "2xx", "4xx", "5xx", "none", "4xx"};
    switch (dim) {
    case KP_USAGE_DIM_TENANT:
        return tenants[l->tenant];
    case KP_USAGE_DIM_PROJECT:
        return projects[l->project];
    case KP_USAGE_DIM_FEATURE:
        return features[l->feature];
    case KP_USAGE_DIM_PROVIDER:
        return providers[l->provider];
    case KP_USAGE_DIM_MODEL:
        return lite_model(l);
    case KP_USAGE_DIM_KEY:
        return keys[l->key];
    case KP_USAGE_DIM_STATUS_CLASS:
        return cls[l->status];
    default:
        return l->canary ? "canary" : "app";
    }
}

static void lite_event(const struct lite *l, uint64_t i, struct kp_usage_event *ev)
{
    kp_usage_event_init(ev);
    ev->time_ms = l->t;
    snprintf(ev->request_id, sizeof(ev->request_id), "req-%llu", (unsigned long long)i);
    kp_usage_set_str(ev->node, "router-1");
    kp_usage_set_str(ev->key_id, keys[l->key]);
    kp_usage_set_str(ev->pool, "pool");
    kp_usage_set_str(ev->tenant, tenants[l->tenant]);
    kp_usage_set_str(ev->project, projects[l->project]);
    kp_usage_set_str(ev->feature, features[l->feature]);
    kp_usage_set_str(ev->provider, providers[l->provider]);
    kp_usage_set_str(ev->model_requested, models[l->model]);
    kp_usage_set_str(ev->model_served, l->served == 0 ? "" : lite_model(l));
    ev->tokens_in = l->tokens_in;
    ev->tokens_out = l->tokens_out;
    ev->tokens_cached = l->tokens_cached;
    ev->cost = l->cost;
    ev->ttfb_us = l->total_us / 2;
    ev->total_us = l->total_us;
    ev->status = statuses[l->status];
    kp_usage_set_str(ev->error_class, status_errors[l->status]);
    ev->retries = l->retries;
    ev->streamed = l->streamed;
    kp_usage_set_str(ev->kind, l->canary ? KP_USAGE_KIND_CANARY : KP_USAGE_KIND_APP);
}

/* A segment of the @n events @l, sealed unless @open, with small frames so
 * that it has several. */
static void seg_build(const char *node, uint64_t seq, const struct lite *l, size_t n, bool open,
                      struct kp_buf *out)
{
    struct kp_segment_writer w;
    struct kp_segment_writer_options o = {
        .node = node, .seq = seq, .created_ms = T0, .frame_bytes = 4096};
    struct kp_usage_event ev;
    assert_int_equal(kp_segment_writer_init(&w, &o), KP_OK);
    for (size_t i = 0; i < n; i++) {
        lite_event(&l[i], i, &ev);
        assert_int_equal(kp_segment_writer_add(&w, &ev), KP_OK);
    }
    if (open)
        assert_int_equal(kp_segment_writer_flush(&w), KP_OK);
    else
        assert_int_equal(kp_segment_writer_seal(&w), KP_OK);
    kp_buf_init(out);
    assert_int_equal(kp_buf_append(out, w.out.data, w.out.len), 0);
    kp_segment_writer_close(&w);
}

static void merge_ok(struct kp_rollup_day *d, const struct kp_buf *seg)
{
    char err[256] = "";
    int rc = kp_rollup_day_merge_segment(d, seg->data, seg->len, err, sizeof(err));
    if (rc != KP_OK)
        fail_msg("merge: %s: %s", kp_err_name(rc), err);
}

static void encode_ok(const struct kp_rollup_day *d, struct kp_buf *out)
{
    kp_buf_init(out);
    assert_int_equal(kp_rollup_day_encode(d, out), KP_OK);
}

/* Requests counted in @d's rows of @level. */
static uint64_t level_requests(const struct kp_rollup_day *d, enum kp_rollup_level level)
{
    uint64_t n = 0;
    for (size_t i = 0; i < kp_rollup_day_rows(d, level); i++)
        n += kp_rollup_day_row(d, level, i)->m.requests;
    return n;
}

/* --- the sketch ---------------------------------------------------------- */

static void check_quantiles(const struct kp_sketch *s, uint64_t *v, size_t n, const char *what)
{
    static const double qs[] = {0, 0.01, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1};
    qsort(v, n, sizeof(*v), cmp_u64);
    for (size_t i = 0; i < N(qs); i++) {
        double exact = (double)v[(size_t)(qs[i] * (double)(n - 1))];
        double got = kp_sketch_quantile(s, qs[i]);
        if (fabs(got - exact) > KP_SKETCH_ALPHA * exact * (1 + 1e-9))
            fail_msg("%s: q%.3f: %.3f, exact %.0f", what, qs[i], got, exact);
    }
}

/* Every quantile is within 1% of the exact one, relative, on several
 * distributions (zeros, a constant, heavy tails, two modes). */
static void test_sketch_accuracy(void **state)
{
    (void)state;
    enum { n = 20000 };
    uint64_t *v = malloc(n * sizeof(*v));
    for (int dist = 0; dist < 6; dist++) {
        uint64_t seed = 1000 + (uint64_t)dist;
        struct kp_sketch s;
        kp_sketch_init(&s);
        for (size_t i = 0; i < n; i++) {
            double u = uniform(&seed);
            switch (dist) {
            case 0: /* uniform */
                v[i] = 1 + (uint64_t)(u * 1e6);
                break;
            case 1: /* exponential */
                v[i] = (uint64_t)(-log(1 - u) * 50000);
                break;
            case 2: { /* log-normal */
                double z = sqrt(-2 * log(1 - u)) * cos(6.283185307179586 * uniform(&seed));
                v[i] = (uint64_t)exp(10 + 1.5 * z);
                break;
            }
            case 3: /* two modes */
                v[i] = u < 0.7 ? 2000 + splitmix(&seed) % 500 : 2000000 + splitmix(&seed) % 9999;
                break;
            case 4: /* a constant */
                v[i] = 777;
                break;
            default: /* 30% zeros, the rest wide */
                v[i] = u < 0.3 ? 0 : (uint64_t)exp(20 * uniform(&seed));
                break;
            }
            assert_int_equal(kp_sketch_add(&s, v[i]), KP_OK);
        }
        assert_true(s.count == n);
        char what[32];
        snprintf(what, sizeof(what), "distribution %d", dist);
        check_quantiles(&s, v, n, what);
        kp_sketch_free(&s);
    }
    free(v);
}

/* Merging sketches gives exactly the sketch of all their values, whatever
 * the order; an empty sketch reports NAN, a sketch of zeros 0. */
static void test_sketch_merge(void **state)
{
    (void)state;
    struct kp_sketch all, part[3], ab, ba;
    uint64_t seed = 7;
    kp_sketch_init(&all);
    kp_sketch_init(&ab);
    kp_sketch_init(&ba);
    for (int i = 0; i < 3; i++)
        kp_sketch_init(&part[i]);
    assert_true(isnan(kp_sketch_quantile(&all, 0.5)));
    for (int i = 0; i < 9000; i++) {
        uint64_t x = i % 17 == 0 ? 0 : (uint64_t)exp(3 + 12 * uniform(&seed));
        assert_int_equal(kp_sketch_add(&all, x), KP_OK);
        assert_int_equal(kp_sketch_add(&part[i % 3 == 0            ? 0
                                             : (uint64_t)i % 7 < 3 ? 1
                                                                   : 2],
                                       x),
                         KP_OK);
    }
    for (int i = 0; i < 3; i++)
        assert_int_equal(kp_sketch_merge(&ab, &part[i]), KP_OK);
    for (int i = 2; i >= 0; i--)
        assert_int_equal(kp_sketch_merge(&ba, &part[i]), KP_OK);
    assert_true(kp_sketch_equal(&all, &ab));
    assert_true(kp_sketch_equal(&all, &ba));
    assert_true(isnan(kp_sketch_quantile(&all, 1.5)));
    struct kp_sketch zeros;
    kp_sketch_init(&zeros);
    for (int i = 0; i < 10; i++)
        assert_int_equal(kp_sketch_add(&zeros, 0), KP_OK);
    assert_true(kp_sketch_quantile(&zeros, 0.99) == 0.0);
    assert_int_equal(zeros.n, 0);
    kp_sketch_free(&zeros);
    kp_sketch_free(&all);
    kp_sketch_free(&ab);
    kp_sketch_free(&ba);
    for (int i = 0; i < 3; i++)
        kp_sketch_free(&part[i]);
}

/* The largest values keep the error bound; values spanning more buckets
 * than the cap are folded at the low end, to the same sketch in any
 * order, and the high quantiles stay within 1%. */
static void test_sketch_big_and_cap(void **state)
{
    (void)state;
    uint64_t big[] = {INT64_MAX, UINT64_MAX, (uint64_t)1 << 62, 1};
    for (size_t i = 0; i < N(big); i++) {
        struct kp_sketch s;
        kp_sketch_init(&s);
        assert_int_equal(kp_sketch_add(&s, big[i]), KP_OK);
        double got = kp_sketch_quantile(&s, 0.5);
        assert_true(fabs(got - (double)big[i]) <= 0.0100001 * (double)big[i]);
        kp_sketch_free(&s);
    }
    /* One value per reachable bucket, plus small integers. */
    enum { max_values = 4000 };
    uint64_t *v = malloc(max_values * sizeof(*v));
    size_t n = 0;
    for (uint64_t x = 1; x <= 200; x++)
        v[n++] = x;
    for (int i = 0; i <= kp_sketch_index(UINT64_MAX); i++) {
        double x = pow((1 + KP_SKETCH_ALPHA) / (1 - KP_SKETCH_ALPHA), i);
        v[n++] = x >= 1.8e19 ? UINT64_MAX : x < 1 ? 1 : (uint64_t)x;
    }
    struct kp_sketch up, down, halves, h2;
    kp_sketch_init(&up);
    kp_sketch_init(&down);
    kp_sketch_init(&halves);
    kp_sketch_init(&h2);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(kp_sketch_add(&up, v[i]), KP_OK);
        assert_int_equal(kp_sketch_add(&down, v[n - 1 - i]), KP_OK);
        assert_int_equal(kp_sketch_add(i % 2 ? &halves : &h2, v[i]), KP_OK);
    }
    assert_int_equal(kp_sketch_merge(&halves, &h2), KP_OK);
    /* The distinct buckets exceed the cap (the premise of this test). */
    qsort(v, n, sizeof(*v), cmp_u64);
    size_t distinct = 0;
    for (size_t i = 0; i < n; i++)
        distinct += i == 0 || kp_sketch_index(v[i]) != kp_sketch_index(v[i - 1]);
    assert_true(distinct > KP_SKETCH_MAX_BUCKETS);
    assert_int_equal(up.n, KP_SKETCH_MAX_BUCKETS);
    assert_true(up.count == n);
    assert_true(kp_sketch_equal(&up, &down));
    assert_true(kp_sketch_equal(&up, &halves));
    for (double q = 0.5; q <= 1.0; q += 0.05) {
        double exact = (double)v[(size_t)(q * (double)(n - 1))];
        assert_true(fabs(kp_sketch_quantile(&up, q) - exact) <= 0.0100001 * exact);
    }
    free(v);
    kp_sketch_free(&up);
    kp_sketch_free(&down);
    kp_sketch_free(&halves);
    kp_sketch_free(&h2);
}

/* --- days ---------------------------------------------------------------- */

/* Day starts must be UTC midnights; flooring works below 1970 too. */
static void test_day_floor(void **state)
{
    (void)state;
    struct kp_rollup_day *d;
    assert_true(kp_day_floor_ms(T0) == T0);
    assert_true(kp_day_floor_ms(T0 + DAY - 1) == T0);
    assert_true(kp_day_floor_ms(-1) == -DAY);
    assert_true(kp_day_floor_ms(-DAY) == -DAY);
    assert_true(kp_day_floor_ms(-DAY - 1) == -2 * DAY);
    assert_true(kp_day_floor_ms(INT64_MIN) % DAY == 0);
    assert_true(kp_day_floor_ms(INT64_MAX) % DAY == 0);
    assert_true(INT64_MAX - kp_day_floor_ms(INT64_MAX) < DAY);
    assert_int_equal(kp_rollup_day_new(T0 + 1, &d), KP_EINVAL);
    assert_int_equal(kp_rollup_day_new(kp_day_floor_ms(INT64_MAX), &d), KP_EINVAL);
    assert_int_equal(kp_rollup_day_new(-DAY, &d), KP_OK);
    assert_true(kp_rollup_day_start(d) == -DAY);
    kp_rollup_day_free(d);
}

/* @n lite events from @seed over [from, from + span). */
static struct lite *lites(uint64_t seed, size_t n, int64_t from, int64_t span)
{
    struct lite *l = malloc((n + 1) * sizeof(*l));
    for (size_t i = 0; i < n; i++)
        lite_gen(&seed, from, span, &l[i]);
    return l;
}

/* The same segments merged in different orders encode to the same bytes;
 * decoding and encoding again gives them back; the rows at each level
 * count every event of the day once. */
static void test_merge_order_independent(void **state)
{
    (void)state;
    struct lite *l = lites(11, 3000, T0, DAY);
    struct kp_buf seg[3], a, b, c;
    seg_build("r1", 1, l, 1000, false, &seg[0]);
    seg_build("r1", 2, l + 1000, 1000, false, &seg[1]);
    seg_build("r2", 1, l + 2000, 1000, false, &seg[2]);
    struct kp_rollup_day *d1, *d2, *d3;
    assert_int_equal(kp_rollup_day_new(T0, &d1), KP_OK);
    assert_int_equal(kp_rollup_day_new(T0, &d2), KP_OK);
    merge_ok(d1, &seg[0]);
    merge_ok(d1, &seg[1]);
    merge_ok(d1, &seg[2]);
    merge_ok(d2, &seg[2]);
    merge_ok(d2, &seg[0]);
    merge_ok(d2, &seg[1]);
    encode_ok(d1, &a);
    encode_ok(d2, &b);
    assert_true(buf_equal(&a, &b));
    assert_true(kp_rollup_day_events(d1) == 3000);
    assert_int_equal(kp_rollup_day_segments(d1), 3);
    assert_true(kp_rollup_day_has_segment(d1, "r2", 1));
    assert_false(kp_rollup_day_has_segment(d1, "r2", 2));
    for (int lv = 0; lv < KP_ROLLUP_LEVELS; lv++)
        assert_true(level_requests(d1, lv) == 3000);
    assert_int_equal(kp_rollup_day_rows(d1, KP_ROLLUP_DAY) < kp_rollup_day_rows(d1, KP_ROLLUP_HOUR),
                     1);
    char err[256] = "";
    int rc = kp_rollup_day_decode(a.data, a.len, &d3, err, sizeof(err));
    if (rc != KP_OK)
        fail_msg("decode: %s", err);
    encode_ok(d3, &c);
    assert_true(buf_equal(&a, &c));
    assert_true(kp_rollup_day_has_segment(d3, "r1", 2));
    assert_true(kp_rollup_day_events(d3) == 3000);
    /* A decoded day takes more segments like the original. */
    struct lite *more = lites(12, 200, T0, DAY);
    struct kp_buf seg4, e1, e3;
    seg_build("r3", 9, more, 200, false, &seg4);
    merge_ok(d1, &seg4);
    merge_ok(d3, &seg4);
    encode_ok(d1, &e1);
    encode_ok(d3, &e3);
    assert_true(buf_equal(&e1, &e3));
    printf("# %zu minute, %zu hour, %zu day rows encode to %zu bytes (%.1f bytes/row)\n",
           kp_rollup_day_rows(d1, KP_ROLLUP_MINUTE), kp_rollup_day_rows(d1, KP_ROLLUP_HOUR),
           kp_rollup_day_rows(d1, KP_ROLLUP_DAY), e1.len,
           (double)e1.len / (double)(kp_rollup_day_rows(d1, KP_ROLLUP_MINUTE) +
                                     kp_rollup_day_rows(d1, KP_ROLLUP_HOUR) +
                                     kp_rollup_day_rows(d1, KP_ROLLUP_DAY)));
    kp_rollup_day_free(d1);
    kp_rollup_day_free(d2);
    kp_rollup_day_free(d3);
    for (int i = 0; i < 3; i++)
        kp_buf_free(&seg[i]);
    kp_buf_free(&seg4);
    kp_buf_free(&a);
    kp_buf_free(&b);
    kp_buf_free(&c);
    kp_buf_free(&e1);
    kp_buf_free(&e3);
    free(l);
    free(more);
}

/* A segment merged twice is refused and changes nothing; one with no event
 * in the day is still recorded. */
static void test_merge_idempotent(void **state)
{
    (void)state;
    struct lite *l = lites(21, 300, T0, DAY);
    struct kp_buf seg, before, after;
    struct kp_rollup_day *d, *other;
    char err[256] = "";
    seg_build("r1", 5, l, 300, false, &seg);
    assert_int_equal(kp_rollup_day_new(T0, &d), KP_OK);
    merge_ok(d, &seg);
    encode_ok(d, &before);
    assert_int_equal(kp_rollup_day_merge_segment(d, seg.data, seg.len, err, sizeof(err)),
                     KP_EEXIST);
    assert_contains(err, "r1/5");
    encode_ok(d, &after);
    assert_true(buf_equal(&before, &after));
    assert_int_equal(kp_rollup_day_new(T0 + 10 * DAY, &other), KP_OK);
    merge_ok(other, &seg);
    assert_int_equal(kp_rollup_day_segments(other), 1);
    assert_true(kp_rollup_day_events(other) == 0);
    assert_int_equal(kp_rollup_day_rows(other, KP_ROLLUP_MINUTE), 0);
    assert_int_equal(kp_rollup_day_merge_segment(other, seg.data, seg.len, err, sizeof(err)),
                     KP_EEXIST);
    /* A day without rows round-trips (its row sections are empty). */
    struct kp_buf empty, again;
    struct kp_rollup_day *x;
    encode_ok(other, &empty);
    assert_int_equal(kp_rollup_day_decode(empty.data, empty.len, &x, err, sizeof(err)), KP_OK);
    assert_true(kp_rollup_day_has_segment(x, "r1", 5));
    encode_ok(x, &again);
    assert_true(buf_equal(&empty, &again));
    kp_rollup_day_free(x);
    kp_buf_free(&empty);
    kp_buf_free(&again);
    kp_rollup_day_free(d);
    kp_rollup_day_free(other);
    kp_buf_free(&seg);
    kp_buf_free(&before);
    kp_buf_free(&after);
    free(l);
}

/* A segment spanning midnight counts each event in exactly one of the two
 * days, and both record it. */
static void test_merge_midnight(void **state)
{
    (void)state;
    enum { n = 49 };
    struct lite *l = lites(31, n, T0, DAY);
    for (int i = 0; i < n; i++)
        l[i].t = T0 + DAY - 2 * MIN_MS + (int64_t)i * 5000; /* 23:58:00 .. 00:02:00 */
    struct kp_buf seg;
    struct kp_rollup_day *d0, *d1;
    seg_build("r1", 1, l, n, false, &seg);
    assert_int_equal(kp_rollup_day_new(T0, &d0), KP_OK);
    assert_int_equal(kp_rollup_day_new(T0 + DAY, &d1), KP_OK);
    merge_ok(d0, &seg);
    merge_ok(d1, &seg);
    assert_true(kp_rollup_day_events(d0) == 24);
    assert_true(kp_rollup_day_events(d1) == 25);
    for (int lv = 0; lv < KP_ROLLUP_LEVELS; lv++) {
        assert_true(level_requests(d0, lv) == 24);
        assert_true(level_requests(d1, lv) == 25);
    }
    for (size_t i = 0; i < kp_rollup_day_rows(d0, KP_ROLLUP_MINUTE); i++) {
        int64_t start = kp_rollup_day_row(d0, KP_ROLLUP_MINUTE, i)->start_ms;
        assert_true(start >= T0 + DAY - 2 * MIN_MS && start < T0 + DAY);
    }
    assert_true(kp_rollup_day_has_segment(d0, "r1", 1));
    assert_true(kp_rollup_day_has_segment(d1, "r1", 1));
    kp_rollup_day_free(d0);
    kp_rollup_day_free(d1);
    kp_buf_free(&seg);
    free(l);
}

/* Merge @bad into @d: it must fail with @want and leave @d's bytes as they
 * were in @before. */
static void merge_refused(struct kp_rollup_day *d, const void *bad, size_t len, int want,
                          const struct kp_buf *before, const char *needle)
{
    char err[256] = "";
    struct kp_buf after;
    int rc = kp_rollup_day_merge_segment(d, bad, len, err, sizeof(err));
    if (rc != want)
        fail_msg("merge of %zu bytes: %s, expected %s (%s)", len, kp_err_name(rc),
                 kp_err_name(want), err);
    if (needle != NULL)
        assert_contains(err, needle);
    encode_ok(d, &after);
    assert_true(buf_equal(before, &after));
    kp_buf_free(&after);
}

/* Torn, corrupt and unsealed segments are refused and leave the day as it
 * was, even when frames before the damage were good. */
static void test_merge_damaged(void **state)
{
    (void)state;
    struct lite *l = lites(41, 400, T0, DAY);
    struct kp_buf base, seg, open, before;
    struct kp_rollup_day *d;
    seg_build("r1", 1, l, 200, false, &base);
    seg_build("r2", 1, l + 200, 200, false, &seg);
    seg_build("r3", 1, l + 200, 200, true, &open);
    assert_int_equal(kp_rollup_day_new(T0, &d), KP_OK);
    merge_ok(d, &base);
    encode_ok(d, &before);
    for (size_t cut = 0; cut < seg.len; cut += 211)
        merge_refused(d, seg.data, cut, KP_EPARSE, &before,
                      cut >= KP_SEGMENT_HEADER_SIZE ? "r2/1" : "segment");
    merge_refused(d, seg.data, seg.len - 1, KP_EPARSE, &before, NULL);
    /* A flipped byte in the last frame, after good frames. */
    seg.data[seg.len - KP_SEGMENT_FOOTER_SIZE - 10] ^= 0x40;
    merge_refused(d, seg.data, seg.len, KP_EPARSE, &before, "checksum");
    merge_refused(d, open.data, open.len, KP_EPARSE, &before, "not sealed");
    assert_false(kp_rollup_day_has_segment(d, "r2", 1));
    assert_false(kp_rollup_day_has_segment(d, "r3", 1));
    kp_rollup_day_free(d);
    kp_buf_free(&base);
    kp_buf_free(&seg);
    kp_buf_free(&open);
    kp_buf_free(&before);
    free(l);
}

/* Every allocation failure during a merge gives KP_ENOMEM and leaves the
 * day exactly as it was; then the merge succeeds. The second segment
 * repeats half the first one's rows with new latencies (so rows that exist
 * need room) and brings new rows, so failures come after rows were made. */
static void test_merge_alloc_failures(void **state)
{
    (void)state;
    struct lite *l = lites(51, 500, T0, DAY);
    struct kp_buf a, b, before;
    struct kp_rollup_day *d;
    char err[256];
    for (size_t i = 250; i < 500; i++) {
        l[i] = l[i - 250];
        l[i].total_us = l[i].total_us * 3 + 1;
        if (i % 2)
            l[i].tenant = (uint8_t)((l[i].tenant + 1) % N(tenants));
    }
    seg_build("r1", 1, l, 250, false, &a);
    seg_build("r2", 1, l + 250, 250, false, &b);
    assert_int_equal(kp_rollup_day_new(T0, &d), KP_OK);
    merge_ok(d, &a);
    encode_ok(d, &before);
    int rc = KP_ENOMEM;
    long n;
    for (n = 0; rc == KP_ENOMEM; n++) {
        kp_alloc_fail_after(n);
        rc = kp_rollup_day_merge_segment(d, b.data, b.len, err, sizeof(err));
        kp_alloc_fail_reset();
        if (rc == KP_ENOMEM) {
            struct kp_buf now;
            encode_ok(d, &now);
            assert_true(buf_equal(&before, &now));
            kp_buf_free(&now);
            assert_false(kp_rollup_day_has_segment(d, "r2", 1));
        }
    }
    assert_int_equal(rc, KP_OK);
    assert_true(n > 10);
    assert_true(kp_rollup_day_events(d) == 500);
    /* Encoding and decoding under allocation failures: errors, no leaks. */
    struct kp_buf enc;
    encode_ok(d, &enc);
    for (n = 0, rc = KP_ENOMEM; rc == KP_ENOMEM; n++) {
        struct kp_buf out;
        kp_buf_init(&out);
        kp_alloc_fail_after(n);
        rc = kp_rollup_day_encode(d, &out);
        kp_alloc_fail_reset();
        if (rc == KP_OK)
            assert_true(buf_equal(&out, &enc));
        kp_buf_free(&out);
    }
    assert_int_equal(rc, KP_OK);
    for (n = 0, rc = KP_ENOMEM; rc == KP_ENOMEM; n++) {
        struct kp_rollup_day *x = NULL;
        kp_alloc_fail_after(n);
        rc = kp_rollup_day_decode(enc.data, enc.len, &x, err, sizeof(err));
        kp_alloc_fail_reset();
        kp_rollup_day_free(x);
    }
    assert_int_equal(rc, KP_OK);
    kp_rollup_day_free(d);
    kp_buf_free(&a);
    kp_buf_free(&b);
    kp_buf_free(&before);
    kp_buf_free(&enc);
    free(l);
}

/* --- the file format ----------------------------------------------------- */

/* A rollup file written by hand from docs/rollups.md: the test's own
 * encoder, independent of rollup.c. */
struct craft_row {
    uint64_t period, dim[8], counters[9];
    uint64_t classes[4]; /* pairs: string index, count */
    size_t n_classes;    /* elements of classes */
    uint64_t sketch[5];  /* zero count, then pairs: index delta, count */
    size_t n_sketch;
};

struct craft {
    uint16_t version, header_size;
    int64_t day;
    uint64_t events;
    const char *strings[16];
    size_t n_strings;
    uint64_t segs[4]; /* pairs: node index, sequence */
    size_t n_segs;
    struct craft_row rows[3][2];
    size_t n_rows[3];
    size_t extra_meta; /* zero bytes appended to the meta section */
};

static void pack_u64s(msgpack_packer *pk, const uint64_t *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        msgpack_pack_uint64(pk, v[i]);
}

static void craft_section(struct kp_buf *body, uint32_t id, uint32_t count,
                          const msgpack_sbuffer *raw)
{
    size_t bound = ZSTD_compressBound(raw->size);
    uint8_t h[16];
    char *z = malloc(bound);
    size_t n = ZSTD_compress(z, bound, raw->data ? raw->data : "", raw->size, 3);
    assert_false(ZSTD_isError(n));
    kp_put_le(h, id, 4);
    kp_put_le(h + 4, count, 4);
    kp_put_le(h + 8, raw->size, 4);
    kp_put_le(h + 12, n, 4);
    assert_int_equal(kp_buf_append(body, h, sizeof(h)), 0);
    assert_int_equal(kp_buf_append(body, z, n), 0);
    free(z);
}

static void craft_meta(const struct craft *c, struct kp_buf *body)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 3);
    msgpack_pack_uint64(&pk, c->events);
    msgpack_pack_array(&pk, c->n_strings);
    for (size_t i = 0; i < c->n_strings; i++) {
        msgpack_pack_str(&pk, strlen(c->strings[i]));
        msgpack_pack_str_body(&pk, c->strings[i], strlen(c->strings[i]));
    }
    msgpack_pack_array(&pk, c->n_segs);
    pack_u64s(&pk, c->segs, c->n_segs);
    for (size_t i = 0; i < c->extra_meta; i++)
        msgpack_sbuffer_write(&sb, "", 1);
    craft_section(body, 0, 1, &sb);
    msgpack_sbuffer_destroy(&sb);
}

static void craft_rows(const struct craft *c, int level, struct kp_buf *body)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    for (size_t i = 0; i < c->n_rows[level]; i++) {
        const struct craft_row *r = &c->rows[level][i];
        msgpack_pack_array(&pk, 20);
        msgpack_pack_uint64(&pk, r->period);
        pack_u64s(&pk, r->dim, 8);
        pack_u64s(&pk, r->counters, 9);
        msgpack_pack_array(&pk, r->n_classes);
        pack_u64s(&pk, r->classes, r->n_classes);
        msgpack_pack_array(&pk, r->n_sketch);
        pack_u64s(&pk, r->sketch, r->n_sketch);
    }
    craft_section(body, 1 + (uint32_t)level, (uint32_t)c->n_rows[level], &sb);
    msgpack_sbuffer_destroy(&sb);
}

static void craft_file(const struct craft *c, struct kp_buf *out)
{
    struct kp_buf body;
    uint8_t h[32] = {'K', 'P', 'R', 'U'};
    kp_buf_init(&body);
    craft_meta(c, &body);
    for (int l = 0; l < 3; l++)
        craft_rows(c, l, &body);
    kp_put_le(h + 4, c->version, 2);
    kp_put_le(h + 6, c->header_size, 2);
    kp_put_le(h + 8, (uint64_t)c->day, 8);
    kp_put_le(h + 16, body.len, 8);
    kp_put_le(h + 24, kp_segment_crc32c(0, body.data, body.len), 4);
    kp_put_le(h + 28, kp_segment_crc32c(0, h, 28), 4);
    kp_buf_init(out);
    assert_int_equal(kp_buf_append(out, h, sizeof(h)), 0);
    assert_int_equal(kp_buf_append(out, body.data, body.len), 0);
    kp_buf_free(&body);
}

/* The single event of the format tests, at 01:02:03 on day T0. */
static void format_event(struct kp_usage_event *ev)
{
    kp_usage_event_init(ev);
    ev->time_ms = T0 + HOUR + 2 * MIN_MS + 3000;
    kp_usage_set_str(ev->request_id, "req-1");
    kp_usage_set_str(ev->node, "r1");
    kp_usage_set_str(ev->key_id, "key-1");
    kp_usage_set_str(ev->tenant, "acme");
    kp_usage_set_str(ev->project, "p1");
    kp_usage_set_str(ev->provider, "openai-main");
    kp_usage_set_str(ev->model_requested, "gpt-4o");
    ev->tokens_in = 1000;
    ev->tokens_out = 200;
    ev->tokens_cached = 300;
    ev->cost = 4500;
    ev->total_us = 120000;
    ev->status = 429;
    kp_usage_set_str(ev->error_class, "rate_limit");
    ev->retries = 2;
    ev->streamed = true;
}

/* What the file of a day holding only format_event() from segment r1/7
 * must be, as docs/rollups.md says. */
static void format_craft(struct craft *c)
{
    static const char *const strings[] = {"",      "4xx",         "acme", "app", "gpt-4o",
                                          "key-1", "openai-main", "p1",   "r1",  "rate_limit"};
    memset(c, 0, sizeof(*c));
    c->version = 1;
    c->header_size = 32;
    c->day = T0;
    c->events = 1;
    memcpy(c->strings, strings, sizeof(strings));
    c->n_strings = N(strings);
    c->segs[0] = 8; /* "r1" */
    c->segs[1] = 7;
    c->n_segs = 2;
    const uint64_t periods[3] = {62, 1, 0};
    for (int l = 0; l < 3; l++) {
        struct craft_row r = {
            .period = periods[l],
            .dim = {2, 7, 0, 6, 4, 5, 1, 3},
            .counters = {1, 1, 2, 1, 1000, 200, 300, 4500, 0},
            .classes = {9, 1},
            .n_classes = 2,
            .sketch = {0, (uint64_t)kp_sketch_index(120000), 1},
            .n_sketch = 3,
        };
        c->rows[l][0] = r;
        c->n_rows[l] = 1;
    }
}

static void format_day(struct kp_rollup_day **d)
{
    struct kp_segment_writer w;
    struct kp_segment_writer_options o = {.node = "r1", .seq = 7, .created_ms = T0};
    struct kp_usage_event ev;
    format_event(&ev);
    assert_int_equal(kp_segment_writer_init(&w, &o), KP_OK);
    assert_int_equal(kp_segment_writer_add(&w, &ev), KP_OK);
    assert_int_equal(kp_segment_writer_seal(&w), KP_OK);
    assert_int_equal(kp_rollup_day_new(T0, d), KP_OK);
    merge_ok(*d, &(struct kp_buf){w.out.data, w.out.len, w.out.cap});
    kp_segment_writer_close(&w);
}

/* The encoder writes exactly the bytes the format specifies. */
static void test_format_bytes(void **state)
{
    (void)state;
    struct craft c;
    struct kp_buf want, got;
    struct kp_rollup_day *d;
    format_day(&d);
    format_craft(&c);
    craft_file(&c, &want);
    encode_ok(d, &got);
    assert_true(buf_equal(&want, &got));
    kp_rollup_day_free(d);
    kp_buf_free(&want);
    kp_buf_free(&got);
}

/* Decode the crafted file; it must fail with @want and a message holding
 * @needle. */
static void craft_refused(const struct craft *c, int want, const char *needle)
{
    struct kp_buf f;
    struct kp_rollup_day *d = NULL;
    char err[256] = "";
    craft_file(c, &f);
    int rc = kp_rollup_day_decode(f.data, f.len, &d, err, sizeof(err));
    if (rc != want)
        fail_msg("decode: %s (%s), expected %s with '%s'", kp_err_name(rc), err, kp_err_name(want),
                 needle);
    assert_contains(err, needle);
    assert_null(d);
    kp_buf_free(&f);
}

/* Hostile content with valid checksums is refused, saying why. */
static void test_decode_hostile(void **state)
{
    (void)state;
    struct craft c;
    format_craft(&c);
    c.strings[1] = "acme"; /* strings out of order, and a duplicate */
    craft_refused(&c, KP_EPARSE, "not after the one before it");
    format_craft(&c);
    c.rows[0][0].counters[0] = 0; /* no requests */
    craft_refused(&c, KP_EPARSE, "0 requests");
    format_craft(&c);
    c.rows[1][0].dim[3] = 10; /* no such string */
    craft_refused(&c, KP_EPARSE, "no string 10");
    format_craft(&c);
    c.rows[2][0].dim[6] = 2; /* "acme" as a status class */
    craft_refused(&c, KP_EPARSE, "status_class");
    format_craft(&c);
    c.rows[0][0].sketch[2] = 2; /* two latencies, one request */
    craft_refused(&c, KP_EPARSE, "latency sketch holds 2 values");
    format_craft(&c);
    c.rows[0][0].classes[1] = 3; /* three errors by class, one error */
    craft_refused(&c, KP_EPARSE, "errors by class add up to 3");
    format_craft(&c);
    c.rows[0][0].period = 1440; /* past the last minute */
    craft_refused(&c, KP_EPARSE, "period");
    format_craft(&c);
    c.rows[0][1] = c.rows[0][0]; /* the same row twice */
    c.n_rows[0] = 2;
    craft_refused(&c, KP_EPARSE, "row not after the one before it");
    format_craft(&c);
    c.segs[0] = 0; /* the empty string as a node */
    craft_refused(&c, KP_EPARSE, "invalid node name");
    format_craft(&c);
    c.extra_meta = 2;
    craft_refused(&c, KP_EPARSE, "2 bytes after the metadata");
    format_craft(&c);
    c.version = 2;
    craft_refused(&c, KP_EVERSION, "version 2");
    format_craft(&c);
    c.header_size = 40;
    craft_refused(&c, KP_EPARSE, "header size");
    format_craft(&c);
    c.day = T0 + 1;
    craft_refused(&c, KP_EPARSE, "midnight");
    /* The unmodified craft decodes. */
    format_craft(&c);
    struct kp_buf f;
    struct kp_rollup_day *d;
    char err[256] = "";
    craft_file(&c, &f);
    assert_int_equal(kp_rollup_day_decode(f.data, f.len, &d, err, sizeof(err)), KP_OK);
    kp_rollup_day_free(d);
    kp_buf_free(&f);
}

/* Every truncation and every single-bit flip of an encoded day is an
 * error, never a crash; flips under recomputed checksums reach zstd and
 * the msgpack checks and never crash either. */
static void test_decode_robust(void **state)
{
    (void)state;
    struct lite *l = lites(61, 400, T0, DAY);
    struct kp_buf seg, enc;
    struct kp_rollup_day *d, *x;
    char err[256];
    seg_build("r1", 1, l, 400, false, &seg);
    assert_int_equal(kp_rollup_day_new(T0, &d), KP_OK);
    merge_ok(d, &seg);
    encode_ok(d, &enc);
    for (size_t len = 0; len < enc.len; len++) {
        x = NULL;
        assert_int_not_equal(kp_rollup_day_decode(enc.data, len, &x, err, sizeof(err)), KP_OK);
        assert_null(x);
    }
    uint8_t *copy = malloc(enc.len);
    for (size_t bit = 0; bit<enc.len * 8; bit += enc.len * 8> 40000 ? 3 : 1) {
        memcpy(copy, enc.data, enc.len);
        copy[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        x = NULL;
        assert_int_not_equal(kp_rollup_day_decode(copy, enc.len, &x, err, sizeof(err)), KP_OK);
        assert_null(x);
    }
    uint64_t seed = 5;
    for (int i = 0; i < 3000; i++) {
        memcpy(copy, enc.data, enc.len);
        size_t at = 32 + splitmix(&seed) % (enc.len - 32);
        copy[at] ^= (uint8_t)(1u << (splitmix(&seed) % 8));
        kp_put_le(copy + 24, kp_segment_crc32c(0, copy + 32, enc.len - 32), 4);
        kp_put_le(copy + 28, kp_segment_crc32c(0, copy, 28), 4);
        x = NULL;
        if (kp_rollup_day_decode(copy, enc.len, &x, err, sizeof(err)) == KP_OK) {
            struct kp_buf again;
            encode_ok(x, &again);
            kp_buf_free(&again);
        }
        kp_rollup_day_free(x);
    }
    assert_int_equal(kp_rollup_day_decode(enc.data, enc.len, &x, err, sizeof(err)), KP_OK);
    kp_rollup_day_free(x);
    free(copy);
    kp_rollup_day_free(d);
    kp_buf_free(&seg);
    kp_buf_free(&enc);
    free(l);
}

/* Decoding only some levels skips the others; such a day answers for its
 * levels and refuses merges and encoding. */
static void test_decode_levels(void **state)
{
    (void)state;
    struct kp_rollup_day *d, *x;
    struct kp_buf enc, out;
    char err[256];
    format_day(&d);
    encode_ok(d, &enc);
    assert_int_equal(kp_rollup_day_decode_levels(enc.data, enc.len, 0, &x, err, sizeof(err)),
                     KP_EINVAL);
    assert_int_equal(kp_rollup_day_decode_levels(enc.data, enc.len,
                                                 KP_ROLLUP_LEVEL_BIT(KP_ROLLUP_DAY), &x, err,
                                                 sizeof(err)),
                     KP_OK);
    assert_int_equal(kp_rollup_day_levels(x), KP_ROLLUP_LEVEL_BIT(KP_ROLLUP_DAY));
    assert_int_equal(kp_rollup_day_rows(x, KP_ROLLUP_MINUTE), 0);
    assert_int_equal(kp_rollup_day_rows(x, KP_ROLLUP_DAY), 1);
    kp_buf_init(&out);
    assert_int_equal(kp_rollup_day_encode(x, &out), KP_EINVAL);
    assert_int_equal(kp_rollup_day_merge_segment(x, enc.data, enc.len, err, sizeof(err)),
                     KP_EINVAL);
    /* A whole-day query reads day rows only; a part-day one needs more. */
    struct kp_usage_query q;
    struct kp_usage_result *r;
    kp_usage_query_init(&q, 0);
    assert_int_equal(kp_usage_query_param(&q, "from", "2026-01-01", err, sizeof(err)), KP_OK);
    assert_int_equal(kp_usage_query_param(&q, "to", "2026-01-02", err, sizeof(err)), KP_OK);
    assert_int_equal(kp_usage_query_finish(&q, err, sizeof(err)), KP_OK);
    assert_int_equal(kp_usage_query_levels(&q, T0), KP_ROLLUP_LEVEL_BIT(KP_ROLLUP_DAY));
    assert_int_equal(kp_usage_query_levels(&q, T0 + DAY), 0);
    assert_int_equal(kp_usage_result_new(&q, &r), KP_OK);
    assert_int_equal(kp_usage_result_add_day(r, x), KP_OK);
    assert_true(kp_usage_result_rows(r) == 1);
    assert_int_equal(kp_usage_result_add_day(r, x), KP_EEXIST);
    kp_usage_result_free(r);
    kp_usage_query_free(&q);
    kp_usage_query_init(&q, 0);
    assert_int_equal(kp_usage_query_param(&q, "from", "2026-01-01T00:30:00Z", err, sizeof(err)),
                     KP_OK);
    assert_int_equal(kp_usage_query_param(&q, "to", "2026-01-01T05:00:00Z", err, sizeof(err)),
                     KP_OK);
    assert_int_equal(kp_usage_query_finish(&q, err, sizeof(err)), KP_OK);
    assert_int_equal(kp_usage_query_levels(&q, T0),
                     KP_ROLLUP_LEVEL_BIT(KP_ROLLUP_MINUTE) | KP_ROLLUP_LEVEL_BIT(KP_ROLLUP_HOUR));
    assert_int_equal(kp_usage_result_new(&q, &r), KP_OK);
    assert_int_equal(kp_usage_result_add_day(r, x), KP_EINVAL);
    kp_usage_result_free(r);
    kp_usage_query_free(&q);
    kp_rollup_day_free(x);
    kp_rollup_day_free(d);
    kp_buf_free(&enc);
    kp_buf_free(&out);
}

/* --- queries ------------------------------------------------------------- */

/* Days built from generated events over several days, and the events. */
struct fixture {
    struct lite *l;
    size_t n;
    struct kp_rollup_day *days[4];
    int64_t first_day;
};

static void fixture_build(struct fixture *f)
{
    f->n = 6000;
    f->first_day = T0 - DAY;
    f->l = lites(71, f->n, T0 - 5 * HOUR, 2 * DAY + 10 * HOUR);
    for (int i = 0; i < 4; i++)
        assert_int_equal(kp_rollup_day_new(f->first_day + i * DAY, &f->days[i]), KP_OK);
    for (size_t s = 0; s < 4; s++) {
        struct kp_buf seg;
        seg_build(s % 2 ? "r2" : "r1", 100 + s, f->l + s * 1500, 1500, false, &seg);
        for (int i = 0; i < 4; i++)
            merge_ok(f->days[i], &seg);
        kp_buf_free(&seg);
    }
}

static void fixture_free(struct fixture *f)
{
    for (int i = 0; i < 4; i++)
        kp_rollup_day_free(f->days[i]);
    free(f->l);
}

/* Parse the parameters name=value, then finish. */
static void query_make(struct kp_usage_query *q, int64_t now, const char *const *params)
{
    char err[256] = "";
    kp_usage_query_init(q, now);
    for (size_t i = 0; params[i] != NULL; i += 2) {
        int rc = kp_usage_query_param(q, params[i], params[i + 1], err, sizeof(err));
        if (rc != KP_OK)
            fail_msg("%s=%s: %s", params[i], params[i + 1], err);
    }
    int rc = kp_usage_query_finish(q, err, sizeof(err));
    if (rc != KP_OK)
        fail_msg("finish: %s", err);
}

static struct kp_usage_result *query_run(const struct fixture *f, const struct kp_usage_query *q)
{
    struct kp_usage_result *r;
    assert_int_equal(kp_usage_result_new(q, &r), KP_OK);
    for (int i = 3; i >= 0; i--) /* any order */
        assert_int_equal(kp_usage_result_add_day(r, f->days[i]), KP_OK);
    return r;
}

static bool lite_passes(const struct lite *l, const struct kp_usage_query *q)
{
    for (int dim = 0; dim < KP_USAGE_DIMS; dim++) {
        bool filtered = false, match = false;
        for (size_t i = 0; i < q->n_filters; i++) {
            if ((int)q->filters[i].dim != dim)
                continue;
            filtered = true;
            match |= strcmp(q->filters[i].value, lite_dim(l, dim)) == 0;
        }
        if (filtered && !match)
            return false;
    }
    return true;
}

/* What a row should count, computed from the events. */
struct expect {
    uint64_t requests, errors, retries, streamed, tokens_in, tokens_out, tokens_cached;
    int64_t cost;
    uint64_t *lat;
    size_t n_lat;
};

static void expect_add(struct expect *e, const struct lite *l)
{
    e->requests++;
    e->errors += status_errors[l->status][0] != '\0';
    e->retries += l->retries;
    e->streamed += l->streamed;
    e->tokens_in += l->tokens_in;
    e->tokens_out += l->tokens_out;
    e->tokens_cached += l->tokens_cached;
    e->cost += l->cost;
    if (e->lat != NULL)
        e->lat[e->n_lat++] = l->total_us;
}

static uint64_t jint(const json_t *o, const char *k)
{
    const json_t *v = json_object_get(o, k);
    if (!json_is_integer(v))
        fail_msg("'%s' is not an integer", k);
    return (uint64_t)json_integer_value(v);
}

static void check_metrics(const json_t *o, struct expect *e)
{
    char usd[40];
    assert_true(jint(o, "requests") == e->requests);
    assert_true(jint(o, "errors") == e->errors);
    assert_true(jint(o, "retries") == e->retries);
    assert_true(jint(o, "streamed") == e->streamed);
    assert_true(jint(o, "tokens_in") == e->tokens_in);
    assert_true(jint(o, "tokens_out") == e->tokens_out);
    assert_true(jint(o, "tokens_cached") == e->tokens_cached);
    assert_true((int64_t)jint(o, "cost_nanousd") == e->cost);
    uint64_t a = e->cost < 0 ? (uint64_t)-e->cost : (uint64_t)e->cost;
    snprintf(usd, sizeof(usd), "%s%llu.%09llu", e->cost < 0 ? "-" : "",
             (unsigned long long)(a / 1000000000), (unsigned long long)(a % 1000000000));
    assert_string_equal(json_string_value(json_object_get(o, "cost_usd")), usd);
    uint64_t by_class = 0;
    const char *k;
    json_t *v;
    json_object_foreach(json_object_get(o, "errors_by_class"), k, v) by_class +=
        (uint64_t)json_integer_value(v);
    assert_true(by_class == e->errors);
    if (e->lat == NULL)
        return;
    const json_t *lat = json_object_get(o, "latency_ms");
    qsort(e->lat, e->n_lat, sizeof(*e->lat), cmp_u64);
    static const char *const names[] = {"p50", "p95", "p99"};
    static const double qs[] = {0.5, 0.95, 0.99};
    for (int i = 0; i < 3; i++) {
        double exact = (double)e->lat[(size_t)(qs[i] * (double)(e->n_lat - 1))];
        double got = json_real_value(json_object_get(lat, names[i])) * 1000;
        if (fabs(got - exact) > 0.01 * exact + 0.51)
            fail_msg("%s: %.3f us, exact %.0f", names[i], got, exact);
    }
}

static int64_t granularity_ms(enum kp_usage_granularity g)
{
    return g == KP_USAGE_MINUTE ? MIN_MS : g == KP_USAGE_HOUR ? HOUR : DAY;
}

/* Rows are sorted by start, then dimension values in byte order. */
static void check_order(const json_t *prev, const json_t *row, const struct kp_usage_query *q)
{
    int64_t a, b;
    assert_int_equal(kp_usage_parse_time(json_string_value(json_object_get(prev, "start")), &a),
                     KP_OK);
    assert_int_equal(kp_usage_parse_time(json_string_value(json_object_get(row, "start")), &b),
                     KP_OK);
    if (a != b) {
        assert_true(a < b);
        return;
    }
    for (int dim = 0; dim < KP_USAGE_DIMS; dim++) {
        if (!(q->group_by & (1u << dim)))
            continue;
        int c = strcmp(json_string_value(json_object_get(prev, kp_usage_dim_name(dim))),
                       json_string_value(json_object_get(row, kp_usage_dim_name(dim))));
        if (c != 0) {
            assert_true(c < 0);
            return;
        }
    }
    fail_msg("two rows with the same start and dimensions");
}

/* Check every row of the answer, and the totals, against the events. */
static void check_answer(const struct fixture *f, const struct kp_usage_query *q, const json_t *ans)
{
    const json_t *rows = json_object_get(ans, "rows");
    struct expect sum = {0}, direct = {0};
    uint64_t *lat = malloc(f->n * sizeof(*lat));
    assert_true(json_array_size(rows) > 0);
    for (size_t i = 0; i < json_array_size(rows); i++) {
        const json_t *row = json_array_get(rows, i);
        int64_t start, lo, hi;
        assert_int_equal(
            kp_usage_parse_time(json_string_value(json_object_get(row, "start")), &start), KP_OK);
        lo = q->granularity == KP_USAGE_TOTAL ? q->from_ms : start;
        hi = q->granularity == KP_USAGE_TOTAL ? q->to_ms : start + granularity_ms(q->granularity);
        lo = lo > q->from_ms ? lo : q->from_ms;
        hi = hi < q->to_ms ? hi : q->to_ms;
        struct expect e = {.lat = lat};
        for (size_t k = 0; k < f->n; k++) {
            const struct lite *l = &f->l[k];
            bool same = l->t >= lo && l->t < hi && lite_passes(l, q);
            for (int dim = 0; same && dim < KP_USAGE_DIMS; dim++) {
                if (q->group_by & (1u << dim))
                    same = strcmp(json_string_value(json_object_get(row, kp_usage_dim_name(dim))),
                                  lite_dim(l, dim)) == 0;
            }
            if (same)
                expect_add(&e, l);
        }
        check_metrics(row, &e);
        e.lat = NULL;
        sum.requests += e.requests;
        sum.cost += e.cost;
        if (i > 0)
            check_order(json_array_get(rows, i - 1), row, q);
    }
    direct.lat = lat;
    for (size_t k = 0; k < f->n; k++) {
        if (f->l[k].t >= q->from_ms && f->l[k].t < q->to_ms && lite_passes(&f->l[k], q))
            expect_add(&direct, &f->l[k]);
    }
    assert_true(sum.requests == direct.requests);
    assert_true(sum.cost == direct.cost);
    check_metrics(json_object_get(ans, "totals"), &direct);
    free(lat);
}

static json_t *answer(const struct fixture *f, const struct kp_usage_query *q)
{
    struct kp_usage_result *r = query_run(f, q);
    json_t *ans = kp_usage_result_json(r, "node-a");
    assert_non_null(ans);
    kp_usage_result_free(r);
    return ans;
}

/* Totals and every row equal the sums of the events, for each granularity,
 * with the range starting and ending at odd minutes inside days and across
 * days. */
static void test_query_sums(void **state)
{
    (void)state;
    struct fixture f;
    fixture_build(&f);
    static const char *const cases[][8] = {
        {"granularity", "total", "from", "2026-01-01T03:17:00Z", "to", "2026-01-02T05:43:00Z"},
        {"granularity", "hour", "from", "2026-01-01T03:17:00Z", "to", "2026-01-02T05:43:00Z"},
        {"granularity", "minute", "from", "2026-01-01T10:03:00Z", "to", "2026-01-01T14:59:00Z"},
        {"granularity", "day", "from", "2025-12-31T21:47:00Z", "to", "2026-01-03T01:01:00Z"},
        {"granularity", "day", "from", "2026-01-01", "to", "2026-01-02"},
        {"granularity", "hour", "from", "1767229020000", "to", "1767232620000"},
        {"granularity", "total", "from", "2026-01-01T10:03:30.5Z", "to", "2026-01-01T10:19:10Z"},
    };
    for (size_t i = 0; i < N(cases); i++) {
        struct kp_usage_query q;
        const char *params[8] = {0};
        memcpy(params, cases[i], sizeof(cases[i]));
        query_make(&q, 0, params);
        json_t *ans = answer(&f, &q);
        check_answer(&f, &q, ans);
        json_decref(ans);
        kp_usage_query_free(&q);
    }
    /* The defaults: the 24 hours before now, by day, rounded to minutes. */
    struct kp_usage_query q;
    const char *none[] = {NULL};
    query_make(&q, T0 + DAY + 7 * HOUR + 31 * MIN_MS + 30000, none);
    assert_true(q.to_ms == T0 + DAY + 7 * HOUR + 32 * MIN_MS);
    assert_true(q.from_ms == T0 + 7 * HOUR + 31 * MIN_MS);
    json_t *ans = answer(&f, &q);
    assert_int_equal(json_array_size(json_object_get(ans, "rows")), 2);
    assert_string_equal(json_string_value(json_object_get(ans, "granularity")), "day");
    assert_string_equal(json_string_value(json_object_get(ans, "from")), "2026-01-01T07:31:00Z");
    check_answer(&f, &q, ans);
    json_decref(ans);
    kp_usage_query_free(&q);
    fixture_free(&f);
}

/* Grouping gives one row per bucket and combination, dimensions in table
 * order whatever order they were asked in; filters are OR within a
 * dimension and AND across dimensions. */
static void test_query_group_filter(void **state)
{
    (void)state;
    struct fixture f;
    fixture_build(&f);
    static const char *const cases[][12] = {
        {"group_by", "model,tenant", "granularity", "hour", "from", "2026-01-01T03:17:00Z", "to",
         "2026-01-02T05:43:00Z"},
        {"group_by", "status_class,kind", "granularity", "day", "filter", "status_class:none",
         "from", "2025-12-31", "to", "2026-01-04"},
        {"group_by", "project,key", "granularity", "total", "filter",
         "tenant:acme,tenant:globex,model:gpt-4o", "from", "2026-01-01T00:01:00Z", "to",
         "2026-01-02T23:59:00Z"},
        {"group_by", "feature,provider", "filter", "key:,feature:", "filter",
         "project:prj,with comma", "from", "2026-01-01", "to", "2026-01-02T12:00:00Z",
         "granularity", "hour"},
    };
    for (size_t i = 0; i < N(cases); i++) {
        struct kp_usage_query q;
        const char *params[13] = {0};
        memcpy(params, cases[i], sizeof(cases[i]));
        query_make(&q, 0, params);
        json_t *ans = answer(&f, &q);
        check_answer(&f, &q, ans);
        if (i == 0) {
            const json_t *g = json_object_get(ans, "group_by");
            assert_int_equal(json_array_size(g), 2);
            assert_string_equal(json_string_value(json_array_get(g, 0)), "tenant");
            assert_string_equal(json_string_value(json_array_get(g, 1)), "model");
            const char *k;
            json_t *v;
            size_t pos = 0;
            json_object_foreach(json_array_get(json_object_get(ans, "rows"), 0), k, v)
            {
                static const char *const want[] = {"start", "tenant", "model", "requests"};
                if (pos < 4)
                    assert_string_equal(k, want[pos]);
                pos++;
            }
        }
        if (i == 2) {
            assert_int_equal(q.n_filters, 3);
            const json_t *row = json_array_get(json_object_get(ans, "rows"), 0);
            assert_null(json_object_get(row, "tenant"));
            assert_non_null(json_object_get(row, "project"));
        }
        if (i == 3) {
            assert_int_equal(q.n_filters, 3);
            assert_string_equal(q.filters[1].value, "");
            assert_string_equal(q.filters[2].value, "prj,with comma");
        }
        json_decref(ans);
        kp_usage_query_free(&q);
    }
    fixture_free(&f);
}

/* The same answer from days decoded from their files. */
static void test_query_decoded_days(void **state)
{
    (void)state;
    struct fixture f;
    fixture_build(&f);
    struct kp_usage_query q;
    const char *params[] = {"group_by",    "tenant",
                            "granularity", "hour",
                            "from",        "2026-01-01T03:17:00Z",
                            "to",          "2026-01-02T05:43:00Z",
                            NULL};
    query_make(&q, 0, params);
    json_t *want = answer(&f, &q);
    struct kp_usage_result *r;
    assert_int_equal(kp_usage_result_new(&q, &r), KP_OK);
    for (int i = 0; i < 4; i++) {
        struct kp_buf enc;
        struct kp_rollup_day *d;
        char err[256];
        unsigned mask = kp_usage_query_levels(&q, kp_rollup_day_start(f.days[i]));
        encode_ok(f.days[i], &enc);
        if (mask != 0) {
            assert_int_equal(
                kp_rollup_day_decode_levels(enc.data, enc.len, mask, &d, err, sizeof(err)), KP_OK);
            assert_int_equal(kp_usage_result_add_day(r, d), KP_OK);
            kp_rollup_day_free(d);
        }
        kp_buf_free(&enc);
    }
    json_t *got = kp_usage_result_json(r, "node-a");
    assert_true(json_equal(want, got));
    json_decref(want);
    json_decref(got);
    kp_usage_result_free(r);
    kp_usage_query_free(&q);
    fixture_free(&f);
}

/* Five events on 2026-01-01, by hour and tenant, as CSV: the whole text. */
static void test_query_csv_golden(void **state)
{
    (void)state;
    static const struct {
        int64_t t;
        const char *tenant, *model, *served, *error;
        uint16_t status;
        uint64_t in, out, cached, us;
        int64_t cost;
        uint32_t retries;
        bool streamed;
    } evs[] = {
        {10000, "acme", "gpt-4o", "gpt-4o", "", 200, 100, 50, 10, 120000, 1234000, 0, true},
        {50000, "acme", "gpt-4o", "", "rate_limit", 429, 0, 0, 0, 5000, 0, 2, false},
        {59000, "acme", "gpt-4o", "gpt-4o", "", 200, 1, 1, 1, 300000, 1, 0, false},
        {90 * MIN_MS, "globex, inc", "claude-sonnet-4", "", "connect", 0, 0, 0, 0, 0, -500, 0,
         false},
        {105 * MIN_MS, "acme", "gpt-4o", "gpt-4o", "", 200, 10, 20, 0, 250000, 2000000001, 0,
         false},
    };
    struct kp_segment_writer w;
    struct kp_segment_writer_options o = {.node = "r1", .seq = 1, .created_ms = T0};
    assert_int_equal(kp_segment_writer_init(&w, &o), KP_OK);
    for (size_t i = 0; i < N(evs); i++) {
        struct kp_usage_event ev;
        kp_usage_event_init(&ev);
        ev.time_ms = T0 + evs[i].t;
        snprintf(ev.request_id, sizeof(ev.request_id), "req-%zu", i);
        kp_usage_set_str(ev.node, "r1");
        kp_usage_set_str(ev.tenant, evs[i].tenant);
        kp_usage_set_str(ev.model_requested, evs[i].model);
        kp_usage_set_str(ev.model_served, evs[i].served);
        kp_usage_set_str(ev.error_class, evs[i].error);
        ev.status = evs[i].status;
        ev.tokens_in = evs[i].in;
        ev.tokens_out = evs[i].out;
        ev.tokens_cached = evs[i].cached;
        ev.total_us = evs[i].us;
        ev.cost = evs[i].cost;
        ev.retries = evs[i].retries;
        ev.streamed = evs[i].streamed;
        assert_int_equal(kp_segment_writer_add(&w, &ev), KP_OK);
    }
    assert_int_equal(kp_segment_writer_seal(&w), KP_OK);
    struct kp_rollup_day *d;
    assert_int_equal(kp_rollup_day_new(T0, &d), KP_OK);
    merge_ok(d, &(struct kp_buf){w.out.data, w.out.len, w.out.cap});
    kp_segment_writer_close(&w);
    struct kp_usage_query q;
    const char *params[] = {"from",     "2026-01-01T00:00:00Z",
                            "to",       "2026-01-01T02:00:00Z",
                            "group_by", "tenant",
                            "format",   "csv",
                            "filter",   "kind:app",
                            NULL};
    query_make(&q, 0, params);
    assert_true(q.csv);
    struct kp_usage_result *r;
    assert_int_equal(kp_usage_result_new(&q, &r), KP_OK);
    assert_int_equal(kp_usage_result_add_day(r, d), KP_OK);
    struct kp_buf csv;
    kp_buf_init(&csv);
    assert_int_equal(kp_usage_result_csv(r, &csv), KP_OK);
    const char *want =
        "start,tenant,requests,errors,retries,streamed,tokens_in,tokens_out,tokens_cached,"
        "cost_usd,latency_p50_ms,latency_p95_ms,latency_p99_ms\r\n"
        "2026-01-01T00:00:00Z,acme,4,1,2,1,111,71,11,2.001234002,119.413,250.287,250.287\r\n"
        "2026-01-01T00:00:00Z,\"globex, inc\",1,1,0,0,0,0,0,-0.000000500,0.000,0.000,0.000\r\n";
    assert_string_equal(csv.data, want);
    /* By hour: the same events in two buckets; and the JSON head. */
    kp_usage_result_free(r);
    kp_usage_query_free(&q);
    const char *hourly[] = {"from",        "2026-01-01T00:00:00Z",
                            "to",          "2026-01-01T02:00:00Z",
                            "group_by",    "tenant",
                            "granularity", "hour",
                            NULL};
    query_make(&q, 0, hourly);
    assert_int_equal(kp_usage_result_new(&q, &r), KP_OK);
    assert_int_equal(kp_usage_result_add_day(r, d), KP_OK);
    csv.len = 0;
    assert_int_equal(kp_usage_result_csv(r, &csv), KP_OK);
    want = "start,tenant,requests,errors,retries,streamed,tokens_in,tokens_out,tokens_cached,"
           "cost_usd,latency_p50_ms,latency_p95_ms,latency_p99_ms\r\n"
           "2026-01-01T00:00:00Z,acme,3,1,2,1,101,51,11,0.001234001,119.413,119.413,119.413\r\n"
           "2026-01-01T01:00:00Z,acme,1,0,0,0,10,20,0,2.000000001,250.287,250.287,250.287\r\n"
           "2026-01-01T01:00:00Z,\"globex, inc\",1,1,0,0,0,0,0,-0.000000500,0.000,0.000,0.000\r\n";
    assert_string_equal(csv.data, want);
    json_t *ans = kp_usage_result_json(r, "node-a");
    /* Latencies print short with 15 significant digits (rollup.h). */
    char *text = json_dumps(json_object_get(ans, "totals"), JSON_COMPACT | JSON_REAL_PRECISION(15));
    assert_string_equal(text, "{\"requests\":5,\"errors\":2,\"errors_by_class\":{\"connect\":1,"
                              "\"rate_limit\":1},\"retries\":2,\"streamed\":1,\"tokens_in\":111,"
                              "\"tokens_out\":71,\"tokens_cached\":11,\"cost_nanousd\":2001233502,"
                              "\"cost_usd\":\"2.001233502\",\"latency_ms\":{\"p50\":119.413,"
                              "\"p95\":250.287,\"p99\":250.287}}");
    free(text);
    assert_string_equal(json_string_value(json_object_get(ans, "to")), "2026-01-01T02:00:00Z");
    assert_string_equal(json_string_value(json_object_get(ans, "meter")), "node-a");
    json_decref(ans);
    /* Allocation failures in the answers: errors, never a crash or a leak. */
    for (long n = 0; n < 200; n++) {
        kp_alloc_fail_after(n);
        struct kp_buf b;
        kp_buf_init(&b);
        int rc = kp_usage_result_csv(r, &b);
        kp_alloc_fail_reset();
        assert_true(rc == KP_OK || rc == KP_ENOMEM);
        kp_buf_free(&b);
    }
    kp_usage_result_free(r);
    kp_usage_query_free(&q);
    kp_buf_free(&csv);
    kp_rollup_day_free(d);
}

/* An answer of more than 100,000 rows is refused. */
static void test_query_too_many_rows(void **state)
{
    (void)state;
    enum { keys_n = 70 };
    size_t n = 1440 * keys_n;
    struct kp_segment_writer w;
    struct kp_segment_writer_options o = {.node = "r1", .seq = 1, .created_ms = T0};
    struct kp_usage_event ev;
    assert_int_equal(kp_segment_writer_init(&w, &o), KP_OK);
    kp_usage_event_init(&ev);
    kp_usage_set_str(ev.request_id, "req");
    kp_usage_set_str(ev.node, "r1");
    for (size_t i = 0; i < n; i++) {
        ev.time_ms = T0 + (int64_t)(i / keys_n) * MIN_MS;
        snprintf(ev.key_id, sizeof(ev.key_id), "key-%zu", i % keys_n);
        assert_int_equal(kp_segment_writer_add(&w, &ev), KP_OK);
    }
    assert_int_equal(kp_segment_writer_seal(&w), KP_OK);
    struct kp_rollup_day *d;
    assert_int_equal(kp_rollup_day_new(T0, &d), KP_OK);
    merge_ok(d, &(struct kp_buf){w.out.data, w.out.len, w.out.cap});
    kp_segment_writer_close(&w);
    assert_int_equal(kp_rollup_day_rows(d, KP_ROLLUP_MINUTE), n);
    struct kp_usage_query q;
    struct kp_usage_result *r;
    const char *many[] = {"from", "2026-01-01",  "to",     "2026-01-02", "group_by",
                          "key",  "granularity", "minute", NULL};
    query_make(&q, 0, many);
    assert_int_equal(kp_usage_result_new(&q, &r), KP_OK);
    assert_int_equal(kp_usage_result_add_day(r, d), KP_ETOOBIG);
    kp_usage_result_free(r);
    kp_usage_query_free(&q);
    const char *fewer[] = {"from", "2026-01-01",  "to",   "2026-01-02", "group_by",
                           "key",  "granularity", "hour", NULL};
    query_make(&q, 0, fewer);
    assert_int_equal(kp_usage_result_new(&q, &r), KP_OK);
    assert_int_equal(kp_usage_result_add_day(r, d), KP_OK);
    assert_true(kp_usage_result_rows(r) == 24 * keys_n);
    kp_usage_result_free(r);
    kp_usage_query_free(&q);
    kp_rollup_day_free(d);
}

/* Each bad parameter is KP_EINVAL with a message naming it. */
static void test_query_bad_params(void **state)
{
    (void)state;
    static const char *const cases[][3] = {
        {"from", "yesterday", "from"},
        {"to", "2026-13-01", "to"},
        {"to", "2026-02-29", "to"},
        {"from", "2026-01-01T25:00:00Z", "from"},
        {"from", "2026-01-01T10:00:00", "from"},
        {"from", "2026-01-01 10:00:00Z", "from"},
        {"from", "", "from"},
        {"to", "99999999999999999999", "to"},
        {"granularity", "week", "granularity"},
        {"group_by", "tenant,colour", "group_by"},
        {"group_by", "tenant,", "group_by"},
        {"filter", "colour:red", "filter"},
        {"filter", "tenant", "filter"},
        {"filter", "status_class:ok", "filter"},
        {"format", "xml", "format"},
        {"limit", "10", "unknown parameter limit"},
    };
    char err[256];
    for (size_t i = 0; i < N(cases); i++) {
        struct kp_usage_query q;
        kp_usage_query_init(&q, T0);
        err[0] = '\0';
        assert_int_equal(kp_usage_query_param(&q, cases[i][0], cases[i][1], err, sizeof(err)),
                         KP_EINVAL);
        assert_contains(err, cases[i][2]);
        kp_usage_query_free(&q);
    }
    struct kp_usage_query q;
    kp_usage_query_init(&q, T0);
    assert_int_equal(kp_usage_query_param(&q, "from", "2026-01-01", err, sizeof(err)), KP_OK);
    assert_int_equal(kp_usage_query_param(&q, "from", "2026-01-02", err, sizeof(err)), KP_EINVAL);
    assert_contains(err, "from: given more than once");
    kp_usage_query_free(&q);
    static const char *const ranges[][2] = {
        {"2026-01-02", "2026-01-01"},
        {"2026-01-01", "2026-01-01"},
        {"2025-01-01", "2026-02-05T00:01:00Z"},
    };
    for (size_t i = 0; i < N(ranges); i++) {
        kp_usage_query_init(&q, T0);
        assert_int_equal(kp_usage_query_param(&q, "from", ranges[i][0], err, sizeof(err)), KP_OK);
        assert_int_equal(kp_usage_query_param(&q, "to", ranges[i][1], err, sizeof(err)), KP_OK);
        assert_int_equal(kp_usage_query_finish(&q, err, sizeof(err)), KP_EINVAL);
        assert_contains(err, "to:");
        kp_usage_query_free(&q);
    }
    /* Exactly 400 days is allowed. */
    kp_usage_query_init(&q, T0);
    assert_int_equal(kp_usage_query_param(&q, "from", "2025-01-01", err, sizeof(err)), KP_OK);
    assert_int_equal(kp_usage_query_param(&q, "to", "2026-02-05", err, sizeof(err)), KP_OK);
    assert_int_equal(kp_usage_query_finish(&q, err, sizeof(err)), KP_OK);
    kp_usage_query_free(&q);
}

/* The time forms the usage API takes. */
static void test_parse_time(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        int64_t ms;
    } good[] = {
        {"2026-01-01T00:00:00Z", T0},
        {"2026-01-01", T0},
        {"1767225600000", T0},
        {"2026-01-01T00:00:00.5Z", T0 + 500},
        {"2026-01-01T00:00:00.123456z", T0 + 123},
        {"2026-01-01t01:00:00+01:00", T0},
        {"2025-12-31T23:00:00-01:00", T0},
        {"-1000", -1000},
        {"1969-12-31T23:59:59.999Z", -1},
        {"2024-02-29", 1709164800000},
        {"0000-01-01", -62167219200000},
        {"9999-12-31T23:59:59.999Z", 253402300799999},
    };
    static const char *const bad[] = {
        "",
        "-",
        "2026-1-01",
        "2026-01-01T00:00Z",
        "2026-02-29",
        "abc",
        "12a",
        "2026-01-01T00:00:00",
        "10000-01-01",
        "2026-01-01T",
        "2026-01-01Z",
        "2026-01-01T00:00:00.Z",
        "2026-01-01T00:00:60Z",
        "2026-01-01T00:00:00+1:00",
    };
    for (size_t i = 0; i < N(good); i++) {
        int64_t ms = 0;
        if (kp_usage_parse_time(good[i].s, &ms) != KP_OK || ms != good[i].ms)
            fail_msg("'%s': %lld", good[i].s, (long long)ms);
    }
    for (size_t i = 0; i < N(bad); i++) {
        int64_t ms;
        if (kp_usage_parse_time(bad[i], &ms) != KP_EINVAL)
            fail_msg("'%s' accepted", bad[i]);
    }
    char buf[32];
    kp_usage_format_time(-1, buf, sizeof(buf));
    assert_string_equal(buf, "1969-12-31T23:59:59Z");
    kp_usage_format_time(T0 + 61000, buf, sizeof(buf));
    assert_string_equal(buf, "2026-01-01T00:01:01Z");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sketch_accuracy),         cmocka_unit_test(test_sketch_merge),
        cmocka_unit_test(test_sketch_big_and_cap),      cmocka_unit_test(test_day_floor),
        cmocka_unit_test(test_merge_order_independent), cmocka_unit_test(test_merge_idempotent),
        cmocka_unit_test(test_merge_midnight),          cmocka_unit_test(test_merge_damaged),
        cmocka_unit_test(test_merge_alloc_failures),    cmocka_unit_test(test_format_bytes),
        cmocka_unit_test(test_decode_hostile),          cmocka_unit_test(test_decode_robust),
        cmocka_unit_test(test_decode_levels),           cmocka_unit_test(test_query_sums),
        cmocka_unit_test(test_query_group_filter),      cmocka_unit_test(test_query_decoded_days),
        cmocka_unit_test(test_query_csv_golden),        cmocka_unit_test(test_query_too_many_rows),
        cmocka_unit_test(test_query_bad_params),        cmocka_unit_test(test_parse_time),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Part of meter/meter.h; include that.
 *
 * Rollups, the latency sketch and usage queries: pure code over memory
 * buffers, no file I/O and no threads. docs/rollups.md specifies the rollup
 * file format, the sketch and how a query picks rows; docs/usage-api.md is
 * the contract of the usage query.
 *
 * A rollup day (rollup.c) holds one UTC day of usage at three levels,
 * minute, hour and day, one row per period and combination of the eight
 * dimensions, built by merging sealed segments into it. It remembers which
 * segments it holds, so that merging is idempotent, and encodes to a file
 * that is the same bytes whatever order the segments came in: two meters
 * that hold the same segments write the same rollups.
 *
 * A usage query (query.c) parses the parameters of GET /admin/v1/usage,
 * takes the rows it needs from each day of its range and answers in JSON
 * or CSV. */
#ifndef KP_METER_ROLLUP_H
#define KP_METER_ROLLUP_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/core.h"

/* --- the latency sketch (sketch.c) --------------------------------------- */

/* A DDSketch over non-negative integers (latencies in microseconds): any
 * quantile it reports is within KP_SKETCH_ALPHA (1%) of the true one,
 * relative. Value 0 has a bucket of its own; a value v >= 1 goes to bucket
 * ceil(log(v) / log(gamma)), gamma = (1 + alpha) / (1 - alpha), whose
 * representative is 2 gamma^i / (gamma + 1). Counts are integers, so
 * merging is exact: merging sketches gives the sketch of all their values,
 * in any order. At most KP_SKETCH_MAX_BUCKETS buckets are kept; past that
 * the lowest ones are folded into the lowest kept one (values would have
 * to span a ratio of 6e17 for that to happen). */
#define KP_SKETCH_ALPHA       0.01
#define KP_SKETCH_MAX_BUCKETS 2048

struct kp_sketch_bucket {
    int32_t index;
    uint64_t count; /* >= 1 */
};

/* Counts saturate at INT64_MAX (they never wrap). The fields are public for
 * the rollup codec; change them only through the functions below. */
struct kp_sketch {
    uint64_t count;                   /* values held, the zero ones included */
    uint64_t zero;                    /* values equal to 0 */
    struct kp_sketch_bucket *buckets; /* n of them, by increasing index */
    uint32_t n, cap;
};

void kp_sketch_init(struct kp_sketch *s);
void kp_sketch_free(struct kp_sketch *s);
/* Add one value. KP_ENOMEM leaves @s as it was. */
int kp_sketch_add(struct kp_sketch *s, uint64_t value);
/* Add every value of @src to @dst. KP_ENOMEM leaves @dst as it was; it
 * cannot happen when kp_sketch_reserve(dst, dst->n + src->n) succeeded. */
int kp_sketch_merge(struct kp_sketch *dst, const struct kp_sketch *src);
/* Make room for @n buckets. KP_ENOMEM. */
int kp_sketch_reserve(struct kp_sketch *s, size_t n);
/* The value at quantile @q (0..1), by DDSketch's rank rule: the bucket
 * holding the value of rank floor(q (count - 1)), counted from 0 in
 * increasing order; its representative value. NAN when @s is empty or @q
 * is outside 0..1. */
double kp_sketch_quantile(const struct kp_sketch *s, double q);
/* The bucket of a value >= 1 (the one floating-point step: log()). */
int32_t kp_sketch_index(uint64_t value);
/* The representative value of bucket @index. */
double kp_sketch_bucket_value(int32_t index);
/* Same values in the same buckets. */
bool kp_sketch_equal(const struct kp_sketch *a, const struct kp_sketch *b);

/* --- dimensions ---------------------------------------------------------- */

/* The dimensions of docs/usage-api.md, in the order of its table (the
 * order rows carry them in). */
enum kp_usage_dim {
    KP_USAGE_DIM_TENANT,
    KP_USAGE_DIM_PROJECT,
    KP_USAGE_DIM_FEATURE,
    KP_USAGE_DIM_PROVIDER,
    KP_USAGE_DIM_MODEL,
    KP_USAGE_DIM_KEY,
    KP_USAGE_DIM_STATUS_CLASS,
    KP_USAGE_DIM_KIND,
    KP_USAGE_DIMS
};

/* "tenant", ..., "kind". */
const char *kp_usage_dim_name(enum kp_usage_dim dim);
/* The dimension named by @s[0..len), or -1. */
int kp_usage_dim_parse(const char *s, size_t len);
/* The status class of an HTTP status: "none" for 0, else "2xx" and so on
 * ("0xx" for 1..99). @buf holds at least 5 bytes. */
const char *kp_usage_status_class(uint16_t status, char buf[5]);

/* --- rollup days (rollup.c) ---------------------------------------------- */

#define KP_ROLLUP_VERSION     1
#define KP_ROLLUP_HEADER_SIZE 32
#define KP_DAY_MS             86400000
#define KP_HOUR_MS            3600000
#define KP_MINUTE_MS          60000
/* Counters saturate here, so that every one survives JSON. */
#define KP_ROLLUP_COUNT_MAX INT64_MAX
/* A section of a rollup file decompresses to at most this many bytes;
 * decoders refuse more, encoders refuse to write more. */
#define KP_ROLLUP_SECTION_MAX_RAW (256u << 20)

enum kp_rollup_level { KP_ROLLUP_MINUTE, KP_ROLLUP_HOUR, KP_ROLLUP_DAY, KP_ROLLUP_LEVELS };

#define KP_ROLLUP_LEVEL_BIT(level) (1u << (level))
#define KP_ROLLUP_ALL_LEVELS       7u

/* How many errors of one class. */
struct kp_rollup_class_count {
    uint32_t class_id; /* a string id of the day (or of the query result) */
    uint64_t count;
};

/* What a row counts. Counters saturate at KP_ROLLUP_COUNT_MAX. Costs are
 * kept as two saturating sums, of the positive costs and of the magnitudes
 * of the negative ones (refunds), so that the sums do not depend on the
 * order of the events even when one saturates; the cost is their
 * difference (kp_rollup_metrics_cost). */
struct kp_rollup_metrics {
    uint64_t requests;
    uint64_t errors; /* events with an error class */
    uint64_t retries;
    uint64_t streamed;
    uint64_t tokens_in, tokens_out, tokens_cached;
    uint64_t cost_charged;                 /* sum of the positive costs, nano-USD */
    uint64_t cost_credited;                /* sum of minus the negative costs */
    struct kp_rollup_class_count *classes; /* n_classes, by increasing class_id */
    uint32_t n_classes, cap_classes;
    struct kp_sketch latency; /* total_us of each event */
};

void kp_rollup_metrics_init(struct kp_rollup_metrics *m);
void kp_rollup_metrics_free(struct kp_rollup_metrics *m);
/* Add @src to @dst. @class_map, when not NULL, maps each class id of @src
 * to the id to count it under in @dst. KP_ENOMEM leaves @dst as it was. */
int kp_rollup_metrics_add(struct kp_rollup_metrics *dst, const struct kp_rollup_metrics *src,
                          const uint32_t *class_map);
/* charged - credited, in nano-USD (never overflows). */
kp_nanousd kp_rollup_metrics_cost(const struct kp_rollup_metrics *m);

/* One row: a period and a combination of dimensions. The dimensions are
 * string ids of the day, valid as long as it lives (kp_rollup_day_string). */
struct kp_rollup_row {
    int64_t start_ms; /* the period's start: a minute, an hour or the day */
    uint32_t dim[KP_USAGE_DIMS];
    struct kp_rollup_metrics m;
};

struct kp_rollup_day;

/* A new, empty day. KP_EINVAL unless @day_start_ms is a UTC midnight (with
 * the whole day representable); KP_ENOMEM. */
int kp_rollup_day_new(int64_t day_start_ms, struct kp_rollup_day **out);
void kp_rollup_day_free(struct kp_rollup_day *d);
int64_t kp_rollup_day_start(const struct kp_rollup_day *d);
/* The UTC midnight at or before @ms (floor division, so negative times
 * count down). The first hours of the int64 range have no representable
 * midnight before them and get the earliest one. */
int64_t kp_day_floor_ms(int64_t ms);

/* Whether segment (@node, @seq) has been merged into @d. */
bool kp_rollup_day_has_segment(const struct kp_rollup_day *d, const char *node, uint64_t seq);
/* How many segments have been merged into @d. */
size_t kp_rollup_day_segments(const struct kp_rollup_day *d);
/* How many events those segments held in this day. */
uint64_t kp_rollup_day_events(const struct kp_rollup_day *d);

/* Merge the sealed segment @seg[0..len) into @d: every event whose time_ms
 * falls in [day, day + 24h) is counted in a minute, an hour and the day
 * row, and (node, seq) of the segment's header is recorded, even when none
 * of its events falls in this day, so that it is never merged twice.
 * All or nothing: on any error @d is left as it was. KP_EEXIST: this
 * segment is already merged. KP_EPARSE: the segment is corrupt, torn, not
 * sealed, or claims more than the reader's limits (@errmsg says where and
 * why, from the segment reader). KP_EINVAL: @d was decoded without all its
 * levels. KP_ENOMEM. No reference to @seg is kept. */
int kp_rollup_day_merge_segment(struct kp_rollup_day *d, const void *seg, size_t len, char *errmsg,
                                size_t errlen);

/* Append the rollup file of @d to @out (docs/rollups.md). Deterministic:
 * two days that hold the same segments and rows encode to the same bytes,
 * whatever order the segments were merged in. KP_EINVAL when @d was
 * decoded without all its levels; KP_ETOOBIG when a section would exceed
 * KP_ROLLUP_SECTION_MAX_RAW; KP_ENOMEM. On error @out is as it was. */
int kp_rollup_day_encode(const struct kp_rollup_day *d, struct kp_buf *out);

/* Decode a rollup file (untrusted input): checksums first, then every
 * structure and value, with bounded allocation (at most
 * KP_ROLLUP_SECTION_MAX_RAW bytes of decompressed section at a time, and
 * in-memory rows in proportion to it). KP_EPARSE with @errmsg naming the
 * offset and what is wrong; KP_EVERSION for another format version;
 * KP_ENOMEM. *out is set only on KP_OK. */
int kp_rollup_day_decode(const void *buf, size_t len, struct kp_rollup_day **out, char *errmsg,
                         size_t errlen);
/* The same, decompressing only the row sections of the levels in
 * @level_mask (KP_ROLLUP_LEVEL_BIT bits; KP_EINVAL when it names none): a
 * query that needs only day rows skips the minute rows. Checksums still
 * cover the whole file. Such a day answers queries for its levels but can
 * be neither merged into nor encoded. */
int kp_rollup_day_decode_levels(const void *buf, size_t len, unsigned level_mask,
                                struct kp_rollup_day **out, char *errmsg, size_t errlen);
/* The levels @d holds (KP_ROLLUP_ALL_LEVELS unless decoded with fewer). */
unsigned kp_rollup_day_levels(const struct kp_rollup_day *d);

/* The rows of one level, in no particular order; valid until @d changes. */
size_t kp_rollup_day_rows(const struct kp_rollup_day *d, enum kp_rollup_level level);
const struct kp_rollup_row *kp_rollup_day_row(const struct kp_rollup_day *d,
                                              enum kp_rollup_level level, size_t i);
/* String ids of a day are 0..kp_rollup_day_strings()-1. */
uint32_t kp_rollup_day_strings(const struct kp_rollup_day *d);
const char *kp_rollup_day_string(const struct kp_rollup_day *d, uint32_t id, size_t *len);
/* The id of @s[0..len) if @d holds that string. */
bool kp_rollup_day_find_string(const struct kp_rollup_day *d, const char *s, size_t len,
                               uint32_t *id);

/* --- usage queries (query.c) --------------------------------------------- */

#define KP_USAGE_MAX_ROWS    100000
#define KP_USAGE_MAX_SPAN_MS (400 * (int64_t)KP_DAY_MS)
#define KP_USAGE_MAX_FILTERS 1000

enum kp_usage_granularity {
    KP_USAGE_MINUTE,
    KP_USAGE_HOUR,
    KP_USAGE_DAY,
    KP_USAGE_TOTAL,
};

struct kp_usage_filter {
    enum kp_usage_dim dim;
    char *value; /* NUL-terminated, owned by the query */
    size_t len;
};

/* GET /admin/v1/usage's parameters. Fill with kp_usage_query_init, one
 * kp_usage_query_param per parameter, then kp_usage_query_finish; the
 * fields are then final. */
struct kp_usage_query {
    int64_t from_ms, to_ms; /* [from, to), whole minutes after finish */
    enum kp_usage_granularity granularity;
    unsigned group_by; /* bit (1u << dim) per grouped dimension */
    struct kp_usage_filter *filters;
    size_t n_filters;
    bool csv;
    /* Private. */
    int64_t now_ms;
    unsigned given; /* which single-valued parameters were given */
};

/* Defaults: granularity day, no grouping or filter, JSON, and (unless
 * given) to = @now_ms, from = to - 24 h. */
void kp_usage_query_init(struct kp_usage_query *q, int64_t now_ms);
/* One query parameter, already percent-decoded: from, to, granularity,
 * group_by, filter (repeatable), format. KP_EINVAL with @errmsg naming the
 * parameter ("granularity: expected minute, hour, day or total"), also for
 * an unknown parameter ("unknown parameter X") and for a single-valued one
 * given twice; KP_ENOMEM. */
int kp_usage_query_param(struct kp_usage_query *q, const char *name, const char *value,
                         char *errmsg, size_t errlen);
/* Apply the defaults, round from down and to up to whole minutes, and check
 * that to is after from and the span at most 400 days. KP_EINVAL. */
int kp_usage_query_finish(struct kp_usage_query *q, char *errmsg, size_t errlen);
void kp_usage_query_free(struct kp_usage_query *q);
/* Which levels of the day starting at @day_start_ms the query reads
 * (KP_ROLLUP_LEVEL_BIT bits; 0 when the day is outside the range): what to
 * pass to kp_rollup_day_decode_levels. */
unsigned kp_usage_query_levels(const struct kp_usage_query *q, int64_t day_start_ms);

/* A time as the usage API takes it: RFC 3339 (2026-01-01T00:00:00Z, with
 * optional fractional seconds, truncated to the millisecond, and Z or a
 * numeric offset), a date (2026-01-01, its UTC midnight) or Unix
 * milliseconds (an optional minus sign and digits). Years 0000..9999.
 * KP_EINVAL. */
int kp_usage_parse_time(const char *s, int64_t *ms);
/* "2026-01-01T00:00:00Z" (whole seconds) into @buf (at least 21 bytes);
 * years 0000..9999. */
void kp_usage_format_time(int64_t ms, char *buf, size_t len);

struct kp_usage_result;

/* An empty answer to @q (finished). The result copies what it needs from
 * @q. KP_ENOMEM. */
int kp_usage_result_new(const struct kp_usage_query *q, struct kp_usage_result **out);
/* Count the rows of @d that the query uses (docs/rollups.md, "How a query
 * picks rows"). Pass each day overlapping [from, to) once, in any order; a
 * day outside the range adds nothing. KP_ETOOBIG when the answer would
 * have more than KP_USAGE_MAX_ROWS rows (answer 400 too_many_rows);
 * KP_EEXIST for a day added twice; KP_EINVAL when @d lacks a level the
 * query needs for it (kp_usage_query_levels); KP_ENOMEM. After an error
 * the result can only be freed. */
int kp_usage_result_add_day(struct kp_usage_result *r, const struct kp_rollup_day *d);
/* Rows in the answer so far. */
uint64_t kp_usage_result_rows(const struct kp_usage_result *r);
/* The cost of every row so far (the totals' cost_nanousd): charged minus
 * credited, nano-USD. */
kp_nanousd kp_usage_result_cost(const struct kp_usage_result *r);
/* The JSON answer (docs/usage-api.md); @meter_name may be NULL (null).
 * NULL when out of memory. Latencies are reals holding whole microseconds
 * in milliseconds (250.287): dump with JSON_REAL_PRECISION(15) to print
 * them so, rather than as jansson's default 17 digits (250.28700000000001,
 * the same double). */
json_t *kp_usage_result_json(const struct kp_usage_result *r, const char *meter_name);
/* Append the CSV answer to @out. KP_ENOMEM (then @out is as it was). */
int kp_usage_result_csv(const struct kp_usage_result *r, struct kp_buf *out);
void kp_usage_result_free(struct kp_usage_result *r);

#endif

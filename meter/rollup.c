/* Rollup days: one UTC day of usage at minute, hour and day level, folded
 * from sealed segments, and the file that holds it (docs/rollups.md).
 *
 * Merging a segment is the meter's compaction hot loop. The segment's
 * events are read once into a private delta: strings are interned into the
 * day's string table (so a row key is a period and eight integers), each
 * event is added to its minute row, found through an open-addressing hash
 * table, with no allocation but the amortised growth of tables. Once the
 * whole segment has been read and found sound, the delta's minute rows are
 * summed into hour and day rows and the delta is committed to the day in
 * three steps: create the rows the day lacks, reserve room in the rows it
 * had, then add (a new row takes its delta row's metrics whole), which
 * cannot fail. Any failure before the last step
 * truncates what was created (rows, strings) and leaves the day as it was:
 * a torn segment, a corrupt frame after good ones or an allocation failure
 * never leaves half a segment counted.
 *
 * Encoding sorts everything (strings by bytes, rows by period and
 * dimension values, segments by node and sequence) and compresses each
 * section with a fixed zstd level, so that the bytes depend only on what
 * the day holds, never on the order it was built in. Decoding checks the
 * checksums, then every value, and accepts only that canonical form
 * (sorted, unique, within range, counters consistent). */
#include "meter/rollup_internal.h"

#include <inttypes.h>
#include <msgpack.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#define ZSTD_LEVEL     3
#define SECTION_HEADER 16
#define ROW_FIELDS     20
#define NO_ID          UINT32_MAX
#define STATUS_CLASSES 11 /* none, 0xx .. 9xx */
#define MIN_ROW_BYTES  23 /* a 20-element array head (3 bytes) and 20 one-byte values */

static const uint8_t file_magic[4] = {'K', 'P', 'R', 'U'};
static const int64_t period_ms[KP_ROLLUP_LEVELS] = {KP_MINUTE_MS, KP_HOUR_MS, KP_DAY_MS};
static const char *const dim_names[KP_USAGE_DIMS] = {
    "tenant", "project", "feature", "provider", "model", "key", "status_class", "kind",
};

enum {
    HDR_VERSION = 4,
    HDR_SIZE = 6,
    HDR_DAY = 8,
    HDR_BODY_LEN = 16,
    HDR_BODY_CRC = 24,
    HDR_CRC = 28,
    SEC_ID = 0,
    SEC_COUNT = 4,
    SEC_RAW_LEN = 8,
    SEC_PAYLOAD_LEN = 12,
};

static uint64_t sat_add(uint64_t a, uint64_t b)
{
    return b > KP_ROLLUP_COUNT_MAX - a ? KP_ROLLUP_COUNT_MAX : a + b;
}

/* --- dimensions and time ------------------------------------------------- */

const char *kp_usage_dim_name(enum kp_usage_dim dim)
{
    return (unsigned)dim < KP_USAGE_DIMS ? dim_names[dim] : "?";
}

int kp_usage_dim_parse(const char *s, size_t len)
{
    for (int i = 0; i < KP_USAGE_DIMS; i++) {
        if (strlen(dim_names[i]) == len && memcmp(dim_names[i], s, len) == 0)
            return i;
    }
    return -1;
}

const char *kp_usage_status_class(uint16_t status, char buf[5])
{
    if (status == 0)
        return "none";
    buf[0] = (char)('0' + status / 100 % 10);
    memcpy(buf + 1, "xx", 3);
    return buf;
}

/* Whether @s[0..len) is a status class string. */
static bool status_class_valid(const char *s, size_t len)
{
    if (len == 4 && memcmp(s, "none", 4) == 0)
        return true;
    return len == 3 && s[0] >= '0' && s[0] <= '9' && s[1] == 'x' && s[2] == 'x';
}

int64_t kp_day_floor_ms(int64_t ms)
{
    /* The earliest midnight int64 holds: truncation rounds toward zero. */
    const int64_t earliest = INT64_MIN / KP_DAY_MS * KP_DAY_MS;
    if (ms < earliest)
        return earliest;
    int64_t r = ms % KP_DAY_MS;
    return r < 0 ? ms - r - KP_DAY_MS : ms - r;
}

static bool day_start_valid(int64_t ms)
{
    return kp_day_floor_ms(ms) == ms && ms <= INT64_MAX - KP_DAY_MS;
}

/* --- metrics ------------------------------------------------------------- */

void kp_rollup_metrics_init(struct kp_rollup_metrics *m)
{
    memset(m, 0, sizeof(*m));
    kp_sketch_init(&m->latency);
}

void kp_rollup_metrics_free(struct kp_rollup_metrics *m)
{
    kp_free(m->classes);
    kp_sketch_free(&m->latency);
    kp_rollup_metrics_init(m);
}

kp_nanousd kp_rollup_metrics_cost(const struct kp_rollup_metrics *m)
{
    /* Both are at most INT64_MAX, so the difference fits. */
    return (kp_nanousd)m->cost_charged - (kp_nanousd)m->cost_credited;
}

static int classes_reserve(struct kp_rollup_metrics *m, size_t n)
{
    if (n <= m->cap_classes)
        return KP_OK;
    if (n > UINT32_MAX / 2)
        return KP_ENOMEM;
    size_t cap = m->cap_classes ? m->cap_classes : 2;
    while (cap < n)
        cap *= 2;
    struct kp_rollup_class_count *c = kp_realloc(m->classes, cap * sizeof(*c));
    if (c == NULL)
        return KP_ENOMEM;
    m->classes = c;
    m->cap_classes = (uint32_t)cap;
    return KP_OK;
}

/* Count @count errors of class @id; room for a new class was reserved. */
static void class_put(struct kp_rollup_metrics *m, uint32_t id, uint64_t count)
{
    uint32_t at = 0;
    while (at < m->n_classes && m->classes[at].class_id < id)
        at++;
    if (at < m->n_classes && m->classes[at].class_id == id) {
        m->classes[at].count = sat_add(m->classes[at].count, count);
        return;
    }
    memmove(m->classes + at + 1, m->classes + at, (m->n_classes - at) * sizeof(*m->classes));
    m->classes[at] = (struct kp_rollup_class_count){id, count};
    m->n_classes++;
}

static int metrics_reserve(struct kp_rollup_metrics *dst, const struct kp_rollup_metrics *src)
{
    if (kp_sketch_reserve(&dst->latency, (size_t)dst->latency.n + src->latency.n) != KP_OK)
        return KP_ENOMEM;
    return classes_reserve(dst, (size_t)dst->n_classes + src->n_classes);
}

/* After metrics_reserve(dst, src): cannot fail. */
static void metrics_apply(struct kp_rollup_metrics *dst, const struct kp_rollup_metrics *src,
                          const uint32_t *class_map)
{
    dst->requests = sat_add(dst->requests, src->requests);
    dst->errors = sat_add(dst->errors, src->errors);
    dst->retries = sat_add(dst->retries, src->retries);
    dst->streamed = sat_add(dst->streamed, src->streamed);
    dst->tokens_in = sat_add(dst->tokens_in, src->tokens_in);
    dst->tokens_out = sat_add(dst->tokens_out, src->tokens_out);
    dst->tokens_cached = sat_add(dst->tokens_cached, src->tokens_cached);
    dst->cost_charged = sat_add(dst->cost_charged, src->cost_charged);
    dst->cost_credited = sat_add(dst->cost_credited, src->cost_credited);
    for (uint32_t i = 0; i < src->n_classes; i++) {
        uint32_t id = src->classes[i].class_id;
        class_put(dst, class_map ? class_map[id] : id, src->classes[i].count);
    }
    kp_sketch_merge(&dst->latency, &src->latency);
}

int kp_rollup_metrics_add(struct kp_rollup_metrics *dst, const struct kp_rollup_metrics *src,
                          const uint32_t *class_map)
{
    if (metrics_reserve(dst, src) != KP_OK)
        return KP_ENOMEM;
    metrics_apply(dst, src, class_map);
    return KP_OK;
}

/* Count one event; @class_id is NO_ID for a success. */
static int metrics_add_event(struct kp_rollup_metrics *m, const struct kp_usage_event *ev,
                             uint32_t class_id)
{
    if (class_id != NO_ID && classes_reserve(m, (size_t)m->n_classes + 1) != KP_OK)
        return KP_ENOMEM;
    if (kp_sketch_add(&m->latency, ev->total_us) != KP_OK)
        return KP_ENOMEM;
    if (class_id != NO_ID) {
        class_put(m, class_id, 1);
        m->errors = sat_add(m->errors, 1);
    }
    m->requests = sat_add(m->requests, 1);
    m->retries = sat_add(m->retries, ev->retries);
    m->streamed = sat_add(m->streamed, ev->streamed);
    m->tokens_in = sat_add(m->tokens_in, ev->tokens_in);
    m->tokens_out = sat_add(m->tokens_out, ev->tokens_out);
    m->tokens_cached = sat_add(m->tokens_cached, ev->tokens_cached);
    if (ev->cost >= 0)
        m->cost_charged = sat_add(m->cost_charged, (uint64_t)ev->cost);
    else
        m->cost_credited = sat_add(m->cost_credited, -(uint64_t)ev->cost);
    return KP_OK;
}

/* --- the set of merged segments ------------------------------------------ */

struct seg_entry {
    uint64_t seq;
    uint32_t node; /* string id */
};

struct seg_set {
    struct seg_entry *v;
    uint32_t n, cap;
    uint32_t *slots; /* index + 1; 0 is free */
    uint32_t mask;
};

static uint32_t seg_hash(uint32_t node, uint64_t seq)
{
    return (uint32_t)kp_rollup_mix(seq * 0x9e3779b97f4a7c15u ^ node);
}

static bool seg_find(const struct seg_set *s, uint32_t node, uint64_t seq, uint32_t *slot)
{
    if (s->slots == NULL)
        return false;
    for (uint32_t i = seg_hash(node, seq) & s->mask;; i = (i + 1) & s->mask) {
        uint32_t v = s->slots[i];
        if (v == 0) {
            *slot = i;
            return false;
        }
        if (s->v[v - 1].node == node && s->v[v - 1].seq == seq)
            return true;
    }
}

static void seg_reindex(struct seg_set *s)
{
    memset(s->slots, 0, ((size_t)s->mask + 1) * sizeof(*s->slots));
    for (uint32_t k = 0; k < s->n; k++) {
        uint32_t i = seg_hash(s->v[k].node, s->v[k].seq) & s->mask;
        while (s->slots[i] != 0)
            i = (i + 1) & s->mask;
        s->slots[i] = k + 1;
    }
}

/* Room for one more. */
static int seg_reserve(struct seg_set *s)
{
    if (s->n == s->cap) {
        if (s->cap >= UINT32_MAX / 4)
            return KP_ENOMEM;
        uint32_t cap = s->cap ? s->cap * 2 : 16;
        struct seg_entry *v = kp_realloc(s->v, cap * sizeof(*v));
        if (v == NULL)
            return KP_ENOMEM;
        s->v = v;
        s->cap = cap;
    }
    if (kp_rollup_slots_too_few(s->n, s->mask, s->slots)) {
        size_t nslots = s->slots ? ((size_t)s->mask + 1) * 2 : TABLE_MIN_SLOTS;
        uint32_t *slots = kp_malloc(nslots * sizeof(*slots));
        if (slots == NULL)
            return KP_ENOMEM;
        kp_free(s->slots);
        s->slots = slots;
        s->mask = (uint32_t)(nslots - 1);
        seg_reindex(s);
    }
    return KP_OK;
}

/* After seg_reserve; false when already there. */
static bool seg_insert(struct seg_set *s, uint32_t node, uint64_t seq)
{
    uint32_t slot = 0;
    if (seg_find(s, node, seq, &slot))
        return false;
    s->v[s->n] = (struct seg_entry){seq, node};
    s->slots[slot] = ++s->n;
    return true;
}

/* --- days ---------------------------------------------------------------- */

struct kp_rollup_day {
    int64_t start_ms;
    unsigned levels; /* KP_ROLLUP_LEVEL_BIT of each level held */
    uint64_t events;
    struct kp_strtab strings;
    struct kp_row_table rows[KP_ROLLUP_LEVELS];
    struct seg_set segs;
};

int kp_rollup_day_new(int64_t day_start_ms, struct kp_rollup_day **out)
{
    if (!day_start_valid(day_start_ms))
        return KP_EINVAL;
    struct kp_rollup_day *d = kp_calloc(1, sizeof(*d));
    if (d == NULL)
        return KP_ENOMEM;
    d->start_ms = day_start_ms;
    d->levels = KP_ROLLUP_ALL_LEVELS;
    kp_strtab_init(&d->strings);
    *out = d;
    return KP_OK;
}

void kp_rollup_day_free(struct kp_rollup_day *d)
{
    if (d == NULL)
        return;
    kp_strtab_free(&d->strings);
    for (int l = 0; l < KP_ROLLUP_LEVELS; l++)
        kp_row_table_free(&d->rows[l]);
    kp_free(d->segs.v);
    kp_free(d->segs.slots);
    kp_free(d);
}

int64_t kp_rollup_day_start(const struct kp_rollup_day *d)
{
    return d->start_ms;
}

unsigned kp_rollup_day_levels(const struct kp_rollup_day *d)
{
    return d->levels;
}

bool kp_rollup_day_has_segment(const struct kp_rollup_day *d, const char *node, uint64_t seq)
{
    uint32_t id, slot, hash = kp_rollup_hash_bytes(node, strlen(node));
    if (!kp_strtab_lookup(&d->strings, node, strlen(node), hash, &slot, &id))
        return false;
    return seg_find(&d->segs, id, seq, &slot);
}

size_t kp_rollup_day_segments(const struct kp_rollup_day *d)
{
    return d->segs.n;
}

uint64_t kp_rollup_day_events(const struct kp_rollup_day *d)
{
    return d->events;
}

size_t kp_rollup_day_rows(const struct kp_rollup_day *d, enum kp_rollup_level level)
{
    return (unsigned)level < KP_ROLLUP_LEVELS ? d->rows[level].n : 0;
}

const struct kp_rollup_row *kp_rollup_day_row(const struct kp_rollup_day *d,
                                              enum kp_rollup_level level, size_t i)
{
    if ((unsigned)level >= KP_ROLLUP_LEVELS || i >= d->rows[level].n)
        return NULL;
    return &d->rows[level].rows[i];
}

uint32_t kp_rollup_day_strings(const struct kp_rollup_day *d)
{
    return d->strings.n;
}

const char *kp_rollup_day_string(const struct kp_rollup_day *d, uint32_t id, size_t *len)
{
    if (id >= d->strings.n)
        return NULL;
    if (len != NULL)
        *len = d->strings.v[id].len;
    return d->strings.v[id].s;
}

bool kp_rollup_day_find_string(const struct kp_rollup_day *d, const char *s, size_t len,
                               uint32_t *id)
{
    uint32_t slot;
    return kp_strtab_lookup(&d->strings, s, len, kp_rollup_hash_bytes(s, len), &slot, id);
}

/* --- merging a segment --------------------------------------------------- */

/* One segment on its way into a day: its rows, built apart from the day's
 * (their strings are interned in the day's table, which is cut back to
 * @strings_before if the merge fails). */
struct merge {
    struct kp_rollup_day *d;
    struct kp_row_table delta[KP_ROLLUP_LEVELS];
    uint32_t status_id[STATUS_CLASSES];
    /* The last string of each dimension (the error class in the slot of
     * status_class): consecutive events often share values, and comparing
     * with the last one costs less than a lookup. */
    struct {
        const char *s;
        uint32_t len, id;
    } last[KP_USAGE_DIMS];
    uint64_t events;
    uint32_t strings_before;
};

static int intern_cstr(struct kp_rollup_day *d, const char *s, uint32_t *id)
{
    return kp_strtab_intern(&d->strings, s, strlen(s), id);
}

static int intern_field(struct merge *m, int slot, const char *s, uint32_t *id)
{
    size_t len = strlen(s);
    if (m->last[slot].s != NULL && m->last[slot].len == len &&
        memcmp(m->last[slot].s, s, len) == 0) {
        *id = m->last[slot].id;
        return KP_OK;
    }
    if (kp_strtab_intern(&m->d->strings, s, len, id) != KP_OK)
        return KP_ENOMEM;
    m->last[slot].s = m->d->strings.v[*id].s;
    m->last[slot].len = (uint32_t)len;
    m->last[slot].id = *id;
    return KP_OK;
}

static int event_key(struct merge *m, const struct kp_usage_event *ev, uint32_t *dim)
{
    const char *model = ev->model_served[0] ? ev->model_served : ev->model_requested;
    const char *values[KP_USAGE_DIMS] = {
        ev->tenant, ev->project, ev->feature, ev->provider, model, ev->key_id, NULL, ev->kind,
    };
    for (int i = 0; i < KP_USAGE_DIMS; i++) {
        if (values[i] != NULL && intern_field(m, i, values[i], &dim[i]) != KP_OK)
            return KP_ENOMEM;
    }
    unsigned c = ev->status ? ev->status / 100 % 10 + 1u : 0;
    if (m->status_id[c] == NO_ID) {
        char buf[5];
        if (intern_cstr(m->d, kp_usage_status_class(ev->status, buf), &m->status_id[c]) != KP_OK)
            return KP_ENOMEM;
    }
    dim[KP_USAGE_DIM_STATUS_CLASS] = m->status_id[c];
    return KP_OK;
}

static int merge_event(struct merge *m, const struct kp_usage_event *ev)
{
    int64_t day = m->d->start_ms;
    uint32_t dim[KP_USAGE_DIMS], class_id = NO_ID, idx;
    if (ev->time_ms < day || ev->time_ms >= day + KP_DAY_MS)
        return KP_OK;
    if (event_key(m, ev, dim) != KP_OK)
        return KP_ENOMEM;
    if (ev->error_class[0] &&
        intern_field(m, KP_USAGE_DIM_STATUS_CLASS, ev->error_class, &class_id) != KP_OK)
        return KP_ENOMEM;
    int64_t start = day + (ev->time_ms - day) / KP_MINUTE_MS * KP_MINUTE_MS;
    if (kp_row_table_upsert(&m->delta[KP_ROLLUP_MINUTE], start, dim, &idx) != KP_OK)
        return KP_ENOMEM;
    if (metrics_add_event(&m->delta[KP_ROLLUP_MINUTE].rows[idx].m, ev, class_id) != KP_OK)
        return KP_ENOMEM;
    m->events++;
    return KP_OK;
}

static int merge_read(struct merge *m, struct kp_segment_reader *r, char *errmsg, size_t errlen)
{
    struct kp_usage_event ev;
    const char *node = r->header.node;
    uint64_t seq = r->header.seq;
    while (kp_segment_reader_next(r, &ev)) {
        if (merge_event(m, &ev) != KP_OK)
            return kp_errf(errmsg, errlen, KP_ENOMEM, "segment %s/%" PRIu64 ": out of memory", node,
                           seq);
    }
    if (r->err != KP_OK)
        return kp_errf(errmsg, errlen, r->err == KP_ENOMEM ? KP_ENOMEM : KP_EPARSE,
                       "segment %s/%" PRIu64 ": offset %zu: %s", node, seq, r->err_offset,
                       r->errmsg);
    if (!r->sealed)
        return kp_errf(errmsg, errlen, KP_EPARSE,
                       "segment %s/%" PRIu64 ": offset %zu: segment is not sealed", node, seq,
                       r->len);
    return KP_OK;
}

/* Sum the delta's minute rows into hour rows, and those into a day row. */
static int merge_roll_up(struct merge *m)
{
    for (int l = KP_ROLLUP_HOUR; l < KP_ROLLUP_LEVELS; l++) {
        const struct kp_row_table *from = &m->delta[l - 1];
        struct kp_row_table *to = &m->delta[l];
        for (uint32_t i = 0; i < from->n; i++) {
            const struct kp_rollup_row *r = &from->rows[i];
            int64_t start =
                m->d->start_ms + (r->start_ms - m->d->start_ms) / period_ms[l] * period_ms[l];
            uint32_t idx;
            if (kp_row_table_upsert(to, start, r->dim, &idx) != KP_OK ||
                kp_rollup_metrics_add(&to->rows[idx].m, &r->m, NULL) != KP_OK)
                return KP_ENOMEM;
        }
    }
    return KP_OK;
}

/* Steps 1 and 2 of a commit: the day's row for each delta row (created
 * empty if missing, at an index >= @before) into @target, with room
 * reserved for the delta's classes and buckets in the rows that existed
 * (new rows will take the delta row's metrics whole). */
static int commit_prepare(struct merge *m, uint32_t **target, const uint32_t *before)
{
    for (int l = 0; l < KP_ROLLUP_LEVELS; l++) {
        struct kp_row_table *day = &m->d->rows[l];
        const struct kp_row_table *delta = &m->delta[l];
        for (uint32_t i = 0; i < delta->n; i++) {
            const struct kp_rollup_row *r = &delta->rows[i];
            if (kp_row_table_upsert(day, r->start_ms, r->dim, &target[l][i]) != KP_OK)
                return KP_ENOMEM;
        }
        for (uint32_t i = 0; i < delta->n; i++) {
            if (target[l][i] < before[l] &&
                metrics_reserve(&day->rows[target[l][i]].m, &delta->rows[i].m) != KP_OK)
                return KP_ENOMEM;
        }
    }
    return KP_OK;
}

/* Step 3: cannot fail. A row the commit created takes the delta row's
 * metrics (each day row has at most one delta row per commit). */
static void commit_apply(struct merge *m, uint32_t **target, const uint32_t *before)
{
    for (int l = 0; l < KP_ROLLUP_LEVELS; l++) {
        for (uint32_t i = 0; i < m->delta[l].n; i++) {
            struct kp_rollup_metrics *dst = &m->d->rows[l].rows[target[l][i]].m;
            struct kp_rollup_metrics *src = &m->delta[l].rows[i].m;
            if (target[l][i] < before[l]) {
                metrics_apply(dst, src, NULL);
            } else {
                *dst = *src;
                kp_rollup_metrics_init(src);
            }
        }
    }
}

static int merge_commit(struct merge *m, const char *node, uint64_t seq)
{
    struct kp_rollup_day *d = m->d;
    uint32_t *target[KP_ROLLUP_LEVELS] = {NULL}, rows_before[KP_ROLLUP_LEVELS], node_id;
    int rc = intern_cstr(d, node, &node_id);
    if (rc == KP_OK)
        rc = seg_reserve(&d->segs);
    for (int l = 0; l < KP_ROLLUP_LEVELS; l++) {
        rows_before[l] = d->rows[l].n;
        target[l] = kp_malloc(((size_t)m->delta[l].n + 1) * sizeof(uint32_t));
        if (target[l] == NULL)
            rc = KP_ENOMEM;
    }
    if (rc == KP_OK)
        rc = commit_prepare(m, target, rows_before);
    if (rc == KP_OK) {
        commit_apply(m, target, rows_before);
        seg_insert(&d->segs, node_id, seq);
        d->events = sat_add(d->events, m->events);
    } else {
        for (int l = 0; l < KP_ROLLUP_LEVELS; l++)
            kp_row_table_truncate(&d->rows[l], rows_before[l]);
    }
    for (int l = 0; l < KP_ROLLUP_LEVELS; l++)
        kp_free(target[l]);
    return rc;
}

int kp_rollup_day_merge_segment(struct kp_rollup_day *d, const void *seg, size_t len, char *errmsg,
                                size_t errlen)
{
    struct kp_segment_reader r;
    struct merge m = {.d = d, .strings_before = d->strings.n};
    if (d->levels != KP_ROLLUP_ALL_LEVELS)
        return kp_errf(errmsg, errlen, KP_EINVAL,
                       "rollup day was decoded without all its levels: it cannot take segments");
    int rc = kp_segment_reader_init(&r, seg, len);
    if (rc != KP_OK) {
        rc = kp_errf(errmsg, errlen, rc == KP_ENOMEM ? KP_ENOMEM : KP_EPARSE,
                     "segment: offset %zu: %s", r.err_offset, r.errmsg);
        goto out;
    }
    if (kp_rollup_day_has_segment(d, r.header.node, r.header.seq)) {
        rc = kp_errf(errmsg, errlen, KP_EEXIST, "segment %s/%" PRIu64 " is already merged",
                     r.header.node, r.header.seq);
        goto out;
    }
    memset(m.status_id, 0xff, sizeof(m.status_id));
    rc = merge_read(&m, &r, errmsg, errlen);
    if (rc == KP_OK &&
        (merge_roll_up(&m) != KP_OK || merge_commit(&m, r.header.node, r.header.seq) != KP_OK))
        rc = kp_errf(errmsg, errlen, KP_ENOMEM, "segment %s/%" PRIu64 ": out of memory",
                     r.header.node, r.header.seq);
    if (rc != KP_OK)
        kp_strtab_truncate(&d->strings, m.strings_before);
out:
    for (int l = 0; l < KP_ROLLUP_LEVELS; l++)
        kp_row_table_free(&m.delta[l]);
    kp_segment_reader_close(&r);
    return rc;
}

/* --- encoding ------------------------------------------------------------ */

/* A msgpack packer into a kp_buf that remembers a failed append, so that
 * the packing code checks once at the end. */
struct packer {
    msgpack_packer pk;
    struct kp_buf buf;
    bool failed;
};

static int packer_write(void *data, const char *p, size_t n)
{
    struct packer *k = data;
    if (kp_buf_append(&k->buf, p, n) != 0) {
        k->failed = true;
        return -1;
    }
    return 0;
}

static void packer_init(struct packer *k)
{
    kp_buf_init(&k->buf);
    k->failed = false;
    msgpack_packer_init(&k->pk, k, packer_write);
}

/* A row's place in the file: its period and ranks, for sorting. */
struct row_ref {
    uint32_t period;
    uint32_t rank[KP_USAGE_DIMS];
    uint32_t idx;
};

static int row_ref_cmp(const void *a, const void *b)
{
    const struct row_ref *x = a, *y = b;
    if (x->period != y->period)
        return x->period < y->period ? -1 : 1;
    for (int i = 0; i < KP_USAGE_DIMS; i++) {
        if (x->rank[i] != y->rank[i])
            return x->rank[i] < y->rank[i] ? -1 : 1;
    }
    return 0;
}

static int seg_cmp(const void *a, const void *b)
{
    const struct seg_entry *x = a, *y = b;
    if (x->node != y->node)
        return x->node < y->node ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static int class_cmp(const void *a, const void *b)
{
    const struct kp_rollup_class_count *x = a, *y = b;
    return x->class_id < y->class_id ? -1 : x->class_id > y->class_id;
}

struct encoder {
    const struct kp_rollup_day *d;
    uint32_t *rank; /* string id -> index in the file's string table, NO_ID if unused */
    struct kp_str_ref *strings;
    uint32_t nstrings;
    struct kp_rollup_class_count *classes; /* scratch for one row */
    size_t classes_cap;
    struct kp_buf body;
    void *cctx;
};

static void mark_used(struct encoder *e, uint32_t id)
{
    if (e->rank[id] == NO_ID) {
        e->rank[id] = 0;
        e->strings[e->nstrings++] =
            (struct kp_str_ref){e->d->strings.v[id].s, e->d->strings.v[id].len, id};
    }
}

/* The strings rows and segments use, sorted; rank[] maps ids to them. */
static int encode_rank_strings(struct encoder *e)
{
    const struct kp_rollup_day *d = e->d;
    e->rank = kp_malloc(((size_t)d->strings.n + 1) * sizeof(*e->rank));
    e->strings = kp_malloc(((size_t)d->strings.n + 1) * sizeof(*e->strings));
    if (e->rank == NULL || e->strings == NULL)
        return KP_ENOMEM;
    memset(e->rank, 0xff, (size_t)d->strings.n * sizeof(*e->rank));
    for (int l = 0; l < KP_ROLLUP_LEVELS; l++) {
        for (uint32_t i = 0; i < d->rows[l].n; i++) {
            const struct kp_rollup_row *r = &d->rows[l].rows[i];
            for (int k = 0; k < KP_USAGE_DIMS; k++)
                mark_used(e, r->dim[k]);
            for (uint32_t c = 0; c < r->m.n_classes; c++)
                mark_used(e, r->m.classes[c].class_id);
        }
    }
    for (uint32_t i = 0; i < d->segs.n; i++)
        mark_used(e, d->segs.v[i].node);
    qsort(e->strings, e->nstrings, sizeof(*e->strings), kp_str_ref_cmp);
    for (uint32_t i = 0; i < e->nstrings; i++)
        e->rank[e->strings[i].id] = i;
    return KP_OK;
}

/* Compress @raw as section @id holding @count values onto the body. */
static int encode_section(struct encoder *e, uint32_t id, uint32_t count, const struct kp_buf *raw)
{
    if (raw->len > KP_ROLLUP_SECTION_MAX_RAW)
        return KP_ETOOBIG;
    size_t bound = ZSTD_compressBound(raw->len);
    if (kp_buf_reserve(&e->body, SECTION_HEADER + bound) != 0)
        return KP_ENOMEM;
    uint8_t *h = (uint8_t *)e->body.data + e->body.len;
    size_t n = ZSTD_compressCCtx(e->cctx, h + SECTION_HEADER, bound, raw->data ? raw->data : "",
                                 raw->len, ZSTD_LEVEL);
    if (ZSTD_isError(n))
        return kp_zstd_err(n, KP_EIO);
    kp_put_le(h + SEC_ID, id, 4);
    kp_put_le(h + SEC_COUNT, count, 4);
    kp_put_le(h + SEC_RAW_LEN, raw->len, 4);
    kp_put_le(h + SEC_PAYLOAD_LEN, n, 4);
    e->body.len += SECTION_HEADER + n;
    return KP_OK;
}

static int encode_meta(struct encoder *e)
{
    const struct seg_set *s = &e->d->segs;
    struct seg_entry *segs = kp_malloc(((size_t)s->n + 1) * sizeof(*segs));
    if (segs == NULL)
        return KP_ENOMEM;
    for (uint32_t i = 0; i < s->n; i++)
        segs[i] = (struct seg_entry){s->v[i].seq, e->rank[s->v[i].node]};
    qsort(segs, s->n, sizeof(*segs), seg_cmp);
    struct packer k;
    packer_init(&k);
    msgpack_pack_array(&k.pk, 3);
    msgpack_pack_uint64(&k.pk, e->d->events);
    msgpack_pack_array(&k.pk, e->nstrings);
    for (uint32_t i = 0; i < e->nstrings; i++) {
        msgpack_pack_str(&k.pk, e->strings[i].len);
        msgpack_pack_str_body(&k.pk, e->strings[i].s, e->strings[i].len);
    }
    msgpack_pack_array(&k.pk, (size_t)s->n * 2);
    for (uint32_t i = 0; i < s->n; i++) {
        msgpack_pack_uint32(&k.pk, segs[i].node);
        msgpack_pack_uint64(&k.pk, segs[i].seq);
    }
    kp_free(segs);
    int rc = k.failed ? KP_ENOMEM : encode_section(e, 0, 1, &k.buf);
    kp_buf_free(&k.buf);
    return rc;
}

static void pack_metrics(struct encoder *e, msgpack_packer *pk, const struct kp_rollup_metrics *m)
{
    const uint64_t counters[] = {
        m->requests,   m->errors,        m->retries,      m->streamed,      m->tokens_in,
        m->tokens_out, m->tokens_cached, m->cost_charged, m->cost_credited,
    };
    for (size_t i = 0; i < sizeof(counters) / sizeof(counters[0]); i++)
        msgpack_pack_uint64(pk, counters[i]);
    for (uint32_t c = 0; c < m->n_classes; c++)
        e->classes[c] =
            (struct kp_rollup_class_count){e->rank[m->classes[c].class_id], m->classes[c].count};
    if (m->n_classes > 1)
        qsort(e->classes, m->n_classes, sizeof(*e->classes), class_cmp);
    msgpack_pack_array(pk, (size_t)m->n_classes * 2);
    for (uint32_t c = 0; c < m->n_classes; c++) {
        msgpack_pack_uint32(pk, e->classes[c].class_id);
        msgpack_pack_uint64(pk, e->classes[c].count);
    }
    const struct kp_sketch *s = &m->latency;
    msgpack_pack_array(pk, 1 + (size_t)s->n * 2);
    msgpack_pack_uint64(pk, s->zero);
    for (uint32_t b = 0; b < s->n; b++) {
        int32_t prev = b ? s->buckets[b - 1].index : 0;
        msgpack_pack_uint32(pk, (uint32_t)(s->buckets[b].index - prev));
        msgpack_pack_uint64(pk, s->buckets[b].count);
    }
}

static int encode_row(struct encoder *e, struct packer *k, const struct row_ref *ref,
                      const struct kp_rollup_row *r)
{
    if (r->m.n_classes > e->classes_cap) {
        struct kp_rollup_class_count *c = kp_realloc(e->classes, r->m.n_classes * sizeof(*c));
        if (c == NULL)
            return KP_ENOMEM;
        e->classes = c;
        e->classes_cap = r->m.n_classes;
    }
    msgpack_pack_array(&k->pk, ROW_FIELDS);
    msgpack_pack_uint32(&k->pk, ref->period);
    for (int i = 0; i < KP_USAGE_DIMS; i++)
        msgpack_pack_uint32(&k->pk, ref->rank[i]);
    pack_metrics(e, &k->pk, &r->m);
    return KP_OK;
}

static int encode_rows(struct encoder *e, int level)
{
    const struct kp_row_table *t = &e->d->rows[level];
    struct row_ref *refs = kp_malloc(((size_t)t->n + 1) * sizeof(*refs));
    if (refs == NULL)
        return KP_ENOMEM;
    for (uint32_t i = 0; i < t->n; i++) {
        const struct kp_rollup_row *r = &t->rows[i];
        refs[i].period = (uint32_t)((r->start_ms - e->d->start_ms) / period_ms[level]);
        for (int k = 0; k < KP_USAGE_DIMS; k++)
            refs[i].rank[k] = e->rank[r->dim[k]];
        refs[i].idx = i;
    }
    qsort(refs, t->n, sizeof(*refs), row_ref_cmp);
    struct packer k;
    packer_init(&k);
    int rc = KP_OK;
    for (uint32_t i = 0; i < t->n && rc == KP_OK; i++)
        rc = encode_row(e, &k, &refs[i], &t->rows[refs[i].idx]);
    if (rc == KP_OK)
        rc = k.failed ? KP_ENOMEM : encode_section(e, 1 + (uint32_t)level, t->n, &k.buf);
    kp_buf_free(&k.buf);
    kp_free(refs);
    return rc;
}

static int encode_file(struct encoder *e, struct kp_buf *out)
{
    uint8_t h[KP_ROLLUP_HEADER_SIZE] = {0};
    memcpy(h, file_magic, sizeof(file_magic));
    kp_put_le(h + HDR_VERSION, KP_ROLLUP_VERSION, 2);
    kp_put_le(h + HDR_SIZE, KP_ROLLUP_HEADER_SIZE, 2);
    kp_put_le(h + HDR_DAY, (uint64_t)e->d->start_ms, 8);
    kp_put_le(h + HDR_BODY_LEN, e->body.len, 8);
    kp_put_le(h + HDR_BODY_CRC, kp_segment_crc32c(0, e->body.data, e->body.len), 4);
    kp_put_le(h + HDR_CRC, kp_segment_crc32c(0, h, HDR_CRC), 4);
    size_t mark = out->len;
    if (kp_buf_append(out, h, sizeof(h)) != 0 ||
        kp_buf_append(out, e->body.data, e->body.len) != 0) {
        out->len = mark;
        if (out->data != NULL)
            out->data[mark] = '\0';
        return KP_ENOMEM;
    }
    return KP_OK;
}

int kp_rollup_day_encode(const struct kp_rollup_day *d, struct kp_buf *out)
{
    struct encoder e = {.d = d};
    if (d->levels != KP_ROLLUP_ALL_LEVELS)
        return KP_EINVAL;
    kp_buf_init(&e.body);
    int rc = KP_ENOMEM;
    e.cctx = kp_zstd_cctx_new();
    if (e.cctx != NULL)
        rc = encode_rank_strings(&e);
    if (rc == KP_OK)
        rc = encode_meta(&e);
    for (int l = 0; l < KP_ROLLUP_LEVELS && rc == KP_OK; l++)
        rc = encode_rows(&e, l);
    if (rc == KP_OK)
        rc = encode_file(&e, out);
    ZSTD_freeCCtx(e.cctx);
    kp_buf_free(&e.body);
    kp_free(e.rank);
    kp_free(e.strings);
    kp_free(e.classes);
    return rc;
}

/* --- decoding ------------------------------------------------------------ */

/* An int64 stored as two's complement. */
static int64_t get_signed(const uint8_t *p)
{
    uint64_t v = kp_get_le(p, 8);
    return v <= INT64_MAX ? (int64_t)v : -(int64_t)(~v) - 1;
}

struct decoder {
    const uint8_t *buf;
    size_t len;
    char *errmsg;
    size_t errlen;
    struct kp_rollup_day *d;
    void *dctx;
    uint8_t *raw; /* the decompressed section */
    size_t raw_cap, raw_len;
    size_t section_off; /* file offset of the section being parsed */
    const char *section;
    struct kp_mp_reader mp;
    uint8_t *str_flags; /* per string: STR_STATUS, STR_NONEMPTY */
    int32_t index_max;  /* the highest bucket a value can have */
};

enum { STR_STATUS = 1, STR_NONEMPTY = 2 };

static int dec_fail(struct decoder *x, int rc, size_t off, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int dec_fail(struct decoder *x, int rc, size_t off, const char *fmt, ...)
{
    char what[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    return kp_errf(x->errmsg, x->errlen, rc, "rollup: offset %zu: %s", off, what);
}

static int in_section(struct decoder *x, size_t at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* An error inside a decompressed section, at its byte @at. */
static int in_section(struct decoder *x, size_t at, const char *fmt, ...)
{
    char what[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    return dec_fail(x, KP_EPARSE, x->section_off, "%s section, byte %zu of its content: %s",
                    x->section, at, what);
}

static int mp_fail(struct decoder *x, const char *what, uint64_t max)
{
    const struct kp_mp_reader *r = &x->mp;
    switch (r->err) {
    case KP_MP_ETYPE:
        return in_section(x, r->err_off, "%s: found %s", what, kp_mp_kind_name(r->err_kind));
    case KP_MP_ERANGE:
        return in_section(x, r->err_off, "%s: out of range (at most %" PRIu64 ")", what, max);
    case KP_MP_ECOUNT:
        return in_section(x, r->err_off, "%s: claims more elements than bytes remain", what);
    default:
        return in_section(x, r->err_off, "%s: truncated (or a bad type byte)", what);
    }
}

static int rd_uint(struct decoder *x, uint64_t max, uint64_t *v, const char *what)
{
    return kp_mp_read_uint(&x->mp, max, v) ? KP_OK : mp_fail(x, what, max);
}

/* An array head of exactly @n elements (@n < 0: any), its count in *got. */
static int rd_array(struct decoder *x, int64_t n, uint64_t *got, const char *what)
{
    struct kp_mp_head h;
    size_t at = kp_mp_offset(&x->mp);
    if (!kp_mp_read_head(&x->mp, &h))
        return mp_fail(x, what, 0);
    if (h.kind != KP_MP_ARRAY)
        return in_section(x, at, "%s: expected an array, found %s", what, kp_mp_kind_name(h.kind));
    if (n >= 0 && h.n != (uint64_t)n)
        return in_section(x, at, "%s: expected %" PRId64 " elements, found %" PRIu64, what, n, h.n);
    /* Every element takes at least a byte: this bounds what callers
     * allocate for the elements. */
    if (h.n > kp_mp_left(&x->mp))
        return in_section(x, at, "%s: claims %" PRIu64 " elements, %zu bytes remain", what, h.n,
                          kp_mp_left(&x->mp));
    *got = h.n;
    return KP_OK;
}

/* A string id: an index into the string table decoded so far. */
static int rd_id(struct decoder *x, uint64_t *v, const char *what)
{
    size_t at = kp_mp_offset(&x->mp);
    int rc = rd_uint(x, UINT32_MAX, v, what);
    if (rc == KP_OK && *v >= x->d->strings.n)
        return in_section(x, at, "%s: no string %" PRIu64 " (the table has %" PRIu32 ")", what, *v,
                          x->d->strings.n);
    return rc;
}

static int check_header(struct decoder *x)
{
    const uint8_t *p = x->buf;
    if (x->len < sizeof(file_magic) || memcmp(p, file_magic, sizeof(file_magic)) != 0)
        return dec_fail(x, KP_EPARSE, 0, "not a rollup file (bad magic)");
    if (x->len < KP_ROLLUP_HEADER_SIZE)
        return dec_fail(x, KP_EPARSE, 0, "header truncated (%zu of %d bytes)", x->len,
                        KP_ROLLUP_HEADER_SIZE);
    unsigned version = (unsigned)kp_get_le(p + HDR_VERSION, 2);
    if (version != KP_ROLLUP_VERSION)
        return dec_fail(x, KP_EVERSION, HDR_VERSION, "unsupported format version %u", version);
    if (kp_get_le(p + HDR_SIZE, 2) != KP_ROLLUP_HEADER_SIZE)
        return dec_fail(x, KP_EPARSE, HDR_SIZE, "header size %u, expected %d",
                        (unsigned)kp_get_le(p + HDR_SIZE, 2), KP_ROLLUP_HEADER_SIZE);
    if (kp_get_le(p + HDR_CRC, 4) != kp_segment_crc32c(0, p, HDR_CRC))
        return dec_fail(x, KP_EPARSE, 0, "header checksum mismatch");
    int64_t day = get_signed(p + HDR_DAY);
    if (!day_start_valid(day))
        return dec_fail(x, KP_EPARSE, HDR_DAY, "day start %" PRId64 " is not a UTC midnight", day);
    uint64_t body = kp_get_le(p + HDR_BODY_LEN, 8);
    if (body != x->len - KP_ROLLUP_HEADER_SIZE)
        return dec_fail(x, KP_EPARSE, HDR_BODY_LEN,
                        "header says %" PRIu64 " bytes follow it, found %zu", body,
                        x->len - KP_ROLLUP_HEADER_SIZE);
    if (kp_get_le(p + HDR_BODY_CRC, 4) !=
        kp_segment_crc32c(0, p + KP_ROLLUP_HEADER_SIZE, x->len - KP_ROLLUP_HEADER_SIZE))
        return dec_fail(x, KP_EPARSE, KP_ROLLUP_HEADER_SIZE,
                        "checksum mismatch over the bytes after the header");
    return kp_rollup_day_new(day, &x->d) == KP_OK ? KP_OK
                                                  : dec_fail(x, KP_ENOMEM, 0, "out of memory");
}

static int decompress_section(struct decoder *x, size_t at, size_t payload, size_t raw)
{
    enum kp_zstd_frame shape = kp_zstd_frame_check(x->buf + at, payload, raw);
    if (shape == KP_ZSTD_FRAME_SIZE)
        return dec_fail(x, KP_EPARSE, at, "%s section: zstd frame does not declare %zu bytes",
                        x->section, raw);
    if (shape != KP_ZSTD_FRAME_OK)
        return dec_fail(x, KP_EPARSE, at, "%s section: payload is not exactly one zstd frame",
                        x->section);
    if (x->dctx == NULL && (x->dctx = kp_zstd_dctx_new()) == NULL)
        return dec_fail(x, KP_ENOMEM, at, "out of memory");
    if (raw > x->raw_cap) {
        kp_free(x->raw);
        x->raw_cap = 0;
        if ((x->raw = kp_malloc(raw)) == NULL)
            return dec_fail(x, KP_ENOMEM, at, "out of memory");
        x->raw_cap = raw;
    }
    size_t n = ZSTD_decompressDCtx(x->dctx, x->raw, raw, x->buf + at, payload);
    if (ZSTD_isError(n))
        return dec_fail(x, kp_zstd_err(n, KP_EPARSE), at, "%s section: zstd: %s", x->section,
                        ZSTD_getErrorName(n));
    if (n != raw)
        return dec_fail(x, KP_EPARSE, at, "%s section: %zu bytes, header says %zu", x->section, n,
                        raw);
    x->raw_len = raw;
    kp_mp_reader_init(&x->mp, x->raw, raw);
    return KP_OK;
}

/* The string table: strictly increasing byte strings. */
static int decode_strings(struct decoder *x)
{
    uint64_t n;
    int rc = rd_array(x, -1, &n, "string table");
    if (rc == KP_OK && (x->str_flags = kp_malloc(n + 1)) == NULL)
        rc = dec_fail(x, KP_ENOMEM, x->section_off, "out of memory");
    for (uint64_t i = 0; i < n && rc == KP_OK; i++) {
        const uint8_t *s;
        size_t len, at = kp_mp_offset(&x->mp);
        uint32_t id;
        if (!kp_mp_read_str(&x->mp, KP_USAGE_STR_MAX, &s, &len))
            return mp_fail(x, "string", KP_USAGE_STR_MAX);
        if (!kp_usage_str_valid((const char *)s, len))
            return in_section(x, at, "string %" PRIu64 ": not valid UTF-8", i);
        struct kp_str_ref cur = {(const char *)s, (uint32_t)len, 0}, prev;
        if (i > 0) {
            prev = (struct kp_str_ref){x->d->strings.v[i - 1].s, x->d->strings.v[i - 1].len, 0};
            if (kp_str_ref_cmp(&prev, &cur) >= 0)
                return in_section(x, at, "string %" PRIu64 ": not after the one before it", i);
        }
        if (kp_strtab_intern(&x->d->strings, cur.s, len, &id) != KP_OK)
            return dec_fail(x, KP_ENOMEM, x->section_off, "out of memory");
        x->str_flags[i] =
            (uint8_t)((status_class_valid(cur.s, len) ? STR_STATUS : 0) | (len ? STR_NONEMPTY : 0));
    }
    return rc;
}

static int decode_segments(struct decoder *x)
{
    uint64_t n, node, seq, prev_node = 0, prev_seq = 0;
    int rc = rd_array(x, -1, &n, "segment list");
    if (rc == KP_OK && n % 2 != 0)
        return in_section(x, kp_mp_offset(&x->mp), "segment list of odd length %" PRIu64, n);
    for (uint64_t i = 0; i < n / 2 && rc == KP_OK; i++) {
        size_t at = kp_mp_offset(&x->mp);
        rc = rd_id(x, &node, "segment node");
        if (rc == KP_OK)
            rc = rd_uint(x, UINT64_MAX, &seq, "segment sequence");
        if (rc != KP_OK)
            return rc;
        if (x->d->strings.v[node].len == 0 || x->d->strings.v[node].len > KP_SEGMENT_NODE_MAX)
            return in_section(x, at, "segment %" PRIu64 ": invalid node name", i);
        if (i > 0 && (node < prev_node || (node == prev_node && seq <= prev_seq)))
            return in_section(x, at, "segment %" PRIu64 ": not after the one before it", i);
        if (seg_reserve(&x->d->segs) != KP_OK)
            return dec_fail(x, KP_ENOMEM, x->section_off, "out of memory");
        seg_insert(&x->d->segs, (uint32_t)node, seq);
        prev_node = node;
        prev_seq = seq;
    }
    return rc;
}

static int decode_meta(struct decoder *x, uint32_t count)
{
    uint64_t n;
    if (count != 1)
        return dec_fail(x, KP_EPARSE, x->section_off + SEC_COUNT,
                        "meta section holds %" PRIu32 " values, expected 1", count);
    int rc = rd_array(x, 3, &n, "meta");
    if (rc == KP_OK)
        rc = rd_uint(x, KP_ROLLUP_COUNT_MAX, &x->d->events, "event count");
    if (rc == KP_OK)
        rc = decode_strings(x);
    if (rc == KP_OK)
        rc = decode_segments(x);
    if (rc == KP_OK && kp_mp_left(&x->mp) != 0)
        rc =
            in_section(x, kp_mp_offset(&x->mp), "%zu bytes after the metadata", kp_mp_left(&x->mp));
    return rc;
}

static int decode_classes(struct decoder *x, struct kp_rollup_metrics *m)
{
    uint64_t n, id, count, sum = 0;
    size_t at = kp_mp_offset(&x->mp);
    int rc = rd_array(x, -1, &n, "errors by class");
    if (rc == KP_OK && n % 2 != 0)
        return in_section(x, at, "errors by class: odd length %" PRIu64, n);
    if (rc == KP_OK && n && classes_reserve(m, n / 2) != KP_OK)
        return dec_fail(x, KP_ENOMEM, x->section_off, "out of memory");
    for (uint64_t i = 0; i < n / 2 && rc == KP_OK; i++) {
        at = kp_mp_offset(&x->mp);
        rc = rd_id(x, &id, "error class");
        if (rc == KP_OK)
            rc = rd_uint(x, KP_ROLLUP_COUNT_MAX, &count, "error count");
        if (rc != KP_OK)
            return rc;
        if (!(x->str_flags[id] & STR_NONEMPTY) || count == 0)
            return in_section(x, at, "errors by class: empty class or zero count");
        if (i > 0 && id <= m->classes[i - 1].class_id)
            return in_section(x, at, "errors by class: classes out of order");
        m->classes[m->n_classes++] = (struct kp_rollup_class_count){(uint32_t)id, count};
        sum = sat_add(sum, count);
    }
    if (rc == KP_OK && sum != m->errors)
        return in_section(x, at, "errors by class add up to %" PRIu64 ", errors %" PRIu64, sum,
                          m->errors);
    return rc;
}

static int decode_sketch(struct decoder *x, struct kp_sketch *s)
{
    uint64_t n, delta, count, sum;
    size_t at = kp_mp_offset(&x->mp);
    int rc = rd_array(x, -1, &n, "latency sketch");
    if (rc == KP_OK && (n % 2 != 1 || n / 2 > KP_SKETCH_MAX_BUCKETS))
        return in_section(x, at, "latency sketch: %" PRIu64 " elements", n);
    if (rc == KP_OK)
        rc = rd_uint(x, KP_ROLLUP_COUNT_MAX, &s->zero, "zero count");
    if (rc == KP_OK && n > 1 && kp_sketch_reserve(s, n / 2) != KP_OK)
        return dec_fail(x, KP_ENOMEM, x->section_off, "out of memory");
    sum = s->zero;
    int64_t index = 0;
    for (uint64_t i = 0; i < n / 2 && rc == KP_OK; i++) {
        at = kp_mp_offset(&x->mp);
        rc = rd_uint(x, (uint64_t)x->index_max, &delta, "bucket index");
        if (rc == KP_OK)
            rc = rd_uint(x, KP_ROLLUP_COUNT_MAX, &count, "bucket count");
        if (rc != KP_OK)
            return rc;
        index += (int64_t)delta;
        if ((i > 0 && delta == 0) || index > x->index_max || count == 0)
            return in_section(x, at, "latency sketch: bad bucket %" PRIu64, i);
        s->buckets[s->n++] = (struct kp_sketch_bucket){(int32_t)index, count};
        sum = sat_add(sum, count);
    }
    s->count = sum;
    return rc;
}

/* The nine counters, then the classes and the sketch; then the rules that
 * tie them together. */
static int decode_metrics(struct decoder *x, struct kp_rollup_metrics *m, size_t row_at)
{
    static const char *const names[] = {
        "requests",   "errors",        "retries",      "streamed",      "tokens_in",
        "tokens_out", "tokens_cached", "cost_charged", "cost_credited",
    };
    uint64_t *counters[] = {
        &m->requests,   &m->errors,        &m->retries,      &m->streamed,      &m->tokens_in,
        &m->tokens_out, &m->tokens_cached, &m->cost_charged, &m->cost_credited,
    };
    int rc = KP_OK;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]) && rc == KP_OK; i++)
        rc = rd_uint(x, KP_ROLLUP_COUNT_MAX, counters[i], names[i]);
    if (rc == KP_OK)
        rc = decode_classes(x, m);
    if (rc == KP_OK)
        rc = decode_sketch(x, &m->latency);
    if (rc != KP_OK)
        return rc;
    if (m->requests == 0 || m->errors > m->requests || m->streamed > m->requests)
        return in_section(
            x, row_at, "row counts %" PRIu64 " requests, %" PRIu64 " errors, %" PRIu64 " streamed",
            m->requests, m->errors, m->streamed);
    if (m->latency.count != m->requests)
        return in_section(x, row_at,
                          "latency sketch holds %" PRIu64 " values, %" PRIu64 " requests",
                          m->latency.count, m->requests);
    return KP_OK;
}

/* One row's key: its period and dimensions, strictly after @prev's. */
static int decode_key(struct decoder *x, int level, struct row_ref *key, const struct row_ref *prev,
                      size_t at)
{
    uint64_t v;
    int rc = rd_uint(x, (uint64_t)(KP_DAY_MS / period_ms[level] - 1), &v, "period");
    key->period = (uint32_t)v;
    for (int i = 0; i < KP_USAGE_DIMS && rc == KP_OK; i++) {
        rc = rd_id(x, &v, dim_names[i]);
        key->rank[i] = (uint32_t)v;
    }
    if (rc != KP_OK)
        return rc;
    if (!(x->str_flags[key->rank[KP_USAGE_DIM_STATUS_CLASS]] & STR_STATUS))
        return in_section(x, at, "status_class: not none or Nxx");
    if (!(x->str_flags[key->rank[KP_USAGE_DIM_KIND]] & STR_NONEMPTY))
        return in_section(x, at, "kind: empty");
    if (prev != NULL && row_ref_cmp(prev, key) >= 0)
        return in_section(x, at, "row not after the one before it");
    return KP_OK;
}

static int decode_row(struct decoder *x, int level, struct row_ref *key, const struct row_ref *prev)
{
    uint64_t n;
    size_t at = kp_mp_offset(&x->mp);
    struct kp_rollup_metrics m;
    uint32_t idx;
    kp_rollup_metrics_init(&m);
    int rc = rd_array(x, ROW_FIELDS, &n, "row");
    if (rc == KP_OK)
        rc = decode_key(x, level, key, prev, at);
    if (rc == KP_OK)
        rc = decode_metrics(x, &m, at);
    int64_t start = x->d->start_ms + (int64_t)key->period * period_ms[level];
    if (rc == KP_OK && kp_row_table_upsert(&x->d->rows[level], start, key->rank, &idx) != KP_OK)
        rc = dec_fail(x, KP_ENOMEM, x->section_off, "out of memory");
    if (rc != KP_OK) {
        kp_rollup_metrics_free(&m);
        return rc;
    }
    x->d->rows[level].rows[idx].m = m;
    return KP_OK;
}

static int decode_rows(struct decoder *x, int level, uint32_t count)
{
    struct row_ref key[2];
    if (count > x->raw_len / MIN_ROW_BYTES)
        return dec_fail(x, KP_EPARSE, x->section_off + SEC_COUNT,
                        "%s section claims %" PRIu32 " rows in %zu bytes", x->section, count,
                        x->raw_len);
    for (uint32_t i = 0; i < count; i++) {
        int rc = decode_row(x, level, &key[i % 2], i ? &key[(i + 1) % 2] : NULL);
        if (rc != KP_OK)
            return rc;
    }
    if (kp_mp_left(&x->mp) != 0)
        return in_section(x, kp_mp_offset(&x->mp), "%zu bytes after the last row",
                          kp_mp_left(&x->mp));
    return KP_OK;
}

static const char *const section_name[1 + KP_ROLLUP_LEVELS] = {"meta", "minute rows", "hour rows",
                                                               "day rows"};

/* Section @id at *off: check its header, and parse it if @parse. */
static int decode_section(struct decoder *x, uint32_t id, size_t *off, bool parse)
{
    const uint8_t *h = x->buf + *off;
    size_t left = x->len - *off;
    x->section = section_name[id];
    x->section_off = *off;
    if (left < SECTION_HEADER)
        return dec_fail(x, KP_EPARSE, *off, "%s section header truncated", x->section);
    if (kp_get_le(h + SEC_ID, 4) != id)
        return dec_fail(x, KP_EPARSE, *off + SEC_ID, "expected section %" PRIu32 " (%s), found %u",
                        id, x->section, (unsigned)kp_get_le(h + SEC_ID, 4));
    uint32_t count = (uint32_t)kp_get_le(h + SEC_COUNT, 4);
    size_t raw = (size_t)kp_get_le(h + SEC_RAW_LEN, 4);
    size_t payload = (size_t)kp_get_le(h + SEC_PAYLOAD_LEN, 4);
    if (raw > KP_ROLLUP_SECTION_MAX_RAW)
        return dec_fail(x, KP_EPARSE, *off + SEC_RAW_LEN,
                        "%s section claims %zu bytes, the limit is %u", x->section, raw,
                        KP_ROLLUP_SECTION_MAX_RAW);
    if (payload > left - SECTION_HEADER)
        return dec_fail(x, KP_EPARSE, *off + SEC_PAYLOAD_LEN,
                        "%s section truncated (payload of %zu bytes, %zu present)", x->section,
                        payload, left - SECTION_HEADER);
    *off += SECTION_HEADER + payload;
    if (!parse)
        return KP_OK;
    int rc = decompress_section(x, x->section_off + SECTION_HEADER, payload, raw);
    if (rc != KP_OK)
        return rc;
    return id == 0 ? decode_meta(x, count) : decode_rows(x, (int)id - 1, count);
}

static int decode_body(struct decoder *x, unsigned level_mask)
{
    size_t off = KP_ROLLUP_HEADER_SIZE;
    int rc = decode_section(x, 0, &off, true);
    for (uint32_t l = 0; l < KP_ROLLUP_LEVELS && rc == KP_OK; l++)
        rc = decode_section(x, 1 + l, &off, level_mask & KP_ROLLUP_LEVEL_BIT(l));
    if (rc == KP_OK && off != x->len)
        rc = dec_fail(x, KP_EPARSE, off, "%zu bytes after the last section", x->len - off);
    return rc;
}

int kp_rollup_day_decode_levels(const void *buf, size_t len, unsigned level_mask,
                                struct kp_rollup_day **out, char *errmsg, size_t errlen)
{
    struct decoder x = {.buf = buf, .len = len, .errmsg = errmsg, .errlen = errlen};
    if (level_mask == 0 || (level_mask & ~KP_ROLLUP_ALL_LEVELS) != 0)
        return kp_errf(errmsg, errlen, KP_EINVAL, "rollup: bad level mask 0x%x", level_mask);
    x.index_max = kp_sketch_index(UINT64_MAX);
    int rc = check_header(&x);
    if (rc == KP_OK)
        rc = decode_body(&x, level_mask);
    ZSTD_freeDCtx(x.dctx);
    kp_free(x.raw);
    kp_free(x.str_flags);
    if (rc != KP_OK) {
        kp_rollup_day_free(x.d);
        return rc;
    }
    x.d->levels = level_mask;
    *out = x.d;
    return KP_OK;
}

int kp_rollup_day_decode(const void *buf, size_t len, struct kp_rollup_day **out, char *errmsg,
                         size_t errlen)
{
    return kp_rollup_day_decode_levels(buf, len, KP_ROLLUP_ALL_LEVELS, out, errmsg, errlen);
}

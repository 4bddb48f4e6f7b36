/* Usage queries: GET /admin/v1/usage (docs/usage-api.md) answered from
 * rollup days.
 *
 * A query is parsed one parameter at a time, then finished: defaults
 * applied, times rounded to whole minutes, the range checked. Its result
 * takes each day of the range once. From a day it uses the rows whose
 * period lies inside [from, to), at the coarsest level that does: a minute
 * row only when its hour is not wholly inside, an hour row only when its
 * day is not (and only levels up to the granularity asked for). That
 * counts every minute of the range exactly once. Each row used is added to
 * the bucket of its start at the granularity asked for, under the values of
 * the grouped dimensions, after the filters. A day's string ids are mapped
 * to the result's own on first use, so the inner loop compares integers.
 *
 * Failures: a bad parameter is KP_EINVAL naming it; an answer of more than
 * KP_USAGE_MAX_ROWS rows is KP_ETOOBIG; out of memory is KP_ENOMEM. */
#include "meter/rollup_internal.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NO_ID       UINT32_MAX
#define TIME_MIN_MS (-62167219200000) /* 0000-01-01T00:00:00Z */
#define TIME_MAX_MS 253402300799999   /* 9999-12-31T23:59:59.999Z */
#define ECHO_MAX    64                /* bytes of a bad value quoted in a message */

enum {
    GIVEN_FROM = 1,
    GIVEN_TO = 2,
    GIVEN_GRANULARITY = 4,
    GIVEN_GROUP_BY = 8,
    GIVEN_FORMAT = 16,
};

static const char *const granularity_names[] = {"minute", "hour", "day", "total"};
static const int64_t level_ms[KP_ROLLUP_LEVELS] = {KP_MINUTE_MS, KP_HOUR_MS, KP_DAY_MS};

static int64_t floor_to(int64_t ms, int64_t unit)
{
    int64_t r = ms % unit;
    return r < 0 ? ms - r - unit : ms - r;
}

static int64_t ceil_to(int64_t ms, int64_t unit)
{
    int64_t f = floor_to(ms, unit);
    return f == ms ? ms : f + unit;
}

/* --- time ---------------------------------------------------------------- */

static bool leap_year(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* Exactly @n decimal digits at @s. */
static bool digits(const char *s, size_t n, unsigned *v)
{
    *v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        *v = *v * 10 + (unsigned)(s[i] - '0');
    }
    return true;
}

/* "YYYY-MM-DD" at @s: its day number. */
static bool parse_date(const char *s, int64_t *days)
{
    static const unsigned mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    unsigned y, m, d;
    if (!digits(s, 4, &y) || s[4] != '-' || !digits(s + 5, 2, &m) || s[7] != '-' ||
        !digits(s + 8, 2, &d))
        return false;
    if (m < 1 || m > 12 || d < 1 || d > mdays[m - 1] + (m == 2 && leap_year(y)))
        return false;
    *days = kp_days_from_civil(y, (int)m, (int)d);
    return true;
}

/* "HH:MM:SS[.frac]" then "Z" or "+HH:MM"/"-HH:MM", to the end of @s: the
 * milliseconds into the day, offset applied. */
static bool parse_clock(const char *s, int64_t *ms)
{
    unsigned h, mi, sec, frac = 0, oh, om;
    if (!digits(s, 2, &h) || s[2] != ':' || !digits(s + 3, 2, &mi) || s[5] != ':' ||
        !digits(s + 6, 2, &sec) || h > 23 || mi > 59 || sec > 59)
        return false;
    s += 8;
    if (*s == '.') {
        size_t n = 0;
        for (s++; *s >= '0' && *s <= '9'; s++, n++) {
            if (n < 3)
                frac = frac * 10 + (unsigned)(*s - '0');
        }
        if (n == 0)
            return false;
        for (; n < 3; n++)
            frac *= 10;
    }
    *ms = ((int64_t)h * 3600 + mi * 60 + sec) * 1000 + frac;
    if ((*s == 'Z' || *s == 'z') && s[1] == '\0')
        return true;
    if ((*s != '+' && *s != '-') || !digits(s + 1, 2, &oh) || s[3] != ':' ||
        !digits(s + 4, 2, &om) || s[6] != '\0' || oh > 23 || om > 59)
        return false;
    int64_t off = ((int64_t)oh * 60 + om) * KP_MINUTE_MS;
    *ms += *s == '+' ? -off : off;
    return true;
}

static bool parse_unix_ms(const char *s, int64_t *ms)
{
    bool neg = *s == '-';
    uint64_t v = 0;
    s += neg;
    if (*s == '\0')
        return false;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || v > (uint64_t)TIME_MAX_MS)
            return false;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    if (v > (uint64_t)TIME_MAX_MS)
        return false;
    *ms = neg ? -(int64_t)v : (int64_t)v;
    return true;
}

int kp_usage_parse_time(const char *s, int64_t *ms)
{
    int64_t days, clock = 0, t;
    size_t n = strlen(s);
    if (n >= 10 && s[4] == '-') {
        if (!parse_date(s, &days))
            return KP_EINVAL;
        if (n > 10 && ((s[10] != 'T' && s[10] != 't') || !parse_clock(s + 11, &clock)))
            return KP_EINVAL;
        t = days * KP_DAY_MS + clock;
    } else if (!parse_unix_ms(s, &t)) {
        return KP_EINVAL;
    }
    if (t < TIME_MIN_MS || t > TIME_MAX_MS)
        return KP_EINVAL;
    *ms = t;
    return KP_OK;
}

void kp_usage_format_time(int64_t ms, char *buf, size_t len)
{
    int64_t secs = floor_to(ms, 1000) / 1000, y;
    int64_t days = floor_to(secs, 86400) / 86400, rem = secs - days * 86400;
    int m, d;
    kp_civil_from_days(days, &y, &m, &d);
    snprintf(buf, len, "%04" PRId64 "-%02d-%02dT%02u:%02u:%02uZ", y, m, d, (unsigned)(rem / 3600),
             (unsigned)(rem / 60 % 60), (unsigned)(rem % 60));
}

/* --- parameters ---------------------------------------------------------- */

void kp_usage_query_init(struct kp_usage_query *q, int64_t now_ms)
{
    memset(q, 0, sizeof(*q));
    q->granularity = KP_USAGE_DAY;
    q->now_ms = now_ms;
}

void kp_usage_query_free(struct kp_usage_query *q)
{
    for (size_t i = 0; i < q->n_filters; i++)
        kp_free(q->filters[i].value);
    kp_free(q->filters);
    q->filters = NULL;
    q->n_filters = 0;
}

static int bad(char *errmsg, size_t errlen, const char *name, const char *why, const char *value)
{
    size_t n = strlen(value);
    return kp_errf(errmsg, errlen, KP_EINVAL, "%s: %s, got '%.*s'%s", name, why,
                   (int)(n > ECHO_MAX ? ECHO_MAX : n), value, n > ECHO_MAX ? "..." : "");
}

static int param_time(const char *name, const char *value, int64_t *ms, char *errmsg, size_t errlen)
{
    if (kp_usage_parse_time(value, ms) != KP_OK)
        return bad(errmsg, errlen, name,
                   "expected an RFC 3339 time (2026-01-01T00:00:00Z), a date (2026-01-01) or "
                   "Unix milliseconds, years 0000-9999",
                   value);
    return KP_OK;
}

static int param_granularity(struct kp_usage_query *q, const char *value, char *errmsg,
                             size_t errlen)
{
    for (int g = KP_USAGE_MINUTE; g <= KP_USAGE_TOTAL; g++) {
        if (strcmp(value, granularity_names[g]) == 0) {
            q->granularity = (enum kp_usage_granularity)g;
            return KP_OK;
        }
    }
    return bad(errmsg, errlen, "granularity", "expected minute, hour, day or total", value);
}

static int param_group_by(struct kp_usage_query *q, const char *value, char *errmsg, size_t errlen)
{
    const char *p = value;
    q->group_by = 0;
    if (*p == '\0')
        return KP_OK;
    for (;;) {
        size_t n = strcspn(p, ",");
        int dim = kp_usage_dim_parse(p, n);
        if (dim < 0)
            return bad(errmsg, errlen, "group_by",
                       "expected a comma-separated list of tenant, project, feature, provider, "
                       "model, key, status_class, kind",
                       value);
        q->group_by |= 1u << dim;
        if (p[n] == '\0')
            return KP_OK;
        p += n + 1;
    }
}

/* Where the value that starts at @v ends: at the first comma followed by
 * "dimension:", or at the end. Other commas belong to the value. */
static const char *filter_value_end(const char *v)
{
    for (const char *c = strchr(v, ','); c != NULL; c = strchr(c + 1, ',')) {
        const char *colon = strchr(c + 1, ':');
        if (colon != NULL && kp_usage_dim_parse(c + 1, (size_t)(colon - c - 1)) >= 0)
            return c;
    }
    return v + strlen(v);
}

static int filter_add(struct kp_usage_query *q, int dim, const char *v, size_t len, char *errmsg,
                      size_t errlen)
{
    if (len > KP_USAGE_STR_MAX)
        return kp_errf(errmsg, errlen, KP_EINVAL, "filter: %s value longer than %d bytes",
                       kp_usage_dim_name(dim), KP_USAGE_STR_MAX);
    if (dim == KP_USAGE_DIM_STATUS_CLASS && !(len == 4 && memcmp(v, "none", 4) == 0) &&
        !(len == 3 && v[0] >= '0' && v[0] <= '9' && v[1] == 'x' && v[2] == 'x'))
        return kp_errf(errmsg, errlen, KP_EINVAL,
                       "filter: status_class must be none or 2xx, 4xx, ..., got '%.*s'",
                       (int)(len > ECHO_MAX ? ECHO_MAX : len), v);
    if (q->n_filters >= KP_USAGE_MAX_FILTERS)
        return kp_errf(errmsg, errlen, KP_EINVAL, "filter: more than %d values",
                       KP_USAGE_MAX_FILTERS);
    struct kp_usage_filter *f = kp_realloc(q->filters, (q->n_filters + 1) * sizeof(*f));
    if (f == NULL)
        return kp_errf(errmsg, errlen, KP_ENOMEM, "filter: out of memory");
    q->filters = f;
    char *copy = kp_strndup(v, len);
    if (copy == NULL)
        return kp_errf(errmsg, errlen, KP_ENOMEM, "filter: out of memory");
    q->filters[q->n_filters++] = (struct kp_usage_filter){(enum kp_usage_dim)dim, copy, len};
    return KP_OK;
}

static int param_filter(struct kp_usage_query *q, const char *value, char *errmsg, size_t errlen)
{
    const char *p = value;
    for (;;) {
        const char *colon = strchr(p, ':');
        int dim = colon ? kp_usage_dim_parse(p, (size_t)(colon - p)) : -1;
        if (dim < 0)
            return bad(errmsg, errlen, "filter",
                       "expected dimension:value (tenant, project, feature, provider, model, "
                       "key, status_class or kind)",
                       p);
        const char *end = filter_value_end(colon + 1);
        int rc = filter_add(q, dim, colon + 1, (size_t)(end - colon - 1), errmsg, errlen);
        if (rc != KP_OK || *end == '\0')
            return rc;
        p = end + 1;
    }
}

static int param_format(struct kp_usage_query *q, const char *value, char *errmsg, size_t errlen)
{
    if (strcmp(value, "json") != 0 && strcmp(value, "csv") != 0)
        return bad(errmsg, errlen, "format", "expected json or csv", value);
    q->csv = value[0] == 'c';
    return KP_OK;
}

int kp_usage_query_param(struct kp_usage_query *q, const char *name, const char *value,
                         char *errmsg, size_t errlen)
{
    static const struct {
        const char *name;
        unsigned bit;
    } once[] = {{"from", GIVEN_FROM},
                {"to", GIVEN_TO},
                {"granularity", GIVEN_GRANULARITY},
                {"group_by", GIVEN_GROUP_BY},
                {"format", GIVEN_FORMAT}};
    for (size_t i = 0; i < sizeof(once) / sizeof(once[0]); i++) {
        if (strcmp(name, once[i].name) != 0)
            continue;
        if (q->given & once[i].bit)
            return kp_errf(errmsg, errlen, KP_EINVAL, "%s: given more than once", name);
        q->given |= once[i].bit;
    }
    if (strcmp(name, "from") == 0)
        return param_time("from", value, &q->from_ms, errmsg, errlen);
    if (strcmp(name, "to") == 0)
        return param_time("to", value, &q->to_ms, errmsg, errlen);
    if (strcmp(name, "granularity") == 0)
        return param_granularity(q, value, errmsg, errlen);
    if (strcmp(name, "group_by") == 0)
        return param_group_by(q, value, errmsg, errlen);
    if (strcmp(name, "filter") == 0)
        return param_filter(q, value, errmsg, errlen);
    if (strcmp(name, "format") == 0)
        return param_format(q, value, errmsg, errlen);
    return kp_errf(errmsg, errlen, KP_EINVAL, "unknown parameter %.*s", ECHO_MAX, name);
}

int kp_usage_query_finish(struct kp_usage_query *q, char *errmsg, size_t errlen)
{
    if (!(q->given & GIVEN_TO))
        q->to_ms = q->now_ms;
    if (!(q->given & GIVEN_FROM))
        q->from_ms = q->to_ms - KP_DAY_MS;
    if (q->to_ms <= q->from_ms)
        return kp_errf(errmsg, errlen, KP_EINVAL, "to: must be after from");
    q->from_ms = floor_to(q->from_ms, KP_MINUTE_MS);
    q->to_ms = ceil_to(q->to_ms, KP_MINUTE_MS);
    if (q->to_ms - q->from_ms > KP_USAGE_MAX_SPAN_MS)
        return kp_errf(errmsg, errlen, KP_EINVAL, "to: more than 400 days after from");
    return KP_OK;
}

/* The coarsest level a query of granularity @g reads. */
static int top_level(enum kp_usage_granularity g)
{
    return g == KP_USAGE_MINUTE ? KP_ROLLUP_MINUTE
           : g == KP_USAGE_HOUR ? KP_ROLLUP_HOUR
                                : KP_ROLLUP_DAY;
}

/* Which levels of @day the range [from, to) needs at levels up to @top:
 * the day row if the day is wholly inside; hour rows if an hour is; minute
 * rows if the range starts or ends inside an hour of the day. */
static unsigned levels_needed(int64_t from, int64_t to, int top, int64_t day)
{
    if (day > INT64_MAX - KP_DAY_MS)
        return 0;
    int64_t lo = from > day ? from : day;
    int64_t hi = to < day + KP_DAY_MS ? to : day + KP_DAY_MS;
    if (lo >= hi)
        return 0;
    if (top == KP_ROLLUP_MINUTE)
        return KP_ROLLUP_LEVEL_BIT(KP_ROLLUP_MINUTE);
    if (top == KP_ROLLUP_DAY && lo == day && hi == day + KP_DAY_MS)
        return KP_ROLLUP_LEVEL_BIT(KP_ROLLUP_DAY);
    int64_t first = ceil_to(lo, KP_HOUR_MS), last = floor_to(hi, KP_HOUR_MS);
    unsigned mask = 0;
    if (first < last)
        mask |= KP_ROLLUP_LEVEL_BIT(KP_ROLLUP_HOUR);
    if (lo != first || hi != last || first >= last)
        mask |= KP_ROLLUP_LEVEL_BIT(KP_ROLLUP_MINUTE);
    return mask;
}

unsigned kp_usage_query_levels(const struct kp_usage_query *q, int64_t day_start_ms)
{
    return levels_needed(q->from_ms, q->to_ms, top_level(q->granularity), day_start_ms);
}

/* --- the result's strings and rows --------------------------------------- */

struct kp_usage_result {
    int64_t from_ms, to_ms;
    enum kp_usage_granularity granularity;
    int top;
    unsigned group_by;
    unsigned filtered; /* bit per dimension with a filter */
    struct kp_usage_filter *filters;
    size_t n_filters;
    struct kp_strtab strings; /* the answer's own ids (days have theirs) */
    struct kp_row_table table;
    struct kp_rollup_metrics totals;
    int64_t *days; /* added so far */
    size_t n_days;
};

/* The result row of (@start, @dim), created empty if missing; past
 * KP_USAGE_MAX_ROWS rows, KP_ETOOBIG. */
static int row_upsert(struct kp_usage_result *r, int64_t start, const uint32_t *dim,
                      struct kp_rollup_row **out)
{
    uint32_t idx, before = r->table.n;
    if (kp_row_table_upsert(&r->table, start, dim, &idx) != KP_OK)
        return KP_ENOMEM;
    if (r->table.n > KP_USAGE_MAX_ROWS) {
        kp_row_table_truncate(&r->table, before);
        return KP_ETOOBIG;
    }
    *out = &r->table.rows[idx];
    return KP_OK;
}

/* --- results ------------------------------------------------------------- */

int kp_usage_result_new(const struct kp_usage_query *q, struct kp_usage_result **out)
{
    struct kp_usage_result *r = kp_calloc(1, sizeof(*r));
    if (r == NULL)
        return KP_ENOMEM;
    r->from_ms = q->from_ms;
    r->to_ms = q->to_ms;
    r->granularity = q->granularity;
    r->top = top_level(q->granularity);
    r->group_by = q->group_by;
    kp_strtab_init(&r->strings);
    kp_rollup_metrics_init(&r->totals);
    r->filters = kp_calloc(q->n_filters + 1, sizeof(*r->filters));
    if (r->filters == NULL)
        goto err_nomem;
    for (size_t i = 0; i < q->n_filters; i++, r->n_filters++) {
        r->filters[i] = q->filters[i];
        r->filters[i].value = kp_strndup(q->filters[i].value, q->filters[i].len);
        if (r->filters[i].value == NULL)
            goto err_nomem;
        r->filtered |= 1u << q->filters[i].dim;
    }
    *out = r;
    return KP_OK;

err_nomem:
    kp_usage_result_free(r);
    return KP_ENOMEM;
}

void kp_usage_result_free(struct kp_usage_result *r)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < r->n_filters; i++)
        kp_free(r->filters[i].value);
    kp_free(r->filters);
    kp_strtab_free(&r->strings);
    kp_row_table_free(&r->table);
    kp_rollup_metrics_free(&r->totals);
    kp_free(r->days);
    kp_free(r);
}

uint64_t kp_usage_result_rows(const struct kp_usage_result *r)
{
    return r->table.n;
}

kp_nanousd kp_usage_result_cost(const struct kp_usage_result *r)
{
    return kp_rollup_metrics_cost(&r->totals);
}

/* One day on its way into a result. */
struct day_pass {
    struct kp_usage_result *r;
    const struct kp_rollup_day *d;
    uint32_t *map;  /* day string id -> result string id, NO_ID until needed */
    uint8_t *match; /* day string id -> bit per dimension whose filter it passes */
};

static int map_id(struct day_pass *p, uint32_t id, uint32_t *out)
{
    if (p->map[id] == NO_ID) {
        size_t len;
        const char *s = kp_rollup_day_string(p->d, id, &len);
        if (kp_strtab_intern(&p->r->strings, s, len, &p->map[id]) != KP_OK)
            return KP_ENOMEM;
    }
    *out = p->map[id];
    return KP_OK;
}

/* Whether a row of @level starting at @start is used: its period inside
 * the range, and its parent's not (when the parent's level is read). */
static bool row_used(const struct kp_usage_result *r, int level, int64_t start)
{
    if (start < r->from_ms || start + level_ms[level] > r->to_ms)
        return false;
    if (level >= r->top)
        return true;
    int64_t parent = floor_to(start, level_ms[level + 1]);
    return parent < r->from_ms || parent + level_ms[level + 1] > r->to_ms;
}

static bool row_passes(const struct day_pass *p, const struct kp_rollup_row *row)
{
    for (int i = 0; i < KP_USAGE_DIMS; i++) {
        if ((p->r->filtered & (1u << i)) && !(p->match[row->dim[i]] & (1u << i)))
            return false;
    }
    return true;
}

static int add_row(struct day_pass *p, const struct kp_rollup_row *row)
{
    struct kp_usage_result *r = p->r;
    uint32_t key[KP_USAGE_DIMS], unused;
    int64_t bucket = r->from_ms;
    if (r->granularity != KP_USAGE_TOTAL)
        bucket = floor_to(row->start_ms, level_ms[r->top]);
    for (int i = 0; i < KP_USAGE_DIMS; i++) {
        key[i] = NO_ID;
        if ((r->group_by & (1u << i)) && map_id(p, row->dim[i], &key[i]) != KP_OK)
            return KP_ENOMEM;
    }
    for (uint32_t c = 0; c < row->m.n_classes; c++) {
        if (map_id(p, row->m.classes[c].class_id, &unused) != KP_OK)
            return KP_ENOMEM;
    }
    struct kp_rollup_row *out;
    int rc = row_upsert(r, bucket, key, &out);
    if (rc != KP_OK)
        return rc;
    if (kp_rollup_metrics_add(&out->m, &row->m, p->map) != KP_OK ||
        kp_rollup_metrics_add(&r->totals, &row->m, p->map) != KP_OK)
        return KP_ENOMEM;
    return KP_OK;
}

/* Mark the day's strings that pass a filter. */
static void pass_filters(struct day_pass *p)
{
    const struct kp_usage_result *r = p->r;
    for (size_t i = 0; i < r->n_filters; i++) {
        uint32_t id;
        if (kp_rollup_day_find_string(p->d, r->filters[i].value, r->filters[i].len, &id))
            p->match[id] |= (uint8_t)(1u << r->filters[i].dim);
    }
}

static int remember_day(struct kp_usage_result *r, int64_t day)
{
    for (size_t i = 0; i < r->n_days; i++) {
        if (r->days[i] == day)
            return KP_EEXIST;
    }
    int64_t *v = kp_realloc(r->days, (r->n_days + 1) * sizeof(*v));
    if (v == NULL)
        return KP_ENOMEM;
    r->days = v;
    r->days[r->n_days++] = day;
    return KP_OK;
}

int kp_usage_result_add_day(struct kp_usage_result *r, const struct kp_rollup_day *d)
{
    int64_t day = kp_rollup_day_start(d);
    unsigned need = levels_needed(r->from_ms, r->to_ms, r->top, day);
    if (need == 0)
        return KP_OK;
    if (need & ~kp_rollup_day_levels(d))
        return KP_EINVAL;
    int rc = remember_day(r, day);
    if (rc != KP_OK)
        return rc;
    size_t n = (size_t)kp_rollup_day_strings(d) + 1;
    struct day_pass p = {r, d, kp_malloc(n * sizeof(uint32_t)), kp_calloc(n, 1)};
    if (p.map == NULL || p.match == NULL)
        rc = KP_ENOMEM;
    else
        memset(p.map, 0xff, n * sizeof(uint32_t));
    if (rc == KP_OK)
        pass_filters(&p);
    for (int l = 0; l < KP_ROLLUP_LEVELS && rc == KP_OK; l++) {
        if (!(need & KP_ROLLUP_LEVEL_BIT(l)))
            continue;
        size_t rows = kp_rollup_day_rows(d, (enum kp_rollup_level)l);
        for (size_t i = 0; i < rows && rc == KP_OK; i++) {
            const struct kp_rollup_row *row = kp_rollup_day_row(d, (enum kp_rollup_level)l, i);
            if (row_used(r, l, row->start_ms) && row_passes(&p, row))
                rc = add_row(&p, row);
        }
    }
    kp_free(p.map);
    kp_free(p.match);
    return rc;
}

/* --- answers ------------------------------------------------------------- */

struct row_ref {
    int64_t start;
    uint32_t rank[KP_USAGE_DIMS];
    uint32_t idx;
};

static int row_ref_cmp(const void *a, const void *b)
{
    const struct row_ref *x = a, *y = b;
    if (x->start != y->start)
        return x->start < y->start ? -1 : 1;
    for (int i = 0; i < KP_USAGE_DIMS; i++) {
        if (x->rank[i] != y->rank[i])
            return x->rank[i] < y->rank[i] ? -1 : 1;
    }
    return 0;
}

/* The answer's order: rank[] of each string in byte order, and the rows
 * sorted by start, then dimension values. */
struct order {
    uint32_t *rank;
    struct row_ref *rows;
};

static void order_free(struct order *o)
{
    kp_free(o->rank);
    kp_free(o->rows);
}

static int order_make(const struct kp_usage_result *r, struct order *o)
{
    struct kp_str_ref *strs = kp_malloc(((size_t)r->strings.n + 1) * sizeof(*strs));
    o->rank = kp_malloc(((size_t)r->strings.n + 1) * sizeof(*o->rank));
    o->rows = kp_malloc(((size_t)r->table.n + 1) * sizeof(*o->rows));
    if (strs == NULL || o->rank == NULL || o->rows == NULL) {
        kp_free(strs);
        order_free(o);
        return KP_ENOMEM;
    }
    for (uint32_t i = 0; i < r->strings.n; i++)
        strs[i] = (struct kp_str_ref){r->strings.v[i].s, r->strings.v[i].len, i};
    qsort(strs, r->strings.n, sizeof(*strs), kp_str_ref_cmp);
    for (uint32_t i = 0; i < r->strings.n; i++)
        o->rank[strs[i].id] = i;
    kp_free(strs);
    for (uint32_t i = 0; i < r->table.n; i++) {
        o->rows[i].start = r->table.rows[i].start_ms;
        o->rows[i].idx = i;
        for (int k = 0; k < KP_USAGE_DIMS; k++) {
            uint32_t id = r->table.rows[i].dim[k];
            o->rows[i].rank[k] = id == NO_ID ? 0 : o->rank[id];
        }
    }
    qsort(o->rows, r->table.n, sizeof(*o->rows), row_ref_cmp);
    return KP_OK;
}

/* A cost as USD with 9 decimals, exact. */
static void format_usd(kp_nanousd cost, char buf[32])
{
    kp_format_nanousd(cost, buf, 32);
}

/* A quantile of @s in whole microseconds (the answer shows milliseconds
 * with 3 decimals). */
static int64_t quantile_us(const struct kp_sketch *s, double q)
{
    double v = kp_sketch_quantile(s, q);
    if (!(v >= 0))
        return 0;
    return v >= 9.2e18 ? INT64_MAX : (int64_t)llround(v);
}

static const double quantiles[3] = {0.50, 0.95, 0.99};
static const char *const quantile_names[3] = {"p50", "p95", "p99"};

/* Classes of @m in byte order of their names: positions into m->classes. */
static uint32_t *classes_sorted(const struct kp_rollup_metrics *m, const uint32_t *rank)
{
    uint32_t *pos = kp_malloc(((size_t)m->n_classes + 1) * sizeof(*pos));
    if (pos == NULL)
        return NULL;
    for (uint32_t i = 0; i < m->n_classes; i++) {
        uint32_t j = i;
        for (; j > 0 && rank[m->classes[pos[j - 1]].class_id] > rank[m->classes[i].class_id]; j--)
            pos[j] = pos[j - 1];
        pos[j] = i;
    }
    return pos;
}

static json_t *latency_json(const struct kp_sketch *s)
{
    if (s->count == 0)
        return json_null();
    json_t *o = json_object();
    for (int i = 0; o != NULL && i < 3; i++) {
        if (json_object_set_new(o, quantile_names[i],
                                json_real((double)quantile_us(s, quantiles[i]) / 1000.0)) != 0) {
            json_decref(o);
            o = NULL;
        }
    }
    return o;
}

static json_t *classes_json(const struct kp_usage_result *r, const struct kp_rollup_metrics *m,
                            const uint32_t *rank)
{
    json_t *o = json_object();
    uint32_t *pos = classes_sorted(m, rank);
    int rc = o && pos ? 0 : -1;
    for (uint32_t i = 0; i < m->n_classes && rc == 0; i++) {
        const struct kp_rollup_class_count *c = &m->classes[pos[i]];
        rc = json_object_setn_new(o, r->strings.v[c->class_id].s, r->strings.v[c->class_id].len,
                                  json_integer((json_int_t)c->count));
    }
    kp_free(pos);
    if (rc != 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* Add the metrics of @m to @o. */
static int metrics_json(const struct kp_usage_result *r, const struct kp_rollup_metrics *m,
                        const uint32_t *rank, json_t *o)
{
    char usd[32];
    kp_nanousd cost = kp_rollup_metrics_cost(m);
    format_usd(cost, usd);
    int rc = json_object_set_new(o, "requests", json_integer((json_int_t)m->requests));
    rc |= json_object_set_new(o, "errors", json_integer((json_int_t)m->errors));
    rc |= json_object_set_new(o, "errors_by_class", classes_json(r, m, rank));
    rc |= json_object_set_new(o, "retries", json_integer((json_int_t)m->retries));
    rc |= json_object_set_new(o, "streamed", json_integer((json_int_t)m->streamed));
    rc |= json_object_set_new(o, "tokens_in", json_integer((json_int_t)m->tokens_in));
    rc |= json_object_set_new(o, "tokens_out", json_integer((json_int_t)m->tokens_out));
    rc |= json_object_set_new(o, "tokens_cached", json_integer((json_int_t)m->tokens_cached));
    rc |= json_object_set_new(o, "cost_nanousd", json_integer(cost));
    rc |= json_object_set_new(o, "cost_usd", json_string(usd));
    rc |= json_object_set_new(o, "latency_ms", latency_json(&m->latency));
    return rc;
}

static json_t *row_json(const struct kp_usage_result *r, const struct kp_rollup_row *row,
                        const uint32_t *rank)
{
    char start[32];
    json_t *o = json_object();
    if (o == NULL)
        return NULL;
    kp_usage_format_time(row->start_ms, start, sizeof(start));
    int rc = json_object_set_new(o, "start", json_string(start));
    for (int i = 0; i < KP_USAGE_DIMS; i++) {
        if (r->group_by & (1u << i))
            rc |= json_object_set_new(
                o, kp_usage_dim_name(i),
                json_stringn(r->strings.v[row->dim[i]].s, r->strings.v[row->dim[i]].len));
    }
    rc |= metrics_json(r, &row->m, rank, o);
    if (rc != 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static int head_json(const struct kp_usage_result *r, const char *meter_name, json_t *o)
{
    char from[32], to[32];
    kp_usage_format_time(r->from_ms, from, sizeof(from));
    kp_usage_format_time(r->to_ms, to, sizeof(to));
    json_t *group_by = json_array();
    int rc = group_by ? 0 : -1;
    for (int i = 0; i < KP_USAGE_DIMS && rc == 0; i++) {
        if (r->group_by & (1u << i))
            rc = json_array_append_new(group_by, json_string(kp_usage_dim_name(i)));
    }
    rc |= json_object_set_new(o, "from", json_string(from));
    rc |= json_object_set_new(o, "to", json_string(to));
    rc |= json_object_set_new(o, "granularity", json_string(granularity_names[r->granularity]));
    rc |= json_object_set_new(o, "group_by", group_by);
    rc |= json_object_set_new(o, "meter", meter_name ? json_string(meter_name) : json_null());
    return rc;
}

json_t *kp_usage_result_json(const struct kp_usage_result *r, const char *meter_name)
{
    struct order ord;
    if (order_make(r, &ord) != KP_OK)
        return NULL;
    json_t *o = json_object(), *rows = json_array(), *totals = json_object();
    int rc = o && rows && totals ? head_json(r, meter_name, o) : -1;
    for (uint32_t i = 0; i < r->table.n && rc == 0; i++)
        rc = json_array_append_new(rows, row_json(r, &r->table.rows[ord.rows[i].idx], ord.rank));
    if (rc == 0)
        rc = metrics_json(r, &r->totals, ord.rank, totals);
    if (rc == 0) {
        rc = json_object_set(o, "rows", rows) | json_object_set(o, "totals", totals);
    }
    json_decref(rows);
    json_decref(totals);
    order_free(&ord);
    if (rc != 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static int csv_str(struct kp_buf *out, const char *s, bool first)
{
    return kp_csv_field(out, s, strlen(s), first);
}

static int csv_u64(struct kp_buf *out, uint64_t v)
{
    char buf[24];
    int n = snprintf(buf, sizeof(buf), "%" PRIu64, v);
    return kp_csv_field(out, buf, (size_t)n, false);
}

static int csv_header(const struct kp_usage_result *r, struct kp_buf *out)
{
    static const char *const metrics[] = {
        "requests",       "errors",         "retries",        "streamed",
        "tokens_in",      "tokens_out",     "tokens_cached",  "cost_usd",
        "latency_p50_ms", "latency_p95_ms", "latency_p99_ms",
    };
    int rc = csv_str(out, "start", true);
    for (int i = 0; i < KP_USAGE_DIMS; i++) {
        if (r->group_by & (1u << i))
            rc |= csv_str(out, kp_usage_dim_name(i), false);
    }
    for (size_t i = 0; i < sizeof(metrics) / sizeof(metrics[0]); i++)
        rc |= csv_str(out, metrics[i], false);
    return rc | kp_csv_end(out);
}

static int csv_row(const struct kp_usage_result *r, const struct kp_rollup_row *row,
                   struct kp_buf *out)
{
    const struct kp_rollup_metrics *m = &row->m;
    char buf[32];
    kp_usage_format_time(row->start_ms, buf, sizeof(buf));
    int rc = csv_str(out, buf, true);
    for (int i = 0; i < KP_USAGE_DIMS; i++) {
        if (r->group_by & (1u << i))
            rc |= kp_csv_field(out, r->strings.v[row->dim[i]].s, r->strings.v[row->dim[i]].len,
                               false);
    }
    const uint64_t counts[] = {m->requests,  m->errors,     m->retries,      m->streamed,
                               m->tokens_in, m->tokens_out, m->tokens_cached};
    for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++)
        rc |= csv_u64(out, counts[i]);
    format_usd(kp_rollup_metrics_cost(m), buf);
    rc |= csv_str(out, buf, false);
    for (int i = 0; i < 3; i++) {
        int64_t us = quantile_us(&m->latency, quantiles[i]);
        int n = m->latency.count == 0
                    ? 0
                    : snprintf(buf, sizeof(buf), "%" PRId64 ".%03d", us / 1000, (int)(us % 1000));
        rc |= kp_csv_field(out, buf, (size_t)n, false);
    }
    return rc | kp_csv_end(out);
}

int kp_usage_result_csv(const struct kp_usage_result *r, struct kp_buf *out)
{
    struct order ord;
    size_t mark = out->len;
    if (order_make(r, &ord) != KP_OK)
        return KP_ENOMEM;
    int rc = csv_header(r, out);
    for (uint32_t i = 0; i < r->table.n && rc == 0; i++)
        rc = csv_row(r, &r->table.rows[ord.rows[i].idx], out);
    order_free(&ord);
    if (rc != 0) {
        out->len = mark;
        if (out->data != NULL)
            out->data[mark] = '\0';
        return KP_ENOMEM;
    }
    return KP_OK;
}

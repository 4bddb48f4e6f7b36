/* Process-wide metrics, rendered in Prometheus text format.
 *
 * Tables are fixed-size arrays of entries whose counters are relaxed
 * atomics. An entry is filled in completely before the table's count is
 * published with a release store, so readers that load the count with
 * acquire see whole entries without taking the lock. Only registration of a
 * new (listener, route) pair or a named metric takes the lock; a table that
 * is full drops new names into an "overflow" entry rather than failing, which
 * also bounds label cardinality. */
#include "metrics.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "version.h"

#define MAX_ROUTES    128
#define MAX_LISTENERS 8
#define MAX_NAMED     256
#define STATUS_SLOTS  600

/* Latency bucket upper bounds in microseconds. */
static const uint64_t bucket_us[] = {500,     1000,     2500,     5000,    10000,   25000,
                                     50000,   100000,   250000,   500000,  1000000, 2500000,
                                     5000000, 10000000, 30000000, 60000000};
#define N_BUCKETS (sizeof(bucket_us) / sizeof(bucket_us[0]))

struct route_stats {
    const char *listener;
    const char *route;
    atomic_uint_least64_t status[STATUS_SLOTS];
    atomic_uint_least64_t bucket[N_BUCKETS + 1];
    atomic_uint_least64_t sum_us;
    atomic_uint_least64_t count;
};

struct conn_stats {
    const char *listener;
    atomic_int_least64_t open;
    atomic_uint_least64_t accepted;
};

struct kp_metric {
    const char *name;
    const char *help;
    int is_gauge;
    atomic_int_least64_t value;
};

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static struct route_stats routes[MAX_ROUTES];
static atomic_size_t n_routes;
static struct conn_stats conns[MAX_LISTENERS];
static atomic_size_t n_conns;
static struct kp_metric named[MAX_NAMED];
static atomic_size_t n_named;
static int64_t start_unix;

__attribute__((constructor)) static void note_start_time(void)
{
    start_unix = (int64_t)time(NULL);
}

static struct route_stats *route_find(const char *listener, const char *route)
{
    size_t n = atomic_load_explicit(&n_routes, memory_order_acquire);
    /* Route and listener names are static strings, so the same pointers come
     * back request after request: compare pointers first, text second. */
    for (size_t i = 0; i < n; i++)
        if (routes[i].route == route && routes[i].listener == listener)
            return &routes[i];
    for (size_t i = 0; i < n; i++)
        if (strcmp(routes[i].route, route) == 0 && strcmp(routes[i].listener, listener) == 0)
            return &routes[i];
    return NULL;
}

static struct route_stats *route_get(const char *listener, const char *route)
{
    struct route_stats *r = route_find(listener, route);
    if (r != NULL)
        return r;
    pthread_mutex_lock(&reg_lock);
    r = route_find(listener, route);
    if (r == NULL) {
        size_t n = atomic_load(&n_routes);
        /* The last slots are kept for one "overflow" route per listener, so
         * once the table is full no request goes uncounted. */
        if (n >= MAX_ROUTES - MAX_LISTENERS) {
            route = "overflow";
            r = route_find(listener, route);
        }
        if (r == NULL && n < MAX_ROUTES) {
            r = &routes[n];
            r->listener = listener;
            r->route = route;
            atomic_store_explicit(&n_routes, n + 1, memory_order_release);
        }
    }
    pthread_mutex_unlock(&reg_lock);
    return r;
}

void kp_metrics_http_observe(const char *listener, const char *route, int status,
                             uint64_t duration_us)
{
    struct route_stats *r = route_get(listener, route ? route : "other");
    if (r == NULL)
        return;
    if (status < 0 || status >= STATUS_SLOTS)
        status = 0;
    atomic_fetch_add_explicit(&r->status[status], 1, memory_order_relaxed);
    size_t b = 0;
    while (b < N_BUCKETS && duration_us > bucket_us[b])
        b++;
    atomic_fetch_add_explicit(&r->bucket[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&r->sum_us, duration_us, memory_order_relaxed);
    atomic_fetch_add_explicit(&r->count, 1, memory_order_relaxed);
}

static struct conn_stats *conn_get(const char *listener)
{
    size_t n = atomic_load_explicit(&n_conns, memory_order_acquire);
    for (size_t i = 0; i < n; i++)
        if (strcmp(conns[i].listener, listener) == 0)
            return &conns[i];
    struct conn_stats *c = NULL;
    pthread_mutex_lock(&reg_lock);
    n = atomic_load(&n_conns);
    for (size_t i = 0; i < n && c == NULL; i++)
        if (strcmp(conns[i].listener, listener) == 0)
            c = &conns[i];
    if (c == NULL && n < MAX_LISTENERS) {
        c = &conns[n];
        c->listener = listener;
        atomic_store_explicit(&n_conns, n + 1, memory_order_release);
    }
    pthread_mutex_unlock(&reg_lock);
    return c;
}

void kp_metrics_http_conn_delta(const char *listener, int delta)
{
    struct conn_stats *c = conn_get(listener);
    if (c == NULL)
        return;
    atomic_fetch_add_explicit(&c->open, delta, memory_order_relaxed);
    if (delta > 0)
        atomic_fetch_add_explicit(&c->accepted, (uint64_t)delta, memory_order_relaxed);
}

static struct kp_metric *named_get(const char *name, const char *help, int is_gauge)
{
    size_t n = atomic_load_explicit(&n_named, memory_order_acquire);
    for (size_t i = 0; i < n; i++)
        if (strcmp(named[i].name, name) == 0)
            return &named[i];
    struct kp_metric *m = NULL;
    pthread_mutex_lock(&reg_lock);
    n = atomic_load(&n_named);
    for (size_t i = 0; i < n && m == NULL; i++)
        if (strcmp(named[i].name, name) == 0)
            m = &named[i];
    if (m == NULL && n < MAX_NAMED) {
        m = &named[n];
        m->name = name;
        m->help = help;
        m->is_gauge = is_gauge;
        atomic_store_explicit(&n_named, n + 1, memory_order_release);
    }
    pthread_mutex_unlock(&reg_lock);
    return m;
}

struct kp_metric *kp_metric_counter(const char *name, const char *help)
{
    return named_get(name, help, 0);
}

struct kp_metric *kp_metric_gauge(const char *name, const char *help)
{
    return named_get(name, help, 1);
}

void kp_metric_add(struct kp_metric *m, int64_t v)
{
    if (m)
        atomic_fetch_add_explicit(&m->value, v, memory_order_relaxed);
}

void kp_metric_set(struct kp_metric *m, int64_t v)
{
    if (m)
        atomic_store_explicit(&m->value, v, memory_order_relaxed);
}

int64_t kp_metric_value(const struct kp_metric *m)
{
    return m ? atomic_load_explicit(&m->value, memory_order_relaxed) : 0;
}

/* --- labelled counters ----------------------------------------------------- */

#define MAX_FAMILIES     32
#define FAMILY_LABELS    4
#define FAMILY_VALUE_MAX 64

struct series {
    uint64_t hash;
    char values[FAMILY_LABELS][FAMILY_VALUE_MAX + 1];
    atomic_int_least64_t value;
};

struct kp_metric_family {
    const char *name;
    const char *help;
    bool is_gauge;
    /* A histogram: per series N_BUCKETS + 1 bucket counts (bucket_us
     * bounds, the last +Inf) in buckets, and the sum in microseconds in
     * the series' value. NULL otherwise. */
    atomic_uint_least64_t *buckets;
    unsigned nlabels;
    const char *labels[FAMILY_LABELS];
    unsigned max;
    struct series *series; /* max entries; the last is "overflow" */
    atomic_size_t n;
};

static struct kp_metric_family families[MAX_FAMILIES];
static atomic_size_t n_families;

static struct kp_metric_family *family_register(const char *name, const char *help, bool is_gauge,
                                                bool histogram, unsigned nlabels,
                                                const char *const labels[], unsigned max_series)
{
    if (nlabels == 0 || nlabels > FAMILY_LABELS || max_series < 2)
        return NULL;
    struct kp_metric_family *f = NULL;
    pthread_mutex_lock(&reg_lock);
    size_t n = atomic_load(&n_families);
    for (size_t i = 0; i < n && f == NULL; i++)
        if (strcmp(families[i].name, name) == 0)
            f = &families[i];
    if (f == NULL && n < MAX_FAMILIES) {
        struct series *s = kp_calloc(max_series, sizeof(*s));
        atomic_uint_least64_t *b =
            histogram ? kp_calloc((size_t)max_series * (N_BUCKETS + 1), sizeof(*b)) : NULL;
        if (histogram && b == NULL) {
            kp_free(s);
            s = NULL;
        }
        if (s != NULL) {
            f = &families[n];
            f->name = name;
            f->help = help;
            f->is_gauge = is_gauge;
            f->nlabels = nlabels;
            for (unsigned i = 0; i < nlabels; i++)
                f->labels[i] = labels[i];
            f->max = max_series;
            f->series = s;
            f->buckets = b;
            atomic_store(&f->n, 0);
            atomic_store_explicit(&n_families, n + 1, memory_order_release);
        }
    }
    pthread_mutex_unlock(&reg_lock);
    return f;
}

struct kp_metric_family *kp_metric_family_counter(const char *name, const char *help,
                                                  unsigned nlabels, const char *const labels[],
                                                  unsigned max_series)
{
    return family_register(name, help, false, false, nlabels, labels, max_series);
}

struct kp_metric_family *kp_metric_family_histogram(const char *name, const char *help,
                                                    unsigned nlabels, const char *const labels[],
                                                    unsigned max_series)
{
    return family_register(name, help, false, true, nlabels, labels, max_series);
}

struct kp_metric_family *kp_metric_family_gauge(const char *name, const char *help,
                                                unsigned nlabels, const char *const labels[],
                                                unsigned max_series)
{
    return family_register(name, help, true, false, nlabels, labels, max_series);
}

static uint64_t values_hash(const struct kp_metric_family *f, const char *const values[])
{
    uint64_t h = 1469598103934665603ull;
    for (unsigned i = 0; i < f->nlabels; i++) {
        const char *v = values[i] ? values[i] : "";
        for (size_t k = 0; v[k] != '\0' && k < FAMILY_VALUE_MAX; k++)
            h = (h ^ (uint8_t)v[k]) * 1099511628211ull;
        h = (h ^ 0xff) * 1099511628211ull;
    }
    return h;
}

static bool series_is(const struct series *s, const struct kp_metric_family *f, uint64_t h,
                      const char *const values[])
{
    if (s->hash != h)
        return false;
    for (unsigned i = 0; i < f->nlabels; i++)
        if (strncmp(s->values[i], values[i] ? values[i] : "", FAMILY_VALUE_MAX) != 0)
            return false;
    return true;
}

/* The series of @values in @f, registered on first use (or overflow). */
static struct series *series_of(struct kp_metric_family *f, const char *const values[])
{
    uint64_t h = values_hash(f, values);
    size_t n = atomic_load_explicit(&f->n, memory_order_acquire);
    for (size_t i = 0; i < n; i++)
        if (series_is(&f->series[i], f, h, values)) {
            return &f->series[i];
        }
    struct series *s = NULL;
    pthread_mutex_lock(&reg_lock);
    n = atomic_load(&f->n);
    for (size_t i = 0; i < n && s == NULL; i++)
        if (series_is(&f->series[i], f, h, values))
            s = &f->series[i];
    if (s == NULL && n + 1 < f->max) {
        s = &f->series[n];
        s->hash = h;
        for (unsigned i = 0; i < f->nlabels; i++)
            snprintf(s->values[i], sizeof(s->values[i]), "%s", values[i] ? values[i] : "");
        atomic_store_explicit(&f->n, n + 1, memory_order_release);
    } else if (s == NULL) {
        /* Full: every new label set counts as "overflow" (bounded
         * cardinality whatever apps send). */
        s = &f->series[f->max - 1];
        if (s->values[0][0] == '\0')
            for (unsigned i = 0; i < f->nlabels; i++)
                snprintf(s->values[i], sizeof(s->values[i]), "overflow");
    }
    pthread_mutex_unlock(&reg_lock);
    return s;
}

void kp_metric_family_add(struct kp_metric_family *f, const char *const values[], int64_t delta)
{
    if (f != NULL)
        atomic_fetch_add_explicit(&series_of(f, values)->value, delta, memory_order_relaxed);
}

void kp_metric_family_observe_us(struct kp_metric_family *f, const char *const values[],
                                 uint64_t us)
{
    if (f == NULL || f->buckets == NULL)
        return;
    struct series *s = series_of(f, values);
    size_t b = 0;
    while (b < N_BUCKETS && us > bucket_us[b])
        b++;
    atomic_fetch_add_explicit(&f->buckets[(size_t)(s - f->series) * (N_BUCKETS + 1) + b], 1,
                              memory_order_relaxed);
    atomic_fetch_add_explicit(&s->value, (int64_t)us, memory_order_relaxed);
}

void kp_metric_family_set(struct kp_metric_family *f, const char *const values[], int64_t v)
{
    if (f != NULL)
        atomic_store_explicit(&series_of(f, values)->value, v, memory_order_relaxed);
}

void kp_metric_family_each(const char *name,
                           void (*fn)(void *arg, const char *const values[], int64_t value),
                           void *arg)
{
    size_t nf = atomic_load_explicit(&n_families, memory_order_acquire);
    for (size_t i = 0; i < nf; i++) {
        const struct kp_metric_family *f = &families[i];
        if (strcmp(f->name, name) != 0)
            continue;
        size_t n = atomic_load_explicit(&f->n, memory_order_acquire);
        for (size_t k = 0; k <= n && k < f->max; k++) {
            const struct series *s = &f->series[k == n ? f->max - 1 : k];
            int64_t v = atomic_load_explicit(&s->value, memory_order_relaxed);
            const char *values[FAMILY_LABELS] = {s->values[0], s->values[1], s->values[2],
                                                 s->values[3]};
            if (k < n || v != 0)
                fn(arg, values, v);
        }
        return;
    }
}

/* A label value as Prometheus text wants it: \\, \" and \n escaped. */
static int append_label(struct kp_buf *out, const char *v)
{
    int rc = 0;
    for (; *v; v++) {
        if (*v == '\\' || *v == '"')
            rc |= kp_buf_appendf(out, "\\%c", *v);
        else if (*v == '\n')
            rc |= kp_buf_append_lit(out, "\\n");
        else
            rc |= kp_buf_append(out, v, 1);
    }
    return rc;
}

static int render_labels(struct kp_buf *out, const struct kp_metric_family *f,
                         const struct series *s)
{
    int rc = 0;
    for (unsigned l = 0; l < f->nlabels; l++) {
        rc |= kp_buf_appendf(out, "%s%s=\"", l ? "," : "", f->labels[l]);
        rc |= append_label(out, s->values[l]);
        rc |= kp_buf_append_lit(out, "\"");
    }
    return rc;
}

static int render_histogram(struct kp_buf *out, const struct kp_metric_family *f,
                            const struct series *s)
{
    const atomic_uint_least64_t *b = &f->buckets[(size_t)(s - f->series) * (N_BUCKETS + 1)];
    uint64_t cum = 0;
    int rc = 0;
    for (size_t i = 0; i <= N_BUCKETS; i++) {
        cum += atomic_load_explicit(&b[i], memory_order_relaxed);
        rc |= kp_buf_appendf(out, "%s_bucket{", f->name);
        rc |= render_labels(out, f, s);
        if (i < N_BUCKETS)
            rc |= kp_buf_appendf(out, ",le=\"%g\"} %llu\n", (double)bucket_us[i] / 1e6,
                                 (unsigned long long)cum);
        else
            rc |= kp_buf_appendf(out, ",le=\"+Inf\"} %llu\n", (unsigned long long)cum);
    }
    rc |= kp_buf_appendf(out, "%s_sum{", f->name);
    rc |= render_labels(out, f, s);
    rc |= kp_buf_appendf(out, "} %.6f\n%s_count{", (double)atomic_load(&s->value) / 1e6, f->name);
    rc |= render_labels(out, f, s);
    rc |= kp_buf_appendf(out, "} %llu\n", (unsigned long long)cum);
    return rc;
}

static int render_series(struct kp_buf *out, const struct kp_metric_family *f,
                         const struct series *s)
{
    if (f->buckets != NULL)
        return render_histogram(out, f, s);
    int64_t v = atomic_load_explicit(&s->value, memory_order_relaxed);
    int rc = kp_buf_appendf(out, "%s{", f->name);
    rc |= render_labels(out, f, s);
    rc |= kp_buf_appendf(out, "} %lld\n", (long long)v);
    return rc;
}

static int render_families(struct kp_buf *out)
{
    int rc = 0;
    size_t nf = atomic_load_explicit(&n_families, memory_order_acquire);
    for (size_t i = 0; i < nf; i++) {
        const struct kp_metric_family *f = &families[i];
        rc |= kp_buf_appendf(out, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name,
                             f->buckets    ? "histogram"
                             : f->is_gauge ? "gauge"
                                           : "counter");
        size_t n = atomic_load_explicit(&f->n, memory_order_acquire);
        for (size_t k = 0; k < n; k++)
            rc |= render_series(out, f, &f->series[k]);
        const struct series *o = &f->series[f->max - 1];
        if (atomic_load_explicit(&o->value, memory_order_relaxed) != 0)
            rc |= render_series(out, f, o);
    }
    return rc;
}

/* --- rendering ----------------------------------------------------------- */

static int render_http(struct kp_buf *out)
{
    int rc = 0;
    size_t n = atomic_load_explicit(&n_routes, memory_order_acquire);
    rc |= kp_buf_appendf(out, "# HELP keyplane_http_requests_total HTTP requests answered, by "
                              "listener, route and status code.\n"
                              "# TYPE keyplane_http_requests_total counter\n");
    for (size_t i = 0; i < n; i++)
        for (int s = 0; s < STATUS_SLOTS; s++) {
            uint64_t v = atomic_load_explicit(&routes[i].status[s], memory_order_relaxed);
            if (v)
                rc |= kp_buf_appendf(
                    out,
                    "keyplane_http_requests_total{listener=\"%s\",route=\"%s\",code=\"%d\"} %llu\n",
                    routes[i].listener, routes[i].route, s, (unsigned long long)v);
        }
    rc |= kp_buf_appendf(out, "# HELP keyplane_http_request_duration_seconds Time from the first "
                              "byte of a request to the last byte of its answer.\n"
                              "# TYPE keyplane_http_request_duration_seconds histogram\n");
    for (size_t i = 0; i < n; i++) {
        const struct route_stats *r = &routes[i];
        uint64_t cum = 0;
        for (size_t b = 0; b <= N_BUCKETS; b++) {
            cum += atomic_load_explicit(&r->bucket[b], memory_order_relaxed);
            char le[32];
            if (b < N_BUCKETS)
                snprintf(le, sizeof(le), "%g", (double)bucket_us[b] / 1e6);
            else
                snprintf(le, sizeof(le), "+Inf");
            rc |= kp_buf_appendf(out,
                                 "keyplane_http_request_duration_seconds_bucket{listener=\"%s\","
                                 "route=\"%s\",le=\"%s\"} %llu\n",
                                 r->listener, r->route, le, (unsigned long long)cum);
        }
        rc |= kp_buf_appendf(
            out,
            "keyplane_http_request_duration_seconds_sum{listener=\"%s\",route=\"%s\"} %.6f\n"
            "keyplane_http_request_duration_seconds_count{listener=\"%s\",route=\"%s\"} %llu\n",
            r->listener, r->route,
            (double)atomic_load_explicit(&r->sum_us, memory_order_relaxed) / 1e6, r->listener,
            r->route, (unsigned long long)cum);
    }
    size_t nc = atomic_load_explicit(&n_conns, memory_order_acquire);
    rc |= kp_buf_appendf(out, "# HELP keyplane_http_open_connections Client connections open now.\n"
                              "# TYPE keyplane_http_open_connections gauge\n");
    for (size_t i = 0; i < nc; i++)
        rc |= kp_buf_appendf(out, "keyplane_http_open_connections{listener=\"%s\"} %lld\n",
                             conns[i].listener,
                             (long long)atomic_load_explicit(&conns[i].open, memory_order_relaxed));
    rc |= kp_buf_appendf(out, "# HELP keyplane_http_connections_total Client connections "
                              "accepted.\n# TYPE keyplane_http_connections_total counter\n");
    for (size_t i = 0; i < nc; i++)
        rc |= kp_buf_appendf(
            out, "keyplane_http_connections_total{listener=\"%s\"} %llu\n", conns[i].listener,
            (unsigned long long)atomic_load_explicit(&conns[i].accepted, memory_order_relaxed));
    return rc;
}

static int render_process(struct kp_buf *out)
{
    long ticks = sysconf(_SC_CLK_TCK);
    long page = sysconf(_SC_PAGESIZE);
    unsigned long utime = 0, stime = 0;
    long rss = 0;
    FILE *f = fopen("/proc/self/stat", "r");
    if (f != NULL) {
        char buf[1024];
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = '\0';
        /* Fields after the command name, which may hold spaces: skip to ')'. */
        char *p = strrchr(buf, ')');
        if (p != NULL)
            sscanf(p + 2,
                   "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %*d %*d %*d %*d "
                   "%*d %*d %*u %*u %ld",
                   &utime, &stime, &rss);
    }
    return kp_buf_appendf(out,
                          "# HELP process_cpu_seconds_total User and system CPU time.\n"
                          "# TYPE process_cpu_seconds_total counter\n"
                          "process_cpu_seconds_total %.2f\n"
                          "# HELP process_resident_memory_bytes Resident set size.\n"
                          "# TYPE process_resident_memory_bytes gauge\n"
                          "process_resident_memory_bytes %ld\n"
                          "# HELP process_start_time_seconds Start time, Unix epoch.\n"
                          "# TYPE process_start_time_seconds gauge\n"
                          "process_start_time_seconds %lld\n",
                          ticks > 0 ? (double)(utime + stime) / (double)ticks : 0.0, rss * page,
                          (long long)start_unix);
}

int kp_metrics_render(struct kp_buf *out)
{
    int rc = kp_buf_appendf(out,
                            "# HELP keyplane_build_info Version and commit of this binary.\n"
                            "# TYPE keyplane_build_info gauge\n"
                            "keyplane_build_info{version=\"%s\",commit=\"%s\"} 1\n",
                            kp_version(), kp_build_commit());
    rc |= render_http(out);
    size_t n = atomic_load_explicit(&n_named, memory_order_acquire);
    for (size_t i = 0; i < n; i++)
        rc |= kp_buf_appendf(
            out, "# HELP %s %s\n# TYPE %s %s\n%s %lld\n", named[i].name, named[i].help,
            named[i].name, named[i].is_gauge ? "gauge" : "counter", named[i].name,
            (long long)atomic_load_explicit(&named[i].value, memory_order_relaxed));
    rc |= render_families(out);
    rc |= render_process(out);
    return rc ? -1 : 0;
}

void kp_metrics_reset(void)
{
    pthread_mutex_lock(&reg_lock);
    atomic_store(&n_routes, 0);
    atomic_store(&n_conns, 0);
    atomic_store(&n_named, 0);
    memset(routes, 0, sizeof(routes));
    memset(conns, 0, sizeof(conns));
    memset(named, 0, sizeof(named));
    size_t nf = atomic_load(&n_families);
    for (size_t i = 0; i < nf; i++) {
        kp_free(families[i].series);
        kp_free(families[i].buckets);
    }
    memset(families, 0, sizeof(families));
    atomic_store(&n_families, 0);
    pthread_mutex_unlock(&reg_lock);
}

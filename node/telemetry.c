/* The node's telemetry thread (docs/observability.md): spans to an
 * OpenTelemetry collector over OTLP/HTTP with JSON, and the access log.
 *
 * Workers (and the main loop, for admin writes) hand their span sets and
 * access records to kp_telemetry_submit, which pushes them on two
 * lock-free stacks (push with compare-and-swap; the thread takes a whole
 * stack with one exchange, so there is no ABA) and never blocks or makes
 * a system call. The queue is bounded by a count of spans: spans that
 * would pass trace_queue_spans are dropped and counted
 * (keyplane_trace_spans_dropped_total), and so are access records past
 * KP_ACCESS_QUEUE_MAX.
 *
 * One thread does everything else, waking every TICK_MS or when told
 * (stop, SIGHUP):
 *
 *   take the stacks -> access lines written (one write per drain, no
 *   fsync) -> spans encoded as OTLP/JSON into the pending list
 *   -> a batch of up to BATCH_SPANS spans once that many wait or the
 *   oldest waited BATCH_AGE_MS -> POST {otlp_endpoint}/v1/traces through a
 *   libcurl multi handle (curl_multi_poll is the thread's sleep, so a slow
 *   collector delays no access line)
 *   -> 2xx: exported | failure: retried after 1 s, 2 s, 4 s when it may
 *   pass (no answer, 408, 429, 5xx), then dropped and counted
 *
 * A span counts against the bound from submit until its batch is
 * exported or dropped, so a collector that is down holds at most
 * trace_queue_spans spans in memory. At the stop, what is pending gets
 * one try each within a short deadline. */
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "node.h"

#define BATCH_SPANS    512
#define BATCH_AGE_MS   1000
#define TICK_MS        100
#define TRIES          4    /* export requests per batch before it is dropped */
#define STOP_BUDGET_MS 2000 /* at most this long flushing at the stop */
#define ERROR_LOG_MS   60000

struct batch {
    char *body;
    size_t len;
    unsigned nspans;
    unsigned tries;
    int64_t next_ms; /* not before (backoff) */
};

struct kp_telemetry {
    char *url; /* NULL: spans are not exported */
    struct curl_slist *headers;
    int64_t timeout_ms;
    unsigned queue_spans;
    char *access_path; /* NULL: no access log; "stderr" */
    char *node_name;

    /* Producers (any thread). */
    _Atomic(struct kp_span_set *) spans_head;
    _Atomic(struct kp_access_record *) access_head;
    atomic_uint_fast64_t queued_spans; /* submitted, not yet exported or dropped */
    atomic_uint_fast64_t queued_access;
    atomic_bool stop, reopen;
    struct kp_telemetry_stats_atomic {
        atomic_uint_fast64_t dropped, exported, failed_spans, failed_requests, lines,
            access_dropped, write_errors;
    } st;

    /* The thread's own. */
    pthread_t thread;
    bool thread_started;
    CURLM *multi;
    CURL *easy;
    bool inflight;
    json_t *pending; /* OTLP span objects not yet in a batch */
    int64_t pending_since_ms;
    struct batch b;
    bool have_batch;
    int fd; /* access log, -1: none */
    struct kp_buf out;
    int64_t last_error_log_ms;
    char curl_error[CURL_ERROR_SIZE];

    struct kp_metric *m_exported, *m_dropped, *m_failed_spans, *m_failed_requests, *m_queue,
        *m_lines, *m_access_dropped, *m_write_errors;
};

/* --- submitting (any thread) ----------------------------------------------------- */

void kp_telemetry_submit(void *arg, struct kp_span_set *spans, struct kp_access_record *access)
{
    struct kp_telemetry *t = arg;
    if (spans != NULL) {
        uint64_t n = spans->n;
        uint64_t before = atomic_fetch_add(&t->queued_spans, n);
        if (t->url == NULL || before + n > t->queue_spans) {
            atomic_fetch_sub(&t->queued_spans, n);
            atomic_fetch_add(&t->st.dropped, n);
            kp_metric_add(t->m_dropped, (int64_t)n);
            kp_span_set_free(spans);
        } else {
            struct kp_span_set *head = atomic_load(&t->spans_head);
            do
                spans->next = head;
            while (!atomic_compare_exchange_weak(&t->spans_head, &head, spans));
        }
    }
    if (access != NULL) {
        if (t->access_path == NULL ||
            atomic_fetch_add(&t->queued_access, 1) >= KP_ACCESS_QUEUE_MAX) {
            if (t->access_path != NULL)
                atomic_fetch_sub(&t->queued_access, 1);
            atomic_fetch_add(&t->st.access_dropped, 1);
            kp_metric_add(t->m_access_dropped, 1);
            kp_free(access);
            return;
        }
        struct kp_access_record *head = atomic_load(&t->access_head);
        do
            access->next = head;
        while (!atomic_compare_exchange_weak(&t->access_head, &head, access));
    }
}

void kp_telemetry_reopen(struct kp_telemetry *t)
{
    if (t == NULL)
        return;
    atomic_store(&t->reopen, true);
    if (t->multi != NULL)
        curl_multi_wakeup(t->multi);
}

void kp_telemetry_get_stats(struct kp_telemetry *t, struct kp_telemetry_stats *st)
{
    st->queued_spans = atomic_load(&t->queued_spans);
    st->dropped = atomic_load(&t->st.dropped);
    st->exported = atomic_load(&t->st.exported);
    st->failed_spans = atomic_load(&t->st.failed_spans);
    st->failed_requests = atomic_load(&t->st.failed_requests);
    st->access_lines = atomic_load(&t->st.lines);
    st->access_dropped = atomic_load(&t->st.access_dropped);
    st->access_write_errors = atomic_load(&t->st.write_errors);
}

/* --- the access log ------------------------------------------------------------ */

static int open_access(struct kp_telemetry *t, char *errmsg, size_t errlen)
{
    if (t->access_path == NULL)
        return KP_OK;
    if (strcmp(t->access_path, "stderr") == 0) {
        t->fd = STDERR_FILENO;
        return KP_OK;
    }
    int fd = open(t->access_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (fd < 0)
        return kp_errf(errmsg, errlen, KP_EIO, "access_log: cannot open %s: %s", t->access_path,
                       strerror(errno));
    if (t->fd >= 0 && t->fd != STDERR_FILENO)
        close(t->fd);
    t->fd = fd;
    return KP_OK;
}

/* SIGHUP: a file renamed by logrotate is closed and a new one opened at
 * the configured path; when that fails the old one stays. */
static void reopen_access(struct kp_telemetry *t)
{
    char errmsg[300];
    if (t->access_path == NULL || t->fd == STDERR_FILENO)
        return;
    if (open_access(t, errmsg, sizeof(errmsg)) != KP_OK)
        kp_error("telemetry", "%s; still writing to the file opened before", errmsg);
    else
        kp_info("telemetry", "access log reopened: %s", t->access_path);
}

static void write_all(struct kp_telemetry *t, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(t->fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            atomic_fetch_add(&t->st.write_errors, 1);
            kp_metric_add(t->m_write_errors, 1);
            if (kp_now_unix_ms() - t->last_error_log_ms > ERROR_LOG_MS) {
                t->last_error_log_ms = kp_now_unix_ms();
                kp_error("telemetry", "access log %s: write failed: %s", t->access_path,
                         strerror(errno));
            }
            return;
        }
        p += w;
        n -= (size_t)w;
    }
}

/* Newest first on the stack: reversed, they are written in the order the
 * calls ended. */
static void drain_access(struct kp_telemetry *t)
{
    struct kp_access_record *r = atomic_exchange(&t->access_head, NULL), *rev = NULL;
    while (r != NULL) {
        struct kp_access_record *next = r->next;
        r->next = rev;
        rev = r;
        r = next;
    }
    uint64_t n = 0;
    t->out.len = 0;
    for (r = rev; r != NULL; n++) {
        struct kp_access_record *next = r->next;
        size_t mark = t->out.len;
        if (kp_access_record_line(r, &t->out) != KP_OK)
            t->out.len = mark;
        /* On stderr, a line is one write, so it does not interleave with log
         * lines (writes of up to PIPE_BUF bytes are atomic). */
        if (t->fd == STDERR_FILENO && t->out.len > 0) {
            write_all(t, t->out.data, t->out.len);
            t->out.len = 0;
        }
        kp_free(r);
        r = next;
    }
    if (t->out.len > 0)
        write_all(t, t->out.data, t->out.len);
    if (n > 0) {
        atomic_fetch_sub(&t->queued_access, n);
        atomic_fetch_add(&t->st.lines, n);
        kp_metric_add(t->m_lines, (int64_t)n);
    }
}

/* --- spans ------------------------------------------------------------------------ */

static void spans_lost(struct kp_telemetry *t, uint64_t n, bool failed)
{
    atomic_fetch_sub(&t->queued_spans, n);
    if (failed) {
        atomic_fetch_add(&t->st.failed_spans, n);
        kp_metric_add(t->m_failed_spans, (int64_t)n);
    } else {
        atomic_fetch_add(&t->st.dropped, n);
        kp_metric_add(t->m_dropped, (int64_t)n);
    }
}

static void drain_spans(struct kp_telemetry *t)
{
    struct kp_span_set *s = atomic_exchange(&t->spans_head, NULL), *rev = NULL;
    while (s != NULL) {
        struct kp_span_set *next = s->next;
        s->next = rev;
        rev = s;
        s = next;
    }
    for (s = rev; s != NULL;) {
        struct kp_span_set *next = s->next;
        for (unsigned i = 0; i < s->n; i++) {
            json_t *j = kp_span_otlp(&s->spans[i]);
            if (json_array_size(t->pending) == 0)
                t->pending_since_ms = kp_now_unix_ms();
            if (j == NULL || json_array_append_new(t->pending, j) != 0)
                spans_lost(t, 1, false); /* out of memory */
        }
        kp_span_set_free(s);
        s = next;
    }
}

/* An export request with the first BATCH_SPANS pending spans. */
static json_t *batch_request(struct kp_telemetry *t)
{
    struct kp_span_attr res[3] = {
        {.key = "service.name", .type = KP_ATTR_STR, .s = "keyplane"},
        {.key = "service.version", .type = KP_ATTR_STR, .s = kp_version()},
        {.key = "service.instance.id", .type = KP_ATTR_STR, .s = t->node_name},
    };
    json_t *spans = json_array();
    size_t n =
        json_array_size(t->pending) < BATCH_SPANS ? json_array_size(t->pending) : BATCH_SPANS;
    for (size_t i = 0; spans != NULL && i < n; i++)
        json_array_append(spans, json_array_get(t->pending, i));
    return kp_otlp_request(spans, res, 3, "keyplane", kp_version());
}

/* The next batch from the pending spans (they leave the list). */
static void make_batch(struct kp_telemetry *t)
{
    size_t n =
        json_array_size(t->pending) < BATCH_SPANS ? json_array_size(t->pending) : BATCH_SPANS;
    json_t *req = batch_request(t);
    size_t len = 0;
    char *body = req ? kp_json_dumps(req, &len) : NULL;
    json_decref(req);
    json_t *rest = json_array();
    for (size_t i = n; rest != NULL && i < json_array_size(t->pending); i++)
        json_array_append(rest, json_array_get(t->pending, i));
    if (rest == NULL) {
        kp_free(body);
        return; /* out of memory: try again next tick */
    }
    json_decref(t->pending);
    t->pending = rest;
    t->pending_since_ms = kp_now_unix_ms();
    if (body == NULL) {
        spans_lost(t, n, false);
        return;
    }
    t->b = (struct batch){body, len, (unsigned)n, 0, 0};
    t->have_batch = true;
}

static void batch_done(struct kp_telemetry *t, bool exported)
{
    if (exported) {
        atomic_fetch_sub(&t->queued_spans, t->b.nspans);
        atomic_fetch_add(&t->st.exported, t->b.nspans);
        kp_metric_add(t->m_exported, t->b.nspans);
    } else {
        spans_lost(t, t->b.nspans, true);
    }
    kp_free(t->b.body);
    t->b = (struct batch){0};
    t->have_batch = false;
}

static size_t discard(char *p, size_t size, size_t n, void *arg)
{
    (void)p;
    (void)arg;
    return size * n;
}

static void start_export(struct kp_telemetry *t)
{
    CURL *e = t->easy;
    curl_easy_reset(e);
    curl_easy_setopt(e, CURLOPT_URL, t->url);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, t->b.body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)t->b.len);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, t->headers);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)t->timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)t->timeout_ms);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->curl_error);
    t->curl_error[0] = '\0';
    t->b.tries++;
    if (curl_multi_add_handle(t->multi, e) == CURLM_OK)
        t->inflight = true;
    else
        batch_done(t, false);
}

/* Not the URL: it may carry credentials. */
static void log_failure(struct kp_telemetry *t, const char *why, bool dropped)
{
    int64_t now = kp_now_unix_ms();
    if (now - t->last_error_log_ms < ERROR_LOG_MS)
        return;
    t->last_error_log_ms = now;
    kp_warn("telemetry", "trace export to the collector failed (%s); %s", why,
            dropped ? "its spans are dropped" : "retrying with backoff");
}

static void export_finished(struct kp_telemetry *t, CURLcode res, bool stopping)
{
    long status = 0;
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
    curl_multi_remove_handle(t->multi, t->easy);
    t->inflight = false;
    if (res == CURLE_OK && status >= 200 && status <= 299) {
        batch_done(t, true);
        return;
    }
    atomic_fetch_add(&t->st.failed_requests, 1);
    kp_metric_add(t->m_failed_requests, 1);
    char why[CURL_ERROR_SIZE + 32];
    if (res != CURLE_OK)
        snprintf(why, sizeof(why), "%s",
                 t->curl_error[0] ? t->curl_error : curl_easy_strerror(res));
    else
        snprintf(why, sizeof(why), "HTTP %ld", status);
    /* OTLP: retry what may pass (no answer, 408, 429, 502-504); a 400 will
     * not pass later. */
    bool retryable = res != CURLE_OK || status == 408 || status == 429 || status >= 500;
    bool give_up = !retryable || stopping || t->b.tries >= TRIES;
    log_failure(t, why, give_up);
    if (give_up) {
        batch_done(t, false);
        return;
    }
    t->b.next_ms = kp_now_unix_ms() + ((int64_t)1000 << (t->b.tries - 1));
}

static void export_step(struct kp_telemetry *t, bool stopping)
{
    int64_t now = kp_now_unix_ms();
    if (t->url == NULL)
        return;
    if (!t->have_batch && json_array_size(t->pending) > 0 &&
        (json_array_size(t->pending) >= BATCH_SPANS || now - t->pending_since_ms >= BATCH_AGE_MS ||
         stopping))
        make_batch(t);
    if (t->have_batch && !t->inflight && now >= t->b.next_ms)
        start_export(t);
    if (!t->inflight)
        return;
    int running = 0, left = 0;
    curl_multi_perform(t->multi, &running);
    CURLMsg *m;
    while ((m = curl_multi_info_read(t->multi, &left)) != NULL)
        if (m->msg == CURLMSG_DONE)
            export_finished(t, m->data.result, stopping);
}

/* One turn of the thread: what tests call without a thread. */
void kp_telemetry_poll(struct kp_telemetry *t, bool stopping)
{
    if (atomic_exchange(&t->reopen, false))
        reopen_access(t);
    drain_access(t);
    drain_spans(t);
    export_step(t, stopping);
    kp_metric_set(t->m_queue, (int64_t)atomic_load(&t->queued_spans));
}

static bool flushed(struct kp_telemetry *t)
{
    return !t->inflight && !t->have_batch && json_array_size(t->pending) == 0 &&
           atomic_load(&t->spans_head) == NULL && atomic_load(&t->access_head) == NULL;
}

static void *run(void *arg)
{
    struct kp_telemetry *t = arg;
    kp_thread_name("kp-telemetry", -1);
    int64_t deadline = 0;
    for (;;) {
        bool stopping = atomic_load(&t->stop);
        if (stopping && deadline == 0)
            deadline = kp_now_unix_ms() +
                       (t->timeout_ms < STOP_BUDGET_MS ? t->timeout_ms : STOP_BUDGET_MS);
        kp_telemetry_poll(t, stopping);
        if (stopping && (flushed(t) || kp_now_unix_ms() >= deadline))
            break;
        curl_multi_poll(t->multi, NULL, 0, TICK_MS, NULL);
    }
    return NULL;
}

/* --- lifecycle ------------------------------------------------------------------ */

static int set_headers(struct kp_telemetry *t, const char *lines)
{
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    for (const char *p = lines; h != NULL && p != NULL && *p != '\0';) {
        size_t n = strcspn(p, "\n");
        char *line = kp_strndup(p, n);
        struct curl_slist *next = line ? curl_slist_append(h, line) : NULL;
        if (line != NULL) {
            /* Collector credentials: masked in any log line that would
             * hold one (lines are "Name: value", node/config.c). */
            const char *v = strstr(line, ": ");
            if (v != NULL)
                kp_log_register_secret(v + 2, strlen(v + 2));
            kp_secret_wipe(line, n);
            kp_free(line);
        }
        if (next == NULL) {
            curl_slist_free_all(h);
            return KP_ENOMEM;
        }
        h = next;
        p += n;
        if (*p == '\n')
            p++;
    }
    t->headers = h;
    return h ? KP_OK : KP_ENOMEM;
}

static void register_metrics(struct kp_telemetry *t)
{
    t->m_exported = kp_metric_counter("keyplane_trace_spans_exported_total",
                                      "Spans the OTLP collector accepted");
    t->m_dropped = kp_metric_counter("keyplane_trace_spans_dropped_total",
                                     "Spans dropped before export: the queue was full");
    t->m_failed_spans = kp_metric_counter(
        "keyplane_trace_spans_failed_total",
        "Spans dropped after their batch's export failed (retries exhausted or refused)");
    t->m_failed_requests = kp_metric_counter("keyplane_trace_export_failures_total",
                                             "Failed OTLP export requests (each try)");
    t->m_queue = kp_metric_gauge("keyplane_trace_queue_spans", "Spans waiting for export");
    t->m_lines =
        kp_metric_counter("keyplane_access_log_lines_total", "Lines written to the access log");
    t->m_access_dropped = kp_metric_counter("keyplane_access_log_dropped_total",
                                            "Access log lines dropped: the queue was full");
    t->m_write_errors =
        kp_metric_counter("keyplane_access_log_write_errors_total", "Failed access log writes");
}

int kp_telemetry_new(const struct kp_telemetry_options *o, struct kp_telemetry **out, char *errmsg,
                     size_t errlen)
{
    struct kp_telemetry *t = kp_calloc(1, sizeof(*t));
    if (t == NULL)
        return kp_errf(errmsg, errlen, KP_ENOMEM, "out of memory");
    int rc = KP_ENOMEM;
    t->fd = -1;
    t->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : 10000;
    t->queue_spans = o->queue_spans > 0 ? o->queue_spans : 4096;
    kp_buf_init(&t->out);
    t->node_name = kp_strdup(o->node_name ? o->node_name : "keyplane");
    t->pending = json_array();
    t->multi = curl_multi_init();
    if (t->node_name == NULL || t->pending == NULL || t->multi == NULL)
        goto err;
    if (o->endpoint != NULL) {
        size_t n = strlen(o->endpoint);
        while (n > 0 && o->endpoint[n - 1] == '/')
            n--;
        t->url = kp_malloc(n + sizeof("/v1/traces"));
        if (t->url == NULL || (t->easy = curl_easy_init()) == NULL ||
            set_headers(t, o->headers) != KP_OK)
            goto err;
        memcpy(t->url, o->endpoint, n);
        memcpy(t->url + n, "/v1/traces", sizeof("/v1/traces"));
    }
    if (o->access_log != NULL && (t->access_path = kp_strdup(o->access_log)) == NULL)
        goto err;
    if ((rc = open_access(t, errmsg, errlen)) != KP_OK)
        goto err;
    register_metrics(t);
    if (o->thread) {
        if (pthread_create(&t->thread, NULL, run, t) != 0) {
            rc = kp_errf(errmsg, errlen, KP_ENOMEM, "cannot start the telemetry thread");
            goto err;
        }
        t->thread_started = true;
    }
    *out = t;
    return KP_OK;

err:
    if (rc == KP_ENOMEM)
        kp_errf(errmsg, errlen, KP_ENOMEM, "telemetry: out of memory");
    kp_telemetry_free(t);
    return rc;
}

void kp_telemetry_free(struct kp_telemetry *t)
{
    if (t == NULL)
        return;
    if (t->thread_started) {
        atomic_store(&t->stop, true);
        curl_multi_wakeup(t->multi);
        pthread_join(t->thread, NULL);
    }
    if (t->inflight)
        curl_multi_remove_handle(t->multi, t->easy);
    /* Whatever is left could not be sent in time. */
    uint64_t left = atomic_load(&t->queued_spans);
    if (left > 0)
        spans_lost(t, left, true);
    for (struct kp_span_set *s = atomic_exchange(&t->spans_head, NULL), *next; s; s = next) {
        next = s->next;
        kp_span_set_free(s);
    }
    if (t->fd >= 0)
        drain_access(t); /* without a thread (tests), the last lines */
    for (struct kp_access_record *r = atomic_exchange(&t->access_head, NULL), *next; r; r = next) {
        next = r->next;
        kp_free(r);
    }
    if (t->fd >= 0 && t->fd != STDERR_FILENO)
        close(t->fd);
    kp_free(t->b.body);
    json_decref(t->pending);
    if (t->easy != NULL)
        curl_easy_cleanup(t->easy);
    if (t->multi != NULL)
        curl_multi_cleanup(t->multi);
    curl_slist_free_all(t->headers);
    kp_buf_free(&t->out);
    kp_free(t->url);
    kp_free(t->access_path);
    kp_free(t->node_name);
    kp_free(t);
}

/* --- the node ---------------------------------------------------------------------- */

int kp_telemetry_open(struct kp_node *n, char *errmsg, size_t errlen)
{
    const struct kp_config *c = n->cfg;
    if (c->otlp_endpoint == NULL && c->access_log == NULL)
        return KP_OK; /* trace context still flows; nothing is built */
    struct kp_telemetry_options o = {.endpoint = c->otlp_endpoint,
                                     .headers = c->otlp_headers,
                                     .timeout_ms = c->otlp_timeout_ms,
                                     .queue_spans = (unsigned)c->trace_queue_spans,
                                     .access_log = c->access_log,
                                     .node_name = c->node_name,
                                     .thread = true};
    int rc = kp_telemetry_new(&o, &n->telemetry, errmsg, errlen);
    if (rc != KP_OK)
        return rc;
    n->router.trace =
        (struct kp_trace_sink){kp_telemetry_submit, n->telemetry, c->otlp_endpoint != NULL,
                               c->access_log != NULL, c->trace_sample_ratio};
    if (c->otlp_endpoint != NULL)
        kp_info("telemetry", "exporting traces over OTLP/HTTP (sample ratio %g, queue %d spans)",
                c->trace_sample_ratio, c->trace_queue_spans);
    if (c->access_log != NULL)
        kp_info("telemetry", "access log: %s", c->access_log);
    return KP_OK;
}

void kp_node_hup(void *node)
{
    struct kp_node *n = node;
    char why[512];
    kp_telemetry_reopen(n->telemetry);
    /* A bad certificate file must not cut the cluster off: the store and
     * the listeners keep the certificates they have and say why they did
     * not take the new ones. */
    if (n->store != NULL && !n->store_closing &&
        kp_store_tls_reload(n->store, why, sizeof(why)) != KP_OK)
        kp_error("raft", "SIGHUP: TLS certificates not reloaded, the previous ones stay in use: %s",
                 why);
    kp_node_tls_reload(n);
}

void kp_telemetry_close(struct kp_node *n)
{
    kp_telemetry_free(n->telemetry);
    n->telemetry = NULL;
    n->router.trace = (struct kp_trace_sink){0};
}

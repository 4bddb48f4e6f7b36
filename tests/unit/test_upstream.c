/* Tests of router/upstream.c: libcurl's multi-socket API on a libuv loop.
 *
 * Each test runs one loop holding both sides: a kp_http_server on 127.0.0.1
 * whose handlers answer, stream on timers, stall, hang or reset (and hand
 * /v1/chat/completions to kpmock), a raw TCP server for replies the HTTP
 * server cannot produce (1xx, folded headers, a cut body), and the
 * kp_upstream under test. Waits drive the loop until a condition holds, with
 * a guard timer as the deadline; nothing sleeps. libcurl's allocations are
 * counted (curl_global_init_mem) to report what a call costs. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>

#include "router/upstream.h"
#include "test_cert.h"
#include "tools/mock/mock.h"

#define DEADLINE_MS 10000
#define BIG_CHUNK   4096

/* --- libcurl's allocations, counted ------------------------------------------ */

static atomic_ulong curl_allocs;

static void *cm_malloc(size_t n)
{
    atomic_fetch_add(&curl_allocs, 1);
    return malloc(n);
}

static void cm_free(void *p)
{
    free(p);
}

static void *cm_realloc(void *p, size_t n)
{
    if (p == NULL)
        atomic_fetch_add(&curl_allocs, 1);
    return realloc(p, n);
}

static char *cm_strdup(const char *s)
{
    atomic_fetch_add(&curl_allocs, 1);
    return strdup(s);
}

static void *cm_calloc(size_t n, size_t size)
{
    atomic_fetch_add(&curl_allocs, 1);
    return calloc(n, size);
}

/* --- fixture ------------------------------------------------------------------ */

struct fx;

/* The server side of an exchange answered later (streamed, stalled, held). */
struct srv_ex {
    struct fx *f;
    struct kp_http_exchange *ex;
    uv_timer_t timer;
    int left; /* chunks still to send; < 0: forever */
    unsigned every_ms;
    int sent;
    struct srv_ex *prev, *next;
};

/* A raw TCP server with one canned reply (one connection at a time). */
struct raw {
    bool started;
    uv_tcp_t listener;
    uv_tcp_t conn;
    bool conn_open, replied;
    uv_write_t wr;
    char in[8192];
    size_t in_len;
    const char *reply;
    bool close_after;
    int port;
};

struct rec;

struct fx {
    uv_loop_t loop;
    uv_timer_t guard;
    bool guard_fired;
    struct kp_http_server *srv;
    int port;
    char base[64];
    struct kp_upstream *up;
    bool up_closed, srv_closed;
    struct rec *recs;
    /* what the server saw */
    int requests, aborts;
    char last_method[16];
    struct kp_buf last_headers; /* "name: value\n" */
    struct srv_ex *live;
    struct kp_mock mock;
    struct kp_mock_answer ans;
    struct raw raw;
    /* setup_tls: the server speaks TLS with a self-signed certificate */
    struct kp_tls_server *tls;
    char tls_dir[64], tls_crt[96], tls_key[96];
};

static void guard_fired(uv_timer_t *t)
{
    struct fx *f = t->data;
    f->guard_fired = true;
}

/* Drive the loop until *@p >= @n or the deadline passes. */
static bool wait_until(struct fx *f, const int *p, int n)
{
    f->guard_fired = false;
    uv_timer_start(&f->guard, guard_fired, DEADLINE_MS, 0);
    while (*p < n && !f->guard_fired)
        uv_run(&f->loop, UV_RUN_ONCE);
    uv_timer_stop(&f->guard);
    return *p >= n;
}

/* Drive the loop for @ms (to see that nothing more happens); returns the
 * loop iterations it took (a loop with nothing to do blocks, one that
 * spins on a ready descriptor makes thousands). */
static unsigned run_for(struct fx *f, uint64_t ms)
{
    unsigned n = 0;
    f->guard_fired = false;
    uv_timer_start(&f->guard, guard_fired, ms, 0);
    while (!f->guard_fired) {
        uv_run(&f->loop, UV_RUN_ONCE);
        n++;
    }
    return n;
}

/* --- server handlers ------------------------------------------------------- */

static long qint(const char *query, const char *key, long def)
{
    size_t k = strlen(key);
    for (const char *p = query; p && *p;) {
        if (strncmp(p, key, k) == 0 && p[k] == '=')
            return strtol(p + k + 1, NULL, 10);
        p = strchr(p, '&');
        if (p)
            p++;
    }
    return def;
}

static void sx_closed(uv_handle_t *h)
{
    free(h->data);
}

/* Finish the exchange (reset or end of stream) and free it. */
static void sx_finish(struct srv_ex *x, bool reset)
{
    struct fx *f = x->f;
    if (x->prev)
        x->prev->next = x->next;
    else
        f->live = x->next;
    if (x->next)
        x->next->prev = x->prev;
    uv_timer_stop(&x->timer);
    if (reset)
        kp_http_reset(x->ex);
    else
        kp_http_stream_end(x->ex);
    uv_close((uv_handle_t *)&x->timer, sx_closed);
}

static void sx_aborted(struct kp_http_exchange *ex, void *arg)
{
    struct srv_ex *x = arg;
    (void)ex;
    x->f->aborts++;
    sx_finish(x, true);
}

static struct srv_ex *sx_new(struct fx *f, struct kp_http_exchange *ex)
{
    struct srv_ex *x = calloc(1, sizeof(*x));
    assert_non_null(x);
    x->f = f;
    x->ex = ex;
    uv_timer_init(&f->loop, &x->timer);
    x->timer.data = x;
    x->next = f->live;
    if (f->live)
        f->live->prev = x;
    f->live = x;
    kp_http_on_abort(ex, sx_aborted, x);
    return x;
}

static void sx_write_event(struct srv_ex *x)
{
    char ev[32];
    int n = snprintf(ev, sizeof(ev), "data: %d\n\n", x->sent++);
    kp_http_stream_write(x->ex, ev, (size_t)n);
}

static void sx_tick(uv_timer_t *t)
{
    struct srv_ex *x = t->data;
    sx_write_event(x);
    if (x->left > 0 && --x->left == 0)
        sx_finish(x, false);
}

static void srv_reset_all(struct fx *f)
{
    while (f->live)
        sx_finish(f->live, true);
}

static unsigned char big_byte(size_t k)
{
    return (unsigned char)((k / BIG_CHUNK) * 31 + k % 251);
}

static void answer_mock(struct fx *f, struct kp_http_exchange *ex,
                        const struct kp_http_request *req)
{
    struct kp_mock_answer *a = &f->ans;
    struct kp_http_header h[KP_MOCK_ANSWER_HEADERS];
    kp_mock_handle(&f->mock, 0, req, a);
    unsigned n = kp_mock_answer_headers(a, h);
    if (!a->stream) {
        kp_http_respond(ex, a->status, h, n, a->body.data, a->body.len);
        return;
    }
    kp_http_stream_begin(ex, a->status, h, n);
    for (unsigned i = 0; i < a->n_events; i++) {
        const char *p;
        size_t len;
        kp_mock_answer_event(a, i, &p, &len);
        kp_http_stream_write(ex, p, len);
    }
    kp_http_stream_end(ex);
}

static void on_request(struct kp_http_exchange *ex, const struct kp_http_request *req, void *arg)
{
    struct fx *f = arg;
    static const struct kp_http_header sse = {"Content-Type", 12, "text/event-stream", 17};
    f->requests++;
    snprintf(f->last_method, sizeof(f->last_method), "%s", req->method);
    f->last_headers.len = 0;
    for (unsigned i = 0; i < req->n_headers; i++)
        kp_buf_appendf(&f->last_headers, "%s: %s\n", req->headers[i].name, req->headers[i].value);

    if (strcmp(req->path, "/echo") == 0) {
        struct kp_http_header h = KP_HTTP_HEADER("X-Method", req->method);
        kp_http_respond(ex, 200, &h, 1, req->body, req->body_len);
    } else if (strcmp(req->path, "/status") == 0) {
        struct kp_http_header h[2] = {KP_HTTP_HEADER("Retry-After", "7"),
                                      KP_HTTP_HEADER("X-Padded", "  spaced out  ")};
        static const char body[] = "{\"error\":\"slow down\"}";
        kp_http_respond(ex, 429, h, 2, body, sizeof(body) - 1);
    } else if (strcmp(req->path, "/redirect") == 0) {
        struct kp_http_header h = KP_HTTP_HEADER("Location", "/n/followed");
        kp_http_respond(ex, 302, &h, 1, "moved", 5);
    } else if (strncmp(req->path, "/n/", 3) == 0) {
        kp_http_respond(ex, 200, NULL, 0, req->path + 3, strlen(req->path + 3));
    } else if (strncmp(req->path, "/t/", 3) == 0) {
        kp_http_respond(ex, 200, NULL, 0, req->target, strlen(req->target));
    } else if (strcmp(req->path, "/stream") == 0) {
        struct srv_ex *x = sx_new(f, ex);
        x->left = (int)qint(req->query, "n", 5);
        x->every_ms = (unsigned)qint(req->query, "ms", 10);
        kp_http_stream_begin(ex, 200, &sse, 1);
        sx_write_event(x); /* the first event at once, the others on the timer */
        if (x->left > 0 && --x->left == 0)
            sx_finish(x, false);
        else
            uv_timer_start(&x->timer, sx_tick, x->every_ms, x->every_ms);
    } else if (strcmp(req->path, "/stall") == 0) {
        struct srv_ex *x = sx_new(f, ex);
        kp_http_stream_begin(ex, 200, &sse, 1);
        sx_write_event(x);
    } else if (strcmp(req->path, "/hang") == 0) {
        sx_new(f, ex);
    } else if (strcmp(req->path, "/big") == 0) {
        long n = qint(req->query, "n", 256);
        unsigned char chunk[BIG_CHUNK];
        kp_http_stream_begin(ex, 200, NULL, 0);
        for (long i = 0; i < n; i++) {
            for (size_t k = 0; k < BIG_CHUNK; k++)
                chunk[k] = big_byte((size_t)i * BIG_CHUNK + k);
            kp_http_stream_write(ex, chunk, sizeof(chunk));
        }
        kp_http_stream_end(ex);
    } else if (strcmp(req->path, "/v1/chat/completions") == 0) {
        answer_mock(f, ex, req);
    } else {
        kp_http_respond(ex, 404, NULL, 0, "", 0);
    }
}

/* --- raw server ------------------------------------------------------------ */

static void raw_conn_closed(uv_handle_t *h)
{
    struct raw *r = h->data;
    r->conn_open = false;
}

static void raw_written(uv_write_t *w, int status)
{
    struct raw *r = w->data;
    (void)status;
    if (r->close_after && r->conn_open && !uv_is_closing((uv_handle_t *)&r->conn))
        uv_close((uv_handle_t *)&r->conn, raw_conn_closed);
}

static void raw_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct raw *r = h->data;
    (void)suggested;
    buf->base = r->in + r->in_len;
    buf->len = sizeof(r->in) - r->in_len - 1;
}

static void raw_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct raw *r = s->data;
    (void)buf;
    if (nread < 0) {
        if (!uv_is_closing((uv_handle_t *)s))
            uv_close((uv_handle_t *)s, raw_conn_closed);
        return;
    }
    r->in_len += (size_t)nread;
    r->in[r->in_len] = '\0';
    if (!r->replied && strstr(r->in, "\r\n\r\n") != NULL) {
        r->replied = true;
        uv_buf_t b = uv_buf_init((char *)r->reply, (unsigned)strlen(r->reply));
        r->wr.data = r;
        uv_write(&r->wr, s, &b, 1, raw_written);
    }
}

static void raw_on_connection(uv_stream_t *l, int status)
{
    struct raw *r = l->data;
    assert_int_equal(status, 0);
    assert_false(r->conn_open);
    uv_tcp_init(l->loop, &r->conn);
    r->conn.data = r;
    r->conn_open = true;
    r->replied = false;
    r->in_len = 0;
    assert_int_equal(uv_accept(l, (uv_stream_t *)&r->conn), 0);
    uv_read_start((uv_stream_t *)&r->conn, raw_alloc, raw_read);
}

static void raw_start(struct fx *f, const char *reply, bool close_after)
{
    struct raw *r = &f->raw;
    struct sockaddr_in sa;
    struct sockaddr_storage got;
    int len = sizeof(got);
    r->reply = reply;
    r->close_after = close_after;
    uv_ip4_addr("127.0.0.1", 0, &sa);
    uv_tcp_init(&f->loop, &r->listener);
    r->listener.data = r;
    assert_int_equal(uv_tcp_bind(&r->listener, (struct sockaddr *)&sa, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&r->listener, 16, raw_on_connection), 0);
    uv_tcp_getsockname(&r->listener, (struct sockaddr *)&got, &len);
    r->port = ntohs(((struct sockaddr_in *)&got)->sin_port);
    r->started = true;
}

static void raw_stop(struct fx *f)
{
    struct raw *r = &f->raw;
    if (!r->started)
        return;
    uv_close((uv_handle_t *)&r->listener, NULL);
    if (r->conn_open && !uv_is_closing((uv_handle_t *)&r->conn))
        uv_close((uv_handle_t *)&r->conn, raw_conn_closed);
    r->started = false;
}

/* --- the client side ------------------------------------------------------ */

struct rec {
    struct fx *f;
    struct rec *next_rec;
    struct kp_upstream_call *call;
    int heads, bodies, dones, reads;
    int status;
    enum kp_upstream_result result;
    char detail[256];
    struct kp_buf body;
    struct kp_buf headers; /* "name=value\n" */
    char order[64];
    unsigned n_order;
    /* behaviour */
    bool cancel_in_head;
    int cancel_at_body; /* cancel inside on_body number N */
    bool close_in_body;
    bool close_in_done;
    struct rec *resume_other; /* resume this one's call from on_body */
    bool pause_each;
    int hold_at_body; /* pause this one for hold_ms */
    unsigned hold_ms;
    struct rec *start_in_head; /* start this rec's call from on_head */
    const char *start_path;
    /* state */
    bool cancelled;
    int after_cancel; /* callbacks seen after cancel: must stay 0 */
    int pauses;
    bool timer_init;
    uv_timer_t resume;
};

static struct rec *rec_new(struct fx *f)
{
    struct rec *r = calloc(1, sizeof(*r));
    assert_non_null(r);
    r->f = f;
    r->result = (enum kp_upstream_result) - 1;
    kp_buf_init(&r->body);
    kp_buf_init(&r->headers);
    r->next_rec = f->recs;
    f->recs = r;
    return r;
}

static void rec_order(struct rec *r, char c)
{
    if (r->n_order + 1 < sizeof(r->order))
        r->order[r->n_order++] = c;
}

static const char *rec_header(struct rec *r, const char *name)
{
    static char value[256];
    char key[64];
    snprintf(key, sizeof(key), "%s=", name);
    const char *p = r->headers.data;
    while (p && *p) {
        const char *nl = strchr(p, '\n');
        if (strncmp(p, key, strlen(key)) == 0) {
            size_t n = (size_t)(nl - p) - strlen(key);
            snprintf(value, sizeof(value), "%.*s", (int)n, p + strlen(key));
            return value;
        }
        p = nl + 1;
    }
    return "(missing)";
}

static int start_path(struct rec *r, const char *path, struct kp_upstream_request *req);

static void rec_head(void *arg, int status, const struct kp_http_header *h, unsigned n)
{
    struct rec *r = arg;
    if (r->cancelled)
        r->after_cancel++;
    r->heads++;
    r->status = status;
    rec_order(r, 'H');
    for (unsigned i = 0; i < n; i++) {
        assert_int_equal(strlen(h[i].name), h[i].name_len);
        assert_int_equal(strlen(h[i].value), h[i].value_len);
        kp_buf_appendf(&r->headers, "%s=%s\n", h[i].name, h[i].value);
    }
    if (r->cancel_in_head) {
        kp_upstream_cancel(r->call);
        r->cancelled = true;
    }
    if (r->start_in_head) {
        struct kp_upstream_request req;
        memset(&req, 0, sizeof(req));
        assert_int_equal(start_path(r->start_in_head, r->start_path, &req), KP_OK);
    }
}

static void rec_resume(uv_timer_t *t)
{
    struct rec *r = t->data;
    if (!r->cancelled && r->dones == 0)
        kp_upstream_resume(r->call);
}

static void up_closed(void *arg)
{
    struct fx *f = arg;
    f->up_closed = true;
}

static bool rec_body(void *arg, const void *data, size_t len)
{
    struct rec *r = arg;
    if (r->cancelled)
        r->after_cancel++;
    assert_int_equal(r->heads, 1);
    assert_true(len > 0);
    r->bodies++;
    rec_order(r, 'B');
    kp_buf_append(&r->body, data, len);
    if (r->cancel_at_body == r->bodies) {
        kp_upstream_cancel(r->call);
        r->cancelled = true;
        return true;
    }
    if (r->resume_other != NULL && r->resume_other->dones == 0)
        kp_upstream_resume(r->resume_other->call);
    if (r->close_in_body) {
        r->cancelled = true;
        kp_upstream_close(r->f->up, up_closed, r->f);
        r->f->up = NULL;
        return true;
    }
    if (r->pause_each || r->hold_at_body == r->bodies) {
        if (!r->timer_init) {
            uv_timer_init(&r->f->loop, &r->resume);
            r->resume.data = r;
            r->timer_init = true;
        }
        r->pauses++;
        uv_timer_start(&r->resume, rec_resume, r->hold_at_body == r->bodies ? r->hold_ms : 0, 0);
        return false;
    }
    return true;
}

static void rec_done(void *arg, enum kp_upstream_result result, const char *detail)
{
    struct rec *r = arg;
    if (r->cancelled)
        r->after_cancel++;
    r->dones++;
    r->result = result;
    rec_order(r, 'D');
    assert_non_null(detail);
    snprintf(r->detail, sizeof(r->detail), "%s", detail);
    if (r->close_in_done) {
        kp_upstream_close(r->f->up, up_closed, r->f);
        r->f->up = NULL;
    }
}

static void rec_read(void *arg)
{
    struct rec *r = arg;
    assert_true(r->bodies > 0);
    r->reads++;
    rec_order(r, 'R');
}

static const struct kp_upstream_callbacks rec_cbs = {rec_head, rec_body, rec_done, NULL, rec_read};

/* Start @r's call to @path on the fixture's server, with @req's timeouts,
 * method, body and headers (method defaults to GET). */
static int start_url(struct rec *r, const char *url, struct kp_upstream_request *req)
{
    char errmsg[256];
    struct kp_upstream_callbacks cb = rec_cbs;
    cb.arg = r;
    req->url = url;
    if (req->method == NULL)
        req->method = "GET";
    return kp_upstream_start(r->f->up, req, &cb, &r->call, errmsg, sizeof(errmsg));
}

static int start_path(struct rec *r, const char *path, struct kp_upstream_request *req)
{
    char url[256];
    snprintf(url, sizeof(url), "%s%s", r->f->base, path);
    req->allow_http = true;
    return start_url(r, url, req);
}

static struct rec *call_path(struct fx *f, const char *path)
{
    struct rec *r = rec_new(f);
    struct kp_upstream_request req;
    memset(&req, 0, sizeof(req));
    assert_int_equal(start_path(r, path, &req), KP_OK);
    return r;
}

/* Connections the test server has accepted so far (its metrics). */
static long accepted(void)
{
    struct kp_buf m;
    long n = 0;
    kp_buf_init(&m);
    assert_int_equal(kp_metrics_render(&m), 0);
    const char *p = strstr(m.data, "keyplane_http_connections_total{listener=\"upstream_test\"} ");
    if (p)
        n = strtol(strchr(p, '}') + 2, NULL, 10);
    kp_buf_free(&m);
    return n;
}

/* A port nothing listens on (bound, then closed). */
static int dead_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

static void srv_closed(void *arg)
{
    struct fx *f = arg;
    f->srv_closed = true;
}

static int setup_with(void **state, bool tls)
{
    char errmsg[256];
    struct fx *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    if (tls) {
        strcpy(f->tls_dir, "/tmp/kp-test-upstream-tls.XXXXXX");
        assert_non_null(mkdtemp(f->tls_dir));
        snprintf(f->tls_crt, sizeof(f->tls_crt), "%s/s.crt", f->tls_dir);
        snprintf(f->tls_key, sizeof(f->tls_key), "%s/s.key", f->tls_dir);
        test_make_cert(f->tls_crt, f->tls_key, "127.0.0.1", 1);
        struct kp_tls_settings ts = {f->tls_crt, f->tls_key, NULL, false};
        if (kp_tls_server_new(&f->tls, &ts, errmsg, sizeof(errmsg)) != KP_OK)
            fail_msg("%s", errmsg);
    }
    assert_int_equal(uv_loop_init(&f->loop), 0);
    uv_timer_init(&f->loop, &f->guard);
    f->guard.data = f;
    kp_buf_init(&f->last_headers);
    struct kp_http_server_config cfg = {
        .name = "upstream_test", .handler = on_request, .arg = f, .tls = f->tls};
    kp_http_limits_default(&cfg.limits);
    assert_int_equal(kp_http_server_start(&f->srv, &f->loop, &cfg, "127.0.0.1:0", &f->port, errmsg,
                                          sizeof(errmsg)),
                     KP_OK);
    snprintf(f->base, sizeof(f->base), "%s://127.0.0.1:%d", tls ? "https" : "http", f->port);
    assert_int_equal(kp_upstream_new(&f->up, &f->loop, errmsg, sizeof(errmsg)), KP_OK);
    assert_int_equal(kp_mock_init(&f->mock, 1), 0);
    f->mock.fixed_time = 1700000000;
    kp_mock_answer_init(&f->ans);
    *state = f;
    return 0;
}

static int setup(void **state)
{
    return setup_with(state, false);
}

static int setup_tls(void **state)
{
    return setup_with(state, true);
}

static int teardown(void **state)
{
    struct fx *f = *state;
    for (struct rec *r = f->recs; r; r = r->next_rec)
        if (r->timer_init)
            uv_close((uv_handle_t *)&r->resume, NULL);
    if (f->up != NULL)
        kp_upstream_close(f->up, up_closed, f);
    kp_http_server_close(f->srv, srv_closed, f);
    raw_stop(f);
    int both;
    f->guard_fired = false;
    uv_timer_start(&f->guard, guard_fired, DEADLINE_MS, 0);
    while (!(f->up_closed && f->srv_closed) && !f->guard_fired)
        uv_run(&f->loop, UV_RUN_ONCE);
    both = f->up_closed && f->srv_closed;
    uv_close((uv_handle_t *)&f->guard, NULL);
    for (int i = 0; i < 100 && uv_loop_alive(&f->loop); i++)
        uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_true(both);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    while (f->recs) {
        struct rec *r = f->recs;
        f->recs = r->next_rec;
        kp_buf_free(&r->body);
        kp_buf_free(&r->headers);
        free(r);
    }
    kp_buf_free(&f->last_headers);
    kp_mock_answer_free(&f->ans);
    kp_mock_close(&f->mock);
    if (f->tls != NULL) {
        kp_tls_server_free(f->tls);
        unlink(f->tls_crt);
        unlink(f->tls_key);
        rmdir(f->tls_dir);
    }
    free(f);
    return 0;
}

/* --- tests ------------------------------------------------------------------- */

/* A POST with a body and headers reaches the server as sent (no Expect, no
 * form content type, an empty header kept), and a 200 comes back with its
 * body and lower-cased headers, head before body before done. */
static void test_plain_200(void **state)
{
    struct fx *f = *state;
    struct rec *r = rec_new(f);
    struct kp_http_header h[3] = {KP_HTTP_HEADER("Content-Type", "application/json"),
                                  KP_HTTP_HEADER("X-Test", "abc"), KP_HTTP_HEADER("X-Empty", "")};
    static const char body[] = "{\"hello\":1}";
    struct kp_upstream_request req = {.method = "POST", .headers = h, .n_headers = 3};
    req.body = body;
    req.body_len = sizeof(body) - 1;
    assert_int_equal(start_path(r, "/echo", &req), KP_OK);
    assert_int_equal(r->dones, 0); /* never from inside start */
    assert_int_equal(kp_upstream_active(f->up), 1);
    assert_true(wait_until(f, &r->dones, 1));
    assert_int_equal(r->result, KP_UPSTREAM_OK);
    assert_string_equal(r->detail, "ok");
    assert_int_equal(r->status, 200);
    assert_int_equal(r->heads, 1);
    assert_string_equal(r->body.data, body);
    assert_string_equal(rec_header(r, "x-method"), "POST");
    assert_string_equal(rec_header(r, "content-length"), "11");
    assert_string_not_equal(rec_header(r, "server"), "(missing)");
    assert_int_equal(r->order[0], 'H');
    assert_int_equal(r->order[r->n_order - 1], 'D');
    assert_string_equal(f->last_method, "POST");
    assert_non_null(strstr(f->last_headers.data, "Content-Type: application/json\n"));
    assert_non_null(strstr(f->last_headers.data, "X-Test: abc\n"));
    assert_non_null(strstr(f->last_headers.data, "X-Empty: \n"));
    assert_null(strcasestr(f->last_headers.data, "expect"));
    assert_null(strstr(f->last_headers.data, "urlencoded"));
    assert_int_equal(kp_upstream_active(f->up), 0);
}

/* A body over curl's 100-continue threshold (1 MiB in curl 7.88) goes out
 * at once and whole: no Expect header, no wait for a 100. */
static void test_big_body_without_expect(void **state)
{
    struct fx *f = *state;
    struct rec *r = rec_new(f);
    size_t n = (2u << 20) + 3;
    char *body = kp_malloc(n + 1);
    assert_non_null(body);
    for (size_t k = 0; k < n; k++)
        body[k] = (char)('a' + k % 26);
    body[n] = '\0';
    struct kp_http_header h = KP_HTTP_HEADER("Content-Type", "application/octet-stream");
    struct kp_upstream_request req = {.method = "POST", .headers = &h, .n_headers = 1};
    req.body = body;
    req.body_len = n;
    assert_int_equal(start_path(r, "/echo", &req), KP_OK);
    assert_true(wait_until(f, &r->dones, 1));
    assert_int_equal(r->result, KP_UPSTREAM_OK);
    assert_int_equal(r->status, 200);
    assert_int_equal(r->body.len, n);
    assert_memory_equal(r->body.data, body, n);
    assert_null(strcasestr(f->last_headers.data, "expect"));
    kp_free(body);
}

/* Calls one after another reuse one easy handle without curl_easy_reset:
 * each goes out with its own method, body and headers, none of the last
 * call's. */
static void test_reused_handle_forgets_the_last_call(void **state)
{
    struct fx *f = *state;
    static const struct {
        const char *method, *body, *header;
    } calls[] = {
        {"POST", "{\"a\":1}", "X-First: 1"}, {"GET", "", "X-Second: 2"},
        {"PUT", "put-body", "X-Third: 3"},   {"HEAD", "", "X-Fourth: 4"},
        {"DELETE", "", "X-Fifth: 5"},        {"POST", "again", "X-Sixth: 6"},
        {"GET", "", "X-Seventh: 7"},
    };
    for (size_t i = 0; i < sizeof(calls) / sizeof(calls[0]); i++) {
        struct rec *r = rec_new(f);
        char name[16], value[8];
        sscanf(calls[i].header, "%15[^:]: %7s", name, value);
        struct kp_http_header h = {name, strlen(name), value, strlen(value)};
        struct kp_upstream_request req = {.method = calls[i].method, .headers = &h, .n_headers = 1};
        req.body = calls[i].body;
        req.body_len = strlen(calls[i].body);
        assert_int_equal(start_path(r, "/echo", &req), KP_OK);
        assert_true(wait_until(f, &r->dones, 1));
        assert_int_equal(r->result, KP_UPSTREAM_OK);
        assert_string_equal(f->last_method, calls[i].method);
        assert_string_equal(rec_header(r, "x-method"), calls[i].method);
        if (strcmp(calls[i].method, "HEAD") == 0)
            assert_int_equal(r->body.len, 0);
        else
            assert_memory_equal(r->body.data ? r->body.data : "", calls[i].body,
                                strlen(calls[i].body) + (r->body.data == NULL));
        assert_int_equal(r->body.len, strcmp(calls[i].method, "HEAD") == 0 ? 0 : req.body_len);
        /* this call's header only */
        for (size_t k = 0; k < sizeof(calls) / sizeof(calls[0]); k++) {
            const char *hit = strstr(f->last_headers.data, calls[k].header);
            if (k == i)
                assert_non_null(hit);
            else if (strcmp(calls[k].header, calls[i].header) != 0)
                assert_null(hit);
        }
    }
}

/* A non-200 status is delivered with its headers (values trimmed) and body,
 * and the call still ends OK: the status is the caller's business. */
static void test_non_200(void **state)
{
    struct fx *f = *state;
    struct rec *r = call_path(f, "/status");
    assert_true(wait_until(f, &r->dones, 1));
    assert_int_equal(r->result, KP_UPSTREAM_OK);
    assert_int_equal(r->status, 429);
    assert_string_equal(rec_header(r, "retry-after"), "7");
    assert_string_equal(rec_header(r, "x-padded"), "spaced out");
    assert_string_equal(r->body.data, "{\"error\":\"slow down\"}");
}

/* A GET of @url fails to connect (KP_UPSTREAM_CONNECT): no head, and no
 * request reached the test server. */
static void expect_no_connection(struct fx *f, const char *url)
{
    struct rec *r = rec_new(f);
    struct kp_upstream_request req = {0};
    assert_int_equal(start_url(r, url, &req), KP_OK);
    assert_true(wait_until(f, &r->dones, 1));
    assert_int_equal(r->result, KP_UPSTREAM_CONNECT);
    assert_int_equal(r->heads, 0);
    assert_int_equal(f->requests, 0);
}

/* TLS is verified: a provider whose certificate no trusted CA signed is a
 * failed connection, and no request reaches it. */
static void test_untrusted_certificate_refused(void **state)
{
    struct fx *f = *state;
    char url[96];
    snprintf(url, sizeof(url), "%s/n/1", f->base);
    expect_no_connection(f, url);
}

/* A redirect is the provider's answer, never followed: a base URL from
 * the registry cannot be turned into another host by the provider. */
static void test_redirect_not_followed(void **state)
{
    struct fx *f = *state;
    struct rec *r = call_path(f, "/redirect");
    assert_true(wait_until(f, &r->dones, 1));
    assert_int_equal(r->result, KP_UPSTREAM_OK);
    assert_int_equal(r->status, 302);
    assert_string_equal(rec_header(r, "location"), "/n/followed");
    assert_string_equal(r->body.data, "moved");
    assert_int_equal(f->requests, 1);
}

/* A streamed body arrives in several on_body calls, in order, as the
 * server writes its chunks. */
static void test_streaming(void **state)
{
    struct fx *f = *state;
    struct rec *r = call_path(f, "/stream?n=5&ms=20");
    assert_true(wait_until(f, &r->dones, 1));
    assert_int_equal(r->result, KP_UPSTREAM_OK);
    assert_string_equal(rec_header(r, "content-type"), "text/event-stream");
    assert_string_equal(r->body.data, "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\ndata: 4\n\n");
    assert_true(r->bodies > 1);
    assert_int_equal(r->order[0], 'H');
    for (unsigned i = 1; i + 1 < r->n_order; i++) /* each read announced */
        assert_true(r->order[i] == 'B' || (r->order[i] == 'R' && r->order[i + 1] == 'B'));
    assert_int_equal(r->order[r->n_order - 1], 'D');
    assert_true(r->reads >= 1);
}

/* Bytes curl reads again within one pass are announced (on_read) before
 * they are handed over: 16 KiB written at once and read 2 KiB at a time
 * (a stream's receive buffer) take several reads in curl's first pass. */
static void test_on_read_between_reads(void **state)
{
    struct fx *f = *state;
    struct rec *r = rec_new(f);
    struct kp_upstream_request req;
    memset(&req, 0, sizeof(req));
    req.stream = true;
    assert_int_equal(start_path(r, "/big?n=4", &req), KP_OK);
    assert_true(wait_until(f, &r->dones, 1));
    assert_int_equal(r->result, KP_UPSTREAM_OK);
    assert_int_equal(r->body.len, 4 * BIG_CHUNK);
    for (size_t k = 0; k < r->body.len; k++)
        assert_int_equal((unsigned char)r->body.data[k], big_byte(k));
    assert_true(r->reads >= 2);
    assert_int_equal(r->order[0], 'H');
    for (unsigned i = 1; i + 1 < r->n_order; i++)
        assert_true(r->order[i] == 'B' || (r->order[i] == 'R' && r->order[i + 1] == 'B'));
    assert_int_equal(r->order[r->n_order - 1], 'D');
}

/* kpmock's streamed chat completion comes through whole (SSE to [DONE]). */
static void test_mock_chat_stream(void **state)
{
    struct fx *f = *state;
    struct rec *r = rec_new(f);
    struct kp_http_header h[2] = {KP_HTTP_HEADER("Authorization", "Bearer sk-test-upstream"),
                                  KP_HTTP_HEADER("Content-Type", "application/json")};
    static const char body[] = "{\"model\":\"gpt-4o-mini\",\"stream\":true,"
                               "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    struct kp_upstream_request req = {.method = "POST", .headers = h, .n_headers = 2};
    req.body = body;
    req.body_len = sizeof(body) - 1;
    assert_int_equal(start_path(r, "/v1/chat/completions", &req), KP_OK);
    assert_true(wait_until(f, &r->dones, 1));
    assert_int_equal(r->result, KP_UPSTREAM_OK);
    assert_int_equal(r->status, 200);
    assert_non_null(strstr(rec_header(r, "content-type"), "text/event-stream"));
    assert_non_null(strstr(r->body.data, "mock15"));
    assert_non_null(strstr(r->body.data, "data: [DONE]\n\n"));
}

/* A refused connection is CONNECT, with no head. */
static void test_connect_refused(void **state)
{
    struct fx *f = *state;
    struct rec *r = rec_new(f);
    char url[64];
    struct kp_upstream_request req = {.allow_http = true};
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/x?key=SECRET", dead_port());
    assert_int_equal(start_url(r, url, &req), KP_OK);
    assert_true(wait_until(f, &r->dones, 1));
    assert_int_equal(r->result, KP_UPSTREAM_CONNECT);
    assert_int_equal(r->heads, 0);
    assert_null(strstr(r->detail, "SECRET"));
    assert_null(strstr(r->detail, "key="));
}

/* A listener whose accept queue is full drops SYNs: the connect times out
 * (TIMEOUT_CONNECT, not TOTAL or FIRST_BYTE). */
static void test_connect_timeout(void **state)
{
    struct fx *f = *state;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    int lfd = socket(AF_INET, SOCK_STREAM, 0), fill[4];
    assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(lfd, 0), 0);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&sa, &len), 0);
    for (int i = 0; i < 4; i++) { /* fill the queue; the later ones hang */
        fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        connect(fill[i], (struct sockaddr *)&sa, sizeof(sa));
    }
    struct rec *r = rec_new(f);
    char url[64];
    struct kp_upstream_request req = {.allow_http = true, .connect_timeout_ms = 200};
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", ntohs(sa.sin_port));
    assert_int_equal(start_url(r, url, &req), KP_OK);
    assert_true(wait_until(f, &r->dones, 1));
    assert_int_equal(r->result, KP_UPSTREAM_TIMEOUT_CONNECT);
    for (int i = 0; i < 4; i++)
        close(fill[i]);
    close(lfd);
}

/* No response head within first_byte_timeout_ms: FIRST_BYTE, and the server
 * sees the exchange aborted. */
static void test_first_byte_timeout(void **state)
{
    struct fx *f = *state;
    struct rec *r = rec_new(f);
    struct kp_upstream_request req = {.first_byte_timeout_ms = 150};
    assert_int_equal(start_path(r, "/hang", &req), KP_OK);
    assert_true(wait_until(f, &r->dones, 1));
    assert_int_equal(r->result, KP_UPSTREAM_TIMEOUT_FIRST_BYTE);
    assert_int_equal(r->heads, 0);
    assert_true(wait_until(f, &f->aborts, 1));
}

/* A head and one chunk, then silence: IDLE after idle_timeout_ms. */
static void test_idle_timeout(void **state)
{
    struct fx *f = *state;
    struct rec *r = rec_new(f);
    struct kp_upstream_request req = {.idle_timeout_ms = 150};
    assert_int_equal(start_path(r, "/stall", &req), KP_OK);
    assert_true(wait_until(f, &r->dones, 1));
    assert_int_equal(r->result, KP_UPSTREAM_TIMEOUT_IDLE);
    assert_int_equal(r->heads, 1);
    assert_string_equal(r->body.data, "data: 0\n\n");
    assert_true(wait_until(f, &f->aborts, 1));
}

/* A stream that never ends but never idles: TOTAL. */
static void test_total_timeout(void **state)
{
    struct fx *f = *state;
    struct rec *r = rec_new(f);
    struct kp_upstream_request req = {.idle_timeout_ms = 5000, .total_timeout_ms = 300};
    assert_int_equal(start_path(r, "/stream?n=0&ms=20", &req), KP_OK);
    assert_true(wait_until(f, &r->dones, 1));
    assert_int_equal(r->result, KP_UPSTREAM_TIMEOUT_TOTAL);
    assert_true(r->bodies >= 2);
    assert_true(wait_until(f, &f->aborts, 1));
}

static void reset_soon_cb(uv_timer_t *t)
{
    srv_reset_all(t->data);
    uv_close((uv_handle_t *)t, NULL);
}

/* A TCP reset after the head and some body: PROTOCOL. */
static void test_reset_mid_body(void **state)
{
    struct fx *f = *state;
    struct rec *r = call_path(f, "/stream?n=0&ms=100000");
    uv_timer_t reset;
    assert_true(wait_until(f, &r->bodies, 1));
    uv_timer_init(&f->loop, &reset);
    reset.data = f;
    uv_timer_start(&reset, reset_soon_cb, 0, 0);
    assert_true(wait_until(f, &r->dones, 1));
    assert_int_equal(r->result, KP_UPSTREAM_PROTOCOL);
    assert_int_equal(r->heads, 1);
    assert_true(r->detail[0] != '\0');
}

/* Cancel mid-stream from outside any callback: no callback afterwards and
 * the server sees its exchange aborted (the connection was closed). */
static void test_cancel_mid_stream(void **state)
{
    struct fx *f = *state;
    struct rec *r = call_path(f, "/stream?n=0&ms=10");
    assert_true(wait_until(f, &r->bodies, 3));
    kp_upstream_cancel(r->call);
    r->cancelled = true;
    int bodies = r->bodies;
    assert_int_equal(kp_upstream_active(f->up), 0);
    assert_true(wait_until(f, &f->aborts, 1));
    run_for(f, 50);
    assert_int_equal(r->bodies, bodies);
    assert_int_equal(r->dones, 0);
    assert_int_equal(r->after_cancel, 0);
}

/* Cancel from inside on_body: the same, and the connection is not reused
 * (the next call opens a new one). */
static void test_cancel_in_body(void **state)
{
    struct fx *f = *state;
    long before = accepted();
    struct rec *r = rec_new(f);
    r->cancel_at_body = 2;
    struct kp_upstream_request req = {0};
    assert_int_equal(start_path(r, "/stream?n=0&ms=10", &req), KP_OK);
    assert_true(wait_until(f, &f->aborts, 1));
    run_for(f, 50);
    assert_int_equal(r->bodies, 2);
    assert_int_equal(r->dones, 0);
    assert_int_equal(r->after_cancel, 0);
    struct rec *r2 = call_path(f, "/n/7");
    assert_true(wait_until(f, &r2->dones, 1));
    assert_string_equal(r2->body.data, "7");
    assert_int_equal(accepted() - before, 2);
}

/* Cancel from inside on_head: no body, no done; the server sees the abort. */
static void test_cancel_in_head(void **state)
{
    struct fx *f = *state;
    struct rec *r = rec_new(f);
    r->cancel_in_head = true;
    struct kp_upstream_request req = {0};
    assert_int_equal(start_path(r, "/stream?n=0&ms=10", &req), KP_OK);
    assert_true(wait_until(f, &f->aborts, 1));
    run_for(f, 50);
    assert_int_equal(r->heads, 1);
    assert_int_equal(r->bodies, 0);
    assert_int_equal(r->dones, 0);
    assert_int_equal(r->after_cancel, 0);
    assert_int_equal(kp_upstream_active(f->up), 0);
}

/* Backpressure: every on_body pauses and a timer resumes it; one pause is
 * held longer than the idle timeout (paused time is not idle time). 1 MiB
 * arrives exactly once, in order, although curl hands paused bytes again
 * on resume. */
static void test_pause_resume(void **state)
{
    struct fx *f = *state;
    struct rec *r = rec_new(f);
    r->pause_each = true;
    r->hold_at_body = 3;
    r->hold_ms = 400;
    struct kp_upstream_request req = {.idle_timeout_ms = 150};
    assert_int_equal(start_path(r, "/big?n=256", &req), KP_OK);
    assert_true(wait_until(f, &r->dones, 1));
    assert_int_equal(r->result, KP_UPSTREAM_OK);
    assert_int_equal(r->body.len, 256 * BIG_CHUNK);
    for (size_t k = 0; k < r->body.len; k++)
        if ((unsigned char)r->body.data[k] != big_byte(k))
            fail_msg("byte %zu differs", k);
    assert_true(r->pauses > 10);
    assert_int_equal(r->pauses, r->bodies);
}

/* A transfer cancelled while paused, with bytes curl holds back for it,
 * leaves nothing in its easy handle: the next call, which gets that handle,
 * receives its own answer only. */
static void test_cancel_paused_then_reuse(void **state)
{
    struct fx *f = *state;
    struct rec *a = rec_new(f);
    a->hold_at_body = 1;
    a->hold_ms = 60000; /* resumed never: cancelled first */
    struct kp_upstream_request req;
    memset(&req, 0, sizeof(req));
    assert_int_equal(start_path(a, "/big?n=64", &req), KP_OK);
    assert_true(wait_until(f, &a->pauses, 1));
    uv_timer_stop(&a->resume);
    kp_upstream_cancel(a->call);
    a->cancelled = true;
    struct rec *b = rec_new(f);
    static const char body[] = "fresh";
    struct kp_upstream_request rb = {.method = "POST", .body = body, .body_len = 5};
    assert_int_equal(start_path(b, "/echo", &rb), KP_OK);
    assert_true(wait_until(f, &b->dones, 1));
    assert_int_equal(b->result, KP_UPSTREAM_OK);
    assert_int_equal(b->body.len, 5);
    assert_memory_equal(b->body.data, body, 5);
    assert_int_equal(a->after_cancel, 0);
    assert_int_equal(a->dones, 0);
}

/* Scheme rules and request validation fail at start with KP_EINVAL, no
 * callback, and never echo the URL's query in the message. */
static void test_bad_requests(void **state)
{
    struct fx *f = *state;
    struct rec *r = rec_new(f);
    struct kp_upstream_callbacks cb = rec_cbs;
    struct kp_upstream_call *call = NULL;
    char errmsg[256], url[128];
    cb.arg = r;
    struct kp_upstream_request req = {.method = "GET"};

    snprintf(url, sizeof(url), "%s/n/1?key=SECRET", f->base);
    req.url = url; /* http without allow_http */
    assert_int_equal(kp_upstream_start(f->up, &req, &cb, &call, errmsg, sizeof(errmsg)), KP_EINVAL);
    assert_null(strstr(errmsg, "SECRET"));
    req.url = "ftp://127.0.0.1/x";
    assert_int_equal(kp_upstream_start(f->up, &req, &cb, &call, errmsg, sizeof(errmsg)), KP_EINVAL);
    req.allow_http = true;
    req.url = "http://127.0.0.1/a b?key=SECRET";
    assert_int_equal(kp_upstream_start(f->up, &req, &cb, &call, errmsg, sizeof(errmsg)), KP_EINVAL);
    assert_null(strstr(errmsg, "SECRET"));
    req.url = "http://127.0.0.1/a\r\nX-Evil: 1";
    assert_int_equal(kp_upstream_start(f->up, &req, &cb, &call, errmsg, sizeof(errmsg)), KP_EINVAL);
    req.url = "http://user:pw@127.0.0.1/";
    assert_int_equal(kp_upstream_start(f->up, &req, &cb, &call, errmsg, sizeof(errmsg)), KP_EINVAL);
    req.url = "http:///nohost";
    assert_int_equal(kp_upstream_start(f->up, &req, &cb, &call, errmsg, sizeof(errmsg)), KP_EINVAL);

    req.url = url;
    struct kp_http_header h = KP_HTTP_HEADER("X-Ok", "fine\r\nX-Evil: 1");
    req.headers = &h;
    req.n_headers = 1;
    assert_int_equal(kp_upstream_start(f->up, &req, &cb, &call, errmsg, sizeof(errmsg)), KP_EINVAL);
    assert_null(strstr(errmsg, "Evil"));
    h = KP_HTTP_HEADER("X-Bad\r\nName", "v");
    assert_int_equal(kp_upstream_start(f->up, &req, &cb, &call, errmsg, sizeof(errmsg)), KP_EINVAL);
    h = KP_HTTP_HEADER("Content-Length", "5");
    assert_int_equal(kp_upstream_start(f->up, &req, &cb, &call, errmsg, sizeof(errmsg)), KP_EINVAL);
    req.n_headers = 0;
    req.body = "x";
    req.body_len = 1; /* GET with a body */
    assert_int_equal(kp_upstream_start(f->up, &req, &cb, &call, errmsg, sizeof(errmsg)), KP_EINVAL);
    req.method = "PO ST";
    assert_int_equal(kp_upstream_start(f->up, &req, &cb, &call, errmsg, sizeof(errmsg)), KP_EINVAL);
    assert_null(call);
    assert_int_equal(kp_upstream_active(f->up), 0);
    run_for(f, 20);
    assert_int_equal(r->heads + r->bodies + r->dones, 0);
    assert_int_equal(f->requests, 0);
}

/* https is verified TLS: an https URL to a plain-HTTP port fails the
 * handshake (CONNECT). */
static void test_https_to_plain(void **state)
{
    struct fx *f = *state;
    char url[64];
    snprintf(url, sizeof(url), "https://127.0.0.1:%d/n/1", f->port);
    expect_no_connection(f, url);
}

/* Two sequential calls to one server use one TCP connection. */
static void test_connection_reuse(void **state)
{
    struct fx *f = *state;
    long before = accepted();
    struct rec *a = call_path(f, "/n/1");
    assert_true(wait_until(f, &a->dones, 1));
    struct rec *b = call_path(f, "/n/2");
    assert_true(wait_until(f, &b->dones, 1));
    assert_string_equal(a->body.data, "1");
    assert_string_equal(b->body.data, "2");
    assert_int_equal(accepted() - before, 1);
    assert_int_equal(kp_http_server_connections(f->srv), 1);
}

/* 200 calls at once all complete, each with its own answer. */
static void test_concurrent_200(void **state)
{
    struct fx *f = *state;
    struct rec *r[200];
    int done = 0;
    for (int i = 0; i < 200; i++) {
        char path[32];
        snprintf(path, sizeof(path), "/n/%d", i);
        r[i] = call_path(f, path);
    }
    assert_int_equal(kp_upstream_active(f->up), 200);
    f->guard_fired = false;
    uv_timer_start(&f->guard, guard_fired, DEADLINE_MS, 0);
    while (done < 200 && !f->guard_fired) {
        uv_run(&f->loop, UV_RUN_ONCE);
        done = 0;
        for (int i = 0; i < 200; i++)
            done += r[i]->dones;
    }
    uv_timer_stop(&f->guard);
    assert_int_equal(done, 200);
    for (int i = 0; i < 200; i++) {
        char want[16];
        snprintf(want, sizeof(want), "%d", i);
        assert_int_equal(r[i]->result, KP_UPSTREAM_OK);
        assert_string_equal(r[i]->body.data, want);
    }
    assert_int_equal(kp_upstream_active(f->up), 0);
}

/* Each call reaches its own URL, whether its parsed form is kept (a URL
 * seen before, or one of more URLs than are kept, pushing out the least
 * recently used), or the call's own (a URL with a query): one after another
 * on reused handles, and many held at once (test_concurrent_200). */
static void test_each_call_reaches_its_url(void **state)
{
    struct fx *f = *state;
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < 40; i++) {
            char path[48];
            if (i % 5 == 4)
                snprintf(path, sizeof(path), "/t/%d?q=%d", i, round);
            else
                snprintf(path, sizeof(path), "/t/%d", i % 24); /* some twice a round */
            struct rec *r = call_path(f, path);
            assert_true(wait_until(f, &r->dones, 1));
            assert_int_equal(r->result, KP_UPSTREAM_OK);
            assert_string_equal(r->body.data, path);
        }
    }
    /* A bad URL is refused, and the kept ones still serve. */
    struct rec *bad = rec_new(f);
    struct kp_upstream_request req = {0};
    assert_int_equal(start_path(bad, "/t/has space", &req), KP_EINVAL);
    struct rec *r = call_path(f, "/t/1");
    assert_true(wait_until(f, &r->dones, 1));
    assert_string_equal(r->body.data, "/t/1");
    assert_int_equal(kp_upstream_active(f->up), 0);
}

/* A call started from inside another call's on_head (inside curl) is added
 * once curl returns, and both complete. */
static void test_start_in_callback(void **state)
{
    struct fx *f = *state;
    struct rec *b = rec_new(f);
    struct rec *a = rec_new(f);
    a->start_in_head = b;
    a->start_path = "/n/2";
    struct kp_upstream_request req = {0};
    assert_int_equal(start_path(a, "/n/1", &req), KP_OK);
    assert_true(wait_until(f, &a->dones, 1));
    assert_true(wait_until(f, &b->dones, 1));
    assert_int_equal(a->result, KP_UPSTREAM_OK);
    assert_int_equal(b->result, KP_UPSTREAM_OK);
    assert_string_equal(b->body.data, "2");
}

/* An interim 103 is skipped; folded and padded headers are joined and
 * trimmed; names are lower-cased. */
static void test_interim_and_folded(void **state)
{
    struct fx *f = *state;
    raw_start(f,
              "HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n"
              "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Mixed-CASE:   v1  \r\n"
              "X-Folded: a\r\n\tb\r\n\r\nok",
              false);
    struct rec *r = rec_new(f);
    char url[64];
    struct kp_upstream_request req = {.allow_http = true};
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", f->raw.port);
    assert_int_equal(start_url(r, url, &req), KP_OK);
    assert_true(wait_until(f, &r->dones, 1));
    assert_int_equal(r->result, KP_UPSTREAM_OK);
    assert_int_equal(r->heads, 1);
    assert_int_equal(r->status, 200);
    assert_string_equal(rec_header(r, "link"), "(missing)");
    assert_string_equal(rec_header(r, "x-mixed-case"), "v1");
    assert_string_equal(rec_header(r, "x-folded"), "a b");
    assert_string_equal(r->body.data, "ok");
}

/* A body cut short by the server closing: PROTOCOL. */
static void test_truncated_body(void **state)
{
    struct fx *f = *state;
    raw_start(f, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", true);
    struct rec *r = rec_new(f);
    char url[64];
    struct kp_upstream_request req = {.allow_http = true};
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", f->raw.port);
    assert_int_equal(start_url(r, url, &req), KP_OK);
    assert_true(wait_until(f, &r->dones, 1));
    assert_int_equal(r->result, KP_UPSTREAM_PROTOCOL);
    assert_int_equal(r->heads, 1);
}

/* A provider closes a kept-alive connection while it idles between calls:
 * the connection's parked poll handle sees the close and stops watching
 * (the loop does not spin on the readable socket), and the next call opens
 * a new connection and succeeds. */
static void test_idle_connection_closed_by_provider(void **state)
{
    struct fx *f = *state;
    raw_start(f, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", true);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", f->raw.port);
    struct kp_upstream_request req = {.allow_http = true};
    struct rec *a = rec_new(f);
    assert_int_equal(start_url(a, url, &req), KP_OK);
    assert_true(wait_until(f, &a->dones, 1));
    assert_int_equal(a->result, KP_UPSTREAM_OK);
    assert_string_equal(a->body.data, "ok");
    assert_true(run_for(f, 200) < 50);
    assert_false(f->raw.conn_open);
    f->raw.replied = false;
    f->raw.in_len = 0;
    struct rec *b = rec_new(f);
    assert_int_equal(start_url(b, url, &req), KP_OK);
    assert_true(wait_until(f, &b->dones, 1));
    assert_int_equal(b->result, KP_UPSTREAM_OK);
    assert_string_equal(b->body.data, "ok");
}

/* Many calls one after another share one connection (its poll handle is
 * parked between them, not made again). */
static void test_connection_reuse_many(void **state)
{
    struct fx *f = *state;
    long before = accepted();
    for (int i = 0; i < 50; i++) {
        char path[32];
        snprintf(path, sizeof(path), "/n/%d", i);
        struct rec *r = call_path(f, path);
        assert_true(wait_until(f, &r->dones, 1));
        assert_int_equal(atoi(r->body.data), i);
    }
    assert_int_equal(accepted() - before, 1);
}

/* Closing with calls in flight (streaming, hanging, paused, connecting)
 * runs no callback and frees everything; the server sees each abort. */
static void test_close_in_flight(void **state)
{
    struct fx *f = *state;
    struct rec *s = call_path(f, "/stream?n=0&ms=10");
    struct rec *h = call_path(f, "/hang");
    struct rec *p = rec_new(f);
    p->hold_at_body = 1;
    p->hold_ms = 100000;
    struct kp_upstream_request req = {0};
    assert_int_equal(start_path(p, "/stream?n=0&ms=10", &req), KP_OK);
    assert_true(wait_until(f, &s->bodies, 2));
    assert_true(wait_until(f, &p->pauses, 1));
    assert_true(wait_until(f, &f->requests, 3));
    /* One more that curl has not even begun. */
    struct rec *c = rec_new(f);
    char url[64];
    struct kp_upstream_request creq = {.allow_http = true};
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", dead_port());
    assert_int_equal(start_url(c, url, &creq), KP_OK);
    s->cancelled = h->cancelled = p->cancelled = c->cancelled = true;
    kp_upstream_close(f->up, up_closed, f);
    f->up = NULL;
    assert_false(f->up_closed); /* handles close on the loop */
    int closed = 0;
    f->guard_fired = false;
    uv_timer_start(&f->guard, guard_fired, DEADLINE_MS, 0);
    while (!(f->up_closed && f->aborts >= 3) && !f->guard_fired)
        uv_run(&f->loop, UV_RUN_ONCE);
    uv_timer_stop(&f->guard);
    closed = f->up_closed;
    assert_int_equal(closed, 1);
    assert_int_equal(f->aborts, 3);
    assert_int_equal(s->after_cancel + h->after_cancel + p->after_cancel + c->after_cancel, 0);
    assert_int_equal(s->dones + h->dones + p->dones + c->dones, 0);
}

/* Closing from inside on_body of one call cancels it and the others, with
 * no callback afterwards. */
static void test_close_in_callback(void **state)
{
    struct fx *f = *state;
    struct rec *h = call_path(f, "/hang");
    assert_true(wait_until(f, &f->requests, 1));
    struct rec *s = rec_new(f);
    s->close_in_body = true;
    struct kp_upstream_request req = {0};
    assert_int_equal(start_path(s, "/stream?n=0&ms=10", &req), KP_OK);
    h->cancelled = true;
    int up_closed = 0;
    f->guard_fired = false;
    uv_timer_start(&f->guard, guard_fired, DEADLINE_MS, 0);
    while (!(f->up_closed && f->aborts >= 2) && !f->guard_fired)
        uv_run(&f->loop, UV_RUN_ONCE);
    uv_timer_stop(&f->guard);
    up_closed = f->up_closed;
    assert_int_equal(up_closed, 1);
    assert_int_equal(s->bodies, 1);
    assert_int_equal(s->after_cancel + h->after_cancel, 0);
    assert_int_equal(s->dones + h->dones, 0);
}

/* Closing from inside on_done cancels the other calls silently. */
static void test_close_in_done(void **state)
{
    struct fx *f = *state;
    struct rec *h = call_path(f, "/hang");
    assert_true(wait_until(f, &f->requests, 1));
    struct rec *a = rec_new(f);
    a->close_in_done = true;
    struct kp_upstream_request req = {0};
    assert_int_equal(start_path(a, "/n/1", &req), KP_OK);
    h->cancelled = true;
    assert_true(wait_until(f, &a->dones, 1));
    assert_int_equal(a->result, KP_UPSTREAM_OK);
    assert_true(wait_until(f, &f->aborts, 1));
    int closed = 0;
    f->guard_fired = false;
    uv_timer_start(&f->guard, guard_fired, DEADLINE_MS, 0);
    while (!f->up_closed && !f->guard_fired)
        uv_run(&f->loop, UV_RUN_ONCE);
    uv_timer_stop(&f->guard);
    closed = f->up_closed;
    assert_int_equal(closed, 1);
    assert_int_equal(h->dones + h->after_cancel, 0);
}

/* A paused call resumed from inside another call's on_body (inside curl)
 * resumes once curl returns, and its body arrives whole and in order. */
static void test_resume_from_other_callback(void **state)
{
    struct fx *f = *state;
    struct rec *a = rec_new(f);
    a->hold_at_body = 1;
    a->hold_ms = 100000; /* only b resumes it */
    struct kp_upstream_request req = {0};
    assert_int_equal(start_path(a, "/big?n=64", &req), KP_OK);
    assert_true(wait_until(f, &a->pauses, 1));
    struct rec *b = rec_new(f);
    b->resume_other = a;
    assert_int_equal(start_path(b, "/stream?n=3&ms=10", &req), KP_OK);
    assert_true(wait_until(f, &a->dones, 1));
    assert_true(wait_until(f, &b->dones, 1));
    assert_int_equal(a->result, KP_UPSTREAM_OK);
    assert_int_equal(b->result, KP_UPSTREAM_OK);
    assert_int_equal(a->body.len, 64 * BIG_CHUNK);
    for (size_t k = 0; k < a->body.len; k++)
        if ((unsigned char)a->body.data[k] != big_byte(k))
            fail_msg("byte %zu differs", k);
}

/* Out of memory at each allocation of kp_upstream_new and
 * kp_upstream_start fails cleanly (KP_ENOMEM, nothing leaked, no
 * callback); the next call works. */
static void test_alloc_failures(void **state)
{
    struct fx *f = *state;
    char errmsg[256];
    struct kp_upstream *u = NULL;
    kp_alloc_fail_after(0);
    assert_int_equal(kp_upstream_new(&u, &f->loop, errmsg, sizeof(errmsg)), KP_ENOMEM);
    kp_alloc_fail_reset();
    struct rec *r = rec_new(f);
    struct kp_upstream_callbacks cb = rec_cbs;
    cb.arg = r;
    char url[128];
    snprintf(url, sizeof(url), "%s/n/5", f->base);
    struct kp_upstream_request req = {.method = "GET", .url = url, .allow_http = true};
    int rc = KP_ENOMEM;
    long i;
    for (i = 0; i < 10 && rc == KP_ENOMEM; i++) {
        kp_alloc_fail_after(i);
        rc = kp_upstream_start(f->up, &req, &cb, &r->call, errmsg, sizeof(errmsg));
        kp_alloc_fail_reset();
    }
    assert_int_equal(rc, KP_OK);
    assert_true(i > 1);
    assert_true(wait_until(f, &r->dones, 1));
    assert_int_equal(r->dones, 1);
    assert_string_equal(r->body.data, "5");
}

/* What a call costs once warm: allocations of ours (kp_upstream_start),
 * libcurl's allocations and wall time per sequential keep-alive call. */
static void test_per_call_cost(void **state)
{
    struct fx *f = *state;
    enum { WARM = 3, N = 300 };
    long before = accepted();
    unsigned long ours = 0, curls = 0, curls_start = 0;
    uint64_t t0 = 0;
    char url[128];
    struct kp_http_header h[2] = {KP_HTTP_HEADER("Authorization", "Bearer sk-cost"),
                                  KP_HTTP_HEADER("Content-Type", "application/json")};
    snprintf(url, sizeof(url), "%s/echo", f->base);
    for (int i = 0; i < WARM + N; i++) {
        if (i == WARM) {
            t0 = kp_now_mono_us();
            curls = atomic_load(&curl_allocs);
        }
        struct rec *r = rec_new(f);
        struct kp_upstream_callbacks cb = rec_cbs;
        cb.arg = r;
        struct kp_upstream_request req = {.method = "POST", .url = url, .allow_http = true};
        req.headers = h;
        req.n_headers = 2;
        req.body = "{\"x\":1}";
        req.body_len = 7;
        char errmsg[256];
        unsigned long a0 = kp_alloc_count(), c0 = atomic_load(&curl_allocs);
        assert_int_equal(kp_upstream_start(f->up, &req, &cb, &r->call, errmsg, sizeof(errmsg)),
                         KP_OK);
        if (i >= WARM) {
            ours += kp_alloc_count() - a0;
            curls_start += atomic_load(&curl_allocs) - c0;
        }
        assert_true(wait_until(f, &r->dones, 1));
        assert_int_equal(r->result, KP_UPSTREAM_OK);
    }
    uint64_t us = kp_now_mono_us() - t0;
    curls = atomic_load(&curl_allocs) - curls;
    print_message("per call (warm, keep-alive, loopback): %.2f allocations of ours in "
                  "kp_upstream_start, %.1f by libcurl (%.1f of them in start), %.1f us\n",
                  (double)ours / N, (double)curls / N, (double)curls_start / N, (double)us / N);
    assert_int_equal(ours, N); /* one: the call itself */
    assert_int_equal(accepted() - before, 1);
}

int main(void)
{
    /* What keyplane's main does once, before any thread starts; here with
     * counting allocators to report libcurl's share of a call. */
    if (curl_global_init_mem(CURL_GLOBAL_DEFAULT, cm_malloc, cm_free, cm_realloc, cm_strdup,
                             cm_calloc) != CURLE_OK)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_big_body_without_expect, setup, teardown),
        cmocka_unit_test_setup_teardown(test_plain_200, setup, teardown),
        cmocka_unit_test_setup_teardown(test_non_200, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redirect_not_followed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_untrusted_certificate_refused, setup_tls, teardown),
        cmocka_unit_test_setup_teardown(test_reused_handle_forgets_the_last_call, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_paused_then_reuse, setup, teardown),
        cmocka_unit_test_setup_teardown(test_streaming, setup, teardown),
        cmocka_unit_test_setup_teardown(test_on_read_between_reads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mock_chat_stream, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connect_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connect_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_first_byte_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idle_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_total_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reset_mid_body, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_mid_stream, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_in_body, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_in_head, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pause_resume, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_requests, setup, teardown),
        cmocka_unit_test_setup_teardown(test_https_to_plain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connection_reuse, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_200, setup, teardown),
        cmocka_unit_test_setup_teardown(test_each_call_reaches_its_url, setup, teardown),
        cmocka_unit_test_setup_teardown(test_start_in_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_interim_and_folded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_truncated_body, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idle_connection_closed_by_provider, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connection_reuse_many, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_in_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_in_done, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resume_from_other_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_alloc_failures, setup, teardown),
        cmocka_unit_test_setup_teardown(test_per_call_cost, setup, teardown),
    };
    int failed = cmocka_run_group_tests_name("upstream", tests, NULL, NULL);
    curl_global_cleanup();
    return failed;
}

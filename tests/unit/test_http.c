/* Tests of the HTTP/1.1 server (node/core/http_server.c).
 *
 * A real kp_http_server runs on its own thread and loop on 127.0.0.1; each
 * test talks to it with plain blocking sockets and raw bytes, so what is
 * checked is exactly what a client sees on the wire. Waits are bounded reads
 * (poll with a deadline), never sleeps.
 *
 * Every protocol test runs twice: over plain TCP, and over TLS (node/core/
 * tls.c) with a self-signed certificate made at setup and a blocking
 * OpenSSL client, so limits, pipelining, streams, backpressure, timeouts and
 * aborts are shown to behave the same through the memory BIOs. A few tests
 * are TLS's own: plain HTTP on a TLS port, the handshake deadline, reload. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "core/core.h"
#include "test_cert.h"

#define DEADLINE_MS 10000

struct server_thread {
    uv_thread_t thread;
    uv_loop_t loop;
    uv_async_t stop;
    uv_sem_t ready;
    struct kp_http_server *srv;
    struct kp_http_limits limits;
    int port;
    atomic_int aborts;
    atomic_long stream_bytes; /* produced by /stream */
    atomic_long max_queued;   /* most bytes ever queued for the client */
    atomic_int pauses;        /* times the producer found the stream not writable */
    atomic_int stream_done;
    atomic_bool quiesce; /* the server's drain-is-coming flag */
};

static struct server_thread st;

/* TLS mode: the server's context, the client's, and each client socket's
 * SSL object (indexed by fd). */
static struct {
    bool on;
    char dir[64];
    char crt[128], key[128];
    struct kp_tls_server *srv;
    SSL_CTX *client;
    SSL *ssl[1024];
} tls;

/* --- handlers (server thread) -------------------------------------------- */

struct slow {
    uv_timer_t timer;
    struct kp_http_exchange *ex;
};

static void slow_closed(uv_handle_t *h)
{
    kp_free(h->data);
}

static void slow_fire(uv_timer_t *t)
{
    struct slow *s = t->data;
    kp_http_respond(s->ex, 200, NULL, 0, "slow", 4);
    uv_close((uv_handle_t *)t, slow_closed);
}

#define STREAM_TOTAL (32L * 1024 * 1024)

/* A stream that produces 16 KiB chunks while the client keeps up, pausing on
 * backpressure, until STREAM_TOTAL bytes are written. */
struct producer {
    struct kp_http_exchange *ex;
    long written;
    uv_idle_t idle;
};

static void producer_closed(uv_handle_t *h)
{
    kp_free(h->data);
}

static void producer_finish(struct producer *p, bool aborted)
{
    uv_idle_stop(&p->idle);
    if (aborted)
        kp_http_reset(p->ex);
    else
        kp_http_stream_end(p->ex);
    atomic_store(&st.stream_done, aborted ? 2 : 1);
    uv_close((uv_handle_t *)&p->idle, producer_closed);
}

static void producer_run(uv_idle_t *h)
{
    struct producer *p = h->data;
    static char chunk[16384];
    while (kp_http_stream_writable(p->ex) && p->written < STREAM_TOTAL) {
        memset(chunk, 'a' + (int)(p->written / 16384 % 26), sizeof(chunk));
        if (kp_http_stream_write(p->ex, chunk, sizeof(chunk)) != KP_OK)
            break;
        p->written += (long)sizeof(chunk);
        atomic_store(&st.stream_bytes, p->written);
        long q = (long)kp_http_queued_bytes(p->ex);
        if (q > atomic_load(&st.max_queued))
            atomic_store(&st.max_queued, q);
    }
    if (kp_http_aborted(p->ex)) {
        producer_finish(p, true);
        return;
    }
    if (p->written >= STREAM_TOTAL) {
        producer_finish(p, false);
        return;
    }
    /* Not writable: wait for the drain callback instead of spinning. */
    atomic_fetch_add(&st.pauses, 1);
    uv_idle_stop(&p->idle);
}

static void producer_drained(struct kp_http_exchange *ex, void *arg)
{
    struct producer *p = arg;
    (void)ex;
    uv_idle_start(&p->idle, producer_run);
}

static void producer_aborted(struct kp_http_exchange *ex, void *arg)
{
    struct producer *p = arg;
    (void)ex;
    atomic_fetch_add(&st.aborts, 1);
    uv_idle_start(&p->idle, producer_run); /* notices the abort and finishes */
}

static void on_request(struct kp_http_exchange *ex, const struct kp_http_request *req, void *arg)
{
    (void)arg;
    if (strcmp(req->path, "/slow") == 0) {
        struct slow *s = kp_malloc(sizeof(*s));
        s->ex = ex;
        uv_timer_init(kp_http_loop(ex), &s->timer);
        s->timer.data = s;
        uv_timer_start(&s->timer, slow_fire, 100, 0);
        return;
    }
    if (strcmp(req->path, "/stream") == 0) {
        struct producer *p = kp_calloc(1, sizeof(*p));
        p->ex = ex;
        uv_idle_init(kp_http_loop(ex), &p->idle);
        p->idle.data = p;
        kp_http_on_drain(ex, producer_drained, p);
        kp_http_on_abort(ex, producer_aborted, p);
        struct kp_http_header h = KP_HTTP_HEADER("Content-Type", "text/event-stream");
        kp_http_stream_begin(ex, 200, &h, 1);
        uv_idle_start(&p->idle, producer_run);
        return;
    }
    if (strcmp(req->path, "/sse") == 0) {
        struct kp_http_header h = KP_HTTP_HEADER("Content-Type", "text/event-stream");
        kp_http_stream_begin(ex, 200, &h, 1);
        kp_http_stream_write(ex, "data: one\n\n", 11);
        kp_http_stream_write(ex, "data: two\n\n", 11);
        kp_http_stream_end(ex);
        return;
    }
    if (strncmp(req->path, "/sse-held", 9) == 0) { /* the head waits for the first bytes */
        struct kp_http_header h = KP_HTTP_HEADER("Content-Type", "text/event-stream");
        kp_http_stream_begin_held(ex, 200, &h, 1);
        if (strcmp(req->path, "/sse-held-flush") == 0)
            kp_http_stream_flush(ex);
        if (strcmp(req->path, "/sse-held-empty") != 0)
            kp_http_stream_write(ex, "data: one\n\n", 11);
        kp_http_stream_end(ex);
        return;
    }
    if (strcmp(req->path, "/sse-end") == 0) { /* the last chunk with the end */
        struct kp_http_header h = KP_HTTP_HEADER("Content-Type", "text/event-stream");
        kp_http_stream_begin(ex, 200, &h, 1);
        kp_http_stream_write(ex, "data: one\n\n", 11);
        kp_http_stream_end_with(ex, "data: last\n\n", 12);
        return;
    }
    /* Echo: method, path, query, header count, X-Echo, body. */
    char head[512];
    const char *echo = kp_http_request_header(req, "x-echo");
    int n = snprintf(head, sizeof(head), "%s %s ?%s h=%u echo=%s body=", req->method, req->path,
                     req->query, req->n_headers, echo ? echo : "-");
    struct kp_buf b;
    kp_buf_init(&b);
    kp_buf_append(&b, head, (size_t)n);
    kp_buf_append(&b, req->body, req->body_len);
    kp_http_respond(ex, 200, NULL, 0, b.data, b.len);
    kp_buf_free(&b);
}

static void stop_cb(uv_async_t *a)
{
    kp_http_server_close(st.srv, NULL, NULL);
    uv_close((uv_handle_t *)a, NULL);
}

static void server_main(void *arg)
{
    (void)arg;
    char err[256];
    struct kp_http_server_config cfg = {.name = "test",
                                        .handler = on_request,
                                        .limits = st.limits,
                                        .tls = tls.on ? tls.srv : NULL,
                                        .quiesce = &st.quiesce};
    int rc =
        kp_http_server_start(&st.srv, &st.loop, &cfg, "127.0.0.1:0", &st.port, err, sizeof(err));
    if (rc != 0) {
        fprintf(stderr, "server: %s\n", err);
        abort();
    }
    uv_sem_post(&st.ready);
    uv_run(&st.loop, UV_RUN_DEFAULT);
}

static int server_up(void **state)
{
    (void)state;
    memset(&st, 0, sizeof(st));
    kp_log_set_level(KP_LOG_OFF);
    kp_http_limits_default(&st.limits);
    st.limits.max_body_bytes = 4096;
    st.limits.header_timeout_ms = 300;
    st.limits.body_timeout_ms = 300;
    st.limits.idle_timeout_ms = 300;
    uv_loop_init(&st.loop);
    uv_async_init(&st.loop, &st.stop, stop_cb);
    uv_sem_init(&st.ready, 0);
    uv_thread_create(&st.thread, server_main, NULL);
    uv_sem_wait(&st.ready);
    return 0;
}

static int server_down(void **state)
{
    (void)state;
    uv_async_send(&st.stop);
    uv_thread_join(&st.thread);
    /* Every handle closed: nothing leaked by the server. */
    assert_int_equal(uv_loop_close(&st.loop), 0);
    uv_sem_destroy(&st.ready);
    return 0;
}

/* The client trusts the certificate in tls.crt as it is now. */
static void client_trust_current(void)
{
    SSL_CTX_free(tls.client);
    tls.client = SSL_CTX_new(TLS_client_method());
    assert_non_null(tls.client);
    assert_int_equal(SSL_CTX_load_verify_locations(tls.client, tls.crt, NULL), 1);
    SSL_CTX_set_verify(tls.client, SSL_VERIFY_PEER, NULL);
}

static int tls_server_up(void **state)
{
    char err[512];
    memset(&tls, 0, sizeof(tls));
    strcpy(tls.dir, "/tmp/kp-test-http-tls.XXXXXX");
    assert_non_null(mkdtemp(tls.dir));
    snprintf(tls.crt, sizeof(tls.crt), "%s/s.crt", tls.dir);
    snprintf(tls.key, sizeof(tls.key), "%s/s.key", tls.dir);
    test_make_cert(tls.crt, tls.key, "first", 1);
    struct kp_tls_settings s = {tls.crt, tls.key, NULL, false};
    if (kp_tls_server_new(&tls.srv, &s, err, sizeof(err)) != KP_OK)
        fail_msg("%s", err);
    client_trust_current();
    tls.on = true;
    return server_up(state);
}

static int tls_server_down(void **state)
{
    server_down(state);
    kp_tls_server_free(tls.srv);
    SSL_CTX_free(tls.client);
    unlink(tls.crt);
    unlink(tls.key);
    rmdir(tls.dir);
    tls.on = false;
    return 0;
}

/* --- client helpers ------------------------------------------------------ */

/* A TCP connection to the server, with no TLS even in TLS mode. */
static int raw_client(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)st.port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_true(fd < 1024);
    return fd;
}

/* A connection to the server: TLS (handshake done, certificate verified)
 * in TLS mode. */
static int client(void)
{
    int fd = raw_client();
    if (!tls.on)
        return fd;
    SSL *ssl = SSL_new(tls.client);
    assert_non_null(ssl);
    SSL_set_fd(ssl, fd);
    if (SSL_connect(ssl) != 1) {
        char why[256];
        ERR_error_string_n(ERR_get_error(), why, sizeof(why));
        fail_msg("TLS handshake: %s", why);
    }
    tls.ssl[fd] = ssl;
    return fd;
}

static void client_close(int fd)
{
    SSL_free(tls.ssl[fd]);
    tls.ssl[fd] = NULL;
    close(fd);
}

static ssize_t io_send(int fd, const void *p, size_t n)
{
    if (tls.ssl[fd] == NULL)
        return send(fd, p, n, MSG_NOSIGNAL);
    int k = SSL_write(tls.ssl[fd], p, (int)n);
    return k > 0 ? k : -1;
}

/* 0 at the end of the stream, whether the server said close_notify or not. */
static ssize_t io_recv(int fd, void *p, size_t n)
{
    if (tls.ssl[fd] == NULL)
        return recv(fd, p, n, 0);
    int k = SSL_read(tls.ssl[fd], p, (int)n);
    if (k <= 0)
        ERR_clear_error();
    return k > 0 ? k : 0;
}

/* Whether a read would return now (decrypted bytes wait in OpenSSL). */
static bool io_buffered(int fd)
{
    return tls.ssl[fd] != NULL && SSL_pending(tls.ssl[fd]) > 0;
}

static void send_str(int fd, const char *s)
{
    size_t n = strlen(s);
    while (n > 0) {
        ssize_t k = io_send(fd, s, n);
        assert_true(k > 0);
        s += k;
        n -= (size_t)k;
    }
}

/* Read until @needle appears (or EOF / deadline); returns bytes read into buf. */
static size_t read_until(int fd, char *buf, size_t cap, const char *needle, bool *eof)
{
    size_t len = 0;
    *eof = false;
    buf[0] = '\0';
    while (len + 1 < cap) {
        if (needle && strstr(buf, needle))
            break;
        struct pollfd p = {fd, POLLIN, 0};
        if (!io_buffered(fd) && poll(&p, 1, DEADLINE_MS) <= 0)
            fail_msg("no answer within %d ms; have: %s", DEADLINE_MS, buf);
        ssize_t k = io_recv(fd, buf + len, cap - 1 - len);
        if (k <= 0) {
            *eof = true;
            break;
        }
        len += (size_t)k;
        buf[len] = '\0';
    }
    return len;
}

/* Read everything until the server closes. */
static size_t read_to_eof(int fd, char *buf, size_t cap)
{
    bool eof;
    size_t n = read_until(fd, buf, cap, NULL, &eof);
    assert_true(eof);
    return n;
}

/* @req on a connection of its own, and everything until the server closes
 * it into @buf. */
static void exchange(const char *req, char *buf, size_t cap)
{
    int fd = client();
    send_str(fd, req);
    read_to_eof(fd, buf, cap);
    client_close(fd);
}

static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

/* --- tests --------------------------------------------------------------- */

/* A simple GET gets a 200 with Content-Length, Date and keep-alive. */
static void test_get_keepalive(void **state)
{
    (void)state;
    char buf[8192];
    bool eof;
    int fd = client();
    send_str(fd, "GET /a?x=1 HTTP/1.1\r\nHost: t\r\nX-Echo: hi  \r\n\r\n");
    read_until(fd, buf, sizeof(buf), "body=", &eof);
    assert_non_null(strstr(buf, "HTTP/1.1 200 OK\r\n"));
    assert_non_null(strstr(buf, "Content-Length: "));
    assert_non_null(strstr(buf, "Date: "));
    assert_non_null(strstr(buf, "GET /a ?x=1 h=2 echo=hi body="));
    assert_null(strstr(buf, "Connection: close"));
    /* The same connection serves a second request. */
    send_str(fd, "GET /b HTTP/1.1\r\nHost: t\r\n\r\n");
    read_until(fd, buf, sizeof(buf), "body=", &eof);
    assert_false(eof);
    assert_non_null(strstr(buf, "GET /b"));
    client_close(fd);
}

/* Once another thread sets the quiesce flag, the very next answer on a
 * keep-alive connection says Connection: close and the server closes it;
 * new connections are still accepted and answered. */
static void test_quiesce_flag_closes_after_the_next_answer(void **state)
{
    (void)state;
    char buf[8192];
    bool eof;
    int fd = client();
    send_str(fd, "GET /a HTTP/1.1\r\nHost: t\r\n\r\n");
    read_until(fd, buf, sizeof(buf), "body=", &eof);
    assert_null(strstr(buf, "Connection: close"));
    atomic_store(&st.quiesce, true);
    send_str(fd, "GET /b HTTP/1.1\r\nHost: t\r\n\r\n");
    read_to_eof(fd, buf, sizeof(buf));
    assert_non_null(strstr(buf, "GET /b"));
    assert_non_null(strstr(buf, "Connection: close\r\n"));
    client_close(fd);
    exchange("GET /c HTTP/1.1\r\nHost: t\r\n\r\n", buf, sizeof(buf));
    assert_non_null(strstr(buf, "GET /c"));
    assert_non_null(strstr(buf, "Connection: close\r\n"));
    atomic_store(&st.quiesce, false);
}

/* Pipelined requests are answered in order even when the first is slower. */
static void test_pipelining_in_order(void **state)
{
    (void)state;
    char buf[8192];
    int fd = client();
    send_str(fd, "GET /slow HTTP/1.1\r\nHost: t\r\n\r\n"
                 "GET /fast HTTP/1.1\r\nHost: t\r\n\r\n"
                 "GET /last HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    read_to_eof(fd, buf, sizeof(buf));
    char *slow = strstr(buf, "\r\n\r\nslow");
    char *fast = strstr(buf, "GET /fast");
    char *last = strstr(buf, "GET /last");
    assert_non_null(slow);
    assert_non_null(fast);
    assert_non_null(last);
    assert_true(slow < fast && fast < last);
    assert_int_equal(count(buf, "HTTP/1.1 200"), 3);
    client_close(fd);
}

/* A chunked request body is reassembled before the handler sees it. */
static void test_chunked_request_body(void **state)
{
    (void)state;
    char buf[8192];
    int fd = client();
    send_str(fd, "POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: "
                 "close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    read_to_eof(fd, buf, sizeof(buf));
    assert_non_null(strstr(buf, "200 OK"));
    assert_non_null(strstr(buf, "body=hello world"));
    client_close(fd);
}

/* Expect: 100-continue gets an interim 100 before the body is sent. */
static void test_expect_continue(void **state)
{
    (void)state;
    char buf[8192];
    bool eof;
    int fd = client();
    send_str(fd,
             "POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n");
    read_until(fd, buf, sizeof(buf), "\r\n\r\n", &eof);
    assert_non_null(strstr(buf, "HTTP/1.1 100 Continue\r\n\r\n"));
    send_str(fd, "ping");
    read_until(fd, buf, sizeof(buf), "body=ping", &eof);
    assert_non_null(strstr(buf, "200 OK"));
    client_close(fd);
    /* Over the body limit: refused before the body, without a 100. */
    fd = client();
    send_str(fd, "POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 999999\r\nExpect: "
                 "100-continue\r\n\r\n");
    read_to_eof(fd, buf, sizeof(buf));
    assert_null(strstr(buf, "100 Continue"));
    assert_non_null(strstr(buf, "HTTP/1.1 413 "));
    client_close(fd);
}

static void expect_status_and_close(const char *request, const char *status_line)
{
    char buf[65536];
    int fd = client();
    send_str(fd, request);
    read_to_eof(fd, buf, sizeof(buf));
    if (strstr(buf, status_line) == NULL)
        fail_msg("expected %s for %.60s..., got: %.200s", status_line, request, buf);
    assert_non_null(strstr(buf, "Connection: close"));
    assert_non_null(strstr(buf, "{\"error\":"));
    /* Every refusal says which, and carries a request id. */
    assert_non_null(strstr(buf, "\r\nX-Request-Id: "));
    char code[64];
    const char *h = strstr(buf, "\r\nX-Keyplane-Error: ");
    assert_non_null(h);
    assert_int_equal(sscanf(h, "\r\nX-Keyplane-Error: %63[a-z_]", code), 1);
    char in_body[96];
    snprintf(in_body, sizeof(in_body), "\"code\":\"%s\"", code);
    assert_non_null(strstr(buf, in_body));
    /* Nothing after the error answer is parsed: exactly one answer. */
    assert_int_equal(count(buf, "HTTP/1.1 "), 1);
    client_close(fd);
}

/* A refusal after the headers were read echoes the app's request id, and
 * names the limit. */
static void test_refusal_keeps_the_request_id(void **state)
{
    (void)state;
    char buf[8192];
    exchange("POST / HTTP/1.1\r\nX-Request-Id: r-big.1\r\nContent-Length: 5000\r\n\r\n", buf,
             sizeof(buf));
    assert_non_null(strstr(buf, "HTTP/1.1 413 "));
    assert_non_null(strstr(buf, "\r\nX-Request-Id: r-big.1\r\n"));
    assert_non_null(strstr(buf, "\r\nX-Keyplane-Error: too_large\r\n"));
    exchange("GET / HTTP/1.1\r\nX-Request-Id: r-bad\r\nX-A: 1\r\n folded\r\n\r\n", buf,
             sizeof(buf));
    assert_non_null(strstr(buf, "HTTP/1.1 400 "));
    assert_non_null(strstr(buf, "\r\nX-Keyplane-Error: bad_request\r\n"));
}

/* Header block over 32 KiB and more than 100 headers get 431. */
static void test_header_limits(void **state)
{
    (void)state;
    static char req[40000];
    strcpy(req, "GET / HTTP/1.1\r\nX-Big: ");
    size_t n = strlen(req);
    memset(req + n, 'a', 33 * 1024);
    strcpy(req + n + 33 * 1024, "\r\n\r\n");
    expect_status_and_close(req, "HTTP/1.1 431 ");

    strcpy(req, "GET / HTTP/1.1\r\n");
    for (int i = 0; i < 101; i++)
        sprintf(req + strlen(req), "X-H%d: v\r\n", i);
    strcat(req, "\r\n");
    expect_status_and_close(req, "HTTP/1.1 431 ");
}

/* Bodies over the limit get 413, by Content-Length and while chunked. */
static void test_body_limit(void **state)
{
    (void)state;
    expect_status_and_close("POST / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n", "HTTP/1.1 413 ");
    static char req[12000];
    strcpy(req, "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (int i = 0; i < 3; i++) {
        strcat(req, "800\r\n");
        size_t n = strlen(req);
        memset(req + n, 'b', 0x800);
        req[n + 0x800] = '\0';
        strcat(req, "\r\n");
    }
    strcat(req, "0\r\n\r\n");
    expect_status_and_close(req, "HTTP/1.1 413 ");
}

/* Request-smuggling shapes are refused with 400 and the connection closed. */
static void test_smuggling_shapes(void **state)
{
    (void)state;
    expect_status_and_close("POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: "
                            "chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
                            "HTTP/1.1 400 ");
    expect_status_and_close(
        "POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde", "HTTP/1.1 400 ");
    expect_status_and_close("POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
                            "HTTP/1.1 400 ");
    expect_status_and_close("GET / HTTP/1.1\r\nX-Fold: a\r\n b\r\n\r\n", "HTTP/1.1 400 ");
    expect_status_and_close("GET / HTTP/1.1\r\nX-Cr: a\rb\r\n\r\n", "HTTP/1.1 400 ");
    static const char nul[] = "GET / HTTP/1.1\r\nX-Nul: a\0b\r\n\r\n";
    char buf[4096];
    int fd = client();
    assert_int_equal(io_send(fd, nul, sizeof(nul) - 1), (ssize_t)sizeof(nul) - 1);
    read_to_eof(fd, buf, sizeof(buf));
    assert_non_null(strstr(buf, "HTTP/1.1 400 "));
    client_close(fd);
    expect_status_and_close("GARBAGE\r\n\r\n", "HTTP/1.1 400 ");
    expect_status_and_close("GET / HTTP/2.0\r\n\r\n", "HTTP/1.1 ");
}

/* A client that stops half-way through its headers or body gets 408. */
static void test_timeouts(void **state)
{
    (void)state;
    expect_status_and_close("GET / HTTP/1.1\r\nHost: t\r\n", "HTTP/1.1 408 ");
    expect_status_and_close("POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc", "HTTP/1.1 408 ");
    /* An idle keep-alive connection is closed without an answer. */
    char buf[4096];
    bool eof;
    int fd = client();
    send_str(fd, "GET / HTTP/1.1\r\n\r\n");
    read_until(fd, buf, sizeof(buf), "body=", &eof);
    size_t n = read_to_eof(fd, buf, sizeof(buf));
    assert_int_equal(n, 0);
    client_close(fd);
}

/* Streams use chunked coding for HTTP/1.1 and close-delimiting for 1.0. */
static void test_streams(void **state)
{
    (void)state;
    char buf[8192];
    exchange("GET /sse HTTP/1.1\r\nConnection: close\r\n\r\n", buf, sizeof(buf));
    assert_non_null(strstr(buf, "Transfer-Encoding: chunked"));
    assert_non_null(strstr(buf, "b\r\ndata: one\n\n\r\nb\r\ndata: two\n\n\r\n0\r\n\r\n"));
    exchange("GET /sse HTTP/1.0\r\n\r\n", buf, sizeof(buf));
    assert_null(strstr(buf, "chunked"));
    assert_non_null(strstr(buf, "\r\n\r\ndata: one\n\ndata: two\n\n"));
    static const char *const held[] = {"/sse-held", "/sse-held-flush", "/sse-held-empty"};
    for (int i = 0; i < 3; i++) {
        char req[128];
        snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nConnection: close\r\n\r\n", held[i]);
        exchange(req, buf, sizeof(buf));
        assert_non_null(strstr(buf, "HTTP/1.1 200"));
        assert_non_null(strstr(buf, "Transfer-Encoding: chunked"));
        assert_non_null(
            strstr(buf, i < 2 ? "\r\n\r\nb\r\ndata: one\n\n\r\n0\r\n\r\n" : "\r\n\r\n0\r\n\r\n"));
    }
    exchange("GET /sse-held HTTP/1.0\r\n\r\n", buf, sizeof(buf));
    assert_non_null(strstr(buf, "\r\n\r\ndata: one\n\n"));
    assert_null(strstr(buf, "chunked"));
    exchange("GET /sse-end HTTP/1.1\r\nConnection: close\r\n\r\n", buf, sizeof(buf));
    assert_non_null(strstr(buf, "b\r\ndata: one\n\n\r\nc\r\ndata: last\n\n\r\n0\r\n\r\n"));
    exchange("GET /sse-end HTTP/1.0\r\n\r\n", buf, sizeof(buf));
    assert_non_null(strstr(buf, "\r\n\r\ndata: one\n\ndata: last\n\n"));
    assert_null(strstr(buf, "0\r\n\r\n"));
}

/* A client that does not read pauses the producer: what the server queues
 * never exceeds the watermark by more than one chunk, the producer waits for
 * the drain callback, and the stream completes once the client reads. */
static void test_slow_client_backpressure(void **state)
{
    (void)state;
    atomic_store(&st.stream_done, 0);
    atomic_store(&st.stream_bytes, 0);
    atomic_store(&st.max_queued, 0);
    atomic_store(&st.pauses, 0);
    int fd = client();
    send_str(fd, "GET /stream HTTP/1.1\r\nConnection: close\r\n\r\n");
    /* Do not read until the producer has hit backpressure (the kernel's
     * buffers fill long before STREAM_TOTAL bytes). */
    for (int i = 0; i < 100000 && atomic_load(&st.pauses) == 0; i++) {
        struct pollfd p = {-1, 0, 0};
        poll(&p, 0, 1);
    }
    assert_true(atomic_load(&st.pauses) > 0);
    assert_int_equal(atomic_load(&st.stream_done), 0);
    /* Now read it all: the stream finishes. */
    static char big[1 << 16];
    long total = 0;
    for (;;) {
        ssize_t k = io_recv(fd, big, sizeof(big));
        if (k <= 0)
            break;
        total += k;
    }
    assert_true(total > STREAM_TOTAL);
    assert_int_equal(atomic_load(&st.stream_done), 1);
    /* Over TLS the queue holds records: a chunk's bytes plus their framing. */
    long slack = 16384 + 16 + (tls.on ? 256 : 0);
    assert_true(atomic_load(&st.max_queued) <= (long)st.limits.write_high_watermark + slack);
    client_close(fd);
}

/* A client that goes away mid-stream aborts the exchange. */
static void test_client_abort(void **state)
{
    (void)state;
    atomic_store(&st.stream_done, 0);
    int before = atomic_load(&st.aborts);
    int fd = client();
    send_str(fd, "GET /stream HTTP/1.1\r\n\r\n");
    char buf[4096];
    bool eof;
    read_until(fd, buf, sizeof(buf), "\r\n\r\n", &eof);
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    client_close(fd);
    for (int i = 0; i < 1000 && atomic_load(&st.stream_done) == 0; i++) {
        struct pollfd p = {-1, 0, 0};
        poll(&p, 0, 10);
    }
    assert_int_equal(atomic_load(&st.stream_done), 2);
    assert_int_equal(atomic_load(&st.aborts), before + 1);
}

/* HEAD gets the headers of GET and no body. */
static void test_head(void **state)
{
    (void)state;
    char buf[4096];
    int fd = client();
    send_str(fd, "HEAD /h HTTP/1.1\r\nConnection: close\r\n\r\n");
    size_t n = read_to_eof(fd, buf, sizeof(buf));
    assert_non_null(strstr(buf, "Content-Length: "));
    char *end = strstr(buf, "\r\n\r\n");
    assert_non_null(end);
    assert_int_equal((size_t)(end + 4 - buf), n);
    client_close(fd);
}

/* --- TLS's own ------------------------------------------------------------ */

/* Plain HTTP on a TLS port gets a readable 400 in the clear and a close;
 * bytes that are neither TLS nor HTTP get only the close. */
static void test_tls_plain_http_refused(void **state)
{
    (void)state;
    char buf[4096];
    int fd = raw_client();
    send_str(fd, "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    read_to_eof(fd, buf, sizeof(buf));
    assert_non_null(strstr(buf, "HTTP/1.1 400 "));
    assert_non_null(strstr(buf, "use https://"));
    assert_non_null(strstr(buf, "Connection: close\r\n"));
    client_close(fd);
    fd = raw_client();
    send_str(fd, "\x01\x02junk");
    assert_int_equal(read_to_eof(fd, buf, sizeof(buf)), 0);
    client_close(fd);
}

/* A handshake that stops half-way is closed at the header deadline. */
static void test_tls_handshake_deadline(void **state)
{
    (void)state;
    char buf[4096];
    int fd = raw_client();
    send_str(fd, "\x16\x03\x01");
    assert_int_equal(read_to_eof(fd, buf, sizeof(buf)), 0);
    client_close(fd);
}

static long peer_serial(int fd)
{
    X509 *x = SSL_get0_peer_certificate(tls.ssl[fd]);
    assert_non_null(x);
    return ASN1_INTEGER_get(X509_get0_serialNumber(x));
}

static void get_ok(int fd)
{
    char buf[4096];
    bool eof;
    send_str(fd, "GET /r HTTP/1.1\r\nHost: t\r\n\r\n");
    read_until(fd, buf, sizeof(buf), "body=", &eof);
    assert_non_null(strstr(buf, "HTTP/1.1 200 OK\r\n"));
}

/* A reload (from another thread than the server's) changes the
 * certificate of new connections only; a bad file keeps the loaded one and
 * says why. */
static void test_tls_reload(void **state)
{
    (void)state;
    char err[512];
    int old = client();
    get_ok(old);
    assert_int_equal(peer_serial(old), 1);

    test_make_cert(tls.crt, tls.key, "second", 2);
    assert_int_equal(kp_tls_server_reload(tls.srv, err, sizeof(err)), KP_OK);
    kp_tls_server_describe(tls.srv, err, sizeof(err));
    assert_non_null(strstr(err, "subject /CN=second, serial 02"));
    client_trust_current();
    int fresh = client();
    get_ok(fresh);
    assert_int_equal(peer_serial(fresh), 2);
    get_ok(old); /* the old connection goes on with its certificate */
    assert_int_equal(peer_serial(old), 1);

    FILE *f = fopen(tls.crt, "w");
    assert_non_null(f);
    fputs("not a certificate\n", f);
    fclose(f);
    assert_int_equal(kp_tls_server_reload(tls.srv, err, sizeof(err)), KP_ECONFIG);
    assert_non_null(strstr(err, "not a PEM certificate"));
    int third = client();
    get_ok(third);
    assert_int_equal(peer_serial(third), 2);
    client_close(old);
    client_close(fresh);
    client_close(third);
}

/* Files that cannot make a context: each error names the file and why. */
static void test_tls_bad_files(void **state)
{
    (void)state;
    char dir[] = "/tmp/kp-test-http-bad.XXXXXX", a_crt[64], a_key[64], b_crt[64], b_key[64];
    char err[512];
    struct kp_tls_server *t = NULL;
    assert_non_null(mkdtemp(dir));
    snprintf(a_crt, sizeof(a_crt), "%s/a.crt", dir);
    snprintf(a_key, sizeof(a_key), "%s/a.key", dir);
    snprintf(b_crt, sizeof(b_crt), "%s/b.crt", dir);
    snprintf(b_key, sizeof(b_key), "%s/b.key", dir);
    test_make_cert(a_crt, a_key, "a", 1);
    test_make_cert(b_crt, b_key, "b", 2);
    struct kp_tls_settings s = {a_crt, b_key, NULL, false};
    assert_int_equal(kp_tls_server_new(&t, &s, err, sizeof(err)), KP_ECONFIG);
    assert_non_null(strstr(err, "not the key of certificate"));
    s.key_file = "/nonexistent/k.pem";
    assert_int_equal(kp_tls_server_new(&t, &s, err, sizeof(err)), KP_ECONFIG);
    assert_string_equal(err, "private key /nonexistent/k.pem: cannot open: No such file or "
                             "directory");
    s = (struct kp_tls_settings){a_crt, a_key, a_key, true};
    assert_int_equal(kp_tls_server_new(&t, &s, err, sizeof(err)), KP_ECONFIG);
    assert_non_null(strstr(err, "client CA file"));
    s = (struct kp_tls_settings){a_crt, a_key, NULL, true};
    assert_int_equal(kp_tls_server_new(&t, &s, err, sizeof(err)), KP_ECONFIG);
    assert_int_equal(kp_tls_check_ca_file(a_key, err, sizeof(err)), KP_ECONFIG);
    assert_int_equal(kp_tls_check_ca_file(a_crt, err, sizeof(err)), KP_OK);
    s = (struct kp_tls_settings){a_crt, a_key, b_crt, true};
    assert_int_equal(kp_tls_server_new(&t, &s, err, sizeof(err)), KP_OK);
    /* a is its own CA, not b's. */
    assert_int_equal(kp_tls_server_check_chain(t, a_crt, err, sizeof(err)), KP_OK);
    assert_int_equal(kp_tls_server_check_chain(t, b_crt, err, sizeof(err)), KP_EAUTH);
    assert_non_null(strstr(err, "self-signed"));
    kp_tls_server_free(t);
    unlink(a_crt);
    unlink(a_key);
    unlink(b_crt);
    unlink(b_key);
    rmdir(dir);
}

/* Address parsing accepts the documented forms and names what is wrong. */
static void test_parse_addr(void **state)
{
    (void)state;
    struct sockaddr_storage ss;
    char err[256];
    assert_int_equal(kp_http_parse_addr("127.0.0.1:7600", &ss, err, sizeof(err)), 0);
    assert_int_equal(kp_http_parse_addr("[::1]:0", &ss, err, sizeof(err)), 0);
    assert_int_equal(ss.ss_family, AF_INET6);
    assert_int_equal(kp_http_parse_addr(":80", &ss, err, sizeof(err)), 0);
    assert_int_equal(kp_http_parse_addr("localhost:1", &ss, err, sizeof(err)), 0);
    assert_int_not_equal(kp_http_parse_addr("127.0.0.1", &ss, err, sizeof(err)), 0);
    assert_non_null(strstr(err, "HOST:PORT"));
    assert_int_not_equal(kp_http_parse_addr("127.0.0.1:70000", &ss, err, sizeof(err)), 0);
    assert_non_null(strstr(err, "port"));
    assert_int_not_equal(kp_http_parse_addr("example.com:80", &ss, err, sizeof(err)), 0);
    assert_non_null(strstr(err, "host"));
}

#define BOTH(t)                                                                                    \
    cmocka_unit_test_setup_teardown(t, server_up, server_down),                                    \
        cmocka_unit_test_setup_teardown(t, tls_server_up, tls_server_down)

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_addr),
        cmocka_unit_test(test_tls_bad_files),
        cmocka_unit_test_setup_teardown(test_tls_plain_http_refused, tls_server_up,
                                        tls_server_down),
        cmocka_unit_test_setup_teardown(test_tls_handshake_deadline, tls_server_up,
                                        tls_server_down),
        cmocka_unit_test_setup_teardown(test_tls_reload, tls_server_up, tls_server_down),
        BOTH(test_get_keepalive),
        BOTH(test_pipelining_in_order),
        BOTH(test_quiesce_flag_closes_after_the_next_answer),
        BOTH(test_chunked_request_body),
        BOTH(test_expect_continue),
        BOTH(test_header_limits),
        BOTH(test_body_limit),
        BOTH(test_refusal_keeps_the_request_id),
        BOTH(test_smuggling_shapes),
        BOTH(test_timeouts),
        BOTH(test_streams),
        BOTH(test_slow_client_backpressure),
        BOTH(test_client_abort),
        BOTH(test_head),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* The HTTP/1.1 server: llhttp on libuv, one instance per worker loop.
 *
 * Happy path: accept -> read -> llhttp parses the request line and headers
 * into the exchange, then the body -> on message complete the parser is
 * paused and the handler is called with the whole request -> the handler
 * answers (at once or later) -> the exchange is finished, metrics are
 * recorded, and the parser resumes on whatever the client pipelined, or the
 * connection waits idle for the next request.
 *
 * A connection moves through these states:
 *
 *        accept
 *          |
 *          v        first byte            headers done
 *      +-> IDLE ----------------> HEADERS ------------> BODY
 *      |    |                        |                   |
 *      |    | idle timeout           | timeout: 408      | timeout: 408
 *      |    v                        v                   v  message complete
 *      |  CLOSE <----------------- (error: 400/413/431)  +---------> HANDLER
 *      |                                                               |
 *      +------------------- exchange finished, keep-alive -------------+
 *
 * How it fails: a request that breaks the protocol or a limit is answered
 * with 400, 408, 413, 417 or 431 and the connection closes after the answer
 * (nothing more is read from it, so a smuggled second request is never
 * parsed). A client that goes away while its request is with the handler
 * aborts the exchange: the abort callback runs, later writes fail with
 * KP_ECLOSED, and the memory stays until the handler finishes the exchange.
 * Out of memory while reading fails that connection only.
 *
 * A listener with TLS runs the same machine on the plaintext that OpenSSL
 * takes out of the socket's bytes (the TLS section below); a handshake that
 * fails or does not finish in time closes the connection before IDLE. */
#include "http.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bytes.h"
#include "clock.h"
#include "error.h"
#include "json.h"
#include "log.h"
#include "metrics.h"
#include "tls.h"

/* Unparsed bytes buffered while a request is with the handler; past this we
 * stop reading the socket (pipelining clients wait, memory stays bounded). */
#define MAX_PIPELINE_BUFFER (64 * 1024)
/* How long a closing connection drains what the client still sends, so that
 * our last answer is not lost to a reset. */
#define LINGER_MS  2000
#define READ_CHUNK 65536
/* Room made in c->in for each SSL_read: one TLS record's plaintext. */
#define TLS_PLAIN_CHUNK 16384
/* How long an idle connection may stay once the server drains. */
#define DRAIN_IDLE_GRACE_MS 500

enum conn_state { C_IDLE, C_HEADERS, C_BODY, C_HANDLER };

struct conn;

struct hdr_span {
    size_t name_off, name_len, value_off, value_len;
};

struct kp_http_exchange {
    struct conn *conn;
    struct kp_arena arena;
    struct kp_http_request req;
    /* Parse accumulation: the target, then names and values, each
     * NUL-terminated, referenced by offset until the headers are complete. */
    struct kp_buf text;
    struct hdr_span *spans;
    unsigned n_spans, cap_spans;
    size_t url_len;
    bool in_value;
    size_t value_end; /* offset in conn->in just after the last value bytes */
    size_t header_bytes;
    struct kp_buf body;
    int error_status; /* set by a callback that failed the request */
    const char *error_msg;
    uint64_t start_us;
    const char *route;
    int status;
    bool started;   /* status line queued */
    bool streaming; /* kp_http_stream_begin called */
    bool head_held; /* the stream's head waits in conn->head for its first bytes */
    bool chunked;
    bool keep_alive;
    bool is_head;
    bool aborted;
    bool finished;
    bool drain_wanted;
    bool dispatched;
    kp_http_event_fn on_abort, on_drain;
    void *abort_arg, *drain_arg;
    kp_http_finish_fn on_finish;
    void *finish_arg;
};

struct conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_shutdown_t shutdown_req;
    struct kp_http_server *srv;
    struct conn *prev, *next;
    llhttp_t parser;
    struct kp_buf in;
    size_t in_off;
    enum conn_state state;
    struct kp_http_exchange *ex;
    struct kp_http_exchange *spare; /* a finished exchange kept for reuse */
    struct kp_buf head;             /* answer head being built, reused */
    size_t queued;
    uint64_t deadline;  /* loop time when the current wait times out; 0: none */
    uint64_t timer_due; /* when the armed timer fires */
    int open_handles;
    bool reading;
    bool closing;  /* handles are being closed */
    bool shutting; /* shutdown(WR) sent, lingering */
    bool in_parse; /* inside parse_pending(): do not recurse */
    bool reset_pending;
    bool counted;
    /* TLS (srv->cfg.tls): ciphertext goes through memory BIOs between the
     * socket and OpenSSL; c->in holds the plaintext as for plain TCP. */
    SSL *ssl;            /* NULL: plain TCP */
    bool tls_seen;       /* the first byte arrived (a handshake, or plain HTTP) */
    bool tls_done;       /* handshake finished */
    bool tls_plain;      /* plain HTTP on a TLS port: answered in the clear, closing */
    bool tls_failed;     /* handshake or record error: no close_notify */
    bool in_pump;        /* inside tls_pump(): do not recurse */
    bool pump_again;     /* more plaintext may wait in OpenSSL */
    struct kp_buf plain; /* pieces of one write joined into one TLS record */
    char *tls_refused;   /* subject of a client certificate that did not verify */
};

struct kp_http_server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    struct kp_http_server_config cfg;
    struct conn *conns;
    unsigned n_conns;
    unsigned inflight;
    bool listening;
    bool draining;
    bool closing;
    void (*close_cb)(void *);
    void *close_arg;
    time_t date_sec;
    char date[64];
    /* The loop's read buffer: every connection reads into it and keeps only
     * what arrived (c->in), so an idle or streaming connection holds a few
     * hundred bytes, not a 64 KiB buffer (most of an open stream's memory
     * when each connection had its own). TLS: ciphertext for OpenSSL. */
    char *rbuf;
    /* TLS: handshake failures logged in the current 10 s window, and how
     * many were not (a scanner must not flood the log). */
    int64_t tls_log_window;
    unsigned tls_logged, tls_unlogged;
    struct kp_metric_family *tls_failures; /* keyplane_tls_handshake_failures_total */
};

struct write_req {
    uv_write_t req;
    struct conn *conn;
    size_t len;
    char data[];
};

static llhttp_settings_t parser_settings;
static bool settings_ready;

static void conn_close(struct conn *c);
static void conn_close_gracefully(struct conn *c);
static void conn_maybe_free(struct conn *c);
static void parse_pending(struct conn *c);
static void ex_finish(struct kp_http_exchange *ex);
static int tls_flush(struct conn *c);

void kp_http_limits_default(struct kp_http_limits *l)
{
    l->max_header_bytes = 32 * 1024;
    l->max_headers = 100;
    l->max_body_bytes = 8 * 1024 * 1024;
    l->header_timeout_ms = 10000;
    l->body_timeout_ms = 30000;
    l->idle_timeout_ms = 60000;
    l->write_high_watermark = 256 * 1024;
}

const char *kp_http_reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 411:
        return "Length Required";
    case 412:
        return "Precondition Failed";
    case 413:
        return "Content Too Large";
    case 415:
        return "Unsupported Media Type";
    case 417:
        return "Expectation Failed";
    case 422:
        return "Unprocessable Content";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 499:
        return "Client Closed Request";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    case 529:
        return "Site Overloaded";
    default:
        return "Unknown";
    }
}

const char *kp_http_request_header(const struct kp_http_request *req, const char *name)
{
    size_t n = strlen(name);
    for (unsigned i = 0; i < req->n_headers; i++)
        if (req->headers[i].name_len == n && strncasecmp(req->headers[i].name, name, n) == 0)
            return req->headers[i].value;
    return NULL;
}

/* --- addresses and listening --------------------------------------------- */

int kp_http_parse_addr(const char *addr, struct sockaddr_storage *out, char *errmsg, size_t errlen)
{
    char host[128];
    const char *colon;
    memset(out, 0, sizeof(*out));
    if (addr == NULL || *addr == '\0') {
        snprintf(errmsg, errlen, "empty address (expected HOST:PORT)");
        return KP_EINVAL;
    }
    if (addr[0] == '[') {
        const char *end = strchr(addr, ']');
        if (end == NULL || end[1] != ':' || (size_t)(end - addr - 1) >= sizeof(host)) {
            snprintf(errmsg, errlen, "bad address \"%s\" (expected [IPV6]:PORT)", addr);
            return KP_EINVAL;
        }
        memcpy(host, addr + 1, (size_t)(end - addr - 1));
        host[end - addr - 1] = '\0';
        colon = end + 1;
    } else {
        colon = strrchr(addr, ':');
        if (colon == NULL || (size_t)(colon - addr) >= sizeof(host)) {
            snprintf(errmsg, errlen, "bad address \"%s\" (expected HOST:PORT)", addr);
            return KP_EINVAL;
        }
        memcpy(host, addr, (size_t)(colon - addr));
        host[colon - addr] = '\0';
    }
    char *end;
    errno = 0;
    long port = strtol(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end != '\0' || errno != 0 || port < 0 || port > 65535) {
        snprintf(errmsg, errlen, "bad port in \"%s\" (expected 0 to 65535)", addr);
        return KP_EINVAL;
    }
    if (host[0] == '\0' || strcmp(host, "*") == 0)
        strcpy(host, "0.0.0.0");
    else if (strcmp(host, "localhost") == 0)
        strcpy(host, "127.0.0.1");
    if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)out) == 0)
        return KP_OK;
    if (uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)out) == 0)
        return KP_OK;
    snprintf(errmsg, errlen, "bad host in \"%s\" (expected an IP address or localhost)", addr);
    return KP_EINVAL;
}

/* A listening socket with SO_REUSEPORT, so every worker binds the same
 * address and the kernel spreads connections among them. libuv 1.44 has no
 * flag for it, hence the raw socket handed to uv_tcp_open(). */
static int listen_socket(const struct sockaddr_storage *ss, int *fd_out, char *errmsg,
                         size_t errlen)
{
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        goto err;
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0)
        goto err_after_socket;
    socklen_t len =
        ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    if (bind(fd, (const struct sockaddr *)ss, len) != 0)
        goto err_after_socket;
    *fd_out = fd;
    return KP_OK;

err_after_socket:
    snprintf(errmsg, errlen, "%s", strerror(errno));
    close(fd);
    return kp_err_from_errno(errno);
err:
    snprintf(errmsg, errlen, "socket: %s", strerror(errno));
    return kp_err_from_errno(errno);
}

/* --- writing ------------------------------------------------------------- */

static void ex_check_drain(struct kp_http_exchange *ex);

static void write_done(uv_write_t *req, int status)
{
    struct write_req *w = (struct write_req *)req;
    struct conn *c = w->conn;
    c->queued -= w->len;
    kp_free(w);
    if (status < 0 && !c->closing) {
        if (c->ex != NULL && !c->ex->aborted) {
            c->ex->aborted = true;
            if (c->ex->on_abort)
                c->ex->on_abort(c->ex, c->ex->abort_arg);
        }
        conn_close(c);
        return;
    }
    if (c->reset_pending && c->queued == 0 && c->ex == NULL && !c->closing) {
        conn_close(c);
        return;
    }
    if (c->ex != NULL)
        ex_check_drain(c->ex);
    conn_maybe_free(c);
}

/* Write the three pieces (any may be empty) as one. When nothing is queued,
 * try the socket directly first: most answers fit, and then nothing is
 * copied or allocated and libuv need not re-arm the socket for writing. What
 * does not fit is copied into one write request and queued. */
static int tls_write(struct conn *c, const void *a, size_t alen, const void *b, size_t blen,
                     const void *d, size_t dlen);

static int conn_write(struct conn *c, const void *a, size_t alen, const void *b, size_t blen,
                      const void *d, size_t dlen)
{
    if (c->closing)
        return KP_ECLOSED;
    if (c->ssl != NULL && !c->tls_plain)
        return tls_write(c, a, alen, b, blen, d, dlen);
    uv_buf_t bufs[3] = {uv_buf_init((char *)a, (unsigned)alen),
                        uv_buf_init((char *)b, (unsigned)blen),
                        uv_buf_init((char *)d, (unsigned)dlen)};
    size_t skip = 0;
    if (c->queued == 0) {
        int n = uv_try_write((uv_stream_t *)&c->tcp, bufs, 3);
        if (n >= 0)
            skip = (size_t)n;
        else if (n != UV_EAGAIN && n != UV_ENOSYS)
            return kp_err_from_uv(n);
    }
    size_t len = alen + blen + dlen - skip;
    if (len == 0)
        return KP_OK;
    struct write_req *w = kp_malloc(sizeof(*w) + len);
    if (w == NULL)
        return KP_ENOMEM;
    w->conn = c;
    w->len = len;
    size_t off = 0;
    for (int i = 0; i < 3; i++) {
        size_t n = bufs[i].len;
        size_t drop = skip < n ? skip : n;
        skip -= drop;
        if (n > drop)
            memcpy(w->data + off, bufs[i].base + drop, n - drop);
        off += n - drop;
    }
    uv_buf_t buf = uv_buf_init(w->data, (unsigned)len);
    int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &buf, 1, write_done);
    if (rc != 0) {
        kp_free(w);
        return kp_err_from_uv(rc);
    }
    c->queued += len;
    return KP_OK;
}

/* Decimal digits of @v into @out (at least 21 bytes); returns the length. */
static size_t format_uint(char *out, unsigned long long v)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

static const char *http_date(struct kp_http_server *srv)
{
    time_t now = time(NULL);
    if (now != srv->date_sec) {
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(srv->date, sizeof(srv->date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
        srv->date_sec = now;
    }
    return srv->date;
}

static bool header_is_reserved(const struct kp_http_header *h)
{
    static const char *const reserved[] = {"content-length", "transfer-encoding", "connection",
                                           "date"};
    for (size_t i = 0; i < sizeof(reserved) / sizeof(reserved[0]); i++)
        if (h->name_len == strlen(reserved[i]) &&
            strncasecmp(h->name, reserved[i], h->name_len) == 0)
            return true;
    return false;
}

static bool header_is_clean(const struct kp_http_header *h)
{
    for (size_t i = 0; i < h->name_len; i++)
        if (h->name[i] <= ' ' || h->name[i] == ':' || h->name[i] == 127)
            return false;
    return h->name_len > 0 && !kp_has_crlf_nul(h->value, h->value_len);
}

/* Status line and headers. @length < 0 means chunked (or close-delimited). */
static int build_head(struct kp_http_exchange *ex, struct kp_buf *out, int status,
                      const struct kp_http_header *headers, unsigned n, long long length)
{
    struct conn *c = ex->conn;
    if (c->srv->draining || (c->srv->cfg.quiesce != NULL &&
                             atomic_load_explicit(c->srv->cfg.quiesce, memory_order_relaxed)))
        ex->keep_alive = false;
    /* Built by hand: this runs for every answer, and printf showed in
     * profiles. */
    char num[24];
    const char *reason = kp_http_reason(status);
    const char *date = http_date(c->srv);
    int rc = kp_buf_append_lit(out, "HTTP/1.1 ");
    rc |= kp_buf_append(out, num, format_uint(num, (unsigned long long)status));
    rc |= kp_buf_append_lit(out, " ");
    rc |= kp_buf_append(out, reason, strlen(reason));
    rc |= kp_buf_append_lit(out, "\r\nDate: ");
    rc |= kp_buf_append(out, date, strlen(date));
    rc |= kp_buf_append_lit(out, "\r\n");
    bool has_server = false;
    for (unsigned i = 0; i < n; i++) {
        if (header_is_reserved(&headers[i]) || !header_is_clean(&headers[i]))
            continue;
        if (headers[i].name_len == 6 && strncasecmp(headers[i].name, "server", 6) == 0)
            has_server = true;
        rc |= kp_buf_append(out, headers[i].name, headers[i].name_len);
        rc |= kp_buf_append_lit(out, ": ");
        rc |= kp_buf_append(out, headers[i].value, headers[i].value_len);
        rc |= kp_buf_append_lit(out, "\r\n");
    }
    if (!has_server)
        rc |= kp_buf_append_lit(out, "Server: keyplane\r\n");
    if (length >= 0) {
        if (status != 204 && status != 304 && !(status >= 100 && status < 200)) {
            rc |= kp_buf_append_lit(out, "Content-Length: ");
            rc |= kp_buf_append(out, num, format_uint(num, (unsigned long long)length));
            rc |= kp_buf_append_lit(out, "\r\n");
        }
    } else if (ex->chunked) {
        rc |= kp_buf_append_lit(out, "Transfer-Encoding: chunked\r\n");
    }
    if (!ex->keep_alive)
        rc |= kp_buf_append_lit(out, "Connection: close\r\n");
    else if (ex->req.version_minor == 0)
        rc |= kp_buf_append_lit(out, "Connection: keep-alive\r\n");
    rc |= kp_buf_append_lit(out, "\r\n");
    return rc ? KP_ENOMEM : KP_OK;
}

/* --- exchanges ----------------------------------------------------------- */

/* Buffers above this are freed rather than kept for the next request. */
#define REUSE_MAX_BYTES (64 * 1024)

/* A new exchange, reusing the connection's spare one (and its buffers) on
 * keep-alive connections so a request costs no allocation in the common
 * case. */
static struct kp_http_exchange *ex_new(struct conn *c)
{
    struct kp_http_exchange *ex = c->spare;
    if (ex != NULL) {
        c->spare = NULL;
        struct kp_arena arena = ex->arena;
        struct kp_buf text = ex->text, body = ex->body;
        struct hdr_span *spans = ex->spans;
        unsigned cap_spans = ex->cap_spans;
        memset(ex, 0, sizeof(*ex));
        ex->arena = arena;
        ex->text = text;
        ex->body = body;
        ex->text.len = ex->body.len = 0;
        ex->spans = spans;
        ex->cap_spans = cap_spans;
    } else {
        ex = kp_calloc(1, sizeof(*ex));
        if (ex == NULL)
            return NULL;
        kp_arena_init(&ex->arena, 2048);
        kp_buf_init(&ex->text);
        kp_buf_init(&ex->body);
    }
    ex->conn = c;
    ex->route = "other";
    ex->start_us = kp_now_mono_us();
    return ex;
}

static void ex_free(struct kp_http_exchange *ex)
{
    kp_arena_free(&ex->arena);
    kp_buf_free(&ex->text);
    kp_buf_free(&ex->body);
    kp_free(ex->spans);
    kp_free(ex);
}

/* Keep a finished exchange as the connection's spare, or free it. */
static void ex_release(struct conn *c, struct kp_http_exchange *ex)
{
    if (c->closing || c->spare != NULL) {
        ex_free(ex);
        return;
    }
    kp_arena_reset(&ex->arena);
    if (ex->text.cap > REUSE_MAX_BYTES)
        kp_buf_free(&ex->text);
    if (ex->body.cap > REUSE_MAX_BYTES)
        kp_buf_free(&ex->body);
    c->spare = ex;
}

uv_loop_t *kp_http_loop(struct kp_http_exchange *ex)
{
    return ex->conn->srv->loop;
}

void *kp_http_alloc(struct kp_http_exchange *ex, size_t size)
{
    return kp_arena_alloc(&ex->arena, size);
}

void kp_http_set_route(struct kp_http_exchange *ex, const char *route)
{
    ex->route = route;
}

void kp_http_on_abort(struct kp_http_exchange *ex, kp_http_event_fn fn, void *arg)
{
    ex->on_abort = fn;
    ex->abort_arg = arg;
}

void kp_http_on_finish(struct kp_http_exchange *ex, kp_http_finish_fn fn, void *arg)
{
    ex->on_finish = fn;
    ex->finish_arg = arg;
}

void kp_http_on_drain(struct kp_http_exchange *ex, kp_http_event_fn fn, void *arg)
{
    ex->on_drain = fn;
    ex->drain_arg = arg;
}

bool kp_http_aborted(const struct kp_http_exchange *ex)
{
    return ex->aborted;
}

size_t kp_http_queued_bytes(const struct kp_http_exchange *ex)
{
    return ex->conn->queued;
}

bool kp_http_stream_writable(struct kp_http_exchange *ex)
{
    if (ex->aborted)
        return false;
    if (ex->conn->queued < ex->conn->srv->cfg.limits.write_high_watermark)
        return true;
    ex->drain_wanted = true;
    return false;
}

static void ex_check_drain(struct kp_http_exchange *ex)
{
    struct conn *c = ex->conn;
    if (!ex->drain_wanted || ex->aborted || c->queued > c->srv->cfg.limits.write_high_watermark / 2)
        return;
    ex->drain_wanted = false;
    if (ex->on_drain)
        ex->on_drain(ex, ex->drain_arg);
}

int kp_http_respond(struct kp_http_exchange *ex, int status, const struct kp_http_header *headers,
                    unsigned n_headers, const void *body, size_t len)
{
    if (ex->started) {
        kp_error("http", "respond called twice on one exchange -> ignored");
        return KP_EINVAL;
    }
    ex->started = true;
    ex->status = status;
    if (ex->aborted) {
        ex_finish(ex);
        return KP_ECLOSED;
    }
    struct kp_buf *head = &ex->conn->head;
    head->len = 0;
    int rc = build_head(ex, head, status, headers, n_headers, (long long)len);
    if (rc == KP_OK)
        rc = conn_write(ex->conn, head->data, head->len, ex->is_head ? NULL : body,
                        ex->is_head ? 0 : len, NULL, 0);
    if (rc != KP_OK)
        ex->keep_alive = false;
    ex_finish(ex);
    return rc;
}

int kp_http_respond_json(struct kp_http_exchange *ex, int status, const char *json, size_t len)
{
    struct kp_http_header h = KP_HTTP_HEADER("Content-Type", "application/json");
    return kp_http_respond(ex, status, &h, 1, json, len);
}

static int stream_begin(struct kp_http_exchange *ex, int status,
                        const struct kp_http_header *headers, unsigned n_headers, bool hold)
{
    if (ex->started)
        return KP_EINVAL;
    ex->started = true;
    ex->streaming = true;
    ex->status = status;
    if (ex->aborted)
        return KP_ECLOSED;
    /* HTTP/1.0 has no chunked coding: the body ends when we close. */
    ex->chunked = ex->req.version_minor >= 1;
    if (!ex->chunked)
        ex->keep_alive = false;
    struct kp_buf *head = &ex->conn->head;
    head->len = 0;
    int rc = build_head(ex, head, status, headers, n_headers, -1);
    if (rc == KP_OK && hold) {
        ex->head_held = true;
        return KP_OK;
    }
    if (rc == KP_OK)
        rc = conn_write(ex->conn, head->data, head->len, NULL, 0, NULL, 0);
    kp_buf_free(head); /* a stream may stay open for minutes: keep nothing for it */
    return rc;
}

int kp_http_stream_begin(struct kp_http_exchange *ex, int status,
                         const struct kp_http_header *headers, unsigned n_headers)
{
    return stream_begin(ex, status, headers, n_headers, false);
}

int kp_http_stream_begin_held(struct kp_http_exchange *ex, int status,
                              const struct kp_http_header *headers, unsigned n_headers)
{
    return stream_begin(ex, status, headers, n_headers, true);
}

/* Writes a held head with @data as the stream's first bytes (the chunk
 * size line joins the head; @tail ends the chunk, and the stream when it
 * holds the last chunk), in one write. */
static int write_held(struct kp_http_exchange *ex, const void *data, size_t len, const char *tail,
                      size_t tail_len)
{
    struct kp_buf *head = &ex->conn->head;
    ex->head_held = false;
    int rc = KP_OK;
    if (ex->chunked && len > 0 && kp_buf_appendf(head, "%zx\r\n", len) != 0)
        rc = KP_ENOMEM;
    if (rc == KP_OK)
        rc = conn_write(ex->conn, head->data, head->len, data, len, tail, tail_len);
    kp_buf_free(head);
    return rc;
}

int kp_http_stream_flush(struct kp_http_exchange *ex)
{
    if (!ex->head_held)
        return KP_OK;
    if (ex->aborted || ex->finished) {
        ex->head_held = false;
        kp_buf_free(&ex->conn->head);
        return KP_ECLOSED;
    }
    return write_held(ex, NULL, 0, NULL, 0);
}

int kp_http_stream_write(struct kp_http_exchange *ex, const void *data, size_t len)
{
    if (!ex->streaming || ex->finished)
        return KP_EINVAL;
    if (ex->aborted)
        return KP_ECLOSED;
    if (len == 0 || ex->is_head)
        return KP_OK;
    int rc;
    if (ex->head_held) {
        rc = write_held(ex, data, len, ex->chunked ? "\r\n" : NULL, ex->chunked ? 2 : 0);
    } else if (ex->chunked) {
        char size[24];
        int n = snprintf(size, sizeof(size), "%zx\r\n", len);
        rc = conn_write(ex->conn, size, (size_t)n, data, len, "\r\n", 2);
    } else {
        rc = conn_write(ex->conn, data, len, NULL, 0, NULL, 0);
    }
    if (rc == KP_OK && ex->conn->queued >= ex->conn->srv->cfg.limits.write_high_watermark)
        ex->drain_wanted = true;
    return rc;
}

int kp_http_stream_end_with(struct kp_http_exchange *ex, const void *data, size_t len)
{
    if (!ex->streaming || ex->finished)
        return KP_EINVAL;
    bool aborted = ex->aborted;
    int rc = KP_OK;
    if (!aborted && ex->head_held) {
        const char *tail = !ex->chunked ? NULL : len ? "\r\n0\r\n\r\n" : "0\r\n\r\n";
        size_t tail_len = !ex->chunked ? 0 : len ? 7 : 5;
        rc = write_held(ex, ex->is_head ? NULL : data, ex->is_head ? 0 : len,
                        ex->is_head ? NULL : tail, ex->is_head ? 0 : tail_len);
    } else if (!aborted && !ex->is_head) {
        if (!ex->chunked) {
            rc = len ? conn_write(ex->conn, data, len, NULL, 0, NULL, 0) : KP_OK;
        } else if (len == 0) {
            rc = conn_write(ex->conn, "0\r\n\r\n", 5, NULL, 0, NULL, 0);
        } else {
            char size[24];
            int n = snprintf(size, sizeof(size), "%zx\r\n", len);
            rc = conn_write(ex->conn, size, (size_t)n, data, len, "\r\n0\r\n\r\n", 7);
        }
    }
    ex_finish(ex);
    return aborted ? KP_ECLOSED : rc;
}

int kp_http_stream_end(struct kp_http_exchange *ex)
{
    return kp_http_stream_end_with(ex, NULL, 0);
}

void kp_http_reset(struct kp_http_exchange *ex)
{
    struct conn *c = ex->conn;
    if (!ex->started)
        ex->status = 499;
    ex->started = true;
    ex->keep_alive = false;
    if (!c->closing)
        c->reset_pending = true;
    ex_finish(ex);
}

/* The end of an exchange: count it, free it, and move the connection on. */
static void ex_finish(struct kp_http_exchange *ex)
{
    if (ex->head_held) { /* reset or aborted before anything was written */
        ex->head_held = false;
        kp_buf_free(&ex->conn->head);
    }
    struct conn *c = ex->conn;
    struct kp_http_server *srv = c->srv;
    if (ex->finished)
        return;
    ex->finished = true;
    if (ex->dispatched)
        srv->inflight--;
    int status = ex->aborted && !ex->started ? 499 : ex->status;
    kp_metrics_http_observe(srv->cfg.name, ex->route, status, kp_now_mono_us() - ex->start_us);
    if (ex->on_finish != NULL)
        ex->on_finish(ex, status, ex->finish_arg);
    bool keep = ex->keep_alive && !ex->aborted && !srv->draining;
    c->ex = NULL;
    ex_release(c, ex);

    if (c->closing) {
        conn_maybe_free(c);
        return;
    }
    if (c->reset_pending) {
        /* Reset once what was queued is written (write_done). */
        if (c->queued == 0)
            conn_close(c);
        return;
    }
    if (!keep) {
        conn_close_gracefully(c);
        return;
    }
    c->state = C_IDLE;
    llhttp_resume(&c->parser);
    if (!c->in_parse)
        parse_pending(c);
}

/* --- connection lifecycle ------------------------------------------------ */

static void conn_handle_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    c->open_handles--;
    conn_maybe_free(c);
}

static void conn_unlink(struct conn *c)
{
    struct kp_http_server *srv = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    srv->n_conns--;
    if (c->counted)
        kp_metrics_http_conn_delta(srv->cfg.name, -1);
}

static void server_maybe_closed(struct kp_http_server *srv);

/* Frees the connection once its handles are closed and no exchange or write
 * refers to it. */
static void conn_maybe_free(struct conn *c)
{
    if (!c->closing)
        return;
    if (c->open_handles > 0 || c->ex != NULL || c->queued > 0)
        return;
    struct kp_http_server *srv = c->srv;
    conn_unlink(c);
    if (c->spare != NULL)
        ex_free(c->spare);
    kp_buf_free(&c->head);
    kp_buf_free(&c->in);
    kp_buf_free(&c->plain);
    kp_free(c->tls_refused);
    SSL_free(c->ssl);
    kp_free(c);
    server_maybe_closed(srv);
}

static void abort_exchange(struct conn *c)
{
    struct kp_http_exchange *ex = c->ex;
    if (ex == NULL || ex->aborted)
        return;
    ex->aborted = true;
    if (!ex->dispatched) {
        /* Still being read: nobody else holds it. */
        ex->started = true;
        ex->status = 499;
        ex_finish(ex);
        return;
    }
    if (ex->on_abort)
        ex->on_abort(ex, ex->abort_arg);
}

static void conn_close(struct conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    abort_exchange(c);
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, conn_handle_closed);
    /* A reset asked for by the handler (uv_tcp_close_reset is not allowed
     * after a shutdown). */
    if (!(c->reset_pending && !c->shutting && uv_tcp_close_reset(&c->tcp, conn_handle_closed) == 0))
        uv_close((uv_handle_t *)&c->tcp, conn_handle_closed);
}

static void linger_timeout(uv_timer_t *t)
{
    conn_close(t->data);
}

static void shutdown_done(uv_shutdown_t *req, int status)
{
    struct conn *c = req->data;
    (void)status;
    if (c->closing)
        return;
    /* Read and discard until the client closes or the linger time ends. */
    uv_timer_start(&c->timer, linger_timeout, LINGER_MS, 0);
}

/* Close after the last answer: send FIN once the queued answer is written,
 * then linger, reading and discarding, so the client reads the answer before
 * any reset that unread input would cause. */
static void conn_close_gracefully(struct conn *c)
{
    if (c->closing || c->shutting)
        return;
    c->shutting = true;
    uv_timer_stop(&c->timer);
    if (c->ssl != NULL && c->tls_done && !c->tls_plain && !c->tls_failed) {
        /* close_notify, so the client knows the answer is whole. */
        ERR_clear_error();
        SSL_shutdown(c->ssl);
        ERR_clear_error();
        tls_flush(c);
    }
    c->shutdown_req.data = c;
    if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, shutdown_done) != 0) {
        c->shutting = false;
        conn_close(c);
    }
}

static void timer_fired(uv_timer_t *t);

/* Deadlines are lazy: setting one re-arms the timer only when it must fire
 * earlier than it is armed for; a timer that fires early re-arms for the
 * rest. Each request moves the deadline several times (headers, body, idle),
 * and re-arming a libuv timer each time showed in profiles. */
static void conn_arm_timer(struct conn *c, uint64_t ms)
{
    if (c->closing || c->shutting || ms == 0)
        return;
    uint64_t due = uv_now(c->srv->loop) + ms;
    c->deadline = due;
    if (uv_is_active((uv_handle_t *)&c->timer) && c->timer_due <= due)
        return;
    c->timer_due = due;
    uv_timer_start(&c->timer, timer_fired, ms, 0);
}

static void conn_disarm_timer(struct conn *c)
{
    c->deadline = 0;
}

/* The error code of a refusal by the server itself (docs/architecture.md,
 * "Limits"). */
static const char *protocol_error_code(int status)
{
    switch (status) {
    case 408:
        return "request_timeout";
    case 413:
        return "too_large";
    case 417:
        return "expectation_failed";
    case 431:
        return "headers_too_large";
    case 501:
        return "not_implemented";
    case 505:
        return "http_version_not_supported";
    default:
        return "bad_request";
    }
}

/* Answer a protocol error and close. Nothing more is parsed. */
static void conn_fail(struct conn *c, int status, const char *msg)
{
    struct kp_http_exchange *ex = c->ex;
    if (ex == NULL) {
        ex = ex_new(c);
        if (ex == NULL) {
            conn_close(c);
            return;
        }
        c->ex = ex;
    }
    ex->route = "invalid";
    ex->keep_alive = false;
    ex->req.version_minor = 1;
    c->in_off = c->in.len; /* drop whatever else was sent */
    const char *code = protocol_error_code(status);
    /* The app's X-Request-Id once its headers were read (a 413, a 417),
     * else a new one: every answer carries one. */
    struct kp_http_header h[3] = {
        KP_HTTP_HEADER("Content-Type", "application/json"),
        KP_HTTP_HEADER("X-Request-Id", kp_http_request_id(ex, &ex->req)),
        KP_HTTP_HEADER("X-Keyplane-Error", code),
    };
    size_t len;
    char *body = kp_json_error_body(msg, "invalid_request_error", code, &len);
    kp_http_respond(ex, status, h, 3, body, body ? len : 0);
    kp_free(body);
    conn_close_gracefully(c);
}

static void timer_fired(uv_timer_t *t)
{
    struct conn *c = t->data;
    if (c->deadline == 0)
        return;
    uint64_t now = uv_now(c->srv->loop);
    if (now < c->deadline) {
        c->timer_due = c->deadline;
        uv_timer_start(t, timer_fired, c->deadline - now, 0);
        return;
    }
    c->deadline = 0;
    switch (c->state) {
    case C_IDLE:
        kp_trace("http", "idle timeout -> close");
        conn_close(c);
        break;
    case C_HEADERS:
        conn_fail(c, 408, "timed out waiting for the request headers");
        break;
    case C_BODY:
        conn_fail(c, 408, "timed out waiting for the request body");
        break;
    case C_HANDLER:
        break;
    }
}

/* --- llhttp callbacks ---------------------------------------------------- */

static int cb_message_begin(llhttp_t *p)
{
    struct conn *c = p->data;
    if (c->ex == NULL) {
        c->ex = ex_new(c);
        if (c->ex == NULL)
            return -1;
    }
    c->state = C_HEADERS;
    conn_arm_timer(c, c->srv->cfg.limits.header_timeout_ms);
    return 0;
}

static int header_bytes_add(struct conn *c, size_t n)
{
    struct kp_http_exchange *ex = c->ex;
    ex->header_bytes += n;
    if (ex->header_bytes > c->srv->cfg.limits.max_header_bytes) {
        ex->error_status = 431;
        ex->error_msg = "request headers are too large";
        return -1;
    }
    return 0;
}

static int cb_url(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    if (header_bytes_add(c, len) != 0)
        return -1;
    c->ex->url_len += len;
    return kp_buf_append(&c->ex->text, at, len) == 0 ? 0 : -1;
}

static int cb_url_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    return kp_buf_append(&c->ex->text, "", 1) == 0 ? 0 : -1;
}

static int cb_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    struct kp_http_exchange *ex = c->ex;
    if (header_bytes_add(c, len + 4) != 0)
        return -1;
    if (ex->n_spans == 0 || ex->in_value) {
        if (ex->n_spans >= c->srv->cfg.limits.max_headers) {
            ex->error_status = 431;
            ex->error_msg = "too many request headers";
            return -1;
        }
        if (ex->n_spans == ex->cap_spans) {
            unsigned cap = ex->cap_spans ? ex->cap_spans * 2 : 16;
            struct hdr_span *s = kp_realloc(ex->spans, cap * sizeof(*s));
            if (s == NULL)
                return -1;
            ex->spans = s;
            ex->cap_spans = cap;
        }
        ex->spans[ex->n_spans].name_off = ex->text.len;
        ex->spans[ex->n_spans].name_len = 0;
        ex->spans[ex->n_spans].value_off = 0;
        ex->spans[ex->n_spans].value_len = 0;
        ex->n_spans++;
        ex->in_value = false;
    }
    ex->spans[ex->n_spans - 1].name_len += len;
    return kp_buf_append(&ex->text, at, len) == 0 ? 0 : -1;
}

static int cb_header_field_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    struct kp_http_exchange *ex = c->ex;
    if (kp_buf_append(&ex->text, "", 1) != 0)
        return -1;
    ex->in_value = true;
    ex->value_end = SIZE_MAX;
    ex->spans[ex->n_spans - 1].value_off = ex->text.len;
    return 0;
}

static int cb_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    struct kp_http_exchange *ex = c->ex;
    if (header_bytes_add(c, len) != 0)
        return -1;
    /* Request smuggling shapes. llhttp joins an obs-fold continuation line to
     * the value, so a fold shows as a second piece of the same value that does
     * not start where the first ended (the CRLF and whitespace lie between).
     * The input buffer is not compacted while headers are being read, so
     * offsets into it are stable. */
    size_t off = (size_t)(at - c->in.data);
    if (ex->value_end != SIZE_MAX && off != ex->value_end) {
        ex->error_status = 400;
        ex->error_msg = "obsolete line folding (obs-fold) in a header value";
        return -1;
    }
    ex->value_end = off + len;
    /* A value must not carry CR, LF or NUL. */
    if (kp_has_crlf_nul(at, len)) {
        ex->error_status = 400;
        ex->error_msg = "invalid character (CR, LF or NUL) in a header value";
        return -1;
    }
    ex->spans[ex->n_spans - 1].value_len += len;
    return kp_buf_append(&ex->text, at, len) == 0 ? 0 : -1;
}

static int cb_header_value_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    struct hdr_span *s = &c->ex->spans[c->ex->n_spans - 1];
    /* Trailing whitespace is not part of the value (RFC 9112 5). */
    while (s->value_len > 0 && (c->ex->text.data[s->value_off + s->value_len - 1] == ' ' ||
                                c->ex->text.data[s->value_off + s->value_len - 1] == '\t')) {
        s->value_len--;
        c->ex->text.len--;
    }
    return kp_buf_append(&c->ex->text, "", 1) == 0 ? 0 : -1;
}

static bool name_is(const struct kp_http_header *h, const char *name)
{
    return h->name_len == strlen(name) && strncasecmp(h->name, name, h->name_len) == 0;
}

/* Fill ex->req from the accumulated text; refuse smuggling shapes. */
static int build_request(struct conn *c, llhttp_t *p)
{
    struct kp_http_exchange *ex = c->ex;
    struct kp_http_request *req = &ex->req;
    struct kp_http_header *hs = kp_arena_alloc(&ex->arena, (ex->n_spans + 1) * sizeof(*hs));
    if (hs == NULL)
        return -1;
    unsigned n_cl = 0, n_te = 0;
    for (unsigned i = 0; i < ex->n_spans; i++) {
        hs[i].name = ex->text.data + ex->spans[i].name_off;
        hs[i].name_len = ex->spans[i].name_len;
        hs[i].value = ex->text.data + ex->spans[i].value_off;
        hs[i].value_len = ex->spans[i].value_len;
        if (name_is(&hs[i], "content-length"))
            n_cl++;
        else if (name_is(&hs[i], "transfer-encoding"))
            n_te++;
    }
    if ((n_cl > 0 && n_te > 0) || n_cl > 1) {
        ex->error_status = 400;
        ex->error_msg = n_cl > 1 ? "more than one Content-Length header"
                                 : "Content-Length and Transfer-Encoding together";
        return -1;
    }
    req->headers = hs;
    req->n_headers = ex->n_spans;
    req->method = llhttp_method_name((llhttp_method_t)llhttp_get_method(p));
    req->target = ex->text.len ? ex->text.data : "";
    req->version_major = llhttp_get_http_major(p);
    req->version_minor = llhttp_get_http_minor(p);
    const char *q = memchr(req->target, '?', ex->url_len);
    if (q != NULL) {
        req->path = kp_arena_strndup(&ex->arena, req->target, (size_t)(q - req->target));
        req->query = q + 1;
    } else {
        req->path = req->target;
        req->query = "";
    }
    if (req->path == NULL)
        return -1;
    ex->is_head = strcmp(req->method, "HEAD") == 0;
    ex->keep_alive = llhttp_should_keep_alive(p);
    return 0;
}

static int cb_headers_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    struct kp_http_exchange *ex = c->ex;
    if (build_request(c, p) != 0)
        return -1;
    if (p->upgrade || p->method == HTTP_CONNECT) {
        ex->error_status = 501;
        ex->error_msg = "protocol upgrades and CONNECT are not supported";
        return -1;
    }
    if (ex->req.version_major != 1) {
        ex->error_status = 505;
        ex->error_msg = "only HTTP versions 1.0 and 1.1 are supported";
        return -1;
    }
    const struct kp_http_limits *lim = &c->srv->cfg.limits;
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > lim->max_body_bytes) {
        ex->error_status = 413;
        ex->error_msg = "request body is too large";
        return -1;
    }
    const char *expect = kp_http_request_header(&ex->req, "expect");
    if (expect != NULL) {
        if (strcasecmp(expect, "100-continue") != 0) {
            ex->error_status = 417;
            ex->error_msg = "unsupported Expect header (only 100-continue)";
            return -1;
        }
        if (ex->req.version_minor >= 1 &&
            conn_write(c, "HTTP/1.1 100 Continue\r\n\r\n", 25, NULL, 0, NULL, 0) != KP_OK)
            return -1;
    }
    c->state = C_BODY;
    conn_arm_timer(c, lim->body_timeout_ms);
    return 0;
}

static int cb_body(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = p->data;
    struct kp_http_exchange *ex = c->ex;
    if (ex->body.len + len > c->srv->cfg.limits.max_body_bytes) {
        ex->error_status = 413;
        ex->error_msg = "request body is too large";
        return -1;
    }
    return kp_buf_append(&ex->body, at, len) == 0 ? 0 : -1;
}

static int cb_message_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    c->state = C_HANDLER;
    conn_disarm_timer(c);
    return HPE_PAUSED;
}

static void settings_init(void)
{
    if (settings_ready)
        return;
    llhttp_settings_init(&parser_settings);
    parser_settings.on_message_begin = cb_message_begin;
    parser_settings.on_url = cb_url;
    parser_settings.on_url_complete = cb_url_complete;
    parser_settings.on_header_field = cb_header_field;
    parser_settings.on_header_field_complete = cb_header_field_complete;
    parser_settings.on_header_value = cb_header_value;
    parser_settings.on_header_value_complete = cb_header_value_complete;
    parser_settings.on_headers_complete = cb_headers_complete;
    parser_settings.on_body = cb_body;
    parser_settings.on_message_complete = cb_message_complete;
    settings_ready = true;
}

/* --- reading and dispatch ------------------------------------------------ */

static void dispatch(struct conn *c)
{
    struct kp_http_exchange *ex = c->ex;
    struct kp_http_server *srv = c->srv;
    ex->req.body = ex->body.len ? ex->body.data : "";
    ex->req.body_len = ex->body.len;
    ex->dispatched = true;
    srv->inflight++;
    srv->cfg.handler(ex, &ex->req, srv->cfg.arg);
}

static void read_resume(struct conn *c);

static void parse_pending(struct conn *c)
{
    c->in_parse = true;
    while (!c->closing && !c->shutting && c->state != C_HANDLER && c->in_off < c->in.len) {
        const char *start = c->in.data + c->in_off;
        size_t len = c->in.len - c->in_off;
        llhttp_errno_t err = llhttp_execute(&c->parser, start, len);
        if (err == HPE_OK) {
            c->in_off = c->in.len;
            break;
        }
        if (err == HPE_PAUSED) {
            c->in_off = (size_t)(llhttp_get_error_pos(&c->parser) - c->in.data);
            dispatch(c);
            continue;
        }
        struct kp_http_exchange *ex = c->ex;
        int status = ex && ex->error_status ? ex->error_status : 400;
        const char *msg = ex && ex->error_msg ? ex->error_msg : llhttp_get_error_reason(&c->parser);
        char text[256];
        snprintf(text, sizeof(text), "malformed request: %s", msg ? msg : "parse error");
        kp_trace("http", "parse error %d (%s) -> answer %d and close", (int)err, text, status);
        conn_fail(c, status, ex && ex->error_msg ? ex->error_msg : text);
        break;
    }
    c->in_parse = false;
    /* Compact only outside the header section (see cb_header_value). */
    if (c->in_off == c->in.len && c->state != C_HEADERS) {
        c->in.len = 0;
        c->in_off = 0;
    }
    if (c->state == C_IDLE && c->ex == NULL && !c->closing && !c->shutting) {
        if (c->srv->draining) {
            conn_close(c);
            return;
        }
        conn_arm_timer(c, c->srv->cfg.limits.idle_timeout_ms);
    }
    read_resume(c);
}

/* --- TLS ------------------------------------------------------------------
 *
 * With a kp_tls_server in the listener's config every connection gets an
 * SSL object over two memory BIOs: what the socket reads is written into
 * the read BIO, OpenSSL's output (handshake, records, alerts) is taken from
 * the write BIO and written to the socket like any answer, so `queued`,
 * the watermark and the drain work on the bytes actually sent. Plaintext
 * lands in c->in, where the parser finds it as on plain TCP.
 *
 *   accept -> handshake (within header_timeout_ms, or closed) -> requests
 *          \-> first byte not a TLS record: plain HTTP gets a 400 in the
 *              clear, anything else is closed
 *
 * Pipelining and backpressure: plaintext is taken from OpenSSL only while
 * c->in holds less than MAX_PIPELINE_BUFFER unparsed bytes; past that the
 * socket stops being read, and read_resume() pumps what OpenSSL still
 * holds once the handler has answered. */

/* "127.0.0.1:5000" of the connection's peer, or "unknown peer". */
static void conn_peer(struct conn *c, char *out, size_t len)
{
    struct sockaddr_storage ss;
    int sl = sizeof(ss);
    char host[INET6_ADDRSTRLEN] = "";
    snprintf(out, len, "unknown peer");
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) != 0)
        return;
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
        snprintf(out, len, "%s:%d", host, ntohs(in->sin_port));
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        snprintf(out, len, "[%s]:%d", host, ntohs(in6->sin6_port));
    }
}

int kp_http_peer_addr(struct kp_http_exchange *ex, char *out, size_t len)
{
    conn_peer(ex->conn, out, len);
    return KP_OK;
}

bool kp_http_tls(const struct kp_http_exchange *ex)
{
    return ex->conn->ssl != NULL && !ex->conn->tls_plain;
}

/* Move what OpenSSL wrote into the write BIO to the socket: straight away
 * when nothing is queued and the socket takes it, else queued. */
static int tls_flush(struct conn *c)
{
    BIO *wbio = SSL_get_wbio(c->ssl);
    size_t n = BIO_ctrl_pending(wbio);
    if (n == 0)
        return KP_OK;
    if (c->closing) {
        (void)BIO_reset(wbio);
        return KP_ECLOSED;
    }
    struct write_req *w = kp_malloc(sizeof(*w) + n);
    if (w == NULL)
        return KP_ENOMEM;
    if (BIO_read(wbio, w->data, (int)n) != (int)n) {
        kp_free(w);
        return KP_EIO;
    }
    size_t skip = 0;
    if (c->queued == 0) {
        uv_buf_t b = uv_buf_init(w->data, (unsigned)n);
        int r = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
        if (r >= 0)
            skip = (size_t)r;
        else if (r != UV_EAGAIN && r != UV_ENOSYS) {
            kp_free(w);
            return kp_err_from_uv(r);
        }
    }
    if (skip == n) {
        kp_free(w);
        return KP_OK;
    }
    w->conn = c;
    w->len = n - skip;
    uv_buf_t buf = uv_buf_init(w->data + skip, (unsigned)(n - skip));
    int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &buf, 1, write_done);
    if (rc != 0) {
        kp_free(w);
        return kp_err_from_uv(rc);
    }
    c->queued += n - skip;
    return KP_OK;
}

/* The pieces are joined so a chunk (size line, data, CRLF) is one record. */
static int tls_write(struct conn *c, const void *a, size_t alen, const void *b, size_t blen,
                     const void *d, size_t dlen)
{
    const void *p[3] = {a, b, d};
    size_t n[3] = {alen, blen, dlen};
    int pieces = (alen > 0) + (blen > 0) + (dlen > 0);
    if (pieces > 1 && alen + blen + dlen <= 16384) {
        c->plain.len = 0;
        for (int i = 0; i < 3; i++)
            if (n[i] > 0 && kp_buf_append(&c->plain, p[i], n[i]) != 0)
                return KP_ENOMEM;
        p[0] = c->plain.data;
        n[0] = c->plain.len;
        n[1] = n[2] = 0;
    }
    for (int i = 0; i < 3; i++) {
        if (n[i] == 0)
            continue;
        ERR_clear_error();
        if (!c->tls_done || SSL_write(c->ssl, p[i], (int)n[i]) != (int)n[i]) {
            ERR_clear_error();
            return KP_EIO;
        }
    }
    return tls_flush(c);
}

/* A handshake or record error: log it (bounded), send OpenSSL's alert and
 * close. */
static void tls_failed(struct conn *c, const char *what, int ssl_err)
{
    struct kp_http_server *srv = c->srv;
    char why[300], peer[80], subject[256] = "";
    kp_tls__errors(why, sizeof(why));
    if (ssl_err == SSL_ERROR_SSL && SSL_get_verify_result(c->ssl) != X509_V_OK)
        snprintf(why, sizeof(why), "client certificate not accepted: %s",
                 X509_verify_cert_error_string(SSL_get_verify_result(c->ssl)));
    if (c->tls_refused != NULL)
        snprintf(subject, sizeof(subject), " (client certificate %s)", c->tls_refused);
    conn_peer(c, peer, sizeof(peer));
    int64_t window = (int64_t)(uv_now(srv->loop) / 10000);
    if (window != srv->tls_log_window) {
        if (srv->tls_unlogged > 0)
            kp_warn("http", "%s listener: %u more TLS failures were not logged", srv->cfg.name,
                    srv->tls_unlogged);
        srv->tls_log_window = window;
        srv->tls_logged = srv->tls_unlogged = 0;
    }
    if (srv->tls_logged < 5) {
        srv->tls_logged++;
        kp_warn("http", "%s listener: TLS %s with %s failed: %s%s -> close", srv->cfg.name, what,
                peer, why, subject);
    } else {
        srv->tls_unlogged++;
    }
    c->tls_failed = true;
    kp_metric_family_add(srv->tls_failures, (const char *const[]){srv->cfg.name}, 1);
    if (c->tls_done) {
        /* A bad record mid-connection: abort what the handler holds. */
        conn_close(c);
        return;
    }
    tls_flush(c); /* the alert, read by the client before the close */
    conn_close_gracefully(c);
}

/* @n plaintext bytes were appended to c->in. */
static void conn_got_plain(struct conn *c, size_t n)
{
    c->in.len += n;
    if (c->state == C_IDLE && c->ex == NULL)
        conn_disarm_timer(c);
    if (c->state == C_HANDLER)
        return; /* parsed once the handler has answered */
    parse_pending(c);
}

/* Take plaintext from OpenSSL while there is room for it. */
static void tls_read_plain(struct conn *c)
{
    while (!c->closing && !c->shutting) {
        if (c->state == C_HANDLER && c->in.len - c->in_off > MAX_PIPELINE_BUFFER) {
            if (c->reading) {
                uv_read_stop((uv_stream_t *)&c->tcp);
                c->reading = false;
            }
            return;
        }
        if (kp_buf_reserve(&c->in, TLS_PLAIN_CHUNK) != 0) {
            conn_close(c);
            return;
        }
        ERR_clear_error();
        int r = SSL_read(c->ssl, c->in.data + c->in.len, (int)(c->in.cap - c->in.len - 1));
        if (r <= 0) {
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ) {
                tls_flush(c); /* a key update's answer, a session ticket */
                return;
            }
            if (e == SSL_ERROR_ZERO_RETURN) {
                kp_trace("http", "client close_notify -> close");
                conn_close(c);
                return;
            }
            tls_failed(c, "read", e);
            return;
        }
        conn_got_plain(c, (size_t)r);
    }
}

static void tls_pump(struct conn *c)
{
    if (c->in_pump) {
        c->pump_again = true;
        return;
    }
    c->in_pump = true;
    do {
        c->pump_again = false;
        if (!c->tls_done) {
            ERR_clear_error();
            int r = SSL_do_handshake(c->ssl);
            if (r != 1) {
                int e = SSL_get_error(c->ssl, r);
                if (e == SSL_ERROR_WANT_READ)
                    tls_flush(c);
                else
                    tls_failed(c, "handshake", e);
                break;
            }
            c->tls_done = true;
            kp_trace("http", "TLS handshake done (%s) -> read requests", SSL_get_version(c->ssl));
            if (tls_flush(c) != KP_OK) {
                conn_close(c);
                break;
            }
        }
        tls_read_plain(c);
    } while (c->pump_again && !c->closing && !c->shutting);
    c->in_pump = false;
}

/* OpenSSL holds plaintext, or ciphertext not yet decrypted. */
static bool tls_pending(struct conn *c)
{
    return SSL_pending(c->ssl) > 0 || BIO_ctrl_pending(SSL_get_rbio(c->ssl)) > 0;
}

/* Bytes from the socket on a TLS connection. */
static void tls_received(struct conn *c, const char *data, size_t n)
{
    if (!c->tls_seen) {
        c->tls_seen = true;
        /* 0x16: a TLS handshake record. An upper-case letter: a plain HTTP
         * request (a method), which gets a readable answer. */
        if ((unsigned char)data[0] != 0x16) {
            if (data[0] >= 'A' && data[0] <= 'Z') {
                c->tls_plain = true;
                kp_trace("http", "plain HTTP on a TLS port -> answer 400 and close");
                conn_fail(c, 400,
                          "this port speaks TLS: use https:// (plain HTTP is not served here)");
            } else {
                kp_trace("http", "not a TLS handshake -> close");
                conn_close(c);
            }
            return;
        }
    }
    if (BIO_write(SSL_get_rbio(c->ssl), data, (int)n) != (int)n) {
        conn_close(c);
        return;
    }
    tls_pump(c);
}

/* OpenSSL's verdict on a client certificate, unchanged; the subject of one
 * it refuses is kept for the log line (after a failed verification OpenSSL
 * no longer shows the peer's certificate). */
static int tls_verify(int ok, X509_STORE_CTX *store)
{
    SSL *ssl = X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx());
    struct conn *c = ssl != NULL ? SSL_get_app_data(ssl) : NULL;
    X509 *leaf = X509_STORE_CTX_get0_cert(store);
    if (!ok && c != NULL && c->tls_refused == NULL && leaf != NULL) {
        char name[200];
        X509_NAME_oneline(X509_get_subject_name(leaf), name, sizeof(name));
        c->tls_refused = kp_strdup(name);
    }
    return ok;
}

/* A new connection's SSL object, from the listener's current context. */
static int tls_accept(struct conn *c)
{
    SSL_CTX *ctx = kp_tls__acquire(c->srv->cfg.tls);
    c->ssl = SSL_new(ctx);
    if (c->ssl != NULL && SSL_CTX_get_verify_mode(ctx) != SSL_VERIFY_NONE) {
        SSL_set_app_data(c->ssl, c);
        SSL_set_verify(c->ssl, SSL_CTX_get_verify_mode(ctx), tls_verify);
    }
    SSL_CTX_free(ctx); /* the SSL object holds its own reference */
    if (c->ssl == NULL)
        return KP_ENOMEM;
    BIO *rbio = BIO_new(BIO_s_mem()), *wbio = BIO_new(BIO_s_mem());
    if (rbio == NULL || wbio == NULL) {
        BIO_free(rbio);
        BIO_free(wbio);
        return KP_ENOMEM;
    }
    /* An empty read BIO means "wait for more", not end of input. */
    BIO_set_mem_eof_return(rbio, -1);
    SSL_set_bio(c->ssl, rbio, wbio);
    SSL_set_accept_state(c->ssl);
    return KP_OK;
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct conn *c = h->data;
    (void)suggested;
    buf->base = c->srv->rbuf;
    buf->len = READ_CHUNK;
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = s->data;
    (void)buf;
    if (nread == UV_ENOBUFS) {
        conn_close(c);
        return;
    }
    if (nread < 0) {
        kp_trace("http", "client %s -> close", nread == UV_EOF ? "eof" : uv_strerror((int)nread));
        conn_close(c);
        return;
    }
    if (nread == 0)
        return;
    if (c->shutting) {
        c->in.len = c->in_off = 0; /* lingering: discard */
        return;
    }
    if (c->ssl != NULL) {
        tls_received(c, buf->base, (size_t)nread);
        return;
    }
    if (kp_buf_append(&c->in, buf->base, (size_t)nread) != 0) {
        conn_close(c);
        return;
    }
    if (c->state == C_IDLE && c->ex == NULL)
        conn_disarm_timer(c);
    if (c->state == C_HANDLER) {
        if (c->in.len - c->in_off > MAX_PIPELINE_BUFFER && c->reading) {
            uv_read_stop(s);
            c->reading = false;
        }
        return;
    }
    parse_pending(c);
}

static void read_resume(struct conn *c)
{
    if (c->closing)
        return;
    if (!c->reading && uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb) == 0)
        c->reading = true;
    /* Requests the client sent while the handler was busy may be in
     * OpenSSL already; no socket event would bring them. */
    if (c->ssl != NULL && c->tls_done && !c->shutting && tls_pending(c))
        tls_pump(c);
}

static void on_connection(uv_stream_t *listener, int status)
{
    struct kp_http_server *srv = listener->data;
    if (status < 0 || srv->draining || srv->closing)
        return;
    struct conn *c = kp_calloc(1, sizeof(*c));
    if (c == NULL)
        goto err;
    c->srv = srv;
    kp_buf_init(&c->in);
    kp_buf_init(&c->plain);
    if (uv_tcp_init(srv->loop, &c->tcp) != 0)
        goto err_after_alloc;
    c->tcp.data = c;
    c->open_handles = 1;
    uv_timer_init(srv->loop, &c->timer);
    c->timer.data = c;
    c->open_handles = 2;
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    srv->n_conns++;
    c->counted = true;
    kp_metrics_http_conn_delta(srv->cfg.name, 1);
    llhttp_init(&c->parser, HTTP_REQUEST, &parser_settings);
    c->parser.data = c;
    if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0 ||
        (srv->cfg.tls != NULL && tls_accept(c) != KP_OK)) {
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    c->state = C_IDLE;
    /* A new connection gets the header deadline, not the idle one, so a
     * client that connects and says nothing is dropped quickly. */
    conn_arm_timer(c, srv->cfg.limits.header_timeout_ms);
    read_resume(c);
    return;

err_after_alloc:
    kp_free(c);
err:
    /* Accept and drop, so the listener does not spin on a pending socket. */
    {
        uv_tcp_t tmp;
        if (uv_tcp_init(srv->loop, &tmp) == 0) {
            uv_accept(listener, (uv_stream_t *)&tmp);
            uv_close((uv_handle_t *)&tmp, NULL);
        }
    }
}

/* --- server -------------------------------------------------------------- */

static void free_listener_owner(uv_handle_t *h)
{
    kp_free(h->data);
}

int kp_http_server_start(struct kp_http_server **out, uv_loop_t *loop,
                         const struct kp_http_server_config *cfg, const char *addr, int *bound_port,
                         char *errmsg, size_t errlen)
{
    struct sockaddr_storage ss;
    char why[200];
    int fd = -1;
    settings_init();
    int rc = kp_http_parse_addr(addr, &ss, errmsg, errlen);
    if (rc != KP_OK)
        return rc;
    if (ss.ss_family == AF_INET && bound_port && *bound_port > 0)
        ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)*bound_port);
    else if (ss.ss_family == AF_INET6 && bound_port && *bound_port > 0)
        ((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)*bound_port);
    struct kp_http_server *srv = kp_calloc(1, sizeof(*srv));
    if (srv == NULL) {
        snprintf(errmsg, errlen, "%s: out of memory", cfg->name);
        return KP_ENOMEM;
    }
    srv->loop = loop;
    srv->cfg = *cfg;
    rc = listen_socket(&ss, &fd, why, sizeof(why));
    if (rc != KP_OK) {
        snprintf(errmsg, errlen, "%s listener: bind %s: %s", cfg->name, addr, why);
        goto err_after_alloc;
    }
    uv_tcp_init(loop, &srv->listener);
    srv->listener.data = srv;
    int uvrc = uv_tcp_open(&srv->listener, fd);
    if (uvrc == 0)
        uvrc = uv_listen((uv_stream_t *)&srv->listener, 1024, on_connection);
    if (uvrc != 0) {
        snprintf(errmsg, errlen, "%s listener: listen %s: %s", cfg->name, addr, uv_strerror(uvrc));
        rc = kp_err_from_uv(uvrc);
        goto err_after_listener;
    }
    srv->listening = true;
    if ((srv->rbuf = kp_malloc(READ_CHUNK)) == NULL) {
        snprintf(errmsg, errlen, "%s: out of memory", cfg->name);
        rc = KP_ENOMEM;
        goto err_after_listener;
    }
    if (cfg->tls != NULL)
        srv->tls_failures = kp_metric_family_counter(
            "keyplane_tls_handshake_failures_total",
            "TLS handshakes (and records) that failed, by listener: bad or missing client "
            "certificates, no common protocol, garbage",
            1, (const char *const[]){"listener"}, 8);
    if (bound_port) {
        struct sockaddr_storage got;
        int len = sizeof(got);
        uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&got, &len);
        *bound_port = ntohs(got.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&got)->sin6_port
                                                      : ((struct sockaddr_in *)&got)->sin_port);
    }
    *out = srv;
    return KP_OK;

err_after_listener:
    /* The listener handle owns fd now; closing it frees srv later. */
    uv_close((uv_handle_t *)&srv->listener, free_listener_owner);
    return rc;
err_after_alloc:
    kp_free(srv);
    return rc;
}

static void listener_closed(uv_handle_t *h)
{
    struct kp_http_server *srv = h->data;
    srv->listening = false;
    server_maybe_closed(srv);
}

static void server_maybe_closed(struct kp_http_server *srv)
{
    if (!srv->closing || srv->listening || srv->n_conns > 0)
        return;
    void (*cb)(void *) = srv->close_cb;
    void *arg = srv->close_arg;
    kp_free(srv->rbuf);
    kp_free(srv);
    if (cb)
        cb(arg);
}

static void stop_listening(struct kp_http_server *srv)
{
    if (srv->listening && !uv_is_closing((uv_handle_t *)&srv->listener))
        uv_close((uv_handle_t *)&srv->listener, listener_closed);
}

void kp_http_server_drain(struct kp_http_server *srv)
{
    if (srv->draining)
        return;
    srv->draining = true;
    stop_listening(srv);
    /* Idle connections get a short grace instead of an immediate close: a
     * request the client already sent may still be unread in the socket, and
     * closing under it would drop it. One that arrives is answered with
     * Connection: close. */
    uint64_t grace = srv->cfg.limits.idle_timeout_ms < DRAIN_IDLE_GRACE_MS
                         ? srv->cfg.limits.idle_timeout_ms
                         : DRAIN_IDLE_GRACE_MS;
    for (struct conn *c = srv->conns; c != NULL; c = c->next)
        if (c->ex == NULL && c->state == C_IDLE)
            conn_arm_timer(c, grace);
}

unsigned kp_http_server_inflight(const struct kp_http_server *srv)
{
    return srv->inflight;
}

unsigned kp_http_server_connections(const struct kp_http_server *srv)
{
    return srv->n_conns;
}

void kp_http_server_close(struct kp_http_server *srv, void (*cb)(void *arg), void *arg)
{
    srv->close_cb = cb;
    srv->close_arg = arg;
    srv->draining = true;
    srv->closing = true;
    stop_listening(srv);
    struct conn *c = srv->conns;
    while (c != NULL) {
        struct conn *next = c->next;
        conn_close(c);
        c = next;
    }
    server_maybe_closed(srv);
}

/* 16 random bytes in hex (32 characters and a NUL) for a request id,
 * from the thread's pool (kp_random_pooled: ids are no secrets, and the
 * process never forks). */
static int request_id_random(char out[33])
{
    unsigned char raw[16];
    if (kp_random_pooled(raw, sizeof(raw)) != KP_OK)
        return KP_EIO;
    kp_hex_encode(raw, sizeof(raw), out);
    return KP_OK;
}

const char *kp_http_request_id(struct kp_http_exchange *ex, const struct kp_http_request *req)
{
    const char *given = kp_http_request_header(req, "x-request-id");
    if (given != NULL) {
        size_t n = strlen(given);
        bool ok = n > 0 && n <= 128;
        for (size_t i = 0; ok && i < n; i++) {
            char c = given[i];
            ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '-' || c == '_' || c == '.' || c == ':';
        }
        if (ok)
            return given;
    }
    char *id = kp_http_alloc(ex, 4 + 32 + 1);
    if (id == NULL)
        return "req_unknown";
    memcpy(id, "req_", 4);
    if (request_id_random(id + 4) != KP_OK)
        return "req_unknown";
    return id;
}

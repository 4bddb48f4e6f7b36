/* One generator thread: a libuv loop, its share of the connections (each
 * reading its answers with response.c), and (open loop) a timerfd that wakes
 * the loop when the next request is due.
 *
 * The happy path. The thread opens its connections (CONNECTING), waits at
 * run.c's barriers, then RUNNING: in closed loop every connection sends a
 * request, and sends the next one the moment an answer ends; in open loop
 * the timerfd fires at each due time and the due requests go out on idle
 * connections. When the duration is over or the count is sent, the thread
 * stops sending (DRAINING), waits for the answers still out, and closes
 * everything (DONE).
 *
 *   CONNECTING ──all open──▶ RUNNING ──nothing left to send──▶ DRAINING
 *        │                      │                                  │
 *        └──connect failed──────┴──interrupt / deadline───────────┴─▶ DONE
 *
 * A connection: CLOSED → CONNECTING → IDLE ⇄ BUSY → CLOSING → CLOSED.
 *
 * How it fails. A first connection that cannot be opened ends the run with
 * the reason (the target is unreachable); later ones count as connect errors
 * and are retried on the next tick. A request that gets no full answer
 * within --timeout counts as a timeout and its connection is replaced; one
 * that meets a closed socket, a reset or a malformed answer counts as
 * closed, read or parse. In open loop, requests due while every connection
 * is busy wait (counted as "waited"), and keep their due time as the origin
 * of their latency; the ones never sent by the deadline (end + --timeout)
 * count as unsent.
 *
 * https: a connection counts as open once its TLS handshake is done (so
 * handshakes are never measured; each replaced connection makes a new
 * one), OpenSSL works on memory BIOs, requests are encrypted into one
 * write each, and answers are decrypted before response.c parses them.
 *
 * Timing: uv_hrtime() and the timerfd both read CLOCK_MONOTONIC, and the
 * thread asks for a 1 ns timer slack, so a request leaves within a few
 * microseconds of its due time when the thread keeps up (the lag histogram
 * says whether it did). */
#include <arpa/inet.h>
#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "core/core.h"
#include "response.h"
#include "worker.h"

#define TICK_MS           10
#define READ_BUFFER_BYTES 65536
#define RETRY_NS          100000000ull /* between attempts to reopen a connection */

enum conn_state { CONN_CLOSED, CONN_CONNECTING, CONN_IDLE, CONN_BUSY, CONN_CLOSING };

struct kp_bench_conn {
    uv_tcp_t tcp;
    uv_connect_t connect_req;
    uv_write_t write_req;
    struct kp_bench_response resp;
    struct kp_bench_worker *w;
    enum conn_state state;
    bool retry_later; /* reconnect on the next tick, not at once */
    bool write_pending;
    bool measured; /* the request in flight counts */
    uint64_t opened_ns;
    uint64_t origin_ns; /* latency counts from here */
    uint64_t sent_ns;
    uint64_t first_byte_ns;
    char *rbuf;
    SSL *ssl;            /* https, else NULL */
    bool tls_ready;      /* handshake done */
    unsigned tls_writes; /* ciphertext writes in flight */
};

/* A write of ciphertext (its own request: handshake flights and requests
 * may overlap). */
struct tls_write {
    uv_write_t req;
    struct kp_bench_conn *c;
    char data[];
};

static void conn_connect(struct kp_bench_conn *c);
static void conn_close(struct kp_bench_conn *c, bool retry_later);
static void conn_ready(struct kp_bench_conn *c, uint64_t now);
static void dispatch_open(struct kp_bench_worker *w);
static void finish(struct kp_bench_worker *w, bool force);

static bool open_loop(const struct kp_bench_worker *w)
{
    return w->shared->cfg->mode == KP_BENCH_OPEN_LOOP;
}

static void count_error(struct kp_bench_worker *w, int kind, bool measured)
{
    if (!measured)
        return;
    w->stats.errors[kind]++;
    atomic_store_explicit(&w->progress_errors, kp_bench_stats_errors(&w->stats),
                          memory_order_relaxed);
}

/* --- idle connections ---------------------------------------------------- */

static void idle_push(struct kp_bench_worker *w, struct kp_bench_conn *c)
{
    c->state = CONN_IDLE;
    w->idle[w->n_idle++] = c;
}

static struct kp_bench_conn *idle_pop(struct kp_bench_worker *w)
{
    return w->idle[--w->n_idle];
}

static void idle_remove(struct kp_bench_worker *w, struct kp_bench_conn *c)
{
    for (unsigned i = 0; i < w->n_idle; i++) {
        if (w->idle[i] == c) {
            w->idle[i] = w->idle[--w->n_idle];
            return;
        }
    }
}

/* --- the schedule's wake-ups (open loop) --------------------------------- */

static void timer_arm(struct kp_bench_worker *w, uint64_t due_ns)
{
    if (w->armed_ns == due_ns)
        return;
    struct itimerspec its;
    memset(&its, 0, sizeof(its));
    its.it_value.tv_sec = (time_t)(due_ns / 1000000000u);
    its.it_value.tv_nsec = (long)(due_ns % 1000000000u);
    timerfd_settime(w->timer_fd, TFD_TIMER_ABSTIME, &its, NULL);
    w->armed_ns = due_ns;
}

static void on_timer_fd(uv_poll_t *h, int status, int events)
{
    struct kp_bench_worker *w = h->data;
    uint64_t expirations;
    (void)status;
    (void)events;
    if (read(w->timer_fd, &expirations, sizeof(expirations)) < 0 && errno != EAGAIN)
        kp_warn("bench", "timerfd read: %s", strerror(errno));
    w->armed_ns = 0;
    dispatch_open(w);
}

/* --- sending ------------------------------------------------------------- */

static void on_write(uv_write_t *req, int status)
{
    struct kp_bench_conn *c = req->data;
    c->write_pending = false;
    if (status < 0 && c->state == CONN_BUSY) {
        count_error(c->w, KP_BENCH_ERR_WRITE, c->measured);
        conn_close(c, false);
    }
}

static void tls_write_done(uv_write_t *req, int status)
{
    struct tls_write *t = (struct tls_write *)req;
    struct kp_bench_conn *c = t->c;
    kp_free(t);
    c->tls_writes--;
    c->write_pending = c->tls_writes > 0;
    if (status < 0 && c->state == CONN_BUSY) {
        count_error(c->w, KP_BENCH_ERR_WRITE, c->measured);
        conn_close(c, false);
    }
}

/* Send what OpenSSL wrote into the write BIO. */
static int tls_flush(struct kp_bench_conn *c)
{
    BIO *wbio = SSL_get_wbio(c->ssl);
    size_t n = BIO_ctrl_pending(wbio);
    if (n == 0)
        return 0;
    struct tls_write *t = kp_malloc(sizeof(*t) + n);
    if (t == NULL || BIO_read(wbio, t->data, (int)n) != (int)n) {
        kp_free(t);
        return -1;
    }
    t->c = c;
    uv_buf_t buf = uv_buf_init(t->data, (unsigned)n);
    if (uv_write(&t->req, (uv_stream_t *)&c->tcp, &buf, 1, tls_write_done) != 0) {
        kp_free(t);
        return -1;
    }
    c->tls_writes++;
    c->write_pending = true;
    return 0;
}

static void send_request(struct kp_bench_conn *c, uint64_t origin_ns, bool measured, uint64_t now)
{
    struct kp_bench_worker *w = c->w;
    const struct kp_bench_request *r = &w->shared->cfg->reqs[kp_bench_picker_next(&w->picker)];
    c->state = CONN_BUSY;
    w->busy++;
    c->measured = measured;
    kp_bench__response_expect(&c->resp);
    c->origin_ns = origin_ns;
    c->sent_ns = now;
    c->first_byte_ns = 0;
    if (measured)
        w->stats.bytes_sent += r->len;
    if (c->ssl != NULL) {
        ERR_clear_error();
        if (SSL_write(c->ssl, r->bytes, (int)r->len) != (int)r->len || tls_flush(c) != 0) {
            ERR_clear_error();
            count_error(w, KP_BENCH_ERR_WRITE, measured);
            conn_close(c, false);
        }
        return;
    }
    /* The request bytes are shared and outlive the loop: no copy. */
    uv_buf_t buf = uv_buf_init(r->bytes, (unsigned)r->len);
    c->write_req.data = c;
    int rv = uv_write(&c->write_req, (uv_stream_t *)&c->tcp, &buf, 1, on_write);
    if (rv != 0) {
        count_error(w, KP_BENCH_ERR_WRITE, measured);
        conn_close(c, false);
        return;
    }
    c->write_pending = true;
}

/* Closed loop: may this thread send another request at @now? */
static bool closed_may_send(struct kp_bench_worker *w, uint64_t now)
{
    const struct kp_bench_shared *sh = w->shared;
    if (w->phase != KP_BENCH_RUNNING)
        return false;
    if (now >= sh->stop_ns)
        return false;
    if (w->request_limit && now >= sh->measure_ns && w->issued_measured >= w->request_limit)
        return false;
    return true;
}

static void closed_send(struct kp_bench_conn *c, uint64_t now)
{
    struct kp_bench_worker *w = c->w;
    bool measured = now >= w->shared->measure_ns;
    if (measured)
        w->issued_measured++;
    send_request(c, now, measured, now);
}

/* Open loop: send every due request that has a free connection, then sleep
 * until the next one is due, or until a connection frees up if some are due
 * already. */
static void dispatch_open(struct kp_bench_worker *w)
{
    if (w->phase != KP_BENCH_RUNNING)
        return;
    uint64_t now = uv_hrtime();
    for (;;) {
        uint64_t global, due;
        while (w->n_idle > 0 && kp_bench_sched_take(&w->sched, now, &global, &due)) {
            bool measured = global >= w->shared->warmup_requests;
            if (measured) {
                kp_bench_hist_record(&w->stats.lag, now - due);
                if (w->starved)
                    w->stats.waited++;
            }
            send_request(idle_pop(w), due, measured, now);
        }
        uint64_t next = kp_bench_sched_next_time(&w->sched);
        if (next == KP_BENCH_NEVER) {
            w->phase = KP_BENCH_DRAINING;
            if (w->busy == 0)
                finish(w, false);
            return;
        }
        if (next <= now && w->n_idle == 0) {
            w->starved = true; /* the next free connection takes it */
            return;
        }
        w->starved = false;
        now = uv_hrtime();
        if (next > now) {
            timer_arm(w, next);
            return;
        }
    }
}

/* --- answers ------------------------------------------------------------- */

static void record_answer(struct kp_bench_conn *c, uint64_t now)
{
    struct kp_bench_stats *s = &c->w->stats;
    if (!c->measured) {
        s->warmup_completed++;
        atomic_store_explicit(&c->w->progress_warmup, s->warmup_completed, memory_order_relaxed);
        return;
    }
    const struct kp_bench_response *r = &c->resp;
    uint64_t latency = now - c->origin_ns;
    kp_bench_hist_record(&s->latency, latency);
    kp_bench_hist_record(&s->ttfb, c->first_byte_ns - c->origin_ns);
    s->status[r->status >= 100 && r->status < 600 ? r->status : 0]++;
    if (r->sse) {
        s->streams++;
        kp_bench_hist_record(&s->stream_total, latency);
        kp_bench_hist_record(&s->events, r->events);
        if (r->events > 0)
            kp_bench_hist_record(&s->first_event, r->first_event_ns - c->origin_ns);
    }
    s->completed++;
    s->last_done_ns = now;
    atomic_store_explicit(&c->w->progress_done, s->completed, memory_order_relaxed);
}

static void answer_done(struct kp_bench_conn *c, uint64_t now)
{
    struct kp_bench_worker *w = c->w;
    record_answer(c, now);
    c->state = CONN_IDLE;
    w->busy--;
    /* An answer that came before the request was fully written (an early
     * error) leaves the write request in use: start afresh. */
    if (!c->resp.keep_alive || c->write_pending) {
        conn_close(c, false);
        if (w->phase == KP_BENCH_DRAINING && w->busy == 0)
            finish(w, false);
        return;
    }
    conn_ready(c, now);
}

/* A connection is free (just opened, or its answer ended): give it work. */
static void conn_ready(struct kp_bench_conn *c, uint64_t now)
{
    struct kp_bench_worker *w = c->w;
    if (w->phase == KP_BENCH_CONNECTING) {
        idle_push(w, c);
        return;
    }
    if (open_loop(w)) {
        idle_push(w, c);
        if (w->phase == KP_BENCH_RUNNING)
            dispatch_open(w);
        else if (w->phase == KP_BENCH_DRAINING && w->busy == 0)
            finish(w, false);
        return;
    }
    if (closed_may_send(w, now)) {
        closed_send(c, now);
        return;
    }
    idle_push(w, c);
    if (w->phase == KP_BENCH_RUNNING)
        w->phase = KP_BENCH_DRAINING;
    if (w->busy == 0)
        finish(w, false);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    struct kp_bench_conn *c = h->data;
    (void)hint;
    *buf = uv_buf_init(c->rbuf, READ_BUFFER_BYTES);
}

static void on_eof_or_error(struct kp_bench_conn *c, ssize_t nread)
{
    if (c->state != CONN_BUSY) {
        /* The server closed an idle keep-alive connection: replace it. */
        conn_close(c, nread != UV_EOF);
        return;
    }
    if (nread == UV_EOF) {
        /* An answer delimited by the end of the connection ends here. */
        if (kp_bench__response_eof(&c->resp)) {
            answer_done(c, uv_hrtime());
            return;
        }
        count_error(c->w, KP_BENCH_ERR_CLOSED, c->measured);
    } else {
        count_error(c->w, nread == UV_ECONNRESET ? KP_BENCH_ERR_CLOSED : KP_BENCH_ERR_READ,
                    c->measured);
    }
    conn_close(c, false);
}

/* Bytes of an answer (decrypted, with https). */
static void got_bytes(struct kp_bench_conn *c, const char *data, size_t nread)
{
    if (c->state != CONN_BUSY) {
        /* Bytes nobody asked for (a server's parting 408 on an idle
         * connection): the connection is out of step, replace it. */
        conn_close(c, false);
        return;
    }
    uint64_t now = uv_hrtime();
    if (c->first_byte_ns == 0)
        c->first_byte_ns = now;
    if (c->measured)
        c->w->stats.bytes_received += (uint64_t)nread;
    llhttp_errno_t err = kp_bench__response_feed(&c->resp, data, nread, now);
    if (c->resp.complete) {
        if (err != HPE_OK)
            c->resp.keep_alive = false;
        answer_done(c, now);
    } else if (err != HPE_OK) {
        count_error(c->w, KP_BENCH_ERR_PARSE, c->measured);
        conn_close(c, false);
    }
}

static void tls_handshake_done(struct kp_bench_conn *c, const char *failure);
static void tls_pump(struct kp_bench_conn *c);

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct kp_bench_conn *c = s->data;
    if (nread == 0)
        return;
    if (nread < 0) {
        if (c->ssl != NULL && !c->tls_ready) {
            tls_handshake_done(c, nread == UV_EOF ? "the server closed the connection"
                                                  : uv_strerror((int)nread));
            return;
        }
        on_eof_or_error(c, nread);
        return;
    }
    if (c->ssl == NULL) {
        got_bytes(c, buf->base, (size_t)nread);
        return;
    }
    if (BIO_write(SSL_get_rbio(c->ssl), buf->base, (int)nread) != (int)nread) {
        count_error(c->w, KP_BENCH_ERR_READ, c->measured);
        conn_close(c, false);
        return;
    }
    tls_pump(c);
}

/* --- https --------------------------------------------------------------- */

/* The handshake ended: the connection is open (@failure NULL) or it
 * failed, which counts as a connect failure (and ends a run that is still
 * opening its first connections). */
static void tls_handshake_done(struct kp_bench_conn *c, const char *failure)
{
    struct kp_bench_worker *w = c->w;
    bool first = w->phase == KP_BENCH_CONNECTING;
    if (first)
        w->connecting--;
    if (failure != NULL) {
        if (first && w->err == KP_OK) {
            w->err = KP_ENET;
            snprintf(w->errmsg, sizeof(w->errmsg), "TLS handshake with %s failed: %s",
                     w->shared->cfg->url.hostport, failure);
        }
        count_error(w, KP_BENCH_ERR_CONNECT, !first);
        conn_close(c, true);
    } else {
        c->tls_ready = true;
        conn_ready(c, uv_hrtime());
    }
    if (first && w->connecting == 0)
        uv_stop(&w->loop);
}

/* Drive the handshake, then decrypt what arrived and hand it on. */
static void tls_pump(struct kp_bench_conn *c)
{
    if (!c->tls_ready) {
        ERR_clear_error();
        int r = SSL_do_handshake(c->ssl);
        if (tls_flush(c) != 0) {
            tls_handshake_done(c, "out of memory");
            return;
        }
        if (r != 1) {
            if (SSL_get_error(c->ssl, r) == SSL_ERROR_WANT_READ)
                return;
            char why[256];
            long vr = SSL_get_verify_result(c->ssl);
            if (vr != X509_V_OK)
                snprintf(why, sizeof(why), "certificate not trusted: %s",
                         X509_verify_cert_error_string(vr));
            else
                ERR_error_string_n(ERR_get_error(), why, sizeof(why));
            ERR_clear_error();
            tls_handshake_done(c, why);
            return;
        }
        tls_handshake_done(c, NULL);
    }
    while (c->state != CONN_CLOSING && c->state != CONN_CLOSED) {
        ERR_clear_error();
        int n = SSL_read(c->ssl, c->rbuf, READ_BUFFER_BYTES);
        if (n > 0) {
            got_bytes(c, c->rbuf, (size_t)n);
            continue;
        }
        int e = SSL_get_error(c->ssl, n);
        ERR_clear_error();
        if (e == SSL_ERROR_WANT_READ) {
            if (tls_flush(c) != 0) /* a key update's answer */
                conn_close(c, false);
            return;
        }
        on_eof_or_error(c, e == SSL_ERROR_ZERO_RETURN ? UV_EOF : UV_EPROTO);
        return;
    }
}

/* The TCP connection is up: start the handshake. */
static int tls_start(struct kp_bench_conn *c)
{
    const struct kp_bench_url *url = &c->w->shared->cfg->url;
    unsigned char ip[16];
    c->ssl = SSL_new(c->w->shared->tls);
    BIO *rbio = BIO_new(BIO_s_mem()), *wbio = BIO_new(BIO_s_mem());
    if (c->ssl == NULL || rbio == NULL || wbio == NULL) {
        BIO_free(rbio);
        BIO_free(wbio);
        return -1;
    }
    BIO_set_mem_eof_return(rbio, -1);
    SSL_set_bio(c->ssl, rbio, wbio);
    SSL_set_connect_state(c->ssl);
    /* The name (or address) in the URL is what the certificate must show. */
    bool is_ip = inet_pton(AF_INET, url->host, ip) == 1 || inet_pton(AF_INET6, url->host, ip) == 1;
    X509_VERIFY_PARAM *param = SSL_get0_param(c->ssl);
    if (is_ip ? X509_VERIFY_PARAM_set1_ip_asc(param, url->host) != 1
              : SSL_set_tlsext_host_name(c->ssl, url->host) != 1 ||
                    SSL_set1_host(c->ssl, url->host) != 1)
        return -1;
    tls_pump(c);
    return 0;
}

/* --- connections --------------------------------------------------------- */

static void on_connect(uv_connect_t *req, int status)
{
    struct kp_bench_conn *c = req->data;
    struct kp_bench_worker *w = c->w;
    if (status == UV_ECANCELED)
        return; /* closed while connecting; on_close follows */
    /* With https the connection counts once its handshake is done. */
    if (w->phase == KP_BENCH_CONNECTING && !(status >= 0 && w->shared->tls != NULL))
        w->connecting--;
    if (status < 0) {
        if (w->phase == KP_BENCH_CONNECTING && w->err == KP_OK) {
            w->err = KP_ENET;
            snprintf(w->errmsg, sizeof(w->errmsg), "cannot connect to %s: %s",
                     w->shared->cfg->url.hostport, uv_strerror(status));
        }
        count_error(w, KP_BENCH_ERR_CONNECT, w->phase != KP_BENCH_CONNECTING);
        conn_close(c, true);
    } else {
        uv_tcp_nodelay(&c->tcp, 1);
        int rv = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
        if (rv != 0 && w->shared->tls != NULL) {
            tls_handshake_done(c, uv_strerror(rv));
            return;
        }
        if (rv != 0) {
            count_error(w, KP_BENCH_ERR_READ, true);
            conn_close(c, true);
        } else if (w->shared->tls != NULL) {
            if (tls_start(c) != 0)
                tls_handshake_done(c, "cannot set up TLS (out of memory?)");
            return; /* tls_handshake_done stops the connecting loop */
        } else {
            conn_ready(c, uv_hrtime());
        }
    }
    if (w->phase == KP_BENCH_CONNECTING && w->connecting == 0)
        uv_stop(&w->loop);
}

static void conn_connect(struct kp_bench_conn *c)
{
    struct kp_bench_worker *w = c->w;
    uv_tcp_init(&w->loop, &c->tcp);
    c->tcp.data = c;
    c->connect_req.data = c;
    c->retry_later = false;
    c->write_pending = false;
    c->opened_ns = uv_hrtime();
    kp_bench__response_init(&c->resp, &w->settings);
    c->state = CONN_CONNECTING;
    int rv = uv_tcp_connect(&c->connect_req, &c->tcp, (const struct sockaddr *)&w->shared->addr,
                            on_connect);
    if (rv != 0) {
        /* No callback will come: account for it as on_connect would. */
        if (w->phase == KP_BENCH_CONNECTING) {
            w->connecting--;
            if (w->err == KP_OK) {
                w->err = KP_ENET;
                snprintf(w->errmsg, sizeof(w->errmsg), "cannot connect to %s: %s",
                         w->shared->cfg->url.hostport, uv_strerror(rv));
            }
        } else {
            count_error(w, KP_BENCH_ERR_CONNECT, true);
        }
        conn_close(c, true);
    }
}

static void on_close(uv_handle_t *h)
{
    struct kp_bench_conn *c = h->data;
    struct kp_bench_worker *w = c->w;
    c->state = CONN_CLOSED;
    SSL_free(c->ssl);
    c->ssl = NULL;
    c->tls_ready = false;
    if (w->phase == KP_BENCH_RUNNING && !c->retry_later)
        conn_connect(c);
}

static void conn_close(struct kp_bench_conn *c, bool retry_later)
{
    struct kp_bench_worker *w = c->w;
    if (c->state == CONN_CLOSING || c->state == CONN_CLOSED)
        return;
    if (c->state == CONN_BUSY)
        w->busy--;
    else if (c->state == CONN_IDLE)
        idle_remove(w, c);
    c->state = CONN_CLOSING;
    c->retry_later = retry_later;
    uv_close((uv_handle_t *)&c->tcp, on_close);
}

/* --- the tick: timeouts, retries, the end -------------------------------- */

static void check_timeouts(struct kp_bench_worker *w, uint64_t now)
{
    uint64_t timeout_ns = (uint64_t)(w->shared->cfg->timeout_s * 1e9);
    for (unsigned i = 0; i < w->n_conns; i++) {
        struct kp_bench_conn *c = &w->conns[i];
        if (c->state == CONN_BUSY && now - c->sent_ns > timeout_ns) {
            count_error(w, KP_BENCH_ERR_TIMEOUT, c->measured);
            conn_close(c, false);
        } else if (c->state == CONN_CONNECTING && w->phase != KP_BENCH_CONNECTING &&
                   now - c->opened_ns > timeout_ns) {
            count_error(w, KP_BENCH_ERR_CONNECT, true);
            conn_close(c, true);
        } else if (c->state == CONN_CLOSED && c->retry_later && w->phase == KP_BENCH_RUNNING &&
                   now - c->opened_ns >= RETRY_NS) {
            conn_connect(c);
        }
    }
}

static void on_tick(uv_timer_t *t)
{
    struct kp_bench_worker *w = t->data;
    uint64_t now = uv_hrtime();
    if (atomic_load_explicit(&w->shared->abort, memory_order_relaxed)) {
        w->interrupted = true;
        finish(w, false);
        return;
    }
    if (w->phase == KP_BENCH_CONNECTING) {
        if (now > w->connect_deadline_ns) {
            w->err = KP_ETIMEDOUT;
            snprintf(w->errmsg, sizeof(w->errmsg), "cannot connect to %s: timed out after %.1fs",
                     w->shared->cfg->url.hostport, w->shared->cfg->timeout_s);
            uv_stop(&w->loop);
        }
        return;
    }
    check_timeouts(w, now);
    if (w->phase == KP_BENCH_DONE)
        return;
    if (!open_loop(w) && w->phase == KP_BENCH_RUNNING && !closed_may_send(w, now))
        w->phase = KP_BENCH_DRAINING;
    if (now >= w->deadline_ns)
        finish(w, true);
    else if (w->phase == KP_BENCH_DRAINING && w->busy == 0)
        finish(w, false);
    else if (open_loop(w) && w->phase == KP_BENCH_RUNNING)
        dispatch_open(w); /* picks up connections that were reopened */
}

/* Stops sending and closes every handle; uv_run returns once they are
 * closed. @force: the deadline passed, so what is still out failed. */
static void finish(struct kp_bench_worker *w, bool force)
{
    if (w->phase == KP_BENCH_DONE)
        return;
    if (force && !w->interrupted) {
        for (unsigned i = 0; i < w->n_conns; i++)
            if (w->conns[i].state == CONN_BUSY)
                count_error(w, KP_BENCH_ERR_TIMEOUT, w->conns[i].measured);
        if (open_loop(w)) {
            uint64_t unsent = kp_bench_sched_backlog(&w->sched, uv_hrtime());
            for (uint64_t i = 0; i < unsent; i++)
                count_error(w, KP_BENCH_ERR_UNSENT, true);
        }
    }
    w->phase = KP_BENCH_DONE;
    for (unsigned i = 0; w->conns && i < w->n_conns; i++)
        conn_close(&w->conns[i], true);
    if (!uv_is_closing((uv_handle_t *)&w->tick))
        uv_close((uv_handle_t *)&w->tick, NULL);
    if (w->timer_fd >= 0 && !uv_is_closing((uv_handle_t *)&w->timer_poll))
        uv_close((uv_handle_t *)&w->timer_poll, NULL);
}

/* --- the thread ---------------------------------------------------------- */

static int worker_init(struct kp_bench_worker *w)
{
    const struct kp_bench_config *cfg = w->shared->cfg;
    int rv = uv_loop_init(&w->loop);
    if (rv != 0)
        return kp_err_from_uv(rv);
    w->loop_ready = true;
    w->timer_fd = -1;
    /* The tick first: finish() closes it whatever failed after. */
    uv_timer_init(&w->loop, &w->tick);
    w->tick.data = w;
    kp_bench__response_settings(&w->settings);
    kp_bench_picker_init(&w->picker, cfg->reqs, cfg->n_reqs);
    w->conns = kp_calloc(w->n_conns, sizeof(*w->conns));
    w->idle = kp_calloc(w->n_conns, sizeof(*w->idle));
    if (w->conns == NULL || w->idle == NULL)
        return KP_ENOMEM;
    for (unsigned i = 0; i < w->n_conns; i++) {
        w->conns[i].w = w;
        w->conns[i].rbuf = kp_malloc(READ_BUFFER_BYTES);
        if (w->conns[i].rbuf == NULL)
            return KP_ENOMEM;
    }
    if (cfg->mode == KP_BENCH_OPEN_LOOP) {
        w->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        if (w->timer_fd < 0)
            return kp_err_from_errno(errno);
        uv_poll_init(&w->loop, &w->timer_poll, w->timer_fd);
        w->timer_poll.data = w;
    }
    return KP_OK;
}

/* Opens every connection; returns when all answered or the deadline hit. */
static void worker_connect(struct kp_bench_worker *w)
{
    w->phase = KP_BENCH_CONNECTING;
    w->connect_deadline_ns = uv_hrtime() + (uint64_t)(w->shared->cfg->timeout_s * 1e9);
    uv_timer_start(&w->tick, on_tick, TICK_MS, TICK_MS);
    w->connecting = w->n_conns;
    for (unsigned i = 0; i < w->n_conns && w->err == KP_OK; i++)
        conn_connect(&w->conns[i]);
    if (w->connecting > 0 && w->err == KP_OK)
        uv_run(&w->loop, UV_RUN_DEFAULT);
}

static void worker_start(struct kp_bench_worker *w)
{
    const struct kp_bench_shared *sh = w->shared;
    const struct kp_bench_config *cfg = sh->cfg;
    uint64_t timeout_ns = (uint64_t)(cfg->timeout_s * 1e9);
    w->phase = KP_BENCH_RUNNING;
    if (cfg->mode == KP_BENCH_OPEN_LOOP) {
        uint64_t limit = cfg->requests ? sh->warmup_requests + cfg->requests : KP_BENCH_NEVER;
        kp_bench_sched_init(&w->sched, cfg->rate, sh->start_ns, sh->threads, w->index, limit,
                            sh->stop_ns);
        uint64_t last =
            limit != KP_BENCH_NEVER ? kp_bench_sched_time(&w->sched, limit) : sh->stop_ns;
        w->deadline_ns = (last < sh->stop_ns ? last : sh->stop_ns) + timeout_ns;
        uv_poll_start(&w->timer_poll, UV_READABLE, on_timer_fd);
        dispatch_open(w);
        return;
    }
    /* Closed loop with a count has no end time: each request's own timeout
     * bounds it. */
    w->deadline_ns = sh->stop_ns == KP_BENCH_NEVER ? KP_BENCH_NEVER : sh->stop_ns + timeout_ns;
    uint64_t now = uv_hrtime();
    while (w->n_idle > 0 && closed_may_send(w, now))
        closed_send(idle_pop(w), now);
    if (!closed_may_send(w, now)) {
        w->phase = KP_BENCH_DRAINING;
        if (w->busy == 0)
            finish(w, false);
    }
}

static void worker_cleanup(struct kp_bench_worker *w)
{
    if (w->loop_ready) {
        if (w->phase != KP_BENCH_DONE) {
            w->interrupted = true;
            finish(w, false);
        }
        uv_run(&w->loop, UV_RUN_DEFAULT);
        if (uv_loop_close(&w->loop) != 0)
            kp_warn("bench", "worker %u: handles left open at the end", w->index);
    }
    if (w->timer_fd >= 0)
        close(w->timer_fd);
    if (w->conns)
        for (unsigned i = 0; i < w->n_conns; i++)
            kp_free(w->conns[i].rbuf);
    kp_free(w->conns);
    kp_free(w->idle);
    w->conns = NULL;
    w->idle = NULL;
}

void kp_bench__worker_main(void *arg)
{
    struct kp_bench_worker *w = arg;
    struct kp_bench_shared *sh = w->shared;
    /* Wake-ups on time: the default 50 us slack would blur the schedule. */
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    w->err = worker_init(w);
    if (w->err != KP_OK)
        snprintf(w->errmsg, sizeof(w->errmsg), "starting a generator thread: %s",
                 kp_err_msg(w->err));
    else
        worker_connect(w);
    uv_barrier_wait(&sh->connected);
    uv_barrier_wait(&sh->go);
    if (w->err == KP_OK && w->phase == KP_BENCH_CONNECTING && !atomic_load(&sh->abort)) {
        worker_start(w);
        uv_run(&w->loop, UV_RUN_DEFAULT);
    }
    worker_cleanup(w);
    atomic_store(&w->finished, true);
}

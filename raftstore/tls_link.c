/* One link of the mutual-TLS Raft transport (transport_tls.c has the
 * whole picture): TCP to the peer carrying TLS, and a socketpair whose one
 * end is raft's stream, relayed through the SSL object (memory BIOs) on the
 * store's loop:
 *
 *   raft <-> [raft's end | pipe] <-> SSL <-> TCP <-> the peer's link
 *
 *   resolving -> connecting -> handshake -> relay               (outgoing)
 *                 accepted  -> handshake -> preamble -> relay   (incoming)
 *   any state -> closing -> freed (every handle closed)
 *
 * After the handshake (each side checks the other's certificate against
 * the cluster CA) an outgoing link sends the preamble raft_uv_tcp sends
 * (protocol 1, our id, the length of our address padded to 8 bytes, the
 * NUL-padded address; 64-bit little-endian) inside TLS and hands raft its
 * end; an incoming link reads the preamble, then hands raft its end with
 * the id and address it names.
 *
 * Failures close the link: a refused handshake is logged with the peer's
 * address and OpenSSL's reason (never key material), and raft sees a failed
 * connect (it retries after its connect delay) or, once relaying, EOF on
 * its reads and failed writes. Either side ending closes both: EOF from
 * raft's end closes the TCP connection (after a close_notify), EOF, an error
 * or an alert from the peer closes our pipe end. A link that has not
 * finished its handshake and preamble within HANDSHAKE_MS is dropped, so
 * idle connections cannot pile up on the raft port.
 *
 * Backpressure: when more than RELAY_HIGH bytes wait to be written to one
 * side, reading from the other side stops until that queue drains below
 * RELAY_LOW; one read (at most READ_SIZE bytes) may still be in flight. */
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "raftstore/tls_link.h"

struct wreq {
    uv_write_t req;
    struct kp_tls_link *l;
    char data[];
};

static void alloc_read(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void pipe_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

/* --- logging --------------------------------------------------------------- */

/* The reasons in the thread's OpenSSL error queue, oldest first ("no start
 * line, PEM lib"), or @none; empties the queue. Reasons name what failed,
 * never data. */
void kp_tls__ssl_reasons(char *buf, size_t len, const char *none)
{
    unsigned long e;
    size_t o = 0;
    buf[0] = '\0';
    while ((e = ERR_get_error()) != 0) {
        const char *r = ERR_reason_error_string(e);
        if (r == NULL || strstr(buf, r) != NULL || o >= len)
            continue;
        int n = snprintf(buf + o, len - o, "%s%s", o > 0 ? ", " : "", r);
        o += n > 0 ? (size_t)n : 0;
    }
    if (buf[0] == '\0')
        snprintf(buf, len, "%s", none);
}

/* OpenSSL's reason for the last failure on @l, with the certificate check's
 * own reason when that is what failed. */
static void tls_reason(struct kp_tls_link *l, char *buf, size_t len)
{
    char reason[160];
    long vr = l->ssl != NULL ? SSL_get_verify_result(l->ssl) : X509_V_OK;
    kp_tls__ssl_reasons(reason, sizeof(reason), "connection closed by the peer");
    if (vr != X509_V_OK)
        snprintf(buf, len, "%s (%s)", reason, X509_verify_cert_error_string(vr));
    else
        snprintf(buf, len, "%s", reason);
}

/* The subject of the peer's certificate, when it sent one (names, not
 * secrets: it helps an operator find the host). */
static void peer_subject(struct kp_tls_link *l, char *buf, size_t len)
{
    X509 *cert = l->ssl != NULL ? SSL_get0_peer_certificate(l->ssl) : NULL;
    buf[0] = '\0';
    if (cert == NULL)
        return;
    char name[160];
    X509_NAME_oneline(X509_get_subject_name(cert), name, sizeof(name));
    snprintf(buf, len, ", peer certificate %s", name);
}

static void refuse(struct kp_tls_link *l, const char *what)
{
    struct kp_tls_transport *tt = l->tt;
    char why[200], subject[200], key[sizeof(tt->refusals[0].key)];
    tls_reason(l, why, sizeof(why));
    peer_subject(l, subject, sizeof(subject));
    snprintf(key, sizeof(key), "%d %s %s %s%s", l->outgoing, l->outgoing ? l->peer : l->peer_host,
             what, why, subject);
    uint64_t now = uv_now(tt->loop);
    /* The entry of this refusal, else the oldest one, which it replaces. */
    bool again = false;
    int slot = 0;
    for (int i = 0; i < REFUSALS_KEPT; i++) {
        if (strcmp(key, tt->refusals[i].key) == 0) {
            again = now - tt->refusals[i].at < REFUSAL_QUIET_MS;
            slot = i;
            break;
        }
        if (tt->refusals[i].at < tt->refusals[slot].at)
            slot = i;
    }
    if (!again) {
        snprintf(tt->refusals[slot].key, sizeof(tt->refusals[slot].key), "%s", key);
        tt->refusals[slot].at = now;
    }
    kp_log(again ? KP_LOG_DEBUG : KP_LOG_WARN, "raft", "link %s %s refused: %s: %s%s",
           l->outgoing ? "to" : "from", l->peer, what, why, subject);
}

/* --- freeing ------------------------------------------------------------------ */

void kp_tls__link_unref(struct kp_tls_link *l)
{
    if (--l->pending > 0)
        return;
    struct kp_tls_transport *tt = l->tt;
    if (l->prev != NULL)
        l->prev->next = l->next;
    else
        tt->links = l->next;
    if (l->next != NULL)
        l->next->prev = l->prev;
    SSL_free(l->ssl);
    raft_free(l->paddr);
    struct raft_uv_connect *req = l->req;
    int status = tt->closing ? RAFT_CANCELED : l->status != 0 ? l->status : RAFT_NOCONNECTION;
    kp_free(l);
    /* Like raft_uv_tcp: the callback runs once nothing of the attempt is
     * left; raft expects RAFT_CANCELED for a request the close cut short. */
    if (req != NULL)
        req->cb(req, NULL, status);
    kp_tls__maybe_closed(tt);
}

static void handle_closed(uv_handle_t *h)
{
    kp_tls__link_unref(h->data);
}

static void raft_end_closed(uv_handle_t *h)
{
    struct kp_tls_link *l = h->data;
    raft_free(h);
    kp_tls__link_unref(l);
}

void kp_tls__link_close(struct kp_tls_link *l)
{
    if (l->state == L_CLOSING)
        return;
    l->state = L_CLOSING;
    if (l->resolving)
        uv_cancel((uv_req_t *)&l->gai);
    uv_close((uv_handle_t *)&l->tcp, handle_closed);
    uv_close((uv_handle_t *)&l->deadline, handle_closed);
    if (l->pipe_open)
        uv_close((uv_handle_t *)&l->pipe, handle_closed);
    if (l->raft_end != NULL) {
        l->raft_end->data = l;
        uv_close((uv_handle_t *)l->raft_end, raft_end_closed);
        l->raft_end = NULL;
    }
}

void kp_tls__link_fail(struct kp_tls_link *l, int status)
{
    if (l->status == 0)
        l->status = status;
    kp_tls__link_close(l);
}

static void on_deadline(uv_timer_t *t)
{
    struct kp_tls_link *l = t->data;
    if (l->state == L_RESOLVING || l->state == L_CONNECTING)
        kp_debug("raft", "link to %s: no connection within %d ms -> give up", l->peer,
                 HANDSHAKE_MS);
    else
        kp_warn("raft", "link %s %s dropped: no TLS handshake and preamble within %d ms",
                l->outgoing ? "to" : "from", l->peer, HANDSHAKE_MS);
    kp_tls__link_fail(l, RAFT_NOCONNECTION);
}

struct kp_tls_link *kp_tls__link_new(struct kp_tls_transport *tt, bool outgoing)
{
    struct kp_tls_link *l = kp_calloc(1, sizeof(*l));
    if (l == NULL)
        return NULL;
    l->tt = tt;
    l->outgoing = outgoing;
    l->next = tt->links;
    if (tt->links != NULL)
        tt->links->prev = l;
    tt->links = l;
    uv_tcp_init(tt->loop, &l->tcp);
    uv_timer_init(tt->loop, &l->deadline);
    l->tcp.data = l->deadline.data = l;
    l->pending = 2;
    uv_timer_start(&l->deadline, on_deadline, HANDSHAKE_MS, 0);
    return l;
}

/* --- writing --------------------------------------------------------------------- */

static void tcp_written(uv_write_t *req, int status)
{
    struct wreq *w = req->data;
    struct kp_tls_link *l = w->l;
    kp_free(w);
    if (l->state == L_CLOSING)
        return;
    if (status != 0) {
        kp_debug("raft", "link %s: write: %s -> close", l->peer, uv_strerror(status));
        kp_tls__link_fail(l, RAFT_NOCONNECTION);
        return;
    }
    if (l->pipe_paused && uv_stream_get_write_queue_size((uv_stream_t *)&l->tcp) < RELAY_LOW) {
        kp_trace("raft", "link %s: peer caught up -> read raft again", l->peer);
        l->pipe_paused = false;
        uv_read_start((uv_stream_t *)&l->pipe, alloc_read, pipe_read);
    }
}

static int queue_write(struct kp_tls_link *l, uv_stream_t *to, const void *data, size_t len,
                       uv_write_cb cb)
{
    struct wreq *w = kp_malloc(sizeof(*w) + len);
    if (w == NULL)
        return UV_ENOMEM;
    memcpy(w->data, data, len);
    w->l = l;
    w->req.data = w;
    uv_buf_t buf = uv_buf_init(w->data, (unsigned)len);
    int rv = uv_write(&w->req, to, &buf, 1, cb);
    if (rv != 0)
        kp_free(w);
    return rv;
}

/* Send whatever TLS produced (records, alerts, close_notify) to the peer. */
static void flush_tls(struct kp_tls_link *l)
{
    char chunk[16384];
    int n;
    while (l->state != L_CLOSING && (n = BIO_read(l->wbio, chunk, sizeof(chunk))) > 0) {
        int rv = queue_write(l, (uv_stream_t *)&l->tcp, chunk, (size_t)n, tcp_written);
        if (rv != 0) {
            kp_debug("raft", "link %s: write: %s -> close", l->peer, uv_strerror(rv));
            kp_tls__link_fail(l, RAFT_NOCONNECTION);
            return;
        }
    }
}

static void pipe_written(uv_write_t *req, int status);

/* Plaintext from the peer to raft. */
static int to_raft(struct kp_tls_link *l, const void *data, size_t len)
{
    int rv = queue_write(l, (uv_stream_t *)&l->pipe, data, len, pipe_written);
    if (rv != 0) {
        kp_tls__link_fail(l, RAFT_NOCONNECTION);
        return -1;
    }
    if (!l->tcp_paused && uv_stream_get_write_queue_size((uv_stream_t *)&l->pipe) > RELAY_HIGH) {
        kp_trace("raft", "link %s: raft is behind -> stop reading the peer", l->peer);
        l->tcp_paused = true;
        uv_read_stop((uv_stream_t *)&l->tcp);
    }
    return 0;
}

/* --- reading ---------------------------------------------------------------------- */

static void alloc_read(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct kp_tls_link *l = h->data;
    (void)suggested;
    *buf = uv_buf_init(l->tt->rbuf, sizeof(l->tt->rbuf));
}

static void pipe_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct kp_tls_link *l = s->data;
    if (nread == 0 || l->state == L_CLOSING)
        return;
    if (nread < 0) {
        /* Raft closed its end: tell the peer, then close. */
        ERR_clear_error();
        SSL_shutdown(l->ssl);
        flush_tls(l);
        ERR_clear_error();
        kp_tls__link_close(l);
        return;
    }
    ERR_clear_error();
    if (SSL_write(l->ssl, buf->base, (int)nread) != (int)nread) {
        char why[200];
        tls_reason(l, why, sizeof(why));
        kp_warn("raft", "link %s %s: TLS write failed: %s", l->outgoing ? "to" : "from", l->peer,
                why);
        kp_tls__link_close(l);
        return;
    }
    flush_tls(l);
    if (l->state != L_CLOSING && !l->pipe_paused &&
        uv_stream_get_write_queue_size((uv_stream_t *)&l->tcp) > RELAY_HIGH) {
        kp_trace("raft", "link %s: peer is behind -> stop reading raft", l->peer);
        l->pipe_paused = true;
        uv_read_stop((uv_stream_t *)&l->pipe);
    }
}

static void tcp_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void pipe_written(uv_write_t *req, int status)
{
    struct wreq *w = req->data;
    struct kp_tls_link *l = w->l;
    kp_free(w);
    if (l->state == L_CLOSING)
        return;
    if (status != 0) {
        kp_tls__link_fail(l, RAFT_NOCONNECTION);
        return;
    }
    if (l->tcp_paused && uv_stream_get_write_queue_size((uv_stream_t *)&l->pipe) < RELAY_LOW) {
        kp_trace("raft", "link %s: raft caught up -> read the peer again", l->peer);
        l->tcp_paused = false;
        uv_read_start((uv_stream_t *)&l->tcp, alloc_read, tcp_read);
    }
}

/* The socketpair: our end starts reading, raft's end waits in l->raft_end
 * for the hand-over. */
static int make_pipe(struct kp_tls_link *l)
{
    uv_os_sock_t fds[2];
    int rv = uv_socketpair(SOCK_STREAM, 0, fds, 0, 0);
    if (rv != 0)
        return rv;
    l->raft_end = raft_malloc(sizeof(*l->raft_end));
    if (l->raft_end == NULL) {
        close(fds[0]);
        close(fds[1]);
        return UV_ENOMEM;
    }
    uv_pipe_init(l->tt->loop, &l->pipe, 0);
    uv_pipe_init(l->tt->loop, l->raft_end, 0);
    l->pipe.data = l;
    l->pipe_open = true;
    l->pending += 2; /* both ends, until raft takes its own */
    uv_pipe_open(&l->pipe, fds[0]);
    uv_pipe_open(l->raft_end, fds[1]);
    uv_read_start((uv_stream_t *)&l->pipe, alloc_read, pipe_read);
    return 0;
}

/* Raft takes its end: from now on it closes and frees it. */
static uv_stream_t *hand_over(struct kp_tls_link *l)
{
    uv_stream_t *s = (uv_stream_t *)l->raft_end;
    l->raft_end = NULL;
    l->pending--;
    l->state = L_RELAY;
    uv_timer_stop(&l->deadline);
    return s;
}

static uint64_t get_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++, v >>= 8)
        p[i] = (uint8_t)v;
}

/* Incoming: the preamble is complete; give raft the connection. */
static void accepted(struct kp_tls_link *l, const uint8_t *rest, size_t len)
{
    struct kp_tls_transport *tt = l->tt;
    raft_id id = get_le64(l->pre + 8);
    if (l->paddr[l->paddr_len - 1] != '\0' || id == 0) {
        kp_warn("raft", "link from %s dropped: malformed preamble", l->peer);
        kp_tls__link_close(l);
        return;
    }
    int rv = make_pipe(l);
    if (rv != 0) {
        kp_warn("raft", "link from %s dropped: socketpair: %s", l->peer, uv_strerror(rv));
        kp_tls__link_close(l);
        return;
    }
    kp_debug("raft", "link from %s (node %llu at %s) -> relay", l->peer, (unsigned long long)id,
             l->paddr);
    tt->accept_cb(tt->t, id, l->paddr, hand_over(l));
    if (len > 0)
        to_raft(l, rest, len);
}

/* Incoming plaintext before the relay: the preamble, then the address. */
static int read_preamble(struct kp_tls_link *l, const uint8_t *p, size_t len)
{
    size_t take = 0;
    if (l->pre_got < sizeof(l->pre)) {
        take = sizeof(l->pre) - l->pre_got;
        take = take < len ? take : len;
        memcpy(l->pre + l->pre_got, p, take);
        l->pre_got += take;
        if (l->pre_got < sizeof(l->pre))
            return 0;
        uint64_t proto = get_le64(l->pre), alen = get_le64(l->pre + 16);
        if (proto != PROTOCOL || alen == 0 || alen > ADDRESS_MAX || alen % 8 != 0) {
            kp_warn("raft", "link from %s dropped: unknown preamble (protocol %llu)", l->peer,
                    (unsigned long long)proto);
            kp_tls__link_close(l);
            return -1;
        }
        l->paddr_len = (size_t)alen;
        if ((l->paddr = raft_malloc(l->paddr_len)) == NULL) {
            kp_tls__link_close(l);
            return -1;
        }
    }
    size_t more = len - take, need = l->paddr_len - l->paddr_got;
    size_t n = more < need ? more : need;
    memcpy(l->paddr + l->paddr_got, p + take, n);
    l->paddr_got += n;
    if (l->paddr_got == l->paddr_len)
        accepted(l, p + take + n, more - n);
    return 0;
}

/* Decrypt everything the peer has sent so far. */
static void read_plaintext(struct kp_tls_link *l)
{
    uint8_t buf[16384];
    while (l->state == L_PREAMBLE || l->state == L_RELAY) {
        ERR_clear_error();
        int n = SSL_read(l->ssl, buf, sizeof(buf));
        if (n > 0) {
            if (l->state == L_PREAMBLE)
                read_preamble(l, buf, (size_t)n);
            else
                to_raft(l, buf, (size_t)n);
            continue;
        }
        int e = SSL_get_error(l->ssl, n);
        flush_tls(l);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
            return;
        if (e == SSL_ERROR_ZERO_RETURN) {
            kp_debug("raft", "link %s: close_notify -> close", l->peer);
            ERR_clear_error();
        } else {
            /* An alert: most often the peer refused our certificate (TLS
             * 1.3 clients learn it only after their handshake ended). */
            refuse(l, "TLS error");
        }
        kp_tls__link_close(l);
        return;
    }
}

static void handshake_done(struct kp_tls_link *l)
{
    struct kp_tls_transport *tt = l->tt;
    if (!l->outgoing) {
        l->state = L_PREAMBLE;
        return;
    }
    size_t alen = (strlen(tt->address) + 1 + 7) / 8 * 8;
    uint8_t pre[24 + ADDRESS_MAX] = {0};
    put_le64(pre, PROTOCOL);
    put_le64(pre + 8, tt->id);
    put_le64(pre + 16, alen);
    memcpy(pre + 24, tt->address, strlen(tt->address));
    ERR_clear_error();
    if (SSL_write(l->ssl, pre, (int)(24 + alen)) != (int)(24 + alen)) {
        refuse(l, "TLS write");
        kp_tls__link_fail(l, RAFT_NOCONNECTION);
        return;
    }
    flush_tls(l);
    int rv = l->state != L_CLOSING ? make_pipe(l) : 0;
    if (rv != 0) {
        kp_warn("raft", "link to %s: socketpair: %s", l->peer, uv_strerror(rv));
        kp_tls__link_fail(l, RAFT_NOCONNECTION);
    }
    if (l->state == L_CLOSING)
        return;
    kp_debug("raft", "link to %s -> relay", l->peer);
    struct raft_uv_connect *req = l->req;
    l->req = NULL;
    req->cb(req, hand_over(l), 0);
}

/* New ciphertext arrived, or the handshake starts. */
static void pump(struct kp_tls_link *l)
{
    if (l->state == L_HANDSHAKE) {
        ERR_clear_error();
        int rv = SSL_do_handshake(l->ssl);
        flush_tls(l);
        if (l->state == L_CLOSING)
            return;
        if (rv != 1) {
            int e = SSL_get_error(l->ssl, rv);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                return;
            refuse(l, "TLS handshake failed");
            kp_tls__link_fail(l, RAFT_NOCONNECTION);
            return;
        }
        handshake_done(l);
    }
    read_plaintext(l);
}

static void tcp_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct kp_tls_link *l = s->data;
    if (nread == 0 || l->state == L_CLOSING)
        return;
    if (nread < 0) {
        if (l->state == L_HANDSHAKE)
            refuse(l, "connection closed during the TLS handshake");
        else
            kp_debug("raft", "link %s: %s -> close", l->peer, uv_strerror((int)nread));
        kp_tls__link_fail(l, RAFT_NOCONNECTION);
        return;
    }
    BIO_write(l->rbio, buf->base, (int)nread);
    pump(l);
}

/* TCP is up: wrap it in TLS and start the handshake. */
int kp_tls__link_start(struct kp_tls_link *l)
{
    struct sockaddr_storage ss;
    int slen = sizeof(ss);
    char host[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    /* Incoming links are named by the peer's address; outgoing ones keep
     * the raft address they dialled. */
    if (uv_tcp_getpeername(&l->tcp, (struct sockaddr *)&ss, &slen) == 0) {
        bool v6 = ss.ss_family == AF_INET6;
        if (v6)
            uv_ip6_name((struct sockaddr_in6 *)&ss, host, sizeof(host));
        else
            uv_ip4_name((struct sockaddr_in *)&ss, host, sizeof(host));
        port = ntohs(v6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                        : ((struct sockaddr_in *)&ss)->sin_port);
        if (!l->outgoing)
            snprintf(l->peer, sizeof(l->peer), v6 ? "[%s]:%d" : "%s:%d", host, port);
    }
    snprintf(l->peer_host, sizeof(l->peer_host), "%s", host);
    uv_tcp_nodelay(&l->tcp, 1);
    l->ssl = SSL_new(l->tt->ctx);
    l->rbio = BIO_new(BIO_s_mem());
    l->wbio = BIO_new(BIO_s_mem());
    if (l->ssl == NULL || l->rbio == NULL || l->wbio == NULL) {
        BIO_free(l->rbio);
        BIO_free(l->wbio);
        return UV_ENOMEM;
    }
    SSL_set_bio(l->ssl, l->rbio, l->wbio);
    if (l->outgoing)
        SSL_set_connect_state(l->ssl);
    else
        SSL_set_accept_state(l->ssl);
    l->state = L_HANDSHAKE;
    uv_read_start((uv_stream_t *)&l->tcp, alloc_read, tcp_read);
    if (l->outgoing)
        pump(l); /* the ClientHello */
    return 0;
}

/* A Raft transport over mutual TLS: a struct raft_uv_transport for raft_uv.
 *
 * raft_uv reads and writes the libuv stream a transport hands it and cannot
 * read through a TLS library, so each link (tls_link.c) is two connections:
 * TCP to the peer, carrying TLS, and a local socketpair whose one end
 * becomes raft's stream while the link relays the other end through the SSL
 * object. This file is the transport around the links: it listens and
 * accepts, resolves and connects, and on close ends every link and calls
 * raft back once the last handle is closed.
 *
 * Certificates: the SSL_CTX is built from the three files at init and again
 * on kp_raft_tls_reload; both sides must present a certificate the cluster
 * CA signed (TLS 1.3 only). A link keeps the context it started with
 * (SSL_new holds a reference), so a reload changes new links only. */
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "raftstore/tls_link.h"

void kp_tls__maybe_closed(struct kp_tls_transport *tt)
{
    if (!tt->closing || tt->listener_open || tt->refused_open || tt->links != NULL ||
        tt->close_cb == NULL)
        return;
    raft_uv_transport_close_cb cb = tt->close_cb;
    tt->close_cb = NULL;
    cb(tt->t);
}

/* --- incoming ----------------------------------------------------------------------- */

static void refuse_connection(struct kp_tls_transport *tt);

static void refused_closed(uv_handle_t *h)
{
    struct kp_tls_transport *tt = h->data;
    tt->refused_open = false;
    if (tt->refuse_again && !tt->closing) {
        tt->refuse_again = false;
        refuse_connection(tt);
        return;
    }
    kp_tls__maybe_closed(tt);
}

/* Out of memory for a link: accept the connection into the spare handle
 * and close it, so that the listener goes on (the peer retries). */
static void refuse_connection(struct kp_tls_transport *tt)
{
    kp_warn("raft", "accept on %s: out of memory -> connection closed", tt->address);
    if (tt->refused_open) {
        /* libuv watches the listener again only once this one is taken */
        tt->refuse_again = true;
        return;
    }
    uv_tcp_init(tt->loop, &tt->refused);
    tt->refused.data = tt;
    tt->refused_open = true;
    uv_accept((uv_stream_t *)&tt->listener, (uv_stream_t *)&tt->refused);
    uv_close((uv_handle_t *)&tt->refused, refused_closed);
}

static void on_connection(uv_stream_t *server, int status)
{
    struct kp_tls_transport *tt = server->data;
    if (status != 0 || tt->closing) {
        kp_warn("raft", "accept on %s: %s", tt->address, uv_strerror(status));
        return;
    }
    struct kp_tls_link *l = kp_tls__link_new(tt, false);
    if (l == NULL) {
        refuse_connection(tt);
        return;
    }
    snprintf(l->peer, sizeof(l->peer), "?");
    int rv = uv_accept(server, (uv_stream_t *)&l->tcp);
    if (rv == 0)
        rv = kp_tls__link_start(l);
    if (rv != 0) {
        kp_warn("raft", "accept on %s: %s", tt->address, uv_strerror(rv));
        kp_tls__link_close(l);
    }
}

/* "host:port" or "[v6]:port" into its parts; 0 or -1. */
static int split_address(const char *address, char *host, size_t hostlen, char *port,
                         size_t portlen)
{
    const char *colon = strrchr(address, ':');
    if (colon == NULL || colon[1] == '\0')
        return -1;
    const char *h = address;
    size_t n = (size_t)(colon - address);
    if (n >= 2 && h[0] == '[' && h[n - 1] == ']') {
        h++;
        n -= 2;
    }
    if (n == 0 || n >= hostlen || strlen(colon + 1) >= portlen)
        return -1;
    memcpy(host, h, n);
    host[n] = '\0';
    snprintf(port, portlen, "%s", colon + 1);
    return 0;
}

static int tt_listen(struct raft_uv_transport *t, raft_uv_accept_cb cb)
{
    struct kp_tls_transport *tt = t->impl;
    char host[256], port[16];
    uv_getaddrinfo_t req;
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    tt->accept_cb = cb;
    if (split_address(tt->address, host, sizeof(host), port, sizeof(port)) != 0) {
        snprintf(t->errmsg, sizeof(t->errmsg), "bad raft address %s", tt->address);
        return RAFT_INVALID;
    }
    /* Synchronous: a listen happens once, at start. */
    int rv = uv_getaddrinfo(tt->loop, &req, NULL, host, port, &hints);
    if (rv != 0) {
        snprintf(t->errmsg, sizeof(t->errmsg), "resolve %s: %s", tt->address, uv_strerror(rv));
        return RAFT_IOERR;
    }
    uv_tcp_init(tt->loop, &tt->listener);
    tt->listener.data = tt;
    tt->listener_open = true;
    rv = uv_tcp_bind(&tt->listener, req.addrinfo->ai_addr, 0);
    uv_freeaddrinfo(req.addrinfo);
    if (rv == 0)
        rv = uv_listen((uv_stream_t *)&tt->listener, 128, on_connection);
    if (rv != 0) {
        snprintf(t->errmsg, sizeof(t->errmsg), "listen on %s: %s", tt->address, uv_strerror(rv));
        return RAFT_IOERR;
    }
    return 0;
}

/* --- outgoing ----------------------------------------------------------------------- */

static void on_connect(uv_connect_t *req, int status)
{
    struct kp_tls_link *l = req->data;
    if (l->state == L_CLOSING)
        return;
    if (status != 0) {
        kp_debug("raft", "link to %s: connect: %s", l->peer, uv_strerror(status));
        kp_tls__link_fail(l, RAFT_NOCONNECTION);
        return;
    }
    int rv = kp_tls__link_start(l);
    if (rv != 0) {
        kp_warn("raft", "link to %s: %s", l->peer, uv_strerror(rv));
        kp_tls__link_fail(l, RAFT_NOMEM);
    }
}

static int dial(struct kp_tls_link *l, const struct sockaddr *addr)
{
    l->state = L_CONNECTING;
    l->connect.data = l;
    return uv_tcp_connect(&l->connect, &l->tcp, addr, on_connect);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct kp_tls_link *l = req->data;
    l->resolving = false;
    int rv = status;
    if (rv == 0 && l->state != L_CLOSING)
        rv = dial(l, res->ai_addr);
    uv_freeaddrinfo(res);
    if (rv != 0 && l->state != L_CLOSING) {
        kp_debug("raft", "link to %s: %s", l->peer, uv_strerror(rv));
        kp_tls__link_fail(l, RAFT_NOCONNECTION);
    }
    kp_tls__link_unref(l);
}

static int tt_connect(struct raft_uv_transport *t, struct raft_uv_connect *req, raft_id id,
                      const char *address, raft_uv_connect_cb cb)
{
    struct kp_tls_transport *tt = t->impl;
    char host[256], port[16];
    struct sockaddr_storage ss;
    (void)id;
    if (tt->closing)
        return RAFT_CANCELED;
    if (split_address(address, host, sizeof(host), port, sizeof(port)) != 0)
        return RAFT_NOCONNECTION;
    struct kp_tls_link *l = kp_tls__link_new(tt, true);
    if (l == NULL)
        return RAFT_NOMEM;
    snprintf(l->peer, sizeof(l->peer), "%s", address);
    req->cb = cb;
    int rv;
    if (uv_ip4_addr(host, atoi(port), (struct sockaddr_in *)&ss) == 0 ||
        uv_ip6_addr(host, atoi(port), (struct sockaddr_in6 *)&ss) == 0) {
        rv = dial(l, (struct sockaddr *)&ss);
    } else {
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
        l->state = L_RESOLVING;
        l->gai.data = l;
        rv = uv_getaddrinfo(tt->loop, &l->gai, on_resolved, host, port, &hints);
        if (rv == 0) {
            l->resolving = true;
            l->pending++;
        }
    }
    if (rv != 0) {
        kp_tls__link_close(l); /* before the request was taken: no callback */
        return RAFT_NOCONNECTION;
    }
    l->req = req;
    return 0;
}

/* --- the transport ---------------------------------------------------------------------- */

static int tt_init(struct raft_uv_transport *t, raft_id id, const char *address)
{
    struct kp_tls_transport *tt = t->impl;
    tt->id = id;
    kp_free(tt->address);
    if ((tt->address = kp_strdup(address)) == NULL)
        return RAFT_NOMEM;
    if (strlen(address) + 1 > ADDRESS_MAX) {
        snprintf(t->errmsg, sizeof(t->errmsg), "raft address longer than %d bytes",
                 ADDRESS_MAX - 1);
        return RAFT_INVALID;
    }
    return 0;
}

static void listener_closed(uv_handle_t *h)
{
    struct kp_tls_transport *tt = h->data;
    tt->listener_open = false;
    kp_tls__maybe_closed(tt);
}

static void tt_close(struct raft_uv_transport *t, raft_uv_transport_close_cb cb)
{
    struct kp_tls_transport *tt = t->impl;
    tt->closing = true;
    tt->close_cb = cb;
    if (tt->listener_open)
        uv_close((uv_handle_t *)&tt->listener, listener_closed);
    for (struct kp_tls_link *l = tt->links; l != NULL; l = l->next)
        kp_tls__link_close(l);
    kp_tls__maybe_closed(tt);
}

/* A context for new links from the three files; NULL with @errmsg naming
 * the file and OpenSSL's reason. */
static SSL_CTX *load_context(const char *cert, const char *key, const char *ca, char *errmsg,
                             size_t errlen)
{
    const char *what = "cannot make a TLS context", *file = "";
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_method());
    if (ctx == NULL)
        goto fail;
    /* Both ends are ours: nothing older than TLS 1.3 needs to be spoken. */
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1)
        goto fail;
    what = "cannot load the certificate chain";
    file = cert;
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1)
        goto fail;
    what = "cannot load the private key";
    file = key;
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        /* It checks the pair itself: say which mistake it is. */
        if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH)
            what = "the certificate does not belong to the private key";
        goto fail;
    }
    what = "the certificate does not belong to the private key";
    if (SSL_CTX_check_private_key(ctx) != 1)
        goto fail;
    what = "cannot load the CA certificates";
    file = ca;
    if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1)
        goto fail;
    /* Mutual: each side presents a certificate and checks the other's
     * against the cluster CA. Any certificate the CA signed is a member. */
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    /* Links are long-lived and never resumed: no session tickets. */
    SSL_CTX_set_num_tickets(ctx, 0);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    return ctx;

fail:;
    char reason[160];
    kp_tls__ssl_reasons(reason, sizeof(reason), "unknown error");
    snprintf(errmsg, errlen, "raft TLS: %s%s%s: %s", what, file[0] ? " from " : "", file, reason);
    SSL_CTX_free(ctx);
    return NULL;
}

int kp_raft_tls_init(struct raft_uv_transport *t, uv_loop_t *loop, const char *cert_file,
                     const char *key_file, const char *ca_file, char *errmsg, size_t errlen)
{
    memset(t, 0, sizeof(*t));
    struct kp_tls_transport *tt = kp_calloc(1, sizeof(*tt));
    if (tt == NULL) {
        snprintf(errmsg, errlen, "out of memory");
        return KP_ENOMEM;
    }
    tt->t = t;
    tt->loop = loop;
    tt->cert_file = kp_strdup(cert_file);
    tt->key_file = kp_strdup(key_file);
    tt->ca_file = kp_strdup(ca_file);
    if (tt->cert_file == NULL || tt->key_file == NULL || tt->ca_file == NULL) {
        snprintf(errmsg, errlen, "out of memory");
        t->impl = tt;
        kp_raft_tls_close(t);
        return KP_ENOMEM;
    }
    tt->ctx = load_context(cert_file, key_file, ca_file, errmsg, errlen);
    t->impl = tt;
    if (tt->ctx == NULL) {
        kp_raft_tls_close(t);
        return KP_ECONFIG;
    }
    t->init = tt_init;
    t->listen = tt_listen;
    t->connect = tt_connect;
    t->close = tt_close;
    return KP_OK;
}

void kp_raft_tls_close(struct raft_uv_transport *t)
{
    struct kp_tls_transport *tt = t->impl;
    if (tt == NULL)
        return;
    SSL_CTX_free(tt->ctx);
    kp_free(tt->cert_file);
    kp_free(tt->key_file);
    kp_free(tt->ca_file);
    kp_free(tt->address);
    kp_free(tt);
    t->impl = NULL;
}

int kp_raft_tls_reload(struct raft_uv_transport *t, char *errmsg, size_t errlen)
{
    struct kp_tls_transport *tt = t->impl;
    SSL_CTX *ctx = load_context(tt->cert_file, tt->key_file, tt->ca_file, errmsg, errlen);
    if (ctx == NULL)
        return KP_ECONFIG;
    SSL_CTX_free(tt->ctx); /* links that hold it keep it until they end */
    tt->ctx = ctx;
    return KP_OK;
}

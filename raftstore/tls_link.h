/* raftstore's mutual-TLS Raft transport, split in two files:
 * transport_tls.c is the struct raft_uv_transport (listen, accept, connect,
 * close, the certificates) and tls_link.c one link (handshake, preamble,
 * relay, teardown). Nothing outside these two files includes this. */
#ifndef KP_RAFTSTORE_TLS_LINK_H
#define KP_RAFTSTORE_TLS_LINK_H

#include <openssl/ssl.h>
#include <raft.h>
#include <raft/uv.h>

#include "raftstore/raft_glue.h"

enum {
    PROTOCOL = 1,             /* raft_uv_tcp's handshake protocol */
    ADDRESS_MAX = 1024,       /* longest address a preamble may announce */
    RELAY_HIGH = 1 << 20,     /* stop reading the other side above this queue */
    RELAY_LOW = 256 << 10,    /* resume below this */
    READ_SIZE = 64 << 10,     /* one read from either side */
    HANDSHAKE_MS = 10000,     /* handshake and preamble must be done by then */
    REFUSAL_QUIET_MS = 60000, /* an identical refusal within this is not logged again */
    REFUSALS_KEPT = 8         /* distinct refusals remembered for that */
};

enum kp_tls_link_state { L_RESOLVING, L_CONNECTING, L_HANDSHAKE, L_PREAMBLE, L_RELAY, L_CLOSING };

struct kp_tls_transport {
    struct raft_uv_transport *t;
    uv_loop_t *loop;
    SSL_CTX *ctx; /* for new links */
    char *cert_file, *key_file, *ca_file;
    raft_id id;
    char *address;
    uv_tcp_t listener;
    bool listener_open;
    /* Takes a connection there is no memory for, to close it: libuv stops
     * watching a listener until its pending connection is accepted. */
    uv_tcp_t refused;
    bool refused_open;
    bool refuse_again; /* another one waits for the handle to close */
    raft_uv_accept_cb accept_cb;
    raft_uv_transport_close_cb close_cb;
    bool closing;
    struct kp_tls_link *links; /* every link not yet freed */
    char rbuf[READ_SIZE];      /* reads never nest on one loop: one buffer */
    /* Refusals repeat once a second while raft retries: each is logged
     * once a minute; a few peers can be refusing at the same time. */
    struct {
        char key[768];
        uint64_t at;
    } refusals[REFUSALS_KEPT];
};

struct kp_tls_link {
    struct kp_tls_transport *tt;
    struct kp_tls_link *prev, *next;
    enum kp_tls_link_state state;
    bool outgoing;
    char peer[80];      /* the peer's host:port, for logs */
    char peer_host[64]; /* the same without the port: refusals repeat from new ports */
    int pending;        /* open handles and requests; freed at 0 */
    uv_getaddrinfo_t gai;
    bool resolving;
    uv_connect_t connect;
    uv_tcp_t tcp;
    uv_timer_t deadline;
    uv_pipe_t pipe;      /* our end of the socketpair */
    bool pipe_open;      /* initialised (closed with the link) */
    uv_pipe_t *raft_end; /* raft_malloc'd: raft frees it once handed over */
    bool tcp_paused;     /* reading TCP stopped: the pipe's queue is full */
    bool pipe_paused;    /* reading the pipe stopped: TCP's queue is full */
    SSL *ssl;
    BIO *rbio, *wbio; /* ciphertext from and to TCP; owned by ssl */
    /* Outgoing: raft's request, until its callback has run. */
    struct raft_uv_connect *req;
    int status; /* for req's callback when the link fails */
    /* Incoming: the preamble, then the address it announces. */
    uint8_t pre[24];
    size_t pre_got;
    char *paddr;
    size_t paddr_len, paddr_got;
};

/* A new link of @tt with its TCP handle and deadline timer (NULL: out of
 * memory). Outgoing links then connect; incoming ones are accepted into
 * l->tcp. */
struct kp_tls_link *kp_tls__link_new(struct kp_tls_transport *tt, bool outgoing);
/* TCP is connected: start TLS (the ClientHello for an outgoing link). */
int kp_tls__link_start(struct kp_tls_link *l);
/* Close every handle; the link is freed when the last one closed, and an
 * outgoing request still pending is completed then (RAFT_CANCELED when the
 * transport is closing, else @status or RAFT_NOCONNECTION). */
void kp_tls__link_close(struct kp_tls_link *l);
void kp_tls__link_fail(struct kp_tls_link *l, int status);
/* Drop one reference (a handle closed, a request done). */
void kp_tls__link_unref(struct kp_tls_link *l);
/* The reasons in the thread's OpenSSL error queue, oldest first ("no start
 * line, PEM lib"), or @none; empties the queue. */
void kp_tls__ssl_reasons(char *buf, size_t len, const char *none);
/* transport_tls.c: a link was freed; a closing transport may be done. */
void kp_tls__maybe_closed(struct kp_tls_transport *tt);

#endif

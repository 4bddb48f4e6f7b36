/* The HTTP/1.1 server behind every keyplane listener (gateway, control,
 * keyplane-mock): llhttp on libuv, one server per worker loop, over plain
 * TCP or TLS (tls.h, kp_http_server_config.tls).
 *
 * A request is parsed whole (headers and body, up to the limits) and handed to
 * the handler as a kp_http_exchange. The handler answers at once or later from
 * the same loop, either with one kp_http_respond() or with a stream
 * (kp_http_stream_begin / _write / _end). Pipelined requests on a connection
 * are parsed and answered one after another, in order.
 *
 * Lifetime of an exchange: valid from the handler call until the handler
 * finishes it with kp_http_respond(), kp_http_stream_end() or kp_http_reset().
 * Exactly one of these must be called, even after the client went away (the
 * abort callback tells the handler; writes then fail with KP_ECLOSED). The
 * exchange must not be touched after the finishing call. */
#ifndef KP_CORE_HTTP_H
#define KP_CORE_HTTP_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "alloc.h"
#include "tls.h"

struct kp_http_limits {
    size_t max_header_bytes;     /* request line + headers; over -> 431 */
    unsigned max_headers;        /* over -> 431 */
    size_t max_body_bytes;       /* over -> 413 */
    uint64_t header_timeout_ms;  /* first byte to end of headers; -> 408 */
    uint64_t body_timeout_ms;    /* end of headers to end of body; -> 408 */
    uint64_t idle_timeout_ms;    /* keep-alive idle; -> close */
    size_t write_high_watermark; /* queued response bytes above which a
                                    stream is not writable */
};

/* 32 KiB headers, 100 headers, 8 MiB body, 10 s headers, 30 s body, 60 s idle,
 * 256 KiB write watermark. */
void kp_http_limits_default(struct kp_http_limits *l);

struct kp_http_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};

/* Make a header from two C strings. */
#define KP_HTTP_HEADER(n, v) ((struct kp_http_header){(n), sizeof(n) - 1, (v), strlen(v)})

struct kp_http_request {
    const char *method; /* "GET", NUL-terminated */
    const char *target; /* raw request-target */
    const char *path;   /* target up to '?' */
    const char *query;  /* after '?', or "" */
    int version_major;
    int version_minor;
    const struct kp_http_header *headers; /* names and values NUL-terminated */
    unsigned n_headers;
    const char *body; /* NUL-terminated; "" when none */
    size_t body_len;
};

/* Case-insensitive lookup; the first match, or NULL. */
const char *kp_http_request_header(const struct kp_http_request *req, const char *name);

struct kp_http_exchange;
struct kp_http_server;

typedef void (*kp_http_handler_fn)(struct kp_http_exchange *ex, const struct kp_http_request *req,
                                   void *arg);
typedef void (*kp_http_event_fn)(struct kp_http_exchange *ex, void *arg);

struct kp_http_server_config {
    const char *name; /* listener label: "gateway", "control", "mock" */
    kp_http_handler_fn handler;
    void *arg;
    struct kp_http_limits limits;
    /* NULL: plain TCP. Else every connection is TLS with the context
     * current when it was accepted (shared by every server of a listener;
     * must outlive them). The handshake must complete within
     * limits.header_timeout_ms. */
    struct kp_tls_server *tls;
    /* NULL, or a flag another thread sets when the drain is coming: from
     * then on every answer says Connection: close (the server keeps
     * accepting), so that clients, and load balancers that balance
     * connections rather than requests, open their next connection
     * elsewhere. Read for each answer, so it holds from the moment it is
     * set, with no hop through this server's loop. Must outlive the server. */
    const atomic_bool *quiesce;
};

/* Parse "host:port", "[v6]:port" or ":port" (all addresses). */
int kp_http_parse_addr(const char *addr, struct sockaddr_storage *out, char *errmsg, size_t errlen);

/* Start a server on @loop listening on @addr with SO_REUSEPORT, so that every
 * worker can bind the same address. When the port is 0, the bound port is
 * written to *bound_port (may be NULL); pass it to the next worker. */
int kp_http_server_start(struct kp_http_server **out, uv_loop_t *loop,
                         const struct kp_http_server_config *cfg, const char *addr, int *bound_port,
                         char *errmsg, size_t errlen);

/* Stop accepting new connections; idle keep-alive connections are closed,
 * connections with a request in flight close after their answer. */
void kp_http_server_drain(struct kp_http_server *srv);
/* Requests in flight (handler called, not yet finished). */
unsigned kp_http_server_inflight(const struct kp_http_server *srv);
/* Open connections. */
unsigned kp_http_server_connections(const struct kp_http_server *srv);
/* Close every connection at once (aborting exchanges) and free the server once
 * all handles are closed; @cb (may be NULL) runs then. */
void kp_http_server_close(struct kp_http_server *srv, void (*cb)(void *arg), void *arg);

/* --- answering ----------------------------------------------------------- */

uv_loop_t *kp_http_loop(struct kp_http_exchange *ex);
/* Memory that lives as long as the exchange. */
void *kp_http_alloc(struct kp_http_exchange *ex, size_t size);
/* Label for metrics (a static string such as "/v1/chat/completions"); by
 * default "other". */
void kp_http_set_route(struct kp_http_exchange *ex, const char *route);
/* Called once if the client goes away before the exchange is finished. The
 * handler must still finish the exchange (kp_http_reset is the usual call). */
void kp_http_on_abort(struct kp_http_exchange *ex, kp_http_event_fn fn, void *arg);
bool kp_http_aborted(const struct kp_http_exchange *ex);
/* Called once when the exchange is finished (answered, streamed to its end,
 * reset, or aborted and finished by the handler), with the status sent
 * (499 when none was), while its memory is still valid. */
typedef void (*kp_http_finish_fn)(struct kp_http_exchange *ex, int status, void *arg);
void kp_http_on_finish(struct kp_http_exchange *ex, kp_http_finish_fn fn, void *arg);

/* A whole answer. Content-Length, Date, Server and Connection are added;
 * @headers must not contain them. Copies everything; finishes the exchange. */
int kp_http_respond(struct kp_http_exchange *ex, int status, const struct kp_http_header *headers,
                    unsigned n_headers, const void *body, size_t len);
/* kp_http_respond with Content-Type: application/json. */
int kp_http_respond_json(struct kp_http_exchange *ex, int status, const char *json, size_t len);

/* A streamed answer: chunked transfer coding for HTTP/1.1 clients, or the
 * body delimited by closing the connection for HTTP/1.0. */
int kp_http_stream_begin(struct kp_http_exchange *ex, int status,
                         const struct kp_http_header *headers, unsigned n_headers);
/* The same, but the head waits for the stream's first bytes (or the end,
 * or kp_http_stream_flush) and goes out with them in one write. The caller
 * must flush it soon: nothing else will. */
int kp_http_stream_begin_held(struct kp_http_exchange *ex, int status,
                              const struct kp_http_header *headers, unsigned n_headers);
/* Write a held head now (no-op when none is held). */
int kp_http_stream_flush(struct kp_http_exchange *ex);
/* Queue @len bytes (copied) as one chunk. Returns KP_ECLOSED after an abort.
 * Never refuses for backpressure: the producer must check
 * kp_http_stream_writable() and wait for the drain callback. */
int kp_http_stream_write(struct kp_http_exchange *ex, const void *data, size_t len);
/* False while more than the write watermark is queued for the client (or
 * after an abort). When it returns false, the drain callback is armed. */
bool kp_http_stream_writable(struct kp_http_exchange *ex);
/* Called once each time the queue falls below half the watermark after
 * kp_http_stream_writable() returned false or a write crossed the
 * watermark. */
void kp_http_on_drain(struct kp_http_exchange *ex, kp_http_event_fn fn, void *arg);
/* Ends the stream (terminating chunk) and finishes the exchange. */
int kp_http_stream_end(struct kp_http_exchange *ex);
/* The same after a last chunk of @len bytes, both in one write. */
int kp_http_stream_end_with(struct kp_http_exchange *ex, const void *data, size_t len);
/* Closes the connection with a TCP reset and finishes the exchange. */
void kp_http_reset(struct kp_http_exchange *ex);

/* Bytes queued but not yet written to this exchange's socket. */
size_t kp_http_queued_bytes(const struct kp_http_exchange *ex);

/* The request's id: the client's X-Request-Id when it is 1-128 characters
 * of [A-Za-z0-9._:-], else a new "req_" + 32 hex digits (exchange memory;
 * "req_unknown" when out of memory). */
const char *kp_http_request_id(struct kp_http_exchange *ex, const struct kp_http_request *req);

/* "127.0.0.1:5000", the address of the client (for logs). */
int kp_http_peer_addr(struct kp_http_exchange *ex, char *out, size_t len);
/* Whether the exchange came over TLS. */
bool kp_http_tls(const struct kp_http_exchange *ex);

/* "OK", "Not Found", ... */
const char *kp_http_reason(int status);

#endif

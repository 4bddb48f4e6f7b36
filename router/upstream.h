/* router/upstream: HTTP calls to providers from a router worker's loop.
 *
 * One struct kp_upstream per worker: a libcurl multi handle driven by the
 * worker's libuv loop through the multi-socket API (CURLMOPT_SOCKETFUNCTION
 * and CURLMOPT_TIMERFUNCTION mapped onto uv_poll_t and a uv_timer_t), so
 * many calls run at once on one thread without blocking it. Easy handles
 * and connections are reused across calls (keep-alive; HTTP/2 multiplexing
 * where the provider offers it); TLS is always verified; redirects are
 * never followed; only http and https are allowed, http only when the call
 * says so (a loopback mock).
 *
 * A call streams: the response head (status and headers) arrives once,
 * then body bytes as they come, then exactly one completion — unless the
 * caller cancels first, after which no callback runs. Internal to router/. */
#ifndef KP_ROUTER_UPSTREAM_H
#define KP_ROUTER_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/core.h"

struct kp_upstream;
struct kp_upstream_call;

/* How a call ended (what the router's error classes are made from). */
enum kp_upstream_result {
    KP_UPSTREAM_OK,                 /* a whole response arrived (any status) */
    KP_UPSTREAM_CONNECT,            /* DNS, TCP or TLS failed, or refused */
    KP_UPSTREAM_TIMEOUT_CONNECT,    /* connect_timeout_ms passed */
    KP_UPSTREAM_TIMEOUT_FIRST_BYTE, /* no response head within first_byte_timeout_ms */
    KP_UPSTREAM_TIMEOUT_IDLE,       /* no body bytes for idle_timeout_ms */
    KP_UPSTREAM_TIMEOUT_TOTAL,      /* total_timeout_ms passed */
    KP_UPSTREAM_PROTOCOL,           /* malformed response, reset mid-body, ... */
    KP_UPSTREAM_NOMEM,
};

/* "ok", "connect", "timeout_connect", ... */
const char *kp_upstream_result_name(enum kp_upstream_result r);

struct kp_upstream_callbacks {
    /* The status line and headers (names lower-cased, values trimmed). */
    void (*on_head)(void *arg, int status, const struct kp_http_header *headers, unsigned n);
    /* Body bytes, as they arrive (chunked coding already removed). Return
     * false to pause the transfer (backpressure); resume with
     * kp_upstream_resume. */
    bool (*on_body)(void *arg, const void *data, size_t len);
    /* Exactly once, unless cancelled. @detail is a short message for logs
     * and error bodies: it never contains the URL's query, headers or body. */
    void (*on_done)(void *arg, enum kp_upstream_result result, const char *detail);
    void *arg;
    /* Optional: the body bytes that follow come from another read of the
     * network than the last ones did. Within one pass of curl (it reads
     * again while the socket stays readable, before the settled hook
     * runs), the moment to pass on what the earlier reads made. */
    void (*on_read)(void *arg);
};

/* The total timeout of a call whose provider sets none (ms). */
#define KP_UPSTREAM_TOTAL_MS 600000u

struct kp_upstream_request {
    const char *method; /* "POST", "GET" */
    const char *url;    /* http:// only with allow_http */
    bool allow_http;
    /* Request headers, copied at start. Never pass the app's Authorization:
     * the caller sets the provider's own auth header here. */
    const struct kp_http_header *headers;
    unsigned n_headers;
    /* Not copied: must stay valid until on_done or cancel. */
    const void *body;
    size_t body_len;
    uint32_t connect_timeout_ms;    /* 0: 5000 */
    uint32_t first_byte_timeout_ms; /* 0: 60000 */
    uint32_t idle_timeout_ms;       /* 0: 60000 */
    uint32_t total_timeout_ms;      /* 0: KP_UPSTREAM_TOTAL_MS */
    /* A stream: small reads, so an open stream holds a small receive
     * buffer (events are a few hundred bytes; a burst takes more reads). */
    bool stream;
};

/* One per loop. KP_ENOMEM, or KP_ECONFIG when libcurl lacks what is needed
 * (with @errmsg). curl_global_init must have run (the process does it once
 * at start). */
int kp_upstream_new(struct kp_upstream **out, uv_loop_t *loop, char *errmsg, size_t errlen);
/* Cancel every call (no callbacks), close handles; @cb runs once freed. */
void kp_upstream_close(struct kp_upstream *u, void (*cb)(void *arg), void *arg);

/* Start a call. KP_OK with *@out; KP_EINVAL (bad URL or scheme, with
 * @errmsg), KP_ENOMEM. Callbacks never run from inside this function. */
int kp_upstream_start(struct kp_upstream *u, const struct kp_upstream_request *req,
                      const struct kp_upstream_callbacks *cb, struct kp_upstream_call **out,
                      char *errmsg, size_t errlen);
/* Abort at once (the connection is closed, not returned to the pool, so
 * the provider sees the client going away). No callback runs afterwards.
 * Safe from inside this call's callbacks. */
void kp_upstream_cancel(struct kp_upstream_call *call);
/* Resume a transfer paused by on_body returning false. */
void kp_upstream_resume(struct kp_upstream_call *call);

/* Calls in flight, for metrics and tests. */
unsigned kp_upstream_active(const struct kp_upstream *u);

/* True while curl is running callbacks (on_head, on_body): a pass of curl
 * over what the loop saw is under way, and the settled hook follows it. */
bool kp_upstream_in_pass(const struct kp_upstream *u);
/* @fn runs after every pass of curl (a socket or timer event, a resume),
 * once no callback is running and finished transfers have been reported:
 * the place to write what one read of the network made, in one go. */
void kp_upstream_on_settled(struct kp_upstream *u, void (*fn)(void *arg), void *arg);

#endif

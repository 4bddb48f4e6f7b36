/* router/sse: an incremental parser of text/event-stream (the SSE format
 * of the WHATWG HTML spec), for provider streams. Bytes go in as they
 * arrive, split anywhere; whole events come out. Internal to router/. */
#ifndef KP_ROUTER_SSE_H
#define KP_ROUTER_SSE_H

#include <stddef.h>

#include "core/core.h"

struct kp_sse_event {
    const char *event; /* "message" when the stream named none */
    size_t event_len;
    const char *data; /* data lines joined with '\n', NUL-terminated */
    size_t data_len;
};

struct kp_sse_parser {
    struct kp_buf line;  /* the line being read */
    struct kp_buf event; /* event name of the event being read */
    struct kp_buf data;  /* data of the event being read */
    size_t max_event;    /* bytes one event may hold before KP_ETOOBIG */
    int state;           /* internal */
};

/* @max_event: 0 means 8 MiB. */
void kp_sse_init(struct kp_sse_parser *p, size_t max_event);
void kp_sse_free(struct kp_sse_parser *p);

/* Feed @len bytes; @fn runs for each event completed by them (a blank
 * line dispatches; events with no data line are skipped, as the spec
 * says). A non-zero return from @fn stops parsing and is returned.
 * Otherwise KP_OK, KP_ETOOBIG (an event over max_event: the stream is
 * broken) or KP_ENOMEM. Comments (":...") and unknown fields are ignored;
 * CR, LF and CRLF all end lines; a leading BOM is skipped. */
int kp_sse_feed(struct kp_sse_parser *p, const void *bytes, size_t len,
                int (*fn)(void *arg, const struct kp_sse_event *ev), void *arg);

#endif

/* Internal to bench/: reading one HTTP/1.1 answer with llhttp, noting what
 * the figures need (status, whether it is an SSE stream, when its first
 * event ended, how many events it held, whether the connection stays open).
 *
 * Pure: the caller feeds the bytes with the time they arrived. One per
 * connection; answers follow one another on it. */
#ifndef KP_BENCH_RESPONSE_H
#define KP_BENCH_RESPONSE_H

#include <llhttp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct kp_bench_response {
    llhttp_t parser;
    uint64_t now_ns;         /* arrival time of the bytes being fed */
    uint64_t first_event_ns; /* SSE: when the first event ended */
    uint32_t events;         /* SSE: events so far */
    uint16_t status;
    bool complete;   /* the answer ended */
    bool keep_alive; /* and the connection may carry the next request */
    bool sse;        /* Content-Type: text/event-stream */
    bool field_is_ctype;
    bool event_open; /* SSE: the current event has a field line */
    uint8_t line;    /* SSE: what the current line is so far */
    uint8_t field_len;
    uint8_t ctype_len;
    char field[16];
    char ctype[48];
};

/* The llhttp callbacks, shared by every response of a thread. */
void kp_bench__response_settings(llhttp_settings_t *s);
/* A fresh parser for a new connection. */
void kp_bench__response_init(struct kp_bench_response *r, const llhttp_settings_t *s);
/* Forget the last answer's figures before the next request. */
void kp_bench__response_expect(struct kp_bench_response *r);
/* Parse @len bytes that arrived at @now_ns. HPE_OK, or llhttp's error when
 * the bytes are not an HTTP/1.1 answer. r->complete tells whether the
 * answer ended (bytes past its end are an error: no pipelining here). */
llhttp_errno_t kp_bench__response_feed(struct kp_bench_response *r, const char *data, size_t len,
                                       uint64_t now_ns);
/* The connection ended: true when that ended the answer too (an answer
 * delimited by closing the connection). */
bool kp_bench__response_eof(struct kp_bench_response *r);

#endif

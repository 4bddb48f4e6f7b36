/* Traces: W3C trace context and the spans keyplane exports over OTLP
 * (docs/observability.md).
 *
 * Trace context (W3C Trace Context, level 1 with level 2's future-version
 * rules): a `traceparent` header is parsed strictly and a malformed one is
 * ignored, so the caller starts a new trace; a `tracestate` is kept only
 * when it is well formed.
 *
 * Spans are plain data collected in a struct kp_span_set, which owns every
 * string of its spans in one arena: a worker builds a set at the end of a
 * call and hands it to another thread, which encodes it as OTLP/JSON
 * (kp_span_otlp) and frees it. Nothing here does I/O. */
#ifndef KP_CORE_TRACE_H
#define KP_CORE_TRACE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "alloc.h"

/* "00-" 32 hex "-" 16 hex "-" 2 hex */
#define KP_TRACEPARENT_LEN 55
/* A longer tracestate is dropped whole rather than cut. */
#define KP_TRACESTATE_MAX 512
/* trace-flags bit 0 */
#define KP_TRACE_SAMPLED 0x01

/* What a traceparent carries: the trace, the caller's span (the parent of
 * ours) and the caller's flags. */
struct kp_trace_parent {
    uint8_t trace_id[16];
    uint8_t span_id[8];
    uint8_t flags;
};

/* Parse a traceparent value (blanks around it allowed). KP_OK, or
 * KP_EINVAL for anything the specification says to ignore: a bad length,
 * upper-case or non-hex digits, a missing dash, version ff, an all-zero
 * trace id or parent id, version 00 with trailing data, a later version
 * whose fields are not followed by the end or a dash. */
int kp_traceparent_parse(const char *s, size_t len, struct kp_trace_parent *out);
/* Version 00 text of (@trace_id, @span_id, @flags) into @out. */
void kp_traceparent_format(const uint8_t trace_id[16], const uint8_t span_id[8], uint8_t flags,
                           char out[KP_TRACEPARENT_LEN + 1]);
/* Whether @s[0..len) is a tracestate to pass on: at most 32 list members
 * of key=value with the specification's key and value grammar, no key
 * twice, and at most KP_TRACESTATE_MAX bytes. Empty members are allowed. */
bool kp_tracestate_valid(const char *s, size_t len);

/* @n random bytes (OpenSSL), never all zero. */
void kp_trace_new_id(uint8_t *id, size_t n);
/* The ratio sampler: keeps a trace when the low 56 bits of its id (the
 * random part) fall below @ratio of their range, so every node decides
 * alike for the same trace. @ratio <= 0 keeps none, >= 1 keeps all. */
bool kp_trace_ratio_keeps(const uint8_t trace_id[16], double ratio);
/* Wall clock in Unix nanoseconds. */
int64_t kp_now_unix_ns(void);

/* --- spans ------------------------------------------------------------- */

enum kp_span_kind { KP_SPAN_INTERNAL = 1, KP_SPAN_SERVER = 2, KP_SPAN_CLIENT = 3 };
enum kp_span_status { KP_SPAN_UNSET = 0, KP_SPAN_OK = 1, KP_SPAN_ERROR = 2 };
enum kp_attr_type { KP_ATTR_STR, KP_ATTR_INT, KP_ATTR_BOOL, KP_ATTR_STRS };

/* @key is a static string; values live in the set's arena. */
struct kp_span_attr {
    const char *key;
    uint8_t type;
    const char *s;           /* KP_ATTR_STR */
    const char *const *strs; /* KP_ATTR_STRS: @i of them */
    int64_t i;               /* KP_ATTR_INT, KP_ATTR_BOOL (0/1), count of strs */
};

#define KP_SPAN_EVENTS_MAX 2

struct kp_span_event {
    const char *name; /* static */
    int64_t time_ns;
};

struct kp_span {
    uint8_t trace_id[16];
    uint8_t span_id[8];
    uint8_t parent_id[8];    /* all zero: a root span */
    const char *trace_state; /* NULL: none */
    const char *name;
    uint8_t kind;               /* enum kp_span_kind */
    uint8_t status;             /* enum kp_span_status */
    const char *status_message; /* NULL: none */
    int64_t start_ns, end_ns;   /* Unix ns */
    struct kp_span_attr *attrs;
    unsigned nattrs, cap_attrs;
    struct kp_span_event events[KP_SPAN_EVENTS_MAX];
    unsigned nevents;
};

/* Finished spans and the memory behind them. The set lives in its own
 * arena; @next is for whoever holds it (a queue). */
struct kp_span_set {
    struct kp_span_set *next;
    struct kp_arena arena;
    struct kp_span *spans;
    unsigned n, cap;
};

/* A set with room for @max_spans spans; NULL when out of memory. */
struct kp_span_set *kp_span_set_new(unsigned max_spans);
void kp_span_set_free(struct kp_span_set *s);
/* A new span (ids, times and status zero) with room for @max_attrs
 * attributes; @name is copied. NULL when the set is full or out of
 * memory. */
struct kp_span *kp_span_add(struct kp_span_set *s, const char *name, enum kp_span_kind kind,
                            unsigned max_attrs);
/* Attributes. Telemetry is best effort: out of room or memory, an
 * attribute is left out. Strings are copied; NULL or "" adds nothing. */
void kp_span_str(struct kp_span_set *s, struct kp_span *sp, const char *key, const char *v);
void kp_span_int(struct kp_span *sp, const char *key, int64_t v);
void kp_span_bool(struct kp_span *sp, const char *key, bool v);
void kp_span_strs(struct kp_span_set *s, struct kp_span *sp, const char *key, const char *const *v,
                  unsigned n);
void kp_span_event(struct kp_span *sp, const char *name, int64_t time_ns);
/* @message (copied, may be NULL) */
void kp_span_status(struct kp_span_set *s, struct kp_span *sp, enum kp_span_status status,
                    const char *message);
/* @v copied (may be NULL). */
void kp_span_trace_state(struct kp_span_set *s, struct kp_span *sp, const char *v);

/* --- OTLP/JSON ----------------------------------------------------------- */

/* One span as an OTLP/JSON Span object: hex ids, times as decimal strings of
 * Unix nanoseconds, integers as decimal strings, kind and status code as
 * numbers. String values pass through kp_redact, a second line of defence
 * against a key-shaped value an app put in a header. NULL when out of
 * memory. */
json_t *kp_span_otlp(const struct kp_span *sp);
/* An ExportTraceServiceRequest: {"resourceSpans":[{"resource":{"attributes":
 * [@resource...]},"scopeSpans":[{"scope":{"name","version"},"spans":
 * @spans}]}]}. Takes @spans (a JSON array); NULL when out of memory. */
json_t *kp_otlp_request(json_t *spans, const struct kp_span_attr *resource, unsigned nresource,
                        const char *scope_name, const char *scope_version);

#endif

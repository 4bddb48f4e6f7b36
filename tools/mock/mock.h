/* kpmock: the pure logic of keyplane-mock, a mock OpenAI / Anthropic / Gemini
 * upstream with fault injection.
 *
 * kp_mock_handle() turns one parsed HTTP request into a kp_mock_answer: a
 * status, a few headers, a body (or the events of a stream, concatenated) and
 * the timing faults the transport must apply (delays, a TCP reset after N
 * events). It never touches a socket or a loop, so unit tests and the libuv
 * glue (serve_uv.c) share it. Everything it produces is deterministic: usage
 * is derived from the request, the reply is "mock0 mock1 ...", and ids come
 * from a per-shard counter.
 *
 * One struct kp_mock is shared by all worker threads. Each worker owns one
 * stats shard (its index), so counting never contends; scripted faults live in
 * one table behind a mutex that the request path skips while it is empty. */
#ifndef KP_TOOLS_MOCK_H
#define KP_TOOLS_MOCK_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/core.h"

/* Words in a full reply; max_tokens below this truncates the reply. */
#define KP_MOCK_WORDS 16
/* Prompt tokens added per message (role, separators), like real tokenizers. */
#define KP_MOCK_MSG_OVERHEAD    4
#define KP_MOCK_MAX_EVENTS      64
#define KP_MOCK_MAX_DELAY_MS    600000u
#define KP_MOCK_MAX_RETRY_AFTER 86400u
#define KP_MOCK_MAX_RESET_AFTER 1000
/* "fp_" + 12 hex digits + NUL. */
#define KP_MOCK_FP_LEN 16

enum kp_mock_route {
    KP_MOCK_R_CHAT,
    KP_MOCK_R_COMPLETIONS,
    KP_MOCK_R_EMBEDDINGS,
    KP_MOCK_R_RESPONSES,
    KP_MOCK_R_MODELS,
    KP_MOCK_R_MESSAGES,
    KP_MOCK_R_GENERATE,
    KP_MOCK_R_STREAM_GENERATE,
    KP_MOCK_R_GEMINI_MODELS, /* GET /v1beta/models: a Gemini canary */
    KP_MOCK_R_BALANCE,       /* GET /v1/user/balance: an account balance */
    KP_MOCK_R_OTHER,
    KP_MOCK_R_CONTROL, /* /mock/... and /healthz: never counted */
    KP_MOCK_R_COUNT
};

enum kp_mock_provider { KP_MOCK_OPENAI, KP_MOCK_ANTHROPIC, KP_MOCK_GEMINI };

/* Static label of a route ("/v1/chat/completions"). */
const char *kp_mock_route_name(enum kp_mock_route r);
/* The provider route labelled @name (as in /mock/stats); -1 for none. */
int kp_mock_route_parse(const char *name);

/* --- faults -------------------------------------------------------------- */

/* How a 429 says when to come back. */
enum kp_mock_retry_form {
    KP_MOCK_RETRY_SECONDS, /* Retry-After: N */
    KP_MOCK_RETRY_DATE,    /* Retry-After: an HTTP-date N seconds ahead */
    KP_MOCK_RETRY_MS,      /* retry-after-ms: N alone (OpenAI's header) */
};

struct kp_mock_faults {
    int status;                  /* 0, or the error status to answer with */
    bool quota;                  /* with status 429: out of quota, not rate limited */
    unsigned retry_after;        /* a 429's wait: seconds, or ms for KP_MOCK_RETRY_MS */
    uint8_t retry_form;          /* enum kp_mock_retry_form */
    unsigned latency_ms;         /* hold the whole answer */
    unsigned slow_first_byte_ms; /* hold the status line and headers */
    unsigned slow_chunks_ms;     /* pause between stream events */
    int reset_after;             /* TCP reset after this many events; -1: none */
    bool malformed_json;         /* corrupt the body or one stream event */
};

void kp_mock_faults_init(struct kp_mock_faults *f);
/* Parse "SPEC[,SPEC...]" (see README.md) into @f, which it initialises first.
 * Returns 0, or KP_EINVAL with a message naming the bad spec. */
int kp_mock_faults_parse(struct kp_mock_faults *f, const char *spec, size_t len, char *errmsg,
                         size_t errlen);
/* Overlay @src on @dst: fields set in @src win. */
void kp_mock_faults_merge(struct kp_mock_faults *dst, const struct kp_mock_faults *src);
/* Total delay before the status line goes out. */
unsigned kp_mock_faults_head_delay(const struct kp_mock_faults *f);

/* --- answers ------------------------------------------------------------- */

struct kp_mock_answer {
    int status;
    enum kp_mock_route route;
    bool counted;             /* provider traffic: goes into the stats */
    bool stream;              /* body is n_events events sent one by one */
    bool failed;              /* building ran out of memory */
    const char *content_type; /* static */
    const char *allow;        /* static Allow header of a 405, or NULL */
    char retry_after[32];     /* "" when none */
    char retry_after_ms[16];  /* "" when none */
    struct kp_buf body;
    size_t event_end[KP_MOCK_MAX_EVENTS];
    unsigned n_events;
    int malformed_event;            /* event a malformed_json fault corrupts */
    uint64_t tokens_in, tokens_out; /* the usage a 200 answer reports (stats) */
    struct kp_mock_faults faults;
};

void kp_mock_answer_init(struct kp_mock_answer *a);
/* Forget the previous answer but keep the body's memory for the next one. */
void kp_mock_answer_clear(struct kp_mock_answer *a);
void kp_mock_answer_free(struct kp_mock_answer *a);
/* Fill @out (room for KP_MOCK_ANSWER_HEADERS) with the answer's headers;
 * returns how many. The values point into @a (or static strings). */
#define KP_MOCK_ANSWER_HEADERS 5
unsigned kp_mock_answer_headers(const struct kp_mock_answer *a, struct kp_http_header *out);
/* Start and length of event @i of a stream answer. */
void kp_mock_answer_event(const struct kp_mock_answer *a, unsigned i, const char **p, size_t *len);

/* --- the mock ------------------------------------------------------------ */

struct kp_mock_script;
struct kp_mock_shard;

#define KP_MOCK_BALANCES 64
struct kp_mock_balance {
    char fp[KP_MOCK_FP_LEN]; /* the key's fingerprint */
    char usd[32];            /* what GET /v1/user/balance says is left */
};

struct kp_mock {
    pthread_mutex_t script_lock; /* guards the scripts and the balances */
    struct kp_mock_balance balances[KP_MOCK_BALANCES];
    unsigned n_balances;
    atomic_uint n_scripts;          /* read without the lock: 0 means skip the table */
    struct kp_mock_script *scripts; /* guarded by script_lock */
    unsigned script_cap;
    struct kp_mock_shard **shards;
    unsigned n_shards;
    int64_t fixed_time;  /* Unix seconds used for "created"; 0: the clock */
    atomic_ulong tp_seq; /* orders the traceparents the shards saw */
};

int kp_mock_init(struct kp_mock *m, unsigned n_shards);
void kp_mock_close(struct kp_mock *m);

/* Answer @req into @a (cleared first). @shard is the calling worker's index;
 * only that worker may use it. Never fails: out of memory yields a 503. */
void kp_mock_handle(struct kp_mock *m, unsigned shard, const struct kp_http_request *req,
                    struct kp_mock_answer *a);

/* --- scripted faults ----------------------------------------------------- */

/* Apply @spec to every request carrying @key, @times times (0: until
 * cleared), only on @route when it is >= 0 (an enum kp_mock_route; -1:
 * every route). Replaces an earlier script for the same key. */
int kp_mock_script_set(struct kp_mock *m, const char *key, size_t key_len, const char *spec,
                       size_t spec_len, unsigned times, int route, char *errmsg, size_t errlen);
/* Consume one use of @key's script for a request on @route into @out;
 * false when there is none (or it is for another route). */
bool kp_mock_script_take(struct kp_mock *m, const char *key, size_t key_len,
                         enum kp_mock_route route, struct kp_mock_faults *out);
/* What GET /v1/user/balance answers for @key: @usd (a decimal string);
 * -1 when the table is full or @usd is not a decimal. */
int kp_mock_balance_set(struct kp_mock *m, const char *key, size_t key_len, const char *usd);
/* @key's balance into @out; false when none was set. */
bool kp_mock_balance_get(struct kp_mock *m, const char *key, size_t key_len, char out[32]);
/* Remove @key's script (key NULL: all). Returns how many were removed. */
unsigned kp_mock_script_clear(struct kp_mock *m, const char *key, size_t key_len);
/* {"faults":[{"key_fp","faults","times_left","hits"}...]}: never a key. */
int kp_mock_script_render(struct kp_mock *m, struct kp_buf *out);

/* --- stats --------------------------------------------------------------- */

/* "fp_" + the first 12 hex digits of SHA-256(key) into @out. */
void kp_mock_fingerprint(const char *key, size_t len, char out[KP_MOCK_FP_LEN]);
/* A provider request arrived on @route carrying @key (NULL when none). */
void kp_mock_stats_request(struct kp_mock *m, unsigned shard, enum kp_mock_route route,
                           const char *key, size_t key_len);
/* The status line of a counted answer went out. */
void kp_mock_stats_status(struct kp_mock *m, unsigned shard, int status);
/* The usage a 200 answer reported: what a provider would bill. */
void kp_mock_stats_tokens(struct kp_mock *m, unsigned shard, uint64_t in, uint64_t out);
/* The client went away before its exchange was finished. */
void kp_mock_stats_aborted(struct kp_mock *m, unsigned shard);
/* A reset_mid_stream fault reset a connection. */
void kp_mock_stats_reset_sent(struct kp_mock *m, unsigned shard);
/* A provider request carried a traceparent header (@value, kept when it
 * is at most 128 bytes): /mock/stats shows the last one seen. */
void kp_mock_stats_traceparent(struct kp_mock *m, unsigned shard, const char *value);
/* Zero every counter of every shard. */
void kp_mock_stats_clear(struct kp_mock *m);
/* {"requests","routes":{},"keys":{fp:n},"statuses":{},"aborted","resets",
 * "tokens":{},"last_traceparent"} */
int kp_mock_stats_render(struct kp_mock *m, struct kp_buf *out);
/* Next id of a shard ("w0-000001" style, into @out of 32 bytes). */
void kp_mock_next_id(struct kp_mock *m, unsigned shard, char *out, size_t len);

#endif

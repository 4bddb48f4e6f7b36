/* Internal to router/: one call's state and the steps that share it.
 *
 *   gateway.c   routes a request, parses its body once, runs the steps
 *               below, records the usage event, answers errors
 *   auth.c      the app token and the attribution headers vs its scope
 *   select.c    the pool's usable keys, in the order they are tried
 *   attempt.c   one upstream attempt per key: request, streaming back,
 *               usage capture, failover to the next key
 *   answer_scan.c  the usage and model of an answer relayed as is
 *   shape.c     what goes upstream and comes back per (endpoint, provider
 *               kind): as is, or through the adapters
 *   secrets.c   the worker's cache of opened provider secrets
 *   breaker.c   the worker's cooldowns and circuit breakers of keys
 *   metrics.c   the router's Prometheus counters (bounded label sets)
 *   ratelimit.c requests and tokens per minute across the cluster (GCRA)
 *   budget.c    the budgets covering a call: worst case reserved against
 *               the node's grants, max_tokens capped, actual cost settled
 *   ledger.c    the node's grants of every budget, shared by the workers
 *               and the node's lease client
 *   trace.c     the call's trace context, its spans and its access log
 *               record (docs/observability.md) */
#ifndef KP_ROUTER_INTERNAL_H
#define KP_ROUTER_INTERNAL_H

#include <jansson.h>

#include "adapter.h"
#include "router/router.h"
#include "sse.h"
#include "upstream.h"

enum kp_endpoint {
    KP_EP_CHAT,        /* /v1/chat/completions */
    KP_EP_COMPLETIONS, /* /v1/completions */
    KP_EP_EMBEDDINGS,  /* /v1/embeddings */
    KP_EP_RESPONSES,   /* /v1/responses */
    KP_EP_MESSAGES,    /* /anthropic/v1/messages (Anthropic's shape) */
};

/* How an attempt talks to its provider (shape.c). */
enum kp_shape {
    KP_SHAPE_OPENAI,             /* OpenAI endpoint, OpenAI-shaped provider: as is */
    KP_SHAPE_CHAT_VIA_ANTHROPIC, /* chat completions translated to Messages */
    KP_SHAPE_CHAT_VIA_GEMINI,    /* chat completions translated to generateContent */
    KP_SHAPE_MESSAGES,           /* Messages to Anthropic: as is */
    KP_SHAPE_MESSAGES_VIA_CHAT,  /* Messages translated to chat completions */
};

/* A key the call may try, in order. */
struct kp_candidate {
    const struct kp_key *key;
    const struct kp_provider *provider;
    const char *pool;
};

#define KP_MAX_CANDIDATES 64

struct kp_secret_cache;
struct kp_breakers;
struct kp_budget_wake;

/* ledger.c: one call's reservation on one budget. */
enum kp_ledger_result {
    KP_LEDGER_OK,        /* reserved */
    KP_LEDGER_WAIT,      /* not enough held yet: the node is asking for more */
    KP_LEDGER_EXHAUSTED, /* not enough held, and the last ask got nothing */
};

struct kp_ledger_hold {
    struct kp_ledger_slot *slot;
    const struct kp_policy *policy; /* in the call's view */
    const struct kp_budget *budget;
    struct kp_budget_window_def window_def; /* the budget's, copied */
    bool hard;
    bool held;             /* reserved: settle it when the call ends */
    kp_nanousd amount;     /* reserved (0 on a soft budget) */
    int64_t window;        /* the grant's window it was reserved in */
    kp_nanousd avail;      /* after a refusal: what the node had free */
    uint64_t answers_seen; /* the slot's answer count at the last try */
    uint32_t epoch;        /* the slot's, when reserved */
};

/* The slot of (@policy, @budget), claimed on first use; NULL when the
 * table is full or a name is too long. */
struct kp_ledger_slot *kp_budget_ledger__slot(struct kp_budget_ledger *l, const char *policy,
                                              const char *budget);
enum kp_ledger_result kp_budget_ledger_reserve(struct kp_budget_ledger *l, struct kp_ledger_hold *h,
                                               int64_t now_ms);
/* The call is over: @actual moves from reserved to spent (to report). */
void kp_budget_ledger_settle(struct kp_budget_ledger *l, const struct kp_ledger_hold *h,
                             kp_nanousd actual, int64_t now_ms);
/* A call was refused: give back what is left, so another node can use it. */
void kp_budget_ledger_give_back(struct kp_budget_ledger *l, const struct kp_ledger_hold *h);
/* Wake @async (a worker loop's) whenever answers came. */
int kp_budget_ledger_watch(struct kp_budget_ledger *l, uv_async_t *async);
void kp_budget_ledger_unwatch(struct kp_budget_ledger *l, uv_async_t *async);

#define KP_CALL_BUDGETS 16
#define KP_KEY_BUDGETS  4

/* trace.c: what a call's spans are made from. */
#define KP_TRACE_ATTEMPTS 16 /* attempts with a span; later ones are counted */
#define KP_TRACE_FINISH   4  /* distinct finish reasons kept */

struct kp_trace_attempt {
    uint8_t span_id[8];
    const struct kp_key *key; /* the call's view holds these */
    const struct kp_provider *provider;
    const char *pool;
    const char *model;                 /* asked of the provider */
    int64_t start_ns, end_ns, head_ns; /* Unix ns; 0: not yet */
    int status;                        /* the provider's HTTP status, 0: none */
    const char *cls;                   /* failure class (static), NULL: none */
    bool retry;                        /* the same key again */
};

struct kp_call_trace {
    uint8_t trace_id[16];
    uint8_t span_id[8];                    /* the server span's */
    uint8_t parent_id[8];                  /* the app's span; zero: a new trace */
    uint8_t flags;                         /* trace-flags sent upstream and to the app */
    bool sampled;                          /* head decision: the app's flag, else the ratio */
    int64_t start_ns;                      /* Unix ns when the call started */
    char *tracestate;                      /* the app's, passed on; NULL: none */
    char header[KP_TRACEPARENT_LEN + 1];   /* for the app's answers */
    char upstream[KP_TRACEPARENT_LEN + 1]; /* for the attempt being built */
    uint8_t next_span[8];                  /* that attempt's span */
    /* Most calls make one attempt: a few inline, up to KP_TRACE_ATTEMPTS
     * on the heap once more are made (trace.c). */
    struct kp_trace_attempt *att;
    struct kp_trace_attempt att_small[2];
    unsigned natt;                    /* recorded in att */
    unsigned started;                 /* every attempt started */
    int cur;                          /* att index of the current attempt, -1: none */
    unsigned failed;                  /* attempts that failed */
    char *dg_model[2];                /* the model after each downgrade */
    char finish[KP_TRACE_FINISH][24]; /* finish reasons seen */
    unsigned nfinish;
};

struct kp_router {
    uv_loop_t *loop;
    struct kp_upstream *up;
    struct kp_router_shared sh;
    struct kp_secret_cache *secrets;
    struct kp_breakers *breakers;
    uint64_t rng;                   /* xorshift state for the weighted strategy */
    struct kp_token_mac *token_mac; /* auth.c: made on the first call */
    struct kp_call *calls;          /* in flight, for close */
    struct kp_call *spare_calls;    /* freed, for the next calls (next) */
    unsigned n_spare_calls;
    struct kp_budget_wake *budget_wake; /* budget.c: wakes waiting calls */
    struct kp_call *sse_flush;          /* attempt.c: calls with SSE to write after curl's pass */
    bool closing;
    void (*close_cb)(void *arg);
    void *close_arg;
};

struct kp_call {
    struct kp_router *r;
    struct kp_call *next, *prev; /* r->calls */
    struct kp_http_exchange *ex;
    const struct kp_http_request *req;
    const char *rid;
    enum kp_endpoint ep;
    const char *route; /* metrics label */
    struct kp_view *view;
    const struct kp_token *token;
    struct kp_token_scope scope;
    const char *pool_name;
    int64_t start_ms;
    uint64_t start_us;

    json_t *body;      /* the app's request, once built (kp_router__body) */
    const char *model; /* from body */
    bool stream;
    bool stream_options;          /* the app sent stream_options */
    bool limit_charged;           /* its tokens are in the per-minute limits */
    bool client_wants_usage;      /* stream_options.include_usage from the app */
    struct kp_buf rewritten_body; /* the app's body with include_usage added */
    /* SSE made during one pass of curl (a read of the upstream often
     * holds many events, each in its own HTTP chunk), written to the app
     * in one go when the pass ends: one write per read, as a plain proxy
     * does, not one per event. */
    struct kp_buf sse_out;
    struct kp_call *sse_flush_next;
    bool sse_flush_queued;
    struct kp_buf upstream_body; /* this attempt's translated body */

    /* The keys to try, in order: a pool or two of a few keys each fit in
     * cand_small; a longer list moves to the heap (select.c). */
    struct kp_candidate *cand;
    struct kp_candidate cand_small[4];
    unsigned ncand, next_cand;
    unsigned attempts;

    /* the current attempt */
    const struct kp_candidate *cur;
    struct kp_upstream_call *up;
    int up_status;
    char up_content_type[128];
    bool streaming_out; /* response head sent to the app */
    bool sent_body;     /* bytes of the answer went to the app */
    bool events_out;    /* a stream's first events were written (not held) */
    bool paused;
    struct kp_buf resp; /* non-stream answer, or a failed attempt's body */
    struct kp_sse_parser sse;
    struct kp_usage_counts usage;
    int shape; /* enum kp_shape of the current attempt */
    struct kp_anthropic_stream *anthropic;
    struct kp_gemini_stream *gemini;
    struct kp_messages_stream *messages;
    bool stream_broken;        /* the provider's stream could not be read */
    bool resp_incomplete;      /* the buffered answer hit its cap */
    bool key_limited;          /* a key was skipped for its rate limit */
    unsigned key_retries;      /* retries of the current key */
    unsigned downgrades;       /* models downgraded by pool rule */
    unsigned retries_total;    /* retries of any key in this call */
    uv_timer_t *retry_timer;   /* backoff before a retry (closed on free) */
    bool stat_open;            /* kp_keystat_begin ran for the current attempt */
    uint64_t attempt_start_us; /* when the current attempt started */
    uint64_t head_us;          /* when its answer's head came, 0 before */
    bool upstream_done;        /* the provider's stream sent [DONE] */
    int64_t up_retry_after_ms; /* the provider's Retry-After, 0 when none */
    uint64_t streamed_bytes;   /* text bytes relayed, for an estimate */
    bool stream_cut;           /* the app's stream ended on an error or went away */
    uint64_t deadline_us;      /* no attempt starts after it (0: none yet) */
    uint64_t deadline_ms;      /* the total timeout it came from */
    const char *deadline_of;   /* that provider's id (the view outlives the call) */
    size_t body_len;           /* the app's body (the request may be gone) */
    int retry_after_s;         /* Retry-After of the app's answer, 0: none */
    uint64_t rl_limit;         /* the policy limit that refused the call, 0: none */
    /* The tightest policy rpm and tpm that let it through (limit 0: none):
     * what is left of each (cluster estimate) and until its bucket is full
     * again, for the x-ratelimit-* headers of a successful answer. */
    struct kp_rl_seen {
        uint64_t limit, remaining;
        int64_t reset_ms;
    } rl_ok_req, rl_ok_tok;
    char stream_error[256]; /* why, for the app's error event */

    /* budget.c */
    struct kp_ledger_hold holds[KP_CALL_BUDGETS];
    unsigned nholds;
    bool budget_hard; /* a hard budget covers the call */
    const struct kp_price *budget_price;
    uint64_t in_bound;       /* input tokens, at most */
    uint64_t out_cap;        /* output tokens per choice, at most (0: no output) */
    uint64_t choices;        /* n */
    bool out_cap_set;        /* the app gave no cap: the gateway writes one */
    bool body_changed;       /* c->body differs from the app's bytes */
    kp_nanousd reserved;     /* the worst case reserved */
    bool budget_waiting;     /* for a grant, until budget_wait_until_ms */
    bool budget_waiting_key; /* ... for the key being tried */
    struct kp_ledger_hold key_holds[KP_KEY_BUDGETS]; /* budgets of that key */
    unsigned nkey_holds;
    const struct kp_key *key_holds_for;
    int64_t key_wait_until_ms;
    struct kp_ledger_hold key_refused; /* the key budget that refused a key */
    bool key_refused_set;
    bool budget_skipped;    /* a key was skipped for its budget */
    bool budget_collected;  /* holds[] has the budgets covering the call */
    bool key_budgets_exist; /* some key-scoped policy has budgets (seen by collect) */
    bool budget_downgraded; /* a downgrade action switched c->model */
    int64_t budget_wait_until_ms;
    uint64_t stream_events;         /* upstream events, against out_cap */
    const char *stream_error_class; /* the class of stream_error, NULL: server */
    char budget_refused[200];       /* "policy/budget" that refused the call */

    struct kp_call_trace trace; /* trace.c */

    struct kp_usage_event ev;
    bool done;
};

/* gateway.c: the error body in the app's shape (OpenAI's, or Anthropic's on
 * /anthropic/v1/messages), malloc'd, with its length in @len; NULL when
 * memory ran out. */
char *kp_router__error_body(const struct kp_call *c, int status, const char *type, const char *code,
                            const char *param, const char *message, size_t *len);
/* gateway.c: answer an OpenAI-shaped error (X-Request-Id, X-Keyplane-Error),
 * record the usage event, end the call. Returns KP_EPERM, so a step can
 * `return kp_router__fail(...)`. */
int kp_router__fail(struct kp_call *c, int status, const char *type, const char *code,
                    const char *message);
/* kp_router__fail with the OpenAI error's "param" set (may be NULL). */
int kp_router__fail_param(struct kp_call *c, int status, const char *type, const char *code,
                          const char *param, const char *message);
/* gateway.c: the call is over (answered): record usage, free. */
void kp_router__finish(struct kp_call *c);

/* gateway.c: answer 200 {"object":"list","data":@data} (taken) and end
 * a call that is not a model call. */
void kp_router__respond_list(struct kp_call *c, json_t *data);
/* budget.c: GET /v1/keyplane/budget. */
void kp_router__budget_show(struct kp_call *c);

/* gateway.c: the call passed every check: to the upstream. */
void kp_router__go(struct kp_call *c);

/* budget.c: reserve the call's worst case on every budget covering it.
 * KP_OK: go on; KP_EBUSY: waiting for a grant (kp_router__go is called
 * later, or the call is answered); anything else: answered. */
int kp_router__budget_begin(struct kp_call *c);
/* budget.c: the budgets covering the call (before its keys are chosen)
 * and their threshold actions: block, downgrade (c->model changes),
 * throttle, disable_feature. KP_OK, or answered. */
int kp_router__budget_actions(struct kp_call *c);
/* Before an attempt with key @k: reserve on the budgets of @k's key-scoped
 * policies. KP_OK: go; KP_EBUSY: waiting for a grant (attempt_next is
 * called again); KP_ENOENT: the key is out of budget, try the next;
 * KP_EPERM: answered. */
int kp_router__budget_key(struct kp_call *c, const struct kp_key *k);
/* Every key was out of budget: 429 budget_exceeded naming the last. */
void kp_router__budget_refuse_key(struct kp_call *c);
/* The call is over: settle its actual cost (c->ev.cost). */
void kp_router__budget_settle(struct kp_call *c);
/* Each upstream stream event: KP_ETOOBIG (stream_error set) once the
 * provider went past what the reservation allows. */
int kp_router__budget_stream_guard(struct kp_call *c);
void kp_router__budget_init(struct kp_router *r);
void kp_router__budget_close(struct kp_router *r);

/* gateway.c: what an OpenAI-shaped provider's base URL gets appended. */
const char *kp_router__suffix(enum kp_endpoint ep);

/* auth.c */
int kp_router__authenticate(struct kp_call *c);
void kp_router__auth_free(struct kp_router *r);
int kp_router__scope(struct kp_call *c);
/* freeze.c: answers 403 frozen (non-zero) when an operator froze the call's
 * tenant, project, feature, pool or token. */
int kp_router__check_freeze(struct kp_call *c);

/* select.c: fill c->cand (answers 404 for a model no key of the pool may
 * serve, 503 when none is usable). */
int kp_router__select(struct kp_call *c);
/* Apply the pool's downgrade rule for the call's model (true: the model
 * changed and the candidates were cleared; select again). */
bool kp_router__downgrade(struct kp_call *c);

/* attempt.c: try the next candidate; on failure before any byte went to
 * the app, the next; answers when out of candidates. */
void kp_router__attempt_next(struct kp_call *c);
void kp_router__attempt_cancel(struct kp_call *c);
/* Fill the usage event's tokens and cost from what the call got (an
 * estimate when a stream that reached the app reported none). */
void kp_router__settle(struct kp_call *c);

/* answer_scan.c: the top-level "model", "usage" and "choices" of an OpenAI-shaped
 * answer, read without building the document. False when it cannot be
 * sure json_loadb would read the text the same way (invalid JSON, not an
 * object, an escape where it reads, ...): parse it with jansson then.
 * Pointers are into @data. Counts are what uint_at makes of each member
 * (a positive integer, else 0); a key given twice: the last one wins. */
struct kp_answer_facts {
    const char *model; /* NULL: no "model", or not a string */
    size_t model_len;
    bool usage; /* "usage" is an object; then: */
    struct {
        uint64_t prompt_tokens, input_tokens, completion_tokens, output_tokens;
        bool prompt_details, input_details;   /* *_tokens_details present */
        uint64_t prompt_cached, input_cached; /* their cached_tokens */
    } u;
    bool choices;       /* "choices" is there, whatever it is; then: */
    bool choices_empty; /* it is an empty array */
};
bool kp_router__scan_answer(const char *data, size_t len, struct kp_answer_facts *f);
/* What a stream event's "usage" member holds: an object (a false positive
 * only costs a parse), null, or there is none. For null, [*from, *to) are
 * the bytes of the member and one comma beside it, so that what is left is
 * the same JSON without it; empty (from == to) when it is the only
 * member. */
enum kp_usage_member { KP_USAGE_NONE, KP_USAGE_OBJECT, KP_USAGE_NULL };
enum kp_usage_member kp_router__usage_member(const char *data, size_t len, size_t *from,
                                             size_t *to);

/* What the gateway needs of the app's body (answer_scan.c). True only for
 * a body json_loadb(JSON_REJECT_DUPLICATES) would read the same way, with
 * "model" an unescaped string and "stream", when there, true, false or
 * null; false sends the body to jansson. */
struct kp_request_facts {
    const char *model; /* into the body, not terminated */
    size_t model_len;
    bool stream;
    bool stream_options; /* present, whatever it is */
    bool include_usage;  /* stream_options.include_usage is true */
};
bool kp_router__scan_request(const char *data, size_t len, struct kp_request_facts *f);

/* An attempt's request as it is being built: on the stack of the code
 * that starts it (the upstream client copies URL and headers at start),
 * so a call in flight does not carry ~7 KiB it no longer needs. */
struct kp_prep {
    char url[2600];
    char auth[4200]; /* "Bearer <secret>": wiped once the call started */
    size_t auth_len; /* the bytes of auth in use, with the NUL: what is wiped */
    struct kp_http_header headers[40];
    unsigned n;
};

/* shape.c */
/* enum kp_shape for the pair, or -1 when this gateway cannot send @ep to a
 * provider of @provider_kind. */
int kp_router__shape_of(enum kp_endpoint ep, int provider_kind);
/* Fill c->url, c->up_headers (the auth header from @secret) and, when the
 * body must change, c->upstream_body. KP_EINVAL with @errmsg and @param:
 * the app's request cannot be expressed for this provider (a 400). */
int kp_router__prepare(struct kp_call *c, const struct kp_candidate *k, const char *secret,
                       size_t secret_len, struct kp_prep *prep, char *errmsg, size_t errlen,
                       char *param, size_t paramlen);
/* A whole 2xx answer in the app's shape: *@out is the translated document
 * (NULL: relay the provider's bytes). Reads usage into c->usage. */
int kp_router__translate_answer(struct kp_call *c, json_t *doc, json_t **out);
/* The model a provider's answer or stream event says served it: OpenAI's
 * and Anthropic's "model" (in message_start's "message" for a stream),
 * Gemini's "modelVersion"; NULL when it names none. */
const char *kp_router__served_model(const json_t *doc);
int kp_router__stream_begin(struct kp_call *c);
int kp_router__stream_event(struct kp_call *c, const struct kp_sse_event *e, char *errmsg,
                            size_t errlen);
int kp_router__stream_end(struct kp_call *c);
void kp_router__stream_free(struct kp_call *c);

/* attempt.c: write one SSE event to the app (@event NULL or "message":
 * data only). */
/* The app's request as a document (gateway.c), built on first use: the
 * gateway reads what it needs without it; budgets, downgrades, other
 * providers' shapes and content capture use it. NULL: out of memory. */
json_t *kp_router__body(struct kp_call *c);
/* Write the call's queued SSE now (attempt.c); the upstream's settled hook
 * writes every call's. */
void kp_router__flush_events(struct kp_call *c);
void kp_router__flush_all_events(void *arg);
/* Ends the app's stream, the queued SSE and the last chunk in one write. */
void kp_router__end_stream(struct kp_call *c);
int kp_router__write_event(struct kp_call *c, const char *event, size_t event_len, const char *data,
                           size_t data_len);

/* breaker.c: per-worker cooldowns and circuit breakers of keys. */
struct kp_breakers *kp_breakers_new(void);
void kp_breakers_free(struct kp_breakers *b);
/* How long @key must still be left alone (0: usable now); *@rate_limited
 * says whether a 429 is the reason. */
int64_t kp_breaker_wait_ms(struct kp_breakers *b, const char *key, int64_t now_ms,
                           bool *rate_limited);
/* Whether @key is set aside now (no half-open trial is taken). */
bool kp_breaker_open(struct kp_breakers *b, const char *key, int64_t now_ms);
/* A failure of @key of class @cls: a rate_limit cools it down for
 * @retry_after_ms (0: the default); a server, connect or timeout failure
 * counts toward its breaker, which opens after 3 in a row or @open_after
 * when that is more (the provider's max_retries + 1, so that one call's
 * retries are all made). Other classes change nothing. */
void kp_breaker_failure(struct kp_breakers *b, const char *key, const char *cls,
                        int64_t retry_after_ms, unsigned open_after, int64_t now_ms);
void kp_breaker_success(struct kp_breakers *b, const char *key);
/* Attempts in flight and smoothed time to the answer's head, per key. */
void kp_keystat_begin(struct kp_breakers *b, const char *key);
/* @latency_us: time to the head of a good answer, 0 for a failed one. */
void kp_keystat_end(struct kp_breakers *b, const char *key, uint64_t latency_us);
void kp_keystat_get(struct kp_breakers *b, const char *key, unsigned *inflight, uint64_t *ewma_us);

/* trace.c: the call's trace (docs/observability.md). kp_trace__begin reads
 * the app's traceparent (or starts a trace) when the call is made;
 * kp_trace__upstream_headers adds the attempt being built's traceparent
 * (and the app's tracestate) to @h, room for 2, and returns how many; the
 * attempt hooks follow attempt.c (begin: started; end: over, from
 * stat_end; failed: with class @cls); kp_trace__scan notes finish reasons
 * in what goes to the app; kp_trace__finish hands the spans and the
 * access record to the sink. */
void kp_trace__begin(struct kp_call *c);
unsigned kp_trace__upstream_headers(struct kp_call *c, struct kp_http_header *h);
void kp_trace__attempt_begin(struct kp_call *c);
void kp_trace__attempt_end(struct kp_call *c);
void kp_trace__attempt_failed(struct kp_call *c, const char *cls);
void kp_trace__scan(struct kp_call *c, const char *data, size_t len);
void kp_trace__finish(struct kp_call *c);
/* What kp_trace__begin and the attempts allocated (rarely anything). */
void kp_trace__free(struct kp_call *c);
/* For an answer made before a call exists (404, 405): the traceparent to
 * send (the app's trace continued, or a new one) and its trace id. */
void kp_trace__orphan(const struct kp_http_request *req, char header[KP_TRACEPARENT_LEN + 1],
                      char trace_id[KP_USAGE_TRACE_ID_LEN + 1]);
/* The finish reasons in @data[0..len) (values of "finish_reason" and
 * "stop_reason" that are short words), added to @out (at most @max,
 * no duplicates). Pure, for tests. */
unsigned kp_trace__finish_reasons(const char *data, size_t len, char out[][24], unsigned n,
                                  unsigned max);
/* Host and port of @url ("https://user@h:8443/v1" -> "h", 8443; the
 * scheme's port when none). False when there is none. Pure. */
bool kp_trace__url_host(const char *url, char *host, size_t hostlen, int *port);

/* trace_content.c: content capture's attribute values, JSON text in the
 * GenAI conventions' forms (kp_free'd by kp_trace__content_free); NULL
 * where there is nothing to say. */
#define KP_TRACE_CONTENT_MAX  8192 /* bytes of text per value */
#define KP_TRACE_CONTENT_MSGS 64   /* messages per value */
struct kp_trace_content {
    char *system; /* gen_ai.system_instructions */
    char *input;  /* gen_ai.input.messages */
    char *output; /* gen_ai.output.messages */
    bool truncated;
};
/* From the app's request @body and the answer sent to it, @answer[0..len)
 * (NULL: none to capture). Pure, for tests. */
void kp_trace__content(const json_t *body, const char *answer, size_t len,
                       struct kp_trace_content *out);
void kp_trace__content_free(struct kp_trace_content *tc);

/* metrics.c */
void kp_router__metrics_init(void);
void kp_router__count_attempt(const char *provider, const char *key, const char *outcome);
void kp_router__count_shed(void);
void kp_router__count_failover(const char *pool);
void kp_router__count_usage(const struct kp_usage_event *ev);
void kp_router__count_cooldown(const char *key, const char *reason);
void kp_router__count_retry(const char *provider, const char *key);
void kp_router__observe_head(const char *provider, uint64_t us);
/* A worker's breaker for @key tripped (+1) or closed again (-1). */
void kp_router__count_tripped(const char *key, int delta);
void kp_router__count_ratelimit_table_full(void);

/* ratelimit.c: requests and tokens per minute, shared across the cluster.
 * kp_router__limit_call checks every policy covering the call (answers 429
 * and returns non-zero when one is over); kp_router__limit_key takes one
 * request of @k's budget, or returns how many ms until it could;
 * kp_router__limit_charge charges the call's tokens once, before its
 * answer leaves (or when it ends). */
int kp_router__limit_call(struct kp_call *c);
/* The x-ratelimit-*-requests headers of a successful answer (the tightest
 * policy rpm that let the call through) into @out (room for 3), their
 * values in @v; returns how many (0: no policy rpm covers the call). */
struct kp_rl_headers {
    char limit[24], remaining[24], reset[24];
    char tok_limit[24], tok_remaining[24], tok_reset[24];
};
/* At most this many headers from kp_router__limit_headers. */
#define KP_RL_HEADERS_MAX 6
unsigned kp_router__limit_headers(const struct kp_call *c, struct kp_rl_headers *v,
                                  struct kp_http_header *out);
/* Take one request of a named per-minute limit (@kind, @id) shared across
 * the cluster like the others: 0, or the ms until one could be taken. */
int64_t kp_router__limit_take(const struct kp_call *c, const char *kind, const char *id,
                              uint64_t rpm);
/* Whether the scope of @p covers the call (a key scope: once a key served). */
bool kp_router__policy_covers(const struct kp_policy *p, const struct kp_call *c);
int64_t kp_router__limit_key(const struct kp_call *c, const struct kp_key *k);
void kp_router__limit_charge(struct kp_call *c);

/* secrets.c */
struct kp_secret_cache *kp_secret_cache_new(void);
void kp_secret_cache_free(struct kp_secret_cache *sc);
/* The opened primary secret of @key (cached by key id and version); NULL
 * with @errmsg when it cannot be opened (never the secret itself). */
const struct kp_secret *kp_secret_cache_get(struct kp_secret_cache *sc,
                                            const struct kp_router_shared *sh,
                                            const struct kp_key *key, char *errmsg, size_t errlen);

#endif

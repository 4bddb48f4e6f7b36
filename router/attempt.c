/* Upstream attempts: one per candidate key, until one answers.
 *
 * An attempt that fails before any byte went to the app moves on to the
 * next key: an upstream 401 (auth), 429 (rate_limit), 402 or an
 * insufficient-quota answer (quota), a 5xx (server), a connect failure or a
 * timeout. Any other 4xx is the request's own fault (client) and goes back
 * to the app as the provider gave it. Once the answer has started, nothing
 * is retried: a stream that breaks ends with an SSE error event.
 *
 * Streams are re-framed event by event (sse.c), which lets the gateway read
 * usage from them and drop the usage-only chunk it asked for on the app's
 * behalf; a slow app pauses the upstream transfer (backpressure). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "router_internal.h"

static void queue_events(struct kp_call *c);
static void on_read(void *arg);

/* SSE waiting for the end of curl's pass is written at once past this. */
#define SSE_OUT_MAX ((size_t)64 << 10)

enum { MAX_BUFFERED = 64 << 20, MAX_ERROR_BODY = 64 << 10 };

static void attempt_done(void *arg, enum kp_upstream_result result, const char *detail);
static void end_stream_with_error(struct kp_call *c, const char *cls, const char *why);

/* --- usage and cost ------------------------------------------------------------- */

static uint64_t uint_at(const json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_integer(v) && json_integer_value(v) > 0 ? (uint64_t)json_integer_value(v) : 0;
}

/* OpenAI-shaped usage: chat/completions/embeddings (prompt_tokens,
 * completion_tokens) and responses (input_tokens, output_tokens). */
static void read_usage(struct kp_call *c, const json_t *usage)
{
    if (!json_is_object(usage))
        return;
    c->usage.present = true;
    c->usage.input = uint_at(usage, "prompt_tokens") + uint_at(usage, "input_tokens");
    c->usage.output = uint_at(usage, "completion_tokens") + uint_at(usage, "output_tokens");
    json_t *d = json_object_get(usage, "prompt_tokens_details");
    if (d == NULL)
        d = json_object_get(usage, "input_tokens_details");
    c->usage.cached = uint_at(d, "cached_tokens");
}

/* read_usage and the served model from what kp_router__scan_answer read
 * of the answer: the same fields, the same rules. */
static void apply_facts(struct kp_call *c, const struct kp_answer_facts *f)
{
    if (f->usage) {
        c->usage.present = true;
        c->usage.input = f->u.prompt_tokens + f->u.input_tokens;
        c->usage.output = f->u.completion_tokens + f->u.output_tokens;
        c->usage.cached = f->u.prompt_details  ? f->u.prompt_cached
                          : f->u.input_details ? f->u.input_cached
                                               : 0;
    }
    if (f->model != NULL) {
        /* Cut past the limit, so that kp_usage_set_str refuses it as it
         * would the whole string. */
        char model[KP_USAGE_STR_MAX + 2];
        size_t n = f->model_len < sizeof(model) - 1 ? f->model_len : sizeof(model) - 1;
        memcpy(model, f->model, n);
        model[n] = '\0';
        kp_usage_set_str(c->ev.model_served, model);
    }
}

static kp_nanousd cost_of(const struct kp_price *p, const struct kp_usage_counts *u)
{
    if (p == NULL)
        return 0;
    uint64_t cached = u->cached <= u->input ? u->cached : u->input;
    unsigned __int128 n = (unsigned __int128)(u->input - cached) * (uint64_t)p->input_per_mtok +
                          (unsigned __int128)cached * (uint64_t)p->cached_input_per_mtok +
                          (unsigned __int128)u->output * (uint64_t)p->output_per_mtok;
    n = n / 1000000u + (uint64_t)p->request_fee;
    return n > (unsigned __int128)INT64_MAX ? INT64_MAX : (kp_nanousd)n;
}

/* The price of the call: that of the model the provider served (usually a
 * dated name, which kp_price_lookup resolves to its base), else that of the
 * model asked for. An operator's price (the registry) for either name beats
 * a built-in default for the other: an alias priced in the registry keeps
 * its price when the provider names the underlying model. */
static const struct kp_price *call_price(const struct kp_call *c)
{
    const char *served_src = NULL, *asked_src = NULL;
    const struct kp_price *served =
        c->ev.model_served[0] ? kp_price_lookup(c->view, c->ev.model_served, &served_src) : NULL;
    if (served != NULL && strcmp(served_src, "registry") == 0)
        return served;
    const struct kp_price *asked = kp_price_lookup(c->view, c->model, &asked_src);
    if (asked != NULL && (served == NULL || strcmp(asked_src, "registry") == 0))
        return asked;
    return served;
}

/* Fill the usage event from what the call ended with. */
void kp_router__settle(struct kp_call *c)
{
    struct kp_usage_event *ev = &c->ev;
    if (c->sent_body && (!c->usage.present || c->stream_cut)) {
        /* A stream that ended without usage, or was cut, when what usage
         * came may be only its start's (Anthropic's message_start, a
         * Gemini chunk's running count): estimate what is missing at
         * about 4 bytes a token of the request and of the text relayed. */
        if (!c->usage.present)
            c->usage.input = c->body_len / 4;
        uint64_t out = c->streamed_bytes / 4;
        if (out > c->usage.output)
            c->usage.output = out;
        ev->tokens_estimated = true;
    }
    ev->tokens_in = c->usage.input;
    ev->tokens_out = c->usage.output;
    ev->tokens_cached = c->usage.cached;
    ev->cost = cost_of(call_price(c), &c->usage);
    ev->retries = (c->attempts > 0 ? c->attempts - 1 : 0) + c->retries_total;
}

/* --- the failure of an attempt ------------------------------------------------------- */

/* The current attempt is over: its key's in-flight count and, for a good
 * answer, its latency (time to the head). */
static void stat_end(struct kp_call *c, bool good)
{
    if (!c->stat_open)
        return;
    c->stat_open = false;
    kp_trace__attempt_end(c);
    uint64_t latency =
        good && c->head_us > c->attempt_start_us ? c->head_us - c->attempt_start_us : 0;
    kp_keystat_end(c->r->breakers, c->cur->key->e.id, latency);
}

/* The provider's own error code or type ("insufficient_quota",
 * "invalid_api_key", ...), read from the error object, never from text the
 * app could have put in the body. */
static bool error_code_is(const struct kp_buf *body, const char *want)
{
    json_t *doc = body->len > 0 ? json_loadb(body->data, body->len, 0, NULL) : NULL;
    json_t *err = json_object_get(doc, "error");
    const char *code = json_string_value(json_object_get(err, "code"));
    const char *type = json_string_value(json_object_get(err, "type"));
    const char *status = json_string_value(json_object_get(err, "status"));
    bool hit = (code && strcmp(code, want) == 0) || (type && strcmp(type, want) == 0) ||
               (status && strcmp(status, want) == 0);
    json_decref(doc);
    return hit;
}

/* 401: the key is invalid (for everyone). 403: this request may not use
 * the key (a model, a region, a file it cannot read): fail over, but do
 * not condemn the key. Quota only from the provider's own error codes. */
static const char *classify(const struct kp_call *c, int status, const struct kp_buf *body)
{
    if (status == 401)
        return "auth";
    if (status == 403)
        return "forbidden";
    if (status == 402)
        return "quota";
    if (status == 400 && c->cur->provider->kind == KP_PROVIDER_ANTHROPIC &&
        error_code_is(body, "invalid_request_error") && body->data != NULL &&
        strstr(body->data, "\"credit balance is too low") != NULL)
        return "quota"; /* Anthropic's way of saying it */
    if (status == 429) {
        if (error_code_is(body, "insufficient_quota"))
            return "quota";
        return "rate_limit";
    }
    if (status >= 500)
        return "server";
    return "client";
}

static const char *result_class(enum kp_upstream_result r)
{
    switch (r) {
    case KP_UPSTREAM_CONNECT:
        return "connect";
    case KP_UPSTREAM_TIMEOUT_CONNECT:
    case KP_UPSTREAM_TIMEOUT_FIRST_BYTE:
    case KP_UPSTREAM_TIMEOUT_IDLE:
    case KP_UPSTREAM_TIMEOUT_TOTAL:
        return "timeout";
    default:
        return "server";
    }
}

/* Out of candidates: answer with what the last attempt ran into. */
static void give_up(struct kp_call *c, const char *cls, const char *why)
{
    char msg[512];
    if (kp_router__downgrade(c)) {
        /* Every key failed the model: try the pool's cheaper one. */
        if (kp_router__select(c) == KP_OK)
            kp_router__attempt_next(c);
        return;
    }
    int status = 502;
    const char *code = "upstream_error";
    if (strcmp(cls, "timeout") == 0)
        status = 504, code = "upstream_timeout";
    else if (strcmp(cls, "auth") == 0 || strcmp(cls, "quota") == 0 || strcmp(cls, "forbidden") == 0)
        status = 503, code = "no_usable_key";
    else if (strcmp(cls, "rate_limit") == 0)
        status = 429, code = "rate_limited";
    if (status != 429)
        c->retry_after_s = 0; /* an earlier key's 429 is not this answer's */
    snprintf(msg, sizeof(msg), "%s (tried %u key%s of pool %s)", why, c->attempts,
             c->attempts == 1 ? "" : "s", c->pool_name);
    kp_usage_set_str(c->ev.error_class, cls);
    kp_router__fail(c, status, status == 429 ? "rate_limit_error" : "server_error", code, msg);
}

/* Tell the cluster a key is unusable, unless the view already says so. */
static void report_key(struct kp_call *c, const char *cls)
{
    int status = strcmp(cls, "auth") == 0    ? KP_HEALTH_INVALID
                 : strcmp(cls, "quota") == 0 ? KP_HEALTH_QUOTA_EXHAUSTED
                                             : -1;
    const struct kp_router_shared *sh = &c->r->sh;
    if (status < 0 || sh->health.report == NULL)
        return;
    const struct kp_key_health *h = kp_view_key_health(c->view, c->cur->key->e.id);
    if (h == NULL || h->status != status)
        sh->health.report(sh->health.arg, c->cur->key->e.id, c->cur->key->e.version, status, cls);
}

/* Retries of the same key, for failures that may pass (a 5xx, a failed
 * connection, a timeout): at most the provider's max_retries per key, with
 * exponential backoff and full jitter (a random wait up to
 * retry_backoff_ms, twice that, ...), and only while the call is younger
 * than its retry_window_ms (the wait ends inside it) and its deadline
 * leaves time for the wait. The key's breaker opens only once a call's
 * retries are all used (breaker.c, open_after). A 429 is not retried on the same key (its
 * cooldown says wait); nothing is retried once bytes went to the app. */
static void retry_fire(uv_timer_t *t)
{
    struct kp_call *c = t->data;
    if (c == NULL)
        return;
    kp_router__attempt_next(c);
}

static bool retry_later(struct kp_call *c, const char *cls)
{
    bool retryable =
        strcmp(cls, "server") == 0 || strcmp(cls, "connect") == 0 || strcmp(cls, "timeout") == 0;
    const struct kp_provider *p = c->cur->provider;
    uint64_t age_ms = (kp_now_mono_us() - c->start_us) / 1000;
    if (!retryable || c->key_retries >= p->max_retries || age_ms >= p->retry_window_ms ||
        kp_breaker_open(c->r->breakers, c->cur->key->e.id, kp_now_unix_ms()))
        return false;
    if (c->retry_timer == NULL) {
        c->retry_timer = kp_malloc(sizeof(*c->retry_timer));
        if (c->retry_timer == NULL || uv_timer_init(c->r->loop, c->retry_timer) != 0) {
            kp_free(c->retry_timer);
            c->retry_timer = NULL;
            return false;
        }
        c->retry_timer->data = c;
    }
    /* At most 60 s << 9; and the retry starts inside the window. */
    uint64_t cap = (uint64_t)p->retry_backoff_ms << c->key_retries;
    if (cap > p->retry_window_ms - age_ms)
        cap = p->retry_window_ms - age_ms;
    uint32_t rnd = 0;
    kp_random_pooled(&rnd, sizeof(rnd));
    uint64_t wait = cap ? rnd % (cap + 1) : 0;
    /* A retry that would start after the call's time is up is not made:
     * the next key (or the 504) comes now. */
    if (c->deadline_us != 0 && kp_now_mono_us() + wait * 1000 >= c->deadline_us)
        return false;
    c->key_retries++;
    c->retries_total++;
    kp_router__count_retry(c->cur->provider->e.id, c->cur->key->e.id);
    c->next_cand--; /* the same key again */
    c->attempts--;  /* attempt_next counts it again */
    uv_timer_start(c->retry_timer, retry_fire, wait, 0);
    return true;
}

static void attempt_failed(struct kp_call *c, const char *cls, const char *why)
{
    kp_trace__attempt_failed(c, cls);
    kp_usage_set_str(c->ev.error_class, cls);
    report_key(c, cls);
    kp_breaker_failure(c->r->breakers, c->cur->key->e.id, cls, c->up_retry_after_ms,
                       c->cur->provider->max_retries + 1, kp_now_unix_ms());
    kp_router__count_attempt(c->cur->provider->e.id, c->cur->key->e.id, cls);
    if (strcmp(cls, "rate_limit") == 0) {
        int64_t ms = c->up_retry_after_ms > 0 ? c->up_retry_after_ms : 1000;
        /* Whole seconds, rounded up: a wait of 500 ms is not "0". */
        c->retry_after_s = (int)(((ms > 600000 ? 600000 : ms) + 999) / 1000);
    }
    if (retry_later(c, cls)) {
        kp_info("router", "request %s: key %s failed (%s): %s; retrying it after a backoff", c->rid,
                c->cur->key->e.id, cls, why);
        return;
    }
    kp_info("router", "request %s: key %s failed (%s): %s; %s", c->rid, c->cur->key->e.id, cls, why,
            c->next_cand < c->ncand ? "trying the next key" : "no key left");
    if (c->next_cand < c->ncand) {
        kp_router__count_failover(c->cur->pool);
        kp_router__attempt_next(c);
        return;
    }
    give_up(c, cls, why);
}

/* --- answering from the upstream ------------------------------------------------------- */

static void on_drain(struct kp_http_exchange *ex, void *arg)
{
    struct kp_call *c = arg;
    (void)ex;
    if (c->paused && c->up != NULL) {
        c->paused = false;
        kp_upstream_resume(c->up);
    }
}

/* @v as a whole number in 1..@max, else 0; *@whole says whether it was
 * a number at all. */
static int64_t number_upto(const char *v, int64_t max, bool *whole)
{
    char *end = NULL;
    long long n = strtoll(v, &end, 10);
    *whole = end != v && *end == '\0';
    return *whole && n > 0 && n <= max ? n : 0;
}

/* A provider's Retry-After in milliseconds (0: none usable): delay
 * seconds, or an HTTP-date read against this node's clock; at most a
 * day. */
static int64_t retry_after_ms(const char *v)
{
    bool whole;
    int64_t secs = number_upto(v, 86399, &whole);
    if (whole)
        return secs * 1000;
    int64_t at;
    if (kp_parse_http_date(v, &at) != KP_OK)
        return 0;
    int64_t wait = at - kp_now_unix_ms();
    return wait > 0 && wait < 86400000 ? wait : 0;
}

static void on_head(void *arg, int status, const struct kp_http_header *h, unsigned n)
{
    struct kp_call *c = arg;
    c->up_status = status;
    c->head_us = kp_now_mono_us();
    kp_router__observe_head(c->cur->provider->e.id, c->head_us - c->attempt_start_us);
    c->up_content_type[0] = '\0';
    int64_t retry_ms = 0;
    for (unsigned i = 0; i < n; i++) {
        if (strcmp(h[i].name, "content-type") == 0) {
            size_t len = h[i].value_len < sizeof(c->up_content_type) - 1
                             ? h[i].value_len
                             : sizeof(c->up_content_type) - 1;
            memcpy(c->up_content_type, h[i].value, len);
            c->up_content_type[len] = '\0';
        } else if (strcmp(h[i].name, "retry-after") == 0 && retry_ms == 0) {
            retry_ms = retry_after_ms(h[i].value);
        } else if (strcmp(h[i].name, "retry-after-ms") == 0) {
            /* OpenAI's, finer than Retry-After: it wins. */
            bool whole;
            int64_t ms = number_upto(h[i].value, 86399999, &whole);
            if (ms > 0)
                retry_ms = ms;
        }
    }
    c->up_retry_after_ms = retry_ms;
    if (status < 200 || status > 299 || !c->stream)
        return;
    if (strncmp(c->up_content_type, "text/event-stream", 17) != 0)
        return; /* answered without streaming: relayed whole at the end */
    struct kp_http_header out[5 + KP_RL_HEADERS_MAX] = {
        KP_HTTP_HEADER("Content-Type", "text/event-stream"),
        KP_HTTP_HEADER("Cache-Control", "no-cache"),
        KP_HTTP_HEADER("X-Request-Id", c->rid),
        KP_HTTP_HEADER("X-Keyplane-Key", c->cur->key->e.id),
        KP_HTTP_HEADER("traceparent", c->trace.header),
    };
    struct kp_rl_headers rl;
    unsigned nout = 5 + kp_router__limit_headers(c, &rl, out + 5);
    if (kp_router__stream_begin(c) != KP_OK)
        return; /* answered at the end as a failed attempt */
    kp_http_on_drain(c->ex, on_drain, c);
    /* Inside curl's pass (always, from on_head) the head waits for the
     * events of the same read, to leave with them in one write; the
     * settled hook writes it alone when there are none. */
    if (kp_upstream_in_pass(c->r->up)) {
        kp_http_stream_begin_held(c->ex, 200, out, nout);
        queue_events(c);
    } else {
        kp_http_stream_begin(c->ex, 200, out, nout);
    }
    c->streaming_out = true;
    c->ev.status = 200;
    c->ev.error_class[0] = '\0';
    kp_breaker_success(c->r->breakers, c->cur->key->e.id);
    kp_router__count_attempt(c->cur->provider->e.id, c->cur->key->e.id, "ok");
}

/* Is @data a usage-only chunk (no choices, a usage object)? */
static bool usage_only(const json_t *chunk)
{
    json_t *choices = json_object_get(chunk, "choices");
    return json_is_object(json_object_get(chunk, "usage")) &&
           (choices == NULL || (json_is_array(choices) && json_array_size(choices) == 0));
}

/* Writes what the call's events made so far, as one chunk. */
/* Written by the settled hook when curl's pass ends. */
static void queue_events(struct kp_call *c)
{
    if (c->sse_flush_queued)
        return;
    c->sse_flush_queued = true;
    c->sse_flush_next = c->r->sse_flush;
    c->r->sse_flush = c;
}

static void unqueue_events(struct kp_call *c)
{
    if (!c->sse_flush_queued)
        return;
    struct kp_call **pp = &c->r->sse_flush;
    while (*pp != c)
        pp = &(*pp)->sse_flush_next;
    *pp = c->sse_flush_next;
    c->sse_flush_queued = false;
}

void kp_router__flush_events(struct kp_call *c)
{
    unqueue_events(c);
    if (c->sse_out.len > 0 && !c->done) {
        kp_http_stream_write(c->ex, c->sse_out.data, c->sse_out.len);
        c->events_out = true;
    } else if (!c->done && c->streaming_out) {
        kp_http_stream_flush(c->ex); /* a held head, alone */
    }
    kp_buf_free(&c->sse_out); /* an idle stream holds no buffer */
}

/* Ends the app's stream with what is still queued for it, in one write. */
void kp_router__end_stream(struct kp_call *c)
{
    kp_router__settle(c); /* tokens charged before the end leaves (relay_answer) */
    kp_router__limit_charge(c);
    unqueue_events(c);
    kp_http_stream_end_with(c->ex, c->sse_out.data, c->sse_out.len);
    kp_buf_free(&c->sse_out);
}

/* curl reads again inside its pass: a stream's first events, still held
 * (with the head), go out now rather than when the socket runs dry, so
 * the first event never waits on a busy provider connection. Later events
 * go out once per pass (the settled hook), to spare writes. */
static void on_read(void *arg)
{
    struct kp_call *c = arg;
    if (c->sse_flush_queued && !c->events_out && c->sse_out.len > 0)
        kp_router__flush_events(c);
}

/* The upstream's settled hook: curl's pass is over. */
void kp_router__flush_all_events(void *arg)
{
    struct kp_router *r = arg;
    while (r->sse_flush != NULL)
        kp_router__flush_events(r->sse_flush);
}

int kp_router__write_event(struct kp_call *c, const char *event, size_t event_len, const char *data,
                           size_t data_len)
{
    struct kp_buf *out = &c->sse_out;
    size_t mark = out->len;
    int rc = 0;
    if (event != NULL && !(event_len == 7 && memcmp(event, "message", 7) == 0)) {
        rc |= kp_buf_append_lit(out, "event: ");
        rc |= kp_buf_append(out, event, event_len);
        rc |= kp_buf_append_lit(out, "\n");
    }
    /* Data may hold newlines: one data line each. */
    const char *p = data, *end = data + data_len;
    do {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        rc |= kp_buf_append_lit(out, "data: ");
        rc |= kp_buf_append(out, p, n);
        rc |= kp_buf_append_lit(out, "\n");
        p = nl ? nl + 1 : end;
    } while (p < end);
    rc |= kp_buf_append_lit(out, "\n");
    if (rc != 0) {
        out->len = mark;
        return KP_ENOMEM;
    }
    if (!c->sent_body)
        c->ev.ttfb_us = kp_now_mono_us() - c->start_us;
    c->sent_body = true;
    kp_trace__scan(c, data, data_len); /* finish reasons, for the spans */
    /* Inside curl's pass the settled hook writes it (soon: once curl has
     * handled what the loop saw); anywhere else, or past the cap, now. */
    if (kp_upstream_in_pass(c->r->up) && out->len < SSE_OUT_MAX) {
        queue_events(c);
    } else {
        kp_router__flush_events(c);
    }
    return 0;
}

/* Relay a chat chunk without its bytes [from, to). */
static int write_cut_event(struct kp_call *c, const struct kp_sse_event *e, size_t from, size_t to)
{
    size_t tail = e->data_len - to, n = from + tail;
    char small[2048];
    char *tmp = n <= sizeof(small) ? small : kp_malloc(n);
    if (tmp == NULL)
        return kp_router__write_event(c, e->event, e->event_len, e->data, e->data_len);
    memcpy(tmp, e->data, from);
    memcpy(tmp + from, e->data + to, tail);
    int rc = kp_router__write_event(c, e->event, e->event_len, tmp, n);
    if (tmp != small)
        kp_free(tmp);
    return rc;
}

/* The length of the JSON string that starts at @p (just past its opening
 * quote), escapes counted as one byte each: enough for an estimate. */
static size_t string_bytes(const char *p, const char *end)
{
    size_t n = 0;
    while (p < end && *p != '"') {
        p += *p == '\\' ? 2 : 1;
        n++;
    }
    return n;
}

/* Whether the member name that ends at @colon is one providers put
 * generated text under: OpenAI's "content" and a tool call's "arguments",
 * the Responses API's "delta" (a string there; an object elsewhere, which
 * text_bytes passes over), Anthropic's "text" and "partial_json",
 * Gemini's "text". */
static bool text_key_before(const char *data, const char *colon)
{
#define ENDS_WITH(lit)                                                                             \
    ((size_t)(colon - data) >= sizeof(lit) - 1 &&                                                  \
     memcmp(colon - (sizeof(lit) - 1), lit, sizeof(lit) - 1) == 0)
    /* On the key's last letter first: most members are none of these. */
    switch (colon[-2]) {
    case 't':
        return ENDS_WITH("\"content\"") || ENDS_WITH("\"text\"");
    case 's':
        return ENDS_WITH("\"arguments\"");
    case 'n':
        return ENDS_WITH("\"partial_json\"");
    case 'a':
        return ENDS_WITH("\"delta\"");
    default:
        return false;
    }
#undef ENDS_WITH
}

/* Bytes of generated text in one upstream event, for an estimate when
 * usage never comes or the stream is cut: the string value of the last
 * member text_key_before names, or with @every the sum of all of them.
 * Searched from the end, where OpenAI's and Anthropic's deltas keep their
 * one piece of text: reading every member of their events would cost a
 * tenth of a stream's instructions. Gemini's chunks may hold several
 * parts, each with its "text", so there every one counts. A colon inside
 * a string never matches: an escaped quote has a backslash before it. */
static size_t text_bytes(const char *data, size_t len, bool every)
{
    const char *end = data + len, *colon = end;
    size_t n = 0;
    while ((colon = memrchr(data, ':', (size_t)(colon - data))) != NULL) {
        if (colon - data < 6 || colon[-1] != '"' || !text_key_before(data, colon))
            continue;
        const char *p = colon + 1;
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        if (p < end && *p == '"') {
            n += string_bytes(p + 1, end);
            if (!every)
                break;
        }
    }
    return n;
}

static int on_event(void *arg, const struct kp_sse_event *e)
{
    struct kp_call *c = arg;
    if (kp_router__budget_stream_guard(c) != KP_OK)
        return KP_ETOOBIG;
    /* New text comes in unnamed events ("message": chat chunks, Gemini)
     * or in named ones ending in "delta" (Anthropic's content_block_delta,
     * the Responses API's ...delta); the others (message_start, a
     * Responses ...done event repeating the whole text) add none. */
    if (e->event_len >= 5 && (memcmp(e->event + e->event_len - 5, "delta", 5) == 0 ||
                              (e->event_len == 7 && memcmp(e->event, "message", 7) == 0)))
        c->streamed_bytes += text_bytes(e->data, e->data_len, c->shape == KP_SHAPE_CHAT_VIA_GEMINI);
    if (c->shape != KP_SHAPE_OPENAI) {
        char why[256];
        int rc = kp_router__stream_event(c, e, why, sizeof(why));
        if (rc != KP_OK)
            snprintf(c->stream_error, sizeof(c->stream_error), "%s", why);
        return rc;
    }
    bool done = e->data_len == 6 && memcmp(e->data, "[DONE]", 6) == 0;
    /* Parsing every event would cost more than relaying it: only the first
     * (the model served) and those carrying a usage object are read; the
     * others only count toward the estimate. The answer scanner reads them
     * without a document; what it does not find where it looks (the
     * Responses API's model and usage, inside "response") is left to
     * jansson. */
    size_t from = 0, to = 0;
    enum kp_usage_member um =
        done ? KP_USAGE_NONE : kp_router__usage_member(e->data, e->data_len, &from, &to);
    bool has_usage = um == KP_USAGE_OBJECT;
    bool read = !done && (c->ev.model_served[0] == '\0' || has_usage);
    struct kp_answer_facts facts;
    if (read && kp_router__scan_answer(e->data, e->data_len, &facts) &&
        (facts.usage || !has_usage) && (facts.model != NULL || c->ev.model_served[0] != '\0')) {
        if (c->ev.model_served[0] != '\0')
            facts.model = NULL; /* the first event's stands */
        apply_facts(c, &facts);
        if (facts.usage && !c->client_wants_usage && (!facts.choices || facts.choices_empty))
            return 0; /* the usage-only chunk the gateway asked for */
        read = false;
    }
    if (read) {
        json_t *chunk = json_loadb(e->data, e->data_len, 0, NULL);
        if (chunk != NULL) {
            json_t *model = json_object_get(chunk, "model");
            json_t *usage = json_object_get(chunk, "usage");
            json_t *resp = json_object_get(chunk, "response"); /* responses API */
            if (!json_is_string(model))
                model = json_object_get(resp, "model");
            if (json_is_string(model) && c->ev.model_served[0] == '\0')
                kp_usage_set_str(c->ev.model_served, json_string_value(model));
            if (json_is_object(usage))
                read_usage(c, usage);
            else if (json_is_object(resp) && json_is_object(json_object_get(resp, "usage")))
                read_usage(c, json_object_get(resp, "usage"));
            bool drop = !c->client_wants_usage && usage_only(chunk);
            json_decref(chunk);
            if (drop)
                return 0;
        }
    }
    /* Once include_usage is set every chunk carries "usage": null; the
     * gateway set it, not the app, and without it OpenAI sends no such
     * member: it goes. */
    if (um == KP_USAGE_NULL && from < to && !c->client_wants_usage &&
        (c->ep == KP_EP_CHAT || c->ep == KP_EP_COMPLETIONS))
        return write_cut_event(c, e, from, to);
    return kp_router__write_event(c, e->event, e->event_len, e->data, e->data_len);
}

static bool on_body(void *arg, const void *data, size_t len)
{
    struct kp_call *c = arg;
    if (c->streaming_out) {
        int rc = kp_sse_feed(&c->sse, data, len, on_event, c);
        if (rc != KP_OK) {
            /* Nothing more of this stream can be relayed: stop the transfer
             * now (cancel is safe from here and runs no callback) and end
             * the app's stream with an error event. */
            c->stream_broken = true;
            if (c->stream_error[0] == '\0')
                snprintf(c->stream_error, sizeof(c->stream_error),
                         "the provider's stream is malformed (%s)", kp_err_msg(rc));
            kp_upstream_cancel(c->up);
            c->up = NULL;
            stat_end(c, false);
            end_stream_with_error(c, c->stream_error_class ? c->stream_error_class : "server",
                                  c->stream_error);
            kp_router__settle(c);
            kp_router__finish(c);
            return true;
        }
        if (!kp_http_stream_writable(c->ex)) {
            c->paused = true;
            return false;
        }
        return true;
    }
    size_t cap = c->up_status >= 200 && c->up_status <= 299 ? MAX_BUFFERED : MAX_ERROR_BODY;
    if (c->resp.len + len <= cap && kp_buf_append(&c->resp, data, len) == 0)
        return true;
    /* Over the cap (or out of memory): stop reading, never relay it cut;
     * attempt_done decides on what was kept. */
    c->resp_incomplete = true;
    kp_upstream_cancel(c->up);
    attempt_done(c, KP_UPSTREAM_OK, "answer over the size cap");
    return true;
}

static void end_stream_with_error(struct kp_call *c, const char *cls, const char *why)
{
    c->stream_cut = true;
    char msg[400];
    snprintf(msg, sizeof(msg), "the upstream stream broke after it started: %s", why);
    size_t len;
    char *body =
        kp_router__error_body(c, 502, "server_error", "upstream_stream_error", NULL, msg, &len);
    if (body != NULL) {
        /* Anthropic's SDKs read an error from an "error" event. */
        bool named = c->ep == KP_EP_MESSAGES;
        kp_router__write_event(c, named ? "error" : NULL, named ? 5 : 0, body, len);
        kp_free(body);
    }
    kp_usage_set_str(c->ev.error_class, cls);
    kp_router__end_stream(c);
}

/* Answer the app with the provider's whole answer (translated when the
 * shapes differ). False, without answering, when a 2xx answer cannot be
 * read or translated: the caller treats that as a failed attempt (@why). */
static bool relay_answer(struct kp_call *c, char *why, size_t whylen)
{
    struct kp_answer_facts facts;
    /* Relayed as is: read the two fields without building the document
     * when the scanner is sure to read them as jansson would. */
    bool scanned =
        c->shape == KP_SHAPE_OPENAI && kp_router__scan_answer(c->resp.data, c->resp.len, &facts);
    if (scanned)
        apply_facts(c, &facts);
    json_t *doc =
        scanned ? NULL : json_loadb(c->resp.data ? c->resp.data : "", c->resp.len, 0, NULL);
    json_t *translated = NULL;
    bool ok2xx = c->up_status >= 200 && c->up_status <= 299;
    if (doc != NULL) {
        if (c->shape == KP_SHAPE_OPENAI || c->shape == KP_SHAPE_MESSAGES_VIA_CHAT)
            read_usage(c, json_object_get(doc, "usage"));
        const char *served = kp_router__served_model(doc);
        if (served != NULL)
            kp_usage_set_str(c->ev.model_served, served);
        int rc = ok2xx ? kp_router__translate_answer(c, doc, &translated) : KP_OK;
        json_decref(doc);
        if (rc != KP_OK) {
            snprintf(why, whylen, "key %s: its answer could not be translated (%s)",
                     c->cur->key->e.id, kp_err_msg(rc));
            return false;
        }
    } else if (ok2xx && !scanned) {
        /* Every endpoint's success answer is a JSON document: one that is
         * not (cut, an HTML page behind a 200) is the provider's failure,
         * never relayed. (A scanned answer was read as valid JSON.) */
        snprintf(why, whylen, "key %s: its answer is not JSON", c->cur->key->e.id);
        return false;
    }
    if (translated != NULL) {
        size_t len;
        char *text = kp_json_dumps(translated, &len);
        json_decref(translated);
        kp_buf_consume(&c->resp, c->resp.len);
        if (text == NULL || kp_buf_append(&c->resp, text, len) != 0) {
            kp_free(text);
            snprintf(why, whylen, "out of memory translating the answer of key %s",
                     c->cur->key->e.id);
            return false;
        }
        kp_free(text);
        snprintf(c->up_content_type, sizeof(c->up_content_type), "application/json");
    }
    struct kp_http_header h[4 + KP_RL_HEADERS_MAX] = {
        KP_HTTP_HEADER("Content-Type",
                       c->up_content_type[0] ? c->up_content_type : "application/json"),
        KP_HTTP_HEADER("X-Request-Id", c->rid),
        KP_HTTP_HEADER("X-Keyplane-Key", c->cur->key->e.id),
        KP_HTTP_HEADER("traceparent", c->trace.header),
    };
    struct kp_rl_headers rl;
    unsigned nh = 4;
    if (c->up_status >= 200 && c->up_status <= 299)
        nh += kp_router__limit_headers(c, &rl, h + 4);
    c->ev.status = (uint16_t)c->up_status;
    c->ev.ttfb_us = kp_now_mono_us() - c->start_us;
    if (ok2xx)
        c->ev.error_class[0] = '\0'; /* an earlier key's failure is not this answer's */
    /* Tokens are charged before the answer leaves: the app's next call
     * (on another worker, say) must see them. */
    kp_router__settle(c);
    kp_router__limit_charge(c);
    kp_http_respond(c->ex, c->up_status, h, nh, c->resp.data, c->resp.len);
    /* What no other call waits for comes after the answer has left: the
     * call, and c->resp, stay until kp_router__finish. */
    if (ok2xx) {
        kp_breaker_success(c->r->breakers, c->cur->key->e.id);
        kp_router__count_attempt(c->cur->provider->e.id, c->cur->key->e.id, "ok");
    }
    kp_trace__scan(c, c->resp.data, c->resp.len); /* finish reasons, for the spans */
    return true;
}

static void attempt_done(void *arg, enum kp_upstream_result result, const char *detail)
{
    struct kp_call *c = arg;
    c->up = NULL;
    stat_end(c, result == KP_UPSTREAM_OK && c->up_status >= 200 && c->up_status <= 299);
    if (c->streaming_out) {
        if (result == KP_UPSTREAM_OK && !c->stream_broken && kp_router__stream_end(c) == KP_OK) {
            kp_router__end_stream(c);
        } else if (result == KP_UPSTREAM_OK && !c->stream_broken) {
            end_stream_with_error(c, "server",
                                  "the provider's stream ended before it was complete");
        } else {
            end_stream_with_error(c, result == KP_UPSTREAM_OK ? "server" : result_class(result),
                                  c->stream_broken ? c->stream_error : detail);
        }
        kp_router__settle(c);
        kp_router__finish(c);
        return;
    }
    if (result != KP_UPSTREAM_OK) {
        char why[300];
        snprintf(why, sizeof(why), "key %s: %s", c->cur->key->e.id, detail);
        kp_buf_consume(&c->resp, c->resp.len);
        attempt_failed(c, result_class(result), why);
        return;
    }
    bool ok2xx = c->up_status >= 200 && c->up_status <= 299;
    if (c->resp_incomplete && ok2xx) {
        char why[200];
        snprintf(why, sizeof(why), "key %s: the answer is over %d MiB (or memory ran out)",
                 c->cur->key->e.id, MAX_BUFFERED >> 20);
        kp_router__fail(c, 502, "server_error", "upstream_answer_too_large", why);
        return;
    }
    if (ok2xx) {
        char why[300];
        if (!relay_answer(c, why, sizeof(why))) {
            kp_warn("router", "request %s: %s", c->rid, why);
            kp_buf_consume(&c->resp, c->resp.len);
            attempt_failed(c, "server", why);
            return;
        }
        kp_router__finish(c); /* settled by relay_answer, before the answer left */
        return;
    }
    /* A failed attempt's body is classified on what was kept of it (its
     * first 64 KiB). */
    if (kp_buf_append(&c->resp, "", 1) == 0)
        c->resp.len--;
    const char *cls = classify(c, c->up_status, &c->resp);
    if (strcmp(cls, "client") == 0) {
        /* The request's own fault: the app sees the provider's answer, in
         * the app's shape when the provider speaks another. */
        kp_usage_set_str(c->ev.error_class, "client");
        kp_router__count_attempt(c->cur->provider->e.id, c->cur->key->e.id, "client");
        if (c->shape != KP_SHAPE_OPENAI && c->shape != KP_SHAPE_MESSAGES) {
            json_t *doc = json_loadb(c->resp.data, c->resp.len, 0, NULL);
            const char *m =
                json_string_value(json_object_get(json_object_get(doc, "error"), "message"));
            char msg[600];
            snprintf(msg, sizeof(msg), "the provider refused the request (%d): %s", c->up_status,
                     m ? m : "no message");
            json_decref(doc);
            kp_router__fail(c, c->up_status, "invalid_request_error", "upstream_client_error", msg);
            return;
        }
        if (c->resp_incomplete) {
            kp_router__fail(c, c->up_status, "invalid_request_error", "upstream_client_error",
                            "the provider refused the request with an answer over 64 KiB");
            return;
        }
        char why[300];
        relay_answer(c, why, sizeof(why)); /* not 2xx: never fails */
        kp_router__settle(c);
        kp_router__finish(c);
        return;
    }
    char why[160];
    snprintf(why, sizeof(why), "key %s answered %d", c->cur->key->e.id, c->up_status);
    kp_buf_consume(&c->resp, c->resp.len);
    attempt_failed(c, cls, why);
}

/* --- starting an attempt ------------------------------------------------------------ */

static int build_request(struct kp_call *c, const struct kp_candidate *k,
                         struct kp_upstream_request *req, struct kp_prep *prep, char *errmsg,
                         size_t errlen, char *param, size_t paramlen)
{
    const struct kp_secret *secret =
        kp_secret_cache_get(c->r->secrets, &c->r->sh, k->key, errmsg, errlen);
    if (secret == NULL)
        return KP_EPERM;
    kp_buf_consume(&c->upstream_body, c->upstream_body.len);
    int rc = kp_router__prepare(c, k, kp_secret_data(secret), kp_secret_len(secret), prep, errmsg,
                                errlen, param, paramlen);
    if (rc != KP_OK)
        return rc;
    memset(req, 0, sizeof(*req));
    req->method = "POST";
    req->url = prep->url;
    req->allow_http = k->provider->allow_insecure;
    req->connect_timeout_ms = k->provider->connect_timeout_ms;
    req->first_byte_timeout_ms = k->provider->first_byte_timeout_ms;
    req->idle_timeout_ms = k->provider->idle_timeout_ms;
    req->total_timeout_ms = k->provider->total_timeout_ms;
    req->stream = c->stream;
    req->headers = prep->headers;
    req->n_headers = prep->n;
    const struct kp_buf *body = c->upstream_body.len > 0    ? &c->upstream_body
                                : c->rewritten_body.len > 0 ? &c->rewritten_body
                                                            : NULL;
    req->body = body ? body->data : c->req->body;
    req->body_len = body ? body->len : c->req->body_len;
    return KP_OK;
}

void kp_router__attempt_next(struct kp_call *c)
{
    static const struct kp_upstream_callbacks cbs = {on_head, on_body, attempt_done, NULL, on_read};
    char errmsg[300] = "", param[160] = "";
    struct kp_prep prep;
    while (c->next_cand < c->ncand) {
        if (c->deadline_us != 0 && kp_now_mono_us() >= c->deadline_us) {
            /* Retries and failovers end with the first attempt's total
             * timeout: no call outlives it, however many keys fail. */
            char msg[300];
            snprintf(msg, sizeof(msg),
                     "the call used up its total timeout (%llu ms, from provider %s) in %u "
                     "attempt%s of pool %s",
                     (unsigned long long)c->deadline_ms, c->deadline_of, c->attempts,
                     c->attempts == 1 ? "" : "s", c->pool_name);
            kp_usage_set_str(c->ev.error_class, "timeout");
            c->retry_after_s = 0;
            kp_router__fail(c, 504, "server_error", "upstream_timeout", msg);
            return;
        }
        const struct kp_candidate *k = &c->cand[c->next_cand++];
        if (k != c->cur)
            c->key_retries = 0;
        struct kp_upstream_request req;
        c->cur = k;
        c->attempts++;
        kp_usage_set_str(c->ev.key_id, k->key->e.id);
        kp_usage_set_str(c->ev.provider, k->provider->e.id);
        kp_usage_set_str(c->ev.pool, k->pool);
        c->up_status = 0;
        c->resp_incomplete = false;
        int brc = kp_router__budget_key(c, k->key);
        if (brc == KP_EBUSY) {
            c->next_cand--; /* this key again when a grant comes */
            c->attempts--;
            return;
        }
        if (brc == KP_ENOENT) {
            snprintf(errmsg, sizeof(errmsg), "key %s is out of its budget", k->key->e.id);
            c->attempts--;
            c->budget_skipped = true;
            continue;
        }
        int64_t wait = kp_router__limit_key(c, k->key);
        if (wait > 0) {
            /* Over its provider's ceiling: the next key, as for a 429. */
            snprintf(errmsg, sizeof(errmsg), "key %s is over its rate limit for %lld ms",
                     k->key->e.id, (long long)wait);
            c->attempts--;
            c->key_limited = true;
            if (c->retry_after_s == 0 || wait / 1000 + 1 < c->retry_after_s)
                c->retry_after_s = (int)(wait / 1000) + 1;
            continue;
        }
        kp_router__stream_free(c);
        c->stream_broken = false;
        c->stream_error[0] = '\0';
        prep.auth_len = 0;
        int rc = build_request(c, k, &req, &prep, errmsg, sizeof(errmsg), param, sizeof(param));
        if (rc == KP_EINVAL) {
            /* The request cannot be expressed for this provider: the app's
             * to fix, not a reason to try another key. */
            kp_secret_wipe(prep.auth, prep.auth_len);
            kp_router__fail_param(c, 400, "invalid_request_error", "unsupported_for_provider",
                                  param[0] ? param : NULL, errmsg);
            return;
        }
        if (rc == KP_OK) {
            uint64_t total_ms = req.total_timeout_ms ? req.total_timeout_ms : KP_UPSTREAM_TOTAL_MS;
            if (c->deadline_us == 0) {
                c->deadline_ms = total_ms;
                c->deadline_of = k->provider->e.id;
                c->deadline_us = c->start_us + total_ms * 1000;
            }
            uint64_t now = kp_now_mono_us();
            uint64_t left_ms = c->deadline_us > now ? (c->deadline_us - now) / 1000 : 0;
            if (left_ms < total_ms)
                req.total_timeout_ms = left_ms > 0 ? (uint32_t)left_ms : 1;
            struct kp_upstream_callbacks cb = cbs;
            cb.arg = c;
            rc = kp_upstream_start(c->r->up, &req, &cb, &c->up, errmsg, sizeof(errmsg));
        }
        kp_secret_wipe(prep.auth, prep.auth_len);
        if (rc == KP_OK) {
            kp_keystat_begin(c->r->breakers, k->key->e.id);
            c->stat_open = true;
            c->attempt_start_us = kp_now_mono_us();
            c->head_us = 0;
            kp_trace__attempt_begin(c); /* its client span */
            return;
        }
        kp_warn("router", "request %s: key %s skipped: %s", c->rid, k->key->e.id, errmsg);
    }
    if (c->attempts == 0 && c->budget_skipped && c->key_refused_set && !c->key_limited) {
        kp_router__budget_refuse_key(c); /* every key is out of its budget */
        return;
    }
    give_up(c, c->key_limited && c->attempts == 0 ? "rate_limit" : "server",
            errmsg[0] ? errmsg : "no key could be tried");
}

void kp_router__attempt_cancel(struct kp_call *c)
{
    if (c->up != NULL)
        stat_end(c, false);
    if (c->retry_timer != NULL)
        uv_timer_stop(c->retry_timer);
    if (c->up != NULL) {
        kp_upstream_cancel(c->up);
        c->up = NULL;
    }
}

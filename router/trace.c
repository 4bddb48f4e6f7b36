/* A gateway call's trace (docs/observability.md).
 *
 * When a call is made it joins the app's trace (a valid W3C traceparent)
 * or starts one, and gets its server span id; the trace id goes into the
 * usage event, and a traceparent naming the server span into every answer.
 * Each upstream attempt gets a span id of its own, sent to the provider as
 * the parent in its traceparent, so retries and failovers show as sibling
 * client spans under the server span.
 *
 * Nothing is built while the call runs beyond a few ids and times in
 * struct kp_call_trace. At the end, kp_trace__finish decides whether the
 * trace is kept (the head decision, or any failure: a tail decision is
 * possible because spans are only made now) and hands the spans and the
 * access record to the sink, which owns them from then on.
 *
 * Spans carry the OpenTelemetry GenAI attributes and keyplane's own, and
 * never a key or a URL beyond its host. Prompts and completions go on the
 * server span only when the call's tenant has capture_content on in the
 * call's view (trace_content.c); otherwise the only text read from
 * answers is the finish reasons, short words. */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "router_internal.h"

/* --- trace context ------------------------------------------------------------ */

/* The value of header @name when the request has exactly one. */
static const char *single_header(const struct kp_http_request *req, const char *name)
{
    const char *v = NULL;
    for (unsigned i = 0; i < req->n_headers; i++) {
        if (strcasecmp(req->headers[i].name, name) != 0)
            continue;
        if (v != NULL)
            return NULL; /* twice: the specification says to start over */
        v = req->headers[i].value;
    }
    return v;
}

/* The app's context, when its traceparent is valid. */
static bool app_parent(const struct kp_http_request *req, struct kp_trace_parent *p)
{
    const char *tp = single_header(req, "traceparent");
    return tp != NULL && kp_traceparent_parse(tp, strlen(tp), p) == KP_OK;
}

void kp_trace__begin(struct kp_call *c)
{
    struct kp_call_trace *t = &c->trace;
    const struct kp_trace_sink *sink = &c->r->sh.trace;
    struct kp_trace_parent p;
    t->start_ns = kp_now_unix_ns();
    t->cur = -1;
    if (app_parent(c->req, &p)) {
        memcpy(t->trace_id, p.trace_id, sizeof(t->trace_id));
        memcpy(t->parent_id, p.span_id, sizeof(t->parent_id));
        /* The app decided; a node that records nothing passes its
         * decision on unchanged. */
        t->sampled = (p.flags & KP_TRACE_SAMPLED) != 0;
        const char *ts = kp_http_request_header(c->req, "tracestate");
        if (ts != NULL && kp_tracestate_valid(ts, strlen(ts)))
            t->tracestate = kp_strdup(ts); /* out of memory: not passed on */
    } else {
        kp_trace_new_id(t->trace_id, sizeof(t->trace_id));
        t->sampled = sink->spans && kp_trace_ratio_keeps(t->trace_id, sink->sample_ratio);
    }
    kp_trace_new_id(t->span_id, sizeof(t->span_id));
    t->flags = t->sampled ? KP_TRACE_SAMPLED : 0;
    kp_traceparent_format(t->trace_id, t->span_id, t->flags, t->header);
    kp_hex_encode(t->trace_id, sizeof(t->trace_id), c->ev.trace_id);
}

void kp_trace__orphan(const struct kp_http_request *req, char header[KP_TRACEPARENT_LEN + 1],
                      char trace_id[KP_USAGE_TRACE_ID_LEN + 1])
{
    struct kp_trace_parent p;
    uint8_t span[8];
    if (!app_parent(req, &p)) {
        kp_trace_new_id(p.trace_id, sizeof(p.trace_id));
        p.flags = 0;
    }
    kp_trace_new_id(span, sizeof(span));
    kp_traceparent_format(p.trace_id, span, p.flags & KP_TRACE_SAMPLED, header);
    kp_hex_encode(p.trace_id, sizeof(p.trace_id), trace_id);
}

unsigned kp_trace__upstream_headers(struct kp_call *c, struct kp_http_header *h)
{
    struct kp_call_trace *t = &c->trace;
    kp_trace_new_id(t->next_span, sizeof(t->next_span));
    kp_traceparent_format(t->trace_id, t->next_span, t->flags, t->upstream);
    h[0] = KP_HTTP_HEADER("traceparent", t->upstream);
    if (t->tracestate == NULL)
        return 1;
    h[1] = KP_HTTP_HEADER("tracestate", t->tracestate);
    return 2;
}

/* --- attempts ---------------------------------------------------------------- */

/* Unix ns of the monotonic instant @mono_us of this call. */
static int64_t unix_ns(const struct kp_call *c, uint64_t mono_us)
{
    return c->trace.start_ns + (int64_t)(mono_us - c->start_us) * 1000;
}

/* The model this attempt asks for: the app's, or the one a pool's
 * downgrade put in the body (whose text a later downgrade frees, hence
 * the copy). */
static const char *attempt_model(struct kp_call *c)
{
    if (c->downgrades == 0 || c->downgrades > 2)
        return c->ev.model_requested;
    char **dst = &c->trace.dg_model[c->downgrades - 1];
    if (*dst == NULL)
        *dst = kp_strdup(c->model);
    return *dst ? *dst : c->ev.model_requested;
}

void kp_trace__free(struct kp_call *c)
{
    if (c->trace.att != c->trace.att_small)
        kp_free(c->trace.att);
    kp_free(c->trace.tracestate);
    kp_free(c->trace.dg_model[0]);
    kp_free(c->trace.dg_model[1]);
}

void kp_trace__attempt_begin(struct kp_call *c)
{
    struct kp_call_trace *t = &c->trace;
    t->started++;
    t->cur = -1;
    if (t->natt == KP_TRACE_ATTEMPTS)
        return;
    if (t->att == NULL)
        t->att = t->att_small;
    if (t->att == t->att_small && t->natt == sizeof(t->att_small) / sizeof(t->att_small[0])) {
        struct kp_trace_attempt *all = kp_malloc(KP_TRACE_ATTEMPTS * sizeof(*all));
        if (all == NULL)
            return; /* counted, without a span */
        memcpy(all, t->att_small, sizeof(t->att_small));
        t->att = all;
    }
    t->cur = (int)t->natt;
    struct kp_trace_attempt *a = &t->att[t->natt++];
    memset(a, 0, sizeof(*a));
    memcpy(a->span_id, t->next_span, sizeof(a->span_id));
    a->key = c->cur->key;
    a->provider = c->cur->provider;
    a->pool = c->cur->pool;
    a->model = attempt_model(c);
    a->start_ns = unix_ns(c, kp_now_mono_us());
    a->retry = c->key_retries > 0;
}

void kp_trace__attempt_end(struct kp_call *c)
{
    struct kp_call_trace *t = &c->trace;
    if (t->cur < 0)
        return;
    struct kp_trace_attempt *a = &t->att[t->cur];
    if (a->end_ns != 0)
        return;
    a->end_ns = unix_ns(c, kp_now_mono_us());
    a->status = c->up_status;
    if (c->head_us > c->attempt_start_us)
        a->head_ns = unix_ns(c, c->head_us);
}

void kp_trace__attempt_failed(struct kp_call *c, const char *cls)
{
    struct kp_call_trace *t = &c->trace;
    t->failed++;
    if (t->cur >= 0 && t->att[t->cur].cls == NULL)
        t->att[t->cur].cls = cls;
}

/* --- finish reasons ----------------------------------------------------------- */

static const char *skip_blanks(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

static bool word_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '_' || ch == '-';
}

/* Each `"key" : "word"` in @data. A raw `"key"` can only be a member name:
 * inside a JSON string its quotes would be escaped. */
static unsigned scan_key(const char *data, size_t len, const char *key, char out[][24], unsigned n,
                         unsigned max)
{
    size_t klen = strlen(key);
    const char *p = data, *end = data + len;
    while (n < max && p < end) {
        const char *hit = memmem(p, (size_t)(end - p), key, klen);
        if (hit == NULL)
            break;
        p = skip_blanks(hit + klen, end);
        if (p == end || *p != ':')
            continue;
        p = skip_blanks(p + 1, end);
        if (p == end || *p != '"')
            continue;
        const char *w = ++p;
        while (p < end && p - w < 24 && word_char(*p))
            p++;
        if (p == end || *p != '"' || p == w || p - w >= 24)
            continue;
        bool dup = false;
        for (unsigned i = 0; i < n && !dup; i++)
            dup = strlen(out[i]) == (size_t)(p - w) && memcmp(out[i], w, (size_t)(p - w)) == 0;
        if (!dup) {
            memcpy(out[n], w, (size_t)(p - w));
            out[n++][p - w] = '\0';
        }
    }
    return n;
}

unsigned kp_trace__finish_reasons(const char *data, size_t len, char out[][24], unsigned n,
                                  unsigned max)
{
    n = scan_key(data, len, "\"finish_reason\"", out, n, max);
    return scan_key(data, len, "\"stop_reason\"", out, n, max);
}

void kp_trace__scan(struct kp_call *c, const char *data, size_t len)
{
    struct kp_call_trace *t = &c->trace;
    if (!c->r->sh.trace.spans || t->nfinish == KP_TRACE_FINISH || data == NULL)
        return;
    t->nfinish = kp_trace__finish_reasons(data, len, t->finish, t->nfinish, KP_TRACE_FINISH);
}

/* --- spans -------------------------------------------------------------------- */

bool kp_trace_keep(bool head_sampled, bool failed)
{
    return head_sampled || failed;
}

bool kp_trace__url_host(const char *url, char *host, size_t hostlen, int *port)
{
    const char *p = strstr(url, "://");
    if (p == NULL)
        return false;
    bool tls = p - url == 5 && strncasecmp(url, "https", 5) == 0;
    p += 3;
    size_t auth = strcspn(p, "/?#");
    const char *at = memrchr(p, '@', auth); /* credentials in a URL never leave */
    if (at != NULL) {
        auth -= (size_t)(at + 1 - p);
        p = at + 1;
    }
    const char *h = p, *hend = p + auth;
    if (h < hend && *h == '[') { /* [v6]:port */
        const char *close = memchr(h, ']', auth);
        if (close == NULL)
            return false;
        h++;
        p = close;
    }
    const char *colon = memchr(p, ':', (size_t)(hend - p));
    const char *e = colon ? colon : hend;
    if (e > h && e[-1] == ']')
        e--;
    if (e <= h || (size_t)(e - h) >= hostlen)
        return false;
    memcpy(host, h, (size_t)(e - h));
    host[e - h] = '\0';
    *port = tls ? 443 : 80;
    if (colon != NULL && colon + 1 < hend) {
        int v = 0;
        for (const char *d = colon + 1; d < hend; d++) {
            if (*d < '0' || *d > '9' || v > 65535)
                return false;
            v = v * 10 + (*d - '0');
        }
        *port = v;
    }
    return true;
}

static const char *operation(enum kp_endpoint ep)
{
    switch (ep) {
    case KP_EP_COMPLETIONS:
        return "text_completion";
    case KP_EP_EMBEDDINGS:
        return "embeddings";
    default:
        return "chat"; /* chat completions, responses, messages */
    }
}

/* gen_ai.system (gen_ai.provider.name in newer conventions) of a
 * provider kind: the conventions' well-known values, and _OTHER for an
 * OpenAI-compatible provider, which may be anyone. */
static const char *gen_ai_system(int kind)
{
    switch (kind) {
    case KP_PROVIDER_OPENAI:
        return "openai";
    case KP_PROVIDER_AZURE_OPENAI:
        return "azure.ai.openai";
    case KP_PROVIDER_ANTHROPIC:
        return "anthropic";
    case KP_PROVIDER_GEMINI:
        return "gcp.gemini";
    default:
        return "_OTHER";
    }
}

static void set_ids(struct kp_span *sp, const struct kp_call_trace *t, const uint8_t span[8],
                    const uint8_t parent[8])
{
    memcpy(sp->trace_id, t->trace_id, sizeof(sp->trace_id));
    memcpy(sp->span_id, span, sizeof(sp->span_id));
    memcpy(sp->parent_id, parent, sizeof(sp->parent_id));
}

static void usage_attrs(struct kp_span *sp, const struct kp_call *c)
{
    kp_span_int(sp, "gen_ai.usage.input_tokens", (int64_t)c->ev.tokens_in);
    kp_span_int(sp, "gen_ai.usage.output_tokens", (int64_t)c->ev.tokens_out);
}

static void finish_attrs(struct kp_span_set *s, struct kp_span *sp, const struct kp_call_trace *t)
{
    const char *reasons[KP_TRACE_FINISH];
    for (unsigned i = 0; i < t->nfinish; i++)
        reasons[i] = t->finish[i];
    kp_span_strs(s, sp, "gen_ai.response.finish_reasons", reasons, t->nfinish);
}

/* Whether the call failed as the app sees it: a 5xx or no answer, or a
 * stream that broke after it started. A 4xx is the app's own (HTTP server
 * spans leave it unset). */
static bool server_error(const struct kp_call *c)
{
    return c->ev.status >= 500 || c->ev.status == 0 || (c->sent_body && c->ev.error_class[0]);
}

static bool captures_content(const struct kp_call *c)
{
    const struct kp_tenant *tn =
        c->view != NULL && c->ev.tenant[0] != '\0' ? kp_view_tenant(c->view, c->ev.tenant) : NULL;
    return tn != NULL && tn->capture_content;
}

/* The request's text, and the answer's for a whole 2xx answer (a stream's
 * answer is relayed, not kept, so only its request is captured). */
static void content_attrs(struct kp_span_set *s, struct kp_span *sp, struct kp_call *c)
{
    bool answered = !c->stream && c->ev.status >= 200 && c->ev.status <= 299 &&
                    !c->resp_incomplete && c->resp.len > 0;
    struct kp_trace_content tc;
    kp_trace__content(kp_router__body(c), answered ? c->resp.data : NULL, c->resp.len, &tc);
    kp_span_str(s, sp, "gen_ai.system_instructions", tc.system);
    kp_span_str(s, sp, "gen_ai.input.messages", tc.input);
    kp_span_str(s, sp, "gen_ai.output.messages", tc.output);
    if (tc.truncated)
        kp_span_bool(sp, "keyplane.content_truncated", true);
    kp_trace__content_free(&tc);
}

static void server_span(struct kp_span_set *s, struct kp_call *c, int64_t end_ns)
{
    const struct kp_call_trace *t = &c->trace;
    const struct kp_usage_event *ev = &c->ev;
    char name[96];
    snprintf(name, sizeof(name), "POST %s", c->route ? c->route : "/");
    struct kp_span *sp = kp_span_add(s, name, KP_SPAN_SERVER, 40);
    if (sp == NULL)
        return;
    set_ids(sp, t, t->span_id, t->parent_id); /* zero without a parent */
    kp_span_trace_state(s, sp, t->tracestate ? t->tracestate : "");
    sp->start_ns = t->start_ns;
    sp->end_ns = end_ns;
    kp_span_str(s, sp, "http.request.method", "POST");
    kp_span_str(s, sp, "http.route", c->route);
    if (ev->status > 0)
        kp_span_int(sp, "http.response.status_code", ev->status);
    kp_span_str(s, sp, "gen_ai.operation.name", operation(c->ep));
    kp_span_str(s, sp, "gen_ai.request.model", ev->model_requested);
    kp_span_str(s, sp, "gen_ai.response.model", ev->model_served);
    if (t->natt > 0) {
        const char *sys = gen_ai_system(t->att[t->natt - 1].provider->kind);
        kp_span_str(s, sp, "gen_ai.system", sys);
        kp_span_str(s, sp, "gen_ai.provider.name", sys);
        usage_attrs(sp, c);
    }
    finish_attrs(s, sp, t);
    kp_span_str(s, sp, "keyplane.request_id", ev->request_id);
    kp_span_str(s, sp, "keyplane.node", ev->node);
    kp_span_str(s, sp, "keyplane.tenant", ev->tenant);
    kp_span_str(s, sp, "keyplane.project", ev->project);
    kp_span_str(s, sp, "keyplane.feature", ev->feature);
    kp_span_str(s, sp, "keyplane.pool", ev->pool);
    kp_span_str(s, sp, "keyplane.key_id", ev->key_id);
    kp_span_str(s, sp, "keyplane.provider", ev->provider);
    kp_span_str(s, sp, "keyplane.error_class", ev->error_class);
    kp_span_str(s, sp, "keyplane.budget", c->budget_refused);
    kp_span_int(sp, "keyplane.cost_nanousd", ev->cost);
    kp_span_int(sp, "keyplane.attempts", t->started);
    kp_span_int(sp, "keyplane.retries", ev->retries);
    kp_span_bool(sp, "keyplane.streamed", ev->streamed);
    if (ev->tokens_cached > 0)
        kp_span_int(sp, "keyplane.tokens_cached", (int64_t)ev->tokens_cached);
    if (ev->tokens_estimated)
        kp_span_bool(sp, "keyplane.tokens_estimated", true);
    if (ev->ttfb_us > 0)
        kp_span_int(sp, "keyplane.ttfb_us", (int64_t)ev->ttfb_us);
    if (c->stream && c->sent_body)
        kp_span_event(sp, "gen_ai.first_token", t->start_ns + (int64_t)ev->ttfb_us * 1000);
    if (captures_content(c))
        content_attrs(s, sp, c);
    if (server_error(c)) {
        const char *cls = ev->error_class[0] ? ev->error_class : "server";
        kp_span_str(s, sp, "error.type", cls);
        kp_span_status(s, sp, KP_SPAN_ERROR, cls);
    }
}

static void client_span(struct kp_span_set *s, struct kp_call *c, unsigned i, int64_t end_ns)
{
    const struct kp_call_trace *t = &c->trace;
    const struct kp_trace_attempt *a = &t->att[i];
    bool last = i + 1 == t->natt && t->natt == t->started;
    const char *op = operation(c->ep);
    const char *sys = gen_ai_system(a->provider->kind);
    char name[320], host[256];
    int port;
    snprintf(name, sizeof(name), "%s %s", op, a->model);
    struct kp_span *sp = kp_span_add(s, name, KP_SPAN_CLIENT, 32);
    if (sp == NULL)
        return;
    set_ids(sp, t, a->span_id, t->span_id);
    kp_span_trace_state(s, sp, t->tracestate ? t->tracestate : "");
    sp->start_ns = a->start_ns;
    sp->end_ns = a->end_ns ? a->end_ns : end_ns;
    kp_span_str(s, sp, "gen_ai.operation.name", op);
    kp_span_str(s, sp, "gen_ai.system", sys);
    kp_span_str(s, sp, "gen_ai.provider.name", sys);
    kp_span_str(s, sp, "gen_ai.request.model", a->model);
    if (kp_trace__url_host(a->provider->base_url, host, sizeof(host), &port)) {
        kp_span_str(s, sp, "server.address", host);
        kp_span_int(sp, "server.port", port);
    }
    kp_span_str(s, sp, "http.request.method", "POST");
    if (a->status > 0)
        kp_span_int(sp, "http.response.status_code", a->status);
    kp_span_str(s, sp, "keyplane.key_id", a->key->e.id);
    kp_span_str(s, sp, "keyplane.provider", a->provider->e.id);
    kp_span_str(s, sp, "keyplane.pool", a->pool);
    kp_span_int(sp, "keyplane.attempt", i + 1);
    if (a->retry)
        kp_span_bool(sp, "keyplane.retry", true);
    /* The last attempt's outcome is the call's (a relayed 4xx, a broken
     * stream, a cancel); earlier ones failed or they would be the last. */
    const char *cls = a->cls ? a->cls : last && c->ev.error_class[0] ? c->ev.error_class : NULL;
    if (last && cls == NULL) {
        kp_span_str(s, sp, "gen_ai.response.model", c->ev.model_served);
        usage_attrs(sp, c);
        finish_attrs(s, sp, t);
        if (c->stream && c->sent_body)
            kp_span_event(sp, "gen_ai.first_token", t->start_ns + (int64_t)c->ev.ttfb_us * 1000);
    }
    if (cls != NULL) {
        char msg[KP_USAGE_STR_MAX + 32];
        if (a->status > 0)
            snprintf(msg, sizeof(msg), "%s (HTTP %d)", cls, a->status);
        else
            snprintf(msg, sizeof(msg), "%s", cls);
        kp_span_str(s, sp, "keyplane.error_class", cls);
        kp_span_str(s, sp, "error.type", cls);
        kp_span_status(s, sp, KP_SPAN_ERROR, msg);
    }
}

static struct kp_span_set *build_spans(struct kp_call *c)
{
    const struct kp_call_trace *t = &c->trace;
    struct kp_span_set *s = kp_span_set_new(1 + t->natt);
    if (s == NULL)
        return NULL;
    int64_t end_ns = t->start_ns + (int64_t)c->ev.total_us * 1000;
    server_span(s, c, end_ns);
    for (unsigned i = 0; i < t->natt && s->n > 0; i++)
        client_span(s, c, i, end_ns);
    if (s->n == 0) {
        kp_span_set_free(s);
        return NULL;
    }
    return s;
}

void kp_trace__finish(struct kp_call *c)
{
    const struct kp_trace_sink *sink = &c->r->sh.trace;
    if (sink->submit == NULL || (!sink->spans && !sink->access_log))
        return;
    struct kp_access_record *acc = NULL;
    if (sink->access_log && (acc = kp_malloc(sizeof(*acc))) != NULL) {
        acc->next = NULL;
        acc->ev = c->ev;
        acc->route = c->route ? c->route : "";
        acc->attempts = c->trace.started;
        snprintf(acc->budget, sizeof(acc->budget), "%s", c->budget_refused);
    }
    struct kp_span_set *spans = NULL;
    bool failed = c->ev.error_class[0] != '\0' || c->trace.failed > 0;
    if (sink->spans && kp_trace_keep(c->trace.sampled, failed))
        spans = build_spans(c);
    if (acc != NULL || spans != NULL)
        sink->submit(sink->arg, spans, acc);
}

/* --- the access log ------------------------------------------------------------ */

int kp_access_record_line(const struct kp_access_record *r, struct kp_buf *out)
{
    const struct kp_usage_event *ev = &r->ev;
    char when[32];
    kp_format_time_ms(ev->time_ms, when, sizeof(when));
    json_t *o = json_pack(
        "{s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:i,s:s,s:s,s:i,s:i,s:I,s:I,s:I,"
        "s:b,s:I,s:I,s:I,s:b}",
        "time", when, "request_id", ev->request_id, "trace_id", ev->trace_id, "node", ev->node,
        "route", r->route, "tenant", ev->tenant, "project", ev->project, "feature", ev->feature,
        "model_requested", ev->model_requested, "model_served", ev->model_served, "provider",
        ev->provider, "key_id", ev->key_id, "pool", ev->pool, "status", (int)ev->status,
        "error_class", ev->error_class, "budget", r->budget, "attempts", (int)r->attempts,
        "retries", (int)ev->retries, "tokens_in", (json_int_t)ev->tokens_in, "tokens_out",
        (json_int_t)ev->tokens_out, "tokens_cached", (json_int_t)ev->tokens_cached,
        "tokens_estimated", ev->tokens_estimated, "cost_nanousd", (json_int_t)ev->cost, "ttfb_us",
        (json_int_t)ev->ttfb_us, "duration_us", (json_int_t)ev->total_us, "streamed", ev->streamed);
    size_t len;
    char *text = o ? kp_json_dumps(o, &len) : NULL;
    json_decref(o);
    if (text == NULL)
        return KP_ENOMEM;
    len = kp_redact(text, len);
    int rc =
        kp_buf_append(out, text, len) == 0 && kp_buf_append_lit(out, "\n") == 0 ? KP_OK : KP_ENOMEM;
    kp_free(text);
    return rc;
}

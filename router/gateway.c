/* The gateway's request path (docs/router.md):
 *
 *   route -> view -> parse body once -> token -> scope -> candidate keys
 *         -> attempts (attempt.c) -> answer -> one usage event
 *
 * Everything runs on the worker's loop; the registry is the view acquired
 * when the request arrived, held until the call ends, so a registry change
 * mid-call cannot pull an entity from under it. */
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "router_internal.h"

struct route {
    const char *path;
    enum kp_endpoint ep;
    const char *label;
    const char *suffix; /* appended to an OpenAI-shaped provider's base URL */
};

static const struct route routes[] = {
    {"/v1/chat/completions", KP_EP_CHAT, "/v1/chat/completions", "/chat/completions"},
    {"/v1/completions", KP_EP_COMPLETIONS, "/v1/completions", "/completions"},
    {"/v1/embeddings", KP_EP_EMBEDDINGS, "/v1/embeddings", "/embeddings"},
    {"/v1/responses", KP_EP_RESPONSES, "/v1/responses", "/responses"},
    {"/anthropic/v1/messages", KP_EP_MESSAGES, "/anthropic/v1/messages", "/messages"},
};

const char *kp_router__suffix(enum kp_endpoint ep)
{
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++)
        if (routes[i].ep == ep)
            return routes[i].suffix;
    return "";
}

/* --- lifecycle of a call ------------------------------------------------------ */

static void timer_closed(uv_handle_t *h)
{
    kp_free(h);
}

/* Calls in flight in this process, all workers: the max_inflight cap. */
static atomic_uint inflight_calls;

/* A call is 7 KiB: a worker keeps a few freed ones for the next calls, as
 * malloc takes a block that large from its large bins and sweeps its bins
 * of small blocks first (malloc_consolidate, which ran twice a call). */
#define SPARE_CALLS 16

static void call_free(struct kp_call *c)
{
    atomic_fetch_sub_explicit(&inflight_calls, 1, memory_order_relaxed);
    if (c->retry_timer != NULL) {
        uv_timer_stop(c->retry_timer);
        c->retry_timer->data = NULL;
        uv_close((uv_handle_t *)c->retry_timer, timer_closed);
    }
    struct kp_router *r = c->r;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else if (r->calls == c)
        r->calls = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    json_decref(c->body);
    kp_trace__free(c);
    if (c->cand != c->cand_small)
        kp_free(c->cand);
    kp_buf_free(&c->rewritten_body);
    kp_buf_free(&c->upstream_body);
    kp_router__stream_free(c);
    kp_buf_free(&c->resp);
    kp_sse_free(&c->sse);
    if (c->view != NULL)
        kp_view_release(c->view);
    if (r->n_spare_calls < SPARE_CALLS) {
        c->next = r->spare_calls;
        r->spare_calls = c;
        r->n_spare_calls++;
        return;
    }
    kp_free(c);
}

void kp_router__finish(struct kp_call *c)
{
    if (c->done)
        return;
    c->done = true;
    if (c->model != NULL || c->token != NULL) {
        c->ev.total_us = kp_now_mono_us() - c->start_us;
        c->ev.streamed = c->stream;
        kp_router__count_usage(&c->ev);
        kp_router__limit_charge(c);
        kp_router__budget_settle(c);
        if (c->r->sh.usage.record != NULL)
            c->r->sh.usage.record(c->r->sh.usage.arg, &c->ev);
        kp_trace__finish(c); /* spans and the access log line (trace.c) */
    }
    kp_router__flush_events(c); /* done: drops what was not written */
    call_free(c);
}

/* The error body in the app's shape: OpenAI's, or Anthropic's for
 * /anthropic/v1/messages. */
char *kp_router__error_body(const struct kp_call *c, int status, const char *type, const char *code,
                            const char *param, const char *message, size_t *len)
{
    json_t *v;
    if (c->ep == KP_EP_MESSAGES) {
        const char *atype = status == 401   ? "authentication_error"
                            : status == 403 ? "permission_error"
                            : status == 404 ? "not_found_error"
                            : status == 429 ? "rate_limit_error"
                            : status >= 500 ? "api_error"
                                            : "invalid_request_error";
        v = json_pack("{s:s,s:{s:s,s:s,s:s}}", "type", "error", "error", "type", atype, "message",
                      message, "trace_id", c->ev.trace_id);
    } else {
        v = json_pack("{s:{s:s,s:s,s:s,s:s?}}", "error", "message", message, "type", type, "code",
                      code, "param", param);
        if (v != NULL && param == NULL)
            json_object_set_new(json_object_get(v, "error"), "param", json_null());
        /* SDKs ignore members they do not know; an operator finds the
         * call's trace with it (docs/observability.md). */
        if (v != NULL)
            json_object_set_new(json_object_get(v, "error"), "trace_id",
                                json_string(c->ev.trace_id));
    }
    char *text = v ? kp_json_dumps(v, len) : NULL;
    json_decref(v);
    return text;
}

int kp_router__fail_param(struct kp_call *c, int status, const char *type, const char *code,
                          const char *param, const char *message)
{
    size_t len;
    char *body = kp_router__error_body(c, status, type, code, param, message, &len);
    char retry[16], limit[24];
    snprintf(retry, sizeof(retry), "%d", c->retry_after_s);
    snprintf(limit, sizeof(limit), "%llu", (unsigned long long)c->rl_limit);
    struct kp_http_header h[8] = {
        KP_HTTP_HEADER("Content-Type", "application/json"),
        KP_HTTP_HEADER("X-Request-Id", c->rid),
        KP_HTTP_HEADER("X-Keyplane-Error", code),
        KP_HTTP_HEADER("Retry-After", retry),
        /* Nothing left until the reset; the limit only when it is the
         * app's own (a policy's): a key's ceiling is the operator's, and a
         * provider's 429 names no number. */
        KP_HTTP_HEADER("X-RateLimit-Remaining", "0"),
        KP_HTTP_HEADER("X-RateLimit-Reset", retry),
        KP_HTTP_HEADER("X-RateLimit-Limit", limit),
    };
    unsigned nh = 3;
    if (c->retry_after_s > 0)
        nh = status == 429 ? (c->rl_limit > 0 ? 7 : 6) : 4;
    if (c->budget_refused[0] != '\0') {
        /* Retrying before the reset cannot help: say so to SDKs that
         * retry 429s on their own (the OpenAI and Anthropic SDKs read
         * x-should-retry). */
        h[4] = (struct kp_http_header)KP_HTTP_HEADER("X-Keyplane-Budget", c->budget_refused);
        h[5] = (struct kp_http_header)KP_HTTP_HEADER("x-should-retry", "false");
        nh = 6;
    }
    h[nh++] = (struct kp_http_header)KP_HTTP_HEADER("traceparent", c->trace.header);
    c->ev.status = (uint16_t)status;
    if (c->ev.error_class[0] == '\0')
        kp_usage_set_str(c->ev.error_class, status >= 500 ? "server" : "client");
    if (body != NULL) {
        kp_http_respond(c->ex, status, h, nh, body, len);
        kp_free(body);
    } else {
        kp_http_respond(c->ex, 503, h + 1, 2, NULL, 0);
    }
    kp_router__finish(c);
    return KP_EPERM;
}

int kp_router__fail(struct kp_call *c, int status, const char *type, const char *code,
                    const char *message)
{
    return kp_router__fail_param(c, status, type, code, NULL, message);
}

static void on_abort(struct kp_http_exchange *ex, void *arg)
{
    struct kp_call *c = arg;
    (void)ex;
    kp_router__attempt_cancel(c);
    kp_usage_set_str(c->ev.error_class, "cancelled");
    c->stream_cut = c->streaming_out; /* a stream's usage may not have come yet */
    kp_router__settle(c);             /* what reached the app is still metered */
    kp_http_reset(c->ex);
    kp_router__finish(c);
}

/* --- the body ----------------------------------------------------------------- */

static int parse_body(struct kp_call *c)
{
    c->body_len = c->req->body_len;
    struct kp_request_facts f;
    /* The common case without building the document: it is built only if
     * something needs it (kp_router__body). */
    if (kp_router__scan_request(c->req->body, c->req->body_len, &f) && f.model_len > 0 &&
        f.model_len <= KP_USAGE_STR_MAX) {
        memcpy(c->ev.model_requested, f.model, f.model_len);
        c->ev.model_requested[f.model_len] = '\0';
        c->model = c->ev.model_requested;
        c->stream = f.stream;
        c->stream_options = f.stream_options;
        c->client_wants_usage = f.include_usage;
        if (c->stream && c->ep == KP_EP_EMBEDDINGS)
            return kp_router__fail(c, 400, "invalid_request_error", "invalid_field",
                                   "stream: embeddings cannot be streamed");
        return KP_OK;
    }
    json_error_t err;
    c->body = json_loadb(c->req->body, c->req->body_len, JSON_REJECT_DUPLICATES, &err);
    if (c->body == NULL || !json_is_object(c->body)) {
        char msg[300];
        if (c->body == NULL)
            snprintf(msg, sizeof(msg), "the body is not valid JSON (line %d, column %d): %s",
                     err.line, err.column, err.text);
        else
            snprintf(msg, sizeof(msg), "the body must be a JSON object");
        return kp_router__fail(c, 400, "invalid_request_error", "invalid_json", msg);
    }
    json_t *model = json_object_get(c->body, "model");
    /* The provider reads the same bytes: one model, no NUL inside it. */
    if (!json_is_string(model) || json_string_length(model) == 0 ||
        json_string_length(model) > KP_USAGE_STR_MAX ||
        strlen(json_string_value(model)) != json_string_length(model))
        return kp_router__fail(c, 400, "invalid_request_error", "missing_model",
                               "model: required, a non-empty string (the model to call)");
    c->model = json_string_value(model);
    kp_usage_set_str(c->ev.model_requested, c->model);
    json_t *stream = json_object_get(c->body, "stream");
    if (stream != NULL && !json_is_boolean(stream) && !json_is_null(stream))
        return kp_router__fail(c, 400, "invalid_request_error", "invalid_field",
                               "stream: must be true or false");
    c->stream = json_is_true(stream);
    if (c->stream && c->ep == KP_EP_EMBEDDINGS)
        return kp_router__fail(c, 400, "invalid_request_error", "invalid_field",
                               "stream: embeddings cannot be streamed");
    json_t *so = json_object_get(c->body, "stream_options");
    c->stream_options = so != NULL;
    c->client_wants_usage = json_is_true(json_object_get(so, "include_usage"));
    return KP_OK;
}

json_t *kp_router__body(struct kp_call *c)
{
    if (c->body != NULL)
        return c->body;
    /* Valid already (parse_body): what goes upstream, the app's bytes or
     * those with include_usage spliced in. NULL only out of memory. */
    const struct kp_buf *b = &c->rewritten_body;
    c->body = b->len > 0 ? json_loadb(b->data, b->len, JSON_REJECT_DUPLICATES, NULL)
                         : json_loadb(c->req->body, c->req->body_len, JSON_REJECT_DUPLICATES, NULL);
    if (c->body != NULL && !json_is_object(c->body)) {
        json_decref(c->body);
        c->body = NULL;
    }
    return c->body;
}

/* The bytes sent upstream: the app's body as it came, unless the gateway
 * must ask for usage in a stream the app did not ask it for, or a budget
 * changed the document. */
static int upstream_body(struct kp_call *c)
{
    bool ask_usage =
        c->stream && (c->ep == KP_EP_CHAT || c->ep == KP_EP_COMPLETIONS) && !c->client_wants_usage;
    if (!ask_usage && !c->body_changed)
        return KP_OK;
    if (ask_usage && !c->body_changed && !c->stream_options && c->body == NULL) {
        /* The app's bytes with one member first: valid as they are (the
         * object has "model", so a comma follows), and kept byte for byte. */
        static const char member[] = "\"stream_options\":{\"include_usage\":true},";
        const char *body = c->req->body;
        size_t len = c->req->body_len, open = 0;
        while (open < len && body[open] != '{')
            open++;
        kp_buf_consume(&c->rewritten_body, c->rewritten_body.len);
        int rc = kp_buf_append(&c->rewritten_body, body, open + 1);
        rc |= kp_buf_append(&c->rewritten_body, member, sizeof(member) - 1);
        rc |= kp_buf_append(&c->rewritten_body, body + open + 1, len - open - 1);
        return rc == 0 ? KP_OK : KP_ENOMEM;
    }
    json_t *doc = kp_router__body(c);
    if (doc == NULL)
        return KP_ENOMEM;
    json_t *so = json_object_get(doc, "stream_options");
    if (ask_usage && !json_is_object(so)) {
        so = json_object();
        if (so == NULL || json_object_set_new(doc, "stream_options", so) != 0)
            return KP_ENOMEM;
    }
    if (ask_usage && json_object_set_new(so, "include_usage", json_true()) != 0)
        return KP_ENOMEM;
    size_t len;
    char *text = kp_json_dumps(doc, &len);
    if (text == NULL)
        return KP_ENOMEM;
    kp_buf_consume(&c->rewritten_body, c->rewritten_body.len);
    int rc = kp_buf_append(&c->rewritten_body, text, len) == 0 ? KP_OK : KP_ENOMEM;
    kp_free(text);
    return rc;
}

/* --- GET /v1/models ------------------------------------------------------------- */

struct models_acc {
    struct kp_call *c;
    json_t *seen;
};

static void add_model(struct models_acc *m, const char *id)
{
    struct kp_token_refusal r;
    if (strchr(id, '*') != NULL || json_object_get(m->seen, id) != NULL)
        return;
    if (kp_token_scope_allows(&m->c->scope, m->c->start_ms, NULL, NULL, NULL, NULL, id, &r) !=
        KP_OK)
        return;
    json_object_set_new(m->seen, id, json_true());
}

static int model_of_price(const struct kp_entity *e, void *arg)
{
    add_model(arg, e->id);
    return 0;
}

/* Every model with a price: the registry's and the built-in table's. */
static void add_priced_models(struct models_acc *m)
{
    kp_view_each(m->c->view, KP_KIND_PRICE, model_of_price, m);
    const struct kp_price *p;
    for (size_t i = 0; (p = kp_price_default(i)) != NULL; i++)
        add_model(m, p->e.id);
}

/* The models this token may call: those named by the keys of its pool
 * chain, and every priced model when a key allows any. */
static void handle_models(struct kp_call *c)
{
    struct models_acc m = {c, json_object()};
    bool any = false;
    const char *name = c->pool_name;
    for (int depth = 0; name != NULL && depth < 8 && m.seen != NULL; depth++) {
        const struct kp_pool *pool = kp_view_pool(c->view, name);
        struct kp_token_refusal why;
        if (pool == NULL || (depth > 0 && kp_token_scope_allows(&c->scope, c->start_ms, NULL, NULL,
                                                                NULL, name, NULL, &why) != KP_OK))
            break;
        for (uint32_t i = 0; i < pool->nmembers; i++) {
            const struct kp_key *k = kp_view_pool_key(c->view, pool, i);
            if (k == NULL || k->status != KP_KEY_ACTIVE)
                continue;
            any |= k->models.n == 0;
            for (uint32_t j = 0; j < k->models.n; j++)
                add_model(&m, k->models.v[j]);
        }
        name = pool->fallback;
    }
    if (any && m.seen != NULL)
        add_priced_models(&m);
    json_t *data = json_array();
    const char *id;
    json_t *v;
    json_object_foreach(m.seen, id, v)
    {
        json_array_append_new(data, json_pack("{s:s,s:s,s:i,s:s}", "id", id, "object", "model",
                                              "created", 0, "owned_by", "keyplane"));
    }
    json_decref(m.seen);
    kp_router__respond_list(c, data);
}

void kp_router__respond_list(struct kp_call *c, json_t *data)
{
    json_t *out = data ? json_pack("{s:s,s:o}", "object", "list", "data", data) : NULL;
    size_t len;
    char *text = out ? kp_json_dumps(out, &len) : NULL;
    json_decref(out);
    c->model = NULL; /* not a model call: no usage event */
    c->token = NULL;
    if (text == NULL) {
        kp_router__fail(c, 503, "server_error", "out_of_memory", "out of memory; retry");
        return;
    }
    struct kp_http_header h[3] = {KP_HTTP_HEADER("Content-Type", "application/json"),
                                  KP_HTTP_HEADER("X-Request-Id", c->rid),
                                  KP_HTTP_HEADER("traceparent", c->trace.header)};
    kp_http_respond(c->ex, 200, h, 3, text, len);
    kp_free(text);
    kp_router__finish(c);
}

/* --- the handler ------------------------------------------------------------------ */

static struct kp_call *call_new(struct kp_router *r, struct kp_http_exchange *ex,
                                const struct kp_http_request *req, const char *rid)
{
    struct kp_call *c = r->spare_calls;
    if (c != NULL) {
        r->spare_calls = c->next;
        r->n_spare_calls--;
        memset(c, 0, sizeof(*c));
    } else if ((c = kp_calloc(1, sizeof(*c))) == NULL) {
        return NULL;
    }
    atomic_fetch_add_explicit(&inflight_calls, 1, memory_order_relaxed);
    c->r = r;
    c->cand = c->cand_small;
    c->ex = ex;
    c->req = req;
    c->rid = rid;
    c->start_ms = kp_now_unix_ms();
    c->start_us = kp_now_mono_us();
    kp_buf_init(&c->rewritten_body);
    kp_buf_init(&c->upstream_body);
    kp_buf_init(&c->resp);
    kp_sse_init(&c->sse, 0);
    kp_usage_event_init(&c->ev);
    c->ev.time_ms = c->start_ms;
    kp_usage_set_str(c->ev.request_id, rid);
    kp_usage_set_str(c->ev.node, r->sh.node_name ? r->sh.node_name : "");
    kp_trace__begin(c); /* the app's trace context, or a new trace */
    c->next = r->calls;
    if (r->calls != NULL)
        r->calls->prev = c;
    r->calls = c;
    return c;
}

/* An answer made before there is a call (404, 405): no usage event, no
 * span, but a trace id all the same. */
/* An error answered before a call exists, in the OpenAI shape, with one
 * optional extra header (Allow for a 405, Retry-After for a shed call). */
static void early_error(struct kp_http_exchange *ex, const struct kp_http_request *req,
                        const char *rid, int status, const char *type, const char *code,
                        const char *msg, const char *extra_name, const char *extra_value)
{
    char tp[KP_TRACEPARENT_LEN + 1], trace_id[KP_USAGE_TRACE_ID_LEN + 1];
    kp_trace__orphan(req, tp, trace_id);
    json_t *v = json_pack("{s:{s:s,s:s,s:s,s:n,s:s}}", "error", "message", msg, "type", type,
                          "code", code, "param", "trace_id", trace_id);
    size_t len;
    char *body = v ? kp_json_dumps(v, &len) : NULL;
    json_decref(v);
    struct kp_http_header h[5] = {
        KP_HTTP_HEADER("X-Request-Id", rid),
        KP_HTTP_HEADER("traceparent", tp),
        KP_HTTP_HEADER("Content-Type", "application/json"),
        KP_HTTP_HEADER("X-Keyplane-Error", code),
        {extra_name, extra_name ? strlen(extra_name) : 0, extra_value,
         extra_value ? strlen(extra_value) : 0},
    };
    if (body == NULL) {
        kp_http_respond(ex, 503, h, 2, NULL, 0);
        return;
    }
    kp_http_respond(ex, status, h, extra_name ? 5 : 4, body, len);
    kp_free(body);
}

static void plain_error(struct kp_http_exchange *ex, const struct kp_http_request *req,
                        const char *rid, int status, const char *code, const char *msg,
                        const char *allow)
{
    early_error(ex, req, rid, status, "invalid_request_error", code, msg, allow ? "Allow" : NULL,
                allow);
}

/* --- overload: refuse new calls past the cap ------------------------------------------ */

/* True when a new call must be refused: the node holds max_inflight calls
 * already (each holds memory until it ends). Answering at once with 503
 * and Retry-After costs a few microseconds, where admitting it would make
 * every call in flight slower still and memory unbounded. */
static bool overloaded(struct kp_router *r)
{
    return r->sh.max_inflight > 0 &&
           atomic_load_explicit(&inflight_calls, memory_order_relaxed) >= r->sh.max_inflight;
}

/* 503 overloaded with Retry-After: 1; the SDKs retry it with backoff. */
static void shed(struct kp_http_exchange *ex, const struct kp_http_request *req, const char *rid,
                 unsigned cap)
{
    char msg[160];
    snprintf(msg, sizeof(msg),
             "keyplane is overloaded (this node has %u calls in flight, its cap); retry in 1 s, "
             "or on another node",
             cap);
    early_error(ex, req, rid, 503, "server_error", "overloaded", msg, "Retry-After", "1");
}

void kp_router_handle(struct kp_http_exchange *ex, const struct kp_http_request *req, void *arg)
{
    struct kp_router *r = arg;
    const char *rid = kp_http_request_id(ex, req);
    const struct route *rt = NULL;
    /* The GET routes: the models a token may call, and its budgets. */
    bool budget = strcmp(req->path, "/v1/keyplane/budget") == 0;
    bool models = budget || strcmp(req->path, "/v1/models") == 0;
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]) && !models; i++)
        if (strcmp(req->path, routes[i].path) == 0)
            rt = &routes[i];
    if (rt == NULL && !models) {
        kp_http_set_route(ex, "other");
        plain_error(ex, req, rid, 404, "not_found",
                    "no such endpoint: keyplane serves /v1/chat/completions, /v1/completions, "
                    "/v1/embeddings, /v1/responses, /v1/models, /anthropic/v1/messages and "
                    "/v1/keyplane/budget",
                    NULL);
        return;
    }
    kp_http_set_route(ex, budget ? "/v1/keyplane/budget" : models ? "/v1/models" : rt->label);
    const char *want = models ? "GET" : "POST";
    if (strcmp(req->method, want) != 0) {
        char msg[128];
        snprintf(msg, sizeof(msg), "%s %s is not allowed; use %s", req->method, req->path, want);
        plain_error(ex, req, rid, 405, "method_not_allowed", msg, want);
        return;
    }
    if (overloaded(r)) {
        kp_router__count_shed();
        shed(ex, req, rid, r->sh.max_inflight);
        return;
    }
    struct kp_call *c = call_new(r, ex, req, rid);
    if (c == NULL) {
        plain_error(ex, req, rid, 503, "out_of_memory", "out of memory; retry", NULL);
        return;
    }
    c->view = kp_view_acquire(r->sh.views);
    if (c->view == NULL) {
        kp_router__fail(c, 503, "server_error", "not_ready",
                        "this keyplane node has no registry yet; retry shortly");
        return;
    }
    if (!models) {
        c->ep = rt->ep;
        c->route = rt->label;
        if (parse_body(c) != KP_OK)
            return;
    }
    if (kp_router__authenticate(c) != KP_OK || kp_router__scope(c) != KP_OK)
        return;
    if (models) {
        if (budget)
            kp_router__budget_show(c);
        else
            handle_models(c);
        return;
    }
    if (kp_router__check_freeze(c) != KP_OK)
        return;
    if (r->sh.usage.accepting != NULL && !r->sh.usage.accepting(r->sh.usage.arg)) {
        kp_router__fail(c, 503, "server_error", "usage_spool_full",
                        "this keyplane node cannot record usage (its spool is full and set to "
                        "refuse calls); retry shortly or on another node");
        return;
    }
    if (kp_router__limit_call(c) != KP_OK || kp_router__budget_actions(c) != KP_OK ||
        kp_router__select(c) != KP_OK)
        return;
    kp_http_on_abort(ex, on_abort, c);
    if (kp_router__budget_begin(c) == KP_OK)
        kp_router__go(c);
}

void kp_router__go(struct kp_call *c)
{
    if (upstream_body(c) != KP_OK) {
        kp_router__fail(c, 503, "server_error", "out_of_memory", "out of memory; retry");
        return;
    }
    kp_router__attempt_next(c);
}

/* --- the router ------------------------------------------------------------------- */

int kp_router_new(struct kp_router **out, uv_loop_t *loop, const struct kp_router_shared *shared,
                  char *errmsg, size_t errlen)
{
    struct kp_router *r = kp_calloc(1, sizeof(*r));
    if (r == NULL) {
        snprintf(errmsg, errlen, "out of memory");
        return KP_ENOMEM;
    }
    r->loop = loop;
    r->sh = *shared;
    kp_router__metrics_init();
    r->secrets = kp_secret_cache_new();
    r->breakers = kp_breakers_new();
    int rc = r->secrets && r->breakers ? kp_upstream_new(&r->up, loop, errmsg, errlen) : KP_ENOMEM;
    if (rc != KP_OK) {
        kp_breakers_free(r->breakers);
        kp_secret_cache_free(r->secrets);
        kp_free(r);
        return rc;
    }
    kp_upstream_on_settled(r->up, kp_router__flush_all_events, r);
    kp_router__budget_init(r);
    *out = r;
    return KP_OK;
}

static void upstream_closed(void *arg)
{
    struct kp_router *r = arg;
    void (*cb)(void *) = r->close_cb;
    void *cb_arg = r->close_arg;
    kp_router__auth_free(r);
    while (r->spare_calls != NULL) {
        struct kp_call *c = r->spare_calls;
        r->spare_calls = c->next;
        kp_free(c);
    }
    kp_breakers_free(r->breakers);
    kp_secret_cache_free(r->secrets);
    kp_free(r);
    if (cb != NULL)
        cb(cb_arg);
}

void kp_router_close(struct kp_router *r, void (*cb)(void *arg), void *arg)
{
    r->closing = true;
    r->close_cb = cb;
    r->close_arg = arg;
    /* The HTTP server closed first and aborted every exchange, so calls
     * are normally gone; any left are cancelled here. */
    while (r->calls != NULL) {
        struct kp_call *c = r->calls;
        kp_router__attempt_cancel(c);
        kp_http_reset(c->ex);
        kp_router__finish(c);
    }
    kp_router__budget_close(r);
    kp_upstream_close(r->up, upstream_closed, r);
}

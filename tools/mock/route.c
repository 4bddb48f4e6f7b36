/* From request to answer: routing, auth, faults, body parsing, dispatch.
 *
 * The checks run in the order a real provider would apply them, each failing
 * with that provider's error shape: unknown route 404, wrong method 405, a
 * bad X-Mock-Fault header 400, a Gemini key in ?key= 400, missing key 401,
 * Anthropic without anthropic-version 400; then an injected error status
 * wins; then a missing or malformed body 400, then the shape's own
 * validation. Timing faults from the header or a key's script apply to
 * whatever answer results, errors included. Every provider request is counted
 * (route, key fingerprint) before any check can fail it.
 *
 * Bodies are parsed by jansson, except on the route benchmarks hammer: a chat
 * completion whose body kp_mock__raw_check() vouches for is read in place
 * (raw_json.c), with no tree and no allocation. Whatever the check declines,
 * malformed bodies included, takes the jansson path, so the answer is the
 * same byte for byte either way. */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "internal.h"

struct target {
    enum kp_mock_route route;
    enum kp_mock_provider provider;
    const char *method;
    const char *model; /* Gemini, Azure: from the path */
    size_t model_len;
    bool azure; /* Azure OpenAI: /openai/deployments/{name}/..., api-key */
};

static const struct {
    const char *path;
    enum kp_mock_route route;
    enum kp_mock_provider provider;
    const char *method;
} fixed_routes[] = {
    {"/v1/chat/completions", KP_MOCK_R_CHAT, KP_MOCK_OPENAI, "POST"},
    {"/v1/completions", KP_MOCK_R_COMPLETIONS, KP_MOCK_OPENAI, "POST"},
    {"/v1/embeddings", KP_MOCK_R_EMBEDDINGS, KP_MOCK_OPENAI, "POST"},
    {"/v1/responses", KP_MOCK_R_RESPONSES, KP_MOCK_OPENAI, "POST"},
    {"/v1/models", KP_MOCK_R_MODELS, KP_MOCK_OPENAI, "GET"},
    {"/v1/messages", KP_MOCK_R_MESSAGES, KP_MOCK_ANTHROPIC, "POST"},
    {"/v1beta/models", KP_MOCK_R_GEMINI_MODELS, KP_MOCK_GEMINI, "GET"},
    {"/v1/user/balance", KP_MOCK_R_BALANCE, KP_MOCK_OPENAI, "GET"},
};

/* "/v1beta/models/{model}:generateContent" and the v1 equivalent. */
static bool match_gemini(const char *path, struct target *t)
{
    static const char *const prefixes[] = {"/v1beta/models/", "/v1/models/"};
    const char *model = NULL, *colon;

    for (unsigned i = 0; i < 2 && model == NULL; i++) {
        if (strncmp(path, prefixes[i], strlen(prefixes[i])) == 0)
            model = path + strlen(prefixes[i]);
    }
    if (model == NULL || (colon = strchr(model, ':')) == NULL || colon == model)
        return false;
    if (strcmp(colon, ":generateContent") == 0)
        t->route = KP_MOCK_R_GENERATE;
    else if (strcmp(colon, ":streamGenerateContent") == 0)
        t->route = KP_MOCK_R_STREAM_GENERATE;
    else
        return false;
    t->provider = KP_MOCK_GEMINI;
    t->method = "POST";
    t->model = model;
    t->model_len = (size_t)(colon - model);
    return true;
}

/* Azure OpenAI: "/openai/deployments/{deployment}/chat/completions" (or
 * completions, embeddings), the deployment standing for the model. */
static bool match_azure(const char *path, struct target *t)
{
    static const char prefix[] = "/openai/deployments/";
    static const struct {
        const char *suffix;
        enum kp_mock_route route;
    } ops[] = {{"/chat/completions", KP_MOCK_R_CHAT},
               {"/completions", KP_MOCK_R_COMPLETIONS},
               {"/embeddings", KP_MOCK_R_EMBEDDINGS}};
    if (strncmp(path, prefix, sizeof(prefix) - 1) != 0)
        return false;
    const char *name = path + sizeof(prefix) - 1, *slash = strchr(name, '/');
    if (slash == NULL || slash == name)
        return false;
    for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
        if (strcmp(slash, ops[i].suffix) == 0) {
            t->route = ops[i].route;
            t->provider = KP_MOCK_OPENAI;
            t->method = "POST";
            t->model = name;
            t->model_len = (size_t)(slash - name);
            t->azure = true;
            return true;
        }
    return false;
}

static void match_target(const char *path, struct target *t)
{
    memset(t, 0, sizeof(*t));
    for (size_t i = 0; i < sizeof(fixed_routes) / sizeof(fixed_routes[0]); i++) {
        if (strcmp(path, fixed_routes[i].path) == 0) {
            t->route = fixed_routes[i].route;
            t->provider = fixed_routes[i].provider;
            t->method = fixed_routes[i].method;
            return;
        }
    }
    if (match_gemini(path, t) || match_azure(path, t))
        return;
    if (strncmp(path, "/v1/models/", 11) == 0 && path[11] != '\0') {
        t->route = KP_MOCK_R_MODELS;
        t->method = "GET";
        return;
    }
    t->route = KP_MOCK_R_OTHER;
    t->provider = strncmp(path, "/v1beta/", 8) == 0 ? KP_MOCK_GEMINI : KP_MOCK_OPENAI;
}

/* A header value with surrounding blanks trimmed; NULL when absent or empty. */
static const char *header_value(const struct kp_http_request *req, const char *name, size_t *len)
{
    const char *v = kp_http_request_header(req, name);
    size_t n;

    if (v == NULL)
        return NULL;
    while (*v == ' ' || *v == '\t')
        v++;
    n = strlen(v);
    while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    *len = n;
    return n > 0 ? v : NULL;
}

static const char *bearer_key(const struct kp_http_request *req, size_t *len)
{
    const char *v = header_value(req, "authorization", len);

    if (v == NULL || *len <= 7 || strncasecmp(v, "bearer ", 7) != 0)
        return NULL;
    v += 7;
    *len -= 7;
    while (*len > 0 && *v == ' ') {
        v++;
        (*len)--;
    }
    return *len > 0 ? v : NULL;
}

/* The key from the header the provider uses; for an unknown route, any of
 * them. Anthropic takes x-api-key or, as its SDKs from 1.x send an API key,
 * Authorization: Bearer. */
static const char *find_key(const struct kp_http_request *req, const struct target *t, size_t *len)
{
    bool any = t->route == KP_MOCK_R_OTHER;
    const char *k = NULL;

    if (t->azure)
        return header_value(req, "api-key", len);
    if (any || t->provider == KP_MOCK_ANTHROPIC)
        k = header_value(req, "x-api-key", len);
    if (k == NULL && (any || t->provider != KP_MOCK_GEMINI))
        k = bearer_key(req, len);
    if (k == NULL && (any || t->provider == KP_MOCK_GEMINI))
        k = header_value(req, "x-goog-api-key", len);
    return k;
}

/* Whether a parameter of @query starts with @prefix ("key="). */
static bool query_has(const char *query, const char *prefix)
{
    size_t n = strlen(prefix);
    for (const char *p = query; p != NULL && *p != '\0';) {
        if (strncmp(p, prefix, n) == 0)
            return true;
        p = strchr(p, '&');
        if (p != NULL)
            p++;
    }
    return false;
}

static bool query_has_alt_sse(const char *query)
{
    for (const char *p = query; p != NULL && *p != '\0';) {
        if (strncmp(p, "alt=sse", 7) == 0 && (p[7] == '\0' || p[7] == '&'))
            return true;
        p = strchr(p, '&');
        if (p != NULL)
            p++;
    }
    return false;
}

static void missing_key(struct kp_mock_answer *a, enum kp_mock_provider p)
{
    static const char *const msgs[] = {
        [KP_MOCK_OPENAI] = "You didn't provide an API key. You need to provide your API key in "
                           "an Authorization header using Bearer auth (i.e. Authorization: "
                           "Bearer YOUR_KEY).",
        [KP_MOCK_ANTHROPIC] = "x-api-key header is required",
        [KP_MOCK_GEMINI] = "API key missing: send it in the x-goog-api-key header.",
    };

    kp_mock__errorf(a, p, 401, "%s", msgs[p]);
}

/* The checks that need no body; true when they produced an answer. */
static bool early_checks(const struct kp_http_request *req, const struct target *t, const char *key,
                         struct kp_mock_answer *a)
{
    if (t->route == KP_MOCK_R_OTHER) {
        kp_mock__errorf(a, t->provider, 404, "Invalid URL (%s %.200s)", req->method, req->path);
        return true;
    }
    if (strcmp(req->method, t->method) != 0) {
        kp_mock__errorf(a, t->provider, 405, "Method %s is not allowed on %.200s; use %s.",
                        req->method, req->path, t->method);
        a->allow = t->method;
        return true;
    }
    if (t->provider == KP_MOCK_GEMINI && query_has(req->query, "key=")) {
        kp_mock__errorf(a, t->provider, 400,
                        "An API key in the ?key= query parameter is refused (URLs end up in logs "
                        "and traces); send it in the x-goog-api-key header.");
        return true;
    }
    if (t->azure && !query_has(req->query, "api-version=")) {
        kp_mock__errorf(a, t->provider, 404, "Resource not found (an api-version is required)");
        return true;
    }
    if (key == NULL && t->azure) {
        kp_mock__errorf(a, t->provider, 401,
                        "Access denied due to invalid subscription key or wrong API endpoint. "
                        "Make sure to provide a valid key in the api-key header.");
        return true;
    }
    if (key == NULL) {
        missing_key(a, t->provider);
        return true;
    }
    if (t->provider == KP_MOCK_ANTHROPIC &&
        kp_http_request_header(req, "anthropic-version") == NULL) {
        kp_mock__errorf(a, t->provider, 400, "anthropic-version: header is required");
        return true;
    }
    return false;
}

/* Parse the body of a POST; NULL with a message for the 400. A body is
 * parsed even when an error status will be injected, for the model name. */
static json_t *parse_body(const struct kp_http_request *req, char *errmsg, size_t errlen)
{
    json_error_t jerr;
    json_t *body;

    if (req->body_len == 0) {
        snprintf(errmsg, errlen, "The request body is missing; send a JSON object.");
        return NULL;
    }
    body = json_loadb(req->body, req->body_len, 0, &jerr);
    if (body == NULL) {
        snprintf(errmsg, errlen,
                 "We could not parse the JSON body of your request: %s (line %d, column %d).",
                 jerr.text, jerr.line, jerr.column);
        return NULL;
    }
    if (!json_is_object(body)) {
        json_decref(body);
        snprintf(errmsg, errlen, "The request body must be a JSON object.");
        return NULL;
    }
    return body;
}

static void body_model(const json_t *body, struct target *t)
{
    const json_t *model = json_object_get(body, "model");

    if (t->provider != KP_MOCK_GEMINI && !t->azure && json_is_string(model)) {
        t->model = json_string_value(model);
        t->model_len = json_string_length(model);
    }
}

static void dispatch(struct kp_mock_gen *g, const struct kp_http_request *req,
                     const struct target *t, const json_t *body, struct kp_mock_answer *a)
{
    bool stream = json_is_true(json_object_get(body, "stream"));

    switch (t->route) {
    case KP_MOCK_R_CHAT:
        kp_mock__openai_chat(g, body, stream, a);
        break;
    case KP_MOCK_R_COMPLETIONS:
        kp_mock__openai_completions(g, body, stream, a);
        break;
    case KP_MOCK_R_EMBEDDINGS:
        kp_mock__openai_embeddings(g, body, a);
        break;
    case KP_MOCK_R_RESPONSES:
        kp_mock__openai_responses(g, body, stream, a);
        break;
    case KP_MOCK_R_MESSAGES:
        kp_mock__anthropic_messages(g, body, stream, a);
        break;
    case KP_MOCK_R_GENERATE:
    case KP_MOCK_R_STREAM_GENERATE:
        kp_mock__gemini_generate(g, body, t->route == KP_MOCK_R_STREAM_GENERATE,
                                 query_has_alt_sse(req->query), a);
        break;
    default:
        kp_mock__errorf(a, t->provider, 404, "Invalid URL");
        break;
    }
}

/* The answers that come before the shape's own: an injected error status,
 * then a body that is not a JSON object (@errmsg says why), then a missing
 * model. True when one of them was given. */
static bool answer_early(const struct target *t, bool have_body, const char *errmsg,
                         struct kp_mock_answer *a)
{
    if (a->faults.status != 0)
        kp_mock__fault_error(a, t->provider, &a->faults, t->model, t->model_len);
    else if (!have_body)
        kp_mock__errorf(a, t->provider, 400, "%s", errmsg);
    else if (t->model == NULL || t->model_len == 0)
        kp_mock__errorf(a, t->provider, 400, "model: a non-empty string is required.");
    else
        return false;
    return true;
}

static void gen_init(struct kp_mock *m, unsigned shard, const struct target *t,
                     struct kp_mock_gen *g)
{
    memset(g, 0, sizeof(*g));
    g->provider = t->provider;
    g->model = t->model;
    g->model_len = t->model_len;
    g->created = kp_mock__now(m);
    kp_mock_next_id(m, shard, g->id, sizeof(g->id));
}

/* A chat completion read in place, without jansson: the common case of the
 * route benchmarks hammer. False, with nothing done, when the body is not one
 * kp_mock__raw_check() vouches for or its model would need unescaping. */
static bool answer_chat_raw(struct kp_mock *m, unsigned shard, const struct kp_http_request *req,
                            struct target *t, struct kp_mock_answer *a)
{
    struct kp_mock_raw body, model;
    struct kp_mock_gen g;
    const char *name;
    size_t len;

    if (!kp_mock__raw_check(req->body, req->body_len, &body))
        return false;
    if (kp_mock__raw_member(&body, "model", &model) &&
        kp_mock__raw_is(&model, KP_MOCK_RAW_STRING)) {
        if (!kp_mock__raw_plain(&model, &name, &len))
            return false;
        t->model = name;
        t->model_len = len;
    }
    if (!answer_early(t, true, NULL, a)) {
        gen_init(m, shard, t, &g);
        kp_mock__openai_chat_raw(&g, &body, a);
        a->tokens_in = g.prompt_tokens;
        a->tokens_out = g.completion_tokens;
    }
    return true;
}

/* Body, injected status, validation and the shape itself. */
static void answer_call(struct kp_mock *m, unsigned shard, const struct kp_http_request *req,
                        struct target *t, struct kp_mock_answer *a)
{
    struct kp_mock_gen g;
    char errmsg[320] = "";
    json_t *body;

    if (t->route == KP_MOCK_R_MODELS || t->route == KP_MOCK_R_GEMINI_MODELS) {
        if (a->faults.status != 0)
            kp_mock__fault_error(a, t->provider, &a->faults, NULL, 0);
        else if (t->route == KP_MOCK_R_GEMINI_MODELS)
            kp_mock__gemini_models(a);
        else
            kp_mock__openai_models(req->path, a);
        return;
    }
    if (t->route == KP_MOCK_R_CHAT && answer_chat_raw(m, shard, req, t, a))
        return;
    body = parse_body(req, errmsg, sizeof(errmsg));
    body_model(body, t);
    if (!answer_early(t, body != NULL, errmsg, a)) {
        gen_init(m, shard, t, &g);
        dispatch(&g, req, t, body, a);
        a->tokens_in = g.prompt_tokens;
        a->tokens_out = g.completion_tokens;
    }
    json_decref(body);
}

/* GET /v1/user/balance in DeepSeek's shape: the balance set for the key
 * with POST /mock/balance, else 404. */
static void answer_balance(struct kp_mock *m, const char *key, size_t key_len,
                           struct kp_mock_answer *a)
{
    char usd[32];
    if (!kp_mock_balance_get(m, key, key_len, usd)) {
        kp_mock__errorf(a, KP_MOCK_OPENAI, 404,
                        "No balance is set for this key (POST /mock/balance).");
        return;
    }
    kp_mock__begin(a, 200, "application/json");
    kp_mock__putf(a,
                  "{\"is_available\":true,\"balance_infos\":[{\"currency\":\"USD\","
                  "\"total_balance\":\"%s\",\"granted_balance\":\"0.00\","
                  "\"topped_up_balance\":\"%s\"}]}",
                  usd, usd);
}

static void provider_request(struct kp_mock *m, unsigned shard, const struct kp_http_request *req,
                             struct kp_mock_answer *a)
{
    struct kp_mock_faults scripted;
    struct target t;
    const char *key, *spec;
    size_t key_len = 0;
    char errmsg[320];

    match_target(req->path, &t);
    a->route = t.route;
    a->counted = true;
    key = find_key(req, &t, &key_len);
    kp_mock_stats_request(m, shard, t.route, key, key_len);
    spec = kp_http_request_header(req, "traceparent");
    if (spec != NULL)
        kp_mock_stats_traceparent(m, shard, spec);
    spec = kp_http_request_header(req, "x-mock-fault");
    if (spec != NULL && spec[strspn(spec, " \t")] != '\0' &&
        kp_mock_faults_parse(&a->faults, spec, strlen(spec), errmsg, sizeof(errmsg)) != 0) {
        kp_mock_faults_init(&a->faults);
        kp_mock__errorf(a, t.provider, 400, "X-Mock-Fault: %s", errmsg);
        return;
    }
    if (early_checks(req, &t, key, a))
        return;
    if (kp_mock_script_take(m, key, key_len, t.route, &scripted)) {
        /* The request's own header wins over the key's script. */
        kp_mock_faults_merge(&scripted, &a->faults);
        a->faults = scripted;
    }
    if (t.route == KP_MOCK_R_BALANCE && a->faults.status == 0) {
        answer_balance(m, key, key_len, a);
        return;
    }
    answer_call(m, shard, req, &t, a);
}

static void out_of_memory(struct kp_mock_answer *a)
{
    static const char body[] = "{\"error\":{\"message\":\"keyplane-mock is out of memory\","
                               "\"type\":\"server_error\",\"param\":null,\"code\":null}}";

    kp_mock__begin(a, 503, "application/json");
    kp_mock_faults_init(&a->faults);
    a->failed = false;
    a->retry_after[0] = '\0';
    a->retry_after_ms[0] = '\0';
    a->allow = NULL;
    kp_mock__putn(a, body, sizeof(body) - 1);
}

void kp_mock_handle(struct kp_mock *m, unsigned shard, const struct kp_http_request *req,
                    struct kp_mock_answer *a)
{
    kp_mock_answer_clear(a);
    if (strncmp(req->path, "/mock/", 6) == 0 || strcmp(req->path, "/healthz") == 0) {
        a->route = KP_MOCK_R_CONTROL;
        kp_mock__control(m, req, a);
    } else {
        provider_request(m, shard, req, a);
    }
    if (a->failed)
        out_of_memory(a);
    else
        kp_mock__apply_body_faults(a);
}

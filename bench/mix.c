/* The requests keyplane-bench sends, built once as the exact bytes that go
 * on the wire, and the weighted order in which a thread sends them.
 *
 * With --body the one request is FILE's bytes POSTed to --url. Otherwise the
 * built-in kinds of --mix (chat_small=1 when no --mix is given) go to paths
 * under the URL's API prefix: for --url http://h:p/v1/chat/completions,
 * http://h:p/v1 or http://h:p, chat kinds go to /v1/chat/completions and
 * embeddings to /v1/embeddings. The bodies are OpenAI-shaped and fixed, so
 * two runs send the same bytes. A GET without --body or --mix sends no body
 * (GET /v1/models). */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "bench.h"
#include "core/core.h"

#define LARGE_TURNS      6
#define LARGE_TURN_BYTES 2600

static const char *const kind_name[] = {
#define KP_BENCH_KIND_NAME(kind, name, path, stream) name,
    KP_BENCH_KIND_MAP(KP_BENCH_KIND_NAME)
#undef KP_BENCH_KIND_NAME
};
static const char *const kind_path[] = {
#define KP_BENCH_KIND_PATH(kind, name, path, stream) path,
    KP_BENCH_KIND_MAP(KP_BENCH_KIND_PATH)
#undef KP_BENCH_KIND_PATH
};
static const bool kind_stream[] = {
#define KP_BENCH_KIND_STREAM(kind, name, path, stream) stream,
    KP_BENCH_KIND_MAP(KP_BENCH_KIND_STREAM)
#undef KP_BENCH_KIND_STREAM
};

/* Prose of a given length, the same every time: a deterministic walk over a
 * small vocabulary (a prompt's length matters to a gateway, not its sense). */
static json_t *prose(size_t bytes, unsigned seed)
{
    static const char *const words[] = {
        "the",     "gateway", "routes", "each",    "request", "to",      "a",
        "healthy", "key",     "in",     "its",     "pool",    "and",     "meters",
        "tokens",  "budget",  "tenant", "project", "latency", "stream",  "model",
        "answer",  "quickly", "under",  "load",    "while",   "keeping", "spend",
        "within",  "limits",  "for",    "every",   "team",    "using",   "it",
    };
    const unsigned n = sizeof(words) / sizeof(words[0]);
    struct kp_buf b;
    kp_buf_init(&b);
    uint32_t x = seed * 2654435761u + 1;
    while (b.len < bytes) {
        x = x * 1664525u + 1013904223u;
        const char *w = words[(x >> 16) % n];
        if (kp_buf_append(&b, w, strlen(w)) != 0 || kp_buf_append(&b, " ", 1) != 0)
            goto err;
    }
    json_t *s = json_stringn(b.data, b.len);
    kp_buf_free(&b);
    return s;
err:
    kp_buf_free(&b);
    return NULL;
}

static json_t *message(const char *role, json_t *content)
{
    return json_pack("{s:s, s:o}", "role", role, "content", content);
}

static json_t *chat_messages(bool large)
{
    if (!large)
        return json_pack("[o]", message("user", json_string("Write one short sentence about "
                                                            "load testing a gateway.")));
    json_t *msgs = json_array();
    json_array_append_new(msgs, message("system", prose(1024, 1)));
    for (unsigned i = 0; i < LARGE_TURNS; i++)
        json_array_append_new(
            msgs, message(i % 2 ? "assistant" : "user", prose(LARGE_TURN_BYTES, i + 2)));
    return msgs;
}

static json_t *kind_body(const struct kp_bench_config *cfg, int kind)
{
    if (kind == KP_BENCH_EMBEDDINGS) {
        json_t *in = json_array();
        for (unsigned i = 0; i < 8; i++)
            json_array_append_new(in, prose(120, 100 + i));
        return json_pack("{s:s, s:o}", "model", cfg->embedding_model, "input", in);
    }
    bool large = kind == KP_BENCH_CHAT_LARGE || kind == KP_BENCH_CHAT_LARGE_STREAM;
    json_t *body = json_pack("{s:s, s:o, s:i}", "model", cfg->model, "messages",
                             chat_messages(large), "max_tokens", large ? 256 : 32);
    if (body && kind_stream[kind])
        json_object_set_new(body, "stream", json_true());
    return body;
}

static bool has_header(const struct kp_bench_config *cfg, const char *name)
{
    size_t n = strlen(name);
    for (unsigned i = 0; i < cfg->n_headers; i++)
        if (strncasecmp(cfg->headers[i], name, n) == 0 && cfg->headers[i][n] == ':')
            return true;
    return false;
}

/* The head and body of one request, as one buffer. */
static int build_one(const struct kp_bench_config *cfg, struct kp_bench_request *r,
                     const char *path, const char *body, size_t body_len, bool has_body)
{
    struct kp_buf b;
    kp_buf_init(&b);
    int rv = kp_buf_appendf(&b, "%s %s HTTP/1.1\r\n", cfg->method, path);
    if (!has_header(cfg, "Host"))
        rv |= kp_buf_appendf(&b, "Host: %s\r\n", cfg->url.hostport);
    if (!has_header(cfg, "User-Agent"))
        rv |= kp_buf_appendf(&b, "User-Agent: keyplane-bench/%s\r\n", kp_version());
    if (cfg->token)
        rv |= kp_buf_appendf(&b, "Authorization: Bearer %s\r\n", cfg->token);
    for (unsigned i = 0; i < cfg->n_headers; i++)
        rv |= kp_buf_appendf(&b, "%s\r\n", cfg->headers[i]);
    if (has_body) {
        if (!has_header(cfg, "Content-Type"))
            rv |= kp_buf_appendf(&b, "Content-Type: application/json\r\n");
        rv |= kp_buf_appendf(&b, "Content-Length: %zu\r\n", body_len);
    }
    rv |= kp_buf_append(&b, "\r\n", 2);
    if (has_body && body_len)
        rv |= kp_buf_append(&b, body, body_len);
    if (rv != 0) {
        kp_buf_free(&b);
        return KP_ENOMEM;
    }
    r->bytes = b.data;
    r->len = b.len;
    return KP_OK;
}

/* The URL's path without a trailing endpoint: "/v1/chat/completions" ->
 * "/v1"; "" and "/" -> "/v1". The query, if any, goes to @query. */
static void api_prefix(const char *target, char *prefix, size_t plen, const char **query)
{
    static const char *const endpoints[] = {"/chat/completions", "/embeddings"};
    size_t n = strcspn(target, "?");
    *query = target + n;
    for (unsigned i = 0; i < 2; i++) {
        size_t e = strlen(endpoints[i]);
        if (n >= e && strncmp(target + n - e, endpoints[i], e) == 0) {
            n -= e;
            break;
        }
    }
    while (n > 0 && target[n - 1] == '/')
        n--;
    if (n == 0)
        snprintf(prefix, plen, "/v1");
    else
        snprintf(prefix, plen, "%.*s", (int)n, target);
}

static int build_mix(struct kp_bench_config *cfg)
{
    char prefix[2048], path[4096];
    const char *query;
    api_prefix(cfg->url.path, prefix, sizeof(prefix), &query);
    for (int k = 0; k < KP_BENCH_N_KINDS; k++) {
        if (cfg->weights[k] == 0)
            continue;
        json_t *body = kind_body(cfg, k);
        size_t len;
        char *text = body ? kp_json_dumps(body, &len) : NULL;
        json_decref(body);
        if (text == NULL)
            return KP_ENOMEM;
        snprintf(path, sizeof(path), "%s%s%s", prefix, kind_path[k], query);
        struct kp_bench_request *r = &cfg->reqs[cfg->n_reqs];
        int rv = build_one(cfg, r, path, text, len, true);
        kp_free(text);
        if (rv != KP_OK)
            return rv;
        r->name = kind_name[k];
        r->weight = cfg->weights[k];
        cfg->n_reqs++;
    }
    return KP_OK;
}

int kp_bench_requests_build(struct kp_bench_config *cfg, char *errmsg, size_t errlen)
{
    int rv;
    bool post = strcmp(cfg->method, "POST") == 0;
    if (cfg->body || (!cfg->mix_set && !post)) {
        struct kp_bench_request *r = &cfg->reqs[0];
        rv = build_one(cfg, r, cfg->url.path, cfg->body, cfg->body_len, cfg->body != NULL);
        if (rv == KP_OK) {
            r->name = cfg->body ? "body" : "request";
            r->weight = 1;
            cfg->n_reqs = 1;
        }
    } else {
        if (!cfg->mix_set)
            cfg->weights[KP_BENCH_CHAT_SMALL] = 1;
        rv = build_mix(cfg);
    }
    if (rv != KP_OK)
        snprintf(errmsg, errlen, "building the requests: %s", kp_err_msg(rv));
    return rv;
}

void kp_bench_picker_init(struct kp_bench_picker *p, const struct kp_bench_request *reqs,
                          unsigned n)
{
    memset(p, 0, sizeof(*p));
    p->reqs = reqs;
    p->n = n;
}

/* nginx's smooth weighted round robin: each pick raises every entry by its
 * weight and lowers the chosen one by the total. Weights 5,1,1 give
 * a a b a c a a, not a a a a a b c. */
unsigned kp_bench_picker_next(struct kp_bench_picker *p)
{
    if (p->n <= 1)
        return 0;
    long total = 0;
    unsigned best = 0;
    for (unsigned i = 0; i < p->n; i++) {
        p->current[i] += p->reqs[i].weight;
        total += p->reqs[i].weight;
        if (p->current[i] > p->current[best])
            best = i;
    }
    p->current[best] -= total;
    return best;
}

/* What an attempt sends and how its answer comes back, by the pair (the
 * endpoint the app called, the provider's kind):
 *
 *   OpenAI endpoints   -> openai, azure-openai, openai-compatible: as is
 *   chat completions   -> anthropic: Messages (adapter_anthropic.c)
 *   chat completions   -> gemini: generateContent (adapter_gemini.c)
 *   /anthropic/v1/messages -> anthropic: as is
 *   /anthropic/v1/messages -> OpenAI-shaped: chat completions, translated
 *
 * This file prepares the upstream request (URL, auth header, body) and
 * turns a whole answer or each stream event back into the app's shape;
 * attempt.c runs the transfer. */
#include <stdio.h>
#include <string.h>

#include "router_internal.h"

enum { DEFAULT_ANTHROPIC_MAX_TOKENS = 4096 };
static const char anthropic_version[] = "2023-06-01";

int kp_router__shape_of(enum kp_endpoint ep, int provider_kind)
{
    bool openai = provider_kind == KP_PROVIDER_OPENAI ||
                  provider_kind == KP_PROVIDER_OPENAI_COMPATIBLE ||
                  provider_kind == KP_PROVIDER_AZURE_OPENAI;
    if (ep == KP_EP_MESSAGES)
        return provider_kind == KP_PROVIDER_ANTHROPIC ? KP_SHAPE_MESSAGES
               : openai                               ? KP_SHAPE_MESSAGES_VIA_CHAT
                                                      : -1;
    if (openai)
        return KP_SHAPE_OPENAI;
    if (ep != KP_EP_CHAT)
        return -1;
    return provider_kind == KP_PROVIDER_ANTHROPIC ? KP_SHAPE_CHAT_VIA_ANTHROPIC
           : provider_kind == KP_PROVIDER_GEMINI  ? KP_SHAPE_CHAT_VIA_GEMINI
                                                  : -1;
}

/* A model name that goes into a URL path (Gemini, Azure deployments) must
 * stay one segment: no '/', '?', '#', '%' or dot segments. */
static bool path_safe(const char *model)
{
    return model[strspn(model, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                               "0123456789._-")] == '\0' &&
           strcmp(model, ".") != 0 && strcmp(model, "..") != 0;
}

static int set_body(struct kp_call *c, json_t *body)
{
    size_t len;
    char *text = body ? kp_json_dumps(body, &len) : NULL;
    json_decref(body);
    if (text == NULL)
        return KP_ENOMEM;
    kp_buf_consume(&c->upstream_body, c->upstream_body.len);
    int rc = kp_buf_append(&c->upstream_body, text, len) == 0 ? KP_OK : KP_ENOMEM;
    kp_free(text);
    return rc;
}

/* The body the provider gets; KP_EINVAL answers nothing but fills
 * errmsg/param for a 400 (the app's request cannot be expressed there). */
static int translate_request(struct kp_call *c, char *errmsg, size_t errlen, char *param,
                             size_t paramlen)
{
    json_t *out = NULL;
    int rc = KP_OK;
    if (c->shape == KP_SHAPE_OPENAI || c->shape == KP_SHAPE_MESSAGES)
        return KP_OK; /* the app's bytes, or c->upstream_body already */
    json_t *body = kp_router__body(c);
    if (body == NULL)
        return KP_ENOMEM;
    switch (c->shape) {
    case KP_SHAPE_CHAT_VIA_ANTHROPIC:
        rc = kp_anthropic_request_from_chat(body, c->model, DEFAULT_ANTHROPIC_MAX_TOKENS, &out,
                                            errmsg, errlen, param, paramlen);
        break;
    case KP_SHAPE_CHAT_VIA_GEMINI:
        rc = kp_gemini_request_from_chat(body, &out, errmsg, errlen, param, paramlen);
        break;
    case KP_SHAPE_MESSAGES_VIA_CHAT:
        rc = kp_chat_request_from_anthropic(body, c->model, &out, errmsg, errlen, param, paramlen);
        break;
    default:
        return KP_OK; /* the app's bytes, or c->upstream_body already */
    }
    if (rc != KP_OK)
        return rc;
    return set_body(c, out);
}

int kp_router__prepare(struct kp_call *c, const struct kp_candidate *k, const char *secret,
                       size_t secret_len, struct kp_prep *prep, char *errmsg, size_t errlen,
                       char *param, size_t paramlen)
{
    const struct kp_provider *p = k->provider;
    c->shape = kp_router__shape_of(c->ep, p->kind);
    int rc = translate_request(c, errmsg, errlen, param, paramlen);
    if (rc != KP_OK)
        return rc;
    const char *base = p->base_url;
    size_t blen = strlen(base);
    while (blen > 0 && base[blen - 1] == '/')
        blen--;
    if (secret_len + 8 > sizeof(prep->auth)) {
        snprintf(errmsg, errlen, "key %s: secret too long for a header", k->key->e.id);
        return KP_ETOOBIG;
    }
    unsigned nh = 0;
    int n;
    /* Messages translated to chat go to the chat endpoint. */
    const char *suffix =
        c->shape == KP_SHAPE_MESSAGES_VIA_CHAT ? "/chat/completions" : kp_router__suffix(c->ep);
    const char *auth_name = "Authorization";
    size_t pre = 0;
    switch (c->shape) {
    case KP_SHAPE_CHAT_VIA_ANTHROPIC:
    case KP_SHAPE_MESSAGES:
        n = snprintf(prep->url, sizeof(prep->url), "%.*s/messages", (int)blen, base);
        auth_name = "x-api-key";
        break;
    case KP_SHAPE_CHAT_VIA_GEMINI:
        if (!path_safe(c->model)) {
            snprintf(errmsg, errlen,
                     "model: a Gemini model name is letters, digits, '.', '_', '-'");
            snprintf(param, paramlen, "model");
            return KP_EINVAL;
        }
        n = snprintf(prep->url, sizeof(prep->url), "%.*s/models/%s:%s", (int)blen, base, c->model,
                     c->stream ? "streamGenerateContent?alt=sse" : "generateContent");
        auth_name = "x-goog-api-key";
        break;
    case KP_SHAPE_MESSAGES_VIA_CHAT:
    default:
        if (p->kind == KP_PROVIDER_AZURE_OPENAI) {
            /* The model is the deployment name, a path segment. */
            if (!path_safe(c->model)) {
                snprintf(errmsg, errlen,
                         "model: an Azure deployment name is letters, digits, '.', '_', '-'");
                snprintf(param, paramlen, "model");
                return KP_EINVAL;
            }
            n = snprintf(prep->url, sizeof(prep->url),
                         "%.*s/openai/deployments/%s%s?api-version=%s", (int)blen, base, c->model,
                         suffix, p->api_version);
            auth_name = "api-key";
        } else {
            /* The common case, every call: joined without printf. */
            size_t slen = strlen(suffix);
            n = (int)(blen + slen);
            if (blen + slen < sizeof(prep->url)) {
                memcpy(prep->url, base, blen);
                memcpy(prep->url + blen, suffix, slen + 1);
            }
            pre = 7;
        }
        break;
    }
    if (n < 0 || (size_t)n >= sizeof(prep->url)) {
        snprintf(errmsg, errlen, "provider %s: URL too long", p->e.id);
        return KP_ETOOBIG;
    }
    memcpy(prep->auth, "Bearer ", pre);
    memcpy(prep->auth + pre, secret, secret_len);
    prep->auth[pre + secret_len] = '\0';
    prep->auth_len = pre + secret_len + 1;
    prep->headers[nh].name = auth_name;
    prep->headers[nh].name_len = strlen(auth_name);
    prep->headers[nh].value = prep->auth;
    prep->headers[nh].value_len = pre + secret_len;
    nh++;
    if (c->shape == KP_SHAPE_MESSAGES || c->shape == KP_SHAPE_CHAT_VIA_ANTHROPIC) {
        const char *v = kp_http_request_header(c->req, "anthropic-version");
        prep->headers[nh++] = KP_HTTP_HEADER("anthropic-version", v ? v : anthropic_version);
        /* anthropic-beta is not passed on: betas an app could switch on are
         * billed to the operator's key (a provider's extra headers can set
         * it). */
    }
    prep->headers[nh++] = KP_HTTP_HEADER("Content-Type", "application/json");
    prep->headers[nh++] =
        KP_HTTP_HEADER("Accept", c->stream ? "text/event-stream" : "application/json");
    /* The attempt's own span is the provider's parent (trace.c). */
    nh += kp_trace__upstream_headers(c, prep->headers + nh);
    for (uint32_t i = 0; i < p->headers.n && nh < sizeof(prep->headers) / sizeof(prep->headers[0]);
         i++)
        prep->headers[nh++] = KP_HTTP_HEADER(p->headers.v[i].key, p->headers.v[i].value);
    prep->n = nh;
    return KP_OK;
}

/* --- answers ------------------------------------------------------------------- */

static void ident_of(struct kp_call *c, struct kp_chat_ident *id, char *buf, size_t len)
{
    snprintf(buf, len, "chatcmpl-%s", c->rid);
    id->id = buf;
    id->created = c->start_ms / 1000;
    id->model = c->model;
}

/* Anthropic's usage: input excludes cache reads and writes. */
static void anthropic_usage(struct kp_usage_counts *u, const json_t *usage)
{
    if (!json_is_object(usage))
        return;
    json_int_t in = json_integer_value(json_object_get(usage, "input_tokens"));
    json_int_t cr = json_integer_value(json_object_get(usage, "cache_read_input_tokens"));
    json_int_t cw = json_integer_value(json_object_get(usage, "cache_creation_input_tokens"));
    json_t *out = json_object_get(usage, "output_tokens");
    if (json_object_get(usage, "input_tokens") != NULL) {
        u->input = (uint64_t)(in + cr + cw);
        u->cached = (uint64_t)cr;
    }
    if (json_is_integer(out))
        u->output = (uint64_t)json_integer_value(out);
    u->present = true;
}

int kp_router__translate_answer(struct kp_call *c, json_t *doc, json_t **out)
{
    char idbuf[200], err[256];
    struct kp_chat_ident ident;
    ident_of(c, &ident, idbuf, sizeof(idbuf));
    switch (c->shape) {
    case KP_SHAPE_CHAT_VIA_ANTHROPIC:
        return kp_anthropic_response_to_chat(doc, &ident, out, &c->usage, err, sizeof(err));
    case KP_SHAPE_CHAT_VIA_GEMINI:
        return kp_gemini_response_to_chat(doc, &ident, out, &c->usage, err, sizeof(err));
    case KP_SHAPE_MESSAGES_VIA_CHAT: {
        char msg_id[200];
        snprintf(msg_id, sizeof(msg_id), "msg_%s", c->rid);
        return kp_chat_response_to_anthropic(doc, msg_id, c->model, out, &c->usage, err,
                                             sizeof(err));
    }
    case KP_SHAPE_MESSAGES:
        anthropic_usage(&c->usage, json_object_get(doc, "usage"));
        *out = NULL;
        return KP_OK;
    default:
        *out = NULL;
        return KP_OK;
    }
}

/* --- streams -------------------------------------------------------------------- */

static int emit(void *arg, const char *event, json_t *item)
{
    struct kp_call *c = arg;
    size_t len;
    char *text = kp_json_dumps(item, &len);
    if (text == NULL)
        return KP_ENOMEM;
    int rc = kp_router__write_event(c, event, event ? strlen(event) : 0, text, len);
    kp_free(text);
    return rc;
}

int kp_router__stream_begin(struct kp_call *c)
{
    char idbuf[200];
    struct kp_chat_ident ident;
    ident_of(c, &ident, idbuf, sizeof(idbuf));
    switch (c->shape) {
    case KP_SHAPE_CHAT_VIA_ANTHROPIC:
        c->anthropic = kp_anthropic_stream_new(&ident, c->client_wants_usage);
        return c->anthropic ? KP_OK : KP_ENOMEM;
    case KP_SHAPE_CHAT_VIA_GEMINI:
        c->gemini = kp_gemini_stream_new(&ident, c->client_wants_usage);
        return c->gemini ? KP_OK : KP_ENOMEM;
    case KP_SHAPE_MESSAGES_VIA_CHAT: {
        char msg_id[200];
        snprintf(msg_id, sizeof(msg_id), "msg_%s", c->rid);
        c->messages = kp_messages_stream_new(msg_id, c->model);
        return c->messages ? KP_OK : KP_ENOMEM;
    }
    default:
        return KP_OK;
    }
}

void kp_router__stream_free(struct kp_call *c)
{
    kp_anthropic_stream_free(c->anthropic);
    kp_gemini_stream_free(c->gemini);
    kp_messages_stream_free(c->messages);
    c->anthropic = NULL;
    c->gemini = NULL;
    c->messages = NULL;
}

const char *kp_router__served_model(const json_t *doc)
{
    const json_t *m = json_object_get(doc, "model");
    if (!json_is_string(m)) /* Anthropic's message_start */
        m = json_object_get(json_object_get(doc, "message"), "model");
    if (!json_is_string(m)) /* Gemini */
        m = json_object_get(doc, "modelVersion");
    return json_string_value(m);
}

/* One upstream event of a translated (or Anthropic-native) stream. */
int kp_router__stream_event(struct kp_call *c, const struct kp_sse_event *e, char *errmsg,
                            size_t errlen)
{
    bool done = e->data_len == 6 && memcmp(e->data, "[DONE]", 6) == 0;
    json_t *data = done ? NULL : json_loadb(e->data, e->data_len, 0, NULL);
    int rc = KP_OK;
    char event[64];
    snprintf(event, sizeof(event), "%.*s", (int)(e->event_len < 63 ? e->event_len : 63), e->event);
    if (!done && data == NULL) {
        snprintf(errmsg, errlen, "the provider sent an event that is not JSON");
        return KP_EPARSE;
    }
    const char *served = c->ev.model_served[0] == '\0' ? kp_router__served_model(data) : NULL;
    if (served != NULL)
        kp_usage_set_str(c->ev.model_served, served);
    switch (c->shape) {
    case KP_SHAPE_CHAT_VIA_ANTHROPIC:
        if (data != NULL)
            rc = kp_anthropic_stream_event(c->anthropic, event, data, emit, c, errmsg, errlen);
        if (rc == KP_OK)
            kp_anthropic_stream_usage(c->anthropic, &c->usage);
        break;
    case KP_SHAPE_CHAT_VIA_GEMINI:
        if (data != NULL)
            rc = kp_gemini_stream_event(c->gemini, data, emit, c, errmsg, errlen);
        if (rc == KP_OK)
            kp_gemini_stream_usage(c->gemini, &c->usage);
        break;
    case KP_SHAPE_MESSAGES_VIA_CHAT:
        c->upstream_done |= done;
        rc = kp_messages_stream_chunk(c->messages, data, emit, c, errmsg, errlen);
        if (rc == KP_OK)
            kp_messages_stream_usage(c->messages, &c->usage);
        break;
    case KP_SHAPE_MESSAGES:
        if (strcmp(event, "message_start") == 0)
            anthropic_usage(&c->usage, json_object_get(json_object_get(data, "message"), "usage"));
        else if (strcmp(event, "message_delta") == 0)
            anthropic_usage(&c->usage, json_object_get(data, "usage"));
        rc = kp_router__write_event(c, e->event, e->event_len, e->data, e->data_len);
        break;
    default:
        break;
    }
    json_decref(data);
    return rc;
}

/* The upstream stream ended cleanly: what the app's shape still needs. */
int kp_router__stream_end(struct kp_call *c)
{
    switch (c->shape) {
    case KP_SHAPE_CHAT_VIA_ANTHROPIC:
        if (!kp_anthropic_stream_done(c->anthropic))
            return KP_EPARSE; /* closed before message_stop: a cut stream */
        return kp_router__write_event(c, NULL, 0, "[DONE]", 6);
    case KP_SHAPE_MESSAGES_VIA_CHAT: {
        /* A provider that closes without [DONE]: finish the event sequence
         * (a no-op when [DONE] came). */
        if (c->upstream_done)
            return KP_OK;
        char why[128];
        int rc = kp_messages_stream_chunk(c->messages, NULL, emit, c, why, sizeof(why));
        kp_messages_stream_usage(c->messages, &c->usage);
        return rc;
    }
    case KP_SHAPE_CHAT_VIA_GEMINI: {
        int rc = kp_gemini_stream_end(c->gemini, emit, c);
        kp_gemini_stream_usage(c->gemini, &c->usage);
        return rc == KP_OK ? kp_router__write_event(c, NULL, 0, "[DONE]", 6) : rc;
    }
    default:
        return KP_OK;
    }
}

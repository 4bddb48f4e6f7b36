/* OpenAI shapes: chat completions, legacy completions, responses and models
 * (embeddings are in embeddings.c).
 *
 * Streams are written whole into the answer, one event per SSE message, and
 * sent by the transport one event at a time. Chat and completions streams end
 * with "data: [DONE]"; with stream_options.include_usage one extra chunk with
 * "choices": [] and the usage comes just before it, and every earlier chunk
 * carries "usage": null, as the real API does. Validation errors are 400s in
 * OpenAI's error shape, with the messages the real API uses where that helps
 * a reader of a failing test. */
#include <string.h>

#include "internal.h"

#define SSE_SEP "\n\n"

static void put_model(struct kp_mock_answer *a, const struct kp_mock_gen *g)
{
    kp_mock__put_str(a, g->model, g->model_len);
}

static void put_chat_usage(struct kp_mock_answer *a, const struct kp_mock_gen *g)
{
    kp_mock__put_lit(a, "{\"prompt_tokens\":");
    kp_mock__put_u(a, g->prompt_tokens);
    kp_mock__put_lit(a, ",\"completion_tokens\":");
    kp_mock__put_u(a, g->completion_tokens);
    kp_mock__put_lit(a, ",\"total_tokens\":");
    kp_mock__put_u(a, g->prompt_tokens + g->completion_tokens);
    kp_mock__put_lit(a, ",\"prompt_tokens_details\":{\"cached_tokens\":0},"
                        "\"completion_tokens_details\":{\"reasoning_tokens\":0}}");
}

static const char *finish_reason(const struct kp_mock_gen *g)
{
    return g->truncated ? "\"length\"" : "\"stop\"";
}

/* stream_options only with stream, as the real API insists. */
static bool stream_options(struct kp_mock_gen *g, const json_t *body, bool stream,
                           struct kp_mock_answer *a)
{
    const json_t *opts = json_object_get(body, "stream_options");

    g->include_usage = false;
    if (opts == NULL || json_is_null(opts))
        return true;
    if (!stream) {
        kp_mock__errorf(a, KP_MOCK_OPENAI, 400,
                        "The 'stream_options' parameter is only allowed when 'stream' is enabled.");
        return false;
    }
    g->include_usage = json_is_true(json_object_get(opts, "include_usage"));
    return true;
}

/* --- chat completions ---------------------------------------------------- */

/* What a chat completion asks for, read from a jansson tree or in place;
 * chat_answer() validates it in the order the real API does. */
struct chat_request {
    bool stream;
    bool has_messages; /* a non-empty array */
    unsigned prompt_tokens;
    const char *bad_cap; /* the cap field present but not an integer >= 1 */
    bool capped;
    long long cap;
    bool has_stream_options; /* present and not null */
    bool include_usage;
};

/* max_completion_tokens wins over max_tokens; the first field present
 * decides. */
static const char *const cap_fields[] = {"max_completion_tokens", "max_tokens"};

static void chat_read(const json_t *body, bool stream, struct chat_request *r)
{
    const json_t *messages = json_object_get(body, "messages");
    const json_t *opts = json_object_get(body, "stream_options");

    memset(r, 0, sizeof(*r));
    r->stream = stream;
    r->has_messages = json_is_array(messages) && json_array_size(messages) > 0;
    r->prompt_tokens = kp_mock__messages_tokens(messages, "content", 0, 0);
    for (unsigned i = 0; i < 2 && !r->capped && r->bad_cap == NULL; i++) {
        if (kp_mock__max_tokens(body, cap_fields[i], 1, &r->capped, &r->cap) != 0)
            r->bad_cap = cap_fields[i];
    }
    r->has_stream_options = opts != NULL && !json_is_null(opts);
    r->include_usage = json_is_true(json_object_get(opts, "include_usage"));
}

/* The members chat_read_raw() reads, found in one pass. */
enum { CHAT_STREAM, CHAT_MESSAGES, CHAT_STREAM_OPTIONS, CHAT_CAP, CHAT_MEMBERS = CHAT_CAP + 2 };

static void chat_read_raw(const struct kp_mock_raw *body, struct chat_request *r)
{
    static const char *const names[CHAT_MEMBERS] = {
        [CHAT_STREAM] = "stream",
        [CHAT_MESSAGES] = "messages",
        [CHAT_STREAM_OPTIONS] = "stream_options",
        [CHAT_CAP] = "max_completion_tokens",
        [CHAT_CAP + 1] = "max_tokens",
    };
    struct kp_mock_raw f[CHAT_MEMBERS], v;
    const struct kp_mock_raw *messages = &f[CHAT_MESSAGES], *opts = &f[CHAT_STREAM_OPTIONS];

    kp_mock__raw_members(body, names, CHAT_MEMBERS, f);
    memset(r, 0, sizeof(*r));
    r->stream = f[CHAT_STREAM].p != NULL && kp_mock__raw_is(&f[CHAT_STREAM], KP_MOCK_RAW_TRUE);
    if (messages->p != NULL && kp_mock__raw_is(messages, KP_MOCK_RAW_ARRAY)) {
        r->has_messages = !kp_mock__raw_empty(messages);
        r->prompt_tokens = kp_mock__raw_messages_tokens(messages, "content");
    }
    for (unsigned i = 0; i < 2 && !r->capped && r->bad_cap == NULL; i++) {
        if (kp_mock__raw_max_tokens(&f[CHAT_CAP + i], 1, &r->capped, &r->cap) != 0)
            r->bad_cap = cap_fields[i];
    }
    r->has_stream_options = opts->p != NULL && !kp_mock__raw_is(opts, KP_MOCK_RAW_NULL);
    r->include_usage = opts->p != NULL && kp_mock__raw_member(opts, "include_usage", &v) &&
                       kp_mock__raw_is(&v, KP_MOCK_RAW_TRUE);
}

/* "id", "object", "created" and "model" of a chat answer or chunk. */
static void chat_head(const struct kp_mock_gen *g, const char *object, size_t object_len,
                      struct kp_mock_answer *a)
{
    kp_mock__put_lit(a, "{\"id\":\"chatcmpl-");
    kp_mock__put(a, g->id);
    kp_mock__put_lit(a, "\",\"object\":\"");
    kp_mock__putn(a, object, object_len);
    kp_mock__put_lit(a, "\",\"created\":");
    kp_mock__put_i(a, g->created);
    kp_mock__put_lit(a, ",\"model\":");
    put_model(a, g);
}

static void chat_whole(const struct kp_mock_gen *g, struct kp_mock_answer *a)
{
    static const char object[] = "chat.completion";
    const char *text;
    size_t len;

    kp_mock__reply_text(g->completion_tokens, &text, &len);
    kp_mock__begin(a, 200, "application/json");
    chat_head(g, object, sizeof(object) - 1, a);
    kp_mock__put_lit(a, ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
                        "\"content\":");
    kp_mock__put_quoted(a, text, len);
    kp_mock__put_lit(a, ",\"refusal\":null,\"annotations\":[]},\"logprobs\":null,"
                        "\"finish_reason\":");
    kp_mock__put(a, finish_reason(g));
    kp_mock__put_lit(a, "}],\"usage\":");
    put_chat_usage(a, g);
    kp_mock__put_lit(a, ",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_mock\"}");
}

/* Opens a chat.completion.chunk up to its choices array. */
static void chunk_head(const struct kp_mock_gen *g, struct kp_mock_answer *a)
{
    static const char object[] = "chat.completion.chunk";

    kp_mock__event_begin(a, NULL);
    chat_head(g, object, sizeof(object) - 1, a);
    kp_mock__put_lit(
        a, ",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_mock\",\"choices\":[");
}

static void chunk_tail(const struct kp_mock_gen *g, struct kp_mock_answer *a)
{
    kp_mock__put(a, g->include_usage ? "],\"usage\":null}" : "]}");
    kp_mock__event_end(a, SSE_SEP);
}

static void chat_stream(const struct kp_mock_gen *g, struct kp_mock_answer *a)
{
    const char *w;
    size_t wl;

    kp_mock__begin_stream(a, "text/event-stream; charset=utf-8");
    chunk_head(g, a);
    kp_mock__put_lit(
        a, "{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},"
           "\"logprobs\":null,\"finish_reason\":null}");
    chunk_tail(g, a);
    a->malformed_event = 1;
    for (unsigned i = 0; i < g->completion_tokens; i++) {
        kp_mock__reply_word(i, &w, &wl);
        chunk_head(g, a);
        kp_mock__put_lit(a, "{\"index\":0,\"delta\":{\"content\":");
        kp_mock__put_quoted(a, w, wl);
        kp_mock__put_lit(a, "},\"logprobs\":null,\"finish_reason\":null}");
        chunk_tail(g, a);
    }
    chunk_head(g, a);
    kp_mock__put_lit(a, "{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":");
    kp_mock__put(a, finish_reason(g));
    kp_mock__put_lit(a, "}");
    chunk_tail(g, a);
    if (g->include_usage) {
        chunk_head(g, a);
        kp_mock__put_lit(a, "],\"usage\":");
        put_chat_usage(a, g);
        kp_mock__put_lit(a, "}");
        kp_mock__event_end(a, SSE_SEP);
    }
    kp_mock__event_begin(a, NULL);
    kp_mock__put_lit(a, "[DONE]");
    kp_mock__event_end(a, SSE_SEP);
}

static void chat_answer(struct kp_mock_gen *g, const struct chat_request *r,
                        struct kp_mock_answer *a)
{
    if (!r->has_messages) {
        kp_mock__errorf(a, KP_MOCK_OPENAI, 400, "'messages' must be a non-empty array.");
        return;
    }
    if (r->bad_cap != NULL) {
        kp_mock__errorf(a, KP_MOCK_OPENAI, 400, "Invalid '%s': expected an integer of at least 1.",
                        r->bad_cap);
        return;
    }
    if (r->has_stream_options && !r->stream) {
        kp_mock__errorf(a, KP_MOCK_OPENAI, 400,
                        "The 'stream_options' parameter is only allowed when 'stream' is enabled.");
        return;
    }
    kp_mock__set_completion(g, r->capped, r->cap);
    g->include_usage = r->has_stream_options && r->include_usage;
    g->prompt_tokens = r->prompt_tokens;
    if (r->stream)
        chat_stream(g, a);
    else
        chat_whole(g, a);
}

void kp_mock__openai_chat(struct kp_mock_gen *g, const json_t *body, bool stream,
                          struct kp_mock_answer *a)
{
    struct chat_request r;

    chat_read(body, stream, &r);
    chat_answer(g, &r, a);
}

void kp_mock__openai_chat_raw(struct kp_mock_gen *g, const struct kp_mock_raw *body,
                              struct kp_mock_answer *a)
{
    struct chat_request r;

    chat_read_raw(body, &r);
    chat_answer(g, &r, a);
}

/* --- legacy completions -------------------------------------------------- */

static void completion_head(const struct kp_mock_gen *g, struct kp_mock_answer *a)
{
    kp_mock__putf(a, "{\"id\":\"cmpl-%s\",\"object\":\"text_completion\",\"created\":%lld,", g->id,
                  (long long)g->created);
    kp_mock__put(a, "\"model\":");
    put_model(a, g);
    kp_mock__put(a, ",\"choices\":[");
}

static void completion_choice(struct kp_mock_answer *a, const char *text, size_t len,
                              const char *finish)
{
    kp_mock__put(a, "{\"text\":");
    kp_mock__put_str(a, text, len);
    kp_mock__putf(a, ",\"index\":0,\"logprobs\":null,\"finish_reason\":%s}", finish);
}

static void completions_stream(const struct kp_mock_gen *g, struct kp_mock_answer *a)
{
    const char *w;
    size_t wl;

    kp_mock__begin_stream(a, "text/event-stream; charset=utf-8");
    a->malformed_event = 0;
    for (unsigned i = 0; i <= g->completion_tokens; i++) {
        bool last = i == g->completion_tokens;

        if (!last)
            kp_mock__reply_word(i, &w, &wl);
        kp_mock__event_begin(a, NULL);
        completion_head(g, a);
        completion_choice(a, last ? "" : w, last ? 0 : wl, last ? finish_reason(g) : "null");
        kp_mock__put(a, g->include_usage ? "],\"usage\":null}" : "]}");
        kp_mock__event_end(a, SSE_SEP);
    }
    if (g->include_usage) {
        kp_mock__event_begin(a, NULL);
        completion_head(g, a);
        kp_mock__put(a, "],\"usage\":");
        put_chat_usage(a, g);
        kp_mock__put(a, "}");
        kp_mock__event_end(a, SSE_SEP);
    }
    kp_mock__event_begin(a, NULL);
    kp_mock__put(a, "[DONE]");
    kp_mock__event_end(a, SSE_SEP);
}

void kp_mock__openai_completions(struct kp_mock_gen *g, const json_t *body, bool stream,
                                 struct kp_mock_answer *a)
{
    const json_t *prompt = json_object_get(body, "prompt");
    const char *text;
    size_t len;
    bool present;
    long long cap;

    if (!json_is_string(prompt) && !json_is_array(prompt)) {
        kp_mock__errorf(a, KP_MOCK_OPENAI, 400,
                        "'prompt' must be a string or an array of strings or tokens.");
        return;
    }
    if (kp_mock__max_tokens(body, "max_tokens", 1, &present, &cap) != 0) {
        kp_mock__errorf(a, KP_MOCK_OPENAI, 400,
                        "Invalid 'max_tokens': expected an integer of at least 1.");
        return;
    }
    if (!stream_options(g, body, stream, a))
        return;
    kp_mock__set_completion(g, present, cap);
    g->prompt_tokens = kp_mock__input_tokens(prompt);
    if (stream) {
        completions_stream(g, a);
        return;
    }
    kp_mock__reply_text(g->completion_tokens, &text, &len);
    kp_mock__begin(a, 200, "application/json");
    completion_head(g, a);
    completion_choice(a, text, len, finish_reason(g));
    kp_mock__put(a, "],\"usage\":");
    put_chat_usage(a, g);
    kp_mock__put(a, "}");
}

/* --- models -------------------------------------------------------------- */

static const char *const models[][2] = {
    {"gpt-4o-mini", "openai"},
    {"gpt-4o", "openai"},
    {"gpt-4.1-mini", "openai"},
    {"o4-mini", "openai"},
    {"text-embedding-3-small", "openai"},
    {"text-embedding-3-large", "openai"},
    {"claude-3-5-haiku-latest", "anthropic"},
    {"claude-sonnet-4-5", "anthropic"},
    {"gemini-1.5-flash", "google"},
    {"gemini-2.0-flash", "google"},
};

#define N_MODELS (sizeof(models) / sizeof(models[0]))

static void put_model_object(struct kp_mock_answer *a, unsigned i)
{
    kp_mock__putf(a,
                  "{\"id\":\"%s\",\"object\":\"model\",\"created\":1700000000,\"owned_by\":\"%s\"}",
                  models[i][0], models[i][1]);
}

void kp_mock__openai_models(const char *path, struct kp_mock_answer *a)
{
    static const char prefix[] = "/v1/models/";

    kp_mock__begin(a, 200, "application/json");
    if (strncmp(path, prefix, sizeof(prefix) - 1) == 0) {
        const char *id = path + sizeof(prefix) - 1;

        for (unsigned i = 0; i < N_MODELS; i++) {
            if (strcmp(id, models[i][0]) == 0) {
                put_model_object(a, i);
                return;
            }
        }
        kp_mock__error(a, KP_MOCK_OPENAI, 404, false,
                       "The model does not exist or you do not have access to it.");
        return;
    }
    kp_mock__put(a, "{\"object\":\"list\",\"data\":[");
    for (unsigned i = 0; i < N_MODELS; i++) {
        if (i > 0)
            kp_mock__put(a, ",");
        put_model_object(a, i);
    }
    kp_mock__put(a, "]}");
}

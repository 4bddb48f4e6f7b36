/* Anthropic Messages: POST /v1/messages, whole or streamed.
 *
 * A whole answer is a message with one text block, stop_reason end_turn (or
 * max_tokens when the cap cut the reply) and usage input/output tokens. The
 * stream is the real event sequence, each as "event: NAME\ndata: {json}":
 * message_start (input-token usage), content_block_start, ping, one
 * content_block_delta text_delta per word, content_block_stop, message_delta
 * (stop_reason and cumulative usage.output_tokens) and message_stop.
 * max_tokens is required, as it is by the real API. */
#include <string.h>

#include "internal.h"

#define SSE_SEP "\n\n"

static const char *stop_reason(const struct kp_mock_gen *g)
{
    return g->truncated ? "\"max_tokens\"" : "\"end_turn\"";
}

static void put_usage(struct kp_mock_answer *a, unsigned input, unsigned output)
{
    kp_mock__putf(a,
                  "{\"input_tokens\":%u,\"cache_creation_input_tokens\":0,"
                  "\"cache_read_input_tokens\":0,\"output_tokens\":%u}",
                  input, output);
}

/* The message object; @done selects the final state. */
static void put_message(struct kp_mock_answer *a, const struct kp_mock_gen *g, bool done)
{
    const char *text;
    size_t len;

    kp_mock__putf(
        a, "{\"id\":\"msg_%s\",\"type\":\"message\",\"role\":\"assistant\",\"model\":", g->id);
    kp_mock__put_str(a, g->model, g->model_len);
    kp_mock__put(a, ",\"content\":[");
    if (done) {
        kp_mock__reply_text(g->completion_tokens, &text, &len);
        kp_mock__put(a, "{\"type\":\"text\",\"text\":");
        kp_mock__put_str(a, text, len);
        kp_mock__put(a, "}");
    }
    kp_mock__putf(a, "],\"stop_reason\":%s,\"stop_sequence\":null,\"usage\":",
                  done ? stop_reason(g) : "null");
    put_usage(a, g->prompt_tokens, done ? g->completion_tokens : 1);
    kp_mock__put(a, "}");
}

static void event(struct kp_mock_answer *a, const char *name, const char *json)
{
    kp_mock__event_begin(a, name);
    kp_mock__put(a, json);
    kp_mock__event_end(a, SSE_SEP);
}

static void messages_stream(const struct kp_mock_gen *g, struct kp_mock_answer *a)
{
    const char *w;
    size_t wl;

    kp_mock__begin_stream(a, "text/event-stream; charset=utf-8");
    kp_mock__event_begin(a, "message_start");
    kp_mock__put(a, "{\"type\":\"message_start\",\"message\":");
    put_message(a, g, false);
    kp_mock__put(a, "}");
    kp_mock__event_end(a, SSE_SEP);
    event(a, "content_block_start",
          "{\"type\":\"content_block_start\",\"index\":0,\"content_block\":"
          "{\"type\":\"text\",\"text\":\"\"}}");
    event(a, "ping", "{\"type\":\"ping\"}");
    a->malformed_event = (int)a->n_events;
    for (unsigned i = 0; i < g->completion_tokens; i++) {
        kp_mock__reply_word(i, &w, &wl);
        kp_mock__event_begin(a, "content_block_delta");
        kp_mock__put(a, "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":"
                        "{\"type\":\"text_delta\",\"text\":");
        kp_mock__put_str(a, w, wl);
        kp_mock__put(a, "}}");
        kp_mock__event_end(a, SSE_SEP);
    }
    event(a, "content_block_stop", "{\"type\":\"content_block_stop\",\"index\":0}");
    kp_mock__event_begin(a, "message_delta");
    kp_mock__putf(a,
                  "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":%s,"
                  "\"stop_sequence\":null},\"usage\":{\"output_tokens\":%u}}",
                  stop_reason(g), g->completion_tokens);
    kp_mock__event_end(a, SSE_SEP);
    event(a, "message_stop", "{\"type\":\"message_stop\"}");
}

/* The system prompt: a string or text blocks. */
static size_t system_bytes(const json_t *system)
{
    return kp_mock__content_bytes(system);
}

void kp_mock__anthropic_messages(struct kp_mock_gen *g, const json_t *body, bool stream,
                                 struct kp_mock_answer *a)
{
    const json_t *messages = json_object_get(body, "messages");
    const json_t *system = json_object_get(body, "system");
    bool present;
    long long cap;

    if (json_object_get(body, "max_tokens") == NULL) {
        kp_mock__errorf(a, KP_MOCK_ANTHROPIC, 400, "max_tokens: Field required");
        return;
    }
    if (kp_mock__max_tokens(body, "max_tokens", 1, &present, &cap) != 0 || !present) {
        kp_mock__errorf(a, KP_MOCK_ANTHROPIC, 400, "max_tokens: Input should be at least 1");
        return;
    }
    if (!json_is_array(messages) || json_array_size(messages) == 0) {
        kp_mock__errorf(a, KP_MOCK_ANTHROPIC, 400,
                        "messages: Input should be a non-empty list of messages");
        return;
    }
    kp_mock__set_completion(g, true, cap);
    g->prompt_tokens = kp_mock__messages_tokens(messages, "content", system_bytes(system),
                                                system != NULL && !json_is_null(system) ? 1 : 0);
    if (stream) {
        messages_stream(g, a);
        return;
    }
    kp_mock__begin(a, 200, "application/json");
    put_message(a, g, true);
}

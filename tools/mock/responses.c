/* The OpenAI Responses API: POST /v1/responses, whole or streamed.
 *
 * The stream is the real sequence of typed events, each as
 * "event: TYPE\ndata: {"type":TYPE,"sequence_number":N,...}":
 * response.created, response.in_progress, response.output_item.added,
 * response.content_part.added, one response.output_text.delta per word,
 * response.output_text.done, response.content_part.done,
 * response.output_item.done and response.completed, which carries the usage.
 * Like the real API, max_output_tokens below 16 is refused, so a reply is
 * never cut short and the status is always "completed". */
#include <string.h>

#include "internal.h"

#define SSE_SEP           "\n\n"
#define MIN_OUTPUT_TOKENS 16

static void put_usage(struct kp_mock_answer *a, const struct kp_mock_gen *g)
{
    kp_mock__putf(a,
                  "{\"input_tokens\":%u,\"input_tokens_details\":{\"cached_tokens\":0},"
                  "\"output_tokens\":%u,\"output_tokens_details\":{\"reasoning_tokens\":0},"
                  "\"total_tokens\":%u}",
                  g->prompt_tokens, g->completion_tokens, g->prompt_tokens + g->completion_tokens);
}

static void put_text_part(struct kp_mock_answer *a, const struct kp_mock_gen *g, bool full)
{
    const char *text = "";
    size_t len = 0;

    if (full)
        kp_mock__reply_text(g->completion_tokens, &text, &len);
    kp_mock__put(a, "{\"type\":\"output_text\",\"text\":");
    kp_mock__put_str(a, text, len);
    kp_mock__put(a, ",\"annotations\":[]}");
}

static void put_message_item(struct kp_mock_answer *a, const struct kp_mock_gen *g, bool done)
{
    kp_mock__putf(a,
                  "{\"type\":\"message\",\"id\":\"msg_%s\",\"status\":\"%s\",\"role\":"
                  "\"assistant\",\"content\":[",
                  g->id, done ? "completed" : "in_progress");
    if (done)
        put_text_part(a, g, true);
    kp_mock__put(a, "]}");
}

/* The response object; @done selects the final state with output and usage. */
static void put_response(struct kp_mock_answer *a, const struct kp_mock_gen *g, bool done)
{
    kp_mock__putf(a,
                  "{\"id\":\"resp_%s\",\"object\":\"response\",\"created_at\":%lld,"
                  "\"status\":\"%s\",\"error\":null,\"incomplete_details\":null,\"model\":",
                  g->id, (long long)g->created, done ? "completed" : "in_progress");
    kp_mock__put_str(a, g->model, g->model_len);
    kp_mock__put(a, ",\"output\":[");
    if (done)
        put_message_item(a, g, true);
    kp_mock__put(a, "],\"parallel_tool_calls\":true,\"tool_choice\":\"auto\",\"tools\":[],"
                    "\"text\":{\"format\":{\"type\":\"text\"}},\"usage\":");
    if (done)
        put_usage(a, g);
    else
        kp_mock__put(a, "null");
    kp_mock__put(a, "}");
}

/* Opens event @type up to the members after sequence_number. */
static void event_head(struct kp_mock_answer *a, const char *type)
{
    kp_mock__event_begin(a, type);
    kp_mock__putf(a, "{\"type\":\"%s\",\"sequence_number\":%u", type, a->n_events);
}

static void event_tail(struct kp_mock_answer *a)
{
    kp_mock__put(a, "}");
    kp_mock__event_end(a, SSE_SEP);
}

static void item_event(struct kp_mock_answer *a, const struct kp_mock_gen *g, const char *type,
                       bool done)
{
    event_head(a, type);
    kp_mock__put(a, ",\"output_index\":0,\"item\":");
    put_message_item(a, g, done);
    event_tail(a);
}

static void part_event(struct kp_mock_answer *a, const struct kp_mock_gen *g, const char *type,
                       bool done)
{
    event_head(a, type);
    kp_mock__putf(
        a, ",\"item_id\":\"msg_%s\",\"output_index\":0,\"content_index\":0,\"part\":", g->id);
    put_text_part(a, g, done);
    event_tail(a);
}

static void text_events(struct kp_mock_answer *a, const struct kp_mock_gen *g)
{
    const char *w;
    size_t wl;

    a->malformed_event = (int)a->n_events;
    for (unsigned i = 0; i < g->completion_tokens; i++) {
        kp_mock__reply_word(i, &w, &wl);
        event_head(a, "response.output_text.delta");
        kp_mock__putf(a,
                      ",\"item_id\":\"msg_%s\",\"output_index\":0,\"content_index\":0,"
                      "\"delta\":",
                      g->id);
        kp_mock__put_str(a, w, wl);
        kp_mock__put(a, ",\"logprobs\":[]");
        event_tail(a);
    }
    kp_mock__reply_text(g->completion_tokens, &w, &wl);
    event_head(a, "response.output_text.done");
    kp_mock__putf(
        a, ",\"item_id\":\"msg_%s\",\"output_index\":0,\"content_index\":0,\"text\":", g->id);
    kp_mock__put_str(a, w, wl);
    kp_mock__put(a, ",\"logprobs\":[]");
    event_tail(a);
}

static void responses_stream(const struct kp_mock_gen *g, struct kp_mock_answer *a)
{
    kp_mock__begin_stream(a, "text/event-stream; charset=utf-8");
    event_head(a, "response.created");
    kp_mock__put(a, ",\"response\":");
    put_response(a, g, false);
    event_tail(a);
    event_head(a, "response.in_progress");
    kp_mock__put(a, ",\"response\":");
    put_response(a, g, false);
    event_tail(a);
    item_event(a, g, "response.output_item.added", false);
    part_event(a, g, "response.content_part.added", false);
    text_events(a, g);
    part_event(a, g, "response.content_part.done", true);
    item_event(a, g, "response.output_item.done", true);
    event_head(a, "response.completed");
    kp_mock__put(a, ",\"response\":");
    put_response(a, g, true);
    event_tail(a);
}

/* Prompt tokens of "input" (a string or a list of items) plus instructions. */
static unsigned responses_prompt(const json_t *input, const json_t *instructions)
{
    size_t extra = json_is_string(instructions) ? json_string_length(instructions) : 0;
    unsigned extra_msgs = json_is_string(instructions) ? 1 : 0;

    if (json_is_string(input))
        return kp_mock__messages_tokens(NULL, "content", extra + json_string_length(input),
                                        extra_msgs + 1);
    return kp_mock__messages_tokens(input, "content", extra, extra_msgs);
}

void kp_mock__openai_responses(struct kp_mock_gen *g, const json_t *body, bool stream,
                               struct kp_mock_answer *a)
{
    const json_t *input = json_object_get(body, "input");
    bool present;
    long long cap;

    if (!json_is_string(input) && !(json_is_array(input) && json_array_size(input) > 0)) {
        kp_mock__errorf(a, KP_MOCK_OPENAI, 400,
                        "'input' must be a string or a non-empty array of input items.");
        return;
    }
    if (kp_mock__max_tokens(body, "max_output_tokens", MIN_OUTPUT_TOKENS, &present, &cap) != 0) {
        kp_mock__errorf(a, KP_MOCK_OPENAI, 400,
                        "Invalid 'max_output_tokens': integer below minimum value. Expected a "
                        "value >= %d.",
                        MIN_OUTPUT_TOKENS);
        return;
    }
    kp_mock__set_completion(g, present, cap);
    g->prompt_tokens = responses_prompt(input, json_object_get(body, "instructions"));
    if (stream) {
        responses_stream(g, a);
        return;
    }
    kp_mock__begin(a, 200, "application/json");
    put_response(a, g, true);
}

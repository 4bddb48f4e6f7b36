/* Gemini generateContent and streamGenerateContent.
 *
 * A whole answer is one candidate with the reply as a text part, finishReason
 * STOP (or MAX_TOKENS when generationConfig.maxOutputTokens cut it) and
 * usageMetadata. A stream sends one full response object per word; the last
 * carries finishReason and usageMetadata. With ?alt=sse the objects are SSE
 * "data:" events; without it the body is a JSON array streamed element by
 * element, as the real API does. */
#include <string.h>

#include "internal.h"

#define SSE_SEP "\r\n\r\n"

static void put_usage(struct kp_mock_answer *a, const struct kp_mock_gen *g)
{
    kp_mock__putf(a,
                  ",\"usageMetadata\":{\"promptTokenCount\":%u,\"candidatesTokenCount\":%u,"
                  "\"totalTokenCount\":%u}",
                  g->prompt_tokens, g->completion_tokens, g->prompt_tokens + g->completion_tokens);
}

/* One response object holding @text: in one part, or with @split in two
 * (its halves: the replies are ASCII), as Gemini's stream chunks may come;
 * @last adds the finish reason and the usage. */
static void put_response(struct kp_mock_answer *a, const struct kp_mock_gen *g, const char *text,
                         size_t len, bool split, bool last)
{
    size_t half = split && len >= 2 ? len / 2 : len;
    kp_mock__put(a, "{\"candidates\":[{\"content\":{\"parts\":[{\"text\":");
    kp_mock__put_str(a, text, half);
    if (half < len) {
        kp_mock__put(a, "},{\"text\":");
        kp_mock__put_str(a, text + half, len - half);
    }
    kp_mock__put(a, "}],\"role\":\"model\"}");
    if (last)
        kp_mock__put(a, g->truncated ? ",\"finishReason\":\"MAX_TOKENS\""
                                     : ",\"finishReason\":\"STOP\"");
    kp_mock__put(a, ",\"index\":0}]");
    if (last)
        put_usage(a, g);
    kp_mock__put(a, ",\"modelVersion\":");
    kp_mock__put_str(a, g->model, g->model_len);
    kp_mock__putf(a, ",\"responseId\":\"%s\"}", g->id);
}

static void generate_stream(const struct kp_mock_gen *g, bool sse, struct kp_mock_answer *a)
{
    const char *w;
    size_t wl;

    kp_mock__begin_stream(a, sse ? "text/event-stream" : "application/json; charset=UTF-8");
    a->malformed_event = 0;
    for (unsigned i = 0; i < g->completion_tokens; i++) {
        bool last = i + 1 == g->completion_tokens;

        kp_mock__reply_word(i, &w, &wl);
        if (sse)
            kp_mock__event_begin(a, NULL);
        else
            kp_mock__put(a, i == 0 ? "[" : ",\r\n");
        put_response(a, g, w, wl, true, last);
        if (sse)
            kp_mock__event_end(a, SSE_SEP);
        else
            kp_mock__event_end(a, last ? "]" : "");
    }
}

/* Prompt tokens of contents[].parts[] plus systemInstruction.parts[]. */
static unsigned gemini_prompt(const json_t *contents, const json_t *system)
{
    size_t extra = 0;
    unsigned extra_msgs = 0;

    if (json_is_object(system)) {
        extra = kp_mock__content_bytes(json_object_get(system, "parts"));
        extra_msgs = 1;
    }
    return kp_mock__messages_tokens(contents, "parts", extra, extra_msgs);
}

void kp_mock__gemini_generate(struct kp_mock_gen *g, const json_t *body, bool stream, bool sse,
                              struct kp_mock_answer *a)
{
    const json_t *contents = json_object_get(body, "contents");
    const json_t *config = json_object_get(body, "generationConfig");
    const char *text;
    size_t len;
    bool present = false;
    long long cap = 0;

    if (!json_is_array(contents) || json_array_size(contents) == 0) {
        kp_mock__errorf(a, KP_MOCK_GEMINI, 400,
                        "* GenerateContentRequest.contents: contents is not specified");
        return;
    }
    if (config != NULL && kp_mock__max_tokens(config, "maxOutputTokens", 1, &present, &cap) != 0) {
        kp_mock__errorf(a, KP_MOCK_GEMINI, 400,
                        "* GenerateContentRequest.generation_config.max_output_tokens: must be a "
                        "positive integer");
        return;
    }
    kp_mock__set_completion(g, present, cap);
    g->prompt_tokens = gemini_prompt(contents, json_object_get(body, "systemInstruction"));
    if (stream) {
        generate_stream(g, sse, a);
        return;
    }
    kp_mock__reply_text(g->completion_tokens, &text, &len);
    kp_mock__begin(a, 200, "application/json; charset=UTF-8");
    put_response(a, g, text, len, false, true);
}

void kp_mock__gemini_models(struct kp_mock_answer *a)
{
    static const char *const names[] = {"gemini-1.5-flash", "gemini-2.0-flash"};
    kp_mock__begin(a, 200, "application/json");
    kp_mock__put(a, "{\"models\":[");
    for (unsigned i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        kp_mock__put(a, i > 0 ? ",{\"name\":\"models/" : "{\"name\":\"models/");
        kp_mock__put(a, names[i]);
        kp_mock__put(a, "\",\"supportedGenerationMethods\":[\"generateContent\","
                        "\"streamGenerateContent\"]}");
    }
    kp_mock__put(a, "]}");
}

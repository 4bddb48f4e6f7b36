/* router/adapter: translation between the OpenAI chat completions shape
 * (what apps send to /v1/chat/completions) and the native shapes of
 * providers that are not OpenAI-compatible, and back (what Anthropic SDK
 * users send to /anthropic/v1/messages). Pure functions over jansson
 * values: no I/O, no clock (times and ids come in as arguments).
 * ../shared/PROVIDERS.md lists the wire facts these rely on.
 *
 * Request translators refuse what cannot be expressed on the other side
 * with KP_EINVAL, a message an app developer can act on, and the OpenAI
 * `param` the problem is in ("messages[3].content[1].type"). Response and
 * stream translators never fail on fields they do not know (providers add
 * fields); they fail with KP_EPARSE only when a required field is missing
 * or of the wrong type. Internal to router/. */
#ifndef KP_ROUTER_ADAPTER_H
#define KP_ROUTER_ADAPTER_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/core.h"

/* Token counts a provider reported. */
struct kp_usage_counts {
    uint64_t input;  /* prompt tokens, cached ones included */
    uint64_t output; /* completion tokens */
    uint64_t cached; /* prompt tokens served from a cache */
    bool present;    /* the provider reported usage at all */
};

/* Identity of the chat completion being produced (OpenAI's "id",
 * "created", "model" fields). */
struct kp_chat_ident {
    const char *id;  /* "chatcmpl-..." */
    int64_t created; /* Unix seconds */
    const char *model;
};

/* Called with each translated stream item (an OpenAI chunk object, or an
 * Anthropic event: @event names it, NULL for OpenAI chunks). The callee
 * does not take the reference. Non-zero stops the translation and is
 * returned. */
typedef int (*kp_adapter_emit_fn)(void *arg, const char *event, json_t *item);

/* --- OpenAI chat <-> Anthropic Messages (adapter_anthropic*.c) ---------- */

/* OpenAI chat request -> Anthropic Messages request for @model. System
 * messages become "system"; user/assistant/tool turns, multi-part content
 * (text, image_url data: and https: URLs), tools and tool_choice, tool
 * calls and tool results, stop, temperature, top_p, max_tokens /
 * max_completion_tokens (Anthropic requires max_tokens: @default_max_tokens
 * when the app gave none), stream. */
int kp_anthropic_request_from_chat(const json_t *chat, const char *model,
                                   int64_t default_max_tokens, json_t **out, char *errmsg,
                                   size_t errlen, char *param, size_t paramlen);
/* Anthropic Messages response -> OpenAI chat completion (text, tool_calls,
 * finish_reason from stop_reason, usage). */
int kp_anthropic_response_to_chat(const json_t *msg, const struct kp_chat_ident *ident,
                                  json_t **out, struct kp_usage_counts *usage, char *errmsg,
                                  size_t errlen);

/* Anthropic SSE events -> OpenAI chat.completion.chunk objects. */
struct kp_anthropic_stream;
struct kp_anthropic_stream *kp_anthropic_stream_new(const struct kp_chat_ident *ident,
                                                    bool include_usage);
/* Feed one event (its SSE event name and parsed data). Emits 0..n chunks;
 * after message_stop with include_usage, a final chunk with "usage" and
 * empty "choices". An "error" event returns KP_EPARSE with its message. */
int kp_anthropic_stream_event(struct kp_anthropic_stream *s, const char *event, const json_t *data,
                              kp_adapter_emit_fn emit, void *arg, char *errmsg, size_t errlen);
/* Usage seen so far (message_start input, message_delta output). */
void kp_anthropic_stream_usage(const struct kp_anthropic_stream *s, struct kp_usage_counts *u);
bool kp_anthropic_stream_done(const struct kp_anthropic_stream *s);
void kp_anthropic_stream_free(struct kp_anthropic_stream *s);

/* The other direction, for /anthropic/v1/messages served by an
 * OpenAI-shaped provider: Messages request -> OpenAI chat request; chat
 * completion -> Messages response; chat chunks -> Messages events
 * (message_start, content_block_start/delta/stop, message_delta,
 * message_stop). */
int kp_chat_request_from_anthropic(const json_t *msg, const char *model, json_t **out, char *errmsg,
                                   size_t errlen, char *param, size_t paramlen);
int kp_chat_response_to_anthropic(const json_t *chat, const char *msg_id, const char *model,
                                  json_t **out, struct kp_usage_counts *usage, char *errmsg,
                                  size_t errlen);
struct kp_messages_stream;
struct kp_messages_stream *kp_messages_stream_new(const char *msg_id, const char *model);
/* Feed one OpenAI chunk (NULL at the end of the stream, "[DONE]"). */
int kp_messages_stream_chunk(struct kp_messages_stream *s, const json_t *chunk,
                             kp_adapter_emit_fn emit, void *arg, char *errmsg, size_t errlen);
void kp_messages_stream_usage(const struct kp_messages_stream *s, struct kp_usage_counts *u);
void kp_messages_stream_free(struct kp_messages_stream *s);

/* --- OpenAI chat <-> Gemini generateContent (adapter_gemini*.c) --------- */

/* OpenAI chat request -> generateContent body (systemInstruction,
 * contents with roles user/model, parts text/inlineData/fileData, tools as
 * functionDeclarations, tool_choice as toolConfig, tool calls as
 * functionCall and results as functionResponse, generationConfig from
 * temperature, top_p, max_tokens, stop, n, response_format). The model
 * goes in the URL, not the body. */
int kp_gemini_request_from_chat(const json_t *chat, json_t **out, char *errmsg, size_t errlen,
                                char *param, size_t paramlen);
/* generateContent response -> OpenAI chat completion (candidates[0] text
 * and functionCall parts, finishReason, usageMetadata). */
int kp_gemini_response_to_chat(const json_t *resp, const struct kp_chat_ident *ident, json_t **out,
                               struct kp_usage_counts *usage, char *errmsg, size_t errlen);
/* streamGenerateContent?alt=sse events (each a partial response) -> chunks. */
struct kp_gemini_stream;
struct kp_gemini_stream *kp_gemini_stream_new(const struct kp_chat_ident *ident,
                                              bool include_usage);
int kp_gemini_stream_event(struct kp_gemini_stream *s, const json_t *data, kp_adapter_emit_fn emit,
                           void *arg, char *errmsg, size_t errlen);
/* Call at the end of the upstream stream: emits the final chunk (finish
 * reason if not yet sent, usage when include_usage). */
int kp_gemini_stream_end(struct kp_gemini_stream *s, kp_adapter_emit_fn emit, void *arg);
void kp_gemini_stream_usage(const struct kp_gemini_stream *s, struct kp_usage_counts *u);
void kp_gemini_stream_free(struct kp_gemini_stream *s);

#endif

/* router/adapter_anthropic: OpenAI chat completions <-> Anthropic Messages
 * (router/adapter.h). Six translations in two directions: an app's chat
 * request, Anthropic's answer and Anthropic's event stream for apps that
 * speak OpenAI; and the mirror images for Anthropic SDK users served by an
 * OpenAI-shaped provider.
 *
 * Happy path: request in, request out; each answer or stream item is
 * rebuilt as a fresh jansson tree (nothing is shared with the input). The
 * ways it fails: a request that asks for something the other side cannot
 * express is refused with KP_EINVAL, a message saying what to do instead,
 * and the path of the offending field; an answer or stream item missing a
 * required field, or with one of the wrong type, is KP_EPARSE; jansson out
 * of memory is KP_ENOMEM.
 *
 * Decisions that are not forced by either API (each is also stated where
 * it is made):
 *   - system and developer messages anywhere in the conversation become
 *     Anthropic's top-level "system", in order: one as a string, several as
 *     text blocks. The other way, each system block is a system message.
 *   - Anthropic turns must alternate: consecutive turns of the same role
 *     are merged into one, and consecutive tool results become one user
 *     turn. Empty text (which Anthropic rejects) is dropped, and a turn left
 *     empty is dropped. A turn that is one plain text block is sent as a
 *     string.
 *   - Refused (KP_EINVAL): n > 1, logprobs / top_logprobs, response_format
 *     json_object and json_schema (Anthropic has no JSON mode; the message
 *     says to use a forced tool), audio in or out, file parts, legacy
 *     functions / function_call and role "function", images other than
 *     https: or base64 data: URLs of jpeg/png/gif/webp, temperature above 1
 *     (OpenAI allows 2), tool calls whose arguments are not a JSON object.
 *     The other way: document blocks, images in tool results, server tools
 *     (web search and the like), source types other than base64 and url.
 *   - Dropped without a word: sampling knobs with no counterpart (seed,
 *     frequency/presence penalty, logit_bias on one side; top_k, thinking
 *     and cache_control on the other), tool "strict", image "detail",
 *     "is_error" on tool results, thinking blocks in answers.
 *   - tool_choice "none" keeps the tools and sends {"type":"none"} (a
 *     conversation holding tool_use blocks needs its tools defined).
 *   - Stop reasons: end_turn, stop_sequence and pause_turn -> "stop";
 *     max_tokens and model_context_window_exceeded -> "length"; tool_use ->
 *     "tool_calls"; refusal -> "content_filter". Back: stop -> end_turn,
 *     length -> max_tokens, tool_calls -> tool_use, content_filter ->
 *     refusal.
 *   - Usage: Anthropic input_tokens excludes cache reads and writes, so
 *     OpenAI's prompt_tokens is their sum and cached_tokens the reads. Back,
 *     input_tokens is prompt_tokens minus cached_tokens.
 *   - The chat request made from a Messages request uses "max_tokens"
 *     (what every OpenAI-compatible server knows) and, when streaming,
 *     asks for usage with stream_options.include_usage.
 *   - Chunks -> Messages events: a message_start (usage still zero: OpenAI
 *     reports it only at the end), one content block per run of text or per
 *     tool call, and at the end message_delta (stop reason and the full
 *     usage) and message_stop. Anthropic blocks cannot interleave, so a
 *     tool call resumed after another block started is KP_EPARSE.
 *
 * Files: adapter_anthropic_request.c (both request translations),
 * adapter_anthropic_response.c (whole answers, both ways) and
 * adapter_anthropic_stream.c (both stream translators). This one holds
 * what they share, declared in adapter_internal.h: jansson shorthands,
 * stop reason and usage mappings, tool-call argument parsing, and the
 * loading of JSON text from apps and providers that tells bad JSON from
 * jansson running out of memory (which the Gemini adapter uses too). */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "router/adapter_internal.h"

/* --- helpers ------------------------------------------------------------- */

/* Set @key of @o to @v, taking the reference; -1 when @v is NULL or the
 * set fails (jansson out of memory). */
int kp_adapter__put(json_t *o, const char *key, json_t *v)
{
    return json_object_set_new(o, key, v);
}

int kp_adapter__push(json_t *a, json_t *v)
{
    return json_array_append_new(a, v);
}
const char *kp_adapter__str(const json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

json_t *kp_adapter__strn(const char *s, size_t n)
{
    return json_stringn(s, n);
}

/* A string value copied whole (it may hold NUL bytes). */
json_t *kp_adapter__str_copy(const json_t *s)
{
    return json_stringn(json_string_value(s), json_string_length(s));
}

/* Read a token count: absent or null leaves *@v; anything but a
 * non-negative integer is false. */
static bool get_count(const json_t *o, const char *key, uint64_t *v)
{
    json_t *x = json_object_get(o, key);
    if (x == NULL || json_is_null(x))
        return true;
    if (!json_is_integer(x) || json_integer_value(x) < 0)
        return false;
    *v = (uint64_t)json_integer_value(x);
    return true;
}

static json_t *count(uint64_t n)
{
    return json_integer(n > INT64_MAX ? INT64_MAX : (json_int_t)n);
}

const char *kp_adapter__finish_from_stop(const char *stop)
{
    if (stop == NULL)
        return NULL;
    if (strcmp(stop, "max_tokens") == 0 || strcmp(stop, "model_context_window_exceeded") == 0)
        return "length";
    if (strcmp(stop, "tool_use") == 0)
        return "tool_calls";
    if (strcmp(stop, "refusal") == 0)
        return "content_filter";
    return "stop"; /* end_turn, stop_sequence, pause_turn and anything new */
}

const char *kp_adapter__stop_from_finish(const char *finish)
{
    if (finish == NULL)
        return "end_turn";
    if (strcmp(finish, "length") == 0)
        return "max_tokens";
    if (strcmp(finish, "tool_calls") == 0 || strcmp(finish, "function_call") == 0)
        return "tool_use";
    if (strcmp(finish, "content_filter") == 0)
        return "refusal";
    return "end_turn";
}

/* OpenAI's usage object. */
json_t *kp_adapter__chat_usage(uint64_t prompt, uint64_t completion, uint64_t cached)
{
    json_t *u = json_object(), *d = json_object();
    if (u == NULL || d == NULL || kp_adapter__put(d, "cached_tokens", count(cached)) ||
        kp_adapter__put(u, "prompt_tokens", count(prompt)) ||
        kp_adapter__put(u, "completion_tokens", count(completion)) ||
        kp_adapter__put(u, "total_tokens", count(prompt + completion)) ||
        kp_adapter__put(u, "prompt_tokens_details", json_incref(d))) {
        json_decref(u);
        u = NULL;
    }
    json_decref(d);
    return u;
}

/* Anthropic's usage object from OpenAI's counts (cached ones included in
 * @prompt). */
json_t *kp_adapter__messages_usage(uint64_t prompt, uint64_t completion, uint64_t cached)
{
    json_t *u = json_object();
    if (u == NULL ||
        kp_adapter__put(u, "input_tokens", count(prompt > cached ? prompt - cached : 0)) ||
        kp_adapter__put(u, "cache_creation_input_tokens", json_integer(0)) ||
        kp_adapter__put(u, "cache_read_input_tokens", count(cached)) ||
        kp_adapter__put(u, "output_tokens", count(completion))) {
        json_decref(u);
        return NULL;
    }
    return u;
}

/* Anthropic usage -> counts: input is every prompt token, cached or not. */
bool kp_adapter__read_anthropic_usage(const json_t *u, uint64_t *input, uint64_t *cache_read,
                                      uint64_t *cache_write, uint64_t *output)
{
    return json_is_object(u) && get_count(u, "input_tokens", input) &&
           get_count(u, "cache_read_input_tokens", cache_read) &&
           get_count(u, "cache_creation_input_tokens", cache_write) &&
           get_count(u, "output_tokens", output);
}

/* OpenAI usage -> counts. */
bool kp_adapter__read_chat_usage(const json_t *u, struct kp_usage_counts *c)
{
    if (!json_is_object(u) || !get_count(u, "prompt_tokens", &c->input) ||
        !get_count(u, "completion_tokens", &c->output))
        return false;
    json_t *d = json_object_get(u, "prompt_tokens_details");
    if (json_is_object(d) && !get_count(d, "cached_tokens", &c->cached))
        return false;
    c->present = true;
    return true;
}

/* --- JSON text from apps and providers, read with jansson ------------------
 * Tool-call arguments and tool results arrive as JSON text inside JSON, and
 * a text that is not valid is the app's mistake (KP_EINVAL) while jansson
 * running out of memory is ours (KP_ENOMEM). jansson 2.14 blurs the two: a
 * failed allocation in its lexer reads as a syntax error ("invalid token"),
 * and most others return NULL without setting any error. In that case
 * json_error_code() is not "unknown" but garbage: jsonp_error_init clears
 * only text[0], and the code lives in the last byte of text, so it is
 * whatever the caller's stack held there (often a byte of a randomized
 * address, which made an out-of-memory read as "NUL character" or "bad
 * UTF-8" in one run in a few dozen). So: no error text means out of
 * memory; a syntax error on a text kp_router__json_syntax_ok finds valid
 * means out of memory; any other code is about the text. */

/* Whether json_loadb(@text, @len, JSON_DECODE_ANY | ...) failed, with
 * @jerr, for want of memory. */
static bool load_failed_for_memory(const json_error_t *jerr, const char *text, size_t len)
{
    if (jerr->text[0] == '\0')
        return true; /* jansson names every failure but its allocations' */
    switch (json_error_code(jerr)) {
    case json_error_out_of_memory:
        return true;
    case json_error_unknown:
    case json_error_invalid_syntax:
    case json_error_premature_end_of_input:
    case json_error_end_of_input_expected:
        return kp_router__json_syntax_ok(text, len);
    default:
        return false; /* a NUL, too big a number, too deep a nesting, bad UTF-8, ... */
    }
}

json_t *kp_adapter__load(const char *text, size_t len, size_t flags, json_error_t *jerr,
                         bool *nomem)
{
    json_t *v = json_loadb(text, len, JSON_DECODE_ANY | flags, jerr);
    *nomem = v == NULL && load_failed_for_memory(jerr, text, len);
    return v;
}

/* Parse tool-call arguments (a JSON text) into an object. "" is {}.
 * Returns KP_OK, KP_ENOMEM, or KP_EINVAL when it is not a JSON object. */
int kp_adapter__parse_arguments(const char *text, size_t len, json_t **out)
{
    size_t i = 0;
    while (i < len && (text[i] == ' ' || text[i] == '\t' || text[i] == '\r' || text[i] == '\n'))
        i++;
    if (i == len) {
        *out = json_object();
        return *out ? KP_OK : KP_ENOMEM;
    }
    json_error_t err;
    bool nomem;
    *out = kp_adapter__load(text, len, 0, &err, &nomem);
    if (*out == NULL)
        return nomem ? KP_ENOMEM : KP_EINVAL;
    if (!json_is_object(*out)) {
        json_decref(*out);
        *out = NULL;
        return KP_EINVAL;
    }
    return KP_OK;
}

/* Compact JSON text of an object, for tool-call arguments (kp_free it). */
char *kp_adapter__dumps_compact(const json_t *v)
{
    return kp_json_dumps(v, NULL);
}

/* A text content block holding a copy of @text (a JSON string). */
json_t *kp_adapter__text_block(const json_t *text)
{
    json_t *b = json_object();
    if (b == NULL || kp_adapter__put(b, "type", json_string("text")) ||
        kp_adapter__put(b, "text", kp_adapter__str_copy(text))) {
        json_decref(b);
        return NULL;
    }
    return b;
}

int kp_adapter__oom_msg(char *errmsg, size_t errlen)
{
    return kp_errf(errmsg, errlen, KP_ENOMEM, "out of memory");
}

json_t *kp_adapter__tool_call(const char *id, const char *name, const char *args, int64_t index,
                              bool with_index)
{
    json_t *c = json_object(), *fn = json_object();
    if (c == NULL || fn == NULL ||
        (with_index && kp_adapter__put(c, "index", json_integer(index))) ||
        kp_adapter__put(c, "id", json_string(id)) ||
        kp_adapter__put(c, "type", json_string("function")) ||
        kp_adapter__put(fn, "name", json_string(name)) ||
        kp_adapter__put(fn, "arguments", json_string(args)) ||
        kp_adapter__put(c, "function", json_incref(fn))) {
        json_decref(c);
        c = NULL;
    }
    json_decref(fn);
    return c;
}

/* Content blocks -> message text (appended to @text) and tool calls. */
int kp_adapter__chat_bad(char *errmsg, size_t errlen, const char *what)
{
    return kp_errf(errmsg, errlen, KP_EPARSE, "chat completion: %s", what);
}

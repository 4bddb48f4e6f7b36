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
 * memory; a syntax error on a text this check finds valid means out of
 * memory; any other code is about the text. */

/* An allocation-free JSON syntax check: RFC 8259 with jansson's extra
 * rules (surrogate escapes must pair up; at most JSON_PARSER_MAX_DEPTH
 * nested values). */
#define SCAN_MAX_DEPTH 2048 /* jansson's JSON_PARSER_MAX_DEPTH */

struct scan {
    const char *p, *end;
    int depth;
};

static bool scan_value(struct scan *s);

static void scan_space(struct scan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\r' || *s->p == '\n'))
        s->p++;
}

static bool scan_peek(const struct scan *s, char c)
{
    return s->p < s->end && *s->p == c;
}

static bool scan_digits(struct scan *s)
{
    const char *start = s->p;
    while (s->p < s->end && *s->p >= '0' && *s->p <= '9')
        s->p++;
    return s->p > start;
}

static bool scan_number(struct scan *s)
{
    if (scan_peek(s, '-'))
        s->p++;
    if (scan_peek(s, '0'))
        s->p++;
    else if (s->p >= s->end || *s->p < '1' || *s->p > '9' || !scan_digits(s))
        return false;
    if (scan_peek(s, '.') && (s->p++, !scan_digits(s)))
        return false;
    if (scan_peek(s, 'e') || scan_peek(s, 'E')) {
        s->p++;
        if (scan_peek(s, '+') || scan_peek(s, '-'))
            s->p++;
        return scan_digits(s);
    }
    return true;
}

/* Four hex digits after "\u"; -1 when they are not. */
static long scan_hex4(struct scan *s)
{
    long v = 0;
    if (s->end - s->p < 4)
        return -1;
    for (int k = 0; k < 4; k++) {
        char c = *s->p++;
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

static bool scan_string(struct scan *s)
{
    s->p++; /* the opening quote */
    while (s->p < s->end) {
        unsigned char c = (unsigned char)*s->p++;
        if (c == '"')
            return true;
        if (c < 0x20)
            return false;
        if (c != '\\')
            continue;
        c = s->p < s->end ? (unsigned char)*s->p++ : 0;
        if (c != 'u') {
            if (c == 0 || strchr("\"\\/bfnrt", c) == NULL)
                return false;
            continue;
        }
        long u = scan_hex4(s);
        if (u < 0 || (u >= 0xdc00 && u <= 0xdfff))
            return false;
        if (u >= 0xd800 && u <= 0xdbff) { /* a high surrogate needs its low half */
            if (s->end - s->p < 2 || s->p[0] != '\\' || s->p[1] != 'u')
                return false;
            s->p += 2;
            u = scan_hex4(s);
            if (u < 0xdc00 || u > 0xdfff)
                return false;
        }
    }
    return false;
}

static bool scan_container(struct scan *s)
{
    char close = *s->p == '{' ? '}' : ']';
    s->p++;
    scan_space(s);
    if (scan_peek(s, close)) {
        s->p++;
        return true;
    }
    for (;;) {
        if (close == '}') {
            scan_space(s);
            if (!scan_peek(s, '"') || !scan_string(s))
                return false;
            scan_space(s);
            if (!scan_peek(s, ':'))
                return false;
            s->p++;
        }
        if (!scan_value(s))
            return false;
        scan_space(s);
        if (s->p >= s->end)
            return false;
        char c = *s->p++;
        if (c == close)
            return true;
        if (c != ',')
            return false;
    }
}

static bool scan_literal(struct scan *s, const char *lit)
{
    size_t n = strlen(lit);
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, lit, n) != 0)
        return false;
    s->p += n;
    return true;
}

/* jansson counts every value, scalars too, against its depth limit. */
static bool scan_value(struct scan *s)
{
    bool ok;
    scan_space(s);
    if (s->p >= s->end || ++s->depth > SCAN_MAX_DEPTH)
        return false;
    switch (*s->p) {
    case '{':
    case '[':
        ok = scan_container(s);
        break;
    case '"':
        ok = scan_string(s);
        break;
    case 't':
        ok = scan_literal(s, "true");
        break;
    case 'f':
        ok = scan_literal(s, "false");
        break;
    case 'n':
        ok = scan_literal(s, "null");
        break;
    default:
        ok = scan_number(s);
        break;
    }
    s->depth--;
    return ok;
}

static bool json_text_valid(const char *text, size_t len)
{
    struct scan s = {text, text + len, 0};
    if (!scan_value(&s))
        return false;
    scan_space(&s);
    return s.p == s.end;
}

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
        return json_text_valid(text, len);
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
    struct scan s = {text, text + len, 0};
    scan_space(&s);
    if (s.p == s.end) {
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

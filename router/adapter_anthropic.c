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
 *     tool call resumed after another block started is KP_EPARSE. */
#include "router/adapter.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* --- helpers ------------------------------------------------------------- */

/* Where a request translator writes why it refused. */
struct refusal {
    char *errmsg;
    size_t errlen;
    char *param;
    size_t paramlen;
};

static void refusal_init(struct refusal *r, char *errmsg, size_t errlen, char *param,
                         size_t paramlen)
{
    *r = (struct refusal){errmsg, errlen, param, paramlen};
    if (param && paramlen)
        param[0] = '\0';
    if (errmsg && errlen)
        errmsg[0] = '\0';
}

/* KP_EINVAL with @msg and the param path formatted from @fmt. */
__attribute__((format(printf, 3, 4))) static int refuse(struct refusal *r, const char *msg,
                                                        const char *fmt, ...)
{
    if (r->param && r->paramlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->param, r->paramlen, fmt, ap);
        va_end(ap);
    }
    return kp_errf(r->errmsg, r->errlen, KP_EINVAL, "%s", msg);
}

static int nomem(struct refusal *r)
{
    if (r->param && r->paramlen)
        r->param[0] = '\0';
    return kp_errf(r->errmsg, r->errlen, KP_ENOMEM, "out of memory");
}

/* Set @key of @o to @v, taking the reference; -1 when @v is NULL or the
 * set fails (jansson out of memory). */
static int put(json_t *o, const char *key, json_t *v)
{
    return json_object_set_new(o, key, v);
}

static int push(json_t *a, json_t *v)
{
    return json_array_append_new(a, v);
}

static json_t *copy(const json_t *v)
{
    return json_deep_copy(v);
}

static const char *str(const json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

static json_t *strn(const char *s, size_t n)
{
    return json_stringn(s, n);
}

/* A string value copied whole (it may hold NUL bytes). */
static json_t *str_copy(const json_t *s)
{
    return json_stringn(json_string_value(s), json_string_length(s));
}

static bool present(const json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return v != NULL && !json_is_null(v);
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

static const char *finish_from_stop(const char *stop)
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

static const char *stop_from_finish(const char *finish)
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
static json_t *chat_usage(uint64_t prompt, uint64_t completion, uint64_t cached)
{
    json_t *u = json_object(), *d = json_object();
    if (u == NULL || d == NULL || put(d, "cached_tokens", count(cached)) ||
        put(u, "prompt_tokens", count(prompt)) || put(u, "completion_tokens", count(completion)) ||
        put(u, "total_tokens", count(prompt + completion)) ||
        put(u, "prompt_tokens_details", json_incref(d))) {
        json_decref(u);
        u = NULL;
    }
    json_decref(d);
    return u;
}

/* Anthropic's usage object from OpenAI's counts (cached ones included in
 * @prompt). */
static json_t *messages_usage(uint64_t prompt, uint64_t completion, uint64_t cached)
{
    json_t *u = json_object();
    if (u == NULL || put(u, "input_tokens", count(prompt > cached ? prompt - cached : 0)) ||
        put(u, "cache_creation_input_tokens", json_integer(0)) ||
        put(u, "cache_read_input_tokens", count(cached)) ||
        put(u, "output_tokens", count(completion))) {
        json_decref(u);
        return NULL;
    }
    return u;
}

/* Anthropic usage -> counts: input is every prompt token, cached or not. */
static bool read_anthropic_usage(const json_t *u, uint64_t *input, uint64_t *cache_read,
                                 uint64_t *cache_write, uint64_t *output)
{
    return json_is_object(u) && get_count(u, "input_tokens", input) &&
           get_count(u, "cache_read_input_tokens", cache_read) &&
           get_count(u, "cache_creation_input_tokens", cache_write) &&
           get_count(u, "output_tokens", output);
}

/* OpenAI usage -> counts. */
static bool read_chat_usage(const json_t *u, struct kp_usage_counts *c)
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

/* --- a JSON syntax check that allocates nothing ---------------------------
 * jansson reports running out of memory while parsing as a syntax error, so
 * when it fails on tool-call arguments this check tells bad JSON (the
 * app's mistake) from want of memory (ours). Same grammar as RFC 8259, same
 * depth limit as jansson. */

#define JSON_CHECK_MAX_DEPTH 2048

static const char *ws(const char *p, const char *e)
{
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
        p++;
    return p;
}

static const char *check_value(const char *p, const char *e, int depth);

static const char *check_string(const char *p, const char *e)
{
    for (p++; p < e; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"')
            return p + 1;
        if (c < 0x20)
            return NULL;
        if (c != '\\')
            continue;
        if (++p == e)
            return NULL;
        if (*p == 'u') {
            for (int k = 0; k < 4; k++)
                if (++p == e || strchr("0123456789abcdefABCDEF", *p) == NULL || *p == '\0')
                    return NULL;
        } else if (strchr("\"\\/bfnrt", *p) == NULL || *p == '\0') {
            return NULL;
        }
    }
    return NULL;
}

static const char *check_digits(const char *p, const char *e)
{
    const char *q = p;
    while (q < e && *q >= '0' && *q <= '9')
        q++;
    return q == p ? NULL : q;
}

static const char *check_number(const char *p, const char *e)
{
    if (*p == '-')
        p++;
    if (p < e && *p == '0')
        p++;
    else if ((p = check_digits(p, e)) == NULL)
        return NULL;
    if (p < e && *p == '.' && (p = check_digits(p + 1, e)) == NULL)
        return NULL;
    if (p < e && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < e && (*p == '+' || *p == '-'))
            p++;
        p = check_digits(p, e);
    }
    return p;
}

/* The elements of an array or members of an object, after its opener. */
static const char *check_items(const char *p, const char *e, char close, int depth)
{
    p = ws(p + 1, e);
    if (p < e && *p == close)
        return p + 1;
    for (;;) {
        if (close == '}') {
            if (p == e || *p != '"' || (p = check_string(p, e)) == NULL)
                return NULL;
            p = ws(p, e);
            if (p == e || *p != ':')
                return NULL;
            p = ws(p + 1, e);
        }
        if ((p = check_value(p, e, depth + 1)) == NULL)
            return NULL;
        p = ws(p, e);
        if (p < e && *p == close)
            return p + 1;
        if (p == e || *p != ',')
            return NULL;
        p = ws(p + 1, e);
    }
}

static const char *check_value(const char *p, const char *e, int depth)
{
    if (p == e || depth > JSON_CHECK_MAX_DEPTH)
        return NULL;
    switch (*p) {
    case '{':
        return check_items(p, e, '}', depth);
    case '[':
        return check_items(p, e, ']', depth);
    case '"':
        return check_string(p, e);
    case 't':
        return e - p >= 4 && memcmp(p, "true", 4) == 0 ? p + 4 : NULL;
    case 'f':
        return e - p >= 5 && memcmp(p, "false", 5) == 0 ? p + 5 : NULL;
    case 'n':
        return e - p >= 4 && memcmp(p, "null", 4) == 0 ? p + 4 : NULL;
    default:
        return (*p == '-' || (*p >= '0' && *p <= '9')) ? check_number(p, e) : NULL;
    }
}

static bool json_text_valid(const char *text, size_t len)
{
    const char *e = text + len;
    const char *p = check_value(ws(text, e), e, 1);
    return p != NULL && ws(p, e) == e;
}

/* Parse tool-call arguments (a JSON text) into an object. "" is {}.
 * Returns KP_OK, KP_ENOMEM, or KP_EINVAL when it is not a JSON object. */
static int parse_arguments(const char *text, size_t len, json_t **out)
{
    const char *start = ws(text, text + len);
    if (start == text + len) {
        *out = json_object();
        return *out ? KP_OK : KP_ENOMEM;
    }
    json_error_t err;
    *out = json_loadb(text, len, 0, &err);
    if (*out == NULL) {
        /* Failures about the content itself carry their own codes; for the
         * rest, the text decides. */
        switch (json_error_code(&err)) {
        case json_error_null_character:
        case json_error_null_byte_in_key:
        case json_error_numeric_overflow:
        case json_error_stack_overflow:
        case json_error_invalid_utf8:
            return KP_EINVAL;
        default:
            return *start == '{' && json_text_valid(text, len) ? KP_ENOMEM : KP_EINVAL;
        }
    }
    if (!json_is_object(*out)) {
        json_decref(*out);
        *out = NULL;
        return KP_EINVAL;
    }
    return KP_OK;
}

/* Compact JSON text of an object, for tool-call arguments (kp_free it). */
static char *dumps_compact(const json_t *v)
{
    return kp_json_dumps(v, NULL);
}

/* === OpenAI chat request -> Anthropic Messages request ================== */

/* The request being built: system text blocks and alternating turns. */
struct to_messages {
    struct refusal r;
    json_t *system; /* array of {"type":"text","text"} */
    json_t *turns;  /* array of {"role","content":[blocks]} */
};

/* Append @blocks (taken) as a turn of @role, merged into the last turn
 * when that has the same role. Empty turns are dropped. */
static int add_turn(struct to_messages *m, const char *role, json_t *blocks)
{
    if (blocks == NULL)
        return nomem(&m->r);
    if (json_array_size(blocks) == 0) {
        json_decref(blocks);
        return KP_OK;
    }
    size_t n = json_array_size(m->turns);
    json_t *last = n ? json_array_get(m->turns, n - 1) : NULL;
    if (last != NULL && strcmp(str(last, "role"), role) == 0) {
        int rc = json_array_extend(json_object_get(last, "content"), blocks);
        json_decref(blocks);
        return rc ? nomem(&m->r) : KP_OK;
    }
    json_t *turn = json_object();
    int err = turn == NULL || put(turn, "role", json_string(role)) ||
              put(turn, "content", json_incref(blocks)) || push(m->turns, json_incref(turn));
    json_decref(turn);
    json_decref(blocks);
    return err ? nomem(&m->r) : KP_OK;
}

static json_t *text_block(const json_t *text)
{
    json_t *b = json_object();
    if (b == NULL || put(b, "type", json_string("text")) || put(b, "text", str_copy(text))) {
        json_decref(b);
        return NULL;
    }
    return b;
}

/* Append a text block for @text unless it is empty. */
static int add_text(struct refusal *r, json_t *blocks, const json_t *text)
{
    if (json_string_length(text) == 0)
        return KP_OK;
    return push(blocks, text_block(text)) ? nomem(r) : KP_OK;
}

static bool supported_image_type(const char *t, size_t n)
{
    static const char *types[] = {"image/jpeg", "image/png", "image/gif", "image/webp"};
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
        if (n == strlen(types[i]) && strncmp(t, types[i], n) == 0)
            return true;
    return false;
}

/* An OpenAI image_url part -> an Anthropic image block (messages[i].content[j]). */
static int image_block(struct refusal *r, const json_t *part, size_t i, size_t j, json_t **out)
{
    json_t *iu = json_object_get(part, "image_url");
    const char *url = json_is_string(iu) ? json_string_value(iu) : str(iu, "url");
    if (url == NULL)
        return refuse(r, "an image_url part needs image_url.url",
                      "messages[%zu].content[%zu].image_url", i, j);
    json_t *src = json_object(), *b = json_object();
    int rc = KP_OK;
    if (src == NULL || b == NULL)
        goto oom;
    if (strncmp(url, "data:", 5) == 0) {
        const char *comma = strchr(url, ',');
        const char *media = url + 5;
        const char *semi = comma ? memchr(media, ';', (size_t)(comma - media)) : NULL;
        size_t mlen = semi ? (size_t)(semi - media) : 0;
        if (comma == NULL || comma - url < 12 || strncmp(comma - 7, ";base64", 7) != 0) {
            rc = refuse(r,
                        "image data: URLs must be base64 (data:image/png;base64,...) for "
                        "Anthropic models",
                        "messages[%zu].content[%zu].image_url.url", i, j);
            goto fail;
        }
        bool jpg = mlen == 9 && strncmp(media, "image/jpg", 9) == 0;
        if (!jpg && !supported_image_type(media, mlen)) {
            rc = refuse(r,
                        "Anthropic models accept images of type image/jpeg, image/png, "
                        "image/gif or image/webp",
                        "messages[%zu].content[%zu].image_url.url", i, j);
            goto fail;
        }
        if (put(src, "type", json_string("base64")) ||
            put(src, "media_type", jpg ? json_string("image/jpeg") : strn(media, mlen)) ||
            put(src, "data", json_string(comma + 1)))
            goto oom;
    } else if (strncmp(url, "https://", 8) == 0) {
        if (put(src, "type", json_string("url")) || put(src, "url", json_string(url)))
            goto oom;
    } else {
        rc = refuse(r,
                    "Anthropic models take images as https: URLs or base64 data: URLs; "
                    "fetch the image and send it as data:image/...;base64,...",
                    "messages[%zu].content[%zu].image_url.url", i, j);
        goto fail;
    }
    if (put(b, "type", json_string("image")) || put(b, "source", json_incref(src)))
        goto oom;
    json_decref(src);
    *out = b;
    return KP_OK;
oom:
    rc = nomem(r);
fail:
    json_decref(src);
    json_decref(b);
    return rc;
}

static int refuse_part_type(struct refusal *r, const char *type, size_t i, size_t j)
{
    if (strcmp(type, "input_audio") == 0)
        return refuse(r,
                      "Anthropic models do not take audio input; transcribe it first (for "
                      "example with /v1/audio/transcriptions) and send the text",
                      "messages[%zu].content[%zu].type", i, j);
    if (strcmp(type, "file") == 0)
        return refuse(r,
                      "file parts cannot be sent to Anthropic models through this API; send "
                      "the text or images instead",
                      "messages[%zu].content[%zu].type", i, j);
    char msg[160];
    snprintf(msg, sizeof(msg), "content part type \"%.40s\" cannot be sent to Anthropic models",
             type);
    return refuse(r, msg, "messages[%zu].content[%zu].type", i, j);
}

/* Message @i's content (string, null or parts) -> blocks appended to
 * @blocks. @images: image parts allowed (user turns). */
static int content_blocks(struct refusal *r, const json_t *content, size_t i, bool images,
                          json_t *blocks)
{
    if (content == NULL || json_is_null(content))
        return KP_OK;
    if (json_is_string(content))
        return add_text(r, blocks, content);
    if (!json_is_array(content))
        return refuse(r, "content must be a string or an array of content parts",
                      "messages[%zu].content", i);
    size_t j;
    json_t *part;
    json_array_foreach(content, j, part)
    {
        const char *type = str(part, "type");
        if (type == NULL)
            return refuse(r, "a content part needs a string type", "messages[%zu].content[%zu]", i,
                          j);
        int rc;
        if (strcmp(type, "text") == 0 || strcmp(type, "refusal") == 0) {
            json_t *text = json_object_get(part, type);
            if (!json_is_string(text))
                return refuse(r, "a text part needs a string text", "messages[%zu].content[%zu].%s",
                              i, j, type);
            rc = add_text(r, blocks, text);
        } else if (strcmp(type, "image_url") == 0 && images) {
            json_t *b = NULL;
            rc = image_block(r, part, i, j, &b);
            if (rc == KP_OK && push(blocks, b))
                rc = nomem(r);
        } else if (strcmp(type, "image_url") == 0) {
            return refuse(r, "only user messages can hold images for Anthropic models",
                          "messages[%zu].content[%zu].type", i, j);
        } else {
            return refuse_part_type(r, type, i, j);
        }
        if (rc != KP_OK)
            return rc;
    }
    return KP_OK;
}

/* One assistant tool call -> a tool_use block. */
static int tool_use_block(struct refusal *r, const json_t *call, size_t i, size_t j, json_t **out)
{
    const char *type = str(call, "type");
    if (type != NULL && strcmp(type, "function") != 0)
        return refuse(r, "only function tool calls can be sent to Anthropic models",
                      "messages[%zu].tool_calls[%zu].type", i, j);
    json_t *id = json_object_get(call, "id");
    json_t *fn = json_object_get(call, "function");
    json_t *name = json_object_get(fn, "name");
    json_t *args = json_object_get(fn, "arguments");
    if (!json_is_string(id))
        return refuse(r, "a tool call needs a string id", "messages[%zu].tool_calls[%zu].id", i, j);
    if (!json_is_string(name))
        return refuse(r, "a tool call needs a string function.name",
                      "messages[%zu].tool_calls[%zu].function.name", i, j);
    if (args != NULL && !json_is_string(args))
        return refuse(r, "function.arguments must be a string holding a JSON object",
                      "messages[%zu].tool_calls[%zu].function.arguments", i, j);
    json_t *input = NULL;
    int rc = parse_arguments(args ? json_string_value(args) : "",
                             args ? json_string_length(args) : 0, &input);
    if (rc == KP_ENOMEM)
        return nomem(r);
    if (rc != KP_OK)
        return refuse(r,
                      "function.arguments is not a JSON object; Anthropic models need the "
                      "tool input as an object (send \"{}\" for no arguments)",
                      "messages[%zu].tool_calls[%zu].function.arguments", i, j);
    json_t *b = json_object();
    if (b == NULL || put(b, "type", json_string("tool_use")) || put(b, "id", str_copy(id)) ||
        put(b, "name", str_copy(name)) || put(b, "input", json_incref(input))) {
        json_decref(input);
        json_decref(b);
        return nomem(r);
    }
    json_decref(input);
    *out = b;
    return KP_OK;
}

static int assistant_turn(struct to_messages *m, const json_t *msg, size_t i)
{
    json_t *blocks = json_array();
    if (blocks == NULL)
        return nomem(&m->r);
    int rc = content_blocks(&m->r, json_object_get(msg, "content"), i, false, blocks);
    json_t *calls = json_object_get(msg, "tool_calls");
    if (rc == KP_OK && calls != NULL && !json_is_null(calls) && !json_is_array(calls))
        rc = refuse(&m->r, "tool_calls must be an array", "messages[%zu].tool_calls", i);
    size_t j;
    json_t *call;
    json_array_foreach(calls, j, call)
    {
        json_t *b = NULL;
        if (rc != KP_OK || (rc = tool_use_block(&m->r, call, i, j, &b)) != KP_OK)
            break;
        if (push(blocks, b)) {
            rc = nomem(&m->r);
            break;
        }
    }
    if (rc == KP_OK && present(msg, "function_call"))
        rc = refuse(&m->r, "function_call is legacy; send tool_calls instead",
                    "messages[%zu].function_call", i);
    if (rc != KP_OK) {
        json_decref(blocks);
        return rc;
    }
    return add_turn(m, "assistant", blocks);
}

/* A role "tool" message -> a tool_result block in a user turn. */
static int tool_turn(struct to_messages *m, const json_t *msg, size_t i)
{
    json_t *id = json_object_get(msg, "tool_call_id");
    if (!json_is_string(id))
        return refuse(&m->r, "a tool message needs a string tool_call_id",
                      "messages[%zu].tool_call_id", i);
    json_t *content = json_object_get(msg, "content");
    json_t *b = json_object(), *blocks = json_array(), *result = NULL;
    int rc = KP_OK;
    if (b == NULL || blocks == NULL || put(b, "type", json_string("tool_result")) ||
        put(b, "tool_use_id", str_copy(id)))
        goto oom;
    if (json_is_string(content)) {
        if (json_string_length(content) > 0 && put(b, "content", str_copy(content)))
            goto oom;
    } else {
        result = json_array();
        if (result == NULL)
            goto oom;
        if ((rc = content_blocks(&m->r, content, i, false, result)) != KP_OK)
            goto fail;
        if (json_array_size(result) > 0 && put(b, "content", json_incref(result)))
            goto oom;
        json_decref(result);
        result = NULL;
    }
    if (push(blocks, json_incref(b)))
        goto oom;
    json_decref(b);
    return add_turn(m, "user", blocks);
oom:
    rc = nomem(&m->r);
fail:
    json_decref(result);
    json_decref(b);
    json_decref(blocks);
    return rc;
}

static int system_message(struct to_messages *m, const json_t *msg, size_t i)
{
    json_t *content = json_object_get(msg, "content");
    if (json_is_array(content)) {
        size_t j;
        json_t *part;
        json_array_foreach(content, j, part)
        {
            const char *type = str(part, "type");
            if (type == NULL || strcmp(type, "text") != 0)
                return refuse(&m->r, "system messages can hold only text for Anthropic models",
                              "messages[%zu].content[%zu].type", i, j);
        }
    }
    return content_blocks(&m->r, content, i, false, m->system);
}

static int convert_message(struct to_messages *m, const json_t *msg, size_t i)
{
    const char *role = str(msg, "role");
    if (role == NULL)
        return refuse(&m->r, "a message needs a string role", "messages[%zu].role", i);
    if (strcmp(role, "system") == 0 || strcmp(role, "developer") == 0)
        return system_message(m, msg, i);
    if (strcmp(role, "user") == 0) {
        json_t *blocks = json_array();
        if (blocks == NULL)
            return nomem(&m->r);
        int rc = content_blocks(&m->r, json_object_get(msg, "content"), i, true, blocks);
        if (rc != KP_OK) {
            json_decref(blocks);
            return rc;
        }
        return add_turn(m, "user", blocks);
    }
    if (strcmp(role, "assistant") == 0)
        return assistant_turn(m, msg, i);
    if (strcmp(role, "tool") == 0)
        return tool_turn(m, msg, i);
    if (strcmp(role, "function") == 0)
        return refuse(&m->r,
                      "role \"function\" is legacy function calling; use tools, tool_calls and "
                      "role \"tool\"",
                      "messages[%zu].role", i);
    return refuse(&m->r, "role must be system, developer, user, assistant or tool",
                  "messages[%zu].role", i);
}

/* A turn that is a single plain text block is sent as a string. */
static int collapse_turns(json_t *turns)
{
    size_t i;
    json_t *turn;
    json_array_foreach(turns, i, turn)
    {
        json_t *blocks = json_object_get(turn, "content");
        json_t *b = json_array_get(blocks, 0);
        if (json_array_size(blocks) == 1 && json_object_size(b) == 2 &&
            strcmp(str(b, "type"), "text") == 0) {
            json_t *text = json_incref(json_object_get(b, "text"));
            if (put(turn, "content", text))
                return -1;
        }
    }
    return 0;
}

static int convert_tools(struct refusal *r, const json_t *tools, json_t **out)
{
    if (!json_is_array(tools))
        return refuse(r, "tools must be an array", "tools");
    json_t *list = json_array();
    if (list == NULL)
        return nomem(r);
    size_t i;
    json_t *tool;
    json_array_foreach(tools, i, tool)
    {
        const char *type = str(tool, "type");
        json_t *fn = json_object_get(tool, "function");
        json_t *name = json_object_get(fn, "name");
        json_t *desc = json_object_get(fn, "description");
        json_t *params = json_object_get(fn, "parameters");
        int rc = KP_OK;
        if (type != NULL && strcmp(type, "function") != 0)
            rc = refuse(r, "only function tools can be sent to Anthropic models", "tools[%zu].type",
                        i);
        else if (!json_is_string(name))
            rc = refuse(r, "a tool needs a string function.name", "tools[%zu].function.name", i);
        else if (desc != NULL && !json_is_null(desc) && !json_is_string(desc))
            rc = refuse(r, "function.description must be a string",
                        "tools[%zu].function.description", i);
        else if (params != NULL && !json_is_null(params) && !json_is_object(params))
            rc = refuse(r, "function.parameters must be a JSON Schema object",
                        "tools[%zu].function.parameters", i);
        if (rc != KP_OK) {
            json_decref(list);
            return rc;
        }
        json_t *t = json_object();
        if (t == NULL || put(t, "name", str_copy(name)) ||
            (json_is_string(desc) && put(t, "description", str_copy(desc))) ||
            put(t, "input_schema",
                json_is_object(params) ? copy(params)
                                       : json_pack("{s:s,s:{}}", "type", "object", "properties")) ||
            push(list, json_incref(t))) {
            json_decref(t);
            json_decref(list);
            return nomem(r);
        }
        json_decref(t);
    }
    *out = list;
    return KP_OK;
}

/* tool_choice (and parallel_tool_calls) -> Anthropic tool_choice, or NULL
 * for the default. @has_tools: tools were given. */
static int convert_tool_choice(struct refusal *r, const json_t *chat, bool has_tools, json_t **out)
{
    json_t *tc = json_object_get(chat, "tool_choice");
    json_t *ptc = json_object_get(chat, "parallel_tool_calls");
    const char *type = NULL, *name = NULL;
    *out = NULL;
    if (tc == NULL || json_is_null(tc)) {
        type = "auto";
    } else if (json_is_string(tc)) {
        const char *s = json_string_value(tc);
        if (strcmp(s, "auto") == 0)
            type = "auto";
        else if (strcmp(s, "none") == 0)
            type = "none";
        else if (strcmp(s, "required") == 0)
            type = "any";
        else
            return refuse(r, "tool_choice must be \"auto\", \"none\", \"required\" or a function",
                          "tool_choice");
    } else if (json_is_object(tc) &&
               strcmp(str(tc, "type") ? str(tc, "type") : "", "function") == 0) {
        name = str(json_object_get(tc, "function"), "name");
        if (name == NULL)
            return refuse(r, "a function tool_choice needs function.name",
                          "tool_choice.function.name");
        type = "tool";
    } else {
        return refuse(r,
                      "tool_choice must be \"auto\", \"none\", \"required\" or "
                      "{\"type\":\"function\",\"function\":{\"name\":...}} for Anthropic models",
                      "tool_choice");
    }
    if (!has_tools) {
        if (strcmp(type, "auto") == 0 || strcmp(type, "none") == 0)
            return KP_OK;
        return refuse(r, "tool_choice needs tools", "tool_choice");
    }
    bool serial = json_is_false(ptc);
    if (tc == NULL || json_is_null(tc)) {
        if (!serial)
            return KP_OK;
    }
    json_t *o = json_object();
    if (o == NULL || put(o, "type", json_string(type)) ||
        (name && put(o, "name", json_string(name))) ||
        (serial && strcmp(type, "none") != 0 && put(o, "disable_parallel_tool_use", json_true()))) {
        json_decref(o);
        return nomem(r);
    }
    *out = o;
    return KP_OK;
}

/* Fields that Anthropic cannot express: refuse them up front. */
static int refuse_untranslatable(struct refusal *r, const json_t *chat)
{
    json_t *n = json_object_get(chat, "n");
    if (n != NULL && !json_is_null(n) && !(json_is_integer(n) && json_integer_value(n) == 1))
        return refuse(r,
                      "Anthropic models return one choice per request; omit n (or set it to "
                      "1) and send one request per choice",
                      "n");
    if (json_is_true(json_object_get(chat, "logprobs")))
        return refuse(r, "Anthropic models do not return log probabilities; omit logprobs",
                      "logprobs");
    if (present(chat, "top_logprobs"))
        return refuse(r, "Anthropic models do not return log probabilities; omit top_logprobs",
                      "top_logprobs");
    json_t *rf = json_object_get(chat, "response_format");
    const char *rft = str(rf, "type");
    if (present(chat, "response_format") && (rft == NULL || strcmp(rft, "text") != 0))
        return refuse(r,
                      "Anthropic models have no response_format (JSON mode); describe the JSON "
                      "in the prompt, or define a tool whose input_schema is your schema and "
                      "force it with tool_choice",
                      "response_format");
    if (present(chat, "audio"))
        return refuse(r, "Anthropic models do not produce audio; omit audio", "audio");
    json_t *mod = json_object_get(chat, "modalities");
    size_t i;
    json_t *v;
    json_array_foreach(mod, i, v)
    {
        if (!json_is_string(v) || strcmp(json_string_value(v), "text") != 0)
            return refuse(r, "Anthropic models produce text only; set modalities to [\"text\"]",
                          "modalities[%zu]", i);
    }
    if (present(chat, "functions"))
        return refuse(r, "functions is legacy function calling; send tools instead", "functions");
    if (present(chat, "function_call"))
        return refuse(r, "function_call is legacy; send tool_choice instead", "function_call");
    return KP_OK;
}

static int positive(struct refusal *r, const json_t *chat, const char *key, int64_t *v)
{
    json_t *x = json_object_get(chat, key);
    if (x == NULL || json_is_null(x))
        return KP_OK;
    if (!json_is_integer(x) || json_integer_value(x) <= 0) {
        char msg[80];
        snprintf(msg, sizeof(msg), "%s must be a positive integer", key);
        return refuse(r, msg, "%s", key);
    }
    *v = json_integer_value(x);
    return KP_OK;
}

/* max_tokens, stop, temperature, top_p, stream, user -> @body. */
static int convert_params(struct refusal *r, const json_t *chat, int64_t default_max_tokens,
                          json_t *body)
{
    int64_t max = default_max_tokens > 0 ? default_max_tokens : 4096;
    int rc;
    if ((rc = positive(r, chat, "max_tokens", &max)) != KP_OK ||
        (rc = positive(r, chat, "max_completion_tokens", &max)) != KP_OK)
        return rc;
    if (put(body, "max_tokens", json_integer(max)))
        return nomem(r);
    json_t *stop = json_object_get(chat, "stop");
    if (json_is_string(stop)) {
        json_t *a = json_array();
        int err =
            a == NULL || push(a, str_copy(stop)) || put(body, "stop_sequences", json_incref(a));
        json_decref(a);
        if (err)
            return nomem(r);
    } else if (json_is_array(stop)) {
        size_t i;
        json_t *s;
        json_array_foreach(stop, i, s)
        {
            if (!json_is_string(s))
                return refuse(r, "stop sequences must be strings", "stop[%zu]", i);
        }
        if (json_array_size(stop) > 0 && put(body, "stop_sequences", copy(stop)))
            return nomem(r);
    } else if (stop != NULL && !json_is_null(stop)) {
        return refuse(r, "stop must be a string or an array of strings", "stop");
    }
    json_t *t = json_object_get(chat, "temperature");
    if (t != NULL && !json_is_null(t)) {
        if (!json_is_number(t) || json_number_value(t) < 0 || json_number_value(t) > 1)
            return refuse(r,
                          "Anthropic models take a temperature from 0 to 1 (OpenAI's range is "
                          "0 to 2)",
                          "temperature");
        if (put(body, "temperature", copy(t)))
            return nomem(r);
    }
    json_t *p = json_object_get(chat, "top_p");
    if (p != NULL && !json_is_null(p)) {
        if (!json_is_number(p))
            return refuse(r, "top_p must be a number", "top_p");
        if (put(body, "top_p", copy(p)))
            return nomem(r);
    }
    json_t *s = json_object_get(chat, "stream");
    if (json_is_boolean(s) && put(body, "stream", copy(s)))
        return nomem(r);
    json_t *user = json_object_get(chat, "user");
    if (json_is_string(user) &&
        put(body, "metadata",
            json_pack("{s:s%}", "user_id", json_string_value(user), json_string_length(user))))
        return nomem(r);
    return KP_OK;
}

static int build_messages(struct to_messages *m, const json_t *chat)
{
    json_t *messages = json_object_get(chat, "messages");
    if (!json_is_array(messages))
        return refuse(&m->r, "messages must be an array", "messages");
    size_t i;
    json_t *msg;
    json_array_foreach(messages, i, msg)
    {
        if (!json_is_object(msg))
            return refuse(&m->r, "a message must be an object", "messages[%zu]", i);
        int rc = convert_message(m, msg, i);
        if (rc != KP_OK)
            return rc;
    }
    if (json_array_size(m->turns) == 0)
        return refuse(&m->r, "Anthropic models need at least one user or assistant message",
                      "messages");
    return collapse_turns(m->turns) ? nomem(&m->r) : KP_OK;
}

/* The "system" value: one text as a string, several as text blocks. */
static json_t *system_value(json_t *blocks)
{
    if (json_array_size(blocks) == 1)
        return json_incref(json_object_get(json_array_get(blocks, 0), "text"));
    return json_incref(blocks);
}

int kp_anthropic_request_from_chat(const json_t *chat, const char *model,
                                   int64_t default_max_tokens, json_t **out, char *errmsg,
                                   size_t errlen, char *param, size_t paramlen)
{
    struct to_messages m;
    refusal_init(&m.r, errmsg, errlen, param, paramlen);
    *out = NULL;
    if (!json_is_object(chat))
        return refuse(&m.r, "the request body must be a JSON object", "%s", "");
    int rc = refuse_untranslatable(&m.r, chat);
    if (rc != KP_OK)
        return rc;
    m.system = json_array();
    m.turns = json_array();
    json_t *body = json_object(), *tools = NULL, *choice = NULL;
    json_t *chat_tools = json_object_get(chat, "tools");
    const char *name = model ? model : str(chat, "model");
    if (m.system == NULL || m.turns == NULL || body == NULL)
        goto oom;
    if ((rc = build_messages(&m, chat)) != KP_OK)
        goto fail;
    if (chat_tools != NULL && !json_is_null(chat_tools) &&
        (rc = convert_tools(&m.r, chat_tools, &tools)) != KP_OK)
        goto fail;
    if ((rc = convert_tool_choice(&m.r, chat, json_array_size(tools) > 0, &choice)) != KP_OK)
        goto fail;
    if (put(body, "model", json_string(name ? name : "")) ||
        (json_array_size(m.system) > 0 && put(body, "system", system_value(m.system))) ||
        put(body, "messages", json_incref(m.turns)) ||
        (json_array_size(tools) > 0 && put(body, "tools", json_incref(tools))) ||
        (choice != NULL && put(body, "tool_choice", json_incref(choice))))
        goto oom;
    if ((rc = convert_params(&m.r, chat, default_max_tokens, body)) != KP_OK)
        goto fail;
    json_decref(m.system);
    json_decref(m.turns);
    json_decref(tools);
    json_decref(choice);
    *out = body;
    return KP_OK;
oom:
    rc = nomem(&m.r);
fail:
    json_decref(m.system);
    json_decref(m.turns);
    json_decref(tools);
    json_decref(choice);
    json_decref(body);
    return rc;
}

/* === Anthropic Messages response -> OpenAI chat completion ============== */

static int bad(char *errmsg, size_t errlen, const char *what)
{
    return kp_errf(errmsg, errlen, KP_EPARSE, "anthropic answer: %s", what);
}

static int oom_msg(char *errmsg, size_t errlen)
{
    return kp_errf(errmsg, errlen, KP_ENOMEM, "out of memory");
}

static json_t *tool_call(const char *id, const char *name, const char *args, int64_t index,
                         bool with_index)
{
    json_t *c = json_object(), *fn = json_object();
    if (c == NULL || fn == NULL || (with_index && put(c, "index", json_integer(index))) ||
        put(c, "id", json_string(id)) || put(c, "type", json_string("function")) ||
        put(fn, "name", json_string(name)) || put(fn, "arguments", json_string(args)) ||
        put(c, "function", json_incref(fn))) {
        json_decref(c);
        c = NULL;
    }
    json_decref(fn);
    return c;
}

/* Content blocks -> message text (appended to @text) and tool calls. */
static int answer_blocks(const json_t *content, struct kp_buf *text, json_t *calls, char *errmsg,
                         size_t errlen)
{
    size_t i;
    json_t *b;
    json_array_foreach(content, i, b)
    {
        const char *type = str(b, "type");
        if (type == NULL)
            return bad(errmsg, errlen, "content block without a type");
        if (strcmp(type, "text") == 0) {
            json_t *t = json_object_get(b, "text");
            if (!json_is_string(t))
                return bad(errmsg, errlen, "text block without a string text");
            if (kp_buf_append(text, json_string_value(t), json_string_length(t)) != 0)
                return oom_msg(errmsg, errlen);
        } else if (strcmp(type, "tool_use") == 0) {
            const char *id = str(b, "id"), *name = str(b, "name");
            json_t *input = json_object_get(b, "input");
            if (id == NULL || name == NULL || !json_is_object(input))
                return bad(errmsg, errlen, "tool_use block without id, name or input object");
            char *args = dumps_compact(input);
            json_t *c = args ? tool_call(id, name, args, 0, false) : NULL;
            kp_free(args);
            if (push(calls, c))
                return oom_msg(errmsg, errlen);
        }
        /* thinking, redacted_thinking, server tool blocks: no chat counterpart. */
    }
    return KP_OK;
}

int kp_anthropic_response_to_chat(const json_t *msg, const struct kp_chat_ident *ident,
                                  json_t **out, struct kp_usage_counts *usage, char *errmsg,
                                  size_t errlen)
{
    *out = NULL;
    *usage = (struct kp_usage_counts){0};
    if (!json_is_object(msg))
        return bad(errmsg, errlen, "not a JSON object");
    if (strcmp(str(msg, "type") ? str(msg, "type") : "", "error") == 0) {
        json_t *e = json_object_get(msg, "error");
        return kp_errf(errmsg, errlen, KP_EPARSE, "anthropic error: %s: %s",
                       str(e, "type") ? str(e, "type") : "error",
                       str(e, "message") ? str(e, "message") : "");
    }
    json_t *content = json_object_get(msg, "content");
    json_t *stop = json_object_get(msg, "stop_reason");
    json_t *u = json_object_get(msg, "usage");
    uint64_t in = 0, cread = 0, cwrite = 0, outn = 0;
    if (!json_is_array(content))
        return bad(errmsg, errlen, "content is not an array");
    if (stop != NULL && !json_is_null(stop) && !json_is_string(stop))
        return bad(errmsg, errlen, "stop_reason is not a string");
    if (u != NULL && !read_anthropic_usage(u, &in, &cread, &cwrite, &outn))
        return bad(errmsg, errlen, "usage holds something other than token counts");

    struct kp_buf text;
    kp_buf_init(&text);
    json_t *calls = json_array(), *res = json_object(), *message = json_object();
    json_t *choice = json_object(), *choices = json_array();
    int rc = calls && res && message && choice && choices ? KP_OK : oom_msg(errmsg, errlen);
    if (rc == KP_OK)
        rc = answer_blocks(content, &text, calls, errmsg, errlen);
    if (rc != KP_OK)
        goto fail;
    const char *model = ident->model ? ident->model : str(msg, "model");
    const char *finish = finish_from_stop(json_string_value(stop));
    bool has_calls = json_array_size(calls) > 0;
    if (put(res, "id", json_string(ident->id ? ident->id : "")) ||
        put(res, "object", json_string("chat.completion")) ||
        put(res, "created", json_integer(ident->created)) ||
        put(res, "model", json_string(model ? model : "")) ||
        put(message, "role", json_string("assistant")) ||
        put(message, "content",
            text.len || !has_calls ? strn(text.data ? text.data : "", text.len) : json_null()) ||
        put(message, "refusal", json_null()) ||
        (has_calls && put(message, "tool_calls", json_incref(calls))) ||
        put(choice, "index", json_integer(0)) || put(choice, "message", json_incref(message)) ||
        put(choice, "logprobs", json_null()) ||
        put(choice, "finish_reason", finish ? json_string(finish) : json_null()) ||
        push(choices, json_incref(choice)) || put(res, "choices", json_incref(choices)) ||
        (u != NULL && put(res, "usage", chat_usage(in + cread + cwrite, outn, cread)))) {
        rc = oom_msg(errmsg, errlen);
        goto fail;
    }
    if (u != NULL)
        *usage = (struct kp_usage_counts){in + cread + cwrite, outn, cread, true};
    *out = json_incref(res);
fail:
    kp_buf_free(&text);
    json_decref(calls);
    json_decref(message);
    json_decref(choice);
    json_decref(choices);
    json_decref(res);
    return rc;
}

/* === Anthropic events -> OpenAI chat chunks ============================= */

enum block_kind { BLOCK_TEXT, BLOCK_TOOL, BLOCK_OTHER };

/* A content block of the Anthropic message, by its index there. */
struct stream_block {
    int64_t index;
    enum block_kind kind;
    int64_t tool; /* tool_calls[] index for BLOCK_TOOL */
};

/* Anthropic numbers blocks from 0; a stream with more is broken. */
#define MAX_BLOCKS 4096

struct kp_anthropic_stream {
    char *id, *model;
    int64_t created;
    bool include_usage;
    bool started;  /* the role chunk went out */
    bool finished; /* the finish_reason chunk went out */
    bool done;     /* message_stop seen */
    uint64_t input, cache_read, cache_write, output;
    bool usage_seen;
    struct stream_block *blocks;
    size_t nblocks, cap;
    int64_t ntools;
};

struct kp_anthropic_stream *kp_anthropic_stream_new(const struct kp_chat_ident *ident,
                                                    bool include_usage)
{
    struct kp_anthropic_stream *s = kp_calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->id = kp_strdup(ident->id ? ident->id : "");
    s->model = ident->model ? kp_strdup(ident->model) : NULL;
    s->created = ident->created;
    s->include_usage = include_usage;
    if (s->id == NULL || (ident->model && s->model == NULL)) {
        kp_anthropic_stream_free(s);
        return NULL;
    }
    return s;
}

void kp_anthropic_stream_free(struct kp_anthropic_stream *s)
{
    if (s == NULL)
        return;
    kp_free(s->id);
    kp_free(s->model);
    kp_free(s->blocks);
    kp_free(s);
}

void kp_anthropic_stream_usage(const struct kp_anthropic_stream *s, struct kp_usage_counts *u)
{
    *u = (struct kp_usage_counts){s->input + s->cache_read + s->cache_write, s->output,
                                  s->cache_read, s->usage_seen};
}

bool kp_anthropic_stream_done(const struct kp_anthropic_stream *s)
{
    return s->done;
}

static int stream_bad(char *errmsg, size_t errlen, const char *what)
{
    return kp_errf(errmsg, errlen, KP_EPARSE, "anthropic stream: %s", what);
}

/* The chunk skeleton with @choices (taken). */
static json_t *chunk_new(const struct kp_anthropic_stream *s, json_t *choices)
{
    json_t *c = json_object();
    if (choices == NULL || c == NULL || put(c, "id", json_string(s->id)) ||
        put(c, "object", json_string("chat.completion.chunk")) ||
        put(c, "created", json_integer(s->created)) ||
        put(c, "model", json_string(s->model ? s->model : "")) ||
        put(c, "choices", json_incref(choices)) ||
        (s->include_usage && put(c, "usage", json_null()))) {
        json_decref(c);
        c = NULL;
    }
    json_decref(choices);
    return c;
}

static int emit_item(kp_adapter_emit_fn emit, void *arg, const char *event, json_t *item,
                     char *errmsg, size_t errlen)
{
    if (item == NULL)
        return oom_msg(errmsg, errlen);
    int rc = emit(arg, event, item);
    json_decref(item);
    return rc;
}

/* Emit a chunk with one choice: @delta (taken) and @finish. */
static int emit_delta(struct kp_anthropic_stream *s, json_t *delta, const char *finish,
                      kp_adapter_emit_fn emit, void *arg, char *errmsg, size_t errlen)
{
    json_t *choice = json_object(), *choices = json_array();
    int err = delta == NULL || choice == NULL || choices == NULL ||
              put(choice, "index", json_integer(0)) || put(choice, "delta", json_incref(delta)) ||
              put(choice, "logprobs", json_null()) ||
              put(choice, "finish_reason", finish ? json_string(finish) : json_null()) ||
              push(choices, json_incref(choice));
    json_decref(delta);
    json_decref(choice);
    if (err) {
        json_decref(choices);
        return oom_msg(errmsg, errlen);
    }
    return emit_item(emit, arg, NULL, chunk_new(s, choices), errmsg, errlen);
}

static json_t *content_delta(const json_t *text)
{
    return json_pack("{s:s%}", "content", json_string_value(text), json_string_length(text));
}

/* The first chunk names the role. */
static int ensure_started(struct kp_anthropic_stream *s, kp_adapter_emit_fn emit, void *arg,
                          char *errmsg, size_t errlen)
{
    if (s->started)
        return KP_OK;
    s->started = true;
    return emit_delta(s, json_pack("{s:s,s:s}", "role", "assistant", "content", ""), NULL, emit,
                      arg, errmsg, errlen);
}

static struct stream_block *find_block(struct kp_anthropic_stream *s, int64_t index)
{
    for (size_t i = 0; i < s->nblocks; i++)
        if (s->blocks[i].index == index)
            return &s->blocks[i];
    return NULL;
}

static int on_message_start(struct kp_anthropic_stream *s, const json_t *data,
                            kp_adapter_emit_fn emit, void *arg, char *errmsg, size_t errlen)
{
    json_t *m = json_object_get(data, "message");
    if (!json_is_object(m))
        return stream_bad(errmsg, errlen, "message_start without a message");
    json_t *u = json_object_get(m, "usage");
    if (u != NULL) {
        if (!read_anthropic_usage(u, &s->input, &s->cache_read, &s->cache_write, &s->output))
            return stream_bad(errmsg, errlen, "message_start usage is not token counts");
        s->usage_seen = true;
    }
    if (s->model == NULL && str(m, "model") != NULL &&
        (s->model = kp_strdup(str(m, "model"))) == NULL)
        return oom_msg(errmsg, errlen);
    return ensure_started(s, emit, arg, errmsg, errlen);
}

static int on_block_start(struct kp_anthropic_stream *s, const json_t *data,
                          kp_adapter_emit_fn emit, void *arg, char *errmsg, size_t errlen)
{
    json_t *index = json_object_get(data, "index");
    json_t *b = json_object_get(data, "content_block");
    const char *type = str(b, "type");
    if (!json_is_integer(index) || type == NULL)
        return stream_bad(errmsg, errlen, "content_block_start without index or content_block");
    if (find_block(s, json_integer_value(index)) != NULL)
        return stream_bad(errmsg, errlen, "content_block_start for a block already started");
    if (s->nblocks == MAX_BLOCKS)
        return stream_bad(errmsg, errlen, "too many content blocks");
    if (s->nblocks == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 4;
        struct stream_block *nb = kp_realloc(s->blocks, cap * sizeof(*nb));
        if (nb == NULL)
            return oom_msg(errmsg, errlen);
        s->blocks = nb;
        s->cap = cap;
    }
    struct stream_block *blk = &s->blocks[s->nblocks];
    *blk = (struct stream_block){json_integer_value(index), BLOCK_OTHER, 0};
    int rc = ensure_started(s, emit, arg, errmsg, errlen);
    if (rc != KP_OK)
        return rc;
    if (strcmp(type, "text") == 0) {
        blk->kind = BLOCK_TEXT;
        s->nblocks++;
        json_t *t = json_object_get(b, "text");
        if (json_string_length(t) == 0)
            return KP_OK;
        return emit_delta(s, content_delta(t), NULL, emit, arg, errmsg, errlen);
    }
    if (strcmp(type, "tool_use") != 0) {
        s->nblocks++; /* thinking and the like: their deltas are dropped */
        return KP_OK;
    }
    const char *id = str(b, "id"), *name = str(b, "name");
    if (id == NULL || name == NULL)
        return stream_bad(errmsg, errlen, "tool_use block without id or name");
    blk->kind = BLOCK_TOOL;
    blk->tool = s->ntools++;
    s->nblocks++;
    /* The input normally streams as input_json_delta after an empty {}. */
    json_t *input = json_object_get(b, "input");
    char *args = json_object_size(input) > 0 ? dumps_compact(input) : NULL;
    if (json_object_size(input) > 0 && args == NULL)
        return oom_msg(errmsg, errlen);
    json_t *calls = json_array();
    if (calls == NULL || push(calls, tool_call(id, name, args ? args : "", blk->tool, true))) {
        kp_free(args);
        json_decref(calls);
        return oom_msg(errmsg, errlen);
    }
    kp_free(args);
    json_t *delta = json_object();
    if (delta == NULL || put(delta, "tool_calls", calls)) {
        if (delta == NULL)
            json_decref(calls);
        json_decref(delta);
        return oom_msg(errmsg, errlen);
    }
    return emit_delta(s, delta, NULL, emit, arg, errmsg, errlen);
}

static int on_block_delta(struct kp_anthropic_stream *s, const json_t *data,
                          kp_adapter_emit_fn emit, void *arg, char *errmsg, size_t errlen)
{
    json_t *index = json_object_get(data, "index");
    json_t *d = json_object_get(data, "delta");
    const char *type = str(d, "type");
    if (!json_is_integer(index) || type == NULL)
        return stream_bad(errmsg, errlen, "content_block_delta without index or delta");
    struct stream_block *blk = find_block(s, json_integer_value(index));
    if (strcmp(type, "text_delta") == 0) {
        json_t *t = json_object_get(d, "text");
        if (!json_is_string(t))
            return stream_bad(errmsg, errlen, "text_delta without a string text");
        int rc = ensure_started(s, emit, arg, errmsg, errlen);
        if (rc != KP_OK || json_string_length(t) == 0)
            return rc;
        return emit_delta(s, content_delta(t), NULL, emit, arg, errmsg, errlen);
    }
    if (strcmp(type, "input_json_delta") == 0) {
        json_t *pj = json_object_get(d, "partial_json");
        if (!json_is_string(pj))
            return stream_bad(errmsg, errlen, "input_json_delta without a string partial_json");
        if (blk == NULL || blk->kind != BLOCK_TOOL)
            return stream_bad(errmsg, errlen, "input_json_delta for a block that is not tool_use");
        if (json_string_length(pj) == 0)
            return KP_OK;
        json_t *delta =
            json_pack("{s:[{s:I,s:{s:s%}}]}", "tool_calls", "index", (json_int_t)blk->tool,
                      "function", "arguments", json_string_value(pj), json_string_length(pj));
        return emit_delta(s, delta, NULL, emit, arg, errmsg, errlen);
    }
    return KP_OK; /* thinking_delta, signature_delta, citations_delta, ... */
}

static int emit_finish(struct kp_anthropic_stream *s, const char *finish, kp_adapter_emit_fn emit,
                       void *arg, char *errmsg, size_t errlen)
{
    if (s->finished)
        return KP_OK;
    int rc = ensure_started(s, emit, arg, errmsg, errlen);
    if (rc != KP_OK)
        return rc;
    s->finished = true;
    return emit_delta(s, json_object(), finish, emit, arg, errmsg, errlen);
}

static int on_message_delta(struct kp_anthropic_stream *s, const json_t *data,
                            kp_adapter_emit_fn emit, void *arg, char *errmsg, size_t errlen)
{
    json_t *u = json_object_get(data, "usage");
    if (u != NULL) {
        /* Counts are cumulative; recent streams repeat the input ones here. */
        if (!read_anthropic_usage(u, &s->input, &s->cache_read, &s->cache_write, &s->output))
            return stream_bad(errmsg, errlen, "message_delta usage is not token counts");
        s->usage_seen = true;
    }
    json_t *stop = json_object_get(json_object_get(data, "delta"), "stop_reason");
    if (stop == NULL || json_is_null(stop))
        return KP_OK;
    if (!json_is_string(stop))
        return stream_bad(errmsg, errlen, "stop_reason is not a string");
    return emit_finish(s, finish_from_stop(json_string_value(stop)), emit, arg, errmsg, errlen);
}

static int on_message_stop(struct kp_anthropic_stream *s, kp_adapter_emit_fn emit, void *arg,
                           char *errmsg, size_t errlen)
{
    int rc = emit_finish(s, "stop", emit, arg, errmsg, errlen);
    if (rc != KP_OK)
        return rc;
    s->done = true;
    if (!s->include_usage)
        return KP_OK;
    json_t *choices = json_array();
    json_t *c = choices ? chunk_new(s, choices) : NULL;
    if (c == NULL ||
        put(c, "usage",
            chat_usage(s->input + s->cache_read + s->cache_write, s->output, s->cache_read))) {
        json_decref(c);
        return oom_msg(errmsg, errlen);
    }
    return emit_item(emit, arg, NULL, c, errmsg, errlen);
}

int kp_anthropic_stream_event(struct kp_anthropic_stream *s, const char *event, const json_t *data,
                              kp_adapter_emit_fn emit, void *arg, char *errmsg, size_t errlen)
{
    if (!json_is_object(data))
        return stream_bad(errmsg, errlen, "event data is not a JSON object");
    /* The data's "type" repeats the SSE event name; it wins when present. */
    const char *type = str(data, "type") ? str(data, "type") : event;
    if (type == NULL)
        return stream_bad(errmsg, errlen, "event without a type");
    if (strcmp(type, "error") == 0) {
        json_t *e = json_object_get(data, "error");
        return kp_errf(errmsg, errlen, KP_EPARSE, "%s: %s",
                       str(e, "type") ? str(e, "type") : "error",
                       str(e, "message") ? str(e, "message") : "");
    }
    if (s->done)
        return KP_OK;
    if (strcmp(type, "message_start") == 0)
        return on_message_start(s, data, emit, arg, errmsg, errlen);
    if (strcmp(type, "content_block_start") == 0)
        return on_block_start(s, data, emit, arg, errmsg, errlen);
    if (strcmp(type, "content_block_delta") == 0)
        return on_block_delta(s, data, emit, arg, errmsg, errlen);
    if (strcmp(type, "message_delta") == 0)
        return on_message_delta(s, data, emit, arg, errmsg, errlen);
    if (strcmp(type, "message_stop") == 0)
        return on_message_stop(s, emit, arg, errmsg, errlen);
    return KP_OK; /* ping, content_block_stop, and event types added later */
}

/* === Anthropic Messages request -> OpenAI chat request ================== */

/* The chat messages being built. */
struct to_chat {
    struct refusal r;
    json_t *messages;
};

static int add_message(struct to_chat *c, json_t *msg)
{
    return msg == NULL || push(c->messages, msg) ? nomem(&c->r) : KP_OK;
}

static json_t *role_message(const char *role, json_t *content)
{
    json_t *m = json_object();
    if (content == NULL || m == NULL || put(m, "role", json_string(role)) ||
        put(m, "content", json_incref(content))) {
        json_decref(m);
        m = NULL;
    }
    json_decref(content);
    return m;
}

static int convert_system(struct to_chat *c, const json_t *system)
{
    if (system == NULL || json_is_null(system))
        return KP_OK;
    if (json_is_string(system))
        return json_string_length(system) == 0
                   ? KP_OK
                   : add_message(c, role_message("system", str_copy(system)));
    if (!json_is_array(system))
        return refuse(&c->r, "system must be a string or an array of text blocks", "system");
    size_t i;
    json_t *b;
    json_array_foreach(system, i, b)
    {
        json_t *text = json_object_get(b, "text");
        if (strcmp(str(b, "type") ? str(b, "type") : "", "text") != 0 || !json_is_string(text))
            return refuse(&c->r, "system blocks must be text blocks", "system[%zu].type", i);
        int rc = add_message(c, role_message("system", str_copy(text)));
        if (rc != KP_OK)
            return rc;
    }
    return KP_OK;
}

/* An Anthropic image block -> an OpenAI image_url part. */
static int image_part(struct refusal *r, const json_t *b, size_t i, size_t j, json_t **out)
{
    json_t *src = json_object_get(b, "source");
    const char *type = str(src, "type");
    json_t *url = NULL;
    if (type != NULL && strcmp(type, "base64") == 0) {
        const char *media = str(src, "media_type"), *data = str(src, "data");
        if (media == NULL || data == NULL)
            return refuse(r, "a base64 image source needs media_type and data",
                          "messages[%zu].content[%zu].source", i, j);
        struct kp_buf u;
        kp_buf_init(&u);
        if (kp_buf_appendf(&u, "data:%s;base64,%s", media, data) == 0)
            url = strn(u.data, u.len);
        kp_buf_free(&u);
    } else if (type != NULL && strcmp(type, "url") == 0) {
        json_t *s = json_object_get(src, "url");
        if (!json_is_string(s))
            return refuse(r, "a url image source needs a string url",
                          "messages[%zu].content[%zu].source.url", i, j);
        url = str_copy(s);
    } else {
        return refuse(r,
                      "only base64 and url image sources can be sent to this model (not file "
                      "ids)",
                      "messages[%zu].content[%zu].source.type", i, j);
    }
    json_t *part = json_object(), *iu = json_object();
    int err = url == NULL || part == NULL || iu == NULL || put(iu, "url", json_incref(url)) ||
              put(part, "type", json_string("image_url")) ||
              put(part, "image_url", json_incref(iu));
    json_decref(url);
    json_decref(iu);
    if (err) {
        json_decref(part);
        return nomem(r);
    }
    *out = part;
    return KP_OK;
}

static json_t *text_part(const json_t *text)
{
    json_t *p = json_object();
    if (p == NULL || put(p, "type", json_string("text")) || put(p, "text", str_copy(text))) {
        json_decref(p);
        return NULL;
    }
    return p;
}

/* Parts that are one text part are sent as a string. Takes @parts. */
static json_t *parts_value(json_t *parts)
{
    json_t *p = json_array_get(parts, 0);
    if (json_array_size(parts) == 1 && strcmp(str(p, "type"), "text") == 0) {
        json_t *s = json_incref(json_object_get(p, "text"));
        json_decref(parts);
        return s;
    }
    return parts;
}

static int refuse_block_type(struct refusal *r, const char *type, size_t i, size_t j)
{
    if (strcmp(type, "document") == 0)
        return refuse(r,
                      "document blocks (PDFs) cannot be sent to this model; extract the text and "
                      "send it as a text block",
                      "messages[%zu].content[%zu].type", i, j);
    char msg[160];
    snprintf(msg, sizeof(msg), "content block type \"%.40s\" cannot be sent to this model", type);
    return refuse(r, msg, "messages[%zu].content[%zu].type", i, j);
}

/* A tool_result block -> a role "tool" message. */
static int tool_message(struct to_chat *c, const json_t *b, size_t i, size_t j)
{
    json_t *id = json_object_get(b, "tool_use_id");
    json_t *content = json_object_get(b, "content");
    if (!json_is_string(id))
        return refuse(&c->r, "a tool_result needs a string tool_use_id",
                      "messages[%zu].content[%zu].tool_use_id", i, j);
    json_t *value;
    if (content == NULL || json_is_null(content)) {
        value = json_string("");
    } else if (json_is_string(content)) {
        value = str_copy(content);
    } else if (json_is_array(content)) {
        json_t *parts = json_array();
        size_t k;
        json_t *p;
        if (parts == NULL)
            return nomem(&c->r);
        json_array_foreach(content, k, p)
        {
            json_t *text = json_object_get(p, "text");
            if (strcmp(str(p, "type") ? str(p, "type") : "", "text") != 0 ||
                !json_is_string(text)) {
                json_decref(parts);
                return refuse(&c->r, "tool results can hold only text for this model",
                              "messages[%zu].content[%zu].content[%zu].type", i, j, k);
            }
            if (push(parts, text_part(text))) {
                json_decref(parts);
                return nomem(&c->r);
            }
        }
        value = json_array_size(parts) ? parts_value(parts) : (json_decref(parts), json_string(""));
    } else {
        return refuse(&c->r, "tool_result content must be a string or an array of blocks",
                      "messages[%zu].content[%zu].content", i, j);
    }
    json_t *m = role_message("tool", value);
    if (m == NULL || put(m, "tool_call_id", str_copy(id))) {
        json_decref(m);
        return nomem(&c->r);
    }
    return add_message(c, m);
}

/* A user turn: its tool results first (each a tool message, as OpenAI
 * wants them right after the assistant's tool calls), then the rest. */
static int user_messages(struct to_chat *c, const json_t *content, size_t i)
{
    json_t *parts = json_array();
    if (parts == NULL)
        return nomem(&c->r);
    size_t j;
    json_t *b;
    int rc = KP_OK;
    json_array_foreach(content, j, b)
    {
        const char *type = str(b, "type");
        json_t *part = NULL;
        if (type == NULL)
            rc = refuse(&c->r, "a content block needs a string type", "messages[%zu].content[%zu]",
                        i, j);
        else if (strcmp(type, "text") == 0 && json_is_string(json_object_get(b, "text")))
            rc = (part = text_part(json_object_get(b, "text"))) ? KP_OK : nomem(&c->r);
        else if (strcmp(type, "text") == 0)
            rc = refuse(&c->r, "a text block needs a string text",
                        "messages[%zu].content[%zu].text", i, j);
        else if (strcmp(type, "image") == 0)
            rc = image_part(&c->r, b, i, j, &part);
        else if (strcmp(type, "tool_result") == 0)
            rc = tool_message(c, b, i, j);
        else
            rc = refuse_block_type(&c->r, type, i, j);
        if (rc == KP_OK && part != NULL && push(parts, part))
            rc = nomem(&c->r);
        if (rc != KP_OK)
            break;
    }
    if (rc != KP_OK || json_array_size(parts) == 0) {
        json_decref(parts);
        return rc;
    }
    return add_message(c, role_message("user", parts_value(parts)));
}

static int assistant_message(struct to_chat *c, const json_t *content, size_t i)
{
    struct kp_buf text;
    kp_buf_init(&text);
    json_t *calls = json_array();
    int rc = calls ? KP_OK : nomem(&c->r);
    size_t j;
    json_t *b;
    json_array_foreach(content, j, b)
    {
        const char *type = str(b, "type");
        if (rc != KP_OK)
            break;
        if (type == NULL) {
            rc = refuse(&c->r, "a content block needs a string type", "messages[%zu].content[%zu]",
                        i, j);
        } else if (strcmp(type, "text") == 0) {
            json_t *t = json_object_get(b, "text");
            if (!json_is_string(t))
                rc = refuse(&c->r, "a text block needs a string text",
                            "messages[%zu].content[%zu].text", i, j);
            else if (kp_buf_append(&text, json_string_value(t), json_string_length(t)) != 0)
                rc = nomem(&c->r);
        } else if (strcmp(type, "tool_use") == 0) {
            const char *id = str(b, "id"), *name = str(b, "name");
            json_t *input = json_object_get(b, "input");
            if (id == NULL || name == NULL || !json_is_object(input)) {
                rc = refuse(&c->r, "a tool_use block needs string id and name and an object input",
                            "messages[%zu].content[%zu]", i, j);
                break;
            }
            char *args = dumps_compact(input);
            if (args == NULL || push(calls, tool_call(id, name, args, 0, false)))
                rc = nomem(&c->r);
            kp_free(args);
        } else if (strcmp(type, "thinking") != 0 && strcmp(type, "redacted_thinking") != 0) {
            rc = refuse_block_type(&c->r, type, i, j);
        }
    }
    json_t *m = NULL;
    if (rc == KP_OK) {
        bool has_calls = json_array_size(calls) > 0;
        m = role_message("assistant", text.len || !has_calls
                                          ? strn(text.data ? text.data : "", text.len)
                                          : json_null());
        if (m == NULL || (has_calls && put(m, "tool_calls", json_incref(calls))))
            rc = nomem(&c->r);
    }
    kp_buf_free(&text);
    json_decref(calls);
    if (rc != KP_OK) {
        json_decref(m);
        return rc;
    }
    return add_message(c, m);
}

static int convert_turn(struct to_chat *c, const json_t *turn, size_t i)
{
    const char *role = str(turn, "role");
    json_t *content = json_object_get(turn, "content");
    if (role == NULL || (strcmp(role, "user") != 0 && strcmp(role, "assistant") != 0))
        return refuse(&c->r, "role must be user or assistant", "messages[%zu].role", i);
    if (json_is_string(content))
        return add_message(c, role_message(role, str_copy(content)));
    if (!json_is_array(content))
        return refuse(&c->r, "content must be a string or an array of content blocks",
                      "messages[%zu].content", i);
    if (strcmp(role, "user") == 0)
        return user_messages(c, content, i);
    return assistant_message(c, content, i);
}

static int convert_anthropic_tools(struct refusal *r, const json_t *tools, json_t **out)
{
    if (!json_is_array(tools))
        return refuse(r, "tools must be an array", "tools");
    json_t *list = json_array();
    if (list == NULL)
        return nomem(r);
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t)
    {
        const char *type = str(t, "type");
        json_t *name = json_object_get(t, "name");
        json_t *desc = json_object_get(t, "description");
        json_t *schema = json_object_get(t, "input_schema");
        int rc = KP_OK;
        if (type != NULL && strcmp(type, "custom") != 0)
            rc = refuse(r,
                        "server tools (web search, code execution, computer use, ...) run on "
                        "Anthropic's side and cannot be used with this model",
                        "tools[%zu].type", i);
        else if (!json_is_string(name))
            rc = refuse(r, "a tool needs a string name", "tools[%zu].name", i);
        else if (!json_is_object(schema))
            rc = refuse(r, "a tool needs an input_schema object", "tools[%zu].input_schema", i);
        else if (desc != NULL && !json_is_null(desc) && !json_is_string(desc))
            rc = refuse(r, "description must be a string", "tools[%zu].description", i);
        if (rc != KP_OK) {
            json_decref(list);
            return rc;
        }
        json_t *fn = json_object(), *tool = json_object();
        int err = fn == NULL || tool == NULL || put(fn, "name", str_copy(name)) ||
                  (json_is_string(desc) && put(fn, "description", str_copy(desc))) ||
                  put(fn, "parameters", copy(schema)) ||
                  put(tool, "type", json_string("function")) ||
                  put(tool, "function", json_incref(fn)) || push(list, json_incref(tool));
        json_decref(fn);
        json_decref(tool);
        if (err) {
            json_decref(list);
            return nomem(r);
        }
    }
    *out = list;
    return KP_OK;
}

/* Anthropic tool_choice -> OpenAI tool_choice and parallel_tool_calls. */
static int convert_anthropic_choice(struct refusal *r, const json_t *tc, json_t *body)
{
    const char *type = str(tc, "type");
    json_t *v;
    if (type == NULL)
        return refuse(r, "tool_choice needs a type", "tool_choice.type");
    if (strcmp(type, "auto") == 0 || strcmp(type, "none") == 0) {
        v = json_string(type);
    } else if (strcmp(type, "any") == 0) {
        v = json_string("required");
    } else if (strcmp(type, "tool") == 0) {
        const char *name = str(tc, "name");
        if (name == NULL)
            return refuse(r, "a tool tool_choice needs a name", "tool_choice.name");
        v = json_pack("{s:s,s:{s:s}}", "type", "function", "function", "name", name);
    } else {
        return refuse(r, "tool_choice.type must be auto, any, tool or none", "tool_choice.type");
    }
    if (put(body, "tool_choice", v) ||
        (json_is_true(json_object_get(tc, "disable_parallel_tool_use")) &&
         strcmp(type, "none") != 0 && put(body, "parallel_tool_calls", json_false())))
        return nomem(r);
    return KP_OK;
}

static int convert_anthropic_params(struct refusal *r, const json_t *msg, json_t *body)
{
    json_t *max = json_object_get(msg, "max_tokens");
    if (max != NULL && (!json_is_integer(max) || json_integer_value(max) <= 0))
        return refuse(r, "max_tokens must be a positive integer", "max_tokens");
    if (max != NULL && put(body, "max_tokens", copy(max)))
        return nomem(r);
    json_t *stop = json_object_get(msg, "stop_sequences");
    size_t i;
    json_t *s;
    json_array_foreach(stop, i, s)
    {
        if (!json_is_string(s))
            return refuse(r, "stop sequences must be strings", "stop_sequences[%zu]", i);
    }
    if (stop != NULL && !json_is_null(stop) && !json_is_array(stop))
        return refuse(r, "stop_sequences must be an array of strings", "stop_sequences");
    if (json_array_size(stop) > 0 && put(body, "stop", copy(stop)))
        return nomem(r);
    static const char *numbers[] = {"temperature", "top_p"};
    for (size_t k = 0; k < 2; k++) {
        json_t *x = json_object_get(msg, numbers[k]);
        if (x != NULL && !json_is_null(x) && !json_is_number(x)) {
            char why[80];
            snprintf(why, sizeof(why), "%s must be a number", numbers[k]);
            return refuse(r, why, "%s", numbers[k]);
        }
        if (json_is_number(x) && put(body, numbers[k], copy(x)))
            return nomem(r);
    }
    if (json_is_true(json_object_get(msg, "stream")) &&
        (put(body, "stream", json_true()) ||
         put(body, "stream_options", json_pack("{s:b}", "include_usage", 1))))
        return nomem(r);
    const char *user = str(json_object_get(msg, "metadata"), "user_id");
    if (user != NULL && put(body, "user", json_string(user)))
        return nomem(r);
    return KP_OK;
}

int kp_chat_request_from_anthropic(const json_t *msg, const char *model, json_t **out, char *errmsg,
                                   size_t errlen, char *param, size_t paramlen)
{
    struct to_chat c;
    refusal_init(&c.r, errmsg, errlen, param, paramlen);
    *out = NULL;
    if (!json_is_object(msg))
        return refuse(&c.r, "the request body must be a JSON object", "%s", "");
    json_t *turns = json_object_get(msg, "messages");
    if (!json_is_array(turns))
        return refuse(&c.r, "messages must be an array", "messages");
    const char *name = model ? model : str(msg, "model");
    json_t *body = json_object(), *tools = NULL;
    c.messages = json_array();
    int rc;
    if (body == NULL || c.messages == NULL || put(body, "model", json_string(name ? name : "")))
        goto oom;
    if ((rc = convert_system(&c, json_object_get(msg, "system"))) != KP_OK)
        goto fail;
    size_t i;
    json_t *turn;
    json_array_foreach(turns, i, turn)
    {
        if (!json_is_object(turn)) {
            rc = refuse(&c.r, "a message must be an object", "messages[%zu]", i);
            goto fail;
        }
        if ((rc = convert_turn(&c, turn, i)) != KP_OK)
            goto fail;
    }
    if (put(body, "messages", json_incref(c.messages)))
        goto oom;
    json_t *t = json_object_get(msg, "tools");
    if (t != NULL && !json_is_null(t) && (rc = convert_anthropic_tools(&c.r, t, &tools)) != KP_OK)
        goto fail;
    if (json_array_size(tools) > 0 && put(body, "tools", json_incref(tools)))
        goto oom;
    json_t *tc = json_object_get(msg, "tool_choice");
    if (tc != NULL && !json_is_null(tc) && json_array_size(tools) > 0 &&
        (rc = convert_anthropic_choice(&c.r, tc, body)) != KP_OK)
        goto fail;
    if ((rc = convert_anthropic_params(&c.r, msg, body)) != KP_OK)
        goto fail;
    json_decref(c.messages);
    json_decref(tools);
    *out = body;
    return KP_OK;
oom:
    rc = nomem(&c.r);
fail:
    json_decref(c.messages);
    json_decref(tools);
    json_decref(body);
    return rc;
}

/* === OpenAI chat completion -> Anthropic Messages response ============== */

static int chat_bad(char *errmsg, size_t errlen, const char *what)
{
    return kp_errf(errmsg, errlen, KP_EPARSE, "chat completion: %s", what);
}

/* message.content (string, null or text parts) -> text blocks. */
static int chat_text_blocks(const json_t *content, json_t *blocks, char *errmsg, size_t errlen)
{
    if (json_is_string(content))
        return json_string_length(content) == 0 || !push(blocks, text_block(content))
                   ? KP_OK
                   : oom_msg(errmsg, errlen);
    if (content != NULL && !json_is_null(content) && !json_is_array(content))
        return chat_bad(errmsg, errlen, "message.content is not a string or an array");
    size_t i;
    json_t *p;
    json_array_foreach(content, i, p)
    {
        json_t *t = json_object_get(p, "text");
        if (json_is_string(t) && json_string_length(t) > 0 && push(blocks, text_block(t)))
            return oom_msg(errmsg, errlen);
    }
    return KP_OK;
}

static int chat_tool_blocks(const json_t *calls, json_t *blocks, char *errmsg, size_t errlen)
{
    size_t i;
    json_t *call;
    json_array_foreach(calls, i, call)
    {
        json_t *fn = json_object_get(call, "function");
        json_t *id = json_object_get(call, "id"), *name = json_object_get(fn, "name");
        json_t *args = json_object_get(fn, "arguments");
        if (!json_is_string(id) || !json_is_string(name) || (args && !json_is_string(args)))
            return chat_bad(errmsg, errlen, "tool call without string id, name and arguments");
        json_t *input = NULL;
        int rc = parse_arguments(args ? json_string_value(args) : "",
                                 args ? json_string_length(args) : 0, &input);
        if (rc == KP_ENOMEM)
            return oom_msg(errmsg, errlen);
        if (rc != KP_OK)
            return chat_bad(errmsg, errlen, "tool call arguments are not a JSON object");
        json_t *b = json_object();
        int err = b == NULL || put(b, "type", json_string("tool_use")) ||
                  put(b, "id", str_copy(id)) || put(b, "name", str_copy(name)) ||
                  put(b, "input", json_incref(input)) || push(blocks, json_incref(b));
        json_decref(input);
        json_decref(b);
        if (err)
            return oom_msg(errmsg, errlen);
    }
    return KP_OK;
}

int kp_chat_response_to_anthropic(const json_t *chat, const char *msg_id, const char *model,
                                  json_t **out, struct kp_usage_counts *usage, char *errmsg,
                                  size_t errlen)
{
    *out = NULL;
    *usage = (struct kp_usage_counts){0};
    json_t *choice = json_array_get(json_object_get(chat, "choices"), 0);
    json_t *message = json_object_get(choice, "message");
    if (!json_is_object(message))
        return chat_bad(errmsg, errlen, "no choices[0].message");
    json_t *u = json_object_get(chat, "usage");
    struct kp_usage_counts counts = {0};
    if (u != NULL && !json_is_null(u) && !read_chat_usage(u, &counts))
        return chat_bad(errmsg, errlen, "usage holds something other than token counts");
    json_t *calls = json_object_get(message, "tool_calls");
    if (calls != NULL && !json_is_null(calls) && !json_is_array(calls))
        return chat_bad(errmsg, errlen, "message.tool_calls is not an array");
    json_t *blocks = json_array(), *res = json_object();
    int rc = blocks && res ? KP_OK : oom_msg(errmsg, errlen);
    if (rc == KP_OK)
        rc = chat_text_blocks(json_object_get(message, "content"), blocks, errmsg, errlen);
    json_t *refusal = json_object_get(message, "refusal");
    if (rc == KP_OK && json_string_length(refusal) > 0 && push(blocks, text_block(refusal)))
        rc = oom_msg(errmsg, errlen);
    if (rc == KP_OK)
        rc = chat_tool_blocks(calls, blocks, errmsg, errlen);
    if (rc != KP_OK)
        goto fail;
    const char *name = model ? model : str(chat, "model");
    if (put(res, "id", json_string(msg_id ? msg_id : "")) ||
        put(res, "type", json_string("message")) || put(res, "role", json_string("assistant")) ||
        put(res, "model", json_string(name ? name : "")) ||
        put(res, "content", json_incref(blocks)) ||
        put(res, "stop_reason", json_string(stop_from_finish(str(choice, "finish_reason")))) ||
        put(res, "stop_sequence", json_null()) ||
        put(res, "usage", messages_usage(counts.input, counts.output, counts.cached))) {
        rc = oom_msg(errmsg, errlen);
        goto fail;
    }
    *usage = counts;
    *out = json_incref(res);
fail:
    json_decref(blocks);
    json_decref(res);
    return rc;
}

/* === OpenAI chat chunks -> Anthropic Messages events ==================== */

enum open_block { OPEN_NONE, OPEN_TEXT, OPEN_TOOL };

struct kp_messages_stream {
    char *id, *model;
    bool started, done;
    enum open_block open;
    int64_t block;   /* Anthropic index of the open block */
    int64_t nblocks; /* blocks started so far */
    int64_t tool;    /* OpenAI tool_calls index of the open tool block */
    int64_t *tools;  /* tool_calls indexes already given a block */
    size_t ntools, cap;
    const char *stop_reason;
    struct kp_usage_counts usage;
};

struct kp_messages_stream *kp_messages_stream_new(const char *msg_id, const char *model)
{
    struct kp_messages_stream *s = kp_calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->id = kp_strdup(msg_id ? msg_id : "");
    s->model = model ? kp_strdup(model) : NULL;
    if (s->id == NULL || (model && s->model == NULL)) {
        kp_messages_stream_free(s);
        return NULL;
    }
    return s;
}

void kp_messages_stream_free(struct kp_messages_stream *s)
{
    if (s == NULL)
        return;
    kp_free(s->id);
    kp_free(s->model);
    kp_free(s->tools);
    kp_free(s);
}

void kp_messages_stream_usage(const struct kp_messages_stream *s, struct kp_usage_counts *u)
{
    *u = s->usage;
}

/* An event's data starts with its type, as Anthropic writes it. */
static json_t *event_new(const char *type)
{
    return json_pack("{s:s}", "type", type);
}

/* Emit @ev (taken), named by its type. */
static int emit_event(kp_adapter_emit_fn emit, void *arg, json_t *ev, char *errmsg, size_t errlen)
{
    return emit_item(emit, arg, ev ? str(ev, "type") : NULL, ev, errmsg, errlen);
}

static int start_message(struct kp_messages_stream *s, kp_adapter_emit_fn emit, void *arg,
                         char *errmsg, size_t errlen)
{
    if (s->started)
        return KP_OK;
    s->started = true;
    json_t *m = json_pack("{s:s,s:s,s:s,s:s,s:[],s:n,s:n}", "id", s->id, "type", "message", "role",
                          "assistant", "model", s->model ? s->model : "", "content", "stop_reason",
                          "stop_sequence");
    if (m == NULL || put(m, "usage", messages_usage(s->usage.input, 0, s->usage.cached))) {
        json_decref(m);
        return oom_msg(errmsg, errlen);
    }
    json_t *ev = event_new("message_start");
    if (ev == NULL || put(ev, "message", m)) { /* put takes @m even when it fails */
        if (ev == NULL)
            json_decref(m);
        json_decref(ev);
        return oom_msg(errmsg, errlen);
    }
    return emit_event(emit, arg, ev, errmsg, errlen);
}

static int close_block(struct kp_messages_stream *s, kp_adapter_emit_fn emit, void *arg,
                       char *errmsg, size_t errlen)
{
    if (s->open == OPEN_NONE)
        return KP_OK;
    s->open = OPEN_NONE;
    return emit_event(emit, arg,
                      json_pack("{s:s,s:I}", "type", "content_block_stop", "index", s->block),
                      errmsg, errlen);
}

/* Open a block whose content_block is @cb (taken). */
static int open_block(struct kp_messages_stream *s, enum open_block kind, json_t *cb,
                      kp_adapter_emit_fn emit, void *arg, char *errmsg, size_t errlen)
{
    int rc = close_block(s, emit, arg, errmsg, errlen);
    if (rc != KP_OK) {
        json_decref(cb);
        return rc;
    }
    s->open = kind;
    s->block = s->nblocks++;
    json_t *ev = event_new("content_block_start");
    int err = cb == NULL || ev == NULL || put(ev, "index", json_integer(s->block)) ||
              put(ev, "content_block", json_incref(cb));
    json_decref(cb);
    if (err) {
        json_decref(ev);
        return oom_msg(errmsg, errlen);
    }
    return emit_event(emit, arg, ev, errmsg, errlen);
}

/* content_block_delta for the open block: @delta (taken). */
static int block_delta(struct kp_messages_stream *s, json_t *delta, kp_adapter_emit_fn emit,
                       void *arg, char *errmsg, size_t errlen)
{
    json_t *ev = event_new("content_block_delta");
    int err = delta == NULL || ev == NULL || put(ev, "index", json_integer(s->block)) ||
              put(ev, "delta", json_incref(delta));
    json_decref(delta);
    if (err) {
        json_decref(ev);
        return oom_msg(errmsg, errlen);
    }
    return emit_event(emit, arg, ev, errmsg, errlen);
}

static int stream_text(struct kp_messages_stream *s, const json_t *text, kp_adapter_emit_fn emit,
                       void *arg, char *errmsg, size_t errlen)
{
    if (json_string_length(text) == 0)
        return KP_OK;
    int rc = KP_OK;
    if (s->open != OPEN_TEXT)
        rc = open_block(s, OPEN_TEXT, json_pack("{s:s,s:s}", "type", "text", "text", ""), emit, arg,
                        errmsg, errlen);
    if (rc != KP_OK)
        return rc;
    return block_delta(s,
                       json_pack("{s:s,s:s%}", "type", "text_delta", "text",
                                 json_string_value(text), json_string_length(text)),
                       emit, arg, errmsg, errlen);
}

static bool tool_seen(const struct kp_messages_stream *s, int64_t index)
{
    for (size_t i = 0; i < s->ntools; i++)
        if (s->tools[i] == index)
            return true;
    return false;
}

static int start_tool(struct kp_messages_stream *s, const json_t *tc, int64_t index,
                      kp_adapter_emit_fn emit, void *arg, char *errmsg, size_t errlen)
{
    const char *name = str(json_object_get(tc, "function"), "name");
    const char *id = str(tc, "id");
    char made[96];
    if (tool_seen(s, index))
        return chat_bad(errmsg, errlen,
                        "a tool call continued after another block started (interleaved tool "
                        "calls cannot be Anthropic content blocks)");
    if (name == NULL)
        return chat_bad(errmsg, errlen, "the first delta of a tool call has no function.name");
    if (id == NULL) { /* some servers send none; the block needs one */
        snprintf(made, sizeof(made), "toolu_%.64s_%" PRId64, s->id, index);
        id = made;
    }
    if (s->ntools == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 4;
        int64_t *t = kp_realloc(s->tools, cap * sizeof(*t));
        if (t == NULL)
            return oom_msg(errmsg, errlen);
        s->tools = t;
        s->cap = cap;
    }
    s->tools[s->ntools++] = index;
    json_t *cb =
        json_pack("{s:s,s:s,s:s,s:{}}", "type", "tool_use", "id", id, "name", name, "input");
    int rc = open_block(s, OPEN_TOOL, cb, emit, arg, errmsg, errlen);
    s->tool = index;
    return rc;
}

static int stream_tool_calls(struct kp_messages_stream *s, const json_t *calls,
                             kp_adapter_emit_fn emit, void *arg, char *errmsg, size_t errlen)
{
    size_t i;
    json_t *tc;
    json_array_foreach(calls, i, tc)
    {
        json_t *jindex = json_object_get(tc, "index");
        int64_t index;
        if (!json_is_object(tc))
            return chat_bad(errmsg, errlen, "a tool_calls delta is not an object");
        if (json_is_integer(jindex))
            index = json_integer_value(jindex);
        else if (str(tc, "id") != NULL || s->open != OPEN_TOOL)
            index = (int64_t)s->ntools; /* no index: a new call, numbered in order */
        else
            index = s->tool;
        int rc = KP_OK;
        if (s->open != OPEN_TOOL || index != s->tool)
            rc = start_tool(s, tc, index, emit, arg, errmsg, errlen);
        json_t *args = json_object_get(json_object_get(tc, "function"), "arguments");
        if (rc == KP_OK && json_string_length(args) > 0)
            rc = block_delta(s,
                             json_pack("{s:s,s:s%}", "type", "input_json_delta", "partial_json",
                                       json_string_value(args), json_string_length(args)),
                             emit, arg, errmsg, errlen);
        if (rc != KP_OK)
            return rc;
    }
    return KP_OK;
}

static int stream_choice(struct kp_messages_stream *s, const json_t *choice,
                         kp_adapter_emit_fn emit, void *arg, char *errmsg, size_t errlen)
{
    json_t *index = json_object_get(choice, "index");
    if (json_is_integer(index) && json_integer_value(index) != 0)
        return KP_OK; /* n > 1 was not asked for */
    json_t *delta = json_object_get(choice, "delta");
    int rc = stream_text(s, json_object_get(delta, "content"), emit, arg, errmsg, errlen);
    if (rc == KP_OK)
        rc = stream_text(s, json_object_get(delta, "refusal"), emit, arg, errmsg, errlen);
    if (rc == KP_OK)
        rc = stream_tool_calls(s, json_object_get(delta, "tool_calls"), emit, arg, errmsg, errlen);
    const char *finish = str(choice, "finish_reason");
    if (rc == KP_OK && finish != NULL) {
        s->stop_reason = stop_from_finish(finish);
        rc = close_block(s, emit, arg, errmsg, errlen);
    }
    return rc;
}

static int end_message(struct kp_messages_stream *s, kp_adapter_emit_fn emit, void *arg,
                       char *errmsg, size_t errlen)
{
    int rc = start_message(s, emit, arg, errmsg, errlen);
    if (rc == KP_OK)
        rc = close_block(s, emit, arg, errmsg, errlen);
    if (rc != KP_OK)
        return rc;
    s->done = true;
    json_t *ev = json_pack("{s:s,s:{s:s,s:n}}", "type", "message_delta", "delta", "stop_reason",
                           s->stop_reason ? s->stop_reason : "end_turn", "stop_sequence");
    if (ev == NULL ||
        put(ev, "usage", messages_usage(s->usage.input, s->usage.output, s->usage.cached))) {
        json_decref(ev);
        return oom_msg(errmsg, errlen);
    }
    rc = emit_event(emit, arg, ev, errmsg, errlen);
    if (rc != KP_OK)
        return rc;
    return emit_event(emit, arg, event_new("message_stop"), errmsg, errlen);
}

int kp_messages_stream_chunk(struct kp_messages_stream *s, const json_t *chunk,
                             kp_adapter_emit_fn emit, void *arg, char *errmsg, size_t errlen)
{
    if (s->done)
        return KP_OK;
    if (chunk == NULL)
        return end_message(s, emit, arg, errmsg, errlen);
    if (!json_is_object(chunk))
        return chat_bad(errmsg, errlen, "a chunk is not a JSON object");
    json_t *err = json_object_get(chunk, "error");
    if (json_is_object(err))
        return kp_errf(errmsg, errlen, KP_EPARSE, "%s",
                       str(err, "message") ? str(err, "message") : "upstream stream error");
    json_t *u = json_object_get(chunk, "usage");
    if (u != NULL && !json_is_null(u) && !read_chat_usage(u, &s->usage))
        return chat_bad(errmsg, errlen, "usage holds something other than token counts");
    json_t *choices = json_object_get(chunk, "choices");
    if (choices != NULL && !json_is_array(choices))
        return chat_bad(errmsg, errlen, "choices is not an array");
    if (s->model == NULL && str(chunk, "model") != NULL &&
        (s->model = kp_strdup(str(chunk, "model"))) == NULL)
        return oom_msg(errmsg, errlen);
    int rc = start_message(s, emit, arg, errmsg, errlen);
    size_t i;
    json_t *choice;
    json_array_foreach(choices, i, choice)
    {
        if (rc != KP_OK)
            break;
        rc = stream_choice(s, choice, emit, arg, errmsg, errlen);
    }
    return rc;
}

/* router/adapter_anthropic_request: the two request translations between
 * OpenAI chat completions and Anthropic Messages (router/adapter.h):
 * kp_anthropic_request_from_chat (an app's chat request -> a Messages
 * request) and kp_chat_request_from_anthropic (an Anthropic SDK user's
 * Messages request -> a chat request for an OpenAI-shaped provider).
 *
 * What cannot be expressed on the other side is refused with KP_EINVAL, a
 * message saying what to do instead, and the param path at fault; jansson
 * out of memory is KP_ENOMEM. The decisions (merged turns, refused and
 * dropped fields, tool_choice "none", ...) are listed at the top of
 * adapter_anthropic.c and stated again where each is made. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "router/adapter_internal.h"

/* --- refusals ------------------------------------------------------------ */

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

static json_t *copy(const json_t *v)
{
    return json_deep_copy(v);
}

static bool present(const json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return v != NULL && !json_is_null(v);
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
    if (last != NULL && strcmp(kp_adapter__str(last, "role"), role) == 0) {
        int rc = json_array_extend(json_object_get(last, "content"), blocks);
        json_decref(blocks);
        return rc ? nomem(&m->r) : KP_OK;
    }
    json_t *turn = json_object();
    int err = turn == NULL || kp_adapter__put(turn, "role", json_string(role)) ||
              kp_adapter__put(turn, "content", json_incref(blocks)) ||
              kp_adapter__push(m->turns, json_incref(turn));
    json_decref(turn);
    json_decref(blocks);
    return err ? nomem(&m->r) : KP_OK;
}

/* Append a text block for @text unless it is empty. */
static int add_text(struct refusal *r, json_t *blocks, const json_t *text)
{
    if (json_string_length(text) == 0)
        return KP_OK;
    return kp_adapter__push(blocks, kp_adapter__text_block(text)) ? nomem(r) : KP_OK;
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
    const char *url = json_is_string(iu) ? json_string_value(iu) : kp_adapter__str(iu, "url");
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
        if (kp_adapter__put(src, "type", json_string("base64")) ||
            kp_adapter__put(src, "media_type",
                            jpg ? json_string("image/jpeg") : kp_adapter__strn(media, mlen)) ||
            kp_adapter__put(src, "data", json_string(comma + 1)))
            goto oom;
    } else if (strncmp(url, "https://", 8) == 0) {
        if (kp_adapter__put(src, "type", json_string("url")) ||
            kp_adapter__put(src, "url", json_string(url)))
            goto oom;
    } else {
        rc = refuse(r,
                    "Anthropic models take images as https: URLs or base64 data: URLs; "
                    "fetch the image and send it as data:image/...;base64,...",
                    "messages[%zu].content[%zu].image_url.url", i, j);
        goto fail;
    }
    if (kp_adapter__put(b, "type", json_string("image")) ||
        kp_adapter__put(b, "source", json_incref(src)))
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
        const char *type = kp_adapter__str(part, "type");
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
            if (rc == KP_OK && kp_adapter__push(blocks, b))
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
    const char *type = kp_adapter__str(call, "type");
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
    int rc = kp_adapter__parse_arguments(args ? json_string_value(args) : "",
                                         args ? json_string_length(args) : 0, &input);
    if (rc == KP_ENOMEM)
        return nomem(r);
    if (rc != KP_OK)
        return refuse(r,
                      "function.arguments is not a JSON object; Anthropic models need the "
                      "tool input as an object (send \"{}\" for no arguments)",
                      "messages[%zu].tool_calls[%zu].function.arguments", i, j);
    json_t *b = json_object();
    if (b == NULL || kp_adapter__put(b, "type", json_string("tool_use")) ||
        kp_adapter__put(b, "id", kp_adapter__str_copy(id)) ||
        kp_adapter__put(b, "name", kp_adapter__str_copy(name)) ||
        kp_adapter__put(b, "input", json_incref(input))) {
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
        if (kp_adapter__push(blocks, b)) {
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
    if (b == NULL || blocks == NULL || kp_adapter__put(b, "type", json_string("tool_result")) ||
        kp_adapter__put(b, "tool_use_id", kp_adapter__str_copy(id)))
        goto oom;
    if (json_is_string(content)) {
        if (json_string_length(content) > 0 &&
            kp_adapter__put(b, "content", kp_adapter__str_copy(content)))
            goto oom;
    } else {
        result = json_array();
        if (result == NULL)
            goto oom;
        if ((rc = content_blocks(&m->r, content, i, false, result)) != KP_OK)
            goto fail;
        if (json_array_size(result) > 0 && kp_adapter__put(b, "content", json_incref(result)))
            goto oom;
        json_decref(result);
        result = NULL;
    }
    if (kp_adapter__push(blocks, json_incref(b)))
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
            const char *type = kp_adapter__str(part, "type");
            if (type == NULL || strcmp(type, "text") != 0)
                return refuse(&m->r, "system messages can hold only text for Anthropic models",
                              "messages[%zu].content[%zu].type", i, j);
        }
    }
    return content_blocks(&m->r, content, i, false, m->system);
}

static int convert_message(struct to_messages *m, const json_t *msg, size_t i)
{
    const char *role = kp_adapter__str(msg, "role");
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
            strcmp(kp_adapter__str(b, "type"), "text") == 0) {
            json_t *text = json_incref(json_object_get(b, "text"));
            if (kp_adapter__put(turn, "content", text))
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
        const char *type = kp_adapter__str(tool, "type");
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
        if (t == NULL || kp_adapter__put(t, "name", kp_adapter__str_copy(name)) ||
            (json_is_string(desc) &&
             kp_adapter__put(t, "description", kp_adapter__str_copy(desc))) ||
            kp_adapter__put(t, "input_schema",
                            json_is_object(params)
                                ? copy(params)
                                : json_pack("{s:s,s:{}}", "type", "object", "properties")) ||
            kp_adapter__push(list, json_incref(t))) {
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
               strcmp(kp_adapter__str(tc, "type") ? kp_adapter__str(tc, "type") : "", "function") ==
                   0) {
        name = kp_adapter__str(json_object_get(tc, "function"), "name");
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
    if (o == NULL || kp_adapter__put(o, "type", json_string(type)) ||
        (name && kp_adapter__put(o, "name", json_string(name))) ||
        (serial && strcmp(type, "none") != 0 &&
         kp_adapter__put(o, "disable_parallel_tool_use", json_true()))) {
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
    const char *rft = kp_adapter__str(rf, "type");
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
    if (kp_adapter__put(body, "max_tokens", json_integer(max)))
        return nomem(r);
    json_t *stop = json_object_get(chat, "stop");
    if (json_is_string(stop)) {
        json_t *a = json_array();
        int err = a == NULL || kp_adapter__push(a, kp_adapter__str_copy(stop)) ||
                  kp_adapter__put(body, "stop_sequences", json_incref(a));
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
        if (json_array_size(stop) > 0 && kp_adapter__put(body, "stop_sequences", copy(stop)))
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
        if (kp_adapter__put(body, "temperature", copy(t)))
            return nomem(r);
    }
    json_t *p = json_object_get(chat, "top_p");
    if (p != NULL && !json_is_null(p)) {
        if (!json_is_number(p))
            return refuse(r, "top_p must be a number", "top_p");
        if (kp_adapter__put(body, "top_p", copy(p)))
            return nomem(r);
    }
    json_t *s = json_object_get(chat, "stream");
    if (json_is_boolean(s) && kp_adapter__put(body, "stream", copy(s)))
        return nomem(r);
    json_t *user = json_object_get(chat, "user");
    if (json_is_string(user) &&
        kp_adapter__put(
            body, "metadata",
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
    const char *name = model ? model : kp_adapter__str(chat, "model");
    if (m.system == NULL || m.turns == NULL || body == NULL)
        goto oom;
    if ((rc = build_messages(&m, chat)) != KP_OK)
        goto fail;
    if (chat_tools != NULL && !json_is_null(chat_tools) &&
        (rc = convert_tools(&m.r, chat_tools, &tools)) != KP_OK)
        goto fail;
    if ((rc = convert_tool_choice(&m.r, chat, json_array_size(tools) > 0, &choice)) != KP_OK)
        goto fail;
    if (kp_adapter__put(body, "model", json_string(name ? name : "")) ||
        (json_array_size(m.system) > 0 &&
         kp_adapter__put(body, "system", system_value(m.system))) ||
        kp_adapter__put(body, "messages", json_incref(m.turns)) ||
        (json_array_size(tools) > 0 && kp_adapter__put(body, "tools", json_incref(tools))) ||
        (choice != NULL && kp_adapter__put(body, "tool_choice", json_incref(choice))))
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

/* === Anthropic Messages request -> OpenAI chat request ================== */

/* The chat messages being built. */
struct to_chat {
    struct refusal r;
    json_t *messages;
};

static int add_message(struct to_chat *c, json_t *msg)
{
    return msg == NULL || kp_adapter__push(c->messages, msg) ? nomem(&c->r) : KP_OK;
}

static json_t *role_message(const char *role, json_t *content)
{
    json_t *m = json_object();
    if (content == NULL || m == NULL || kp_adapter__put(m, "role", json_string(role)) ||
        kp_adapter__put(m, "content", json_incref(content))) {
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
                   : add_message(c, role_message("system", kp_adapter__str_copy(system)));
    if (!json_is_array(system))
        return refuse(&c->r, "system must be a string or an array of text blocks", "system");
    size_t i;
    json_t *b;
    json_array_foreach(system, i, b)
    {
        json_t *text = json_object_get(b, "text");
        if (strcmp(kp_adapter__str(b, "type") ? kp_adapter__str(b, "type") : "", "text") != 0 ||
            !json_is_string(text))
            return refuse(&c->r, "system blocks must be text blocks", "system[%zu].type", i);
        int rc = add_message(c, role_message("system", kp_adapter__str_copy(text)));
        if (rc != KP_OK)
            return rc;
    }
    return KP_OK;
}

/* An Anthropic image block -> an OpenAI image_url part. */
static int image_part(struct refusal *r, const json_t *b, size_t i, size_t j, json_t **out)
{
    json_t *src = json_object_get(b, "source");
    const char *type = kp_adapter__str(src, "type");
    json_t *url = NULL;
    if (type != NULL && strcmp(type, "base64") == 0) {
        const char *media = kp_adapter__str(src, "media_type"),
                   *data = kp_adapter__str(src, "data");
        if (media == NULL || data == NULL)
            return refuse(r, "a base64 image source needs media_type and data",
                          "messages[%zu].content[%zu].source", i, j);
        struct kp_buf u;
        kp_buf_init(&u);
        if (kp_buf_appendf(&u, "data:%s;base64,%s", media, data) == 0)
            url = kp_adapter__strn(u.data, u.len);
        kp_buf_free(&u);
    } else if (type != NULL && strcmp(type, "url") == 0) {
        json_t *s = json_object_get(src, "url");
        if (!json_is_string(s))
            return refuse(r, "a url image source needs a string url",
                          "messages[%zu].content[%zu].source.url", i, j);
        url = kp_adapter__str_copy(s);
    } else {
        return refuse(r,
                      "only base64 and url image sources can be sent to this model (not file "
                      "ids)",
                      "messages[%zu].content[%zu].source.type", i, j);
    }
    json_t *part = json_object(), *iu = json_object();
    int err = url == NULL || part == NULL || iu == NULL ||
              kp_adapter__put(iu, "url", json_incref(url)) ||
              kp_adapter__put(part, "type", json_string("image_url")) ||
              kp_adapter__put(part, "image_url", json_incref(iu));
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
    if (p == NULL || kp_adapter__put(p, "type", json_string("text")) ||
        kp_adapter__put(p, "text", kp_adapter__str_copy(text))) {
        json_decref(p);
        return NULL;
    }
    return p;
}

/* Parts that are one text part are sent as a string. Takes @parts. */
static json_t *parts_value(json_t *parts)
{
    json_t *p = json_array_get(parts, 0);
    if (json_array_size(parts) == 1 && strcmp(kp_adapter__str(p, "type"), "text") == 0) {
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
        value = kp_adapter__str_copy(content);
    } else if (json_is_array(content)) {
        json_t *parts = json_array();
        size_t k;
        json_t *p;
        if (parts == NULL)
            return nomem(&c->r);
        json_array_foreach(content, k, p)
        {
            json_t *text = json_object_get(p, "text");
            if (strcmp(kp_adapter__str(p, "type") ? kp_adapter__str(p, "type") : "", "text") != 0 ||
                !json_is_string(text)) {
                json_decref(parts);
                return refuse(&c->r, "tool results can hold only text for this model",
                              "messages[%zu].content[%zu].content[%zu].type", i, j, k);
            }
            if (kp_adapter__push(parts, text_part(text))) {
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
    if (m == NULL || kp_adapter__put(m, "tool_call_id", kp_adapter__str_copy(id))) {
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
        const char *type = kp_adapter__str(b, "type");
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
        if (rc == KP_OK && part != NULL && kp_adapter__push(parts, part))
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
        const char *type = kp_adapter__str(b, "type");
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
            const char *id = kp_adapter__str(b, "id"), *name = kp_adapter__str(b, "name");
            json_t *input = json_object_get(b, "input");
            if (id == NULL || name == NULL || !json_is_object(input)) {
                rc = refuse(&c->r, "a tool_use block needs string id and name and an object input",
                            "messages[%zu].content[%zu]", i, j);
                break;
            }
            char *args = kp_adapter__dumps_compact(input);
            if (args == NULL ||
                kp_adapter__push(calls, kp_adapter__tool_call(id, name, args, 0, false)))
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
                                          ? kp_adapter__strn(text.data ? text.data : "", text.len)
                                          : json_null());
        if (m == NULL || (has_calls && kp_adapter__put(m, "tool_calls", json_incref(calls))))
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
    const char *role = kp_adapter__str(turn, "role");
    json_t *content = json_object_get(turn, "content");
    if (role == NULL || (strcmp(role, "user") != 0 && strcmp(role, "assistant") != 0))
        return refuse(&c->r, "role must be user or assistant", "messages[%zu].role", i);
    if (json_is_string(content))
        return add_message(c, role_message(role, kp_adapter__str_copy(content)));
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
        const char *type = kp_adapter__str(t, "type");
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
        int err = fn == NULL || tool == NULL ||
                  kp_adapter__put(fn, "name", kp_adapter__str_copy(name)) ||
                  (json_is_string(desc) &&
                   kp_adapter__put(fn, "description", kp_adapter__str_copy(desc))) ||
                  kp_adapter__put(fn, "parameters", copy(schema)) ||
                  kp_adapter__put(tool, "type", json_string("function")) ||
                  kp_adapter__put(tool, "function", json_incref(fn)) ||
                  kp_adapter__push(list, json_incref(tool));
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
    const char *type = kp_adapter__str(tc, "type");
    json_t *v;
    if (type == NULL)
        return refuse(r, "tool_choice needs a type", "tool_choice.type");
    if (strcmp(type, "auto") == 0 || strcmp(type, "none") == 0) {
        v = json_string(type);
    } else if (strcmp(type, "any") == 0) {
        v = json_string("required");
    } else if (strcmp(type, "tool") == 0) {
        const char *name = kp_adapter__str(tc, "name");
        if (name == NULL)
            return refuse(r, "a tool tool_choice needs a name", "tool_choice.name");
        v = json_pack("{s:s,s:{s:s}}", "type", "function", "function", "name", name);
    } else {
        return refuse(r, "tool_choice.type must be auto, any, tool or none", "tool_choice.type");
    }
    if (kp_adapter__put(body, "tool_choice", v) ||
        (json_is_true(json_object_get(tc, "disable_parallel_tool_use")) &&
         strcmp(type, "none") != 0 && kp_adapter__put(body, "parallel_tool_calls", json_false())))
        return nomem(r);
    return KP_OK;
}

static int convert_anthropic_params(struct refusal *r, const json_t *msg, json_t *body)
{
    json_t *max = json_object_get(msg, "max_tokens");
    if (max != NULL && (!json_is_integer(max) || json_integer_value(max) <= 0))
        return refuse(r, "max_tokens must be a positive integer", "max_tokens");
    if (max != NULL && kp_adapter__put(body, "max_tokens", copy(max)))
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
    if (json_array_size(stop) > 0 && kp_adapter__put(body, "stop", copy(stop)))
        return nomem(r);
    static const char *numbers[] = {"temperature", "top_p"};
    for (size_t k = 0; k < 2; k++) {
        json_t *x = json_object_get(msg, numbers[k]);
        if (x != NULL && !json_is_null(x) && !json_is_number(x)) {
            char why[80];
            snprintf(why, sizeof(why), "%s must be a number", numbers[k]);
            return refuse(r, why, "%s", numbers[k]);
        }
        if (json_is_number(x) && kp_adapter__put(body, numbers[k], copy(x)))
            return nomem(r);
    }
    if (json_is_true(json_object_get(msg, "stream")) &&
        (kp_adapter__put(body, "stream", json_true()) ||
         kp_adapter__put(body, "stream_options", json_pack("{s:b}", "include_usage", 1))))
        return nomem(r);
    const char *user = kp_adapter__str(json_object_get(msg, "metadata"), "user_id");
    if (user != NULL && kp_adapter__put(body, "user", json_string(user)))
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
    const char *name = model ? model : kp_adapter__str(msg, "model");
    json_t *body = json_object(), *tools = NULL;
    c.messages = json_array();
    int rc;
    if (body == NULL || c.messages == NULL ||
        kp_adapter__put(body, "model", json_string(name ? name : "")))
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
    if (kp_adapter__put(body, "messages", json_incref(c.messages)))
        goto oom;
    json_t *t = json_object_get(msg, "tools");
    if (t != NULL && !json_is_null(t) && (rc = convert_anthropic_tools(&c.r, t, &tools)) != KP_OK)
        goto fail;
    if (json_array_size(tools) > 0 && kp_adapter__put(body, "tools", json_incref(tools)))
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

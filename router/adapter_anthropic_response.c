/* router/adapter_anthropic_response: whole answers, both ways
 * (router/adapter.h): kp_anthropic_response_to_chat (a Messages response
 * -> an OpenAI chat completion) and kp_chat_response_to_anthropic (a chat
 * completion -> a Messages response).
 *
 * Each answer is rebuilt as a fresh jansson tree. An answer missing a
 * required field, or with one of the wrong type, is KP_EPARSE; jansson out
 * of memory is KP_ENOMEM. Stop reason and usage mappings are in
 * adapter_anthropic.c, where the decisions are listed. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "router/adapter_internal.h"

/* === Anthropic Messages response -> OpenAI chat completion ============== */

static int bad(char *errmsg, size_t errlen, const char *what)
{
    return kp_errf(errmsg, errlen, KP_EPARSE, "anthropic answer: %s", what);
}

static int answer_blocks(const json_t *content, struct kp_buf *text, json_t *calls, char *errmsg,
                         size_t errlen)
{
    size_t i;
    json_t *b;
    json_array_foreach(content, i, b)
    {
        const char *type = kp_adapter__str(b, "type");
        if (type == NULL)
            return bad(errmsg, errlen, "content block without a type");
        if (strcmp(type, "text") == 0) {
            json_t *t = json_object_get(b, "text");
            if (!json_is_string(t))
                return bad(errmsg, errlen, "text block without a string text");
            if (kp_buf_append(text, json_string_value(t), json_string_length(t)) != 0)
                return kp_adapter__oom_msg(errmsg, errlen);
        } else if (strcmp(type, "tool_use") == 0) {
            const char *id = kp_adapter__str(b, "id"), *name = kp_adapter__str(b, "name");
            json_t *input = json_object_get(b, "input");
            if (id == NULL || name == NULL || !json_is_object(input))
                return bad(errmsg, errlen, "tool_use block without id, name or input object");
            char *args = kp_adapter__dumps_compact(input);
            json_t *c = args ? kp_adapter__tool_call(id, name, args, 0, false) : NULL;
            kp_free(args);
            if (kp_adapter__push(calls, c))
                return kp_adapter__oom_msg(errmsg, errlen);
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
    if (strcmp(kp_adapter__str(msg, "type") ? kp_adapter__str(msg, "type") : "", "error") == 0) {
        json_t *e = json_object_get(msg, "error");
        return kp_errf(errmsg, errlen, KP_EPARSE, "anthropic error: %s: %s",
                       kp_adapter__str(e, "type") ? kp_adapter__str(e, "type") : "error",
                       kp_adapter__str(e, "message") ? kp_adapter__str(e, "message") : "");
    }
    json_t *content = json_object_get(msg, "content");
    json_t *stop = json_object_get(msg, "stop_reason");
    json_t *u = json_object_get(msg, "usage");
    uint64_t in = 0, cread = 0, cwrite = 0, outn = 0;
    if (!json_is_array(content))
        return bad(errmsg, errlen, "content is not an array");
    if (stop != NULL && !json_is_null(stop) && !json_is_string(stop))
        return bad(errmsg, errlen, "stop_reason is not a string");
    if (u != NULL && !kp_adapter__read_anthropic_usage(u, &in, &cread, &cwrite, &outn))
        return bad(errmsg, errlen, "usage holds something other than token counts");

    struct kp_buf text;
    kp_buf_init(&text);
    json_t *calls = json_array(), *res = json_object(), *message = json_object();
    json_t *choice = json_object(), *choices = json_array();
    int rc =
        calls && res && message && choice && choices ? KP_OK : kp_adapter__oom_msg(errmsg, errlen);
    if (rc == KP_OK)
        rc = answer_blocks(content, &text, calls, errmsg, errlen);
    if (rc != KP_OK)
        goto fail;
    const char *model = ident->model ? ident->model : kp_adapter__str(msg, "model");
    const char *finish = kp_adapter__finish_from_stop(json_string_value(stop));
    bool has_calls = json_array_size(calls) > 0;
    if (kp_adapter__put(res, "id", json_string(ident->id ? ident->id : "")) ||
        kp_adapter__put(res, "object", json_string("chat.completion")) ||
        kp_adapter__put(res, "created", json_integer(ident->created)) ||
        kp_adapter__put(res, "model", json_string(model ? model : "")) ||
        kp_adapter__put(message, "role", json_string("assistant")) ||
        kp_adapter__put(message, "content",
                        text.len || !has_calls
                            ? kp_adapter__strn(text.data ? text.data : "", text.len)
                            : json_null()) ||
        kp_adapter__put(message, "refusal", json_null()) ||
        (has_calls && kp_adapter__put(message, "tool_calls", json_incref(calls))) ||
        kp_adapter__put(choice, "index", json_integer(0)) ||
        kp_adapter__put(choice, "message", json_incref(message)) ||
        kp_adapter__put(choice, "logprobs", json_null()) ||
        kp_adapter__put(choice, "finish_reason", finish ? json_string(finish) : json_null()) ||
        kp_adapter__push(choices, json_incref(choice)) ||
        kp_adapter__put(res, "choices", json_incref(choices)) ||
        (u != NULL &&
         kp_adapter__put(res, "usage", kp_adapter__chat_usage(in + cread + cwrite, outn, cread)))) {
        rc = kp_adapter__oom_msg(errmsg, errlen);
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

/* === OpenAI chat completion -> Anthropic Messages response ============== */

/* message.content (string, null or text parts) -> text blocks. */
static int chat_text_blocks(const json_t *content, json_t *blocks, char *errmsg, size_t errlen)
{
    if (json_is_string(content))
        return json_string_length(content) == 0 ||
                       !kp_adapter__push(blocks, kp_adapter__text_block(content))
                   ? KP_OK
                   : kp_adapter__oom_msg(errmsg, errlen);
    if (content != NULL && !json_is_null(content) && !json_is_array(content))
        return kp_adapter__chat_bad(errmsg, errlen, "message.content is not a string or an array");
    size_t i;
    json_t *p;
    json_array_foreach(content, i, p)
    {
        json_t *t = json_object_get(p, "text");
        if (json_is_string(t) && json_string_length(t) > 0 &&
            kp_adapter__push(blocks, kp_adapter__text_block(t)))
            return kp_adapter__oom_msg(errmsg, errlen);
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
            return kp_adapter__chat_bad(errmsg, errlen,
                                        "tool call without string id, name and arguments");
        json_t *input = NULL;
        int rc = kp_adapter__parse_arguments(args ? json_string_value(args) : "",
                                             args ? json_string_length(args) : 0, &input);
        if (rc == KP_ENOMEM)
            return kp_adapter__oom_msg(errmsg, errlen);
        if (rc != KP_OK)
            return kp_adapter__chat_bad(errmsg, errlen,
                                        "tool call arguments are not a JSON object");
        json_t *b = json_object();
        int err = b == NULL || kp_adapter__put(b, "type", json_string("tool_use")) ||
                  kp_adapter__put(b, "id", kp_adapter__str_copy(id)) ||
                  kp_adapter__put(b, "name", kp_adapter__str_copy(name)) ||
                  kp_adapter__put(b, "input", json_incref(input)) ||
                  kp_adapter__push(blocks, json_incref(b));
        json_decref(input);
        json_decref(b);
        if (err)
            return kp_adapter__oom_msg(errmsg, errlen);
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
        return kp_adapter__chat_bad(errmsg, errlen, "no choices[0].message");
    json_t *u = json_object_get(chat, "usage");
    struct kp_usage_counts counts = {0};
    if (u != NULL && !json_is_null(u) && !kp_adapter__read_chat_usage(u, &counts))
        return kp_adapter__chat_bad(errmsg, errlen,
                                    "usage holds something other than token counts");
    json_t *calls = json_object_get(message, "tool_calls");
    if (calls != NULL && !json_is_null(calls) && !json_is_array(calls))
        return kp_adapter__chat_bad(errmsg, errlen, "message.tool_calls is not an array");
    json_t *blocks = json_array(), *res = json_object();
    int rc = blocks && res ? KP_OK : kp_adapter__oom_msg(errmsg, errlen);
    if (rc == KP_OK)
        rc = chat_text_blocks(json_object_get(message, "content"), blocks, errmsg, errlen);
    json_t *refusal = json_object_get(message, "refusal");
    if (rc == KP_OK && json_string_length(refusal) > 0 &&
        kp_adapter__push(blocks, kp_adapter__text_block(refusal)))
        rc = kp_adapter__oom_msg(errmsg, errlen);
    if (rc == KP_OK)
        rc = chat_tool_blocks(calls, blocks, errmsg, errlen);
    if (rc != KP_OK)
        goto fail;
    const char *name = model ? model : kp_adapter__str(chat, "model");
    if (kp_adapter__put(res, "id", json_string(msg_id ? msg_id : "")) ||
        kp_adapter__put(res, "type", json_string("message")) ||
        kp_adapter__put(res, "role", json_string("assistant")) ||
        kp_adapter__put(res, "model", json_string(name ? name : "")) ||
        kp_adapter__put(res, "content", json_incref(blocks)) ||
        kp_adapter__put(
            res, "stop_reason",
            json_string(kp_adapter__stop_from_finish(kp_adapter__str(choice, "finish_reason")))) ||
        kp_adapter__put(res, "stop_sequence", json_null()) ||
        kp_adapter__put(res, "usage",
                        kp_adapter__messages_usage(counts.input, counts.output, counts.cached))) {
        rc = kp_adapter__oom_msg(errmsg, errlen);
        goto fail;
    }
    *usage = counts;
    *out = json_incref(res);
fail:
    json_decref(blocks);
    json_decref(res);
    return rc;
}

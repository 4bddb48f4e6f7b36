/* OpenAI chat completions <-> Gemini generateContent, for apps that speak
 * OpenAI to a Gemini upstream.
 *
 * The happy path: kp_gemini_request_from_chat turns the app's chat request
 * into a generateContent body (the caller puts the model in the URL and
 * picks :generateContent or :streamGenerateContent?alt=sse); the answer
 * comes back through kp_gemini_response_to_chat, or event by event through
 * a kp_gemini_stream, as OpenAI chat.completion(.chunk) objects, with the
 * token counts the meter needs.
 *
 * The ways it fails: a request Gemini cannot express is refused with
 * KP_EINVAL, the OpenAI param at fault and a message the app developer can
 * act on (n > 1, tool call arguments that are not a JSON object, a tool
 * result whose tool_call_id no earlier assistant message issued, an http:
 * image, $ref in a tool schema, ...). An answer missing a required field,
 * or an in-band {"error":...} object, is KP_EPARSE. Out of memory, jansson's
 * or kp_malloc's, is KP_ENOMEM, and nothing half-built is returned.
 *
 * Decisions worth knowing:
 * - system and developer messages, wherever they are, become the parts of
 *   systemInstruction, in order.
 * - Consecutive turns of one role merge into one content: tool results are
 *   user turns, so they merge with each other and with a user message that
 *   follows them, as Gemini expects one reply turn per model turn.
 * - data: image URLs become inlineData; https: ones become fileData (Gemini
 *   fetches public and signed URLs itself) with a MIME type guessed from the
 *   extension, image/jpeg when unknown. Other schemes are refused.
 * - Tool schemas keep only the keys Gemini's Schema knows (so
 *   additionalProperties, $schema, strict, ... go), types are upper-cased,
 *   ["T", "null"] becomes T + nullable, oneOf becomes anyOf, a string const
 *   becomes a one-value enum, and formats Gemini rejects are dropped; $ref
 *   and allOf are refused. An object schema without properties is left out
 *   (Gemini rejects an OBJECT with no properties).
 * - A tool result that is a JSON object is the functionResponse.response
 *   itself; anything else is sent as {"content": text}.
 * - functionCall parts rebuilt from assistant tool_calls carry Google's
 *   documented "skip_thought_signature_validator" thought signature:
 *   keyplane does not keep the signatures Gemini 3 models require back.
 * - Tool call ids are "call_<completion id suffix>_<n>": the same on every
 *   replay, and unique across the turns of one conversation.
 * - Parts marked "thought" (thought summaries) are not shown; thinking
 *   tokens count as completion tokens (and as reasoning_tokens), tool-use
 *   prompt tokens as prompt tokens.
 * - Streams: each Gemini event that says something becomes one chunk; the
 *   first carries delta.role, the one whose event has finishReason carries
 *   finish_reason, and later events only update the usage (the latest
 *   usageMetadata wins). Gemini sends function calls whole, so each tool
 *   call delta has its index, id, name and complete arguments. With
 *   include_usage every chunk has "usage": null and the end adds one with
 *   the usage (zeros if Gemini sent none) and empty choices, as OpenAI does.
 * - parallel_tool_calls, user, metadata, store and other fields Gemini has
 *   no use for are ignored; logprobs is refused.
 *
 * Files: adapter_gemini_request.c (the request), adapter_gemini_response.c
 * (whole answers) and adapter_gemini_stream.c (streamed answers). This one
 * holds what the last two share, declared in adapter_internal.h: reading
 * usageMetadata, in-band errors, finish reasons and candidate parts. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "router/adapter_internal.h"

/* --- answers: shared ------------------------------------------------------- */

static int count_field(const json_t *um, const char *key, uint64_t *v, char *errmsg, size_t errlen)
{
    const json_t *x = json_object_get(um, key);
    *v = 0;
    if (x == NULL || json_is_null(x))
        return KP_OK;
    if (!json_is_integer(x) || json_integer_value(x) < 0)
        return kp_errf(errmsg, errlen, KP_EPARSE, "gemini answer: usageMetadata.%s is not a count",
                       key);
    *v = (uint64_t)json_integer_value(x);
    return KP_OK;
}

/* usageMetadata, when @resp has one, replaces @u. Prompt tokens include
 * cached ones and those of tool-use prompts; output includes thinking. */
int kp_adapter__gemini_read_usage(const json_t *resp, struct usage_meta *u, char *errmsg,
                                  size_t errlen)
{
    const json_t *um = json_object_get(resp, "usageMetadata");
    uint64_t prompt, tool_prompt, cand, thoughts, cached;
    int rc;
    if (um == NULL || json_is_null(um))
        return KP_OK;
    if (!json_is_object(um))
        return kp_errf(errmsg, errlen, KP_EPARSE, "gemini answer: usageMetadata is not an object");
    if ((rc = count_field(um, "promptTokenCount", &prompt, errmsg, errlen)) != KP_OK ||
        (rc = count_field(um, "toolUsePromptTokenCount", &tool_prompt, errmsg, errlen)) != KP_OK ||
        (rc = count_field(um, "candidatesTokenCount", &cand, errmsg, errlen)) != KP_OK ||
        (rc = count_field(um, "thoughtsTokenCount", &thoughts, errmsg, errlen)) != KP_OK ||
        (rc = count_field(um, "cachedContentTokenCount", &cached, errmsg, errlen)) != KP_OK)
        return rc;
    u->c.input = prompt + tool_prompt;
    u->c.output = cand + thoughts;
    u->c.cached = cached;
    u->c.present = true;
    u->reasoning = thoughts;
    return KP_OK;
}

json_t *kp_adapter__gemini_usage_json(const struct usage_meta *u)
{
    return json_pack("{s:I,s:I,s:I,s:{s:I},s:{s:I}}", "prompt_tokens", (json_int_t)u->c.input,
                     "completion_tokens", (json_int_t)u->c.output, "total_tokens",
                     (json_int_t)(u->c.input + u->c.output), "prompt_tokens_details",
                     "cached_tokens", (json_int_t)u->c.cached, "completion_tokens_details",
                     "reasoning_tokens", (json_int_t)u->reasoning);
}

/* An in-band {"error":{...}} object -> KP_EPARSE with its message. */
int kp_adapter__gemini_read_error(const json_t *resp, char *errmsg, size_t errlen)
{
    const json_t *e = json_object_get(resp, "error");
    if (e == NULL || json_is_null(e))
        return KP_OK;
    const char *msg = json_string_value(json_object_get(e, "message"));
    const char *status = json_string_value(json_object_get(e, "status"));
    return kp_errf(errmsg, errlen, KP_EPARSE, "gemini error%s%s: %s", status ? " " : "",
                   status ? status : "", msg ? msg : "(no message)");
}

/* The prompt was blocked: no candidates, promptFeedback.blockReason. */
bool kp_adapter__gemini_prompt_blocked(const json_t *resp)
{
    return json_is_string(json_object_get(json_object_get(resp, "promptFeedback"), "blockReason"));
}

/* candidates[0] of @resp in @cand (NULL when there is none). */
int kp_adapter__gemini_first_candidate(const json_t *resp, const json_t **cand, char *errmsg,
                                       size_t errlen)
{
    const json_t *cands = json_object_get(resp, "candidates");
    *cand = NULL;
    if (cands == NULL || json_is_null(cands))
        return KP_OK;
    if (!json_is_array(cands))
        return kp_errf(errmsg, errlen, KP_EPARSE, "gemini answer: candidates is not an array");
    *cand = json_array_get(cands, 0);
    return KP_OK;
}

static bool is_filter_reason(const char *f)
{
    static const char *const filters[] = {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
        "MODEL_ARMOR",
    };
    for (size_t k = 0; k < sizeof(filters) / sizeof(filters[0]); k++)
        if (strcmp(f, filters[k]) == 0)
            return true;
    return false;
}

/* Gemini finishReason (NULL: none) -> OpenAI finish_reason. A content
 * filter wins over tool calls, tool calls over a token limit; every other
 * reason (OTHER, LANGUAGE, MALFORMED_FUNCTION_CALL, ones added later) is a
 * plain stop. */
const char *kp_adapter__gemini_chat_finish(const char *gemini, bool called)
{
    if (gemini != NULL && is_filter_reason(gemini))
        return "content_filter";
    if (called)
        return "tool_calls";
    if (gemini != NULL && strcmp(gemini, "MAX_TOKENS") == 0)
        return "length";
    return "stop";
}

void kp_adapter__gemini_turn_init(struct turn *t)
{
    kp_buf_init(&t->text);
    t->has_text = false;
    t->calls = NULL;
    t->finish = NULL;
}

void kp_adapter__gemini_turn_free(struct turn *t)
{
    kp_buf_free(&t->text);
    json_decref(t->calls);
    t->calls = NULL;
}

const char *kp_adapter__gemini_id_suffix(const char *id)
{
    if (id == NULL)
        return "";
    return strncmp(id, "chatcmpl-", 9) == 0 ? id + 9 : id;
}

/* @v as compact JSON in a new kp_malloc'd string; NULL when out of memory.
 * Both passes are checked: jansson allocates while dumping, so the second
 * can fail where the first did not (kp_json_dumps does not check it). */
static char *dump_compact(const json_t *v)
{
    size_t n = json_dumpb(v, NULL, 0, JSON_COMPACT);
    char *s = n > 0 ? kp_malloc(n + 1) : NULL;
    if (s == NULL)
        return NULL;
    if (json_dumpb(v, s, n, JSON_COMPACT) != n) {
        kp_free(s);
        return NULL;
    }
    s[n] = '\0';
    return s;
}

static int read_call(const json_t *fc, struct call_ids *ids, struct turn *t, char *errmsg,
                     size_t errlen)
{
    const char *name = json_string_value(json_object_get(fc, "name"));
    const json_t *args = json_object_get(fc, "args");
    if (name == NULL)
        return kp_errf(errmsg, errlen, KP_EPARSE, "gemini answer: a functionCall has no name");
    if (args != NULL && !json_is_null(args) && !json_is_object(args))
        return kp_errf(errmsg, errlen, KP_EPARSE,
                       "gemini answer: functionCall.args is not an object");
    char *s = json_is_object(args) ? dump_compact(args) : kp_strdup("{}");
    if (s == NULL)
        return kp_errf(errmsg, errlen, KP_ENOMEM, "out of memory");
    json_t *id = ids->suffix[0] ? json_sprintf("call_%s_%zu", ids->suffix, ids->next)
                                : json_sprintf("call_%zu", ids->next);
    json_t *call = json_pack("{s:o,s:s,s:{s:s,s:s}}", "id", id, "type", "function", "function",
                             "name", name, "arguments", s);
    kp_free(s);
    if (call != NULL && ids->with_index &&
        json_object_set_new(call, "index", json_integer((json_int_t)ids->next)) != 0) {
        json_decref(call);
        call = NULL;
    }
    if (call != NULL && t->calls == NULL)
        t->calls = json_array();
    if (call == NULL || t->calls == NULL || json_array_append_new(t->calls, call) != 0) {
        if (t->calls == NULL)
            json_decref(call);
        return kp_errf(errmsg, errlen, KP_ENOMEM, "out of memory");
    }
    ids->next++;
    return KP_OK;
}

static int read_part(const json_t *part, struct call_ids *ids, struct turn *t, char *errmsg,
                     size_t errlen)
{
    const json_t *text = json_object_get(part, "text");
    const json_t *fc = json_object_get(part, "functionCall");
    if (!json_is_object(part))
        return kp_errf(errmsg, errlen, KP_EPARSE, "gemini answer: a content part is not an object");
    if (json_is_true(json_object_get(part, "thought")))
        return KP_OK; /* a thought summary, not the answer */
    if (text != NULL) {
        if (!json_is_string(text))
            return kp_errf(errmsg, errlen, KP_EPARSE,
                           "gemini answer: a part's text is not a string");
        if (kp_buf_append(&t->text, json_string_value(text), json_string_length(text)) != 0)
            return kp_errf(errmsg, errlen, KP_ENOMEM, "out of memory");
        t->has_text = true;
    }
    if (fc != NULL) {
        if (!json_is_object(fc))
            return kp_errf(errmsg, errlen, KP_EPARSE,
                           "gemini answer: a functionCall is not an object");
        return read_call(fc, ids, t, errmsg, errlen);
    }
    return KP_OK; /* inlineData, executableCode, ...: nothing OpenAI chat can show */
}

int kp_adapter__gemini_read_candidate(const json_t *cand, struct call_ids *ids, struct turn *t,
                                      char *errmsg, size_t errlen)
{
    if (!json_is_object(cand))
        return kp_errf(errmsg, errlen, KP_EPARSE, "gemini answer: a candidate is not an object");
    const json_t *fr = json_object_get(cand, "finishReason");
    const json_t *content = json_object_get(cand, "content");
    const json_t *parts = json_object_get(content, "parts");
    if (fr != NULL && !json_is_null(fr) && !json_is_string(fr))
        return kp_errf(errmsg, errlen, KP_EPARSE, "gemini answer: finishReason is not a string");
    t->finish = json_string_value(fr);
    if (content != NULL && !json_is_null(content) && !json_is_object(content))
        return kp_errf(errmsg, errlen, KP_EPARSE, "gemini answer: content is not an object");
    if (parts != NULL && !json_is_null(parts) && !json_is_array(parts))
        return kp_errf(errmsg, errlen, KP_EPARSE, "gemini answer: content.parts is not an array");
    for (size_t k = 0; k < json_array_size(parts); k++) {
        int rc = read_part(json_array_get(parts, k), ids, t, errmsg, errlen);
        if (rc != KP_OK)
            return rc;
    }
    return KP_OK;
}

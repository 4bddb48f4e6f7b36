/* router/adapter_gemini_response: kp_gemini_response_to_chat
 * (router/adapter.h), a whole generateContent answer -> an OpenAI chat
 * completion, with the token counts the meter needs.
 *
 * candidates[0] is read with the helpers in adapter_gemini.c, where the
 * decisions (finish reasons, tool call ids, thought parts, usage) are
 * listed. A missing required field or an in-band error is KP_EPARSE. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "router/adapter_internal.h"

/* --- answers: whole -------------------------------------------------------- */

/* The message content: the text, or null beside tool calls, or "". */
static json_t *content_json(const struct turn *t)
{
    if (t->has_text)
        return json_stringn(t->text.data != NULL ? t->text.data : "", t->text.len);
    return t->calls != NULL ? json_null() : json_string("");
}

static json_t *completion_json(const struct kp_chat_ident *ident, struct turn *t,
                               const char *finish, const struct usage_meta *u)
{
    json_t *msg = json_pack("{s:s,s:o}", "role", "assistant", "content", content_json(t));
    if (msg != NULL && t->calls != NULL && json_object_set(msg, "tool_calls", t->calls) != 0) {
        json_decref(msg);
        msg = NULL;
    }
    return json_pack("{s:s,s:s,s:I,s:s,s:[{s:i,s:o,s:n,s:s}],s:o}", "id",
                     ident->id ? ident->id : "", "object", "chat.completion", "created",
                     (json_int_t)ident->created, "model", ident->model ? ident->model : "",
                     "choices", "index", 0, "message", msg, "logprobs", "finish_reason", finish,
                     "usage", kp_adapter__gemini_usage_json(u));
}

int kp_gemini_response_to_chat(const json_t *resp, const struct kp_chat_ident *ident, json_t **out,
                               struct kp_usage_counts *usage, char *errmsg, size_t errlen)
{
    struct usage_meta u;
    struct turn t;
    struct call_ids ids = {kp_adapter__gemini_id_suffix(ident->id), 0, false};
    const json_t *cand;
    const char *finish = "content_filter";
    int rc;
    *out = NULL;
    memset(&u, 0, sizeof(u));
    if (usage != NULL)
        memset(usage, 0, sizeof(*usage));
    if (!json_is_object(resp))
        return kp_errf(errmsg, errlen, KP_EPARSE, "gemini answer: not a JSON object");
    if ((rc = kp_adapter__gemini_read_error(resp, errmsg, errlen)) != KP_OK ||
        (rc = kp_adapter__gemini_read_usage(resp, &u, errmsg, errlen)) != KP_OK ||
        (rc = kp_adapter__gemini_first_candidate(resp, &cand, errmsg, errlen)) != KP_OK)
        return rc;
    if (cand == NULL && !kp_adapter__gemini_prompt_blocked(resp))
        return kp_errf(errmsg, errlen, KP_EPARSE,
                       "gemini answer: no candidates and no promptFeedback.blockReason");
    kp_adapter__gemini_turn_init(&t);
    if (cand != NULL) {
        rc = kp_adapter__gemini_read_candidate(cand, &ids, &t, errmsg, errlen);
        finish = kp_adapter__gemini_chat_finish(t.finish, t.calls != NULL);
    }
    if (rc == KP_OK && (*out = completion_json(ident, &t, finish, &u)) == NULL)
        rc = kp_errf(errmsg, errlen, KP_ENOMEM, "out of memory");
    kp_adapter__gemini_turn_free(&t);
    if (rc == KP_OK && usage != NULL)
        *usage = u.c;
    return rc;
}

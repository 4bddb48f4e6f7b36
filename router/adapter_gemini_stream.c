/* router/adapter_gemini_stream: kp_gemini_stream (router/adapter.h),
 * streamGenerateContent?alt=sse events -> OpenAI chat.completion.chunk
 * objects.
 *
 * Each Gemini event that says something becomes one chunk; the end adds
 * the finish reason if not yet sent and, with include_usage, the usage
 * chunk. How roles, finish reasons, tool calls and usage are carried is
 * listed at the top of adapter_gemini.c. An in-band error is KP_EPARSE. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "router/adapter_internal.h"

/* --- answers: streamed ----------------------------------------------------- */

struct kp_gemini_stream {
    char *id;
    char *model;
    int64_t created;
    bool include_usage;
    bool role_sent;   /* the first chunk, with delta.role, went out */
    bool finish_sent; /* a chunk with finish_reason went out */
    bool ended;       /* kp_gemini_stream_end ran */
    bool called;      /* a tool call went out */
    size_t ncalls;
    struct usage_meta usage; /* the latest usageMetadata */
};

struct kp_gemini_stream *kp_gemini_stream_new(const struct kp_chat_ident *ident, bool include_usage)
{
    struct kp_gemini_stream *s = kp_calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->id = kp_strdup(ident->id != NULL ? ident->id : "");
    s->model = kp_strdup(ident->model != NULL ? ident->model : "");
    if (s->id == NULL || s->model == NULL) {
        kp_gemini_stream_free(s);
        return NULL;
    }
    s->created = ident->created;
    s->include_usage = include_usage;
    return s;
}

void kp_gemini_stream_free(struct kp_gemini_stream *s)
{
    if (s == NULL)
        return;
    kp_free(s->id);
    kp_free(s->model);
    kp_free(s);
}

void kp_gemini_stream_usage(const struct kp_gemini_stream *s, struct kp_usage_counts *u)
{
    *u = s->usage.c;
}

/* A chunk with @choices (consumed); "usage": null beside them when the app
 * asked for usage, as OpenAI sends it. */
static json_t *chunk_json(const struct kp_gemini_stream *s, json_t *choices)
{
    json_t *c = json_pack("{s:s,s:s,s:I,s:s,s:o}", "id", s->id, "object", "chat.completion.chunk",
                          "created", (json_int_t)s->created, "model", s->model, "choices", choices);
    if (c != NULL && s->include_usage && json_object_set_new(c, "usage", json_null()) != 0) {
        json_decref(c);
        return NULL;
    }
    return c;
}

static int emit_json(json_t *chunk, kp_adapter_emit_fn emit, void *arg)
{
    if (chunk == NULL)
        return KP_ENOMEM;
    int rc = emit(arg, NULL, chunk);
    json_decref(chunk);
    return rc;
}

/* Emits one chunk for @t (NULL: nothing said) with @finish (NULL: none).
 * The first chunk carries the role, and content as the whole message does. */
static int emit_delta(struct kp_gemini_stream *s, struct turn *t, const char *finish,
                      kp_adapter_emit_fn emit, void *arg)
{
    bool text = t != NULL && t->text.len > 0;
    json_t *calls = t != NULL ? t->calls : NULL;
    json_t *delta = json_object();
    int bad = delta == NULL;
    if (!s->role_sent) {
        bad |= json_object_set_new(delta, "role", json_string("assistant"));
        if (!text)
            bad |= json_object_set_new(delta, "content", calls ? json_null() : json_string(""));
    }
    if (text)
        bad |= json_object_set_new(delta, "content", json_stringn(t->text.data, t->text.len));
    if (calls != NULL)
        bad |= json_object_set(delta, "tool_calls", calls);
    if (bad) {
        json_decref(delta);
        return KP_ENOMEM;
    }
    json_t *choices = json_pack("[{s:i,s:o,s:n,s:o}]", "index", 0, "delta", delta, "logprobs",
                                "finish_reason", finish ? json_string(finish) : json_null());
    s->role_sent = true;
    s->finish_sent = finish != NULL;
    s->called |= calls != NULL;
    return emit_json(choices != NULL ? chunk_json(s, choices) : NULL, emit, arg);
}

int kp_gemini_stream_event(struct kp_gemini_stream *s, const json_t *data, kp_adapter_emit_fn emit,
                           void *arg, char *errmsg, size_t errlen)
{
    const json_t *cand;
    struct turn t;
    struct call_ids ids = {kp_adapter__gemini_id_suffix(s->id), s->ncalls, true};
    int rc;
    if (!json_is_object(data))
        return kp_errf(errmsg, errlen, KP_EPARSE, "gemini stream: an event is not a JSON object");
    if ((rc = kp_adapter__gemini_read_error(data, errmsg, errlen)) != KP_OK ||
        (rc = kp_adapter__gemini_read_usage(data, &s->usage, errmsg, errlen)) != KP_OK ||
        (rc = kp_adapter__gemini_first_candidate(data, &cand, errmsg, errlen)) != KP_OK)
        return rc;
    if (s->finish_sent || s->ended)
        return KP_OK; /* later events only bring usage */
    if (cand == NULL)
        return kp_adapter__gemini_prompt_blocked(data)
                   ? emit_delta(s, NULL, "content_filter", emit, arg)
                   : KP_OK;
    kp_adapter__gemini_turn_init(&t);
    rc = kp_adapter__gemini_read_candidate(cand, &ids, &t, errmsg, errlen);
    if (rc == KP_OK) {
        const char *finish =
            t.finish != NULL
                ? kp_adapter__gemini_chat_finish(t.finish, s->called || t.calls != NULL)
                : NULL;
        s->ncalls = ids.next;
        if (t.text.len > 0 || t.calls != NULL || finish != NULL)
            rc = emit_delta(s, &t, finish, emit, arg);
        if (rc == KP_ENOMEM)
            kp_errf(errmsg, errlen, KP_ENOMEM, "out of memory");
    }
    kp_adapter__gemini_turn_free(&t);
    return rc;
}

int kp_gemini_stream_end(struct kp_gemini_stream *s, kp_adapter_emit_fn emit, void *arg)
{
    int rc;
    if (s->ended)
        return KP_OK;
    s->ended = true;
    if (!s->finish_sent &&
        (rc = emit_delta(s, NULL, s->called ? "tool_calls" : "stop", emit, arg)) != KP_OK)
        return rc;
    if (!s->include_usage)
        return KP_OK;
    json_t *chunk =
        json_pack("{s:s,s:s,s:I,s:s,s:[],s:o}", "id", s->id, "object", "chat.completion.chunk",
                  "created", (json_int_t)s->created, "model", s->model, "choices", "usage",
                  kp_adapter__gemini_usage_json(&s->usage));
    return emit_json(chunk, emit, arg);
}

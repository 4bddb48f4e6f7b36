/* router/adapter_anthropic_stream: the two stream translators
 * (router/adapter.h): kp_anthropic_stream (Anthropic SSE events -> OpenAI
 * chat.completion.chunk objects) and kp_messages_stream (OpenAI chunks ->
 * Anthropic Messages events).
 *
 * Each item fed in yields zero or more items through the emit callback. A
 * stream item missing a required field, or an Anthropic "error" event, is
 * KP_EPARSE; jansson out of memory is KP_ENOMEM. How chunks become
 * Messages events (block per text run or tool call, usage at the end) is
 * among the decisions listed at the top of adapter_anthropic.c. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "router/adapter_internal.h"

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
    if (choices == NULL || c == NULL || kp_adapter__put(c, "id", json_string(s->id)) ||
        kp_adapter__put(c, "object", json_string("chat.completion.chunk")) ||
        kp_adapter__put(c, "created", json_integer(s->created)) ||
        kp_adapter__put(c, "model", json_string(s->model ? s->model : "")) ||
        kp_adapter__put(c, "choices", json_incref(choices)) ||
        (s->include_usage && kp_adapter__put(c, "usage", json_null()))) {
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
        return kp_adapter__oom_msg(errmsg, errlen);
    int rc = emit(arg, event, item);
    json_decref(item);
    return rc;
}

/* Emit a chunk with one choice: @delta (taken) and @finish. */
static int emit_delta(struct kp_anthropic_stream *s, json_t *delta, const char *finish,
                      kp_adapter_emit_fn emit, void *arg, char *errmsg, size_t errlen)
{
    json_t *choice = json_object(), *choices = json_array();
    int err =
        delta == NULL || choice == NULL || choices == NULL ||
        kp_adapter__put(choice, "index", json_integer(0)) ||
        kp_adapter__put(choice, "delta", json_incref(delta)) ||
        kp_adapter__put(choice, "logprobs", json_null()) ||
        kp_adapter__put(choice, "finish_reason", finish ? json_string(finish) : json_null()) ||
        kp_adapter__push(choices, json_incref(choice));
    json_decref(delta);
    json_decref(choice);
    if (err) {
        json_decref(choices);
        return kp_adapter__oom_msg(errmsg, errlen);
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
        if (!kp_adapter__read_anthropic_usage(u, &s->input, &s->cache_read, &s->cache_write,
                                              &s->output))
            return stream_bad(errmsg, errlen, "message_start usage is not token counts");
        s->usage_seen = true;
    }
    if (s->model == NULL && kp_adapter__str(m, "model") != NULL &&
        (s->model = kp_strdup(kp_adapter__str(m, "model"))) == NULL)
        return kp_adapter__oom_msg(errmsg, errlen);
    return ensure_started(s, emit, arg, errmsg, errlen);
}

static int on_block_start(struct kp_anthropic_stream *s, const json_t *data,
                          kp_adapter_emit_fn emit, void *arg, char *errmsg, size_t errlen)
{
    json_t *index = json_object_get(data, "index");
    json_t *b = json_object_get(data, "content_block");
    const char *type = kp_adapter__str(b, "type");
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
            return kp_adapter__oom_msg(errmsg, errlen);
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
    const char *id = kp_adapter__str(b, "id"), *name = kp_adapter__str(b, "name");
    if (id == NULL || name == NULL)
        return stream_bad(errmsg, errlen, "tool_use block without id or name");
    blk->kind = BLOCK_TOOL;
    blk->tool = s->ntools++;
    s->nblocks++;
    /* The input normally streams as input_json_delta after an empty {}. */
    json_t *input = json_object_get(b, "input");
    char *args = json_object_size(input) > 0 ? kp_adapter__dumps_compact(input) : NULL;
    if (json_object_size(input) > 0 && args == NULL)
        return kp_adapter__oom_msg(errmsg, errlen);
    json_t *calls = json_array();
    if (calls == NULL || kp_adapter__push(calls, kp_adapter__tool_call(id, name, args ? args : "",
                                                                       blk->tool, true))) {
        kp_free(args);
        json_decref(calls);
        return kp_adapter__oom_msg(errmsg, errlen);
    }
    kp_free(args);
    json_t *delta = json_object();
    if (delta == NULL || kp_adapter__put(delta, "tool_calls", calls)) {
        if (delta == NULL)
            json_decref(calls);
        json_decref(delta);
        return kp_adapter__oom_msg(errmsg, errlen);
    }
    return emit_delta(s, delta, NULL, emit, arg, errmsg, errlen);
}

static int on_block_delta(struct kp_anthropic_stream *s, const json_t *data,
                          kp_adapter_emit_fn emit, void *arg, char *errmsg, size_t errlen)
{
    json_t *index = json_object_get(data, "index");
    json_t *d = json_object_get(data, "delta");
    const char *type = kp_adapter__str(d, "type");
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
        if (!kp_adapter__read_anthropic_usage(u, &s->input, &s->cache_read, &s->cache_write,
                                              &s->output))
            return stream_bad(errmsg, errlen, "message_delta usage is not token counts");
        s->usage_seen = true;
    }
    json_t *stop = json_object_get(json_object_get(data, "delta"), "stop_reason");
    if (stop == NULL || json_is_null(stop))
        return KP_OK;
    if (!json_is_string(stop))
        return stream_bad(errmsg, errlen, "stop_reason is not a string");
    return emit_finish(s, kp_adapter__finish_from_stop(json_string_value(stop)), emit, arg, errmsg,
                       errlen);
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
        kp_adapter__put(c, "usage",
                        kp_adapter__chat_usage(s->input + s->cache_read + s->cache_write, s->output,
                                               s->cache_read))) {
        json_decref(c);
        return kp_adapter__oom_msg(errmsg, errlen);
    }
    return emit_item(emit, arg, NULL, c, errmsg, errlen);
}

int kp_anthropic_stream_event(struct kp_anthropic_stream *s, const char *event, const json_t *data,
                              kp_adapter_emit_fn emit, void *arg, char *errmsg, size_t errlen)
{
    if (!json_is_object(data))
        return stream_bad(errmsg, errlen, "event data is not a JSON object");
    /* The data's "type" repeats the SSE event name; it wins when present. */
    const char *type = kp_adapter__str(data, "type") ? kp_adapter__str(data, "type") : event;
    if (type == NULL)
        return stream_bad(errmsg, errlen, "event without a type");
    if (strcmp(type, "error") == 0) {
        json_t *e = json_object_get(data, "error");
        return kp_errf(errmsg, errlen, KP_EPARSE, "%s: %s",
                       kp_adapter__str(e, "type") ? kp_adapter__str(e, "type") : "error",
                       kp_adapter__str(e, "message") ? kp_adapter__str(e, "message") : "");
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
    return emit_item(emit, arg, ev ? kp_adapter__str(ev, "type") : NULL, ev, errmsg, errlen);
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
    if (m == NULL ||
        kp_adapter__put(m, "usage",
                        kp_adapter__messages_usage(s->usage.input, 0, s->usage.cached))) {
        json_decref(m);
        return kp_adapter__oom_msg(errmsg, errlen);
    }
    json_t *ev = event_new("message_start");
    if (ev == NULL || kp_adapter__put(ev, "message", m)) { /* put takes @m even when it fails */
        if (ev == NULL)
            json_decref(m);
        json_decref(ev);
        return kp_adapter__oom_msg(errmsg, errlen);
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
    int err = cb == NULL || ev == NULL || kp_adapter__put(ev, "index", json_integer(s->block)) ||
              kp_adapter__put(ev, "content_block", json_incref(cb));
    json_decref(cb);
    if (err) {
        json_decref(ev);
        return kp_adapter__oom_msg(errmsg, errlen);
    }
    return emit_event(emit, arg, ev, errmsg, errlen);
}

/* content_block_delta for the open block: @delta (taken). */
static int block_delta(struct kp_messages_stream *s, json_t *delta, kp_adapter_emit_fn emit,
                       void *arg, char *errmsg, size_t errlen)
{
    json_t *ev = event_new("content_block_delta");
    int err = delta == NULL || ev == NULL || kp_adapter__put(ev, "index", json_integer(s->block)) ||
              kp_adapter__put(ev, "delta", json_incref(delta));
    json_decref(delta);
    if (err) {
        json_decref(ev);
        return kp_adapter__oom_msg(errmsg, errlen);
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
    const char *name = kp_adapter__str(json_object_get(tc, "function"), "name");
    const char *id = kp_adapter__str(tc, "id");
    char made[96];
    if (tool_seen(s, index))
        return kp_adapter__chat_bad(
            errmsg, errlen,
            "a tool call continued after another block started (interleaved tool "
            "calls cannot be Anthropic content blocks)");
    if (name == NULL)
        return kp_adapter__chat_bad(errmsg, errlen,
                                    "the first delta of a tool call has no function.name");
    if (id == NULL) { /* some servers send none; the block needs one */
        snprintf(made, sizeof(made), "toolu_%.64s_%" PRId64, s->id, index);
        id = made;
    }
    if (s->ntools == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 4;
        int64_t *t = kp_realloc(s->tools, cap * sizeof(*t));
        if (t == NULL)
            return kp_adapter__oom_msg(errmsg, errlen);
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
            return kp_adapter__chat_bad(errmsg, errlen, "a tool_calls delta is not an object");
        if (json_is_integer(jindex))
            index = json_integer_value(jindex);
        else if (kp_adapter__str(tc, "id") != NULL || s->open != OPEN_TOOL)
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
    const char *finish = kp_adapter__str(choice, "finish_reason");
    if (rc == KP_OK && finish != NULL) {
        s->stop_reason = kp_adapter__stop_from_finish(finish);
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
    if (ev == NULL || kp_adapter__put(ev, "usage",
                                      kp_adapter__messages_usage(s->usage.input, s->usage.output,
                                                                 s->usage.cached))) {
        json_decref(ev);
        return kp_adapter__oom_msg(errmsg, errlen);
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
        return kp_adapter__chat_bad(errmsg, errlen, "a chunk is not a JSON object");
    json_t *err = json_object_get(chunk, "error");
    if (json_is_object(err))
        return kp_errf(errmsg, errlen, KP_EPARSE, "%s",
                       kp_adapter__str(err, "message") ? kp_adapter__str(err, "message")
                                                       : "upstream stream error");
    json_t *u = json_object_get(chunk, "usage");
    if (u != NULL && !json_is_null(u) && !kp_adapter__read_chat_usage(u, &s->usage))
        return kp_adapter__chat_bad(errmsg, errlen,
                                    "usage holds something other than token counts");
    json_t *choices = json_object_get(chunk, "choices");
    if (choices != NULL && !json_is_array(choices))
        return kp_adapter__chat_bad(errmsg, errlen, "choices is not an array");
    if (s->model == NULL && kp_adapter__str(chunk, "model") != NULL &&
        (s->model = kp_strdup(kp_adapter__str(chunk, "model"))) == NULL)
        return kp_adapter__oom_msg(errmsg, errlen);
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

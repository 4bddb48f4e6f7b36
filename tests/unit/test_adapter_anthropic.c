/* Unit tests of the OpenAI chat <-> Anthropic Messages adapter
 * (router/adapter_anthropic.c).
 *
 * Most cases are golden files: tests/unit/golden/anthropic/<case>.in.json
 * goes through one translator and the result must be json_equal to
 * <case>.out.json. A refusal or parse failure is written as
 * {"error": "KP_EINVAL", "message": ..., "param": ...}; a stream's output is
 * the array of what was emitted (chat chunks, or {"event", "data"} pairs for
 * Anthropic events), ending with such an error object when the stream
 * failed. Stream inputs are arrays: {"event", "data"} pairs for Anthropic
 * events, chunk objects for OpenAI (the end of the stream is fed after the
 * last one). KP_GOLDEN_UPDATE=1 rewrites the .out.json files from what the
 * code produces (review the diff before keeping it).
 *
 * Around them: round trips that must come back unchanged, usage counts,
 * the stop-reason table in both directions, stream end states,
 * allocation failure at every point of every translator without leaks, and
 * tool-call arguments told apart: bad JSON from want of memory. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "router/adapter.h"
#include "router/adapter_internal.h"

#ifndef GOLDEN_DIR
#error "GOLDEN_DIR must name tests/unit/golden"
#endif

#define CHAT_MODEL   "gpt-4o"
#define CLAUDE_MODEL "claude-sonnet-4-5"
#define MSG_ID       "msg_test"
#define DEFAULT_MAX  4096

static const struct kp_chat_ident ident = {"chatcmpl-test", 1767225600, CLAUDE_MODEL};

enum kind {
    REQ_TO_MESSAGES,  /* kp_anthropic_request_from_chat */
    RESP_TO_CHAT,     /* kp_anthropic_response_to_chat */
    EVENTS_TO_CHUNKS, /* kp_anthropic_stream_* */
    REQ_TO_CHAT,      /* kp_chat_request_from_anthropic */
    RESP_TO_MESSAGES, /* kp_chat_response_to_anthropic */
    CHUNKS_TO_EVENTS, /* kp_messages_stream_* */
};

struct golden {
    const char *name;
    enum kind kind;
    bool include_usage; /* EVENTS_TO_CHUNKS */
};

/* --- helpers ------------------------------------------------------------- */

static json_t *load(const char *name, const char *suffix)
{
    char path[512];
    json_error_t err;
    snprintf(path, sizeof(path), "%s/anthropic/%s.%s.json", GOLDEN_DIR, name, suffix);
    json_t *v = json_load_file(path, JSON_DECODE_ANY, &err);
    if (v == NULL)
        fail_msg("%s: %s (line %d)", path, err.text, err.line);
    return v;
}

static json_t *parse(const char *text)
{
    json_error_t err;
    json_t *v = json_loads(text, JSON_DECODE_ANY, &err);
    if (v == NULL)
        fail_msg("bad test JSON '%s': %s", text, err.text);
    return v;
}

static json_t *failure(int rc, const char *errmsg, const char *param)
{
    json_t *e = json_pack("{s:s,s:s}", "error", kp_err_name(rc), "message", errmsg);
    if (param != NULL)
        json_object_set_new(e, "param", json_string(param));
    return e;
}

/* Collects what a stream translator emits. */
static int collect(void *arg, const char *event, json_t *item)
{
    json_t *items = arg;
    if (event == NULL) {
        json_array_append(items, item);
        return 0;
    }
    /* An Anthropic event's data repeats its name as "type". */
    assert_string_equal(json_string_value(json_object_get(item, "type")), event);
    json_array_append_new(items, json_pack("{s:s,s:O}", "event", event, "data", item));
    return 0;
}

static json_t *run_events(const json_t *in, bool include_usage, struct kp_usage_counts *u,
                          bool *done)
{
    json_t *items = json_array();
    char err[256] = "";
    struct kp_anthropic_stream *s = kp_anthropic_stream_new(&ident, include_usage);
    assert_non_null(s);
    size_t i;
    json_t *ev;
    json_array_foreach(in, i, ev)
    {
        const char *name = json_string_value(json_object_get(ev, "event"));
        int rc = kp_anthropic_stream_event(s, name, json_object_get(ev, "data"), collect, items,
                                           err, sizeof(err));
        if (rc != KP_OK) {
            json_array_append_new(items, failure(rc, err, NULL));
            break;
        }
    }
    kp_anthropic_stream_usage(s, u);
    *done = kp_anthropic_stream_done(s);
    kp_anthropic_stream_free(s);
    return items;
}

static json_t *run_chunks(const json_t *in, struct kp_usage_counts *u)
{
    json_t *items = json_array();
    char err[256] = "";
    struct kp_messages_stream *s = kp_messages_stream_new(MSG_ID, CLAUDE_MODEL);
    assert_non_null(s);
    int rc = KP_OK;
    for (size_t i = 0; i <= json_array_size(in) && rc == KP_OK; i++)
        rc = kp_messages_stream_chunk(s, i < json_array_size(in) ? json_array_get(in, i) : NULL,
                                      collect, items, err, sizeof(err));
    if (rc != KP_OK)
        json_array_append_new(items, failure(rc, err, NULL));
    kp_messages_stream_usage(s, u);
    kp_messages_stream_free(s);
    return items;
}

/* Run @kind over @in; the result, or the failure object. */
static json_t *translate(enum kind kind, const json_t *in, bool include_usage,
                         struct kp_usage_counts *u)
{
    json_t *out = (json_t *)1;
    char err[256] = "", param[128] = "";
    bool done;
    int rc;
    *u = (struct kp_usage_counts){0};
    switch (kind) {
    case REQ_TO_MESSAGES:
        rc = kp_anthropic_request_from_chat(in, CLAUDE_MODEL, DEFAULT_MAX, &out, err, sizeof(err),
                                            param, sizeof(param));
        break;
    case RESP_TO_CHAT:
        rc = kp_anthropic_response_to_chat(in, &ident, &out, u, err, sizeof(err));
        break;
    case REQ_TO_CHAT:
        rc = kp_chat_request_from_anthropic(in, CHAT_MODEL, &out, err, sizeof(err), param,
                                            sizeof(param));
        break;
    case RESP_TO_MESSAGES:
        rc = kp_chat_response_to_anthropic(in, MSG_ID, CLAUDE_MODEL, &out, u, err, sizeof(err));
        break;
    case EVENTS_TO_CHUNKS:
        return run_events(in, include_usage, u, &done);
    case CHUNKS_TO_EVENTS:
    default:
        return run_chunks(in, u);
    }
    if (rc == KP_OK) {
        assert_non_null(out);
        assert_string_equal(err, "");
        return out;
    }
    assert_null(out);
    bool request = kind == REQ_TO_MESSAGES || kind == REQ_TO_CHAT;
    if (rc == KP_EINVAL)
        assert_true(request && param[0] != '\0');
    return failure(rc, err, request ? param : NULL);
}

static void assert_json_equal(const json_t *got, const json_t *want, const char *what)
{
    if (json_equal(got, want))
        return;
    char *g = json_dumps(got, JSON_INDENT(2) | JSON_ENCODE_ANY);
    char *w = json_dumps(want, JSON_INDENT(2) | JSON_ENCODE_ANY);
    fprintf(stderr, "%s\n--- got:\n%s\n--- want:\n%s\n", what, g, w);
    free(g);
    free(w);
    fail();
}

/* --- golden cases -------------------------------------------------------- */

static const struct golden cases[] = {
    /* OpenAI chat request -> Anthropic Messages request */
    {"req_plain", REQ_TO_MESSAGES, false},
    {"req_system_multiturn", REQ_TO_MESSAGES, false},
    {"req_images", REQ_TO_MESSAGES, false},
    {"req_tools_auto", REQ_TO_MESSAGES, false},
    {"req_tool_choice_none", REQ_TO_MESSAGES, false},
    {"req_tool_choice_required", REQ_TO_MESSAGES, false},
    {"req_tool_choice_named", REQ_TO_MESSAGES, false},
    {"req_tool_roundtrip", REQ_TO_MESSAGES, false},
    {"req_tool_edge", REQ_TO_MESSAGES, false},
    {"req_refuse_n", REQ_TO_MESSAGES, false},
    {"req_refuse_logprobs", REQ_TO_MESSAGES, false},
    {"req_refuse_json_schema", REQ_TO_MESSAGES, false},
    {"req_refuse_json_object", REQ_TO_MESSAGES, false},
    {"req_refuse_audio_part", REQ_TO_MESSAGES, false},
    {"req_refuse_audio_output", REQ_TO_MESSAGES, false},
    {"req_refuse_file_part", REQ_TO_MESSAGES, false},
    {"req_refuse_bad_arguments", REQ_TO_MESSAGES, false},
    {"req_refuse_arguments_array", REQ_TO_MESSAGES, false},
    {"req_refuse_http_image", REQ_TO_MESSAGES, false},
    {"req_refuse_bad_media", REQ_TO_MESSAGES, false},
    {"req_refuse_not_base64", REQ_TO_MESSAGES, false},
    {"req_refuse_temperature", REQ_TO_MESSAGES, false},
    {"req_refuse_role_function", REQ_TO_MESSAGES, false},
    {"req_refuse_system_image", REQ_TO_MESSAGES, false},
    {"req_refuse_choice_without_tools", REQ_TO_MESSAGES, false},
    {"req_refuse_no_turns", REQ_TO_MESSAGES, false},
    {"req_refuse_max_tokens", REQ_TO_MESSAGES, false},
    {"req_refuse_tool_type", REQ_TO_MESSAGES, false},
    /* Anthropic Messages response -> OpenAI chat completion */
    {"resp_text", RESP_TO_CHAT, false},
    {"resp_tool_use", RESP_TO_CHAT, false},
    {"resp_tool_only", RESP_TO_CHAT, false},
    {"resp_cache_usage", RESP_TO_CHAT, false},
    {"resp_stop_sequence", RESP_TO_CHAT, false},
    {"resp_thinking", RESP_TO_CHAT, false},
    {"resp_bad_content", RESP_TO_CHAT, false},
    {"resp_error_body", RESP_TO_CHAT, false},
    /* Anthropic events -> OpenAI chunks */
    {"stream_text", EVENTS_TO_CHUNKS, true},
    {"stream_text_no_usage", EVENTS_TO_CHUNKS, false},
    {"stream_tool", EVENTS_TO_CHUNKS, true},
    {"stream_thinking_length", EVENTS_TO_CHUNKS, false},
    {"stream_error", EVENTS_TO_CHUNKS, true},
    {"stream_bad_delta", EVENTS_TO_CHUNKS, false},
    /* Anthropic Messages request -> OpenAI chat request */
    {"rreq_plain", REQ_TO_CHAT, false},
    {"rreq_system_blocks", REQ_TO_CHAT, false},
    {"rreq_images", REQ_TO_CHAT, false},
    {"rreq_tools", REQ_TO_CHAT, false},
    {"rreq_tool_choice_tool", REQ_TO_CHAT, false},
    {"rreq_tool_choice_none", REQ_TO_CHAT, false},
    {"rreq_tool_results", REQ_TO_CHAT, false},
    {"rreq_roundtrip", REQ_TO_CHAT, false},
    {"rreq_refuse_document", REQ_TO_CHAT, false},
    {"rreq_refuse_server_tool", REQ_TO_CHAT, false},
    {"rreq_refuse_tool_result_image", REQ_TO_CHAT, false},
    {"rreq_refuse_role", REQ_TO_CHAT, false},
    {"rreq_refuse_file_source", REQ_TO_CHAT, false},
    {"rreq_refuse_system_image", REQ_TO_CHAT, false},
    /* OpenAI chat completion -> Anthropic Messages response */
    {"rresp_text", RESP_TO_MESSAGES, false},
    {"rresp_tool_calls", RESP_TO_MESSAGES, false},
    {"rresp_cached_usage", RESP_TO_MESSAGES, false},
    {"rresp_content_filter", RESP_TO_MESSAGES, false},
    {"rresp_bad_arguments", RESP_TO_MESSAGES, false},
    {"rresp_no_choices", RESP_TO_MESSAGES, false},
    /* OpenAI chunks -> Anthropic events */
    {"rstream_text", CHUNKS_TO_EVENTS, false},
    {"rstream_tool", CHUNKS_TO_EVENTS, false},
    {"rstream_no_usage", CHUNKS_TO_EVENTS, false},
    {"rstream_empty", CHUNKS_TO_EVENTS, false},
    {"rstream_error", CHUNKS_TO_EVENTS, false},
    {"rstream_interleaved", CHUNKS_TO_EVENTS, false},
};

/* <case>.in.json translates to exactly <case>.out.json. */
static void test_golden(void **state)
{
    const struct golden *g = *state;
    struct kp_usage_counts u;
    json_t *in = load(g->name, "in");
    json_t *got = translate(g->kind, in, g->include_usage, &u);
    if (getenv("KP_GOLDEN_UPDATE") != NULL) {
        char path[512];
        snprintf(path, sizeof(path), "%s/anthropic/%s.out.json", GOLDEN_DIR, g->name);
        assert_int_equal(json_dump_file(got, path, JSON_INDENT(2) | JSON_ENCODE_ANY), 0);
    }
    json_t *want = load(g->name, "out");
    assert_json_equal(got, want, g->name);
    json_decref(in);
    json_decref(got);
    json_decref(want);
}

/* --- round trips ----------------------------------------------------------- */

/* A chat request with tool calls and tool results goes to Anthropic and
 * back unchanged (its fields are ones both sides can hold). */
static void test_roundtrip_chat(void **state)
{
    (void)state;
    struct kp_usage_counts u;
    json_t *in = load("req_tool_roundtrip", "in");
    json_t *msgs = translate(REQ_TO_MESSAGES, in, false, &u);
    json_t *back = NULL;
    char err[256], param[128];
    assert_int_equal(kp_chat_request_from_anthropic(msgs, CHAT_MODEL, &back, err, sizeof(err),
                                                    param, sizeof(param)),
                     KP_OK);
    assert_json_equal(back, in, "chat -> messages -> chat");
    json_decref(in);
    json_decref(msgs);
    json_decref(back);
}

/* The same the other way: a Messages request to chat and back. */
static void test_roundtrip_messages(void **state)
{
    (void)state;
    struct kp_usage_counts u;
    json_t *in = load("rreq_roundtrip", "in");
    json_t *chat = translate(REQ_TO_CHAT, in, false, &u);
    json_t *back = NULL;
    char err[256], param[128];
    assert_int_equal(kp_anthropic_request_from_chat(chat, CLAUDE_MODEL, DEFAULT_MAX, &back, err,
                                                    sizeof(err), param, sizeof(param)),
                     KP_OK);
    assert_json_equal(back, in, "messages -> chat -> messages");
    json_decref(in);
    json_decref(chat);
    json_decref(back);
}

/* --- usage, stop reasons, stream states ---------------------------------- */

static void assert_usage(struct kp_usage_counts u, uint64_t input, uint64_t output, uint64_t cached,
                         bool present)
{
    assert_int_equal(u.input, input);
    assert_int_equal(u.output, output);
    assert_int_equal(u.cached, cached);
    assert_int_equal(u.present, present);
}

/* Usage counts: cache reads and writes are prompt tokens, reads are the
 * cached ones; streams report what they saw; no usage is "not present". */
static void test_usage_counts(void **state)
{
    (void)state;
    struct kp_usage_counts u;
    struct {
        const char *name;
        enum kind kind;
        uint64_t input, output, cached;
        bool present;
    } want[] = {
        /* input_tokens 100 + cache_read 2000 + cache_creation 300 */
        {"resp_cache_usage", RESP_TO_CHAT, 2400, 50, 2000, true},
        {"resp_text", RESP_TO_CHAT, 12, 6, 0, true},
        {"stream_text", EVENTS_TO_CHUNKS, 1510, 4, 1500, true},
        {"stream_error", EVENTS_TO_CHUNKS, 25, 1, 0, true},
        {"rresp_cached_usage", RESP_TO_MESSAGES, 1200, 64, 1024, true},
        {"rresp_no_choices", RESP_TO_MESSAGES, 0, 0, 0, false},
        {"rstream_text", CHUNKS_TO_EVENTS, 9, 2, 0, true},
        {"rstream_no_usage", CHUNKS_TO_EVENTS, 0, 0, 0, false},
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        json_t *in = load(want[i].name, "in");
        json_t *out = translate(want[i].kind, in, true, &u);
        assert_usage(u, want[i].input, want[i].output, want[i].cached, want[i].present);
        json_decref(in);
        json_decref(out);
    }
}

/* Every Anthropic stop reason maps to its finish_reason, in answers and in
 * streams, and every finish_reason maps back. */
static void test_stop_reasons(void **state)
{
    (void)state;
    static const char *table[][2] = {
        {"end_turn", "stop"},          {"stop_sequence", "stop"},
        {"pause_turn", "stop"},        {"max_tokens", "length"},
        {"tool_use", "tool_calls"},    {"model_context_window_exceeded", "length"},
        {"refusal", "content_filter"}, {"something_new", "stop"},
    };
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
        struct kp_usage_counts u;
        char err[256];
        json_t *msg =
            json_pack("{s:s,s:[],s:s}", "type", "message", "content", "stop_reason", table[i][0]);
        json_t *out = NULL;
        assert_int_equal(kp_anthropic_response_to_chat(msg, &ident, &out, &u, err, sizeof(err)),
                         KP_OK);
        json_t *choice = json_array_get(json_object_get(out, "choices"), 0);
        assert_string_equal(json_string_value(json_object_get(choice, "finish_reason")),
                            table[i][1]);
        json_decref(out);
        json_decref(msg);

        json_t *items = json_array();
        struct kp_anthropic_stream *s = kp_anthropic_stream_new(&ident, false);
        json_t *md = json_pack("{s:s,s:{s:s}}", "type", "message_delta", "delta", "stop_reason",
                               table[i][0]);
        assert_int_equal(
            kp_anthropic_stream_event(s, "message_delta", md, collect, items, err, sizeof(err)),
            KP_OK);
        json_t *last = json_array_get(items, json_array_size(items) - 1);
        choice = json_array_get(json_object_get(last, "choices"), 0);
        assert_string_equal(json_string_value(json_object_get(choice, "finish_reason")),
                            table[i][1]);
        kp_anthropic_stream_free(s);
        json_decref(md);
        json_decref(items);
    }
    static const char *back[][2] = {
        {"stop", "end_turn"},          {"length", "max_tokens"},      {"tool_calls", "tool_use"},
        {"function_call", "tool_use"}, {"content_filter", "refusal"}, {"weird", "end_turn"},
    };
    for (size_t i = 0; i < sizeof(back) / sizeof(back[0]); i++) {
        struct kp_usage_counts u;
        char err[256];
        json_t *chat = json_pack("{s:[{s:{s:s,s:s},s:s}]}", "choices", "message", "role",
                                 "assistant", "content", "x", "finish_reason", back[i][0]);
        json_t *out = NULL;
        assert_int_equal(
            kp_chat_response_to_anthropic(chat, MSG_ID, NULL, &out, &u, err, sizeof(err)), KP_OK);
        assert_string_equal(json_string_value(json_object_get(out, "stop_reason")), back[i][1]);
        json_decref(out);
        json_decref(chat);
    }
}

/* A stream is done after message_stop and not before; what comes after it
 * is ignored; a ping or an unknown event emits nothing. */
static void test_stream_states(void **state)
{
    (void)state;
    struct kp_usage_counts u;
    bool done;
    json_t *in = load("stream_text", "in");
    json_t *out = run_events(in, true, &u, &done);
    assert_true(done);
    json_decref(out);
    json_t *cut = json_array();
    for (size_t i = 0; i + 1 < json_array_size(in); i++)
        json_array_append(cut, json_array_get(in, i));
    out = run_events(cut, true, &u, &done);
    assert_false(done);
    json_decref(out);
    json_decref(cut);
    json_decref(in);

    char err[256];
    json_t *items = json_array();
    struct kp_anthropic_stream *s = kp_anthropic_stream_new(&ident, false);
    json_t *ping = parse("{\"type\":\"ping\"}"), *other = parse("{\"type\":\"brand_new\"}");
    json_t *stop = parse("{\"type\":\"message_stop\"}");
    json_t *late = parse("{\"type\":\"content_block_delta\",\"index\":0,"
                         "\"delta\":{\"type\":\"text_delta\",\"text\":\"late\"}}");
    assert_int_equal(kp_anthropic_stream_event(s, "ping", ping, collect, items, err, sizeof(err)),
                     KP_OK);
    assert_int_equal(
        kp_anthropic_stream_event(s, "brand_new", other, collect, items, err, sizeof(err)), KP_OK);
    assert_int_equal(json_array_size(items), 0);
    assert_int_equal(
        kp_anthropic_stream_event(s, "message_stop", stop, collect, items, err, sizeof(err)),
        KP_OK);
    size_t n = json_array_size(items);
    assert_int_equal(
        kp_anthropic_stream_event(s, "content_block_delta", late, collect, items, err, sizeof(err)),
        KP_OK);
    assert_int_equal(json_array_size(items), n);
    kp_anthropic_stream_free(s);
    json_decref(items);
    json_decref(ping);
    json_decref(other);
    json_decref(stop);
    json_decref(late);

    /* The other direction: nothing after the end. */
    items = json_array();
    struct kp_messages_stream *m = kp_messages_stream_new(MSG_ID, NULL);
    json_t *chunk = parse("{\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,"
                          "\"delta\":{\"content\":\"hi\"}}]}");
    assert_int_equal(kp_messages_stream_chunk(m, chunk, collect, items, err, sizeof(err)), KP_OK);
    assert_int_equal(kp_messages_stream_chunk(m, NULL, collect, items, err, sizeof(err)), KP_OK);
    n = json_array_size(items);
    /* The model came from the first chunk since none was given. */
    json_t *start = json_object_get(json_array_get(items, 0), "data");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(start, "message"), "model")), "gpt-4o");
    assert_int_equal(kp_messages_stream_chunk(m, chunk, collect, items, err, sizeof(err)), KP_OK);
    assert_int_equal(kp_messages_stream_chunk(m, NULL, collect, items, err, sizeof(err)), KP_OK);
    assert_int_equal(json_array_size(items), n);
    kp_messages_stream_free(m);
    json_decref(chunk);
    json_decref(items);
}

/* A non-zero return from the emit callback stops a stream translator and
 * is returned. */
static int refuse_emit(void *arg, const char *event, json_t *item)
{
    (void)arg;
    (void)event;
    (void)item;
    return 77;
}

static void test_emit_stops(void **state)
{
    (void)state;
    char err[256];
    json_t *start = parse("{\"type\":\"message_start\",\"message\":{\"usage\":{}}}");
    struct kp_anthropic_stream *s = kp_anthropic_stream_new(&ident, false);
    assert_int_equal(
        kp_anthropic_stream_event(s, "message_start", start, refuse_emit, NULL, err, sizeof(err)),
        77);
    kp_anthropic_stream_free(s);
    json_decref(start);
    struct kp_messages_stream *m = kp_messages_stream_new(MSG_ID, CLAUDE_MODEL);
    assert_int_equal(kp_messages_stream_chunk(m, NULL, refuse_emit, NULL, err, sizeof(err)), 77);
    kp_messages_stream_free(m);
}

/* --- allocation failure -------------------------------------------------- */

static long jansson_budget = -1;

static void *failing_malloc(size_t n)
{
    if (jansson_budget == 0)
        return NULL;
    if (jansson_budget > 0)
        jansson_budget--;
    return malloc(n);
}

static int ignore_emit(void *arg, const char *event, json_t *item)
{
    (void)arg;
    (void)event;
    (void)item;
    return 0;
}

/* One run of @kind over @in with jansson's allocations failing after @jn
 * and kp_malloc's after @kn (-1: never). Returns the result code. */
static int run_failing(enum kind kind, const json_t *in, long jn, long kn)
{
    char err[256], param[128];
    struct kp_usage_counts u;
    json_t *out = NULL;
    int rc = KP_OK;
    jansson_budget = jn;
    kp_alloc_fail_after(kn);
    switch (kind) {
    case REQ_TO_MESSAGES:
        rc = kp_anthropic_request_from_chat(in, NULL, DEFAULT_MAX, &out, err, sizeof(err), param,
                                            sizeof(param));
        break;
    case RESP_TO_CHAT:
        rc = kp_anthropic_response_to_chat(in, &ident, &out, &u, err, sizeof(err));
        break;
    case REQ_TO_CHAT:
        rc = kp_chat_request_from_anthropic(in, NULL, &out, err, sizeof(err), param, sizeof(param));
        break;
    case RESP_TO_MESSAGES:
        rc = kp_chat_response_to_anthropic(in, MSG_ID, NULL, &out, &u, err, sizeof(err));
        break;
    case EVENTS_TO_CHUNKS: {
        struct kp_anthropic_stream *s = kp_anthropic_stream_new(&ident, true);
        rc = s ? KP_OK : KP_ENOMEM;
        for (size_t i = 0; i < json_array_size(in) && rc == KP_OK; i++) {
            json_t *ev = json_array_get(in, i);
            rc = kp_anthropic_stream_event(s, NULL, json_object_get(ev, "data"), ignore_emit, NULL,
                                           err, sizeof(err));
        }
        kp_anthropic_stream_free(s);
        break;
    }
    case CHUNKS_TO_EVENTS: {
        struct kp_messages_stream *s = kp_messages_stream_new(MSG_ID, NULL);
        rc = s ? KP_OK : KP_ENOMEM;
        for (size_t i = 0; i <= json_array_size(in) && rc == KP_OK; i++)
            rc = kp_messages_stream_chunk(s, json_array_get(in, i), ignore_emit, NULL, err,
                                          sizeof(err));
        kp_messages_stream_free(s);
        break;
    }
    }
    jansson_budget = -1;
    kp_alloc_fail_reset();
    if (rc == KP_ENOMEM) {
        assert_null(out);
        if (kind != EVENTS_TO_CHUNKS && kind != CHUNKS_TO_EVENTS)
            assert_string_equal(err, "out of memory");
    }
    json_decref(out);
    return rc;
}

/* Leaves @byte in the stack below the caller: what the uninitialized
 * locals of its next calls will hold. */
static void __attribute__((noinline)) soil_stack(int byte)
{
    volatile char junk[4096];
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = (char)byte;
}

/* kp_adapter__parse_arguments with its frame well inside what soil_stack
 * wrote (the top of soil_stack's own frame is bookkeeping it does not). */
static int __attribute__((noinline))
parse_arguments_deeper(const char *text, size_t len, json_t **out)
{
    volatile char pad[512];
    pad[0] = 0;
    return kp_adapter__parse_arguments(text, len, out) + pad[0];
}

/* jansson sets no error for most of its allocation failures, and its error
 * code is then whatever the stack held (an out-of-memory once read as "bad
 * UTF-8", KP_EINVAL, in one run in a few dozen, as ASLR moved the bytes).
 * Whatever the stack holds, arguments that cannot be parsed for want of
 * memory are KP_ENOMEM, never the app's invalid request. */
static void test_arguments_oom_any_stack(void **state)
{
    (void)state;
    static const char args[] = "{\"city\":\"Rome\",\"days\":[1,2]}";
    json_set_alloc_funcs(failing_malloc, free);
    for (int byte = 0; byte < 256; byte++) {
        int rc = KP_ENOMEM;
        for (long n = 0; n < 100 && rc != KP_OK; n++) {
            json_t *out = NULL;
            soil_stack(byte);
            jansson_budget = n;
            rc = parse_arguments_deeper(args, sizeof(args) - 1, &out);
            jansson_budget = -1;
            if (rc != KP_OK && rc != KP_ENOMEM)
                fail_msg("stack byte %d, jansson allocation %ld failing: %s", byte, n,
                         kp_err_name(rc));
            assert_true(rc == KP_OK ? json_is_object(out) : out == NULL);
            json_decref(out);
        }
        assert_int_equal(rc, KP_OK);
    }
    json_set_alloc_funcs(malloc, free);
}

/* With memory to spare, what jansson refuses is the app's mistake, even
 * where plain RFC 8259 would allow it (a lone surrogate escape). */
static void test_arguments_invalid(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "{\"a\":\"\\ud800\"}",
        "{\"a\":\"\\udc00\"}",
        "{\"a\":1,}",
        "{\"a\"}",
        "{\"a\":01}",
        "{\"a\":\"\\u0000\"}",
        "[1]",
        "\"x\"",
        "{} {}",
        "{\"a\":tru}",
    };
    static const char *const good[] = {"{}", " {\"a\":\"\\ud83d\\ude00\"} ", "{\"a\":[1,-0.5e3]}",
                                       "", " \n"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        json_t *out = (json_t *)1;
        int rc = kp_adapter__parse_arguments(bad[i], strlen(bad[i]), &out);
        if (rc != KP_EINVAL)
            fail_msg("'%s' gives %s", bad[i], kp_err_name(rc));
        assert_null(out);
    }
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        json_t *out = NULL;
        if (kp_adapter__parse_arguments(good[i], strlen(good[i]), &out) != KP_OK)
            fail_msg("'%s' is refused", good[i]);
        assert_true(json_is_object(out));
        json_decref(out);
    }
}

/* Out of memory at every allocation of every translator: KP_ENOMEM and no
 * output, nothing leaked (ASan), until there is enough and it succeeds. */
static void test_oom(void **state)
{
    (void)state;
    static const struct golden rich[] = {
        {"req_system_multiturn", REQ_TO_MESSAGES, false},
        {"req_images", REQ_TO_MESSAGES, false},
        {"req_tools_auto", REQ_TO_MESSAGES, false},
        {"req_tool_roundtrip", REQ_TO_MESSAGES, false},
        {"req_tool_edge", REQ_TO_MESSAGES, false},
        {"resp_tool_use", RESP_TO_CHAT, false},
        {"resp_cache_usage", RESP_TO_CHAT, false},
        {"stream_tool", EVENTS_TO_CHUNKS, true},
        {"stream_text", EVENTS_TO_CHUNKS, true},
        {"rreq_system_blocks", REQ_TO_CHAT, false},
        {"rreq_images", REQ_TO_CHAT, false},
        {"rreq_tools", REQ_TO_CHAT, false},
        {"rreq_tool_results", REQ_TO_CHAT, false},
        {"rresp_tool_calls", RESP_TO_MESSAGES, false},
        {"rresp_content_filter", RESP_TO_MESSAGES, false},
        {"rstream_tool", CHUNKS_TO_EVENTS, false},
    };
    json_set_alloc_funcs(failing_malloc, free);
    for (size_t c = 0; c < sizeof(rich) / sizeof(rich[0]); c++) {
        jansson_budget = -1;
        json_t *in = load(rich[c].name, "in");
        /* The injection works: with no memory at all nothing can succeed. */
        assert_int_equal(run_failing(rich[c].kind, in, 0, -1), KP_ENOMEM);
        long runs = 0;
        for (int which = 0; which < 2; which++) {
            bool ok = false;
            for (long n = 0; n < 5000 && !ok; n++) {
                int rc = which == 0 ? run_failing(rich[c].kind, in, n, -1)
                                    : run_failing(rich[c].kind, in, -1, n);
                if (rc != KP_OK && rc != KP_ENOMEM)
                    fail_msg("%s: %s allocation %ld failing gives %s", rich[c].name,
                             which ? "kp_malloc" : "jansson", n, kp_err_name(rc));
                ok = rc == KP_OK;
                runs++;
            }
            if (!ok)
                fail_msg("%s never succeeded", rich[c].name);
        }
        if (getenv("KP_TEST_VERBOSE") != NULL)
            print_message("%s: %ld runs\n", rich[c].name, runs);
        json_decref(in);
    }
    json_set_alloc_funcs(malloc, free);
}

int main(void)
{
    size_t ngolden = sizeof(cases) / sizeof(cases[0]);
    static const struct CMUnitTest fixed[] = {
        cmocka_unit_test(test_roundtrip_chat),
        cmocka_unit_test(test_roundtrip_messages),
        cmocka_unit_test(test_usage_counts),
        cmocka_unit_test(test_stop_reasons),
        cmocka_unit_test(test_stream_states),
        cmocka_unit_test(test_emit_stops),
        cmocka_unit_test(test_oom),
        cmocka_unit_test(test_arguments_oom_any_stack),
        cmocka_unit_test(test_arguments_invalid),
    };
    size_t nfixed = sizeof(fixed) / sizeof(fixed[0]);
    struct CMUnitTest *tests = calloc(ngolden + nfixed, sizeof(*tests));
    assert_non_null(tests);
    /* One test per golden case, named after it. */
    for (size_t i = 0; i < ngolden; i++)
        tests[i] = (struct CMUnitTest){
            .name = cases[i].name, .test_func = test_golden, .initial_state = (void *)&cases[i]};
    memcpy(tests + ngolden, fixed, sizeof(fixed));
    int failed =
        _cmocka_run_group_tests("test_adapter_anthropic", tests, ngolden + nfixed, NULL, NULL);
    free(tests);
    return failed;
}

/* Unit tests of the router's trace helpers (router/trace.c) and the node's
 * telemetry queue (node/telemetry.c), driven without a thread: the access
 * log line and its redaction, the tail sampling decision, finish reasons
 * read from answers, provider hosts without credentials, and the bounds of
 * the span and access queues. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "node.h"
#include "router/router_internal.h"

static struct kp_access_record *record(const char *rid)
{
    struct kp_access_record *r = kp_calloc(1, sizeof(*r));
    kp_usage_event_init(&r->ev);
    r->ev.time_ms = 1767225600000;
    kp_usage_set_str(r->ev.request_id, rid);
    memcpy(r->ev.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736", 33);
    kp_usage_set_str(r->ev.node, "n1");
    kp_usage_set_str(r->ev.tenant, "acme");
    kp_usage_set_str(r->ev.feature, "sk-proj-abcdefghijklmnop"); /* an app's mistake */
    kp_usage_set_str(r->ev.model_requested, "gpt-4o-mini");
    kp_usage_set_str(r->ev.key_id, "key-a");
    r->ev.status = 200;
    r->ev.tokens_in = 9;
    r->ev.tokens_out = 16;
    r->ev.cost = 10950;
    r->ev.ttfb_us = 2100;
    r->ev.total_us = 2180;
    r->route = "/v1/chat/completions";
    r->attempts = 2;
    return r;
}

/* One JSON object and a newline, with the fields of the usage event and
 * the attempts; a key-shaped value is masked. */
static void access_line(void **state)
{
    struct kp_buf out;
    (void)state;
    struct kp_access_record *r = record("r-1");
    kp_buf_init(&out);
    assert_int_equal(kp_access_record_line(r, &out), KP_OK);
    assert_true(out.len > 0 && out.data[out.len - 1] == '\n');
    assert_null(memchr(out.data, '\n', out.len - 1));
    json_t *j = json_loadb(out.data, out.len, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "time")), "2026-01-01T00:00:00.000Z");
    assert_string_equal(json_string_value(json_object_get(j, "request_id")), "r-1");
    assert_string_equal(json_string_value(json_object_get(j, "trace_id")),
                        "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_string_equal(json_string_value(json_object_get(j, "route")), "/v1/chat/completions");
    assert_int_equal(json_integer_value(json_object_get(j, "attempts")), 2);
    assert_int_equal(json_integer_value(json_object_get(j, "tokens_out")), 16);
    assert_int_equal(json_integer_value(json_object_get(j, "cost_nanousd")), 10950);
    assert_int_equal(json_integer_value(json_object_get(j, "duration_us")), 2180);
    assert_string_equal(json_string_value(json_object_get(j, "feature")), "sk-***");
    assert_null(strstr(out.data, "abcdefghijklmnop"));
    json_decref(j);
    kp_buf_free(&out);
    kp_free(r);
}

/* The tail decision: a sampled head is kept, and so is any failure. */
static void keep_decision(void **state)
{
    (void)state;
    assert_true(kp_trace_keep(true, false));
    assert_true(kp_trace_keep(false, true));
    assert_true(kp_trace_keep(true, true));
    assert_false(kp_trace_keep(false, false));
}

/* Finish reasons are the short word values of finish_reason/stop_reason
 * members, wherever they are and however spaced, each once; text inside a
 * string (escaped quotes) and null values are not reasons. */
static void finish_reasons(void **state)
{
    char out[4][24];
    (void)state;
    const char *chat = "{\"choices\":[{\"finish_reason\":\"stop\"},{\"finish_reason\" : "
                       "\"length\"},{\"finish_reason\":\"stop\"}]}";
    assert_int_equal(kp_trace__finish_reasons(chat, strlen(chat), out, 0, 4), 2);
    assert_string_equal(out[0], "stop");
    assert_string_equal(out[1], "length");
    const char *tricky = "{\"content\":\"say \\\"finish_reason\\\":\\\"evil\\\"\","
                         "\"finish_reason\":null,\"stop_reason\":\"end_turn\"}";
    assert_int_equal(kp_trace__finish_reasons(tricky, strlen(tricky), out, 0, 4), 1);
    assert_string_equal(out[0], "end_turn");
    const char *long_word = "{\"finish_reason\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}";
    assert_int_equal(kp_trace__finish_reasons(long_word, strlen(long_word), out, 0, 4), 0);
    const char *odd = "{\"finish_reason\":\"has space\"}";
    assert_int_equal(kp_trace__finish_reasons(odd, strlen(odd), out, 0, 4), 0);
    /* At most @max. */
    const char *many = "\"finish_reason\":\"a\",\"finish_reason\":\"b\",\"finish_reason\":\"c\"";
    assert_int_equal(kp_trace__finish_reasons(many, strlen(many), out, 0, 2), 2);
}

/* Content capture: a chat request's messages and a chat answer's choices
 * become gen_ai.input.messages and gen_ai.output.messages, text parts
 * only (an image part and a message without text are left out). */
static void content_chat(void **state)
{
    (void)state;
    json_t *body = json_loads("{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":"
                              "\"be brief\"},{\"role\":\"user\",\"content\":[{\"type\":\"text\","
                              "\"text\":\"hi\"},{\"type\":\"image_url\",\"image_url\":{\"url\":"
                              "\"data:x\"}}]},{\"role\":\"assistant\",\"content\":null}]}",
                              0, NULL);
    const char *answer = "{\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
                         "\"content\":\"hello\"},\"finish_reason\":\"stop\"}]}";
    struct kp_trace_content tc;
    kp_trace__content(body, answer, strlen(answer), &tc);
    assert_null(tc.system);
    assert_string_equal(tc.input,
                        "[{\"role\":\"system\",\"parts\":[{\"type\":\"text\",\"content\":\"be "
                        "brief\"}]},{\"role\":\"user\",\"parts\":[{\"type\":\"text\",\"content\":"
                        "\"hi\"}]}]");
    assert_string_equal(tc.output, "[{\"role\":\"assistant\",\"parts\":[{\"type\":\"text\","
                                   "\"content\":\"hello\"}],\"finish_reason\":\"stop\"}]");
    assert_false(tc.truncated);
    kp_trace__content_free(&tc);
    /* No answer to capture (a stream): the request only. */
    kp_trace__content(body, NULL, 0, &tc);
    assert_non_null(tc.input);
    assert_null(tc.output);
    kp_trace__content_free(&tc);
    json_decref(body);
}

/* Anthropic's shape: the top-level system is gen_ai.system_instructions
 * and the answer's text blocks the output, with stop_reason as the
 * finish reason; completions' prompt and text too. */
static void content_other_shapes(void **state)
{
    (void)state;
    json_t *body = json_loads("{\"system\":\"rules\",\"messages\":[{\"role\":\"user\","
                              "\"content\":\"q\"}]}",
                              0, NULL);
    const char *answer = "{\"type\":\"message\",\"role\":\"assistant\",\"content\":[{\"type\":"
                         "\"text\",\"text\":\"a\"}],\"stop_reason\":\"end_turn\"}";
    struct kp_trace_content tc;
    kp_trace__content(body, answer, strlen(answer), &tc);
    assert_string_equal(tc.system, "[{\"type\":\"text\",\"content\":\"rules\"}]");
    assert_string_equal(tc.output, "[{\"role\":\"assistant\",\"parts\":[{\"type\":\"text\","
                                   "\"content\":\"a\"}],\"finish_reason\":\"end_turn\"}]");
    kp_trace__content_free(&tc);
    json_decref(body);
    body = json_loads("{\"prompt\":\"once\"}", 0, NULL);
    answer = "{\"choices\":[{\"text\":\" upon\",\"finish_reason\":\"length\"}]}";
    kp_trace__content(body, answer, strlen(answer), &tc);
    assert_string_equal(tc.input, "[{\"role\":\"user\",\"parts\":[{\"type\":\"text\",\"content\":"
                                  "\"once\"}]}]");
    assert_non_null(strstr(tc.output, "\" upon\""));
    kp_trace__content_free(&tc);
    /* An answer that is not JSON, and a body without text: nothing. */
    kp_trace__content(NULL, "not json", 8, &tc);
    assert_null(tc.system);
    assert_null(tc.input);
    assert_null(tc.output);
    json_decref(body);
}

/* Text is cut to KP_TRACE_CONTENT_MAX bytes per value, at a character
 * boundary (never inside a two-byte é), and what does not fit is dropped
 * and flagged. */
static void content_bounded(void **state)
{
    (void)state;
    size_t n = KP_TRACE_CONTENT_MAX + 100;
    char *text = malloc(n + 1);
    memset(text, 'a', n);
    text[KP_TRACE_CONTENT_MAX - 1] = '\xc3'; /* é straddles the bound */
    text[KP_TRACE_CONTENT_MAX] = '\xa9';
    text[n] = '\0';
    json_t *body = json_pack("{s:[{s:s,s:s},{s:s,s:s}]}", "messages", "role", "user", "content",
                             text, "role", "user", "content", "dropped");
    assert_non_null(body);
    struct kp_trace_content tc;
    kp_trace__content(body, NULL, 0, &tc);
    assert_true(tc.truncated);
    json_t *v = json_loads(tc.input, 0, NULL);
    assert_int_equal(json_array_size(v), 1);
    const char *got = json_string_value(json_object_get(
        json_array_get(json_object_get(json_array_get(v, 0), "parts"), 0), "content"));
    assert_int_equal(strlen(got), KP_TRACE_CONTENT_MAX - 1);
    json_decref(v);
    kp_trace__content_free(&tc);
    json_decref(body);
    free(text);
}

/* server.address is the host alone: never credentials, path or query. */
static void url_host(void **state)
{
    char host[64];
    int port;
    (void)state;
    assert_true(kp_trace__url_host("https://api.openai.com/v1", host, sizeof(host), &port));
    assert_string_equal(host, "api.openai.com");
    assert_int_equal(port, 443);
    assert_true(kp_trace__url_host("http://127.0.0.1:8080/v1?key=x", host, sizeof(host), &port));
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 8080);
    assert_true(
        kp_trace__url_host("https://user:pa@ss@h.example:8443/v1", host, sizeof(host), &port));
    assert_string_equal(host, "h.example");
    assert_int_equal(port, 8443);
    assert_true(kp_trace__url_host("http://[::1]:9/x", host, sizeof(host), &port));
    assert_string_equal(host, "::1");
    assert_int_equal(port, 9);
    assert_false(kp_trace__url_host("no-scheme", host, sizeof(host), &port));
    assert_false(kp_trace__url_host("http:///path", host, sizeof(host), &port));
    assert_false(kp_trace__url_host("http://h:99999999/", host, sizeof(host), &port));
}

static struct kp_span_set *three_spans(void)
{
    struct kp_span_set *s = kp_span_set_new(3);
    for (int i = 0; i < 3; i++) {
        struct kp_span *sp = kp_span_add(s, "x", KP_SPAN_INTERNAL, 1);
        kp_trace_new_id(sp->trace_id, 16);
        kp_trace_new_id(sp->span_id, 8);
    }
    return s;
}

/* Spans count against trace_queue_spans from submit until exported or
 * dropped: a set that would pass it is dropped whole and counted, and
 * what never left is counted as failed at the end. */
static void span_queue_bound(void **state)
{
    struct kp_telemetry *t;
    struct kp_telemetry_stats st;
    char err[256];
    (void)state;
    struct kp_telemetry_options o = {.endpoint = "http://127.0.0.1:9", .queue_spans = 10};
    assert_int_equal(kp_telemetry_new(&o, &t, err, sizeof(err)), KP_OK);
    for (int i = 0; i < 4; i++)
        kp_telemetry_submit(t, three_spans(), NULL);
    kp_telemetry_get_stats(t, &st);
    assert_int_equal(st.queued_spans, 9);
    assert_int_equal(st.dropped, 3);
    /* Taken into the pending list, they still count. */
    kp_telemetry_poll(t, false);
    kp_telemetry_submit(t, three_spans(), NULL);
    kp_telemetry_get_stats(t, &st);
    assert_int_equal(st.queued_spans, 9);
    assert_int_equal(st.dropped, 6);
    kp_telemetry_free(t);

    /* Without an endpoint, spans are not queued at all. */
    o.endpoint = NULL;
    assert_int_equal(kp_telemetry_new(&o, &t, err, sizeof(err)), KP_OK);
    kp_telemetry_submit(t, three_spans(), NULL);
    kp_telemetry_get_stats(t, &st);
    assert_int_equal(st.queued_spans, 0);
    kp_telemetry_free(t);
}

/* Access records are written in the order they were submitted, one line
 * each; past KP_ACCESS_QUEUE_MAX waiting, one is dropped and counted. */
static void access_queue(void **state)
{
    struct kp_telemetry *t;
    struct kp_telemetry_stats st;
    char err[256], path[] = "/tmp/kp-access-XXXXXX";
    (void)state;
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    struct kp_telemetry_options o = {.access_log = path};
    assert_int_equal(kp_telemetry_new(&o, &t, err, sizeof(err)), KP_OK);
    kp_telemetry_submit(t, NULL, record("r-1"));
    kp_telemetry_submit(t, NULL, record("r-2"));
    kp_telemetry_poll(t, false);
    for (int i = 0; i < KP_ACCESS_QUEUE_MAX + 1; i++)
        kp_telemetry_submit(t, NULL, record("r-x"));
    kp_telemetry_get_stats(t, &st);
    assert_int_equal(st.access_lines, 2);
    assert_int_equal(st.access_dropped, 1);
    kp_telemetry_poll(t, false);
    kp_telemetry_get_stats(t, &st);
    assert_int_equal(st.access_lines, 2 + KP_ACCESS_QUEUE_MAX);
    kp_telemetry_free(t);
    FILE *f = fopen(path, "r");
    char line[4096];
    assert_non_null(fgets(line, sizeof(line), f));
    assert_non_null(strstr(line, "\"request_id\":\"r-1\""));
    assert_non_null(fgets(line, sizeof(line), f));
    assert_non_null(strstr(line, "\"request_id\":\"r-2\""));
    fclose(f);
    unlink(path);

    /* A file that cannot be opened is an error at start. */
    o.access_log = "/nonexistent-dir/access.log";
    assert_int_equal(kp_telemetry_new(&o, &t, err, sizeof(err)), KP_EIO);
    assert_non_null(strstr(err, "/nonexistent-dir/access.log"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(access_line),      cmocka_unit_test(keep_decision),
        cmocka_unit_test(finish_reasons),   cmocka_unit_test(url_host),
        cmocka_unit_test(span_queue_bound), cmocka_unit_test(access_queue),
        cmocka_unit_test(content_chat),     cmocka_unit_test(content_other_shapes),
        cmocka_unit_test(content_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

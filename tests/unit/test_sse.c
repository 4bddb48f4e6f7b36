/* Unit tests of the text/event-stream parser (router/sse.c). Every sample
 * stream is fed whole, cut at every single position, cut at every pair of
 * positions (three feeds) and byte by byte, and must give the same events
 * each time: the parser may keep no assumption about where feeds end. The
 * events seen are written into a transcript "name=data;" per event, which
 * is what the cases compare. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "router/sse.h"

/* --- helpers ------------------------------------------------------------- */

struct transcript {
    struct kp_buf text;
    int stop_after; /* return 42 from the callback after this many events; 0: never */
    int events;
};

static int record(void *arg, const struct kp_sse_event *ev)
{
    struct transcript *t = arg;
    /* The contract: data is NUL-terminated, the name is never empty. */
    assert_int_equal(ev->data[ev->data_len], '\0');
    assert_true(ev->event_len > 0);
    if (kp_buf_append(&t->text, ev->event, ev->event_len) != 0 ||
        kp_buf_append_lit(&t->text, "=") != 0 ||
        kp_buf_append(&t->text, ev->data, ev->data_len) != 0 ||
        kp_buf_append_lit(&t->text, ";") != 0)
        fail_msg("out of memory");
    t->events++;
    return t->stop_after && t->events >= t->stop_after ? 42 : 0;
}

/* Feed @len bytes of @s cut at the @ncuts ascending positions @cuts; the
 * transcript goes to @out (a kp_buf the caller frees). Returns the first
 * non-KP_OK result, or KP_OK. */
static int run(const char *s, size_t len, const size_t *cuts, size_t ncuts, size_t max,
               struct kp_buf *out)
{
    struct kp_sse_parser p;
    struct transcript t = {.stop_after = 0};
    kp_buf_init(&t.text);
    kp_buf_append_lit(&t.text, "");
    kp_sse_init(&p, max);
    int rc = KP_OK;
    size_t at = 0;
    for (size_t i = 0; i <= ncuts && rc == KP_OK; i++) {
        size_t to = i < ncuts ? cuts[i] : len;
        rc = kp_sse_feed(&p, s + at, to - at, record, &t);
        at = to;
    }
    kp_sse_free(&p);
    *out = t.text;
    return rc;
}

static void expect_run(const char *s, size_t len, const size_t *cuts, size_t ncuts, size_t max,
                       int want_rc, const char *want)
{
    struct kp_buf got;
    int rc = run(s, len, cuts, ncuts, max, &got);
    if (rc != want_rc || strcmp(got.data, want) != 0) {
        char where[128] = "";
        for (size_t i = 0; i < ncuts && strlen(where) < sizeof(where) - 16; i++)
            snprintf(where + strlen(where), sizeof(where) - strlen(where), " %zu", cuts[i]);
        fail_msg("cuts [%s ]: rc %d (want %d), events '%s' (want '%s')", where, rc, want_rc,
                 got.data, want);
    }
    kp_buf_free(&got);
}

/* @s gives @want (and @want_rc) however its bytes are cut into feeds. */
static void check_stream_max(const char *s, size_t len, size_t max, int want_rc, const char *want)
{
    expect_run(s, len, NULL, 0, max, want_rc, want);
    for (size_t i = 0; i <= len; i++)
        expect_run(s, len, (size_t[]){i}, 1, max, want_rc, want);
    if (len <= 400)
        for (size_t i = 0; i <= len; i++)
            for (size_t j = i; j <= len; j++)
                expect_run(s, len, (size_t[]){i, j}, 2, max, want_rc, want);
    size_t *bytes = malloc((len + 1) * sizeof(*bytes));
    assert_non_null(bytes);
    for (size_t i = 0; i < len; i++)
        bytes[i] = i + 1;
    expect_run(s, len, bytes, len, max, want_rc, want);
    free(bytes);
}

static void check_stream(const char *s, const char *want)
{
    check_stream_max(s, strlen(s), 0, KP_OK, want);
}

/* --- cases --------------------------------------------------------------- */

/* Named and unnamed events: the name defaults to "message". */
static void test_basic(void **state)
{
    (void)state;
    check_stream("event: ping\ndata: {}\n\ndata: hello\n\n", "ping={};message=hello;");
}

/* Data lines join with '\n'; one space after the colon goes, a second one
 * stays; "data" without a colon is an empty data line. */
static void test_multiline_data(void **state)
{
    (void)state;
    check_stream("data: a\ndata:b\ndata:  c\ndata\n\n", "message=a\nb\n c\n;");
    check_stream("data\n\n", "message=;");
    check_stream("data:\ndata:\n\n", "message=\n;");
}

/* CR, LF and CRLF all end lines, also when a CRLF is cut between two feeds
 * (every cut of the stream covers that) and when CR CR is two line ends. */
static void test_line_endings(void **state)
{
    (void)state;
    check_stream("data: a\r\n\r\ndata: b\r\rdata: c\n\ndata: d\r\n\ndata: e\n\r\n",
                 "message=a;message=b;message=c;message=d;message=e;");
    check_stream("event: x\rdata: 1\r\r\r\n", "x=1;");
    /* A CR at the end of the data is a line end, not part of the data. */
    check_stream("data: x\r\ndata: y\r\r", "message=x\ny;");
}

/* Comments, id, retry, unknown fields and fields spelled with a space are
 * ignored; a comment inside an event does not end it. */
static void test_ignored_lines(void **state)
{
    (void)state;
    check_stream(": keep-alive\nid: 7\nretry: 1000\nfoo: bar\ndata: x\n: mid\n"
                 "data : no\nDATA: no\n\n:\n\n",
                 "message=x;");
}

/* An event with no data line is skipped and its name does not carry over;
 * the last event line wins; "event:" with no value means "message"; an
 * empty data line still dispatches, with empty data. */
static void test_event_names(void **state)
{
    (void)state;
    check_stream("event: a\n\nevent: b\ndata: 1\n\n", "b=1;");
    check_stream("event: a\nevent: b\ndata: 2\n\n", "b=2;");
    check_stream("event: a\nevent:\ndata: 3\n\n", "message=3;");
    check_stream("event: a\ndata: 4\n\ndata: 5\n\n", "a=4;message=5;");
    check_stream("data:\n\n", "message=;");
    check_stream("\n\n\n", "");
}

/* A BOM is skipped at the start of the stream only (however it is cut); a
 * second one, or a partial one, is part of the first line's field name. */
static void test_bom(void **state)
{
    (void)state;
    check_stream("\xEF\xBB\xBF"
                 "data: x\n\n",
                 "message=x;");
    check_stream("\xEF\xBB\xBF\xEF\xBB\xBF"
                 "data: y\n\ndata: z\n\n",
                 "message=z;");
    check_stream("\xEF\xBB"
                 "data: q\n\ndata: r\n\n",
                 "message=r;");
    check_stream("\xEF\n"
                 "data: s\n\n",
                 "message=s;");
    check_stream("data: a\n\n\xEF\xBB\xBF"
                 "data: b\n\n",
                 "message=a;");
    check_stream("\xEF\xBB\xBF", "");
}

/* An event whose blank line has not arrived is not dispatched; it is when
 * the blank line comes in a later feed. */
static void test_incomplete(void **state)
{
    (void)state;
    check_stream("data: a\n\ndata: b\n", "message=a;");
    check_stream("data: a\n\ndata: b", "message=a;");

    struct kp_sse_parser p;
    struct transcript t = {.stop_after = 0};
    kp_buf_init(&t.text);
    kp_sse_init(&p, 0);
    assert_int_equal(kp_sse_feed(&p, "data: b\r", 8, record, &t), KP_OK);
    assert_int_equal(t.events, 0);
    assert_int_equal(kp_sse_feed(&p, "\n", 1, record, &t), KP_OK);
    assert_int_equal(t.events, 0);
    assert_int_equal(kp_sse_feed(&p, "\r\n", 2, record, &t), KP_OK);
    assert_string_equal(t.text.data, "message=b;");
    kp_sse_free(&p);
    kp_buf_free(&t.text);
}

/* max_event bounds the event name, the data and the line being read
 * together: exactly max_event bytes pass, one more fails with KP_ETOOBIG
 * (whatever the cuts), events before it are delivered, and the parser
 * stays failed. Comment lines cost nothing. 0 means 8 MiB. */
static void test_max_event(void **state)
{
    (void)state;
    /* "data: " + 26 x's is a 32-byte line. */
    const char *fits = "data: xxxxxxxxxxxxxxxxxxxxxxxxxx\n\n";
    check_stream_max(fits, strlen(fits), 32, KP_OK, "message=xxxxxxxxxxxxxxxxxxxxxxxxxx;");
    const char *over = "data: a\n\ndata: xxxxxxxxxxxxxxxxxxxxxxxxxxx\n\ndata: b\n\n";
    check_stream_max(over, strlen(over), 32, KP_ETOOBIG, "message=a;");
    /* The data held counts: 14 bytes held plus a 20-byte line is over 32. */
    const char *two = "data: 12345678901234\ndata: 12345678901234\n\n";
    check_stream_max(two, strlen(two), 32, KP_ETOOBIG, "");
    const char *named = "event: 1234567890\ndata: 1234567890\n\n";
    check_stream_max(named, strlen(named), 25, KP_ETOOBIG, "");
    check_stream_max(named, strlen(named), 26, KP_OK, "1234567890=1234567890;");
    char comment[300];
    memset(comment, 'c', sizeof(comment));
    comment[0] = ':';
    memcpy(comment + sizeof(comment) - 11, "\ndata: ok\n\n", 11);
    check_stream_max(comment, sizeof(comment), 16, KP_OK, "message=ok;");

    struct kp_sse_parser p;
    struct transcript t = {.stop_after = 0};
    kp_buf_init(&t.text);
    kp_sse_init(&p, 8);
    assert_int_equal(kp_sse_feed(&p, "data: 12345\n\n", 13, record, &t), KP_ETOOBIG);
    assert_int_equal(kp_sse_feed(&p, "data: 1\n\n", 9, record, &t), KP_ETOOBIG);
    assert_int_equal(t.events, 0);
    kp_sse_free(&p);
    kp_sse_init(&p, 0);
    assert_int_equal(p.max_event, (size_t)8 << 20);
    kp_sse_free(&p);
    kp_buf_free(&t.text);
}

/* A non-zero return from the callback stops the feed and is returned; the
 * events after it in the same feed are not delivered. */
static void test_callback_stop(void **state)
{
    (void)state;
    struct kp_sse_parser p;
    struct transcript t = {.stop_after = 2};
    kp_buf_init(&t.text);
    kp_sse_init(&p, 0);
    const char *s = "data: 1\n\ndata: 2\n\ndata: 3\n\n";
    assert_int_equal(kp_sse_feed(&p, s, strlen(s), record, &t), 42);
    assert_string_equal(t.text.data, "message=1;message=2;");
    kp_sse_free(&p);
    kp_buf_free(&t.text);
}

/* Real provider streams (Anthropic with named events and a ping, OpenAI
 * with [DONE]), with CRLF line ends and keep-alive comments mixed in. */
static void test_provider_streams(void **state)
{
    (void)state;
    check_stream("event: message_start\r\n"
                 "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\"}}\r\n\r\n"
                 "event: ping\r\ndata: {\"type\": \"ping\"}\r\n\r\n"
                 ": keep-alive\r\n\r\n"
                 "event: content_block_delta\r\n"
                 "data: {\"type\":\"content_block_delta\",\"index\":0,"
                 "\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\r\n\r\n"
                 "event: message_stop\r\ndata: {\"type\":\"message_stop\"}\r\n\r\n",
                 "message_start={\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\"}};"
                 "ping={\"type\": \"ping\"};"
                 "content_block_delta={\"type\":\"content_block_delta\",\"index\":0,"
                 "\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}};"
                 "message_stop={\"type\":\"message_stop\"};");
    check_stream("data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n"
                 "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3}}\n\n"
                 "data: [DONE]\n\n",
                 "message={\"choices\":[{\"delta\":{\"content\":\"a\"}}]};"
                 "message={\"choices\":[],\"usage\":{\"prompt_tokens\":3}};"
                 "message=[DONE];");
}

/* Out of memory at every allocation: KP_ENOMEM, or the right events; the
 * parser stays failed after KP_ENOMEM; nothing leaks (ASan). */
static void test_oom(void **state)
{
    (void)state;
    const char *s = "event: e\ndata: 1\ndata: 2\n\n: c\ndata: 3\n\n";
    bool done = false;
    for (long n = 0; n < 100 && !done; n++) {
        struct kp_sse_parser p;
        struct transcript t = {.stop_after = 0};
        kp_buf_init(&t.text);
        /* The transcript's memory is taken before failures start. */
        assert_int_equal(kp_buf_reserve(&t.text, 256), 0);
        kp_buf_append_lit(&t.text, "");
        kp_sse_init(&p, 0);
        kp_alloc_fail_after(n);
        int rc = KP_OK;
        for (size_t i = 0; s[i] && rc == KP_OK; i++)
            rc = kp_sse_feed(&p, s + i, 1, record, &t);
        int again = kp_sse_feed(&p, "\n", 1, record, &t);
        kp_alloc_fail_reset();
        if (rc == KP_OK) {
            assert_string_equal(t.text.data, "e=1\n2;message=3;");
            done = true;
        } else {
            assert_int_equal(rc, KP_ENOMEM);
            assert_int_equal(again, KP_ENOMEM);
        }
        kp_sse_free(&p);
        kp_buf_free(&t.text);
    }
    assert_true(done);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_basic),         cmocka_unit_test(test_multiline_data),
        cmocka_unit_test(test_line_endings),  cmocka_unit_test(test_ignored_lines),
        cmocka_unit_test(test_event_names),   cmocka_unit_test(test_bom),
        cmocka_unit_test(test_incomplete),    cmocka_unit_test(test_max_event),
        cmocka_unit_test(test_callback_stop), cmocka_unit_test(test_provider_streams),
        cmocka_unit_test(test_oom),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Unit tests of trace context and spans (node/core/trace.h): traceparent
 * parsing against every malformed form the W3C specification lists and
 * its future-version rules, formatting, tracestate's grammar, the ratio
 * sampler, span sets with allocation failures, and the OTLP/JSON encoding
 * of a span against a golden file. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"

#define TRACE "4bf92f3577b34da6a3ce929d0e0e4736"
#define SPAN  "00f067aa0ba902b7"

static int parse(const char *s, struct kp_trace_parent *p)
{
    return kp_traceparent_parse(s, strlen(s), p);
}

/* A valid version 00 header gives its ids and flags; blanks around it are
 * allowed, and the output of format parses back to the same. */
static void traceparent_valid(void **state)
{
    struct kp_trace_parent p;
    char out[KP_TRACEPARENT_LEN + 1];
    (void)state;
    assert_int_equal(parse("00-" TRACE "-" SPAN "-01", &p), KP_OK);
    assert_int_equal(p.flags, 1);
    assert_int_equal(p.trace_id[0], 0x4b);
    assert_int_equal(p.trace_id[15], 0x36);
    assert_int_equal(p.span_id[7], 0xb7);
    kp_traceparent_format(p.trace_id, p.span_id, p.flags, out);
    assert_string_equal(out, "00-" TRACE "-" SPAN "-01");
    assert_int_equal(parse(" \t00-" TRACE "-" SPAN "-00 ", &p), KP_OK);
    assert_int_equal(p.flags, 0);
    /* Unknown flag bits are read, not refused. */
    assert_int_equal(parse("00-" TRACE "-" SPAN "-09", &p), KP_OK);
    assert_int_equal(p.flags, 9);
}

/* Every malformed form is refused (the caller starts a new trace). */
static void traceparent_invalid(void **state)
{
    static const char *const bad[] = {
        "",
        "00",
        "00-" TRACE "-" SPAN,                              /* no flags */
        "00-" TRACE "-" SPAN "-0",                         /* short flags */
        "00-" TRACE "-" SPAN "-01-",                       /* 00 with trailing data */
        "00-" TRACE "-" SPAN "-01-what",                   /* ... */
        "00-" TRACE "-" SPAN "-01x",                       /* ... */
        "ff-" TRACE "-" SPAN "-01",                        /* version ff */
        "0g-" TRACE "-" SPAN "-01",                        /* not hex */
        "0A-" TRACE "-" SPAN "-01",                        /* upper case version */
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-" SPAN "-01", /* upper case trace id */
        "00-" TRACE "-00F067AA0BA902B7-01",                /* upper case parent id */
        "00-" TRACE "-" SPAN "-0A",                        /* upper case flags */
        "00-00000000000000000000000000000000-" SPAN "-01", /* all-zero trace id */
        "00-" TRACE "-0000000000000000-01",                /* all-zero parent id */
        "00_" TRACE "-" SPAN "-01",                        /* wrong separator */
        "00-" TRACE "_" SPAN "-01",
        "00-" TRACE "-" SPAN "_01",
        "00-4bf92f3577b34da6a3ce929d0e0e473-" SPAN "-01", /* 31 digits */
        "00-" TRACE "-00f067aa0ba902b-01",                /* 15 digits */
        "00-" TRACE "-" SPAN "-0z",
        "00-" TRACE "-" SPAN "- 1",
        "cc-" TRACE "-" SPAN "-01.", /* a later version must go on with a dash */
        "cc-" TRACE "-" SPAN,        /* ... and be at least 55 characters */
        "cc-" TRACE "-" SPAN "-0x-abc",
    };
    struct kp_trace_parent p;
    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (parse(bad[i], &p) != KP_EINVAL)
            fail_msg("accepted \"%s\"", bad[i]);
}

/* A later version is read as version 00 when its fields parse and are
 * followed by the end or a dash. */
static void traceparent_future_version(void **state)
{
    struct kp_trace_parent p;
    (void)state;
    assert_int_equal(parse("cc-" TRACE "-" SPAN "-01", &p), KP_OK);
    assert_int_equal(parse("cc-" TRACE "-" SPAN "-01-what-the-future-holds", &p), KP_OK);
    assert_int_equal(p.flags, 1);
    assert_int_equal(p.span_id[0], 0x00);
    assert_int_equal(p.span_id[1], 0xf0);
}

/* tracestate: keys, multi-tenant keys, values, blanks and empty members,
 * 32 members at most, no key twice, 512 bytes at most. */
static void tracestate_grammar(void **state)
{
    static const char *const good[] = {
        "",
        "congo=t61rcWkgMzE",
        "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
        " rojo=1 , congo=2 ",
        "a=1,,b=2",
        "tenant@vendor=x",
        "0tenant@v=x",
        "a_-*/z=v v",
        "k=!\"#$%&'()*+-./:;<>?@[\\]^_`{|}~",
    };
    static const char *const bad[] = {
        "nokey",
        "=v",
        "Upper=v",
        "1simple=v",
        "a=",
        "a= ",
        "a=1,a=2",
        "a=b=c",
        "t@V=x",
        "@v=x",
        "t@=x",
        "t@0v=x",
        "a=\x01",
        "a=t\tb",
        "k=x,K=y",
        "a b=1",
        "t@vendor-system-too-long=x",
    };
    (void)state;
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        if (!kp_tracestate_valid(good[i], strlen(good[i])))
            fail_msg("refused \"%s\"", good[i]);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (kp_tracestate_valid(bad[i], strlen(bad[i])))
            fail_msg("accepted \"%s\"", bad[i]);
    /* A trailing comma is an empty member: allowed. */
    assert_true(kp_tracestate_valid("a=x,", 4));
    char many[600] = "";
    size_t n = 0;
    for (int i = 0; i < 32; i++)
        n += (size_t)snprintf(many + n, sizeof(many) - n, "%sk%d=v", i ? "," : "", i);
    assert_true(kp_tracestate_valid(many, n));
    n += (size_t)snprintf(many + n, sizeof(many) - n, ",k32=v");
    assert_false(kp_tracestate_valid(many, n));
    char big[KP_TRACESTATE_MAX + 2];
    memset(big, 'v', sizeof(big));
    memcpy(big, "k=", 2);
    assert_true(kp_tracestate_valid(big, 200));
    assert_false(kp_tracestate_valid(big, KP_TRACESTATE_MAX + 1));
}

/* The ratio sampler reads the random low 56 bits of the trace id: 0 keeps
 * none, 1 all, and a ratio keeps ids below its share of the range. */
static void ratio_sampler(void **state)
{
    uint8_t id[16] = {0};
    (void)state;
    id[9] = 0x7f; /* just under half of the 56-bit range */
    assert_false(kp_trace_ratio_keeps(id, 0));
    assert_true(kp_trace_ratio_keeps(id, 1));
    assert_true(kp_trace_ratio_keeps(id, 0.5));
    assert_false(kp_trace_ratio_keeps(id, 0.49));
    id[9] = 0x80;
    assert_false(kp_trace_ratio_keeps(id, 0.5));
    assert_true(kp_trace_ratio_keeps(id, 0.51));
    /* The high bytes (a time-based prefix in some generators) do not count. */
    memset(id, 0xff, 9);
    id[9] = 0;
    assert_true(kp_trace_ratio_keeps(id, 0.01));
    /* Over many random ids, about the ratio is kept. */
    unsigned kept = 0;
    for (int i = 0; i < 10000; i++) {
        kp_trace_new_id(id, sizeof(id));
        kept += kp_trace_ratio_keeps(id, 0.25);
    }
    assert_in_range(kept, 2000, 3000);
}

/* New ids are never all zero. */
static void new_ids(void **state)
{
    uint8_t a[8], b[8];
    (void)state;
    kp_trace_new_id(a, sizeof(a));
    kp_trace_new_id(b, sizeof(b));
    assert_memory_not_equal(a, b, sizeof(a));
}

static char *read_golden(const char *name)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", GOLDEN_DIR, name);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    static char buf[65536];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    return buf;
}

static struct kp_span_set *sample_set(void)
{
    static const uint8_t trace[16] = {0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6,
                                      0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36};
    static const uint8_t span[8] = {0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7};
    static const uint8_t child[8] = {0x53, 0x99, 0x5c, 0x3f, 0x42, 0xcd, 0x8a, 0xd8};
    const char *reasons[] = {"stop", "length"};
    struct kp_span_set *s = kp_span_set_new(2);
    if (s == NULL)
        return NULL;
    struct kp_span *sp = kp_span_add(s, "POST /v1/chat/completions", KP_SPAN_SERVER, 8);
    if (sp == NULL)
        goto err;
    memcpy(sp->trace_id, trace, 16);
    memcpy(sp->span_id, span, 8);
    sp->start_ns = 1767225600000000000;
    sp->end_ns = 1767225600250000000;
    kp_span_trace_state(s, sp, "vendor=abc");
    kp_span_str(s, sp, "gen_ai.request.model", "gpt-4o-mini");
    kp_span_str(s, sp, "keyplane.feature", "");                         /* empty: left out */
    kp_span_str(s, sp, "keyplane.feature", "sk-proj-abcdefghijklmnop"); /* redacted */
    kp_span_int(sp, "gen_ai.usage.input_tokens", 9);
    kp_span_int(sp, "keyplane.cost_nanousd", -5);
    kp_span_bool(sp, "keyplane.streamed", true);
    kp_span_strs(s, sp, "gen_ai.response.finish_reasons", reasons, 2);
    kp_span_event(sp, "gen_ai.first_token", 1767225600100000000);
    struct kp_span *c = kp_span_add(s, "chat gpt-4o-mini", KP_SPAN_CLIENT, 2);
    if (c == NULL)
        goto err;
    memcpy(c->trace_id, trace, 16);
    memcpy(c->span_id, child, 8);
    memcpy(c->parent_id, span, 8);
    c->start_ns = 1767225600001000000;
    c->end_ns = 1767225600200000000;
    kp_span_int(c, "http.response.status_code", 500);
    kp_span_str(s, c, "keyplane.error_class", "server");
    kp_span_int(c, "one.too.many", 1); /* over max_attrs: left out */
    kp_span_status(s, c, KP_SPAN_ERROR, "server (HTTP 500)");
    return s;
err:
    kp_span_set_free(s);
    return NULL;
}

/* Two spans encode to exactly the golden OTLP/JSON request: hex ids, times
 * and integers as decimal strings, kind and status as numbers, no
 * parentSpanId for a root, a key-shaped value redacted, attributes past a
 * span's room and empty strings left out. */
static void otlp_golden(void **state)
{
    (void)state;
    struct kp_span_set *s = sample_set();
    assert_non_null(s);
    json_t *spans = json_array();
    for (unsigned i = 0; i < s->n; i++)
        json_array_append_new(spans, kp_span_otlp(&s->spans[i]));
    struct kp_span_attr res[1] = {{.key = "service.name", .type = KP_ATTR_STR, .s = "keyplane"}};
    json_t *req = kp_otlp_request(spans, res, 1, "keyplane", "0.1.0");
    assert_non_null(req);
    json_error_t err;
    json_t *want = json_loads(read_golden("otlp/request.json"), 0, &err);
    if (want == NULL)
        fail_msg("golden: %s at line %d", err.text, err.line);
    if (!json_equal(req, want)) {
        char *got = json_dumps(req, JSON_INDENT(2));
        fail_msg("OTLP request differs from the golden file:\n%s", got);
    }
    json_decref(want);
    json_decref(req);
    kp_span_set_free(s);
}

/* Out of memory anywhere, a span set is NULL or short, never a crash or a
 * leak. */
static void span_set_alloc_failures(void **state)
{
    (void)state;
    for (long n = 0; n < 64; n++) {
        kp_alloc_fail_after(n);
        struct kp_span_set *s = sample_set();
        json_t *j = s && s->n > 0 ? kp_span_otlp(&s->spans[0]) : NULL;
        kp_alloc_fail_reset();
        json_decref(j);
        kp_span_set_free(s);
    }
    /* A full set takes no more spans. */
    struct kp_span_set *s = kp_span_set_new(1);
    assert_non_null(kp_span_add(s, "a", KP_SPAN_INTERNAL, 1));
    assert_null(kp_span_add(s, "b", KP_SPAN_INTERNAL, 1));
    kp_span_set_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(traceparent_valid),
        cmocka_unit_test(traceparent_invalid),
        cmocka_unit_test(traceparent_future_version),
        cmocka_unit_test(tracestate_grammar),
        cmocka_unit_test(ratio_sampler),
        cmocka_unit_test(new_ids),
        cmocka_unit_test(otlp_golden),
        cmocka_unit_test(span_set_alloc_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* The stream-event helpers of router/answer_scan.c: where a chunk's
 * "usage" is, and which bytes to drop to relay a chunk without the
 * "usage": null the gateway asked the provider for. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "router/router_internal.h"

/* @in without its "usage": null, as the router relays it; NULL in @want
 * for a chunk that is relayed as it is. */
static void expect_cut(const char *in, const char *want)
{
    size_t from = 0, to = 0, n = strlen(in);
    bool cut = kp_router__null_usage_span(in, n, &from, &to);
    if (want == NULL) {
        if (cut)
            fail_msg("%s: cut [%zu, %zu), wanted none", in, from, to);
        return;
    }
    if (!cut)
        fail_msg("%s: no cut, wanted %s", in, want);
    char out[256];
    assert_true(from <= to && to <= n && n < sizeof(out));
    snprintf(out, sizeof(out), "%.*s%s", (int)from, in, in + to);
    assert_string_equal(out, want);
}

static void test_null_usage_is_cut_with_one_comma(void **state)
{
    (void)state;
    /* OpenAI's shape: last. */
    expect_cut("{\"id\":\"c\",\"choices\":[{\"index\":0}],\"usage\":null}",
               "{\"id\":\"c\",\"choices\":[{\"index\":0}]}");
    /* Python's json.dumps (vLLM and the like): spaces after ',' and ':'. */
    expect_cut("{\"id\": \"c\", \"choices\": [], \"usage\": null}",
               "{\"id\": \"c\", \"choices\": []}");
    /* First, or in the middle: the comma after it goes. */
    expect_cut("{\"usage\":null,\"id\":\"c\"}", "{\"id\":\"c\"}");
    expect_cut("{\"usage\" : null , \"id\":\"c\"}", "{ \"id\":\"c\"}");
    expect_cut("{\"a\":1,\n\"usage\":null,\n\"b\":2}", "{\"a\":1,\n\"b\":2}");
    /* The only member: left alone, so the chunk stays an object. */
    expect_cut("{\"usage\":null}", NULL);
    /* Nothing to cut: a usage object, no usage, or the word in a string. */
    expect_cut("{\"choices\":[],\"usage\":{\"prompt_tokens\":1}}", NULL);
    expect_cut("{\"choices\":[{\"delta\":{\"content\":\"usage\"}}]}", NULL);
    expect_cut("{\"choices\":[{\"delta\":{\"content\":\"\\\"usage\\\":null\"}}]}", NULL);
    expect_cut("{\"usage\":nul", NULL);
    expect_cut("", NULL);
}

static void test_usage_object_is_found(void **state)
{
    static const char obj[] = "{\"choices\":[],\"usage\": {\"prompt_tokens\":1}}";
    static const char null[] = "{\"choices\":[],\"usage\":null}";
    static const char text[] = "{\"choices\":[{\"delta\":{\"content\":\"usage\"}}]}";
    (void)state;
    assert_true(kp_router__has_usage_object(obj, sizeof(obj) - 1));
    assert_false(kp_router__has_usage_object(null, sizeof(null) - 1));
    assert_false(kp_router__has_usage_object(text, sizeof(text) - 1));
    /* The key cut short at the end of the data. */
    assert_false(kp_router__has_usage_object(obj, 21));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_null_usage_is_cut_with_one_comma),
        cmocka_unit_test(test_usage_object_is_found),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

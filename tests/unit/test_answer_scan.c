/* kp_router__usage_member (router/answer_scan.c): what a chunk's "usage"
 * holds, and which bytes to drop to relay a chunk without the
 * "usage": null the gateway asked the provider for, at its end (found
 * without a search) and elsewhere. */
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
    size_t from = 9, to = 9, n = strlen(in);
    enum kp_usage_member um = kp_router__usage_member(in, n, &from, &to);
    bool cut = um == KP_USAGE_NULL && from < to;
    if (um != KP_USAGE_NULL)
        assert_true(from == 0 && to == 0);
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
    /* Trailing whitespace, or some before the brace. */
    expect_cut("{\"id\":\"c\",\"usage\":null}\r\n", "{\"id\":\"c\"}\r\n");
    expect_cut("{\"id\":\"c\",\"usage\":null }", "{\"id\":\"c\" }");
    /* A key that only ends in usage is another member, and so is one with
     * an escaped quote before "usage" (the quote opens no name). */
    expect_cut("{\"id\":\"c\",\"x_usage\":null}", NULL);
    expect_cut("{\"x\\\"usage\":null,\"a\":1}", NULL);
    expect_cut("{\"x\\\"usage\":null}", NULL);
    expect_cut("{\"a\":\"b\\\",\\\"usage\\\":null\"}", NULL);
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
    size_t from, to;
    assert_int_equal(kp_router__usage_member(obj, sizeof(obj) - 1, &from, &to), KP_USAGE_OBJECT);
    assert_int_equal(kp_router__usage_member(null, sizeof(null) - 1, &from, &to), KP_USAGE_NULL);
    assert_int_equal(kp_router__usage_member(text, sizeof(text) - 1, &from, &to), KP_USAGE_NONE);
    /* The key cut short at the end of the data. */
    assert_int_equal(kp_router__usage_member(obj, 21, &from, &to), KP_USAGE_NONE);
    /* A null in a nested object does not hide the object after it. */
    static const char nested[] =
        "{\"choices\":[{\"usage\":null,\"i\":0}],\"usage\":{\"prompt_tokens\":1}}";
    assert_int_equal(kp_router__usage_member(nested, sizeof(nested) - 1, &from, &to),
                     KP_USAGE_OBJECT);
    assert_true(from == 0 && to == 0);
    /* The only member: null, but nothing to cut. */
    assert_int_equal(kp_router__usage_member("{\"usage\":null}", 14, &from, &to), KP_USAGE_NULL);
    assert_int_equal(from, to);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_null_usage_is_cut_with_one_comma),
        cmocka_unit_test(test_usage_object_is_found),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

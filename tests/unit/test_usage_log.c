/* node/usage.c: the ring of recent usage events behind
 * GET /admin/v1/usage/recent. Events go in encoded and come out as JSON,
 * oldest first, the last 10,000 at most; one longer than a ring slot
 * (long names) comes out whole. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "node.h"

static void record(struct kp_usage_log *l, unsigned i, bool long_names)
{
    struct kp_usage_event ev;
    struct kp_buf enc;
    char why[200];
    kp_usage_event_init(&ev);
    ev.time_ms = 1767225600000 + i;
    snprintf(ev.request_id, sizeof(ev.request_id), "r-%u", i);
    snprintf(ev.node, sizeof(ev.node), "n1");
    ev.tokens_in = i;
    if (long_names) {
        memset(ev.model_requested, 'm', KP_USAGE_STR_MAX);
        ev.model_requested[KP_USAGE_STR_MAX] = '\0';
        memset(ev.feature, 'f', KP_USAGE_STR_MAX);
        ev.feature[KP_USAGE_STR_MAX] = '\0';
    }
    kp_buf_init(&enc);
    assert_int_equal(kp_usage_event_encode(&ev, &enc, why, sizeof(why)), KP_OK);
    kp_usage_log_record(l, enc.data, enc.len);
    kp_buf_free(&enc);
}

static void test_recent_in_order(void **state)
{
    (void)state;
    struct kp_usage_log *l = kp_usage_log_new();
    assert_non_null(l);
    json_t *none = kp_usage_log_recent(l, 100);
    assert_int_equal(json_array_size(none), 0);
    json_decref(none);
    for (unsigned i = 0; i < 10005; i++)
        record(l, i, i % 1000 == 7);
    json_t *all = kp_usage_log_recent(l, 10000);
    assert_int_equal(json_array_size(all), 10000);
    for (size_t k = 0; k < 10000; k++) {
        json_t *e = json_array_get(all, k);
        unsigned i = (unsigned)k + 5; /* the first five were overwritten */
        char rid[32];
        snprintf(rid, sizeof(rid), "r-%u", i);
        assert_string_equal(json_string_value(json_object_get(e, "request_id")), rid);
        assert_int_equal(json_integer_value(json_object_get(e, "tokens_in")), i);
        size_t want = i % 1000 == 7 ? KP_USAGE_STR_MAX : 0;
        assert_int_equal(strlen(json_string_value(json_object_get(e, "model_requested"))), want);
        assert_int_equal(strlen(json_string_value(json_object_get(e, "feature"))), want);
    }
    json_decref(all);
    json_t *last = kp_usage_log_recent(l, 2);
    assert_int_equal(json_array_size(last), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(last, 1), "request_id")),
                        "r-10004");
    json_decref(last);
    kp_usage_log_free(l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_recent_in_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

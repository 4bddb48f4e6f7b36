/* Unit tests of the canary rules (node/canary.h): the jittered schedule
 * every leader computes alike, the probe each provider kind gets, the
 * classification of answers and the status rule with its hysteresis. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "canary.h"

#define MIN5 300000LL
#define T0   1767225600000LL

/* A key never probed is due at once; a probed one within ±20% of the
 * interval, the same for every caller, and spread over that range. */
static void test_due(void **state)
{
    (void)state;
    assert_int_equal(kp_canary_due_ms("k1", 0, MIN5), 0);
    int64_t lo = INT64_MAX, hi = 0;
    for (int i = 0; i < 1000; i++) {
        char id[32];
        snprintf(id, sizeof(id), "k-%d", i);
        int64_t due = kp_canary_due_ms(id, T0 + i, MIN5);
        assert_int_equal(due, kp_canary_due_ms(id, T0 + i, MIN5));
        int64_t gap = due - (T0 + i);
        assert_true(gap >= MIN5 * 8 / 10 && gap <= MIN5 * 12 / 10);
        lo = gap < lo ? gap : lo;
        hi = gap > hi ? gap : hi;
    }
    assert_true(lo < MIN5 * 85 / 100);
    assert_true(hi > MIN5 * 115 / 100);
    /* A tiny interval still moves forward. */
    assert_int_equal(kp_canary_due_ms("k", T0, 1), T0 + 1);
}

static uint8_t blob[4];
static struct kp_key_secret secret = {
    .version = 1, .sealed = {.p = blob, .n = sizeof(blob)}, .state = KP_SECRET_PRIMARY};

/* Only active keys with a secret and not disabled by an operator. */
static void test_wanted(void **state)
{
    (void)state;
    struct kp_key k = {.e = {.id = (char *)"k"}, .secrets = &secret, .nsecrets = 1};
    struct kp_key_health h = {.status = KP_HEALTH_INVALID};
    assert_true(kp_canary_wanted(&k, NULL));
    assert_true(kp_canary_wanted(&k, &h));
    h.status = KP_HEALTH_DISABLED;
    assert_false(kp_canary_wanted(&k, &h));
    k.status = KP_KEY_REVOKED;
    assert_false(kp_canary_wanted(&k, NULL));
    k.status = KP_KEY_ACTIVE;
    k.nsecrets = 0;
    assert_false(kp_canary_wanted(&k, NULL));
}

/* Each provider kind gets its cheap request and auth header. */
static void test_request(void **state)
{
    (void)state;
    struct kp_key k = {.e = {.id = (char *)"k"}};
    struct kp_provider p = {.kind = KP_PROVIDER_OPENAI, .base_url = (char *)"http://m/v1/"};
    struct kp_canary_request r;
    assert_int_equal(kp_canary_request(&p, &k, &r), KP_OK);
    assert_string_equal(r.method, "GET");
    assert_string_equal(r.url, "http://m/v1/models");
    assert_string_equal(r.auth_name, "Authorization");
    assert_true(r.bearer);
    assert_string_equal(r.body, "");

    p.kind = KP_PROVIDER_AZURE_OPENAI;
    p.api_version = (char *)"2024-10-21";
    assert_int_equal(kp_canary_request(&p, &k, &r), KP_OK);
    assert_string_equal(r.url, "http://m/v1/openai/models?api-version=2024-10-21");
    assert_string_equal(r.auth_name, "api-key");
    assert_false(r.bearer);

    p.kind = KP_PROVIDER_ANTHROPIC;
    char *models[] = {(char *)"claude-x"};
    k.models.v = models;
    k.models.n = 1;
    assert_int_equal(kp_canary_request(&p, &k, &r), KP_OK);
    assert_string_equal(r.method, "POST");
    assert_string_equal(r.url, "http://m/v1/messages");
    assert_string_equal(r.auth_name, "x-api-key");
    assert_true(r.anthropic_version);
    assert_non_null(strstr(r.body, "\"model\":\"claude-x\""));
    assert_non_null(strstr(r.body, "\"max_tokens\":1"));

    p.kind = KP_PROVIDER_GEMINI;
    assert_int_equal(kp_canary_request(&p, &k, &r), KP_OK);
    assert_string_equal(r.url, "http://m/v1/models");
    assert_string_equal(r.auth_name, "x-goog-api-key");
}

/* Answers map to outcomes and error classes as passive traffic does. */
static void test_classify(void **state)
{
    (void)state;
    const char *c;
    assert_int_equal(kp_canary_classify(200, "{}", false, &c), KP_CANARY_OK);
    assert_string_equal(c, "");
    assert_int_equal(kp_canary_classify(401, NULL, false, &c), KP_CANARY_AUTH);
    assert_string_equal(c, "auth");
    assert_int_equal(kp_canary_classify(403, NULL, false, &c), KP_CANARY_AUTH);
    assert_int_equal(
        kp_canary_classify(429, "{\"error\":{\"code\":\"insufficient_quota\"}}", false, &c),
        KP_CANARY_QUOTA);
    assert_string_equal(c, "quota");
    assert_int_equal(kp_canary_classify(400, "credit balance is too low", false, &c),
                     KP_CANARY_QUOTA);
    assert_int_equal(kp_canary_classify(429, "{}", false, &c), KP_CANARY_RATE_LIMIT);
    assert_string_equal(c, "rate_limit");
    assert_int_equal(kp_canary_classify(503, NULL, false, &c), KP_CANARY_FAILED);
    assert_string_equal(c, "server");
    assert_int_equal(kp_canary_classify(0, NULL, true, &c), KP_CANARY_FAILED);
    assert_string_equal(c, "timeout");
    assert_int_equal(kp_canary_classify(0, NULL, false, &c), KP_CANARY_FAILED);
    assert_string_equal(c, "connect");
    assert_int_equal(kp_canary_classify(404, NULL, false, &c), KP_CANARY_FAILED);
    assert_string_equal(c, "client");
}

/* Two failures in a row degrade (or rate-limit) a healthy key, one does
 * not; two successes in a row make it healthy again. */
static void test_hysteresis(void **state)
{
    (void)state;
    int32_t s;
    int st = kp_canary_next(KP_HEALTH_HEALTHY, 0, KP_CANARY_FAILED, &s);
    assert_int_equal(st, KP_HEALTH_HEALTHY);
    assert_int_equal(s, -1);
    st = kp_canary_next(st, s, KP_CANARY_FAILED, &s);
    assert_int_equal(st, KP_HEALTH_DEGRADED);
    assert_int_equal(s, -2);
    st = kp_canary_next(st, s, KP_CANARY_OK, &s);
    assert_int_equal(st, KP_HEALTH_DEGRADED);
    assert_int_equal(s, 1);
    st = kp_canary_next(st, s, KP_CANARY_FAILED, &s); /* the streak restarts */
    assert_int_equal(st, KP_HEALTH_DEGRADED);
    st = kp_canary_next(st, s, KP_CANARY_OK, &s);
    assert_int_equal(st, KP_HEALTH_DEGRADED);
    st = kp_canary_next(st, s, KP_CANARY_OK, &s);
    assert_int_equal(st, KP_HEALTH_HEALTHY);
    assert_int_equal(s, 2);

    st = kp_canary_next(KP_HEALTH_HEALTHY, -1, KP_CANARY_RATE_LIMIT, &s);
    assert_int_equal(st, KP_HEALTH_RATE_LIMITED);
    st = kp_canary_next(st, s, KP_CANARY_OK, &s);
    assert_int_equal(st, KP_HEALTH_RATE_LIMITED);
    st = kp_canary_next(st, s, KP_CANARY_OK, &s);
    assert_int_equal(st, KP_HEALTH_HEALTHY);
}

/* auth and quota act at once; only a success brings such a key back, at
 * once; an operator's disabled is never changed by a probe. */
static void test_out_and_back(void **state)
{
    (void)state;
    int32_t s;
    assert_int_equal(kp_canary_next(KP_HEALTH_HEALTHY, 5, KP_CANARY_AUTH, &s), KP_HEALTH_INVALID);
    assert_int_equal(s, -1);
    assert_int_equal(kp_canary_next(KP_HEALTH_DEGRADED, 0, KP_CANARY_QUOTA, &s),
                     KP_HEALTH_QUOTA_EXHAUSTED);
    assert_int_equal(kp_canary_next(KP_HEALTH_INVALID, -7, KP_CANARY_FAILED, &s),
                     KP_HEALTH_INVALID);
    assert_int_equal(kp_canary_next(KP_HEALTH_QUOTA_EXHAUSTED, -7, KP_CANARY_RATE_LIMIT, &s),
                     KP_HEALTH_QUOTA_EXHAUSTED);
    assert_int_equal(kp_canary_next(KP_HEALTH_INVALID, -3, KP_CANARY_OK, &s), KP_HEALTH_HEALTHY);
    assert_int_equal(s, 1);
    assert_int_equal(kp_canary_next(KP_HEALTH_QUOTA_EXHAUSTED, 0, KP_CANARY_OK, &s),
                     KP_HEALTH_HEALTHY);
    assert_int_equal(kp_canary_next(KP_HEALTH_DISABLED, 0, KP_CANARY_OK, &s), KP_HEALTH_DISABLED);
    assert_int_equal(kp_canary_next(KP_HEALTH_DISABLED, 0, KP_CANARY_AUTH, &s), KP_HEALTH_DISABLED);
    assert_true(kp_canary_out_of_rotation(KP_HEALTH_INVALID));
    assert_true(kp_canary_out_of_rotation(KP_HEALTH_QUOTA_EXHAUSTED));
    assert_false(kp_canary_out_of_rotation(KP_HEALTH_DEGRADED));
}

/* Traffic moves a healthy key only, on enough events in the last minute,
 * and not within a minute of its return; it never brings a key back. */
static void test_passive(void **state)
{
    (void)state;
    const char *cls;
    const int64_t long_ago = KP_PASSIVE_QUIET_MS;
    struct kp_alert_key_stats s = {.attempts_1m = 9, .errors_1m = 9};
    assert_false(kp_passive_troubled(&s, &cls));
    assert_int_equal(kp_passive_next(KP_HEALTH_HEALTHY, &s, long_ago, &cls), KP_HEALTH_HEALTHY);
    assert_string_equal(cls, "");
    s.attempts_1m = 10;
    s.errors_1m = 4;
    assert_int_equal(kp_passive_next(KP_HEALTH_HEALTHY, &s, long_ago, &cls), KP_HEALTH_HEALTHY);
    s.errors_1m = 5;
    assert_true(kp_passive_troubled(&s, &cls));
    assert_int_equal(kp_passive_next(KP_HEALTH_HEALTHY, &s, long_ago, &cls), KP_HEALTH_DEGRADED);
    assert_string_equal(cls, "error_rate");
    /* Back less than a minute ago: the window still holds the old failures. */
    assert_int_equal(kp_passive_next(KP_HEALTH_HEALTHY, &s, long_ago - 1, &cls), KP_HEALTH_HEALTHY);
    /* The five-minute figures play no part. */
    s = (struct kp_alert_key_stats){.attempts_5m = 1000, .errors_5m = 1000};
    assert_false(kp_passive_troubled(&s, &cls));
    s = (struct kp_alert_key_stats){.attempts_1m = 200, .errors_1m = 99, .rate_limited_1m = 99};
    assert_int_equal(kp_passive_next(KP_HEALTH_HEALTHY, &s, long_ago, &cls), KP_HEALTH_HEALTHY);
    s.rate_limited_1m = s.errors_1m = 100;
    assert_int_equal(kp_passive_next(KP_HEALTH_HEALTHY, &s, long_ago, &cls),
                     KP_HEALTH_RATE_LIMITED);
    assert_string_equal(cls, "rate_limit");
    s = (struct kp_alert_key_stats){.attempts_1m = 12, .errors_1m = 9, .rate_limited_1m = 9};
    assert_int_equal(kp_passive_next(KP_HEALTH_HEALTHY, &s, long_ago, &cls), KP_HEALTH_DEGRADED);
    s.rate_limited_1m = s.errors_1m = 10;
    assert_int_equal(kp_passive_next(KP_HEALTH_HEALTHY, &s, long_ago, &cls),
                     KP_HEALTH_RATE_LIMITED);
    /* Only a healthy key moves; clean traffic leaves others as they are. */
    s = (struct kp_alert_key_stats){.attempts_1m = 100};
    for (int st = 0; st <= KP_HEALTH_DISABLED; st++)
        assert_int_equal(kp_passive_next(st, &s, long_ago, &cls), st);
    s.errors_1m = 100;
    assert_int_equal(kp_passive_next(KP_HEALTH_INVALID, &s, long_ago, &cls), KP_HEALTH_INVALID);
    assert_int_equal(kp_passive_next(KP_HEALTH_RATE_LIMITED, &s, long_ago, &cls),
                     KP_HEALTH_RATE_LIMITED);
}

static void test_outcome_names(void **state)
{
    (void)state;
    enum kp_canary_outcome o;
    for (int i = KP_CANARY_OK; i <= KP_CANARY_FAILED; i++) {
        assert_true(kp_canary_outcome_parse(kp_canary_outcome_name(i), &o));
        assert_int_equal(o, i);
    }
    assert_false(kp_canary_outcome_parse("maybe", &o));
    assert_false(kp_canary_outcome_parse(NULL, &o));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_due),        cmocka_unit_test(test_wanted),
        cmocka_unit_test(test_request),    cmocka_unit_test(test_classify),
        cmocka_unit_test(test_hysteresis), cmocka_unit_test(test_out_and_back),
        cmocka_unit_test(test_passive),    cmocka_unit_test(test_outcome_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* router/breaker: when a key's breaker opens, reopens and closes, and the
 * keyplane_router_breakers_tripped gauge that counts the workers holding
 * one tripped. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "raftstore/raftstore.h"
#include "router/router_internal.h"

struct seen {
    const char *key;
    int64_t value;
};

static void see(void *arg, const char *const values[], int64_t v)
{
    struct seen *s = arg;
    if (strcmp(values[0], s->key) == 0)
        s->value = v;
}

static int64_t tripped(const char *key)
{
    struct seen s = {key, 0};
    kp_metric_family_each("keyplane_router_breakers_tripped", see, &s);
    return s.value;
}

static void fail_n(struct kp_breakers *b, const char *key, int times, int64_t now_ms)
{
    for (int i = 0; i < times; i++)
        kp_breaker_failure(b, key, "server", 0, 0, now_ms);
}

/* Three failures in a row open a worker's breaker; each worker counts
 * once however often it reopens; a success closes it; a worker that goes
 * away takes its count with it. Rate limits and client errors trip
 * nothing. */
static void test_tripped_gauge(void **state)
{
    (void)state;
    kp_router__metrics_init();
    struct kp_breakers *w1 = kp_breakers_new(), *w2 = kp_breakers_new();
    assert_non_null(w1);
    assert_non_null(w2);
    int64_t now = 1000000;

    fail_n(w1, "k1", 2, now);
    assert_false(kp_breaker_open(w1, "k1", now));
    assert_int_equal(tripped("k1"), 0);
    fail_n(w1, "k1", 1, now);
    assert_true(kp_breaker_open(w1, "k1", now));
    assert_int_equal(tripped("k1"), 1);
    /* Half-open after 5 s: one more failure reopens it, still one worker. */
    fail_n(w1, "k1", 1, now + 6000);
    assert_true(kp_breaker_open(w1, "k1", now + 6000));
    assert_int_equal(tripped("k1"), 1);

    fail_n(w2, "k1", 3, now);
    assert_int_equal(tripped("k1"), 2);
    kp_breaker_failure(w2, "k2", "rate_limit", 1000, 0, now);
    kp_breaker_failure(w2, "k2", "client", 0, 0, now);
    assert_int_equal(tripped("k2"), 0);

    kp_breaker_success(w1, "k1");
    assert_false(kp_breaker_open(w1, "k1", now));
    assert_int_equal(tripped("k1"), 1);
    kp_breaker_success(w1, "k1"); /* closed already: no change */
    assert_int_equal(tripped("k1"), 1);
    kp_breakers_free(w2);
    assert_int_equal(tripped("k1"), 0);
    kp_breakers_free(w1);
}

/* A caller's open_after above 3 (a provider's max_retries + 1) holds the
 * breaker closed until that many failures in a row; below 3 changes
 * nothing. Half-open, one failure reopens it either way. */
static void test_open_after(void **state)
{
    (void)state;
    kp_router__metrics_init();
    struct kp_breakers *w = kp_breakers_new();
    assert_non_null(w);
    int64_t now = 1000000;
    for (int i = 0; i < 4; i++)
        kp_breaker_failure(w, "k5", "server", 0, 5, now);
    assert_false(kp_breaker_open(w, "k5", now));
    kp_breaker_failure(w, "k5", "timeout", 0, 5, now);
    assert_true(kp_breaker_open(w, "k5", now));
    kp_breaker_failure(w, "k5", "server", 0, 5, now + 6000); /* half-open trial failed */
    assert_true(kp_breaker_open(w, "k5", now + 6000));
    for (int i = 0; i < 2; i++)
        kp_breaker_failure(w, "k1", "connect", 0, 1, now);
    assert_false(kp_breaker_open(w, "k1", now));
    kp_breaker_failure(w, "k1", "connect", 0, 1, now);
    assert_true(kp_breaker_open(w, "k1", now));
    kp_breakers_free(w);
}

/* When all 16 slots a key may use hold open breakers, a new key's
 * failure takes the slot whose wait ends first: that key's breaker is
 * forgotten on this worker, and the gauge counts it no more. */
static void test_evicted_breaker_leaves_the_gauge(void **state)
{
    (void)state;
    kp_router__metrics_init();
    static char keys[17][16];
    uint32_t want = 0;
    int n = 0;
    for (unsigned i = 0; n < 17 && i < 10000000; i++) {
        char k[16];
        snprintf(k, sizeof(k), "ev-%u", i);
        uint32_t h = kp_fnv1a(KP_FNV1A_INIT, k, strlen(k)) & 1023u; /* breaker.c's slot */
        if (n == 0)
            want = h;
        if (h == want)
            memcpy(keys[n++], k, sizeof(k));
    }
    assert_int_equal(n, 17);
    struct kp_breakers *w = kp_breakers_new();
    assert_non_null(w);
    int64_t now = 1000000;
    for (int i = 0; i < 16; i++) /* keys[0]'s wait ends first */
        fail_n(w, keys[i], 3, now + i);
    for (int i = 0; i < 16; i++) {
        assert_true(kp_breaker_open(w, keys[i], now + 16));
        assert_int_equal(tripped(keys[i]), 1);
    }
    fail_n(w, keys[16], 1, now + 16);
    assert_int_equal(tripped(keys[0]), 0);
    assert_false(kp_breaker_open(w, keys[0], now + 16));
    for (int i = 1; i < 16; i++)
        assert_int_equal(tripped(keys[i]), 1);
    kp_breakers_free(w);
    for (int i = 0; i < 16; i++)
        assert_int_equal(tripped(keys[i]), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tripped_gauge),
        cmocka_unit_test(test_evicted_breaker_leaves_the_gauge),
        cmocka_unit_test(test_open_after),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

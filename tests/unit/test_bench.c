/* Unit tests of keyplane-bench (bench/): the histogram on known
 * distributions, the open-loop schedule, the argument errors, and whole runs
 * against a tiny libuv server in this process that can stall on purpose and
 * can answer with SSE. Timing assertions are lower bounds only (a latency
 * cannot be shorter than a stall the server really made), never tight. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <uv.h>

#include "bench/bench.h"
#include "bench/response.h"
#include "core/core.h"

#define MS 1000000ull

/* --- histogram ----------------------------------------------------------- */

/* Values below 2048 are counted exactly, so every percentile is exact. */
static void test_hist_exact_small(void **state)
{
    struct kp_bench_hist h;
    (void)state;
    assert_int_equal(kp_bench_hist_init(&h, 1000000), KP_OK);
    for (uint64_t v = 1; v <= 1000; v++)
        kp_bench_hist_record(&h, v);
    assert_int_equal(kp_bench_hist_percentile(&h, 50), 500);
    assert_int_equal(kp_bench_hist_percentile(&h, 90), 900);
    assert_int_equal(kp_bench_hist_percentile(&h, 99), 990);
    assert_int_equal(kp_bench_hist_percentile(&h, 99.9), 999);
    assert_int_equal(kp_bench_hist_percentile(&h, 100), 1000);
    assert_int_equal(h.min, 1);
    assert_true(kp_bench_hist_mean(&h) == 500.5);
    kp_bench_hist_close(&h);
}

static void assert_within_permille(uint64_t got, uint64_t want)
{
    double err = ((double)got - (double)want) / (double)want;
    if (err < 0)
        err = -err;
    if (err > 0.001)
        fail_msg("got %llu, want %llu within 0.1%%", (unsigned long long)got,
                 (unsigned long long)want);
}

/* A uniform distribution over 1..1,000,000 ns gives its percentiles back to
 * three significant digits, never below the true value; max and mean are
 * exact. */
static void test_hist_uniform(void **state)
{
    struct kp_bench_hist h;
    (void)state;
    assert_int_equal(kp_bench_hist_init(&h, 3600ull * 1000 * MS), KP_OK);
    for (uint64_t v = 1; v <= 1000000; v++)
        kp_bench_hist_record(&h, v);
    const double pcts[] = {50, 90, 99, 99.9};
    const uint64_t want[] = {500000, 900000, 990000, 999000};
    for (int i = 0; i < 4; i++) {
        uint64_t got = kp_bench_hist_percentile(&h, pcts[i]);
        assert_true(got >= want[i]);
        assert_within_permille(got, want[i]);
    }
    assert_int_equal(kp_bench_hist_percentile(&h, 100), 1000000);
    assert_int_equal(h.max, 1000000);
    assert_int_equal(h.total, 1000000);
    assert_true(kp_bench_hist_mean(&h) == 500000.5);
    kp_bench_hist_close(&h);
}

/* 99% fast and 1% slow: p99 is still fast, p99.9 is slow. This is the shape
 * a stall leaves, and the tail must not be averaged away. */
static void test_hist_bimodal(void **state)
{
    struct kp_bench_hist h;
    (void)state;
    assert_int_equal(kp_bench_hist_init(&h, 3600ull * 1000 * MS), KP_OK);
    for (int i = 0; i < 9900; i++)
        kp_bench_hist_record(&h, 1 * MS);
    for (int i = 0; i < 100; i++)
        kp_bench_hist_record(&h, 100 * MS);
    assert_within_permille(kp_bench_hist_percentile(&h, 50), 1 * MS);
    assert_within_permille(kp_bench_hist_percentile(&h, 99), 1 * MS);
    assert_int_equal(kp_bench_hist_percentile(&h, 99.9), 100 * MS);
    assert_int_equal(h.max, 100 * MS);
    kp_bench_hist_close(&h);
}

/* Every value lies in its bucket, and a bucket spans at most 1/1024 of its
 * lowest value: the three-digit promise, across the whole range. */
static void test_hist_bucket_bounds(void **state)
{
    (void)state;
    uint64_t x = 88172645463325252ull;
    for (int i = 0; i < 100000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        uint64_t v = x >> (x % 60);
        uint64_t lo = kp_bench_hist_lowest_equivalent(v);
        uint64_t hi = kp_bench_hist_highest_equivalent(v);
        assert_true(lo <= v && v <= hi);
        if (v >= 2048)
            assert_true((double)(hi - lo + 1) / (double)lo <= 1.0 / 1024);
        else
            assert_true(lo == v && hi == v);
    }
}

/* Two histograms merged hold what one would have held; layouts that differ
 * are refused; values beyond the range still count with the true max. */
static void test_hist_merge_and_overflow(void **state)
{
    struct kp_bench_hist a, b, c, small;
    (void)state;
    assert_int_equal(kp_bench_hist_init(&a, 1ull << 40), KP_OK);
    assert_int_equal(kp_bench_hist_init(&b, 1ull << 40), KP_OK);
    assert_int_equal(kp_bench_hist_init(&c, 1ull << 40), KP_OK);
    assert_int_equal(kp_bench_hist_init(&small, 1ull << 20), KP_OK);
    for (uint64_t v = 1; v <= 20000; v++) {
        kp_bench_hist_record(v % 2 ? &a : &b, v * 1000);
        kp_bench_hist_record(&c, v * 1000);
    }
    assert_int_equal(kp_bench_hist_merge(&a, &b), KP_OK);
    assert_int_equal(a.total, c.total);
    for (double p = 1; p <= 100; p += 0.5)
        assert_int_equal(kp_bench_hist_percentile(&a, p), kp_bench_hist_percentile(&c, p));
    assert_int_equal(kp_bench_hist_merge(&a, &small), KP_EINVAL);
    kp_bench_hist_record(&small, 1ull << 30);
    assert_int_equal(small.max, 1ull << 30);
    assert_int_equal(kp_bench_hist_percentile(&small, 100), 1ull << 30);
    assert_true(kp_bench_hist_percentile(&small, 50) >= 1ull << 20);
    kp_bench_hist_close(&a);
    kp_bench_hist_close(&b);
    kp_bench_hist_close(&c);
    kp_bench_hist_close(&small);
}

/* --- schedule ------------------------------------------------------------ */

/* At 1000 req/s request i is due at start + i ms, and nothing is handed out
 * before it is due, however often the caller asks. */
static void test_sched_times(void **state)
{
    struct kp_bench_sched s;
    uint64_t g, due;
    (void)state;
    kp_bench_sched_init(&s, 1000, 5 * MS, 1, 0, KP_BENCH_NEVER, KP_BENCH_NEVER);
    assert_false(kp_bench_sched_take(&s, 5 * MS - 1, &g, &due));
    assert_true(kp_bench_sched_take(&s, 5 * MS, &g, &due));
    assert_int_equal(g, 0);
    assert_int_equal(due, 5 * MS);
    assert_false(kp_bench_sched_take(&s, 6 * MS - 1, &g, &due));
    assert_int_equal(kp_bench_sched_next_time(&s), 6 * MS);
    for (uint64_t i = 1; i < 1000; i++)
        assert_int_equal(kp_bench_sched_time(&s, i), 5 * MS + i * MS);
}

/* A caller that is late (every connection busy for 10.5 ms) finds eleven
 * requests due, and they come out with their original due times: lateness
 * is never forgiven, which is what makes a stall visible. */
static void test_sched_backlog_keeps_due_times(void **state)
{
    struct kp_bench_sched s;
    uint64_t g, due;
    (void)state;
    kp_bench_sched_init(&s, 1000, 0, 1, 0, KP_BENCH_NEVER, KP_BENCH_NEVER);
    uint64_t now = 10 * MS + MS / 2;
    assert_int_equal(kp_bench_sched_backlog(&s, now), 11);
    for (uint64_t i = 0; i < 11; i++) {
        assert_true(kp_bench_sched_take(&s, now, &g, &due));
        assert_int_equal(g, i);
        assert_int_equal(due, i * MS);
        assert_int_equal(kp_bench_sched_backlog(&s, now), 10 - i);
    }
    assert_false(kp_bench_sched_take(&s, now, &g, &due));
}

/* Three threads with stride 3 together hand out exactly the one schedule,
 * each request once. */
static void test_sched_threads_share(void **state)
{
    struct kp_bench_sched s[3];
    uint64_t seen[300] = {0};
    uint64_t g, due;
    (void)state;
    for (unsigned k = 0; k < 3; k++)
        kp_bench_sched_init(&s[k], 3000, 0, 3, k, 300, KP_BENCH_NEVER);
    for (unsigned k = 0; k < 3; k++) {
        while (kp_bench_sched_take(&s[k], KP_BENCH_NEVER - 1, &g, &due)) {
            assert_true(g < 300);
            assert_int_equal(due, kp_bench_sched_time(&s[k], g));
            seen[g]++;
        }
        assert_true(kp_bench_sched_done(&s[k]));
    }
    for (int i = 0; i < 300; i++)
        assert_int_equal(seen[i], 1);
}

/* The end time and the count both close the schedule; the warm-up share is
 * the number of requests due before it ends. */
static void test_sched_limits(void **state)
{
    struct kp_bench_sched s;
    uint64_t g, due, n = 0;
    (void)state;
    kp_bench_sched_init(&s, 100, 0, 1, 0, KP_BENCH_NEVER, 1000 * MS);
    while (kp_bench_sched_take(&s, 2000 * MS, &g, &due))
        n++;
    assert_int_equal(n, 100);
    kp_bench_sched_init(&s, 100, 0, 1, 0, 7, KP_BENCH_NEVER);
    assert_int_equal(kp_bench_sched_backlog(&s, 2000 * MS), 7);
    assert_int_equal(kp_bench_sched_count_before(100, 1000 * MS), 100);
    assert_int_equal(kp_bench_sched_count_before(100, 1005 * MS), 101);
    assert_int_equal(kp_bench_sched_count_before(100, 0), 0);
}

/* --- requests and arguments ---------------------------------------------- */

#define ARGV(...) ((char *[]){"keyplane-bench", __VA_ARGS__, NULL})
#define ARGC(...) ((int)(sizeof((char *[]){"keyplane-bench", __VA_ARGS__}) / sizeof(char *)))
#define PARSE(cfg, err, ...)                                                                       \
    kp_bench_args_parse(cfg, ARGC(__VA_ARGS__), ARGV(__VA_ARGS__), err, sizeof(err))

static void expect_error(int rv, const char *errmsg, int want, const char *fragment)
{
    assert_int_equal(rv, want);
    if (strstr(errmsg, fragment) == NULL)
        fail_msg("error '%s' does not mention '%s'", errmsg, fragment);
}

/* Each argument mistake fails with a message that names what is wrong. */
static void test_args_errors(void **state)
{
    struct kp_bench_config cfg;
    char err[512];
    (void)state;
    expect_error(PARSE(&cfg, err, "--rate", "10"), err, KP_EINVAL, "--url is required");
    expect_error(PARSE(&cfg, err, "--url", "127.0.0.1:80"), err, KP_EINVAL, "expected http[s]://");
    expect_error(PARSE(&cfg, err, "--url", "ftp://x/"), err, KP_EINVAL, "bad URL 'ftp://x/'");
    expect_error(PARSE(&cfg, err, "--url", "https://x/", "--cacert", "/nonexistent/ca.crt"), err,
                 KP_ENOENT, "--cacert '/nonexistent/ca.crt': No such file");
    expect_error(PARSE(&cfg, err, "--url", "http://x:99999/"), err, KP_EINVAL, "port");
    expect_error(PARSE(&cfg, err, "--url", "http://:80/"), err, KP_EINVAL, "no host");
    expect_error(PARSE(&cfg, err, "--url", "http://x/", "--body", "/nonexistent/body.json"), err,
                 KP_ENOENT, "'/nonexistent/body.json': No such file");
    expect_error(PARSE(&cfg, err, "--url", "http://x/", "--rate", "0"), err, KP_EINVAL,
                 "--rate '0'");
    expect_error(PARSE(&cfg, err, "--url", "http://x/", "--rate", "fast"), err, KP_EINVAL,
                 "--rate 'fast'");
    expect_error(PARSE(&cfg, err, "--url", "http://x/", "--connections", "0"), err, KP_EINVAL,
                 "--connections '0'");
    expect_error(PARSE(&cfg, err, "--url", "http://x/", "--duration", "ten"), err, KP_EINVAL,
                 "--duration 'ten'");
    expect_error(PARSE(&cfg, err, "--url", "http://x/", "--duration", "5", "--requests", "9"), err,
                 KP_EINVAL, "not both");
    expect_error(PARSE(&cfg, err, "--url", "http://x/", "--header", "NoColon"), err, KP_EINVAL,
                 "'Name: value'");
    expect_error(PARSE(&cfg, err, "--url", "http://x/", "--mix", "chat_huge=1"), err, KP_EINVAL,
                 "unknown kind 'chat_huge'");
    expect_error(PARSE(&cfg, err, "--url", "http://x/", "--mix", "chat_small=x"), err, KP_EINVAL,
                 "weight");
    expect_error(PARSE(&cfg, err, "--url", "http://x/", "--mix", "chat_small=0"), err, KP_EINVAL,
                 "above 0");
    expect_error(PARSE(&cfg, err, "--url", "http://x/", "--threads", "4", "--connections", "2"),
                 err, KP_EINVAL, "every thread needs a connection");
    expect_error(PARSE(&cfg, err, "--url", "http://x/", "--frobnicate", "1"), err, KP_EINVAL,
                 "unknown option '--frobnicate'");
    expect_error(PARSE(&cfg, err, "--url"), err, KP_EINVAL, "--url needs a value");
    kp_bench_config_free(&cfg);
}

/* The defaults: closed loop on 16 connections for 10 s; --rate switches to
 * open loop with a pool of 64; "--flag=value" works too. */
static void test_args_defaults(void **state)
{
    struct kp_bench_config cfg;
    char err[512];
    (void)state;
    assert_int_equal(PARSE(&cfg, err, "--url", "http://127.0.0.1:7600"), KP_OK);
    assert_int_equal(cfg.mode, KP_BENCH_CLOSED_LOOP);
    assert_int_equal(cfg.connections, 16);
    assert_true(cfg.duration_s == 10.0);
    assert_string_equal(cfg.url.path, "/");
    assert_string_equal(cfg.url.hostport, "127.0.0.1:7600");
    assert_int_equal(PARSE(&cfg, err, "--url=http://[::1]/v1?x=1", "--rate=250.5", "-n", "10"),
                     KP_OK);
    assert_int_equal(cfg.mode, KP_BENCH_OPEN_LOOP);
    assert_int_equal(cfg.connections, 64);
    assert_true(cfg.rate == 250.5);
    assert_int_equal(cfg.requests, 10);
    assert_string_equal(cfg.url.host, "::1");
    assert_string_equal(cfg.url.hostport, "[::1]:80");
    assert_string_equal(cfg.url.path, "/v1?x=1");
    assert_false(cfg.url.tls);
    kp_bench_config_free(&cfg);
    /* https: port 443 unless given. */
    assert_int_equal(PARSE(&cfg, err, "--url", "https://gw.example/v1/chat/completions"), KP_OK);
    assert_true(cfg.url.tls);
    assert_string_equal(cfg.url.hostport, "gw.example:443");
    assert_string_equal(cfg.url.host, "gw.example");
    kp_bench_config_free(&cfg);
}

/* The built-in mix goes to paths under the URL's API prefix, with the
 * headers asked for, and a stream body says "stream":true. */
static void test_mix_requests(void **state)
{
    struct kp_bench_config cfg;
    char err[512];
    (void)state;
    assert_int_equal(PARSE(&cfg, err, "--url", "http://h:9/v1/chat/completions", "--mix",
                           "chat_small=3,chat_stream=1,embeddings=1", "--header", "X-Tenant: acme",
                           "--token", "kp_test"),
                     KP_OK);
    assert_int_equal(kp_bench_requests_build(&cfg, err, sizeof(err)), KP_OK);
    assert_int_equal(cfg.n_reqs, 3);
    assert_non_null(strstr(cfg.reqs[0].bytes, "POST /v1/chat/completions HTTP/1.1\r\n"));
    assert_non_null(strstr(cfg.reqs[0].bytes, "\r\nHost: h:9\r\n"));
    assert_non_null(strstr(cfg.reqs[0].bytes, "\r\nX-Tenant: acme\r\n"));
    assert_non_null(strstr(cfg.reqs[0].bytes, "\r\nAuthorization: Bearer kp_test\r\n"));
    assert_null(strstr(cfg.reqs[0].bytes, "\"stream\""));
    assert_non_null(strstr(cfg.reqs[1].bytes, "\"stream\":true"));
    assert_non_null(strstr(cfg.reqs[2].bytes, "POST /v1/embeddings HTTP/1.1\r\n"));
    /* Smooth weighted round robin: 3,1,1 over five picks. */
    struct kp_bench_picker p;
    unsigned counts[3] = {0, 0, 0};
    kp_bench_picker_init(&p, cfg.reqs, cfg.n_reqs);
    for (int i = 0; i < 500; i++)
        counts[kp_bench_picker_next(&p)]++;
    assert_int_equal(counts[0], 300);
    assert_int_equal(counts[1], 100);
    assert_int_equal(counts[2], 100);
    kp_bench_config_free(&cfg);
}

/* --- reading answers ----------------------------------------------------- */

/* Feeds @text to @r in pieces of @step bytes, each arriving 1 ns later. */
static llhttp_errno_t feed_in_pieces(struct kp_bench_response *r, const char *text, size_t step)
{
    size_t len = strlen(text);
    llhttp_errno_t err = HPE_OK;
    for (size_t off = 0; off < len && err == HPE_OK; off += step)
        err =
            kp_bench__response_feed(r, text + off, len - off < step ? len - off : step, 1000 + off);
    return err;
}

/* An SSE answer gives the same events however the bytes are cut: LF and
 * CRLF line ends, a comment line, [DONE]; and a plain JSON answer after it
 * on the same connection is not a stream. */
static void test_response_sse_any_cut(void **state)
{
    static const char sse[] = "HTTP/1.1 200 OK\r\ncontent-TYPE: Text/Event-Stream\r\n"
                              "Content-Length: 60\r\n\r\n"
                              ": keep-alive\n\n"
                              "data: {\"a\":1}\n\n"
                              "data: {\"b\":2}\r\n\r\n"
                              "data: [DONE]\n\n";
    static const char json[] = "HTTP/1.1 429 Too Many Requests\r\nContent-Type: "
                               "application/json\r\nContent-Length: 2\r\n\r\n{}";
    llhttp_settings_t settings;
    struct kp_bench_response r;
    (void)state;
    kp_bench__response_settings(&settings);
    for (size_t step = 1; step <= sizeof(sse); step++) {
        kp_bench__response_init(&r, &settings);
        kp_bench__response_expect(&r);
        assert_int_equal(feed_in_pieces(&r, sse, step), HPE_OK);
        assert_true(r.complete && r.keep_alive && r.sse);
        assert_int_equal(r.status, 200);
        /* Three events; the comment line ": keep-alive" is none. */
        assert_int_equal(r.events, 3);
        assert_true(r.first_event_ns >= 1000);
        kp_bench__response_expect(&r);
        assert_int_equal(feed_in_pieces(&r, json, step), HPE_OK);
        assert_true(r.complete && !r.sse);
        assert_int_equal(r.status, 429);
        assert_int_equal(r.events, 0);
    }
}

/* An answer without a length ends when the connection does; garbage is a
 * parse error. */
static void test_response_eof_and_garbage(void **state)
{
    llhttp_settings_t settings;
    struct kp_bench_response r;
    (void)state;
    kp_bench__response_settings(&settings);
    kp_bench__response_init(&r, &settings);
    kp_bench__response_expect(&r);
    assert_int_equal(feed_in_pieces(&r, "HTTP/1.0 200 OK\r\n\r\nhello", 5), HPE_OK);
    assert_false(r.complete);
    assert_true(kp_bench__response_eof(&r));
    assert_false(r.keep_alive);
    kp_bench__response_init(&r, &settings);
    kp_bench__response_expect(&r);
    assert_int_not_equal(feed_in_pieces(&r, "SSH-2.0-OpenSSH\r\n", 64), HPE_OK);
    assert_false(r.complete);
}

/* --- a server that stalls on purpose ------------------------------------- */

#define MAX_TEST_CONNS 64

struct test_conn {
    uv_tcp_t tcp;
    struct test_server *srv;
    unsigned pending; /* requests held back by the stall */
    unsigned tail;    /* how much of "\r\n\r\n" the last bytes matched */
    char buf[4096];
};

struct test_server {
    uv_loop_t loop;
    uv_tcp_t listener;
    uv_async_t stop;
    uv_timer_t resume;
    uv_thread_t thread;
    int port;
    unsigned requests;
    unsigned stall_at; /* the request that starts the stall; 0: never */
    uint64_t stall_ms;
    bool paused;
    bool sse;
    struct test_conn *conns[MAX_TEST_CONNS];
    char answer[512];
    size_t answer_len;
};

static void srv_on_write(uv_write_t *req, int status)
{
    (void)status;
    free(req);
}

static void srv_answer(struct test_conn *tc)
{
    uv_write_t *req = malloc(sizeof(*req));
    uv_buf_t buf = uv_buf_init(tc->srv->answer, (unsigned)tc->srv->answer_len);
    if (uv_write(req, (uv_stream_t *)&tc->tcp, &buf, 1, srv_on_write) != 0)
        free(req);
}

static void srv_on_resume(uv_timer_t *t)
{
    struct test_server *srv = t->data;
    srv->paused = false;
    for (int i = 0; i < MAX_TEST_CONNS; i++) {
        struct test_conn *tc = srv->conns[i];
        for (; tc && tc->pending; tc->pending--)
            srv_answer(tc);
    }
}

/* Requests have no body, so each ends at an empty line. */
static void srv_request(struct test_conn *tc)
{
    struct test_server *srv = tc->srv;
    srv->requests++;
    if (srv->requests == srv->stall_at) {
        /* The loop's clock is cached, coarse and in whole milliseconds:
         * refresh it, and let the tests allow a few milliseconds of slack. */
        uv_update_time(&srv->loop);
        srv->paused = true;
        uv_timer_start(&srv->resume, srv_on_resume, srv->stall_ms, 0);
    }
    if (srv->paused)
        tc->pending++;
    else
        srv_answer(tc);
}

static void srv_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    struct test_conn *tc = h->data;
    (void)hint;
    *buf = uv_buf_init(tc->buf, sizeof(tc->buf));
}

static void srv_conn_closed(uv_handle_t *h)
{
    struct test_conn *tc = h->data;
    for (int i = 0; i < MAX_TEST_CONNS; i++)
        if (tc->srv->conns[i] == tc)
            tc->srv->conns[i] = NULL;
    free(tc);
}

static void srv_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    static const char end[] = "\r\n\r\n";
    struct test_conn *tc = s->data;
    if (n < 0) {
        uv_close((uv_handle_t *)s, srv_conn_closed);
        return;
    }
    for (ssize_t i = 0; i < n; i++) {
        char ch = buf->base[i];
        tc->tail = ch == end[tc->tail] ? tc->tail + 1 : (ch == '\r' ? 1 : 0);
        if (tc->tail == 4) {
            tc->tail = 0;
            srv_request(tc);
        }
    }
}

static void srv_accept(uv_stream_t *l, int status)
{
    struct test_server *srv = l->data;
    if (status < 0)
        return;
    struct test_conn *tc = calloc(1, sizeof(*tc));
    tc->srv = srv;
    uv_tcp_init(&srv->loop, &tc->tcp);
    tc->tcp.data = tc;
    if (uv_accept(l, (uv_stream_t *)&tc->tcp) != 0) {
        uv_close((uv_handle_t *)&tc->tcp, srv_conn_closed);
        return;
    }
    for (int i = 0; i < MAX_TEST_CONNS; i++) {
        if (srv->conns[i] == NULL) {
            srv->conns[i] = tc;
            break;
        }
    }
    uv_read_start((uv_stream_t *)&tc->tcp, srv_alloc, srv_read);
}

static void srv_close_walk(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, h->type == UV_TCP && h->data != h->loop->data ? srv_conn_closed : NULL);
}

static void srv_on_stop(uv_async_t *a)
{
    uv_walk(a->loop, srv_close_walk, NULL);
}

static void srv_thread(void *arg)
{
    struct test_server *srv = arg;
    uv_run(&srv->loop, UV_RUN_DEFAULT);
}

static void srv_set_answer(struct test_server *srv)
{
    if (!srv->sse) {
        srv->answer_len = (size_t)snprintf(srv->answer, sizeof(srv->answer),
                                           "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                           "Content-Length: 2\r\n\r\nok");
        return;
    }
    /* Three events and [DONE], chunked, with chunk borders inside events,
     * inside a line and between CR and LF. */
    static const char *const pieces[] = {"data: {\"a\"", ":1}\n\ndata: {\"b\":2}\r\n\r",
                                         "\ndata: ", "{\"c\":3}\n\ndata: [DO", "NE]\n\n"};
    size_t n = (size_t)snprintf(srv->answer, sizeof(srv->answer),
                                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; "
                                "charset=utf-8\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (size_t i = 0; i < sizeof(pieces) / sizeof(pieces[0]); i++)
        n += (size_t)snprintf(srv->answer + n, sizeof(srv->answer) - n, "%zx\r\n%s\r\n",
                              strlen(pieces[i]), pieces[i]);
    n += (size_t)snprintf(srv->answer + n, sizeof(srv->answer) - n, "0\r\n\r\n");
    srv->answer_len = n;
}

static void srv_start(struct test_server *srv, unsigned stall_at, uint64_t stall_ms, bool sse)
{
    struct sockaddr_in addr;
    struct sockaddr_storage bound;
    int len = sizeof(bound);
    memset(srv, 0, sizeof(*srv));
    srv->stall_at = stall_at;
    srv->stall_ms = stall_ms;
    srv->sse = sse;
    srv_set_answer(srv);
    assert_int_equal(uv_loop_init(&srv->loop), 0);
    srv->loop.data = srv;
    uv_tcp_init(&srv->loop, &srv->listener);
    srv->listener.data = srv;
    uv_ip4_addr("127.0.0.1", 0, &addr);
    assert_int_equal(uv_tcp_bind(&srv->listener, (const struct sockaddr *)&addr, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&srv->listener, 128, srv_accept), 0);
    uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&bound, &len);
    srv->port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
    uv_async_init(&srv->loop, &srv->stop, srv_on_stop);
    uv_timer_init(&srv->loop, &srv->resume);
    srv->resume.data = srv;
    assert_int_equal(uv_thread_create(&srv->thread, srv_thread, srv), 0);
}

static void srv_stop(struct test_server *srv)
{
    uv_async_send(&srv->stop);
    uv_thread_join(&srv->thread);
    assert_int_equal(uv_loop_close(&srv->loop), 0);
}

/* --- whole runs ---------------------------------------------------------- */

/* A lower bound, with the figures in the message when it does not hold. */
static void assert_at_least(const char *what, uint64_t got, uint64_t want)
{
    if (got < want)
        fail_msg("%s: %llu < %llu", what, (unsigned long long)got, (unsigned long long)want);
}

static void run_ok(struct kp_bench_config *cfg, struct kp_bench_result *res)
{
    char err[512];
    assert_int_equal(kp_bench_requests_build(cfg, err, sizeof(err)), KP_OK);
    int rv = kp_bench_run(cfg, res, err, sizeof(err));
    if (rv != KP_OK)
        fail_msg("run failed: %s", err);
}

/* Open loop against a server that stops answering for 300 ms: every request
 * due during the stall counts its wait from its scheduled time, so p99 and
 * max show the stall, although only one request was in the server when it
 * began and the pool had free connections before and after. */
static void test_open_loop_shows_stall(void **state)
{
    struct test_server srv;
    struct kp_bench_config cfg;
    struct kp_bench_result res;
    char url[64], err[512];
    (void)state;
    srv_start(&srv, 200, 300, false);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", srv.port);
    assert_int_equal(PARSE(&cfg, err, "--url", url, "--rate", "2000", "--requests", "1200",
                           "--connections", "8", "--method", "GET", "--quiet"),
                     KP_OK);
    run_ok(&cfg, &res);
    assert_int_equal(res.stats.completed, 1200);
    assert_int_equal(kp_bench_stats_errors(&res.stats), 0);
    assert_int_equal(res.stats.status[200], 1200);
    assert_at_least("max", res.stats.latency.max, 295 * MS);
    assert_at_least("p99", kp_bench_hist_percentile(&res.stats.latency, 99), 250 * MS);
    /* Requests waited for a connection while all eight were held. */
    assert_at_least("waited", res.stats.waited, 1);
    kp_bench_result_close(&res);
    kp_bench_config_free(&cfg);
    srv_stop(&srv);
}

/* The same stall in closed loop: one connection, so only the one request in
 * the server when it stalled waits; the stall is in max, and the count of
 * answers is what was asked. */
static void test_closed_loop_counts(void **state)
{
    struct test_server srv;
    struct kp_bench_config cfg;
    struct kp_bench_result res;
    char url[64], err[512];
    (void)state;
    srv_start(&srv, 50, 200, false);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/x", srv.port);
    assert_int_equal(PARSE(&cfg, err, "--url", url, "--connections", "1", "--requests", "300",
                           "--method", "GET", "--quiet"),
                     KP_OK);
    run_ok(&cfg, &res);
    assert_int_equal(res.stats.completed, 300);
    assert_at_least("max", res.stats.latency.max, 195 * MS);
    assert_true(res.stats.bytes_received > 0 && res.stats.bytes_sent > 0);
    kp_bench_result_close(&res);
    kp_bench_config_free(&cfg);
    srv_stop(&srv);
}

/* SSE answers split across chunks in awkward places still count four events
 * per stream (three and [DONE]), with a first-event time for each. */
static void test_streams_counted(void **state)
{
    struct test_server srv;
    struct kp_bench_config cfg;
    struct kp_bench_result res;
    char url[64], err[512];
    (void)state;
    srv_start(&srv, 0, 0, true);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", srv.port);
    assert_int_equal(PARSE(&cfg, err, "--url", url, "--connections", "4", "--threads", "2",
                           "--requests", "200", "--method", "GET", "--quiet"),
                     KP_OK);
    run_ok(&cfg, &res);
    assert_int_equal(res.stats.completed, 200);
    assert_int_equal(res.stats.streams, 200);
    assert_int_equal(res.stats.events.min, 4);
    assert_int_equal(res.stats.events.max, 4);
    assert_int_equal(res.stats.first_event.total, 200);
    kp_bench_result_close(&res);
    kp_bench_config_free(&cfg);
    srv_stop(&srv);
}

/* Out of memory at any allocation of a run fails the run with KP_ENOMEM,
 * and the cleanup ladders leave nothing behind (ASan builds check that). */
static void test_run_allocation_failures(void **state)
{
    struct test_server srv;
    struct kp_bench_config cfg;
    struct kp_bench_result res;
    char url[64], err[512];
    (void)state;
    srv_start(&srv, 0, 0, false);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", srv.port);
    assert_int_equal(PARSE(&cfg, err, "--url", url, "--connections", "3", "--threads", "2",
                           "--requests", "20", "--method", "GET", "--quiet"),
                     KP_OK);
    assert_int_equal(kp_bench_requests_build(&cfg, err, sizeof(err)), KP_OK);
    bool succeeded = false;
    for (long n = 0; n < 200 && !succeeded; n++) {
        kp_alloc_fail_after(n);
        int rv = kp_bench_run(&cfg, &res, err, sizeof(err));
        kp_alloc_fail_reset();
        if (rv == KP_OK) {
            assert_int_equal(res.stats.completed, 20);
            succeeded = true;
        } else {
            assert_int_equal(rv, KP_ENOMEM);
            assert_non_null(strstr(err, "out of memory"));
        }
        kp_bench_result_close(&res);
    }
    assert_true(succeeded);
    kp_bench_config_free(&cfg);
    srv_stop(&srv);
}

/* Nothing listening: the run fails at once and says where it tried. (No
 * test of a name that does not resolve: that would ask a DNS server.) */
static void test_unreachable_target(void **state)
{
    struct kp_bench_config cfg;
    struct kp_bench_result res;
    char url[64], err[512], want[64];
    uv_loop_t loop;
    uv_tcp_t sock;
    struct sockaddr_in addr;
    struct sockaddr_storage bound;
    int len = sizeof(bound);
    (void)state;
    /* A port that was just free: bind, read it, close. */
    uv_loop_init(&loop);
    uv_tcp_init(&loop, &sock);
    uv_ip4_addr("127.0.0.1", 0, &addr);
    assert_int_equal(uv_tcp_bind(&sock, (const struct sockaddr *)&addr, 0), 0);
    uv_tcp_getsockname(&sock, (struct sockaddr *)&bound, &len);
    int port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
    uv_close((uv_handle_t *)&sock, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);

    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", port);
    assert_int_equal(PARSE(&cfg, err, "--url", url, "--requests", "10", "--quiet"), KP_OK);
    assert_int_equal(kp_bench_requests_build(&cfg, err, sizeof(err)), KP_OK);
    assert_int_equal(kp_bench_run(&cfg, &res, err, sizeof(err)), KP_ENET);
    snprintf(want, sizeof(want), "cannot connect to 127.0.0.1:%d: connection refused", port);
    assert_string_equal(err, want);
    kp_bench_result_close(&res);
    kp_bench_config_free(&cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hist_exact_small),
        cmocka_unit_test(test_hist_uniform),
        cmocka_unit_test(test_hist_bimodal),
        cmocka_unit_test(test_hist_bucket_bounds),
        cmocka_unit_test(test_hist_merge_and_overflow),
        cmocka_unit_test(test_sched_times),
        cmocka_unit_test(test_sched_backlog_keeps_due_times),
        cmocka_unit_test(test_sched_threads_share),
        cmocka_unit_test(test_sched_limits),
        cmocka_unit_test(test_args_errors),
        cmocka_unit_test(test_args_defaults),
        cmocka_unit_test(test_mix_requests),
        cmocka_unit_test(test_response_sse_any_cut),
        cmocka_unit_test(test_response_eof_and_garbage),
        cmocka_unit_test(test_open_loop_shows_stall),
        cmocka_unit_test(test_closed_loop_counts),
        cmocka_unit_test(test_streams_counted),
        cmocka_unit_test(test_run_allocation_failures),
        cmocka_unit_test(test_unreachable_target),
    };
    kp_log_set_level(KP_LOG_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}

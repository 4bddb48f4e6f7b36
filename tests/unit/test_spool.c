/* The router's spool (meter/spool.c): group commit, sealing by size, age
 * and request, recovery of torn open segments at every cut, quarantine of
 * damaged sealed ones, sequence numbers across restarts, the size cap. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <signal.h>
#include <sys/resource.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "meter/meter.h"

static char dir[256];

static void make_event(struct kp_usage_event *ev, unsigned i)
{
    kp_usage_event_init(ev);
    ev->time_ms = 1767225600000 + i;
    snprintf(ev->request_id, sizeof(ev->request_id), "req-%06u", i);
    snprintf(ev->node, sizeof(ev->node), "n1");
    snprintf(ev->tenant, sizeof(ev->tenant), "acme");
    ev->tokens_in = i;
    ev->cost = (kp_nanousd)i * 1000;
    ev->status = 200;
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/kp-test-spool-XXXXXX");
    assert_non_null(mkdtemp(dir));
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
    return 0;
}

static struct kp_spool *open_spool(uint64_t max_bytes, bool refuse, int64_t age_ms)
{
    char err[512] = "";
    struct kp_spool_options o = {.dir = dir,
                                 .node = "n1",
                                 .max_bytes = max_bytes,
                                 .refuse_when_full = refuse,
                                 .seal_age_ms = age_ms ? age_ms : 3600000};
    struct kp_spool *s = NULL;
    int rc = kp_spool_open(&o, &s, err, sizeof(err));
    if (rc != KP_OK)
        fail_msg("kp_spool_open: %s", err);
    return s;
}

/* The events of sealed segment @seq, checked valid; their request ids are
 * checked to run @first, @first+1, ... */
static uint64_t read_sealed(struct kp_spool *s, uint64_t seq, unsigned first)
{
    char path[512], err[256];
    struct kp_buf b;
    kp_buf_init(&b);
    kp_spool_segment_path(s, seq, path, sizeof(path));
    assert_int_equal(kp_segment_file_read(path, 1u << 30, &b, err, sizeof(err)), KP_OK);
    struct kp_segment_summary sum;
    assert_int_equal(kp_segment_validate(b.data, b.len, &sum), KP_OK);
    assert_int_equal(sum.header.seq, seq);
    assert_string_equal(sum.header.node, "n1");
    struct kp_segment_reader r;
    struct kp_usage_event ev;
    char want[64];
    assert_int_equal(kp_segment_reader_init(&r, b.data, b.len), KP_OK);
    uint64_t n = 0;
    while (kp_segment_reader_next(&r, &ev)) {
        snprintf(want, sizeof(want), "req-%06u", first + (unsigned)n);
        assert_string_equal(ev.request_id, want);
        n++;
    }
    assert_int_equal(r.err, KP_OK);
    kp_segment_reader_close(&r);
    kp_buf_free(&b);
    return n;
}

static void test_append_sync_seal(void **state)
{
    (void)state;
    struct kp_spool *s = open_spool(0, false, 0);
    struct kp_usage_event ev;
    for (unsigned i = 0; i < 500; i++) {
        make_event(&ev, i);
        assert_int_equal(kp_spool_append(s, &ev), KP_OK);
    }
    assert_int_equal(kp_spool_sync(s, false), KP_OK);
    struct kp_spool_stats st;
    kp_spool_get_stats(s, &st);
    assert_int_equal(st.appended, 500);
    assert_int_equal(st.committed, 500);
    uint64_t seqs[4];
    assert_int_equal(kp_spool_sealed(s, seqs, 4), 0); /* open, not sealed */
    assert_int_equal(kp_spool_sync(s, true), KP_OK);
    assert_int_equal(kp_spool_sealed(s, seqs, 4), 1);
    assert_int_equal(seqs[0], 1);
    assert_int_equal(read_sealed(s, 1, 0), 500);
    /* The next events go to segment 2. */
    make_event(&ev, 500);
    assert_int_equal(kp_spool_append(s, &ev), KP_OK);
    assert_int_equal(kp_spool_sync(s, true), KP_OK);
    assert_int_equal(kp_spool_sealed(s, seqs, 4), 2);
    assert_int_equal(seqs[1], 2);
    assert_int_equal(read_sealed(s, 2, 500), 1);
    assert_int_equal(kp_spool_remove(s, 1), KP_OK);
    assert_int_equal(kp_spool_sealed(s, seqs, 4), 1);
    assert_int_equal(seqs[0], 2);
    kp_spool_close(s);

    /* Sequence numbers never go back, even with every segment removed. */
    s = open_spool(0, false, 0);
    assert_int_equal(kp_spool_sealed(s, seqs, 4), 1);
    assert_int_equal(kp_spool_remove(s, 2), KP_OK);
    kp_spool_close(s);
    s = open_spool(0, false, 0);
    make_event(&ev, 7);
    assert_int_equal(kp_spool_append(s, &ev), KP_OK);
    assert_int_equal(kp_spool_sync(s, true), KP_OK);
    assert_int_equal(kp_spool_sealed(s, seqs, 4), 1);
    assert_int_equal(seqs[0], 3);
    kp_spool_close(s);
}

static void test_close_seals(void **state)
{
    (void)state;
    struct kp_spool *s = open_spool(0, false, 0);
    struct kp_usage_event ev;
    for (unsigned i = 0; i < 10; i++) {
        make_event(&ev, i);
        assert_int_equal(kp_spool_append(s, &ev), KP_OK);
    }
    kp_spool_close(s); /* no sync: close commits and seals */
    s = open_spool(0, false, 0);
    uint64_t seqs[2];
    assert_int_equal(kp_spool_sealed(s, seqs, 2), 1);
    assert_int_equal(read_sealed(s, seqs[0], 0), 10);
    kp_spool_close(s);
}

static void test_seal_by_age(void **state)
{
    (void)state;
    struct kp_spool *s = open_spool(0, false, 50);
    struct kp_usage_event ev;
    make_event(&ev, 0);
    assert_int_equal(kp_spool_append(s, &ev), KP_OK);
    uint64_t seqs[2];
    /* Wait for the condition (bounded), not for a fixed time. */
    for (int i = 0; i < 2000 && kp_spool_sealed(s, seqs, 2) == 0; i++)
        usleep(5000);
    assert_int_equal(kp_spool_sealed(s, seqs, 2), 1);
    kp_spool_close(s);
}

/* An open segment of 3 frames, written as a crash would leave it. */
static void write_open_segment(const char *path, uint64_t seq, size_t cut, struct kp_buf *whole)
{
    struct kp_segment_writer w;
    struct kp_segment_writer_options wo = {.node = "n1", .seq = seq, .created_ms = 1};
    assert_int_equal(kp_segment_writer_init(&w, &wo), KP_OK);
    struct kp_usage_event ev;
    for (unsigned i = 0; i < 30; i++) {
        make_event(&ev, i);
        assert_int_equal(kp_segment_writer_add(&w, &ev), KP_OK);
        if (i % 10 == 9)
            assert_int_equal(kp_segment_writer_flush(&w), KP_OK);
    }
    kp_buf_init(whole);
    assert_int_equal(kp_buf_append(whole, w.out.data, w.out.len), KP_OK);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    size_t n = cut < w.out.len ? cut : w.out.len;
    assert_int_equal(fwrite(w.out.data, 1, n, f), n);
    fclose(f);
    kp_segment_writer_close(&w);
}

static void test_torn_tail_every_cut(void **state)
{
    (void)state;
    char path[512];
    struct kp_buf whole;
    snprintf(path, sizeof(path), "%s/%020d.open", dir, 5);
    write_open_segment(path, 5, (size_t)-1, &whole);
    size_t len = whole.len;
    kp_buf_free(&whole);
    for (size_t cut = 0; cut <= len; cut += (cut < 200 ? 1 : 7)) {
        write_open_segment(path, 5, cut, &whole);
        /* What a reader says survives the cut. */
        uint64_t want = 0;
        if (cut >= KP_SEGMENT_HEADER_SIZE) {
            struct kp_segment_reader r;
            struct kp_usage_event ev;
            assert_int_equal(kp_segment_reader_init(&r, whole.data, cut), KP_OK);
            while (kp_segment_reader_next(&r, &ev))
                want++;
            kp_segment_reader_close(&r);
        }
        kp_buf_free(&whole);
        struct kp_spool *s = open_spool(0, false, 0);
        uint64_t seqs[2];
        size_t n = kp_spool_sealed(s, seqs, 2);
        assert_int_equal(access(path, F_OK), -1); /* the open file is gone */
        if (want == 0) {
            assert_int_equal(n, 0);
        } else {
            assert_int_equal(n, 1);
            assert_int_equal(seqs[0], 5);
            assert_int_equal(read_sealed(s, 5, 0), want);
            assert_int_equal(want % 10, 0); /* whole frames only */
            assert_int_equal(kp_spool_remove(s, 5), KP_OK);
        }
        struct kp_spool_stats st;
        kp_spool_get_stats(s, &st);
        assert_int_equal(st.quarantined, 0);
        kp_spool_close(s);
    }
}

static void test_quarantine(void **state)
{
    (void)state;
    struct kp_spool *s = open_spool(0, false, 0);
    struct kp_usage_event ev;
    make_event(&ev, 0);
    assert_int_equal(kp_spool_append(s, &ev), KP_OK);
    assert_int_equal(kp_spool_sync(s, true), KP_OK);
    char path[512];
    kp_spool_segment_path(s, 1, path, sizeof(path));
    kp_spool_close(s);
    /* Flip one byte inside the frame. */
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    fseek(f, KP_SEGMENT_HEADER_SIZE + KP_SEGMENT_FRAME_HEADER_SIZE + 3, SEEK_SET);
    int c = fgetc(f);
    fseek(f, -1, SEEK_CUR);
    fputc(c ^ 0x10, f);
    fclose(f);

    s = open_spool(0, false, 0);
    uint64_t seqs[2];
    assert_int_equal(kp_spool_sealed(s, seqs, 2), 0);
    struct kp_spool_stats st;
    kp_spool_get_stats(s, &st);
    assert_int_equal(st.quarantined, 1);
    char q[600];
    snprintf(q, sizeof(q), "%s/quarantine/%020d.kpseg", dir, 1);
    assert_int_equal(access(q, F_OK), 0);
    snprintf(q, sizeof(q), "%s/quarantine/%020d.kpseg.why", dir, 1);
    assert_int_equal(access(q, F_OK), 0);
    /* The quarantined sequence is not reused. */
    assert_int_equal(kp_spool_append(s, &ev), KP_OK);
    assert_int_equal(kp_spool_sync(s, true), KP_OK);
    assert_int_equal(kp_spool_sealed(s, seqs, 2), 1);
    assert_true(seqs[0] > 1);
    kp_spool_close(s);
}

static void test_full(void **state)
{
    (void)state;
    struct kp_usage_event ev;
    for (int refuse = 0; refuse < 2; refuse++) {
        struct kp_spool *s = open_spool(2000, refuse, 0);
        assert_true(kp_spool_accepting(s));
        unsigned i = 0;
        for (; i < 100; i++) {
            make_event(&ev, i);
            assert_int_equal(kp_spool_append(s, &ev), KP_OK);
            assert_int_equal(kp_spool_sync(s, true), KP_OK);
            struct kp_spool_stats st;
            kp_spool_get_stats(s, &st);
            if (st.full)
                break;
        }
        assert_true(i < 100);
        make_event(&ev, 1000);
        assert_int_equal(kp_spool_append(s, &ev), KP_EBUSY);
        assert_int_equal(kp_spool_accepting(s), !refuse);
        struct kp_spool_stats st;
        kp_spool_get_stats(s, &st);
        assert_int_equal(st.dropped, 1);
        /* Shipping frees room. */
        uint64_t seqs[200];
        size_t n = kp_spool_sealed(s, seqs, 200);
        for (size_t k = 0; k < n; k++)
            assert_int_equal(kp_spool_remove(s, seqs[k]), KP_OK);
        assert_true(kp_spool_accepting(s));
        assert_int_equal(kp_spool_append(s, &ev), KP_OK);
        kp_spool_close(s);
        teardown(NULL);
        setup(NULL);
    }
}

/* With refuse_when_full a spool that cannot write (here: a file size limit
 * makes its writes fail) refuses calls too, and accepts them again once it
 * writes: nothing it could not write is lost meanwhile. */
static void test_refuses_while_it_cannot_write(void **state)
{
    (void)state;
    struct kp_usage_event ev;
    struct kp_spool *s = open_spool((uint64_t)1 << 30, true, 0);
    make_event(&ev, 0);
    assert_int_equal(kp_spool_append(s, &ev), KP_OK);
    assert_int_equal(kp_spool_sync(s, false), KP_OK);
    assert_true(kp_spool_accepting(s));
    struct rlimit old, tiny;
    signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    tiny = old;
    tiny.rlim_cur = 1;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &tiny), 0);
    make_event(&ev, 1);
    assert_int_equal(kp_spool_append(s, &ev), KP_OK);
    int rc = kp_spool_sync(s, false);
    bool refused = !kp_spool_accepting(s);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    assert_int_equal(rc, KP_EIO);
    assert_true(refused);
    /* The spool retries once a second: wait for it (bounded). */
    for (int i = 0; i < 500 && !kp_spool_accepting(s); i++)
        poll(NULL, 0, 10);
    assert_true(kp_spool_accepting(s));
    assert_int_equal(kp_spool_sync(s, true), KP_OK);
    uint64_t seqs[4];
    assert_int_equal(kp_spool_sealed(s, seqs, 4), 1);
    assert_int_equal(read_sealed(s, seqs[0], 0), 2); /* both events, in order */
    struct kp_spool_stats st;
    kp_spool_get_stats(s, &st);
    assert_int_equal(st.dropped, 0);
    kp_spool_close(s);
}

static void test_bad_event_refused(void **state)
{
    (void)state;
    struct kp_spool *s = open_spool(0, false, 0);
    struct kp_usage_event ev;
    make_event(&ev, 0);
    ev.request_id[0] = '\0'; /* required */
    assert_int_equal(kp_spool_append(s, &ev), KP_EINVAL);
    kp_spool_close(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_append_sync_seal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_seals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seal_by_age, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_tail_every_cut, setup, teardown),
        cmocka_unit_test_setup_teardown(test_quarantine, setup, teardown),
        cmocka_unit_test_setup_teardown(test_full, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refuses_while_it_cannot_write, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_event_refused, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

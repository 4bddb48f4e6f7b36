/* Unit tests for raftstore/transport_tls.c and tls_link.c, the mutual-TLS
 * Raft transport, on one real loop over loopback. The test plays raft's
 * part: it listens and connects through the struct raft_uv_transport,
 * writes and reads the streams it is handed, and closes and frees them as
 * raft_uv does (uv_close, then raft_free).
 *
 * Certificates come from deploy/make-certs.sh (the openssl command) in a
 * temporary directory: nodes "a" and "b" of one cluster CA, "x" of another.
 * Log lines are captured to check what a refusal says. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"
#include "raftstore/raft_glue.h"

static char tmp[64];
static uv_loop_t loop;
static char logs[1 << 20];

struct side {
    struct raft_uv_transport t;
    char address[64];
    bool closed;
    /* as a server: the last accepted link */
    int accepts;
    raft_id from_id;
    char from_addr[64];
    uv_stream_t *accepted;
    bool defer_read; /* leave accepted streams unread (raft is slow) */
    /* as a client */
    struct raft_uv_connect req;
    bool connect_done;
    int connect_status;
    uv_stream_t *connected;
    /* what was read on accepted or connected */
    size_t got;
    bool bad_byte, eof;
};

static void log_sink(const char *line, size_t len, void *arg)
{
    (void)arg;
    size_t have = strlen(logs);
    if (have + len < sizeof(logs))
        memcpy(logs + have, line, len + 1);
}

static int group_setup(void **state)
{
    (void)state;
    char cmd[512];
    signal(SIGPIPE, SIG_IGN);
    strcpy(tmp, "/tmp/kp-test-tls.XXXXXX");
    assert_non_null(mkdtemp(tmp));
    snprintf(cmd, sizeof(cmd),
             "/bin/bash %s %s/ca1 a b >/dev/null && /bin/bash %s %s/ca2 x "
             ">/dev/null",
             MAKE_CERTS, tmp, MAKE_CERTS, tmp);
    assert_int_equal(system(cmd), 0);
    kp_log_set_sink(log_sink, NULL);
    kp_log_set_level(KP_LOG_INFO);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    char cmd[128];
    kp_log_set_sink(NULL, NULL);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmp);
    return system(cmd);
}

static int setup(void **state)
{
    (void)state;
    logs[0] = '\0';
    return uv_loop_init(&loop);
}

/* Every handle closed: nothing of a link outlives its transport. */
static int teardown(void **state)
{
    (void)state;
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    return 0;
}

static void timed_out(uv_timer_t *t)
{
    *(bool *)t->data = true;
}

static void timer_closed(uv_handle_t *h)
{
    *(bool *)h->data = true;
}

/* Runs the loop until *@flag, failing after 20 s. */
static void run_until(const bool *flag)
{
    bool late = false;
    uv_timer_t timer;
    uv_timer_init(&loop, &timer);
    timer.data = &late;
    uv_timer_start(&timer, timed_out, 20000, 0);
    while (!*flag && !late)
        uv_run(&loop, UV_RUN_ONCE);
    bool closed = false;
    timer.data = &closed;
    uv_close((uv_handle_t *)&timer, timer_closed);
    while (!closed) /* the timer is on this stack */
        uv_run(&loop, UV_RUN_ONCE);
    if (late)
        fail_msg("timed out; logs:\n%s", logs);
}

static int free_port(void)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sin);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
    close(fd);
    return ntohs(sin.sin_port);
}

static void file_of(char *buf, size_t len, const char *ca, const char *name)
{
    snprintf(buf, len, "%s/%s/%s", tmp, ca, name);
}

static void on_read_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    static char chunk[65536];
    (void)suggested;
    *buf = uv_buf_init(chunk, sizeof(chunk));
}

/* Byte i of a test stream. */
static uint8_t pattern(size_t i)
{
    return (uint8_t)(i % 251);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct side *side = s->data;
    if (nread < 0) {
        side->eof = true;
        uv_read_stop(s);
        return;
    }
    for (ssize_t i = 0; i < nread; i++)
        if ((uint8_t)buf->base[i] != pattern(side->got + (size_t)i))
            side->bad_byte = true;
    side->got += (size_t)nread;
}

static void on_accept(struct raft_uv_transport *t, raft_id id, const char *address,
                      uv_stream_t *stream)
{
    struct side *s = t->data;
    s->accepts++;
    s->from_id = id;
    snprintf(s->from_addr, sizeof(s->from_addr), "%s", address);
    s->accepted = stream;
    stream->data = s;
    if (!s->defer_read)
        uv_read_start(stream, on_read_alloc, on_read);
}

static void on_connect(struct raft_uv_connect *req, uv_stream_t *stream, int status)
{
    struct side *s = req->data;
    s->connect_done = true;
    s->connect_status = status;
    s->connected = stream;
    if (stream != NULL) {
        stream->data = s;
        uv_read_start(stream, on_read_alloc, on_read);
    }
}

static void open_side(struct side *s, const char *ca, const char *name, raft_id id, bool listen)
{
    char cert[128], key[128], cafile[128], pem[16], keyname[16], err[256];
    memset(s, 0, sizeof(*s));
    snprintf(pem, sizeof(pem), "%s.pem", name);
    snprintf(keyname, sizeof(keyname), "%s.key", name);
    file_of(cert, sizeof(cert), ca, pem);
    file_of(key, sizeof(key), ca, keyname);
    file_of(cafile, sizeof(cafile), ca, "ca.pem");
    if (kp_raft_tls_init(&s->t, &loop, cert, key, cafile, err, sizeof(err)) != KP_OK)
        fail_msg("init: %s", err);
    s->t.data = s;
    snprintf(s->address, sizeof(s->address), "127.0.0.1:%d", free_port());
    assert_int_equal(s->t.init(&s->t, id, s->address), 0);
    if (listen)
        assert_int_equal(s->t.listen(&s->t, on_accept), 0);
}

static void dial(struct side *from, const struct side *to, raft_id to_id)
{
    from->req.data = from;
    assert_int_equal(from->t.connect(&from->t, &from->req, to_id, to->address, on_connect), 0);
}

static void transport_closed(struct raft_uv_transport *t)
{
    ((struct side *)t->data)->closed = true;
}

/* As raft_uv: the streams it was handed first, then the transport. */
static void close_side(struct side *s)
{
    if (s->accepted != NULL)
        uv_close((uv_handle_t *)s->accepted, (uv_close_cb)raft_free);
    if (s->connected != NULL)
        uv_close((uv_handle_t *)s->connected, (uv_close_cb)raft_free);
    s->t.close(&s->t, transport_closed);
    run_until(&s->closed);
    kp_raft_tls_close(&s->t);
}

struct big_write {
    uv_write_t req;
    bool done;
    int status;
};

static void big_written(uv_write_t *req, int status)
{
    struct big_write *w = req->data;
    w->done = true;
    w->status = status;
}

static bool logged(const char *what)
{
    return strstr(logs, what) != NULL;
}

/* A link between two members: the server is told the client's id and
 * address (the preamble), and 8 MiB written at once arrive intact and in
 * order. While the receiving raft does not read, the relays stop reading
 * (both sides: the buffers between them are far smaller than 8 MiB) and
 * start again once it does. The other direction works too. When the
 * client closes its stream the server's sees EOF. */
static void test_link_relays_both_ways(void **state)
{
    (void)state;
    struct side a, b;
    open_side(&a, "ca1", "a", 1, true);
    open_side(&b, "ca1", "b", 2, true);
    a.defer_read = true;
    kp_trace_enabled = true;
    kp_log_set_level(KP_LOG_DEBUG);
    dial(&b, &a, 1);
    run_until(&b.connect_done);
    assert_int_equal(b.connect_status, 0);

    size_t n = 8u << 20;
    char *data = malloc(n);
    assert_non_null(data);
    for (size_t i = 0; i < n; i++)
        data[i] = (char)pattern(i);
    struct big_write w = {.done = false};
    w.req.data = &w;
    uv_buf_t buf = uv_buf_init(data, (unsigned)n);
    assert_int_equal(uv_write(&w.req, b.connected, &buf, 1, big_written), 0);
    while (!logged("raft is behind -> stop reading the peer") ||
           !logged("peer is behind -> stop reading raft"))
        uv_run(&loop, UV_RUN_ONCE);
    assert_false(w.done);
    uv_read_start(a.accepted, on_read_alloc, on_read);
    run_until(&w.done);
    assert_int_equal(w.status, 0);
    while (a.got < n && !a.eof)
        uv_run(&loop, UV_RUN_ONCE);
    assert_true(logged("raft caught up -> read the peer again"));
    assert_true(logged("peer caught up -> read raft again"));
    kp_trace_enabled = false;
    kp_log_set_level(KP_LOG_INFO);
    assert_int_equal(a.accepts, 1);
    assert_int_equal(a.from_id, 2);
    assert_string_equal(a.from_addr, b.address);
    assert_int_equal(a.got, n);
    assert_false(a.bad_byte);

    /* Back from the server to the client (raft never does; the relay is
     * the same code both ways). */
    struct big_write back = {.done = false};
    back.req.data = &back;
    buf = uv_buf_init(data, 100000);
    assert_int_equal(uv_write(&back.req, a.accepted, &buf, 1, big_written), 0);
    while (b.got < 100000)
        uv_run(&loop, UV_RUN_ONCE);
    assert_false(b.bad_byte);

    uv_close((uv_handle_t *)b.connected, (uv_close_cb)raft_free);
    b.connected = NULL;
    run_until(&a.eof);
    free(data);
    close_side(&b);
    close_side(&a);
    assert_null(strstr(logs, "refused"));
}

/* A node whose certificate another CA signed gets no link either way: its
 * connect fails, nothing is accepted, and both sides log the refusal with
 * the peer's address and OpenSSL's reason. */
static void test_other_ca_is_refused(void **state)
{
    (void)state;
    struct side a, x;
    open_side(&a, "ca1", "a", 1, true);
    open_side(&x, "ca2", "x", 9, true);
    dial(&x, &a, 1);
    run_until(&x.connect_done);
    assert_int_not_equal(x.connect_status, 0);
    assert_null(x.connected);
    char want[256];
    snprintf(want, sizeof(want),
             "link to %s refused: TLS handshake failed: certificate verify "
             "failed",
             a.address);
    assert_non_null(strstr(logs, want));
    /* a hears the alert x sends. */
    while (strstr(logs, "link from 127.0.0.1:") == NULL)
        uv_run(&loop, UV_RUN_ONCE);
    assert_non_null(strstr(logs, "refused: TLS handshake failed: tlsv1 alert unknown ca"));

    /* The other way: a refuses x's certificate too. */
    logs[0] = '\0';
    dial(&a, &x, 9);
    run_until(&a.connect_done);
    assert_int_not_equal(a.connect_status, 0);
    assert_non_null(strstr(logs, "certificate verify failed"));
    assert_int_equal(a.accepts + x.accepts, 0);
    close_side(&x);
    close_side(&a);
}

/* Closing the transports while links are still connecting completes the
 * requests with RAFT_CANCELED (raft_uv asserts it) and leaks nothing. */
static void test_close_while_connecting(void **state)
{
    (void)state;
    struct side a, b;
    open_side(&a, "ca1", "a", 1, true);
    open_side(&b, "ca1", "b", 2, false);
    dial(&b, &a, 1);
    uv_run(&loop, UV_RUN_NOWAIT); /* maybe connected, surely not done */
    close_side(&b);
    assert_true(b.connect_done);
    assert_int_equal(b.connect_status, RAFT_CANCELED);
    close_side(&a);
}

/* A reload that cannot read a file keeps the certificates in use and says
 * which file; links keep working; a good reload is taken. */
static void test_reload_keeps_old_on_error(void **state)
{
    (void)state;
    struct side a, b;
    char err[256], path[128], saved[4096];
    open_side(&a, "ca1", "a", 1, true);
    open_side(&b, "ca1", "b", 2, false);
    file_of(path, sizeof(path), "ca1", "b.pem");
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t len = fread(saved, 1, sizeof(saved), f);
    fclose(f);
    f = fopen(path, "w");
    fputs("not a certificate\n", f);
    fclose(f);
    assert_int_equal(kp_raft_tls_reload(&b.t, err, sizeof(err)), KP_ECONFIG);
    assert_non_null(strstr(err, "cannot load the certificate chain from"));
    assert_non_null(strstr(err, "b.pem"));

    dial(&b, &a, 1);
    run_until(&b.connect_done);
    assert_int_equal(b.connect_status, 0);

    f = fopen(path, "w");
    assert_int_equal(fwrite(saved, 1, len, f), len);
    fclose(f);
    assert_int_equal(kp_raft_tls_reload(&b.t, err, sizeof(err)), KP_OK);
    close_side(&b);
    close_side(&a);
}

/* Files that do not fit are refused at init with the file and the reason:
 * a missing file, a key of another certificate. */
static void test_bad_files(void **state)
{
    (void)state;
    struct raft_uv_transport t;
    char cert[128], key[128], ca[128], err[256];
    file_of(cert, sizeof(cert), "ca1", "a.pem");
    file_of(key, sizeof(key), "ca1", "b.key");
    file_of(ca, sizeof(ca), "ca1", "ca.pem");
    assert_int_equal(kp_raft_tls_init(&t, &loop, cert, key, ca, err, sizeof(err)), KP_ECONFIG);
    assert_non_null(strstr(err, "raft TLS: the certificate does not belong to the private key "
                                "from"));
    assert_non_null(strstr(err, "b.key: key values mismatch"));
    assert_int_equal(kp_raft_tls_init(&t, &loop, cert, "/nonexistent.key", ca, err, sizeof(err)),
                     KP_ECONFIG);
    assert_non_null(strstr(err, "/nonexistent.key"));
}

/* Like open_side, but an allocation may fail: false when the transport
 * could not be made (nothing to close), true when it must be closed. */
static bool try_side(struct side *s, const char *name, raft_id id, bool listen, bool *usable)
{
    char cert[128], key[128], cafile[128], pem[16], keyname[16], err[256];
    memset(s, 0, sizeof(*s));
    snprintf(pem, sizeof(pem), "%s.pem", name);
    snprintf(keyname, sizeof(keyname), "%s.key", name);
    file_of(cert, sizeof(cert), "ca1", pem);
    file_of(key, sizeof(key), "ca1", keyname);
    file_of(cafile, sizeof(cafile), "ca1", "ca.pem");
    *usable = false;
    if (kp_raft_tls_init(&s->t, &loop, cert, key, cafile, err, sizeof(err)) != KP_OK) {
        assert_string_equal(err, "out of memory");
        return false;
    }
    s->t.data = s;
    snprintf(s->address, sizeof(s->address), "127.0.0.1:%d", free_port());
    if (s->t.init(&s->t, id, s->address) != 0)
        return true;
    *usable = !listen || s->t.listen(&s->t, on_accept) == 0;
    return true;
}

struct exchange {
    struct side *a, *b;
    size_t n;
};

static bool exchange_over(const struct exchange *x)
{
    return x->a->got == x->n || x->a->eof || x->b->eof;
}

/* b sends @n bytes to a with every allocation failing from the @fail_th on:
 * true when they all arrived. */
static bool exchange_failing_after(long fail_th, size_t n, const char *data)
{
    struct side a, b;
    bool a_usable, b_usable, done = false;
    kp_alloc_fail_after(fail_th);
    bool a_open = try_side(&a, "a", 1, true, &a_usable);
    bool b_open = try_side(&b, "b", 2, false, &b_usable);
    if (a_usable && b_usable) {
        b.req.data = &b;
        if (b.t.connect(&b.t, &b.req, 1, a.address, on_connect) == 0)
            run_until(&b.connect_done);
    }
    if (b.connect_done && b.connect_status == 0) {
        struct big_write w = {.done = false};
        struct exchange x = {&a, &b, n};
        w.req.data = &w;
        uv_buf_t buf = uv_buf_init((char *)data, (unsigned)n);
        assert_int_equal(uv_write(&w.req, b.connected, &buf, 1, big_written), 0);
        bool late = false;
        uv_timer_t timer;
        uv_timer_init(&loop, &timer);
        timer.data = &late;
        uv_timer_start(&timer, timed_out, 20000, 0);
        while (!exchange_over(&x) && !late)
            uv_run(&loop, UV_RUN_ONCE);
        uv_close((uv_handle_t *)&timer, NULL);
        if (late)
            fail_msg("failing from allocation %ld: stuck; logs:\n%s", fail_th, logs);
        done = a.got == n && !a.bad_byte;
        run_until(&w.done);
    }
    if (b_open)
        close_side(&b);
    if (a_open)
        close_side(&a);
    kp_alloc_fail_reset();
    uv_run(&loop, UV_RUN_NOWAIT);
    return done;
}

/* With every allocation failing from the first, the second, ... on, each
 * step of making, relaying and closing a link fails cleanly: setup refuses,
 * or the link closes on both ends, nothing hangs, and everything is freed
 * (ASan checks for leaks and double frees). A server out of memory for a
 * new link still takes the connection off its listener and closes it. */
static void test_allocation_failures(void **state)
{
    (void)state;
    size_t n = 200000;
    char *data = malloc(n);
    assert_non_null(data);
    for (size_t i = 0; i < n; i++)
        data[i] = (char)pattern(i);
    long th = 0;
    while (!exchange_failing_after(th, n, data)) {
        th++;
        assert_true(th < 2000);
    }
    free(data);
    assert_true(th > 5); /* it did fail in several places first */
    /* The server ran out of memory for a new link at least once. */
    assert_non_null(strstr(logs, "out of memory -> connection closed"));
}

/* kp_store_open runs plain TCP with no TLS file and TLS with all three; a
 * partial set is a configuration error naming what is missing. */
static void test_store_refuses_partial_tls(void **state)
{
    (void)state;
    struct kp_view_slot views;
    struct kp_store *s = NULL;
    char err[256], dir[128];
    kp_view_slot_init(&views);
    snprintf(dir, sizeof(dir), "%s/raft", tmp);
    struct kp_store_config cfg = {.dir = dir,
                                  .node_id = 1,
                                  .address = "127.0.0.1:1",
                                  .views = &views,
                                  .tls_cert_file = "/c.pem",
                                  .tls_ca_file = ""};
    assert_int_equal(kp_store_open(&s, &loop, &cfg, err, sizeof(err)), KP_ECONFIG);
    assert_null(s);
    assert_string_equal(err, "raft TLS needs a certificate, its private key and the cluster CA "
                             "together; missing: private key (tls_key_file), CA (tls_ca_file)");
    assert_int_equal(kp_store_recover(&cfg, err, sizeof(err)), KP_ECONFIG);
    assert_non_null(strstr(err, "missing: private key"));
    kp_view_slot_close(&views);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_link_relays_both_ways, setup, teardown),
        cmocka_unit_test_setup_teardown(test_other_ca_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_while_connecting, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reload_keeps_old_on_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_allocation_failures, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_refuses_partial_tls, setup, teardown),
    };
    return cmocka_run_group_tests_name("transport_tls", tests, group_setup, group_teardown);
}

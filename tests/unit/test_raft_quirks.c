/* Reproducers of canonical/raft 0.15 behaviours that keyplane relies on
 * knowing about (docs/architecture.md, "Raft 0.15 quirks"). Each case pins
 * what the library does today with the real libuv I/O on a temporary
 * directory, as raftstore/store.c uses it; a case that starts failing means
 * the library changed and the note in the docs must be revisited.
 *
 * 1. A lone voter leads as soon as it starts, in the term it had: the
 *    start-up shortcut for a configuration with one voter converts it to
 *    leader without an election, so without a new term (with or without
 *    pre-vote). A lone voter that restarts therefore leads again in the
 *    term it led before. With followers holding entries the old leadership
 *    sent but never persisted locally (a crash between sending and
 *    writing), the new leadership can write different entries at the same
 *    index and term: the Log Matching property breaks. In keyplane a lone
 *    voter has followers only as standbys or routers (and after a restore
 *    or a --recover, until more voters join).
 *
 * 2. raft_recover appends the forced configuration with term 1, whatever
 *    the terms of the entries before it: the log's terms stop being
 *    monotonic (uvWriteClosedSegment sets entry.term = 1). It works (the
 *    recovered node leads and new nodes join, tests/cluster/
 *    test_recovery.py), but a log like that is outside Raft's invariants.
 *
 * 3. raft_uv_tcp's listener stops accepting for good after one incoming
 *    connection it could not allocate for: it returns from libuv's
 *    connection callback without uv_accept, and libuv watches a listener
 *    again only once its pending connection is accepted. keyplane's TLS
 *    transport does not have this (it takes such a connection and closes
 *    it); a node on plain TCP needs a restart.
 *
 * 4. raft_close on a leader that still has two or more raft_apply requests
 *    in flight (appended, not yet persisted and applied) reads a NULL
 *    pointer inside libraft and the process dies of SIGSEGV, every time.
 *    With every request finished first, raft_close is clean. keyplane's
 *    store closes only once the requests it gave raft have finished (up
 *    to 2 s: raftstore/store.c, close_when_drained); a leader without a
 *    quorum past that deadline can still hit it on its way out.
 *
 * 5. A leader whose log writes fail keeps leading: raft drops the entries
 *    and fails their requests (RAFT_IOERR), and nothing makes it step
 *    down, since heartbeats need no disk. A leader with a full disk thus
 *    fails the writes it is given for as long as the disk is full.
 *    keyplane's store stops the node at the first failed log write
 *    (raftstore/store.c, "the log's durability"), so the others elect a
 *    leader that can write. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sys/resource.h>
#include <sys/wait.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <raft.h>
#include <raft/uv.h>

struct node {
    uv_loop_t loop;
    struct raft_uv_transport transport;
    struct raft_io io;
    struct raft raft;
    struct raft_fsm fsm;
    bool closed;
};

static int fsm_apply(struct raft_fsm *fsm, const struct raft_buffer *buf, void **result)
{
    (void)fsm;
    (void)buf;
    *result = NULL;
    return 0;
}

static void node_open(struct node *n, const char *dir, bool pre_vote)
{
    memset(n, 0, sizeof(*n));
    assert_int_equal(uv_loop_init(&n->loop), 0);
    assert_int_equal(raft_uv_tcp_init(&n->transport, &n->loop), 0);
    assert_int_equal(raft_uv_init(&n->io, &n->loop, dir, &n->transport), 0);
    n->fsm.version = 1;
    n->fsm.apply = fsm_apply;
    assert_int_equal(raft_init(&n->raft, &n->io, &n->fsm, 1, "127.0.0.1:9"), 0);
    n->raft.data = n;
    raft_set_pre_vote(&n->raft, pre_vote);
}

static void on_closed(struct raft *r)
{
    ((struct node *)r->data)->closed = true;
}

static void node_close(struct node *n)
{
    raft_close(&n->raft, on_closed);
    while (!n->closed)
        uv_run(&n->loop, UV_RUN_ONCE);
    raft_uv_close(&n->io);
    raft_uv_tcp_close(&n->transport);
    uv_run(&n->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&n->loop), 0);
}

static void bootstrap(struct node *n)
{
    struct raft_configuration conf;
    raft_configuration_init(&conf);
    assert_int_equal(raft_configuration_add(&conf, 1, "127.0.0.1:9", RAFT_VOTER), 0);
    assert_int_equal(raft_bootstrap(&n->raft, &conf), 0);
    raft_configuration_close(&conf);
}

static char *temp_dir(void)
{
    char *dir = strdup("/tmp/kp-raft-quirks-XXXXXX");
    assert_non_null(dir);
    assert_non_null(mkdtemp(dir));
    return dir;
}

static void remove_dir(char *dir)
{
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
    free(dir);
}

/* The term a lone voter leads in right after raft_start: bootstrapped
 * (term 1), or restarted on the same directory. */
static raft_term lead_term(const char *dir, bool pre_vote, bool first)
{
    struct node n;
    node_open(&n, dir, pre_vote);
    if (first)
        bootstrap(&n);
    assert_int_equal(raft_start(&n.raft), 0);
    assert_int_equal(raft_state(&n.raft), RAFT_LEADER);
    raft_term term = n.raft.current_term;
    node_close(&n);
    return term;
}

/* Quirk 1: a lone voter leads in the term it has, at every start, with or
 * without pre-vote; raft's own elections always start a new term. */
static void lone_voter_leads_without_a_new_term(void **state)
{
    (void)state;
    for (int pre_vote = 0; pre_vote < 2; pre_vote++) {
        char *dir = temp_dir();
        assert_int_equal(lead_term(dir, pre_vote, true), 1);  /* should be 2 */
        assert_int_equal(lead_term(dir, pre_vote, false), 1); /* led term 1 before */
        assert_int_equal(lead_term(dir, pre_vote, false), 1);
        remove_dir(dir);
    }
}

static void barrier_done(struct raft_barrier *req, int status)
{
    assert_int_equal(status, 0);
    *(bool *)req->data = true;
}

/* Quirk 2: the configuration raft_recover appends has term 1, after
 * entries of a later term. */
static void recover_appends_a_term_1_entry(void **state)
{
    (void)state;
    char *dir = temp_dir();
    struct node n;
    struct raft_barrier req;
    bool done = false;
    node_open(&n, dir, false);
    bootstrap(&n);
    /* As a node that took part in elections up to term 5. */
    assert_int_equal(n.io.set_term(&n.io, 5), 0);
    assert_int_equal(raft_start(&n.raft), 0);
    assert_int_equal(n.raft.current_term, 5);
    req.data = &done;
    assert_int_equal(raft_barrier(&n.raft, &req, barrier_done), 0);
    while (!done)
        uv_run(&n.loop, UV_RUN_ONCE);
    node_close(&n);

    struct raft_configuration conf;
    raft_configuration_init(&conf);
    assert_int_equal(raft_configuration_add(&conf, 1, "127.0.0.1:9", RAFT_VOTER), 0);
    node_open(&n, dir, false);
    assert_int_equal(raft_recover(&n.raft, &conf), 0);
    raft_configuration_close(&conf);
    node_close(&n);

    /* Read the log back through the I/O backend. */
    node_open(&n, dir, false);
    raft_term term;
    raft_id vote;
    struct raft_snapshot *snap = NULL;
    raft_index start;
    struct raft_entry *entries = NULL;
    size_t count = 0;
    assert_int_equal(n.io.load(&n.io, &term, &vote, &snap, &start, &entries, &count), 0);
    assert_null(snap);
    assert_int_equal(count, 3); /* bootstrap configuration, barrier, recovery */
    assert_int_equal(entries[0].type, RAFT_CHANGE);
    assert_int_equal(entries[0].term, 1);
    assert_int_equal(entries[1].type, RAFT_BARRIER);
    assert_int_equal(entries[1].term, 5);
    assert_int_equal(entries[2].type, RAFT_CHANGE);
    assert_int_equal(entries[2].term, 1); /* should be at least 5 */
    void *batch = NULL;
    for (size_t i = 0; i < count; i++) {
        if (entries[i].batch != batch)
            raft_free(entries[i].batch);
        batch = entries[i].batch;
    }
    raft_free(entries);
    node_close(&n);
    remove_dir(dir);
}

/* --- quirk 3: raft_uv_tcp's listener after a failed allocation --------------- */

static bool heap_failing;

static void *heap_malloc(void *data, size_t size)
{
    (void)data;
    return heap_failing ? NULL : malloc(size);
}

static void heap_free(void *data, void *ptr)
{
    (void)data;
    free(ptr);
}

static void *heap_calloc(void *data, size_t n, size_t size)
{
    (void)data;
    return heap_failing ? NULL : calloc(n, size);
}

static void *heap_realloc(void *data, void *ptr, size_t size)
{
    (void)data;
    return heap_failing ? NULL : realloc(ptr, size);
}

static void *heap_aligned_alloc(void *data, size_t alignment, size_t size)
{
    (void)data;
    return heap_failing ? NULL : aligned_alloc(alignment, size);
}

static void heap_aligned_free(void *data, size_t alignment, void *ptr)
{
    (void)data;
    (void)alignment;
    free(ptr);
}

static int tcp_accepted;

static void count_accept(struct raft_uv_transport *t, raft_id id, const char *address,
                         uv_stream_t *stream)
{
    (void)t;
    (void)id;
    (void)address;
    tcp_accepted++;
    uv_close((uv_handle_t *)stream, (uv_close_cb)raft_free);
}

/* A connection to @port that sends raft_uv_tcp's preamble as node 2. The
 * kernel completes it and queues the bytes before this returns. */
static int dial_with_preamble(int port)
{
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_port = htons((uint16_t)port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    uint8_t pre[24 + 16] = {0};
    const uint64_t fields[3] = {1, 2, 16}; /* protocol, id, address length */
    for (int f = 0; f < 3; f++)
        for (int i = 0; i < 8; i++)
            pre[f * 8 + i] = (uint8_t)(fields[f] >> (8 * i));
    memcpy(pre + 24, "127.0.0.1:2", 11);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(write(fd, pre, sizeof(pre)), sizeof(pre));
    return fd;
}

/* What a listener does with what is already queued, without waiting. */
static void run_queued(uv_loop_t *loop)
{
    for (int i = 0; i < 20; i++)
        uv_run(loop, UV_RUN_NOWAIT);
}

static void tcp_closed(struct raft_uv_transport *t)
{
    *(bool *)t->data = true;
}

/* Quirk 3: when raft_uv_tcp cannot allocate for an incoming connection, its
 * listen callback returns without uv_accept; libuv then stops watching the
 * listener until a connection is accepted, which never happens: the node
 * takes no Raft connection again until it restarts. (keyplane's TLS
 * transport takes such a connection and closes it, tls_link.c.) */
static void tcp_listener_stuck_after_allocation_failure(void **state)
{
    (void)state;
    struct raft_heap heap = {NULL,         heap_malloc,        heap_free,        heap_calloc,
                             heap_realloc, heap_aligned_alloc, heap_aligned_free};
    uv_loop_t loop;
    struct raft_uv_transport t;
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sin);
    char addr[32];
    bool closed = false;
    int probe = socket(AF_INET, SOCK_STREAM, 0);
    assert_int_equal(bind(probe, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(getsockname(probe, (struct sockaddr *)&sin, &len), 0);
    close(probe);
    int port = ntohs(sin.sin_port);
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);

    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(raft_uv_tcp_init(&t, &loop), 0);
    t.data = &closed;
    assert_int_equal(t.init(&t, 1, addr), 0);
    assert_int_equal(t.listen(&t, count_accept), 0);

    /* The control: a connection is accepted from what is queued. */
    int ok = dial_with_preamble(port);
    run_queued(&loop);
    assert_int_equal(tcp_accepted, 1);

    /* One connection while allocations fail... */
    raft_heap_set(&heap);
    heap_failing = true;
    int failed = dial_with_preamble(port);
    run_queued(&loop);
    heap_failing = false;
    raft_heap_set_default();
    /* ...and the next one, with memory again, is never taken. */
    int next = dial_with_preamble(port);
    run_queued(&loop);
    assert_int_equal(tcp_accepted, 1); /* should be 2 */

    close(ok);
    close(failed);
    close(next);
    t.close(&t, tcp_closed);
    while (!closed)
        uv_run(&loop, UV_RUN_ONCE);
    raft_uv_tcp_close(&t);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* --- quirk 4: raft_close with requests in flight -------------------------------- */

static unsigned applies_done;

static void apply_cb(struct raft_apply *req, int status, void *result)
{
    (void)status;
    (void)result;
    free(req);
    applies_done++;
}

/* A lone leader appends @n entries, then closes: at once, or once every
 * apply finished (@wait). Runs in a child; returns how it ended. */
static int close_with_applies(unsigned n, bool wait)
{
    char *dir = temp_dir(); /* removed here: the child may not live to */
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* The crash itself, not cmocka's or a sanitizer's report of it. */
        signal(SIGSEGV, SIG_DFL);
        struct node nd;
        node_open(&nd, dir, false);
        bootstrap(&nd);
        if (raft_start(&nd.raft) != 0)
            _exit(3);
        for (unsigned i = 0; i < n; i++) {
            struct raft_apply *req = malloc(sizeof(*req));
            struct raft_buffer buf = {raft_malloc(8), 8};
            memset(buf.base, 'x', 8);
            if (req == NULL || raft_apply(&nd.raft, req, &buf, 1, apply_cb) != 0)
                _exit(4);
        }
        while (wait && applies_done < n)
            uv_run(&nd.loop, UV_RUN_ONCE);
        node_close(&nd);
        _exit(0);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    remove_dir(dir);
    return status;
}

static void close_with_applies_in_flight_crashes(void **state)
{
    (void)state;
    int st = close_with_applies(2, false);
    assert_true(WIFSIGNALED(st));
    assert_int_equal(WTERMSIG(st), SIGSEGV); /* should exit 0 */
    st = close_with_applies(2, true);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

/* --- quirk 5: a failed append ----------------------------------------------------- */

static int q5_status[8];
static unsigned q5_done;

static void q5_apply_cb(struct raft_apply *req, int status, void *result)
{
    (void)result;
    q5_status[(uintptr_t)req->data] = status;
    free(req);
    q5_done++;
}

static void q5_apply(struct node *n, unsigned i, char fill)
{
    struct raft_apply *req = malloc(sizeof(*req));
    struct raft_buffer buf = {raft_malloc(1024), 1024};
    assert_non_null(req);
    memset(buf.base, fill, 1024);
    req->data = (void *)(uintptr_t)i;
    assert_int_equal(raft_apply(&n->raft, req, &buf, 1, q5_apply_cb), 0);
    while (q5_done <= i)
        uv_run(&n->loop, UV_RUN_ONCE);
}

/* A lone leader with 8 KiB segments, under RLIMIT_FSIZE of 4 KiB: raft_uv
 * cannot prepare a new segment (posix_fallocate fails with EFBIG, a real
 * failure inside raft_uv, as ENOSPC is on a full disk). Entries a to d
 * fail, and raft goes on leading: it drops them and fails their requests,
 * and with nothing to step down for (heartbeats need no disk) it stays
 * leader however many fail. Lifted, the limit lets e through, at the index
 * a had; the log raft loads next time holds e there. */
static void failed_appends_leave_the_leader_leading(void **state)
{
    (void)state;
    char *dir = temp_dir();
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        signal(SIGXFSZ, SIG_IGN); /* EFBIG instead of the signal */
        struct node nd;
        node_open(&nd, dir, false);
        raft_uv_set_segment_size(&nd.io, 8192);
        bootstrap(&nd);
        if (raft_start(&nd.raft) != 0)
            _exit(3);
        raft_index before = raft_last_index(&nd.raft);
        struct rlimit small = {4096, RLIM_INFINITY}, none = {RLIM_INFINITY, RLIM_INFINITY};
        setrlimit(RLIMIT_FSIZE, &small);
        for (unsigned i = 0; i < 4; i++) {
            q5_apply(&nd, i, (char)('a' + i));
            if (q5_status[i] != RAFT_IOERR || raft_last_index(&nd.raft) != before)
                _exit(10 + (int)i); /* the entry stayed: raft changed */
        }
        if (raft_state(&nd.raft) != RAFT_LEADER)
            _exit(20); /* it stepped down: raft changed */
        setrlimit(RLIMIT_FSIZE, &none);
        q5_apply(&nd, 4, 'e');
        if (q5_status[4] != 0 || raft_last_index(&nd.raft) != before + 1)
            _exit(21);
        node_close(&nd);
        node_open(&nd, dir, false);
        if (raft_start(&nd.raft) != 0 || raft_last_index(&nd.raft) != before + 1)
            _exit(22);
        node_close(&nd);
        _exit(0);
    }
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    remove_dir(dir);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(lone_voter_leads_without_a_new_term),
        cmocka_unit_test(recover_appends_a_term_1_entry),
        cmocka_unit_test(tcp_listener_stuck_after_allocation_failure),
        cmocka_unit_test(close_with_applies_in_flight_crashes),
        cmocka_unit_test(failed_appends_leave_the_leader_leading),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

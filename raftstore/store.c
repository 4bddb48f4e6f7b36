/* The Raft glue: with raft_fsm.c and the TLS transport (transport_tls.c,
 * tls_link.c), the only code in keyplane that calls canonical/raft.
 *
 * A store is one raft instance with its libuv I/O (raft_uv, segmented log and
 * snapshots in the raft directory) and transport (raft_uv_tcp, or mutual TLS
 * from transport_tls.c when the config names certificate files), driving
 * the state machine of fsm.c. Everything runs on one loop:
 *
 *   raft apply ----> raft_fsm.c -> kp_fsm_apply; the result is kept for the
 *        |                            proposer's callback (raft calls it
 *        |                            right after apply)
 *        +--------> "dirty": a timer publishes one view for a batch of
 *                   applies (at most one every PUBLISH_MIN_MS, because the
 *                   first change after a publish copies the changed kind's
 *                   table) and tells the node (on_change); an entry this
 *                   node proposed is published before its proposer hears
 *                   back, so whoever made a write (an admin, then an app
 *                   on the gateway) reads it on this node at once
 *   raft snapshot -> kp_fsm_snapshot (msgpack + zstd, docs/registry.md)
 *   raft restore --> kp_fsm_restore, then publish
 *
 * Leadership has no callback in raft 0.15: a 50 ms timer watches the state
 * and the leader id and tells the node when either changes.
 *
 * Log entries are framed and padded to 8 bytes (raft_fsm.c says why). */
#include <errno.h>
#include <netinet/in.h>
#include <raft.h>
#include <raft/uv.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "raftstore/raft_glue.h"

/* Routers may see a registry change this much later than the state
 * machine; in exchange a burst of writes copies each table once per
 * period instead of once per write. */
enum { PUBLISH_MIN_MS = 5 };

/* How long closing waits for requests raft holds. */
#define CLOSE_DRAIN_MS 2000

struct kp_store {
    uv_loop_t *loop;
    struct raft raft;
    struct raft_io io;
    struct raft_uv_transport transport;
    bool tls; /* transport is transport_tls.c's */
    struct kp_raft_fsm rfsm;
    struct kp_fsm *fsm;
    struct kp_view_slot *views; /* the caller's (cfg.views) */
    struct kp_store_config cfg;
    char *dir;
    char *address;
    char *tls_files[3];    /* cfg's, copied */
    uv_timer_t notify;     /* publish a view and tell the node */
    uint64_t published_at; /* uv_now of the last publish */
    /* Inside a callback that reports a failed request: raft 0.15 fails
     * pending requests while it tears leadership down, with its state still
     * "leader"; a new request from there (a retry, the member record a
     * failed change still writes) corrupts it. Counted so that
     * kp_store_is_leader says no, and every start function refuses. */
    unsigned failing;
    uint64_t published_index; /* applied index of the last published view */
    uv_timer_t watch;         /* leadership watch */
    unsigned short seen_state;
    uint64_t seen_leader;
    bool raft_started;
    bool closing;
    /* Proposals and other requests raft holds (their callback not called
     * yet). Closing waits for them, up to CLOSE_DRAIN_MS: raft 0.15's
     * raft_close with entries of a leader still in flight can read a NULL
     * pointer inside libraft (tests/unit/test_raft_quirks.c, quirk 4). */
    unsigned inflight;
    uint64_t close_deadline;
    int handles_open;
    void (*close_cb)(void *arg);
    void *close_arg;
    /* raft_uv's own, called by the guards that replace them in io. */
    int (*uv_append)(struct raft_io *io, struct raft_io_append *req,
                     const struct raft_entry entries[], unsigned n, raft_io_append_cb cb);
    int (*uv_set_term)(struct raft_io *io, raft_term term);
    int (*uv_set_vote)(struct raft_io *io, raft_id server_id);
};

static int from_raft(int rv)
{
    switch (rv) {
    case 0:
        return KP_OK;
    case RAFT_NOMEM:
        return KP_ENOMEM;
    case RAFT_NOTLEADER:
    case RAFT_LEADERSHIPLOST:
        return KP_ENOTLEADER;
    case RAFT_SHUTDOWN:
    case RAFT_CANCELED:
        return KP_ECLOSED;
    case RAFT_DUPLICATEID:
    case RAFT_DUPLICATEADDRESS:
    case RAFT_BADROLE:
        return KP_ECONFLICT;
    case RAFT_CANTCHANGE: /* another configuration change is in progress */
        return KP_EBUSY;
    case RAFT_BADID:
    case RAFT_NOTFOUND:
        return KP_ENOENT;
    default:
        return KP_EIO;
    }
}

/* --- the log's durability -------------------------------------------------- */

/* raft_uv makes log entries durable with O_DSYNC writes (kernel AIO) into
 * segment files it preallocates, and the term and vote with fsync. When one
 * of them fails, raft 0.15 goes on: a leader drops the entries and fails
 * their requests, and keeps leading (heartbeats need no disk), failing
 * the writes it is given for as long as its disk is full, although the
 * other voters could elect a leader that can write
 * (tests/unit/test_raft_quirks.c, quirk 5).
 * After a write the device failed (EIO) nothing the process believes it
 * wrote can be trusted either. So the guards below stop the node (exit KP_EXIT_RAFT_IO,
 * saying why) before raft sees the failure. Its peers never counted the
 * failed entries as stored here, so no acknowledged write depended on
 * them; restarted once the disk has room again (or is replaced), the node
 * loads what is durable and catches up from the leader. */
enum { KP_EXIT_RAFT_IO = 74 }; /* EX_IOERR; docs/operations.md */

struct guarded_append {
    struct raft_io_append inner;  /* what raft_uv completes */
    struct raft_io_append *outer; /* raft's */
    struct kp_store *s;
};

static struct kp_store *io_store(struct raft_io *io)
{
    return (struct kp_store *)(void *)((char *)io - offsetof(struct kp_store, io));
}

static void log_io_failed(struct kp_store *s, const char *what, int rv)
{
    /* raft_strerror has no text for RAFT_NOSPACE in 0.15. */
    const char *why = rv == RAFT_NOSPACE ? "no space left on the disk" : raft_strerror(rv);
    kp_error("raft",
             "%s: %s failed: %s%s%s; stopping this node: Raft cannot go on after a log "
             "write it could not make durable (restart it once the disk has room or is "
             "replaced: it catches up from the others)",
             s->dir, what, why, s->io.errmsg[0] ? ": " : "", s->io.errmsg);
    _exit(KP_EXIT_RAFT_IO);
}

static void guarded_append_done(struct raft_io_append *req, int status)
{
    struct guarded_append *g = req->data;
    struct raft_io_append *outer = g->outer;
    struct kp_store *s = g->s;
    raft_free(g);
    /* Canceled: raft_close finishing what was queued, nothing failed. */
    if (status != 0 && status != RAFT_CANCELED)
        log_io_failed(s, "writing log entries", status);
    outer->cb(outer, status);
}

static int guarded_append(struct raft_io *io, struct raft_io_append *req,
                          const struct raft_entry entries[], unsigned n, raft_io_append_cb cb)
{
    struct kp_store *s = io_store(io);
    struct guarded_append *g = raft_malloc(sizeof(*g));
    if (g == NULL)
        return RAFT_NOMEM;
    g->inner.data = g;
    g->outer = req;
    g->s = s;
    req->cb = cb;
    int rv = s->uv_append(io, &g->inner, entries, n, guarded_append_done);
    if (rv == RAFT_NOMEM) {
        raft_free(g); /* refused before it was queued */
        return rv;
    }
    /* Any other error comes after raft_uv queued the request (a write it
     * could not submit): the disk is failing. */
    if (rv != 0)
        log_io_failed(s, "writing log entries", rv);
    return 0;
}

/* Whether the raft listener's address cannot be bound, and why (in @why):
 * raft_uv reports an address in use, say, as a bare "I/O error". The bind
 * is tried as libuv does it, with SO_REUSEADDR. */
static bool listen_problem(const char *address, char *why, size_t len)
{
    struct sockaddr_storage ss;
    char ignored[160];
    if (kp_http_parse_addr(address, &ss, ignored, sizeof(ignored)) != KP_OK)
        return false;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    int one = 1;
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    socklen_t slen =
        ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    bool bad = bind(fd, (struct sockaddr *)&ss, slen) != 0;
    if (bad)
        snprintf(why, len, "cannot listen on %s: %s", address, strerror(errno));
    close(fd);
    return bad;
}

static int guarded_set_term(struct raft_io *io, raft_term term)
{
    struct kp_store *s = io_store(io);
    int rv = s->uv_set_term(io, term);
    if (rv != 0)
        log_io_failed(s, "storing the term", rv);
    return rv;
}

static int guarded_set_vote(struct raft_io *io, raft_id server_id)
{
    struct kp_store *s = io_store(io);
    int rv = s->uv_set_vote(io, server_id);
    if (rv != 0)
        log_io_failed(s, "storing the vote", rv);
    return rv;
}

static void guard_io(struct kp_store *s)
{
    s->uv_append = s->io.append;
    s->uv_set_term = s->io.set_term;
    s->uv_set_vote = s->io.set_vote;
    s->io.append = guarded_append;
    s->io.set_term = guarded_set_term;
    s->io.set_vote = guarded_set_vote;
}

/* --- publishing and watching ---------------------------------------------- */

/* Publish a view of the current state unless the last one is current. */
static void publish(struct kp_store *s)
{
    uint64_t applied = kp_fsm_applied_index(s->fsm);
    if (s->published_index == applied && s->published_at != 0)
        return;
    s->published_at = uv_now(s->loop);
    s->published_index = applied;
    kp_view_publish(s->views, kp_fsm_view_build(s->fsm));
}

static void on_notify(uv_timer_t *t)
{
    struct kp_store *s = t->data;
    if (s->closing)
        return;
    publish(s);
    if (s->cfg.on_change != NULL)
        s->cfg.on_change(s->cfg.arg);
}

static void schedule_notify(struct kp_store *s)
{
    if (s->closing || uv_is_active((uv_handle_t *)&s->notify))
        return;
    uint64_t now = uv_now(s->loop), due = s->published_at + PUBLISH_MIN_MS;
    uv_timer_start(&s->notify, on_notify, due > now ? due - now : 0, 0);
}

static void store_dirty(void *arg)
{
    schedule_notify(arg);
}

static uint64_t leader_id(struct kp_store *s)
{
    raft_id id = 0;
    const char *addr = NULL;
    raft_leader(&s->raft, &id, &addr);
    return id;
}

static const char *state_name(int state)
{
    switch (state) {
    case RAFT_FOLLOWER:
        return "follower";
    case RAFT_CANDIDATE:
        return "candidate";
    case RAFT_LEADER:
        return "leader";
    default:
        return "unavailable";
    }
}

static void on_watch(uv_timer_t *t)
{
    struct kp_store *s = t->data;
    if (s->closing)
        return;
    unsigned short state = (unsigned short)raft_state(&s->raft);
    uint64_t leader = leader_id(s);
    if (state == s->seen_state && leader == s->seen_leader)
        return;
    if (leader != s->seen_leader)
        kp_info("raft", "node %llu is %s, term %llu, leader %llu",
                (unsigned long long)s->cfg.node_id, state_name(state),
                (unsigned long long)s->raft.current_term, (unsigned long long)leader);
    s->seen_state = state;
    s->seen_leader = leader;
    if (s->cfg.on_change != NULL)
        s->cfg.on_change(s->cfg.arg);
}

/* --- open and close ----------------------------------------------------------- */

static int make_dir(const char *dir, char *errmsg, size_t errlen)
{
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        snprintf(errmsg, errlen, "cannot create raft directory %s: %s", dir, strerror(errno));
        return KP_EIO;
    }
    return KP_OK;
}

static void store_free(struct kp_store *s)
{
    kp_fsm_free(s->fsm);
    kp_free(s->dir);
    kp_free(s->address);
    for (int i = 0; i < 3; i++)
        kp_free(s->tls_files[i]);
    kp_free(s);
}

static void handle_closed(uv_handle_t *h)
{
    struct kp_store *s = h->data;
    if (--s->handles_open > 0)
        return;
    void (*cb)(void *) = s->close_cb;
    void *arg = s->close_arg;
    store_free(s);
    if (cb != NULL)
        cb(arg);
}

static void close_timers(struct kp_store *s)
{
    s->handles_open = 2;
    uv_close((uv_handle_t *)&s->notify, handle_closed);
    uv_close((uv_handle_t *)&s->watch, handle_closed);
}

/* --- the transport ------------------------------------------------------------ */

/* How many of the three TLS files @cfg names: 0 (plain TCP) or 3 (TLS);
 * anything else is refused with a message that names what is missing. */
static int tls_wanted(const struct kp_store_config *cfg, bool *tls, char *errmsg, size_t errlen)
{
    const char *names[3] = {"certificate (tls_cert_file)", "private key (tls_key_file)",
                            "CA (tls_ca_file)"};
    const char *files[3] = {cfg->tls_cert_file, cfg->tls_key_file, cfg->tls_ca_file};
    int set = 0;
    for (int i = 0; i < 3; i++)
        set += files[i] != NULL && files[i][0] != '\0';
    *tls = set == 3;
    if (set == 0 || set == 3)
        return KP_OK;
    char missing[160] = "";
    for (int i = 0; i < 3; i++)
        if (files[i] == NULL || files[i][0] == '\0')
            snprintf(missing + strlen(missing), sizeof(missing) - strlen(missing), "%s%s",
                     missing[0] ? ", " : "", names[i]);
    snprintf(errmsg, errlen,
             "raft TLS needs a certificate, its private key and the cluster CA together; "
             "missing: %s",
             missing);
    return KP_ECONFIG;
}

static int transport_init(struct raft_uv_transport *t, bool tls, uv_loop_t *loop,
                          const struct kp_store_config *cfg, char *errmsg, size_t errlen)
{
    if (tls)
        return kp_raft_tls_init(t, loop, cfg->tls_cert_file, cfg->tls_key_file, cfg->tls_ca_file,
                                errmsg, errlen);
    int rv = raft_uv_tcp_init(t, loop);
    if (rv != 0) {
        snprintf(errmsg, errlen, "raft: cannot set up the TCP transport: %s", raft_strerror(rv));
        return KP_EIO;
    }
    return KP_OK;
}

static void transport_close(struct raft_uv_transport *t, bool tls)
{
    if (tls)
        kp_raft_tls_close(t);
    else
        raft_uv_tcp_close(t);
}

int kp_store_tls_reload(struct kp_store *s, char *errmsg, size_t errlen)
{
    if (!s->tls || s->closing)
        return KP_OK;
    int rc = kp_raft_tls_reload(&s->transport, errmsg, errlen);
    if (rc == KP_OK)
        kp_info("raft", "TLS certificates reloaded from %s, %s and %s; new links use them",
                s->cfg.tls_cert_file, s->cfg.tls_key_file, s->cfg.tls_ca_file);
    return rc;
}

static void raft_closed(struct raft *r)
{
    struct kp_store *s = r->data;
    raft_uv_close(&s->io);
    transport_close(&s->transport, s->tls);
    close_timers(s);
}

int kp_store_open(struct kp_store **out, uv_loop_t *loop, const struct kp_store_config *cfg,
                  char *errmsg, size_t errlen)
{
    *out = NULL;
    if (cfg->node_id == 0 || cfg->address == NULL || cfg->dir == NULL || cfg->views == NULL) {
        snprintf(errmsg, errlen, "raft: node id, address, directory and view slot are required");
        return KP_EINVAL;
    }
    bool tls;
    int rc = tls_wanted(cfg, &tls, errmsg, errlen);
    if (rc == KP_OK)
        rc = make_dir(cfg->dir, errmsg, errlen);
    if (rc != KP_OK)
        return rc;
    struct kp_store *s = kp_calloc(1, sizeof(*s));
    if (s == NULL)
        goto nomem;
    s->loop = loop;
    s->cfg = *cfg;
    s->dir = kp_strdup(cfg->dir);
    s->address = kp_strdup(cfg->address);
    s->fsm = kp_fsm_new();
    s->views = cfg->views;
    if (s->dir == NULL || s->address == NULL || s->fsm == NULL) {
        store_free(s);
        goto nomem;
    }
    s->cfg.dir = s->dir;
    s->cfg.address = s->address;
    /* The TLS file names are kept for reloads. */
    s->tls_files[0] = tls ? kp_strdup(cfg->tls_cert_file) : NULL;
    s->tls_files[1] = tls ? kp_strdup(cfg->tls_key_file) : NULL;
    s->tls_files[2] = tls ? kp_strdup(cfg->tls_ca_file) : NULL;
    if (tls && (s->tls_files[0] == NULL || s->tls_files[1] == NULL || s->tls_files[2] == NULL)) {
        store_free(s);
        goto nomem;
    }
    s->cfg.tls_cert_file = s->tls_files[0];
    s->cfg.tls_key_file = s->tls_files[1];
    s->cfg.tls_ca_file = s->tls_files[2];
    uv_timer_init(loop, &s->notify);
    uv_timer_init(loop, &s->watch);
    s->notify.data = s->watch.data = s;

    kp_raft_fsm_init(&s->rfsm, s->fsm, &s->raft, store_dirty, s);

    rc = transport_init(&s->transport, tls, loop, cfg, errmsg, errlen);
    if (rc != KP_OK)
        goto fail_timers;
    s->tls = tls;
    int rv = raft_uv_init(&s->io, loop, s->dir, &s->transport);
    if (rv != 0) {
        snprintf(errmsg, errlen, "raft: cannot open %s: %s", s->dir, s->io.errmsg);
        transport_close(&s->transport, tls);
        goto fail_timers;
    }
    /* Snapshots are zstd already. */
    raft_uv_set_snapshot_compression(&s->io, false);
    if (cfg->segment_bytes != 0)
        raft_uv_set_segment_size(&s->io, cfg->segment_bytes);
    guard_io(s);
    rv = raft_init(&s->raft, &s->io, &s->rfsm.rf, cfg->node_id, s->address);
    if (rv != 0) {
        snprintf(errmsg, errlen, "raft: %s", raft_errmsg(&s->raft));
        raft_uv_close(&s->io);
        transport_close(&s->transport, tls);
        goto fail_timers;
    }
    s->raft.data = s;
    raft_set_election_timeout(&s->raft, cfg->election_timeout_ms ? cfg->election_timeout_ms : 1000);
    raft_set_heartbeat_timeout(&s->raft,
                               cfg->heartbeat_timeout_ms ? cfg->heartbeat_timeout_ms : 100);
    raft_set_snapshot_threshold(&s->raft, cfg->snapshot_threshold ? cfg->snapshot_threshold : 1024);
    raft_set_snapshot_trailing(&s->raft, cfg->snapshot_trailing ? cfg->snapshot_trailing : 128);
    raft_set_pre_vote(&s->raft, true);
    /* A snapshot sent to a follower that was down, or restarting, is lost;
     * raft sends it again only after this long (30 s by default), and the
     * follower cannot turn ready before (it waits to catch up). A registry
     * snapshot takes well under a second on a LAN. */
    unsigned election = cfg->election_timeout_ms ? cfg->election_timeout_ms : 1000;
    raft_set_install_snapshot_timeout(&s->raft, election * 5 > 5000 ? election * 5 : 5000);

    if (cfg->bootstrap) {
        struct raft_configuration conf;
        raft_configuration_init(&conf);
        rv = raft_configuration_add(&conf, cfg->node_id, s->address, RAFT_VOTER);
        if (rv == 0)
            rv = raft_bootstrap(&s->raft, &conf);
        raft_configuration_close(&conf);
        if (rv == 0)
            kp_info("raft", "bootstrapped a new cluster: node %llu at %s is its only voter",
                    (unsigned long long)cfg->node_id, s->address);
        else if (rv != RAFT_CANTBOOTSTRAP) {
            snprintf(errmsg, errlen, "raft: cannot bootstrap: %s", raft_errmsg(&s->raft));
            goto fail_raft;
        }
    }
    rv = raft_start(&s->raft);
    if (rv != 0) {
        /* raft_uv does not copy the transport's message (a failed listen). */
        char listen_why[200];
        const char *why = raft_errmsg(&s->raft);
        if (why == NULL || why[0] == '\0')
            why = s->io.errmsg[0] ? s->io.errmsg : s->transport.errmsg;
        if (why[0] == '\0')
            why = raft_strerror(rv);
        if (listen_problem(s->address, listen_why, sizeof(listen_why)))
            why = listen_why; /* what raft_uv calls a bare I/O error */
        snprintf(errmsg, errlen, "raft: cannot start on %s with %s: %s", s->address, s->dir, why);
        goto fail_raft;
    }
    s->raft_started = true;
    uv_timer_start(&s->watch, on_watch, 50, 50);
    schedule_notify(s);
    *out = s;
    return KP_OK;

fail_raft:
    /* raft_close is the only way to release what raft_init set up; it
     * completes on the loop. The caller runs the loop to let it finish. */
    s->closing = true;
    raft_close(&s->raft, raft_closed);
    return KP_EIO;
fail_timers:
    s->closing = true;
    close_timers(s);
    return rc != KP_OK ? rc : KP_EIO;
nomem:
    snprintf(errmsg, errlen, "out of memory");
    return KP_ENOMEM;
}

/* raft_close once raft holds no request of ours, or at the deadline (a
 * leader without a quorum never finishes them). */
static void close_when_drained(uv_timer_t *t)
{
    struct kp_store *s = t->data;
    if (s->inflight > 0 && uv_now(s->loop) < s->close_deadline) {
        uv_timer_start(&s->watch, close_when_drained, 5, 0);
        return;
    }
    uv_timer_stop(&s->watch);
    raft_close(&s->raft, raft_closed);
}

void kp_store_close(struct kp_store *s, void (*cb)(void *arg), void *arg)
{
    if (s == NULL) {
        if (cb != NULL)
            cb(arg);
        return;
    }
    s->closing = true; /* no new request from here on */
    s->close_cb = cb;
    s->close_arg = arg;
    uv_timer_stop(&s->notify);
    uv_timer_stop(&s->watch);
    s->close_deadline = uv_now(s->loop) + CLOSE_DRAIN_MS;
    close_when_drained(&s->watch);
}

struct kp_view_slot *kp_store_views(struct kp_store *s)
{
    return s->views;
}

const struct kp_fsm *kp_store_fsm(const struct kp_store *s)
{
    return s->fsm;
}

/* --- leadership and status ------------------------------------------------------- */

bool kp_store_is_leader(struct kp_store *s)
{
    return !s->closing && s->failing == 0 && raft_state(&s->raft) == RAFT_LEADER;
}

uint64_t kp_store_applied_index(struct kp_store *s)
{
    return raft_last_applied(&s->raft);
}

int kp_store_leader(struct kp_store *s, uint64_t *id, char *addr, size_t addrlen)
{
    raft_id lid = 0;
    const char *laddr = NULL;
    if (!s->closing)
        raft_leader(&s->raft, &lid, &laddr);
    if (lid == 0 || laddr == NULL)
        return KP_ENOTLEADER;
    *id = lid;
    snprintf(addr, addrlen, "%s", laddr);
    return KP_OK;
}

int kp_store_status(struct kp_store *s, struct kp_store_status *out)
{
    memset(out, 0, sizeof(*out));
    struct raft *r = &s->raft;
    int state = raft_state(r);
    out->node_id = s->cfg.node_id;
    out->state = state_name(state);
    out->term = r->current_term;
    out->commit_index = r->commit_index;
    out->applied_index = raft_last_applied(r);
    out->last_index = raft_last_index(r);
    out->leader_id = leader_id(s);
    out->snapshot_index = r->log.snapshot.last_index;
    unsigned n = r->configuration.n;
    if (n == 0)
        return KP_OK;
    out->servers = kp_calloc(n, sizeof(*out->servers));
    if (out->servers == NULL)
        return KP_ENOMEM;
    out->nservers = n;
    for (unsigned i = 0; i < n; i++) {
        const struct raft_server *rs = &r->configuration.servers[i];
        struct kp_store_server *o = &out->servers[i];
        o->id = rs->id;
        snprintf(o->address, sizeof(o->address), "%s", rs->address ? rs->address : "");
        o->role = rs->role == RAFT_VOTER     ? KP_STORE_VOTER
                  : rs->role == RAFT_STANDBY ? KP_STORE_STANDBY
                                             : KP_STORE_SPARE;
        o->leader = rs->id == out->leader_id;
        if (state == RAFT_LEADER && r->leader_state.progress != NULL) {
            o->match_index = r->leader_state.progress[i].match_index;
            o->recent_contact = rs->id == s->cfg.node_id || r->leader_state.progress[i].recent_recv;
        }
    }
    return KP_OK;
}

void kp_store_status_free(struct kp_store_status *st)
{
    kp_free(st->servers);
    st->servers = NULL;
    st->nservers = 0;
}

/* --- proposals --------------------------------------------------------------------- */

struct apply_req {
    struct raft_apply req;
    struct kp_store *s;
    kp_store_apply_cb cb;
    void *arg;
};

static void apply_done(struct raft_apply *req, int status, void *result)
{
    struct apply_req *p = req->data;
    p->s->inflight--;
    const struct kp_raft_applied *a = result;
    if (status == 0 && (a == NULL || a->index != req->index)) {
        /* Cannot happen with raft 0.15 (the callback follows the apply);
         * fail safe rather than answer with another entry's result. */
        kp_error("raft", "apply result for entry %llu is missing", (unsigned long long)req->index);
        status = RAFT_IOERR;
    }
    if (status == 0) {
        publish(p->s);
        p->cb(p->arg, KP_OK, &a->res);
    } else {
        p->s->failing++;
        p->cb(p->arg, from_raft(status), NULL);
        p->s->failing--;
    }
    kp_free(p);
}

int kp_store_propose(struct kp_store *s, const void *cmd, size_t len, kp_store_apply_cb cb,
                     void *arg)
{
    if (!kp_store_is_leader(s))
        return KP_ENOTLEADER;
    struct apply_req *p = kp_calloc(1, sizeof(*p));
    struct raft_buffer buf = {NULL, 0};
    int rc = p != NULL ? kp_raft_entry_frame(cmd, len, &buf) : KP_ENOMEM;
    if (rc != KP_OK) {
        kp_free(p);
        return rc;
    }
    p->req.data = p;
    p->s = s;
    p->cb = cb;
    p->arg = arg;
    int rv = raft_apply(&s->raft, &p->req, &buf, 1, apply_done);
    if (rv == 0)
        s->inflight++;
    if (rv != 0) {
        /* raft 0.15 owns the buffer once the entry was appended, and frees
         * it itself when a later step fails (logDiscard); it is still ours
         * only when raft refused before appending: not the leader (or a
         * transfer in progress). Another failure may leak one buffer, but
         * never frees it twice. */
        if (rv == RAFT_NOTLEADER)
            raft_free(buf.base);
        kp_free(p);
        return from_raft(rv);
    }
    return KP_OK;
}

struct done_req {
    union {
        struct raft_barrier barrier;
        struct raft_change change;
        struct raft_transfer transfer;
    } u;
    struct kp_store *s;
    kp_store_done_cb cb;
    void *arg;
    uint64_t id;
    int role; /* raft role to assign after an add, or -1 */
};

/* Starts a request on the leader; anywhere else it is refused before raft
 * sees it. */
static int done_req_start(struct kp_store *s, kp_store_done_cb cb, void *arg, uint64_t id, int role,
                          struct done_req **out)
{
    if (!kp_store_is_leader(s))
        return KP_ENOTLEADER;
    struct done_req *p = kp_calloc(1, sizeof(*p));
    if (p == NULL)
        return KP_ENOMEM;
    p->s = s;
    p->cb = cb;
    p->arg = arg;
    p->id = id;
    p->role = role;
    *out = p;
    return KP_OK;
}

/* What raft said to a request just made: on refusal the request was never
 * taken, so it is freed here. */
static int submitted(struct done_req *p, int rv)
{
    if (rv == 0) {
        p->s->inflight++;
        return KP_OK;
    }
    kp_free(p);
    return from_raft(rv);
}

static void done_finish(struct done_req *p, int status, const char *what)
{
    char msg[256];
    p->s->inflight--;
    if (status == 0)
        snprintf(msg, sizeof(msg), "%s: done", what);
    else
        snprintf(msg, sizeof(msg), "%s: %s", what,
                 p->s->closing ? "node is shutting down" : raft_strerror(status));
    if (status != 0)
        p->s->failing++;
    p->cb(p->arg, from_raft(status), msg);
    if (status != 0)
        p->s->failing--;
    kp_free(p);
}

static void barrier_done(struct raft_barrier *req, int status)
{
    done_finish(req->data, status, "barrier");
}

int kp_store_barrier(struct kp_store *s, kp_store_done_cb cb, void *arg)
{
    struct done_req *p;
    int rc = done_req_start(s, cb, arg, 0, -1, &p);
    if (rc != KP_OK)
        return rc;
    p->u.barrier.data = p;
    return submitted(p, raft_barrier(&s->raft, &p->u.barrier, barrier_done));
}

static int raft_role(int role)
{
    return role == KP_STORE_VOTER     ? RAFT_VOTER
           : role == KP_STORE_STANDBY ? RAFT_STANDBY
                                      : RAFT_SPARE;
}

static void assign_done(struct raft_change *req, int status)
{
    done_finish(req->data, status, "assign role");
}

static void add_done(struct raft_change *req, int status)
{
    struct done_req *p = req->data;
    if (status != 0 || p->role < 0 || p->role == RAFT_SPARE) {
        done_finish(p, status, "add member");
        return;
    }
    /* Added as a spare; now give it its role (a voter catches up first). */
    int rv = raft_assign(&p->s->raft, &p->u.change, p->id, p->role, assign_done);
    if (rv != 0)
        done_finish(p, rv, "assign role after add");
}

int kp_store_add(struct kp_store *s, uint64_t id, const char *address, int role,
                 kp_store_done_cb cb, void *arg)
{
    struct done_req *p;
    int rc = done_req_start(s, cb, arg, id, raft_role(role), &p);
    if (rc != KP_OK)
        return rc;
    p->u.change.data = p;
    return submitted(p, raft_add(&s->raft, &p->u.change, id, address, add_done));
}

int kp_store_assign(struct kp_store *s, uint64_t id, int role, kp_store_done_cb cb, void *arg)
{
    struct done_req *p;
    int rc = done_req_start(s, cb, arg, id, -1, &p);
    if (rc != KP_OK)
        return rc;
    p->u.change.data = p;
    return submitted(p, raft_assign(&s->raft, &p->u.change, id, raft_role(role), assign_done));
}

static void remove_done(struct raft_change *req, int status)
{
    done_finish(req->data, status, "remove member");
}

int kp_store_remove(struct kp_store *s, uint64_t id, kp_store_done_cb cb, void *arg)
{
    struct done_req *p;
    int rc = done_req_start(s, cb, arg, id, -1, &p);
    if (rc != KP_OK)
        return rc;
    p->u.change.data = p;
    return submitted(p, raft_remove(&s->raft, &p->u.change, id, remove_done));
}

static void transfer_done(struct raft_transfer *req)
{
    struct done_req *p = req->data;
    p->s->inflight--;
    uint64_t now = leader_id(p->s);
    bool ok = now != 0 && now != p->s->cfg.node_id && (p->id == 0 || now == p->id);
    char msg[128];
    snprintf(msg, sizeof(msg), ok ? "leadership moved to node %llu" : "leader is node %llu",
             (unsigned long long)now);
    p->cb(p->arg, ok ? KP_OK : KP_EIO, msg);
    kp_free(p);
}

int kp_store_transfer(struct kp_store *s, uint64_t id, kp_store_done_cb cb, void *arg)
{
    struct done_req *p;
    int rc = done_req_start(s, cb, arg, id, -1, &p);
    if (rc != KP_OK)
        return rc;
    p->u.transfer.data = p;
    return submitted(p, raft_transfer(&s->raft, &p->u.transfer, id, transfer_done));
}

/* --- offline: a stopped node's raft directory ----------------------------------------
 *
 * Both operations run on a private loop, before (or instead of) the node's
 * own raft instance: nothing else may have the directory open, which the
 * data directory's lock ensures. */

struct offline {
    uv_loop_t loop;
    struct raft_uv_transport transport;
    bool tls;
    struct raft_io io;
    struct raft raft;
    struct raft_fsm fsm; /* raft_init wants one; nothing is applied offline */
    bool raft_inited;
    bool done;
    int status;
};

/* The same transport as kp_store_open would use, so that an offline
 * operation fails on the same configuration errors as a start would. */
static int offline_open(struct offline *o, const struct kp_store_config *cfg, char *errmsg,
                        size_t errlen)
{
    memset(o, 0, sizeof(*o));
    int rc = tls_wanted(cfg, &o->tls, errmsg, errlen);
    if (rc != KP_OK)
        return rc;
    if (uv_loop_init(&o->loop) != 0) {
        snprintf(errmsg, errlen, "raft: cannot make an event loop");
        return KP_ENOMEM;
    }
    rc = transport_init(&o->transport, o->tls, &o->loop, cfg, errmsg, errlen);
    if (rc != KP_OK) {
        uv_loop_close(&o->loop);
        return rc;
    }
    int rv = raft_uv_init(&o->io, &o->loop, cfg->dir, &o->transport);
    if (rv != 0) {
        snprintf(errmsg, errlen, "raft: cannot open %s: %s", cfg->dir, o->io.errmsg);
        transport_close(&o->transport, o->tls);
        uv_loop_close(&o->loop);
        return KP_EIO;
    }
    raft_uv_set_snapshot_compression(&o->io, false);
    return KP_OK;
}

static void offline_run_until_done(struct offline *o)
{
    while (!o->done && uv_run(&o->loop, UV_RUN_ONCE) != 0)
        ;
}

static void offline_raft_closed(struct raft *r)
{
    struct offline *o = r->data;
    o->done = true;
}

static void offline_io_closed(struct raft_io *io)
{
    struct offline *o = io->data;
    o->done = true;
}

/* Closes what offline_open opened (and raft, when it was set up); then the
 * loop runs dry and is closed. */
static void offline_close(struct offline *o, bool io_inited)
{
    o->done = false;
    if (o->raft_inited) {
        raft_close(&o->raft, offline_raft_closed);
        offline_run_until_done(o);
    } else if (io_inited) {
        o->io.data = o;
        o->io.close(&o->io, offline_io_closed);
        offline_run_until_done(o);
    }
    raft_uv_close(&o->io);
    transport_close(&o->transport, o->tls);
    uv_run(&o->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&o->loop) != 0)
        kp_warn("raft", "offline loop closed with open handles");
}

static void seed_put_done(struct raft_io_snapshot_put *req, int status)
{
    struct offline *o = req->data;
    o->status = status;
    o->done = true;
}

int kp_store_seed(const struct kp_store_config *cfg, const void *snap, size_t len, uint64_t index,
                  char *errmsg, size_t errlen)
{
    struct offline o;
    const char *dir = cfg->dir, *address = cfg->address;
    uint64_t node_id = cfg->node_id;
    if (index == 0 || node_id == 0 || len == 0 || dir == NULL || address == NULL) {
        snprintf(errmsg, errlen, "raft: a seed needs an index, a node id and a snapshot");
        return KP_EINVAL;
    }
    int rc = make_dir(dir, errmsg, errlen);
    if (rc == KP_OK)
        rc = offline_open(&o, cfg, errmsg, errlen);
    if (rc != KP_OK)
        return rc;
    struct raft_buffer buf = {raft_malloc(len), len};
    struct raft_snapshot sn = {
        .index = index, .term = 1, .configuration_index = index, .bufs = &buf, .n_bufs = 1};
    struct raft_io_snapshot_put req = {.data = &o};
    raft_configuration_init(&sn.configuration);
    bool io_inited = false;
    int rv = buf.base != NULL ? 0 : RAFT_NOMEM;
    if (rv == 0) {
        memcpy(buf.base, snap, len);
        rv = raft_configuration_add(&sn.configuration, node_id, address, RAFT_VOTER);
    }
    if (rv == 0 && (rv = o.io.init(&o.io, node_id, address)) == 0)
        io_inited = true;
    /* Term 1, as a bootstrap writes it: the first election makes term 2. */
    if (rv == 0)
        rv = o.io.set_term(&o.io, 1);
    /* trailing > 0: a snapshot this node took, not one installed from a
     * leader (which would wait for appends that never come). */
    if (rv == 0 && (rv = o.io.snapshot_put(&o.io, 1, &req, &sn, seed_put_done)) == 0) {
        offline_run_until_done(&o);
        rv = o.status;
    }
    if (rv != 0)
        snprintf(errmsg, errlen, "raft: cannot write the first snapshot into %s: %s%s%s", dir,
                 raft_strerror(rv), o.io.errmsg[0] ? ": " : "", o.io.errmsg);
    offline_close(&o, io_inited);
    raft_configuration_close(&sn.configuration);
    raft_free(buf.base);
    return rv == 0 ? KP_OK : rv == RAFT_NOMEM ? KP_ENOMEM : KP_EIO;
}

int kp_store_recover(const struct kp_store_config *cfg, char *errmsg, size_t errlen)
{
    struct offline o;
    struct raft_configuration conf;
    const char *dir = cfg->dir, *address = cfg->address;
    uint64_t node_id = cfg->node_id;
    int rc = offline_open(&o, cfg, errmsg, errlen);
    if (rc != KP_OK)
        return rc;
    o.fsm.version = 2;
    int rv = raft_init(&o.raft, &o.io, &o.fsm, node_id, address);
    if (rv == 0) {
        o.raft_inited = true;
        o.raft.data = &o;
    }
    raft_configuration_init(&conf);
    if (rv == 0)
        rv = raft_configuration_add(&conf, node_id, address, RAFT_VOTER);
    if (rv == 0)
        rv = raft_recover(&o.raft, &conf);
    if (rv != 0) {
        const char *why = o.raft_inited ? raft_errmsg(&o.raft) : NULL;
        if (why == NULL || why[0] == '\0')
            why = o.io.errmsg[0] ? o.io.errmsg : raft_strerror(rv);
        snprintf(errmsg, errlen, "raft: cannot recover %s: %s", dir, why);
    }
    raft_configuration_close(&conf);
    offline_close(&o, false);
    return rv == 0 ? KP_OK : rv == RAFT_NOMEM ? KP_ENOMEM : KP_EIO;
}

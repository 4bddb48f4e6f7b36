/* A node's life in the cluster: its identity, its master key, and how it
 * gets into a cluster.
 *
 *   identity   DATA_DIR/node.id holds the Raft id, made once at random.
 *   master key master_key_file, else KEYPLANE_MASTER_KEY, else
 *              DATA_DIR/master.key; a node that bootstraps a new cluster
 *              and has none generates DATA_DIR/master.key (0600). The
 *              cluster records the key's id at bootstrap: a node whose key
 *              differs stops with a message instead of serving.
 *   bootstrap  an empty raft directory and no join: a one-voter cluster; as
 *              soon as this node leads, it commits the cluster settings
 *              (id, token pepper, key id), its own member record and the
 *              first admin token, which it has first written to
 *              DATA_DIR/admin.token (0600) and printed once.
 *   restore    an empty raft directory and `restore`: a new cluster from a
 *              snapshot, made before the store opens (restore.c).
 *   join       an empty raft directory and join addresses (control
 *              listeners of cluster nodes): asks each in turn, every second,
 *              to add it (/internal/v1/join with the cluster secret) until
 *              one does. A refusal of the cluster secret means a different
 *              master key: the node stops.
 *   cluster    DATA_DIR/cluster.json, written once the node knows its
 *              cluster: a registry of another cluster, or join addresses
 *              of another cluster, stop the node (exit 2).
 *
 * Readiness (/readyz) waits until this node holds the cluster settings and
 * has applied what the leader had committed when it asked; a member the
 * leader removed is not ready again. On SIGTERM a leader hands leadership
 * over (kp_node_draining). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "node.h"

static int path_in(char *out, size_t len, const char *dir, const char *name)
{
    int n = snprintf(out, len, "%s/%s", dir, name);
    return n > 0 && (size_t)n < len ? KP_OK : KP_EINVAL;
}

/* Write @data to @path (mode 0600) atomically: temporary file, fsync,
 * rename. */
int kp_node_write_private(const char *path, const char *data, size_t len, char *errmsg,
                          size_t errlen)
{
    char tmp[4200];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    bool ok = fd >= 0;
    ok = ok && write(fd, data, len) == (ssize_t)len;
    ok = ok && fsync(fd) == 0;
    if (fd >= 0)
        close(fd);
    ok = ok && rename(tmp, path) == 0;
    if (!ok) {
        snprintf(errmsg, errlen, "cannot write %s: %s", path, strerror(errno));
        unlink(tmp);
        return KP_EIO;
    }
    return KP_OK;
}

int kp_node_load_id(struct kp_node *n, char *errmsg, size_t errlen)
{
    const char *dir = n->cfg->data_dir;
    char path[4096], text[32] = "";
    path_in(path, sizeof(path), dir, "node.id");
    FILE *f = fopen(path, "r");
    if (f != NULL) {
        bool ok = fgets(text, sizeof(text), f) != NULL;
        fclose(f);
        char *end = NULL;
        unsigned long long v = ok ? strtoull(text, &end, 10) : 0;
        if (v == 0 || end == text || (*end != '\n' && *end != '\0')) {
            snprintf(errmsg, errlen, "%s is corrupt: expected a node id (a positive integer)",
                     path);
            return KP_ECONFIG;
        }
        n->node_id = v;
        return KP_OK;
    }
    uint64_t id = 0;
    while (id == 0) {
        if (kp_random_bytes(&id, sizeof(id)) != KP_OK) {
            snprintf(errmsg, errlen, "no randomness for a node id");
            return KP_EIO;
        }
        id &= INT64_MAX; /* JSON and YAML tools read it as a signed integer */
    }
    snprintf(text, sizeof(text), "%" PRIu64 "\n", id);
    int rc = kp_node_write_private(path, text, strlen(text), errmsg, errlen);
    if (rc == KP_OK)
        n->node_id = id;
    return rc;
}

static bool dir_empty(const char *path)
{
    DIR *d = opendir(path);
    if (d == NULL)
        return true;
    struct dirent *e;
    bool empty = true;
    while (empty && (e = readdir(d)) != NULL)
        empty = strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0;
    closedir(d);
    return empty;
}

static int load_master_key(struct kp_node *n, const char *dir, bool bootstrap, char *errmsg,
                           size_t errlen)
{
    const char *env = getenv("KEYPLANE_MASTER_KEY");
    char path[4096];
    path_in(path, sizeof(path), dir, "master.key");
    if (n->cfg->master_key_file != NULL)
        return kp_seal_kek_load_file(n->cfg->master_key_file, &n->kek, errmsg, errlen);
    if (env != NULL && env[0] != '\0')
        return kp_seal_kek_from_env(env, &n->kek, errmsg, errlen);
    if (access(path, F_OK) == 0)
        return kp_seal_kek_load_file(path, &n->kek, errmsg, errlen);
    if (!bootstrap) {
        snprintf(errmsg, errlen,
                 "no master key: only a node that starts a new cluster may make one; this "
                 "node joins or restarts, so it needs the cluster's key (set "
                 "master_key_file, --master-key-file or KEYPLANE_MASTER_KEY)");
        return KP_ECONFIG;
    }
    int rc = kp_seal_kek_generate(&n->kek, errmsg, errlen);
    if (rc == KP_OK)
        rc = kp_seal_kek_write_file(n->kek, path, errmsg, errlen);
    if (rc == KP_OK)
        kp_warn("node",
                "generated a new master key in %s: back it up, and give the same key to every "
                "node of this cluster (master_key_file); without it the keys stored in this "
                "cluster cannot be read",
                path);
    return rc;
}

/* previous_master_key_file, else KEYPLANE_PREVIOUS_MASTER_KEY: only while
 * a rotation is in progress. */
static int load_previous_key(struct kp_node *n, char *errmsg, size_t errlen)
{
    const char *env = getenv("KEYPLANE_PREVIOUS_MASTER_KEY");
    int rc = KP_OK;
    if (n->cfg->previous_master_key_file != NULL)
        rc = kp_seal_kek_load_file(n->cfg->previous_master_key_file, &n->prev_kek, errmsg, errlen);
    else if (env != NULL && env[0] != '\0')
        rc = kp_seal_kek_from_env(env, &n->prev_kek, errmsg, errlen);
    if (rc == KP_OK && n->prev_kek != NULL &&
        strcmp(kp_seal_kek_id(n->prev_kek), kp_seal_kek_id(n->kek)) == 0) {
        snprintf(errmsg, errlen,
                 "the previous master key is the same as the master key (id %s): during a "
                 "rotation, master_key_file holds the new key and previous_master_key_file "
                 "the old one",
                 kp_seal_kek_id(n->kek));
        return KP_ECONFIG;
    }
    return rc;
}

static int derive_token(const struct kp_seal_kek *kek, char out[65], char *errmsg, size_t errlen)
{
    uint8_t mac[KP_SEAL_KEK_LEN];
    if (kp_seal_kek_derive(kek, "keyplane internal v1", mac) != KP_OK) {
        snprintf(errmsg, errlen, "cannot derive the cluster secret (OpenSSL failed)");
        return KP_ECONFIG;
    }
    kp_hex_encode(mac, sizeof(mac), out);
    kp_secret_wipe(mac, sizeof(mac));
    kp_log_register_secret(out, strlen(out));
    return KP_OK;
}

/* The cluster secret of node-to-node calls comes from the master key; with
 * a previous key (a rotation in progress) both are accepted, and calls out
 * use the one the cluster's secrets are sealed under (kp_node_out_token). */
static int derive_internal_tokens(struct kp_node *n, char *errmsg, size_t errlen)
{
    int rc = derive_token(n->kek, n->internal_token, errmsg, errlen);
    if (rc == KP_OK && n->prev_kek != NULL)
        rc = derive_token(n->prev_kek, n->internal_token_prev, errmsg, errlen);
    return rc;
}

/* The published view, not the state machine: other threads (the usage
 * shipper) ask too. */
const char *kp_node_out_token(struct kp_node *n)
{
    const char *token = n->internal_token;
    struct kp_view *v = n->prev_kek != NULL ? kp_view_acquire(&n->views) : NULL;
    const struct kp_cluster *c = v != NULL ? kp_view_cluster(v) : NULL;
    if (c != NULL && c->kek_id != NULL && strcmp(c->kek_id, kp_seal_kek_id(n->prev_kek)) == 0)
        token = n->internal_token_prev;
    kp_view_release(v);
    return token;
}

/* The raft address must stay the same across restarts (it is in the Raft
 * configuration of every member). With port 0 (tests), the node picks a
 * free port once and keeps it in DATA_DIR/raft.addr. */
int kp_node_resolve_raft_addr(struct kp_node *n, char *errmsg, size_t errlen)
{
    const char *dir = n->cfg->data_dir;
    const char *want = n->cfg->raft_listen;
    const char *colon = strrchr(want, ':');
    if (colon == NULL || strcmp(colon, ":0") != 0) {
        snprintf(n->raft_addr, sizeof(n->raft_addr), "%s", want);
        return KP_OK;
    }
    char path[4096], text[160] = "";
    path_in(path, sizeof(path), dir, "raft.addr");
    FILE *f = fopen(path, "r");
    if (f != NULL) {
        bool ok = fgets(text, sizeof(text), f) != NULL;
        fclose(f);
        text[strcspn(text, "\n")] = '\0';
        if (ok && text[0] != '\0') {
            snprintf(n->raft_addr, sizeof(n->raft_addr), "%.127s", text);
            return KP_OK;
        }
    }
    struct sockaddr_storage ss;
    if (kp_http_parse_addr(want, &ss, errmsg, errlen) != KP_OK || ss.ss_family != AF_INET) {
        snprintf(errmsg, errlen, "raft_listen %s: the raft listener needs an IPv4 address", want);
        return KP_ECONFIG;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    socklen_t slen = sizeof(*sin);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(fd, (struct sockaddr *)sin, sizeof(*sin)) != 0 ||
        getsockname(fd, (struct sockaddr *)sin, &slen) != 0) {
        snprintf(errmsg, errlen, "raft_listen %s: cannot find a free port: %s", want,
                 strerror(errno));
        if (fd >= 0)
            close(fd);
        return KP_EIO;
    }
    /* Held, not closed: the raft listener binds the same port beside it
     * (both with SO_REUSEADDR, neither listening yet). */
    n->raft_port_fd = fd;
    n->raft_port_held = true;
    snprintf(n->raft_addr, sizeof(n->raft_addr), "%.*s:%u", (int)(colon - want), want,
             (unsigned)ntohs(sin->sin_port));
    snprintf(text, sizeof(text), "%s\n", n->raft_addr);
    return kp_node_write_private(path, text, strlen(text), errmsg, errlen);
}

void kp_node_release_raft_port(struct kp_node *n)
{
    if (n->raft_port_held)
        close(n->raft_port_fd);
    n->raft_port_held = false;
}

/* --- bootstrap: the first commands of a new cluster ---------------------------------- */

static void init_applied(void *arg, int code, const struct kp_fsm_result *res)
{
    struct kp_node *n = arg;
    if (code != KP_OK || res->code != KP_OK) {
        kp_error("node", "bootstrap command %s failed: %s", res ? kp_op_name(res->op) : "?",
                 res ? res->message : kp_err_msg(code));
        n->init_proposed = false; /* try again when leading */
    }
}

static int propose_cmd(struct kp_node *n, struct kp_command *cmd)
{
    char errmsg[256];
    struct kp_buf buf;
    kp_buf_init(&buf);
    cmd->v = KP_COMMAND_VERSION;
    cmd->ts = kp_now_unix_ms();
    cmd->audit.actor = "bootstrap";
    cmd->audit.role = "node";
    cmd->audit.source = "bootstrap";
    int rc = kp_command_encode(cmd, &buf, errmsg, sizeof(errmsg));
    if (rc == KP_OK)
        rc = kp_store_propose(n->store, buf.data, buf.len, init_applied, n);
    kp_buf_free(&buf);
    return rc;
}

static void bootstrap_cluster(struct kp_node *n)
{
    char errmsg[512], path[4096], cluster_id[2 + 24 + 1] = "c-";
    struct kp_cluster cluster = {0};
    struct kp_member self = {0};
    struct kp_token admin = {0};
    char *text = NULL;
    char token_id[KP_TOKEN_ID_SIZE];

    if (kp_random_bytes(cluster.pepper, sizeof(cluster.pepper)) != KP_OK ||
        kp_random_hex(cluster_id + 2, 12) != KP_OK ||
        kp_token_generate(cluster.pepper, &text, token_id, admin.hash) != KP_OK) {
        kp_error("node", "bootstrap: no randomness; will retry");
        return;
    }
    /* The file first: a token committed but never written would leave a
     * cluster nobody can administer. */
    path_in(path, sizeof(path), n->cfg->data_dir, "admin.token");
    size_t tlen = strlen(text);
    text[tlen] = '\n';
    int rc = kp_node_write_private(path, text, tlen + 1, errmsg, sizeof(errmsg));
    text[tlen] = '\0';
    if (rc != KP_OK) {
        kp_error("node", "bootstrap: %s", errmsg);
        kp_token_text_free(text);
        return;
    }
    n->init_proposed = true;
    cluster.e.id = cluster_id;
    cluster.kek_id = (char *)kp_seal_kek_id(n->kek);
    struct kp_command c1 = {.op = KP_OP_INIT_CLUSTER, .body.cluster = &cluster};
    self.e.id = n->cfg->node_name;
    self.node_id = n->node_id;
    self.address = n->raft_addr;
    self.control_address = n->rt->control_addr;
    self.role = KP_MEMBER_VOTER;
    self.meter = strcmp(n->cfg->meter, "no") != 0; /* auto: the first node meters */
    struct kp_command c2 = {.op = KP_OP_PUT_MEMBER, .body.member = &self};
    admin.e.id = token_id;
    admin.name = "bootstrap admin";
    admin.role = "admin";
    admin.tenant = "*";
    struct kp_command c3 = {.op = KP_OP_PUT_TOKEN, .body.token = &admin};
    rc = propose_cmd(n, &c1);
    if (rc == KP_OK)
        rc = propose_cmd(n, &c2);
    if (rc == KP_OK)
        rc = propose_cmd(n, &c3);
    kp_secret_wipe(cluster.pepper, sizeof(cluster.pepper));
    if (rc != KP_OK) {
        kp_error("node", "bootstrap: cannot propose: %s; will retry", kp_err_msg(rc));
        n->init_proposed = false;
        kp_token_text_free(text);
        return;
    }
    /* On stdout, not through the logger: stderr carries JSON log lines
     * whose sink masks kp_ tokens, and this is the one time the token is
     * shown. */
    printf("keyplaned: new cluster %s bootstrapped. First admin token (shown once, also in "
           "%s):\n    %s\n",
           cluster_id, path, text);
    fflush(stdout);
    kp_info("node", "bootstrapped cluster %s; the first admin token is in %s", cluster_id, path);
    kp_token_text_free(text);
}

/* --- joining --------------------------------------------------------------------------- */

static void join_next(struct kp_node *n);
static void join_send(struct kp_node *n);
static void on_change(void *arg);

static void join_answered(void *arg, const struct kp_call_result *r)
{
    struct kp_node *n = arg;
    n->join_inflight = false;
    if (n->stopping)
        return;
    if (r->status == 200 || r->status == 201) {
        if (!n->joined)
            kp_info("node", "joined: %s added this node (%llu) to the cluster", n->join_target,
                    (unsigned long long)n->node_id);
        n->joined = true;
        n->self_record_ok = true; /* the leader recorded our addresses */
        return;
    }
    if (r->status == 401) {
        kp_error("node",
                 "%s refused this node: its master key is not the cluster's. Start it with "
                 "the cluster's master key (master_key_file or KEYPLANE_MASTER_KEY)",
                 n->join_target);
        kp_runtime_fail(n->rt, 1, "join refused: wrong master key");
        return;
    }
    if (r->status == 0)
        kp_warn("node", "join: cannot reach %s: %s; trying again", n->join_target, r->error);
    else
        kp_warn("node", "join: %s answered %ld: %.200s; trying again", n->join_target, r->status,
                r->body.data ? r->body.data : "");
}

/* The data directory belongs to another cluster than the one this node is
 * told to be in: nothing good comes of running (its raft state, spool and
 * meter data are another cluster's), and restarting will not help. */
static void wrong_cluster(struct kp_node *n, const char *theirs, const char *where)
{
    kp_error("node",
             "data directory %s belongs to cluster %s, but %s is cluster %s: a data directory "
             "serves one cluster for its whole life. To join %s, start this node with a new, "
             "empty data directory; to keep serving %s, start it without that join address",
             n->cfg->data_dir, n->dir_cluster, where, theirs, theirs, n->dir_cluster);
    n->stopping = true;
    kp_runtime_fail(n->rt, 2, "data directory of another cluster");
}

/* GET /internal/v1/raft on a join address: which cluster is it? */
static void cluster_answered(void *arg, const struct kp_call_result *r)
{
    struct kp_node *n = arg;
    n->join_inflight = false;
    if (n->stopping)
        return;
    json_t *v = r->status == 200 ? json_loadb(r->body.data, r->body.len, 0, NULL) : NULL;
    const char *id = json_string_value(json_object_get(v, "cluster_id"));
    if (v != NULL && id != NULL && strcmp(id, n->dir_cluster) != 0) {
        char where[300];
        snprintf(where, sizeof(where), "the join address %s", n->join_target);
        wrong_cluster(n, id, where);
    } else if (v != NULL && id != NULL) {
        n->cluster_checked = true;
        kp_info("node", "%s is in cluster %s, as this data directory", n->join_target, id);
    } else if (r->status == 401) {
        /* Another master key there. A joining node hears it again from the
         * join itself, and a member's own settings check its key. */
        n->cluster_checked = true;
        kp_warn("node", "%s refused this node's cluster secret: it has another master key",
                n->join_target);
    } else if (r->status == 0 && n->fresh) {
        kp_warn("node", "cannot reach %s to check its cluster: %s; trying again", n->join_target,
                r->error);
    } else if (r->status == 0) {
        /* A restarting member does not need its join addresses (join_next
         * gives up on them once it is ready). */
        kp_info("node", "cannot reach %s to check its cluster: %s", n->join_target, r->error);
    }
    json_decref(v);
    if (n->cluster_checked)
        join_next(n);
}

static void cluster_check_send(struct kp_node *n)
{
    char url[512], auth[128];
    kp_node_peer_url(url, sizeof(url), n->join_target, "/internal/v1/raft");
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", kp_node_out_token(n));
    const char *hdrs[] = {auth, NULL};
    if (kp_call_start_peer(n->rt->main_loop, "GET", url, hdrs, NULL, 0, 5000, cluster_answered,
                           n) == KP_OK)
        n->join_inflight = true;
    kp_secret_wipe(auth, sizeof(auth));
}

static void join_tick(uv_timer_t *t)
{
    join_next(t->data);
}

/* The join timer's work: first, when this data directory already belongs
 * to a cluster, make sure the join addresses are that cluster; then, for a
 * node with nothing on disk, ask to be added. */
static void join_next(struct kp_node *n)
{
    bool check = n->dir_cluster[0] != '\0' && !n->cluster_checked;
    /* A member that restarted ignores join; when none of its join
     * addresses answers (they may be long gone) while its own registry
     * already confirms its data directory's cluster, stop asking. */
    if (check && !n->fresh && atomic_load(&n->rt->ready) && n->join_attempt >= 3) {
        kp_info("node",
                "join addresses not reachable: their cluster is not checked (this node's "
                "registry is cluster %s, as its data directory)",
                n->dir_cluster);
        n->cluster_checked = true;
        check = false;
    }
    if (!check && (n->joined || !n->fresh)) {
        if (n->join_timer_open)
            uv_timer_stop(&n->join_timer); /* nothing left to do */
        return;
    }
    if (n->join_inflight || n->stopping)
        return;
    /* Pick the next address of the comma-separated list. */
    const char *list = n->cfg->join;
    size_t count = 1;
    for (const char *p = list; *p; p++)
        count += *p == ',';
    size_t pick = n->join_attempt++ % count;
    const char *start = list;
    for (size_t i = 0; i < pick; i++)
        start = strchr(start, ',') + 1;
    const char *end = strchr(start, ',');
    size_t len = end ? (size_t)(end - start) : strlen(start);
    snprintf(n->join_target, sizeof(n->join_target), "%.*s", (int)len, start);
    if (check)
        cluster_check_send(n);
    else
        join_send(n);
}

/* Ask n->join_target to add this node (or, when it is a member already, to
 * bring its member record up to date). */
static void join_send(struct kp_node *n)
{
    char url[512], auth[128];
    kp_node_peer_url(url, sizeof(url), n->join_target, "/internal/v1/join");
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", kp_node_out_token(n));
    const char *hdrs[] = {auth, "Content-Type: application/json", NULL};
    json_t *body = json_pack("{s:I,s:s,s:s,s:s,s:s}", "node_id", (json_int_t)n->node_id, "name",
                             n->cfg->node_name, "address", n->raft_addr, "control_address",
                             n->rt->control_addr, "role", n->cfg->raft_role);
    /* meter: auto says nothing, so a restart keeps what the record holds
     * (a bootstrapping node's yes, or an operator's choice); a new member
     * is then not a meter. */
    if (body != NULL && strcmp(n->cfg->meter, "auto") != 0)
        json_object_set_new(body, "meter", json_boolean(strcmp(n->cfg->meter, "yes") == 0));
    size_t blen = 0;
    char *text = body ? kp_json_dumps(body, &blen) : NULL;
    json_decref(body);
    if (text != NULL && kp_call_start_peer(n->rt->main_loop, "POST", url, hdrs, text, blen, 30000,
                                           join_answered, n) == KP_OK)
        n->join_inflight = true;
    kp_free(text);
    kp_secret_wipe(auth, sizeof(auth));
}

/* --- readiness: caught up with the leader ------------------------------------------------
 *
 * A node that starts (or restarts) is not ready when it merely holds the
 * cluster settings: its registry may still miss the entries committed
 * while it was away (a token created meanwhile, a key revoked), and a load
 * balancer that sent it calls then would see them refused or, worse,
 * served against an old registry. So it asks the leader once for its
 * commit index and turns ready when it has applied that far. The leader
 * itself needs no one. */

static void catch_answered(void *arg, const struct kp_call_result *r)
{
    struct kp_node *n = arg;
    n->catch_inflight = false;
    if (n->stopping)
        return;
    json_t *v = r->status == 200 ? json_loadb(r->body.data, r->body.len, 0, NULL) : NULL;
    json_t *commit = json_object_get(v, "commit_index");
    if (json_is_integer(commit)) {
        n->catch_target = (uint64_t)json_integer_value(commit);
        n->catch_known = true;
        on_change(n);
    }
    json_decref(v);
}

/* True once this node has applied what the leader had committed. Raft's
 * applied index, not the state machine's: a commit index that ends in a
 * barrier (the canary and alert loops take one when they start leading)
 * is never reached by the commands alone. */
static bool caught_up(struct kp_node *n)
{
    uint64_t applied = kp_store_applied_index(n->store), leader;
    char addr[256], control[256], url[512], auth[128];
    if (!n->catch_known && kp_store_is_leader(n->store)) {
        struct kp_store_status st;
        if (kp_store_status(n->store, &st) == KP_OK) {
            n->catch_target = st.commit_index;
            n->catch_known = true;
        }
        kp_store_status_free(&st);
    }
    if (n->catch_known)
        return applied >= n->catch_target;
    int64_t now = kp_now_unix_ms();
    if (n->catch_inflight || now - n->catch_tried_ms < 250 ||
        kp_store_leader(n->store, &leader, addr, sizeof(addr)) != KP_OK ||
        !kp_node_member_control(n, leader, control, sizeof(control)))
        return false;
    n->catch_tried_ms = now;
    kp_node_peer_url(url, sizeof(url), control, "/internal/v1/raft");
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", kp_node_out_token(n));
    const char *hdrs[] = {auth, NULL};
    if (kp_call_start_peer(n->rt->main_loop, "GET", url, hdrs, NULL, 0, 2000, catch_answered, n) ==
        KP_OK)
        n->catch_inflight = true;
    kp_secret_wipe(auth, sizeof(auth));
    return false;
}

static void ready_tick(uv_timer_t *t)
{
    on_change(t->data);
}

static void ready_timer_close(struct kp_node *n)
{
    if (!n->ready_timer_open)
        return;
    n->ready_timer_open = false;
    uv_close((uv_handle_t *)&n->ready_timer, NULL);
}

/* --- watching the registry ------------------------------------------------------------- */

/* Other nodes find this one's control listener (for forwarding and status)
 * in its member record. When it is missing or stale (the node came back on
 * another control address), ask the leader, through this node's own
 * control listener which forwards it, to record the current one: a join of
 * a node already in the configuration only updates its record. */
static void check_own_record(struct kp_node *n)
{
    char control[256];
    if (n->join_inflight || n->self_record_ok)
        return;
    if (kp_node_member_control(n, n->node_id, control, sizeof(control)) &&
        strcmp(control, n->rt->control_addr) == 0) {
        n->self_record_ok = true;
        return;
    }
    uint64_t leader;
    char addr[256];
    int64_t now = kp_now_unix_ms();
    if (now - n->record_tried_ms < 5000 ||
        kp_store_leader(n->store, &leader, addr, sizeof(addr)) != KP_OK)
        return;
    n->record_tried_ms = now;
    snprintf(n->join_target, sizeof(n->join_target), "%s", n->rt->control_addr);
    join_send(n);
}

void kp_node_check(struct kp_node *n)
{
    on_change(n);
}

/* Whether the master key is the cluster's (or its previous one during a
 * rotation); stops the node when it is neither. */
static bool key_matches(struct kp_node *n, const struct kp_cluster *c)
{
    bool current = c->kek_id == NULL || strcmp(c->kek_id, kp_seal_kek_id(n->kek)) == 0;
    bool previous =
        !current && n->prev_kek != NULL && strcmp(c->kek_id, kp_seal_kek_id(n->prev_kek)) == 0;
    if (!current && !previous) {
        kp_error("node",
                 "wrong master key: cluster %s seals its keys under master key %s, this node "
                 "has %s%s%s. Start it with the cluster's master key",
                 c->e.id, c->kek_id, kp_seal_kek_id(n->kek),
                 n->prev_kek ? " and previous key " : "",
                 n->prev_kek ? kp_seal_kek_id(n->prev_kek) : "");
        n->stopping = true;
        kp_runtime_fail(n->rt, 1, "wrong master key");
        return false;
    }
    if (previous && !n->rotation_warned) {
        n->rotation_warned = true;
        kp_warn("node",
                "master key rotation in progress: the cluster's secrets are still sealed under "
                "the previous key %s; once every node holds the new key %s, run `clusterctl "
                "secrets rewrap`",
                c->kek_id, kp_seal_kek_id(n->kek));
    }
    return true;
}

/* The data directory remembers its cluster; a node whose registry is
 * another cluster's stops. */
static bool cluster_matches(struct kp_node *n, const struct kp_cluster *c)
{
    char errmsg[512];
    if (n->dir_cluster[0] != '\0') {
        if (strcmp(n->dir_cluster, c->e.id) == 0)
            return true;
        wrong_cluster(n, c->e.id, "this node's registry");
        return false;
    }
    if (kp_datadir_write_cluster(n->cfg->data_dir, c->e.id, errmsg, sizeof(errmsg)) != KP_OK) {
        kp_warn("node", "%s; will try again", errmsg);
        return true;
    }
    snprintf(n->dir_cluster, sizeof(n->dir_cluster), "%s", c->e.id);
    n->cluster_checked = true;
    return true;
}

/* A member the leader removed is sent nothing any more: its registry ages
 * while it keeps serving. The leader tells it (cluster.c), and from then on
 * /readyz says so; a removed node comes back only as a new member, with an
 * empty data directory. (Its own Raft configuration is no guide: a node
 * that joins restores a snapshot whose configuration predates it.) */
void kp_node_removed(struct kp_node *n)
{
    if (n->removed)
        return;
    n->removed = true;
    kp_warn("node",
            "this node (%llu) was removed from the cluster's Raft configuration: "
            "/readyz answers 503 \"removed\"; stop it (SIGTERM)",
            (unsigned long long)n->node_id);
}

static void on_change(void *arg)
{
    struct kp_node *n = arg;
    if (n->stopping)
        return;
    const struct kp_cluster *c = kp_fsm_cluster(kp_store_fsm(n->store));
    if (c == NULL) {
        /* Only a cluster that never initialised has a leader without
         * settings: the first start of a bootstrapping node, or one whose
         * first attempt failed (even across a restart). */
        if (!n->init_proposed && kp_store_is_leader(n->store))
            bootstrap_cluster(n);
        return;
    }
    if (!key_matches(n, c) || !cluster_matches(n, c))
        return;
    if (!atomic_load(&n->rt->ready) && caught_up(n)) {
        kp_info("node", "ready: cluster %s, registry at index %llu", c->e.id,
                (unsigned long long)kp_fsm_applied_index(kp_store_fsm(n->store)));
        atomic_store(&n->rt->ready, true);
        ready_timer_close(n);
    }
    n->joined = true;
    check_own_record(n);
}

/* --- start and stop -------------------------------------------------------------------- */

int kp_node_prepare(struct kp_node *n, char *errmsg, size_t errlen)
{
    char raft_dir[4096];
    const char *dir = n->cfg->data_dir;
    int rc = kp_node_load_id(n, errmsg, errlen);
    if (rc != KP_OK)
        return rc;
    path_in(raft_dir, sizeof(raft_dir), dir, "raft");
    n->fresh = dir_empty(raft_dir);
    bool restore = n->fresh && n->cfg->restore != NULL;
    n->bootstrap = n->fresh && n->cfg->join == NULL && !restore;
    if (n->cfg->restore != NULL && n->cfg->join != NULL) {
        snprintf(errmsg, errlen,
                 "restore and join exclude each other: restore starts a new cluster from a "
                 "snapshot, join adds this node to a running one");
        return KP_ECONFIG;
    }
    rc = kp_datadir_read_cluster(dir, n->dir_cluster, sizeof(n->dir_cluster), errmsg, errlen);
    if (rc != KP_OK)
        return rc;
    if (n->dir_cluster[0] != '\0' && (n->bootstrap || restore)) {
        snprintf(errmsg, errlen,
                 "data directory %s belongs to cluster %s (its cluster.json) but holds no Raft "
                 "state: a new cluster needs a new, empty data directory",
                 dir, n->dir_cluster);
        return KP_ECONFIG;
    }
    n->cluster_checked = n->dir_cluster[0] == '\0' || n->cfg->join == NULL;
    rc = load_master_key(n, dir, n->bootstrap, errmsg, errlen);
    if (rc == KP_ECONFIG && restore && n->kek == NULL)
        snprintf(errmsg, errlen,
                 "no master key: a restore needs the master key the snapshot's secrets are "
                 "sealed under (set master_key_file, --master-key-file or KEYPLANE_MASTER_KEY)");
    if (rc == KP_OK)
        rc = load_previous_key(n, errmsg, errlen);
    if (rc == KP_OK)
        rc = derive_internal_tokens(n, errmsg, errlen);
    if (rc == KP_OK)
        rc = kp_node_resolve_raft_addr(n, errmsg, errlen);
    if (rc == KP_OK && restore) {
        rc = kp_node_restore(n, raft_dir, errmsg, errlen);
        n->restored = rc == KP_OK;
    } else if (rc == KP_OK && n->cfg->restore != NULL) {
        kp_info("node", "restore %s ignored: %s already holds this node's Raft state",
                n->cfg->restore, raft_dir);
    }
    return rc;
}

void kp_node_store_identity(const struct kp_node *n, const char *raft_dir,
                            struct kp_store_config *sc)
{
    *sc = (struct kp_store_config){
        .dir = raft_dir,
        .node_id = n->node_id,
        .address = n->raft_addr,
        .tls_cert_file = n->cfg->tls_cert_file,
        .tls_key_file = n->cfg->tls_key_file,
        .tls_ca_file = n->cfg->tls_ca_file,
    };
}

int kp_node_start(struct kp_node *n, char *errmsg, size_t errlen)
{
    char raft_dir[4096];
    struct kp_store_config sc;
    path_in(raft_dir, sizeof(raft_dir), n->cfg->data_dir, "raft");
    kp_node_store_identity(n, raft_dir, &sc);
    sc.bootstrap = n->bootstrap;
    sc.snapshot_threshold = (unsigned)n->cfg->snapshot_threshold;
    sc.snapshot_trailing = (unsigned)n->cfg->snapshot_trailing;
    sc.views = &n->views;
    sc.election_timeout_ms = (unsigned)n->cfg->election_timeout_ms;
    sc.heartbeat_timeout_ms = (unsigned)n->cfg->heartbeat_timeout_ms;
    sc.segment_bytes = (size_t)n->cfg->raft_segment_bytes;
    sc.on_change = on_change;
    sc.arg = n;
    int rc = kp_store_open(&n->store, n->rt->main_loop, &sc, errmsg, errlen);
    kp_node_release_raft_port(n); /* the listener has it now, or failed */
    if (rc != KP_OK)
        return rc;
    kp_info("node", "node %llu (%s), raft %s%s, master key %s, %s", (unsigned long long)n->node_id,
            n->cfg->node_name, n->raft_addr, sc.tls_cert_file != NULL ? " over mutual TLS" : "",
            kp_seal_kek_id(n->kek),
            n->bootstrap  ? "bootstrapping a new cluster"
            : n->restored ? "starting a new cluster from a snapshot"
            : n->fresh    ? "joining a cluster"
                          : "restarting");
    kp_sweeper_start(n);
    uv_timer_init(n->rt->main_loop, &n->ready_timer);
    n->ready_timer.data = n;
    n->ready_timer_open = true;
    uv_timer_start(&n->ready_timer, ready_tick, 250, 250);
    if ((n->fresh && !n->bootstrap && !n->restored) || !n->cluster_checked) {
        uv_timer_init(n->rt->main_loop, &n->join_timer);
        n->join_timer.data = n;
        n->join_timer_open = true;
        uv_timer_start(&n->join_timer, join_tick, 0, 1000);
    }
    return KP_OK;
}

/* Every grant given back (or the wait over): close the store. */
static void lease_stopped(struct kp_node *n)
{
    struct kp_store *s = n->store;
    n->store_closing = true;
    kp_store_close(s, NULL, NULL);
}

static void handed_over(void *arg, int code, const char *message)
{
    struct kp_node *n = arg;
    if (code == KP_OK)
        kp_info("node", "drain: %s", message);
    else if (n->stopping)
        kp_info("node", "drain: stopped before leadership moved (drain_delay_ms is shorter than "
                        "an election); the others elect a leader after the election timeout");
    else
        kp_warn("node",
                "drain: leadership not handed over (%s); the others elect a leader "
                "after the election timeout",
                message ? message : kp_err_msg(code));
}

void kp_node_draining(void *arg)
{
    struct kp_node *n = arg;
    /* A leader that stops leaves the cluster without one for an election
     * timeout; handing over first keeps writes going. */
    if (n->store == NULL || n->stopping || !kp_store_is_leader(n->store))
        return;
    int rc = kp_store_transfer(n->store, 0, handed_over, n);
    if (rc != KP_OK && rc != KP_ENOENT)
        kp_warn("node", "drain: cannot hand over leadership: %s", kp_err_msg(rc));
}

void kp_node_stop(void *arg)
{
    struct kp_node *n = arg;
    n->stopping = true;
    if (n->join_timer_open) {
        n->join_timer_open = false;
        uv_close((uv_handle_t *)&n->join_timer, NULL);
    }
    ready_timer_close(n);
    kp_sweeper_stop(n);
    kp_metering_stop_timer(n);
    kp_health_queue_close(n->health); /* freed by main once the loop closed it */
    kp_lease_stop(n, lease_stopped);
}

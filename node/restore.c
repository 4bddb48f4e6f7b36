/* Starting over: a new cluster from a registry snapshot (restore), and a
 * stopped node made the only voter of its cluster after a majority was lost
 * (--recover). docs/operations.md gives the procedures.
 *
 * Restore runs in kp_node_prepare, before the raft store opens, on a data
 * directory whose raft directory is empty:
 *
 *   read FILE -> kp_fsm_restore (every check a snapshot gets from a peer)
 *     -> the snapshot's cluster seals its secrets under this node's master
 *        key (else: stop, naming both key ids)
 *     -> kp_fsm_rebase: a new cluster id, this node the only member, one
 *        audit entry
 *     -> kp_store_seed: Raft's first snapshot, this node the only voter
 *     -> DATA_DIR/cluster.json
 *
 * The store then opens as on a restart: it restores that snapshot and this
 * node leads at once. Other nodes join it as they would join any cluster.
 * A failure before the seed leaves the data directory as it was; a failed
 * seed may leave files in raft/ (the message says to empty it).
 *
 * Recovery runs instead of the node (keyplaned --recover): it takes the
 * data directory's lock, so a running node makes it fail, and appends a
 * configuration of this node alone to the Raft log (kp_store_recover). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "node.h"

/* The whole file, up to 1 GiB (a snapshot's raw size is capped at that
 * too). */
static int read_file(const char *path, struct kp_buf *out, char *errmsg, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(errmsg, errlen, "restore: cannot open %s: %s", path, strerror(errno));
        return KP_ECONFIG;
    }
    char chunk[65536];
    size_t n;
    int rc = KP_OK;
    while (rc == KP_OK && (n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        if (out->len + n > ((size_t)1 << 30))
            rc = KP_ETOOBIG;
        else if (kp_buf_append(out, chunk, n) != 0)
            rc = KP_ENOMEM;
    }
    if (rc == KP_OK && ferror(f))
        rc = KP_EIO;
    fclose(f);
    if (rc != KP_OK)
        snprintf(errmsg, errlen, "restore: cannot read %s: %s", path,
                 rc == KP_ETOOBIG ? "larger than 1 GiB" : kp_err_msg(rc));
    return rc == KP_EIO ? KP_ECONFIG : rc;
}

/* Whether the snapshot's secrets open under this node's master key. */
static int check_key(struct kp_node *n, const struct kp_cluster *c, char *errmsg, size_t errlen)
{
    if (c->kek_id == NULL || strcmp(c->kek_id, kp_seal_kek_id(n->kek)) == 0)
        return KP_OK;
    snprintf(errmsg, errlen,
             "restore: the snapshot of cluster %s seals its keys under master key %s, but this "
             "node has master key %s: start it with the master key of the cluster the snapshot "
             "was saved from",
             c->e.id, c->kek_id, kp_seal_kek_id(n->kek));
    return KP_ECONFIG;
}

static void self_member(struct kp_node *n, struct kp_member *m, char *control, size_t len)
{
    memset(m, 0, sizeof(*m));
    m->e.id = n->cfg->node_name;
    m->node_id = n->node_id;
    m->address = n->raft_addr;
    /* With port 0 the control address is known only once bound: the node
     * records it then, as any node whose record lacks it (lifecycle.c). */
    const char *ctl = n->cfg->control_listen;
    size_t cl = strlen(ctl);
    if (cl < 2 || strcmp(ctl + cl - 2, ":0") != 0)
        snprintf(control, len, "%s", ctl);
    m->control_address = control[0] ? control : NULL;
    m->role = KP_MEMBER_VOTER;
    m->meter = strcmp(n->cfg->meter, "no") != 0; /* as a bootstrapping node */
}

int kp_node_restore(struct kp_node *n, const char *raft_dir, char *errmsg, size_t errlen)
{
    char why[512], id[2 + 24 + 1] = "c-", old[160], actor[200], control[260] = "";
    struct kp_buf file, snap;
    struct kp_member self;
    kp_buf_init(&file);
    kp_buf_init(&snap);
    struct kp_fsm *fsm = kp_fsm_new();
    int rc = fsm != NULL ? read_file(n->cfg->restore, &file, errmsg, errlen) : KP_ENOMEM;
    if (rc == KP_OK && kp_fsm_restore(fsm, file.data, file.len, 0, why, sizeof(why)) != KP_OK) {
        snprintf(errmsg, errlen, "restore: %s is not a usable keyplane snapshot: %s",
                 n->cfg->restore, why);
        rc = KP_ECONFIG;
    }
    const struct kp_cluster *c = rc == KP_OK ? kp_fsm_cluster(fsm) : NULL;
    if (rc == KP_OK && c == NULL) {
        snprintf(errmsg, errlen,
                 "restore: %s holds no cluster settings (it was saved before "
                 "its cluster was initialised)",
                 n->cfg->restore);
        rc = KP_ECONFIG;
    }
    if (rc == KP_OK)
        rc = check_key(n, c, errmsg, errlen);
    uint64_t from_index = fsm != NULL ? kp_fsm_applied_index(fsm) : 0;
    if (rc == KP_OK) {
        snprintf(old, sizeof(old), "%s", c->e.id);
        if (kp_random_hex(id + 2, 12) != KP_OK) {
            snprintf(errmsg, errlen, "restore: no randomness for a cluster id");
            rc = KP_EIO;
        }
    }
    if (rc == KP_OK) {
        self_member(n, &self, control, sizeof(control));
        snprintf(actor, sizeof(actor), "node:%s", n->cfg->node_name);
        rc = kp_fsm_rebase(fsm, id, &self, kp_now_unix_ms(), actor, why, sizeof(why));
        if (rc != KP_OK)
            snprintf(errmsg, errlen, "restore: %s", why);
    }
    if (rc == KP_OK && (rc = kp_fsm_snapshot(fsm, &snap, why, sizeof(why))) != KP_OK)
        snprintf(errmsg, errlen, "restore: %s", why);
    if (rc == KP_OK) {
        struct kp_store_config sc;
        kp_node_store_identity(n, raft_dir, &sc);
        rc = kp_store_seed(&sc, snap.data, snap.len, kp_fsm_applied_index(fsm), why, sizeof(why));
        if (rc != KP_OK)
            snprintf(errmsg, errlen, "restore: %s (empty %s before trying again)", why, raft_dir);
    }
    if (rc == KP_OK &&
        (rc = kp_datadir_write_cluster(n->cfg->data_dir, id, errmsg, errlen)) == KP_OK) {
        snprintf(n->dir_cluster, sizeof(n->dir_cluster), "%s", id);
        kp_info("node",
                "restore: new cluster %s from %s, a snapshot of cluster %s at index %" PRIu64
                ": %zu keys, %zu tokens, %zu policies; this node is its only member",
                id, n->cfg->restore, old, from_index, kp_fsm_count(fsm, KP_KIND_KEY),
                kp_fsm_count(fsm, KP_KIND_TOKEN), kp_fsm_count(fsm, KP_KIND_POLICY));
    }
    kp_fsm_free(fsm);
    kp_secret_wipe(file.data, file.len); /* the pepper and sealed secrets */
    kp_buf_free(&file);
    kp_secret_wipe(snap.data, snap.len);
    kp_buf_free(&snap);
    return rc;
}

int kp_node_recover(struct kp_config *cfg, char *errmsg, size_t errlen)
{
    char raft_dir[4200], id_path[4200], why[512];
    struct kp_datadir dd;
    struct stat sb;
    struct kp_node n = {.cfg = cfg};
    snprintf(raft_dir, sizeof(raft_dir), "%s/raft", cfg->data_dir);
    snprintf(id_path, sizeof(id_path), "%s/node.id", cfg->data_dir);
    if (stat(raft_dir, &sb) != 0 || stat(id_path, &sb) != 0) {
        snprintf(errmsg, errlen,
                 "recover: %s holds no Raft state (or no node.id): nothing to recover",
                 cfg->data_dir);
        return KP_ECONFIG;
    }
    int rc = kp_datadir_open(&dd, cfg->data_dir, errmsg, errlen);
    if (rc != KP_OK)
        return rc;
    rc = kp_node_load_id(&n, errmsg, errlen);
    if (rc == KP_OK)
        rc = kp_node_resolve_raft_addr(&n, errmsg, errlen);
    if (rc == KP_OK) {
        struct kp_store_config sc;
        kp_node_store_identity(&n, raft_dir, &sc);
        rc = kp_store_recover(&sc, why, sizeof(why));
        kp_node_release_raft_port(&n);
        if (rc != KP_OK)
            snprintf(errmsg, errlen, "recover: %s", why);
    }
    if (rc == KP_OK)
        kp_info("node",
                "recover: node %" PRIu64 " (%s, raft %s) is now the only voter of its cluster. "
                "Start it as usual; then remove the lost members (clusterctl members remove "
                "NAME) and add new nodes with an empty data directory and join",
                n.node_id, cfg->node_name, n.raft_addr);
    kp_datadir_close(&dd);
    return rc;
}

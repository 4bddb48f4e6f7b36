/* A new cluster from another cluster's snapshot (docs/operations.md,
 * "Snapshots: save and restore").
 *
 * A saved snapshot holds everything a cluster knows: providers, keys with
 * their sealed secrets, tokens, policies, budget state, the audit chain and
 * the cluster settings (id, token pepper, key id). A node restoring it
 * starts a new cluster, so three things change before the state becomes
 * Raft's first snapshot there:
 *
 *   - the cluster id: the new cluster is another Raft group, and a data
 *     directory of the old one must not be mistaken for one of the new
 *     (node/lifecycle.c checks DATA_DIR/cluster.json against it). The
 *     pepper and the key id stay: tokens still verify, secrets still open
 *     under the same master key;
 *   - the members: the old ones' addresses mean nothing in the new
 *     cluster. Each is removed and the restoring node is the only member;
 *   - the audit chain gets one entry naming the old cluster, its snapshot
 *     index and its members.
 *
 * Members and the audit entry go through kp_fsm_apply as ordinary commands
 * (remove_member, put_member, audit_only), so they are checked and audited
 * like any other. The id has no command (init_cluster sets it once and
 * refuses after), so it is changed here, on a private state machine that no
 * view shares yet. */
#include "raftstore/internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static int apply_cmd(struct kp_fsm *fsm, struct kp_command *cmd, char *errmsg, size_t errlen)
{
    struct kp_buf buf;
    struct kp_fsm_result res;
    kp_buf_init(&buf);
    int rc = kp_command_encode(cmd, &buf, errmsg, errlen);
    if (rc == KP_OK)
        rc = kp_fsm_apply(fsm, kp_fsm_applied_index(fsm) + 1, buf.data, buf.len, &res);
    kp_buf_free(&buf);
    if (rc == KP_OK && res.code != KP_OK) {
        snprintf(errmsg, errlen, "%s refused: %s", kp_op_name(cmd->op), res.message);
        rc = res.code;
    } else if (rc == KP_ENOMEM) {
        snprintf(errmsg, errlen, "out of memory");
    }
    return rc;
}

static int rename_cluster(struct kp_fsm *fsm, const char *id, int64_t ts)
{
    struct kp_cluster *old = fsm->st.cluster;
    struct kp_cluster *c = (struct kp_cluster *)kp_store__entity_clone(&old->e);
    char *nid = kp_strdup(id);
    if (c == NULL || nid == NULL) {
        kp_free(nid);
        if (c != NULL)
            kp_store__entity_unref(&c->e);
        return KP_ENOMEM;
    }
    kp_free(c->e.id);
    c->e.id = nid;
    c->e.version = old->e.version + 1;
    c->e.updated_ms = ts;
    fsm->st.cluster = c;
    kp_store__entity_unref(&old->e);
    return KP_OK;
}

int kp_fsm_rebase(struct kp_fsm *fsm, const char *cluster_id, const struct kp_member *self,
                  int64_t ts, const char *actor, char *errmsg, size_t errlen)
{
    const struct kp_cluster *c = kp_fsm_cluster(fsm);
    if (c == NULL) {
        snprintf(errmsg, errlen,
                 "the snapshot holds no cluster settings (it was taken before "
                 "its cluster was initialised)");
        return KP_EINVAL;
    }
    char result[512], old_id[160];
    uint64_t old_index = kp_fsm_applied_index(fsm);
    snprintf(old_id, sizeof(old_id), "%s", c->e.id);
    int n = snprintf(
        result, sizeof(result),
        "ok (restored from a snapshot of cluster %s at index %" PRIu64 "; members before:", old_id,
        old_index);
    struct kp_entity **members;
    size_t nmembers;
    if (kp_store__table_sorted(fsm->st.tables[KP_KIND_MEMBER], &members, &nmembers) != KP_OK) {
        snprintf(errmsg, errlen, "out of memory");
        return KP_ENOMEM;
    }
    /* Names first: the entities go away with their records. */
    for (size_t i = 0; i < nmembers && n > 0 && (size_t)n < sizeof(result); i++)
        n +=
            snprintf(result + n, sizeof(result) - (size_t)n, "%s %s", i ? "," : "", members[i]->id);
    if (n > 0 && (size_t)n < sizeof(result))
        snprintf(result + n, sizeof(result) - (size_t)n, "%s)", nmembers ? "" : " none");
    kp_store__utf8_trim(result);

    struct kp_command cmd = {.v = KP_COMMAND_VERSION, .ts = ts};
    cmd.audit.actor = (char *)actor;
    cmd.audit.role = "node";
    cmd.audit.source = "restore";
    /* The ids are copied: each removal drops the entity that holds one. */
    char **ids = kp_calloc(nmembers ? nmembers : 1, sizeof(*ids));
    int rc = ids != NULL ? KP_OK : KP_ENOMEM;
    for (size_t i = 0; i < nmembers && rc == KP_OK; i++)
        if ((ids[i] = kp_strdup(members[i]->id)) == NULL)
            rc = KP_ENOMEM;
    kp_free(members); /* the table holds the references */
    if (rc != KP_OK)
        snprintf(errmsg, errlen, "out of memory");
    for (size_t i = 0; i < nmembers && rc == KP_OK; i++) {
        struct kp_cmd_target t = {ids[i]};
        cmd.op = KP_OP_REMOVE_MEMBER;
        cmd.body.target = &t;
        rc = apply_cmd(fsm, &cmd, errmsg, errlen);
    }
    for (size_t i = 0; ids != NULL && i < nmembers; i++)
        kp_free(ids[i]);
    kp_free(ids);
    if (rc == KP_OK) {
        struct kp_member m = *self;
        cmd.op = KP_OP_PUT_MEMBER;
        cmd.body.member = &m;
        rc = apply_cmd(fsm, &cmd, errmsg, errlen);
    }
    if (rc == KP_OK && (rc = rename_cluster(fsm, cluster_id, ts)) != KP_OK)
        snprintf(errmsg, errlen, "out of memory");
    if (rc == KP_OK) {
        struct kp_cmd_audit_only a = {"restore_cluster", (char *)cluster_id, result};
        cmd.op = KP_OP_AUDIT_ONLY;
        cmd.body.audit_only = &a;
        rc = apply_cmd(fsm, &cmd, errmsg, errlen);
    }
    return rc;
}

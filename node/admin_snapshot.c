/* GET /admin/v1/snapshot: the registry as one snapshot file, for backups
 * and for starting a new cluster from it (keyplaned --restore,
 * docs/operations.md).
 *
 * The bytes are the state machine's own snapshot (kp_fsm_snapshot,
 * docs/registry.md): the format Raft ships between nodes, self-checking
 * (a SHA-256 in its header covers the rest). It holds everything the
 * cluster knows, sealed provider secrets and the token pepper included, so
 * only admin tokens may take one, and every download is in the audit chain.
 *
 * The leader answers: it proposes the audit entry (snapshot_save, target
 * the cluster id) and takes the snapshot once that entry applied, so the
 * file holds every write committed before the request, and its own audit
 * entry. A follower forwards the request there. The answer carries
 *   X-Keyplane-Snapshot-Sha256   hex SHA-256 of the body
 *   X-Keyplane-Snapshot-Index    the applied index it was taken at
 *   X-Keyplane-Cluster-Id        the cluster it is from
 *   X-Keyplane-Kek-Id            the master key its secrets are sealed under
 * and is taken on the main loop, like Raft's own snapshots (about 170 ms
 * for 100,000 keys). */
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

#include "admin_internal.h"

static void snapshot_answer(struct kp_admin_req *r)
{
    const struct kp_fsm *fsm = kp_admin__fsm(r);
    const struct kp_cluster *c = kp_fsm_cluster(fsm);
    struct kp_buf out;
    char errmsg[256], sum_hex[65], index[24], name[160];
    uint8_t sum[32];
    kp_buf_init(&out);
    if (kp_fsm_snapshot(fsm, &out, errmsg, sizeof(errmsg)) != KP_OK ||
        EVP_Digest(out.data, out.len, sum, NULL, EVP_sha256(), NULL) != 1) {
        kp_secret_wipe(out.data, out.len);
        kp_buf_free(&out);
        kp_admin__oom(r);
        return;
    }
    kp_hex_encode(sum, sizeof(sum), sum_hex);
    snprintf(index, sizeof(index), "%llu", (unsigned long long)kp_fsm_applied_index(fsm));
    snprintf(name, sizeof(name), "attachment; filename=\"keyplane-%s-%s.snap\"", c->e.id, index);
    struct kp_http_header h[] = {
        KP_HTTP_HEADER("X-Request-Id", r->rid),
        KP_HTTP_HEADER("Content-Type", "application/octet-stream"),
        KP_HTTP_HEADER("Content-Disposition", name),
        KP_HTTP_HEADER("X-Keyplane-Snapshot-Sha256", sum_hex),
        KP_HTTP_HEADER("X-Keyplane-Snapshot-Index", index),
        KP_HTTP_HEADER("X-Keyplane-Cluster-Id", c->e.id),
        KP_HTTP_HEADER("X-Keyplane-Kek-Id", c->kek_id ? c->kek_id : ""),
    };
    kp_info("admin", "snapshot of cluster %s at index %s (%zu bytes) taken by %s", c->e.id, index,
            out.len, r->who.token_id);
    kp_http_respond(r->ex, 200, h, sizeof(h) / sizeof(h[0]), out.data, out.len);
    kp_secret_wipe(out.data, out.len);
    kp_buf_free(&out);
}

static void audited(void *arg, int code, const struct kp_fsm_result *res)
{
    struct kp_admin_req *r = arg;
    if (code != KP_OK) {
        kp_admin__fail(r, 503, code == KP_ENOTLEADER ? "leadership_changed" : "not_committed", NULL,
                       "the snapshot's audit entry did not commit (%s); retry", kp_err_msg(code));
        return;
    }
    if (res->code != KP_OK) {
        kp_admin_refused(r->ex, r->rid, res);
        return;
    }
    snapshot_answer(r);
}

void kp_admin__snapshot(struct kp_admin_req *r)
{
    if (!kp_store_is_leader(r->n->store)) {
        kp_forward_to_leader(r->n, r->ex, r->req, r->rid);
        return;
    }
    const struct kp_cluster *c = kp_fsm_cluster(kp_admin__fsm(r));
    if (c == NULL) {
        kp_admin__fail(r, 503, "cluster_not_initialised", NULL,
                       "the cluster is not initialised yet; retry");
        return;
    }
    char action[] = "snapshot_save", result[] = "ok", target[160];
    snprintf(target, sizeof(target), "%s", c->e.id);
    struct kp_cmd_audit_only body = {.action = action, .target = target, .result = result};
    struct kp_command cmd;
    struct kp_buf buf;
    kp_admin__envelope(r, &cmd, KP_OP_AUDIT_ONLY);
    cmd.has_expect_version = false;
    cmd.body.audit_only = &body;
    if (!kp_admin__encode(r, &cmd, &buf))
        return;
    int rc = kp_store_propose(r->n->store, buf.data, buf.len, audited, r);
    kp_buf_free(&buf);
    if (rc == KP_ENOTLEADER)
        kp_forward_to_leader(r->n, r->ex, r->req, r->rid);
    else if (rc != KP_OK)
        kp_admin__fail(r, 503, "not_committed", NULL, "cannot propose now (%s); retry",
                       kp_err_msg(rc));
}

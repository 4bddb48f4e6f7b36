/* POST /admin/v1/secrets/rewrap: the last step of a master key rotation.
 *
 * Every node first runs with the new key as master_key_file and the old
 * one as previous_master_key_file (docs/operations.md). Then the leader
 * reads every live sealed secret, re-wraps its data key from the old key to
 * the new one (the secret itself is never decrypted: kp_seal_rewrap) and
 * proposes one rewrap_secrets command with the new key's id. The state
 * machine swaps every blob and records the new key id in the same entry, so
 * no replica ever holds a mix. Blobs already under the new key (secrets
 * added since the rotation began) are carried over unchanged. */
#include <stdio.h>
#include <string.h>

#include "admin_internal.h"

struct rewrap {
    struct kp_admin_req *r;
    const struct kp_seal_kek *old_kek, *new_kek;
    struct kp_rewrap_item *items;
    uint32_t n, cap;
    uint32_t keys;
    int rc;
    char errmsg[256];
};

static int add_item(struct rewrap *rw, const struct kp_key *k, const struct kp_key_secret *s)
{
    if (rw->n == rw->cap) {
        uint32_t cap = rw->cap ? rw->cap * 2 : 64;
        struct kp_rewrap_item *v = kp_realloc(rw->items, cap * sizeof(*v));
        if (v == NULL)
            return KP_ENOMEM;
        rw->items = v;
        rw->cap = cap;
    }
    struct kp_seal_info info;
    int rc = kp_seal_inspect(s->sealed.p, s->sealed.n, &info, rw->errmsg, sizeof(rw->errmsg));
    if (rc != KP_OK)
        return rc;
    struct kp_buf out;
    kp_buf_init(&out);
    if (strcmp(info.kek_id, kp_seal_kek_id(rw->new_kek)) == 0)
        rc = kp_buf_append(&out, s->sealed.p, s->sealed.n) == 0 ? KP_OK : KP_ENOMEM;
    else
        rc = kp_seal_rewrap(rw->old_kek, rw->new_kek, s->sealed.p, s->sealed.n, k->e.id, s->version,
                            &out, rw->errmsg, sizeof(rw->errmsg));
    if (rc != KP_OK) {
        kp_buf_free(&out);
        return rc;
    }
    rw->items[rw->n++] = (struct kp_rewrap_item){
        .key = k->e.id,
        .key_version = k->e.version,
        .version = s->version,
        .sealed = {(uint8_t *)out.data, (uint32_t)out.len},
    };
    return KP_OK;
}

static int collect_key(const struct kp_entity *e, void *arg)
{
    struct rewrap *rw = arg;
    const struct kp_key *k = (const struct kp_key *)e;
    bool any = false;
    for (uint32_t i = 0; i < k->nsecrets && rw->rc == KP_OK; i++) {
        const struct kp_key_secret *s = &k->secrets[i];
        if (s->state == KP_SECRET_RETIRED || s->sealed.n == 0)
            continue;
        rw->rc = add_item(rw, k, s);
        if (rw->rc != KP_OK)
            snprintf(rw->errmsg + strlen(rw->errmsg), sizeof(rw->errmsg) - strlen(rw->errmsg),
                     " (key %s, secret version %u)", k->e.id, s->version);
        any = true;
    }
    rw->keys += any;
    return rw->rc != KP_OK;
}

static void rewrap_free(struct rewrap *rw)
{
    for (uint32_t i = 0; i < rw->n; i++)
        kp_free(rw->items[i].sealed.p);
    kp_free(rw->items);
}

static void answer_rewrap(struct kp_admin_write *w, const struct kp_fsm_result *res)
{
    (void)res;
    struct kp_admin_req *r = w->r;
    const struct kp_cluster *c = kp_fsm_cluster(kp_admin__fsm(r));
    json_t *v = json_pack("{s:s,s:s?,s:I}", "result", "resealed under the new master key", "kek_id",
                          c ? c->kek_id : NULL, "secrets", (json_int_t)w->count);
    kp_admin__write_free(w);
    kp_admin__respond(r, 200, v, 0, false);
}

void kp_admin__secrets_rewrap(struct kp_admin_req *r)
{
    struct kp_node *n = r->n;
    const struct kp_cluster *c = kp_fsm_cluster(kp_admin__fsm(r));
    const char *now_id = kp_seal_kek_id(n->kek);
    if (c == NULL) {
        kp_admin__fail(r, 503, "not_initialized", NULL, "the cluster is not initialized yet");
        return;
    }
    if (c->kek_id != NULL && strcmp(c->kek_id, now_id) == 0) {
        kp_admin__respond(r, 200,
                          json_pack("{s:s,s:s,s:i}", "result",
                                    "every secret is already sealed under this master key",
                                    "kek_id", now_id, "secrets", 0),
                          0, false);
        return;
    }
    if (n->prev_kek == NULL || c->kek_id == NULL ||
        strcmp(c->kek_id, kp_seal_kek_id(n->prev_kek)) != 0) {
        kp_admin__fail(r, 409, "previous_key_missing", NULL,
                       "the cluster's secrets are sealed under master key %s, which the leader "
                       "does not hold as its previous key: give every node the new key as "
                       "master_key_file and the old one as previous_master_key_file, restart "
                       "them one by one, then retry",
                       c->kek_id ? c->kek_id : "(unknown)");
        return;
    }
    struct rewrap rw = {.r = r, .old_kek = n->prev_kek, .new_kek = n->kek};
    struct kp_view *v = kp_view_acquire(kp_store_views(n->store));
    if (v == NULL) {
        kp_admin__oom(r);
        return;
    }
    kp_view_each(v, KP_KIND_KEY, collect_key, &rw);
    if (rw.rc != KP_OK) {
        kp_view_release(v);
        rewrap_free(&rw);
        if (rw.rc == KP_ENOMEM)
            kp_admin__oom(r);
        else
            kp_admin__fail(r, 409, "rewrap_failed", NULL, "cannot rewrap: %s", rw.errmsg);
        return;
    }
    struct kp_cmd_rewrap body = {rw.items, rw.n, (char *)now_id};
    struct kp_command cmd = {0};
    kp_admin__envelope(r, &cmd, KP_OP_REWRAP_SECRETS);
    cmd.has_expect_version = false;
    cmd.body.rewrap = &body;
    struct kp_buf buf;
    kp_buf_init(&buf);
    bool ok = kp_admin__encode(r, &cmd, &buf);
    kp_view_release(v);
    rewrap_free(&rw);
    if (!ok) {
        kp_buf_free(&buf);
        return;
    }
    struct kp_admin_write *w = kp_admin__write_new(r, -1, NULL);
    if (w == NULL) {
        kp_buf_free(&buf);
        return;
    }
    w->then = answer_rewrap;
    w->count = rw.n;
    kp_admin__submit(w, &buf, true);
}

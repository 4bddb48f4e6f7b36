/* Writes through Raft for the control API: a handler builds a command,
 * kp_admin__submit proposes it, and once the entry is applied the write's
 * continuation answers from the state machine or proposes the next step.
 *
 *   built --propose--> proposed --applied, took effect--> then(): answered,
 *     |                   |                                 or proposed again
 *     |                   +--applied, refused--> 400/404/409 (kp_admin_refused)
 *     |                   +--not committed (leadership lost, closing)--> 503
 *     +--not the leader--> forwarded (first step only), else 503
 *
 * The store calls back on the main loop even when the client went away;
 * the answer then simply goes nowhere. A write is freed after its answer
 * and never touches the exchange afterwards. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "admin_internal.h"

struct kp_admin_write *kp_admin__write_new(struct kp_admin_req *r, int kind, const char *id)
{
    struct kp_admin_write *w = kp_calloc(1, sizeof(*w));
    if (w == NULL) {
        kp_admin__oom(r);
        return NULL;
    }
    w->r = r;
    w->kind = kind;
    w->id = id;
    w->then = kp_admin__answer_entity;
    return w;
}

/* Never touches w->r: it may run after the exchange was answered. */
void kp_admin__write_free(struct kp_admin_write *w)
{
    if (w == NULL)
        return;
    kp_secret_free(w->secret);
    kp_token_text_free(w->token_text);
    json_decref(w->body);
    kp_free(w);
}

void kp_admin__wipe_body(struct kp_admin_req *r)
{
    if (r->req->body_len > 0)
        kp_secret_wipe((char *)r->req->body, r->req->body_len);
}

void kp_admin__envelope(struct kp_admin_req *r, struct kp_command *cmd, enum kp_op op)
{
    memset(cmd, 0, sizeof(*cmd));
    cmd->v = KP_COMMAND_VERSION;
    cmd->op = op;
    cmd->ts = kp_now_unix_ms();
    cmd->audit = kp_admin_audit_ctx(&r->who, r->rid);
    cmd->has_expect_version = r->has_expect;
    cmd->expect_version = r->expect;
}

bool kp_admin__encode(struct kp_admin_req *r, const struct kp_command *cmd, struct kp_buf *out)
{
    char msg[256], field[160];
    struct kp_command check;
    kp_buf_init(out);
    int rc = kp_command_encode(cmd, out, msg, sizeof(msg));
    if (rc == KP_OK) {
        rc = kp_command_decode(out->data, out->len, &check, msg, sizeof(msg));
        kp_command_free(&check);
    }
    if (rc == KP_OK)
        return true;
    kp_buf_free(out);
    if (rc == KP_ENOMEM)
        kp_admin__oom(r);
    else
        kp_admin__fail(r, 400, "invalid_field", kp_admin__field_of(msg, field, sizeof(field)), "%s",
                       msg);
    return false;
}

static void write_done(void *arg, int code, const struct kp_fsm_result *res)
{
    struct kp_admin_write *w = arg;
    struct kp_admin_req *r = w->r;
    kp_admin__span_applied(r, code);
    if (code != KP_OK) {
        kp_admin__write_free(w);
        if (code == KP_ENOTLEADER)
            kp_admin__fail(
                r, 503, "leadership_changed", NULL,
                "leadership changed; the write may or may not have been applied: re-read and "
                "retry");
        else
            kp_admin__fail(r, 503, "not_committed", NULL,
                           "%s; the write may or may not have been applied: re-read and retry",
                           code == KP_ECLOSED ? "this node is shutting down" : kp_err_msg(code));
        return;
    }
    if (res->code == KP_ECONFLICT && w->redo != NULL && w->redos_left > 0) {
        w->redos_left--;
        w->redo(w);
        return;
    }
    if (res->code != KP_OK) {
        kp_admin__write_free(w);
        kp_admin_refused(r->ex, r->rid, res);
        return;
    }
    if (res->version == 1)
        w->created = true; /* only a put makes version 1 */
    w->then(w, res);
}

void kp_admin__submit(struct kp_admin_write *w, struct kp_buf *cmd, bool may_forward)
{
    struct kp_admin_req *r = w->r;
    kp_admin__span_proposed(r);
    int rc = kp_store_propose(r->n->store, cmd->data, cmd->len, write_done, w);
    kp_buf_free(cmd);
    if (rc == KP_OK) {
        if (w->wipe_request)
            kp_admin__wipe_body(r);
        return;
    }
    bool wipe = w->wipe_request;
    kp_admin__write_free(w);
    if (rc == KP_ENOTLEADER && may_forward) {
        kp_forward_to_leader(r->n, r->ex, r->req, r->rid);
        return;
    }
    if (wipe)
        kp_admin__wipe_body(r);
    if (rc == KP_ENOTLEADER)
        kp_admin__fail(r, 503, "leadership_changed", NULL,
                       "leadership changed part way through this request; re-read and retry");
    else
        kp_admin__fail(r, 503, rc == KP_ENOMEM ? "out_of_memory" : "not_proposed", NULL,
                       "cannot propose the change: %s; retry", kp_err_msg(rc));
}

void kp_admin__answer_entity(struct kp_admin_write *w, const struct kp_fsm_result *res)
{
    struct kp_admin_req *r = w->r;
    const char *id = w->id;
    int status = w->created ? 201 : 200;
    uint64_t etag = 0;
    json_t *v;
    if (w->is_delete) {
        v = json_pack("{s:s}", "deleted", id);
    } else {
        const struct kp_entity *e = kp_fsm_get(kp_admin__fsm(r), w->kind, id);
        if (e != NULL) {
            v = kp_admin__entity_json(e);
            etag = e->version;
        } else { /* changed again by a later entry of the same batch */
            v = json_pack("{s:s,s:I}", "id", id, "version", (json_int_t)res->version);
        }
    }
    kp_admin__write_free(w);
    kp_admin__respond(r, status, v, etag, false);
}

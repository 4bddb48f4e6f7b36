/* Freezes in the control API (docs/budgets.md "Freeze: the stop-loss
 * button", docs/control-api.md):
 *
 *   GET    /admin/v1/freezes                  every freeze routers see now
 *   GET    /admin/v1/freezes/{scope}/{name}   one
 *   PUT    /admin/v1/freezes/{scope}/{name}   {"reason": "..."}: put_freeze
 *   DELETE /admin/v1/freezes/{scope}/{name}   delete_freeze
 *
 * The URL names the freeze; the registry's id for it is "scope:name".
 * Freezing and unfreezing are operator actions (permission operate) and
 * go through the leader like every write (admin.c forwards them from a
 * follower). The list is read from the view this node published, the one
 * its router workers refuse calls by, so a caller that polls it on each
 * node knows when every router enforces a new freeze (unless it asks for
 * ?consistent=true: then it is the leader's state). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin_internal.h"

/* The scope named by the path, or -1 after answering @status (400 for a
 * write, 404 for a read). */
static int scope_of(struct kp_admin_req *r, int status)
{
    for (int s = 0; kp_freeze_scope_name(s) != NULL; s++) {
        if (strcmp(r->id, kp_freeze_scope_name(s)) == 0)
            return s;
    }
    char q[40];
    kp_admin__quote(q, sizeof(q), r->id);
    kp_admin__fail(r, status, status == 404 ? "not_found" : "invalid_request",
                   status == 404 ? NULL : "scope",
                   "scope: '%s' is not one of tenant, project, feature, pool, key, token", q);
    return -1;
}

/* "scope:name" in exchange memory; NULL after answering 503. */
static char *freeze_id(struct kp_admin_req *r)
{
    size_t n = strlen(r->id) + 1 + strlen(r->sub) + 1;
    char *id = kp_http_alloc(r->ex, n);
    if (id == NULL) {
        kp_admin__oom(r);
        return NULL;
    }
    snprintf(id, n, "%s:%s", r->id, r->sub);
    return id;
}

static int cmp_id(const void *a, const void *b)
{
    return strcmp((*(const struct kp_entity *const *)a)->id,
                  (*(const struct kp_entity *const *)b)->id);
}

struct collect {
    const struct kp_entity **v;
    size_t n, cap;
};

static int collect_one(const struct kp_entity *e, void *arg)
{
    struct collect *c = arg;
    if (c->n < c->cap)
        c->v[c->n++] = e;
    return 0;
}

/* Every freeze of the published view, by id, with that view's applied
 * index; with ?consistent=true, of the leader's state after the barrier
 * admin.c ran (a view built now: the published one may be a publish
 * interval behind it). There are few: an operator's stops, not a
 * registry's worth. */
void kp_admin__freezes_list(struct kp_admin_req *r)
{
    const char *q = kp_admin__query(r, "consistent");
    bool consistent = q != NULL && strcmp(q, "true") == 0;
    /* Building a view only takes references (as in admin.c's lists). */
    struct kp_view *view = consistent ? kp_fsm_view_build((struct kp_fsm *)kp_admin__fsm(r))
                                      : kp_view_acquire(&r->n->views);
    if (view == NULL && consistent) {
        kp_admin__oom(r);
        return;
    }
    struct collect c = {NULL, 0, view != NULL ? kp_view_count(view, KP_KIND_FREEZE) : 0};
    json_t *items = json_array();
    bool ok = items != NULL && (c.v = kp_malloc((c.cap + 1) * sizeof(*c.v))) != NULL;
    if (ok && view != NULL) {
        kp_view_each(view, KP_KIND_FREEZE, collect_one, &c);
        qsort(c.v, c.n, sizeof(*c.v), cmp_id);
    }
    for (size_t i = 0; ok && i < c.n; i++)
        ok = json_array_append_new(items, kp_admin__entity_json(c.v[i])) == 0;
    json_int_t applied = view != NULL ? (json_int_t)kp_view_applied_index(view) : 0;
    kp_free(c.v);
    kp_view_release(view);
    json_t *v = ok ? json_pack("{s:o,s:I}", "items", items, "applied_index", applied) : NULL;
    if (v == NULL) {
        if (!ok)
            json_decref(items);
        kp_admin__oom(r);
        return;
    }
    kp_admin__respond(r, 200, v, 0, false);
}

void kp_admin__freeze_get(struct kp_admin_req *r)
{
    char *id;
    if (scope_of(r, 404) < 0 || (id = freeze_id(r)) == NULL)
        return;
    const struct kp_entity *e = kp_fsm_get(kp_admin__fsm(r), KP_KIND_FREEZE, id);
    if (e == NULL) {
        char q[300];
        kp_admin__quote(q, sizeof(q), id);
        kp_admin__fail(r, 404, "not_found", NULL, "no freeze '%s'", q);
        return;
    }
    json_t *v = kp_admin__entity_json(e);
    if (v == NULL)
        kp_admin__oom(r);
    else
        kp_admin__respond(r, 200, v, e->version, false);
}

/* The command's body: scope and target from the URL, the reason from the
 * request, which may carry nothing else. NULL after answering. */
static json_t *put_body(struct kp_admin_req *r)
{
    json_t *in = kp_admin__body(r, false);
    if (in == NULL)
        return NULL;
    const char *k;
    json_t *v;
    json_object_foreach(in, k, v)
    {
        if (strcmp(k, "reason") != 0) {
            char q[80];
            kp_admin__quote(q, sizeof(q), k);
            kp_admin__fail(r, 400, "invalid_field", q,
                           "%s: a freeze's body holds only \"reason\" (the scope and the name "
                           "come from the URL)",
                           q);
            json_decref(in);
            return NULL;
        }
    }
    json_t *body = json_pack("{s:s,s:s}", "scope", r->id, "target", r->sub);
    json_t *reason = json_object_get(in, "reason");
    if (body == NULL || (reason != NULL && json_object_set(body, "reason", reason) != 0)) {
        json_decref(body);
        json_decref(in);
        kp_admin__oom(r);
        return NULL;
    }
    json_decref(in);
    return body;
}

/* Propose @op on freeze @id (@body NULL for a delete) and answer with the
 * freeze, or {"deleted": id}. */
static void propose(struct kp_admin_req *r, enum kp_op op, const char *id, const json_t *body)
{
    struct kp_audit_ctx audit = kp_admin_audit_ctx(&r->who, r->rid);
    struct kp_buf cmd;
    char msg[256] = "", field[160] = "";
    kp_buf_init(&cmd);
    int rc = kp_command_from_json(op, id, body, kp_now_unix_ms(), &audit, r->has_expect, r->expect,
                                  &cmd, msg, sizeof(msg), field, sizeof(field));
    if (rc != KP_OK) {
        if (rc == KP_ENOMEM)
            kp_admin__oom(r);
        else
            kp_admin__fail(r, 400, "invalid_field", field[0] != '\0' ? field : NULL, "%s", msg);
        return;
    }
    struct kp_admin_write *w = kp_admin__write_new(r, KP_KIND_FREEZE, id);
    if (w == NULL) {
        kp_buf_free(&cmd);
        return;
    }
    w->is_delete = body == NULL;
    kp_admin__submit(w, &cmd, true);
}

void kp_admin__freeze_put(struct kp_admin_req *r)
{
    char *id;
    if (scope_of(r, 400) < 0 || (id = freeze_id(r)) == NULL)
        return;
    json_t *body = put_body(r);
    if (body == NULL)
        return;
    propose(r, KP_OP_PUT_FREEZE, id, body);
    json_decref(body);
}

void kp_admin__freeze_delete(struct kp_admin_req *r)
{
    char *id;
    if (scope_of(r, 404) < 0 || (id = freeze_id(r)) == NULL)
        return;
    propose(r, KP_OP_DELETE_FREEZE, id, NULL);
}

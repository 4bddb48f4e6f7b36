/* Budgets in the control API (docs/budgets.md, docs/control-api.md):
 *
 *   GET  /admin/v1/budgets                         every budget of every policy
 *   GET  /admin/v1/budgets/{policy}/{budget}       one
 *   POST /admin/v1/budgets/{policy}/{budget}/reset spent back to 0, grants dropped
 *
 * Reads come from this node's state machine (it may trail the leader by
 * a few milliseconds); a window whose end has passed is shown as the new,
 * empty window it becomes at the next lease (the state machine reads no
 * clock). */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "admin_internal.h"

static json_t *iso(int64_t ms)
{
    char buf[40];
    kp_usage_format_time(ms, buf, sizeof(buf));
    return json_string(buf);
}

/* The definition's fields beyond window, kind and limit, as the policy
 * shows them: utc_offset_minutes, period_start_ms and period_ms (fixed
 * windows), actions. */
static json_t *with_definition(json_t *o, const struct kp_budget *b)
{
    static const char *const fields[] = {"utc_offset_minutes", "period_start_ms", "period_ms",
                                         "actions"};
    json_t *def = o != NULL ? kp_budget_json(b) : NULL;
    for (size_t i = 0; def != NULL && i < sizeof(fields) / sizeof(fields[0]); i++) {
        json_t *v = json_object_get(def, fields[i]);
        if (v != NULL && json_object_set(o, fields[i], v) != 0)
            break;
    }
    if (o != NULL && def == NULL) {
        json_decref(o);
        o = NULL;
    }
    json_decref(def);
    return o;
}

/* One budget of @p as the API shows it, at time @now. */
static json_t *budget_json(const struct kp_fsm *fsm, const struct kp_policy *p,
                           const struct kp_budget *b, int64_t now)
{
    const struct kp_budget_window_state *w = kp_fsm_budget_window(fsm, p->e.id, b->name);
    int64_t start = kp_budget_window_start_of(b, now);
    bool current = w != NULL && w->start_ms == start;
    kp_nanousd spent = current ? w->spent : 0;
    kp_nanousd granted = current ? kp_budget_window_granted(w) : 0;
    kp_nanousd remaining = b->limit_nanousd - spent - granted;
    json_t *grants = json_array();
    for (uint32_t i = 0; current && grants != NULL && i < w->ngrants; i++)
        json_array_append_new(grants,
                              json_pack("{s:I,s:I}", "node_id", (json_int_t)w->grants[i].node_id,
                                        "nanousd", (json_int_t)w->grants[i].amount));
    json_t *o = json_pack(
        "{s:s,s:s,s:s,s:s?,s:s,s:s,s:I,s:o,s:o,s:o,s:I,s:o,s:I,s:I,s:o,s:o,s:I}", "policy", p->e.id,
        "budget", b->name, "scope_kind", kp_scope_kind_name(p->scope_kind), "scope_target",
        p->scope_target, "window", kp_budget_window_name(b->window), "kind",
        b->kind == KP_BUDGET_HARD ? "hard" : "soft", "limit_nanousd", (json_int_t)b->limit_nanousd,
        "limit_usd", kp_json_usd(b->limit_nanousd), "window_start", iso(start), "resets_at",
        iso(kp_budget_window_end_of(b, now)), "spent_nanousd", (json_int_t)spent, "spent_usd",
        kp_json_usd(spent), "granted_nanousd", (json_int_t)granted, "remaining_nanousd",
        (json_int_t)remaining, "remaining_usd", kp_json_usd(remaining), "grants", grants,
        "overshoot_nanousd", (json_int_t)(current ? w->overshoot : 0));
    return with_definition(o, b);
}

struct collect {
    const struct kp_fsm *fsm;
    json_t *items;
    int64_t now;
};

static int collect_policy(const struct kp_entity *e, void *arg)
{
    const struct kp_policy *p = (const struct kp_policy *)e;
    struct collect *c = arg;
    for (uint32_t i = 0; i < p->nbudgets; i++) {
        json_t *j = budget_json(c->fsm, p, &p->budgets[i], c->now);
        if (j == NULL || json_array_append_new(c->items, j) != 0)
            return KP_ENOMEM;
    }
    return 0;
}

void kp_admin__budgets_list(struct kp_admin_req *r)
{
    const struct kp_fsm *fsm = kp_admin__fsm(r);
    struct collect c = {fsm, json_array(), kp_now_unix_ms()};
    struct kp_view *v = kp_view_acquire(&r->n->views);
    int rc = c.items != NULL && v != NULL ? kp_view_each(v, KP_KIND_POLICY, collect_policy, &c)
                                          : KP_ENOMEM;
    kp_view_release(v);
    if (rc != KP_OK) {
        json_decref(c.items);
        kp_admin__oom(r);
        return;
    }
    kp_admin__respond(r, 200, json_pack("{s:o}", "items", c.items), 0, false);
}

/* The policy and budget the path names; NULL after answering 404. */
static const struct kp_budget *find(struct kp_admin_req *r, const struct kp_policy **policy)
{
    const struct kp_fsm *fsm = kp_admin__fsm(r);
    const struct kp_policy *p = (const struct kp_policy *)kp_fsm_get(fsm, KP_KIND_POLICY, r->id);
    const struct kp_budget *b = p != NULL ? kp_policy_budget(p, r->sub) : NULL;
    if (b == NULL) {
        char pq[80], bq[80];
        kp_admin__quote(pq, sizeof(pq), r->id);
        kp_admin__quote(bq, sizeof(bq), r->sub);
        kp_admin__fail(r, 404, "not_found", NULL,
                       p == NULL ? "no policy %s" : "policy %s has no budget %s", pq, bq);
        return NULL;
    }
    *policy = p;
    return b;
}

void kp_admin__budget_get(struct kp_admin_req *r)
{
    const struct kp_policy *p;
    const struct kp_budget *b = find(r, &p);
    if (b == NULL)
        return;
    json_t *j = budget_json(kp_admin__fsm(r), p, b, kp_now_unix_ms());
    if (j == NULL)
        kp_admin__oom(r);
    else
        kp_admin__respond(r, 200, j, 0, false);
}

static void reset_done(struct kp_admin_write *w, const struct kp_fsm_result *res)
{
    struct kp_admin_req *r = w->r;
    if (res->code != KP_OK) {
        kp_admin_refused(r->ex, r->rid, res);
    } else {
        const struct kp_policy *p;
        const struct kp_budget *b = find(r, &p);
        if (b != NULL) {
            json_t *j = budget_json(kp_admin__fsm(r), p, b, kp_now_unix_ms());
            if (j == NULL)
                kp_admin__oom(r);
            else
                kp_admin__respond(r, 200, j, 0, false);
        }
    }
    kp_admin__write_free(w);
}

void kp_admin__budget_reset(struct kp_admin_req *r)
{
    const struct kp_policy *p;
    if (find(r, &p) == NULL)
        return;
    struct kp_audit_ctx audit = kp_admin_audit_ctx(&r->who, r->rid);
    struct kp_buf cmd;
    char msg[256] = "", field[160] = "";
    kp_buf_init(&cmd);
    json_t *body = json_pack("{s:s}", "budget", r->sub);
    int rc = body ? kp_command_from_json(KP_OP_BUDGET_RESET, r->id, body, kp_now_unix_ms(), &audit,
                                         false, 0, &cmd, msg, sizeof(msg), field, sizeof(field))
                  : KP_ENOMEM;
    json_decref(body);
    if (rc != KP_OK) {
        if (rc == KP_ENOMEM)
            kp_admin__oom(r);
        else
            kp_admin__fail(r, 400, "invalid_field", field[0] ? field : NULL, "%s", msg);
        return;
    }
    struct kp_admin_write *w = kp_admin__write_new(r, KP_KIND_POLICY, r->id);
    if (w == NULL) {
        kp_buf_free(&cmd);
        return;
    }
    w->then = reset_done;
    kp_admin__submit(w, &cmd, true);
}

/* The state machine: applies committed command bytes to the registry.
 *
 * Happy path: decode the command (command.c validates every field), run
 * the op's handler, which checks expect_version, the op's own rules and
 * referential integrity against the current state and then stages its
 * changes (new immutable entities to put, ids to delete) without touching
 * the state; build the audit entry; make the touched tables ours and big
 * enough (kp_store__table_prepare); then commit: swap the staged entities
 * in, append the audit entry, advance the applied index. Commit cannot
 * fail, and nothing before it changes what the state holds, so an apply
 * happens whole or not at all.
 *
 * A command can be refused (bad field, missing target, version conflict,
 * broken reference, unknown op or version): it then changes nothing but the
 * audit chain, which records "refused: <why>" with the same bytes on every
 * replica, because refusals depend only on the command and the state
 * (never on hash order: see registry.c). budget_lease, the routers' lease
 * traffic, is the one op that leaves no audit entry (see kp_fsm_apply);
 * its handlers live in budget.c, and every apply that changes budget state
 * is checked against the lease invariant before it commits
 * (check_budgets).
 *
 * If memory runs out anywhere before the commit, the staged changes are
 * dropped and kp_fsm_apply returns KP_ENOMEM with the state untouched (a
 * table may have been copied or grown, which holds the same entities). The
 * glue must then retry the entry or abort; it must not skip it.
 *
 * Determinism: apply reads nothing but the command and the state. Time is
 * the command's "ts", ids are the command's, and no random value is drawn. */
#include "raftstore/internal.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int (*op_fn)(struct kp_apply *a);

int kp_store__refuse(struct kp_apply *a, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(a->res->message, sizeof(a->res->message), fmt, ap);
    va_end(ap);
    kp_store__utf8_trim(a->res->message);
    return code;
}

int kp_store__stage(struct kp_apply *a, int kind, struct kp_entity *put, const char *del)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 4;
        struct kp_change *v = kp_realloc(a->changes, cap * sizeof(*v));
        if (v == NULL) {
            kp_store__entity_unref(put);
            return KP_ENOMEM;
        }
        a->changes = v;
        a->cap = cap;
    }
    a->changes[a->n++] = (struct kp_change){kind, put, del};
    return KP_OK;
}

struct kp_entity *kp_store__staged(const struct kp_apply *a, int kind, const char *id)
{
    for (size_t i = a->n; i-- > 0;) {
        const struct kp_change *c = &a->changes[i];
        if (c->kind != kind)
            continue;
        if (c->put != NULL && strcmp(c->put->id, id) == 0)
            return c->put;
        if (c->put == NULL && strcmp(c->del, id) == 0)
            return NULL;
    }
    return kp_store__get(a->st, kind, id);
}

static void discard(struct kp_apply *a)
{
    for (size_t i = 0; i < a->n; i++)
        kp_store__entity_unref(a->changes[i].put);
    kp_free(a->changes);
    a->changes = NULL;
    a->n = a->cap = 0;
    if (a->cluster != NULL)
        kp_store__entity_unref(&a->cluster->e);
    a->cluster = NULL;
}

static int check_expect(struct kp_apply *a, int kind, const char *id, const struct kp_entity *cur)
{
    if (!a->cmd->has_expect_version)
        return KP_OK;
    uint64_t have = cur != NULL ? cur->version : 0, want = a->cmd->expect_version;
    if (have == want)
        return KP_OK;
    if (cur == NULL)
        return kp_store__refuse(a, KP_ECONFLICT,
                                "expect_version: %s '%s' does not exist (expected %" PRIu64 ")",
                                kp_kind_name(kind), id, want);
    return kp_store__refuse(a, KP_ECONFLICT,
                            "expect_version: %s '%s' is at version %" PRIu64 ", not %" PRIu64,
                            kp_kind_name(kind), id, have, want);
}

/* The existing entity an op targets, checked against expect_version. */
static int target(struct kp_apply *a, int kind, const char *id, struct kp_entity **out)
{
    a->target = id;
    *out = kp_store__get(a->st, kind, id);
    if (*out == NULL)
        return kp_store__refuse(a, KP_ENOENT, "no %s '%s'", kp_kind_name(kind), id);
    return check_expect(a, kind, id, *out);
}

/* A new version of @old to change and stage: version and times set. */
static int next_version(struct kp_apply *a, const struct kp_entity *old, struct kp_entity **out)
{
    if ((*out = kp_store__entity_clone(old)) == NULL)
        return KP_ENOMEM;
    (*out)->version = old->version + 1;
    (*out)->updated_ms = a->cmd->ts;
    a->res->version = (*out)->version;
    return KP_OK;
}

/* --- puts ------------------------------------------------------------------------------- */

static int copy_secrets(struct kp_key *dst, const struct kp_key *src)
{
    if (src->nsecrets == 0)
        return KP_OK;
    if ((dst->secrets = kp_calloc(src->nsecrets, sizeof(*dst->secrets))) == NULL)
        return KP_ENOMEM;
    dst->nsecrets = src->nsecrets;
    for (uint32_t i = 0; i < src->nsecrets; i++) {
        if (kp_store__obj_clone(&kp_store__key_secret_schema, &src->secrets[i], &dst->secrets[i]) !=
            KP_OK)
            return KP_ENOMEM;
    }
    return KP_OK;
}

/* "<what>: <reason>" as the audit entry's detail, cut to whole UTF-8
 * characters when the reason is long. */
static void freeze_detail(struct kp_apply *a, const char *what, const char *reason)
{
    snprintf(a->detail, sizeof(a->detail), "%s: %s", what, reason);
    kp_store__utf8_trim(a->detail);
}

/* A freeze records who set it (the audit chain has the rest). */
static int freeze_put(struct kp_apply *a, struct kp_freeze *f)
{
    if ((f->frozen_by = kp_strdup(a->cmd->audit.actor)) == NULL)
        return KP_ENOMEM;
    freeze_detail(a, "frozen", f->reason);
    return KP_OK;
}

/* What a put keeps from the version it replaces, and rules on changes. */
static int put_carry_over(struct kp_apply *a, struct kp_entity *e, const struct kp_entity *old)
{
    if (e->kind == KP_KIND_FREEZE)
        return freeze_put(a, (struct kp_freeze *)e);
    if (e->kind == KP_KIND_KEY && old != NULL) {
        const struct kp_key *ok = (const struct kp_key *)old;
        struct kp_key *nk = (struct kp_key *)e;
        if (ok->status == KP_KEY_REVOKED)
            return kp_store__refuse(a, KP_ECONFLICT, "key '%s' is revoked", e->id);
        nk->status = ok->status;
        return copy_secrets(nk, ok);
    }
    if (e->kind == KP_KIND_PROJECT && old != NULL &&
        strcmp(((const struct kp_project *)old)->tenant, ((struct kp_project *)e)->tenant) != 0)
        return kp_store__refuse(a, KP_ECONFLICT,
                                "tenant: project '%s' belongs to tenant '%s' and cannot move",
                                e->id, ((const struct kp_project *)old)->tenant);
    return KP_OK;
}

/* put_<kind>: create or replace the entity carried by the command. */
static int op_put(struct kp_apply *a)
{
    struct kp_entity *e = a->cmd->body.any;
    int kind = e->kind;
    struct kp_entity *old = kp_store__get(a->st, kind, e->id);
    a->target = e->id;
    int rc = check_expect(a, kind, e->id, old);
    if (rc == KP_OK)
        rc = put_carry_over(a, e, old);
    if (rc == KP_OK)
        rc = kp_store__validate(a->st, e, a->res->message, sizeof(a->res->message));
    if (rc != KP_OK)
        return rc;
    e->version = old != NULL ? old->version + 1 : 1;
    e->created_ms = old != NULL ? old->created_ms : a->cmd->ts;
    e->updated_ms = a->cmd->ts;
    a->res->version = e->version;
    a->cmd->body.any = NULL; /* the entity now belongs to the change */
    if ((rc = kp_store__stage(a, kind, e, NULL)) != KP_OK || kind != KP_KIND_POLICY)
        return rc;
    return kp_store__budget_policy_put(a, (const struct kp_policy *)old,
                                       (const struct kp_policy *)e);
}

/* What the new health entity @h takes from @old: the canary fields (and
 * the provider balance a probe read) when the command is not a probe's
 * (last_canary_ms 0), and the history, with
 * one change appended when the status changed (@same false), the oldest
 * dropped past KP_HEALTH_HISTORY_MAX. Allocates only; @old is untouched. */
static int health_carry(struct kp_apply *a, const struct kp_key_health *old,
                        struct kp_key_health *h, bool same)
{
    if (h->last_canary_ms == 0 && old != NULL) {
        h->last_canary_ms = old->last_canary_ms;
        h->provider_balance_ms = old->provider_balance_ms;
        h->provider_balance = old->provider_balance;
        /* Successes count from the last change: a key an operator or
         * traffic moved needs KP_CANARY_STREAK new ones to come back. */
        h->canary_streak = same ? old->canary_streak : 0;
        kp_free(h->last_canary_result);
        h->last_canary_result = NULL;
        if (old->last_canary_result != NULL &&
            (h->last_canary_result = kp_strdup(old->last_canary_result)) == NULL)
            return KP_ENOMEM;
    }
    uint32_t keep = old != NULL ? old->nhistory : 0, skip = 0;
    if (!same && keep >= KP_HEALTH_HISTORY_MAX)
        skip = keep - (KP_HEALTH_HISTORY_MAX - 1);
    uint32_t n = keep - skip + (same ? 0 : 1);
    if (n == 0)
        return KP_OK;
    struct kp_health_change *v = kp_calloc(n, sizeof(*v));
    if (v == NULL)
        return KP_ENOMEM;
    h->history = v; /* freed with @h from here on */
    h->nhistory = n;
    for (uint32_t i = 0; i < keep - skip; i++) {
        const struct kp_health_change *c = &old->history[skip + i];
        v[i].at_ms = c->at_ms;
        v[i].status = c->status;
        if ((c->error_class && (v[i].error_class = kp_strdup(c->error_class)) == NULL) ||
            (c->source && (v[i].source = kp_strdup(c->source)) == NULL))
            return KP_ENOMEM;
    }
    if (!same) {
        struct kp_health_change *c = &v[n - 1];
        const char *src = a->cmd->audit.source;
        c->at_ms = a->cmd->ts;
        c->status = h->status;
        if ((h->last_error_class && (c->error_class = kp_strdup(h->last_error_class)) == NULL) ||
            (src && src[0] && (c->source = kp_strdup(src)) == NULL))
            return KP_ENOMEM;
    }
    return KP_OK;
}

static int op_set_key_health(struct kp_apply *a)
{
    struct kp_key_health *h = a->cmd->body.key_health;
    a->target = h->e.id;
    if (kp_store__get(a->st, KP_KIND_KEY, h->e.id) == NULL)
        return kp_store__refuse(a, KP_ENOENT, "no key '%s'", h->e.id);
    const struct kp_key_health *old =
        (const struct kp_key_health *)kp_store__get(a->st, KP_KIND_KEY_HEALTH, h->e.id);
    int rc = check_expect(a, KP_KIND_KEY_HEALTH, h->e.id, old ? &old->e : NULL);
    if (rc != KP_OK)
        return rc;
    bool same = old != NULL && old->status == h->status;
    h->last_change_ms = same ? old->last_change_ms : a->cmd->ts;
    if ((rc = health_carry(a, old, h, same)) != KP_OK)
        return rc;
    h->e.version = old != NULL ? old->e.version + 1 : 1;
    h->e.created_ms = old != NULL ? old->e.created_ms : a->cmd->ts;
    h->e.updated_ms = a->cmd->ts;
    a->res->version = h->e.version;
    a->cmd->body.any = NULL;
    return kp_store__stage(a, KP_KIND_KEY_HEALTH, &h->e, NULL);
}

static int op_init_cluster(struct kp_apply *a)
{
    struct kp_cluster *c = a->cmd->body.cluster;
    a->target = c->e.id;
    if (a->st->cluster != NULL)
        return kp_store__refuse(a, KP_ECONFLICT, "cluster already initialized as '%s'",
                                a->st->cluster->e.id);
    c->e.version = 1;
    c->e.created_ms = c->e.updated_ms = a->cmd->ts;
    a->res->version = 1;
    a->cluster = c;
    a->cmd->body.any = NULL;
    return KP_OK;
}

/* --- deletes ---------------------------------------------------------------------------- */

static int delete_kind(enum kp_op op)
{
    switch (op) {
    case KP_OP_DELETE_PROVIDER:
        return KP_KIND_PROVIDER;
    case KP_OP_DELETE_KEY:
        return KP_KIND_KEY;
    case KP_OP_DELETE_POOL:
        return KP_KIND_POOL;
    case KP_OP_DELETE_TENANT:
        return KP_KIND_TENANT;
    case KP_OP_DELETE_PROJECT:
        return KP_KIND_PROJECT;
    case KP_OP_DELETE_TOKEN:
        return KP_KIND_TOKEN;
    case KP_OP_DELETE_POLICY:
        return KP_KIND_POLICY;
    case KP_OP_DELETE_PRICE:
        return KP_KIND_PRICE;
    case KP_OP_REMOVE_MEMBER:
        return KP_KIND_MEMBER;
    case KP_OP_DELETE_ALERT_RULE:
        return KP_KIND_ALERT_RULE;
    case KP_OP_DELETE_FREEZE:
        return KP_KIND_FREEZE;
    case KP_OP_DELETE_KEY_BALANCE:
        return KP_KIND_KEY_BALANCE;
    default:
        return KP_KIND_WEBHOOK;
    }
}

/* delete_<kind>: refused while anything refers to the entity. A key's
 * health record and balance go with it, and a policy's budget state with
 * it. */
static int op_delete(struct kp_apply *a)
{
    const char *id = a->cmd->body.target->id;
    int kind = delete_kind(a->cmd->op);
    struct kp_entity *old;
    int rc = target(a, kind, id, &old);
    if (rc == KP_OK)
        rc = kp_store__referrers(a->st, kind, id, a->res->message, sizeof(a->res->message));
    if (rc == KP_OK)
        rc = kp_store__stage(a, kind, NULL, id);
    if (rc == KP_OK && kind == KP_KIND_KEY && kp_store__get(a->st, KP_KIND_KEY_HEALTH, id))
        rc = kp_store__stage(a, KP_KIND_KEY_HEALTH, NULL, id);
    if (rc == KP_OK && kind == KP_KIND_KEY && kp_store__get(a->st, KP_KIND_KEY_BALANCE, id))
        rc = kp_store__stage(a, KP_KIND_KEY_BALANCE, NULL, id);
    if (rc == KP_OK && kind == KP_KIND_POLICY && kp_store__get(a->st, KP_KIND_BUDGET_STATE, id))
        rc = kp_store__stage(a, KP_KIND_BUDGET_STATE, NULL, id);
    if (rc == KP_OK && kind == KP_KIND_FREEZE)
        freeze_detail(a, "unfrozen; the reason was", ((const struct kp_freeze *)old)->reason);
    return rc;
}

static int op_disable_token(struct kp_apply *a)
{
    struct kp_entity *old, *e;
    int rc = target(a, KP_KIND_TOKEN, a->cmd->body.target->id, &old);
    if (rc == KP_OK)
        rc = next_version(a, old, &e);
    if (rc != KP_OK)
        return rc;
    ((struct kp_token *)e)->disabled = true;
    return kp_store__stage(a, KP_KIND_TOKEN, e, NULL);
}

/* --- key status and secrets ------------------------------------------------------------- */

static void erase_secret(struct kp_key_secret *s)
{
    kp_free(s->sealed.p);
    s->sealed.p = NULL;
    s->sealed.n = 0;
    s->state = KP_SECRET_RETIRED;
}

/* The key an op on keys targets, refused once revoked. */
static int live_key(struct kp_apply *a, const char *id, const struct kp_key **out)
{
    struct kp_entity *e;
    int rc = target(a, KP_KIND_KEY, id, &e);
    if (rc != KP_OK)
        return rc;
    *out = (const struct kp_key *)e;
    if ((*out)->status == KP_KEY_REVOKED)
        return kp_store__refuse(a, KP_ECONFLICT, "key '%s' is revoked", id);
    return KP_OK;
}

/* set_key_status: active <-> disabled; revoked is final and erases every
 * sealed secret. */
static int op_set_key_status(struct kp_apply *a)
{
    const struct kp_cmd_key_status *c = a->cmd->body.key_status;
    const struct kp_key *k;
    struct kp_entity *e;
    int rc = live_key(a, c->id, &k);
    if (rc == KP_OK)
        rc = next_version(a, &k->e, &e);
    if (rc != KP_OK)
        return rc;
    struct kp_key *nk = (struct kp_key *)e;
    nk->status = c->status;
    for (uint32_t i = 0; c->status == KP_KEY_REVOKED && i < nk->nsecrets; i++)
        erase_secret(&nk->secrets[i]);
    snprintf(a->detail, sizeof(a->detail), "%s", kp_key_status_name(c->status));
    return kp_store__stage(a, KP_KIND_KEY, e, NULL);
}

static int check_new_secret(struct kp_apply *a, const struct kp_key *k,
                            const struct kp_cmd_add_secret *c)
{
    for (uint32_t i = 0; i < k->nsecrets; i++) {
        const struct kp_key_secret *s = &k->secrets[i];
        if (s->version >= c->version)
            return kp_store__refuse(a, KP_ECONFLICT, "version: %u is not above key '%s' version %u",
                                    c->version, k->e.id, s->version);
        if (strcmp(s->fingerprint, c->fingerprint) == 0)
            return kp_store__refuse(a, KP_ECONFLICT, "fingerprint: already key '%s' version %u",
                                    k->e.id, s->version);
    }
    return KP_OK;
}

/* Shift states for a new primary: primary -> previous (until @retire_ms),
 * previous -> retired, then drop the oldest retired versions above the
 * limit. @v has room for one more, which the caller fills. */
static uint32_t rotate_secrets(struct kp_key_secret *v, uint32_t n, int64_t retire_ms)
{
    for (uint32_t i = 0; i < n; i++) {
        if (v[i].state == KP_SECRET_PREVIOUS) {
            erase_secret(&v[i]);
        } else if (v[i].state == KP_SECRET_PRIMARY) {
            v[i].state = KP_SECRET_PREVIOUS;
            v[i].retire_after_ms = retire_ms;
        }
    }
    while (n + 1 > KP_KEY_SECRETS_MAX) {
        uint32_t i = 0;
        while (i < n && v[i].state != KP_SECRET_RETIRED)
            i++;
        if (i == n)
            break;
        kp_store__obj_free(&kp_store__key_secret_schema, &v[i]);
        memmove(&v[i], &v[i + 1], (n - i - 1) * sizeof(*v));
        n--;
    }
    return n;
}

/* add_key_secret: the new version becomes primary; the old primary stays
 * usable until retire_previous_after_ms. */
static int op_add_key_secret(struct kp_apply *a)
{
    struct kp_cmd_add_secret *c = a->cmd->body.add_secret;
    const struct kp_key *k;
    struct kp_entity *e;
    int rc = live_key(a, c->id, &k);
    if (rc == KP_OK)
        rc = check_new_secret(a, k, c);
    if (rc == KP_OK)
        rc = next_version(a, &k->e, &e);
    if (rc != KP_OK)
        return rc;
    struct kp_key *nk = (struct kp_key *)e;
    struct kp_key_secret *v = kp_realloc(nk->secrets, (nk->nsecrets + 1) * sizeof(*v));
    if (v == NULL) {
        kp_store__entity_unref(e);
        return KP_ENOMEM;
    }
    nk->secrets = v;
    nk->nsecrets = rotate_secrets(v, nk->nsecrets, c->retire_previous_after_ms);
    /* Moved from the command, which is freed after apply. */
    v[nk->nsecrets++] = (struct kp_key_secret){
        .version = c->version,
        .sealed = c->sealed,
        .fingerprint = c->fingerprint,
        .last4 = c->last4,
        .state = KP_SECRET_PRIMARY,
    };
    c->sealed = (struct kp_bytes){0};
    c->fingerprint = c->last4 = NULL;
    const struct kp_key_secret *s = &v[nk->nsecrets - 1];
    snprintf(a->detail, sizeof(a->detail), "version %u, fingerprint %s", s->version,
             s->fingerprint);
    return kp_store__stage(a, KP_KIND_KEY, e, NULL);
}

static int op_retire_key_secret(struct kp_apply *a)
{
    const struct kp_cmd_retire_secret *c = a->cmd->body.retire_secret;
    const struct kp_key *k;
    struct kp_entity *e;
    int rc = live_key(a, c->id, &k);
    if (rc != KP_OK)
        return rc;
    uint32_t i = 0;
    while (i < k->nsecrets && k->secrets[i].version != c->version)
        i++;
    snprintf(a->detail, sizeof(a->detail), "version %u", c->version);
    if (i == k->nsecrets)
        return kp_store__refuse(a, KP_ENOENT, "version: key '%s' has no secret version %u", c->id,
                                c->version);
    if (k->secrets[i].state == KP_SECRET_PRIMARY)
        return kp_store__refuse(a, KP_ECONFLICT,
                                "version: %u is the primary of key '%s'; add a new secret first",
                                c->version, c->id);
    a->res->version = k->e.version;
    if (k->secrets[i].state == KP_SECRET_RETIRED)
        return KP_OK; /* already: nothing changes */
    if ((rc = next_version(a, &k->e, &e)) != KP_OK)
        return rc;
    erase_secret(&((struct kp_key *)e)->secrets[i]);
    return kp_store__stage(a, KP_KIND_KEY, e, NULL);
}

static int op_audit_only(struct kp_apply *a)
{
    (void)a; /* finish() records what the body says */
    return KP_OK;
}

/* rewrap_secrets lives in its own section below. */
static int op_rewrap(struct kp_apply *a);

static const op_fn handlers[KP_OP_COUNT] = {
    [KP_OP_PUT_PROVIDER] = op_put,
    [KP_OP_DELETE_PROVIDER] = op_delete,
    [KP_OP_PUT_KEY] = op_put,
    [KP_OP_DELETE_KEY] = op_delete,
    [KP_OP_ADD_KEY_SECRET] = op_add_key_secret,
    [KP_OP_RETIRE_KEY_SECRET] = op_retire_key_secret,
    [KP_OP_SET_KEY_STATUS] = op_set_key_status,
    [KP_OP_PUT_POOL] = op_put,
    [KP_OP_DELETE_POOL] = op_delete,
    [KP_OP_PUT_TENANT] = op_put,
    [KP_OP_DELETE_TENANT] = op_delete,
    [KP_OP_PUT_PROJECT] = op_put,
    [KP_OP_DELETE_PROJECT] = op_delete,
    [KP_OP_PUT_TOKEN] = op_put,
    [KP_OP_DISABLE_TOKEN] = op_disable_token,
    [KP_OP_DELETE_TOKEN] = op_delete,
    [KP_OP_PUT_POLICY] = op_put,
    [KP_OP_DELETE_POLICY] = op_delete,
    [KP_OP_PUT_PRICE] = op_put,
    [KP_OP_DELETE_PRICE] = op_delete,
    [KP_OP_PUT_MEMBER] = op_put,
    [KP_OP_REMOVE_MEMBER] = op_delete,
    [KP_OP_PUT_ALERT_RULE] = op_put,
    [KP_OP_DELETE_ALERT_RULE] = op_delete,
    [KP_OP_PUT_WEBHOOK] = op_put,
    [KP_OP_DELETE_WEBHOOK] = op_delete,
    [KP_OP_SET_KEY_HEALTH] = op_set_key_health,
    [KP_OP_INIT_CLUSTER] = op_init_cluster,
    [KP_OP_AUDIT_ONLY] = op_audit_only,
    [KP_OP_REWRAP_SECRETS] = op_rewrap,
    [KP_OP_BUDGET_LEASE] = kp_store__op_budget_lease,
    [KP_OP_BUDGET_RESET] = kp_store__op_budget_reset,
    [KP_OP_PUT_FREEZE] = op_put,
    [KP_OP_DELETE_FREEZE] = op_delete,
    [KP_OP_PUT_ALERT] = kp_store__op_put_alert,
    [KP_OP_RESOLVE_ALERT] = kp_store__op_resolve_alert,
    [KP_OP_ACK_ALERT] = kp_store__op_ack_alert,
    [KP_OP_ALERT_DELIVERY] = kp_store__op_alert_delivery,
    [KP_OP_SET_KEY_BALANCE] = kp_store__op_set_key_balance,
    [KP_OP_ADD_KEY_TOPUP] = kp_store__op_add_key_topup,
    [KP_OP_DELETE_KEY_BALANCE] = op_delete,
};

/* --- rewrap_secrets ----------------------------------------------------------------------- */

static int cmp_item(const void *pa, const void *pb)
{
    const struct kp_rewrap_item *x = *(const struct kp_rewrap_item *const *)pa;
    const struct kp_rewrap_item *y = *(const struct kp_rewrap_item *const *)pb;
    int c = strcmp(x->key, y->key);
    if (c != 0)
        return c;
    if (x->version != y->version)
        return x->version < y->version ? -1 : 1;
    return x < y ? -1 : x > y; /* equal items in command order */
}

static struct kp_key_secret *find_secret(const struct kp_key *k, uint32_t version)
{
    for (uint32_t i = 0; i < k->nsecrets; i++) {
        if (k->secrets[i].version == version)
            return &k->secrets[i];
    }
    return NULL;
}

/* Every item names a live secret of the key version it was read from. */
static int rewrap_check_items(struct kp_apply *a, const struct kp_cmd_rewrap *r)
{
    for (uint32_t i = 0; i < r->nsecrets; i++) {
        const struct kp_rewrap_item *it = &r->secrets[i];
        const struct kp_key *k = (const struct kp_key *)kp_store__get(a->st, KP_KIND_KEY, it->key);
        if (k == NULL)
            return kp_store__refuse(a, KP_ENOENT, "secrets[%u].key: no key '%s'", i, it->key);
        if (k->e.version != it->key_version)
            return kp_store__refuse(a, KP_ECONFLICT,
                                    "secrets[%u].key_version: key '%s' is at version %" PRIu64, i,
                                    it->key, k->e.version);
        const struct kp_key_secret *s = find_secret(k, it->version);
        if (s == NULL || s->sealed.n == 0)
            return kp_store__refuse(a, KP_ECONFLICT,
                                    "secrets[%u].version: key '%s' has no live secret version %u",
                                    i, it->key, it->version);
    }
    return KP_OK;
}

static bool rewrap_has(struct kp_rewrap_item **sorted, uint32_t n, const char *key, uint32_t ver)
{
    size_t lo = 0, hi = n; /* binary search in (key, version) order */
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(sorted[mid]->key, key);
        if (c == 0)
            c = sorted[mid]->version < ver ? -1 : sorted[mid]->version > ver;
        if (c == 0)
            return true;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return false;
}

/* The list must cover every live secret exactly once: find the smallest
 * (key, version) it misses, for a deterministic message. */
static int rewrap_check_cover(struct kp_apply *a, struct kp_rewrap_item **sorted, uint32_t n)
{
    struct kp_entity **keys;
    size_t nkeys;
    if (kp_store__table_sorted(a->st->tables[KP_KIND_KEY], &keys, &nkeys) != KP_OK)
        return KP_ENOMEM;
    int rc = KP_OK;
    for (size_t i = 0; i < nkeys && rc == KP_OK; i++) {
        const struct kp_key *k = (const struct kp_key *)keys[i];
        for (uint32_t j = 0; j < k->nsecrets && rc == KP_OK; j++) {
            if (k->secrets[j].sealed.n > 0 &&
                !rewrap_has(sorted, n, k->e.id, k->secrets[j].version))
                rc = kp_store__refuse(
                    a, KP_ECONFLICT,
                    "secrets: key '%s' version %u is missing (a rewrap covers every live secret)",
                    k->e.id, k->secrets[j].version);
        }
    }
    kp_free(keys);
    return rc;
}

/* Stage one new key version per key with its blobs replaced. */
static int rewrap_stage(struct kp_apply *a, struct kp_rewrap_item **sorted, uint32_t n)
{
    size_t nkeys = 0;
    for (uint32_t i = 0; i < n;) {
        const struct kp_key *k =
            (const struct kp_key *)kp_store__get(a->st, KP_KIND_KEY, sorted[i]->key);
        struct kp_entity *e;
        int rc = next_version(a, &k->e, &e);
        if (rc != KP_OK)
            return rc;
        for (; i < n && strcmp(sorted[i]->key, k->e.id) == 0; i++) {
            struct kp_key_secret *s = find_secret((struct kp_key *)e, sorted[i]->version);
            kp_free(s->sealed.p);
            s->sealed = sorted[i]->sealed; /* moved from the command */
            sorted[i]->sealed = (struct kp_bytes){0};
        }
        if ((rc = kp_store__stage(a, KP_KIND_KEY, e, NULL)) != KP_OK)
            return rc;
        nkeys++;
    }
    a->res->version = 0;
    snprintf(a->detail, sizeof(a->detail), "%u secrets in %zu keys", n, nkeys);
    return KP_OK;
}

/* The cluster settings with the new master key id. */
static int rewrap_kek_id(struct kp_apply *a, const char *kek_id)
{
    if (kek_id == NULL)
        return KP_OK;
    if (a->st->cluster == NULL)
        return kp_store__refuse(a, KP_ECONFLICT, "kek_id: the cluster is not initialized");
    struct kp_entity *e;
    int rc = next_version(a, &a->st->cluster->e, &e);
    if (rc != KP_OK)
        return rc;
    struct kp_cluster *c = (struct kp_cluster *)e;
    char *id = kp_strdup(kek_id);
    if (id == NULL) {
        kp_store__entity_unref(e);
        return KP_ENOMEM;
    }
    kp_free(c->kek_id);
    c->kek_id = id;
    a->cluster = c;
    return KP_OK;
}

/* rewrap_secrets: replace every sealed blob at once (a KEK rotation). */
static int op_rewrap(struct kp_apply *a)
{
    struct kp_cmd_rewrap *r = a->cmd->body.rewrap;
    a->target = "*";
    int rc = rewrap_check_items(a, r);
    if (rc == KP_OK && r->nsecrets == 0)
        rc = rewrap_check_cover(a, NULL, 0);
    if (rc != KP_OK || r->nsecrets == 0)
        return rc == KP_OK ? rewrap_kek_id(a, r->kek_id) : rc;
    struct kp_rewrap_item **sorted = kp_malloc(r->nsecrets * sizeof(*sorted));
    if (sorted == NULL)
        return KP_ENOMEM;
    for (uint32_t i = 0; i < r->nsecrets; i++)
        sorted[i] = &r->secrets[i];
    qsort(sorted, r->nsecrets, sizeof(*sorted), cmp_item);
    for (uint32_t i = 1; i < r->nsecrets && rc == KP_OK; i++) {
        if (strcmp(sorted[i]->key, sorted[i - 1]->key) == 0 &&
            sorted[i]->version == sorted[i - 1]->version)
            rc = kp_store__refuse(a, KP_EINVAL, "secrets[%td]: duplicate of secrets[%td]",
                                  sorted[i] - r->secrets, sorted[i - 1] - r->secrets);
    }
    if (rc == KP_OK)
        rc = rewrap_check_cover(a, sorted, r->nsecrets);
    if (rc == KP_OK)
        rc = rewrap_stage(a, sorted, r->nsecrets);
    kp_free(sorted);
    if (rc == KP_OK)
        rc = rewrap_kek_id(a, r->kek_id);
    return rc;
}

/* --- apply -------------------------------------------------------------------------------- */

static int dispatch(struct kp_apply *a)
{
    enum kp_op op = a->cmd->op;
    if (a->cmd->has_expect_version &&
        (op == KP_OP_INIT_CLUSTER || op == KP_OP_AUDIT_ONLY || op == KP_OP_REWRAP_SECRETS ||
         op == KP_OP_BUDGET_LEASE || op == KP_OP_BUDGET_RESET || op == KP_OP_ALERT_DELIVERY))
        return kp_store__refuse(a, KP_EINVAL, "expect_version: not accepted by %s", kp_op_name(op));
    return handlers[op](a);
}

/* The lease invariant (struct kp_budget_window_state) over every budget state
 * this apply changes, with the policy that will be in force after it: a
 * staged budget state, or the state of a staged policy.
 *
 * Nothing a command says can break it: grants come only out of the room
 * under the limit, and whatever else raises spent + grants raises excess
 * with it (budget.c). A failure here is therefore a bug in this file's
 * neighbours, and the same bug on every replica, which apply the same
 * bytes to the same state. What to do about it:
 *   - debug builds (tests, fuzzers) abort at once, at the entry that
 *     broke it, so the bug is found where it happens;
 *   - release builds refuse the command instead. Every replica refuses it
 *     alike, so they stay identical and within the invariant, the
 *     proposer learns its lease was not granted, and the log says why.
 *     Aborting there would not protect anything (no replica would diverge
 *     by refusing) but would stop every replica at the same entry, and
 *     again on each restart as the entry is replayed: the whole cluster
 *     down until a fixed build is deployed. CONVENTIONS keeps aborts for
 *     state that would otherwise diverge. */
static int check_budgets(struct kp_apply *a)
{
    char why[200];
    for (size_t i = 0; i < a->n; i++) {
        const struct kp_change *c = &a->changes[i];
        if (c->put == NULL || (c->kind != KP_KIND_BUDGET_STATE && c->kind != KP_KIND_POLICY))
            continue;
        const struct kp_entity *p = kp_store__staged(a, KP_KIND_POLICY, c->put->id);
        const struct kp_entity *s = kp_store__staged(a, KP_KIND_BUDGET_STATE, c->put->id);
        if (s == NULL)
            continue;
        int rc = p == NULL ? KP_EINVAL : KP_OK;
        if (rc != KP_OK)
            snprintf(why, sizeof(why), "no policy '%s'", s->id);
        else
            rc = kp_store__budget_check((const struct kp_policy *)p,
                                        (const struct kp_budget_state *)s, why, sizeof(why));
        if (rc == KP_OK)
            continue;
        kp_error("raftstore",
                 "budget invariant broken by %s at ts %" PRId64 ": budget state '%s': %s",
                 kp_op_name(a->cmd->op), a->cmd->ts, s->id, why);
#ifndef NDEBUG
        abort();
#endif
        return kp_store__refuse(a, KP_ECONFLICT,
                                "invariant: budget state '%s': %s (refused; a bug)", s->id, why);
    }
    return KP_OK;
}

static struct kp_audit_entry *audit_for(struct kp_apply *a)
{
    const struct kp_command *cmd = a->cmd;
    const char *action = kp_op_name(cmd->op), *tgt = a->target;
    char result[512];
    if (a->res->code != KP_OK)
        snprintf(result, sizeof(result), "refused: %s", a->res->message);
    else if (a->detail[0] != '\0')
        snprintf(result, sizeof(result), "ok (%s)", a->detail);
    else
        snprintf(result, sizeof(result), "ok");
    if (a->res->code == KP_OK && cmd->op == KP_OP_AUDIT_ONLY) {
        action = cmd->body.audit_only->action;
        tgt = cmd->body.audit_only->target;
        snprintf(result, sizeof(result), "%s", cmd->body.audit_only->result);
    }
    return kp_store__audit_build(&a->st->audit, cmd->ts, &cmd->audit, action, tgt, result);
}

/* Make every table the changes touch ours and big enough. */
static int prepare_tables(struct kp_apply *a)
{
    uint32_t puts[KP_KIND_COUNT] = {0};
    bool touched[KP_KIND_COUNT] = {false};
    for (size_t i = 0; i < a->n; i++) {
        touched[a->changes[i].kind] = true;
        puts[a->changes[i].kind] += a->changes[i].put != NULL;
    }
    for (int k = 0; k < KP_KIND_COUNT; k++) {
        if (touched[k] && kp_store__table_prepare(&a->st->tables[k], puts[k]) != KP_OK)
            return KP_ENOMEM;
    }
    return KP_OK;
}

static void commit(struct kp_apply *a, uint64_t index, struct kp_audit_entry *entry)
{
    for (size_t i = 0; i < a->n; i++) {
        struct kp_change *c = &a->changes[i];
        if (c->put != NULL)
            kp_store__table_put(a->st->tables[c->kind], c->put);
        else
            kp_store__table_del(a->st->tables[c->kind], c->del);
        c->put = NULL;
    }
    if (a->cluster != NULL) {
        if (a->st->cluster != NULL)
            kp_store__entity_unref(&a->st->cluster->e);
        a->st->cluster = a->cluster;
    }
    a->cluster = NULL;
    if (entry != NULL) {
        kp_store__audit_append(&a->st->audit, entry);
        a->res->audit_seq = entry->seq;
    }
    a->st->applied_index = index;
}

int kp_fsm_apply(struct kp_fsm *fsm, uint64_t index, const void *buf, size_t len,
                 struct kp_fsm_result *res)
{
    struct kp_command cmd;
    struct kp_apply a = {.st = &fsm->st, .cmd = &cmd, .res = res};
    struct kp_audit_entry *entry = NULL;
    memset(res, 0, sizeof(*res));
    int rc = kp_command_decode(buf, len, &cmd, res->message, sizeof(res->message));
    res->op = cmd.op;
    if (rc == KP_OK)
        rc = dispatch(&a);
    if (rc == KP_OK)
        rc = check_budgets(&a);
    if (rc == KP_ENOMEM)
        goto err_nomem;
    res->code = rc;
    if (rc != KP_OK) {
        res->version = 0;
        memset(&res->lease, 0, sizeof(res->lease));
        discard(&a);
    }
    /* budget_lease is the routers' machine traffic (several commands a
     * second per router): it would push every operator's entry out of the
     * retained audit window within minutes, so it leaves none. Its effect
     * is visible in the budget state instead. */
    bool audited = cmd.op != KP_OP_BUDGET_LEASE;
    if ((audited && (entry = audit_for(&a)) == NULL) || prepare_tables(&a) != KP_OK)
        goto err_nomem;
    commit(&a, index, entry);
    discard(&a);
    kp_command_free(&cmd);
    return KP_OK;

err_nomem:
    kp_store__audit_entry_free(entry);
    discard(&a);
    kp_command_free(&cmd);
    memset(res, 0, sizeof(*res));
    res->code = KP_ENOMEM;
    snprintf(res->message, sizeof(res->message), "apply entry %" PRIu64 ": out of memory", index);
    return KP_ENOMEM;
}

/* --- lifetime and reads --------------------------------------------------------------------- */

struct kp_fsm *kp_fsm_new(void)
{
    struct kp_fsm *fsm = kp_calloc(1, sizeof(*fsm));
    if (fsm == NULL)
        return NULL;
    if (kp_store__state_init(&fsm->st) != KP_OK) {
        kp_free(fsm);
        return NULL;
    }
    return fsm;
}

void kp_fsm_free(struct kp_fsm *fsm)
{
    if (fsm == NULL)
        return;
    kp_store__state_free(&fsm->st);
    kp_free(fsm);
}

uint64_t kp_fsm_applied_index(const struct kp_fsm *fsm)
{
    return fsm->st.applied_index;
}

size_t kp_fsm_count(const struct kp_fsm *fsm, enum kp_kind kind)
{
    return (unsigned)kind < KP_KIND_COUNT ? fsm->st.tables[kind]->count : 0;
}

const struct kp_entity *kp_fsm_get(const struct kp_fsm *fsm, enum kp_kind kind, const char *id)
{
    return (unsigned)kind < KP_KIND_COUNT ? kp_store__get(&fsm->st, kind, id) : NULL;
}

const struct kp_cluster *kp_fsm_cluster(const struct kp_fsm *fsm)
{
    return fsm->st.cluster;
}

const struct kp_budget_window_state *kp_fsm_budget_window(const struct kp_fsm *fsm,
                                                          const char *policy_id, const char *budget)
{
    const struct kp_entity *s = kp_store__get(&fsm->st, KP_KIND_BUDGET_STATE, policy_id);
    return s != NULL ? kp_budget_state_window((const struct kp_budget_state *)s, budget) : NULL;
}

void kp_fsm_audit_head(const struct kp_fsm *fsm, uint64_t *seq, uint8_t hash[32])
{
    *seq = fsm->st.audit.seq;
    memcpy(hash, fsm->st.audit.hash, 32);
}

size_t kp_fsm_audit_count(const struct kp_fsm *fsm)
{
    return fsm->st.audit.count;
}

const struct kp_audit_entry *kp_fsm_audit_entry(const struct kp_fsm *fsm, size_t i)
{
    return kp_store__audit_at(&fsm->st.audit, i);
}

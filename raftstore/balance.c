/* Key balances in the state machine: set_key_balance and add_key_topup
 * (docs/balances.md, docs/registry.md).
 *
 * A balance records what an operator prepaid for a key: the credit and
 * the time metered cost counts from. It holds no spent figure: the meter
 * has that, and the control API and the key_balance alert rule subtract
 * it when they read the balance. So nothing a router does changes this
 * record; only operators do, and every change is audited.
 *
 *   (none) --set_key_balance--> recorded --add_key_topup--> recorded (credit +=)
 *                                   ^  |
 *                                   +--+ set_key_balance (credit and since replaced,
 *                                                         top-ups forgotten)
 *
 * delete_key_balance (or deleting the key) removes it. A top-up on a key
 * with no balance is refused: the credit it adds to must be set first, so
 * that since_ms is an operator's choice and not an accident. */
#include "raftstore/internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static const struct kp_key_balance *balance_get(const struct kp_apply *a, const char *id)
{
    return (const struct kp_key_balance *)kp_store__get(a->st, KP_KIND_KEY_BALANCE, id);
}

static int check_expect(struct kp_apply *a, const char *id, const struct kp_key_balance *cur)
{
    if (!a->cmd->has_expect_version)
        return KP_OK;
    uint64_t have = cur != NULL ? cur->e.version : 0, want = a->cmd->expect_version;
    if (have == want)
        return KP_OK;
    if (cur == NULL)
        return kp_store__refuse(a, KP_ECONFLICT,
                                "expect_version: key '%s' has no balance (expected %" PRIu64 ")",
                                id, want);
    return kp_store__refuse(a, KP_ECONFLICT,
                            "expect_version: balance of key '%s' is at version %" PRIu64
                            ", not %" PRIu64,
                            id, have, want);
}

/* The key an op names must exist and not be revoked. */
static int key_target(struct kp_apply *a, const char *id, const struct kp_key_balance **old)
{
    a->target = id;
    *old = NULL;
    const struct kp_key *k = (const struct kp_key *)kp_store__get(a->st, KP_KIND_KEY, id);
    if (k == NULL)
        return kp_store__refuse(a, KP_ENOENT, "no key '%s'", id);
    if (k->status == KP_KEY_REVOKED)
        return kp_store__refuse(a, KP_ECONFLICT, "key '%s' is revoked", id);
    *old = balance_get(a, id);
    return check_expect(a, id, *old);
}

static void stamp(struct kp_apply *a, struct kp_key_balance *b, const struct kp_key_balance *old)
{
    b->e.version = old != NULL ? old->e.version + 1 : 1;
    b->e.created_ms = old != NULL ? old->e.created_ms : a->cmd->ts;
    b->e.updated_ms = a->cmd->ts;
    a->res->version = b->e.version;
}

/* set_key_balance: the credit is now what the command says, from its
 * since_ms (the command's ts when 0). */
int kp_store__op_set_key_balance(struct kp_apply *a)
{
    const struct kp_cmd_set_balance *c = a->cmd->body.set_balance;
    const struct kp_key_balance *old = NULL;
    int rc = key_target(a, c->id, &old);
    if (rc != KP_OK)
        return rc;
    struct kp_key_balance *b = (struct kp_key_balance *)kp_store__entity_alloc(KP_KIND_KEY_BALANCE);
    if (b == NULL || (b->e.id = kp_strdup(c->id)) == NULL) {
        if (b != NULL)
            kp_store__entity_unref(&b->e);
        return KP_ENOMEM;
    }
    b->credit = c->credit;
    b->since_ms = c->since_ms != 0 ? c->since_ms : a->cmd->ts;
    stamp(a, b, old);
    snprintf(a->detail, sizeof(a->detail), "credit %" PRId64 " nano-USD since %" PRId64, b->credit,
             b->since_ms);
    return kp_store__stage(a, KP_KIND_KEY_BALANCE, &b->e, NULL);
}

/* Append @t to @b's top-ups, dropping the oldest beyond the bound. @t's
 * strings move into @b. */
static int push_topup(struct kp_key_balance *b, struct kp_balance_topup *t)
{
    uint32_t keep = b->ntopups < KP_BALANCE_TOPUPS_MAX ? b->ntopups : KP_BALANCE_TOPUPS_MAX - 1;
    uint32_t drop = b->ntopups - keep;
    struct kp_balance_topup *v = kp_calloc(keep + 1, sizeof(*v));
    if (v == NULL)
        return KP_ENOMEM;
    for (uint32_t i = 0; i < drop; i++) {
        kp_free(b->topups[i].by);
        kp_free(b->topups[i].note);
    }
    if (keep > 0)
        memcpy(v, b->topups + drop, keep * sizeof(*v));
    v[keep] = *t;
    memset(t, 0, sizeof(*t));
    kp_free(b->topups);
    b->topups = v;
    b->ntopups = keep + 1;
    return KP_OK;
}

/* add_key_topup: more credit on a recorded balance. */
int kp_store__op_add_key_topup(struct kp_apply *a)
{
    struct kp_cmd_add_topup *c = a->cmd->body.add_topup;
    const struct kp_key_balance *old = NULL;
    int rc = key_target(a, c->id, &old);
    if (rc != KP_OK)
        return rc;
    if (old == NULL)
        return kp_store__refuse(a, KP_ENOENT, "key '%s' has no balance: set its credit first",
                                c->id);
    if (c->amount > KP_BALANCE_CREDIT_MAX - old->credit)
        return kp_store__refuse(a, KP_EINVAL, "amount_nanousd: the credit would pass %lld nano-USD",
                                (long long)KP_BALANCE_CREDIT_MAX);
    struct kp_balance_topup t = {.amount = c->amount, .at_ms = a->cmd->ts, .note = c->note};
    if ((t.by = kp_strdup(a->cmd->audit.actor)) == NULL)
        return KP_ENOMEM;
    struct kp_key_balance *b = (struct kp_key_balance *)kp_store__entity_clone(&old->e);
    if (b == NULL) {
        kp_free(t.by);
        return KP_ENOMEM;
    }
    c->note = NULL; /* owned by t now */
    if ((rc = push_topup(b, &t)) != KP_OK) {
        kp_free(t.by);
        kp_free(t.note);
        kp_store__entity_unref(&b->e);
        return rc;
    }
    b->credit = old->credit + c->amount;
    stamp(a, b, old);
    snprintf(a->detail, sizeof(a->detail), "topped up %" PRId64 " nano-USD, credit %" PRId64,
             c->amount, b->credit);
    return kp_store__stage(a, KP_KIND_KEY_BALANCE, &b->e, NULL);
}

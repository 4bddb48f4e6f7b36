/* Views: immutable pictures of the registry for router workers, and the
 * slot through which the raft thread publishes them.
 *
 * A view holds one reference to each of the state machine's tables and to
 * the cluster settings. Building one is a dozen atomic increments whatever
 * the registry's size. The state machine never changes a table someone
 * else references (kp_store__table_prepare copies it first), and never
 * changes an entity at all, so a reader needs no lock for as long as it
 * holds the view. The price is paid by the writer: the first change to a
 * table after a view was taken copies that table's slot array (O(entities
 * of that kind), a memcpy plus one atomic increment per entity), once per
 * published view.
 *
 * The slot. kp_view_acquire loads the current pointer and takes a
 * reference; the publisher may swap the pointer and drop the old view in
 * between. To close that window a reader first registers in one of two
 * counters (chosen by a generation number), and the publisher, after the
 * swap, flips the generation and waits until the counter that readers of
 * the old pointer used drains. Readers never wait; the publisher
 * waits at most for the few instructions a registered reader needs. The
 * sequentially consistent atomics are what make the argument hold: a
 * reader whose registration the publisher did not see loads the pointer
 * after the swap.
 *
 * Releasing the last reference frees the view and whatever tables and
 * entities only it still held, on whichever thread released it. */
#include "raftstore/internal.h"

#include <sched.h>
#include <stdio.h>

struct kp_view {
    atomic_uint refs;
    uint64_t applied_index;
    struct kp_table *tables[KP_KIND_COUNT];
    struct kp_cluster *cluster;
};

struct kp_view *kp_fsm_view_build(struct kp_fsm *fsm)
{
    struct kp_view *v = kp_calloc(1, sizeof(*v));
    if (v == NULL)
        return NULL;
    atomic_init(&v->refs, 1);
    v->applied_index = fsm->st.applied_index;
    for (int k = 0; k < KP_KIND_COUNT; k++)
        v->tables[k] = kp_store__table_ref(fsm->st.tables[k]);
    if (fsm->st.cluster != NULL)
        v->cluster = (struct kp_cluster *)kp_store__entity_ref(&fsm->st.cluster->e);
    return v;
}

struct kp_view *kp_view_hold(struct kp_view *view)
{
    atomic_fetch_add_explicit(&view->refs, 1, memory_order_relaxed);
    return view;
}

void kp_view_release(struct kp_view *view)
{
    if (view == NULL || atomic_fetch_sub_explicit(&view->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (int k = 0; k < KP_KIND_COUNT; k++)
        kp_store__table_unref(view->tables[k]);
    if (view->cluster != NULL)
        kp_store__entity_unref(&view->cluster->e);
    kp_free(view);
}

uint64_t kp_view_applied_index(const struct kp_view *view)
{
    return view->applied_index;
}

const struct kp_cluster *kp_view_cluster(const struct kp_view *view)
{
    return view->cluster;
}

const struct kp_entity *kp_view_get(const struct kp_view *view, enum kp_kind kind, const char *id)
{
    if ((unsigned)kind >= KP_KIND_COUNT)
        return NULL;
    return kp_store__table_get(view->tables[kind], id);
}

#define LOOKUP(fn, type, kind)                                                                     \
    const struct type *fn(const struct kp_view *view, const char *id)                              \
    {                                                                                              \
        return (const struct type *)kp_store__table_get(view->tables[kind], id);                   \
    }

LOOKUP(kp_view_provider, kp_provider, KP_KIND_PROVIDER)
LOOKUP(kp_view_key, kp_key, KP_KIND_KEY)
LOOKUP(kp_view_pool, kp_pool, KP_KIND_POOL)
LOOKUP(kp_view_tenant, kp_tenant, KP_KIND_TENANT)
LOOKUP(kp_view_project, kp_project, KP_KIND_PROJECT)
LOOKUP(kp_view_token, kp_token, KP_KIND_TOKEN)
LOOKUP(kp_view_policy, kp_policy, KP_KIND_POLICY)
LOOKUP(kp_view_price, kp_price, KP_KIND_PRICE)
LOOKUP(kp_view_member, kp_member, KP_KIND_MEMBER)
LOOKUP(kp_view_key_health, kp_key_health, KP_KIND_KEY_HEALTH)
LOOKUP(kp_view_budget_state, kp_budget_state, KP_KIND_BUDGET_STATE)
LOOKUP(kp_view_key_balance, kp_key_balance, KP_KIND_KEY_BALANCE)

const struct kp_budget_window_state *
kp_view_budget_window(const struct kp_view *view, const char *policy_id, const char *budget)
{
    const struct kp_budget_state *s = kp_view_budget_state(view, policy_id);
    return s != NULL ? kp_budget_state_window(s, budget) : NULL;
}

const struct kp_lease_node *kp_view_lease_node(const struct kp_view *view, uint64_t node_id)
{
    char id[24];
    snprintf(id, sizeof(id), "%llu", (unsigned long long)node_id);
    return (const struct kp_lease_node *)kp_store__table_get(view->tables[KP_KIND_LEASE_NODE], id);
}

const struct kp_freeze *kp_view_freeze(const struct kp_view *view, int scope, const char *target)
{
    const struct kp_table *t = view->tables[KP_KIND_FREEZE];
    const char *name = kp_freeze_scope_name(scope);
    char id[160];
    if (t->count == 0 || name == NULL || target == NULL || target[0] == '\0')
        return NULL;
    int n = snprintf(id, sizeof(id), "%s:%s", name, target);
    if (n < 0 || (size_t)n >= sizeof(id))
        return NULL; /* longer than any id */
    return (const struct kp_freeze *)kp_store__table_get(t, id);
}

const struct kp_key *kp_view_pool_key(const struct kp_view *view, const struct kp_pool *pool,
                                      uint32_t i)
{
    if (i >= pool->nmembers)
        return NULL;
    return kp_view_key(view, pool->members[i].key);
}

size_t kp_view_count(const struct kp_view *view, enum kp_kind kind)
{
    return (unsigned)kind < KP_KIND_COUNT ? view->tables[kind]->count : 0;
}

int kp_view_each(const struct kp_view *view, enum kp_kind kind,
                 int (*fn)(const struct kp_entity *e, void *arg), void *arg)
{
    if ((unsigned)kind >= KP_KIND_COUNT)
        return 0;
    const struct kp_table *t = view->tables[kind];
    for (uint32_t i = 0; i < t->cap; i++) {
        int rc = t->slots[i] != NULL ? fn(t->slots[i], arg) : 0;
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* --- the slot ------------------------------------------------------------------------------ */

void kp_view_slot_init(struct kp_view_slot *slot)
{
    atomic_init(&slot->current, NULL);
    atomic_init(&slot->gen, 0);
    atomic_init(&slot->active[0], 0);
    atomic_init(&slot->active[1], 0);
}

void kp_view_slot_close(struct kp_view_slot *slot)
{
    kp_view_release(atomic_exchange(&slot->current, NULL));
}

struct kp_view *kp_view_acquire(struct kp_view_slot *slot)
{
    unsigned g = atomic_load(&slot->gen) & 1;
    atomic_fetch_add(&slot->active[g], 1);
    struct kp_view *v = atomic_load(&slot->current);
    if (v != NULL)
        kp_view_hold(v);
    atomic_fetch_sub(&slot->active[g], 1);
    return v;
}

void kp_view_publish(struct kp_view_slot *slot, struct kp_view *view)
{
    if (view == NULL)
        return; /* a failed build: readers keep the last view */
    struct kp_view *old = atomic_exchange(&slot->current, view);
    /* A reader that can still see @old loaded the pointer before the swap,
     * so it read the generation before the flip below and registered in
     * active[g]. Readers arriving after the flip use the other counter, so
     * this wait cannot be starved. */
    unsigned g = atomic_fetch_add(&slot->gen, 1) & 1;
    while (atomic_load(&slot->active[g]) != 0)
        sched_yield();
    kp_view_release(old);
}

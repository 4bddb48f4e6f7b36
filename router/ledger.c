/* The node's budget ledger: what this node holds of every budget's grant,
 * shared by the workers that reserve against it and the lease client that
 * reports to the leader (docs/budgets.md, "The router side").
 *
 * One slot per (policy, budget), in a fixed open-addressing table keyed
 * by a 64-bit hash of the pair, claimed with one compare-and-swap and
 * never freed (a deleted budget's slot goes idle). Each slot has its own
 * mutex, held for a few additions: a reservation, a settle, or the lease
 * client reading or updating the slot. Different budgets never contend.
 *
 * Per slot, for the window the grant belongs to:
 *
 *     grant     what the state machine said this node holds (last answer)
 *     inflight  settled and sent in the command in flight (the state
 *               machine takes it out of the grant when it applies it)
 *     pending   settled since that command was built
 *     reserved  the worst cases of calls still running
 *     avail   = grant - inflight - pending - reserved
 *
 * A call reserves only out of avail, and a call's actual cost never passes
 * its reservation (the gateway caps max_tokens to fit), so the node never
 * spends more than it was granted: this is the router's half of the
 * invariant spent + grants <= limit. When an answer comes, grant is
 * replaced by the answer's (so a reset, a replay or a rollover leaves no
 * drift) and inflight goes to 0. An answer naming a later window moves
 * what is reserved and pending to the old_* fields: those calls settle
 * against the window they reserved in. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "router_internal.h"

#define SLOTS   4096 /* power of two */
#define PROBE   64
#define WATCHES 256

/* A grant unused this long is given back so that other nodes can use it. */
#define IDLE_RELEASE_MS 30000
/* How many seconds of this node's recent spend a grant should cover. */
#define GRANT_SECONDS 2

struct kp_ledger_slot {
    atomic_uint_least64_t tag; /* hash of the names; 0 = free */
    atomic_bool named;         /* the names below are written */
    char policy[KP_LEDGER_POLICY_MAX + 1];
    char budget[KP_LEDGER_BUDGET_MAX + 1];
    pthread_mutex_t mu;
    /* under mu: */
    struct kp_budget_window_def window_def; /* from the last reservation */
    bool hard;
    int64_t window; /* start of the grant's window; 0: never granted */
    kp_nanousd grant, inflight, pending, reserved;
    int64_t old_window;
    kp_nanousd old_reserved, old_pending, old_inflight;
    bool spent_held;     /* the first item of this process said spend_held (below) */
    bool adopted;        /* the registry says an earlier process held a grant here */
    kp_nanousd need;     /* largest shortfall of a waiting call since the last build */
    kp_nanousd demand;   /* reserved since the last build */
    double rate;         /* nano-USD reserved per second, smoothed */
    int64_t last_use_ms; /* last reservation or settle */
    int64_t last_build_ms;
    bool in_batch;     /* part of the command in flight */
    bool release_sent; /* that command releases the grant */
    bool give_back;    /* a call found the budget exhausted: release what is left */
    bool exhausted;    /* the last ask got nothing */
    bool waited;       /* a call waits: wake it when a settle frees room */
    uint64_t answers;  /* answers applied (a waiting call knows one came) */
    uint32_t epoch;    /* bumped when the slot is forgotten: older holds settle nowhere */
};

struct kp_budget_ledger {
    struct kp_ledger_slot slots[SLOTS];
    pthread_mutex_t watch_mu;
    uv_async_t *watch[WATCHES];
    unsigned nwatch;
    void (*need_cb)(void *arg);
    void *need_arg;
    atomic_bool urgent;
    atomic_uint used; /* slots claimed */
};

struct kp_budget_ledger *kp_budget_ledger_new(void (*need_cb)(void *arg), void *arg)
{
    struct kp_budget_ledger *l = kp_calloc(1, sizeof(*l));
    if (l == NULL)
        return NULL;
    for (size_t i = 0; i < SLOTS; i++)
        pthread_mutex_init(&l->slots[i].mu, NULL);
    pthread_mutex_init(&l->watch_mu, NULL);
    l->need_cb = need_cb;
    l->need_arg = arg;
    return l;
}

void kp_budget_ledger_free(struct kp_budget_ledger *l)
{
    if (l == NULL)
        return;
    for (size_t i = 0; i < SLOTS; i++)
        pthread_mutex_destroy(&l->slots[i].mu);
    pthread_mutex_destroy(&l->watch_mu);
    kp_free(l);
}

int kp_budget_ledger_watch(struct kp_budget_ledger *l, uv_async_t *async)
{
    int rc = KP_EBUSY;
    pthread_mutex_lock(&l->watch_mu);
    if (l->nwatch < WATCHES) {
        l->watch[l->nwatch++] = async;
        rc = KP_OK;
    }
    pthread_mutex_unlock(&l->watch_mu);
    return rc;
}

void kp_budget_ledger_unwatch(struct kp_budget_ledger *l, uv_async_t *async)
{
    pthread_mutex_lock(&l->watch_mu);
    for (unsigned i = 0; i < l->nwatch; i++)
        if (l->watch[i] == async) {
            l->watch[i] = l->watch[--l->nwatch];
            break;
        }
    pthread_mutex_unlock(&l->watch_mu);
}

static void wake_watchers(struct kp_budget_ledger *l)
{
    pthread_mutex_lock(&l->watch_mu);
    for (unsigned i = 0; i < l->nwatch; i++)
        uv_async_send(l->watch[i]);
    pthread_mutex_unlock(&l->watch_mu);
}

/* --- slots -------------------------------------------------------------------- */

static uint64_t pair_hash(const char *policy, const char *budget)
{
    uint64_t h = 1469598103934665603ull;
    for (const char *s = policy; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    h = (h ^ 0x1f) * 1099511628211ull;
    for (const char *s = budget; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h ? h : 1;
}

static bool names_are(struct kp_ledger_slot *s, const char *policy, const char *budget)
{
    while (!atomic_load_explicit(&s->named, memory_order_acquire))
        sched_yield(); /* claimed a few instructions ago: its names are on the way */
    return strcmp(s->policy, policy) == 0 && strcmp(s->budget, budget) == 0;
}

struct kp_ledger_slot *kp_budget_ledger__slot(struct kp_budget_ledger *l, const char *policy,
                                              const char *budget)
{
    if (strlen(policy) > KP_LEDGER_POLICY_MAX || strlen(budget) > KP_LEDGER_BUDGET_MAX)
        return NULL;
    uint64_t tag = pair_hash(policy, budget);
    for (uint32_t i = 0; i < PROBE; i++) {
        struct kp_ledger_slot *s = &l->slots[(tag + i) & (SLOTS - 1)];
        uint64_t seen = atomic_load_explicit(&s->tag, memory_order_acquire);
        if (seen == 0) {
            uint64_t zero = 0;
            if (atomic_compare_exchange_strong(&s->tag, &zero, tag)) {
                snprintf(s->policy, sizeof(s->policy), "%s", policy);
                snprintf(s->budget, sizeof(s->budget), "%s", budget);
                atomic_store_explicit(&s->named, true, memory_order_release);
                atomic_fetch_add(&l->used, 1);
                return s;
            }
            seen = zero;
        }
        if (seen == tag && names_are(s, policy, budget))
            return s;
    }
    return NULL;
}

/* avail of a slot, under its lock. */
static kp_nanousd avail_of(const struct kp_ledger_slot *s)
{
    return s->grant - s->inflight - s->pending - s->reserved;
}

static void ask_now(struct kp_budget_ledger *l)
{
    if (!atomic_exchange(&l->urgent, true) && l->need_cb != NULL)
        l->need_cb(l->need_arg);
}

/* --- the workers' side ------------------------------------------------------------ */

enum kp_ledger_result kp_budget_ledger_reserve(struct kp_budget_ledger *l, struct kp_ledger_hold *h,
                                               int64_t now_ms)
{
    struct kp_ledger_slot *s = h->slot;
    enum kp_ledger_result rc = KP_LEDGER_OK;
    bool low = false;
    pthread_mutex_lock(&s->mu);
    s->window_def = h->window_def;
    s->hard = h->hard;
    s->last_use_ms = now_ms;
    if (!h->hard) {
        /* Soft: nothing to hold back; the spend is reported all the same. */
        h->amount = 0;
        h->window = s->window ? s->window : kp_budget_window_def_start(&h->window_def, now_ms);
    } else if (s->window == 0 || now_ms >= kp_budget_window_def_end(&s->window_def, s->window) ||
               s->release_sent) {
        /* No grant yet, one of a window that ended, or one being given
         * back (the state machine will have dropped all of it, whatever
         * is reserved meanwhile): ask. */
        if (h->amount > s->need)
            s->need = h->amount;
        s->exhausted = false;
        rc = KP_LEDGER_WAIT;
    } else if (avail_of(s) >= h->amount) {
        s->reserved += h->amount;
        s->demand += h->amount;
        h->window = s->window;
        low = avail_of(s) < (kp_nanousd)(s->rate * GRANT_SECONDS) / 4;
    } else {
        if (h->amount > s->need)
            s->need = h->amount;
        h->avail = avail_of(s);
        /* Exhausted once the last ask got nothing and no call of this
         * node still holds a reservation that could come back. */
        rc = s->exhausted && s->answers > h->answers_seen && s->reserved == 0 ? KP_LEDGER_EXHAUSTED
                                                                              : KP_LEDGER_WAIT;
    }
    h->answers_seen = s->answers;
    h->epoch = s->epoch;
    if (rc == KP_LEDGER_WAIT)
        s->waited = true;
    pthread_mutex_unlock(&s->mu);
    if (rc == KP_LEDGER_WAIT || low)
        ask_now(l);
    return rc;
}

void kp_budget_ledger_settle(struct kp_budget_ledger *l, const struct kp_ledger_hold *h,
                             kp_nanousd actual, int64_t now_ms)
{
    struct kp_ledger_slot *s = h->slot;
    if (actual < 0)
        actual = 0;
    pthread_mutex_lock(&s->mu);
    if (h->epoch != s->epoch) {
        /* The budget was deleted while the call ran: nothing to report. */
        pthread_mutex_unlock(&s->mu);
        return;
    }
    s->last_use_ms = now_ms;
    if (h->window == s->window || s->window == 0) {
        s->reserved -= h->amount;
        s->pending += actual;
        if (s->window == 0)
            s->window = h->window; /* a soft budget's first settle */
    } else {
        /* Reserved in the window before the current grant's. */
        s->old_reserved -= h->amount;
        if (s->old_reserved < 0)
            s->old_reserved = 0;
        if (s->old_window != h->window && s->old_pending == 0 && s->old_inflight == 0)
            s->old_window = h->window;
        s->old_pending += actual;
    }
    bool wake = s->waited && h->amount > actual;
    if (wake)
        s->waited = false;
    pthread_mutex_unlock(&s->mu);
    if (wake)
        wake_watchers(l);
}

void kp_budget_ledger_give_back(struct kp_budget_ledger *l, const struct kp_ledger_hold *h)
{
    (void)l;
    pthread_mutex_lock(&h->slot->mu);
    h->slot->give_back = true;
    pthread_mutex_unlock(&h->slot->mu);
}

/* --- the lease client's side ------------------------------------------------------- */

bool kp_budget_ledger_urgent(struct kp_budget_ledger *l)
{
    return atomic_load(&l->urgent);
}

/* What a slot asks for: enough for GRANT_SECONDS of its recent spend, and
 * for the largest call waiting. */
static kp_nanousd want_of(struct kp_ledger_slot *s, int64_t now_ms)
{
    double secs = s->last_build_ms ? (double)(now_ms - s->last_build_ms) / 1000.0 : 0.1;
    if (secs < 0.05)
        secs = 0.05;
    double r = (double)s->demand / secs;
    s->rate = s->rate == 0 ? r : 0.7 * s->rate + 0.3 * r;
    s->demand = 0;
    s->last_build_ms = now_ms;
    if (!s->hard)
        return 0;
    kp_nanousd target = (kp_nanousd)(s->rate * GRANT_SECONDS) + s->need;
    kp_nanousd a = s->window ? avail_of(s) : 0;
    return target > a ? target - a : 0;
}

/* Fill @it for slot @s; false when it has nothing to say. */
static bool build_item(struct kp_ledger_slot *s, int64_t now_ms, bool final,
                       struct kp_lease_item *it)
{
    memset(it, 0, sizeof(*it));
    it->policy = s->policy;
    it->budget = s->budget;
    bool window_over =
        s->window != 0 && now_ms >= kp_budget_window_def_end(&s->window_def, s->window);
    if (s->old_pending > 0) {
        it->window_start_ms = s->old_window;
        it->settled = s->old_pending;
        s->old_inflight = s->old_pending;
        s->old_pending = 0;
    } else {
        it->window_start_ms = s->window;
        it->settled = s->pending;
        s->inflight = s->pending;
        s->pending = 0;
    }
    bool idle = now_ms - s->last_use_ms > IDLE_RELEASE_MS;
    kp_nanousd held = s->grant - s->inflight;
    if (s->hard && s->reserved == 0 && held > 0 && !window_over &&
        (final || idle || s->give_back)) {
        it->release = true;
        s->release_sent = true;
        s->give_back = false;
    }
    /* The first item of a slot in this process counts what the node held
     * before it (an earlier process's grant, left by a crash) as spent:
     * calls that died with that process may have spent all of it. Until
     * that answer the slot holds nothing, so nothing of this process is
     * lost with it. */
    it->spend_held = !s->spent_held;
    /* Giving back asks for nothing: the calls that found the budget
     * exhausted ask again, and pick up what others gave back. */
    it->want = final || it->release || (idle && s->need == 0) ? 0 : want_of(s, now_ms);
    if (it->want > KP_LEASE_AMOUNT_MAX)
        it->want = KP_LEASE_AMOUNT_MAX;
    if (it->settled > KP_LEASE_AMOUNT_MAX)
        it->settled = KP_LEASE_AMOUNT_MAX; /* a billion dollars in 100 ms: a bug upstream */
    s->need = 0;
    if (it->window_start_ms == 0)
        it->window_start_ms = kp_budget_window_def_start(&s->window_def, now_ms);
    return it->settled > 0 || it->want > 0 || it->release || (s->adopted && !s->spent_held);
}

unsigned kp_budget_ledger_build(struct kp_budget_ledger *l, int64_t now_ms, bool final,
                                struct kp_lease_batch *b)
{
    b->n = 0;
    atomic_store(&l->urgent, false);
    if (atomic_load(&l->used) == 0)
        return 0;
    for (size_t i = 0; i < SLOTS && b->n < KP_LEASE_ITEMS_MAX; i++) {
        struct kp_ledger_slot *s = &l->slots[i];
        if (atomic_load_explicit(&s->tag, memory_order_acquire) == 0 ||
            !atomic_load_explicit(&s->named, memory_order_acquire))
            continue;
        pthread_mutex_lock(&s->mu);
        if (!s->in_batch && build_item(s, now_ms, final, &b->items[b->n])) {
            s->in_batch = true;
            b->slots[b->n++] = s;
        } else if (!s->in_batch) {
            /* Nothing to send: undo what build_item moved. */
            s->pending += s->inflight;
            s->inflight = 0;
            s->old_pending += s->old_inflight;
            s->old_inflight = 0;
        }
        pthread_mutex_unlock(&s->mu);
    }
    return b->n;
}

/* The command in flight was given up (never to be retried): its settles
 * go back to pending, to be sent in the next one. */
void kp_budget_ledger_unsend(struct kp_budget_ledger *l, struct kp_lease_batch *b, unsigned i)
{
    (void)l;
    struct kp_ledger_slot *s = b->slots[i];
    pthread_mutex_lock(&s->mu);
    s->pending += s->inflight;
    s->inflight = 0;
    s->old_pending += s->old_inflight;
    s->old_inflight = 0;
    s->in_batch = false;
    s->release_sent = false;
    pthread_mutex_unlock(&s->mu);
}

void kp_budget_ledger_answer(struct kp_budget_ledger *l, struct kp_lease_batch *b, unsigned i,
                             const struct kp_lease_grant *g)
{
    struct kp_ledger_slot *s = b->slots[i];
    const struct kp_lease_item *it = &b->items[i];
    pthread_mutex_lock(&s->mu);
    s->inflight = 0;
    s->old_inflight = 0;
    if (g->window_start_ms > s->window) {
        /* A new window: calls still running settle against the old one. */
        if (s->window != 0) {
            s->old_window = s->window;
            s->old_reserved += s->reserved;
            s->old_pending += s->pending;
        }
        s->reserved = 0;
        s->pending = 0;
        s->window = g->window_start_ms;
    }
    if (g->window_start_ms == s->window)
        s->grant = g->grant;
    if (it->spend_held)
        s->spent_held = true;
    s->exhausted = it->want > 0 && g->granted == 0;
    s->in_batch = false;
    s->release_sent = false;
    s->answers++;
    pthread_mutex_unlock(&s->mu);
    (void)l;
}

void kp_budget_ledger_adopt(struct kp_budget_ledger *l, const char *policy, const char *budget,
                            const struct kp_budget_window_def *def, bool hard, int64_t window,
                            kp_nanousd grant)
{
    struct kp_ledger_slot *s = kp_budget_ledger__slot(l, policy, budget);
    if (s == NULL || grant <= 0)
        return;
    pthread_mutex_lock(&s->mu);
    if (s->window == 0 && s->answers == 0) {
        /* Not a grant of this process: nothing to reserve against; the
         * first item (spend_held) turns it into spend. */
        s->window_def = *def;
        s->hard = hard;
        s->adopted = true;
        s->last_use_ms = kp_now_unix_ms();
    }
    (void)window;
    (void)grant;
    pthread_mutex_unlock(&s->mu);
}

void kp_budget_ledger_forget(struct kp_budget_ledger *l, struct kp_lease_batch *b, unsigned i)
{
    (void)l;
    struct kp_ledger_slot *s = b->slots[i];
    pthread_mutex_lock(&s->mu);
    s->window = 0;
    s->grant = s->inflight = s->pending = s->reserved = s->need = s->demand = 0;
    s->old_window = 0;
    s->old_reserved = s->old_pending = s->old_inflight = 0;
    s->rate = 0;
    s->in_batch = s->release_sent = s->give_back = s->exhausted = false;
    s->answers++; /* waiting calls look again (and find no budget) */
    s->epoch++;
    pthread_mutex_unlock(&s->mu);
}

void kp_budget_ledger_answered(struct kp_budget_ledger *l)
{
    wake_watchers(l);
}

bool kp_budget_ledger_holds(struct kp_budget_ledger *l)
{
    for (size_t i = 0; i < SLOTS; i++) {
        struct kp_ledger_slot *s = &l->slots[i];
        if (atomic_load_explicit(&s->tag, memory_order_acquire) == 0 ||
            !atomic_load_explicit(&s->named, memory_order_acquire))
            continue;
        pthread_mutex_lock(&s->mu);
        bool holds = s->grant > 0 || s->pending > 0 || s->old_pending > 0 || s->inflight > 0 ||
                     (s->adopted && !s->spent_held);
        pthread_mutex_unlock(&s->mu);
        if (holds)
            return true;
    }
    return false;
}

void kp_budget_ledger_local(struct kp_budget_ledger *l, const char *policy, const char *budget,
                            struct kp_ledger_local *out)
{
    memset(out, 0, sizeof(*out));
    struct kp_ledger_slot *s = kp_budget_ledger__slot(l, policy, budget);
    if (s == NULL)
        return;
    pthread_mutex_lock(&s->mu);
    out->window = s->window;
    out->grant = s->grant;
    out->reserved = s->reserved + s->old_reserved;
    out->unreported = s->pending + s->inflight + s->old_pending + s->old_inflight;
    out->rate_per_s = s->rate;
    pthread_mutex_unlock(&s->mu);
}

/* Per-worker memory of how each key has been doing, so that one call's
 * failure spares the next calls:
 *
 *   rate_limit (429)          cooling down for the provider's Retry-After
 *                             (1 s when it gave none, at most 10 minutes)
 *   server, connect, timeout  after 3 in a row (or the caller's open_after,
 *                             when more: one call's retries all fail
 *                             before it opens) the breaker opens for 5 s,
 *                             doubling on each reopening up to 2 minutes;
 *                             then one call may try the key (half-open):
 *                             success closes it, failure reopens it
 *   a success                 closes the breaker, forgets the failures
 *
 * Keys that are unusable for everyone (auth, quota) are not handled here
 * but through the registry (node/health.c). The same table keeps each
 * key's attempts in flight and its smoothed time to answer, which the
 * least_inflight and lowest_latency pool strategies read (select.c). One table per worker thread:
 * no locks; each worker learns on its own, which costs at most a few
 * failed attempts per worker. Keys hash into a table with open addressing
 * (16 probes); when those are all busy the entry whose wait ends first
 * gives way. */
#include <string.h>

#include "router_internal.h"

#define SLOTS 1024 /* power of two */
#define PROBE 16   /* slots looked at per key (open addressing) */

enum {
    OPEN_AFTER = 3,
    OPEN_MS = 5000,
    OPEN_MAX_MS = 120000,
    RETRY_AFTER_DEFAULT_MS = 1000,
    RETRY_AFTER_MAX_MS = 600000,
};

struct slot {
    char key[129];
    int64_t until_ms;    /* not tried before then */
    int64_t trial_until; /* half-open: one call is trying the key until then */
    unsigned failures;   /* server-side failures in a row */
    uint32_t open_ms;    /* the breaker's last open period */
    bool rate_limited;   /* the wait comes from a 429 */
    unsigned inflight;   /* this worker's attempts on the key right now */
    uint64_t ewma_us;    /* time to the answer's head, smoothed; 0: unknown */
};

struct kp_breakers {
    struct slot slots[SLOTS];
};

struct kp_breakers *kp_breakers_new(void)
{
    return kp_calloc(1, sizeof(struct kp_breakers));
}

void kp_breakers_free(struct kp_breakers *b)
{
    for (size_t i = 0; b != NULL && i < SLOTS; i++)
        if (b->slots[i].key[0] != '\0' && b->slots[i].open_ms != 0)
            kp_router__count_tripped(b->slots[i].key, -1); /* the worker is gone */
    kp_free(b);
}

/* A slot that holds nothing worth keeping: empty, or a key with no
 * failures whose wait is over. */
static bool idle(const struct slot *s, int64_t now_ms)
{
    return s->key[0] == '\0' ||
           (s->failures == 0 && s->until_ms <= now_ms && s->inflight == 0 && s->ewma_us == 0);
}

/* The key's slot among its PROBE candidates; with @create, an idle one
 * (else the one whose wait ends first) is taken for it. */
static struct slot *find(struct kp_breakers *b, const char *key, bool create, int64_t now_ms)
{
    uint32_t h = kp_fnv1a(KP_FNV1A_INIT, key, strlen(key));
    struct slot *spare = NULL;
    for (uint32_t i = 0; i < PROBE; i++) {
        struct slot *s = &b->slots[(h + i) & (SLOTS - 1)];
        if (strncmp(s->key, key, sizeof(s->key) - 1) == 0 && s->key[0] != '\0')
            return s;
        if (spare == NULL ||
            (!idle(spare, now_ms) && (idle(s, now_ms) || s->until_ms < spare->until_ms)))
            spare = s;
    }
    if (!create)
        return NULL;
    if (spare->key[0] != '\0' && spare->open_ms != 0)
        kp_router__count_tripped(spare->key, -1); /* forgotten here */
    memset(spare, 0, sizeof(*spare));
    size_t n = strlen(key);
    memcpy(spare->key, key, n < sizeof(spare->key) - 1 ? n : sizeof(spare->key) - 1);
    return spare;
}

int64_t kp_breaker_wait_ms(struct kp_breakers *b, const char *key, int64_t now_ms,
                           bool *rate_limited)
{
    struct slot *s = find(b, key, false, now_ms);
    if (s == NULL)
        return 0;
    if (rate_limited != NULL)
        *rate_limited = s->rate_limited;
    if (s->until_ms > now_ms)
        return s->until_ms - now_ms;
    if (s->open_ms > 0 && !s->rate_limited) {
        /* Half-open: one call at a time may try the key (for a few
         * seconds, in case that call never reaches it). */
        if (s->trial_until > now_ms)
            return s->trial_until - now_ms;
        s->trial_until = now_ms + OPEN_MS;
    }
    return 0;
}

bool kp_breaker_open(struct kp_breakers *b, const char *key, int64_t now_ms)
{
    struct slot *s = find(b, key, false, now_ms);
    return s != NULL && s->until_ms > now_ms;
}

void kp_breaker_failure(struct kp_breakers *b, const char *key, const char *cls,
                        int64_t retry_after_ms, unsigned open_after, int64_t now_ms)
{
    if (open_after < OPEN_AFTER)
        open_after = OPEN_AFTER;
    struct slot *s = find(b, key, true, now_ms);
    if (strcmp(cls, "rate_limit") == 0) {
        int64_t wait = retry_after_ms > 0 ? retry_after_ms : RETRY_AFTER_DEFAULT_MS;
        if (wait > RETRY_AFTER_MAX_MS)
            wait = RETRY_AFTER_MAX_MS;
        s->until_ms = now_ms + wait;
        s->rate_limited = true;
        kp_router__count_cooldown(key, "rate_limit");
        return;
    }
    if (strcmp(cls, "server") != 0 && strcmp(cls, "connect") != 0 && strcmp(cls, "timeout") != 0)
        return;
    s->rate_limited = false;
    if (++s->failures < open_after)
        return;
    if (s->open_ms == 0)
        kp_router__count_tripped(key, 1);
    s->open_ms = s->open_ms == 0 ? OPEN_MS : s->open_ms * 2;
    if (s->open_ms > OPEN_MAX_MS)
        s->open_ms = OPEN_MAX_MS;
    s->until_ms = now_ms + s->open_ms;
    s->trial_until = 0;
    s->failures = open_after - 1; /* half-open: the next failure reopens */
    kp_router__count_cooldown(key, "breaker");
}

void kp_breaker_success(struct kp_breakers *b, const char *key)
{
    struct slot *s = find(b, key, false, 0);
    if (s != NULL) {
        if (s->open_ms != 0)
            kp_router__count_tripped(s->key, -1);
        s->until_ms = s->trial_until = 0;
        s->failures = 0;
        s->open_ms = 0;
        s->rate_limited = false;
    }
}

/* --- load and latency, for the pool strategies ------------------------------------ */

void kp_keystat_begin(struct kp_breakers *b, const char *key)
{
    struct slot *s = find(b, key, true, 0);
    s->inflight++;
}

void kp_keystat_end(struct kp_breakers *b, const char *key, uint64_t latency_us)
{
    struct slot *s = find(b, key, false, 0);
    if (s == NULL)
        return;
    if (s->inflight > 0)
        s->inflight--;
    if (latency_us > 0) /* EWMA with weight 1/5 for the newest sample */
        s->ewma_us = s->ewma_us == 0 ? latency_us : (s->ewma_us * 4 + latency_us) / 5;
}

void kp_keystat_get(struct kp_breakers *b, const char *key, unsigned *inflight, uint64_t *ewma_us)
{
    struct slot *s = find(b, key, false, 0);
    *inflight = s ? s->inflight : 0;
    *ewma_us = s ? s->ewma_us : 0;
}

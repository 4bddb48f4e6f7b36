/* The worker's cache of opened provider secrets, so a call does not
 * unwrap and decrypt (two AES-GCM operations) every time. Entries are keyed
 * by key id and secret version: a rotation or rewrap gives a new version
 * (or a new key version) and the old entry is replaced on next use; the
 * plaintext lives only in struct kp_secret memory (locked, wiped on free).
 * One cache per worker thread, so no locks. */
#include <stdio.h>
#include <string.h>

#include "router_internal.h"

#define SLOTS 1024 /* power of two */

struct slot {
    char *key_id;
    uint64_t key_version; /* the key entity's version: a rewrap bumps it */
    uint32_t secret_version;
    struct kp_secret *secret;
};

struct kp_secret_cache {
    struct slot slots[SLOTS];
};

struct kp_secret_cache *kp_secret_cache_new(void)
{
    return kp_calloc(1, sizeof(struct kp_secret_cache));
}

static void slot_clear(struct slot *s)
{
    kp_free(s->key_id);
    kp_secret_free(s->secret);
    memset(s, 0, sizeof(*s));
}

void kp_secret_cache_free(struct kp_secret_cache *sc)
{
    if (sc == NULL)
        return;
    for (size_t i = 0; i < SLOTS; i++)
        slot_clear(&sc->slots[i]);
    kp_free(sc);
}

const struct kp_secret *kp_secret_cache_get(struct kp_secret_cache *sc,
                                            const struct kp_router_shared *sh,
                                            const struct kp_key *key, char *errmsg, size_t errlen)
{
    const struct kp_key_secret *ks = kp_key_primary(key);
    if (ks == NULL || ks->sealed.n == 0) {
        snprintf(errmsg, errlen, "key %s has no usable secret", key->e.id);
        return NULL;
    }
    /* One slot per key id (a collision just evicts). */
    struct slot *s =
        &sc->slots[kp_fnv1a(KP_FNV1A_INIT, key->e.id, strlen(key->e.id)) & (SLOTS - 1)];
    if (s->key_id != NULL && strcmp(s->key_id, key->e.id) == 0 &&
        s->key_version == key->e.version && s->secret_version == ks->version)
        return s->secret;
    slot_clear(s);
    struct kp_secret *secret = NULL;
    char why[256];
    int rc = kp_seal_open(sh->kek, ks->sealed.p, ks->sealed.n, key->e.id, ks->version, &secret, why,
                          sizeof(why));
    if (rc == KP_EPERM && sh->prev_kek != NULL)
        rc = kp_seal_open(sh->prev_kek, ks->sealed.p, ks->sealed.n, key->e.id, ks->version, &secret,
                          why, sizeof(why));
    if (rc != KP_OK) {
        snprintf(errmsg, errlen, "key %s: cannot open its secret: %s", key->e.id, why);
        return NULL;
    }
    s->key_id = kp_strdup(key->e.id);
    if (s->key_id == NULL) {
        kp_secret_free(secret);
        snprintf(errmsg, errlen, "out of memory");
        return NULL;
    }
    s->key_version = key->e.version;
    s->secret_version = ks->version;
    s->secret = secret;
    return secret;
}

/* The audit chain: every applied entry appends one record, linked to the
 * one before by SHA-256.
 *
 *   hash = SHA-256(prev_hash || msgpack(entry without "hash"))
 *
 * The msgpack is the canonical form of the audit entry schema
 * (registry.c): a map of seq, ts, actor, role, action, target, result,
 * request_id, source, prev_hash, in that order, integers in their shortest
 * form, absent strings as nil. The first entry's prev_hash is 32 zero
 * bytes. Changing any byte of any retained entry, dropping one or
 * reordering them breaks a link that kp_audit_verify names.
 *
 * Entries are built before apply mutates anything (kp_store__audit_build
 * allocates and hashes) and appended after (kp_store__audit_append cannot
 * fail), so a mutation and its audit record happen together or not at all.
 * The log keeps the last KP_AUDIT_RETAIN entries in a ring; the head hash
 * keeps chaining the older ones. Strings are cut to the schema's limits and
 * stripped of control characters when built, so whatever a command carried
 * the entry survives a snapshot. Entries never carry secret material: apply
 * passes ids, op names, fingerprints and its own messages, never a sealed
 * blob, a token hash or the pepper. */
#include "raftstore/internal.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

/* The hash input: prev_hash then at most ~1.6 KB of msgpack (the schema
 * bounds every string), written to the stack. Only OpenSSL may still fail
 * (it allocates a digest context), and that is reported, never ignored:
 * an unwritten hash would fork the chain. */
struct hash_input {
    uint8_t data[4096];
    size_t len;
};

static int hash_write(void *arg, const char *p, size_t n)
{
    struct hash_input *in = arg;
    if (n > sizeof(in->data) - in->len)
        return -1;
    memcpy(in->data + in->len, p, n);
    in->len += n;
    return 0;
}

int kp_audit_hash(const struct kp_audit_entry *e, uint8_t out[32])
{
    struct hash_input in;
    msgpack_packer pk;
    memcpy(in.data, e->prev_hash, 32);
    in.len = 32;
    msgpack_packer_init(&pk, &in, hash_write);
    if (kp_store__encode_obj(&pk, &kp_store__audit_entry_schema, e, KP_MODE_HASH) != 0)
        return KP_ETOOBIG;
    if (EVP_Digest(in.data, in.len, out, NULL, EVP_sha256(), NULL) != 1)
        return KP_ENOMEM;
    return KP_OK;
}

int kp_audit_verify(const struct kp_audit_entry *entries, size_t n, const uint8_t anchor[32],
                    size_t *bad, char *errmsg, size_t errlen)
{
    static const uint8_t zero[32];
    const uint8_t *prev = anchor != NULL ? anchor : zero;
    for (size_t i = 0; i < n; i++) {
        const struct kp_audit_entry *e = &entries[i];
        uint8_t h[32];
        const char *why = NULL;
        int rc = KP_OK;
        if (i > 0 && e->seq != entries[i - 1].seq + 1)
            why = "seq does not follow the entry before";
        else if (memcmp(e->prev_hash, prev, 32) != 0)
            why = "prev_hash is not the hash of the entry before";
        else if ((rc = kp_audit_hash(e, h)) == KP_ENOMEM)
            why = "out of memory";
        else if (rc != KP_OK || memcmp(h, e->hash, 32) != 0)
            why = "hash does not match the entry's contents";
        if (why != NULL) {
            *bad = i;
            snprintf(errmsg, errlen, "audit entry seq %llu (index %zu): %s",
                     (unsigned long long)e->seq, i, why);
            return rc == KP_ENOMEM ? KP_ENOMEM : KP_EPARSE;
        }
        prev = e->hash;
    }
    *bad = n;
    return KP_OK;
}

/* --- the log ----------------------------------------------------------------------------- */

int kp_store__audit_init(struct kp_audit_log *log)
{
    memset(log, 0, sizeof(*log));
    log->ring = kp_calloc(KP_AUDIT_RETAIN, sizeof(*log->ring));
    return log->ring != NULL ? KP_OK : KP_ENOMEM;
}

void kp_store__audit_entry_free(struct kp_audit_entry *e)
{
    if (e == NULL)
        return;
    kp_store__obj_free(&kp_store__audit_entry_schema, e);
    kp_free(e);
}

void kp_store__audit_free(struct kp_audit_log *log)
{
    for (size_t i = 0; log->ring != NULL && i < log->count; i++)
        kp_store__audit_entry_free(log->ring[(log->start + i) % KP_AUDIT_RETAIN]);
    kp_free(log->ring);
    memset(log, 0, sizeof(*log));
}

/* A copy of @s fit for the field @name: at most its length limit (cut on
 * a UTF-8 boundary), control characters replaced. NULL for NULL or "";
 * *@rc = KP_ENOMEM when the copy failed. */
static char *entry_str(const char *s, const char *name, int *rc)
{
    if (s == NULL || *s == '\0')
        return NULL;
    uint64_t max = 64;
    for (uint32_t i = 0; i < kp_store__audit_entry_schema.nfields; i++) {
        if (strcmp(kp_store__audit_entry_schema.fields[i].name, name) == 0)
            max = kp_store__audit_entry_schema.fields[i].max;
    }
    char *d = kp_strndup(s, strnlen(s, (size_t)max));
    if (d == NULL) {
        *rc = KP_ENOMEM;
        return NULL;
    }
    kp_store__utf8_trim(d);
    for (char *p = d; *p; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    }
    if (*d == '\0') {
        kp_free(d);
        return NULL;
    }
    return d;
}

struct kp_audit_entry *kp_store__audit_build(const struct kp_audit_log *log, int64_t ts,
                                             const struct kp_audit_ctx *who, const char *action,
                                             const char *target, const char *result)
{
    struct kp_audit_entry *e = kp_calloc(1, sizeof(*e));
    int rc = KP_OK;
    if (e == NULL)
        return NULL;
    e->seq = log->seq + 1;
    e->ts = ts;
    e->actor = entry_str(who->actor, "actor", &rc);
    e->role = entry_str(who->role, "role", &rc);
    e->action = entry_str(action, "action", &rc);
    e->target = entry_str(target, "target", &rc);
    e->result = entry_str(result, "result", &rc);
    e->request_id = entry_str(who->request_id, "request_id", &rc);
    e->source = entry_str(who->source, "source", &rc);
    memcpy(e->prev_hash, log->hash, 32);
    if (rc != KP_OK || kp_audit_hash(e, e->hash) != KP_OK) {
        kp_store__audit_entry_free(e);
        return NULL;
    }
    return e;
}

void kp_store__audit_append(struct kp_audit_log *log, struct kp_audit_entry *e)
{
    if (log->count == KP_AUDIT_RETAIN) {
        kp_store__audit_entry_free(log->ring[log->start]);
        log->ring[log->start] = e;
        log->start = (log->start + 1) % KP_AUDIT_RETAIN;
    } else {
        log->ring[(log->start + log->count) % KP_AUDIT_RETAIN] = e;
        log->count++;
    }
    log->seq = e->seq;
    memcpy(log->hash, e->hash, 32);
}

const struct kp_audit_entry *kp_store__audit_at(const struct kp_audit_log *log, size_t i)
{
    return i < log->count ? log->ring[(log->start + i) % KP_AUDIT_RETAIN] : NULL;
}

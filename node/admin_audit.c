/* The audit chain over the control API: GET /admin/v1/audit lists the
 * entries the state machine retains (the last KP_AUDIT_RETAIN), oldest
 * first, filtered; GET /admin/v1/audit/verify checks every link and hash of
 * the retained window, anchored at its first entry's prev_hash, and that it
 * ends at the head the state machine chains on. Both read the state
 * machine on the main loop (the audit log is not in views). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin_internal.h"

#define LIMIT_DEFAULT 100
#define LIMIT_MAX     1000

static json_t *head_json(const struct kp_fsm *fsm)
{
    uint64_t seq;
    uint8_t hash[32];
    char hex[65];
    kp_fsm_audit_head(fsm, &seq, hash);
    kp_hex_encode(hash, sizeof(hash), hex);
    return json_pack("{s:I,s:s}", "seq", (json_int_t)seq, "hash", hex);
}

/* Query parameter @name as an integer in [min, max]; absent leaves *@out.
 * False after answering 400. */
static bool int_param(struct kp_admin_req *r, const char *name, int64_t min, int64_t max,
                      int64_t *out)
{
    const char *s = kp_admin__query(r, name);
    if (s == NULL)
        return true;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (s[0] == '\0' || *end != '\0' || errno != 0 || v < min || v > max) {
        kp_admin__fail(r, 400, "invalid_field", name,
                       "%s: must be an integer %" PRId64 "..%" PRId64, name, min, max);
        return false;
    }
    *out = v;
    return true;
}

struct audit_filter {
    const char *actor, *target, *action;
    int64_t since_ms, until_ms, after_seq, limit;
};

static bool same(const char *want, const char *have)
{
    return want == NULL || (have != NULL && strcmp(want, have) == 0);
}

/* since_ms <= ts < until_ms; seq > after_seq; exact actor, target, action. */
static bool wanted(const struct audit_filter *f, const struct kp_audit_entry *e)
{
    return e->ts >= f->since_ms && e->ts < f->until_ms && (int64_t)e->seq > f->after_seq &&
           same(f->actor, e->actor) && same(f->target, e->target) && same(f->action, e->action);
}

void kp_admin__audit_list(struct kp_admin_req *r)
{
    struct audit_filter f = {
        .actor = kp_admin__query(r, "actor"),
        .target = kp_admin__query(r, "target"),
        .action = kp_admin__query(r, "action"),
        .since_ms = INT64_MIN,
        .until_ms = INT64_MAX,
        .after_seq = 0,
        .limit = LIMIT_DEFAULT,
    };
    if (!int_param(r, "since_ms", INT64_MIN, INT64_MAX, &f.since_ms) ||
        !int_param(r, "until_ms", INT64_MIN, INT64_MAX, &f.until_ms) ||
        !int_param(r, "after_seq", 0, INT64_MAX, &f.after_seq) ||
        !int_param(r, "limit", 1, LIMIT_MAX, &f.limit))
        return;
    const struct kp_fsm *fsm = kp_admin__fsm(r);
    size_t n = kp_fsm_audit_count(fsm), i = 0;
    uint64_t first = n > 0 ? kp_fsm_audit_entry(fsm, 0)->seq : 0;
    /* Retained seqs are consecutive: skip straight past after_seq. */
    if (n > 0 && (uint64_t)f.after_seq >= first)
        i = (uint64_t)f.after_seq - first + 1 < n ? (size_t)((uint64_t)f.after_seq - first + 1) : n;
    json_t *entries = json_array(), *v = json_object();
    bool ok = entries != NULL && v != NULL;
    for (int64_t got = 0; ok && i < n && got < f.limit; i++) {
        const struct kp_audit_entry *e = kp_fsm_audit_entry(fsm, i);
        if (!wanted(&f, e))
            continue;
        ok = json_array_append_new(entries, kp_audit_entry_json(e)) == 0;
        got++;
    }
    json_t *head = ok ? head_json(fsm) : NULL;
    if (head == NULL) {
        json_decref(entries);
        json_decref(v);
        kp_admin__oom(r);
        return;
    }
    json_object_set_new(v, "entries", entries);
    json_object_set_new(v, "head", head);
    json_object_set_new(v, "first_seq", json_integer((json_int_t)first));
    kp_admin__respond(r, 200, v, 0, false);
}

void kp_admin__audit_verify(struct kp_admin_req *r)
{
    const struct kp_fsm *fsm = kp_admin__fsm(r);
    size_t n = kp_fsm_audit_count(fsm), bad = 0;
    uint64_t head_seq;
    uint8_t head_hash[32];
    char msg[256] = "";
    kp_fsm_audit_head(fsm, &head_seq, head_hash);
    /* kp_audit_verify takes a contiguous array; the retained entries are a
     * ring of pointers. Shallow copies: verify only reads them. */
    struct kp_audit_entry *v = kp_malloc((n + 1) * sizeof(*v));
    if (v == NULL) {
        kp_admin__oom(r);
        return;
    }
    for (size_t i = 0; i < n; i++)
        v[i] = *kp_fsm_audit_entry(fsm, i);
    int rc = n > 0 ? kp_audit_verify(v, n, v[0].prev_hash, &bad, msg, sizeof(msg)) : KP_OK;
    if (rc == KP_OK && n > 0 &&
        (v[n - 1].seq != head_seq || memcmp(v[n - 1].hash, head_hash, 32) != 0)) {
        rc = KP_EPARSE;
        bad = n - 1;
        snprintf(msg, sizeof(msg),
                 "audit entry seq %" PRIu64 " is the last retained but the head is seq %" PRIu64
                 " with another hash",
                 v[n - 1].seq, head_seq);
    }
    uint64_t bad_seq = rc == KP_EPARSE ? v[bad].seq : 0;
    kp_free(v);
    json_t *out;
    if (rc == KP_OK)
        out =
            json_pack("{s:b,s:I,s:o*}", "ok", 1, "checked", (json_int_t)n, "head", head_json(fsm));
    else if (rc == KP_EPARSE)
        out =
            json_pack("{s:b,s:I,s:s}", "ok", 0, "broken_seq", (json_int_t)bad_seq, "message", msg);
    else
        out = NULL;
    if (out == NULL) {
        kp_admin__oom(r);
        return;
    }
    kp_admin__respond(r, 200, out, 0, false);
}

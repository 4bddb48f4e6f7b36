/* The state machine as canonical/raft drives it (struct raft_fsm), and the
 * framing of log entries. Used by store.c and by the raft_fixture tests.
 *
 * Log entries: raft_uv checksums an entry's payload rounded up to 8 bytes
 * when it loads a segment but only its length when it writes one (raft
 * 0.15), so a payload whose length is not a multiple of 8 reads back as
 * corrupt after a restart and raft_uv moves the segment aside. Every entry
 * is therefore framed: "KPE1", the command's length (u32 little endian), the
 * command, zero padding to a multiple of 8 (docs/registry.md). An entry
 * that is not framed so is applied as an empty command, which every replica
 * refuses alike (and records in the audit chain). */
#include <stdio.h>
#include <string.h>

#include "raftstore/raft_glue.h"

#define ENTRY_MAGIC "KPE1"
enum { ENTRY_HEADER = 8 };

int kp_raft_entry_frame(const void *cmd, size_t len, struct raft_buffer *out)
{
    if (len > UINT32_MAX - 16)
        return KP_ETOOBIG;
    size_t framed = ENTRY_HEADER + ((len + 7) & ~(size_t)7);
    uint8_t *copy = raft_malloc(framed);
    if (copy == NULL)
        return KP_ENOMEM;
    memcpy(copy, ENTRY_MAGIC, 4);
    kp_put_le(copy + 4, len, 4);
    memcpy(copy + ENTRY_HEADER, cmd, len);
    memset(copy + ENTRY_HEADER + len, 0, framed - ENTRY_HEADER - len);
    out->base = copy;
    out->len = framed;
    return KP_OK;
}

static int fsm_apply(struct raft_fsm *rf, const struct raft_buffer *buf, void **result)
{
    struct kp_raft_fsm *s = rf->data;
    /* Entries apply in order and barrier or configuration entries also move
     * last_applied, so this entry's index is the next one. */
    uint64_t index = raft_last_applied(s->raft) + 1;
    struct kp_raft_applied *a = &s->last;
    memset(a, 0, sizeof(*a));
    const uint8_t *p = buf->base;
    size_t len = buf->len >= ENTRY_HEADER ? (size_t)kp_get_le(p + 4, 4) : 0;
    if (buf->len < ENTRY_HEADER || memcmp(p, ENTRY_MAGIC, 4) != 0 ||
        len > buf->len - ENTRY_HEADER) {
        /* Every replica sees the same bytes, so each refuses it alike: the
         * fsm records the refusal in the audit chain. */
        p = (const uint8_t *)"";
        len = 0;
    } else {
        p += ENTRY_HEADER;
    }
    int rc = kp_fsm_apply(s->fsm, index, p, len, &a->res);
    if (rc == KP_ENOMEM) {
        /* Nothing changed: raft applies this entry again on its next turn. */
        kp_warn("raft", "out of memory applying entry %llu; will retry", (unsigned long long)index);
        return RAFT_NOMEM;
    }
    a->index = index;
    *result = a;
    if (s->changed != NULL)
        s->changed(s->arg);
    return 0;
}

static int fsm_snapshot(struct raft_fsm *rf, struct raft_buffer *bufs[], unsigned *n_bufs)
{
    struct kp_raft_fsm *s = rf->data;
    struct kp_buf out;
    char errmsg[256];
    kp_buf_init(&out);
    int64_t t0 = kp_now_mono_ms();
    if (kp_fsm_snapshot(s->fsm, &out, errmsg, sizeof(errmsg)) != KP_OK) {
        kp_warn("raft", "cannot take a snapshot: %s", errmsg);
        kp_buf_free(&out);
        return RAFT_NOMEM;
    }
    struct raft_buffer *b = kp_malloc(sizeof(*b));
    if (b == NULL) {
        kp_buf_free(&out);
        return RAFT_NOMEM;
    }
    b->base = out.data;
    b->len = out.len;
    *bufs = b;
    *n_bufs = 1;
    kp_info("raft", "snapshot at index %llu: %zu bytes in %lld ms",
            (unsigned long long)kp_fsm_applied_index(s->fsm), out.len,
            (long long)(kp_now_mono_ms() - t0));
    return 0;
}

static int fsm_snapshot_finalize(struct raft_fsm *rf, struct raft_buffer *bufs[], unsigned *n_bufs)
{
    (void)rf;
    if (*bufs != NULL) {
        for (unsigned i = 0; i < *n_bufs; i++)
            kp_free((*bufs)[i].base);
        kp_free(*bufs);
    }
    *bufs = NULL;
    *n_bufs = 0;
    return 0;
}

static int fsm_restore(struct raft_fsm *rf, struct raft_buffer *buf)
{
    struct kp_raft_fsm *s = rf->data;
    char errmsg[256];
    int64_t t0 = kp_now_mono_ms();
    int rc = kp_fsm_restore(s->fsm, buf->base, buf->len, 0, errmsg, sizeof(errmsg));
    if (rc != KP_OK) {
        kp_error("raft", "cannot restore snapshot (%zu bytes): %s", buf->len, errmsg);
        return rc == KP_ENOMEM ? RAFT_NOMEM : RAFT_CORRUPT;
    }
    kp_info("raft", "restored snapshot at index %llu: %zu bytes in %lld ms",
            (unsigned long long)kp_fsm_applied_index(s->fsm), buf->len,
            (long long)(kp_now_mono_ms() - t0));
    raft_free(buf->base);
    if (s->changed != NULL)
        s->changed(s->arg);
    return 0;
}

void kp_raft_fsm_init(struct kp_raft_fsm *a, struct kp_fsm *fsm, struct raft *raft,
                      void (*changed)(void *arg), void *arg)
{
    memset(a, 0, sizeof(*a));
    a->fsm = fsm;
    a->raft = raft;
    a->changed = changed;
    a->arg = arg;
    a->rf.version = 2;
    a->rf.data = a;
    a->rf.apply = fsm_apply;
    a->rf.snapshot = fsm_snapshot;
    a->rf.restore = fsm_restore;
    a->rf.snapshot_finalize = fsm_snapshot_finalize;
    a->rf.snapshot_async = NULL;
}

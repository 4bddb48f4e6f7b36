/* Snapshots: the whole state as one canonical msgpack map, compressed into
 * one zstd frame behind a fixed header.
 *
 *   0   8  magic "KPSNAP\r\n"
 *   8   4  format version (little endian), 1
 *   12  4  flags, 0
 *   16  8  raw length: msgpack bytes before compression
 *   24  8  payload length: zstd bytes after the header
 *   32 32  SHA-256(bytes 0..31 || SHA-256(zstd frame))
 *   64     the zstd frame (content size and checksum flags set)
 *
 * The SHA-256 covers every stored byte but itself, so any change to the
 * file is refused before zstd sees it (zstd ignores some bits, such as
 * reserved flags and bitstream padding); zstd's own checksum covers the
 * decompressed bytes.
 *
 * The msgpack map has its keys in a fixed order: format, applied_index,
 * cluster, audit {seq, hash, entries}, then one array per entity kind
 * ("providers", "keys", ... in enum order) sorted by id. Fields are written
 * in schema order (command.c), so equal states give equal bytes.
 *
 * The header's version is the container's (header and frame) and is 1; the
 * map's "format" is the content's. Format 2 added the budget state tables
 * (budget_states, lease_nodes) after key_health; format 3 the freezes
 * after lease_nodes; format 4 a budget's utc_offset_minutes,
 * period_start_ms, period_ms and actions (fields whose schema entry says
 * since = 4); format 5 the alerts after freezes; format 6 a tenant's
 * capture_content (since = 6); format 7 the key balances after alerts;
 * format 8 a key health's canary fields and history (since = 8); format 9
 * a provider's balance endpoint and a key health's provider balance
 * (since = 9); format 10 a token's features and a provider's retry
 * settings (since = 10). Older formats are still
 * restored: format 1, which ends at key_health, with no budget state (a
 * budget's first lease after that starts its window afresh), formats 1
 * and 2 with nothing frozen, formats 1 to 3 with every budget at UTC and
 * without actions, formats 1 to 4 with no alerts (the leader's next
 * evaluation opens what still holds, and delivers it again), formats
 * 1 to 5 with content capture off for every tenant, formats 1 to 6
 * with no key balances (format 7 added that table after alerts), and
 * formats 1 to 7 with no key probed yet and no health history, and
 * formats 1 to 8 with no balance endpoint and no provider balance read,
 * and formats 1 to 9 with every token open to every feature and every
 * provider retrying as before (1 retry, 100 ms backoff, 3 s window).
 *
 * Restore treats the input as hostile. It checks the header, the sizes
 * against each other and against the caller's limit, and the checksum,
 * then decompresses in steps into a buffer that only grows as real output appears (a header
 * cannot make it allocate the declared size up front, and the window is
 * capped at 8 MiB), and decodes into a fresh state:
 * every entity through its schema (the same checks a command gets), ids
 * strictly ascending (canonical and unique), then every cross-entity rule
 * and reference, and the audit chain and its head. Only when all of that
 * passed does the new state replace the old one; on any failure the state
 * machine is untouched. */
#include "raftstore/internal.h"

#include <inttypes.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <zstd.h>

#define SNAP_VERSION     1  /* the header and frame layout */
#define SNAP_FORMAT      10 /* the msgpack map's content */
#define SNAP_HEADER_SIZE 64
/* Entity kinds a format-1 snapshot holds (up to key_health), a format-2
 * one (up to lease_nodes), a format-3 one (up to freezes) and a format-5
 * one (up to alerts). */
#define SNAP_FORMAT1_KINDS (KP_KIND_KEY_HEALTH + 1)
#define SNAP_FORMAT2_KINDS (KP_KIND_LEASE_NODE + 1)
#define SNAP_FORMAT3_KINDS (KP_KIND_FREEZE + 1)
#define SNAP_FORMAT5_KINDS (KP_KIND_ALERT + 1)
#define SNAP_WINDOW_LOG    23
#define SNAP_LEVEL         3

static const uint8_t magic[8] = {'K', 'P', 'S', 'N', 'A', 'P', '\r', '\n'};

/* SHA-256(header[0..32) || SHA-256(payload)). KP_ENOMEM when OpenSSL
 * could not allocate its digest context. */
static int file_hash(const uint8_t *header, const uint8_t *payload, size_t n, uint8_t out[32])
{
    uint8_t in[64];
    memcpy(in, header, 32);
    if (EVP_Digest(payload, n, in + 32, NULL, EVP_sha256(), NULL) != 1 ||
        EVP_Digest(in, sizeof(in), out, NULL, EVP_sha256(), NULL) != 1)
        return KP_ENOMEM;
    return KP_OK;
}

/* --- encoding --------------------------------------------------------------------------- */

static int pack_table(msgpack_packer *pk, const struct kp_state *st, int kind)
{
    struct kp_entity **v;
    size_t n = 0;
    if (kp_store__table_sorted(st->tables[kind], &v, &n) != KP_OK)
        return -1;
    int rc = kp_store__pack_str(pk, kp_store__kind_plural[kind]) || msgpack_pack_array(pk, n);
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = kp_store__encode_obj(pk, kp_store__kind_schema[kind], v[i], KP_MODE_SNAP);
    kp_free(v);
    return rc;
}

static int pack_audit(msgpack_packer *pk, const struct kp_audit_log *log)
{
    if (kp_store__pack_str(pk, "audit") || msgpack_pack_map(pk, 3) ||
        kp_store__pack_str(pk, "seq") || msgpack_pack_uint64(pk, log->seq) ||
        kp_store__pack_str(pk, "hash") || msgpack_pack_bin(pk, 32) ||
        msgpack_pack_bin_body(pk, log->hash, 32) || kp_store__pack_str(pk, "entries") ||
        msgpack_pack_array(pk, (uint32_t)log->count))
        return -1;
    for (size_t i = 0; i < log->count; i++) {
        if (kp_store__encode_obj(pk, &kp_store__audit_entry_schema, kp_store__audit_at(log, i),
                                 KP_MODE_SNAP))
            return -1;
    }
    return 0;
}

static int pack_state(const struct kp_state *st, struct kp_buf *raw)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, raw, kp_store__mp_write);
    if (msgpack_pack_map(&pk, 4 + KP_KIND_COUNT) || kp_store__pack_str(&pk, "format") ||
        msgpack_pack_uint32(&pk, SNAP_FORMAT) || kp_store__pack_str(&pk, "applied_index") ||
        msgpack_pack_uint64(&pk, st->applied_index) || kp_store__pack_str(&pk, "cluster"))
        return -1;
    if (st->cluster == NULL
            ? msgpack_pack_nil(&pk)
            : kp_store__encode_obj(&pk, &kp_store__cluster_schema, st->cluster, KP_MODE_SNAP))
        return -1;
    if (pack_audit(&pk, &st->audit))
        return -1;
    for (int k = 0; k < KP_KIND_COUNT; k++) {
        if (pack_table(&pk, st, k))
            return -1;
    }
    return 0;
}

static int compress_into(const struct kp_buf *raw, struct kp_buf *out, char *errmsg, size_t errlen)
{
    size_t bound = ZSTD_compressBound(raw->len);
    ZSTD_CCtx *cctx = kp_zstd_cctx_new();
    int rc = KP_ENOMEM;
    if (cctx == NULL || kp_buf_reserve(out, SNAP_HEADER_SIZE + bound) != 0)
        goto out;
    uint8_t *h = (uint8_t *)out->data + out->len;
    ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, SNAP_LEVEL);
    ZSTD_CCtx_setParameter(cctx, ZSTD_c_windowLog, 21);
    ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1);
    size_t n = ZSTD_compress2(cctx, h + SNAP_HEADER_SIZE, bound, raw->data, raw->len);
    if (ZSTD_isError(n)) {
        rc = kp_zstd_err(n, KP_EIO);
        snprintf(errmsg, errlen, "snapshot: zstd: %s", ZSTD_getErrorName(n));
        goto out;
    }
    memcpy(h, magic, 8);
    kp_put_le(h + 8, SNAP_VERSION, 4);
    kp_put_le(h + 12, 0, 4);
    kp_put_le(h + 16, raw->len, 8);
    kp_put_le(h + 24, n, 8);
    if (file_hash(h, h + SNAP_HEADER_SIZE, n, h + 32) != KP_OK) {
        snprintf(errmsg, errlen, "snapshot: sha256: out of memory");
        goto out;
    }
    out->len += SNAP_HEADER_SIZE + n;
    rc = KP_OK;
out:
    ZSTD_freeCCtx(cctx);
    return rc;
}

int kp_fsm_snapshot(const struct kp_fsm *fsm, struct kp_buf *out, char *errmsg, size_t errlen)
{
    struct kp_buf raw;
    kp_buf_init(&raw);
    int rc = KP_ENOMEM;
    snprintf(errmsg, errlen, "snapshot: out of memory");
    if (pack_state(&fsm->st, &raw) == 0)
        rc = compress_into(&raw, out, errmsg, errlen);
    kp_buf_free(&raw);
    return rc;
}

/* --- restore: bytes --------------------------------------------------------------------- */

static int fail(char *errmsg, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(char *errmsg, size_t errlen, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = snprintf(errmsg, errlen, "restore: ");
    if (n > 0 && (size_t)n < errlen)
        vsnprintf(errmsg + n, errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return code;
}

static int check_header(const uint8_t *p, size_t len, size_t max_raw, uint64_t *raw_len,
                        char *errmsg, size_t errlen)
{
    if (len < SNAP_HEADER_SIZE || memcmp(p, magic, 8) != 0)
        return fail(errmsg, errlen, KP_EPARSE, "not a keyplane snapshot");
    uint64_t version = kp_get_le(p + 8, 4);
    if (version != SNAP_VERSION)
        return fail(errmsg, errlen, KP_EVERSION, "snapshot format %" PRIu64 " (this node reads %d)",
                    version, SNAP_VERSION);
    if (kp_get_le(p + 12, 4) != 0)
        return fail(errmsg, errlen, KP_EPARSE, "unknown header flags");
    *raw_len = kp_get_le(p + 16, 8);
    if (*raw_len > max_raw)
        return fail(errmsg, errlen, KP_ETOOBIG, "%" PRIu64 " bytes exceed the %zu-byte limit",
                    *raw_len, max_raw);
    if (kp_get_le(p + 24, 8) != len - SNAP_HEADER_SIZE)
        return fail(errmsg, errlen, KP_EPARSE, "payload length does not match the input");
    const void *payload = p + SNAP_HEADER_SIZE;
    size_t plen = len - SNAP_HEADER_SIZE;
    uint8_t sum[32];
    if (file_hash(p, payload, plen, sum) != KP_OK)
        return fail(errmsg, errlen, KP_ENOMEM, "out of memory");
    if (memcmp(sum, p + 32, 32) != 0)
        return fail(errmsg, errlen, KP_EPARSE, "checksum mismatch");
    if (kp_zstd_frame_check(payload, plen, *raw_len) != KP_ZSTD_FRAME_OK)
        return fail(errmsg, errlen, KP_EPARSE, "payload is not one zstd frame of the raw length");
    return KP_OK;
}

static int zstd_fail(size_t code, char *errmsg, size_t errlen)
{
    if (kp_zstd_err(code, KP_EPARSE) == KP_ENOMEM)
        return fail(errmsg, errlen, KP_ENOMEM, "out of memory");
    return fail(errmsg, errlen, KP_EPARSE, "zstd: %s", ZSTD_getErrorName(code));
}

/* Decompress into *@out (kp_malloc) growing only as output appears. */
static int inflate(ZSTD_DCtx *dctx, const uint8_t *src, size_t srclen, size_t raw_len,
                   uint8_t **out, char *errmsg, size_t errlen)
{
    ZSTD_inBuffer in = {src, srclen, 0};
    size_t cap = raw_len < (1u << 20) ? raw_len : (1u << 20), len = 0;
    uint8_t *buf = kp_malloc(cap);
    if (buf == NULL)
        return fail(errmsg, errlen, KP_ENOMEM, "out of memory");
    for (;;) {
        if (len == cap && cap < raw_len) {
            size_t ncap = cap > raw_len / 2 ? raw_len : cap * 2;
            uint8_t *nb = kp_realloc(buf, ncap);
            if (nb == NULL) {
                kp_free(buf);
                return fail(errmsg, errlen, KP_ENOMEM, "out of memory");
            }
            buf = nb;
            cap = ncap;
        }
        ZSTD_outBuffer o = {buf, cap, len};
        size_t r = ZSTD_decompressStream(dctx, &o, &in);
        len = o.pos;
        if (ZSTD_isError(r)) {
            kp_free(buf);
            return zstd_fail(r, errmsg, errlen);
        }
        if (r == 0)
            break;
        if ((in.pos == in.size && o.pos < o.size) || (len == raw_len && cap == raw_len)) {
            kp_free(buf);
            return fail(errmsg, errlen, KP_EPARSE, "zstd frame truncated or longer than declared");
        }
    }
    if (len != raw_len || in.pos != in.size) {
        kp_free(buf);
        return fail(errmsg, errlen, KP_EPARSE, "zstd frame does not match the declared sizes");
    }
    *out = buf;
    return KP_OK;
}

static int unpack_bytes(const uint8_t *p, size_t len, size_t max_raw, uint8_t **raw,
                        size_t *raw_len, char *errmsg, size_t errlen)
{
    uint64_t declared = 0;
    int rc = check_header(p, len, max_raw, &declared, errmsg, errlen);
    if (rc != KP_OK)
        return rc;
    ZSTD_DCtx *dctx = kp_zstd_dctx_new();
    if (dctx == NULL)
        return fail(errmsg, errlen, KP_ENOMEM, "out of memory");
    ZSTD_DCtx_setParameter(dctx, ZSTD_d_windowLogMax, SNAP_WINDOW_LOG);
    rc = inflate(dctx, p + SNAP_HEADER_SIZE, len - SNAP_HEADER_SIZE, (size_t)declared, raw, errmsg,
                 errlen);
    ZSTD_freeDCtx(dctx);
    if (rc != KP_OK)
        return rc;
    *raw_len = (size_t)declared;
    return KP_OK;
}

/* --- restore: state ----------------------------------------------------------------------- */

/* The next map key must be @want. */
static int key(struct kp_decoder *d, const char *want)
{
    struct kp_mp_head h;
    const uint8_t *p;
    size_t n = strlen(want);
    if (!kp_mp_read_head(&d->c, &h) || h.kind != KP_MP_STR || h.n != n ||
        !kp_mp_take(&d->c, n, &p) || memcmp(p, want, n) != 0)
        return kp_store__fail(d, KP_EPARSE, "expected the key '%s'", want);
    return KP_OK;
}

static int head(struct kp_decoder *d, enum kp_mp_kind kind, struct kp_mp_head *h)
{
    if (!kp_mp_read_head(&d->c, h) || h->kind != kind)
        return kp_store__fail(d, KP_EPARSE, "expected %s", kp_mp_kind_name(kind));
    return KP_OK;
}

/* An array head of at most @max maps, each at least 16 bytes long (every
 * field is present in a snapshot), so a count cannot outrun the input. */
static int array(struct kp_decoder *d, uint64_t max, uint32_t *n)
{
    struct kp_mp_head h;
    int rc = head(d, KP_MP_ARRAY, &h);
    if (rc != KP_OK)
        return rc;
    if (h.n > max || h.n > kp_mp_left(&d->c) / 16)
        return kp_store__fail(d, KP_EPARSE, "array of %" PRIu64 " entries is too long", h.n);
    *n = (uint32_t)h.n;
    return KP_OK;
}

static int read_cluster(struct kp_decoder *d, struct kp_state *st)
{
    struct kp_mp_head h;
    int rc = key(d, "cluster");
    if (rc != KP_OK)
        return rc;
    const uint8_t *at = d->c.p;
    if (kp_mp_read_head(&d->c, &h) && h.kind == KP_MP_NIL)
        return KP_OK;
    d->c.p = at;
    if ((st->cluster = (struct kp_cluster *)kp_store__entity_alloc(KP_KIND_COUNT)) == NULL)
        return KP_ENOMEM;
    return kp_store__decode_obj(d, &kp_store__cluster_schema, st->cluster);
}

static int read_audit(struct kp_decoder *d, struct kp_audit_log *log)
{
    struct kp_mp_head h;
    const uint8_t *hash;
    uint32_t n = 0;
    int rc = key(d, "audit");
    if (rc == KP_OK && (rc = head(d, KP_MP_MAP, &h)) == KP_OK && h.n != 3)
        rc = kp_store__fail(d, KP_EPARSE, "audit: expected 3 keys");
    if (rc == KP_OK && (rc = key(d, "seq")) == KP_OK && (rc = head(d, KP_MP_INT, &h)) == KP_OK)
        log->seq = h.u;
    if (rc == KP_OK && (rc = key(d, "hash")) == KP_OK && (rc = head(d, KP_MP_BIN, &h)) == KP_OK) {
        if (h.n != 32 || !kp_mp_take(&d->c, 32, &hash))
            return kp_store__fail(d, KP_EPARSE, "audit.hash: expected 32 bytes");
        memcpy(log->hash, hash, 32);
    }
    if (rc == KP_OK && (rc = key(d, "entries")) == KP_OK)
        rc = array(d, KP_AUDIT_RETAIN, &n);
    for (uint32_t i = 0; rc == KP_OK && i < n; i++) {
        struct kp_audit_entry *e = kp_calloc(1, sizeof(*e));
        if (e == NULL)
            return KP_ENOMEM;
        /* Appended first so that the log owns it whatever happens. */
        log->ring[log->count++] = e;
        rc = kp_store__decode_obj(d, &kp_store__audit_entry_schema, e);
    }
    return rc;
}

static int read_table(struct kp_decoder *d, struct kp_state *st, int kind)
{
    const struct kp_schema *s = kp_store__kind_schema[kind];
    const struct kp_entity *prev = NULL;
    uint32_t n = 0;
    int rc = key(d, kp_store__kind_plural[kind]);
    if (rc == KP_OK)
        rc = array(d, 1u << 26, &n);
    if (rc == KP_OK && (rc = kp_store__table_prepare(&st->tables[kind], n)) != KP_OK)
        return rc;
    for (uint32_t i = 0; rc == KP_OK && i < n; i++) {
        struct kp_entity *e = kp_store__entity_alloc(kind);
        if (e == NULL)
            return KP_ENOMEM;
        if ((rc = kp_store__decode_obj(d, s, e)) == KP_OK && prev != NULL &&
            strcmp(prev->id, e->id) >= 0)
            rc = kp_store__fail(d, KP_EPARSE, "%s: ids not strictly ascending at '%s'",
                                kp_store__kind_plural[kind], e->id);
        if (rc != KP_OK) {
            kp_store__entity_unref(e);
            return rc;
        }
        kp_store__table_put(st->tables[kind], e);
        prev = e;
    }
    return rc;
}

static int read_state(struct kp_decoder *d, struct kp_state *st)
{
    struct kp_mp_head h;
    uint64_t keys = 0;
    int rc = head(d, KP_MP_MAP, &h), kinds = KP_KIND_COUNT;
    if (rc == KP_OK)
        keys = h.n;
    if (rc == KP_OK && (rc = key(d, "format")) == KP_OK && (rc = head(d, KP_MP_INT, &h)) == KP_OK &&
        (h.negative || h.u < 1 || h.u > SNAP_FORMAT))
        rc = kp_store__fail(d, KP_EVERSION, "format %" PRIu64 " is not 1 to %d", h.u, SNAP_FORMAT);
    if (rc == KP_OK)
        d->format = (uint32_t)h.u; /* fields added later may be absent */
    if (rc == KP_OK && h.u == 1)
        kinds = SNAP_FORMAT1_KINDS;
    if (rc == KP_OK && h.u == 2)
        kinds = SNAP_FORMAT2_KINDS;
    if (rc == KP_OK && (h.u == 3 || h.u == 4))
        kinds = SNAP_FORMAT3_KINDS; /* format 4 added fields, not tables */
    if (rc == KP_OK && (h.u == 5 || h.u == 6))
        kinds = SNAP_FORMAT5_KINDS; /* format 6 added a field, not a table */
    if (rc == KP_OK && keys != 4 + (uint64_t)kinds)
        rc = kp_store__fail(d, KP_EPARSE, "expected %d tables", 4 + kinds);
    if (rc == KP_OK && (rc = key(d, "applied_index")) == KP_OK &&
        (rc = head(d, KP_MP_INT, &h)) == KP_OK)
        st->applied_index = h.u;
    if (rc == KP_OK)
        rc = read_cluster(d, st);
    if (rc == KP_OK)
        rc = read_audit(d, &st->audit);
    for (int k = 0; rc == KP_OK && k < kinds; k++)
        rc = read_table(d, st, k);
    if (rc == KP_OK && kp_mp_left(&d->c) != 0)
        rc = kp_store__fail(d, KP_EPARSE, "trailing bytes");
    return rc;
}

/* The rules apply would have enforced, over the whole restored state. */
static int check_state(const struct kp_state *st, char *errmsg, size_t errlen)
{
    char msg[256];
    for (int k = 0; k < KP_KIND_COUNT; k++) {
        const struct kp_table *t = st->tables[k];
        for (uint32_t i = 0; i < t->cap; i++) {
            const struct kp_entity *e = t->slots[i];
            if (e == NULL)
                continue;
            int rc = e->version == 0 ? KP_EINVAL : kp_store__validate(st, e, msg, sizeof(msg));
            if (rc != KP_OK)
                return fail(errmsg, errlen, KP_EPARSE, "%s '%s': %s", kp_kind_name(k), e->id,
                            e->version == 0 ? "version 0" : msg);
        }
    }
    return KP_OK;
}

static int check_audit(const struct kp_audit_log *log, char *errmsg, size_t errlen)
{
    static const uint8_t zero[32];
    if (log->count == 0) {
        if (log->seq != 0 || memcmp(log->hash, zero, 32) != 0)
            return fail(errmsg, errlen, KP_EPARSE, "audit head without entries");
        return KP_OK;
    }
    /* The ring was filled from slot 0, so the entries are contiguous. */
    uint64_t want = log->seq < KP_AUDIT_RETAIN ? log->seq : KP_AUDIT_RETAIN;
    if (log->count != want)
        return fail(errmsg, errlen, KP_EPARSE, "audit keeps %zu entries, expected %" PRIu64,
                    log->count, want);
    struct kp_audit_entry *v = kp_malloc(log->count * sizeof(*v));
    if (v == NULL)
        return fail(errmsg, errlen, KP_ENOMEM, "out of memory");
    for (size_t i = 0; i < log->count; i++)
        v[i] = *log->ring[i];
    size_t bad;
    char why[200];
    /* The chain from the start is anchored at zero; a trimmed one at the
     * first kept entry's prev_hash, which the head hash still commits to. */
    const uint8_t *anchor = v[0].seq == 1 ? NULL : v[0].prev_hash;
    int rc = kp_audit_verify(v, log->count, anchor, &bad, why, sizeof(why));
    const struct kp_audit_entry *last = &v[log->count - 1];
    if (rc == KP_ENOMEM)
        rc = fail(errmsg, errlen, KP_ENOMEM, "out of memory");
    else if (rc != KP_OK)
        rc = fail(errmsg, errlen, KP_EPARSE, "%s", why);
    else if (last->seq != log->seq || memcmp(last->hash, log->hash, 32) != 0)
        rc = fail(errmsg, errlen, KP_EPARSE, "audit head does not match the last entry");
    kp_free(v);
    return rc;
}

int kp_fsm_restore(struct kp_fsm *fsm, const void *buf, size_t len, size_t max_raw, char *errmsg,
                   size_t errlen)
{
    uint8_t *raw = NULL;
    size_t raw_len = 0;
    struct kp_state st;
    char why[200] = "";
    int rc = unpack_bytes(buf, len, max_raw ? max_raw : KP_SNAPSHOT_MAX_RAW, &raw, &raw_len, errmsg,
                          errlen);
    if (rc != KP_OK)
        return rc;
    if ((rc = kp_store__state_init(&st)) != KP_OK) {
        kp_free(raw);
        return fail(errmsg, errlen, rc, "out of memory");
    }
    struct kp_decoder d = {
        .mode = KP_MODE_SNAP, .format = SNAP_FORMAT, .errmsg = why, .errlen = sizeof(why)};
    kp_mp_reader_init(&d.c, raw, raw_len);
    rc = read_state(&d, &st);
    if (rc == KP_ENOMEM)
        rc = fail(errmsg, errlen, rc, "out of memory");
    else if (rc != KP_OK)
        rc = fail(errmsg, errlen, rc == KP_EVERSION ? rc : KP_EPARSE, "at byte %zu: %s",
                  kp_mp_offset(&d.c), why);
    if (rc == KP_OK)
        rc = check_state(&st, errmsg, errlen);
    if (rc == KP_OK)
        rc = check_audit(&st.audit, errmsg, errlen);
    kp_free(raw);
    if (rc != KP_OK) {
        kp_store__state_free(&st);
        return rc;
    }
    kp_store__state_free(&fsm->st);
    fsm->st = st;
    return KP_OK;
}

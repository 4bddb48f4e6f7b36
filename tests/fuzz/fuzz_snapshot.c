/* libFuzzer driver for snapshot restore (raftstore/raftstore.h). The first
 * byte of an input picks what the rest is:
 *
 *   0  a snapshot file, restored as is. Mutations rarely get past the
 *      SHA-256 over the file, so this mostly exercises the header checks;
 *   1  a raw msgpack payload, which the driver compresses and wraps with a
 *      valid header and checksum first, so that mutated contents reach the
 *      decoder, the schema checks, the canonical-order check, referential
 *      integrity and the audit chain check.
 *
 * Restore must never crash, leak or allocate without bound (the limit here
 * is 16 MiB of payload), and must leave the target untouched on failure.
 * A state it accepts must snapshot and restore to the same bytes again.
 *
 * The seeds in corpus/snapshot/ are real snapshots (mode 0) and their raw
 * payloads (mode 1) of an empty and of a populated registry, of one
 * with a freeze of each scope (format 3), of one with weekly and fixed
 * budgets, threshold actions and leases on them (format 4), and of one
 * with alerts, acked, resolved and with a dead letter (format 5). */
#include <openssl/sha.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "raftstore/raftstore.h"

#define MAX_RAW ((size_t)16 << 20)

/* The snapshot header around a zstd frame of @raw (snapshot.c's layout). */
static uint8_t *wrap(const uint8_t *raw, size_t n, size_t *len)
{
    size_t bound = ZSTD_compressBound(n);
    uint8_t *h = malloc(64 + bound), in[64];
    if (h == NULL)
        return NULL;
    size_t z = ZSTD_compress(h + 64, bound, raw, n, 1);
    if (ZSTD_isError(z)) {
        free(h);
        return NULL;
    }
    memcpy(h, "KPSNAP\r\n", 8);
    for (int i = 0; i < 8; i++) {
        h[8 + i] = (uint8_t)(i == 0);
        h[16 + i] = (uint8_t)((uint64_t)n >> (8 * i));
        h[24 + i] = (uint8_t)((uint64_t)z >> (8 * i));
    }
    memcpy(in, h, 32);
    SHA256(h + 64, z, in + 32);
    SHA256(in, 64, h + 32);
    *len = 64 + z;
    return h;
}

static void restore(const uint8_t *p, size_t n)
{
    struct kp_fsm *f = kp_fsm_new();
    struct kp_buf s1, s2;
    char err[256];
    if (f == NULL)
        abort();
    kp_buf_init(&s1);
    kp_buf_init(&s2);
    if (kp_fsm_restore(f, p, n, MAX_RAW, err, sizeof(err)) == KP_OK) {
        struct kp_fsm *g = kp_fsm_new();
        if (g == NULL || kp_fsm_snapshot(f, &s1, err, sizeof(err)) != KP_OK ||
            kp_fsm_restore(g, s1.data, s1.len, 0, err, sizeof(err)) != KP_OK ||
            kp_fsm_snapshot(g, &s2, err, sizeof(err)) != KP_OK || s1.len != s2.len ||
            memcmp(s1.data, s2.data, s1.len) != 0)
            abort();
        kp_fsm_free(g);
    } else if (kp_fsm_count(f, KP_KIND_KEY) != 0 || kp_fsm_audit_count(f) != 0) {
        abort(); /* a refused restore changed the target */
    }
    kp_buf_free(&s1);
    kp_buf_free(&s2);
    kp_fsm_free(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    if (data[0] == 0) {
        restore(data + 1, size - 1);
    } else {
        size_t len;
        uint8_t *w = wrap(data + 1, size - 1, &len);
        if (w != NULL)
            restore(w, len);
        free(w);
    }
    return 0;
}

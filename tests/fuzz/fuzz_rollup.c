/* libFuzzer driver for rollup day files (meter/rollup.c, docs/rollups.md).
 * The first byte of an input picks what the rest is:
 *
 *   0  a day file, decoded as is (mutations rarely pass the CRCs, so this
 *      mostly exercises the header checks);
 *   1  a day file whose body length and both CRCs the driver recomputes
 *      first, so that mutated sections reach zstd, msgpack and the row
 *      checks;
 *   2  a segment, merged into a new day (the day of its first frame's
 *      time), which must then encode, decode and encode again to the same
 *      bytes.
 *
 * Decoding must never crash, leak or allocate without bound; a day it
 * accepts must encode and decode again to the same bytes. Seeds in
 * corpus/rollup/ are a real day file (modes 0 and 1) and segments made by
 * `kpseg gen` (mode 2). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "meter/meter.h"

static void must(int cond)
{
    if (!cond)
        abort();
}

/* A day that decoded must round-trip byte for byte. */
static void round_trip(const struct kp_rollup_day *d)
{
    struct kp_buf a, b;
    kp_buf_init(&a);
    kp_buf_init(&b);
    char err[256];
    if (kp_rollup_day_encode(d, &a) == KP_OK) {
        struct kp_rollup_day *d2 = NULL;
        must(kp_rollup_day_decode(a.data, a.len, &d2, err, sizeof(err)) == KP_OK);
        must(kp_rollup_day_encode(d2, &b) == KP_OK);
        must(a.len == b.len && memcmp(a.data, b.data, a.len) == 0);
        kp_rollup_day_free(d2);
    }
    kp_buf_free(&a);
    kp_buf_free(&b);
}

static void decode(const uint8_t *p, size_t n)
{
    char err[256];
    struct kp_rollup_day *d = NULL;
    if (kp_rollup_day_decode(p, n, &d, err, sizeof(err)) == KP_OK) {
        round_trip(d);
        kp_rollup_day_free(d);
    }
    /* The partial decoders must be as careful. */
    for (unsigned mask = 1; mask < KP_ROLLUP_ALL_LEVELS; mask <<= 1) {
        d = NULL;
        if (kp_rollup_day_decode_levels(p, n, mask, &d, err, sizeof(err)) == KP_OK)
            kp_rollup_day_free(d);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > ((size_t)4 << 20))
        return 0;
    const uint8_t *p = data + 1;
    size_t n = size - 1;
    switch (data[0] % 3) {
    case 0:
        decode(p, n);
        break;
    case 1: {
        if (n < 32)
            return 0;
        uint8_t *c = malloc(n);
        if (c == NULL)
            return 0;
        memcpy(c, p, n);
        kp_put_le(c + 16, n - 32, 8);
        kp_put_le(c + 24, kp_segment_crc32c(0, c + 32, n - 32), 4);
        kp_put_le(c + 28, kp_segment_crc32c(0, c, 28), 4);
        decode(c, n);
        free(c);
        break;
    }
    default: {
        struct kp_segment_summary s;
        if (kp_segment_validate(p, n, &s) != KP_OK || s.events == 0)
            return 0;
        struct kp_rollup_day *d = NULL;
        char err[256];
        must(kp_rollup_day_new(kp_day_floor_ms(s.min_time_ms), &d) == KP_OK);
        if (kp_rollup_day_merge_segment(d, p, n, err, sizeof(err)) == KP_OK) {
            must(kp_rollup_day_events(d) > 0);
            round_trip(d);
        }
        kp_rollup_day_free(d);
        break;
    }
    }
    return 0;
}

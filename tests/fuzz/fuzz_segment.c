/* libFuzzer driver for segments and usage events (meter/meter.h): every
 * input is read as a segment (reader, validation, valid-prefix scan) and as
 * one msgpack event. Crashes, sanitizer reports, leaks, hangs and unbounded
 * allocation are what the fuzzer looks for; it also checks the invariants
 * that tie the three segment entry points together.
 *
 * Random mutations rarely get past the CRC-32C checksums, so each input is
 * also read a second time after its checksums have been recomputed in a
 * copy (header, every frame header and payload, footer): that copy reaches
 * the bounds checks, zstd and the event decoder with mutated contents. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "meter/meter.h"

static void put_crc(uint8_t *at, const uint8_t *from, size_t len)
{
    kp_put_le(at, kp_segment_crc32c(0, from, len), 4);
}

/* Recompute every checksum that the layout lets us find. */
static void fix_checksums(uint8_t *p, size_t len)
{
    if (len < KP_SEGMENT_HEADER_SIZE)
        return;
    put_crc(p + 124, p, 124);
    size_t pos = KP_SEGMENT_HEADER_SIZE;
    while (len - pos >= KP_SEGMENT_FRAME_HEADER_SIZE && memcmp(p + pos, "KPFR", 4) == 0) {
        size_t plen = (size_t)kp_get_le(p + pos + 4, 4);
        size_t room = len - pos - KP_SEGMENT_FRAME_HEADER_SIZE;
        if (plen > room)
            plen = room;
        put_crc(p + pos + 32, p + pos + KP_SEGMENT_FRAME_HEADER_SIZE, plen);
        put_crc(p + pos + 36, p + pos, 36);
        pos += KP_SEGMENT_FRAME_HEADER_SIZE + plen;
    }
    if (len - pos == KP_SEGMENT_FOOTER_SIZE && memcmp(p + pos, "KPFT", 4) == 0) {
        uint32_t crc = kp_segment_crc32c(0, p, KP_SEGMENT_HEADER_SIZE);
        kp_put_le(p + pos + 60, kp_segment_crc32c(crc, p + pos, 60), 4);
    }
}

static void read_segment(const uint8_t *data, size_t size)
{
    struct kp_segment_reader r;
    struct kp_usage_event ev;
    struct kp_segment_summary s, v;
    size_t valid = 0;
    uint64_t n = 0;
    if (kp_segment_reader_init(&r, data, size) == KP_OK) {
        while (kp_segment_reader_next(&r, &ev)) {
            n++;
            json_decref(kp_usage_event_to_json(&ev));
        }
    }
    if (r.events != n || r.valid_len > size || (r.err == KP_OK && r.valid_len != size))
        abort();
    kp_segment_reader_close(&r);

    int scan_rc = kp_segment_scan(data, size, &s);
    int validate_rc = kp_segment_validate(data, size, &v);
    int prefix_rc = kp_segment_scan_valid_prefix(data, size, &valid);
    if (valid != s.valid_len || valid > size || s.events != n)
        abort();
    if (validate_rc == KP_OK && (scan_rc != KP_OK || !v.sealed))
        abort();
    if (prefix_rc == KP_OK && valid < KP_SEGMENT_HEADER_SIZE)
        abort();
    /* The valid prefix is itself a segment that scans clean, unless it was
     * cut from a sealed one (header marked sealed, footer cut away). */
    if (prefix_rc == KP_OK && valid < size && !(s.header.flags & KP_SEGMENT_FLAG_SEALED) &&
        kp_segment_scan(data, valid, &v) != KP_OK)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct kp_usage_event ev;
    char err[256];
    size_t used;
    if (kp_usage_event_decode(data, size, &ev, &used, err, sizeof(err)) == KP_OK &&
        (used > size || kp_usage_event_check(&ev, err, sizeof(err)) != KP_OK))
        abort();

    read_segment(data, size);

    uint8_t *fixed = malloc(size ? size : 1);
    if (fixed == NULL)
        return 0;
    memcpy(fixed, data, size);
    fix_checksums(fixed, size);
    read_segment(fixed, size);
    free(fixed);
    return 0;
}

/* Segments: a header, frames of zstd-compressed events, and a footer once
 * sealed. docs/segment-format.md specifies the bytes; this file reads and
 * writes them in memory and does no I/O.
 *
 * Writing: the writer encodes events into a pending buffer; a flush
 * compresses it into one frame (header with lengths, count, time range and
 * two CRC-32C checksums, then one zstd frame) appended to the bytes the
 * caller will write. Sealing appends a footer that repeats the totals and
 * checksums the header and itself, and sets the header's sealed flag.
 *
 * Reading: the reader verifies the header, then each frame before using it:
 * header checksum, bounds (a frame may not claim more than
 * KP_SEGMENT_FRAME_MAX_RAW uncompressed bytes, so a corrupt length cannot
 * make it allocate), payload checksum, exactly one zstd frame that
 * decompresses to the declared size. Then it decodes the events one by one
 * and, at the end of the frame, checks that the count, the byte length and
 * the time range match the frame header. After the last frame comes either
 * the end of the buffer (an open segment) or the footer, whose totals must
 * match what was read. The first problem stops the reader for good, with
 * the offset where it was found and the length of the valid prefix before
 * it: a torn tail ends the prefix at the last whole frame.
 *
 * zstd's memory comes from kp_malloc (core's kp_zstd_cctx_new and
 * kp_zstd_dctx_new), so allocation-failure tests reach it too. */
#include "meter/meter.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <zstd.h>

static const uint8_t header_magic[8] = {'K', 'P', 'S', 'E', 'G', '\r', '\n', 0x1a};
static const uint8_t frame_magic[4] = {'K', 'P', 'F', 'R'};
static const uint8_t footer_magic[4] = {'K', 'P', 'F', 'T'};

/* Byte offsets inside the three fixed structures. */
enum {
    HDR_VERSION = 8,
    HDR_SIZE = 10,
    HDR_FLAGS = 12,
    HDR_SEQ = 16,
    HDR_CREATED = 24,
    HDR_NODE = 32,
    HDR_CRC = 124,
    FRM_PAYLOAD_LEN = 4,
    FRM_RAW_LEN = 8,
    FRM_COUNT = 12,
    FRM_MIN = 16,
    FRM_MAX = 24,
    FRM_PAYLOAD_CRC = 32,
    FRM_CRC = 36,
    FTR_FRAMES = 4,
    FTR_EVENTS = 8,
    FTR_MIN = 16,
    FTR_MAX = 24,
    FTR_FRAMES_LEN = 32,
    FTR_FRAMES_CRC = 40,
    FTR_CRC = 60,
};

/* The largest payload a valid frame can have: zstd's bound for the largest
 * raw size. */
#define FRAME_MAX_PAYLOAD ZSTD_COMPRESSBOUND(KP_SEGMENT_FRAME_MAX_RAW)

/* --- CRC-32C ------------------------------------------------------------- */

/* Reflected polynomial 0x82f63b78, one byte at a time. */
static const uint32_t crc32c_table[256] = {
    0x00000000, 0xf26b8303, 0xe13b70f7, 0x1350f3f4, 0xc79a971f, 0x35f1141c, 0x26a1e7e8, 0xd4ca64eb,
    0x8ad958cf, 0x78b2dbcc, 0x6be22838, 0x9989ab3b, 0x4d43cfd0, 0xbf284cd3, 0xac78bf27, 0x5e133c24,
    0x105ec76f, 0xe235446c, 0xf165b798, 0x030e349b, 0xd7c45070, 0x25afd373, 0x36ff2087, 0xc494a384,
    0x9a879fa0, 0x68ec1ca3, 0x7bbcef57, 0x89d76c54, 0x5d1d08bf, 0xaf768bbc, 0xbc267848, 0x4e4dfb4b,
    0x20bd8ede, 0xd2d60ddd, 0xc186fe29, 0x33ed7d2a, 0xe72719c1, 0x154c9ac2, 0x061c6936, 0xf477ea35,
    0xaa64d611, 0x580f5512, 0x4b5fa6e6, 0xb93425e5, 0x6dfe410e, 0x9f95c20d, 0x8cc531f9, 0x7eaeb2fa,
    0x30e349b1, 0xc288cab2, 0xd1d83946, 0x23b3ba45, 0xf779deae, 0x05125dad, 0x1642ae59, 0xe4292d5a,
    0xba3a117e, 0x4851927d, 0x5b016189, 0xa96ae28a, 0x7da08661, 0x8fcb0562, 0x9c9bf696, 0x6ef07595,
    0x417b1dbc, 0xb3109ebf, 0xa0406d4b, 0x522bee48, 0x86e18aa3, 0x748a09a0, 0x67dafa54, 0x95b17957,
    0xcba24573, 0x39c9c670, 0x2a993584, 0xd8f2b687, 0x0c38d26c, 0xfe53516f, 0xed03a29b, 0x1f682198,
    0x5125dad3, 0xa34e59d0, 0xb01eaa24, 0x42752927, 0x96bf4dcc, 0x64d4cecf, 0x77843d3b, 0x85efbe38,
    0xdbfc821c, 0x2997011f, 0x3ac7f2eb, 0xc8ac71e8, 0x1c661503, 0xee0d9600, 0xfd5d65f4, 0x0f36e6f7,
    0x61c69362, 0x93ad1061, 0x80fde395, 0x72966096, 0xa65c047d, 0x5437877e, 0x4767748a, 0xb50cf789,
    0xeb1fcbad, 0x197448ae, 0x0a24bb5a, 0xf84f3859, 0x2c855cb2, 0xdeeedfb1, 0xcdbe2c45, 0x3fd5af46,
    0x7198540d, 0x83f3d70e, 0x90a324fa, 0x62c8a7f9, 0xb602c312, 0x44694011, 0x5739b3e5, 0xa55230e6,
    0xfb410cc2, 0x092a8fc1, 0x1a7a7c35, 0xe811ff36, 0x3cdb9bdd, 0xceb018de, 0xdde0eb2a, 0x2f8b6829,
    0x82f63b78, 0x709db87b, 0x63cd4b8f, 0x91a6c88c, 0x456cac67, 0xb7072f64, 0xa457dc90, 0x563c5f93,
    0x082f63b7, 0xfa44e0b4, 0xe9141340, 0x1b7f9043, 0xcfb5f4a8, 0x3dde77ab, 0x2e8e845f, 0xdce5075c,
    0x92a8fc17, 0x60c37f14, 0x73938ce0, 0x81f80fe3, 0x55326b08, 0xa759e80b, 0xb4091bff, 0x466298fc,
    0x1871a4d8, 0xea1a27db, 0xf94ad42f, 0x0b21572c, 0xdfeb33c7, 0x2d80b0c4, 0x3ed04330, 0xccbbc033,
    0xa24bb5a6, 0x502036a5, 0x4370c551, 0xb11b4652, 0x65d122b9, 0x97baa1ba, 0x84ea524e, 0x7681d14d,
    0x2892ed69, 0xdaf96e6a, 0xc9a99d9e, 0x3bc21e9d, 0xef087a76, 0x1d63f975, 0x0e330a81, 0xfc588982,
    0xb21572c9, 0x407ef1ca, 0x532e023e, 0xa145813d, 0x758fe5d6, 0x87e466d5, 0x94b49521, 0x66df1622,
    0x38cc2a06, 0xcaa7a905, 0xd9f75af1, 0x2b9cd9f2, 0xff56bd19, 0x0d3d3e1a, 0x1e6dcdee, 0xec064eed,
    0xc38d26c4, 0x31e6a5c7, 0x22b65633, 0xd0ddd530, 0x0417b1db, 0xf67c32d8, 0xe52cc12c, 0x1747422f,
    0x49547e0b, 0xbb3ffd08, 0xa86f0efc, 0x5a048dff, 0x8ecee914, 0x7ca56a17, 0x6ff599e3, 0x9d9e1ae0,
    0xd3d3e1ab, 0x21b862a8, 0x32e8915c, 0xc083125f, 0x144976b4, 0xe622f5b7, 0xf5720643, 0x07198540,
    0x590ab964, 0xab613a67, 0xb831c993, 0x4a5a4a90, 0x9e902e7b, 0x6cfbad78, 0x7fab5e8c, 0x8dc0dd8f,
    0xe330a81a, 0x115b2b19, 0x020bd8ed, 0xf0605bee, 0x24aa3f05, 0xd6c1bc06, 0xc5914ff2, 0x37faccf1,
    0x69e9f0d5, 0x9b8273d6, 0x88d28022, 0x7ab90321, 0xae7367ca, 0x5c18e4c9, 0x4f48173d, 0xbd23943e,
    0xf36e6f75, 0x0105ec76, 0x12551f82, 0xe03e9c81, 0x34f4f86a, 0xc69f7b69, 0xd5cf889d, 0x27a40b9e,
    0x79b737ba, 0x8bdcb4b9, 0x988c474d, 0x6ae7c44e, 0xbe2da0a5, 0x4c4623a6, 0x5f16d052, 0xad7d5351,
};

uint32_t kp_segment_crc32c(uint32_t crc, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    crc = ~crc;
    for (size_t i = 0; i < len; i++)
        crc = crc32c_table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
    return ~crc;
}

/* --- little-endian fields ------------------------------------------------ */

/* Times are int64 on the wire as two's complement. */
static int64_t get_time(const uint8_t *p)
{
    uint64_t v = kp_get_le(p, 8);
    return v <= INT64_MAX ? (int64_t)v : -(int64_t)(~v) - 1;
}

/* --- header -------------------------------------------------------------- */

static void header_encode(const struct kp_segment_header *h, uint8_t out[KP_SEGMENT_HEADER_SIZE])
{
    memset(out, 0, KP_SEGMENT_HEADER_SIZE);
    memcpy(out, header_magic, sizeof(header_magic));
    kp_put_le(out + HDR_VERSION, h->version, 2);
    kp_put_le(out + HDR_SIZE, KP_SEGMENT_HEADER_SIZE, 2);
    kp_put_le(out + HDR_FLAGS, h->flags, 4);
    kp_put_le(out + HDR_SEQ, h->seq, 8);
    kp_put_le(out + HDR_CREATED, (uint64_t)h->created_ms, 8);
    memcpy(out + HDR_NODE, h->node, strlen(h->node));
    kp_put_le(out + HDR_CRC, kp_segment_crc32c(0, out, HDR_CRC), 4);
}

/* The node name: 1..63 bytes of UTF-8, then zeros to the end of the field. */
static bool node_field_valid(const uint8_t *p)
{
    size_t n = strnlen((const char *)p, KP_SEGMENT_NODE_MAX + 1);
    if (n == 0 || n > KP_SEGMENT_NODE_MAX)
        return false;
    for (size_t i = n; i <= KP_SEGMENT_NODE_MAX; i++) {
        if (p[i] != 0)
            return false;
    }
    return kp_usage_str_valid((const char *)p, n);
}

/* --- writer -------------------------------------------------------------- */

static int writer_fail(struct kp_segment_writer *w, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int writer_fail(struct kp_segment_writer *w, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->errmsg, sizeof(w->errmsg), fmt, ap);
    va_end(ap);
    return rc;
}

static int writer_options(struct kp_segment_writer *w, const struct kp_segment_writer_options *opt)
{
    size_t n = opt->node ? strnlen(opt->node, KP_SEGMENT_NODE_MAX + 1) : 0;
    if (n == 0 || n > KP_SEGMENT_NODE_MAX || !kp_usage_str_valid(opt->node, n))
        return writer_fail(w, KP_EINVAL, "segment writer: node must be 1..%d bytes of UTF-8",
                           KP_SEGMENT_NODE_MAX);
    w->frame_bytes = opt->frame_bytes ? opt->frame_bytes : KP_SEGMENT_FRAME_DEFAULT;
    /* A frame grows to frame_bytes plus one event, and must stay within the
     * limit every reader enforces. */
    if (w->frame_bytes > KP_SEGMENT_FRAME_MAX_RAW - KP_USAGE_ENCODED_MAX)
        return writer_fail(w, KP_EINVAL, "segment writer: frame_bytes %zu above the limit %u",
                           w->frame_bytes, KP_SEGMENT_FRAME_MAX_RAW - KP_USAGE_ENCODED_MAX);
    w->zstd_level = opt->zstd_level ? opt->zstd_level : ZSTD_CLEVEL_DEFAULT;
    if (w->zstd_level < ZSTD_minCLevel() || w->zstd_level > ZSTD_maxCLevel())
        return writer_fail(w, KP_EINVAL, "segment writer: zstd level %d out of range",
                           w->zstd_level);
    w->header.version = KP_SEGMENT_VERSION;
    w->header.seq = opt->seq;
    w->header.created_ms = opt->created_ms;
    memcpy(w->header.node, opt->node, n);
    return KP_OK;
}

int kp_segment_writer_init(struct kp_segment_writer *w, const struct kp_segment_writer_options *opt)
{
    uint8_t header[KP_SEGMENT_HEADER_SIZE];
    memset(w, 0, sizeof(*w));
    kp_buf_init(&w->out);
    kp_buf_init(&w->pending);
    int rc = writer_options(w, opt);
    if (rc != KP_OK)
        return rc;
    w->cctx = kp_zstd_cctx_new();
    if (w->cctx == NULL)
        goto err_nomem;
    header_encode(&w->header, header);
    if (kp_buf_append(&w->out, header, sizeof(header)) != 0)
        goto err_after_cctx;
    return KP_OK;

err_after_cctx:
    ZSTD_freeCCtx(w->cctx);
    w->cctx = NULL;
err_nomem:
    return writer_fail(w, KP_ENOMEM, "segment writer: out of memory");
}

/* Make room for one more event in the pending frame. */
static int writer_room(struct kp_segment_writer *w)
{
    if (w->sealed)
        return writer_fail(w, KP_EINVAL, "segment writer: add after seal");
    if (w->pending.len >= w->frame_bytes)
        return kp_segment_writer_flush(w);
    return KP_OK;
}

static void writer_count(struct kp_segment_writer *w, int64_t time_ms)
{
    if (w->pending_events == 0 || time_ms < w->pending_min)
        w->pending_min = time_ms;
    if (w->pending_events == 0 || time_ms > w->pending_max)
        w->pending_max = time_ms;
    w->pending_events++;
}

int kp_segment_writer_add(struct kp_segment_writer *w, const struct kp_usage_event *ev)
{
    char why[200];
    int rc = writer_room(w);
    if (rc != KP_OK)
        return rc;
    rc = kp_usage_event_encode(ev, &w->pending, why, sizeof(why));
    if (rc != KP_OK)
        return writer_fail(w, rc, "segment writer: %s", why);
    writer_count(w, ev->time_ms);
    return KP_OK;
}

int kp_segment_writer_add_encoded(struct kp_segment_writer *w, const void *enc, size_t len,
                                  int64_t time_ms)
{
    int rc = writer_room(w);
    if (rc == KP_OK && kp_buf_append(&w->pending, enc, len) != KP_OK)
        rc = writer_fail(w, KP_ENOMEM, "segment writer: out of memory");
    if (rc == KP_OK)
        writer_count(w, time_ms);
    return rc;
}

static void frame_header_encode(const struct kp_segment_writer *w, uint8_t *fh, size_t payload_len)
{
    memcpy(fh, frame_magic, sizeof(frame_magic));
    kp_put_le(fh + FRM_PAYLOAD_LEN, payload_len, 4);
    kp_put_le(fh + FRM_RAW_LEN, w->pending.len, 4);
    kp_put_le(fh + FRM_COUNT, w->pending_events, 4);
    kp_put_le(fh + FRM_MIN, (uint64_t)w->pending_min, 8);
    kp_put_le(fh + FRM_MAX, (uint64_t)w->pending_max, 8);
    kp_put_le(fh + FRM_PAYLOAD_CRC,
              kp_segment_crc32c(0, fh + KP_SEGMENT_FRAME_HEADER_SIZE, payload_len), 4);
    kp_put_le(fh + FRM_CRC, kp_segment_crc32c(0, fh, FRM_CRC), 4);
}

/* Fold the frame just written into the segment's totals. */
static void writer_account(struct kp_segment_writer *w, const uint8_t *fh, size_t frame_len)
{
    if (w->events == 0 || w->pending_min < w->min_time_ms)
        w->min_time_ms = w->pending_min;
    if (w->events == 0 || w->pending_max > w->max_time_ms)
        w->max_time_ms = w->pending_max;
    w->frames_crc = kp_segment_crc32c(w->frames_crc, fh, KP_SEGMENT_FRAME_HEADER_SIZE);
    w->frames_len += frame_len;
    w->frames++;
    w->events += w->pending_events;
    w->pending.len = 0;
    w->pending_events = 0;
}

int kp_segment_writer_flush(struct kp_segment_writer *w)
{
    if (w->pending_events == 0)
        return KP_OK;
    if (w->frames >= UINT32_MAX)
        return writer_fail(w, KP_ETOOBIG, "segment writer: too many frames");
    size_t bound = ZSTD_compressBound(w->pending.len);
    if (kp_buf_reserve(&w->out, KP_SEGMENT_FRAME_HEADER_SIZE + bound) != 0)
        return writer_fail(w, KP_ENOMEM, "segment writer: flush: out of memory");
    uint8_t *fh = (uint8_t *)w->out.data + w->out.len;
    size_t n = ZSTD_compressCCtx(w->cctx, fh + KP_SEGMENT_FRAME_HEADER_SIZE, bound, w->pending.data,
                                 w->pending.len, w->zstd_level);
    if (ZSTD_isError(n)) {
        int rc = kp_zstd_err(n, KP_EIO);
        return writer_fail(w, rc, "segment writer: zstd: %s", ZSTD_getErrorName(n));
    }
    frame_header_encode(w, fh, n);
    w->out.len += KP_SEGMENT_FRAME_HEADER_SIZE + n;
    writer_account(w, fh, KP_SEGMENT_FRAME_HEADER_SIZE + n);
    return KP_OK;
}

static void footer_encode(const struct kp_segment_writer *w, const uint8_t *sealed_header,
                          uint8_t out[KP_SEGMENT_FOOTER_SIZE])
{
    memset(out, 0, KP_SEGMENT_FOOTER_SIZE);
    memcpy(out, footer_magic, sizeof(footer_magic));
    kp_put_le(out + FTR_FRAMES, w->frames, 4);
    kp_put_le(out + FTR_EVENTS, w->events, 8);
    kp_put_le(out + FTR_MIN, (uint64_t)w->min_time_ms, 8);
    kp_put_le(out + FTR_MAX, (uint64_t)w->max_time_ms, 8);
    kp_put_le(out + FTR_FRAMES_LEN, w->frames_len, 8);
    kp_put_le(out + FTR_FRAMES_CRC, w->frames_crc, 4);
    uint32_t crc = kp_segment_crc32c(0, sealed_header, KP_SEGMENT_HEADER_SIZE);
    kp_put_le(out + FTR_CRC, kp_segment_crc32c(crc, out, FTR_CRC), 4);
}

int kp_segment_writer_seal(struct kp_segment_writer *w)
{
    uint8_t footer[KP_SEGMENT_FOOTER_SIZE];
    struct kp_segment_header sealed = w->header;
    if (w->sealed)
        return writer_fail(w, KP_EINVAL, "segment writer: sealed twice");
    int rc = kp_segment_writer_flush(w);
    if (rc != KP_OK)
        return rc;
    sealed.flags |= KP_SEGMENT_FLAG_SEALED;
    header_encode(&sealed, w->sealed_header);
    footer_encode(w, w->sealed_header, footer);
    if (kp_buf_append(&w->out, footer, sizeof(footer)) != 0)
        return writer_fail(w, KP_ENOMEM, "segment writer: seal: out of memory");
    if (w->out_offset == 0 && w->out.len >= KP_SEGMENT_HEADER_SIZE)
        memcpy(w->out.data, w->sealed_header, KP_SEGMENT_HEADER_SIZE);
    w->header = sealed;
    w->sealed = true;
    return KP_OK;
}

void kp_segment_writer_consume(struct kp_segment_writer *w, size_t n)
{
    if (n > w->out.len)
        n = w->out.len;
    kp_buf_consume(&w->out, n);
    w->out_offset += n;
}

void kp_segment_writer_close(struct kp_segment_writer *w)
{
    ZSTD_freeCCtx(w->cctx);
    w->cctx = NULL;
    kp_buf_free(&w->pending);
    kp_buf_free(&w->out);
}

/* --- reader -------------------------------------------------------------- */

static bool reader_fail(struct kp_segment_reader *r, int rc, size_t off, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Record the (first, sticky) error. Always returns false, for
 * "return reader_fail(...)" in the functions that answer "go on?". */
static bool reader_fail(struct kp_segment_reader *r, int rc, size_t off, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->errmsg, sizeof(r->errmsg), fmt, ap);
    va_end(ap);
    r->err = rc;
    r->err_offset = off;
    return false;
}

static bool header_parse(struct kp_segment_reader *r)
{
    const uint8_t *p = r->buf;
    if (r->len < sizeof(header_magic) || memcmp(p, header_magic, sizeof(header_magic)) != 0)
        return reader_fail(r, KP_EPARSE, 0, "not a segment (bad magic)");
    if (r->len < KP_SEGMENT_HEADER_SIZE)
        return reader_fail(r, KP_EPARSE, 0, "header truncated (%zu of %d bytes)", r->len,
                           KP_SEGMENT_HEADER_SIZE);
    r->header.version = (uint16_t)kp_get_le(p + HDR_VERSION, 2);
    if (r->header.version != KP_SEGMENT_VERSION)
        return reader_fail(r, KP_EPARSE, HDR_VERSION, "unsupported format version %u",
                           r->header.version);
    if (kp_get_le(p + HDR_SIZE, 2) != KP_SEGMENT_HEADER_SIZE)
        return reader_fail(r, KP_EPARSE, HDR_SIZE, "header size %u, expected %d",
                           (unsigned)kp_get_le(p + HDR_SIZE, 2), KP_SEGMENT_HEADER_SIZE);
    if (kp_get_le(p + HDR_CRC, 4) != kp_segment_crc32c(0, p, HDR_CRC))
        return reader_fail(r, KP_EPARSE, 0, "header checksum mismatch");
    r->header.flags = (uint32_t)kp_get_le(p + HDR_FLAGS, 4);
    if (r->header.flags & ~KP_SEGMENT_FLAG_SEALED)
        return reader_fail(r, KP_EPARSE, HDR_FLAGS, "unknown header flags 0x%" PRIx32,
                           r->header.flags);
    if (!node_field_valid(p + HDR_NODE))
        return reader_fail(r, KP_EPARSE, HDR_NODE, "invalid node name");
    r->header.seq = kp_get_le(p + HDR_SEQ, 8);
    r->header.created_ms = get_time(p + HDR_CREATED);
    memcpy(r->header.node, p + HDR_NODE, KP_SEGMENT_NODE_MAX);
    r->header.node[KP_SEGMENT_NODE_MAX] = '\0';
    return true;
}

int kp_segment_reader_init(struct kp_segment_reader *r, const void *buf, size_t len)
{
    memset(r, 0, sizeof(*r));
    r->buf = buf;
    r->len = len;
    if (!header_parse(r))
        return r->err;
    r->pos = KP_SEGMENT_HEADER_SIZE;
    r->valid_len = KP_SEGMENT_HEADER_SIZE;
    return KP_OK;
}

void kp_segment_reader_close(struct kp_segment_reader *r)
{
    ZSTD_freeDCtx(r->dctx);
    r->dctx = NULL;
    kp_free(r->raw);
    r->raw = NULL;
    r->raw_cap = 0;
}

/* The end of the buffer right after a frame: the whole of an open segment. */
static bool reader_end(struct kp_segment_reader *r)
{
    if (r->header.flags & KP_SEGMENT_FLAG_SEALED)
        return reader_fail(r, KP_EPARSE, r->pos, "segment is marked sealed but has no footer");
    r->done = true;
    r->valid_len = r->len;
    return false;
}

#define FOOTER_EXPECT(cond, field, ...)                                                            \
    do {                                                                                           \
        if (!(cond))                                                                               \
            return reader_fail(r, KP_EPARSE, r->pos + (field), __VA_ARGS__);                       \
    } while (0)

static bool footer_totals(struct kp_segment_reader *r, const uint8_t *f)
{
    uint64_t frames = kp_get_le(f + FTR_FRAMES, 4), events = kp_get_le(f + FTR_EVENTS, 8);
    uint64_t frames_len = kp_get_le(f + FTR_FRAMES_LEN, 8);
    FOOTER_EXPECT(frames == r->frames, FTR_FRAMES, "footer says %" PRIu64 " frames, found %" PRIu64,
                  frames, r->frames);
    FOOTER_EXPECT(events == r->events, FTR_EVENTS, "footer says %" PRIu64 " events, found %" PRIu64,
                  events, r->events);
    FOOTER_EXPECT(get_time(f + FTR_MIN) == r->min_time_ms, FTR_MIN,
                  "footer's first event time differs from the events'");
    FOOTER_EXPECT(get_time(f + FTR_MAX) == r->max_time_ms, FTR_MAX,
                  "footer's last event time differs from the events'");
    FOOTER_EXPECT(frames_len == r->pos - KP_SEGMENT_HEADER_SIZE, FTR_FRAMES_LEN,
                  "footer says %" PRIu64 " bytes of frames, found %zu", frames_len,
                  r->pos - KP_SEGMENT_HEADER_SIZE);
    FOOTER_EXPECT(kp_get_le(f + FTR_FRAMES_CRC, 4) == r->frames_crc, FTR_FRAMES_CRC,
                  "footer's checksum of the frame headers does not match them");
    return true;
}

static bool reader_footer(struct kp_segment_reader *r)
{
    const uint8_t *f = r->buf + r->pos;
    size_t left = r->len - r->pos;
    if (left < KP_SEGMENT_FOOTER_SIZE)
        return reader_fail(r, KP_EPARSE, r->pos, "footer truncated (%zu of %d bytes)", left,
                           KP_SEGMENT_FOOTER_SIZE);
    if (left > KP_SEGMENT_FOOTER_SIZE)
        return reader_fail(r, KP_EPARSE, r->pos + KP_SEGMENT_FOOTER_SIZE,
                           "%zu bytes after the footer", left - KP_SEGMENT_FOOTER_SIZE);
    if (!(r->header.flags & KP_SEGMENT_FLAG_SEALED))
        return reader_fail(r, KP_EPARSE, r->pos,
                           "footer after the frames but the header is not marked sealed "
                           "(interrupted seal?)");
    uint32_t crc = kp_segment_crc32c(0, r->buf, KP_SEGMENT_HEADER_SIZE);
    if (kp_get_le(f + FTR_CRC, 4) != kp_segment_crc32c(crc, f, FTR_CRC))
        return reader_fail(r, KP_EPARSE, r->pos, "footer checksum mismatch");
    if (!footer_totals(r, f))
        return false;
    r->sealed = true;
    r->done = true;
    r->valid_len = r->len;
    return false;
}

static bool ensure_raw(struct kp_segment_reader *r, size_t n)
{
    if (r->raw_cap >= n)
        return true;
    kp_free(r->raw);
    r->raw_cap = 0;
    r->raw = kp_malloc(n);
    if (r->raw == NULL)
        return reader_fail(r, KP_ENOMEM, r->frame_off, "out of memory");
    r->raw_cap = n;
    return true;
}

static bool zstd_fail(struct kp_segment_reader *r, size_t at, size_t code)
{
    if (kp_zstd_err(code, KP_EPARSE) == KP_ENOMEM)
        return reader_fail(r, KP_ENOMEM, at, "out of memory");
    return reader_fail(r, KP_EPARSE, at, "frame payload: zstd: %s", ZSTD_getErrorName(code));
}

/* Decompress the payload at @at into r->raw; it must be exactly one zstd
 * frame declaring exactly @raw_len bytes of content. */
static bool decompress(struct kp_segment_reader *r, size_t at, size_t payload_len, size_t raw_len)
{
    const uint8_t *src = r->buf + at;
    enum kp_zstd_frame shape = kp_zstd_frame_check(src, payload_len, raw_len);
    if (shape == KP_ZSTD_FRAME_SIZE)
        return reader_fail(r, KP_EPARSE, at,
                           "frame payload: zstd frame does not declare %zu bytes of content",
                           raw_len);
    if (shape != KP_ZSTD_FRAME_OK)
        return reader_fail(r, KP_EPARSE, at, "frame payload is not exactly one zstd frame");
    if (r->dctx == NULL && (r->dctx = kp_zstd_dctx_new()) == NULL)
        return reader_fail(r, KP_ENOMEM, at, "out of memory");
    if (!ensure_raw(r, raw_len))
        return false;
    size_t n = ZSTD_decompressDCtx(r->dctx, r->raw, raw_len, src, payload_len);
    if (ZSTD_isError(n))
        return zstd_fail(r, at, n);
    if (n != raw_len)
        return reader_fail(r, KP_EPARSE, at, "frame payload: %zu bytes, header says %zu", n,
                           raw_len);
    return true;
}

/* The frame header's claims, checked before any of them is trusted. */
static bool frame_bounds(struct kp_segment_reader *r, const uint8_t *fh, size_t off)
{
    uint64_t payload_len = kp_get_le(fh + FRM_PAYLOAD_LEN, 4),
             raw_len = kp_get_le(fh + FRM_RAW_LEN, 4);
    uint64_t count = kp_get_le(fh + FRM_COUNT, 4);
    if (raw_len > KP_SEGMENT_FRAME_MAX_RAW)
        return reader_fail(r, KP_ETOOBIG, off + FRM_RAW_LEN,
                           "frame claims %" PRIu64 " uncompressed bytes, the limit is %u", raw_len,
                           KP_SEGMENT_FRAME_MAX_RAW);
    if (payload_len > FRAME_MAX_PAYLOAD)
        return reader_fail(r, KP_ETOOBIG, off + FRM_PAYLOAD_LEN,
                           "frame claims a %" PRIu64 "-byte payload, the limit is %u", payload_len,
                           (unsigned)FRAME_MAX_PAYLOAD);
    /* Every event takes at least one byte. */
    if (count == 0 || count > raw_len)
        return reader_fail(r, KP_EPARSE, off + FRM_COUNT,
                           "frame claims %" PRIu64 " events in %" PRIu64 " bytes", count, raw_len);
    if (get_time(fh + FRM_MIN) > get_time(fh + FRM_MAX))
        return reader_fail(r, KP_EPARSE, off + FRM_MIN, "frame time range is inverted");
    return true;
}

static bool frame_parse(struct kp_segment_reader *r, size_t off, const uint8_t *fh)
{
    size_t left = r->len - off;
    if (left < KP_SEGMENT_FRAME_HEADER_SIZE)
        return reader_fail(r, KP_EPARSE, off, "frame header truncated (%zu of %d bytes)", left,
                           KP_SEGMENT_FRAME_HEADER_SIZE);
    if (memcmp(fh, frame_magic, sizeof(frame_magic)) != 0)
        return reader_fail(r, KP_EPARSE, off, "bad frame magic");
    if (kp_get_le(fh + FRM_CRC, 4) != kp_segment_crc32c(0, fh, FRM_CRC))
        return reader_fail(r, KP_EPARSE, off, "frame header checksum mismatch");
    if (!frame_bounds(r, fh, off))
        return false;
    size_t payload_len = (size_t)kp_get_le(fh + FRM_PAYLOAD_LEN, 4);
    if (left - KP_SEGMENT_FRAME_HEADER_SIZE < payload_len)
        return reader_fail(r, KP_EPARSE, off, "frame truncated (payload of %zu bytes, %zu present)",
                           payload_len, left - KP_SEGMENT_FRAME_HEADER_SIZE);
    size_t at = off + KP_SEGMENT_FRAME_HEADER_SIZE;
    if (kp_get_le(fh + FRM_PAYLOAD_CRC, 4) != kp_segment_crc32c(0, r->buf + at, payload_len))
        return reader_fail(r, KP_EPARSE, at, "frame payload checksum mismatch");
    return decompress(r, at, payload_len, (size_t)kp_get_le(fh + FRM_RAW_LEN, 4));
}

/* Load the next frame, or reach the end. True when events are ready. */
static bool load_frame(struct kp_segment_reader *r)
{
    size_t off = r->pos, left = r->len - off;
    const uint8_t *fh = r->buf + off;
    if (left == 0)
        return reader_end(r);
    /* A footer, or a torn one: four bytes of magic, or fewer where only a
     * footer can follow (a sealed segment). */
    size_t m = left < sizeof(footer_magic) ? left : sizeof(footer_magic);
    bool sealed = r->header.flags & KP_SEGMENT_FLAG_SEALED;
    if (memcmp(fh, footer_magic, m) == 0 && (m == sizeof(footer_magic) || sealed))
        return reader_footer(r);
    r->frame_off = off;
    if (!frame_parse(r, off, fh))
        return false;
    r->raw_len = (size_t)kp_get_le(fh + FRM_RAW_LEN, 4);
    r->raw_pos = 0;
    r->frame_left = (uint32_t)kp_get_le(fh + FRM_COUNT, 4);
    r->frame_events = 0;
    r->frame_min = get_time(fh + FRM_MIN);
    r->frame_max = get_time(fh + FRM_MAX);
    r->frames_crc = kp_segment_crc32c(r->frames_crc, fh, KP_SEGMENT_FRAME_HEADER_SIZE);
    r->pos = off + KP_SEGMENT_FRAME_HEADER_SIZE + (size_t)kp_get_le(fh + FRM_PAYLOAD_LEN, 4);
    return true;
}

/* After a frame's last event: it must end exactly there, and its events
 * must span exactly the range its header claims. */
static bool finish_frame(struct kp_segment_reader *r)
{
    if (r->raw_pos != r->raw_len)
        return reader_fail(r, KP_EPARSE, r->frame_off,
                           "frame at offset %zu: %zu bytes after its last event", r->frame_off,
                           r->raw_len - r->raw_pos);
    if (r->seen_min != r->frame_min || r->seen_max != r->frame_max)
        return reader_fail(r, KP_EPARSE, r->frame_off + FRM_MIN,
                           "frame at offset %zu: time range differs from its events'",
                           r->frame_off);
    r->frames++;
    r->valid_len = r->pos;
    return true;
}

static void account_frame(struct kp_segment_reader *r, int64_t t)
{
    if (r->frame_events == 0 || t < r->seen_min)
        r->seen_min = t;
    if (r->frame_events == 0 || t > r->seen_max)
        r->seen_max = t;
    r->frame_events++;
    r->frame_left--;
}

/* Only for events actually yielded, so that @events counts what the caller
 * got. */
static void account_segment(struct kp_segment_reader *r, int64_t t)
{
    if (r->events == 0 || t < r->min_time_ms)
        r->min_time_ms = t;
    if (r->events == 0 || t > r->max_time_ms)
        r->max_time_ms = t;
    r->events++;
}

static bool decode_event(struct kp_segment_reader *r, struct kp_usage_event *ev)
{
    char why[200];
    size_t used;
    int rc = kp_usage_event_decode(r->raw + r->raw_pos, r->raw_len - r->raw_pos, ev, &used, why,
                                   sizeof(why));
    if (rc != KP_OK)
        return reader_fail(r, rc, r->frame_off,
                           "frame at offset %zu, event %" PRIu32 " (byte %zu of the payload): %s",
                           r->frame_off, r->frame_events, r->raw_pos + used, why);
    if (ev->time_ms < r->frame_min || ev->time_ms > r->frame_max)
        return reader_fail(r, KP_EPARSE, r->frame_off,
                           "frame at offset %zu, event %" PRIu32 ": time outside the frame's range",
                           r->frame_off, r->frame_events);
    r->raw_pos += used;
    account_frame(r, ev->time_ms);
    if (r->frame_left == 0 && !finish_frame(r))
        return false;
    account_segment(r, ev->time_ms);
    return true;
}

bool kp_segment_reader_next(struct kp_segment_reader *r, struct kp_usage_event *ev)
{
    if (r->err != KP_OK || r->buf == NULL)
        return false;
    while (r->frame_left == 0) {
        if (r->done || !load_frame(r))
            return false;
    }
    return decode_event(r, ev);
}

/* --- whole-segment checks ------------------------------------------------ */

int kp_segment_scan(const void *buf, size_t len, struct kp_segment_summary *out)
{
    struct kp_segment_reader r;
    struct kp_usage_event ev;
    if (kp_segment_reader_init(&r, buf, len) == KP_OK) {
        while (kp_segment_reader_next(&r, &ev))
            ;
    }
    memset(out, 0, sizeof(*out));
    out->header = r.header;
    out->sealed = r.sealed;
    out->frames = r.frames;
    out->events = r.events;
    out->min_time_ms = r.min_time_ms;
    out->max_time_ms = r.max_time_ms;
    out->valid_len = r.valid_len;
    out->err_offset = r.err_offset;
    memcpy(out->errmsg, r.errmsg, sizeof(out->errmsg));
    kp_segment_reader_close(&r);
    return r.err;
}

int kp_segment_validate(const void *buf, size_t len, struct kp_segment_summary *out)
{
    int rc = kp_segment_scan(buf, len, out);
    if (rc != KP_OK || out->sealed)
        return rc;
    out->err_offset = len;
    snprintf(out->errmsg, sizeof(out->errmsg),
             "segment is not sealed (ends after %" PRIu64 " whole frames)", out->frames);
    return KP_EPARSE;
}

int kp_segment_scan_valid_prefix(const void *buf, size_t len, size_t *valid_len)
{
    struct kp_segment_summary s;
    int rc = kp_segment_scan(buf, len, &s);
    *valid_len = s.valid_len;
    if (rc == KP_ENOMEM)
        return rc;
    return s.valid_len == 0 ? KP_EPARSE : KP_OK;
}

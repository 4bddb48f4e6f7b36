/* The bounded msgpack reader (mpack.h). Every read checks the bytes left
 * before it touches them; lengths and values are big endian on the wire. */
#include "mpack.h"

#include <string.h>

static bool fail(struct kp_mp_reader *r, enum kp_mp_err err, size_t at)
{
    r->err = err;
    r->err_off = at;
    return false;
}

void kp_mp_reader_init(struct kp_mp_reader *r, const void *buf, size_t len)
{
    memset(r, 0, sizeof(*r));
    r->start = buf;
    r->p = r->start;
    r->end = r->start + len;
}

bool kp_mp_take(struct kp_mp_reader *r, size_t n, const uint8_t **out)
{
    if (kp_mp_left(r) < n)
        return fail(r, KP_MP_EPAYLOAD, kp_mp_offset(r));
    *out = r->p;
    r->p += n;
    return true;
}

static bool take_be(struct kp_mp_reader *r, size_t n, uint64_t *v)
{
    const uint8_t *p = NULL;
    if (!kp_mp_take(r, n, &p))
        return false;
    *v = 0;
    for (size_t i = 0; i < n; i++)
        *v = *v << 8 | p[i];
    return true;
}

static void set_signed(struct kp_mp_head *h, int64_t v)
{
    h->kind = KP_MP_INT;
    h->i = v;
    h->negative = v < 0;
    h->u = v < 0 ? 0 : (uint64_t)v;
}

/* Type bytes 0xc0..0xdf: the kind, how the bytes after the type byte are
 * read, and their width (or the fixed payload's length). */
enum { H_BAD, H_NONE, H_BOOL, H_FIXED, H_LEN, H_EXTLEN, H_UINT, H_SINT };
static const struct {
    uint8_t kind, how, size;
} typed[32] = {
    {KP_MP_NIL, H_NONE, 0},   {KP_MP_NIL, H_BAD, 0},     {KP_MP_BOOL, H_BOOL, 0},   /* c0..c2 */
    {KP_MP_BOOL, H_BOOL, 0},  {KP_MP_BIN, H_LEN, 1},     {KP_MP_BIN, H_LEN, 2},     /* c3..c5 */
    {KP_MP_BIN, H_LEN, 4},    {KP_MP_EXT, H_EXTLEN, 1},  {KP_MP_EXT, H_EXTLEN, 2},  /* c6..c8 */
    {KP_MP_EXT, H_EXTLEN, 4}, {KP_MP_FLOAT, H_FIXED, 4}, {KP_MP_FLOAT, H_FIXED, 8}, /* c9..cb */
    {KP_MP_INT, H_UINT, 1},   {KP_MP_INT, H_UINT, 2},    {KP_MP_INT, H_UINT, 4},    /* cc..ce */
    {KP_MP_INT, H_UINT, 8},   {KP_MP_INT, H_SINT, 1},    {KP_MP_INT, H_SINT, 2},    /* cf..d1 */
    {KP_MP_INT, H_SINT, 4},   {KP_MP_INT, H_SINT, 8},    {KP_MP_EXT, H_FIXED, 2},   /* d2..d4 */
    {KP_MP_EXT, H_FIXED, 3},  {KP_MP_EXT, H_FIXED, 5},   {KP_MP_EXT, H_FIXED, 9},   /* d5..d7 */
    {KP_MP_EXT, H_FIXED, 17}, {KP_MP_STR, H_LEN, 1},     {KP_MP_STR, H_LEN, 2},     /* d8..da */
    {KP_MP_STR, H_LEN, 4},    {KP_MP_ARRAY, H_LEN, 2},   {KP_MP_ARRAY, H_LEN, 4},   /* db..dd */
    {KP_MP_MAP, H_LEN, 2},    {KP_MP_MAP, H_LEN, 4},                                /* de..df */
};

static bool head_typed(struct kp_mp_reader *r, uint8_t b, struct kp_mp_head *h)
{
    unsigned size = typed[b - 0xc0].size;
    uint64_t v;
    h->kind = typed[b - 0xc0].kind;
    switch (typed[b - 0xc0].how) {
    case H_NONE:
        return true;
    case H_BOOL:
        h->b = b == 0xc3;
        return true;
    case H_FIXED:
        h->n = size;
        return true;
    case H_LEN:
        return take_be(r, size, &h->n);
    case H_EXTLEN:
        if (!take_be(r, size, &h->n))
            return false;
        h->n += 1; /* the extension's type byte */
        return true;
    case H_UINT:
        return take_be(r, size, &h->u);
    case H_SINT:
        if (!take_be(r, size, &v))
            return false;
        /* Two's complement of the stored width: converting to a narrower
         * signed type wraps on every compiler we support. */
        set_signed(h, size == 1   ? (int8_t)v
                      : size == 2 ? (int16_t)v
                      : size == 4 ? (int32_t)v
                                  : (int64_t)v);
        return true;
    }
    return false; /* H_BAD: 0xc1 is never used */
}

static bool read_head(struct kp_mp_reader *r, struct kp_mp_head *h)
{
    const uint8_t *p = NULL;
    if (!kp_mp_take(r, 1, &p))
        return false;
    uint8_t b = *p;
    memset(h, 0, sizeof(*h));
    if (b <= 0x7f) {
        h->kind = KP_MP_INT;
        h->u = b;
    } else if (b <= 0x8f) {
        h->kind = KP_MP_MAP;
        h->n = b & 0x0f;
    } else if (b <= 0x9f) {
        h->kind = KP_MP_ARRAY;
        h->n = b & 0x0f;
    } else if (b <= 0xbf) {
        h->kind = KP_MP_STR;
        h->n = b & 0x1f;
    } else if (b >= 0xe0) {
        set_signed(h, (int64_t)b - 256);
    } else {
        return head_typed(r, b, h);
    }
    return true;
}

bool kp_mp_read_head(struct kp_mp_reader *r, struct kp_mp_head *h)
{
    size_t at = kp_mp_offset(r);
    return read_head(r, h) || fail(r, KP_MP_EHEAD, at);
}

static bool read_payload(struct kp_mp_reader *r, enum kp_mp_kind kind, uint64_t max,
                         const uint8_t **out, size_t *n)
{
    size_t at = kp_mp_offset(r);
    struct kp_mp_head h;
    if (!kp_mp_read_head(r, &h))
        return false;
    if (h.kind != kind) {
        r->err_kind = h.kind;
        return fail(r, KP_MP_ETYPE, at);
    }
    if (h.n > max)
        return fail(r, KP_MP_ERANGE, at);
    if (h.n > SIZE_MAX || !kp_mp_take(r, (size_t)h.n, out))
        return fail(r, KP_MP_EPAYLOAD, at);
    *n = (size_t)h.n;
    return true;
}

bool kp_mp_read_str(struct kp_mp_reader *r, uint64_t max, const uint8_t **s, size_t *n)
{
    return read_payload(r, KP_MP_STR, max, s, n);
}

bool kp_mp_read_bin(struct kp_mp_reader *r, uint64_t max, const uint8_t **b, size_t *n)
{
    return read_payload(r, KP_MP_BIN, max, b, n);
}

bool kp_mp_read_uint(struct kp_mp_reader *r, uint64_t max, uint64_t *v)
{
    size_t at = kp_mp_offset(r);
    struct kp_mp_head h;
    if (!kp_mp_read_head(r, &h))
        return false;
    if (h.kind != KP_MP_INT) {
        r->err_kind = h.kind;
        return fail(r, KP_MP_ETYPE, at);
    }
    if (h.negative || h.u > max)
        return fail(r, KP_MP_ERANGE, at);
    *v = h.u;
    return true;
}

static bool has_payload(enum kp_mp_kind k)
{
    return k == KP_MP_STR || k == KP_MP_BIN || k == KP_MP_EXT || k == KP_MP_FLOAT;
}

/* Containers add their elements to a counter instead of recursing. Every
 * element takes at least one byte, so a count larger than the bytes left
 * is refused at once and the loop ends within the input's length. */
bool kp_mp_skip(struct kp_mp_reader *r)
{
    uint64_t left = 1;
    while (left > 0) {
        size_t at = kp_mp_offset(r);
        struct kp_mp_head h;
        const uint8_t *p = NULL;
        if (!kp_mp_read_head(r, &h))
            return false;
        left--;
        if (has_payload(h.kind) && (h.n > SIZE_MAX || !kp_mp_take(r, (size_t)h.n, &p)))
            return fail(r, KP_MP_EPAYLOAD, at);
        if (h.kind == KP_MP_ARRAY)
            left += h.n;
        else if (h.kind == KP_MP_MAP)
            left += 2 * h.n;
        if (left > kp_mp_left(r))
            return fail(r, KP_MP_ECOUNT, at);
    }
    return true;
}

const char *kp_mp_kind_name(enum kp_mp_kind kind)
{
    static const char *const names[] = {
        "nil",    "a boolean", "an integer", "a float",      "a string",
        "binary", "an array",  "a map",      "an extension",
    };
    return (size_t)kind < sizeof(names) / sizeof(names[0]) ? names[kind] : "an unknown kind";
}

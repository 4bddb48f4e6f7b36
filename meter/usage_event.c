/* Usage events as msgpack maps with short stable keys.
 *
 * One table (fields[]) lists every field of version 1: its short key on the
 * wire, its long name (the struct member, the JSON name, the name in error
 * messages), its type and its rules. The encoder, the checker, the decoder
 * and the JSON conversion all walk that table, so they cannot disagree.
 *
 * Encoding goes through msgpack-c's packer into a kp_buf (so the allocation
 * is ours and injectable). Decoding does not use msgpack-c's unpacker: that
 * one allocates from a claimed element count before reading the elements
 * (five bytes claiming a 4-billion-element array ask malloc for 96 GB) and
 * builds a tree we would only walk once. The decoder here reads the map in
 * place with a cursor, allocates nothing, and checks every value as it
 * reads it: a wrong type, a value out of range, an oversized, empty (where
 * required) or non-UTF-8 string, a duplicate key, a missing field or the
 * input ending early each fail with the field's name and the byte offset.
 * Keys it does not know are skipped without recursion, so a newer writer's
 * extra fields, however nested, cost an old reader nothing. */
#include "meter/meter.h"

#include <inttypes.h>
#include <msgpack.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

enum field_type {
    FT_STR,    /* str, <= KP_USAGE_STR_MAX bytes of UTF-8 */
    FT_INT64,  /* any integer that fits int64 */
    FT_COUNT,  /* 0..INT64_MAX, stored as uint64_t */
    FT_UINT32, /* 0..UINT32_MAX */
    FT_STATUS, /* 0..999, stored as uint16_t */
    FT_BOOL,
};

struct field {
    const char *key;
    const char *name;
    enum field_type type;
    bool nonempty;
    size_t off;
};

#define F(key, member, type, nonempty)                                                             \
    {                                                                                              \
        key, #member, type, nonempty, offsetof(struct kp_usage_event, member)                      \
    }

/* The wire keys are part of the format (docs/segment-format.md): never
 * change or reuse one; add new fields with new keys, as optional. */
static const struct field fields[] = {
    F("t", time_ms, FT_INT64, false),
    F("r", request_id, FT_STR, true),
    F("n", node, FT_STR, true),
    F("k", key_id, FT_STR, false),
    F("p", pool, FT_STR, false),
    F("tn", tenant, FT_STR, false),
    F("pj", project, FT_STR, false),
    F("f", feature, FT_STR, false),
    F("pv", provider, FT_STR, false),
    F("mq", model_requested, FT_STR, false),
    F("ms", model_served, FT_STR, false),
    F("ti", tokens_in, FT_COUNT, false),
    F("to", tokens_out, FT_COUNT, false),
    F("tc", tokens_cached, FT_COUNT, false),
    F("te", tokens_estimated, FT_BOOL, false),
    F("c", cost, FT_INT64, false),
    F("fb", ttfb_us, FT_COUNT, false),
    F("tt", total_us, FT_COUNT, false),
    F("s", status, FT_STATUS, false),
    F("e", error_class, FT_STR, false),
    F("rt", retries, FT_UINT32, false),
    F("sm", streamed, FT_BOOL, false),
    F("kd", kind, FT_STR, true),
};

#define NFIELDS (sizeof(fields) / sizeof(fields[0]))

_Static_assert(NFIELDS <= 32, "the decoder tracks seen fields in a uint32_t");

static void set_err(char *errmsg, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *errmsg, size_t errlen, const char *fmt, ...)
{
    if (errmsg == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errmsg, errlen, fmt, ap);
    va_end(ap);
}

void kp_usage_event_init(struct kp_usage_event *ev)
{
    memset(ev, 0, sizeof(*ev));
    memcpy(ev->kind, KP_USAGE_KIND_APP, sizeof(KP_USAGE_KIND_APP));
}

int kp_usage_set_str(char dst[KP_USAGE_STR_MAX + 1], const char *s)
{
    size_t n = strnlen(s, KP_USAGE_STR_MAX + 1);
    if (n > KP_USAGE_STR_MAX) {
        dst[0] = '\0';
        return KP_ETOOBIG;
    }
    memcpy(dst, s, n);
    dst[n] = '\0';
    return KP_OK;
}

/* Length of the UTF-8 sequence starting with @b and the smallest second
 * byte allowed after it (to refuse overlong forms and surrogates); 0 when
 * @b cannot start a sequence. */
static size_t utf8_seq(uint8_t b, uint8_t *lo, uint8_t *hi)
{
    *lo = 0x80;
    *hi = 0xbf;
    if (b >= 0xc2 && b <= 0xdf)
        return 2;
    if (b >= 0xe0 && b <= 0xef) {
        if (b == 0xe0)
            *lo = 0xa0;
        if (b == 0xed)
            *hi = 0x9f;
        return 3;
    }
    if (b >= 0xf0 && b <= 0xf4) {
        if (b == 0xf0)
            *lo = 0x90;
        if (b == 0xf4)
            *hi = 0x8f;
        return 4;
    }
    return 0;
}

bool kp_usage_str_valid(const char *s, size_t len)
{
    const uint8_t *p = (const uint8_t *)s;
    if (len > KP_USAGE_STR_MAX)
        return false;
    for (size_t i = 0; i < len;) {
        if (p[i] == 0)
            return false;
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        uint8_t lo, hi;
        size_t n = utf8_seq(p[i], &lo, &hi);
        if (n == 0 || len - i < n || p[i + 1] < lo || p[i + 1] > hi)
            return false;
        for (size_t k = 2; k < n; k++) {
            if ((p[i + k] & 0xc0) != 0x80)
                return false;
        }
        i += n;
    }
    return true;
}

/* --- checking ------------------------------------------------------------ */

static int check_str(const struct field *f, const char *s, char *errmsg, size_t errlen)
{
    size_t n = strnlen(s, KP_USAGE_STR_MAX + 1);
    if (n > KP_USAGE_STR_MAX) {
        set_err(errmsg, errlen, "field '%s' (%s): longer than %d bytes", f->key, f->name,
                KP_USAGE_STR_MAX);
        return KP_EINVAL;
    }
    if (!kp_usage_str_valid(s, n)) {
        set_err(errmsg, errlen, "field '%s' (%s): not valid UTF-8", f->key, f->name);
        return KP_EINVAL;
    }
    if (f->nonempty && n == 0) {
        set_err(errmsg, errlen, "field '%s' (%s): must not be empty", f->key, f->name);
        return KP_EINVAL;
    }
    return KP_OK;
}

static int check_field(const struct field *f, const void *p, char *errmsg, size_t errlen)
{
    switch (f->type) {
    case FT_STR:
        return check_str(f, p, errmsg, errlen);
    case FT_COUNT:
        if (*(const uint64_t *)p > INT64_MAX)
            break;
        return KP_OK;
    case FT_STATUS:
        if (*(const uint16_t *)p > 999)
            break;
        return KP_OK;
    case FT_INT64:
    case FT_UINT32:
    case FT_BOOL:
        return KP_OK;
    }
    set_err(errmsg, errlen, "field '%s' (%s): out of range", f->key, f->name);
    return KP_EINVAL;
}

int kp_usage_event_check(const struct kp_usage_event *ev, char *errmsg, size_t errlen)
{
    for (size_t i = 0; i < NFIELDS; i++) {
        int rc = check_field(&fields[i], (const char *)ev + fields[i].off, errmsg, errlen);
        if (rc != KP_OK)
            return rc;
    }
    return KP_OK;
}

/* --- encoding ------------------------------------------------------------ */

static int buf_write(void *data, const char *p, size_t n)
{
    return kp_buf_append(data, p, n) == 0 ? 0 : -1;
}

static int pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    if (msgpack_pack_str(pk, n) != 0)
        return -1;
    return msgpack_pack_str_body(pk, s, n);
}

static int pack_field(msgpack_packer *pk, const struct field *f, const struct kp_usage_event *ev)
{
    const void *p = (const char *)ev + f->off;
    if (pack_str(pk, f->key) != 0)
        return -1;
    switch (f->type) {
    case FT_STR:
        return pack_str(pk, p);
    case FT_INT64:
        return msgpack_pack_int64(pk, *(const int64_t *)p);
    case FT_COUNT:
        return msgpack_pack_uint64(pk, *(const uint64_t *)p);
    case FT_UINT32:
        return msgpack_pack_uint32(pk, *(const uint32_t *)p);
    case FT_STATUS:
        return msgpack_pack_uint16(pk, *(const uint16_t *)p);
    case FT_BOOL:
        return *(const bool *)p ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
    }
    return -1;
}

int kp_usage_event_encode(const struct kp_usage_event *ev, struct kp_buf *out, char *errmsg,
                          size_t errlen)
{
    int rc = kp_usage_event_check(ev, errmsg, errlen);
    if (rc != KP_OK)
        return rc;
    size_t start = out->len;
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, buf_write);
    if (msgpack_pack_map(&pk, NFIELDS) != 0)
        goto err_nomem;
    for (size_t i = 0; i < NFIELDS; i++) {
        if (pack_field(&pk, &fields[i], ev) != 0)
            goto err_nomem;
    }
    return KP_OK;

err_nomem:
    out->len = start;
    set_err(errmsg, errlen, "encode usage event: out of memory");
    return KP_ENOMEM;
}

/* --- decoding ------------------------------------------------------------ */

enum mp_kind { MP_NIL, MP_BOOL, MP_INT, MP_FLOAT, MP_STR, MP_BIN, MP_ARRAY, MP_MAP, MP_EXT };

static const char *const mp_kind_names[] = {
    "nil",    "a boolean", "an integer", "a float",      "a string",
    "binary", "an array",  "a map",      "an extension",
};

/* One msgpack head: the type byte and what follows it up to the payload.
 * For strings, binary and extensions @n is the payload length (not yet
 * consumed); for arrays and maps the element count. */
struct mp_head {
    enum mp_kind kind;
    uint64_t n;
    bool negative; /* an integer below zero: see @i */
    uint64_t u;    /* an integer >= 0 */
    int64_t i;
    bool b;
};

struct cursor {
    const uint8_t *p;
    size_t len;
    size_t pos;
};

static bool take(struct cursor *c, size_t n, const uint8_t **out)
{
    if (c->len - c->pos < n)
        return false;
    *out = c->p + c->pos;
    c->pos += n;
    return true;
}

static bool take_be(struct cursor *c, size_t n, uint64_t *v)
{
    const uint8_t *p;
    if (!take(c, n, &p))
        return false;
    *v = 0;
    for (size_t i = 0; i < n; i++)
        *v = *v << 8 | p[i];
    return true;
}

static void set_signed(struct mp_head *h, int64_t v)
{
    h->kind = MP_INT;
    h->i = v;
    h->negative = v < 0;
    h->u = v < 0 ? 0 : (uint64_t)v;
}

static bool head_signed(struct cursor *c, struct mp_head *h, size_t nbytes)
{
    uint64_t v;
    if (!take_be(c, nbytes, &v))
        return false;
    /* Two's complement of the stored width (conversions to a narrower signed
     * type wrap on every compiler we support; no overflow is involved). */
    int64_t s = nbytes == 1   ? (int8_t)v
                : nbytes == 2 ? (int16_t)v
                : nbytes == 4 ? (int32_t)v
                              : (int64_t)v;
    set_signed(h, s);
    return true;
}

/* How the bytes after a type byte 0xc0..0xdf are read. */
enum head_how { H_BAD, H_NONE, H_BOOL, H_FIXED, H_LEN, H_EXTLEN, H_UINT, H_SINT };

static const struct {
    uint8_t kind;
    uint8_t how;
    uint8_t size; /* width of the length or value, or the fixed payload */
} typed_heads[32] = {
    {MP_NIL, H_NONE, 0},   {MP_NIL, H_BAD, 0},     {MP_BOOL, H_BOOL, 0},   /* c0..c2 */
    {MP_BOOL, H_BOOL, 0},  {MP_BIN, H_LEN, 1},     {MP_BIN, H_LEN, 2},     /* c3..c5 */
    {MP_BIN, H_LEN, 4},    {MP_EXT, H_EXTLEN, 1},  {MP_EXT, H_EXTLEN, 2},  /* c6..c8 */
    {MP_EXT, H_EXTLEN, 4}, {MP_FLOAT, H_FIXED, 4}, {MP_FLOAT, H_FIXED, 8}, /* c9..cb */
    {MP_INT, H_UINT, 1},   {MP_INT, H_UINT, 2},    {MP_INT, H_UINT, 4},    /* cc..ce */
    {MP_INT, H_UINT, 8},   {MP_INT, H_SINT, 1},    {MP_INT, H_SINT, 2},    /* cf..d1 */
    {MP_INT, H_SINT, 4},   {MP_INT, H_SINT, 8},    {MP_EXT, H_FIXED, 2},   /* d2..d4 */
    {MP_EXT, H_FIXED, 3},  {MP_EXT, H_FIXED, 5},   {MP_EXT, H_FIXED, 9},   /* d5..d7 */
    {MP_EXT, H_FIXED, 17}, {MP_STR, H_LEN, 1},     {MP_STR, H_LEN, 2},     /* d8..da */
    {MP_STR, H_LEN, 4},    {MP_ARRAY, H_LEN, 2},   {MP_ARRAY, H_LEN, 4},   /* db..dd */
    {MP_MAP, H_LEN, 2},    {MP_MAP, H_LEN, 4},                             /* de..df */
};

/* Type bytes 0xc0..0xdf, whose lengths and values follow in big endian.
 * An extension's type byte is counted as part of its payload. */
static bool head_typed(struct cursor *c, uint8_t b, struct mp_head *h)
{
    unsigned how = typed_heads[b - 0xc0].how;
    size_t size = typed_heads[b - 0xc0].size;
    h->kind = typed_heads[b - 0xc0].kind;
    switch (how) {
    case H_NONE:
        return true;
    case H_BOOL:
        h->b = b == 0xc3;
        return true;
    case H_FIXED:
        h->n = size;
        return true;
    case H_LEN:
        return take_be(c, size, &h->n);
    case H_EXTLEN:
        if (!take_be(c, size, &h->n))
            return false;
        h->n += 1;
        return true;
    case H_UINT:
        return take_be(c, size, &h->u);
    case H_SINT:
        return head_signed(c, h, size);
    }
    return false; /* H_BAD: 0xc1 is never used */
}

/* Read one head. False when the input ends inside it or the type byte is
 * the unused 0xc1. Float payloads are left unconsumed like strings. */
static bool read_head(struct cursor *c, struct mp_head *h)
{
    const uint8_t *p;
    if (!take(c, 1, &p))
        return false;
    uint8_t b = *p;
    memset(h, 0, sizeof(*h));
    if (b <= 0x7f) {
        h->kind = MP_INT;
        h->u = b;
    } else if (b <= 0x8f) {
        h->kind = MP_MAP;
        h->n = b & 0x0f;
    } else if (b <= 0x9f) {
        h->kind = MP_ARRAY;
        h->n = b & 0x0f;
    } else if (b <= 0xbf) {
        h->kind = MP_STR;
        h->n = b & 0x1f;
    } else if (b >= 0xe0) {
        set_signed(h, (int64_t)b - 256);
    } else {
        return head_typed(c, b, h);
    }
    return true;
}

static bool has_payload(enum mp_kind kind)
{
    return kind == MP_STR || kind == MP_BIN || kind == MP_EXT || kind == MP_FLOAT;
}

/* Skip one value of any shape. Containers add their elements to a counter
 * instead of recursing; every element consumes at least one byte, so the
 * loop ends within @c->len steps whatever counts the input claims. */
static bool skip_value(struct cursor *c)
{
    uint64_t left = 1;
    while (left > 0) {
        struct mp_head h;
        const uint8_t *p;
        if (!read_head(c, &h))
            return false;
        left--;
        if (has_payload(h.kind) && (h.n > SIZE_MAX || !take(c, (size_t)h.n, &p)))
            return false;
        if (h.kind == MP_ARRAY)
            left += h.n;
        else if (h.kind == MP_MAP)
            left += 2 * h.n;
        if (left > c->len - c->pos)
            return false; /* more elements claimed than bytes remain */
    }
    return true;
}

struct decoder {
    struct cursor c;
    struct kp_usage_event *ev;
    char *errmsg;
    size_t errlen;
    size_t err_off;
};

static int fail(struct decoder *d, size_t off, const struct field *f, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Record an error at @off; @f, when given, is named before the message. */
static int fail(struct decoder *d, size_t off, const struct field *f, const char *fmt, ...)
{
    char what[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    d->err_off = off;
    if (f != NULL)
        set_err(d->errmsg, d->errlen, "field '%s' (%s): %s", f->key, f->name, what);
    else
        set_err(d->errmsg, d->errlen, "%s", what);
    return KP_EPARSE;
}

static int decode_str(struct decoder *d, const struct field *f, size_t at, const struct mp_head *h,
                      char *dst)
{
    const uint8_t *p;
    if (h->n > KP_USAGE_STR_MAX)
        return fail(d, at, f, "string of %" PRIu64 " bytes exceeds the %d-byte limit", h->n,
                    KP_USAGE_STR_MAX);
    if (!take(&d->c, (size_t)h->n, &p))
        return fail(d, at, f, "input ends inside the string");
    if (!kp_usage_str_valid((const char *)p, (size_t)h->n))
        return fail(d, at, f, "not valid UTF-8 (or contains a NUL byte)");
    if (f->nonempty && h->n == 0)
        return fail(d, at, f, "must not be empty");
    memcpy(dst, p, (size_t)h->n);
    dst[h->n] = '\0';
    return KP_OK;
}

static int decode_int(struct decoder *d, const struct field *f, size_t at, const struct mp_head *h,
                      void *dst)
{
    if (f->type == FT_INT64) {
        if (!h->negative && h->u > INT64_MAX)
            return fail(d, at, f, "%" PRIu64 " is out of range", h->u);
        *(int64_t *)dst = h->negative ? h->i : (int64_t)h->u;
        return KP_OK;
    }
    if (h->negative)
        return fail(d, at, f, "%" PRId64 " is negative", h->i);
    uint64_t max = f->type == FT_COUNT ? INT64_MAX : f->type == FT_UINT32 ? UINT32_MAX : 999;
    if (h->u > max)
        return fail(d, at, f, "%" PRIu64 " is out of range (at most %" PRIu64 ")", h->u, max);
    if (f->type == FT_COUNT)
        *(uint64_t *)dst = h->u;
    else if (f->type == FT_UINT32)
        *(uint32_t *)dst = (uint32_t)h->u;
    else
        *(uint16_t *)dst = (uint16_t)h->u;
    return KP_OK;
}

static enum mp_kind expected_kind(enum field_type t)
{
    return t == FT_STR ? MP_STR : t == FT_BOOL ? MP_BOOL : MP_INT;
}

static int decode_value(struct decoder *d, const struct field *f)
{
    size_t at = d->c.pos;
    struct mp_head h;
    void *dst = (char *)d->ev + f->off;
    if (!read_head(&d->c, &h))
        return fail(d, at, f, "input ends inside the value (or bad type byte)");
    if (h.kind != expected_kind(f->type))
        return fail(d, at, f, "expected %s, found %s", mp_kind_names[expected_kind(f->type)],
                    mp_kind_names[h.kind]);
    if (f->type == FT_STR)
        return decode_str(d, f, at, &h, dst);
    if (f->type == FT_BOOL) {
        *(bool *)dst = h.b;
        return KP_OK;
    }
    return decode_int(d, f, at, &h, dst);
}

static const struct field *find_field(const uint8_t *key, size_t n)
{
    for (size_t i = 0; i < NFIELDS; i++) {
        if (strlen(fields[i].key) == n && memcmp(fields[i].key, key, n) == 0)
            return &fields[i];
    }
    return NULL;
}

/* One key and its value. @seen has a bit per field of the table. */
static int decode_entry(struct decoder *d, uint32_t *seen)
{
    size_t at = d->c.pos;
    struct mp_head h;
    const uint8_t *key;
    if (!read_head(&d->c, &h))
        return fail(d, at, NULL, "input ends inside a key (or bad type byte)");
    if (h.kind != MP_STR)
        return fail(d, at, NULL, "expected a string key, found %s", mp_kind_names[h.kind]);
    if (h.n > SIZE_MAX || !take(&d->c, (size_t)h.n, &key))
        return fail(d, at, NULL, "input ends inside a key");
    const struct field *f = find_field(key, (size_t)h.n);
    if (f == NULL) {
        size_t vat = d->c.pos;
        if (!skip_value(&d->c))
            return fail(d, vat, NULL, "input ends inside the value of an unknown key");
        return KP_OK;
    }
    uint32_t bit = 1u << (f - fields);
    if (*seen & bit)
        return fail(d, at, f, "appears twice");
    *seen |= bit;
    return decode_value(d, f);
}

static int check_all_seen(struct decoder *d, uint32_t seen)
{
    for (size_t i = 0; i < NFIELDS; i++) {
        if (!(seen & (1u << i)))
            return fail(d, d->c.pos, &fields[i], "missing");
    }
    return KP_OK;
}

static int decode_map(struct decoder *d)
{
    struct mp_head h;
    if (!read_head(&d->c, &h))
        return fail(d, 0, NULL, "input ends before the event (or bad type byte)");
    if (h.kind != MP_MAP)
        return fail(d, 0, NULL, "expected a map, found %s", mp_kind_names[h.kind]);
    uint32_t seen = 0;
    for (uint64_t i = 0; i < h.n; i++) {
        int rc = decode_entry(d, &seen);
        if (rc != KP_OK)
            return rc;
    }
    return check_all_seen(d, seen);
}

int kp_usage_event_decode(const void *buf, size_t len, struct kp_usage_event *ev, size_t *used,
                          char *errmsg, size_t errlen)
{
    struct decoder d = {
        .c = {.p = buf, .len = len, .pos = 0},
        .ev = ev,
        .errmsg = errmsg,
        .errlen = errlen,
    };
    kp_usage_event_init(ev);
    int rc = decode_map(&d);
    *used = rc == KP_OK ? d.c.pos : d.err_off;
    return rc;
}

/* --- JSON ---------------------------------------------------------------- */

static json_t *field_json(const struct field *f, const struct kp_usage_event *ev)
{
    const void *p = (const char *)ev + f->off;
    switch (f->type) {
    case FT_STR:
        return json_stringn(p, strnlen(p, KP_USAGE_STR_MAX + 1));
    case FT_INT64:
        return json_integer(*(const int64_t *)p);
    case FT_COUNT:
        return json_integer((json_int_t)(*(const uint64_t *)p)); /* checked <= INT64_MAX */
    case FT_UINT32:
        return json_integer(*(const uint32_t *)p);
    case FT_STATUS:
        return json_integer(*(const uint16_t *)p);
    case FT_BOOL:
        return json_boolean(*(const bool *)p);
    }
    return NULL;
}

/* Years 1970..9999 only: kp_format_time_ms() cannot render the rest. */
static int add_iso_time(json_t *o, int64_t ms)
{
    if (ms < 0 || ms >= 253402300800000)
        return 0;
    char iso[32];
    kp_format_time_ms(ms, iso, sizeof(iso));
    return json_object_set_new(o, "time", json_string(iso));
}

json_t *kp_usage_event_to_json(const struct kp_usage_event *ev)
{
    json_t *o = json_object();
    if (o == NULL)
        return NULL;
    if (add_iso_time(o, ev->time_ms) != 0)
        goto err;
    for (size_t i = 0; i < NFIELDS; i++) {
        json_t *v = field_json(&fields[i], ev);
        if (v == NULL || json_object_set_new(o, fields[i].name, v) != 0)
            goto err;
    }
    return o;

err:
    json_decref(o);
    return NULL;
}

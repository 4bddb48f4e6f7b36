/* Usage events as msgpack maps with short stable keys.
 *
 * One table (fields[]) lists every field of version 1: its short key on the
 * wire, its long name (the struct member, the JSON name, the name in error
 * messages), its type and its rules. The encoder, the checker, the decoder
 * and the JSON conversion all walk that table, so they cannot disagree.
 *
 * Encoding writes msgpack's smallest forms into a kp_buf (so the allocation
 * is ours and injectable), byte for byte as msgpack-c's packer would. Decoding does not use
 * msgpack-c's unpacker: that one allocates from a claimed element count before reading the elements
 * (five bytes claiming a 4-billion-element array ask malloc for 96 GB) and
 * builds a tree we would only walk once. The decoder here reads the map in
 * place with core's bounded reader (core/mpack.h), allocates nothing, and
 * checks every value as it reads it: a wrong type, a value out of range,
 * an oversized, empty (where required) or non-UTF-8 string, a duplicate
 * key, a missing field or the input ending early each fail with the
 * field's name and the byte offset.
 * Keys it does not know are skipped without recursion, so a newer writer's
 * extra fields, however nested, cost an old reader nothing. */
#include "meter/meter.h"

#include <inttypes.h>
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
    FT_TRACE, /* str, "" or KP_USAGE_TRACE_ID_LEN lower-case hex digits */
};

struct field {
    const char *key;
    uint8_t key_len;
    const char *name;
    enum field_type type;
    bool nonempty;
    bool optional; /* may be missing; the writer leaves it out when empty */
    size_t off;
};

#define F(key, member, type, nonempty)                                                             \
    {                                                                                              \
        key, sizeof(key) - 1, #member, type, nonempty, false,                                      \
            offsetof(struct kp_usage_event, member)                                                \
    }
/* A field added after version 1 shipped: old events lack it. */
#define OPT(key, member, type)                                                                     \
    {                                                                                              \
        key, sizeof(key) - 1, #member, type, false, true, offsetof(struct kp_usage_event, member)  \
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
    OPT("tr", trace_id, FT_TRACE),
};

#define NFIELDS (sizeof(fields) / sizeof(fields[0]))

_Static_assert(NFIELDS <= 32, "the decoder tracks seen fields in a uint32_t");

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

bool kp_usage_str_valid(const char *s, size_t len)
{
    const uint8_t *p = (const uint8_t *)s;
    if (len > KP_USAGE_STR_MAX)
        return false;
    for (size_t i = 0; i < len;) {
        if ((uint8_t)(p[i] - 1) < 0x7f) { /* ASCII but NUL: most bytes */
            i++;
            continue;
        }
        size_t n = kp_utf8_len(p + i, len - i);
        if (n == 0 || p[i] == 0)
            return false;
        i += n;
    }
    return true;
}

/* --- checking ------------------------------------------------------------ */

static int check_str(const struct field *f, const char *s, size_t *len, char *errmsg, size_t errlen)
{
    size_t n = strnlen(s, KP_USAGE_STR_MAX + 1);
    *len = n;
    if (n > KP_USAGE_STR_MAX)
        return kp_errf(errmsg, errlen, KP_EINVAL, "field '%s' (%s): longer than %d bytes", f->key,
                       f->name, KP_USAGE_STR_MAX);
    if (!kp_usage_str_valid(s, n))
        return kp_errf(errmsg, errlen, KP_EINVAL, "field '%s' (%s): not valid UTF-8", f->key,
                       f->name);
    if (f->nonempty && n == 0)
        return kp_errf(errmsg, errlen, KP_EINVAL, "field '%s' (%s): must not be empty", f->key,
                       f->name);
    return KP_OK;
}

/* "" or exactly KP_USAGE_TRACE_ID_LEN lower-case hex digits. */
static bool trace_id_valid(const char *s, size_t n)
{
    if (n != 0 && n != KP_USAGE_TRACE_ID_LEN)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

/* A field's value against its rules; a string's length into *@len. */
static int check_field(const struct field *f, const void *p, size_t *len, char *errmsg,
                       size_t errlen)
{
    switch (f->type) {
    case FT_STR:
        return check_str(f, p, len, errmsg, errlen);
    case FT_TRACE:
        *len = strnlen(p, KP_USAGE_TRACE_ID_LEN + 1);
        if (!trace_id_valid(p, *len))
            return kp_errf(errmsg, errlen, KP_EINVAL,
                           "field '%s' (%s): not empty nor %d lower-case hex digits", f->key,
                           f->name, KP_USAGE_TRACE_ID_LEN);
        return KP_OK;
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
    return kp_errf(errmsg, errlen, KP_EINVAL, "field '%s' (%s): out of range", f->key, f->name);
}

int kp_usage_event_check(const struct kp_usage_event *ev, char *errmsg, size_t errlen)
{
    for (size_t i = 0; i < NFIELDS; i++) {
        size_t len;
        int rc = check_field(&fields[i], (const char *)ev + fields[i].off, &len, errmsg, errlen);
        if (rc != KP_OK)
            return rc;
    }
    return KP_OK;
}

/* --- encoding ------------------------------------------------------------ */

/* msgpack in its smallest forms, written as msgpack-c's packer writes
 * them (so the bytes of an event never depend on which encoder made them;
 * test_segment compares the two), straight into room reserved beforehand:
 * the packer's write callback per piece was half of an event's encoding. */
static uint8_t *put_be(uint8_t *p, uint8_t tag, uint64_t v, unsigned n)
{
    *p++ = tag;
    for (unsigned i = n; i-- > 0;)
        *p++ = (uint8_t)(v >> (8 * i));
    return p;
}

static uint8_t *put_uint(uint8_t *p, uint64_t v)
{
    if (v < 128) {
        *p++ = (uint8_t)v;
        return p;
    }
    if (v < 256)
        return put_be(p, 0xcc, v, 1);
    if (v < 65536)
        return put_be(p, 0xcd, v, 2);
    if (v <= UINT32_MAX)
        return put_be(p, 0xce, v, 4);
    return put_be(p, 0xcf, v, 8);
}

static uint8_t *put_int(uint8_t *p, int64_t v)
{
    if (v >= 0)
        return put_uint(p, (uint64_t)v);
    if (v >= -32) {
        *p++ = (uint8_t)v;
        return p;
    }
    if (v >= INT8_MIN)
        return put_be(p, 0xd0, (uint64_t)v, 1);
    if (v >= INT16_MIN)
        return put_be(p, 0xd1, (uint64_t)v, 2);
    if (v >= INT32_MIN)
        return put_be(p, 0xd2, (uint64_t)v, 4);
    return put_be(p, 0xd3, (uint64_t)v, 8);
}

static uint8_t *put_str(uint8_t *p, const char *s, size_t n)
{
    if (n < 32)
        *p++ = (uint8_t)(0xa0 | n);
    else if (n < 256)
        p = put_be(p, 0xd9, n, 1);
    else
        p = put_be(p, 0xda, n, 2); /* KP_USAGE_STR_MAX keeps it under 65536 */
    memcpy(p, s, n);
    return p + n;
}

/* @len: a string's length (check_field's). */
static uint8_t *put_field(uint8_t *p, const struct field *f, const void *v, size_t len)
{
    p = put_str(p, f->key, f->key_len);
    switch (f->type) {
    case FT_STR:
    case FT_TRACE:
        return put_str(p, v, len);
    case FT_INT64:
        return put_int(p, *(const int64_t *)v);
    case FT_COUNT:
        return put_uint(p, *(const uint64_t *)v);
    case FT_UINT32:
        return put_uint(p, *(const uint32_t *)v);
    case FT_STATUS:
        return put_uint(p, *(const uint16_t *)v);
    case FT_BOOL:
        *p++ = *(const bool *)v ? 0xc3 : 0xc2;
        return p;
    }
    return p;
}

/* An optional field with nothing in it is left out, so that events without
 * it are the bytes they always were. */
static bool omitted(const struct field *f, const struct kp_usage_event *ev)
{
    return f->optional && ((const char *)ev + f->off)[0] == '\0';
}

int kp_usage_event_encode(const struct kp_usage_event *ev, struct kp_buf *out, char *errmsg,
                          size_t errlen)
{
    _Static_assert(KP_USAGE_STR_MAX < 65536, "a string head is at most str16");
    /* One pass: each field checked, then written into room reserved for
     * the largest event (a map head, and per field a fixstr key and a
     * value of at most a str16 head and its bytes, or 9 bytes); nothing
     * counts until every field has passed. */
    size_t room = 3, n = 0;
    for (size_t i = 0; i < NFIELDS; i++) {
        const struct field *f = &fields[i];
        bool str = f->type == FT_STR || f->type == FT_TRACE;
        room += 1 + f->key_len + (str ? 3 + KP_USAGE_STR_MAX : 9);
        n += !omitted(f, ev);
    }
    if (kp_buf_reserve(out, room) != 0)
        return kp_errf(errmsg, errlen, KP_ENOMEM, "encode usage event: out of memory");
    uint8_t *start = (uint8_t *)out->data + out->len, *p = start;
    if (n < 16)
        *p++ = (uint8_t)(0x80 | n);
    else
        p = put_be(p, 0xde, n, 2);
    for (size_t i = 0; i < NFIELDS; i++) {
        const struct field *f = &fields[i];
        const void *v = (const char *)ev + f->off;
        size_t len = 0;
        int rc = check_field(f, v, &len, errmsg, errlen);
        if (rc != KP_OK)
            return rc;
        if (!omitted(f, ev))
            p = put_field(p, f, v, len);
    }
    out->len += (size_t)(p - start);
    out->data[out->len] = '\0';
    return KP_OK;
}

/* --- decoding ------------------------------------------------------------ */

struct decoder {
    struct kp_mp_reader c;
    struct kp_usage_event *ev;
    char *errmsg;
    size_t errlen;
    size_t err_off;
    size_t next; /* the field expected next: writers emit the table's order */
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
        return kp_errf(d->errmsg, d->errlen, KP_EPARSE, "field '%s' (%s): %s", f->key, f->name,
                       what);
    return kp_errf(d->errmsg, d->errlen, KP_EPARSE, "%s", what);
}

static int decode_str(struct decoder *d, const struct field *f, size_t at,
                      const struct kp_mp_head *h, char *dst)
{
    const uint8_t *p;
    if (h->n > KP_USAGE_STR_MAX)
        return fail(d, at, f, "string of %" PRIu64 " bytes exceeds the %d-byte limit", h->n,
                    KP_USAGE_STR_MAX);
    if (!kp_mp_take(&d->c, (size_t)h->n, &p))
        return fail(d, at, f, "input ends inside the string");
    if (!kp_usage_str_valid((const char *)p, (size_t)h->n))
        return fail(d, at, f, "not valid UTF-8 (or contains a NUL byte)");
    if (f->nonempty && h->n == 0)
        return fail(d, at, f, "must not be empty");
    memcpy(dst, p, (size_t)h->n);
    dst[h->n] = '\0';
    return KP_OK;
}

static int decode_int(struct decoder *d, const struct field *f, size_t at,
                      const struct kp_mp_head *h, void *dst)
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

static int decode_trace(struct decoder *d, const struct field *f, size_t at,
                        const struct kp_mp_head *h, char *dst)
{
    const uint8_t *p;
    if (h->n > KP_USAGE_TRACE_ID_LEN)
        return fail(d, at, f, "string of %" PRIu64 " bytes is not a trace id", h->n);
    if (!kp_mp_take(&d->c, (size_t)h->n, &p))
        return fail(d, at, f, "input ends inside the string");
    if (!trace_id_valid((const char *)p, (size_t)h->n))
        return fail(d, at, f, "not empty nor %d lower-case hex digits", KP_USAGE_TRACE_ID_LEN);
    memcpy(dst, p, (size_t)h->n);
    dst[h->n] = '\0';
    return KP_OK;
}

static enum kp_mp_kind expected_kind(enum field_type t)
{
    return t == FT_STR || t == FT_TRACE ? KP_MP_STR : t == FT_BOOL ? KP_MP_BOOL : KP_MP_INT;
}

static int decode_value(struct decoder *d, const struct field *f)
{
    size_t at = kp_mp_offset(&d->c);
    struct kp_mp_head h;
    void *dst = (char *)d->ev + f->off;
    if (!kp_mp_read_head(&d->c, &h))
        return fail(d, at, f, "input ends inside the value (or bad type byte)");
    if (h.kind != expected_kind(f->type))
        return fail(d, at, f, "expected %s, found %s", kp_mp_kind_name(expected_kind(f->type)),
                    kp_mp_kind_name(h.kind));
    if (f->type == FT_STR)
        return decode_str(d, f, at, &h, dst);
    if (f->type == FT_TRACE)
        return decode_trace(d, f, at, &h, dst);
    if (f->type == FT_BOOL) {
        *(bool *)dst = h.b;
        return KP_OK;
    }
    return decode_int(d, f, at, &h, dst);
}

static bool key_is(size_t i, const uint8_t *key, size_t n)
{
    return strlen(fields[i].key) == n && memcmp(fields[i].key, key, n) == 0;
}

/* The field named @key: the one after the last found is tried first (the
 * common case), then the whole table. */
static const struct field *find_field(struct decoder *d, const uint8_t *key, size_t n)
{
    size_t i = d->next;
    if (i >= NFIELDS || !key_is(i, key, n)) {
        for (i = 0; i < NFIELDS && !key_is(i, key, n); i++)
            ;
        if (i == NFIELDS)
            return NULL;
    }
    d->next = i + 1;
    return &fields[i];
}

/* One key and its value. @seen has a bit per field of the table. */
static int decode_entry(struct decoder *d, uint32_t *seen)
{
    size_t at = kp_mp_offset(&d->c);
    const uint8_t *key;
    size_t n;
    if (!kp_mp_read_str(&d->c, SIZE_MAX, &key, &n)) {
        if (d->c.err == KP_MP_ETYPE)
            return fail(d, at, NULL, "expected a string key, found %s",
                        kp_mp_kind_name(d->c.err_kind));
        if (d->c.err == KP_MP_EPAYLOAD)
            return fail(d, at, NULL, "input ends inside a key");
        return fail(d, at, NULL, "input ends inside a key (or bad type byte)");
    }
    const struct field *f = find_field(d, key, n);
    if (f == NULL) {
        size_t vat = kp_mp_offset(&d->c);
        if (!kp_mp_skip(&d->c))
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
        if (!(seen & (1u << i)) && !fields[i].optional)
            return fail(d, kp_mp_offset(&d->c), &fields[i], "missing");
    }
    return KP_OK;
}

static int decode_map(struct decoder *d)
{
    struct kp_mp_head h;
    if (!kp_mp_read_head(&d->c, &h))
        return fail(d, 0, NULL, "input ends before the event (or bad type byte)");
    if (h.kind != KP_MP_MAP)
        return fail(d, 0, NULL, "expected a map, found %s", kp_mp_kind_name(h.kind));
    uint32_t seen = 0;
    for (uint64_t i = 0; i < h.n; i++) {
        int rc = decode_entry(d, &seen);
        if (rc != KP_OK)
            return rc;
    }
    return check_all_seen(d, seen);
}

/* Every field empty or zero, as kp_usage_event_init leaves them but for the
 * bytes past each string's end: the decoder writes every field it reads,
 * and clearing the 3 KiB of string room was a fifth of its time. */
static void reset_fields(struct kp_usage_event *ev)
{
    for (size_t i = 0; i < NFIELDS; i++) {
        char *p = (char *)ev + fields[i].off;
        switch (fields[i].type) {
        case FT_STR:
        case FT_TRACE:
            p[0] = '\0';
            break;
        case FT_INT64:
            *(int64_t *)(void *)p = 0;
            break;
        case FT_COUNT:
            *(uint64_t *)(void *)p = 0;
            break;
        case FT_UINT32:
            *(uint32_t *)(void *)p = 0;
            break;
        case FT_STATUS:
            *(uint16_t *)(void *)p = 0;
            break;
        case FT_BOOL:
            *(bool *)p = false;
            break;
        }
    }
}

int kp_usage_event_decode(const void *buf, size_t len, struct kp_usage_event *ev, size_t *used,
                          char *errmsg, size_t errlen)
{
    struct decoder d = {
        .ev = ev,
        .errmsg = errmsg,
        .errlen = errlen,
    };
    kp_mp_reader_init(&d.c, buf, len);
    reset_fields(ev);
    int rc = decode_map(&d);
    *used = rc == KP_OK ? kp_mp_offset(&d.c) : d.err_off;
    return rc;
}

/* --- JSON ---------------------------------------------------------------- */

static json_t *field_json(const struct field *f, const struct kp_usage_event *ev)
{
    const void *p = (const char *)ev + f->off;
    switch (f->type) {
    case FT_STR:
        return json_stringn(p, strnlen(p, KP_USAGE_STR_MAX + 1));
    case FT_TRACE:
        return json_stringn(p, strnlen(p, KP_USAGE_TRACE_ID_LEN + 1));
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

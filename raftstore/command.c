/* The msgpack codec of commands, and the schema-driven reader and writer
 * that snapshots use too.
 *
 * A command is one msgpack map: the envelope ("v", "op", "ts", "audit",
 * optional "expect_version") and the op's body fields beside it, all at the
 * top level. Decoding reads the envelope first, in its own pass, so that a
 * command refused for its body or its op still yields the actor and time
 * for the audit entry; "v" is checked before anything else is interpreted,
 * and anything but 1 is refused (KP_EVERSION): a newer proposer's meaning
 * is not guessed, not even where its actor is.
 * Then the body is read through the op's schema.
 *
 * The reader is core's bounded one (core/mpack.h), not msgpack-c's
 * unpacker, which allocates from a claimed element count before reading
 * the elements. It walks the input in place, refuses a container that
 * claims more elements than bytes remain before anything is allocated for
 * it, and checks each value as it reads it: type, range, length,
 * character set, enum name, duplicates, required fields, unknown fields
 * (refused: a field this version does not know could carry meaning that
 * other replicas would apply). Errors name the field path:
 * "members[2].weight: must be 1..1000". Unknown values are never echoed
 * back unless they are plain ids, so a message (which ends up in the audit
 * chain) never carries arbitrary input.
 *
 * Writing goes through msgpack-c's packer into a kp_buf. Every field is
 * written in schema order and integers in their shortest form, so the same
 * struct always gives the same bytes: snapshots and audit hashes depend on
 * it. */
#include "raftstore/internal.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const op_names[KP_OP_COUNT] = {[KP_OP_NONE] = NULL,
#define KP_OP_NAME(op, name) [KP_OP_##op] = name,
                                                  KP_OP_MAP(KP_OP_NAME)
#undef KP_OP_NAME
};

const char *kp_op_name(enum kp_op op)
{
    return op > KP_OP_NONE && op < KP_OP_COUNT ? op_names[op] : NULL;
}

/* --- decoding through a schema ---------------------------------------------------------- */

int kp_store__fail(struct kp_decoder *d, int code, const char *fmt, ...)
{
    char what[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    if (d->errmsg != NULL && d->errlen > 0) {
        if (d->pathlen > 0)
            snprintf(d->errmsg, d->errlen, "%s: %s", d->path, what);
        else
            snprintf(d->errmsg, d->errlen, "%s", what);
        kp_store__utf8_trim(d->errmsg);
    }
    return code;
}

static size_t path_push(struct kp_decoder *d, const char *name, long idx)
{
    size_t old = d->pathlen, room = sizeof(d->path) - old;
    const char *dot = old > 0 && name != NULL ? "." : "";
    int n = idx < 0 ? snprintf(d->path + old, room, "%s%s", dot, name)
                    : snprintf(d->path + old, room, "[%ld]", idx);
    d->pathlen = n < 0 || (size_t)n >= room ? sizeof(d->path) - 1 : old + (size_t)n;
    return old;
}

static void path_pop(struct kp_decoder *d, size_t old)
{
    d->pathlen = old;
    d->path[old] = '\0';
}

int kp_store__fail_at(struct kp_decoder *d, const char *field, const char *fmt, ...)
{
    char what[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    size_t old = path_push(d, field, -1);
    int rc = kp_store__fail(d, KP_EINVAL, "%s", what);
    path_pop(d, old);
    return rc;
}

static int read_head(struct kp_decoder *d, struct kp_mp_head *h)
{
    if (!kp_mp_read_head(&d->c, h))
        return kp_store__fail(d, KP_EINVAL, "input ends early (or bad type byte)");
    return KP_OK;
}

static int expect(struct kp_decoder *d, const struct kp_mp_head *h, enum kp_mp_kind kind)
{
    if (h->kind == kind)
        return KP_OK;
    return kp_store__fail(d, KP_EINVAL, "expected %s, found %s", kp_mp_kind_name(kind),
                          kp_mp_kind_name(h->kind));
}

/* The message for a failed kp_mp_read_str or kp_mp_read_bin of @want, at
 * most @max bytes long. */
static int payload_fail(struct kp_decoder *d, enum kp_mp_kind want, uint64_t max)
{
    switch (d->c.err) {
    case KP_MP_ETYPE:
        return kp_store__fail(d, KP_EINVAL, "expected %s, found %s", kp_mp_kind_name(want),
                              kp_mp_kind_name(d->c.err_kind));
    case KP_MP_ERANGE:
        return kp_store__fail(d, KP_EINVAL, "longer than %" PRIu64 " bytes", max);
    case KP_MP_EPAYLOAD:
        return kp_store__fail(d, KP_EINVAL, "input ends inside the value");
    default:
        return kp_store__fail(d, KP_EINVAL, "input ends early (or bad type byte)");
    }
}

/* The bytes of a string of at most @max bytes, in place. */
static int read_chars(struct kp_decoder *d, uint64_t max, const uint8_t **p, size_t *n)
{
    return kp_mp_read_str(&d->c, max, p, n) ? KP_OK : payload_fail(d, KP_MP_STR, max);
}

/* A string of @cs, 1..@max bytes, copied into *@out. */
static int read_str(struct kp_decoder *d, enum kp_cs cs, uint64_t max, char **out)
{
    const uint8_t *p = NULL;
    size_t n = 0;
    int rc = read_chars(d, max, &p, &n);
    if (rc != KP_OK)
        return rc;
    if (n == 0)
        return kp_store__fail(d, KP_EINVAL, "must not be empty");
    const char *bad = kp_store__check_cs(cs, (const char *)p, n);
    if (bad != NULL || memchr(p, 0, n) != NULL)
        return kp_store__fail(d, KP_EINVAL, "%s", bad ? bad : "must not contain NUL");
    if ((*out = kp_strndup((const char *)p, n)) == NULL)
        return KP_ENOMEM;
    return KP_OK;
}

static int read_field_str(struct kp_decoder *d, const struct kp_field *f, char **out)
{
    const uint8_t *at = d->c.p;
    struct kp_mp_head h;
    int rc = read_head(d, &h);
    if (rc != KP_OK)
        return rc;
    if (h.kind == KP_MP_NIL)
        return (f->flags & KP_FF_REQ) ? kp_store__fail(d, KP_EINVAL, "missing") : KP_OK;
    if (h.kind == KP_MP_STR && h.n == 0 && !(f->flags & KP_FF_REQ))
        return KP_OK; /* "" is stored as absent */
    if (h.kind == KP_MP_STR && h.n == 1 && (f->flags & KP_FF_STAR) && d->c.p < d->c.end &&
        *d->c.p == '*') {
        d->c.p++;
        return (*out = kp_strdup("*")) != NULL ? KP_OK : KP_ENOMEM;
    }
    d->c.p = at;
    return read_str(d, f->cs, f->max, out);
}

static int read_int(struct kp_decoder *d, const struct kp_field *f, void *dst)
{
    struct kp_mp_head h;
    int rc = read_head(d, &h);
    if (rc == KP_OK)
        rc = expect(d, &h, KP_MP_INT);
    if (rc != KP_OK)
        return rc;
    bool low = h.negative ? (f->min >= 0 || h.i < f->min) : (f->min > 0 && h.u < (uint64_t)f->min);
    if (low || (!h.negative && h.u > f->max)) {
        if (f->max == UINT64_MAX)
            return kp_store__fail(d, KP_EINVAL, "must be at least %" PRId64, f->min);
        return kp_store__fail(d, KP_EINVAL, "must be %" PRId64 "..%" PRIu64, f->min, f->max);
    }
    if (f->type == KP_FT_I32)
        *(int32_t *)dst = h.negative ? (int32_t)h.i : (int32_t)h.u;
    else if (f->type == KP_FT_U32)
        *(uint32_t *)dst = (uint32_t)h.u;
    else if (f->type == KP_FT_U64)
        *(uint64_t *)dst = h.u;
    else
        *(int64_t *)dst = h.negative ? h.i : (int64_t)h.u;
    return KP_OK;
}

static int read_enum(struct kp_decoder *d, const struct kp_field *f, uint8_t *dst)
{
    const uint8_t *p = NULL;
    size_t n = 0;
    int rc = read_chars(d, 64, &p, &n);
    if (rc != KP_OK)
        return rc;
    for (uint8_t i = 0; f->names[i] != NULL; i++) {
        if (strlen(f->names[i]) == n && memcmp(f->names[i], p, n) == 0) {
            *dst = i;
            return KP_OK;
        }
    }
    char list[200] = "";
    for (size_t i = 0, used = 0; f->names[i] != NULL && used < sizeof(list); i++)
        used +=
            (size_t)snprintf(list + used, sizeof(list) - used, "%s%s", i ? "|" : "", f->names[i]);
    return kp_store__fail(d, KP_EINVAL, "must be one of %s", list);
}

static int read_bytes(struct kp_decoder *d, const struct kp_field *f, void *dst)
{
    const uint8_t *p = NULL;
    size_t n = 0;
    uint64_t max = f->type == KP_FT_HASH32 ? 32 : f->max;
    if (!kp_mp_read_bin(&d->c, max, &p, &n))
        return payload_fail(d, KP_MP_BIN, max);
    if (f->type == KP_FT_HASH32) {
        if (n != 32)
            return kp_store__fail(d, KP_EINVAL, "must be exactly 32 bytes");
        memcpy(dst, p, 32);
        return KP_OK;
    }
    struct kp_bytes *b = dst;
    if (n == 0) {
        if (f->flags & KP_FF_REQ)
            return kp_store__fail(d, KP_EINVAL, "must not be empty");
        return KP_OK;
    }
    if ((b->p = kp_malloc(n)) == NULL)
        return KP_ENOMEM;
    memcpy(b->p, p, n);
    b->n = (uint32_t)n;
    return KP_OK;
}

/* The head of an array or map of at most @max elements, each at least
 * @min_bytes long on the wire, so that no count can outrun the input. */
static int read_count(struct kp_decoder *d, enum kp_mp_kind kind, uint64_t max, size_t min_bytes,
                      uint32_t *n)
{
    struct kp_mp_head h;
    int rc = read_head(d, &h);
    if (rc == KP_OK)
        rc = expect(d, &h, kind);
    if (rc != KP_OK)
        return rc;
    if (h.n > max)
        return kp_store__fail(d, KP_EINVAL, "more than %" PRIu64 " entries", max);
    if (h.n > kp_mp_left(&d->c) / min_bytes)
        return kp_store__fail(d, KP_EINVAL, "input ends inside the value");
    *n = (uint32_t)h.n;
    return KP_OK;
}

static int read_strv(struct kp_decoder *d, const struct kp_field *f, struct kp_strv *v)
{
    uint32_t n = 0;
    int rc = read_count(d, KP_MP_ARRAY, f->max, 2, &n);
    if (rc != KP_OK || n == 0)
        return rc;
    if ((v->v = kp_calloc(n, sizeof(*v->v))) == NULL)
        return KP_ENOMEM;
    v->n = n;
    for (uint32_t i = 0; i < n; i++) {
        size_t old = path_push(d, NULL, i);
        rc = read_str(d, f->cs, f->emax, &v->v[i]);
        for (uint32_t j = 0; rc == KP_OK && j < i; j++) {
            if (strcmp(v->v[i], v->v[j]) == 0)
                rc = kp_store__fail(d, KP_EINVAL, "duplicate of %s[%u]", f->name, j);
        }
        if (rc != KP_OK)
            return rc;
        path_pop(d, old);
    }
    return KP_OK;
}

static int cmp_pair(const void *a, const void *b)
{
    return strcmp(((const struct kp_strpair *)a)->key, ((const struct kp_strpair *)b)->key);
}

static int read_strmap(struct kp_decoder *d, const struct kp_field *f, struct kp_strmap *m)
{
    uint32_t n = 0;
    int rc = read_count(d, KP_MP_MAP, f->max, 4, &n);
    if (rc != KP_OK || n == 0)
        return rc;
    if ((m->v = kp_calloc(n, sizeof(*m->v))) == NULL)
        return KP_ENOMEM;
    m->n = n;
    for (uint32_t i = 0; i < n; i++) {
        if ((rc = read_str(d, f->kcs, 128, &m->v[i].key)) != KP_OK)
            return rc;
        size_t old = path_push(d, m->v[i].key, -1);
        if ((rc = read_str(d, f->cs, f->emax, &m->v[i].value)) != KP_OK)
            return rc;
        path_pop(d, old);
    }
    qsort(m->v, n, sizeof(*m->v), cmp_pair);
    for (uint32_t i = 1; i < n; i++) {
        if (strcmp(m->v[i].key, m->v[i - 1].key) == 0)
            return kp_store__fail(d, KP_EINVAL, "key '%s' appears twice", m->v[i].key);
    }
    return KP_OK;
}

static int read_objv(struct kp_decoder *d, const struct kp_field *f, void *obj)
{
    uint32_t n = 0;
    int rc = read_count(d, KP_MP_ARRAY, f->max, 1, &n);
    if (rc != KP_OK || n == 0)
        return rc;
    char *arr = kp_calloc(n, f->sub->size);
    if (arr == NULL)
        return KP_ENOMEM;
    /* Owned by @obj from here on, so that a failure frees what was read. */
    memcpy((char *)obj + f->off, &arr, sizeof(arr));
    memcpy((char *)obj + f->off_n, &n, sizeof(n));
    for (uint32_t i = 0; i < n; i++) {
        size_t old = path_push(d, NULL, i);
        if ((rc = kp_store__decode_obj(d, f->sub, arr + (size_t)i * f->sub->size)) != KP_OK)
            return rc;
        path_pop(d, old);
    }
    return KP_OK;
}

static int read_field(struct kp_decoder *d, const struct kp_field *f, void *obj)
{
    void *p = (char *)obj + f->off;
    switch (f->type) {
    case KP_FT_STR:
        return read_field_str(d, f, p);
    case KP_FT_I32:
    case KP_FT_U32:
    case KP_FT_U64:
    case KP_FT_I64:
        return read_int(d, f, p);
    case KP_FT_BOOL: {
        struct kp_mp_head h;
        int rc = read_head(d, &h);
        if (rc == KP_OK)
            rc = expect(d, &h, KP_MP_BOOL);
        if (rc == KP_OK)
            *(bool *)p = h.b;
        return rc;
    }
    case KP_FT_ENUM:
        return read_enum(d, f, p);
    case KP_FT_BYTES:
    case KP_FT_HASH32:
        return read_bytes(d, f, p);
    case KP_FT_STRV:
        return read_strv(d, f, p);
    case KP_FT_STRMAP:
        return read_strmap(d, f, p);
    case KP_FT_OBJV:
        return read_objv(d, f, obj);
    }
    return KP_EINVAL;
}

static bool is_envelope_key(const uint8_t *k, size_t n)
{
    static const char *const keys[] = {"v", "op", "ts", "audit", "expect_version"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        if (strlen(keys[i]) == n && memcmp(keys[i], k, n) == 0)
            return true;
    }
    return false;
}

static const struct kp_field *find_field(const struct kp_schema *s, const uint8_t *k, size_t n)
{
    for (uint32_t i = 0; i < s->nfields; i++) {
        if (strlen(s->fields[i].name) == n && memcmp(s->fields[i].name, k, n) == 0)
            return &s->fields[i];
    }
    return NULL;
}

/* A key of @s's map; *@f is NULL for an envelope key to skip. */
static int read_key(struct kp_decoder *d, const struct kp_schema *s, uint32_t *seen,
                    const struct kp_field **f)
{
    const uint8_t *k = NULL;
    size_t n = 0;
    *f = NULL;
    if (!kp_mp_read_str(&d->c, 64, &k, &n)) {
        if (d->c.err == KP_MP_ETYPE)
            return kp_store__fail(d, KP_EINVAL, "expected a string key, found %s",
                                  kp_mp_kind_name(d->c.err_kind));
        return payload_fail(d, KP_MP_STR, 64);
    }
    *f = find_field(s, k, n);
    if (*f == NULL && d->skip_envelope && d->pathlen == 0 && is_envelope_key(k, n))
        return KP_OK;
    if (*f == NULL) {
        bool plain = n > 0 && kp_store__check_cs(KP_CS_ID, (const char *)k, n) == NULL;
        return kp_store__fail(d, KP_EINVAL, "unknown field%s%.*s%s", plain ? " '" : "",
                              plain ? (int)n : 0, (const char *)k, plain ? "'" : "");
    }
    size_t old = path_push(d, (*f)->name, -1);
    uint32_t bit = 1u << (*f - s->fields);
    if (*seen & bit)
        return kp_store__fail(d, KP_EINVAL, "appears twice");
    if (((*f)->flags & KP_FF_STATE) && d->mode == KP_MODE_CMD)
        return kp_store__fail(d, KP_EINVAL, "is set by the registry, not by commands");
    *seen |= bit;
    path_pop(d, old);
    return KP_OK;
}

/* Defaults for absent fields, refusal of absent required ones (in a
 * snapshot every field is required, but for those its format predates),
 * then the schema's own rules. */
static int finish_obj(struct kp_decoder *d, const struct kp_schema *s, void *obj, uint32_t seen)
{
    for (uint32_t i = 0; i < s->nfields; i++) {
        const struct kp_field *f = &s->fields[i];
        if (seen & (1u << i))
            continue;
        bool snap_has = d->mode == KP_MODE_SNAP && f->since <= d->format;
        if (snap_has || (f->flags & KP_FF_REQ)) {
            if (d->mode == KP_MODE_CMD && (f->flags & KP_FF_STATE))
                continue;
            size_t old = path_push(d, f->name, -1);
            int rc = kp_store__fail(d, KP_EINVAL, "missing");
            path_pop(d, old);
            return rc;
        }
        void *p = (char *)obj + f->off;
        if (f->type == KP_FT_I32)
            *(int32_t *)p = (int32_t)f->def;
        else if (f->type == KP_FT_U32)
            *(uint32_t *)p = (uint32_t)f->def;
        else if (f->type == KP_FT_U64)
            *(uint64_t *)p = (uint64_t)f->def;
        else if (f->type == KP_FT_I64)
            *(int64_t *)p = f->def;
        else if (f->type == KP_FT_ENUM)
            *(uint8_t *)p = (uint8_t)f->def;
    }
    return s->check != NULL ? s->check(d, obj) : KP_OK;
}

int kp_store__decode_obj(struct kp_decoder *d, const struct kp_schema *s, void *obj)
{
    uint32_t n, seen = 0;
    int rc = read_count(d, KP_MP_MAP, 64, 2, &n);
    if (rc != KP_OK)
        return rc;
    for (uint32_t i = 0; i < n; i++) {
        const struct kp_field *f;
        if ((rc = read_key(d, s, &seen, &f)) != KP_OK)
            return rc;
        if (f == NULL) {
            if (!kp_mp_skip(&d->c))
                return kp_store__fail(d, KP_EINVAL, "input ends early");
            continue;
        }
        size_t old = path_push(d, f->name, -1);
        if ((rc = read_field(d, f, obj)) != KP_OK)
            return rc;
        path_pop(d, old);
    }
    return finish_obj(d, s, obj, seen);
}

/* --- encoding ------------------------------------------------------------------------------ */

int kp_store__mp_write(void *buf, const char *p, size_t n)
{
    return kp_buf_append(buf, p, n) == 0 ? 0 : -1;
}

int kp_store__pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    if (msgpack_pack_str(pk, n) != 0)
        return -1;
    return msgpack_pack_str_body(pk, s, n);
}

static bool field_written(const struct kp_field *f, int mode)
{
    if (mode == KP_MODE_CMD)
        return !(f->flags & KP_FF_STATE);
    if (mode == KP_MODE_HASH)
        return !(f->flags & KP_FF_NOHASH);
    return true;
}

uint32_t kp_store__count_fields(const struct kp_schema *s, int mode)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < s->nfields; i++)
        n += field_written(&s->fields[i], mode);
    return n;
}

static int pack_strv(msgpack_packer *pk, const struct kp_strv *v)
{
    if (msgpack_pack_array(pk, v->n) != 0)
        return -1;
    for (uint32_t i = 0; i < v->n; i++) {
        if (kp_store__pack_str(pk, v->v[i]) != 0)
            return -1;
    }
    return 0;
}

static int pack_strmap(msgpack_packer *pk, const struct kp_strmap *m)
{
    if (msgpack_pack_map(pk, m->n) != 0)
        return -1;
    for (uint32_t i = 0; i < m->n; i++) {
        if (kp_store__pack_str(pk, m->v[i].key) != 0 || kp_store__pack_str(pk, m->v[i].value) != 0)
            return -1;
    }
    return 0;
}

static int pack_objv(msgpack_packer *pk, const struct kp_field *f, const void *obj)
{
    const char *arr;
    uint32_t n = 0;
    memcpy(&arr, (const char *)obj + f->off, sizeof(arr));
    memcpy(&n, (const char *)obj + f->off_n, sizeof(n));
    if (msgpack_pack_array(pk, n) != 0)
        return -1;
    for (uint32_t i = 0; i < n; i++) {
        if (kp_store__encode_obj(pk, f->sub, arr + (size_t)i * f->sub->size, KP_MODE_SNAP) != 0)
            return -1;
    }
    return 0;
}

static int pack_field(msgpack_packer *pk, const struct kp_field *f, const void *obj)
{
    const void *p = (const char *)obj + f->off;
    switch (f->type) {
    case KP_FT_STR: {
        const char *s = *(char *const *)p;
        return s != NULL ? kp_store__pack_str(pk, s) : msgpack_pack_nil(pk);
    }
    case KP_FT_I32:
        return msgpack_pack_int32(pk, *(const int32_t *)p);
    case KP_FT_U32:
        return msgpack_pack_uint32(pk, *(const uint32_t *)p);
    case KP_FT_U64:
        return msgpack_pack_uint64(pk, *(const uint64_t *)p);
    case KP_FT_I64:
        return msgpack_pack_int64(pk, *(const int64_t *)p);
    case KP_FT_BOOL:
        return *(const bool *)p ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
    case KP_FT_ENUM: {
        uint8_t v = *(const uint8_t *)p;
        return v < f->max ? kp_store__pack_str(pk, f->names[v]) : -1;
    }
    case KP_FT_BYTES: {
        const struct kp_bytes *b = p;
        if (msgpack_pack_bin(pk, b->n) != 0)
            return -1;
        return msgpack_pack_bin_body(pk, b->p, b->n);
    }
    case KP_FT_HASH32:
        if (msgpack_pack_bin(pk, 32) != 0)
            return -1;
        return msgpack_pack_bin_body(pk, p, 32);
    case KP_FT_STRV:
        return pack_strv(pk, p);
    case KP_FT_STRMAP:
        return pack_strmap(pk, p);
    case KP_FT_OBJV:
        return pack_objv(pk, f, obj);
    }
    return -1;
}

int kp_store__encode_fields(msgpack_packer *pk, const struct kp_schema *s, const void *obj,
                            int mode)
{
    for (uint32_t i = 0; i < s->nfields; i++) {
        const struct kp_field *f = &s->fields[i];
        if (!field_written(f, mode))
            continue;
        if (kp_store__pack_str(pk, f->name) != 0 || pack_field(pk, f, obj) != 0)
            return -1;
    }
    return 0;
}

int kp_store__encode_obj(msgpack_packer *pk, const struct kp_schema *s, const void *obj, int mode)
{
    if (msgpack_pack_map(pk, kp_store__count_fields(s, mode)) != 0)
        return -1;
    return kp_store__encode_fields(pk, s, obj, mode);
}

/* --- freeing and copying ------------------------------------------------------------------ */

void kp_store__obj_free(const struct kp_schema *s, void *obj)
{
    for (uint32_t i = 0; i < s->nfields; i++) {
        const struct kp_field *f = &s->fields[i];
        void *p = (char *)obj + f->off;
        if (f->type == KP_FT_STR) {
            kp_free(*(char **)p);
            *(char **)p = NULL;
        } else if (f->type == KP_FT_BYTES) {
            kp_free(((struct kp_bytes *)p)->p);
            memset(p, 0, sizeof(struct kp_bytes));
        } else if (f->type == KP_FT_STRV) {
            struct kp_strv *v = p;
            for (uint32_t k = 0; k < v->n && v->v != NULL; k++)
                kp_free(v->v[k]);
            kp_free(v->v);
            memset(v, 0, sizeof(*v));
        } else if (f->type == KP_FT_STRMAP) {
            struct kp_strmap *m = p;
            for (uint32_t k = 0; k < m->n && m->v != NULL; k++) {
                kp_free(m->v[k].key);
                kp_free(m->v[k].value);
            }
            kp_free(m->v);
            memset(m, 0, sizeof(*m));
        } else if (f->type == KP_FT_OBJV) {
            char *arr;
            uint32_t n, zero = 0;
            memcpy(&arr, p, sizeof(arr));
            memcpy(&n, (char *)obj + f->off_n, sizeof(n));
            for (uint32_t k = 0; k < n && arr != NULL; k++)
                kp_store__obj_free(f->sub, arr + (size_t)k * f->sub->size);
            kp_free(arr);
            memset(p, 0, sizeof(arr));
            memcpy((char *)obj + f->off_n, &zero, sizeof(zero));
        }
    }
}

static int clone_strv(const struct kp_strv *src, struct kp_strv *dst)
{
    if (src->n == 0)
        return KP_OK;
    if ((dst->v = kp_calloc(src->n, sizeof(*dst->v))) == NULL)
        return KP_ENOMEM;
    dst->n = src->n;
    for (uint32_t i = 0; i < src->n; i++) {
        if ((dst->v[i] = kp_strdup(src->v[i])) == NULL)
            return KP_ENOMEM;
    }
    return KP_OK;
}

static int clone_strmap(const struct kp_strmap *src, struct kp_strmap *dst)
{
    if (src->n == 0)
        return KP_OK;
    if ((dst->v = kp_calloc(src->n, sizeof(*dst->v))) == NULL)
        return KP_ENOMEM;
    dst->n = src->n;
    for (uint32_t i = 0; i < src->n; i++) {
        if ((dst->v[i].key = kp_strdup(src->v[i].key)) == NULL ||
            (dst->v[i].value = kp_strdup(src->v[i].value)) == NULL)
            return KP_ENOMEM;
    }
    return KP_OK;
}

static int clone_objv(const struct kp_field *f, const void *src, void *dst)
{
    const char *from;
    uint32_t n = 0;
    memcpy(&from, (const char *)src + f->off, sizeof(from));
    memcpy(&n, (const char *)src + f->off_n, sizeof(n));
    if (n == 0)
        return KP_OK;
    char *arr = kp_calloc(n, f->sub->size);
    if (arr == NULL)
        return KP_ENOMEM;
    memcpy((char *)dst + f->off, &arr, sizeof(arr));
    memcpy((char *)dst + f->off_n, &n, sizeof(n));
    for (uint32_t i = 0; i < n; i++) {
        size_t at = (size_t)i * f->sub->size;
        if (kp_store__obj_clone(f->sub, from + at, arr + at) != KP_OK)
            return KP_ENOMEM;
    }
    return KP_OK;
}

static int clone_field(const struct kp_field *f, const void *src, void *dst)
{
    const void *s = (const char *)src + f->off;
    void *d = (char *)dst + f->off;
    switch (f->type) {
    case KP_FT_STR:
        if (*(char *const *)s != NULL && (*(char **)d = kp_strdup(*(char *const *)s)) == NULL)
            return KP_ENOMEM;
        return KP_OK;
    case KP_FT_I32:
    case KP_FT_U32:
        memcpy(d, s, sizeof(uint32_t));
        return KP_OK;
    case KP_FT_U64:
    case KP_FT_I64:
        memcpy(d, s, sizeof(uint64_t));
        return KP_OK;
    case KP_FT_BOOL:
        memcpy(d, s, sizeof(bool));
        return KP_OK;
    case KP_FT_ENUM:
        memcpy(d, s, 1);
        return KP_OK;
    case KP_FT_HASH32:
        memcpy(d, s, 32);
        return KP_OK;
    case KP_FT_BYTES: {
        const struct kp_bytes *from = s;
        struct kp_bytes *to = d;
        if (from->n == 0)
            return KP_OK;
        if ((to->p = kp_malloc(from->n)) == NULL)
            return KP_ENOMEM;
        memcpy(to->p, from->p, from->n);
        to->n = from->n;
        return KP_OK;
    }
    case KP_FT_STRV:
        return clone_strv(s, d);
    case KP_FT_STRMAP:
        return clone_strmap(s, d);
    case KP_FT_OBJV:
        return clone_objv(f, src, dst);
    }
    return KP_EINVAL;
}

int kp_store__obj_clone(const struct kp_schema *s, const void *src, void *dst)
{
    for (uint32_t i = 0; i < s->nfields; i++) {
        if (clone_field(&s->fields[i], src, dst) != KP_OK) {
            kp_store__obj_free(s, dst);
            return KP_ENOMEM;
        }
    }
    return KP_OK;
}

/* --- commands --------------------------------------------------------------------------------- */

static int encode_envelope(msgpack_packer *pk, const struct kp_command *cmd,
                           const struct kp_schema *body)
{
    uint32_t n = 4 + (cmd->has_expect_version ? 1 : 0) + kp_store__count_fields(body, KP_MODE_CMD);
    if (msgpack_pack_map(pk, n) != 0 || kp_store__pack_str(pk, "v") != 0 ||
        msgpack_pack_uint32(pk, cmd->v) != 0 || kp_store__pack_str(pk, "op") != 0 ||
        kp_store__pack_str(pk, kp_op_name(cmd->op)) != 0 || kp_store__pack_str(pk, "ts") != 0 ||
        msgpack_pack_int64(pk, cmd->ts) != 0 || kp_store__pack_str(pk, "audit") != 0 ||
        kp_store__encode_obj(pk, &kp_store__audit_ctx_schema, &cmd->audit, KP_MODE_CMD) != 0)
        return -1;
    if (cmd->has_expect_version && (kp_store__pack_str(pk, "expect_version") != 0 ||
                                    msgpack_pack_uint64(pk, cmd->expect_version) != 0))
        return -1;
    return 0;
}

int kp_command_encode(const struct kp_command *cmd, struct kp_buf *out, char *errmsg, size_t errlen)
{
    const struct kp_schema *body = kp_store__op_body(cmd->op);
    if (body == NULL || cmd->body.any == NULL) {
        snprintf(errmsg, errlen, "encode command: %s", body ? "no body" : "unknown op");
        return KP_EINVAL;
    }
    size_t start = out->len;
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, kp_store__mp_write);
    if (encode_envelope(&pk, cmd, body) != 0 ||
        kp_store__encode_fields(&pk, body, cmd->body.any, KP_MODE_CMD) != 0) {
        out->len = start;
        snprintf(errmsg, errlen, "encode command: out of memory");
        return KP_ENOMEM;
    }
    return KP_OK;
}

void kp_command_free(struct kp_command *cmd)
{
    kp_store__obj_free(&kp_store__audit_ctx_schema, &cmd->audit);
    const struct kp_schema *body = kp_store__op_body(cmd->op);
    if (body != NULL && cmd->body.any != NULL) {
        kp_store__obj_free(body, cmd->body.any);
        kp_free(cmd->body.any);
    }
    cmd->body.any = NULL;
}

/* Where each envelope field's value starts (NULL: absent). */
struct envelope {
    const uint8_t *at[5]; /* v, op, ts, audit, expect_version */
};

static const char *const envelope_keys[5] = {"v", "op", "ts", "audit", "expect_version"};

static int scan_envelope(struct kp_decoder *d, struct envelope *env)
{
    uint32_t n = 0;
    int rc = read_count(d, KP_MP_MAP, 64, 2, &n);
    if (rc != KP_OK)
        return rc;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *k = NULL;
        size_t klen = 0;
        if ((rc = read_chars(d, 64, &k, &klen)) != KP_OK)
            return rc;
        for (int e = 0; e < 5; e++) {
            if (strlen(envelope_keys[e]) != klen || memcmp(envelope_keys[e], k, klen) != 0)
                continue;
            if (env->at[e] != NULL)
                return kp_store__fail(d, KP_EINVAL, "%s: appears twice", envelope_keys[e]);
            env->at[e] = d->c.p;
        }
        if (!kp_mp_skip(&d->c))
            return kp_store__fail(d, KP_EINVAL, "input ends early");
    }
    if (kp_mp_left(&d->c) != 0)
        return kp_store__fail(d, KP_EINVAL, "trailing bytes after the command");
    return KP_OK;
}

static int read_version(struct kp_decoder *d, const struct envelope *env, struct kp_command *cmd)
{
    uint64_t v = 0;
    if (env->at[0] == NULL)
        return kp_store__fail(d, KP_EINVAL, "v: missing");
    d->c.p = env->at[0];
    if (!kp_mp_read_uint(&d->c, UINT32_MAX, &v))
        return kp_store__fail(d, KP_EVERSION, "v: unsupported command version");
    cmd->v = (uint32_t)v;
    if (v != KP_COMMAND_VERSION)
        return kp_store__fail(d, KP_EVERSION,
                              "v: unsupported command version %" PRIu64 " (this node applies %d)",
                              v, KP_COMMAND_VERSION);
    return KP_OK;
}

static int read_op(struct kp_decoder *d, const struct envelope *env, struct kp_command *cmd)
{
    const uint8_t *p = NULL;
    size_t n = 0;
    if (env->at[1] == NULL)
        return kp_store__fail(d, KP_EINVAL, "op: missing");
    d->c.p = env->at[1];
    size_t old = path_push(d, "op", -1);
    int rc = read_chars(d, 64, &p, &n);
    if (rc != KP_OK)
        return rc;
    for (int op = KP_OP_NONE + 1; op < KP_OP_COUNT; op++) {
        if (strlen(op_names[op]) == n && memcmp(op_names[op], p, n) == 0) {
            cmd->op = (enum kp_op)op;
            path_pop(d, old);
            return KP_OK;
        }
    }
    bool plain = n > 0 && kp_store__check_cs(KP_CS_ID, (const char *)p, n) == NULL;
    return kp_store__fail(d, KP_EINVAL, "unknown operation%s%.*s%s", plain ? " '" : "",
                          plain ? (int)n : 0, (const char *)p, plain ? "'" : "");
}

/* One optional integer of the envelope through a synthetic field. */
static int read_env_int(struct kp_decoder *d, const uint8_t *at, const struct kp_field *f,
                        void *dst)
{
    d->c.p = at;
    size_t old = path_push(d, f->name, -1);
    int rc = read_int(d, f, dst);
    if (rc == KP_OK)
        path_pop(d, old);
    return rc;
}

static const struct kp_field ts_field = {
    .name = "ts", .type = KP_FT_I64, .min = 0, .max = 253402300799999};
static const struct kp_field expect_field = {
    .name = "expect_version", .type = KP_FT_U64, .min = 0, .max = UINT64_MAX};

static int read_envelope(struct kp_decoder *d, const struct envelope *env, struct kp_command *cmd)
{
    int rc = read_version(d, env, cmd);
    if (rc != KP_OK)
        return rc;
    if (env->at[2] == NULL)
        return kp_store__fail(d, KP_EINVAL, "ts: missing");
    if ((rc = read_env_int(d, env->at[2], &ts_field, &cmd->ts)) != KP_OK)
        return rc;
    if (env->at[3] == NULL)
        return kp_store__fail(d, KP_EINVAL, "audit: missing");
    d->c.p = env->at[3];
    size_t old = path_push(d, "audit", -1);
    if ((rc = kp_store__decode_obj(d, &kp_store__audit_ctx_schema, &cmd->audit)) != KP_OK)
        return rc;
    path_pop(d, old);
    if ((rc = read_op(d, env, cmd)) != KP_OK)
        return rc;
    if (env->at[4] != NULL) {
        struct kp_mp_head h;
        d->c.p = env->at[4];
        if (kp_mp_read_head(&d->c, &h) && h.kind == KP_MP_NIL)
            return KP_OK;
        cmd->has_expect_version = true;
        return read_env_int(d, env->at[4], &expect_field, &cmd->expect_version);
    }
    return KP_OK;
}

static void *body_alloc(enum kp_op op, const struct kp_schema *s)
{
    int kind = kp_store__op_kind(op);
    if (op == KP_OP_SET_KEY_HEALTH)
        kind = KP_KIND_KEY_HEALTH;
    else if (op == KP_OP_INIT_CLUSTER)
        kind = KP_KIND_COUNT;
    return kind >= 0 ? (void *)kp_store__entity_alloc(kind) : kp_calloc(1, s->size);
}

int kp_command_decode(const void *buf, size_t len, struct kp_command *cmd, char *errmsg,
                      size_t errlen)
{
    struct kp_decoder d = {
        .mode = KP_MODE_CMD,
        .errmsg = errmsg,
        .errlen = errlen,
    };
    struct envelope env = {{NULL}};
    kp_mp_reader_init(&d.c, buf, len);
    memset(cmd, 0, sizeof(*cmd));
    if (errmsg != NULL && errlen > 0)
        errmsg[0] = '\0';
    int rc = scan_envelope(&d, &env);
    if (rc == KP_OK)
        rc = read_envelope(&d, &env, cmd);
    if (rc != KP_OK)
        return rc;
    const struct kp_schema *body = kp_store__op_body(cmd->op);
    if ((cmd->body.any = body_alloc(cmd->op, body)) == NULL)
        return KP_ENOMEM;
    d.c.p = d.c.start;
    d.skip_envelope = true;
    return kp_store__decode_obj(&d, body, cmd->body.any);
}

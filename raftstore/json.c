/* JSON for the control API: entities and audit entries rendered for
 * answers, and request bodies turned into commands.
 *
 * Both directions walk the schemas of registry.c, so a field added there
 * appears in answers and is accepted in bodies without a change here.
 *
 * Rendering writes every schema field under its registry name, in schema
 * order, after "kind", the entity kind's name. Providers, alert rules and
 * webhooks have a "kind" field of their own ("openai", ...); theirs wins,
 * so that what a body sets is what an answer shows. An absent optional string
 * is omitted, and so is a 0 that means nothing (a budget's period_ms
 * unless its window is fixed, KP_FF_OMIT0); lists and maps are always
 * present, empty as [] and {}. Binary
 * fields (a key's sealed secrets, a token's hash, the pepper) are never
 * rendered; an audit entry's hashes, which are not secret, are rendered in
 * lower-case hex. JSON integers are signed 64-bit, so the rare unsigned
 * value above INT64_MAX (a node id) is rendered as a decimal string rather
 * than wrongly.
 *
 * Parsing converts the body into the msgpack map of a command: the
 * envelope (v, op, ts, audit, expect_version) and the body's fields beside
 * it. On the way it refuses only what the decoder cannot see or what the
 * API forbids: envelope keys and registry-set fields in the body, an "id"
 * that contradicts the URL, binary fields (they carry secret material the
 * control plane computes itself), reals where an integer is expected, and
 * unknown fields (so that @field names the unknown key itself). Everything
 * else (types, ranges, charsets, required fields) is converted as it is
 * and left to kp_command_decode, which runs on the result: the control
 * plane then refuses exactly what a replica would, with the same message
 * and field path. */
#include "raftstore/internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* --- rendering ------------------------------------------------------------------------------ */

/* KP_KIND_COUNT stands for the cluster settings, as in registry.c. */
static const struct kp_schema *entity_schema(unsigned kind, const char **name)
{
    if (kind == KP_KIND_COUNT) {
        *name = "cluster";
        return &kp_store__cluster_schema;
    }
    if (kind > KP_KIND_COUNT)
        return NULL;
    *name = kp_kind_name((enum kp_kind)kind);
    return kp_store__kind_schema[kind];
}

static const struct kp_field *find_field(const struct kp_schema *s, const char *k, size_t n)
{
    for (uint32_t i = 0; i < s->nfields; i++) {
        if (strlen(s->fields[i].name) == n && memcmp(s->fields[i].name, k, n) == 0)
            return &s->fields[i];
    }
    return NULL;
}

static json_t *u64_json(uint64_t v)
{
    char dec[24];
    if (v <= INT64_MAX)
        return json_integer((json_int_t)v);
    snprintf(dec, sizeof(dec), "%llu", (unsigned long long)v);
    return json_string(dec);
}

static json_t *strv_json(const struct kp_strv *v)
{
    json_t *a = json_array();
    for (uint32_t i = 0; a != NULL && i < v->n; i++) {
        if (json_array_append_new(a, json_string(v->v[i])) != 0) {
            json_decref(a);
            return NULL;
        }
    }
    return a;
}

static json_t *strmap_json(const struct kp_strmap *m)
{
    json_t *o = json_object();
    for (uint32_t i = 0; o != NULL && i < m->n; i++) {
        if (json_object_set_new(o, m->v[i].key, json_string(m->v[i].value)) != 0) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

static int render_fields(json_t *o, const struct kp_schema *s, const void *obj, bool hex);

static json_t *objv_json(const struct kp_field *f, const void *obj, bool hex)
{
    const char *arr;
    uint32_t n = 0;
    memcpy(&arr, (const char *)obj + f->off, sizeof(arr));
    memcpy(&n, (const char *)obj + f->off_n, sizeof(n));
    json_t *a = json_array();
    for (uint32_t i = 0; a != NULL && i < n; i++) {
        json_t *o = json_object();
        if (o == NULL || render_fields(o, f->sub, arr + (size_t)i * f->sub->size, hex) != KP_OK ||
            json_array_append_new(a, o) != 0) {
            json_decref(o);
            json_decref(a);
            return NULL;
        }
    }
    return a;
}

/* The JSON value of field @f of @obj into *@out: NULL (KP_OK) when it is
 * not rendered, an absent string or a binary field. With @hex, 32-byte
 * hashes are rendered as hex (audit entries); binary fields never are. */
static int field_json(const struct kp_field *f, const void *obj, bool hex, json_t **out)
{
    const void *p = (const char *)obj + f->off;
    char h[65];
    *out = NULL;
    switch (f->type) {
    case KP_FT_STR:
        if (*(char *const *)p == NULL)
            return KP_OK;
        *out = json_string(*(char *const *)p);
        break;
    case KP_FT_I32:
        *out = json_integer(*(const int32_t *)p);
        break;
    case KP_FT_U32:
        if ((f->flags & KP_FF_OMIT0) && *(const uint32_t *)p == 0)
            return KP_OK;
        *out = json_integer(*(const uint32_t *)p);
        break;
    case KP_FT_U64:
        *out = u64_json(*(const uint64_t *)p);
        break;
    case KP_FT_I64:
        if ((f->flags & KP_FF_OMIT0) && *(const int64_t *)p == 0)
            return KP_OK;
        *out = json_integer(*(const int64_t *)p);
        break;
    case KP_FT_BOOL:
        *out = json_boolean(*(const bool *)p);
        break;
    case KP_FT_ENUM: {
        uint8_t v = *(const uint8_t *)p;
        *out = v < f->max ? json_string(f->names[v]) : json_null();
        break;
    }
    case KP_FT_BYTES:
        return KP_OK; /* secret material */
    case KP_FT_HASH32:
        if (!hex)
            return KP_OK;
        kp_hex_encode(p, 32, h);
        *out = json_string(h);
        break;
    case KP_FT_STRV:
        *out = strv_json(p);
        break;
    case KP_FT_STRMAP:
        *out = strmap_json(p);
        break;
    case KP_FT_OBJV:
        *out = objv_json(f, obj, hex);
        break;
    }
    return *out != NULL ? KP_OK : KP_ENOMEM;
}

static int render_fields(json_t *o, const struct kp_schema *s, const void *obj, bool hex)
{
    for (uint32_t i = 0; i < s->nfields; i++) {
        json_t *v;
        if (field_json(&s->fields[i], obj, hex, &v) != KP_OK)
            return KP_ENOMEM;
        if (v != NULL && json_object_set_new(o, s->fields[i].name, v) != 0)
            return KP_ENOMEM;
    }
    return KP_OK;
}

json_t *kp_entity_json(const struct kp_entity *e)
{
    const char *kind = NULL;
    const struct kp_schema *s = entity_schema(e->kind, &kind);
    if (s == NULL)
        return NULL;
    json_t *o = json_object();
    if (o == NULL)
        return NULL;
    bool own_kind = find_field(s, "kind", 4) != NULL;
    if ((!own_kind && json_object_set_new(o, "kind", json_string(kind)) != 0) ||
        render_fields(o, s, e, false) != KP_OK) {
        json_decref(o);
        return NULL;
    }
    return o;
}

json_t *kp_budget_json(const struct kp_budget *b)
{
    const struct kp_field *f = find_field(kp_store__kind_schema[KP_KIND_POLICY], "budgets", 7);
    json_t *o = json_object();
    if (o != NULL && render_fields(o, f->sub, b, false) != KP_OK) {
        json_decref(o);
        return NULL;
    }
    return o;
}

json_t *kp_audit_entry_json(const struct kp_audit_entry *e)
{
    json_t *o = json_object();
    if (o != NULL && render_fields(o, &kp_store__audit_entry_schema, e, true) != KP_OK) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* --- parsing ------------------------------------------------------------------------------- */

/* Deepest nesting converted where the schema expects no container; any
 * body a replica would accept is far shallower. */
#define GENERIC_DEPTH_MAX 16

/* A command being built, and where in the body the walk is. */
struct builder {
    msgpack_packer pk;
    struct kp_buf buf;
    char path[160];
    size_t pathlen;
    char msg[400]; /* room for a whole path and message */
    char field[160];
};

static size_t path_push(struct builder *b, const char *name, long idx)
{
    size_t old = b->pathlen, room = sizeof(b->path) - old;
    const char *dot = old > 0 && name != NULL ? "." : "";
    int n = idx < 0 ? snprintf(b->path + old, room, "%s%s", dot, name ? name : "")
                    : snprintf(b->path + old, room, "[%ld]", idx);
    b->pathlen = n < 0 || (size_t)n >= room ? sizeof(b->path) - 1 : old + (size_t)n;
    return old;
}

static void path_pop(struct builder *b, size_t old)
{
    b->pathlen = old;
    b->path[old] = '\0';
}

static int refuse(struct builder *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* KP_EINVAL with "path: what" (the decoder's form) and the path as the
 * field. */
static int refuse(struct builder *b, const char *fmt, ...)
{
    char what[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    if (b->pathlen > 0)
        snprintf(b->msg, sizeof(b->msg), "%s: %s", b->path, what);
    else
        snprintf(b->msg, sizeof(b->msg), "%s", what);
    kp_store__utf8_trim(b->msg);
    snprintf(b->field, sizeof(b->field), "%s", b->path);
    return KP_EINVAL;
}

/* An unknown key: the decoder's message (which echoes only plain ids),
 * and the key's own path as the field when it can be shown. */
static int refuse_unknown(struct builder *b, const char *k, size_t n)
{
    bool plain = n > 0 && n <= 64 && kp_store__check_cs(KP_CS_ID, k, n) == NULL;
    if (!plain)
        return refuse(b, "unknown field");
    refuse(b, "unknown field '%.*s'", (int)n, k);
    size_t old = path_push(b, k, -1);
    snprintf(b->field, sizeof(b->field), "%s", b->path);
    path_pop(b, old);
    return KP_EINVAL;
}

static int pack_bytes_str(msgpack_packer *pk, const char *s, size_t n)
{
    if (msgpack_pack_str(pk, n) != 0 || msgpack_pack_str_body(pk, s, n) != 0)
        return KP_ENOMEM;
    return KP_OK;
}

/* Any JSON value as the msgpack value of the same shape; reals become
 * floats, which the decoder refuses with the type it found. */
static int pack_generic(struct builder *b, const json_t *v, int depth)
{
    msgpack_packer *pk = &b->pk;
    int rc = 0;
    if ((json_is_object(v) || json_is_array(v)) && depth >= GENERIC_DEPTH_MAX)
        return refuse(b, "nested too deeply");
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *k;
        size_t n;
        json_t *e;
        if (msgpack_pack_map(pk, json_object_size(v)) != 0)
            return KP_ENOMEM;
        json_object_keylen_foreach((json_t *)v, k, n, e)
        {
            if ((rc = pack_bytes_str(pk, k, n)) != KP_OK ||
                (rc = pack_generic(b, e, depth + 1)) != KP_OK)
                return rc;
        }
        return KP_OK;
    }
    case JSON_ARRAY:
        if (msgpack_pack_array(pk, json_array_size(v)) != 0)
            return KP_ENOMEM;
        for (size_t i = 0; i < json_array_size(v); i++) {
            if ((rc = pack_generic(b, json_array_get(v, i), depth + 1)) != KP_OK)
                return rc;
        }
        return KP_OK;
    case JSON_STRING:
        return pack_bytes_str(pk, json_string_value(v), json_string_length(v));
    case JSON_INTEGER: {
        json_int_t i = json_integer_value(v);
        rc = i < 0 ? msgpack_pack_int64(pk, i) : msgpack_pack_uint64(pk, (uint64_t)i);
        break;
    }
    case JSON_REAL:
        rc = msgpack_pack_double(pk, json_real_value(v));
        break;
    case JSON_TRUE:
        rc = msgpack_pack_true(pk);
        break;
    case JSON_FALSE:
        rc = msgpack_pack_false(pk);
        break;
    case JSON_NULL:
        rc = msgpack_pack_nil(pk);
        break;
    }
    return rc == 0 ? KP_OK : KP_ENOMEM;
}

static int pack_obj(struct builder *b, const struct kp_schema *s, const json_t *obj);

/* An array of objects of @sub: each element through the schema, so that
 * the checks below reach nested fields ("members[2].weight"). */
static int pack_objv(struct builder *b, const struct kp_schema *sub, const json_t *arr)
{
    if (msgpack_pack_array(&b->pk, json_array_size(arr)) != 0)
        return KP_ENOMEM;
    for (size_t i = 0; i < json_array_size(arr); i++) {
        const json_t *e = json_array_get(arr, i);
        size_t old = path_push(b, NULL, (long)i);
        int rc = json_is_object(e) ? pack_obj(b, sub, e) : pack_generic(b, e, 0);
        if (rc != KP_OK)
            return rc;
        path_pop(b, old);
    }
    return KP_OK;
}

static bool is_int_type(uint8_t type)
{
    return type == KP_FT_I32 || type == KP_FT_U32 || type == KP_FT_U64 || type == KP_FT_I64;
}

/* One key of an object of @s and its value. */
static int pack_member(struct builder *b, const struct kp_schema *s, const char *k, size_t n,
                       const json_t *v)
{
    const struct kp_field *f = find_field(s, k, n);
    if (f == NULL)
        return refuse_unknown(b, k, n);
    size_t old = path_push(b, f->name, -1);
    int rc;
    if (f->flags & KP_FF_STATE)
        rc = refuse(b, "is set by the registry");
    else if (f->type == KP_FT_BYTES || f->type == KP_FT_HASH32)
        rc = refuse(b, "cannot be set through the API");
    else if (is_int_type(f->type) && json_is_real(v))
        rc = refuse(b, "must be an integer");
    else if (kp_store__pack_str(&b->pk, f->name) != 0)
        rc = KP_ENOMEM;
    else if (f->type == KP_FT_OBJV && json_is_array(v))
        rc = pack_objv(b, f->sub, v);
    else
        rc = pack_generic(b, v, 0);
    if (rc == KP_OK)
        path_pop(b, old);
    return rc;
}

static int pack_obj(struct builder *b, const struct kp_schema *s, const json_t *obj)
{
    const char *k;
    size_t n;
    json_t *v;
    if (msgpack_pack_map(&b->pk, json_object_size(obj)) != 0)
        return KP_ENOMEM;
    json_object_keylen_foreach((json_t *)obj, k, n, v)
    {
        int rc = pack_member(b, s, k, n, v);
        if (rc != KP_OK)
            return rc;
    }
    return KP_OK;
}

static bool key_is(const char *k, size_t n, const char *const *names)
{
    for (; *names != NULL; names++) {
        if (strlen(*names) == n && memcmp(*names, k, n) == 0)
            return true;
    }
    return false;
}

static const char *const envelope_keys[] = {"v", "op", "ts", "audit", "expect_version", NULL};
/* The entity header and the entity kind: in answers, never in bodies. */
static const char *const registry_keys[] = {"version", "created_ms", "updated_ms", "kind", NULL};

/* A top-level key that the body may not carry, refused; KP_OK otherwise.
 * Keys that are fields of the body's schema are left to pack_member. */
static int check_top_key(struct builder *b, const struct kp_schema *s, const char *k, size_t n)
{
    bool envelope = key_is(k, n, envelope_keys);
    if (!envelope && (find_field(s, k, n) != NULL || !key_is(k, n, registry_keys)))
        return KP_OK;
    size_t old = path_push(b, k, -1);
    int rc = envelope ? refuse(b, "belongs to the command envelope, not the body")
                      : refuse(b, "is set by the registry");
    path_pop(b, old);
    return rc;
}

/* A body "id" next to the URL's: only the same one is accepted. */
static int check_body_id(struct builder *b, const char *id, const json_t *v)
{
    if (json_is_string(v) && json_string_length(v) == strlen(id) &&
        memcmp(json_string_value(v), id, strlen(id)) == 0)
        return KP_OK;
    size_t old = path_push(b, "id", -1);
    int rc = refuse(b, "does not match the URL");
    path_pop(b, old);
    return rc;
}

static int pack_body_fields(struct builder *b, const struct kp_schema *s, const char *id,
                            const json_t *body)
{
    const char *k;
    size_t n;
    json_t *v;
    json_object_keylen_foreach((json_t *)body, k, n, v)
    {
        bool is_id = n == 2 && memcmp(k, "id", 2) == 0;
        int rc = check_top_key(b, s, k, n);
        if (rc == KP_OK && is_id && id != NULL)
            rc = check_body_id(b, id, v); /* the URL's id is already in the map */
        else if (rc == KP_OK)
            rc = pack_member(b, s, k, n, v);
        if (rc != KP_OK)
            return rc;
    }
    return KP_OK;
}

/* The audit map with the fields that are set. */
static int pack_audit(msgpack_packer *pk, const struct kp_audit_ctx *a)
{
    const struct kp_schema *s = &kp_store__audit_ctx_schema;
    uint32_t n = 0;
    for (uint32_t i = 0; a != NULL && i < s->nfields; i++)
        n += *(char *const *)((const char *)a + s->fields[i].off) != NULL;
    if (msgpack_pack_map(pk, n) != 0)
        return -1;
    for (uint32_t i = 0; a != NULL && i < s->nfields; i++) {
        const char *v = *(char *const *)((const char *)a + s->fields[i].off);
        if (v != NULL &&
            (kp_store__pack_str(pk, s->fields[i].name) != 0 || kp_store__pack_str(pk, v) != 0))
            return -1;
    }
    return 0;
}

struct envelope {
    enum kp_op op;
    int64_t ts;
    const struct kp_audit_ctx *audit;
    bool has_expect_version;
    uint64_t expect_version;
};

/* The map header for @nbody body fields, then the envelope. */
static int pack_envelope(msgpack_packer *pk, const struct envelope *env, size_t nbody)
{
    size_t n = 4 + (env->has_expect_version ? 1 : 0) + nbody;
    if (msgpack_pack_map(pk, n) != 0 || kp_store__pack_str(pk, "v") != 0 ||
        msgpack_pack_uint32(pk, KP_COMMAND_VERSION) != 0 || kp_store__pack_str(pk, "op") != 0 ||
        kp_store__pack_str(pk, kp_op_name(env->op)) != 0 || kp_store__pack_str(pk, "ts") != 0 ||
        msgpack_pack_int64(pk, env->ts) != 0 || kp_store__pack_str(pk, "audit") != 0 ||
        pack_audit(pk, env->audit) != 0)
        return KP_ENOMEM;
    if (env->has_expect_version && (kp_store__pack_str(pk, "expect_version") != 0 ||
                                    msgpack_pack_uint64(pk, env->expect_version) != 0))
        return KP_ENOMEM;
    return KP_OK;
}

/* The whole command into b->buf, refusing what only JSON can get wrong. */
static int build(struct builder *b, const struct envelope *env, const char *id, const json_t *body)
{
    const struct kp_schema *s = kp_store__op_body(env->op);
    if (s == NULL)
        return refuse(b, "unknown operation");
    if (body != NULL && !json_is_object(body))
        return refuse(b, "the body must be a JSON object");
    bool has_id = find_field(s, "id", 2) != NULL;
    if (id != NULL && !has_id) {
        path_push(b, "id", -1);
        return refuse(b, "%s takes no id", kp_op_name(env->op));
    }
    size_t nbody = body != NULL ? json_object_size(body) : 0;
    if (id != NULL && body != NULL && json_object_getn(body, "id", 2) != NULL)
        nbody--; /* replaced by the URL's */
    int rc = pack_envelope(&b->pk, env, nbody + (id != NULL));
    if (rc == KP_OK && id != NULL &&
        (kp_store__pack_str(&b->pk, "id") != 0 || kp_store__pack_str(&b->pk, id) != 0))
        rc = KP_ENOMEM;
    if (rc == KP_OK && body != NULL)
        rc = pack_body_fields(b, s, id, body);
    return rc;
}

/* Decode what was built, as a replica will; the field is the message's
 * path, before ": ". */
static int check_decodes(struct builder *b)
{
    struct kp_command cmd;
    int rc = kp_command_decode(b->buf.data, b->buf.len, &cmd, b->msg, sizeof(b->msg));
    kp_command_free(&cmd);
    if (rc == KP_OK || rc == KP_ENOMEM)
        return rc;
    const char *colon = strstr(b->msg, ": ");
    size_t n = colon != NULL ? (size_t)(colon - b->msg) : 0;
    snprintf(b->field, sizeof(b->field), "%.*s", (int)n, b->msg);
    return KP_EINVAL;
}

int kp_command_from_json(enum kp_op op, const char *id, const json_t *body, int64_t ts,
                         const struct kp_audit_ctx *audit, bool has_expect_version,
                         uint64_t expect_version, struct kp_buf *out, char *errmsg, size_t errlen,
                         char *field, size_t fieldlen)
{
    struct builder b = {.pathlen = 0};
    struct envelope env = {op, ts, audit, has_expect_version, expect_version};
    kp_buf_init(&b.buf);
    msgpack_packer_init(&b.pk, &b.buf, kp_store__mp_write);
    int rc = build(&b, &env, id, body);
    if (rc == KP_OK)
        rc = check_decodes(&b);
    if (rc == KP_OK && kp_buf_append(out, b.buf.data, b.buf.len) != 0)
        rc = KP_ENOMEM;
    kp_buf_free(&b.buf);
    if (rc == KP_ENOMEM) {
        snprintf(b.msg, sizeof(b.msg), "out of memory");
        b.field[0] = '\0';
    }
    if (errmsg != NULL && errlen > 0)
        snprintf(errmsg, errlen, "%s", rc == KP_OK ? "" : b.msg);
    if (field != NULL && fieldlen > 0)
        snprintf(field, fieldlen, "%s", rc == KP_OK ? "" : b.field);
    return rc;
}

/* W3C trace context, span sets and their OTLP/JSON form (trace.h).
 *
 * The traceparent grammar (W3C Trace Context):
 *
 *     version "-" trace-id "-" parent-id "-" trace-flags
 *     2 hex      32 hex       16 hex        2 hex      (lower case only)
 *
 * Version ff is invalid, and so are an all-zero trace-id or parent-id.
 * Version 00 is exactly 55 characters. A later version may add fields: its
 * first 55 characters are read as version 00's and must be followed by
 * the end or a dash. */
#include "trace.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "bytes.h"
#include "clock.h"
#include "error.h"
#include "log.h"

/* --- trace context ---------------------------------------------------------- */

static bool lower_hex(const char *s, size_t n, uint8_t *out)
{
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return false;
    }
    for (size_t i = 0; i < n / 2; i++)
        out[i] = (uint8_t)(kp_hex_value(s[2 * i]) << 4 | kp_hex_value(s[2 * i + 1]));
    return true;
}

static bool all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != 0)
            return false;
    return true;
}

static bool blank(char c)
{
    return c == ' ' || c == '\t';
}

int kp_traceparent_parse(const char *s, size_t len, struct kp_trace_parent *out)
{
    uint8_t version, flags;
    struct kp_trace_parent p;
    while (len > 0 && blank(s[0]))
        s++, len--;
    while (len > 0 && blank(s[len - 1]))
        len--;
    if (len < KP_TRACEPARENT_LEN || !lower_hex(s, 2, &version) || version == 0xff || s[2] != '-' ||
        s[35] != '-' || s[52] != '-')
        return KP_EINVAL;
    if (!lower_hex(s + 3, 32, p.trace_id) || !lower_hex(s + 36, 16, p.span_id) ||
        !lower_hex(s + 53, 2, &flags))
        return KP_EINVAL;
    if (all_zero(p.trace_id, 16) || all_zero(p.span_id, 8))
        return KP_EINVAL;
    if (version == 0 && len != KP_TRACEPARENT_LEN)
        return KP_EINVAL;
    if (version != 0 && len > KP_TRACEPARENT_LEN && s[KP_TRACEPARENT_LEN] != '-')
        return KP_EINVAL;
    p.flags = flags;
    *out = p;
    return KP_OK;
}

void kp_traceparent_format(const uint8_t trace_id[16], const uint8_t span_id[8], uint8_t flags,
                           char out[KP_TRACEPARENT_LEN + 1])
{
    memcpy(out, "00-", 3);
    kp_hex_encode(trace_id, 16, out + 3);
    out[35] = '-';
    kp_hex_encode(span_id, 8, out + 36);
    out[52] = '-';
    kp_hex_encode(&flags, 1, out + 53);
}

/* tracestate keys: simple-key = lcalpha 0*255(lcalpha / DIGIT / "_" /
 * "-" / "*" / "/"); multi-tenant-key = tenant-id "@" system-id, tenant-id
 * = (lcalpha / DIGIT) 0*240(same set), system-id = lcalpha 0*13(same set). */
static bool key_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '*' ||
           c == '/';
}

static bool key_part(const char *s, size_t n, size_t max, bool digit_first)
{
    if (n == 0 || n > max)
        return false;
    if (!((s[0] >= 'a' && s[0] <= 'z') || (digit_first && s[0] >= '0' && s[0] <= '9')))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!key_char(s[i]))
            return false;
    return true;
}

static bool state_key(const char *s, size_t n)
{
    const char *at = memchr(s, '@', n);
    if (at == NULL)
        return key_part(s, n, 256, false);
    size_t t = (size_t)(at - s);
    return key_part(s, t, 241, true) && key_part(at + 1, n - t - 1, 14, false);
}

/* value = 0*255(chr) nblk-chr; chr = %x20 / nblk-chr; nblk-chr = %x21-2B /
 * %x2D-3C / %x3E-7E (printable ASCII but ',' and '='). */
static bool state_value(const char *s, size_t n)
{
    if (n == 0 || n > 256 || s[n - 1] == ' ')
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c > 0x7e || c == ',' || c == '=')
            return false;
    }
    return true;
}

bool kp_tracestate_valid(const char *s, size_t len)
{
    const char *keys[32];
    size_t key_lens[32];
    unsigned n = 0;
    if (len > KP_TRACESTATE_MAX)
        return false;
    const char *end = s + len;
    while (s <= end) {
        const char *comma = memchr(s, ',', (size_t)(end - s));
        const char *m = s, *me = comma ? comma : end;
        while (m < me && blank(*m))
            m++;
        while (me > m && blank(me[-1]))
            me--;
        if (me > m) {
            const char *eq = memchr(m, '=', (size_t)(me - m));
            if (eq == NULL || n == 32 || !state_key(m, (size_t)(eq - m)) ||
                !state_value(eq + 1, (size_t)(me - eq - 1)))
                return false;
            for (unsigned i = 0; i < n; i++)
                if (key_lens[i] == (size_t)(eq - m) && memcmp(keys[i], m, key_lens[i]) == 0)
                    return false;
            keys[n] = m;
            key_lens[n++] = (size_t)(eq - m);
        }
        if (comma == NULL)
            break;
        s = comma + 1;
    }
    return true;
}

void kp_trace_new_id(uint8_t *id, size_t n)
{
    static atomic_uint_fast64_t fallback = 0x9e3779b97f4a7c15ull;
    if (kp_random_pooled(id, n) != KP_OK) {
        /* OpenSSL's generator failed (it does not in practice): unique
         * enough for a trace id, which is no secret. */
        uint64_t x = atomic_fetch_add(&fallback, 0x9e3779b97f4a7c15ull) ^ kp_now_mono_us();
        for (size_t i = 0; i < n; i++, x = x * 6364136223846793005ull + 1442695040888963407ull)
            id[i] = (uint8_t)(x >> 56);
    }
    if (all_zero(id, n))
        id[n - 1] = 1;
}

bool kp_trace_ratio_keeps(const uint8_t trace_id[16], double ratio)
{
    if (!(ratio > 0))
        return false;
    if (ratio >= 1)
        return true;
    uint64_t x = 0;
    for (int i = 9; i < 16; i++)
        x = x << 8 | trace_id[i];
    return x < (uint64_t)(ratio * 72057594037927936.0); /* 2^56 */
}

int64_t kp_now_unix_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* --- span sets ---------------------------------------------------------------- */

struct kp_span_set *kp_span_set_new(unsigned max_spans)
{
    struct kp_arena a;
    kp_arena_init(&a, 8192);
    struct kp_span_set *s = kp_arena_alloc(&a, sizeof(*s));
    struct kp_span *spans =
        s ? kp_arena_alloc(&a, sizeof(*spans) * (max_spans ? max_spans : 1)) : NULL;
    if (spans == NULL) {
        kp_arena_free(&a);
        return NULL;
    }
    s->next = NULL;
    s->arena = a;
    s->spans = spans;
    s->n = 0;
    s->cap = max_spans;
    return s;
}

void kp_span_set_free(struct kp_span_set *s)
{
    if (s == NULL)
        return;
    struct kp_arena a = s->arena; /* the set itself lives in it */
    kp_arena_free(&a);
}

struct kp_span *kp_span_add(struct kp_span_set *s, const char *name, enum kp_span_kind kind,
                            unsigned max_attrs)
{
    if (s->n == s->cap)
        return NULL;
    struct kp_span *sp = &s->spans[s->n];
    memset(sp, 0, sizeof(*sp));
    sp->name = kp_arena_strndup(&s->arena, name, strlen(name));
    sp->attrs = kp_arena_alloc(&s->arena, sizeof(*sp->attrs) * (max_attrs ? max_attrs : 1));
    if (sp->name == NULL || sp->attrs == NULL)
        return NULL;
    sp->kind = (uint8_t)kind;
    sp->cap_attrs = max_attrs;
    s->n++;
    return sp;
}

static struct kp_span_attr *attr_add(struct kp_span *sp, const char *key, uint8_t type)
{
    if (sp == NULL || sp->nattrs == sp->cap_attrs)
        return NULL;
    struct kp_span_attr *a = &sp->attrs[sp->nattrs++];
    memset(a, 0, sizeof(*a));
    a->key = key;
    a->type = type;
    return a;
}

void kp_span_str(struct kp_span_set *s, struct kp_span *sp, const char *key, const char *v)
{
    if (v == NULL || v[0] == '\0' || sp == NULL)
        return;
    char *copy = kp_arena_strndup(&s->arena, v, strlen(v));
    struct kp_span_attr *a = copy ? attr_add(sp, key, KP_ATTR_STR) : NULL;
    if (a != NULL)
        a->s = copy;
}

void kp_span_int(struct kp_span *sp, const char *key, int64_t v)
{
    struct kp_span_attr *a = attr_add(sp, key, KP_ATTR_INT);
    if (a != NULL)
        a->i = v;
}

void kp_span_bool(struct kp_span *sp, const char *key, bool v)
{
    struct kp_span_attr *a = attr_add(sp, key, KP_ATTR_BOOL);
    if (a != NULL)
        a->i = v;
}

void kp_span_strs(struct kp_span_set *s, struct kp_span *sp, const char *key, const char *const *v,
                  unsigned n)
{
    if (n == 0 || sp == NULL)
        return;
    const char **copy = kp_arena_alloc(&s->arena, sizeof(*copy) * n);
    if (copy == NULL)
        return;
    for (unsigned i = 0; i < n; i++)
        if ((copy[i] = kp_arena_strndup(&s->arena, v[i], strlen(v[i]))) == NULL)
            return;
    struct kp_span_attr *a = attr_add(sp, key, KP_ATTR_STRS);
    if (a != NULL) {
        a->strs = copy;
        a->i = n;
    }
}

void kp_span_event(struct kp_span *sp, const char *name, int64_t time_ns)
{
    if (sp == NULL || sp->nevents == KP_SPAN_EVENTS_MAX)
        return;
    sp->events[sp->nevents++] = (struct kp_span_event){name, time_ns};
}

void kp_span_status(struct kp_span_set *s, struct kp_span *sp, enum kp_span_status status,
                    const char *message)
{
    if (sp == NULL)
        return;
    sp->status = (uint8_t)status;
    sp->status_message = message ? kp_arena_strndup(&s->arena, message, strlen(message)) : NULL;
}

void kp_span_trace_state(struct kp_span_set *s, struct kp_span *sp, const char *v)
{
    if (sp != NULL && v != NULL && v[0] != '\0')
        sp->trace_state = kp_arena_strndup(&s->arena, v, strlen(v));
}

/* --- OTLP/JSON ---------------------------------------------------------------- */

static json_t *hex_json(const uint8_t *p, size_t n)
{
    char hex[33];
    kp_hex_encode(p, n, hex);
    return json_string(hex);
}

static json_t *int_string(int64_t v)
{
    char text[24];
    snprintf(text, sizeof(text), "%" PRId64, v);
    return json_string(text);
}

/* A string value, redacted. Attribute values are short; a longer one is
 * redacted through the heap. */
static json_t *redacted_string(const char *v)
{
    char small[512];
    size_t n = strlen(v);
    char *buf = n < sizeof(small) ? small : kp_malloc(n + 1);
    if (buf == NULL)
        return NULL;
    memcpy(buf, v, n);
    n = kp_redact(buf, n);
    json_t *out = json_stringn(buf, n);
    if (buf != small)
        kp_free(buf);
    return out;
}

static json_t *any_value(const struct kp_span_attr *a)
{
    switch (a->type) {
    case KP_ATTR_STR:
        return json_pack("{s:o}", "stringValue", redacted_string(a->s));
    case KP_ATTR_INT:
        return json_pack("{s:o}", "intValue", int_string(a->i));
    case KP_ATTR_BOOL:
        return json_pack("{s:b}", "boolValue", a->i != 0);
    case KP_ATTR_STRS: {
        json_t *values = json_array();
        for (int64_t i = 0; values != NULL && i < a->i; i++)
            if (json_array_append_new(
                    values, json_pack("{s:o}", "stringValue", redacted_string(a->strs[i]))) != 0) {
                json_decref(values);
                values = NULL;
            }
        return json_pack("{s:{s:o}}", "arrayValue", "values", values);
    }
    }
    return NULL;
}

static json_t *attributes(const struct kp_span_attr *attrs, unsigned n)
{
    json_t *arr = json_array();
    for (unsigned i = 0; arr != NULL && i < n; i++) {
        json_t *kv = json_pack("{s:s,s:o}", "key", attrs[i].key, "value", any_value(&attrs[i]));
        if (json_array_append_new(arr, kv) != 0) {
            json_decref(arr);
            arr = NULL;
        }
    }
    return arr;
}

static json_t *events(const struct kp_span *sp)
{
    json_t *arr = json_array();
    for (unsigned i = 0; arr != NULL && i < sp->nevents; i++) {
        json_t *e = json_pack("{s:o,s:s}", "timeUnixNano", int_string(sp->events[i].time_ns),
                              "name", sp->events[i].name);
        if (json_array_append_new(arr, e) != 0) {
            json_decref(arr);
            arr = NULL;
        }
    }
    return arr;
}

json_t *kp_span_otlp(const struct kp_span *sp)
{
    json_t *o = json_pack("{s:o,s:o}", "traceId", hex_json(sp->trace_id, 16), "spanId",
                          hex_json(sp->span_id, 8));
    int rc = o ? 0 : -1;
    if (rc == 0 && !all_zero(sp->parent_id, 8))
        rc = json_object_set_new(o, "parentSpanId", hex_json(sp->parent_id, 8));
    if (rc == 0 && sp->trace_state != NULL)
        rc = json_object_set_new(o, "traceState", json_string(sp->trace_state));
    if (rc == 0)
        rc = json_object_set_new(o, "name", json_string(sp->name));
    if (rc == 0)
        rc = json_object_set_new(o, "kind", json_integer(sp->kind));
    if (rc == 0)
        rc = json_object_set_new(o, "startTimeUnixNano", int_string(sp->start_ns));
    if (rc == 0)
        rc = json_object_set_new(o, "endTimeUnixNano", int_string(sp->end_ns));
    if (rc == 0)
        rc = json_object_set_new(o, "attributes", attributes(sp->attrs, sp->nattrs));
    if (rc == 0 && sp->nevents > 0)
        rc = json_object_set_new(o, "events", events(sp));
    if (rc == 0 && sp->status != KP_SPAN_UNSET) {
        json_t *st = json_pack("{s:i}", "code", sp->status);
        if (st != NULL && sp->status_message != NULL)
            json_object_set_new(st, "message", redacted_string(sp->status_message));
        rc = json_object_set_new(o, "status", st);
    }
    if (rc != 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

json_t *kp_otlp_request(json_t *spans, const struct kp_span_attr *resource, unsigned nresource,
                        const char *scope_name, const char *scope_version)
{
    return json_pack("{s:[{s:{s:o},s:[{s:{s:s,s:s},s:o}]}]}", "resourceSpans", "resource",
                     "attributes", attributes(resource, nresource), "scopeSpans", "scope", "name",
                     scope_name, "version", scope_version, "spans", spans);
}

/* Unit tests of meter's usage events and segments (meter/meter.h): event
 * round trips and strict decoding, the writer and reader over many frames,
 * sealing and validation, torn tails cut at every byte, bit flips at every
 * bit, refused oversized claims, and allocation failures walked one at a
 * time through the writer and the reader.
 *
 * The test carries its own table of the wire keys (the ones
 * docs/segment-format.md documents) and its own msgpack encoder built on
 * msgpack-c, so a change to a key in usage_event.c fails here. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <msgpack.h>
#include <zstd.h>

#include "meter/meter.h"

#define T0 1767225600000 /* 2026-01-01T00:00:00Z */

/* --- helpers ------------------------------------------------------------- */

/* A distinct, valid event for each @i, every field set. */
static void make_event(uint64_t i, struct kp_usage_event *ev)
{
    static const char *const classes[] = {"", "rate_limit", "server", "timeout"};
    kp_usage_event_init(ev);
    ev->time_ms = T0 + (int64_t)(i * 7 % 1000) + (int64_t)i;
    snprintf(ev->request_id, sizeof(ev->request_id), "req-%06llu", (unsigned long long)i);
    snprintf(ev->node, sizeof(ev->node), "node-%llu", (unsigned long long)(i % 2));
    snprintf(ev->key_id, sizeof(ev->key_id), "key-%llu", (unsigned long long)(i % 5));
    snprintf(ev->pool, sizeof(ev->pool), "pool-%llu", (unsigned long long)(i % 2));
    snprintf(ev->tenant, sizeof(ev->tenant), "tenant-%llu", (unsigned long long)(i % 3));
    snprintf(ev->project, sizeof(ev->project), "prj-%llu", (unsigned long long)(i % 4));
    snprintf(ev->feature, sizeof(ev->feature), "feat-%llu", (unsigned long long)(i % 6));
    kp_usage_set_str(ev->provider, i % 2 ? "openai" : "anthropic");
    kp_usage_set_str(ev->model_requested, i % 2 ? "gpt-4o" : "claude-sonnet-4");
    kp_usage_set_str(ev->model_served, i % 9 ? ev->model_requested : "gpt-4o-mini");
    ev->tokens_in = 100 + i;
    ev->tokens_out = 3 * i;
    ev->tokens_cached = i / 2;
    ev->tokens_estimated = i % 5 == 0;
    ev->cost = (kp_nanousd)i * 1000 - 5000;
    ev->ttfb_us = 1000 * i;
    ev->total_us = 2000 * i + 17;
    kp_usage_set_str(ev->error_class, classes[i % 4]);
    ev->status = i % 4 ? 429 + (uint16_t)(i % 4) : 200;
    ev->retries = (uint32_t)(i % 3);
    ev->streamed = i % 2;
    kp_usage_set_str(ev->kind, i % 10 == 3 ? KP_USAGE_KIND_CANARY : KP_USAGE_KIND_APP);
}

/* Every string field, for X-macros. clang-format 14 does not settle on a
 * layout for this list (each run changes it), hence the guards. */
// clang-format off
#define STR_FIELDS(X) \
    X(request_id) X(node) X(key_id) X(pool) X(tenant) X(project) X(feature) X(provider) \
    X(model_requested) X(model_served) X(error_class) X(kind)
// clang-format on

static void assert_event_equal(const struct kp_usage_event *a, const struct kp_usage_event *b)
{
#define CMP_STR(f) assert_string_equal(a->f, b->f);
    STR_FIELDS(CMP_STR)
#undef CMP_STR
    assert_string_equal(a->trace_id, b->trace_id);
    assert_true(a->time_ms == b->time_ms);
    assert_true(a->tokens_in == b->tokens_in);
    assert_true(a->tokens_out == b->tokens_out);
    assert_true(a->tokens_cached == b->tokens_cached);
    assert_true(a->tokens_estimated == b->tokens_estimated);
    assert_true(a->cost == b->cost);
    assert_true(a->ttfb_us == b->ttfb_us);
    assert_true(a->total_us == b->total_us);
    assert_int_equal(a->status, b->status);
    assert_int_equal(a->retries, b->retries);
    assert_true(a->streamed == b->streamed);
}

static void assert_contains(const char *haystack, const char *needle)
{
    if (strstr(haystack, needle) == NULL)
        fail_msg("'%s' does not contain '%s'", haystack, needle);
}

/* A segment of @n events from make_event(), a frame every @per_frame events
 * (flushed by hand), sealed or not. Frame ends go to @ends (may be NULL). */
static void build_segment(uint64_t n, uint64_t per_frame, bool seal, struct kp_buf *out,
                          size_t *ends)
{
    struct kp_segment_writer w;
    struct kp_segment_writer_options o = {.node = "n1", .seq = 42, .created_ms = T0};
    struct kp_usage_event ev;
    size_t nframes = 0;
    assert_int_equal(kp_segment_writer_init(&w, &o), KP_OK);
    for (uint64_t i = 0; i < n; i++) {
        make_event(i, &ev);
        assert_int_equal(kp_segment_writer_add(&w, &ev), KP_OK);
        if ((i + 1) % per_frame == 0 || i + 1 == n) {
            assert_int_equal(kp_segment_writer_flush(&w), KP_OK);
            if (ends != NULL)
                ends[nframes++] = w.out.len;
        }
    }
    if (seal)
        assert_int_equal(kp_segment_writer_seal(&w), KP_OK);
    kp_buf_init(out);
    assert_int_equal(kp_buf_append(out, w.out.data, w.out.len), 0);
    kp_segment_writer_close(&w);
}

/* Read every event of @buf, checking each against make_event(). Returns how
 * many were read; *err gets the reader's final error. */
static uint64_t read_all(const void *buf, size_t len, int *err)
{
    struct kp_segment_reader r;
    struct kp_usage_event ev, want;
    uint64_t n = 0;
    if (kp_segment_reader_init(&r, buf, len) == KP_OK) {
        while (kp_segment_reader_next(&r, &ev)) {
            make_event(n++, &want);
            assert_event_equal(&ev, &want);
        }
        assert_true(n == r.events);
    }
    *err = r.err;
    kp_segment_reader_close(&r);
    return n;
}

/* --- CRC-32C ------------------------------------------------------------- */

/* The checksum is CRC-32C: the standard check value, and chaining pieces
 * gives the same result as one pass. */
static void test_crc32c(void **state)
{
    (void)state;
    assert_int_equal(kp_segment_crc32c(0, "123456789", 9), 0xe3069283u);
    assert_int_equal(kp_segment_crc32c(0, "", 0), 0);
    uint32_t c = kp_segment_crc32c(0, "1234", 4);
    assert_int_equal(kp_segment_crc32c(c, "56789", 5), 0xe3069283u);
}

/* --- events -------------------------------------------------------------- */

/* Every field survives encode/decode, at the edges of its range: longest
 * multi-byte UTF-8 strings, negative time and cost, the largest counts. */
static void test_event_round_trip(void **state)
{
    struct kp_usage_event ev, got;
    struct kp_buf buf;
    char long_str[KP_USAGE_STR_MAX + 1];
    char err[256];
    size_t used;
    (void)state;
    /* 85 three-byte characters and one ASCII byte: exactly 256 bytes. */
    for (int i = 0; i < 85; i++)
        memcpy(long_str + 3 * i, "\xe2\x82\xac", 3);
    long_str[255] = 'x';
    long_str[256] = '\0';
    make_event(7, &ev);
    ev.time_ms = -12345;
    ev.cost = INT64_MIN;
    ev.tokens_in = INT64_MAX;
    ev.tokens_out = 0;
    ev.tokens_cached = 1ull << 40;
    ev.ttfb_us = INT64_MAX;
    ev.status = 999;
    ev.retries = UINT32_MAX;
    ev.tokens_estimated = true;
    ev.streamed = true;
    assert_int_equal(kp_usage_set_str(ev.tenant, long_str), KP_OK);
    assert_int_equal(kp_usage_set_str(ev.model_served, "模型-🚀"), KP_OK);
    kp_buf_init(&buf);
    assert_int_equal(kp_usage_event_encode(&ev, &buf, err, sizeof(err)), KP_OK);
    assert_true(buf.len <= KP_USAGE_ENCODED_MAX);
    assert_int_equal(kp_usage_event_decode(buf.data, buf.len, &got, &used, err, sizeof(err)),
                     KP_OK);
    assert_int_equal(used, buf.len);
    assert_event_equal(&got, &ev);
    kp_buf_free(&buf);
}

/* The largest possible event fits KP_USAGE_ENCODED_MAX. */
static void test_event_max_size(void **state)
{
    struct kp_usage_event ev;
    struct kp_buf buf;
    char err[256];
    (void)state;
    make_event(1, &ev);
#define FILL(f) memset(ev.f, 'a', KP_USAGE_STR_MAX), ev.f[KP_USAGE_STR_MAX] = '\0';
    STR_FIELDS(FILL)
#undef FILL
    memset(ev.trace_id, 'f', KP_USAGE_TRACE_ID_LEN);
    ev.time_ms = INT64_MIN;
    ev.tokens_in = ev.tokens_out = ev.tokens_cached = ev.ttfb_us = ev.total_us = INT64_MAX;
    kp_buf_init(&buf);
    assert_int_equal(kp_usage_event_encode(&ev, &buf, err, sizeof(err)), KP_OK);
    assert_true(buf.len <= KP_USAGE_ENCODED_MAX);
    kp_buf_free(&buf);
}

/* The encoding is plain msgpack that msgpack-c reads: a map of the 23
 * documented short keys. */
static void test_event_is_msgpack(void **state)
{
    static const char *const keys[] = {"t",  "r",  "n",  "k",  "p",  "tn", "pj", "f",
                                       "pv", "mq", "ms", "ti", "to", "tc", "te", "c",
                                       "fb", "tt", "s",  "e",  "rt", "sm", "kd"};
    struct kp_usage_event ev;
    struct kp_buf buf;
    msgpack_unpacked up;
    size_t off = 0;
    (void)state;
    make_event(3, &ev);
    kp_buf_init(&buf);
    assert_int_equal(kp_usage_event_encode(&ev, &buf, NULL, 0), KP_OK);
    msgpack_unpacked_init(&up);
    assert_int_equal(msgpack_unpack_next(&up, buf.data, buf.len, &off), MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(off, buf.len);
    assert_int_equal(up.data.type, MSGPACK_OBJECT_MAP);
    assert_int_equal(up.data.via.map.size, sizeof(keys) / sizeof(keys[0]));
    for (size_t i = 0; i < up.data.via.map.size; i++) {
        const msgpack_object_kv *kv = &up.data.via.map.ptr[i];
        assert_int_equal(kv->key.type, MSGPACK_OBJECT_STR);
        assert_int_equal(kv->key.via.str.size, strlen(keys[i]));
        assert_memory_equal(kv->key.via.str.ptr, keys[i], kv->key.via.str.size);
        if (strcmp(keys[i], "tn") == 0) {
            assert_int_equal(kv->val.type, MSGPACK_OBJECT_STR);
            assert_memory_equal(kv->val.via.str.ptr, "tenant-0", 8);
        }
    }
    msgpack_unpacked_destroy(&up);
    kp_buf_free(&buf);
}

/* kp_usage_event_to_json names fields as the struct does, plus "time". */
static void test_event_to_json(void **state)
{
    struct kp_usage_event ev;
    (void)state;
    make_event(10, &ev);
    json_t *j = kp_usage_event_to_json(&ev);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "time")), "2026-01-01T00:00:00.080Z");
    assert_string_equal(json_string_value(json_object_get(j, "tenant")), "tenant-1");
    assert_int_equal(json_integer_value(json_object_get(j, "cost")), 5000);
    assert_true(json_is_true(json_object_get(j, "tokens_estimated")));
    assert_string_equal(json_string_value(json_object_get(j, "kind")), "app");
    assert_string_equal(json_string_value(json_object_get(j, "trace_id")), "");
    assert_int_equal(json_object_size(j), 25);
    json_decref(j);
}

/* The trace id (key "tr", added after version 1 as an optional field) is
 * written only when set and read back; events without it, as every
 * earlier writer made them, still decode; a bad one is refused both ways. */
static void test_event_trace_id(void **state)
{
    static const char tid[] = "4bf92f3577b34da6a3ce929d0e0e4736";
    struct kp_usage_event ev, got;
    struct kp_buf buf;
    char err[256];
    size_t used;
    msgpack_unpacked up;
    size_t off = 0;
    (void)state;
    make_event(4, &ev);
    kp_buf_init(&buf);
    assert_int_equal(kp_usage_event_encode(&ev, &buf, err, sizeof(err)), KP_OK);
    assert_null(memmem(buf.data, buf.len, "\xa2tr", 3));
    assert_int_equal(kp_usage_event_decode(buf.data, buf.len, &got, &used, err, sizeof(err)),
                     KP_OK);
    assert_string_equal(got.trace_id, "");
    buf.len = 0;
    memcpy(ev.trace_id, tid, sizeof(tid));
    assert_int_equal(kp_usage_event_encode(&ev, &buf, err, sizeof(err)), KP_OK);
    msgpack_unpacked_init(&up);
    assert_int_equal(msgpack_unpack_next(&up, buf.data, buf.len, &off), MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(up.data.via.map.size, 24);
    msgpack_unpacked_destroy(&up);
    assert_int_equal(kp_usage_event_decode(buf.data, buf.len, &got, &used, err, sizeof(err)),
                     KP_OK);
    assert_event_equal(&got, &ev);
    /* Upper case, short: refused by the checker and by the decoder. */
    ev.trace_id[0] = 'A';
    assert_int_equal(kp_usage_event_check(&ev, err, sizeof(err)), KP_EINVAL);
    assert_contains(err, "'tr' (trace_id)");
    char *at = memmem(buf.data, buf.len, tid, 32);
    assert_non_null(at);
    at[5] = 'G';
    assert_int_equal(kp_usage_event_decode(buf.data, buf.len, &got, &used, err, sizeof(err)),
                     KP_EPARSE);
    assert_contains(err, "'tr' (trace_id)");
    kp_buf_free(&buf);
}

/* The checker refuses what the decoder would refuse, naming the field. */
static void test_event_check(void **state)
{
    struct kp_usage_event ev;
    struct kp_buf buf;
    char err[256];
    (void)state;
    kp_buf_init(&buf);
    make_event(1, &ev);
    memset(ev.project, 'x', sizeof(ev.project)); /* no terminating NUL */
    assert_int_equal(kp_usage_event_encode(&ev, &buf, err, sizeof(err)), KP_EINVAL);
    assert_contains(err, "'pj' (project)");
    assert_int_equal(buf.len, 0);
    /* Behind a good event, a bad one (its last field bad) adds nothing. */
    make_event(1, &ev);
    assert_int_equal(kp_usage_event_encode(&ev, &buf, err, sizeof(err)), KP_OK);
    size_t good = buf.len;
    char *copy = kp_malloc(good);
    assert_non_null(copy);
    memcpy(copy, buf.data, good);
    memcpy(ev.trace_id, "XYZ", 4);
    assert_int_equal(kp_usage_event_encode(&ev, &buf, err, sizeof(err)), KP_EINVAL);
    assert_contains(err, "'tr' (trace_id)");
    assert_int_equal(buf.len, good);
    assert_memory_equal(buf.data, copy, good);
    kp_free(copy);
    make_event(1, &ev);
    ev.request_id[0] = '\0';
    assert_int_equal(kp_usage_event_check(&ev, err, sizeof(err)), KP_EINVAL);
    assert_contains(err, "'r' (request_id): must not be empty");
    make_event(1, &ev);
    kp_usage_set_str(ev.feature, "bad \xc3\x28 utf8");
    assert_int_equal(kp_usage_event_check(&ev, err, sizeof(err)), KP_EINVAL);
    assert_contains(err, "'f' (feature): not valid UTF-8");
    make_event(1, &ev);
    ev.status = 1000;
    assert_int_equal(kp_usage_event_check(&ev, err, sizeof(err)), KP_EINVAL);
    assert_contains(err, "'s' (status)");
    make_event(1, &ev);
    ev.tokens_out = (uint64_t)INT64_MAX + 1;
    assert_int_equal(kp_usage_event_check(&ev, err, sizeof(err)), KP_EINVAL);
    assert_contains(err, "'to' (tokens_out)");
    char big[KP_USAGE_STR_MAX + 2];
    memset(big, 'y', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(kp_usage_set_str(ev.pool, big), KP_ETOOBIG);
    assert_string_equal(ev.pool, "");
    kp_buf_free(&buf);
}

/* --- strict decoding: a test-side encoder with mutations ------------------ */

enum ftype { T_STR, T_I64, T_U64, T_U32, T_U16, T_BOOL };

static const struct {
    const char *key;
    enum ftype type;
    size_t off;
} wire[] = {
#define W(k, m, t)                                                                                 \
    {                                                                                              \
        k, t, offsetof(struct kp_usage_event, m)                                                   \
    }
    W("t", time_ms, T_I64),
    W("r", request_id, T_STR),
    W("n", node, T_STR),
    W("k", key_id, T_STR),
    W("p", pool, T_STR),
    W("tn", tenant, T_STR),
    W("pj", project, T_STR),
    W("f", feature, T_STR),
    W("pv", provider, T_STR),
    W("mq", model_requested, T_STR),
    W("ms", model_served, T_STR),
    W("ti", tokens_in, T_U64),
    W("to", tokens_out, T_U64),
    W("tc", tokens_cached, T_U64),
    W("te", tokens_estimated, T_BOOL),
    W("c", cost, T_I64),
    W("fb", ttfb_us, T_U64),
    W("tt", total_us, T_U64),
    W("s", status, T_U16),
    W("e", error_class, T_STR),
    W("rt", retries, T_U32),
    W("sm", streamed, T_BOOL),
    W("kd", kind, T_STR),
#undef W
};
#define NWIRE (sizeof(wire) / sizeof(wire[0]))

enum op { OP_NONE, OP_DROP, OP_REPLACE, OP_DUP };

struct mutation {
    const char *key;
    enum op op;
    void (*value)(msgpack_packer *pk); /* OP_REPLACE */
    void (*extra)(msgpack_packer *pk); /* packs one unknown key and value first */
};

static void pack_cstr(msgpack_packer *pk, const char *s, size_t n)
{
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

static void pack_wire_value(msgpack_packer *pk, size_t i, const struct kp_usage_event *ev)
{
    const void *p = (const char *)ev + wire[i].off;
    switch (wire[i].type) {
    case T_STR:
        pack_cstr(pk, p, strlen(p));
        break;
    case T_I64:
        msgpack_pack_int64(pk, *(const int64_t *)p);
        break;
    case T_U64:
        msgpack_pack_uint64(pk, *(const uint64_t *)p);
        break;
    case T_U32:
        msgpack_pack_uint32(pk, *(const uint32_t *)p);
        break;
    case T_U16:
        msgpack_pack_uint16(pk, *(const uint16_t *)p);
        break;
    case T_BOOL:
        (*(const bool *)p ? msgpack_pack_true : msgpack_pack_false)(pk);
        break;
    }
}

static void pack_mutated(msgpack_sbuffer *sb, const struct kp_usage_event *ev,
                         const struct mutation *m)
{
    msgpack_packer pk;
    size_t n = NWIRE + (m->op == OP_DUP) - (m->op == OP_DROP) + (m->extra != NULL);
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, n);
    if (m->extra)
        m->extra(&pk);
    for (size_t i = 0; i < NWIRE; i++) {
        bool hit = m->key != NULL && strcmp(m->key, wire[i].key) == 0;
        if (hit && m->op == OP_DROP)
            continue;
        pack_cstr(&pk, wire[i].key, strlen(wire[i].key));
        if (hit && m->op == OP_REPLACE)
            m->value(&pk);
        else
            pack_wire_value(&pk, i, ev);
        if (hit && m->op == OP_DUP) {
            pack_cstr(&pk, wire[i].key, strlen(wire[i].key));
            pack_wire_value(&pk, i, ev);
        }
    }
}

/* kp_usage_event_encode writes what msgpack-c's packer writes, byte for
 * byte: every integer at the edges of msgpack's forms, strings of every
 * head size, the optional trace id present and absent. */
static void test_event_bytes_are_msgpack_c_s(void **state)
{
    static const int64_t ints[] = {INT64_MIN, -2147483649LL, INT32_MIN,  -32769,       INT16_MIN,
                                   -129,      INT8_MIN,      -33,        -32,          -1,
                                   0,         127,           128,        255,          256,
                                   65535,     65536,         UINT32_MAX, 4294967296LL, INT64_MAX};
    static const size_t lens[] = {1, 31, 32, 255, 256};
    static const uint32_t u32s[] = {0, 127, 128, 255, 256, 65535, 65536, UINT32_MAX};
    static const uint16_t statuses[] = {0, 127, 128, 255, 256, 999};
    (void)state;
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) {
        struct kp_usage_event ev;
        make_event(i, &ev);
        ev.time_ms = ints[i];
        ev.cost = ints[sizeof(ints) / sizeof(ints[0]) - 1 - i];
        uint64_t u = ints[i] < 0 ? (uint64_t)(-(ints[i] + 1)) : (uint64_t)ints[i];
        ev.tokens_in = u;
        ev.tokens_out = u / 3;
        ev.tokens_cached = u > 0 ? u - 1 : 0;
        ev.ttfb_us = u >> 7;
        ev.total_us = u >> 15;
        ev.retries = u32s[i % (sizeof(u32s) / sizeof(u32s[0]))];
        ev.status = statuses[i % (sizeof(statuses) / sizeof(statuses[0]))];
        size_t len = lens[i % (sizeof(lens) / sizeof(lens[0]))];
        memset(ev.model_served, 'm', len);
        ev.model_served[len] = '\0';
        ev.feature[0] = '\0';
        if (i % 2)
            memset(ev.trace_id, 'a' + (char)(i % 6), KP_USAGE_TRACE_ID_LEN);
        msgpack_sbuffer sb;
        msgpack_packer pk;
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, NWIRE + (ev.trace_id[0] != '\0'));
        for (size_t k = 0; k < NWIRE; k++) {
            pack_cstr(&pk, wire[k].key, strlen(wire[k].key));
            pack_wire_value(&pk, k, &ev);
        }
        if (ev.trace_id[0] != '\0') {
            pack_cstr(&pk, "tr", 2);
            pack_cstr(&pk, ev.trace_id, strlen(ev.trace_id));
        }
        struct kp_buf buf;
        kp_buf_init(&buf);
        assert_int_equal(kp_usage_event_encode(&ev, &buf, NULL, 0), KP_OK);
        assert_int_equal(buf.len, sb.size);
        assert_memory_equal(buf.data, sb.data, sb.size);
        kp_buf_free(&buf);
        msgpack_sbuffer_destroy(&sb);
    }
}

static void v_int5(msgpack_packer *pk)
{
    msgpack_pack_int(pk, 5);
}
static void v_neg1(msgpack_packer *pk)
{
    msgpack_pack_int(pk, -1);
}
static void v_str(msgpack_packer *pk)
{
    pack_cstr(pk, "12", 2);
}
static void v_true(msgpack_packer *pk)
{
    msgpack_pack_true(pk);
}
static void v_1000(msgpack_packer *pk)
{
    msgpack_pack_uint16(pk, 1000);
}
static void v_u32_over(msgpack_packer *pk)
{
    msgpack_pack_uint64(pk, (uint64_t)UINT32_MAX + 1);
}
static void v_u64_max(msgpack_packer *pk)
{
    msgpack_pack_uint64(pk, UINT64_MAX);
}
static void v_empty(msgpack_packer *pk)
{
    pack_cstr(pk, "", 0);
}
static void v_str257(msgpack_packer *pk)
{
    char s[257];
    memset(s, 'z', sizeof(s));
    pack_cstr(pk, s, sizeof(s));
}
static void v_bad_utf8(msgpack_packer *pk)
{
    pack_cstr(pk, "a\xff", 2);
}
static void v_nul(msgpack_packer *pk)
{
    pack_cstr(pk, "a\0b", 3);
}
static void v_float(msgpack_packer *pk)
{
    msgpack_pack_double(pk, 1.5);
}
static void v_nil(msgpack_packer *pk)
{
    msgpack_pack_nil(pk);
}
static void v_surrogate(msgpack_packer *pk)
{
    pack_cstr(pk, "\xed\xa0\x80", 3); /* U+D800 */
}

/* An unknown key whose value nests every msgpack type. */
static void x_nested(msgpack_packer *pk)
{
    pack_cstr(pk, "zz_future", 9);
    msgpack_pack_map(pk, 2);
    pack_cstr(pk, "a", 1);
    msgpack_pack_array(pk, 6);
    msgpack_pack_nil(pk);
    msgpack_pack_double(pk, 2.5);
    msgpack_pack_float(pk, 1.5f);
    msgpack_pack_bin(pk, 3);
    msgpack_pack_bin_body(pk, "\x00\x01\x02", 3);
    msgpack_pack_ext(pk, 4, 7);
    msgpack_pack_ext_body(pk, "abcd", 4);
    msgpack_pack_int64(pk, INT64_MIN);
    msgpack_pack_int(pk, 9);
    msgpack_pack_array(pk, 1);
    msgpack_pack_map(pk, 0);
}

/* An integer key, which the format does not allow. */
static void x_int_key(msgpack_packer *pk)
{
    msgpack_pack_int(pk, 1);
    msgpack_pack_int(pk, 2);
}

static void expect_decode_error(const struct mutation *m, const char *needle)
{
    struct kp_usage_event ev;
    msgpack_sbuffer sb;
    char err[256] = "";
    size_t used = 0;
    make_event(4, &ev);
    pack_mutated(&sb, &ev, m);
    int rc = kp_usage_event_decode(sb.data, sb.size, &ev, &used, err, sizeof(err));
    if (rc != KP_EPARSE)
        fail_msg("key %s: expected KP_EPARSE, got %d ('%s')", m->key ? m->key : "-", rc, err);
    assert_contains(err, needle);
    assert_true(used <= sb.size);
    msgpack_sbuffer_destroy(&sb);
}

/* Wrong types, out-of-range values, bad strings, duplicates and missing
 * fields each fail with a message naming the field. */
static void test_event_decode_errors(void **state)
{
    (void)state;
    static const struct {
        struct mutation m;
        const char *needle;
    } cases[] = {
        {{"tn", OP_REPLACE, v_int5, NULL}, "'tn' (tenant): expected a string, found an integer"},
        {{"ti", OP_REPLACE, v_neg1, NULL}, "'ti' (tokens_in): -1 is negative"},
        {{"ti", OP_REPLACE, v_str, NULL}, "'ti' (tokens_in): expected an integer, found a string"},
        {{"te", OP_REPLACE, v_int5, NULL}, "'te' (tokens_estimated): expected a boolean"},
        {{"sm", OP_REPLACE, v_nil, NULL}, "'sm' (streamed): expected a boolean, found nil"},
        {{"s", OP_REPLACE, v_1000, NULL}, "'s' (status): 1000 is out of range"},
        {{"rt", OP_REPLACE, v_u32_over, NULL}, "'rt' (retries): 4294967296 is out of range"},
        {{"t", OP_REPLACE, v_u64_max, NULL}, "'t' (time_ms): 18446744073709551615 is out of"},
        {{"fb", OP_REPLACE, v_u64_max, NULL}, "'fb' (ttfb_us)"},
        {{"c", OP_REPLACE, v_float, NULL}, "'c' (cost): expected an integer, found a float"},
        {{"r", OP_REPLACE, v_empty, NULL}, "'r' (request_id): must not be empty"},
        {{"kd", OP_REPLACE, v_empty, NULL}, "'kd' (kind): must not be empty"},
        {{"tn", OP_REPLACE, v_str257, NULL}, "'tn' (tenant): string of 257 bytes exceeds"},
        {{"mq", OP_REPLACE, v_bad_utf8, NULL}, "'mq' (model_requested): not valid UTF-8"},
        {{"e", OP_REPLACE, v_nul, NULL}, "'e' (error_class): not valid UTF-8 (or contains a NUL"},
        {{"pv", OP_REPLACE, v_surrogate, NULL}, "'pv' (provider): not valid UTF-8"},
        {{"k", OP_REPLACE, v_true, NULL}, "'k' (key_id): expected a string, found a boolean"},
        {{"ms", OP_DROP, NULL, NULL}, "field 'ms' (model_served): missing"},
        {{"t", OP_DROP, NULL, NULL}, "field 't' (time_ms): missing"},
        {{"tn", OP_DUP, NULL, NULL}, "field 'tn' (tenant): appears twice"},
        {{NULL, OP_NONE, NULL, x_int_key}, "expected a string key, found an integer"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        expect_decode_error(&cases[i].m, cases[i].needle);
}

/* The error offset points at the offending value. */
static void test_event_decode_error_offset(void **state)
{
    struct mutation m = {"tn", OP_REPLACE, v_str257, NULL};
    struct kp_usage_event ev;
    msgpack_sbuffer sb;
    char err[256];
    size_t used;
    (void)state;
    make_event(4, &ev);
    pack_mutated(&sb, &ev, &m);
    assert_int_equal(kp_usage_event_decode(sb.data, sb.size, &ev, &used, err, sizeof(err)),
                     KP_EPARSE);
    /* str16 header of a 257-byte string, right after the key "tn". */
    assert_int_equal((uint8_t)sb.data[used], 0xda);
    assert_int_equal((uint8_t)sb.data[used + 1], 0x01);
    assert_int_equal((uint8_t)sb.data[used + 2], 0x01);
    assert_memory_equal(sb.data + used - 2, "tn", 2);
    msgpack_sbuffer_destroy(&sb);
}

/* Unknown keys are skipped, whatever they hold, and the event decodes. */
static void test_event_unknown_keys_skipped(void **state)
{
    struct mutation m = {NULL, OP_NONE, NULL, x_nested};
    struct kp_usage_event ev, got;
    msgpack_sbuffer sb;
    char err[256];
    size_t used;
    (void)state;
    make_event(5, &ev);
    pack_mutated(&sb, &ev, &m);
    assert_int_equal(kp_usage_event_decode(sb.data, sb.size, &got, &used, err, sizeof(err)), KP_OK);
    assert_int_equal(used, sb.size);
    assert_event_equal(&got, &ev);
    msgpack_sbuffer_destroy(&sb);
}

/* Malformed msgpack: not a map, the unused type byte, huge claimed counts,
 * and every truncation of a valid event all fail cleanly. */
static void test_event_decode_malformed(void **state)
{
    static const struct {
        const char *bytes;
        size_t len;
        const char *needle;
    } cases[] = {
        {"\x93\x01\x02\x03", 4, "expected a map, found an array"},
        {"\xc1", 1, "input ends before the event (or bad type byte)"},
        {"", 0, "input ends before the event"},
        {"\xdf\xff\xff\xff\xff", 5, "input ends inside a key"},
        /* An unknown key claiming a 4-billion-element array. */
        {"\x81\xa2zz\xdd\xff\xff\xff\xff\x01", 10, "unknown key"},
        {"\x81\xa2zz\xc1", 5, "unknown key"},
        {"\x81\xa2zz\xdb\xff\xff\xff\xff", 9, "unknown key"},
    };
    struct kp_usage_event ev;
    char err[256];
    size_t used;
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_int_equal(
            kp_usage_event_decode(cases[i].bytes, cases[i].len, &ev, &used, err, sizeof(err)),
            KP_EPARSE);
        assert_contains(err, cases[i].needle);
    }
    struct kp_buf buf;
    kp_buf_init(&buf);
    make_event(6, &ev);
    assert_int_equal(kp_usage_event_encode(&ev, &buf, NULL, 0), KP_OK);
    for (size_t n = 0; n < buf.len; n++) {
        /* A copy of exactly n bytes, so ASan sees any read past it. */
        char *cut = malloc(n ? n : 1);
        memcpy(cut, buf.data, n);
        assert_int_equal(kp_usage_event_decode(cut, n, &ev, &used, err, sizeof(err)), KP_EPARSE);
        assert_true(used <= n);
        free(cut);
    }
    kp_buf_free(&buf);
}

/* --- writer and reader --------------------------------------------------- */

/* Thousands of events over many frames come back in order, unchanged; the
 * reader's and the writer's totals agree, and the segment validates. */
static void test_segment_round_trip(void **state)
{
    struct kp_segment_writer w;
    struct kp_segment_writer_options o = {
        .node = "node-a", .seq = 9, .created_ms = T0, .frame_bytes = 8192};
    struct kp_usage_event ev;
    struct kp_segment_summary s;
    const uint64_t n = 5000;
    int err;
    (void)state;
    assert_int_equal(kp_segment_writer_init(&w, &o), KP_OK);
    for (uint64_t i = 0; i < n; i++) {
        make_event(i, &ev);
        assert_int_equal(kp_segment_writer_add(&w, &ev), KP_OK);
    }
    assert_int_equal(kp_segment_writer_seal(&w), KP_OK);
    assert_true(w.frames > 10);
    assert_true(w.events == n);
    assert_int_equal(read_all(w.out.data, w.out.len, &err), n);
    assert_int_equal(err, KP_OK);
    assert_int_equal(kp_segment_validate(w.out.data, w.out.len, &s), KP_OK);
    assert_true(s.sealed);
    assert_true(s.frames == w.frames);
    assert_true(s.events == n);
    assert_true(s.min_time_ms == w.min_time_ms && s.max_time_ms == w.max_time_ms);
    assert_int_equal(s.valid_len, w.out.len);
    assert_string_equal(s.header.node, "node-a");
    assert_true(s.header.seq == 9 && s.header.created_ms == T0);
    assert_int_equal(s.header.flags, KP_SEGMENT_FLAG_SEALED);
    kp_segment_writer_close(&w);
}

/* Writing the bytes out as they come (consume) and patching the header at
 * seal, as the spool will, gives the same file as building it in memory. */
static void test_segment_streaming_writes(void **state)
{
    struct kp_segment_writer a, b;
    struct kp_segment_writer_options o = {
        .node = "n", .seq = 1, .created_ms = T0, .frame_bytes = 1000};
    struct kp_usage_event ev;
    struct kp_buf file;
    (void)state;
    kp_buf_init(&file);
    assert_int_equal(kp_segment_writer_init(&a, &o), KP_OK);
    assert_int_equal(kp_segment_writer_init(&b, &o), KP_OK);
    for (uint64_t i = 0; i < 200; i++) {
        make_event(i, &ev);
        assert_int_equal(kp_segment_writer_add(&a, &ev), KP_OK);
        assert_int_equal(kp_segment_writer_add(&b, &ev), KP_OK);
        if (i % 17 == 0) {
            assert_int_equal(kp_segment_writer_flush(&b), KP_OK);
            assert_true(b.out_offset == file.len);
            assert_int_equal(kp_buf_append(&file, b.out.data, b.out.len), 0);
            kp_segment_writer_consume(&b, b.out.len);
        }
    }
    assert_int_equal(kp_segment_writer_seal(&b), KP_OK);
    assert_int_equal(kp_buf_append(&file, b.out.data, b.out.len), 0);
    /* Not yet sealed on disk: the header still says open. */
    struct kp_segment_summary s;
    assert_int_equal(kp_segment_scan(file.data, file.len, &s), KP_EPARSE);
    assert_contains(s.errmsg, "not marked sealed");
    memcpy(file.data, b.sealed_header, KP_SEGMENT_HEADER_SIZE);
    assert_int_equal(kp_segment_validate(file.data, file.len, &s), KP_OK);
    assert_true(s.events == 200);
    /* Frames differ (flushed at other points), the events do not. */
    assert_int_equal(kp_segment_writer_seal(&a), KP_OK);
    int err;
    assert_int_equal(read_all(file.data, file.len, &err), 200);
    assert_int_equal(read_all(a.out.data, a.out.len, &err), 200);
    kp_segment_writer_close(&a);
    kp_segment_writer_close(&b);
    kp_buf_free(&file);
}

/* Open segments scan but do not validate; an empty sealed one validates;
 * nothing can be added after sealing. */
static void test_segment_open_and_empty(void **state)
{
    struct kp_segment_writer w;
    struct kp_segment_writer_options o = {.node = "n", .seq = 2};
    struct kp_segment_summary s;
    struct kp_usage_event ev;
    struct kp_buf buf;
    (void)state;
    build_segment(10, 4, false, &buf, NULL);
    assert_int_equal(kp_segment_scan(buf.data, buf.len, &s), KP_OK);
    assert_false(s.sealed);
    assert_true(s.frames == 3 && s.events == 10);
    assert_int_equal(kp_segment_validate(buf.data, buf.len, &s), KP_EPARSE);
    assert_contains(s.errmsg, "not sealed");
    assert_int_equal(s.err_offset, buf.len);
    kp_buf_free(&buf);

    assert_int_equal(kp_segment_writer_init(&w, &o), KP_OK);
    assert_int_equal(kp_segment_writer_flush(&w), KP_OK); /* nothing pending: no frame */
    assert_int_equal(kp_segment_writer_seal(&w), KP_OK);
    assert_int_equal(w.out.len, KP_SEGMENT_HEADER_SIZE + KP_SEGMENT_FOOTER_SIZE);
    assert_int_equal(kp_segment_validate(w.out.data, w.out.len, &s), KP_OK);
    assert_true(s.sealed && s.frames == 0 && s.events == 0);
    make_event(0, &ev);
    assert_int_equal(kp_segment_writer_add(&w, &ev), KP_EINVAL);
    assert_int_equal(kp_segment_writer_seal(&w), KP_EINVAL);
    kp_segment_writer_close(&w);
}

/* Bad writer options and bad events are refused, saying why, and a refused
 * event leaves the segment as it was. */
static void test_writer_refusals(void **state)
{
    struct kp_segment_writer w;
    struct kp_segment_writer_options o = {.node = ""};
    struct kp_usage_event ev;
    struct kp_segment_summary s;
    char node64[65];
    (void)state;
    assert_int_equal(kp_segment_writer_init(&w, &o), KP_EINVAL);
    assert_contains(w.errmsg, "node");
    kp_segment_writer_close(&w);
    memset(node64, 'n', 64);
    node64[64] = '\0';
    o.node = node64;
    assert_int_equal(kp_segment_writer_init(&w, &o), KP_EINVAL);
    kp_segment_writer_close(&w);
    o.node = "ok";
    o.frame_bytes = KP_SEGMENT_FRAME_MAX_RAW;
    assert_int_equal(kp_segment_writer_init(&w, &o), KP_EINVAL);
    assert_contains(w.errmsg, "frame_bytes");
    kp_segment_writer_close(&w);
    o.frame_bytes = 0;
    o.zstd_level = 1000;
    assert_int_equal(kp_segment_writer_init(&w, &o), KP_EINVAL);
    kp_segment_writer_close(&w);

    o.zstd_level = 0;
    assert_int_equal(kp_segment_writer_init(&w, &o), KP_OK);
    make_event(0, &ev);
    assert_int_equal(kp_segment_writer_add(&w, &ev), KP_OK);
    make_event(1, &ev);
    memset(ev.tenant, 't', sizeof(ev.tenant));
    assert_int_equal(kp_segment_writer_add(&w, &ev), KP_EINVAL);
    assert_contains(w.errmsg, "'tn' (tenant)");
    make_event(1, &ev);
    assert_int_equal(kp_segment_writer_add(&w, &ev), KP_OK);
    assert_int_equal(kp_segment_writer_seal(&w), KP_OK);
    int err;
    assert_int_equal(read_all(w.out.data, w.out.len, &err), 2);
    assert_int_equal(kp_segment_validate(w.out.data, w.out.len, &s), KP_OK);
    kp_segment_writer_close(&w);
}

/* --- torn tails and corruption ------------------------------------------- */

static size_t prefix_at(const size_t *ends, size_t nframes, size_t cut)
{
    size_t valid = KP_SEGMENT_HEADER_SIZE;
    for (size_t i = 0; i < nframes && ends[i] <= cut; i++)
        valid = ends[i];
    return valid;
}

/* Cut an open segment at every byte: the valid prefix ends at the last
 * whole frame, and the reader yields exactly that frame's events. */
static void test_torn_tail_open(void **state)
{
    struct kp_buf buf;
    size_t ends[8];
    const uint64_t n = 14, per = 3;
    (void)state;
    build_segment(n, per, false, &buf, ends);
    size_t nframes = (n + per - 1) / per;
    assert_int_equal(ends[nframes - 1], buf.len);
    for (size_t cut = 0; cut <= buf.len; cut++) {
        uint8_t *copy = malloc(cut ? cut : 1);
        memcpy(copy, buf.data, cut);
        size_t valid = 99;
        int rc = kp_segment_scan_valid_prefix(copy, cut, &valid);
        int err;
        uint64_t got = read_all(copy, cut, &err);
        if (cut < KP_SEGMENT_HEADER_SIZE) {
            assert_int_equal(rc, KP_EPARSE);
            assert_int_equal(valid, 0);
            assert_int_equal(got, 0);
        } else {
            size_t want = prefix_at(ends, nframes, cut);
            size_t whole = 0;
            while (whole < nframes && ends[whole] <= cut)
                whole++;
            assert_int_equal(rc, KP_OK);
            assert_int_equal(valid, want);
            assert_int_equal(got, whole * per > n ? n : whole * per);
            assert_int_equal(err, valid == cut ? KP_OK : KP_EPARSE);
        }
        free(copy);
    }
    kp_buf_free(&buf);
}

/* The same for a sealed segment: a cut anywhere short of the end leaves
 * the frames before it, and only the whole segment validates. */
static void test_torn_tail_sealed(void **state)
{
    struct kp_buf buf;
    size_t ends[8];
    const uint64_t n = 10, per = 4;
    struct kp_segment_summary s;
    (void)state;
    build_segment(n, per, true, &buf, ends);
    size_t nframes = 3;
    for (size_t cut = KP_SEGMENT_HEADER_SIZE; cut <= buf.len; cut++) {
        uint8_t *copy = malloc(cut);
        memcpy(copy, buf.data, cut);
        size_t valid;
        assert_int_equal(kp_segment_scan_valid_prefix(copy, cut, &valid), KP_OK);
        assert_int_equal(valid, cut == buf.len ? buf.len : prefix_at(ends, nframes, cut));
        assert_int_equal(kp_segment_validate(copy, cut, &s), cut == buf.len ? KP_OK : KP_EPARSE);
        free(copy);
    }
    kp_buf_free(&buf);
}

/* Flip every bit of a small sealed segment in turn: validation always
 * fails (every byte is under a checksum), and nothing crashes or leaks. */
static void test_bit_flips(void **state)
{
    struct kp_buf buf;
    struct kp_segment_summary s;
    (void)state;
    build_segment(7, 3, true, &buf, NULL);
    uint8_t *copy = malloc(buf.len);
    for (size_t i = 0; i < buf.len; i++) {
        for (int bit = 0; bit < 8; bit++) {
            memcpy(copy, buf.data, buf.len);
            copy[i] ^= (uint8_t)(1u << bit);
            int rc = kp_segment_validate(copy, buf.len, &s);
            if (rc == KP_OK)
                fail_msg("flip of bit %d at offset %zu went unnoticed", bit, i);
            assert_true(s.err_offset <= buf.len);
            assert_true(s.valid_len <= i); /* nothing at or after the flip counts */
            size_t valid;
            (void)kp_segment_scan_valid_prefix(copy, buf.len, &valid);
            assert_true(valid <= buf.len);
        }
    }
    free(copy);
    kp_buf_free(&buf);
}

/* --- crafted frames: refused claims -------------------------------------- */

/* An open segment header followed by one crafted frame. */
static void craft(struct kp_buf *out, uint32_t payload_len, uint32_t raw_len, uint32_t count,
                  const void *payload, size_t present)
{
    struct kp_segment_writer w;
    struct kp_segment_writer_options o = {.node = "n", .seq = 1};
    uint8_t fh[KP_SEGMENT_FRAME_HEADER_SIZE] = {'K', 'P', 'F', 'R'};
    assert_int_equal(kp_segment_writer_init(&w, &o), KP_OK);
    kp_buf_init(out);
    assert_int_equal(kp_buf_append(out, w.out.data, w.out.len), 0);
    kp_segment_writer_close(&w);
    kp_put_le(fh + 4, payload_len, 4);
    kp_put_le(fh + 8, raw_len, 4);
    kp_put_le(fh + 12, count, 4);
    kp_put_le(fh + 16, T0, 8);
    kp_put_le(fh + 24, T0, 8);
    kp_put_le(fh + 32, kp_segment_crc32c(0, payload, present), 4);
    kp_put_le(fh + 36, kp_segment_crc32c(0, fh, 36), 4);
    assert_int_equal(kp_buf_append(out, fh, sizeof(fh)), 0);
    assert_int_equal(kp_buf_append(out, payload, present), 0);
}

static void expect_frame_error(struct kp_buf *b, int want, const char *needle, size_t at)
{
    struct kp_segment_summary s;
    assert_int_equal(kp_segment_scan(b->data, b->len, &s), want);
    assert_contains(s.errmsg, needle);
    assert_int_equal(s.err_offset, at);
    assert_int_equal(s.valid_len, KP_SEGMENT_HEADER_SIZE);
    kp_buf_free(b);
}

/* Frames claiming more than the limits are refused before anything is
 * allocated or decompressed; payloads that are not exactly one zstd frame
 * of the declared size are refused too. */
static void test_oversized_claims(void **state)
{
    struct kp_buf b;
    const size_t F = KP_SEGMENT_HEADER_SIZE;
    char raw[100], z[256];
    (void)state;
    craft(&b, 10, KP_SEGMENT_FRAME_MAX_RAW + 1, 1, "0123456789", 10);
    expect_frame_error(&b, KP_ETOOBIG, "uncompressed bytes, the limit is", F + 8);
    craft(&b, UINT32_MAX, 1000, 1, "0123456789", 10);
    expect_frame_error(&b, KP_ETOOBIG, "payload, the limit is", F + 4);
    craft(&b, 10, 10, 11, "0123456789", 10);
    expect_frame_error(&b, KP_EPARSE, "11 events in 10 bytes", F + 12);
    craft(&b, 1000, 1000, 1, "0123456789", 10);
    expect_frame_error(&b, KP_EPARSE, "frame truncated", F);

    memset(raw, 0x90, sizeof(raw)); /* 100 empty msgpack arrays */
    size_t zn = ZSTD_compress(z, sizeof(z), raw, sizeof(raw), 1);
    assert_false(ZSTD_isError(zn));
    craft(&b, (uint32_t)zn, 50, 1, z, zn);
    expect_frame_error(&b, KP_EPARSE, "does not declare 50 bytes", F + 40);
    char two[512];
    memcpy(two, z, zn);
    memcpy(two + zn, z, zn);
    craft(&b, (uint32_t)(2 * zn), 100, 1, two, 2 * zn);
    expect_frame_error(&b, KP_EPARSE, "not exactly one zstd frame", F + 40);
    /* Whole and checksummed, but the payload holds no events. */
    craft(&b, (uint32_t)zn, 100, 1, z, zn);
    expect_frame_error(&b, KP_EPARSE, "expected a map, found an array", F);
}

/* A frame whose payload is @nev events from make_event(), compressed, with
 * the given claims; returns the reader's verdict after reading it all. */
static int read_crafted(uint32_t count, uint64_t nev, int64_t min, int64_t max, uint64_t *yielded,
                        char *errmsg)
{
    struct kp_buf raw, seg;
    struct kp_usage_event ev;
    struct kp_segment_reader r;
    char z[8192];
    kp_buf_init(&raw);
    for (uint64_t i = 0; i < nev; i++) {
        make_event(i, &ev);
        assert_int_equal(kp_usage_event_encode(&ev, &raw, NULL, 0), KP_OK);
    }
    size_t zn = ZSTD_compress(z, sizeof(z), raw.data, raw.len, 1);
    assert_false(ZSTD_isError(zn));
    craft(&seg, (uint32_t)zn, (uint32_t)raw.len, count, z, zn);
    kp_put_le((uint8_t *)seg.data + KP_SEGMENT_HEADER_SIZE + 16, (uint64_t)min, 8);
    kp_put_le((uint8_t *)seg.data + KP_SEGMENT_HEADER_SIZE + 24, (uint64_t)max, 8);
    uint8_t *fh = (uint8_t *)seg.data + KP_SEGMENT_HEADER_SIZE;
    kp_put_le(fh + 36, kp_segment_crc32c(0, fh, 36), 4);
    assert_int_equal(kp_segment_reader_init(&r, seg.data, seg.len), KP_OK);
    *yielded = 0;
    while (kp_segment_reader_next(&r, &ev))
        (*yielded)++;
    assert_true(r.events == *yielded);
    strcpy(errmsg, r.errmsg);
    int rc = r.err;
    kp_segment_reader_close(&r);
    kp_buf_free(&seg);
    kp_buf_free(&raw);
    return rc;
}

/* A checksummed frame must still agree with its events: count, length and
 * time range. A frame that ends in a mismatch yields none of the events its
 * last check rejected, and the reader's count is what the caller got. */
static void test_frame_content_mismatch(void **state)
{
    struct kp_usage_event e0, e1;
    uint64_t got;
    char err[256];
    (void)state;
    make_event(0, &e0);
    make_event(1, &e1);
    int64_t lo = e0.time_ms < e1.time_ms ? e0.time_ms : e1.time_ms;
    int64_t hi = e0.time_ms < e1.time_ms ? e1.time_ms : e0.time_ms;
    assert_int_equal(read_crafted(2, 2, lo, hi, &got, err), KP_OK);
    assert_true(got == 2);
    assert_int_equal(read_crafted(1, 2, lo, hi, &got, err), KP_EPARSE);
    assert_contains(err, "bytes after its last event");
    assert_true(got == 0);
    assert_int_equal(read_crafted(2, 2, lo - 1, hi, &got, err), KP_EPARSE);
    assert_contains(err, "time range differs from its events'");
    assert_true(got == 1);
    assert_int_equal(read_crafted(2, 2, lo + 1, hi, &got, err), KP_EPARSE);
    assert_contains(err, "time outside the frame's range");
    assert_int_equal(read_crafted(3, 2, lo, hi, &got, err), KP_EPARSE);
    assert_contains(err, "event 2 (byte");
    assert_contains(err, "input ends before the event");
    assert_true(got == 2);
}

static void fix_header_crc(uint8_t *h)
{
    kp_put_le(h + 124, kp_segment_crc32c(0, h, 124), 4);
}

/* Header problems are reported at the field at fault. */
static void test_header_errors(void **state)
{
    struct kp_buf buf;
    struct kp_segment_summary s;
    (void)state;
    build_segment(3, 3, false, &buf, NULL);
    uint8_t *h = (uint8_t *)buf.data;
    h[0] = 'X';
    assert_int_equal(kp_segment_scan(h, buf.len, &s), KP_EPARSE);
    assert_contains(s.errmsg, "bad magic");
    h[0] = 'K';
    assert_int_equal(kp_segment_scan(h, 100, &s), KP_EPARSE);
    assert_contains(s.errmsg, "header truncated (100 of 128 bytes)");
    kp_put_le(h + 8, 2, 2);
    fix_header_crc(h);
    assert_int_equal(kp_segment_scan(h, buf.len, &s), KP_EPARSE);
    assert_contains(s.errmsg, "unsupported format version 2");
    assert_int_equal(s.err_offset, 8);
    kp_put_le(h + 8, 1, 2);
    kp_put_le(h + 12, 0x10, 4);
    fix_header_crc(h);
    assert_int_equal(kp_segment_scan(h, buf.len, &s), KP_EPARSE);
    assert_contains(s.errmsg, "unknown header flags 0x10");
    assert_int_equal(s.err_offset, 12);
    kp_put_le(h + 12, 0, 4);
    h[33 + 10] = 'x'; /* a byte after the node name's NUL padding */
    fix_header_crc(h);
    assert_int_equal(kp_segment_scan(h, buf.len, &s), KP_EPARSE);
    assert_contains(s.errmsg, "invalid node name");
    assert_int_equal(s.err_offset, 32);
    h[33 + 10] = 0;
    fix_header_crc(h);
    h[20] ^= 1;
    assert_int_equal(kp_segment_scan(h, buf.len, &s), KP_EPARSE);
    assert_contains(s.errmsg, "header checksum mismatch");
    h[20] ^= 1;
    assert_int_equal(kp_segment_scan(h, buf.len, &s), KP_OK);
    /* Marked sealed without a footer. */
    kp_put_le(h + 12, KP_SEGMENT_FLAG_SEALED, 4);
    fix_header_crc(h);
    assert_int_equal(kp_segment_scan(h, buf.len, &s), KP_EPARSE);
    assert_contains(s.errmsg, "marked sealed but has no footer");
    assert_int_equal(s.err_offset, buf.len);
    kp_buf_free(&buf);
}

static void fix_footer_crc(uint8_t *seg, size_t len)
{
    uint8_t *f = seg + len - KP_SEGMENT_FOOTER_SIZE;
    uint32_t crc = kp_segment_crc32c(0, seg, KP_SEGMENT_HEADER_SIZE);
    kp_put_le(f + 60, kp_segment_crc32c(crc, f, 60), 4);
}

/* A footer whose totals disagree with the frames fails at that total, even
 * with a correct checksum; bytes after the footer fail too. */
static void test_footer_errors(void **state)
{
    struct kp_buf buf;
    struct kp_segment_summary s;
    (void)state;
    build_segment(9, 4, true, &buf, NULL);
    uint8_t *seg = (uint8_t *)buf.data;
    size_t foot = buf.len - KP_SEGMENT_FOOTER_SIZE;
    static const struct {
        size_t field, width;
        const char *needle;
    } cases[] = {
        {4, 4, "footer says 4 frames, found 3"},
        {8, 8, "footer says 10 events, found 9"},
        {16, 8, "first event time"},
        {24, 8, "last event time"},
        {32, 8, "bytes of frames"},
        {40, 4, "checksum of the frame headers"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t old = kp_get_le(seg + foot + cases[i].field, cases[i].width);
        kp_put_le(seg + foot + cases[i].field, old + 1, cases[i].width);
        fix_footer_crc(seg, buf.len);
        assert_int_equal(kp_segment_validate(seg, buf.len, &s), KP_EPARSE);
        assert_contains(s.errmsg, cases[i].needle);
        assert_int_equal(s.err_offset, foot + cases[i].field);
        kp_put_le(seg + foot + cases[i].field, old, cases[i].width);
        fix_footer_crc(seg, buf.len);
        assert_int_equal(kp_segment_validate(seg, buf.len, &s), KP_OK);
    }
    assert_int_equal(kp_buf_append(&buf, "x", 1), 0);
    seg = (uint8_t *)buf.data;
    assert_int_equal(kp_segment_validate(seg, buf.len, &s), KP_EPARSE);
    assert_contains(s.errmsg, "1 bytes after the footer");
    /* An interrupted seal: footer written, header still open. */
    buf.len--;
    kp_put_le(seg + 12, 0, 4);
    fix_header_crc(seg);
    assert_int_equal(kp_segment_scan(seg, buf.len, &s), KP_EPARSE);
    assert_contains(s.errmsg, "not marked sealed");
    size_t valid;
    assert_int_equal(kp_segment_scan_valid_prefix(seg, buf.len, &valid), KP_OK);
    assert_int_equal(valid, foot);
    kp_buf_free(&buf);
}

/* --- allocation failures -------------------------------------------------- */

/* Fail the writer's n-th allocation for every n: each failure is a clean
 * KP_ENOMEM that leaves the writer as it was, so retrying the same call
 * succeeds, and the result is byte for byte the segment built without
 * failures. Leaks would fail the run under LeakSanitizer. */
static void test_writer_alloc_failures(void **state)
{
    struct kp_segment_writer_options o = {.node = "n", .seq = 3, .frame_bytes = 2048};
    struct kp_segment_writer ref, w;
    struct kp_usage_event ev;
    const uint64_t n = 60;
    (void)state;
    assert_int_equal(kp_segment_writer_init(&ref, &o), KP_OK);
    for (uint64_t i = 0; i < n; i++) {
        make_event(i, &ev);
        assert_int_equal(kp_segment_writer_add(&ref, &ev), KP_OK);
    }
    assert_int_equal(kp_segment_writer_seal(&ref), KP_OK);
    assert_true(ref.frames >= 3);

    long fail;
    for (fail = 0;; fail++) {
        int failures = 0;
        kp_alloc_fail_after(fail);
        int rc = kp_segment_writer_init(&w, &o);
        if (rc != KP_OK) {
            kp_alloc_fail_reset();
            assert_int_equal(rc, KP_ENOMEM);
            kp_segment_writer_close(&w);
            continue;
        }
        for (uint64_t i = 0; i < n; i++) {
            make_event(i, &ev);
            if ((rc = kp_segment_writer_add(&w, &ev)) != KP_OK) {
                assert_int_equal(rc, KP_ENOMEM);
                kp_alloc_fail_reset();
                failures++;
                assert_int_equal(kp_segment_writer_add(&w, &ev), KP_OK);
            }
        }
        if ((rc = kp_segment_writer_seal(&w)) != KP_OK) {
            assert_int_equal(rc, KP_ENOMEM);
            kp_alloc_fail_reset();
            failures++;
            assert_int_equal(kp_segment_writer_seal(&w), KP_OK);
        }
        kp_alloc_fail_reset();
        assert_int_equal(w.out.len, ref.out.len);
        assert_memory_equal(w.out.data, ref.out.data, ref.out.len);
        kp_segment_writer_close(&w);
        if (failures == 0)
            break;
    }
    /* The buffers, the zstd context and its workspace: several points. */
    assert_true(fail >= 4);
    kp_segment_writer_close(&ref);
}

/* Fail the reader's n-th allocation for every n: the pass stops with
 * KP_ENOMEM (never a parse error), frees everything, and a pass without
 * failures reads every event. */
static void test_reader_alloc_failures(void **state)
{
    struct kp_buf buf;
    struct kp_segment_summary s;
    (void)state;
    build_segment(40, 7, true, &buf, NULL);
    long fail;
    for (fail = 0;; fail++) {
        size_t valid;
        kp_alloc_fail_after(fail);
        int rc = kp_segment_validate(buf.data, buf.len, &s);
        kp_alloc_fail_after(fail);
        int rc2 = kp_segment_scan_valid_prefix(buf.data, buf.len, &valid);
        kp_alloc_fail_reset();
        if (rc == KP_OK) {
            assert_true(s.events == 40);
            assert_int_equal(rc2, KP_OK);
            break;
        }
        assert_int_equal(rc, KP_ENOMEM);
        assert_int_equal(rc2, KP_ENOMEM);
        assert_true(fail < 100);
    }
    assert_true(fail >= 2); /* at least the zstd context and the frame buffer */
    kp_buf_free(&buf);
}

/* --- files ---------------------------------------------------------------- */

/* A segment file reads back whole; a missing file, a directory and a file
 * over the limit say so. */
static void test_file_read(void **state)
{
    struct kp_buf seg, got;
    char path[] = "/tmp/test_segment_XXXXXX";
    char err[256];
    (void)state;
    build_segment(5, 2, true, &seg, NULL);
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, seg.data, seg.len), (ssize_t)seg.len);
    close(fd);
    kp_buf_init(&got);
    assert_int_equal(kp_segment_file_read(path, 1 << 20, &got, err, sizeof(err)), KP_OK);
    assert_int_equal(got.len, seg.len);
    assert_memory_equal(got.data, seg.data, seg.len);
    assert_int_equal(kp_segment_file_read(path, 100, &got, err, sizeof(err)), KP_ETOOBIG);
    assert_contains(err, "limit");
    unlink(path);
    assert_int_equal(kp_segment_file_read(path, 1 << 20, &got, err, sizeof(err)), KP_ENOENT);
    assert_contains(err, "No such file or directory");
    assert_int_equal(kp_segment_file_read("/tmp", 1 << 20, &got, err, sizeof(err)), KP_EINVAL);
    assert_contains(err, "is a directory");
    kp_buf_free(&got);
    kp_buf_free(&seg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc32c),
        cmocka_unit_test(test_event_round_trip),
        cmocka_unit_test(test_event_max_size),
        cmocka_unit_test(test_event_is_msgpack),
        cmocka_unit_test(test_event_bytes_are_msgpack_c_s),
        cmocka_unit_test(test_event_to_json),
        cmocka_unit_test(test_event_trace_id),
        cmocka_unit_test(test_event_check),
        cmocka_unit_test(test_event_decode_errors),
        cmocka_unit_test(test_event_decode_error_offset),
        cmocka_unit_test(test_event_unknown_keys_skipped),
        cmocka_unit_test(test_event_decode_malformed),
        cmocka_unit_test(test_segment_round_trip),
        cmocka_unit_test(test_segment_streaming_writes),
        cmocka_unit_test(test_segment_open_and_empty),
        cmocka_unit_test(test_writer_refusals),
        cmocka_unit_test(test_torn_tail_open),
        cmocka_unit_test(test_torn_tail_sealed),
        cmocka_unit_test(test_bit_flips),
        cmocka_unit_test(test_oversized_claims),
        cmocka_unit_test(test_frame_content_mismatch),
        cmocka_unit_test(test_header_errors),
        cmocka_unit_test(test_footer_errors),
        cmocka_unit_test(test_writer_alloc_failures),
        cmocka_unit_test(test_reader_alloc_failures),
        cmocka_unit_test(test_file_read),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

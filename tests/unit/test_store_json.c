/* Unit tests of the control API's JSON (raftstore/json.c): every kind
 * rendered after it was applied, secrets and hashes never rendered, JSON
 * bodies that round-trip through a command and the state machine back to
 * the same fields, every refusal with its exact message and field path,
 * expect_version passed through to apply, audit entries with hex hashes,
 * and allocation failure on both sides (kp_malloc for commands, jansson's
 * allocator for rendering) without leaks or partial output. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "raftstore/raftstore.h"

#define T0 1767225600000 /* 2026-01-01T00:00:00Z */

/* The sealed blob and the hash bytes the tests look for in rendered JSON. */
#define SEALED      "sealed-blob:XYZZY-do-not-render"
#define HASH_BYTE   0x5a /* 'Z' */
#define PEPPER_BYTE 0x50 /* 'P' */

/* --- helpers ------------------------------------------------------------- */

static int64_t now = T0;
static uint64_t next_index = 0;
static struct kp_fsm_result res;
static char msg[256], field[160];

static struct kp_audit_ctx who = {.actor = (char *)"alice",
                                  .role = (char *)"admin",
                                  .request_id = (char *)"req-1",
                                  .source = (char *)"127.0.0.1"};

static int setup(void **state)
{
    next_index = 0;
    *state = kp_fsm_new();
    return *state == NULL;
}

static int teardown(void **state)
{
    kp_fsm_free(*state);
    return 0;
}

static json_t *parse(const char *text)
{
    json_error_t jerr;
    json_t *v = json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    if (v == NULL)
        fail_msg("bad test JSON '%s': %s", text, jerr.text);
    return v;
}

/* kp_command_from_json on @text (NULL: no body); @expect < 0: none. */
static int from_json_x(enum kp_op op, const char *id, const char *text, int64_t expect,
                       const struct kp_audit_ctx *audit, struct kp_buf *out)
{
    json_t *body = text != NULL ? parse(text) : NULL;
    int rc = kp_command_from_json(op, id, body, now++, audit, expect >= 0,
                                  expect >= 0 ? (uint64_t)expect : 0, out, msg, sizeof(msg), field,
                                  sizeof(field));
    json_decref(body);
    return rc;
}

static int from_json(enum kp_op op, const char *id, const char *text, struct kp_buf *out)
{
    return from_json_x(op, id, text, -1, &who, out);
}

static int apply_raw(struct kp_fsm *f, const void *p, size_t n)
{
    assert_int_equal(kp_fsm_apply(f, ++next_index, p, n, &res), KP_OK);
    return res.code;
}

/* Build the command from JSON (which must succeed), apply it and return
 * the apply's result code. */
static int japply_x(struct kp_fsm *f, enum kp_op op, const char *id, const char *text,
                    int64_t expect)
{
    struct kp_buf b;
    kp_buf_init(&b);
    int rc = from_json_x(op, id, text, expect, &who, &b);
    if (rc != KP_OK)
        fail_msg("%s %s: %s -> %s '%s' (field '%s')", kp_op_name(op), id ? id : "", text,
                 kp_err_name(rc), msg, field);
    rc = apply_raw(f, b.data, b.len);
    kp_buf_free(&b);
    return rc;
}

static int japply(struct kp_fsm *f, enum kp_op op, const char *id, const char *text)
{
    return japply_x(f, op, id, text, -1);
}

#define assert_ok(expr)                                                                            \
    do {                                                                                           \
        int rc_ = (expr);                                                                          \
        if (rc_ != KP_OK)                                                                          \
            fail_msg("%s -> %s: %s", #expr, kp_err_name(rc_), res.message);                        \
    } while (0)

/* Apply a command built through the public struct API (for what JSON may
 * not carry: sealed secrets, token hashes, the pepper). */
static int apply_struct(struct kp_fsm *f, enum kp_op op, void *body)
{
    char err[256];
    struct kp_buf b;
    struct kp_command c = {.v = 1, .op = op, .ts = now++, .audit = who, .body.any = body};
    kp_buf_init(&b);
    assert_int_equal(kp_command_encode(&c, &b, err, sizeof(err)), KP_OK);
    int rc = apply_raw(f, b.data, b.len);
    kp_buf_free(&b);
    return rc;
}

static int add_secret(struct kp_fsm *f, const char *key, uint32_t version, const char *fp)
{
    struct kp_cmd_add_secret c = {.id = (char *)key,
                                  .version = version,
                                  .sealed = {(uint8_t *)SEALED, (uint32_t)strlen(SEALED)},
                                  .fingerprint = (char *)fp,
                                  .last4 = (char *)"wxyz",
                                  .retire_previous_after_ms = T0 + 3600000};
    return apply_struct(f, KP_OP_ADD_KEY_SECRET, &c);
}

static json_t *render(struct kp_fsm *f, enum kp_kind kind, const char *id)
{
    const struct kp_entity *e = kp_fsm_get(f, kind, id);
    if (e == NULL)
        fail_msg("no %s '%s'", kp_kind_name(kind), id);
    json_t *j = kp_entity_json(e);
    assert_non_null(j);
    return j;
}

static const char *jstr(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    if (!json_is_string(v))
        fail_msg("'%s' is not a string", key);
    return json_string_value(v);
}

static json_int_t jint(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    if (!json_is_integer(v))
        fail_msg("'%s' is not an integer", key);
    return json_integer_value(v);
}

/* Every key of @want is in @got with an equal value. */
static void assert_fields_equal(const json_t *want, const json_t *got)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)want, k, v)
    {
        if (!json_equal(v, json_object_get(got, k))) {
            char *a = json_dumps(v, JSON_ENCODE_ANY), *b = json_dumps(got, 0);
            fail_msg("field '%s': wanted %s in %s", k, a, b);
        }
    }
}

/* The keys of @o, sorted and comma-separated, into @out. */
static void keys_of(const json_t *o, char *out, size_t n)
{
    const char *names[64];
    size_t count = 0, used = 0;
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)o, k, v)
    {
        if (count < 64)
            names[count++] = k;
    }
    for (size_t i = 1; i < count; i++) {
        for (size_t j = i; j > 0 && strcmp(names[j - 1], names[j]) > 0; j--) {
            const char *t = names[j];
            names[j] = names[j - 1];
            names[j - 1] = t;
        }
    }
    out[0] = '\0';
    for (size_t i = 0; i < count; i++)
        used += (size_t)snprintf(out + used, n - used, "%s%s", i ? "," : "", names[i]);
}

/* No object anywhere in @v has a key named like a secret, and no string
 * holds secret material. */
static void assert_no_secrets(const json_t *v)
{
    if (json_is_object(v)) {
        const char *k;
        json_t *e;
        json_object_foreach((json_t *)v, k, e)
        {
            if (strcmp(k, "sealed") == 0 || strcmp(k, "hash") == 0 || strcmp(k, "pepper") == 0)
                fail_msg("secret-bearing key '%s' rendered", k);
            assert_no_secrets(e);
        }
    } else if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v); i++)
            assert_no_secrets(json_array_get(v, i));
    } else if (json_is_string(v)) {
        const char *s = json_string_value(v);
        if (strstr(s, "XYZZY") != NULL || strstr(s, "ZZZZ") != NULL || strstr(s, "PPPP") != NULL ||
            strstr(s, "5a5a5a5a") != NULL || strstr(s, "50505050") != NULL)
            fail_msg("secret material rendered: '%s'", s);
    }
}

/* A registry touching every kind, written through JSON where the API
 * allows it and through structs for the binary fields. */
static void populate(struct kp_fsm *f)
{
    struct kp_cluster c = {.e.id = (char *)"c-test", .kek_id = (char *)"kek-1"};
    memset(c.pepper, PEPPER_BYTE, sizeof(c.pepper));
    assert_ok(apply_struct(f, KP_OP_INIT_CLUSTER, &c));
    assert_ok(japply(f, KP_OP_PUT_PROVIDER, "openai",
                     "{\"kind\":\"openai\",\"base_url\":\"https://api.openai.com/v1\","
                     "\"headers\":{\"X-Org\":\"acme\"}}"));
    assert_ok(japply(f, KP_OP_PUT_KEY, "k1",
                     "{\"provider\":\"openai\",\"name\":\"prod\",\"tags\":[\"a\",\"b\"],"
                     "\"models\":[\"gpt-4o\"],\"rpm\":600,\"tpm\":90000}"));
    assert_ok(japply(f, KP_OP_PUT_KEY, "k2", "{\"provider\":\"openai\"}"));
    assert_ok(add_secret(f, "k1", 1, "sha256:aaaa"));
    assert_ok(add_secret(f, "k1", 2, "sha256:bbbb"));
    assert_ok(japply(f, KP_OP_PUT_POOL, "main",
                     "{\"strategy\":\"weighted\",\"members\":[{\"key\":\"k1\",\"weight\":10},"
                     "{\"key\":\"k2\",\"weight\":5,\"priority\":1}],"
                     "\"downgrades\":[{\"from\":\"gpt-4o\",\"to\":\"gpt-4o-mini\"}]}"));
    assert_ok(japply(f, KP_OP_PUT_TENANT, "acme", "{\"display_name\":\"Acme Corp\"}"));
    assert_ok(japply(f, KP_OP_PUT_PROJECT, "search", "{\"tenant\":\"acme\"}"));
    char *projects[] = {(char *)"search"};
    struct kp_token t = {.e.id = (char *)"tk_abc",
                         .role = (char *)"app",
                         .tenant = (char *)"acme",
                         .projects = {projects, 1},
                         .expires_at_ms = T0 + 86400000};
    memset(t.hash, HASH_BYTE, sizeof(t.hash));
    assert_ok(apply_struct(f, KP_OP_PUT_TOKEN, &t));
    assert_ok(japply(f, KP_OP_PUT_POLICY, "pol-1",
                     "{\"scope_kind\":\"project\",\"scope_target\":\"search\",\"rpm\":100,"
                     "\"budgets\":[{\"name\":\"daily\",\"window\":\"daily\","
                     "\"limit_nanousd\":5000000000,\"kind\":\"soft\"}]}"));
    assert_ok(japply(f, KP_OP_PUT_PRICE, "gpt-4o",
                     "{\"input_per_mtok\":2500000000,\"output_per_mtok\":10000000000}"));
    assert_ok(japply(f, KP_OP_PUT_MEMBER, "n1",
                     "{\"node_id\":1,\"address\":\"10.0.0.1:7602\","
                     "\"control_address\":\"10.0.0.1:7601\",\"meter\":true}"));
    assert_ok(japply(f, KP_OP_PUT_ALERT_RULE, "ar-1",
                     "{\"kind\":\"budget\",\"params\":{\"threshold\":\"0.8\"}}"));
    assert_ok(japply(f, KP_OP_PUT_WEBHOOK, "wh-1",
                     "{\"kind\":\"slack\",\"params\":{\"url\":\"https://hooks.example/x\"}}"));
    assert_ok(japply(f, KP_OP_SET_KEY_HEALTH, "k2",
                     "{\"status\":\"rate_limited\",\"last_error_class\":\"rate_limit\"}"));
}

/* --- rendering ------------------------------------------------------------ */

/* Every kind renders "kind" (unless it has a field of that name), the header fields and its schema
 * fields by name, enums by name, lists as arrays and maps as objects; absent optional strings are
 * left out. */
static void test_render_kinds(void **state)
{
    struct kp_fsm *f = *state;
    char keys[512];
    populate(f);

    json_t *j = render(f, KP_KIND_PROVIDER, "openai");
    keys_of(j, keys, sizeof(keys));
    /* api_version is absent: omitted, not null */
    assert_string_equal(keys, "allow_insecure,base_url,connect_timeout_ms,created_ms,"
                              "first_byte_timeout_ms,headers,id,idle_timeout_ms,kind,max_retries,"
                              "retry_backoff_ms,retry_window_ms,total_timeout_ms,updated_ms,"
                              "version");
    assert_string_equal(jstr(j, "kind"), "openai"); /* its own field, not the entity kind */
    assert_string_equal(jstr(j, "id"), "openai");
    assert_int_equal(jint(j, "version"), 1);
    assert_int_equal(jint(j, "created_ms"), T0 + 1);
    assert_int_equal(jint(j, "updated_ms"), T0 + 1);
    assert_string_equal(jstr(json_object_get(j, "headers"), "X-Org"), "acme");
    assert_true(json_is_false(json_object_get(j, "allow_insecure")));
    json_decref(j);

    j = render(f, KP_KIND_KEY, "k1");
    keys_of(j, keys, sizeof(keys));
    assert_string_equal(keys, "created_ms,id,kind,models,name,provider,rpm,secrets,status,tags,"
                              "tpm,updated_ms,version");
    assert_string_equal(jstr(j, "kind"), "key");
    assert_string_equal(jstr(j, "status"), "active");
    assert_int_equal(jint(j, "version"), 3); /* put + two secrets */
    assert_int_equal(jint(j, "rpm"), 600);
    assert_int_equal(json_array_size(json_object_get(j, "tags")), 2);
    assert_string_equal(json_string_value(json_array_get(json_object_get(j, "tags"), 1)), "b");
    json_t *secrets = json_object_get(j, "secrets");
    assert_int_equal(json_array_size(secrets), 2);
    json_t *s0 = json_array_get(secrets, 0), *s1 = json_array_get(secrets, 1);
    keys_of(s0, keys, sizeof(keys));
    assert_string_equal(keys, "fingerprint,last4,retire_after_ms,state,version");
    assert_int_equal(jint(s0, "version"), 1);
    assert_string_equal(jstr(s0, "fingerprint"), "sha256:aaaa");
    assert_string_equal(jstr(s0, "last4"), "wxyz");
    assert_string_equal(jstr(s0, "state"), "previous");
    assert_int_equal(jint(s0, "retire_after_ms"), T0 + 3600000);
    assert_string_equal(jstr(s1, "state"), "primary");
    assert_no_secrets(j);
    char *text = json_dumps(j, 0);
    assert_null(strstr(text, "XYZZY"));
    free(text);
    json_decref(j);

    j = render(f, KP_KIND_KEY, "k2"); /* no name, owner: omitted; lists empty */
    keys_of(j, keys, sizeof(keys));
    assert_string_equal(keys, "created_ms,id,kind,models,provider,rpm,secrets,status,tags,tpm,"
                              "updated_ms,version");
    assert_int_equal(json_array_size(json_object_get(j, "secrets")), 0);
    assert_true(json_is_array(json_object_get(j, "tags")));
    json_decref(j);

    j = render(f, KP_KIND_POOL, "main");
    assert_string_equal(jstr(j, "kind"), "pool");
    assert_string_equal(jstr(j, "strategy"), "weighted");
    json_t *m1 = json_array_get(json_object_get(j, "members"), 1);
    keys_of(m1, keys, sizeof(keys));
    assert_string_equal(keys, "key,priority,weight");
    assert_string_equal(jstr(m1, "key"), "k2");
    assert_int_equal(jint(m1, "weight"), 5);
    assert_int_equal(jint(m1, "priority"), 1);
    assert_null(json_object_get(j, "fallback"));
    assert_string_equal(jstr(json_array_get(json_object_get(j, "downgrades"), 0), "to"),
                        "gpt-4o-mini");
    json_decref(j);

    j = render(f, KP_KIND_TENANT, "acme");
    keys_of(j, keys, sizeof(keys));
    assert_string_equal(keys, "capture_content,created_ms,display_name,id,kind,updated_ms,version");
    json_decref(j);

    j = render(f, KP_KIND_PROJECT, "search");
    assert_string_equal(jstr(j, "kind"), "project");
    assert_string_equal(jstr(j, "tenant"), "acme");
    json_decref(j);

    j = render(f, KP_KIND_TOKEN, "tk_abc");
    keys_of(j, keys, sizeof(keys));
    assert_string_equal(keys, "created_ms,disabled,expires_at_ms,features,id,kind,models,pools,"
                              "projects,role,tenant,updated_ms,version");
    assert_int_equal(jint(j, "expires_at_ms"), T0 + 86400000);
    assert_no_secrets(j);
    json_decref(j);

    j = render(f, KP_KIND_POLICY, "pol-1");
    assert_string_equal(jstr(j, "kind"), "policy");
    assert_string_equal(jstr(j, "scope_kind"), "project");
    json_t *b0 = json_array_get(json_object_get(j, "budgets"), 0);
    assert_string_equal(jstr(b0, "kind"), "soft"); /* the budget's own field */
    assert_string_equal(jstr(b0, "window"), "daily");
    assert_int_equal(jint(b0, "limit_nanousd"), 5000000000);
    json_decref(j);

    j = render(f, KP_KIND_PRICE, "gpt-4o");
    assert_string_equal(jstr(j, "kind"), "price");
    assert_int_equal(jint(j, "output_per_mtok"), 10000000000);
    assert_int_equal(jint(j, "request_fee"), 0);
    json_decref(j);

    j = render(f, KP_KIND_MEMBER, "n1");
    assert_string_equal(jstr(j, "kind"), "member");
    assert_string_equal(jstr(j, "control_address"), "10.0.0.1:7601");
    assert_string_equal(jstr(j, "role"), "voter");
    assert_true(json_is_true(json_object_get(j, "meter")));
    json_decref(j);

    /* Like providers, alert rules and webhooks have a "kind" field of their
     * own: it wins over the entity kind. */
    j = render(f, KP_KIND_ALERT_RULE, "ar-1");
    assert_string_equal(jstr(j, "kind"), "budget");
    assert_string_equal(jstr(json_object_get(j, "params"), "threshold"), "0.8");
    json_decref(j);
    j = render(f, KP_KIND_WEBHOOK, "wh-1");
    assert_string_equal(jstr(j, "kind"), "slack");
    json_decref(j);

    /* A freeze, made from the JSON the control API builds. */
    assert_ok(japply(f, KP_OP_PUT_FREEZE, "tenant:acme",
                     "{\"scope\":\"tenant\",\"target\":\"acme\",\"reason\":\"INC-42\"}"));
    j = render(f, KP_KIND_FREEZE, "tenant:acme");
    keys_of(j, keys, sizeof(keys));
    assert_string_equal(keys,
                        "created_ms,frozen_by,id,kind,reason,scope,target,updated_ms,version");
    assert_string_equal(jstr(j, "kind"), "freeze");
    assert_string_equal(jstr(j, "scope"), "tenant");
    assert_string_equal(jstr(j, "reason"), "INC-42");
    assert_string_equal(jstr(j, "frozen_by"), "alice");
    json_decref(j);

    /* An alert, made from JSON as the evaluator's command would be, and
     * acked: its state fields render, its deliveries as an array. */
    assert_ok(japply(f, KP_OP_PUT_ALERT, "key:k2:invalid",
                     "{\"severity\":\"critical\",\"rule\":\"key_invalid\",\"subject\":\"key k2\","
                     "\"message\":\"m\",\"action\":\"rotate key k2\",\"last_value\":-3}"));
    assert_ok(japply(f, KP_OP_ACK_ALERT, "key:k2:invalid", NULL));
    j = render(f, KP_KIND_ALERT, "key:k2:invalid");
    keys_of(j, keys, sizeof(keys));
    assert_string_equal(keys, "acked_by,acked_ms,action,created_ms,deliveries,id,kind,last_value,"
                              "message,resolved_ms,rule,severity,started_ms,subject,updated_ms,"
                              "version");
    assert_string_equal(jstr(j, "kind"), "alert");
    assert_string_equal(jstr(j, "severity"), "critical");
    assert_string_equal(jstr(j, "acked_by"), "alice");
    assert_int_equal(jint(j, "last_value"), -3);
    assert_int_equal(jint(j, "resolved_ms"), 0);
    assert_true(json_is_array(json_object_get(j, "deliveries")));
    json_decref(j);
    /* Its state is not the API's to set. */
    struct kp_buf b;
    kp_buf_init(&b);
    assert_int_equal(from_json(KP_OP_PUT_ALERT, "x",
                               "{\"severity\":\"info\",\"rule\":\"r\",\"subject\":\"s\","
                               "\"message\":\"m\",\"action\":\"a\",\"acked_by\":\"me\"}",
                               &b),
                     KP_EINVAL);
    assert_string_equal(field, "acked_by");
    kp_buf_free(&b);

    j = render(f, KP_KIND_KEY_HEALTH, "k2");
    assert_string_equal(jstr(j, "kind"), "key_health");
    assert_string_equal(jstr(j, "status"), "rate_limited");
    assert_int_equal(jint(j, "last_change_ms"), jint(j, "created_ms"));
    json_decref(j);

    j = kp_entity_json(&kp_fsm_cluster(f)->e);
    assert_non_null(j);
    keys_of(j, keys, sizeof(keys));
    assert_string_equal(keys, "created_ms,id,kek_id,kind,updated_ms,version");
    assert_string_equal(jstr(j, "kind"), "cluster");
    assert_string_equal(jstr(j, "kek_id"), "kek-1");
    json_decref(j);
}

/* No entity of any kind, dumped whole, carries a sealed blob, a token hash
 * or the pepper, nor a key named for one. */
static void test_render_no_secrets(void **state)
{
    struct kp_fsm *f = *state;
    populate(f);
    for (int k = 0; k < KP_KIND_COUNT; k++) {
        struct kp_view *view = kp_fsm_view_build(f);
        assert_non_null(view);
        const char *ids[] = {"openai", "k1",    "k2",     "main", "acme", "search",
                             "tk_abc", "pol-1", "gpt-4o", "n1",   "ar-1", "wh-1"};
        for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
            const struct kp_entity *e = kp_view_get(view, (enum kp_kind)k, ids[i]);
            if (e == NULL)
                continue;
            json_t *j = kp_entity_json(e);
            assert_non_null(j);
            assert_no_secrets(j);
            char *text = json_dumps(j, 0);
            assert_null(strstr(text, "XYZZY"));
            free(text);
            json_decref(j);
        }
        kp_view_release(view);
    }
    json_t *j = kp_entity_json(&kp_fsm_cluster(f)->e);
    assert_no_secrets(j);
    json_decref(j);
}

/* A node id above INT64_MAX (not representable as a JSON integer) is
 * rendered exactly, as a decimal string. */
static void test_render_big_u64(void **state)
{
    struct kp_fsm *f = *state;
    struct kp_member m = {
        .e.id = (char *)"n9", .node_id = UINT64_MAX, .address = (char *)"10.0.0.9:7602"};
    assert_ok(apply_struct(f, KP_OP_PUT_MEMBER, &m));
    json_t *j = render(f, KP_KIND_MEMBER, "n9");
    assert_string_equal(jstr(j, "node_id"), "18446744073709551615");
    json_decref(j);
}

/* --- parsing ----------------------------------------------------------------- */

/* JSON -> command -> apply -> JSON gives back every field that was sent,
 * for every kind the API writes. */
static void test_roundtrip(void **state)
{
    struct kp_fsm *f = *state;
    static const struct {
        enum kp_op op;
        enum kp_kind kind;
        const char *id;
        const char *body;
    } cases[] = {
        {KP_OP_PUT_PROVIDER, KP_KIND_PROVIDER, "az",
         "{\"kind\":\"azure-openai\",\"base_url\":\"http://127.0.0.1:9000\",\"api_version\":"
         "\"2024-06-01\",\"headers\":{\"A\":\"1\",\"B\":\"two words\"},\"allow_insecure\":true}"},
        {KP_OP_PUT_KEY, KP_KIND_KEY, "k1",
         "{\"provider\":\"az\",\"name\":\"Prod \\u00e9\",\"owner\":\"team-a\",\"tags\":[\"x\"],"
         "\"models\":[\"gpt-4o\",\"gpt-4o-mini\"],\"rpm\":1000000000000,\"tpm\":0}"},
        {KP_OP_PUT_KEY, KP_KIND_KEY, "k2", "{\"provider\":\"az\"}"},
        {KP_OP_PUT_POOL, KP_KIND_POOL, "backup",
         "{\"strategy\":\"least_inflight\",\"members\":[{\"key\":\"k2\",\"weight\":1000,"
         "\"priority\":0}]}"},
        {KP_OP_PUT_POOL, KP_KIND_POOL, "main",
         "{\"strategy\":\"priority\",\"members\":[{\"key\":\"k1\",\"weight\":3,\"priority\":2},"
         "{\"key\":\"k2\",\"weight\":1,\"priority\":0}],\"fallback\":\"backup\","
         "\"downgrades\":[{\"from\":\"a\",\"to\":\"b\"}]}"},
        {KP_OP_PUT_TENANT, KP_KIND_TENANT, "acme", "{\"display_name\":\"Acme\"}"},
        {KP_OP_PUT_PROJECT, KP_KIND_PROJECT, "search",
         "{\"tenant\":\"acme\",\"display_name\":\"Search\"}"},
        {KP_OP_PUT_POLICY, KP_KIND_POLICY, "pol",
         "{\"scope_kind\":\"global\",\"models\":[\"gpt-4o*\"],\"rpm\":5,\"tpm\":6,\"budgets\":"
         "[{\"name\":\"m\",\"window\":\"monthly\",\"limit_nanousd\":0,\"kind\":\"hard\","
         "\"utc_offset_minutes\":-480,\"actions\":[{\"at_percent\":50,\"do\":\"alert\"},"
         "{\"at_percent\":90,\"do\":\"downgrade\",\"model\":\"gpt-4o-mini\"},{\"at_percent\":"
         "100,\"do\":\"throttle\",\"rpm\":10},{\"at_percent\":100,\"do\":\"block\"},"
         "{\"at_percent\":120,\"do\":\"disable_feature\",\"feature\":\"summarize\"}]},"
         "{\"name\":\"s\",\"window\":\"fixed\",\"limit_nanousd\":1,\"kind\":\"soft\","
         "\"utc_offset_minutes\":0,\"period_start_ms\":1767571200000,\"period_ms\":"
         "1209600000,\"actions\":[]}]}"},
        {KP_OP_PUT_PRICE, KP_KIND_PRICE, "meta/llama-3@2024",
         "{\"input_per_mtok\":1,\"cached_input_per_mtok\":2,\"output_per_mtok\":3,"
         "\"request_fee\":9223372036854775807}"},
        {KP_OP_PUT_MEMBER, KP_KIND_MEMBER, "n2",
         "{\"node_id\":2,\"address\":\"[::1]:7602\",\"control_address\":\"[::1]:7601\","
         "\"role\":\"standby\",\"meter\":false}"},
        {KP_OP_PUT_ALERT_RULE, KP_KIND_ALERT_RULE, "ar",
         "{\"kind\":\"error_rate\",\"params\":{\"threshold\":\"0.05\",\"window\":\"5m\"}}"},
        {KP_OP_PUT_WEBHOOK, KP_KIND_WEBHOOK, "wh", "{\"kind\":\"generic\",\"params\":{}}"},
        {KP_OP_SET_KEY_HEALTH, KP_KIND_KEY_HEALTH, "k1",
         "{\"status\":\"degraded\",\"last_error_class\":\"server\"}"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_ok(japply(f, cases[i].op, cases[i].id, cases[i].body));
        json_t *want = parse(cases[i].body);
        json_t *got = render(f, cases[i].kind, cases[i].id);
        assert_fields_equal(want, got);
        assert_string_equal(jstr(got, "id"), cases[i].id);
        assert_int_equal(jint(got, "version"), 1);
        json_decref(want);
        json_decref(got);
    }
    /* A body "id" equal to the URL's is accepted; a replace bumps the
     * version and keeps created_ms. */
    assert_ok(japply(f, KP_OP_PUT_TENANT, "acme", "{\"id\":\"acme\",\"display_name\":\"ACME\"}"));
    json_t *got = render(f, KP_KIND_TENANT, "acme");
    assert_string_equal(jstr(got, "display_name"), "ACME");
    assert_int_equal(jint(got, "version"), 2);
    assert_true(jint(got, "created_ms") < jint(got, "updated_ms"));
    assert_true(json_is_false(json_object_get(got, "capture_content"))); /* off unless given */
    json_decref(got);
    /* Content capture is a tenant's boolean, read back as written. */
    assert_ok(japply(f, KP_OP_PUT_TENANT, "acme",
                     "{\"display_name\":\"ACME\",\"capture_content\":true}"));
    got = render(f, KP_KIND_TENANT, "acme");
    assert_true(json_is_true(json_object_get(got, "capture_content")));
    json_decref(got);
    /* Without a URL id the body's is used; ops with other bodies work too. */
    assert_ok(japply(f, KP_OP_PUT_TENANT, NULL, "{\"id\":\"beta\"}"));
    assert_non_null(kp_fsm_get(f, KP_KIND_TENANT, "beta"));
    assert_ok(japply(f, KP_OP_SET_KEY_STATUS, "k1", "{\"status\":\"disabled\"}"));
    got = render(f, KP_KIND_KEY, "k1");
    assert_string_equal(jstr(got, "status"), "disabled");
    json_decref(got);
    assert_ok(japply(f, KP_OP_DELETE_TENANT, "beta", NULL));
    assert_null(kp_fsm_get(f, KP_KIND_TENANT, "beta"));
    assert_ok(japply(f, KP_OP_AUDIT_ONLY, NULL,
                     "{\"action\":\"denied\",\"target\":\"k1\",\"result\":\"no\"}"));
}

/* The command is the documented msgpack map: the envelope (audit fields
 * that are NULL left out) with the body's fields beside it; it is appended
 * to what @out held. */
static void test_command_shape(void **state)
{
    (void)state;
    struct kp_buf b;
    struct kp_command cmd;
    char err[256];
    struct kp_audit_ctx partial = {.actor = (char *)"bob", .source = (char *)"10.1.1.1"};
    kp_buf_init(&b);
    assert_int_equal(kp_buf_append(&b, "pre", 3), 0);
    int64_t ts = now;
    assert_int_equal(
        from_json_x(KP_OP_PUT_TENANT, "acme", "{\"display_name\":\"A\"}", 7, &partial, &b), KP_OK);
    assert_string_equal(msg, "");
    assert_string_equal(field, "");
    assert_memory_equal(b.data, "pre", 3);
    assert_int_equal(kp_command_decode(b.data + 3, b.len - 3, &cmd, err, sizeof(err)), KP_OK);
    assert_int_equal(cmd.v, KP_COMMAND_VERSION);
    assert_int_equal(cmd.op, KP_OP_PUT_TENANT);
    assert_int_equal(cmd.ts, ts);
    assert_string_equal(cmd.audit.actor, "bob");
    assert_null(cmd.audit.role);
    assert_null(cmd.audit.request_id);
    assert_string_equal(cmd.audit.source, "10.1.1.1");
    assert_true(cmd.has_expect_version);
    assert_int_equal(cmd.expect_version, 7);
    assert_string_equal(cmd.body.tenant->e.id, "acme");
    assert_string_equal(cmd.body.tenant->display_name, "A");
    kp_command_free(&cmd);
    /* A NULL body is {}: a delete needs only the URL's id. */
    size_t len = b.len;
    assert_int_equal(from_json(KP_OP_DELETE_KEY, "k1", NULL, &b), KP_OK);
    assert_int_equal(kp_command_decode(b.data + len, b.len - len, &cmd, err, sizeof(err)), KP_OK);
    assert_false(cmd.has_expect_version);
    assert_string_equal(cmd.body.target->id, "k1");
    kp_command_free(&cmd);
    kp_buf_free(&b);
}

/* Every refusal: KP_EINVAL, the decoder-style message and the exact field
 * path, and @out untouched. */
static void test_refusals(void **state)
{
    (void)state;
    static const struct {
        enum kp_op op;
        const char *id;
        const char *body;
        const char *msg;
        const char *field;
    } cases[] = {
        /* the body's shape */
        {KP_OP_PUT_TENANT, "acme", "[1]", "the body must be a JSON object", ""},
        {KP_OP_PUT_TENANT, "acme", "\"x\"", "the body must be a JSON object", ""},
        /* envelope keys */
        {KP_OP_PUT_TENANT, "acme", "{\"v\":1}", "v: belongs to the command envelope, not the body",
         "v"},
        {KP_OP_PUT_TENANT, "acme", "{\"op\":\"put_key\"}",
         "op: belongs to the command envelope, not the body", "op"},
        {KP_OP_PUT_TENANT, "acme", "{\"ts\":1}",
         "ts: belongs to the command envelope, not the body", "ts"},
        {KP_OP_PUT_TENANT, "acme", "{\"audit\":{}}",
         "audit: belongs to the command envelope, not the body", "audit"},
        {KP_OP_DELETE_KEY, "k1", "{\"expect_version\":3}",
         "expect_version: belongs to the command envelope, not the body", "expect_version"},
        /* fields the registry sets */
        {KP_OP_PUT_TENANT, "acme", "{\"display_name\":\"A\",\"version\":3}",
         "version: is set by the registry", "version"},
        {KP_OP_PUT_TENANT, "acme", "{\"created_ms\":1}", "created_ms: is set by the registry",
         "created_ms"},
        {KP_OP_PUT_TENANT, "acme", "{\"updated_ms\":1}", "updated_ms: is set by the registry",
         "updated_ms"},
        {KP_OP_PUT_TENANT, "acme", "{\"kind\":\"tenant\"}", "kind: is set by the registry", "kind"},
        {KP_OP_DELETE_KEY, "k1", "{\"version\":2}", "version: is set by the registry", "version"},
        {KP_OP_PUT_KEY, "k1", "{\"provider\":\"p\",\"status\":\"active\"}",
         "status: is set by the registry", "status"},
        {KP_OP_PUT_KEY, "k1", "{\"provider\":\"p\",\"secrets\":[]}",
         "secrets: is set by the registry", "secrets"},
        {KP_OP_SET_KEY_HEALTH, "k1", "{\"status\":\"healthy\",\"last_change_ms\":5}",
         "last_change_ms: is set by the registry", "last_change_ms"},
        {KP_OP_PUT_FREEZE, "tenant:acme",
         "{\"scope\":\"tenant\",\"target\":\"acme\",\"reason\":\"r\",\"frozen_by\":\"me\"}",
         "frozen_by: is set by the registry", "frozen_by"},
        {KP_OP_PUT_FREEZE, "tenant:acme", "{\"scope\":\"tenant\",\"target\":\"acme\"}",
         "reason: missing", "reason"},
        {KP_OP_PUT_FREEZE, "tenant:acme",
         "{\"scope\":\"tenant\",\"target\":\"acme\",\"reason\":\"\"}", "reason: must not be empty",
         "reason"},
        {KP_OP_PUT_FREEZE, "everything:x",
         "{\"scope\":\"everything\",\"target\":\"x\",\"reason\":\"r\"}",
         "scope: must be one of tenant|project|feature|pool|key|token", "scope"},
        /* reals where an integer is expected */
        {KP_OP_PUT_PRICE, "gpt-4o", "{\"input_per_mtok\":1.5}",
         "input_per_mtok: must be an integer", "input_per_mtok"},
        {KP_OP_PUT_PRICE, "gpt-4o", "{\"input_per_mtok\":2.0}",
         "input_per_mtok: must be an integer", "input_per_mtok"},
        {KP_OP_PUT_POOL, "main", "{\"members\":[{\"key\":\"k1\"},{\"key\":\"k2\",\"weight\":2.5}]}",
         "members[1].weight: must be an integer", "members[1].weight"},
        /* binary fields */
        {KP_OP_PUT_TOKEN, "tk_1", "{\"role\":\"app\",\"tenant\":\"*\",\"hash\":\"00\"}",
         "hash: cannot be set through the API", "hash"},
        {KP_OP_INIT_CLUSTER, "c1", "{\"pepper\":null}", "pepper: cannot be set through the API",
         "pepper"},
        {KP_OP_ADD_KEY_SECRET, "k1",
         "{\"version\":1,\"fingerprint\":\"f\",\"sealed\":\"c2VhbGVk\"}",
         "sealed: cannot be set through the API", "sealed"},
        {KP_OP_REWRAP_SECRETS, NULL,
         "{\"secrets\":[{\"key\":\"k1\",\"key_version\":1,\"version\":1,\"sealed\":\"x\"}]}",
         "secrets[0].sealed: cannot be set through the API", "secrets[0].sealed"},
        /* the id */
        {KP_OP_PUT_TENANT, "acme", "{\"id\":\"other\"}", "id: does not match the URL", "id"},
        {KP_OP_PUT_TENANT, "acme", "{\"id\":7}", "id: does not match the URL", "id"},
        {KP_OP_PUT_TENANT, "acme", "{\"id\":\"acme\\u0000x\"}", "id: does not match the URL", "id"},
        {KP_OP_PUT_TENANT, "a b", "{}", "id: may contain only letters, digits and . _ : -", "id"},
        {KP_OP_PUT_TENANT, NULL, "{}", "id: missing", "id"},
        {KP_OP_AUDIT_ONLY, "x", "{\"action\":\"a\",\"result\":\"r\"}", "id: audit_only takes no id",
         "id"},
        /* unknown fields, at the top and nested */
        {KP_OP_PUT_TENANT, "acme", "{\"color\":\"red\"}", "unknown field 'color'", "color"},
        {KP_OP_PUT_TENANT, "acme", "{\"a b\":1}", "unknown field", ""},
        {KP_OP_PUT_POOL, "main", "{\"members\":[{\"key\":\"k1\",\"x\":1}]}",
         "members[0]: unknown field 'x'", "members[0].x"},
        {KP_OP_PUT_POLICY, "p", "{\"scope_kind\":\"global\",\"budgets\":[{\"version\":1}]}",
         "budgets[0]: unknown field 'version'", "budgets[0].version"},
        /* what the decoder refuses, with its message and path */
        {KP_OP_PUT_POOL, "main",
         "{\"members\":[{\"key\":\"k1\"},{\"key\":\"k2\"},{\"key\":\"k3\",\"weight\":0}]}",
         "members[2].weight: must be 1..1000", "members[2].weight"},
        {KP_OP_PUT_POOL, "main", "{\"members\":[\"k1\"]}",
         "members[0]: expected a map, found a string", "members[0]"},
        {KP_OP_PUT_POOL, "main", "{\"members\":{}}", "members: expected an array, found a map",
         "members"},
        {KP_OP_PUT_PROVIDER, "p", "{\"kind\":\"nope\",\"base_url\":\"https://x\"}",
         "kind: must be one of openai|azure-openai|anthropic|gemini|openai-compatible", "kind"},
        {KP_OP_PUT_PROVIDER, "p", "{\"kind\":\"openai\"}", "base_url: missing", "base_url"},
        {KP_OP_PUT_PROVIDER, "p",
         "{\"headers\":{\"X\":1},\"kind\":\"openai\",\"base_url\":\"https://x\"}",
         "headers.X: expected a string, found an integer", "headers.X"},
        {KP_OP_PUT_TENANT, "acme", "{\"capture_content\":\"yes\"}",
         "capture_content: expected a boolean, found a string", "capture_content"},
        {KP_OP_PUT_TENANT, "acme", "{\"display_name\":1.5}",
         "display_name: expected a string, found a float", "display_name"},
        {KP_OP_PUT_TENANT, "acme", "{\"display_name\":[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]}",
         "display_name: nested too deeply", "display_name"},
        {KP_OP_PUT_KEY, "k1", "{\"provider\":\"p\",\"tags\":[\"a\",\"a\"]}",
         "tags[1]: duplicate of tags[0]", "tags[1]"},
        {KP_OP_PUT_KEY, "k1", "{\"provider\":\"p\",\"rpm\":-1}", "rpm: must be 0..1000000000000",
         "rpm"},
        {KP_OP_PUT_MEMBER, "n1", "{\"node_id\":1,\"address\":\"a\",\"meter\":1}",
         "meter: expected a boolean, found an integer", "meter"},
    /* budget windows and threshold actions: rules across fields */
#define BUDGET(fields)                                                                             \
    "{\"scope_kind\":\"global\",\"budgets\":[{\"name\":\"b\",\"limit_nanousd\":5," fields "}]}"
        {KP_OP_PUT_POLICY, "p", BUDGET("\"window\":\"weekly\",\"utc_offset_minutes\":841"),
         "budgets[0].utc_offset_minutes: must be -720..840", "budgets[0].utc_offset_minutes"},
        {KP_OP_PUT_POLICY, "p", BUDGET("\"window\":\"daily\",\"utc_offset_minutes\":1.5"),
         "budgets[0].utc_offset_minutes: must be an integer", "budgets[0].utc_offset_minutes"},
        {KP_OP_PUT_POLICY, "p", BUDGET("\"window\":\"fixed\""),
         "budgets[0].period_ms: required for a fixed window", "budgets[0].period_ms"},
        {KP_OP_PUT_POLICY, "p",
         BUDGET("\"window\":\"fixed\",\"period_ms\":3600000,\"utc_offset_minutes\":60"),
         "budgets[0].utc_offset_minutes: must be 0 for a fixed window (it is anchored at "
         "period_start_ms)",
         "budgets[0].utc_offset_minutes"},
        {KP_OP_PUT_POLICY, "p", BUDGET("\"window\":\"fixed\",\"period_ms\":31622400001"),
         "budgets[0].period_ms: must be 0..31622400000", "budgets[0].period_ms"},
        {KP_OP_PUT_POLICY, "p", BUDGET("\"window\":\"monthly\",\"period_start_ms\":1"),
         "budgets[0].period_start_ms: only for a fixed window, not monthly",
         "budgets[0].period_start_ms"},
        {KP_OP_PUT_POLICY, "p", BUDGET("\"window\":\"hourly\""),
         "budgets[0].window: must be one of daily|weekly|monthly|fixed", "budgets[0].window"},
        {KP_OP_PUT_POLICY, "p",
         BUDGET("\"window\":\"daily\",\"actions\":[{\"at_percent\":50,\"do\":\"alert\"},"
                "{\"at_percent\":90,\"do\":\"downgrade\"}]"),
         "budgets[0].actions[1].model: required for downgrade", "budgets[0].actions[1].model"},
        {KP_OP_PUT_POLICY, "p",
         BUDGET("\"window\":\"daily\",\"actions\":[{\"at_percent\":50,\"do\":\"alert\","
                "\"model\":\"m\"}]"),
         "budgets[0].actions[0].model: only for downgrade, not alert",
         "budgets[0].actions[0].model"},
        {KP_OP_PUT_POLICY, "p",
         BUDGET("\"window\":\"daily\",\"actions\":[{\"at_percent\":50,\"do\":\"throttle\"}]"),
         "budgets[0].actions[0].rpm: required for throttle (requests a minute, >= 1)",
         "budgets[0].actions[0].rpm"},
        {KP_OP_PUT_POLICY, "p",
         BUDGET("\"window\":\"daily\",\"actions\":[{\"at_percent\":50,\"do\":\"block\","
                "\"rpm\":5}]"),
         "budgets[0].actions[0].rpm: only for throttle, not block", "budgets[0].actions[0].rpm"},
        {KP_OP_PUT_POLICY, "p",
         BUDGET("\"window\":\"daily\",\"actions\":[{\"at_percent\":50,\"do\":"
                "\"disable_feature\"}]"),
         "budgets[0].actions[0].feature: required for disable_feature",
         "budgets[0].actions[0].feature"},
        {KP_OP_PUT_POLICY, "p",
         BUDGET("\"window\":\"daily\",\"actions\":[{\"at_percent\":0,\"do\":\"alert\"}]"),
         "budgets[0].actions[0].at_percent: must be 1..1000", "budgets[0].actions[0].at_percent"},
        {KP_OP_PUT_POLICY, "p",
         BUDGET("\"window\":\"daily\",\"actions\":[{\"at_percent\":50,\"do\":\"pause\"}]"),
         "budgets[0].actions[0].do: must be one of "
         "alert|block|downgrade|throttle|disable_feature",
         "budgets[0].actions[0].do"},
        {KP_OP_PUT_POLICY, "p",
         BUDGET("\"window\":\"daily\",\"actions\":[{\"at_percent\":80,\"do\":\"alert\"},"
                "{\"at_percent\":50,\"do\":\"block\"}]"),
         "budgets[0].actions[1]: at_percent 50 is below actions[0]'s 80 (actions ascend by "
         "at_percent)",
         "budgets[0].actions[1]"},
        {KP_OP_PUT_POLICY, "p",
         BUDGET("\"window\":\"daily\",\"actions\":[{\"at_percent\":80,\"do\":\"alert\"},"
                "{\"at_percent\":80,\"do\":\"alert\"}]"),
         "budgets[0].actions[1]: same at_percent and do as actions[0]", "budgets[0].actions[1]"},
        {KP_OP_PUT_POLICY, "p",
         BUDGET("\"window\":\"daily\",\"actions\":[{\"at_percent\":80,\"do\":\"alert\",\"x\":1}]"),
         "budgets[0].actions[0]: unknown field 'x'", "budgets[0].actions[0].x"},
#undef BUDGET
        {KP_OP_NONE, "x", "{}", "unknown operation", ""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct kp_buf b;
        kp_buf_init(&b);
        assert_int_equal(kp_buf_append(&b, "pre", 3), 0);
        int rc = from_json(cases[i].op, cases[i].id, cases[i].body, &b);
        if (rc != KP_EINVAL || strcmp(msg, cases[i].msg) != 0 || strcmp(field, cases[i].field) != 0)
            fail_msg("case %zu %s: %s -> %s '%s' (field '%s'), wanted '%s' (field '%s')", i,
                     kp_op_name(cases[i].op) ? kp_op_name(cases[i].op) : "-", cases[i].body,
                     kp_err_name(rc), msg, field, cases[i].msg, cases[i].field);
        assert_int_equal(b.len, 3);
        kp_buf_free(&b);
    }
    /* The envelope is checked too: a missing actor. */
    struct kp_buf b;
    kp_buf_init(&b);
    assert_int_equal(from_json_x(KP_OP_PUT_TENANT, "acme", "{}", -1, NULL, &b), KP_EINVAL);
    assert_string_equal(msg, "audit.actor: missing");
    assert_string_equal(field, "audit.actor");
    assert_int_equal(b.len, 0);
    kp_buf_free(&b);
}

/* expect_version reaches apply: 0 creates only, N must match, a mismatch is
 * a 409 with the current version. */
static void test_expect_version(void **state)
{
    struct kp_fsm *f = *state;
    assert_ok(japply_x(f, KP_OP_PUT_TENANT, "acme", "{}", 0));
    assert_int_equal(japply_x(f, KP_OP_PUT_TENANT, "acme", "{}", 0), KP_ECONFLICT);
    assert_string_equal(res.message, "expect_version: tenant 'acme' is at version 1, not 0");
    assert_ok(japply_x(f, KP_OP_PUT_TENANT, "acme", "{\"display_name\":\"x\"}", 1));
    assert_int_equal(japply_x(f, KP_OP_PUT_TENANT, "acme", "{}", 1), KP_ECONFLICT);
    assert_string_equal(res.message, "expect_version: tenant 'acme' is at version 2, not 1");
    assert_int_equal(japply_x(f, KP_OP_DELETE_TENANT, "acme", NULL, 5), KP_ECONFLICT);
    assert_ok(japply_x(f, KP_OP_DELETE_TENANT, "acme", NULL, 2));
    assert_null(kp_fsm_get(f, KP_KIND_TENANT, "acme"));
}

static bool is_hex64(const char *s)
{
    if (strlen(s) != 64)
        return false;
    for (size_t i = 0; i < 64; i++) {
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    }
    return true;
}

/* Audit entries render every field, absent strings omitted, hashes as 64
 * lower-case hex digits that chain: each prev_hash is the hash before it. */
static void test_audit_json(void **state)
{
    struct kp_fsm *f = *state;
    char keys[512], hex[65];
    assert_ok(japply(f, KP_OP_PUT_TENANT, "acme", "{}"));
    struct kp_buf b;
    kp_buf_init(&b);
    struct kp_audit_ctx bare = {.actor = (char *)"bob"};
    assert_int_equal(from_json_x(KP_OP_DELETE_TENANT, "ghost", NULL, -1, &bare, &b), KP_OK);
    assert_int_equal(apply_raw(f, b.data, b.len), KP_ENOENT);
    kp_buf_free(&b);

    assert_int_equal(kp_fsm_audit_count(f), 2);
    const struct kp_audit_entry *e1 = kp_fsm_audit_entry(f, 0), *e2 = kp_fsm_audit_entry(f, 1);
    json_t *j1 = kp_audit_entry_json(e1), *j2 = kp_audit_entry_json(e2);
    assert_non_null(j1);
    assert_non_null(j2);
    keys_of(j1, keys, sizeof(keys));
    assert_string_equal(keys,
                        "action,actor,hash,prev_hash,request_id,result,role,seq,source,target,ts");
    assert_int_equal(jint(j1, "seq"), 1);
    assert_int_equal(jint(j1, "ts"), e1->ts);
    assert_string_equal(jstr(j1, "actor"), "alice");
    assert_string_equal(jstr(j1, "role"), "admin");
    assert_string_equal(jstr(j1, "action"), "put_tenant");
    assert_string_equal(jstr(j1, "target"), "acme");
    assert_string_equal(jstr(j1, "result"), "ok");
    assert_string_equal(jstr(j1, "request_id"), "req-1");
    assert_string_equal(jstr(j1, "source"), "127.0.0.1");
    assert_true(is_hex64(jstr(j1, "hash")));
    assert_true(is_hex64(jstr(j1, "prev_hash")));
    assert_string_equal(jstr(j1, "prev_hash"),
                        "0000000000000000000000000000000000000000000000000000000000000000");
    kp_hex_encode(e1->hash, 32, hex);
    assert_string_equal(jstr(j1, "hash"), hex);

    keys_of(j2, keys, sizeof(keys)); /* no role, request_id, source */
    assert_string_equal(keys, "action,actor,hash,prev_hash,result,seq,target,ts");
    assert_string_equal(jstr(j2, "result"), "refused: no tenant 'ghost'");
    assert_string_equal(jstr(j2, "prev_hash"), jstr(j1, "hash"));
    assert_true(is_hex64(jstr(j2, "hash")));
    assert_string_not_equal(jstr(j2, "hash"), jstr(j1, "hash"));
    json_decref(j1);
    json_decref(j2);
}

/* --- allocation failure ------------------------------------------------------ */

/* Out of kp_malloc at every point: KP_ENOMEM with "out of memory", @out
 * untouched, nothing leaked (ASan); then it works. */
static void test_from_json_oom(void **state)
{
    (void)state;
    const char *body = "{\"strategy\":\"weighted\",\"members\":[{\"key\":\"k1\",\"weight\":3},"
                       "{\"key\":\"k2\"}],\"downgrades\":[{\"from\":\"a\",\"to\":\"b\"}]}";
    bool done = false;
    for (long n = 0; n < 1000 && !done; n++) {
        struct kp_buf b;
        kp_buf_init(&b);
        kp_alloc_fail_after(n);
        int rc = from_json(KP_OP_PUT_POOL, "main", body, &b);
        kp_alloc_fail_reset();
        if (rc == KP_OK) {
            assert_true(b.len > 0);
            done = true;
        } else {
            assert_int_equal(rc, KP_ENOMEM);
            assert_string_equal(msg, "out of memory");
            assert_string_equal(field, "");
            assert_int_equal(b.len, 0);
        }
        kp_buf_free(&b);
    }
    assert_true(done);
}

static long jansson_budget = -1;

static void *failing_malloc(size_t n)
{
    if (jansson_budget == 0)
        return NULL;
    if (jansson_budget > 0)
        jansson_budget--;
    return malloc(n);
}

/* Out of jansson memory at every point: NULL, nothing leaked (ASan); then
 * the same entity renders. */
static void test_render_oom(void **state)
{
    struct kp_fsm *f = *state;
    populate(f);
    const struct kp_entity *e = kp_fsm_get(f, KP_KIND_KEY, "k1");
    const struct kp_audit_entry *a = kp_fsm_audit_entry(f, 0);
    bool done = false;
    json_set_alloc_funcs(failing_malloc, free);
    for (long n = 0; n < 1000 && !done; n++) {
        jansson_budget = n;
        json_t *j = kp_entity_json(e), *k = kp_audit_entry_json(a);
        done = j != NULL && k != NULL;
        json_decref(j);
        json_decref(k);
    }
    jansson_budget = -1;
    json_set_alloc_funcs(malloc, free);
    assert_true(done);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_render_kinds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_render_no_secrets, setup, teardown),
        cmocka_unit_test_setup_teardown(test_render_big_u64, setup, teardown),
        cmocka_unit_test_setup_teardown(test_roundtrip, setup, teardown),
        cmocka_unit_test(test_command_shape),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test_setup_teardown(test_expect_version, setup, teardown),
        cmocka_unit_test_setup_teardown(test_audit_json, setup, teardown),
        cmocka_unit_test(test_from_json_oom),
        cmocka_unit_test_setup_teardown(test_render_oom, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

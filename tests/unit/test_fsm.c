/* Unit tests of the registry state machine (raftstore/raftstore.h): every
 * op's happy path and refusals, referential integrity, expect_version, the
 * audit chain and its tamper detection, determinism across replicas and
 * across restore, snapshot round trips and hostile snapshots (bit flips,
 * truncation, rewrapped corrupt payloads; budget state included, and the
 * format-1 snapshots from before it), allocation failure at every
 * point of an apply, views read from another thread while the state
 * machine keeps applying, and the size and speed of a registry of 100,000
 * keys (printed, never asserted).
 *
 * Commands are built through the public API (struct kp_command and
 * kp_command_encode) where they can be, and by hand with msgpack-c where
 * the point is a malformed one. */
#define ZSTD_STATIC_LINKING_ONLY
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <msgpack.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <zstd.h>

#include "raftstore/raftstore.h"

#define T0 1767225600000 /* 2026-01-01T00:00:00Z */

/* --- helpers ------------------------------------------------------------- */

static int64_t now = T0;
static uint64_t next_index = 0;
static struct kp_fsm_result res;

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

/* Encode a command through the public API. */
static void encode(enum kp_op op, void *body, int64_t expect, struct kp_buf *b)
{
    char err[256];
    struct kp_command c = {.v = 1, .op = op, .ts = now++, .audit = who, .body.any = body};
    if (expect >= 0) {
        c.has_expect_version = true;
        c.expect_version = (uint64_t)expect;
    }
    kp_buf_init(b);
    assert_int_equal(kp_command_encode(&c, b, err, sizeof(err)), KP_OK);
}

static int apply_raw(struct kp_fsm *f, const void *p, size_t n)
{
    assert_int_equal(kp_fsm_apply(f, ++next_index, p, n, &res), KP_OK);
    return res.code;
}

/* Apply and return the command's result code (res has the rest). */
static int apply_x(struct kp_fsm *f, enum kp_op op, void *body, int64_t expect)
{
    struct kp_buf b;
    encode(op, body, expect, &b);
    int rc = apply_raw(f, b.data, b.len);
    kp_buf_free(&b);
    return rc;
}

static int apply(struct kp_fsm *f, enum kp_op op, void *body)
{
    return apply_x(f, op, body, -1);
}

#define assert_ok(expr)                                                                            \
    do {                                                                                           \
        int rc_ = (expr);                                                                          \
        if (rc_ != KP_OK)                                                                          \
            fail_msg("%s -> %s: %s", #expr, kp_err_name(rc_), res.message);                        \
    } while (0)

#define assert_refused(expr, code, msg)                                                            \
    do {                                                                                           \
        int rc_ = (expr);                                                                          \
        if (rc_ != (code) || strcmp(res.message, (msg)) != 0)                                      \
            fail_msg("%s -> %s '%s', wanted %s '%s'", #expr, kp_err_name(rc_), res.message,        \
                     kp_err_name(code), (msg));                                                    \
    } while (0)

static int put_provider(struct kp_fsm *f, const char *id)
{
    struct kp_provider p = {.e.id = (char *)id,
                            .kind = KP_PROVIDER_OPENAI,
                            .base_url = (char *)"https://api.openai.com/v1"};
    return apply(f, KP_OP_PUT_PROVIDER, &p);
}

static int put_key(struct kp_fsm *f, const char *id, const char *provider)
{
    char *models[] = {(char *)"gpt-4o", (char *)"gpt-4o-mini"};
    struct kp_key k = {.e.id = (char *)id,
                       .provider = (char *)provider,
                       .name = (char *)"prod",
                       .owner = (char *)"team-a",
                       .models = {models, 2},
                       .rpm = 600,
                       .tpm = 90000};
    return apply(f, KP_OP_PUT_KEY, &k);
}

static int add_secret(struct kp_fsm *f, const char *key, uint32_t version, int64_t retire_ms)
{
    char sealed[64], fp[64];
    snprintf(sealed, sizeof(sealed), "sealed:%s:v%u:XYZZY", key, version);
    snprintf(fp, sizeof(fp), "sha256:%s-%u", key, version);
    struct kp_cmd_add_secret c = {.id = (char *)key,
                                  .version = version,
                                  .sealed = {(uint8_t *)sealed, (uint32_t)strlen(sealed)},
                                  .fingerprint = fp,
                                  .last4 = (char *)"abcd",
                                  .retire_previous_after_ms = retire_ms};
    return apply(f, KP_OP_ADD_KEY_SECRET, &c);
}

static int put_pool(struct kp_fsm *f, const char *id, const char *k1, const char *k2,
                    const char *fallback)
{
    struct kp_pool_member m[2] = {{(char *)k1, 10, 0}, {(char *)k2, 5, 1}};
    struct kp_pool p = {.e.id = (char *)id,
                        .strategy = KP_POOL_WEIGHTED,
                        .members = m,
                        .nmembers = k2   ? 2
                                    : k1 ? 1
                                         : 0,
                        .fallback = (char *)fallback};
    return apply(f, KP_OP_PUT_POOL, &p);
}

static int put_tenant(struct kp_fsm *f, const char *id)
{
    struct kp_tenant t = {.e.id = (char *)id, .display_name = (char *)"Acme Corp"};
    return apply(f, KP_OP_PUT_TENANT, &t);
}

static int put_project(struct kp_fsm *f, const char *id, const char *tenant)
{
    struct kp_project p = {.e.id = (char *)id, .tenant = (char *)tenant};
    return apply(f, KP_OP_PUT_PROJECT, &p);
}

static int put_token(struct kp_fsm *f, const char *id, const char *tenant, const char *project)
{
    char *projects[] = {(char *)project};
    struct kp_token t = {.e.id = (char *)id,
                         .role = (char *)"app",
                         .tenant = (char *)tenant,
                         .projects = {projects, project ? 1 : 0},
                         .expires_at_ms = T0 + 86400000};
    memset(t.hash, 'H', sizeof(t.hash));
    return apply(f, KP_OP_PUT_TOKEN, &t);
}

static int init_cluster(struct kp_fsm *f, const char *id)
{
    struct kp_cluster c = {.e.id = (char *)id};
    memset(c.pepper, 'P', sizeof(c.pepper));
    return apply(f, KP_OP_INIT_CLUSTER, &c);
}

static int target_op(struct kp_fsm *f, enum kp_op op, const char *id)
{
    struct kp_cmd_target t = {(char *)id};
    return apply(f, op, &t);
}

/* A freeze of @target in @scope, its id built as the control API does. */
static int put_freeze(struct kp_fsm *f, int scope, const char *target, const char *reason)
{
    char id[160];
    snprintf(id, sizeof(id), "%s:%s", kp_freeze_scope_name(scope), target);
    struct kp_freeze fr = {
        .e.id = id, .scope = (uint8_t)scope, .target = (char *)target, .reason = (char *)reason};
    return apply(f, KP_OP_PUT_FREEZE, &fr);
}

/* A budget_lease of one item on pol-1's "daily" budget. */
static int lease(struct kp_fsm *f, uint64_t node, uint64_t seq, kp_nanousd settled, kp_nanousd want)
{
    struct kp_lease_item it = {(char *)"pol-1", (char *)"daily", T0, settled, false, want, false};
    struct kp_cmd_budget_lease c = {node, seq, &it, 1};
    return apply(f, KP_OP_BUDGET_LEASE, &c);
}

/* An alert as the evaluator puts it. */
static int put_alert(struct kp_fsm *f, const char *id, int severity, const char *action)
{
    struct kp_alert a = {.e.id = (char *)id,
                         .severity = (uint8_t)severity,
                         .rule = (char *)"key_invalid",
                         .subject = (char *)"key k2",
                         .message = (char *)"key k2: provider answered 401 since 00:00Z",
                         .action = (char *)action,
                         .last_value = -1};
    return apply(f, KP_OP_PUT_ALERT, &a);
}

static int deliver(struct kp_fsm *f, const char *id, int64_t started, const char *webhook,
                   int event, int state)
{
    struct kp_cmd_alert_delivery d = {.id = (char *)id,
                                      .started_ms = started,
                                      .webhook = (char *)webhook,
                                      .event = (uint8_t)event,
                                      .state = (uint8_t)state,
                                      .attempts = 5,
                                      .error =
                                          state == KP_DELIVERY_DEAD ? (char *)"HTTP 500" : NULL};
    return apply(f, KP_OP_ALERT_DELIVERY, &d);
}

static const struct kp_alert *alert_of(struct kp_fsm *f, const char *id)
{
    return (const struct kp_alert *)kp_fsm_get(f, KP_KIND_ALERT, id);
}

/* How many entries populate() applies that leave no audit entry. */
#define POPULATE_LEASES 3

static const struct kp_audit_entry *last_audit(struct kp_fsm *f)
{
    return kp_fsm_audit_entry(f, kp_fsm_audit_count(f) - 1);
}

static void snap(struct kp_fsm *f, struct kp_buf *b)
{
    char err[256];
    kp_buf_init(b);
    assert_int_equal(kp_fsm_snapshot(f, b, err, sizeof(err)), KP_OK);
}

static bool same_bytes(const struct kp_buf *a, const struct kp_buf *b)
{
    return a->len == b->len && memcmp(a->data, b->data, a->len) == 0;
}

/* A small registry touching every kind. */
static void populate(struct kp_fsm *f)
{
    assert_ok(init_cluster(f, "c-test"));
    assert_ok(put_provider(f, "openai"));
    assert_ok(put_key(f, "k1", "openai"));
    assert_ok(put_key(f, "k2", "openai"));
    assert_ok(add_secret(f, "k1", 1, 0));
    assert_ok(add_secret(f, "k2", 1, 0));
    assert_ok(add_secret(f, "k2", 2, T0 + 3600000));
    assert_ok(put_pool(f, "backup", "k2", NULL, NULL));
    assert_ok(put_pool(f, "main", "k1", "k2", "backup"));
    assert_ok(put_tenant(f, "acme"));
    assert_ok(put_project(f, "search", "acme"));
    assert_ok(put_token(f, "tk_abc", "acme", "search"));
    struct kp_price pr = {.e.id = (char *)"gpt-4o",
                          .input_per_mtok = 2500000000,
                          .cached_input_per_mtok = 1250000000,
                          .output_per_mtok = 10000000000};
    assert_ok(apply(f, KP_OP_PUT_PRICE, &pr));
    struct kp_member m = {.e.id = (char *)"n1",
                          .node_id = 1,
                          .address = (char *)"10.0.0.1:7602",
                          .role = KP_MEMBER_VOTER,
                          .meter = true};
    assert_ok(apply(f, KP_OP_PUT_MEMBER, &m));
    struct kp_budget bud = {.name = (char *)"daily",
                            .window = KP_BUDGET_DAILY,
                            .limit_nanousd = 5000000000,
                            .kind = KP_BUDGET_HARD};
    struct kp_policy pol = {.e.id = (char *)"pol-1",
                            .scope_kind = KP_SCOPE_PROJECT,
                            .scope_target = (char *)"search",
                            .rpm = 100,
                            .budgets = &bud,
                            .nbudgets = 1};
    assert_ok(apply(f, KP_OP_PUT_POLICY, &pol));
    struct kp_strpair pa[] = {{(char *)"threshold", (char *)"0.8"},
                              {(char *)"budget", (char *)"daily"}};
    struct kp_alert_rule ar = {.e.id = (char *)"ar-1", .kind = (char *)"budget", .params = {pa, 2}};
    assert_ok(apply(f, KP_OP_PUT_ALERT_RULE, &ar));
    struct kp_webhook wh = {.e.id = (char *)"wh-1", .kind = (char *)"slack", .params = {pa, 1}};
    assert_ok(apply(f, KP_OP_PUT_WEBHOOK, &wh));
    struct kp_key_health h = {.e.id = (char *)"k2",
                              .status = KP_HEALTH_RATE_LIMITED,
                              .last_error_class = (char *)"rate_limit"};
    assert_ok(apply(f, KP_OP_SET_KEY_HEALTH, &h));
    assert_ok(put_freeze(f, KP_FREEZE_FEATURE, "chat", "runaway agent, see INC-42"));
    assert_ok(put_alert(f, "key:k2:invalid", KP_ALERT_CRITICAL, "rotate key k2"));
    assert_ok(target_op(f, KP_OP_ACK_ALERT, "key:k2:invalid"));
    assert_ok(deliver(f, "key:k2:invalid", alert_of(f, "key:k2:invalid")->started_ms, "wh-1",
                      KP_ALERT_EVENT_OPEN, KP_DELIVERY_SENT));
    /* Budget state: two nodes hold grants, one settled part of its own. */
    assert_ok(lease(f, 1, 1, 0, 1000000000));
    assert_ok(lease(f, 2, 1, 0, 500000000));
    assert_ok(lease(f, 1, 2, 250000000, 0));
}

/* --- raw msgpack commands ------------------------------------------------- */

static int buf_write(void *data, const char *p, size_t n)
{
    return kp_buf_append(data, p, n);
}

static void pk_s(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str(pk, strlen(s));
    msgpack_pack_str_body(pk, s, strlen(s));
}

/* A command map with @extra more entries after v, op, ts and audit; the
 * caller packs them. */
static void raw_begin(msgpack_packer *pk, struct kp_buf *b, int64_t v, const char *op, int extra)
{
    kp_buf_init(b);
    msgpack_packer_init(pk, b, buf_write);
    msgpack_pack_map(pk, 4 + extra);
    pk_s(pk, "v");
    msgpack_pack_int64(pk, v);
    pk_s(pk, "op");
    pk_s(pk, op);
    pk_s(pk, "ts");
    msgpack_pack_int64(pk, now++);
    pk_s(pk, "audit");
    msgpack_pack_map(pk, 1);
    pk_s(pk, "actor");
    pk_s(pk, "mallory");
}

/* --- ops: happy paths and refusals -------------------------------------------------- */

/* init_cluster sets the cluster once; a second one is refused with 409 and
 * both leave an audit entry, the pepper in none of them. */
static void test_init_cluster(void **state)
{
    struct kp_fsm *f = *state;
    assert_null(kp_fsm_cluster(f));
    assert_ok(init_cluster(f, "c-prod"));
    assert_int_equal(res.version, 1);
    assert_string_equal(kp_fsm_cluster(f)->e.id, "c-prod");
    assert_int_equal(kp_fsm_cluster(f)->pepper[31], 'P');
    assert_refused(init_cluster(f, "c-other"), KP_ECONFLICT,
                   "cluster already initialized as 'c-prod'");
    assert_string_equal(kp_fsm_cluster(f)->e.id, "c-prod");
    assert_int_equal(kp_fsm_audit_count(f), 2);
    assert_string_equal(last_audit(f)->result, "refused: cluster already initialized as 'c-prod'");
    assert_string_equal(last_audit(f)->action, "init_cluster");
    assert_string_equal(last_audit(f)->actor, "alice");
    struct kp_cluster c = {.e.id = (char *)"c-x"};
    assert_refused(apply_x(f, KP_OP_INIT_CLUSTER, &c, 0), KP_EINVAL,
                   "expect_version: not accepted by init_cluster");
}

/* Providers: create, update (version +1, created kept), URL rules,
 * azure's api_version, deletion blocked by a key, 404 on a missing one. */
static void test_provider(void **state)
{
    struct kp_fsm *f = *state;
    assert_ok(put_provider(f, "openai"));
    int64_t created = kp_fsm_get(f, KP_KIND_PROVIDER, "openai")->created_ms;
    struct kp_strpair hdr[] = {{(char *)"OpenAI-Organization", (char *)"org-1"}};
    struct kp_provider p = {.e.id = (char *)"openai",
                            .kind = KP_PROVIDER_OPENAI,
                            .base_url = (char *)"https://proxy.local/v1",
                            .headers = {hdr, 1}};
    assert_ok(apply_x(f, KP_OP_PUT_PROVIDER, &p, 1));
    const struct kp_provider *got =
        (const struct kp_provider *)kp_fsm_get(f, KP_KIND_PROVIDER, "openai");
    assert_int_equal(got->e.version, 2);
    assert_int_equal(got->e.created_ms, created);
    assert_true(got->e.updated_ms > created);
    assert_string_equal(got->base_url, "https://proxy.local/v1");
    assert_string_equal(got->headers.v[0].value, "org-1");

    assert_refused(apply_x(f, KP_OP_PUT_PROVIDER, &p, 1), KP_ECONFLICT,
                   "expect_version: provider 'openai' is at version 2, not 1");
    assert_refused(apply_x(f, KP_OP_PUT_PROVIDER, &p, 0), KP_ECONFLICT,
                   "expect_version: provider 'openai' is at version 2, not 0");
    p.e.id = (char *)"new";
    assert_refused(apply_x(f, KP_OP_PUT_PROVIDER, &p, 3), KP_ECONFLICT,
                   "expect_version: provider 'new' does not exist (expected 3)");
    p.base_url = (char *)"http://127.0.0.1:9999";
    assert_refused(apply(f, KP_OP_PUT_PROVIDER, &p), KP_EINVAL,
                   "base_url: http:// needs allow_insecure (meant for loopback mocks)");
    p.allow_insecure = true;
    assert_ok(apply(f, KP_OP_PUT_PROVIDER, &p));
    p.base_url = (char *)"ftp://x";
    assert_refused(apply(f, KP_OP_PUT_PROVIDER, &p), KP_EINVAL,
                   "base_url: must start with https://");
    p.base_url = (char *)"https://x y";
    assert_refused(apply(f, KP_OP_PUT_PROVIDER, &p), KP_EINVAL,
                   "base_url: may contain only printable ASCII without spaces");
    p.base_url = (char *)"https://az.example";
    p.kind = KP_PROVIDER_AZURE_OPENAI;
    assert_refused(apply(f, KP_OP_PUT_PROVIDER, &p), KP_EINVAL,
                   "api_version: required for azure-openai");
    p.api_version = (char *)"2024-10-21";
    assert_ok(apply(f, KP_OP_PUT_PROVIDER, &p));

    assert_ok(put_key(f, "k1", "openai"));
    assert_refused(target_op(f, KP_OP_DELETE_PROVIDER, "openai"), KP_ECONFLICT,
                   "provider 'openai' is used by key 'k1' (provider)");
    assert_refused(target_op(f, KP_OP_DELETE_PROVIDER, "nope"), KP_ENOENT, "no provider 'nope'");
    assert_ok(target_op(f, KP_OP_DELETE_PROVIDER, "new"));
    assert_null(kp_fsm_get(f, KP_KIND_PROVIDER, "new"));
    assert_int_equal(kp_fsm_count(f, KP_KIND_PROVIDER), 1);
}

/* Keys: the provider must exist; metadata updates keep status and
 * secrets; secret rotation moves primary -> previous -> retired and erases
 * retired blobs; version and fingerprint rules; retire rules. */
static void test_key_secrets(void **state)
{
    struct kp_fsm *f = *state;
    assert_refused(put_key(f, "k1", "openai"), KP_EINVAL, "provider: no provider 'openai'");
    assert_ok(put_provider(f, "openai"));
    assert_ok(put_key(f, "k1", "openai"));
    const struct kp_key *k = (const struct kp_key *)kp_fsm_get(f, KP_KIND_KEY, "k1");
    assert_int_equal(k->status, KP_KEY_ACTIVE);
    assert_null(kp_key_primary(k));

    assert_ok(add_secret(f, "k1", 1, 0));
    assert_ok(add_secret(f, "k1", 2, T0 + 1000));
    k = (const struct kp_key *)kp_fsm_get(f, KP_KIND_KEY, "k1");
    assert_int_equal(k->e.version, 3);
    assert_int_equal(k->nsecrets, 2);
    assert_int_equal(k->secrets[0].state, KP_SECRET_PREVIOUS);
    assert_int_equal(k->secrets[0].retire_after_ms, T0 + 1000);
    assert_int_equal(kp_key_primary(k)->version, 2);
    assert_memory_equal(kp_key_primary(k)->sealed.p, "sealed:k1:v2:XYZZY", 18);
    assert_string_equal(last_audit(f)->result, "ok (version 2, fingerprint sha256:k1-2)");

    assert_ok(put_key(f, "k1", "openai")); /* metadata only: secrets stay */
    k = (const struct kp_key *)kp_fsm_get(f, KP_KIND_KEY, "k1");
    assert_int_equal(k->nsecrets, 2);
    assert_int_equal(kp_key_primary(k)->version, 2);

    assert_ok(add_secret(f, "k1", 3, T0 + 2000));
    k = (const struct kp_key *)kp_fsm_get(f, KP_KIND_KEY, "k1");
    assert_int_equal(k->secrets[0].state, KP_SECRET_RETIRED);
    assert_int_equal(k->secrets[0].sealed.n, 0);
    assert_string_equal(k->secrets[0].fingerprint, "sha256:k1-1");
    assert_int_equal(k->secrets[1].state, KP_SECRET_PREVIOUS);

    assert_refused(add_secret(f, "k1", 3, 0), KP_ECONFLICT,
                   "version: 3 is not above key 'k1' version 3");
    struct kp_cmd_add_secret dup = {.id = (char *)"k1",
                                    .version = 9,
                                    .sealed = {(uint8_t *)"x", 1},
                                    .fingerprint = (char *)"sha256:k1-2"};
    assert_refused(apply(f, KP_OP_ADD_KEY_SECRET, &dup), KP_ECONFLICT,
                   "fingerprint: already key 'k1' version 2");
    assert_refused(add_secret(f, "k9", 1, 0), KP_ENOENT, "no key 'k9'");

    struct kp_cmd_retire_secret r = {(char *)"k1", 3};
    assert_refused(apply(f, KP_OP_RETIRE_KEY_SECRET, &r), KP_ECONFLICT,
                   "version: 3 is the primary of key 'k1'; add a new secret first");
    r.version = 7;
    assert_refused(apply(f, KP_OP_RETIRE_KEY_SECRET, &r), KP_ENOENT,
                   "version: key 'k1' has no secret version 7");
    r.version = 2;
    assert_ok(apply(f, KP_OP_RETIRE_KEY_SECRET, &r));
    k = (const struct kp_key *)kp_fsm_get(f, KP_KIND_KEY, "k1");
    assert_int_equal(k->secrets[1].state, KP_SECRET_RETIRED);
    assert_int_equal(k->secrets[1].sealed.n, 0);
    uint64_t v = k->e.version;
    assert_ok(apply(f, KP_OP_RETIRE_KEY_SECRET, &r)); /* already retired: no change */
    assert_int_equal(kp_fsm_get(f, KP_KIND_KEY, "k1")->version, v);

    /* More versions than the key keeps: the oldest retired ones go. */
    for (uint32_t i = 4; i < 30; i++)
        assert_ok(add_secret(f, "k1", i, 0));
    k = (const struct kp_key *)kp_fsm_get(f, KP_KIND_KEY, "k1");
    assert_true(k->nsecrets <= 16);
    assert_int_equal(k->secrets[k->nsecrets - 1].version, 29);
}

/* set_key_status: disable hides the primary, enable restores it, revoke is
 * final and erases every blob. */
static void test_key_status(void **state)
{
    struct kp_fsm *f = *state;
    assert_ok(put_provider(f, "openai"));
    assert_ok(put_key(f, "k1", "openai"));
    assert_ok(add_secret(f, "k1", 1, 0));
    assert_ok(add_secret(f, "k1", 2, T0 + 99));
    struct kp_cmd_key_status s = {(char *)"k1", KP_KEY_DISABLED};
    assert_ok(apply(f, KP_OP_SET_KEY_STATUS, &s));
    assert_string_equal(last_audit(f)->result, "ok (disabled)");
    const struct kp_key *k = (const struct kp_key *)kp_fsm_get(f, KP_KIND_KEY, "k1");
    assert_null(kp_key_primary(k));
    s.status = KP_KEY_ACTIVE;
    assert_ok(apply_x(f, KP_OP_SET_KEY_STATUS, &s, k->e.version));
    k = (const struct kp_key *)kp_fsm_get(f, KP_KIND_KEY, "k1");
    assert_non_null(kp_key_primary(k));
    s.status = KP_KEY_REVOKED;
    assert_ok(apply(f, KP_OP_SET_KEY_STATUS, &s));
    k = (const struct kp_key *)kp_fsm_get(f, KP_KIND_KEY, "k1");
    for (uint32_t i = 0; i < k->nsecrets; i++) {
        assert_int_equal(k->secrets[i].sealed.n, 0);
        assert_int_equal(k->secrets[i].state, KP_SECRET_RETIRED);
    }
    s.status = KP_KEY_ACTIVE;
    assert_refused(apply(f, KP_OP_SET_KEY_STATUS, &s), KP_ECONFLICT, "key 'k1' is revoked");
    assert_refused(put_key(f, "k1", "openai"), KP_ECONFLICT, "key 'k1' is revoked");
    assert_refused(add_secret(f, "k1", 3, 0), KP_ECONFLICT, "key 'k1' is revoked");
    s.id = (char *)"zz";
    assert_refused(apply(f, KP_OP_SET_KEY_STATUS, &s), KP_ENOENT, "no key 'zz'");
    assert_ok(target_op(f, KP_OP_DELETE_KEY, "k1"));
}

/* Pools: members must be existing, distinct keys; weights are bounded;
 * fallbacks may not loop; keys and pools in use cannot be deleted. */
static void test_pool(void **state)
{
    struct kp_fsm *f = *state;
    assert_ok(put_provider(f, "openai"));
    assert_ok(put_key(f, "k1", "openai"));
    assert_ok(put_key(f, "k2", "openai"));
    assert_refused(put_pool(f, "main", "k1", "k9", NULL), KP_EINVAL, "members[1].key: no key 'k9'");
    assert_refused(put_pool(f, "main", "k1", "k1", NULL), KP_EINVAL,
                   "members[1].key: duplicate of members[0]");
    assert_refused(put_pool(f, "main", "k1", NULL, "nope"), KP_EINVAL, "fallback: no pool 'nope'");
    assert_refused(put_pool(f, "main", "k1", NULL, "main"), KP_ECONFLICT,
                   "fallback: pool 'main' falls back to itself through 'main'");
    assert_ok(put_pool(f, "backup", "k2", NULL, NULL));
    assert_ok(put_pool(f, "main", "k1", "k2", "backup"));
    assert_refused(put_pool(f, "backup", "k2", NULL, "main"), KP_ECONFLICT,
                   "fallback: pool 'backup' falls back to itself through 'main'");

    struct kp_pool_member m = {(char *)"k1", 0, 0};
    struct kp_pool p = {.e.id = (char *)"w", .members = &m, .nmembers = 1};
    assert_refused(apply(f, KP_OP_PUT_POOL, &p), KP_EINVAL, "members[0].weight: must be 1..1000");
    m.weight = 1001;
    assert_refused(apply(f, KP_OP_PUT_POOL, &p), KP_EINVAL, "members[0].weight: must be 1..1000");
    m.weight = 1;
    struct kp_downgrade d[] = {{(char *)"gpt-4o", (char *)"gpt-4o-mini"},
                               {(char *)"gpt-4o", (char *)"gpt-3.5"}};
    p.downgrades = d;
    p.ndowngrades = 2;
    assert_refused(apply(f, KP_OP_PUT_POOL, &p), KP_EINVAL,
                   "downgrades[1].from: duplicate of downgrades[0]");
    p.ndowngrades = 1;
    assert_ok(apply(f, KP_OP_PUT_POOL, &p));
    const struct kp_pool *got = (const struct kp_pool *)kp_fsm_get(f, KP_KIND_POOL, "w");
    assert_int_equal(got->strategy, KP_POOL_PRIORITY);
    assert_string_equal(got->downgrades[0].to, "gpt-4o-mini");

    assert_refused(target_op(f, KP_OP_DELETE_KEY, "k2"), KP_ECONFLICT,
                   "key 'k2' is used by pool 'backup' (members[0].key)");
    assert_refused(target_op(f, KP_OP_DELETE_POOL, "backup"), KP_ECONFLICT,
                   "pool 'backup' is used by pool 'main' (fallback)");
    assert_ok(target_op(f, KP_OP_DELETE_POOL, "main"));
    assert_ok(target_op(f, KP_OP_DELETE_POOL, "backup"));
    assert_ok(target_op(f, KP_OP_DELETE_KEY, "k2"));
    assert_refused(target_op(f, KP_OP_DELETE_POOL, "backup"), KP_ENOENT, "no pool 'backup'");
}

/* Tenants, projects and tokens: a project needs its tenant and cannot move;
 * a token's projects belong to its tenant; deletions in use are refused;
 * disable_token sets the flag. */
static void test_tenant_project_token(void **state)
{
    struct kp_fsm *f = *state;
    assert_refused(put_project(f, "search", "acme"), KP_EINVAL, "tenant: no tenant 'acme'");
    assert_ok(put_tenant(f, "acme"));
    assert_ok(put_tenant(f, "globex"));
    assert_ok(put_project(f, "search", "acme"));
    assert_ok(put_project(f, "ads", "globex"));
    assert_refused(put_project(f, "search", "globex"), KP_ECONFLICT,
                   "tenant: project 'search' belongs to tenant 'acme' and cannot move");
    assert_refused(put_token(f, "tk_1", "acme", "ads"), KP_EINVAL,
                   "projects[0]: project 'ads' belongs to tenant 'globex', not 'acme'");
    assert_refused(put_token(f, "tk_1", "acme", "nope"), KP_EINVAL,
                   "projects[0]: no project 'nope'");
    assert_ok(put_token(f, "tk_1", "acme", "search"));
    assert_refused(put_token(f, "tk_0", NULL, "ads"), KP_EINVAL, "tenant: missing");
    assert_refused(put_token(f, "tk_0", "*x", "ads"), KP_EINVAL,
                   "tenant: may contain only letters, digits and . _ : -");
    assert_ok(put_token(f, "tk_0", "*", "ads")); /* every tenant */
    assert_refused(target_op(f, KP_OP_DELETE_TENANT, "acme"), KP_ECONFLICT,
                   "tenant 'acme' is used by project 'search' (tenant)");
    assert_refused(target_op(f, KP_OP_DELETE_PROJECT, "search"), KP_ECONFLICT,
                   "project 'search' is used by token 'tk_1' (projects[0])");

    assert_ok(target_op(f, KP_OP_DISABLE_TOKEN, "tk_1"));
    const struct kp_token *t = (const struct kp_token *)kp_fsm_get(f, KP_KIND_TOKEN, "tk_1");
    assert_true(t->disabled);
    assert_int_equal(t->e.version, 2);
    assert_int_equal(t->hash[0], 'H');
    assert_refused(target_op(f, KP_OP_DISABLE_TOKEN, "tk_x"), KP_ENOENT, "no token 'tk_x'");

    assert_ok(target_op(f, KP_OP_DELETE_TOKEN, "tk_1"));
    assert_ok(target_op(f, KP_OP_DELETE_PROJECT, "search"));
    assert_ok(target_op(f, KP_OP_DELETE_TENANT, "acme"));
    assert_int_equal(kp_fsm_count(f, KP_KIND_TENANT), 1);
}

/* Policies: scope target rules, references by scope kind, unique budget
 * names; a key used by a policy cannot be deleted. */
static void test_policy(void **state)
{
    struct kp_fsm *f = *state;
    assert_ok(put_provider(f, "openai"));
    assert_ok(put_key(f, "k1", "openai"));
    struct kp_budget b[2] = {{.name = (char *)"daily",
                              .window = KP_BUDGET_DAILY,
                              .limit_nanousd = 100,
                              .kind = KP_BUDGET_HARD},
                             {.name = (char *)"daily",
                              .window = KP_BUDGET_MONTHLY,
                              .limit_nanousd = 1000,
                              .kind = KP_BUDGET_SOFT}};
    struct kp_policy p = {
        .e.id = (char *)"pol", .scope_kind = KP_SCOPE_GLOBAL, .scope_target = (char *)"k1"};
    assert_refused(apply(f, KP_OP_PUT_POLICY, &p), KP_EINVAL,
                   "scope_target: must be absent for a global policy");
    p.scope_kind = KP_SCOPE_TENANT;
    assert_refused(apply(f, KP_OP_PUT_POLICY, &p), KP_EINVAL, "scope_target: no tenant 'k1'");
    p.scope_kind = KP_SCOPE_KEY;
    p.budgets = b;
    p.nbudgets = 2;
    assert_refused(apply(f, KP_OP_PUT_POLICY, &p), KP_EINVAL,
                   "budgets[1].name: duplicate of budgets[0]");
    b[1].name = (char *)"monthly";
    b[1].limit_nanousd = -1;
    assert_refused(apply(f, KP_OP_PUT_POLICY, &p), KP_EINVAL,
                   "budgets[1].limit_nanousd: must be 0..9223372036854775807");
    b[1].limit_nanousd = 1000;
    assert_ok(apply(f, KP_OP_PUT_POLICY, &p));
    p.e.id = (char *)"pol-f";
    p.scope_kind = KP_SCOPE_FEATURE;
    p.scope_target = NULL;
    assert_refused(apply(f, KP_OP_PUT_POLICY, &p), KP_EINVAL,
                   "scope_target: required for a feature policy");
    p.scope_target = (char *)"summarize";
    assert_ok(apply(f, KP_OP_PUT_POLICY, &p));
    assert_refused(target_op(f, KP_OP_DELETE_KEY, "k1"), KP_ECONFLICT,
                   "key 'k1' is used by policy 'pol' (scope_target)");
    assert_ok(target_op(f, KP_OP_DELETE_POLICY, "pol"));
    assert_ok(target_op(f, KP_OP_DELETE_KEY, "k1"));
}

static void check_apply_oom(struct kp_fsm *f, struct kp_fsm *ref, const struct kp_buf *cmd);

/* Freezes: tenants and features are free names, projects, pools, keys and
 * tokens must exist and cannot be deleted while frozen; the id is the
 * scope and target; the reason is required, bounded and in the audit
 * entry with the actor; a second put changes the reason and keeps the
 * time; delete lifts it, once. */
static void test_freeze(void **state)
{
    struct kp_fsm *f = *state;
    assert_ok(put_provider(f, "openai"));
    assert_ok(put_key(f, "k1", "openai"));
    assert_ok(put_pool(f, "main", "k1", NULL, NULL));

    int64_t t_frozen = now;
    assert_ok(put_freeze(f, KP_FREEZE_TENANT, "acme", "runaway agent, see INC-42"));
    assert_int_equal(res.version, 1);
    const struct kp_freeze *fr =
        (const struct kp_freeze *)kp_fsm_get(f, KP_KIND_FREEZE, "tenant:acme");
    assert_non_null(fr);
    assert_int_equal(fr->scope, KP_FREEZE_TENANT);
    assert_string_equal(fr->target, "acme");
    assert_string_equal(fr->reason, "runaway agent, see INC-42");
    assert_string_equal(fr->frozen_by, "alice");
    assert_int_equal(fr->e.created_ms, t_frozen);
    const struct kp_audit_entry *ae = last_audit(f);
    assert_string_equal(ae->action, "put_freeze");
    assert_string_equal(ae->target, "tenant:acme");
    assert_string_equal(ae->actor, "alice");
    assert_string_equal(ae->result, "ok (frozen: runaway agent, see INC-42)");
    assert_ok(put_freeze(f, KP_FREEZE_FEATURE, "summarize", "cost spike"));

    /* A second put replaces the reason; the freeze dates from the first. */
    assert_ok(put_freeze(f, KP_FREEZE_TENANT, "acme", "still looping"));
    fr = (const struct kp_freeze *)kp_fsm_get(f, KP_KIND_FREEZE, "tenant:acme");
    assert_int_equal(fr->e.version, 2);
    assert_int_equal(fr->e.created_ms, t_frozen);
    assert_string_equal(fr->reason, "still looping");
    struct kp_freeze again = {.e.id = (char *)"tenant:acme",
                              .scope = KP_FREEZE_TENANT,
                              .target = (char *)"acme",
                              .reason = (char *)"x"};
    assert_refused(apply_x(f, KP_OP_PUT_FREEZE, &again, 0), KP_ECONFLICT,
                   "expect_version: freeze 'tenant:acme' is at version 2, not 0");

    /* What must exist, and what must match. */
    assert_refused(put_freeze(f, KP_FREEZE_POOL, "mian", "typo"), KP_EINVAL,
                   "target: no pool 'mian'");
    assert_refused(put_freeze(f, KP_FREEZE_PROJECT, "web", "x"), KP_EINVAL,
                   "target: no project 'web'");
    assert_refused(put_freeze(f, KP_FREEZE_KEY, "k9", "x"), KP_EINVAL, "target: no key 'k9'");
    assert_refused(put_freeze(f, KP_FREEZE_TOKEN, "tk_nope", "x"), KP_EINVAL,
                   "target: no token 'tk_nope'");
    struct kp_freeze bad = {.e.id = (char *)"tenant:globex",
                            .scope = KP_FREEZE_FEATURE,
                            .target = (char *)"globex",
                            .reason = (char *)"x"};
    assert_refused(apply(f, KP_OP_PUT_FREEZE, &bad), KP_EINVAL,
                   "id: must be 'feature:globex' (scope:target)");
    bad.e.id = (char *)"feature:globe";
    assert_refused(apply(f, KP_OP_PUT_FREEZE, &bad), KP_EINVAL,
                   "id: must be 'feature:globex' (scope:target)");
    bad.e.id = (char *)"feature:globex";
    bad.reason = NULL;
    assert_refused(apply(f, KP_OP_PUT_FREEZE, &bad), KP_EINVAL, "reason: missing");
    bad.reason = (char *)"two\nlines";
    assert_refused(apply(f, KP_OP_PUT_FREEZE, &bad), KP_EINVAL,
                   "reason: must not contain control characters");
    char longer[KP_FREEZE_REASON_MAX + 2];
    memset(longer, 'r', sizeof(longer) - 1);
    longer[sizeof(longer) - 1] = '\0';
    bad.reason = longer;
    assert_refused(apply(f, KP_OP_PUT_FREEZE, &bad), KP_EINVAL, "reason: longer than 500 bytes");
    assert_int_equal(kp_fsm_count(f, KP_KIND_FREEZE), 2);

    /* A frozen pool (or key) stays until it is unfrozen. */
    assert_ok(put_freeze(f, KP_FREEZE_POOL, "main", "provider outage"));
    assert_ok(put_freeze(f, KP_FREEZE_KEY, "k1", "leaked in a log"));
    assert_refused(target_op(f, KP_OP_DELETE_POOL, "main"), KP_ECONFLICT,
                   "pool 'main' is used by freeze 'pool:main' (target)");
    assert_ok(target_op(f, KP_OP_DELETE_FREEZE, "pool:main"));
    assert_ok(target_op(f, KP_OP_DELETE_POOL, "main"));
    assert_refused(target_op(f, KP_OP_DELETE_KEY, "k1"), KP_ECONFLICT,
                   "key 'k1' is used by freeze 'key:k1' (target)");

    /* The view finds a freeze by scope and target. */
    struct kp_view *v = kp_fsm_view_build(f);
    assert_int_equal(kp_view_count(v, KP_KIND_FREEZE), 3);
    assert_string_equal(kp_view_freeze(v, KP_FREEZE_TENANT, "acme")->reason, "still looping");
    assert_non_null(kp_view_freeze(v, KP_FREEZE_KEY, "k1"));
    assert_null(kp_view_freeze(v, KP_FREEZE_PROJECT, "acme"));
    assert_null(kp_view_freeze(v, KP_FREEZE_TENANT, ""));
    assert_null(kp_view_freeze(v, 99, "acme"));

    /* Unfreezing is audited with the reason it had, and happens once. */
    assert_ok(target_op(f, KP_OP_DELETE_FREEZE, "tenant:acme"));
    assert_string_equal(last_audit(f)->result, "ok (unfrozen; the reason was: still looping)");
    assert_string_equal(last_audit(f)->target, "tenant:acme");
    assert_refused(target_op(f, KP_OP_DELETE_FREEZE, "tenant:acme"), KP_ENOENT,
                   "no freeze 'tenant:acme'");
    assert_non_null(kp_view_freeze(v, KP_FREEZE_TENANT, "acme")); /* the old view kept it */
    kp_view_release(v);
    v = kp_fsm_view_build(f);
    assert_null(kp_view_freeze(v, KP_FREEZE_TENANT, "acme"));
    kp_view_release(v);

    /* A reason longer than the audit detail is cut on a whole character,
     * and the chain and the snapshot still hold it. */
    char wide[KP_FREEZE_REASON_MAX + 1] = "";
    for (int i = 0; i < KP_FREEZE_REASON_MAX / 2; i++)
        strcat(wide, "\xc3\xa9"); /* e acute, two bytes */
    assert_ok(put_freeze(f, KP_FREEZE_TENANT, "acme", wide));
    const char *result = last_audit(f)->result;
    assert_true(strncmp(result, "ok (frozen: \xc3\xa9", 14) == 0);
    assert_int_equal((strlen(result) - strlen("ok (frozen: )")) % 2, 0);
    struct kp_buf s1, s2;
    char err[256];
    snap(f, &s1);
    struct kp_fsm *g = kp_fsm_new();
    if (kp_fsm_restore(g, s1.data, s1.len, 0, err, sizeof(err)) != KP_OK)
        fail_msg("restore: %s", err);
    snap(g, &s2);
    assert_true(same_bytes(&s1, &s2));
    fr = (const struct kp_freeze *)kp_fsm_get(g, KP_KIND_FREEZE, "tenant:acme");
    assert_string_equal(fr->reason, wide);
    assert_string_equal(fr->frozen_by, "alice");
    kp_buf_free(&s1);
    kp_buf_free(&s2);

    /* Freezing and unfreezing under allocation failure, with a view held
     * (g, restored from f, is the replica that never fails). */
    v = kp_fsm_view_build(f);
    struct kp_buf c;
    encode(KP_OP_PUT_FREEZE,
           &(struct kp_freeze){.e.id = (char *)"feature:chat",
                               .scope = KP_FREEZE_FEATURE,
                               .target = (char *)"chat",
                               .reason = (char *)"spend spike"},
           -1, &c);
    check_apply_oom(f, g, &c);
    kp_buf_free(&c);
    encode(KP_OP_DELETE_FREEZE, &(struct kp_cmd_target){(char *)"key:k1"}, -1, &c);
    check_apply_oom(f, g, &c);
    kp_buf_free(&c);
    kp_view_release(v);
    assert_int_equal(kp_fsm_count(f, KP_KIND_FREEZE), 3);
    kp_fsm_free(g);
}

/* Freeze commands are checked as they are decoded: the scope is one of
 * six, and who froze is the registry's to say. */
static void test_freeze_decode(void **state)
{
    struct kp_fsm *f = *state;
    struct kp_buf b;
    msgpack_packer pk;
    raw_begin(&pk, &b, 1, "put_freeze", 4);
    pk_s(&pk, "id");
    pk_s(&pk, "global:x");
    pk_s(&pk, "scope");
    pk_s(&pk, "global");
    pk_s(&pk, "target");
    pk_s(&pk, "x");
    pk_s(&pk, "reason");
    pk_s(&pk, "because");
    assert_refused(apply_raw(f, b.data, b.len), KP_EINVAL,
                   "scope: must be one of tenant|project|feature|pool|key|token");
    kp_buf_free(&b);
    raw_begin(&pk, &b, 1, "put_freeze", 5);
    pk_s(&pk, "id");
    pk_s(&pk, "feature:x");
    pk_s(&pk, "scope");
    pk_s(&pk, "feature");
    pk_s(&pk, "target");
    pk_s(&pk, "x");
    pk_s(&pk, "reason");
    pk_s(&pk, "because");
    pk_s(&pk, "frozen_by");
    pk_s(&pk, "someone-else");
    assert_refused(apply_raw(f, b.data, b.len), KP_EINVAL,
                   "frozen_by: is set by the registry, not by commands");
    kp_buf_free(&b);
    raw_begin(&pk, &b, 1, "delete_freeze", 1);
    pk_s(&pk, "id");
    pk_s(&pk, "feature:x");
    assert_refused(apply_raw(f, b.data, b.len), KP_ENOENT, "no freeze 'feature:x'");
    kp_buf_free(&b);
    assert_string_equal(last_audit(f)->action, "delete_freeze");
    assert_string_equal(last_audit(f)->actor, "mallory");
    assert_int_equal(kp_fsm_count(f, KP_KIND_FREEZE), 0);
}

/* Prices, members, alert rules and webhooks: happy paths, ranges,
 * node_id uniqueness, removal. */
static void test_price_member_alerts(void **state)
{
    struct kp_fsm *f = *state;
    struct kp_price pr = {
        .e.id = (char *)"meta-llama/Llama-3-70b@2024", .input_per_mtok = 1, .output_per_mtok = -5};
    assert_refused(apply(f, KP_OP_PUT_PRICE, &pr), KP_EINVAL,
                   "output_per_mtok: must be 0..9223372036854775807");
    pr.output_per_mtok = 5;
    assert_ok(apply(f, KP_OP_PUT_PRICE, &pr));
    assert_ok(target_op(f, KP_OP_DELETE_PRICE, "meta-llama/Llama-3-70b@2024"));

    struct kp_member m = {.e.id = (char *)"n1", .node_id = 1, .address = (char *)"10.0.0.1:7602"};
    assert_ok(apply(f, KP_OP_PUT_MEMBER, &m));
    m.e.id = (char *)"n2";
    assert_refused(apply(f, KP_OP_PUT_MEMBER, &m), KP_ECONFLICT,
                   "node_id: 1 is already member 'n1'");
    /* Another node cannot take n1's name. */
    m.e.id = (char *)"n1";
    m.node_id = 2;
    assert_refused(apply(f, KP_OP_PUT_MEMBER, &m), KP_ECONFLICT,
                   "id: member 'n1' is node 1; give node 2 another name (node_name)");
    m.e.id = (char *)"n2";
    m.node_id = 0;
    assert_refused(apply(f, KP_OP_PUT_MEMBER, &m), KP_EINVAL, "node_id: must be at least 1");
    m.node_id = 2;
    m.role = KP_MEMBER_STANDBY;
    assert_ok(apply(f, KP_OP_PUT_MEMBER, &m));
    assert_ok(target_op(f, KP_OP_REMOVE_MEMBER, "n1"));
    assert_refused(target_op(f, KP_OP_REMOVE_MEMBER, "n1"), KP_ENOENT, "no member 'n1'");

    struct kp_strpair pa[] = {{(char *)"url", (char *)"https://hooks.example/x"}};
    struct kp_webhook wh = {.e.id = (char *)"wh", .kind = (char *)"generic", .params = {pa, 1}};
    assert_ok(apply(f, KP_OP_PUT_WEBHOOK, &wh));
    struct kp_alert_rule ar = {.e.id = (char *)"ar"};
    assert_refused(apply(f, KP_OP_PUT_ALERT_RULE, &ar), KP_EINVAL, "kind: missing");
    struct kp_strpair bad[] = {{(char *)"a b", (char *)"x"}};
    ar.kind = (char *)"error_rate";
    ar.params = (struct kp_strmap){bad, 1};
    assert_refused(apply(f, KP_OP_PUT_ALERT_RULE, &ar), KP_EINVAL,
                   "params: may contain only letters, digits and . _ : -");
    struct kp_strpair dup[] = {{(char *)"w", (char *)"1"}, {(char *)"w", (char *)"2"}};
    ar.params = (struct kp_strmap){dup, 2};
    assert_refused(apply(f, KP_OP_PUT_ALERT_RULE, &ar), KP_EINVAL, "params: key 'w' appears twice");
    ar.params = (struct kp_strmap){pa, 1};
    assert_ok(apply(f, KP_OP_PUT_ALERT_RULE, &ar));
    assert_string_equal(
        ((const struct kp_alert_rule *)kp_fsm_get(f, KP_KIND_ALERT_RULE, "ar"))->params.v[0].value,
        "https://hooks.example/x");
    assert_ok(target_op(f, KP_OP_DELETE_WEBHOOK, "wh"));
    assert_ok(target_op(f, KP_OP_DELETE_ALERT_RULE, "ar"));
    assert_int_equal(kp_fsm_count(f, KP_KIND_WEBHOOK), 0);
}

/* Alerts: an episode opens with the command's ts, is updated in place
 * while open, acked once, resolved once, and a put after the resolve
 * starts a new episode with no ack and no delivery records; delivery
 * records name their episode and event; every step is audited. */
static void test_alerts(void **state)
{
    struct kp_fsm *f = *state;
    const char *id = "key:k1:invalid";
    int64_t t_open = now;
    assert_ok(put_alert(f, id, KP_ALERT_CRITICAL, "rotate key k1"));
    const struct kp_alert *a = alert_of(f, id);
    assert_int_equal(a->e.version, 1);
    assert_int_equal(a->started_ms, t_open);
    assert_int_equal(a->resolved_ms, 0);
    assert_null(a->acked_by);
    assert_string_equal(last_audit(f)->action, "put_alert");
    assert_string_equal(last_audit(f)->result, "ok (opened, critical)");

    /* Updated while open: the start stays. */
    assert_ok(put_alert(f, id, KP_ALERT_WARNING, "rotate key k1 now"));
    a = alert_of(f, id);
    assert_int_equal(a->e.version, 2);
    assert_int_equal(a->started_ms, t_open);
    assert_int_equal(a->severity, KP_ALERT_WARNING);
    assert_string_equal(a->action, "rotate key k1 now");
    assert_string_equal(last_audit(f)->result, "ok (updated, warning)");

    /* Ack: the actor and time; a second ack keeps the first. */
    assert_refused(target_op(f, KP_OP_ACK_ALERT, "nope"), KP_ENOENT, "no alert 'nope'");
    int64_t t_ack = now;
    assert_ok(target_op(f, KP_OP_ACK_ALERT, id));
    assert_string_equal(alert_of(f, id)->acked_by, "alice");
    assert_int_equal(alert_of(f, id)->acked_ms, t_ack);
    assert_ok(target_op(f, KP_OP_ACK_ALERT, id));
    assert_int_equal(alert_of(f, id)->e.version, 3);
    assert_string_equal(last_audit(f)->result, "ok (already acknowledged by alice)");

    /* Deliveries: of this episode only; a resolve only once resolved. */
    char want[200];
    snprintf(want, sizeof(want),
             "started_ms: alert 'key:k1:invalid' is in the episode that started at %lld, not %lld",
             (long long)t_open, (long long)t_open + 1);
    assert_refused(deliver(f, id, t_open + 1, "wh", KP_ALERT_EVENT_OPEN, KP_DELIVERY_SENT),
                   KP_ECONFLICT, want);
    assert_refused(deliver(f, id, t_open, "wh", KP_ALERT_EVENT_RESOLVED, KP_DELIVERY_SENT),
                   KP_ECONFLICT, "event: alert 'key:k1:invalid' is not resolved");
    assert_ok(deliver(f, id, t_open, "wh", KP_ALERT_EVENT_OPEN, KP_DELIVERY_DEAD));
    assert_ok(deliver(f, id, t_open, "wh", KP_ALERT_EVENT_OPEN, KP_DELIVERY_SENT));
    a = alert_of(f, id);
    assert_int_equal(a->ndeliveries, 1); /* replaced, not appended */
    assert_int_equal(a->deliveries[0].state, KP_DELIVERY_SENT);
    assert_null(a->deliveries[0].error);
    assert_string_equal(last_audit(f)->result, "ok (open to webhook wh: sent after 5 attempts)");
    struct kp_buf b;
    struct kp_cmd_alert_delivery d = {
        .id = (char *)id, .started_ms = t_open, .webhook = (char *)"wh"};
    encode(KP_OP_ALERT_DELIVERY, &d, 3, &b);
    assert_refused(apply_raw(f, b.data, b.len), KP_EINVAL,
                   "expect_version: not accepted by alert_delivery");
    kp_buf_free(&b);

    /* Resolve: once. */
    struct kp_cmd_resolve_alert r = {.id = (char *)id, .last_value = 7};
    int64_t t_res = now;
    assert_ok(apply(f, KP_OP_RESOLVE_ALERT, &r));
    a = alert_of(f, id);
    assert_int_equal(a->resolved_ms, t_res);
    assert_int_equal(a->last_value, 7);
    assert_refused(apply(f, KP_OP_RESOLVE_ALERT, &r), KP_ECONFLICT,
                   "alert 'key:k1:invalid' is already resolved");
    assert_ok(deliver(f, id, t_open, "wh", KP_ALERT_EVENT_RESOLVED, KP_DELIVERY_SENT));
    assert_int_equal(alert_of(f, id)->ndeliveries, 2);

    /* A new episode. */
    int64_t t_again = now;
    assert_ok(put_alert(f, id, KP_ALERT_CRITICAL, "rotate key k1"));
    a = alert_of(f, id);
    assert_int_equal(a->started_ms, t_again);
    assert_int_equal(a->resolved_ms, 0);
    assert_null(a->acked_by);
    assert_int_equal(a->acked_ms, 0);
    assert_int_equal(a->ndeliveries, 0);
    assert_int_equal(a->e.created_ms, t_open);
    assert_string_equal(last_audit(f)->result, "ok (opened, critical)");

    /* Field checks of the decoder. */
    struct kp_alert bad = {
        .e.id = (char *)"x", .rule = (char *)"r", .subject = (char *)"s", .action = (char *)"a"};
    assert_refused(apply(f, KP_OP_PUT_ALERT, &bad), KP_EINVAL, "message: missing");
    msgpack_packer pk;
    raw_begin(&pk, &b, 1, "put_alert", 6);
    pk_s(&pk, "id");
    pk_s(&pk, "x");
    pk_s(&pk, "severity");
    pk_s(&pk, "fatal");
    pk_s(&pk, "rule");
    pk_s(&pk, "r");
    pk_s(&pk, "subject");
    pk_s(&pk, "s");
    pk_s(&pk, "message");
    pk_s(&pk, "m");
    pk_s(&pk, "action");
    pk_s(&pk, "a");
    assert_refused(apply_raw(f, b.data, b.len), KP_EINVAL,
                   "severity: must be one of info|warning|critical");
    kp_buf_free(&b);
    raw_begin(&pk, &b, 1, "put_alert", 2);
    pk_s(&pk, "id");
    pk_s(&pk, "x");
    pk_s(&pk, "started_ms");
    msgpack_pack_int64(&pk, 5);
    assert_refused(apply_raw(f, b.data, b.len), KP_EINVAL,
                   "started_ms: is set by the registry, not by commands");
    kp_buf_free(&b);
}

/* At most KP_ALERTS_RESOLVED_MAX resolved alerts stay: each resolve
 * beyond drops the oldest resolved one (by resolved_ms, then id), the
 * same on every replica and across a snapshot; open ones are never
 * dropped. */
static void test_alerts_bounded(void **state)
{
    struct kp_fsm *f = *state;
    char id[32];
    assert_ok(put_alert(f, "still-open", KP_ALERT_INFO, "wait"));
    for (int i = 0; i < KP_ALERTS_RESOLVED_MAX + 5; i++) {
        snprintf(id, sizeof(id), "a-%04d", i);
        assert_ok(put_alert(f, id, KP_ALERT_INFO, "wait"));
        struct kp_cmd_resolve_alert r = {.id = id};
        assert_ok(apply(f, KP_OP_RESOLVE_ALERT, &r));
    }
    assert_int_equal(kp_fsm_count(f, KP_KIND_ALERT), KP_ALERTS_RESOLVED_MAX + 1);
    assert_null(alert_of(f, "a-0004"));
    assert_non_null(alert_of(f, "a-0005"));
    assert_non_null(alert_of(f, "still-open"));
    assert_string_equal(last_audit(f)->result,
                        "ok (resolved; 1 older resolved alerts dropped, the last 'a-0004')");
    struct kp_buf s1, s2;
    char err[256];
    snap(f, &s1);
    struct kp_fsm *g = kp_fsm_new();
    assert_int_equal(kp_fsm_restore(g, s1.data, s1.len, 0, err, sizeof(err)), KP_OK);
    snap(g, &s2);
    assert_true(same_bytes(&s1, &s2));
    struct kp_cmd_resolve_alert r = {.id = (char *)"still-open"};
    assert_ok(apply(g, KP_OP_RESOLVE_ALERT, &r));
    assert_null(alert_of(g, "a-0005"));
    kp_fsm_free(g);
    kp_buf_free(&s1);
    kp_buf_free(&s2);
}

/* Key health: the key must exist; last_change_ms moves only when the status
 * changes; deleting the key removes its health. */
static void test_key_health(void **state)
{
    struct kp_fsm *f = *state;
    struct kp_key_health h = {
        .e.id = (char *)"k1", .status = KP_HEALTH_DEGRADED, .last_error_class = (char *)"server"};
    assert_refused(apply(f, KP_OP_SET_KEY_HEALTH, &h), KP_ENOENT, "no key 'k1'");
    assert_ok(put_provider(f, "openai"));
    assert_ok(put_key(f, "k1", "openai"));
    int64_t t1 = now;
    assert_ok(apply(f, KP_OP_SET_KEY_HEALTH, &h));
    assert_ok(apply(f, KP_OP_SET_KEY_HEALTH, &h));
    const struct kp_key_health *got =
        (const struct kp_key_health *)kp_fsm_get(f, KP_KIND_KEY_HEALTH, "k1");
    assert_int_equal(got->e.version, 2);
    assert_int_equal(got->last_change_ms, t1);
    h.status = KP_HEALTH_HEALTHY;
    int64_t t2 = now;
    assert_ok(apply_x(f, KP_OP_SET_KEY_HEALTH, &h, 2));
    got = (const struct kp_key_health *)kp_fsm_get(f, KP_KIND_KEY_HEALTH, "k1");
    assert_int_equal(got->last_change_ms, t2);
    assert_int_equal(kp_fsm_get(f, KP_KIND_KEY, "k1")->version, 1); /* key untouched */
    assert_ok(target_op(f, KP_OP_DELETE_KEY, "k1"));
    assert_null(kp_fsm_get(f, KP_KIND_KEY_HEALTH, "k1"));
}

static int set_balance(struct kp_fsm *f, const char *key, kp_nanousd credit, int64_t since)
{
    struct kp_cmd_set_balance c = {.id = (char *)key, .credit = credit, .since_ms = since};
    return apply(f, KP_OP_SET_KEY_BALANCE, &c);
}

static int topup(struct kp_fsm *f, const char *key, kp_nanousd amount, const char *note)
{
    struct kp_cmd_add_topup c = {.id = (char *)key, .amount = amount, .note = (char *)note};
    return apply(f, KP_OP_ADD_KEY_TOPUP, &c);
}

static const struct kp_key_balance *balance_of(struct kp_fsm *f, const char *key)
{
    return (const struct kp_key_balance *)kp_fsm_get(f, KP_KIND_KEY_BALANCE, key);
}

/* Balances: the key must exist; set records the credit and since_ms (the
 * command's ts when 0), a top-up adds to it with who, when and the note,
 * and is refused without a balance or past the bound; at most
 * KP_BALANCE_TOPUPS_MAX top-ups stay (the oldest dropped); set again
 * forgets them; every change is audited; deleting the key removes its
 * balance. */
static void test_key_balance(void **state)
{
    struct kp_fsm *f = *state;
    assert_refused(set_balance(f, "k1", 1000000000, 0), KP_ENOENT, "no key 'k1'");
    assert_ok(put_provider(f, "openai"));
    assert_ok(put_key(f, "k1", "openai"));
    assert_refused(topup(f, "k1", 5, NULL), KP_ENOENT,
                   "key 'k1' has no balance: set its credit first");
    int64_t t1 = now;
    assert_ok(set_balance(f, "k1", 1000000000, 0));
    const struct kp_key_balance *b = balance_of(f, "k1");
    assert_non_null(b);
    assert_int_equal(b->credit, 1000000000);
    assert_int_equal(b->since_ms, t1);
    assert_int_equal(b->e.version, 1);
    assert_int_equal(b->ntopups, 0);
    assert_string_equal(last_audit(f)->action, "set_key_balance");
    assert_string_equal(last_audit(f)->target, "k1");
    char want[128];
    snprintf(want, sizeof(want), "ok (credit 1000000000 nano-USD since %lld)", (long long)t1);
    assert_string_equal(last_audit(f)->result, want);

    int64_t t2 = now;
    assert_ok(topup(f, "k1", 500000000, "March invoice"));
    b = balance_of(f, "k1");
    assert_int_equal(b->credit, 1500000000);
    assert_int_equal(b->since_ms, t1);
    assert_int_equal(b->e.version, 2);
    assert_int_equal(b->ntopups, 1);
    assert_int_equal(b->topups[0].amount, 500000000);
    assert_int_equal(b->topups[0].at_ms, t2);
    assert_string_equal(b->topups[0].by, "alice");
    assert_string_equal(b->topups[0].note, "March invoice");
    assert_string_equal(last_audit(f)->action, "add_key_topup");
    assert_string_equal(last_audit(f)->result,
                        "ok (topped up 500000000 nano-USD, credit 1500000000)");
    assert_refused(apply_x(f, KP_OP_ADD_KEY_TOPUP,
                           &(struct kp_cmd_add_topup){.id = (char *)"k1", .amount = 1}, 1),
                   KP_ECONFLICT, "expect_version: balance of key 'k1' is at version 2, not 1");
    assert_refused(topup(f, "k1", KP_BALANCE_CREDIT_MAX, NULL), KP_EINVAL,
                   "amount_nanousd: the credit would pass 1000000000000000000 nano-USD");

    /* The oldest top-ups go beyond the bound; the credit keeps them. */
    for (int i = 0; i < KP_BALANCE_TOPUPS_MAX + 3; i++)
        assert_ok(topup(f, "k1", 1 + i, NULL));
    b = balance_of(f, "k1");
    assert_int_equal(b->ntopups, KP_BALANCE_TOPUPS_MAX);
    assert_int_equal(b->topups[0].amount, 4);
    assert_null(b->topups[0].note);
    assert_int_equal(b->topups[KP_BALANCE_TOPUPS_MAX - 1].amount, KP_BALANCE_TOPUPS_MAX + 3);
    kp_nanousd sum = 0;
    for (int i = 0; i < KP_BALANCE_TOPUPS_MAX + 3; i++)
        sum += 1 + i;
    assert_int_equal(b->credit, 1500000000 + sum);

    /* A snapshot carries the balance and its top-ups. */
    struct kp_buf s1, s2;
    char err[256];
    snap(f, &s1);
    struct kp_fsm *g = kp_fsm_new();
    if (kp_fsm_restore(g, s1.data, s1.len, 0, err, sizeof(err)) != KP_OK)
        fail_msg("restore: %s", err);
    snap(g, &s2);
    assert_true(same_bytes(&s1, &s2));
    assert_int_equal(balance_of(g, "k1")->credit, b->credit);
    assert_int_equal(balance_of(g, "k1")->ntopups, KP_BALANCE_TOPUPS_MAX);
    kp_buf_free(&s1);
    kp_buf_free(&s2);

    /* Under allocation failure, with a view held, a top-up and a set leave
     * the state as it was, then match the replica that never failed. */
    struct kp_view *v = kp_fsm_view_build(f);
    struct kp_buf c;
    encode(KP_OP_ADD_KEY_TOPUP,
           &(struct kp_cmd_add_topup){.id = (char *)"k1", .amount = 7, .note = (char *)"n"}, -1,
           &c);
    check_apply_oom(f, g, &c);
    kp_buf_free(&c);
    encode(KP_OP_SET_KEY_BALANCE,
           &(struct kp_cmd_set_balance){.id = (char *)"k1", .credit = 3, .since_ms = T0}, -1, &c);
    check_apply_oom(f, g, &c);
    kp_buf_free(&c);
    kp_view_release(v);
    kp_fsm_free(g);

    /* Set again: credit and since replaced, top-ups forgotten. */
    b = balance_of(f, "k1");
    assert_int_equal(b->credit, 3);
    assert_int_equal(b->since_ms, T0);
    assert_int_equal(b->ntopups, 0);
    assert_int_equal(b->e.created_ms, t1);

    assert_ok(target_op(f, KP_OP_DELETE_KEY_BALANCE, "k1"));
    assert_null(balance_of(f, "k1"));
    assert_refused(target_op(f, KP_OP_DELETE_KEY_BALANCE, "k1"), KP_ENOENT, "no key_balance 'k1'");
    assert_ok(set_balance(f, "k1", 1, 0));
    assert_ok(target_op(f, KP_OP_DELETE_KEY, "k1"));
    assert_null(balance_of(f, "k1"));
}

/* Balance commands are checked as they are decoded: a credit is never
 * negative, a top-up is positive, and the note is bounded text. */
static void test_key_balance_decode(void **state)
{
    struct kp_fsm *f = *state;
    struct kp_buf b;
    msgpack_packer pk;
    raw_begin(&pk, &b, 1, "set_key_balance", 2);
    pk_s(&pk, "id");
    pk_s(&pk, "k1");
    pk_s(&pk, "credit_nanousd");
    msgpack_pack_int64(&pk, -1);
    assert_int_equal(apply_raw(f, b.data, b.len), KP_EINVAL);
    assert_memory_equal(res.message, "credit_nanousd: must be", 23);
    kp_buf_free(&b);
    raw_begin(&pk, &b, 1, "add_key_topup", 2);
    pk_s(&pk, "id");
    pk_s(&pk, "k1");
    pk_s(&pk, "amount_nanousd");
    msgpack_pack_int64(&pk, 0);
    assert_int_equal(apply_raw(f, b.data, b.len), KP_EINVAL);
    assert_memory_equal(res.message, "amount_nanousd: must be", 23);
    kp_buf_free(&b);
    raw_begin(&pk, &b, 1, "add_key_topup", 1);
    pk_s(&pk, "id");
    pk_s(&pk, "k1");
    assert_int_equal(apply_raw(f, b.data, b.len), KP_EINVAL);
    assert_memory_equal(res.message, "amount_nanousd: ", 16);
    kp_buf_free(&b);
    assert_string_equal(last_audit(f)->action, "add_key_topup");
    assert_int_equal(kp_fsm_count(f, KP_KIND_KEY_BALANCE), 0);
}

/* audit_only records a denied attempt as given, and nothing else. */
static void test_audit_only(void **state)
{
    struct kp_fsm *f = *state;
    struct kp_cmd_audit_only a = {(char *)"put_key", (char *)"k-prod-1",
                                  (char *)"denied: role viewer lacks change"};
    assert_ok(apply(f, KP_OP_AUDIT_ONLY, &a));
    const struct kp_audit_entry *e = last_audit(f);
    assert_int_equal(e->seq, 1);
    assert_string_equal(e->action, "put_key");
    assert_string_equal(e->target, "k-prod-1");
    assert_string_equal(e->result, "denied: role viewer lacks change");
    assert_string_equal(e->request_id, "req-1");
    assert_string_equal(e->source, "127.0.0.1");
    assert_int_equal(kp_fsm_count(f, KP_KIND_KEY), 0);
    a.result = NULL;
    assert_refused(apply(f, KP_OP_AUDIT_ONLY, &a), KP_EINVAL, "result: missing");
    assert_string_equal(last_audit(f)->result, "refused: result: missing");
    assert_string_equal(last_audit(f)->action, "audit_only");
}

/* rewrap_secrets replaces every live blob at once, and refuses a list that
 * misses one, repeats one, or was read from an older key version. */
static void test_rewrap(void **state)
{
    struct kp_fsm *f = *state;
    populate(f); /* k1 v1 primary; k2 v1 previous, v2 primary */
    struct kp_rewrap_item it[3] = {
        {(char *)"k1", 2, 1, {(uint8_t *)"NEW1", 4}},
        {(char *)"k2", 3, 1, {(uint8_t *)"NEW2", 4}},
        {(char *)"k2", 3, 2, {(uint8_t *)"NEW3", 4}},
    };
    struct kp_cmd_rewrap r = {it, 2, NULL};
    assert_refused(apply(f, KP_OP_REWRAP_SECRETS, &r), KP_ECONFLICT,
                   "secrets: key 'k2' version 2 is missing (a rewrap covers every live secret)");
    r.nsecrets = 3;
    it[2].version = 1;
    assert_refused(apply(f, KP_OP_REWRAP_SECRETS, &r), KP_EINVAL,
                   "secrets[2]: duplicate of secrets[1]");
    it[2].version = 2;
    it[0].key_version = 1;
    assert_refused(apply(f, KP_OP_REWRAP_SECRETS, &r), KP_ECONFLICT,
                   "secrets[0].key_version: key 'k1' is at version 2");
    it[0].key_version = 2;
    assert_ok(apply(f, KP_OP_REWRAP_SECRETS, &r));
    assert_string_equal(last_audit(f)->result, "ok (3 secrets in 2 keys)");
    const struct kp_key *k = (const struct kp_key *)kp_fsm_get(f, KP_KIND_KEY, "k2");
    assert_int_equal(k->e.version, 4);
    assert_memory_equal(k->secrets[0].sealed.p, "NEW2", 4);
    assert_memory_equal(kp_key_primary(k)->sealed.p, "NEW3", 4);
    assert_refused(apply(f, KP_OP_REWRAP_SECRETS, &r), KP_ECONFLICT,
                   "secrets[0].key_version: key 'k1' is at version 3");

    /* With kek_id the same entry records the new master key in the cluster
     * settings; a refused rewrap leaves them alone. */
    it[0].key_version = 3;
    it[1].key_version = 4;
    it[2].key_version = 4;
    r.kek_id = (char *)"0123456789abcdef";
    assert_ok(apply(f, KP_OP_REWRAP_SECRETS, &r));
    const struct kp_cluster *c = kp_fsm_cluster(f);
    assert_string_equal(c->kek_id, "0123456789abcdef");
    assert_int_equal(c->e.version, 2);
    r.kek_id = (char *)"fedcba9876543210";
    assert_refused(apply(f, KP_OP_REWRAP_SECRETS, &r), KP_ECONFLICT,
                   "secrets[0].key_version: key 'k1' is at version 4");
    assert_string_equal(kp_fsm_cluster(f)->kek_id, "0123456789abcdef");
}

/* Malformed and unknown commands are refused with the field named, change
 * nothing but the audit chain, and are audited with what could be read. */
static void test_envelope_refusals(void **state)
{
    struct kp_fsm *f = *state;
    msgpack_packer pk;
    struct kp_buf b;

    raw_begin(&pk, &b, 2, "put_tenant", 1);
    pk_s(&pk, "id");
    pk_s(&pk, "acme");
    assert_refused(apply_raw(f, b.data, b.len), KP_EVERSION,
                   "v: unsupported command version 2 (this node applies 1)");
    kp_buf_free(&b);
    assert_null(last_audit(f)->actor); /* a v2 command is not interpreted at all */
    assert_null(last_audit(f)->action);

    raw_begin(&pk, &b, 1, "frobnicate", 0);
    assert_refused(apply_raw(f, b.data, b.len), KP_EINVAL, "op: unknown operation 'frobnicate'");
    kp_buf_free(&b);
    assert_string_equal(last_audit(f)->actor, "mallory");
    raw_begin(&pk, &b, 1, "put\nx", 0);
    assert_refused(apply_raw(f, b.data, b.len), KP_EINVAL, "op: unknown operation");
    kp_buf_free(&b);

    raw_begin(&pk, &b, 1, "put_tenant", 2);
    pk_s(&pk, "id");
    pk_s(&pk, "acme");
    pk_s(&pk, "color");
    pk_s(&pk, "blue");
    assert_refused(apply_raw(f, b.data, b.len), KP_EINVAL, "unknown field 'color'");
    kp_buf_free(&b);
    assert_string_equal(last_audit(f)->action, "put_tenant");
    assert_string_equal(last_audit(f)->result, "refused: unknown field 'color'");

    raw_begin(&pk, &b, 1, "put_tenant", 2);
    pk_s(&pk, "id");
    pk_s(&pk, "acme");
    pk_s(&pk, "version");
    msgpack_pack_uint64(&pk, 7);
    assert_refused(apply_raw(f, b.data, b.len), KP_EINVAL,
                   "version: is set by the registry, not by commands");
    kp_buf_free(&b);

    raw_begin(&pk, &b, 1, "put_tenant", 2);
    pk_s(&pk, "id");
    pk_s(&pk, "acme");
    pk_s(&pk, "id");
    pk_s(&pk, "acme");
    assert_refused(apply_raw(f, b.data, b.len), KP_EINVAL, "id: appears twice");
    kp_buf_free(&b);

    raw_begin(&pk, &b, 1, "put_tenant", 1);
    pk_s(&pk, "id");
    pk_s(&pk, "ac me");
    assert_refused(apply_raw(f, b.data, b.len), KP_EINVAL,
                   "id: may contain only letters, digits and . _ : -");
    kp_buf_free(&b);

    raw_begin(&pk, &b, 1, "put_token", 3);
    pk_s(&pk, "id");
    pk_s(&pk, "tk_1");
    pk_s(&pk, "role");
    pk_s(&pk, "app");
    pk_s(&pk, "hash");
    msgpack_pack_bin(&pk, 31);
    msgpack_pack_bin_body(&pk, "0123456789012345678901234567890", 31);
    assert_refused(apply_raw(f, b.data, b.len), KP_EINVAL, "hash: must be exactly 32 bytes");
    kp_buf_free(&b);

    raw_begin(&pk, &b, 1, "put_tenant", 0);
    assert_refused(apply_raw(f, b.data, b.len), KP_EINVAL, "id: missing");
    msgpack_pack_nil(&pk); /* trailing bytes */
    assert_refused(apply_raw(f, b.data, b.len), KP_EINVAL, "trailing bytes after the command");
    kp_buf_free(&b);

    /* No audit map: refused, audited without an actor. */
    kp_buf_init(&b);
    msgpack_packer_init(&pk, &b, buf_write);
    msgpack_pack_map(&pk, 3);
    pk_s(&pk, "v");
    msgpack_pack_int(&pk, 1);
    pk_s(&pk, "op");
    pk_s(&pk, "audit_only");
    pk_s(&pk, "ts");
    msgpack_pack_int(&pk, 5);
    assert_refused(apply_raw(f, b.data, b.len), KP_EINVAL, "audit: missing");
    kp_buf_free(&b);
    assert_null(last_audit(f)->actor);
    assert_int_equal(last_audit(f)->ts, 5);

    assert_refused(apply_raw(f, "\xc1garbage", 8), KP_EINVAL,
                   "input ends early (or bad type byte)");
    assert_null(last_audit(f)->action);
    assert_int_equal(kp_fsm_count(f, KP_KIND_TENANT), 0);
    assert_int_equal(kp_fsm_audit_count(f), 12);
    assert_int_equal(kp_fsm_applied_index(f), next_index);
}

/* A command survives encode -> decode -> encode unchanged, every field of a
 * rich entity included. */
static void test_codec_roundtrip(void **state)
{
    (void)state;
    char *tags[] = {(char *)"prod", (char *)"eu"};
    char *models[] = {(char *)"gpt-4o"};
    struct kp_key k = {.e.id = (char *)"k1",
                       .provider = (char *)"p",
                       .name = (char *)"Naïve ключ",
                       .owner = (char *)"o",
                       .tags = {tags, 2},
                       .models = {models, 1},
                       .rpm = 7,
                       .tpm = 8};
    struct kp_buf a, b;
    struct kp_command c;
    char err[256];
    encode(KP_OP_PUT_KEY, &k, 4, &a);
    assert_int_equal(kp_command_decode(a.data, a.len, &c, err, sizeof(err)), KP_OK);
    assert_int_equal(c.op, KP_OP_PUT_KEY);
    assert_true(c.has_expect_version);
    assert_int_equal(c.expect_version, 4);
    assert_string_equal(c.body.key->name, "Naïve ключ");
    assert_string_equal(c.body.key->tags.v[1], "eu");
    kp_buf_init(&b);
    now--; /* same ts */
    c.ts = now++;
    assert_int_equal(kp_command_encode(&c, &b, err, sizeof(err)), KP_OK);
    assert_true(same_bytes(&a, &b));
    kp_command_free(&c);
    kp_buf_free(&a);
    kp_buf_free(&b);
    struct kp_command none = {.v = 1, .op = KP_OP_NONE};
    kp_buf_init(&a);
    assert_int_equal(kp_command_encode(&none, &a, err, sizeof(err)), KP_EINVAL);
    assert_int_equal(a.len, 0);
}

/* --- audit chain ---------------------------------------------------------------------------- */

static struct kp_audit_entry *copy_audit(struct kp_fsm *f, size_t *n)
{
    *n = kp_fsm_audit_count(f);
    struct kp_audit_entry *v = malloc(*n * sizeof(*v));
    for (size_t i = 0; i < *n; i++)
        v[i] = *kp_fsm_audit_entry(f, i);
    return v;
}

static bool contains(const char *s, const char *needle)
{
    return s != NULL && strstr(s, needle) != NULL;
}

/* After a long mixed sequence (accepted and refused) the chain verifies
 * from zero; changing an entry, its link or the order is named; no entry
 * holds a sealed blob, the pepper or a token hash. */
static void test_audit_chain(void **state)
{
    struct kp_fsm *f = *state;
    populate(f);
    char id[32];
    for (int i = 0; i < 1500; i++) {
        snprintf(id, sizeof(id), "t%d", i % 200);
        if (i % 3 == 0)
            put_tenant(f, id);
        else if (i % 3 == 1)
            target_op(f, KP_OP_DELETE_TENANT, id);
        else
            add_secret(f, "k1", (uint32_t)i, T0);
    }
    size_t n, bad;
    char err[256];
    struct kp_audit_entry *v = copy_audit(f, &n);
    assert_int_equal(n, kp_fsm_applied_index(f) - POPULATE_LEASES);
    assert_int_equal(kp_audit_verify(v, n, NULL, &bad, err, sizeof(err)), KP_OK);
    uint64_t seq;
    uint8_t head[32];
    kp_fsm_audit_head(f, &seq, head);
    assert_int_equal(seq, n);
    assert_memory_equal(head, v[n - 1].hash, 32);
    for (size_t i = 0; i < n; i++) {
        const char *s[] = {v[i].actor, v[i].action, v[i].target, v[i].result};
        for (int j = 0; j < 4; j++) {
            assert_false(contains(s[j], "XYZZY"));
            assert_false(contains(s[j], "PPPP"));
            assert_false(contains(s[j], "HHHH"));
        }
    }

    v[700].actor = (char *)"eve";
    assert_int_equal(kp_audit_verify(v, n, NULL, &bad, err, sizeof(err)), KP_EPARSE);
    assert_int_equal(bad, 700);
    assert_string_equal(err, "audit entry seq 701 (index 700): hash does not match the entry's "
                             "contents");
    v[700] = *kp_fsm_audit_entry(f, 700);
    v[900].ts++;
    assert_int_equal(kp_audit_verify(v, n, NULL, &bad, err, sizeof(err)), KP_EPARSE);
    assert_int_equal(bad, 900);
    v[900] = *kp_fsm_audit_entry(f, 900);
    struct kp_audit_entry tmp = v[10];
    v[10] = v[11];
    v[11] = tmp;
    assert_int_equal(kp_audit_verify(v, n, NULL, &bad, err, sizeof(err)), KP_EPARSE);
    assert_int_equal(bad, 10);
    /* A suffix verifies from its anchor, not from zero. */
    assert_int_equal(kp_audit_verify(v + 500, n - 500, v[499].hash, &bad, err, sizeof(err)), KP_OK);
    assert_int_equal(kp_audit_verify(v + 500, n - 500, NULL, &bad, err, sizeof(err)), KP_EPARSE);
    assert_int_equal(bad, 0);
    free(v);
}

/* Past KP_AUDIT_RETAIN entries the oldest leave memory; the rest still
 * verify from the first kept entry's prev_hash and survive a snapshot. */
static void test_audit_retention(void **state)
{
    struct kp_fsm *f = *state;
    struct kp_cmd_audit_only a = {(char *)"login", NULL, (char *)"denied"};
    for (int i = 0; i < KP_AUDIT_RETAIN + 50; i++)
        assert_ok(apply(f, KP_OP_AUDIT_ONLY, &a));
    size_t n, bad;
    char err[256];
    struct kp_audit_entry *v = copy_audit(f, &n);
    assert_int_equal(n, KP_AUDIT_RETAIN);
    assert_int_equal(v[0].seq, 51);
    assert_int_equal(kp_audit_verify(v, n, v[0].prev_hash, &bad, err, sizeof(err)), KP_OK);
    free(v);
    struct kp_buf s1, s2;
    snap(f, &s1);
    struct kp_fsm *g = kp_fsm_new();
    assert_int_equal(kp_fsm_restore(g, s1.data, s1.len, 0, err, sizeof(err)), KP_OK);
    snap(g, &s2);
    assert_true(same_bytes(&s1, &s2));
    kp_fsm_free(g);
    kp_buf_free(&s1);
    kp_buf_free(&s2);
}

/* --- determinism and snapshots -------------------------------------------------------------- */

/* A fixed pseudo-random mix of commands, as bytes, some refused. */
static void workload(struct kp_buf **cmds, size_t *n)
{
    struct kp_fsm *f = kp_fsm_new(); /* only to drive encode() the same way */
    size_t cap = 600;
    *cmds = calloc(cap, sizeof(**cmds));
    *n = 0;
    uint32_t x = 12345;
    char id[32], id2[32];
    struct kp_provider p = {.e.id = (char *)"openai",
                            .kind = KP_PROVIDER_OPENAI,
                            .base_url = (char *)"https://api.openai.com"};
    encode(KP_OP_PUT_PROVIDER, &p, -1, &(*cmds)[(*n)++]);
    while (*n < cap) {
        x = x * 1103515245 + 12345;
        int r = (x >> 16) % 6;
        snprintf(id, sizeof(id), "k%u", (x >> 8) % 40);
        snprintf(id2, sizeof(id2), "k%u", (x >> 4) % 40);
        struct kp_key k = {.e.id = id, .provider = (char *)"openai"};
        struct kp_pool_member m[2] = {{id, 1, 0}, {id2, 2, 1}};
        struct kp_pool pl = {.e.id = (char *)"pool", .members = m, .nmembers = 2};
        struct kp_cmd_target t = {id};
        char sealed[16];
        snprintf(sealed, sizeof(sealed), "s%u", x);
        struct kp_cmd_add_secret s = {
            .id = id, .version = *n + 1, .sealed = {(uint8_t *)sealed, 8}, .fingerprint = sealed};
        struct kp_key_health h = {.e.id = id, .status = (uint8_t)(x % 6)};
        if (r == 0)
            encode(KP_OP_PUT_KEY, &k, -1, &(*cmds)[(*n)++]);
        else if (r == 1)
            encode(KP_OP_PUT_POOL, &pl, -1, &(*cmds)[(*n)++]);
        else if (r == 2)
            encode(KP_OP_DELETE_KEY, &t, -1, &(*cmds)[(*n)++]);
        else if (r == 3)
            encode(KP_OP_ADD_KEY_SECRET, &s, -1, &(*cmds)[(*n)++]);
        else if (r == 4)
            encode(KP_OP_SET_KEY_HEALTH, &h, -1, &(*cmds)[(*n)++]);
        else
            encode(KP_OP_DELETE_POOL, &(struct kp_cmd_target){(char *)"pool"}, -1,
                   &(*cmds)[(*n)++]);
    }
    kp_fsm_free(f);
}

static void free_workload(struct kp_buf *cmds, size_t n)
{
    for (size_t i = 0; i < n; i++)
        kp_buf_free(&cmds[i]);
    free(cmds);
}

static void run(struct kp_fsm *f, struct kp_buf *cmds, size_t from, size_t to)
{
    for (size_t i = from; i < to; i++)
        assert_int_equal(kp_fsm_apply(f, i + 1, cmds[i].data, cmds[i].len, &res), KP_OK);
}

/* Two replicas fed the same entries hold byte-identical snapshots, also
 * when one of them was restored from a snapshot half way. */
static void test_determinism(void **state)
{
    (void)state;
    struct kp_buf *cmds, s1, s2, mid;
    size_t n;
    char err[256];
    workload(&cmds, &n);
    struct kp_fsm *a = kp_fsm_new(), *b = kp_fsm_new(), *c = kp_fsm_new();
    run(a, cmds, 0, n);
    run(b, cmds, 0, n / 2);
    snap(b, &mid);
    assert_int_equal(kp_fsm_restore(c, mid.data, mid.len, 0, err, sizeof(err)), KP_OK);
    run(b, cmds, n / 2, n);
    run(c, cmds, n / 2, n);
    snap(a, &s1);
    snap(b, &s2);
    assert_true(same_bytes(&s1, &s2));
    kp_buf_free(&s2);
    snap(c, &s2);
    assert_true(same_bytes(&s1, &s2));
    assert_true(kp_fsm_count(a, KP_KIND_KEY) > 10);
    assert_true(kp_fsm_audit_count(a) == n);
    kp_buf_free(&s1);
    kp_buf_free(&s2);
    kp_buf_free(&mid);
    kp_fsm_free(a);
    kp_fsm_free(b);
    kp_fsm_free(c);
    free_workload(cmds, n);
}

/* snapshot -> restore -> snapshot gives the same bytes, and the restored
 * state answers like the original. */
static void test_snapshot_roundtrip(void **state)
{
    struct kp_fsm *f = *state;
    struct kp_buf s1, s2;
    char err[256];
    populate(f);
    snap(f, &s1);
    struct kp_fsm *g = kp_fsm_new();
    assert_int_equal(kp_fsm_restore(g, s1.data, s1.len, 0, err, sizeof(err)), KP_OK);
    snap(g, &s2);
    assert_true(same_bytes(&s1, &s2));
    assert_int_equal(kp_fsm_applied_index(g), kp_fsm_applied_index(f));
    assert_string_equal(kp_fsm_cluster(g)->e.id, "c-test");
    const struct kp_key *k = (const struct kp_key *)kp_fsm_get(g, KP_KIND_KEY, "k2");
    assert_int_equal(kp_key_primary(k)->version, 2);
    /* Restoring over a populated state replaces it. */
    assert_int_equal(kp_fsm_restore(f, s1.data, s1.len, 0, err, sizeof(err)), KP_OK);
    /* An empty state round-trips too. */
    struct kp_fsm *e = kp_fsm_new();
    kp_buf_free(&s2);
    snap(e, &s2);
    assert_int_equal(kp_fsm_restore(g, s2.data, s2.len, 0, err, sizeof(err)), KP_OK);
    assert_int_equal(kp_fsm_count(g, KP_KIND_KEY), 0);
    /* The size limit is honoured. */
    assert_int_equal(kp_fsm_restore(g, s1.data, s1.len, 100, err, sizeof(err)), KP_ETOOBIG);
    kp_fsm_free(e);
    kp_fsm_free(g);
    kp_buf_free(&s1);
    kp_buf_free(&s2);
}

/* Every single-bit flip and every truncation of a snapshot is refused
 * without a crash and leaves the target untouched. */
static void test_snapshot_corrupt(void **state)
{
    struct kp_fsm *f = *state;
    struct kp_buf s, before, after;
    char err[256];
    populate(f);
    snap(f, &s);
    struct kp_fsm *g = kp_fsm_new();
    init_cluster(g, "victim");
    snap(g, &before);
    uint8_t *p = malloc(s.len);
    size_t refused = 0;
    for (size_t i = 0; i < s.len; i++) {
        memcpy(p, s.data, s.len);
        p[i] ^= (uint8_t)(1u << (i % 8));
        int rc = kp_fsm_restore(g, p, s.len, 0, err, sizeof(err));
        if (rc == KP_OK)
            printf("# accepted flip at byte %zu bit %zu\n", i, i % 8);
        refused += rc != KP_OK;
        assert_int_equal(kp_fsm_restore(g, p, i, 0, err, sizeof(err)) != KP_OK, 1);
    }
    assert_int_equal(refused, s.len);
    snap(g, &after);
    assert_true(same_bytes(&before, &after));
    printf("# %zu bit flips and %zu truncations of a %zu-byte snapshot refused\n", s.len, s.len,
           s.len);
    free(p);
    kp_fsm_free(g);
    kp_buf_free(&s);
    kp_buf_free(&before);
    kp_buf_free(&after);
}

/* Rewrap @raw as a snapshot with a valid header, checksum and frame. */
static void wrap(const uint8_t *raw, size_t n, struct kp_buf *out)
{
    size_t bound = ZSTD_compressBound(n);
    kp_buf_init(out);
    assert_int_equal(kp_buf_reserve(out, 64 + bound), 0);
    uint8_t *h = (uint8_t *)out->data;
    size_t z = ZSTD_compress(h + 64, bound, raw, n, 1);
    assert_false(ZSTD_isError(z));
    memcpy(h, "KPSNAP\r\n", 8);
    for (int i = 0; i < 8; i++) {
        h[8 + i] = (uint8_t)(i == 0);
        h[16 + i] = (uint8_t)((uint64_t)n >> (8 * i));
        h[24 + i] = (uint8_t)((uint64_t)z >> (8 * i));
    }
    h[12] = 0;
    uint8_t in[64];
    memcpy(in, h, 32);
    SHA256(h + 64, z, in + 32);
    SHA256(in, 64, h + 32);
    out->len = 64 + z;
}

/* Corrupt payloads that pass the checksum (the snapshot was rewrapped
 * after the change) reach the decoder and the integrity checks: each is
 * refused or, when the change happens to be valid, yields a state that
 * round-trips; never a crash. Hand-made cases: a dangling reference and
 * ids out of order are refused by name. */
static void test_snapshot_payload_corrupt(void **state)
{
    struct kp_fsm *f = *state;
    struct kp_buf s, w;
    char err[256];
    populate(f);
    snap(f, &s);
    size_t n = (size_t)ZSTD_getFrameContentSize(s.data + 64, s.len - 64);
    uint8_t *raw = malloc(n), *p = malloc(n);
    assert_int_equal(ZSTD_decompress(raw, n, s.data + 64, s.len - 64), n);
    struct kp_fsm *g = kp_fsm_new();
    size_t accepted = 0;
    for (size_t i = 0; i < n; i++) {
        memcpy(p, raw, n);
        p[i] ^= (uint8_t)(0x01 << (i % 7));
        wrap(p, n, &w);
        if (kp_fsm_restore(g, w.data, w.len, 0, err, sizeof(err)) == KP_OK) {
            struct kp_buf again;
            accepted++;
            snap(g, &again);
            assert_int_equal(kp_fsm_restore(g, again.data, again.len, 0, err, sizeof(err)), KP_OK);
            kp_buf_free(&again);
        }
        kp_buf_free(&w);
        wrap(raw, i, &w); /* truncated payload */
        assert_int_not_equal(kp_fsm_restore(g, w.data, w.len, 0, err, sizeof(err)), KP_OK);
        kp_buf_free(&w);
    }
    printf("# %zu payload bit flips rewrapped: %zu accepted as valid states\n", n, accepted);

    /* Pool member "k1" renamed to "k9": a dangling reference. */
    memcpy(p, raw, n);
    uint8_t *at = memmem(p, n, "\xa3key\xa2k1", 7);
    assert_non_null(at);
    at[6] = '9';
    wrap(p, n, &w);
    assert_int_equal(kp_fsm_restore(g, w.data, w.len, 0, err, sizeof(err)), KP_EPARSE);
    assert_string_equal(err, "restore: pool 'main': members[0].key: no key 'k9'");
    kp_buf_free(&w);
    /* Key "k2" renamed "k0": ids no longer ascending. */
    memcpy(p, raw, n);
    at = memmem(p, n, "\xa2id\xa2k2", 6);
    assert_non_null(at);
    at[5] = '0';
    wrap(p, n, &w);
    assert_int_equal(kp_fsm_restore(g, w.data, w.len, 0, err, sizeof(err)), KP_EPARSE);
    assert_non_null(strstr(err, "keys: ids not strictly ascending at 'k0'"));
    kp_buf_free(&w);
    free(raw);
    free(p);
    kp_fsm_free(g);
    kp_buf_free(&s);
}

/* The raw msgpack of @f's snapshot (malloc'd). */
static uint8_t *raw_of(struct kp_fsm *f, size_t *n)
{
    struct kp_buf s;
    snap(f, &s);
    *n = (size_t)ZSTD_getFrameContentSize(s.data + 64, s.len - 64);
    uint8_t *raw = malloc(*n);
    assert_int_equal(ZSTD_decompress(raw, *n, s.data + 64, s.len - 64), *n);
    kp_buf_free(&s);
    return raw;
}

/* Budget state survives snapshot and restore; a format-1 snapshot (from
 * before budget state: no budget tables) still restores, to an empty
 * budget state, and so do a format-2 one (from before freezes: no
 * freezes table), a format-3 one (from before alerts) and a format-5 or 6
 * one (from before key balances); a snapshot whose budget state breaks the
 * lease invariant, or names a budget its policy lacks, is refused by name. */
static void test_snapshot_budget_state(void **state)
{
    struct kp_fsm *f = *state, *g = kp_fsm_new();
    struct kp_buf w, s1, s2;
    char err[256];
    size_t n;

    /* Formats 1 and 2: the same state without the tables they lack. */
    assert_ok(init_cluster(g, "c-old"));
    assert_ok(put_tenant(g, "acme"));
    uint8_t *raw = raw_of(g, &n);
    static const uint8_t tail[] = "\xad"
                                  "budget_states\x90\xab"
                                  "lease_nodes\x90\xa7"
                                  "freezes\x90\xa6"
                                  "alerts\x90\xac"
                                  "key_balances\x90";
    /* What formats 1 to 9 lack at the end, and their key counts (formats 4,
     * 6, 8, 9 and 10 added fields, not tables). */
    static const size_t lacks[] = {0, sizeof(tail) - 1, 31, 22, 22, 14, 14, 0, 0, 0};
    static const uint8_t keys[] = {0, 0x10, 0x12, 0x13, 0x13, 0x14, 0x14, 0x15, 0x15, 0x15};
    size_t tl = sizeof(tail) - 1;
    assert_memory_equal(raw,
                        "\xde\x00\x15\xa6"
                        "format\x0a",
                        11);
    assert_memory_equal(raw + n - tl, tail, tl);
    struct kp_fsm *h = kp_fsm_new();
    snap(g, &s1);
    for (int format = 1; format <= 9; format++) {
        raw[2] = keys[format];
        raw[10] = (uint8_t)format;
        wrap(raw, n - lacks[format], &w);
        if (kp_fsm_restore(h, w.data, w.len, 0, err, sizeof(err)) != KP_OK)
            fail_msg("format %d: %s", format, err);
        kp_buf_free(&w);
        snap(h, &s2);
        assert_true(same_bytes(&s1, &s2)); /* written back as format 10 */
        kp_buf_free(&s2);
    }
    kp_buf_free(&s1);
    raw[2] = 0x10;
    raw[10] = 2; /* format 2 without its tables */
    wrap(raw, n - lacks[1], &w);
    assert_int_equal(kp_fsm_restore(h, w.data, w.len, 0, err, sizeof(err)), KP_EPARSE);
    assert_non_null(strstr(err, "expected 18 tables"));
    kp_buf_free(&w);
    raw[2] = 0x12;
    raw[10] = 3; /* format 3 without its freezes */
    wrap(raw, n - lacks[2], &w);
    assert_int_equal(kp_fsm_restore(h, w.data, w.len, 0, err, sizeof(err)), KP_EPARSE);
    assert_non_null(strstr(err, "expected 19 tables"));
    kp_buf_free(&w);
    raw[2] = 0x13;
    raw[10] = 5; /* format 5 without its alerts */
    wrap(raw, n - lacks[3], &w);
    assert_int_equal(kp_fsm_restore(h, w.data, w.len, 0, err, sizeof(err)), KP_EPARSE);
    assert_non_null(strstr(err, "expected 20 tables"));
    kp_buf_free(&w);
    raw[2] = 0x14;
    raw[10] = 7; /* format 7 without its key balances */
    wrap(raw, n - lacks[5], &w);
    assert_int_equal(kp_fsm_restore(h, w.data, w.len, 0, err, sizeof(err)), KP_EPARSE);
    assert_non_null(strstr(err, "expected 21 tables"));
    kp_buf_free(&w);
    raw[10] = 11;
    wrap(raw, n - lacks[5], &w);
    assert_int_equal(kp_fsm_restore(h, w.data, w.len, 0, err, sizeof(err)), KP_EVERSION);
    kp_buf_free(&w);
    free(raw);

    /* Round trip with budget state. */
    populate(f);
    snap(f, &s1);
    assert_int_equal(kp_fsm_restore(h, s1.data, s1.len, 0, err, sizeof(err)), KP_OK);
    snap(h, &s2);
    assert_true(same_bytes(&s1, &s2));
    const struct kp_budget_window_state *bw = kp_fsm_budget_window(h, "pol-1", "daily");
    assert_non_null(bw);
    assert_int_equal(bw->spent, 250000000);
    assert_int_equal(kp_budget_window_grant(bw, 2), 500000000);
    assert_int_equal(kp_fsm_count(h, KP_KIND_LEASE_NODE), 2);
    /* The restored replica applies the next lease as the original does. */
    assert_ok(lease(f, 2, 2, 100, 7));
    kp_nanousd granted = res.lease.items[0].granted;
    next_index--;
    assert_ok(lease(h, 2, 2, 100, 7));
    assert_int_equal(res.lease.items[0].granted, granted);
    kp_buf_free(&s1);
    kp_buf_free(&s2);

    /* The policy's limit lowered under the state: the invariant is broken. */
    raw = raw_of(f, &n);
    uint8_t *p = malloc(n);
    memcpy(p, raw, n);
    uint8_t *at = memmem(p, n, "\xadlimit_nanousd\xcf", 15);
    assert_non_null(at);
    for (int i = 0; i < 8; i++)
        at[15 + i] = (uint8_t)((uint64_t)1000000000 >> (56 - 8 * i));
    wrap(p, n, &w);
    assert_int_equal(kp_fsm_restore(h, w.data, w.len, 0, err, sizeof(err)), KP_EPARSE);
    assert_string_equal(err, "restore: budget_state 'pol-1': windows[0] (budget 'daily'): spent "
                             "250000100 + grants 1249999907 exceed limit 1000000000 + excess 0");
    kp_buf_free(&w);
    /* A window for a budget the policy does not have (not alert rule
     * ar-1's "budget" parameter, which is just text). */
    memcpy(p, raw, n);
    at = memmem(p, n,
                "\xa6"
                "budget\xa5"
                "daily\xa8"
                "start_ms",
                22);
    assert_non_null(at);
    at[12] = 'z';
    wrap(p, n, &w);
    assert_int_equal(kp_fsm_restore(h, w.data, w.len, 0, err, sizeof(err)), KP_EPARSE);
    assert_string_equal(err, "restore: budget_state 'pol-1': windows[0].budget: policy 'pol-1' "
                             "has no budget 'dailz'");
    kp_buf_free(&w);
    /* A lease node whose id is not its node id. */
    memcpy(p, raw, n);
    at = memmem(p, n,
                "\xa2id\xa1"
                "2",
                5);
    assert_non_null(at);
    at[4] = '3';
    wrap(p, n, &w);
    assert_int_equal(kp_fsm_restore(h, w.data, w.len, 0, err, sizeof(err)), KP_EPARSE);
    assert_string_equal(err, "restore: lease_node '3': id: must be the node_id in decimal (2)");
    kp_buf_free(&w);
    free(p);
    free(raw);
    kp_fsm_free(g);
    kp_fsm_free(h);
}

/* A format-3 snapshot (from before budget offsets, periods and actions)
 * restores its budgets at UTC without actions, and is written back as
 * the same state in format 7; a format-4 one must carry the new fields. */
static void test_snapshot_format3_budgets(void **state)
{
    struct kp_fsm *f = *state, *g = kp_fsm_new();
    struct kp_buf w, s1, s2;
    char err[256];
    size_t n;
    populate(f);
    uint8_t *raw = raw_of(f, &n);
    static const uint8_t added[] = "\xb2utc_offset_minutes\x00\xafperiod_start_ms\x00"
                                   "\xa9period_ms\x00\xa7"
                                   "actions\x90";
    size_t an = sizeof(added) - 1;
    uint8_t *at = memmem(raw, n, added, an);
    assert_non_null(at);
    uint8_t *map = memmem(raw, n,
                          "\x88\xa4name\xa5"
                          "daily",
                          12); /* the budget: 8 fields */
    assert_non_null(map);
    assert_true(map < at && at - map < 64);
    *map = 0x84;
    memmove(at, at + an, n - (size_t)(at + an - raw));
    n -= an;
    /* Formats before 5 have no alerts table: the last one, cut off. */
    uint8_t *alerts = NULL;
    for (uint8_t *q = raw; (q = memmem(q, n - (size_t)(q - raw),
                                       "\xa6"
                                       "alerts",
                                       7)) != NULL;
         q++)
        alerts = q;
    assert_non_null(alerts);
    n = (size_t)(alerts - raw);
    assert_int_equal(raw[2], 0x15);
    raw[2] = 0x13;
    assert_int_equal(raw[10], 10);
    raw[10] = 4;
    wrap(raw, n, &w);
    assert_int_equal(kp_fsm_restore(g, w.data, w.len, 0, err, sizeof(err)), KP_EPARSE);
    assert_non_null(strstr(err, "budgets[0].utc_offset_minutes: missing"));
    kp_buf_free(&w);
    raw[10] = 3;
    wrap(raw, n, &w);
    if (kp_fsm_restore(g, w.data, w.len, 0, err, sizeof(err)) != KP_OK)
        fail_msg("format 3: %s", err);
    kp_buf_free(&w);
    const struct kp_policy *p = (const struct kp_policy *)kp_fsm_get(g, KP_KIND_POLICY, "pol-1");
    assert_int_equal(p->budgets[0].window, KP_BUDGET_DAILY);
    assert_int_equal(p->budgets[0].utc_offset_minutes, 0);
    assert_int_equal(p->budgets[0].nactions, 0);
    assert_int_equal(kp_fsm_count(g, KP_KIND_ALERT), 0);
    /* Written back in format 7, it restores to the same bytes. */
    struct kp_fsm *h = kp_fsm_new();
    snap(g, &s1);
    assert_int_equal(kp_fsm_restore(h, s1.data, s1.len, 0, err, sizeof(err)), KP_OK);
    snap(h, &s2);
    assert_true(same_bytes(&s1, &s2));
    kp_fsm_free(h);
    kp_buf_free(&s1);
    kp_buf_free(&s2);
    free(raw);
    kp_fsm_free(g);
}

/* A tenant's capture_content survives a snapshot; a format-5 snapshot
 * (from before the field) restores every tenant with capture off, while a
 * format-6 one must carry it. */
static void test_snapshot_format5_tenants(void **state)
{
    struct kp_fsm *f = *state, *g = kp_fsm_new();
    struct kp_buf w;
    char err[256];
    size_t n;
    populate(f);
    struct kp_tenant t = {
        .e.id = (char *)"globex", .display_name = (char *)"Globex", .capture_content = true};
    assert_ok(apply(f, KP_OP_PUT_TENANT, &t));
    uint8_t *raw = raw_of(f, &n);
    wrap(raw, n, &w);
    assert_int_equal(kp_fsm_restore(g, w.data, w.len, 0, err, sizeof(err)), KP_OK);
    kp_buf_free(&w);
    const struct kp_tenant *got = (const struct kp_tenant *)kp_fsm_get(g, KP_KIND_TENANT, "globex");
    assert_true(got->capture_content);
    got = (const struct kp_tenant *)kp_fsm_get(g, KP_KIND_TENANT, "acme");
    assert_false(got->capture_content);
    /* Drop the field from both tenants (6 fields -> 5). */
    static const char *const heads[] = {"\x86\xa2id\xa4"
                                        "acme",
                                        "\x86\xa2id\xa6"
                                        "globex"};
    for (int i = 0; i < 2; i++) {
        uint8_t *map = memmem(raw, n, heads[i], strlen(heads[i]));
        assert_non_null(map);
        *map = 0x85;
        uint8_t *at = memmem(map, n - (size_t)(map - raw),
                             "\xaf"
                             "capture_content",
                             16);
        assert_non_null(at);
        assert_true(at - map < 128 && (at[16] == 0xc2 || at[16] == 0xc3));
        memmove(at, at + 17, n - (size_t)(at + 17 - raw));
        n -= 17;
    }
    assert_int_equal(raw[10], 10);
    wrap(raw, n, &w);
    assert_int_equal(kp_fsm_restore(g, w.data, w.len, 0, err, sizeof(err)), KP_EPARSE);
    assert_non_null(strstr(err, "capture_content: missing"));
    kp_buf_free(&w);
    /* Format 5 had no key balances table (the last one). */
    assert_memory_equal(raw + n - 14,
                        "\xac"
                        "key_balances\x90",
                        14);
    n -= 14;
    raw[2] = 0x14;
    raw[10] = 5;
    wrap(raw, n, &w);
    if (kp_fsm_restore(g, w.data, w.len, 0, err, sizeof(err)) != KP_OK)
        fail_msg("format 5: %s", err);
    kp_buf_free(&w);
    got = (const struct kp_tenant *)kp_fsm_get(g, KP_KIND_TENANT, "globex");
    assert_non_null(got);
    assert_false(got->capture_content);
    assert_string_equal(got->display_name, "Globex");
    free(raw);
    kp_fsm_free(g);
}

/* Remove @field (its key and value, @len bytes) from the map whose first
 * key and value are the first @head in raw[0..*n): its count (a fixmap's,
 * or the low byte of a map 16's) drops by one. */
static void drop_field(uint8_t *raw, size_t *n, const char *head, const char *field, size_t len)
{
    uint8_t *map = memmem(raw, *n, head, strlen(head));
    assert_non_null(map);
    assert_true(map - raw >= 3);
    uint8_t *count = map - 1;
    assert_true(((*count & 0xf0) == 0x80 && (*count & 0x0f) > 1) ||
                (map[-3] == 0xde && map[-2] == 0 && *count > 16));
    (*count)--;
    uint8_t *at = memmem(map, *n - (size_t)(map - raw), field, len);
    assert_non_null(at);
    assert_true(at - map < 400); /* inside the same entity */
    memmove(at, at + len, *n - (size_t)(at + len - raw));
    *n -= len;
}

/* Format 10 added a token's features and a provider's retry settings: they
 * survive a snapshot, a format-9 snapshot (from before them) restores
 * every token open to every feature and every provider with the default
 * retries, and a format-10 one must carry them. */
static void test_snapshot_format9(void **state)
{
    struct kp_fsm *f = *state, *g = kp_fsm_new();
    struct kp_buf w;
    char err[256];
    size_t n;
    populate(f);
    char *features[] = {(char *)"search", (char *)"chat"};
    struct kp_token t = {.e.id = (char *)"tk_feat",
                         .role = (char *)"app",
                         .tenant = (char *)"acme",
                         .features = {features, 2}};
    memset(t.hash, 'H', sizeof(t.hash));
    assert_ok(apply(f, KP_OP_PUT_TOKEN, &t));
    struct kp_provider p = {.e.id = (char *)"slow",
                            .kind = KP_PROVIDER_OPENAI,
                            .base_url = (char *)"https://slow.example/v1",
                            .max_retries = 3,
                            .retry_backoff_ms = 250,
                            .retry_window_ms = 20000};
    assert_ok(apply(f, KP_OP_PUT_PROVIDER, &p));
    uint8_t *raw = raw_of(f, &n);
    wrap(raw, n, &w);
    assert_int_equal(kp_fsm_restore(g, w.data, w.len, 0, err, sizeof(err)), KP_OK);
    kp_buf_free(&w);
    const struct kp_token *got = (const struct kp_token *)kp_fsm_get(g, KP_KIND_TOKEN, "tk_feat");
    assert_non_null(got);
    assert_int_equal(got->features.n, 2);
    assert_string_equal(got->features.v[0], "search");
    assert_string_equal(got->features.v[1], "chat");
    const struct kp_provider *gp =
        (const struct kp_provider *)kp_fsm_get(g, KP_KIND_PROVIDER, "slow");
    assert_non_null(gp);
    assert_int_equal(gp->max_retries, 3);
    assert_int_equal(gp->retry_backoff_ms, 250);
    assert_int_equal(gp->retry_window_ms, 20000);

    /* The same state as format 9 wrote it: without the new fields. */
    drop_field(raw, &n, "\xa2id\xa6tk_abc",
               "\xa8"
               "features\x90",
               10);
    drop_field(raw, &n, "\xa2id\xa7tk_feat",
               "\xa8"
               "features\x92\xa6search\xa4"
               "chat",
               22);
    drop_field(raw, &n, "\xa2id\xa4slow", "\xabmax_retries\x03", 13);
    drop_field(raw, &n, "\xa2id\xa4slow", "\xb0retry_backoff_ms\xcc\xfa", 19);
    drop_field(raw, &n, "\xa2id\xa4slow", "\xafretry_window_ms\xcd\x4e\x20", 19);
    drop_field(raw, &n, "\xa2id\xa6openai", "\xabmax_retries\x00", 13);
    drop_field(raw, &n, "\xa2id\xa6openai", "\xb0retry_backoff_ms\x00", 18);
    drop_field(raw, &n, "\xa2id\xa6openai", "\xafretry_window_ms\x00", 17);
    assert_int_equal(raw[10], 10);
    wrap(raw, n, &w);
    assert_int_equal(kp_fsm_restore(g, w.data, w.len, 0, err, sizeof(err)), KP_EPARSE);
    assert_non_null(strstr(err, "missing"));
    kp_buf_free(&w);
    raw[10] = 9;
    wrap(raw, n, &w);
    if (kp_fsm_restore(g, w.data, w.len, 0, err, sizeof(err)) != KP_OK)
        fail_msg("format 9: %s", err);
    kp_buf_free(&w);
    got = (const struct kp_token *)kp_fsm_get(g, KP_KIND_TOKEN, "tk_feat");
    assert_non_null(got);
    assert_int_equal(got->features.n, 0);
    assert_string_equal(got->tenant, "acme");
    gp = (const struct kp_provider *)kp_fsm_get(g, KP_KIND_PROVIDER, "slow");
    assert_non_null(gp);
    assert_int_equal(gp->max_retries, 1);
    assert_int_equal(gp->retry_backoff_ms, 100);
    assert_int_equal(gp->retry_window_ms, 3000);
    assert_string_equal(gp->base_url, "https://slow.example/v1");
    free(raw);
    kp_fsm_free(g);
}

/* --- allocation failure --------------------------------------------------------------------- */

/* Fail the n-th allocation of an apply for every n until it succeeds:
 * each failure reports KP_ENOMEM and leaves the state byte-identical; the
 * final success matches a replica that never failed. */
static void check_apply_oom(struct kp_fsm *f, struct kp_fsm *ref, const struct kp_buf *cmd)
{
    struct kp_buf before, after;
    snap(f, &before);
    uint64_t index = kp_fsm_applied_index(f) + 1;
    for (long n = 0;; n++) {
        kp_alloc_fail_after(n);
        int rc = kp_fsm_apply(f, index, cmd->data, cmd->len, &res);
        kp_alloc_fail_reset();
        if (rc == KP_OK)
            break;
        assert_int_equal(rc, KP_ENOMEM);
        assert_int_equal(res.code, KP_ENOMEM);
        snap(f, &after);
        assert_true(same_bytes(&before, &after));
        kp_buf_free(&after);
        assert_true(n < 10000);
    }
    struct kp_fsm_result r2;
    assert_int_equal(kp_fsm_apply(ref, index, cmd->data, cmd->len, &r2), KP_OK);
    assert_int_equal(r2.code, res.code);
    kp_buf_free(&before);
    snap(f, &before);
    snap(ref, &after);
    assert_true(same_bytes(&before, &after));
    kp_buf_free(&before);
    kp_buf_free(&after);
}

static void test_alloc_failure(void **state)
{
    struct kp_fsm *f = *state, *ref = kp_fsm_new();
    struct kp_buf *cmds, s;
    size_t n;
    char err[256];
    workload(&cmds, &n);
    /* Warm both, then hold a view so that tables are shared and must be
     * copied under failure too. */
    run(f, cmds, 0, 100);
    run(ref, cmds, 0, 100);
    struct kp_view *v = kp_fsm_view_build(f);
    for (size_t i = 100; i < 160; i++)
        check_apply_oom(f, ref, &cmds[i]);
    kp_view_release(v);
    struct kp_rewrap_item it = {(char *)"none", 1, 1, {(uint8_t *)"x", 1}};
    struct kp_cmd_rewrap rw = {&it, 1, NULL};
    struct kp_buf c;
    encode(KP_OP_REWRAP_SECRETS, &rw, -1, &c);
    check_apply_oom(f, ref, &c);
    kp_buf_free(&c);

    /* Snapshot and restore under failure: restore leaves the target as it
     * was; a view build just returns NULL. */
    snap(f, &s);
    struct kp_fsm *g = kp_fsm_new();
    for (long k = 0;; k++) {
        kp_alloc_fail_after(k);
        int rc = kp_fsm_restore(g, s.data, s.len, 0, err, sizeof(err));
        kp_alloc_fail_reset();
        if (rc == KP_OK)
            break;
        assert_int_equal(rc, KP_ENOMEM);
        assert_int_equal(kp_fsm_count(g, KP_KIND_KEY), 0);
        if (k % 50 == 49)
            k += 200; /* the middle is one entity after another */
    }
    kp_alloc_fail_after(0);
    assert_null(kp_fsm_view_build(g));
    struct kp_buf s2;
    kp_buf_init(&s2);
    assert_int_equal(kp_fsm_snapshot(g, &s2, err, sizeof(err)), KP_ENOMEM);
    kp_alloc_fail_reset();
    assert_int_equal(s2.len, 0);
    kp_fsm_free(g);
    kp_fsm_free(ref);
    kp_buf_free(&s);
    free_workload(cmds, n);
}

/* The budget ops under allocation failure: a first lease (new state,
 * window and node), a lease on two budgets, a policy change that
 * redefines and drops windows, a reset and a policy delete, each with a
 * view held so that tables must be copied. */
static void test_budget_alloc_failure(void **state)
{
    struct kp_fsm *f = *state, *ref = kp_fsm_new();
    struct kp_budget b[2] = {{.name = (char *)"daily",
                              .window = KP_BUDGET_DAILY,
                              .limit_nanousd = 5000000000,
                              .kind = KP_BUDGET_HARD},
                             {.name = (char *)"month",
                              .window = KP_BUDGET_MONTHLY,
                              .limit_nanousd = 9000000000,
                              .kind = KP_BUDGET_SOFT}};
    struct kp_policy pol = {
        .e.id = (char *)"pol", .scope_kind = KP_SCOPE_GLOBAL, .budgets = b, .nbudgets = 2};
    struct kp_buf c;
    encode(KP_OP_PUT_POLICY, &pol, -1, &c);
    assert_int_equal(kp_fsm_apply(f, 1, c.data, c.len, &res), KP_OK);
    assert_int_equal(kp_fsm_apply(ref, 1, c.data, c.len, &res), KP_OK);
    kp_buf_free(&c);
    struct kp_view *v = kp_fsm_view_build(f);

    struct kp_lease_item it[2] = {{(char *)"pol", (char *)"daily", T0, 0, false, 3000000000, false},
                                  {(char *)"pol", (char *)"month", T0, 0, false, 5, false}};
    struct kp_cmd_budget_lease l = {4, 1, it, 1};
    encode(KP_OP_BUDGET_LEASE, &l, -1, &c);
    check_apply_oom(f, ref, &c);
    kp_buf_free(&c);
    it[0].settled = 1000000000;
    it[0].want = 10;
    l = (struct kp_cmd_budget_lease){5, 1, it, 2};
    encode(KP_OP_BUDGET_LEASE, &l, -1, &c);
    check_apply_oom(f, ref, &c);
    kp_buf_free(&c);
    b[0].limit_nanousd = 1000000000; /* below spent + grants: excess */
    b[0].window = KP_BUDGET_MONTHLY;
    pol.nbudgets = 1;
    encode(KP_OP_PUT_POLICY, &pol, -1, &c);
    check_apply_oom(f, ref, &c);
    kp_buf_free(&c);
    /* 1e9 settled beyond node 5's grant, then 4e9 + 10 held under a 1e9 limit. */
    assert_int_equal(kp_fsm_budget_window(f, "pol", "daily")->excess, 3000000010);
    assert_null(kp_fsm_budget_window(f, "pol", "month"));
    struct kp_cmd_budget_reset r = {(char *)"pol", (char *)"daily"};
    encode(KP_OP_BUDGET_RESET, &r, -1, &c);
    check_apply_oom(f, ref, &c);
    kp_buf_free(&c);
    kp_view_release(v);
    v = kp_fsm_view_build(f);
    encode(KP_OP_DELETE_POLICY, &(struct kp_cmd_target){(char *)"pol"}, -1, &c);
    check_apply_oom(f, ref, &c);
    kp_buf_free(&c);
    assert_int_equal(kp_fsm_count(f, KP_KIND_BUDGET_STATE), 0);
    kp_view_release(v);
    kp_fsm_free(ref);
}

/* --- views ------------------------------------------------------------------------------------ */

/* A view keeps what it saw while the state machine moves on, and looks up
 * everything a router needs. */
static void test_view(void **state)
{
    struct kp_fsm *f = *state;
    populate(f);
    struct kp_view *v = kp_fsm_view_build(f);
    assert_int_equal(kp_view_applied_index(v), kp_fsm_applied_index(f));
    const struct kp_pool *pool = kp_view_pool(v, "main");
    assert_non_null(pool);
    assert_string_equal(kp_view_pool_key(v, pool, 1)->e.id, "k2");
    assert_null(kp_view_pool_key(v, pool, 2));
    assert_string_equal(kp_view_provider(v, "openai")->base_url, "https://api.openai.com/v1");
    assert_string_equal(kp_view_project(v, "search")->tenant, "acme");
    assert_non_null(kp_view_tenant(v, "acme"));
    assert_string_equal(kp_view_token(v, "tk_abc")->role, "app");
    assert_int_equal(kp_view_price(v, "gpt-4o")->output_per_mtok, 10000000000);
    assert_int_equal(kp_view_key_health(v, "k2")->status, KP_HEALTH_RATE_LIMITED);
    assert_true(kp_view_member(v, "n1")->meter);
    assert_non_null(kp_view_policy(v, "pol-1"));
    const struct kp_budget_window_state *bw = kp_view_budget_window(v, "pol-1", "daily");
    assert_non_null(bw);
    assert_int_equal(bw->spent, 250000000);
    assert_int_equal(kp_budget_window_grant(bw, 1), 750000000);
    assert_int_equal(kp_budget_window_granted(bw), 1250000000);
    assert_int_equal(kp_view_lease_node(v, 2)->seq, 1);
    assert_int_equal(kp_view_cluster(v)->pepper[0], 'P');
    assert_int_equal(kp_view_count(v, KP_KIND_KEY), 2);
    assert_null(kp_view_key(v, "nope"));

    assert_ok(target_op(f, KP_OP_DELETE_POOL, "main"));
    assert_ok(put_key(f, "k3", "openai"));
    assert_non_null(kp_view_pool(v, "main"));
    assert_null(kp_view_key(v, "k3"));
    struct kp_view *w = kp_fsm_view_build(f);
    assert_null(kp_view_pool(w, "main"));
    assert_non_null(kp_view_key(w, "k3"));
    kp_view_release(v);
    kp_view_release(w);

    struct kp_view_slot slot;
    kp_view_slot_init(&slot);
    assert_null(kp_view_acquire(&slot));
    kp_view_publish(&slot, kp_fsm_view_build(f));
    v = kp_view_acquire(&slot);
    assert_non_null(kp_view_key(v, "k3"));
    kp_view_publish(&slot, kp_fsm_view_build(f));
    kp_view_release(v);
    kp_view_slot_close(&slot);
}

struct reader {
    struct kp_view_slot *slot;
    atomic_bool stop;
    unsigned long reads;
    unsigned long misses;
};

static int count_entity(const struct kp_entity *e, void *arg)
{
    (void)e;
    (*(size_t *)arg)++;
    return 0;
}

/* Every view is internally consistent: each pool member resolves in the
 * same view, and the applied index never goes back. */
static void *reader_main(void *arg)
{
    struct reader *r = arg;
    uint64_t last = 0;
    while (!atomic_load(&r->stop)) {
        struct kp_view *v = kp_view_acquire(r->slot);
        if (v == NULL)
            continue;
        if (kp_view_applied_index(v) < last)
            abort();
        last = kp_view_applied_index(v);
        const struct kp_pool *p = kp_view_pool(v, "pool");
        for (uint32_t i = 0; p != NULL && i < p->nmembers; i++) {
            if (kp_view_pool_key(v, p, i) == NULL)
                abort();
        }
        size_t n = 0;
        kp_view_each(v, KP_KIND_KEY, count_entity, &n);
        if (n != kp_view_count(v, KP_KIND_KEY))
            abort();
        r->misses += kp_view_key(v, "k1") == NULL;
        r->reads++;
        kp_view_release(v);
    }
    return NULL;
}

/* Readers on another thread acquire, look up and release while the main
 * thread applies and publishes after every entry. */
static void test_view_threads(void **state)
{
    struct kp_fsm *f = *state;
    struct kp_view_slot slot;
    struct kp_buf *cmds;
    size_t n;
    pthread_t th[2];
    struct reader r[2];
    kp_view_slot_init(&slot);
    workload(&cmds, &n);
    for (int i = 0; i < 2; i++) {
        r[i] = (struct reader){.slot = &slot};
        atomic_init(&r[i].stop, false);
        assert_int_equal(pthread_create(&th[i], NULL, reader_main, &r[i]), 0);
    }
    for (int round = 0; round < 5; round++) {
        struct kp_fsm *g = kp_fsm_new();
        for (size_t i = 0; i < n; i++) {
            uint64_t index = (uint64_t)round * n + i + 1;
            assert_int_equal(kp_fsm_apply(g, index, cmds[i].data, cmds[i].len, &res), KP_OK);
            kp_view_publish(&slot, kp_fsm_view_build(g));
        }
        kp_fsm_free(g); /* views outlive their state machine */
    }
    for (int i = 0; i < 2; i++) {
        atomic_store(&r[i].stop, true);
        pthread_join(th[i], NULL);
    }
    printf("# view threads: %lu + %lu reads across %zu publishes\n", r[0].reads, r[1].reads, 5 * n);
    assert_true(r[0].reads + r[1].reads > 0);
    kp_view_slot_close(&slot);
    free_workload(cmds, n);
    (void)f;
}

/* --- scale ------------------------------------------------------------------------------------ */

/* 100,000 keys with a secret each: apply rate, view build, the copy the
 * first change after a view costs, snapshot size and time, restore time.
 * Printed, not asserted. */
static void test_scale(void **state)
{
    struct kp_fsm *f = *state;
    enum { N = 100000 };
    char id[32], sealed[96], fp[48], err[256];
    assert_ok(put_provider(f, "openai"));
    uint64_t t0 = kp_now_mono_us();
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof(id), "k-prod-%06d", i);
        assert_ok(put_key(f, id, "openai"));
    }
    uint64_t t1 = kp_now_mono_us(), x = 88172645463325252ull;
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof(id), "k-prod-%06d", i);
        for (int j = 0; j < 64; j++) { /* ciphertext: incompressible, like a real blob */
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            sealed[j] = (char)x;
        }
        snprintf(fp, sizeof(fp), "sha256:%016x", i);
        struct kp_cmd_add_secret c = {.id = id,
                                      .version = 1,
                                      .sealed = {(uint8_t *)sealed, 64},
                                      .fingerprint = fp,
                                      .last4 = (char *)"wxyz"};
        assert_ok(apply(f, KP_OP_ADD_KEY_SECRET, &c));
    }
    uint64_t t2 = kp_now_mono_us();
    struct kp_view *v = kp_fsm_view_build(f);
    uint64_t t3 = kp_now_mono_us();
    assert_ok(put_key(f, "k-extra", "openai")); /* copies the shared key table */
    uint64_t t4 = kp_now_mono_us();
    assert_ok(put_key(f, "k-extra2", "openai")); /* table is ours again */
    uint64_t t5 = kp_now_mono_us();
    assert_non_null(kp_view_key(v, "k-prod-099999"));
    assert_null(kp_view_key(v, "k-extra"));
    kp_view_release(v);
    struct kp_buf s, s2;
    snap(f, &s);
    uint64_t t6 = kp_now_mono_us();
    struct kp_fsm *g = kp_fsm_new();
    assert_int_equal(kp_fsm_restore(g, s.data, s.len, 0, err, sizeof(err)), KP_OK);
    uint64_t t7 = kp_now_mono_us();
    snap(g, &s2);
    assert_true(same_bytes(&s, &s2));
    printf("# scale: %d keys: put_key %.1f us/op, add_key_secret %.1f us/op\n", N,
           (double)(t1 - t0) / N, (double)(t2 - t1) / N);
    printf("# scale: view build %.1f us; first put after it (copies the key table) %.3f ms; "
           "next put %.3f ms\n",
           (double)(t3 - t2), (t4 - t3) / 1e3, (t5 - t4) / 1e3);
    printf("# scale: snapshot %zu bytes (%.1f bytes/key) in %.1f ms; restore %.1f ms\n", s.len,
           (double)s.len / N, (t6 - t5) / 1e3, (t7 - t6) / 1e3);
    kp_fsm_free(g);
    kp_buf_free(&s);
    kp_buf_free(&s2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_init_cluster, setup, teardown),
        cmocka_unit_test_setup_teardown(test_provider, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_secrets, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_status, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tenant_project_token, setup, teardown),
        cmocka_unit_test_setup_teardown(test_policy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_freeze, setup, teardown),
        cmocka_unit_test_setup_teardown(test_freeze_decode, setup, teardown),
        cmocka_unit_test_setup_teardown(test_price_member_alerts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_health, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_balance, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_balance_decode, setup, teardown),
        cmocka_unit_test_setup_teardown(test_audit_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rewrap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_envelope_refusals, setup, teardown),
        cmocka_unit_test(test_codec_roundtrip),
        cmocka_unit_test_setup_teardown(test_audit_chain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_audit_retention, setup, teardown),
        cmocka_unit_test(test_determinism),
        cmocka_unit_test_setup_teardown(test_alerts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_alerts_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_corrupt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_payload_corrupt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_budget_state, setup, teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_format3_budgets, setup, teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_format9, setup, teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_format5_tenants, setup, teardown),
        cmocka_unit_test_setup_teardown(test_alloc_failure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_budget_alloc_failure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_view, setup, teardown),
        cmocka_unit_test_setup_teardown(test_view_threads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_scale, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* libFuzzer driver for registry commands (raftstore/raftstore.h): every
 * input is decoded as a command and applied to a small registry that holds
 * one entity of most kinds, so references, conflicts and secret rotation
 * are reachable. Crashes, sanitizer reports, leaks and unbounded allocation
 * are what the fuzzer looks for; it also checks the invariants that tie the
 * codec, apply and snapshots together:
 *
 *   a decoded command re-encodes to bytes that decode and re-encode to the
 *   same bytes (the encoding is canonical);
 *   apply never fails for a well-formed or malformed command (only for
 *   want of memory) and appends exactly one audit entry;
 *   whatever state apply reaches passes restore's checks: snapshot, restore
 *   and snapshot again give the same bytes.
 *
 * The seeds in corpus/command/ are one kp_command_encode() output per op
 * (budget_lease and budget_reset aside), and a put_policy whose budgets
 * have a weekly window at an offset, a fixed period and threshold
 * actions. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "raftstore/raftstore.h"

static struct kp_audit_ctx who = {.actor = (char *)"fuzz"};

static void put(struct kp_fsm *f, uint64_t *index, enum kp_op op, void *body)
{
    struct kp_command c = {.v = 1, .op = op, .ts = 1767225600000, .audit = who, .body.any = body};
    struct kp_fsm_result res;
    struct kp_buf b;
    char err[256];
    kp_buf_init(&b);
    if (kp_command_encode(&c, &b, err, sizeof(err)) != KP_OK ||
        kp_fsm_apply(f, ++*index, b.data, b.len, &res) != KP_OK || res.code != KP_OK)
        abort();
    kp_buf_free(&b);
}

/* provider p, keys k1 k2 (k1 with two secrets), pools a -> b, tenant t,
 * project j, token tk, cluster c, member n1, price m, health of k2,
 * freezes of tenant t and of project j (which cannot be deleted while it
 * is frozen), an open alert al (so that resolve, ack and delivery
 * records reach their rules; the seeds name it), and a balance of k1 (so
 * that top-ups reach theirs). */
static struct kp_fsm *base(uint64_t *index)
{
    struct kp_fsm *f = kp_fsm_new();
    if (f == NULL)
        abort();
    struct kp_cluster c = {.e.id = (char *)"c"};
    struct kp_provider p = {.e.id = (char *)"p", .base_url = (char *)"https://x"};
    struct kp_key k = {.e.id = (char *)"k1", .provider = (char *)"p"};
    struct kp_cmd_add_secret s = {.id = (char *)"k1",
                                  .version = 1,
                                  .sealed = {(uint8_t *)"s", 1},
                                  .fingerprint = (char *)"f1"};
    struct kp_pool_member m = {(char *)"k1", 1, 0};
    struct kp_pool pb = {.e.id = (char *)"b", .members = &m, .nmembers = 1};
    struct kp_pool pa = {
        .e.id = (char *)"a", .members = &m, .nmembers = 1, .fallback = (char *)"b"};
    struct kp_tenant t = {.e.id = (char *)"t"};
    struct kp_project j = {.e.id = (char *)"j", .tenant = (char *)"t"};
    char *projects[] = {(char *)"j"};
    struct kp_token tk = {.e.id = (char *)"tk",
                          .role = (char *)"app",
                          .tenant = (char *)"t",
                          .projects = {projects, 1}};
    struct kp_member n = {.e.id = (char *)"n1", .node_id = 1, .address = (char *)"h:1"};
    struct kp_price pr = {.e.id = (char *)"m"};
    struct kp_key_health h = {.e.id = (char *)"k2"};
    struct kp_freeze ft = {
        .e.id = (char *)"tenant:t", .target = (char *)"t", .reason = (char *)"r"};
    struct kp_freeze fj = {.e.id = (char *)"project:j",
                           .scope = KP_FREEZE_PROJECT,
                           .target = (char *)"j",
                           .reason = (char *)"r"};
    put(f, index, KP_OP_INIT_CLUSTER, &c);
    put(f, index, KP_OP_PUT_PROVIDER, &p);
    put(f, index, KP_OP_PUT_KEY, &k);
    k.e.id = (char *)"k2";
    put(f, index, KP_OP_PUT_KEY, &k);
    put(f, index, KP_OP_ADD_KEY_SECRET, &s);
    s.version = 2;
    s.fingerprint = (char *)"f2";
    put(f, index, KP_OP_ADD_KEY_SECRET, &s);
    put(f, index, KP_OP_PUT_POOL, &pb);
    put(f, index, KP_OP_PUT_POOL, &pa);
    put(f, index, KP_OP_PUT_TENANT, &t);
    put(f, index, KP_OP_PUT_PROJECT, &j);
    put(f, index, KP_OP_PUT_TOKEN, &tk);
    put(f, index, KP_OP_PUT_MEMBER, &n);
    put(f, index, KP_OP_PUT_PRICE, &pr);
    put(f, index, KP_OP_SET_KEY_HEALTH, &h);
    put(f, index, KP_OP_PUT_FREEZE, &ft);
    put(f, index, KP_OP_PUT_FREEZE, &fj);
    struct kp_alert al = {.e.id = (char *)"al",
                          .rule = (char *)"key_invalid",
                          .subject = (char *)"s",
                          .message = (char *)"m",
                          .action = (char *)"a"};
    put(f, index, KP_OP_PUT_ALERT, &al);
    struct kp_cmd_set_balance bal = {.id = (char *)"k1", .credit = 1000000000};
    put(f, index, KP_OP_SET_KEY_BALANCE, &bal);
    return f;
}

static void check_codec(const uint8_t *data, size_t size)
{
    struct kp_command c, d;
    struct kp_buf a, b;
    char err[256];
    int rc = kp_command_decode(data, size, &c, err, sizeof(err));
    if (rc == KP_OK) {
        kp_buf_init(&a);
        kp_buf_init(&b);
        if (kp_command_encode(&c, &a, err, sizeof(err)) != KP_OK ||
            kp_command_decode(a.data, a.len, &d, err, sizeof(err)) != KP_OK ||
            kp_command_encode(&d, &b, err, sizeof(err)) != KP_OK || a.len != b.len ||
            memcmp(a.data, b.data, a.len) != 0)
            abort();
        kp_command_free(&d);
        kp_buf_free(&a);
        kp_buf_free(&b);
    }
    kp_command_free(&c);
}

static void check_snapshot(struct kp_fsm *f)
{
    struct kp_buf s1, s2;
    char err[256];
    struct kp_fsm *g = kp_fsm_new();
    kp_buf_init(&s1);
    kp_buf_init(&s2);
    if (g == NULL || kp_fsm_snapshot(f, &s1, err, sizeof(err)) != KP_OK ||
        kp_fsm_restore(g, s1.data, s1.len, 0, err, sizeof(err)) != KP_OK ||
        kp_fsm_snapshot(g, &s2, err, sizeof(err)) != KP_OK || s1.len != s2.len ||
        memcmp(s1.data, s2.data, s1.len) != 0)
        abort();
    kp_fsm_free(g);
    kp_buf_free(&s1);
    kp_buf_free(&s2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t index = 0;
    struct kp_fsm_result res;
    check_codec(data, size);
    struct kp_fsm *f = base(&index);
    size_t before = kp_fsm_audit_count(f);
    /* Every apply leaves one audit entry, except budget_lease (routers'
     * machine traffic, raftstore/fsm.c). */
    if (kp_fsm_apply(f, ++index, data, size, &res) != KP_OK ||
        kp_fsm_audit_count(f) != before + (res.op == KP_OP_BUDGET_LEASE ? 0 : 1) ||
        kp_fsm_applied_index(f) != index)
        abort();
    /* The view sees what the state machine holds. */
    struct kp_view *v = kp_fsm_view_build(f);
    if (v == NULL || kp_view_count(v, KP_KIND_KEY) != kp_fsm_count(f, KP_KIND_KEY))
        abort();
    kp_view_release(v);
    if (res.code == KP_OK)
        check_snapshot(f);
    kp_fsm_free(f);
    return 0;
}

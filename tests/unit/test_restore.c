/* kp_fsm_rebase (raftstore/restore.c): another cluster's restored state
 * made the first state of a new cluster. Pure: state machines built from
 * commands, snapshotted and restored in memory. */
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

static struct kp_audit_ctx who = {.actor = (char *)"alice", .role = (char *)"admin"};

static void apply(struct kp_fsm *f, enum kp_op op, void *body)
{
    struct kp_command cmd = {.v = KP_COMMAND_VERSION, .op = op, .ts = T0, .audit = who};
    struct kp_fsm_result res;
    struct kp_buf b;
    char msg[256];
    cmd.body.any = body;
    kp_buf_init(&b);
    assert_int_equal(kp_command_encode(&cmd, &b, msg, sizeof(msg)), KP_OK);
    assert_int_equal(kp_fsm_apply(f, kp_fsm_applied_index(f) + 1, b.data, b.len, &res), KP_OK);
    assert_int_equal(res.code, KP_OK);
    kp_buf_free(&b);
}

static void put_member(struct kp_fsm *f, const char *name, uint64_t id)
{
    struct kp_member m = {.e.id = (char *)name, .node_id = id, .address = (char *)"10.0.0.1:7602"};
    apply(f, KP_OP_PUT_MEMBER, &m);
}

/* A cluster with settings, two members and a tenant, as its snapshot. */
static struct kp_fsm *old_cluster(void)
{
    struct kp_fsm *f = kp_fsm_new();
    struct kp_cluster c = {.e.id = (char *)"c-old", .kek_id = (char *)"kek1"};
    memset(c.pepper, 7, sizeof(c.pepper));
    apply(f, KP_OP_INIT_CLUSTER, &c);
    put_member(f, "kp-1", 11);
    put_member(f, "kp-2", 22);
    struct kp_tenant t = {.e.id = (char *)"acme", .display_name = (char *)"Acme"};
    apply(f, KP_OP_PUT_TENANT, &t);
    return f;
}

static struct kp_fsm *through_snapshot(struct kp_fsm *from)
{
    struct kp_buf b;
    char msg[256];
    kp_buf_init(&b);
    assert_int_equal(kp_fsm_snapshot(from, &b, msg, sizeof(msg)), KP_OK);
    struct kp_fsm *to = kp_fsm_new();
    assert_int_equal(kp_fsm_restore(to, b.data, b.len, 0, msg, sizeof(msg)), KP_OK);
    kp_buf_free(&b);
    return to;
}

/* The new cluster keeps the registry and the secrets' context (pepper, key
 * id), gets its id, only the restoring member, and one audit entry that
 * names where it came from; the audit chain still verifies. */
static void rebase_makes_a_new_cluster(void **state)
{
    (void)state;
    struct kp_fsm *old = old_cluster();
    struct kp_fsm *f = through_snapshot(old);
    uint64_t index = kp_fsm_applied_index(f);
    struct kp_member self = {.e.id = (char *)"b-1",
                             .node_id = 99,
                             .address = (char *)"10.0.1.1:7602",
                             .role = KP_MEMBER_VOTER,
                             .meter = true};
    char msg[256];
    assert_int_equal(kp_fsm_rebase(f, "c-new", &self, T0 + 5, "node:b-1", msg, sizeof(msg)), KP_OK);

    const struct kp_cluster *c = kp_fsm_cluster(f);
    assert_string_equal(c->e.id, "c-new");
    assert_string_equal(c->kek_id, "kek1");
    assert_memory_equal(c->pepper, kp_fsm_cluster(old)->pepper, 32);
    assert_int_equal(c->e.version, 2);
    assert_int_equal(kp_fsm_count(f, KP_KIND_MEMBER), 1);
    const struct kp_member *m = (const struct kp_member *)kp_fsm_get(f, KP_KIND_MEMBER, "b-1");
    assert_non_null(m);
    assert_int_equal(m->node_id, 99);
    assert_non_null(kp_fsm_get(f, KP_KIND_TENANT, "acme"));
    /* Two removals, one put, one audit entry. */
    assert_int_equal(kp_fsm_applied_index(f), index + 4);

    size_t n = kp_fsm_audit_count(f);
    const struct kp_audit_entry *last = kp_fsm_audit_entry(f, n - 1);
    assert_string_equal(last->action, "restore_cluster");
    assert_string_equal(last->target, "c-new");
    assert_string_equal(last->actor, "node:b-1");
    assert_non_null(strstr(last->result, "from a snapshot of cluster c-old at index 4"));
    assert_non_null(strstr(last->result, "members before: kp-1, kp-2"));
    assert_string_equal(kp_fsm_audit_entry(f, n - 2)->action, "put_member");
    assert_string_equal(kp_fsm_audit_entry(f, n - 4)->action, "remove_member");

    /* The new state is a valid snapshot in its turn (checks every rule and
     * the audit chain). */
    struct kp_fsm *again = through_snapshot(f);
    assert_string_equal(kp_fsm_cluster(again)->e.id, "c-new");
    kp_fsm_free(again);
    kp_fsm_free(f);
    kp_fsm_free(old);
}

/* A snapshot taken before its cluster was initialised cannot start one. */
static void rebase_needs_cluster_settings(void **state)
{
    (void)state;
    struct kp_fsm *f = kp_fsm_new();
    struct kp_member self = {.e.id = (char *)"b-1", .node_id = 99, .address = (char *)"h:1"};
    char msg[256];
    assert_int_equal(kp_fsm_rebase(f, "c-new", &self, T0, "node:b-1", msg, sizeof(msg)), KP_EINVAL);
    assert_non_null(strstr(msg, "no cluster settings"));
    kp_fsm_free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(rebase_makes_a_new_cluster),
        cmocka_unit_test(rebase_needs_cluster_settings),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

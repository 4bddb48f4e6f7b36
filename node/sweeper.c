/* Housekeeping the leader does on a timer: retiring the previous secret of
 * a rotated key once its grace period is over.
 *
 * The state machine reads no clock, so "usable until retire_after_ms" is
 * enforced in two places: routers compare it with their own time when they
 * pick a secret, and this sweep, on the leader, proposes retire_key_secret
 * for every previous version past its time, which erases the sealed blob
 * from the registry on every replica. The sweep runs every few seconds and
 * proposes a bounded number of retirements per run, so a mass rotation does
 * not flood the log. */
#include <stdio.h>

#include "node.h"

enum {
    SWEEP_INTERVAL_MS = 5000,
    SWEEP_MAX_PER_RUN = 64,
};

struct sweep {
    struct kp_node *n;
    int64_t now;
    unsigned proposed;
};

static void retired(void *arg, int code, const struct kp_fsm_result *res)
{
    (void)arg;
    if (code != KP_OK)
        kp_warn("sweeper", "retiring an expired secret did not commit (%s); next run retries",
                kp_err_msg(code));
    else if (res->code != KP_OK)
        kp_warn("sweeper", "retiring an expired secret was refused: %s", res->message);
}

static void propose_retire(struct sweep *sw, const struct kp_key *key, uint32_t version)
{
    struct kp_cmd_retire_secret body = {.id = key->e.id, .version = version};
    struct kp_command cmd = {.v = KP_COMMAND_VERSION,
                             .op = KP_OP_RETIRE_KEY_SECRET,
                             .ts = sw->now,
                             .audit = {.actor = "system", .role = "node", .source = "sweeper"},
                             .body.retire_secret = &body};
    char errmsg[256];
    struct kp_buf buf;
    kp_buf_init(&buf);
    int rc = kp_command_encode(&cmd, &buf, errmsg, sizeof(errmsg));
    if (rc == KP_OK)
        rc = kp_store_propose(sw->n->store, buf.data, buf.len, retired, NULL);
    kp_buf_free(&buf);
    if (rc == KP_OK) {
        sw->proposed++;
        kp_info("sweeper",
                "key %s: secret version %u reached the end of its grace period; "
                "retiring it",
                key->e.id, version);
    }
}

static int sweep_key(const struct kp_entity *e, void *arg)
{
    struct sweep *sw = arg;
    const struct kp_key *key = (const struct kp_key *)e;
    for (uint32_t i = 0; i < key->nsecrets; i++) {
        const struct kp_key_secret *s = &key->secrets[i];
        if (s->state == KP_SECRET_PREVIOUS && s->retire_after_ms <= sw->now)
            propose_retire(sw, key, s->version);
        if (sw->proposed >= SWEEP_MAX_PER_RUN)
            return 1;
    }
    return 0;
}

static void on_sweep(uv_timer_t *t)
{
    struct kp_node *n = t->data;
    if (n->stopping)
        return;
    kp_node_check(n); /* retries a bootstrap or a record update that failed */
    if (!kp_store_is_leader(n->store))
        return;
    struct kp_view *v = kp_view_acquire(kp_store_views(n->store));
    if (v == NULL)
        return;
    struct sweep sw = {n, kp_now_unix_ms(), 0};
    kp_view_each(v, KP_KIND_KEY, sweep_key, &sw);
    kp_view_release(v);
}

void kp_sweeper_start(struct kp_node *n)
{
    kp_alerts_start(n); /* the leader's other periodic work (alerts.c, canary.c) */
    kp_canary_start(n);
    uv_timer_init(n->rt->main_loop, &n->sweep_timer);
    n->sweep_timer.data = n;
    n->sweep_timer_open = true;
    uv_timer_start(&n->sweep_timer, on_sweep, SWEEP_INTERVAL_MS, SWEEP_INTERVAL_MS);
}

void kp_sweeper_stop(struct kp_node *n)
{
    kp_alerts_stop(n);
    kp_canary_stop(n);
    if (n->sweep_timer_open) {
        n->sweep_timer_open = false;
        uv_close((uv_handle_t *)&n->sweep_timer, NULL);
    }
}

/* The node's budget lease client (docs/budgets.md, "The router side").
 *
 * Every LEASE_TICK_MS, or at once when a worker needs a grant, it takes
 * from the ledger what this node settled since the last report, what it
 * wants and what it gives back, and sends it as ONE budget_lease command:
 * proposed here on the leader, else POSTed to the leader's
 * /internal/v1/budget-lease, which proposes the same bytes. One command is
 * in flight at a time, and a command whose outcome is unknown (a timeout,
 * a lost leader) is sent again with the same bytes, so the same seq: the
 * state machine ignores a replay, so a settle is never counted twice nor
 * lost.
 *
 * Seqs start above both the node's last applied seq in this node's view
 * and the clock in ms, so a node that restarts with a view that lags the
 * leader does not reuse a seq. If the first try of a command is answered
 * as a replay anyway, nothing of it applied: it is rebuilt with a higher
 * seq.
 *
 * When the node stops, a last command gives every grant back (after the
 * workers drained, so no call holds a reservation), bounded by
 * STOP_WAIT_MS. */
#include <stdio.h>
#include <string.h>

#include "node.h"

enum {
    LEASE_TICK_MS = 100,
    RETRY_MS = 250,
    HTTP_TIMEOUT_MS = 3000,
    STOP_WAIT_MS = 3000,
};

struct kp_lease_client {
    struct kp_node *n;
    struct kp_budget_ledger *ledger;
    uv_timer_t timer;
    uv_async_t need;
    int open_handles;    /* and HTTP calls in flight: each holds the client */
    bool closed;         /* stopped: answers still in flight are dropped */
    bool inflight;       /* batch/cmd are out, not answered */
    bool waiting_reply;  /* a proposal or an HTTP call is running */
    unsigned tries;      /* sends of the in-flight command */
    int64_t next_try_ms; /* when to send it again */
    struct kp_lease_batch batch;
    struct kp_buf cmd;
    uint64_t seq; /* of the in-flight or last command; 0: not chosen */
    bool adopted; /* the grants of an earlier process were looked for */
    bool stopping;
    bool final_built;
    int64_t stop_deadline_ms;
    void (*stopped)(struct kp_node *n);
};

static struct kp_metric *m_commands, *m_retries, *m_refused, *m_items;

/* --- the answer ------------------------------------------------------------------- */

static void send_now(struct kp_lease_client *lc);

static void done_with_command(struct kp_lease_client *lc)
{
    lc->inflight = false;
    lc->waiting_reply = false;
    lc->tries = 0;
    kp_buf_consume(&lc->cmd, lc->cmd.len);
    kp_budget_ledger_answered(lc->ledger);
}

/* Whether item @i names a policy and budget the registry still has. */
static bool item_exists(struct kp_lease_client *lc, unsigned i)
{
    const struct kp_lease_item *it = &lc->batch.items[i];
    const struct kp_policy *p = (const struct kp_policy *)kp_fsm_get(kp_store_fsm(lc->n->store),
                                                                     KP_KIND_POLICY, it->policy);
    return p != NULL && kp_policy_budget(p, it->budget) != NULL;
}

static void refused(struct kp_lease_client *lc, int code, const char *message)
{
    kp_metric_add(m_refused, 1);
    /* Nothing of it applied, not even the seq: the same seq may go again
     * without the items that named a policy or budget now gone. */
    unsigned dropped = 0;
    for (unsigned i = 0; i < lc->batch.n; i++) {
        bool gone = (code == KP_ENOENT || code == KP_EINVAL) && !item_exists(lc, i);
        if (gone) {
            dropped++;
            kp_budget_ledger_forget(lc->ledger, &lc->batch, i);
        } else {
            kp_budget_ledger_unsend(lc->ledger, &lc->batch, i);
        }
    }
    if (dropped > 0)
        kp_info("budget",
                "budget_lease %llu refused (%s): %u item(s) for budgets no longer in "
                "the registry dropped; sending the rest again",
                (unsigned long long)lc->seq, message, dropped);
    else
        kp_warn("budget", "budget_lease %llu refused: %s; its settles go in the next one",
                (unsigned long long)lc->seq, message);
    lc->seq--; /* reused by the next command */
    done_with_command(lc);
    lc->next_try_ms = kp_now_unix_ms() + (dropped > 0 ? 0 : 1000);
}

/* A replay on the first try: this seq was used before this process
 * (a view that lagged); nothing applied. */
static void stale_seq(struct kp_lease_client *lc)
{
    kp_warn("budget", "budget_lease seq %llu was already used; choosing a higher one",
            (unsigned long long)lc->seq);
    for (unsigned i = 0; i < lc->batch.n; i++)
        kp_budget_ledger_unsend(lc->ledger, &lc->batch, i);
    lc->seq += 1000000;
    done_with_command(lc);
}

static void applied(struct kp_lease_client *lc, bool duplicate, const struct kp_lease_grant *g,
                    unsigned n)
{
    if (duplicate && lc->tries <= 1) {
        stale_seq(lc);
        return;
    }
    for (unsigned i = 0; i < lc->batch.n; i++) {
        if (duplicate)
            lc->batch.items[i].want = 0; /* granted 0 says nothing of the room */
        struct kp_lease_grant none = {0, 0, 0};
        kp_budget_ledger_answer(lc->ledger, &lc->batch, i, i < n ? &g[i] : &none);
    }
    done_with_command(lc);
    if (kp_budget_ledger_urgent(lc->ledger) || lc->stopping)
        send_now(lc);
}

/* The outcome is unknown: send the same bytes again. */
static void unknown(struct kp_lease_client *lc, const char *why)
{
    lc->waiting_reply = false;
    lc->next_try_ms = kp_now_unix_ms() + RETRY_MS;
    kp_metric_add(m_retries, 1);
    if (lc->tries == 1 || lc->tries % 20 == 0)
        kp_warn("budget", "budget_lease %llu: %s; sending it again (try %u)",
                (unsigned long long)lc->seq, why, lc->tries + 1);
}

static void proposed(void *arg, int code, const struct kp_fsm_result *res)
{
    struct kp_lease_client *lc = arg;
    if (code != KP_OK) {
        unknown(lc, kp_err_msg(code));
        return;
    }
    if (res->code != KP_OK) {
        refused(lc, res->code, res->message);
        return;
    }
    applied(lc, res->lease.duplicate, res->lease.items, res->lease.n);
}

static void release(struct kp_lease_client *lc);

static void http_answered(void *arg, const struct kp_call_result *r)
{
    struct kp_lease_client *lc = arg;
    /* A stop that gave up waiting may have closed the client meanwhile. */
    if (lc->closed) {
        release(lc);
        return;
    }
    lc->open_handles--;
    if (r->status != 200) {
        char why[320];
        json_t *doc = r->status ? json_loadb(r->body.data, r->body.len, 0, NULL) : NULL;
        const char *msg = json_string_value(json_object_get(doc, "message"));
        json_t *code = json_object_get(doc, "refused_code");
        if (json_is_integer(code)) {
            refused(lc, (int)json_integer_value(code), msg ? msg : "refused");
            json_decref(doc);
            return;
        }
        snprintf(why, sizeof(why), "the leader answered %ld %s", r->status,
                 r->status ? (msg ? msg : "") : r->error);
        json_decref(doc);
        unknown(lc, why);
        return;
    }
    json_t *doc = json_loadb(r->body.data, r->body.len, 0, NULL);
    json_t *items = json_object_get(doc, "items");
    struct kp_lease_grant g[KP_LEASE_ITEMS_MAX];
    unsigned n = 0;
    size_t i;
    json_t *v;
    json_array_foreach(items, i, v)
    {
        if (n == KP_LEASE_ITEMS_MAX)
            break;
        g[n].granted = json_integer_value(json_object_get(v, "granted"));
        g[n].grant = json_integer_value(json_object_get(v, "grant"));
        g[n].window_start_ms = json_integer_value(json_object_get(v, "window_start_ms"));
        n++;
    }
    bool ok = json_is_array(items) && n == lc->batch.n;
    bool dup = json_is_true(json_object_get(doc, "duplicate"));
    json_decref(doc);
    if (!ok) {
        unknown(lc, "the leader's answer could not be read");
        return;
    }
    applied(lc, dup, g, n);
}

/* --- sending ------------------------------------------------------------------------- */

static int encode(struct kp_lease_client *lc)
{
    struct kp_cmd_budget_lease body = {lc->n->node_id, lc->seq, lc->batch.items, lc->batch.n};
    char actor[160], errmsg[256];
    snprintf(actor, sizeof(actor), "node:%s", lc->n->cfg->node_name);
    struct kp_command cmd = {
        .v = KP_COMMAND_VERSION,
        .op = KP_OP_BUDGET_LEASE,
        .ts = kp_now_unix_ms(),
        .audit = {.actor = actor, .role = (char *)"node", .source = (char *)"lease"},
        .body.budget_lease = &body,
    };
    kp_buf_consume(&lc->cmd, lc->cmd.len);
    int rc = kp_command_encode(&cmd, &lc->cmd, errmsg, sizeof(errmsg));
    if (rc != KP_OK)
        kp_error("budget", "budget_lease cannot be encoded: %s", errmsg);
    return rc;
}

/* Grants the registry says this node holds before it ever asked: an
 * earlier process's, left by a crash (a clean stop gives them back). */
struct adopt_scan {
    struct kp_lease_client *lc;
    const struct kp_view *view;
    int64_t now;
    unsigned found;
};

static int adopt_state(const struct kp_entity *e, void *arg)
{
    struct adopt_scan *a = arg;
    const struct kp_budget_state *st = (const struct kp_budget_state *)e;
    const struct kp_policy *p = kp_view_policy(a->view, st->e.id);
    for (uint32_t i = 0; p != NULL && i < st->nwindows; i++) {
        const struct kp_budget_window_state *w = &st->windows[i];
        const struct kp_budget *b = kp_policy_budget(p, w->budget);
        kp_nanousd g = kp_budget_window_grant(w, a->lc->n->node_id);
        if (b == NULL || g <= 0 || a->now >= kp_budget_window_end_of(b, w->start_ms))
            continue;
        kp_warn("budget",
                "this node held %lld nano-USD of budget %s/%s before it started (it did not stop "
                "cleanly): counted as spent, since calls that died with it may have cost that",
                (long long)g, p->e.id, w->budget);
        struct kp_budget_window_def def = kp_budget_window_def_of(b);
        kp_budget_ledger_adopt(a->lc->ledger, p->e.id, w->budget, &def, b->kind == KP_BUDGET_HARD,
                               w->start_ms, g);
        a->found++;
    }
    return 0;
}

static void adopt(struct kp_lease_client *lc)
{
    struct kp_view *v = kp_view_acquire(&lc->n->views);
    if (v == NULL || kp_view_cluster(v) == NULL) {
        if (v != NULL)
            kp_view_release(v);
        return; /* no registry yet: look again at the next tick */
    }
    struct adopt_scan a = {lc, v, kp_now_unix_ms(), 0};
    kp_view_each(v, KP_KIND_BUDGET_STATE, adopt_state, &a);
    kp_view_release(v);
    lc->adopted = true;
}

/* Leave out of the batch the items whose policy or budget this node's
 * registry no longer has (deleted while calls used it): the state machine
 * would refuse the whole command for them. Returns what is left. */
static unsigned drop_gone(struct kp_lease_client *lc)
{
    struct kp_lease_batch *b = &lc->batch;
    unsigned kept = 0;
    for (unsigned i = 0; i < b->n; i++) {
        if (!item_exists(lc, i)) {
            kp_budget_ledger_forget(lc->ledger, b, i);
            continue;
        }
        b->items[kept] = b->items[i];
        b->slots[kept] = b->slots[i];
        kept++;
    }
    b->n = kept;
    return kept;
}

static void first_seq(struct kp_lease_client *lc)
{
    uint64_t seq = 0;
    struct kp_view *v = kp_view_acquire(&lc->n->views);
    const struct kp_lease_node *rec = v ? kp_view_lease_node(v, lc->n->node_id) : NULL;
    if (rec != NULL)
        seq = rec->seq;
    if (v != NULL)
        kp_view_release(v);
    uint64_t now = (uint64_t)kp_now_unix_ms();
    lc->seq = seq > now ? seq : now;
}

static void transmit(struct kp_lease_client *lc)
{
    struct kp_node *n = lc->n;
    lc->tries++;
    lc->waiting_reply = true;
    int rc = kp_store_is_leader(n->store)
                 ? kp_store_propose(n->store, lc->cmd.data, lc->cmd.len, proposed, lc)
                 : KP_ENOTLEADER;
    if (rc == KP_OK)
        return;
    uint64_t leader;
    char addr[256], control[256], url[512], auth[128];
    if (kp_store_leader(n->store, &leader, addr, sizeof(addr)) != KP_OK || leader == n->node_id ||
        !kp_node_member_control(n, leader, control, sizeof(control))) {
        unknown(lc, "no leader known");
        return;
    }
    kp_node_peer_url(url, sizeof(url), control, "/internal/v1/budget-lease");
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", kp_node_out_token(n));
    const char *hdrs[] = {auth, "Content-Type: application/msgpack", NULL};
    rc = kp_call_start_peer(n->rt->main_loop, "POST", url, hdrs, lc->cmd.data, lc->cmd.len,
                            HTTP_TIMEOUT_MS, http_answered, lc);
    kp_secret_wipe(auth, sizeof(auth));
    if (rc != KP_OK)
        unknown(lc, kp_err_msg(rc));
    else
        lc->open_handles++;
}

static void send_now(struct kp_lease_client *lc)
{
    struct kp_node *n = lc->n;
    if (lc->waiting_reply || n->store == NULL || n->store_closing)
        return;
    int64_t now = kp_now_unix_ms();
    if (lc->inflight) {
        if (now >= lc->next_try_ms)
            transmit(lc);
        return;
    }
    if (now < lc->next_try_ms)
        return;
    if (!lc->adopted)
        adopt(lc);
    if (lc->stopping && lc->final_built && !kp_budget_ledger_holds(lc->ledger))
        return;
    if (kp_budget_ledger_build(lc->ledger, now, lc->stopping, &lc->batch) == 0 ||
        drop_gone(lc) == 0)
        return;
    if (lc->stopping)
        lc->final_built = true;
    if (lc->seq == 0)
        first_seq(lc);
    lc->seq++;
    if (encode(lc) != KP_OK) {
        for (unsigned i = 0; i < lc->batch.n; i++)
            kp_budget_ledger_unsend(lc->ledger, &lc->batch, i);
        lc->seq--;
        return;
    }
    lc->inflight = true;
    lc->tries = 0;
    kp_metric_add(m_commands, 1);
    kp_metric_add(m_items, lc->batch.n);
    transmit(lc);
}

/* --- the stop ----------------------------------------------------------------------- */

/* One of the client's handles closed, or an HTTP call ended after the
 * stop: the last one frees it. */
static void release(struct kp_lease_client *lc)
{
    if (--lc->open_handles == 0) {
        kp_buf_free(&lc->cmd);
        kp_free(lc);
    }
}

static void handle_closed(uv_handle_t *h)
{
    release(h->data);
}

static void finish_stop(struct kp_lease_client *lc)
{
    void (*cb)(struct kp_node *) = lc->stopped;
    struct kp_node *n = lc->n;
    lc->stopped = NULL;
    lc->closed = true;
    n->lease = NULL;
    uv_close((uv_handle_t *)&lc->timer, handle_closed);
    uv_close((uv_handle_t *)&lc->need, handle_closed);
    if (cb != NULL)
        cb(n);
}

static void tick(uv_timer_t *t)
{
    struct kp_lease_client *lc = t->data;
    send_now(lc);
    if (lc->stopping) {
        bool done = !lc->inflight && lc->final_built && !kp_budget_ledger_holds(lc->ledger);
        if (done || kp_now_unix_ms() >= lc->stop_deadline_ms) {
            if (!done)
                kp_warn("budget",
                        "stopping with budget grants or settles not reported (no "
                        "leader answered in %d ms); they stay counted as spent",
                        STOP_WAIT_MS);
            finish_stop(lc);
        }
    }
}

static void need(uv_async_t *a)
{
    send_now(a->data);
}

static void need_cb(void *arg)
{
    struct kp_lease_client *lc = arg;
    uv_async_send(&lc->need);
}

int kp_lease_start(struct kp_node *n)
{
    struct kp_lease_client *lc = kp_calloc(1, sizeof(*lc));
    if (lc == NULL)
        return KP_ENOMEM;
    lc->ledger = kp_budget_ledger_new(need_cb, lc);
    if (lc->ledger == NULL) {
        kp_free(lc);
        return KP_ENOMEM;
    }
    lc->n = n;
    kp_buf_init(&lc->cmd);
    uv_timer_init(n->rt->main_loop, &lc->timer);
    uv_async_init(n->rt->main_loop, &lc->need, need);
    lc->timer.data = lc;
    lc->need.data = lc;
    lc->open_handles = 2;
    uv_timer_start(&lc->timer, tick, LEASE_TICK_MS, LEASE_TICK_MS);
    if (m_commands == NULL) {
        m_commands = kp_metric_counter("keyplane_budget_lease_commands_total",
                                       "budget_lease commands this node sent (one per report)");
        m_items = kp_metric_counter("keyplane_budget_lease_items_total",
                                    "budget items in those commands");
        m_retries = kp_metric_counter("keyplane_budget_lease_retries_total",
                                      "budget_lease commands sent again (outcome unknown)");
        m_refused = kp_metric_counter("keyplane_budget_lease_refused_total",
                                      "budget_lease commands the state machine refused");
    }
    n->lease = lc;
    n->router.budgets = lc->ledger;
    return KP_OK;
}

void kp_lease_stop(struct kp_node *n, void (*stopped)(struct kp_node *n))
{
    struct kp_lease_client *lc = n->lease;
    if (lc == NULL || lc->stopping) {
        if (lc == NULL && stopped != NULL)
            stopped(n);
        return;
    }
    lc->stopping = true;
    lc->stopped = stopped;
    lc->stop_deadline_ms = kp_now_unix_ms() + STOP_WAIT_MS;
    if (!kp_budget_ledger_holds(lc->ledger) && !lc->inflight) {
        finish_stop(lc);
        return;
    }
    lc->next_try_ms = 0;
    send_now(lc);
}

struct kp_budget_ledger *kp_lease_ledger(struct kp_node *n)
{
    return n->lease ? n->lease->ledger : NULL;
}

/* --- POST /internal/v1/budget-lease (the leader's side) ------------------------------ */

struct lease_op {
    struct kp_http_exchange *ex;
    char rid[160];
};

static json_t *answer_json(const struct kp_fsm_result *res)
{
    json_t *items = json_array();
    for (uint32_t i = 0; i < res->lease.n && items != NULL; i++)
        json_array_append_new(
            items, json_pack("{s:I,s:I,s:I}", "granted", (json_int_t)res->lease.items[i].granted,
                             "grant", (json_int_t)res->lease.items[i].grant, "window_start_ms",
                             (json_int_t)res->lease.items[i].window_start_ms));
    return json_pack("{s:b,s:o*}", "duplicate", res->lease.duplicate, "items", items);
}

static void lease_committed(void *arg, int code, const struct kp_fsm_result *res)
{
    struct lease_op *op = arg;
    if (code != KP_OK)
        kp_admin_error(op->ex, 503, op->rid, "unavailable", "not_committed", NULL,
                       "the budget_lease did not commit; send it again");
    else if (res->code != KP_OK)
        kp_node_respond_json(
            op->ex, 409, op->rid,
            json_pack("{s:i,s:s}", "refused_code", res->code, "message", res->message));
    else
        kp_node_respond_json(op->ex, 200, op->rid, answer_json(res));
    kp_free(op);
}

void kp_lease_internal(struct kp_node *n, struct kp_http_exchange *ex,
                       const struct kp_http_request *req, const char *rid)
{
    if (!kp_store_is_leader(n->store)) {
        kp_forward_to_leader(n, ex, req, rid);
        return;
    }
    /* Only budget_lease goes through here: a node's cluster secret is not
     * an operator's permission to change the registry. */
    struct kp_command cmd;
    char errmsg[256];
    int rc = kp_command_decode(req->body, req->body_len, &cmd, errmsg, sizeof(errmsg));
    bool lease = rc == KP_OK && cmd.op == KP_OP_BUDGET_LEASE;
    kp_command_free(&cmd);
    if (!lease) {
        kp_admin_error(ex, 400, rid, "invalid_request", "invalid_command", NULL,
                       rc != KP_OK ? errmsg : "only budget_lease is accepted here");
        return;
    }
    struct lease_op *op = kp_calloc(1, sizeof(*op));
    if (op != NULL) {
        op->ex = ex;
        snprintf(op->rid, sizeof(op->rid), "%s", rid);
    }
    rc = op ? kp_store_propose(n->store, req->body, req->body_len, lease_committed, op) : KP_ENOMEM;
    if (rc == KP_OK)
        return;
    kp_free(op);
    kp_admin_error(ex, 503, rid, "unavailable", rc == KP_ENOTLEADER ? "not_leader" : "error", NULL,
                   "retry shortly");
}

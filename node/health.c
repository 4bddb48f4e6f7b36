/* What routers learn about keys from real traffic, made cluster-wide.
 *
 * A router worker that gets an upstream 401 (the key is invalid) or an
 * out-of-quota answer reports it here (any thread). The main loop commits
 * set_key_health through Raft: directly on the leader, else by asking the
 * leader (/internal/v1/key-health). Every router then skips the key from
 * its next registry view on, until an operator (PUT
 * /admin/v1/keys/{id}/health) or, later, a successful canary brings it
 * back. Reports are deduplicated per key and bounded; a report the registry
 * already reflects costs nothing. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "node.h"

#define QUEUE 256

struct report {
    char key[129];
    uint64_t key_version;
    int status; /* enum kp_health_status */
    char error_class[32];
};

struct kp_health_queue {
    pthread_mutex_t mu;
    uv_async_t async;
    bool closed;
    struct report items[QUEUE];
    size_t n;
    struct kp_node *node;
};

/* Nothing to do: the registry says so already, the key is gone, or it
 * changed since the failing call read it (a new secret: the failure was
 * the old one's). */
static bool already(struct kp_node *n, const char *key, uint64_t key_version, int status)
{
    const struct kp_fsm *fsm = kp_store_fsm(n->store);
    const struct kp_key_health *h =
        (const struct kp_key_health *)kp_fsm_get(fsm, KP_KIND_KEY_HEALTH, key);
    const struct kp_entity *k = kp_fsm_get(fsm, KP_KIND_KEY, key);
    return (h != NULL && h->status == status) || k == NULL ||
           (key_version != 0 && k->version != key_version);
}

static void committed(void *arg, int code, const struct kp_fsm_result *res)
{
    (void)arg;
    if (code != KP_OK || res->code != KP_OK)
        kp_warn("health", "a key health change did not commit: %s",
                code != KP_OK ? kp_err_msg(code) : res->message);
}

int kp_health_commit(struct kp_node *n, const struct kp_key_health *h, const char *role,
                     const char *source, kp_store_apply_cb cb, void *arg)
{
    struct kp_command cmd = {
        .v = KP_COMMAND_VERSION,
        .op = KP_OP_SET_KEY_HEALTH,
        .ts = kp_now_unix_ms(),
        .audit = {.actor = (char *)"system", .role = (char *)role, .source = (char *)source},
        .body.key_health = (struct kp_key_health *)h};
    char errmsg[256];
    struct kp_buf buf;
    kp_buf_init(&buf);
    int rc = kp_command_encode(&cmd, &buf, errmsg, sizeof(errmsg));
    if (rc == KP_OK)
        rc = kp_store_propose(n->store, buf.data, buf.len, cb ? cb : committed, arg);
    kp_buf_free(&buf);
    return rc;
}

int kp_health_propose(struct kp_node *n, const char *key, int status, const char *error_class,
                      const char *source, kp_store_apply_cb cb, void *arg)
{
    struct kp_key_health h = {0};
    h.e.id = (char *)key;
    h.status = (uint8_t)status;
    h.last_error_class = error_class && error_class[0] ? (char *)error_class : NULL;
    return kp_health_commit(n, &h, "node", source, cb, arg);
}

static void leader_answered(void *arg, const struct kp_call_result *r)
{
    (void)arg;
    if (r->status != 200 && r->status != 201)
        kp_warn("health", "the leader did not take a key health report (%ld %s)", r->status,
                r->status ? "" : r->error);
}

static void send_to_leader(struct kp_node *n, const struct report *rep)
{
    uint64_t leader;
    char addr[256], control[256], url[512], auth[128];
    if (kp_store_leader(n->store, &leader, addr, sizeof(addr)) != KP_OK ||
        !kp_node_member_control(n, leader, control, sizeof(control))) {
        kp_warn("health",
                "key %s: no leader to report %s to; dropped (the next failure "
                "reports again)",
                rep->key, kp_health_status_name(rep->status));
        return;
    }
    json_t *body = json_pack("{s:s,s:s,s:s}", "key", rep->key, "status",
                             kp_health_status_name(rep->status), "error_class", rep->error_class);
    size_t len = 0;
    char *text = body ? kp_json_dumps(body, &len) : NULL;
    json_decref(body);
    kp_node_peer_url(url, sizeof(url), control, "/internal/v1/key-health");
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", kp_node_out_token(n));
    const char *hdrs[] = {auth, "Content-Type: application/json", NULL};
    if (text != NULL)
        kp_call_start_peer(n->rt->main_loop, "POST", url, hdrs, text, len, 5000, leader_answered,
                           n);
    kp_free(text);
    kp_secret_wipe(auth, sizeof(auth));
}

static void drain(uv_async_t *a)
{
    struct kp_health_queue *q = a->data;
    struct report batch[QUEUE];
    size_t n;
    pthread_mutex_lock(&q->mu);
    n = q->n;
    memcpy(batch, q->items, n * sizeof(batch[0]));
    q->n = 0;
    pthread_mutex_unlock(&q->mu);
    struct kp_node *node = q->node;
    for (size_t i = 0; i < n; i++) {
        const struct report *r = &batch[i];
        if (node->stopping || already(node, r->key, r->key_version, r->status))
            continue;
        kp_info("health", "key %s: %s after an upstream %s answer", r->key,
                kp_health_status_name(r->status), r->error_class);
        if (!kp_store_is_leader(node->store) ||
            kp_health_propose(node, r->key, r->status, r->error_class, "router", NULL, NULL) ==
                KP_ENOTLEADER)
            send_to_leader(node, r);
    }
}

void kp_health_report(void *arg, const char *key, uint64_t key_version, int status,
                      const char *error_class)
{
    struct kp_health_queue *q = arg;
    pthread_mutex_lock(&q->mu);
    if (!q->closed) {
        size_t i = 0;
        while (i < q->n && strcmp(q->items[i].key, key) != 0)
            i++;
        if (i < QUEUE) {
            struct report *r = &q->items[i];
            snprintf(r->key, sizeof(r->key), "%s", key);
            r->key_version = key_version;
            r->status = status;
            snprintf(r->error_class, sizeof(r->error_class), "%s", error_class);
            if (i == q->n)
                q->n++;
            uv_async_send(&q->async);
        }
    }
    pthread_mutex_unlock(&q->mu);
}

struct kp_health_queue *kp_health_queue_new(struct kp_node *n, uv_loop_t *loop)
{
    struct kp_health_queue *q = kp_calloc(1, sizeof(*q));
    if (q == NULL)
        return NULL;
    pthread_mutex_init(&q->mu, NULL);
    q->node = n;
    uv_async_init(loop, &q->async, drain);
    q->async.data = q;
    return q;
}

/* Stop taking reports and close the async handle (main loop). */
void kp_health_queue_close(struct kp_health_queue *q)
{
    if (q == NULL)
        return;
    pthread_mutex_lock(&q->mu);
    bool was = q->closed;
    q->closed = true;
    pthread_mutex_unlock(&q->mu);
    if (!was)
        uv_close((uv_handle_t *)&q->async, NULL);
}

/* After the loop has run the close: free. */
void kp_health_queue_free(struct kp_health_queue *q)
{
    if (q == NULL)
        return;
    pthread_mutex_destroy(&q->mu);
    kp_free(q);
}

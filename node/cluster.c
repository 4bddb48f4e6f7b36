/* Cluster membership over HTTP: the admin routes that change or show the
 * Raft configuration (docs/control-api.md), and the node-to-node routes a
 * joining node and a status page use (/internal/v1/join, /internal/v1/raft).
 *
 * A membership change is two steps on the leader: the Raft configuration
 * change (kp_store_add / _assign / _remove), then a put_member or
 * remove_member command that records it in the registry with an audit
 * entry. The registry's member record is what other nodes read to find a
 * member's control address (write forwarding) and name. */
#include <openssl/crypto.h>
#include <stdio.h>
#include <string.h>

#include "canary.h"
#include "node.h"

/* --- shared ---------------------------------------------------------------------- */

static const char *const role_names[] = {"voter", "standby", "spare"};

static int parse_role(const char *s)
{
    for (int i = 0; i < 3; i++)
        if (s != NULL && strcmp(s, role_names[i]) == 0)
            return i; /* enum kp_store_role and enum kp_member_role agree */
    return -1;
}

/* One pending membership operation: the HTTP exchange waiting for it and
 * the member record to commit afterwards. */
struct member_op {
    struct kp_node *n;
    struct kp_http_exchange *ex;
    char rid[160];
    char actor[160];
    char role_name[32];
    char source[32];
    char name[129];
    char address[257];
    char control[257];
    uint64_t node_id;
    int role;
    bool remove;
    bool meter;
    bool meter_given;   /* the request said; else a re-join keeps the record's */
    int status_ok;      /* 200 or 201 */
    char fail_msg[512]; /* the Raft step failed part way: answered after the record */
};

static struct member_op *member_op_new(struct kp_node *n, struct kp_http_exchange *ex,
                                       const char *rid)
{
    struct member_op *op = kp_calloc(1, sizeof(*op));
    if (op == NULL) {
        kp_admin_error(ex, 503, rid, "unavailable", "out_of_memory", NULL, "out of memory; retry");
        return NULL;
    }
    op->n = n;
    op->ex = ex;
    op->status_ok = 200;
    snprintf(op->rid, sizeof(op->rid), "%s", rid);
    return op;
}

static void set_caller(struct member_op *op, const struct kp_admin_caller *who)
{
    struct kp_audit_ctx ctx = kp_admin_audit_ctx(who, op->rid);
    snprintf(op->actor, sizeof(op->actor), "%s", ctx.actor ? ctx.actor : "unknown");
    snprintf(op->role_name, sizeof(op->role_name), "%s", ctx.role ? ctx.role : "");
    snprintf(op->source, sizeof(op->source), "%s", ctx.source ? ctx.source : "api");
}

static void op_fail(struct member_op *op, int code, const char *message)
{
    /* Anything but a conflict or a missing member is worth retrying later
     * (no leader, a change in progress, a node that could not be reached). */
    int status = code == KP_ECONFLICT ? 409 : code == KP_ENOENT ? 404 : 503;
    const char *type = status == 503 ? "unavailable" : status == 409 ? "conflict" : "not_found";
    kp_admin_error(op->ex, status, op->rid, type, "membership_change_failed", NULL, message);
    kp_free(op);
}

static void member_recorded(void *arg, int code, const struct kp_fsm_result *res)
{
    struct member_op *op = arg;
    if (code != KP_OK) {
        op_fail(op, code,
                "the Raft configuration changed but recording the member failed: leadership "
                "changed; check `clusterctl members list` and retry");
        return;
    }
    if (res->code != KP_OK) {
        kp_admin_refused(op->ex, op->rid, res);
        kp_free(op);
        return;
    }
    if (op->fail_msg[0] != '\0') {
        kp_admin_error(op->ex, 503, op->rid, "unavailable", "membership_change_failed", NULL,
                       op->fail_msg);
        kp_free(op);
        return;
    }
    if (op->remove) {
        kp_node_respond_json(op->ex, 200, op->rid, json_pack("{s:s}", "deleted", op->name));
    } else {
        const struct kp_entity *e =
            kp_fsm_get(kp_store_fsm(op->n->store), KP_KIND_MEMBER, op->name);
        kp_node_respond_json(op->ex, op->status_ok, op->rid, e ? kp_entity_json(e) : NULL);
    }
    kp_free(op);
}

/* Propose the registry record of @op (put_member or remove_member). */
static void record_member(struct member_op *op)
{
    struct kp_member m = {0};
    struct kp_cmd_target target = {op->name};
    struct kp_command cmd = {0};
    char errmsg[256];
    cmd.v = KP_COMMAND_VERSION;
    cmd.ts = kp_now_unix_ms();
    cmd.audit.actor = op->actor;
    cmd.audit.role = op->role_name[0] ? op->role_name : NULL;
    cmd.audit.request_id = op->rid;
    cmd.audit.source = op->source;
    if (op->remove) {
        cmd.op = KP_OP_REMOVE_MEMBER;
        cmd.body.target = &target;
    } else {
        m.e.id = op->name;
        m.node_id = op->node_id;
        m.address = op->address;
        m.control_address = op->control[0] ? op->control : NULL;
        m.role = (uint8_t)op->role;
        m.meter = op->meter;
        cmd.op = KP_OP_PUT_MEMBER;
        cmd.body.member = &m;
    }
    struct kp_buf buf;
    kp_buf_init(&buf);
    int rc = kp_command_encode(&cmd, &buf, errmsg, sizeof(errmsg));
    if (rc == KP_OK)
        rc = kp_store_propose(op->n->store, buf.data, buf.len, member_recorded, op);
    kp_buf_free(&buf);
    if (rc != KP_OK)
        op_fail(op, rc, rc == KP_ENOTLEADER ? "leadership changed; retry" : "cannot propose");
}

/* The role @id has in the Raft configuration (enum kp_store_role), or -1
 * when it is not in it. */
static int raft_role_of(struct kp_node *n, uint64_t id)
{
    struct kp_store_status st;
    int role = -1;
    if (kp_store_status(n->store, &st) == KP_OK)
        for (uint32_t i = 0; i < st.nservers; i++)
            if (st.servers[i].id == id)
                role = st.servers[i].role;
    kp_store_status_free(&st);
    return role;
}

static void removed_told(void *arg, const struct kp_call_result *r)
{
    char *name = arg;
    if (r->status != 200)
        kp_info("cluster",
                "could not tell %s it was removed (%s); it learns nothing more from "
                "the cluster and turns unready once it misses the leader",
                name, r->status ? "refused" : r->error);
    kp_free(name);
}

/* A member taken out of the configuration is sent nothing more by the
 * leader, so it would never learn it; tell it, so that its /readyz turns
 * 503 "removed" and load balancers stop sending it calls. Best effort: a
 * member that is down learns nothing, and is not ready when it comes back
 * (no leader answers it). */
static void tell_removed(struct member_op *op)
{
    char url[512], auth[128];
    if (op->control[0] == '\0' || op->node_id == op->n->node_id)
        return;
    char *name = kp_strdup(op->name);
    json_t *body = json_pack("{s:I}", "node_id", (json_int_t)op->node_id);
    size_t len = 0;
    char *text = body != NULL ? kp_json_dumps(body, &len) : NULL;
    json_decref(body);
    kp_node_peer_url(url, sizeof(url), op->control, "/internal/v1/removed");
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", kp_node_out_token(op->n));
    const char *hdrs[] = {auth, "Content-Type: application/json", NULL};
    if (name == NULL || text == NULL ||
        kp_call_start_peer(op->n->rt->main_loop, "POST", url, hdrs, text, len, 2000, removed_told,
                           name) != KP_OK)
        kp_free(name);
    kp_free(text);
    kp_secret_wipe(auth, sizeof(auth));
}

static void raft_changed(void *arg, int code, const char *message)
{
    struct member_op *op = arg;
    if (code == KP_OK && op->remove)
        tell_removed(op);
    if (code != KP_OK) {
        char msg[400];
        snprintf(msg, sizeof(msg), "Raft configuration change failed: %s", message);
        /* The registry follows the configuration as it is: a node added
         * but not promoted (unreachable) is recorded with the role it got,
         * so it can be seen and removed by name. */
        int actual = op->remove ? -1 : raft_role_of(op->n, op->node_id);
        if (actual >= 0 && actual != op->role) {
            op->role = actual;
            snprintf(op->fail_msg, sizeof(op->fail_msg), "%s; recorded as %s", msg,
                     role_names[actual]);
            record_member(op);
            return;
        }
        op_fail(op, code, msg);
        return;
    }
    record_member(op);
}

/* The registry member named @name, or NULL (valid until the next apply). */
static const struct kp_member *member_named(struct kp_node *n, const char *name)
{
    return (const struct kp_member *)kp_fsm_get(kp_store_fsm(n->store), KP_KIND_MEMBER, name);
}

static json_t *parse_body(struct kp_http_exchange *ex, const struct kp_http_request *req,
                          const char *rid)
{
    json_error_t err;
    json_t *body = json_loadb(req->body, req->body_len, 0, &err);
    if (body == NULL || !json_is_object(body)) {
        char msg[300];
        snprintf(msg, sizeof(msg), "the body must be a JSON object%s%s", body == NULL ? ": " : "",
                 body == NULL ? err.text : "");
        json_decref(body);
        kp_admin_error(ex, 400, rid, "invalid_request", "invalid_json", "", msg);
        return NULL;
    }
    return body;
}

/* Whether a member name is acceptable as a registry id. */
static bool valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 128)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '-'))
            return false;
    }
    return true;
}

/* Read and check the fields of a new member from @body into @op; answers
 * 400 and returns false on a bad one. */
static bool read_new_member(struct member_op *op, json_t *body)
{
    const char *bad = NULL, *why = NULL;
    json_t *id = json_object_get(body, "node_id");
    const char *address = json_string_value(json_object_get(body, "address"));
    const char *name = json_string_value(json_object_get(body, "name"));
    const char *control = json_string_value(json_object_get(body, "control_address"));
    const char *role = json_string_value(json_object_get(body, "role"));
    json_t *meter = json_object_get(body, "meter");
    if (!json_is_integer(id) || json_integer_value(id) <= 0)
        bad = "node_id", why = "must be an integer above 0";
    else if (address == NULL || strlen(address) == 0 || strlen(address) > 256 ||
             strchr(address, ':') == NULL)
        bad = "address", why = "must be the member's raft address host:port";
    else if (name != NULL && !valid_name(name))
        bad = "name", why = "must be 1..128 of A-Z a-z 0-9 . _ : -";
    else if (control != NULL && (strlen(control) > 256 || strchr(control, ':') == NULL))
        bad = "control_address", why = "must be host:port of the member's control listener";
    else if (role != NULL && parse_role(role) < 0)
        bad = "role", why = "must be voter, standby or spare";
    else if (meter != NULL && !json_is_boolean(meter))
        bad = "meter", why = "must be true or false";
    if (bad != NULL) {
        char msg[200];
        snprintf(msg, sizeof(msg), "%s: %s", bad, why);
        kp_admin_error(op->ex, 400, op->rid, "invalid_request", "invalid_field", bad, msg);
        kp_free(op);
        return false;
    }
    op->node_id = (uint64_t)json_integer_value(id);
    snprintf(op->address, sizeof(op->address), "%s", address);
    if (name != NULL)
        snprintf(op->name, sizeof(op->name), "%s", name);
    else
        snprintf(op->name, sizeof(op->name), "node-%llu", (unsigned long long)op->node_id);
    snprintf(op->control, sizeof(op->control), "%s", control ? control : "");
    op->role = role ? parse_role(role) : KP_STORE_VOTER;
    op->meter = json_is_true(meter);
    op->meter_given = meter != NULL;
    return true;
}

struct meter_of {
    uint64_t node_id;
    bool meter;
};

static int find_meter_flag(const struct kp_entity *e, void *arg)
{
    const struct kp_member *m = (const struct kp_member *)e;
    struct meter_of *f = arg;
    if (m->node_id != f->node_id)
        return 0;
    f->meter = m->meter;
    return 1;
}

/* The meter flag of the member record of @node_id (false when none). */
static bool recorded_meter(struct kp_node *n, uint64_t node_id)
{
    struct meter_of f = {node_id, false};
    struct kp_view *v = kp_view_acquire(&n->views);
    if (v != NULL)
        kp_view_each(v, KP_KIND_MEMBER, find_meter_flag, &f);
    kp_view_release(v);
    return f.meter;
}

/* Add the member in @op: to Raft unless it is there already with the same
 * address (a join that is retried), then to the registry. */
static void add_member(struct member_op *op)
{
    struct kp_store_status st;
    if (kp_store_status(op->n->store, &st) != KP_OK) {
        kp_store_status_free(&st);
        op_fail(op, KP_ENOMEM, "out of memory");
        return;
    }
    bool present = false;
    for (uint32_t i = 0; i < st.nservers; i++) {
        if (st.servers[i].id == op->node_id) {
            present = strcmp(st.servers[i].address, op->address) == 0;
            if (present)
                op->role = st.servers[i].role; /* record what Raft holds */
            if (!present) {
                char msg[400];
                snprintf(msg, sizeof(msg),
                         "node_id %llu is already a member at %s; remove it first",
                         (unsigned long long)op->node_id, st.servers[i].address);
                kp_store_status_free(&st);
                op_fail(op, KP_ECONFLICT, msg);
                return;
            }
        }
    }
    kp_store_status_free(&st);
    if (present) {
        /* A member bringing its record up to date (it restarted, or its
         * control address changed) keeps its meter flag unless it says. */
        if (!op->meter_given)
            op->meter = recorded_meter(op->n, op->node_id);
        record_member(op);
        return;
    }
    op->status_ok = 201;
    int rc = kp_store_add(op->n->store, op->node_id, op->address, op->role, raft_changed, op);
    if (rc != KP_OK)
        op_fail(op, rc,
                rc == KP_ECONFLICT ? "the node id or address is already a member"
                                   : "cannot change the Raft configuration now");
}

/* --- GET /admin/v1/cluster ------------------------------------------------------------ */

struct cluster_view {
    struct kp_node *n;
    struct kp_http_exchange *ex;
    char rid[160];
    json_t *out;
    json_t *members;
    unsigned pending;
    int64_t asked_ms;
};

struct member_poll {
    struct cluster_view *cv;
    json_t *member;
};

static void cluster_finish(struct cluster_view *cv)
{
    kp_node_respond_json(cv->ex, 200, cv->rid, cv->out);
    json_decref(cv->members);
    kp_free(cv);
}

/* This node's usage spool and how far the meters are behind its events
 * (the age of its oldest sealed segment not yet shipped to every meter;
 * 0 when none waits): shown per member by GET /admin/v1/cluster. */
static void add_spool(struct kp_node *n, json_t *to)
{
    struct kp_metering_health mh;
    kp_metering_health(n, &mh);
    int64_t lag = mh.oldest_unshipped_ms != 0 ? kp_now_unix_ms() - mh.oldest_unshipped_ms : 0;
    json_object_set_new(to, "spool",
                        json_pack("{s:I,s:I,s:I}", "bytes", (json_int_t)mh.spool_bytes, "cap_bytes",
                                  (json_int_t)mh.spool_cap_bytes, "segments_waiting",
                                  (json_int_t)mh.spool_waiting));
    json_object_set_new(to, "meter_lag_ms", json_integer(lag < 0 ? 0 : lag));
}

static void member_polled(void *arg, const struct kp_call_result *r)
{
    struct member_poll *p = arg;
    struct cluster_view *cv = p->cv;
    json_t *status = r->status == 200 ? json_loadb(r->body.data, r->body.len, 0, NULL) : NULL;
    json_object_set_new(p->member, "reachable", json_boolean(status != NULL));
    if (status != NULL) {
        static const char *const fields[] = {"term",  "commit_index", "applied_index",
                                             "state", "spool",        "meter_lag_ms"};
        for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
            json_t *v = json_object_get(status, fields[i]);
            if (v != NULL)
                json_object_set(p->member, fields[i], v);
        }
        json_object_set_new(p->member, "last_contact_ms",
                            json_integer(kp_now_unix_ms() - cv->asked_ms));
    } else if (r->status != 0) {
        json_object_set_new(p->member, "error", json_sprintf("answered %ld", r->status));
    } else {
        json_object_set_new(p->member, "error", json_string(r->error));
    }
    json_decref(status);
    json_decref(p->member);
    kp_free(p);
    if (--cv->pending == 0)
        cluster_finish(cv);
}

/* The registry member for raft server @id: its name and control address. */
struct member_lookup {
    uint64_t id;
    const struct kp_member *m;
};

static int lookup_member(const struct kp_entity *e, void *arg)
{
    struct member_lookup *l = arg;
    const struct kp_member *m = (const struct kp_member *)e;
    if (m->node_id != l->id)
        return 0;
    l->m = m;
    return 1;
}

static void handle_cluster(struct kp_node *n, struct kp_http_exchange *ex, const char *rid)
{
    struct kp_store_status st;
    struct cluster_view *cv = kp_calloc(1, sizeof(*cv));
    if (cv == NULL || kp_store_status(n->store, &st) != KP_OK) {
        kp_free(cv);
        kp_admin_error(ex, 503, rid, "unavailable", "out_of_memory", NULL, "out of memory; retry");
        return;
    }
    cv->n = n;
    cv->ex = ex;
    snprintf(cv->rid, sizeof(cv->rid), "%s", rid);
    const struct kp_cluster *c = kp_fsm_cluster(kp_store_fsm(n->store));
    struct kp_view *view = kp_view_acquire(kp_store_views(n->store));
    cv->members = json_array();
    cv->out = json_pack("{s:s?,s:I,s:s,s:I,s:I,s:I,s:I,s:o}", "cluster_id", c ? c->e.id : NULL,
                        "this_node", (json_int_t)n->node_id, "state", st.state, "term",
                        (json_int_t)st.term, "commit_index", (json_int_t)st.commit_index,
                        "applied_index", (json_int_t)st.applied_index, "snapshot_index",
                        (json_int_t)st.snapshot_index, "members", json_incref(cv->members));
    if (cv->out != NULL && st.leader_id != 0)
        json_object_set_new(cv->out, "leader",
                            json_pack("{s:I}", "node_id", (json_int_t)st.leader_id));
    cv->asked_ms = kp_now_unix_ms();
    cv->pending = 1; /* held until every poll started */
    for (uint32_t i = 0; cv->out != NULL && i < st.nservers; i++) {
        const struct kp_store_server *s = &st.servers[i];
        struct member_lookup l = {s->id, NULL};
        if (view != NULL)
            kp_view_each(view, KP_KIND_MEMBER, lookup_member, &l);
        json_t *m = json_pack("{s:I,s:s?,s:s,s:s?,s:s,s:b}", "node_id", (json_int_t)s->id, "name",
                              l.m ? l.m->e.id : NULL, "address", s->address, "control_address",
                              l.m ? l.m->control_address : NULL, "role", role_names[s->role],
                              "leader", s->leader);
        if (m == NULL)
            continue;
        if (st.leader_id == n->node_id)
            json_object_set_new(m, "match_index", json_integer((json_int_t)s->match_index));
        json_array_append(cv->members, m);
        if (s->id == n->node_id) {
            json_object_set_new(m, "term", json_integer((json_int_t)st.term));
            json_object_set_new(m, "commit_index", json_integer((json_int_t)st.commit_index));
            json_object_set_new(m, "applied_index", json_integer((json_int_t)st.applied_index));
            json_object_set_new(m, "state", json_string(st.state));
            json_object_set_new(m, "last_contact_ms", json_integer(0));
            json_object_set_new(m, "reachable", json_true());
            add_spool(n, m);
            json_decref(m);
            continue;
        }
        struct member_poll *p = kp_calloc(1, sizeof(*p));
        char url[512], auth[128];
        if (p == NULL || l.m == NULL || l.m->control_address == NULL) {
            kp_free(p);
            json_object_set_new(m, "reachable", json_false());
            json_object_set_new(m, "error", json_string("control address unknown"));
            json_decref(m);
            continue;
        }
        p->cv = cv;
        p->member = m;
        kp_node_peer_url(url, sizeof(url), l.m->control_address, "/internal/v1/raft");
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", kp_node_out_token(n));
        const char *hdrs[] = {auth, NULL};
        cv->pending++;
        if (kp_call_start_peer(kp_http_loop(ex), "GET", url, hdrs, NULL, 0, 1000, member_polled,
                               p) != KP_OK) {
            cv->pending--;
            json_object_set_new(m, "reachable", json_false());
            json_decref(m);
            kp_free(p);
        }
        kp_secret_wipe(auth, sizeof(auth));
    }
    if (view != NULL)
        kp_view_release(view);
    kp_store_status_free(&st);
    if (--cv->pending == 0)
        cluster_finish(cv);
}

/* --- transfer ------------------------------------------------------------------------ */

struct transfer_op {
    struct kp_http_exchange *ex;
    char rid[160];
};

static void transferred(void *arg, int code, const char *message)
{
    struct transfer_op *t = arg;
    if (code == KP_OK)
        kp_node_respond_json(t->ex, 200, t->rid, json_pack("{s:s}", "result", message));
    else
        kp_admin_error(t->ex, 503, t->rid, "unavailable", "transfer_failed", NULL, message);
    kp_free(t);
}

static void handle_transfer(struct kp_node *n, struct kp_http_exchange *ex,
                            const struct kp_http_request *req, const char *rid)
{
    json_t *body = req->body_len ? parse_body(ex, req, rid) : json_object();
    if (body == NULL)
        return;
    json_t *id = json_object_get(body, "node_id");
    if (id != NULL && (!json_is_integer(id) || json_integer_value(id) < 0)) {
        json_decref(body);
        kp_admin_error(ex, 400, rid, "invalid_request", "invalid_field", "node_id",
                       "node_id: must be a voter's node id, or 0 for any");
        return;
    }
    uint64_t target = id ? (uint64_t)json_integer_value(id) : 0;
    json_decref(body);
    struct transfer_op *t = kp_calloc(1, sizeof(*t));
    if (t == NULL) {
        kp_admin_error(ex, 503, rid, "unavailable", "out_of_memory", NULL, "out of memory; retry");
        return;
    }
    t->ex = ex;
    snprintf(t->rid, sizeof(t->rid), "%s", rid);
    int rc = kp_store_transfer(n->store, target, transferred, t);
    if (rc != KP_OK) {
        kp_free(t);
        kp_admin_error(ex, rc == KP_ENOENT ? 400 : 503, rid,
                       rc == KP_ENOENT ? "invalid_request" : "unavailable", "transfer_failed",
                       rc == KP_ENOENT ? "node_id" : NULL,
                       rc == KP_ENOENT ? "node_id: not a voter of this cluster (or this node)"
                                       : "cannot transfer leadership now; retry");
    }
}

/* --- the admin routes ------------------------------------------------------------------ */

void kp_cluster_admin(struct kp_node *n, struct kp_http_exchange *ex,
                      const struct kp_http_request *req, const char *rid,
                      const struct kp_admin_caller *who)
{
    const char *path = req->path;
    const char *m = req->method;
    static const char members[] = "/admin/v1/members";
    if (strcmp(path, "/admin/v1/cluster") == 0 && strcmp(m, "GET") == 0) {
        handle_cluster(n, ex, rid);
        return;
    }
    if (strcmp(path, "/admin/v1/cluster/transfer") == 0 && strcmp(m, "POST") == 0) {
        handle_transfer(n, ex, req, rid);
        return;
    }
    if (strcmp(path, members) == 0 && strcmp(m, "POST") == 0) {
        json_t *body = parse_body(ex, req, rid);
        struct member_op *op = body ? member_op_new(n, ex, rid) : NULL;
        if (op != NULL) {
            set_caller(op, who);
            if (read_new_member(op, body))
                add_member(op);
        }
        json_decref(body);
        return;
    }
    if (strncmp(path, members, sizeof(members) - 1) == 0 && path[sizeof(members) - 1] == '/') {
        char name[160];
        const char *rest = path + sizeof(members);
        const char *slash = strchr(rest, '/');
        size_t len = slash ? (size_t)(slash - rest) : strlen(rest);
        snprintf(name, sizeof(name), "%.*s", (int)(len < 159 ? len : 159), rest);
        const struct kp_member *mem = member_named(n, name);
        bool role_route = slash != NULL && strcmp(slash, "/role") == 0;
        bool meter_route = slash != NULL && strcmp(slash, "/meter") == 0;
        if ((slash != NULL && !role_route && !meter_route) ||
            ((role_route || meter_route) && strcmp(m, "PUT") != 0) ||
            (!role_route && !meter_route && strcmp(m, "DELETE") != 0)) {
            kp_admin_error(ex, 404, rid, "not_found", "not_found", NULL,
                           "no such route; see docs/control-api.md");
            return;
        }
        if (mem == NULL) {
            kp_admin_error(ex, 404, rid, "not_found", "not_found", NULL, "no such member");
            return;
        }
        struct member_op *op = member_op_new(n, ex, rid);
        if (op == NULL)
            return;
        set_caller(op, who);
        snprintf(op->name, sizeof(op->name), "%s", mem->e.id);
        snprintf(op->address, sizeof(op->address), "%s", mem->address);
        snprintf(op->control, sizeof(op->control), "%s",
                 mem->control_address ? mem->control_address : "");
        op->node_id = mem->node_id;
        op->meter = mem->meter;
        op->role = mem->role;
        int rc;
        if (meter_route) {
            /* Only the record changes: Raft does not know about meters. */
            json_t *body = parse_body(ex, req, rid);
            json_t *v = body ? json_object_get(body, "meter") : NULL;
            if (body != NULL && !json_is_boolean(v))
                kp_admin_error(ex, 400, rid, "invalid_request", "invalid_field", "meter",
                               "meter: must be true or false");
            if (!json_is_boolean(v)) {
                json_decref(body);
                kp_free(op);
                return;
            }
            op->meter = json_is_true(v);
            json_decref(body);
            record_member(op);
            return;
        }
        if (role_route) {
            json_t *body = parse_body(ex, req, rid);
            if (body == NULL) {
                kp_free(op);
                return;
            }
            op->role = parse_role(json_string_value(json_object_get(body, "role")));
            json_decref(body);
            if (op->role < 0) {
                kp_admin_error(ex, 400, rid, "invalid_request", "invalid_field", "role",
                               "role: must be voter, standby or spare");
                kp_free(op);
                return;
            }
            if (op->node_id == n->node_id) {
                kp_admin_error(ex, 409, rid, "conflict", "is_leader", NULL,
                               "this member is the leader: transfer leadership first "
                               "(clusterctl leader transfer), then change its role");
                kp_free(op);
                return;
            }
            if (raft_role_of(n, op->node_id) == op->role) {
                record_member(op); /* Raft has it already: bring the record along */
                return;
            }
            rc = kp_store_assign(n->store, op->node_id, op->role, raft_changed, op);
        } else {
            if (op->node_id == n->node_id) {
                kp_admin_error(ex, 409, rid, "conflict", "is_leader", NULL,
                               "this member is the leader: transfer leadership first "
                               "(clusterctl leader transfer), then remove it");
                kp_free(op);
                return;
            }
            op->remove = true;
            if (raft_role_of(n, op->node_id) < 0) {
                record_member(op); /* gone from Raft already: drop the record */
                return;
            }
            rc = kp_store_remove(n->store, op->node_id, raft_changed, op);
        }
        if (rc != KP_OK)
            op_fail(op, rc,
                    rc == KP_ECONFLICT ? "the member already has this role"
                    : rc == KP_EBUSY   ? "another membership change is in progress; retry shortly"
                                       : "cannot change the Raft configuration now");
        return;
    }
    kp_admin_error(ex, 404, rid, "not_found", "not_found", NULL,
                   "no such route; see docs/control-api.md");
}

/* --- /internal/v1/ ---------------------------------------------------------------- */

static bool token_matches(const char *given, const char *want)
{
    size_t n = strlen(want);
    return n > 0 && strlen(given) == n && CRYPTO_memcmp(given, want, n) == 0;
}

/* Either key's secret during a rotation. */
static bool internal_authorized(struct kp_node *n, const struct kp_http_request *req)
{
    const char *auth = kp_http_request_header(req, "authorization");
    if (auth == NULL || strncmp(auth, "Bearer ", 7) != 0)
        return false;
    return token_matches(auth + 7, n->internal_token) ||
           token_matches(auth + 7, n->internal_token_prev);
}

/* A node-to-node call without the cluster secret: a node started with
 * another master key (it cannot join), or someone probing. Logged with
 * the caller's address, at most once every 10 s (main loop only). */
static void refused_log(struct kp_http_exchange *ex, const struct kp_http_request *req)
{
    static int64_t last_ms;
    static unsigned unlogged;
    int64_t now = (int64_t)(kp_now_mono_us() / 1000);
    if (last_ms != 0 && now - last_ms < 10000) {
        unlogged++;
        return;
    }
    char peer[80];
    kp_http_peer_addr(ex, peer, sizeof(peer));
    kp_warn(
        "cluster",
        "refused %s %.100s from %s: no valid cluster secret (a node with another master key?)%s",
        req->method, req->path, peer, unlogged > 0 ? "; earlier refusals not logged" : "");
    last_ms = now;
    unlogged = 0;
}

static void handle_raft_status(struct kp_node *n, struct kp_http_exchange *ex, const char *rid)
{
    struct kp_store_status st;
    if (kp_store_status(n->store, &st) != KP_OK) {
        kp_admin_error(ex, 503, rid, "unavailable", "out_of_memory", NULL, "out of memory");
        return;
    }
    const struct kp_cluster *c = kp_fsm_cluster(kp_store_fsm(n->store));
    json_t *v = json_pack(
        "{s:I,s:s,s:I,s:I,s:I,s:I,s:I,s:s?}", "node_id", (json_int_t)st.node_id, "state", st.state,
        "term", (json_int_t)st.term, "commit_index", (json_int_t)st.commit_index, "applied_index",
        (json_int_t)st.applied_index, "last_index", (json_int_t)st.last_index, "leader_id",
        (json_int_t)st.leader_id, "cluster_id", c != NULL ? c->e.id : NULL);
    if (v != NULL)
        add_spool(n, v);
    kp_node_respond_json(ex, 200, rid, v);
    kp_store_status_free(&st);
}

/* POST /internal/v1/key-health {"key","status","error_class"}: a router
 * on another node learned that a key is unusable (health.c). */
struct health_op {
    struct kp_http_exchange *ex;
    char rid[160];
};

static void health_committed(void *arg, int code, const struct kp_fsm_result *res)
{
    struct health_op *h = arg;
    if (code != KP_OK)
        kp_admin_error(h->ex, 503, h->rid, "unavailable", "not_committed", NULL,
                       "the key health change did not commit; retry");
    else if (res->code != KP_OK)
        kp_admin_refused(h->ex, h->rid, res);
    else
        kp_node_respond_json(h->ex, 200, h->rid, json_pack("{s:b}", "committed", 1));
    kp_free(h);
}

static void handle_key_health(struct kp_node *n, struct kp_http_exchange *ex,
                              const struct kp_http_request *req, const char *rid)
{
    if (!kp_store_is_leader(n->store)) {
        kp_forward_to_leader(n, ex, req, rid);
        return;
    }
    json_t *body = parse_body(ex, req, rid);
    if (body == NULL)
        return;
    const char *key = json_string_value(json_object_get(body, "key"));
    const char *status = json_string_value(json_object_get(body, "status"));
    const char *cls = json_string_value(json_object_get(body, "error_class"));
    json_t *ver = json_object_get(body, "key_version");
    const struct kp_entity *k = key ? kp_fsm_get(kp_store_fsm(n->store), KP_KIND_KEY, key) : NULL;
    if (k != NULL && json_is_integer(ver) && (uint64_t)json_integer_value(ver) != k->version) {
        /* The key changed since the failing call read it: nothing to do. */
        json_decref(body);
        kp_node_respond_json(ex, 200, rid, json_pack("{s:b}", "committed", 0));
        return;
    }
    int st = -1;
    for (int i = 0; status != NULL && kp_health_status_name(i) != NULL; i++)
        if (strcmp(kp_health_status_name(i), status) == 0)
            st = i;
    struct health_op *h = NULL;
    int rc = KP_EINVAL;
    if (key != NULL && st >= 0 && (h = kp_calloc(1, sizeof(*h))) != NULL) {
        h->ex = ex;
        snprintf(h->rid, sizeof(h->rid), "%s", rid);
        rc = kp_health_propose(n, key, st, cls, "router", health_committed, h);
    }
    json_decref(body);
    if (rc == KP_OK)
        return;
    kp_free(h);
    if (rc == KP_EINVAL)
        kp_admin_error(ex, 400, rid, "invalid_request", "invalid_field", NULL,
                       "key and status (a key health status) are required");
    else
        kp_admin_error(ex, 503, rid, "unavailable", "not_leader", NULL, "retry shortly");
}

/* POST /internal/v1/removed {"node_id"}: the leader took this node out of
 * the Raft configuration (tell_removed). */
static void handle_removed(struct kp_node *n, struct kp_http_exchange *ex,
                           const struct kp_http_request *req, const char *rid)
{
    json_t *body = parse_body(ex, req, rid);
    if (body == NULL)
        return;
    json_t *id = json_object_get(body, "node_id");
    bool me = json_is_integer(id) && (uint64_t)json_integer_value(id) == n->node_id;
    json_decref(body);
    if (me)
        kp_node_removed(n);
    kp_node_respond_json(ex, 200, rid, json_pack("{s:b}", "removed", me));
}

void kp_internal_handle(struct kp_node *n, struct kp_http_exchange *ex,
                        const struct kp_http_request *req, const char *rid)
{
    if (!internal_authorized(n, req)) {
        refused_log(ex, req);
        kp_admin_error(ex, 401, rid, "unauthorized", "bad_cluster_secret", NULL,
                       "node-to-node calls need the cluster secret: is this node's master key "
                       "the cluster's?");
        return;
    }
    if (strcmp(req->path, "/internal/v1/segments") == 0 && strcmp(req->method, "POST") == 0) {
        kp_metering_ingest(n, ex, req, rid);
        return;
    }
    if (strcmp(req->path, "/internal/v1/key-health") == 0 && strcmp(req->method, "POST") == 0) {
        handle_key_health(n, ex, req, rid);
        return;
    }
    if (strcmp(req->path, "/internal/v1/budget-lease") == 0 && strcmp(req->method, "POST") == 0) {
        kp_lease_internal(n, ex, req, rid);
        return;
    }
    if (strcmp(req->path, "/internal/v1/canary") == 0 && strcmp(req->method, "POST") == 0) {
        kp_canary_internal(n, ex, req, rid);
        return;
    }
    if (strcmp(req->path, "/internal/v1/health") == 0 && strcmp(req->method, "GET") == 0) {
        kp_alerts_report(n, ex, rid);
        return;
    }
    if (strcmp(req->path, "/internal/v1/removed") == 0 && strcmp(req->method, "POST") == 0) {
        handle_removed(n, ex, req, rid);
        return;
    }
    if (strcmp(req->path, "/internal/v1/raft") == 0 && strcmp(req->method, "GET") == 0) {
        handle_raft_status(n, ex, rid);
        return;
    }
    if (strcmp(req->path, "/internal/v1/join") == 0 && strcmp(req->method, "POST") == 0) {
        if (!kp_store_is_leader(n->store)) {
            kp_forward_to_leader(n, ex, req, rid);
            return;
        }
        json_t *body = parse_body(ex, req, rid);
        struct member_op *op = body ? member_op_new(n, ex, rid) : NULL;
        if (op != NULL && read_new_member(op, body)) {
            snprintf(op->actor, sizeof(op->actor), "node:%s", op->name);
            snprintf(op->role_name, sizeof(op->role_name), "node");
            snprintf(op->source, sizeof(op->source), "join");
            kp_info("cluster", "node %llu (%s at %s) asks to join as %s",
                    (unsigned long long)op->node_id, op->name, op->address, role_names[op->role]);
            add_member(op);
        }
        json_decref(body);
        return;
    }
    kp_admin_error(ex, 404, rid, "not_found", "not_found", NULL, "no such internal route");
}

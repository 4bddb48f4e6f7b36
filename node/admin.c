/* The control API under /admin/v1/ (docs/control-api.md): the route
 * table, the answers, and the registry reads and writes shared by every
 * entity kind. Who may call is admin_auth.c's; proposing a write and
 * answering once it applied, admin_write.c's; keys and tokens are in
 * admin_keys.c, the audit chain in admin_audit.c, budgets and freezes in
 * admin_budgets.c and admin_freezes.c, alerts (and the checks of alert
 * rules and webhooks) in admin_alerts.c; the cluster routes are
 * cluster.c's.
 *
 * Everything runs on the main loop, which also runs raft, so the state
 * machine is read directly (kp_fsm_get) and proposals complete on this
 * thread. A request goes:
 *
 *   routed --(write or ?consistent=true on a follower)--> forwarded
 *     |
 *     v
 *   authenticated --(401/403)--> denied: audited on the leader (at most 20/s),
 *     |                          forwarded to the leader from a follower
 *     v
 *   [barrier, for ?consistent=true] --> handler --> answered
 *                                          |
 *                                          +-- write: proposed --> applied
 *                                                 --> answered from the state machine
 *
 * A write that loses leadership before it commits is answered 503: it may
 * or may not apply later, so the client re-reads before retrying. */
#include <ctype.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin_internal.h"

/* Permission of PUT/DELETE on a {kind}: operate for pools, else change. */
#define PERM_KIND_WRITE (~0u)

struct kp_admin_route {
    const char *method;
    const char *pattern; /* also the metrics label */
    unsigned perm;       /* KP_PERM_*; 0: any valid token */
    int kind;            /* the kind a literal segment names, or -1 */
    enum kp_op op;       /* for handle_target_op; KP_OP_NONE: from the kind */
    void (*fn)(struct kp_admin_req *r);
};

/* The entity kinds {kind} stands for, and their write ops. Tokens and
 * members have routes of their own. */
static const struct {
    const char *plural;
    enum kp_kind kind;
    enum kp_op put, del;
} kinds[] = {
    {"providers", KP_KIND_PROVIDER, KP_OP_PUT_PROVIDER, KP_OP_DELETE_PROVIDER},
    {"keys", KP_KIND_KEY, KP_OP_PUT_KEY, KP_OP_DELETE_KEY},
    {"pools", KP_KIND_POOL, KP_OP_PUT_POOL, KP_OP_DELETE_POOL},
    {"tenants", KP_KIND_TENANT, KP_OP_PUT_TENANT, KP_OP_DELETE_TENANT},
    {"projects", KP_KIND_PROJECT, KP_OP_PUT_PROJECT, KP_OP_DELETE_PROJECT},
    {"policies", KP_KIND_POLICY, KP_OP_PUT_POLICY, KP_OP_DELETE_POLICY},
    {"prices", KP_KIND_PRICE, KP_OP_PUT_PRICE, KP_OP_DELETE_PRICE},
    {"alert-rules", KP_KIND_ALERT_RULE, KP_OP_PUT_ALERT_RULE, KP_OP_DELETE_ALERT_RULE},
    {"webhooks", KP_KIND_WEBHOOK, KP_OP_PUT_WEBHOOK, KP_OP_DELETE_WEBHOOK},
};
#define N_KINDS (sizeof(kinds) / sizeof(kinds[0]))

static void handle_whoami(struct kp_admin_req *r);
static void handle_usage_recent(struct kp_admin_req *r);
static void handle_list(struct kp_admin_req *r);
static void handle_get(struct kp_admin_req *r);
static void handle_put(struct kp_admin_req *r);
static void handle_get_health(struct kp_admin_req *r);
static void handle_put_health(struct kp_admin_req *r);
static void handle_target_op(struct kp_admin_req *r);
static void handle_cluster(struct kp_admin_req *r);

#define READ   KP_PERM_READ_REGISTRY
#define AUDIT  KP_PERM_READ_AUDIT
#define CHG    KP_PERM_CHANGE
#define OPR    KP_PERM_OPERATE
#define USAGE  KP_PERM_READ_USAGE
#define ALERTS KP_PERM_READ_ALERTS

/* First match of path and method wins; the specific key routes come before
 * the generic {kind} ones. */
static const struct kp_admin_route routes[] = {
    {"GET", "/admin/v1/whoami", 0, -1, KP_OP_NONE, handle_whoami},
    {"POST", "/admin/v1/session", 0, -1, KP_OP_NONE, kp_admin__session_start},
    {"GET", "/admin/v1/session", 0, -1, KP_OP_NONE, kp_admin__session_get},
    {"DELETE", "/admin/v1/session", 0, -1, KP_OP_NONE, kp_admin__session_end},
    {"GET", "/admin/v1/usage/recent", USAGE, -1, KP_OP_NONE, handle_usage_recent},
    {"GET", "/admin/v1/usage", USAGE, -1, KP_OP_NONE, kp_admin__usage_query},
    {"GET", "/admin/v1/usage/events", USAGE, -1, KP_OP_NONE, kp_admin__usage_events},
    {"GET", "/admin/v1/audit", AUDIT, -1, KP_OP_NONE, kp_admin__audit_list},
    {"GET", "/admin/v1/audit/verify", AUDIT, -1, KP_OP_NONE, kp_admin__audit_verify},
    {"GET", "/admin/v1/cluster", READ, -1, KP_OP_NONE, handle_cluster},
    {"POST", "/admin/v1/cluster/transfer", CHG, -1, KP_OP_NONE, handle_cluster},
    {"GET", "/admin/v1/members", READ, KP_KIND_MEMBER, KP_OP_NONE, handle_list},
    {"POST", "/admin/v1/members", CHG, -1, KP_OP_NONE, handle_cluster},
    {"GET", "/admin/v1/members/{id}", READ, KP_KIND_MEMBER, KP_OP_NONE, handle_get},
    {"DELETE", "/admin/v1/members/{id}", CHG, -1, KP_OP_NONE, handle_cluster},
    {"PUT", "/admin/v1/members/{id}/role", CHG, -1, KP_OP_NONE, handle_cluster},
    {"PUT", "/admin/v1/members/{id}/meter", CHG, -1, KP_OP_NONE, handle_cluster},
    {"GET", "/admin/v1/tokens", READ, KP_KIND_TOKEN, KP_OP_NONE, handle_list},
    {"POST", "/admin/v1/tokens", CHG, KP_KIND_TOKEN, KP_OP_NONE, kp_admin__token_create},
    {"GET", "/admin/v1/tokens/{id}", READ, KP_KIND_TOKEN, KP_OP_NONE, handle_get},
    {"DELETE", "/admin/v1/tokens/{id}", CHG, KP_KIND_TOKEN, KP_OP_DELETE_TOKEN, handle_target_op},
    {"POST", "/admin/v1/tokens/{id}/disable", CHG, KP_KIND_TOKEN, KP_OP_DISABLE_TOKEN,
     handle_target_op},
    {"PUT", "/admin/v1/keys/{id}", CHG, KP_KIND_KEY, KP_OP_NONE, kp_admin__key_put},
    {"POST", "/admin/v1/keys/{id}/secret", OPR, KP_KIND_KEY, KP_OP_NONE, kp_admin__key_rotate},
    {"POST", "/admin/v1/keys/{id}/secrets/{version}/retire", OPR, KP_KIND_KEY, KP_OP_NONE,
     kp_admin__key_retire},
    {"POST", "/admin/v1/keys/{id}/disable", OPR, KP_KIND_KEY, KP_OP_NONE, kp_admin__key_disable},
    {"POST", "/admin/v1/keys/{id}/enable", OPR, KP_KIND_KEY, KP_OP_NONE, kp_admin__key_enable},
    {"POST", "/admin/v1/keys/{id}/revoke", CHG, KP_KIND_KEY, KP_OP_NONE, kp_admin__key_revoke},
    {"GET", "/admin/v1/key-health", READ, KP_KIND_KEY_HEALTH, KP_OP_NONE, handle_list},
    {"GET", "/admin/v1/keys/{id}/health", READ, KP_KIND_KEY_HEALTH, KP_OP_NONE, handle_get_health},
    {"PUT", "/admin/v1/keys/{id}/health", OPR, KP_KIND_KEY_HEALTH, KP_OP_NONE, handle_put_health},
    {"GET", "/admin/v1/keys/{id}/balance", USAGE, -1, KP_OP_NONE, kp_admin__balance_get},
    {"PUT", "/admin/v1/keys/{id}/balance", CHG, -1, KP_OP_NONE, kp_admin__balance_put},
    {"POST", "/admin/v1/keys/{id}/balance/topups", CHG, -1, KP_OP_NONE, kp_admin__balance_topup},
    {"POST", "/admin/v1/secrets/rewrap", CHG, -1, KP_OP_NONE, kp_admin__secrets_rewrap},
    /* The whole registry, secrets sealed but the pepper in clear: admin only. */
    {"GET", "/admin/v1/snapshot", CHG | AUDIT, -1, KP_OP_NONE, kp_admin__snapshot},
    {"GET", "/admin/v1/price-table", READ, -1, KP_OP_NONE, kp_admin__price_table},
    {"GET", "/admin/v1/price-table/{id}", READ, -1, KP_OP_NONE, kp_admin__price_of},
    {"GET", "/admin/v1/budgets", USAGE, -1, KP_OP_NONE, kp_admin__budgets_list},
    {"GET", "/admin/v1/budgets/{id}/{budget}", USAGE, -1, KP_OP_NONE, kp_admin__budget_get},
    {"POST", "/admin/v1/budgets/{id}/{budget}/reset", CHG, -1, KP_OP_NONE, kp_admin__budget_reset},
    {"GET", "/admin/v1/freezes", READ, -1, KP_OP_NONE, kp_admin__freezes_list},
    {"GET", "/admin/v1/freezes/{scope}/{name}", READ, -1, KP_OP_NONE, kp_admin__freeze_get},
    {"PUT", "/admin/v1/freezes/{scope}/{name}", OPR, -1, KP_OP_NONE, kp_admin__freeze_put},
    {"DELETE", "/admin/v1/freezes/{scope}/{name}", OPR, -1, KP_OP_NONE, kp_admin__freeze_delete},
    {"GET", "/admin/v1/alerts", ALERTS, -1, KP_OP_NONE, kp_admin__alerts_list},
    {"GET", "/admin/v1/alerts/dead-letters", ALERTS, -1, KP_OP_NONE, kp_admin__alerts_dead_letters},
    {"GET", "/admin/v1/alerts/{id}", ALERTS, KP_KIND_ALERT, KP_OP_NONE, kp_admin__alert_get},
    {"POST", "/admin/v1/alerts/{id}/ack", OPR, KP_KIND_ALERT, KP_OP_NONE, kp_admin__alert_ack},
    {"GET", "/admin/v1/{kind}", READ, -1, KP_OP_NONE, handle_list},
    {"GET", "/admin/v1/{kind}/{id}", READ, -1, KP_OP_NONE, handle_get},
    {"PUT", "/admin/v1/{kind}/{id}", PERM_KIND_WRITE, -1, KP_OP_NONE, handle_put},
    {"DELETE", "/admin/v1/{kind}/{id}", PERM_KIND_WRITE, -1, KP_OP_NONE, handle_target_op},
};
#define N_ROUTES (sizeof(routes) / sizeof(routes[0]))

/* --- answers ------------------------------------------------------------------ */

static const char *status_type(int status)
{
    switch (status) {
    case 400:
        return "invalid_request";
    case 401:
        return "unauthorized";
    case 403:
        return "forbidden";
    case 404:
        return "not_found";
    case 405:
        return "method_not_allowed";
    case 409:
        return "conflict";
    case 413:
        return "too_large";
    default:
        return "unavailable";
    }
}

static void respond_body(struct kp_http_exchange *ex, int status, const char *rid, json_t *v,
                         const struct kp_http_header *extra, unsigned n_extra, bool wipe)
{
    struct kp_http_header h[6] = {KP_HTTP_HEADER("Content-Type", "application/json"),
                                  KP_HTTP_HEADER("X-Request-Id", rid)};
    unsigned nh = 2;
    size_t len = 0;
    char *body = v != NULL ? kp_json_dumps(v, &len) : NULL;
    json_decref(v);
    for (unsigned i = 0; i < n_extra && nh < 6; i++)
        h[nh++] = extra[i];
    if (body == NULL) {
        struct kp_http_header retry = KP_HTTP_HEADER("Retry-After", "1");
        h[0] = retry;
        kp_http_respond(ex, 503, h, 2, NULL, 0);
        return;
    }
    kp_http_respond(ex, status, h, nh, body, len);
    if (wipe)
        kp_secret_wipe(body, len);
    kp_free(body);
}

void kp_admin__quote(char *dst, size_t len, const char *src)
{
    size_t i = 0;
    if (len == 0)
        return;
    for (; src != NULL && src[i] != '\0' && i + 1 < len; i++) {
        unsigned char c = (unsigned char)src[i];
        dst[i] = c >= 0x20 && c < 0x7f ? (char)c : '?';
    }
    dst[i] = '\0';
}

static void error_with(struct kp_http_exchange *ex, int status, const char *rid, const char *type,
                       const char *code, const char *field, const char *message,
                       const struct kp_http_header *extra, unsigned n_extra)
{
    char safe[512];
    json_t *msg = json_string(message);
    if (msg == NULL) { /* not UTF-8: show it as ASCII */
        kp_admin__quote(safe, sizeof(safe), message);
        msg = json_string(safe);
    }
    json_t *err = json_object(), *v = json_object();
    if (err != NULL && v != NULL && msg != NULL) {
        json_object_set_new(err, "message", msg);
        json_object_set_new(err, "type", json_string(type));
        json_object_set_new(err, "code", json_string(code));
        if (field != NULL)
            json_object_set_new(err, "field", json_string(field));
        json_object_set_new(v, "error", err);
    } else {
        json_decref(msg);
        json_decref(err);
        json_decref(v);
        v = NULL;
    }
    struct kp_http_header h[4];
    unsigned nh = 0;
    for (unsigned i = 0; i < n_extra && nh < 3; i++)
        h[nh++] = extra[i];
    if (status == 503)
        h[nh++] = KP_HTTP_HEADER("Retry-After", "1");
    respond_body(ex, status, rid, v, h, nh, false);
}

void kp_admin__fail(struct kp_admin_req *r, int status, const char *code, const char *field,
                    const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    error_with(r->ex, status, r->rid, status_type(status), code, field, msg, NULL, 0);
}

void kp_admin__oom(struct kp_admin_req *r)
{
    kp_admin__fail(r, 503, "out_of_memory", NULL, "out of memory; retry");
}

void kp_admin__respond_with(struct kp_admin_req *r, int status, json_t *v,
                            const struct kp_http_header *h, unsigned nh, bool wipe)
{
    respond_body(r->ex, status, r->rid, v, h, nh > 4 ? 4 : nh, wipe);
}

void kp_admin__respond(struct kp_admin_req *r, int status, json_t *v, uint64_t etag, bool wipe)
{
    char tag[32] = "";
    struct kp_http_header h[1] = {KP_HTTP_HEADER("ETag", tag)};
    unsigned nh = 0;
    if (etag > 0) {
        snprintf(tag, sizeof(tag), "\"%" PRIu64 "\"", etag);
        h[nh++] = KP_HTTP_HEADER("ETag", tag);
    }
    respond_body(r->ex, status, r->rid, v, h, nh, wipe);
}

const char *kp_admin__field_of(const char *msg, char *buf, size_t len)
{
    const char *colon = strstr(msg, ": ");
    size_t n = colon != NULL ? (size_t)(colon - msg) : 0;
    if (n == 0 || n >= len || memchr(msg, ' ', n) != NULL || memchr(msg, '\'', n) != NULL)
        return NULL;
    memcpy(buf, msg, n);
    buf[n] = '\0';
    return buf;
}

void kp_admin_refused(struct kp_http_exchange *ex, const char *rid, const struct kp_fsm_result *res)
{
    char field[160];
    switch (res->code) {
    case KP_EINVAL:
    case KP_EVERSION:
        kp_admin_error(ex, 400, rid, "invalid_request", "invalid_field",
                       kp_admin__field_of(res->message, field, sizeof(field)), res->message);
        return;
    case KP_ENOENT:
        kp_admin_error(ex, 404, rid, "not_found", "not_found", NULL, res->message);
        return;
    case KP_ECONFLICT:
        kp_admin_error(ex, 409, rid, "conflict",
                       strncmp(res->message, "expect_version:", 15) == 0 ? "version_conflict"
                                                                         : "conflict",
                       NULL, res->message);
        return;
    default:
        kp_admin_error(ex, 503, rid, "unavailable", "apply_failed", NULL, res->message);
    }
}

struct kp_audit_ctx kp_admin_audit_ctx(const struct kp_admin_caller *who, const char *rid)
{
    static char source[] = "api";
    return (struct kp_audit_ctx){
        .actor = (char *)who->token_id,
        .role = (char *)kp_role_name(who->role),
        .request_id = (char *)rid,
        .source = source,
    };
}

/* --- request helpers ------------------------------------------------------------ */

const struct kp_fsm *kp_admin__fsm(const struct kp_admin_req *r)
{
    return kp_store_fsm(r->n->store);
}

/* Percent-decode s[0..n) into exchange memory (with @plus, '+' is a
 * space). KP_EINVAL for a bad escape or a NUL, KP_ENOMEM. */
static int pct_decode(struct kp_http_exchange *ex, const char *s, size_t n, bool plus, char **out)
{
    char *d = kp_http_alloc(ex, n + 1);
    size_t j = 0;
    if (d == NULL)
        return KP_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%') {
            int hi = i + 2 < n ? kp_hex_value(s[i + 1]) : -1;
            int lo = i + 2 < n ? kp_hex_value(s[i + 2]) : -1;
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
                return KP_EINVAL;
            d[j++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            d[j++] = plus && s[i] == '+' ? ' ' : s[i];
        }
    }
    d[j] = '\0';
    *out = d;
    return KP_OK;
}

int kp_admin__query_each(struct kp_admin_req *r,
                         int (*fn)(void *arg, const char *name, const char *value), void *arg)
{
    for (const char *p = r->req->query; *p != '\0';) {
        const char *end = strchr(p, '&');
        size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
        const char *eq = memchr(p, '=', len);
        size_t klen = eq != NULL ? (size_t)(eq - p) : len;
        const char *vs = eq != NULL ? eq + 1 : p + len;
        char *k, *v;
        int rc = KP_OK;
        if (len > 0) {
            rc = pct_decode(r->ex, p, klen, true, &k);
            if (rc == KP_OK)
                rc = pct_decode(r->ex, vs, (size_t)(p + len - vs), true, &v);
            if (rc == KP_OK)
                rc = fn(arg, k, v);
        }
        if (rc != KP_OK)
            return rc;
        p += len + (end != NULL);
    }
    return KP_OK;
}

struct query_find {
    const char *name;
    const char *value;
};

static int query_find(void *arg, const char *name, const char *value)
{
    struct query_find *f = arg;
    if (strcmp(name, f->name) != 0)
        return KP_OK;
    f->value = value;
    return KP_EEXIST; /* found: stop */
}

const char *kp_admin__query(struct kp_admin_req *r, const char *name)
{
    struct query_find f = {name, NULL};
    return kp_admin__query_each(r, query_find, &f) == KP_EEXIST ? f.value : NULL;
}

json_t *kp_admin__body(struct kp_admin_req *r, bool empty_ok)
{
    const char *b = r->req->body;
    size_t n = r->req->body_len, i = 0;
    while (i < n && isspace((unsigned char)b[i]))
        i++;
    if (i == n) {
        if (empty_ok)
            return json_object();
        kp_admin__fail(r, 400, "invalid_json", NULL, "body: expected a JSON object");
        return NULL;
    }
    json_error_t err;
    json_t *v = json_loadb(b, n, JSON_REJECT_DUPLICATES, &err);
    if (v == NULL) {
        /* jansson's text names the problem, then quotes the input near
         * it ("near 'sk-...'"): cut that off, it may be a secret. */
        char safe[200];
        char *near = strstr(err.text, " near ");
        if (near != NULL)
            *near = '\0';
        kp_admin__quote(safe, sizeof(safe), err.text);
        kp_admin__fail(r, 400, "invalid_json", NULL,
                       "body: not valid JSON: %s (line %d, column %d)", safe, err.line, err.column);
        return NULL;
    }
    if (!json_is_object(v)) {
        json_decref(v);
        kp_admin__fail(r, 400, "invalid_json", NULL, "body: expected a JSON object");
        return NULL;
    }
    return v;
}

json_t *kp_admin__entity_json(const struct kp_entity *e)
{
    json_t *v = kp_entity_json(e);
    if (v == NULL)
        return NULL;
    /* json.c promises never to render binary fields; make sure. */
    if (e->kind == KP_KIND_TOKEN)
        json_object_del(v, "hash");
    json_t *secrets = e->kind == KP_KIND_KEY ? json_object_get(v, "secrets") : NULL;
    size_t i;
    json_t *s;
    json_array_foreach(secrets, i, s) json_object_del(s, "sealed");
    kp_admin__decorate(v, e);
    return v;
}

/* If-Match: "N" or N; If-None-Match: * (must not exist). */
static bool parse_preconditions(struct kp_admin_req *r)
{
    const char *im = kp_http_request_header(r->req, "if-match");
    const char *inm = kp_http_request_header(r->req, "if-none-match");
    if (im != NULL && inm != NULL) {
        kp_admin__fail(r, 400, "invalid_header", NULL, "use If-Match or If-None-Match, not both");
        return false;
    }
    if (inm != NULL) {
        if (strcmp(inm, "*") != 0) {
            kp_admin__fail(r, 400, "invalid_header", NULL,
                           "If-None-Match: only * is accepted (create, refused if it exists)");
            return false;
        }
        r->has_expect = true;
        r->expect = 0;
        return true;
    }
    if (im == NULL)
        return true;
    size_t n = strlen(im);
    const char *p = im;
    if (n >= 2 && im[0] == '"' && im[n - 1] == '"') {
        p++;
        n -= 2;
    }
    uint64_t v = 0;
    bool ok = n > 0 && n <= 19;
    for (size_t i = 0; ok && i < n; i++) {
        ok = p[i] >= '0' && p[i] <= '9';
        v = v * 10 + (uint64_t)(p[i] - '0');
    }
    if (!ok || v == 0) {
        kp_admin__fail(r, 400, "invalid_header", NULL,
                       "If-Match: expected an entity version such as \"3\" (the ETag of a GET)");
        return false;
    }
    r->has_expect = true;
    r->expect = v;
    return true;
}

/* --- generic entity handlers ---------------------------------------------------------- */

static enum kp_op kind_op(int kind, bool del)
{
    for (size_t i = 0; i < N_KINDS; i++) {
        if ((int)kinds[i].kind == kind)
            return del ? kinds[i].del : kinds[i].put;
    }
    return KP_OP_NONE;
}

/* The last usage events this node's router recorded, from memory (the
 * durable record goes through the spool to the meters): ?limit=N,
 * 1..10000, default 100. */
static void handle_usage_recent(struct kp_admin_req *r)
{
    const char *lim = kp_admin__query(r, "limit");
    long limit = 100;
    if (lim != NULL) {
        char *end = NULL;
        limit = strtol(lim, &end, 10);
        if (end == lim || *end != '\0' || limit < 1 || limit > 10000) {
            kp_admin__fail(r, 400, "invalid_query", "limit", "limit: an integer from 1 to 10000");
            return;
        }
    }
    json_t *events = kp_usage_log_recent(r->n->usage, (size_t)limit);
    if (events == NULL) {
        kp_admin__oom(r);
        return;
    }
    kp_admin__respond(
        r, 200, json_pack("{s:o,s:s}", "events", events, "node", r->n->cfg->node_name), 0, false);
}

static void handle_whoami(struct kp_admin_req *r)
{
    json_t *perms = json_array();
    unsigned have = kp_role_perms(r->who.role);
    for (unsigned bit = 1; bit != 0 && bit <= KP_PERM_ALL; bit <<= 1) {
        if (have & bit)
            json_array_append_new(perms, json_string(kp_perm_name(bit)));
    }
    json_t *v = json_object();
    if (perms == NULL || v == NULL) {
        json_decref(perms);
        json_decref(v);
        kp_admin__oom(r);
        return;
    }
    json_object_set_new(v, "token_id", json_string(r->who.token_id));
    json_object_set_new(v, "role", json_string(kp_role_name(r->who.role)));
    json_object_set_new(v, "permissions", perms);
    kp_admin__respond(r, 200, v, 0, false);
}

struct collect {
    const struct kp_entity **v;
    size_t n, cap;
    const char *after; /* only ids sorting after this one, or NULL */
};

static int collect_one(const struct kp_entity *e, void *arg)
{
    struct collect *c = arg;
    if (c->n < c->cap && (c->after == NULL || strcmp(e->id, c->after) > 0))
        c->v[c->n++] = e;
    return 0;
}

/* Lists come a page at a time, so that a registry of 100,000 keys is never
 * rendered in one go on the loop that also runs Raft: ?limit=N (1..5000,
 * default 500) and ?after=ID; the answer has "next" (the id to pass as
 * after) while more remain. */
enum { LIST_DEFAULT = 500, LIST_MAX = 5000 };

static int cmp_id(const void *a, const void *b)
{
    return strcmp((*(const struct kp_entity *const *)a)->id,
                  (*(const struct kp_entity *const *)b)->id);
}

bool kp_admin__list_limit(struct kp_admin_req *r, size_t *limit)
{
    const char *lim = kp_admin__query(r, "limit");
    long n = LIST_DEFAULT;
    if (lim != NULL) {
        char *end = NULL;
        n = strtol(lim, &end, 10);
        if (end == lim || *end != '\0' || n < 1 || n > LIST_MAX) {
            kp_admin__fail(r, 400, "invalid_query", "limit", "limit: an integer from 1 to %d",
                           LIST_MAX);
            return false;
        }
    }
    *limit = (size_t)n;
    return true;
}

struct kp_view *kp_admin__view(struct kp_admin_req *r)
{
    /* Building a view only takes references (the state machine stays
     * logically unchanged), so the const of kp_store_fsm is cast away. */
    struct kp_view *view = kp_fsm_view_build((struct kp_fsm *)kp_admin__fsm(r));
    if (view == NULL)
        kp_admin__oom(r);
    return view;
}

static void handle_list(struct kp_admin_req *r)
{
    size_t limit;
    if (!kp_admin__list_limit(r, &limit))
        return;
    /* A view is the one way to iterate the registry. */
    struct kp_view *view = kp_admin__view(r);
    if (view == NULL)
        return;
    struct collect c = {.cap = kp_view_count(view, r->kind), .after = kp_admin__query(r, "after")};
    c.v = kp_malloc((c.cap + 1) * sizeof(*c.v));
    json_t *items = json_array(), *v = json_object();
    bool ok = c.v != NULL && items != NULL && v != NULL;
    if (ok) {
        kp_view_each(view, r->kind, collect_one, &c);
        qsort(c.v, c.n, sizeof(*c.v), cmp_id);
    }
    size_t n = c.n < limit ? c.n : limit;
    for (size_t i = 0; ok && i < n; i++)
        ok = json_array_append_new(items, kp_admin__entity_json(c.v[i])) == 0;
    if (ok) {
        json_object_set_new(v, "items", items);
        json_object_set_new(v, "applied_index",
                            json_integer((json_int_t)kp_view_applied_index(view)));
        if (n < c.n)
            json_object_set_new(v, "next", json_string(c.v[n - 1]->id));
    }
    kp_free(c.v);
    kp_view_release(view);
    if (!ok) {
        json_decref(items);
        json_decref(v);
        kp_admin__oom(r);
        return;
    }
    kp_admin__respond(r, 200, v, 0, false);
}

static void handle_get(struct kp_admin_req *r)
{
    const struct kp_entity *e = kp_fsm_get(kp_admin__fsm(r), r->kind, r->id);
    if (e == NULL) {
        char id[130];
        kp_admin__quote(id, sizeof(id), r->id);
        kp_admin__fail(r, 404, "not_found", NULL, "no %s '%s'", kp_kind_name(r->kind), id);
        return;
    }
    json_t *v = kp_admin__entity_json(e);
    if (v == NULL) {
        kp_admin__oom(r);
        return;
    }
    kp_admin__respond(r, 200, v, e->version, false);
}

/* Propose a command built from JSON (@body may be NULL) and answer with
 * the entity, or {"deleted": id}. */
static void propose_json(struct kp_admin_req *r, enum kp_op op, const json_t *body, bool is_delete)
{
    struct kp_audit_ctx audit = kp_admin_audit_ctx(&r->who, r->rid);
    struct kp_buf cmd;
    char msg[256] = "", field[160] = "";
    kp_buf_init(&cmd);
    int rc = kp_command_from_json(op, r->id, body, kp_now_unix_ms(), &audit, r->has_expect,
                                  r->expect, &cmd, msg, sizeof(msg), field, sizeof(field));
    if (rc != KP_OK) {
        if (rc == KP_ENOMEM)
            kp_admin__oom(r);
        else
            kp_admin__fail(r, 400, "invalid_field", field[0] != '\0' ? field : NULL, "%s", msg);
        return;
    }
    struct kp_admin_write *w = kp_admin__write_new(r, r->kind, r->id);
    if (w == NULL) {
        kp_buf_free(&cmd);
        return;
    }
    w->is_delete = is_delete;
    kp_admin__submit(w, &cmd, true);
}

/* A key's health: the registry's record, or "healthy" when nothing was
 * ever recorded for an existing key. */
static void handle_get_health(struct kp_admin_req *r)
{
    const struct kp_fsm *fsm = kp_admin__fsm(r);
    const struct kp_entity *e = kp_fsm_get(fsm, KP_KIND_KEY_HEALTH, r->id);
    if (e != NULL) {
        kp_admin__respond(r, 200, kp_admin__entity_json(e), e->version, false);
        return;
    }
    if (kp_fsm_get(fsm, KP_KIND_KEY, r->id) == NULL) {
        char id[130];
        kp_admin__quote(id, sizeof(id), r->id);
        kp_admin__fail(r, 404, "not_found", NULL, "no key '%s'", id);
        return;
    }
    kp_admin__respond(
        r, 200, json_pack("{s:s,s:s,s:s}", "kind", "key_health", "id", r->id, "status", "healthy"),
        0, false);
}

/* An operator sets a key's health, e.g. back to healthy after replacing
 * an invalid secret. */
static void handle_put_health(struct kp_admin_req *r)
{
    json_t *body = kp_admin__body(r, false);
    if (body == NULL)
        return;
    /* The canary fields and the history are the leader's record of what
     * happened; an operator sets the status (and why) only. */
    const char *name;
    json_t *value;
    json_object_foreach(body, name, value)
    {
        if (strcmp(name, "status") != 0 && strcmp(name, "last_error_class") != 0) {
            char quoted[80];
            kp_admin__quote(quoted, sizeof(quoted), name);
            kp_admin__fail(r, 400, "invalid_field", name,
                           "%s cannot be set: an operator sets a key's status and "
                           "last_error_class; canaries record the rest",
                           quoted);
            json_decref(body);
            return;
        }
    }
    propose_json(r, KP_OP_SET_KEY_HEALTH, body, false);
    json_decref(body);
}

static void handle_put(struct kp_admin_req *r)
{
    json_t *body = kp_admin__body(r, true);
    if (body == NULL)
        return;
    if (!kp_admin__check_alerting(r, body)) {
        json_decref(body);
        return;
    }
    propose_json(r, kind_op(r->kind, false), body, false);
    json_decref(body);
}

/* delete_*, disable_token: an op on the entity the URL names. */
static void handle_target_op(struct kp_admin_req *r)
{
    enum kp_op op = r->route->op != KP_OP_NONE ? r->route->op : kind_op(r->kind, true);
    propose_json(r, op, NULL, strncmp(kp_op_name(op), "delete_", 7) == 0);
}

static void handle_cluster(struct kp_admin_req *r)
{
    kp_cluster_admin(r->n, r->ex, r->req, r->rid, &r->who);
}

/* --- routing ---------------------------------------------------------------------------- */

#define MAX_SEGS 8

struct seg {
    const char *p;
    size_t n;
};

/* Split @path (after "/admin/v1/") at '/'. -1 when there are too many. */
static int split(const char *path, struct seg *segs)
{
    int n = 0;
    for (const char *p = path;; n++) {
        if (n == MAX_SEGS)
            return -1;
        const char *slash = strchr(p, '/');
        segs[n].p = p;
        segs[n].n = slash != NULL ? (size_t)(slash - p) : strlen(p);
        if (slash == NULL)
            return n + 1;
        p = slash + 1;
    }
}

static bool seg_is(const struct seg *s, const char *lit)
{
    return strlen(lit) == s->n && memcmp(s->p, lit, s->n) == 0;
}

/* Whether @segs match @pattern; fills @kind for {kind} and @params (at
 * most two) with the other parameters' segments, NULL when absent. */
static bool match(const char *pattern, const struct seg *segs, int nsegs, int *kind,
                  const struct seg **params)
{
    struct seg pat[MAX_SEGS];
    int np = split(pattern + strlen("/admin/v1/"), pat), nparams = 0;
    params[0] = params[1] = NULL;
    if (np != nsegs)
        return false;
    for (int i = 0; i < np; i++) {
        if (seg_is(&pat[i], "{kind}")) {
            size_t k = 0;
            while (k < N_KINDS && !seg_is(&segs[i], kinds[k].plural))
                k++;
            if (k == N_KINDS)
                return false;
            *kind = (int)kinds[k].kind;
        } else if (pat[i].n > 0 && pat[i].p[0] == '{') {
            if (segs[i].n == 0 || nparams == 2)
                return false;
            params[nparams++] = &segs[i];
        } else if (pat[i].n != segs[i].n || memcmp(pat[i].p, segs[i].p, segs[i].n) != 0) {
            return false;
        }
    }
    return true;
}

static bool is_read(const char *method)
{
    return strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
}

/* 404 or 405 (with Allow) for a request no route takes. */
static void no_route(struct kp_admin_req *r, const struct seg *segs, int nsegs)
{
    char allow[64] = "";
    size_t len = 0;
    for (size_t i = 0; i < N_ROUTES && nsegs > 0; i++) {
        int kind = -1;
        const struct seg *params[2];
        if (!match(routes[i].pattern, segs, nsegs, &kind, params) ||
            strstr(allow, routes[i].method) != NULL)
            continue;
        len += (size_t)snprintf(allow + len, sizeof(allow) - len, "%s%s", len ? ", " : "",
                                routes[i].method);
        if (strcmp(routes[i].method, "GET") == 0)
            len += (size_t)snprintf(allow + len, sizeof(allow) - len, ", HEAD");
    }
    if (len == 0) {
        kp_http_set_route(r->ex, "/admin/v1/*");
        kp_admin__fail(r, 404, "not_found", NULL,
                       "no such endpoint under /admin/v1/; see docs/control-api.md");
        return;
    }
    char msg[256], path[100];
    kp_admin__quote(path, sizeof(path), r->req->path);
    snprintf(msg, sizeof(msg), "%s is not allowed on %s; use %s", r->req->method, path, allow);
    struct kp_http_header h = KP_HTTP_HEADER("Allow", allow);
    error_with(r->ex, 405, r->rid, "method_not_allowed", "method_not_allowed", NULL, msg, &h, 1);
}

static unsigned route_perm(const struct kp_admin_route *route, int kind)
{
    if (route->perm != PERM_KIND_WRITE)
        return route->perm;
    return kind == KP_KIND_POOL ? KP_PERM_OPERATE : KP_PERM_CHANGE;
}

static void barrier_done(void *arg, int code, const char *message)
{
    struct kp_admin_req *r = arg;
    if (code == KP_OK) {
        r->route->fn(r);
        return;
    }
    kp_admin__fail(r, 503, code == KP_ENOTLEADER ? "leadership_changed" : "barrier_failed", NULL,
                   "cannot read consistently (%s); retry",
                   message != NULL ? message : kp_err_msg(code));
}

/* Authenticated and allowed: run the handler, after a barrier when the
 * read must see every earlier commit. */
static void dispatch(struct kp_admin_req *r, bool consistent)
{
    if (!is_read(r->req->method) && r->route->fn != handle_cluster && !parse_preconditions(r))
        return;
    if (!consistent || !is_read(r->req->method)) {
        r->route->fn(r);
        return;
    }
    int rc = kp_store_barrier(r->n->store, barrier_done, r);
    if (rc == KP_ENOTLEADER)
        kp_forward_to_leader(r->n, r->ex, r->req, r->rid);
    else if (rc != KP_OK)
        kp_admin__fail(r, 503, "barrier_failed", NULL, "cannot read consistently (%s); retry",
                       kp_err_msg(rc));
}

/* Decode the route's parameters into @r (400 for a bad escape). */
static bool take_params(struct kp_admin_req *r, const struct seg *const *params, int n)
{
    char *out[2] = {NULL, NULL};
    for (int i = 0; i < n && i < 2; i++) {
        int rc = pct_decode(r->ex, params[i]->p, params[i]->n, false, &out[i]);
        if (rc == KP_ENOMEM) {
            kp_admin__oom(r);
            return false;
        }
        if (rc != KP_OK) {
            kp_admin__fail(r, 400, "invalid_request", NULL,
                           "path: bad percent-encoding (or an encoded NUL) in a path segment");
            return false;
        }
    }
    r->id = out[0];
    r->sub = out[1];
    return true;
}

void kp_admin_handle(struct kp_node *n, struct kp_http_exchange *ex,
                     const struct kp_http_request *req, const char *rid)
{
    struct kp_admin_req *r = kp_http_alloc(ex, sizeof(*r));
    if (r == NULL) {
        kp_admin_error(ex, 503, rid, "unavailable", "out_of_memory", NULL, "out of memory; retry");
        return;
    }
    *r = (struct kp_admin_req){.n = n, .ex = ex, .req = req, .rid = rid, .kind = -1};

    struct seg segs[MAX_SEGS];
    const struct seg *params[2] = {NULL, NULL}, *tried[2];
    const char *prefix = "/admin/v1/";
    int nsegs = strncmp(req->path, prefix, strlen(prefix)) == 0
                    ? split(req->path + strlen(prefix), segs)
                    : -1;
    const char *method = strcmp(req->method, "HEAD") == 0 ? "GET" : req->method;
    for (size_t i = 0; i < N_ROUTES && nsegs > 0; i++) {
        int kind = routes[i].kind;
        if (strcmp(routes[i].method, method) == 0 &&
            match(routes[i].pattern, segs, nsegs, &kind, tried)) {
            r->route = &routes[i];
            r->kind = kind;
            params[0] = tried[0];
            params[1] = tried[1];
            break;
        }
    }
    if (r->route == NULL) {
        no_route(r, segs, nsegs);
        return;
    }
    kp_http_set_route(ex, r->route->pattern);
    if (!is_read(req->method))
        kp_admin__span_begin(r, r->route->pattern);

    const char *c = kp_admin__query(r, "consistent");
    bool consistent = c != NULL && strcmp(c, "true") == 0;
    /* A session is signed by the node asked, which sets its cookie (a
     * forwarded answer would lose Set-Cookie). */
    if (r->route->fn == kp_admin__session_end) {
        /* Signing out clears the cookie whatever state its token is in. */
        kp_admin__session_end(r);
        return;
    }
    if (r->route->fn == kp_admin__session_get &&
        kp_http_request_header(req, "authorization") == NULL &&
        kp_admin__session_cookie(req) == NULL) {
        /* The console asks before it signs in: no credentials is an
         * answer, not an error (a refused session still is a 401). */
        kp_admin__respond(r, 200, json_pack("{s:b}", "session", 0), 0, false);
        return;
    }
    /* The caller is checked here first, against this node's replica, so
     * that only requests from valid tokens cost a forward. */
    if (!kp_admin__authenticate(r, route_perm(r->route, r->kind)))
        return;
    if ((!is_read(req->method) || consistent) && r->route->fn != kp_admin__session_start &&
        !kp_store_is_leader(n->store)) {
        kp_forward_to_leader(n, ex, req, rid);
        return;
    }
    int nparams = 0;
    while (nparams < 2 && params[nparams] != NULL)
        nparams++;
    if (!take_params(r, params, nparams))
        return;
    dispatch(r, consistent);
}

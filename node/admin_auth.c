/* Who is calling the control API, and what happens to those refused
 * (docs/control-api.md "Authentication and permissions", docs/tokens.md).
 *
 * A token is checked in the order docs/tokens.md gives: shape and checksum
 * (no lookup for a typo), the registry entry, the MAC in constant time,
 * then disabled, expiry and role. Messages name the token id, never the
 * presented text.
 *
 * Every 401 and 403 is recorded in the audit chain as an audit_only entry
 * ("denied"), proposed on the leader without waiting for it to commit. A
 * follower forwards the request instead, so the leader decides and audits
 * once. A token bucket keeps these entries to 20 per second per node;
 * beyond that a denial is counted in keyplane_admin_denied_unaudited_total
 * and logged at warn, so that a flood of bad requests cannot flood the
 * replicated log. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "admin_internal.h"

struct denial {
    int status; /* 401, 403; 503 is answered but not audited */
    const char *code;
    char actor[KP_TOKEN_ID_SIZE]; /* "" until a token id parsed */
    char role[72];                /* the token's stored role, or "" */
    char msg[320];                /* for the client */
    char why[320];                /* for the audit entry */
    bool here;                    /* answered where refused: not forwarded, not audited */
};

static bool deny(struct denial *d, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static bool deny(struct denial *d, int status, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->msg, sizeof(d->msg), fmt, ap);
    va_end(ap);
    d->status = status;
    d->code = code;
    snprintf(d->why, sizeof(d->why), "%s", d->msg);
    return false;
}

/* The token's state and role, once the caller proved it holds @tok (by its
 * text or a session cookie). */
static bool admit(struct kp_admin_req *r, unsigned perm, struct denial *d,
                  const struct kp_token *tok, const char *id)
{
    snprintf(d->role, sizeof(d->role), "%s", tok->role);
    if (tok->disabled)
        return deny(d, 401, "disabled_token", "token %s is disabled", id);
    if (tok->expires_at_ms != 0 && kp_now_unix_ms() >= tok->expires_at_ms) {
        char at[32];
        kp_format_time_ms(tok->expires_at_ms, at, sizeof(at));
        return deny(d, 401, "expired_token", "token %s expired at %s", id, at);
    }
    enum kp_role role;
    if (kp_role_parse(tok->role, &role) != KP_OK) {
        deny(d, 403, "permission_denied", "token %s has role '%s', which grants nothing here", id,
             tok->role);
        snprintf(d->why, sizeof(d->why), "unknown role %s", tok->role);
        return false;
    }
    if (perm != 0 && !kp_role_has(role, perm)) {
        unsigned missing = perm & ~kp_role_perms(role);
        char refusal[256];
        kp_role_refusal(refusal, sizeof(refusal), id, role, perm);
        deny(d, 403, "permission_denied", "%s", refusal);
        snprintf(d->why, sizeof(d->why), "lacks permission %s",
                 kp_perm_name(missing & (0u - missing)));
        return false;
    }
    snprintf(r->who.token_id, sizeof(r->who.token_id), "%s", id);
    r->who.role = role;
    return true;
}

/* A console session (admin_session.c): the cookie's MAC and expiry, the
 * CSRF checks on a change, then the token as for a Bearer. A refused
 * cookie names no role (so it is answered, not audited, like an unknown
 * token); a change refused for its CSRF token or Origin is answered by the
 * node the browser reached (the leader would not see the Origin). */
static bool authenticate_session(struct kp_admin_req *r, unsigned perm, struct denial *d,
                                 const char *cookie)
{
    char id[KP_TOKEN_ID_SIZE], why[256];
    const struct kp_token *tok;
    int rc = kp_admin__session_verify(r, cookie, id, sizeof(id), &tok, why, sizeof(why));
    if (rc == KP_OK || rc == KP_ETIMEDOUT) /* else the id is the client's word only */
        snprintf(d->actor, sizeof(d->actor), "%s", id);
    if (rc != KP_OK)
        return deny(d, 401, rc == KP_ETIMEDOUT ? "session_expired" : "invalid_session", "%s", why);
    const char *method = r->req->method;
    const char *code = NULL;
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0 &&
        !kp_admin__session_csrf_ok(r, cookie, &code, why, sizeof(why))) {
        deny(d, 403, code, "%s", why);
        d->here = true;
        return false;
    }
    if (!admit(r, perm, d, tok, id))
        return false;
    r->session = cookie;
    return true;
}

/* docs/tokens.md: parse, look up, verify, then state and role. Nothing
 * here ever quotes the presented text. Without an Authorization header, a
 * console session cookie is taken instead. */
static bool authenticate(struct kp_admin_req *r, unsigned perm, struct denial *d)
{
    const struct kp_fsm *fsm = kp_admin__fsm(r);
    const char *h = kp_http_request_header(r->req, "authorization");
    const char *cookie = h == NULL ? kp_admin__session_cookie(r->req) : NULL;
    if (cookie != NULL) {
        if (kp_fsm_cluster(fsm) == NULL)
            return deny(d, 503, "cluster_not_initialised",
                        "cluster not initialised yet: no session can be checked; retry");
        return authenticate_session(r, perm, d, cookie);
    }
    if (h == NULL)
        return deny(d, 401, "missing_token",
                    "no token: send Authorization: Bearer kp_... (an internal token)");
    if (strncasecmp(h, "bearer", 6) != 0 || (h[6] != ' ' && h[6] != '\t'))
        return deny(d, 401, "malformed_token",
                    "Authorization must be \"Bearer\" followed by an internal token (kp_...)");
    const char *text = h + 6;
    while (*text == ' ' || *text == '\t')
        text++;
    size_t len = strlen(text);
    while (len > 0 && (text[len - 1] == ' ' || text[len - 1] == '\t'))
        len--;
    struct kp_token_parts parts;
    char why[200];
    if (kp_token_parse(text, len, &parts, why, sizeof(why)) != KP_OK)
        return deny(d, 401, "malformed_token", "malformed token: %s", why);
    snprintf(d->actor, sizeof(d->actor), "%s", parts.id);

    const struct kp_cluster *cluster = kp_fsm_cluster(fsm);
    if (cluster == NULL)
        return deny(d, 503, "cluster_not_initialised",
                    "cluster not initialised yet: no token can be checked; retry");
    const struct kp_token *tok = (const struct kp_token *)kp_fsm_get(fsm, KP_KIND_TOKEN, parts.id);
    if (tok == NULL)
        return deny(d, 401, "invalid_token",
                    "token %s is not valid (unknown, or its secret does not match)", parts.id);
    int rc = kp_token_verify(tok->hash, cluster->pepper, parts.secret, parts.secret_len);
    if (rc == KP_EPERM) {
        snprintf(d->role, sizeof(d->role), "%s", tok->role);
        return deny(d, 401, "invalid_token",
                    "token %s is not valid (unknown, or its secret does not match)", parts.id);
    }
    if (rc != KP_OK)
        return deny(d, 503, "verify_failed", "cannot check the token now (%s); retry",
                    kp_err_msg(rc));
    return admit(r, perm, d, tok, parts.id);
}

/* Denial audits: a token bucket of 20 per second per node, so that a flood
 * of bad requests cannot flood the replicated log. Main loop only. */
#define DENIAL_AUDITS_PER_S 20

static struct kp_metric *unaudited_metric(void)
{
    static struct kp_metric *m;
    if (m == NULL)
        m = kp_metric_counter("keyplane_admin_denied_unaudited_total",
                              "Denied control API requests not recorded in the audit chain "
                              "(over 20 per second, or the proposal failed).");
    return m;
}

static bool denial_budget(void)
{
    static double tokens = DENIAL_AUDITS_PER_S;
    static uint64_t last_ms;
    uint64_t now = kp_now_mono_ms();
    if (last_ms != 0)
        tokens += (double)(now - last_ms) * DENIAL_AUDITS_PER_S / 1000.0;
    last_ms = now;
    if (tokens > DENIAL_AUDITS_PER_S)
        tokens = DENIAL_AUDITS_PER_S;
    if (tokens < 1.0)
        return false;
    tokens -= 1.0;
    return true;
}

static void not_audited(const struct denial *d, const char *method, const char *path,
                        const char *why)
{
    char p[200];
    kp_admin__quote(p, sizeof(p), path);
    kp_metric_add(unaudited_metric(), 1);
    kp_warn("admin", "denied %s %s (%d) from %s not audited: %s", method, p, d->status,
            d->actor[0] != '\0' ? d->actor : "anonymous", why);
}

static void denial_audited(void *arg, int code, const struct kp_fsm_result *res)
{
    (void)arg;
    (void)res;
    if (code != KP_OK) {
        kp_metric_add(unaudited_metric(), 1);
        kp_warn("admin", "a denied request's audit entry did not commit: %s", kp_err_msg(code));
    }
}

static void audit_denial(struct kp_admin_req *r, const struct denial *d)
{
    if (!denial_budget()) {
        not_audited(d, r->req->method, r->req->path, "over 20 denial audits per second");
        return;
    }
    char raw[300], target[257], result[513], actor[] = "anonymous", action[] = "denied";
    snprintf(raw, sizeof(raw), "%s %s", r->req->method, r->req->path);
    kp_admin__quote(target, sizeof(target), raw);
    snprintf(result, sizeof(result), "refused: %d %s", d->status, d->why);
    struct kp_cmd_audit_only body = {.action = action, .target = target, .result = result};
    struct kp_command cmd = {
        .v = KP_COMMAND_VERSION,
        .op = KP_OP_AUDIT_ONLY,
        .ts = kp_now_unix_ms(),
        .audit = {.actor = d->actor[0] != '\0' ? (char *)d->actor : actor,
                  .role = d->role[0] != '\0' ? (char *)d->role : NULL,
                  .request_id = (char *)r->rid,
                  .source = (char[]){"api"}},
        .body.audit_only = &body,
    };
    struct kp_buf buf;
    char msg[256];
    kp_buf_init(&buf);
    int rc = kp_command_encode(&cmd, &buf, msg, sizeof(msg));
    if (rc == KP_OK)
        rc = kp_store_propose(r->n->store, buf.data, buf.len, denial_audited, NULL);
    kp_buf_free(&buf);
    if (rc != KP_OK)
        not_audited(d, r->req->method, r->req->path, kp_err_msg(rc));
}

/* On the leader: audit (without waiting for the commit) and answer. On a
 * follower the leader decides and audits. */
static void refuse_caller(struct kp_admin_req *r, const struct denial *d)
{
    if (d->status == 503) {
        kp_admin__fail(r, 503, d->code, NULL, "%s", d->msg);
        return;
    }
    if (d->role[0] == '\0' || d->here) {
        /* No token of this registry (missing, malformed, unknown): answered
         * here and counted, not written to the replicated audit chain, so
         * that anonymous traffic can neither fill the log nor push real
         * entries out of the retained audit history. */
        kp_metric_add(unaudited_metric(), 1);
        kp_admin__fail(r, d->status, d->code, NULL, "%s", d->msg);
        return;
    }
    if (!kp_store_is_leader(r->n->store)) {
        kp_forward_to_leader(r->n, r->ex, r->req, r->rid);
        return;
    }
    audit_denial(r, d);
    kp_admin__fail(r, d->status, d->code, NULL, "%s", d->msg);
}

bool kp_admin__authenticate(struct kp_admin_req *r, unsigned perm)
{
    struct denial d = {0};
    unaudited_metric(); /* listed in /metrics from the first request on */
    if (authenticate(r, perm, &d))
        return true;
    refuse_caller(r, &d);
    return false;
}

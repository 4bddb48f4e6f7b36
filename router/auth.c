/* Who is calling the gateway, and where they may go: the internal token
 * (Authorization: Bearer kp_..., or x-api-key for Anthropic clients),
 * checked against the registry view, then the attribution headers
 * (X-Tenant, X-Project, X-Feature, X-Keyplane-Pool) checked against the
 * token's scope. Every refusal has a message an app developer can act on
 * and never quotes the credential. */
#include <stdio.h>
#include <string.h>

#include "router_internal.h"

/* A provider key where a keyplane token belongs: refused without any
 * lookup, and never echoed. */
static bool looks_like_provider_key(const char *s)
{
    return strncmp(s, "sk-", 3) == 0 || strncmp(s, "AIza", 4) == 0 || strncmp(s, "gsk_", 4) == 0;
}

static const char *credential(const struct kp_http_request *req)
{
    const char *auth = kp_http_request_header(req, "authorization");
    if (auth != NULL) {
        if (strncasecmp(auth, "Bearer ", 7) != 0)
            return "";
        auth += 7;
        while (*auth == ' ')
            auth++;
        return auth;
    }
    const char *key = kp_http_request_header(req, "x-api-key");
    return key != NULL ? key : kp_http_request_header(req, "api-key");
}

int kp_router__authenticate(struct kp_call *c)
{
    const struct kp_http_request *req = c->req;
    const char *cred = credential(req);
    char why[256];
    if (cred == NULL || cred[0] == '\0')
        return kp_router__fail(c, 401, "invalid_request_error", "missing_token",
                               "no token: send Authorization: Bearer kp_... with a keyplane app "
                               "token (ask your keyplane operator for one)");
    if (looks_like_provider_key(cred))
        return kp_router__fail(c, 401, "invalid_request_error", "provider_key_refused",
                               "this looks like a provider API key: keyplane holds provider "
                               "keys itself; send your keyplane app token (kp_...) instead, and "
                               "do not ship provider keys in apps");
    struct kp_token_parts parts;
    if (kp_token_parse(cred, strlen(cred), &parts, why, sizeof(why)) != KP_OK) {
        char msg[320];
        snprintf(msg, sizeof(msg), "malformed token: %s", why);
        return kp_router__fail(c, 401, "invalid_request_error", "invalid_token", msg);
    }
    const struct kp_cluster *cluster = kp_view_cluster(c->view);
    const struct kp_token *t = kp_view_token(c->view, parts.id);
    if (cluster == NULL)
        return kp_router__fail(c, 503, "server_error", "not_ready",
                               "this keyplane node has no registry yet; retry shortly");
    int rc = t != NULL ? kp_token_verify(t->hash, cluster->pepper, parts.secret, parts.secret_len)
                       : KP_EPERM;
    if (rc != KP_OK || t->disabled)
        return kp_router__fail(c, 401, "invalid_request_error", "invalid_token",
                               t != NULL && rc == KP_OK
                                   ? "this token is disabled; ask your keyplane operator"
                                   : "unknown token (revoked, deleted, or mistyped)");
    enum kp_role role = KP_ROLE_COUNT;
    if (kp_role_parse(t->role, &role) != KP_OK || !kp_role_has(role, KP_PERM_USE)) {
        kp_role_refusal(why, sizeof(why), t->e.id, role, KP_PERM_USE);
        return kp_router__fail(c, 403, "permission_error", "not_an_app_token", why);
    }
    c->token = t;
    snprintf(c->ev.key_id, sizeof(c->ev.key_id), "%s", "");
    return KP_OK;
}

static const char *header_value(const struct kp_http_request *req, const char *name)
{
    const char *v = kp_http_request_header(req, name);
    return v != NULL && v[0] != '\0' ? v : NULL;
}

int kp_router__scope(struct kp_call *c)
{
    const struct kp_token *t = c->token;
    const struct kp_http_request *req = c->req;
    const char *tenant = header_value(req, "x-tenant");
    const char *project = header_value(req, "x-project");
    const char *feature = header_value(req, "x-feature");
    const char *pool = header_value(req, "x-keyplane-pool");
    if (tenant == NULL && strcmp(t->tenant, "*") != 0)
        tenant = t->tenant;
    if (pool == NULL)
        pool = t->pools.n > 0 ? t->pools.v[0] : "default";
    const char *strs[] = {tenant, project, feature, pool};
    const char *names[] = {"X-Tenant", "X-Project", "X-Feature", "X-Keyplane-Pool"};
    for (int i = 0; i < 4; i++) {
        if (strs[i] != NULL && !kp_usage_str_valid(strs[i], strlen(strs[i]))) {
            char msg[160];
            snprintf(msg, sizeof(msg), "%s: at most %d bytes of UTF-8", names[i], KP_USAGE_STR_MAX);
            return kp_router__fail(c, 400, "invalid_request_error", "invalid_header", msg);
        }
    }
    if (project != NULL) {
        const struct kp_project *p = kp_view_project(c->view, project);
        if (p == NULL || (tenant != NULL && strcmp(p->tenant, tenant) != 0)) {
            char msg[320];
            snprintf(msg, sizeof(msg), "X-Project %s is not a project%s%s", project,
                     tenant ? " of tenant " : "", tenant ? tenant : "");
            return kp_router__fail(c, 403, "permission_error", "outside_scope", msg);
        }
        if (tenant == NULL)
            tenant = p->tenant;
    }
    if (project == NULL && t->projects.n > 0) {
        char msg[200];
        snprintf(msg, sizeof(msg),
                 "this token is limited to projects (%s%s): send X-Project with one of them",
                 t->projects.v[0], t->projects.n > 1 ? ", ..." : "");
        return kp_router__fail(c, 403, "permission_error", "project_required", msg);
    }
    struct kp_token_scope scope = {
        .tenant = t->tenant,
        .projects = (const char *const *)t->projects.v,
        .n_projects = t->projects.n,
        .pools = (const char *const *)t->pools.v,
        .n_pools = t->pools.n,
        .models = (const char *const *)t->models.v,
        .n_models = t->models.n,
        .expires_at = t->expires_at_ms,
    };
    struct kp_token_refusal why;
    if (kp_token_scope_allows(&scope, c->start_ms, tenant, project, pool, c->model, &why) !=
        KP_OK) {
        if (why.dim == KP_TOKEN_SCOPE_EXPIRED)
            return kp_router__fail(c, 401, "invalid_request_error", "token_expired", why.msg);
        return kp_router__fail(c, 403, "permission_error", "outside_scope", why.msg);
    }
    c->scope = scope;
    kp_usage_set_str(c->ev.tenant, tenant ? tenant : "");
    kp_usage_set_str(c->ev.project, project ? project : "");
    kp_usage_set_str(c->ev.feature, feature ? feature : "");
    kp_usage_set_str(c->ev.pool, pool);
    c->pool_name = pool;
    return KP_OK;
}

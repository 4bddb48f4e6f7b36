/* Who is calling the gateway, and where they may go: the internal token
 * (Authorization: Bearer kp_..., or x-api-key for Anthropic clients),
 * checked against the registry view, then the attribution headers
 * (X-Tenant, X-Project, X-Feature, X-Keyplane-Pool) checked against the
 * token's scope. Every refusal has a message an app developer can act on
 * and never quotes the credential. */
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

#include "router_internal.h"

/* kp_token_verify (raftstore/token.c) recomputes HMAC-SHA256(pepper,
 * secret) with OpenSSL's one-shot HMAC(), which looks SHA-256 up and sets a
 * context up on every call: 1 us, 3% of what a call costs the gateway.
 * Each worker keeps one context keyed with the cluster's pepper instead
 * (0.15 us a call) and keys it again when the pepper changes.
 *
 * Most calls bring a secret the worker verified a moment ago, so it also
 * remembers the secrets it verified: not the secret, but its SipHash tag
 * under a key of the worker's own, beside the registry hash it matched.
 * The same tag and the same registry hash again is the same secret
 * verified against the same hash: no MAC is needed. Without the key a tag
 * can be neither predicted nor matched by another secret, and the key and
 * tags never leave the worker's memory. Only verified secrets are
 * remembered (a wrong guess always costs the full MAC); a token issued
 * again has a new registry hash, so what was remembered for it no longer
 * matches; a deleted or disabled one is refused by the registry view
 * whatever was remembered. */
#define VERIFIED_SLOTS 256 /* indexed by the tag's first byte */

struct verified_secret {
    bool used;
    uint8_t tag[KP_SIPHASH_TAG_LEN];
    uint8_t hash[KP_TOKEN_HASH_LEN]; /* the registry's, when it matched */
};

struct kp_token_mac {
    EVP_MAC_CTX *ctx;
    uint8_t pepper[KP_TOKEN_PEPPER_LEN];
    uint8_t tag_key[KP_SIPHASH_KEY_LEN];
    struct verified_secret verified[VERIFIED_SLOTS];
};

void kp_router__auth_free(struct kp_router *r)
{
    struct kp_token_mac *m = r->token_mac;
    if (m == NULL)
        return;
    EVP_MAC_CTX_free(m->ctx);
    OPENSSL_cleanse(m, sizeof(*m));
    kp_free(m);
    r->token_mac = NULL;
}

/* The worker's context keyed with @pepper; NULL when OpenSSL refuses. */
static struct kp_token_mac *token_mac(struct kp_router *r,
                                      const uint8_t pepper[KP_TOKEN_PEPPER_LEN])
{
    struct kp_token_mac *m = r->token_mac;
    if (m != NULL && CRYPTO_memcmp(m->pepper, pepper, KP_TOKEN_PEPPER_LEN) == 0)
        return m;
    kp_router__auth_free(r); /* a new pepper: what was verified is forgotten */
    m = kp_calloc(1, sizeof(*m));
    if (m == NULL)
        return NULL;
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    m->ctx = mac != NULL ? EVP_MAC_CTX_new(mac) : NULL;
    EVP_MAC_free(mac); /* the context holds its own reference */
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    if (m->ctx == NULL || EVP_MAC_init(m->ctx, pepper, KP_TOKEN_PEPPER_LEN, params) != 1 ||
        kp_random_bytes(m->tag_key, sizeof(m->tag_key)) != KP_OK) {
        EVP_MAC_CTX_free(m->ctx);
        OPENSSL_cleanse(m, sizeof(*m));
        kp_free(m);
        return NULL;
    }
    memcpy(m->pepper, pepper, KP_TOKEN_PEPPER_LEN);
    r->token_mac = m;
    return m;
}

/* kp_token_verify with the worker's context: the same MAC, compared in
 * constant time, unless this secret was verified against this hash before;
 * kp_token_verify itself when the context cannot be had. */
static int verify_token(struct kp_router *r, const uint8_t stored_hash[KP_TOKEN_HASH_LEN],
                        const uint8_t pepper[KP_TOKEN_PEPPER_LEN], const char *secret, size_t len)
{
    struct kp_token_mac *m = token_mac(r, pepper);
    if (m == NULL)
        return kp_token_verify(stored_hash, pepper, secret, len);
    uint8_t tag[KP_SIPHASH_TAG_LEN];
    kp_siphash128(m->tag_key, secret, len, tag);
    struct verified_secret *v = &m->verified[tag[0]];
    if (v->used && CRYPTO_memcmp(v->tag, tag, sizeof(tag)) == 0 &&
        CRYPTO_memcmp(v->hash, stored_hash, KP_TOKEN_HASH_LEN) == 0)
        return KP_OK;
    uint8_t mac[KP_TOKEN_HASH_LEN];
    size_t n = 0;
    /* init without a key starts a new MAC with the key already set */
    if (EVP_MAC_init(m->ctx, NULL, 0, NULL) != 1 ||
        EVP_MAC_update(m->ctx, (const unsigned char *)secret, len) != 1 ||
        EVP_MAC_final(m->ctx, mac, &n, sizeof(mac)) != 1 || n != KP_TOKEN_HASH_LEN) {
        kp_router__auth_free(r);
        return kp_token_verify(stored_hash, pepper, secret, len);
    }
    int rc = CRYPTO_memcmp(mac, stored_hash, KP_TOKEN_HASH_LEN) == 0 ? KP_OK : KP_EPERM;
    OPENSSL_cleanse(mac, sizeof(mac));
    if (rc == KP_OK) {
        v->used = true;
        memcpy(v->tag, tag, sizeof(tag));
        memcpy(v->hash, stored_hash, KP_TOKEN_HASH_LEN);
    }
    return rc;
}

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
    int rc = t != NULL
                 ? verify_token(c->r, t->hash, cluster->pepper, parts.secret, parts.secret_len)
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

/* A token limited to a list of projects (features) must name one: a call
 * without the header would otherwise be charged to no project at all. */
static int header_required(struct kp_call *c, const struct kp_strv *list, const char *what,
                           const char *header, const char *code)
{
    char msg[240];
    snprintf(msg, sizeof(msg), "this token is limited to %s (%.64s%s): send %s with one of them",
             what, list->v[0], list->n > 1 ? ", ..." : "", header);
    return kp_router__fail(c, 403, "permission_error", code, msg);
}

static int scope_refused(struct kp_call *c, const struct kp_token_refusal *why)
{
    if (why->dim == KP_TOKEN_SCOPE_EXPIRED)
        return kp_router__fail(c, 401, "invalid_request_error", "token_expired", why->msg);
    return kp_router__fail(c, 403, "permission_error", "outside_scope", why->msg);
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
    struct kp_token_scope scope = {
        .tenant = t->tenant,
        .projects = (const char *const *)t->projects.v,
        .n_projects = t->projects.n,
        .features = (const char *const *)t->features.v,
        .n_features = t->features.n,
        .pools = (const char *const *)t->pools.v,
        .n_pools = t->pools.n,
        .models = (const char *const *)t->models.v,
        .n_models = t->models.n,
        .expires_at = t->expires_at_ms,
    };
    struct kp_token_refusal why;
    /* An expired token is told so (401) before anything about its headers. */
    if (kp_token_scope_allows(&scope, c->start_ms, NULL, NULL, NULL, NULL, NULL, &why) != KP_OK)
        return scope_refused(c, &why);
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
    if (project == NULL && t->projects.n > 0)
        return header_required(c, &t->projects, "projects", "X-Project", "project_required");
    if (feature == NULL && t->features.n > 0)
        return header_required(c, &t->features, "features", "X-Feature", "feature_required");
    if (kp_token_scope_allows(&scope, c->start_ms, tenant, project, feature, pool, c->model,
                              &why) != KP_OK)
        return scope_refused(c, &why);
    c->scope = scope;
    kp_usage_set_str(c->ev.tenant, tenant ? tenant : "");
    kp_usage_set_str(c->ev.project, project ? project : "");
    kp_usage_set_str(c->ev.feature, feature ? feature : "");
    kp_usage_set_str(c->ev.pool, pool);
    c->pool_name = pool;
    return KP_OK;
}

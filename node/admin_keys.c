/* The control API's key and token operations: the ones that handle
 * secrets (docs/control-api.md, docs/secrets.md, docs/tokens.md).
 *
 * A provider key's secret arrives in a JSON body, is copied at once into a
 * struct kp_secret, and every other plaintext copy this file can reach
 * (jansson's string, the request body) is wiped. It is sealed with the
 * cluster master key only when the version it gets is known, and the
 * registry only ever sees the sealed blob, its fingerprint and last four.
 *
 *   PUT /keys/{id} + secret:  put_key --> add_key_secret --> answer the key
 *   POST /keys/{id}/secret:   add_key_secret [--> retire_key_secret when
 *                             grace_seconds is 0] --> answer the key
 *
 * Each arrow is one Raft entry. A later step that fails leaves the earlier
 * ones applied; the answer (503 or 409) says so and the client re-reads.
 *
 * A new token's text exists once: made by kp_token_generate, shown in the
 * 201 answer, then wiped (the registry keeps its MAC only). Its random id
 * is created with expect_version 0, and drawn again on the rare clash. */
#include <stdio.h>
#include <string.h>

#include "admin_internal.h"

/* The registry stores sealed blobs of at most 4096 bytes. */
#define SECRET_MAX      (4096 - KP_SEAL_OVERHEAD)
#define GRACE_DEFAULT_S 3600
#define GRACE_MAX_S     2592000 /* 30 days */
#define TOKEN_REDRAWS   3

static void wipe_json_string(json_t *s)
{
    if (json_is_string(s) && json_string_length(s) > 0)
        kp_secret_wipe((char *)json_string_value(s), json_string_length(s));
}

/* Move the "secret" of @body into *@out, wiping jansson's copy. Answers
 * 400/503 and returns false when it is not a usable secret. Absent: true
 * with *@out NULL. */
static bool take_secret(struct kp_admin_req *r, json_t *body, struct kp_secret **out)
{
    json_t *v = json_object_get(body, "secret");
    *out = NULL;
    if (v == NULL)
        return true;
    json_incref(v);
    json_object_del(body, "secret");
    size_t n = json_is_string(v) ? json_string_length(v) : 0;
    const char *s = json_is_string(v) ? json_string_value(v) : NULL;
    bool ok = s != NULL && n >= 1 && n <= SECRET_MAX;
    for (size_t i = 0; ok && i < n; i++)
        ok = s[i] >= 0x20 && s[i] < 0x7f;
    if (ok && (*out = kp_secret_new(s, n)) == NULL) {
        wipe_json_string(v);
        json_decref(v);
        kp_admin__oom(r);
        return false;
    }
    wipe_json_string(v);
    json_decref(v);
    if (!ok)
        kp_admin__fail(r, 400, "invalid_field", "secret",
                       "secret: must be a string of 1..%d printable ASCII characters", SECRET_MAX);
    return ok;
}

static const struct kp_key *current_key(struct kp_admin_req *r, const char *id)
{
    return (const struct kp_key *)kp_fsm_get(kp_admin__fsm(r), KP_KIND_KEY, id);
}

/* --- adding a secret ---------------------------------------------------------- */

static void retire_previous(struct kp_admin_write *w, const struct kp_fsm_result *res);

/* Seal w->secret as the next version of @k and propose add_key_secret,
 * checked against @expect when @has_expect. Frees the plaintext. */
static void propose_secret(struct kp_admin_write *w, const struct kp_key *k, bool has_expect,
                           uint64_t expect, bool may_forward)
{
    struct kp_admin_req *r = w->r;
    uint32_t version = 1, primary = 0;
    for (uint32_t i = 0; i < k->nsecrets; i++) {
        if (k->secrets[i].version >= version)
            version = k->secrets[i].version + 1;
        if (k->secrets[i].state == KP_SECRET_PRIMARY)
            primary = k->secrets[i].version;
    }
    char fp[KP_SEAL_FP_LEN], last4[KP_SEAL_LAST4_LEN], msg[256];
    struct kp_buf sealed;
    kp_buf_init(&sealed);
    kp_seal_fingerprint(w->secret, fp);
    kp_seal_last4(w->secret, last4);
    int rc = r->n->kek == NULL
                 ? kp_errf(msg, sizeof(msg), KP_ECONFIG, "this node has no master key")
                 : kp_seal_secret(r->n->kek, kp_secret_data(w->secret), kp_secret_len(w->secret),
                                  k->e.id, version, &sealed, msg, sizeof(msg));
    kp_secret_free(w->secret);
    w->secret = NULL;
    if (rc != KP_OK) {
        bool saved = w->created || !may_forward;
        kp_admin__write_free(w);
        kp_admin__fail(r, 503, "seal_failed", NULL, "%scannot seal the secret: %s",
                       saved ? "the key was saved without its new secret: " : "", msg);
        return;
    }
    struct kp_command cmd;
    kp_admin__envelope(r, &cmd, KP_OP_ADD_KEY_SECRET);
    cmd.has_expect_version = has_expect;
    cmd.expect_version = expect;
    struct kp_cmd_add_secret body = {
        .id = k->e.id,
        .version = version,
        .sealed = {(uint8_t *)sealed.data, (uint32_t)sealed.len},
        .fingerprint = fp,
        .last4 = last4,
        .retire_previous_after_ms = cmd.ts + w->grace_ms,
    };
    cmd.body.add_secret = &body;
    struct kp_buf buf;
    bool ok = kp_admin__encode(r, &cmd, &buf);
    kp_buf_free(&sealed);
    if (!ok) {
        kp_admin__write_free(w);
        return;
    }
    w->retire_version = w->grace_ms == 0 ? primary : 0;
    w->then = w->retire_version != 0 ? retire_previous : kp_admin__answer_entity;
    kp_admin__submit(w, &buf, may_forward);
}

/* grace_seconds 0: the old primary is retired (its blob erased) at once. */
static void retire_previous(struct kp_admin_write *w, const struct kp_fsm_result *res)
{
    struct kp_admin_req *r = w->r;
    struct kp_command cmd;
    kp_admin__envelope(r, &cmd, KP_OP_RETIRE_KEY_SECRET);
    cmd.has_expect_version = true;
    cmd.expect_version = res->version;
    struct kp_cmd_retire_secret body = {.id = (char *)w->id, .version = w->retire_version};
    cmd.body.retire_secret = &body;
    struct kp_buf buf;
    if (!kp_admin__encode(r, &cmd, &buf)) {
        kp_admin__write_free(w);
        return;
    }
    w->then = kp_admin__answer_entity;
    kp_admin__submit(w, &buf, false);
}

/* After put_key: add the secret that came with it, unless it is already
 * the primary (the same PUT sent again). */
static void add_after_put(struct kp_admin_write *w, const struct kp_fsm_result *res)
{
    struct kp_admin_req *r = w->r;
    const struct kp_key *k = current_key(r, w->id);
    char fp[KP_SEAL_FP_LEN];
    if (k == NULL) {
        kp_admin__write_free(w);
        kp_admin__fail(r, 409, "conflict", NULL,
                       "key '%s' was deleted before its secret could be added", r->id);
        return;
    }
    kp_seal_fingerprint(w->secret, fp);
    const struct kp_key_secret *primary = NULL;
    for (uint32_t i = 0; i < k->nsecrets; i++) {
        if (k->secrets[i].state == KP_SECRET_PRIMARY)
            primary = &k->secrets[i];
    }
    if (primary != NULL && strcmp(primary->fingerprint, fp) == 0) {
        kp_admin__answer_entity(w, res);
        return;
    }
    propose_secret(w, k, true, res->version, false);
}

void kp_admin__key_put(struct kp_admin_req *r)
{
    json_t *body = kp_admin__body(r, true);
    struct kp_secret *secret;
    if (body == NULL) { /* it may have held a secret */
        kp_admin__wipe_body(r);
        return;
    }
    bool had_secret = json_object_get(body, "secret") != NULL;
    if (!take_secret(r, body, &secret)) {
        json_decref(body);
        kp_admin__wipe_body(r);
        return;
    }
    struct kp_audit_ctx audit = kp_admin_audit_ctx(&r->who, r->rid);
    struct kp_buf cmd;
    char msg[256] = "", field[160] = "";
    kp_buf_init(&cmd);
    int rc =
        kp_command_from_json(KP_OP_PUT_KEY, r->id, body, kp_now_unix_ms(), &audit, r->has_expect,
                             r->expect, &cmd, msg, sizeof(msg), field, sizeof(field));
    json_decref(body);
    struct kp_admin_write *w = NULL;
    if (rc == KP_OK && (w = kp_admin__write_new(r, KP_KIND_KEY, r->id)) == NULL)
        rc = KP_ENOMEM; /* answered */
    else if (rc == KP_ENOMEM)
        kp_admin__oom(r);
    else if (rc != KP_OK)
        kp_admin__fail(r, 400, "invalid_field", field[0] != '\0' ? field : NULL, "%s", msg);
    if (rc != KP_OK) {
        kp_secret_free(secret);
        kp_buf_free(&cmd);
        if (had_secret)
            kp_admin__wipe_body(r);
        return;
    }
    w->secret = secret;
    w->wipe_request = had_secret;
    w->grace_ms = (int64_t)GRACE_DEFAULT_S * 1000;
    w->then = secret != NULL ? add_after_put : kp_admin__answer_entity;
    kp_admin__submit(w, &cmd, true);
}

/* {"secret": "...", "grace_seconds": N}: 400 (and false) for anything
 * else. */
static bool rotate_args(struct kp_admin_req *r, json_t *body, int64_t *grace_s)
{
    const char *name;
    json_t *v;
    *grace_s = GRACE_DEFAULT_S;
    json_object_foreach(body, name, v)
    {
        char safe[72];
        if (strcmp(name, "secret") == 0)
            continue;
        if (strcmp(name, "grace_seconds") != 0) {
            kp_admin__quote(safe, sizeof(safe), name);
            kp_admin__fail(r, 400, "invalid_field", safe,
                           "unknown field '%s' (expected secret, "
                           "grace_seconds)",
                           safe);
            return false;
        }
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) > GRACE_MAX_S) {
            kp_admin__fail(r, 400, "invalid_field", "grace_seconds", "grace_seconds: must be 0..%d",
                           GRACE_MAX_S);
            return false;
        }
        *grace_s = json_integer_value(v);
    }
    if (json_object_get(body, "secret") == NULL) {
        kp_admin__fail(r, 400, "invalid_field", "secret", "secret: required");
        return false;
    }
    return true;
}

void kp_admin__key_rotate(struct kp_admin_req *r)
{
    json_t *body = kp_admin__body(r, false);
    struct kp_secret *secret = NULL;
    struct kp_admin_write *w = NULL;
    int64_t grace_s;
    if (body == NULL)
        goto fail;
    bool ok = rotate_args(r, body, &grace_s);
    if (ok)
        ok = take_secret(r, body, &secret);
    else
        wipe_json_string(json_object_get(body, "secret"));
    json_decref(body);
    if (!ok)
        goto fail;
    const struct kp_key *k = current_key(r, r->id);
    if (k == NULL) {
        char id[130];
        kp_admin__quote(id, sizeof(id), r->id);
        kp_admin__fail(r, 404, "not_found", NULL, "no key '%s'", id);
        goto fail;
    }
    if ((w = kp_admin__write_new(r, KP_KIND_KEY, r->id)) == NULL)
        goto fail;
    w->secret = secret;
    w->wipe_request = true;
    w->grace_ms = grace_s * 1000;
    propose_secret(w, k, r->has_expect, r->expect, true);
    return;

fail:
    kp_secret_free(secret);
    kp_admin__wipe_body(r);
}

/* --- retire, disable, enable, revoke -------------------------------------------- */

static void propose_key_cmd(struct kp_admin_req *r, struct kp_command *cmd)
{
    struct kp_buf buf;
    if (!kp_admin__encode(r, cmd, &buf))
        return;
    struct kp_admin_write *w = kp_admin__write_new(r, KP_KIND_KEY, r->id);
    if (w == NULL) {
        kp_buf_free(&buf);
        return;
    }
    kp_admin__submit(w, &buf, true);
}

void kp_admin__key_retire(struct kp_admin_req *r)
{
    uint64_t v = 0;
    bool ok = r->sub[0] != '\0' && strlen(r->sub) <= 10;
    for (const char *p = r->sub; ok && *p != '\0'; p++) {
        ok = *p >= '0' && *p <= '9';
        v = v * 10 + (uint64_t)(*p - '0');
    }
    if (!ok || v == 0 || v > UINT32_MAX) {
        kp_admin__fail(r, 400, "invalid_field", "version",
                       "version: the secret version in the path must be 1..4294967295");
        return;
    }
    struct kp_command cmd;
    struct kp_cmd_retire_secret body = {.id = (char *)r->id, .version = (uint32_t)v};
    kp_admin__envelope(r, &cmd, KP_OP_RETIRE_KEY_SECRET);
    cmd.body.retire_secret = &body;
    propose_key_cmd(r, &cmd);
}

static void set_status(struct kp_admin_req *r, enum kp_key_status status)
{
    struct kp_command cmd;
    struct kp_cmd_key_status body = {.id = (char *)r->id, .status = (uint8_t)status};
    kp_admin__envelope(r, &cmd, KP_OP_SET_KEY_STATUS);
    cmd.body.key_status = &body;
    propose_key_cmd(r, &cmd);
}

void kp_admin__key_disable(struct kp_admin_req *r)
{
    set_status(r, KP_KEY_DISABLED);
}

void kp_admin__key_enable(struct kp_admin_req *r)
{
    set_status(r, KP_KEY_ACTIVE);
}

void kp_admin__key_revoke(struct kp_admin_req *r)
{
    set_status(r, KP_KEY_REVOKED);
}

/* --- tokens ------------------------------------------------------------------------ */

/* A JSON array of strings as a struct kp_strv pointing into @v (the array
 * of pointers from kp_malloc). False after answering 400/503. */
static bool strv_of(struct kp_admin_req *r, const char *name, json_t *v, struct kp_strv *out)
{
    *out = (struct kp_strv){0};
    if (v == NULL)
        return true;
    if (!json_is_array(v)) {
        kp_admin__fail(r, 400, "invalid_field", name, "%s: must be a list of strings", name);
        return false;
    }
    size_t n = json_array_size(v);
    if (n == 0)
        return true;
    if ((out->v = kp_calloc(n, sizeof(*out->v))) == NULL) {
        kp_admin__oom(r);
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *s = json_array_get(v, i);
        if (!json_is_string(s)) {
            char field[64];
            snprintf(field, sizeof(field), "%s[%zu]", name, i);
            kp_admin__fail(r, 400, "invalid_field", field, "%s: must be a string", field);
            kp_free(out->v);
            out->v = NULL;
            return false;
        }
        out->v[out->n++] = (char *)json_string_value(s);
    }
    return true;
}

static bool opt_string(struct kp_admin_req *r, json_t *body, const char *name, char **out)
{
    json_t *v = json_object_get(body, name);
    *out = NULL;
    if (v == NULL || json_is_null(v))
        return true;
    if (!json_is_string(v)) {
        kp_admin__fail(r, 400, "invalid_field", name, "%s: must be a string", name);
        return false;
    }
    *out = (char *)json_string_value(v);
    return true;
}

/* The token fields of a POST /tokens body, pointing into @body. */
struct token_args {
    char *name, *role, *tenant;
    struct kp_strv projects, features, pools, models;
    int64_t expires_at_ms;
};

static void token_args_free(struct token_args *a)
{
    kp_free(a->projects.v);
    kp_free(a->features.v);
    kp_free(a->pools.v);
    kp_free(a->models.v);
}

static bool token_args(struct kp_admin_req *r, json_t *body, struct token_args *a)
{
    static const char *const known[] = {"name",     "role",  "tenant", "projects",
                                        "features", "pools", "models", "expires_at_ms"};
    static char any_tenant[] = "*";
    const char *key;
    json_t *v;
    *a = (struct token_args){0};
    json_object_foreach(body, key, v)
    {
        size_t i = 0;
        while (i < sizeof(known) / sizeof(known[0]) && strcmp(key, known[i]) != 0)
            i++;
        if (i == sizeof(known) / sizeof(known[0])) {
            char safe[72];
            kp_admin__quote(safe, sizeof(safe), key);
            kp_admin__fail(r, 400, "invalid_field", safe, "unknown field '%s'", safe);
            return false;
        }
    }
    enum kp_role role;
    if (!opt_string(r, body, "name", &a->name) || !opt_string(r, body, "role", &a->role) ||
        !opt_string(r, body, "tenant", &a->tenant))
        return false;
    if (a->role == NULL || kp_role_parse(a->role, &role) != KP_OK) {
        kp_admin__fail(r, 400, "invalid_field", "role",
                       "role: required, one of admin, operator, app, finance, auditor");
        return false;
    }
    if (a->tenant == NULL)
        a->tenant = any_tenant;
    v = json_object_get(body, "expires_at_ms");
    if (v != NULL && (!json_is_integer(v) || json_integer_value(v) < 0)) {
        kp_admin__fail(r, 400, "invalid_field", "expires_at_ms",
                       "expires_at_ms: must be a Unix time in ms, or 0 for never");
        return false;
    }
    a->expires_at_ms = v != NULL ? json_integer_value(v) : 0;
    if (strv_of(r, "projects", json_object_get(body, "projects"), &a->projects) &&
        strv_of(r, "features", json_object_get(body, "features"), &a->features) &&
        strv_of(r, "pools", json_object_get(body, "pools"), &a->pools) &&
        strv_of(r, "models", json_object_get(body, "models"), &a->models))
        return true;
    token_args_free(a);
    return false;
}

static void token_created(struct kp_admin_write *w, const struct kp_fsm_result *res)
{
    struct kp_admin_req *r = w->r;
    const struct kp_entity *e = kp_fsm_get(kp_admin__fsm(r), KP_KIND_TOKEN, w->id);
    json_t *item = e != NULL
                       ? kp_admin__entity_json(e)
                       : json_pack("{s:s,s:I}", "id", w->id, "version", (json_int_t)res->version);
    json_t *text = json_stringn(w->token_text, KP_TOKEN_TEXT_LEN), *v = json_object();
    if (item == NULL || text == NULL || v == NULL) {
        json_decref(item);
        json_decref(text);
        json_decref(v);
        kp_admin__write_free(w);
        kp_admin__fail(r, 503, "out_of_memory", NULL,
                       "out of memory after the token was created; disable it and create another");
        return;
    }
    json_object_set(v, "token", text);
    json_object_set_new(v, "item", item);
    kp_admin__respond(r, 201, v, e != NULL ? e->version : 0, true);
    wipe_json_string(text);
    json_decref(text);
    kp_admin__write_free(w);
}

/* Draw a token and propose it; again after an id clash (w->redo). */
static void token_propose(struct kp_admin_write *w, bool may_forward)
{
    struct kp_admin_req *r = w->r;
    const struct kp_cluster *cluster = kp_fsm_cluster(kp_admin__fsm(r));
    struct token_args a;
    if (!token_args(r, w->body, &a)) { /* checked before: cannot fail but for memory */
        kp_admin__write_free(w);
        return;
    }
    char *id = kp_http_alloc(r->ex, KP_TOKEN_ID_SIZE);
    uint8_t hash[KP_TOKEN_HASH_LEN];
    kp_token_text_free(w->token_text);
    w->token_text = NULL;
    int rc = id == NULL || cluster == NULL
                 ? KP_ENOMEM
                 : kp_token_generate(cluster->pepper, &w->token_text, id, hash);
    if (rc != KP_OK) {
        token_args_free(&a);
        kp_admin__write_free(w);
        kp_admin__fail(r, 503, "token_failed", NULL, "cannot make a token: %s; retry",
                       kp_err_msg(rc));
        return;
    }
    w->id = id;
    struct kp_token t = {
        .e = {.id = id},
        .name = a.name,
        .role = a.role,
        .tenant = a.tenant,
        .projects = a.projects,
        .features = a.features,
        .pools = a.pools,
        .models = a.models,
        .expires_at_ms = a.expires_at_ms,
    };
    memcpy(t.hash, hash, sizeof(hash));
    struct kp_command cmd;
    kp_admin__envelope(r, &cmd, KP_OP_PUT_TOKEN);
    cmd.has_expect_version = true; /* a new id must not replace a token */
    cmd.expect_version = 0;
    cmd.body.token = &t;
    struct kp_buf buf;
    bool ok = kp_admin__encode(r, &cmd, &buf);
    token_args_free(&a);
    if (!ok) {
        kp_admin__write_free(w);
        return;
    }
    kp_admin__submit(w, &buf, may_forward);
}

static void token_redraw(struct kp_admin_write *w)
{
    token_propose(w, false);
}

void kp_admin__token_create(struct kp_admin_req *r)
{
    json_t *body = kp_admin__body(r, false);
    struct token_args a;
    if (body == NULL)
        return;
    if (!token_args(r, body, &a)) {
        json_decref(body);
        return;
    }
    token_args_free(&a);
    if (kp_fsm_cluster(kp_admin__fsm(r)) == NULL) {
        json_decref(body);
        kp_admin__fail(r, 503, "cluster_not_initialised", NULL,
                       "cluster not initialised yet; retry");
        return;
    }
    struct kp_admin_write *w = kp_admin__write_new(r, KP_KIND_TOKEN, NULL);
    if (w == NULL) {
        json_decref(body);
        return;
    }
    w->body = body;
    w->then = token_created;
    w->redo = token_redraw;
    w->redos_left = TOKEN_REDRAWS;
    token_propose(w, true);
}

/* The registry kinds clusterctl knows: one table that says, per kind, its
 * names, what the control API lets one do with it (docs/control-api.md),
 * which rendered fields a PUT must not send back, and the columns of its
 * table. `get`, `put`, `delete` and `apply` are generic over this table; a
 * new kind is one entry here. */
#include <stdio.h>
#include <string.h>

#include "clusterctl.h"

#define N(cols) (sizeof(cols) / sizeof(cols[0]))

/* A key's primary secret: "v3 ...abcd". */
static void cell_primary(struct kp_buf *out, const json_t *value, const json_t *row)
{
    size_t i;
    json_t *s;

    (void)row;
    json_array_foreach(value, i, s)
    {
        const char *state = json_string_value(json_object_get(s, "state"));
        const char *last4 = json_string_value(json_object_get(s, "last4"));
        if (state == NULL || strcmp(state, "primary") != 0)
            continue;
        kp_buf_appendf(out, "v%" JSON_INTEGER_FORMAT,
                       json_integer_value(json_object_get(s, "version")));
        if (last4 != NULL) {
            kp_buf_append_lit(out, " ...");
            kp_ctl__cell_text(out, json_object_get(s, "last4"), NULL);
        }
    }
}

static const struct kp_ctl_column provider_columns[] = {
    {"ID", "id", NULL},
    {"KIND", "kind", NULL},
    {"BASE_URL", "base_url", NULL},
    {"API_VERSION", "api_version", NULL},
    {"VERSION", "version", NULL},
};
static const struct kp_ctl_column key_columns[] = {
    {"ID", "id", NULL},         {"PROVIDER", "provider", NULL},
    {"STATUS", "status", NULL}, {"PRIMARY", "secrets", cell_primary},
    {"NAME", "name", NULL},     {"OWNER", "owner", NULL},
    {"MODELS", "models", NULL}, {"VERSION", "version", NULL},
};
static const struct kp_ctl_column pool_columns[] = {
    {"ID", "id", NULL},
    {"STRATEGY", "strategy", NULL},
    {"MEMBERS", "members.key", NULL},
    {"FALLBACK", "fallback", NULL},
    {"VERSION", "version", NULL},
};
static const struct kp_ctl_column tenant_columns[] = {
    {"ID", "id", NULL},
    {"DISPLAY_NAME", "display_name", NULL},
    {"VERSION", "version", NULL},
};
static const struct kp_ctl_column project_columns[] = {
    {"ID", "id", NULL},
    {"TENANT", "tenant", NULL},
    {"DISPLAY_NAME", "display_name", NULL},
    {"VERSION", "version", NULL},
};
static const struct kp_ctl_column policy_columns[] = {
    {"ID", "id", NULL},
    {"SCOPE", "scope_kind", NULL},
    {"TARGET", "scope_target", NULL},
    {"MODELS", "models", NULL},
    {"RPM", "rpm", NULL},
    {"TPM", "tpm", NULL},
    {"BUDGETS", "budgets.name", NULL},
    {"VERSION", "version", NULL},
};
static const struct kp_ctl_column price_columns[] = {
    {"MODEL", "id", NULL},
    {"INPUT/MTOK", "input_per_mtok", kp_ctl__cell_usd},
    {"CACHED/MTOK", "cached_input_per_mtok", kp_ctl__cell_usd},
    {"OUTPUT/MTOK", "output_per_mtok", kp_ctl__cell_usd},
    {"REQUEST_FEE", "request_fee", kp_ctl__cell_usd},
    {"VERSION", "version", NULL},
};
static const struct kp_ctl_column token_columns[] = {
    {"ID", "id", NULL},
    {"NAME", "name", NULL},
    {"ROLE", "role", NULL},
    {"TENANT", "tenant", NULL},
    {"PROJECTS", "projects", NULL},
    {"FEATURES", "features", NULL},
    {"POOLS", "pools", NULL},
    {"MODELS", "models", NULL},
    {"EXPIRES", "expires_at_ms", kp_ctl__cell_time},
    {"DISABLED", "disabled", NULL},
};
static const struct kp_ctl_column member_columns[] = {
    {"NAME", "id", NULL},   {"NODE_ID", "node_id", NULL}, {"ADDRESS", "address", NULL},
    {"ROLE", "role", NULL}, {"METER", "meter", NULL},     {"VERSION", "version", NULL},
};
static const struct kp_ctl_column rule_columns[] = {
    {"ID", "id", NULL},
    {"KIND", "kind", NULL},
    {"PARAMS", "params", kp_ctl__cell_count},
    {"VERSION", "version", NULL},
};

static const char *const key_state[] = {"status", "secrets", NULL};
static const char *const none[] = {NULL};
static const char *const provider_maps[] = {"headers", NULL};
static const char *const rule_maps[] = {"params", NULL};

enum {
    EDIT = KP_CTL_KIND_PUT | KP_CTL_KIND_DELETE,
    DECLARED = EDIT | KP_CTL_KIND_APPLY,
};

static const struct kp_ctl_kind kinds[] = {
    {"providers", "provider", DECLARED, none, provider_maps, true, provider_columns,
     N(provider_columns)},
    {"keys", "key", EDIT, key_state, none, false, key_columns, N(key_columns)},
    {"pools", "pool", DECLARED, none, none, false, pool_columns, N(pool_columns)},
    {"tenants", "tenant", DECLARED, none, none, false, tenant_columns, N(tenant_columns)},
    {"projects", "project", DECLARED, none, none, false, project_columns, N(project_columns)},
    {"policies", "policy", DECLARED, none, none, false, policy_columns, N(policy_columns)},
    {"prices", "price", DECLARED, none, none, false, price_columns, N(price_columns)},
    {"tokens", "token", KP_CTL_KIND_DELETE, none, none, false, token_columns, N(token_columns)},
    {"members", "member", KP_CTL_KIND_DELETE, none, none, false, member_columns, N(member_columns)},
    {"alert-rules", "alert-rule", EDIT, none, rule_maps, true, rule_columns, N(rule_columns)},
    {"webhooks", "webhook", EDIT, none, rule_maps, true, rule_columns, N(rule_columns)},
};

static bool same_name(const char *kind_name, const char *name)
{
    for (; *kind_name != '\0' && *name != '\0'; kind_name++, name++) {
        if (*kind_name != (*name == '_' ? '-' : *name))
            return false;
    }
    return *kind_name == *name;
}

const struct kp_ctl_kind *kp_ctl__kind_find(const char *name)
{
    for (size_t i = 0; i < N(kinds); i++) {
        if (same_name(kinds[i].plural, name) || same_name(kinds[i].singular, name))
            return &kinds[i];
    }
    return NULL;
}

void kp_ctl__kind_names(unsigned flags, char *out, size_t len)
{
    size_t used = 0;

    out[0] = '\0';
    for (size_t i = 0; i < N(kinds) && used < len; i++) {
        if ((kinds[i].flags & flags) != flags)
            continue;
        int n = snprintf(out + used, len - used, "%s%s", used ? ", " : "", kinds[i].plural);
        used += n > 0 ? (size_t)n : 0;
    }
}

bool kp_ctl__kind_readonly(const struct kp_ctl_kind *kind, const char *field)
{
    static const char *const set_by_registry[] = {"id", "version", "created_ms", "updated_ms",
                                                  NULL};
    for (const char *const *f = set_by_registry; *f != NULL; f++) {
        if (strcmp(*f, field) == 0)
            return true;
    }
    if (!kind->own_kind && strcmp(field, "kind") == 0)
        return true;
    for (const char *const *f = kind->state_fields; *f != NULL; f++) {
        if (strcmp(*f, field) == 0)
            return true;
    }
    return false;
}

json_t *kp_ctl__kind_body(const struct kp_ctl_kind *kind, const json_t *entity)
{
    json_t *body = json_object();
    const char *field;
    json_t *v;

    json_object_foreach((json_t *)entity, field, v)
    {
        if (body != NULL && !kp_ctl__kind_readonly(kind, field) &&
            json_object_set(body, field, v) != 0) {
            json_decref(body);
            return NULL;
        }
    }
    return body;
}

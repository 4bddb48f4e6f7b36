/* The registry's entities: their schemas, their lifetime, the tables that
 * hold them, and the rules that span fields or entities.
 *
 * Every entity kind and every command body is one schema: a table of
 * fields with type, wire name, character set, limits and, for ids, the kind
 * they refer to. The codec (command.c) reads and writes any of them through
 * the table, so a field added here is decoded, validated, encoded, copied,
 * freed and checked for references everywhere at once.
 *
 * Entities are immutable once in a table and reference-counted with
 * atomics, because a view may drop the last reference on a router thread.
 * Tables are open-addressing hash tables (linear probing, backward-shift
 * deletion, load at most 3/4) shared the same way: the state machine
 * changes a table in place only while it holds the only reference, and
 * copies it otherwise (kp_store__table_prepare), so a published view never
 * sees a change. Preparing is the only step that allocates, which is what
 * lets apply allocate everything before it mutates anything.
 *
 * Validation never depends on hash order: where several entities could be
 * named in a message, the one with the smallest id is, so every replica
 * (including one restored from a snapshot, whose tables are laid out
 * differently) writes the same audit entry. */
#include "raftstore/internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Latest time accepted anywhere: 9999-12-31T23:59:59.999Z. */
#define TS_MAX 253402300799999

/* --- enum names ---------------------------------------------------------------------- */

static const char *const provider_kinds[] = {
    "openai", "azure-openai", "anthropic", "gemini", "openai-compatible", NULL,
};
static const char *const key_statuses[] = {"active", "disabled", "revoked", NULL};
static const char *const secret_states[] = {"primary", "previous", "retired", NULL};
static const char *const strategies[] = {
    "priority", "weighted", "least_inflight", "lowest_latency", NULL,
};
static const char *const scope_kinds[] = {
    "global", "tenant", "project", "key", "pool", "token", "feature", NULL,
};
/* In enum kp_freeze_scope order. */
static const char *const freeze_scopes[] = {
    "tenant", "project", "feature", "pool", "key", "token", NULL,
};
/* In enum kp_budget_window and enum kp_budget_action_kind order. */
static const char *const budget_windows[] = {"daily", "weekly", "monthly", "fixed", NULL};
static const char *const budget_kinds[] = {"hard", "soft", NULL};
static const char *const budget_actions[] = {
    "alert", "block", "downgrade", "throttle", "disable_feature", NULL,
};
static const char *const member_roles[] = {"voter", "standby", "spare", NULL};
static const char *const health_statuses[] = {
    "healthy", "degraded", "rate_limited", "quota_exhausted", "invalid", "disabled", NULL,
};
static const char *const alert_severities[] = {"info", "warning", "critical", NULL};
static const char *const alert_events[] = {"open", "resolved", NULL};
static const char *const delivery_states[] = {"sent", "dead", NULL};

static const char *enum_name(const char *const *names, size_t count, int v)
{
    return v >= 0 && (size_t)v < count - 1 ? names[v] : NULL;
}

#define ENUM_NAME(fn, names)                                                                       \
    const char *fn(int v)                                                                          \
    {                                                                                              \
        return enum_name(names, sizeof(names) / sizeof(names[0]), v);                              \
    }

ENUM_NAME(kp_provider_kind_name, provider_kinds)
ENUM_NAME(kp_key_status_name, key_statuses)
ENUM_NAME(kp_health_status_name, health_statuses)
ENUM_NAME(kp_pool_strategy_name, strategies)
ENUM_NAME(kp_member_role_name, member_roles)
ENUM_NAME(kp_scope_kind_name, scope_kinds)
ENUM_NAME(kp_freeze_scope_name, freeze_scopes)
ENUM_NAME(kp_budget_window_name, budget_windows)
ENUM_NAME(kp_budget_action_name, budget_actions)
ENUM_NAME(kp_alert_severity_name, alert_severities)
ENUM_NAME(kp_alert_event_name, alert_events)
ENUM_NAME(kp_delivery_state_name, delivery_states)

/* --- character sets -------------------------------------------------------------------- */

static bool is_id_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == ':' || c == '-';
}

static const char *check_text(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n;) {
        size_t l = kp_utf8_len(p + i, n - i);
        if (l == 0)
            return "must be valid UTF-8";
        if (l == 1 && (p[i] < 0x20 || p[i] == 0x7f))
            return "must not contain control characters";
        i += l;
    }
    return NULL;
}

const char *kp_store__check_cs(enum kp_cs cs, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    if (cs == KP_CS_TEXT)
        return check_text(p, n);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        switch (cs) {
        case KP_CS_ID:
            if (!is_id_char(c))
                return "may contain only letters, digits and . _ : -";
            break;
        case KP_CS_HNAME:
            if (!kp_is_tchar(c))
                return "must be an HTTP header name";
            break;
        case KP_CS_HVALUE:
            if (c < 0x20 || c > 0x7e)
                return "may contain only printable ASCII";
            break;
        default: /* KP_CS_NAME, KP_CS_URL */
            if (c <= 0x20 || c > 0x7e)
                return "may contain only printable ASCII without spaces";
            break;
        }
    }
    return NULL;
}

void kp_store__utf8_trim(char *s)
{
    size_t n = strlen(s), i = 0;
    while (i < n) {
        size_t l = kp_utf8_len(s + i, n - i);
        if (l == 0)
            break;
        i += l;
    }
    s[i] = '\0';
}

/* --- schemas --------------------------------------------------------------------------- */

#define F(st, nm, mem, ft, ...)                                                                    \
    {                                                                                              \
        .name = nm, .type = ft, .off = offsetof(struct st, mem), __VA_ARGS__                       \
    }
#define STR(st, nm, mem, flags_, cs_, max_, ref_)                                                  \
    F(st, nm, mem, KP_FT_STR, .flags = flags_, .cs = cs_, .max = max_, .ref = ref_)
#define STRV(st, nm, mem, cs_, count, elen, ref_)                                                  \
    F(st, nm, mem, KP_FT_STRV, .cs = cs_, .max = count, .emax = elen, .ref = ref_)
#define INT(st, nm, mem, ft, flags_, min_, max_, def_)                                             \
    F(st, nm, mem, ft, .flags = flags_, .min = min_, .max = max_, .def = def_)
#define ENUM(st, nm, mem, flags_, names_, def_)                                                    \
    F(st, nm, mem, KP_FT_ENUM, .flags = flags_, .names = names_,                                   \
      .max = sizeof(names_) / sizeof(names_[0]) - 1, .def = def_)
#define OBJV(st, nm, mem, flags_, sub_, count)                                                     \
    F(st, nm, mem, KP_FT_OBJV, .flags = flags_, .sub = &sub_, .max = count,                        \
      .off_n = offsetof(struct st, n##mem))
#define TIME(st, nm, mem, flags_) INT(st, nm, mem, KP_FT_I64, flags_, 0, TS_MAX, 0)

#define HEADER(st, idcs)                                                                           \
    STR(st, "id", e.id, KP_FF_REQ, idcs, 128, KP_REF_NONE),                                        \
        INT(st, "version", e.version, KP_FT_U64, KP_FF_STATE, 0, UINT64_MAX, 0),                   \
        TIME(st, "created_ms", e.created_ms, KP_FF_STATE),                                         \
        TIME(st, "updated_ms", e.updated_ms, KP_FF_STATE)

#define SCHEMA_LINKAGE(linkage, var, st, label, check_, ...)                                       \
    static const struct kp_field var##_fields[] = {__VA_ARGS__};                                   \
    linkage const struct kp_schema var = {label, sizeof(struct st), var##_fields,                  \
                                          sizeof(var##_fields) / sizeof(var##_fields[0]), check_}
#define SCHEMA(var, st, label, ...)     SCHEMA_LINKAGE(static, var, st, label, NULL, __VA_ARGS__)
#define SCHEMA_EXT(var, st, label, ...) SCHEMA_LINKAGE(, var, st, label, NULL, __VA_ARGS__)
/* A schema whose objects have rules across their fields (struct kp_schema). */
#define SCHEMA_CHECKED(var, st, label, check_, ...)                                                \
    SCHEMA_LINKAGE(static, var, st, label, check_, __VA_ARGS__)

SCHEMA(provider_schema, kp_provider, "provider", HEADER(kp_provider, KP_CS_ID),
       ENUM(kp_provider, "kind", kind, KP_FF_REQ, provider_kinds, 0),
       STR(kp_provider, "base_url", base_url, KP_FF_REQ, KP_CS_URL, 2048, KP_REF_NONE),
       STR(kp_provider, "api_version", api_version, 0, KP_CS_NAME, 64, KP_REF_NONE),
       F(kp_provider, "headers", headers, KP_FT_STRMAP, .kcs = KP_CS_HNAME, .cs = KP_CS_HVALUE,
         .max = 32, .emax = 1024),
       F(kp_provider, "allow_insecure", allow_insecure, KP_FT_BOOL),
       INT(kp_provider, "connect_timeout_ms", connect_timeout_ms, KP_FT_U32, 0, 0, 600000, 0),
       INT(kp_provider, "first_byte_timeout_ms", first_byte_timeout_ms, KP_FT_U32, 0, 0, 3600000,
           0),
       INT(kp_provider, "idle_timeout_ms", idle_timeout_ms, KP_FT_U32, 0, 0, 3600000, 0),
       INT(kp_provider, "total_timeout_ms", total_timeout_ms, KP_FT_U32, 0, 0, 86400000, 0),
       F(kp_provider, "max_retries", max_retries, KP_FT_U32, .min = 0,
         .max = KP_PROVIDER_RETRIES_MAX, .def = 1, .since = 10),
       F(kp_provider, "retry_backoff_ms", retry_backoff_ms, KP_FT_U32, .min = 0, .max = 60000,
         .def = 100, .since = 10),
       F(kp_provider, "retry_window_ms", retry_window_ms, KP_FT_U32, .min = 0, .max = 3600000,
         .def = 3000, .since = 10),
       F(kp_provider, "balance_path", balance_path, KP_FT_STR, .cs = KP_CS_URL, .max = 256,
         .since = 9),
       F(kp_provider, "balance_pointer", balance_pointer, KP_FT_STR, .cs = KP_CS_URL, .max = 256,
         .since = 9),
       F(kp_provider, "balance_used_pointer", balance_used_pointer, KP_FT_STR, .cs = KP_CS_URL,
         .max = 256, .since = 9));

SCHEMA_EXT(kp_store__key_secret_schema, kp_key_secret, "secret",
           INT(kp_key_secret, "version", version, KP_FT_U32, KP_FF_REQ, 1, UINT32_MAX, 0),
           F(kp_key_secret, "sealed", sealed, KP_FT_BYTES, .max = 4096),
           STR(kp_key_secret, "fingerprint", fingerprint, KP_FF_REQ, KP_CS_NAME, 128, KP_REF_NONE),
           STR(kp_key_secret, "last4", last4, 0, KP_CS_TEXT, 16, KP_REF_NONE),
           ENUM(kp_key_secret, "state", state, KP_FF_REQ, secret_states, 0),
           TIME(kp_key_secret, "retire_after_ms", retire_after_ms, 0));

SCHEMA(key_schema, kp_key, "key", HEADER(kp_key, KP_CS_ID),
       STR(kp_key, "provider", provider, KP_FF_REQ, KP_CS_ID, 128, KP_REF(KP_KIND_PROVIDER)),
       STR(kp_key, "name", name, 0, KP_CS_TEXT, 256, KP_REF_NONE),
       STR(kp_key, "owner", owner, 0, KP_CS_TEXT, 256, KP_REF_NONE),
       STRV(kp_key, "tags", tags, KP_CS_NAME, 32, 64, KP_REF_NONE),
       ENUM(kp_key, "status", status, KP_FF_STATE, key_statuses, 0),
       STRV(kp_key, "models", models, KP_CS_NAME, 256, 128, KP_REF_NONE),
       INT(kp_key, "rpm", rpm, KP_FT_U64, 0, 0, 1000000000000, 0),
       INT(kp_key, "tpm", tpm, KP_FT_U64, 0, 0, 1000000000000000, 0),
       OBJV(kp_key, "secrets", secrets, KP_FF_STATE, kp_store__key_secret_schema, 16));

SCHEMA(member_ref_schema, kp_pool_member, "member",
       STR(kp_pool_member, "key", key, KP_FF_REQ, KP_CS_ID, 128, KP_REF(KP_KIND_KEY)),
       INT(kp_pool_member, "weight", weight, KP_FT_U32, 0, 1, 1000, 1),
       INT(kp_pool_member, "priority", priority, KP_FT_U32, 0, 0, 1000, 0));

SCHEMA(downgrade_schema, kp_downgrade, "downgrade",
       STR(kp_downgrade, "from", from, KP_FF_REQ, KP_CS_NAME, 128, KP_REF_NONE),
       STR(kp_downgrade, "to", to, KP_FF_REQ, KP_CS_NAME, 128, KP_REF_NONE));

SCHEMA(pool_schema, kp_pool, "pool", HEADER(kp_pool, KP_CS_ID),
       ENUM(kp_pool, "strategy", strategy, 0, strategies, 0),
       OBJV(kp_pool, "members", members, 0, member_ref_schema, 256),
       STR(kp_pool, "fallback", fallback, 0, KP_CS_ID, 128, KP_REF(KP_KIND_POOL)),
       OBJV(kp_pool, "downgrades", downgrades, 0, downgrade_schema, 32));

/* Snapshot format 6 added capture_content. */
SCHEMA(tenant_schema, kp_tenant, "tenant", HEADER(kp_tenant, KP_CS_ID),
       STR(kp_tenant, "display_name", display_name, 0, KP_CS_TEXT, 256, KP_REF_NONE),
       F(kp_tenant, "capture_content", capture_content, KP_FT_BOOL, .since = 6));

SCHEMA(project_schema, kp_project, "project", HEADER(kp_project, KP_CS_ID),
       STR(kp_project, "tenant", tenant, KP_FF_REQ, KP_CS_ID, 128, KP_REF(KP_KIND_TENANT)),
       STR(kp_project, "display_name", display_name, 0, KP_CS_TEXT, 256, KP_REF_NONE));

SCHEMA(token_schema, kp_token, "token", HEADER(kp_token, KP_CS_ID),
       STR(kp_token, "name", name, 0, KP_CS_TEXT, 256, KP_REF_NONE),
       F(kp_token, "hash", hash, KP_FT_HASH32, .flags = KP_FF_REQ),
       STR(kp_token, "role", role, KP_FF_REQ, KP_CS_ID, 64, KP_REF_NONE),
       STR(kp_token, "tenant", tenant, KP_FF_REQ | KP_FF_STAR, KP_CS_ID, 128,
           KP_REF(KP_KIND_TENANT)),
       STRV(kp_token, "projects", projects, KP_CS_ID, 64, 128, KP_REF(KP_KIND_PROJECT)),
       F(kp_token, "features", features, KP_FT_STRV, .cs = KP_CS_NAME, .max = 64, .emax = 128,
         .since = 10),
       STRV(kp_token, "pools", pools, KP_CS_ID, 64, 128, KP_REF(KP_KIND_POOL)),
       STRV(kp_token, "models", models, KP_CS_NAME, 256, 128, KP_REF_NONE),
       TIME(kp_token, "expires_at_ms", expires_at_ms, 0),
       F(kp_token, "disabled", disabled, KP_FT_BOOL));

/* A threshold action carries the field its kind needs, and no other. */
static int check_budget_action(struct kp_decoder *d, const void *obj)
{
    const struct kp_budget_action *a = obj;
    const char *name = kp_budget_action_name(a->action);
    bool downgrade = a->action == KP_BUDGET_ACTION_DOWNGRADE;
    bool throttle = a->action == KP_BUDGET_ACTION_THROTTLE;
    bool feature = a->action == KP_BUDGET_ACTION_DISABLE_FEATURE;
    if (downgrade && a->model == NULL)
        return kp_store__fail_at(d, "model", "required for downgrade");
    if (!downgrade && a->model != NULL)
        return kp_store__fail_at(d, "model", "only for downgrade, not %s", name);
    if (throttle && a->rpm == 0)
        return kp_store__fail_at(d, "rpm", "required for throttle (requests a minute, >= 1)");
    if (!throttle && a->rpm != 0)
        return kp_store__fail_at(d, "rpm", "only for throttle, not %s", name);
    if (feature && a->feature == NULL)
        return kp_store__fail_at(d, "feature", "required for disable_feature");
    if (!feature && a->feature != NULL)
        return kp_store__fail_at(d, "feature", "only for disable_feature, not %s", name);
    return KP_OK;
}

/* The window fields follow the window type (a fixed window has a period
 * and no offset; the others an offset and no period), and actions ascend
 * by at_percent: refused rather than sorted, so that what an operator
 * reads back is what they wrote. Several actions may share a threshold,
 * but not the same action twice. */
static int check_budget(struct kp_decoder *d, const void *obj)
{
    const struct kp_budget *b = obj;
    char field[32];
    if (b->window == KP_BUDGET_FIXED) {
        if (b->period_ms == 0)
            return kp_store__fail_at(d, "period_ms", "required for a fixed window");
        if (b->period_ms < KP_BUDGET_PERIOD_MIN_MS)
            return kp_store__fail_at(d, "period_ms",
                                     "must be %lld..%lld for a fixed window (1 hour to 366 days)",
                                     KP_BUDGET_PERIOD_MIN_MS, KP_BUDGET_PERIOD_MAX_MS);
        if (b->utc_offset_minutes != 0)
            return kp_store__fail_at(d, "utc_offset_minutes",
                                     "must be 0 for a fixed window (it is anchored at "
                                     "period_start_ms)");
    } else {
        const char *window = kp_budget_window_name(b->window);
        if (b->period_ms != 0)
            return kp_store__fail_at(d, "period_ms", "only for a fixed window, not %s", window);
        if (b->period_start_ms != 0)
            return kp_store__fail_at(d, "period_start_ms", "only for a fixed window, not %s",
                                     window);
    }
    for (uint32_t i = 1; i < b->nactions; i++) {
        const struct kp_budget_action *a = &b->actions[i];
        snprintf(field, sizeof(field), "actions[%u]", i);
        for (uint32_t j = 0; j < i; j++) {
            const struct kp_budget_action *o = &b->actions[j];
            if (o->at_percent > a->at_percent)
                return kp_store__fail_at(d, field,
                                         "at_percent %u is below actions[%u]'s %u (actions "
                                         "ascend by at_percent)",
                                         a->at_percent, j, o->at_percent);
            if (o->at_percent == a->at_percent && o->action == a->action)
                return kp_store__fail_at(d, field, "same at_percent and do as actions[%u]", j);
        }
    }
    return KP_OK;
}

SCHEMA_CHECKED(budget_action_schema, kp_budget_action, "action", check_budget_action,
               INT(kp_budget_action, "at_percent", at_percent, KP_FT_U32, KP_FF_REQ, 1,
                   KP_BUDGET_AT_PERCENT_MAX, 0),
               ENUM(kp_budget_action, "do", action, KP_FF_REQ, budget_actions, 0),
               STR(kp_budget_action, "model", model, 0, KP_CS_NAME, 128, KP_REF_NONE),
               INT(kp_budget_action, "rpm", rpm, KP_FT_U32, KP_FF_OMIT0, 0,
                   KP_BUDGET_ACTION_RPM_MAX, 0),
               STR(kp_budget_action, "feature", feature, 0, KP_CS_ID, 128, KP_REF_NONE));

/* Snapshot format 4 added the window's offset and period, and actions. */
SCHEMA_CHECKED(budget_schema, kp_budget, "budget", check_budget,
               STR(kp_budget, "name", name, KP_FF_REQ, KP_CS_ID, 64, KP_REF_NONE),
               ENUM(kp_budget, "window", window, KP_FF_REQ, budget_windows, 0),
               INT(kp_budget, "limit_nanousd", limit_nanousd, KP_FT_I64, KP_FF_REQ, 0, INT64_MAX,
                   0),
               ENUM(kp_budget, "kind", kind, 0, budget_kinds, 0),
               F(kp_budget, "utc_offset_minutes", utc_offset_minutes, KP_FT_I32,
                 .min = KP_BUDGET_UTC_OFFSET_MIN, .max = KP_BUDGET_UTC_OFFSET_MAX, .since = 4),
               F(kp_budget, "period_start_ms", period_start_ms, KP_FT_I64, .flags = KP_FF_OMIT0,
                 .min = 0, .max = TS_MAX, .since = 4),
               F(kp_budget, "period_ms", period_ms, KP_FT_I64, .flags = KP_FF_OMIT0, .min = 0,
                 .max = KP_BUDGET_PERIOD_MAX_MS, .since = 4),
               F(kp_budget, "actions", actions, KP_FT_OBJV, .sub = &budget_action_schema,
                 .max = KP_BUDGET_ACTIONS_MAX, .off_n = offsetof(struct kp_budget, nactions),
                 .since = 4));

SCHEMA(policy_schema, kp_policy, "policy", HEADER(kp_policy, KP_CS_ID),
       ENUM(kp_policy, "scope_kind", scope_kind, KP_FF_REQ, scope_kinds, 0),
       STR(kp_policy, "scope_target", scope_target, 0, KP_CS_ID, 128, KP_REF_SCOPE),
       STRV(kp_policy, "models", models, KP_CS_NAME, 256, 128, KP_REF_NONE),
       INT(kp_policy, "rpm", rpm, KP_FT_U64, 0, 0, 1000000000000, 0),
       INT(kp_policy, "tpm", tpm, KP_FT_U64, 0, 0, 1000000000000000, 0),
       OBJV(kp_policy, "budgets", budgets, 0, budget_schema, 16));

#define PRICE(nm, mem) INT(kp_price, nm, mem, KP_FT_I64, 0, 0, INT64_MAX, 0)
SCHEMA(price_schema, kp_price, "price", HEADER(kp_price, KP_CS_NAME),
       PRICE("input_per_mtok", input_per_mtok),
       PRICE("cached_input_per_mtok", cached_input_per_mtok),
       PRICE("output_per_mtok", output_per_mtok), PRICE("request_fee", request_fee));

SCHEMA(member_schema, kp_member, "member", HEADER(kp_member, KP_CS_ID),
       INT(kp_member, "node_id", node_id, KP_FT_U64, KP_FF_REQ, 1, UINT64_MAX, 0),
       STR(kp_member, "address", address, KP_FF_REQ, KP_CS_URL, 256, KP_REF_NONE),
       STR(kp_member, "control_address", control_address, 0, KP_CS_URL, 256, KP_REF_NONE),
       ENUM(kp_member, "role", role, 0, member_roles, 0), F(kp_member, "meter", meter, KP_FT_BOOL));

#define GENERIC(var, st, label)                                                                    \
    SCHEMA(var, st, label, HEADER(st, KP_CS_ID),                                                   \
           STR(st, "kind", kind, KP_FF_REQ, KP_CS_ID, 64, KP_REF_NONE),                            \
           F(st, "params", params, KP_FT_STRMAP, .kcs = KP_CS_ID, .cs = KP_CS_TEXT, .max = 64,     \
             .emax = 4096))
GENERIC(alert_rule_schema, kp_alert_rule, "alert_rule");
GENERIC(webhook_schema, kp_webhook, "webhook");

SCHEMA(health_change_schema, kp_health_change, "change",
       TIME(kp_health_change, "at_ms", at_ms, KP_FF_REQ),
       ENUM(kp_health_change, "status", status, KP_FF_REQ, health_statuses, 0),
       STR(kp_health_change, "error_class", error_class, 0, KP_CS_ID, 64, KP_REF_NONE),
       STR(kp_health_change, "source", source, 0, KP_CS_NAME, 64, KP_REF_NONE));

/* Snapshot format 8 added the canary fields and the history, format 9 the
 * provider balance. */
SCHEMA(health_schema, kp_key_health, "key_health", HEADER(kp_key_health, KP_CS_ID),
       ENUM(kp_key_health, "status", status, KP_FF_REQ, health_statuses, 0),
       STR(kp_key_health, "last_error_class", last_error_class, 0, KP_CS_ID, 64, KP_REF_NONE),
       TIME(kp_key_health, "last_change_ms", last_change_ms, KP_FF_STATE),
       F(kp_key_health, "last_canary_ms", last_canary_ms, KP_FT_I64, .min = 0, .max = TS_MAX,
         .since = 8),
       F(kp_key_health, "last_canary_result", last_canary_result, KP_FT_STR, .cs = KP_CS_ID,
         .max = 64, .since = 8),
       F(kp_key_health, "canary_streak", canary_streak, KP_FT_I32, .min = -1000000, .max = 1000000,
         .since = 8),
       F(kp_key_health, "provider_balance_ms", provider_balance_ms, KP_FT_I64, .min = 0,
         .max = TS_MAX, .since = 9),
       F(kp_key_health, "provider_balance_nanousd", provider_balance, KP_FT_I64,
         .min = -1000000000000000000, .max = 1000000000000000000, .since = 9),
       F(kp_key_health, "history", history, KP_FT_OBJV, .flags = KP_FF_STATE,
         .sub = &health_change_schema, .max = KP_HEALTH_HISTORY_MAX,
         .off_n = offsetof(struct kp_key_health, nhistory), .since = 8));

/* Budget state is made by budget_lease and budget_reset only (no put op),
 * so these schemas are read from snapshots and written to them and to
 * JSON, never taken from a command. Amounts are nano-USD, never negative. */
#define MONEY(st, nm, mem) INT(st, nm, mem, KP_FT_I64, 0, 0, INT64_MAX, 0)
SCHEMA(grant_schema, kp_budget_grant, "grant",
       INT(kp_budget_grant, "node_id", node_id, KP_FT_U64, KP_FF_REQ, 1, UINT64_MAX, 0),
       INT(kp_budget_grant, "amount_nanousd", amount, KP_FT_I64, KP_FF_REQ, 1, INT64_MAX, 0));

/* A window may start before the Unix epoch (a daily window west of UTC
 * containing 1970-01-01T00:00Z), by at most the longest period. */
#define WINDOW_START(st, nm, mem, flags_)                                                          \
    INT(st, nm, mem, KP_FT_I64, flags_, -KP_BUDGET_PERIOD_MAX_MS, TS_MAX, 0)
SCHEMA(budget_window_schema, kp_budget_window_state, "window",
       STR(kp_budget_window_state, "budget", budget, KP_FF_REQ, KP_CS_ID, 64, KP_REF_NONE),
       WINDOW_START(kp_budget_window_state, "start_ms", start_ms, 0),
       MONEY(kp_budget_window_state, "spent_nanousd", spent),
       OBJV(kp_budget_window_state, "grants", grants, 0, grant_schema, 4096),
       MONEY(kp_budget_window_state, "overshoot_nanousd", overshoot),
       MONEY(kp_budget_window_state, "excess_nanousd", excess),
       WINDOW_START(kp_budget_window_state, "prev_start_ms", prev_start_ms, 0),
       MONEY(kp_budget_window_state, "prev_spent_nanousd", prev_spent),
       MONEY(kp_budget_window_state, "late_nanousd", late));

SCHEMA(budget_state_schema, kp_budget_state, "budget_state", HEADER(kp_budget_state, KP_CS_ID),
       OBJV(kp_budget_state, "windows", windows, 0, budget_window_schema, 16));

SCHEMA(lease_node_schema, kp_lease_node, "lease_node", HEADER(kp_lease_node, KP_CS_ID),
       INT(kp_lease_node, "node_id", node_id, KP_FT_U64, KP_FF_REQ, 1, UINT64_MAX, 0),
       INT(kp_lease_node, "seq", seq, KP_FT_U64, 0, 0, UINT64_MAX, 0),
       TIME(kp_lease_node, "last_report_ms", last_report_ms, 0));

/* A freeze's id is "<scope>:<target>" (kind_rules checks that it is). Its
 * target refers to the entity of its scope, except for tenants and
 * features, which are free names (KP_REF_FREEZE). frozen_by is the actor
 * of the put that made this version, set by apply. */
SCHEMA(freeze_schema, kp_freeze, "freeze", HEADER(kp_freeze, KP_CS_ID),
       ENUM(kp_freeze, "scope", scope, KP_FF_REQ, freeze_scopes, 0),
       STR(kp_freeze, "target", target, KP_FF_REQ, KP_CS_ID, 128, KP_REF_FREEZE),
       STR(kp_freeze, "reason", reason, KP_FF_REQ, KP_CS_TEXT, KP_FREEZE_REASON_MAX, KP_REF_NONE),
       STR(kp_freeze, "frozen_by", frozen_by, KP_FF_STATE, KP_CS_TEXT, 256, KP_REF_NONE));

/* An alert's state fields are set by apply (alert.c): started and
 * resolved times, the ack, and how each delivery ended. Its rule and
 * texts come from the evaluator on the leader (node/alert_rules.c). */
SCHEMA(alert_delivery_schema, kp_alert_delivery, "delivery",
       STR(kp_alert_delivery, "webhook", webhook, KP_FF_REQ, KP_CS_ID, 128, KP_REF_NONE),
       ENUM(kp_alert_delivery, "event", event, KP_FF_REQ, alert_events, 0),
       ENUM(kp_alert_delivery, "state", state, KP_FF_REQ, delivery_states, 0),
       INT(kp_alert_delivery, "attempts", attempts, KP_FT_U32, 0, 0, 1000, 0),
       TIME(kp_alert_delivery, "at_ms", at_ms, 0),
       STR(kp_alert_delivery, "error", error, 0, KP_CS_TEXT, 256, KP_REF_NONE));

SCHEMA(alert_schema, kp_alert, "alert", HEADER(kp_alert, KP_CS_ID),
       ENUM(kp_alert, "severity", severity, KP_FF_REQ, alert_severities, 0),
       STR(kp_alert, "rule", rule, KP_FF_REQ, KP_CS_ID, 64, KP_REF_NONE),
       STR(kp_alert, "subject", subject, KP_FF_REQ, KP_CS_TEXT, 256, KP_REF_NONE),
       STR(kp_alert, "message", message, KP_FF_REQ, KP_CS_TEXT, 1024, KP_REF_NONE),
       STR(kp_alert, "action", action, KP_FF_REQ, KP_CS_TEXT, 1024, KP_REF_NONE),
       INT(kp_alert, "last_value", last_value, KP_FT_I64, 0, INT64_MIN, INT64_MAX, 0),
       TIME(kp_alert, "started_ms", started_ms, KP_FF_STATE),
       TIME(kp_alert, "resolved_ms", resolved_ms, KP_FF_STATE),
       STR(kp_alert, "acked_by", acked_by, KP_FF_STATE, KP_CS_TEXT, 256, KP_REF_NONE),
       TIME(kp_alert, "acked_ms", acked_ms, KP_FF_STATE),
       OBJV(kp_alert, "deliveries", deliveries, KP_FF_STATE, alert_delivery_schema,
            KP_ALERT_DELIVERIES_MAX));

/* A key's balance: its id is the key's (kind_rules checks the key
 * exists); made and changed by set_key_balance and add_key_topup only
 * (balance.c), never put whole. Snapshot format 7 added the table. */
SCHEMA(topup_schema, kp_balance_topup, "topup",
       INT(kp_balance_topup, "amount_nanousd", amount, KP_FT_I64, KP_FF_REQ, 1,
           KP_BALANCE_CREDIT_MAX, 0),
       TIME(kp_balance_topup, "at_ms", at_ms, 0),
       STR(kp_balance_topup, "by", by, 0, KP_CS_TEXT, 256, KP_REF_NONE),
       STR(kp_balance_topup, "note", note, 0, KP_CS_TEXT, KP_BALANCE_NOTE_MAX, KP_REF_NONE));

SCHEMA(key_balance_schema, kp_key_balance, "key_balance", HEADER(kp_key_balance, KP_CS_ID),
       INT(kp_key_balance, "credit_nanousd", credit, KP_FT_I64, 0, 0, KP_BALANCE_CREDIT_MAX, 0),
       TIME(kp_key_balance, "since_ms", since_ms, 0),
       OBJV(kp_key_balance, "topups", topups, 0, topup_schema, KP_BALANCE_TOPUPS_MAX));

const struct kp_schema *const kp_store__kind_schema[KP_KIND_COUNT] = {
    &provider_schema,     &key_schema,        &pool_schema,    &tenant_schema,
    &project_schema,      &token_schema,      &policy_schema,  &price_schema,
    &member_schema,       &alert_rule_schema, &webhook_schema, &health_schema,
    &budget_state_schema, &lease_node_schema, &freeze_schema,  &alert_schema,
    &key_balance_schema,
};

/* Snapshot table names, in enum order: format 1 ends at key_health, format
 * 2 at lease_nodes, format 3 at freezes, format 5 at alerts. */
const char *const kp_store__kind_plural[KP_KIND_COUNT] = {
    "providers",     "keys",        "pools",   "tenants",     "projects",     "tokens",
    "policies",      "prices",      "members", "alert_rules", "webhooks",     "key_health",
    "budget_states", "lease_nodes", "freezes", "alerts",      "key_balances",
};

static const char *const kind_names[KP_KIND_COUNT] = {
    "provider",     "key",        "pool",   "tenant",     "project",     "token",
    "policy",       "price",      "member", "alert_rule", "webhook",     "key_health",
    "budget_state", "lease_node", "freeze", "alert",      "key_balance",
};

const char *kp_kind_name(enum kp_kind kind)
{
    return (unsigned)kind < KP_KIND_COUNT ? kind_names[kind] : "?";
}

SCHEMA_EXT(kp_store__cluster_schema, kp_cluster, "cluster", HEADER(kp_cluster, KP_CS_ID),
           F(kp_cluster, "pepper", pepper, KP_FT_HASH32, .flags = KP_FF_REQ),
           STR(kp_cluster, "kek_id", kek_id, 0, KP_CS_ID, 64, KP_REF_NONE));

SCHEMA_EXT(kp_store__audit_ctx_schema, kp_audit_ctx, "audit",
           STR(kp_audit_ctx, "actor", actor, KP_FF_REQ, KP_CS_TEXT, 256, KP_REF_NONE),
           STR(kp_audit_ctx, "role", role, 0, KP_CS_ID, 64, KP_REF_NONE),
           STR(kp_audit_ctx, "request_id", request_id, 0, KP_CS_ID, 128, KP_REF_NONE),
           STR(kp_audit_ctx, "source", source, 0, KP_CS_TEXT, 256, KP_REF_NONE));

/* The audit entry's field order is the canonical hash input
 * (docs/registry.md): never reorder. */
#define ATEXT(nm, max_) STR(kp_audit_entry, #nm, nm, 0, KP_CS_TEXT, max_, KP_REF_NONE)
SCHEMA_EXT(kp_store__audit_entry_schema, kp_audit_entry, "audit_entry",
           INT(kp_audit_entry, "seq", seq, KP_FT_U64, KP_FF_REQ, 1, UINT64_MAX, 0),
           INT(kp_audit_entry, "ts", ts, KP_FT_I64, 0, 0, TS_MAX, 0), ATEXT(actor, 256),
           ATEXT(role, 64), ATEXT(action, 64), ATEXT(target, 256), ATEXT(result, 512),
           ATEXT(request_id, 128), ATEXT(source, 256),
           F(kp_audit_entry, "prev_hash", prev_hash, KP_FT_HASH32),
           F(kp_audit_entry, "hash", hash, KP_FT_HASH32, .flags = KP_FF_NOHASH));

/* Command bodies that are not whole entities. */
SCHEMA(target_schema, kp_cmd_target, "target",
       STR(kp_cmd_target, "id", id, KP_FF_REQ, KP_CS_NAME, 128, KP_REF_NONE));

SCHEMA(key_status_schema, kp_cmd_key_status, "key_status",
       STR(kp_cmd_key_status, "id", id, KP_FF_REQ, KP_CS_ID, 128, KP_REF_NONE),
       ENUM(kp_cmd_key_status, "status", status, KP_FF_REQ, key_statuses, 0));

SCHEMA(add_secret_schema, kp_cmd_add_secret, "add_secret",
       STR(kp_cmd_add_secret, "id", id, KP_FF_REQ, KP_CS_ID, 128, KP_REF_NONE),
       INT(kp_cmd_add_secret, "version", version, KP_FT_U32, KP_FF_REQ, 1, UINT32_MAX, 0),
       F(kp_cmd_add_secret, "sealed", sealed, KP_FT_BYTES, .flags = KP_FF_REQ, .max = 4096),
       STR(kp_cmd_add_secret, "fingerprint", fingerprint, KP_FF_REQ, KP_CS_NAME, 128, KP_REF_NONE),
       STR(kp_cmd_add_secret, "last4", last4, 0, KP_CS_TEXT, 16, KP_REF_NONE),
       TIME(kp_cmd_add_secret, "retire_previous_after_ms", retire_previous_after_ms, 0));

SCHEMA(retire_secret_schema, kp_cmd_retire_secret, "retire_secret",
       STR(kp_cmd_retire_secret, "id", id, KP_FF_REQ, KP_CS_ID, 128, KP_REF_NONE),
       INT(kp_cmd_retire_secret, "version", version, KP_FT_U32, KP_FF_REQ, 1, UINT32_MAX, 0));

SCHEMA(audit_only_schema, kp_cmd_audit_only, "audit_only",
       STR(kp_cmd_audit_only, "action", action, KP_FF_REQ, KP_CS_ID, 64, KP_REF_NONE),
       STR(kp_cmd_audit_only, "target", target, 0, KP_CS_TEXT, 256, KP_REF_NONE),
       STR(kp_cmd_audit_only, "result", result, KP_FF_REQ, KP_CS_TEXT, 512, KP_REF_NONE));

SCHEMA(rewrap_item_schema, kp_rewrap_item, "rewrap_item",
       STR(kp_rewrap_item, "key", key, KP_FF_REQ, KP_CS_ID, 128, KP_REF_NONE),
       INT(kp_rewrap_item, "key_version", key_version, KP_FT_U64, KP_FF_REQ, 1, UINT64_MAX, 0),
       INT(kp_rewrap_item, "version", version, KP_FT_U32, KP_FF_REQ, 1, UINT32_MAX, 0),
       F(kp_rewrap_item, "sealed", sealed, KP_FT_BYTES, .flags = KP_FF_REQ, .max = 4096));

SCHEMA(rewrap_schema, kp_cmd_rewrap, "rewrap",
       OBJV(kp_cmd_rewrap, "secrets", secrets, 0, rewrap_item_schema, 1u << 22),
       STR(kp_cmd_rewrap, "kek_id", kek_id, 0, KP_CS_ID, 64, KP_REF_NONE));

#define AMOUNT(st, nm, mem) INT(st, nm, mem, KP_FT_I64, 0, 0, KP_LEASE_AMOUNT_MAX, 0)
SCHEMA(lease_item_schema, kp_lease_item, "lease_item",
       STR(kp_lease_item, "policy", policy, KP_FF_REQ, KP_CS_ID, 128, KP_REF_NONE),
       STR(kp_lease_item, "budget", budget, KP_FF_REQ, KP_CS_ID, 64, KP_REF_NONE),
       WINDOW_START(kp_lease_item, "window_start_ms", window_start_ms, KP_FF_REQ),
       AMOUNT(kp_lease_item, "settled_nanousd", settled),
       F(kp_lease_item, "release", release, KP_FT_BOOL),
       AMOUNT(kp_lease_item, "want_nanousd", want),
       F(kp_lease_item, "spend_held", spend_held, KP_FT_BOOL));

SCHEMA(budget_lease_schema, kp_cmd_budget_lease, "budget_lease",
       INT(kp_cmd_budget_lease, "node_id", node_id, KP_FT_U64, KP_FF_REQ, 1, UINT64_MAX, 0),
       INT(kp_cmd_budget_lease, "seq", seq, KP_FT_U64, KP_FF_REQ, 1, UINT64_MAX, 0),
       OBJV(kp_cmd_budget_lease, "items", items, 0, lease_item_schema, KP_LEASE_ITEMS_MAX));

SCHEMA(budget_reset_schema, kp_cmd_budget_reset, "budget_reset",
       STR(kp_cmd_budget_reset, "id", id, KP_FF_REQ, KP_CS_ID, 128, KP_REF_NONE),
       STR(kp_cmd_budget_reset, "budget", budget, KP_FF_REQ, KP_CS_ID, 64, KP_REF_NONE));

SCHEMA(resolve_alert_schema, kp_cmd_resolve_alert, "resolve_alert",
       STR(kp_cmd_resolve_alert, "id", id, KP_FF_REQ, KP_CS_ID, 128, KP_REF_NONE),
       INT(kp_cmd_resolve_alert, "last_value", last_value, KP_FT_I64, 0, INT64_MIN, INT64_MAX, 0));

SCHEMA(alert_delivery_cmd_schema, kp_cmd_alert_delivery, "alert_delivery",
       STR(kp_cmd_alert_delivery, "id", id, KP_FF_REQ, KP_CS_ID, 128, KP_REF_NONE),
       TIME(kp_cmd_alert_delivery, "started_ms", started_ms, KP_FF_REQ),
       STR(kp_cmd_alert_delivery, "webhook", webhook, KP_FF_REQ, KP_CS_ID, 128, KP_REF_NONE),
       ENUM(kp_cmd_alert_delivery, "event", event, KP_FF_REQ, alert_events, 0),
       ENUM(kp_cmd_alert_delivery, "state", state, KP_FF_REQ, delivery_states, 0),
       INT(kp_cmd_alert_delivery, "attempts", attempts, KP_FT_U32, 0, 0, 1000, 0),
       STR(kp_cmd_alert_delivery, "error", error, 0, KP_CS_TEXT, 256, KP_REF_NONE));

SCHEMA(set_balance_schema, kp_cmd_set_balance, "set_key_balance",
       STR(kp_cmd_set_balance, "id", id, KP_FF_REQ, KP_CS_ID, 128, KP_REF_NONE),
       INT(kp_cmd_set_balance, "credit_nanousd", credit, KP_FT_I64, KP_FF_REQ, 0,
           KP_BALANCE_CREDIT_MAX, 0),
       TIME(kp_cmd_set_balance, "since_ms", since_ms, 0));

SCHEMA(add_topup_schema, kp_cmd_add_topup, "add_key_topup",
       STR(kp_cmd_add_topup, "id", id, KP_FF_REQ, KP_CS_ID, 128, KP_REF_NONE),
       INT(kp_cmd_add_topup, "amount_nanousd", amount, KP_FT_I64, KP_FF_REQ, 1,
           KP_BALANCE_CREDIT_MAX, 0),
       STR(kp_cmd_add_topup, "note", note, 0, KP_CS_TEXT, KP_BALANCE_NOTE_MAX, KP_REF_NONE));

static const struct {
    const struct kp_schema *body;
    int kind; /* put ops: the entity kind of the body */
} op_bodies[KP_OP_COUNT] = {
    [KP_OP_PUT_PROVIDER] = {&provider_schema, KP_KIND_PROVIDER},
    [KP_OP_DELETE_PROVIDER] = {&target_schema, -1},
    [KP_OP_PUT_KEY] = {&key_schema, KP_KIND_KEY},
    [KP_OP_DELETE_KEY] = {&target_schema, -1},
    [KP_OP_ADD_KEY_SECRET] = {&add_secret_schema, -1},
    [KP_OP_RETIRE_KEY_SECRET] = {&retire_secret_schema, -1},
    [KP_OP_SET_KEY_STATUS] = {&key_status_schema, -1},
    [KP_OP_PUT_POOL] = {&pool_schema, KP_KIND_POOL},
    [KP_OP_DELETE_POOL] = {&target_schema, -1},
    [KP_OP_PUT_TENANT] = {&tenant_schema, KP_KIND_TENANT},
    [KP_OP_DELETE_TENANT] = {&target_schema, -1},
    [KP_OP_PUT_PROJECT] = {&project_schema, KP_KIND_PROJECT},
    [KP_OP_DELETE_PROJECT] = {&target_schema, -1},
    [KP_OP_PUT_TOKEN] = {&token_schema, KP_KIND_TOKEN},
    [KP_OP_DISABLE_TOKEN] = {&target_schema, -1},
    [KP_OP_DELETE_TOKEN] = {&target_schema, -1},
    [KP_OP_PUT_POLICY] = {&policy_schema, KP_KIND_POLICY},
    [KP_OP_DELETE_POLICY] = {&target_schema, -1},
    [KP_OP_PUT_PRICE] = {&price_schema, KP_KIND_PRICE},
    [KP_OP_DELETE_PRICE] = {&target_schema, -1},
    [KP_OP_PUT_MEMBER] = {&member_schema, KP_KIND_MEMBER},
    [KP_OP_REMOVE_MEMBER] = {&target_schema, -1},
    [KP_OP_PUT_ALERT_RULE] = {&alert_rule_schema, KP_KIND_ALERT_RULE},
    [KP_OP_DELETE_ALERT_RULE] = {&target_schema, -1},
    [KP_OP_PUT_WEBHOOK] = {&webhook_schema, KP_KIND_WEBHOOK},
    [KP_OP_DELETE_WEBHOOK] = {&target_schema, -1},
    [KP_OP_SET_KEY_HEALTH] = {&health_schema, KP_KIND_KEY_HEALTH},
    [KP_OP_INIT_CLUSTER] = {&kp_store__cluster_schema, -1},
    [KP_OP_AUDIT_ONLY] = {&audit_only_schema, -1},
    [KP_OP_REWRAP_SECRETS] = {&rewrap_schema, -1},
    [KP_OP_BUDGET_LEASE] = {&budget_lease_schema, -1},
    [KP_OP_BUDGET_RESET] = {&budget_reset_schema, -1},
    [KP_OP_PUT_FREEZE] = {&freeze_schema, KP_KIND_FREEZE},
    [KP_OP_DELETE_FREEZE] = {&target_schema, -1},
    [KP_OP_PUT_ALERT] = {&alert_schema, KP_KIND_ALERT},
    [KP_OP_RESOLVE_ALERT] = {&resolve_alert_schema, -1},
    [KP_OP_ACK_ALERT] = {&target_schema, -1},
    [KP_OP_ALERT_DELIVERY] = {&alert_delivery_cmd_schema, -1},
    [KP_OP_SET_KEY_BALANCE] = {&set_balance_schema, -1},
    [KP_OP_ADD_KEY_TOPUP] = {&add_topup_schema, -1},
    [KP_OP_DELETE_KEY_BALANCE] = {&target_schema, -1},
};

const struct kp_schema *kp_store__op_body(enum kp_op op)
{
    return op > KP_OP_NONE && op < KP_OP_COUNT ? op_bodies[op].body : NULL;
}

int kp_store__op_kind(enum kp_op op)
{
    /* set_key_health's body is a key_health entity, but it is not a put:
     * the handler builds the stored one. */
    if (op <= KP_OP_NONE || op >= KP_OP_COUNT || op == KP_OP_SET_KEY_HEALTH)
        return -1;
    return op_bodies[op].kind;
}

/* --- entities ---------------------------------------------------------------------------- */

static const struct kp_schema *entity_schema(int kind)
{
    return kind == KP_KIND_COUNT ? &kp_store__cluster_schema : kp_store__kind_schema[kind];
}

/* @kind KP_KIND_COUNT stands for the cluster settings. */
struct kp_entity *kp_store__entity_alloc(int kind)
{
    struct kp_entity *e = kp_calloc(1, entity_schema(kind)->size);
    if (e == NULL)
        return NULL;
    atomic_init(&e->refs, 1);
    e->kind = (uint8_t)kind;
    return e;
}

struct kp_entity *kp_store__entity_ref(struct kp_entity *e)
{
    atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
    return e;
}

void kp_store__entity_unref(struct kp_entity *e)
{
    if (e == NULL || atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) != 1)
        return;
    kp_store__obj_free(entity_schema(e->kind), e);
    kp_free(e);
}

struct kp_entity *kp_store__entity_clone(const struct kp_entity *e)
{
    struct kp_entity *c = kp_store__entity_alloc(e->kind);
    if (c == NULL)
        return NULL;
    if (kp_store__obj_clone(entity_schema(e->kind), e, c) != KP_OK) {
        kp_free(c);
        return NULL;
    }
    return c;
}

const struct kp_key_secret *kp_key_primary(const struct kp_key *key)
{
    if (key->status != KP_KEY_ACTIVE)
        return NULL;
    for (uint32_t i = 0; i < key->nsecrets; i++) {
        if (key->secrets[i].state == KP_SECRET_PRIMARY && key->secrets[i].sealed.n > 0)
            return &key->secrets[i];
    }
    return NULL;
}

/* --- tables ------------------------------------------------------------------------------- */

static uint64_t hash_id(const char *s)
{
    uint64_t h = 14695981039346656037ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h ^ (h >> 29);
}

struct kp_table *kp_store__table_new(void)
{
    struct kp_table *t = kp_calloc(1, sizeof(*t));
    if (t != NULL)
        atomic_init(&t->refs, 1);
    return t;
}

struct kp_table *kp_store__table_ref(struct kp_table *t)
{
    atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
    return t;
}

void kp_store__table_unref(struct kp_table *t)
{
    if (t == NULL || atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (uint32_t i = 0; i < t->cap; i++)
        kp_store__entity_unref(t->slots[i]);
    kp_free(t->slots);
    kp_free(t);
}

static uint32_t find_slot(const struct kp_table *t, const char *id)
{
    uint32_t mask = t->cap - 1, i = (uint32_t)hash_id(id) & mask;
    while (t->slots[i] != NULL && strcmp(t->slots[i]->id, id) != 0)
        i = (i + 1) & mask;
    return i;
}

struct kp_entity *kp_store__table_get(const struct kp_table *t, const char *id)
{
    if (t->count == 0 || id == NULL)
        return NULL;
    return t->slots[find_slot(t, id)];
}

/* Move (or, when @share, reference) every entity of @t into @slots. */
static void rehash(const struct kp_table *t, struct kp_entity **slots, uint32_t cap, bool share)
{
    uint32_t mask = cap - 1;
    for (uint32_t i = 0; i < t->cap; i++) {
        struct kp_entity *e = t->slots[i];
        if (e == NULL)
            continue;
        uint32_t j = (uint32_t)hash_id(e->id) & mask;
        while (slots[j] != NULL)
            j = (j + 1) & mask;
        slots[j] = share ? kp_store__entity_ref(e) : e;
    }
}

int kp_store__table_prepare(struct kp_table **tp, uint32_t inserts)
{
    struct kp_table *t = *tp;
    uint64_t need = (uint64_t)t->count + inserts;
    uint64_t cap = t->cap ? t->cap : 16;
    while (need * 4 > cap * 3)
        cap *= 2;
    if (cap > (1u << 31))
        return KP_ENOMEM;
    /* Acquire pairs with the release in unref: a reader that dropped its
     * reference is done reading before we write. */
    bool shared = atomic_load_explicit(&t->refs, memory_order_acquire) != 1;
    if (!shared && cap == t->cap)
        return KP_OK;
    struct kp_entity **slots = kp_calloc((size_t)cap, sizeof(*slots));
    if (slots == NULL)
        return KP_ENOMEM;
    if (!shared) {
        rehash(t, slots, (uint32_t)cap, false);
        kp_free(t->slots);
        t->slots = slots;
        t->cap = (uint32_t)cap;
        return KP_OK;
    }
    struct kp_table *c = kp_store__table_new();
    if (c == NULL) {
        kp_free(slots);
        return KP_ENOMEM;
    }
    if (cap == t->cap) { /* same layout: copy the slots, reference the entities */
        memcpy(slots, t->slots, (size_t)cap * sizeof(*slots));
        for (uint32_t i = 0; i < t->cap; i++) {
            if (slots[i] != NULL)
                kp_store__entity_ref(slots[i]);
        }
    } else {
        rehash(t, slots, (uint32_t)cap, true);
    }
    c->slots = slots;
    c->cap = (uint32_t)cap;
    c->count = t->count;
    kp_store__table_unref(t);
    *tp = c;
    return KP_OK;
}

void kp_store__table_put(struct kp_table *t, struct kp_entity *e)
{
    uint32_t i = find_slot(t, e->id);
    if (t->slots[i] != NULL)
        kp_store__entity_unref(t->slots[i]);
    else
        t->count++;
    t->slots[i] = e;
}

void kp_store__table_del(struct kp_table *t, const char *id)
{
    if (t->count == 0)
        return;
    uint32_t mask = t->cap - 1, i = find_slot(t, id), j = i;
    if (t->slots[i] == NULL)
        return;
    kp_store__entity_unref(t->slots[i]);
    t->slots[i] = NULL;
    t->count--;
    /* Backward shift: pull later entries of the probe run into the hole
     * unless their home slot lies cyclically in (i, j]. */
    for (;;) {
        j = (j + 1) & mask;
        if (t->slots[j] == NULL)
            return;
        uint32_t k = (uint32_t)hash_id(t->slots[j]->id) & mask;
        bool stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
        if (stays)
            continue;
        t->slots[i] = t->slots[j];
        t->slots[j] = NULL;
        i = j;
    }
}

static int cmp_id(const void *a, const void *b)
{
    return strcmp((*(struct kp_entity *const *)a)->id, (*(struct kp_entity *const *)b)->id);
}

int kp_store__table_sorted(const struct kp_table *t, struct kp_entity ***out, size_t *n)
{
    *out = NULL;
    *n = 0;
    if (t->count == 0)
        return KP_OK;
    struct kp_entity **v = kp_malloc(t->count * sizeof(*v));
    if (v == NULL)
        return KP_ENOMEM;
    size_t k = 0;
    for (uint32_t i = 0; i < t->cap; i++) {
        if (t->slots[i] != NULL)
            v[k++] = t->slots[i];
    }
    qsort(v, k, sizeof(*v), cmp_id);
    *out = v;
    *n = k;
    return KP_OK;
}

/* --- state --------------------------------------------------------------------------------- */

int kp_store__state_init(struct kp_state *st)
{
    memset(st, 0, sizeof(*st));
    for (int k = 0; k < KP_KIND_COUNT; k++) {
        if ((st->tables[k] = kp_store__table_new()) == NULL)
            goto err;
    }
    if (kp_store__audit_init(&st->audit) != KP_OK)
        goto err;
    return KP_OK;

err:
    kp_store__state_free(st);
    return KP_ENOMEM;
}

void kp_store__state_free(struct kp_state *st)
{
    for (int k = 0; k < KP_KIND_COUNT; k++)
        kp_store__table_unref(st->tables[k]);
    if (st->cluster != NULL)
        kp_store__entity_unref(&st->cluster->e);
    kp_store__audit_free(&st->audit);
    memset(st, 0, sizeof(*st));
}

/* --- rules ------------------------------------------------------------------------------------ */

static int refuse(char *msg, size_t len, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int refuse(char *msg, size_t len, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, len, fmt, ap);
    va_end(ap);
    kp_store__utf8_trim(msg);
    return code;
}

/* A walk over every id field of an entity that refers to another one. */
struct ref_walk {
    const struct kp_state *st;
    const struct kp_entity *self;
    int find_kind;
    const char *find_id;
    char path[160];
    char *msg;
    size_t len;
};

typedef int (*ref_fn)(struct ref_walk *w, int kind, const char *id);

static int scope_kind_target(uint8_t scope)
{
    switch (scope) {
    case KP_SCOPE_TENANT:
        return KP_KIND_TENANT;
    case KP_SCOPE_PROJECT:
        return KP_KIND_PROJECT;
    case KP_SCOPE_KEY:
        return KP_KIND_KEY;
    case KP_SCOPE_POOL:
        return KP_KIND_POOL;
    case KP_SCOPE_TOKEN:
        return KP_KIND_TOKEN;
    default:
        return -1;
    }
}

/* The kind a freeze's target names: none for tenants and features, which
 * are free names. */
static int freeze_kind_target(uint8_t scope)
{
    switch (scope) {
    case KP_FREEZE_PROJECT:
        return KP_KIND_PROJECT;
    case KP_FREEZE_POOL:
        return KP_KIND_POOL;
    case KP_FREEZE_KEY:
        return KP_KIND_KEY;
    case KP_FREEZE_TOKEN:
        return KP_KIND_TOKEN;
    default:
        return -1;
    }
}

/* The kind field @f of @obj refers to, or -1. */
static int ref_kind(const struct kp_field *f, const void *obj)
{
    if (f->ref == KP_REF_SCOPE)
        return scope_kind_target(((const struct kp_policy *)obj)->scope_kind);
    if (f->ref == KP_REF_FREEZE)
        return freeze_kind_target(((const struct kp_freeze *)obj)->scope);
    return f->ref - 1;
}

static void path_set(struct ref_walk *w, size_t base, const char *name, long idx)
{
    size_t room = sizeof(w->path) - base;
    const char *dot = base ? "." : "";
    if (idx < 0)
        snprintf(w->path + base, room, "%s%s", dot, name);
    else
        snprintf(w->path + base, room, "%s%s[%ld]", dot, name, idx);
}

static int walk_objv(struct ref_walk *w, const struct kp_field *f, const void *obj, ref_fn fn);

static int walk_refs(struct ref_walk *w, const struct kp_schema *s, const void *obj, ref_fn fn)
{
    size_t base = strlen(w->path);
    for (uint32_t i = 0; i < s->nfields; i++) {
        const struct kp_field *f = &s->fields[i];
        const char *p = (const char *)obj + f->off;
        int rc = 0;
        int kind = ref_kind(f, obj);
        if (f->type == KP_FT_OBJV) {
            rc = walk_objv(w, f, obj, fn);
        } else if (kind < 0) {
            continue;
        } else if (f->type == KP_FT_STR && *(char *const *)p != NULL &&
                   !((f->flags & KP_FF_STAR) && strcmp(*(char *const *)p, "*") == 0)) {
            path_set(w, base, f->name, -1);
            rc = fn(w, kind, *(char *const *)p);
        } else if (f->type == KP_FT_STRV) {
            const struct kp_strv *v = (const struct kp_strv *)p;
            for (uint32_t k = 0; k < v->n && rc == 0; k++) {
                path_set(w, base, f->name, k);
                rc = fn(w, kind, v->v[k]);
            }
        }
        if (rc != 0)
            return rc; /* the path names where */
    }
    w->path[base] = '\0';
    return 0;
}

static int walk_objv(struct ref_walk *w, const struct kp_field *f, const void *obj, ref_fn fn)
{
    size_t base = strlen(w->path);
    const char *arr;
    uint32_t n = 0;
    memcpy(&arr, (const char *)obj + f->off, sizeof(arr));
    memcpy(&n, (const char *)obj + f->off_n, sizeof(n));
    for (uint32_t k = 0; k < n; k++) {
        path_set(w, base, f->name, k);
        int rc = walk_refs(w, f->sub, arr + (size_t)k * f->sub->size, fn);
        if (rc != 0)
            return rc;
    }
    w->path[base] = '\0';
    return 0;
}

static int check_ref(struct ref_walk *w, int kind, const char *id)
{
    if (kind == w->self->kind && strcmp(id, w->self->id) == 0)
        return 0;
    if (kp_store__get(w->st, kind, id) != NULL)
        return 0;
    return refuse(w->msg, w->len, KP_EINVAL, "%s: no %s '%s'", w->path, kp_kind_name(kind), id);
}

static int find_ref(struct ref_walk *w, int kind, const char *id)
{
    return kind == w->find_kind && strcmp(id, w->find_id) == 0;
}

static bool schema_may_ref(const struct kp_schema *s, int kind)
{
    for (uint32_t i = 0; i < s->nfields; i++) {
        const struct kp_field *f = &s->fields[i];
        if (f->type == KP_FT_OBJV && schema_may_ref(f->sub, kind))
            return true;
        if (f->ref == KP_REF(kind))
            return true;
        for (uint8_t sk = 0; f->ref == KP_REF_SCOPE && scope_kinds[sk] != NULL; sk++) {
            if (scope_kind_target(sk) == kind)
                return true;
        }
        for (uint8_t sk = 0; f->ref == KP_REF_FREEZE && freeze_scopes[sk] != NULL; sk++) {
            if (freeze_kind_target(sk) == kind)
                return true;
        }
    }
    return false;
}

int kp_store__referrers(const struct kp_state *st, int kind, const char *id, char *msg, size_t len)
{
    struct ref_walk w = {.st = st, .find_kind = kind, .find_id = id, .msg = msg, .len = len};
    for (int k = 0; k < KP_KIND_COUNT; k++) {
        const struct kp_schema *s = kp_store__kind_schema[k];
        const struct kp_table *t = st->tables[k];
        const struct kp_entity *best = NULL;
        char where[sizeof(w.path)] = "";
        if (!schema_may_ref(s, kind))
            continue;
        for (uint32_t i = 0; i < t->cap; i++) {
            const struct kp_entity *e = t->slots[i];
            if (e == NULL || (k == kind && strcmp(e->id, id) == 0))
                continue;
            w.path[0] = '\0';
            if (walk_refs(&w, s, e, find_ref) && (best == NULL || strcmp(e->id, best->id) < 0)) {
                best = e;
                memcpy(where, w.path, sizeof(where));
            }
        }
        if (best != NULL)
            return refuse(msg, len, KP_ECONFLICT, "%s '%s' is used by %s '%s' (%s)",
                          kp_kind_name(kind), id, kp_kind_name(k), best->id, where);
    }
    return KP_OK;
}

static int rule_provider(const struct kp_provider *p, char *msg, size_t len)
{
    const char *u = p->base_url;
    size_t scheme = strncmp(u, "https://", 8) == 0 ? 8 : strncmp(u, "http://", 7) == 0 ? 7 : 0;
    if (scheme == 0)
        return refuse(msg, len, KP_EINVAL, "base_url: must start with https://");
    if (scheme == 7 && !p->allow_insecure)
        return refuse(msg, len, KP_EINVAL,
                      "base_url: http:// needs allow_insecure (meant for loopback mocks)");
    if (u[scheme] == '\0' || u[scheme] == '/')
        return refuse(msg, len, KP_EINVAL, "base_url: has no host");
    if (p->kind == KP_PROVIDER_AZURE_OPENAI && p->api_version == NULL)
        return refuse(msg, len, KP_EINVAL, "api_version: required for azure-openai");
    if ((p->balance_path == NULL) != (p->balance_pointer == NULL))
        return refuse(msg, len, KP_EINVAL,
                      "balance_pointer: balance_path and balance_pointer go together");
    if (p->balance_used_pointer != NULL && p->balance_path == NULL)
        return refuse(msg, len, KP_EINVAL, "balance_used_pointer: needs balance_path");
    if (p->balance_path != NULL && (p->balance_path[0] != '/' || strstr(p->balance_path, "..")))
        return refuse(msg, len, KP_EINVAL,
                      "balance_path: a path under base_url, starting with / (\"/user/balance\")");
    if ((p->balance_pointer != NULL && p->balance_pointer[0] != '/') ||
        (p->balance_used_pointer != NULL && p->balance_used_pointer[0] != '/'))
        return refuse(msg, len, KP_EINVAL,
                      "balance_pointer: a JSON pointer (RFC 6901) such as "
                      "\"/balance_infos/0/total_balance\"");
    return KP_OK;
}

/* Secrets are built by the state machine, so these only fail on restore. */
static int rule_key(const struct kp_key *k, char *msg, size_t len)
{
    int primary = 0, previous = 0;
    for (uint32_t i = 0; i < k->nsecrets; i++) {
        const struct kp_key_secret *s = &k->secrets[i];
        bool retired = s->state == KP_SECRET_RETIRED;
        if (i > 0 && s->version <= k->secrets[i - 1].version)
            return refuse(msg, len, KP_EINVAL, "secrets[%u].version: not ascending", i);
        if (retired != (s->sealed.n == 0))
            return refuse(msg, len, KP_EINVAL, "secrets[%u].sealed: %s", i,
                          retired ? "kept after retirement" : "missing");
        if (!retired && k->status == KP_KEY_REVOKED)
            return refuse(msg, len, KP_EINVAL, "secrets[%u]: live secret of a revoked key", i);
        primary += s->state == KP_SECRET_PRIMARY;
        previous += s->state == KP_SECRET_PREVIOUS;
    }
    if (primary > 1 || previous > 1 || (previous && !primary))
        return refuse(msg, len, KP_EINVAL, "secrets: bad primary/previous states");
    return KP_OK;
}

static int rule_pool(const struct kp_state *st, const struct kp_pool *p, char *msg, size_t len)
{
    for (uint32_t i = 0; i < p->nmembers; i++) {
        for (uint32_t j = 0; j < i; j++) {
            if (strcmp(p->members[i].key, p->members[j].key) == 0)
                return refuse(msg, len, KP_EINVAL, "members[%u].key: duplicate of members[%u]", i,
                              j);
        }
    }
    for (uint32_t i = 0; i < p->ndowngrades; i++) {
        const struct kp_downgrade *d = &p->downgrades[i];
        if (strcmp(d->from, d->to) == 0)
            return refuse(msg, len, KP_EINVAL, "downgrades[%u].to: same as from", i);
        for (uint32_t j = 0; j < i; j++) {
            if (strcmp(d->from, p->downgrades[j].from) == 0)
                return refuse(msg, len, KP_EINVAL,
                              "downgrades[%u].from: duplicate of downgrades[%u]", i, j);
        }
    }
    /* Follow the fallback chain; it may not come back here. The step limit
     * only guards against a cycle elsewhere, which the rule itself forbids. */
    size_t steps = 0, limit = st->tables[KP_KIND_POOL]->count + 1;
    for (const char *f = p->fallback; f != NULL && steps++ <= limit;) {
        if (strcmp(f, p->e.id) == 0)
            return refuse(msg, len, KP_ECONFLICT,
                          "fallback: pool '%s' falls back to itself through '%s'", p->e.id,
                          p->fallback);
        const struct kp_pool *q = (const struct kp_pool *)kp_store__get(st, KP_KIND_POOL, f);
        f = q != NULL ? q->fallback : NULL;
    }
    return KP_OK;
}

static int rule_token(const struct kp_state *st, const struct kp_token *t, char *msg, size_t len)
{
    if (strcmp(t->tenant, "*") == 0)
        return KP_OK;
    for (uint32_t i = 0; i < t->projects.n; i++) {
        const struct kp_project *p =
            (const struct kp_project *)kp_store__get(st, KP_KIND_PROJECT, t->projects.v[i]);
        if (p != NULL && strcmp(p->tenant, t->tenant) != 0)
            return refuse(msg, len, KP_EINVAL,
                          "projects[%u]: project '%s' belongs to tenant '%s', not '%s'", i, p->e.id,
                          p->tenant, t->tenant);
    }
    return KP_OK;
}

static int rule_policy(const struct kp_policy *p, char *msg, size_t len)
{
    bool global = p->scope_kind == KP_SCOPE_GLOBAL;
    if (global && p->scope_target != NULL)
        return refuse(msg, len, KP_EINVAL, "scope_target: must be absent for a global policy");
    if (!global && p->scope_target == NULL)
        return refuse(msg, len, KP_EINVAL, "scope_target: required for a %s policy",
                      kp_scope_kind_name(p->scope_kind));
    for (uint32_t i = 0; i < p->nbudgets; i++) {
        for (uint32_t j = 0; j < i; j++) {
            if (strcmp(p->budgets[i].name, p->budgets[j].name) == 0)
                return refuse(msg, len, KP_EINVAL, "budgets[%u].name: duplicate of budgets[%u]", i,
                              j);
        }
    }
    return KP_OK;
}

static int rule_member(const struct kp_state *st, const struct kp_member *m, char *msg, size_t len)
{
    const struct kp_table *t = st->tables[KP_KIND_MEMBER];
    const struct kp_member *clash = NULL;
    for (uint32_t i = 0; i < t->cap; i++) {
        const struct kp_member *o = (const struct kp_member *)t->slots[i];
        if (o == NULL || o->node_id != m->node_id || strcmp(o->e.id, m->e.id) == 0)
            continue;
        if (clash == NULL || strcmp(o->e.id, clash->e.id) < 0)
            clash = o;
    }
    if (clash != NULL)
        return refuse(msg, len, KP_ECONFLICT, "node_id: %llu is already member '%s'",
                      (unsigned long long)m->node_id, clash->e.id);
    /* A member's name is another node's: replacing it would hide that node
     * (its control address is how writes reach it). */
    const struct kp_member *same =
        (const struct kp_member *)kp_store__get(st, KP_KIND_MEMBER, m->e.id);
    if (same != NULL && same->node_id != m->node_id)
        return refuse(msg, len, KP_ECONFLICT,
                      "id: member '%s' is node %llu; give node %llu another name (node_name)",
                      m->e.id, (unsigned long long)same->node_id, (unsigned long long)m->node_id);
    return KP_OK;
}

/* A freeze's id is its scope and target: one freeze per target, found by
 * id. */
static int rule_freeze(const struct kp_freeze *f, char *msg, size_t len)
{
    const char *scope = kp_freeze_scope_name(f->scope);
    size_t n = strlen(scope);
    if (strncmp(f->e.id, scope, n) != 0 || f->e.id[n] != ':' || strcmp(f->e.id + n + 1, f->target))
        return refuse(msg, len, KP_EINVAL, "id: must be '%s:%s' (scope:target)", scope, f->target);
    return KP_OK;
}

/* The state apply builds (alert.c), checked again on restore: an episode
 * that resolves after it starts, an ack with its time, at most one record
 * per (webhook, event), and none for a resolve that has not happened. */
static int rule_alert(const struct kp_alert *a, char *msg, size_t len)
{
    if (a->resolved_ms != 0 && a->resolved_ms < a->started_ms)
        return refuse(msg, len, KP_EINVAL, "resolved_ms: before started_ms");
    if ((a->acked_by == NULL) != (a->acked_ms == 0))
        return refuse(msg, len, KP_EINVAL, "acked_by: set without acked_ms, or the reverse");
    for (uint32_t i = 0; i < a->ndeliveries; i++) {
        const struct kp_alert_delivery *d = &a->deliveries[i];
        if (d->event == KP_ALERT_EVENT_RESOLVED && a->resolved_ms == 0)
            return refuse(msg, len, KP_EINVAL, "deliveries[%u]: a resolve of an open alert", i);
        for (uint32_t j = 0; j < i; j++) {
            if (d->event == a->deliveries[j].event &&
                strcmp(d->webhook, a->deliveries[j].webhook) == 0)
                return refuse(msg, len, KP_EINVAL, "deliveries[%u]: duplicate of deliveries[%u]", i,
                              j);
        }
    }
    return KP_OK;
}

static int kind_rules(const struct kp_state *st, const struct kp_entity *e, char *msg, size_t len)
{
    switch (e->kind) {
    case KP_KIND_PROVIDER:
        return rule_provider((const struct kp_provider *)e, msg, len);
    case KP_KIND_KEY:
        return rule_key((const struct kp_key *)e, msg, len);
    case KP_KIND_POOL:
        return rule_pool(st, (const struct kp_pool *)e, msg, len);
    case KP_KIND_TOKEN:
        return rule_token(st, (const struct kp_token *)e, msg, len);
    case KP_KIND_POLICY:
        return rule_policy((const struct kp_policy *)e, msg, len);
    case KP_KIND_MEMBER:
        return rule_member(st, (const struct kp_member *)e, msg, len);
    case KP_KIND_KEY_HEALTH:
    case KP_KIND_KEY_BALANCE:
        if (kp_store__get(st, KP_KIND_KEY, e->id) == NULL)
            return refuse(msg, len, KP_EINVAL, "id: no key '%s'", e->id);
        return KP_OK;
    case KP_KIND_BUDGET_STATE: {
        const struct kp_entity *p = kp_store__get(st, KP_KIND_POLICY, e->id);
        if (p == NULL)
            return refuse(msg, len, KP_EINVAL, "id: no policy '%s'", e->id);
        return kp_store__budget_check((const struct kp_policy *)p,
                                      (const struct kp_budget_state *)e, msg, len);
    }
    case KP_KIND_LEASE_NODE: {
        char id[24];
        snprintf(id, sizeof(id), "%llu",
                 (unsigned long long)((const struct kp_lease_node *)e)->node_id);
        if (strcmp(id, e->id) != 0)
            return refuse(msg, len, KP_EINVAL, "id: must be the node_id in decimal (%s)", id);
        return KP_OK;
    }
    case KP_KIND_FREEZE:
        return rule_freeze((const struct kp_freeze *)e, msg, len);
    case KP_KIND_ALERT:
        return rule_alert((const struct kp_alert *)e, msg, len);
    default:
        return KP_OK;
    }
}

int kp_store__validate(const struct kp_state *st, const struct kp_entity *e, char *msg, size_t len)
{
    struct ref_walk w = {.st = st, .self = e, .msg = msg, .len = len};
    int rc = walk_refs(&w, kp_store__kind_schema[e->kind], e, check_ref);
    if (rc != 0)
        return rc;
    return kind_rules(st, e, msg, len);
}

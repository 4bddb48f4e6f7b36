/* raftstore: the replicated registry. This header is the module's API for
 * three users:
 *
 *   the control plane builds commands (struct kp_command) and encodes them
 *   (kp_command_encode) to propose through Raft, then answers the client
 *   from the apply result (struct kp_fsm_result);
 *
 *   the raft glue feeds committed entries to the state machine
 *   (kp_fsm_apply), takes and restores snapshots (kp_fsm_snapshot,
 *   kp_fsm_restore) and, after each batch of applies, builds a view
 *   (kp_fsm_view_build) and publishes it (kp_view_publish);
 *
 *   router workers acquire the published view (kp_view_acquire), look
 *   entities up in it without locks, and release it (kp_view_release).
 *
 * Everything here is pure: no sockets, files, clocks or random numbers.
 * Time, ids and random values come inside the commands, so every replica
 * that applies the same entries holds byte-identical state. docs/registry.md
 * describes the entities, the commands, the snapshot format and the audit
 * chain in full.
 *
 * Entities are immutable once they are in the registry: an update makes a
 * new one and drops the old. The structs below are what the router and the
 * control plane read; strings are NUL-terminated UTF-8 and NULL when an
 * optional field is absent (an empty string is never stored). */
#ifndef KP_RAFTSTORE_H
#define KP_RAFTSTORE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <uv.h>

#include "core/core.h"

/* Money: billionths of a US dollar (the same typedef as meter/meter.h). */
typedef int64_t kp_nanousd;

/* --- entities ------------------------------------------------------------ */

enum kp_kind {
    KP_KIND_PROVIDER,
    KP_KIND_KEY,
    KP_KIND_POOL,
    KP_KIND_TENANT,
    KP_KIND_PROJECT,
    KP_KIND_TOKEN,
    KP_KIND_POLICY,
    KP_KIND_PRICE,
    KP_KIND_MEMBER,
    KP_KIND_ALERT_RULE,
    KP_KIND_WEBHOOK,
    KP_KIND_KEY_HEALTH,
    KP_KIND_BUDGET_STATE, /* the lease state of a policy's budgets */
    KP_KIND_LEASE_NODE,   /* a node's lease bookkeeping (last seq applied) */
    KP_KIND_FREEZE,       /* an operator's stop on a tenant, project, feature, pool, ... */
    KP_KIND_ALERT,        /* an alert raised by the leader's rules (docs/alerts.md) */
    KP_KIND_KEY_BALANCE,  /* a key's prepaid credit and top-ups (docs/balances.md) */
    KP_KIND_COUNT
};

/* "provider", "key", ... */
const char *kp_kind_name(enum kp_kind kind);

/* What every entity starts with. @refs is managed by the store: holders of
 * a view never touch it. */
struct kp_entity {
    atomic_uint refs;
    uint8_t kind;     /* enum kp_kind */
    char *id;         /* [A-Za-z0-9._:-]{1,128} */
    uint64_t version; /* 1 on create, +1 per change */
    int64_t created_ms;
    int64_t updated_ms;
};

struct kp_bytes {
    uint8_t *p;
    uint32_t n;
};

struct kp_strv {
    char **v;
    uint32_t n;
};

struct kp_strpair {
    char *key;
    char *value;
};

/* Sorted by key, keys unique. */
struct kp_strmap {
    struct kp_strpair *v;
    uint32_t n;
};

enum kp_provider_kind {
    KP_PROVIDER_OPENAI,
    KP_PROVIDER_AZURE_OPENAI,
    KP_PROVIDER_ANTHROPIC,
    KP_PROVIDER_GEMINI,
    KP_PROVIDER_OPENAI_COMPATIBLE,
};

#define KP_PROVIDER_RETRIES_MAX 10 /* max_retries */

struct kp_provider {
    struct kp_entity e;
    uint8_t kind;             /* enum kp_provider_kind */
    char *base_url;           /* https://...; http://... only with allow_insecure */
    char *api_version;        /* required for azure-openai */
    struct kp_strmap headers; /* extra headers sent upstream */
    bool allow_insecure;
    /* Upstream timeouts of this provider's calls, ms; 0: the gateway's
     * default (connect 5 s, first byte 60 s, gap between body bytes 60 s,
     * total 600 s). */
    uint32_t connect_timeout_ms, first_byte_timeout_ms, idle_timeout_ms, total_timeout_ms;
    /* Retries of one key after a server error, a failed connection or a
     * timeout (docs/router.md, "Retries"; snapshot format 10): at most
     * max_retries (default 1), after a random wait of up to
     * retry_backoff_ms << n (default 100), while the call is younger than
     * retry_window_ms (default 3000). */
    uint32_t max_retries, retry_backoff_ms, retry_window_ms;
    /* A balance or credits endpoint the canary reads (docs/balances.md):
     * GET base_url + balance_path with the key's auth; the remaining
     * balance in USD is the number (or numeric string) at the JSON pointer
     * balance_pointer, less the one at balance_used_pointer when set.
     * NULL: none. */
    char *balance_path;
    char *balance_pointer;
    char *balance_used_pointer;
};

enum kp_key_status { KP_KEY_ACTIVE, KP_KEY_DISABLED, KP_KEY_REVOKED };
enum kp_secret_state { KP_SECRET_PRIMARY, KP_SECRET_PREVIOUS, KP_SECRET_RETIRED };

/* One version of a key's secret. @sealed is the ciphertext produced by the
 * core sealing code (AES-256-GCM under a data key wrapped by the KEK); the
 * registry treats it as opaque bytes and erases it (n = 0) when the version
 * is retired or the key revoked. */
struct kp_key_secret {
    uint32_t version;
    struct kp_bytes sealed;
    char *fingerprint;
    char *last4;
    uint8_t state;           /* enum kp_secret_state */
    int64_t retire_after_ms; /* a previous version is usable until then */
};

struct kp_key {
    struct kp_entity e;
    char *provider; /* provider id */
    char *name;
    char *owner;
    struct kp_strv tags;
    uint8_t status;        /* enum kp_key_status; set by set_key_status */
    struct kp_strv models; /* allowed models; empty means any */
    uint64_t rpm;          /* 0 means no limit */
    uint64_t tpm;
    struct kp_key_secret *secrets; /* ascending version; set by add/retire */
    uint32_t nsecrets;
};

enum kp_pool_strategy {
    KP_POOL_PRIORITY,
    KP_POOL_WEIGHTED,
    KP_POOL_LEAST_INFLIGHT,
    KP_POOL_LOWEST_LATENCY,
};

struct kp_pool_member {
    char *key;         /* key id */
    uint32_t weight;   /* 1..1000 */
    uint32_t priority; /* 0..1000, lower first */
};

struct kp_downgrade {
    char *from; /* model */
    char *to;
};

/* A pool's id is its name (what apps and policies refer to). */
struct kp_pool {
    struct kp_entity e;
    uint8_t strategy; /* enum kp_pool_strategy */
    struct kp_pool_member *members;
    uint32_t nmembers;
    char *fallback; /* pool id, or NULL */
    struct kp_downgrade *downgrades;
    uint32_t ndowngrades;
};

/* A tenant's id is its name (the X-Tenant header). */
struct kp_tenant {
    struct kp_entity e;
    char *display_name;
    /* Prompts and completions of this tenant's calls go on their server
     * spans (docs/observability.md, "Content capture"). Off by default. */
    bool capture_content;
};

/* A project's id is its name (the X-Project header), unique in the
 * cluster; it belongs to one tenant. */
struct kp_project {
    struct kp_entity e;
    char *tenant;
    char *display_name;
};

/* An internal API token (docs/tokens.md; its id is "tk_" and the token's
 * id). @hash is the HMAC of the token secret under the cluster pepper
 * (computed by the control plane; the registry only stores it). Scope, as
 * struct kp_token_scope reads it: tenant is a tenant id or "*" for every
 * tenant; empty lists mean "not restricted"; projects belong to the
 * tenant; features are names, not entities (snapshot format 10). */
struct kp_token {
    struct kp_entity e;
    char *name;
    uint8_t hash[32];
    char *role;
    char *tenant; /* tenant id or "*" */
    struct kp_strv projects;
    struct kp_strv features;
    struct kp_strv pools;
    struct kp_strv models;
    int64_t expires_at_ms; /* 0 means never */
    bool disabled;
};

enum kp_scope_kind {
    KP_SCOPE_GLOBAL,
    KP_SCOPE_TENANT,
    KP_SCOPE_PROJECT,
    KP_SCOPE_KEY,
    KP_SCOPE_POOL,
    KP_SCOPE_TOKEN,
    KP_SCOPE_FEATURE, /* target is a feature name, not an entity */
};
/* A budget's window (docs/budgets.md, "Windows"). Daily, weekly (ISO
 * weeks, from Monday 00:00) and monthly windows start at midnight at the
 * budget's fixed UTC offset; a fixed window is a repeating period anchored
 * at an instant. */
enum kp_budget_window { KP_BUDGET_DAILY, KP_BUDGET_WEEKLY, KP_BUDGET_MONTHLY, KP_BUDGET_FIXED };
enum kp_budget_kind { KP_BUDGET_HARD, KP_BUDGET_SOFT };

/* Bounds of a budget's window fields. Offsets are whole minutes east of
 * UTC, fixed ones: time zone names are not accepted, since every replica
 * must compute the same boundaries from the same bytes whatever tz
 * database its host has. */
#define KP_BUDGET_UTC_OFFSET_MIN (-720)
#define KP_BUDGET_UTC_OFFSET_MAX 840
#define KP_BUDGET_PERIOD_MIN_MS  3600000LL     /* 1 hour */
#define KP_BUDGET_PERIOD_MAX_MS  31622400000LL /* 366 days */

/* What a budget does when its spend reaches a share of its limit. The
 * registry only stores them; the router applies them (docs/budgets.md,
 * "Threshold actions"). */
enum kp_budget_action_kind {
    KP_BUDGET_ACTION_ALERT,           /* an alert */
    KP_BUDGET_ACTION_BLOCK,           /* calls refused, 429 budget_exceeded */
    KP_BUDGET_ACTION_DOWNGRADE,       /* calls for other models switch to @model */
    KP_BUDGET_ACTION_THROTTLE,        /* covered calls limited to @rpm a minute */
    KP_BUDGET_ACTION_DISABLE_FEATURE, /* calls with X-Feature @feature refused 403 */
};

#define KP_BUDGET_ACTIONS_MAX    8
#define KP_BUDGET_AT_PERCENT_MAX 1000
#define KP_BUDGET_ACTION_RPM_MAX 1000000000

/* One threshold action. @model is set for (and only for) downgrade, @rpm
 * (>= 1) for throttle, @feature for disable_feature. */
struct kp_budget_action {
    uint32_t at_percent; /* 1..1000: of limit_nanousd */
    uint8_t action;      /* enum kp_budget_action_kind; "do" on the wire */
    char *model;
    uint32_t rpm;
    char *feature;
};

struct kp_budget {
    char *name;
    uint8_t window; /* enum kp_budget_window */
    kp_nanousd limit_nanousd;
    uint8_t kind;                     /* enum kp_budget_kind */
    int32_t utc_offset_minutes;       /* daily, weekly, monthly: -720..840; fixed: 0 */
    int64_t period_start_ms;          /* fixed: the anchor (a window starts there); else 0 */
    int64_t period_ms;                /* fixed: KP_BUDGET_PERIOD_MIN_MS..MAX_MS; else 0 */
    struct kp_budget_action *actions; /* ascending at_percent, at most 8 */
    uint32_t nactions;
};

/* The budgets' lease state lives apart, in struct kp_budget_state
 * (docs/budgets.md), so that lease traffic never bumps the policy's
 * version. */
struct kp_policy {
    struct kp_entity e;
    uint8_t scope_kind; /* enum kp_scope_kind */
    char *scope_target; /* NULL for global */
    struct kp_strv models;
    uint64_t rpm;
    uint64_t tpm;
    struct kp_budget *budgets;
    uint32_t nbudgets;
};

/* A price's id is the model name. Amounts in nano-USD per million tokens,
 * plus a fee per request. */
struct kp_price {
    struct kp_entity e;
    kp_nanousd input_per_mtok;
    kp_nanousd cached_input_per_mtok;
    kp_nanousd output_per_mtok;
    kp_nanousd request_fee;
};

enum kp_member_role { KP_MEMBER_VOTER, KP_MEMBER_STANDBY, KP_MEMBER_SPARE };

struct kp_member {
    struct kp_entity e;
    uint64_t node_id;      /* Raft id, unique, > 0 */
    char *address;         /* host:port of the raft listener */
    char *control_address; /* host:port of the control listener (writes are
                              forwarded there); NULL when unknown */
    uint8_t role;          /* enum kp_member_role */
    bool meter;
};

/* Alert rules and webhooks are stored generically; their meaning lives in
 * meter/. */
struct kp_alert_rule {
    struct kp_entity e;
    char *kind;
    struct kp_strmap params;
};

struct kp_webhook {
    struct kp_entity e;
    char *kind;
    struct kp_strmap params;
};

enum kp_health_status {
    KP_HEALTH_HEALTHY,
    KP_HEALTH_DEGRADED,
    KP_HEALTH_RATE_LIMITED,
    KP_HEALTH_QUOTA_EXHAUSTED,
    KP_HEALTH_INVALID,
    KP_HEALTH_DISABLED,
};

/* The health of a key; its id is the key's id. Kept apart from the key so
 * that status changes from probes do not bump the key's version. */
/* One status change of a key, oldest first in its history. */
struct kp_health_change {
    int64_t at_ms;
    uint8_t status; /* enum kp_health_status: the new one */
    char *error_class;
    char *source; /* who committed it: router, canary, admin, ... */
};

#define KP_HEALTH_HISTORY_MAX 10

/* The health of a key; its id is the key's id. Kept apart from the key so
 * that status changes from probes do not bump the key's version.
 *
 * The canary fields (snapshot format 7) are set by the leader's probe
 * (node/canary.c): a command with last_canary_ms 0 is not a probe's and
 * keeps the canary fields the entity had. history is the registry's: apply
 * appends one change when the status changes and keeps the last
 * KP_HEALTH_HISTORY_MAX. */
struct kp_key_health {
    struct kp_entity e;
    uint8_t status; /* enum kp_health_status */
    char *last_error_class;
    int64_t last_change_ms;   /* when status last changed */
    int64_t last_canary_ms;   /* when the last probe started, 0: never */
    char *last_canary_result; /* "ok" or its error class; NULL: never */
    int32_t canary_streak;    /* > 0 successes in a row, < 0 failures */
    /* What the provider's balance endpoint said at provider_balance_ms (0:
     * never read; the provider has none); nano-USD, may be negative. */
    int64_t provider_balance_ms;
    kp_nanousd provider_balance;
    struct kp_health_change *history;
    uint32_t nhistory;
};

/* --- budget state (docs/budgets.md) --- */

/* What one node holds of a budget's window: reserved for it, counted as
 * spent until it settles or releases. */
struct kp_budget_grant {
    uint64_t node_id;
    kp_nanousd amount; /* > 0; a node without a grant has no entry */
};

/* One budget's current window.
 *
 * THE INVARIANT, for a hard budget (kept in budget.c, checked after every
 * apply that changes budget state and on restore):
 *     spent + sum(grants) <= limit_nanousd + excess
 * where excess is 0 unless spend arrived beyond a node's grant or an
 * operator lowered the limit (or made the budget hard) below what was
 * already spent or granted. Grants are made only out of
 * limit - spent - sum(grants), so they never raise the sum above the
 * limit.
 *
 * The state machine reads no clock, so a window rolls over with the first
 * budget_lease or budget_reset on it after its end. Until then a reader
 * whose clock is past kp_budget_window_end_of(budget, start_ms) treats it
 * as empty: spent 0, no grants. */
struct kp_budget_window_state {
    char *budget;                   /* the budget's name in the policy */
    int64_t start_ms;               /* start of the current window (kp_budget_window_start_of) */
    kp_nanousd spent;               /* settled in this window */
    struct kp_budget_grant *grants; /* ascending node_id */
    uint32_t ngrants;
    kp_nanousd overshoot;  /* settled beyond the settling node's grant */
    kp_nanousd excess;     /* how far spent + grants may stand above the limit */
    int64_t prev_start_ms; /* the window before this one (0: none) */
    kp_nanousd prev_spent; /* what it spent, settles after its end included */
    kp_nanousd late;       /* settles for older or unknown windows, reported
                              during this one; counted nowhere else */
};

/* The lease state of one policy's budgets; its id is the policy's id. It
 * appears with the first budget_lease on one of them and goes with the
 * policy. Windows ascend by budget name; a budget nobody leased yet has
 * none. */
struct kp_budget_state {
    struct kp_entity e;
    struct kp_budget_window_state *windows;
    uint32_t nwindows;
};

/* A node that proposes budget_lease; its id is the node id in decimal. */
struct kp_lease_node {
    struct kp_entity e;
    uint64_t node_id;
    uint64_t seq;           /* of the last budget_lease applied */
    int64_t last_report_ms; /* that command's ts */
};

/* A budget's window definition as a value: what the ledger keeps per
 * budget (it holds no pointer into a view), and what the window functions
 * read. Two budgets with equal definitions have the same windows. */
struct kp_budget_window_def {
    uint8_t kind; /* enum kp_budget_window */
    int32_t utc_offset_minutes;
    int64_t period_start_ms;
    int64_t period_ms;
};

struct kp_budget_window_def kp_budget_window_def_of(const struct kp_budget *b);
bool kp_budget_window_def_equal(const struct kp_budget_window_def *a,
                                const struct kp_budget_window_def *b);
/* The start (Unix ms) of the window of @w containing @ms, and the start of
 * the next one (when it resets). Daily: 00:00 local time (UTC plus the
 * offset); weekly: 00:00 local on Monday; monthly: 00:00 local on the 1st;
 * fixed: period_start_ms + k * period_ms for the integer k (negative
 * included) that puts @ms in [start, start + period_ms). Pure arithmetic
 * on the definition: no clock, no tz database. */
int64_t kp_budget_window_def_start(const struct kp_budget_window_def *w, int64_t ms);
int64_t kp_budget_window_def_end(const struct kp_budget_window_def *w, int64_t ms);
/* The same for budget @b. */
int64_t kp_budget_window_start_of(const struct kp_budget *b, int64_t ms);
int64_t kp_budget_window_end_of(const struct kp_budget *b, int64_t ms);
/* "daily", "weekly", "monthly", "fixed"; NULL out of range. */
const char *kp_budget_window_name(int v);
/* "alert", "block", "downgrade", "throttle", "disable_feature". */
const char *kp_budget_action_name(int v);
/* The window of @budget in @s, or NULL (no lease on it yet). */
const struct kp_budget_window_state *kp_budget_state_window(const struct kp_budget_state *s,
                                                            const char *budget);
/* What @node_id holds of @w (0 when nothing), and what all nodes hold. */
kp_nanousd kp_budget_window_grant(const struct kp_budget_window_state *w, uint64_t node_id);
kp_nanousd kp_budget_window_granted(const struct kp_budget_window_state *w);
/* The budget named @name in @p, or NULL. */
const struct kp_budget *kp_policy_budget(const struct kp_policy *p, const char *name);

/* --- freezes (docs/budgets.md, "Freeze: the stop-loss button") --- */

/* What a freeze stops. A call is refused while its tenant, project,
 * feature, pool or token is frozen; a frozen key is skipped when keys are
 * chosen, like a disabled one. */
enum kp_freeze_scope {
    KP_FREEZE_TENANT,
    KP_FREEZE_PROJECT,
    KP_FREEZE_FEATURE,
    KP_FREEZE_POOL,
    KP_FREEZE_KEY,
    KP_FREEZE_TOKEN,
};

/* Longest reason a freeze keeps (bytes of UTF-8 text). */
#define KP_FREEZE_REASON_MAX 500

/* An operator's freeze; its id is "<scope>:<target>" ("tenant:acme"), so
 * there is at most one per target and a router finds it by id. Tenants
 * and features are free names (a call may carry a tenant nobody
 * registered); a frozen project, pool, key or token must exist and cannot
 * be deleted while frozen. When: e.created_ms (kept when the reason is
 * changed); who: @frozen_by, the actor of the last put. */
struct kp_freeze {
    struct kp_entity e;
    uint8_t scope; /* enum kp_freeze_scope */
    char *target;  /* the tenant, project, feature, pool, key or token id */
    char *reason;  /* required, shown to every refused app */
    char *frozen_by;
};

/* --- alerts (docs/alerts.md) --- */

enum kp_alert_severity { KP_ALERT_INFO, KP_ALERT_WARNING, KP_ALERT_CRITICAL };
/* What a webhook is told: that an alert opened, or that it resolved. */
enum kp_alert_event { KP_ALERT_EVENT_OPEN, KP_ALERT_EVENT_RESOLVED };
/* How the delivery of one event to one webhook ended: delivered, or given
 * up after every retry (a dead letter). Deliveries still being tried live
 * only in the leader's memory. */
enum kp_delivery_state { KP_DELIVERY_SENT, KP_DELIVERY_DEAD };

/* Resolved alerts the registry keeps (the oldest, by resolved_ms then id,
 * are dropped at apply beyond this), open alerts it accepts, and delivery
 * records one alert holds. */
#define KP_ALERTS_RESOLVED_MAX  1000
#define KP_ALERTS_OPEN_MAX      10000
#define KP_ALERT_DELIVERIES_MAX 64

struct kp_alert_delivery {
    char *webhook; /* webhook id */
    uint8_t event; /* enum kp_alert_event */
    uint8_t state; /* enum kp_delivery_state */
    uint32_t attempts;
    int64_t at_ms; /* when it was delivered or given up */
    char *error;   /* the last failure ("HTTP 500", a curl message), or NULL */
};

/* An alert, raised and resolved by the Raft leader's evaluator. Its id is
 * the deduplication key ("budget:acme-spend:daily:1767225600000:80"): one
 * episode at a time per key. An episode runs from started_ms to
 * resolved_ms (0 while open); putting a resolved alert again starts a new
 * episode (started_ms moves, the ack and the delivery records are
 * cleared). */
struct kp_alert {
    struct kp_entity e;
    uint8_t severity; /* enum kp_alert_severity */
    char *rule;       /* the rule that raised it: budget_threshold, key_invalid, ... */
    char *subject;    /* what it is about: "key k-prod-3" */
    char *message;
    char *action;       /* the recommended action */
    int64_t last_value; /* the rule's measure, in the rule's unit (docs/alerts.md) */
    /* state, set by apply */
    int64_t started_ms;
    int64_t resolved_ms; /* 0 while open */
    char *acked_by;      /* the actor of ack_alert, or NULL */
    int64_t acked_ms;
    struct kp_alert_delivery *deliveries; /* one per (webhook, event) that ended */
    uint32_t ndeliveries;
};

/* An alert id of at most 128 id characters: @fmt as given when it fits,
 * else its first 110 characters, '~' and a 64-bit hash of the whole (the
 * parts are registry ids, which are id characters already). The alert
 * rules name alerts with it ("node:NAME:down"), and whoever looks one up
 * builds the id the same way. */
void kp_alert_id(char out[129], const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *kp_alert_severity_name(int v);
const char *kp_alert_event_name(int v);
const char *kp_delivery_state_name(int v);

/* --- balances (docs/balances.md) --- */

/* Top-ups one balance keeps (the oldest dropped beyond this; the audit
 * chain has them all), and the most credit a balance holds (10^18 nano-USD,
 * a billion dollars). */
#define KP_BALANCE_TOPUPS_MAX 32
#define KP_BALANCE_CREDIT_MAX 1000000000000000000
#define KP_BALANCE_NOTE_MAX   256

struct kp_balance_topup {
    kp_nanousd amount; /* > 0 */
    int64_t at_ms;     /* the command's ts */
    char *by;          /* the actor of add_key_topup */
    char *note;        /* NULL when none */
};

/* A key's prepaid credit; its id is the key's id, and it goes with the
 * key. @credit is everything recorded: the amount of the last
 * set_key_balance plus every top-up since. Metered cost counts against it
 * from @since_ms. The registry holds no spent figure: that is the meter's
 * (docs/balances.md). */
struct kp_key_balance {
    struct kp_entity e;
    kp_nanousd credit;
    int64_t since_ms;
    struct kp_balance_topup *topups; /* ascending by at_ms, at most KP_BALANCE_TOPUPS_MAX */
    uint32_t ntopups;
};

/* Cluster settings, set once by init_cluster. Its id is the cluster id. */
struct kp_cluster {
    struct kp_entity e;
    uint8_t pepper[32]; /* token HMAC pepper: secret, never logged */
    char *kek_id;       /* kp_seal_kek_id() of the master key secrets are sealed
                           under; a node whose KEK differs refuses to start */
};

/* Names of the enum values as they appear on the wire ("azure-openai",
 * "least_inflight", ...); NULL when out of range. */
const char *kp_provider_kind_name(int v);
const char *kp_key_status_name(int v);
const char *kp_health_status_name(int v);
const char *kp_pool_strategy_name(int v);
const char *kp_member_role_name(int v);
const char *kp_scope_kind_name(int v);
const char *kp_freeze_scope_name(int v);

/* The usable primary secret of @key, or NULL (no secret, or the key is not
 * active). */
const struct kp_key_secret *kp_key_primary(const struct kp_key *key);

/* --- audit chain ----------------------------------------------------------- */

/* One audit record. Applying any entry (accepted or refused) appends
 * exactly one, except a budget_lease, which appends none (the routers'
 * lease traffic would flush every operator's entry out of the retained
 * window within minutes). No field ever holds secret material.
 * hash = SHA-256(prev_hash || canonical msgpack of the entry without
 * hash); docs/registry.md gives the exact bytes. */
struct kp_audit_entry {
    uint64_t seq; /* 1, 2, 3, ... */
    int64_t ts;   /* from the command */
    char *actor;
    char *role;
    char *action; /* the op, or what audit_only names */
    char *target;
    char *result; /* "ok", "ok (...)", "refused: ...", or audit_only's */
    char *request_id;
    char *source;
    uint8_t prev_hash[32];
    uint8_t hash[32];
};

/* The hash that @e should carry, from its other fields. Returns KP_ENOMEM
 * (nothing written) when out of memory. */
int kp_audit_hash(const struct kp_audit_entry *e, uint8_t out[32]);

/* Verify @n consecutive entries: seq increases by one, each prev_hash is the
 * hash before it (@anchor for the first; NULL means 32 zero bytes, the
 * start of a chain) and each hash is right. Returns KP_OK, or KP_EPARSE with
 * *@bad the index of the first broken entry and a message naming its seq
 * (KP_ENOMEM when hashing could not allocate). */
int kp_audit_verify(const struct kp_audit_entry *entries, size_t n, const uint8_t anchor[32],
                    size_t *bad, char *errmsg, size_t errlen);

/* --- commands ---------------------------------------------------------------- */

#define KP_COMMAND_VERSION 1

#define KP_OP_MAP(X)                                                                               \
    X(PUT_PROVIDER, "put_provider")                                                                \
    X(DELETE_PROVIDER, "delete_provider")                                                          \
    X(PUT_KEY, "put_key")                                                                          \
    X(DELETE_KEY, "delete_key")                                                                    \
    X(ADD_KEY_SECRET, "add_key_secret")                                                            \
    X(RETIRE_KEY_SECRET, "retire_key_secret")                                                      \
    X(SET_KEY_STATUS, "set_key_status")                                                            \
    X(PUT_POOL, "put_pool")                                                                        \
    X(DELETE_POOL, "delete_pool")                                                                  \
    X(PUT_TENANT, "put_tenant")                                                                    \
    X(DELETE_TENANT, "delete_tenant")                                                              \
    X(PUT_PROJECT, "put_project")                                                                  \
    X(DELETE_PROJECT, "delete_project")                                                            \
    X(PUT_TOKEN, "put_token")                                                                      \
    X(DISABLE_TOKEN, "disable_token")                                                              \
    X(DELETE_TOKEN, "delete_token")                                                                \
    X(PUT_POLICY, "put_policy")                                                                    \
    X(DELETE_POLICY, "delete_policy")                                                              \
    X(PUT_PRICE, "put_price")                                                                      \
    X(DELETE_PRICE, "delete_price")                                                                \
    X(PUT_MEMBER, "put_member")                                                                    \
    X(REMOVE_MEMBER, "remove_member")                                                              \
    X(PUT_ALERT_RULE, "put_alert_rule")                                                            \
    X(DELETE_ALERT_RULE, "delete_alert_rule")                                                      \
    X(PUT_WEBHOOK, "put_webhook")                                                                  \
    X(DELETE_WEBHOOK, "delete_webhook")                                                            \
    X(SET_KEY_HEALTH, "set_key_health")                                                            \
    X(INIT_CLUSTER, "init_cluster")                                                                \
    X(AUDIT_ONLY, "audit_only")                                                                    \
    X(REWRAP_SECRETS, "rewrap_secrets")                                                            \
    X(BUDGET_LEASE, "budget_lease")                                                                \
    X(BUDGET_RESET, "budget_reset")                                                                \
    X(PUT_FREEZE, "put_freeze")                                                                    \
    X(DELETE_FREEZE, "delete_freeze")                                                              \
    X(PUT_ALERT, "put_alert")                                                                      \
    X(RESOLVE_ALERT, "resolve_alert")                                                              \
    X(ACK_ALERT, "ack_alert")                                                                      \
    X(ALERT_DELIVERY, "alert_delivery")                                                            \
    X(SET_KEY_BALANCE, "set_key_balance")                                                          \
    X(ADD_KEY_TOPUP, "add_key_topup")                                                              \
    X(DELETE_KEY_BALANCE, "delete_key_balance")

enum kp_op {
    KP_OP_NONE, /* not decoded */
#define KP_OP_ENUM(op, name) KP_OP_##op,
    KP_OP_MAP(KP_OP_ENUM)
#undef KP_OP_ENUM
        KP_OP_COUNT
};

/* "put_key"; NULL when out of range. */
const char *kp_op_name(enum kp_op op);

/* Who asked, for the audit entry. actor is required. */
struct kp_audit_ctx {
    char *actor;
    char *role;
    char *request_id;
    char *source;
};

/* Bodies of the ops that do not carry a whole entity. */
struct kp_cmd_target { /* delete_*, disable_token, remove_member */
    char *id;
};

struct kp_cmd_key_status {
    char *id;
    uint8_t status; /* enum kp_key_status */
};

struct kp_cmd_add_secret {
    char *id; /* key id */
    uint32_t version;
    struct kp_bytes sealed;
    char *fingerprint;
    char *last4;
    int64_t retire_previous_after_ms; /* when the old primary stops */
};

struct kp_cmd_retire_secret {
    char *id; /* key id */
    uint32_t version;
};

struct kp_cmd_audit_only {
    char *action;
    char *target;
    char *result;
};

struct kp_rewrap_item {
    char *key;            /* key id */
    uint64_t key_version; /* the key's version the blob was read from */
    uint32_t version;     /* the secret version */
    struct kp_bytes sealed;
};

struct kp_cmd_rewrap {
    struct kp_rewrap_item *secrets;
    uint32_t nsecrets;
    char *kek_id; /* the new master key's id, recorded in the cluster
                     settings; NULL leaves them as they are */
};

/* Most items one budget_lease carries (a router with more splits them
 * over several commands), and the largest amount an item settles or asks
 * for (10^18 nano-USD: a billion dollars). */
#define KP_LEASE_ITEMS_MAX  64
#define KP_LEASE_AMOUNT_MAX 1000000000000000000

/* One budget in a budget_lease (docs/budgets.md). */
struct kp_lease_item {
    char *policy;            /* policy id */
    char *budget;            /* budget name in it */
    int64_t window_start_ms; /* the window @settled was spent in */
    kp_nanousd settled;      /* actual cost since the last report, >= 0 */
    bool release;            /* give back what is left of the grant */
    kp_nanousd want;         /* asked for, >= 0 */
    bool spend_held;         /* first, count all the node holds of the current window as
                                spent (a restarted router: what an earlier process of the
                                node held may have been spent by calls that died with it) */
};

/* budget_lease: a node's batched report and request. The time is the
 * envelope's ts (the proposer's clock; apply reads no other). */
struct kp_cmd_budget_lease {
    uint64_t node_id;
    uint64_t seq; /* per node, strictly increasing: a replay is ignored */
    struct kp_lease_item *items;
    uint32_t nitems;
};

/* budget_reset: spent back to 0, every grant dropped, for one budget. */
struct kp_cmd_budget_reset {
    char *id;     /* policy id */
    char *budget; /* budget name */
};

/* resolve_alert: the alert's episode ends at the command's ts. */
struct kp_cmd_resolve_alert {
    char *id;
    int64_t last_value; /* the rule's measure when it cleared */
};

/* alert_delivery: how delivering one event of one episode to one webhook
 * ended. @started_ms names the episode: a record for an older one is
 * refused. */
struct kp_cmd_alert_delivery {
    char *id; /* alert id */
    int64_t started_ms;
    char *webhook;
    uint8_t event; /* enum kp_alert_event */
    uint8_t state; /* enum kp_delivery_state */
    uint32_t attempts;
    char *error;
};

/* set_key_balance: the key's credit is now @credit (top-ups before it
 * are forgotten: they are in it), counted from @since_ms (0: the
 * command's ts). */
struct kp_cmd_set_balance {
    char *id; /* key id */
    kp_nanousd credit;
    int64_t since_ms;
};

/* add_key_topup: @amount more credit, recorded with who and when. */
struct kp_cmd_add_topup {
    char *id; /* key id */
    kp_nanousd amount;
    char *note;
};

/* A decoded or to-be-encoded command. The body's type follows the op:
 *   put_<kind>        the entity struct (version, created/updated, and a
 *                     key's status and secrets are set by the registry)
 *   delete_*, disable_token, remove_member     struct kp_cmd_target (delete_freeze:
 *                     id "<scope>:<target>")
 *   set_key_status    struct kp_cmd_key_status
 *   add_key_secret    struct kp_cmd_add_secret
 *   retire_key_secret struct kp_cmd_retire_secret
 *   set_key_health    struct kp_key_health (id = key id)
 *   init_cluster      struct kp_cluster
 *   audit_only        struct kp_cmd_audit_only
 *   rewrap_secrets    struct kp_cmd_rewrap
 *   budget_lease      struct kp_cmd_budget_lease
 *   budget_reset      struct kp_cmd_budget_reset
 *   put_freeze        struct kp_freeze (frozen_by is set by the registry)
 *   put_alert         struct kp_alert (its state fields are set by the registry)
 *   resolve_alert     struct kp_cmd_resolve_alert
 *   ack_alert         struct kp_cmd_target
 *   alert_delivery    struct kp_cmd_alert_delivery
 *   set_key_balance   struct kp_cmd_set_balance
 *   add_key_topup     struct kp_cmd_add_topup
 *   delete_key_balance struct kp_cmd_target (id = key id) */
struct kp_command {
    uint32_t v; /* KP_COMMAND_VERSION */
    enum kp_op op;
    int64_t ts; /* Unix ms, from the proposer */
    struct kp_audit_ctx audit;
    bool has_expect_version; /* 0: must not exist; N: must be at N */
    uint64_t expect_version;
    union {
        void *any;
        struct kp_provider *provider;
        struct kp_key *key;
        struct kp_pool *pool;
        struct kp_tenant *tenant;
        struct kp_project *project;
        struct kp_token *token;
        struct kp_policy *policy;
        struct kp_price *price;
        struct kp_member *member;
        struct kp_alert_rule *alert_rule;
        struct kp_webhook *webhook;
        struct kp_key_health *key_health;
        struct kp_cluster *cluster;
        struct kp_cmd_target *target;
        struct kp_cmd_key_status *key_status;
        struct kp_cmd_add_secret *add_secret;
        struct kp_cmd_retire_secret *retire_secret;
        struct kp_cmd_audit_only *audit_only;
        struct kp_cmd_rewrap *rewrap;
        struct kp_cmd_budget_lease *budget_lease;
        struct kp_cmd_budget_reset *budget_reset;
        struct kp_freeze *freeze;
        struct kp_alert *alert;
        struct kp_cmd_resolve_alert *resolve_alert;
        struct kp_cmd_alert_delivery *alert_delivery;
        struct kp_cmd_set_balance *set_balance;
        struct kp_cmd_add_topup *add_topup;
    } body;
};

/* Encode @cmd as a msgpack map appended to @out. Values are not validated
 * here (apply does that, on every replica); a NULL body or an unknown op is
 * KP_EINVAL. Nothing is appended on failure. No reference to @cmd is kept. */
int kp_command_encode(const struct kp_command *cmd, struct kp_buf *out, char *errmsg,
                      size_t errlen);

/* Decode and validate one command (every field: type, range, charset,
 * length). Never reads outside @buf and never allocates more than the input
 * could hold. On success the caller owns @cmd and frees it with
 * kp_command_free. On failure @cmd holds whatever of the envelope (op, ts,
 * audit) was read, still to be freed, and the message names the field path
 * ("members[2].weight: must be 1..1000"). Returns KP_EVERSION for v != 1,
 * KP_EINVAL for anything else wrong, KP_ENOMEM. */
int kp_command_decode(const void *buf, size_t len, struct kp_command *cmd, char *errmsg,
                      size_t errlen);
void kp_command_free(struct kp_command *cmd);

/* --- the state machine --------------------------------------------------------- */

/* Audit entries the state machine keeps (older ones leave memory and the
 * snapshot; the head hash still chains them). */
#define KP_AUDIT_RETAIN 10000
/* Largest snapshot payload (uncompressed) restore accepts by default. */
#define KP_SNAPSHOT_MAX_RAW ((size_t)1 << 30)

struct kp_fsm;

/* What one budget_lease item got. */
struct kp_lease_grant {
    kp_nanousd granted;      /* added to the node's grant by this item */
    kp_nanousd grant;        /* the node's whole grant after it */
    int64_t window_start_ms; /* the window that grant belongs to */
};

/* The outcome of applying one entry. code: KP_OK, or why the command was
 * refused: KP_EINVAL / KP_EVERSION (HTTP 400), KP_ENOENT (404),
 * KP_ECONFLICT (409). message names the field path or the conflicting
 * entity. */
struct kp_fsm_result {
    int code;
    enum kp_op op;
    uint64_t version;   /* the target's version after apply (0 if deleted) */
    uint64_t audit_seq; /* the audit entry this apply appended (0: none) */
    char message[256];
    /* budget_lease, when code is KP_OK: one entry per item, in command
     * order. A duplicate (seq not above the node's last) changed nothing;
     * its entries show what the node holds now, granted 0. */
    struct {
        bool duplicate;
        uint32_t n;
        struct kp_lease_grant items[KP_LEASE_ITEMS_MAX];
    } lease;
};

struct kp_fsm *kp_fsm_new(void);
void kp_fsm_free(struct kp_fsm *fsm);

/* Apply the command in @buf as log entry @index.
 *
 * Returns KP_OK when the entry was applied: either the command took effect
 * (res->code == KP_OK) or it was refused (res->code says why) and changed
 * nothing but the audit chain. Refusals are deterministic: every replica
 * refuses the same entries the same way and appends the same audit entry
 * (none for budget_lease, accepted or refused).
 *
 * Returns KP_ENOMEM when memory ran out: then nothing at all changed (not
 * even the audit chain or the applied index), because every allocation is
 * made before the first mutation. The glue must not move on to the next
 * entry: it retries this one, or aborts the process, since a replica that
 * skipped an entry would diverge (CONVENTIONS: abort when state would
 * otherwise diverge). */
int kp_fsm_apply(struct kp_fsm *fsm, uint64_t index, const void *buf, size_t len,
                 struct kp_fsm_result *res);

uint64_t kp_fsm_applied_index(const struct kp_fsm *fsm);
/* Number of entities of @kind. */
size_t kp_fsm_count(const struct kp_fsm *fsm, enum kp_kind kind);
/* The current entity of @kind named @id, or NULL. Valid until the next
 * apply or restore; raft thread only (others use a view). */
const struct kp_entity *kp_fsm_get(const struct kp_fsm *fsm, enum kp_kind kind, const char *id);
/* NULL until init_cluster. */
const struct kp_cluster *kp_fsm_cluster(const struct kp_fsm *fsm);
/* One budget's window (NULL until a lease on it), as kp_fsm_get: raft
 * thread only, valid until the next apply. */
const struct kp_budget_window_state *
kp_fsm_budget_window(const struct kp_fsm *fsm, const char *policy_id, const char *budget);

/* The audit head (0 and zero hash before the first entry) and the retained
 * entries, oldest first; *n counts them. Valid until the next apply. */
void kp_fsm_audit_head(const struct kp_fsm *fsm, uint64_t *seq, uint8_t hash[32]);
const struct kp_audit_entry *kp_fsm_audit_entry(const struct kp_fsm *fsm, size_t i);
size_t kp_fsm_audit_count(const struct kp_fsm *fsm);

/* Serialize the whole state into @out (appended): a header and one zstd
 * frame of canonical msgpack (docs/registry.md). Two replicas with the same
 * history produce the same bytes. KP_ENOMEM leaves @out as it was. */
int kp_fsm_snapshot(const struct kp_fsm *fsm, struct kp_buf *out, char *errmsg, size_t errlen);

/* Replace the state of @fsm by the snapshot in @buf. Input is untrusted:
 * header, sizes, checksum, zstd frame, every entity (validated as a command
 * would be), canonical order and referential integrity are checked, and
 * decompression stops at @max_raw bytes (0 means KP_SNAPSHOT_MAX_RAW). On
 * any failure @fsm is unchanged; KP_EPARSE / KP_EVERSION / KP_ETOOBIG /
 * KP_ENOMEM with a message. */
int kp_fsm_restore(struct kp_fsm *fsm, const void *buf, size_t len, size_t max_raw, char *errmsg,
                   size_t errlen);

/* Turn a state restored from another cluster's snapshot into the first
 * state of a new cluster (restore.c; docs/operations.md, "Restore"): the
 * cluster settings take the id @cluster_id (pepper and key id stay, so
 * tokens and sealed secrets keep working), every member record is removed
 * and @self recorded as the only member, and one audit entry says what was
 * restored from what. The changes are applied as entries after the
 * snapshot's applied index, each with @ts and @actor in its audit entry,
 * so kp_fsm_applied_index() afterwards is where the new cluster's log
 * starts. KP_EINVAL (no cluster settings in the snapshot), KP_ENOMEM, or
 * another code with @errmsg; @fsm may be half changed on failure. */
int kp_fsm_rebase(struct kp_fsm *fsm, const char *cluster_id, const struct kp_member *self,
                  int64_t ts, const char *actor, char *errmsg, size_t errlen);

/* --- the view routers read -------------------------------------------------------- */

/* An immutable picture of the registry after some applied index. Entities
 * and tables are shared with the state machine by reference count, so
 * building one costs a few atomic increments, whatever the size; the state
 * machine copies a table before it next changes it (copy on write). */
struct kp_view;

/* Build a view of the current state, holding one reference for the caller.
 * NULL when out of memory. Raft thread only. */
struct kp_view *kp_fsm_view_build(struct kp_fsm *fsm);

/* Take one more reference to a view you hold. */
struct kp_view *kp_view_hold(struct kp_view *view);
/* Drop a reference; the last one frees the view (any thread). */
void kp_view_release(struct kp_view *view);

uint64_t kp_view_applied_index(const struct kp_view *view);
/* NULL until init_cluster. */
const struct kp_cluster *kp_view_cluster(const struct kp_view *view);

/* Lookups by id; the result lives as long as the view is held. */
const struct kp_entity *kp_view_get(const struct kp_view *view, enum kp_kind kind, const char *id);
const struct kp_provider *kp_view_provider(const struct kp_view *view, const char *id);
const struct kp_key *kp_view_key(const struct kp_view *view, const char *id);
const struct kp_pool *kp_view_pool(const struct kp_view *view, const char *name);
const struct kp_tenant *kp_view_tenant(const struct kp_view *view, const char *name);
const struct kp_project *kp_view_project(const struct kp_view *view, const char *name);
const struct kp_token *kp_view_token(const struct kp_view *view, const char *id);
const struct kp_policy *kp_view_policy(const struct kp_view *view, const char *id);
/* The registry's own price entity for exactly @model; what a model costs is
 * kp_price_lookup's answer, below. */
const struct kp_price *kp_view_price(const struct kp_view *view, const char *model);
const struct kp_member *kp_view_member(const struct kp_view *view, const char *id);
const struct kp_key_health *kp_view_key_health(const struct kp_view *view, const char *key_id);
/* A policy's budget state (NULL until a lease on one of its budgets), one
 * budget's window in it, and a node's lease bookkeeping. A router reads
 * its grants and its last applied seq here. */
const struct kp_budget_state *kp_view_budget_state(const struct kp_view *view,
                                                   const char *policy_id);
const struct kp_budget_window_state *
kp_view_budget_window(const struct kp_view *view, const char *policy_id, const char *budget);
const struct kp_lease_node *kp_view_lease_node(const struct kp_view *view, uint64_t node_id);
/* The balance recorded for @key_id, or NULL. */
const struct kp_key_balance *kp_view_key_balance(const struct kp_view *view, const char *key_id);
/* The freeze of @target in @scope (enum kp_freeze_scope), or NULL. Cheap
 * when nothing is frozen: no id is built then. */
const struct kp_freeze *kp_view_freeze(const struct kp_view *view, int scope, const char *target);
/* The key of @pool's member @i (NULL if @i is out of range). */
const struct kp_key *kp_view_pool_key(const struct kp_view *view, const struct kp_pool *pool,
                                      uint32_t i);

/* --- prices (price.c, price_defaults.c; docs/registry.md, "Prices") --- */

/* The price of @model: the registry's price entity if there is one (an
 * operator's override or addition), else the built-in default table's, else
 * NULL. *@source (may be NULL) is set to "registry" or "default" (NULL with
 * no price). Dated or suffixed model names the providers serve
 * ("gpt-4o-2024-08-06", "claude-sonnet-4-5-20250929",
 * "models/gemini-2.5-flash") resolve to their base entry when no exact entry
 * exists. In order, first hit wins: @model exactly (registry, then
 * defaults); the same without a leading "models/"; then the longest prefix
 * ending just before a '-', '@' or ':' that has a price (registry, then
 * defaults, at each length). "gpt-4o" never matches an entry "gpt-4". @view
 * may be NULL (defaults only); a registry result lives as long as @view is
 * held, a default one forever. */
const struct kp_price *kp_price_lookup(const struct kp_view *view, const char *model,
                                       const char **source);
/* The built-in defaults, for listing: @i from 0; NULL past the end. Sorted by
 * model name. They are not registry entities (version 0, no reference
 * count): never hand one to the store. */
const struct kp_price *kp_price_default(size_t i);

size_t kp_view_count(const struct kp_view *view, enum kp_kind kind);
/* Call @fn for every entity of @kind, in no particular order, until it
 * returns non-zero (which is returned). */
int kp_view_each(const struct kp_view *view, enum kp_kind kind,
                 int (*fn)(const struct kp_entity *e, void *arg), void *arg);

/* Where the raft thread publishes views for router workers.
 *
 * kp_view_acquire is lock-free for readers (two atomic increments, one
 * load, one decrement). kp_view_publish swaps the pointer and then waits
 * for readers that may have loaded the old pointer but not yet taken their
 * reference; that window is a few instructions long, so the wait is short.
 * One publisher at a time (the raft thread). */
struct kp_view_slot {
    _Atomic(struct kp_view *) current;
    atomic_uint gen;
    atomic_uint active[2];
};

void kp_view_slot_init(struct kp_view_slot *slot);
/* Drops the published view. No reader may be inside acquire. */
void kp_view_slot_close(struct kp_view_slot *slot);
/* Publish @view, taking over the caller's reference; the old view's slot
 * reference is dropped once no reader can still be taking it. A NULL @view
 * (kp_fsm_view_build ran out of memory) changes nothing: readers keep the
 * last view until the next publish. */
void kp_view_publish(struct kp_view_slot *slot, struct kp_view *view);
/* The current view with a reference for the caller (NULL if none was
 * published); give it back with kp_view_release. */
struct kp_view *kp_view_acquire(struct kp_view_slot *slot);

/* --- tokens, roles and scopes (token.c, role.c) ---------------------------------
 *
 * Tokens and roles: the internal credentials apps, operators and
 * tools present to keyplane, the roles that say what a token may do, and the
 * scope that says where it may do it. docs/tokens.md is the reference; this
 * section is its API.
 *
 * A token reads kp_<id>_<secret><check>: a 12-character random id in
 * lower-case base32, a 32-character base62 secret (about 190 bits), and six
 * base62 characters of CRC-32 over everything before them, so that a
 * mistyped or truncated token is refused by kp_token_parse() without any
 * lookup. The registry stores only the id (as "tk_<id>"), the role, the
 * scope and HMAC-SHA256(pepper, secret); kp_token_verify() recomputes the
 * MAC and compares in constant time.
 *
 * Everything here is pure: no I/O, no clock (time is passed in), no global
 * state. Randomness comes from OpenSSL only in kp_token_generate(). */

/* --- tokens -------------------------------------------------------------- */

#define KP_TOKEN_PREFIX       "kp_"
#define KP_TOKEN_ID_CHARS     12 /* lower-case base32: a-z, 2-7 (60 bits) */
#define KP_TOKEN_SECRET_CHARS 32 /* base62: 0-9, A-Z, a-z (190.5 bits) */
#define KP_TOKEN_CHECK_CHARS  6  /* CRC-32 in base62, most significant first */
/* Length of the whole text: "kp_" id "_" secret check = 54. */
#define KP_TOKEN_TEXT_LEN (3 + KP_TOKEN_ID_CHARS + 1 + KP_TOKEN_SECRET_CHARS + KP_TOKEN_CHECK_CHARS)
/* The registry id of a token, "tk_" and its 12 id characters, with the NUL.
 * It is not secret and, unlike the token, is not masked in logs. */
#define KP_TOKEN_ID_SIZE    (3 + KP_TOKEN_ID_CHARS + 1)
#define KP_TOKEN_PEPPER_LEN 32
#define KP_TOKEN_HASH_LEN   32

/* The parts of a well-formed token. @secret points into the text given to
 * kp_token_parse() and is valid as long as that text; it is not copied so
 * that the secret exists in one place only. */
struct kp_token_parts {
    char id[KP_TOKEN_ID_SIZE];
    const char *secret;
    size_t secret_len;
};

/* Create a new token. On KP_OK, *text_out is the NUL-terminated token text
 * (KP_TOKEN_TEXT_LEN characters; the only time it exists, so hand it to the
 * user once and release it with kp_token_text_free()), id_out its registry
 * id and hash_out the HMAC to store. On error *text_out is NULL, hash_out is
 * zeroed and the code is KP_ENOMEM or KP_EIO (the CSPRNG or HMAC failed). */
int kp_token_generate(const uint8_t pepper[KP_TOKEN_PEPPER_LEN], char **text_out,
                      char id_out[KP_TOKEN_ID_SIZE], uint8_t hash_out[KP_TOKEN_HASH_LEN]);
/* Wipes and frees a text from kp_token_generate(). NULL is allowed. */
void kp_token_text_free(char *text);

/* Check the shape and checksum of @text (@len bytes, no NUL needed, no
 * trimming done: strip "Bearer " and whitespace first). KP_OK fills @out;
 * KP_EPARSE writes to @errmsg (may be NULL) which part is malformed: the
 * prefix, the id, the secret's length or characters, or the checksum. The
 * message gives 1-based positions and never quotes the token. */
int kp_token_parse(const char *text, size_t len, struct kp_token_parts *out, char *errmsg,
                   size_t errlen);

/* Whether @id is a registry token id: "tk_" and 12 of a-z, 2-7. */
bool kp_token_id_valid(const char *id);

/* HMAC-SHA256(pepper, secret) into @out. KP_EIO when OpenSSL fails. */
int kp_token_hash(const uint8_t pepper[KP_TOKEN_PEPPER_LEN], const char *secret, size_t len,
                  uint8_t out[KP_TOKEN_HASH_LEN]);

/* Whether @secret is the one whose MAC under @pepper is @stored_hash. The
 * comparison is CRYPTO_memcmp, so its time does not depend on where the
 * MACs differ. KP_OK on a match, KP_EPERM otherwise, KP_EIO when OpenSSL
 * fails. */
int kp_token_verify(const uint8_t stored_hash[KP_TOKEN_HASH_LEN],
                    const uint8_t pepper[KP_TOKEN_PEPPER_LEN], const char *secret, size_t len);

/* --- roles and permissions ----------------------------------------------- */

/* Permissions, one bit each: X(enum, bit, name). The name is what 403
 * messages and docs/tokens.md use. */
#define KP_PERM_MAP(X)                                                                             \
    X(KP_PERM_CHANGE, 1u << 0, "change")                                                           \
    X(KP_PERM_OPERATE, 1u << 1, "operate")                                                         \
    X(KP_PERM_USE, 1u << 2, "use")                                                                 \
    X(KP_PERM_READ_USAGE, 1u << 3, "read_usage")                                                   \
    X(KP_PERM_READ_AUDIT, 1u << 4, "read_audit")                                                   \
    X(KP_PERM_READ_REGISTRY, 1u << 5, "read_registry")                                             \
    X(KP_PERM_READ_ALERTS, 1u << 6, "read_alerts")

enum kp_perm {
#define KP_PERM_ENUM(e, bit, name) e = (bit),
    KP_PERM_MAP(KP_PERM_ENUM)
#undef KP_PERM_ENUM
};

#define KP_PERM_ALL                                                                                \
    (KP_PERM_CHANGE | KP_PERM_OPERATE | KP_PERM_USE | KP_PERM_READ_USAGE | KP_PERM_READ_AUDIT |    \
     KP_PERM_READ_REGISTRY | KP_PERM_READ_ALERTS)

/* Roles: X(enum, name). Their permissions are in role.c, the one table. */
#define KP_ROLE_MAP(X)                                                                             \
    X(KP_ROLE_ADMIN, "admin")                                                                      \
    X(KP_ROLE_OPERATOR, "operator")                                                                \
    X(KP_ROLE_APP, "app")                                                                          \
    X(KP_ROLE_FINANCE, "finance")                                                                  \
    X(KP_ROLE_AUDITOR, "auditor")

enum kp_role {
#define KP_ROLE_ENUM(e, name) e,
    KP_ROLE_MAP(KP_ROLE_ENUM)
#undef KP_ROLE_ENUM
        KP_ROLE_COUNT
};

/* "operator" -> KP_ROLE_OPERATOR. Exact lower-case names only; KP_EINVAL
 * otherwise. */
int kp_role_parse(const char *name, enum kp_role *out);
/* KP_ROLE_OPERATOR -> "operator"; "unknown" outside the enum. */
const char *kp_role_name(enum kp_role role);
/* The permission bits of @role; 0 outside the enum. */
unsigned kp_role_perms(enum kp_role role);
/* Whether @role holds every bit of @perms. An empty @perms is a caller bug
 * and answers false, so a forgotten requirement fails closed. */
bool kp_role_has(enum kp_role role, unsigned perms);
/* KP_PERM_OPERATE -> "operate"; "unknown" unless exactly one known bit. */
const char *kp_perm_name(unsigned perm);
/* The 403 message when @role lacks some bit of @perms, naming the first
 * missing one: "token tk_x (role finance) lacks permission operate". */
void kp_role_refusal(char *buf, size_t len, const char *token_id, enum kp_role role,
                     unsigned perms);

/* --- scope --------------------------------------------------------------- */

/* Bounds kp_token_scope_check() enforces on a scope the registry accepts. */
#define KP_TOKEN_SCOPE_MAX_ENTRIES 256
#define KP_TOKEN_SCOPE_MAX_NAME    128

/* Where a token may act. A view: the strings and arrays belong to whoever
 * filled it in (the registry entity), and nothing here keeps a reference.
 * Empty lists allow everything in that dimension; a model entry ending in
 * '*' matches every model that starts with what comes before it ("gpt-4o*",
 * and "*" alone matches all). Projects are matched by id only: that a
 * project belongs to the tenant is the registry's invariant, not checked
 * here. */
struct kp_token_scope {
    const char *tenant; /* a tenant id, or "*" for every tenant */
    const char *const *projects;
    size_t n_projects;
    const char *const *features; /* exact names, as X-Feature sends them */
    size_t n_features;
    const char *const *pools;
    size_t n_pools;
    const char *const *models;
    size_t n_models;
    int64_t expires_at; /* Unix ms; 0 = never. Expired from this instant on. */
};

/* The dimension that refused a request; the router answers 401 for
 * KP_TOKEN_SCOPE_EXPIRED (the credential is no longer valid) and 403 for the
 * others. */
enum kp_token_scope_dim {
    KP_TOKEN_SCOPE_ALLOWED,
    KP_TOKEN_SCOPE_EXPIRED,
    KP_TOKEN_SCOPE_TENANT,
    KP_TOKEN_SCOPE_PROJECT,
    KP_TOKEN_SCOPE_FEATURE,
    KP_TOKEN_SCOPE_POOL,
    KP_TOKEN_SCOPE_MODEL,
};

struct kp_token_refusal {
    enum kp_token_scope_dim dim;
    char msg[256];
};

/* Whether @scope allows a request for @model through @pool in
 * @tenant/@project, for @feature, at @now_ms. A NULL dimension is not
 * checked, for callers that check in steps (a fallback pool is checked when
 * it is chosen); every dimension must be checked before the request goes
 * upstream. Expiry comes first, then tenant, project, feature, pool, model. KP_OK, or KP_EPERM with
 * @why (may be NULL) saying which dimension refused and why: "project prj-x is outside this token's
 * scope (allowed: prj-a, prj-b)", "token expired at 2026-01-01T00:00:00.000Z". */
int kp_token_scope_allows(const struct kp_token_scope *scope, int64_t now_ms, const char *tenant,
                          const char *project, const char *feature, const char *pool,
                          const char *model, struct kp_token_refusal *why);

/* Validate a scope before it is stored: a non-empty tenant, at most
 * KP_TOKEN_SCOPE_MAX_ENTRIES non-empty entries per list, each at most
 * KP_TOKEN_SCOPE_MAX_NAME bytes of printable ASCII without spaces or ',',
 * '*' only as the last character of a model entry, expires_at >= 0.
 * KP_OK or KP_EINVAL with @errmsg (may be NULL). */
int kp_token_scope_check(const struct kp_token_scope *scope, char *errmsg, size_t errlen);

/* --- JSON for the control API (json.c) -------------------------------------------- */

/* The entity as the control API shows it (docs/control-api.md): "kind",
 * every schema field by its registry name, enums by name, maps as objects.
 * Binary fields (a token's hash, sealed secrets, the pepper) are never
 * rendered; a key's secrets show version, fingerprint, last4, state and
 * retire_after_ms. NULL when out of memory. */
json_t *kp_entity_json(const struct kp_entity *e);
/* An audit entry, hashes in lower-case hex. NULL when out of memory. */
json_t *kp_audit_entry_json(const struct kp_audit_entry *e);
/* One budget of a policy as kp_entity_json shows it in "budgets" (name,
 * window, limit_nanousd, kind, utc_offset_minutes, period_start_ms and
 * period_ms when set, actions). NULL when out of memory. */
json_t *kp_budget_json(const struct kp_budget *b);

/* Build the msgpack command for @op from a JSON object @body (the fields of
 * the op's body as docs/registry.md names them; NULL means {}), with the
 * envelope from the other arguments, and append it to @out. @id, when not
 * NULL, is the target named by the URL: it is set as the body's "id" (a
 * body "id" that differs is refused). The result is decoded once with
 * kp_command_decode, so every check a replica makes is made here first.
 * KP_OK; KP_EINVAL with @errmsg ("members[2].weight: must be 1..1000") and
 * @field the path of the bad field ("members[2].weight", "" when the whole
 * body is at fault); KP_ENOMEM. @out is unchanged on failure. */
int kp_command_from_json(enum kp_op op, const char *id, const json_t *body, int64_t ts,
                         const struct kp_audit_ctx *audit, bool has_expect_version,
                         uint64_t expect_version, struct kp_buf *out, char *errmsg, size_t errlen,
                         char *field, size_t fieldlen);

/* --- the Raft node (store.c) --------------------------------------------------------
 *
 * Every canonical/raft call in keyplane is in store.c. A store runs on one
 * libuv loop (the daemon's main loop, which also serves the control API):
 * every function below is called from that loop's thread, and every
 * callback runs on it. */

struct kp_store;

struct kp_store_config {
    const char *dir;     /* the raft directory (created if missing) */
    uint64_t node_id;    /* > 0, stable across restarts */
    const char *address; /* host:port this node's raft listener binds and
                            advertises */
    /* Nothing on disk yet: true makes a one-voter cluster of this node;
     * false waits to be added by a leader (join). Ignored when the
     * directory already holds state. */
    bool bootstrap;
    unsigned snapshot_threshold; /* entries between snapshots (0: 1024) */
    unsigned snapshot_trailing;  /* entries kept after one (0: 128) */
    /* Where views are published (kp_view_slot_init'ed by the caller, who
     * closes it after the store is closed): router workers may hold it
     * before the store exists. */
    struct kp_view_slot *views;
    unsigned election_timeout_ms;  /* 0: 1000 */
    unsigned heartbeat_timeout_ms; /* 0: 100 */
    /* Size of each log segment file, preallocated when created (0: raft's
     * 8 MiB); a multiple of 4 KiB. */
    size_t segment_bytes;
    /* Called on the loop after each batch of applied entries has been
     * published as a view, and when leadership changes. May be NULL. */
    void (*on_change)(void *arg);
    void *arg;
    /* Raft links over mutual TLS (docs/operations.md, "Securing node
     * links"): this node's certificate chain and private key, and the
     * cluster CA that must have signed every peer's certificate; PEM files.
     * All NULL: plain TCP. Some but not all set: kp_store_open refuses. */
    const char *tls_cert_file;
    const char *tls_key_file;
    const char *tls_ca_file;
};

/* Open the raft directory, restore the latest snapshot and log, start the
 * raft listener. KP_OK, or an error with @errmsg naming the cause (a busy
 * port, a directory from another node id, a corrupt log). */
int kp_store_open(struct kp_store **out, uv_loop_t *loop, const struct kp_store_config *cfg,
                  char *errmsg, size_t errlen);
/* Read the TLS files named at open again (SIGHUP): links made from now on
 * present and check the new certificates, links open now keep theirs. On
 * failure the old ones stay in use and @errmsg says which file and why.
 * KP_OK (also when the store runs without TLS: nothing to do), KP_ECONFIG. */
int kp_store_tls_reload(struct kp_store *s, char *errmsg, size_t errlen);
/* Stop raft and free the store once every handle closed; @cb (may be NULL)
 * runs then. Pending proposals complete with KP_ECLOSED first. */
void kp_store_close(struct kp_store *s, void (*cb)(void *arg), void *arg);

/* The slot views are published to (cfg.views). */
struct kp_view_slot *kp_store_views(struct kp_store *s);
/* The state machine, for reads on the loop thread (kp_fsm_get, audit). */
const struct kp_fsm *kp_store_fsm(const struct kp_store *s);

bool kp_store_is_leader(struct kp_store *s);
/* The last log index this node applied, barriers and configuration
 * changes included (the state machine's own applied index counts only the
 * commands it saw, so it stays below a commit index that ends in a
 * barrier). */
uint64_t kp_store_applied_index(struct kp_store *s);
/* The leader as this node knows it: KP_OK with its id and raft address
 * (copied into @addr), or KP_ENOTLEADER when there is none. */
int kp_store_leader(struct kp_store *s, uint64_t *id, char *addr, size_t addrlen);

enum kp_store_role { KP_STORE_VOTER, KP_STORE_STANDBY, KP_STORE_SPARE };

struct kp_store_server {
    uint64_t id;
    char address[256];
    int role; /* enum kp_store_role */
    bool leader;
    uint64_t match_index; /* replicated up to, as the leader knows (0 elsewhere) */
    bool recent_contact;  /* the leader heard from it within an election timeout */
};

struct kp_store_status {
    uint64_t node_id;
    const char *state; /* "follower", "candidate", "leader", "unavailable" */
    uint64_t term;
    uint64_t commit_index;
    uint64_t applied_index;
    uint64_t last_index;
    uint64_t leader_id; /* 0 when unknown */
    uint64_t snapshot_index;
    uint32_t nservers;
    struct kp_store_server *servers; /* from kp_malloc; kp_store_status_free */
};

int kp_store_status(struct kp_store *s, struct kp_store_status *out);
void kp_store_status_free(struct kp_store_status *st);

/* Completion of a proposal: @code is KP_OK when the entry was committed and
 * applied (then @res says whether the command took effect), KP_ENOTLEADER
 * when leadership was lost first (the entry may or may not commit later),
 * KP_ECLOSED when the store is closing, KP_EIO otherwise. */
typedef void (*kp_store_apply_cb)(void *arg, int code, const struct kp_fsm_result *res);
/* Propose an encoded command (copied). KP_ENOTLEADER when this node is not
 * the leader; KP_ENOMEM. The callback is not called on error. */
int kp_store_propose(struct kp_store *s, const void *cmd, size_t len, kp_store_apply_cb cb,
                     void *arg);

/* Completion of a barrier or a membership change: KP_OK, KP_ENOTLEADER,
 * KP_ECLOSED, KP_EIO, with a message. */
typedef void (*kp_store_done_cb)(void *arg, int code, const char *message);
/* Completes once every entry committed before the call is applied here. */
int kp_store_barrier(struct kp_store *s, kp_store_done_cb cb, void *arg);
/* Add server @id at @address as a spare, then give it @role (a voter
 * catches up first). KP_ECONFLICT when @id or @address is already a
 * member; KP_EBUSY while another configuration change is in progress. */
int kp_store_add(struct kp_store *s, uint64_t id, const char *address, int role,
                 kp_store_done_cb cb, void *arg);
int kp_store_assign(struct kp_store *s, uint64_t id, int role, kp_store_done_cb cb, void *arg);
int kp_store_remove(struct kp_store *s, uint64_t id, kp_store_done_cb cb, void *arg);
/* Hand leadership to @id (0: the most up-to-date voter). */
int kp_store_transfer(struct kp_store *s, uint64_t id, kp_store_done_cb cb, void *arg);

/* --- offline operations (store.c) ---------------------------------------------------
 *
 * On the raft directory of a node that is not running (the caller holds the
 * data directory's lock); each runs on a private loop and returns when
 * done. */

/* Both take the node's identity from @cfg: dir, node_id, address and the
 * TLS files (the transport kp_store_open would use; nothing is sent
 * offline). Its other fields are ignored. */

/* Start a new cluster from a registry snapshot: make the empty directory
 * cfg->dir hold @snap (kp_fsm_snapshot bytes, @len; its applied index is
 * @index) as Raft's first snapshot, at @index and term 1, with a
 * configuration of this node alone (cfg->node_id at cfg->address) as voter.
 * The next kp_store_open restores it and this node leads at once; a node
 * that joins later is sent the snapshot. KP_OK, or an error with @errmsg. */
int kp_store_seed(const struct kp_store_config *cfg, const void *snap, size_t len, uint64_t index,
                  char *errmsg, size_t errlen);

/* Recovery from the loss of a majority (raft_recover): append to the log in
 * cfg->dir a configuration of this node alone (cfg->node_id at
 * cfg->address) as voter, so that it leads by itself at its next start.
 * Entries the lost nodes committed without this one are gone. KP_OK, or an
 * error with @errmsg. */
int kp_store_recover(const struct kp_store_config *cfg, char *errmsg, size_t errlen);

#endif

/* Alerts: what the alert_rule and webhook kinds of the registry mean
 * (docs/alerts.md). Internal to node/; the pure parts are here so that
 * unit tests reach them without a daemon:
 *
 *   alert_rules.c    the rules, as a function of a registry view, a clock
 *                    and what the leader knows of each member: the alerts
 *                    that should be open (kp_alert_rules_eval), and the
 *                    commands that get the registry there (kp_alert_reconcile);
 *                    the configuration an alert_rule entity gives a rule;
 *                    the per-key outcome window a node reports;
 *   alert_webhook.c  what a webhook receives: the generic and the
 *                    Slack-compatible bodies, the delivery id, the
 *                    signature, the retry schedule, and the checks a
 *                    webhook entity must pass.
 *
 * The leader loop that polls members, proposes and delivers is
 * node/alerts.c. */
#ifndef KP_NODE_ALERTS_H
#define KP_NODE_ALERTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "balance.h"
#include "raftstore/raftstore.h"

/* --- what nodes report (GET /internal/v1/health) --------------------------- */

/* One key's upstream attempts on one node (or summed over nodes). */
struct kp_alert_key_stats {
    char key[129];
    uint64_t attempts_5m;     /* attempts in the last 5 minutes */
    uint64_t errors_5m;       /* of which failed, the request's own faults (client) aside */
    uint64_t rate_limited_1m; /* 429s in the last minute */
    uint64_t attempts_1m;     /* attempts in the last minute */
    uint64_t errors_1m;       /* of which failed (as errors_5m) */
};

struct kp_alert_report {
    bool have; /* a recent report arrived: else the rules that need it hold */
    uint64_t spool_bytes, spool_cap_bytes, spool_waiting;
    int64_t oldest_unshipped_ms; /* age of the oldest sealed segment still waiting, 0: none */
    struct kp_alert_key_stats *keys;
    size_t nkeys;
};

/* Parse a node's report (the answer of GET /internal/v1/health) into @out,
 * whose keys array comes from kp_malloc (kp_alert_report_free). KP_EPARSE
 * for a body that is not one; KP_ENOMEM. */
int kp_alert_report_from_json(const json_t *v, struct kp_alert_report *out);
void kp_alert_report_free(struct kp_alert_report *r);

/* A member as the Raft leader sees it. */
struct kp_alert_member {
    const char *name; /* registry member name */
    uint64_t node_id;
    /* How long the leader has not heard from it: 0 in contact; -1 not
     * known (not in the Raft configuration as a voter or standby, or the
     * leader has not looked yet). */
    int64_t out_of_contact_ms;
    const struct kp_alert_report *report; /* NULL or !have: no fresh report */
};

/* Every key's stats summed over the members' reports, sorted by key, into
 * *@out (kp_malloc; kp_free it); *@complete false when a member that should
 * report has not. KP_OK or KP_ENOMEM. */
int kp_alert_sum_key_stats(const struct kp_alert_member *members, size_t n,
                           struct kp_alert_key_stats **out, size_t *nout, bool *complete);

/* --- outcome windows (kept by every node for its report) -------------------- */

#define KP_OUTCOME_KEYS    256
#define KP_OUTCOME_SAMPLES 40
/* A sample is taken at most this often; 40 of them cover 6.5 minutes. */
#define KP_OUTCOME_SAMPLE_MS 10000

struct kp_outcome_counts {
    uint64_t attempts, errors, rate_limited;
};

/* Cumulative per-key counts of upstream attempts (from the router's
 * keyplane_router_attempts_total), sampled every KP_OUTCOME_SAMPLE_MS so
 * that a window is "now minus the sample at its start". Keys past
 * KP_OUTCOME_KEYS are not tracked. */
struct kp_outcome_window {
    int64_t t[KP_OUTCOME_SAMPLES]; /* sample times, a ring */
    unsigned head, n;              /* next slot, samples held */
    unsigned nkeys;
    char keys[KP_OUTCOME_KEYS][129];
    struct kp_outcome_counts cur[KP_OUTCOME_KEYS]; /* the latest totals */
    struct kp_outcome_counts at[KP_OUTCOME_KEYS][KP_OUTCOME_SAMPLES];
};

/* Start reading totals: cur is zeroed; add one series at a time
 * (@outcome is "ok" or the failure class), then sample. */
void kp_outcome_window_begin(struct kp_outcome_window *w);
void kp_outcome_window_add(struct kp_outcome_window *w, const char *key, const char *outcome,
                           uint64_t value);
/* Keep cur as a sample when the last one is KP_OUTCOME_SAMPLE_MS old. */
void kp_outcome_window_sample(struct kp_outcome_window *w, int64_t now_ms);
/* What @key did in the last @span_ms: cur minus the newest sample at or
 * before now - span (the oldest sample when none is that old, so a young
 * node reports since it started). */
struct kp_outcome_counts kp_outcome_window_span(const struct kp_outcome_window *w,
                                                unsigned key_index, int64_t now_ms,
                                                int64_t span_ms);

/* --- rules -------------------------------------------------------------------------- */

/* The rules (alert_rule kinds). */
#define KP_ALERT_RULE_MAP(X)                                                                       \
    X(BUDGET_THRESHOLD, "budget_threshold")                                                        \
    X(BURN_RATE, "burn_rate")                                                                      \
    X(KEY_INVALID, "key_invalid")                                                                  \
    X(POOL_NO_KEY, "pool_no_key")                                                                  \
    X(NODE_DOWN, "node_down")                                                                      \
    X(SPOOL_FILLING, "spool_filling")                                                              \
    X(METER_LAG, "meter_lag")                                                                      \
    X(KEY_ERROR_RATE, "key_error_rate")                                                            \
    X(KEY_RATE_LIMITED, "key_rate_limited")                                                        \
    X(KEY_BALANCE, "key_balance")

enum kp_alert_rule_kind {
#define KP_ALERT_RULE_ENUM(e, name) KP_RULE_##e,
    KP_ALERT_RULE_MAP(KP_ALERT_RULE_ENUM)
#undef KP_ALERT_RULE_ENUM
        KP_RULE_COUNT
};

const char *kp_alert_rule_name(int kind);

/* Check an alert_rule entity's kind and params before it is stored: a
 * known kind, known params, numbers in range. KP_OK or KP_EINVAL with a
 * message naming the param ("params.percents: ..."). */
int kp_alert_rule_check(const char *kind, const struct kp_strmap *params, char *errmsg,
                        size_t errlen);

/* An alert the rules want open. With @hold, the rule cannot tell now (a
 * report is missing, a node was not out of contact long enough yet): an
 * open alert of that id stays open, but none is opened. */
struct kp_alert_want {
    char id[129];
    uint8_t severity; /* enum kp_alert_severity */
    uint8_t rule;     /* enum kp_alert_rule_kind */
    bool hold;
    int64_t last_value;
    char subject[257];
    char message[1025];
    char action[1025];
};

struct kp_alert_plan {
    struct kp_alert_want *v; /* sorted by id after kp_alert_rules_eval */
    size_t n, cap;
};

void kp_alert_plan_free(struct kp_alert_plan *p);

/* What the meter said one key with a balance cost (the leader asks a
 * meter once per evaluation at most: node/alerts.c). */
struct kp_alert_key_spend {
    char key[129];
    int64_t since_ms; /* the balance's since_ms the query counted from */
    struct kp_balance_spend spend;
};

/* The spends the key_balance rule reads; a key missing here (or @spends
 * NULL: no meter answered lately) holds. */
struct kp_alert_spends {
    const struct kp_alert_key_spend *v;
    size_t n;
};

/* Evaluate every rule over @view at @now_ms, with what the leader knows of
 * the members (@members[0..nmembers): every member of the registry) and
 * what the meter said of the keys with balances (@spends, or NULL) into
 * @out (emptied first). Deterministic: the same inputs give the same plan.
 * KP_OK or KP_ENOMEM. */
int kp_alert_rules_eval(const struct kp_view *view, int64_t now_ms,
                        const struct kp_alert_member *members, size_t nmembers,
                        const struct kp_alert_spends *spends, struct kp_alert_plan *out);

/* What the registry must be told to match @plan: open (or update the
 * severity of) each wanted alert that is not open with that severity, and
 * resolve each open alert nobody wants or holds. At most @max steps, in id
 * order, opens and updates first. */
struct kp_alert_step {
    bool resolve;
    const struct kp_alert_want *want; /* open/update */
    const struct kp_alert *alert;     /* resolve: the open alert (from the view) */
};
size_t kp_alert_reconcile(const struct kp_view *view, const struct kp_alert_plan *plan,
                          struct kp_alert_step *steps, size_t max);

/* --- webhooks -------------------------------------------------------------------- */

enum kp_webhook_kind { KP_WEBHOOK_GENERIC, KP_WEBHOOK_SLACK };

/* A webhook entity made usable: its kind and params checked. The strings
 * point into the entity. */
struct kp_webhook_target {
    int kind; /* enum kp_webhook_kind */
    const char *url;
    const char *secret; /* NULL: no signature */
    unsigned max_attempts;
    int64_t backoff_ms; /* before the second attempt; doubles after */
};

/* Check a webhook's kind and params (docs/alerts.md, "Webhooks"): kind
 * generic or slack; url https://, or http:// and loopback hosts only with
 * allow_insecure "true"; secret 16..256 bytes; max_attempts 1..10;
 * backoff_ms 100..600000; nothing else. KP_OK fills @out (may be NULL);
 * KP_EINVAL with a message that never quotes the url or the secret. */
int kp_webhook_check(const char *kind, const struct kp_strmap *params,
                     struct kp_webhook_target *out, char *errmsg, size_t errlen);

/* "ALERT_ID/STARTED_MS/open": the same for every attempt, every leader and
 * every webhook, so a receiver can drop duplicates. */
void kp_webhook_delivery_id(const struct kp_alert *a, int event, char *out, size_t len);

/* The body of @event (enum kp_alert_event) of @a for a webhook of @kind,
 * NUL-terminated, from kp_malloc; *@len its length. NULL when out of
 * memory. */
char *kp_webhook_body(int kind, const struct kp_alert *a, int event, size_t *len);

/* "sha256=" and the hex HMAC-SHA256 of @body under @secret: the
 * X-Keyplane-Signature header's value. KP_OK or KP_EIO. */
int kp_webhook_signature(const char *secret, const void *body, size_t len, char out[72]);

/* How long to wait after failed attempt @attempt (1, 2, ...): backoff_ms
 * doubling, at most an hour. */
int64_t kp_webhook_backoff(const struct kp_webhook_target *t, unsigned attempt);

#endif

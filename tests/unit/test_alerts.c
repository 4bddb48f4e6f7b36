/* Unit tests of the alert rules and webhook deliveries (node/alerts.h):
 * the rules as a pure function of a registry view, a clock and what the
 * leader knows of the members (budget thresholds, burn rate, invalid keys,
 * pools without a usable key, nodes down, spools and meters, per-key error
 * rates and 429s, key balances), the commands that reconcile the registry with them,
 * the per-key outcome window a node reports, the report's parsing, and
 * what a webhook receives: the checks of a webhook entity, both body
 * shapes, the delivery id, the signature and the retry schedule. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "alerts.h"
#include "balance.h"

#define DAY     86400000LL
#define HOUR    3600000LL
#define T0      1767225600000LL /* 2026-01-01T00:00:00Z */
#define DOLLARS 1000000000LL

/* --- a registry to evaluate --------------------------------------------------- */

static struct kp_fsm *fsm;
static uint64_t next_index;
static int64_t ts;
static struct kp_alert_plan plan;

static void apply(enum kp_op op, void *body)
{
    struct kp_command c = {
        .v = 1, .op = op, .ts = ts, .audit = {.actor = (char *)"test"}, .body.any = body};
    struct kp_buf b;
    struct kp_fsm_result res;
    char err[256];
    kp_buf_init(&b);
    assert_int_equal(kp_command_encode(&c, &b, err, sizeof(err)), KP_OK);
    assert_int_equal(kp_fsm_apply(fsm, ++next_index, b.data, b.len, &res), KP_OK);
    if (res.code != KP_OK)
        fail_msg("%s: %s", kp_op_name(op), res.message);
    kp_buf_free(&b);
}

static int setup(void **state)
{
    (void)state;
    fsm = kp_fsm_new();
    next_index = 0;
    ts = T0;
    memset(&plan, 0, sizeof(plan));
    return fsm == NULL;
}

static int teardown(void **state)
{
    (void)state;
    kp_fsm_free(fsm);
    kp_alert_plan_free(&plan);
    return 0;
}

static void put_provider(void)
{
    struct kp_provider p = {
        .e.id = (char *)"openai", .kind = KP_PROVIDER_OPENAI, .base_url = (char *)"https://x"};
    apply(KP_OP_PUT_PROVIDER, &p);
}

static void put_key(const char *id, bool with_secret)
{
    struct kp_key k = {.e.id = (char *)id, .provider = (char *)"openai"};
    apply(KP_OP_PUT_KEY, &k);
    if (!with_secret)
        return;
    char fp[64];
    snprintf(fp, sizeof(fp), "sha256:%s", id);
    struct kp_cmd_add_secret s = {
        .id = (char *)id, .version = 1, .sealed = {(uint8_t *)"x", 1}, .fingerprint = fp};
    apply(KP_OP_ADD_KEY_SECRET, &s);
}

static void set_health(const char *key, int status, const char *cls)
{
    struct kp_key_health h = {
        .e.id = (char *)key, .status = (uint8_t)status, .last_error_class = (char *)cls};
    apply(KP_OP_SET_KEY_HEALTH, &h);
}

static void put_policy(const char *id, int kind, kp_nanousd limit)
{
    struct kp_budget b = {.name = (char *)"daily",
                          .window = KP_BUDGET_DAILY,
                          .limit_nanousd = limit,
                          .kind = (uint8_t)kind};
    struct kp_policy p = {
        .e.id = (char *)id, .scope_kind = KP_SCOPE_GLOBAL, .budgets = &b, .nbudgets = 1};
    apply(KP_OP_PUT_POLICY, &p);
}

static uint64_t lease_seq;

/* Settle @spent against the policy's daily budget at the current ts. */
static void spend(const char *policy, kp_nanousd spent)
{
    struct kp_budget_window_def daily = {.kind = KP_BUDGET_DAILY};
    struct kp_lease_item it = {.policy = (char *)policy,
                               .budget = (char *)"daily",
                               .window_start_ms = kp_budget_window_def_start(&daily, ts),
                               .settled = spent};
    struct kp_cmd_budget_lease l = {7, ++lease_seq, &it, 1};
    apply(KP_OP_BUDGET_LEASE, &l);
}

static void put_rule(const char *id, const char *kind, const char *k1, const char *v1,
                     const char *k2, const char *v2)
{
    struct kp_strpair pa[2] = {{(char *)k1, (char *)v1}, {(char *)k2, (char *)v2}};
    if (k2 != NULL && strcmp(k1, k2) > 0) {
        struct kp_strpair t = pa[0];
        pa[0] = pa[1];
        pa[1] = t;
    }
    struct kp_alert_rule r = {.e.id = (char *)id,
                              .kind = (char *)kind,
                              .params = {pa, k1 == NULL ? 0
                                             : k2       ? 2
                                                        : 1}};
    apply(KP_OP_PUT_ALERT_RULE, &r);
}

/* Evaluate at @now with @members. */
static void eval_at(int64_t now, const struct kp_alert_member *members, size_t n)
{
    struct kp_view *v = kp_fsm_view_build(fsm);
    assert_non_null(v);
    assert_int_equal(kp_alert_rules_eval(v, now, members, n, NULL, &plan), KP_OK);
    kp_view_release(v);
}

static const struct kp_alert_want *find(const char *id)
{
    for (size_t i = 0; i < plan.n; i++) {
        if (strcmp(plan.v[i].id, id) == 0)
            return &plan.v[i];
    }
    return NULL;
}

static size_t wanted(void)
{
    size_t n = 0;
    for (size_t i = 0; i < plan.n; i++)
        n += !plan.v[i].hold;
    return n;
}

/* --- budgets -------------------------------------------------------------------------- */

/* A soft budget that spent 85% of its limit wants the 50% (info) and 80%
 * (warning) alerts, one id per (policy, budget, window, threshold), and
 * 100% once it passes it; the next window wants none. */
static void test_budget_thresholds(void **state)
{
    (void)state;
    char id50[128], id80[128], id100[128];
    int64_t start = T0;
    put_policy("acme", KP_BUDGET_SOFT, 10 * DOLLARS);
    ts = T0 + 20 * HOUR;
    spend("acme", 85 * DOLLARS / 10);
    eval_at(ts, NULL, 0);
    snprintf(id50, sizeof(id50), "budget:acme:daily:%lld:50", (long long)start);
    snprintf(id80, sizeof(id80), "budget:acme:daily:%lld:80", (long long)start);
    snprintf(id100, sizeof(id100), "budget:acme:daily:%lld:100", (long long)start);
    assert_non_null(find(id50));
    assert_int_equal(find(id50)->severity, KP_ALERT_INFO);
    assert_int_equal(find(id80)->severity, KP_ALERT_WARNING);
    assert_null(find(id100));
    assert_int_equal(find(id80)->last_value, 85 * DOLLARS / 10);
    assert_non_null(strstr(find(id80)->message, "reached 80% of its $10.00 limit: $8.50 spent"));
    assert_non_null(strstr(find(id80)->message, "(soft, daily)"));
    spend("acme", 2 * DOLLARS);
    eval_at(ts, NULL, 0);
    assert_int_equal(find(id100)->severity, KP_ALERT_CRITICAL);
    assert_non_null(strstr(find(id100)->action, "a soft budget refuses nothing"));
    /* The next day's window has spent nothing. */
    eval_at(T0 + DAY + HOUR, NULL, 0);
    assert_int_equal(wanted(), 0);
}

/* An alert_rule of kind budget_threshold sets the percents, for one policy
 * or for all; enabled "false" turns the rule off. */
static void test_budget_threshold_rules(void **state)
{
    (void)state;
    char id[128];
    put_policy("acme", KP_BUDGET_HARD, 10 * DOLLARS);
    put_policy("beta", KP_BUDGET_HARD, 10 * DOLLARS);
    ts = T0 + 23 * HOUR;
    spend("acme", 3 * DOLLARS);
    spend("beta", 3 * DOLLARS);
    put_rule("r-all", "budget_threshold", "percents", "25, 90", NULL, NULL);
    put_rule("r-beta", "budget_threshold", "percents", "10", "policy", "beta");
    eval_at(ts, NULL, 0);
    snprintf(id, sizeof(id), "budget:acme:daily:%lld:25", (long long)T0);
    assert_non_null(find(id));
    snprintf(id, sizeof(id), "budget:acme:daily:%lld:50", (long long)T0);
    assert_null(find(id));
    snprintf(id, sizeof(id), "budget:beta:daily:%lld:10", (long long)T0);
    assert_non_null(find(id));
    snprintf(id, sizeof(id), "budget:beta:daily:%lld:25", (long long)T0);
    assert_null(find(id));
    assert_int_equal(wanted(), 2);
    put_rule("r-all", "budget_threshold", "enabled", "false", NULL, NULL);
    eval_at(ts, NULL, 0);
    assert_int_equal(wanted(), 1); /* beta's own rule still runs */
}

/* A budget's own `alert` actions add thresholds beside the rule's. */
static void test_budget_alert_actions(void **state)
{
    (void)state;
    char id[128];
    struct kp_budget_action acts[2] = {{.at_percent = 30, .action = KP_BUDGET_ACTION_ALERT},
                                       {.at_percent = 120, .action = KP_BUDGET_ACTION_ALERT}};
    struct kp_budget b = {.name = (char *)"daily",
                          .window = KP_BUDGET_DAILY,
                          .limit_nanousd = 10 * DOLLARS,
                          .kind = KP_BUDGET_SOFT,
                          .actions = acts,
                          .nactions = 2};
    struct kp_policy p = {
        .e.id = (char *)"acme", .scope_kind = KP_SCOPE_GLOBAL, .budgets = &b, .nbudgets = 1};
    apply(KP_OP_PUT_POLICY, &p);
    ts = T0 + 20 * HOUR;
    spend("acme", 35 * DOLLARS / 10);
    eval_at(ts, NULL, 0);
    snprintf(id, sizeof(id), "budget:acme:daily:%lld:30", (long long)T0);
    assert_non_null(find(id));
    assert_int_equal(wanted(), 1); /* not yet 50% */
    spend("acme", 9 * DOLLARS);
    eval_at(ts, NULL, 0);
    snprintf(id, sizeof(id), "budget:acme:daily:%lld:120", (long long)T0);
    assert_non_null(find(id));
    assert_int_equal(wanted(), 5); /* 30, 50, 80, 100, 120 */
}

/* Burn rate: $5 spent in the first 6 hours of a $10 day runs out at
 * 12:00, before the day ends: a warning naming that time. The same spend
 * at 18:00 projects $6.67: nothing. */
static void test_burn_rate(void **state)
{
    (void)state;
    char id[128];
    put_policy("acme", KP_BUDGET_HARD, 10 * DOLLARS);
    put_rule("no-thr", "budget_threshold", "enabled", "false", NULL, NULL);
    ts = T0 + 6 * HOUR;
    spend("acme", 5 * DOLLARS);
    eval_at(ts, NULL, 0);
    snprintf(id, sizeof(id), "burn:acme:daily:%lld", (long long)T0);
    const struct kp_alert_want *w = find(id);
    assert_non_null(w);
    assert_int_equal(w->severity, KP_ALERT_WARNING);
    assert_int_equal(w->last_value, T0 + 12 * HOUR);
    assert_non_null(strstr(w->message, "run out at 2026-01-01T12:00Z, before its window ends at "
                                       "2026-01-02T00:00Z"));
    eval_at(T0 + 18 * HOUR, NULL, 0);
    assert_null(find(id));
    /* Below min_spent_percent (10%): too early to tell. */
    put_rule("burn", "burn_rate", "min_spent_percent", "60", NULL, NULL);
    eval_at(ts, NULL, 0);
    assert_null(find(id));
}

/* --- keys and pools ----------------------------------------------------------------- */

/* An invalid key wants a critical alert whose action says to rotate it,
 * naming the 401 and since when; quota_exhausted another; a disabled key
 * none. */
static void test_key_invalid(void **state)
{
    (void)state;
    put_provider();
    put_key("k-prod-3", true);
    put_key("k2", true);
    ts = T0 + 10 * HOUR + 42 * 60000;
    set_health("k-prod-3", KP_HEALTH_INVALID, "auth");
    set_health("k2", KP_HEALTH_QUOTA_EXHAUSTED, "quota");
    eval_at(ts + 60000, NULL, 0);
    const struct kp_alert_want *w = find("key:k-prod-3:invalid");
    assert_non_null(w);
    assert_int_equal(w->severity, KP_ALERT_CRITICAL);
    assert_int_equal(w->rule, KP_RULE_KEY_INVALID);
    assert_string_equal(w->subject, "key k-prod-3");
    assert_non_null(strstr(w->action, "rotate key k-prod-3: provider answered 401 since 10:42Z"));
    assert_non_null(find("key:k2:quota_exhausted"));
    /* Another day: the date is named. */
    eval_at(ts + DAY, NULL, 0);
    assert_non_null(strstr(find("key:k-prod-3:invalid")->message, "since 2026-01-01T10:42Z"));
    struct kp_cmd_key_status st = {(char *)"k2", KP_KEY_DISABLED};
    apply(KP_OP_SET_KEY_STATUS, &st);
    eval_at(ts, NULL, 0);
    assert_null(find("key:k2:quota_exhausted"));
    set_health("k-prod-3", KP_HEALTH_HEALTHY, NULL);
    eval_at(ts, NULL, 0);
    assert_null(find("key:k-prod-3:invalid"));
}

/* Evaluate at @now with what the meter said of key k (NULL: nothing). */
static void eval_spend(int64_t now, const struct kp_alert_key_spend *k)
{
    struct kp_alert_spends sp = {k, k != NULL};
    struct kp_view *v = kp_fsm_view_build(fsm);
    assert_non_null(v);
    assert_int_equal(kp_alert_rules_eval(v, now, NULL, 0, k != NULL ? &sp : NULL, &plan), KP_OK);
    kp_view_release(v);
}

/* key_balance: without the meter's answer for the balance's since_ms the
 * rule holds; a balance with room and a slow burn wants nothing; below 10%
 * of the credit (or below_usd) or projected to run out within
 * within_hours it warns with the time; spent, it is critical; enabled
 * false turns it off. */
static void test_key_balance(void **state)
{
    (void)state;
    put_provider();
    put_key("k", true);
    struct kp_cmd_set_balance set = {.id = (char *)"k", .credit = 10 * DOLLARS, .since_ms = T0};
    apply(KP_OP_SET_KEY_BALANCE, &set);
    int64_t now = T0 + 2 * DAY + 10 * HOUR;
    eval_spend(now, NULL);
    assert_true(find("key_balance:k")->hold);
    struct kp_alert_key_spend k = {.key = "k", .since_ms = T0 + 1};
    eval_spend(now, &k);
    assert_true(find("key_balance:k")->hold); /* an answer for another since */

    k.since_ms = T0;
    k.spend = (struct kp_balance_spend){5 * DOLLARS, DOLLARS / 10, now - DAY};
    eval_spend(now, &k);
    assert_null(find("key_balance:k"));

    /* $0.50 left: below 10% of $10. */
    k.spend.spent = 9 * DOLLARS + DOLLARS / 2;
    eval_spend(now, &k);
    const struct kp_alert_want *w = find("key_balance:k");
    assert_non_null(w);
    assert_false(w->hold);
    assert_int_equal(w->severity, KP_ALERT_WARNING);
    assert_int_equal(w->rule, KP_RULE_KEY_BALANCE);
    assert_int_equal(w->last_value, DOLLARS / 2);
    assert_string_equal(w->subject, "key k");
    /* $0.10 a day: $0.50 lasts 5 days, 2026-01-08T10:00Z. */
    assert_string_equal(w->action, "top up key k: $0.500000 left, runs out around "
                                   "2026-01-08T10:00Z at the last day's rate (clusterctl keys "
                                   "balance k --topup USD --note TEXT)");

    /* $5 left, but $5 spent in the last day: out in 24 hours. */
    k.spend = (struct kp_balance_spend){5 * DOLLARS, 5 * DOLLARS, now - DAY};
    eval_spend(now, &k);
    w = find("key_balance:k");
    assert_non_null(w);
    assert_int_equal(w->severity, KP_ALERT_WARNING);
    assert_non_null(strstr(w->message, "key k has $5.00 left of $10.00 credited since "
                                       "2026-01-01T00:00Z ($5.00 spent); at the last day's rate "
                                       "it runs out around 2026-01-04T10:00Z"));
    put_rule("bal", "key_balance", "within_hours", "12", NULL, NULL);
    eval_spend(now, &k);
    assert_null(find("key_balance:k"));
    put_rule("bal", "key_balance", "below_usd", "5.01", "within_hours", "12");
    eval_spend(now, &k);
    assert_non_null(find("key_balance:k"));

    /* Spent: critical. */
    k.spend = (struct kp_balance_spend){10 * DOLLARS + 1, DOLLARS, now - DAY};
    eval_spend(now, &k);
    w = find("key_balance:k");
    assert_int_equal(w->severity, KP_ALERT_CRITICAL);
    assert_int_equal(w->last_value, -1);
    assert_non_null(strstr(w->action, "top up key k: its $10.00 credit is spent"));

    put_rule("bal", "key_balance", "enabled", "false", NULL, NULL);
    eval_spend(now, &k);
    assert_null(find("key_balance:k"));
}

/* What a provider's balance endpoint says, read through a JSON pointer:
 * numbers and numeric strings in dollars, a used amount subtracted, and
 * clear refusals for what is not there. */
static void test_provider_balance_parse(void **state)
{
    (void)state;
    kp_nanousd v = 0;
    char err[160];
    static const char deepseek[] = "{\"is_available\":true,\"balance_infos\":[{\"currency\":"
                                   "\"USD\",\"total_balance\":\"110.25\"}]}";
    assert_int_equal(kp_balance_from_provider(deepseek, sizeof(deepseek) - 1,
                                              "/balance_infos/0/total_balance", NULL, &v, err,
                                              sizeof(err)),
                     KP_OK);
    assert_int_equal(v, 110250000000);
    static const char openrouter[] = "{\"data\":{\"total_credits\":15,\"total_usage\":2.5}}";
    assert_int_equal(kp_balance_from_provider(openrouter, sizeof(openrouter) - 1,
                                              "/data/total_credits", "/data/total_usage", &v, err,
                                              sizeof(err)),
                     KP_OK);
    assert_int_equal(v, 12500000000);
    static const char odd[] = "{\"a/b\":{\"c~d\":\"-1.5\"}}"; /* RFC 6901 escapes */
    assert_int_equal(
        kp_balance_from_provider(odd, sizeof(odd) - 1, "/a~1b/c~0d", NULL, &v, err, sizeof(err)),
        KP_OK);
    assert_int_equal(v, -1500000000);
    assert_int_equal(kp_balance_from_provider(deepseek, sizeof(deepseek) - 1,
                                              "/balance_infos/1/total_balance", NULL, &v, err,
                                              sizeof(err)),
                     KP_EPARSE);
    assert_non_null(strstr(err, "no amount in dollars at /balance_infos/1/total_balance"));
    assert_int_equal(kp_balance_from_provider(deepseek, sizeof(deepseek) - 1, "/is_available", NULL,
                                              &v, err, sizeof(err)),
                     KP_EPARSE);
    assert_int_equal(kp_balance_from_provider("nope", 4, "/a", NULL, &v, err, sizeof(err)),
                     KP_EPARSE);
    assert_non_null(strstr(err, "not JSON"));

    assert_true(kp_balance_parse_usd("9000000000.5", false, &v));
    assert_int_equal(v, INT64_C(9000000000500000000));
    assert_false(kp_balance_parse_usd("9000000001", false, &v)); /* would not fit */
    assert_false(kp_balance_parse_usd("99999999999", false, &v));
    assert_false(kp_balance_parse_usd("-1", false, &v));
    assert_false(kp_balance_parse_usd("1.0000000001", false, &v));
    assert_false(kp_balance_parse_usd(".", false, &v));
    assert_true(kp_balance_parse_usd(".5", false, &v));
    assert_int_equal(v, 500000000);
}

/* A key with no recorded credit whose provider reported its balance: the
 * rule alerts at zero (critical) and below below_usd (warning). */
static void test_key_balance_from_provider(void **state)
{
    (void)state;
    put_provider();
    put_key("p", true);
    struct kp_key_health h = {.e.id = (char *)"p",
                              .status = KP_HEALTH_HEALTHY,
                              .last_canary_ms = T0,
                              .last_canary_result = (char *)"ok",
                              .provider_balance_ms = T0,
                              .provider_balance = 3 * DOLLARS};
    apply(KP_OP_SET_KEY_HEALTH, &h);
    int64_t now = T0 + HOUR;
    eval_spend(now, NULL);
    assert_null(find("key_balance:p"));
    put_rule("bal", "key_balance", "below_usd", "5", NULL, NULL);
    eval_spend(now, NULL);
    const struct kp_alert_want *w = find("key_balance:p");
    assert_non_null(w);
    assert_false(w->hold);
    assert_int_equal(w->severity, KP_ALERT_WARNING);
    assert_non_null(strstr(w->message, "its provider reports $3.00 left"));
    h.provider_balance = 0;
    h.last_canary_ms = T0 + 1;
    apply(KP_OP_SET_KEY_HEALTH, &h);
    eval_spend(now, NULL);
    assert_int_equal(find("key_balance:p")->severity, KP_ALERT_CRITICAL);
}

/* A pool whose every key is disabled, revoked, without a secret, invalid,
 * out of quota or frozen wants a critical alert; one usable key is
 * enough. */
static void test_pool_no_key(void **state)
{
    (void)state;
    put_provider();
    put_key("k1", true);
    put_key("k2", false);
    struct kp_pool_member m[2] = {{(char *)"k1", 1, 0}, {(char *)"k2", 1, 0}};
    struct kp_pool p = {.e.id = (char *)"main", .members = m, .nmembers = 2};
    apply(KP_OP_PUT_POOL, &p);
    eval_at(ts, NULL, 0);
    assert_null(find("pool:main:no_key"));
    set_health("k1", KP_HEALTH_INVALID, "auth");
    eval_at(ts, NULL, 0);
    const struct kp_alert_want *w = find("pool:main:no_key");
    assert_non_null(w);
    assert_int_equal(w->severity, KP_ALERT_CRITICAL);
    assert_non_null(strstr(w->message, "k1 invalid, k2 no secret"));
    assert_non_null(strstr(w->message, "its calls fail with 503"));
    set_health("k1", KP_HEALTH_HEALTHY, NULL);
    eval_at(ts, NULL, 0);
    assert_null(find("pool:main:no_key"));
}

/* --- members ---------------------------------------------------------------------- */

/* A member out of contact beyond after_seconds wants node_down; in
 * contact wants nothing; out of contact for less, or unknown, holds. A
 * member without a fresh report holds its spool and meter alerts; one
 * with a full spool or segments waiting too long wants them. */
static void test_members(void **state)
{
    (void)state;
    struct kp_alert_report full = {.have = true,
                                   .spool_bytes = 900,
                                   .spool_cap_bytes = 1000,
                                   .spool_waiting = 3,
                                   .oldest_unshipped_ms = 400000};
    struct kp_alert_report fine = {.have = true, .spool_bytes = 10, .spool_cap_bytes = 1000};
    struct kp_alert_member m[4] = {
        {"n1", 1, 0, &fine},
        {"n2", 2, 45000, NULL},
        {"n3", 3, 5000, &full},
        {"n4", 4, -1, NULL},
    };
    eval_at(ts, m, 4);
    assert_null(find("node:n1:down"));
    assert_null(find("node:n1:spool"));
    const struct kp_alert_want *w = find("node:n2:down");
    assert_non_null(w);
    assert_false(w->hold);
    assert_int_equal(w->severity, KP_ALERT_CRITICAL);
    assert_non_null(strstr(w->message, "has not answered the Raft leader for 45s"));
    assert_true(find("node:n3:down")->hold);
    assert_true(find("node:n4:down")->hold);
    assert_true(find("node:n2:spool")->hold);
    assert_true(find("node:n2:meter_lag")->hold);
    assert_false(find("node:n3:spool")->hold);
    assert_int_equal(find("node:n3:spool")->last_value, 90);
    assert_false(find("node:n3:meter_lag")->hold);
    put_rule("down", "node_down", "after_seconds", "60", NULL, NULL);
    put_rule("spool", "spool_filling", "percent", "95", NULL, NULL);
    eval_at(ts, m, 4);
    assert_true(find("node:n2:down")->hold);
    assert_null(find("node:n3:spool"));
}

/* Per-key counts are summed over the reports: a key over the error rate
 * (with enough attempts) or over the 429s per minute wants an alert. With
 * a report missing the counts are partial: open alerts of those rules
 * hold. */
static void test_key_stats(void **state)
{
    (void)state;
    struct kp_alert_key_stats s1[] = {{"k1", 30, 20, 0, 0, 0}, {"k2", 10, 0, 25, 0, 0}};
    struct kp_alert_key_stats s2[] = {
        {"k1", 10, 5, 0, 0, 0}, {"k2", 10, 0, 10, 0, 0}, {"k3", 5, 5, 0, 0, 0}};
    struct kp_alert_report r1 = {.have = true, .keys = s1, .nkeys = 2};
    struct kp_alert_report r2 = {.have = true, .keys = s2, .nkeys = 3};
    struct kp_alert_member m[2] = {{"n1", 1, 0, &r1}, {"n2", 2, 0, &r2}};
    eval_at(ts, m, 2);
    const struct kp_alert_want *w = find("key:k1:error_rate");
    assert_non_null(w);
    assert_int_equal(w->last_value, 62);    /* 25 of 40 */
    assert_null(find("key:k3:error_rate")); /* 5 attempts: below min_attempts */
    assert_int_equal(find("key:k2:rate_limited")->last_value, 35);
    assert_null(find("key:k1:rate_limited"));

    /* Make k2's alert open, then lose n2's report: it holds. */
    struct kp_alert open = {.e.id = (char *)"key:k2:rate_limited",
                            .severity = KP_ALERT_WARNING,
                            .rule = (char *)"key_rate_limited",
                            .subject = (char *)"key k2",
                            .message = (char *)"m",
                            .action = (char *)"a"};
    apply(KP_OP_PUT_ALERT, &open);
    m[1].report = NULL;
    eval_at(ts, m, 2);
    assert_true(find("key:k2:rate_limited")->hold);
    assert_non_null(find("key:k1:error_rate")); /* 20 of 30 from n1 alone */
}

/* Reconcile: open what is wanted and not open, update a changed severity,
 * resolve what is open and neither wanted nor held, leave the rest. */
static void test_reconcile(void **state)
{
    (void)state;
    put_provider();
    put_key("k1", true);
    put_key("k2", true);
    set_health("k1", KP_HEALTH_INVALID, "auth");
    struct kp_alert a = {.e.id = (char *)"node:gone:down",
                         .severity = KP_ALERT_CRITICAL,
                         .rule = (char *)"node_down",
                         .subject = (char *)"s",
                         .message = (char *)"m",
                         .action = (char *)"a"};
    apply(KP_OP_PUT_ALERT, &a);
    a.e.id = (char *)"node:n9:down"; /* held below */
    apply(KP_OP_PUT_ALERT, &a);
    a.e.id = (char *)"key:k1:invalid";
    a.severity = KP_ALERT_WARNING; /* the rule says critical */
    apply(KP_OP_PUT_ALERT, &a);
    struct kp_alert_member m = {"n9", 9, 1000, NULL};
    eval_at(ts, &m, 1);
    struct kp_view *v = kp_fsm_view_build(fsm);
    struct kp_alert_step steps[8];
    size_t n = kp_alert_reconcile(v, &plan, steps, 8);
    assert_int_equal(n, 2);
    assert_false(steps[0].resolve);
    assert_string_equal(steps[0].want->id, "key:k1:invalid");
    assert_true(steps[1].resolve);
    assert_string_equal(steps[1].alert->e.id, "node:gone:down");
    assert_int_equal(kp_alert_reconcile(v, &plan, steps, 1), 1);
    kp_view_release(v);
}

/* --- reports and outcome windows --------------------------------------------------- */

/* The window reports what happened since the sample at its start (or
 * since the oldest sample on a young node); client errors are attempts,
 * not errors; 429s count as errors and as rate limited. */
static void test_outcome_window(void **state)
{
    (void)state;
    static struct kp_outcome_window w;
    int64_t t = T0;
    memset(&w, 0, sizeof(w));
    for (int i = 0; i <= 60; i++, t += 10000) {
        kp_outcome_window_begin(&w);
        /* k1: 1 ok per 10 s; from t = 300 s on also one 429 per 10 s. */
        kp_outcome_window_add(&w, "k1", "ok", (uint64_t)i + 1);
        kp_outcome_window_add(&w, "k1", "client", 2);
        if (i >= 30)
            kp_outcome_window_add(&w, "k1", "rate_limit", (uint64_t)(i - 29));
        kp_outcome_window_sample(&w, t);
    }
    t -= 10000;
    struct kp_outcome_counts c5 = kp_outcome_window_span(&w, 0, t, 300000);
    assert_int_equal(c5.attempts, 30 + 30);
    assert_int_equal(c5.errors, 30);
    assert_int_equal(c5.rate_limited, 30);
    struct kp_outcome_counts c1 = kp_outcome_window_span(&w, 0, t, 60000);
    assert_int_equal(c1.rate_limited, 6);
    /* A young window: since its first sample. */
    memset(&w, 0, sizeof(w));
    kp_outcome_window_begin(&w);
    kp_outcome_window_add(&w, "k9", "server", 4);
    kp_outcome_window_sample(&w, T0);
    kp_outcome_window_begin(&w);
    kp_outcome_window_add(&w, "k9", "server", 10);
    kp_outcome_window_sample(&w, T0 + 1000); /* too soon: not kept */
    c5 = kp_outcome_window_span(&w, 0, T0 + 1000, 300000);
    assert_int_equal(c5.errors, 6);
    assert_int_equal(w.n, 1);
}

/* A node's report parses; keys that are not ids are dropped; a body that
 * is not a report is refused. */
static void test_report_json(void **state)
{
    (void)state;
    struct kp_alert_report r;
    json_t *v = json_loads("{\"node\":\"n1\",\"spool_bytes\":5,\"spool_cap_bytes\":10,"
                           "\"spool_segments_waiting\":2,\"oldest_unshipped_ms\":7000,"
                           "\"keys\":[{\"key\":\"k1\",\"attempts_5m\":9,\"errors_5m\":3,"
                           "\"rate_limited_1m\":1},{\"key\":\"bad key\"}]}",
                           0, NULL);
    assert_int_equal(kp_alert_report_from_json(v, &r), KP_OK);
    assert_true(r.have);
    assert_int_equal(r.spool_cap_bytes, 10);
    assert_int_equal(r.oldest_unshipped_ms, 7000);
    assert_int_equal(r.nkeys, 1);
    assert_string_equal(r.keys[0].key, "k1");
    assert_int_equal(r.keys[0].errors_5m, 3);
    kp_alert_report_free(&r);
    json_decref(v);
    v = json_loads("[1]", 0, NULL);
    assert_int_equal(kp_alert_report_from_json(v, &r), KP_EPARSE);
    json_decref(v);
}

/* Rule params are checked before a rule is stored. */
static void test_rule_check(void **state)
{
    (void)state;
    char err[256];
    struct kp_strpair ok[] = {{(char *)"percents", (char *)"50,80,100"},
                              {(char *)"policy", (char *)"acme"}};
    struct kp_strmap m = {ok, 2};
    assert_int_equal(kp_alert_rule_check("budget_threshold", &m, err, sizeof(err)), KP_OK);
    struct kp_strpair bad[] = {{(char *)"percents", (char *)"80,80"}};
    m = (struct kp_strmap){bad, 1};
    assert_int_equal(kp_alert_rule_check("budget_threshold", &m, err, sizeof(err)), KP_EINVAL);
    assert_non_null(strstr(err, "params.percents:"));
    assert_int_equal(kp_alert_rule_check("node_down", &m, err, sizeof(err)), KP_EINVAL);
    assert_string_equal(err, "params.percents: not a param of rule kind node_down");
    struct kp_strpair secs[] = {{(char *)"after_seconds", (char *)"0"}};
    m = (struct kp_strmap){secs, 1};
    assert_int_equal(kp_alert_rule_check("node_down", &m, err, sizeof(err)), KP_EINVAL);
    assert_string_equal(err, "params.after_seconds: an integer from 1 to 86400");
    struct kp_strpair bal[] = {{(char *)"below_usd", (char *)"2.50"},
                               {(char *)"within_hours", (char *)"48"}};
    m = (struct kp_strmap){bal, 2};
    assert_int_equal(kp_alert_rule_check("key_balance", &m, err, sizeof(err)), KP_OK);
    bal[0].value = (char *)"$2";
    assert_int_equal(kp_alert_rule_check("key_balance", &m, err, sizeof(err)), KP_EINVAL);
    assert_non_null(strstr(err, "params.below_usd:"));
    assert_int_equal(kp_alert_rule_check("budget", NULL, err, sizeof(err)), KP_EINVAL);
    assert_non_null(strstr(err, "kind: must be one of budget_threshold, burn_rate"));
}

/* --- webhooks -------------------------------------------------------------------------- */

static int check_hook(const char *kind, const char *url, const char *insecure, const char *secret,
                      char *err)
{
    struct kp_strpair p[3];
    uint32_t n = 0;
    if (insecure)
        p[n++] = (struct kp_strpair){(char *)"allow_insecure", (char *)insecure};
    if (secret)
        p[n++] = (struct kp_strpair){(char *)"secret", (char *)secret};
    p[n++] = (struct kp_strpair){(char *)"url", (char *)url};
    struct kp_strmap m = {p, n};
    return kp_webhook_check(kind, &m, NULL, err, 256);
}

/* https anywhere; http and loopback hosts only with allow_insecure;
 * credentials in the url refused, never quoted back; secrets of 16 to 256
 * bytes. */
static void test_webhook_check(void **state)
{
    (void)state;
    char err[256];
    assert_int_equal(check_hook("generic", "https://hooks.example/x", NULL, NULL, err), KP_OK);
    assert_int_equal(check_hook("slack", "https://hooks.slack.com/services/T/B/C", NULL, NULL, err),
                     KP_OK);
    assert_int_equal(check_hook("teams", "https://x", NULL, NULL, err), KP_EINVAL);
    assert_string_equal(err, "kind: must be generic or slack");
    assert_int_equal(check_hook("generic", "http://hooks.example/x", NULL, NULL, err), KP_EINVAL);
    assert_non_null(strstr(err, "http:// needs allow_insecure"));
    assert_int_equal(check_hook("generic", "https://127.0.0.1:9/x", NULL, NULL, err), KP_EINVAL);
    assert_non_null(strstr(err, "loopback host needs allow_insecure"));
    assert_int_equal(check_hook("generic", "http://127.0.0.1:9/x", "true", NULL, err), KP_OK);
    assert_int_equal(check_hook("generic", "https://user:pw@hooks.example/", NULL, NULL, err),
                     KP_EINVAL);
    assert_null(strstr(err, "pw"));
    assert_int_equal(check_hook("generic", "https://x/y", NULL, "short", err), KP_EINVAL);
    assert_string_equal(err, "params.secret: 16 to 256 bytes");
    struct kp_strpair p[] = {{(char *)"colour", (char *)"red"},
                             {(char *)"url", (char *)"https://x"}};
    struct kp_strmap m = {p, 2};
    assert_int_equal(kp_webhook_check("generic", &m, NULL, err, sizeof(err)), KP_EINVAL);
    assert_non_null(strstr(err, "params.colour: not a webhook param"));
    struct kp_strpair q[] = {{(char *)"backoff_ms", (char *)"200"},
                             {(char *)"max_attempts", (char *)"3"},
                             {(char *)"url", (char *)"https://x"}};
    struct kp_webhook_target t;
    m = (struct kp_strmap){q, 3};
    assert_int_equal(kp_webhook_check("generic", &m, &t, err, sizeof(err)), KP_OK);
    assert_int_equal(t.max_attempts, 3);
    assert_int_equal(kp_webhook_backoff(&t, 1), 200);
    assert_int_equal(kp_webhook_backoff(&t, 3), 800);
    m = (struct kp_strmap){&q[2], 1};
    assert_int_equal(kp_webhook_check("generic", &m, &t, err, sizeof(err)), KP_OK);
    assert_int_equal(t.max_attempts, 5);
    assert_int_equal(kp_webhook_backoff(&t, 1) + kp_webhook_backoff(&t, 2) +
                         kp_webhook_backoff(&t, 3) + kp_webhook_backoff(&t, 4),
                     120000); /* five tries over two minutes */
    assert_int_equal(kp_webhook_backoff(&t, 40), 3600000);
}

static struct kp_alert sample_alert(void)
{
    return (struct kp_alert){.e.id = (char *)"key:k-prod-3:invalid",
                             .severity = KP_ALERT_CRITICAL,
                             .rule = (char *)"key_invalid",
                             .subject = (char *)"key k-prod-3",
                             .message = (char *)"key k-prod-3 (provider openai) is invalid",
                             .action = (char *)"rotate key k-prod-3: provider answered 401 since "
                                               "10:42Z",
                             .last_value = 5,
                             .started_ms = T0,
                             .acked_by = (char *)"tk_ops"};
}

/* The generic body holds the alert's fields, the event and the delivery
 * id; Slack's holds one text. A resolve says so in both. */
static void test_webhook_bodies(void **state)
{
    (void)state;
    struct kp_alert a = sample_alert();
    size_t len;
    char *s = kp_webhook_body(KP_WEBHOOK_GENERIC, &a, KP_ALERT_EVENT_OPEN, &len);
    json_t *v = json_loadb(s, len, 0, NULL);
    assert_non_null(v);
    assert_string_equal(json_string_value(json_object_get(v, "event")), "open");
    assert_string_equal(json_string_value(json_object_get(v, "delivery_id")),
                        "key:k-prod-3:invalid/1767225600000/open");
    assert_string_equal(json_string_value(json_object_get(v, "severity")), "critical");
    assert_string_equal(json_string_value(json_object_get(v, "state")), "open");
    assert_string_equal(json_string_value(json_object_get(v, "started_at")),
                        "2026-01-01T00:00:00.000Z");
    assert_true(json_is_null(json_object_get(v, "resolved_at")));
    assert_string_equal(json_string_value(json_object_get(v, "acked_by")), "tk_ops");
    assert_non_null(strstr(json_string_value(json_object_get(v, "action")), "rotate key"));
    json_decref(v);
    kp_free(s);

    a.resolved_ms = T0 + HOUR;
    s = kp_webhook_body(KP_WEBHOOK_SLACK, &a, KP_ALERT_EVENT_OPEN, &len);
    v = json_loadb(s, len, 0, NULL);
    assert_int_equal(json_object_size(v), 1);
    const char *text = json_string_value(json_object_get(v, "text"));
    assert_non_null(strstr(text, "[CRITICAL] key k-prod-3: key k-prod-3 (provider openai)"));
    assert_non_null(strstr(text, "Action: rotate key k-prod-3"));
    json_decref(v);
    kp_free(s);
    s = kp_webhook_body(KP_WEBHOOK_SLACK, &a, KP_ALERT_EVENT_RESOLVED, &len);
    v = json_loadb(s, len, 0, NULL);
    assert_non_null(
        strstr(json_string_value(json_object_get(v, "text")), "[RESOLVED] key k-prod-3"));
    json_decref(v);
    kp_free(s);
    char id[300];
    kp_webhook_delivery_id(&a, KP_ALERT_EVENT_RESOLVED, id, sizeof(id));
    assert_string_equal(id, "key:k-prod-3:invalid/1767225600000/resolved");
}

/* The signature is HMAC-SHA256 of the body under the secret, in hex
 * (RFC 4231-style check against a well-known vector). */
static void test_webhook_signature(void **state)
{
    (void)state;
    char sig[72];
    const char *msg = "The quick brown fox jumps over the lazy dog";
    assert_int_equal(kp_webhook_signature("key", msg, strlen(msg), sig), KP_OK);
    assert_string_equal(sig,
                        "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_budget_thresholds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_budget_threshold_rules, setup, teardown),
        cmocka_unit_test_setup_teardown(test_budget_alert_actions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_burn_rate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_invalid, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_balance, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_balance_from_provider, setup, teardown),
        cmocka_unit_test(test_provider_balance_parse),
        cmocka_unit_test_setup_teardown(test_pool_no_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_members, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_stats, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reconcile, setup, teardown),
        cmocka_unit_test(test_outcome_window),
        cmocka_unit_test(test_report_json),
        cmocka_unit_test(test_rule_check),
        cmocka_unit_test(test_webhook_check),
        cmocka_unit_test(test_webhook_bodies),
        cmocka_unit_test(test_webhook_signature),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

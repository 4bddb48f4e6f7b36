/* The alert rules (docs/alerts.md): a pure function from a registry view,
 * the time and what the Raft leader knows of each member to the set of
 * alerts that should be open, and the commands that bring the registry's
 * alerts there.
 *
 * Each rule turns a condition into alerts with a stable id (the
 * deduplication key): the same condition gives the same id on every
 * evaluation and on every leader, so an alert opens once per episode
 * whoever evaluates. When a rule cannot tell (a node's report did not
 * arrive, a member was out of contact for less than the threshold) it
 * *holds*: an open alert stays open, none is opened. That is how a new
 * leader, which has no reports yet, neither resolves what the old one
 * opened nor opens it twice.
 *
 * An open alert is updated only when its severity changes: its message and
 * action are written when it opens (they quote the numbers of that
 * moment), so that an evaluation every few seconds does not become a Raft
 * entry every few seconds.
 *
 * Rules are configured by alert_rule entities of the rule's kind (params
 * below, checked by kp_alert_rule_check before they are stored); without
 * one, a rule runs with its defaults. enabled: "false" turns a rule off
 * (its open alerts then resolve). For budget_threshold and burn_rate, a
 * rule with a "policy" param applies to that policy and wins over one
 * without; otherwise the rule with the smallest id wins. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alerts.h"
#include "core/core.h"

static const char *const rule_names[KP_RULE_COUNT] = {
#define RULE_NAME(e, name) [KP_RULE_##e] = name,
    KP_ALERT_RULE_MAP(RULE_NAME)
#undef RULE_NAME
};

const char *kp_alert_rule_name(int kind)
{
    return kind >= 0 && kind < KP_RULE_COUNT ? rule_names[kind] : NULL;
}

static int rule_kind(const char *name)
{
    for (int k = 0; k < KP_RULE_COUNT; k++) {
        if (strcmp(rule_names[k], name) == 0)
            return k;
    }
    return -1;
}

/* --- rule configuration -------------------------------------------------------------- */

/* A numeric param: name, range, default. */
struct param_spec {
    const char *name;
    int64_t min, max, def;
};

enum { MAX_PARAMS = 4, MAX_PERCENTS = 10 };

/* The params each rule takes besides "enabled" (and "policy" for the budget
 * rules; "percents" for budget_threshold, a list). */
static const struct param_spec rule_params[KP_RULE_COUNT][MAX_PARAMS] = {
    [KP_RULE_BURN_RATE] = {{"min_spent_percent", 0, 100, 10}},
    [KP_RULE_NODE_DOWN] = {{"after_seconds", 1, 86400, 30}},
    [KP_RULE_SPOOL_FILLING] = {{"percent", 1, 100, 80}},
    [KP_RULE_METER_LAG] = {{"after_seconds", 1, 86400, 300}},
    [KP_RULE_KEY_ERROR_RATE] = {{"percent", 1, 100, 50}, {"min_attempts", 1, 1000000, 20}},
    [KP_RULE_KEY_RATE_LIMITED] = {{"per_minute", 1, 1000000, 30}},
    [KP_RULE_KEY_BALANCE] = {{"within_hours", 1, 8760, 24}},
};

static const char *param(const struct kp_strmap *m, const char *name)
{
    for (uint32_t i = 0; m != NULL && i < m->n; i++) {
        if (strcmp(m->v[i].key, name) == 0)
            return m->v[i].value;
    }
    return NULL;
}

static bool parse_int(const char *s, int64_t min, int64_t max, int64_t *out)
{
    char *end = NULL;
    if (s == NULL || *s == '\0' || *s == ' ' || *s == '+')
        return false;
    long long v = strtoll(s, &end, 10);
    if (*end != '\0' || v < min || v > max)
        return false;
    *out = v;
    return true;
}

/* "2.50" (at most 9 decimals, below 10^9 dollars) into nano-USD. */
static bool parse_usd(const char *s, int64_t *out)
{
    kp_nanousd v;
    if (s == NULL || !kp_balance_parse_usd(s, false, &v) || v >= INT64_C(1000000000000000000))
        return false;
    *out = v;
    return true;
}

/* "50,80,100" into ascending distinct percents 1..1000 (at most 10). */
static int parse_percents(const char *s, int *out)
{
    int n = 0;
    char buf[128];
    if (strlen(s) >= sizeof(buf))
        return -1;
    snprintf(buf, sizeof(buf), "%s", s);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok != NULL;
         tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ')
            tok++;
        size_t l = strlen(tok);
        while (l > 0 && tok[l - 1] == ' ')
            tok[--l] = '\0';
        int64_t v;
        if (n == MAX_PERCENTS || !parse_int(tok, 1, 1000, &v))
            return -1;
        int i = n++;
        while (i > 0 && out[i - 1] > v) {
            out[i] = out[i - 1];
            i--;
        }
        if (i > 0 && out[i - 1] == v)
            return -1;
        out[i] = (int)v;
    }
    return n > 0 ? n : -1;
}

static int check_fail(char *errmsg, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int check_fail(char *errmsg, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errmsg, errlen, fmt, ap);
    va_end(ap);
    return KP_EINVAL;
}

int kp_alert_rule_check(const char *kind, const struct kp_strmap *params, char *errmsg,
                        size_t errlen)
{
    int k = kind != NULL ? rule_kind(kind) : -1;
    if (k < 0) {
        char list[256] = "";
        for (int i = 0, used = 0; i < KP_RULE_COUNT; i++)
            used += snprintf(list + used, sizeof(list) - (size_t)used, "%s%s", i ? ", " : "",
                             rule_names[i]);
        return check_fail(errmsg, errlen, "kind: must be one of %s", list);
    }
    for (uint32_t i = 0; params != NULL && i < params->n; i++) {
        const char *name = params->v[i].key, *v = params->v[i].value;
        int64_t n;
        int pct[MAX_PERCENTS];
        if (strcmp(name, "enabled") == 0) {
            if (strcmp(v, "true") != 0 && strcmp(v, "false") != 0)
                return check_fail(errmsg, errlen, "params.enabled: must be \"true\" or \"false\"");
            continue;
        }
        if (strcmp(name, "policy") == 0 &&
            (k == KP_RULE_BUDGET_THRESHOLD || k == KP_RULE_BURN_RATE))
            continue;
        if (strcmp(name, "below_usd") == 0 && k == KP_RULE_KEY_BALANCE) {
            if (!parse_usd(v, &n))
                return check_fail(errmsg, errlen,
                                  "params.below_usd: dollars, a decimal with at most 9 places "
                                  "(\"2.50\")");
            continue;
        }
        if (strcmp(name, "percents") == 0 && k == KP_RULE_BUDGET_THRESHOLD) {
            if (parse_percents(v, pct) < 0)
                return check_fail(errmsg, errlen,
                                  "params.percents: a comma-separated list of 1 to %d distinct "
                                  "percents from 1 to 1000 (\"50,80,100\")",
                                  MAX_PERCENTS);
            continue;
        }
        const struct param_spec *spec = NULL;
        for (int j = 0; j < MAX_PARAMS && rule_params[k][j].name != NULL; j++) {
            if (strcmp(rule_params[k][j].name, name) == 0)
                spec = &rule_params[k][j];
        }
        if (spec == NULL)
            return check_fail(errmsg, errlen, "params.%s: not a param of rule kind %s", name,
                              rule_names[k]);
        if (!parse_int(v, spec->min, spec->max, &n))
            return check_fail(errmsg, errlen, "params.%s: an integer from %" PRId64 " to %" PRId64,
                              name, spec->min, spec->max);
    }
    return KP_OK;
}

/* The alert_rule entities, by id. */
struct rules {
    const struct kp_alert_rule **v;
    size_t n, cap;
};

static int collect_rule(const struct kp_entity *e, void *arg)
{
    struct rules *r = arg;
    if (r->n < r->cap)
        r->v[r->n++] = (const struct kp_alert_rule *)e;
    return 0;
}

static int cmp_entity_id(const void *a, const void *b)
{
    return strcmp((*(const struct kp_entity *const *)a)->id,
                  (*(const struct kp_entity *const *)b)->id);
}

/* The rule entity configuring @kind (for @policy, when given), or NULL. */
static const struct kp_alert_rule *rule_for(const struct rules *r, int kind, const char *policy)
{
    const struct kp_alert_rule *general = NULL;
    for (size_t i = 0; i < r->n; i++) {
        const struct kp_alert_rule *x = r->v[i];
        if (strcmp(x->kind, rule_names[kind]) != 0)
            continue;
        const char *p = param(&x->params, "policy");
        if (p == NULL && general == NULL)
            general = x;
        if (p != NULL && policy != NULL && strcmp(p, policy) == 0)
            return x;
    }
    return general;
}

static bool rule_enabled(const struct kp_alert_rule *x)
{
    const char *v = x != NULL ? param(&x->params, "enabled") : NULL;
    return v == NULL || strcmp(v, "false") != 0;
}

/* A numeric param of @kind's rule, or its default (also for a value that
 * no longer parses: rules are checked when stored). */
static int64_t rule_int(const struct kp_alert_rule *x, int kind, const char *name)
{
    for (int j = 0; j < MAX_PARAMS && rule_params[kind][j].name != NULL; j++) {
        const struct param_spec *s = &rule_params[kind][j];
        int64_t v;
        if (strcmp(s->name, name) != 0)
            continue;
        if (x != NULL && parse_int(param(&x->params, name), s->min, s->max, &v))
            return v;
        return s->def;
    }
    return 0;
}

/* --- formatting -------------------------------------------------------------------------- */

static void fmt_usd(kp_nanousd v, char *out, size_t len)
{
    double d = (double)v / 1e9;
    if (d >= 1.0 || d == 0.0)
        snprintf(out, len, "$%.2f", d);
    else
        snprintf(out, len, "$%.6f", d);
}

/* "10:42Z" on @now's UTC day, else "2026-11-30T10:42Z". */
static void fmt_since(int64_t ms, int64_t now, char *out, size_t len)
{
    char t[32];
    kp_format_time_ms(ms, t, sizeof(t));
    if (ms / 86400000 == now / 86400000)
        snprintf(out, len, "%.5sZ", t + 11);
    else
        snprintf(out, len, "%.16sZ", t);
}

/* "2026-12-01T00:00Z" */
static void fmt_minute(int64_t ms, char *out, size_t len)
{
    char t[32];
    kp_format_time_ms(ms, t, sizeof(t));
    snprintf(out, len, "%.16sZ", t);
}

static void fmt_duration(int64_t ms, char *out, size_t len)
{
    int64_t s = ms / 1000;
    if (s < 120)
        snprintf(out, len, "%" PRId64 "s", s);
    else if (s < 7200)
        snprintf(out, len, "%" PRId64 "m%02" PRId64 "s", s / 60, s % 60);
    else
        snprintf(out, len, "%" PRId64 "h%02" PRId64 "m", s / 3600, (s / 60) % 60);
}

static void fmt_bytes(uint64_t b, char *out, size_t len)
{
    if (b >= (1ull << 30))
        snprintf(out, len, "%.1f GiB", (double)b / (double)(1ull << 30));
    else if (b >= (1ull << 20))
        snprintf(out, len, "%.1f MiB", (double)b / (double)(1ull << 20));
    else
        snprintf(out, len, "%.1f KiB", (double)b / 1024.0);
}

/* --- the plan ---------------------------------------------------------------------------- */

struct eval {
    const struct kp_view *view;
    int64_t now;
    struct kp_alert_plan *out;
    struct rules rules;
    const struct kp_alert_spends *spends;
    int rc;
};

void kp_alert_plan_free(struct kp_alert_plan *p)
{
    kp_free(p->v);
    memset(p, 0, sizeof(*p));
}

/* A new entry of the plan, zeroed but for its rule and severity; NULL (and
 * e->rc set) when out of memory or at the bound. */
static struct kp_alert_want *want(struct eval *e, int rule, int severity)
{
    struct kp_alert_plan *p = e->out;
    if (e->rc != KP_OK || p->n >= KP_ALERTS_OPEN_MAX)
        return NULL;
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 16;
        struct kp_alert_want *v = kp_realloc(p->v, cap * sizeof(*v));
        if (v == NULL) {
            e->rc = KP_ENOMEM;
            return NULL;
        }
        p->v = v;
        p->cap = cap;
    }
    struct kp_alert_want *w = &p->v[p->n++];
    memset(w, 0, sizeof(*w));
    w->rule = (uint8_t)rule;
    w->severity = (uint8_t)severity;
    return w;
}

static void hold(struct eval *e, int rule, const char *id)
{
    struct kp_alert_want *w = want(e, rule, KP_ALERT_INFO);
    if (w != NULL) {
        snprintf(w->id, sizeof(w->id), "%s", id);
        w->hold = true;
    }
}

/* --- budgets ----------------------------------------------------------------------------- */

/* The usage filter that shows what a policy's budget covers. */
static void usage_hint(const struct kp_policy *p, char *out, size_t len)
{
    const char *dim = NULL;
    switch (p->scope_kind) {
    case KP_SCOPE_TENANT:
        dim = "tenant";
        break;
    case KP_SCOPE_PROJECT:
        dim = "project";
        break;
    case KP_SCOPE_KEY:
        dim = "key";
        break;
    case KP_SCOPE_FEATURE:
        dim = "feature";
        break;
    default:
        break;
    }
    if (dim != NULL && p->scope_target != NULL)
        snprintf(out, len, "clusterctl usage --group-by project,model --filter %s:%s", dim,
                 p->scope_target);
    else
        snprintf(out, len, "clusterctl usage --group-by tenant,project,model");
}

struct budget_now {
    const struct kp_policy *p;
    const struct kp_budget *b;
    int64_t start, end;
    kp_nanousd spent;
};

static void budget_threshold(struct eval *e, const struct budget_now *bn, int pct)
{
    const struct kp_budget *b = bn->b;
    int sev = pct >= 100 ? KP_ALERT_CRITICAL : pct >= 80 ? KP_ALERT_WARNING : KP_ALERT_INFO;
    struct kp_alert_want *w = want(e, KP_RULE_BUDGET_THRESHOLD, sev);
    if (w == NULL)
        return;
    char limit[32], spent[32], start[32], end[32], hint[256];
    bool soft = b->kind == KP_BUDGET_SOFT;
    const char *window = b->window == KP_BUDGET_DAILY ? "daily" : "monthly";
    fmt_usd(b->limit_nanousd, limit, sizeof(limit));
    fmt_usd(bn->spent, spent, sizeof(spent));
    fmt_minute(bn->start, start, sizeof(start));
    fmt_minute(bn->end, end, sizeof(end));
    usage_hint(bn->p, hint, sizeof(hint));
    kp_alert_id(w->id, "budget:%s:%s:%" PRId64 ":%d", bn->p->e.id, b->name, bn->start, pct);
    w->last_value = bn->spent;
    snprintf(w->subject, sizeof(w->subject), "budget %s/%s", bn->p->e.id, b->name);
    snprintf(w->message, sizeof(w->message),
             "budget %s/%s (%s, %s) reached %d%% of its %s limit: %s spent in the window from "
             "%s; it resets %s",
             bn->p->e.id, b->name, soft ? "soft" : "hard", window, pct, limit, spent, start, end);
    if (pct >= 100 && !soft)
        snprintf(w->action, sizeof(w->action),
                 "calls it covers are refused until %s: if the spend is expected, raise "
                 "limit_nanousd in policy %s (clusterctl apply -f) or reset it (clusterctl "
                 "budgets reset %s %s); see what spent it with %s",
                 end, bn->p->e.id, bn->p->e.id, b->name, hint);
    else if (pct >= 100)
        snprintf(w->action, sizeof(w->action),
                 "a soft budget refuses nothing, so spend goes on past the limit: find what "
                 "spends (%s), stop it (clusterctl freeze), or raise the limit or make the budget "
                 "hard in policy %s",
                 hint, bn->p->e.id);
    else
        snprintf(w->action, sizeof(w->action),
                 "check what spends (%s) before the budget runs out; raise limit_nanousd in "
                 "policy %s if this is expected",
                 hint, bn->p->e.id);
}

/* Projected exhaustion before the window ends: spent / elapsed *
 * remaining time > limit - spent. */
static void burn_rate(struct eval *e, const struct budget_now *bn, int64_t min_pct)
{
    const struct kp_budget *b = bn->b;
    kp_nanousd limit = b->limit_nanousd, spent = bn->spent;
    int64_t elapsed = e->now - bn->start, left_ms = bn->end - e->now;
    if (spent <= 0 || spent >= limit || elapsed <= 0 || left_ms <= 0 ||
        (double)spent * 100.0 < (double)min_pct * (double)limit)
        return;
    double rate = (double)spent / (double)elapsed; /* nano-USD per ms */
    double to_empty_ms = (double)(limit - spent) / rate;
    if (to_empty_ms >= (double)left_ms)
        return;
    int64_t at = e->now + (int64_t)to_empty_ms;
    struct kp_alert_want *w = want(e, KP_RULE_BURN_RATE, KP_ALERT_WARNING);
    if (w == NULL)
        return;
    char when[32], end[32], spent_s[32], left[32], per_h[32], took[32], hint[256];
    fmt_minute(at, when, sizeof(when));
    fmt_minute(bn->end, end, sizeof(end));
    fmt_usd(spent, spent_s, sizeof(spent_s));
    fmt_usd(limit - spent, left, sizeof(left));
    fmt_usd((kp_nanousd)(rate * 3600000.0), per_h, sizeof(per_h));
    fmt_duration(elapsed, took, sizeof(took));
    usage_hint(bn->p, hint, sizeof(hint));
    kp_alert_id(w->id, "burn:%s:%s:%" PRId64, bn->p->e.id, b->name, bn->start);
    w->last_value = at;
    snprintf(w->subject, sizeof(w->subject), "budget %s/%s", bn->p->e.id, b->name);
    snprintf(w->message, sizeof(w->message),
             "budget %s/%s is on course to run out at %s, before its window ends at %s: %s "
             "spent in %s (%s per hour), %s left",
             bn->p->e.id, b->name, when, end, spent_s, took, per_h, left);
    snprintf(w->action, sizeof(w->action),
             "find what spends (%s) and slow it down, or raise limit_nanousd in policy %s if the "
             "rate is expected",
             hint, bn->p->e.id);
}

static int eval_policy(const struct kp_entity *ent, void *arg)
{
    struct eval *e = arg;
    const struct kp_policy *p = (const struct kp_policy *)ent;
    const struct kp_alert_rule *thr = rule_for(&e->rules, KP_RULE_BUDGET_THRESHOLD, p->e.id);
    const struct kp_alert_rule *burn = rule_for(&e->rules, KP_RULE_BURN_RATE, p->e.id);
    int pcts[MAX_PERCENTS] = {50, 80, 100}, npct = 3;
    const char *list = thr != NULL ? param(&thr->params, "percents") : NULL;
    if (list != NULL) {
        int n = parse_percents(list, pcts);
        npct = n > 0 ? n : 0;
        if (n < 0) { /* unparsable (checked when stored): the defaults */
            pcts[0] = 50, pcts[1] = 80, pcts[2] = 100;
            npct = 3;
        }
    }
    if (!rule_enabled(thr))
        npct = 0;
    for (uint32_t i = 0; i < p->nbudgets; i++) {
        const struct kp_budget *b = &p->budgets[i];
        if (b->limit_nanousd <= 0)
            continue;
        struct budget_now bn = {p, b, kp_budget_window_start_of(b, e->now),
                                kp_budget_window_end_of(b, e->now), 0};
        const struct kp_budget_window_state *w = kp_view_budget_window(e->view, p->e.id, b->name);
        if (w != NULL && w->start_ms == bn.start)
            bn.spent = w->spent; /* else the window rolled over: nothing spent in this one */
        for (int k = 0; k < npct; k++) {
            if ((double)bn.spent * 100.0 >= (double)pcts[k] * (double)b->limit_nanousd)
                budget_threshold(e, &bn, pcts[k]);
        }
        /* The budget's own alert actions add thresholds of their own. */
        for (uint32_t j = 0; j < b->nactions; j++) {
            const struct kp_budget_action *a = &b->actions[j];
            bool listed = false;
            for (int k = 0; k < npct; k++)
                listed |= pcts[k] == (int)a->at_percent;
            if (a->action == KP_BUDGET_ACTION_ALERT && !listed &&
                (double)bn.spent * 100.0 >= (double)a->at_percent * (double)b->limit_nanousd)
                budget_threshold(e, &bn, (int)a->at_percent);
        }
        if (rule_enabled(burn))
            burn_rate(e, &bn, rule_int(burn, KP_RULE_BURN_RATE, "min_spent_percent"));
    }
    return e->rc != KP_OK;
}

/* --- keys and pools ------------------------------------------------------------------- */

static const char *answered(const char *error_class)
{
    if (error_class == NULL)
        return "an error";
    if (strcmp(error_class, "auth") == 0)
        return "401";
    if (strcmp(error_class, "quota") == 0)
        return "insufficient quota";
    return error_class;
}

static int eval_key_health(const struct kp_entity *ent, void *arg)
{
    struct eval *e = arg;
    const struct kp_key_health *h = (const struct kp_key_health *)ent;
    bool invalid = h->status == KP_HEALTH_INVALID;
    if (!invalid && h->status != KP_HEALTH_QUOTA_EXHAUSTED)
        return 0;
    const struct kp_key *k = kp_view_key(e->view, h->e.id);
    if (k == NULL || k->status != KP_KEY_ACTIVE)
        return 0; /* disabled or revoked: an operator took it out already */
    struct kp_alert_want *w = want(e, KP_RULE_KEY_INVALID, KP_ALERT_CRITICAL);
    if (w == NULL)
        return 1;
    char since[32];
    const char *id = k->e.id;
    fmt_since(h->last_change_ms, e->now, since, sizeof(since));
    kp_alert_id(w->id, "key:%s:%s", id, invalid ? "invalid" : "quota_exhausted");
    w->last_value = h->last_change_ms;
    snprintf(w->subject, sizeof(w->subject), "key %s", id);
    snprintf(w->message, sizeof(w->message),
             "key %s (provider %s) is %s: provider answered %s since %s; routers skip it", id,
             k->provider, invalid ? "invalid" : "out of quota", answered(h->last_error_class),
             since);
    if (invalid)
        snprintf(w->action, sizeof(w->action),
                 "rotate key %s: provider answered %s since %s (clusterctl keys rotate %s "
                 "--secret-file NEW_KEY, then set its health back: PUT /admin/v1/keys/%s/health "
                 "{\"status\": \"healthy\"})",
                 id, answered(h->last_error_class), since, id, id);
    else
        snprintf(w->action, sizeof(w->action),
                 "top up or raise the quota of the provider account behind key %s (out of quota "
                 "since %s), or disable it (clusterctl keys disable %s); then set its health back: "
                 "PUT /admin/v1/keys/%s/health {\"status\": \"healthy\"}",
                 id, since, id, id);
    return 0;
}

/* Why member @i of @pool cannot take calls, or NULL when it can. */
static const char *unusable(const struct kp_view *v, const struct kp_pool *pool, uint32_t i)
{
    const struct kp_key *k = kp_view_pool_key(v, pool, i);
    if (k == NULL)
        return "missing";
    if (k->status == KP_KEY_DISABLED)
        return "disabled";
    if (k->status == KP_KEY_REVOKED)
        return "revoked";
    if (kp_key_primary(k) == NULL)
        return "no secret";
    const struct kp_key_health *h = kp_view_key_health(v, k->e.id);
    if (h != NULL && (h->status == KP_HEALTH_INVALID || h->status == KP_HEALTH_QUOTA_EXHAUSTED ||
                      h->status == KP_HEALTH_DISABLED))
        return kp_health_status_name(h->status);
    if (kp_view_freeze(v, KP_FREEZE_KEY, k->e.id) != NULL)
        return "frozen";
    return NULL;
}

static int eval_pool(const struct kp_entity *ent, void *arg)
{
    struct eval *e = arg;
    const struct kp_pool *pool = (const struct kp_pool *)ent;
    char why[700] = "";
    size_t used = 0;
    for (uint32_t i = 0; i < pool->nmembers; i++) {
        const char *r = unusable(e->view, pool, i);
        if (r == NULL)
            return 0;
        if (used < 600)
            used += (size_t)snprintf(why + used, sizeof(why) - used, "%s%s %s", i ? ", " : "",
                                     pool->members[i].key, r);
    }
    struct kp_alert_want *w = want(e, KP_RULE_POOL_NO_KEY, KP_ALERT_CRITICAL);
    if (w == NULL)
        return 1;
    const char *id = pool->e.id;
    kp_alert_id(w->id, "pool:%s:no_key", id);
    w->last_value = pool->nmembers;
    snprintf(w->subject, sizeof(w->subject), "pool %s", id);
    char then[200];
    if (pool->fallback != NULL)
        snprintf(then, sizeof(then), "its calls fall back to pool %s", pool->fallback);
    else
        snprintf(then, sizeof(then), "its calls fail with 503");
    if (pool->nmembers == 0)
        snprintf(w->message, sizeof(w->message), "pool %s has no keys: %s", id, then);
    else
        snprintf(w->message, sizeof(w->message), "pool %s has no usable key (%s): %s", id, why,
                 then);
    snprintf(w->action, sizeof(w->action),
             "add a working key to pool %s (clusterctl put pools %s -f POOL.yaml), or bring its "
             "keys back: rotate invalid ones (clusterctl keys rotate), enable disabled ones "
             "(clusterctl keys enable), unfreeze frozen ones",
             id, id);
    return 0;
}

/* --- members ---------------------------------------------------------------------------- */

static void node_down(struct eval *e, const struct kp_alert_member *m, int64_t after_ms)
{
    char id[129];
    kp_alert_id(id, "node:%s:down", m->name);
    if (m->out_of_contact_ms == 0)
        return;
    if (m->out_of_contact_ms < 0 || m->out_of_contact_ms <= after_ms) {
        hold(e, KP_RULE_NODE_DOWN, id);
        return;
    }
    struct kp_alert_want *w = want(e, KP_RULE_NODE_DOWN, KP_ALERT_CRITICAL);
    if (w == NULL)
        return;
    char took[32];
    fmt_duration(m->out_of_contact_ms, took, sizeof(took));
    memcpy(w->id, id, sizeof(id));
    w->last_value = m->out_of_contact_ms;
    snprintf(w->subject, sizeof(w->subject), "node %s", m->name);
    snprintf(w->message, sizeof(w->message),
             "node %s (id %" PRIu64 ") has not answered the Raft leader for %s", m->name,
             m->node_id, took);
    snprintf(w->action, sizeof(w->action),
             "check the node's process and host (systemctl status keyplaned, its log, disk and "
             "network); a voter down lowers the cluster's fault tolerance. If it is gone for "
             "good, remove it: clusterctl members remove %s",
             m->name);
}

static void spool_filling(struct eval *e, const struct kp_alert_member *m, int64_t pct)
{
    char id[129];
    const struct kp_alert_report *r = m->report;
    kp_alert_id(id, "node:%s:spool", m->name);
    if (r == NULL || !r->have) {
        hold(e, KP_RULE_SPOOL_FILLING, id);
        return;
    }
    if (r->spool_cap_bytes == 0 ||
        (double)r->spool_bytes * 100.0 < (double)pct * (double)r->spool_cap_bytes)
        return;
    struct kp_alert_want *w = want(e, KP_RULE_SPOOL_FILLING, KP_ALERT_WARNING);
    if (w == NULL)
        return;
    char have[32], cap[32];
    fmt_bytes(r->spool_bytes, have, sizeof(have));
    fmt_bytes(r->spool_cap_bytes, cap, sizeof(cap));
    memcpy(w->id, id, sizeof(id));
    w->last_value = (int64_t)(r->spool_bytes * 100 / r->spool_cap_bytes);
    snprintf(w->subject, sizeof(w->subject), "node %s", m->name);
    snprintf(w->message, sizeof(w->message),
             "node %s's usage spool is %" PRId64 "%% full (%s of %s, %" PRIu64
             " segments waiting for the meters)",
             m->name, w->last_value, have, cap, r->spool_waiting);
    snprintf(w->action, sizeof(w->action),
             "check that the meters are up and take segments (clusterctl members list; "
             "keyplane_segment_ship_failures_total on %s), or raise spool_max_bytes; at the cap "
             "its usage events are dropped, or its calls refused with spool_full: refuse",
             m->name);
}

static void meter_lag(struct eval *e, const struct kp_alert_member *m, int64_t after_ms)
{
    char id[129];
    const struct kp_alert_report *r = m->report;
    kp_alert_id(id, "node:%s:meter_lag", m->name);
    if (r == NULL || !r->have) {
        hold(e, KP_RULE_METER_LAG, id);
        return;
    }
    if (r->oldest_unshipped_ms <= after_ms)
        return;
    struct kp_alert_want *w = want(e, KP_RULE_METER_LAG, KP_ALERT_WARNING);
    if (w == NULL)
        return;
    char took[32];
    fmt_duration(r->oldest_unshipped_ms, took, sizeof(took));
    memcpy(w->id, id, sizeof(id));
    w->last_value = r->oldest_unshipped_ms;
    snprintf(w->subject, sizeof(w->subject), "node %s", m->name);
    snprintf(w->message, sizeof(w->message),
             "node %s has had usage segments waiting for a meter for %s (%" PRIu64
             " segments): usage queries miss its calls until they arrive",
             m->name, took, r->spool_waiting);
    snprintf(w->action, sizeof(w->action),
             "check that every meter is up and reachable from %s (clusterctl members list; "
             "keyplane_segment_ship_failures_total on %s)",
             m->name, m->name);
}

/* --- per-key outcomes, summed over the reports --------------------------------------------- */

static int cmp_stats(const void *a, const void *b)
{
    return strcmp(((const struct kp_alert_key_stats *)a)->key,
                  ((const struct kp_alert_key_stats *)b)->key);
}

/* Every key's stats summed over @members' reports, by key; *complete says
 * whether every member reported. */
int kp_alert_sum_key_stats(const struct kp_alert_member *members, size_t n,
                           struct kp_alert_key_stats **out, size_t *nout, bool *complete)
{
    size_t total = 0;
    *complete = true;
    for (size_t i = 0; i < n; i++) {
        if (members[i].report == NULL || !members[i].report->have)
            *complete = false;
        else
            total += members[i].report->nkeys;
    }
    *out = NULL;
    *nout = 0;
    if (total == 0)
        return KP_OK;
    struct kp_alert_key_stats *v = kp_malloc(total * sizeof(*v));
    if (v == NULL)
        return KP_ENOMEM;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const struct kp_alert_report *r = members[i].report;
        for (size_t j = 0; r != NULL && r->have && j < r->nkeys; j++)
            v[k++] = r->keys[j];
    }
    qsort(v, k, sizeof(*v), cmp_stats);
    size_t m = 0;
    for (size_t i = 0; i < k; i++) {
        if (m > 0 && strcmp(v[m - 1].key, v[i].key) == 0) {
            v[m - 1].attempts_5m += v[i].attempts_5m;
            v[m - 1].errors_5m += v[i].errors_5m;
            v[m - 1].rate_limited_1m += v[i].rate_limited_1m;
            v[m - 1].attempts_1m += v[i].attempts_1m;
            v[m - 1].errors_1m += v[i].errors_1m;
        } else {
            v[m++] = v[i];
        }
    }
    *out = v;
    *nout = m;
    return KP_OK;
}

static void key_error_rate(struct eval *e, const struct kp_alert_key_stats *s,
                           const struct kp_alert_rule *x)
{
    int64_t pct = rule_int(x, KP_RULE_KEY_ERROR_RATE, "percent");
    int64_t min = rule_int(x, KP_RULE_KEY_ERROR_RATE, "min_attempts");
    if (s->attempts_5m < (uint64_t)min ||
        (double)s->errors_5m * 100.0 <= (double)pct * (double)s->attempts_5m)
        return;
    struct kp_alert_want *w = want(e, KP_RULE_KEY_ERROR_RATE, KP_ALERT_WARNING);
    if (w == NULL)
        return;
    int64_t rate = (int64_t)(s->errors_5m * 100 / s->attempts_5m);
    kp_alert_id(w->id, "key:%s:error_rate", s->key);
    w->last_value = rate;
    snprintf(w->subject, sizeof(w->subject), "key %s", s->key);
    snprintf(w->message, sizeof(w->message),
             "key %s: %" PRId64 "%% of %" PRIu64
             " upstream attempts failed in the last 5 minutes (threshold %" PRId64 "%%)",
             s->key, rate, s->attempts_5m, pct);
    snprintf(w->action, sizeof(w->action),
             "look at the failures (clusterctl usage events --key %s --from 15m); if the provider "
             "or the key is at fault, disable the key (clusterctl keys disable %s) so its pools "
             "use the others",
             s->key, s->key);
}

static void key_rate_limited(struct eval *e, const struct kp_alert_key_stats *s,
                             const struct kp_alert_rule *x)
{
    int64_t per_min = rule_int(x, KP_RULE_KEY_RATE_LIMITED, "per_minute");
    if (s->rate_limited_1m <= (uint64_t)per_min)
        return;
    struct kp_alert_want *w = want(e, KP_RULE_KEY_RATE_LIMITED, KP_ALERT_WARNING);
    if (w == NULL)
        return;
    kp_alert_id(w->id, "key:%s:rate_limited", s->key);
    w->last_value = (int64_t)s->rate_limited_1m;
    snprintf(w->subject, sizeof(w->subject), "key %s", s->key);
    snprintf(w->message, sizeof(w->message),
             "key %s was rate limited (429) %" PRIu64
             " times in the last minute (threshold %" PRId64 ")",
             s->key, s->rate_limited_1m, per_min);
    snprintf(w->action, sizeof(w->action),
             "raise the key's limits with the provider, add keys to its pools, or set the key's "
             "rpm/tpm (clusterctl put keys %s --set rpm=N) so routers spread calls before the "
             "provider refuses them",
             s->key);
}

/* With reports missing, a key's counts are partial: its open error-rate
 * and rate-limit alerts hold rather than resolve. */
static int hold_key_alerts(const struct kp_entity *ent, void *arg)
{
    struct eval *e = arg;
    const struct kp_alert *a = (const struct kp_alert *)ent;
    if (a->resolved_ms != 0)
        return 0;
    int k = rule_kind(a->rule);
    if (k == KP_RULE_KEY_ERROR_RATE || k == KP_RULE_KEY_RATE_LIMITED)
        hold(e, k, a->e.id);
    return e->rc != KP_OK;
}

static void eval_key_stats(struct eval *e, const struct kp_alert_member *members, size_t n)
{
    struct kp_alert_key_stats *stats;
    size_t ns;
    bool complete;
    if (e->rc == KP_OK)
        e->rc = kp_alert_sum_key_stats(members, n, &stats, &ns, &complete);
    if (e->rc != KP_OK)
        return;
    const struct kp_alert_rule *er = rule_for(&e->rules, KP_RULE_KEY_ERROR_RATE, NULL);
    const struct kp_alert_rule *rl = rule_for(&e->rules, KP_RULE_KEY_RATE_LIMITED, NULL);
    for (size_t i = 0; i < ns; i++) {
        if (rule_enabled(er))
            key_error_rate(e, &stats[i], er);
        if (rule_enabled(rl))
            key_rate_limited(e, &stats[i], rl);
    }
    kp_free(stats);
    if (!complete)
        kp_view_each(e->view, KP_KIND_ALERT, hold_key_alerts, e);
}

/* --- evaluation ------------------------------------------------------------------------ */

/* --- balances ---------------------------------------------------------------------------- */

static const struct kp_alert_key_spend *spend_of(const struct eval *e,
                                                 const struct kp_key_balance *b)
{
    for (size_t i = 0; e->spends != NULL && i < e->spends->n; i++) {
        const struct kp_alert_key_spend *s = &e->spends->v[i];
        if (strcmp(s->key, b->e.id) == 0 && s->since_ms == b->since_ms)
            return s;
    }
    return NULL;
}

/* key_balance: a key's prepaid credit exhausted (critical), below
 * below_usd (10% of the credit by default), or projected to run out
 * within within_hours at the last day's rate (warning). One alert per key,
 * its severity the worse; a key the meter has not answered for holds. */
static int eval_key_balance(const struct kp_entity *ent, void *arg)
{
    struct eval *e = arg;
    const struct kp_key_balance *b = (const struct kp_key_balance *)ent;
    const struct kp_alert_rule *r = rule_for(&e->rules, KP_RULE_KEY_BALANCE, NULL);
    const char *id = b->e.id;
    char aid[129];
    kp_alert_id(aid, "key_balance:%s", id);
    const struct kp_alert_key_spend *s = spend_of(e, b);
    if (s == NULL) {
        hold(e, KP_RULE_KEY_BALANCE, aid);
        return e->rc != KP_OK;
    }
    struct kp_balance_figures f;
    kp_balance_figures(b, kp_view_key_health(e->view, id), &s->spend, e->now, &f);
    int64_t below = b->credit / 10;
    if (r != NULL && param(&r->params, "below_usd") != NULL)
        parse_usd(param(&r->params, "below_usd"), &below);
    int64_t within = rule_int(r, KP_RULE_KEY_BALANCE, "within_hours") * 3600000;
    bool low = f.remaining < below;
    bool soon = f.exhaustion_at_ms != 0 && f.exhaustion_at_ms - e->now <= within;
    if (!f.exhausted && !low && !soon)
        return 0;
    struct kp_alert_want *w =
        want(e, KP_RULE_KEY_BALANCE, f.exhausted ? KP_ALERT_CRITICAL : KP_ALERT_WARNING);
    if (w == NULL)
        return 1;
    char left[32], credit[32], spent[32], since[32], when[32] = "";
    fmt_usd(f.remaining > 0 ? f.remaining : 0, left, sizeof(left));
    fmt_usd(f.credit, credit, sizeof(credit));
    fmt_usd(f.spent, spent, sizeof(spent));
    fmt_since(b->since_ms, e->now, since, sizeof(since));
    if (f.exhaustion_at_ms != 0)
        fmt_since(f.exhaustion_at_ms, e->now, when, sizeof(when));
    memcpy(w->id, aid, sizeof(aid));
    w->last_value = f.remaining;
    snprintf(w->subject, sizeof(w->subject), "key %s", id);
    if (f.exhausted) {
        snprintf(w->message, sizeof(w->message),
                 "key %s has spent its prepaid credit: %s metered since %s against %s credited", id,
                 spent, since, credit);
        snprintf(w->action, sizeof(w->action),
                 "top up key %s: its %s credit is spent (clusterctl keys balance %s --topup USD "
                 "--note TEXT), or disable it (clusterctl keys disable %s)",
                 id, credit, id, id);
    } else {
        snprintf(w->message, sizeof(w->message),
                 "key %s has %s left of %s credited since %s (%s spent)%s%s", id, left, credit,
                 since, spent, when[0] ? "; at the last day's rate it runs out around " : "", when);
        snprintf(w->action, sizeof(w->action),
                 "top up key %s: %s left%s%s%s (clusterctl keys balance %s --topup USD --note "
                 "TEXT)",
                 id, left, when[0] ? ", runs out around " : "", when,
                 when[0] ? " at the last day's rate" : "", id);
    }
    return 0;
}

/* key_balance for a key with no recorded credit whose provider's balance
 * endpoint the canary reads: exhausted (critical), or below below_usd when
 * the rule sets it (warning). No projection: the meter is not asked. */
static int eval_provider_balance(const struct kp_entity *ent, void *arg)
{
    struct eval *e = arg;
    const struct kp_key_health *h = (const struct kp_key_health *)ent;
    const struct kp_alert_rule *r = rule_for(&e->rules, KP_RULE_KEY_BALANCE, NULL);
    if (h->provider_balance_ms == 0 || kp_view_key_balance(e->view, h->e.id) != NULL)
        return 0;
    int64_t below = 0;
    if (r != NULL && param(&r->params, "below_usd") != NULL)
        parse_usd(param(&r->params, "below_usd"), &below);
    bool exhausted = h->provider_balance <= 0;
    if (!exhausted && h->provider_balance >= below)
        return 0;
    struct kp_alert_want *w =
        want(e, KP_RULE_KEY_BALANCE, exhausted ? KP_ALERT_CRITICAL : KP_ALERT_WARNING);
    if (w == NULL)
        return 1;
    const char *id = h->e.id;
    char left[32], at[32];
    fmt_usd(h->provider_balance > 0 ? h->provider_balance : 0, left, sizeof(left));
    fmt_since(h->provider_balance_ms, e->now, at, sizeof(at));
    kp_alert_id(w->id, "key_balance:%s", id);
    w->last_value = h->provider_balance;
    snprintf(w->subject, sizeof(w->subject), "key %s", id);
    snprintf(w->message, sizeof(w->message), "key %s: its provider reports %s left (read %s)", id,
             left, at);
    snprintf(w->action, sizeof(w->action),
             "top up the account of key %s with its provider%s, or disable the key "
             "(clusterctl keys disable %s)",
             id, exhausted ? " now: calls on it will fail" : "", id);
    return 0;
}

static int cmp_want(const void *a, const void *b)
{
    const struct kp_alert_want *x = a, *y = b;
    int c = strcmp(x->id, y->id);
    if (c != 0)
        return c;
    return (int)x->hold - (int)y->hold; /* a want before a hold of the same id */
}

/* Sort by id and keep one entry per id (a want over a hold). */
static void plan_finish(struct kp_alert_plan *p)
{
    if (p->n == 0)
        return;
    qsort(p->v, p->n, sizeof(*p->v), cmp_want);
    size_t m = 1;
    for (size_t i = 1; i < p->n; i++) {
        if (strcmp(p->v[i].id, p->v[m - 1].id) != 0)
            p->v[m++] = p->v[i];
    }
    p->n = m;
}

int kp_alert_rules_eval(const struct kp_view *view, int64_t now_ms,
                        const struct kp_alert_member *members, size_t nmembers,
                        const struct kp_alert_spends *spends, struct kp_alert_plan *out)
{
    struct eval e = {.view = view, .now = now_ms, .out = out, .spends = spends, .rc = KP_OK};
    out->n = 0;
    e.rules.cap = kp_view_count(view, KP_KIND_ALERT_RULE);
    e.rules.v = kp_malloc((e.rules.cap + 1) * sizeof(*e.rules.v));
    if (e.rules.v == NULL)
        return KP_ENOMEM;
    kp_view_each(view, KP_KIND_ALERT_RULE, collect_rule, &e.rules);
    qsort(e.rules.v, e.rules.n, sizeof(*e.rules.v), cmp_entity_id);

    kp_view_each(view, KP_KIND_POLICY, eval_policy, &e);
    if (rule_enabled(rule_for(&e.rules, KP_RULE_KEY_INVALID, NULL)))
        kp_view_each(view, KP_KIND_KEY_HEALTH, eval_key_health, &e);
    if (rule_enabled(rule_for(&e.rules, KP_RULE_POOL_NO_KEY, NULL)))
        kp_view_each(view, KP_KIND_POOL, eval_pool, &e);
    const struct kp_alert_rule *down = rule_for(&e.rules, KP_RULE_NODE_DOWN, NULL);
    const struct kp_alert_rule *spool = rule_for(&e.rules, KP_RULE_SPOOL_FILLING, NULL);
    const struct kp_alert_rule *lag = rule_for(&e.rules, KP_RULE_METER_LAG, NULL);
    for (size_t i = 0; i < nmembers; i++) {
        const struct kp_alert_member *m = &members[i];
        if (rule_enabled(down))
            node_down(&e, m, rule_int(down, KP_RULE_NODE_DOWN, "after_seconds") * 1000);
        if (rule_enabled(spool))
            spool_filling(&e, m, rule_int(spool, KP_RULE_SPOOL_FILLING, "percent"));
        if (rule_enabled(lag))
            meter_lag(&e, m, rule_int(lag, KP_RULE_METER_LAG, "after_seconds") * 1000);
    }
    eval_key_stats(&e, members, nmembers);
    if (rule_enabled(rule_for(&e.rules, KP_RULE_KEY_BALANCE, NULL))) {
        kp_view_each(view, KP_KIND_KEY_BALANCE, eval_key_balance, &e);
        kp_view_each(view, KP_KIND_KEY_HEALTH, eval_provider_balance, &e);
    }
    kp_free(e.rules.v);
    if (e.rc != KP_OK)
        return e.rc;
    plan_finish(out);
    return KP_OK;
}

/* --- reconcile ------------------------------------------------------------------------------ */

static const struct kp_alert_want *plan_find(const struct kp_alert_plan *p, const char *id)
{
    size_t lo = 0, hi = p->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(p->v[mid].id, id);
        if (c == 0)
            return &p->v[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

struct open_alerts {
    const struct kp_alert **v;
    size_t n, cap;
};

static int collect_open(const struct kp_entity *e, void *arg)
{
    struct open_alerts *o = arg;
    const struct kp_alert *a = (const struct kp_alert *)e;
    if (a->resolved_ms == 0 && o->n < o->cap)
        o->v[o->n++] = a;
    return 0;
}

size_t kp_alert_reconcile(const struct kp_view *view, const struct kp_alert_plan *plan,
                          struct kp_alert_step *steps, size_t max)
{
    size_t n = 0;
    for (size_t i = 0; i < plan->n && n < max; i++) {
        const struct kp_alert_want *w = &plan->v[i];
        if (w->hold)
            continue;
        const struct kp_alert *a = (const struct kp_alert *)kp_view_get(view, KP_KIND_ALERT, w->id);
        if (a == NULL || a->resolved_ms != 0 || a->severity != w->severity)
            steps[n++] = (struct kp_alert_step){.want = w};
    }
    struct open_alerts o = {.cap = kp_view_count(view, KP_KIND_ALERT)};
    if (n == max || o.cap == 0 || (o.v = kp_malloc(o.cap * sizeof(*o.v))) == NULL)
        return n; /* out of memory: the next evaluation resolves */
    kp_view_each(view, KP_KIND_ALERT, collect_open, &o);
    qsort(o.v, o.n, sizeof(*o.v), cmp_entity_id);
    for (size_t i = 0; i < o.n && n < max; i++) {
        if (plan_find(plan, o.v[i]->e.id) == NULL)
            steps[n++] = (struct kp_alert_step){.resolve = true, .alert = o.v[i]};
    }
    kp_free(o.v);
    return n;
}

/* --- reports --------------------------------------------------------------------------------- */

/* 1 to 128 of [A-Za-z0-9._:-], as registry ids are. */
static bool is_id(const char *s)
{
    size_t n = s != NULL ? strlen(s) : 0;
    if (n == 0 || n > 128)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '-'))
            return false;
    }
    return true;
}

static uint64_t ju64(const json_t *o, const char *k)
{
    json_int_t v = json_integer_value(json_object_get(o, k));
    return v > 0 ? (uint64_t)v : 0;
}

int kp_alert_report_from_json(const json_t *v, struct kp_alert_report *out)
{
    memset(out, 0, sizeof(*out));
    const json_t *keys = json_object_get(v, "keys");
    if (!json_is_object(v) || !json_is_integer(json_object_get(v, "spool_bytes")) ||
        (keys != NULL && !json_is_array(keys)))
        return KP_EPARSE;
    out->spool_bytes = ju64(v, "spool_bytes");
    out->spool_cap_bytes = ju64(v, "spool_cap_bytes");
    out->spool_waiting = ju64(v, "spool_segments_waiting");
    out->oldest_unshipped_ms = (int64_t)ju64(v, "oldest_unshipped_ms");
    size_t n = json_array_size(keys);
    if (n > KP_OUTCOME_KEYS)
        n = KP_OUTCOME_KEYS;
    if (n > 0 && (out->keys = kp_calloc(n, sizeof(*out->keys))) == NULL)
        return KP_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        const json_t *k = json_array_get(keys, i);
        const char *id = json_string_value(json_object_get(k, "key"));
        if (!is_id(id))
            continue;
        struct kp_alert_key_stats *s = &out->keys[out->nkeys++];
        snprintf(s->key, sizeof(s->key), "%s", id);
        s->attempts_5m = ju64(k, "attempts_5m");
        s->errors_5m = ju64(k, "errors_5m");
        s->rate_limited_1m = ju64(k, "rate_limited_1m");
        s->attempts_1m = ju64(k, "attempts_1m"); /* 0 from a node older than these */
        s->errors_1m = ju64(k, "errors_1m");
    }
    out->have = true;
    return KP_OK;
}

void kp_alert_report_free(struct kp_alert_report *r)
{
    kp_free(r->keys);
    memset(r, 0, sizeof(*r));
}

/* --- outcome windows -------------------------------------------------------------------------- */

void kp_outcome_window_begin(struct kp_outcome_window *w)
{
    memset(w->cur, 0, sizeof(w->cur));
}

void kp_outcome_window_add(struct kp_outcome_window *w, const char *key, const char *outcome,
                           uint64_t value)
{
    unsigned i = 0;
    while (i < w->nkeys && strcmp(w->keys[i], key) != 0)
        i++;
    if (i == w->nkeys) {
        if (i == KP_OUTCOME_KEYS || strlen(key) >= sizeof(w->keys[i]))
            return;
        snprintf(w->keys[i], sizeof(w->keys[i]), "%s", key);
        memset(w->at[i], 0, sizeof(w->at[i])); /* it counted nothing before */
        w->nkeys++;
    }
    struct kp_outcome_counts *c = &w->cur[i];
    c->attempts += value;
    if (strcmp(outcome, "ok") == 0 || strcmp(outcome, "client") == 0)
        return;
    c->errors += value;
    if (strcmp(outcome, "rate_limit") == 0)
        c->rate_limited += value;
}

void kp_outcome_window_sample(struct kp_outcome_window *w, int64_t now_ms)
{
    unsigned last = (w->head + KP_OUTCOME_SAMPLES - 1) % KP_OUTCOME_SAMPLES;
    if (w->n > 0 && now_ms - w->t[last] < KP_OUTCOME_SAMPLE_MS)
        return;
    w->t[w->head] = now_ms;
    for (unsigned k = 0; k < w->nkeys; k++)
        w->at[k][w->head] = w->cur[k];
    w->head = (w->head + 1) % KP_OUTCOME_SAMPLES;
    if (w->n < KP_OUTCOME_SAMPLES)
        w->n++;
}

static uint64_t minus(uint64_t a, uint64_t b)
{
    return a > b ? a - b : 0;
}

struct kp_outcome_counts kp_outcome_window_span(const struct kp_outcome_window *w,
                                                unsigned key_index, int64_t now_ms, int64_t span_ms)
{
    struct kp_outcome_counts cur = w->cur[key_index], base = {0, 0, 0};
    /* Newest first: the first sample at or before now - span; else the
     * oldest one. */
    for (unsigned j = 0; j < w->n; j++) {
        unsigned slot = (w->head + KP_OUTCOME_SAMPLES - 1 - j) % KP_OUTCOME_SAMPLES;
        base = w->at[key_index][slot];
        if (w->t[slot] <= now_ms - span_ms)
            break;
    }
    return (struct kp_outcome_counts){minus(cur.attempts, base.attempts),
                                      minus(cur.errors, base.errors),
                                      minus(cur.rate_limited, base.rate_limited)};
}

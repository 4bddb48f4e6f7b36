/* `budgets list|show|reset|set`: the state of the budgets policies define
 * (GET /admin/v1/budgets, docs/budgets.md), and `set`, which changes one
 * budget of a policy (or adds it) without writing the whole policy.
 *
 * `set` reads the policy, changes that one budget in it and puts it back
 * with If-Match of the version it read, so an edit made meanwhile by
 * someone else is a 409 rather than lost; then it shows the budget as
 * `show` does. Every option is checked before the first request. */
#include <stdio.h>
#include <string.h>

#include "clusterctl.h"
#include "meter/meter.h"

static int budgets_list(struct kp_ctl *ctl, int argc, char **argv);
static int budgets_show(struct kp_ctl *ctl, int argc, char **argv);
static int budgets_reset(struct kp_ctl *ctl, int argc, char **argv);
static int budgets_set(struct kp_ctl *ctl, int argc, char **argv);

static const struct kp_ctl_command budgets_commands[] = {
    {"list", "", "every budget: limit, spent, granted to routers, remaining, reset time",
     budgets_list, false},
    {"show", "POLICY BUDGET", "one budget, with the grants each router holds", budgets_show, false},
    {"reset", "POLICY BUDGET", "set spent back to 0 and drop every grant (audited)", budgets_reset,
     false},
    {"set",
     "POLICY BUDGET [--limit USD] [--kind hard|soft] [--window daily|weekly|monthly|fixed] "
     "[--utc-offset +HH:MM] [--period-start TIME --period DURATION] [--if-version N]",
     "change one budget of a policy, or add it (--limit required then)", budgets_set, false},
};
#define N_CMDS (sizeof(budgets_commands) / sizeof(budgets_commands[0]))

int kp_ctl__cmd_budgets(struct kp_ctl *ctl, int argc, char **argv)
{
    return kp_ctl__group(ctl, "budgets", budgets_commands, N_CMDS, argc, argv);
}

/* --- cells ------------------------------------------------------------------ */

/* A period in the largest unit that divides it: "14d", "36h", "90m". */
static void append_period(struct kp_buf *out, json_int_t ms)
{
    static const struct {
        json_int_t ms;
        const char *unit;
    } units[] = {{86400000, "d"}, {3600000, "h"}, {60000, "m"}, {1000, "s"}, {1, "ms"}};
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (ms % units[i].ms == 0) {
            kp_buf_appendf(out, "%" JSON_INTEGER_FORMAT "%s", ms / units[i].ms, units[i].unit);
            return;
        }
    }
}

/* "daily", "weekly UTC+05:30", "fixed 14d from 2026-01-05T00:00:00Z". */
static void cell_window(struct kp_buf *out, const json_t *value, const json_t *row)
{
    const char *window = json_string_value(value);
    json_int_t offset = json_integer_value(json_object_get(row, "utc_offset_minutes"));
    char when[40];

    if (window == NULL)
        return;
    kp_ctl__cell_text(out, value, row);
    if (strcmp(window, "fixed") == 0) {
        kp_buf_append_lit(out, " ");
        append_period(out, json_integer_value(json_object_get(row, "period_ms")));
        kp_usage_format_time(json_integer_value(json_object_get(row, "period_start_ms")), when,
                             sizeof(when));
        kp_buf_appendf(out, " from %s", when);
    } else if (offset != 0) {
        json_int_t m = offset < 0 ? -offset : offset;
        kp_buf_appendf(out, " UTC%c%02" JSON_INTEGER_FORMAT ":%02" JSON_INTEGER_FORMAT,
                       offset < 0 ? '-' : '+', m / 60, m % 60);
    }
}

/* "50% alert, 80% downgrade gpt-4o-mini, 100% throttle 60rpm". */
static void cell_actions(struct kp_buf *out, const json_t *value, const json_t *row)
{
    size_t i;
    json_t *a;

    (void)row;
    json_array_foreach(value, i, a)
    {
        const json_t *model = json_object_get(a, "model"), *feature = json_object_get(a, "feature");
        if (i > 0)
            kp_buf_append_lit(out, ", ");
        kp_buf_appendf(out, "%" JSON_INTEGER_FORMAT "%% ",
                       json_integer_value(json_object_get(a, "at_percent")));
        kp_ctl__cell_text(out, json_object_get(a, "do"), a);
        if (model != NULL) {
            kp_buf_append_lit(out, " ");
            kp_ctl__cell_text(out, model, a);
        }
        if (feature != NULL) {
            kp_buf_append_lit(out, " ");
            kp_ctl__cell_text(out, feature, a);
        }
        if (json_object_get(a, "rpm") != NULL)
            kp_buf_appendf(out, " %" JSON_INTEGER_FORMAT "rpm",
                           json_integer_value(json_object_get(a, "rpm")));
    }
}

#define BUDGET_COLUMNS                                                                             \
    {"POLICY", "policy", NULL}, {"BUDGET", "budget", NULL}, {"SCOPE", "scope_kind", NULL},         \
        {"TARGET", "scope_target", NULL}, {"KIND", "kind", NULL},                                  \
        {"WINDOW", "window", cell_window}, {"LIMIT", "limit_nanousd", kp_ctl__cell_usd},           \
        {"SPENT", "spent_nanousd", kp_ctl__cell_usd},                                              \
        {"GRANTED", "granted_nanousd", kp_ctl__cell_usd},                                          \
    {                                                                                              \
        "REMAINING", "remaining_nanousd", kp_ctl__cell_usd                                         \
    }

static const struct kp_ctl_column columns[] = {
    BUDGET_COLUMNS,
    {"RESETS_AT", "resets_at", NULL},
    {"ACTIONS", "actions", cell_actions},
};
#define N_COLS (sizeof(columns) / sizeof(columns[0]))

/* One budget: the same, with the window's start. */
static const struct kp_ctl_column record[] = {
    BUDGET_COLUMNS,
    {"WINDOW_START", "window_start", NULL},
    {"RESETS_AT", "resets_at", NULL},
    {"ACTIONS", "actions", cell_actions},
};
#define N_RECORD (sizeof(record) / sizeof(record[0]))

/* --- list, show, reset -------------------------------------------------------- */

static int budgets_list(struct kp_ctl *ctl, int argc, char **argv)
{
    json_t *answer = NULL;
    int first, rc = kp_ctl__parse(ctl, argc, argv, NULL, 0, &first);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__positionals(ctl, argc - first, 0, 0, budgets_commands[0].synopsis, false);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__resolve(ctl);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__call(ctl, "GET", "/admin/v1/budgets", NULL, NULL, &answer);
    if (rc == KP_CTL_EXIT_OK) {
        json_t *items = json_object_get(answer, "items");
        if (ctl->output != KP_CTL_OUTPUT_TABLE)
            kp_ctl__print_doc(ctl, answer);
        else if (json_array_size(items) == 0)
            fprintf(stderr, "%s: no policy defines a budget\n", ctl->prog);
        else
            kp_ctl__print_table(columns, N_COLS, items);
    }
    json_decref(answer);
    return rc;
}

/* A budget as `show` prints it. */
static void print_budget(struct kp_ctl *ctl, const json_t *budget)
{
    static const struct kp_ctl_column grants[] = {{"NODE", "node_id", NULL},
                                                  {"GRANT", "nanousd", kp_ctl__cell_usd}};
    if (ctl->output != KP_CTL_OUTPUT_TABLE) {
        kp_ctl__print_doc(ctl, budget);
        return;
    }
    kp_ctl__print_record(record, N_RECORD, budget);
    json_t *g = json_object_get(budget, "grants");
    if (json_array_size(g) > 0) {
        printf("\n");
        kp_ctl__print_table(grants, 2, g);
    }
}

/* GET or POST .../budgets/POLICY/BUDGET[/reset] into *@answer. */
static int call_budget(struct kp_ctl *ctl, const char *policy, const char *budget,
                       const char *method, const char *suffix, json_t **answer)
{
    char *path = kp_ctl__path("budgets", policy, budget, suffix, NULL);
    if (path == NULL) {
        kp_ctl__error(ctl, "out of memory");
        return KP_CTL_EXIT_NO;
    }
    int rc = kp_ctl__call(ctl, method, path, NULL, NULL, answer);
    kp_free(path);
    return rc;
}

static int one(struct kp_ctl *ctl, int argc, char **argv, size_t cmd, const char *method,
               const char *suffix)
{
    json_t *answer = NULL;
    int first, rc = kp_ctl__parse(ctl, argc, argv, NULL, 0, &first);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__positionals(ctl, argc - first, 2, 2, budgets_commands[cmd].synopsis, false);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__resolve(ctl);
    if (rc == KP_CTL_EXIT_OK)
        rc = call_budget(ctl, argv[first], argv[first + 1], method, suffix, &answer);
    if (rc == KP_CTL_EXIT_OK)
        print_budget(ctl, answer);
    json_decref(answer);
    return rc;
}

static int budgets_show(struct kp_ctl *ctl, int argc, char **argv)
{
    return one(ctl, argc, argv, 1, "GET", NULL);
}

static int budgets_reset(struct kp_ctl *ctl, int argc, char **argv)
{
    return one(ctl, argc, argv, 2, "POST", "reset");
}

/* --- set ------------------------------------------------------------------------ */

struct set_args {
    const char *policy, *budget;
    /* as given (NULL: not given) */
    const char *limit, *kind, *window, *offset, *period_start, *period, *if_version;
    /* parsed */
    kp_nanousd limit_nanousd;
    int32_t offset_minutes;
    int64_t period_start_ms, period_ms;
    uint64_t version; /* If-Match; 0: the version read */
};

static bool one_of(const char *s, const char *const *names)
{
    for (; *names != NULL; names++) {
        if (strcmp(s, *names) == 0)
            return true;
    }
    return false;
}

/* The values alone, before any request. */
static int check_set_values(struct kp_ctl *ctl, struct set_args *a)
{
    static const char *const kinds[] = {"hard", "soft", NULL};
    static const char *const windows[] = {"daily", "weekly", "monthly", "fixed", NULL};
    uint64_t seconds;
    int rc = KP_CTL_EXIT_OK;

    if (a->limit == NULL && a->kind == NULL && a->window == NULL && a->offset == NULL &&
        a->period_start == NULL && a->period == NULL) {
        kp_ctl__usage_error(ctl, "budgets set: nothing to change: give --limit, --kind, --window, "
                                 "--utc-offset or --period-start and --period");
        return KP_CTL_EXIT_USAGE;
    }
    if (a->limit != NULL &&
        (kp_recon_parse_amount(a->limit, &a->limit_nanousd) != KP_OK || a->limit_nanousd < 0)) {
        kp_ctl__usage_error(ctl,
                            "budgets set: --limit must be an amount of dollars such as 25 or "
                            "0.50, not '%s'",
                            a->limit);
        return KP_CTL_EXIT_USAGE;
    }
    if (a->kind != NULL && !one_of(a->kind, kinds)) {
        kp_ctl__usage_error(ctl, "budgets set: --kind must be hard or soft");
        return KP_CTL_EXIT_USAGE;
    }
    if (a->window != NULL && !one_of(a->window, windows)) {
        kp_ctl__usage_error(ctl, "budgets set: --window must be daily, weekly, monthly or fixed");
        return KP_CTL_EXIT_USAGE;
    }
    if (a->offset != NULL)
        rc = kp_ctl__parse_utc_offset(ctl, "--utc-offset", a->offset, &a->offset_minutes);
    if (rc == KP_CTL_EXIT_OK && a->period_start != NULL)
        rc = kp_ctl__parse_instant(ctl, "--period-start", a->period_start, &a->period_start_ms);
    if (rc == KP_CTL_EXIT_OK && a->period != NULL) {
        rc = kp_ctl__parse_duration(ctl, "--period", a->period, &seconds);
        a->period_ms = (int64_t)seconds * 1000;
    }
    if (rc == KP_CTL_EXIT_OK && a->if_version != NULL)
        rc = kp_ctl__parse_uint(ctl, "--if-version", a->if_version, INT64_MAX, &a->version);
    return rc;
}

/* The budget named @name in the policy body @policy, added (with the
 * defaults: monthly, hard) when it has none and a limit was given; NULL
 * after a usage error. */
static json_t *budget_in(struct kp_ctl *ctl, const struct set_args *a, json_t *policy)
{
    json_t *list = json_object_get(policy, "budgets"), *b;
    size_t i;

    if (!json_is_array(list)) {
        list = json_array();
        json_object_set_new(policy, "budgets", list);
    }
    json_array_foreach(list, i, b)
    {
        const char *name = json_string_value(json_object_get(b, "name"));
        if (name != NULL && strcmp(name, a->budget) == 0)
            return b;
    }
    if (a->limit == NULL) {
        kp_ctl__usage_error(ctl, "budgets set: policy %s has no budget %s: give --limit to add it",
                            a->policy, a->budget);
        return NULL;
    }
    b = json_pack("{s:s,s:s,s:s}", "name", a->budget, "window", "monthly", "kind", "hard");
    if (b == NULL || json_array_append_new(list, b) != 0) {
        kp_ctl__error(ctl, "out of memory");
        return NULL;
    }
    return b;
}

/* Apply the options to budget @b (a JSON object as the policy shows it):
 * a window that becomes fixed loses its offset and needs a period and an
 * anchor; one that stops being fixed loses them. */
static int change_budget(struct kp_ctl *ctl, const struct set_args *a, json_t *b)
{
    const char *was = json_string_value(json_object_get(b, "window"));
    bool was_fixed = was != NULL && strcmp(was, "fixed") == 0;
    bool fixed = a->window != NULL ? strcmp(a->window, "fixed") == 0 : was_fixed;

    if (fixed && a->offset != NULL) {
        kp_ctl__usage_error(ctl, "budgets set: a fixed window has no --utc-offset (it starts at "
                                 "--period-start)");
        return KP_CTL_EXIT_USAGE;
    }
    if (!fixed && (a->period != NULL || a->period_start != NULL)) {
        kp_ctl__usage_error(ctl, "budgets set: --period and --period-start are for a fixed window "
                                 "(--window fixed)");
        return KP_CTL_EXIT_USAGE;
    }
    if (fixed && !was_fixed && (a->period == NULL || a->period_start == NULL)) {
        kp_ctl__usage_error(ctl, "budgets set: a fixed window needs --period-start and --period");
        return KP_CTL_EXIT_USAGE;
    }
    if (a->window != NULL)
        json_object_set_new(b, "window", json_string(a->window));
    if (a->kind != NULL)
        json_object_set_new(b, "kind", json_string(a->kind));
    if (a->limit != NULL)
        json_object_set_new(b, "limit_nanousd", json_integer(a->limit_nanousd));
    if (fixed) {
        json_object_del(b, "utc_offset_minutes");
    } else {
        json_object_del(b, "period_ms");
        json_object_del(b, "period_start_ms");
    }
    if (a->offset != NULL)
        json_object_set_new(b, "utc_offset_minutes", json_integer(a->offset_minutes));
    if (a->period != NULL)
        json_object_set_new(b, "period_ms", json_integer(a->period_ms));
    if (a->period_start != NULL)
        json_object_set_new(b, "period_start_ms", json_integer(a->period_start_ms));
    return KP_CTL_EXIT_OK;
}

/* Read the policy, change the budget, put it back at the version read. */
static int set_budget(struct kp_ctl *ctl, struct set_args *a)
{
    const struct kp_ctl_kind *kind = kp_ctl__kind_find("policies");
    char *path = kp_ctl__path("policies", a->policy, NULL);
    struct kp_ctl_response resp = {0};
    json_t *current = NULL, *body = NULL, *b, *answer = NULL;
    char if_match[64];
    const char *headers[2] = {if_match, NULL};
    int rc;

    if (path == NULL) {
        kp_ctl__error(ctl, "out of memory");
        return KP_CTL_EXIT_NO;
    }
    if (kp_ctl__get(ctl, path, &resp) != 0) {
        kp_free(path);
        return kp_ctl__unreachable(ctl);
    }
    current = resp.status == 200 ? kp_ctl__response_json(&resp) : NULL;
    if (!json_is_object(current)) {
        rc = kp_ctl__refused(ctl, path, &resp);
        goto out;
    }
    if (a->version == 0)
        a->version = (uint64_t)json_integer_value(json_object_get(current, "version"));
    rc = KP_CTL_EXIT_NO;
    if ((body = kp_ctl__kind_body(kind, current)) == NULL)
        goto out;
    rc = KP_CTL_EXIT_USAGE;
    if ((b = budget_in(ctl, a, body)) == NULL || (rc = change_budget(ctl, a, b)) != KP_CTL_EXIT_OK)
        goto out;
    kp_ctl__if_match(if_match, sizeof(if_match), a->version);
    if ((rc = kp_ctl__call(ctl, "PUT", path, body, headers, NULL)) != KP_CTL_EXIT_OK)
        goto out;
    if ((rc = call_budget(ctl, a->policy, a->budget, "GET", NULL, &answer)) == KP_CTL_EXIT_OK)
        print_budget(ctl, answer);
out:
    json_decref(answer);
    json_decref(body);
    json_decref(current);
    kp_ctl__response_free(&resp);
    kp_free(path);
    return rc;
}

static int budgets_set(struct kp_ctl *ctl, int argc, char **argv)
{
    struct set_args a;
    memset(&a, 0, sizeof(a));
    const struct kp_ctl_flag flags[] = {
        {"limit", 0, KP_CTL_FLAG_VALUE, &a.limit},
        {"kind", 0, KP_CTL_FLAG_VALUE, &a.kind},
        {"window", 0, KP_CTL_FLAG_VALUE, &a.window},
        {"utc-offset", 0, KP_CTL_FLAG_VALUE, &a.offset},
        {"period-start", 0, KP_CTL_FLAG_VALUE, &a.period_start},
        {"period", 0, KP_CTL_FLAG_VALUE, &a.period},
        {"if-version", 0, KP_CTL_FLAG_VALUE, &a.if_version},
    };
    int first, rc = kp_ctl__parse(ctl, argc, argv, flags, sizeof(flags) / sizeof(flags[0]), &first);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__positionals(ctl, argc - first, 2, 2, budgets_commands[3].synopsis, false);
    if (rc == KP_CTL_EXIT_OK) {
        a.policy = argv[first];
        a.budget = argv[first + 1];
        rc = check_set_values(ctl, &a);
    }
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__resolve(ctl);
    if (rc == KP_CTL_EXIT_OK)
        rc = set_budget(ctl, &a);
    return rc;
}

/* `budgets list|show|reset`: the state of the budgets policies define
 * (GET /admin/v1/budgets, docs/budgets.md). Limits and kinds are set in
 * policies (`clusterctl put policies ...` or `apply -f`). */
#include <stdio.h>
#include <string.h>

#include "clusterctl.h"

static int budgets_list(struct kp_ctl *ctl, int argc, char **argv);
static int budgets_show(struct kp_ctl *ctl, int argc, char **argv);
static int budgets_reset(struct kp_ctl *ctl, int argc, char **argv);

static const struct kp_ctl_command budgets_commands[] = {
    {"list", "", "every budget: limit, spent, granted to routers, remaining, reset time",
     budgets_list, false},
    {"show", "POLICY BUDGET", "one budget, with the grants each router holds", budgets_show, false},
    {"reset", "POLICY BUDGET", "set spent back to 0 and drop every grant (audited)", budgets_reset,
     false},
};
#define N_CMDS (sizeof(budgets_commands) / sizeof(budgets_commands[0]))

int kp_ctl__cmd_budgets(struct kp_ctl *ctl, int argc, char **argv)
{
    return kp_ctl__group(ctl, "budgets", budgets_commands, N_CMDS, argc, argv);
}

static const struct kp_ctl_column columns[] = {
    {"POLICY", "policy", NULL},
    {"BUDGET", "budget", NULL},
    {"SCOPE", "scope_kind", NULL},
    {"TARGET", "scope_target", NULL},
    {"KIND", "kind", NULL},
    {"WINDOW", "window", NULL},
    {"LIMIT", "limit_nanousd", kp_ctl__cell_usd},
    {"SPENT", "spent_nanousd", kp_ctl__cell_usd},
    {"GRANTED", "granted_nanousd", kp_ctl__cell_usd},
    {"REMAINING", "remaining_nanousd", kp_ctl__cell_usd},
    {"RESETS_AT", "resets_at", NULL},
};
#define N_COLS (sizeof(columns) / sizeof(columns[0]))

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

/* GET or POST .../budgets/POLICY/BUDGET[/reset] and print the budget. */
static int one(struct kp_ctl *ctl, int argc, char **argv, size_t cmd, const char *method,
               const char *suffix)
{
    json_t *answer = NULL;
    char *path = NULL;
    int first, rc = kp_ctl__parse(ctl, argc, argv, NULL, 0, &first);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__positionals(ctl, argc - first, 2, 2, budgets_commands[cmd].synopsis, false);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__resolve(ctl);
    if (rc == KP_CTL_EXIT_OK &&
        (path = kp_ctl__path("budgets", argv[first], argv[first + 1], suffix, NULL)) == NULL) {
        kp_ctl__error(ctl, "out of memory");
        rc = KP_CTL_EXIT_NO;
    }
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__call(ctl, method, path, NULL, NULL, &answer);
    if (rc == KP_CTL_EXIT_OK) {
        if (ctl->output != KP_CTL_OUTPUT_TABLE) {
            kp_ctl__print_doc(ctl, answer);
        } else {
            kp_ctl__print_record(columns, N_COLS, answer);
            static const struct kp_ctl_column grants[] = {{"NODE", "node_id", NULL},
                                                          {"GRANT", "nanousd", kp_ctl__cell_usd}};
            json_t *g = json_object_get(answer, "grants");
            if (json_array_size(g) > 0) {
                printf("\n");
                kp_ctl__print_table(grants, 2, g);
            }
        }
    }
    kp_free(path);
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

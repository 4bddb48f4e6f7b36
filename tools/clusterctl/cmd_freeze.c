/* `freeze`, `unfreeze` and `freezes`: the stop-loss button
 * (PUT/DELETE/GET /admin/v1/freezes..., docs/budgets.md). A freeze makes
 * every router refuse the calls of a tenant, project, feature, pool or
 * token with 403 frozen and the reason given here (a frozen key is skipped
 * instead), from the next view each router gets; unfreeze lifts it. Both
 * are audited with the caller's token and the reason. */
#include <stdio.h>
#include <string.h>

#include "clusterctl.h"

static const char *const scopes[] = {"tenant", "project", "feature", "pool", "key", "token"};
#define N_SCOPES (sizeof(scopes) / sizeof(scopes[0]))

/* SCOPE NAME from argv[first..]; usage error (exit 2) for an unknown
 * scope, so that a typo never reaches the server. */
static int scope_name(struct kp_ctl *ctl, int argc, char **argv, int first, const char *synopsis)
{
    int rc = kp_ctl__positionals(ctl, argc - first, 2, 2, synopsis, false);
    if (rc != KP_CTL_EXIT_OK)
        return rc;
    for (size_t i = 0; i < N_SCOPES; i++) {
        if (strcmp(argv[first], scopes[i]) == 0)
            return KP_CTL_EXIT_OK;
    }
    kp_ctl__usage_error(ctl,
                        "%s: '%s' is not a scope: use tenant, project, feature, pool, key or "
                        "token",
                        ctl->command, argv[first]);
    return KP_CTL_EXIT_USAGE;
}

static void print_done(struct kp_ctl *ctl, json_t *answer, const char *what, const char *scope,
                       const char *name)
{
    if (ctl->output != KP_CTL_OUTPUT_TABLE) {
        kp_ctl__print_doc(ctl, answer);
        return;
    }
    printf("%s %s ", what, scope);
    kp_ctl__print_clean(stdout, name);
    const char *reason = json_string_value(json_object_get(answer, "reason"));
    if (reason != NULL) {
        fputs(": \"", stdout);
        kp_ctl__print_clean(stdout, reason);
        fputs("\"", stdout);
    }
    putchar('\n');
}

/* PUT or DELETE /admin/v1/freezes/SCOPE/NAME. */
static int change(struct kp_ctl *ctl, const char *method, const char *scope, const char *name,
                  const json_t *body, const char *what)
{
    json_t *answer = NULL;
    char *path = kp_ctl__path("freezes", scope, name, NULL);
    if (path == NULL) {
        kp_ctl__error(ctl, "out of memory");
        return KP_CTL_EXIT_NO;
    }
    int rc = kp_ctl__call(ctl, method, path, body, NULL, &answer);
    if (rc == KP_CTL_EXIT_OK)
        print_done(ctl, answer, what, scope, name);
    json_decref(answer);
    kp_free(path);
    return rc;
}

static const char freeze_help[] =
    "\n"
    "The stop-loss button: every router of the cluster refuses new calls of NAME\n"
    "with 403 frozen and a message naming the scope, the name, the reason and\n"
    "since when, from the next registry view it gets (milliseconds after the\n"
    "freeze is committed). Calls already running finish. `clusterctl unfreeze\n"
    "SCOPE NAME` lifts it; both are in the audit log with your token and the\n"
    "reason. Freezing again replaces the reason.\n"
    "\n"
    "Scopes:\n"
    "  tenant NAME    calls attributed to the tenant (X-Tenant or the token's)\n"
    "  project NAME   calls with X-Project NAME (the project must exist)\n"
    "  feature NAME   calls with X-Feature NAME\n"
    "  pool NAME      calls to the pool; as a fallback it lends no keys (must exist)\n"
    "  key ID         not a refusal: routers skip the key, like a disabled one\n"
    "  token ID       calls made with the app token tk_... (must exist)\n"
    "\n"
    "Options:\n"
    "  -r, --reason TEXT  required, 1 to 500 bytes: shown to every refused app\n"
    "\n"
    "Needs a token with the operate permission (roles operator and admin).\n";

int kp_ctl__cmd_freeze(struct kp_ctl *ctl, int argc, char **argv)
{
    static const char synopsis[] = "tenant|project|feature|pool|key|token NAME --reason TEXT";
    if (kp_ctl__wants_help(argc, argv)) {
        printf("usage: %s [options] freeze SCOPE NAME --reason TEXT\n", ctl->prog);
        fputs(freeze_help, stdout);
        return KP_CTL_EXIT_OK;
    }
    const char *reason = NULL;
    const struct kp_ctl_flag flags[] = {{"reason", 'r', KP_CTL_FLAG_VALUE, &reason}};
    int first, rc = kp_ctl__parse(ctl, argc, argv, flags, 1, &first);
    if (rc == KP_CTL_EXIT_OK)
        rc = scope_name(ctl, argc, argv, first, synopsis);
    if (rc != KP_CTL_EXIT_OK)
        return rc;
    if (reason == NULL || reason[0] == '\0') {
        kp_ctl__usage_error(ctl,
                            "freeze: --reason is required: it is what every refused app and "
                            "the audit log will show (e.g. --reason \"runaway agent, INC-42\")");
        return KP_CTL_EXIT_USAGE;
    }
    json_t *body = json_pack("{s:s}", "reason", reason);
    if (body == NULL) {
        kp_ctl__usage_error(ctl, "freeze: --reason must be UTF-8 text");
        return KP_CTL_EXIT_USAGE;
    }
    rc = kp_ctl__resolve(ctl);
    if (rc == KP_CTL_EXIT_OK)
        rc = change(ctl, "PUT", argv[first], argv[first + 1], body, "frozen");
    json_decref(body);
    return rc;
}

int kp_ctl__cmd_unfreeze(struct kp_ctl *ctl, int argc, char **argv)
{
    int first, rc = kp_ctl__parse(ctl, argc, argv, NULL, 0, &first);
    if (rc == KP_CTL_EXIT_OK)
        rc = scope_name(ctl, argc, argv, first, "tenant|project|feature|pool|key|token NAME");
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__resolve(ctl);
    if (rc == KP_CTL_EXIT_OK)
        rc = change(ctl, "DELETE", argv[first], argv[first + 1], NULL, "unfrozen");
    return rc;
}

static const struct kp_ctl_column columns[] = {
    {"SCOPE", "scope", NULL},
    {"NAME", "target", NULL},
    {"REASON", "reason", NULL},
    {"BY", "frozen_by", NULL},
    {"SINCE", "created_ms", kp_ctl__cell_time},
};
#define N_COLS (sizeof(columns) / sizeof(columns[0]))

int kp_ctl__cmd_freezes(struct kp_ctl *ctl, int argc, char **argv)
{
    json_t *answer = NULL;
    int rc = kp_ctl__begin(ctl, argc, argv, "");
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__call(ctl, "GET", "/admin/v1/freezes", NULL, NULL, &answer);
    if (rc == KP_CTL_EXIT_OK) {
        json_t *items = json_object_get(answer, "items");
        if (ctl->output != KP_CTL_OUTPUT_TABLE)
            kp_ctl__print_doc(ctl, answer);
        else if (json_array_size(items) == 0)
            fprintf(stderr, "%s: nothing is frozen\n", ctl->prog);
        else
            kp_ctl__print_table(columns, N_COLS, items);
    }
    json_decref(answer);
    return rc;
}

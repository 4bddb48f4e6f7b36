/* `tokens ...`: the internal kp_ tokens apps and operators use.
 *
 * create is the one place clusterctl prints a token: the server returns its
 * text once and keeps only a MAC, so it is printed alone on stdout (ready
 * for `TOKEN=$(clusterctl tokens create ...)`) with the warning on stderr,
 * and wiped from memory afterwards. Everything else names tokens by their
 * tk_ id, which is not secret. */
#include <stdio.h>
#include <string.h>

#include "clusterctl.h"

static int tokens_list(struct kp_ctl *ctl, int argc, char **argv);
static int tokens_create(struct kp_ctl *ctl, int argc, char **argv);
static int tokens_disable(struct kp_ctl *ctl, int argc, char **argv);
static int tokens_delete(struct kp_ctl *ctl, int argc, char **argv);

static const struct kp_ctl_command tokens_commands[] = {
    {"list", "", "list the tokens (never their secrets)", tokens_list, false},
    {"create",
     "--role ROLE [--name N] [--tenant T] [--project P]... [--feature F]... [--pool P]... [--model "
     "M]... "
     "[--expires-in DURATION]",
     "create a token and print it, this once", tokens_create, false},
    {"disable", "ID", "stop a token from working (it stays listed)", tokens_disable, false},
    {"delete", "ID", "delete a token", tokens_delete, false},
};

int kp_ctl__cmd_tokens(struct kp_ctl *ctl, int argc, char **argv)
{
    return kp_ctl__group(ctl, "tokens", tokens_commands,
                         sizeof(tokens_commands) / sizeof(tokens_commands[0]), argc, argv);
}

static int tokens_list(struct kp_ctl *ctl, int argc, char **argv)
{
    return kp_ctl__list_kind(ctl, "tokens", argc, argv);
}

struct create_args {
    const char *role, *name, *tenant, *expires_in;
    json_t *projects, *features, *pools, *models;
};

static json_t *create_body(struct kp_ctl *ctl, const struct create_args *a)
{
    uint64_t seconds = 0;
    json_int_t expires_at = 0;

    if (a->role == NULL) {
        kp_ctl__usage_error(ctl, "tokens create: --role is required (admin, operator, app, "
                                 "finance or auditor)");
        return NULL;
    }
    if (a->expires_in != NULL) {
        if (kp_ctl__parse_duration(ctl, "--expires-in", a->expires_in, &seconds) != KP_CTL_EXIT_OK)
            return NULL;
        if (seconds == 0) {
            kp_ctl__usage_error(ctl, "tokens create: --expires-in must be more than 0 (leave it "
                                     "out for a token that never expires)");
            return NULL;
        }
        expires_at = (json_int_t)(kp_now_unix_ms() + (int64_t)seconds * 1000);
    }
    json_t *body = json_pack("{s:s, s:s*, s:s*, s:O*, s:O*, s:O*, s:O*}", "role", a->role, "name",
                             a->name, "tenant", a->tenant, "projects", a->projects, "features",
                             a->features, "pools", a->pools, "models", a->models);
    if (body == NULL) {
        kp_ctl__usage_error(ctl, "tokens create: the values must be valid UTF-8");
        return NULL;
    }
    if (expires_at != 0)
        json_object_set_new(body, "expires_at_ms", json_integer(expires_at));
    return body;
}

static const char *string_or(const json_t *obj, const char *field, const char *dflt)
{
    const char *s = json_string_value(json_object_get(obj, field));
    return s != NULL ? s : dflt;
}

static void print_created(struct kp_ctl *ctl, json_t *answer)
{
    const char *token = json_string_value(json_object_get(answer, "token"));
    json_t *item = json_object_get(answer, "item");
    const char *id = string_or(item, "id", NULL);
    struct kp_buf expires;

    if (ctl->output != KP_CTL_OUTPUT_TABLE)
        kp_ctl__print_doc(ctl, answer);
    else if (token != NULL)
        printf("%s\n", token);
    fflush(stdout);
    kp_buf_init(&expires);
    kp_ctl__cell_time(&expires, json_object_get(item, "expires_at_ms"), item);
    fprintf(stderr, "%s: token ", ctl->prog);
    kp_ctl__print_clean(stderr, id != NULL ? id : "?");
    fprintf(stderr, " created (role ");
    kp_ctl__print_clean(stderr, string_or(item, "role", "?"));
    fprintf(stderr, ", tenant ");
    kp_ctl__print_clean(stderr, string_or(item, "tenant", "*"));
    fprintf(stderr, ", expires %s).\n", expires.data != NULL ? expires.data : "never");
    fprintf(stderr,
            "%s: this is the only time the token is shown: store it now (a secret manager, or "
            "clusterctl config set-context NAME --token-file FILE). It cannot be shown again; "
            "if it is lost, create another and delete this one (clusterctl tokens delete %s).\n",
            ctl->prog, id != NULL ? id : "ID");
    kp_buf_free(&expires);
}

static int tokens_create(struct kp_ctl *ctl, int argc, char **argv)
{
    struct create_args a;
    const struct kp_ctl_flag flags[] = {
        {"role", 0, KP_CTL_FLAG_VALUE, &a.role},
        {"name", 0, KP_CTL_FLAG_VALUE, &a.name},
        {"tenant", 0, KP_CTL_FLAG_VALUE, &a.tenant},
        {"project", 0, KP_CTL_FLAG_LIST, &a.projects},
        {"feature", 0, KP_CTL_FLAG_LIST, &a.features},
        {"pool", 0, KP_CTL_FLAG_LIST, &a.pools},
        {"model", 0, KP_CTL_FLAG_LIST, &a.models},
        {"expires-in", 0, KP_CTL_FLAG_VALUE, &a.expires_in},
    };
    json_t *body = NULL, *answer = NULL;
    int first, rc;

    memset(&a, 0, sizeof(a));
    rc = kp_ctl__parse(ctl, argc, argv, flags, sizeof(flags) / sizeof(flags[0]), &first);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__positionals(ctl, argc - first, 0, 0, tokens_commands[1].synopsis, false);
    if (rc == KP_CTL_EXIT_OK && (body = create_body(ctl, &a)) == NULL)
        rc = KP_CTL_EXIT_USAGE;
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__resolve(ctl);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__call(ctl, "POST", "/admin/v1/tokens", body, NULL, &answer);
    if (rc == KP_CTL_EXIT_OK)
        print_created(ctl, answer);
    /* jansson keeps its own copy of the token text: wipe it too. */
    const char *token = json_string_value(json_object_get(answer, "token"));
    if (token != NULL)
        memset((char *)token, 0, strlen(token));
    json_decref(answer);
    json_decref(body);
    json_decref(a.projects);
    json_decref(a.features);
    json_decref(a.pools);
    json_decref(a.models);
    return rc;
}

static int token_request(struct kp_ctl *ctl, int argc, char **argv, const char *method,
                         const char *action, const char *done)
{
    char *path = NULL;
    json_t *answer = NULL;
    int first, rc = kp_ctl__parse(ctl, argc, argv, NULL, 0, &first);

    if (rc != KP_CTL_EXIT_OK ||
        (rc = kp_ctl__positionals(ctl, argc - first, 1, 1, "ID", false)) != KP_CTL_EXIT_OK ||
        (rc = kp_ctl__resolve(ctl)) != KP_CTL_EXIT_OK)
        return rc;
    if ((path = kp_ctl__path("tokens", argv[first], action, NULL)) == NULL) {
        kp_ctl__error(ctl, "out of memory");
        return KP_CTL_EXIT_NO;
    }
    rc = kp_ctl__call(ctl, method, path, NULL, NULL, &answer);
    if (rc == KP_CTL_EXIT_OK && ctl->output != KP_CTL_OUTPUT_TABLE) {
        kp_ctl__print_doc(ctl, answer);
    } else if (rc == KP_CTL_EXIT_OK) {
        fputs("token ", stdout);
        kp_ctl__print_clean(stdout, argv[first]);
        printf(": %s\n", done);
    }
    json_decref(answer);
    kp_free(path);
    return rc;
}

static int tokens_disable(struct kp_ctl *ctl, int argc, char **argv)
{
    return token_request(ctl, argc, argv, "POST", "disable", "disabled");
}

static int tokens_delete(struct kp_ctl *ctl, int argc, char **argv)
{
    return token_request(ctl, argc, argv, "DELETE", NULL, "deleted");
}

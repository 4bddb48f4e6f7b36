/* `clusterctl config ...`: the contexts file, a subcommand table of its own.
 *
 * set-context creates or updates a context and saves the file (0600); the
 * first context saved also becomes current, so that a fresh install needs
 * one command before `clusterctl status` works. use-context switches the
 * current one and refuses a name the file does not hold. Tokens are written
 * to the file but never printed: get-contexts only says whether one is set. */
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clusterctl.h"

static int use_context(struct kp_ctl *ctl, int argc, char **argv);
static int set_context(struct kp_ctl *ctl, int argc, char **argv);
static int get_contexts(struct kp_ctl *ctl, int argc, char **argv);
static int current_context(struct kp_ctl *ctl, int argc, char **argv);

static const struct kp_ctl_command config_commands[] = {
    {"use-context", "NAME", "make NAME the current context", use_context, false},
    {"set-context",
     "NAME [--server URL] [--token TOKEN | --token-file FILE] [--cacert FILE] [--cert FILE "
     "--key FILE]",
     "create or update a context; the first one becomes current", set_context, false},
    {"get-contexts", "", "list the contexts (tokens are never shown)", get_contexts, false},
    {"current-context", "", "print the name of the current context", current_context, false},
};

#define N_CONFIG_COMMANDS (sizeof(config_commands) / sizeof(config_commands[0]))

static int load(struct kp_ctl *ctl, struct kp_ctl_contexts **out)
{
    char err[512];
    if (kp_ctl__contexts_load(out, err, sizeof(err)) != 0) {
        kp_ctl__error(ctl, "%s", err);
        return KP_CTL_EXIT_USAGE;
    }
    return KP_CTL_EXIT_OK;
}

static int save(struct kp_ctl *ctl, struct kp_ctl_contexts *c)
{
    char err[512];
    if (kp_ctl__contexts_save(c, err, sizeof(err)) != 0) {
        kp_ctl__error(ctl, "%s", err);
        return KP_CTL_EXIT_NO;
    }
    return KP_CTL_EXIT_OK;
}

static bool valid_name(const char *name)
{
    if (name[0] == '\0' || strlen(name) > 128)
        return false;
    for (const char *p = name; *p != '\0'; p++) {
        if ((unsigned char)*p <= 0x20 || *p == 0x7f)
            return false;
    }
    return true;
}

/* The one positional NAME of a subcommand, after options were parsed. */
static const char *name_arg(struct kp_ctl *ctl, int argc, char **argv, int next, const char *cmd)
{
    if (next >= argc) {
        kp_ctl__usage_error(ctl, "config %s needs a context NAME", cmd);
        return NULL;
    }
    if (next + 1 < argc) {
        kp_ctl__usage_error(ctl, "config %s takes one NAME, got '%s' too", cmd, argv[next + 1]);
        return NULL;
    }
    if (!valid_name(argv[next])) {
        kp_ctl__usage_error(ctl, "bad context name '%s': 1 to 128 characters, no spaces",
                            argv[next]);
        return NULL;
    }
    return argv[next];
}

static int use_context(struct kp_ctl *ctl, int argc, char **argv)
{
    struct kp_ctl_contexts *c;
    const char *name;
    int rc;

    opterr = 0;
    optind = 0;
    if (getopt(argc, argv, "+") != -1) {
        kp_ctl__usage_error(ctl, "config use-context takes no option '%s'", argv[optind - 1]);
        return KP_CTL_EXIT_USAGE;
    }
    if ((name = name_arg(ctl, argc, argv, optind, "use-context")) == NULL)
        return KP_CTL_EXIT_USAGE;
    if ((rc = load(ctl, &c)) != KP_CTL_EXIT_OK)
        return rc;
    if (kp_ctl__contexts_use(c, name) != 0) {
        kp_ctl__error(ctl, "no context '%s' in %s (see %s config get-contexts)", name,
                      kp_ctl__contexts_file(c), ctl->prog);
        rc = KP_CTL_EXIT_NO;
    } else if ((rc = save(ctl, c)) == KP_CTL_EXIT_OK) {
        printf("current context is now %s\n", name);
    }
    kp_ctl__contexts_close(c);
    return rc;
}

struct context_args {
    const char *name;
    char *server; /* trailing slashes trimmed */
    const char *token;
    const char *token_file;
    /* TLS files, made absolute (the context is used from any directory) */
    char cacert[PATH_MAX], cert[PATH_MAX], key[PATH_MAX];
};

/* @path as an absolute name into @out; a usage error when it is not there. */
static int tls_path(struct kp_ctl *ctl, const char *opt, const char *path, char *out)
{
    if (realpath(path, out) == NULL) {
        kp_ctl__usage_error(ctl, "config set-context: %s '%s': %s", opt, path, strerror(errno));
        return KP_CTL_EXIT_USAGE;
    }
    return KP_CTL_EXIT_OK;
}

static int parse_context_args(struct kp_ctl *ctl, int argc, char **argv, struct context_args *a)
{
    static const struct option options[] = {
        {"server", required_argument, NULL, 's'},
        {"token", required_argument, NULL, 't'},
        {"token-file", required_argument, NULL, 'f'},
        {"cacert", required_argument, NULL, KP_CTL_OPT_CACERT},
        {"cert", required_argument, NULL, KP_CTL_OPT_CERT},
        {"key", required_argument, NULL, KP_CTL_OPT_KEY},
        {NULL, 0, NULL, 0},
    };
    int c, rc;

    memset(a, 0, sizeof(*a));
    opterr = 0;
    optind = 0;
    while ((c = getopt_long(argc, argv, ":s:t:f:", options, NULL)) != -1) {
        if (c == 's') {
            a->server = optarg;
        } else if (c == 't') {
            a->token = optarg;
        } else if (c == 'f') {
            a->token_file = optarg;
        } else if (c == KP_CTL_OPT_CACERT || c == KP_CTL_OPT_CERT || c == KP_CTL_OPT_KEY) {
            char *dst = c == KP_CTL_OPT_CACERT ? a->cacert
                        : c == KP_CTL_OPT_CERT ? a->cert
                                               : a->key;
            const char *opt = c == KP_CTL_OPT_CACERT ? "--cacert"
                              : c == KP_CTL_OPT_CERT ? "--cert"
                                                     : "--key";
            if ((rc = tls_path(ctl, opt, optarg, dst)) != KP_CTL_EXIT_OK)
                return rc;
        } else {
            kp_ctl__usage_error(ctl, "config set-context: %s '%s'",
                                c == ':' ? "option needs a value" : "unknown option",
                                argv[optind - 1]);
            return KP_CTL_EXIT_USAGE;
        }
    }
    if ((a->name = name_arg(ctl, argc, argv, optind, "set-context")) == NULL)
        return KP_CTL_EXIT_USAGE;
    if ((a->cert[0] == '\0') != (a->key[0] == '\0')) {
        kp_ctl__usage_error(ctl, "config set-context: a client certificate needs both --cert and "
                                 "--key");
        return KP_CTL_EXIT_USAGE;
    }
    if (a->token != NULL && a->token_file != NULL) {
        kp_ctl__usage_error(ctl, "config set-context: give --token or --token-file, not both");
        return KP_CTL_EXIT_USAGE;
    }
    if (a->token != NULL && (a->token[0] == '\0' || strpbrk(a->token, "\r\n") != NULL)) {
        kp_ctl__usage_error(ctl, "config set-context: the token must be one non-empty line");
        return KP_CTL_EXIT_USAGE;
    }
    if (a->server != NULL) {
        size_t n = strlen(a->server);
        while (n > 0 && a->server[n - 1] == '/')
            a->server[--n] = '\0';
        if (!kp_ctl__valid_server(a->server)) {
            kp_ctl__usage_error(ctl, "--server '%s' is not an http:// or https:// URL", a->server);
            return KP_CTL_EXIT_USAGE;
        }
    }
    return KP_CTL_EXIT_OK;
}

static int save_context(struct kp_ctl *ctl, const struct context_args *a, const char *token)
{
    struct kp_ctl_contexts *c;
    struct kp_ctl_context old;
    bool made_current = false;
    int rc;

    if ((rc = load(ctl, &c)) != KP_CTL_EXIT_OK)
        return rc;
    if (a->server == NULL && !kp_ctl__contexts_find(c, a->name, &old)) {
        kp_ctl__usage_error(ctl, "context '%s' is new: --server is required", a->name);
        rc = KP_CTL_EXIT_USAGE;
        goto out;
    }
    if (kp_ctl__contexts_set(c, a->name, a->server, token, a->cacert[0] ? a->cacert : NULL,
                             a->cert[0] ? a->cert : NULL, a->key[0] ? a->key : NULL) != 0) {
        kp_ctl__error(ctl, "cannot update the contexts: out of memory");
        rc = KP_CTL_EXIT_NO;
        goto out;
    }
    if (kp_ctl__contexts_current(c) == NULL) {
        made_current = true;
        if (kp_ctl__contexts_use(c, a->name) != 0) {
            kp_ctl__error(ctl, "cannot update the contexts: out of memory");
            rc = KP_CTL_EXIT_NO;
            goto out;
        }
    }
    if ((rc = save(ctl, c)) == KP_CTL_EXIT_OK)
        printf("context %s saved in %s%s\n", a->name, kp_ctl__contexts_file(c),
               made_current ? " (now the current context)" : "");
out:
    kp_ctl__contexts_close(c);
    return rc;
}

static int set_context(struct kp_ctl *ctl, int argc, char **argv)
{
    struct context_args a;
    struct kp_ctl_secret token;
    int rc = parse_context_args(ctl, argc, argv, &a);

    if (rc != KP_CTL_EXIT_OK)
        return rc;
    token.len = 0;
    if (a.token_file != NULL &&
        (rc = kp_ctl__read_token_file(ctl, "--token-file", a.token_file, &token)) != KP_CTL_EXIT_OK)
        goto out;
    rc = save_context(ctl, &a, a.token_file != NULL ? token.buf : a.token);
out:
    kp_ctl__secret_wipe(&token);
    return rc;
}

static void print_contexts_table(struct kp_ctl_contexts *c)
{
    const char *current = kp_ctl__contexts_current(c);
    struct kp_ctl_context ctx;
    size_t n = kp_ctl__contexts_count(c);
    int width = (int)strlen("NAME");

    for (size_t i = 0; i < n; i++) {
        if (kp_ctl__contexts_at(c, i, &ctx) && (int)strlen(ctx.name) > width)
            width = (int)strlen(ctx.name);
    }
    printf("CURRENT  %-*s  %-5s  %s\n", width, "NAME", "TOKEN", "SERVER");
    for (size_t i = 0; i < n; i++) {
        if (!kp_ctl__contexts_at(c, i, &ctx))
            continue;
        printf("%-7s  %-*s  %-5s  %s\n",
               current != NULL && strcmp(current, ctx.name) == 0 ? "*" : "", width, ctx.name,
               ctx.token != NULL ? "set" : "-", ctx.server != NULL ? ctx.server : "-");
    }
}

static void print_contexts_doc(const struct kp_ctl *ctl, struct kp_ctl_contexts *c)
{
    const char *current = kp_ctl__contexts_current(c);
    json_t *list = json_array();
    struct kp_ctl_context ctx;
    size_t n = kp_ctl__contexts_count(c);

    for (size_t i = 0; i < n; i++) {
        if (kp_ctl__contexts_at(c, i, &ctx))
            json_array_append_new(list,
                                  json_pack("{s:s, s:s?, s:b, s:s?, s:s?}", "name", ctx.name,
                                            "server", ctx.server, "token_set", ctx.token != NULL,
                                            "cacert", ctx.cacert, "cert", ctx.cert));
    }
    json_t *out = json_pack("{s:s, s:s?, s:o}", "file", kp_ctl__contexts_file(c), "current-context",
                            current, "contexts", list);
    if (out != NULL)
        kp_ctl__print_doc(ctl, out);
    json_decref(out);
}

static int get_contexts(struct kp_ctl *ctl, int argc, char **argv)
{
    struct kp_ctl_contexts *c;
    int rc = kp_ctl__options(ctl, argc, argv, "");

    if (rc != KP_CTL_EXIT_OK || (rc = load(ctl, &c)) != KP_CTL_EXIT_OK)
        return rc;
    if (ctl->output != KP_CTL_OUTPUT_TABLE)
        print_contexts_doc(ctl, c);
    else
        print_contexts_table(c);
    kp_ctl__contexts_close(c);
    return KP_CTL_EXIT_OK;
}

static int current_context(struct kp_ctl *ctl, int argc, char **argv)
{
    struct kp_ctl_contexts *c;
    const char *name;
    int rc = kp_ctl__options(ctl, argc, argv, "");

    if (rc != KP_CTL_EXIT_OK || (rc = load(ctl, &c)) != KP_CTL_EXIT_OK)
        return rc;
    name = kp_ctl__contexts_current(c);
    if (name != NULL) {
        printf("%s\n", name);
    } else {
        kp_ctl__error(ctl, "no current context in %s (see %s config use-context)",
                      kp_ctl__contexts_file(c), ctl->prog);
        rc = KP_CTL_EXIT_NO;
    }
    kp_ctl__contexts_close(c);
    return rc;
}

static void print_config_usage(struct kp_ctl *ctl, FILE *out)
{
    char path[4096];
    kp_ctl__print_group_usage(out, ctl->prog, "config", config_commands, N_CONFIG_COMMANDS);
    fprintf(out, "\nContexts file: %s\n(set KEYPLANE_CONFIG_DIR to use another directory)\n",
            kp_ctl__contexts_path(path, sizeof(path)) == 0 ? path : "(HOME is not set)");
}

int kp_ctl__cmd_config(struct kp_ctl *ctl, int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        bool help = argc >= 2;
        print_config_usage(ctl, help ? stdout : stderr);
        return help ? KP_CTL_EXIT_OK : KP_CTL_EXIT_USAGE;
    }
    return kp_ctl__dispatch(ctl, "config", config_commands, N_CONFIG_COMMANDS, argc - 1, argv + 1);
}

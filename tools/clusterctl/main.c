/* clusterctl's entry point: global options, the command table, and where the
 * server and token come from.
 *
 * The global options come before the command (`clusterctl --server URL
 * status`); server commands also accept them after the command name
 * (`clusterctl status -o json`). The server and token are resolved once per
 * run: a flag wins over the environment (KEYPLANE_SERVER, KEYPLANE_TOKEN),
 * which wins over the current context of the contexts file, which wins over
 * the default local node. A context's token is only sent to that context's
 * server, so `--server elsewhere` never leaks the token of the current
 * context to another host.
 *
 * Every failure ends in one of four exit codes (clusterctl.h) with a line on
 * stderr that says what to do next. */
#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clusterctl.h"

static const struct kp_ctl_command commands[] = {
    {"status", "", "show the node's status, liveness and readiness", kp_ctl__cmd_status, false},
    {"health", "", "exit 0 when the node is ready, 1 otherwise", kp_ctl__cmd_health, false},
    {"metrics", "", "print the node's Prometheus metrics", kp_ctl__cmd_metrics, false},
    {"get", "KIND [ID] [--consistent] [--effective]",
     "list a kind of entity (providers, keys, ...), or show one; prices --effective: what applies",
     kp_ctl__cmd_get, false},
    {"put", "KIND ID (-f FILE | --set FIELD=VALUE ...) [--if-version N]",
     "create or replace an entity from a JSON/YAML file, or change fields of it", kp_ctl__cmd_put,
     false},
    {"delete", "KIND ID [--if-version N]", "delete an entity", kp_ctl__cmd_delete, false},
    {"apply", "-f FILE.yaml [--dry-run]",
     "upsert providers, pools, tenants, projects, policies and prices; show what changed",
     kp_ctl__cmd_apply, false},
    {"keys", "SUBCOMMAND ...", "add, rotate, disable, enable, revoke keys (clusterctl keys --help)",
     kp_ctl__cmd_keys, true},
    {"drill", "rotate KEY --pool POOL --gateway URL --app-token-file FILE --model MODEL --yes",
     "rehearse a leaked key on a test pool under traffic; report exposure and client errors "
     "(clusterctl drill --help)",
     kp_ctl__cmd_drill, true},
    {"tokens", "SUBCOMMAND ...", "create, list, disable tokens (clusterctl tokens --help)",
     kp_ctl__cmd_tokens, true},
    {"members", "SUBCOMMAND ...", "list, add, remove cluster members (clusterctl members --help)",
     kp_ctl__cmd_members, true},
    {"cluster", "", "show the Raft cluster: members, leader, term, indexes", kp_ctl__cmd_cluster,
     false},
    {"leader", "transfer [NODE_ID]", "hand the Raft leadership to another voter",
     kp_ctl__cmd_leader, true},
    {"audit", "SUBCOMMAND ...", "list or verify the audit chain (clusterctl audit --help)",
     kp_ctl__cmd_audit, true},
    {"budgets", "list | show POLICY BUDGET | reset POLICY BUDGET | set POLICY BUDGET ...",
     "budget state: limit, spent, granted, remaining (clusterctl budgets --help)",
     kp_ctl__cmd_budgets, true},
    {"alerts", "list [--all] | show ID | ack ID | dead-letters",
     "alerts the leader raised: severity, cause, recommended action (clusterctl alerts --help)",
     kp_ctl__cmd_alerts, true},
    {"freeze", "tenant|project|feature|pool|key|token NAME --reason TEXT",
     "stop-loss: every router refuses NAME's calls until it is unfrozen (clusterctl freeze --help)",
     kp_ctl__cmd_freeze, true},
    {"unfreeze", "tenant|project|feature|pool|key|token NAME", "lift a freeze (audited)",
     kp_ctl__cmd_unfreeze, false},
    {"freezes", "", "list what is frozen: scope, name, reason, by whom, since when",
     kp_ctl__cmd_freezes, false},
    {"usage", "[events|export] [--from T] [--to T] [--group-by DIM,...] ...",
     "metered usage as a table, raw usage events, or a CSV export (clusterctl usage --help)",
     kp_ctl__cmd_usage, true},
    {"reconcile", "--vendor openai|anthropic --file EXPORT.csv [--threshold 1%] ...",
     "compare a vendor's cost export with metered usage (clusterctl reconcile --help)",
     kp_ctl__cmd_reconcile, true},
    {"whoami", "", "show the token's id, role and permissions", kp_ctl__cmd_whoami, false},
    {"secrets", "rewrap", "reseal every secret under the current master key (rotation)",
     kp_ctl__cmd_secrets, true},
    {"snapshot", "save FILE", "save the registry as a snapshot file (backup, restore)",
     kp_ctl__cmd_snapshot, true},
    {"config", "SUBCOMMAND ...", "manage contexts (clusterctl config --help)", kp_ctl__cmd_config,
     true},
    {"version", "", "print clusterctl's version", kp_ctl__cmd_version, false},
};

static const char global_help[] =
    "Options:\n"
    "  -s, --server URL       control URL of a keyplaned node (default " KP_CTL_DEFAULT_SERVER ")\n"
    "  -t, --token TOKEN      admin token, sent as Authorization: Bearer (prefer KEYPLANE_TOKEN:\n"
    "                         a flag is visible to other users in the process list)\n"
    "  -o, --output FORMAT    table (default), json or yaml\n"
    "      --cacert FILE      verify an https:// server against this CA (PEM) instead of the\n"
    "                         system's (env KEYPLANE_CACERT)\n"
    "      --cert FILE        client certificate (PEM) for a server that requires one, with\n"
    "      --key FILE         its private key (env KEYPLANE_CERT, KEYPLANE_KEY)\n"
    "  -h, --help             show this help; COMMAND --help shows a command's\n"
    "\n"
    "The server, token and TLS files come from the flags, else KEYPLANE_SERVER,\n"
    "KEYPLANE_TOKEN, KEYPLANE_CACERT, KEYPLANE_CERT and KEYPLANE_KEY,\n"
    "else the current context in $KEYPLANE_CONFIG_DIR/config.yaml (default\n"
    "~/.config/keyplane/config.yaml; see clusterctl config --help).\n"
    "\n"
    "Secrets (a key's secret) are read from stdin or --secret-file, never from the\n"
    "command line.\n"
    "\n"
    "Exit codes: 0 ok, 1 refused by the server or not ready, 2 usage or configuration\n"
    "error, 3 server unreachable.\n";

static const struct option common_options[] = {
    {"server", required_argument, NULL, 's'},
    {"token", required_argument, NULL, 't'},
    {"output", required_argument, NULL, 'o'},
    {"help", no_argument, NULL, 'h'},
    {"cacert", required_argument, NULL, KP_CTL_OPT_CACERT},
    {"cert", required_argument, NULL, KP_CTL_OPT_CERT},
    {"key", required_argument, NULL, KP_CTL_OPT_KEY},
    {NULL, 0, NULL, 0},
};

static void vreport(const struct kp_ctl *ctl, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

static void vreport(const struct kp_ctl *ctl, const char *fmt, va_list ap)
{
    fprintf(stderr, "%s: ", ctl->prog);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

void kp_ctl__error(struct kp_ctl *ctl, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport(ctl, fmt, ap);
    va_end(ap);
}

void kp_ctl__usage_error(struct kp_ctl *ctl, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport(ctl, fmt, ap);
    va_end(ap);
    fprintf(stderr, "Run '%s %s%s--help' for usage.\n", ctl->prog, ctl->command,
            ctl->command[0] ? " " : "");
}

void kp_ctl__print_group_usage(FILE *out, const char *prog, const char *group,
                               const struct kp_ctl_command *table, size_t n)
{
    fprintf(out, "usage: %s [options] %s%sCOMMAND [ARGS]\n\nCommands:\n", prog, group ? group : "",
            group ? " " : "");
    for (size_t i = 0; i < n; i++) {
        char head[256];
        int len = snprintf(head, sizeof(head), "%s %s", table[i].name, table[i].synopsis);
        if (len > 28)
            fprintf(out, "  %s\n  %-28s %s\n", head, "", table[i].summary);
        else
            fprintf(out, "  %-28s %s\n", head, table[i].summary);
    }
}

static void print_usage(FILE *out, const char *prog)
{
    kp_ctl__print_group_usage(out, prog, NULL, commands, sizeof(commands) / sizeof(commands[0]));
    fprintf(out, "\n%s", global_help);
}

int kp_ctl__parse_output(struct kp_ctl *ctl, const char *value)
{
    if (strcmp(value, "table") == 0) {
        ctl->output = KP_CTL_OUTPUT_TABLE;
    } else if (strcmp(value, "json") == 0) {
        ctl->output = KP_CTL_OUTPUT_JSON;
    } else if (strcmp(value, "yaml") == 0) {
        ctl->output = KP_CTL_OUTPUT_YAML;
    } else {
        kp_ctl__usage_error(ctl, "--output must be 'table', 'json' or 'yaml', not '%s'", value);
        return KP_CTL_EXIT_USAGE;
    }
    return KP_CTL_EXIT_OK;
}

bool kp_ctl__wants_help(int argc, char **argv)
{
    for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return true;
    }
    return false;
}

int kp_ctl__common_option(struct kp_ctl *ctl, int c, const char *value, bool *help)
{
    switch (c) {
    case 's':
        ctl->flag_server = value;
        return KP_CTL_EXIT_OK;
    case 't':
        ctl->flag_token = value;
        return KP_CTL_EXIT_OK;
    case 'o':
        return kp_ctl__parse_output(ctl, value);
    case KP_CTL_OPT_CACERT:
        ctl->flag_cacert = value;
        return KP_CTL_EXIT_OK;
    case KP_CTL_OPT_CERT:
        ctl->flag_cert = value;
        return KP_CTL_EXIT_OK;
    case KP_CTL_OPT_KEY:
        ctl->flag_key = value;
        return KP_CTL_EXIT_OK;
    case 'h':
        *help = true;
        return KP_CTL_EXIT_OK;
    default:
        return KP_CTL_EXIT_USAGE;
    }
}

/* getopt's own messages are switched off (opterr = 0) so that every usage
 * error reads the same way and ends with the --help hint. */
static int bad_option(struct kp_ctl *ctl, int c, char **argv)
{
    const char *arg = argv[optind - 1];
    if (c == ':')
        kp_ctl__usage_error(ctl, "option '%s' needs a value", arg);
    else if (optopt != 0)
        kp_ctl__usage_error(ctl, "unknown option '-%c'", optopt);
    else
        kp_ctl__usage_error(ctl, "unknown option '%.*s'", (int)strcspn(arg, "="), arg);
    return KP_CTL_EXIT_USAGE;
}

/* Parses the common options from argv[1] up to the command name; returns an
 * exit code, with *next set to the command name's index and *help to whether
 * --help was given. */
static int parse_global(struct kp_ctl *ctl, int argc, char **argv, int *next, bool *help)
{
    int c;
    *help = false;
    opterr = 0;
    optind = 0; /* glibc: restart the scan on a new argv */
    while ((c = getopt_long(argc, argv, "+:s:t:o:h", common_options, NULL)) != -1) {
        if (c == ':' || c == '?')
            return bad_option(ctl, c, argv);
        if (kp_ctl__common_option(ctl, c, optarg, help) != KP_CTL_EXIT_OK)
            return KP_CTL_EXIT_USAGE;
    }
    *next = optind;
    return KP_CTL_EXIT_OK;
}

/* Drops trailing slashes so that paths can be appended as "/admin/...". */
static void trim_server(char *server)
{
    size_t n = strlen(server);
    while (n > 0 && server[n - 1] == '/')
        server[--n] = '\0';
}

static int resolve_from_context(struct kp_ctl *ctl, const char *env_token)
{
    struct kp_ctl_contexts *contexts;
    struct kp_ctl_context cur;
    const char *name;
    char err[512];

    if (kp_ctl__contexts_load(&contexts, err, sizeof(err)) != 0) {
        kp_ctl__error(ctl, "%s", err);
        return KP_CTL_EXIT_USAGE;
    }
    name = kp_ctl__contexts_current(contexts);
    if (name != NULL && kp_ctl__contexts_find(contexts, name, &cur)) {
        if (ctl->server == NULL && cur.server != NULL) {
            if ((ctl->server = kp_strdup(cur.server)) != NULL)
                trim_server(ctl->server);
            snprintf(ctl->server_source, sizeof(ctl->server_source), "context %s", name);
        }
        /* The context's token, CA and client certificate belong to the
         * context's server only. */
        bool same =
            cur.server != NULL && ctl->server != NULL && strcmp(ctl->server, cur.server) == 0;
        if (ctl->token == NULL && env_token == NULL && cur.token != NULL && same)
            ctl->token = kp_strdup(cur.token);
        if (ctl->cacert == NULL && cur.cacert != NULL && same)
            ctl->cacert = kp_strdup(cur.cacert);
        if (ctl->cert == NULL && cur.cert != NULL && cur.key != NULL && same) {
            ctl->cert = kp_strdup(cur.cert);
            ctl->key = kp_strdup(cur.key);
        }
    }
    kp_ctl__contexts_close(contexts);
    return KP_CTL_EXIT_OK;
}

static const char *nonempty_env(const char *name)
{
    const char *v = getenv(name);
    return v != NULL && v[0] != '\0' ? v : NULL;
}

/* A TLS file named by a flag or the environment: it must be readable. */
static int tls_file(struct kp_ctl *ctl, const char *flag, const char *env, const char *opt,
                    char **out)
{
    const char *v = flag != NULL ? flag : nonempty_env(env);
    if (v == NULL)
        return KP_CTL_EXIT_OK;
    if (access(v, R_OK) != 0) {
        kp_ctl__usage_error(ctl, "%s '%s' (from %s): cannot read: %s", opt, v,
                            flag != NULL ? opt : env, strerror(errno));
        return KP_CTL_EXIT_USAGE;
    }
    if ((*out = kp_strdup(v)) == NULL) {
        kp_ctl__error(ctl, "out of memory");
        return KP_CTL_EXIT_NO;
    }
    return KP_CTL_EXIT_OK;
}

static int resolve_tls_flags(struct kp_ctl *ctl)
{
    int rc;
    if ((rc = tls_file(ctl, ctl->flag_cacert, "KEYPLANE_CACERT", "--cacert", &ctl->cacert)) !=
            KP_CTL_EXIT_OK ||
        (rc = tls_file(ctl, ctl->flag_cert, "KEYPLANE_CERT", "--cert", &ctl->cert)) !=
            KP_CTL_EXIT_OK ||
        (rc = tls_file(ctl, ctl->flag_key, "KEYPLANE_KEY", "--key", &ctl->key)) != KP_CTL_EXIT_OK)
        return rc;
    if ((ctl->cert == NULL) != (ctl->key == NULL)) {
        kp_ctl__usage_error(ctl, "a client certificate needs both --cert and --key");
        return KP_CTL_EXIT_USAGE;
    }
    return KP_CTL_EXIT_OK;
}

int kp_ctl__resolve(struct kp_ctl *ctl)
{
    const char *env_server = nonempty_env("KEYPLANE_SERVER");
    const char *env_token = nonempty_env("KEYPLANE_TOKEN");
    const char *token = ctl->flag_token ? ctl->flag_token : env_token;

    if (ctl->flag_server != NULL || env_server != NULL) {
        if ((ctl->server = kp_strdup(ctl->flag_server ? ctl->flag_server : env_server)) != NULL)
            trim_server(ctl->server);
        snprintf(ctl->server_source, sizeof(ctl->server_source), "%s",
                 ctl->flag_server ? "--server" : "KEYPLANE_SERVER");
    }
    if (token != NULL)
        ctl->token = kp_strdup(token);
    int rc = resolve_tls_flags(ctl);
    if (rc != KP_CTL_EXIT_OK)
        return rc;
    if (ctl->server == NULL || ctl->token == NULL || ctl->cacert == NULL || ctl->cert == NULL) {
        rc = resolve_from_context(ctl, env_token);
        if (rc != KP_CTL_EXIT_OK)
            return rc;
    }
    if (ctl->server == NULL) {
        ctl->server = kp_strdup(KP_CTL_DEFAULT_SERVER);
        snprintf(ctl->server_source, sizeof(ctl->server_source), "the default");
    }
    if (ctl->server == NULL || (token != NULL && ctl->token == NULL)) {
        kp_ctl__error(ctl, "out of memory");
        return KP_CTL_EXIT_NO;
    }
    if (!kp_ctl__valid_server(ctl->server)) {
        kp_ctl__usage_error(ctl, "server '%s' (from %s) is not an http:// or https:// URL",
                            ctl->server, ctl->server_source);
        return KP_CTL_EXIT_USAGE;
    }
    if (ctl->token != NULL && strpbrk(ctl->token, "\r\n") != NULL) {
        kp_ctl__usage_error(ctl, "the token contains a line break");
        return KP_CTL_EXIT_USAGE;
    }
    return KP_CTL_EXIT_OK;
}

int kp_ctl__options(struct kp_ctl *ctl, int argc, char **argv, const char *synopsis)
{
    int first;
    int rc = kp_ctl__parse(ctl, argc, argv, NULL, 0, &first);
    if (rc != KP_CTL_EXIT_OK)
        return rc;
    if (first < argc) {
        kp_ctl__usage_error(ctl, "%s takes no argument '%s'%s%s", ctl->command, argv[first],
                            synopsis[0] ? "; usage: " : "", synopsis);
        return KP_CTL_EXIT_USAGE;
    }
    return KP_CTL_EXIT_OK;
}

int kp_ctl__begin(struct kp_ctl *ctl, int argc, char **argv, const char *synopsis)
{
    int rc = kp_ctl__options(ctl, argc, argv, synopsis);
    return rc != KP_CTL_EXIT_OK ? rc : kp_ctl__resolve(ctl);
}

static const struct kp_ctl_command *find_command(const struct kp_ctl_command *table, size_t n,
                                                 const char *name)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(table[i].name, name) == 0)
            return &table[i];
    }
    return NULL;
}

int kp_ctl__dispatch(struct kp_ctl *ctl, const char *group, const struct kp_ctl_command *table,
                     size_t n, int argc, char **argv)
{
    const struct kp_ctl_command *cmd = find_command(table, n, argv[0]);

    if (cmd == NULL) {
        kp_ctl__usage_error(ctl, "unknown command '%s%s%s'", group ? group : "", group ? " " : "",
                            argv[0]);
        return KP_CTL_EXIT_USAGE;
    }
    snprintf(ctl->command, sizeof(ctl->command), "%s%s%s", group ? group : "", group ? " " : "",
             cmd->name);
    if (!cmd->group && kp_ctl__wants_help(argc, argv)) {
        printf("usage: %s [options] %s%s%s %s\n\n%s.\n", ctl->prog, group ? group : "",
               group ? " " : "", cmd->name, cmd->synopsis, cmd->summary);
        return KP_CTL_EXIT_OK;
    }
    return cmd->run(ctl, argc, argv);
}

int kp_ctl__group(struct kp_ctl *ctl, const char *group, const struct kp_ctl_command *table,
                  size_t n, int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        bool help = argc >= 2;
        kp_ctl__print_group_usage(help ? stdout : stderr, ctl->prog, group, table, n);
        if (!help)
            fprintf(stderr, "\n%s %s needs a subcommand (see above).\n", ctl->prog, group);
        return help ? KP_CTL_EXIT_OK : KP_CTL_EXIT_USAGE;
    }
    return kp_ctl__dispatch(ctl, group, table, n, argc - 1, argv + 1);
}

int main(int argc, char **argv)
{
    struct kp_ctl ctl;
    int next, rc;
    bool help;

    memset(&ctl, 0, sizeof(ctl));
    ctl.prog = "clusterctl";
    ctl.output = KP_CTL_OUTPUT_TABLE;

    rc = parse_global(&ctl, argc, argv, &next, &help);
    if (rc != KP_CTL_EXIT_OK)
        return rc;
    if (help || next >= argc) {
        print_usage(help ? stdout : stderr, ctl.prog);
        return help ? KP_CTL_EXIT_OK : KP_CTL_EXIT_USAGE;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        kp_ctl__error(&ctl, "cannot initialise libcurl");
        return KP_CTL_EXIT_NO;
    }
    rc = kp_ctl__dispatch(&ctl, NULL, commands, sizeof(commands) / sizeof(commands[0]), argc - next,
                          argv + next);
    kp_ctl__client_close(&ctl);
    kp_free(ctl.server);
    kp_free(ctl.token);
    kp_free(ctl.cacert);
    kp_free(ctl.cert);
    kp_free(ctl.key);
    curl_global_cleanup();
    return rc;
}

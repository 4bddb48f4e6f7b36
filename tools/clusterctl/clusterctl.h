/* clusterctl: the operator's command line for a keyplane cluster.
 *
 * main.c parses the global options and dispatches through a command table;
 * each command lives in a cmd_*.c file and is one entry in that table, so a
 * later command (keys, pools, usage, ...) is one function and one line.
 * client.c talks HTTP to the control port (libcurl easy); contexts.c reads and
 * writes the kubectl-like contexts file. Internal to tools/clusterctl. */
#ifndef KP_CLUSTERCTL_H
#define KP_CLUSTERCTL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include <jansson.h>

#include "core/core.h"

/* Exit codes; scripts rely on them. */
enum {
    KP_CTL_EXIT_OK = 0,
    KP_CTL_EXIT_NO = 1,          /* the server said no, or is not ready */
    KP_CTL_EXIT_USAGE = 2,       /* bad command line or configuration */
    KP_CTL_EXIT_UNREACHABLE = 3, /* cannot reach the server */
};

#define KP_CTL_DEFAULT_SERVER "http://127.0.0.1:7601"

enum kp_ctl_output { KP_CTL_OUTPUT_TABLE, KP_CTL_OUTPUT_JSON };

struct kp_ctl {
    const char *prog;
    /* From --server / --token / --output; NULL when not given. */
    const char *flag_server;
    const char *flag_token;
    enum kp_ctl_output output;
    /* Resolved by kp_ctl__resolve(): flag, then environment, then the
     * current context, then the default. The token is never printed. */
    char *server;
    char *token;
    char server_source[96]; /* "--server", "KEYPLANE_SERVER", "context prod" */
    void *curl;             /* CURL *, created on first request */
    char errmsg[256];
};

/* A command (or a subcommand of a group such as `config`). @run receives the
 * arguments from the command name on: argv[0] is the name. */
struct kp_ctl_command {
    const char *name;
    const char *synopsis; /* arguments, for usage lines */
    const char *summary;
    int (*run)(struct kp_ctl *ctl, int argc, char **argv);
    bool group; /* answers --help itself by listing its subcommands */
};

/* main.c */
void kp_ctl__usage_error(struct kp_ctl *ctl, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void kp_ctl__error(struct kp_ctl *ctl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Parse the options every command takes (--server, --token, --output) from
 * argv[1] on; positional arguments are refused. Returns KP_CTL_EXIT_OK or the
 * exit code to return. */
int kp_ctl__options(struct kp_ctl *ctl, int argc, char **argv, const char *synopsis);
/* kp_ctl__options(), then resolve the server and token: what every command
 * that talks to a node calls first. */
int kp_ctl__begin(struct kp_ctl *ctl, int argc, char **argv, const char *synopsis);
/* Run the command named argv[0] from @table; @group names the table in
 * messages ("config"), NULL at the top level. */
int kp_ctl__dispatch(struct kp_ctl *ctl, const char *group, const struct kp_ctl_command *table,
                     size_t n, int argc, char **argv);
bool kp_ctl__wants_help(int argc, char **argv);
void kp_ctl__print_group_usage(FILE *out, const char *prog, const char *group,
                               const struct kp_ctl_command *table, size_t n);
int kp_ctl__parse_output(struct kp_ctl *ctl, const char *value);
/* Prints @v as indented JSON on stdout. */
void kp_ctl__print_json(const json_t *v);

/* client.c */
struct kp_ctl_response {
    long status;
    struct kp_buf body; /* NUL-terminated */
    char content_type[128];
};

/* GET server+path. Returns 0 with @resp filled (any HTTP status), or -1 when
 * the server could not be reached (ctl->errmsg says why). */
int kp_ctl__get(struct kp_ctl *ctl, const char *path, struct kp_ctl_response *resp);
void kp_ctl__response_free(struct kp_ctl_response *resp);
/* Prints the "cannot reach" message and returns KP_CTL_EXIT_UNREACHABLE. */
int kp_ctl__unreachable(struct kp_ctl *ctl);
/* Prints "METHOD PATH: 401 Unauthorized: message" (plus a hint) and returns
 * KP_CTL_EXIT_NO. */
int kp_ctl__refused(struct kp_ctl *ctl, const char *path, const struct kp_ctl_response *resp);
/* A short description of a response body for one line of output: the JSON
 * error message, a "status" or "reason" field, or the first line of text. */
void kp_ctl__describe_body(const struct kp_ctl_response *resp, char *out, size_t len);
/* The body as JSON, or NULL. */
json_t *kp_ctl__response_json(const struct kp_ctl_response *resp);
bool kp_ctl__valid_server(const char *url);
void kp_ctl__client_close(struct kp_ctl *ctl);

/* contexts.c: the contexts file, kubectl style:
 *   current-context: NAME
 *   contexts:
 *   - {name: NAME, server: URL, token: TOKEN}
 * Unknown keys are kept when the file is rewritten. */
struct kp_ctl_contexts;

struct kp_ctl_context {
    const char *name;
    const char *server; /* NULL when unset */
    const char *token;  /* NULL when unset */
};

/* $KEYPLANE_CONFIG_DIR/config.yaml, else $XDG_CONFIG_HOME/keyplane/config.yaml,
 * else $HOME/.config/keyplane/config.yaml. */
int kp_ctl__contexts_path(char *out, size_t len);
/* Loads the file; a missing file is an empty set of contexts. */
int kp_ctl__contexts_load(struct kp_ctl_contexts **out, char *errmsg, size_t errlen);
void kp_ctl__contexts_close(struct kp_ctl_contexts *c);
const char *kp_ctl__contexts_file(const struct kp_ctl_contexts *c);
/* NULL when none. */
const char *kp_ctl__contexts_current(struct kp_ctl_contexts *c);
/* Strings stay valid until the next change or close. */
bool kp_ctl__contexts_find(struct kp_ctl_contexts *c, const char *name, struct kp_ctl_context *out);
size_t kp_ctl__contexts_count(struct kp_ctl_contexts *c);
bool kp_ctl__contexts_at(struct kp_ctl_contexts *c, size_t i, struct kp_ctl_context *out);
/* Creates or updates @name; a NULL @server or @token leaves that field. */
int kp_ctl__contexts_set(struct kp_ctl_contexts *c, const char *name, const char *server,
                         const char *token);
int kp_ctl__contexts_use(struct kp_ctl_contexts *c, const char *name);
/* Writes the file atomically with mode 0600 (directory 0700). */
int kp_ctl__contexts_save(struct kp_ctl_contexts *c, char *errmsg, size_t errlen);

/* Commands. */
int kp_ctl__cmd_status(struct kp_ctl *ctl, int argc, char **argv);
int kp_ctl__cmd_health(struct kp_ctl *ctl, int argc, char **argv);
int kp_ctl__cmd_metrics(struct kp_ctl *ctl, int argc, char **argv);
int kp_ctl__cmd_version(struct kp_ctl *ctl, int argc, char **argv);
int kp_ctl__cmd_config(struct kp_ctl *ctl, int argc, char **argv);

#endif

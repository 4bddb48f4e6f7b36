/* clusterctl: the operator's command line for a keyplane cluster.
 *
 * main.c parses the global options and dispatches through a command table;
 * each command lives in a cmd_*.c file and is one entry in that table, so a
 * new command is one function and one line. args.c parses a
 * command's own options and values (durations, times); client.c talks HTTP
 * to the control port (libcurl easy); output.c prints tables, JSON and YAML;
 * yaml.c converts between YAML documents and jansson; kinds.c is the one
 * table of registry kinds; contexts.c reads and writes the kubectl-like
 * contexts file. Internal to tools/clusterctl. */
#ifndef KP_CLUSTERCTL_H
#define KP_CLUSTERCTL_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
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

enum kp_ctl_output { KP_CTL_OUTPUT_TABLE, KP_CTL_OUTPUT_JSON, KP_CTL_OUTPUT_YAML };

struct kp_ctl {
    const char *prog;
    /* From --server / --token / --output; NULL when not given. */
    const char *flag_server;
    const char *flag_token;
    const char *flag_cacert, *flag_cert, *flag_key; /* --cacert, --cert, --key */
    enum kp_ctl_output output;
    /* Resolved by kp_ctl__resolve(): flag, then environment, then the
     * current context, then the default. The token is never printed. */
    char *server;
    char *token;
    /* TLS: the CA to verify an https:// server against (NULL: the system's)
     * and a client certificate and key (NULL: none). */
    char *cacert, *cert, *key;
    char server_source[96]; /* "--server", "KEYPLANE_SERVER", "context prod" */
    void *curl;             /* CURL *, created on first request */
    char command[64];       /* the command being run, for messages: "keys add" */
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

/* getopt values of the long-only common options. */
enum { KP_CTL_OPT_CACERT = 0x80, KP_CTL_OPT_CERT, KP_CTL_OPT_KEY };

/* main.c */
void kp_ctl__usage_error(struct kp_ctl *ctl, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void kp_ctl__error(struct kp_ctl *ctl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Applies one of the options every command takes (-s, -t, -o, -h) to @ctl;
 * sets *help for -h. Returns KP_CTL_EXIT_OK or KP_CTL_EXIT_USAGE. */
int kp_ctl__common_option(struct kp_ctl *ctl, int c, const char *value, bool *help);
/* Parse the options every command takes (--server, --token, --output) from
 * argv[1] on; positional arguments are refused. Returns KP_CTL_EXIT_OK or the
 * exit code to return. */
int kp_ctl__options(struct kp_ctl *ctl, int argc, char **argv, const char *synopsis);
/* Resolve the server and token (flag, environment, context, default). */
int kp_ctl__resolve(struct kp_ctl *ctl);
/* kp_ctl__options(), then kp_ctl__resolve(): what every command without
 * arguments of its own calls first. */
int kp_ctl__begin(struct kp_ctl *ctl, int argc, char **argv, const char *synopsis);
/* Run the command named argv[0] from @table; @group names the table in
 * messages ("config"), NULL at the top level. */
int kp_ctl__dispatch(struct kp_ctl *ctl, const char *group, const struct kp_ctl_command *table,
                     size_t n, int argc, char **argv);
/* A command group (`keys`, `tokens`, ...): argv[0] is the group's name and
 * argv[1] the subcommand. Without one, prints the group's usage (exit 2);
 * with --help, prints it on stdout (exit 0). */
int kp_ctl__group(struct kp_ctl *ctl, const char *group, const struct kp_ctl_command *table,
                  size_t n, int argc, char **argv);
bool kp_ctl__wants_help(int argc, char **argv);
void kp_ctl__print_group_usage(FILE *out, const char *prog, const char *group,
                               const struct kp_ctl_command *table, size_t n);
int kp_ctl__parse_output(struct kp_ctl *ctl, const char *value);

/* args.c: a command's own options. The common options (--server, --token,
 * --output, --help) are accepted too, before or after the positional
 * arguments. */
enum kp_ctl_flag_type {
    KP_CTL_FLAG_BOOL,   /* bool *: true when given */
    KP_CTL_FLAG_VALUE,  /* const char **: the last value given */
    KP_CTL_FLAG_LIST,   /* json_t **: every value, in order, in an array made on first use
                         * (the caller json_decref()s it) */
    KP_CTL_FLAG_SECRET, /* refused: secrets never come from the command line, where
                         * the process list and the shell history would show them */
};

struct kp_ctl_flag {
    const char *name; /* the long option without its dashes: "provider" */
    int short_name;   /* 'f', or 0 */
    enum kp_ctl_flag_type type;
    void *dest;
};

/* Parses the common options and @flags from argv[1] on. On success the
 * positional arguments are argv[*first .. argc), in their order. */
int kp_ctl__parse(struct kp_ctl *ctl, int argc, char **argv, const struct kp_ctl_flag *flags,
                  size_t n_flags, int *first);
/* Checks that there are @min to @max positional arguments (ctl->command
 * names the command, @synopsis its arguments). An extra argument is never
 * repeated in the message: it could be a secret someone tried to pass on the
 * command line; @secret_hint adds where a secret is read from instead. */
int kp_ctl__positionals(struct kp_ctl *ctl, int n, int min, int max, const char *synopsis,
                        bool secret_hint);
/* Unsigned decimal integer in [0, max]. Prints the usage error naming
 * @what ("--limit") and returns KP_CTL_EXIT_USAGE when it is not one. */
int kp_ctl__parse_uint(struct kp_ctl *ctl, const char *what, const char *text, uint64_t max,
                       uint64_t *out);
/* A duration: "3600" (seconds), "90s", "15m", "12h", "30d", "2w", or a sum
 * like "1h30m"; into seconds. */
int kp_ctl__parse_duration(struct kp_ctl *ctl, const char *what, const char *text,
                           uint64_t *seconds);
/* A point in time for queries: a duration ago ("1h", "7d"), an RFC 3339
 * time ("2026-01-02T03:04:05Z", "2026-01-02T03:04:05.5+01:00"), a date
 * ("2026-01-02", midnight UTC), or Unix milliseconds; into Unix ms. */
int kp_ctl__parse_time(struct kp_ctl *ctl, const char *what, const char *text, int64_t *unix_ms);
/* An instant: an RFC 3339 time, a date (midnight UTC) or Unix ms; no
 * "duration ago" form. */
int kp_ctl__parse_instant(struct kp_ctl *ctl, const char *what, const char *text, int64_t *unix_ms);
/* A fixed offset from UTC, "+05:30", "-0800" or "Z", within -12:00..+14:00,
 * into minutes east of UTC. */
int kp_ctl__parse_utc_offset(struct kp_ctl *ctl, const char *what, const char *text,
                             int32_t *minutes);

/* client.c */
struct kp_ctl_response {
    const char *method; /* the request's, for messages */
    long status;
    struct kp_buf body; /* NUL-terminated; wiped when freed (it may hold a token) */
    char content_type[128];
    char etag[64]; /* the ETag header, "" when none */
    /* GET /admin/v1/snapshot's X-Keyplane-* headers, "" when absent. */
    char snapshot_sha256[80];
    char snapshot_index[32];
    char cluster_id[80];
    char kek_id[80];
};

/* Sends METHOD server+path with @body (JSON, @body_len bytes; NULL for none)
 * and the extra header lines @headers (NULL-terminated, or NULL). @path must
 * already be URL-encoded (kp_ctl__path). Returns 0 with @resp filled (any
 * HTTP status), or -1 when the server could not be reached (ctl->errmsg says
 * why). @method must outlive @resp. No reference to @body is kept. */
int kp_ctl__request(struct kp_ctl *ctl, const char *method, const char *path, const char *body,
                    size_t body_len, const char *const *headers, struct kp_ctl_response *resp);
/* kp_ctl__request(ctl, "GET", path, NULL, 0, NULL, resp). */
int kp_ctl__get(struct kp_ctl *ctl, const char *path, struct kp_ctl_response *resp);
/* A request whose refusal needs no special handling: sends @body (NULL for
 * none) as JSON; on a 2xx answer stores its JSON in *out (when @out is not
 * NULL; JSON null for an empty body) and returns KP_CTL_EXIT_OK. Otherwise
 * prints what went wrong and what to do next and returns the exit code. */
int kp_ctl__call(struct kp_ctl *ctl, const char *method, const char *path, const json_t *body,
                 const char *const *headers, json_t **out);
/* kp_ctl__call() with a body that is already JSON text. */
int kp_ctl__call_raw(struct kp_ctl *ctl, const char *method, const char *path, const char *body,
                     size_t body_len, const char *const *headers, json_t **out);
void kp_ctl__response_free(struct kp_ctl_response *resp);
/* Prints the "cannot reach" message and returns KP_CTL_EXIT_UNREACHABLE. */
int kp_ctl__unreachable(struct kp_ctl *ctl);
/* Prints "METHOD URL: 409 Conflict: message" and, on the next line, what to
 * do about it; returns KP_CTL_EXIT_NO. */
int kp_ctl__refused(struct kp_ctl *ctl, const char *path, const struct kp_ctl_response *resp);
/* A short description of a response body for one line of output: the JSON
 * error message, a "status" or "reason" field, or the first line of text. */
void kp_ctl__describe_body(const struct kp_ctl_response *resp, char *out, size_t len);
/* The body as JSON, or NULL. */
json_t *kp_ctl__response_json(const struct kp_ctl_response *resp);
/* "/admin/v1" followed by each segment URL-encoded, NULL-terminated:
 * kp_ctl__path("keys", id, "secret", NULL). kp_free() it; NULL when out of
 * memory. Every byte but A-Z a-z 0-9 - . _ ~ is percent-encoded, and so are
 * the dots of "." and "..", so an id can never change the route. */
char *kp_ctl__path(const char *segment, ...) __attribute__((sentinel));
/* Appends "?name=value" or "&name=value" with @value URL-encoded. */
int kp_ctl__query_add(struct kp_buf *path, const char *name, const char *value);
/* "If-Match: \"N\"" into @buf. */
void kp_ctl__if_match(char *buf, size_t len, uint64_t version);
bool kp_ctl__valid_server(const char *url);
/* curl_slist_free_all() after wiping each line (one may hold a token). */
struct curl_slist;
void kp_ctl__free_header_lines(struct curl_slist *list);
void kp_ctl__client_close(struct kp_ctl *ctl);

/* secret.c: secrets read from stdin or a file, never from the command line,
 * and sent in request bodies that are wiped afterwards. */
enum { KP_CTL_SECRET_MAX = 4096 };

/* Holds a secret; kp_ctl__secret_wipe() it when done. */
struct kp_ctl_secret {
    char buf[KP_CTL_SECRET_MAX + 2];
    size_t len;
};

void kp_ctl__secret_wipe(struct kp_ctl_secret *s);
/* A key's secret (@id names the key in the prompt): from @file, from stdin
 * when @file is NULL or "-", prompted for without echo when stdin is a
 * terminal and @file is NULL. Surrounding whitespace is dropped; an empty
 * secret, one of several lines or one over KP_CTL_SECRET_MAX bytes is a
 * usage error. */
int kp_ctl__read_secret(struct kp_ctl *ctl, const char *file, const char *id,
                        struct kp_ctl_secret *s);
/* A token from the file @path given with option @flag ("--token-file"): one
 * non-empty line, surrounding whitespace dropped; else a usage error. */
int kp_ctl__read_token_file(struct kp_ctl *ctl, const char *flag, const char *path,
                            struct kp_ctl_secret *s);
/* kp_ctl__call_raw() with the body {"secret": @s, <the fields of @fields>},
 * built without reallocation and wiped after the request. */
int kp_ctl__send_secret(struct kp_ctl *ctl, const char *method, const char *path,
                        const json_t *fields, const struct kp_ctl_secret *s,
                        const char *const *headers, json_t **answer);
/* The first secret version of the key @key (an answer of /admin/v1/keys/ID)
 * in @state ("primary", "previous", "retired"), or NULL. Borrowed. */
json_t *kp_ctl__key_secret_in_state(const json_t *key, const char *state);

/* drill_traffic.c: the rotation drill's test traffic, a thread sending
 * tiny chat completions through the gateway at a steady rate. */
struct kp_ctl_traffic;

enum { KP_CTL_GATEWAYS_MAX = 64 };

struct kp_ctl_traffic_config {
    const json_t *gateways; /* 1 to KP_CTL_GATEWAYS_MAX gateway base URLs, taken in turn */
    const char *token;      /* the app token; copied, wiped when freed */
    const char *pool;       /* sent as X-Keyplane-Pool */
    const char *model;
    unsigned rps;               /* requests per second, > 0 */
    const char *request_prefix; /* X-Request-Id is PREFIX-SEQ, SEQ from 1 */
};

/* How one request went. Times are kp_now_mono_us(). */
struct kp_ctl_request_record {
    uint64_t start_us, end_us;
    long status;      /* HTTP status; 0 when none came (a transport failure) */
    unsigned gateway; /* the index of the gateway it went to */
    int key;          /* the X-Keyplane-Key answered (a name index), -1 when none */
    int error;        /* for a failure, its class (a name index), else -1 */
};

/* Starts the thread; the first request goes out at once. */
int kp_ctl__traffic_start(const struct kp_ctl_traffic_config *cfg, struct kp_ctl_traffic **out,
                          char *errmsg, size_t errlen);
/* Waits until key @key served (2xx) a request that started at or after
 * @after_us (through every gateway when @every_gateway, else through any),
 * until @deadline_us, or until *@cancel is set (checked at least every
 * 100 ms); true when it did. A NULL @key just waits. */
bool kp_ctl__traffic_wait_served(struct kp_ctl_traffic *t, const char *key, uint64_t after_us,
                                 bool every_gateway, uint64_t deadline_us,
                                 const volatile sig_atomic_t *cancel);
/* Stops the thread after the request in flight and joins it. */
void kp_ctl__traffic_stop(struct kp_ctl_traffic *t);
/* After kp_ctl__traffic_stop(): the records, in start order. */
size_t kp_ctl__traffic_records(const struct kp_ctl_traffic *t,
                               const struct kp_ctl_request_record **records);
/* A key or error class of a record by index; NULL for -1. */
const char *kp_ctl__traffic_name(const struct kp_ctl_traffic *t, int index);
void kp_ctl__traffic_free(struct kp_ctl_traffic *t);

/* output.c: what commands print. Strings from the server are printed with
 * control characters replaced, so a hostile or broken server cannot drive
 * the terminal. */
struct kp_ctl_column {
    const char *header;
    /* A dotted path into the row ("leader.name"); through a list it maps
     * over the items ("members.key" of a pool lists its keys). */
    const char *field;
    /* Formats the value found there (NULL when absent); NULL means
     * kp_ctl__cell_text. */
    void (*cell)(struct kp_buf *out, const json_t *value, const json_t *row);
};

/* Strings bare, numbers in decimal, booleans yes/no, lists joined by ",",
 * objects as compact JSON. */
void kp_ctl__cell_text(struct kp_buf *out, const json_t *value, const json_t *row);
/* The number of items of a list. */
void kp_ctl__cell_count(struct kp_buf *out, const json_t *value, const json_t *row);
/* Unix ms as an RFC 3339 UTC time; 0 as "never". */
void kp_ctl__cell_time(struct kp_buf *out, const json_t *value, const json_t *row);
/* Nano-USD as dollars: 2500000000 -> "$2.50". */
void kp_ctl__cell_usd(struct kp_buf *out, const json_t *value, const json_t *row);
/* Milliseconds as a short duration: "12ms", "3.4s", "5m". */
void kp_ctl__cell_ms(struct kp_buf *out, const json_t *value, const json_t *row);

/* Prints the objects of the array @rows as a table with aligned columns;
 * empty cells show "-". */
void kp_ctl__print_table(const struct kp_ctl_column *cols, size_t n, const json_t *rows);
/* GET /admin/v1/SEGMENT page by page ("next" followed); *@out is the first
 * answer with every page's items and no "next" (the caller decrefs). */
int kp_ctl__get_list(struct kp_ctl *ctl, const char *segment, bool consistent, json_t **out);
/* Prints one object as "HEADER  value" lines. */
void kp_ctl__print_record(const struct kp_ctl_column *cols, size_t n, const json_t *obj);
/* Prints @v as indented JSON on stdout. */
void kp_ctl__print_json(const json_t *v);
/* Prints @v as JSON or YAML, per --output (a table falls back to JSON). */
void kp_ctl__print_doc(const struct kp_ctl *ctl, const json_t *v);
/* Prints @s with control characters replaced by '?'. */
void kp_ctl__print_clean(FILE *out, const char *s);

/* yaml.c: YAML documents as jansson values. Scalars follow YAML 1.2's core
 * schema: plain null, ~ and nothing are null; true and false booleans;
 * decimal integers and floats numbers; everything else, and every quoted
 * scalar, a string. */
struct fy_document;
struct fy_node;

/* Parses the one YAML document of @path ("-": stdin). Errors name the file
 * and line: "apply.yaml:3: YAML syntax error: ...". */
struct fy_document *kp_ctl__yaml_parse_file(const char *path, char *errmsg, size_t errlen);
/* The 1-based line where @node starts, or 0 when unknown. */
int kp_ctl__yaml_line(struct fy_node *node);
/* Converts @node; errors name @path and the line. */
int kp_ctl__yaml_to_json(struct fy_node *node, const char *path, json_t **out, char *errmsg,
                         size_t errlen);
/* @v as block-style YAML (free() it), or NULL when out of memory. Strings
 * that would read back as something else ("123", "true", " x") are quoted. */
char *kp_ctl__yaml_dump(const json_t *v);
/* Loads a JSON (*.json) or YAML file (anything else, "-" for stdin) that
 * must hold one object. */
int kp_ctl__load_object(const char *path, json_t **out, char *errmsg, size_t errlen);

/* kinds.c: the registry kinds clusterctl knows, in one table. */
enum {
    KP_CTL_KIND_PUT = 1 << 0,    /* PUT /admin/v1/{kind}/{id} creates or replaces */
    KP_CTL_KIND_DELETE = 1 << 1, /* DELETE /admin/v1/{kind}/{id} */
    KP_CTL_KIND_APPLY = 1 << 2,  /* may appear in an apply file */
};

struct kp_ctl_kind {
    const char *plural;   /* the URL segment and the apply key: "alert-rules" */
    const char *singular; /* for messages: "alert-rule" */
    unsigned flags;
    /* Rendered by the server but refused in a PUT body, besides id, version,
     * created_ms, updated_ms and (unless the entity has a kind field of its
     * own) kind. NULL-terminated. */
    const char *const *state_fields;
    /* Maps compared whole by apply (a removed entry is a change); other
     * objects are compared on the fields the file gives. NULL-terminated. */
    const char *const *map_fields;
    bool own_kind; /* the entity has a field named "kind" (providers, alert rules) */
    const struct kp_ctl_column *columns;
    size_t n_columns;
};

/* By plural or singular name, '_' read as '-'; NULL when unknown. */
const struct kp_ctl_kind *kp_ctl__kind_find(const char *name);
/* "providers, keys, ..." of the kinds having every flag of @flags. */
void kp_ctl__kind_names(unsigned flags, char *out, size_t len);
/* A copy of @entity fit for a PUT body: without the fields the server sets. */
json_t *kp_ctl__kind_body(const struct kp_ctl_kind *kind, const json_t *entity);
/* True when @field is one the server sets (id, version, ...). */
bool kp_ctl__kind_readonly(const struct kp_ctl_kind *kind, const char *field);

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
    const char *cacert; /* NULL when unset; file names, absolute */
    const char *cert;
    const char *key;
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
/* Creates or updates @name; a NULL argument leaves that field. */
int kp_ctl__contexts_set(struct kp_ctl_contexts *c, const char *name, const char *server,
                         const char *token, const char *cacert, const char *cert, const char *key);
int kp_ctl__contexts_use(struct kp_ctl_contexts *c, const char *name);
/* Writes the file atomically with mode 0600 (directory 0700). */
int kp_ctl__contexts_save(struct kp_ctl_contexts *c, char *errmsg, size_t errlen);

/* Commands. */
int kp_ctl__cmd_status(struct kp_ctl *ctl, int argc, char **argv);
int kp_ctl__cmd_health(struct kp_ctl *ctl, int argc, char **argv);
int kp_ctl__cmd_metrics(struct kp_ctl *ctl, int argc, char **argv);
int kp_ctl__cmd_version(struct kp_ctl *ctl, int argc, char **argv);
int kp_ctl__cmd_config(struct kp_ctl *ctl, int argc, char **argv);
int kp_ctl__cmd_get(struct kp_ctl *ctl, int argc, char **argv);
int kp_ctl__cmd_put(struct kp_ctl *ctl, int argc, char **argv);
int kp_ctl__cmd_delete(struct kp_ctl *ctl, int argc, char **argv);
int kp_ctl__cmd_apply(struct kp_ctl *ctl, int argc, char **argv);
int kp_ctl__cmd_keys(struct kp_ctl *ctl, int argc, char **argv);
int kp_ctl__cmd_tokens(struct kp_ctl *ctl, int argc, char **argv);
int kp_ctl__cmd_members(struct kp_ctl *ctl, int argc, char **argv);
int kp_ctl__cmd_cluster(struct kp_ctl *ctl, int argc, char **argv);
int kp_ctl__cmd_leader(struct kp_ctl *ctl, int argc, char **argv);
int kp_ctl__cmd_whoami(struct kp_ctl *ctl, int argc, char **argv);
int kp_ctl__cmd_secrets(struct kp_ctl *ctl, int argc, char **argv);
int kp_ctl__cmd_snapshot(struct kp_ctl *ctl, int argc, char **argv);
int kp_ctl__cmd_audit(struct kp_ctl *ctl, int argc, char **argv);
int kp_ctl__cmd_budgets(struct kp_ctl *ctl, int argc, char **argv);
int kp_ctl__cmd_alerts(struct kp_ctl *ctl, int argc, char **argv);
/* cmd_drill.c: `drill rotate`. */
int kp_ctl__cmd_drill(struct kp_ctl *ctl, int argc, char **argv);
/* cmd_freeze.c: `freeze`, `unfreeze` and `freezes`. */
int kp_ctl__cmd_freeze(struct kp_ctl *ctl, int argc, char **argv);
int kp_ctl__cmd_unfreeze(struct kp_ctl *ctl, int argc, char **argv);
int kp_ctl__cmd_freezes(struct kp_ctl *ctl, int argc, char **argv);
/* cmd_usage.c: `usage` (and its `events` and `export`) and `reconcile`. */
int kp_ctl__cmd_usage(struct kp_ctl *ctl, int argc, char **argv);
int kp_ctl__cmd_reconcile(struct kp_ctl *ctl, int argc, char **argv);
/* cmd_registry.c: `get KIND` for a kind, used by the `list` subcommands. */
int kp_ctl__list_kind(struct kp_ctl *ctl, const char *kind, int argc, char **argv);

#endif

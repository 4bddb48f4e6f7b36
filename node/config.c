/* keyplaned configuration: one table of settings, four sources.
 *
 * Every setting is one row of settings[]: its name, how its text is parsed
 * and checked, where it lives in struct kp_config, its default and its help.
 * A load builds a fresh struct from the defaults, then the YAML file, then
 * the environment, then the flags, each source overwriting what the earlier
 * ones set, and moves it into the caller's struct only when all of it
 * parsed. On any error the caller's struct is left as it was and every
 * partial allocation is freed. Every source hands text to the same parser
 * (set_value), so a setting behaves the same wherever it comes from and its
 * errors read the same, prefixed by where the value came from:
 * "keyplane.yaml:7: workers", "KEYPLANE_WORKERS" or "--workers".
 *
 * The YAML file is parsed by libfyaml. Its root must be a mapping from
 * setting names to scalars (join may also be a sequence). A dotted name
 * (tls.cert_file) lives in a section: YAML `tls:` holding `cert_file:`,
 * environment KEYPLANE_TLS_CERT_FILE, flag --tls-cert-file. libfyaml's
 * diagnostics are collected rather than printed, and the first becomes our
 * error with its line. Duplicate keys are allowed through libfyaml so that we
 * can name the setting and both lines. No host name is ever resolved here:
 * addresses are only checked for shape, so a load never blocks on DNS. */
#include "config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libfyaml.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/core.h"

/* Larger than any sane config file; a bigger one is probably the wrong file. */
#define CONFIG_FILE_MAX (1024 * 1024)
#define NODE_NAME_MAX   64
#define ENV_PREFIX      "KEYPLANE_"

enum setting_type {
    SET_PATH,     /* a file or directory name, not empty */
    SET_NAME,     /* letters, digits, '.', '-', '_' */
    SET_LISTEN,   /* host:port, [v6]:port or :port, port 0 = any free port */
    SET_PEERS,    /* comma-separated host:port list; a YAML sequence too */
    SET_INT,      /* plain integer */
    SET_SIZE,     /* bytes, optionally with a KiB/MiB/GiB suffix */
    SET_DURATION, /* milliseconds, optionally with a ms/s/m/h suffix */
    SET_CHOICE,   /* one of the names in choices (case-insensitive) */
    SET_URL,      /* http:// or https:// URL without query or fragment */
    SET_HEADERS,  /* name=value[,name=value...]; a YAML mapping too */
    SET_RATIO,    /* a number from 0 to 1, stored as a double */
    SET_BOOL,     /* true/false, yes/no, on/off, 1/0, stored as a bool */
};

struct setting {
    const char *name; /* YAML key; env and flag names derive from it */
    enum setting_type type;
    size_t offset; /* in struct kp_config */
    size_t size;   /* of the field: sizeof(int) or sizeof(int64_t) for numbers */
    int64_t min, max;
    bool optional;   /* may be unset (NULL); empty text unsets it */
    const char *def; /* default, as text parsed like any value; NULL = unset */
    const char *metavar;
    const char *help;
    const char *const *choices; /* SET_CHOICE: NULL-terminated, lower case */
};

#define FIELD(f) offsetof(struct kp_config, f), sizeof(((struct kp_config *)0)->f)
#define KIB      INT64_C(1024)
#define MIB      (KIB * 1024)
#define GIB      (MIB * 1024)
#define SEC      INT64_C(1000)
#define HOUR     (3600 * SEC)

static const char *const log_levels[] = {"debug", "info", "warn", "error", NULL};
static const char *const raft_roles[] = {"voter", "standby", "spare", NULL};
static const char *const meter_modes[] = {"auto", "yes", "no", NULL};
static const char *const spool_full_modes[] = {"serve", "refuse", NULL};

static const struct setting settings[] = {
    {"data_dir", SET_PATH, FIELD(data_dir), 0, 0, false, "./keyplane-data", "DIR",
     "directory for this node's state (Raft log, snapshots, usage spool, admin token)", NULL},
    {"gateway_listen", SET_LISTEN, FIELD(gateway_listen), 0, 0, false, "127.0.0.1:7600", "ADDR",
     "address of the OpenAI-compatible gateway (/v1/*) that apps call", NULL},
    {"control_listen", SET_LISTEN, FIELD(control_listen), 0, 0, false, "127.0.0.1:7601", "ADDR",
     "address of the control port: admin API, console, metrics, health, node-to-node calls", NULL},
    {"raft_listen", SET_LISTEN, FIELD(raft_listen), 0, 0, false, "127.0.0.1:7602", "ADDR",
     "address for Raft traffic between voters", NULL},
    {"join", SET_PEERS, FIELD(join), 0, 0, true, NULL, "ADDR[,ADDR...]",
     "addresses of nodes of an existing cluster to join; with none and an empty data "
     "directory the node bootstraps a new one-node cluster",
     NULL},
    {"master_key_file", SET_PATH, FIELD(master_key_file), 0, 0, true, NULL, "FILE",
     "file (mode 0600) holding the cluster master key", NULL},
    {"previous_master_key_file", SET_PATH, FIELD(previous_master_key_file), 0, 0, true, NULL,
     "FILE",
     "during a master key rotation: file (mode 0600) holding the key being replaced, until "
     "`clusterctl secrets rewrap` has resealed every secret under the new one",
     NULL},
    {"restore", SET_PATH, FIELD(restore), 0, 0, true, NULL, "FILE",
     "a registry snapshot (clusterctl snapshot save) to start a new cluster from; read only "
     "when the data directory is empty and join is not set",
     NULL},
    /* The default, the host name, is filled in by apply_defaults(). */
    {"node_name", SET_NAME, FIELD(node_name), 0, 0, false, NULL, "NAME",
     "this node's name in the cluster, logs, metrics and usage records", NULL},
    {"workers", SET_INT, FIELD(workers), 0, 1024, false, "0", "N",
     "router worker threads, each with its own event loop; 0 = one per CPU core", NULL},
    {"log_level", SET_CHOICE, FIELD(log_level), 0, 0, false, "info", "LEVEL",
     "least severe log level written: debug, info, warn or error", log_levels},
    {"raft_role", SET_CHOICE, FIELD(raft_role), 0, 0, false, "voter", "ROLE",
     "role this node asks for when it joins: voter, standby (replicates, does not vote) or "
     "spare",
     raft_roles},
    {"meter", SET_CHOICE, FIELD(meter), 0, 0, false, "auto", "MODE",
     "whether this node asks to be a meter (receives usage segments, answers usage queries): "
     "yes, no, or auto (yes for the node that bootstraps a cluster, no for one that joins)",
     meter_modes},
    {"meter_retention_ms", SET_DURATION, FIELD(meter_retention_ms), HOUR, 3650 * 24 * HOUR, false,
     "720h", "DURATION",
     "how long a meter keeps raw usage segments for event searches (rollups are kept)", NULL},
    {"spool_max_bytes", SET_SIZE, FIELD(spool_max_bytes), MIB, 1024 * GIB, false, "1GiB", "SIZE",
     "cap on the usage spool (segments waiting for the meters); a warning at 80%", NULL},
    {"spool_full", SET_CHOICE, FIELD(spool_full), 0, 0, false, "serve", "MODE",
     "at the spool's cap: serve (keep answering calls, drop and count their usage events) or "
     "refuse (answer calls with 503 until the meters catch up)",
     spool_full_modes},
    {"spool_seal_bytes", SET_SIZE, FIELD(spool_seal_bytes), 64 * KIB, 256 * MIB, false, "2MiB",
     "SIZE", "seal a usage segment (and ship it) when it reaches this size", NULL},
    {"spool_seal_age_ms", SET_DURATION, FIELD(spool_seal_age_ms), 10, HOUR, false, "10s",
     "DURATION", "seal a usage segment (and ship it) when it is this old", NULL},
    {"snapshot_threshold", SET_INT, FIELD(snapshot_threshold), 16, 1000000, false, "1024", "N",
     "Raft entries between two registry snapshots", NULL},
    {"snapshot_trailing", SET_INT, FIELD(snapshot_trailing), 0, 1000000, false, "128", "N",
     "Raft entries kept in the log after a snapshot (so a slightly behind follower needs no "
     "snapshot)",
     NULL},
    {"election_timeout_ms", SET_DURATION, FIELD(election_timeout_ms), 50, 60 * SEC, false, "1s",
     "DURATION", "Raft election timeout: how long followers wait for the leader before voting",
     NULL},
    {"heartbeat_timeout_ms", SET_DURATION, FIELD(heartbeat_timeout_ms), 10, 10 * SEC, false,
     "100ms", "DURATION", "Raft heartbeat interval of the leader", NULL},
    {"raft_segment_bytes", SET_SIZE, FIELD(raft_segment_bytes), 64 * KIB, 256 * MIB, false, "8MiB",
     "SIZE",
     "size of each Raft log segment file, allocated in full when it is created (a node keeps "
     "up to three: the one being written and two ready); a multiple of 4KiB",
     NULL},
    {"max_body_bytes", SET_SIZE, FIELD(max_body_bytes), KIB, GIB, false, "8MiB", "SIZE",
     "largest request body accepted; a larger one gets 413", NULL},
    {"max_header_bytes", SET_SIZE, FIELD(max_header_bytes), KIB, MIB, false, "32KiB", "SIZE",
     "largest request line plus headers accepted; larger gets 431", NULL},
    {"max_headers", SET_INT, FIELD(max_headers), 1, 10000, false, "100", "N",
     "most request headers accepted; more gets 431", NULL},
    {"header_timeout_ms", SET_DURATION, FIELD(header_timeout_ms), 1, 24 * HOUR, false, "10s",
     "DURATION", "time from a request's first byte to the end of its headers; slower gets 408",
     NULL},
    {"body_timeout_ms", SET_DURATION, FIELD(body_timeout_ms), 1, 24 * HOUR, false, "30s",
     "DURATION", "time from the end of the headers to the end of the body; slower gets 408", NULL},
    {"idle_timeout_ms", SET_DURATION, FIELD(idle_timeout_ms), 1, 24 * HOUR, false, "60s",
     "DURATION", "how long an idle keep-alive connection stays open", NULL},
    {"drain_timeout_ms", SET_DURATION, FIELD(drain_timeout_ms), 0, 24 * HOUR, false, "30s",
     "DURATION", "on SIGTERM, how long to wait for requests in flight before closing", NULL},
    {"ready_max_staleness_ms", SET_DURATION, FIELD(ready_max_staleness_ms), 100, 24 * HOUR, false,
     "10s", "DURATION",
     "/readyz answers 503 when this node has known no Raft leader (so its registry view may be "
     "stale) for longer than this",
     NULL},
    {"drain_delay_ms", SET_DURATION, FIELD(drain_delay_ms), 0, 24 * HOUR, false, "0ms", "DURATION",
     "on SIGTERM, how long to keep accepting with /readyz at 503 before the drain", NULL},
    {"max_inflight_calls", SET_INT, FIELD(max_inflight_calls), 0, 10000000, false, "20000", "N",
     "gateway calls in flight on this node (streams included) beyond which new ones are "
     "answered 503 overloaded with Retry-After, bounding memory (about 35 KiB per call); 0: no "
     "cap",
     NULL},
    {"alert_interval_ms", SET_DURATION, FIELD(alert_interval_ms), 100, HOUR, false, "5s",
     "DURATION",
     "how often the Raft leader evaluates alert rules, polls members and retries webhooks "
     "(docs/alerts.md)",
     NULL},
    {"canary_interval_ms", SET_DURATION, FIELD(canary_interval_ms), 100, 24 * HOUR, false, "5m",
     "DURATION",
     "how often the Raft leader probes each active key (jittered by 20%; docs/health.md)", NULL},
    {"otlp_endpoint", SET_URL, FIELD(otlp_endpoint), 0, 0, true, NULL, "URL",
     "OpenTelemetry collector to export traces to over OTLP/HTTP with JSON (POST URL/v1/traces); "
     "none: traces are not exported",
     NULL},
    {"otlp_headers", SET_HEADERS, FIELD(otlp_headers), 0, 0, true, NULL, "NAME=VALUE[,...]",
     "headers sent with every export, such as a collector's credentials (values are secret: never "
     "printed or logged; %XX escapes in text form)",
     NULL},
    {"trace_sample_ratio", SET_RATIO, FIELD(trace_sample_ratio), 0, 0, false, "1", "RATIO",
     "share (0 to 1) of traces without an app's traceparent that are exported; an app's sampled "
     "flag decides for its own, and failed calls are always exported",
     NULL},
    {"otlp_timeout_ms", SET_DURATION, FIELD(otlp_timeout_ms), 100, 60 * SEC, false, "10s",
     "DURATION", "time allowed for one export request to the collector", NULL},
    {"trace_queue_spans", SET_INT, FIELD(trace_queue_spans), 64, 1000000, false, "4096", "N",
     "spans waiting for export at most; more are dropped and counted", NULL},
    {"access_log", SET_PATH, FIELD(access_log), 0, 0, true, NULL, "FILE",
     "one JSON line per gateway call to this file (reopened on SIGHUP) or to stderr; none: off",
     NULL},
    /* One section: its rows stay together (kp_config_print relies on it). */
    {"tls.cert_file", SET_PATH, FIELD(tls_cert_file), 0, 0, true, NULL, "FILE",
     "this node's certificate chain (PEM), signed by the cluster CA: with tls.key_file and "
     "tls.ca_file, Raft traffic between nodes runs over mutual TLS; also what its TLS listeners "
     "serve and its client certificate when it calls other nodes (reread on SIGHUP)",
     NULL},
    {"tls.key_file", SET_PATH, FIELD(tls_key_file), 0, 0, true, NULL, "FILE",
     "the private key of tls.cert_file (PEM, mode 0600); reread on SIGHUP", NULL},
    {"tls.ca_file", SET_PATH, FIELD(tls_ca_file), 0, 0, true, NULL, "FILE",
     "the cluster CA (PEM): a node's Raft peers must present a certificate it signed, and other "
     "nodes' control ports are verified against it when this node calls them over https",
     NULL},
    {"tls.gateway", SET_BOOL, FIELD(tls_gateway), 0, 0, false, "false", "BOOL",
     "serve the gateway port over TLS (needs tls.cert_file, tls.key_file and tls.ca_file)", NULL},
    {"tls.control", SET_BOOL, FIELD(tls_control), 0, 0, false, "false", "BOOL",
     "serve the control port over TLS and call other nodes' control ports over https, verified "
     "against tls.ca_file (set it on every node of a cluster)",
     NULL},
    {"tls.client_ca_file", SET_PATH, FIELD(tls_client_ca_file), 0, 0, true, NULL, "FILE",
     "ask TLS clients for a certificate and verify it against these CA certificates (PEM); a "
     "certificate that does not verify is refused",
     NULL},
    {"tls.require_client_cert", SET_BOOL, FIELD(tls_require_client_cert), 0, 0, false, "false",
     "BOOL",
     "refuse TLS clients without a valid certificate from tls.client_ca_file, on every TLS "
     "listener (nodes present tls.cert_file when they call each other)",
     NULL},
};

#define N_SETTINGS (sizeof(settings) / sizeof(settings[0]))

struct unit {
    const char *suffix;
    int64_t mult;
};

/* Sizes are binary whichever spelling is used: a limit of "8M" that meant
 * 8,000,000 would surprise nobody in a bad way, but one rule is simpler. */
static const struct unit size_units[] = {
    {"", 1},     {"b", 1},     {"k", KIB}, {"kb", KIB}, {"kib", KIB}, {"m", MIB},
    {"mb", MIB}, {"mib", MIB}, {"g", GIB}, {"gb", GIB}, {"gib", GIB}, {NULL, 0},
};
static const struct unit duration_units[] = {
    {"", 1}, {"ms", 1}, {"s", SEC}, {"m", 60 * SEC}, {"h", HOUR}, {NULL, 0},
};
static const struct unit int_units[] = {{"", 1}, {NULL, 0}};

static int errf(char *errmsg, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int errf(char *errmsg, size_t errlen, int code, const char *fmt, ...)
{
    va_list ap;
    if (errmsg == NULL || errlen == 0)
        return code;
    va_start(ap, fmt);
    vsnprintf(errmsg, errlen, fmt, ap);
    va_end(ap);
    return code;
}

static int oom(char *errmsg, size_t errlen)
{
    return errf(errmsg, errlen, KP_ENOMEM, "out of memory");
}

/* --- the table ------------------------------------------------------------ */

static bool is_string_type(enum setting_type t)
{
    return t == SET_PATH || t == SET_NAME || t == SET_LISTEN || t == SET_PEERS || t == SET_CHOICE ||
           t == SET_URL || t == SET_HEADERS;
}

static char **string_slot(struct kp_config *cfg, const struct setting *s)
{
    return (char **)((char *)cfg + s->offset);
}

static const struct setting *setting_by_name(const char *name, size_t len)
{
    for (size_t i = 0; i < N_SETTINGS; i++)
        if (strlen(settings[i].name) == len && memcmp(settings[i].name, name, len) == 0)
            return &settings[i];
    return NULL;
}

/* Flags spell the name with dashes: data_dir -> --data-dir, tls.ca_file ->
 * --tls-ca-file. */
static const struct setting *setting_by_flag(const char *flag, size_t len)
{
    for (size_t i = 0; i < N_SETTINGS; i++) {
        const char *n = settings[i].name;
        size_t j = 0;
        while (j < len && n[j] != '\0' && flag[j] == (n[j] == '_' || n[j] == '.' ? '-' : n[j]))
            j++;
        if (j == len && n[j] == '\0')
            return &settings[i];
    }
    return NULL;
}

static void env_name(const struct setting *s, char *buf, size_t len)
{
    size_t n = (size_t)snprintf(buf, len, ENV_PREFIX "%s", s->name);
    for (size_t i = 0; i < n && i < len; i++)
        buf[i] = buf[i] == '.' ? '_' : (char)toupper((unsigned char)buf[i]);
}

static void flag_name(const struct setting *s, char *buf, size_t len)
{
    size_t n = (size_t)snprintf(buf, len, "--%s", s->name);
    for (size_t i = 2; i < n && i < len; i++)
        if (buf[i] == '_' || buf[i] == '.')
            buf[i] = '-';
}

/* Levenshtein distance, for "did you mean". Names longer than 63 bytes get
 * no suggestion. */
static size_t edit_distance(const char *a, size_t alen, const char *b)
{
    size_t blen = strlen(b), row[64], prev, tmp;
    if (alen >= 64 || blen >= 64)
        return SIZE_MAX;
    for (size_t j = 0; j <= blen; j++)
        row[j] = j;
    for (size_t i = 1; i <= alen; i++) {
        prev = row[0];
        row[0] = i;
        for (size_t j = 1; j <= blen; j++) {
            size_t cost = tolower((unsigned char)a[i - 1]) == b[j - 1] ? 0 : 1;
            tmp = row[j];
            row[j] = prev + cost;
            if (row[j] > row[j - 1] + 1)
                row[j] = row[j - 1] + 1;
            if (row[j] > tmp + 1)
                row[j] = tmp + 1;
            prev = tmp;
        }
    }
    return row[blen];
}

static bool is_section(const char *name, size_t len);

/* The one setting clearly meant by an unknown name (dashes read as
 * underscores), or NULL when none is close or two are equally close. */
static const struct setting *closest_setting(const char *name, size_t len)
{
    char norm[64];
    const struct setting *best = NULL;
    size_t best_d = SIZE_MAX;
    bool tie = false;
    if (len >= sizeof(norm))
        return NULL;
    for (size_t i = 0; i < len; i++)
        norm[i] = name[i] == '-' ? '_' : name[i];
    /* A flag spells a section's setting with a dash after the section's
     * name (tls.cert_file as tls-cert-file). */
    const char *us = memchr(norm, '_', len);
    if (us != NULL && is_section(norm, (size_t)(us - norm)))
        norm[us - norm] = '.';
    for (size_t i = 0; i < N_SETTINGS; i++) {
        size_t d = edit_distance(norm, len, settings[i].name);
        if (d < best_d) {
            best = &settings[i];
            best_d = d;
            tie = false;
        } else if (d == best_d) {
            tie = true;
        }
    }
    size_t limit = strlen(best->name) >= 12 ? 3 : 2;
    return best_d <= limit && !tie ? best : NULL;
}

/* --- describing values ---------------------------------------------------- */

static void fmt_scaled(int64_t v, const struct unit *units, const char *base, char *buf, size_t len)
{
    const struct unit *pick = NULL;
    for (const struct unit *u = units; u->suffix != NULL; u++)
        if (u->mult > 1 && v != 0 && v % u->mult == 0 && (pick == NULL || u->mult > pick->mult))
            pick = u;
    if (pick == NULL) {
        snprintf(buf, len, "%" PRId64 "%s", v, base);
        return;
    }
    /* Show the canonical spelling: KiB rather than k. */
    if (units == size_units)
        snprintf(buf, len, "%" PRId64 "%s", v / pick->mult,
                 pick->mult == KIB   ? "KiB"
                 : pick->mult == MIB ? "MiB"
                                     : "GiB");
    else
        snprintf(buf, len, "%" PRId64 "%s", v / pick->mult, pick->suffix);
}

static void fmt_size(int64_t v, char *buf, size_t len)
{
    fmt_scaled(v, size_units, "", buf, len);
}

static void fmt_duration(int64_t v, char *buf, size_t len)
{
    fmt_scaled(v, duration_units, "ms", buf, len);
}

/* What a setting accepts, completing "expected ...". */
static void describe(const struct setting *s, char *buf, size_t len)
{
    char lo[32], hi[32];
    switch (s->type) {
    case SET_PATH:
        snprintf(buf, len, "a non-empty path");
        return;
    case SET_NAME:
        snprintf(buf, len, "a name of letters, digits, '.', '-' and '_' (at most %d)",
                 NODE_NAME_MAX);
        return;
    case SET_LISTEN:
        snprintf(buf, len, "an address host:port, [ipv6]:port or :port");
        return;
    case SET_PEERS:
        snprintf(buf, len, "addresses host:port or [ipv6]:port separated by commas");
        return;
    case SET_INT:
        snprintf(buf, len, "an integer from %" PRId64 " to %" PRId64, s->min, s->max);
        return;
    case SET_SIZE:
        fmt_size(s->min, lo, sizeof(lo));
        fmt_size(s->max, hi, sizeof(hi));
        snprintf(buf, len, "a size from %s to %s (bytes, or a number with KiB, MiB or GiB)", lo,
                 hi);
        return;
    case SET_DURATION:
        fmt_duration(s->min, lo, sizeof(lo));
        fmt_duration(s->max, hi, sizeof(hi));
        snprintf(buf, len,
                 "a duration from %s to %s (milliseconds, or a number with ms, s, m or h)", lo, hi);
        return;
    case SET_URL:
        snprintf(buf, len, "an http:// or https:// URL without a query");
        return;
    case SET_HEADERS:
        snprintf(buf, len, "headers name=value separated by commas (or a mapping)");
        return;
    case SET_RATIO:
        snprintf(buf, len, "a number from 0 to 1");
        return;
    case SET_BOOL:
        snprintf(buf, len, "true or false");
        return;
    case SET_CHOICE: {
        size_t o = (size_t)snprintf(buf, len, "one of");
        for (const char *const *c = s->choices; *c != NULL && o < len; c++)
            o += (size_t)snprintf(buf + o, len - o, "%s %s", c == s->choices ? "" : ",", *c);
        return;
    }
    }
    snprintf(buf, len, "a value");
}

/* A value quoted for an error message: bounded, one line, printable. */
static void show_value(const char *v, size_t vlen, char *buf, size_t len)
{
    size_t o = 0, max = 60;
    for (size_t i = 0; i < vlen && o + 5 < len; i++) {
        unsigned char c = (unsigned char)v[i];
        if (i == max) {
            memcpy(buf + o, "...", 3);
            o += 3;
            break;
        }
        if (c == '"' || c == '\\')
            buf[o++] = '\\';
        buf[o++] = (char)(isprint(c) ? c : '?');
    }
    buf[o] = '\0';
}

static int value_error(const struct setting *s, const char *where, const char *text,
                       const char *why, char *errmsg, size_t errlen)
{
    char expected[160], shown[80];
    describe(s, expected, sizeof(expected));
    show_value(text, strlen(text), shown, sizeof(shown));
    return errf(errmsg, errlen, KP_ECONFIG, "%s: expected %s, got \"%s\"%s%s", where, expected,
                shown, why[0] != '\0' ? ": " : "", why);
}

/* Same, for a YAML node that is not a scalar ("got a mapping"). */
static int kind_error(const struct setting *s, const char *where, const char *kind, char *errmsg,
                      size_t errlen)
{
    char expected[160];
    describe(s, expected, sizeof(expected));
    return errf(errmsg, errlen, KP_ECONFIG, "%s: expected %s, got %s", where, expected, kind);
}

/* --- parsing values ------------------------------------------------------- */

static int parse_number(const struct setting *s, const char *text, int64_t *out)
{
    const struct unit *units = s->type == SET_SIZE       ? size_units
                               : s->type == SET_DURATION ? duration_units
                                                         : int_units;
    char *end;
    /* strtoll would accept leading blanks and signs; a config value with
     * either is a mistake, and negatives are below every minimum anyway. */
    if (!isdigit((unsigned char)text[0]))
        return -1;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno == ERANGE)
        return -1;
    while (*end == ' ')
        end++;
    for (const struct unit *u = units; u->suffix != NULL; u++) {
        if (strcasecmp(end, u->suffix) != 0)
            continue;
        if (v > INT64_MAX / u->mult)
            return -1;
        int64_t n = (int64_t)v * u->mult;
        if (n < s->min || n > s->max)
            return -1;
        *out = n;
        return 0;
    }
    return -1;
}

static void store_number(struct kp_config *cfg, const struct setting *s, int64_t v)
{
    char *field = (char *)cfg + s->offset;
    if (s->size == sizeof(int)) {
        int i = (int)v;
        memcpy(field, &i, sizeof(i));
    } else {
        memcpy(field, &v, sizeof(v));
    }
}

static int64_t load_number(const struct kp_config *cfg, const struct setting *s)
{
    const char *field = (const char *)cfg + s->offset;
    if (s->size == sizeof(int)) {
        int i;
        memcpy(&i, field, sizeof(i));
        return i;
    }
    int64_t v;
    memcpy(&v, field, sizeof(v));
    return v;
}

static bool valid_host_name(const char *h, size_t len)
{
    if (len == 0 || len > 253 || h[0] == '-' || h[0] == '.')
        return false;
    for (size_t i = 0; i < len; i++)
        if (!isalnum((unsigned char)h[i]) && h[i] != '-' && h[i] != '.' && h[i] != '_')
            return false;
    return true;
}

static bool valid_ipv6(const char *h, size_t len)
{
    char tmp[INET6_ADDRSTRLEN];
    unsigned char bin[16];
    if (len == 0 || len >= sizeof(tmp))
        return false;
    memcpy(tmp, h, len);
    tmp[len] = '\0';
    return inet_pton(AF_INET6, tmp, bin) == 1;
}

static int check_port(const char *p, size_t len, bool for_listen, char *why, size_t whylen)
{
    long port = 0;
    if (len == 0)
        return errf(why, whylen, -1, "missing port");
    for (size_t i = 0; i < len; i++) {
        if (!isdigit((unsigned char)p[i]))
            return errf(why, whylen, -1, "port is not a number");
        port = port * 10 + (p[i] - '0');
        if (port > 65535)
            return errf(why, whylen, -1, "port must be from %d to 65535", for_listen ? 0 : 1);
    }
    if (port == 0 && !for_listen)
        return errf(why, whylen, -1, "port 0 is only for listening");
    return 0;
}

/* Shape only: no name is resolved. A listen address may omit the host (all
 * addresses) and use port 0 (any free port); a peer address may not. */
static int check_addr(const char *a, size_t len, bool for_listen, char *why, size_t whylen)
{
    const char *host = a, *port;
    size_t hlen;
    if (len > 0 && a[0] == '[') {
        const char *close = memchr(a, ']', len);
        if (close == NULL)
            return errf(why, whylen, -1, "missing ']'");
        if (!valid_ipv6(a + 1, (size_t)(close - a - 1)))
            return errf(why, whylen, -1, "not an IPv6 address inside [ ]");
        if (close + 1 == a + len || close[1] != ':')
            return errf(why, whylen, -1, "missing :port after ']'");
        port = close + 2;
        return check_port(port, (size_t)(a + len - port), for_listen, why, whylen);
    }
    const char *colon = memrchr(a, ':', len);
    if (colon == NULL)
        return errf(why, whylen, -1, "missing :port");
    hlen = (size_t)(colon - a);
    if (memchr(host, ':', hlen) != NULL)
        return errf(why, whylen, -1, "an IPv6 address needs brackets, as in [::1]:7600");
    if (hlen == 0 && !for_listen)
        return errf(why, whylen, -1, "missing host");
    if (hlen > 0 && !valid_host_name(host, hlen))
        return errf(why, whylen, -1, "bad host name");
    port = colon + 1;
    return check_port(port, (size_t)(a + len - port), for_listen, why, whylen);
}

static bool is_blank(const char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    return *s == '\0';
}

/* "a:1, b:2" -> "a:1,b:2", each address checked. */
static int normalize_peers(const char *text, char **out, char *why, size_t whylen)
{
    char *buf = kp_malloc(strlen(text) + 1), *w = buf;
    const char *p = text;
    if (buf == NULL)
        return KP_ENOMEM;
    for (;;) {
        const char *end = strchr(p, ','), *a = p, *b;
        b = end != NULL ? end : p + strlen(p);
        while (a < b && isspace((unsigned char)*a))
            a++;
        while (b > a && isspace((unsigned char)b[-1]))
            b--;
        if (a == b) {
            errf(why, whylen, -1, "empty address in the list");
            goto err_after_buf;
        }
        if (check_addr(a, (size_t)(b - a), false, why, whylen) != 0)
            goto err_after_buf;
        if (w != buf)
            *w++ = ',';
        memcpy(w, a, (size_t)(b - a));
        w += b - a;
        if (end == NULL)
            break;
        p = end + 1;
    }
    *w = '\0';
    *out = buf;
    return 0;

err_after_buf:
    kp_free(buf);
    return KP_ECONFIG;
}

static bool valid_node_name(const char *s)
{
    size_t len = strlen(s);
    if (len == 0 || len > NODE_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '-' && s[i] != '.' && s[i] != '_')
            return false;
    return true;
}

static const char *parse_choice(const struct setting *s, const char *text)
{
    if (s->choices == log_levels && strcasecmp(text, "warning") == 0)
        return "warn";
    for (const char *const *c = s->choices; *c != NULL; c++)
        if (strcasecmp(text, *c) == 0)
            return *c;
    return NULL;
}

/* An exporter's URL: http or https, a host, no blanks or controls, and no
 * query or fragment (paths are appended to it). */
static bool valid_url(const char *text, char *why, size_t whylen)
{
    size_t len = strlen(text), scheme;
    if (strncasecmp(text, "http://", 7) == 0)
        scheme = 7;
    else if (strncasecmp(text, "https://", 8) == 0)
        scheme = 8;
    else
        return errf(why, whylen, -1, "not http:// or https://") == 0;
    if (len > 2048)
        return errf(why, whylen, -1, "longer than 2048 bytes") == 0;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)text[i] <= 0x20 || text[i] == 0x7f)
            return errf(why, whylen, -1, "blank or control character") == 0;
    if (strpbrk(text, "?#") != NULL)
        return errf(why, whylen, -1, "a query or fragment") == 0;
    if (text[scheme] == '\0' || text[scheme] == '/')
        return errf(why, whylen, -1, "missing host") == 0;
    return true;
}

static bool header_token_char(unsigned char c)
{
    return isalnum(c) || strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* Headers the exporter sets itself, or that would break its request. */
static bool header_reserved(const char *name, size_t n)
{
    static const char *const reserved[] = {
        "content-type", "content-length", "host", "transfer-encoding",
        "connection",   "expect",         NULL};
    for (const char *const *r = reserved; *r != NULL; r++)
        if (strlen(*r) == n && strncasecmp(*r, name, n) == 0)
            return true;
    return false;
}

/* Append "name: value" to @buf (a line of its own). */
static int header_add(struct kp_buf *buf, const char *name, size_t nlen, const char *value,
                      size_t vlen, char *why, size_t whylen)
{
    if (nlen == 0)
        return errf(why, whylen, -1, "empty header name");
    for (size_t i = 0; i < nlen; i++)
        if (!header_token_char((unsigned char)name[i]))
            return errf(why, whylen, -1, "bad character in header name");
    if (header_reserved(name, nlen))
        return errf(why, whylen, -1, "header %.*s is set by keyplane", (int)nlen, name);
    for (size_t i = 0; i < vlen; i++)
        if (((unsigned char)value[i] < 0x20 && value[i] != '\t') || value[i] == 0x7f)
            return errf(why, whylen, -1, "control character in a header value");
    if ((buf->len > 0 && kp_buf_append_lit(buf, "\n") != 0) ||
        kp_buf_append(buf, name, nlen) != 0 || kp_buf_append_lit(buf, ": ") != 0 ||
        kp_buf_append(buf, value, vlen) != 0)
        return KP_ENOMEM;
    return 0;
}

/* "a=1, b=x%2Cy" -> "a: 1\nb: x,y" (the OTEL_EXPORTER_OTLP_HEADERS form:
 * values may be %-escaped). */
static int parse_headers_text(const char *text, char **out, char *why, size_t whylen)
{
    struct kp_buf buf, val;
    kp_buf_init(&buf);
    kp_buf_init(&val);
    int rv = 0;
    for (const char *p = text; rv == 0;) {
        const char *end = strchr(p, ','), *a = p, *b;
        b = end != NULL ? end : p + strlen(p);
        while (a < b && isspace((unsigned char)*a))
            a++;
        while (b > a && isspace((unsigned char)b[-1]))
            b--;
        const char *eq = memchr(a, '=', (size_t)(b - a));
        if (eq == NULL) {
            rv = errf(why, whylen, -1, "expected name=value");
            break;
        }
        const char *ne = eq;
        while (ne > a && isspace((unsigned char)ne[-1]))
            ne--;
        const char *v = eq + 1;
        while (v < b && isspace((unsigned char)*v))
            v++;
        val.len = 0;
        for (const char *q = v; q < b && rv == 0; q++) {
            char ch = *q;
            if (ch == '%') {
                int hi = q + 2 < b ? kp_hex_value(q[1]) : -1,
                    lo = hi >= 0 ? kp_hex_value(q[2]) : -1;
                if (lo < 0) {
                    rv = errf(why, whylen, -1, "bad %%-escape in a header value");
                    break;
                }
                ch = (char)(hi << 4 | lo);
                q += 2;
            }
            if (kp_buf_append(&val, &ch, 1) != 0)
                rv = KP_ENOMEM;
        }
        if (rv == 0)
            rv = header_add(&buf, a, (size_t)(ne - a), val.data ? val.data : "", val.len, why,
                            whylen);
        if (end == NULL)
            break;
        p = end + 1;
    }
    kp_buf_free(&val);
    if (rv != 0) {
        kp_buf_free(&buf);
        return rv;
    }
    *out = buf.data;
    return 0;
}

/* "0.25" -> 0.25; 0 to 1, decimal digits and one point only. */
static int parse_ratio(const char *text, double *out)
{
    char *end;
    if (!isdigit((unsigned char)text[0]) && text[0] != '.')
        return -1;
    if (text[strspn(text, "0123456789.")] != '\0')
        return -1;
    errno = 0;
    double v = strtod(text, &end);
    if (errno != 0 || *end != '\0' || !(v >= 0 && v <= 1))
        return -1;
    *out = v;
    return 0;
}

/* Takes ownership of @v (may be NULL: unset). */
static void store_owned(struct kp_config *cfg, const struct setting *s, char *v)
{
    char **slot = string_slot(cfg, s);
    kp_free(*slot);
    *slot = v;
}

static int store_copy(struct kp_config *cfg, const struct setting *s, const char *v, char *errmsg,
                      size_t errlen)
{
    char *dup = kp_strdup(v);
    if (dup == NULL)
        return oom(errmsg, errlen);
    store_owned(cfg, s, dup);
    return 0;
}

/* The one way a value enters the config, whatever its source. @where names
 * the source for errors ("file.yaml:3: workers", "--workers"). */
static int set_value(struct kp_config *cfg, const struct setting *s, const char *text,
                     const char *where, char *errmsg, size_t errlen)
{
    char why[96] = "";
    const char *level;
    char *peers;
    int64_t n;
    int rv;

    if (s->optional && is_blank(text)) {
        store_owned(cfg, s, NULL);
        return 0;
    }
    switch (s->type) {
    case SET_INT:
    case SET_SIZE:
    case SET_DURATION:
        if (parse_number(s, text, &n) != 0)
            break;
        store_number(cfg, s, n);
        return 0;
    case SET_CHOICE:
        if ((level = parse_choice(s, text)) == NULL)
            break;
        return store_copy(cfg, s, level, errmsg, errlen);
    case SET_PEERS:
        rv = normalize_peers(text, &peers, why, sizeof(why));
        if (rv == KP_ENOMEM)
            return oom(errmsg, errlen);
        if (rv != 0)
            break;
        store_owned(cfg, s, peers);
        return 0;
    case SET_LISTEN:
        if (check_addr(text, strlen(text), true, why, sizeof(why)) != 0)
            break;
        return store_copy(cfg, s, text, errmsg, errlen);
    case SET_NAME:
        if (!valid_node_name(text))
            break;
        return store_copy(cfg, s, text, errmsg, errlen);
    case SET_PATH:
        if (text[0] == '\0' || strlen(text) >= PATH_MAX)
            break;
        return store_copy(cfg, s, text, errmsg, errlen);
    case SET_URL:
        if (!valid_url(text, why, sizeof(why)))
            break;
        return store_copy(cfg, s, text, errmsg, errlen);
    case SET_HEADERS:
        rv = parse_headers_text(text, &peers, why, sizeof(why));
        if (rv == KP_ENOMEM)
            return oom(errmsg, errlen);
        if (rv != 0) /* the value is secret: it is not quoted */
            return errf(errmsg, errlen, KP_ECONFIG, "%s: expected %s: %s", where,
                        "headers name=value separated by commas", why);
        store_owned(cfg, s, peers);
        return 0;
    case SET_RATIO: {
        double d;
        if (parse_ratio(text, &d) != 0)
            break;
        memcpy((char *)cfg + s->offset, &d, sizeof(d));
        return 0;
    }
    case SET_BOOL: {
        static const char *const yes[] = {"true", "yes", "on", "1", NULL};
        static const char *const no[] = {"false", "no", "off", "0", NULL};
        int v = -1;
        for (int i = 0; yes[i] != NULL; i++) {
            if (strcasecmp(text, yes[i]) == 0)
                v = 1;
            if (strcasecmp(text, no[i]) == 0)
                v = 0;
        }
        if (v < 0)
            break;
        bool b = v == 1;
        memcpy((char *)cfg + s->offset, &b, sizeof(b));
        return 0;
    }
    }
    return value_error(s, where, text, why, errmsg, errlen);
}

/* --- defaults ------------------------------------------------------------- */

static int apply_defaults(struct kp_config *cfg, char *errmsg, size_t errlen)
{
    char host[256];
    int rv;
    for (size_t i = 0; i < N_SETTINGS; i++) {
        const struct setting *s = &settings[i];
        const char *def = s->def;
        if (s->type == SET_NAME && def == NULL) {
            /* A host name we cannot use as a node name is not worth failing
             * startup over; the operator can set node_name. */
            if (gethostname(host, sizeof(host)) != 0)
                host[0] = '\0';
            host[sizeof(host) - 1] = '\0';
            def = valid_node_name(host) ? host : "keyplane";
        }
        if (def == NULL)
            continue;
        rv = set_value(cfg, s, def, s->name, errmsg, errlen);
        if (rv != 0)
            return rv;
    }
    return 0;
}

/* --- the YAML file -------------------------------------------------------- */

static int read_file(const char *path, char **out, size_t *lenp, char *errmsg, size_t errlen)
{
    struct stat st;
    char *buf;
    size_t got = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC), rv;

    if (fd < 0)
        return errf(errmsg, errlen, KP_ECONFIG, "%s: cannot open: %s", path, strerror(errno));
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rv = errf(errmsg, errlen, KP_ECONFIG, "%s: not a regular file", path);
        goto err_after_open;
    }
    if (st.st_size > CONFIG_FILE_MAX) {
        rv = errf(errmsg, errlen, KP_ECONFIG, "%s: larger than %d bytes; is it the right file?",
                  path, CONFIG_FILE_MAX);
        goto err_after_open;
    }
    buf = kp_malloc((size_t)st.st_size + 1);
    if (buf == NULL) {
        rv = oom(errmsg, errlen);
        goto err_after_open;
    }
    while (got < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rv = errf(errmsg, errlen, KP_ECONFIG, "%s: cannot read: %s", path,
                      n < 0 ? strerror(errno) : "file shrank while reading");
            goto err_after_buf;
        }
        got += (size_t)n;
    }
    buf[got] = '\0';
    close(fd);
    *out = buf;
    *lenp = got;
    return 0;

err_after_buf:
    kp_free(buf);
err_after_open:
    close(fd);
    return rv;
}

/* 1-based line of a node: its own token for a scalar, the first entry's for
 * a collection; 0 when unknown (an empty collection). */
static int node_line(struct fy_node *n)
{
    void *iter = NULL;
    while (n != NULL) {
        if (fy_node_get_type(n) == FYNT_SCALAR) {
            struct fy_token *t = fy_node_get_scalar_token(n);
            const struct fy_mark *m = t != NULL ? fy_token_start_mark(t) : NULL;
            return m != NULL ? m->line + 1 : 0;
        }
        iter = NULL;
        if (fy_node_get_type(n) == FYNT_SEQUENCE) {
            n = fy_node_sequence_iterate(n, &iter);
        } else {
            struct fy_node_pair *p = fy_node_mapping_iterate(n, &iter);
            n = p != NULL ? fy_node_pair_key(p) : NULL;
        }
    }
    return 0;
}

static const char *node_kind(struct fy_node *n)
{
    switch (fy_node_get_type(n)) {
    case FYNT_MAPPING:
        return "a mapping";
    case FYNT_SEQUENCE:
        return "a sequence";
    default:
        return "a scalar";
    }
}

/* "file:line" or just "file" when the line is unknown. */
static void file_pos(char *buf, size_t len, const char *path, int line)
{
    if (line > 0)
        snprintf(buf, len, "%s:%d", path, line);
    else
        snprintf(buf, len, "%s", path);
}

static bool is_yaml_null(struct fy_node *n, const char *text)
{
    return fy_node_get_style(n) == FYNS_PLAIN &&
           (strcmp(text, "") == 0 || strcmp(text, "~") == 0 || strcmp(text, "null") == 0 ||
            strcmp(text, "Null") == 0 || strcmp(text, "NULL") == 0);
}

static struct fy_node *deref(struct fy_node *n)
{
    return n != NULL && fy_node_is_alias(n) ? fy_node_resolve_alias(n) : n;
}

/* The text of one join list item, checked where it stands. */
static int peer_item(const struct setting *s, struct fy_node *item, const char *path,
                     const char **textp, char *errmsg, size_t errlen)
{
    char pos[PATH_MAX + 16], where[PATH_MAX + 64], why[96] = "";
    struct fy_node *v = deref(item);
    const char *text;

    file_pos(pos, sizeof(pos), path, node_line(item));
    snprintf(where, sizeof(where), "%s: %s", pos, s->name);
    if (v == NULL)
        return errf(errmsg, errlen, KP_ECONFIG, "%s: unknown alias", where);
    if (fy_node_get_type(v) != FYNT_SCALAR)
        return kind_error(s, where, node_kind(v), errmsg, errlen);
    if ((text = fy_node_get_scalar0(v)) == NULL)
        return oom(errmsg, errlen);
    if (strchr(text, ',') != NULL)
        snprintf(why, sizeof(why), "one address per list item");
    if (why[0] != '\0' || check_addr(text, strlen(text), false, why, sizeof(why)) != 0)
        return value_error(s, where, text, why, errmsg, errlen);
    *textp = text;
    return 0;
}

/* join as a YAML sequence: each item checked, then stored as the same
 * comma-separated string a flag would give. */
static int apply_yaml_peers(struct kp_config *cfg, const struct setting *s, struct fy_node *seq,
                            const char *path, char *errmsg, size_t errlen)
{
    struct fy_node *item;
    void *iter = NULL;
    const char *text;
    size_t total = 0;
    char *buf, *w;
    int rv;

    while ((item = fy_node_sequence_iterate(seq, &iter)) != NULL) {
        if ((rv = peer_item(s, item, path, &text, errmsg, errlen)) != 0)
            return rv;
        total += strlen(text) + 1;
    }
    if (total == 0) {
        store_owned(cfg, s, NULL);
        return 0;
    }
    if ((buf = kp_malloc(total)) == NULL)
        return oom(errmsg, errlen);
    w = buf;
    iter = NULL;
    while ((item = fy_node_sequence_iterate(seq, &iter)) != NULL) {
        if ((rv = peer_item(s, item, path, &text, errmsg, errlen)) != 0) {
            kp_free(buf);
            return rv;
        }
        if (w != buf)
            *w++ = ',';
        memcpy(w, text, strlen(text));
        w += strlen(text);
    }
    *w = '\0';
    store_owned(cfg, s, buf);
    return 0;
}

/* otlp_headers as a YAML mapping: names to values, taken literally. */
static int apply_yaml_headers(struct kp_config *cfg, const struct setting *s, struct fy_node *map,
                              const char *where, char *errmsg, size_t errlen)
{
    struct fy_node_pair *pair;
    void *iter = NULL;
    struct kp_buf buf;
    char why[96] = "";
    int rv = 0;
    kp_buf_init(&buf);
    while (rv == 0 && (pair = fy_node_mapping_iterate(map, &iter)) != NULL) {
        struct fy_node *k = deref(fy_node_pair_key(pair)), *v = deref(fy_node_pair_value(pair));
        const char *name, *value;
        size_t nlen = 0, vlen = 0;
        if (k == NULL || v == NULL || fy_node_get_type(k) != FYNT_SCALAR ||
            fy_node_get_type(v) != FYNT_SCALAR) {
            rv = errf(errmsg, errlen, KP_ECONFIG, "%s: expected a mapping of names to values",
                      where);
            break;
        }
        name = fy_node_get_scalar(k, &nlen);
        value = fy_node_get_scalar(v, &vlen);
        if (name == NULL || value == NULL) {
            rv = oom(errmsg, errlen);
            break;
        }
        rv = header_add(&buf, name, nlen, value, vlen, why, sizeof(why));
        if (rv == KP_ENOMEM)
            rv = oom(errmsg, errlen);
        else if (rv != 0) /* values are secret: never quoted */
            rv = errf(errmsg, errlen, KP_ECONFIG, "%s: %s", where, why);
    }
    if (rv != 0) {
        kp_buf_free(&buf);
        return rv;
    }
    store_owned(cfg, s, buf.data); /* NULL for an empty mapping: none */
    return 0;
}

static int apply_yaml_value(struct kp_config *cfg, const struct setting *s, struct fy_node *val,
                            const char *path, const char *where, char *errmsg, size_t errlen)
{
    const char *text;
    if (val != NULL && fy_node_is_alias(val) && (val = deref(val)) == NULL)
        return errf(errmsg, errlen, KP_ECONFIG, "%s: unknown alias", where);
    if (val != NULL && fy_node_get_type(val) == FYNT_SEQUENCE && s->type == SET_PEERS)
        return apply_yaml_peers(cfg, s, val, path, errmsg, errlen);
    if (val != NULL && fy_node_get_type(val) == FYNT_MAPPING && s->type == SET_HEADERS)
        return apply_yaml_headers(cfg, s, val, where, errmsg, errlen);
    if (val != NULL && fy_node_get_type(val) != FYNT_SCALAR)
        return kind_error(s, where, node_kind(val), errmsg, errlen);
    text = val != NULL ? fy_node_get_scalar0(val) : "";
    if (text == NULL)
        return oom(errmsg, errlen);
    if (val == NULL || is_yaml_null(val, text)) {
        if (s->optional) {
            store_owned(cfg, s, NULL);
            return 0;
        }
        return kind_error(s, where, "nothing", errmsg, errlen);
    }
    return set_value(cfg, s, text, where, errmsg, errlen);
}

static int unknown_key(const char *path, int line, const char *name, size_t len, char *errmsg,
                       size_t errlen)
{
    char pos[PATH_MAX + 16], shown[80];
    const struct setting *near = closest_setting(name, len);
    file_pos(pos, sizeof(pos), path, line);
    show_value(name, len, shown, sizeof(shown));
    if (near != NULL)
        return errf(errmsg, errlen, KP_ECONFIG, "%s: unknown setting \"%s\" (did you mean \"%s\"?)",
                    pos, shown, near->name);
    return errf(errmsg, errlen, KP_ECONFIG, "%s: unknown setting \"%s\"", pos, shown);
}

/* Whether some setting's name is "@name.something": @name is a section. */
static bool is_section(const char *name, size_t len)
{
    for (size_t i = 0; i < N_SETTINGS; i++)
        if (strncmp(settings[i].name, name, len) == 0 && settings[i].name[len] == '.')
            return true;
    return false;
}

static int apply_yaml_section(struct kp_config *cfg, const char *path, const char *section,
                              size_t slen, struct fy_node *map, int *first_line, char *errmsg,
                              size_t errlen);

/* @first_line remembers where each setting was first set, to refuse a
 * second. @section is the enclosing section's name ("" at the top). */
static int apply_yaml_pair(struct kp_config *cfg, const char *path, const char *section,
                           struct fy_node_pair *pair, int *first_line, char *errmsg, size_t errlen)
{
    struct fy_node *key = fy_node_pair_key(pair);
    char pos[PATH_MAX + 16], where[PATH_MAX + 64], full[128];
    const struct setting *s;
    const char *name = NULL;
    size_t len = 0;
    int line = node_line(key), idx;

    file_pos(pos, sizeof(pos), path, line > 0 ? line : node_line(fy_node_pair_value(pair)));
    if (key != NULL && fy_node_get_type(key) == FYNT_SCALAR && !fy_node_is_alias(key))
        name = fy_node_get_scalar(key, &len);
    if (name == NULL)
        return errf(errmsg, errlen, KP_ECONFIG, "%s: setting names must be plain strings", pos);
    if (section[0] != '\0') {
        int n = snprintf(full, sizeof(full), "%s.%.*s", section, (int)len, name);
        name = full;
        len = n > 0 && (size_t)n < sizeof(full) ? (size_t)n : sizeof(full) - 1;
    } else if (is_section(name, len)) {
        return apply_yaml_section(cfg, path, name, len, deref(fy_node_pair_value(pair)), first_line,
                                  errmsg, errlen);
    }
    if ((s = setting_by_name(name, len)) == NULL)
        return unknown_key(path, line, name, len, errmsg, errlen);
    snprintf(where, sizeof(where), "%s: %s", pos, s->name);
    idx = (int)(s - settings);
    if (first_line[idx] > 0)
        return errf(errmsg, errlen, KP_ECONFIG, "%s: set twice (first on line %d)", where,
                    first_line[idx]);
    if (first_line[idx] < 0)
        return errf(errmsg, errlen, KP_ECONFIG, "%s: set twice", where);
    first_line[idx] = line > 0 ? line : -1;
    return apply_yaml_value(cfg, s, fy_node_pair_value(pair), path, where, errmsg, errlen);
}

/* A section (tls:): a mapping of the names after the dot; empty or null
 * sets nothing. */
static int apply_yaml_section(struct kp_config *cfg, const char *path, const char *section,
                              size_t slen, struct fy_node *map, int *first_line, char *errmsg,
                              size_t errlen)
{
    char name[64], pos[PATH_MAX + 16];
    struct fy_node_pair *pair;
    void *iter = NULL;
    snprintf(name, sizeof(name), "%.*s", (int)slen, section);
    if (map == NULL || (fy_node_get_type(map) == FYNT_SCALAR && fy_node_get_scalar0(map) != NULL &&
                        is_yaml_null(map, fy_node_get_scalar0(map))))
        return 0;
    if (fy_node_get_type(map) != FYNT_MAPPING) {
        file_pos(pos, sizeof(pos), path, node_line(map));
        return errf(errmsg, errlen, KP_ECONFIG, "%s: %s: expected a mapping of settings, got %s",
                    pos, name, node_kind(map));
    }
    while ((pair = fy_node_mapping_iterate(map, &iter)) != NULL) {
        int rv = apply_yaml_pair(cfg, path, name, pair, first_line, errmsg, errlen);
        if (rv != 0)
            return rv;
    }
    return 0;
}

static int apply_yaml_root(struct kp_config *cfg, const char *path, struct fy_node *root,
                           char *errmsg, size_t errlen)
{
    int first_line[N_SETTINGS] = {0};
    char pos[PATH_MAX + 16];
    struct fy_node_pair *pair;
    void *iter = NULL;
    int rv;

    /* A document with nothing in it ("---" alone) sets nothing. */
    if (root == NULL ||
        (fy_node_get_type(root) == FYNT_SCALAR && fy_node_get_scalar0(root) != NULL &&
         is_yaml_null(root, fy_node_get_scalar0(root))))
        return 0;
    if (fy_node_get_type(root) != FYNT_MAPPING) {
        file_pos(pos, sizeof(pos), path, node_line(root));
        return errf(errmsg, errlen, KP_ECONFIG,
                    "%s: expected a mapping of settings (name: value) at the top level, got %s",
                    pos, node_kind(root));
    }
    while ((pair = fy_node_mapping_iterate(root, &iter)) != NULL) {
        rv = apply_yaml_pair(cfg, path, "", pair, first_line, errmsg, errlen);
        if (rv != 0)
            return rv;
    }
    return 0;
}

static void diag_discard(struct fy_diag *diag, void *user, const char *buf, size_t len)
{
    (void)diag;
    (void)user;
    (void)buf;
    (void)len;
}

static int syntax_error(const char *path, struct fy_diag *diag, char *errmsg, size_t errlen)
{
    struct fy_diag_error *e;
    void *iter = NULL;
    char pos[PATH_MAX + 16];
    while ((e = fy_diag_errors_iterate(diag, &iter)) != NULL) {
        if (e->type < FYET_ERROR)
            continue;
        /* Collected errors carry 1-based lines already. */
        file_pos(pos, sizeof(pos), path, e->line);
        return errf(errmsg, errlen, KP_ECONFIG, "%s: YAML syntax error: %s", pos,
                    e->msg != NULL ? e->msg : "unknown");
    }
    return errf(errmsg, errlen, KP_ECONFIG, "%s: YAML syntax error", path);
}

/* Diagnostics go to a collector, never to stderr: the caller decides how an
 * error is shown. */
static struct fy_parser *yaml_parser_new(struct fy_diag **diagp)
{
    struct fy_diag_cfg dcfg;
    struct fy_parse_cfg pcfg;
    struct fy_parser *fyp;

    fy_diag_cfg_default(&dcfg);
    dcfg.fp = NULL;
    dcfg.output_fn = diag_discard;
    dcfg.colorize = false;
    *diagp = fy_diag_create(&dcfg);
    if (*diagp == NULL)
        return NULL;
    fy_diag_set_collect_errors(*diagp, true);
    memset(&pcfg, 0, sizeof(pcfg));
    pcfg.flags = FYPCF_QUIET | FYPCF_ALLOW_DUPLICATE_KEYS | FYPCF_JSON_NONE;
    pcfg.diag = *diagp;
    fyp = fy_parser_create(&pcfg);
    if (fyp == NULL) {
        fy_diag_destroy(*diagp);
        *diagp = NULL;
    }
    return fyp;
}

static int load_yaml(struct kp_config *cfg, const char *path, const char *text, size_t len,
                     char *errmsg, size_t errlen)
{
    struct fy_document *doc, *extra;
    struct fy_diag *diag;
    struct fy_parser *fyp = yaml_parser_new(&diag);
    int rv;

    if (fyp == NULL)
        return oom(errmsg, errlen);
    /* YAML is Unicode text; libfyaml 0.7 loops forever on some bytes that
     * are not UTF-8 (a directive "%\xff"), so they never reach it. */
    size_t bad = kp_utf8_invalid_at(text, len);
    if (bad < len) {
        rv = errf(errmsg, errlen, KP_ECONFIG, "%s: byte %zu: not UTF-8 (YAML is UTF-8 text)", path,
                  bad + 1);
        goto err_after_parser;
    }
    if (fy_parser_set_string(fyp, text, len) != 0) {
        rv = oom(errmsg, errlen);
        goto err_after_parser;
    }
    doc = fy_parse_load_document(fyp);
    if (doc == NULL) {
        /* No document and no error: an empty or comment-only file. */
        rv = fy_parser_get_stream_error(fyp) ? syntax_error(path, diag, errmsg, errlen) : 0;
        goto err_after_parser;
    }
    extra = fy_parse_load_document(fyp);
    if (extra != NULL) {
        fy_parse_document_destroy(fyp, extra);
        rv = errf(errmsg, errlen, KP_ECONFIG, "%s: holds more than one YAML document", path);
    } else if (fy_parser_get_stream_error(fyp)) {
        rv = syntax_error(path, diag, errmsg, errlen);
    } else {
        rv = apply_yaml_root(cfg, path, fy_document_root(doc), errmsg, errlen);
    }
    fy_parse_document_destroy(fyp, doc);
err_after_parser:
    fy_parser_destroy(fyp);
    fy_diag_destroy(diag);
    return rv;
}

static int load_file(struct kp_config *cfg, const char *path, char *errmsg, size_t errlen)
{
    char *text = NULL;
    size_t len = 0;
    int rv = read_file(path, &text, &len, errmsg, errlen);
    if (rv != 0)
        return rv;
    rv = load_yaml(cfg, path, text, len, errmsg, errlen);
    kp_free(text);
    return rv;
}

/* --- the environment ------------------------------------------------------ */

/* Like getenv, over @envp. Other KEYPLANE_* variables (KEYPLANE_TRACE,
 * KEYPLANE_MASTER_KEY, clusterctl's) are not ours and are ignored. */
static const char *env_lookup(char **envp, const char *name)
{
    size_t len = strlen(name);
    for (char **e = envp; e != NULL && *e != NULL; e++)
        if (strncmp(*e, name, len) == 0 && (*e)[len] == '=')
            return *e + len + 1;
    return NULL;
}

static int apply_env(struct kp_config *cfg, char **envp, char *errmsg, size_t errlen)
{
    char name[64];
    for (size_t i = 0; i < N_SETTINGS; i++) {
        env_name(&settings[i], name, sizeof(name));
        const char *v = env_lookup(envp, name);
        if (v == NULL)
            continue;
        int rv = set_value(cfg, &settings[i], v, name, errmsg, errlen);
        if (rv != 0)
            return rv;
    }
    return 0;
}

/* --- the command line ----------------------------------------------------- */

struct flag_scan {
    enum kp_config_action action;
    const char *config; /* --config FILE, NULL when not given */
};

static bool has_arg(int argc, char **argv, const char *a, const char *b)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], a) == 0 || strcmp(argv[i], b) == 0)
            return true;
    return false;
}

static int unknown_flag(const char *arg, size_t len, char *errmsg, size_t errlen)
{
    char shown[80], flag[64];
    const struct setting *near = closest_setting(arg + 2, len - 2);
    show_value(arg, len, shown, sizeof(shown));
    if (near == NULL || len < 3)
        return errf(errmsg, errlen, KP_ECONFIG, "unknown option %s (see --help)", shown);
    flag_name(near, flag, sizeof(flag));
    return errf(errmsg, errlen, KP_ECONFIG, "unknown option %s (did you mean %s?)", shown, flag);
}

/* A flag's value: after '=' or the next argument. A next argument that looks
 * like a flag is not taken as a value: "--data-dir --workers 4" is a
 * forgotten value, not a directory named "--workers" (use "=" for that). */
static const char *flag_value(int argc, char **argv, int *i, const char *eq, size_t nlen,
                              char *errmsg, size_t errlen)
{
    if (eq != NULL)
        return eq + 1;
    if (*i + 1 < argc && strncmp(argv[*i + 1], "--", 2) != 0) {
        *i += 1;
        return argv[*i];
    }
    errf(errmsg, errlen, KP_ECONFIG, "%.*s needs a value", (int)nlen, argv[*i]);
    return NULL;
}

/* One pass over argv. With @cfg NULL it only checks the syntax and records
 * the action and --config; with @cfg it applies the settings in order, so a
 * later flag wins over an earlier one. */
static int walk_flags(int argc, char **argv, struct flag_scan *scan, struct kp_config *cfg,
                      char *errmsg, size_t errlen)
{
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i], *eq, *v;
        const struct setting *s;
        size_t nlen;
        char shown[80];

        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0 || strcmp(arg, "-V") == 0 ||
            strcmp(arg, "--version") == 0)
            continue; /* handled before the walk */
        if (strncmp(arg, "--", 2) != 0) {
            show_value(arg, strlen(arg), shown, sizeof(shown));
            if (arg[0] == '-')
                return errf(errmsg, errlen, KP_ECONFIG, "unknown option %s (see --help)", shown);
            return errf(errmsg, errlen, KP_ECONFIG, "unexpected argument \"%s\" (see --help)",
                        shown);
        }
        eq = strchr(arg, '=');
        nlen = eq != NULL ? (size_t)(eq - arg) : strlen(arg);
        if (nlen == strlen("--check-config") && strncmp(arg, "--check-config", nlen) == 0) {
            if (eq != NULL)
                return errf(errmsg, errlen, KP_ECONFIG, "--check-config takes no value");
            scan->action = KP_CONFIG_CHECK;
            continue;
        }
        if (nlen == strlen("--recover") && strncmp(arg, "--recover", nlen) == 0) {
            if (eq != NULL)
                return errf(errmsg, errlen, KP_ECONFIG, "--recover takes no value");
            scan->action = KP_CONFIG_RECOVER;
            continue;
        }
        if (nlen == strlen("--config") && strncmp(arg, "--config", nlen) == 0) {
            if ((v = flag_value(argc, argv, &i, eq, nlen, errmsg, errlen)) == NULL)
                return KP_ECONFIG;
            scan->config = v;
            continue;
        }
        if ((s = setting_by_flag(arg + 2, nlen - 2)) == NULL)
            return unknown_flag(arg, nlen, errmsg, errlen);
        if ((v = flag_value(argc, argv, &i, eq, nlen, errmsg, errlen)) == NULL)
            return KP_ECONFIG;
        if (cfg != NULL) {
            char where[64];
            flag_name(s, where, sizeof(where));
            int rv = set_value(cfg, s, v, where, errmsg, errlen);
            if (rv != 0)
                return rv;
        }
    }
    return 0;
}

/* --- loading -------------------------------------------------------------- */

static int port_is_zero(const char *addr)
{
    size_t len = strlen(addr);
    return len >= 2 && strcmp(addr + len - 2, ":0") == 0;
}

/* Two listeners on one address would fail at bind time with a less helpful
 * message; port 0 picks a free port for each, so it never clashes. */
static int check_listeners(const struct kp_config *cfg, char *errmsg, size_t errlen)
{
    const struct setting *l[3];
    size_t n = 0;
    for (size_t i = 0; i < N_SETTINGS; i++)
        if (settings[i].type == SET_LISTEN && n < 3)
            l[n++] = &settings[i];
    for (size_t i = 0; i < n; i++) {
        for (size_t j = i + 1; j < n; j++) {
            const char *a = *string_slot((struct kp_config *)cfg, l[i]);
            const char *b = *string_slot((struct kp_config *)cfg, l[j]);
            if (strcmp(a, b) == 0 && !port_is_zero(a))
                return errf(errmsg, errlen, KP_ECONFIG,
                            "%s and %s are both \"%s\"; each listener needs its own address",
                            l[i]->name, l[j]->name, a);
        }
    }
    return 0;
}

/* libraft would round a segment size down to its block size (4 KiB on the
 * file systems it supports) without a word: refuse what it would change. */
static int check_raft_segment(const struct kp_config *cfg, char *errmsg, size_t errlen)
{
    if (cfg->raft_segment_bytes % (4 * KIB) == 0)
        return 0;
    return errf(errmsg, errlen, KP_ECONFIG,
                "raft_segment_bytes: %lld is not a multiple of 4KiB (4096 bytes); try %lldKiB",
                (long long)cfg->raft_segment_bytes,
                (long long)(cfg->raft_segment_bytes / (4 * KIB) * 4));
}

/* Raft's TLS needs all three files: a certificate without the CA could not
 * check its peers, and a CA alone would present nothing. */
static int check_tls(const struct kp_config *cfg, char *errmsg, size_t errlen)
{
    const char *names[3] = {"tls.cert_file", "tls.key_file", "tls.ca_file"};
    const char *files[3] = {cfg->tls_cert_file, cfg->tls_key_file, cfg->tls_ca_file};
    char set[64] = "", unset[64] = "";
    int n = 0;
    for (int i = 0; i < 3; i++) {
        char *list = files[i] != NULL ? set : unset;
        n += files[i] != NULL;
        snprintf(list + strlen(list), sizeof(set) - strlen(list), "%s%s", list[0] ? ", " : "",
                 names[i]);
    }
    if (n == 0 || n == 3)
        return 0;
    return errf(errmsg, errlen, KP_ECONFIG,
                "%s set but not %s: TLS needs this node's certificate, its key and the "
                "cluster CA (docs/operations.md, \"Securing node links\")",
                set, unset);
}

static int load_sources(struct kp_config *cfg, int argc, char **argv, char **envp,
                        const struct flag_scan *scan, char *errmsg, size_t errlen)
{
    struct flag_scan again = *scan;
    const char *path = scan->config != NULL ? scan->config : env_lookup(envp, "KEYPLANE_CONFIG");
    int rv = apply_defaults(cfg, errmsg, errlen);
    if (rv != 0)
        return rv;
    if (path != NULL && path[0] != '\0') {
        if ((cfg->config_file = kp_strdup(path)) == NULL)
            return oom(errmsg, errlen);
        if ((rv = load_file(cfg, path, errmsg, errlen)) != 0)
            return rv;
    }
    if ((rv = apply_env(cfg, envp, errmsg, errlen)) != 0)
        return rv;
    if ((rv = walk_flags(argc, argv, &again, cfg, errmsg, errlen)) != 0)
        return rv;
    if ((rv = check_listeners(cfg, errmsg, errlen)) != 0)
        return rv;
    if ((rv = check_raft_segment(cfg, errmsg, errlen)) != 0)
        return rv;
    return kp_config_check_tls(cfg, errmsg, errlen);
}

int kp_config_load(struct kp_config *cfg, int argc, char **argv, char **envp,
                   enum kp_config_action *action, char *errmsg, size_t errlen)
{
    struct kp_config fresh;
    struct flag_scan scan = {KP_CONFIG_RUN, NULL};
    int rv;

    memset(&fresh, 0, sizeof(fresh));
    if (errmsg != NULL && errlen > 0)
        errmsg[0] = '\0';
    *action = KP_CONFIG_RUN;
    /* Help and version win over everything else on the line, even mistakes,
     * so that "keyplaned --bad --help" still helps. */
    if (has_arg(argc, argv, "-h", "--help"))
        scan.action = KP_CONFIG_HELP;
    else if (has_arg(argc, argv, "-V", "--version"))
        scan.action = KP_CONFIG_VERSION;
    if (scan.action != KP_CONFIG_RUN) {
        rv = apply_defaults(&fresh, errmsg, errlen);
    } else {
        rv = walk_flags(argc, argv, &scan, NULL, errmsg, errlen);
        if (rv == 0)
            rv = load_sources(&fresh, argc, argv, envp, &scan, errmsg, errlen);
    }
    if (rv != 0) {
        kp_config_free(&fresh);
        return rv;
    }
    kp_config_free(cfg);
    *cfg = fresh;
    *action = scan.action;
    return 0;
}

void kp_config_free(struct kp_config *cfg)
{
    if (cfg == NULL)
        return;
    for (size_t i = 0; i < N_SETTINGS; i++)
        if (is_string_type(settings[i].type))
            kp_free(*string_slot(cfg, &settings[i]));
    kp_free(cfg->config_file);
    memset(cfg, 0, sizeof(*cfg));
}

/* --- printing ------------------------------------------------------------- */

static bool yaml_reserved(const char *s)
{
    static const char *const words[] = {"null", "~", "true", "false", "yes",  "no", "on",
                                        "off",  "y", "n",    ".inf",  ".nan", NULL};
    for (const char *const *w = words; *w != NULL; w++)
        if (strcasecmp(s, *w) == 0)
            return true;
    return false;
}

/* Plain when YAML would read it back as the same string, else
 * double-quoted. */
static bool yaml_plain_ok(const char *s)
{
    char *end;
    size_t len = strlen(s);
    if (len == 0 || yaml_reserved(s) || s[len - 1] == ':')
        return false;
    if (!isalnum((unsigned char)s[0]) && s[0] != '.' && s[0] != '/' && s[0] != '_')
        return false;
    for (const char *p = s; *p != '\0'; p++)
        if (!isalnum((unsigned char)*p) && strchr("._-/:@+", *p) == NULL)
            return false;
    /* Something that reads as a number would come back as one. */
    strtod(s, &end);
    return *end != '\0';
}

static void print_scalar(FILE *out, const char *s)
{
    if (yaml_plain_ok(s)) {
        fputs(s, out);
        return;
    }
    fputc('"', out);
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(out, "\\%c", *p);
        else if (*p == '\n')
            fputs("\\n", out);
        else if (*p == '\t')
            fputs("\\t", out);
        else if (*p < 0x20 || *p == 0x7f)
            fprintf(out, "\\x%02x", *p);
        else
            fputc(*p, out);
    }
    fputc('"', out);
}

static void print_peers(FILE *out, const char *peers)
{
    const char *p = peers;
    if (peers == NULL) {
        fputs(" []\n", out);
        return;
    }
    fputc('\n', out);
    while (*p != '\0') {
        size_t n = strcspn(p, ",");
        char item[300];
        snprintf(item, sizeof(item), "%.*s", (int)n, p);
        fputs("  - ", out);
        print_scalar(out, item);
        fputc('\n', out);
        p += n;
        if (*p == ',')
            p++;
    }
}

/* Header names only: the values are credentials. */
static void print_headers(FILE *out, const char *lines)
{
    if (lines == NULL) {
        fputs(" {}\n", out);
        return;
    }
    fputs("  # values are not shown\n", out);
    for (const char *p = lines; *p != '\0';) {
        size_t n = strcspn(p, ":");
        char name[256];
        snprintf(name, sizeof(name), "%.*s", (int)n, p);
        fputs("  ", out);
        print_scalar(out, name);
        fputs(": \"(hidden)\"\n", out);
        p += strcspn(p, "\n");
        if (*p == '\n')
            p++;
    }
}

static void print_setting(FILE *out, const struct kp_config *cfg, const struct setting *s)
{
    /* A section's settings print under its name, indented. */
    const char *dot = strchr(s->name, '.');
    if (dot != NULL) {
        size_t slen = (size_t)(dot - s->name);
        if (s == settings || strncmp(s[-1].name, s->name, slen + 1) != 0)
            fprintf(out, "%.*s:\n", (int)slen, s->name);
        fputs("  ", out);
        struct setting inner = *s;
        inner.name = dot + 1;
        print_setting(out, cfg, &inner);
        return;
    }
    if (s->type == SET_RATIO) {
        double d;
        memcpy(&d, (const char *)cfg + s->offset, sizeof(d));
        fprintf(out, "%s: %g\n", s->name, d);
        return;
    }
    if (s->type == SET_HEADERS) {
        fprintf(out, "%s:", s->name);
        print_headers(out, *string_slot((struct kp_config *)cfg, s));
        return;
    }
    if (s->type == SET_BOOL) {
        bool b;
        memcpy(&b, (const char *)cfg + s->offset, sizeof(b));
        fprintf(out, "%s: %s\n", s->name, b ? "true" : "false");
        return;
    }
    const char *str = is_string_type(s->type) ? *string_slot((struct kp_config *)cfg, s) : NULL;
    int64_t n = is_string_type(s->type) ? 0 : load_number(cfg, s);
    char human[32];

    fprintf(out, "%s:", s->name);
    if (s->type == SET_PEERS) {
        print_peers(out, str);
        return;
    }
    if (is_string_type(s->type)) {
        fputc(' ', out);
        if (str == NULL)
            fputs("null", out);
        else
            print_scalar(out, str);
        fputc('\n', out);
        return;
    }
    fprintf(out, " %" PRId64, n);
    if (s->type == SET_SIZE)
        fmt_size(n, human, sizeof(human));
    else if (s->type == SET_DURATION)
        fmt_duration(n, human, sizeof(human));
    else
        human[0] = '\0';
    if (human[0] != '\0' && strspn(human, "0123456789") != strlen(human))
        fprintf(out, "  # %s", human);
    fputc('\n', out);
}

void kp_config_print(const struct kp_config *cfg, FILE *out)
{
    fprintf(out, "# keyplaned %s effective configuration\n# config file: ", kp_version());
    if (cfg->config_file != NULL)
        print_scalar(out, cfg->config_file);
    else
        fputs("none", out);
    fputc('\n', out);
    for (size_t i = 0; i < N_SETTINGS; i++)
        print_setting(out, cfg, &settings[i]);
}

int kp_config_check_tls(const struct kp_config *cfg, char *errmsg, size_t errlen)
{
    int rv = check_tls(cfg, errmsg, errlen); /* the three files: all or none */
    if (rv != 0)
        return rv;
    const char *listener = cfg->tls_gateway && cfg->tls_control ? "tls.gateway and tls.control"
                           : cfg->tls_gateway                   ? "tls.gateway"
                                                                : "tls.control";
    if ((cfg->tls_gateway || cfg->tls_control) && cfg->tls_cert_file == NULL)
        return errf(errmsg, errlen, KP_ECONFIG,
                    "%s: needs tls.cert_file, tls.key_file and tls.ca_file", listener);
    if (cfg->tls_require_client_cert && cfg->tls_client_ca_file == NULL)
        return errf(errmsg, errlen, KP_ECONFIG,
                    "tls.require_client_cert: needs tls.client_ca_file to verify them against");
    return 0;
}

/* --- usage ---------------------------------------------------------------- */

static char usage_text[16384];
static size_t usage_len;

static void usage_add(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void usage_add(const char *fmt, ...)
{
    va_list ap;
    int n;
    if (usage_len >= sizeof(usage_text))
        return;
    va_start(ap, fmt);
    n = vsnprintf(usage_text + usage_len, sizeof(usage_text) - usage_len, fmt, ap);
    va_end(ap);
    if (n > 0)
        usage_len += (size_t)n;
}

/* Help text indented by six and wrapped to fit 80 columns. */
static void usage_wrap(const char *text)
{
    const int width = 80 - 6;
    while (*text != '\0') {
        int n = (int)strlen(text);
        if (n > width) {
            n = width;
            while (n > 0 && text[n] != ' ')
                n--;
            if (n == 0)
                n = (int)strcspn(text, " ");
        }
        usage_add("      %.*s\n", n, text);
        text += n;
        while (*text == ' ')
            text++;
    }
}

static void usage_setting(const struct setting *s)
{
    char flag[64], env[64];
    const char *def = s->def;
    flag_name(s, flag, sizeof(flag));
    env_name(s, env, sizeof(env));
    if (def == NULL)
        def = s->type == SET_NAME ? "the host name" : "none";
    usage_add("  %s %s\n", flag, s->metavar);
    usage_wrap(s->help);
    const char *dot = strchr(s->name, '.');
    if (dot != NULL)
        usage_add("      default: %s; env %s; YAML %.*s: %s\n", def, env, (int)(dot - s->name),
                  s->name, dot + 1);
    else
        usage_add("      default: %s; env %s; YAML %s\n", def, env, s->name);
}

/* Built once from the table, so it cannot drift from what is accepted. Not
 * thread-safe: call it from main. */
const char *kp_config_usage(void)
{
    if (usage_len > 0)
        return usage_text;
    usage_add("Usage: keyplaned [OPTIONS]\n\n"
              "Runs one keyplane node. Each setting below can be given as a key in the\n"
              "YAML file named by --config, as an environment variable, or as a flag.\n"
              "Flags beat the environment, which beats the file, which beats the default.\n\n"
              "Options:\n"
              "  --config FILE\n"
              "      YAML file to read settings from; none is read unless named\n"
              "      env KEYPLANE_CONFIG\n"
              "  --check-config\n"
              "      check the configuration, print it as YAML and exit\n"
              "  --recover\n"
              "      with this node stopped and a majority of the voters lost: make it\n"
              "      the only voter of its cluster (docs/operations.md), then exit\n"
              "  -h, --help\n"
              "      print this help and exit\n"
              "  -V, --version\n"
              "      print the version and exit\n\n"
              "Settings:\n");
    for (size_t i = 0; i < N_SETTINGS; i++)
        usage_setting(&settings[i]);
    usage_add("\nSizes take KiB, MiB or GiB (8MiB); durations take ms, s, m or h (30s).\n");
    return usage_text;
}

/* The command line of keyplane-bench, parsed into a kp_bench_config.
 *
 * Every mistake ends here with one sentence that names the flag, what was
 * given and what is expected, so that a script's log says what to fix: a URL
 * that is not http://HOST[:PORT]/PATH, a body file that is not there, a
 * number that is not one, flags that exclude each other. Nothing here opens
 * a socket; the one I/O is reading the --body file. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "bench.h"
#include "core/core.h"

#define DEFAULT_CLOSED_CONNECTIONS 16
#define DEFAULT_POOL_CONNECTIONS   64
#define DEFAULT_DURATION_S         10.0
#define DEFAULT_TIMEOUT_S          10.0
#define MAX_BODY_BYTES             (64u << 20)

static int fail(char *errmsg, size_t errlen, int err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(char *errmsg, size_t errlen, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errmsg, errlen, fmt, ap);
    va_end(ap);
    return err;
}

/* --- URL ----------------------------------------------------------------- */

static int url_host(const char *p, const char **rest, struct kp_bench_url *out)
{
    const char *end;
    if (*p == '[') {
        end = strchr(p, ']');
        if (end == NULL || end == p + 1)
            return -1;
        p++;
        *rest = end + 1;
    } else {
        end = p + strcspn(p, ":/?#");
        *rest = end;
    }
    size_t n = (size_t)(end - p);
    if (n == 0 || n >= sizeof(out->host))
        return -1;
    memcpy(out->host, p, n);
    out->host[n] = '\0';
    return 0;
}

static int url_port(const char *p, const char **rest, struct kp_bench_url *out)
{
    out->port = out->tls ? 443 : 80;
    if (*p != ':') {
        *rest = p;
        return 0;
    }
    p++;
    size_t n = strspn(p, "0123456789");
    if (n == 0 || n > 5)
        return -1;
    long port = strtol(p, NULL, 10);
    if (port < 1 || port > 65535)
        return -1;
    out->port = (int)port;
    *rest = p + n;
    return 0;
}

int kp_bench_url_parse(const char *text, struct kp_bench_url *out, char *errmsg, size_t errlen)
{
    static const char expect[] = "expected http[s]://HOST[:PORT][/PATH], e.g. "
                                 "http://127.0.0.1:7600/v1/chat/completions";
    memset(out, 0, sizeof(*out));
    if (text == NULL || *text == '\0')
        return fail(errmsg, errlen, KP_EINVAL, "--url is required (%s)", expect);
    out->tls = strncasecmp(text, "https://", 8) == 0;
    if (!out->tls && strncasecmp(text, "http://", 7) != 0)
        return fail(errmsg, errlen, KP_EINVAL, "bad URL '%s': %s", text, expect);
    const char *p = text + (out->tls ? 8 : 7), *rest;
    if (url_host(p, &rest, out) != 0)
        return fail(errmsg, errlen, KP_EINVAL, "bad URL '%s': no host; %s", text, expect);
    if (url_port(rest, &p, out) != 0)
        return fail(errmsg, errlen, KP_EINVAL, "bad URL '%s': port must be 1-65535; %s", text,
                    expect);
    if (*p != '\0' && *p != '/' && *p != '?')
        return fail(errmsg, errlen, KP_EINVAL, "bad URL '%s': %s", text, expect);
    size_t plen = strcspn(p, "#");
    if (plen + 2 > sizeof(out->path))
        return fail(errmsg, errlen, KP_EINVAL, "bad URL '%s': path too long", text);
    snprintf(out->path, sizeof(out->path), "%s%.*s", *p == '/' ? "" : "/", (int)plen, p);
    snprintf(out->port_text, sizeof(out->port_text), "%d", out->port);
    bool v6 = strchr(out->host, ':') != NULL;
    snprintf(out->hostport, sizeof(out->hostport), "%s%s%s:%d", v6 ? "[" : "", out->host,
             v6 ? "]" : "", out->port);
    return KP_OK;
}

/* --- numbers ------------------------------------------------------------- */

/* "10", "10s", "2.5s", "500ms", "2m" -> seconds. */
static int parse_seconds(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno != 0 || !isfinite(v) || v < 0)
        return -1;
    if (strcmp(end, "ms") == 0)
        v /= 1000.0;
    else if (strcmp(end, "m") == 0)
        v *= 60.0;
    else if (*end != '\0' && strcmp(end, "s") != 0)
        return -1;
    *out = v;
    return 0;
}

static int parse_count(const char *s, uint64_t max, uint64_t *out)
{
    char *end;
    if (*s == '-' || *s == '\0')
        return -1;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end != '\0' || errno != 0 || v > max)
        return -1;
    *out = v;
    return 0;
}

static int parse_rate(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end != '\0' || errno != 0 || !isfinite(v) || v <= 0 || v > 1e7)
        return -1;
    *out = v;
    return 0;
}

/* --- mix ----------------------------------------------------------------- */

static const char *const kind_names[] = {
#define KP_BENCH_KIND_NAME(kind, name, path, stream) name,
    KP_BENCH_KIND_MAP(KP_BENCH_KIND_NAME)
#undef KP_BENCH_KIND_NAME
};

static int kind_of(const char *name, size_t len)
{
    if (len == 17 && strncmp(name, "chat_small_stream", len) == 0)
        return KP_BENCH_CHAT_STREAM;
    for (int k = 0; k < KP_BENCH_N_KINDS; k++)
        if (strlen(kind_names[k]) == len && strncmp(name, kind_names[k], len) == 0)
            return k;
    return -1;
}

static int mix_entry(struct kp_bench_config *cfg, const char *item, size_t len, char *errmsg,
                     size_t errlen)
{
    const char *eq = memchr(item, '=', len);
    size_t nlen = eq ? (size_t)(eq - item) : len;
    int k = kind_of(item, nlen);
    if (k < 0)
        return fail(errmsg, errlen, KP_EINVAL,
                    "--mix: unknown kind '%.*s'; the kinds are chat_small, chat_large, "
                    "chat_stream, chat_large_stream, embeddings",
                    (int)nlen, item);
    uint64_t w = 1;
    if (eq) {
        char num[24];
        size_t wlen = len - nlen - 1;
        if (wlen == 0 || wlen >= sizeof(num))
            return fail(errmsg, errlen, KP_EINVAL, "--mix: bad weight in '%.*s'", (int)len, item);
        memcpy(num, eq + 1, wlen);
        num[wlen] = '\0';
        if (parse_count(num, 1000000, &w) != 0)
            return fail(errmsg, errlen, KP_EINVAL,
                        "--mix: weight in '%.*s' must be a whole number 0-1000000", (int)len, item);
    }
    cfg->weights[k] = (unsigned)w;
    return KP_OK;
}

static int parse_mix(struct kp_bench_config *cfg, const char *s, char *errmsg, size_t errlen)
{
    memset(cfg->weights, 0, sizeof(cfg->weights));
    cfg->mix_set = true;
    while (*s) {
        size_t len = strcspn(s, ",");
        if (len > 0) {
            int rv = mix_entry(cfg, s, len, errmsg, errlen);
            if (rv != KP_OK)
                return rv;
        }
        s += len + (s[len] == ',');
    }
    unsigned total = 0;
    for (int k = 0; k < KP_BENCH_N_KINDS; k++)
        total += cfg->weights[k];
    if (total == 0)
        return fail(errmsg, errlen, KP_EINVAL, "--mix: give at least one kind a weight above 0");
    return KP_OK;
}

/* --- body file ----------------------------------------------------------- */

static int read_body(struct kp_bench_config *cfg, const char *path, char *errmsg, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return fail(errmsg, errlen, errno == ENOENT ? KP_ENOENT : KP_EIO,
                    "--body: cannot open '%s': %s", path, strerror(errno));
    struct kp_buf b;
    kp_buf_init(&b);
    int rv = KP_OK;
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        if (b.len + n > MAX_BODY_BYTES) {
            rv = fail(errmsg, errlen, KP_ETOOBIG, "--body: '%s' is larger than %u MiB", path,
                      MAX_BODY_BYTES >> 20);
            goto err_after_buf;
        }
        if (kp_buf_append(&b, chunk, n) != 0) {
            rv = fail(errmsg, errlen, KP_ENOMEM, "--body: '%s': out of memory", path);
            goto err_after_buf;
        }
    }
    if (ferror(f)) {
        rv = fail(errmsg, errlen, KP_EIO, "--body: cannot read '%s': %s", path, strerror(errno));
        goto err_after_buf;
    }
    fclose(f);
    kp_free(cfg->body);
    cfg->body = b.data ? b.data : kp_strdup("");
    cfg->body_len = b.len;
    cfg->body_path = path;
    return cfg->body ? KP_OK : fail(errmsg, errlen, KP_ENOMEM, "out of memory");

err_after_buf:
    kp_buf_free(&b);
    fclose(f);
    return rv;
}

/* --- flags --------------------------------------------------------------- */

static void set_defaults(struct kp_bench_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->threads = 1;
    cfg->timeout_s = DEFAULT_TIMEOUT_S;
    cfg->progress_s = 1.0;
    cfg->model = "gpt-4o-mini";
    cfg->embedding_model = "text-embedding-3-small";
}

struct flags_seen {
    bool rate, connections, duration, requests;
};

/* One flag with a value. Returns KP_OK, or an error with a message. */
static int apply_flag(struct kp_bench_config *cfg, struct flags_seen *seen, const char *flag,
                      const char *v, char *errmsg, size_t errlen)
{
    uint64_t n;
    if (strcmp(flag, "--url") == 0) {
        cfg->url_text = v;
    } else if (strcmp(flag, "--rate") == 0) {
        if (parse_rate(v, &cfg->rate) != 0)
            return fail(errmsg, errlen, KP_EINVAL,
                        "--rate '%s': expected requests per second above 0 (at most 1e7)", v);
        seen->rate = true;
    } else if (strcmp(flag, "--connections") == 0 || strcmp(flag, "-c") == 0) {
        if (parse_count(v, 100000, &n) != 0 || n == 0)
            return fail(errmsg, errlen, KP_EINVAL, "--connections '%s': expected 1-100000", v);
        cfg->connections = (unsigned)n;
        seen->connections = true;
    } else if (strcmp(flag, "--threads") == 0 || strcmp(flag, "-t") == 0) {
        if (parse_count(v, 256, &n) != 0 || n == 0)
            return fail(errmsg, errlen, KP_EINVAL, "--threads '%s': expected 1-256", v);
        cfg->threads = (unsigned)n;
    } else if (strcmp(flag, "--duration") == 0 || strcmp(flag, "-d") == 0) {
        if (parse_seconds(v, &cfg->duration_s) != 0 || cfg->duration_s <= 0)
            return fail(errmsg, errlen, KP_EINVAL,
                        "--duration '%s': expected a time above 0 such as 10, 10s, 500ms or 2m", v);
        seen->duration = true;
    } else if (strcmp(flag, "--requests") == 0 || strcmp(flag, "-n") == 0) {
        if (parse_count(v, UINT64_MAX / 4, &cfg->requests) != 0 || cfg->requests == 0)
            return fail(errmsg, errlen, KP_EINVAL, "--requests '%s': expected a count above 0", v);
        seen->requests = true;
    } else if (strcmp(flag, "--warmup") == 0) {
        if (parse_seconds(v, &cfg->warmup_s) != 0)
            return fail(errmsg, errlen, KP_EINVAL, "--warmup '%s': expected a time such as 2s", v);
    } else if (strcmp(flag, "--timeout") == 0) {
        if (parse_seconds(v, &cfg->timeout_s) != 0 || cfg->timeout_s < 0.001)
            return fail(errmsg, errlen, KP_EINVAL,
                        "--timeout '%s': expected a time of at least 1ms", v);
    } else if (strcmp(flag, "--progress") == 0) {
        if (parse_seconds(v, &cfg->progress_s) != 0)
            return fail(errmsg, errlen, KP_EINVAL, "--progress '%s': expected a time (0: off)", v);
    } else if (strcmp(flag, "--body") == 0) {
        return read_body(cfg, v, errmsg, errlen);
    } else if (strcmp(flag, "--header") == 0 || strcmp(flag, "-H") == 0) {
        const char *colon = strchr(v, ':');
        if (colon == NULL || colon == v || strcspn(v, " \t\r\n") < (size_t)(colon - v) ||
            strpbrk(v, "\r\n") != NULL)
            return fail(errmsg, errlen, KP_EINVAL, "--header '%s': expected 'Name: value'", v);
        if (cfg->n_headers == KP_BENCH_MAX_HEADERS)
            return fail(errmsg, errlen, KP_EINVAL, "--header: at most %d headers",
                        KP_BENCH_MAX_HEADERS);
        cfg->headers[cfg->n_headers++] = v;
    } else if (strcmp(flag, "--cacert") == 0) {
        if (access(v, R_OK) != 0)
            return fail(errmsg, errlen, KP_ENOENT, "--cacert '%s': %s", v, strerror(errno));
        cfg->cacert = v;
    } else if (strcmp(flag, "--token") == 0) {
        if (*v == '\0' || strpbrk(v, "\r\n") != NULL)
            return fail(errmsg, errlen, KP_EINVAL, "--token: expected a token");
        cfg->token = v;
    } else if (strcmp(flag, "--method") == 0) {
        if (*v == '\0' || strspn(v, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") != strlen(v))
            return fail(errmsg, errlen, KP_EINVAL, "--method '%s': expected GET, POST, ...", v);
        cfg->method = v;
    } else if (strcmp(flag, "--mix") == 0) {
        return parse_mix(cfg, v, errmsg, errlen);
    } else if (strcmp(flag, "--model") == 0) {
        cfg->model = v;
    } else if (strcmp(flag, "--embedding-model") == 0) {
        cfg->embedding_model = v;
    } else {
        return fail(errmsg, errlen, KP_EINVAL, "unknown option '%s' (see --help)", flag);
    }
    return KP_OK;
}

static bool is_switch(struct kp_bench_config *cfg, const char *a)
{
    if (strcmp(a, "--json") == 0)
        cfg->json = true;
    else if (strcmp(a, "--quiet") == 0 || strcmp(a, "-q") == 0)
        cfg->quiet = true;
    else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)
        cfg->help = true;
    else if (strcmp(a, "--version") == 0)
        cfg->version = true;
    else
        return false;
    return true;
}

/* Rules that involve more than one flag. */
static int check_combination(struct kp_bench_config *cfg, const struct flags_seen *seen,
                             char *errmsg, size_t errlen)
{
    if (seen->duration && seen->requests)
        return fail(errmsg, errlen, KP_EINVAL,
                    "give --duration or --requests, not both (a run ends at one or the other)");
    if (cfg->body && cfg->mix_set)
        return fail(errmsg, errlen, KP_EINVAL,
                    "give --body or --mix, not both (--body sends one request to --url; --mix "
                    "sends the built-in requests)");
    cfg->mode = seen->rate ? KP_BENCH_OPEN_LOOP : KP_BENCH_CLOSED_LOOP;
    if (!seen->connections)
        cfg->connections = seen->rate ? DEFAULT_POOL_CONNECTIONS : DEFAULT_CLOSED_CONNECTIONS;
    if (!seen->duration && !seen->requests)
        cfg->duration_s = DEFAULT_DURATION_S;
    if (cfg->threads > cfg->connections)
        return fail(errmsg, errlen, KP_EINVAL,
                    "--threads %u is more than --connections %u: every thread needs a "
                    "connection",
                    cfg->threads, cfg->connections);
    if (cfg->mode == KP_BENCH_OPEN_LOOP && cfg->requests && cfg->requests < cfg->threads)
        return fail(errmsg, errlen, KP_EINVAL, "--requests %llu is fewer than --threads %u",
                    (unsigned long long)cfg->requests, cfg->threads);
    if (cfg->method == NULL)
        cfg->method = "POST";
    return KP_OK;
}

int kp_bench_args_parse(struct kp_bench_config *cfg, int argc, char **argv, char *errmsg,
                        size_t errlen)
{
    struct flags_seen seen = {false, false, false, false};
    set_defaults(cfg);
    errmsg[0] = '\0';
    for (int i = 1; i < argc; i++) {
        char *a = argv[i];
        if (is_switch(cfg, a))
            continue;
        if (strncmp(a, "-", 1) != 0)
            return fail(errmsg, errlen, KP_EINVAL, "unexpected argument '%s' (see --help)", a);
        /* Both "--flag value" and "--flag=value". */
        char flag[64];
        const char *v;
        const char *eq = strchr(a, '=');
        if (eq && strncmp(a, "--", 2) == 0 && (size_t)(eq - a) < sizeof(flag)) {
            memcpy(flag, a, (size_t)(eq - a));
            flag[eq - a] = '\0';
            v = eq + 1;
        } else {
            snprintf(flag, sizeof(flag), "%s", a);
            if (i + 1 >= argc)
                return fail(errmsg, errlen, KP_EINVAL, "%s needs a value (see --help)", a);
            v = argv[++i];
        }
        int rv = apply_flag(cfg, &seen, flag, v, errmsg, errlen);
        if (rv != KP_OK)
            return rv;
    }
    if (cfg->help || cfg->version)
        return KP_OK;
    int rv = kp_bench_url_parse(cfg->url_text, &cfg->url, errmsg, errlen);
    if (rv != KP_OK)
        return rv;
    return check_combination(cfg, &seen, errmsg, errlen);
}

void kp_bench_config_free(struct kp_bench_config *cfg)
{
    kp_free(cfg->body);
    cfg->body = NULL;
    for (unsigned i = 0; i < cfg->n_reqs; i++)
        kp_free(cfg->reqs[i].bytes);
    cfg->n_reqs = 0;
}

void kp_bench_usage(FILE *out)
{
    fputs(
        "usage: keyplane-bench --url URL [--rate R | --connections C] [--duration S]\n"
        "                      [--body FILE] [--header 'K: V'] [--json] [options]\n"
        "\n"
        "Modes:\n"
        "  --rate R            open loop: R requests per second on a fixed schedule; latency\n"
        "                      counts from each request's scheduled time\n"
        "  --connections C     closed loop: C connections, each sends when the last answer\n"
        "                      ended (default 16); with --rate, the connection pool (default 64)\n"
        "  --threads T         generator threads (default 1)\n"
        "Length:\n"
        "  --duration S        measure for S (10, 10s, 500ms, 2m; default 10s)\n"
        "  --requests N        measure N requests instead\n"
        "  --warmup S          run S first without measuring (default 0)\n"
        "  --timeout S         a request without a full answer after S fails (default 10s)\n"
        "Requests:\n"
        "  --body FILE         POST FILE's bytes to URL (Content-Type: application/json)\n"
        "  --mix K=W,...       built-in requests by weight; kinds: chat_small, chat_large,\n"
        "                      chat_stream, chat_large_stream, embeddings (paths under URL's\n"
        "                      /v1 prefix). Default without --body: chat_small=1\n"
        "  --method M          request method (default POST)\n"
        "  --header 'K: V'     add a header (repeatable): X-Tenant, X-Project, ...\n"
        "  --token T           add 'Authorization: Bearer T'\n"
        "  --cacert FILE       https: verify the server against this CA (PEM) rather than\n"
        "                      the system's; connections count once their handshake is done\n"
        "  --model NAME        model in the built-in chat bodies (default gpt-4o-mini)\n"
        "  --embedding-model NAME  (default text-embedding-3-small)\n"
        "Output:\n"
        "  --json              JSON on stdout instead of the table\n"
        "  --quiet             no progress line on stderr\n"
        "  --progress S        progress every S (default 1s; 0: off)\n"
        "Exit status: 0 done, 1 bad arguments, 2 the target failed (unreachable, or no\n"
        "request succeeded).\n",
        out);
}

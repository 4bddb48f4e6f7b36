/* `usage`, `usage events`, `usage export` and `reconcile`: metered usage
 * from GET /admin/v1/usage and /admin/v1/usage/events (docs/usage-api.md),
 * and a vendor's cost export compared with it (docs/reconcile.md).
 *
 * usage turns its options into the query's parameters, checking dimension
 * names here so that a typo is a usage error before anything is sent, and
 * prints the rows with a TOTAL row under them. usage events prints the
 * events as JSON lines. usage export downloads CSV one chunk of the range at
 * a time (a day, a week or a month of buckets per request, by granularity),
 * checks each answer is CSV with the same header, writes the header once
 * and every chunk's records to FILE.tmp, and renames it to FILE when the
 * last chunk is in; a failure leaves FILE as it was. reconcile reads the
 * export file (meter/reconcile.c does the parsing and the comparison), asks
 * for the same days per model (and project or key) filtered to the
 * vendor's providers, and exits 1 when a row differs by more than the
 * threshold.
 *
 * What fails: bad options or files are exit 2 before anything is sent; a
 * refusal is exit 1 with the server's message (and advice for too_many_rows);
 * an unreachable server is exit 3; an answer that is not what the contract
 * says (not JSON, not CSV, a header that changed between chunks) is exit 1. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "clusterctl.h"
#include "meter/meter.h"

#define DAY_MS ((int64_t)86400000)

enum {
    EVENTS_MAX_LIMIT = 10000,
    RECONCILE_CHUNK_DAYS = 31,
    RECONCILE_MAX_DAYS = 400,
};
#define EXPORT_FILE_MAX ((size_t)256 << 20)

static int usage_events(struct kp_ctl *ctl, int argc, char **argv);
static int usage_export(struct kp_ctl *ctl, int argc, char **argv);

static const char query_synopsis[] =
    "[--from T] [--to T] [--granularity minute|hour|day|total] [--group-by DIM,...] "
    "[--filter DIM:VALUE]...";

static const struct kp_ctl_command usage_commands[] = {
    {"events",
     "[--request-id ID] [--key K] [--tenant T] [--project P] [--model M] [--error-class C] "
     "[--kind app|canary] [--trace-id HEX] [--from T] [--to T] [--limit N]",
     "search the raw usage events; prints one JSON object per line", usage_events, false},
    {"export",
     "--from T --to T [--granularity G] [--group-by DIM,...] [--filter DIM:VALUE]... "
     "[--format csv] [--chunk DURATION] [--quiet] -o FILE|-",
     "download usage as CSV, one request per chunk of the range, into FILE", usage_export, false},
};

/* The dimensions in the order rows carry them (docs/usage-api.md). */
static const char *const dimensions[] = {"tenant", "project", "feature",      "provider",
                                         "model",  "key",     "status_class", "kind"};
static const char *const dimension_headers[] = {"TENANT", "PROJECT", "FEATURE",      "PROVIDER",
                                                "MODEL",  "KEY",     "STATUS_CLASS", "KIND"};
#define N_DIMENSIONS (sizeof(dimensions) / sizeof(dimensions[0]))
enum { DIM_PROJECT = 1, DIM_MODEL = 4, DIM_KEY = 5 };

static int dimension_index(const char *name, size_t len)
{
    for (size_t i = 0; i < N_DIMENSIONS; i++) {
        if (strlen(dimensions[i]) == len && strncmp(dimensions[i], name, len) == 0)
            return (int)i;
    }
    return -1;
}

static int out_of_memory(struct kp_ctl *ctl)
{
    kp_ctl__error(ctl, "out of memory");
    return KP_CTL_EXIT_NO;
}

/* --- the usage query ------------------------------------------------------- */

struct query_args {
    const char *from, *to, *granularity;
    json_t *group_by; /* --group-by values, each a comma-separated list */
    json_t *filters;  /* --filter values */
    /* Parsed. */
    int64_t from_ms, to_ms;
    bool has_from, has_to;
    bool grouped[N_DIMENSIONS];
};

static int check_granularity(struct kp_ctl *ctl, const char *g)
{
    if (g == NULL || strcmp(g, "minute") == 0 || strcmp(g, "hour") == 0 || strcmp(g, "day") == 0 ||
        strcmp(g, "total") == 0)
        return KP_CTL_EXIT_OK;
    kp_ctl__usage_error(ctl, "%s: --granularity must be minute, hour, day or total, not '%s'",
                        ctl->command, g);
    return KP_CTL_EXIT_USAGE;
}

static int unknown_dimension(struct kp_ctl *ctl, const char *what, const char *name, size_t len)
{
    kp_ctl__usage_error(ctl,
                        "%s: %s: unknown dimension '%.*s'; one of: tenant, project, feature, "
                        "provider, model, key, status_class, kind",
                        ctl->command, what, (int)len, name);
    return KP_CTL_EXIT_USAGE;
}

/* Checks and parses the options of a usage query. */
static int parse_query(struct kp_ctl *ctl, struct query_args *q)
{
    size_t i;
    json_t *item;

    if (check_granularity(ctl, q->granularity) != KP_CTL_EXIT_OK)
        return KP_CTL_EXIT_USAGE;
    if ((q->has_from = q->from != NULL) &&
        kp_ctl__parse_time(ctl, "--from", q->from, &q->from_ms) != KP_CTL_EXIT_OK)
        return KP_CTL_EXIT_USAGE;
    if ((q->has_to = q->to != NULL) &&
        kp_ctl__parse_time(ctl, "--to", q->to, &q->to_ms) != KP_CTL_EXIT_OK)
        return KP_CTL_EXIT_USAGE;
    if (q->has_from && q->has_to && q->to_ms <= q->from_ms) {
        kp_ctl__usage_error(ctl, "%s: --to must be after --from", ctl->command);
        return KP_CTL_EXIT_USAGE;
    }
    json_array_foreach(q->group_by, i, item)
    {
        const char *s = json_string_value(item);
        while (*s != '\0') {
            size_t n = strcspn(s, ",");
            int d = dimension_index(s, n);
            if (d < 0)
                return unknown_dimension(ctl, "--group-by", s, n);
            q->grouped[d] = true;
            s += n + (s[n] == ',');
        }
    }
    json_array_foreach(q->filters, i, item)
    {
        const char *s = json_string_value(item), *colon = strchr(s, ':');
        if (colon == NULL) {
            kp_ctl__usage_error(ctl, "%s: --filter takes DIM:VALUE, not '%s'", ctl->command, s);
            return KP_CTL_EXIT_USAGE;
        }
        if (dimension_index(s, (size_t)(colon - s)) < 0)
            return unknown_dimension(ctl, "--filter", s, (size_t)(colon - s));
    }
    return KP_CTL_EXIT_OK;
}

static int query_add_ms(struct kp_buf *path, const char *name, int64_t ms)
{
    char num[32];
    snprintf(num, sizeof(num), "%lld", (long long)ms);
    return kp_ctl__query_add(path, name, num);
}

/* "/admin/v1/usage?..." for @q over [from_ms, to_ms) (each only when
 * given), in @format when not NULL. */
static int build_query(const struct query_args *q, bool has_from, int64_t from_ms, bool has_to,
                       int64_t to_ms, const char *format, struct kp_buf *path)
{
    struct kp_buf dims;
    size_t i;
    json_t *item;
    int rc = 0;

    path->len = 0;
    kp_buf_init(&dims);
    rc |= kp_buf_append_lit(path, "/admin/v1/usage");
    if (has_from)
        rc |= query_add_ms(path, "from", from_ms);
    if (has_to)
        rc |= query_add_ms(path, "to", to_ms);
    if (q->granularity != NULL)
        rc |= kp_ctl__query_add(path, "granularity", q->granularity);
    for (i = 0; i < N_DIMENSIONS; i++) {
        if (q->grouped[i])
            rc |= kp_buf_appendf(&dims, "%s%s", dims.len ? "," : "", dimensions[i]);
    }
    if (dims.len > 0)
        rc |= kp_ctl__query_add(path, "group_by", dims.data);
    json_array_foreach(q->filters, i, item)
    {
        rc |= kp_ctl__query_add(path, "filter", json_string_value(item));
    }
    if (format != NULL)
        rc |= kp_ctl__query_add(path, "format", format);
    kp_buf_free(&dims);
    return rc == 0 ? KP_CTL_EXIT_OK : KP_CTL_EXIT_NO;
}

/* GETs @path; KP_CTL_EXIT_OK with @resp holding a 2xx answer (the caller
 * frees it), else the exit code, the refusal printed. */
static int usage_request(struct kp_ctl *ctl, const char *path, struct kp_ctl_response *resp)
{
    json_t *body;
    const char *code;
    int rc;

    if (kp_ctl__request(ctl, "GET", path, NULL, 0, NULL, resp) != 0)
        return kp_ctl__unreachable(ctl);
    if (resp->status >= 200 && resp->status <= 299)
        return KP_CTL_EXIT_OK;
    rc = kp_ctl__refused(ctl, path, resp);
    body = kp_ctl__response_json(resp);
    code = json_string_value(json_object_get(json_object_get(body, "error"), "code"));
    if (code != NULL && strcmp(code, "too_many_rows") == 0)
        fprintf(stderr,
                "%s: too many rows for one answer: narrow the range, use a coarser "
                "--granularity or group by less%s\n",
                ctl->prog,
                strcmp(ctl->command, "usage export") == 0 ? ", or a smaller --chunk" : "");
    json_decref(body);
    kp_ctl__response_free(resp);
    return rc;
}

/* usage_request() for a JSON answer. */
static int usage_json(struct kp_ctl *ctl, const char *path, json_t **answer)
{
    struct kp_ctl_response resp;
    int rc = usage_request(ctl, path, &resp);

    *answer = NULL;
    if (rc != KP_CTL_EXIT_OK)
        return rc;
    *answer = kp_ctl__response_json(&resp); /* json_is_object() evaluates twice */
    if (!json_is_object(*answer)) {
        kp_ctl__error(ctl, "GET %s%s: the answer (%ld) is not a JSON object", ctl->server, path,
                      resp.status);
        json_decref(*answer);
        *answer = NULL;
        rc = KP_CTL_EXIT_NO;
    }
    kp_ctl__response_free(&resp);
    return rc;
}

/* Latencies in milliseconds with one decimal; null stays empty. */
static void cell_latency(struct kp_buf *out, const json_t *value, const json_t *row)
{
    (void)row;
    if (json_is_number(value))
        kp_buf_appendf(out, "%.1f", json_number_value(value));
}

/* The dimension columns are those the answer says it grouped by (the
 * contract's "group_by"), else those asked for. */
static void print_usage_table(const json_t *answer, const struct query_args *q)
{
    struct kp_ctl_column cols[N_DIMENSIONS + 8];
    const json_t *group_by = json_object_get(answer, "group_by");
    json_t *rows = json_copy(json_object_get(answer, "rows"));
    json_t *total = json_deep_copy(json_object_get(answer, "totals"));
    size_t n = 0;

    cols[n++] = (struct kp_ctl_column){"START", "start", NULL};
    for (size_t d = 0; d < N_DIMENSIONS; d++) {
        size_t i;
        json_t *g;
        bool grouped = !json_is_array(group_by) && q->grouped[d];
        json_array_foreach(group_by, i, g)
        {
            grouped |= json_is_string(g) && strcmp(json_string_value(g), dimensions[d]) == 0;
        }
        if (grouped)
            cols[n++] = (struct kp_ctl_column){dimension_headers[d], dimensions[d], NULL};
    }
    cols[n++] = (struct kp_ctl_column){"REQUESTS", "requests", NULL};
    cols[n++] = (struct kp_ctl_column){"ERRORS", "errors", NULL};
    cols[n++] = (struct kp_ctl_column){"TOKENS_IN", "tokens_in", NULL};
    cols[n++] = (struct kp_ctl_column){"TOKENS_OUT", "tokens_out", NULL};
    cols[n++] = (struct kp_ctl_column){"COST_USD", "cost_nanousd", kp_ctl__cell_usd};
    cols[n++] = (struct kp_ctl_column){"P50_MS", "latency_ms.p50", cell_latency};
    cols[n++] = (struct kp_ctl_column){"P95_MS", "latency_ms.p95", cell_latency};
    if (rows == NULL)
        rows = json_array();
    if (json_is_object(total)) {
        json_object_set_new(total, "start", json_string("TOTAL"));
        json_array_append(rows, total);
    }
    kp_ctl__print_table(cols, n, rows);
    json_decref(total);
    json_decref(rows);
}

int kp_ctl__cmd_usage(struct kp_ctl *ctl, int argc, char **argv)
{
    struct query_args q;
    const struct kp_ctl_flag flags[] = {
        {"from", 0, KP_CTL_FLAG_VALUE, &q.from},
        {"to", 0, KP_CTL_FLAG_VALUE, &q.to},
        {"granularity", 0, KP_CTL_FLAG_VALUE, &q.granularity},
        {"group-by", 0, KP_CTL_FLAG_LIST, &q.group_by},
        {"filter", 0, KP_CTL_FLAG_LIST, &q.filters},
    };
    struct kp_buf path;
    json_t *answer = NULL;
    int first, rc;

    if (argc >= 2 && (strcmp(argv[1], "events") == 0 || strcmp(argv[1], "export") == 0))
        return kp_ctl__dispatch(ctl, "usage", usage_commands, 2, argc - 1, argv + 1);
    if (kp_ctl__wants_help(argc, argv)) {
        printf("usage: %s [options] usage %s\n\n"
               "Metered usage per bucket (default: per day over the last 24 hours), with a TOTAL\n"
               "row. DIM is tenant, project, feature, provider, model, key, status_class or "
               "kind;\n"
               "T is 2026-01-02, 2026-01-02T03:04:05Z, a duration ago (7d) or Unix ms.\n\n",
               ctl->prog, query_synopsis);
        kp_ctl__print_group_usage(stdout, ctl->prog, "usage", usage_commands, 2);
        return KP_CTL_EXIT_OK;
    }
    memset(&q, 0, sizeof(q));
    kp_buf_init(&path);
    rc = kp_ctl__parse(ctl, argc, argv, flags, sizeof(flags) / sizeof(flags[0]), &first);
    if (rc == KP_CTL_EXIT_OK && first < argc) {
        kp_ctl__usage_error(ctl, "usage: unknown subcommand or argument '%s'; usage: usage %s",
                            argv[first], query_synopsis);
        rc = KP_CTL_EXIT_USAGE;
    }
    if (rc == KP_CTL_EXIT_OK)
        rc = parse_query(ctl, &q);
    if (rc == KP_CTL_EXIT_OK &&
        build_query(&q, q.has_from, q.from_ms, q.has_to, q.to_ms, NULL, &path) != KP_CTL_EXIT_OK)
        rc = out_of_memory(ctl);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__resolve(ctl);
    if (rc == KP_CTL_EXIT_OK)
        rc = usage_json(ctl, path.data, &answer);
    if (rc == KP_CTL_EXIT_OK && ctl->output != KP_CTL_OUTPUT_TABLE)
        kp_ctl__print_doc(ctl, answer);
    else if (rc == KP_CTL_EXIT_OK && json_array_size(json_object_get(answer, "rows")) == 0)
        fprintf(stderr, "%s: no usage in that range\n", ctl->prog);
    else if (rc == KP_CTL_EXIT_OK)
        print_usage_table(answer, &q);
    json_decref(answer);
    json_decref(q.group_by);
    json_decref(q.filters);
    kp_buf_free(&path);
    return rc;
}

/* --- usage events ------------------------------------------------------------ */

struct events_args {
    const char *text[8]; /* request-id, key, tenant, project, model, error-class, kind,
                            trace-id */
    const char *from, *to, *limit;
};

static const char *const event_params[] = {"request_id", "key",         "tenant", "project",
                                           "model",      "error_class", "kind",   "trace_id"};
#define N_EVENT_PARAMS (sizeof(event_params) / sizeof(event_params[0]))

static int events_query(struct kp_ctl *ctl, const struct events_args *a, struct kp_buf *path)
{
    int64_t ms;
    uint64_t limit;
    int rc = kp_buf_append_lit(path, "/admin/v1/usage/events");

    for (size_t i = 0; i < N_EVENT_PARAMS; i++) {
        if (a->text[i] != NULL)
            rc |= kp_ctl__query_add(path, event_params[i], a->text[i]);
    }
    if (a->from != NULL) {
        if (kp_ctl__parse_time(ctl, "--from", a->from, &ms) != KP_CTL_EXIT_OK)
            return KP_CTL_EXIT_USAGE;
        rc |= query_add_ms(path, "from", ms);
    }
    if (a->to != NULL) {
        if (kp_ctl__parse_time(ctl, "--to", a->to, &ms) != KP_CTL_EXIT_OK)
            return KP_CTL_EXIT_USAGE;
        rc |= query_add_ms(path, "to", ms);
    }
    if (a->limit != NULL) {
        if (kp_ctl__parse_uint(ctl, "--limit", a->limit, EVENTS_MAX_LIMIT, &limit) !=
            KP_CTL_EXIT_OK)
            return KP_CTL_EXIT_USAGE;
        if (limit == 0) {
            kp_ctl__usage_error(ctl, "usage events: --limit must be 1 to %d", EVENTS_MAX_LIMIT);
            return KP_CTL_EXIT_USAGE;
        }
        rc |= kp_ctl__query_add(path, "limit", a->limit);
    }
    return rc == 0 ? KP_CTL_EXIT_OK : out_of_memory(ctl);
}

static void print_events(struct kp_ctl *ctl, const json_t *answer)
{
    const json_t *events = json_object_get(answer, "events"), *ev;
    size_t i;

    if (ctl->output != KP_CTL_OUTPUT_TABLE) {
        kp_ctl__print_doc(ctl, answer);
    } else {
        json_array_foreach(events, i, ev)
        {
            char *line = json_dumps(ev, JSON_COMPACT | JSON_ENCODE_ANY);
            if (line != NULL)
                puts(line);
            free(line);
        }
    }
    if (json_array_size(events) == 0)
        fprintf(stderr, "%s: no events match\n", ctl->prog);
    if (json_is_true(json_object_get(answer, "truncated")))
        fprintf(stderr,
                "%s: %zu events shown, more match: narrow --from/--to or the filters, or raise "
                "--limit (at most %d)\n",
                ctl->prog, json_array_size(events), EVENTS_MAX_LIMIT);
}

static int usage_events(struct kp_ctl *ctl, int argc, char **argv)
{
    struct events_args a;
    const struct kp_ctl_flag flags[] = {
        {"request-id", 0, KP_CTL_FLAG_VALUE, &a.text[0]},
        {"key", 0, KP_CTL_FLAG_VALUE, &a.text[1]},
        {"tenant", 0, KP_CTL_FLAG_VALUE, &a.text[2]},
        {"project", 0, KP_CTL_FLAG_VALUE, &a.text[3]},
        {"model", 0, KP_CTL_FLAG_VALUE, &a.text[4]},
        {"error-class", 0, KP_CTL_FLAG_VALUE, &a.text[5]},
        {"kind", 0, KP_CTL_FLAG_VALUE, &a.text[6]},
        {"trace-id", 0, KP_CTL_FLAG_VALUE, &a.text[7]},
        {"from", 0, KP_CTL_FLAG_VALUE, &a.from},
        {"to", 0, KP_CTL_FLAG_VALUE, &a.to},
        {"limit", 0, KP_CTL_FLAG_VALUE, &a.limit},
    };
    struct kp_buf path;
    json_t *answer = NULL;
    int first, rc;

    memset(&a, 0, sizeof(a));
    kp_buf_init(&path);
    rc = kp_ctl__parse(ctl, argc, argv, flags, sizeof(flags) / sizeof(flags[0]), &first);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__positionals(ctl, argc - first, 0, 0, usage_commands[0].synopsis, false);
    if (rc == KP_CTL_EXIT_OK)
        rc = events_query(ctl, &a, &path);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__resolve(ctl);
    if (rc == KP_CTL_EXIT_OK)
        rc = usage_json(ctl, path.data, &answer);
    if (rc == KP_CTL_EXIT_OK)
        print_events(ctl, answer);
    json_decref(answer);
    kp_buf_free(&path);
    return rc;
}

/* --- usage export -------------------------------------------------------------- */

struct export_args {
    struct query_args q;
    const char *format, *file, *chunk;
    bool quiet;
    /* Derived. */
    int64_t chunk_ms; /* 0: one request */
    size_t n_chunks;
    bool to_stdout, bar;
    FILE *out;
    char *tmp;            /* FILE.tmp, NULL for stdout */
    struct kp_buf header; /* the first chunk's header record, as sent */
    uint64_t rows;
};

static int64_t floor_div(int64_t a, int64_t b)
{
    return a / b - (a % b != 0 && (a < 0) != (b < 0));
}

/* The end of the chunk starting at @from: the next multiple of chunk_ms
 * (UTC-aligned, so no bucket is split between two requests), or the end. */
static int64_t chunk_end(const struct export_args *a, int64_t from)
{
    if (a->chunk_ms == 0)
        return a->q.to_ms;
    int64_t next = (floor_div(from, a->chunk_ms) + 1) * a->chunk_ms;
    return next < a->q.to_ms ? next : a->q.to_ms;
}

static int64_t bucket_ms(const char *granularity)
{
    if (granularity == NULL || strcmp(granularity, "day") == 0)
        return DAY_MS;
    if (strcmp(granularity, "hour") == 0)
        return 3600000;
    if (strcmp(granularity, "minute") == 0)
        return 60000;
    return 0; /* total */
}

static int parse_export(struct kp_ctl *ctl, struct export_args *a)
{
    int64_t bucket = bucket_ms(a->q.granularity);
    uint64_t seconds;

    if (a->q.from == NULL || a->q.to == NULL || a->file == NULL) {
        kp_ctl__usage_error(ctl, "usage export: --from, --to and -o FILE are required");
        return KP_CTL_EXIT_USAGE;
    }
    if (a->format != NULL && strcmp(a->format, "csv") != 0) {
        kp_ctl__usage_error(ctl,
                            "usage export: --format must be csv, not '%s' (for JSON use "
                            "clusterctl usage -o json)",
                            a->format);
        return KP_CTL_EXIT_USAGE;
    }
    if (parse_query(ctl, &a->q) != KP_CTL_EXIT_OK)
        return KP_CTL_EXIT_USAGE;
    /* A day of minutes, a week of hours, 30 days of days: at most 1440,
     * 168 or 30 buckets per group and request. */
    a->chunk_ms = bucket == 60000 ? DAY_MS : bucket == 3600000 ? 7 * DAY_MS : 30 * DAY_MS;
    if (bucket == 0)
        a->chunk_ms = 0;
    if (a->chunk != NULL) {
        if (kp_ctl__parse_duration(ctl, "--chunk", a->chunk, &seconds) != KP_CTL_EXIT_OK)
            return KP_CTL_EXIT_USAGE;
        if (bucket == 0 || seconds == 0 || seconds > 400 * 86400 ||
            (int64_t)seconds * 1000 % bucket != 0) {
            kp_ctl__usage_error(ctl,
                                "usage export: --chunk must be a whole number of %ss up to 400 "
                                "days%s",
                                a->q.granularity ? a->q.granularity : "day",
                                bucket == 0 ? " (granularity total is one request)" : "");
            return KP_CTL_EXIT_USAGE;
        }
        a->chunk_ms = (int64_t)seconds * 1000;
    }
    for (int64_t t = a->q.from_ms; t < a->q.to_ms; t = chunk_end(a, t))
        a->n_chunks++;
    a->to_stdout = strcmp(a->file, "-") == 0;
    /* A bar on the terminal, unless the CSV itself goes to that terminal. */
    a->bar = !a->quiet && isatty(STDERR_FILENO) && !(a->to_stdout && isatty(STDOUT_FILENO));
    return KP_CTL_EXIT_OK;
}

static int open_output(struct kp_ctl *ctl, struct export_args *a)
{
    size_t n;
    int fd;

    if (a->to_stdout) {
        a->out = stdout;
        return KP_CTL_EXIT_OK;
    }
    n = strlen(a->file) + 5;
    if ((a->tmp = kp_malloc(n)) == NULL)
        return out_of_memory(ctl);
    snprintf(a->tmp, n, "%s.tmp", a->file);
    fd = open(a->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0 || (a->out = fdopen(fd, "w")) == NULL) {
        kp_ctl__usage_error(ctl, "usage export: cannot write %s: %s", a->tmp, strerror(errno));
        if (fd >= 0) {
            close(fd);
            unlink(a->tmp);
        }
        kp_free(a->tmp);
        a->tmp = NULL;
        return KP_CTL_EXIT_USAGE;
    }
    return KP_CTL_EXIT_OK;
}

/* Closes the output: on success the temporary file is made durable and
 * renamed over FILE; otherwise it is removed. */
static int close_output(struct kp_ctl *ctl, struct export_args *a, int rc)
{
    if (a->out == NULL)
        return rc;
    if (a->to_stdout) {
        if (fflush(stdout) != 0 && rc == KP_CTL_EXIT_OK) {
            kp_ctl__error(ctl, "usage export: cannot write to stdout: %s", strerror(errno));
            rc = KP_CTL_EXIT_NO;
        }
        return rc;
    }
    if (rc == KP_CTL_EXIT_OK &&
        (fflush(a->out) != 0 || fsync(fileno(a->out)) != 0 || ferror(a->out))) {
        kp_ctl__error(ctl, "usage export: cannot write %s: %s", a->tmp, strerror(errno));
        rc = KP_CTL_EXIT_NO;
    }
    if (fclose(a->out) != 0 && rc == KP_CTL_EXIT_OK) {
        kp_ctl__error(ctl, "usage export: cannot write %s: %s", a->tmp, strerror(errno));
        rc = KP_CTL_EXIT_NO;
    }
    if (rc == KP_CTL_EXIT_OK && rename(a->tmp, a->file) != 0) {
        kp_ctl__error(ctl, "usage export: cannot rename %s to %s: %s", a->tmp, a->file,
                      strerror(errno));
        rc = KP_CTL_EXIT_NO;
    }
    if (rc != KP_CTL_EXIT_OK)
        unlink(a->tmp);
    return rc;
}

static void format_time(int64_t ms, char *out, size_t len)
{
    kp_format_time_ms(ms, out, len);
    char *frac = strstr(out, ".000Z");
    if (frac != NULL)
        memcpy(frac, "Z", 2);
}

static void progress(struct kp_ctl *ctl, const struct export_args *a, size_t done, int64_t from,
                     int64_t to, size_t rows)
{
    enum { WIDTH = 30 };
    char f[40], t[40], bar[WIDTH + 1];

    if (a->quiet)
        return;
    if (!a->bar) {
        format_time(from, f, sizeof(f));
        format_time(to, t, sizeof(t));
        fprintf(stderr, "%s: usage export: chunk %zu/%zu %s..%s: %zu row%s\n", ctl->prog, done,
                a->n_chunks, f, t, rows, rows == 1 ? "" : "s");
        return;
    }
    size_t filled = a->n_chunks ? done * WIDTH / a->n_chunks : WIDTH;
    for (size_t i = 0; i < WIDTH; i++)
        bar[i] = i < filled ? '#' : '.';
    bar[WIDTH] = '\0';
    format_time(from, f, sizeof(f));
    fprintf(stderr, "\r[%s] %zu/%zu chunks, %llu rows, at %s", bar, done, a->n_chunks,
            (unsigned long long)a->rows, f);
    if (done == a->n_chunks)
        fputc('\n', stderr);
    fflush(stderr);
}

/* Checks one chunk's CSV answer and appends its records (and, the first
 * time, its header) to the output; every record ends with a line end. *rows
 * gets the number of records. */
static int write_chunk(struct kp_ctl *ctl, struct export_args *a, const char *path,
                       const struct kp_buf *body, size_t *rows)
{
    struct kp_csv_reader r;
    size_t header_end, header_len;
    int rc = KP_CTL_EXIT_OK;

    *rows = 0;
    kp_csv_reader_init(&r, body->data, body->len);
    if (!kp_csv_next(&r) && r.err == KP_OK) {
        kp_csv_reader_close(&r);
        return KP_CTL_EXIT_OK; /* an empty answer: no header, no rows */
    }
    header_end = r.pos;
    while (r.err == KP_OK && kp_csv_next(&r))
        (*rows)++;
    /* The header as compared between chunks: without its line end. */
    header_len = header_end;
    while (header_len > 0 && strchr("\r\n", body->data[header_len - 1]) != NULL)
        header_len--;
    if (r.err != KP_OK) {
        kp_ctl__error(ctl, "GET %s%s: the answer is not valid CSV: %s", ctl->server, path,
                      r.errmsg);
        rc = KP_CTL_EXIT_NO;
    } else if (a->header.len == 0) {
        if (kp_buf_append(&a->header, body->data, header_len) != 0)
            rc = out_of_memory(ctl);
        else if (fwrite(body->data, 1, header_len, a->out) != header_len ||
                 fwrite("\r\n", 1, 2, a->out) != 2)
            rc = KP_CTL_EXIT_NO;
    } else if (a->header.len != header_len || memcmp(a->header.data, body->data, header_len) != 0) {
        kp_ctl__error(ctl, "GET %s%s: the CSV header differs from the first chunk's", ctl->server,
                      path);
        rc = KP_CTL_EXIT_NO;
    }
    kp_csv_reader_close(&r);
    if (rc == KP_CTL_EXIT_OK && body->len > header_end) {
        size_t n = body->len - header_end;
        bool line_end = strchr("\r\n", body->data[body->len - 1]) != NULL;
        if (fwrite(body->data + header_end, 1, n, a->out) != n ||
            (!line_end && fwrite("\r\n", 1, 2, a->out) != 2))
            rc = KP_CTL_EXIT_NO;
    }
    if (rc == KP_CTL_EXIT_NO && ferror(a->out))
        kp_ctl__error(ctl, "usage export: cannot write %s: %s", a->tmp ? a->tmp : "stdout",
                      strerror(errno));
    return rc;
}

static int export_chunk(struct kp_ctl *ctl, struct export_args *a, int64_t from, int64_t to,
                        struct kp_buf *path, size_t *rows)
{
    struct kp_ctl_response resp;
    int rc;

    if (build_query(&a->q, true, from, true, to, "csv", path) != KP_CTL_EXIT_OK)
        return out_of_memory(ctl);
    if ((rc = usage_request(ctl, path->data, &resp)) != KP_CTL_EXIT_OK)
        return rc;
    if (strncmp(resp.content_type, "text/csv", 8) != 0) {
        kp_ctl__error(ctl, "GET %s%s: the answer is not CSV (Content-Type '%.60s')", ctl->server,
                      path->data, resp.content_type);
        rc = KP_CTL_EXIT_NO;
    } else {
        rc = write_chunk(ctl, a, path->data, &resp.body, rows);
    }
    kp_ctl__response_free(&resp);
    return rc;
}

static int usage_export(struct kp_ctl *ctl, int argc, char **argv)
{
    struct export_args a;
    const struct kp_ctl_flag flags[] = {
        {"from", 0, KP_CTL_FLAG_VALUE, &a.q.from},
        {"to", 0, KP_CTL_FLAG_VALUE, &a.q.to},
        {"granularity", 0, KP_CTL_FLAG_VALUE, &a.q.granularity},
        {"group-by", 0, KP_CTL_FLAG_LIST, &a.q.group_by},
        {"filter", 0, KP_CTL_FLAG_LIST, &a.q.filters},
        {"format", 0, KP_CTL_FLAG_VALUE, &a.format},
        {"chunk", 0, KP_CTL_FLAG_VALUE, &a.chunk},
        {"quiet", 'q', KP_CTL_FLAG_BOOL, &a.quiet},
        /* Here -o and --output name the file: the answer is always CSV. */
        {"output", 'o', KP_CTL_FLAG_VALUE, &a.file},
    };
    struct kp_buf path;
    size_t done = 0, rows = 0;
    int first, rc;

    memset(&a, 0, sizeof(a));
    kp_buf_init(&path);
    kp_buf_init(&a.header);
    rc = kp_ctl__parse(ctl, argc, argv, flags, sizeof(flags) / sizeof(flags[0]), &first);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__positionals(ctl, argc - first, 0, 0, usage_commands[1].synopsis, false);
    if (rc == KP_CTL_EXIT_OK)
        rc = parse_export(ctl, &a);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__resolve(ctl);
    if (rc == KP_CTL_EXIT_OK)
        rc = open_output(ctl, &a);
    for (int64_t t = a.q.from_ms; rc == KP_CTL_EXIT_OK && t < a.q.to_ms; t = chunk_end(&a, t)) {
        rc = export_chunk(ctl, &a, t, chunk_end(&a, t), &path, &rows);
        a.rows += rows;
        if (rc == KP_CTL_EXIT_OK)
            progress(ctl, &a, ++done, t, chunk_end(&a, t), rows);
        else if (a.bar && done > 0)
            fputc('\n', stderr);
    }
    rc = close_output(ctl, &a, rc);
    if (rc == KP_CTL_EXIT_OK && !a.quiet)
        fprintf(stderr, "%s: usage export: %llu rows in %zu request%s written to %s\n", ctl->prog,
                (unsigned long long)a.rows, done, done == 1 ? "" : "s",
                a.to_stdout ? "stdout" : a.file);
    kp_free(a.tmp);
    kp_buf_free(&a.header);
    kp_buf_free(&path);
    json_decref(a.q.group_by);
    json_decref(a.q.filters);
    return rc;
}

/* --- reconcile ------------------------------------------------------------------- */

struct reconcile_args {
    const char *vendor, *file, *threshold, *min_diff, *from, *to, *by;
    json_t *providers; /* --provider values, or the registry's of the vendor's kind */
    bool exact_models, all;
    /* Derived. */
    struct kp_recon_options opt;
    enum kp_recon_by by_value;
    json_t *key_names; /* key id -> the name compared with the export's, by key */
};

static int parse_reconcile(struct kp_ctl *ctl, struct reconcile_args *a)
{
    if (a->vendor == NULL || a->file == NULL) {
        kp_ctl__usage_error(ctl, "reconcile: --vendor (%s) and --file EXPORT.csv are required",
                            KP_RECON_VENDORS);
        return KP_CTL_EXIT_USAGE;
    }
    /* The vendor's name is also the kind of its providers in the registry. */
    if (strcasecmp(a->vendor, "openai") == 0) {
        a->vendor = "openai";
    } else if (strcasecmp(a->vendor, "anthropic") == 0) {
        a->vendor = "anthropic";
    } else {
        kp_ctl__usage_error(ctl, "reconcile: --vendor must be one of %s, not '%s'",
                            KP_RECON_VENDORS, a->vendor);
        return KP_CTL_EXIT_USAGE;
    }
    kp_recon_options_init(&a->opt);
    a->opt.all = a->all;
    if (a->threshold != NULL &&
        kp_recon_parse_threshold(a->threshold, &a->opt.threshold_ppm) != KP_OK) {
        kp_ctl__usage_error(ctl,
                            "reconcile: --threshold must be a percentage such as 1%% or 0.5%%, "
                            "or a fraction such as 0.01, not '%s'",
                            a->threshold);
        return KP_CTL_EXIT_USAGE;
    }
    if (a->min_diff != NULL &&
        (kp_recon_parse_amount(a->min_diff, &a->opt.min_diff) != KP_OK || a->opt.min_diff < 0)) {
        kp_ctl__usage_error(ctl,
                            "reconcile: --min-diff must be an amount of dollars such as "
                            "0.01, not '%s'",
                            a->min_diff);
        return KP_CTL_EXIT_USAGE;
    }
    if (a->by != NULL && kp_recon_by_parse(a->by, &a->by_value) != KP_OK) {
        kp_ctl__usage_error(ctl, "reconcile: --by must be model, project or key, not '%s'", a->by);
        return KP_CTL_EXIT_USAGE;
    }
    return KP_CTL_EXIT_OK;
}

/* Reads the export (FILE, or stdin for "-") into the table's vendor side. */
static int read_export(struct kp_ctl *ctl, const struct reconcile_args *a, struct kp_recon_table *t)
{
    struct kp_buf text;
    char err[1024];
    int rc = KP_OK;

    kp_buf_init(&text);
    if (strcmp(a->file, "-") == 0) {
        char chunk[65536];
        size_t n;
        while (rc == KP_OK && (n = fread(chunk, 1, sizeof(chunk), stdin)) > 0) {
            if (text.len + n > EXPORT_FILE_MAX)
                rc = kp_errf(err, sizeof(err), KP_ETOOBIG, "larger than the %zu-byte limit",
                             EXPORT_FILE_MAX);
            else if (kp_buf_append(&text, chunk, n) != 0)
                rc = kp_errf(err, sizeof(err), KP_ENOMEM, "out of memory");
        }
        if (rc == KP_OK && ferror(stdin))
            rc = kp_errf(err, sizeof(err), KP_EIO, "%s", strerror(errno));
    } else {
        rc = kp_segment_file_read(a->file, EXPORT_FILE_MAX, &text, err, sizeof(err));
    }
    if (rc != KP_OK) {
        kp_ctl__usage_error(ctl, "reconcile: cannot read %s: %s", a->file, err);
        kp_buf_free(&text);
        return KP_CTL_EXIT_USAGE;
    }
    rc = kp_recon_parse_vendor(t, a->vendor, text.data, text.len, err, sizeof(err));
    kp_buf_free(&text);
    if (rc == KP_ENOMEM)
        return out_of_memory(ctl);
    if (rc != KP_OK) {
        /* "line 3: ..." becomes "export.csv:3: ...", as apply names lines. */
        if (strncmp(err, "line ", 5) == 0 && isdigit((unsigned char)err[5]))
            kp_ctl__error(ctl, "reconcile: %s:%s", a->file, err + 5);
        else
            kp_ctl__error(ctl, "reconcile: %s: %s", a->file, err);
        fprintf(stderr, "%s: docs/reconcile.md says which columns of the %s export are read\n",
                ctl->prog, a->vendor);
        return KP_CTL_EXIT_USAGE;
    }
    return KP_CTL_EXIT_OK;
}

/* The compared days: --from/--to rounded out to whole UTC days, each
 * defaulting to the export's first and last day. */
static int reconcile_range(struct kp_ctl *ctl, struct reconcile_args *a,
                           const struct kp_recon_table *t)
{
    int64_t ms;

    if ((a->from == NULL || a->to == NULL) && t->vendor_rows == 0) {
        kp_ctl__usage_error(ctl,
                            "reconcile: %s holds no cost rows: pass --from and --to to compare "
                            "it with the metered usage of those days",
                            a->file);
        return KP_CTL_EXIT_USAGE;
    }
    a->opt.from_day = t->first_day;
    a->opt.to_day = t->last_day + 1;
    if (a->from != NULL) {
        if (kp_ctl__parse_time(ctl, "--from", a->from, &ms) != KP_CTL_EXIT_OK)
            return KP_CTL_EXIT_USAGE;
        a->opt.from_day = kp_recon_day_of_ms(ms);
    }
    if (a->to != NULL) {
        if (kp_ctl__parse_time(ctl, "--to", a->to, &ms) != KP_CTL_EXIT_OK)
            return KP_CTL_EXIT_USAGE;
        a->opt.to_day = kp_recon_day_of_ms(ms - 1) + 1;
    }
    if (a->opt.to_day <= a->opt.from_day) {
        kp_ctl__usage_error(ctl, "reconcile: --to must be after --from");
        return KP_CTL_EXIT_USAGE;
    }
    if (a->opt.to_day - a->opt.from_day > RECONCILE_MAX_DAYS) {
        kp_ctl__usage_error(ctl,
                            "reconcile: the range spans %d days, more than %d: pass --from and "
                            "--to (or split the export)",
                            a->opt.to_day - a->opt.from_day, RECONCILE_MAX_DAYS);
        return KP_CTL_EXIT_USAGE;
    }
    return KP_CTL_EXIT_OK;
}

/* Every item of a registry list, following its "next" pages, into @items. */
static int list_registry(struct kp_ctl *ctl, const char *kind, json_t **items)
{
    char *after = NULL;
    int rc = KP_CTL_EXIT_OK;

    if ((*items = json_array()) == NULL)
        return out_of_memory(ctl);
    do {
        char *base = kp_ctl__path(kind, NULL);
        struct kp_buf path = {base, base ? strlen(base) : 0, base ? strlen(base) + 1 : 0};
        json_t *page = NULL;
        if (base == NULL || (after != NULL && kp_ctl__query_add(&path, "after", after) != 0))
            rc = out_of_memory(ctl);
        if (rc == KP_CTL_EXIT_OK)
            rc = kp_ctl__call(ctl, "GET", path.data, NULL, NULL, &page);
        if (rc == KP_CTL_EXIT_OK)
            json_array_extend(*items, json_object_get(page, "items"));
        kp_free(after);
        after = NULL;
        const char *next = json_string_value(json_object_get(page, "next"));
        if (rc == KP_CTL_EXIT_OK && next != NULL && (after = kp_strdup(next)) == NULL)
            rc = out_of_memory(ctl);
        json_decref(page);
        kp_buf_free(&path);
    } while (rc == KP_CTL_EXIT_OK && after != NULL);
    kp_free(after);
    return rc;
}

/* Without --provider: the registry's providers of the vendor's kind. */
static int find_providers(struct kp_ctl *ctl, struct reconcile_args *a)
{
    json_t *items = NULL, *p;
    size_t i;
    int rc;

    if (a->providers != NULL)
        return KP_CTL_EXIT_OK;
    if ((rc = list_registry(ctl, "providers", &items)) != KP_CTL_EXIT_OK) {
        json_decref(items);
        return rc;
    }
    a->providers = json_array();
    json_array_foreach(items, i, p)
    {
        const char *kind = json_string_value(json_object_get(p, "kind"));
        if (kind != NULL && strcmp(kind, a->vendor) == 0)
            json_array_append(a->providers, json_object_get(p, "id"));
    }
    json_decref(items);
    if (json_array_size(a->providers) == 0) {
        kp_ctl__usage_error(ctl,
                            "reconcile: no provider of kind %s in the registry (clusterctl get "
                            "providers): pass --provider ID",
                            a->vendor);
        return KP_CTL_EXIT_USAGE;
    }
    return KP_CTL_EXIT_OK;
}

/* By key: keyplane's key ids are compared as the registry key's name (its
 * id when it has none), which the operator sets to the vendor's key id. */
static int load_key_names(struct kp_ctl *ctl, struct reconcile_args *a)
{
    json_t *items = NULL, *k;
    size_t i;
    int rc;

    if (a->by_value != KP_RECON_BY_KEY)
        return KP_CTL_EXIT_OK;
    if ((rc = list_registry(ctl, "keys", &items)) != KP_CTL_EXIT_OK) {
        json_decref(items);
        return rc;
    }
    a->key_names = json_object();
    json_array_foreach(items, i, k)
    {
        const char *id = json_string_value(json_object_get(k, "id"));
        const char *name = json_string_value(json_object_get(k, "name"));
        if (id != NULL && name != NULL && name[0] != '\0')
            json_object_set_new(a->key_names, id, json_string(name));
    }
    json_decref(items);
    return KP_CTL_EXIT_OK;
}

static void rename_keys(const struct reconcile_args *a, json_t *answer)
{
    const json_t *row;
    size_t i;

    if (a->key_names == NULL)
        return;
    json_array_foreach(json_object_get(answer, "rows"), i, row)
    {
        const char *id = json_string_value(json_object_get(row, "key"));
        json_t *name = id != NULL ? json_object_get(a->key_names, id) : NULL;
        if (name != NULL)
            json_object_set((json_t *)row, "key", name);
    }
}

/* The metered side: day rows per model (and project or key) of the
 * providers, a month of days per request. */
static int fetch_metered(struct kp_ctl *ctl, const struct reconcile_args *a,
                         struct kp_recon_table *t)
{
    struct query_args q;
    struct kp_buf path;
    char err[256];
    int rc = KP_CTL_EXIT_OK;
    size_t i;
    json_t *p;

    memset(&q, 0, sizeof(q));
    kp_buf_init(&path);
    q.granularity = "day";
    q.grouped[DIM_MODEL] = true;
    q.grouped[DIM_PROJECT] = a->by_value == KP_RECON_BY_PROJECT;
    q.grouped[DIM_KEY] = a->by_value == KP_RECON_BY_KEY;
    if ((q.filters = json_array()) == NULL)
        return out_of_memory(ctl);
    json_array_foreach(a->providers, i, p)
    {
        char filter[300];
        snprintf(filter, sizeof(filter), "provider:%s", json_string_value(p));
        json_array_append_new(q.filters, json_string(filter));
    }
    for (int32_t d = a->opt.from_day; rc == KP_CTL_EXIT_OK && d < a->opt.to_day;
         d += RECONCILE_CHUNK_DAYS) {
        int32_t end =
            d + RECONCILE_CHUNK_DAYS < a->opt.to_day ? d + RECONCILE_CHUNK_DAYS : a->opt.to_day;
        json_t *answer = NULL;
        if (build_query(&q, true, d * DAY_MS, true, end * DAY_MS, NULL, &path) != KP_CTL_EXIT_OK)
            rc = out_of_memory(ctl);
        if (rc == KP_CTL_EXIT_OK)
            rc = usage_json(ctl, path.data, &answer);
        if (rc == KP_CTL_EXIT_OK) {
            rename_keys(a, answer);
            int mrc = kp_recon_add_metered_json(t, answer, err, sizeof(err));
            if (mrc == KP_ENOMEM) {
                rc = out_of_memory(ctl);
            } else if (mrc != KP_OK) {
                kp_ctl__error(ctl, "GET %s%s: %s", ctl->server, path.data, err);
                rc = KP_CTL_EXIT_NO;
            }
        }
        json_decref(answer);
    }
    json_decref(q.filters);
    kp_buf_free(&path);
    return rc;
}

static json_t *row_cells(const struct kp_recon_row *row)
{
    char day[16], vendor[40], metered[40], diff[40], rel[32];

    kp_recon_format_day(row->day, day, sizeof(day));
    kp_recon_format_usd(row->vendor, vendor, sizeof(vendor));
    kp_recon_format_usd(row->metered, metered, sizeof(metered));
    /* An amount the side does not have at all shows as "-". */
    if (row->side == KP_RECON_METERED_ONLY)
        snprintf(vendor, sizeof(vendor), "-");
    if (row->side == KP_RECON_VENDOR_ONLY)
        snprintf(metered, sizeof(metered), "-");
    kp_recon_format_usd(row->diff, diff, sizeof(diff));
    if (row->rel_ppm >= 0)
        kp_recon_format_ppm(row->rel_ppm, rel, sizeof(rel));
    else
        snprintf(rel, sizeof(rel), "-");
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s}", "day", day, "model", row->model,
                     "scope", row->scope, "vendor", vendor, "metered", metered, "diff", diff, "rel",
                     rel, "note",
                     row->side == KP_RECON_VENDOR_ONLY    ? "only in the export"
                     : row->side == KP_RECON_METERED_ONLY ? "only metered"
                     : row->differs                       ? "differs"
                                                          : "ok");
}

static void print_summary(const struct reconcile_args *a, const struct kp_recon_result *r)
{
    char from[16], last[16], threshold[32], vendor[40], metered[40], diff[40], rel[32];
    int64_t total_ppm = kp_recon_rel_ppm(r->vendor_total, r->metered_total);

    kp_recon_format_day(a->opt.from_day, from, sizeof(from));
    kp_recon_format_day(a->opt.to_day - 1, last, sizeof(last));
    kp_recon_format_ppm(a->opt.threshold_ppm, threshold, sizeof(threshold));
    kp_recon_format_usd(r->vendor_total, vendor, sizeof(vendor));
    kp_recon_format_usd(r->metered_total, metered, sizeof(metered));
    kp_recon_format_usd(r->vendor_total - r->metered_total, diff, sizeof(diff));
    if (total_ppm >= 0)
        kp_recon_format_ppm(total_ppm, rel, sizeof(rel));
    else
        snprintf(rel, sizeof(rel), "-");
    printf("%s %s..%s by %s: %zu compared, %zu differ by more than %s", a->vendor, from, last,
           kp_recon_by_name(a->by_value), r->compared, r->differing, threshold);
    if (r->vendor_only > 0 || r->metered_only > 0)
        printf(" (%zu only in the export, %zu only metered)", r->vendor_only, r->metered_only);
    printf("; export %s, metered %s, difference %s (%s)\n", vendor, metered, diff, rel);
    if (r->unattributed_rows > 0) {
        kp_recon_format_usd(r->unattributed, vendor, sizeof(vendor));
        printf("not compared: %s in %zu export rows that name no model (tools, sessions, use "
               "inside the vendor's platform)\n",
               vendor, r->unattributed_rows);
    }
    if (r->vendor_outside > 0)
        printf("not compared: %zu export rows outside %s..%s\n", r->vendor_outside, from, last);
}

static void print_reconciliation(struct kp_ctl *ctl, const struct reconcile_args *a,
                                 const struct kp_recon_table *t, const struct kp_recon_result *r)
{
    struct kp_ctl_column cols[8];
    size_t n = 0;
    json_t *rows;

    if (ctl->output != KP_CTL_OUTPUT_TABLE) {
        json_t *doc = kp_recon_result_to_json(t, &a->opt, r);
        if (doc == NULL) {
            out_of_memory(ctl);
            return;
        }
        json_object_set_new(doc, "file", json_string(a->file));
        json_object_set(doc, "providers", a->providers);
        kp_ctl__print_doc(ctl, doc);
        json_decref(doc);
        return;
    }
    cols[n++] = (struct kp_ctl_column){"DAY", "day", NULL};
    cols[n++] = (struct kp_ctl_column){"MODEL", "model", NULL};
    if (a->by_value != KP_RECON_BY_MODEL)
        cols[n++] = (struct kp_ctl_column){a->by_value == KP_RECON_BY_PROJECT ? "PROJECT" : "KEY",
                                           "scope", NULL};
    cols[n++] = (struct kp_ctl_column){"VENDOR_COST", "vendor", NULL};
    cols[n++] = (struct kp_ctl_column){"METERED_COST", "metered", NULL};
    cols[n++] = (struct kp_ctl_column){"DIFFERENCE", "diff", NULL};
    cols[n++] = (struct kp_ctl_column){"RELATIVE", "rel", NULL};
    cols[n++] = (struct kp_ctl_column){"NOTE", "note", NULL};
    if (r->n_rows > 0 && (rows = json_array()) != NULL) {
        for (size_t i = 0; i < r->n_rows; i++)
            json_array_append_new(rows, row_cells(&r->rows[i]));
        kp_ctl__print_table(cols, n, rows);
        json_decref(rows);
    }
    print_summary(a, r);
}

static const char reconcile_synopsis[] =
    "--vendor openai|anthropic --file EXPORT.csv [--threshold 1%] [--min-diff USD] [--from T] "
    "[--to T] [--by model|project|key] [--provider ID]... [--exact-models] [--all]";

static void reconcile_help(const struct kp_ctl *ctl)
{
    printf("usage: %s [options] reconcile %s\n\n"
           "Compares a vendor's cost export (CSV) with the usage keyplane metered, per UTC day\n"
           "and model (and project or key with --by), and lists what differs by more than the\n"
           "threshold (default 1%%) or is on one side only. The days default to the export's;\n"
           "the providers to every provider of the vendor's kind. Columns read and matching:\n"
           "docs/reconcile.md.\n\n"
           "Exit codes: 0 no difference above the threshold, 1 some (or the server refused),\n"
           "2 bad arguments or a bad export file, 3 server unreachable.\n",
           ctl->prog, reconcile_synopsis);
}

int kp_ctl__cmd_reconcile(struct kp_ctl *ctl, int argc, char **argv)
{
    struct reconcile_args a;
    const struct kp_ctl_flag flags[] = {
        {"vendor", 0, KP_CTL_FLAG_VALUE, &a.vendor},
        {"file", 'f', KP_CTL_FLAG_VALUE, &a.file},
        {"threshold", 0, KP_CTL_FLAG_VALUE, &a.threshold},
        {"min-diff", 0, KP_CTL_FLAG_VALUE, &a.min_diff},
        {"from", 0, KP_CTL_FLAG_VALUE, &a.from},
        {"to", 0, KP_CTL_FLAG_VALUE, &a.to},
        {"by", 0, KP_CTL_FLAG_VALUE, &a.by},
        {"provider", 0, KP_CTL_FLAG_LIST, &a.providers},
        {"exact-models", 0, KP_CTL_FLAG_BOOL, &a.exact_models},
        {"all", 0, KP_CTL_FLAG_BOOL, &a.all},
    };
    struct kp_recon_table t;
    struct kp_recon_result r;
    int first, rc;

    if (kp_ctl__wants_help(argc, argv)) {
        reconcile_help(ctl);
        return KP_CTL_EXIT_OK;
    }
    memset(&a, 0, sizeof(a));
    memset(&r, 0, sizeof(r));
    rc = kp_ctl__parse(ctl, argc, argv, flags, sizeof(flags) / sizeof(flags[0]), &first);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__positionals(ctl, argc - first, 0, 0, reconcile_synopsis, false);
    if (rc == KP_CTL_EXIT_OK)
        rc = parse_reconcile(ctl, &a);
    kp_recon_init(&t, a.by_value, a.exact_models);
    if (rc == KP_CTL_EXIT_OK)
        rc = read_export(ctl, &a, &t);
    if (rc == KP_CTL_EXIT_OK)
        rc = reconcile_range(ctl, &a, &t);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__resolve(ctl);
    if (rc == KP_CTL_EXIT_OK)
        rc = find_providers(ctl, &a);
    if (rc == KP_CTL_EXIT_OK)
        rc = load_key_names(ctl, &a);
    if (rc == KP_CTL_EXIT_OK)
        rc = fetch_metered(ctl, &a, &t);
    if (rc == KP_CTL_EXIT_OK) {
        int crc = kp_recon_compare(&t, &a.opt, &r);
        if (crc == KP_OK) {
            print_reconciliation(ctl, &a, &t, &r);
            rc = r.differing == 0 ? KP_CTL_EXIT_OK : KP_CTL_EXIT_NO;
        } else {
            kp_ctl__error(ctl, "reconcile: %s",
                          crc == KP_ENOMEM ? "out of memory" : "the totals overflow int64");
            rc = KP_CTL_EXIT_NO;
        }
    }
    kp_recon_result_free(&r);
    kp_recon_close(&t);
    json_decref(a.providers);
    json_decref(a.key_names);
    return rc;
}

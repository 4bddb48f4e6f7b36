/* kpseg summary: a segment's header, state, size, frames, events, time range
 * and totals by (tenant, served model): requests, errors, tokens, cost.
 *
 * Totals are kept in a small open-addressing hash table keyed by tenant and
 * model and printed sorted. Every sum saturates instead of overflowing: the
 * file may be hostile, and a summary of it must still not invoke undefined
 * behaviour. A damaged file is summarised up to where it stops being valid
 * ("state: damaged"), with the error on stderr and exit code 1. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kpseg.h"
#include "meter/meter.h"

struct total {
    bool used;
    char tenant[KP_USAGE_STR_MAX + 1];
    char model[KP_USAGE_STR_MAX + 1];
    uint64_t requests, errors, tokens_in, tokens_out, tokens_cached;
    kp_nanousd cost;
};

struct totals {
    struct total all;
    struct total *slots;
    size_t cap, n;
};

static void add_u64(uint64_t *a, uint64_t b)
{
    if (__builtin_add_overflow(*a, b, a))
        *a = UINT64_MAX;
}

static void add_cost(kp_nanousd *a, kp_nanousd b)
{
    if (__builtin_add_overflow(*a, b, a))
        *a = b < 0 ? INT64_MIN : INT64_MAX;
}

static void total_add(struct total *t, const struct kp_usage_event *ev)
{
    add_u64(&t->requests, 1);
    add_u64(&t->errors, ev->error_class[0] != '\0');
    add_u64(&t->tokens_in, ev->tokens_in);
    add_u64(&t->tokens_out, ev->tokens_out);
    add_u64(&t->tokens_cached, ev->tokens_cached);
    add_cost(&t->cost, ev->cost);
}

static uint64_t key_hash(const char *tenant, const char *model)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const char *s = tenant; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    h = (h ^ 0xff) * 1099511628211ull; /* separator: 0xff never occurs in UTF-8 */
    for (const char *s = model; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

static struct total *slot_for(struct total *slots, size_t cap, const char *tenant,
                              const char *model)
{
    size_t i = key_hash(tenant, model) & (cap - 1);
    while (slots[i].used && (strcmp(slots[i].tenant, tenant) || strcmp(slots[i].model, model)))
        i = (i + 1) & (cap - 1);
    return &slots[i];
}

static bool totals_grow(struct totals *t)
{
    size_t cap = t->cap ? t->cap * 2 : 64;
    struct total *slots = kp_calloc(cap, sizeof(*slots));
    if (slots == NULL)
        return false;
    for (size_t i = 0; i < t->cap; i++) {
        if (t->slots[i].used)
            *slot_for(slots, cap, t->slots[i].tenant, t->slots[i].model) = t->slots[i];
    }
    kp_free(t->slots);
    t->slots = slots;
    t->cap = cap;
    return true;
}

static bool totals_add(struct totals *t, const struct kp_usage_event *ev)
{
    total_add(&t->all, ev);
    if (2 * (t->n + 1) > t->cap && !totals_grow(t))
        return false;
    struct total *s = slot_for(t->slots, t->cap, ev->tenant, ev->model_served);
    if (!s->used) {
        s->used = true;
        memcpy(s->tenant, ev->tenant, sizeof(s->tenant));
        memcpy(s->model, ev->model_served, sizeof(s->model));
        t->n++;
    }
    total_add(s, ev);
    return true;
}

static int total_cmp(const void *a, const void *b)
{
    const struct total *x = a, *y = b;
    int c = strcmp(x->tenant, y->tenant);
    return c ? c : strcmp(x->model, y->model);
}

/* Moves the used slots to the front, sorted; returns how many. */
static size_t totals_sort(struct totals *t)
{
    size_t n = 0;
    for (size_t i = 0; i < t->cap; i++) {
        if (t->slots[i].used)
            t->slots[n++] = t->slots[i];
    }
    if (n > 0)
        qsort(t->slots, n, sizeof(*t->slots), total_cmp);
    return n;
}

/* --- formatting ---------------------------------------------------------- */

/* "-1.500000000": exact, nine decimals. */
static void format_usd(kp_nanousd v, char *out, size_t len)
{
    uint64_t mag = v < 0 ? -(uint64_t)v : (uint64_t)v;
    snprintf(out, len, "%s%" PRIu64 ".%09" PRIu64, v < 0 ? "-" : "", mag / 1000000000u,
             mag % 1000000000u);
}

static void format_time(int64_t ms, char *out, size_t len)
{
    if (ms >= 0 && ms < 253402300800000) /* years 1970..9999 */
        kp_format_time_ms(ms, out, len);
    else
        snprintf(out, len, "%" PRId64 " ms", ms);
}

struct result {
    const char *path;
    size_t size;
    struct kp_segment_reader *r;
    struct totals *t;
    size_t rows;
};

static void print_text_header(const struct result *res)
{
    const struct kp_segment_reader *r = res->r;
    char created[40], first[40], last[40];
    format_time(r->header.created_ms, created, sizeof(created));
    format_time(r->min_time_ms, first, sizeof(first));
    format_time(r->max_time_ms, last, sizeof(last));
    printf("%s\n", res->path);
    printf("  version   %u\n  node      %s\n  sequence  %" PRIu64 "\n  created   %s\n",
           r->header.version, r->header.node, r->header.seq, created);
    if (r->err != KP_OK)
        printf("  state     damaged at offset %zu: %s\n", r->err_offset, r->errmsg);
    else
        printf("  state     %s\n", r->sealed ? "sealed" : "open");
    printf("  size      %zu bytes (%zu valid)\n", res->size, r->valid_len);
    printf("  frames    %" PRIu64 "\n  events    %" PRIu64 "\n", r->frames, r->events);
    if (r->events > 0)
        printf("  time      %s .. %s\n", first, last);
}

static void print_text_row(const char *tenant, const char *model, const struct total *t)
{
    char usd[48];
    format_usd(t->cost, usd, sizeof(usd));
    printf(
        "  %-16s %-24s %9" PRIu64 " %7" PRIu64 " %11" PRIu64 " %11" PRIu64 " %11" PRIu64 " %18s\n",
        tenant, model, t->requests, t->errors, t->tokens_in, t->tokens_out, t->tokens_cached, usd);
}

static void print_text(const struct result *res)
{
    print_text_header(res);
    printf("\n  %-16s %-24s %9s %7s %11s %11s %11s %18s\n", "TENANT", "MODEL", "REQUESTS", "ERRORS",
           "TOKENS_IN", "TOKENS_OUT", "CACHED", "COST_USD");
    for (size_t i = 0; i < res->rows; i++) {
        const struct total *t = &res->t->slots[i];
        print_text_row(t->tenant[0] ? t->tenant : "-", t->model[0] ? t->model : "-", t);
    }
    print_text_row("(all)", "", &res->t->all);
    putchar('\n');
}

static json_t *ju(uint64_t v)
{
    return json_integer(v > INT64_MAX ? INT64_MAX : (json_int_t)v);
}

static json_t *total_json(const struct total *t)
{
    char usd[48];
    format_usd(t->cost, usd, sizeof(usd));
    return json_pack("{s:o,s:o,s:o,s:o,s:o,s:I,s:s}", "requests", ju(t->requests), "errors",
                     ju(t->errors), "tokens_in", ju(t->tokens_in), "tokens_out", ju(t->tokens_out),
                     "tokens_cached", ju(t->tokens_cached), "cost_nanousd", (json_int_t)t->cost,
                     "cost_usd", usd);
}

static json_t *rows_json(const struct result *res)
{
    json_t *rows = json_array();
    for (size_t i = 0; rows != NULL && i < res->rows; i++) {
        const struct total *t = &res->t->slots[i];
        json_t *row = total_json(t);
        if (row == NULL || json_object_set_new(row, "tenant", json_string(t->tenant)) != 0 ||
            json_object_set_new(row, "model", json_string(t->model)) != 0 ||
            json_array_append_new(rows, row) != 0) {
            json_decref(rows);
            return NULL;
        }
    }
    return rows;
}

static json_t *error_json(const struct kp_segment_reader *r)
{
    if (r->err == KP_OK)
        return json_null();
    return json_pack("{s:I,s:s}", "offset", (json_int_t)r->err_offset, "message", r->errmsg);
}

static void print_json(const struct result *res)
{
    const struct kp_segment_reader *r = res->r;
    json_t *o = json_pack(
        "{s:s,s:b,s:o,s:i,s:s,s:o,s:I,s:b,s:I,s:I,s:o,s:o,s:I,s:I,s:o,s:o}", "file", res->path,
        "valid", r->err == KP_OK, "error", error_json(r), "version", r->header.version, "node",
        r->header.node, "seq", ju(r->header.seq), "created_ms", (json_int_t)r->header.created_ms,
        "sealed", r->sealed, "bytes", (json_int_t)res->size, "valid_len", (json_int_t)r->valid_len,
        "frames", ju(r->frames), "events", ju(r->events), "min_time_ms", (json_int_t)r->min_time_ms,
        "max_time_ms", (json_int_t)r->max_time_ms, "totals", total_json(&res->t->all),
        "by_tenant_model", rows_json(res));
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    if (s != NULL)
        puts(s);
    else
        fprintf(stderr, "%s: out of memory\n", res->path);
    free(s);
    json_decref(o);
}

/* --- the command --------------------------------------------------------- */

static void print_result(const struct result *res, bool as_json)
{
    if (as_json)
        print_json(res);
    else
        print_text(res);
}

static bool summarize(const char *path, const struct kp_buf *buf, bool as_json)
{
    struct kp_segment_reader r;
    struct kp_usage_event ev;
    struct totals t;
    bool ok = false;
    memset(&t, 0, sizeof(t));
    if (kp_segment_reader_init(&r, buf->data, buf->len) != KP_OK) {
        kp_kpseg__report(path, r.err, r.err_offset, r.errmsg);
        goto out;
    }
    while (kp_segment_reader_next(&r, &ev)) {
        if (!totals_add(&t, &ev)) {
            fprintf(stderr, "%s: out of memory\n", path);
            goto out;
        }
    }
    struct result res = {path, buf->len, &r, &t, totals_sort(&t)};
    print_result(&res, as_json);
    ok = r.err == KP_OK;
    if (!ok) {
        fflush(stdout);
        kp_kpseg__report(path, r.err, r.err_offset, r.errmsg);
    }
out:
    kp_segment_reader_close(&r);
    kp_free(t.slots);
    return ok;
}

static int summary_apply(int c, const char *arg, void *ctx)
{
    (void)arg;
    if (c == 'j')
        *(bool *)ctx = true;
    return KP_KPSEG_EXIT_OK;
}

int kp_kpseg__cmd_summary(int argc, char **argv)
{
    static const struct option opts[] = {
        {"json", no_argument, NULL, 'j'},
        {NULL, 0, NULL, 0},
    };
    bool as_json = false;
    struct kp_buf buf;
    if (kp_kpseg__wants_help(argc, argv)) {
        puts("usage: kpseg summary [--json] FILE...");
        return KP_KPSEG_EXIT_OK;
    }
    int rc = kp_kpseg__parse_options(argc, argv, opts, summary_apply, &as_json);
    if (rc != KP_KPSEG_EXIT_OK)
        return rc;
    if (optind >= argc)
        return kp_kpseg__usage_error("summary: no FILE given");
    kp_buf_init(&buf);
    int exit_code = KP_KPSEG_EXIT_OK;
    for (int i = optind; i < argc; i++) {
        if (!kp_kpseg__read(argv[i], &buf) || !summarize(argv[i], &buf, as_json))
            exit_code = KP_KPSEG_EXIT_INVALID;
    }
    kp_buf_free(&buf);
    return exit_code;
}

/* The end of a run on paper: a table for people, or one JSON object for
 * scripts (compare.sh reads it). Latencies are reported in milliseconds;
 * the histogram holds nanoseconds. Pure formatting: no clock, no sockets. */
#include <stdio.h>
#include <string.h>

#include "bench.h"
#include "core/core.h"

#define LAG_WARN_NS 1000000ull

static const double pcts[] = {50.0, 90.0, 99.0, 99.9};
static const char *const pct_keys[] = {"p50", "p90", "p99", "p99_9"};

static double ms(uint64_t ns)
{
    return (double)ns / 1e6;
}

static void fmt_ms(char *buf, size_t len, double v)
{
    if (v < 10)
        snprintf(buf, len, "%.3fms", v);
    else if (v < 1000)
        snprintf(buf, len, "%.2fms", v);
    else
        snprintf(buf, len, "%.3fs", v / 1000);
}

static void fmt_bytes(char *buf, size_t len, double v)
{
    static const char *const units[] = {"B", "KB", "MB", "GB", "TB"};
    unsigned u = 0;
    while (v >= 1000 && u < 4) {
        v /= 1000;
        u++;
    }
    snprintf(buf, len, u ? "%.2f %s" : "%.0f %s", v, units[u]);
}

static void row_ms(FILE *out, const char *label, const struct kp_bench_hist *h)
{
    char cell[32];
    fprintf(out, "%-14s", label);
    for (size_t i = 0; i < sizeof(pcts) / sizeof(pcts[0]); i++) {
        fmt_ms(cell, sizeof(cell), ms(kp_bench_hist_percentile(h, pcts[i])));
        fprintf(out, "%11s", cell);
    }
    fmt_ms(cell, sizeof(cell), ms(h->max));
    fprintf(out, "%11s", cell);
    fmt_ms(cell, sizeof(cell), kp_bench_hist_mean(h) / 1e6);
    fprintf(out, "%11s\n", cell);
}

static void describe_mode(FILE *out, const struct kp_bench_config *cfg)
{
    if (cfg->mode == KP_BENCH_OPEN_LOOP)
        fprintf(out, "  open loop at %.6g req/s, pool of %u connection%s", cfg->rate,
                cfg->connections, cfg->connections == 1 ? "" : "s");
    else
        fprintf(out, "  closed loop, %u connection%s", cfg->connections,
                cfg->connections == 1 ? "" : "s");
    fprintf(out, ", %u thread%s, ", cfg->threads, cfg->threads == 1 ? "" : "s");
    if (cfg->requests)
        fprintf(out, "%llu requests", (unsigned long long)cfg->requests);
    else
        fprintf(out, "%.3gs", cfg->duration_s);
    if (cfg->warmup_s > 0)
        fprintf(out, " after a %.3gs warm-up", cfg->warmup_s);
    fprintf(out, "\n  requests:");
    for (unsigned i = 0; i < cfg->n_reqs; i++)
        fprintf(out, "%s %s=%u", i ? "," : "", cfg->reqs[i].name, cfg->reqs[i].weight);
    fprintf(out, "\n\n");
}

static void table_streams(FILE *out, const struct kp_bench_stats *s)
{
    if (s->streams == 0)
        return;
    fprintf(out, "streams: %llu\n", (unsigned long long)s->streams);
    row_ms(out, "  first event", &s->first_event);
    row_ms(out, "  total", &s->stream_total);
    fprintf(out, "%-14s%11llu%11llu%11llu%11llu%11llu%11.1f\n", "  events",
            (unsigned long long)kp_bench_hist_percentile(&s->events, 50),
            (unsigned long long)kp_bench_hist_percentile(&s->events, 90),
            (unsigned long long)kp_bench_hist_percentile(&s->events, 99),
            (unsigned long long)kp_bench_hist_percentile(&s->events, 99.9),
            (unsigned long long)s->events.max, kp_bench_hist_mean(&s->events));
}

static void table_counts(FILE *out, const struct kp_bench_result *res)
{
    const struct kp_bench_stats *s = &res->stats;
    char a[32], b[32];
    fprintf(out, "\nthroughput    %.1f req/s (%llu answers in %.2fs)\n", res->throughput,
            (unsigned long long)s->completed, res->elapsed_s);
    fprintf(out, "status       ");
    unsigned shown = 0;
    for (unsigned code = 0; code < 600; code++) {
        if (s->status[code] == 0)
            continue;
        if (code == 0)
            fprintf(out, " other: %llu", (unsigned long long)s->status[code]);
        else
            fprintf(out, " %u: %llu", code, (unsigned long long)s->status[code]);
        shown++;
    }
    fprintf(out, "%s\nerrors       ", shown ? "" : " none");
    uint64_t total = kp_bench_stats_errors(s);
    if (total == 0)
        fprintf(out, " none");
    for (int k = 0; k < KP_BENCH_N_ERRORS && total; k++)
        if (s->errors[k])
            fprintf(out, " %s: %llu", kp_bench_error_name(k), (unsigned long long)s->errors[k]);
    fmt_bytes(a, sizeof(a), (double)s->bytes_sent);
    fmt_bytes(b, sizeof(b), (double)s->bytes_received);
    fprintf(out, "\nbytes         sent %s, received %s\n", a, b);
}

static void table_schedule(FILE *out, const struct kp_bench_config *cfg,
                           const struct kp_bench_stats *s)
{
    char a[32], b[32];
    if (cfg->mode != KP_BENCH_OPEN_LOOP)
        return;
    uint64_t p99 = kp_bench_hist_percentile(&s->lag, 99);
    fmt_ms(a, sizeof(a), ms(p99));
    fmt_ms(b, sizeof(b), ms(s->lag.max));
    fprintf(out, "schedule      sent late by p99 %s, max %s; %llu waited for a free connection\n",
            a, b, (unsigned long long)s->waited);
    if (p99 > LAG_WARN_NS)
        fprintf(out, "warning: requests left more than 1ms after their scheduled time; the "
                     "latencies above include that wait (raise --connections if requests "
                     "waited, or --threads if the generator is busy)\n");
}

void kp_bench_report_table(FILE *out, const struct kp_bench_config *cfg,
                           const struct kp_bench_result *res)
{
    const struct kp_bench_stats *s = &res->stats;
    fprintf(out, "keyplane-bench %s  %s%s\n", kp_version(), cfg->url_text,
            res->interrupted ? "  (interrupted)" : "");
    describe_mode(out, cfg);
    fprintf(out, "%-14s%11s%11s%11s%11s%11s%11s\n", "", "p50", "p90", "p99", "p99.9", "max",
            "mean");
    row_ms(out, "latency", &s->latency);
    row_ms(out, "first byte", &s->ttfb);
    table_streams(out, s);
    table_counts(out, res);
    table_schedule(out, cfg, s);
}

/* --- JSON ---------------------------------------------------------------- */

static json_t *json_ms(const struct kp_bench_hist *h)
{
    json_t *o = json_object();
    for (size_t i = 0; i < sizeof(pcts) / sizeof(pcts[0]); i++)
        json_object_set_new(o, pct_keys[i], json_real(ms(kp_bench_hist_percentile(h, pcts[i]))));
    json_object_set_new(o, "max", json_real(ms(h->max)));
    json_object_set_new(o, "min", json_real(h->total ? ms(h->min) : 0.0));
    json_object_set_new(o, "mean", json_real(kp_bench_hist_mean(h) / 1e6));
    json_object_set_new(o, "count", json_integer((json_int_t)h->total));
    return o;
}

static json_t *json_counts(const struct kp_bench_stats *s)
{
    json_t *events = json_object();
    json_object_set_new(events, "p50",
                        json_integer((json_int_t)kp_bench_hist_percentile(&s->events, 50)));
    json_object_set_new(events, "p99",
                        json_integer((json_int_t)kp_bench_hist_percentile(&s->events, 99)));
    json_object_set_new(events, "max", json_integer((json_int_t)s->events.max));
    json_object_set_new(events, "mean", json_real(kp_bench_hist_mean(&s->events)));
    return events;
}

static json_t *json_status_errors(const struct kp_bench_stats *s, json_t **errors)
{
    json_t *status = json_object();
    char key[8];
    for (unsigned code = 0; code < 600; code++) {
        if (s->status[code] == 0)
            continue;
        snprintf(key, sizeof(key), code ? "%u" : "other", code);
        json_object_set_new(status, key, json_integer((json_int_t)s->status[code]));
    }
    *errors = json_object();
    for (int k = 0; k < KP_BENCH_N_ERRORS; k++)
        json_object_set_new(*errors, kp_bench_error_name(k),
                            json_integer((json_int_t)s->errors[k]));
    json_object_set_new(*errors, "total", json_integer((json_int_t)kp_bench_stats_errors(s)));
    return status;
}

static json_t *json_config(const struct kp_bench_config *cfg)
{
    json_t *mix = json_object();
    for (unsigned i = 0; i < cfg->n_reqs; i++)
        json_object_set_new(mix, cfg->reqs[i].name, json_integer(cfg->reqs[i].weight));
    return json_pack("{s:s, s:s, s:s, s:o, s:I, s:I, s:f, s:o, s:f, s:o}", "tool", "keyplane-bench",
                     "version", kp_version(), "mode",
                     cfg->mode == KP_BENCH_OPEN_LOOP ? "open" : "closed", "rate",
                     cfg->mode == KP_BENCH_OPEN_LOOP ? json_real(cfg->rate) : json_null(),
                     "connections", (json_int_t)cfg->connections, "threads",
                     (json_int_t)cfg->threads, "duration_s", cfg->duration_s, "requests_planned",
                     cfg->requests ? json_integer((json_int_t)cfg->requests) : json_null(),
                     "warmup_s", cfg->warmup_s, "mix", mix);
}

int kp_bench_report_json(FILE *out, const struct kp_bench_config *cfg,
                         const struct kp_bench_result *res)
{
    const struct kp_bench_stats *s = &res->stats;
    json_t *errors;
    json_t *status = json_status_errors(s, &errors);
    json_t *o = json_config(cfg);
    if (o == NULL)
        return KP_ENOMEM;
    json_object_set_new(o, "url", json_string(cfg->url_text));
    json_object_set_new(o, "interrupted", json_boolean(res->interrupted));
    json_object_set_new(o, "elapsed_s", json_real(res->elapsed_s));
    json_object_set_new(o, "requests", json_integer((json_int_t)s->completed));
    json_object_set_new(o, "warmup_requests", json_integer((json_int_t)s->warmup_completed));
    json_object_set_new(o, "throughput_rps", json_real(res->throughput));
    json_object_set_new(o, "latency_ms", json_ms(&s->latency));
    json_object_set_new(o, "ttfb_ms", json_ms(&s->ttfb));
    json_object_set_new(o, "streams", json_integer((json_int_t)s->streams));
    json_object_set_new(o, "first_event_ms", json_ms(&s->first_event));
    json_object_set_new(o, "stream_total_ms", json_ms(&s->stream_total));
    json_object_set_new(o, "events_per_stream", json_counts(s));
    json_object_set_new(o, "status", status);
    json_object_set_new(o, "errors", errors);
    json_object_set_new(o, "bytes",
                        json_pack("{s:I, s:I}", "sent", (json_int_t)s->bytes_sent, "received",
                                  (json_int_t)s->bytes_received));
    if (cfg->mode == KP_BENCH_OPEN_LOOP)
        json_object_set_new(
            o, "schedule",
            json_pack("{s:o, s:I}", "lag_ms", json_ms(&s->lag), "waited", (json_int_t)s->waited));
    /* Ten significant digits: nanosecond resolution for any latency under
     * ten seconds, without binary noise (0.21500000000000002). */
    int rv = json_dumpf(o, out, JSON_COMPACT | JSON_REAL_PRECISION(10)) == 0 ? KP_OK : KP_EIO;
    json_decref(o);
    fputc('\n', out);
    return rv;
}

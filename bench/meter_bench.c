/* keyplane-meter-bench: the meter's figures (docs: bench/README.md).
 *
 *   keyplane-meter-bench --dir DIR SEGMENT...      ingest
 *   keyplane-meter-bench --dir DIR --query FROM TO  query
 *
 * Ingest opens a meter store in DIR (empty), stores every SEGMENT (made
 * with `kpseg gen`) and waits until all are compacted: it prints events,
 * ingest+compaction time and events/s, and bytes on disk per event (raw
 * segments and rollups). Query, in a fresh process so that its memory is
 * its own, runs a usage query over [FROM, TO) (Unix ms) grouped by tenant
 * and model at day granularity and prints its time, rows, total requests
 * and the process's peak RSS. Output is JSON. Run it under `taskset -c 0`
 * for one core. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "meter/meter.h"

static uint64_t dir_bytes(const char *path)
{
    uint64_t total = 0;
    DIR *d = kp_opendir(path);
    if (d == NULL)
        return 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char p[4096];
        struct stat st;
        snprintf(p, sizeof(p), "%s/%s", path, e->d_name);
        if (stat(p, &st) != 0)
            continue;
        total += S_ISDIR(st.st_mode) ? dir_bytes(p) : (uint64_t)st.st_size;
    }
    closedir(d);
    return total;
}

static long peak_rss_kib(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

static int query(const char *dir, const char *from, const char *to)
{
    char errmsg[512];
    struct kp_meter_store *m = NULL;
    struct kp_meter_store_options o = {.dir = dir};
    long rss0 = peak_rss_kib();
    if (kp_meter_store_open(&o, &m, errmsg, sizeof(errmsg)) != KP_OK) {
        fprintf(stderr, "%s\n", errmsg);
        return 1;
    }
    struct kp_usage_query q;
    kp_usage_query_init(&q, kp_now_unix_ms());
    const char *params[][2] = {
        {"from", from}, {"to", to}, {"granularity", "day"}, {"group_by", "tenant,model"}};
    for (size_t i = 0; i < 4; i++)
        if (kp_usage_query_param(&q, params[i][0], params[i][1], errmsg, sizeof(errmsg)) != KP_OK) {
            fprintf(stderr, "%s\n", errmsg);
            return 1;
        }
    if (kp_usage_query_finish(&q, errmsg, sizeof(errmsg)) != KP_OK) {
        fprintf(stderr, "%s\n", errmsg);
        return 1;
    }
    long rss1 = peak_rss_kib();
    uint64_t t0 = kp_now_mono_us();
    struct kp_usage_result *res = NULL;
    if (kp_meter_store_query(m, &q, &res, errmsg, sizeof(errmsg)) != KP_OK) {
        fprintf(stderr, "query: %s\n", errmsg);
        return 1;
    }
    json_t *j = kp_usage_result_json(res, "bench");
    uint64_t t1 = kp_now_mono_us();
    json_int_t total =
        json_integer_value(json_object_get(json_object_get(j, "totals"), "requests"));
    printf("{\"query\": \"granularity=day group_by=tenant,model\", \"days\": %.1f,"
           " \"seconds\": %.3f, \"rows\": %llu, \"total_requests\": %lld,\n"
           " \"peak_rss_kib_at_start\": %ld, \"peak_rss_kib_before_query\": %ld,"
           " \"peak_rss_kib_after_query\": %ld}\n",
           (double)(q.to_ms - q.from_ms) / 86400000.0, (double)(t1 - t0) / 1e6,
           (unsigned long long)kp_usage_result_rows(res), (long long)total, rss0, rss1,
           peak_rss_kib());
    json_decref(j);
    kp_usage_result_free(res);
    kp_usage_query_free(&q);
    kp_meter_store_close(m);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 6 && strcmp(argv[1], "--dir") == 0 && strcmp(argv[3], "--query") == 0)
        return query(argv[2], argv[4], argv[5]);
    if (argc < 4 || strcmp(argv[1], "--dir") != 0) {
        fprintf(stderr, "usage: keyplane-meter-bench --dir DIR SEGMENT...\n"
                        "       keyplane-meter-bench --dir DIR --query FROM_MS TO_MS\n");
        return 2;
    }
    char errmsg[512];
    struct kp_meter_store *m = NULL;
    struct kp_meter_store_options o = {.dir = argv[2], .max_segment_bytes = (size_t)1 << 30};
    if (kp_meter_store_open(&o, &m, errmsg, sizeof(errmsg)) != KP_OK) {
        fprintf(stderr, "%s\n", errmsg);
        return 1;
    }
    struct kp_buf b;
    kp_buf_init(&b);
    uint64_t events = 0, seg_bytes = 0;
    int64_t min_t = INT64_MAX, max_t = INT64_MIN;
    /* Read every file first so that the timing is the meter's work. */
    struct kp_buf *segs = kp_calloc((size_t)argc, sizeof(*segs));
    for (int i = 3; i < argc; i++) {
        kp_buf_init(&segs[i]);
        if (kp_segment_file_read(argv[i], (size_t)1 << 30, &segs[i], errmsg, sizeof(errmsg)) !=
            KP_OK) {
            fprintf(stderr, "%s: %s\n", argv[i], errmsg);
            return 1;
        }
        struct kp_segment_summary s;
        if (kp_segment_validate(segs[i].data, segs[i].len, &s) != KP_OK) {
            fprintf(stderr, "%s: %s\n", argv[i], s.errmsg);
            return 1;
        }
        events += s.events;
        seg_bytes += segs[i].len;
        if (s.events > 0 && s.min_time_ms < min_t)
            min_t = s.min_time_ms;
        if (s.events > 0 && s.max_time_ms > max_t)
            max_t = s.max_time_ms;
    }
    uint64_t t0 = kp_now_mono_us();
    for (int i = 3; i < argc; i++) {
        bool dup;
        if (kp_meter_store_put(m, segs[i].data, segs[i].len, &dup, errmsg, sizeof(errmsg)) !=
            KP_OK) {
            fprintf(stderr, "%s: %s\n", argv[i], errmsg);
            return 1;
        }
        kp_buf_free(&segs[i]);
    }
    kp_meter_store_flush(m);
    uint64_t t1 = kp_now_mono_us();
    kp_free(segs);

    char sub[4096];
    snprintf(sub, sizeof(sub), "%s/rollups", argv[2]);
    uint64_t rollup_bytes = dir_bytes(sub);
    snprintf(sub, sizeof(sub), "%s/segments", argv[2]);
    uint64_t raw_bytes = dir_bytes(sub);

    printf("{\"events\": %llu, \"segments\": %d, \"days\": %.1f,\n"
           " \"ingest_compact_s\": %.3f, \"events_per_s\": %.0f,\n"
           " \"segment_bytes_per_event\": %.2f, \"raw_stored_bytes_per_event\": %.2f,"
           " \"rollup_bytes\": %llu, \"rollup_bytes_per_event\": %.2f,\n"
           " \"from_ms\": %lld, \"to_ms\": %lld}\n",
           (unsigned long long)events, argc - 3, (double)(max_t - min_t) / 86400000.0,
           (double)(t1 - t0) / 1e6, (double)events / ((double)(t1 - t0) / 1e6),
           (double)seg_bytes / (double)events, (double)raw_bytes / (double)events,
           (unsigned long long)rollup_bytes, (double)rollup_bytes / (double)events,
           (long long)kp_day_floor_ms(min_t), (long long)(kp_day_floor_ms(max_t) + 86400000));
    kp_meter_store_close(m);
    kp_buf_free(&b);
    return 0;
}

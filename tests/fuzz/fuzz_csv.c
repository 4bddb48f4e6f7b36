/* libFuzzer driver for the CSV reader and the vendor cost-export importers
 * (meter/meter.h, meter/reconcile.h). Every input is read as CSV to its end
 * or its first error, checking what the reader promises (field counts and
 * lengths, line numbers that only grow, errors that stick) and that the
 * writer's rendering of each record reads back the same; then imported as an
 * OpenAI and as an Anthropic export, compared and rendered as JSON; and,
 * when it is JSON, added as a usage answer. The value parsers (amounts,
 * days, thresholds, model names) get the input as one string. Crashes,
 * sanitizer reports, leaks and unbounded allocation are what it looks for. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "meter/meter.h"

enum { MAX_CHECKED_RECORDS = 64 };

/* The record @r holds, rendered by the writer, must read back the same. */
static void check_round_trip(const struct kp_csv_reader *r)
{
    struct kp_csv_reader again;
    struct kp_buf b;

    kp_buf_init(&b);
    for (size_t i = 0; i < r->n_fields; i++) {
        if (kp_csv_field(&b, r->fields[i], strlen(r->fields[i]), i == 0) != KP_OK)
            abort();
    }
    if (kp_csv_end(&b) != KP_OK)
        abort();
    kp_csv_reader_init(&again, b.data, b.len);
    if (!kp_csv_next(&again) || again.n_fields != r->n_fields)
        abort();
    for (size_t i = 0; i < r->n_fields; i++) {
        if (strcmp(again.fields[i], r->fields[i]) != 0)
            abort();
    }
    if (kp_csv_next(&again) || again.err != KP_OK)
        abort();
    kp_csv_reader_close(&again);
    kp_buf_free(&b);
}

static void read_csv(const uint8_t *data, size_t size)
{
    struct kp_csv_reader r;
    size_t records = 0, last_line = 0;

    kp_csv_reader_init(&r, data, size);
    while (kp_csv_next(&r)) {
        if (r.n_fields == 0 || r.n_fields > KP_CSV_MAX_FIELDS || r.line <= last_line)
            abort();
        for (size_t i = 0; i < r.n_fields; i++) {
            if (strlen(r.fields[i]) > KP_CSV_MAX_FIELD)
                abort();
        }
        if (records++ < MAX_CHECKED_RECORDS)
            check_round_trip(&r);
        last_line = r.line;
    }
    int err = r.err;
    if ((err != KP_OK && err != KP_EPARSE) || r.n_fields != 0)
        abort();
    if (kp_csv_next(&r) || r.err != err)
        abort();
    kp_csv_reader_close(&r);
}

static void import(const char *vendor, enum kp_recon_by by, const uint8_t *data, size_t size,
                   const json_t *answer)
{
    struct kp_recon_table t;
    struct kp_recon_options opt;
    struct kp_recon_result res;
    char err[512];

    kp_recon_init(&t, by, size % 2 == 0);
    int rc = kp_recon_parse_vendor(&t, vendor, data, size, err, sizeof(err));
    if (rc != KP_OK && rc != KP_EINVAL && rc != KP_EPARSE && rc != KP_ETOOBIG)
        abort();
    if (rc == KP_OK && answer != NULL)
        kp_recon_add_metered_json(&t, answer, err, sizeof(err));
    if (rc == KP_OK) {
        kp_recon_options_init(&opt);
        opt.all = size % 3 == 0;
        if (t.vendor_rows > 0 && size % 5 == 0) {
            opt.from_day = t.first_day;
            opt.to_day = t.last_day;
        }
        rc = kp_recon_compare(&t, &opt, &res);
        if (rc == KP_OK) {
            if (res.n_rows > t.n_entries || res.differing > res.compared)
                abort();
            json_decref(kp_recon_result_to_json(&t, &opt, &res));
            kp_recon_result_free(&res);
        } else if (rc != KP_ETOOBIG) {
            abort();
        }
    }
    kp_recon_close(&t);
}

static void parse_values(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1), norm[KP_USAGE_STR_MAX + 1];
    kp_nanousd amount;
    int64_t ppm;
    int32_t day;

    if (s == NULL)
        return;
    memcpy(s, data, size);
    s[size] = '\0';
    if (kp_recon_parse_amount(s, &amount) == KP_OK &&
        (amount > KP_RECON_AMOUNT_MAX || amount < -KP_RECON_AMOUNT_MAX))
        abort();
    if (kp_recon_parse_threshold(s, &ppm) == KP_OK && ppm < 0)
        abort();
    if (kp_recon_parse_day(s, &day) == KP_OK)
        kp_recon_format_day(day, norm, sizeof(norm));
    kp_recon_normalize_model(s, norm, sizeof(norm));
    if (strlen(norm) > strlen(s))
        abort();
    free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_t *answer = json_loadb((const char *)data, size, 0, NULL);
    enum kp_recon_by by = size > 0 ? (enum kp_recon_by)(data[0] % 3) : KP_RECON_BY_MODEL;

    read_csv(data, size);
    import("openai", by, data, size, answer);
    import("anthropic", by, data, size, answer);
    if (answer != NULL) {
        struct kp_recon_table t;
        char err[256];
        kp_recon_init(&t, by, false);
        kp_recon_add_metered_json(&t, answer, err, sizeof(err));
        kp_recon_close(&t);
    }
    json_decref(answer);
    parse_values(data, size);
    return 0;
}

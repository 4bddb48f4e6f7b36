/* Unit tests of reconciliation (meter/reconcile.h): exact decimal amounts,
 * thresholds, days and model names; the OpenAI and Anthropic cost exports
 * read from realistic samples (the columns of docs/reconcile.md); the
 * errors for missing columns and bad rows, with their lines; metered usage
 * from usage API answers; the comparison (an injected 3% discrepancy, a
 * match, rows on one side only, the threshold's edge, a minimum, a day
 * range, by project and by key); overflow; and allocation failures walked
 * one at a time through a whole reconciliation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "meter/meter.h"

/* 2026-01-01 and 2026-01-02, in days since 1970-01-01. */
#define JAN1 20454
#define JAN2 20455

/* An OpenAI cost export as the dashboard writes it (Usage, Export, cost
 * data, grouped by line item, 1 day), with a project name column. */
static const char openai_csv[] =
    "start_time,end_time,start_time_iso,end_time_iso,amount_value,amount_currency,line_item,"
    "project_id,project_name,organization_id,organization_name\n"
    "1767225600,1767312000,2026-01-01T00:00:00+00:00,2026-01-02T00:00:00+00:00,"
    "1.2500000000000000,usd,\"gpt-4o-2024-08-06, input\",proj_A,web,org-1,Acme\n"
    "1767225600,1767312000,2026-01-01T00:00:00+00:00,2026-01-02T00:00:00+00:00,"
    "0.7500000000000000,usd,\"gpt-4o-2024-08-06, output\",proj_A,web,org-1,Acme\n"
    "1767225600,1767312000,2026-01-01T00:00:00+00:00,2026-01-02T00:00:00+00:00,"
    "0.0625,usd,\"gpt-4o-2024-08-06, cached input\",proj_B,batch,org-1,Acme\n"
    "1767225600,1767312000,2026-01-01T00:00:00+00:00,2026-01-02T00:00:00+00:00,"
    "0.000004500000000000000000000000000000000,usd,\"gpt-4o-mini-2024-07-18, input\",proj_A,web,"
    "org-1,Acme\n"
    "1767225600,1767312000,2026-01-01T00:00:00+00:00,2026-01-02T00:00:00+00:00,"
    "0.02,usd,web search tool calls,proj_A,web,org-1,Acme\n"
    "1767225600,1767312000,2026-01-01T00:00:00+00:00,2026-01-02T00:00:00+00:00,"
    "0.5,usd,\"evals | gpt-4o-mini-2024-07-18, input\",proj_A,web,org-1,Acme\n"
    "1767312000,1767398400,2026-01-02T00:00:00+00:00,2026-01-03T00:00:00+00:00,"
    "3.00,usd,\"gpt-4o-2024-08-06, output\",proj_A,web,org-1,Acme\n"
    "1767398400,1767484800,2026-01-03T00:00:00+00:00,2026-01-04T00:00:00+00:00,,,,,,,\n";

/* What keyplane metered for the same days, as GET /admin/v1/usage answers
 * with granularity=day&group_by=model. */
static const char openai_metered[] =
    "{\"granularity\": \"day\", \"group_by\": [\"model\"], \"rows\": ["
    "{\"start\": \"2026-01-01T00:00:00Z\", \"model\": \"gpt-4o-2024-08-06\", "
    "\"requests\": 10, \"cost_nanousd\": 2062500000, \"cost_usd\": \"2.062500000\"},"
    "{\"start\": \"2026-01-01T00:00:00Z\", \"model\": \"gpt-4o-mini-2024-07-18\", "
    "\"requests\": 1, \"cost_nanousd\": 4500, \"cost_usd\": \"0.000004500\"},"
    "{\"start\": \"2026-01-02T00:00:00Z\", \"model\": \"gpt-4o-2024-08-06\", "
    "\"requests\": 7, \"cost_nanousd\": 3000000000, \"cost_usd\": \"3.000000000\"}]}";

/* An Anthropic Console cost export (Cost, Export): a byte-order mark, CRLF
 * line ends, display names for models, a non-token cost without one. */
static const char anthropic_csv[] =
    "\xEF\xBB\xBFusage_date_utc,model,workspace,api_key,usage_type,context_window,token_type,"
    "cost_usd,list_price_usd,cost_type,inference_geo,speed,api_key_id,api_key_status\r\n"
    "2026-01-01,Claude Sonnet 4.5,Default,prod-key,message,\xE2\x89\xA4 200k,input_no_cache,"
    "1.20,1.20,token,not_available,,apikey_01AAA,active\r\n"
    "2026-01-01,Claude Sonnet 4.5,Default,prod-key,message,\xE2\x89\xA4 200k,output,3.45,3.45,"
    "token,not_available,,apikey_01AAA,active\r\n"
    "2026-01-01,Claude Haiku 4.5,Research,lab-key,message,\xE2\x89\xA4 200k,input_cache_read,"
    "0.015,0.15,token,not_available,,apikey_01BBB,active\r\n"
    "2026-01-02,Claude Sonnet 4.5,Default,prod-key,message,\xE2\x89\xA4 200k,output,2.00,2.00,"
    "token,not_available,,apikey_01AAA,active\r\n"
    "2026-01-02,,Default,prod-key,web_search,,,0.10,0.10,web_search,not_available,,"
    "apikey_01AAA,active\r\n";

/* --- helpers ------------------------------------------------------------- */

/* @n whole dollars in nano-USD. */
static kp_nanousd USD(int64_t n)
{
    return n * 1000000000;
}

static void parse_ok(struct kp_recon_table *t, const char *vendor, const char *csv)
{
    char err[512] = "";
    int rc = kp_recon_parse_vendor(t, vendor, csv, strlen(csv), err, sizeof(err));
    if (rc != KP_OK)
        fail_msg("kp_recon_parse_vendor: %s", err);
}

/* Parses @csv expecting error @want whose message contains @needle. */
static void parse_fails(const char *vendor, enum kp_recon_by by, const char *csv, int want,
                        const char *needle)
{
    struct kp_recon_table t;
    char err[1024] = "";

    kp_recon_init(&t, by, false);
    assert_int_equal(kp_recon_parse_vendor(&t, vendor, csv, strlen(csv), err, sizeof(err)), want);
    if (strstr(err, needle) == NULL)
        fail_msg("'%s' does not contain '%s'", err, needle);
    kp_recon_close(&t);
}

static void metered_ok(struct kp_recon_table *t, const char *json)
{
    char err[256] = "";
    json_t *answer = json_loads(json, 0, NULL);
    assert_non_null(answer);
    int rc = kp_recon_add_metered_json(t, answer, err, sizeof(err));
    json_decref(answer);
    if (rc != KP_OK)
        fail_msg("kp_recon_add_metered_json: %s", err);
}

static void metered_fails(enum kp_recon_by by, const char *json, int want, const char *needle)
{
    struct kp_recon_table t;
    char err[256] = "";
    json_t *answer = json_loads(json, 0, NULL);

    assert_non_null(answer);
    kp_recon_init(&t, by, false);
    assert_int_equal(kp_recon_add_metered_json(&t, answer, err, sizeof(err)), want);
    if (strstr(err, needle) == NULL)
        fail_msg("'%s' does not contain '%s'", err, needle);
    json_decref(answer);
    kp_recon_close(&t);
}

static void add(struct kp_recon_table *t, bool vendor, int32_t day, const char *model,
                const char *scope, kp_nanousd amount)
{
    assert_int_equal(kp_recon_add(t, vendor, day, model, scope, amount, NULL, 0), KP_OK);
}

static struct kp_recon_result compare(const struct kp_recon_table *t, int64_t threshold_ppm,
                                      bool all)
{
    struct kp_recon_options opt;
    struct kp_recon_result r;
    kp_recon_options_init(&opt);
    opt.threshold_ppm = threshold_ppm;
    opt.all = all;
    assert_int_equal(kp_recon_compare(t, &opt, &r), KP_OK);
    return r;
}

static void expect_row(const struct kp_recon_row *row, int32_t day, const char *model,
                       const char *scope, kp_nanousd vendor, kp_nanousd metered,
                       enum kp_recon_side side)
{
    assert_int_equal(row->day, day);
    assert_string_equal(row->model, model);
    assert_string_equal(row->scope, scope);
    assert_true(row->vendor == vendor);
    assert_true(row->metered == metered);
    assert_true(row->diff == vendor - metered);
    assert_int_equal(row->side, side);
}

static kp_nanousd amount(const char *s)
{
    kp_nanousd v = 0;
    assert_int_equal(kp_recon_parse_amount(s, &v), KP_OK);
    return v;
}

/* --- values -------------------------------------------------------------- */

/* Decimal dollars become nano-USD exactly, whatever the number of digits,
 * with an exponent, and rounding past the ninth decimal to the nearest. */
static void test_amounts(void **state)
{
    kp_nanousd v;
    (void)state;

    assert_true(amount("0.06") == 60000000);
    assert_true(amount("0.8958740000000000") == 895874000);
    assert_true(amount("0.000004500000000000000000000000000000000") == 4500);
    assert_true(amount("0E-6176") == 0);
    assert_true(amount("1E-7") == 100);
    assert_true(amount("2.5e2") == USD(250));
    assert_true(amount("-1.5") == -1500000000);
    assert_true(amount("+1.5") == 1500000000);
    assert_true(amount("$3") == USD(3));
    assert_true(amount("-$0.25") == -250000000);
    assert_true(amount(" 2.5 ") == 2500000000);
    assert_true(amount(".5") == 500000000);
    assert_true(amount("7.") == USD(7));
    assert_true(amount("1234567.123456789") == 1234567123456789);
    assert_true(amount("0.0000000015") == 2); /* half: away from zero */
    assert_true(amount("0.0000000014999") == 1);
    assert_true(amount("-0.0000000005") == -1);
    assert_true(amount("-0.0000000004") == 0);
    assert_true(amount("1e-999999999") == 0);
    assert_true(amount("0e999999999") == 0);
    assert_true(amount("000000000000000000000000000001") == USD(1));
    assert_true(amount("1000000000") == KP_RECON_AMOUNT_MAX);
    assert_int_equal(kp_recon_parse_amount("1000000000.000000001", &v), KP_ETOOBIG);
    assert_int_equal(kp_recon_parse_amount("-1e10", &v), KP_ETOOBIG);
    assert_int_equal(kp_recon_parse_amount("1e999999999", &v), KP_ETOOBIG);
    assert_int_equal(kp_recon_parse_amount("99999999999999999999999", &v), KP_ETOOBIG);
    static const char *const bad[] = {"",    " ",   "-",   ".",   "$",   "1.2.3", "1,000",
                                      "abc", "1e",  "1e+", "NaN", "inf", "0x10",  "1 2",
                                      "$-1", "--1", "1$",  "12%", "e5"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (kp_recon_parse_amount(bad[i], &v) != KP_EPARSE)
            fail_msg("'%s' was read as an amount", bad[i]);
    }
}

/* Thresholds as percentages or fractions, into parts per million. */
static void test_thresholds(void **state)
{
    int64_t ppm;
    (void)state;

    assert_int_equal(kp_recon_parse_threshold("1%", &ppm), KP_OK);
    assert_int_equal(ppm, 10000);
    assert_int_equal(kp_recon_parse_threshold("0.5%", &ppm), KP_OK);
    assert_int_equal(ppm, 5000);
    assert_int_equal(kp_recon_parse_threshold("2.5 %", &ppm), KP_OK);
    assert_int_equal(ppm, 25000);
    assert_int_equal(kp_recon_parse_threshold("0.01", &ppm), KP_OK);
    assert_int_equal(ppm, 10000);
    assert_int_equal(kp_recon_parse_threshold("0", &ppm), KP_OK);
    assert_int_equal(ppm, 0);
    assert_int_equal(kp_recon_parse_threshold("150%", &ppm), KP_OK);
    assert_int_equal(ppm, 1500000);
    static const char *const bad[] = {"", "%", "-1%", "abc", "1%%", "1e2", "$1", "-0"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (kp_recon_parse_threshold(bad[i], &ppm) != KP_EPARSE)
            fail_msg("'%s' was read as a threshold", bad[i]);
    }
}

static int32_t day_of(const char *s)
{
    int32_t d = 0;
    if (kp_recon_parse_day(s, &d) != KP_OK)
        fail_msg("'%s' was not read as a day", s);
    return d;
}

/* Dates, ISO 8601 times with offsets (the UTC day counts) and Unix
 * seconds or milliseconds. */
static void test_days(void **state)
{
    char buf[16];
    int32_t d;
    (void)state;

    assert_int_equal(day_of("1970-01-01"), 0);
    assert_int_equal(day_of("2026-01-01"), JAN1);
    assert_int_equal(day_of(" 2026-01-02 "), JAN2);
    assert_int_equal(day_of("2026-01-01T00:00:00+00:00"), JAN1);
    assert_int_equal(day_of("2026-01-01T23:59:59.999Z"), JAN1);
    assert_int_equal(day_of("2026-01-01T23:00:00-02:00"), JAN2);
    assert_int_equal(day_of("2026-01-02T01:00:00+0200"), JAN1);
    assert_int_equal(day_of("2026-01-01 12:00:00 UTC"), JAN1);
    assert_int_equal(day_of("2026-01-01t12:00"), JAN1);
    assert_int_equal(day_of("1767225600"), JAN1);
    assert_int_equal(day_of("1767311999"), JAN1);
    assert_int_equal(day_of("1767312000000"), JAN2);
    assert_int_equal(day_of("2024-02-29"), day_of("2024-03-01") - 1);
    static const char *const bad[] = {"",
                                      "2026-02-30",
                                      "2025-02-29",
                                      "2026-1-5",
                                      "2026-13-01",
                                      "26-01-01",
                                      "2026/01/01",
                                      "yesterday",
                                      "2026-01-01T25:00:00Z",
                                      "2026-01-01Tx",
                                      "2026-01-01T10:00:00+99:00",
                                      "12345678901234567890",
                                      "2026-01-01 junk"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (kp_recon_parse_day(bad[i], &d) == KP_OK)
            fail_msg("'%s' was read as a day", bad[i]);
    }
    assert_int_equal(kp_recon_day_of_ms(1767225600000), JAN1);
    assert_int_equal(kp_recon_day_of_ms(-1), -1);
    kp_recon_format_day(JAN2, buf, sizeof(buf));
    assert_string_equal(buf, "2026-01-02");
    kp_recon_format_day(-1, buf, sizeof(buf));
    assert_string_equal(buf, "1969-12-31");
    kp_recon_format_day(day_of("2000-02-29"), buf, sizeof(buf));
    assert_string_equal(buf, "2000-02-29");
}

/* Money and shares as clusterctl shows them. */
static void test_formatting(void **state)
{
    char buf[64];
    (void)state;

    kp_recon_format_usd(USD(1) + 500000000, buf, sizeof(buf));
    assert_string_equal(buf, "$1.50");
    kp_recon_format_usd(0, buf, sizeof(buf));
    assert_string_equal(buf, "$0.00");
    kp_recon_format_usd(4500, buf, sizeof(buf));
    assert_string_equal(buf, "$0.0000045");
    kp_recon_format_usd(-4500, buf, sizeof(buf));
    assert_string_equal(buf, "-$0.0000045");
    kp_recon_format_usd(INT64_MIN, buf, sizeof(buf));
    assert_string_equal(buf, "-$9223372036.854775808");
    kp_recon_format_decimal(-4500, buf, sizeof(buf));
    assert_string_equal(buf, "-0.000004500");
    kp_recon_format_decimal(USD(12), buf, sizeof(buf));
    assert_string_equal(buf, "12.000000000");
    kp_recon_format_ppm(31250, buf, sizeof(buf));
    assert_string_equal(buf, "3.12%");
    kp_recon_format_ppm(10000, buf, sizeof(buf));
    assert_string_equal(buf, "1.00%");
    kp_recon_format_ppm(1234567, buf, sizeof(buf));
    assert_string_equal(buf, "123.45%");
    assert_int_equal(kp_recon_rel_ppm(USD(100), USD(97)), 30000);
    assert_int_equal(kp_recon_rel_ppm(USD(-100), USD(-97)), 30000);
    assert_int_equal(kp_recon_rel_ppm(0, 5), -1);
    assert_int_equal(kp_recon_rel_ppm(1, INT64_MAX), INT64_MAX);
}

static const char *norm(const char *model)
{
    static char out[KP_USAGE_STR_MAX + 1];
    kp_recon_normalize_model(model, out, sizeof(out));
    return out;
}

/* The documented normalisation: both vendors' spellings meet keyplane's. */
static void test_model_names(void **state)
{
    (void)state;
    assert_string_equal(norm("gpt-4o-2024-08-06"), "gpt-4o");
    assert_string_equal(norm("GPT-4o"), "gpt-4o");
    assert_string_equal(norm("gpt-4o-mini-2024-07-18"), "gpt-4o-mini");
    assert_string_equal(norm("o1-2024-12-17"), "o1");
    assert_string_equal(norm("gpt-4.1"), "gpt-4-1");
    assert_string_equal(norm("gpt-3.5-turbo-0125"), "gpt-3-5-turbo-0125");
    assert_string_equal(norm("Claude Sonnet 4.5"), "claude-sonnet-4-5");
    assert_string_equal(norm("claude-sonnet-4-5-20250929"), "claude-sonnet-4-5");
    assert_string_equal(norm("Claude 3.5 Sonnet"), "claude-3-5-sonnet");
    assert_string_equal(norm("claude-3-5-sonnet-20241022"), "claude-3-5-sonnet");
    assert_string_equal(norm("  Claude  Haiku 4.5 "), "claude-haiku-4-5");
    assert_string_equal(norm("org/model:v1"), "org-model-v1");
    assert_string_equal(norm("model-12345678"), "model-12345678"); /* not a date */
    assert_string_equal(norm("2024-08-06"), "2024-08-06");         /* nothing before it */
    assert_string_equal(norm(""), "");
    assert_string_equal(norm("---"), "");
    assert_string_equal(norm("caf\xc3\xa9-1"), "caf\xc3\xa9-1");
}

/* --- vendor exports ------------------------------------------------------ */

/* The OpenAI export: amounts summed per day and model from line items
 * (input, output and cached input of one model together), rows without a
 * model kept apart, an empty bucket skipped, the days found. */
static void test_openai_export(void **state)
{
    struct kp_recon_table t;
    struct kp_recon_result r;
    (void)state;

    kp_recon_init(&t, KP_RECON_BY_MODEL, false);
    parse_ok(&t, "OpenAI", openai_csv);
    assert_string_equal(t.vendor, "openai");
    assert_int_equal(t.vendor_rows, 7);
    assert_int_equal(t.first_day, JAN1);
    assert_int_equal(t.last_day, JAN2);
    r = compare(&t, KP_RECON_DEFAULT_THRESHOLD_PPM, true);
    assert_int_equal(r.n_rows, 3);
    expect_row(&r.rows[0], JAN1, "gpt-4o", "", 2062500000, 0, KP_RECON_VENDOR_ONLY);
    expect_row(&r.rows[1], JAN1, "gpt-4o-mini", "", 4500, 0, KP_RECON_VENDOR_ONLY);
    expect_row(&r.rows[2], JAN2, "gpt-4o", "", USD(3), 0, KP_RECON_VENDOR_ONLY);
    assert_int_equal(r.unattributed_rows, 2);
    assert_true(r.unattributed == 520000000);
    assert_true(r.vendor_total == 5062504500);
    kp_recon_result_free(&r);
    kp_recon_close(&t);

    /* Exact names keep the dates. */
    kp_recon_init(&t, KP_RECON_BY_MODEL, true);
    parse_ok(&t, "openai", openai_csv);
    r = compare(&t, KP_RECON_DEFAULT_THRESHOLD_PPM, true);
    assert_string_equal(r.rows[0].model, "gpt-4o-2024-08-06");
    kp_recon_result_free(&r);
    kp_recon_close(&t);
}

/* The Anthropic export: display names normalised, a BOM and CRLF, the
 * web search cost (no model) kept apart. */
static void test_anthropic_export(void **state)
{
    struct kp_recon_table t;
    struct kp_recon_result r;
    (void)state;

    kp_recon_init(&t, KP_RECON_BY_MODEL, false);
    parse_ok(&t, "anthropic", anthropic_csv);
    assert_int_equal(t.vendor_rows, 5);
    r = compare(&t, KP_RECON_DEFAULT_THRESHOLD_PPM, true);
    assert_int_equal(r.n_rows, 3);
    expect_row(&r.rows[0], JAN1, "claude-haiku-4-5", "", 15000000, 0, KP_RECON_VENDOR_ONLY);
    expect_row(&r.rows[1], JAN1, "claude-sonnet-4-5", "", 4650000000, 0, KP_RECON_VENDOR_ONLY);
    expect_row(&r.rows[2], JAN2, "claude-sonnet-4-5", "", USD(2), 0, KP_RECON_VENDOR_ONLY);
    assert_int_equal(r.unattributed_rows, 1);
    assert_true(r.unattributed == 100000000);
    kp_recon_result_free(&r);
    kp_recon_close(&t);
}

/* Header names are matched whatever their case, spacing or punctuation,
 * and a later alias fills in where the preferred column is empty. */
static void test_header_variants(void **state)
{
    struct kp_recon_table t;
    struct kp_recon_result r;
    const char csv[] = "Start Time ISO,START_TIME,Amount Value,Amount-Currency,Line Item\n"
                       ",1767225600,1.5,USD,\"gpt-4o, input\"\n"
                       "2026-01-02T00:00:00Z,,2,usd,\"gpt-4o, output\"\n";
    (void)state;

    kp_recon_init(&t, KP_RECON_BY_MODEL, false);
    parse_ok(&t, "openai", csv);
    r = compare(&t, 0, true);
    assert_int_equal(r.n_rows, 2);
    expect_row(&r.rows[0], JAN1, "gpt-4o", "", 1500000000, 0, KP_RECON_VENDOR_ONLY);
    expect_row(&r.rows[1], JAN2, "gpt-4o", "", USD(2), 0, KP_RECON_VENDOR_ONLY);
    kp_recon_result_free(&r);
    kp_recon_close(&t);

    /* "Cost (USD)" reads as cost_usd. */
    kp_recon_init(&t, KP_RECON_BY_MODEL, false);
    parse_ok(&t, "anthropic", "Usage Date (UTC),Model,Cost (USD)\n2026-01-01,claude-x,1\n");
    assert_int_equal(t.vendor_rows, 1);
    kp_recon_close(&t);
}

/* Missing columns: the message lists what each vendor's export needs and
 * the columns the file has. */
static void test_missing_columns(void **state)
{
    (void)state;
    parse_fails("openai", KP_RECON_BY_MODEL, "foo,bar,baz\n1,2,3\n", KP_EINVAL,
                "line 1: the openai export has no column for a day (start_time_iso, start_time, "
                "usage_date_utc or date); nor for an amount (amount_value, cost_usd, amount or "
                "cost); nor for a model (line_item or model); its columns are: foo, bar, baz");
    /* An OpenAI file read as Anthropic's: only the model is missing. */
    parse_fails("anthropic", KP_RECON_BY_MODEL, "\n\nusage_date_utc,cost_usd,line_item\n",
                KP_EINVAL,
                "line 3: the anthropic export has no column for a model (model or "
                "model_version); its columns are: usage_date_utc, cost_usd, line_item");
    /* Anthropic's usage export (tokens, no cost). */
    parse_fails("anthropic", KP_RECON_BY_MODEL,
                "usage_date_utc,model_version,api_key,workspace,usage_input_tokens_no_cache\n",
                KP_EINVAL, "no column for an amount (cost_usd or cost)");
    /* Comparing by project or key needs the column. */
    parse_fails("anthropic", KP_RECON_BY_PROJECT, "usage_date_utc,model,cost_usd\n", KP_EINVAL,
                "no column for a workspace (workspace, workspace_name or workspace_id): compare "
                "by model");
    parse_fails("openai", KP_RECON_BY_KEY, "date,model,cost\n", KP_EINVAL,
                "no column for a key (api_key_id, api_key_name or api_key)");
    parse_fails("openai", KP_RECON_BY_MODEL, "", KP_EINVAL, "the export is empty");
    parse_fails("openai", KP_RECON_BY_MODEL, "\r\n\r\n", KP_EINVAL, "the export is empty");
    parse_fails("azure", KP_RECON_BY_MODEL, "date,model,cost\n", KP_EINVAL,
                "unknown vendor 'azure'; known: openai, anthropic");
}

/* Bad rows name their line and column and say what is wrong. */
static void test_bad_rows(void **state)
{
    const char head[] = "usage_date_utc,model,cost_usd,currency\n2026-01-01,m,1,usd\n";
    char csv[512];
    (void)state;

#define BAD(row, rc, msg)                                                                          \
    snprintf(csv, sizeof(csv), "%s%s", head, row);                                                 \
    parse_fails("anthropic", KP_RECON_BY_MODEL, csv, rc, msg)
    BAD("2026-01-01,m,1.2.3,usd\n", KP_EPARSE,
        "line 3: cost_usd: '1.2.3' is not an amount in dollars");
    BAD("2026-01-01,m,\"1,000.00\",usd\n", KP_EPARSE, "line 3: cost_usd: '1,000.00' is not");
    BAD("2026-01-01,m,12 USD,usd\n", KP_EPARSE, "line 3: cost_usd: '12 USD' is not");
    BAD("2026-01-01,m,2e9,usd\n", KP_EPARSE, "line 3: cost_usd: '2e9' is more than a billion");
    BAD("2026-01-01,m,1,eur\n", KP_EPARSE, "line 3: currency: 'eur' is not USD");
    BAD("2026-01-32,m,1,usd\n", KP_EPARSE, "line 3: usage_date_utc: '2026-01-32' is not a date");
    BAD(",m,1,usd\n", KP_EPARSE, "line 3: no day (usage_date_utc is empty)");
    BAD("2026-01-01,m,1,usd,extra\n", KP_EPARSE, "line 3: 5 fields, but the header has 4");
    BAD("\n\n2026-01-01,\"m\n2\",x,usd\n", KP_EPARSE, "line 5: cost_usd: 'x' is not");
    BAD("2026-01-01,m,\"1\"x\n", KP_EPARSE, "line 3: text after a closing quote");
    BAD("2026-01-01,\"m,1,usd\n", KP_EPARSE, "line 3: a quoted field is never closed");
    BAD("2026-01-01,\xff\xfe,1,usd\n", KP_EPARSE, "line 3: a model, project or key");
#undef BAD
    /* Control characters in a value are not echoed as they are. */
    parse_fails("anthropic", KP_RECON_BY_MODEL, "usage_date_utc,model,cost_usd\nx\x1b[2J,m,1\n",
                KP_EPARSE, "'x?[2J' is not a date");
    /* A model name over 256 bytes. */
    char longrow[700];
    memset(longrow, 'a', sizeof(longrow));
    memcpy(longrow, "2026-01-01,", 11);
    memcpy(longrow + 600, ",1,usd\n", 8);
    struct kp_buf b;
    kp_buf_init(&b);
    kp_buf_appendf(&b, "%s%s", head, longrow);
    parse_fails("anthropic", KP_RECON_BY_MODEL, b.data, KP_EPARSE, "line 3: model: 'aaaa");
    kp_buf_free(&b);
    /* Cost rows but no model anywhere: the export was not broken down. */
    parse_fails("openai", KP_RECON_BY_MODEL,
                "start_time,amount_value,amount_currency,line_item\n"
                "1767225600,0.89,usd,\n1767312000,0.56,usd,\n",
                KP_EINVAL,
                "none of the 2 cost rows names a model: export the costs broken down by model (in "
                "OpenAI's export dialog: group by line item)");
}

/* Amounts add up exactly, nine decimals and rounding included, and sums
 * past the int64 range are refused rather than wrapped. */
static void test_exact_sums(void **state)
{
    struct kp_recon_table t;
    struct kp_recon_result r;
    struct kp_buf b;
    (void)state;

    /* 0.1 + 0.2 is 0.3, and a thousand 0.000000001 are 0.000001. */
    kp_buf_init(&b);
    kp_buf_append_lit(&b, "usage_date_utc,model,cost_usd\n2026-01-01,m,0.1\n2026-01-01,m,0.2\n");
    for (int i = 0; i < 1000; i++)
        kp_buf_append_lit(&b, "2026-01-02,m,0.000000001\n2026-01-02,m,0.0000000004\n");
    kp_recon_init(&t, KP_RECON_BY_MODEL, false);
    parse_ok(&t, "anthropic", b.data);
    add(&t, false, JAN1, "m", "", USD(3) / 10);
    add(&t, false, JAN2, "m", "", 1000);
    r = compare(&t, 0, true);
    assert_int_equal(r.n_rows, 2);
    expect_row(&r.rows[0], JAN1, "m", "", 300000000, 300000000, KP_RECON_BOTH);
    expect_row(&r.rows[1], JAN2, "m", "", 1000, 1000, KP_RECON_BOTH);
    assert_int_equal(r.differing, 0);
    kp_recon_result_free(&r);
    kp_recon_close(&t);
    kp_buf_free(&b);

    /* Ten rows of a billion dollars overflow int64 nano-USD. */
    kp_buf_init(&b);
    kp_buf_append_lit(&b, "usage_date_utc,model,cost_usd\n");
    for (int i = 0; i < 10; i++)
        kp_buf_append_lit(&b, "2026-01-01,m,1000000000\n");
    parse_fails("anthropic", KP_RECON_BY_MODEL, b.data, KP_ETOOBIG,
                "line 11: the amounts of m add up past the int64 range");
    kp_buf_free(&b);
}

/* --- metered side and comparison ------------------------------------------ */

/* Matching data passes: same sums per day and model, nothing differs. */
static void test_matching_passes(void **state)
{
    struct kp_recon_table t;
    struct kp_recon_result r;
    (void)state;

    kp_recon_init(&t, KP_RECON_BY_MODEL, false);
    parse_ok(&t, "openai", openai_csv);
    metered_ok(&t, openai_metered);
    assert_int_equal(t.metered_rows, 3);
    r = compare(&t, KP_RECON_DEFAULT_THRESHOLD_PPM, false);
    assert_int_equal(r.compared, 3);
    assert_int_equal(r.differing, 0);
    assert_int_equal(r.n_rows, 0);
    assert_true(r.vendor_total == r.metered_total);
    assert_true(r.vendor_total == 5062504500);
    kp_recon_result_free(&r);
    kp_recon_close(&t);
}

/* A 3% discrepancy injected on one day and model is the one row reported,
 * with its exact difference and relative difference; a 0.5% one elsewhere
 * passes at 1% and is reported at 0.1%. */
static void test_injected_discrepancy(void **state)
{
    struct kp_recon_table t;
    struct kp_recon_result r;
    (void)state;

    kp_recon_init(&t, KP_RECON_BY_MODEL, false);
    parse_ok(&t, "anthropic", anthropic_csv);
    metered_ok(&t, "{\"granularity\":\"day\",\"rows\":["
                   "{\"start\":\"2026-01-01T00:00:00Z\",\"model\":\"claude-sonnet-4-5-20250929\","
                   "\"cost_nanousd\":4789500000},"
                   "{\"start\":\"2026-01-01T00:00:00Z\",\"model\":\"claude-haiku-4-5-20251001\","
                   "\"cost_nanousd\":15000000},"
                   "{\"start\":\"2026-01-02T00:00:00Z\",\"model\":\"claude-sonnet-4-5-20250929\","
                   "\"cost_usd\":\"1.990000000\"}]}");
    r = compare(&t, KP_RECON_DEFAULT_THRESHOLD_PPM, false);
    assert_int_equal(r.compared, 3);
    assert_int_equal(r.differing, 1);
    assert_int_equal(r.n_rows, 1);
    expect_row(&r.rows[0], JAN1, "claude-sonnet-4-5", "", 4650000000, 4789500000, KP_RECON_BOTH);
    assert_true(r.rows[0].diff == -139500000);
    assert_int_equal(r.rows[0].rel_ppm, 30000);
    assert_true(r.rows[0].differs);
    kp_recon_result_free(&r);

    r = compare(&t, 1000, false);
    assert_int_equal(r.differing, 2);
    expect_row(&r.rows[1], JAN2, "claude-sonnet-4-5", "", USD(2), 1990000000, KP_RECON_BOTH);
    assert_int_equal(r.rows[1].rel_ppm, 5000);
    kp_recon_result_free(&r);
    kp_recon_close(&t);
}

/* Keys present on one side only are reported as such (a metered key of
 * zero cost is not a difference), and a vendor amount of 0 makes any
 * metered amount a difference. */
static void test_one_sided_rows(void **state)
{
    struct kp_recon_table t;
    struct kp_recon_result r;
    (void)state;

    kp_recon_init(&t, KP_RECON_BY_MODEL, false);
    add(&t, true, JAN1, "gpt-4o", "", USD(5));
    add(&t, true, JAN1, "only-billed", "", USD(1));
    add(&t, false, JAN1, "gpt-4o", "", USD(5));
    add(&t, false, JAN1, "only-metered", "", 250000000);
    add(&t, false, JAN1, "free-model", "", 0);
    add(&t, true, JAN2, "zero-billed", "", 0);
    add(&t, false, JAN2, "zero-billed", "", 1);
    r = compare(&t, KP_RECON_DEFAULT_THRESHOLD_PPM, false);
    assert_int_equal(r.compared, 5);
    assert_int_equal(r.differing, 3);
    assert_int_equal(r.vendor_only, 1);
    assert_int_equal(r.metered_only, 1);
    assert_int_equal(r.n_rows, 3);
    expect_row(&r.rows[0], JAN1, "only-billed", "", USD(1), 0, KP_RECON_VENDOR_ONLY);
    assert_int_equal(r.rows[0].rel_ppm, 1000000);
    expect_row(&r.rows[1], JAN1, "only-metered", "", 0, 250000000, KP_RECON_METERED_ONLY);
    assert_int_equal(r.rows[1].rel_ppm, -1);
    expect_row(&r.rows[2], JAN2, "zero-billed", "", 0, 1, KP_RECON_BOTH);
    kp_recon_result_free(&r);
    kp_recon_close(&t);
}

/* "More than the threshold" is exact at the edge: exactly 1% passes, one
 * nano-dollar more is reported. min_diff hides smaller differences. */
static void test_threshold_edge(void **state)
{
    struct kp_recon_table t;
    struct kp_recon_options opt;
    struct kp_recon_result r;
    (void)state;

    kp_recon_init(&t, KP_RECON_BY_MODEL, true);
    add(&t, true, JAN1, "a", "", USD(100));
    add(&t, false, JAN1, "a", "", USD(99));
    add(&t, true, JAN1, "b", "", USD(100));
    add(&t, false, JAN1, "b", "", USD(99) - 1);
    add(&t, true, JAN1, "c", "", 3);
    add(&t, false, JAN1, "c", "", 6);
    r = compare(&t, KP_RECON_DEFAULT_THRESHOLD_PPM, false);
    assert_int_equal(r.differing, 2);
    assert_string_equal(r.rows[0].model, "b");
    assert_int_equal(r.rows[0].rel_ppm, 10000); /* rounded down, yet more than 1% */
    assert_string_equal(r.rows[1].model, "c");
    kp_recon_result_free(&r);

    kp_recon_options_init(&opt);
    opt.min_diff = 10;
    assert_int_equal(kp_recon_compare(&t, &opt, &r), KP_OK);
    assert_int_equal(r.differing, 1);
    assert_string_equal(r.rows[0].model, "b");
    kp_recon_result_free(&r);
    kp_recon_close(&t);
}

/* Only the days of the range are compared; export rows outside are
 * counted, as are rows without a model inside it. */
static void test_day_range(void **state)
{
    struct kp_recon_table t;
    struct kp_recon_options opt;
    struct kp_recon_result r;
    (void)state;

    kp_recon_init(&t, KP_RECON_BY_MODEL, false);
    parse_ok(&t, "openai", openai_csv);
    kp_recon_options_init(&opt);
    opt.from_day = JAN2;
    opt.to_day = JAN2 + 1;
    opt.all = true;
    assert_int_equal(kp_recon_compare(&t, &opt, &r), KP_OK);
    assert_int_equal(r.n_rows, 1);
    assert_int_equal(r.rows[0].day, JAN2);
    assert_int_equal(r.vendor_outside, 6);
    assert_int_equal(r.unattributed_rows, 0);
    kp_recon_result_free(&r);
    kp_recon_close(&t);
}

/* By project (OpenAI's project name) and by key (Anthropic's key id):
 * the scope is part of the key on both sides. */
static void test_by_project_and_key(void **state)
{
    struct kp_recon_table t;
    struct kp_recon_result r;
    (void)state;

    kp_recon_init(&t, KP_RECON_BY_PROJECT, false);
    parse_ok(&t, "openai", openai_csv);
    metered_ok(&t, "{\"granularity\":\"day\",\"rows\":["
                   "{\"start\":\"2026-01-01T00:00:00Z\",\"project\":\"batch\","
                   "\"model\":\"gpt-4o-2024-08-06\",\"cost_nanousd\":62500000},"
                   "{\"start\":\"2026-01-01T00:00:00Z\",\"project\":\"web\","
                   "\"model\":\"gpt-4o-2024-08-06\",\"cost_nanousd\":2000000000}]}");
    r = compare(&t, KP_RECON_DEFAULT_THRESHOLD_PPM, true);
    assert_int_equal(r.n_rows, 4);
    expect_row(&r.rows[0], JAN1, "gpt-4o", "batch", 62500000, 62500000, KP_RECON_BOTH);
    expect_row(&r.rows[1], JAN1, "gpt-4o", "web", USD(2), USD(2), KP_RECON_BOTH);
    expect_row(&r.rows[2], JAN1, "gpt-4o-mini", "web", 4500, 0, KP_RECON_VENDOR_ONLY);
    expect_row(&r.rows[3], JAN2, "gpt-4o", "web", USD(3), 0, KP_RECON_VENDOR_ONLY);
    assert_int_equal(r.differing, 2);
    kp_recon_result_free(&r);
    kp_recon_close(&t);

    kp_recon_init(&t, KP_RECON_BY_KEY, false);
    parse_ok(&t, "anthropic", anthropic_csv);
    metered_ok(&t, "{\"granularity\":\"day\",\"rows\":["
                   "{\"start\":\"2026-01-01T00:00:00Z\",\"model\":\"claude-haiku-4-5\","
                   "\"key\":\"apikey_01BBB\",\"cost_nanousd\":15000000}]}");
    r = compare(&t, KP_RECON_DEFAULT_THRESHOLD_PPM, true);
    assert_int_equal(r.n_rows, 3);
    expect_row(&r.rows[0], JAN1, "claude-haiku-4-5", "apikey_01BBB", 15000000, 15000000,
               KP_RECON_BOTH);
    expect_row(&r.rows[1], JAN1, "claude-sonnet-4-5", "apikey_01AAA", 4650000000, 0,
               KP_RECON_VENDOR_ONLY);
    kp_recon_result_free(&r);
    kp_recon_close(&t);
}

/* Usage answers that cannot be compared are refused, naming the row. */
static void test_metered_errors(void **state)
{
    (void)state;
    metered_fails(KP_RECON_BY_MODEL, "{}", KP_EINVAL, "the usage answer has no rows");
    metered_fails(KP_RECON_BY_MODEL, "{\"granularity\":\"hour\",\"rows\":[]}", KP_EINVAL,
                  "the usage answer is per hour, not per day");
    metered_fails(KP_RECON_BY_MODEL,
                  "{\"rows\":[{\"start\":\"2026-01-01T00:00:00Z\",\"model\":\"m\","
                  "\"cost_nanousd\":1},{\"start\":\"2026-01-01T00:00:00Z\",\"cost_nanousd\":1}]}",
                  KP_EINVAL, "rows[1]: no model: ask with group_by=model");
    metered_fails(KP_RECON_BY_PROJECT,
                  "{\"rows\":[{\"start\":\"2026-01-01T00:00:00Z\",\"model\":\"m\","
                  "\"cost_nanousd\":1}]}",
                  KP_EINVAL, "rows[0]: no project: ask with group_by=model,project");
    metered_fails(KP_RECON_BY_MODEL, "{\"rows\":[{\"start\":\"soon\",\"model\":\"m\"}]}", KP_EINVAL,
                  "rows[0]: no start day");
    metered_fails(KP_RECON_BY_MODEL,
                  "{\"rows\":[{\"start\":\"2026-01-01T00:00:00Z\",\"model\":\"m\"}]}", KP_EINVAL,
                  "rows[0]: no cost_nanousd");
    metered_fails(KP_RECON_BY_MODEL,
                  "{\"rows\":[{\"start\":\"2026-01-01T00:00:00Z\",\"model\":\"m\","
                  "\"cost_nanousd\":9223372036854775807},{\"start\":\"2026-01-01T00:00:00Z\","
                  "\"model\":\"m\",\"cost_nanousd\":1}]}",
                  KP_ETOOBIG, "rows[1]: the amounts of m add up past the int64 range");
}

/* The JSON document clusterctl prints with -o json. */
static void test_result_json(void **state)
{
    struct kp_recon_table t;
    struct kp_recon_options opt;
    struct kp_recon_result r;
    json_t *doc, *row;
    (void)state;

    kp_recon_init(&t, KP_RECON_BY_KEY, false);
    add(&t, true, JAN1, "Claude Sonnet 4.5", "apikey_01AAA", USD(1));
    add(&t, false, JAN1, "claude-sonnet-4-5-20250929", "apikey_01AAA", 970000000);
    snprintf(t.vendor, sizeof(t.vendor), "anthropic");
    kp_recon_options_init(&opt);
    opt.from_day = JAN1;
    opt.to_day = JAN2;
    assert_int_equal(kp_recon_compare(&t, &opt, &r), KP_OK);
    doc = kp_recon_result_to_json(&t, &opt, &r);
    assert_non_null(doc);
    assert_string_equal(json_string_value(json_object_get(doc, "from")), "2026-01-01");
    assert_string_equal(json_string_value(json_object_get(doc, "to")), "2026-01-02");
    assert_string_equal(json_string_value(json_object_get(doc, "by")), "key");
    assert_true(json_is_false(json_object_get(doc, "ok")));
    assert_int_equal(json_integer_value(json_object_get(doc, "differing")), 1);
    assert_string_equal(json_string_value(json_object_get(doc, "vendor_total_usd")), "1.000000000");
    row = json_array_get(json_object_get(doc, "rows"), 0);
    assert_string_equal(json_string_value(json_object_get(row, "day")), "2026-01-01");
    assert_string_equal(json_string_value(json_object_get(row, "model")), "claude-sonnet-4-5");
    assert_string_equal(json_string_value(json_object_get(row, "key")), "apikey_01AAA");
    assert_string_equal(json_string_value(json_object_get(row, "difference_usd")), "0.030000000");
    assert_int_equal(json_integer_value(json_object_get(row, "relative_ppm")), 30000);
    assert_string_equal(json_string_value(json_object_get(row, "present")), "both");
    json_decref(doc);
    kp_recon_result_free(&r);
    kp_recon_close(&t);
}

/* Too many distinct keys are refused, not allocated. */
static void test_entry_limit(void **state)
{
    struct kp_recon_table t;
    char err[128] = "", model[32];
    (void)state;

    kp_recon_init(&t, KP_RECON_BY_MODEL, true);
    for (uint32_t i = 0; i < KP_RECON_MAX_ENTRIES; i++) {
        snprintf(model, sizeof(model), "m%u", i % 1024);
        assert_int_equal(kp_recon_add(&t, false, (int32_t)(i / 1024), model, "", 1, NULL, 0),
                         KP_OK);
    }
    assert_int_equal(kp_recon_add(&t, false, -1, "m", "", 1, err, sizeof(err)), KP_ETOOBIG);
    assert_string_equal(err, "more than 1048576 distinct days and models");
    /* Existing keys still add up. */
    assert_int_equal(kp_recon_add(&t, false, 0, "m0", "", 1, NULL, 0), KP_OK);
    kp_recon_close(&t);
}

/* A whole reconciliation with allocation failures injected at every step:
 * each fails with KP_ENOMEM or succeeds, and nothing leaks (ASan). */
static void test_out_of_memory(void **state)
{
    (void)state;
    for (long n = 0;; n++) {
        struct kp_recon_table t;
        struct kp_recon_result r;
        json_t *answer = json_loads(openai_metered, 0, NULL);
        char err[256];
        int rc;

        kp_recon_init(&t, KP_RECON_BY_MODEL, false);
        kp_alloc_fail_after(n);
        rc = kp_recon_parse_vendor(&t, "openai", openai_csv, strlen(openai_csv), err, sizeof(err));
        if (rc == KP_OK)
            rc = kp_recon_add_metered_json(&t, answer, err, sizeof(err));
        if (rc == KP_OK) {
            struct kp_recon_options opt;
            kp_recon_options_init(&opt);
            rc = kp_recon_compare(&t, &opt, &r);
        }
        kp_alloc_fail_reset();
        json_decref(answer);
        if (rc == KP_OK) {
            assert_int_equal(r.differing, 0);
            kp_recon_result_free(&r);
            kp_recon_close(&t);
            assert_true(n > 3);
            break;
        }
        assert_int_equal(rc, KP_ENOMEM);
        kp_recon_close(&t);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_amounts),
        cmocka_unit_test(test_thresholds),
        cmocka_unit_test(test_days),
        cmocka_unit_test(test_formatting),
        cmocka_unit_test(test_model_names),
        cmocka_unit_test(test_openai_export),
        cmocka_unit_test(test_anthropic_export),
        cmocka_unit_test(test_header_variants),
        cmocka_unit_test(test_missing_columns),
        cmocka_unit_test(test_bad_rows),
        cmocka_unit_test(test_exact_sums),
        cmocka_unit_test(test_matching_passes),
        cmocka_unit_test(test_injected_discrepancy),
        cmocka_unit_test(test_one_sided_rows),
        cmocka_unit_test(test_threshold_edge),
        cmocka_unit_test(test_day_range),
        cmocka_unit_test(test_by_project_and_key),
        cmocka_unit_test(test_metered_errors),
        cmocka_unit_test(test_result_json),
        cmocka_unit_test(test_entry_limit),
        cmocka_unit_test(test_out_of_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

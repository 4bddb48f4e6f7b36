/* Part of meter/meter.h; include that.
 *
 * Reconciliation: a vendor's cost export against what keyplane metered
 * (docs/reconcile.md says which columns of which export are read and how).
 *
 * A table gathers amounts from both sides under one key: the UTC day, the
 * model (normalised unless exact_models) and, when comparing by project or
 * key, that value. The vendor side comes from the export's CSV text
 * (kp_recon_parse_vendor), the metered side from answers of GET
 * /admin/v1/usage?granularity=day&group_by=model[,project|key]
 * (kp_recon_add_metered_json). kp_recon_compare() then lists the keys whose
 * amounts differ by more than a relative threshold, and those present on
 * one side only. Money is integer nano-USD throughout; decimal amounts are
 * parsed exactly, never through floating point.
 *
 * Everything here works on memory and does no I/O. Input is untrusted: rows
 * are checked (errors name the CSV line or the JSON row), strings are
 * bounded by KP_USAGE_STR_MAX, one amount by KP_RECON_AMOUNT_MAX, sums
 * are checked for overflow, and a table holds at most KP_RECON_MAX_ENTRIES
 * keys, so memory stays proportional to the input and bounded. */
#ifndef KP_METER_RECONCILE_H
#define KP_METER_RECONCILE_H

/* What rows are compared by, besides the day and the model. */
enum kp_recon_by {
    KP_RECON_BY_MODEL,
    KP_RECON_BY_PROJECT, /* the vendor's project (OpenAI) or workspace (Anthropic) */
    KP_RECON_BY_KEY,     /* the vendor's API key */
};

#define KP_RECON_MAX_ENTRIES (1u << 20)
/* The largest amount one row may carry: one billion dollars. */
#define KP_RECON_AMOUNT_MAX ((kp_nanousd)1000000000 * 1000000000)
/* A row differs when |vendor - metered| exceeds this share of the vendor's
 * amount: 1%. In parts per million. */
#define KP_RECON_DEFAULT_THRESHOLD_PPM 10000
/* Vendors whose exports kp_recon_parse_vendor() reads. */
#define KP_RECON_VENDORS "openai, anthropic"

struct kp_recon_entry;

/* Initialise with kp_recon_init(); the public fields are read-only. */
struct kp_recon_table {
    enum kp_recon_by by;
    bool exact_models;
    char vendor[16];       /* the export's vendor, "" before one was read */
    size_t vendor_rows;    /* export rows that carried an amount */
    int32_t first_day;     /* their earliest and latest UTC day (days */
    int32_t last_day;      /* since 1970-01-01); set when vendor_rows > 0 */
    size_t metered_rows;   /* usage rows added */
    bool vendor_has_model; /* at least one export row named a model */
    /* Private. */
    struct kp_recon_entry *entries;
    size_t n_entries, cap_entries;
    uint32_t *slots; /* open addressing: entry index + 1, 0 when free */
    size_t n_slots;
    struct kp_arena strings;
};

void kp_recon_init(struct kp_recon_table *t, enum kp_recon_by by, bool exact_models);
void kp_recon_close(struct kp_recon_table *t);

/* "model", "project", "key" <-> enum kp_recon_by. Parse: KP_EINVAL when
 * unknown. */
const char *kp_recon_by_name(enum kp_recon_by by);
int kp_recon_by_parse(const char *name, enum kp_recon_by *by);

/* Reads the cost export @csv[0..len) of @vendor ("openai" or "anthropic",
 * any case) into the vendor side of @t. The first non-blank record is the
 * header; columns are found by name (case, spaces and punctuation do not
 * matter). KP_EINVAL: an unknown vendor, required columns missing (the
 * message lists what was expected and what was found), no project or key
 * column when @t compares by one, or no row naming a model. KP_EPARSE: the
 * CSV is malformed, or a row holds a bad day, amount, currency or string;
 * the message starts with "line N: ". KP_ETOOBIG: too many keys, or sums
 * that overflow. KP_ENOMEM. After an error @t holds part of the export:
 * close it. No reference to @csv is kept. */
int kp_recon_parse_vendor(struct kp_recon_table *t, const char *vendor, const void *csv, size_t len,
                          char *errmsg, size_t errlen);

/* Adds the rows of one JSON answer of GET /admin/v1/usage (granularity
 * day, grouped by model, and by project or key when @t compares by one)
 * to the metered side. Each row's "start" gives the day and
 * "cost_nanousd" (else "cost_usd") the amount. KP_EINVAL names the row
 * ("rows[3]: no model: ask with group_by=model"); KP_ETOOBIG, KP_ENOMEM. */
int kp_recon_add_metered_json(struct kp_recon_table *t, const json_t *answer, char *errmsg,
                              size_t errlen);

/* Adds @amount to one key of either side; @model and @scope are taken as
 * they are given and normalised here like the rows above (@scope is ignored
 * when comparing by model). KP_EINVAL (a string too long or not UTF-8),
 * KP_ETOOBIG, KP_ENOMEM. */
int kp_recon_add(struct kp_recon_table *t, bool vendor_side, int32_t day, const char *model,
                 const char *scope, kp_nanousd amount, char *errmsg, size_t errlen);

struct kp_recon_options {
    int64_t threshold_ppm; /* differs when |diff| > threshold * |vendor| */
    kp_nanousd min_diff;   /* ... and |diff| > min_diff */
    int32_t from_day;      /* compare the days in [from_day, to_day); */
    int32_t to_day;        /* to_day <= from_day: every day */
    bool all;              /* list every compared key, not only differences */
};

/* Threshold 1%, no minimum, every day, differences only. */
void kp_recon_options_init(struct kp_recon_options *opt);

enum kp_recon_side { KP_RECON_BOTH, KP_RECON_VENDOR_ONLY, KP_RECON_METERED_ONLY };

struct kp_recon_row {
    int32_t day;
    const char *model; /* as compared; points into the table */
    const char *scope; /* project or key; "" when comparing by model */
    kp_nanousd vendor, metered;
    kp_nanousd diff; /* vendor - metered */
    /* |diff| * 10^6 / |vendor|, rounded down (capped at INT64_MAX); -1 when
     * the vendor's amount is 0. */
    int64_t rel_ppm;
    enum kp_recon_side side;
    bool differs;
};

struct kp_recon_result {
    struct kp_recon_row *rows; /* by day, then model, then scope (byte order) */
    size_t n_rows;
    size_t compared;                        /* keys in the range */
    size_t differing;                       /* of which differ */
    size_t vendor_only, metered_only;       /* differing keys present on one side */
    kp_nanousd vendor_total, metered_total; /* over the compared keys */
    /* Export rows in the range that name no model (tools, sessions, use
     * inside the vendor's platform): counted, never compared. */
    size_t unattributed_rows;
    kp_nanousd unattributed;
    size_t vendor_outside; /* export rows outside the range */
};

/* Compares the two sides of @t. KP_ETOOBIG when totals overflow,
 * KP_ENOMEM. The rows point into @t: free @out before closing @t. */
int kp_recon_compare(const struct kp_recon_table *t, const struct kp_recon_options *opt,
                     struct kp_recon_result *out);
void kp_recon_result_free(struct kp_recon_result *r);

/* @r as a JSON document (docs/reconcile.md, "JSON output"); NULL when out
 * of memory. */
json_t *kp_recon_result_to_json(const struct kp_recon_table *t, const struct kp_recon_options *opt,
                                const struct kp_recon_result *r);

/* --- values (also used by clusterctl) ------------------------------------ */

/* A decimal number of US dollars ("12.5", "-0.000004500", "$3", "1E-7",
 * surrounding spaces allowed) into nano-USD, exactly, rounding digits past
 * the ninth decimal to the nearest (halves away from zero). KP_EPARSE when
 * it is not one, KP_ETOOBIG beyond KP_RECON_AMOUNT_MAX. */
int kp_recon_parse_amount(const char *s, kp_nanousd *out);
/* A threshold: "1%", "0.5%" or a fraction "0.01", into parts per million
 * (rounded down). KP_EPARSE when it is not one or is negative. */
int kp_recon_parse_threshold(const char *s, int64_t *ppm);
/* A UTC day from "2026-01-31", an ISO 8601 time with or without an offset
 * ("2026-01-31T23:00:00-02:00" is February 1st), or Unix seconds
 * ("1769817600"; 13 digits or more are milliseconds). KP_EPARSE otherwise. */
int kp_recon_parse_day(const char *s, int32_t *day);
/* The UTC day holding @unix_ms. */
int32_t kp_recon_day_of_ms(int64_t unix_ms);
/* "2026-01-31" (out: at least 11 bytes). */
void kp_recon_format_day(int32_t day, char *out, size_t len);
/* "$1.50", "-$0.000004", "$1234" ... : dollars, at least two decimals,
 * trailing zeros past them dropped. */
void kp_recon_format_usd(kp_nanousd v, char *out, size_t len);
/* "-0.000004500": nine decimals, exact (as cost_usd in the usage API). */
void kp_recon_format_decimal(kp_nanousd v, char *out, size_t len);
/* 31250 -> "3.12%" (rounded down to two decimals). */
void kp_recon_format_ppm(int64_t ppm, char *out, size_t len);
/* The model name as compared unless exact: lower case, every run of other
 * characters than letters and digits one '-', none at either end, then a
 * trailing date (-YYYY-MM-DD or -YYYYMMDD) dropped: "gpt-4o-2024-08-06" and
 * "GPT-4o" give "gpt-4o", "Claude Sonnet 4.5" and
 * "claude-sonnet-4-5-20250929" give "claude-sonnet-4-5". */
void kp_recon_normalize_model(const char *model, char *out, size_t len);
/* |vendor - metered| * 10^6 / |vendor| as in struct kp_recon_row. */
int64_t kp_recon_rel_ppm(kp_nanousd vendor, kp_nanousd metered);

#endif

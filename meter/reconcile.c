/* Reconciliation of a vendor's cost export with metered usage.
 *
 * The happy path: the export's header is matched against the columns each
 * vendor is known to write (a few names each, see `vendors` below and
 * docs/reconcile.md); every data row then yields a UTC day, an amount in
 * nano-USD, a model and, when comparing by one, a project or key, which are
 * summed into a hash table keyed by (day, model, scope). Usage answers add
 * their rows to the other side of the same keys. The comparison walks the
 * table once and keeps the keys whose sides differ by more than the
 * threshold, sorted.
 *
 * The ways it fails: a header that lacks a required column (the message
 * lists the expected names and the ones found), a row whose day, amount,
 * currency or strings do not parse (named by its line), a CSV error from
 * the reader (its line), a usage answer without the dimensions asked for
 * (named by its row), more keys than KP_RECON_MAX_ENTRIES or sums that
 * overflow int64 (KP_ETOOBIG), and running out of memory.
 *
 * Rows of the export that carry no model (OpenAI's tool and session line
 * items, use inside the vendor's platform such as evals; Anthropic's
 * non-token costs) cannot be matched with anything keyplane meters: they
 * are kept under their day as "unattributed" and reported, not compared. */
#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "meter/meter.h"

/* --- decimal values ------------------------------------------------------ */

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static const char *skip_blanks(const char *p)
{
    while (*p == ' ' || *p == '\t')
        p++;
    return p;
}

/* The decimal number @s (surrounding blanks, a sign, with @dollar a '$'
 * after it, digits with an optional point, with @exponent an optional
 * exponent) times 10^@scale, rounded to the nearest integer, halves away
 * from zero. Digits are consumed one at a time into an integer that never
 * exceeds @limit (at most 10^18), so any length of input is exact and safe.
 * KP_EPARSE: not such a number; KP_ETOOBIG: beyond @limit. */
static int parse_scaled(const char *s, int scale, bool dollar, bool exponent, int64_t limit,
                        int64_t *out)
{
    const char *p = skip_blanks(s), *int_digits, *frac_digits = "";
    size_t n_int = 0, n_frac = 0;
    int64_t exp = 0;
    bool neg = false;

    if (*p == '+' || *p == '-')
        neg = *p++ == '-';
    if (dollar && *p == '$')
        p++;
    for (int_digits = p; is_digit(*p); p++)
        n_int++;
    if (*p == '.') {
        for (frac_digits = ++p; is_digit(*p); p++)
            n_frac++;
    }
    if (n_int + n_frac == 0)
        return KP_EPARSE;
    if (exponent && (*p == 'e' || *p == 'E')) {
        bool exp_neg = false;
        p++;
        if (*p == '+' || *p == '-')
            exp_neg = *p++ == '-';
        if (!is_digit(*p))
            return KP_EPARSE;
        for (; is_digit(*p); p++) {
            if (exp < 1000000)
                exp = exp * 10 + (*p - '0');
        }
        if (exp_neg)
            exp = -exp;
    }
    if (*skip_blanks(p) != '\0')
        return KP_EPARSE;

    /* value = digits * 10^shift, digits being the n_int + n_frac digits. */
    int64_t n = (int64_t)(n_int + n_frac);
    int64_t shift = exp - (int64_t)n_frac + scale;
    int64_t keep = shift >= 0 ? n : n + shift; /* digits above the point */
    uint64_t acc = 0;
    for (int64_t i = 0; i < keep; i++) {
        char c = (size_t)i < n_int ? int_digits[i] : frac_digits[(size_t)i - n_int];
        acc = acc * 10 + (uint64_t)(c - '0');
        if (acc > (uint64_t)limit)
            return KP_ETOOBIG;
    }
    for (int64_t i = 0; i < shift && acc != 0; i++) {
        acc *= 10;
        if (acc > (uint64_t)limit)
            return KP_ETOOBIG;
    }
    if (keep >= 0 && keep < n) {
        char c = (size_t)keep < n_int ? int_digits[keep] : frac_digits[(size_t)keep - n_int];
        if (c >= '5' && ++acc > (uint64_t)limit)
            return KP_ETOOBIG;
    }
    *out = neg ? -(int64_t)acc : (int64_t)acc;
    return KP_OK;
}

int kp_recon_parse_amount(const char *s, kp_nanousd *out)
{
    return parse_scaled(s, 9, true, true, KP_RECON_AMOUNT_MAX, out);
}

int kp_recon_parse_threshold(const char *s, int64_t *ppm)
{
    char buf[64];
    size_t n;
    bool percent;
    int64_t v;

    s = skip_blanks(s);
    n = strlen(s);
    if (*s == '-')
        return KP_EPARSE; /* not even "-0" */
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    percent = n > 0 && s[n - 1] == '%';
    if (percent)
        n--;
    if (n >= sizeof(buf))
        return KP_EPARSE;
    memcpy(buf, s, n);
    buf[n] = '\0';
    /* 1% is 10^4 ppm; a fraction of 1 is 10^6 ppm. At most 10^6 %. */
    if (parse_scaled(buf, percent ? 4 : 6, false, false, (int64_t)1 << 40, &v) != KP_OK)
        return KP_EPARSE;
    *ppm = v;
    return KP_OK;
}

/* --- days ---------------------------------------------------------------- */

static int days_in_month(int64_t y, int m)
{
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 && leap ? 29 : days[m - 1];
}

/* @n digits at @p as a number, or -1; reads no further than the first
 * non-digit. */
static int digits_value(const char *p, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!is_digit(p[i]))
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    return v;
}

static int64_t floor_div(int64_t a, int64_t b)
{
    return a / b - (a % b != 0 && (a < 0) != (b < 0));
}

/* "Z", "UTC", "+01:00", "-0530", "+01" or nothing, into seconds east. */
static bool zone_seconds(const char *p, int64_t *east)
{
    int h, m = 0;

    p = skip_blanks(p);
    if (*p == '\0' || strcasecmp(p, "z") == 0 || strcasecmp(p, "utc") == 0) {
        *east = 0;
        return true;
    }
    if ((*p != '+' && *p != '-') || (h = digits_value(p + 1, 2)) < 0)
        return false;
    const char *q = p + 3;
    if (*q == ':')
        q++;
    if (*q != '\0' && ((m = digits_value(q, 2)) < 0 || q[2] != '\0'))
        return false;
    if (h > 23 || m > 59)
        return false;
    *east = (*p == '-' ? -1 : 1) * (h * 3600 + m * 60);
    return true;
}

/* "YYYY-MM-DD", optionally followed by a time and a zone. */
static int parse_date_time(const char *p, int32_t *day)
{
    int64_t y = digits_value(p, 4), secs = 0, east = 0;
    int m = p[4] == '-' ? digits_value(p + 5, 2) : -1;
    int d = m >= 0 && p[7] == '-' ? digits_value(p + 8, 2) : -1;

    if (y < 1 || m < 1 || m > 12 || d < 1 || d > days_in_month(y, m))
        return KP_EPARSE;
    p += 10;
    if (*p == 'T' || *p == 't' || (*p == ' ' && is_digit(p[1]))) {
        int h, mi, s = 0;
        /* Each read stops at the first non-digit, so none passes the NUL. */
        if ((h = digits_value(p + 1, 2)) < 0 || p[3] != ':' || (mi = digits_value(p + 4, 2)) < 0)
            return KP_EPARSE;
        p += 6;
        if (*p == ':') {
            if ((s = digits_value(p + 1, 2)) < 0)
                return KP_EPARSE;
            p += 3;
        }
        if (h > 23 || mi > 59 || s > 60)
            return KP_EPARSE;
        if (*p == '.' || *p == ',') {
            for (p++; is_digit(*p); p++)
                ;
        }
        if (!zone_seconds(p, &east))
            return KP_EPARSE;
        secs = h * 3600 + mi * 60 + s;
    } else if (*skip_blanks(p) != '\0') {
        return KP_EPARSE;
    }
    *day = (int32_t)(kp_days_from_civil(y, m, d) + floor_div(secs - east, 86400));
    return KP_OK;
}

int kp_recon_parse_day(const char *s, int32_t *day)
{
    char buf[64];
    const char *p = skip_blanks(s);
    size_t n = strlen(p), digits;

    while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
        n--;
    if (n == 0 || n >= sizeof(buf))
        return KP_EPARSE;
    memcpy(buf, p, n);
    buf[n] = '\0';
    digits = strspn(buf, "0123456789");
    if (digits == n) {
        /* Unix seconds; from 13 digits on (after 5138 AD), milliseconds. */
        if (n > 16)
            return KP_EPARSE;
        int64_t v = strtoll(buf, NULL, 10);
        *day = (int32_t)(n >= 13 ? v / 86400000 : v / 86400);
        return KP_OK;
    }
    if (n < 10)
        return KP_EPARSE;
    return parse_date_time(buf, day);
}

int32_t kp_recon_day_of_ms(int64_t unix_ms)
{
    return (int32_t)floor_div(unix_ms, 86400000);
}

void kp_recon_format_day(int32_t day, char *out, size_t len)
{
    int64_t y;
    int m, d;
    kp_civil_from_days(day, &y, &m, &d);
    snprintf(out, len, "%04" PRId64 "-%02d-%02d", y, m, d);
}

/* --- formatting ---------------------------------------------------------- */

static uint64_t magnitude(int64_t v)
{
    return v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
}

void kp_recon_format_usd(kp_nanousd v, char *out, size_t len)
{
    uint64_t m = magnitude(v);
    char frac[16];
    int n = snprintf(frac, sizeof(frac), "%09" PRIu64, m % 1000000000);
    while (n > 2 && frac[n - 1] == '0')
        frac[--n] = '\0';
    snprintf(out, len, "%s$%" PRIu64 ".%s", v < 0 ? "-" : "", m / 1000000000, frac);
}

void kp_recon_format_decimal(kp_nanousd v, char *out, size_t len)
{
    kp_format_nanousd(v, out, len);
}

void kp_recon_format_ppm(int64_t ppm, char *out, size_t len)
{
    uint64_t m = magnitude(ppm);
    snprintf(out, len, "%s%" PRIu64 ".%02" PRIu64 "%%", ppm < 0 ? "-" : "", m / 10000,
             m % 10000 / 100);
}

int64_t kp_recon_rel_ppm(kp_nanousd vendor, kp_nanousd metered)
{
    __int128 d = (__int128)vendor - metered;
    __int128 v = vendor;

    if (vendor == 0)
        return -1;
    d = d < 0 ? -d : d;
    v = v < 0 ? -v : v;
    __int128 r = d * 1000000 / v;
    return r > INT64_MAX ? INT64_MAX : (int64_t)r;
}

/* --- model names --------------------------------------------------------- */

/* True when @p (n bytes) reads as a date YYYYMMDD (after removing @dashes
 * from the positions they sit at in "YYYY-MM-DD"). */
static bool looks_like_date(const char *p, bool dashes)
{
    int y = digits_value(p, 4);
    int m = digits_value(p + (dashes ? 5 : 4), 2);
    int d = digits_value(p + (dashes ? 8 : 6), 2);
    if (dashes && (p[4] != '-' || p[7] != '-'))
        return false;
    return y >= 1990 && y <= 2199 && m >= 1 && m <= 12 && d >= 1 && d <= 31;
}

void kp_recon_normalize_model(const char *model, char *out, size_t len)
{
    size_t n = 0;
    bool gap = false;

    if (len == 0)
        return;
    for (const unsigned char *p = (const unsigned char *)model; *p != '\0'; p++) {
        unsigned char c = (unsigned char)tolower(*p);
        /* Bytes of multi-byte UTF-8 characters count as letters. */
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c >= 0x80)) {
            gap = true;
            continue;
        }
        if (gap && n > 0 && n + 1 < len)
            out[n++] = '-';
        gap = false;
        if (n + 1 < len)
            out[n++] = (char)c;
    }
    out[n] = '\0';
    if (n > 11 && out[n - 11] == '-' && looks_like_date(out + n - 10, true))
        out[n - 11] = '\0';
    else if (n > 9 && out[n - 9] == '-' && looks_like_date(out + n - 8, false))
        out[n - 9] = '\0';
}

/* --- the table ----------------------------------------------------------- */

struct kp_recon_entry {
    const char *model, *scope; /* in the table's arena */
    kp_nanousd vendor, metered;
    uint32_t hash;
    int32_t day;
    uint32_t vendor_rows;
    bool unattributed, has_vendor, has_metered;
};

static const char *const by_names[] = {"model", "project", "key"};

const char *kp_recon_by_name(enum kp_recon_by by)
{
    return (unsigned)by < 3 ? by_names[by] : "?";
}

int kp_recon_by_parse(const char *name, enum kp_recon_by *by)
{
    for (int i = 0; i < 3; i++) {
        if (strcasecmp(name, by_names[i]) == 0) {
            *by = (enum kp_recon_by)i;
            return KP_OK;
        }
    }
    return KP_EINVAL;
}

void kp_recon_init(struct kp_recon_table *t, enum kp_recon_by by, bool exact_models)
{
    memset(t, 0, sizeof(*t));
    t->by = by;
    t->exact_models = exact_models;
    kp_arena_init(&t->strings, 64 << 10);
}

void kp_recon_close(struct kp_recon_table *t)
{
    kp_free(t->entries);
    kp_free(t->slots);
    kp_arena_free(&t->strings);
    t->entries = NULL;
    t->slots = NULL;
    t->n_entries = t->cap_entries = t->n_slots = 0;
}

static uint32_t key_hash(int32_t day, bool unattributed, const char *model, const char *scope)
{
    uint32_t h = kp_fnv1a(KP_FNV1A_INIT, &day, sizeof(day));
    h = kp_fnv1a(h, &unattributed, sizeof(unattributed));
    h = kp_fnv1a(h, model, strlen(model) + 1);
    return kp_fnv1a(h, scope, strlen(scope) + 1);
}

static int grow_slots(struct kp_recon_table *t)
{
    size_t n = t->n_slots ? t->n_slots * 2 : 1024;
    uint32_t *slots = kp_calloc(n, sizeof(*slots));

    if (slots == NULL)
        return KP_ENOMEM;
    for (size_t i = 0; i < t->n_entries; i++) {
        size_t s = t->entries[i].hash & (n - 1);
        while (slots[s] != 0)
            s = (s + 1) & (n - 1);
        slots[s] = (uint32_t)i + 1;
    }
    kp_free(t->slots);
    t->slots = slots;
    t->n_slots = n;
    return KP_OK;
}

/* The entry for the key, made when missing. */
static int find_entry(struct kp_recon_table *t, int32_t day, bool unattributed, const char *model,
                      const char *scope, struct kp_recon_entry **out)
{
    uint32_t h = key_hash(day, unattributed, model, scope);
    struct kp_recon_entry *e;
    size_t s;

    if ((t->n_entries + 1) * 2 > t->n_slots && grow_slots(t) != KP_OK)
        return KP_ENOMEM;
    for (s = h & (t->n_slots - 1); t->slots[s] != 0; s = (s + 1) & (t->n_slots - 1)) {
        e = &t->entries[t->slots[s] - 1];
        if (e->hash == h && e->day == day && e->unattributed == unattributed &&
            strcmp(e->model, model) == 0 && strcmp(e->scope, scope) == 0) {
            *out = e;
            return KP_OK;
        }
    }
    if (t->n_entries >= KP_RECON_MAX_ENTRIES)
        return KP_ETOOBIG;
    if (t->n_entries == t->cap_entries) {
        size_t cap = t->cap_entries ? t->cap_entries * 2 : 256;
        void *p = kp_realloc(t->entries, cap * sizeof(*t->entries));
        if (p == NULL)
            return KP_ENOMEM;
        t->entries = p;
        t->cap_entries = cap;
    }
    e = &t->entries[t->n_entries];
    memset(e, 0, sizeof(*e));
    e->model = kp_arena_strndup(&t->strings, model, strlen(model));
    e->scope = kp_arena_strndup(&t->strings, scope, strlen(scope));
    if (e->model == NULL || e->scope == NULL)
        return KP_ENOMEM;
    e->hash = h;
    e->day = day;
    e->unattributed = unattributed;
    t->slots[s] = (uint32_t)++t->n_entries;
    *out = e;
    return KP_OK;
}

/* Adds one row; @model is already the compared form. Errors say what, the
 * caller says where. */
static int add_row(struct kp_recon_table *t, bool vendor_side, int32_t day, bool unattributed,
                   const char *model, const char *scope, kp_nanousd amount, char *errmsg,
                   size_t errlen)
{
    struct kp_recon_entry *e;
    int rc = find_entry(t, day, unattributed, model, t->by == KP_RECON_BY_MODEL ? "" : scope, &e);

    if (rc == KP_ETOOBIG)
        return kp_errf(errmsg, errlen, rc, "more than %u distinct days and models",
                       KP_RECON_MAX_ENTRIES);
    if (rc != KP_OK)
        return kp_errf(errmsg, errlen, rc, "out of memory");
    kp_nanousd *sum = vendor_side ? &e->vendor : &e->metered;
    if (__builtin_add_overflow(*sum, amount, sum))
        return kp_errf(errmsg, errlen, KP_ETOOBIG, "the amounts of %s add up past the int64 range",
                       model[0] ? model : "a day");
    if (vendor_side) {
        e->has_vendor = true;
        e->vendor_rows++;
        if (t->vendor_rows == 0 || day < t->first_day)
            t->first_day = day;
        if (t->vendor_rows == 0 || day > t->last_day)
            t->last_day = day;
        t->vendor_rows++;
        t->vendor_has_model |= !unattributed;
    } else {
        e->has_metered = true;
        t->metered_rows++;
    }
    return KP_OK;
}

static bool valid_string(const char *s)
{
    return kp_usage_str_valid(s, strlen(s));
}

int kp_recon_add(struct kp_recon_table *t, bool vendor_side, int32_t day, const char *model,
                 const char *scope, kp_nanousd amount, char *errmsg, size_t errlen)
{
    char norm[KP_USAGE_STR_MAX + 1];

    if (!valid_string(model) || !valid_string(scope))
        return kp_errf(errmsg, errlen, KP_EINVAL,
                       "a model, project or key longer than %d bytes or not UTF-8",
                       KP_USAGE_STR_MAX);
    if (!t->exact_models) {
        kp_recon_normalize_model(model, norm, sizeof(norm));
        model = norm;
    }
    return add_row(t, vendor_side, day, vendor_side && model[0] == '\0', model, scope, amount,
                   errmsg, errlen);
}

/* --- vendor exports ------------------------------------------------------ */

enum { COL_DAY, COL_AMOUNT, COL_CURRENCY, COL_MODEL, COL_PROJECT, COL_KEY, N_COLS };
enum { MAX_ALIASES = 6, MAX_MATCHES = 8 };

struct column {
    const char *what; /* for messages: "a day" */
    bool required;
    const char *aliases[MAX_ALIASES]; /* header names, best first */
};

struct vendor {
    const char *name;
    struct column cols[N_COLS];
};

/* The columns read from each vendor's export (docs/reconcile.md). */
static const struct vendor vendors[] = {
    {"openai",
     {
         [COL_DAY] = {"a day", true, {"start_time_iso", "start_time", "usage_date_utc", "date"}},
         [COL_AMOUNT] = {"an amount", true, {"amount_value", "cost_usd", "amount", "cost"}},
         [COL_CURRENCY] = {"a currency", false, {"amount_currency", "currency"}},
         [COL_MODEL] = {"a model", true, {"line_item", "model"}},
         [COL_PROJECT] = {"a project", false, {"project_name", "project_id", "project"}},
         [COL_KEY] = {"a key", false, {"api_key_id", "api_key_name", "api_key"}},
     }},
    {"anthropic",
     {
         [COL_DAY] = {"a day", true, {"usage_date_utc", "usage_date", "date"}},
         [COL_AMOUNT] = {"an amount", true, {"cost_usd", "cost"}},
         [COL_CURRENCY] = {"a currency", false, {"currency"}},
         [COL_MODEL] = {"a model", true, {"model", "model_version"}},
         [COL_PROJECT] = {"a workspace", false, {"workspace", "workspace_name", "workspace_id"}},
         [COL_KEY] = {"a key", false, {"api_key_id", "api_key", "api_key_name"}},
     }},
};

/* Where a column's aliases were found in the header, best alias first. */
struct match {
    int n;
    size_t field[MAX_MATCHES];
    int alias[MAX_MATCHES];
};

struct export_reader {
    struct kp_recon_table *t;
    const struct vendor *v;
    struct kp_csv_reader csv;
    struct match m[N_COLS];
    size_t n_header;
    size_t line; /* of the current record */
    char *errmsg;
    size_t errlen;
};

/* A header name as compared: lower case, runs of other characters than
 * letters and digits one '_', none at either end ("Cost (USD)" ->
 * "cost_usd"). */
static void canonical_name(const char *in, char *out, size_t len)
{
    size_t n = 0;
    bool gap = false;
    for (; *in != '\0' && n + 2 < len; in++) {
        char c = (char)tolower((unsigned char)*in);
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))) {
            gap = true;
            continue;
        }
        if (gap && n > 0)
            out[n++] = '_';
        gap = false;
        out[n++] = c;
    }
    out[n] = '\0';
}

/* @s for a message: control characters replaced, cut after @max bytes. */
static void printable(const char *s, size_t max, char *out, size_t len)
{
    size_t n = 0;
    for (; *s != '\0' && n + 4 < len; s++, n++) {
        if (n == max) {
            memcpy(out + n, "...", 3);
            n += 3;
            break;
        }
        out[n] = ((unsigned char)*s < 0x20 || *s == 0x7f) ? '?' : *s;
    }
    out[n] = '\0';
}

static const struct vendor *find_vendor(const char *name)
{
    for (size_t i = 0; i < sizeof(vendors) / sizeof(vendors[0]); i++) {
        if (strcasecmp(name, vendors[i].name) == 0)
            return &vendors[i];
    }
    return NULL;
}

/* "a, b or c" */
static void append_aliases(struct kp_buf *b, const struct column *col)
{
    for (int i = 0; i < MAX_ALIASES && col->aliases[i] != NULL; i++) {
        bool last = i + 1 == MAX_ALIASES || col->aliases[i + 1] == NULL;
        kp_buf_appendf(b, "%s%s", i == 0 ? "" : last ? " or " : ", ", col->aliases[i]);
    }
}

/* The message for a header that lacks required columns. */
static int missing_columns(struct export_reader *x)
{
    struct kp_buf b;
    bool first = true;
    char name[48];

    kp_buf_init(&b);
    kp_buf_appendf(&b, "line %zu: the %s export has no column for ", x->line, x->v->name);
    for (int c = 0; c < N_COLS; c++) {
        if (!x->v->cols[c].required || x->m[c].n > 0)
            continue;
        kp_buf_appendf(&b, "%s%s (", first ? "" : "; nor for ", x->v->cols[c].what);
        append_aliases(&b, &x->v->cols[c]);
        kp_buf_append_lit(&b, ")");
        first = false;
    }
    kp_buf_append_lit(&b, "; its columns are: ");
    for (size_t i = 0; i < x->csv.n_fields; i++) {
        printable(x->csv.fields[i], 40, name, sizeof(name));
        kp_buf_appendf(&b, "%s%s", i ? ", " : "", name[0] ? name : "(empty)");
    }
    int rc = b.data != NULL ? kp_errf(x->errmsg, x->errlen, KP_EINVAL, "%s", b.data)
                            : kp_errf(x->errmsg, x->errlen, KP_ENOMEM, "out of memory");
    kp_buf_free(&b);
    return rc;
}

static int check_scope_column(struct export_reader *x)
{
    int c = x->t->by == KP_RECON_BY_PROJECT ? COL_PROJECT : COL_KEY;
    struct kp_buf b;

    if (x->t->by == KP_RECON_BY_MODEL || x->m[c].n > 0)
        return KP_OK;
    kp_buf_init(&b);
    kp_buf_appendf(&b, "the %s export has no column for %s (", x->v->name, x->v->cols[c].what);
    append_aliases(&b, &x->v->cols[c]);
    kp_buf_appendf(&b, "): compare by model, or export the costs broken down by %s",
                   kp_recon_by_name(x->t->by));
    int rc = b.data != NULL ? kp_errf(x->errmsg, x->errlen, KP_EINVAL, "%s", b.data)
                            : kp_errf(x->errmsg, x->errlen, KP_ENOMEM, "out of memory");
    kp_buf_free(&b);
    return rc;
}

/* Finds the columns of the header record. */
static int read_header(struct export_reader *x)
{
    char name[64];

    x->n_header = x->csv.n_fields;
    for (int c = 0; c < N_COLS; c++) {
        const struct column *col = &x->v->cols[c];
        for (int a = 0; a < MAX_ALIASES && col->aliases[a] != NULL; a++) {
            for (size_t f = 0; f < x->csv.n_fields && x->m[c].n < MAX_MATCHES; f++) {
                canonical_name(x->csv.fields[f], name, sizeof(name));
                if (strcmp(name, col->aliases[a]) == 0) {
                    x->m[c].field[x->m[c].n] = f;
                    x->m[c].alias[x->m[c].n++] = a;
                }
            }
        }
    }
    for (int c = 0; c < N_COLS; c++) {
        if (x->v->cols[c].required && x->m[c].n == 0)
            return missing_columns(x);
    }
    return check_scope_column(x);
}

/* The first non-empty value of column @c in the current record, with the
 * header name it came from; "" when none. */
static const char *value(struct export_reader *x, int c, const char **name)
{
    const struct match *m = &x->m[c];
    for (int i = 0; i < m->n; i++) {
        if (m->field[i] < x->csv.n_fields && x->csv.fields[m->field[i]][0] != '\0') {
            *name = x->v->cols[c].aliases[m->alias[i]];
            return x->csv.fields[m->field[i]];
        }
    }
    *name = m->n > 0 ? x->v->cols[c].aliases[m->alias[0]] : "";
    return "";
}

static int bad_value(struct export_reader *x, int rc, const char *column, const char *text,
                     const char *why)
{
    char shown[48];
    printable(text, 40, shown, sizeof(shown));
    return kp_errf(x->errmsg, x->errlen, rc, "line %zu: %s: '%s' %s", x->line, column, shown, why);
}

/* The model an OpenAI cost line item is for: "gpt-4o-2024-08-06, cached
 * input" and "gpt-image-1 image, output" name one (the text before the last
 * comma, up to a space); "web search tool calls" and "evals | gpt-4o,
 * input" (used inside OpenAI's platform) do not. Writes "" for none. */
static void line_item_model(const char *item, char *out, size_t len)
{
    const char *comma = strrchr(item, ',');
    size_t n;

    out[0] = '\0';
    if (comma == NULL || memchr(item, '|', (size_t)(comma - item)) != NULL)
        return;
    item = skip_blanks(item);
    n = strcspn(item, " \t,");
    if (n >= len)
        n = len - 1;
    memcpy(out, item, n);
    out[n] = '\0';
}

/* Trims blanks at both ends into @out; false when too long. */
static bool trimmed(const char *s, char *out, size_t len)
{
    s = skip_blanks(s);
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    if (n >= len)
        return false;
    memcpy(out, s, n);
    out[n] = '\0';
    return true;
}

static int read_row(struct export_reader *x)
{
    char model[KP_USAGE_STR_MAX + 1], scope[KP_USAGE_STR_MAX + 1], rowerr[128];
    const char *col, *text;
    kp_nanousd amount;
    int32_t day;
    int rc;

    if (x->csv.n_fields > x->n_header)
        return kp_errf(x->errmsg, x->errlen, KP_EPARSE,
                       "line %zu: %zu fields, but the header has %zu", x->line, x->csv.n_fields,
                       x->n_header);
    /* A row without an amount is a bucket that cost nothing. */
    if ((text = value(x, COL_AMOUNT, &col))[0] == '\0')
        return KP_OK;
    rc = kp_recon_parse_amount(text, &amount);
    if (rc != KP_OK)
        return bad_value(x, KP_EPARSE, col, text,
                         rc == KP_ETOOBIG ? "is more than a billion dollars"
                                          : "is not an amount in dollars");
    text = value(x, COL_CURRENCY, &col);
    if (text[0] != '\0' && strcasecmp(text, "usd") != 0)
        return bad_value(x, KP_EPARSE, col, text, "is not USD, the only currency read");
    text = value(x, COL_DAY, &col);
    if (text[0] == '\0')
        return kp_errf(x->errmsg, x->errlen, KP_EPARSE, "line %zu: no day (%s is empty)", x->line,
                       col);
    if (kp_recon_parse_day(text, &day) != KP_OK)
        return bad_value(x, KP_EPARSE, col, text, "is not a date or a time");
    text = value(x, COL_MODEL, &col);
    if (strcmp(col, "line_item") == 0)
        line_item_model(text, model, sizeof(model));
    else if (!trimmed(text, model, sizeof(model)))
        return bad_value(x, KP_EPARSE, col, text, "is longer than 256 bytes");
    scope[0] = '\0';
    if (x->t->by != KP_RECON_BY_MODEL) {
        text = value(x, x->t->by == KP_RECON_BY_PROJECT ? COL_PROJECT : COL_KEY, &col);
        if (!trimmed(text, scope, sizeof(scope)))
            return bad_value(x, KP_EPARSE, col, text, "is longer than 256 bytes");
    }
    rc = kp_recon_add(x->t, true, day, model, scope, amount, rowerr, sizeof(rowerr));
    if (rc != KP_OK)
        return kp_errf(x->errmsg, x->errlen, rc == KP_EINVAL ? KP_EPARSE : rc, "line %zu: %s",
                       x->line, rowerr);
    return KP_OK;
}

static bool blank_record(const struct kp_csv_reader *r)
{
    return r->n_fields == 1 && r->fields[0][0] == '\0';
}

int kp_recon_parse_vendor(struct kp_recon_table *t, const char *vendor, const void *csv, size_t len,
                          char *errmsg, size_t errlen)
{
    struct export_reader x;
    bool header = false;
    int rc;

    memset(&x, 0, sizeof(x));
    x.t = t;
    x.errmsg = errmsg;
    x.errlen = errlen;
    if ((x.v = find_vendor(vendor)) == NULL)
        return kp_errf(errmsg, errlen, KP_EINVAL, "unknown vendor '%.32s'; known: %s", vendor,
                       KP_RECON_VENDORS);
    snprintf(t->vendor, sizeof(t->vendor), "%s", x.v->name);
    kp_csv_reader_init(&x.csv, csv, len);
    rc = KP_OK;
    while (rc == KP_OK && kp_csv_next(&x.csv)) {
        x.line = x.csv.line;
        if (blank_record(&x.csv))
            continue;
        rc = header ? read_row(&x) : read_header(&x);
        header = true;
    }
    if (rc == KP_OK && x.csv.err != KP_OK) {
        rc = kp_errf(errmsg, errlen, x.csv.err, "%s", x.csv.errmsg);
    } else if (rc == KP_OK && !header) {
        rc = kp_errf(errmsg, errlen, KP_EINVAL, "the export is empty: no header row");
    } else if (rc == KP_OK && t->vendor_rows > 0 && !t->vendor_has_model) {
        rc = kp_errf(errmsg, errlen, KP_EINVAL,
                     "none of the %zu cost rows names a model: export the costs broken down by "
                     "model%s",
                     t->vendor_rows,
                     strcmp(x.v->name, "openai") == 0
                         ? " (in OpenAI's export dialog: group by line item)"
                         : "");
    }
    kp_csv_reader_close(&x.csv);
    return rc;
}

/* --- metered usage ------------------------------------------------------- */

int kp_recon_add_metered_json(struct kp_recon_table *t, const json_t *answer, char *errmsg,
                              size_t errlen)
{
    const json_t *rows = json_object_get(answer, "rows"), *row;
    const char *granularity = json_string_value(json_object_get(answer, "granularity"));
    const char *dim = t->by == KP_RECON_BY_MODEL ? NULL : kp_recon_by_name(t->by);
    char rowerr[128];
    size_t i;

    if (!json_is_array(rows))
        return kp_errf(errmsg, errlen, KP_EINVAL, "the usage answer has no rows");
    if (granularity != NULL && strcmp(granularity, "day") != 0)
        return kp_errf(errmsg, errlen, KP_EINVAL, "the usage answer is per %.16s, not per day",
                       granularity);
    json_array_foreach(rows, i, row)
    {
        const char *start = json_string_value(json_object_get(row, "start"));
        const char *model = json_string_value(json_object_get(row, "model"));
        const char *scope = dim ? json_string_value(json_object_get(row, dim)) : "";
        const json_t *nano = json_object_get(row, "cost_nanousd");
        const char *usd = json_string_value(json_object_get(row, "cost_usd"));
        kp_nanousd cost;
        int32_t day;
        int rc;

        if (start == NULL || kp_recon_parse_day(start, &day) != KP_OK)
            return kp_errf(errmsg, errlen, KP_EINVAL, "rows[%zu]: no start day", i);
        if (model == NULL)
            return kp_errf(errmsg, errlen, KP_EINVAL,
                           "rows[%zu]: no model: ask with group_by=model", i);
        if (scope == NULL)
            return kp_errf(errmsg, errlen, KP_EINVAL,
                           "rows[%zu]: no %s: ask with group_by=model,%s", i, dim, dim);
        if (json_is_integer(nano))
            cost = json_integer_value(nano);
        else if (usd == NULL || kp_recon_parse_amount(usd, &cost) != KP_OK)
            return kp_errf(errmsg, errlen, KP_EINVAL, "rows[%zu]: no cost_nanousd", i);
        rc = kp_recon_add(t, false, day, model, scope, cost, rowerr, sizeof(rowerr));
        if (rc != KP_OK)
            return kp_errf(errmsg, errlen, rc, "rows[%zu]: %s", i, rowerr);
    }
    return KP_OK;
}

/* --- comparison ---------------------------------------------------------- */

void kp_recon_options_init(struct kp_recon_options *opt)
{
    memset(opt, 0, sizeof(*opt));
    opt->threshold_ppm = KP_RECON_DEFAULT_THRESHOLD_PPM;
}

static bool in_range(const struct kp_recon_options *opt, int32_t day)
{
    return opt->to_day <= opt->from_day || (day >= opt->from_day && day < opt->to_day);
}

/* Fills @row from @e and says whether it differs: by more than min_diff,
 * and by more than the threshold's share of the vendor's amount (any
 * amount when the vendor's is 0). Exact: 128-bit products. */
static bool judge(const struct kp_recon_entry *e, const struct kp_recon_options *opt,
                  struct kp_recon_row *row)
{
    __int128 d = (__int128)e->vendor - e->metered;
    __int128 ad = d < 0 ? -d : d;
    __int128 av = e->vendor < 0 ? -(__int128)e->vendor : e->vendor;

    row->day = e->day;
    row->model = e->model;
    row->scope = e->scope;
    row->vendor = e->vendor;
    row->metered = e->metered;
    row->diff = d > INT64_MAX ? INT64_MAX : d < INT64_MIN ? INT64_MIN : (kp_nanousd)d;
    row->rel_ppm = kp_recon_rel_ppm(e->vendor, e->metered);
    row->side = e->has_vendor && e->has_metered ? KP_RECON_BOTH
                : e->has_vendor                 ? KP_RECON_VENDOR_ONLY
                                                : KP_RECON_METERED_ONLY;
    row->differs =
        ad != 0 && ad > opt->min_diff && (av == 0 || ad * 1000000 > av * opt->threshold_ppm);
    return row->differs;
}

static int row_order(const void *a, const void *b)
{
    const struct kp_recon_row *x = a, *y = b;
    int c;
    if (x->day != y->day)
        return x->day < y->day ? -1 : 1;
    if ((c = strcmp(x->model, y->model)) != 0)
        return c;
    return strcmp(x->scope, y->scope);
}

int kp_recon_compare(const struct kp_recon_table *t, const struct kp_recon_options *opt,
                     struct kp_recon_result *out)
{
    memset(out, 0, sizeof(*out));
    if (t->n_entries > 0 && (out->rows = kp_calloc(t->n_entries, sizeof(*out->rows))) == NULL)
        return KP_ENOMEM;
    for (size_t i = 0; i < t->n_entries; i++) {
        const struct kp_recon_entry *e = &t->entries[i];
        struct kp_recon_row row;
        bool overflow = false;

        if (!in_range(opt, e->day)) {
            out->vendor_outside += e->vendor_rows;
            continue;
        }
        if (e->unattributed) {
            out->unattributed_rows += e->vendor_rows;
            overflow = __builtin_add_overflow(out->unattributed, e->vendor, &out->unattributed);
        } else {
            out->compared++;
            overflow = __builtin_add_overflow(out->vendor_total, e->vendor, &out->vendor_total) ||
                       __builtin_add_overflow(out->metered_total, e->metered, &out->metered_total);
            if (judge(e, opt, &row)) {
                out->differing++;
                out->vendor_only += row.side == KP_RECON_VENDOR_ONLY;
                out->metered_only += row.side == KP_RECON_METERED_ONLY;
            }
            if (row.differs || opt->all)
                out->rows[out->n_rows++] = row;
        }
        if (overflow) {
            kp_recon_result_free(out);
            return KP_ETOOBIG;
        }
    }
    if (out->n_rows > 1)
        qsort(out->rows, out->n_rows, sizeof(*out->rows), row_order);
    return KP_OK;
}

void kp_recon_result_free(struct kp_recon_result *r)
{
    kp_free(r->rows);
    r->rows = NULL;
    r->n_rows = 0;
}

/* --- JSON ---------------------------------------------------------------- */

static int set_money(json_t *obj, const char *name, kp_nanousd v)
{
    char key[48], text[40];
    kp_recon_format_decimal(v, text, sizeof(text));
    snprintf(key, sizeof(key), "%s_usd", name);
    if (json_object_set_new(obj, key, json_string(text)) != 0)
        return -1;
    snprintf(key, sizeof(key), "%s_nanousd", name);
    return json_object_set_new(obj, key, json_integer(v));
}

static const char *side_name(enum kp_recon_side side)
{
    return side == KP_RECON_BOTH ? "both" : side == KP_RECON_VENDOR_ONLY ? "vendor" : "metered";
}

static json_t *row_to_json(const struct kp_recon_table *t, const struct kp_recon_row *row)
{
    char day[16];
    json_t *obj;
    int rc;

    kp_recon_format_day(row->day, day, sizeof(day));
    obj = json_pack("{s:s, s:s}", "day", day, "model", row->model);
    if (obj == NULL)
        return NULL;
    rc = t->by != KP_RECON_BY_MODEL
             ? json_object_set_new(obj, kp_recon_by_name(t->by), json_string(row->scope))
             : 0;
    rc |= set_money(obj, "vendor", row->vendor);
    rc |= set_money(obj, "metered", row->metered);
    rc |= set_money(obj, "difference", row->diff);
    rc |= json_object_set_new(obj, "relative_ppm",
                              row->rel_ppm < 0 ? json_null() : json_integer(row->rel_ppm));
    rc |= json_object_set_new(obj, "present", json_string(side_name(row->side)));
    rc |= json_object_set_new(obj, "differs", json_boolean(row->differs));
    if (rc != 0) {
        json_decref(obj);
        return NULL;
    }
    return obj;
}

json_t *kp_recon_result_to_json(const struct kp_recon_table *t, const struct kp_recon_options *opt,
                                const struct kp_recon_result *r)
{
    json_t *doc = json_object(), *rows = json_array();
    char from[16], to[16];
    int rc = doc == NULL || rows == NULL;

    if (!rc && opt->to_day > opt->from_day) {
        kp_recon_format_day(opt->from_day, from, sizeof(from));
        kp_recon_format_day(opt->to_day, to, sizeof(to));
        rc |= json_object_set_new(doc, "from", json_string(from));
        rc |= json_object_set_new(doc, "to", json_string(to));
    }
    if (!rc) {
        rc |= json_object_set_new(doc, "vendor", json_string(t->vendor));
        rc |= json_object_set_new(doc, "by", json_string(kp_recon_by_name(t->by)));
        rc |= json_object_set_new(doc, "exact_models", json_boolean(t->exact_models));
        rc |= json_object_set_new(doc, "threshold_ppm", json_integer(opt->threshold_ppm));
        rc |= set_money(doc, "min_diff", opt->min_diff);
        rc |= json_object_set_new(doc, "ok", json_boolean(r->differing == 0));
        rc |= json_object_set_new(doc, "compared", json_integer((json_int_t)r->compared));
        rc |= json_object_set_new(doc, "differing", json_integer((json_int_t)r->differing));
        rc |= json_object_set_new(doc, "vendor_only", json_integer((json_int_t)r->vendor_only));
        rc |= json_object_set_new(doc, "metered_only", json_integer((json_int_t)r->metered_only));
        rc |= set_money(doc, "vendor_total", r->vendor_total);
        rc |= set_money(doc, "metered_total", r->metered_total);
        rc |= set_money(doc, "unattributed", r->unattributed);
        rc |= json_object_set_new(doc, "unattributed_rows",
                                  json_integer((json_int_t)r->unattributed_rows));
        rc |= json_object_set_new(doc, "vendor_rows_outside",
                                  json_integer((json_int_t)r->vendor_outside));
    }
    for (size_t i = 0; !rc && i < r->n_rows; i++)
        rc |= json_array_append_new(rows, row_to_json(t, &r->rows[i]));
    if (!rc)
        rc |= json_object_set(doc, "rows", rows);
    json_decref(rows);
    if (rc) {
        json_decref(doc);
        return NULL;
    }
    return doc;
}

/* Key balances: the meter query behind them and the figures shown
 * (docs/balances.md). The query is the usage API's own
 * (meter/rollup.h), filtered to one key with one total bucket, so a
 * balance's spent figure is exactly what GET /admin/v1/usage answers for
 * that key over the same minutes. */
#include <inttypes.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "balance.h"
#include "meter/meter.h"

/* The usage API's longest span, less a minute for its rounding. */
#define SPAN_MAX_MS (KP_USAGE_MAX_SPAN_MS - 60000)

/* The cost of @key over [from, to) into *@cost; *@from_out is where the
 * meter started counting (from rounded down to the minute). */
static int cost_of(struct kp_meter_store *m, const char *key, int64_t from, int64_t to,
                   kp_nanousd *cost, int64_t *from_out, char *errmsg, size_t errlen)
{
    struct kp_usage_query q;
    struct kp_usage_result *res = NULL;
    char f[32], t[32], filter[160];
    snprintf(f, sizeof(f), "%" PRId64, from);
    snprintf(t, sizeof(t), "%" PRId64, to);
    snprintf(filter, sizeof(filter), "key:%s", key);
    kp_usage_query_init(&q, to);
    int rc = kp_usage_query_param(&q, "from", f, errmsg, errlen);
    if (rc == KP_OK)
        rc = kp_usage_query_param(&q, "to", t, errmsg, errlen);
    if (rc == KP_OK)
        rc = kp_usage_query_param(&q, "granularity", "total", errmsg, errlen);
    if (rc == KP_OK)
        rc = kp_usage_query_param(&q, "filter", filter, errmsg, errlen);
    if (rc == KP_OK)
        rc = kp_usage_query_finish(&q, errmsg, errlen);
    if (rc == KP_OK)
        rc = kp_meter_store_query(m, &q, &res, errmsg, errlen);
    if (rc == KP_OK) {
        *cost = kp_usage_result_cost(res);
        *from_out = q.from_ms;
        kp_usage_result_free(res);
    }
    kp_usage_query_free(&q);
    return rc == KP_OK || rc == KP_ENOMEM ? rc : KP_EIO;
}

int kp_balance_query(struct kp_meter_store *m, const char *key, int64_t since_ms, int64_t now_ms,
                     struct kp_balance_spend *out, char *errmsg, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    int64_t to = now_ms + 1, from = since_ms;
    out->recent_from_ms = now_ms;
    if (from >= to)
        return KP_OK; /* counts from the future: nothing spent yet */
    if (to - from > SPAN_MAX_MS)
        from = to - SPAN_MAX_MS;
    int64_t counted_from;
    int rc = cost_of(m, key, from, to, &out->spent, &counted_from, errmsg, errlen);
    if (rc != KP_OK)
        return rc;
    int64_t day_ago = now_ms - KP_BALANCE_BURN_WINDOW_MS;
    if (from >= day_ago) {
        out->recent = out->spent;
        out->recent_from_ms = counted_from;
        return KP_OK;
    }
    return cost_of(m, key, day_ago, to, &out->recent, &out->recent_from_ms, errmsg, errlen);
}

void kp_balance_figures(const struct kp_key_balance *b, const struct kp_key_health *h,
                        const struct kp_balance_spend *s, int64_t now_ms,
                        struct kp_balance_figures *out)
{
    memset(out, 0, sizeof(*out));
    out->credit = b != NULL ? b->credit : 0;
    out->spent = s->spent;
    out->remaining = out->credit - s->spent;
    if (h != NULL && h->provider_balance_ms > 0) {
        out->remaining = h->provider_balance;
        out->provider_ms = h->provider_balance_ms;
    }
    out->burn_from_ms = s->recent_from_ms;
    /* At least a minute, so that the first call after since_ms does not
     * read as a rate of dollars per millisecond. */
    int64_t window = now_ms - s->recent_from_ms;
    if (window < 60000)
        window = 60000;
    if (s->recent > 0)
        out->burn_per_hour = (kp_nanousd)((double)s->recent * 3600000.0 / (double)window);
    out->exhausted = out->remaining <= 0;
    if (!out->exhausted && out->burn_per_hour > 0) {
        double ms = (double)out->remaining * 3600000.0 / (double)out->burn_per_hour;
        /* Beyond year 9999 is never. */
        if (ms < 253402300799999.0 - (double)now_ms)
            out->exhaustion_at_ms = now_ms + (int64_t)ms;
    }
}

bool kp_balance_parse_usd(const char *s, bool negative_ok, kp_nanousd *out)
{
    kp_nanousd whole = 0, frac = 0;
    int digits = 0, whole_digits = 0, decimals = -1;
    bool negative = negative_ok && *s == '-';
    for (const char *p = s + negative; *p != '\0'; p++) {
        if (*p == '.' && decimals < 0) {
            decimals = 0;
            continue;
        }
        /* At most 10 whole digits: 9 * 10^9 dollars still fits. */
        if (*p < '0' || *p > '9' || decimals >= 9 || (decimals < 0 && ++whole_digits > 10))
            return false;
        digits++;
        if (decimals >= 0) {
            frac = frac * 10 + (*p - '0');
            decimals++;
        } else {
            whole = whole * 10 + (*p - '0');
        }
    }
    if (digits == 0 || whole > INT64_C(9000000000))
        return false;
    for (decimals = decimals < 0 ? 0 : decimals; decimals < 9; decimals++)
        frac *= 10;
    *out = (whole * 1000000000 + frac) * (negative ? -1 : 1);
    return true;
}

/* The value at JSON pointer @ptr in @root ("~1" is '/', "~0" is '~';
 * arrays by index); NULL when there is none. */
static json_t *at_pointer(json_t *root, const char *ptr)
{
    json_t *v = root;
    const char *p = ptr;
    while (v != NULL && *p == '/') {
        char tok[128];
        size_t n = 0;
        for (p++; *p != '\0' && *p != '/'; p++) {
            char c = *p;
            if (c == '~' && (p[1] == '0' || p[1] == '1'))
                c = *++p == '0' ? '~' : '/';
            if (n + 1 >= sizeof(tok))
                return NULL;
            tok[n++] = c;
        }
        tok[n] = '\0';
        if (json_is_object(v)) {
            v = json_object_get(v, tok);
        } else if (json_is_array(v)) {
            char *end;
            unsigned long i = strtoul(tok, &end, 10);
            v = n > 0 && *end == '\0' ? json_array_get(v, i) : NULL;
        } else {
            v = NULL;
        }
    }
    return *p == '\0' ? v : NULL;
}

static bool usd_at(json_t *root, const char *ptr, kp_nanousd *out)
{
    json_t *v = at_pointer(root, ptr);
    if (json_is_number(v)) {
        double d = json_number_value(v) * 1e9;
        if (!(d > -9e17 && d < 9e17))
            return false;
        *out = (kp_nanousd)(d < 0 ? d - 0.5 : d + 0.5);
        return true;
    }
    return json_is_string(v) && kp_balance_parse_usd(json_string_value(v), true, out);
}

int kp_balance_from_provider(const char *body, size_t len, const char *pointer,
                             const char *used_pointer, kp_nanousd *out, char *errmsg, size_t errlen)
{
    json_t *root = json_loadb(body, len, 0, NULL);
    kp_nanousd have = 0, used = 0;
    int rc = KP_OK;
    if (root == NULL) {
        snprintf(errmsg, errlen, "the answer is not JSON");
        rc = KP_EPARSE;
    } else if (!usd_at(root, pointer, &have)) {
        snprintf(errmsg, errlen, "no amount in dollars at %s", pointer);
        rc = KP_EPARSE;
    } else if (used_pointer != NULL && !usd_at(root, used_pointer, &used)) {
        snprintf(errmsg, errlen, "no amount in dollars at %s", used_pointer);
        rc = KP_EPARSE;
    }
    json_decref(root);
    if (rc == KP_OK)
        *out = have - used;
    return rc;
}

void kp_balance_usd(kp_nanousd v, char *out, size_t len)
{
    uint64_t a = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    snprintf(out, len, "%s%" PRIu64 ".%09" PRIu64, v < 0 ? "-" : "", a / 1000000000u,
             a % 1000000000u);
}

static int set_money(json_t *o, const char *name, kp_nanousd v)
{
    char key[48], usd[40];
    snprintf(key, sizeof(key), "%s_nanousd", name);
    kp_balance_usd(v, usd, sizeof(usd));
    int rc = json_object_set_new(o, key, json_integer(v));
    snprintf(key, sizeof(key), "%s_usd", name);
    return rc | json_object_set_new(o, key, json_string(usd));
}

static int set_time(json_t *o, const char *name, int64_t ms)
{
    char t[32];
    if (ms == 0)
        return json_object_set_new(o, name, json_null());
    kp_format_time_ms(ms, t, sizeof(t));
    return json_object_set_new(o, name, json_string(t));
}

static json_t *topups_json(const struct kp_key_balance *b)
{
    json_t *a = json_array();
    for (uint32_t i = 0; a != NULL && i < b->ntopups; i++) {
        const struct kp_balance_topup *t = &b->topups[i];
        json_t *o = json_object();
        int rc = o == NULL || set_money(o, "amount", t->amount) || set_time(o, "at", t->at_ms) ||
                 json_object_set_new(o, "by", t->by ? json_string(t->by) : json_null()) ||
                 json_object_set_new(o, "note", t->note ? json_string(t->note) : json_null()) ||
                 json_array_append_new(a, o);
        if (rc != 0) {
            json_decref(a);
            return NULL;
        }
    }
    return a;
}

json_t *kp_balance_json(const char *key, const struct kp_key_balance *b,
                        const struct kp_balance_figures *f)
{
    json_t *o = json_object();
    if (o == NULL)
        return NULL;
    int rc = json_object_set_new(o, "key", json_string(key));
    if (b != NULL) {
        rc |= json_object_set_new(o, "version", json_integer((json_int_t)b->e.version));
        rc |= set_money(o, "credit", f->credit);
        rc |= set_time(o, "since", b->since_ms);
        rc |= json_object_set_new(o, "since_ms", json_integer(b->since_ms));
        rc |= set_money(o, "spent", f->spent);
    }
    rc |= set_money(o, "remaining", f->remaining);
    rc |= set_money(o, "burn_per_hour", f->burn_per_hour);
    rc |= set_time(o, "burn_since", f->burn_from_ms);
    rc |= json_object_set_new(o, "exhausted", json_boolean(f->exhausted));
    rc |= set_time(o, "exhaustion_at", f->exhaustion_at_ms);
    rc |= json_object_set_new(o, "source", json_string(f->provider_ms ? "provider" : "meter"));
    if (f->provider_ms)
        rc |= set_time(o, "provider_balance_at", f->provider_ms);
    rc |= json_object_set_new(o, "topups", b != NULL ? topups_json(b) : json_array());
    if (rc != 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

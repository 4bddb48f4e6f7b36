/* Key balances: the meter query behind them and the figures shown
 * (docs/balances.md). The query is the usage API's own
 * (meter/rollup.h), filtered to one key with one total bucket, so a
 * balance's spent figure is exactly what GET /admin/v1/usage answers for
 * that key over the same minutes. */
#include <inttypes.h>
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

void kp_balance_figures(const struct kp_key_balance *b, const struct kp_balance_spend *s,
                        int64_t now_ms, struct kp_balance_figures *out)
{
    memset(out, 0, sizeof(*out));
    out->credit = b->credit;
    out->spent = s->spent;
    out->remaining = b->credit - s->spent;
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

json_t *kp_balance_json(const struct kp_key_balance *b, const struct kp_balance_figures *f)
{
    json_t *o = json_object();
    if (o == NULL)
        return NULL;
    int rc = json_object_set_new(o, "key", json_string(b->e.id));
    rc |= json_object_set_new(o, "version", json_integer((json_int_t)b->e.version));
    rc |= set_money(o, "credit", f->credit);
    rc |= set_time(o, "since", b->since_ms);
    rc |= json_object_set_new(o, "since_ms", json_integer(b->since_ms));
    rc |= set_money(o, "spent", f->spent);
    rc |= set_money(o, "remaining", f->remaining);
    rc |= set_money(o, "burn_per_hour", f->burn_per_hour);
    rc |= set_time(o, "burn_since", f->burn_from_ms);
    rc |= json_object_set_new(o, "exhausted", json_boolean(f->exhausted));
    rc |= set_time(o, "exhaustion_at", f->exhaustion_at_ms);
    rc |= json_object_set_new(o, "source", json_string("meter"));
    rc |= json_object_set_new(o, "topups", topups_json(b));
    if (rc != 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* The control API's key balances (docs/balances.md, docs/control-api.md):
 *
 *   PUT  /admin/v1/keys/{id}/balance         set_key_balance: the credit and since
 *   POST /admin/v1/keys/{id}/balance/topups  add_key_topup: more credit, with a note
 *   GET  /admin/v1/keys/{id}/balance         the record, with the meter's cost
 *                                            subtracted, the burn rate and the
 *                                            projected exhaustion
 *
 * The writes are ordinary registry writes (forwarded to the leader,
 * audited) and answer the stored record. The read needs the meter: a
 * meter answers from its store on the threadpool, as usage queries do
 * (admin_usage.c); any other node relays the request to a meter. The
 * record is the meter node's view of the registry, which may trail the
 * leader's by the entries it has not applied yet. */
#include <stdio.h>
#include <string.h>

#include "admin_internal.h"
#include "balance.h"

/* --- writes ---------------------------------------------------------------------------- */

/* Only @allowed (NULL-terminated) may appear in @body. False after
 * answering 400. */
static bool only_fields(struct kp_admin_req *r, json_t *body, const char *const *allowed)
{
    const char *k;
    json_t *v;
    json_object_foreach(body, k, v)
    {
        bool ok = false;
        for (size_t i = 0; allowed[i] != NULL && !ok; i++)
            ok = strcmp(k, allowed[i]) == 0;
        if (!ok) {
            char q[80];
            kp_admin__quote(q, sizeof(q), k);
            kp_admin__fail(r, 400, "invalid_field", q, "%s: not a field of this request", q);
            return false;
        }
    }
    return true;
}

/* An amount given as "<name>_nanousd" (an integer) or "<name>_usd" (a
 * number or a decimal string), exactly one of them, @min..max. False
 * after answering 400. */
static bool amount_of(struct kp_admin_req *r, json_t *body, const char *name, kp_nanousd min,
                      kp_nanousd *out)
{
    char nano[48], usd[48];
    snprintf(nano, sizeof(nano), "%s_nanousd", name);
    snprintf(usd, sizeof(usd), "%s_usd", name);
    json_t *n = json_object_get(body, nano), *u = json_object_get(body, usd);
    bool ok = (n == NULL) != (u == NULL);
    if (ok && n != NULL) {
        ok = json_is_integer(n);
        *out = ok ? json_integer_value(n) : 0;
    } else if (ok && json_is_number(u)) {
        double d = json_number_value(u) * 1e9;
        ok = d >= 0 && d <= (double)KP_BALANCE_CREDIT_MAX;
        *out = ok ? (kp_nanousd)(d + 0.5) : 0;
    } else if (ok) {
        ok = json_is_string(u) && kp_balance_parse_usd(json_string_value(u), false, out);
    }
    if (ok && *out >= min && *out <= KP_BALANCE_CREDIT_MAX)
        return true;
    kp_admin__fail(r, 400, "invalid_field", n != NULL ? nano : usd,
                   "%s: give exactly one of %s (an integer) or %s (dollars, a number or a "
                   "decimal string), %s 0 and at most 10^9 dollars",
                   n != NULL ? nano : usd, nano, usd, min > 0 ? "above" : "at least");
    return false;
}

static void propose(struct kp_admin_req *r, struct kp_command *cmd)
{
    struct kp_buf buf;
    if (!kp_admin__encode(r, cmd, &buf))
        return;
    struct kp_admin_write *w = kp_admin__write_new(r, KP_KIND_KEY_BALANCE, r->id);
    if (w == NULL) {
        kp_buf_free(&buf);
        return;
    }
    kp_admin__submit(w, &buf, true);
}

void kp_admin__balance_put(struct kp_admin_req *r)
{
    static const char *const fields[] = {"credit_usd", "credit_nanousd", "since", NULL};
    json_t *body = kp_admin__body(r, false);
    if (body == NULL)
        return;
    struct kp_cmd_set_balance set = {.id = (char *)r->id};
    json_t *since = json_object_get(body, "since");
    bool ok = only_fields(r, body, fields) && amount_of(r, body, "credit", 0, &set.credit);
    if (ok && json_is_integer(since)) {
        set.since_ms = json_integer_value(since);
    } else if (ok && since != NULL &&
               (!json_is_string(since) ||
                kp_usage_parse_time(json_string_value(since), &set.since_ms) != KP_OK)) {
        kp_admin__fail(r, 400, "invalid_field", "since",
                       "since: an RFC 3339 UTC time, a date YYYY-MM-DD or Unix milliseconds");
        ok = false;
    }
    json_decref(body);
    if (!ok)
        return;
    struct kp_command cmd;
    kp_admin__envelope(r, &cmd, KP_OP_SET_KEY_BALANCE);
    cmd.body.set_balance = &set;
    propose(r, &cmd);
}

void kp_admin__balance_topup(struct kp_admin_req *r)
{
    static const char *const fields[] = {"amount_usd", "amount_nanousd", "note", NULL};
    json_t *body = kp_admin__body(r, false);
    if (body == NULL)
        return;
    struct kp_cmd_add_topup add = {.id = (char *)r->id};
    json_t *note = json_object_get(body, "note");
    bool ok = only_fields(r, body, fields) && amount_of(r, body, "amount", 1, &add.amount);
    if (ok && note != NULL && !json_is_string(note)) {
        kp_admin__fail(r, 400, "invalid_field", "note", "note: a string");
        ok = false;
    }
    if (ok) {
        add.note = note != NULL ? (char *)json_string_value(note) : NULL;
        struct kp_command cmd;
        kp_admin__envelope(r, &cmd, KP_OP_ADD_KEY_TOPUP);
        cmd.body.add_topup = &add;
        propose(r, &cmd);
    }
    json_decref(body);
}

/* --- read -------------------------------------------------------------------------------- */

struct balance_work {
    uv_work_t work;
    struct kp_admin_req *r;
    struct kp_meter_store *store;
    struct kp_view *view; /* holds @b and @h */
    const char *key;
    const struct kp_key_balance *b; /* NULL: none recorded */
    const struct kp_key_health *h;  /* NULL: never probed */
    int64_t since;                  /* the meter counts from here */
    int64_t now;
    struct kp_balance_spend spend;
    int rc;
    char errmsg[256];
};

static void balance_query(uv_work_t *w)
{
    struct balance_work *u = w->data;
    u->rc = kp_balance_query(u->store, u->key, u->since, u->now, &u->spend, u->errmsg,
                             sizeof(u->errmsg));
}

static void balance_done(uv_work_t *w, int status)
{
    struct balance_work *u = w->data;
    struct kp_admin_req *r = u->r;
    (void)status;
    if (u->rc == KP_ENOMEM) {
        kp_admin__oom(r);
    } else if (u->rc != KP_OK) {
        kp_admin__fail(r, 503, "meter_storage", NULL, "%s", u->errmsg);
    } else {
        struct kp_balance_figures f;
        kp_balance_figures(u->b, u->h, &u->spend, u->now, &f);
        json_t *v = kp_balance_json(u->key, u->b, &f);
        if (v != NULL)
            json_object_set_new(v, "meter", json_string(r->n->cfg->node_name));
        if (v == NULL)
            kp_admin__oom(r);
        else
            kp_admin__respond(r, 200, v, u->b != NULL ? u->b->e.version : 0, false);
    }
    kp_view_release(u->view);
    kp_free(u);
}

void kp_admin__balance_get(struct kp_admin_req *r)
{
    if (kp_admin__relay_to_meter(r))
        return;
    struct kp_view *view = kp_admin__view(r);
    if (view == NULL)
        return;
    const struct kp_key_balance *b = kp_view_key_balance(view, r->id);
    const struct kp_key_health *h = kp_view_key_health(view, r->id);
    if (h != NULL && h->provider_balance_ms == 0)
        h = NULL;
    if (b == NULL && h == NULL) {
        bool key = kp_view_key(view, r->id) != NULL;
        kp_view_release(view);
        char q[140];
        kp_admin__quote(q, sizeof(q), r->id);
        if (key)
            kp_admin__fail(r, 404, "not_found", NULL,
                           "key '%s' has no balance: set one with PUT /admin/v1/keys/%s/balance "
                           "(or give its provider a balance endpoint the canary reads)",
                           q, q);
        else
            kp_admin__fail(r, 404, "not_found", NULL, "no key '%s'", q);
        return;
    }
    struct balance_work *u = kp_calloc(1, sizeof(*u));
    if (u == NULL) {
        kp_view_release(view);
        kp_admin__oom(r);
        return;
    }
    *u = (struct balance_work){
        .r = r, .view = view, .key = r->id, .b = b, .h = h, .now = kp_now_unix_ms()};
    /* Without a recorded credit only the burn rate needs the meter. */
    u->since = b != NULL ? b->since_ms : u->now - KP_BALANCE_BURN_WINDOW_MS;
    u->work.data = u;
    u->store = kp_metering_store(r->n);
    if (uv_queue_work(kp_http_loop(r->ex), &u->work, balance_query, balance_done) != 0) {
        kp_view_release(view);
        kp_free(u);
        kp_admin__fail(r, 503, "busy", NULL, "retry shortly");
    }
}

/* One canary probe, run by whichever node the health leader picked
 * (docs/health.md): open the key's primary secret, send the provider's
 * cheap request (canary_rules.c), meter the answer as canary traffic from
 * this node, classify it; when the provider has a balance endpoint and
 * the probe succeeded, read it with the same key (docs/balances.md). The
 * leader calls kp_canary_probe for probes it
 * runs itself; other nodes run it for POST /internal/v1/canary, so probes
 * spread over the live routers and each is metered where it was sent. */
#include <stdio.h>
#include <string.h>

#include "balance.h"
#include "canary.h"
#include "node.h"

enum { PROBE_TIMEOUT_MS = 10000 };

struct probe_call {
    struct kp_node *n;
    kp_canary_probe_cb cb;
    void *arg;
    int64_t started_ms;
    uint64_t mono_start_us;
    struct kp_canary_answer answer;
    char key[129];
    char provider[129];
};

static int send_request(struct probe_call *p, const struct kp_key *key,
                        const struct kp_canary_request *req, kp_call_cb cb, char *errmsg,
                        size_t errlen);

static void meter(struct probe_call *p, long status, const char *cls)
{
    struct kp_usage_event ev;
    kp_usage_event_init(&ev);
    ev.time_ms = p->started_ms;
    char rid[192];
    snprintf(rid, sizeof(rid), "canary-%lld-%s", (long long)p->started_ms, p->key);
    kp_usage_set_str(ev.request_id, rid);
    kp_usage_set_str(ev.node, p->n->cfg->node_name);
    kp_usage_set_str(ev.key_id, p->key);
    kp_usage_set_str(ev.provider, p->provider);
    kp_usage_set_str(ev.kind, KP_USAGE_KIND_CANARY);
    kp_usage_set_str(ev.error_class, cls);
    ev.status = status > 0 && status < 1000 ? (uint16_t)status : 0;
    ev.total_us = kp_now_mono_us() - p->mono_start_us;
    kp_metering_record(p->n, &ev);
}

static void deliver(struct probe_call *p)
{
    p->cb(p->arg, &p->answer);
    kp_free(p);
}

static void balance_answered(void *arg, const struct kp_call_result *r)
{
    struct probe_call *p = arg;
    struct kp_view *v = kp_view_acquire(&p->n->views);
    const struct kp_provider *prov = v ? kp_view_provider(v, p->provider) : NULL;
    char why[320] = "";
    if (prov == NULL || prov->balance_pointer == NULL)
        snprintf(why, sizeof(why), "the provider no longer has a balance endpoint");
    else if (r->status < 200 || r->status > 299)
        snprintf(why, sizeof(why), "answered %ld%s%s", r->status, r->status ? "" : ": ",
                 r->status ? "" : r->error);
    else if (kp_balance_from_provider((const char *)r->body.data, r->body.len,
                                      prov->balance_pointer, prov->balance_used_pointer,
                                      &p->answer.balance, why, sizeof(why)) == KP_OK)
        p->answer.has_balance = true;
    if (!p->answer.has_balance)
        kp_warn("canary", "key %s: provider %s's balance endpoint not read: %s", p->key,
                p->provider, why);
    if (v != NULL)
        kp_view_release(v);
    deliver(p);
}

/* After a good probe, the balance endpoint when the provider has one;
 * false when there is nothing to read (or it could not be sent). */
static bool read_balance(struct probe_call *p)
{
    struct kp_view *v = kp_view_acquire(&p->n->views);
    const struct kp_key *key = v ? kp_view_key(v, p->key) : NULL;
    const struct kp_provider *prov = key ? kp_view_provider(v, key->provider) : NULL;
    struct kp_canary_request req;
    char errmsg[256];
    bool sent = prov != NULL && kp_canary_balance_request(prov, key, &req) == KP_OK &&
                send_request(p, key, &req, balance_answered, errmsg, sizeof(errmsg)) == KP_OK;
    if (v != NULL)
        kp_view_release(v);
    return sent;
}

static void answered(void *arg, const struct kp_call_result *r)
{
    struct probe_call *p = arg;
    struct kp_canary_answer *a = &p->answer;
    a->status = r->status;
    bool timed_out = r->status == 0 && strstr(r->error, "imeout") != NULL;
    a->outcome =
        kp_canary_classify(r->status, (const char *)r->body.data, timed_out, &a->error_class);
    meter(p, r->status, a->error_class);
    /* Registered once (the same name returns the same family). */
    kp_metric_family_add(
        kp_metric_family_counter("keyplane_canary_probes_total",
                                 "Canary probes this node sent, by provider and result (ok or the "
                                 "error class).",
                                 2, (const char *[]){"provider", "result"}, 256),
        (const char *[]){p->provider, a->error_class[0] ? a->error_class : "ok"}, 1);
    if (a->outcome == KP_CANARY_OK && read_balance(p))
        return;
    deliver(p);
}

/* Open the key's primary secret; NULL (and a warning) when it cannot be. */
static struct kp_secret *open_secret(struct kp_node *n, const struct kp_key *key)
{
    const struct kp_key_secret *ks = kp_key_primary(key);
    struct kp_secret *s = NULL;
    char why[256];
    if (ks == NULL)
        return NULL;
    int rc = kp_seal_open(n->kek, ks->sealed.p, ks->sealed.n, key->e.id, ks->version, &s, why,
                          sizeof(why));
    if (rc == KP_EPERM && n->prev_kek != NULL)
        rc = kp_seal_open(n->prev_kek, ks->sealed.p, ks->sealed.n, key->e.id, ks->version, &s, why,
                          sizeof(why));
    if (rc != KP_OK)
        kp_warn("canary", "key %s: cannot open its secret: %s", key->e.id, why);
    return rc == KP_OK ? s : NULL;
}

/* Send @r with @key's secret; the secret goes only into the auth header,
 * which is wiped once libcurl copied it. */
static int send_request(struct probe_call *p, const struct kp_key *key,
                        const struct kp_canary_request *r, kp_call_cb cb, char *errmsg,
                        size_t errlen)
{
    const struct kp_canary_request req = *r;
    struct kp_secret *secret = open_secret(p->n, key);
    if (secret == NULL) {
        snprintf(errmsg, errlen, "key %s: its secret cannot be opened on this node", key->e.id);
        return KP_EPERM;
    }
    size_t slen = kp_secret_len(secret);
    char auth[1200];
    int pre = snprintf(auth, sizeof(auth), "%s: %s", req.auth_name, req.bearer ? "Bearer " : "");
    if (pre < 0 || (size_t)pre + slen + 1 > sizeof(auth)) {
        kp_secret_free(secret);
        snprintf(errmsg, errlen, "key %s: its secret is too long for a header", key->e.id);
        return KP_ETOOBIG;
    }
    memcpy(auth + pre, kp_secret_data(secret), slen);
    auth[(size_t)pre + slen] = '\0';
    kp_secret_free(secret);
    const char *hdrs[6] = {auth, "Accept: application/json"};
    size_t nh = 2;
    if (req.body[0])
        hdrs[nh++] = "Content-Type: application/json";
    if (req.anthropic_version)
        hdrs[nh++] = "anthropic-version: 2023-06-01";
    hdrs[nh] = NULL;
    int rc =
        kp_call_start(p->n->rt->main_loop, req.method, req.url, hdrs, req.body[0] ? req.body : NULL,
                      strlen(req.body), PROBE_TIMEOUT_MS, cb, p);
    kp_secret_wipe(auth, sizeof(auth));
    if (rc != KP_OK)
        snprintf(errmsg, errlen, "out of memory");
    return rc;
}

int kp_canary_probe(struct kp_node *n, const char *key_id, int64_t started_ms,
                    kp_canary_probe_cb cb, void *arg, char *errmsg, size_t errlen)
{
    struct kp_view *v = kp_view_acquire(&n->views);
    const struct kp_key *key = v ? kp_view_key(v, key_id) : NULL;
    const struct kp_provider *prov = key ? kp_view_provider(v, key->provider) : NULL;
    int rc = KP_ENOENT;
    if (v == NULL)
        snprintf(errmsg, errlen, "this node has no registry view yet");
    else if (key == NULL)
        snprintf(errmsg, errlen, "no key '%s' in this node's registry view", key_id);
    else if (prov == NULL)
        snprintf(errmsg, errlen, "key %s: no provider '%s'", key_id, key->provider);
    else {
        struct probe_call *p = kp_calloc(1, sizeof(*p));
        rc = KP_ENOMEM;
        if (p == NULL)
            snprintf(errmsg, errlen, "out of memory");
        else {
            *p = (struct probe_call){.n = n, .cb = cb, .arg = arg, .started_ms = started_ms};
            p->mono_start_us = kp_now_mono_us();
            snprintf(p->key, sizeof(p->key), "%s", key->e.id);
            snprintf(p->provider, sizeof(p->provider), "%s", prov->e.id);
            struct kp_canary_request req;
            rc = kp_canary_request(prov, key, &req);
            if (rc != KP_OK)
                snprintf(errmsg, errlen, "provider %s: its base URL or the key's model is too long",
                         prov->e.id);
            else
                rc = send_request(p, key, &req, answered, errmsg, errlen);
            if (rc != KP_OK)
                kp_free(p);
        }
    }
    if (v != NULL)
        kp_view_release(v);
    return rc;
}

/* --- POST /internal/v1/canary {"key","started_ms"} ------------------------------------- */

struct relay {
    struct kp_http_exchange *ex;
    char rid[160];
};

static void relay_answered(void *arg, const struct kp_canary_answer *a)
{
    struct relay *r = arg;
    json_t *v = json_pack("{s:I,s:s,s:s}", "status", (json_int_t)a->status, "outcome",
                          kp_canary_outcome_name(a->outcome), "error_class", a->error_class);
    if (v != NULL && a->has_balance)
        json_object_set_new(v, "balance_nanousd", json_integer(a->balance));
    kp_node_respond_json(r->ex, 200, r->rid, v);
    kp_free(r);
}

void kp_canary_internal(struct kp_node *n, struct kp_http_exchange *ex,
                        const struct kp_http_request *req, const char *rid)
{
    json_error_t jerr;
    json_t *body = json_loadb(req->body, req->body_len, 0, &jerr);
    const char *key = NULL;
    json_int_t started = 0;
    if (body == NULL || json_unpack(body, "{s:s,s:I}", "key", &key, "started_ms", &started) != 0 ||
        started <= 0) {
        json_decref(body);
        kp_admin_error(ex, 400, rid, "invalid_request", "invalid_json", "",
                       "the body must be {\"key\": ID, \"started_ms\": MS}");
        return;
    }
    struct relay *r = kp_calloc(1, sizeof(*r));
    char errmsg[256] = "out of memory";
    int rc = KP_ENOMEM;
    if (r != NULL) {
        r->ex = ex;
        snprintf(r->rid, sizeof(r->rid), "%s", rid);
        rc = kp_canary_probe(n, key, (int64_t)started, relay_answered, r, errmsg, sizeof(errmsg));
    }
    json_decref(body);
    if (rc == KP_OK)
        return;
    kp_free(r);
    kp_admin_error(ex, rc == KP_ENOENT ? 404 : 503, rid, "unavailable", "probe_not_sent", NULL,
                   errmsg);
}

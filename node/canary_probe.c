/* One canary probe, run by whichever node the health leader picked
 * (docs/health.md): open the key's primary secret, send the provider's
 * cheap request (canary_rules.c), meter the answer as canary traffic from
 * this node, classify it. The leader calls kp_canary_probe for probes it
 * runs itself; other nodes run it for POST /internal/v1/canary, so probes
 * spread over the live routers and each is metered where it was sent. */
#include <stdio.h>
#include <string.h>

#include "canary.h"
#include "node.h"

enum { PROBE_TIMEOUT_MS = 10000 };

struct probe_call {
    struct kp_node *n;
    kp_canary_probe_cb cb;
    void *arg;
    int64_t started_ms;
    uint64_t mono_start_us;
    char key[129];
    char provider[129];
};

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

static void answered(void *arg, const struct kp_call_result *r)
{
    struct probe_call *p = arg;
    struct kp_canary_answer a = {.status = r->status};
    bool timed_out = r->status == 0 && strstr(r->error, "imeout") != NULL;
    a.outcome =
        kp_canary_classify(r->status, (const char *)r->body.data, timed_out, &a.error_class);
    meter(p, r->status, a.error_class);
    /* Registered once (the same name returns the same family). */
    kp_metric_family_add(
        kp_metric_family_counter("keyplane_canary_probes_total",
                                 "Canary probes this node sent, by provider and result (ok or the "
                                 "error class).",
                                 2, (const char *[]){"provider", "result"}, 256),
        (const char *[]){p->provider, a.error_class[0] ? a.error_class : "ok"}, 1);
    p->cb(p->arg, &a);
    kp_free(p);
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

/* Send the probe of @key; the secret goes only into the auth header, which
 * is wiped once libcurl copied it. */
static int send_probe(struct probe_call *p, const struct kp_key *key,
                      const struct kp_provider *prov, char *errmsg, size_t errlen)
{
    struct kp_canary_request req;
    if (kp_canary_request(prov, key, &req) != KP_OK) {
        snprintf(errmsg, errlen, "provider %s: its base URL or the key's model is too long",
                 prov->e.id);
        return KP_ETOOBIG;
    }
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
                      strlen(req.body), PROBE_TIMEOUT_MS, answered, p);
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
            if ((rc = send_probe(p, key, prov, errmsg, errlen)) != KP_OK)
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
    kp_node_respond_json(r->ex, 200, r->rid,
                         json_pack("{s:I,s:s,s:s}", "status", (json_int_t)a->status, "outcome",
                                   kp_canary_outcome_name(a->outcome), "error_class",
                                   a->error_class));
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

/* What a webhook receives (docs/alerts.md, "Webhooks"): the checks a
 * webhook entity must pass, the two body shapes, the delivery id, the
 * HMAC signature and the retry schedule. Pure; node/alerts.c sends.
 *
 * Kind "generic" gets the alert's fields and the event as one JSON object;
 * kind "slack" gets {"text": ...}, which Slack's incoming webhooks (and
 * the many chat tools that copied them) post as a message. A body is the
 * same on every attempt and on every leader, so a receiver that keeps the
 * delivery id can drop the duplicates at-least-once delivery allows.
 *
 * The url and the secret are credentials (a Slack webhook url is one):
 * nothing here puts either into a message. */
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "alerts.h"
#include "core/core.h"

enum {
    MAX_ATTEMPTS_DEFAULT = 5,
    BACKOFF_MS_DEFAULT = 8000, /* 8 + 16 + 32 + 64 s: five tries over two minutes */
    BACKOFF_MS_MAX = 3600000,
};

static const char *param(const struct kp_strmap *m, const char *name)
{
    for (uint32_t i = 0; m != NULL && i < m->n; i++) {
        if (strcmp(m->v[i].key, name) == 0)
            return m->v[i].value;
    }
    return NULL;
}

static int fail(char *errmsg, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char *errmsg, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errmsg, errlen, fmt, ap);
    va_end(ap);
    return KP_EINVAL;
}

static bool parse_uint(const char *s, long long min, long long max, long long *out)
{
    char *end = NULL;
    if (s == NULL || *s < '0' || *s > '9')
        return false;
    long long v = strtoll(s, &end, 10);
    if (*end != '\0' || v < min || v > max)
        return false;
    *out = v;
    return true;
}

/* Whether the host of @url (after the scheme) is this machine. */
static bool loopback_host(const char *host, size_t n)
{
    if (n > 0 && host[0] == '[')
        return n >= 5 && strncmp(host, "[::1]", 5) == 0;
    size_t h = 0;
    while (h < n && host[h] != ':')
        h++;
    if (h == 9 && strncasecmp(host, "localhost", 9) == 0)
        return true;
    if (h >= 4 && strncmp(host, "127.", 4) == 0)
        return true;
    return h == 7 && strncmp(host, "0.0.0.0", 7) == 0;
}

static int check_url(const char *url, bool insecure, char *errmsg, size_t errlen)
{
    size_t scheme = strncmp(url, "https://", 8) == 0 ? 8 : strncmp(url, "http://", 7) == 0 ? 7 : 0;
    if (scheme == 0)
        return fail(errmsg, errlen, "params.url: must start with https://");
    for (const char *p = url; *p; p++) {
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f)
            return fail(errmsg, errlen, "params.url: may contain only printable ASCII, no spaces");
    }
    const char *host = url + scheme;
    size_t n = strcspn(host, "/?#");
    if (n == 0)
        return fail(errmsg, errlen, "params.url: has no host");
    if (memchr(host, '@', n) != NULL)
        return fail(errmsg, errlen,
                    "params.url: must not carry credentials (user:password@); use the "
                    "secret param to sign deliveries");
    if (scheme == 7 && !insecure)
        return fail(errmsg, errlen,
                    "params.url: http:// needs allow_insecure \"true\" (meant for loopback "
                    "receivers in tests)");
    if (loopback_host(host, n) && !insecure)
        return fail(errmsg, errlen,
                    "params.url: a loopback host needs allow_insecure \"true\" (meant for tests)");
    return KP_OK;
}

int kp_webhook_check(const char *kind, const struct kp_strmap *params,
                     struct kp_webhook_target *out, char *errmsg, size_t errlen)
{
    struct kp_webhook_target t = {.max_attempts = MAX_ATTEMPTS_DEFAULT,
                                  .backoff_ms = BACKOFF_MS_DEFAULT};
    long long v;
    if (kind != NULL && strcmp(kind, "generic") == 0)
        t.kind = KP_WEBHOOK_GENERIC;
    else if (kind != NULL && strcmp(kind, "slack") == 0)
        t.kind = KP_WEBHOOK_SLACK;
    else
        return fail(errmsg, errlen, "kind: must be generic or slack");
    const char *insecure = param(params, "allow_insecure");
    for (uint32_t i = 0; params != NULL && i < params->n; i++) {
        const char *k = params->v[i].key;
        if (strcmp(k, "url") != 0 && strcmp(k, "secret") != 0 && strcmp(k, "allow_insecure") != 0 &&
            strcmp(k, "max_attempts") != 0 && strcmp(k, "backoff_ms") != 0)
            return fail(errmsg, errlen,
                        "params.%s: not a webhook param (url, secret, allow_insecure, "
                        "max_attempts, backoff_ms)",
                        k);
    }
    if (insecure != NULL && strcmp(insecure, "true") != 0 && strcmp(insecure, "false") != 0)
        return fail(errmsg, errlen, "params.allow_insecure: must be \"true\" or \"false\"");
    t.url = param(params, "url");
    if (t.url == NULL)
        return fail(errmsg, errlen, "params.url: required");
    int rc = check_url(t.url, insecure != NULL && strcmp(insecure, "true") == 0, errmsg, errlen);
    if (rc != KP_OK)
        return rc;
    t.secret = param(params, "secret");
    if (t.secret != NULL && (strlen(t.secret) < 16 || strlen(t.secret) > 256))
        return fail(errmsg, errlen, "params.secret: 16 to 256 bytes");
    const char *s = param(params, "max_attempts");
    if (s != NULL && !parse_uint(s, 1, 10, &v))
        return fail(errmsg, errlen, "params.max_attempts: an integer from 1 to 10");
    if (s != NULL)
        t.max_attempts = (unsigned)v;
    s = param(params, "backoff_ms");
    if (s != NULL && !parse_uint(s, 100, 600000, &v))
        return fail(errmsg, errlen, "params.backoff_ms: an integer from 100 to 600000");
    if (s != NULL)
        t.backoff_ms = v;
    if (out != NULL)
        *out = t;
    return KP_OK;
}

void kp_webhook_delivery_id(const struct kp_alert *a, int event, char *out, size_t len)
{
    snprintf(out, len, "%s/%lld/%s", a->e.id, (long long)a->started_ms, kp_alert_event_name(event));
}

static json_t *time_or_null(int64_t ms)
{
    char t[32];
    if (ms == 0)
        return json_null();
    kp_format_time_ms(ms, t, sizeof(t));
    return json_string(t);
}

static json_t *generic_body(const struct kp_alert *a, int event)
{
    char id[300];
    kp_webhook_delivery_id(a, event, id, sizeof(id));
    json_t *v = json_object();
    if (v == NULL)
        return NULL;
    int rc = json_object_set_new(v, "event", json_string(kp_alert_event_name(event)));
    rc |= json_object_set_new(v, "delivery_id", json_string(id));
    rc |= json_object_set_new(v, "id", json_string(a->e.id));
    rc |= json_object_set_new(v, "state", json_string(a->resolved_ms ? "resolved" : "open"));
    rc |= json_object_set_new(v, "severity", json_string(kp_alert_severity_name(a->severity)));
    rc |= json_object_set_new(v, "rule", json_string(a->rule));
    rc |= json_object_set_new(v, "subject", json_string(a->subject));
    rc |= json_object_set_new(v, "message", json_string(a->message));
    rc |= json_object_set_new(v, "action", json_string(a->action));
    rc |= json_object_set_new(v, "last_value", json_integer(a->last_value));
    rc |= json_object_set_new(v, "started_ms", json_integer(a->started_ms));
    rc |= json_object_set_new(v, "started_at", time_or_null(a->started_ms));
    rc |= json_object_set_new(v, "resolved_ms", json_integer(a->resolved_ms));
    rc |= json_object_set_new(v, "resolved_at", time_or_null(a->resolved_ms));
    rc |= json_object_set_new(v, "acked_by", a->acked_by ? json_string(a->acked_by) : json_null());
    if (rc != 0) {
        json_decref(v);
        return NULL;
    }
    return v;
}

/* One line for chat: "[CRITICAL] key k-prod-3: ... / Action: ...". */
static json_t *slack_body(const struct kp_alert *a, int event)
{
    char sev[16];
    const char *name = kp_alert_severity_name(a->severity);
    size_t i = 0;
    for (; name[i] != '\0' && i + 1 < sizeof(sev); i++)
        sev[i] = (char)(name[i] >= 'a' && name[i] <= 'z' ? name[i] - 32 : name[i]);
    sev[i] = '\0';
    struct kp_buf b;
    kp_buf_init(&b);
    int rc;
    if (event == KP_ALERT_EVENT_RESOLVED)
        rc = kp_buf_appendf(&b, "[RESOLVED] %s: %s (was %s; alert %s)", a->subject, a->message,
                            name, a->e.id);
    else
        rc = kp_buf_appendf(&b, "[%s] %s: %s\nAction: %s\n(alert %s)", sev, a->subject, a->message,
                            a->action, a->e.id);
    json_t *v = rc == 0 ? json_pack("{s:s%}", "text", b.data, b.len) : NULL;
    kp_buf_free(&b);
    return v;
}

char *kp_webhook_body(int kind, const struct kp_alert *a, int event, size_t *len)
{
    json_t *v = kind == KP_WEBHOOK_SLACK ? slack_body(a, event) : generic_body(a, event);
    char *s = v != NULL ? kp_json_dumps(v, len) : NULL;
    json_decref(v);
    return s;
}

int kp_webhook_signature(const char *secret, const void *body, size_t len, char out[72])
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (HMAC(EVP_sha256(), secret, (int)strlen(secret), body, len, mac, &n) == NULL || n != 32)
        return KP_EIO;
    memcpy(out, "sha256=", 7);
    kp_hex_encode(mac, 32, out + 7);
    kp_secret_wipe(mac, sizeof(mac));
    return KP_OK;
}

int64_t kp_webhook_backoff(const struct kp_webhook_target *t, unsigned attempt)
{
    int64_t d = t->backoff_ms;
    for (unsigned i = 1; i < attempt && d < BACKOFF_MS_MAX; i++)
        d *= 2;
    return d < BACKOFF_MS_MAX ? d : BACKOFF_MS_MAX;
}

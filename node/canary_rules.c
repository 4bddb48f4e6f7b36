/* The pure half of canaries (canary.h): schedule, request, classification
 * and the status rule with hysteresis. No clock, no I/O: the leader's loop
 * (canary.c) and the unit tests call these with the values they hold. */
#include <stdio.h>
#include <string.h>

#include "canary.h"

static const char default_anthropic_model[] = "claude-3-5-haiku-latest";

/* FNV-1a over the key id and the time, then a final mix so that close
 * times give unrelated offsets. */
static uint64_t mix(const char *key_id, int64_t last_ms)
{
    uint64_t h = 1469598103934665603ull;
    for (const char *s = key_id; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    for (int i = 0; i < 8; i++)
        h = (h ^ (uint8_t)((uint64_t)last_ms >> (8 * i))) * 1099511628211ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

int64_t kp_canary_due_ms(const char *key_id, int64_t last_ms, int64_t interval_ms)
{
    if (last_ms <= 0)
        return 0;
    int64_t span = interval_ms * KP_CANARY_JITTER_PCT / 100; /* one side */
    int64_t offset = span > 0 ? (int64_t)(mix(key_id, last_ms) % (uint64_t)(2 * span + 1)) : 0;
    return last_ms + interval_ms - span + offset;
}

bool kp_canary_wanted(const struct kp_key *key, const struct kp_key_health *h)
{
    return key->status == KP_KEY_ACTIVE && kp_key_primary(key) != NULL &&
           (h == NULL || h->status != KP_HEALTH_DISABLED);
}

int kp_canary_request(const struct kp_provider *p, const struct kp_key *key,
                      struct kp_canary_request *out)
{
    memset(out, 0, sizeof(*out));
    const char *base = p->base_url;
    size_t blen = strlen(base);
    while (blen > 0 && base[blen - 1] == '/')
        blen--;
    int n;
    out->method = "GET";
    out->auth_name = "Authorization";
    out->bearer = true;
    switch (p->kind) {
    case KP_PROVIDER_AZURE_OPENAI:
        n = snprintf(out->url, sizeof(out->url), "%.*s/openai/models?api-version=%s", (int)blen,
                     base, p->api_version ? p->api_version : "");
        out->auth_name = "api-key";
        out->bearer = false;
        break;
    case KP_PROVIDER_ANTHROPIC: {
        const char *model = key->models.n > 0 ? key->models.v[0] : default_anthropic_model;
        n = snprintf(out->url, sizeof(out->url), "%.*s/messages", (int)blen, base);
        int b = snprintf(out->body, sizeof(out->body),
                         "{\"model\":\"%s\",\"max_tokens\":1,"
                         "\"messages\":[{\"role\":\"user\",\"content\":\"ping\"}]}",
                         model);
        if (b < 0 || (size_t)b >= sizeof(out->body))
            return KP_ETOOBIG;
        out->method = "POST";
        out->auth_name = "x-api-key";
        out->bearer = false;
        out->anthropic_version = true;
        break;
    }
    case KP_PROVIDER_GEMINI:
        n = snprintf(out->url, sizeof(out->url), "%.*s/models", (int)blen, base);
        out->auth_name = "x-goog-api-key";
        out->bearer = false;
        break;
    default: /* openai, openai-compatible */
        n = snprintf(out->url, sizeof(out->url), "%.*s/models", (int)blen, base);
        break;
    }
    return n < 0 || (size_t)n >= sizeof(out->url) ? KP_ETOOBIG : KP_OK;
}

int kp_canary_balance_request(const struct kp_provider *p, const struct kp_key *key,
                              struct kp_canary_request *out)
{
    if (p->balance_path == NULL)
        return KP_ENOENT;
    int rc = kp_canary_request(p, key, out);
    if (rc != KP_OK)
        return rc;
    const char *base = p->base_url;
    size_t blen = strlen(base);
    while (blen > 0 && base[blen - 1] == '/')
        blen--;
    int n = snprintf(out->url, sizeof(out->url), "%.*s%s", (int)blen, base, p->balance_path);
    out->method = "GET";
    out->body[0] = '\0';
    return n < 0 || (size_t)n >= sizeof(out->url) ? KP_ETOOBIG : KP_OK;
}

static bool about_quota(const char *body)
{
    return body != NULL &&
           (strstr(body, "insufficient_quota") != NULL || strstr(body, "credit balance") != NULL ||
            strstr(body, "exceeded your current quota"));
}

enum kp_canary_outcome kp_canary_classify(long status, const char *body, bool timed_out,
                                          const char **error_class)
{
    if (status >= 200 && status <= 299) {
        *error_class = "";
        return KP_CANARY_OK;
    }
    if (status == 0) {
        *error_class = timed_out ? "timeout" : "connect";
        return KP_CANARY_FAILED;
    }
    if (status == 401 || status == 403) {
        *error_class = "auth";
        return KP_CANARY_AUTH;
    }
    if ((status == 429 || status == 400) && about_quota(body)) {
        *error_class = "quota";
        return KP_CANARY_QUOTA;
    }
    if (status == 429) {
        *error_class = "rate_limit";
        return KP_CANARY_RATE_LIMIT;
    }
    *error_class = status >= 500 ? "server" : "client";
    return KP_CANARY_FAILED;
}

bool kp_canary_out_of_rotation(int status)
{
    return status == KP_HEALTH_INVALID || status == KP_HEALTH_QUOTA_EXHAUSTED ||
           status == KP_HEALTH_DISABLED;
}

int kp_canary_next(int status, int32_t streak, enum kp_canary_outcome outcome, int32_t *streak_out)
{
    bool ok = outcome == KP_CANARY_OK;
    int32_t s = ok ? (streak > 0 ? streak : 0) : (streak < 0 ? streak : 0);
    if (s > -1000000 && s < 1000000)
        s += ok ? 1 : -1;
    *streak_out = s;
    if (status == KP_HEALTH_DISABLED)
        return status;
    switch (outcome) {
    case KP_CANARY_OK:
        if (status == KP_HEALTH_INVALID || status == KP_HEALTH_QUOTA_EXHAUSTED)
            return KP_HEALTH_HEALTHY;
        return s >= KP_CANARY_STREAK ? KP_HEALTH_HEALTHY : status;
    case KP_CANARY_AUTH:
        return KP_HEALTH_INVALID;
    case KP_CANARY_QUOTA:
        return KP_HEALTH_QUOTA_EXHAUSTED;
    default:
        if (status == KP_HEALTH_INVALID || status == KP_HEALTH_QUOTA_EXHAUSTED)
            return status;
        if (-s < KP_CANARY_STREAK)
            return status;
        return outcome == KP_CANARY_RATE_LIMIT ? KP_HEALTH_RATE_LIMITED : KP_HEALTH_DEGRADED;
    }
}

static const char *const outcome_names[] = {
    [KP_CANARY_OK] = "ok",         [KP_CANARY_AUTH] = "auth",
    [KP_CANARY_QUOTA] = "quota",   [KP_CANARY_RATE_LIMIT] = "rate_limit",
    [KP_CANARY_FAILED] = "failed",
};

const char *kp_canary_outcome_name(enum kp_canary_outcome o)
{
    return (unsigned)o < sizeof(outcome_names) / sizeof(outcome_names[0]) ? outcome_names[o]
                                                                          : "failed";
}

bool kp_canary_outcome_parse(const char *s, enum kp_canary_outcome *out)
{
    for (unsigned i = 0; i < sizeof(outcome_names) / sizeof(outcome_names[0]); i++) {
        if (s != NULL && strcmp(s, outcome_names[i]) == 0) {
            *out = (enum kp_canary_outcome)i;
            return true;
        }
    }
    return false;
}

int kp_passive_troubled(const struct kp_alert_key_stats *s, const char **error_class)
{
    *error_class = "";
    if (s->rate_limited_1m >= KP_PASSIVE_MIN_EVENTS && s->rate_limited_1m * 2 >= s->attempts_1m)
        *error_class = "rate_limit";
    else if (s->attempts_1m >= KP_PASSIVE_MIN_EVENTS && s->errors_1m * 2 >= s->attempts_1m)
        *error_class = "error_rate";
    return (*error_class)[0] != '\0';
}

int kp_passive_next(int status, const struct kp_alert_key_stats *s, int64_t since_back_ms,
                    const char **error_class)
{
    if (!kp_passive_troubled(s, error_class) || status != KP_HEALTH_HEALTHY ||
        since_back_ms < KP_PASSIVE_QUIET_MS)
        return status;
    return strcmp(*error_class, "rate_limit") == 0 ? KP_HEALTH_RATE_LIMITED : KP_HEALTH_DEGRADED;
}

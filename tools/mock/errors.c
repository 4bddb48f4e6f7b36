/* Error answers in each provider's shape, and the faults that corrupt a built
 * body (malformed_json, a reset in the middle of a non-stream answer).
 *
 * The type/code/status names per HTTP status come from the providers'
 * references (see /work/shared/PROVIDERS.md). Where a provider has its own
 * way of saying "out of money", the quota fault uses it: OpenAI 429
 * insufficient_quota, Anthropic 400 invalid_request_error ("credit balance is
 * too low"), Gemini 429 RESOURCE_EXHAUSTED. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "internal.h"

static const char *openai_type(int status, bool quota, const char **code)
{
    *code = NULL;
    switch (status) {
    case 401:
        *code = "invalid_api_key";
        return "invalid_request_error";
    case 403:
        *code = "unsupported_country_region_territory";
        return "request_forbidden";
    case 404:
        *code = "model_not_found";
        return "invalid_request_error";
    case 429:
        *code = quota ? "insufficient_quota" : "rate_limit_exceeded";
        return quota ? "insufficient_quota" : "requests";
    default:
        return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

static const char *anthropic_type(int status)
{
    switch (status) {
    case 401:
        return "authentication_error";
    case 403:
        return "permission_error";
    case 404:
        return "not_found_error";
    case 413:
        return "request_too_large";
    case 429:
        return "rate_limit_error";
    case 529:
        return "overloaded_error";
    default:
        return status >= 500 ? "api_error" : "invalid_request_error";
    }
}

static const char *gemini_status(int status)
{
    switch (status) {
    case 401:
        return "UNAUTHENTICATED";
    case 403:
        return "PERMISSION_DENIED";
    case 404:
        return "NOT_FOUND";
    case 429:
        return "RESOURCE_EXHAUSTED";
    case 500:
        return "INTERNAL";
    case 504:
        return "DEADLINE_EXCEEDED";
    default:
        return status >= 500 ? "UNAVAILABLE" : "INVALID_ARGUMENT";
    }
}

static void error_body(struct kp_mock_answer *a, enum kp_mock_provider p, int status, bool quota,
                       bool with_code, const char *message)
{
    const char *code;
    const char *type;

    kp_mock__begin(a, status, "application/json");
    switch (p) {
    case KP_MOCK_OPENAI:
        type = openai_type(status, quota, &code);
        kp_mock__put(a, "{\"error\":{\"message\":");
        kp_mock__put_str(a, message, strlen(message));
        kp_mock__putf(a, ",\"type\":\"%s\",\"param\":null,\"code\":", type);
        if (code != NULL && with_code)
            kp_mock__putf(a, "\"%s\"}}", code);
        else
            kp_mock__put(a, "null}}");
        break;
    case KP_MOCK_ANTHROPIC:
        kp_mock__putf(a, "{\"type\":\"error\",\"error\":{\"type\":\"%s\",\"message\":",
                      anthropic_type(status));
        kp_mock__put_str(a, message, strlen(message));
        kp_mock__put(a, "}}");
        break;
    case KP_MOCK_GEMINI:
        kp_mock__putf(a, "{\"error\":{\"code\":%d,\"message\":", status);
        kp_mock__put_str(a, message, strlen(message));
        kp_mock__putf(a, ",\"status\":\"%s\"}}", gemini_status(status));
        break;
    }
}

void kp_mock__error(struct kp_mock_answer *a, enum kp_mock_provider p, int status, bool quota,
                    const char *message)
{
    error_body(a, p, status, quota, status != 400 && status != 405, message);
}

void kp_mock__errorf(struct kp_mock_answer *a, enum kp_mock_provider p, int status, const char *fmt,
                     ...)
{
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /* Errors from request checks carry no code, as upstream's mostly do (an
     * unknown URL is not a missing model). */
    error_body(a, p, status, false, false, msg);
}

static const char *fault_message(int status)
{
    switch (status) {
    case 401:
        return "Incorrect API key provided (keyplane-mock fault 401).";
    case 403:
        return "This key is not allowed to use this resource (keyplane-mock fault 403).";
    case 500:
        return "The server had an error while processing your request (keyplane-mock fault 500).";
    case 502:
        return "Bad gateway (keyplane-mock fault 502).";
    case 503:
        return "The service is temporarily unavailable (keyplane-mock fault 503).";
    case 529:
        return "Overloaded (keyplane-mock fault 529).";
    default:
        return "Error (keyplane-mock fault).";
    }
}

static void quota_error(struct kp_mock_answer *a, enum kp_mock_provider p)
{
    if (p == KP_MOCK_ANTHROPIC) {
        error_body(a, p, 400, false, false,
                   "Your credit balance is too low to access the Anthropic API. Please go to "
                   "Plans & Billing to upgrade or purchase credits. (keyplane-mock fault quota)");
        return;
    }
    error_body(a, p, 429, true, true,
               "You exceeded your current quota, please check your plan and billing details "
               "(keyplane-mock fault quota).");
}

void kp_mock__fault_error(struct kp_mock_answer *a, enum kp_mock_provider p,
                          const struct kp_mock_faults *f, const char *model, size_t model_len)
{
    char msg[320];

    if (f->status == 429 && f->quota) {
        quota_error(a, p);
        return;
    }
    if (f->status == 429) {
        snprintf(msg, sizeof(msg),
                 "Rate limit reached for requests; please try again in %us (keyplane-mock fault "
                 "429).",
                 f->retry_form == KP_MOCK_RETRY_MS ? (f->retry_after + 999) / 1000
                                                   : f->retry_after);
        error_body(a, p, 429, false, true, msg);
        if (f->retry_form == KP_MOCK_RETRY_DATE) {
            time_t at = time(NULL) + f->retry_after;
            struct tm tm;
            gmtime_r(&at, &tm);
            strftime(a->retry_after, sizeof(a->retry_after), "%a, %d %b %Y %H:%M:%S GMT", &tm);
        } else if (f->retry_form == KP_MOCK_RETRY_MS) {
            snprintf(a->retry_after_ms, sizeof(a->retry_after_ms), "%u", f->retry_after);
        } else {
            snprintf(a->retry_after, sizeof(a->retry_after), "%u", f->retry_after);
        }
        return;
    }
    if (f->status == 404) {
        if (model_len > 128)
            model_len = 128;
        snprintf(msg, sizeof(msg),
                 "The model `%.*s` does not exist or you do not have access to it "
                 "(keyplane-mock fault 404).",
                 (int)model_len, model ? model : "");
        error_body(a, p, 404, false, true, msg);
        return;
    }
    error_body(a, p, f->status, false, true, fault_message(f->status));
}

/* Cut the JSON of event @k to half its length, so that it cannot parse. */
static void corrupt_event(struct kp_mock_answer *a, unsigned k)
{
    char *start = a->body.data + (k == 0 ? 0 : a->event_end[k - 1]);
    char *end = a->body.data + a->event_end[k];
    char *json = start, *json_end = end;
    char *data = memmem(start, (size_t)(end - start), "data: ", 6);
    size_t cut;

    if (data != NULL) {
        json = data + 6;
        json_end = memchr(json, '\n', (size_t)(end - json));
        if (json_end == NULL)
            json_end = end;
    }
    if (json_end - json < 2)
        return;
    cut = (size_t)(json_end - json) - (size_t)(json_end - json) / 2;
    memmove(json_end - cut, json_end, (size_t)(a->body.data + a->body.len - json_end));
    a->body.len -= cut;
    for (unsigned i = k; i < a->n_events; i++)
        a->event_end[i] -= cut;
}

void kp_mock__apply_body_faults(struct kp_mock_answer *a)
{
    if (a->faults.malformed_json && a->status == 200 && a->body.len > 1) {
        if (!a->stream)
            a->body.len /= 2;
        else if (a->malformed_event >= 0 && (unsigned)a->malformed_event < a->n_events)
            corrupt_event(a, (unsigned)a->malformed_event);
    }
    if (a->faults.reset_after >= 0 && !a->stream) {
        /* A whole answer is sent as two writes, the reset between them. */
        a->stream = true;
        a->event_end[0] = a->body.len / 2;
        a->event_end[1] = a->body.len;
        a->n_events = 2;
        a->faults.reset_after = 1;
    }
}

/* The control routes tests use to script the mock and read what it saw:
 *
 *   GET    /healthz       {"status":"ok"}
 *   GET    /mock/stats    counters (see stats.c)
 *   POST   /mock/reset    zero the counters and clear every script
 *   POST   /mock/faults   {"key":"...","faults":"SPEC[,SPEC...]","times":N}
 *   GET    /mock/faults   scripts by key fingerprint
 *   DELETE /mock/faults   clear all, or one with a body {"key":"..."}
 *   POST   /mock/balance  {"key":"...","usd":"12.50"}: what GET
 *                         /v1/user/balance answers for that key
 *
 * Control requests need no key, take no faults and are not counted. Bad
 * input is a 400 with an OpenAI-shaped error saying what to send. */
#include <string.h>

#include "internal.h"

static void ok_json(struct kp_mock_answer *a, const char *json)
{
    kp_mock__begin(a, 200, "application/json");
    kp_mock__put(a, json);
}

static json_t *object_body(const struct kp_http_request *req, struct kp_mock_answer *a)
{
    json_error_t jerr;
    json_t *body = json_loadb(req->body, req->body_len, 0, &jerr);

    if (body == NULL || !json_is_object(body)) {
        json_decref(body);
        kp_mock__errorf(a, KP_MOCK_OPENAI, 400,
                        "Send a JSON object such as {\"key\":\"sk-test\",\"faults\":\"429\","
                        "\"times\":2}.");
        return NULL;
    }
    return body;
}

static void set_balance(struct kp_mock *m, const struct kp_http_request *req,
                        struct kp_mock_answer *a)
{
    json_t *body = object_body(req, a);
    if (body == NULL)
        return;
    json_t *key = json_object_get(body, "key"), *usd = json_object_get(body, "usd");
    if (!json_is_string(key) || json_string_length(key) == 0 || !json_is_string(usd) ||
        kp_mock_balance_set(m, json_string_value(key), json_string_length(key),
                            json_string_value(usd)) != 0)
        kp_mock__errorf(a, KP_MOCK_OPENAI, 400,
                        "Send {\"key\": \"sk-...\", \"usd\": \"12.50\"} (at most 64 keys).");
    else
        ok_json(a, "{\"ok\":true}");
    json_decref(body);
}

static void set_script(struct kp_mock *m, const struct kp_http_request *req,
                       struct kp_mock_answer *a)
{
    json_t *body = object_body(req, a), *key, *faults, *times, *route;
    json_int_t n = 0;
    int route_id = -1;
    char errmsg[320], fp[KP_MOCK_FP_LEN];

    if (body == NULL)
        return;
    key = json_object_get(body, "key");
    faults = json_object_get(body, "faults");
    times = json_object_get(body, "times");
    if (!json_is_string(key) || json_string_length(key) == 0 || !json_is_string(faults)) {
        kp_mock__errorf(a, KP_MOCK_OPENAI, 400,
                        "\"key\" (a non-empty string) and \"faults\" (a spec list) are required.");
        goto out;
    }
    if (times != NULL && !json_is_null(times)) {
        n = json_integer_value(times);
        if (!json_is_integer(times) || n < 0 || n > 1000000000) {
            kp_mock__errorf(a, KP_MOCK_OPENAI, 400,
                            "\"times\" must be an integer from 0 (until cleared) to 1000000000.");
            goto out;
        }
    }
    route = json_object_get(body, "route");
    if (route != NULL && !json_is_null(route) &&
        (!json_is_string(route) ||
         (route_id = kp_mock_route_parse(json_string_value(route))) < 0)) {
        kp_mock__errorf(a, KP_MOCK_OPENAI, 400,
                        "\"route\" must be a provider route as /mock/stats names it "
                        "(\"/v1/chat/completions\", \"/v1/models\", ...).");
        goto out;
    }
    if (kp_mock_script_set(m, json_string_value(key), json_string_length(key),
                           json_string_value(faults), json_string_length(faults), (unsigned)n,
                           route_id, errmsg, sizeof(errmsg)) != 0) {
        kp_mock__errorf(a, KP_MOCK_OPENAI, 400, "faults: %s", errmsg);
        goto out;
    }
    kp_mock_fingerprint(json_string_value(key), json_string_length(key), fp);
    kp_mock__begin(a, 200, "application/json");
    kp_mock__putf(a, "{\"key_fp\":\"%s\",\"faults\":", fp);
    kp_mock__put_str(a, json_string_value(faults), json_string_length(faults));
    if (n > 0)
        kp_mock__putf(a, ",\"times\":%lld}", (long long)n);
    else
        kp_mock__put(a, ",\"times\":null}");
out:
    json_decref(body);
}

static void clear_scripts(struct kp_mock *m, const struct kp_http_request *req,
                          struct kp_mock_answer *a)
{
    json_t *body = NULL, *key;
    unsigned n;

    if (req->body_len == 0) {
        n = kp_mock_script_clear(m, NULL, 0);
    } else {
        body = object_body(req, a);
        if (body == NULL)
            return;
        key = json_object_get(body, "key");
        if (!json_is_string(key)) {
            json_decref(body);
            kp_mock__errorf(a, KP_MOCK_OPENAI, 400,
                            "Send no body to clear every script, or {\"key\":\"...\"}.");
            return;
        }
        n = kp_mock_script_clear(m, json_string_value(key), json_string_length(key));
        json_decref(body);
    }
    kp_mock__begin(a, 200, "application/json");
    kp_mock__putf(a, "{\"cleared\":%u}", n);
}

static void faults_route(struct kp_mock *m, const struct kp_http_request *req,
                         struct kp_mock_answer *a)
{
    if (strcmp(req->method, "POST") == 0) {
        set_script(m, req, a);
    } else if (strcmp(req->method, "DELETE") == 0) {
        clear_scripts(m, req, a);
    } else if (strcmp(req->method, "GET") == 0) {
        kp_mock__begin(a, 200, "application/json");
        if (kp_mock_script_render(m, &a->body) != 0)
            a->failed = true;
    } else {
        kp_mock__errorf(a, KP_MOCK_OPENAI, 405, "Use GET, POST or DELETE on /mock/faults.");
        a->allow = "GET, POST, DELETE";
    }
}

static bool method_is(const struct kp_http_request *req, const char *method,
                      struct kp_mock_answer *a)
{
    if (strcmp(req->method, method) == 0)
        return true;
    kp_mock__errorf(a, KP_MOCK_OPENAI, 405, "Use %s on %.100s.", method, req->path);
    a->allow = method;
    return false;
}

void kp_mock__control(struct kp_mock *m, const struct kp_http_request *req,
                      struct kp_mock_answer *a)
{
    if (strcmp(req->path, "/healthz") == 0) {
        if (method_is(req, "GET", a))
            ok_json(a, "{\"status\":\"ok\"}");
    } else if (strcmp(req->path, "/mock/stats") == 0) {
        if (method_is(req, "GET", a)) {
            kp_mock__begin(a, 200, "application/json");
            if (kp_mock_stats_render(m, &a->body) != 0)
                a->failed = true;
        }
    } else if (strcmp(req->path, "/mock/reset") == 0) {
        if (method_is(req, "POST", a)) {
            kp_mock_stats_clear(m);
            kp_mock_script_clear(m, NULL, 0);
            ok_json(a, "{\"ok\":true}");
        }
    } else if (strcmp(req->path, "/mock/faults") == 0) {
        faults_route(m, req, a);
    } else if (strcmp(req->path, "/mock/balance") == 0) {
        if (method_is(req, "POST", a))
            set_balance(m, req, a);
    } else {
        kp_mock__errorf(a, KP_MOCK_OPENAI, 404,
                        "Unknown control route %.100s (have /mock/stats, /mock/reset, "
                        "/mock/faults, /mock/balance, /healthz).",
                        req->path);
    }
}

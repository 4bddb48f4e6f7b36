/* Unit tests of kpmock, the pure logic of keyplane-mock: usage, fault specs,
 * the shape of every answer, stream event order, errors, scripted faults and
 * stats. Requests are built in memory and answered by kp_mock_handle; no
 * socket is involved. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>
#include <openssl/evp.h>

#include "tools/mock/mock.h"

/* --- fixtures ------------------------------------------------------------ */

struct fx {
    struct kp_mock mock;
    struct kp_mock_answer ans;
    struct kp_http_request req;
    struct kp_http_header headers[8];
    char path[256];
};

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));

    assert_non_null(f);
    assert_int_equal(kp_mock_init(&f->mock, 2), 0);
    f->mock.fixed_time = 1700000000;
    kp_mock_answer_init(&f->ans);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;

    kp_mock_answer_free(&f->ans);
    kp_mock_close(&f->mock);
    free(f);
    return 0;
}

static struct kp_http_header hdr(const char *name, const char *value)
{
    return (struct kp_http_header){name, strlen(name), value, strlen(value)};
}

/* Answer METHOD TARGET with BODY (may be NULL) and NULL-terminated pairs of
 * header names and values. */
static struct kp_mock_answer *call(struct fx *f, const char *method, const char *target,
                                   const char *body, ...)
{
    va_list ap;
    const char *name, *q;
    unsigned n = 0;

    snprintf(f->path, sizeof(f->path), "%s", target);
    q = strchr(target, '?');
    if (q != NULL)
        f->path[q - target] = '\0';
    va_start(ap, body);
    while ((name = va_arg(ap, const char *)) != NULL && n < 8)
        f->headers[n++] = hdr(name, va_arg(ap, const char *));
    va_end(ap);
    f->req = (struct kp_http_request){
        .method = method,
        .target = target,
        .path = f->path,
        .query = q ? q + 1 : "",
        .version_major = 1,
        .version_minor = 1,
        .headers = f->headers,
        .n_headers = n,
        .body = body ? body : "",
        .body_len = body ? strlen(body) : 0,
    };
    kp_mock_handle(&f->mock, 0, &f->req, &f->ans);
    return &f->ans;
}

#define OPENAI_AUTH    "Authorization", "Bearer sk-test"
#define ANTHROPIC_AUTH "x-api-key", "sk-ant-test", "anthropic-version", "2023-06-01"
#define GEMINI_AUTH    "x-goog-api-key", "g-test"

static json_t *body_json(const struct kp_mock_answer *a)
{
    json_error_t err;
    json_t *v = json_loadb(a->body.data, a->body.len, 0, &err);

    if (v == NULL)
        fail_msg("answer is not JSON: %s: %.*s", err.text, (int)a->body.len, a->body.data);
    return v;
}

static json_int_t jint(const json_t *root, const char *path)
{
    const json_t *v = root;
    char key[64];

    while (*path) {
        size_t n = strcspn(path, ".");

        snprintf(key, sizeof(key), "%.*s", (int)n, path);
        if (json_is_array(v))
            v = json_array_get(v, (size_t)atoi(key));
        else
            v = json_object_get(v, key);
        path += n + (path[n] == '.');
    }
    if (!json_is_integer(v))
        fail_msg("not an integer at %s", path);
    return json_integer_value(v);
}

static const char *jstr(const json_t *root, const char *path)
{
    const json_t *v = root;
    char key[64];

    while (*path) {
        size_t n = strcspn(path, ".");

        snprintf(key, sizeof(key), "%.*s", (int)n, path);
        v = json_is_array(v) ? json_array_get(v, (size_t)atoi(key)) : json_object_get(v, key);
        path += n + (path[n] == '.');
    }
    return json_string_value(v);
}

/* Event @i of a stream answer: its "event:" name into @name (or "") and its
 * data parsed (NULL when the data is not JSON, e.g. [DONE]). */
static json_t *event_json(const struct kp_mock_answer *a, unsigned i, char *name, size_t nlen,
                          char *data, size_t dlen)
{
    const char *p, *d, *e;
    size_t len;

    kp_mock_answer_event(a, i, &p, &len);
    name[0] = '\0';
    if (strncmp(p, "event: ", 7) == 0) {
        e = memchr(p, '\n', len);
        snprintf(name, nlen, "%.*s", (int)(e - p - 7), p + 7);
    }
    d = strstr(p, "data: ");
    assert_non_null(d);
    d += 6;
    e = strchr(d, '\n');
    snprintf(data, dlen, "%.*s", (int)(e - d), d);
    return json_loads(data, 0, NULL);
}

static const char chat_body[] =
    "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"hello there\"}]}";

/* --- usage --------------------------------------------------------------- */

/* The same request yields the same usage: ceil(11 bytes / 4) + 4 = 7 in,
 * 16 out; a second message and content parts add text and overhead. */
static void usage_is_derived_from_the_request(void **state)
{
    struct fx *f = *state;
    json_t *a, *b;

    a = body_json(call(f, "POST", "/v1/chat/completions", chat_body, OPENAI_AUTH, NULL));
    b = body_json(call(f, "POST", "/v1/chat/completions", chat_body, OPENAI_AUTH, NULL));
    assert_int_equal(jint(a, "usage.prompt_tokens"), 7);
    assert_int_equal(jint(a, "usage.completion_tokens"), 16);
    assert_int_equal(jint(a, "usage.total_tokens"), 23);
    assert_true(json_equal(json_object_get(a, "usage"), json_object_get(b, "usage")));
    json_decref(a);
    json_decref(b);

    a = body_json(
        call(f, "POST", "/v1/chat/completions",
             "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"12345678\"},"
             "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"abcd\"},"
             "{\"type\":\"image_url\",\"image_url\":{\"url\":\"x\"}}]}]}",
             OPENAI_AUTH, NULL));
    assert_int_equal(jint(a, "usage.prompt_tokens"), 3 + 2 * 4); /* 12 bytes, 2 messages */
    json_decref(a);
}

/* max_tokens below 16 caps the reply and says so; above it changes nothing;
 * max_completion_tokens wins over max_tokens; 0 is refused. */
static void max_tokens_caps_the_reply(void **state)
{
    struct fx *f = *state;
    json_t *a;

    a = body_json(call(f, "POST", "/v1/chat/completions",
                       "{\"model\":\"m\",\"max_tokens\":3,\"messages\":[{\"content\":\"x\"}]}",
                       OPENAI_AUTH, NULL));
    assert_int_equal(jint(a, "usage.completion_tokens"), 3);
    assert_string_equal(jstr(a, "choices.0.message.content"), "mock0 mock1 mock2");
    assert_string_equal(jstr(a, "choices.0.finish_reason"), "length");
    json_decref(a);

    a = body_json(call(f, "POST", "/v1/chat/completions",
                       "{\"model\":\"m\",\"max_tokens\":100,\"max_completion_tokens\":5,"
                       "\"messages\":[{\"content\":\"x\"}]}",
                       OPENAI_AUTH, NULL));
    assert_int_equal(jint(a, "usage.completion_tokens"), 5);
    json_decref(a);

    a = body_json(call(f, "POST", "/v1/chat/completions",
                       "{\"model\":\"m\",\"max_tokens\":100,\"messages\":[{\"content\":\"x\"}]}",
                       OPENAI_AUTH, NULL));
    assert_int_equal(jint(a, "usage.completion_tokens"), 16);
    assert_string_equal(jstr(a, "choices.0.finish_reason"), "stop");
    json_decref(a);

    call(f, "POST", "/v1/chat/completions",
         "{\"model\":\"m\",\"max_tokens\":0,\"messages\":[{\"content\":\"x\"}]}", OPENAI_AUTH,
         NULL);
    assert_int_equal(f->ans.status, 400);
}

/* --- fault specs --------------------------------------------------------- */

static struct kp_mock_faults parse_ok(const char *spec)
{
    struct kp_mock_faults fl;
    char err[256];

    if (kp_mock_faults_parse(&fl, spec, strlen(spec), err, sizeof(err)) != 0)
        fail_msg("'%s' refused: %s", spec, err);
    return fl;
}

/* Every documented spec parses to the right fields, alone and combined. */
static void fault_specs_parse(void **state)
{
    struct kp_mock_faults fl;

    (void)state;
    fl = parse_ok("429");
    assert_int_equal(fl.status, 429);
    assert_int_equal(fl.retry_after, 1);
    assert_false(fl.quota);
    fl = parse_ok("429:retry_after=30");
    assert_int_equal(fl.retry_after, 30);
    assert_int_equal(fl.retry_form, KP_MOCK_RETRY_SECONDS);
    fl = parse_ok("429:retry_at=30");
    assert_int_equal(fl.status, 429);
    assert_int_equal(fl.retry_after, 30);
    assert_int_equal(fl.retry_form, KP_MOCK_RETRY_DATE);
    fl = parse_ok("429:retry_after_ms=2500");
    assert_int_equal(fl.status, 429);
    assert_int_equal(fl.retry_after, 2500);
    assert_int_equal(fl.retry_form, KP_MOCK_RETRY_MS);
    fl = parse_ok("quota");
    assert_int_equal(fl.status, 429);
    assert_true(fl.quota);
    for (unsigned i = 0; i < 7; i++) {
        static const char *const s[] = {"401", "403", "404", "500", "502", "503", "529"};

        assert_int_equal(parse_ok(s[i]).status, atoi(s[i]));
    }
    fl = parse_ok(" latency=100 , slow_first_byte=20,slow_chunks=5 ");
    assert_int_equal(fl.latency_ms, 100);
    assert_int_equal(fl.slow_first_byte_ms, 20);
    assert_int_equal(fl.slow_chunks_ms, 5);
    assert_int_equal(fl.status, 0);
    assert_int_equal(fl.reset_after, -1);
    assert_int_equal(parse_ok("reset_mid_stream").reset_after, 2);
    assert_int_equal(parse_ok("reset_mid_stream=0").reset_after, 0);
    assert_int_equal(parse_ok("reset_mid_stream=7").reset_after, 7);
    fl = parse_ok("503,malformed_json,latency=1");
    assert_int_equal(fl.status, 503);
    assert_true(fl.malformed_json);
    assert_int_equal(kp_mock_faults_head_delay(&fl), 1);
}

/* Typos, bad numbers, values out of range and two statuses are refused with
 * a message that names the spec. */
static void bad_fault_specs_are_refused(void **state)
{
    static const char *const bad[] = {
        "",
        " , ",
        "bogus",
        "418",
        "4290",
        "latency",
        "latency=",
        "latency=-1",
        "latency=1x",
        "latency=600001",
        "slow_chunks=abc",
        "429:retry_after=",
        "429:retry_after=x",
        "429:retry_after=86401",
        "reset_mid_stream=x",
        "reset_mid_stream=1001",
        "429,500",
        "quota,429",
        "malformed_json=1",
        "LATENCY=5",
    };
    struct kp_mock_faults fl;
    char err[256];

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        if (kp_mock_faults_parse(&fl, bad[i], strlen(bad[i]), err, sizeof(err)) == 0)
            fail_msg("'%s' was accepted", bad[i]);
        assert_true(strlen(err) > 0);
    }
    assert_int_not_equal(kp_mock_faults_parse(&fl, "latency=5,bogus", 15, err, sizeof(err)), 0);
    assert_non_null(strstr(err, "'bogus'"));
}

/* --- shapes -------------------------------------------------------------- */

/* A chat completion has the OpenAI fields and echoes the model. */
static void chat_completion_shape(void **state)
{
    struct fx *f = *state;
    json_t *a = body_json(call(f, "POST", "/v1/chat/completions", chat_body, OPENAI_AUTH, NULL));

    assert_int_equal(f->ans.status, 200);
    assert_false(f->ans.stream);
    assert_string_equal(jstr(a, "object"), "chat.completion");
    assert_string_equal(jstr(a, "model"), "gpt-4o-mini");
    assert_int_equal(jint(a, "created"), 1700000000);
    assert_non_null(strstr(jstr(a, "id"), "chatcmpl-"));
    assert_string_equal(jstr(a, "choices.0.message.role"), "assistant");
    assert_string_equal(jstr(a, "choices.0.message.content"),
                        "mock0 mock1 mock2 mock3 mock4 mock5 mock6 mock7 mock8 mock9 mock10 "
                        "mock11 mock12 mock13 mock14 mock15");
    assert_int_equal(jint(a, "usage.prompt_tokens_details.cached_tokens"), 0);
    json_decref(a);
}

/* Azure OpenAI: the deployment in the path, the key in api-key, and an
 * api-version required, each refused the way Azure does. */
static void azure_deployment_routes(void **state)
{
    struct fx *f = *state;
    static const char *const path = "/openai/deployments/my-gpt/chat/completions";
    char target[128];

    snprintf(target, sizeof(target), "%s?api-version=2024-10-21", path);
    json_t *a = body_json(call(f, "POST", target, chat_body, "api-key", "az-test", NULL));
    assert_int_equal(f->ans.status, 200);
    assert_string_equal(jstr(a, "object"), "chat.completion");
    json_decref(a);
    call(f, "POST", path, chat_body, "api-key", "az-test", NULL);
    assert_int_equal(f->ans.status, 404);
    call(f, "POST", target, chat_body, OPENAI_AUTH, NULL); /* a Bearer key is not Azure's */
    assert_int_equal(f->ans.status, 401);
    call(f, "POST", "/openai/deployments//chat/completions?api-version=1", chat_body, "api-key",
         "az-test", NULL);
    assert_int_equal(f->ans.status, 404);
}

/* Legacy completions: text_completion with choices[].text and usage. */
static void completions_shape(void **state)
{
    struct fx *f = *state;
    json_t *a = body_json(call(f, "POST", "/v1/completions",
                               "{\"model\":\"gpt-3.5-turbo-instruct\",\"prompt\":\"12345678\","
                               "\"max_tokens\":2}",
                               OPENAI_AUTH, NULL));

    assert_string_equal(jstr(a, "object"), "text_completion");
    assert_string_equal(jstr(a, "choices.0.text"), "mock0 mock1");
    assert_int_equal(jint(a, "usage.prompt_tokens"), 2);
    assert_int_equal(jint(a, "usage.completion_tokens"), 2);
    json_decref(a);
}

static size_t b64_decoded_len(const char *s)
{
    unsigned char out[4096];
    size_t n = strlen(s);
    int len = EVP_DecodeBlock(out, (const unsigned char *)s, (int)n);

    while (n > 0 && s[n - 1] == '=') {
        len--;
        n--;
    }
    return (size_t)len;
}

/* Embeddings: one 8-dim vector per input, the same for the same text,
 * base64 float32 on request, usage of the inputs. */
static void embeddings_shape(void **state)
{
    struct fx *f = *state;
    json_t *a = body_json(call(f, "POST", "/v1/embeddings",
                               "{\"model\":\"text-embedding-3-small\",\"input\":[\"abcd\",\"efgh\","
                               "\"abcd\"]}",
                               OPENAI_AUTH, NULL));
    json_t *data = json_object_get(a, "data");

    assert_string_equal(jstr(a, "object"), "list");
    assert_int_equal(json_array_size(data), 3);
    assert_int_equal(json_array_size(json_object_get(json_array_get(data, 0), "embedding")), 8);
    assert_true(json_equal(json_object_get(json_array_get(data, 0), "embedding"),
                           json_object_get(json_array_get(data, 2), "embedding")));
    assert_false(json_equal(json_object_get(json_array_get(data, 0), "embedding"),
                            json_object_get(json_array_get(data, 1), "embedding")));
    assert_int_equal(jint(a, "data.2.index"), 2);
    assert_int_equal(jint(a, "usage.prompt_tokens"), 3);
    assert_int_equal(jint(a, "usage.total_tokens"), 3);
    json_decref(a);

    a = body_json(call(f, "POST", "/v1/embeddings",
                       "{\"model\":\"e\",\"input\":\"abc\",\"encoding_format\":\"base64\","
                       "\"dimensions\":16}",
                       OPENAI_AUTH, NULL));
    assert_int_equal(b64_decoded_len(jstr(a, "data.0.embedding")), 16 * 4);
    json_decref(a);

    call(f, "POST", "/v1/embeddings", "{\"model\":\"e\",\"input\":[]}", OPENAI_AUTH, NULL);
    assert_int_equal(f->ans.status, 400);
}

/* Responses: output[] message with output_text, usage input/output tokens;
 * max_output_tokens below 16 is refused as by the real API. */
static void responses_shape(void **state)
{
    struct fx *f = *state;
    json_t *a = body_json(call(f, "POST", "/v1/responses",
                               "{\"model\":\"gpt-4o\",\"input\":\"hello there\","
                               "\"instructions\":\"be\"}",
                               OPENAI_AUTH, NULL));

    assert_string_equal(jstr(a, "object"), "response");
    assert_string_equal(jstr(a, "status"), "completed");
    assert_string_equal(jstr(a, "output.0.type"), "message");
    assert_string_equal(jstr(a, "output.0.content.0.type"), "output_text");
    assert_int_equal(jint(a, "usage.input_tokens"), 4 + 2 * 4); /* 13 bytes, 2 messages */
    assert_int_equal(jint(a, "usage.output_tokens"), 16);
    assert_int_equal(jint(a, "usage.total_tokens"), 28);
    json_decref(a);

    call(f, "POST", "/v1/responses", "{\"model\":\"m\",\"input\":\"x\",\"max_output_tokens\":8}",
         OPENAI_AUTH, NULL);
    assert_int_equal(f->ans.status, 400);
}

/* The model list holds the models tests rely on. */
static void models_list(void **state)
{
    struct fx *f = *state;
    static const char *const want[] = {"gpt-4o-mini", "gpt-4o", "text-embedding-3-small",
                                       "claude-3-5-haiku-latest", "gemini-1.5-flash"};
    json_t *a = body_json(call(f, "GET", "/v1/models", NULL, OPENAI_AUTH, NULL));
    char *dump = json_dumps(a, 0);

    assert_string_equal(jstr(a, "object"), "list");
    for (unsigned i = 0; i < 5; i++) {
        char quoted[64];

        snprintf(quoted, sizeof(quoted), "\"id\": \"%s\"", want[i]);
        assert_non_null(strstr(dump, quoted));
    }
    free(dump);
    json_decref(a);
    a = body_json(call(f, "GET", "/v1/models/gpt-4o", NULL, OPENAI_AUTH, NULL));
    assert_string_equal(jstr(a, "id"), "gpt-4o");
    json_decref(a);
}

/* An Anthropic message: text block, end_turn or max_tokens, usage; the
 * system prompt counts as a message. */
static void anthropic_message_shape(void **state)
{
    struct fx *f = *state;
    json_t *a = body_json(call(f, "POST", "/v1/messages",
                               "{\"model\":\"claude-3-5-haiku-latest\",\"max_tokens\":4,"
                               "\"system\":\"abcd\",\"messages\":[{\"role\":\"user\","
                               "\"content\":\"hello there\"}]}",
                               ANTHROPIC_AUTH, NULL));

    assert_string_equal(jstr(a, "type"), "message");
    assert_string_equal(jstr(a, "role"), "assistant");
    assert_string_equal(jstr(a, "model"), "claude-3-5-haiku-latest");
    assert_string_equal(jstr(a, "content.0.type"), "text");
    assert_string_equal(jstr(a, "content.0.text"), "mock0 mock1 mock2 mock3");
    assert_string_equal(jstr(a, "stop_reason"), "max_tokens");
    assert_int_equal(jint(a, "usage.input_tokens"), 4 + 2 * 4); /* 15 bytes, 2 messages */
    assert_int_equal(jint(a, "usage.output_tokens"), 4);
    json_decref(a);

    a = body_json(call(f, "POST", "/v1/messages",
                       "{\"model\":\"c\",\"max_tokens\":1024,\"messages\":[{\"role\":\"user\","
                       "\"content\":\"x\"}]}",
                       ANTHROPIC_AUTH, NULL));
    assert_string_equal(jstr(a, "stop_reason"), "end_turn");
    json_decref(a);
}

/* Anthropic requires max_tokens and anthropic-version, like the real API. */
static void anthropic_requires_max_tokens_and_version(void **state)
{
    struct fx *f = *state;
    json_t *a;

    a = body_json(call(f, "POST", "/v1/messages",
                       "{\"model\":\"c\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
                       ANTHROPIC_AUTH, NULL));
    assert_int_equal(f->ans.status, 400);
    assert_string_equal(jstr(a, "type"), "error");
    assert_string_equal(jstr(a, "error.type"), "invalid_request_error");
    assert_non_null(strstr(jstr(a, "error.message"), "max_tokens"));
    json_decref(a);

    call(f, "POST", "/v1/messages", "{}", "x-api-key", "k", NULL);
    assert_int_equal(f->ans.status, 400);
}

/* Anthropic SDKs from 1.x send the API key as a bearer token; both work and
 * count under the same fingerprint. */
static void anthropic_accepts_bearer_keys(void **state)
{
    struct fx *f = *state;
    static const char body[] =
        "{\"model\":\"c\",\"max_tokens\":5,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}";
    json_t *s;

    call(f, "POST", "/v1/messages", body, "Authorization", "Bearer sk-test", "anthropic-version",
         "2023-06-01", NULL);
    assert_int_equal(f->ans.status, 200);
    call(f, "POST", "/v1/messages", body, "x-api-key", "sk-test", "anthropic-version", "2023-06-01",
         NULL);
    assert_int_equal(f->ans.status, 200);
    s = body_json(call(f, "GET", "/mock/stats", NULL, NULL));
    assert_int_equal(jint(s, "keys.fp_f3abf2a6cc4f"), 2);
    json_decref(s);
}

/* Gemini: candidates/content/parts, finishReason, usageMetadata; the model
 * comes from the path. */
static void gemini_shape(void **state)
{
    struct fx *f = *state;
    json_t *a =
        body_json(call(f, "POST", "/v1beta/models/gemini-1.5-flash:generateContent",
                       "{\"contents\":[{\"role\":\"user\",\"parts\":[{\"text\":\"abcdefgh\"}]}],"
                       "\"systemInstruction\":{\"parts\":[{\"text\":\"abcd\"}]},"
                       "\"generationConfig\":{\"maxOutputTokens\":2}}",
                       GEMINI_AUTH, NULL));

    assert_int_equal(f->ans.status, 200);
    assert_string_equal(jstr(a, "candidates.0.content.role"), "model");
    assert_string_equal(jstr(a, "candidates.0.content.parts.0.text"), "mock0 mock1");
    assert_string_equal(jstr(a, "candidates.0.finishReason"), "MAX_TOKENS");
    assert_string_equal(jstr(a, "modelVersion"), "gemini-1.5-flash");
    assert_int_equal(jint(a, "usageMetadata.promptTokenCount"), 3 + 2 * 4);
    assert_int_equal(jint(a, "usageMetadata.candidatesTokenCount"), 2);
    assert_int_equal(jint(a, "usageMetadata.totalTokenCount"), 13);
    json_decref(a);
}

/* --- streams ------------------------------------------------------------- */

/* Without include_usage no chunk mentions usage; with it every chunk carries
 * "usage": null and one chunk with choices [] and the usage comes just before
 * [DONE]. The role delta comes first, then one content delta per word. */
static void openai_stream_include_usage(void **state)
{
    struct fx *f = *state;
    char name[64], data[2048];
    json_t *ev;
    unsigned n;

    call(f, "POST", "/v1/chat/completions",
         "{\"model\":\"m\",\"stream\":true,\"max_tokens\":3,\"messages\":[{\"content\":\"x\"}]}",
         OPENAI_AUTH, NULL);
    assert_true(f->ans.stream);
    assert_string_equal(f->ans.content_type, "text/event-stream; charset=utf-8");
    n = f->ans.n_events;
    assert_int_equal(n, 1 + 3 + 1 + 1); /* role, words, finish, [DONE] */
    for (unsigned i = 0; i + 1 < n; i++) {
        ev = event_json(&f->ans, i, name, sizeof(name), data, sizeof(data));
        assert_non_null(ev);
        assert_null(json_object_get(ev, "usage"));
        assert_string_equal(jstr(ev, "object"), "chat.completion.chunk");
        if (i == 0)
            assert_string_equal(jstr(ev, "choices.0.delta.role"), "assistant");
        if (i == 1)
            assert_string_equal(jstr(ev, "choices.0.delta.content"), "mock0");
        if (i == 2)
            assert_string_equal(jstr(ev, "choices.0.delta.content"), " mock1");
        if (i == n - 2)
            assert_string_equal(jstr(ev, "choices.0.finish_reason"), "length");
        json_decref(ev);
    }
    assert_null(event_json(&f->ans, n - 1, name, sizeof(name), data, sizeof(data)));
    assert_string_equal(data, "[DONE]");

    call(f, "POST", "/v1/chat/completions",
         "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":true},"
         "\"messages\":[{\"content\":\"x\"}]}",
         OPENAI_AUTH, NULL);
    n = f->ans.n_events;
    assert_int_equal(n, 1 + 16 + 1 + 1 + 1);
    ev = event_json(&f->ans, 0, name, sizeof(name), data, sizeof(data));
    assert_true(json_is_null(json_object_get(ev, "usage")));
    json_decref(ev);
    ev = event_json(&f->ans, n - 2, name, sizeof(name), data, sizeof(data));
    assert_int_equal(json_array_size(json_object_get(ev, "choices")), 0);
    assert_int_equal(jint(ev, "usage.prompt_tokens"), 5);
    assert_int_equal(jint(ev, "usage.completion_tokens"), 16);
    json_decref(ev);

    /* stream_options without stream is a client error, as upstream. */
    call(f, "POST", "/v1/chat/completions",
         "{\"model\":\"m\",\"stream_options\":{\"include_usage\":true},"
         "\"messages\":[{\"content\":\"x\"}]}",
         OPENAI_AUTH, NULL);
    assert_int_equal(f->ans.status, 400);
}

/* The Anthropic stream is the real event sequence with usage in
 * message_start (input) and message_delta (output). */
static void anthropic_event_order(void **state)
{
    struct fx *f = *state;
    static const char *const want[] = {
        "message_start",       "content_block_start", "ping",          "content_block_delta",
        "content_block_delta", "content_block_stop",  "message_delta", "message_stop"};
    char name[64], data[2048];
    json_t *ev;

    call(f, "POST", "/v1/messages",
         "{\"model\":\"c\",\"max_tokens\":2,\"stream\":true,\"messages\":[{\"role\":\"user\","
         "\"content\":\"hello there\"}]}",
         ANTHROPIC_AUTH, NULL);
    assert_true(f->ans.stream);
    assert_int_equal(f->ans.n_events, 8);
    for (unsigned i = 0; i < 8; i++) {
        ev = event_json(&f->ans, i, name, sizeof(name), data, sizeof(data));
        assert_non_null(ev);
        assert_string_equal(name, want[i]);
        assert_string_equal(jstr(ev, "type"), want[i]);
        if (i == 0)
            assert_int_equal(jint(ev, "message.usage.input_tokens"), 7);
        if (i == 3)
            assert_string_equal(jstr(ev, "delta.type"), "text_delta");
        if (i == 6) {
            assert_string_equal(jstr(ev, "delta.stop_reason"), "max_tokens");
            assert_int_equal(jint(ev, "usage.output_tokens"), 2);
        }
        json_decref(ev);
    }
}

/* Responses stream: typed events, deltas per word, response.completed last
 * with usage; sequence numbers count up from 0. */
static void responses_stream_events(void **state)
{
    struct fx *f = *state;
    char name[64], data[4096];
    json_t *ev;
    unsigned n;

    call(f, "POST", "/v1/responses", "{\"model\":\"m\",\"input\":\"x\",\"stream\":true}",
         OPENAI_AUTH, NULL);
    n = f->ans.n_events;
    assert_int_equal(n, 4 + 16 + 4);
    for (unsigned i = 0; i < n; i++) {
        ev = event_json(&f->ans, i, name, sizeof(name), data, sizeof(data));
        assert_non_null(ev);
        assert_string_equal(jstr(ev, "type"), name);
        assert_int_equal(jint(ev, "sequence_number"), i);
        if (i == 0)
            assert_string_equal(name, "response.created");
        if (i == 4)
            assert_string_equal(name, "response.output_text.delta");
        if (i == n - 1) {
            assert_string_equal(name, "response.completed");
            assert_int_equal(jint(ev, "response.usage.output_tokens"), 16);
            assert_int_equal(jint(ev, "response.usage.input_tokens"), 5);
        }
        json_decref(ev);
    }
}

/* Gemini streams one full object per word, usage only in the last; without
 * alt=sse the stream is one JSON array. */
static void gemini_stream(void **state)
{
    struct fx *f = *state;
    char name[64], data[2048];
    json_t *ev;

    call(f, "POST", "/v1beta/models/g:streamGenerateContent?alt=sse",
         "{\"contents\":[{\"parts\":[{\"text\":\"x\"}]}],\"generationConfig\":"
         "{\"maxOutputTokens\":3}}",
         GEMINI_AUTH, NULL);
    assert_int_equal(f->ans.n_events, 3);
    for (unsigned i = 0; i < 3; i++) {
        ev = event_json(&f->ans, i, name, sizeof(name), data, sizeof(data));
        assert_non_null(ev);
        assert_true((json_object_get(ev, "usageMetadata") != NULL) == (i == 2));
        json_decref(ev);
    }
    call(f, "POST", "/v1beta/models/g:streamGenerateContent",
         "{\"contents\":[{\"parts\":[{\"text\":\"x\"}]}]}", GEMINI_AUTH, NULL);
    ev = body_json(&f->ans);
    assert_int_equal(json_array_size(ev), 16);
    json_decref(ev);
}

/* --- errors and faults --------------------------------------------------- */

/* A missing key is a 401 in each provider's own error shape. */
static void missing_key_is_401_per_provider(void **state)
{
    struct fx *f = *state;
    json_t *a;

    a = body_json(call(f, "POST", "/v1/chat/completions", chat_body, NULL));
    assert_int_equal(f->ans.status, 401);
    assert_non_null(jstr(a, "error.message"));
    assert_non_null(jstr(a, "error.type"));
    assert_non_null(json_object_get(json_object_get(a, "error"), "param"));
    json_decref(a);

    a = body_json(call(f, "POST", "/v1/messages", "{}", "anthropic-version", "2023-06-01", NULL));
    assert_int_equal(f->ans.status, 401);
    assert_string_equal(jstr(a, "type"), "error");
    assert_string_equal(jstr(a, "error.type"), "authentication_error");
    json_decref(a);

    a = body_json(call(f, "POST", "/v1beta/models/g:generateContent", "{}", NULL));
    assert_int_equal(f->ans.status, 401);
    assert_int_equal(jint(a, "error.code"), 401);
    assert_string_equal(jstr(a, "error.status"), "UNAUTHENTICATED");
    json_decref(a);

    call(f, "POST", "/v1/chat/completions", chat_body, "Authorization", "Bearer ", NULL);
    assert_int_equal(f->ans.status, 401);
}

/* Unknown routes 404, wrong methods 405 with Allow, bad bodies 400, and a
 * Gemini key in the query string 400. */
static void request_errors(void **state)
{
    struct fx *f = *state;
    json_t *a;

    call(f, "GET", "/v2/nothing", NULL, OPENAI_AUTH, NULL);
    assert_int_equal(f->ans.status, 404);
    call(f, "GET", "/v1/chat/completions", NULL, OPENAI_AUTH, NULL);
    assert_int_equal(f->ans.status, 405);
    assert_string_equal(f->ans.allow, "POST");
    call(f, "POST", "/v1/chat/completions", NULL, OPENAI_AUTH, NULL);
    assert_int_equal(f->ans.status, 400);
    call(f, "POST", "/v1/chat/completions", "{\"model\":", OPENAI_AUTH, NULL);
    assert_int_equal(f->ans.status, 400);
    call(f, "POST", "/v1/chat/completions", "[1]", OPENAI_AUTH, NULL);
    assert_int_equal(f->ans.status, 400);
    a = body_json(call(f, "POST", "/v1/messages", "{bad", ANTHROPIC_AUTH, NULL));
    assert_int_equal(f->ans.status, 400);
    assert_string_equal(jstr(a, "error.type"), "invalid_request_error");
    json_decref(a);
    a = body_json(call(f, "POST", "/v1beta/models/g:generateContent?key=secret",
                       "{\"contents\":[{\"parts\":[{\"text\":\"x\"}]}]}", GEMINI_AUTH, NULL));
    assert_int_equal(f->ans.status, 400);
    assert_string_equal(jstr(a, "error.status"), "INVALID_ARGUMENT");
    assert_non_null(strstr(jstr(a, "error.message"), "x-goog-api-key"));
    assert_null(strstr(jstr(a, "error.message"), "secret"));
    json_decref(a);
}

/* Status faults answer in the route's provider shape; 429 carries
 * Retry-After, quota is insufficient_quota (Anthropic: credit balance). */
static void status_faults(void **state)
{
    struct fx *f = *state;
    struct kp_http_header h[KP_MOCK_ANSWER_HEADERS];
    unsigned n;
    json_t *a;

    a = body_json(call(f, "POST", "/v1/chat/completions", chat_body, OPENAI_AUTH, "X-Mock-Fault",
                       "429:retry_after=9", NULL));
    assert_int_equal(f->ans.status, 429);
    assert_string_equal(jstr(a, "error.code"), "rate_limit_exceeded");
    n = kp_mock_answer_headers(&f->ans, h);
    assert_int_equal(n, 2);
    assert_string_equal(h[1].name, "Retry-After");
    assert_string_equal(h[1].value, "9");
    json_decref(a);
    a = body_json(call(f, "POST", "/v1/chat/completions", chat_body, OPENAI_AUTH, "X-Mock-Fault",
                       "429:retry_after_ms=2500", NULL));
    assert_int_equal(f->ans.status, 429);
    n = kp_mock_answer_headers(&f->ans, h);
    assert_int_equal(n, 2);
    assert_string_equal(h[1].name, "retry-after-ms"); /* alone: no Retry-After */
    assert_string_equal(h[1].value, "2500");
    json_decref(a);

    a = body_json(call(f, "POST", "/v1/chat/completions", chat_body, OPENAI_AUTH, "X-Mock-Fault",
                       "quota", NULL));
    assert_int_equal(f->ans.status, 429);
    assert_string_equal(jstr(a, "error.code"), "insufficient_quota");
    assert_string_equal(f->ans.retry_after, "");
    json_decref(a);

    a = body_json(
        call(f, "POST", "/v1/messages", "{}", ANTHROPIC_AUTH, "X-Mock-Fault", "529", NULL));
    assert_int_equal(f->ans.status, 529);
    assert_string_equal(jstr(a, "error.type"), "overloaded_error");
    json_decref(a);

    a = body_json(call(f, "POST", "/v1beta/models/g:generateContent", "{}", GEMINI_AUTH,
                       "X-Mock-Fault", "429", NULL));
    assert_string_equal(jstr(a, "error.status"), "RESOURCE_EXHAUSTED");
    json_decref(a);

    a = body_json(call(f, "POST", "/v1/chat/completions", chat_body, OPENAI_AUTH, "X-Mock-Fault",
                       "404", NULL));
    assert_non_null(strstr(jstr(a, "error.message"), "gpt-4o-mini"));
    json_decref(a);

    call(f, "POST", "/v1/chat/completions", chat_body, OPENAI_AUTH, "X-Mock-Fault", "nope", NULL);
    assert_int_equal(f->ans.status, 400);
}

/* malformed_json cuts a whole body, or one stream event, so it cannot parse;
 * reset_mid_stream turns into a reset after N events (a whole body is split
 * in two); timing faults are passed on to the transport. */
static void body_and_timing_faults(void **state)
{
    struct fx *f = *state;
    char name[64], data[2048];
    json_t *ev;

    call(f, "POST", "/v1/chat/completions", chat_body, OPENAI_AUTH, "X-Mock-Fault",
         "malformed_json", NULL);
    assert_int_equal(f->ans.status, 200);
    assert_null(json_loadb(f->ans.body.data, f->ans.body.len, 0, NULL));

    call(f, "POST", "/v1/chat/completions",
         "{\"model\":\"m\",\"stream\":true,\"messages\":[{\"content\":\"x\"}]}", OPENAI_AUTH,
         "X-Mock-Fault", "malformed_json", NULL);
    for (unsigned i = 0; i + 1 < f->ans.n_events; i++) {
        ev = event_json(&f->ans, i, name, sizeof(name), data, sizeof(data));
        assert_true((ev == NULL) == (i == 1));
        json_decref(ev);
    }

    call(f, "POST", "/v1/chat/completions",
         "{\"model\":\"m\",\"stream\":true,\"messages\":[{\"content\":\"x\"}]}", OPENAI_AUTH,
         "X-Mock-Fault", "reset_mid_stream=3,slow_chunks=10,latency=20,slow_first_byte=5", NULL);
    assert_int_equal(f->ans.faults.reset_after, 3);
    assert_int_equal(f->ans.faults.slow_chunks_ms, 10);
    assert_int_equal(kp_mock_faults_head_delay(&f->ans.faults), 25);

    call(f, "POST", "/v1/chat/completions", chat_body, OPENAI_AUTH, "X-Mock-Fault",
         "reset_mid_stream", NULL);
    assert_true(f->ans.stream);
    assert_int_equal(f->ans.n_events, 2);
    assert_int_equal(f->ans.faults.reset_after, 1);
}

/* --- scripts and stats --------------------------------------------------- */

/* A key's script applies times=N times, then the key works again; the header
 * wins over the script; listings show the fingerprint, never the key. */
static void scripted_faults(void **state)
{
    struct fx *f = *state;
    struct kp_buf out;
    char err[256];

    assert_int_equal(kp_mock_script_set(&f->mock, "sk-test", 7, "401", 3, 2, -1, err, sizeof(err)),
                     0);
    assert_int_not_equal(
        kp_mock_script_set(&f->mock, "sk-x", 4, "oops", 4, 0, -1, err, sizeof(err)), 0);
    kp_buf_init(&out);
    assert_int_equal(kp_mock_script_render(&f->mock, &out), 0);
    assert_non_null(strstr(out.data, "fp_f3abf2a6cc4f"));
    assert_null(strstr(out.data, "sk-test"));
    kp_buf_free(&out);

    call(f, "POST", "/v1/chat/completions", chat_body, OPENAI_AUTH, NULL);
    assert_int_equal(f->ans.status, 401);
    call(f, "POST", "/v1/chat/completions", chat_body, OPENAI_AUTH, "X-Mock-Fault", "503", NULL);
    assert_int_equal(f->ans.status, 503);
    call(f, "POST", "/v1/chat/completions", chat_body, OPENAI_AUTH, NULL);
    assert_int_equal(f->ans.status, 200);
    call(f, "POST", "/v1/chat/completions", chat_body, "Authorization", "Bearer other", NULL);
    assert_int_equal(f->ans.status, 200);

    /* Control routes: set with times 0 (until cleared), list, clear. */
    call(f, "POST", "/mock/faults", "{\"key\":\"sk-test\",\"faults\":\"quota\"}", NULL);
    assert_int_equal(f->ans.status, 200);
    for (int i = 0; i < 3; i++) {
        call(f, "POST", "/v1/chat/completions", chat_body, OPENAI_AUTH, NULL);
        assert_int_equal(f->ans.status, 429);
    }
    call(f, "DELETE", "/mock/faults", NULL, NULL);
    assert_non_null(strstr(f->ans.body.data, "\"cleared\":1"));
    call(f, "POST", "/v1/chat/completions", chat_body, OPENAI_AUTH, NULL);
    assert_int_equal(f->ans.status, 200);
    call(f, "POST", "/mock/faults", "{\"faults\":\"429\"}", NULL);
    assert_int_equal(f->ans.status, 400);

    /* A script for one route leaves the key's other routes alone. */
    call(f, "POST", "/mock/faults",
         "{\"key\":\"sk-test\",\"faults\":\"500\",\"route\":\"/v1/chat/completions\"}", NULL);
    assert_int_equal(f->ans.status, 200);
    call(f, "GET", "/v1/models", NULL, OPENAI_AUTH, NULL);
    assert_int_equal(f->ans.status, 200);
    call(f, "POST", "/v1/chat/completions", chat_body, OPENAI_AUTH, NULL);
    assert_int_equal(f->ans.status, 500);
    call(f, "GET", "/mock/faults", NULL, NULL);
    assert_non_null(strstr(f->ans.body.data, "\"route\":\"/v1/chat/completions\""));
    call(f, "POST", "/mock/faults", "{\"key\":\"sk-test\",\"faults\":\"500\",\"route\":\"/nope\"}",
         NULL);
    assert_int_equal(f->ans.status, 400);
}

/* Stats count requests per route, per key fingerprint and per status, and
 * /mock/reset zeroes them; control routes are not counted. */
static void stats_count_and_reset(void **state)
{
    struct fx *f = *state;
    json_t *s;

    call(f, "POST", "/v1/chat/completions", chat_body, OPENAI_AUTH, NULL);
    kp_mock_stats_status(&f->mock, 0, f->ans.status);
    call(f, "POST", "/v1/messages", "{}", ANTHROPIC_AUTH, "X-Mock-Fault", "529", NULL);
    kp_mock_stats_status(&f->mock, 0, f->ans.status);
    kp_mock_stats_request(&f->mock, 1, KP_MOCK_R_CHAT, "sk-test", 7);
    kp_mock_stats_aborted(&f->mock, 1);
    kp_mock_stats_reset_sent(&f->mock, 0);

    s = body_json(call(f, "GET", "/mock/stats", NULL, NULL));
    assert_int_equal(jint(s, "requests"), 3);
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(s, "routes"), "/v1/chat/completions")),
        2);
    assert_int_equal(jint(s, "keys.fp_f3abf2a6cc4f"), 2);
    assert_int_equal(jint(s, "statuses.200"), 1);
    assert_int_equal(jint(s, "statuses.529"), 1);
    assert_int_equal(jint(s, "aborted"), 1);
    assert_int_equal(jint(s, "resets"), 1);
    assert_null(strstr(f->ans.body.data, "sk-test"));
    json_decref(s);

    call(f, "POST", "/mock/reset", NULL, NULL);
    assert_int_equal(f->ans.status, 200);
    s = body_json(call(f, "GET", "/mock/stats", NULL, NULL));
    assert_int_equal(jint(s, "requests"), 0);
    assert_int_equal(json_object_size(json_object_get(s, "keys")), 0);
    json_decref(s);
}

/* /mock/stats shows the last traceparent a provider request carried (null
 * before any, and after a reset). */
static void stats_last_traceparent(void **state)
{
    struct fx *f = *state;
    json_t *s;
    static const char tp1[] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    static const char tp2[] = "00-4bf92f3577b34da6a3ce929d0e0e4736-53995c3f42cd8ad8-00";

    s = body_json(call(f, "GET", "/mock/stats", NULL, NULL));
    assert_true(json_is_null(json_object_get(s, "last_traceparent")));
    json_decref(s);
    call(f, "POST", "/v1/chat/completions", chat_body, OPENAI_AUTH, "traceparent", tp1, NULL);
    call(f, "POST", "/v1/chat/completions", chat_body, OPENAI_AUTH, "traceparent", tp2, NULL);
    call(f, "POST", "/v1/chat/completions", chat_body, OPENAI_AUTH, NULL);
    s = body_json(call(f, "GET", "/mock/stats", NULL, NULL));
    assert_string_equal(json_string_value(json_object_get(s, "last_traceparent")), tp2);
    json_decref(s);
    call(f, "POST", "/mock/reset", NULL, NULL);
    s = body_json(call(f, "GET", "/mock/stats", NULL, NULL));
    assert_true(json_is_null(json_object_get(s, "last_traceparent")));
    json_decref(s);
}

/* The fingerprint is "fp_" + 12 hex digits of SHA-256. */
static void fingerprint_format(void **state)
{
    char fp[KP_MOCK_FP_LEN];

    (void)state;
    kp_mock_fingerprint("sk-test", 7, fp);
    assert_string_equal(fp, "fp_f3abf2a6cc4f");
}

/* Running out of memory at any allocation yields a whole, valid answer or a
 * 503, never a crash or a leak (ASan checks the latter). */
static void out_of_memory_is_a_503(void **state)
{
    struct fx *f = *state;
    static const char stream_body[] =
        "{\"model\":\"m\",\"stream\":true,\"messages\":[{\"content\":\"x\"}]}";

    for (long n = 0; n < 40; n++) {
        kp_mock_answer_free(&f->ans);
        kp_mock_answer_init(&f->ans);
        kp_alloc_fail_after(n);
        call(f, "POST", "/v1/chat/completions", n % 2 ? stream_body : chat_body, OPENAI_AUTH, NULL);
        kp_alloc_fail_reset();
        assert_true(f->ans.status == 200 || f->ans.status == 503);
        assert_true(f->ans.failed || f->ans.body.len > 0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(usage_is_derived_from_the_request, setup, teardown),
        cmocka_unit_test_setup_teardown(max_tokens_caps_the_reply, setup, teardown),
        cmocka_unit_test(fault_specs_parse),
        cmocka_unit_test(bad_fault_specs_are_refused),
        cmocka_unit_test_setup_teardown(chat_completion_shape, setup, teardown),
        cmocka_unit_test_setup_teardown(azure_deployment_routes, setup, teardown),
        cmocka_unit_test_setup_teardown(completions_shape, setup, teardown),
        cmocka_unit_test_setup_teardown(embeddings_shape, setup, teardown),
        cmocka_unit_test_setup_teardown(responses_shape, setup, teardown),
        cmocka_unit_test_setup_teardown(models_list, setup, teardown),
        cmocka_unit_test_setup_teardown(anthropic_message_shape, setup, teardown),
        cmocka_unit_test_setup_teardown(anthropic_requires_max_tokens_and_version, setup, teardown),
        cmocka_unit_test_setup_teardown(anthropic_accepts_bearer_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(gemini_shape, setup, teardown),
        cmocka_unit_test_setup_teardown(openai_stream_include_usage, setup, teardown),
        cmocka_unit_test_setup_teardown(anthropic_event_order, setup, teardown),
        cmocka_unit_test_setup_teardown(responses_stream_events, setup, teardown),
        cmocka_unit_test_setup_teardown(gemini_stream, setup, teardown),
        cmocka_unit_test_setup_teardown(missing_key_is_401_per_provider, setup, teardown),
        cmocka_unit_test_setup_teardown(request_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(status_faults, setup, teardown),
        cmocka_unit_test_setup_teardown(body_and_timing_faults, setup, teardown),
        cmocka_unit_test_setup_teardown(scripted_faults, setup, teardown),
        cmocka_unit_test_setup_teardown(stats_count_and_reset, setup, teardown),
        cmocka_unit_test_setup_teardown(stats_last_traceparent, setup, teardown),
        cmocka_unit_test(fingerprint_format),
        cmocka_unit_test_setup_teardown(out_of_memory_is_a_503, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}

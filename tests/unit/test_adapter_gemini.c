/* Unit tests of the OpenAI chat <-> Gemini adapter (router/adapter_gemini.c).
 *
 * Most cases are golden files: golden/gemini/<case>.in.json goes through the
 * adapter and the result must equal (json_equal) <case>.out.json. Request
 * cases (req_*, refuse_*) expect a generateContent body, or
 * {"refused":{code, param, message}}; answer cases (resp_*) expect
 * {"completion", "usage"} or {"error"}; stream cases (stream_*) feed
 * in.events one by one, end the stream, and expect {"chunks", "usage"}, plus
 * "error" when an event failed (no later event is fed, the stream is not
 * ended). "usage" is the kp_usage_counts the meter gets.
 *
 * The C cases cover every finish reason, malformed answers, the emit
 * callback stopping a stream, and allocation failure at every point (both
 * kp_malloc's and jansson's) without leaks or partial output.
 *
 * KP_GOLDEN_WRITE=1 rewrites the .out.json files from what the adapter does
 * now; review the difference before keeping it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "router/adapter.h"

#ifndef GOLDEN_DIR
#error "GOLDEN_DIR must name tests/unit/golden"
#endif

static const struct kp_chat_ident ident = {"chatcmpl-abc123", 1767225600, "gemini-2.5-flash"};

/* --- helpers ------------------------------------------------------------- */

static void golden_path(char *buf, size_t len, const char *name, const char *ext)
{
    snprintf(buf, len, "%s/gemini/%s.%s.json", GOLDEN_DIR, name, ext);
}

static json_t *load(const char *name, const char *ext)
{
    char path[1024];
    json_error_t jerr;
    golden_path(path, sizeof(path), name, ext);
    json_t *v = json_load_file(path, 0, &jerr);
    if (v == NULL)
        fail_msg("%s: %s (line %d)", path, jerr.text, jerr.line);
    return v;
}

static json_t *parse(const char *text)
{
    json_error_t jerr;
    json_t *v = json_loads(text, 0, &jerr);
    if (v == NULL)
        fail_msg("bad test JSON '%s': %s", text, jerr.text);
    return v;
}

static json_t *counts_json(const struct kp_usage_counts *u)
{
    return json_pack("{s:I,s:I,s:I,s:b}", "input", (json_int_t)u->input, "output",
                     (json_int_t)u->output, "cached", (json_int_t)u->cached, "present", u->present);
}

static json_t *run_request(const json_t *in)
{
    json_t *out = (json_t *)1;
    char msg[256], param[160];
    int rc = kp_gemini_request_from_chat(in, &out, msg, sizeof(msg), param, sizeof(param));
    if (rc == KP_OK) {
        assert_non_null(out);
        return out;
    }
    assert_null(out);
    return json_pack("{s:{s:s,s:s,s:s}}", "refused", "code", kp_err_name(rc), "param", param,
                     "message", msg);
}

static json_t *run_response(const json_t *in)
{
    json_t *out = (json_t *)1;
    struct kp_usage_counts u;
    char msg[256];
    int rc = kp_gemini_response_to_chat(in, &ident, &out, &u, msg, sizeof(msg));
    if (rc == KP_OK)
        return json_pack("{s:o,s:o}", "completion", out, "usage", counts_json(&u));
    assert_null(out);
    return json_pack("{s:{s:s,s:s}}", "error", "code", kp_err_name(rc), "message", msg);
}

static long jansson_budget = -1; /* allocations jansson may still make; -1: any */

/* Collects emitted chunks; returns @rc once @stop_after chunks arrived. */
struct collect {
    json_t *chunks;
    size_t stop_after; /* 0: never */
    int rc;
};

static int collect_chunk(void *arg, const char *event, json_t *item)
{
    struct collect *c = arg;
    long budget = jansson_budget; /* the collector's own memory never fails */
    assert_null(event);
    jansson_budget = -1;
    assert_int_equal(json_array_append(c->chunks, item), 0);
    jansson_budget = budget;
    if (c->stop_after > 0 && json_array_size(c->chunks) >= c->stop_after)
        return c->rc;
    return 0;
}

static json_t *run_stream(const json_t *in)
{
    struct kp_gemini_stream *s =
        kp_gemini_stream_new(&ident, json_is_true(json_object_get(in, "include_usage")));
    struct collect c = {json_array(), 0, 0};
    struct kp_usage_counts u;
    char msg[256] = "";
    int rc = KP_OK;
    assert_non_null(s);
    for (size_t k = 0; rc == KP_OK && k < json_array_size(json_object_get(in, "events")); k++)
        rc = kp_gemini_stream_event(s, json_array_get(json_object_get(in, "events"), k),
                                    collect_chunk, &c, msg, sizeof(msg));
    if (rc == KP_OK)
        rc = kp_gemini_stream_end(s, collect_chunk, &c);
    kp_gemini_stream_usage(s, &u);
    kp_gemini_stream_free(s);
    json_t *out = json_pack("{s:o,s:o}", "chunks", c.chunks, "usage", counts_json(&u));
    if (rc != KP_OK)
        json_object_set_new(out, "error",
                            json_pack("{s:s,s:s}", "code", kp_err_name(rc), "message", msg));
    return out;
}

static void check_golden(const char *name, json_t *actual)
{
    char path[1024];
    golden_path(path, sizeof(path), name, "out");
    if (getenv("KP_GOLDEN_WRITE") != NULL)
        assert_int_equal(json_dump_file(actual, path, JSON_INDENT(2)), 0);
    json_t *expect = load(name, "out");
    if (!json_equal(expect, actual)) {
        char *got = json_dumps(actual, JSON_INDENT(2));
        print_error("%s: got\n%s\n", path, got);
        free(got);
        json_decref(expect);
        json_decref(actual);
        fail_msg("%s differs from the adapter's output", path);
    }
    json_decref(expect);
    json_decref(actual);
}

/* --- golden cases -------------------------------------------------------- */

enum kind { REQ, RESP, STREAM };

struct golden {
    enum kind kind;
    const char *name;
};

static const struct golden goldens[] = {
    /* One user string becomes one user turn with one text part. */
    {REQ, "req_plain"},
    /* system and developer messages (wherever they are) become systemInstruction,
     * consecutive same-role turns merge, empty assistant turns vanish, refusals are
     * replayed as text, and sampling fields land in generationConfig. */
    {REQ, "req_system_multiturn"},
    /* data: images, audio and files become inlineData; https images become fileData
     * with the MIME type of their extension, image/jpeg when there is none. */
    {REQ, "req_images"},
    /* Tool schemas keep only what Gemini's Schema knows (types upper-cased, nullable
     * types, oneOf -> anyOf, const -> enum, unsupported formats dropped), a tool
     * without parameters has none, and tool_choice auto is mode AUTO. */
    {REQ, "req_tools_auto"},
    /* tool_choice none is mode NONE. */
    {REQ, "req_tool_choice_none"},
    /* tool_choice required is mode ANY. */
    {REQ, "req_tool_choice_required"},
    /* A named function is mode ANY restricted to it. */
    {REQ, "req_tool_choice_function"},
    /* Tool calls become functionCall parts with parsed args (and the skip signature),
     * tool results become functionResponse parts named after the latest call with
     * their id (objects as is, other text as {"content"}), merged with the next user
     * message; max_completion_tokens wins over max_tokens; n 1, stop arrays and
     * json_object map to generationConfig. */
    {REQ, "req_tool_roundtrip"},
    /* A json_schema response_format becomes responseMimeType + a cleaned
     * responseSchema. */
    {REQ, "req_response_schema"},
    /* n > 1 is refused at "n". */
    {REQ, "refuse_n"},
    /* Tool call arguments that are not JSON are refused at their exact path. */
    {REQ, "refuse_bad_arguments"},
    /* Tool call arguments that are JSON but not an object are refused. */
    {REQ, "refuse_arguments_not_object"},
    /* A tool result whose tool_call_id no earlier assistant issued is refused. */
    {REQ, "refuse_unknown_tool_call_id"},
    /* Plain http image URLs are refused. */
    {REQ, "refuse_http_image"},
    /* $ref in a tool schema is refused at the $ref. */
    {REQ, "refuse_schema_ref"},
    /* A type array naming two real types is refused. */
    {REQ, "refuse_schema_types"},
    /* tool_choice naming an undeclared function is refused. */
    {REQ, "refuse_tool_choice_unknown"},
    /* The legacy function role is refused. */
    {REQ, "refuse_role"},
    /* A conversation of system messages only is refused: Gemini needs contents. */
    {REQ, "refuse_only_system"},
    /* Images in system messages are refused. */
    {REQ, "refuse_system_image"},
    /* max_tokens 0 is refused. */
    {REQ, "refuse_max_tokens"},
    /* logprobs is refused: the answers would not carry them. */
    {REQ, "refuse_logprobs"},
    /* OpenAI file ids are refused: Gemini cannot fetch them. */
    {REQ, "refuse_file_id"},
    /* tool_choice required without tools is refused. */
    {REQ, "refuse_tool_choice_without_tools"},
    /* Text parts are joined, STOP is stop, usage is mapped. */
    {RESP, "resp_text"},
    /* functionCall parts become tool_calls with ids from the completion id, JSON
     * arguments (absent args are {}), and finish_reason tool_calls. */
    {RESP, "resp_tool_calls"},
    /* MAX_TOKENS is length. */
    {RESP, "resp_max_tokens"},
    /* A candidate stopped by SAFETY without content is content_filter with "". */
    {RESP, "resp_safety"},
    /* A blocked prompt (no candidates) is a content_filter completion with "". */
    {RESP, "resp_prompt_blocked"},
    /* Thought parts are not shown; thinking and cached tokens are counted. */
    {RESP, "resp_thinking"},
    /* No usageMetadata: zero usage, not present. */
    {RESP, "resp_no_usage"},
    /* An error object is KP_EPARSE with Google's status and message. */
    {RESP, "resp_error"},
    /* No candidates and no block reason is KP_EPARSE. */
    {RESP, "resp_no_candidates"},
    /* Text deltas, role on the first chunk, finish on the last content chunk, the
     * latest usage in a final chunk with empty choices. */
    {STREAM, "stream_text"},
    /* Without include_usage no usage is sent; events after the finish only update
     * the usage counts. */
    {STREAM, "stream_text_no_usage"},
    /* Function calls stream as whole tool call deltas with index, id and name; the
     * finish is tool_calls. */
    {STREAM, "stream_function_call"},
    /* A first chunk with only a tool call has content null. */
    {STREAM, "stream_tool_call_only"},
    /* A stream that ends without finishReason gets finish_reason stop at the end. */
    {STREAM, "stream_no_finish"},
    /* A blocked prompt streams one content_filter chunk. */
    {STREAM, "stream_prompt_blocked"},
    /* SAFETY mid-stream finishes with content_filter. */
    {STREAM, "stream_safety_midway"},
    /* Thought parts are not streamed; MAX_TOKENS is length. */
    {STREAM, "stream_thinking"},
    /* An error event stops the stream with KP_EPARSE and Google's message. */
    {STREAM, "stream_error"},
};

#define NGOLDEN (sizeof(goldens) / sizeof(goldens[0]))

static void test_golden(void **state)
{
    const struct golden *g = *state;
    json_t *in = load(g->name, "in");
    json_t *out = g->kind == REQ    ? run_request(in)
                  : g->kind == RESP ? run_response(in)
                                    : run_stream(in);
    json_decref(in);
    check_golden(g->name, out);
}

/* --- more refusals ------------------------------------------------------- */

/* Every other refusal names its exact param with an actionable message, and
 * leaves no output. */
static void test_refusals(void **state)
{
#define USER "{\"role\":\"user\",\"content\":\"hi\"}"
    static const struct {
        const char *request;
        const char *param;
        const char *message;
    } cases[] = {
        {"[]", "", "the request body must be a JSON object"},
        {"{\"messages\":[]}", "messages", "messages must be a non-empty array"},
        {"{\"messages\":[1]}", "messages[0]", "each message must be an object"},
        {"{\"messages\":[{\"content\":\"x\"}]}", "messages[0].role", "each message needs a role"},
        {"{\"messages\":[{\"role\":\"user\"}]}", "messages[0].content",
         "content must be a string or an array of content parts"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":[{\"text\":\"x\"}]}]}",
         "messages[0].content[0].type", "each content part needs a type"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":1}]}]}",
         "messages[0].content[0].text", "a text part needs a string text"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}",
         "messages[0].content[0].image_url.url", "an image_url part needs a url"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\","
         "\"image_url\":\"data:image/png,abc\"}]}]}",
         "messages[0].content[0].image_url.url",
         "data: URLs sent to Gemini must be base64-encoded"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\","
         "\"image_url\":{\"url\":\"data:;base64,abc\"}}]}]}",
         "messages[0].content[0].image_url.url", "the data: URL has no media type"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"input_audio\","
         "\"input_audio\":{\"data\":\"AA==\",\"format\":\"flac\"}}]}]}",
         "messages[0].content[0].input_audio.format", "input_audio format must be wav or mp3"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"file\",\"file\":{"
         "\"file_data\":\"JVBERi0=\"}}]}]}",
         "messages[0].content[0].file.file_data",
         "expected a data: URL (data:<media type>;base64,<data>)"},
        {"{\"messages\":[" USER ",{\"role\":\"assistant\",\"content\":[{\"type\":\"image_url\","
         "\"image_url\":{\"url\":\"https://x/a.png\"}}]}]}",
         "messages[1].content[0].type",
         "content parts of type 'image_url' cannot be sent to Gemini in assistant messages"},
        {"{\"messages\":[" USER ",{\"role\":\"assistant\",\"tool_calls\":{}}]}",
         "messages[1].tool_calls", "tool_calls must be an array"},
        {"{\"messages\":[" USER
         ",{\"role\":\"assistant\",\"tool_calls\":[{\"type\":\"custom\"}]}]}",
         "messages[1].tool_calls[0].type", "only function tool calls can be sent to Gemini"},
        {"{\"messages\":[" USER ",{\"role\":\"assistant\",\"tool_calls\":[{\"function\":{}}]}]}",
         "messages[1].tool_calls[0].function.name", "a tool call needs a function name"},
        {"{\"messages\":[" USER ",{\"role\":\"assistant\",\"tool_calls\":[{\"function\":{"
         "\"name\":\"f\",\"arguments\":3}}]}]}",
         "messages[1].tool_calls[0].function.arguments",
         "tool call arguments must be a string of JSON"},
        {"{\"messages\":[" USER ",{\"role\":\"tool\",\"content\":\"x\"}]}",
         "messages[1].tool_call_id", "a tool message needs the tool_call_id it answers"},
        {"{\"messages\":[" USER ",{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"c1\","
         "\"function\":{\"name\":\"f\"}}]},{\"role\":\"tool\",\"tool_call_id\":\"c1\","
         "\"content\":[{\"type\":\"image_url\"}]}]}",
         "messages[2].content[0].type", "tool results sent to Gemini must be text"},
        {"{\"messages\":[" USER "],\"tools\":{}}", "tools", "tools must be an array"},
        {"{\"messages\":[" USER "],\"tools\":[{\"type\":\"web_search\"}]}", "tools[0].type",
         "only function tools can be sent to Gemini"},
        {"{\"messages\":[" USER "],\"tools\":[{\"type\":\"function\",\"function\":{}}]}",
         "tools[0].function.name", "a function tool needs a name"},
        {"{\"messages\":[" USER "],\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\","
         "\"description\":1}}]}",
         "tools[0].function.description", "a function description must be a string"},
        {"{\"messages\":[" USER "],\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\","
         "\"parameters\":true}}]}",
         "tools[0].function.parameters", "a schema must be a JSON object"},
        {"{\"messages\":[" USER "],\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\","
         "\"parameters\":{\"type\":\"object\",\"properties\":{\"a\":{\"allOf\":[]}}}}}]}",
         "tools[0].function.parameters.properties.a.allOf",
         "allOf is not supported by Gemini: merge the schemas into one"},
        {"{\"messages\":[" USER "],\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\","
         "\"parameters\":{\"type\":\"object\",\"properties\":{\"a\":{\"anyOf\":[{}],\"oneOf\":[]}}}"
         "}}]}",
         "tools[0].function.parameters.properties.a.oneOf",
         "Gemini takes anyOf or oneOf in one schema, not both"},
        {"{\"messages\":[" USER "],\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\","
         "\"parameters\":{\"type\":\"object\",\"properties\":{\"a\":{\"anyOf\":[{},1]}}}}}]}",
         "tools[0].function.parameters.properties.a.anyOf[1]", "a schema must be a JSON object"},
        {"{\"messages\":[" USER "],\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\","
         "\"parameters\":{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"tuple\"}}}}}]}",
         "tools[0].function.parameters.properties.a.type",
         "schema type 'tuple' is not one Gemini knows"},
        {"{\"messages\":[" USER "],\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\","
         "\"parameters\":{\"type\":\"object\",\"properties\":{\"a\":{\"type\":[\"null\"]}}}}}]}",
         "tools[0].function.parameters.properties.a.type",
         "Gemini takes one type per schema, or one type and \"null\": use anyOf"},
        {"{\"messages\":[" USER "],\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\","
         "\"parameters\":{\"type\":\"object\",\"properties\":[]}}}]}",
         "tools[0].function.parameters", "properties must be an object"},
        {"{\"messages\":[" USER "],\"tool_choice\":\"any\"}", "tool_choice",
         "tool_choice must be auto, none, required or a function object"},
        {"{\"messages\":[" USER "],\"tool_choice\":{\"type\":\"web\"}}", "tool_choice.type",
         "tool_choice objects must be of type function"},
        {"{\"messages\":[" USER "],\"tool_choice\":{\"type\":\"function\"}}",
         "tool_choice.function.name", "tool_choice needs a function name"},
        {"{\"messages\":[" USER "],\"temperature\":\"hot\"}", "temperature",
         "temperature must be a number"},
        {"{\"messages\":[" USER "],\"max_completion_tokens\":1.5}", "max_completion_tokens",
         "max_completion_tokens must be a positive integer"},
        {"{\"messages\":[" USER "],\"stop\":[\"a\",1]}", "stop[1]",
         "stop sequences must be strings"},
        {"{\"messages\":[" USER "],\"stop\":1}", "stop",
         "stop must be a string or an array of strings"},
        {"{\"messages\":[" USER "],\"n\":0}", "n", "n must be a positive integer"},
        {"{\"messages\":[" USER "],\"response_format\":{}}", "response_format.type",
         "response_format needs a type"},
        {"{\"messages\":[" USER "],\"response_format\":{\"type\":\"xml\"}}", "response_format.type",
         "response_format type 'xml' is not supported by Gemini"},
        {"{\"messages\":[" USER "],\"response_format\":{\"type\":\"json_schema\"}}",
         "response_format.json_schema.schema", "a json_schema response_format needs a schema"},
    };
#undef USER
    (void)state;
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        json_t *req = json_loads(cases[k].request, JSON_DECODE_ANY, NULL);
        json_t *out = (json_t *)1;
        char msg[256] = "", param[160] = "";
        if (req == NULL)
            fail_msg("bad test JSON %s", cases[k].request);
        int rc = kp_gemini_request_from_chat(req, &out, msg, sizeof(msg), param, sizeof(param));
        if (rc != KP_EINVAL || strcmp(param, cases[k].param) != 0 ||
            strcmp(msg, cases[k].message) != 0)
            fail_msg("%s: got %s '%s' '%s'", cases[k].request, kp_err_name(rc), param, msg);
        assert_null(out);
        json_decref(req);
    }
}

/* A schema nested deeper than Gemini could use is refused where it gets too
 * deep, not by running out of stack. */
static void test_schema_depth(void **state)
{
    json_t *schema = json_pack("{s:s}", "type", "string");
    for (int k = 0; k < 200; k++)
        schema = json_pack("{s:s,s:o}", "type", "array", "items", schema);
    json_t *req = json_pack("{s:[{s:s,s:s}],s:[{s:s,s:{s:s,s:{s:s,s:{s:o}}}}]}", "messages", "role",
                            "user", "content", "hi", "tools", "type", "function", "function",
                            "name", "f", "parameters", "type", "object", "properties", "a", schema);
    json_t *out = (json_t *)1;
    char msg[256], param[1024];
    (void)state;
    assert_int_equal(kp_gemini_request_from_chat(req, &out, msg, sizeof(msg), param, sizeof(param)),
                     KP_EINVAL);
    assert_null(out);
    assert_string_equal(msg, "the schema is nested more than 64 levels deep");
    assert_true(strncmp(param, "tools[0].function.parameters.properties.a.items.items", 52) == 0);
    json_decref(req);
}

/* --- finish reasons ------------------------------------------------------ */

/* The finish_reason of candidates[0] ending with @reason (NULL: none), with a
 * function call part when @call; from the whole answer and from a stream. */
static void check_finish(const char *reason, bool call, const char *expect)
{
    json_t *parts =
        json_pack(call ? "[{s:s},{s:{s:s}}]" : "[{s:s}]", "text", "x", "functionCall", "name", "f");
    json_t *cand = json_pack("{s:{s:s,s:o}}", "content", "role", "model", "parts", parts);
    if (reason != NULL)
        json_object_set_new(cand, "finishReason", json_string(reason));
    json_t *resp = json_pack("{s:[o]}", "candidates", cand);
    json_t *out;
    char msg[256];
    assert_int_equal(kp_gemini_response_to_chat(resp, &ident, &out, NULL, msg, sizeof(msg)), KP_OK);
    const json_t *choice = json_array_get(json_object_get(out, "choices"), 0);
    assert_string_equal(json_string_value(json_object_get(choice, "finish_reason")), expect);
    json_decref(out);

    struct kp_gemini_stream *s = kp_gemini_stream_new(&ident, false);
    struct collect c = {json_array(), 0, 0};
    assert_int_equal(kp_gemini_stream_event(s, resp, collect_chunk, &c, msg, sizeof(msg)), KP_OK);
    assert_int_equal(kp_gemini_stream_end(s, collect_chunk, &c), KP_OK);
    size_t n = json_array_size(c.chunks);
    /* The finish rides on the content chunk, or comes at the end. */
    assert_int_equal(n, reason != NULL ? 1 : 2);
    choice = json_array_get(json_object_get(json_array_get(c.chunks, n - 1), "choices"), 0);
    assert_string_equal(json_string_value(json_object_get(choice, "finish_reason")), expect);
    kp_gemini_stream_free(s);
    json_decref(c.chunks);
    json_decref(resp);
}

/* Every Gemini finishReason maps to the OpenAI one: filters win over tool
 * calls, tool calls over a token limit, everything else is stop. */
static void test_finish_reasons(void **state)
{
    static const struct {
        const char *reason;
        bool call;
        const char *expect;
    } cases[] = {
        {"STOP", false, "stop"},
        {"STOP", true, "tool_calls"},
        {NULL, true, "tool_calls"},
        {"MAX_TOKENS", false, "length"},
        {"MAX_TOKENS", true, "tool_calls"},
        {"SAFETY", false, "content_filter"},
        {"SAFETY", true, "content_filter"},
        {"RECITATION", false, "content_filter"},
        {"BLOCKLIST", false, "content_filter"},
        {"PROHIBITED_CONTENT", false, "content_filter"},
        {"SPII", false, "content_filter"},
        {"IMAGE_SAFETY", false, "content_filter"},
        {"LANGUAGE", false, "stop"},
        {"OTHER", false, "stop"},
        {"MALFORMED_FUNCTION_CALL", false, "stop"},
        {"FINISH_REASON_UNSPECIFIED", false, "stop"},
        {"SOMETHING_NEW", false, "stop"},
    };
    (void)state;
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++)
        check_finish(cases[k].reason, cases[k].call, cases[k].expect);
}

/* --- malformed answers --------------------------------------------------- */

/* Answers missing a required field or with one of the wrong type are
 * KP_EPARSE with a message naming it, whole or streamed; unknown fields are
 * ignored. */
static void test_malformed_answers(void **state)
{
    static const struct {
        const char *answer;
        const char *message;
    } cases[] = {
        {"[]", "gemini answer: not a JSON object"},
        {"{\"candidates\":{}}", "gemini answer: candidates is not an array"},
        {"{\"candidates\":[7]}", "gemini answer: a candidate is not an object"},
        {"{\"candidates\":[{\"finishReason\":1}]}", "gemini answer: finishReason is not a string"},
        {"{\"candidates\":[{\"content\":[]}]}", "gemini answer: content is not an object"},
        {"{\"candidates\":[{\"content\":{\"parts\":{}}}]}",
         "gemini answer: content.parts is not an array"},
        {"{\"candidates\":[{\"content\":{\"parts\":[1]}}]}",
         "gemini answer: a content part is not an object"},
        {"{\"candidates\":[{\"content\":{\"parts\":[{\"text\":1}]}}]}",
         "gemini answer: a part's text is not a string"},
        {"{\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":\"f\"}]}}]}",
         "gemini answer: a functionCall is not an object"},
        {"{\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"args\":{}}}]}}]}",
         "gemini answer: a functionCall has no name"},
        {"{\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"name\":\"f\",\"args\":[]}}"
         "]}}]}",
         "gemini answer: functionCall.args is not an object"},
        {"{\"candidates\":[],\"usageMetadata\":[]}",
         "gemini answer: usageMetadata is not an object"},
        {"{\"candidates\":[],\"usageMetadata\":{\"promptTokenCount\":-1}}",
         "gemini answer: usageMetadata.promptTokenCount is not a count"},
        {"{\"candidates\":[],\"usageMetadata\":{\"thoughtsTokenCount\":\"3\"}}",
         "gemini answer: usageMetadata.thoughtsTokenCount is not a count"},
    };
    (void)state;
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        json_t *resp = json_loads(cases[k].answer, JSON_DECODE_ANY, NULL);
        json_t *out = (json_t *)1;
        struct kp_usage_counts u;
        char msg[256] = "";
        assert_non_null(resp);
        assert_int_equal(kp_gemini_response_to_chat(resp, &ident, &out, &u, msg, sizeof(msg)),
                         KP_EPARSE);
        assert_null(out);
        assert_string_equal(msg, cases[k].message);
        assert_false(u.present);

        struct kp_gemini_stream *s = kp_gemini_stream_new(&ident, true);
        struct collect c = {json_array(), 0, 0};
        msg[0] = '\0';
        assert_int_equal(kp_gemini_stream_event(s, resp, collect_chunk, &c, msg, sizeof(msg)),
                         KP_EPARSE);
        if (k == 0)
            assert_string_equal(msg, "gemini stream: an event is not a JSON object");
        else
            assert_string_equal(msg, cases[k].message);
        assert_int_equal(json_array_size(c.chunks), 0);
        kp_gemini_stream_free(s);
        json_decref(c.chunks);
        json_decref(resp);
    }
}

/* --- stream control ------------------------------------------------------ */

/* A non-zero return from the emit callback stops the translation and is
 * returned, from an event and from the end. */
static void test_stream_emit_stops(void **state)
{
    json_t *ev = parse("{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"a\"}]}}]}");
    struct kp_gemini_stream *s = kp_gemini_stream_new(&ident, true);
    struct collect c = {json_array(), 1, 42};
    char msg[256];
    (void)state;
    assert_int_equal(kp_gemini_stream_event(s, ev, collect_chunk, &c, msg, sizeof(msg)), 42);
    assert_int_equal(json_array_size(c.chunks), 1);
    c.stop_after = 3;
    c.rc = 43;
    /* The finish chunk goes out (2), the usage chunk is the third and stops. */
    assert_int_equal(kp_gemini_stream_end(s, collect_chunk, &c), 43);
    assert_int_equal(json_array_size(c.chunks), 3);
    kp_gemini_stream_free(s);
    json_decref(c.chunks);
    json_decref(ev);
}

/* Ending a stream twice emits its last chunks once; events after the end are
 * only counted. */
static void test_stream_end_once(void **state)
{
    json_t *ev = parse("{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"a\"}]}}],"
                       "\"usageMetadata\":{\"promptTokenCount\":3,\"candidatesTokenCount\":1}}");
    struct kp_gemini_stream *s = kp_gemini_stream_new(&ident, true);
    struct collect c = {json_array(), 0, 0};
    struct kp_usage_counts u;
    char msg[256];
    (void)state;
    assert_int_equal(kp_gemini_stream_end(s, collect_chunk, &c), KP_OK);
    assert_int_equal(json_array_size(c.chunks), 2); /* finish stop, usage */
    assert_int_equal(kp_gemini_stream_end(s, collect_chunk, &c), KP_OK);
    assert_int_equal(kp_gemini_stream_event(s, ev, collect_chunk, &c, msg, sizeof(msg)), KP_OK);
    assert_int_equal(json_array_size(c.chunks), 2);
    kp_gemini_stream_usage(s, &u);
    assert_true(u.present);
    assert_int_equal(u.input, 3);
    assert_int_equal(u.output, 1);
    kp_gemini_stream_free(s);
    json_decref(c.chunks);
    json_decref(ev);
}

/* --- out of memory ------------------------------------------------------- */

static void *failing_malloc(size_t n)
{
    if (jansson_budget == 0)
        return NULL;
    if (jansson_budget > 0)
        jansson_budget--;
    return malloc(n);
}

/* Fails jansson's (@jansson) or kp_malloc's allocations after @n. */
static void fail_after(bool jansson, long n)
{
    if (jansson) {
        jansson_budget = n;
        json_set_alloc_funcs(failing_malloc, free);
    } else {
        kp_alloc_fail_after(n);
    }
}

static void fail_reset(void)
{
    jansson_budget = -1;
    json_set_alloc_funcs(malloc, free);
    kp_alloc_fail_reset();
}

/* Out of memory at every point of a request translation: KP_ENOMEM, no
 * output, no param, nothing leaked; then the same request translates. */
static void check_request_oom(const char *name, bool jansson)
{
    json_t *in = load(name, "in");
    json_t *expect = load(name, "out");
    bool done = false;
    for (long n = 0; n < 100000 && !done; n++) {
        json_t *out = (json_t *)1;
        char msg[256], param[160];
        fail_after(jansson, n);
        int rc = kp_gemini_request_from_chat(in, &out, msg, sizeof(msg), param, sizeof(param));
        fail_reset();
        if (rc == KP_OK) {
            assert_true(json_equal(out, expect));
            json_decref(out);
            done = true;
        } else {
            if (rc != KP_ENOMEM)
                fail_msg("%s, allocation %ld failing: %s at %s", name, n, msg, param);
            assert_null(out);
            assert_string_equal(msg, "out of memory");
            assert_string_equal(param, "");
        }
    }
    assert_true(done);
    json_decref(in);
    json_decref(expect);
}

/* Requests survive running out of memory at every allocation. */
static void test_request_oom(void **state)
{
    (void)state;
    check_request_oom("req_tool_roundtrip", true);
    check_request_oom("req_tool_roundtrip", false);
    check_request_oom("req_tools_auto", true);
    check_request_oom("req_images", true);
    check_request_oom("req_system_multiturn", true);
    check_request_oom("req_response_schema", true);
}

static void check_response_oom(const char *name, bool jansson)
{
    json_t *in = load(name, "in");
    json_t *expect = load(name, "out");
    bool done = false;
    for (long n = 0; n < 100000 && !done; n++) {
        json_t *out = (json_t *)1;
        struct kp_usage_counts u;
        char msg[256];
        fail_after(jansson, n);
        int rc = kp_gemini_response_to_chat(in, &ident, &out, &u, msg, sizeof(msg));
        fail_reset();
        if (rc == KP_OK) {
            assert_true(json_equal(out, json_object_get(expect, "completion")));
            json_decref(out);
            done = true;
        } else {
            assert_int_equal(rc, KP_ENOMEM);
            assert_null(out);
            assert_string_equal(msg, "out of memory");
            assert_false(u.present);
        }
    }
    assert_true(done);
    json_decref(in);
    json_decref(expect);
}

/* Answers survive running out of memory at every allocation. */
static void test_response_oom(void **state)
{
    (void)state;
    check_response_oom("resp_tool_calls", true);
    check_response_oom("resp_tool_calls", false);
    check_response_oom("resp_text", true);
    check_response_oom("resp_text", false);
    check_response_oom("resp_prompt_blocked", true);
}

/* One stream run with allocations failing after @n: KP_ENOMEM or the golden
 * chunks; true when it ran through. */
static bool stream_oom_run(const json_t *in, const json_t *expect, bool jansson, long n)
{
    struct collect c = {json_array(), 0, 0};
    char msg[256];
    int rc = KP_OK;
    fail_after(jansson, n);
    struct kp_gemini_stream *s =
        kp_gemini_stream_new(&ident, json_is_true(json_object_get(in, "include_usage")));
    const json_t *events = json_object_get(in, "events");
    if (s == NULL)
        rc = KP_ENOMEM;
    for (size_t k = 0; rc == KP_OK && k < json_array_size(events); k++)
        rc = kp_gemini_stream_event(s, json_array_get(events, k), collect_chunk, &c, msg,
                                    sizeof(msg));
    if (rc == KP_OK)
        rc = kp_gemini_stream_end(s, collect_chunk, &c);
    fail_reset();
    kp_gemini_stream_free(s);
    if (rc == KP_OK)
        assert_true(json_equal(c.chunks, json_object_get(expect, "chunks")));
    else
        assert_int_equal(rc, KP_ENOMEM);
    json_decref(c.chunks);
    return rc == KP_OK;
}

/* Streams survive running out of memory at every allocation. */
static void test_stream_oom(void **state)
{
    static const char *const names[] = {"stream_function_call", "stream_text",
                                        "stream_prompt_blocked"};
    (void)state;
    for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
        json_t *in = load(names[k], "in");
        json_t *expect = load(names[k], "out");
        for (int jansson = 0; jansson < 2; jansson++) {
            bool done = false;
            for (long n = 0; n < 100000 && !done; n++)
                done = stream_oom_run(in, expect, jansson, n);
            assert_true(done);
        }
        json_decref(in);
        json_decref(expect);
    }
}

int main(void)
{
    struct CMUnitTest tests[NGOLDEN + 9];
    size_t n = 0;
    for (size_t k = 0; k < NGOLDEN; k++)
        tests[n++] =
            (struct CMUnitTest){goldens[k].name, test_golden, NULL, NULL, (void *)&goldens[k]};
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_refusals);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_schema_depth);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_finish_reasons);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_malformed_answers);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_stream_emit_stops);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_stream_end_once);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_request_oom);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_response_oom);
    tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_stream_oom);
    return _cmocka_run_group_tests("test_adapter_gemini", tests, n, NULL, NULL);
}

/* libFuzzer driver for the router's JSON scanner (router/answer_scan.c):
 * a differential check against jansson, of both its uses. Whenever the
 * scanner says it is sure of an answer, json_loadb must accept the text as
 * an object and the usage, model and choices (there, and empty) read from
 * the document must be what the scanner found; whenever it is sure of a request, json_loadb with
 * JSON_REJECT_DUPLICATES must accept it (no key twice at any level) and
 * model, stream and stream_options.include_usage must read the same. When
 * it is not sure, nothing is checked (the router parses with jansson
 * then). Its syntax mode (kp_router__json_syntax_ok) must accept whatever
 * jansson reads and refuse what jansson calls a syntax error. Cutting a
 * chunk's "usage": null must leave it valid. Seeds in corpus/answer_scan/ are
 * provider answers, app requests and the edge cases the scanner was written against. */
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "router/adapter_internal.h"
#include "router/router_internal.h"

struct ref {
    bool present;
    uint64_t input, output, cached;
    bool model_set;
    char model[300];
    bool choices, choices_empty;
};

static uint64_t uint_at(const json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_integer(v) && json_integer_value(v) > 0 ? (uint64_t)json_integer_value(v) : 0;
}

static bool ref_parse(const char *data, size_t len, struct ref *r)
{
    memset(r, 0, sizeof(*r));
    json_t *doc = json_loadb(data ? data : "", len, 0, NULL);
    if (doc == NULL)
        return false;
    json_t *usage = json_object_get(doc, "usage");
    if (json_is_object(usage)) {
        r->present = true;
        r->input = uint_at(usage, "prompt_tokens") + uint_at(usage, "input_tokens");
        r->output = uint_at(usage, "completion_tokens") + uint_at(usage, "output_tokens");
        json_t *d = json_object_get(usage, "prompt_tokens_details");
        if (d == NULL)
            d = json_object_get(usage, "input_tokens_details");
        r->cached = uint_at(d, "cached_tokens");
    }
    json_t *model = json_object_get(doc, "model");
    if (json_is_string(model)) {
        r->model_set = true;
        const char *m = json_string_value(model);
        size_t n = strnlen(m, 257);
        if (n > 256)
            r->model[0] = 0;
        else
            memcpy(r->model, m, n + 1);
    }
    json_t *choices = json_object_get(doc, "choices");
    r->choices = choices != NULL;
    r->choices_empty = json_is_array(choices) && json_array_size(choices) == 0;
    bool obj = json_is_object(doc);
    json_decref(doc);
    return obj;
}

static void check_request(const char *text, size_t size)
{
    struct kp_request_facts f;
    if (!kp_router__scan_request(text, size, &f))
        return;
    json_t *doc = json_loadb(text ? text : "", size, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(doc))
        abort(); /* sure of a request jansson refuses (a key twice, say) */
    json_t *model = json_object_get(doc, "model");
    json_t *stream = json_object_get(doc, "stream");
    json_t *so = json_object_get(doc, "stream_options");
    if (!json_is_string(model) || json_string_length(model) != f.model_len ||
        memcmp(json_string_value(model), f.model, f.model_len) != 0)
        abort();
    if (stream != NULL && !json_is_boolean(stream) && !json_is_null(stream))
        abort();
    if (json_is_true(stream) != f.stream || (so != NULL) != f.stream_options ||
        json_is_true(json_object_get(so, "include_usage")) != f.include_usage)
        abort();
    json_decref(doc);
}

/* The syntax mode (what the adapters ask after jansson refused a text):
 * whatever jansson reads is valid; what it refuses as a syntax error is not. */
static void check_syntax(const char *text, size_t size)
{
    json_error_t err;
    bool ok = kp_router__json_syntax_ok(text ? text : "", size);
    json_t *doc = json_loadb(text ? text : "", size, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
    /* jansson ends a top-level scalar at a raw NUL byte ("2\0x" reads as
     * 2); the scanner, like RFC 8259, refuses the byte: stricter, so it
     * never calls such a text an out-of-memory. */
    if (doc != NULL && !ok && memchr(text ? text : "", 0, size) == NULL)
        abort();
    json_decref(doc);
    enum json_error_code code = json_error_code(&err);
    if (doc == NULL && ok &&
        (code == json_error_invalid_syntax || code == json_error_premature_end_of_input ||
         code == json_error_end_of_input_expected))
        abort();
}

/* Members of every object in @v, and how many are "usage": null. */
static void count_members(json_t *v, size_t *members, size_t *usage_nulls, int depth)
{
    if (depth > 64)
        return;
    if (json_is_object(v)) {
        const char *k;
        json_t *m;
        json_object_foreach(v, k, m)
        {
            (*members)++;
            if (strcmp(k, "usage") == 0 && json_is_null(m))
                (*usage_nulls)++;
            count_members(m, members, usage_nulls, depth + 1);
        }
    } else if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v); i++)
            count_members(json_array_get(v, i), members, usage_nulls, depth + 1);
    }
}

/* kp_router__usage_member: a top-level usage object is always reported
 * (the router reads usage from it), and cutting a chunk's "usage": null
 * leaves valid JSON: a text jansson reads as an object is still one
 * without the bytes cut, and no "usage" object is lost. */
static void check_usage_cut(const char *text, size_t size)
{
    size_t from, to;
    enum kp_usage_member um = kp_router__usage_member(text ? text : "", size, &from, &to);
    if (from > to || to > size || (um != KP_USAGE_NULL && to != 0))
        abort();
    json_t *doc = json_loadb(text ? text : "", size, 0, NULL);
    if (json_is_object(json_object_get(doc, "usage")) && um != KP_USAGE_OBJECT)
        abort(); /* a usage object the router would not read */
    if (!json_is_object(doc) || um != KP_USAGE_NULL || from == to) {
        json_decref(doc);
        return;
    }
    char *cut = malloc(size - (to - from) + 1);
    if (cut == NULL)
        abort();
    memcpy(cut, text, from);
    memcpy(cut + from, text + to, size - to);
    json_t *after = json_loadb(cut, size - (to - from), 0, NULL);
    if (!json_is_object(after))
        abort(); /* the cut broke the JSON */
    /* Exactly one "usage": null went, and nothing else: not a member whose
     * name only ends in "usage" after an escaped quote. (Texts with a key
     * twice are left out: jansson keeps the last, so counts differ.) */
    size_t m0 = 0, n0 = 0, m1 = 0, n1 = 0;
    count_members(doc, &m0, &n0, 0);
    count_members(after, &m1, &n1, 0);
    json_t *strict = json_loadb(text, size, JSON_REJECT_DUPLICATES, NULL);
    if (strict != NULL && (m1 + 1 != m0 || n1 + 1 != n0))
        abort();
    json_decref(strict);
    if (json_is_object(json_object_get(doc, "usage")) &&
        !json_is_object(json_object_get(after, "usage")))
        abort(); /* a usage object went */
    json_decref(after);
    json_decref(doc);
    free(cut);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    check_request(text, size);
    check_syntax(text, size);
    check_usage_cut(text, size);
    struct kp_answer_facts f;
    struct ref r, s = {0};
    if (!kp_router__scan_answer(text, size, &f))
        return 0;
    if (!ref_parse(text, size, &r))
        abort(); /* the scanner was sure of something jansson refuses */
    if (f.usage) {
        s.present = true;
        s.input = f.u.prompt_tokens + f.u.input_tokens;
        s.output = f.u.completion_tokens + f.u.output_tokens;
        s.cached = f.u.prompt_details  ? f.u.prompt_cached
                   : f.u.input_details ? f.u.input_cached
                                       : 0;
    }
    if (f.model) {
        s.model_set = true;
        if (f.model_len <= 256) {
            memcpy(s.model, f.model, f.model_len);
            s.model[f.model_len] = 0;
        }
    }
    if (s.present != r.present || s.input != r.input || s.output != r.output ||
        s.cached != r.cached || s.model_set != r.model_set || strcmp(s.model, r.model) != 0 ||
        f.choices != r.choices || f.choices_empty != r.choices_empty)
        abort();
    return 0;
}

/* OpenAI embeddings: POST /v1/embeddings.
 *
 * "input" is a string, an array of strings, an array of token ids, or an
 * array of such arrays. Each input gets a vector of "dimensions" (default 8)
 * values k/128 - 1 with k drawn from a hash of the input, so the same text
 * always embeds the same way and every value is exact both as a decimal and
 * as a float32. encoding_format "base64" (what the official SDKs ask for by
 * default) sends the little-endian float32 bytes in base64. */
#include <openssl/evp.h>
#include <string.h>

#include "internal.h"

#define DEFAULT_DIMS 8
#define MAX_DIMS     256

static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *s = p;

    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static uint64_t splitmix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static uint64_t input_seed(const json_t *in)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    size_t i;
    const json_t *tok;

    if (json_is_string(in))
        return fnv1a(h, json_string_value(in), json_string_length(in));
    json_array_foreach(in, i, tok)
    {
        json_int_t v = json_integer_value(tok);

        h = fnv1a(h, &v, sizeof(v));
    }
    return h;
}

static float component(uint64_t seed, unsigned i)
{
    return (float)(splitmix(seed + i) >> 56) / 128.0f - 1.0f;
}

static void put_vector(struct kp_mock_answer *a, uint64_t seed, unsigned dims, bool base64)
{
    unsigned char raw[MAX_DIMS * 4];
    char b64[(MAX_DIMS * 4 + 2) / 3 * 4 + 1];

    if (!base64) {
        kp_mock__put(a, "[");
        for (unsigned i = 0; i < dims; i++)
            kp_mock__putf(a, "%s%.9g", i ? "," : "", (double)component(seed, i));
        kp_mock__put(a, "]");
        return;
    }
    for (unsigned i = 0; i < dims; i++) {
        float f = component(seed, i);
        uint32_t bits;

        memcpy(&bits, &f, 4);
        for (unsigned b = 0; b < 4; b++)
            raw[i * 4 + b] = (unsigned char)(bits >> (8 * b));
    }
    EVP_EncodeBlock((unsigned char *)b64, raw, (int)(dims * 4));
    kp_mock__put(a, "\"");
    kp_mock__put(a, b64);
    kp_mock__put(a, "\"");
}

/* Valid inputs: string, [string...], [int...], [[int...]...]; non-empty. */
static bool input_ok(const json_t *input, size_t *count)
{
    size_t i;
    const json_t *item;

    if (json_is_string(input)) {
        *count = 1;
        return true;
    }
    if (!json_is_array(input) || json_array_size(input) == 0)
        return false;
    if (json_is_integer(json_array_get(input, 0))) {
        *count = 1;
        return true;
    }
    json_array_foreach(input, i, item)
    {
        if (!json_is_string(item) && !json_is_array(item))
            return false;
    }
    *count = json_array_size(input);
    return true;
}

/* Input @i: the whole of a string or of one token array, else an element. */
static const json_t *nth_input(const json_t *input, size_t i)
{
    if (json_is_string(input) || json_is_integer(json_array_get(input, 0)))
        return input;
    return json_array_get(input, i);
}

static int read_options(const json_t *body, unsigned *dims, bool *base64, struct kp_mock_answer *a)
{
    const json_t *d = json_object_get(body, "dimensions");
    const json_t *fmt = json_object_get(body, "encoding_format");

    *dims = DEFAULT_DIMS;
    *base64 = false;
    if (d != NULL && !json_is_null(d)) {
        if (!json_is_integer(d) || json_integer_value(d) < 1 || json_integer_value(d) > MAX_DIMS) {
            kp_mock__errorf(a, KP_MOCK_OPENAI, 400,
                            "Invalid 'dimensions': expected an integer from 1 to %d.", MAX_DIMS);
            return -1;
        }
        *dims = (unsigned)json_integer_value(d);
    }
    if (fmt != NULL && !json_is_null(fmt)) {
        const char *s = json_string_value(fmt);

        if (s == NULL || (strcmp(s, "float") != 0 && strcmp(s, "base64") != 0)) {
            kp_mock__errorf(a, KP_MOCK_OPENAI, 400,
                            "Invalid 'encoding_format': expected 'float' or 'base64'.");
            return -1;
        }
        *base64 = strcmp(s, "base64") == 0;
    }
    return 0;
}

void kp_mock__openai_embeddings(struct kp_mock_gen *g, const json_t *body, struct kp_mock_answer *a)
{
    const json_t *input = json_object_get(body, "input");
    size_t count;
    unsigned dims;
    bool base64;

    if (!input_ok(input, &count)) {
        kp_mock__errorf(a, KP_MOCK_OPENAI, 400,
                        "'input' must be a string, an array of strings, or an array of token "
                        "arrays, and not empty.");
        return;
    }
    if (read_options(body, &dims, &base64, a) != 0)
        return;
    g->prompt_tokens = kp_mock__input_tokens(input);
    kp_mock__begin(a, 200, "application/json");
    kp_mock__put(a, "{\"object\":\"list\",\"data\":[");
    for (size_t i = 0; i < count; i++) {
        const json_t *in = nth_input(input, i);

        kp_mock__putf(a, "%s{\"object\":\"embedding\",\"index\":%zu,\"embedding\":", i ? "," : "",
                      i);
        put_vector(a, input_seed(in), dims, base64);
        kp_mock__put(a, "}");
    }
    kp_mock__put(a, "],\"model\":");
    kp_mock__put_str(a, g->model, g->model_len);
    kp_mock__putf(a, ",\"usage\":{\"prompt_tokens\":%u,\"total_tokens\":%u}}", g->prompt_tokens,
                  g->prompt_tokens);
}

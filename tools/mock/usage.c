/* Token usage, derived from the request alone so that tests can predict it.
 *
 * Prompt tokens are ceil(bytes of message text / 4) plus KP_MOCK_MSG_OVERHEAD
 * per message (a system prompt counts as a message). Text is a string content
 * or the "text" members of content parts; images and other parts count
 * nothing. Completion tokens are min(cap, KP_MOCK_WORDS), KP_MOCK_WORDS
 * without a cap. A cap that is present but not a positive integer is the
 * caller's 400. */
#include <string.h>

#include "internal.h"

unsigned kp_mock__text_tokens(size_t bytes)
{
    return (unsigned)((bytes + 3) / 4);
}

static size_t part_bytes(const json_t *part)
{
    const json_t *text;

    if (json_is_string(part))
        return json_string_length(part);
    text = json_object_get(part, "text");
    return json_is_string(text) ? json_string_length(text) : 0;
}

size_t kp_mock__content_bytes(const json_t *content)
{
    size_t bytes = 0, i;
    const json_t *part;

    if (json_is_string(content))
        return json_string_length(content);
    if (json_is_array(content)) {
        json_array_foreach(content, i, part)
        {
            bytes += part_bytes(part);
        }
    }
    return bytes;
}

unsigned kp_mock__messages_tokens(const json_t *messages, const char *field, size_t extra_bytes,
                                  unsigned extra_messages)
{
    size_t bytes = extra_bytes, i;
    unsigned count = extra_messages;
    const json_t *msg;

    if (json_is_array(messages)) {
        json_array_foreach(messages, i, msg)
        {
            bytes += kp_mock__content_bytes(json_object_get(msg, field));
            count++;
        }
    }
    return kp_mock__text_tokens(bytes) + count * KP_MOCK_MSG_OVERHEAD;
}

/* The same counts on a body read in place (raw_json.c). */
static size_t raw_part_bytes(const struct kp_mock_raw *part)
{
    struct kp_mock_raw text;

    if (kp_mock__raw_is(part, KP_MOCK_RAW_STRING))
        return kp_mock__raw_strlen(part);
    if (kp_mock__raw_member(part, "text", &text) && kp_mock__raw_is(&text, KP_MOCK_RAW_STRING))
        return kp_mock__raw_strlen(&text);
    return 0;
}

static size_t raw_content_bytes(const struct kp_mock_raw *content)
{
    struct kp_mock_raw part = {0};
    size_t bytes = 0;

    if (kp_mock__raw_is(content, KP_MOCK_RAW_STRING))
        return kp_mock__raw_strlen(content);
    while (kp_mock__raw_next(content, &part))
        bytes += raw_part_bytes(&part);
    return bytes;
}

unsigned kp_mock__raw_messages_tokens(const struct kp_mock_raw *messages, const char *field)
{
    struct kp_mock_raw msg = {0}, content;
    size_t bytes = 0;
    unsigned count = 0;

    while (kp_mock__raw_next(messages, &msg)) {
        if (kp_mock__raw_member(&msg, field, &content))
            bytes += raw_content_bytes(&content);
        count++;
    }
    return kp_mock__text_tokens(bytes) + count * KP_MOCK_MSG_OVERHEAD;
}

/* One embeddings / completions input: a string, or an array of token ids. */
static unsigned one_input_tokens(const json_t *in)
{
    if (json_is_string(in))
        return kp_mock__text_tokens(json_string_length(in));
    if (json_is_array(in))
        return (unsigned)json_array_size(in);
    return 0;
}

unsigned kp_mock__input_tokens(const json_t *input)
{
    unsigned tokens = 0;
    size_t i;
    const json_t *item;

    if (!json_is_array(input))
        return one_input_tokens(input);
    /* An array of integers is one tokenised input, not many inputs. */
    if (json_array_size(input) > 0 && json_is_integer(json_array_get(input, 0)))
        return (unsigned)json_array_size(input);
    json_array_foreach(input, i, item)
    {
        tokens += one_input_tokens(item);
    }
    return tokens;
}

int kp_mock__max_tokens(const json_t *obj, const char *field, long long min, bool *present,
                        long long *value)
{
    const json_t *v = json_object_get(obj, field);

    *present = false;
    if (v == NULL || json_is_null(v))
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < min)
        return -1;
    *present = true;
    *value = json_integer_value(v);
    return 0;
}

int kp_mock__raw_max_tokens(const struct kp_mock_raw *v, long long min, bool *present,
                            long long *value)
{
    long long n;

    *present = false;
    if (v->p == NULL || kp_mock__raw_is(v, KP_MOCK_RAW_NULL))
        return 0;
    if (!kp_mock__raw_int(v, &n) || n < min)
        return -1;
    *present = true;
    *value = n;
    return 0;
}

void kp_mock__set_completion(struct kp_mock_gen *g, bool capped, long long cap)
{
    g->completion_tokens = KP_MOCK_WORDS;
    g->truncated = false;
    if (capped && cap < KP_MOCK_WORDS) {
        g->completion_tokens = (unsigned)cap;
        g->truncated = true;
    }
}

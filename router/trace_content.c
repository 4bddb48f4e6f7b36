/* Content capture: a call's prompt and answer as OpenTelemetry GenAI
 * attributes of its server span, for a tenant whose capture_content is on
 * (docs/observability.md, "Content capture"). trace.c decides whether to
 * capture; this file only turns bodies into attribute values.
 *
 * The values follow the GenAI conventions' JSON forms:
 * gen_ai.system_instructions is an array of parts, gen_ai.input.messages
 * and gen_ai.output.messages arrays of {"role", "parts", "finish_reason"}
 * where a part is {"type":"text","content":...}. Only text is taken (a
 * message's string content, or the "text" of its content blocks, whatever
 * the endpoint's shape); images, audio, tool calls and their arguments are
 * left out, and so is a message that has no text.
 *
 * Every value is bounded: at most KP_TRACE_CONTENT_MAX bytes of text (cut
 * at a character boundary) and KP_TRACE_CONTENT_MSGS messages; what does
 * not fit is dropped and the result says so. A body that cannot be read
 * yields no value, never an error: telemetry is best effort. */
#include <string.h>

#include "router_internal.h"

struct content_budget {
    size_t left; /* bytes of text still allowed */
    bool cut;
};

/* A text part of @s[0..n), cut to what @b has left at a character
 * boundary; NULL when nothing is left of it. */
static json_t *text_part(struct content_budget *b, const char *s, size_t n)
{
    size_t take = 0;
    while (take < n) {
        size_t l = kp_utf8_len(s + take, n - take);
        if (l == 0 || l > b->left - take)
            break;
        take += l;
    }
    b->left -= take;
    if (take < n) { /* nothing after a cut: the value ends where it was cut */
        b->cut = true;
        b->left = 0;
    }
    if (take == 0)
        return NULL;
    return json_pack("{s:s,s:o}", "type", "text", "content", json_stringn(s, take));
}

static void add_text(json_t *parts, struct content_budget *b, const json_t *v)
{
    json_t *p =
        json_is_string(v) ? text_part(b, json_string_value(v), json_string_length(v)) : NULL;
    if (p != NULL)
        json_array_append_new(parts, p);
}

/* The text parts of a content value: a string, or an array of strings and
 * blocks with a "text" member. */
static json_t *parts_of(const json_t *content, struct content_budget *b)
{
    json_t *parts = json_array();
    if (parts == NULL)
        return NULL;
    if (json_is_array(content)) {
        size_t i;
        const json_t *el;
        json_array_foreach(content, i, el)
            add_text(parts, b, json_is_object(el) ? json_object_get(el, "text") : el);
    } else {
        add_text(parts, b, content);
    }
    return parts;
}

/* Append {"role", "parts", "finish_reason"} to @msgs when @content has
 * text. @finish may be NULL. */
static void add_message(json_t *msgs, struct content_budget *b, const char *role,
                        const json_t *content, const json_t *finish)
{
    if (json_array_size(msgs) == KP_TRACE_CONTENT_MSGS) {
        b->cut = true;
        return;
    }
    json_t *parts = parts_of(content, b);
    if (parts == NULL || json_array_size(parts) == 0) {
        json_decref(parts);
        return;
    }
    json_t *m = json_pack("{s:s,s:o}", "role", role, "parts", parts);
    if (m != NULL && json_is_string(finish))
        json_object_set(m, "finish_reason", (json_t *)finish);
    if (m != NULL)
        json_array_append_new(msgs, m);
}

static const char *role_of(const json_t *item, const char *def)
{
    const char *r = json_string_value(json_object_get(item, "role"));
    return r != NULL && r[0] != '\0' ? r : def;
}

/* Messages, or an "input"/"prompt" value: a string, or an array of
 * strings and {role, content} items. */
static void input_messages(json_t *msgs, struct content_budget *b, const json_t *v)
{
    if (!json_is_array(v)) {
        add_message(msgs, b, "user", v, NULL);
        return;
    }
    size_t i;
    const json_t *item;
    json_array_foreach(v, i, item)
    {
        if (json_is_object(item))
            add_message(msgs, b, role_of(item, "user"), json_object_get(item, "content"), NULL);
        else
            add_message(msgs, b, "user", item, NULL);
    }
}

/* The answer's messages: choices (chat completions: message.content;
 * completions: text), a Responses "output" list, or a Messages "content"
 * list. */
static void output_messages(json_t *msgs, struct content_budget *b, const json_t *doc)
{
    const json_t *choices = json_object_get(doc, "choices");
    const json_t *output = json_object_get(doc, "output");
    size_t i;
    const json_t *item;
    if (json_is_array(choices)) {
        json_array_foreach(choices, i, item)
        {
            const json_t *m = json_object_get(item, "message");
            const json_t *content =
                m ? json_object_get(m, "content") : json_object_get(item, "text");
            add_message(msgs, b, role_of(m, "assistant"), content,
                        json_object_get(item, "finish_reason"));
        }
    } else if (json_is_array(output)) {
        json_array_foreach(output, i, item) add_message(msgs, b, role_of(item, "assistant"),
                                                        json_object_get(item, "content"), NULL);
    } else {
        add_message(msgs, b, role_of(doc, "assistant"), json_object_get(doc, "content"),
                    json_object_get(doc, "stop_reason"));
    }
}

/* @v as JSON text (kp_free it), or NULL when it is empty or out of
 * memory. Takes @v. */
static char *dump_nonempty(json_t *v)
{
    size_t len;
    char *text = json_array_size(v) > 0 ? kp_json_dumps(v, &len) : NULL;
    json_decref(v);
    return text;
}

void kp_trace__content(const json_t *body, const char *answer, size_t len,
                       struct kp_trace_content *out)
{
    memset(out, 0, sizeof(*out));
    if (json_is_object(body)) {
        struct content_budget b = {KP_TRACE_CONTENT_MAX, false};
        const json_t *sys = json_object_get(body, "system"); /* Messages */
        if (sys == NULL)
            sys = json_object_get(body, "instructions"); /* Responses */
        out->system = dump_nonempty(sys ? parts_of(sys, &b) : NULL);
        out->truncated |= b.cut;

        b = (struct content_budget){KP_TRACE_CONTENT_MAX, false};
        const json_t *in = json_object_get(body, "messages");
        if (in == NULL)
            in = json_object_get(body, "input"); /* Responses, embeddings */
        if (in == NULL)
            in = json_object_get(body, "prompt"); /* completions */
        json_t *msgs = json_array();
        if (msgs != NULL && in != NULL)
            input_messages(msgs, &b, in);
        out->input = dump_nonempty(msgs);
        out->truncated |= b.cut;
    }
    json_t *doc = answer != NULL ? json_loadb(answer, len, 0, NULL) : NULL;
    if (json_is_object(doc)) {
        struct content_budget b = {KP_TRACE_CONTENT_MAX, false};
        json_t *msgs = json_array();
        if (msgs != NULL)
            output_messages(msgs, &b, doc);
        out->output = dump_nonempty(msgs);
        out->truncated |= b.cut;
    }
    json_decref(doc);
}

void kp_trace__content_free(struct kp_trace_content *tc)
{
    kp_free(tc->system);
    kp_free(tc->input);
    kp_free(tc->output);
    memset(tc, 0, sizeof(*tc));
}

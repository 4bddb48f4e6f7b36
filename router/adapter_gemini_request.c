/* router/adapter_gemini_request: kp_gemini_request_from_chat
 * (router/adapter.h), an app's OpenAI chat request -> a generateContent
 * body: systemInstruction, contents, tools with their schemas rewritten
 * for Gemini, toolConfig and generationConfig.
 *
 * A request Gemini cannot express is refused with KP_EINVAL, the OpenAI
 * param at fault and a message the app developer can act on; out of
 * memory is KP_ENOMEM and nothing half-built is returned. The decisions
 * (merged turns, image URLs, schema rewriting, thought signatures, ...)
 * are listed at the top of adapter_gemini.c. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "router/adapter_internal.h"

#define PATH_LEN          512
#define SCHEMA_MAX_DEPTH  64
#define THOUGHT_SIGNATURE "skip_thought_signature_validator"

/* --- request: refusals ---------------------------------------------------- */

/* Where a request translation reports what went wrong. */
struct req {
    char *errmsg;
    size_t errlen;
    char *param;
    size_t paramlen;
};

static int refuse(struct req *r, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int refuse(struct req *r, const char *param, const char *fmt, ...)
{
    if (r->param != NULL && r->paramlen > 0)
        snprintf(r->param, r->paramlen, "%s", param);
    if (r->errmsg != NULL && r->errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->errmsg, r->errlen, fmt, ap);
        va_end(ap);
    }
    return KP_EINVAL;
}

static int oom(struct req *r)
{
    if (r->param != NULL && r->paramlen > 0)
        r->param[0] = '\0';
    return kp_errf(r->errmsg, r->errlen, KP_ENOMEM, "out of memory");
}

/* Formats a param path into @buf and returns it. */
static const char *pathf(char *buf, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static const char *pathf(char *buf, size_t len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, len, fmt, ap);
    va_end(ap);
    return buf;
}

/* A param path grown and shrunk while walking a schema. */
struct path {
    char buf[PATH_LEN];
    size_t len;
};

static size_t path_push(struct path *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static size_t path_push(struct path *p, const char *fmt, ...)
{
    size_t old = p->len;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->buf + old, sizeof(p->buf) - old, fmt, ap);
    va_end(ap);
    p->len = strlen(p->buf);
    return old;
}

static void path_pop(struct path *p, size_t len)
{
    p->len = len;
    p->buf[len] = '\0';
}

/* --- request: content parts ---------------------------------------------- */

enum part_kinds {
    PARTS_TEXT = 1,    /* {type:text} */
    PARTS_MEDIA = 2,   /* image_url, input_audio, file */
    PARTS_REFUSAL = 4, /* {type:refusal}, sent back as text */
};

static int add_text(struct req *r, json_t *parts, const char *s, size_t len)
{
    if (len == 0) /* Gemini refuses empty text parts */
        return KP_OK;
    if (json_array_append_new(parts, json_pack("{s:s%}", "text", s, len)) != 0)
        return oom(r);
    return KP_OK;
}

/* "data:<mime>;base64,<data>" -> {inlineData:{mimeType, data}}. */
static int add_data_url(struct req *r, const char *url, const char *param, json_t *parts)
{
    const char *comma = strchr(url, ',');
    if (strncasecmp(url, "data:", 5) != 0 || comma == NULL)
        return refuse(r, param, "expected a data: URL (data:<media type>;base64,<data>)");
    const char *mime = url + 5;
    size_t head = (size_t)(comma - mime);
    if (head < 7 || strncasecmp(comma - 7, ";base64", 7) != 0)
        return refuse(r, param, "data: URLs sent to Gemini must be base64-encoded");
    size_t mime_len = strcspn(mime, ";,");
    if (mime_len == 0)
        return refuse(r, param, "the data: URL has no media type");
    json_t *part =
        json_pack("{s:{s:s%,s:s}}", "inlineData", "mimeType", mime, mime_len, "data", comma + 1);
    if (json_array_append_new(parts, part) != 0)
        return oom(r);
    return KP_OK;
}

/* The image MIME type for the extension of @url's path; image/jpeg when the
 * extension says nothing. */
static const char *image_mime(const char *url)
{
    static const struct {
        const char *ext, *mime;
    } types[] = {
        {"png", "image/png"},   {"jpg", "image/jpeg"}, {"jpeg", "image/jpeg"},
        {"webp", "image/webp"}, {"gif", "image/gif"},  {"heic", "image/heic"},
        {"heif", "image/heif"},
    };
    size_t end = strcspn(url, "?#");
    const char *dot = NULL;
    for (size_t k = 0; k < end; k++) {
        if (url[k] == '/')
            dot = NULL;
        else if (url[k] == '.')
            dot = url + k;
    }
    if (dot == NULL)
        return "image/jpeg";
    size_t len = (size_t)(url + end - (dot + 1));
    for (size_t k = 0; k < sizeof(types) / sizeof(types[0]); k++)
        if (strlen(types[k].ext) == len && strncasecmp(dot + 1, types[k].ext, len) == 0)
            return types[k].mime;
    return "image/jpeg";
}

static int add_image(struct req *r, const json_t *part, size_t i, size_t j, json_t *parts)
{
    char p[PATH_LEN];
    const json_t *iu = json_object_get(part, "image_url");
    const char *url =
        json_is_string(iu) ? json_string_value(iu) : json_string_value(json_object_get(iu, "url"));
    pathf(p, sizeof(p), "messages[%zu].content[%zu].image_url.url", i, j);
    if (url == NULL)
        return refuse(r, p, "an image_url part needs a url");
    if (strncasecmp(url, "data:", 5) == 0)
        return add_data_url(r, url, p, parts);
    if (strncasecmp(url, "https://", 8) != 0)
        return refuse(r, p, "Gemini takes images as https: or data: URLs");
    json_t *fd =
        json_pack("{s:{s:s,s:s}}", "fileData", "mimeType", image_mime(url), "fileUri", url);
    if (json_array_append_new(parts, fd) != 0)
        return oom(r);
    return KP_OK;
}

static int add_audio(struct req *r, const json_t *part, size_t i, size_t j, json_t *parts)
{
    char p[PATH_LEN];
    const json_t *audio = json_object_get(part, "input_audio");
    const char *data = json_string_value(json_object_get(audio, "data"));
    const char *format = json_string_value(json_object_get(audio, "format"));
    const char *mime = NULL;
    if (data == NULL)
        return refuse(r, pathf(p, sizeof(p), "messages[%zu].content[%zu].input_audio.data", i, j),
                      "an input_audio part needs base64 data");
    if (format != NULL && strcmp(format, "wav") == 0)
        mime = "audio/wav";
    else if (format != NULL && strcmp(format, "mp3") == 0)
        mime = "audio/mp3";
    else
        return refuse(r, pathf(p, sizeof(p), "messages[%zu].content[%zu].input_audio.format", i, j),
                      "input_audio format must be wav or mp3");
    json_t *inline_data = json_pack("{s:{s:s,s:s}}", "inlineData", "mimeType", mime, "data", data);
    if (json_array_append_new(parts, inline_data) != 0)
        return oom(r);
    return KP_OK;
}

static int add_file(struct req *r, const json_t *part, size_t i, size_t j, json_t *parts)
{
    char p[PATH_LEN];
    const json_t *file = json_object_get(part, "file");
    const char *data = json_string_value(json_object_get(file, "file_data"));
    if (data == NULL && json_object_get(file, "file_id") != NULL)
        return refuse(r, pathf(p, sizeof(p), "messages[%zu].content[%zu].file.file_id", i, j),
                      "Gemini cannot read OpenAI file ids: send the file as file_data");
    pathf(p, sizeof(p), "messages[%zu].content[%zu].file.file_data", i, j);
    if (data == NULL)
        return refuse(r, p, "a file part needs file_data (a base64 data: URL)");
    return add_data_url(r, data, p, parts);
}

static int add_part(struct req *r, const json_t *part, size_t i, size_t j, const char *role,
                    unsigned kinds, json_t *parts)
{
    char p[PATH_LEN];
    const char *type = json_string_value(json_object_get(part, "type"));
    if (type == NULL)
        return refuse(r, pathf(p, sizeof(p), "messages[%zu].content[%zu].type", i, j),
                      "each content part needs a type");
    const char *field = strcmp(type, "refusal") == 0 ? "refusal" : "text";
    if ((strcmp(type, "text") == 0 && (kinds & PARTS_TEXT)) ||
        (strcmp(type, "refusal") == 0 && (kinds & PARTS_REFUSAL))) {
        const json_t *text = json_object_get(part, field);
        if (!json_is_string(text))
            return refuse(r, pathf(p, sizeof(p), "messages[%zu].content[%zu].%s", i, j, field),
                          "a %s part needs a string %s", type, field);
        return add_text(r, parts, json_string_value(text), json_string_length(text));
    }
    if (kinds & PARTS_MEDIA) {
        if (strcmp(type, "image_url") == 0)
            return add_image(r, part, i, j, parts);
        if (strcmp(type, "input_audio") == 0)
            return add_audio(r, part, i, j, parts);
        if (strcmp(type, "file") == 0)
            return add_file(r, part, i, j, parts);
    }
    return refuse(r, pathf(p, sizeof(p), "messages[%zu].content[%zu].type", i, j),
                  "content parts of type '%s' cannot be sent to Gemini in %s messages", type, role);
}

/* A message's content (a string or an array of parts) -> Gemini parts. */
static int add_content(struct req *r, const json_t *content, size_t i, const char *role,
                       unsigned kinds, json_t *parts)
{
    char p[PATH_LEN];
    if (json_is_string(content))
        return add_text(r, parts, json_string_value(content), json_string_length(content));
    if (!json_is_array(content))
        return refuse(r, pathf(p, sizeof(p), "messages[%zu].content", i),
                      "content must be a string or an array of content parts");
    size_t j;
    const json_t *part;
    json_array_foreach(content, j, part)
    {
        int rc = add_part(r, part, i, j, role, kinds, parts);
        if (rc != KP_OK)
            return rc;
    }
    return KP_OK;
}

/* --- request: turns -------------------------------------------------------- */

/* Appends @parts (consumed) as a @role turn, or to the last turn when that
 * has the same role. Empty @parts add nothing. */
static int append_turn(struct req *r, json_t *contents, const char *role, json_t *parts)
{
    size_t n = json_array_size(contents);
    json_t *last = n > 0 ? json_array_get(contents, n - 1) : NULL;
    int rc = 0;
    if (json_array_size(parts) == 0)
        rc = 0;
    else if (last != NULL && strcmp(json_string_value(json_object_get(last, "role")), role) == 0)
        rc = json_array_extend(json_object_get(last, "parts"), parts);
    else
        rc = json_array_append_new(contents, json_pack("{s:s,s:O}", "role", role, "parts", parts));
    json_decref(parts);
    return rc != 0 ? oom(r) : KP_OK;
}

static int add_system(struct req *r, json_t *body, const json_t *m, size_t i)
{
    json_t *si = json_object_get(body, "systemInstruction");
    if (si == NULL) {
        si = json_pack("{s:[]}", "parts");
        if (json_object_set_new(body, "systemInstruction", si) != 0)
            return oom(r);
    }
    return add_content(r, json_object_get(m, "content"), i, "system", PARTS_TEXT,
                       json_object_get(si, "parts"));
}

static int add_user(struct req *r, json_t *contents, const json_t *m, size_t i)
{
    json_t *parts = json_array();
    if (parts == NULL)
        return oom(r);
    int rc =
        add_content(r, json_object_get(m, "content"), i, "user", PARTS_TEXT | PARTS_MEDIA, parts);
    if (rc != KP_OK) {
        json_decref(parts);
        return rc;
    }
    return append_turn(r, contents, "user", parts);
}

/* A tool call's "arguments" (a string of JSON) -> a new object in @out. */
static int parse_arguments(struct req *r, const json_t *args, const char *param, json_t **out)
{
    json_error_t jerr;
    *out = NULL;
    if (args == NULL || json_is_null(args) ||
        (json_is_string(args) && json_string_length(args) == 0))
        *out = json_object(); /* some models send "" for a call without arguments */
    else if (json_is_object(args))
        *out = json_deep_copy(args);
    else if (!json_is_string(args))
        return refuse(r, param, "tool call arguments must be a string of JSON");
    else {
        const char *text = json_string_value(args);
        size_t len = json_string_length(args);
        bool nomem;
        *out = kp_adapter__load(text, len, JSON_ALLOW_NUL, &jerr, &nomem);
        if (*out == NULL && !nomem)
            return refuse(r, param, "tool call arguments are not valid JSON (line %d, column %d)",
                          jerr.line, jerr.column);
        if (*out != NULL && !json_is_object(*out)) {
            json_decref(*out);
            *out = NULL;
            return refuse(r, param, "tool call arguments must be a JSON object");
        }
    }
    return *out != NULL ? KP_OK : oom(r);
}

static int add_tool_call(struct req *r, const json_t *call, size_t i, size_t k, json_t *parts)
{
    char p[PATH_LEN];
    const json_t *fn = json_object_get(call, "function");
    const char *type = json_string_value(json_object_get(call, "type"));
    const char *name = json_string_value(json_object_get(fn, "name"));
    json_t *args;
    if (type != NULL && strcmp(type, "function") != 0)
        return refuse(r, pathf(p, sizeof(p), "messages[%zu].tool_calls[%zu].type", i, k),
                      "only function tool calls can be sent to Gemini");
    if (name == NULL || name[0] == '\0')
        return refuse(r, pathf(p, sizeof(p), "messages[%zu].tool_calls[%zu].function.name", i, k),
                      "a tool call needs a function name");
    pathf(p, sizeof(p), "messages[%zu].tool_calls[%zu].function.arguments", i, k);
    int rc = parse_arguments(r, json_object_get(fn, "arguments"), p, &args);
    if (rc != KP_OK)
        return rc;
    json_t *part = json_pack("{s:{s:s,s:o},s:s}", "functionCall", "name", name, "args", args,
                             "thoughtSignature", THOUGHT_SIGNATURE);
    if (json_array_append_new(parts, part) != 0)
        return oom(r);
    return KP_OK;
}

static int add_assistant(struct req *r, json_t *contents, const json_t *m, size_t i)
{
    char p[PATH_LEN];
    const json_t *content = json_object_get(m, "content");
    const json_t *calls = json_object_get(m, "tool_calls");
    int rc = KP_OK;
    if (calls != NULL && !json_is_null(calls) && !json_is_array(calls))
        return refuse(r, pathf(p, sizeof(p), "messages[%zu].tool_calls", i),
                      "tool_calls must be an array");
    json_t *parts = json_array();
    if (parts == NULL)
        return oom(r);
    if (content != NULL && !json_is_null(content))
        rc = add_content(r, content, i, "assistant", PARTS_TEXT | PARTS_REFUSAL, parts);
    for (size_t k = 0; rc == KP_OK && k < json_array_size(calls); k++)
        rc = add_tool_call(r, json_array_get(calls, k), i, k, parts);
    if (rc != KP_OK) {
        json_decref(parts);
        return rc;
    }
    return append_turn(r, contents, "model", parts);
}

/* The function name of the tool call @id, from the latest assistant message
 * before messages[@i] that issued it; NULL when none did. */
static const char *tool_call_name(const json_t *msgs, size_t i, const char *id)
{
    while (i-- > 0) {
        const json_t *m = json_array_get(msgs, i);
        const char *role = json_string_value(json_object_get(m, "role"));
        const json_t *calls = json_object_get(m, "tool_calls");
        if (role == NULL || strcmp(role, "assistant") != 0)
            continue;
        for (size_t k = 0; k < json_array_size(calls); k++) {
            const json_t *call = json_array_get(calls, k);
            const char *cid = json_string_value(json_object_get(call, "id"));
            if (cid != NULL && strcmp(cid, id) == 0)
                return json_string_value(
                    json_object_get(json_object_get(call, "function"), "name"));
        }
    }
    return NULL;
}

/* A tool message's content as one string (@b), text parts joined. */
static int tool_text(struct req *r, const json_t *content, size_t i, struct kp_buf *b)
{
    char p[PATH_LEN];
    if (content == NULL || json_is_null(content))
        return KP_OK;
    if (json_is_string(content))
        return kp_buf_append(b, json_string_value(content), json_string_length(content)) == 0
                   ? KP_OK
                   : oom(r);
    if (!json_is_array(content))
        return refuse(r, pathf(p, sizeof(p), "messages[%zu].content", i),
                      "content must be a string or an array of text parts");
    for (size_t j = 0; j < json_array_size(content); j++) {
        const json_t *part = json_array_get(content, j);
        const char *type = json_string_value(json_object_get(part, "type"));
        const json_t *text = json_object_get(part, "text");
        if (type == NULL || strcmp(type, "text") != 0 || !json_is_string(text))
            return refuse(r, pathf(p, sizeof(p), "messages[%zu].content[%zu].type", i, j),
                          "tool results sent to Gemini must be text");
        if (kp_buf_append(b, json_string_value(text), json_string_length(text)) != 0)
            return oom(r);
    }
    return KP_OK;
}

/* A tool result -> functionResponse.response: the result itself when it is
 * a JSON object, else {"content": text}. */
static int tool_response(struct req *r, const struct kp_buf *b, json_t **out)
{
    const char *text = b->data != NULL ? b->data : "";
    size_t skip = strspn(text, " \t\r\n");
    json_error_t jerr;
    *out = NULL;
    if (text[skip] == '{') {
        bool nomem;
        *out = kp_adapter__load(text, b->len, JSON_ALLOW_NUL, &jerr, &nomem);
        if (*out == NULL && nomem)
            return oom(r);
    }
    if (*out == NULL)
        *out = json_pack("{s:s%}", "content", text, b->len);
    return *out != NULL ? KP_OK : oom(r);
}

static int add_tool_result(struct req *r, json_t *contents, const json_t *msgs, size_t i)
{
    char p[PATH_LEN];
    const json_t *m = json_array_get(msgs, i);
    const char *id = json_string_value(json_object_get(m, "tool_call_id"));
    const char *name;
    struct kp_buf b;
    json_t *response;
    pathf(p, sizeof(p), "messages[%zu].tool_call_id", i);
    if (id == NULL)
        return refuse(r, p, "a tool message needs the tool_call_id it answers");
    name = tool_call_name(msgs, i, id);
    if (name == NULL)
        return refuse(r, p,
                      "tool_call_id '%s' matches no tool call of an earlier assistant message", id);
    kp_buf_init(&b);
    int rc = tool_text(r, json_object_get(m, "content"), i, &b);
    if (rc == KP_OK)
        rc = tool_response(r, &b, &response);
    kp_buf_free(&b);
    if (rc != KP_OK)
        return rc;
    json_t *parts =
        json_pack("[{s:{s:s,s:o}}]", "functionResponse", "name", name, "response", response);
    if (parts == NULL)
        return oom(r);
    return append_turn(r, contents, "user", parts);
}

static int add_message(struct req *r, json_t *body, json_t *contents, const json_t *msgs, size_t i)
{
    char p[PATH_LEN];
    const json_t *m = json_array_get(msgs, i);
    const char *role = json_string_value(json_object_get(m, "role"));
    if (!json_is_object(m))
        return refuse(r, pathf(p, sizeof(p), "messages[%zu]", i), "each message must be an object");
    if (role == NULL)
        return refuse(r, pathf(p, sizeof(p), "messages[%zu].role", i), "each message needs a role");
    if (strcmp(role, "system") == 0 || strcmp(role, "developer") == 0)
        return add_system(r, body, m, i);
    if (strcmp(role, "user") == 0)
        return add_user(r, contents, m, i);
    if (strcmp(role, "assistant") == 0)
        return add_assistant(r, contents, m, i);
    if (strcmp(role, "tool") == 0)
        return add_tool_result(r, contents, msgs, i);
    return refuse(r, pathf(p, sizeof(p), "messages[%zu].role", i),
                  "messages with role '%s' cannot be sent to Gemini", role);
}

static int convert_messages(struct req *r, const json_t *chat, json_t *body)
{
    const json_t *msgs = json_object_get(chat, "messages");
    json_t *contents = json_array();
    if (json_object_set_new(body, "contents", contents) != 0)
        return oom(r);
    if (!json_is_array(msgs) || json_array_size(msgs) == 0)
        return refuse(r, "messages", "messages must be a non-empty array");
    for (size_t i = 0; i < json_array_size(msgs); i++) {
        int rc = add_message(r, body, contents, msgs, i);
        if (rc != KP_OK)
            return rc;
    }
    if (json_array_size(contents) == 0)
        return refuse(r, "messages", "Gemini needs at least one user or assistant message");
    json_t *si = json_object_get(body, "systemInstruction");
    if (si != NULL && json_array_size(json_object_get(si, "parts")) == 0)
        json_object_del(body, "systemInstruction");
    return KP_OK;
}

/* --- request: schemas ------------------------------------------------------ */

static const char *const schema_keys[] = {
    "title",    "description",      "nullable",      "enum",      "maxItems",  "minItems",
    "required", "minProperties",    "maxProperties", "minLength", "maxLength", "pattern",
    "example",  "propertyOrdering", "default",       "minimum",   "maximum",   NULL,
};

static bool schema_key_kept(const char *k)
{
    for (size_t n = 0; schema_keys[n] != NULL; n++)
        if (strcmp(schema_keys[n], k) == 0)
            return true;
    return false;
}

/* Gemini's name for the JSON Schema type @t; NULL when it has none. */
static const char *schema_type_name(const char *t)
{
    static const char *const names[] = {"string",  "number", "integer",
                                        "boolean", "array",  "object"};
    static const char *const upper[] = {"STRING",  "NUMBER", "INTEGER",
                                        "BOOLEAN", "ARRAY",  "OBJECT"};
    for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++)
        if (strcasecmp(t, names[k]) == 0)
            return upper[k];
    return NULL;
}

static int schema_type(struct req *r, const json_t *v, struct path *p, json_t *o)
{
    const char *only = json_string_value(v);
    size_t at = path_push(p, ".type");
    int rc = KP_OK;
    if (json_is_array(v)) {
        size_t n = 0, nulls = 0;
        for (size_t k = 0; k < json_array_size(v); k++) {
            const char *t = json_string_value(json_array_get(v, k));
            if (t == NULL) {
                n = 0;
                break;
            }
            if (strcmp(t, "null") == 0)
                nulls++;
            else if (n++ == 0)
                only = t;
        }
        if (n != 1 || nulls > 1)
            rc = refuse(r, p->buf,
                        "Gemini takes one type per schema, or one type and \"null\": use anyOf");
        else if (nulls == 1 && json_object_set_new(o, "nullable", json_true()) != 0)
            rc = oom(r);
    } else if (only == NULL) {
        rc = refuse(r, p->buf, "a schema type must be a string");
    }
    const char *name = rc == KP_OK ? schema_type_name(only) : NULL;
    if (rc == KP_OK && name == NULL)
        rc = refuse(r, p->buf, "schema type '%s' is not one Gemini knows", only);
    if (rc == KP_OK && json_object_set_new(o, "type", json_string(name)) != 0)
        rc = oom(r);
    path_pop(p, at);
    return rc;
}

static bool format_kept(const char *f)
{
    static const char *const kept[] = {"float", "double", "int32", "int64", "enum", "date-time"};
    for (size_t k = 0; k < sizeof(kept) / sizeof(kept[0]); k++)
        if (strcmp(f, kept[k]) == 0)
            return true;
    return false;
}

static int schema(struct req *r, const json_t *in, struct path *p, int depth, json_t **out);

static int schema_properties(struct req *r, const json_t *v, struct path *p, int depth, json_t *o)
{
    const char *name;
    json_t *sub;
    json_t *props = json_object();
    if (json_object_set_new(o, "properties", props) != 0)
        return oom(r);
    if (!json_is_object(v))
        return refuse(r, p->buf, "properties must be an object");
    json_object_foreach((json_t *)v, name, sub)
    {
        json_t *s;
        size_t at = path_push(p, ".properties.%s", name);
        int rc = schema(r, sub, p, depth + 1, &s);
        path_pop(p, at);
        if (rc != KP_OK)
            return rc;
        if (json_object_set_new(props, name, s) != 0)
            return oom(r);
    }
    return KP_OK;
}

static int schema_any_of(struct req *r, const char *key, const json_t *v, struct path *p, int depth,
                         json_t *o)
{
    json_t *any = json_array();
    if (json_object_set_new(o, "anyOf", any) != 0)
        return oom(r);
    size_t at = path_push(p, ".%s", key);
    int rc = json_is_array(v) ? KP_OK : refuse(r, p->buf, "%s must be an array of schemas", key);
    path_pop(p, at);
    for (size_t k = 0; rc == KP_OK && k < json_array_size(v); k++) {
        json_t *s;
        at = path_push(p, ".%s[%zu]", key, k);
        rc = schema(r, json_array_get(v, k), p, depth + 1, &s);
        path_pop(p, at);
        if (rc == KP_OK && json_array_append_new(any, s) != 0)
            rc = oom(r);
    }
    return rc;
}

/* A string const -> a one-value enum, of type STRING unless typed. */
static int schema_const(struct req *r, const json_t *in, const json_t *v, json_t *o)
{
    if (json_object_set_new(o, "enum", json_pack("[O]", v)) != 0)
        return oom(r);
    if (json_object_get(in, "type") == NULL &&
        json_object_set_new(o, "type", json_string("STRING")) != 0)
        return oom(r);
    return KP_OK;
}

static int schema_key(struct req *r, const json_t *in, const char *k, const json_t *v,
                      struct path *p, int depth, json_t *o)
{
    if (strcmp(k, "type") == 0)
        return schema_type(r, v, p, o);
    if (strcmp(k, "properties") == 0)
        return schema_properties(r, v, p, depth, o);
    if (strcmp(k, "anyOf") == 0 || strcmp(k, "oneOf") == 0)
        return schema_any_of(r, k, v, p, depth, o);
    if (strcmp(k, "items") == 0) {
        json_t *s;
        size_t at = path_push(p, ".items");
        int rc = schema(r, v, p, depth + 1, &s);
        path_pop(p, at);
        if (rc == KP_OK && json_object_set_new(o, "items", s) != 0)
            rc = oom(r);
        return rc;
    }
    json_t *copy;
    if (strcmp(k, "format") == 0 && json_is_string(v) && format_kept(json_string_value(v)))
        copy = json_deep_copy(v);
    else if (strcmp(k, "const") == 0 && json_is_string(v) && !json_object_get(in, "enum"))
        return schema_const(r, in, v, o);
    else if (schema_key_kept(k))
        copy = json_deep_copy(v);
    else
        return KP_OK; /* a key Gemini would reject */
    return json_object_set_new(o, k, copy) != 0 ? oom(r) : KP_OK;
}

/* JSON Schema @in -> Gemini Schema in @out (new). */
static int schema(struct req *r, const json_t *in, struct path *p, int depth, json_t **out)
{
    const char *k;
    json_t *v;
    const char *bad = NULL, *why = NULL;
    *out = NULL;
    if (!json_is_object(in))
        return refuse(r, p->buf, "a schema must be a JSON object");
    if (depth > SCHEMA_MAX_DEPTH)
        return refuse(r, p->buf, "the schema is nested more than %d levels deep", SCHEMA_MAX_DEPTH);
    if (json_object_get(in, "$ref") != NULL) {
        bad = "$ref";
        why = "$ref is not supported by Gemini: inline the referenced schema";
    } else if (json_object_get(in, "allOf") != NULL) {
        bad = "allOf";
        why = "allOf is not supported by Gemini: merge the schemas into one";
    } else if (json_object_get(in, "anyOf") != NULL && json_object_get(in, "oneOf") != NULL) {
        bad = "oneOf";
        why = "Gemini takes anyOf or oneOf in one schema, not both";
    }
    if (bad != NULL) {
        path_push(p, ".%s", bad);
        return refuse(r, p->buf, "%s", why);
    }
    json_t *o = json_object();
    if (o == NULL)
        return oom(r);
    json_object_foreach((json_t *)in, k, v)
    {
        int rc = schema_key(r, in, k, v, p, depth, o);
        if (rc != KP_OK) {
            json_decref(o);
            return rc;
        }
    }
    *out = o;
    return KP_OK;
}

/* --- request: tools and generation config ---------------------------------- */

static int add_function(struct req *r, const json_t *t, size_t i, json_t *decls)
{
    char p[PATH_LEN];
    const json_t *fn = json_object_get(t, "function");
    const char *type = json_string_value(json_object_get(t, "type"));
    const char *name = json_string_value(json_object_get(fn, "name"));
    const json_t *desc = json_object_get(fn, "description");
    const json_t *params = json_object_get(fn, "parameters");
    if (type == NULL || strcmp(type, "function") != 0)
        return refuse(r, pathf(p, sizeof(p), "tools[%zu].type", i),
                      "only function tools can be sent to Gemini");
    if (name == NULL || name[0] == '\0')
        return refuse(r, pathf(p, sizeof(p), "tools[%zu].function.name", i),
                      "a function tool needs a name");
    if (desc != NULL && !json_is_null(desc) && !json_is_string(desc))
        return refuse(r, pathf(p, sizeof(p), "tools[%zu].function.description", i),
                      "a function description must be a string");
    json_t *decl = json_pack("{s:s}", "name", name);
    if (json_array_append_new(decls, decl) != 0)
        return oom(r);
    if (json_is_string(desc) && json_object_set_new(decl, "description", json_deep_copy(desc)) != 0)
        return oom(r);
    if (params == NULL || json_is_null(params))
        return KP_OK;
    struct path path;
    json_t *s;
    path.len = 0;
    path_push(&path, "tools[%zu].function.parameters", i);
    int rc = schema(r, params, &path, 0, &s);
    if (rc != KP_OK)
        return rc;
    if (json_object_size(json_object_get(s, "properties")) == 0) {
        json_decref(s); /* no parameters: Gemini rejects an OBJECT without properties */
        return KP_OK;
    }
    return json_object_set_new(decl, "parameters", s) != 0 ? oom(r) : KP_OK;
}

static bool tool_declared(const json_t *tools, const char *name)
{
    for (size_t i = 0; i < json_array_size(tools); i++) {
        const json_t *fn = json_object_get(json_array_get(tools, i), "function");
        const char *n = json_string_value(json_object_get(fn, "name"));
        if (n != NULL && strcmp(n, name) == 0)
            return true;
    }
    return false;
}

static int convert_tool_choice(struct req *r, const json_t *chat, json_t *body, const json_t *tools)
{
    const json_t *tc = json_object_get(chat, "tool_choice");
    const char *mode = NULL, *only = NULL;
    const char *s = json_string_value(tc);
    if (tc == NULL || json_is_null(tc))
        return KP_OK;
    if (s != NULL && strcmp(s, "auto") == 0)
        mode = "AUTO";
    else if (s != NULL && strcmp(s, "none") == 0)
        mode = "NONE";
    else if (s != NULL && strcmp(s, "required") == 0)
        mode = "ANY";
    else if (json_is_object(tc)) {
        const char *type = json_string_value(json_object_get(tc, "type"));
        if (type == NULL || strcmp(type, "function") != 0)
            return refuse(r, "tool_choice.type", "tool_choice objects must be of type function");
        only = json_string_value(json_object_get(json_object_get(tc, "function"), "name"));
        if (only == NULL)
            return refuse(r, "tool_choice.function.name", "tool_choice needs a function name");
        mode = "ANY";
    } else
        return refuse(r, "tool_choice",
                      "tool_choice must be auto, none, required or a function object");
    if (json_array_size(tools) == 0) {
        if (strcmp(mode, "ANY") == 0)
            return refuse(r, "tool_choice", "tool_choice %s needs tools, and none were given",
                          s != NULL ? "required" : "naming a function");
        return KP_OK; /* nothing to configure */
    }
    if (only != NULL && !tool_declared(tools, only))
        return refuse(r, "tool_choice.function.name",
                      "tool_choice names function '%s', which is not in tools", only);
    json_t *fcc = json_pack("{s:s}", "mode", mode);
    if (json_object_set_new(body, "toolConfig", json_pack("{s:o}", "functionCallingConfig", fcc)) !=
        0)
        return oom(r);
    if (only != NULL &&
        json_object_set_new(fcc, "allowedFunctionNames", json_pack("[s]", only)) != 0)
        return oom(r);
    return KP_OK;
}

static int convert_tools(struct req *r, const json_t *chat, json_t *body)
{
    const json_t *tools = json_object_get(chat, "tools");
    if (tools != NULL && !json_is_null(tools) && !json_is_array(tools))
        return refuse(r, "tools", "tools must be an array");
    if (json_array_size(tools) > 0) {
        json_t *decls = json_array();
        if (json_object_set_new(body, "tools",
                                json_pack("[{s:o}]", "functionDeclarations", decls)) != 0)
            return oom(r);
        for (size_t i = 0; i < json_array_size(tools); i++) {
            int rc = add_function(r, json_array_get(tools, i), i, decls);
            if (rc != KP_OK)
                return rc;
        }
    }
    return convert_tool_choice(r, chat, body, tools);
}

/* chat[@from], a number, copied to gc[@to]. */
static int copy_number(struct req *r, const json_t *chat, const char *from, json_t *gc,
                       const char *to)
{
    const json_t *v = json_object_get(chat, from);
    if (v == NULL || json_is_null(v))
        return KP_OK;
    if (!json_is_number(v))
        return refuse(r, from, "%s must be a number", from);
    return json_object_set_new(gc, to, json_deep_copy(v)) != 0 ? oom(r) : KP_OK;
}

static int convert_max_tokens(struct req *r, const json_t *chat, json_t *gc)
{
    const char *key = "max_completion_tokens";
    const json_t *v = json_object_get(chat, key);
    if (v == NULL || json_is_null(v)) {
        key = "max_tokens";
        v = json_object_get(chat, key);
    }
    if (v == NULL || json_is_null(v))
        return KP_OK;
    if (!json_is_integer(v) || json_integer_value(v) < 1)
        return refuse(r, key, "%s must be a positive integer", key);
    return json_object_set_new(gc, "maxOutputTokens", json_deep_copy(v)) != 0 ? oom(r) : KP_OK;
}

static int convert_stop(struct req *r, const json_t *chat, json_t *gc)
{
    char p[PATH_LEN];
    const json_t *stop = json_object_get(chat, "stop");
    json_t *seqs;
    if (stop == NULL || json_is_null(stop))
        return KP_OK;
    if (json_is_string(stop))
        seqs = json_pack("[O]", stop);
    else if (json_is_array(stop)) {
        for (size_t k = 0; k < json_array_size(stop); k++)
            if (!json_is_string(json_array_get(stop, k)))
                return refuse(r, pathf(p, sizeof(p), "stop[%zu]", k),
                              "stop sequences must be strings");
        seqs = json_deep_copy(stop);
    } else
        return refuse(r, "stop", "stop must be a string or an array of strings");
    if (seqs == NULL)
        return oom(r);
    if (json_array_size(seqs) == 0) {
        json_decref(seqs);
        return KP_OK;
    }
    return json_object_set_new(gc, "stopSequences", seqs) != 0 ? oom(r) : KP_OK;
}

static int convert_choices(struct req *r, const json_t *chat, json_t *gc)
{
    const json_t *n = json_object_get(chat, "n");
    const json_t *logprobs = json_object_get(chat, "logprobs");
    if (json_is_true(logprobs))
        return refuse(r, "logprobs", "logprobs are not supported for Gemini models");
    if (n == NULL || json_is_null(n))
        return KP_OK;
    if (!json_is_integer(n) || json_integer_value(n) < 1)
        return refuse(r, "n", "n must be a positive integer");
    if (json_integer_value(n) > 1)
        return refuse(r, "n", "n > 1 is not supported for Gemini models: ask for one choice");
    return json_object_set_new(gc, "candidateCount", json_integer(1)) != 0 ? oom(r) : KP_OK;
}

static int convert_response_format(struct req *r, const json_t *chat, json_t *gc)
{
    const json_t *rf = json_object_get(chat, "response_format");
    const char *type = json_string_value(json_object_get(rf, "type"));
    if (rf == NULL || json_is_null(rf))
        return KP_OK;
    if (type == NULL)
        return refuse(r, "response_format.type", "response_format needs a type");
    if (strcmp(type, "text") == 0)
        return KP_OK;
    if (strcmp(type, "json_object") != 0 && strcmp(type, "json_schema") != 0)
        return refuse(r, "response_format.type",
                      "response_format type '%s' is not supported by Gemini", type);
    if (json_object_set_new(gc, "responseMimeType", json_string("application/json")) != 0)
        return oom(r);
    if (strcmp(type, "json_object") == 0)
        return KP_OK;
    const json_t *js = json_object_get(json_object_get(rf, "json_schema"), "schema");
    struct path path;
    json_t *s;
    path.len = 0;
    path_push(&path, "response_format.json_schema.schema");
    if (js == NULL)
        return refuse(r, path.buf, "a json_schema response_format needs a schema");
    int rc = schema(r, js, &path, 0, &s);
    if (rc != KP_OK)
        return rc;
    return json_object_set_new(gc, "responseSchema", s) != 0 ? oom(r) : KP_OK;
}

static int convert_generation(struct req *r, const json_t *chat, json_t *body)
{
    json_t *gc = json_object();
    int rc;
    if (json_object_set_new(body, "generationConfig", gc) != 0)
        return oom(r);
    if ((rc = copy_number(r, chat, "temperature", gc, "temperature")) != KP_OK ||
        (rc = copy_number(r, chat, "top_p", gc, "topP")) != KP_OK ||
        (rc = copy_number(r, chat, "presence_penalty", gc, "presencePenalty")) != KP_OK ||
        (rc = copy_number(r, chat, "frequency_penalty", gc, "frequencyPenalty")) != KP_OK ||
        (rc = copy_number(r, chat, "seed", gc, "seed")) != KP_OK ||
        (rc = convert_max_tokens(r, chat, gc)) != KP_OK ||
        (rc = convert_stop(r, chat, gc)) != KP_OK || (rc = convert_choices(r, chat, gc)) != KP_OK ||
        (rc = convert_response_format(r, chat, gc)) != KP_OK)
        return rc;
    if (json_object_size(gc) == 0)
        json_object_del(body, "generationConfig");
    return KP_OK;
}

int kp_gemini_request_from_chat(const json_t *chat, json_t **out, char *errmsg, size_t errlen,
                                char *param, size_t paramlen)
{
    struct req r = {errmsg, errlen, param, paramlen};
    int rc;
    *out = NULL;
    if (errmsg != NULL && errlen > 0)
        errmsg[0] = '\0';
    if (param != NULL && paramlen > 0)
        param[0] = '\0';
    if (!json_is_object(chat))
        return refuse(&r, "", "the request body must be a JSON object");
    json_t *body = json_object();
    if (body == NULL)
        return oom(&r);
    if ((rc = convert_messages(&r, chat, body)) != KP_OK ||
        (rc = convert_tools(&r, chat, body)) != KP_OK ||
        (rc = convert_generation(&r, chat, body)) != KP_OK) {
        json_decref(body);
        return rc;
    }
    *out = body;
    return KP_OK;
}

/* libFuzzer driver for the provider adapters (router/adapter.h): what apps
 * send (OpenAI chat bodies translated for Anthropic and Gemini, Anthropic
 * Messages bodies translated to chat) and what upstreams answer (Anthropic
 * and Gemini responses, their stream events, OpenAI chunks translated to
 * Anthropic events). The first input byte picks the translation; the rest
 * is one JSON document, or for streams one event per line ("name<TAB>json"
 * for Anthropic, "json" otherwise). Beyond crashes, sanitizer reports and
 * leaks, it checks that every translation either fails with a message or
 * yields a JSON object that serialises. (Usage counts are the provider's
 * figures as sent, cached above input included: the cost clamps them,
 * router/attempt.c.) */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "router/adapter.h"

enum { MAX_EVENTS = 256 };

static const struct kp_chat_ident ident = {"chatcmpl-fuzz", 1700000000, "fuzz-model"};

static void check_object(const json_t *out)
{
    if (!json_is_object(out))
        abort();
    char *s = json_dumps(out, JSON_COMPACT);
    if (!s)
        abort();
    free(s);
}

static void check_result(int rc, json_t *out, const char *errmsg)
{
    if (rc == 0) {
        check_object(out);
    } else if (errmsg[0] == '\0') {
        abort(); /* a failure always says why */
    }
    json_decref(out);
}

static int on_item(void *arg, const char *event, json_t *item)
{
    (void)event;
    size_t *n = arg;
    check_object(item);
    (*n)++;
    return 0;
}

static json_t *parse(const char *text, size_t len)
{
    return json_loadb(text, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
}

/* Calls @fn on each line of @text: (name or NULL, parsed JSON or NULL). */
typedef void (*line_fn)(void *arg, const char *name, json_t *data);
static void each_line(const char *text, size_t len, bool named, line_fn fn, void *arg)
{
    size_t at = 0;
    for (int n = 0; at < len && n < MAX_EVENTS; n++) {
        const char *nl = memchr(text + at, '\n', len - at);
        size_t end = nl ? (size_t)(nl - text) : len;
        const char *line = text + at;
        size_t line_len = end - at;
        char name[64] = "";
        if (named) {
            const char *tab = memchr(line, '\t', line_len);
            if (tab && (size_t)(tab - line) < sizeof(name)) {
                memcpy(name, line, (size_t)(tab - line));
                name[tab - line] = '\0';
                line_len -= (size_t)(tab - line) + 1;
                line = tab + 1;
            }
        }
        json_t *data = parse(line, line_len);
        fn(arg, named ? name : NULL, data);
        json_decref(data);
        at = end + 1;
    }
}

struct stream_run {
    struct kp_anthropic_stream *anthropic;
    struct kp_gemini_stream *gemini;
    struct kp_messages_stream *messages;
    size_t items;
    bool stopped;
};

static void anthropic_line(void *arg, const char *name, json_t *data)
{
    struct stream_run *r = arg;
    char err[256] = "";
    if (r->stopped || !data)
        return;
    if (kp_anthropic_stream_event(r->anthropic, name, data, on_item, &r->items, err, sizeof(err)) !=
        0)
        r->stopped = true;
}

static void gemini_line(void *arg, const char *name, json_t *data)
{
    (void)name;
    struct stream_run *r = arg;
    char err[256] = "";
    if (r->stopped || !data)
        return;
    if (kp_gemini_stream_event(r->gemini, data, on_item, &r->items, err, sizeof(err)) != 0)
        r->stopped = true;
}

static void messages_line(void *arg, const char *name, json_t *data)
{
    (void)name;
    struct stream_run *r = arg;
    char err[256] = "";
    if (r->stopped || !data)
        return;
    if (kp_messages_stream_chunk(r->messages, data, on_item, &r->items, err, sizeof(err)) != 0)
        r->stopped = true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned mode = data[0] % 9;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    char err[256] = "", param[128] = "";
    json_t *out = NULL;
    struct kp_usage_counts usage = {0};
    struct stream_run run = {0};

    if (mode <= 5) {
        json_t *doc = parse(text, len);
        if (!doc)
            return 0;
        int rc = 0;
        switch (mode) {
        case 0:
            rc = kp_anthropic_request_from_chat(doc, "claude-fuzz", 1024, &out, err, sizeof(err),
                                                param, sizeof(param));
            break;
        case 1:
            rc = kp_chat_request_from_anthropic(doc, "gpt-fuzz", &out, err, sizeof(err), param,
                                                sizeof(param));
            break;
        case 2:
            rc = kp_gemini_request_from_chat(doc, &out, err, sizeof(err), param, sizeof(param));
            break;
        case 3:
            rc = kp_anthropic_response_to_chat(doc, &ident, &out, &usage, err, sizeof(err));
            break;
        case 4:
            rc = kp_gemini_response_to_chat(doc, &ident, &out, &usage, err, sizeof(err));
            break;
        default:
            rc = kp_chat_response_to_anthropic(doc, "msg_fuzz", "claude-fuzz", &out, &usage, err,
                                               sizeof(err));
            break;
        }
        check_result(rc, out, err);
        json_decref(doc);
        return 0;
    }
    if (mode == 6) {
        run.anthropic = kp_anthropic_stream_new(&ident, data[0] & 0x80);
        if (!run.anthropic)
            return 0;
        each_line(text, len, true, anthropic_line, &run);
        kp_anthropic_stream_done(run.anthropic);
        kp_anthropic_stream_usage(run.anthropic, &usage);
        kp_anthropic_stream_free(run.anthropic);
    } else if (mode == 7) {
        run.gemini = kp_gemini_stream_new(&ident, data[0] & 0x80);
        if (!run.gemini)
            return 0;
        each_line(text, len, false, gemini_line, &run);
        if (!run.stopped)
            kp_gemini_stream_end(run.gemini, on_item, &run.items);
        kp_gemini_stream_usage(run.gemini, &usage);
        kp_gemini_stream_free(run.gemini);
    } else {
        run.messages = kp_messages_stream_new("msg_fuzz", "claude-fuzz");
        if (!run.messages)
            return 0;
        each_line(text, len, false, messages_line, &run);
        if (!run.stopped)
            kp_messages_stream_chunk(run.messages, NULL, on_item, &run.items, err, sizeof(err));
        kp_messages_stream_usage(run.messages, &usage);
        kp_messages_stream_free(run.messages);
    }
    return 0;
}

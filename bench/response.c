/* Reading answers (see response.h). Only Content-Type is looked at among
 * the headers, and a body is looked at only when it is an event stream:
 * every other byte just passes through llhttp, which keeps the generator's
 * cost per answer close to wrk's.
 *
 * SSE events end at an empty line; lines end with LF or CRLF, and a chunk or
 * a read may end anywhere, even between CR and LF, so the scan carries from
 * one piece to the next what the current line is so far and whether the
 * current event has a field line. Comment lines (": keep-alive") make no
 * event, as in the SSE spec. */
#include "response.h"

#include <string.h>
#include <strings.h>

/* A line is empty, a comment (":" first: keep-alives, ignored), or has a
 * field; an event is the field lines before an empty line. */
enum { LINE_EMPTY, LINE_FIELD, LINE_COMMENT };

static void sse_line_start(struct kp_bench_response *r, const char *p, size_t n)
{
    if (n == 0 || r->line != LINE_EMPTY)
        return;
    if (*p == ':')
        r->line = LINE_COMMENT;
    else if (!(n == 1 && *p == '\r')) /* a lone CR is the first half of CRLF */
        r->line = LINE_FIELD;
}

static void sse_scan(struct kp_bench_response *r, const char *p, size_t len)
{
    const char *end = p + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        sse_line_start(r, p, (size_t)((nl ? nl : end) - p));
        if (nl == NULL)
            return;
        if (r->line == LINE_FIELD) {
            r->event_open = true;
        } else if (r->line == LINE_EMPTY && r->event_open) {
            r->event_open = false;
            if (r->events++ == 0)
                r->first_event_ns = r->now_ns;
        }
        r->line = LINE_EMPTY;
        p = nl + 1;
    }
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct kp_bench_response *r = p->data;
    size_t room = sizeof(r->field) - r->field_len;
    size_t n = len < room ? len : room;
    memcpy(r->field + r->field_len, at, n);
    r->field_len = (uint8_t)(r->field_len + n);
    return 0;
}

static int on_header_field_complete(llhttp_t *p)
{
    struct kp_bench_response *r = p->data;
    r->field_is_ctype = r->field_len == 12 && strncasecmp(r->field, "content-type", 12) == 0;
    r->field_len = 0;
    r->ctype_len = 0;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct kp_bench_response *r = p->data;
    if (!r->field_is_ctype)
        return 0;
    size_t room = sizeof(r->ctype) - 1 - r->ctype_len;
    size_t n = len < room ? len : room;
    memcpy(r->ctype + r->ctype_len, at, n);
    r->ctype_len = (uint8_t)(r->ctype_len + n);
    return 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    struct kp_bench_response *r = p->data;
    if (r->field_is_ctype) {
        r->ctype[r->ctype_len] = '\0';
        r->sse = strncasecmp(r->ctype, "text/event-stream", 17) == 0;
    }
    r->field_is_ctype = false;
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    struct kp_bench_response *r = p->data;
    r->status = p->status_code;
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct kp_bench_response *r = p->data;
    if (r->sse)
        sse_scan(r, at, len);
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    struct kp_bench_response *r = p->data;
    r->complete = true;
    r->keep_alive = llhttp_should_keep_alive(p);
    return 0;
}

void kp_bench__response_settings(llhttp_settings_t *s)
{
    llhttp_settings_init(s);
    s->on_header_field = on_header_field;
    s->on_header_field_complete = on_header_field_complete;
    s->on_header_value = on_header_value;
    s->on_header_value_complete = on_header_value_complete;
    s->on_headers_complete = on_headers_complete;
    s->on_body = on_body;
    s->on_message_complete = on_message_complete;
}

void kp_bench__response_init(struct kp_bench_response *r, const llhttp_settings_t *s)
{
    memset(r, 0, sizeof(*r));
    llhttp_init(&r->parser, HTTP_RESPONSE, s);
    r->parser.data = r;
}

void kp_bench__response_expect(struct kp_bench_response *r)
{
    r->complete = false;
    r->keep_alive = false;
    r->sse = false;
    r->status = 0;
    r->events = 0;
    r->first_event_ns = 0;
    r->line = 0;
    r->event_open = false;
}

llhttp_errno_t kp_bench__response_feed(struct kp_bench_response *r, const char *data, size_t len,
                                       uint64_t now_ns)
{
    r->now_ns = now_ns;
    return llhttp_execute(&r->parser, data, len);
}

bool kp_bench__response_eof(struct kp_bench_response *r)
{
    bool before = r->complete;
    llhttp_finish(&r->parser);
    if (r->complete && !before)
        r->keep_alive = false;
    return r->complete;
}

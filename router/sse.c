/* router/sse: the text/event-stream parser (router/sse.h).
 *
 * Bytes arrive in pieces cut anywhere, so everything that can straddle two
 * feeds lives in the parser: the line being read (p->line), a CR whose LF
 * may be the first byte of the next feed (SSE_AFTER_CR), and the bytes of a
 * leading BOM matched so far. A line is interpreted only once its end is
 * seen (a line wholly inside one feed is read where it is, the others
 * from p->line); a blank line hands the event to the callback and starts
 * the next.
 *
 * Bounds: the bytes one event holds (its event name, its data and the line
 * being read) never exceed max_event: the feed that would cross the limit
 * fails with KP_ETOOBIG before it copies anything. Comment lines are
 * dropped as they arrive, so a keep-alive comment costs nothing whatever its
 * length. After KP_ETOOBIG or KP_ENOMEM the parser has lost bytes; it
 * returns the same error for every later feed. */
#include "router/sse.h"

#include <stdbool.h>
#include <string.h>

#define SSE_DEFAULT_MAX ((size_t)8 << 20)
/* Buffers that grew beyond this for one big event are given back after it. */
#define SSE_KEEP ((size_t)64 << 10)

enum {
    SSE_BOM_MATCHED = 0x03, /* bytes of a leading BOM matched so far (0..2) */
    SSE_STARTED = 0x04,     /* past the place where a BOM may appear */
    SSE_AFTER_CR = 0x08,    /* the last byte was CR: an LF next belongs to it */
    SSE_HAS_DATA = 0x10,    /* the event being read has a data line */
    SSE_COMMENT = 0x20,     /* the line being read is a comment: drop it */
    SSE_TOOBIG = 0x40,      /* broken by KP_ETOOBIG */
    SSE_NOMEM = 0x80,       /* broken by KP_ENOMEM */
};

static const unsigned char bom[3] = {0xEF, 0xBB, 0xBF};

void kp_sse_init(struct kp_sse_parser *p, size_t max_event)
{
    kp_buf_init(&p->line);
    kp_buf_init(&p->event);
    kp_buf_init(&p->data);
    p->max_event = max_event ? max_event : SSE_DEFAULT_MAX;
    p->state = 0;
}

void kp_sse_free(struct kp_sse_parser *p)
{
    kp_buf_free(&p->line);
    kp_buf_free(&p->event);
    kp_buf_free(&p->data);
    p->state = 0;
}

static int broken(struct kp_sse_parser *p, int rc)
{
    p->state |= rc == KP_ETOOBIG ? SSE_TOOBIG : SSE_NOMEM;
    return rc;
}

/* Empty @b, giving its memory back when one big event grew it. */
static void clear(struct kp_buf *b)
{
    if (b->cap > SSE_KEEP)
        kp_buf_free(b);
    else
        kp_buf_consume(b, b->len);
}

/* Append @n bytes of the current line. */
static int take(struct kp_sse_parser *p, const char *s, size_t n)
{
    if (n == 0 || (p->state & SSE_COMMENT))
        return KP_OK;
    if (p->line.len == 0 && s[0] == ':') {
        p->state |= SSE_COMMENT;
        return KP_OK;
    }
    size_t used = p->line.len + p->event.len + p->data.len;
    if (used > p->max_event || n > p->max_event - used)
        return broken(p, KP_ETOOBIG);
    if (kp_buf_append(&p->line, s, n) != 0)
        return broken(p, KP_ENOMEM);
    return KP_OK;
}

static int dispatch(struct kp_sse_parser *p, int (*fn)(void *, const struct kp_sse_event *),
                    void *arg)
{
    int rc = KP_OK;
    if (p->state & SSE_HAS_DATA) {
        struct kp_sse_event ev = {
            .event = p->event.len ? p->event.data : "message",
            .event_len = p->event.len ? p->event.len : strlen("message"),
            .data = p->data.data ? p->data.data : "",
            .data_len = p->data.len,
        };
        rc = fn(arg, &ev);
    }
    clear(&p->event);
    clear(&p->data);
    p->state &= ~SSE_HAS_DATA;
    return rc;
}

static bool field_is(const char *f, size_t n, const char *name)
{
    return n == strlen(name) && memcmp(f, name, n) == 0;
}

/* Act on a complete line @f (@len bytes, no terminator; not a comment).
 * An empty line ends the event. */
static int line_done(struct kp_sse_parser *p, const char *f, size_t len,
                     int (*fn)(void *, const struct kp_sse_event *), void *arg)
{
    if (len == 0)
        return dispatch(p, fn, arg);
    const char *colon = memchr(f, ':', len);
    size_t flen = colon ? (size_t)(colon - f) : len;
    const char *v = colon ? colon + 1 : f + flen;
    size_t vlen = len - (size_t)(v - f);
    if (vlen > 0 && *v == ' ') {
        v++;
        vlen--;
    }
    int err = 0;
    if (field_is(f, flen, "event")) {
        kp_buf_consume(&p->event, p->event.len);
        err = kp_buf_append(&p->event, v, vlen);
    } else if (field_is(f, flen, "data")) {
        if (p->state & SSE_HAS_DATA)
            err = kp_buf_append_lit(&p->data, "\n");
        if (err == 0)
            err = kp_buf_append(&p->data, v, vlen);
        p->state |= SSE_HAS_DATA;
    }
    /* "id", "retry" and unknown fields: nothing keyplane uses. */
    return err ? broken(p, KP_ENOMEM) : KP_OK;
}

/* The line in p->line is complete: act on it. The line buffer holds no
 * terminator, and a comment line left it empty. */
static int end_line(struct kp_sse_parser *p, int (*fn)(void *, const struct kp_sse_event *),
                    void *arg)
{
    if (p->state & SSE_COMMENT) {
        p->state &= ~SSE_COMMENT;
        return KP_OK;
    }
    int rc = line_done(p, p->line.data, p->line.len, fn, arg);
    clear(&p->line);
    return rc;
}

/* A line wholly inside one feed (@s, @n bytes) is read where it is,
 * without going through p->line: the same checks as take and end_line,
 * one copy fewer for most events. */
static int line_in_place(struct kp_sse_parser *p, const char *s, size_t n,
                         int (*fn)(void *, const struct kp_sse_event *), void *arg)
{
    if (n > 0 && s[0] == ':')
        return KP_OK; /* a comment */
    size_t used = p->event.len + p->data.len;
    if (n > 0 && (used > p->max_event || n > p->max_event - used))
        return broken(p, KP_ETOOBIG);
    return line_done(p, s, n, fn, arg);
}

/* Skip a leading BOM, however the feeds cut it. Returns the bytes used. */
static size_t skip_bom(struct kp_sse_parser *p, const unsigned char *s, size_t len, int *rc)
{
    size_t i = 0;
    *rc = KP_OK;
    while (!(p->state & SSE_STARTED) && i < len) {
        unsigned m = (unsigned)p->state & SSE_BOM_MATCHED;
        p->state &= ~SSE_BOM_MATCHED;
        if (s[i] == bom[m]) {
            i++;
            if (m + 1 == sizeof(bom))
                p->state |= SSE_STARTED;
            else
                p->state |= (int)(m + 1);
        } else {
            /* Not a BOM after all: the bytes matched are the line's. */
            p->state |= SSE_STARTED;
            *rc = take(p, (const char *)bom, m);
        }
    }
    return i;
}

int kp_sse_feed(struct kp_sse_parser *p, const void *bytes, size_t len,
                int (*fn)(void *arg, const struct kp_sse_event *ev), void *arg)
{
    if (p->state & SSE_TOOBIG)
        return KP_ETOOBIG;
    if (p->state & SSE_NOMEM)
        return KP_ENOMEM;
    const char *s = bytes, *end = s + len;
    int rc;
    s += skip_bom(p, (const unsigned char *)s, len, &rc);
    if (rc != KP_OK)
        return rc;
    while (s < end) {
        if (p->state & SSE_AFTER_CR) {
            p->state &= ~SSE_AFTER_CR;
            if (*s == '\n') {
                s++;
                continue;
            }
        }
        /* The line ends at the first CR or LF: memchr's word-at-a-time scan,
         * the CR looked for only before the LF. */
        const char *nl = memchr(s, '\n', (size_t)(end - s));
        const char *lim = nl ? nl : end;
        const char *cr = memchr(s, '\r', (size_t)(lim - s));
        const char *eol = cr ? cr : lim;
        bool whole = eol != end && p->line.len == 0 && !(p->state & SSE_COMMENT);
        if (!whole && (rc = take(p, s, (size_t)(eol - s))) != KP_OK)
            return rc;
        if (eol == end)
            break;
        if (*eol == '\r')
            p->state |= SSE_AFTER_CR;
        const char *line = s;
        s = eol + 1;
        rc = whole ? line_in_place(p, line, (size_t)(eol - line), fn, arg) : end_line(p, fn, arg);
        if (rc != KP_OK)
            return rc;
    }
    /* Between events nothing is kept: a stream waiting for its next event
     * (most of an open stream's life) holds no buffer. */
    if (p->line.len == 0)
        kp_buf_free(&p->line);
    if (p->data.len == 0 && p->event.len == 0) {
        kp_buf_free(&p->data);
        kp_buf_free(&p->event);
    }
    return KP_OK;
}

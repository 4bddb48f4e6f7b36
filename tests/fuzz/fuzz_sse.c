/* libFuzzer driver for the text/event-stream parser (router/sse.h). The
 * first two input bytes pick the parser's max_event and a cut position; the
 * rest is the stream. Beyond crashes, sanitizer reports and leaks, the
 * fuzzer checks that feeds may end anywhere:
 *
 *   the stream fed in one piece, cut in two at the chosen position, and fed
 *   byte by byte gives the same events (name and data, in order) and the
 *   same result (KP_OK or KP_ETOOBIG; the callback never stops it);
 *   every event's data is NUL-terminated and no larger than max_event.
 *
 * The seeds in corpus/sse/ are provider streams (Anthropic named events,
 * OpenAI chunks with [DONE]) and line-ending and BOM oddities. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "router/sse.h"

struct seen {
    struct kp_buf log; /* per event: name length, name, data length, data */
    size_t max;
};

static int on_event(void *arg, const struct kp_sse_event *ev)
{
    struct seen *s = arg;
    if (ev->data[ev->data_len] != '\0' || ev->data_len > s->max || ev->event_len == 0)
        abort();
    if (kp_buf_append(&s->log, &ev->event_len, sizeof(ev->event_len)) != 0 ||
        kp_buf_append(&s->log, ev->event, ev->event_len) != 0 ||
        kp_buf_append(&s->log, &ev->data_len, sizeof(ev->data_len)) != 0 ||
        kp_buf_append(&s->log, ev->data, ev->data_len) != 0)
        abort();
    return 0;
}

/* Feed @n bytes of @s in pieces of @step bytes (the first piece @first). */
static int feed(const uint8_t *s, size_t n, size_t max, size_t first, size_t step, struct seen *out)
{
    struct kp_sse_parser p;
    kp_sse_init(&p, max);
    kp_buf_init(&out->log);
    out->max = p.max_event;
    int rc = KP_OK;
    size_t at = 0, piece = first;
    while (rc == KP_OK && at < n) {
        size_t k = piece < n - at ? piece : n - at;
        rc = kp_sse_feed(&p, s + at, k, on_event, out);
        at += k;
        piece = step;
    }
    kp_sse_free(&p);
    return rc;
}

static void same(int rc1, const struct seen *a, int rc2, const struct seen *b)
{
    if (rc1 != rc2 || a->log.len != b->log.len ||
        (a->log.len && memcmp(a->log.data, b->log.data, a->log.len) != 0))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    /* 0: the 8 MiB default; otherwise a small bound that the input can hit. */
    size_t max = data[0] == 0 ? 0 : (size_t)data[0] * 4;
    const uint8_t *s = data + 2;
    size_t n = size - 2;
    size_t cut = n ? (size_t)data[1] * 7919 % (n + 1) : 0;

    struct seen whole, two, bytes;
    int rc = feed(s, n, max, n, n, &whole);
    if (rc != KP_OK && rc != KP_ETOOBIG)
        abort();
    same(rc, &whole, feed(s, n, max, cut, n, &two), &two);
    same(rc, &whole, feed(s, n, max, 1, 1, &bytes), &bytes);
    kp_buf_free(&whole.log);
    kp_buf_free(&two.log);
    kp_buf_free(&bytes.log);
    return 0;
}

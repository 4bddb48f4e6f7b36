/* Writing answers: the put helpers every shape uses, the reply text, the
 * headers of an answer and its stream events.
 *
 * Appends never fail loudly: out of memory sets a->failed, which
 * kp_mock_handle replaces by a static 503, so builders need not check each
 * call. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

static const char reply[] = "mock0 mock1 mock2 mock3 mock4 mock5 mock6 mock7 mock8 mock9 mock10 "
                            "mock11 mock12 mock13 mock14 mock15";

void kp_mock_answer_init(struct kp_mock_answer *a)
{
    memset(a, 0, sizeof(*a));
    kp_buf_init(&a->body);
    kp_mock_answer_clear(a);
}

void kp_mock_answer_clear(struct kp_mock_answer *a)
{
    struct kp_buf body = a->body;

    memset(a, 0, sizeof(*a));
    a->body = body;
    a->body.len = 0;
    a->status = 200;
    a->route = KP_MOCK_R_OTHER;
    a->content_type = "application/json";
    a->malformed_event = -1;
    kp_mock_faults_init(&a->faults);
}

void kp_mock_answer_free(struct kp_mock_answer *a)
{
    kp_buf_free(&a->body);
}

unsigned kp_mock_answer_headers(const struct kp_mock_answer *a, struct kp_http_header *out)
{
    unsigned n = 0;

    out[n++] = KP_HTTP_HEADER("Content-Type", a->content_type);
    if (a->retry_after[0] != '\0')
        out[n++] = KP_HTTP_HEADER("Retry-After", a->retry_after);
    if (a->retry_after_ms[0] != '\0')
        out[n++] = KP_HTTP_HEADER("retry-after-ms", a->retry_after_ms);
    if (a->allow != NULL)
        out[n++] = KP_HTTP_HEADER("Allow", a->allow);
    if (a->stream)
        out[n++] = KP_HTTP_HEADER("Cache-Control", "no-cache");
    return n;
}

void kp_mock_answer_event(const struct kp_mock_answer *a, unsigned i, const char **p, size_t *len)
{
    size_t start = i == 0 ? 0 : a->event_end[i - 1];

    *p = a->body.data + start;
    *len = a->event_end[i] - start;
}

void kp_mock__putn_grow(struct kp_mock_answer *a, const char *s, size_t n)
{
    if (kp_buf_append(&a->body, s, n) != 0)
        a->failed = true;
}

void kp_mock__put(struct kp_mock_answer *a, const char *s)
{
    kp_mock__putn(a, s, strlen(s));
}

void kp_mock__putf(struct kp_mock_answer *a, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(tmp)) {
        a->failed = true;
        return;
    }
    kp_mock__putn(a, tmp, (size_t)n);
}

void kp_mock__put_u(struct kp_mock_answer *a, uint64_t v)
{
    char tmp[24];
    size_t i = sizeof(tmp);

    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    kp_mock__putn(a, tmp + i, sizeof(tmp) - i);
}

void kp_mock__put_i(struct kp_mock_answer *a, int64_t v)
{
    if (v < 0) {
        kp_mock__putn(a, "-", 1);
        kp_mock__put_u(a, 0 - (uint64_t)v);
        return;
    }
    kp_mock__put_u(a, (uint64_t)v);
}

void kp_mock__put_quoted(struct kp_mock_answer *a, const char *s, size_t n)
{
    kp_mock__putn(a, "\"", 1);
    kp_mock__putn(a, s, n);
    kp_mock__putn(a, "\"", 1);
}

void kp_mock__put_str(struct kp_mock_answer *a, const char *s, size_t n)
{
    kp_mock__putn(a, "\"", 1);
    if (kp_json_escape(&a->body, s, n) != 0)
        a->failed = true;
    kp_mock__putn(a, "\"", 1);
}

void kp_mock__event_begin(struct kp_mock_answer *a, const char *name)
{
    if (name != NULL) {
        kp_mock__put(a, "event: ");
        kp_mock__put(a, name);
        kp_mock__put(a, "\n");
    }
    kp_mock__put(a, "data: ");
}

void kp_mock__event_end(struct kp_mock_answer *a, const char *sep)
{
    kp_mock__put(a, sep);
    if (a->n_events == KP_MOCK_MAX_EVENTS) {
        a->failed = true;
        return;
    }
    a->event_end[a->n_events++] = a->body.len;
}

static size_t word_offset(unsigned i)
{
    return i <= 10 ? i * 6 : 60 + (i - 10) * 7;
}

static size_t word_len(unsigned i)
{
    return i < 10 ? 5 : 6;
}

void kp_mock__reply_text(unsigned words, const char **p, size_t *len)
{
    *p = reply;
    *len = words == 0 ? 0 : word_offset(words - 1) + word_len(words - 1);
}

void kp_mock__reply_word(unsigned i, const char **p, size_t *len)
{
    if (i == 0) {
        *p = reply;
        *len = word_len(0);
        return;
    }
    *p = reply + word_offset(i) - 1;
    *len = word_len(i) + 1;
}

void kp_mock__begin(struct kp_mock_answer *a, int status, const char *content_type)
{
    a->status = status;
    a->stream = false;
    a->content_type = content_type;
    a->body.len = 0;
    a->n_events = 0;
}

void kp_mock__begin_stream(struct kp_mock_answer *a, const char *content_type)
{
    kp_mock__begin(a, 200, content_type);
    a->stream = true;
}

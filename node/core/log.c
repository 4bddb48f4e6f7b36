/* JSON-lines logging with redaction at the sink.
 *
 * A line is formatted on the caller's stack, redacted, escaped into a JSON
 * object and written with one write(2), so lines from several threads never
 * interleave. Redaction is the second line of defence: code must not pass
 * secrets to a log call at all, but if one slips through, the sink masks
 * anything key-shaped and every registered secret value. */
#include "log.h"

#include <ctype.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "alloc.h"
#include "clock.h"
#include "json.h"

#define LINE_MAX_MSG 4096
#define MASK         "***"

bool kp_trace_enabled;
static atomic_int log_level = KP_LOG_INFO;
static kp_log_sink_fn sink_fn;
static void *sink_arg;

static pthread_mutex_t secrets_lock = PTHREAD_MUTEX_INITIALIZER;
static char **secrets;
static size_t n_secrets;

static const char *const level_names[] = {"debug", "info", "warn", "error", "off"};

void kp_log_set_level(int level)
{
    atomic_store(&log_level, level);
}

int kp_log_get_level(void)
{
    return atomic_load(&log_level);
}

int kp_log_parse_level(const char *s)
{
    for (int i = 0; i <= KP_LOG_OFF; i++)
        if (strcmp(s, level_names[i]) == 0)
            return i;
    if (strcmp(s, "warning") == 0)
        return KP_LOG_WARN;
    return -1;
}

void kp_log_set_sink(kp_log_sink_fn fn, void *arg)
{
    sink_fn = fn;
    sink_arg = arg;
}

void kp_log_init_from_env(void)
{
    const char *t = getenv("KEYPLANE_TRACE");
    kp_trace_enabled = t != NULL && *t != '\0' && strcmp(t, "0") != 0;
    if (kp_trace_enabled && kp_log_get_level() > KP_LOG_DEBUG)
        kp_log_set_level(KP_LOG_DEBUG);
}

void kp_log_register_secret(const char *s, size_t len)
{
    if (len < 6)
        return;
    char *copy = kp_strndup(s, len);
    if (copy == NULL)
        return;
    pthread_mutex_lock(&secrets_lock);
    char **grown = realloc(secrets, (n_secrets + 1) * sizeof(*secrets));
    if (grown != NULL) {
        secrets = grown;
        secrets[n_secrets++] = copy;
        copy = NULL;
    }
    pthread_mutex_unlock(&secrets_lock);
    kp_free(copy);
}

void kp_log_clear_secrets(void)
{
    pthread_mutex_lock(&secrets_lock);
    for (size_t i = 0; i < n_secrets; i++) {
        memset(secrets[i], 0, strlen(secrets[i]));
        kp_free(secrets[i]);
    }
    free(secrets);
    secrets = NULL;
    n_secrets = 0;
    pthread_mutex_unlock(&secrets_lock);
}

/* --- redaction ----------------------------------------------------------- */

static bool is_token_char(char c)
{
    return isalnum((unsigned char)c) || c == '-' || c == '_' || c == '.' || c == '~' || c == '+' ||
           c == '/' || c == '=';
}

static bool is_word_char(char c)
{
    return isalnum((unsigned char)c) || c == '_';
}

/* Length of the run of token characters at s[i..len). */
static size_t token_run(const char *s, size_t i, size_t len)
{
    size_t j = i;
    while (j < len && is_token_char(s[j]))
        j++;
    return j - i;
}

static bool prefix_at(const char *s, size_t i, size_t len, const char *p, bool icase)
{
    size_t n = strlen(p);
    if (len - i < n)
        return false;
    return icase ? strncasecmp(s + i, p, n) == 0 : memcmp(s + i, p, n) == 0;
}

/* Writes the masked form of a value of length @vlen at out; returns bytes
 * written, never more than vlen. */
static size_t put_mask(char *out, size_t vlen)
{
    size_t n = vlen < sizeof(MASK) - 1 ? vlen : sizeof(MASK) - 1;
    memset(out, '*', n);
    return n;
}

static bool is_sep_char(char c)
{
    return c == ' ' || c == '\t' || c == '"' || c == '\'' || c == '\\';
}

/* Given a key-name match ending at e (e.g. after "x-api-key"), skip the
 * separators of "name: value", "name = value" or "\"name\" : \"value\"" and
 * return where the value starts, or 0 when none follows. */
static size_t value_after_name(const char *s, size_t e, size_t len)
{
    size_t j = e;
    while (j < len && is_sep_char(s[j]))
        j++;
    if (j >= len || (s[j] != ':' && s[j] != '='))
        return 0;
    j++;
    while (j < len && is_sep_char(s[j]))
        j++;
    return j < len ? j : 0;
}

/* Whether a key may start at s[r]: at the start, after a non-word byte, or
 * right after a JSON escape such as \n or \u0022 whose last byte is a
 * letter or digit. */
static bool at_boundary(const char *s, size_t r)
{
    if (r == 0 || !is_word_char(s[r - 1]))
        return true;
    if (r >= 2 && s[r - 2] == '\\')
        return true;
    return r >= 6 && s[r - 6] == '\\' && s[r - 5] == 'u';
}

static const char *const key_names[] = {"x-api-key", "x-goog-api-key", "api-key", "api_key",
                                        "apikey"};

size_t kp_redact(char *s, size_t len)
{
    size_t r = 0, w = 0;
    while (r < len) {
        bool boundary = at_boundary(s, r);
        size_t keep = 0, vlen = 0;
        if (boundary && prefix_at(s, r, len, "sk-", false)) {
            size_t t = token_run(s, r + 3, len);
            if (t >= 8) {
                keep = 3;
                vlen = t;
            }
        } else if (boundary && prefix_at(s, r, len, "kp_", false)) {
            size_t t = token_run(s, r + 3, len);
            if (t >= 8) {
                keep = 3;
                vlen = t;
            }
        } else if (boundary && prefix_at(s, r, len, "bearer", true) && r + 6 < len &&
                   (s[r + 6] == ' ' || s[r + 6] == '\t')) {
            size_t v = r + 6;
            while (v < len && (s[v] == ' ' || s[v] == '\t'))
                v++;
            size_t t = token_run(s, v, len);
            if (t > 0) {
                keep = v - r;
                vlen = t;
            }
        } else if (boundary) {
            for (size_t k = 0; k < sizeof(key_names) / sizeof(key_names[0]); k++) {
                if (!prefix_at(s, r, len, key_names[k], true))
                    continue;
                size_t v = value_after_name(s, r + strlen(key_names[k]), len);
                size_t t = v ? token_run(s, v, len) : 0;
                if (t > 0) {
                    keep = v - r;
                    vlen = t;
                }
                break;
            }
        }
        if (vlen > 0) {
            memmove(s + w, s + r, keep);
            w += keep;
            w += put_mask(s + w, vlen);
            r += keep + vlen;
            continue;
        }
        s[w++] = s[r++];
    }
    return w;
}

/* Replace every registered secret in s[0..len) by the mask. */
static size_t redact_registered(char *s, size_t len)
{
    pthread_mutex_lock(&secrets_lock);
    for (size_t k = 0; k < n_secrets; k++) {
        size_t n = strlen(secrets[k]);
        size_t r = 0, w = 0;
        while (r < len) {
            if (len - r >= n && memcmp(s + r, secrets[k], n) == 0) {
                w += put_mask(s + w, n);
                r += n;
            } else {
                s[w++] = s[r++];
            }
        }
        len = w;
    }
    pthread_mutex_unlock(&secrets_lock);
    return len;
}

/* --- sink ---------------------------------------------------------------- */

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k <= 0)
            return;
        p += k;
        n -= (size_t)k;
    }
}

void kp_log(int level, const char *component, const char *fmt, ...)
{
    if (level < atomic_load_explicit(&log_level, memory_order_relaxed) || level >= KP_LOG_OFF)
        return;
    /* Format into twice the cap and redact before truncating, so a secret
     * straddling the cut is still masked whole. */
    char msg[LINE_MAX_MSG * 2];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    size_t len = (size_t)n < sizeof(msg) ? (size_t)n : sizeof(msg) - 1;
    len = redact_registered(msg, len);
    len = kp_redact(msg, len);
    if (len > LINE_MAX_MSG - 1) {
        /* Cut on a UTF-8 character boundary. */
        len = LINE_MAX_MSG - 1;
        while (len > 0 && ((unsigned char)msg[len] & 0xc0) == 0x80)
            len--;
    }

    char ts[32];
    kp_format_time_ms(kp_now_unix_ms(), ts, sizeof(ts));
    /* Sized so the kp_buf never needs to grow (it would realloc a stack
     * array): an escaped byte takes at most 6 bytes. */
    char linebuf[LINE_MAX_MSG * 6 + 1024];
    struct kp_buf line = {linebuf, 0, sizeof(linebuf)};
    int off = snprintf(linebuf, sizeof(linebuf), "{\"ts\":\"%s\",\"level\":\"%s\",\"comp\":\"", ts,
                       level_names[level]);
    line.len = (size_t)off;
    kp_json_escape(&line, component, strnlen(component, 64));
    kp_buf_append_lit(&line, "\",\"msg\":\"");
    kp_json_escape(&line, msg, len);
    kp_buf_append(&line, "\"}\n", 3);
    if (sink_fn)
        sink_fn(line.data, line.len, sink_arg);
    else
        write_all(2, line.data, line.len);
}

/* JSON helpers: escaping for hand-built lines (logs, metrics labels) and
 * the OpenAI-shaped error body every listener answers with. */
#include "json.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "bytes.h"

int kp_json_escape(struct kp_buf *out, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t start = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char u[7];
        if (c >= 0x80) {
            size_t n = kp_utf8_len(s + i, len - i);
            if (n > 0) {
                i += n - 1;
                continue;
            }
            /* Not UTF-8: the JSON would be invalid, so say so in-band. */
            if (kp_buf_append(out, s + start, i - start) != 0 ||
                kp_buf_append_lit(out, "\\ufffd") != 0)
                return -1;
            start = i + 1;
            continue;
        }
        switch (c) {
        case '"':
            esc = "\\\"";
            break;
        case '\\':
            esc = "\\\\";
            break;
        case '\n':
            esc = "\\n";
            break;
        case '\r':
            esc = "\\r";
            break;
        case '\t':
            esc = "\\t";
            break;
        default:
            if (c < 0x20 || c == 0x7f) {
                u[0] = '\\';
                u[1] = 'u';
                u[2] = '0';
                u[3] = '0';
                u[4] = hex[c >> 4];
                u[5] = hex[c & 15];
                u[6] = '\0';
                esc = u;
            }
        }
        if (esc == NULL)
            continue;
        if (kp_buf_append(out, s + start, i - start) != 0 ||
            kp_buf_append(out, esc, strlen(esc)) != 0)
            return -1;
        start = i + 1;
    }
    return kp_buf_append(out, s + start, len - start);
}

/* Reals with 15 significant digits: enough for any value keyplane computes
 * (latencies, ratios) and for what apps send, without jansson's default
 * 17 digits that print 0.7 as 0.69999999999999996. */
#define DUMP_FLAGS (JSON_COMPACT | JSON_REAL_PRECISION(15))

char *kp_json_dumps(const json_t *v, size_t *len)
{
    size_t n = json_dumpb(v, NULL, 0, DUMP_FLAGS);
    if (n == 0)
        return NULL;
    char *s = kp_malloc(n + 1);
    if (s == NULL)
        return NULL;
    /* jansson allocates while dumping: the second pass can fail too. */
    if (json_dumpb(v, s, n, DUMP_FLAGS) != n) {
        kp_free(s);
        return NULL;
    }
    s[n] = '\0';
    if (len)
        *len = n;
    return s;
}

char *kp_json_error_body(const char *message, const char *type, const char *code, size_t *len)
{
    struct kp_buf b;
    kp_buf_init(&b);
    int rc = kp_buf_append_lit(&b, "{\"error\":{\"message\":\"");
    rc |= kp_json_escape(&b, message, strlen(message));
    rc |= kp_buf_append_lit(&b, "\",\"type\":\"");
    rc |= kp_json_escape(&b, type, strlen(type));
    if (code) {
        rc |= kp_buf_append_lit(&b, "\",\"code\":\"");
        rc |= kp_json_escape(&b, code, strlen(code));
        rc |= kp_buf_append_lit(&b, "\"");
    } else {
        rc |= kp_buf_append_lit(&b, "\",\"code\":null");
    }
    rc |= kp_buf_append_lit(&b, ",\"param\":null}}");
    if (rc != 0) {
        kp_buf_free(&b);
        return NULL;
    }
    if (len)
        *len = b.len;
    return b.data;
}

void kp_format_nanousd(int64_t v, char *out, size_t len)
{
    uint64_t a = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    snprintf(out, len, "%s%" PRIu64 ".%09" PRIu64, v < 0 ? "-" : "", a / 1000000000u,
             a % 1000000000u);
}

json_t *kp_json_usd(int64_t nanousd)
{
    char buf[32];
    kp_format_nanousd(nanousd, buf, sizeof(buf));
    return json_string(buf);
}

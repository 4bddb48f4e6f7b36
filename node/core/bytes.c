/* Byte-level encodings (bytes.h). */
#include "bytes.h"

#include <string.h>

void kp_put_le(uint8_t *p, uint64_t v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

uint64_t kp_get_le(const uint8_t *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = n; i > 0; i--)
        v = v << 8 | p[i - 1];
    return v;
}

void kp_hex_encode(const void *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    const uint8_t *p = in;
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 15];
    }
    out[2 * n] = '\0';
}

bool kp_field_value_ok(const void *p, size_t n)
{
    const unsigned char *b = p;
    size_t i = 0;
    /* 8 bytes at a time while none is below 0x20 or is 0x7f; from the
     * first word with one, a tab say, byte by byte. Values are mostly
     * plain. */
    for (; n - i >= 8; i += 8) {
        uint64_t x;
        memcpy(&x, b + i, sizeof(x));
        if (kp_word_has_below(x, 0x20) | kp_word_has_byte(x, 0x7f))
            break;
    }
    for (; i < n; i++)
        if ((b[i] < 0x20 && b[i] != '\t') || b[i] == 0x7f)
            return false;
    return true;
}

bool kp_has_crlf_nul(const void *p, size_t n)
{
    const unsigned char *b = p;
    size_t i = 0;
    /* As kp_field_value_ok: by words, byte by byte from a hit. */
    for (; n - i >= 8; i += 8) {
        uint64_t x;
        memcpy(&x, b + i, sizeof(x));
        if (kp_word_has_byte(x, 0) | kp_word_has_byte(x, '\r') | kp_word_has_byte(x, '\n'))
            break;
    }
    for (; i < n; i++)
        if (b[i] == '\r' || b[i] == '\n' || b[i] == '\0')
            return true;
    return false;
}

int kp_hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The second byte's range is what refuses overlong forms (after E0 and
 * F0), surrogates (after ED) and code points past U+10FFFF (after F4). */
size_t kp_utf8_len(const void *s, size_t n)
{
    const uint8_t *p = s;
    uint8_t lo = 0x80, hi = 0xbf;
    size_t len;
    if (n == 0)
        return 0;
    if (p[0] < 0x80)
        return 1;
    if (p[0] >= 0xc2 && p[0] <= 0xdf) {
        len = 2;
    } else if (p[0] >= 0xe0 && p[0] <= 0xef) {
        len = 3;
        lo = p[0] == 0xe0 ? 0xa0 : 0x80;
        hi = p[0] == 0xed ? 0x9f : 0xbf;
    } else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
        len = 4;
        lo = p[0] == 0xf0 ? 0x90 : 0x80;
        hi = p[0] == 0xf4 ? 0x8f : 0xbf;
    } else {
        return 0;
    }
    if (n < len || p[1] < lo || p[1] > hi)
        return 0;
    for (size_t k = 2; k < len; k++) {
        if ((p[k] & 0xc0) != 0x80)
            return 0;
    }
    return len;
}

size_t kp_utf8_invalid_at(const void *s, size_t n)
{
    const uint8_t *p = s;
    size_t at = 0;
    while (at < n) {
        size_t k = kp_utf8_len(p + at, n - at);
        if (k == 0)
            return at;
        at += k;
    }
    return n;
}

/* Byte-level encodings: little-endian fields of keyplane's file formats,
 * lower-case hex, and well-formed UTF-8. */
#ifndef KP_CORE_BYTES_H
#define KP_CORE_BYTES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The low @n bytes (at most 8) of @v at @p, least significant first. */
void kp_put_le(uint8_t *p, uint64_t v, size_t n);
/* The @n bytes (at most 8) at @p read least significant first. */
uint64_t kp_get_le(const uint8_t *p, size_t n);
/* @n bytes of @in as 2n lower-case hex digits and a NUL into @out. */
void kp_hex_encode(const void *in, size_t n, char *out);
/* The value of the hex digit @c (either case), or -1. */
int kp_hex_value(char c);
/* The length of the well-formed UTF-8 sequence that starts the @n bytes
 * at @p: 1 for any ASCII byte (NUL too), 2 to 4 for a longer one, 0 when
 * there is none (n == 0, a byte that cannot lead, a missing continuation
 * byte, an overlong form, a surrogate, or beyond U+10FFFF). */
size_t kp_utf8_len(const void *p, size_t n);
/* The offset of the first byte of the @n bytes at @p that does not start a
 * well-formed UTF-8 sequence (kp_utf8_len), or @n when they all do. */
size_t kp_utf8_invalid_at(const void *p, size_t n);
/* FNV-1a (32-bit) of the @n bytes at @p, continuing from @h
 * (KP_FNV1A_INIT to start): a cheap hash for in-memory tables, not for
 * anything an adversary chooses the keys of without a bound on probes. */
#define KP_FNV1A_INIT 2166136261u
static inline uint32_t kp_fnv1a(uint32_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 16777619u;
    return h;
}
/* Whether @c may be in an HTTP field name (RFC 9110 tchar: letters,
 * digits and !#$%&'*+-.^_`|~). */
static inline bool kp_is_tchar(unsigned char c)
{
    /* One bit per byte value below 128: 0-63, then 64-127. */
    static const uint64_t low = 0x03ff6cfa00000000u, high = 0x57ffffffc7fffffeu;
    return c < 64 ? (low >> c) & 1 : c < 128 ? (high >> (c - 64)) & 1 : false;
}
/* Tests on the 8 bytes of a word, exact as a yes or no in either byte
 * order: non-zero when a byte is @c, or below @n (@n <= 128). The marks
 * (each such byte's high bit) may wrongly take in bytes after the first
 * real one, never before it. */
#define KP_WORD_ONES  0x0101010101010101u
#define KP_WORD_HIGHS 0x8080808080808080u
static inline uint64_t kp_word_has_byte(uint64_t x, uint8_t c)
{
    uint64_t y = x ^ (KP_WORD_ONES * c);
    return (y - KP_WORD_ONES) & ~y & KP_WORD_HIGHS;
}
static inline uint64_t kp_word_has_below(uint64_t x, uint8_t n)
{
    return (x - KP_WORD_ONES * n) & ~x & KP_WORD_HIGHS;
}
/* Whether the @n bytes at @p may be an HTTP field value as sent: no
 * control byte (a tab aside) and no DEL. */
bool kp_field_value_ok(const void *p, size_t n);
/* Whether the @n bytes at @p hold a CR, an LF or a NUL: what would cut an
 * HTTP/1.1 header line short. */
bool kp_has_crlf_nul(const void *p, size_t n);

#endif

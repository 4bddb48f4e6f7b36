/* SipHash-2-4, 128-bit output, as the paper and its reference code define
 * it: two compression rounds per 8-byte word, four finalization rounds per
 * half of the tag. tests/unit/test_core.c checks it against OpenSSL's. */
#include "siphash.h"

#include "bytes.h"

static inline uint64_t rotl(uint64_t x, unsigned b)
{
    return (x << b) | (x >> (64 - b));
}

struct sip_state {
    uint64_t v0, v1, v2, v3;
};

static void rounds(struct sip_state *s, int n)
{
    for (int i = 0; i < n; i++) {
        s->v0 += s->v1;
        s->v1 = rotl(s->v1, 13) ^ s->v0;
        s->v0 = rotl(s->v0, 32);
        s->v2 += s->v3;
        s->v3 = rotl(s->v3, 16) ^ s->v2;
        s->v0 += s->v3;
        s->v3 = rotl(s->v3, 21) ^ s->v0;
        s->v2 += s->v1;
        s->v1 = rotl(s->v1, 17) ^ s->v2;
        s->v2 = rotl(s->v2, 32);
    }
}

static void absorb(struct sip_state *s, uint64_t m)
{
    s->v3 ^= m;
    rounds(s, 2);
    s->v0 ^= m;
}

void kp_siphash128(const uint8_t key[KP_SIPHASH_KEY_LEN], const void *in, size_t len,
                   uint8_t out[KP_SIPHASH_TAG_LEN])
{
    const uint8_t *p = in;
    uint64_t k0 = kp_get_le(key, 8), k1 = kp_get_le(key + 8, 8);
    struct sip_state s = {
        .v0 = 0x736f6d6570736575ULL ^ k0,
        .v1 = 0x646f72616e646f6dULL ^ k1 ^ 0xee, /* 0xee: the 128-bit variant */
        .v2 = 0x6c7967656e657261ULL ^ k0,
        .v3 = 0x7465646279746573ULL ^ k1,
    };
    size_t whole = len - len % 8;
    for (size_t i = 0; i < whole; i += 8)
        absorb(&s, kp_get_le(p + i, 8));
    /* The last 0..7 bytes, with the length's low byte on top. */
    uint64_t last = (uint64_t)len << 56;
    if (len % 8)
        last |= kp_get_le(p + whole, len % 8);
    absorb(&s, last);
    s.v2 ^= 0xee;
    rounds(&s, 4);
    kp_put_le(out, s.v0 ^ s.v1 ^ s.v2 ^ s.v3, 8);
    s.v1 ^= 0xdd;
    rounds(&s, 4);
    kp_put_le(out + 8, s.v0 ^ s.v1 ^ s.v2 ^ s.v3, 8);
}

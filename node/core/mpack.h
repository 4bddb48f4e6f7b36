/* A bounded msgpack reader for untrusted input: it decodes in place, never
 * allocates and never recurses.
 *
 * msgpack-c's unpacker allocates from an element count the input claims
 * before reading the elements (five bytes claiming a 4-billion-element
 * array ask malloc for 96 GB) and builds a tree a decoder would walk once.
 * This reader instead hands out one head at a time (type, length or count,
 * value) and pointers into the caller's buffer; the caller checks each
 * value as it reads it. kp_mp_skip passes over a value of any shape with a
 * counter instead of a stack, so its cost is bounded by the input's length
 * whatever counts and nesting the input claims.
 *
 * Writing is msgpack-c's packer; only reading is here. */
#ifndef KP_CORE_MPACK_H
#define KP_CORE_MPACK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum kp_mp_kind {
    KP_MP_NIL,
    KP_MP_BOOL,
    KP_MP_INT,
    KP_MP_FLOAT,
    KP_MP_STR,
    KP_MP_BIN,
    KP_MP_ARRAY,
    KP_MP_MAP,
    KP_MP_EXT,
};

/* One msgpack head: the type byte and what follows it up to the payload.
 * Strings, binary, floats and extensions: @n is the payload length (an
 * extension's type byte counts as payload), not yet consumed. Arrays and
 * maps: @n is the element count (pairs for a map). */
struct kp_mp_head {
    enum kp_mp_kind kind;
    uint64_t n;
    bool negative; /* an integer below zero, its value in @i */
    uint64_t u;    /* an integer >= 0 */
    int64_t i;
    bool b;
};

/* Why the last failed read failed. */
enum kp_mp_err {
    KP_MP_OK,
    KP_MP_EHEAD,    /* input ends inside a head, or the type byte is the unused 0xc1 */
    KP_MP_EPAYLOAD, /* input ends inside a payload */
    KP_MP_ECOUNT,   /* a container claims more elements than bytes remain */
    KP_MP_ETYPE,    /* another kind than the one asked for; err_kind says which */
    KP_MP_ERANGE,   /* longer or larger than the caller's limit, or a negative integer */
};

/* A cursor over @start..@end. A failed read sets @err and @err_off, the
 * offset of the head of the value at fault (for kp_mp_skip, of the value
 * it was reading when it failed; for kp_mp_take, where the bytes would
 * start), and leaves @p after whatever it had consumed. The reader points
 * into the caller's buffer, which must outlive it. */
struct kp_mp_reader {
    const uint8_t *start; /* offsets count from here */
    const uint8_t *p;     /* the next byte to read */
    const uint8_t *end;   /* one past the last byte */
    enum kp_mp_err err;
    size_t err_off;
    enum kp_mp_kind err_kind; /* KP_MP_ETYPE: the kind found */
};

void kp_mp_reader_init(struct kp_mp_reader *r, const void *buf, size_t len);

/* Bytes read so far, and bytes left. */
static inline size_t kp_mp_offset(const struct kp_mp_reader *r)
{
    return (size_t)(r->p - r->start);
}

static inline size_t kp_mp_left(const struct kp_mp_reader *r)
{
    return (size_t)(r->end - r->p);
}

/* The next @n bytes (a payload whose head was read); false, consuming
 * nothing, when fewer remain. */
bool kp_mp_take(struct kp_mp_reader *r, size_t n, const uint8_t **out);
/* One head. Payloads are left unconsumed: take or skip them. */
bool kp_mp_read_head(struct kp_mp_reader *r, struct kp_mp_head *h);
/* A string or binary value of at most @max bytes: its bytes in place. */
bool kp_mp_read_str(struct kp_mp_reader *r, uint64_t max, const uint8_t **s, size_t *n);
bool kp_mp_read_bin(struct kp_mp_reader *r, uint64_t max, const uint8_t **b, size_t *n);
/* An integer in 0..@max. */
bool kp_mp_read_uint(struct kp_mp_reader *r, uint64_t max, uint64_t *v);
/* Skip one value of any shape, payloads and nested elements included. */
bool kp_mp_skip(struct kp_mp_reader *r);

/* "a string", "an array", ... for messages. */
const char *kp_mp_kind_name(enum kp_mp_kind kind);

#endif

/* Allocation. Every keyplane allocation goes through these wrappers so that
 * tests can inject failures (kp_alloc_fail_after). */
#ifndef KP_CORE_ALLOC_H
#define KP_CORE_ALLOC_H

#include <stddef.h>
#include <string.h>

void *kp_malloc(size_t size);
void *kp_calloc(size_t n, size_t size);
void *kp_realloc(void *p, size_t size);
void kp_free(void *p);
char *kp_strdup(const char *s);
char *kp_strndup(const char *s, size_t n);

/* Test hook: the (n+1)th allocation from now, and every one after it, fails
 * until kp_alloc_fail_reset() is called. n < 0 disables injection. */
void kp_alloc_fail_after(long n);
void kp_alloc_fail_reset(void);
/* Number of allocations that succeeded since start (monotonic). */
unsigned long kp_alloc_count(void);

/* An arena: many small allocations freed together (a request's memory). */
struct kp_arena_chunk;
struct kp_arena {
    struct kp_arena_chunk *head;
    size_t chunk_size;
};

void kp_arena_init(struct kp_arena *a, size_t chunk_size);
/* Returns 8-byte aligned memory, or NULL when out of memory. */
void *kp_arena_alloc(struct kp_arena *a, size_t size);
char *kp_arena_strndup(struct kp_arena *a, const char *s, size_t n);
/* Frees every chunk; the arena can be used again afterwards. */
void kp_arena_free(struct kp_arena *a);
/* Forgets every allocation but keeps one ordinary chunk for reuse. */
void kp_arena_reset(struct kp_arena *a);

/* A growable byte buffer. */
struct kp_buf {
    char *data;
    size_t len;
    size_t cap;
};

void kp_buf_init(struct kp_buf *b);
int kp_buf_reserve(struct kp_buf *b, size_t extra);
int kp_buf_append_grow(struct kp_buf *b, const void *p, size_t n);
/* Append @n bytes, keeping the data NUL-terminated. Inline because answer
 * heads are built from many small appends that almost always fit. */
static inline int kp_buf_append(struct kp_buf *b, const void *p, size_t n)
{
    if (b->cap - b->len <= n)
        return kp_buf_append_grow(b, p, n);
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}
/* Append a string literal (its length known at compile time). */
#define kp_buf_append_lit(b, lit) kp_buf_append((b), (lit), sizeof(lit) - 1)
int kp_buf_appendf(struct kp_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Drops the first n bytes. */
void kp_buf_consume(struct kp_buf *b, size_t n);
void kp_buf_free(struct kp_buf *b);

#endif

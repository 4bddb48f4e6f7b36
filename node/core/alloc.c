/* Allocation wrappers, arenas and growable buffers.
 *
 * Failure injection: kp_alloc_fail_after(n) lets n more allocations succeed
 * and fails every one after, so tests can walk a cleanup ladder one failure
 * point at a time. The counters are atomics because workers allocate from
 * several threads. */
#include "alloc.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static atomic_long fail_countdown = -1;
static atomic_ulong alloc_count;

static int should_fail(void)
{
    long left = atomic_load_explicit(&fail_countdown, memory_order_relaxed);
    if (left < 0)
        return 0;
    if (left == 0)
        return 1;
    /* Several threads may race here; losing a decrement only moves the
     * failure point by one, which tests (single-threaded) never see. */
    atomic_fetch_sub_explicit(&fail_countdown, 1, memory_order_relaxed);
    return 0;
}

void kp_alloc_fail_after(long n)
{
    atomic_store(&fail_countdown, n);
}

void kp_alloc_fail_reset(void)
{
    atomic_store(&fail_countdown, -1);
}

unsigned long kp_alloc_count(void)
{
    return atomic_load_explicit(&alloc_count, memory_order_relaxed);
}

void *kp_malloc(size_t size)
{
    if (should_fail())
        return NULL;
    void *p = malloc(size ? size : 1);
    if (p)
        atomic_fetch_add_explicit(&alloc_count, 1, memory_order_relaxed);
    return p;
}

void *kp_calloc(size_t n, size_t size)
{
    if (should_fail())
        return NULL;
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (p)
        atomic_fetch_add_explicit(&alloc_count, 1, memory_order_relaxed);
    return p;
}

void *kp_realloc(void *p, size_t size)
{
    if (should_fail())
        return NULL;
    return realloc(p, size ? size : 1);
}

void kp_free(void *p)
{
    free(p);
}

char *kp_strndup(const char *s, size_t n)
{
    char *d = kp_malloc(n + 1);
    if (d == NULL)
        return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

char *kp_strdup(const char *s)
{
    return kp_strndup(s, strlen(s));
}

/* --- arena --------------------------------------------------------------- */

struct kp_arena_chunk {
    struct kp_arena_chunk *next;
    size_t used;
    size_t cap;
    _Alignas(max_align_t) char mem[];
};

void kp_arena_init(struct kp_arena *a, size_t chunk_size)
{
    a->head = NULL;
    a->chunk_size = chunk_size ? chunk_size : 4096;
}

void *kp_arena_alloc(struct kp_arena *a, size_t size)
{
    if (size > SIZE_MAX / 2)
        return NULL;
    size = (size + 7) & ~(size_t)7;
    struct kp_arena_chunk *c = a->head;
    if (c == NULL || c->cap - c->used < size) {
        size_t cap = size > a->chunk_size ? size : a->chunk_size;
        c = kp_malloc(sizeof(*c) + cap);
        if (c == NULL)
            return NULL;
        c->cap = cap;
        c->used = 0;
        /* A chunk made for one big allocation goes behind the head, so the
         * head's free space is not wasted. */
        if (a->head != NULL && cap > a->chunk_size) {
            c->next = a->head->next;
            a->head->next = c;
        } else {
            c->next = a->head;
            a->head = c;
        }
    }
    void *p = c->mem + c->used;
    c->used += size;
    return p;
}

char *kp_arena_strndup(struct kp_arena *a, const char *s, size_t n)
{
    char *d = kp_arena_alloc(a, n + 1);
    if (d == NULL)
        return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

void kp_arena_reset(struct kp_arena *a)
{
    struct kp_arena_chunk *keep = NULL, *c = a->head;
    while (c != NULL) {
        struct kp_arena_chunk *next = c->next;
        if (keep == NULL && c->cap == a->chunk_size) {
            keep = c;
        } else {
            kp_free(c);
        }
        c = next;
    }
    if (keep != NULL) {
        keep->used = 0;
        keep->next = NULL;
    }
    a->head = keep;
}

void kp_arena_free(struct kp_arena *a)
{
    struct kp_arena_chunk *c = a->head;
    while (c != NULL) {
        struct kp_arena_chunk *next = c->next;
        kp_free(c);
        c = next;
    }
    a->head = NULL;
}

/* --- buffer -------------------------------------------------------------- */

void kp_buf_init(struct kp_buf *b)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

int kp_buf_reserve(struct kp_buf *b, size_t extra)
{
    if (b->cap - b->len > extra)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len <= extra) {
        if (cap > SIZE_MAX / 2)
            return -1;
        cap *= 2;
    }
    char *p = kp_realloc(b->data, cap);
    if (p == NULL)
        return -1;
    b->data = p;
    b->cap = cap;
    return 0;
}

int kp_buf_append_grow(struct kp_buf *b, const void *p, size_t n)
{
    if (kp_buf_reserve(b, n) != 0)
        return -1;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int kp_buf_appendf(struct kp_buf *b, const char *fmt, ...)
{
    va_list ap;
    char small[256];
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0)
        return -1;
    if ((size_t)n < sizeof(small))
        return kp_buf_append(b, small, (size_t)n);
    if (kp_buf_reserve(b, (size_t)n) != 0)
        return -1;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void kp_buf_consume(struct kp_buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
    } else {
        memmove(b->data, b->data + n, b->len - n);
        b->len -= n;
    }
    if (b->data)
        b->data[b->len] = '\0';
}

void kp_buf_free(struct kp_buf *b)
{
    kp_free(b->data);
    kp_buf_init(b);
}

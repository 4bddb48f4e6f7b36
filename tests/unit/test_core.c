/* Unit tests for the pure parts of node/core: allocation wrappers and their
 * failure injection, arenas and buffers (alloc.c), error codes (error.c),
 * clocks and random ids (clock.c), JSON escaping and error bodies (json.c),
 * JSON-lines logging and redaction (log.c), Prometheus metrics
 * (metrics.c), the bounded msgpack reader (mpack.c), little-endian fields
 * and hex (bytes.c), and the zstd glue (zstd_frame.c).
 *
 * Log lines are captured with kp_log_set_sink and parsed back with jansson,
 * so what is checked is exactly what an operator's log pipeline would see.
 * Nothing here sleeps or depends on timing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <uv.h>
#include <zstd.h>

#include "core/core.h"

/* --- helpers -------------------------------------------------------------- */

/* True when @text holds @line as a whole line (newline-terminated). */
static bool has_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = strstr(text, line); p != NULL; p = strstr(p + 1, line))
        if ((p == text || p[-1] == '\n') && p[n] == '\n')
            return true;
    return false;
}

#define assert_has_line(text, line)                                                                \
    do {                                                                                           \
        if (!has_line((text), (line)))                                                             \
            fail_msg("missing line: %s", (line));                                                  \
    } while (0)

/* Number of lines of @text that start with @prefix. */
static int count_lines_with_prefix(const char *text, const char *prefix)
{
    int n = 0;
    size_t plen = strlen(prefix);
    for (const char *p = text; *p != '\0';) {
        if (strncmp(p, prefix, plen) == 0)
            n++;
        const char *nl = strchr(p, '\n');
        if (nl == NULL)
            break;
        p = nl + 1;
    }
    return n;
}

/* Runs kp_redact on a copy of @in and checks the result is @want. */
static void check_redact(const char *in, const char *want)
{
    size_t len = strlen(in);
    char *s = malloc(len + 1);
    assert_non_null(s);
    memcpy(s, in, len + 1);
    size_t out = kp_redact(s, len);
    assert_true(out <= len);
    s[out] = '\0';
    if (strcmp(s, want) != 0)
        fail_msg("kp_redact(\"%s\") = \"%s\", want \"%s\"", in, s, want);
    free(s);
}

/* --- alloc: wrappers and failure injection -------------------------------- */

/* Ends any failure injection a failed assertion may have left behind. */
static int injection_teardown(void **state)
{
    (void)state;
    kp_alloc_fail_reset();
    return 0;
}

/* kp_malloc, kp_calloc, kp_realloc, kp_strdup and kp_strndup allocate usable,
 * correctly initialised memory. */
static void test_alloc_wrappers(void **state)
{
    (void)state;
    char *p = kp_malloc(16);
    assert_non_null(p);
    memset(p, 'x', 16);

    p = kp_realloc(p, 4096);
    assert_non_null(p);
    for (int i = 0; i < 16; i++)
        assert_int_equal(p[i], 'x');
    memset(p, 'y', 4096);
    kp_free(p);

    unsigned char *z = kp_calloc(100, 8);
    assert_non_null(z);
    for (int i = 0; i < 800; i++)
        assert_int_equal(z[i], 0);
    kp_free(z);

    char *d = kp_strdup("hello, world");
    assert_non_null(d);
    assert_string_equal(d, "hello, world");
    kp_free(d);

    char *e = kp_strdup("");
    assert_non_null(e);
    assert_string_equal(e, "");
    kp_free(e);

    char *nd = kp_strndup("abcdef", 3);
    assert_non_null(nd);
    assert_string_equal(nd, "abc");
    kp_free(nd);

    kp_free(NULL);
}

/* Zero-sized requests still return a pointer that can be freed. */
static void test_alloc_zero_size(void **state)
{
    (void)state;
    void *a = kp_malloc(0);
    void *b = kp_calloc(0, 0);
    void *c = kp_realloc(NULL, 0);
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(c);
    kp_free(a);
    kp_free(b);
    kp_free(c);
}

/* kp_alloc_fail_after(n) lets exactly n more allocations succeed, then every
 * one fails, across all wrappers, until kp_alloc_fail_reset(). */
static void test_alloc_fail_after(void **state)
{
    (void)state;
    void *ok[3];
    kp_alloc_fail_after(3);
    ok[0] = kp_malloc(8);
    ok[1] = kp_calloc(1, 8);
    ok[2] = kp_strdup("x");
    for (int i = 0; i < 3; i++)
        assert_non_null(ok[i]);
    for (int i = 0; i < 10; i++) {
        assert_null(kp_malloc(8));
        assert_null(kp_calloc(1, 8));
        assert_null(kp_realloc(NULL, 8));
        assert_null(kp_strdup("abc"));
        assert_null(kp_strndup("abc", 2));
    }
    kp_alloc_fail_reset();
    void *after = kp_malloc(8);
    assert_non_null(after);
    kp_free(after);
    for (int i = 0; i < 3; i++)
        kp_free(ok[i]);
}

/* kp_alloc_fail_after(0) fails the very next allocation, and a negative
 * count disables injection. */
static void test_alloc_fail_after_zero_and_negative(void **state)
{
    (void)state;
    kp_alloc_fail_after(0);
    assert_null(kp_malloc(1));
    assert_null(kp_malloc(1));
    kp_alloc_fail_after(-1);
    void *p = kp_malloc(1);
    assert_non_null(p);
    kp_free(p);
    kp_alloc_fail_reset();
}

/* A failed kp_realloc leaves the original block valid and unchanged. */
static void test_alloc_realloc_failure_keeps_block(void **state)
{
    (void)state;
    char *p = kp_strdup("precious");
    assert_non_null(p);
    kp_alloc_fail_after(0);
    assert_null(kp_realloc(p, 1 << 20));
    kp_alloc_fail_reset();
    assert_string_equal(p, "precious");
    kp_free(p);
}

/* kp_alloc_count counts each successful allocation once and failed ones not
 * at all. */
static void test_alloc_count(void **state)
{
    (void)state;
    unsigned long before = kp_alloc_count();
    void *a = kp_malloc(4);
    void *b = kp_calloc(2, 2);
    char *c = kp_strdup("abc");
    assert_int_equal(kp_alloc_count(), before + 3);
    kp_alloc_fail_after(0);
    assert_null(kp_malloc(4));
    kp_alloc_fail_reset();
    assert_int_equal(kp_alloc_count(), before + 3);
    kp_free(a);
    kp_free(b);
    kp_free(c);
}

/* --- alloc: arena ----------------------------------------------------------- */

/* Thousands of arena allocations of mixed sizes are 8-byte aligned, never
 * overlap, and keep their contents until the arena is freed. */
static void test_arena_many_aligned_disjoint(void **state)
{
    (void)state;
    enum { N = 5000 };
    struct kp_arena a;
    kp_arena_init(&a, 1024);
    static unsigned char *ptrs[N];
    static size_t sizes[N];
    for (int i = 0; i < N; i++) {
        sizes[i] = (size_t)(i * 37 % 113) + 1;
        ptrs[i] = kp_arena_alloc(&a, sizes[i]);
        assert_non_null(ptrs[i]);
        assert_int_equal((uintptr_t)ptrs[i] % 8, 0);
        memset(ptrs[i], i & 0xff, sizes[i]);
    }
    for (int i = 0; i < N; i++)
        for (size_t j = 0; j < sizes[i]; j++)
            assert_int_equal(ptrs[i][j], i & 0xff);
    kp_arena_free(&a);
    assert_null(a.head);
}

/* An arena initialised with chunk size 0 uses a default and works. */
static void test_arena_default_chunk(void **state)
{
    (void)state;
    struct kp_arena a;
    kp_arena_init(&a, 0);
    assert_true(a.chunk_size > 0);
    char *p = kp_arena_alloc(&a, 100);
    assert_non_null(p);
    memset(p, 1, 100);
    kp_arena_free(&a);
}

/* An allocation larger than the chunk size succeeds, is fully usable and
 * aligned, whether it comes first or after small ones. */
static void test_arena_big_allocations(void **state)
{
    (void)state;
    struct kp_arena a;
    kp_arena_init(&a, 64);
    unsigned char *first_big = kp_arena_alloc(&a, 1000);
    assert_non_null(first_big);
    assert_int_equal((uintptr_t)first_big % 8, 0);
    memset(first_big, 0xaa, 1000);

    unsigned char *small = kp_arena_alloc(&a, 8);
    assert_non_null(small);
    memset(small, 0x55, 8);

    unsigned char *big = kp_arena_alloc(&a, 100000);
    assert_non_null(big);
    assert_int_equal((uintptr_t)big % 8, 0);
    memset(big, 0xbb, 100000);

    for (int i = 0; i < 1000; i++)
        assert_int_equal(first_big[i], 0xaa);
    for (int i = 0; i < 8; i++)
        assert_int_equal(small[i], 0x55);
    kp_arena_free(&a);
}

/* A big allocation does not waste the current chunk's free space: the next
 * small allocation comes right after the previous small one. */
static void test_arena_big_keeps_head_space(void **state)
{
    (void)state;
    struct kp_arena a;
    kp_arena_init(&a, 256);
    char *s1 = kp_arena_alloc(&a, 8);
    char *big = kp_arena_alloc(&a, 4096);
    char *s2 = kp_arena_alloc(&a, 8);
    assert_non_null(s1);
    assert_non_null(big);
    assert_non_null(s2);
    assert_ptr_equal(s2, s1 + 8);
    kp_arena_free(&a);
}

/* kp_arena_strndup copies exactly n bytes and NUL-terminates. */
static void test_arena_strndup(void **state)
{
    (void)state;
    struct kp_arena a;
    kp_arena_init(&a, 128);
    char *s = kp_arena_strndup(&a, "gpt-4o-mini and more", 11);
    assert_non_null(s);
    assert_string_equal(s, "gpt-4o-mini");
    char *e = kp_arena_strndup(&a, "", 0);
    assert_non_null(e);
    assert_string_equal(e, "");
    kp_arena_free(&a);
}

/* An arena can be freed (twice, harmlessly) and used again afterwards. */
static void test_arena_free_then_reuse(void **state)
{
    (void)state;
    struct kp_arena a;
    kp_arena_init(&a, 128);
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 100; i++) {
            char *p = kp_arena_alloc(&a, 24);
            assert_non_null(p);
            memset(p, round, 24);
        }
        kp_arena_free(&a);
        assert_null(a.head);
        kp_arena_free(&a);
    }
}

/* When a new chunk cannot be allocated kp_arena_alloc returns NULL, yet
 * space left in the current chunk is still handed out without allocating,
 * and the arena works again after the failure ends. */
static void test_arena_alloc_failure(void **state)
{
    (void)state;
    struct kp_arena a;
    kp_arena_init(&a, 256);
    kp_alloc_fail_after(0);
    assert_null(kp_arena_alloc(&a, 8));
    assert_null(a.head);
    kp_alloc_fail_reset();

    assert_non_null(kp_arena_alloc(&a, 8));
    kp_alloc_fail_after(0);
    assert_non_null(kp_arena_alloc(&a, 8)); /* fits in the head chunk */
    assert_null(kp_arena_alloc(&a, 1024));  /* needs a new chunk */
    assert_null(kp_arena_strndup(&a, "x", 1000));
    kp_alloc_fail_reset();
    assert_non_null(kp_arena_alloc(&a, 1024));
    kp_arena_free(&a);
}

/* Regression (found by this suite): kp_arena_alloc does not check for overflow when rounding the
 * size up to 8 (alloc.c:111) or adding the chunk header (alloc.c:115), so an
 * impossible size such as SIZE_MAX yields a non-NULL pointer instead of NULL;
 * with SIZE_MAX - 7 the chunk is malloc'ed with a wrapped-around size.
 * This test proves an impossible size is refused with NULL. */
static void test_arena_alloc_overflow_returns_null(void **state)
{
    (void)state;
    struct kp_arena a;
    kp_arena_init(&a, 256);
    assert_null(kp_arena_alloc(&a, SIZE_MAX));
    assert_null(kp_arena_alloc(&a, SIZE_MAX - 7));
    kp_arena_free(&a);
}

/* --- alloc: kp_buf ---------------------------------------------------------- */

/* Appending bytes and literals concatenates them and keeps the data
 * NUL-terminated. */
static void test_buf_append(void **state)
{
    (void)state;
    struct kp_buf b;
    kp_buf_init(&b);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    assert_int_equal(kp_buf_append(&b, "hello", 5), 0);
    assert_int_equal(kp_buf_append_lit(&b, ", "), 0);
    assert_int_equal(kp_buf_append(&b, "world!!!", 5), 0);
    assert_int_equal(b.len, 12);
    assert_string_equal(b.data, "hello, world");
    assert_true(b.cap > b.len);
    assert_int_equal(kp_buf_append(&b, "", 0), 0);
    assert_int_equal(b.len, 12);
    assert_int_equal(b.data[12], '\0');
    kp_buf_free(&b);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, 0);
    kp_buf_free(&b);
}

/* Appending nothing to an empty buffer yields an empty, NUL-terminated
 * string. */
static void test_buf_append_empty(void **state)
{
    (void)state;
    struct kp_buf b;
    kp_buf_init(&b);
    assert_int_equal(kp_buf_append(&b, NULL, 0), 0);
    assert_non_null(b.data);
    assert_string_equal(b.data, "");
    kp_buf_free(&b);
}

/* Binary data with embedded NULs is appended byte for byte. */
static void test_buf_append_binary(void **state)
{
    (void)state;
    struct kp_buf b;
    kp_buf_init(&b);
    const char bin[] = {'a', '\0', 'b', '\0', (char)0xff};
    assert_int_equal(kp_buf_append(&b, bin, sizeof(bin)), 0);
    assert_int_equal(b.len, sizeof(bin));
    assert_memory_equal(b.data, bin, sizeof(bin));
    assert_int_equal(b.data[b.len], '\0');
    kp_buf_free(&b);
}

/* Many appends grow the buffer past many doublings without losing bytes. */
static void test_buf_growth_large(void **state)
{
    (void)state;
    struct kp_buf b;
    kp_buf_init(&b);
    char chunk[1000];
    for (int i = 0; i < 1000; i++) {
        memset(chunk, 'a' + i % 26, sizeof(chunk));
        assert_int_equal(kp_buf_append(&b, chunk, sizeof(chunk)), 0);
    }
    assert_int_equal(b.len, 1000000);
    assert_true(b.cap > b.len);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(b.data[i * 1000 + 999], 'a' + i % 26);
    assert_int_equal(b.data[b.len], '\0');
    kp_buf_free(&b);
}

/* kp_buf_appendf formats short strings, strings at the 255/256-byte boundary
 * of its stack buffer, and long strings, after existing content. */
static void test_buf_appendf(void **state)
{
    (void)state;
    struct kp_buf b;
    kp_buf_init(&b);
    assert_int_equal(kp_buf_appendf(&b, "%d-%s-%c", 42, "x", 'y'), 0);
    assert_string_equal(b.data, "42-x-y");

    char big[2001];
    memset(big, 'z', 2000);
    big[2000] = '\0';
    int sizes[] = {255, 256, 257, 2000};
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        size_t before = b.len;
        assert_int_equal(kp_buf_appendf(&b, "[%.*s]", sizes[k] - 2, big), 0);
        assert_int_equal(b.len, before + (size_t)sizes[k]);
        assert_int_equal(b.data[before], '[');
        assert_int_equal(b.data[b.len - 1], ']');
        assert_int_equal(b.data[b.len], '\0');
        assert_int_equal(strlen(b.data), b.len);
    }
    assert_memory_equal(b.data, "42-x-y[zzz", 10);
    kp_buf_free(&b);
}

/* A long appendf into an empty buffer takes the allocation path directly. */
static void test_buf_appendf_long_into_empty(void **state)
{
    (void)state;
    struct kp_buf b;
    kp_buf_init(&b);
    char big[700];
    memset(big, 'q', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(kp_buf_appendf(&b, "%s|%d", big, 7), 0);
    assert_int_equal(b.len, 699 + 2);
    assert_int_equal(b.data[698], 'q');
    assert_string_equal(b.data + 699, "|7");
    kp_buf_free(&b);
}

/* Consuming drops bytes from the front: partially, exactly all, more than
 * all, and on a never-allocated buffer. */
static void test_buf_consume(void **state)
{
    (void)state;
    struct kp_buf b;
    kp_buf_init(&b);
    kp_buf_consume(&b, 10);
    assert_int_equal(b.len, 0);

    assert_int_equal(kp_buf_append_lit(&b, "abcdef"), 0);
    kp_buf_consume(&b, 0);
    assert_string_equal(b.data, "abcdef");
    kp_buf_consume(&b, 2);
    assert_int_equal(b.len, 4);
    assert_string_equal(b.data, "cdef");
    kp_buf_consume(&b, 4);
    assert_int_equal(b.len, 0);
    assert_string_equal(b.data, "");

    assert_int_equal(kp_buf_append_lit(&b, "xyz"), 0);
    kp_buf_consume(&b, 100);
    assert_int_equal(b.len, 0);
    assert_string_equal(b.data, "");
    assert_int_equal(kp_buf_append_lit(&b, "again"), 0);
    assert_string_equal(b.data, "again");
    kp_buf_free(&b);
}

/* After kp_buf_reserve(extra) that many bytes can be appended without the
 * data moving, with room left for the NUL. */
static void test_buf_reserve(void **state)
{
    (void)state;
    struct kp_buf b;
    kp_buf_init(&b);
    assert_int_equal(kp_buf_append_lit(&b, "head"), 0);
    assert_int_equal(kp_buf_reserve(&b, 10000), 0);
    assert_true(b.cap >= b.len + 10000 + 1);
    char *data = b.data;
    size_t cap = b.cap;
    char block[10000];
    memset(block, 'r', sizeof(block));
    kp_alloc_fail_after(0); /* appending within the reservation allocates nothing */
    assert_int_equal(kp_buf_append(&b, block, sizeof(block)), 0);
    kp_alloc_fail_reset();
    assert_ptr_equal(b.data, data);
    assert_int_equal(b.cap, cap);
    assert_int_equal(b.len, 10004);
    assert_int_equal(b.data[b.len], '\0');
    assert_int_equal(kp_buf_reserve(&b, 0), 0);
    kp_buf_free(&b);
}

/* An impossible reservation fails with -1 and leaves the buffer intact. */
static void test_buf_reserve_overflow(void **state)
{
    (void)state;
    struct kp_buf b;
    kp_buf_init(&b);
    assert_int_equal(kp_buf_append_lit(&b, "keep"), 0);
    char *data = b.data;
    size_t cap = b.cap;
    assert_int_equal(kp_buf_reserve(&b, SIZE_MAX), -1);
    assert_ptr_equal(b.data, data);
    assert_int_equal(b.cap, cap);
    assert_string_equal(b.data, "keep");
    kp_buf_free(&b);
}

/* Under allocation failure append, appendf (short and long) and reserve
 * return -1 and leave data, length, capacity and contents untouched. */
static void test_buf_failure_leaves_buffer_intact(void **state)
{
    (void)state;
    struct kp_buf b;
    kp_buf_init(&b);
    assert_int_equal(kp_buf_append_lit(&b, "keep"), 0);
    char *data = b.data;
    size_t cap = b.cap;
    char big[4096];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    char mid[251];
    memset(mid, 'm', sizeof(mid) - 1);
    mid[sizeof(mid) - 1] = '\0';

    kp_alloc_fail_after(0);
    assert_int_equal(kp_buf_append(&b, big, sizeof(big)), -1);
    assert_int_equal(kp_buf_reserve(&b, 100000), -1);
    assert_int_equal(kp_buf_appendf(&b, "%s", big), -1);
    /* Short format output, but it no longer fits the current capacity. */
    assert_int_equal(kp_buf_append(&b, mid, 50), 0);
    assert_int_equal(kp_buf_appendf(&b, "%s", mid), -1);
    kp_alloc_fail_reset();

    assert_ptr_equal(b.data, data);
    assert_int_equal(b.cap, cap);
    assert_int_equal(b.len, 54);
    assert_memory_equal(b.data, "keep", 4);
    assert_int_equal(b.data[b.len], '\0');
    assert_int_equal(strlen(b.data), 54);

    assert_int_equal(kp_buf_appendf(&b, "%s", big), 0);
    assert_int_equal(b.len, 54 + 4095);
    kp_buf_free(&b);
}

/* An append that fails on a fresh buffer leaves it in its initial state. */
static void test_buf_failure_on_empty(void **state)
{
    (void)state;
    struct kp_buf b;
    kp_buf_init(&b);
    kp_alloc_fail_after(0);
    assert_int_equal(kp_buf_append_lit(&b, "x"), -1);
    assert_int_equal(kp_buf_appendf(&b, "%d", 1), -1);
    kp_alloc_fail_reset();
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, 0);
    kp_buf_free(&b);
}

/* --- error ------------------------------------------------------------------ */

/* Every code has a distinct "KP_..." name and a distinct non-empty
 * message. */
static void test_err_names_and_messages(void **state)
{
    (void)state;
    for (int i = 0; i < KP_ERR_COUNT; i++) {
        const char *name = kp_err_name(i);
        const char *msg = kp_err_msg(i);
        assert_non_null(name);
        assert_non_null(msg);
        assert_int_equal(strncmp(name, "KP_", 3), 0);
        assert_true(strlen(name) > 3);
        assert_true(strlen(msg) > 0);
        assert_string_not_equal(name, "KP_EUNKNOWN");
        for (int j = 0; j < i; j++) {
            assert_string_not_equal(name, kp_err_name(j));
            assert_string_not_equal(msg, kp_err_msg(j));
        }
    }
    assert_string_equal(kp_err_name(KP_OK), "KP_OK");
    assert_string_equal(kp_err_msg(KP_OK), "ok");
    assert_string_equal(kp_err_name(KP_ENOMEM), "KP_ENOMEM");
    assert_string_equal(kp_err_msg(KP_ENOMEM), "out of memory");
    assert_string_equal(kp_err_name(KP_ETIMEDOUT), "KP_ETIMEDOUT");
    assert_string_equal(kp_err_msg(KP_ETIMEDOUT), "timed out");
    assert_string_equal(kp_err_name(KP_ESHUTDOWN), "KP_ESHUTDOWN");
    assert_string_equal(kp_err_msg(KP_ESHUTDOWN), "shutting down");
}

/* Codes outside the enum get a generic name and message instead of reading
 * out of bounds. */
static void test_err_out_of_range(void **state)
{
    (void)state;
    int bad[] = {-1, KP_ERR_COUNT, KP_ERR_COUNT + 1, 1000, INT_MIN, INT_MAX};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_string_equal(kp_err_name(bad[i]), "KP_EUNKNOWN");
        assert_string_equal(kp_err_msg(bad[i]), "unknown error");
    }
}

/* Common errno values translate to the matching keyplane code and unknown
 * ones to KP_EIO. */
static void test_err_from_errno(void **state)
{
    (void)state;
    static const struct {
        int e, want;
    } cases[] = {
        {0, KP_OK},
        {ENOMEM, KP_ENOMEM},
        {EINVAL, KP_EINVAL},
        {ENOENT, KP_ENOENT},
        {EEXIST, KP_EEXIST},
        {EBUSY, KP_EBUSY},
        {EAGAIN, KP_EBUSY},
        {ETIMEDOUT, KP_ETIMEDOUT},
        {EPIPE, KP_ECLOSED},
        {ECONNRESET, KP_ECLOSED},
        {EACCES, KP_EPERM},
        {EPERM, KP_EPERM},
        {EADDRINUSE, KP_EADDR},
        {EADDRNOTAVAIL, KP_EADDR},
        {ECONNREFUSED, KP_ENET},
        {ENETUNREACH, KP_ENET},
        {EHOSTUNREACH, KP_ENET},
        {EFBIG, KP_ETOOBIG},
        {E2BIG, KP_ETOOBIG},
        {EIO, KP_EIO},
        {ENOSPC, KP_EIO},
        {99999, KP_EIO},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        if (kp_err_from_errno(cases[i].e) != cases[i].want)
            fail_msg("errno %d -> %s, want %s", cases[i].e,
                     kp_err_name(kp_err_from_errno(cases[i].e)), kp_err_name(cases[i].want));
}

/* Common libuv codes translate like their errno counterparts; UV_EOF and
 * UV_ECANCELED have their own meaning, and non-errno codes become KP_EIO. */
static void test_err_from_uv(void **state)
{
    (void)state;
    static const struct {
        int uv, want;
    } cases[] = {
        {UV_ENOMEM, KP_ENOMEM},
        {UV_EINVAL, KP_EINVAL},
        {UV_ENOENT, KP_ENOENT},
        {UV_EEXIST, KP_EEXIST},
        {UV_EBUSY, KP_EBUSY},
        {UV_EAGAIN, KP_EBUSY},
        {UV_ETIMEDOUT, KP_ETIMEDOUT},
        {UV_EPIPE, KP_ECLOSED},
        {UV_ECONNRESET, KP_ECLOSED},
        {UV_EOF, KP_ECLOSED},
        {UV_ECANCELED, KP_ESHUTDOWN},
        {UV_EACCES, KP_EPERM},
        {UV_EPERM, KP_EPERM},
        {UV_EADDRINUSE, KP_EADDR},
        {UV_EADDRNOTAVAIL, KP_EADDR},
        {UV_ECONNREFUSED, KP_ENET},
        {UV_ENETUNREACH, KP_ENET},
        {UV_EHOSTUNREACH, KP_ENET},
        {UV_E2BIG, KP_ETOOBIG},
        {UV_EIO, KP_EIO},
        {UV_EAI_NONAME, KP_EIO},
        {-100000, KP_EIO},
        {12345, KP_EIO},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        if (kp_err_from_uv(cases[i].uv) != cases[i].want)
            fail_msg("uv %d (%s) -> %s, want %s", cases[i].uv, uv_err_name(cases[i].uv),
                     kp_err_name(kp_err_from_uv(cases[i].uv)), kp_err_name(cases[i].want));
}

/* --- clock ------------------------------------------------------------------ */

/* The monotonic clocks never go backwards across many calls, and the ms
 * clock agrees with the us clock. */
static void test_clock_monotonic(void **state)
{
    (void)state;
    uint64_t prev_us = kp_now_mono_us();
    uint64_t prev_ms = kp_now_mono_ms();
    for (int i = 0; i < 100000; i++) {
        uint64_t us = kp_now_mono_us();
        uint64_t ms = kp_now_mono_ms();
        assert_true(us >= prev_us);
        assert_true(ms >= prev_ms);
        prev_us = us;
        prev_ms = ms;
    }
    uint64_t a = kp_now_mono_us();
    uint64_t m = kp_now_mono_ms();
    uint64_t b = kp_now_mono_us();
    assert_true(a / 1000 <= m);
    assert_true(m <= b / 1000);
}

/* CLOCK_REALTIME in Unix milliseconds, rounded down, as the test sees it. */
static int64_t realtime_ms(void)
{
    struct timespec ts;
    assert_int_equal(clock_gettime(CLOCK_REALTIME, &ts), 0);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The wall clock is CLOCK_REALTIME in Unix milliseconds. Not checked
 * against time(2): the kernel answers time() with the seconds as of its
 * last timekeeping tick, which can lag CLOCK_REALTIME by a tick or more
 * just after a second turns (on a loaded machine this failed about one run
 * in 250: kp_now_unix_ms read 1 ms into a new second, and time() called
 * after it still gave the one before). */
static void test_clock_unix_ms(void **state)
{
    (void)state;
    int64_t before = realtime_ms();
    int64_t ms = kp_now_unix_ms();
    int64_t after = realtime_ms();
    assert_true(ms >= before);
    assert_true(ms <= after);
    assert_true(ms > INT64_C(1577836800000)); /* after 2020-01-01 */
}

/* Known epochs format to the exact RFC 3339 UTC string with milliseconds. */
static void test_clock_format_known_epochs(void **state)
{
    (void)state;
    static const struct {
        int64_t ms;
        const char *want;
    } cases[] = {
        {0, "1970-01-01T00:00:00.000Z"},
        {1, "1970-01-01T00:00:00.001Z"},
        {999, "1970-01-01T00:00:00.999Z"},
        {1000, "1970-01-01T00:00:01.000Z"},
        {INT64_C(1764460800123), "2025-11-30T00:00:00.123Z"},
        {INT64_C(951782400000), "2000-02-29T00:00:00.000Z"},
        {INT64_C(1709251199999), "2024-02-29T23:59:59.999Z"},
        {INT64_C(253402300799999), "9999-12-31T23:59:59.999Z"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char buf[32];
        memset(buf, 'X', sizeof(buf));
        kp_format_time_ms(cases[i].ms, buf, sizeof(buf));
        assert_string_equal(buf, cases[i].want);
        assert_int_equal(strlen(buf), 24);
    }
    char exact[25];
    kp_format_time_ms(INT64_C(1764460800123), exact, sizeof(exact));
    assert_string_equal(exact, "2025-11-30T00:00:00.123Z");
}

/* Regression (found by this suite): kp_format_time_ms (clock.c:31-35) truncates toward zero for
 * instants before the epoch: -1 gives "1970-01-01T00:00:00.-01Z".
 * This test proves pre-epoch instants format like any other. */
static void test_clock_format_before_epoch(void **state)
{
    (void)state;
    char buf[32];
    kp_format_time_ms(-1, buf, sizeof(buf));
    assert_string_equal(buf, "1969-12-31T23:59:59.999Z");
    kp_format_time_ms(-1500, buf, sizeof(buf));
    assert_string_equal(buf, "1969-12-31T23:59:58.500Z");
}

/* kp_random_hex writes exactly 2n lower-case hex digits and a NUL, nothing
 * beyond, and two ids differ. */
static void test_clock_random_hex(void **state)
{
    (void)state;
    char a[40], b[40];
    memset(a, '#', sizeof(a));
    memset(b, '#', sizeof(b));
    assert_int_equal(kp_random_hex(a, 16), KP_OK);
    assert_int_equal(kp_random_hex(b, 16), KP_OK);
    assert_int_equal(strlen(a), 32);
    assert_int_equal(strlen(b), 32);
    assert_int_equal(a[33], '#');
    for (int i = 0; i < 32; i++) {
        assert_non_null(strchr("0123456789abcdef", a[i]));
        assert_non_null(strchr("0123456789abcdef", b[i]));
    }
    assert_string_not_equal(a, b);

    char big[130];
    assert_int_equal(kp_random_hex(big, 64), KP_OK);
    assert_int_equal(strlen(big), 128);
    assert_int_equal(strspn(big, "0123456789abcdef"), 128);

    char one[3];
    assert_int_equal(kp_random_hex(one, 1), KP_OK);
    assert_int_equal(strlen(one), 2);

    char none[1] = {'#'};
    assert_int_equal(kp_random_hex(none, 0), KP_OK);
    assert_string_equal(none, "");
}

/* Over many ids every hex digit appears, so no digit is stuck. */
static void test_clock_random_hex_charset(void **state)
{
    (void)state;
    bool seen[16] = {false};
    for (int k = 0; k < 50; k++) {
        char id[33];
        assert_int_equal(kp_random_hex(id, 16), KP_OK);
        for (int i = 0; i < 32; i++) {
            const char *p = strchr("0123456789abcdef", id[i]);
            assert_non_null(p);
            seen[p - "0123456789abcdef"] = true;
        }
    }
    for (int i = 0; i < 16; i++)
        assert_true(seen[i]);
}

/* A request beyond the internal 64-byte limit is refused without writing. */
static void test_clock_random_hex_too_long(void **state)
{
    (void)state;
    char out[200];
    memset(out, '#', sizeof(out));
    assert_int_equal(kp_random_hex(out, 65), KP_EINVAL);
    assert_int_equal(out[0], '#');
}

/* kp_random_bytes fills the whole buffer (32 zero bytes would be a 2^-256
 * event). */
static void test_clock_random_bytes(void **state)
{
    (void)state;
    unsigned char a[32] = {0}, b[32] = {0}, zero[32] = {0};
    assert_int_equal(kp_random_bytes(a, sizeof(a)), KP_OK);
    assert_int_equal(kp_random_bytes(b, sizeof(b)), KP_OK);
    assert_memory_not_equal(a, zero, sizeof(a));
    assert_memory_not_equal(a, b, sizeof(a));
}

/* --- json ------------------------------------------------------------------- */

/* Escapes @s (len bytes) into a fresh string and returns it (free it). */
static char *escape(const char *s, size_t len)
{
    struct kp_buf b;
    kp_buf_init(&b);
    assert_int_equal(kp_json_escape(&b, s, len), 0);
    char *r = strdup(b.data ? b.data : "");
    kp_buf_free(&b);
    assert_non_null(r);
    return r;
}

/* Quotes, backslashes and the short control escapes are escaped exactly. */
static void test_json_escape_specials(void **state)
{
    (void)state;
    char *r = escape("a\"b\\c", 5);
    assert_string_equal(r, "a\\\"b\\\\c");
    free(r);
    r = escape("\n\r\t", 3);
    assert_string_equal(r, "\\n\\r\\t");
    free(r);
    r = escape("\"\"", 2);
    assert_string_equal(r, "\\\"\\\"");
    free(r);
    r = escape("plain text / slash", 18);
    assert_string_equal(r, "plain text / slash");
    free(r);
    r = escape("", 0);
    assert_string_equal(r, "");
    free(r);
}

/* Other control characters, DEL and NUL become \u00XX escapes. */
static void test_json_escape_control(void **state)
{
    (void)state;
    char *r = escape("\x01\x08\x0c\x1f\x7f", 5);
    assert_string_equal(r, "\\u0001\\u0008\\u000c\\u001f\\u007f");
    free(r);
    r = escape("a\0b", 3);
    assert_string_equal(r, "a\\u0000b");
    free(r);
}

/* UTF-8 text passes through byte for byte. */
static void test_json_escape_utf8(void **state)
{
    (void)state;
    const char *s = "h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9f\x98\x80 \xe4\xb8\xad\xe6\x96\x87";
    char *r = escape(s, strlen(s));
    assert_string_equal(r, s);
    free(r);
}

/* Escaping appends to existing content rather than replacing it. */
static void test_json_escape_appends(void **state)
{
    (void)state;
    struct kp_buf b;
    kp_buf_init(&b);
    assert_int_equal(kp_buf_append_lit(&b, "\""), 0);
    assert_int_equal(kp_json_escape(&b, "x\ny", 3), 0);
    assert_int_equal(kp_buf_append_lit(&b, "\""), 0);
    assert_string_equal(b.data, "\"x\\ny\"");
    kp_buf_free(&b);
}

/* Every ASCII byte, NUL included, escapes into a JSON string that jansson
 * decodes back to the original bytes. */
static void test_json_escape_roundtrip_ascii(void **state)
{
    (void)state;
    char in[128];
    for (int i = 0; i < 128; i++)
        in[i] = (char)i;
    struct kp_buf b;
    kp_buf_init(&b);
    assert_int_equal(kp_buf_append_lit(&b, "\""), 0);
    assert_int_equal(kp_json_escape(&b, in, sizeof(in)), 0);
    assert_int_equal(kp_buf_append_lit(&b, "\""), 0);
    json_error_t err;
    json_t *v = json_loadb(b.data, b.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
    if (v == NULL)
        fail_msg("jansson: %s", err.text);
    assert_true(json_is_string(v));
    assert_int_equal(json_string_length(v), sizeof(in));
    assert_memory_equal(json_string_value(v), in, sizeof(in));
    json_decref(v);
    kp_buf_free(&b);
}

/* A failed escape reports -1. */
static void test_json_escape_failure(void **state)
{
    (void)state;
    struct kp_buf b;
    kp_buf_init(&b);
    kp_alloc_fail_after(0);
    assert_int_equal(kp_json_escape(&b, "a\"b", 3), -1);
    kp_alloc_fail_reset();
    assert_int_equal(b.len, 0);
    kp_buf_free(&b);
}

/* Parses an error body and checks its exact shape, returning the inner
 * "error" object (borrowed from *root). */
static json_t *parse_error_body(const char *body, size_t len, json_t **root)
{
    assert_int_equal(strlen(body), len);
    json_error_t err;
    *root = json_loadb(body, len, 0, &err);
    if (*root == NULL)
        fail_msg("error body is not JSON (%s): %s", err.text, body);
    assert_true(json_is_object(*root));
    assert_int_equal(json_object_size(*root), 1);
    json_t *e = json_object_get(*root, "error");
    assert_true(json_is_object(e));
    assert_int_equal(json_object_size(e), 4);
    assert_non_null(json_object_get(e, "message"));
    assert_non_null(json_object_get(e, "type"));
    assert_non_null(json_object_get(e, "code"));
    assert_true(json_is_null(json_object_get(e, "param")));
    return e;
}

/* The error body has exactly the OpenAI fields, byte for byte. */
static void test_json_error_body_exact(void **state)
{
    (void)state;
    size_t len = 0;
    char *body = kp_json_error_body("Rate limit reached", "rate_limit_error", "rate_limited", &len);
    assert_non_null(body);
    assert_string_equal(body, "{\"error\":{\"message\":\"Rate limit reached\",\"type\":"
                              "\"rate_limit_error\",\"code\":\"rate_limited\",\"param\":null}}");
    json_t *root;
    json_t *e = parse_error_body(body, len, &root);
    assert_string_equal(json_string_value(json_object_get(e, "message")), "Rate limit reached");
    assert_string_equal(json_string_value(json_object_get(e, "type")), "rate_limit_error");
    assert_string_equal(json_string_value(json_object_get(e, "code")), "rate_limited");
    json_decref(root);
    kp_free(body);
}

/* A NULL code is rendered as JSON null, and len may be NULL. */
static void test_json_error_body_null_code(void **state)
{
    (void)state;
    char *body = kp_json_error_body("bad", "invalid_request_error", NULL, NULL);
    assert_non_null(body);
    json_t *root;
    json_t *e = parse_error_body(body, strlen(body), &root);
    assert_true(json_is_null(json_object_get(e, "code")));
    assert_string_equal(json_string_value(json_object_get(e, "type")), "invalid_request_error");
    json_decref(root);
    kp_free(body);
}

/* A message with quotes, backslashes, newlines, control bytes and UTF-8 is
 * escaped so the body stays valid JSON and decodes to the original. */
static void test_json_error_body_escapes(void **state)
{
    (void)state;
    const char *msg = "model \"gpt-5\" not found\nsee C:\\docs\t\x01 \xc3\xa9t\xc3\xa9";
    const char *code = "bad\"code";
    size_t len;
    char *body = kp_json_error_body(msg, "not_found\n", code, &len);
    assert_non_null(body);
    assert_null(strchr(body, '\n'));
    json_t *root;
    json_t *e = parse_error_body(body, len, &root);
    assert_string_equal(json_string_value(json_object_get(e, "message")), msg);
    assert_string_equal(json_string_value(json_object_get(e, "type")), "not_found\n");
    assert_string_equal(json_string_value(json_object_get(e, "code")), code);
    json_decref(root);
    kp_free(body);
}

/* Under allocation failure at every point the error body is NULL or
 * complete, and nothing leaks. */
static void test_json_error_body_alloc_failure(void **state)
{
    (void)state;
    char msg[2000];
    memset(msg, '"', sizeof(msg) - 1);
    msg[sizeof(msg) - 1] = '\0';
    bool succeeded = false;
    for (long n = 0; n < 20 && !succeeded; n++) {
        kp_alloc_fail_after(n);
        size_t len = 0;
        char *body = kp_json_error_body(msg, "t", "c", &len);
        kp_alloc_fail_reset();
        if (body == NULL)
            continue;
        json_t *root;
        json_t *e = parse_error_body(body, len, &root);
        assert_string_equal(json_string_value(json_object_get(e, "message")), msg);
        json_decref(root);
        kp_free(body);
        succeeded = true;
    }
    assert_true(succeeded);
}

/* kp_json_dumps serialises compactly, reports the length, and returns NULL
 * under allocation failure. */
static void test_json_dumps(void **state)
{
    (void)state;
    json_t *v = json_pack("{s:i,s:[b,n],s:s}", "a", 1, "b", 1, "c", "x\"y");
    assert_non_null(v);
    size_t len = 0;
    char *s = kp_json_dumps(v, &len);
    assert_non_null(s);
    assert_string_equal(s, "{\"a\":1,\"b\":[true,null],\"c\":\"x\\\"y\"}");
    assert_int_equal(len, strlen(s));
    kp_free(s);
    kp_alloc_fail_after(0);
    assert_null(kp_json_dumps(v, NULL));
    kp_alloc_fail_reset();
    json_decref(v);
}

/* --- log: capture ----------------------------------------------------------- */

#define MAX_CAPTURED 64

struct capture {
    char *lines[MAX_CAPTURED];
    size_t lens[MAX_CAPTURED];
    int n;
    int overflow;
};

static struct capture cap;

static void capture_sink(const char *line, size_t len, void *arg)
{
    struct capture *c = arg;
    if (c->n == MAX_CAPTURED) {
        c->overflow++;
        return;
    }
    char *copy = malloc(len + 1);
    assert_non_null(copy);
    memcpy(copy, line, len);
    copy[len] = '\0';
    c->lines[c->n] = copy;
    c->lens[c->n] = len;
    c->n++;
}

static void capture_clear(void)
{
    for (int i = 0; i < cap.n; i++)
        free(cap.lines[i]);
    memset(&cap, 0, sizeof(cap));
}

static int log_setup(void **state)
{
    (void)state;
    capture_clear();
    kp_log_set_sink(capture_sink, &cap);
    kp_log_set_level(KP_LOG_INFO);
    kp_log_clear_secrets();
    return 0;
}

static int log_teardown(void **state)
{
    (void)state;
    kp_alloc_fail_reset();
    capture_clear();
    kp_log_set_sink(NULL, NULL);
    kp_log_set_level(KP_LOG_INFO);
    kp_log_clear_secrets();
    return 0;
}

/* Checks captured line @i: one line ending in \n, a JSON object with exactly
 * ts/level/comp/msg as strings, ts in the kp_format_time_ms shape. Returns the
 * parsed object (json_decref it). */
static json_t *parse_line(int i)
{
    assert_true(i < cap.n);
    const char *line = cap.lines[i];
    size_t len = cap.lens[i];
    assert_true(len >= 2);
    assert_int_equal(line[len - 1], '\n');
    assert_ptr_equal(memchr(line, '\n', len), line + len - 1);
    json_error_t err;
    json_t *v = json_loadb(line, len - 1, 0, &err);
    if (v == NULL)
        fail_msg("log line is not JSON (%s at %d): %.200s", err.text, err.position, line);
    assert_true(json_is_object(v));
    assert_int_equal(json_object_size(v), 4);
    const char *keys[] = {"ts", "level", "comp", "msg"};
    for (int k = 0; k < 4; k++)
        assert_true(json_is_string(json_object_get(v, keys[k])));
    /* The keys come in this order on the wire. */
    assert_int_equal(strncmp(line, "{\"ts\":\"", 7), 0);
    const char *ts = json_string_value(json_object_get(v, "ts"));
    assert_int_equal(strlen(ts), 24);
    assert_int_equal(ts[4], '-');
    assert_int_equal(ts[10], 'T');
    assert_int_equal(ts[19], '.');
    assert_int_equal(ts[23], 'Z');
    return v;
}

/* Logs @msg at info and returns a copy of the msg field of the line written
 * (free it), after checking the raw line does not contain @forbidden. */
static char *log_and_read(const char *msg, const char *forbidden)
{
    int before = cap.n;
    kp_info("test", "%s", msg);
    assert_int_equal(cap.n, before + 1);
    if (forbidden != NULL && strstr(cap.lines[before], forbidden) != NULL)
        fail_msg("log line leaks \"%s\": %s", forbidden, cap.lines[before]);
    json_t *v = parse_line(before);
    char *out = strdup(json_string_value(json_object_get(v, "msg")));
    json_decref(v);
    assert_non_null(out);
    if (forbidden != NULL && strstr(out, forbidden) != NULL)
        fail_msg("decoded log msg leaks \"%s\": %s", forbidden, out);
    return out;
}

/* Logs @in and checks the decoded msg is exactly @want. */
static void check_logged(const char *in, const char *want, const char *forbidden)
{
    char *got = log_and_read(in, forbidden);
    if (strcmp(got, want) != 0)
        fail_msg("logged \"%s\" as \"%s\", want \"%s\"", in, got, want);
    free(got);
}

/* --- log: lines and levels ---------------------------------------------------- */

/* Each log call produces one JSON object line with ts, level, comp and the
 * formatted msg, ending in a newline. */
static void test_log_line_shape(void **state)
{
    (void)state;
    kp_info("router", "picked key %d of %s", 3, "openai");
    kp_warn("meter", "spool at %d%%", 91);
    kp_error("raft", "lost leadership");
    assert_int_equal(cap.n, 3);
    static const char *const want[][3] = {
        {"info", "router", "picked key 3 of openai"},
        {"warn", "meter", "spool at 91%"},
        {"error", "raft", "lost leadership"},
    };
    for (int i = 0; i < 3; i++) {
        json_t *v = parse_line(i);
        assert_string_equal(json_string_value(json_object_get(v, "level")), want[i][0]);
        assert_string_equal(json_string_value(json_object_get(v, "comp")), want[i][1]);
        assert_string_equal(json_string_value(json_object_get(v, "msg")), want[i][2]);
        json_decref(v);
    }
}

/* Quotes, backslashes, newlines and control bytes in a message are escaped,
 * so the line stays a single valid JSON line that decodes to the message. */
static void test_log_escapes_message(void **state)
{
    (void)state;
    const char *m = "he said \"hi\"\nthen C:\\x\t\x01\x7f end \xc3\xa9";
    check_logged(m, m, NULL);
}

/* Messages below the level are dropped, the rest pass, and "off" silences
 * everything. */
static void test_log_level_filter(void **state)
{
    (void)state;
    kp_log_set_level(KP_LOG_WARN);
    assert_int_equal(kp_log_get_level(), KP_LOG_WARN);
    kp_debug("c", "d");
    kp_info("c", "i");
    kp_warn("c", "w");
    kp_error("c", "e");
    assert_int_equal(cap.n, 2);
    json_t *v = parse_line(0);
    assert_string_equal(json_string_value(json_object_get(v, "level")), "warn");
    json_decref(v);
    v = parse_line(1);
    assert_string_equal(json_string_value(json_object_get(v, "level")), "error");
    json_decref(v);

    kp_log_set_level(KP_LOG_DEBUG);
    kp_debug("c", "now visible");
    assert_int_equal(cap.n, 3);
    v = parse_line(2);
    assert_string_equal(json_string_value(json_object_get(v, "level")), "debug");
    json_decref(v);

    kp_log_set_level(KP_LOG_OFF);
    kp_error("c", "silenced");
    assert_int_equal(cap.n, 3);

    kp_log_set_level(KP_LOG_DEBUG);
    kp_log(KP_LOG_OFF, "c", "OFF is not a level to log at");
    assert_int_equal(cap.n, 3);
}

/* Level names parse to their levels ("warning" as an alias) and anything
 * else is -1. */
static void test_log_parse_level(void **state)
{
    (void)state;
    assert_int_equal(kp_log_parse_level("debug"), KP_LOG_DEBUG);
    assert_int_equal(kp_log_parse_level("info"), KP_LOG_INFO);
    assert_int_equal(kp_log_parse_level("warn"), KP_LOG_WARN);
    assert_int_equal(kp_log_parse_level("warning"), KP_LOG_WARN);
    assert_int_equal(kp_log_parse_level("error"), KP_LOG_ERROR);
    assert_int_equal(kp_log_parse_level("off"), KP_LOG_OFF);
    assert_int_equal(kp_log_parse_level(""), -1);
    assert_int_equal(kp_log_parse_level("verbose"), -1);
    assert_int_equal(kp_log_parse_level("inf"), -1);
    assert_int_equal(kp_log_parse_level("debugx"), -1);
    assert_int_equal(kp_log_parse_level("info "), -1);
}

/* KEYPLANE_TRACE turns trace lines on (and lowers the level to debug); "0"
 * or unset keeps them off. */
static void test_log_trace_env(void **state)
{
    (void)state;
    const char *old = getenv("KEYPLANE_TRACE");
    char *saved = old ? strdup(old) : NULL;

    unsetenv("KEYPLANE_TRACE");
    kp_log_init_from_env();
    assert_false(kp_trace_enabled);
    kp_trace("t", "hidden");
    assert_int_equal(cap.n, 0);

    setenv("KEYPLANE_TRACE", "0", 1);
    kp_log_init_from_env();
    assert_false(kp_trace_enabled);

    setenv("KEYPLANE_TRACE", "1", 1);
    kp_log_init_from_env();
    assert_true(kp_trace_enabled);
    assert_int_equal(kp_log_get_level(), KP_LOG_DEBUG);
    kp_trace("t", "upstream eof -> finish stream");
    assert_int_equal(cap.n, 1);
    json_t *v = parse_line(0);
    assert_string_equal(json_string_value(json_object_get(v, "level")), "debug");
    assert_string_equal(json_string_value(json_object_get(v, "msg")),
                        "upstream eof -> finish stream");
    json_decref(v);

    if (saved) {
        setenv("KEYPLANE_TRACE", saved, 1);
        free(saved);
    } else {
        unsetenv("KEYPLANE_TRACE");
    }
    kp_trace_enabled = false;
}

/* A message over the 4 KiB cap is truncated to 4095 bytes and the line is
 * still one valid JSON object. */
static void test_log_truncates_long_message(void **state)
{
    (void)state;
    static char big[10000];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    char *got = log_and_read(big, NULL);
    assert_int_equal(strlen(got), 4095);
    assert_int_equal(strspn(got, "a"), 4095);
    free(got);
}

/* A message of 4 KiB of bytes that each escape to six characters fits the
 * line buffer and decodes back exactly. */
static void test_log_truncates_worst_case_escaping(void **state)
{
    (void)state;
    static char big[6000];
    memset(big, '\x01', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    char *got = log_and_read(big, NULL);
    assert_int_equal(strlen(got), 4095);
    assert_int_equal(strspn(got, "\x01"), 4095);
    free(got);
}

/* Regression (found by this suite): kp_log (log.c:257) truncates the message at byte 4095 without
 * backing up to a UTF-8 character boundary, so a long message of multi-byte
 * characters ends with a partial character and the line is not valid JSON
 * (jansson: "unable to decode byte 0xc3").
 * This test proves a truncated multi-byte message still yields valid JSON. */
static void test_log_truncates_utf8_on_boundary(void **state)
{
    (void)state;
    static char big[6001];
    for (int i = 0; i < 3000; i++) {
        big[2 * i] = '\xc3';
        big[2 * i + 1] = '\xa9';
    }
    big[6000] = '\0';
    char *got = log_and_read(big, NULL);
    assert_true(strlen(got) <= 4095);
    free(got);
}

/* With no sink set, a line goes to stderr whole, in one piece. */
static void test_log_default_sink_is_stderr(void **state)
{
    (void)state;
    int p[2];
    assert_int_equal(pipe(p), 0);
    int saved = dup(2);
    assert_true(saved >= 0);
    assert_int_equal(dup2(p[1], 2), 2);
    kp_log_set_sink(NULL, NULL);
    kp_error("stderr", "to the default sink with sk-proj-abcdefghijkl");
    kp_log_set_sink(capture_sink, &cap);
    assert_int_equal(dup2(saved, 2), 2);
    close(saved);
    close(p[1]);
    char buf[1024];
    ssize_t n = read(p[0], buf, sizeof(buf) - 1);
    close(p[0]);
    assert_true(n > 0);
    buf[n] = '\0';
    assert_int_equal(cap.n, 0);
    assert_int_equal(buf[n - 1], '\n');
    json_error_t err;
    json_t *v = json_loadb(buf, (size_t)n - 1, 0, &err);
    assert_non_null(v);
    assert_string_equal(json_string_value(json_object_get(v, "comp")), "stderr");
    assert_string_equal(json_string_value(json_object_get(v, "msg")),
                        "to the default sink with sk-***");
    json_decref(v);
}

/* --- log: redaction ------------------------------------------------------------ */

/* OpenAI and Anthropic keys are masked to "sk-***" wherever they appear. */
static void test_redact_sk_keys(void **state)
{
    (void)state;
    check_redact("key sk-proj-AbCdEf0123456789_xyz-QRS end", "key sk-*** end");
    check_redact("sk-ant-api03-AbC_dEf-123456789-xyzXYZ012", "sk-***");
    check_redact("using sk-abcdefghijklmnop", "using sk-***");
    check_redact("(sk-abcdefgh)", "(sk-***)");
    check_redact("\"sk-proj-12345678\",", "\"sk-***\",");
    check_redact("k=sk-12345678&x=1", "k=sk-***&x=1");
    check_redact("sk-12345678\nsk-abcdefgh", "sk-***\nsk-***");
}

/* Bearer tokens are masked in any letter case, keeping the scheme. */
static void test_redact_bearer(void **state)
{
    (void)state;
    check_redact("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig_-+/=",
                 "Authorization: Bearer ***");
    check_redact("authorization: bearer tok123", "authorization: bearer ***");
    check_redact("BEARER abcdefghij", "BEARER ***");
    check_redact("bEaReR xyz789", "bEaReR ***");
    check_redact("Bearer   spaced-token", "Bearer   ***");
    check_redact("Bearer x", "Bearer *");
    check_redact("{\"authorization\":\"Bearer abc.def.ghi\"}",
                 "{\"authorization\":\"Bearer ***\"}");
}

/* x-api-key, x-goog-api-key, api-key and their spellings are masked in
 * header, JSON, escaped-JSON and query forms. */
static void test_redact_api_key_names(void **state)
{
    (void)state;
    check_redact("x-api-key: secretvalue123", "x-api-key: ***");
    check_redact("X-Api-Key: secretvalue123", "X-Api-Key: ***");
    check_redact("x-api-key:secretvalue123", "x-api-key:***");
    check_redact("{\"x-api-key\":\"secretvalue123\"}", "{\"x-api-key\":\"***\"}");
    check_redact("{\"x-api-key\": \"secretvalue123\"}", "{\"x-api-key\": \"***\"}");
    check_redact("{\\\"x-api-key\\\":\\\"secretvalue123\\\"}", "{\\\"x-api-key\\\":\\\"***\\\"}");
    check_redact("x-goog-api-key=AIzaSyD-abc_123", "x-goog-api-key=***");
    check_redact("X-Goog-Api-Key: AIzaSyD-abc_123", "X-Goog-Api-Key: ***");
    check_redact("api-key: azurekey0123", "api-key: ***");
    check_redact("?api_key=azurekey0123&v=1", "?api_key=***&v=1");
    check_redact("apikey='azurekey0123'", "apikey='***'");
    check_redact("x-api-key: v", "x-api-key: *");
    check_redact("x-api-key: ab", "x-api-key: **");
}

/* keyplane's own kp_<id>_<secret> tokens are masked. */
static void test_redact_kp_tokens(void **state)
{
    (void)state;
    check_redact("token kp_01HXYZ7_s3cr3tS3cr3t end", "token kp_*** end");
    check_redact("kp_abc_defghijk", "kp_***");
    check_redact("x=kp_12345678", "x=kp_***");
}

/* Several secrets of different kinds in one line are all masked. */
static void test_redact_several_in_one_line(void **state)
{
    (void)state;
    check_redact("a sk-proj-1234567890 b Bearer xyz c x-api-key: k1 d kp_abc_defghijk e "
                 "sk-ant-api03-zzzzzzzz",
                 "a sk-*** b Bearer *** c x-api-key: ** d kp_*** e sk-***");
}

/* Words that merely contain "sk-", short sk- strings and ordinary text are
 * left exactly as they are. */
static void test_redact_leaves_ordinary_text(void **state)
{
    (void)state;
    const char *keep[] = {
        "task-force",
        "risk-free-rate-of-return",
        "ask-me-anything-please",
        "desk-lamp-collection",
        "sk-ab",
        "sk-abcdefg",
        "kp_short",
        "okp_abcdefghijkl",
        "xsk-abcdefghijkl",
        "The quick brown fox jumps over the lazy dog; status=200 model=gpt-4o-mini",
        "bearer",
        "Bearer",
        "bearer: none",
        "the api-key header is missing",
        "x-api-key",
        "x-api-key:",
        "sk-",
        "",
    };
    for (size_t i = 0; i < sizeof(keep) / sizeof(keep[0]); i++)
        check_redact(keep[i], keep[i]);
}

/* kp_redact never makes a string longer, on crafted and on pseudo-random
 * mixes of key fragments of every length. */
static void test_redact_never_longer(void **state)
{
    (void)state;
    static const char *const frags[] = {"sk-",
                                        "kp_",
                                        "Bearer ",
                                        "bearer  ",
                                        "x-api-key",
                                        ": ",
                                        "\"",
                                        ":",
                                        "=",
                                        "api-key",
                                        "x-goog-api-key",
                                        "a",
                                        "Z9",
                                        "-",
                                        "_",
                                        " ",
                                        "\\",
                                        "'",
                                        "\n",
                                        "ab.cd"};
    const size_t nf = sizeof(frags) / sizeof(frags[0]);
    uint32_t seed = 12345;
    for (int iter = 0; iter < 20000; iter++) {
        char s[256];
        size_t len = 0;
        int parts = (int)(seed % 12) + 1;
        for (int p = 0; p < parts; p++) {
            seed = seed * 1103515245u + 12345u;
            const char *f = frags[(seed >> 16) % nf];
            size_t fl = strlen(f);
            if (len + fl >= sizeof(s))
                break;
            memcpy(s + len, f, fl);
            len += fl;
        }
        /* Exact-size heap copy so ASan catches any read or write past it. */
        char *h = malloc(len ? len : 1);
        assert_non_null(h);
        memcpy(h, s, len);
        size_t out = kp_redact(h, len);
        assert_true(out <= len);
        free(h);
    }
    for (size_t n = 0; n < 20; n++) {
        char s[64];
        int len = snprintf(s, sizeof(s), "sk-%.*s", (int)n, "abcdefghijklmnopqrstuvwxyz");
        size_t out = kp_redact(s, (size_t)len);
        assert_true(out <= (size_t)len);
    }
}

/* Regression (found by this suite): kp_redact (log.c:164) starts a match for "sk-", "kp_" or
 * "Bearer " only after a non-word character, but in JSON text that reaches a
 * log call (a request body) a key often follows an escape sequence such as
 * \n, \t or \u0022 whose last character is a word character, so
 * {"content":"use\nsk-proj-..."} is logged with the key in clear.
 * This test proves keys right after a JSON escape sequence are masked. */
static void test_redact_after_json_escape(void **state)
{
    (void)state;
    check_redact("{\"content\":\"use\\nsk-proj-abcdefghijklmnop\"}",
                 "{\"content\":\"use\\nsk-***\"}");
    check_redact("a\\tsk-ant-api03-abcdefghij", "a\\tsk-***");
    check_redact("\\u0022sk-proj-abcdefghijkl\\u0022", "\\u0022sk-***\\u0022");
    check_redact("line1\\r\\nBearer abcdefgh", "line1\\r\\nBearer ***");
    check_redact("id\\nkp_01ABC_verysecretpart", "id\\nkp_***");
}

/* Regression (found by this suite): value_after_name (log.c:144-155) accepts the ':' or '=' only
 * right after the name and only spaces after it, and the "bearer " match
 * (log.c:178) needs exactly one space, so "x-api-key:\tv" (legal HTTP
 * whitespace), "x-api-key = v", "\"x-api-key\" : \"v\"" and "Bearer\tv"
 * all leak v.
 * This test proves header values are masked whatever whitespace surrounds the
 * separator. */
static void test_redact_whitespace_around_separator(void **state)
{
    (void)state;
    check_redact("x-api-key:\tsecretvalue123", "x-api-key:\t***");
    check_redact("x-api-key = secretvalue123", "x-api-key = ***");
    check_redact("\"x-api-key\" : \"secretvalue123\"", "\"x-api-key\" : \"***\"");
    check_redact("Authorization: Bearer\tsecretvalue123", "Authorization: Bearer\t***");
}

/* A key logged through kp_log is masked in the emitted line and in the
 * decoded msg. */
static void test_log_redacts_keys(void **state)
{
    (void)state;
    check_logged("calling openai with sk-proj-AbCdEf0123456789", "calling openai with sk-***",
                 "AbCdEf0123456789");
    check_logged("headers: Authorization: Bearer eyJ0eXAiOi.abc",
                 "headers: Authorization: Bearer ***", "eyJ0eXAiOi");
    check_logged("{\"x-api-key\":\"sk-ant-api03-SECRETSECRET\"}", "{\"x-api-key\":\"***\"}",
                 "SECRETSECRET");
    check_logged("kp_01ABC_verysecretpart", "kp_***", "verysecretpart");
}

/* A registered secret is masked wherever it appears in a log line: alone,
 * at the start, at the end and in the middle. */
static void test_log_registered_secret(void **state)
{
    (void)state;
    char secret[] = "hunter2-db-password";
    kp_log_register_secret(secret, strlen(secret));
    memset(secret, 'Z', strlen(secret)); /* the value was copied */
    const char *s = "hunter2-db-password";
    check_logged("hunter2-db-password", "***", s);
    check_logged("hunter2-db-password at start", "*** at start", s);
    check_logged("at end hunter2-db-password", "at end ***", s);
    check_logged("dsn=postgres://u:hunter2-db-password@db/x", "dsn=postgres://u:***@db/x", s);
    check_logged("twice hunter2-db-passwordhunter2-db-password!", "twice ******!", s);
}

/* Several registered secrets, including ones that are not key-shaped, are
 * all masked in one line. */
static void test_log_several_registered_secrets(void **state)
{
    (void)state;
    kp_log_register_secret("open sesame 42", 14);
    kp_log_register_secret("AKIAEXAMPLE123", 14);
    kp_log_register_secret("zz9-plural-z-alpha", 18);
    check_logged("a=open sesame 42 b=AKIAEXAMPLE123 c=zz9-plural-z-alpha.", "a=*** b=*** c=***.",
                 "sesame");
    char *got = log_and_read("AKIAEXAMPLE123 then zz9-plural-z-alpha", "AKIAEXAMPLE123");
    assert_string_equal(got, "*** then ***");
    free(got);
}

/* A registered secret may be given by length, without a NUL. */
static void test_log_registered_secret_by_length(void **state)
{
    (void)state;
    kp_log_register_secret("tokenABCDEF-and-more", 11);
    check_logged("x tokenABCDEF-and-more", "x ***-and-more", "tokenABCDEF");
}

/* Values shorter than six bytes are not registered (they would mask ordinary
 * words), and kp_log_clear_secrets forgets registered ones. */
static void test_log_secret_short_and_clear(void **state)
{
    (void)state;
    kp_log_register_secret("abc12", 5);
    check_logged("abc12 stays", "abc12 stays", NULL);
    kp_log_register_secret("longer-secret-value", 19);
    check_logged("v=longer-secret-value", "v=***", "longer-secret-value");
    kp_log_clear_secrets();
    check_logged("v=longer-secret-value", "v=longer-secret-value", NULL);
}

/* A registered secret containing characters that JSON escaping rewrites
 * (quote, backslash, newline) is masked before escaping, so neither its raw
 * nor its escaped form reaches the line. */
static void test_log_secret_split_by_escaping(void **state)
{
    (void)state;
    const char *secret = "s3cr\"et\\va\nlue";
    kp_log_register_secret(secret, strlen(secret));
    int before = cap.n;
    char *got = log_and_read("pw=s3cr\"et\\va\nlue;", secret);
    assert_string_equal(got, "pw=***;");
    free(got);
    const char *line = cap.lines[before];
    assert_null(strstr(line, "s3cr\\\"et\\\\va\\nlue"));
    assert_null(strstr(line, "s3cr"));
    assert_null(strstr(line, "lue;"));
}

/* A key next to characters that get escaped is masked and the line is still
 * valid JSON. */
static void test_log_key_next_to_escapes(void **state)
{
    (void)state;
    check_logged("\"sk-proj-abcdefghijkl\"\n\tBearer tok.en\\", "\"sk-***\"\n\tBearer ***\\",
                 "abcdefghijkl");
}

/* --- metrics ------------------------------------------------------------------- */

static int metrics_setup(void **state)
{
    (void)state;
    kp_alloc_fail_reset();
    kp_metrics_reset();
    return 0;
}

/* Renders all metrics into a fresh string (free it). */
static char *render(void)
{
    struct kp_buf b;
    kp_buf_init(&b);
    assert_int_equal(kp_metrics_render(&b), 0);
    assert_non_null(b.data);
    assert_int_equal(b.data[b.len - 1], '\n');
    return b.data;
}

/* Observed exchanges appear as requests_total lines per listener, route and
 * code with exact counts. */
static void test_metrics_requests_total(void **state)
{
    (void)state;
    kp_metrics_http_observe("gateway", "/v1/chat/completions", 200, 1500);
    kp_metrics_http_observe("gateway", "/v1/chat/completions", 200, 1500);
    kp_metrics_http_observe("gateway", "/v1/chat/completions", 429, 700);
    kp_metrics_http_observe("control", "/healthz", 200, 100);
    char *t = render();
    assert_has_line(t, "# TYPE keyplane_http_requests_total counter");
    assert_has_line(t, "keyplane_http_requests_total{listener=\"gateway\",route=\"/v1/chat/"
                       "completions\",code=\"200\"} 2");
    assert_has_line(t, "keyplane_http_requests_total{listener=\"gateway\",route=\"/v1/chat/"
                       "completions\",code=\"429\"} 1");
    assert_has_line(t, "keyplane_http_requests_total{listener=\"control\",route=\"/healthz\","
                       "code=\"200\"} 1");
    assert_int_equal(count_lines_with_prefix(t, "keyplane_http_requests_total{"), 3);
    kp_free(t);
}

/* Labelled counters: one line per label set with exact sums, values
 * escaped, and beyond max_series every new set counts as "overflow". */
static void test_metrics_family(void **state)
{
    (void)state;
    const char *labels[] = {"key", "class"};
    struct kp_metric_family *f =
        kp_metric_family_counter("keyplane_test_attempts_total", "Attempts.", 2, labels, 4);
    assert_non_null(f);
    assert_ptr_equal(
        kp_metric_family_counter("keyplane_test_attempts_total", "Attempts.", 2, labels, 4), f);
    kp_metric_family_add(f, (const char *[]){"k1", "ok"}, 1);
    kp_metric_family_add(f, (const char *[]){"k1", "ok"}, 2);
    kp_metric_family_add(f, (const char *[]){"k\"2\n", "auth"}, 1);
    kp_metric_family_add(f, (const char *[]){"k3", "ok"}, 1);
    kp_metric_family_add(f, (const char *[]){"k4", "ok"}, 5); /* the 4th set: overflow */
    kp_metric_family_add(f, (const char *[]){"k5", "ok"}, 1);
    kp_metric_family_add(f, (const char *[]){"k1", "ok"}, 1); /* known sets still count */
    char *t = render();
    assert_has_line(t, "# TYPE keyplane_test_attempts_total counter");
    assert_has_line(t, "keyplane_test_attempts_total{key=\"k1\",class=\"ok\"} 4");
    assert_has_line(t, "keyplane_test_attempts_total{key=\"k\\\"2\\n\",class=\"auth\"} 1");
    assert_has_line(t, "keyplane_test_attempts_total{key=\"k3\",class=\"ok\"} 1");
    assert_has_line(t, "keyplane_test_attempts_total{key=\"overflow\",class=\"overflow\"} 6");
    assert_int_equal(count_lines_with_prefix(t, "keyplane_test_attempts_total{"), 4);
    kp_free(t);
}

/* A labelled histogram: cumulative buckets in seconds, +Inf, sum and count
 * per label set, and observing into a plain counter does nothing. */
static void test_metrics_family_histogram(void **state)
{
    (void)state;
    const char *labels[] = {"provider"};
    struct kp_metric_family *h =
        kp_metric_family_histogram("keyplane_test_wait_seconds", "Waits.", 1, labels, 4);
    assert_non_null(h);
    kp_metric_family_observe_us(h, (const char *[]){"p1"}, 400);      /* le 0.0005 */
    kp_metric_family_observe_us(h, (const char *[]){"p1"}, 500);      /* le 0.0005, inclusive */
    kp_metric_family_observe_us(h, (const char *[]){"p1"}, 3000);     /* le 0.005 */
    kp_metric_family_observe_us(h, (const char *[]){"p1"}, 90000000); /* past 60 s */
    kp_metric_family_observe_us(h, (const char *[]){"p2"}, 1000);
    struct kp_metric_family *c =
        kp_metric_family_counter("keyplane_test_plain_total", "Plain.", 1, labels, 4);
    kp_metric_family_observe_us(c, (const char *[]){"p1"}, 1000);
    char *t = render();
    assert_has_line(t, "# TYPE keyplane_test_wait_seconds histogram");
    assert_has_line(t, "keyplane_test_wait_seconds_bucket{provider=\"p1\",le=\"0.0005\"} 2");
    assert_has_line(t, "keyplane_test_wait_seconds_bucket{provider=\"p1\",le=\"0.0025\"} 2");
    assert_has_line(t, "keyplane_test_wait_seconds_bucket{provider=\"p1\",le=\"0.005\"} 3");
    assert_has_line(t, "keyplane_test_wait_seconds_bucket{provider=\"p1\",le=\"60\"} 3");
    assert_has_line(t, "keyplane_test_wait_seconds_bucket{provider=\"p1\",le=\"+Inf\"} 4");
    assert_has_line(t, "keyplane_test_wait_seconds_sum{provider=\"p1\"} 90.003900");
    assert_has_line(t, "keyplane_test_wait_seconds_count{provider=\"p1\"} 4");
    assert_has_line(t, "keyplane_test_wait_seconds_bucket{provider=\"p2\",le=\"0.001\"} 1");
    assert_has_line(t, "keyplane_test_wait_seconds_count{provider=\"p2\"} 1");
    assert_int_equal(count_lines_with_prefix(t, "keyplane_test_plain_total{"), 0);
    kp_free(t);
}

struct seen {
    char lines[8][64];
    int n;
};

static void see(void *arg, const char *const values[], int64_t v)
{
    struct seen *s = arg;
    if (s->n < 8)
        snprintf(s->lines[s->n++], sizeof(s->lines[0]), "%s %s %lld", values[0], values[1],
                 (long long)v);
}

/* A family read back series by series (overflow last), and a gauge
 * family whose values are set, rendered as a gauge. */
static void test_metrics_family_each_gauge(void **state)
{
    (void)state;
    const char *labels[] = {"key", "class"};
    struct kp_metric_family *f =
        kp_metric_family_counter("keyplane_test_each_total", "Each.", 2, labels, 3);
    struct seen s = {.n = 0};
    kp_metric_family_each("keyplane_test_each_total", see, &s);
    assert_int_equal(s.n, 0);
    kp_metric_family_add(f, (const char *[]){"k1", "ok"}, 2);
    kp_metric_family_add(f, (const char *[]){"k2", "auth"}, 1);
    kp_metric_family_add(f, (const char *[]){"k3", "ok"}, 4); /* overflow */
    kp_metric_family_each("keyplane_test_each_total", see, &s);
    assert_int_equal(s.n, 3);
    assert_string_equal(s.lines[0], "k1 ok 2");
    assert_string_equal(s.lines[1], "k2 auth 1");
    assert_string_equal(s.lines[2], "overflow overflow 4");
    s.n = 0;
    kp_metric_family_each("keyplane_no_such_family", see, &s);
    assert_int_equal(s.n, 0);

    struct kp_metric_family *g =
        kp_metric_family_gauge("keyplane_test_open", "Open.", 1, (const char *[]){"severity"}, 4);
    kp_metric_family_set(g, (const char *[]){"critical"}, 3);
    kp_metric_family_set(g, (const char *[]){"critical"}, 1);
    char *t = render();
    assert_has_line(t, "# TYPE keyplane_test_open gauge");
    assert_has_line(t, "keyplane_test_open{severity=\"critical\"} 1");
    kp_free(t);
}

/* The latency histogram has every bucket, cumulative, with +Inf equal to
 * _count, and _sum in seconds. */
static void test_metrics_histogram_exact(void **state)
{
    (void)state;
    kp_metrics_http_observe("gateway", "/v1/messages", 200, 1500);
    kp_metrics_http_observe("gateway", "/v1/messages", 200, 1500);
    kp_metrics_http_observe("gateway", "/v1/messages", 500, 700);
    char *t = render();
    assert_has_line(t, "# TYPE keyplane_http_request_duration_seconds histogram");
    static const struct {
        const char *le;
        int cum;
    } want[] = {{"0.0005", 0}, {"0.001", 1}, {"0.0025", 3}, {"0.005", 3}, {"0.01", 3}, {"0.025", 3},
                {"0.05", 3},   {"0.1", 3},   {"0.25", 3},   {"0.5", 3},   {"1", 3},    {"2.5", 3},
                {"5", 3},      {"10", 3},    {"30", 3},     {"60", 3},    {"+Inf", 3}};
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        char line[256];
        snprintf(line, sizeof(line),
                 "keyplane_http_request_duration_seconds_bucket{listener=\"gateway\",route=\"/v1/"
                 "messages\",le=\"%s\"} %d",
                 want[i].le, want[i].cum);
        assert_has_line(t, line);
    }
    assert_int_equal(count_lines_with_prefix(t, "keyplane_http_request_duration_seconds_bucket{"),
                     17);
    assert_has_line(t, "keyplane_http_request_duration_seconds_sum{listener=\"gateway\",route=\"/"
                       "v1/messages\"} 0.003700");
    assert_has_line(t, "keyplane_http_request_duration_seconds_count{listener=\"gateway\",route="
                       "\"/v1/messages\"} 3");
    kp_free(t);
}

/* Bucket bounds are inclusive (le): a duration equal to a bound lands in
 * it, one microsecond more lands in the next, beyond the last only in +Inf. */
static void test_metrics_histogram_boundaries(void **state)
{
    (void)state;
    kp_metrics_http_observe("l", "r", 200, 500);
    kp_metrics_http_observe("l", "r", 200, 501);
    kp_metrics_http_observe("l", "r", 200, 60000000);
    kp_metrics_http_observe("l", "r", 200, 60000001);
    kp_metrics_http_observe("l", "r", 200, 0);
    char *t = render();
    const char *p = "keyplane_http_request_duration_seconds_bucket{listener=\"l\",route=\"r\",";
    char line[256];
    snprintf(line, sizeof(line), "%sle=\"0.0005\"} 2", p);
    assert_has_line(t, line);
    snprintf(line, sizeof(line), "%sle=\"0.001\"} 3", p);
    assert_has_line(t, line);
    snprintf(line, sizeof(line), "%sle=\"30\"} 3", p);
    assert_has_line(t, line);
    snprintf(line, sizeof(line), "%sle=\"60\"} 4", p);
    assert_has_line(t, line);
    snprintf(line, sizeof(line), "%sle=\"+Inf\"} 5", p);
    assert_has_line(t, line);
    assert_has_line(t,
                    "keyplane_http_request_duration_seconds_count{listener=\"l\",route=\"r\"} 5");
    assert_has_line(t, "keyplane_http_request_duration_seconds_sum{listener=\"l\",route=\"r\"} "
                       "120.001002");
    kp_free(t);
}

/* Status codes outside 0..599 are counted under code "0", and a NULL route
 * under "other". */
static void test_metrics_odd_status_and_route(void **state)
{
    (void)state;
    kp_metrics_http_observe("l", "r", -1, 10);
    kp_metrics_http_observe("l", "r", 600, 10);
    kp_metrics_http_observe("l", "r", 1000, 10);
    kp_metrics_http_observe("l", "r", 599, 10);
    kp_metrics_http_observe("l", NULL, 404, 10);
    char *t = render();
    assert_has_line(t, "keyplane_http_requests_total{listener=\"l\",route=\"r\",code=\"0\"} 3");
    assert_has_line(t, "keyplane_http_requests_total{listener=\"l\",route=\"r\",code=\"599\"} 1");
    assert_has_line(t,
                    "keyplane_http_requests_total{listener=\"l\",route=\"other\",code=\"404\"} 1");
    kp_free(t);
}

/* Connection deltas render as an open-connections gauge and an accepted
 * counter per listener. */
static void test_metrics_connections(void **state)
{
    (void)state;
    kp_metrics_http_conn_delta("gateway", 1);
    kp_metrics_http_conn_delta("gateway", 1);
    kp_metrics_http_conn_delta("gateway", 1);
    kp_metrics_http_conn_delta("gateway", -2);
    kp_metrics_http_conn_delta("control", 1);
    char *t = render();
    assert_has_line(t, "# TYPE keyplane_http_open_connections gauge");
    assert_has_line(t, "keyplane_http_open_connections{listener=\"gateway\"} 1");
    assert_has_line(t, "keyplane_http_connections_total{listener=\"gateway\"} 3");
    assert_has_line(t, "keyplane_http_open_connections{listener=\"control\"} 1");
    assert_has_line(t, "keyplane_http_connections_total{listener=\"control\"} 1");
    kp_free(t);
}

/* Named counters and gauges add, set and read back, render with HELP and
 * TYPE, and registering a name twice returns the same metric. */
static void test_metrics_named(void **state)
{
    (void)state;
    struct kp_metric *c = kp_metric_counter("kp_test_events_total", "Events seen.");
    struct kp_metric *g = kp_metric_gauge("kp_test_queue_depth", "Items queued.");
    assert_non_null(c);
    assert_non_null(g);
    assert_ptr_equal(kp_metric_counter("kp_test_events_total", "Events seen."), c);
    assert_int_equal(kp_metric_value(c), 0);
    kp_metric_add(c, 5);
    kp_metric_add(c, 2);
    assert_int_equal(kp_metric_value(c), 7);
    kp_metric_set(g, 10);
    kp_metric_add(g, -13);
    assert_int_equal(kp_metric_value(g), -3);
    char *t = render();
    assert_has_line(t, "# HELP kp_test_events_total Events seen.");
    assert_has_line(t, "# TYPE kp_test_events_total counter");
    assert_has_line(t, "kp_test_events_total 7");
    assert_has_line(t, "# HELP kp_test_queue_depth Items queued.");
    assert_has_line(t, "# TYPE kp_test_queue_depth gauge");
    assert_has_line(t, "kp_test_queue_depth -3");
    const char *help = strstr(t, "# HELP kp_test_events_total");
    const char *type = strstr(t, "# TYPE kp_test_events_total");
    const char *value = strstr(t, "\nkp_test_events_total 7\n");
    assert_true(help < type && type < value);
    kp_free(t);
}

/* Operations on a NULL metric (a full table's answer) are harmless. */
static void test_metrics_null_metric(void **state)
{
    (void)state;
    kp_metric_add(NULL, 1);
    kp_metric_set(NULL, 1);
    assert_int_equal(kp_metric_value(NULL), 0);
}

/* Registering more named metrics than the table holds does not crash:
 * extra registrations return NULL and the rest keep working. */
static void test_metrics_named_table_full(void **state)
{
    (void)state;
    static char names[300][32];
    int got = 0;
    for (int i = 0; i < 300; i++) {
        snprintf(names[i], sizeof(names[i]), "kp_test_metric_%d", i);
        struct kp_metric *m = kp_metric_counter(names[i], "h");
        if (m != NULL) {
            got++;
            kp_metric_add(m, i);
            assert_int_equal(kp_metric_value(m), i);
        }
    }
    assert_true(got >= 100 && got < 300);
    char *t = render();
    assert_has_line(t, "kp_test_metric_0 0");
    assert_has_line(t, "kp_test_metric_99 99");
    kp_free(t);
}

/* Build info and process metrics are always present. */
static void test_metrics_build_info(void **state)
{
    (void)state;
    char *t = render();
    char line[256];
    snprintf(line, sizeof(line), "keyplane_build_info{version=\"%s\",commit=\"%s\"} 1",
             kp_version(), kp_build_commit());
    assert_has_line(t, "# TYPE keyplane_build_info gauge");
    assert_has_line(t, line);
    assert_true(strlen(kp_version()) > 0);
    assert_true(strlen(kp_build_commit()) > 0);
    assert_has_line(t, "# TYPE process_cpu_seconds_total counter");
    assert_non_null(strstr(t, "\nprocess_resident_memory_bytes "));
    assert_non_null(strstr(t, "\nprocess_start_time_seconds "));
    kp_free(t);
}

/* kp_metrics_reset forgets routes, connections and named metrics. */
static void test_metrics_reset(void **state)
{
    (void)state;
    kp_metrics_http_observe("gateway", "/v1/models", 200, 10);
    kp_metrics_http_conn_delta("gateway", 1);
    struct kp_metric *m = kp_metric_counter("kp_test_reset_total", "h");
    kp_metric_add(m, 9);
    kp_metrics_reset();
    char *t = render();
    assert_null(strstr(t, "/v1/models"));
    assert_null(strstr(t, "kp_test_reset_total"));
    assert_null(strstr(t, "keyplane_http_open_connections{"));
    assert_has_line(t, "# TYPE keyplane_http_requests_total counter");
    assert_non_null(strstr(t, "keyplane_build_info{"));
    kp_free(t);
    m = kp_metric_counter("kp_test_reset_total", "h");
    assert_int_equal(kp_metric_value(m), 0);
}

/* Rendering under allocation failure reports -1 and leaks nothing. */
static void test_metrics_render_alloc_failure(void **state)
{
    (void)state;
    kp_metrics_http_observe("l", "r", 200, 10);
    struct kp_buf b;
    kp_buf_init(&b);
    kp_alloc_fail_after(0);
    assert_int_equal(kp_metrics_render(&b), -1);
    kp_alloc_fail_reset();
    kp_buf_free(&b);
}

static char route_names[200][32];

static void observe_200_routes(void)
{
    for (int i = 0; i < 200; i++) {
        snprintf(route_names[i], sizeof(route_names[i]), "/route/%d", i);
        kp_metrics_http_observe("gateway", route_names[i], 200, 100);
    }
}

/* Label cardinality is bounded: 200 distinct routes do not crash, yield at
 * most the table's worth of series, and the excess shows up as an
 * "overflow" route. */
static void test_metrics_route_cardinality_bounded(void **state)
{
    (void)state;
    observe_200_routes();
    char *t = render();
    int series = count_lines_with_prefix(t, "keyplane_http_requests_total{");
    assert_true(series > 0 && series < 200);
    assert_non_null(strstr(t,
                           "keyplane_http_requests_total{listener=\"gateway\",route=\"overflow\","
                           "code=\"200\"} "));
    assert_has_line(t, "keyplane_http_requests_total{listener=\"gateway\",route=\"/route/0\","
                       "code=\"200\"} 1");
    assert_null(strstr(t, "route=\"/route/199\""));
    kp_free(t);
}

/* Regression: once the route table is full, every further route is counted
 * under its listener's "overflow" series and no observation is dropped. The
 * table has 128 slots, 8 of them kept for per-listener overflow series, so
 * of 200 routes 120 get their own series and 80 land in "overflow". */
static void test_metrics_route_overflow_counts_all(void **state)
{
    (void)state;
    observe_200_routes();
    char *t = render();
    assert_has_line(t, "keyplane_http_request_duration_seconds_count{listener=\"gateway\","
                       "route=\"overflow\"} 80");
    /* Sum of all series is the number of observations. */
    long total = 0;
    const char *pfx = "keyplane_http_requests_total{";
    for (const char *p = strstr(t, pfx); p != NULL; p = strstr(p + 1, pfx))
        total += strtol(strchr(p, '}') + 1, NULL, 10);
    assert_int_equal(total, 200);
    kp_free(t);
}

/* Observing an already-known route with a different string pointer of equal
 * content counts into the same series. */
static void test_metrics_route_matched_by_content(void **state)
{
    (void)state;
    static char a[] = "/v1/embeddings";
    static char b[] = "/v1/embeddings";
    kp_metrics_http_observe("gateway", a, 200, 10);
    kp_metrics_http_observe("gateway", b, 200, 10);
    char *t = render();
    assert_has_line(t, "keyplane_http_requests_total{listener=\"gateway\",route=\"/v1/"
                       "embeddings\",code=\"200\"} 2");
    kp_free(t);
}

/* --- msgpack reader (mpack.c) ---------------------------------------------- */

struct mp_case {
    const char *bytes; /* the value, then one trailing byte 'X' that must stay unread */
    size_t len;        /* of the value, without the 'X' */
    enum kp_mp_kind kind;
    uint64_t n, u;
    int64_t i;
    bool negative, b;
};

#define MP(s, kind, n, u, i, neg, b)                                                               \
    {                                                                                              \
        s "X", sizeof(s) - 1, kind, n, u, i, neg, b                                                \
    }

/* Every type byte's head reads to the right kind, length or count, and value,
 * consuming exactly the head (payloads stay unread). */
static void test_mp_every_head(void **state)
{
    (void)state;
    static const struct mp_case cases[] = {
        MP("\x00", KP_MP_INT, 0, 0, 0, false, false),
        MP("\x7f", KP_MP_INT, 0, 127, 0, false, false),
        MP("\x80", KP_MP_MAP, 0, 0, 0, false, false),
        MP("\x8f", KP_MP_MAP, 15, 0, 0, false, false),
        MP("\x90", KP_MP_ARRAY, 0, 0, 0, false, false),
        MP("\x9f", KP_MP_ARRAY, 15, 0, 0, false, false),
        MP("\xa0", KP_MP_STR, 0, 0, 0, false, false),
        MP("\xbf", KP_MP_STR, 31, 0, 0, false, false),
        MP("\xc0", KP_MP_NIL, 0, 0, 0, false, false),
        MP("\xc2", KP_MP_BOOL, 0, 0, 0, false, false),
        MP("\xc3", KP_MP_BOOL, 0, 0, 0, false, true),
        MP("\xc4\xfe", KP_MP_BIN, 0xfe, 0, 0, false, false),
        MP("\xc5\x01\x02", KP_MP_BIN, 0x102, 0, 0, false, false),
        MP("\xc6\x01\x02\x03\x04", KP_MP_BIN, 0x1020304, 0, 0, false, false),
        MP("\xc7\x05", KP_MP_EXT, 6, 0, 0, false, false),
        MP("\xc8\x01\x00", KP_MP_EXT, 0x101, 0, 0, false, false),
        MP("\xc9\xff\xff\xff\xff", KP_MP_EXT, 0x100000000, 0, 0, false, false),
        MP("\xca", KP_MP_FLOAT, 4, 0, 0, false, false),
        MP("\xcb", KP_MP_FLOAT, 8, 0, 0, false, false),
        MP("\xcc\xff", KP_MP_INT, 0, 255, 0, false, false),
        MP("\xcd\xff\xfe", KP_MP_INT, 0, 0xfffe, 0, false, false),
        MP("\xce\xff\xff\xff\xfd", KP_MP_INT, 0, 0xfffffffd, 0, false, false),
        MP("\xcf\xff\xff\xff\xff\xff\xff\xff\xff", KP_MP_INT, 0, UINT64_MAX, 0, false, false),
        MP("\xd0\x80", KP_MP_INT, 0, 0, -128, true, false),
        MP("\xd0\x7f", KP_MP_INT, 0, 127, 127, false, false),
        MP("\xd1\x80\x00", KP_MP_INT, 0, 0, -32768, true, false),
        MP("\xd2\xff\xff\xff\xfe", KP_MP_INT, 0, 0, -2, true, false),
        MP("\xd3\x80\x00\x00\x00\x00\x00\x00\x00", KP_MP_INT, 0, 0, INT64_MIN, true, false),
        MP("\xd3\x7f\xff\xff\xff\xff\xff\xff\xff", KP_MP_INT, 0, INT64_MAX, INT64_MAX, false,
           false),
        MP("\xd4", KP_MP_EXT, 2, 0, 0, false, false),
        MP("\xd5", KP_MP_EXT, 3, 0, 0, false, false),
        MP("\xd6", KP_MP_EXT, 5, 0, 0, false, false),
        MP("\xd7", KP_MP_EXT, 9, 0, 0, false, false),
        MP("\xd8", KP_MP_EXT, 17, 0, 0, false, false),
        MP("\xd9\x20", KP_MP_STR, 32, 0, 0, false, false),
        MP("\xda\x01\x00", KP_MP_STR, 256, 0, 0, false, false),
        MP("\xdb\x00\x01\x00\x00", KP_MP_STR, 65536, 0, 0, false, false),
        MP("\xdc\xff\xff", KP_MP_ARRAY, 65535, 0, 0, false, false),
        MP("\xdd\xff\xff\xff\xff", KP_MP_ARRAY, 0xffffffff, 0, 0, false, false),
        MP("\xde\x00\x10", KP_MP_MAP, 16, 0, 0, false, false),
        MP("\xdf\x00\x01\x00\x00", KP_MP_MAP, 65536, 0, 0, false, false),
        MP("\xe0", KP_MP_INT, 0, 0, -32, true, false),
        MP("\xff", KP_MP_INT, 0, 0, -1, true, false),
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        const struct mp_case *t = &cases[c];
        struct kp_mp_reader r;
        struct kp_mp_head h;
        kp_mp_reader_init(&r, t->bytes, t->len + 1);
        assert_true(kp_mp_read_head(&r, &h));
        assert_int_equal(h.kind, t->kind);
        assert_int_equal(h.negative, t->negative);
        if (t->kind == KP_MP_INT && t->negative)
            assert_true(h.i == t->i);
        else if (t->kind == KP_MP_INT)
            assert_true(h.u == t->u);
        else if (t->kind == KP_MP_BOOL)
            assert_int_equal(h.b, t->b);
        else
            assert_true(h.n == t->n);
        assert_int_equal(kp_mp_offset(&r), t->len);
        assert_int_equal(kp_mp_left(&r), 1);
    }

    /* And every one of the 256 type bytes but 0xc1 starts a head. */
    for (int b = 0; b < 256; b++) {
        uint8_t buf[9] = {(uint8_t)b};
        struct kp_mp_reader r;
        struct kp_mp_head h;
        kp_mp_reader_init(&r, buf, sizeof(buf));
        assert_int_equal(kp_mp_read_head(&r, &h), b != 0xc1);
    }
}

/* The unused type byte 0xc1 is refused as a bad head at its own offset. */
static void test_mp_bad_type_byte(void **state)
{
    (void)state;
    const uint8_t buf[] = {0x92, 0x01, 0xc1, 0x02};
    struct kp_mp_reader r;
    kp_mp_reader_init(&r, buf, sizeof(buf));
    assert_false(kp_mp_skip(&r));
    assert_int_equal(r.err, KP_MP_EHEAD);
    assert_int_equal(r.err_off, 2);
}

/* A document holding every kind skips whole, and every strict prefix of it
 * fails (never reads past the cut) with an error offset inside the prefix. */
static void test_mp_truncated_at_every_byte(void **state)
{
    (void)state;
    static const uint8_t doc[] = {
        0x8a,                                                            /* map of 10 pairs */
        0xa1, 'a', 0xc0,                                                 /* nil */
        0xa1, 'b', 0xc3,                                                 /* true */
        0xa1, 'c', 0xcd, 0x12, 0x34,                                     /* uint16 */
        0xa1, 'd', 0xd3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe, /* int64 */
        0xa1, 'e', 0xcb, 0x3f, 0xf0, 0,    0,    0,    0,    0,    0,    /* float64 */
        0xa1, 'f', 0xd9, 0x03, 'x',  'y',  'z',                          /* str8 */
        0xa1, 'g', 0xc5, 0x00, 0x02, 0xaa, 0xbb,                         /* bin16 */
        0xa1, 'h', 0xd5, 0x01, 0x10, 0x20,                               /* fixext2 */
        0xa1, 'i', 0xdc, 0x00, 0x02, 0x91, 0x90, 0x80,                   /* array16 [[[]], {}] */
        0xa1, 'j', 0xc7, 0x01, 0x07, 0xee,                               /* ext8 */
    };
    struct kp_mp_reader r;
    kp_mp_reader_init(&r, doc, sizeof(doc));
    assert_true(kp_mp_skip(&r));
    assert_int_equal(kp_mp_left(&r), 0);
    for (size_t cut = 0; cut < sizeof(doc); cut++) {
        kp_mp_reader_init(&r, doc, cut);
        assert_false(kp_mp_skip(&r));
        assert_true(r.err == KP_MP_EHEAD || r.err == KP_MP_EPAYLOAD || r.err == KP_MP_ECOUNT);
        assert_true(r.err_off < cut || (cut == 0 && r.err_off == 0));
        assert_true(r.p <= r.end);
    }
}

/* Failed reads name the error and the offset of the value at fault. */
static void test_mp_error_offsets(void **state)
{
    (void)state;
    static const struct {
        const char *bytes;
        size_t len;
        enum kp_mp_err err;
        size_t off;
    } cases[] = {
        {"", 0, KP_MP_EHEAD, 0},
        {"\x92\x01\xd9\x05"
         "ab",
         6, KP_MP_EPAYLOAD, 2},                                  /* str8 cut inside its bytes */
        {"\x92\x01\xcd\x01", 4, KP_MP_EHEAD, 2},                 /* uint16 cut inside its head */
        {"\x91\x93\x01\x02", 4, KP_MP_ECOUNT, 1},                /* inner array claims 3 of 2 */
        {"\x92\xa1z\xdb\xff\xff\xff\xff", 8, KP_MP_EPAYLOAD, 3}, /* str32 claims 4 GiB */
        {"\x81\xa1k\xdf\x00\x00\x00\x01", 8, KP_MP_ECOUNT, 3},   /* map32 with no room */
        {"\x91\xc7\x02\x01\x00", 5, KP_MP_EPAYLOAD, 1},          /* ext8: type byte + 1 of 2 */
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        struct kp_mp_reader r;
        kp_mp_reader_init(&r, cases[c].bytes, cases[c].len);
        assert_false(kp_mp_skip(&r));
        assert_int_equal(r.err, cases[c].err);
        assert_int_equal(r.err_off, cases[c].off);
    }
}

/* Containers claiming billions of elements and payloads claiming gigabytes
 * are refused from their heads, without one allocation. */
static void test_mp_skip_huge_counts_without_allocation(void **state)
{
    (void)state;
    static const struct {
        const char *bytes;
        size_t len;
    } cases[] = {
        {"\xdd\xff\xff\xff\xff", 5},                      /* array32 */
        {"\xdf\xff\xff\xff\xff", 5},                      /* map32 */
        {"\x91\x91\xdd\xff\xff\xff\xff\x00\x00", 9},      /* nested, a few bytes left */
        {"\xdb\xff\xff\xff\xff", 5},                      /* str32 */
        {"\xc6\xff\xff\xff\xff", 5},                      /* bin32 */
        {"\xc9\xff\xff\xff\xff\x01", 6},                  /* ext32 */
        {"\xdf\x80\x00\x00\x00\xdd\x80\x00\x00\x00", 10}, /* 2^31 pairs of arrays */
    };
    unsigned long before = kp_alloc_count();
    kp_alloc_fail_after(0);
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        struct kp_mp_reader r;
        kp_mp_reader_init(&r, cases[c].bytes, cases[c].len);
        assert_false(kp_mp_skip(&r));
        assert_true(r.err == KP_MP_ECOUNT || r.err == KP_MP_EPAYLOAD);
    }
    kp_alloc_fail_reset();
    assert_int_equal(kp_alloc_count(), before);
}

/* There is no depth limit to hit: skip keeps a counter, not a stack, so a
 * value nested 200,000 deep skips in one pass, and the same nesting cut
 * short fails cleanly; depth is bounded only by the input's length. */
static void test_mp_skip_depth_bounded_by_input(void **state)
{
    (void)state;
    enum { DEPTH = 200000 };
    uint8_t *doc = malloc(DEPTH + 2);
    assert_non_null(doc);
    memset(doc, 0x91, DEPTH); /* [[[...]]] */
    doc[DEPTH] = 0xc0;
    struct kp_mp_reader r;
    kp_mp_reader_init(&r, doc, DEPTH + 1);
    assert_true(kp_mp_skip(&r));
    assert_int_equal(kp_mp_offset(&r), DEPTH + 1);

    kp_mp_reader_init(&r, doc, DEPTH);
    assert_false(kp_mp_skip(&r));
    assert_int_equal(r.err, KP_MP_ECOUNT);
    assert_int_equal(r.err_off, DEPTH - 1);

    /* Maps nest too: {nil: {nil: ... {nil: nil}}}, then a byte left unread. */
    for (size_t i = 0; i < DEPTH; i += 2) {
        doc[i] = 0x81;
        doc[i + 1] = 0xc0;
    }
    doc[DEPTH] = 0xc0;
    doc[DEPTH + 1] = 'X';
    kp_mp_reader_init(&r, doc, DEPTH + 2);
    assert_true(kp_mp_skip(&r));
    assert_int_equal(kp_mp_offset(&r), DEPTH + 1);
    free(doc);
}

/* kp_mp_read_str and kp_mp_read_bin return the bytes in place, and refuse
 * another kind, a length over the limit and a cut payload, each at the head. */
static void test_mp_read_str_and_bin(void **state)
{
    (void)state;
    const uint8_t buf[] = {0xa3, 'a', 'b', 'c', 0xc4, 0x02, 0x00, 0xff, 0x07, 0xa4, 'x', 'y'};
    struct kp_mp_reader r;
    const uint8_t *p = NULL;
    size_t n = 0;
    kp_mp_reader_init(&r, buf, sizeof(buf));
    assert_true(kp_mp_read_str(&r, 3, &p, &n));
    assert_int_equal(n, 3);
    assert_memory_equal(p, "abc", 3);
    assert_ptr_equal(p, buf + 1);
    assert_false(kp_mp_read_str(&r, 100, &p, &n)); /* bin is not a string */
    assert_int_equal(r.err, KP_MP_ETYPE);
    assert_int_equal(r.err_kind, KP_MP_BIN);
    assert_int_equal(r.err_off, 4);

    kp_mp_reader_init(&r, buf + 4, sizeof(buf) - 4);
    assert_false(kp_mp_read_bin(&r, 1, &p, &n));
    assert_int_equal(r.err, KP_MP_ERANGE);
    assert_int_equal(r.err_off, 0);
    kp_mp_reader_init(&r, buf + 4, sizeof(buf) - 4);
    assert_true(kp_mp_read_bin(&r, 2, &p, &n));
    assert_int_equal(n, 2);
    assert_memory_equal(p, "\x00\xff", 2);
    assert_false(kp_mp_read_bin(&r, 100, &p, &n)); /* an integer */
    assert_int_equal(r.err, KP_MP_ETYPE);
    assert_int_equal(r.err_kind, KP_MP_INT);
    assert_int_equal(r.err_off, 4);
    assert_false(kp_mp_read_str(&r, 100, &p, &n)); /* 4 bytes claimed, 2 left */
    assert_int_equal(r.err, KP_MP_EPAYLOAD);
    assert_int_equal(r.err_off, 5);

    kp_mp_reader_init(&r, "", 0);
    assert_false(kp_mp_read_str(&r, 100, &p, &n));
    assert_int_equal(r.err, KP_MP_EHEAD);
}

/* kp_mp_read_uint takes integers in 0..max, whatever their encoding, and
 * refuses negatives, larger values and other kinds. */
static void test_mp_read_uint(void **state)
{
    (void)state;
    const uint8_t buf[] = {0x05, 0xd0, 0x05, 0xcf, 0, 0, 0, 1, 0, 0, 0, 0, 0xff, 0xcc, 0x0a, 0xc0};
    struct kp_mp_reader r;
    uint64_t v = 0;
    kp_mp_reader_init(&r, buf, sizeof(buf));
    assert_true(kp_mp_read_uint(&r, 5, &v));
    assert_true(v == 5);
    assert_true(kp_mp_read_uint(&r, 5, &v)); /* int8 5 */
    assert_true(v == 5);
    assert_true(kp_mp_read_uint(&r, UINT64_MAX, &v));
    assert_true(v == 0x100000000);
    assert_false(kp_mp_read_uint(&r, 100, &v)); /* -1 */
    assert_int_equal(r.err, KP_MP_ERANGE);
    assert_int_equal(r.err_off, 12);
    assert_false(kp_mp_read_uint(&r, 9, &v)); /* 10 */
    assert_int_equal(r.err, KP_MP_ERANGE);
    assert_int_equal(r.err_off, 13);
    assert_false(kp_mp_read_uint(&r, 9, &v)); /* nil */
    assert_int_equal(r.err, KP_MP_ETYPE);
    assert_int_equal(r.err_kind, KP_MP_NIL);
}

/* kp_mp_take hands out bytes in place and, when too few remain, consumes
 * nothing and reports where they would have started. */
static void test_mp_take(void **state)
{
    (void)state;
    const uint8_t buf[] = {1, 2, 3};
    const uint8_t *p = NULL;
    struct kp_mp_reader r;
    kp_mp_reader_init(&r, buf, sizeof(buf));
    assert_true(kp_mp_take(&r, 2, &p));
    assert_ptr_equal(p, buf);
    assert_false(kp_mp_take(&r, 2, &p));
    assert_int_equal(r.err, KP_MP_EPAYLOAD);
    assert_int_equal(r.err_off, 2);
    assert_int_equal(kp_mp_offset(&r), 2);
    assert_true(kp_mp_take(&r, 1, &p));
    assert_true(kp_mp_take(&r, 0, &p));
    assert_int_equal(kp_mp_left(&r), 0);
}

/* Kinds have the names the decoders put in their messages. */
static void test_mp_kind_names(void **state)
{
    (void)state;
    assert_string_equal(kp_mp_kind_name(KP_MP_NIL), "nil");
    assert_string_equal(kp_mp_kind_name(KP_MP_STR), "a string");
    assert_string_equal(kp_mp_kind_name(KP_MP_EXT), "an extension");
    assert_string_equal(kp_mp_kind_name((enum kp_mp_kind)99), "an unknown kind");
}

/* --- bytes (bytes.c) -------------------------------------------------------- */

/* Little-endian fields put and get the low n bytes, least significant first. */
static void test_bytes_little_endian(void **state)
{
    (void)state;
    uint8_t p[9] = {0};
    kp_put_le(p, 0x0102030405060708, 8);
    assert_memory_equal(p, "\x08\x07\x06\x05\x04\x03\x02\x01\x00", 9);
    assert_true(kp_get_le(p, 8) == 0x0102030405060708);
    assert_true(kp_get_le(p, 2) == 0x0708);
    assert_true(kp_get_le(p + 6, 3) == 0x0102);
    kp_put_le(p, 0xaabbccdd, 2); /* only the low bytes */
    assert_memory_equal(p, "\xdd\xcc\x06", 3);
    for (size_t n = 1; n <= 8; n++) {
        uint64_t v = UINT64_C(0xfedcba9876543210) >> (64 - 8 * n);
        kp_put_le(p, v, n);
        assert_true(kp_get_le(p, n) == v);
    }
    assert_true(kp_get_le(p, 0) == 0);
}

/* Hex is lower case, two digits a byte, NUL-terminated. */
static void test_bytes_hex_encode(void **state)
{
    (void)state;
    char out[16];
    memset(out, '#', sizeof(out));
    kp_hex_encode("\x00\x01\xab\xff\x7f", 5, out);
    assert_string_equal(out, "0001abff7f");
    assert_int_equal(out[11], '#');
    kp_hex_encode("", 0, out);
    assert_string_equal(out, "");
}

/* SipHash-2-4-128: the reference vector for the empty input under the key
 * 00..0f, and the same tags as OpenSSL's SIPHASH for every length up to
 * 80 bytes (each tail length, one to ten whole words) under random keys. */
static void test_siphash128(void **state)
{
    (void)state;
    uint8_t key[KP_SIPHASH_KEY_LEN], in[80], tag[KP_SIPHASH_TAG_LEN], want[KP_SIPHASH_TAG_LEN];
    for (size_t i = 0; i < sizeof(key); i++)
        key[i] = (uint8_t)i;
    static const uint8_t empty[KP_SIPHASH_TAG_LEN] = {0xa3, 0x81, 0x7f, 0x04, 0xba, 0x25,
                                                      0xa8, 0xe6, 0x6d, 0xf6, 0x72, 0x14,
                                                      0xc7, 0x55, 0x02, 0x93};
    kp_siphash128(key, "", 0, tag);
    assert_memory_equal(tag, empty, sizeof(tag));
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "SIPHASH", NULL);
    assert_non_null(mac);
    for (size_t len = 0; len <= sizeof(in); len++) {
        assert_int_equal(kp_random_bytes(key, sizeof(key)), KP_OK);
        assert_int_equal(kp_random_bytes(in, sizeof(in)), KP_OK);
        EVP_MAC_CTX *ctx = EVP_MAC_CTX_new(mac);
        size_t size = KP_SIPHASH_TAG_LEN, n = 0;
        OSSL_PARAM params[] = {OSSL_PARAM_construct_size_t(OSSL_MAC_PARAM_SIZE, &size),
                               OSSL_PARAM_construct_end()};
        assert_non_null(ctx);
        assert_int_equal(EVP_MAC_init(ctx, key, sizeof(key), params), 1);
        assert_int_equal(EVP_MAC_update(ctx, in, len), 1);
        assert_int_equal(EVP_MAC_final(ctx, want, &n, sizeof(want)), 1);
        assert_int_equal(n, sizeof(want));
        EVP_MAC_CTX_free(ctx);
        kp_siphash128(key, in, len, tag);
        assert_memory_equal(tag, want, sizeof(tag));
    }
    EVP_MAC_free(mac);
}

/* Hex digits of either case have their values; nothing else is a digit. */
static void test_bytes_hex_value(void **state)
{
    (void)state;
    assert_int_equal(kp_hex_value('0'), 0);
    assert_int_equal(kp_hex_value('9'), 9);
    assert_int_equal(kp_hex_value('a'), 10);
    assert_int_equal(kp_hex_value('F'), 15);
    for (int c = -128; c < 128; c++) {
        bool digit = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
        assert_int_equal(kp_hex_value((char)c) >= 0, digit);
    }
}

/* Exactly RFC 9110's tchar bytes are allowed in a field name. */
static void test_bytes_tchar(void **state)
{
    (void)state;
    for (int c = 0; c < 256; c++) {
        bool want = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
        assert_int_equal(kp_is_tchar((unsigned char)c), want);
    }
}

/* @finds (a test made 8 bytes at a time) says yes exactly when @hit says
 * so of a byte: each byte value at each offset of 1 to 40 bytes, in plain
 * text, then with @before filling the bytes ahead of it and @after those
 * behind (neither a hit; bytes that make the word test look closer). */
static void check_byte_finder(bool (*finds)(const void *, size_t), bool (*hit)(int c), char before,
                              char after)
{
    char v[40];
    assert_false(finds("", 0));
    for (size_t n = 1; n <= sizeof(v); n++)
        for (size_t at = 0; at < n; at++)
            for (int c = 0; c < 256; c++) {
                memset(v, 'a', n);
                v[at] = (char)c;
                assert_int_equal(finds(v, n), hit(c));
                memset(v, before, at);
                memset(v + at + 1, after, n - at - 1);
                assert_int_equal(finds(v, n), hit(c));
            }
}

static bool value_refused(const void *p, size_t n)
{
    return !kp_field_value_ok(p, n);
}

static bool control_but_tab(int c)
{
    return (c < 0x20 && c != '\t') || c == 0x7f;
}

/* A field value is refused for any control byte but a tab, and for DEL,
 * wherever it is; a tab before it (the 8-byte pass must not step over
 * one) and obs-text after it change nothing. */
static void test_bytes_field_value_ok(void **state)
{
    (void)state;
    check_byte_finder(value_refused, control_but_tab, '\t', (char)0xff);
}

static bool cr_lf_nul(int c)
{
    return c == '\r' || c == '\n' || c == 0;
}

/* CR, LF and NUL are found wherever they are, and nothing else is, even
 * among bytes next to them in value (0x0b, 0x80). */
static void test_bytes_has_crlf_nul(void **state)
{
    (void)state;
    check_byte_finder(kp_has_crlf_nul, cr_lf_nul, 0x0b, (char)0x80);
}

/* UTF-8 sequences are well formed exactly as Unicode's table 3-7 says: the
 * boundaries of every row, overlong forms, surrogates, code points past
 * U+10FFFF, missing continuation bytes and a cut input. */
static void test_bytes_utf8_len(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        size_t n, want;
    } cases[] = {
        {"", 0, 0},
        {"\x00", 1, 1},
        {"A", 1, 1},
        {"\x7f", 1, 1},
        {"\x80", 1, 0},
        {"\xc1\xbf", 2, 0}, /* overlong */
        {"\xc2\x80", 2, 2},
        {"\xdf\xbf", 2, 2},
        {"\xc2\x7f", 2, 0},
        {"\xc2\xc0", 2, 0},
        {"\xc2", 1, 0},
        {"\xe0\x9f\xbf", 3, 0}, /* overlong */
        {"\xe0\xa0\x80", 3, 3},
        {"\xed\x9f\xbf", 3, 3},
        {"\xed\xa0\x80", 3, 0}, /* surrogate */
        {"\xee\x80\x80", 3, 3},
        {"\xef\xbf\xbf", 3, 3},
        {"\xef\xbf", 2, 0},
        {"\xe1\x80\x7f", 3, 0},
        {"\xf0\x8f\xbf\xbf", 4, 0}, /* overlong */
        {"\xf0\x90\x80\x80", 4, 4},
        {"\xf4\x8f\xbf\xbf", 4, 4},
        {"\xf4\x90\x80\x80", 4, 0}, /* past U+10FFFF */
        {"\xf5\x80\x80\x80", 4, 0},
        {"\xf1\x80\x80\xc0", 4, 0},
        {"\xf1\x80\x80", 3, 0},
        {"\xff", 1, 0},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++)
        assert_int_equal(kp_utf8_len(cases[c].s, cases[c].n), cases[c].want);
    assert_int_equal(kp_utf8_len("\xc3\xa9tait", 6), 2); /* only the first sequence */
    /* The first offending byte of a whole text (libfyaml hangs on some). */
    assert_int_equal(kp_utf8_invalid_at("a: \xc3\xa9\n", 6), 6);
    assert_int_equal(kp_utf8_invalid_at("%\xff\n", 3), 1);
    assert_int_equal(kp_utf8_invalid_at("ok \xe2\x82", 5), 3);
    assert_int_equal(kp_utf8_invalid_at("", 0), 0);
}

/* --- zstd (zstd_frame.c) ---------------------------------------------------- */

/* One whole frame declaring its size passes; another size, bytes after the
 * frame, a cut frame, two frames, no declared size and no frame do not. */
static void test_zstd_frame_check(void **state)
{
    (void)state;
    char raw[1000];
    for (size_t i = 0; i < sizeof(raw); i++)
        raw[i] = (char)('a' + i % 7);
    uint8_t z[2 * 1200];
    size_t n = ZSTD_compress(z, 1200, raw, sizeof(raw), 3);
    assert_false(ZSTD_isError(n));
    assert_int_equal(kp_zstd_frame_check(z, n, sizeof(raw)), KP_ZSTD_FRAME_OK);
    assert_int_equal(kp_zstd_frame_check(z, n, sizeof(raw) - 1), KP_ZSTD_FRAME_SIZE);
    assert_int_equal(kp_zstd_frame_check(z, n - 1, sizeof(raw)), KP_ZSTD_FRAME_EXTENT);
    memcpy(z + n, z, n);
    assert_int_equal(kp_zstd_frame_check(z, n + 1, sizeof(raw)), KP_ZSTD_FRAME_EXTENT);
    assert_int_equal(kp_zstd_frame_check(z, 2 * n, sizeof(raw)), KP_ZSTD_FRAME_EXTENT);
    assert_int_equal(kp_zstd_frame_check(z, 0, 0), KP_ZSTD_FRAME_SIZE);
    assert_int_equal(kp_zstd_frame_check(raw, sizeof(raw), sizeof(raw)), KP_ZSTD_FRAME_SIZE);

    ZSTD_CCtx *c = ZSTD_createCCtx();
    assert_non_null(c);
    ZSTD_CCtx_setParameter(c, ZSTD_c_contentSizeFlag, 0);
    ZSTD_outBuffer out = {z, sizeof(z), 0};
    ZSTD_inBuffer in = {raw, sizeof(raw), 0};
    assert_int_equal(ZSTD_compressStream2(c, &out, &in, ZSTD_e_end), 0);
    ZSTD_freeCCtx(c);
    assert_int_equal(kp_zstd_frame_check(z, out.pos, sizeof(raw)), KP_ZSTD_FRAME_SIZE);
}

/* zstd's memory comes from kp_malloc: creating a context counts, injected
 * failures reach both the contexts and zstd's later allocations, and zstd's
 * allocation error becomes KP_ENOMEM. */
static void test_zstd_memory_is_ours(void **state)
{
    (void)state;
    unsigned long before = kp_alloc_count();
    ZSTD_DCtx *d = kp_zstd_dctx_new();
    assert_non_null(d);
    assert_true(kp_alloc_count() > before);
    ZSTD_freeDCtx(d);

    kp_alloc_fail_after(0);
    assert_null(kp_zstd_dctx_new());
    assert_null(kp_zstd_cctx_new());
    kp_alloc_fail_reset();

    ZSTD_CCtx *c = kp_zstd_cctx_new();
    assert_non_null(c);
    char raw[256] = "abc", z[512];
    kp_alloc_fail_after(0); /* the workspace is allocated on first use */
    size_t n = ZSTD_compressCCtx(c, z, sizeof(z), raw, sizeof(raw), 3);
    kp_alloc_fail_reset();
    assert_true(ZSTD_isError(n));
    assert_int_equal(kp_zstd_err(n, KP_EIO), KP_ENOMEM);
    n = ZSTD_compressCCtx(c, z, 1, raw, sizeof(raw), 3); /* destination too small */
    assert_true(ZSTD_isError(n));
    assert_int_equal(kp_zstd_err(n, KP_EIO), KP_EIO);
    ZSTD_freeCCtx(c);
}

struct named {
    const char *prefix;
    int index;
    char got[32];
};

static void *name_self(void *arg)
{
    struct named *n = arg;
    kp_thread_name(n->prefix, n->index);
    if (pthread_getname_np(pthread_self(), n->got, sizeof(n->got)) != 0)
        n->got[0] = '\0';
    return NULL;
}

static void check_thread_name(const char *prefix, int index, const char *want)
{
    struct named n = {prefix, index, ""};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, name_self, &n), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_string_equal(n.got, want);
}

/* What `top -H` shows: the prefix, the index after a dash, and a long name
 * cut at the kernel's 15 bytes rather than refused (which would leave the
 * process's name on the thread). */
static void test_thread_name(void **state)
{
    (void)state;
    check_thread_name("kp-worker", 3, "kp-worker-3");
    check_thread_name("kp-spool", -1, "kp-spool");
    check_thread_name("kp-worker", 12345, "kp-worker-12345");
    check_thread_name("kp-worker", 123456, "kp-worker-12345");
    check_thread_name("a-very-long-thread-name", -1, "a-very-long-thr");
}

/* RFC 9110's example and its neighbours; anything not IMF-fixdate is
 * refused rather than misread. */
static void test_clock_parse_http_date(void **state)
{
    (void)state;
    int64_t ms = 0;
    assert_int_equal(kp_parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT", &ms), KP_OK);
    assert_int_equal(ms, 784111777000);
    assert_int_equal(kp_parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT", &ms), KP_OK);
    assert_int_equal(ms, 0);
    assert_int_equal(kp_parse_http_date("Tue, 29 Feb 2028 23:59:59 GMT", &ms), KP_OK);
    assert_int_equal(ms, 1835481599000);
    static const char *const bad[] = {
        "Sunday, 06-Nov-94 08:49:37 GMT", /* RFC 850 */
        "Sun Nov  6 08:49:37 1994",       /* asctime */
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sun, 06 Nov 1994 08:49:37 GMT ",
        "Sun, 31 Feb 1994 08:49:37 GMT",
        "Sun, 06 Nox 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 24:49:37 GMT",
        "Xyz, 06 Nov 1994 08:49:37 GMT",
        "Sun, 0x Nov 1994 08:49:37 GMT",
        "",
        "120",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (kp_parse_http_date(bad[i], &ms) != KP_EINVAL)
            fail_msg("accepted \"%s\"", bad[i]);
    assert_int_equal(kp_parse_http_date(NULL, &ms), KP_EINVAL);
}

int main(void)
{
#define UNIT_TEST(f) cmocka_unit_test_teardown(f, injection_teardown)
    const struct CMUnitTest alloc_tests[] = {
        UNIT_TEST(test_alloc_wrappers),
        UNIT_TEST(test_alloc_zero_size),
        UNIT_TEST(test_alloc_fail_after),
        UNIT_TEST(test_alloc_fail_after_zero_and_negative),
        UNIT_TEST(test_alloc_realloc_failure_keeps_block),
        UNIT_TEST(test_alloc_count),
        UNIT_TEST(test_arena_many_aligned_disjoint),
        UNIT_TEST(test_arena_default_chunk),
        UNIT_TEST(test_arena_big_allocations),
        UNIT_TEST(test_arena_big_keeps_head_space),
        UNIT_TEST(test_arena_strndup),
        UNIT_TEST(test_arena_free_then_reuse),
        UNIT_TEST(test_arena_alloc_failure),
        UNIT_TEST(test_arena_alloc_overflow_returns_null),
        UNIT_TEST(test_buf_append),
        UNIT_TEST(test_buf_append_empty),
        UNIT_TEST(test_buf_append_binary),
        UNIT_TEST(test_buf_growth_large),
        UNIT_TEST(test_buf_appendf),
        UNIT_TEST(test_buf_appendf_long_into_empty),
        UNIT_TEST(test_buf_consume),
        UNIT_TEST(test_buf_reserve),
        UNIT_TEST(test_buf_reserve_overflow),
        UNIT_TEST(test_buf_failure_leaves_buffer_intact),
        UNIT_TEST(test_buf_failure_on_empty),
    };
    const struct CMUnitTest error_tests[] = {
        UNIT_TEST(test_err_names_and_messages),
        UNIT_TEST(test_err_out_of_range),
        UNIT_TEST(test_err_from_errno),
        UNIT_TEST(test_err_from_uv),
    };
    const struct CMUnitTest clock_tests[] = {
        UNIT_TEST(test_clock_monotonic),           UNIT_TEST(test_clock_unix_ms),
        UNIT_TEST(test_clock_format_known_epochs), UNIT_TEST(test_clock_format_before_epoch),
        UNIT_TEST(test_clock_random_hex),          UNIT_TEST(test_clock_random_hex_charset),
        UNIT_TEST(test_clock_random_hex_too_long), UNIT_TEST(test_clock_random_bytes),
        UNIT_TEST(test_clock_parse_http_date),
    };
    const struct CMUnitTest json_tests[] = {
        UNIT_TEST(test_json_escape_specials),
        UNIT_TEST(test_json_escape_control),
        UNIT_TEST(test_json_escape_utf8),
        UNIT_TEST(test_json_escape_appends),
        UNIT_TEST(test_json_escape_roundtrip_ascii),
        UNIT_TEST(test_json_escape_failure),
        UNIT_TEST(test_json_error_body_exact),
        UNIT_TEST(test_json_error_body_null_code),
        UNIT_TEST(test_json_error_body_escapes),
        UNIT_TEST(test_json_error_body_alloc_failure),
        UNIT_TEST(test_json_dumps),
    };
    const struct CMUnitTest mpack_tests[] = {
        UNIT_TEST(test_mp_every_head),
        UNIT_TEST(test_mp_bad_type_byte),
        UNIT_TEST(test_mp_truncated_at_every_byte),
        UNIT_TEST(test_mp_error_offsets),
        UNIT_TEST(test_mp_skip_huge_counts_without_allocation),
        UNIT_TEST(test_mp_skip_depth_bounded_by_input),
        UNIT_TEST(test_mp_read_str_and_bin),
        UNIT_TEST(test_mp_read_uint),
        UNIT_TEST(test_mp_take),
        UNIT_TEST(test_mp_kind_names),
    };
    const struct CMUnitTest bytes_tests[] = {
        UNIT_TEST(test_bytes_little_endian), UNIT_TEST(test_bytes_hex_encode),
        UNIT_TEST(test_siphash128),          UNIT_TEST(test_bytes_hex_value),
        UNIT_TEST(test_bytes_tchar),         UNIT_TEST(test_bytes_field_value_ok),
        UNIT_TEST(test_bytes_has_crlf_nul),  UNIT_TEST(test_bytes_utf8_len),
        UNIT_TEST(test_zstd_frame_check),    UNIT_TEST(test_zstd_memory_is_ours),
        UNIT_TEST(test_thread_name),
    };
#undef UNIT_TEST
#define LOG_TEST(f) cmocka_unit_test_setup_teardown(f, log_setup, log_teardown)
    const struct CMUnitTest log_tests[] = {
        LOG_TEST(test_log_line_shape),
        LOG_TEST(test_log_escapes_message),
        LOG_TEST(test_log_level_filter),
        LOG_TEST(test_log_parse_level),
        LOG_TEST(test_log_trace_env),
        LOG_TEST(test_log_truncates_long_message),
        LOG_TEST(test_log_truncates_worst_case_escaping),
        LOG_TEST(test_log_truncates_utf8_on_boundary),
        LOG_TEST(test_log_default_sink_is_stderr),
        LOG_TEST(test_redact_sk_keys),
        LOG_TEST(test_redact_bearer),
        LOG_TEST(test_redact_api_key_names),
        LOG_TEST(test_redact_kp_tokens),
        LOG_TEST(test_redact_several_in_one_line),
        LOG_TEST(test_redact_leaves_ordinary_text),
        LOG_TEST(test_redact_never_longer),
        LOG_TEST(test_redact_after_json_escape),
        LOG_TEST(test_redact_whitespace_around_separator),
        LOG_TEST(test_log_redacts_keys),
        LOG_TEST(test_log_registered_secret),
        LOG_TEST(test_log_several_registered_secrets),
        LOG_TEST(test_log_registered_secret_by_length),
        LOG_TEST(test_log_secret_short_and_clear),
        LOG_TEST(test_log_secret_split_by_escaping),
        LOG_TEST(test_log_key_next_to_escapes),
    };
#undef LOG_TEST
#define METRICS_TEST(f) cmocka_unit_test_setup_teardown(f, metrics_setup, metrics_setup)
    const struct CMUnitTest metrics_tests[] = {
        METRICS_TEST(test_metrics_requests_total),
        METRICS_TEST(test_metrics_family),
        METRICS_TEST(test_metrics_family_each_gauge),
        METRICS_TEST(test_metrics_family_histogram),
        METRICS_TEST(test_metrics_histogram_exact),
        METRICS_TEST(test_metrics_histogram_boundaries),
        METRICS_TEST(test_metrics_odd_status_and_route),
        METRICS_TEST(test_metrics_connections),
        METRICS_TEST(test_metrics_named),
        METRICS_TEST(test_metrics_null_metric),
        METRICS_TEST(test_metrics_named_table_full),
        METRICS_TEST(test_metrics_build_info),
        METRICS_TEST(test_metrics_reset),
        METRICS_TEST(test_metrics_render_alloc_failure),
        METRICS_TEST(test_metrics_route_cardinality_bounded),
        METRICS_TEST(test_metrics_route_overflow_counts_all),
        METRICS_TEST(test_metrics_route_matched_by_content),
    };
#undef METRICS_TEST
    int failed = 0;
    failed += cmocka_run_group_tests_name("alloc", alloc_tests, NULL, NULL);
    failed += cmocka_run_group_tests_name("error", error_tests, NULL, NULL);
    failed += cmocka_run_group_tests_name("clock", clock_tests, NULL, NULL);
    failed += cmocka_run_group_tests_name("json", json_tests, NULL, NULL);
    failed += cmocka_run_group_tests_name("log", log_tests, NULL, NULL);
    failed += cmocka_run_group_tests_name("metrics", metrics_tests, NULL, NULL);
    failed += cmocka_run_group_tests_name("mpack", mpack_tests, NULL, NULL);
    failed += cmocka_run_group_tests_name("bytes and zstd", bytes_tests, NULL, NULL);
    return failed ? 1 : 0;
}

/* The hash tables rollup days and usage query results share
 * (rollup_internal.h): interned strings, rows keyed by (start, dimensions),
 * and the byte order strings are sorted in. */
#include <string.h>

#include "meter/rollup_internal.h"

/* --- hashing ------------------------------------------------------------- */

uint32_t kp_rollup_hash_bytes(const char *s, size_t n)
{
    uint64_t h = 0x9e3779b97f4a7c15u ^ n, w;
    for (; n >= 8; s += 8, n -= 8) {
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xc4ceb9fe1a85ec53u;
        h ^= h >> 31;
    }
    w = 0;
    memcpy(&w, s, n);
    return (uint32_t)kp_rollup_mix(h ^ w);
}

uint32_t kp_rollup_key_hash(int64_t start, const uint32_t *dim)
{
    uint64_t h = (uint64_t)start * 0x9e3779b97f4a7c15u;
    for (int i = 0; i < KP_USAGE_DIMS; i += 2) {
        h = (h ^ ((uint64_t)dim[i] << 32 | dim[i + 1])) * 0xc4ceb9fe1a85ec53u;
        h ^= h >> 31;
    }
    return (uint32_t)kp_rollup_mix(h);
}

/* --- string table -------------------------------------------------------- */

/* Strings by id (in order of interning), found by an open-addressing table
 * of ids. Truncating forgets the last ones (their bytes stay in the arena
 * until the table is freed). */
void kp_strtab_init(struct kp_strtab *t)
{
    memset(t, 0, sizeof(*t));
    kp_arena_init(&t->arena, 16384);
}

void kp_strtab_free(struct kp_strtab *t)
{
    kp_arena_free(&t->arena);
    kp_free(t->v);
    kp_free(t->slots);
}

/* True with *id when found; else *slot is where it would go. */
bool kp_strtab_lookup(const struct kp_strtab *t, const char *s, size_t len, uint32_t hash,
                      uint32_t *slot, uint32_t *id)
{
    if (t->slots == NULL)
        return false;
    for (uint32_t i = hash & t->mask;; i = (i + 1) & t->mask) {
        uint32_t v = t->slots[i];
        if (v == 0) {
            *slot = i;
            return false;
        }
        const struct kp_strtab_entry *e = &t->v[v - 1];
        if (e->hash == hash && e->len == len && memcmp(e->s, s, len) == 0) {
            *id = v - 1;
            return true;
        }
    }
}

static void strtab_reindex(struct kp_strtab *t)
{
    memset(t->slots, 0, ((size_t)t->mask + 1) * sizeof(*t->slots));
    for (uint32_t id = 0; id < t->n; id++) {
        uint32_t i = t->v[id].hash & t->mask;
        while (t->slots[i] != 0)
            i = (i + 1) & t->mask;
        t->slots[i] = id + 1;
    }
}

static int strtab_grow(struct kp_strtab *t)
{
    if (t->n == t->cap) {
        if (t->cap >= UINT32_MAX / 4)
            return KP_ENOMEM;
        uint32_t cap = t->cap ? t->cap * 2 : 64;
        struct kp_strtab_entry *v = kp_realloc(t->v, cap * sizeof(*v));
        if (v == NULL)
            return KP_ENOMEM;
        t->v = v;
        t->cap = cap;
    }
    if (kp_rollup_slots_too_few(t->n, t->mask, t->slots)) {
        size_t nslots = t->slots ? ((size_t)t->mask + 1) * 2 : TABLE_MIN_SLOTS;
        uint32_t *slots = kp_malloc(nslots * sizeof(*slots));
        if (slots == NULL)
            return KP_ENOMEM;
        kp_free(t->slots);
        t->slots = slots;
        t->mask = (uint32_t)(nslots - 1);
        strtab_reindex(t);
    }
    return KP_OK;
}

int kp_strtab_intern(struct kp_strtab *t, const char *s, size_t len, uint32_t *id)
{
    uint32_t hash = kp_rollup_hash_bytes(s, len), slot = 0;
    if (kp_strtab_lookup(t, s, len, hash, &slot, id))
        return KP_OK;
    if (t->n == t->cap || kp_rollup_slots_too_few(t->n, t->mask, t->slots)) {
        if (strtab_grow(t) != KP_OK)
            return KP_ENOMEM;
        kp_strtab_lookup(t, s, len, hash, &slot, id);
    }
    char *copy = kp_arena_strndup(&t->arena, s, len);
    if (copy == NULL)
        return KP_ENOMEM;
    t->v[t->n] = (struct kp_strtab_entry){copy, (uint32_t)len, hash};
    t->slots[slot] = t->n + 1;
    *id = t->n++;
    return KP_OK;
}

void kp_strtab_truncate(struct kp_strtab *t, uint32_t n)
{
    if (n == t->n)
        return;
    t->n = n;
    strtab_reindex(t);
}

/* --- row tables ---------------------------------------------------------- */

/* Rows of one level in order of creation, found by an open-addressing table
 * whose slots hold a row's hash (high half) and its index + 1 (low half). */
void kp_row_table_free(struct kp_row_table *t)
{
    for (uint32_t i = 0; i < t->n; i++)
        kp_rollup_metrics_free(&t->rows[i].m);
    kp_free(t->rows);
    kp_free(t->slots);
    memset(t, 0, sizeof(*t));
}

static bool key_equal(const struct kp_rollup_row *r, int64_t start, const uint32_t *dim)
{
    return r->start_ms == start && memcmp(r->dim, dim, sizeof(r->dim)) == 0;
}

static void table_reindex(struct kp_row_table *t)
{
    memset(t->slots, 0, ((size_t)t->mask + 1) * sizeof(*t->slots));
    for (uint32_t idx = 0; idx < t->n; idx++) {
        uint32_t h = kp_rollup_key_hash(t->rows[idx].start_ms, t->rows[idx].dim);
        uint32_t i = h & t->mask;
        while (t->slots[i] != 0)
            i = (i + 1) & t->mask;
        t->slots[i] = (uint64_t)h << 32 | (idx + 1);
    }
}

static int table_grow(struct kp_row_table *t)
{
    if (t->n == t->cap) {
        if (t->cap >= UINT32_MAX / 4)
            return KP_ENOMEM;
        uint32_t cap = t->cap ? t->cap * 2 : 16;
        struct kp_rollup_row *rows = kp_realloc(t->rows, cap * sizeof(*rows));
        if (rows == NULL)
            return KP_ENOMEM;
        t->rows = rows;
        t->cap = cap;
    }
    if (kp_rollup_slots_too_few(t->n, t->mask, t->slots)) {
        size_t nslots = t->slots ? ((size_t)t->mask + 1) * 2 : TABLE_MIN_SLOTS;
        uint64_t *slots = kp_malloc(nslots * sizeof(*slots));
        if (slots == NULL)
            return KP_ENOMEM;
        kp_free(t->slots);
        t->slots = slots;
        t->mask = (uint32_t)(nslots - 1);
        table_reindex(t);
    }
    return KP_OK;
}

/* The slot holding the row, or the free slot where it would go. */
static uint32_t table_probe(const struct kp_row_table *t, int64_t start, const uint32_t *dim,
                            uint32_t h)
{
    for (uint32_t i = h & t->mask;; i = (i + 1) & t->mask) {
        uint64_t v = t->slots[i];
        if (v == 0)
            return i;
        if ((uint32_t)(v >> 32) == h && key_equal(&t->rows[(uint32_t)v - 1], start, dim))
            return i;
    }
}

/* The index of the row for (@start, @dim), created empty if missing. */
int kp_row_table_upsert(struct kp_row_table *t, int64_t start, const uint32_t *dim, uint32_t *idx)
{
    uint32_t h = kp_rollup_key_hash(start, dim);
    uint32_t slot = t->slots ? table_probe(t, start, dim, h) : 0;
    if (t->slots && t->slots[slot] != 0) {
        *idx = (uint32_t)t->slots[slot] - 1;
        return KP_OK;
    }
    if (t->n == t->cap || kp_rollup_slots_too_few(t->n, t->mask, t->slots)) {
        if (table_grow(t) != KP_OK)
            return KP_ENOMEM;
        slot = table_probe(t, start, dim, h);
    }
    struct kp_rollup_row *r = &t->rows[t->n];
    r->start_ms = start;
    memcpy(r->dim, dim, sizeof(r->dim));
    kp_rollup_metrics_init(&r->m);
    t->slots[slot] = (uint64_t)h << 32 | (t->n + 1);
    *idx = t->n++;
    return KP_OK;
}

/* Forget the rows created after the first @n. */
void kp_row_table_truncate(struct kp_row_table *t, uint32_t n)
{
    if (n == t->n)
        return;
    for (uint32_t i = n; i < t->n; i++)
        kp_rollup_metrics_free(&t->rows[i].m);
    t->n = n;
    table_reindex(t);
}

/* --- byte order ---------------------------------------------------------- */

int kp_str_ref_cmp(const void *a, const void *b)
{
    const struct kp_str_ref *x = a, *y = b;
    int c = memcmp(x->s, y->s, x->len < y->len ? x->len : y->len);
    if (c != 0)
        return c;
    return x->len < y->len ? -1 : x->len > y->len;
}

/* Internal to meter/: the tables rollup.c and query.c share
 * (rollup_table.c). Include meter/meter.h for the API. */
#ifndef KP_METER_ROLLUP_INTERNAL_H
#define KP_METER_ROLLUP_INTERNAL_H

#include "meter/meter.h"

#define TABLE_MIN_SLOTS 64

static inline uint64_t kp_rollup_mix(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdu;
    h ^= h >> 33;
    return h;
}

/* Slots for @n entries at a load of at most 3/4 (a power of two). */
static inline bool kp_rollup_slots_too_few(uint32_t n, uint32_t mask, const void *slots)
{
    return slots == NULL || ((uint64_t)n + 1) * 4 > ((uint64_t)mask + 1) * 3;
}

uint32_t kp_rollup_hash_bytes(const char *s, size_t n);
uint32_t kp_rollup_key_hash(int64_t start, const uint32_t *dim);

/* Strings by id (in order of interning), found by an open-addressing table
 * of ids. Truncating forgets the last ones (their bytes stay in the arena
 * until the table is freed). */
struct kp_strtab_entry {
    const char *s;
    uint32_t len, hash;
};

struct kp_strtab {
    struct kp_arena arena;
    struct kp_strtab_entry *v;
    uint32_t n, cap;
    uint32_t *slots; /* id + 1; 0 is free */
    uint32_t mask;
};

void kp_strtab_init(struct kp_strtab *t);
void kp_strtab_free(struct kp_strtab *t);
/* True with *id when found; else *slot is where it would go. */
bool kp_strtab_lookup(const struct kp_strtab *t, const char *s, size_t len, uint32_t hash,
                      uint32_t *slot, uint32_t *id);
int kp_strtab_intern(struct kp_strtab *t, const char *s, size_t len, uint32_t *id);
void kp_strtab_truncate(struct kp_strtab *t, uint32_t n);

/* Rows in order of creation, found by an open-addressing table whose slots
 * hold a row's hash (high half) and its index + 1 (low half). Zeroed is
 * empty. */
struct kp_row_table {
    struct kp_rollup_row *rows;
    uint32_t n, cap;
    uint64_t *slots; /* 0 is free */
    uint32_t mask;
};

void kp_row_table_free(struct kp_row_table *t);
/* The index of the row for (@start, @dim), created empty if missing. */
int kp_row_table_upsert(struct kp_row_table *t, int64_t start, const uint32_t *dim, uint32_t *idx);
/* Forget the rows created after the first @n. */
void kp_row_table_truncate(struct kp_row_table *t, uint32_t n);

/* A string with its id, sorted in byte order (a prefix first). */
struct kp_str_ref {
    const char *s;
    uint32_t len, id;
};

int kp_str_ref_cmp(const void *a, const void *b);

#endif

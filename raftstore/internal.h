/* raftstore internals shared by its files; nothing outside raftstore/
 * includes this.
 *
 * The registry is described by schemas: one table of fields per entity kind
 * and per command body (registry.c). The codec (command.c) decodes,
 * validates, encodes, copies and frees any struct through its schema, so
 * commands, snapshots and clones cannot disagree about a field. The state
 * (struct kp_state) is one copy-on-write hash table per kind plus the
 * cluster settings and the audit log; views share the tables by reference
 * count. */
#ifndef KP_RAFTSTORE_INTERNAL_H
#define KP_RAFTSTORE_INTERNAL_H

#include <msgpack.h>
#include <stdbool.h>

#include "raftstore/raftstore.h"

/* --- schemas ------------------------------------------------------------------- */

enum kp_ft {
    KP_FT_STR,    /* char *, NULL when absent */
    KP_FT_I32,    /* int32_t */
    KP_FT_U32,    /* uint32_t */
    KP_FT_U64,    /* uint64_t */
    KP_FT_I64,    /* int64_t */
    KP_FT_BOOL,   /* bool */
    KP_FT_ENUM,   /* uint8_t, a string from names[] on the wire */
    KP_FT_BYTES,  /* struct kp_bytes, msgpack bin */
    KP_FT_HASH32, /* uint8_t[32], msgpack bin of exactly 32 bytes */
    KP_FT_STRV,   /* struct kp_strv: array of non-empty strings, no duplicates */
    KP_FT_STRMAP, /* struct kp_strmap: map of strings, stored sorted by key */
    KP_FT_OBJV,   /* T * at off and uint32_t count at off_n: array of sub */
};

/* Character sets of strings. */
enum kp_cs {
    KP_CS_ID,     /* [A-Za-z0-9._:-] */
    KP_CS_NAME,   /* printable ASCII without space (models, features) */
    KP_CS_TEXT,   /* UTF-8 without control characters */
    KP_CS_URL,    /* printable ASCII without space */
    KP_CS_HNAME,  /* HTTP token characters */
    KP_CS_HVALUE, /* printable ASCII and space */
};

#define KP_FF_REQ    0x01 /* must be present (strings and bytes non-empty) */
#define KP_FF_STATE  0x02 /* set by the registry, refused in commands */
#define KP_FF_NOHASH 0x04 /* left out of the audit hash input */
#define KP_FF_STAR   0x08 /* an id field that also takes "*" (any; not a reference) */
#define KP_FF_OMIT0  0x10 /* left out of JSON answers when 0 (it means nothing then) */

/* ref: what an id field points at. */
#define KP_REF_NONE   0
#define KP_REF(kind)  ((uint8_t)((kind) + 1))
#define KP_REF_SCOPE  0xff /* a policy's scope_target: kind from scope_kind */
#define KP_REF_FREEZE 0xfe /* a freeze's target: kind from its scope (none for free names) */

struct kp_schema;

struct kp_field {
    const char *name;
    uint8_t type;  /* enum kp_ft */
    uint8_t flags; /* KP_FF_* */
    uint8_t cs;    /* strings, array elements and map values */
    uint8_t kcs;   /* map keys */
    uint8_t ref;   /* KP_REF_* for strings and string arrays */
    uint16_t off;
    uint16_t off_n;              /* KP_FT_OBJV: offset of the uint32_t count */
    int64_t min;                 /* integers */
    int64_t def;                 /* integers, enums: value when absent from a command */
    uint64_t max;                /* integers: value; strings, bytes: length; arrays, maps: count */
    uint32_t emax;               /* string arrays and maps: longest element or value */
    const char *const *names;    /* KP_FT_ENUM, NULL-terminated */
    const struct kp_schema *sub; /* KP_FT_OBJV */
    /* The snapshot format that added the field (0: every format has it).
     * An older snapshot lacks it, and restore takes the default. */
    uint8_t since;
};

struct kp_decoder;

struct kp_schema {
    const char *name;
    size_t size;
    const struct kp_field *fields;
    uint32_t nfields; /* at most 32 */
    /* Rules across the fields of one object, run when it has been read
     * (commands, snapshots, and so JSON bodies): KP_OK, or the error of
     * kp_store__fail_at naming the field. NULL: none. */
    int (*check)(struct kp_decoder *d, const void *obj);
};

/* Entity kinds: schema and the plural used as the snapshot's table name. */
extern const struct kp_schema *const kp_store__kind_schema[KP_KIND_COUNT];
extern const char *const kp_store__kind_plural[KP_KIND_COUNT];
extern const struct kp_schema kp_store__cluster_schema;
extern const struct kp_schema kp_store__audit_ctx_schema;
extern const struct kp_schema kp_store__audit_entry_schema;
extern const struct kp_schema kp_store__key_secret_schema;

/* The body schema of @op (NULL for KP_OP_NONE), and for put ops the kind
 * of entity the body is (else -1). */
const struct kp_schema *kp_store__op_body(enum kp_op op);
int kp_store__op_kind(enum kp_op op);

/* NULL when s[0..n) is in @cs, else what is wrong ("must be ..."). */
const char *kp_store__check_cs(enum kp_cs cs, const char *s, size_t n);
/* Cut @s so that it ends on a whole UTF-8 sequence. */
void kp_store__utf8_trim(char *s);
struct kp_apply;
/* Refuse the command being applied: @fmt into the result's message (cut to
 * whole UTF-8 characters); returns @code. fsm.c. */
int kp_store__refuse(struct kp_apply *a, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* --- the codec (command.c) --------------------------------------------------------- */

enum kp_codec_mode {
    KP_MODE_CMD,  /* commands: state fields refused, optional fields optional */
    KP_MODE_SNAP, /* snapshots: every field present */
    KP_MODE_HASH, /* encoding only: snapshot form without KP_FF_NOHASH fields */
};

/* A decoder over untrusted msgpack; errors carry the field path. */
struct kp_decoder {
    struct kp_mp_reader c; /* core/mpack.h */
    int mode;              /* enum kp_codec_mode */
    uint32_t format;       /* KP_MODE_SNAP: the snapshot's format */
    bool skip_envelope;    /* top level of a command: skip v, op, ts, ... */
    char path[160];
    size_t pathlen;
    char *errmsg;
    size_t errlen;
};

int kp_store__fail(struct kp_decoder *d, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* KP_EINVAL with "path.@field: what" (a schema's check). */
int kp_store__fail_at(struct kp_decoder *d, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Decode a map into @obj (zeroed by the caller) through @s. On failure
 * @obj may own some fields: free it with kp_store__obj_free. */
int kp_store__decode_obj(struct kp_decoder *d, const struct kp_schema *s, void *obj);

int kp_store__mp_write(void *buf, const char *p, size_t n); /* msgpack_packer -> kp_buf */
int kp_store__pack_str(msgpack_packer *pk, const char *s);
/* Encode @obj as a map, or only its fields (for a caller that wrote the
 * map header); count_fields says how many fields a mode writes. */
int kp_store__encode_obj(msgpack_packer *pk, const struct kp_schema *s, const void *obj, int mode);
int kp_store__encode_fields(msgpack_packer *pk, const struct kp_schema *s, const void *obj,
                            int mode);
uint32_t kp_store__count_fields(const struct kp_schema *s, int mode);

/* Free what @obj owns (not @obj itself) and zero it. */
void kp_store__obj_free(const struct kp_schema *s, void *obj);
/* Deep copy of the schema fields of @src into @dst (zeroed by the caller).
 * KP_ENOMEM leaves @dst empty. */
int kp_store__obj_clone(const struct kp_schema *s, const void *src, void *dst);

/* --- entities and tables (registry.c) ---------------------------------------------- */

/* Zeroed entity of @kind with one reference, NULL when out of memory. */
struct kp_entity *kp_store__entity_alloc(int kind);
struct kp_entity *kp_store__entity_ref(struct kp_entity *e);
void kp_store__entity_unref(struct kp_entity *e);
/* Deep copy with one reference, NULL when out of memory. */
struct kp_entity *kp_store__entity_clone(const struct kp_entity *e);

/* An open-addressing hash table of entities by id. Shared by reference
 * count between the state machine and views: whoever holds the only
 * reference (the state machine) may change it; everyone else only reads. */
struct kp_table {
    atomic_uint refs;
    uint32_t count;
    uint32_t cap; /* 0 or a power of two */
    struct kp_entity **slots;
};

struct kp_table *kp_store__table_new(void);
struct kp_table *kp_store__table_ref(struct kp_table *t);
void kp_store__table_unref(struct kp_table *t);
struct kp_entity *kp_store__table_get(const struct kp_table *t, const char *id);
/* Make *@tp exclusively ours (copying it if shared) with room for @inserts
 * more entities. On KP_ENOMEM *@tp still holds the same entities. */
int kp_store__table_prepare(struct kp_table **tp, uint32_t inserts);
/* Insert or replace (taking over the caller's reference); needs a prepared
 * table. Cannot fail. */
void kp_store__table_put(struct kp_table *t, struct kp_entity *e);
void kp_store__table_del(struct kp_table *t, const char *id);
/* The entities sorted by id (array from kp_malloc; the table keeps the
 * references). NULL with *n = 0 for an empty table; KP_ENOMEM. */
int kp_store__table_sorted(const struct kp_table *t, struct kp_entity ***out, size_t *n);

/* --- state ------------------------------------------------------------------------ */

struct kp_audit_log {
    struct kp_audit_entry **ring; /* KP_AUDIT_RETAIN slots */
    size_t start;
    size_t count;
    uint64_t seq; /* of the last entry, 0 before the first */
    uint8_t hash[32];
};

struct kp_state {
    struct kp_table *tables[KP_KIND_COUNT];
    struct kp_cluster *cluster;
    struct kp_audit_log audit;
    uint64_t applied_index;
};

struct kp_fsm {
    struct kp_state st;
};

/* Most secret versions a key keeps (older retired ones are dropped). */
#define KP_KEY_SECRETS_MAX 16

int kp_store__state_init(struct kp_state *st);
void kp_store__state_free(struct kp_state *st);

static inline struct kp_entity *kp_store__get(const struct kp_state *st, int kind, const char *id)
{
    return kp_store__table_get(st->tables[kind], id);
}

/* Rules that span fields or entities, shared by apply and restore: the
 * references of @e exist in @st (an entity of the same kind and id as @e
 * counts as @e itself), and its kind's own rules hold. Refusals: KP_EINVAL
 * with the field path, KP_ECONFLICT. */
int kp_store__validate(const struct kp_state *st, const struct kp_entity *e, char *msg, size_t len);
/* The first entity (kinds in enum order, then smallest id) whose
 * references include (@kind, @id), with the field path; KP_ECONFLICT and a
 * message, or KP_OK when none. Ignores entities of @kind named @id. */
int kp_store__referrers(const struct kp_state *st, int kind, const char *id, char *msg, size_t len);

/* --- apply (fsm.c), shared with the op handlers of budget.c ---------------------------- */

struct kp_change {
    int kind;
    struct kp_entity *put; /* an owned reference, or NULL */
    const char *del;       /* id to delete; lives until the commit */
};

/* One apply in progress: handlers check against @st and stage changes,
 * which the commit swaps in; nothing touches @st before that. */
struct kp_apply {
    struct kp_state *st;
    struct kp_command *cmd;
    struct kp_fsm_result *res;
    struct kp_change *changes;
    size_t n;
    size_t cap;
    struct kp_cluster *cluster; /* init_cluster: the new settings, owned */
    const char *target;         /* for the audit entry */
    char detail[192];           /* appended to "ok" */
};

/* Stage a put (taking over the reference; dropped on KP_ENOMEM) or a
 * delete. */
int kp_store__stage(struct kp_apply *a, int kind, struct kp_entity *put, const char *del);
/* The entity of @kind named @id as it will be after the commit: a staged
 * put, NULL when a delete is staged, else the current one. */
struct kp_entity *kp_store__staged(const struct kp_apply *a, int kind, const char *id);

/* --- budgets (budget.c) ------------------------------------------------------------------ */

int kp_store__op_budget_lease(struct kp_apply *a);
int kp_store__op_budget_reset(struct kp_apply *a);
/* put_policy @p (staged) replaces @old (NULL on create): bring the
 * policy's budget state along (windows of removed budgets dropped, a
 * changed window definition re-anchored, a lowered limit recorded as
 * excess). */
int kp_store__budget_policy_put(struct kp_apply *a, const struct kp_policy *old,
                                const struct kp_policy *p);
/* The shape of @s against its policy @p and, for hard budgets, the
 * invariant spent + grants <= limit + excess. KP_OK, or KP_EINVAL with a
 * message naming the window. Used after every apply that touches budget
 * state and by restore. */
int kp_store__budget_check(const struct kp_policy *p, const struct kp_budget_state *s, char *msg,
                           size_t len);

/* --- alerts (alert.c) ------------------------------------------------------------------- */

int kp_store__op_put_alert(struct kp_apply *a);
int kp_store__op_resolve_alert(struct kp_apply *a);
int kp_store__op_ack_alert(struct kp_apply *a);
int kp_store__op_alert_delivery(struct kp_apply *a);

/* --- balances (balance.c) ---------------------------------------------------------------- */

int kp_store__op_set_key_balance(struct kp_apply *a);
int kp_store__op_add_key_topup(struct kp_apply *a);

/* --- audit (audit.c) -------------------------------------------------------------- */

int kp_store__audit_init(struct kp_audit_log *log);
void kp_store__audit_free(struct kp_audit_log *log);
void kp_store__audit_entry_free(struct kp_audit_entry *e);
/* A new entry after the log's head, hashed; strings copied (NULL and ""
 * both mean absent). NULL when out of memory. */
struct kp_audit_entry *kp_store__audit_build(const struct kp_audit_log *log, int64_t ts,
                                             const struct kp_audit_ctx *who, const char *action,
                                             const char *target, const char *result);
/* Append an entry built against the current head (cannot fail). */
void kp_store__audit_append(struct kp_audit_log *log, struct kp_audit_entry *e);
const struct kp_audit_entry *kp_store__audit_at(const struct kp_audit_log *log, size_t i);

/* --- the built-in price table (price_defaults.c) ----------------------------------- */

/* Sorted by model name, names unique (price.c bisects it). */
extern const struct kp_price kp_store__price_defaults[];
extern const size_t kp_store__price_defaults_n;

#endif

/* raftstore tokens and roles: the internal credentials apps, operators and
 * tools present to keyplane, the roles that say what a token may do, and the
 * scope that says where it may do it. docs/tokens.md is the reference; this
 * header is the API.
 *
 * A token reads kp_<id>_<secret><check>: a 12-character random id in
 * lower-case base32, a 32-character base62 secret (about 190 bits), and six
 * base62 characters of CRC-32 over everything before them, so that a
 * mistyped or truncated token is refused by kp_token_parse() without any
 * lookup. The registry stores only the id (as "tk_<id>"), the role, the
 * scope and HMAC-SHA256(pepper, secret); kp_token_verify() recomputes the
 * MAC and compares in constant time.
 *
 * Everything here is pure: no I/O, no clock (time is passed in), no global
 * state. Randomness comes from OpenSSL only in kp_token_generate(). */
#ifndef KP_RAFTSTORE_TOKEN_H
#define KP_RAFTSTORE_TOKEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/core.h"

/* --- tokens -------------------------------------------------------------- */

#define KP_TOKEN_PREFIX       "kp_"
#define KP_TOKEN_ID_CHARS     12 /* lower-case base32: a-z, 2-7 (60 bits) */
#define KP_TOKEN_SECRET_CHARS 32 /* base62: 0-9, A-Z, a-z (190.5 bits) */
#define KP_TOKEN_CHECK_CHARS  6  /* CRC-32 in base62, most significant first */
/* Length of the whole text: "kp_" id "_" secret check = 54. */
#define KP_TOKEN_TEXT_LEN (3 + KP_TOKEN_ID_CHARS + 1 + KP_TOKEN_SECRET_CHARS + KP_TOKEN_CHECK_CHARS)
/* The registry id of a token, "tk_" and its 12 id characters, with the NUL.
 * It is not secret and, unlike the token, is not masked in logs. */
#define KP_TOKEN_ID_SIZE    (3 + KP_TOKEN_ID_CHARS + 1)
#define KP_TOKEN_PEPPER_LEN 32
#define KP_TOKEN_HASH_LEN   32

/* The parts of a well-formed token. @secret points into the text given to
 * kp_token_parse() and is valid as long as that text; it is not copied so
 * that the secret exists in one place only. */
struct kp_token_parts {
    char id[KP_TOKEN_ID_SIZE];
    const char *secret;
    size_t secret_len;
};

/* Create a new token. On KP_OK, *text_out is the NUL-terminated token text
 * (KP_TOKEN_TEXT_LEN characters; the only time it exists, so hand it to the
 * user once and release it with kp_token_text_free()), id_out its registry
 * id and hash_out the HMAC to store. On error *text_out is NULL, hash_out is
 * zeroed and the code is KP_ENOMEM or KP_EIO (the CSPRNG or HMAC failed). */
int kp_token_generate(const uint8_t pepper[KP_TOKEN_PEPPER_LEN], char **text_out,
                      char id_out[KP_TOKEN_ID_SIZE], uint8_t hash_out[KP_TOKEN_HASH_LEN]);
/* Wipes and frees a text from kp_token_generate(). NULL is allowed. */
void kp_token_text_free(char *text);

/* Check the shape and checksum of @text (@len bytes, no NUL needed, no
 * trimming done: strip "Bearer " and whitespace first). KP_OK fills @out;
 * KP_EPARSE writes to @errmsg (may be NULL) which part is malformed: the
 * prefix, the id, the secret's length or characters, or the checksum. The
 * message gives 1-based positions and never quotes the token. */
int kp_token_parse(const char *text, size_t len, struct kp_token_parts *out, char *errmsg,
                   size_t errlen);

/* Whether @id is a registry token id: "tk_" and 12 of a-z, 2-7. */
bool kp_token_id_valid(const char *id);

/* HMAC-SHA256(pepper, secret) into @out. KP_EIO when OpenSSL fails. */
int kp_token_hash(const uint8_t pepper[KP_TOKEN_PEPPER_LEN], const char *secret, size_t len,
                  uint8_t out[KP_TOKEN_HASH_LEN]);

/* Whether @secret is the one whose MAC under @pepper is @stored_hash. The
 * comparison is CRYPTO_memcmp, so its time does not depend on where the
 * MACs differ. KP_OK on a match, KP_EPERM otherwise, KP_EIO when OpenSSL
 * fails. */
int kp_token_verify(const uint8_t stored_hash[KP_TOKEN_HASH_LEN],
                    const uint8_t pepper[KP_TOKEN_PEPPER_LEN], const char *secret, size_t len);

/* --- roles and permissions ----------------------------------------------- */

/* Permissions, one bit each: X(enum, bit, name). The name is what 403
 * messages and docs/tokens.md use. */
#define KP_PERM_MAP(X)                                                                             \
    X(KP_PERM_CHANGE, 1u << 0, "change")                                                           \
    X(KP_PERM_OPERATE, 1u << 1, "operate")                                                         \
    X(KP_PERM_USE, 1u << 2, "use")                                                                 \
    X(KP_PERM_READ_USAGE, 1u << 3, "read_usage")                                                   \
    X(KP_PERM_READ_AUDIT, 1u << 4, "read_audit")                                                   \
    X(KP_PERM_READ_REGISTRY, 1u << 5, "read_registry")

enum kp_perm {
#define KP_PERM_ENUM(e, bit, name) e = (bit),
    KP_PERM_MAP(KP_PERM_ENUM)
#undef KP_PERM_ENUM
};

#define KP_PERM_ALL                                                                                \
    (KP_PERM_CHANGE | KP_PERM_OPERATE | KP_PERM_USE | KP_PERM_READ_USAGE | KP_PERM_READ_AUDIT |    \
     KP_PERM_READ_REGISTRY)

/* Roles: X(enum, name). Their permissions are in role.c, the one table. */
#define KP_ROLE_MAP(X)                                                                             \
    X(KP_ROLE_ADMIN, "admin")                                                                      \
    X(KP_ROLE_OPERATOR, "operator")                                                                \
    X(KP_ROLE_APP, "app")                                                                          \
    X(KP_ROLE_FINANCE, "finance")                                                                  \
    X(KP_ROLE_AUDITOR, "auditor")

enum kp_role {
#define KP_ROLE_ENUM(e, name) e,
    KP_ROLE_MAP(KP_ROLE_ENUM)
#undef KP_ROLE_ENUM
        KP_ROLE_COUNT
};

/* "operator" -> KP_ROLE_OPERATOR. Exact lower-case names only; KP_EINVAL
 * otherwise. */
int kp_role_parse(const char *name, enum kp_role *out);
/* KP_ROLE_OPERATOR -> "operator"; "unknown" outside the enum. */
const char *kp_role_name(enum kp_role role);
/* The permission bits of @role; 0 outside the enum. */
unsigned kp_role_perms(enum kp_role role);
/* Whether @role holds every bit of @perms. An empty @perms is a caller bug
 * and answers false, so a forgotten requirement fails closed. */
bool kp_role_has(enum kp_role role, unsigned perms);
/* KP_PERM_OPERATE -> "operate"; "unknown" unless exactly one known bit. */
const char *kp_perm_name(unsigned perm);
/* The 403 message when @role lacks some bit of @perms, naming the first
 * missing one: "token tk_x (role finance) lacks permission operate". */
void kp_role_refusal(char *buf, size_t len, const char *token_id, enum kp_role role,
                     unsigned perms);

/* --- scope --------------------------------------------------------------- */

/* Bounds kp_token_scope_check() enforces on a scope the registry accepts. */
#define KP_TOKEN_SCOPE_MAX_ENTRIES 256
#define KP_TOKEN_SCOPE_MAX_NAME    128

/* Where a token may act. A view: the strings and arrays belong to whoever
 * filled it in (the registry entity), and nothing here keeps a reference.
 * Empty lists allow everything in that dimension; a model entry ending in
 * '*' matches every model that starts with what comes before it ("gpt-4o*",
 * and "*" alone matches all). Projects are matched by id only: that a
 * project belongs to the tenant is the registry's invariant, not checked
 * here. */
struct kp_token_scope {
    const char *tenant; /* a tenant id, or "*" for every tenant */
    const char *const *projects;
    size_t n_projects;
    const char *const *pools;
    size_t n_pools;
    const char *const *models;
    size_t n_models;
    int64_t expires_at; /* Unix ms; 0 = never. Expired from this instant on. */
};

/* The dimension that refused a request; the router answers 401 for
 * KP_TOKEN_SCOPE_EXPIRED (the credential is no longer valid) and 403 for the
 * others. */
enum kp_token_scope_dim {
    KP_TOKEN_SCOPE_ALLOWED,
    KP_TOKEN_SCOPE_EXPIRED,
    KP_TOKEN_SCOPE_TENANT,
    KP_TOKEN_SCOPE_PROJECT,
    KP_TOKEN_SCOPE_POOL,
    KP_TOKEN_SCOPE_MODEL,
};

struct kp_token_refusal {
    enum kp_token_scope_dim dim;
    char msg[256];
};

/* Whether @scope allows a request for @model through @pool in
 * @tenant/@project at @now_ms. A NULL dimension is not checked, for callers
 * that check in steps (a fallback pool is checked when it is chosen); every
 * dimension must be checked before the request goes upstream. Expiry comes
 * first, then tenant, project, pool, model. KP_OK, or KP_EPERM with @why
 * (may be NULL) saying which dimension refused and why:
 * "project prj-x is outside this token's scope (allowed: prj-a, prj-b)",
 * "token expired at 2026-01-01T00:00:00.000Z". */
int kp_token_scope_allows(const struct kp_token_scope *scope, int64_t now_ms, const char *tenant,
                          const char *project, const char *pool, const char *model,
                          struct kp_token_refusal *why);

/* Validate a scope before it is stored: a non-empty tenant, at most
 * KP_TOKEN_SCOPE_MAX_ENTRIES non-empty entries per list, each at most
 * KP_TOKEN_SCOPE_MAX_NAME bytes of printable ASCII without spaces or ',',
 * '*' only as the last character of a model entry, expires_at >= 0.
 * KP_OK or KP_EINVAL with @errmsg (may be NULL). */
int kp_token_scope_check(const struct kp_token_scope *scope, char *errmsg, size_t errlen);

#endif

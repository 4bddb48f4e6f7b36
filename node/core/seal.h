/* Secrets and sealing: the in-memory secret type, the cluster master key
 * (KEK), and the envelope that seals a provider key for the registry.
 *
 * A secret is sealed with AES-256-GCM under a fresh random data key (DEK);
 * the DEK is wrapped with the KEK, also with AES-256-GCM. Both layers bind
 * the registry key id and secret version as associated data, so a blob
 * moved to another key or version fails to open. docs/secrets.md gives the
 * byte layout, the KEK file format and the rotation semantics.
 *
 * Secret bytes are only ever held by struct kp_secret, which has no print
 * or format function: memory locked when the system allows it, wiped on
 * free. The functions here never log and never put secret bytes, or bytes
 * derived from a key other than the fingerprint, last four and KEK id, into
 * an error message.
 *
 * Errors: KP_EINVAL (bad arguments), KP_ENOMEM, KP_EPARSE (a malformed or
 * truncated blob, a badly formed KEK), KP_EPERM (a blob sealed under a
 * different KEK, or a KEK file other users may read), KP_SEAL_EAUTH (a blob
 * that fails authentication: altered, or opened with another key id or
 * version), KP_ECONFIG (OpenSSL itself failed: no AES-256-GCM, no
 * randomness), and file errors from errno for the KEK file. Every function
 * taking @errmsg fills it with a sentence an operator can act on. */
#ifndef KP_CORE_SEAL_H
#define KP_CORE_SEAL_H

#include <stddef.h>
#include <stdint.h>

#include "alloc.h"
#include "error.h"

/* A blob that fails authentication (tampered, or bound to another key id or
 * version). */
#define KP_SEAL_EAUTH KP_EAUTH

#define KP_SEAL_KEK_LEN      32
#define KP_SEAL_KEK_ID_BYTES 8
/* Hex KEK id plus NUL. */
#define KP_SEAL_KEK_ID_LEN (2 * KP_SEAL_KEK_ID_BYTES + 1)
/* "fp_" + 12 hex digits + NUL. */
#define KP_SEAL_FP_LEN 16
/* Four characters + NUL. */
#define KP_SEAL_LAST4_LEN 5
/* Registry key ids bound into a blob: 1..255 bytes. */
#define KP_SEAL_MAX_KEY_ID 255
/* Largest plaintext a blob may hold (a service-account JSON fits easily). */
#define KP_SEAL_MAX_PLAINTEXT 65536
/* Bytes a blob adds to its plaintext. */
#define KP_SEAL_OVERHEAD 101

/* --- secrets ------------------------------------------------------------- */

/* Opaque on purpose: no code outside seal.c can reach the bytes except
 * through kp_secret_data(). */
struct kp_secret;

/* A copy of @len bytes at @data in memory of its own, locked against swap
 * and left out of core dumps when the system allows (best effort). NULL
 * when out of memory. */
struct kp_secret *kp_secret_new(const void *data, size_t len);
/* The bytes, for the few places that must send them (upstream auth). Do
 * not copy them into anything that outlives the call. */
const void *kp_secret_data(const struct kp_secret *s);
size_t kp_secret_len(const struct kp_secret *s);
/* Wipes the bytes, unlocks and frees. NULL is fine. */
void kp_secret_free(struct kp_secret *s);
/* Hand the value to the log sink's redaction list (kp_log_register_secret),
 * which keeps its own copy in ordinary memory. The caller decides. */
void kp_secret_register_for_redaction(const struct kp_secret *s);
/* Zero @len bytes at @p in a way the compiler may not elide. */
void kp_secret_wipe(void *p, size_t len);

/* "fp_" + the first 12 hex digits of SHA-256 of the secret, the same
 * string keyplane-mock reports. KP_OK, or KP_ENOMEM/KP_ECONFIG with
 * "fp_000000000000" in @out. */
int kp_seal_fingerprint(const struct kp_secret *s, char out[KP_SEAL_FP_LEN]);
/* The last four characters when the secret is at least 12 bytes long and
 * they are printable ASCII, else "****". */
void kp_seal_last4(const struct kp_secret *s, char out[KP_SEAL_LAST4_LEN]);

/* --- the master key ------------------------------------------------------ */

struct kp_seal_kek;

/* Read the KEK from @path: 64 hex digits or 44 base64 characters (32
 * bytes), surrounding whitespace ignored. Refuses a file that group or
 * others may access (mode & 077), telling the operator to chmod 600. */
int kp_seal_kek_load_file(const char *path, struct kp_seal_kek **out, char *errmsg, size_t errlen);
/* The same format, from the value of KEYPLANE_MASTER_KEY. */
int kp_seal_kek_from_env(const char *value, struct kp_seal_kek **out, char *errmsg, size_t errlen);
/* @len must be KP_SEAL_KEK_LEN. */
int kp_seal_kek_from_bytes(const void *key, size_t len, struct kp_seal_kek **out, char *errmsg,
                           size_t errlen);
/* A new random KEK, for the bootstrap of a new cluster. */
int kp_seal_kek_generate(struct kp_seal_kek **out, char *errmsg, size_t errlen);
/* Write @kek to @path as hex, mode 0600, atomically (temporary file,
 * fsync, link into place, fsync the directory). Never replaces an existing
 * file: KP_EEXIST, since losing the old KEK loses every secret. */
int kp_seal_kek_write_file(const struct kp_seal_kek *kek, const char *path, char *errmsg,
                           size_t errlen);
/* First 8 bytes of SHA-256(KEK) in hex: tells "wrong KEK" from "corrupt". */
const char *kp_seal_kek_id(const struct kp_seal_kek *kek);
void kp_seal_kek_free(struct kp_seal_kek *kek);
/* HMAC-SHA256(KEK, @label) into @out: a key for another purpose that only
 * holders of the KEK can compute (the cluster secret of node-to-node calls
 * is derived this way). KP_ECONFIG when OpenSSL fails. */
int kp_seal_kek_derive(const struct kp_seal_kek *kek, const char *label,
                       uint8_t out[KP_SEAL_KEK_LEN]);

/* --- the envelope -------------------------------------------------------- */

/* Seal @len bytes at @plaintext for registry key @key_id at @version and
 * append the blob (KP_SEAL_OVERHEAD + @len bytes) to @out. On error @out
 * is left as it was. No reference to @plaintext is kept; it must not point
 * into @out, which may move. */
int kp_seal_secret(const struct kp_seal_kek *kek, const void *plaintext, size_t len,
                   const char *key_id, uint64_t version, struct kp_buf *out, char *errmsg,
                   size_t errlen);
/* Open a blob sealed for @key_id at @version. On KP_OK *@out is a new
 * secret the caller frees; on any error *@out is NULL and no plaintext,
 * whole or partial, is left anywhere. */
int kp_seal_open(const struct kp_seal_kek *kek, const void *blob, size_t len, const char *key_id,
                 uint64_t version, struct kp_secret **out, char *errmsg, size_t errlen);
/* Re-wrap the data key of @blob, sealed under @old_kek, under @new_kek and
 * append the new blob to @out. The encrypted secret is copied unchanged and
 * never decrypted (damage to it is found by kp_seal_open); only the data
 * key is unwrapped, in memory that is wiped before returning. On error
 * @out is left as it was. @blob must not point into @out, which may move. */
int kp_seal_rewrap(const struct kp_seal_kek *old_kek, const struct kp_seal_kek *new_kek,
                   const void *blob, size_t len, const char *key_id, uint64_t version,
                   struct kp_buf *out, char *errmsg, size_t errlen);

/* What a blob says about itself without any key: its format is checked,
 * nothing is authenticated. For rotation tooling ("which blobs still use
 * the old KEK"). */
struct kp_seal_info {
    unsigned version;
    char kek_id[KP_SEAL_KEK_ID_LEN];
    size_t plaintext_len;
};
int kp_seal_inspect(const void *blob, size_t len, struct kp_seal_info *info, char *errmsg,
                    size_t errlen);

#endif

/* Secrets in memory, the master key (KEK), and the sealed envelope.
 *
 * Happy path: a node loads its KEK from a 0600 file or KEYPLANE_MASTER_KEY
 * (64 hex digits or 44 base64 characters). Sealing draws a random 32-byte
 * data key (DEK), encrypts the secret with it under AES-256-GCM, wraps the
 * DEK with the KEK under AES-256-GCM, and lays both out in one blob
 * (docs/secrets.md). Opening checks the blob's form, compares its KEK id
 * with this node's, unwraps the DEK, and decrypts straight into a
 * kp_secret. Rewrapping unwraps the DEK only and wraps it again under the
 * new KEK; the encrypted secret is copied byte for byte.
 *
 * How it fails: a blob too short, with the wrong magic or an unknown format
 * version is KP_EPARSE; one sealed under another KEK is KP_EPERM naming
 * both KEK ids; one that does not authenticate (any byte altered, or opened
 * for another key id or version) is KP_SEAL_EAUTH, and the plaintext that
 * GCM produced before checking the tag is wiped first. OpenSSL failures are
 * translated in ossl_fail() alone. A KEK file that group or others may
 * read is refused before a byte of it is read. Every buffer that held a key
 * or plaintext (the DEK, the KEK text) is wiped on every path out.
 *
 * Secret memory: each kp_secret gets whole pages of its own inside one
 * kp_malloc block, so mlock() and madvise(MADV_DONTDUMP) cover it alone and
 * unlocking it on free cannot unlock another secret sharing the page. The
 * cost is about two pages per secret, which is fine for provider keys
 * (tens to thousands per cluster). Locking is best effort: without
 * CAP_IPC_LOCK the RLIMIT_MEMLOCK budget runs out and secrets stay
 * unlocked. */
#include "seal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "bytes.h"
#include "log.h"

/* Blob layout, version 1 (docs/secrets.md). */
#define BLOB_MAGIC      "KPSB"
#define BLOB_MAGIC_LEN  4
#define BLOB_VERSION    1
#define NONCE_LEN       12
#define TAG_LEN         16
#define DEK_LEN         32
#define OFF_VERSION     4
#define OFF_KEK_ID      5
#define OFF_WRAP_NONCE  (OFF_KEK_ID + KP_SEAL_KEK_ID_BYTES)
#define OFF_WRAPPED_DEK (OFF_WRAP_NONCE + NONCE_LEN)
#define OFF_WRAP_TAG    (OFF_WRAPPED_DEK + DEK_LEN)
#define OFF_DATA_NONCE  (OFF_WRAP_TAG + TAG_LEN)
#define OFF_CIPHERTEXT  (OFF_DATA_NONCE + NONCE_LEN)
#define BLOB_FIXED      (OFF_CIPHERTEXT + TAG_LEN)

_Static_assert(BLOB_FIXED == KP_SEAL_OVERHEAD, "KP_SEAL_OVERHEAD must match the layout");

/* Longest KEK text accepted before it is parsed (a file with a comment or
 * two keys is refused as the wrong length, not read further). */
#define KEK_TEXT_MAX 256

/* --- errors -------------------------------------------------------------- */

/* The one place OpenSSL errors become keyplane errors. OpenSSL's reason
 * strings name the failing operation only; they never carry buffer
 * contents. Authentication failures do not come here: they are expected
 * outcomes, reported by the callers as KP_SEAL_EAUTH. */
static int ossl_fail(char *errmsg, size_t errlen, const char *what)
{
    unsigned long e = ERR_peek_last_error();
    const char *reason = e != 0 ? ERR_reason_error_string(e) : NULL;
    int rc = ERR_GET_REASON(e) == ERR_GET_REASON(ERR_R_MALLOC_FAILURE) ? KP_ENOMEM : KP_ECONFIG;
    kp_errf(errmsg, errlen, rc, "%s: OpenSSL: %s", what,
            reason != NULL ? reason : "unknown failure");
    ERR_clear_error();
    return rc;
}

/* --- secrets ------------------------------------------------------------- */

struct kp_secret {
    unsigned char *data; /* page-aligned, inside this same block */
    size_t len;
    size_t span; /* whole pages from data */
    bool locked;
    bool nodump;
};

void kp_secret_wipe(void *p, size_t len)
{
    if (p != NULL && len > 0)
        OPENSSL_cleanse(p, len);
}

/* A secret of @len bytes, not yet filled. */
static struct kp_secret *secret_alloc(size_t len)
{
    long sys_page = sysconf(_SC_PAGESIZE);
    size_t page = sys_page > 0 ? (size_t)sys_page : 4096;
    if (len > SIZE_MAX / 4)
        return NULL;
    size_t span = (len + page - 1) / page * page;
    if (span == 0)
        span = page;
    unsigned char *block = kp_malloc(sizeof(struct kp_secret) + page - 1 + span);
    if (block == NULL)
        return NULL;
    struct kp_secret *s = (struct kp_secret *)(void *)block;
    uintptr_t first = (uintptr_t)(block + sizeof(*s));
    s->data = block + ((first + page - 1) / page * page - (uintptr_t)block);
    s->len = len;
    s->span = span;
    s->locked = mlock(s->data, span) == 0;
    s->nodump = madvise(s->data, span, MADV_DONTDUMP) == 0;
    return s;
}

struct kp_secret *kp_secret_new(const void *data, size_t len)
{
    if (data == NULL && len > 0)
        return NULL;
    struct kp_secret *s = secret_alloc(len);
    if (s != NULL && len > 0)
        memcpy(s->data, data, len);
    return s;
}

const void *kp_secret_data(const struct kp_secret *s)
{
    return s->data;
}

size_t kp_secret_len(const struct kp_secret *s)
{
    return s->len;
}

void kp_secret_free(struct kp_secret *s)
{
    if (s == NULL)
        return;
    kp_secret_wipe(s->data, s->span);
    /* The pages go back to malloc, which will hand them to other data. */
    if (s->nodump)
        madvise(s->data, s->span, MADV_DODUMP);
    if (s->locked)
        munlock(s->data, s->span);
    kp_free(s);
}

void kp_secret_register_for_redaction(const struct kp_secret *s)
{
    if (s != NULL)
        kp_log_register_secret((const char *)s->data, s->len);
}

int kp_seal_fingerprint(const struct kp_secret *s, char out[KP_SEAL_FP_LEN])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned md_len = 0;
    memcpy(out, "fp_000000000000", KP_SEAL_FP_LEN);
    if (EVP_Digest(s->data, s->len, md, &md_len, EVP_sha256(), NULL) != 1)
        return ossl_fail(NULL, 0, "fingerprint");
    kp_hex_encode(md, 6, out + 3);
    return KP_OK;
}

void kp_seal_last4(const struct kp_secret *s, char out[KP_SEAL_LAST4_LEN])
{
    memcpy(out, "****", KP_SEAL_LAST4_LEN);
    if (s->len < 12)
        return;
    const unsigned char *tail = s->data + s->len - 4;
    /* Shown in the console and JSON; anything but printable ASCII stays
     * masked rather than cut in the middle of a UTF-8 sequence. */
    for (int i = 0; i < 4; i++)
        if (tail[i] < 0x21 || tail[i] > 0x7e)
            return;
    memcpy(out, tail, 4);
}

/* --- the master key ------------------------------------------------------ */

struct kp_seal_kek {
    struct kp_secret *key;
    unsigned char id[KP_SEAL_KEK_ID_BYTES];
    char id_hex[KP_SEAL_KEK_ID_LEN];
};

static int kek_new(const unsigned char key[KP_SEAL_KEK_LEN], struct kp_seal_kek **out, char *errmsg,
                   size_t errlen)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned md_len = 0;
    int rc;
    struct kp_seal_kek *kek = kp_malloc(sizeof(*kek));
    if (kek == NULL)
        return kp_errf(errmsg, errlen, KP_ENOMEM, "master key: out of memory");
    kek->key = kp_secret_new(key, KP_SEAL_KEK_LEN);
    if (kek->key == NULL) {
        rc = kp_errf(errmsg, errlen, KP_ENOMEM, "master key: out of memory");
        goto err_after_kek;
    }
    if (EVP_Digest(key, KP_SEAL_KEK_LEN, md, &md_len, EVP_sha256(), NULL) != 1) {
        rc = ossl_fail(errmsg, errlen, "master key id");
        goto err_after_key;
    }
    memcpy(kek->id, md, KP_SEAL_KEK_ID_BYTES);
    kp_hex_encode(kek->id, KP_SEAL_KEK_ID_BYTES, kek->id_hex);
    *out = kek;
    return KP_OK;

err_after_key:
    kp_secret_free(kek->key);
err_after_kek:
    kp_free(kek);
    return rc;
}

void kp_seal_kek_free(struct kp_seal_kek *kek)
{
    if (kek == NULL)
        return;
    kp_secret_free(kek->key);
    kp_free(kek);
}

const char *kp_seal_kek_id(const struct kp_seal_kek *kek)
{
    return kek->id_hex;
}

int kp_seal_kek_derive(const struct kp_seal_kek *kek, const char *label,
                       uint8_t out[KP_SEAL_KEK_LEN])
{
    unsigned int n = 0;
    if (HMAC(EVP_sha256(), kp_secret_data(kek->key), (int)kp_secret_len(kek->key),
             (const unsigned char *)label, strlen(label), out, &n) == NULL ||
        n != KP_SEAL_KEK_LEN) {
        kp_secret_wipe(out, KP_SEAL_KEK_LEN);
        return KP_ECONFIG;
    }
    return KP_OK;
}

static int base64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Error messages give positions, never the characters: a stray character
 * in a key file is most likely part of the key. */
static int decode_hex(const char *t, const char *source, unsigned char key[KP_SEAL_KEK_LEN],
                      char *errmsg, size_t errlen)
{
    for (size_t i = 0; i < 2 * KP_SEAL_KEK_LEN; i++)
        if (kp_hex_value(t[i]) < 0)
            return kp_errf(errmsg, errlen, KP_EPARSE,
                           "%s: character %zu is not a hex digit (64 hex digits expected)", source,
                           i + 1);
    for (size_t i = 0; i < KP_SEAL_KEK_LEN; i++)
        key[i] = (unsigned char)(kp_hex_value(t[2 * i]) << 4 | kp_hex_value(t[2 * i + 1]));
    return KP_OK;
}

/* Exactly the canonical encoding of 32 bytes: 43 characters of the
 * standard alphabet whose last two bits are zero, then one '='. */
static int decode_base64(const char *t, const char *source, unsigned char key[KP_SEAL_KEK_LEN],
                         char *errmsg, size_t errlen)
{
    uint32_t acc = 0;
    int bits = 0;
    size_t n = 0;
    int rc = KP_OK;
    for (size_t i = 0; i < 43 && rc == KP_OK; i++) {
        int v = base64_value((unsigned char)t[i]);
        if (v < 0) {
            rc = kp_errf(errmsg, errlen, KP_EPARSE,
                         "%s: character %zu is not base64 (44 base64 characters expected)", source,
                         i + 1);
            break;
        }
        acc = (acc << 6 | (uint32_t)v) & 0xffffff;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (n < KP_SEAL_KEK_LEN)
                key[n++] = (unsigned char)(acc >> bits);
        }
    }
    if (rc == KP_OK && t[43] != '=')
        rc = kp_errf(errmsg, errlen, KP_EPARSE,
                     "%s: character 44 is not '=' (base64 of 32 bytes ends with one '=')", source);
    if (rc == KP_OK && (acc & ((1u << bits) - 1)) != 0)
        rc = kp_errf(errmsg, errlen, KP_EPARSE, "%s: base64 is not canonical (last bits not zero)",
                     source);
    /* The accumulator held key bits. */
    kp_secret_wipe(&acc, sizeof(acc));
    return rc;
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Parse KEK text (surrounding whitespace ignored) into @key. */
static int kek_parse_text(const char *text, size_t len, const char *source,
                          unsigned char key[KP_SEAL_KEK_LEN], char *errmsg, size_t errlen)
{
    while (len > 0 && is_space(text[len - 1]))
        len--;
    while (len > 0 && is_space(text[0])) {
        text++;
        len--;
    }
    if (len == 2 * KP_SEAL_KEK_LEN)
        return decode_hex(text, source, key, errmsg, errlen);
    if (len == 44)
        return decode_base64(text, source, key, errmsg, errlen);
    return kp_errf(errmsg, errlen, KP_EPARSE,
                   "%s: %zu characters; expected a 32-byte key as 64 hex digits or 44 base64 "
                   "characters (make one with: openssl rand -hex 32)",
                   source, len);
}

static int kek_from_text(const char *text, size_t len, const char *source, struct kp_seal_kek **out,
                         char *errmsg, size_t errlen)
{
    unsigned char key[KP_SEAL_KEK_LEN];
    int rc = kek_parse_text(text, len, source, key, errmsg, errlen);
    if (rc == KP_OK)
        rc = kek_new(key, out, errmsg, errlen);
    kp_secret_wipe(key, sizeof(key));
    return rc;
}

int kp_seal_kek_from_env(const char *value, struct kp_seal_kek **out, char *errmsg, size_t errlen)
{
    if (out == NULL)
        return kp_errf(errmsg, errlen, KP_EINVAL, "KEYPLANE_MASTER_KEY: no output");
    *out = NULL;
    if (value == NULL)
        return kp_errf(errmsg, errlen, KP_EINVAL, "KEYPLANE_MASTER_KEY is not set");
    return kek_from_text(value, strlen(value), "KEYPLANE_MASTER_KEY", out, errmsg, errlen);
}

int kp_seal_kek_from_bytes(const void *key, size_t len, struct kp_seal_kek **out, char *errmsg,
                           size_t errlen)
{
    if (out == NULL)
        return kp_errf(errmsg, errlen, KP_EINVAL, "master key: no output");
    *out = NULL;
    if (key == NULL || len != KP_SEAL_KEK_LEN)
        return kp_errf(errmsg, errlen, KP_EINVAL, "master key: %zu bytes; it must be %d", len,
                       KP_SEAL_KEK_LEN);
    return kek_new(key, out, errmsg, errlen);
}

int kp_seal_kek_generate(struct kp_seal_kek **out, char *errmsg, size_t errlen)
{
    unsigned char key[KP_SEAL_KEK_LEN];
    if (out == NULL)
        return kp_errf(errmsg, errlen, KP_EINVAL, "master key: no output");
    *out = NULL;
    /* The private DRBG: key material does not share a generator with
     * values that are published, like nonces. */
    if (RAND_priv_bytes(key, sizeof(key)) != 1)
        return ossl_fail(errmsg, errlen, "generate master key");
    int rc = kek_new(key, out, errmsg, errlen);
    kp_secret_wipe(key, sizeof(key));
    return rc;
}

/* Refuse what is not a regular file private to its owner, before reading. */
static int kek_file_check(int fd, const char *path, char *errmsg, size_t errlen)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return kp_errf(errmsg, errlen, kp_err_from_errno(errno), "master key file %s: %s", path,
                       strerror(errno));
    if (!S_ISREG(st.st_mode))
        return kp_errf(errmsg, errlen, KP_EINVAL, "master key file %s is not a regular file", path);
    if ((st.st_mode & 077) != 0)
        return kp_errf(
            errmsg, errlen, KP_EPERM,
            "master key file %s has mode %04o, open to group or others; run: chmod 600 %s", path,
            (unsigned)(st.st_mode & 07777), path);
    return KP_OK;
}

/* Read at most @cap bytes; *@len > @cap - 1 means the file is longer. */
static int kek_file_read(int fd, const char *path, char *buf, size_t cap, size_t *len, char *errmsg,
                         size_t errlen)
{
    size_t n = 0;
    while (n < cap) {
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return kp_errf(errmsg, errlen, kp_err_from_errno(errno), "master key file %s: %s", path,
                           strerror(errno));
        if (r == 0)
            break;
        n += (size_t)r;
    }
    *len = n;
    return KP_OK;
}

int kp_seal_kek_load_file(const char *path, struct kp_seal_kek **out, char *errmsg, size_t errlen)
{
    char text[KEK_TEXT_MAX];
    char source[PATH_MAX + 32];
    size_t len = 0;
    int rc;
    if (out == NULL || path == NULL)
        return kp_errf(errmsg, errlen, KP_EINVAL, "master key file: no path");
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return kp_errf(errmsg, errlen, kp_err_from_errno(errno), "master key file %s: %s", path,
                       strerror(errno));
    rc = kek_file_check(fd, path, errmsg, errlen);
    if (rc != KP_OK)
        goto done;
    rc = kek_file_read(fd, path, text, sizeof(text), &len, errmsg, errlen);
    if (rc != KP_OK)
        goto done;
    if (len == sizeof(text)) {
        rc =
            kp_errf(errmsg, errlen, KP_EPARSE,
                    "master key file %s: longer than %zu bytes; expected one 32-byte key as 64 hex "
                    "digits or 44 base64 characters",
                    path, sizeof(text) - 1);
        goto done;
    }
    snprintf(source, sizeof(source), "master key file %s", path);
    rc = kek_from_text(text, len, source, out, errmsg, errlen);
done:
    kp_secret_wipe(text, sizeof(text));
    close(fd);
    return rc;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Make the new directory entry durable. */
static int sync_parent_dir(const char *path, char *errmsg, size_t errlen)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", path);
    int fd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) != 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        return kp_errf(errmsg, errlen, kp_err_from_errno(e),
                       "master key file %s written, but syncing its directory failed: %s", path,
                       strerror(e));
    }
    close(fd);
    return KP_OK;
}

/* Write @text to a new 0600 temporary file beside @path and fsync it. */
static int write_temp(const char *tmp_path, int fd, const char *text, size_t len, char *errmsg,
                      size_t errlen)
{
    if (fchmod(fd, 0600) != 0 || write_all(fd, text, len) != 0 || fsync(fd) != 0)
        return kp_errf(errmsg, errlen, kp_err_from_errno(errno), "master key file %s: %s", tmp_path,
                       strerror(errno));
    return KP_OK;
}

int kp_seal_kek_write_file(const struct kp_seal_kek *kek, const char *path, char *errmsg,
                           size_t errlen)
{
    char tmp[PATH_MAX];
    char text[2 * KP_SEAL_KEK_LEN + 2];
    int rc;
    if (kek == NULL || path == NULL)
        return kp_errf(errmsg, errlen, KP_EINVAL, "master key file: no key or path");
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp.XXXXXX", path) >= sizeof(tmp))
        return kp_errf(errmsg, errlen, KP_EINVAL, "master key file %s: path too long", path);
    int fd = mkstemp(tmp); /* O_EXCL, mode 0600 */
    if (fd < 0)
        return kp_errf(errmsg, errlen, kp_err_from_errno(errno), "master key file %s: %s", tmp,
                       strerror(errno));
    kp_hex_encode(kek->key->data, KP_SEAL_KEK_LEN, text);
    text[2 * KP_SEAL_KEK_LEN] = '\n';
    rc = write_temp(tmp, fd, text, 2 * KP_SEAL_KEK_LEN + 1, errmsg, errlen);
    kp_secret_wipe(text, sizeof(text));
    if (close(fd) != 0 && rc == KP_OK)
        rc = kp_errf(errmsg, errlen, kp_err_from_errno(errno), "master key file %s: %s", tmp,
                     strerror(errno));
    if (rc != KP_OK)
        goto err_after_temp;
    /* link(), unlike rename(), refuses to replace an existing key. */
    if (link(tmp, path) != 0) {
        int e = errno;
        rc = e == EEXIST
                 ? kp_errf(errmsg, errlen, KP_EEXIST,
                           "master key file %s already exists; refusing to replace it", path)
                 : kp_errf(errmsg, errlen, kp_err_from_errno(e), "master key file %s: %s", path,
                           strerror(e));
        goto err_after_temp;
    }
    unlink(tmp);
    return sync_parent_dir(path, errmsg, errlen);

err_after_temp:
    unlink(tmp);
    return rc;
}

/* --- the envelope -------------------------------------------------------- */

/* A blob whose form has been checked; pointers into the caller's bytes. */
struct blob_view {
    const unsigned char *base;
    const unsigned char *data_tag;
    size_t ciphertext_len;
};

static int blob_parse(const void *blob, size_t len, struct blob_view *v, char *errmsg,
                      size_t errlen)
{
    const unsigned char *b = blob;
    if (b == NULL || len < OFF_KEK_ID)
        return kp_errf(errmsg, errlen, KP_EPARSE,
                       "sealed secret is %zu bytes, too short to be one (truncated?)", len);
    if (memcmp(b, BLOB_MAGIC, BLOB_MAGIC_LEN) != 0)
        return kp_errf(errmsg, errlen, KP_EPARSE, "not a sealed secret (no KPSB magic)");
    if (b[OFF_VERSION] != BLOB_VERSION)
        return kp_errf(errmsg, errlen, KP_EPARSE,
                       "sealed secret format version %u is not supported (this node reads %u)",
                       b[OFF_VERSION], BLOB_VERSION);
    if (len < BLOB_FIXED)
        return kp_errf(errmsg, errlen, KP_EPARSE,
                       "sealed secret is %zu bytes, shorter than the %d-byte minimum (truncated?)",
                       len, BLOB_FIXED);
    if (len - BLOB_FIXED > KP_SEAL_MAX_PLAINTEXT)
        return kp_errf(errmsg, errlen, KP_EPARSE,
                       "sealed secret is %zu bytes, more than any secret this node seals", len);
    v->base = b;
    v->ciphertext_len = len - BLOB_FIXED;
    v->data_tag = b + OFF_CIPHERTEXT + v->ciphertext_len;
    return KP_OK;
}

static int check_key_id(const char *key_id, size_t *len, char *errmsg, size_t errlen)
{
    *len = key_id != NULL ? strnlen(key_id, KP_SEAL_MAX_KEY_ID + 1) : 0;
    if (*len == 0 || *len > KP_SEAL_MAX_KEY_ID)
        return kp_errf(errmsg, errlen, KP_EINVAL, "seal: key id must be 1 to %d bytes",
                       KP_SEAL_MAX_KEY_ID);
    return KP_OK;
}

/* Associated data. Data layer: magic, version, 'D', key id, secret
 * version. Wrap layer: magic, version, 'W', KEK id, key id, secret
 * version. The purpose byte keeps the two from ever being equal; the key id
 * is length-prefixed so ("ab", v) and ("a", v') cannot collide. */
struct aad {
    unsigned char b[BLOB_MAGIC_LEN + 2 + KP_SEAL_KEK_ID_BYTES + 1 + KP_SEAL_MAX_KEY_ID + 8];
    size_t len;
};

static void aad_build(struct aad *a, char purpose, const unsigned char *kek_id, const char *key_id,
                      size_t key_id_len, uint64_t version)
{
    unsigned char *p = a->b;
    memcpy(p, BLOB_MAGIC, BLOB_MAGIC_LEN);
    p += BLOB_MAGIC_LEN;
    *p++ = BLOB_VERSION;
    *p++ = (unsigned char)purpose;
    if (kek_id != NULL) {
        memcpy(p, kek_id, KP_SEAL_KEK_ID_BYTES);
        p += KP_SEAL_KEK_ID_BYTES;
    }
    *p++ = (unsigned char)key_id_len;
    memcpy(p, key_id, key_id_len);
    p += key_id_len;
    for (int i = 7; i >= 0; i--)
        *p++ = (unsigned char)(version >> (8 * i));
    a->len = (size_t)(p - a->b);
}

/* AES-256-GCM encrypt @len bytes (at most KP_SEAL_MAX_PLAINTEXT). */
static int gcm_seal(const unsigned char *key, const unsigned char *nonce, const struct aad *aad,
                    const unsigned char *in, size_t len, unsigned char *out, unsigned char *tag,
                    char *errmsg, size_t errlen)
{
    int n = 0;
    int rc = KP_OK;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL)
        return ossl_fail(errmsg, errlen, "seal: cipher context");
    if (EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, nonce) != 1 ||
        EVP_EncryptUpdate(ctx, NULL, &n, aad->b, (int)aad->len) != 1 ||
        (len > 0 && EVP_EncryptUpdate(ctx, out, &n, in, (int)len) != 1) ||
        EVP_EncryptFinal_ex(ctx, out + (len > 0 ? n : 0), &n) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_LEN, tag) != 1)
        rc = ossl_fail(errmsg, errlen, "seal: AES-256-GCM");
    EVP_CIPHER_CTX_free(ctx);
    return rc;
}

/* AES-256-GCM decrypt. GCM writes plaintext before it can check the tag,
 * so on any failure @out is wiped. KP_SEAL_EAUTH when the tag is wrong. */
static int gcm_open(const unsigned char *key, const unsigned char *nonce, const struct aad *aad,
                    const unsigned char *in, size_t len, const unsigned char *tag,
                    unsigned char *out, const char *what, char *errmsg, size_t errlen)
{
    int n = 0;
    int rc = KP_OK;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL)
        return ossl_fail(errmsg, errlen, "open: cipher context");
    if (EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, nonce) != 1 ||
        EVP_DecryptUpdate(ctx, NULL, &n, aad->b, (int)aad->len) != 1 ||
        (len > 0 && EVP_DecryptUpdate(ctx, out, &n, in, (int)len) != 1) ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_LEN, (void *)tag) != 1) {
        rc = ossl_fail(errmsg, errlen, "open: AES-256-GCM");
    } else if (EVP_DecryptFinal_ex(ctx, out + (len > 0 ? n : 0), &n) != 1) {
        ERR_clear_error();
        rc =
            kp_errf(errmsg, errlen, KP_SEAL_EAUTH, "sealed secret does not authenticate: %s", what);
    }
    EVP_CIPHER_CTX_free(ctx);
    if (rc != KP_OK)
        kp_secret_wipe(out, len);
    return rc;
}

/* Check that @v was sealed under @kek and unwrap its DEK into @dek. */
static int unwrap_dek(const struct kp_seal_kek *kek, const struct blob_view *v, const char *key_id,
                      size_t key_id_len, uint64_t version, unsigned char dek[DEK_LEN], char *errmsg,
                      size_t errlen)
{
    const unsigned char *b = v->base;
    if (memcmp(b + OFF_KEK_ID, kek->id, KP_SEAL_KEK_ID_BYTES) != 0) {
        char blob_id[KP_SEAL_KEK_ID_LEN];
        kp_hex_encode(b + OFF_KEK_ID, KP_SEAL_KEK_ID_BYTES, blob_id);
        return kp_errf(errmsg, errlen, KP_EPERM,
                       "sealed under a different master key (kek id %s, this node has %s)", blob_id,
                       kek->id_hex);
    }
    struct aad aad;
    aad_build(&aad, 'W', kek->id, key_id, key_id_len, version);
    return gcm_open(kek->key->data, b + OFF_WRAP_NONCE, &aad, b + OFF_WRAPPED_DEK, DEK_LEN,
                    b + OFF_WRAP_TAG, dek,
                    "its wrapped data key was altered, or it was sealed for another key id "
                    "or version",
                    errmsg, errlen);
}

/* Fill the wrap fields of the blob at @b: KEK id, fresh nonce, wrapped DEK
 * and tag. */
static int wrap_dek(const struct kp_seal_kek *kek, const unsigned char dek[DEK_LEN],
                    const char *key_id, size_t key_id_len, uint64_t version, unsigned char *b,
                    char *errmsg, size_t errlen)
{
    struct aad aad;
    memcpy(b + OFF_KEK_ID, kek->id, KP_SEAL_KEK_ID_BYTES);
    if (RAND_bytes(b + OFF_WRAP_NONCE, NONCE_LEN) != 1)
        return ossl_fail(errmsg, errlen, "seal: random nonce");
    aad_build(&aad, 'W', kek->id, key_id, key_id_len, version);
    return gcm_seal(kek->key->data, b + OFF_WRAP_NONCE, &aad, dek, DEK_LEN, b + OFF_WRAPPED_DEK,
                    b + OFF_WRAP_TAG, errmsg, errlen);
}

/* Keep the @n bytes written past @out's end, or drop them; either way the
 * buffer stays NUL-terminated at its length, as kp_buf promises. */
static void buf_settle(struct kp_buf *out, size_t n, int rc)
{
    if (rc == KP_OK)
        out->len += n;
    out->data[out->len] = '\0';
}

/* Common argument checks of seal, open and rewrap. */
static int check_args(const void *kek, const void *io, const char *key_id, size_t *key_id_len,
                      char *errmsg, size_t errlen)
{
    if (kek == NULL || io == NULL)
        return kp_errf(errmsg, errlen, KP_EINVAL, "seal: no master key or no output");
    return check_key_id(key_id, key_id_len, errmsg, errlen);
}

int kp_seal_secret(const struct kp_seal_kek *kek, const void *plaintext, size_t len,
                   const char *key_id, uint64_t version, struct kp_buf *out, char *errmsg,
                   size_t errlen)
{
    unsigned char dek[DEK_LEN];
    size_t key_id_len = 0;
    struct aad aad;
    int rc = check_args(kek, out, key_id, &key_id_len, errmsg, errlen);
    if (rc != KP_OK)
        return rc;
    if (plaintext == NULL && len > 0)
        return kp_errf(errmsg, errlen, KP_EINVAL, "seal: no plaintext");
    if (len > KP_SEAL_MAX_PLAINTEXT)
        return kp_errf(errmsg, errlen, KP_ETOOBIG, "seal: secret is %zu bytes; the limit is %d",
                       len, KP_SEAL_MAX_PLAINTEXT);
    if (kp_buf_reserve(out, BLOB_FIXED + len) != 0)
        return kp_errf(errmsg, errlen, KP_ENOMEM, "seal: out of memory");
    unsigned char *b = (unsigned char *)out->data + out->len;
    memcpy(b, BLOB_MAGIC, BLOB_MAGIC_LEN);
    b[OFF_VERSION] = BLOB_VERSION;
    if (RAND_priv_bytes(dek, DEK_LEN) != 1 || RAND_bytes(b + OFF_DATA_NONCE, NONCE_LEN) != 1) {
        rc = ossl_fail(errmsg, errlen, "seal: random data key");
        goto done;
    }
    aad_build(&aad, 'D', NULL, key_id, key_id_len, version);
    rc = gcm_seal(dek, b + OFF_DATA_NONCE, &aad, plaintext, len, b + OFF_CIPHERTEXT,
                  b + OFF_CIPHERTEXT + len, errmsg, errlen);
    if (rc == KP_OK)
        rc = wrap_dek(kek, dek, key_id, key_id_len, version, b, errmsg, errlen);
done:
    buf_settle(out, BLOB_FIXED + len, rc);
    kp_secret_wipe(dek, sizeof(dek));
    return rc;
}

int kp_seal_open(const struct kp_seal_kek *kek, const void *blob, size_t len, const char *key_id,
                 uint64_t version, struct kp_secret **out, char *errmsg, size_t errlen)
{
    unsigned char dek[DEK_LEN];
    size_t key_id_len = 0;
    struct blob_view v;
    struct aad aad;
    if (out != NULL)
        *out = NULL;
    int rc = check_args(kek, out, key_id, &key_id_len, errmsg, errlen);
    if (rc != KP_OK)
        return rc;
    rc = blob_parse(blob, len, &v, errmsg, errlen);
    if (rc != KP_OK)
        return rc;
    rc = unwrap_dek(kek, &v, key_id, key_id_len, version, dek, errmsg, errlen);
    if (rc != KP_OK)
        goto done;
    struct kp_secret *s = secret_alloc(v.ciphertext_len);
    if (s == NULL) {
        rc = kp_errf(errmsg, errlen, KP_ENOMEM, "open: out of memory");
        goto done;
    }
    aad_build(&aad, 'D', NULL, key_id, key_id_len, version);
    rc = gcm_open(dek, v.base + OFF_DATA_NONCE, &aad, v.base + OFF_CIPHERTEXT, v.ciphertext_len,
                  v.data_tag, s->data, "its ciphertext, nonce or tag was altered", errmsg, errlen);
    if (rc != KP_OK)
        kp_secret_free(s);
    else
        *out = s;
done:
    kp_secret_wipe(dek, sizeof(dek));
    return rc;
}

int kp_seal_rewrap(const struct kp_seal_kek *old_kek, const struct kp_seal_kek *new_kek,
                   const void *blob, size_t len, const char *key_id, uint64_t version,
                   struct kp_buf *out, char *errmsg, size_t errlen)
{
    unsigned char dek[DEK_LEN];
    size_t key_id_len = 0;
    struct blob_view v;
    int rc = check_args(old_kek, out, key_id, &key_id_len, errmsg, errlen);
    if (rc == KP_OK && new_kek == NULL)
        rc = kp_errf(errmsg, errlen, KP_EINVAL, "rewrap: no new master key");
    if (rc == KP_OK)
        rc = blob_parse(blob, len, &v, errmsg, errlen);
    if (rc != KP_OK)
        return rc;
    rc = unwrap_dek(old_kek, &v, key_id, key_id_len, version, dek, errmsg, errlen);
    if (rc != KP_OK)
        goto done;
    if (kp_buf_reserve(out, len) != 0) {
        rc = kp_errf(errmsg, errlen, KP_ENOMEM, "rewrap: out of memory");
        goto done;
    }
    unsigned char *b = (unsigned char *)out->data + out->len;
    memcpy(b, blob, len);
    rc = wrap_dek(new_kek, dek, key_id, key_id_len, version, b, errmsg, errlen);
    buf_settle(out, len, rc);
done:
    kp_secret_wipe(dek, sizeof(dek));
    return rc;
}

int kp_seal_inspect(const void *blob, size_t len, struct kp_seal_info *info, char *errmsg,
                    size_t errlen)
{
    struct blob_view v = {0}; /* gcc -O2 cannot see that blob_parse sets it on KP_OK */
    if (info == NULL)
        return kp_errf(errmsg, errlen, KP_EINVAL, "inspect: no output");
    int rc = blob_parse(blob, len, &v, errmsg, errlen);
    if (rc != KP_OK)
        return rc;
    info->version = v.base[OFF_VERSION];
    kp_hex_encode(v.base + OFF_KEK_ID, KP_SEAL_KEK_ID_BYTES, info->kek_id);
    info->plaintext_len = v.ciphertext_len;
    return KP_OK;
}

/* Unit tests of secrets and sealing (node/core/seal.h): round trips, a
 * known-answer blob built from docs/secrets.md by an independent
 * implementation (Python's cryptography, tests/fuzz/corpus/seal/), every
 * bit of a blob flipped and every truncation refused with the right error,
 * key id and version binding, the wrong master key told apart from damage,
 * rewrap, the master key file and environment formats and permissions,
 * fingerprints and last four against known values, and allocation failures
 * walked one at a time through every entry point that allocates.
 *
 * Random data keys and nonces make blobs differ from run to run, but every
 * assertion holds for any of them: nothing here depends on chance or time. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/core.h"

#define KEY_ID  "key-openai-prod"
#define VERSION 7
#define PLAIN   "sk-test-1234567890abcdef"

/* KEK 00 01 .. 1f: its id is the first 8 bytes of its SHA-256. */
#define KEK_HEX    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
#define KEK_BASE64 "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
#define KEK_ID     "630dcd2966c43366"

/* Sealed by the Python reference in docs/secrets.md (the cryptography
 * package, not this code): KEK above, DEK 40..5f, wrap nonce a0..ab, data
 * nonce b0..bb, KEY_ID, VERSION, PLAIN. Also the seed
 * tests/fuzz/corpus/seal/openai-v7.blob. */
static const char known_blob_hex[] =
    "4b50534201630dcd2966c43366a0a1a2a3a4a5a6a7a8a9aaaba6593e6e018e44f82a2ccd984b378e9120fd0b43"
    "c6e2143bc4577cdd23f62b5ea755d3fbf5360daeb6f2d27f64c26ec5b0b1b2b3b4b5b6b7b8b9babb706badf1a4"
    "399fb40adc14ccd8c07bf38738e54a2771b3f963303d63315c434b6b26b50d324ae37e";

/* Offsets from docs/secrets.md. */
#define OFF_KEK_ID     5
#define OFF_WRAP_NONCE 13
#define OFF_DATA_NONCE 73
#define OFF_CIPHERTEXT 85

/* --- helpers -------------------------------------------------------------- */

static struct kp_seal_kek *kek_of(unsigned char seed)
{
    unsigned char key[KP_SEAL_KEK_LEN];
    struct kp_seal_kek *kek = NULL;
    char err[256];
    for (size_t i = 0; i < sizeof(key); i++)
        key[i] = (unsigned char)(seed + i);
    assert_int_equal(kp_seal_kek_from_bytes(key, sizeof(key), &kek, err, sizeof(err)), KP_OK);
    return kek;
}

static size_t unhex(const char *hex, unsigned char *out)
{
    size_t n = strlen(hex) / 2;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        assert_int_equal(sscanf(hex + 2 * i, "%2x", &v), 1);
        out[i] = (unsigned char)v;
    }
    return n;
}

static void seal_ok(const struct kp_seal_kek *kek, const char *plain, size_t len,
                    const char *key_id, uint64_t version, struct kp_buf *out)
{
    char err[256];
    kp_buf_init(out);
    assert_int_equal(kp_seal_secret(kek, plain, len, key_id, version, out, err, sizeof(err)),
                     KP_OK);
    assert_int_equal(out->len, KP_SEAL_OVERHEAD + len);
}

/* Open must give exactly @plain. */
static void open_expect(const struct kp_seal_kek *kek, const void *blob, size_t len,
                        const char *key_id, uint64_t version, const char *plain, size_t plain_len)
{
    struct kp_secret *s = NULL;
    char err[256] = "";
    int rc = kp_seal_open(kek, blob, len, key_id, version, &s, err, sizeof(err));
    if (rc != KP_OK)
        fail_msg("open: %s: %s", kp_err_name(rc), err);
    assert_non_null(s);
    assert_int_equal(kp_secret_len(s), plain_len);
    assert_memory_equal(kp_secret_data(s), plain, plain_len);
    kp_secret_free(s);
}

/* Open must fail with @want, leave no secret, and not echo @plain. */
static void open_refused(const struct kp_seal_kek *kek, const void *blob, size_t len,
                         const char *key_id, uint64_t version, int want, const char *plain,
                         char *err, size_t errlen)
{
    struct kp_secret *s = (struct kp_secret *)1;
    err[0] = '\0';
    int rc = kp_seal_open(kek, blob, len, key_id, version, &s, err, errlen);
    if (rc != want)
        fail_msg("open gave %s (%s), want %s", kp_err_name(rc), err, kp_err_name(want));
    assert_null(s);
    assert_true(err[0] != '\0');
    assert_null(strstr(err, plain));
}

static char tmpdir[64];

static int make_tmpdir(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_seal.XXXXXX");
    return mkdtemp(tmpdir) == NULL ? -1 : 0;
}

static int remove_tmpdir(void **state)
{
    char cmd[128];
    (void)state;
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Write @text to tmpdir/@name with exactly @mode; returns the path. */
static const char *write_key_file(const char *name, const char *text, mode_t mode)
{
    static char path[128];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    assert_int_equal(fchmod(fd, mode), 0);
    close(fd);
    return path;
}

static int load_file(const char *path, char *err, size_t errlen, struct kp_seal_kek **kek)
{
    err[0] = '\0';
    return kp_seal_kek_load_file(path, kek, err, errlen);
}

/* --- secrets -------------------------------------------------------------- */

/* A secret holds a copy of its bytes in page-aligned memory of its own. */
static void test_secret_basics(void **state)
{
    (void)state;
    char buf[] = PLAIN;
    struct kp_secret *s = kp_secret_new(buf, strlen(buf));
    assert_non_null(s);
    memset(buf, 'x', strlen(buf));
    assert_int_equal(kp_secret_len(s), strlen(PLAIN));
    assert_memory_equal(kp_secret_data(s), PLAIN, strlen(PLAIN));
    assert_int_equal((uintptr_t)kp_secret_data(s) % (uintptr_t)sysconf(_SC_PAGESIZE), 0);
    kp_secret_free(s);

    s = kp_secret_new(NULL, 0);
    assert_non_null(s);
    assert_int_equal(kp_secret_len(s), 0);
    kp_secret_free(s);
    kp_secret_free(NULL);
    assert_null(kp_secret_new(NULL, 3));
}

/* kp_secret_wipe, which kp_secret_free runs over the secret's pages before
 * freeing them, zeroes every byte and nothing beyond. */
static void test_secret_wipe(void **state)
{
    (void)state;
    unsigned char buf[64];
    memset(buf, 0xaa, sizeof(buf));
    kp_secret_wipe(buf + 8, 48);
    for (size_t i = 0; i < sizeof(buf); i++)
        assert_int_equal(buf[i], i < 8 || i >= 56 ? 0xaa : 0);
    kp_secret_wipe(NULL, 10);
    kp_secret_wipe(buf, 0);
}

static char captured[1024];

static void capture(const char *line, size_t len, void *arg)
{
    (void)arg;
    size_t room = sizeof(captured) - strlen(captured) - 1;
    strncat(captured, line, len < room ? len : room);
}

/* A secret registered for redaction is masked in log lines. */
static void test_secret_redaction(void **state)
{
    (void)state;
    const char value[] = "opaque-upstream-credential-42";
    struct kp_secret *s = kp_secret_new(value, strlen(value));
    assert_non_null(s);
    captured[0] = '\0';
    kp_log_set_sink(capture, NULL);
    kp_secret_register_for_redaction(s);
    kp_info("test", "oops %s", value);
    kp_log_set_sink(NULL, NULL);
    kp_log_clear_secrets();
    kp_secret_free(s);
    assert_non_null(strstr(captured, "oops"));
    assert_null(strstr(captured, value));
}

/* Fingerprints are "fp_" + 12 hex of SHA-256, as keyplane-mock computes
 * them (values from Python's hashlib). */
static void test_fingerprint(void **state)
{
    (void)state;
    static const struct {
        const char *key, *fp;
    } cases[] = {
        {"sk-test-1234567890abcdef", "fp_93faf5716142"},
        {"sk-ant-api03-abcdefghijklmnopqrstuvwxyz", "fp_47f4ebdc7b35"},
        {"abc", "fp_ba7816bf8f01"},
        {"", "fp_e3b0c44298fc"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char fp[KP_SEAL_FP_LEN];
        struct kp_secret *s = kp_secret_new(cases[i].key, strlen(cases[i].key));
        assert_non_null(s);
        assert_int_equal(kp_seal_fingerprint(s, fp), KP_OK);
        assert_string_equal(fp, cases[i].fp);
        kp_secret_free(s);
    }
}

/* The last four characters show only for secrets of 12 bytes or more, and
 * only when they are printable ASCII. */
static void test_last4(void **state)
{
    (void)state;
    static const struct {
        const char *key, *last4;
    } cases[] = {
        {"sk-test-1234567890abcdef", "cdef"},
        {"abcdefghijkl", "ijkl"},
        {"abcdefghijk", "****"},
        {"short", "****"},
        {"", "****"},
        {"abcdefghijk\n", "****"},
        {"abcdefghijk\xc3\xa9", "****"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char last4[KP_SEAL_LAST4_LEN];
        struct kp_secret *s = kp_secret_new(cases[i].key, strlen(cases[i].key));
        assert_non_null(s);
        kp_seal_last4(s, last4);
        assert_string_equal(last4, cases[i].last4);
        kp_secret_free(s);
    }
}

/* --- the envelope --------------------------------------------------------- */

/* Secrets of many sizes, the empty one and the largest included, open to
 * exactly what was sealed; a secret one byte over the limit is refused. */
static void test_round_trip(void **state)
{
    (void)state;
    static const size_t sizes[] = {0, 1, 15, 16, 17, 24, 100, 4096, KP_SEAL_MAX_PLAINTEXT};
    struct kp_seal_kek *kek = kek_of(0);
    char *plain = malloc(KP_SEAL_MAX_PLAINTEXT + 1);
    char err[256];
    assert_non_null(plain);
    for (size_t i = 0; i <= KP_SEAL_MAX_PLAINTEXT; i++)
        plain[i] = (char)('!' + i % 90);
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        struct kp_buf blob;
        seal_ok(kek, plain, sizes[i], KEY_ID, VERSION, &blob);
        open_expect(kek, blob.data, blob.len, KEY_ID, VERSION, plain, sizes[i]);
        kp_buf_free(&blob);
    }
    struct kp_buf out;
    kp_buf_init(&out);
    assert_int_equal(kp_seal_secret(kek, plain, KP_SEAL_MAX_PLAINTEXT + 1, KEY_ID, VERSION, &out,
                                    err, sizeof(err)),
                     KP_ETOOBIG);
    assert_int_equal(out.len, 0);
    free(plain);
    kp_seal_kek_free(kek);
}

/* Two seals of one secret differ (fresh data key and nonces), and a seal
 * appends to what the buffer already holds. */
static void test_seal_fresh_and_appends(void **state)
{
    (void)state;
    struct kp_seal_kek *kek = kek_of(0);
    struct kp_buf a, b;
    char err[256];
    seal_ok(kek, PLAIN, strlen(PLAIN), KEY_ID, VERSION, &a);
    seal_ok(kek, PLAIN, strlen(PLAIN), KEY_ID, VERSION, &b);
    assert_memory_not_equal(a.data + OFF_WRAP_NONCE, b.data + OFF_WRAP_NONCE, 12);
    assert_memory_not_equal(a.data + OFF_CIPHERTEXT, b.data + OFF_CIPHERTEXT, strlen(PLAIN));
    assert_int_equal(
        kp_seal_secret(kek, PLAIN, strlen(PLAIN), KEY_ID, VERSION, &a, err, sizeof(err)), KP_OK);
    assert_int_equal(a.len, 2 * (KP_SEAL_OVERHEAD + strlen(PLAIN)));
    open_expect(kek, a.data + b.len, b.len, KEY_ID, VERSION, PLAIN, strlen(PLAIN));
    kp_buf_free(&a);
    kp_buf_free(&b);
    kp_seal_kek_free(kek);
}

/* A blob built by another implementation from docs/secrets.md opens, and
 * one this code seals has the documented header. */
static void test_known_answer(void **state)
{
    (void)state;
    unsigned char blob[256];
    size_t len = unhex(known_blob_hex, blob);
    struct kp_seal_kek *kek = kek_of(0);
    struct kp_seal_info info;
    char err[256];
    assert_string_equal(kp_seal_kek_id(kek), KEK_ID);
    open_expect(kek, blob, len, KEY_ID, VERSION, PLAIN, strlen(PLAIN));
    assert_int_equal(kp_seal_inspect(blob, len, &info, err, sizeof(err)), KP_OK);
    assert_int_equal(info.version, 1);
    assert_string_equal(info.kek_id, KEK_ID);
    assert_int_equal(info.plaintext_len, strlen(PLAIN));

    struct kp_buf mine;
    seal_ok(kek, PLAIN, strlen(PLAIN), KEY_ID, VERSION, &mine);
    assert_memory_equal(mine.data, blob, OFF_WRAP_NONCE); /* magic, version, KEK id */
    kp_buf_free(&mine);
    kp_seal_kek_free(kek);
}

/* Every bit of a blob, flipped alone, makes it refuse to open: header bytes
 * as malformed, the KEK id as another master key, everything else as an
 * authentication failure. */
static void test_every_bit_flip_refused(void **state)
{
    (void)state;
    struct kp_seal_kek *kek = kek_of(0);
    struct kp_buf blob;
    char err[256];
    seal_ok(kek, PLAIN, strlen(PLAIN), KEY_ID, VERSION, &blob);
    for (size_t off = 0; off < blob.len; off++) {
        int want = off < OFF_KEK_ID ? KP_EPARSE : off < OFF_KEK_ID + 8 ? KP_EPERM : KP_SEAL_EAUTH;
        for (int bit = 0; bit < 8; bit++) {
            blob.data[off] ^= (char)(1 << bit);
            open_refused(kek, blob.data, blob.len, KEY_ID, VERSION, want, PLAIN, err, sizeof(err));
            blob.data[off] ^= (char)(1 << bit);
        }
    }
    open_expect(kek, blob.data, blob.len, KEY_ID, VERSION, PLAIN, strlen(PLAIN));
    kp_buf_free(&blob);
    kp_seal_kek_free(kek);
}

/* Every truncation, and one extra byte, is refused: too short to hold the
 * fixed fields is malformed; longer ones move the tag and fail to
 * authenticate. */
static void test_every_truncation_refused(void **state)
{
    (void)state;
    struct kp_seal_kek *kek = kek_of(0);
    struct kp_buf blob;
    char err[256];
    seal_ok(kek, PLAIN, strlen(PLAIN), KEY_ID, VERSION, &blob);
    for (size_t len = 0; len < blob.len; len++)
        open_refused(kek, blob.data, len, KEY_ID, VERSION,
                     len < KP_SEAL_OVERHEAD ? KP_EPARSE : KP_SEAL_EAUTH, PLAIN, err, sizeof(err));
    open_refused(kek, NULL, 0, KEY_ID, VERSION, KP_EPARSE, PLAIN, err, sizeof(err));
    assert_int_equal(kp_buf_append_lit(&blob, "x"), 0);
    open_refused(kek, blob.data, blob.len, KEY_ID, VERSION, KP_SEAL_EAUTH, PLAIN, err, sizeof(err));
    kp_buf_free(&blob);
    kp_seal_kek_free(kek);
}

/* The key id and version are bound: any other one fails to authenticate,
 * including ids that differ only in length or by a prefix. */
static void test_key_id_and_version_bound(void **state)
{
    (void)state;
    struct kp_seal_kek *kek = kek_of(0);
    struct kp_buf blob;
    char err[256];
    seal_ok(kek, PLAIN, strlen(PLAIN), KEY_ID, VERSION, &blob);
    static const char *const other_ids[] = {"key-openai-pro", "key-openai-prod2", "Key-openai-prod",
                                            "k"};
    for (size_t i = 0; i < sizeof(other_ids) / sizeof(other_ids[0]); i++)
        open_refused(kek, blob.data, blob.len, other_ids[i], VERSION, KP_SEAL_EAUTH, PLAIN, err,
                     sizeof(err));
    static const uint64_t other_versions[] = {0, 6, 8, VERSION | (1ull << 63)};
    for (size_t i = 0; i < sizeof(other_versions) / sizeof(other_versions[0]); i++)
        open_refused(kek, blob.data, blob.len, KEY_ID, other_versions[i], KP_SEAL_EAUTH, PLAIN, err,
                     sizeof(err));
    assert_non_null(strstr(err, "another key id or version"));
    kp_buf_free(&blob);
    kp_seal_kek_free(kek);
}

/* A blob sealed under another master key is told apart from a damaged one,
 * and the message names both KEK ids. */
static void test_wrong_kek(void **state)
{
    (void)state;
    struct kp_seal_kek *kek = kek_of(0), *other = kek_of(1);
    struct kp_buf blob;
    char err[256], want[256];
    seal_ok(kek, PLAIN, strlen(PLAIN), KEY_ID, VERSION, &blob);
    open_refused(other, blob.data, blob.len, KEY_ID, VERSION, KP_EPERM, PLAIN, err, sizeof(err));
    snprintf(want, sizeof(want),
             "sealed under a different master key (kek id %s, this node has %s)", KEK_ID,
             kp_seal_kek_id(other));
    assert_string_equal(err, want);
    kp_buf_free(&blob);
    kp_seal_kek_free(kek);
    kp_seal_kek_free(other);
}

/* Bad arguments are refused before anything is sealed or opened. */
static void test_bad_arguments(void **state)
{
    (void)state;
    struct kp_seal_kek *kek = kek_of(0);
    struct kp_buf out;
    struct kp_secret *s = NULL;
    char long_id[KP_SEAL_MAX_KEY_ID + 2];
    char err[256];
    memset(long_id, 'k', sizeof(long_id) - 1);
    long_id[sizeof(long_id) - 1] = '\0';
    kp_buf_init(&out);
    assert_int_equal(kp_seal_secret(kek, PLAIN, 3, "", 1, &out, err, sizeof(err)), KP_EINVAL);
    assert_int_equal(kp_seal_secret(kek, PLAIN, 3, NULL, 1, &out, err, sizeof(err)), KP_EINVAL);
    assert_int_equal(kp_seal_secret(kek, PLAIN, 3, long_id, 1, &out, err, sizeof(err)), KP_EINVAL);
    assert_int_equal(kp_seal_secret(NULL, PLAIN, 3, KEY_ID, 1, &out, err, sizeof(err)), KP_EINVAL);
    assert_int_equal(kp_seal_secret(kek, NULL, 3, KEY_ID, 1, &out, err, sizeof(err)), KP_EINVAL);
    assert_int_equal(out.len, 0);
    long_id[KP_SEAL_MAX_KEY_ID] = '\0'; /* the longest allowed */
    assert_int_equal(kp_seal_secret(kek, PLAIN, 3, long_id, 1, &out, err, sizeof(err)), KP_OK);
    open_expect(kek, out.data, out.len, long_id, 1, PLAIN, 3);
    assert_int_equal(kp_seal_open(kek, out.data, out.len, "", 1, &s, err, sizeof(err)), KP_EINVAL);
    assert_null(s);
    kp_buf_free(&out);
    kp_seal_kek_free(kek);
}

/* Malformed blobs say what is wrong, and inspect agrees with open. */
static void test_malformed(void **state)
{
    (void)state;
    struct kp_seal_kek *kek = kek_of(0);
    struct kp_buf blob;
    struct kp_seal_info info;
    char err[256];
    seal_ok(kek, PLAIN, strlen(PLAIN), KEY_ID, VERSION, &blob);
    blob.data[4] = 2;
    open_refused(kek, blob.data, blob.len, KEY_ID, VERSION, KP_EPARSE, PLAIN, err, sizeof(err));
    assert_string_equal(err, "sealed secret format version 2 is not supported (this node reads 1)");
    assert_int_equal(kp_seal_inspect(blob.data, blob.len, &info, err, sizeof(err)), KP_EPARSE);
    blob.data[4] = 1;
    blob.data[0] = 'X';
    open_refused(kek, blob.data, blob.len, KEY_ID, VERSION, KP_EPARSE, PLAIN, err, sizeof(err));
    assert_string_equal(err, "not a sealed secret (no KPSB magic)");
    blob.data[0] = 'K';
    open_refused(kek, blob.data, 57, KEY_ID, VERSION, KP_EPARSE, PLAIN, err, sizeof(err));
    assert_string_equal(
        err, "sealed secret is 57 bytes, shorter than the 101-byte minimum (truncated?)");

    unsigned char *big = calloc(1, KP_SEAL_OVERHEAD + KP_SEAL_MAX_PLAINTEXT + 1);
    assert_non_null(big);
    memcpy(big, blob.data, OFF_CIPHERTEXT);
    open_refused(kek, big, KP_SEAL_OVERHEAD + KP_SEAL_MAX_PLAINTEXT + 1, KEY_ID, VERSION, KP_EPARSE,
                 PLAIN, err, sizeof(err));
    free(big);
    kp_buf_free(&blob);
    kp_seal_kek_free(kek);
}

/* Rewrap moves a blob to the new master key: the new one opens it, the old
 * one is told it is the wrong key, and the data layer is copied byte for
 * byte (the secret was never decrypted). */
static void test_rewrap(void **state)
{
    (void)state;
    struct kp_seal_kek *old_kek = kek_of(0), *new_kek = kek_of(1), *third = kek_of(2);
    struct kp_buf blob, moved;
    struct kp_seal_info info;
    char err[256];
    seal_ok(old_kek, PLAIN, strlen(PLAIN), KEY_ID, VERSION, &blob);
    kp_buf_init(&moved);
    assert_int_equal(kp_seal_rewrap(old_kek, new_kek, blob.data, blob.len, KEY_ID, VERSION, &moved,
                                    err, sizeof(err)),
                     KP_OK);
    assert_int_equal(moved.len, blob.len);
    assert_memory_equal(moved.data, blob.data, OFF_KEK_ID);
    assert_memory_equal(moved.data + OFF_DATA_NONCE, blob.data + OFF_DATA_NONCE,
                        blob.len - OFF_DATA_NONCE);
    assert_int_equal(kp_seal_inspect(moved.data, moved.len, &info, err, sizeof(err)), KP_OK);
    assert_string_equal(info.kek_id, kp_seal_kek_id(new_kek));
    open_expect(new_kek, moved.data, moved.len, KEY_ID, VERSION, PLAIN, strlen(PLAIN));
    open_refused(old_kek, moved.data, moved.len, KEY_ID, VERSION, KP_EPERM, PLAIN, err,
                 sizeof(err));

    /* The wrong old key, or another key id, leaves the output untouched. */
    size_t before = moved.len;
    assert_int_equal(kp_seal_rewrap(third, new_kek, blob.data, blob.len, KEY_ID, VERSION, &moved,
                                    err, sizeof(err)),
                     KP_EPERM);
    assert_int_equal(kp_seal_rewrap(old_kek, new_kek, blob.data, blob.len, "key-other", VERSION,
                                    &moved, err, sizeof(err)),
                     KP_SEAL_EAUTH);
    assert_int_equal(
        kp_seal_rewrap(old_kek, new_kek, blob.data, 60, KEY_ID, VERSION, &moved, err, sizeof(err)),
        KP_EPARSE);
    assert_int_equal(moved.len, before);

    /* Damage to the data layer passes rewrap and is found by open. */
    blob.data[OFF_CIPHERTEXT] ^= 1;
    kp_buf_free(&moved);
    assert_int_equal(kp_seal_rewrap(old_kek, new_kek, blob.data, blob.len, KEY_ID, VERSION, &moved,
                                    err, sizeof(err)),
                     KP_OK);
    open_refused(new_kek, moved.data, moved.len, KEY_ID, VERSION, KP_SEAL_EAUTH, PLAIN, err,
                 sizeof(err));
    kp_buf_free(&moved);
    kp_buf_free(&blob);
    kp_seal_kek_free(old_kek);
    kp_seal_kek_free(new_kek);
    kp_seal_kek_free(third);
}

/* --- the master key ------------------------------------------------------- */

/* Hex (either case) and base64 of the same key, with or without trailing
 * newline or surrounding blanks, give the same KEK id. */
static void test_kek_file_formats(void **state)
{
    (void)state;
    static const char *const texts[] = {
        KEK_HEX,
        KEK_HEX "\n",
        KEK_HEX "\r\n",
        "  " KEK_HEX " \n\n",
        "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F\n",
        KEK_BASE64,
        KEK_BASE64 "\n",
    };
    char err[256];
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        struct kp_seal_kek *kek = NULL;
        const char *path = write_key_file("master.key", texts[i], 0600);
        int rc = load_file(path, err, sizeof(err), &kek);
        if (rc != KP_OK)
            fail_msg("text %zu: %s", i, err);
        assert_string_equal(kp_seal_kek_id(kek), KEK_ID);
        kp_seal_kek_free(kek);
        assert_int_equal(kp_seal_kek_from_env(texts[i], &kek, err, sizeof(err)), KP_OK);
        assert_string_equal(kp_seal_kek_id(kek), KEK_ID);
        kp_seal_kek_free(kek);
    }
    /* 0400 is as private as 0600. */
    struct kp_seal_kek *kek = NULL;
    assert_int_equal(load_file(write_key_file("ro.key", KEK_HEX, 0400), err, sizeof(err), &kek),
                     KP_OK);
    kp_seal_kek_free(kek);
}

/* Wrong lengths and bad characters are refused with the source and the
 * position, never the character. */
static void test_kek_text_errors(void **state)
{
    (void)state;
    static const struct {
        const char *text, *msg;
    } cases[] = {
        {"", "KEYPLANE_MASTER_KEY: 0 characters; expected a 32-byte key as 64 hex digits or 44 "
             "base64 characters (make one with: openssl rand -hex 32)"},
        {KEK_HEX "0", "KEYPLANE_MASTER_KEY: 65 characters; expected"},
        {"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1",
         "KEYPLANE_MASTER_KEY: 63 characters; expected"},
        {"000102030405060708090a0b0c0d0e0f1011121314151617g8191a1b1c1d1e1f",
         "KEYPLANE_MASTER_KEY: character 49 is not a hex digit (64 hex digits expected)"},
        {"0001020304050607 8090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
         "KEYPLANE_MASTER_KEY: character 17 is not a hex digit"},
        {"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh-=",
         "KEYPLANE_MASTER_KEY: character 43 is not base64"},
        {"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8A",
         "KEYPLANE_MASTER_KEY: character 44 is not '='"},
        {"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh9=",
         "KEYPLANE_MASTER_KEY: base64 is not canonical"},
        {"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh==",
         "KEYPLANE_MASTER_KEY: character 43 is not base64"},
    };
    char err[256];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct kp_seal_kek *kek = (struct kp_seal_kek *)1;
        assert_int_equal(kp_seal_kek_from_env(cases[i].text, &kek, err, sizeof(err)), KP_EPARSE);
        assert_null(kek);
        if (strncmp(err, cases[i].msg, strlen(cases[i].msg)) != 0)
            fail_msg("case %zu: %s", i, err);
    }
    struct kp_seal_kek *kek = NULL;
    assert_int_equal(kp_seal_kek_from_env(NULL, &kek, err, sizeof(err)), KP_EINVAL);
    assert_string_equal(err, "KEYPLANE_MASTER_KEY is not set");
    assert_int_equal(kp_seal_kek_from_bytes("short", 5, &kek, err, sizeof(err)), KP_EINVAL);
}

/* A key file open to group or others is refused and the message says how
 * to fix it; a missing file, a directory and an oversized file too. */
static void test_kek_file_errors(void **state)
{
    (void)state;
    static const mode_t open_modes[] = {0644, 0640, 0604, 0660, 0620, 0601, 0700 | 0010};
    char err[512], want[512];
    struct kp_seal_kek *kek = NULL;
    for (size_t i = 0; i < sizeof(open_modes) / sizeof(open_modes[0]); i++) {
        const char *path = write_key_file("open.key", KEK_HEX "\n", open_modes[i]);
        assert_int_equal(load_file(path, err, sizeof(err), &kek), KP_EPERM);
        assert_null(kek);
        snprintf(want, sizeof(want),
                 "master key file %s has mode %04o, open to group or others; run: chmod 600 %s",
                 path, (unsigned)open_modes[i], path);
        assert_string_equal(err, want);
    }

    char path[128];
    snprintf(path, sizeof(path), "%s/missing.key", tmpdir);
    assert_int_equal(load_file(path, err, sizeof(err), &kek), KP_ENOENT);
    snprintf(want, sizeof(want), "master key file %s: No such file or directory", path);
    assert_string_equal(err, want);
    assert_int_equal(load_file(tmpdir, err, sizeof(err), &kek), KP_EINVAL);
    snprintf(want, sizeof(want), "master key file %s is not a regular file", tmpdir);
    assert_string_equal(err, want);

    const char *bad = write_key_file("bad.key", "not a key\n", 0600);
    assert_int_equal(load_file(bad, err, sizeof(err), &kek), KP_EPARSE);
    snprintf(want, sizeof(want), "master key file %s: 9 characters; expected", bad);
    assert_int_equal(strncmp(err, want, strlen(want)), 0);

    char huge[600];
    memset(huge, 'a', sizeof(huge) - 1);
    huge[sizeof(huge) - 1] = '\0';
    const char *big = write_key_file("big.key", huge, 0600);
    assert_int_equal(load_file(big, err, sizeof(err), &kek), KP_EPARSE);
    assert_non_null(strstr(err, "longer than 255 bytes"));
    assert_null(kek);
}

/* A generated key written to a file loads back with the same id; the file
 * is 0600 hex, nothing is left beside it, and it is never replaced. */
static void test_kek_generate_and_write(void **state)
{
    (void)state;
    struct kp_seal_kek *a = NULL, *b = NULL, *loaded = NULL;
    char err[512], path[128];
    struct stat st;
    assert_int_equal(kp_seal_kek_generate(&a, err, sizeof(err)), KP_OK);
    assert_int_equal(kp_seal_kek_generate(&b, err, sizeof(err)), KP_OK);
    assert_string_not_equal(kp_seal_kek_id(a), kp_seal_kek_id(b));

    snprintf(path, sizeof(path), "%s/gen/master.key", tmpdir);
    assert_int_equal(kp_seal_kek_write_file(a, path, err, sizeof(err)), KP_ENOENT);
    snprintf(path, sizeof(path), "%s/gen", tmpdir);
    assert_int_equal(mkdir(path, 0700), 0);
    snprintf(path, sizeof(path), "%s/gen/master.key", tmpdir);
    assert_int_equal(kp_seal_kek_write_file(a, path, err, sizeof(err)), KP_OK);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    assert_int_equal(st.st_size, 65);
    assert_int_equal(load_file(path, err, sizeof(err), &loaded), KP_OK);
    assert_string_equal(kp_seal_kek_id(loaded), kp_seal_kek_id(a));
    kp_seal_kek_free(loaded);

    assert_int_equal(kp_seal_kek_write_file(b, path, err, sizeof(err)), KP_EEXIST);
    assert_non_null(strstr(err, "already exists; refusing to replace it"));
    assert_int_equal(load_file(path, err, sizeof(err), &loaded), KP_OK);
    assert_string_equal(kp_seal_kek_id(loaded), kp_seal_kek_id(a));
    kp_seal_kek_free(loaded);

    char cmd[256];
    snprintf(cmd, sizeof(cmd), "test \"$(ls -A '%s/gen')\" = master.key", tmpdir);
    assert_int_equal(system(cmd), 0);
    kp_seal_kek_free(a);
    kp_seal_kek_free(b);
}

/* --- allocation failures -------------------------------------------------- */

/* Each allocation of seal, open, rewrap and KEK loading fails in turn: the
 * call reports KP_ENOMEM, leaves its output as it was, and leaks nothing
 * (LeakSanitizer checks at exit). */
static void test_alloc_failures(void **state)
{
    (void)state;
    struct kp_seal_kek *kek = kek_of(0), *new_kek = kek_of(1);
    struct kp_buf blob;
    char err[256];
    seal_ok(kek, PLAIN, strlen(PLAIN), KEY_ID, VERSION, &blob);
    const char *path = write_key_file("alloc.key", KEK_HEX, 0600);

    for (long fail = 0;; fail++) {
        struct kp_buf out;
        struct kp_secret *s = NULL;
        struct kp_seal_kek *loaded = NULL;
        int rcs[4];
        kp_buf_init(&out);
        kp_alloc_fail_after(fail);
        rcs[0] = kp_seal_secret(kek, PLAIN, strlen(PLAIN), KEY_ID, VERSION, &out, err, sizeof(err));
        kp_alloc_fail_after(fail);
        rcs[1] = kp_seal_open(kek, blob.data, blob.len, KEY_ID, VERSION, &s, err, sizeof(err));
        kp_alloc_fail_after(fail);
        rcs[2] = kp_seal_rewrap(kek, new_kek, blob.data, blob.len, KEY_ID, VERSION, &out, err,
                                sizeof(err));
        kp_alloc_fail_after(fail);
        rcs[3] = kp_seal_kek_load_file(path, &loaded, err, sizeof(err));
        kp_alloc_fail_reset();

        int done = 1;
        for (int i = 0; i < 4; i++) {
            assert_true(rcs[i] == KP_OK || rcs[i] == KP_ENOMEM);
            done &= rcs[i] == KP_OK;
        }
        assert_true(rcs[1] == KP_OK ? s != NULL : s == NULL);
        assert_true(rcs[3] == KP_OK ? loaded != NULL : loaded == NULL);
        size_t want_len = (rcs[0] == KP_OK) * blob.len + (rcs[2] == KP_OK) * blob.len;
        assert_int_equal(out.len, want_len);
        if (rcs[1] == KP_OK)
            assert_memory_equal(kp_secret_data(s), PLAIN, strlen(PLAIN));
        kp_secret_free(s);
        kp_seal_kek_free(loaded);
        kp_buf_free(&out);
        if (done)
            break;
        assert_true(fail < 20);
    }
    kp_buf_free(&blob);
    kp_seal_kek_free(kek);
    kp_seal_kek_free(new_kek);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_secret_basics),
        cmocka_unit_test(test_secret_wipe),
        cmocka_unit_test(test_secret_redaction),
        cmocka_unit_test(test_fingerprint),
        cmocka_unit_test(test_last4),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_seal_fresh_and_appends),
        cmocka_unit_test(test_known_answer),
        cmocka_unit_test(test_every_bit_flip_refused),
        cmocka_unit_test(test_every_truncation_refused),
        cmocka_unit_test(test_key_id_and_version_bound),
        cmocka_unit_test(test_wrong_kek),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_rewrap),
        cmocka_unit_test(test_kek_file_formats),
        cmocka_unit_test(test_kek_text_errors),
        cmocka_unit_test(test_kek_file_errors),
        cmocka_unit_test(test_kek_generate_and_write),
        cmocka_unit_test(test_alloc_failures),
    };
    return cmocka_run_group_tests(tests, make_tmpdir, remove_tmpdir);
}

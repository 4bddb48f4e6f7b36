/* libFuzzer driver for sealed blobs (node/core/seal.h): every input is
 * opened under a fixed master key for each (key id, version) the seeds
 * were sealed for, inspected, and rewrapped under a second master key.
 * Crashes, sanitizer reports and leaks are what the fuzzer looks for; it
 * also checks the invariants that tie the entry points together:
 *
 * - open succeeds only with a secret of blob length - KP_SEAL_OVERHEAD
 *   bytes, and a failed open leaves no secret;
 * - inspect accepts every blob that opens, and reports its length;
 * - a blob that opens also rewraps, and the rewrapped blob opens under the
 *   new key to the same bytes; a rewrapped blob never opens when the
 *   original does not.
 *
 * The seeds (tests/fuzz/corpus/seal/) were built by the Python reference
 * in docs/secrets.md under the key 00 01 .. 1f. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"

static struct kp_seal_kek *kek, *new_kek;

static const struct {
    const char *key_id;
    uint64_t version;
} bindings[] = {
    {"key-openai-prod", 7},
    {"key-empty", 1},
    {"key-gcp-sa", 2},
};

static struct kp_seal_kek *make_kek(unsigned char seed)
{
    unsigned char key[KP_SEAL_KEK_LEN];
    struct kp_seal_kek *k = NULL;
    for (size_t i = 0; i < sizeof(key); i++)
        key[i] = (unsigned char)(seed + i);
    if (kp_seal_kek_from_bytes(key, sizeof(key), &k, NULL, 0) != KP_OK)
        abort();
    return k;
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    kek = make_kek(0);
    new_kek = make_kek(1);
    return 0;
}

static int open_blob(const struct kp_seal_kek *k, const uint8_t *data, size_t size, size_t b,
                     struct kp_secret **out)
{
    char err[256];
    int rc =
        kp_seal_open(k, data, size, bindings[b].key_id, bindings[b].version, out, err, sizeof(err));
    if ((rc == KP_OK) != (*out != NULL))
        abort();
    if (rc == KP_OK && kp_secret_len(*out) != size - KP_SEAL_OVERHEAD)
        abort();
    return rc;
}

static void check_rewrap(const uint8_t *data, size_t size, size_t b, const struct kp_secret *s)
{
    struct kp_buf moved;
    struct kp_secret *again = NULL;
    char err[256];
    kp_buf_init(&moved);
    int rc = kp_seal_rewrap(kek, new_kek, data, size, bindings[b].key_id, bindings[b].version,
                            &moved, err, sizeof(err));
    if (s != NULL && rc != KP_OK)
        abort();
    if (rc == KP_OK) {
        int again_rc = open_blob(new_kek, (const uint8_t *)moved.data, moved.len, b, &again);
        if ((again_rc == KP_OK) != (s != NULL))
            abort();
        if (s != NULL && memcmp(kp_secret_data(s), kp_secret_data(again), kp_secret_len(s)) != 0)
            abort();
    }
    kp_secret_free(again);
    kp_buf_free(&moved);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct kp_seal_info info;
    char err[256];
    int inspect_rc = kp_seal_inspect(data, size, &info, err, sizeof(err));
    if (inspect_rc == KP_OK && info.plaintext_len != size - KP_SEAL_OVERHEAD)
        abort();
    for (size_t b = 0; b < sizeof(bindings) / sizeof(bindings[0]); b++) {
        struct kp_secret *s = NULL;
        int rc = open_blob(kek, data, size, b, &s);
        if (rc == KP_OK && inspect_rc != KP_OK)
            abort();
        check_rewrap(data, size, b, s);
        kp_secret_free(s);
    }
    return 0;
}

/* Unit tests of raftstore tokens, roles and scopes (raftstore/token.h):
 * the token format against known answers computed with Python's zlib, the
 * generate -> parse -> verify round trip, every single-character typo at
 * every position, malformed shapes with the message each gets, MAC
 * verification with wrong inputs, the role table cell by cell, scope
 * matching with wildcards, empty lists and expiry boundaries, scope
 * validation, and allocation failures walked through generation.
 *
 * This file defines CRYPTO_memcmp itself. The linker binds the library's
 * call to this definition, so the test can see that kp_token_verify
 * compares through OpenSSL's constant-time API, and on how many bytes,
 * without measuring time. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "raftstore/raftstore.h"

#define T0 1767225600000 /* 2026-01-01T00:00:00.000Z */

static const uint8_t pepper[KP_TOKEN_PEPPER_LEN] = {
    0x6b, 0x70, 0x2d, 0x74, 0x65, 0x73, 0x74, 0x2d, 0x70, 0x65, 0x70, 0x70, 0x65, 0x72, 0x00, 0x01,
    0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11};

/* --- the constant-time comparison, observed ------------------------------ */

static unsigned memcmp_calls;
static size_t memcmp_last_len;

/* Stands in for OpenSSL's: counts the call, then compares without an early
 * exit, as the real one does. */
int CRYPTO_memcmp(const void *in_a, const void *in_b, size_t len)
{
    const unsigned char *a = in_a, *b = in_b;
    unsigned char diff = 0;
    memcmp_calls++;
    memcmp_last_len = len;
    for (size_t i = 0; i < len; i++)
        diff |= a[i] ^ b[i];
    return diff != 0;
}

/* --- helpers ------------------------------------------------------------- */

static int parse_str(const char *text, struct kp_token_parts *parts, char *msg, size_t msglen)
{
    return kp_token_parse(text, strlen(text), parts, msg, msglen);
}

/* Parse @text and expect KP_EPARSE with exactly @want as the message. */
static void expect_malformed(const char *text, const char *want)
{
    struct kp_token_parts parts;
    char msg[256] = "";
    int rc = parse_str(text, &parts, msg, sizeof(msg));
    if (rc != KP_EPARSE || strcmp(msg, want) != 0)
        fail_msg("token \"%s\": rc %s, message \"%s\", wanted \"%s\"", text, kp_err_name(rc), msg,
                 want);
}

/* --- format -------------------------------------------------------------- */

/* Known answers (Python: zlib.crc32, then six base62 digits over
 * 0-9A-Za-z, most significant first) pin the checksum and the layout, so
 * another implementation (a CLI, a secret scanner) can check tokens too. */
static void test_known_answers(void **state)
{
    static const char *const good[] = {
        "kp_abcdefghijkl_0123456789ABCDEFGHIJKLMNOPQRSTUV3U8A8P",
        "kp_222222222222_000000000000000000000000000000003NFu1Q",
    };
    struct kp_token_parts parts;
    char msg[256];
    (void)state;
    for (size_t i = 0; i < 2; i++) {
        assert_int_equal(strlen(good[i]), KP_TOKEN_TEXT_LEN);
        assert_int_equal(parse_str(good[i], &parts, msg, sizeof(msg)), KP_OK);
    }
    assert_string_equal(parts.id, "tk_222222222222");
    assert_ptr_equal(parts.secret, good[1] + 16);
    assert_int_equal(parts.secret_len, KP_TOKEN_SECRET_CHARS);
}

/* Generate, parse, verify: the text has the documented shape, the parsed id
 * is the generated id, the secret points into the text, and the MAC is the
 * one returned. Every token differs, and the sampled characters cover the
 * whole alphabets. */
static void test_round_trip(void **state)
{
    char seen[256] = {0};
    char prev_id[KP_TOKEN_ID_SIZE] = "";
    (void)state;
    for (int n = 0; n < 300; n++) {
        char *text = NULL;
        char id[KP_TOKEN_ID_SIZE];
        uint8_t hash[KP_TOKEN_HASH_LEN], again[KP_TOKEN_HASH_LEN];
        struct kp_token_parts parts;
        char msg[256];
        assert_int_equal(kp_token_generate(pepper, &text, id, hash), KP_OK);
        assert_non_null(text);
        assert_int_equal(strlen(text), KP_TOKEN_TEXT_LEN);
        assert_memory_equal(text, "kp_", 3);
        assert_int_equal(text[15], '_');
        assert_true(kp_token_id_valid(id));
        assert_memory_equal(id + 3, text + 3, KP_TOKEN_ID_CHARS);
        assert_string_not_equal(id, prev_id);
        strcpy(prev_id, id);
        for (size_t i = 3; i < KP_TOKEN_TEXT_LEN; i++) {
            if (i != 15)
                seen[(unsigned char)text[i]] = 1;
        }

        assert_int_equal(parse_str(text, &parts, msg, sizeof(msg)), KP_OK);
        assert_string_equal(parts.id, id);
        assert_ptr_equal(parts.secret, text + 16);
        assert_int_equal(parts.secret_len, KP_TOKEN_SECRET_CHARS);
        assert_int_equal(kp_token_verify(hash, pepper, parts.secret, parts.secret_len), KP_OK);
        assert_int_equal(kp_token_hash(pepper, parts.secret, parts.secret_len, again), KP_OK);
        assert_memory_equal(again, hash, KP_TOKEN_HASH_LEN);
        kp_token_text_free(text);
    }
    for (int c = 0; c < 256; c++) {
        bool b62 = (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
        if (b62 != (seen[c] != 0))
            fail_msg("character %d %s", c, b62 ? "never generated" : "generated");
    }
    kp_token_text_free(NULL);
}

/* What a registry lookup plus verify would say about a token that parsed:
 * accepted only when it names the original id and its secret matches. */
static bool accepted(const struct kp_token_parts *parts, const char *id,
                     const uint8_t hash[KP_TOKEN_HASH_LEN])
{
    return strcmp(parts->id, id) == 0 &&
           kp_token_verify(hash, pepper, parts->secret, parts->secret_len) == KP_OK;
}

/* Replace each character of many tokens, at every position, by several
 * others (its case twin, a neighbour in its alphabet, look-alikes, and
 * characters outside the alphabets). None is ever accepted; parse alone
 * refuses at least 99%, and in fact all, since CRC-32 detects every change
 * confined to one byte. */
static void test_single_character_changes(void **state)
{
    static const char others[] = "aZ098lI1Oo_-. ";
    unsigned total = 0, by_parse = 0, by_verify = 0;
    (void)state;
    for (int n = 0; n < 25; n++) {
        char *text;
        char id[KP_TOKEN_ID_SIZE];
        uint8_t hash[KP_TOKEN_HASH_LEN];
        assert_int_equal(kp_token_generate(pepper, &text, id, hash), KP_OK);
        for (size_t pos = 0; pos < KP_TOKEN_TEXT_LEN; pos++) {
            char orig = text[pos];
            char subs[sizeof(others) + 2];
            memcpy(subs, others, sizeof(others) - 1);
            subs[sizeof(others) - 1] = (char)(orig ^ 0x20); /* case twin */
            subs[sizeof(others)] = (char)(orig + 1);
            for (size_t k = 0; k < sizeof(others) + 1; k++) {
                if (subs[k] == orig)
                    continue;
                char copy[KP_TOKEN_TEXT_LEN + 1];
                struct kp_token_parts parts;
                memcpy(copy, text, sizeof(copy));
                copy[pos] = subs[k];
                total++;
                if (kp_token_parse(copy, KP_TOKEN_TEXT_LEN, &parts, NULL, 0) != KP_OK)
                    by_parse++;
                else if (!accepted(&parts, id, hash))
                    by_verify++;
                else
                    fail_msg("position %zu changed to '%c' was accepted", pos, subs[k]);
            }
        }
        kp_token_text_free(text);
    }
    print_message("single-character changes: %u; caught by parse %u, by lookup/verify %u\n", total,
                  by_parse, by_verify);
    assert_int_equal(by_parse + by_verify, total);
    assert_true(by_parse * 100 >= total * 99);
    assert_int_equal(by_parse, total);
}

/* Swapping two neighbouring characters, dropping one or doubling one is
 * refused by parse wherever it happens. */
static void test_swaps_drops_and_doubles(void **state)
{
    char *text;
    char id[KP_TOKEN_ID_SIZE];
    uint8_t hash[KP_TOKEN_HASH_LEN];
    struct kp_token_parts parts;
    char copy[KP_TOKEN_TEXT_LEN + 2];
    (void)state;
    assert_int_equal(kp_token_generate(pepper, &text, id, hash), KP_OK);
    for (size_t pos = 0; pos + 1 < KP_TOKEN_TEXT_LEN; pos++) {
        if (text[pos] == text[pos + 1])
            continue;
        memcpy(copy, text, KP_TOKEN_TEXT_LEN);
        copy[pos] = text[pos + 1];
        copy[pos + 1] = text[pos];
        assert_int_equal(kp_token_parse(copy, KP_TOKEN_TEXT_LEN, &parts, NULL, 0), KP_EPARSE);
    }
    for (size_t pos = 0; pos < KP_TOKEN_TEXT_LEN; pos++) {
        memcpy(copy, text, pos);
        memcpy(copy + pos, text + pos + 1, KP_TOKEN_TEXT_LEN - pos - 1);
        assert_int_equal(kp_token_parse(copy, KP_TOKEN_TEXT_LEN - 1, &parts, NULL, 0), KP_EPARSE);
        memcpy(copy, text, pos + 1);
        memcpy(copy + pos + 1, text + pos, KP_TOKEN_TEXT_LEN - pos);
        assert_int_equal(kp_token_parse(copy, KP_TOKEN_TEXT_LEN + 1, &parts, NULL, 0), KP_EPARSE);
    }
    kp_token_text_free(text);
}

/* Each malformed shape is refused with a message naming the part at fault
 * (with 1-based positions), and the message never repeats the token. */
static void test_malformed_shapes(void **state)
{
    const char *good = "kp_abcdefghijkl_0123456789ABCDEFGHIJKLMNOPQRSTUV3U8A8P";
    struct kp_token_parts parts;
    char buf[128];
    (void)state;
    expect_malformed("", "token is empty");
    expect_malformed("k", "token does not start with kp_");
    expect_malformed("kp", "token does not start with kp_");
    expect_malformed("KP_abcdefghijkl_0123456789ABCDEFGHIJKLMNOPQRSTUV3U8A8P",
                     "token does not start with kp_");
    expect_malformed("kp-abcdefghijkl_0123456789ABCDEFGHIJKLMNOPQRSTUV3U8A8P",
                     "token does not start with kp_");
    expect_malformed("sk-proj-0123456789abcdef", "token does not start with kp_");
    expect_malformed("Bearer kp_abcdefghijkl_0123456789ABCDEFGHIJKLMNOPQRSTUV3U8A8P",
                     "token does not start with kp_");
    expect_malformed("kp_", "token has no '_' after its id");
    expect_malformed("kp_abcdefghijkl", "token has no '_' after its id");
    expect_malformed("kp_abcdefghijk_0123456789ABCDEFGHIJKLMNOPQRSTUV3U8A8P",
                     "token id has 11 characters; expected 12");
    expect_malformed("kp_abcdefghijklm_0123456789ABCDEFGHIJKLMNOPQRSTUV3U8A8P",
                     "token id has 13 characters; expected 12");
    expect_malformed("kp__0123456789ABCDEFGHIJKLMNOPQRSTUV3U8A8P",
                     "token id has 0 characters; expected 12");
    expect_malformed("kp_abcdefGhijkl_0123456789ABCDEFGHIJKLMNOPQRSTUV3U8A8P",
                     "token id: character 10 is not one of a-z, 2-7 (mistyped token?)");
    expect_malformed("kp_abcdefghijk1_0123456789ABCDEFGHIJKLMNOPQRSTUV3U8A8P",
                     "token id: character 15 is not one of a-z, 2-7 (mistyped token?)");
    expect_malformed("kp_abcdefghijkl_", "token secret has 0 characters; expected 38 (32 secret, "
                                         "6 checksum)");
    expect_malformed("kp_abcdefghijkl_0123456789ABCDEFGHIJKLMNOPQRSTUV3U8A8",
                     "token secret has 37 characters; expected 38 (32 secret, 6 checksum)");
    expect_malformed("kp_abcdefghijkl_0123456789ABCDEFGHIJKLMNOPQRSTUV3U8A8PP",
                     "token secret has 39 characters; expected 38 (32 secret, 6 checksum)");
    expect_malformed("kp_abcdefghijkl_0123456789ABCDEFGHIJKLMNOPQRSTUV3U8A8P\n",
                     "token secret: character 55 is not one of A-Z, a-z, 0-9");
    expect_malformed("kp_abcdefghijkl_0123456789-BCDEFGHIJKLMNOPQRSTUV3U8A8P",
                     "token secret: character 27 is not one of A-Z, a-z, 0-9");
    expect_malformed("kp_abcdefghijkl_0123456789_BCDEFGHIJKLMNOPQRSTUV3U8A8P",
                     "token secret: character 27 is not one of A-Z, a-z, 0-9");
    expect_malformed("kp_abcdefghijkl_0123456789ABCDEFGHIJKLMNOPQRSTUV3U8A8Q",
                     "token checksum does not match (mistyped, truncated or altered token)");
    expect_malformed("kp_abcdefghijkl_1123456789ABCDEFGHIJKLMNOPQRSTUV3U8A8P",
                     "token checksum does not match (mistyped, truncated or altered token)");

    /* A NUL inside the given length is a bad character, not an early end. */
    memcpy(buf, good, KP_TOKEN_TEXT_LEN);
    buf[30] = '\0';
    assert_int_equal(kp_token_parse(buf, KP_TOKEN_TEXT_LEN, &parts, NULL, 0), KP_EPARSE);
    /* A NULL or empty message buffer is allowed. */
    assert_int_equal(kp_token_parse("kp_", 3, &parts, NULL, 0), KP_EPARSE);
    assert_int_equal(kp_token_parse("kp_", 3, &parts, buf, 0), KP_EPARSE);
}

/* Registry ids: "tk_" and 12 base32 characters, nothing else. */
static void test_id_valid(void **state)
{
    (void)state;
    assert_true(kp_token_id_valid("tk_abcdefghij27"));
    assert_false(kp_token_id_valid(NULL));
    assert_false(kp_token_id_valid(""));
    assert_false(kp_token_id_valid("tk_abcdefghij2"));
    assert_false(kp_token_id_valid("tk_abcdefghij278"));
    assert_false(kp_token_id_valid("tk_abcdefghij28"));
    assert_false(kp_token_id_valid("tk_ABCDEFGHIJ27"));
    assert_false(kp_token_id_valid("kp_abcdefghij27"));
}

/* A wrong secret, a wrong pepper or a wrong stored MAC is refused with
 * KP_EPERM; the comparison goes through CRYPTO_memcmp over the whole MAC,
 * once per verify. */
static void test_verify_refusals(void **state)
{
    char *text;
    char id[KP_TOKEN_ID_SIZE];
    uint8_t hash[KP_TOKEN_HASH_LEN], other_pepper[KP_TOKEN_PEPPER_LEN], bad_hash[KP_TOKEN_HASH_LEN];
    char secret[KP_TOKEN_SECRET_CHARS];
    (void)state;
    assert_int_equal(kp_token_generate(pepper, &text, id, hash), KP_OK);
    memcpy(secret, text + 16, sizeof(secret));

    memcmp_calls = 0;
    assert_int_equal(kp_token_verify(hash, pepper, secret, sizeof(secret)), KP_OK);
    assert_int_equal(memcmp_calls, 1);
    assert_int_equal(memcmp_last_len, KP_TOKEN_HASH_LEN);

    secret[5] ^= 1;
    assert_int_equal(kp_token_verify(hash, pepper, secret, sizeof(secret)), KP_EPERM);
    assert_int_equal(memcmp_calls, 2);
    secret[5] ^= 1;
    assert_int_equal(kp_token_verify(hash, pepper, secret, sizeof(secret) - 1), KP_EPERM);
    assert_int_equal(kp_token_verify(hash, pepper, secret, 0), KP_EPERM);

    memcpy(other_pepper, pepper, sizeof(other_pepper));
    other_pepper[31] ^= 0x80;
    assert_int_equal(kp_token_verify(hash, other_pepper, secret, sizeof(secret)), KP_EPERM);

    for (size_t i = 0; i < KP_TOKEN_HASH_LEN; i++) {
        memcpy(bad_hash, hash, sizeof(bad_hash));
        bad_hash[i] ^= 0x01;
        assert_int_equal(kp_token_verify(bad_hash, pepper, secret, sizeof(secret)), KP_EPERM);
    }
    assert_int_equal(memcmp_calls, 4 + 1 + KP_TOKEN_HASH_LEN);
    kp_token_text_free(text);
}

/* The stored MAC is HMAC-SHA256 of the secret keyed by the pepper, as
 * OpenSSL's EVP_Q_mac computes it independently. */
static void test_hash_is_hmac_sha256(void **state)
{
    const char *secret = "0123456789ABCDEFGHIJKLMNOPQRSTUV";
    uint8_t mine[KP_TOKEN_HASH_LEN], ref[KP_TOKEN_HASH_LEN];
    size_t n = 0;
    (void)state;
    assert_int_equal(kp_token_hash(pepper, secret, strlen(secret), mine), KP_OK);
    assert_non_null(EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, pepper, sizeof(pepper),
                              (const unsigned char *)secret, strlen(secret), ref, sizeof(ref), &n));
    assert_int_equal(n, KP_TOKEN_HASH_LEN);
    assert_memory_equal(mine, ref, sizeof(ref));
}

/* Fail generation's n-th allocation for every n: a failure returns
 * KP_ENOMEM with no text and a zeroed hash, leaks nothing (LeakSanitizer),
 * and a later call succeeds. */
static void test_generate_alloc_failures(void **state)
{
    long fail;
    (void)state;
    for (fail = 0;; fail++) {
        char *text = (char *)1;
        char id[KP_TOKEN_ID_SIZE];
        uint8_t hash[KP_TOKEN_HASH_LEN], zero[KP_TOKEN_HASH_LEN] = {0};
        kp_alloc_fail_after(fail);
        int rc = kp_token_generate(pepper, &text, id, hash);
        kp_alloc_fail_reset();
        if (rc == KP_OK) {
            kp_token_text_free(text);
            break;
        }
        assert_int_equal(rc, KP_ENOMEM);
        assert_null(text);
        assert_memory_equal(hash, zero, sizeof(zero));
    }
    assert_true(fail >= 1);
}

/* --- roles --------------------------------------------------------------- */

/* The role table, cell by cell, as docs/tokens.md prints it. */
static void test_role_table(void **state)
{
    static const struct {
        enum kp_role role;
        const char *name;
        unsigned perms;
    } want[] = {
        {KP_ROLE_ADMIN, "admin",
         KP_PERM_CHANGE | KP_PERM_OPERATE | KP_PERM_USE | KP_PERM_READ_USAGE | KP_PERM_READ_AUDIT |
             KP_PERM_READ_REGISTRY | KP_PERM_READ_ALERTS},
        {KP_ROLE_OPERATOR, "operator",
         KP_PERM_OPERATE | KP_PERM_READ_USAGE | KP_PERM_READ_REGISTRY | KP_PERM_READ_ALERTS},
        {KP_ROLE_APP, "app", KP_PERM_USE},
        {KP_ROLE_FINANCE, "finance", KP_PERM_READ_USAGE | KP_PERM_READ_ALERTS},
        {KP_ROLE_AUDITOR, "auditor",
         KP_PERM_READ_AUDIT | KP_PERM_READ_REGISTRY | KP_PERM_READ_ALERTS},
    };
    static const unsigned perms[] = {KP_PERM_CHANGE,     KP_PERM_OPERATE,    KP_PERM_USE,
                                     KP_PERM_READ_USAGE, KP_PERM_READ_AUDIT, KP_PERM_READ_REGISTRY,
                                     KP_PERM_READ_ALERTS};
    (void)state;
    assert_int_equal(KP_ROLE_COUNT, 5);
    for (size_t r = 0; r < 5; r++) {
        enum kp_role parsed;
        assert_string_equal(kp_role_name(want[r].role), want[r].name);
        assert_int_equal(kp_role_parse(want[r].name, &parsed), KP_OK);
        assert_int_equal(parsed, want[r].role);
        assert_int_equal(kp_role_perms(want[r].role), want[r].perms);
        for (size_t p = 0; p < sizeof(perms) / sizeof(perms[0]); p++)
            assert_int_equal(kp_role_has(want[r].role, perms[p]), (want[r].perms & perms[p]) != 0);
    }
}

/* Names: exact lower case only; out-of-range roles hold nothing; a check
 * for several bits needs all of them; an empty requirement fails closed. */
static void test_role_names_and_checks(void **state)
{
    enum kp_role r = KP_ROLE_APP;
    (void)state;
    assert_int_equal(kp_role_parse("Admin", &r), KP_EINVAL);
    assert_int_equal(kp_role_parse("admin ", &r), KP_EINVAL);
    assert_int_equal(kp_role_parse("", &r), KP_EINVAL);
    assert_int_equal(kp_role_parse("root", &r), KP_EINVAL);
    assert_int_equal(kp_role_parse(NULL, &r), KP_EINVAL);
    assert_int_equal(r, KP_ROLE_APP);
    assert_string_equal(kp_role_name(KP_ROLE_COUNT), "unknown");
    assert_string_equal(kp_role_name((enum kp_role) - 1), "unknown");
    assert_int_equal(kp_role_perms(KP_ROLE_COUNT), 0);
    assert_false(kp_role_has(KP_ROLE_COUNT, KP_PERM_USE));

    assert_true(kp_role_has(KP_ROLE_OPERATOR, KP_PERM_OPERATE | KP_PERM_READ_REGISTRY));
    assert_false(kp_role_has(KP_ROLE_OPERATOR, KP_PERM_OPERATE | KP_PERM_CHANGE));
    assert_false(kp_role_has(KP_ROLE_ADMIN, 0));

    assert_string_equal(kp_perm_name(KP_PERM_CHANGE), "change");
    assert_string_equal(kp_perm_name(KP_PERM_OPERATE), "operate");
    assert_string_equal(kp_perm_name(KP_PERM_USE), "use");
    assert_string_equal(kp_perm_name(KP_PERM_READ_USAGE), "read_usage");
    assert_string_equal(kp_perm_name(KP_PERM_READ_AUDIT), "read_audit");
    assert_string_equal(kp_perm_name(KP_PERM_READ_REGISTRY), "read_registry");
    assert_string_equal(kp_perm_name(KP_PERM_READ_ALERTS), "read_alerts");
    assert_string_equal(kp_perm_name(0), "unknown");
    assert_string_equal(kp_perm_name(KP_PERM_USE | KP_PERM_CHANGE), "unknown");
    assert_string_equal(kp_perm_name(1u << 20), "unknown");
}

/* The 403 message names the token, its role and the first missing bit. */
static void test_role_refusal_message(void **state)
{
    char msg[128];
    (void)state;
    kp_role_refusal(msg, sizeof(msg), "tk_x", KP_ROLE_FINANCE, KP_PERM_OPERATE);
    assert_string_equal(msg, "token tk_x (role finance) lacks permission operate");
    kp_role_refusal(msg, sizeof(msg), "tk_abcdefghijkl", KP_ROLE_OPERATOR,
                    KP_PERM_READ_REGISTRY | KP_PERM_READ_AUDIT | KP_PERM_CHANGE);
    assert_string_equal(msg, "token tk_abcdefghijkl (role operator) lacks permission change");
    kp_role_refusal(msg, 12, "tk_x", KP_ROLE_APP, KP_PERM_CHANGE);
    assert_string_equal(msg, "token tk_x ");
}

/* --- scope --------------------------------------------------------------- */

static const char *const two_projects[] = {"prj-a", "prj-b"};
static const char *const one_pool[] = {"pool-main"};
static const char *const models[] = {"gpt-4o*", "o3", "claude-3-5-sonnet@20240620"};

static struct kp_token_scope narrow_scope(void)
{
    struct kp_token_scope s = {
        .tenant = "acme",
        .projects = two_projects,
        .n_projects = 2,
        .pools = one_pool,
        .n_pools = 1,
        .models = models,
        .n_models = 3,
        .expires_at = T0 + 1000,
    };
    return s;
}

static void expect_refused(const struct kp_token_scope *s, int64_t now, const char *tenant,
                           const char *project, const char *pool, const char *model,
                           enum kp_token_scope_dim dim, const char *want)
{
    struct kp_token_refusal why;
    int rc = kp_token_scope_allows(s, now, tenant, project, NULL, pool, model, &why);
    if (rc != KP_EPERM || why.dim != dim || strcmp(why.msg, want) != 0)
        fail_msg("rc %s dim %d message \"%s\", wanted dim %d \"%s\"", kp_err_name(rc), (int)why.dim,
                 why.msg, (int)dim, want);
}

/* Inside a narrow scope everything listed is allowed, and each dimension
 * refuses what it does not list, with the allowed values in the message. */
static void test_scope_dimensions(void **state)
{
    struct kp_token_scope s = narrow_scope();
    struct kp_token_refusal why;
    (void)state;
    assert_int_equal(kp_token_scope_allows(&s, T0, "acme", "prj-b", NULL, "pool-main", "o3", &why),
                     KP_OK);
    assert_int_equal(why.dim, KP_TOKEN_SCOPE_ALLOWED);
    assert_string_equal(why.msg, "");
    expect_refused(&s, T0, "other", "prj-a", "pool-main", "o3", KP_TOKEN_SCOPE_TENANT,
                   "tenant other is outside this token's scope (allowed: acme)");
    expect_refused(&s, T0, "acme", "prj-x", "pool-main", "o3", KP_TOKEN_SCOPE_PROJECT,
                   "project prj-x is outside this token's scope (allowed: prj-a, prj-b)");
    expect_refused(&s, T0, "acme", "prj-a", "pool-b", "o3", KP_TOKEN_SCOPE_POOL,
                   "pool pool-b is outside this token's scope (allowed: pool-main)");
    expect_refused(&s, T0, "acme", "prj-a", "pool-main", "o3-mini", KP_TOKEN_SCOPE_MODEL,
                   "model o3-mini is outside this token's scope (allowed: gpt-4o*, o3, "
                   "claude-3-5-sonnet@20240620)");
    /* Matching is exact and case-sensitive; a project id is not a prefix. */
    expect_refused(&s, T0, "ACME", NULL, NULL, NULL, KP_TOKEN_SCOPE_TENANT,
                   "tenant ACME is outside this token's scope (allowed: acme)");
    expect_refused(&s, T0, NULL, "prj-a2", NULL, NULL, KP_TOKEN_SCOPE_PROJECT,
                   "project prj-a2 is outside this token's scope (allowed: prj-a, prj-b)");
    expect_refused(&s, T0, NULL, "", NULL, NULL, KP_TOKEN_SCOPE_PROJECT,
                   "project  is outside this token's scope (allowed: prj-a, prj-b)");
    /* Bytes outside printable ASCII are not echoed (the message goes into
     * JSON, and a cut UTF-8 sequence would not be valid). */
    expect_refused(&s, T0, NULL, "caf\xc3\xa9\t", NULL, NULL, KP_TOKEN_SCOPE_PROJECT,
                   "project caf??? is outside this token's scope (allowed: prj-a, prj-b)");
    /* The first refusing dimension in order is the one reported. */
    expect_refused(&s, T0, "other", "prj-x", "pool-b", "x", KP_TOKEN_SCOPE_TENANT,
                   "tenant other is outside this token's scope (allowed: acme)");
    /* NULL dimensions are not checked; why may be NULL. */
    assert_int_equal(kp_token_scope_allows(&s, T0, NULL, NULL, NULL, NULL, NULL, NULL), KP_OK);
    assert_int_equal(kp_token_scope_allows(&s, T0, NULL, NULL, NULL, "pool-x", NULL, NULL),
                     KP_EPERM);
}

/* Features are matched exactly, after the project and before the pool; a
 * scope without features allows every feature, and a NULL feature is not
 * checked (the router refuses a missing X-Feature itself). */
static void test_scope_features(void **state)
{
    static const char *const features[] = {"search", "chat-summary"};
    struct kp_token_scope s = narrow_scope();
    struct kp_token_refusal why;
    (void)state;
    assert_int_equal(
        kp_token_scope_allows(&s, T0, "acme", "prj-a", "anything", "pool-main", "o3", &why), KP_OK);
    s.features = features;
    s.n_features = 2;
    assert_int_equal(
        kp_token_scope_allows(&s, T0, "acme", "prj-a", "chat-summary", "pool-main", "o3", &why),
        KP_OK);
    assert_int_equal(kp_token_scope_allows(&s, T0, "acme", "prj-a", NULL, "pool-main", "o3", &why),
                     KP_OK);
    const char *refused[] = {"chat", "search-v2", "Search", ""};
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        char want[128];
        snprintf(want, sizeof(want),
                 "feature %s is outside this token's scope (allowed: search, chat-summary)",
                 refused[i]);
        assert_int_equal(
            kp_token_scope_allows(&s, T0, "acme", "prj-a", refused[i], "pool-x", "o3-mini", &why),
            KP_EPERM);
        assert_int_equal(why.dim, KP_TOKEN_SCOPE_FEATURE); /* before the pool and the model */
        assert_string_equal(why.msg, want);
    }
    /* A project outside the scope is reported before the feature. */
    assert_int_equal(kp_token_scope_allows(&s, T0, "acme", "prj-x", "chat", NULL, NULL, &why),
                     KP_EPERM);
    assert_int_equal(why.dim, KP_TOKEN_SCOPE_PROJECT);
}

/* Model entries ending in '*' match by prefix; "*" matches every model. */
static void test_scope_model_wildcards(void **state)
{
    struct kp_token_scope s = narrow_scope();
    static const char *const star[] = {"*"};
    (void)state;
    assert_int_equal(kp_token_scope_allows(&s, T0, NULL, NULL, NULL, NULL, "gpt-4o", NULL), KP_OK);
    assert_int_equal(kp_token_scope_allows(&s, T0, NULL, NULL, NULL, NULL, "gpt-4o-mini", NULL),
                     KP_OK);
    assert_int_equal(
        kp_token_scope_allows(&s, T0, NULL, NULL, NULL, NULL, "claude-3-5-sonnet@20240620", NULL),
        KP_OK);
    assert_int_equal(kp_token_scope_allows(&s, T0, NULL, NULL, NULL, NULL, "gpt-4", NULL),
                     KP_EPERM);
    assert_int_equal(kp_token_scope_allows(&s, T0, NULL, NULL, NULL, NULL, "GPT-4o", NULL),
                     KP_EPERM);
    assert_int_equal(kp_token_scope_allows(&s, T0, NULL, NULL, NULL, NULL, "", NULL), KP_EPERM);
    s.models = star;
    s.n_models = 1;
    assert_int_equal(kp_token_scope_allows(&s, T0, NULL, NULL, NULL, NULL, "anything", NULL),
                     KP_OK);
    assert_int_equal(kp_token_scope_allows(&s, T0, NULL, NULL, NULL, NULL, "", NULL), KP_OK);
}

/* Tenant "*" and empty lists allow everything in their dimension. */
static void test_scope_everything(void **state)
{
    struct kp_token_scope s = {.tenant = "*"};
    (void)state;
    assert_int_equal(kp_token_scope_allows(&s, T0, "t1", "p1", NULL, "pool1", "m1", NULL), KP_OK);
    assert_int_equal(kp_token_scope_allows(&s, INT64_MAX, "", "", NULL, "", "", NULL), KP_OK);
    s.tenant = "t1";
    assert_int_equal(kp_token_scope_allows(&s, T0, "t1", "p1", NULL, "pool1", "m1", NULL), KP_OK);
    /* A scope with no tenant at all (never valid) refuses every tenant. */
    s.tenant = NULL;
    expect_refused(&s, T0, "t1", NULL, NULL, NULL, KP_TOKEN_SCOPE_TENANT,
                   "tenant t1 is outside this token's scope (allowed: none)");
}

/* expires_at is the first instant the token no longer works: one
 * millisecond before it is fine, at it and after it is expired, and expiry
 * is reported before any other dimension. 0 never expires. */
static void test_scope_expiry(void **state)
{
    struct kp_token_scope s = narrow_scope();
    (void)state;
    assert_int_equal(kp_token_scope_allows(&s, T0 + 999, "acme", NULL, NULL, NULL, NULL, NULL),
                     KP_OK);
    expect_refused(&s, T0 + 1000, "acme", NULL, NULL, NULL, KP_TOKEN_SCOPE_EXPIRED,
                   "token expired at 2026-01-01T00:00:01.000Z");
    expect_refused(&s, T0 + 5000, "other", "x", "y", "z", KP_TOKEN_SCOPE_EXPIRED,
                   "token expired at 2026-01-01T00:00:01.000Z");
    s.expires_at = 0;
    assert_int_equal(kp_token_scope_allows(&s, INT64_MAX, "acme", NULL, NULL, NULL, NULL, NULL),
                     KP_OK);
    assert_int_equal(kp_token_scope_allows(&s, INT64_MIN, "acme", NULL, NULL, NULL, NULL, NULL),
                     KP_OK);
}

/* A long allowed list is cut with "..." and a long request value is
 * quoted up to 64 bytes: the message always fits and always closes. */
static void test_scope_long_messages(void **state)
{
    static char names[40][201];
    static const char *list[40];
    char value[300];
    struct kp_token_refusal why;
    struct kp_token_scope s = {.tenant = "*", .projects = list, .n_projects = 40};
    (void)state;
    for (int i = 0; i < 40; i++) {
        snprintf(names[i], sizeof(names[i]), "project-number-%02d", i);
        list[i] = names[i];
    }
    memset(value, 'v', sizeof(value) - 1);
    value[sizeof(value) - 1] = '\0';
    assert_int_equal(kp_token_scope_allows(&s, T0, NULL, value, NULL, NULL, NULL, &why), KP_EPERM);
    assert_int_equal(why.dim, KP_TOKEN_SCOPE_PROJECT);
    assert_true(strlen(why.msg) < sizeof(why.msg));
    assert_memory_equal(why.msg, "project vvvv", 12);
    assert_non_null(strstr(why.msg, "vvv... is outside this token's scope (allowed: "
                                    "project-number-00, project-number-01"));
    assert_string_equal(why.msg + strlen(why.msg) - 6, ", ...)");

    /* One entry longer than the room left: just "...". */
    memset(names[0], 'p', 200);
    names[0][200] = '\0';
    s.n_projects = 1;
    assert_int_equal(kp_token_scope_allows(&s, T0, NULL, value, NULL, NULL, NULL, &why), KP_EPERM);
    assert_string_equal(why.msg + strlen(why.msg) - 14, "(allowed: ...)");
}

static void expect_scope_invalid(const struct kp_token_scope *s, const char *want)
{
    char msg[256] = "";
    int rc = kp_token_scope_check(s, msg, sizeof(msg));
    if (rc != KP_EINVAL || strcmp(msg, want) != 0)
        fail_msg("rc %s message \"%s\", wanted \"%s\"", kp_err_name(rc), msg, want);
}

/* Validation accepts what the registry may store and names what it
 * refuses. */
static void test_scope_check(void **state)
{
    struct kp_token_scope s = narrow_scope();
    static const char *const bad_star[] = {"gpt-*-mini"};
    static const char *const star_project[] = {"prj-*"};
    static const char *const empty_entry[] = {"prj-a", ""};
    static const char *const null_entry[] = {NULL};
    static const char *const comma[] = {"a,b"};
    static const char *const space[] = {"a b"};
    static const char *const high[] = {"caf\xc3\xa9"};
    static char longest[KP_TOKEN_SCOPE_MAX_NAME + 2];
    static const char *long_entry[] = {longest};
    (void)state;
    assert_int_equal(kp_token_scope_check(&s, NULL, 0), KP_OK);
    struct kp_token_scope all = {.tenant = "*"};
    assert_int_equal(kp_token_scope_check(&all, NULL, 0), KP_OK);

    all.tenant = NULL;
    expect_scope_invalid(&all, "scope needs a tenant, or \"*\" for every tenant");
    all.tenant = "";
    expect_scope_invalid(&all, "scope needs a tenant, or \"*\" for every tenant");
    all.tenant = "ac*";
    expect_scope_invalid(&all,
                         "tenant entry 1: '*' is allowed only as the last character of a model");
    all.tenant = "*";
    all.expires_at = -1;
    expect_scope_invalid(&all, "expires_at is negative; 0 means never");

    s.models = bad_star;
    s.n_models = 1;
    expect_scope_invalid(&s,
                         "models entry 1: '*' is allowed only as the last character of a model");
    s = narrow_scope();
    s.projects = star_project;
    s.n_projects = 1;
    expect_scope_invalid(&s,
                         "projects entry 1: '*' is allowed only as the last character of a model");
    s.projects = empty_entry;
    s.n_projects = 2;
    expect_scope_invalid(&s, "projects entry 2 is empty");
    s.projects = null_entry;
    s.n_projects = 1;
    expect_scope_invalid(&s, "projects entry 1 is empty");
    s.projects = NULL;
    expect_scope_invalid(&s, "projects: 1 entries but no list");
    s.projects = two_projects;
    s.n_projects = KP_TOKEN_SCOPE_MAX_ENTRIES + 1;
    expect_scope_invalid(&s, "projects: 257 entries; at most 256");

    s = narrow_scope();
    s.pools = comma;
    expect_scope_invalid(&s,
                         "pools entry 1: character 2 is not printable ASCII, or is a space or ','");
    s.pools = space;
    expect_scope_invalid(&s,
                         "pools entry 1: character 2 is not printable ASCII, or is a space or ','");
    s.pools = high;
    expect_scope_invalid(&s,
                         "pools entry 1: character 4 is not printable ASCII, or is a space or ','");
    memset(longest, 'x', KP_TOKEN_SCOPE_MAX_NAME);
    s.pools = long_entry;
    assert_int_equal(kp_token_scope_check(&s, NULL, 0), KP_OK);
    longest[KP_TOKEN_SCOPE_MAX_NAME] = 'x';
    expect_scope_invalid(&s, "pools entry 1 is longer than 128 bytes");

    s = narrow_scope();
    s.features = empty_entry;
    s.n_features = 2;
    expect_scope_invalid(&s, "features entry 2 is empty");
    s.features = star_project;
    s.n_features = 1;
    expect_scope_invalid(&s,
                         "features entry 1: '*' is allowed only as the last character of a model");
    s.features = comma;
    expect_scope_invalid(
        &s, "features entry 1: character 2 is not printable ASCII, or is a space or ','");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_answers),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_single_character_changes),
        cmocka_unit_test(test_swaps_drops_and_doubles),
        cmocka_unit_test(test_malformed_shapes),
        cmocka_unit_test(test_id_valid),
        cmocka_unit_test(test_verify_refusals),
        cmocka_unit_test(test_hash_is_hmac_sha256),
        cmocka_unit_test(test_generate_alloc_failures),
        cmocka_unit_test(test_role_table),
        cmocka_unit_test(test_role_names_and_checks),
        cmocka_unit_test(test_role_refusal_message),
        cmocka_unit_test(test_scope_dimensions),
        cmocka_unit_test(test_scope_features),
        cmocka_unit_test(test_scope_model_wildcards),
        cmocka_unit_test(test_scope_everything),
        cmocka_unit_test(test_scope_expiry),
        cmocka_unit_test(test_scope_long_messages),
        cmocka_unit_test(test_scope_check),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

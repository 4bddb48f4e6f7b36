/* Tokens: generation, parsing, hashing and verification, and scope checks.
 *
 * Generation draws the id and the secret from OpenSSL's CSPRNG by rejection
 * sampling (no modulo bias), appends the checksum, and returns the text once
 * with the MAC the registry keeps. Parsing is the first thing the gateway and
 * the control port do with a presented token: it checks the prefix, the id,
 * the secret's characters and length, and the CRC-32, in that order, and
 * says which one failed, so that a mistyped token gets "checksum does not
 * match" instead of an anonymous 401 after a registry lookup. Only a token
 * that parses is looked up by id and verified against its stored MAC.
 *
 * The checksum is CRC-32 (the zlib/IEEE polynomial) because it catches every
 * change confined to 32 consecutive bits, so every single-character typo and
 * every swap of neighbouring characters, with certainty, where a truncated
 * hash would only make a miss unlikely. It is public: anyone holding the
 * token can compute it, and it says nothing useful to anyone who does not,
 * since the secret behind it has 190 bits. Comparing it is therefore done
 * with memcmp; the MAC is compared with CRYPTO_memcmp.
 *
 * Secrets are stored as HMAC-SHA256 under a 32-byte pepper held in the
 * registry. A fast MAC is enough because the secret is random and long: slow
 * password hashes exist for secrets people choose. Buffers that held a
 * secret are wiped with OPENSSL_cleanse before they are released. */
#include "raftstore/raftstore.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdarg.h>
#include <stdio.h>
#include <pthread.h>
#include <string.h>

/* Offsets inside the token text. */
enum {
    ID_OFF = sizeof(KP_TOKEN_PREFIX) - 1,
    SEP_OFF = ID_OFF + KP_TOKEN_ID_CHARS,
    SECRET_OFF = SEP_OFF + 1,
    CHECK_OFF = SECRET_OFF + KP_TOKEN_SECRET_CHARS,
    BODY_CHARS = KP_TOKEN_SECRET_CHARS + KP_TOKEN_CHECK_CHARS,
};

static const char base32_digits[] = "abcdefghijklmnopqrstuvwxyz234567";
static const char base62_digits[] =
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/* --- characters and checksum ---------------------------------------------- */

static bool is_base32(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '2' && c <= '7');
}

static bool is_base62(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

/* CRC-32 as zlib computes it (reflected 0xEDB88320, inverted in and out);
 * 50 bytes per token do not need a table. */
/* CRC-32 (IEEE) by table: every gateway call checks a token's checksum,
 * and the bitwise loop was ~2,000 instructions of it. */
static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_table_init(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
        crc_table[n] = c;
    }
}

static uint32_t crc32_ieee(const char *s, size_t len)
{
    pthread_once(&crc_once, crc_table_init);
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < len; i++)
        crc = (crc >> 8) ^ crc_table[(crc ^ (uint8_t)s[i]) & 0xFFu];
    return ~crc;
}

/* The checksum of the first CHECK_OFF characters of @text, as six base62
 * digits, most significant first (62^6 > 2^32, so every CRC fits). */
static void checksum_digits(const char *text, char out[KP_TOKEN_CHECK_CHARS])
{
    uint32_t v = crc32_ieee(text, CHECK_OFF);
    for (int i = KP_TOKEN_CHECK_CHARS - 1; i >= 0; i--) {
        out[i] = base62_digits[v % 62];
        v /= 62;
    }
}

/* Fill @out with @n characters drawn uniformly from the first @radix of
 * @digits. Bytes at or above the largest multiple of @radix are dropped so
 * that every character is equally likely. */
static int random_chars(const char *digits, unsigned radix, char *out, size_t n)
{
    const unsigned limit = 256 - 256 % radix;
    unsigned char pool[64];
    size_t used = sizeof(pool);
    int rc = KP_OK;
    for (size_t i = 0; i < n;) {
        if (used == sizeof(pool)) {
            if ((rc = kp_random_bytes(pool, sizeof(pool))) != KP_OK)
                break;
            used = 0;
        }
        unsigned b = pool[used++];
        if (b < limit)
            out[i++] = digits[b % radix];
    }
    OPENSSL_cleanse(pool, sizeof(pool));
    return rc;
}

/* --- generation ------------------------------------------------------------ */

int kp_token_generate(const uint8_t pepper[KP_TOKEN_PEPPER_LEN], char **text_out,
                      char id_out[KP_TOKEN_ID_SIZE], uint8_t hash_out[KP_TOKEN_HASH_LEN])
{
    char text[KP_TOKEN_TEXT_LEN + 1];
    int rc;

    *text_out = NULL;
    memcpy(text, KP_TOKEN_PREFIX, ID_OFF);
    if ((rc = random_chars(base32_digits, 32, text + ID_OFF, KP_TOKEN_ID_CHARS)) != KP_OK)
        goto err_wipe;
    text[SEP_OFF] = '_';
    if ((rc = random_chars(base62_digits, 62, text + SECRET_OFF, KP_TOKEN_SECRET_CHARS)) != KP_OK)
        goto err_wipe;
    checksum_digits(text, text + CHECK_OFF);
    text[KP_TOKEN_TEXT_LEN] = '\0';

    if ((rc = kp_token_hash(pepper, text + SECRET_OFF, KP_TOKEN_SECRET_CHARS, hash_out)) != KP_OK)
        goto err_wipe;
    char *copy = kp_malloc(sizeof(text));
    if (copy == NULL) {
        rc = KP_ENOMEM;
        goto err_wipe;
    }
    memcpy(copy, text, sizeof(text));
    memcpy(id_out, "tk_", 3);
    memcpy(id_out + 3, text + ID_OFF, KP_TOKEN_ID_CHARS);
    id_out[KP_TOKEN_ID_SIZE - 1] = '\0';
    *text_out = copy;
    OPENSSL_cleanse(text, sizeof(text));
    return KP_OK;

err_wipe:
    OPENSSL_cleanse(text, sizeof(text));
    memset(hash_out, 0, KP_TOKEN_HASH_LEN);
    return rc;
}

void kp_token_text_free(char *text)
{
    if (text == NULL)
        return;
    OPENSSL_cleanse(text, KP_TOKEN_TEXT_LEN + 1);
    kp_free(text);
}

/* --- parsing --------------------------------------------------------------- */

int kp_token_parse(const char *text, size_t len, struct kp_token_parts *out, char *errmsg,
                   size_t errlen)
{
    size_t i;

    if (len == 0)
        return kp_errf(errmsg, errlen, KP_EPARSE, "token is empty");
    if (len < ID_OFF || memcmp(text, KP_TOKEN_PREFIX, ID_OFF) != 0)
        return kp_errf(errmsg, errlen, KP_EPARSE, "token does not start with " KP_TOKEN_PREFIX);

    for (i = ID_OFF; i < len && text[i] != '_'; i++) {
        if (!is_base32(text[i]))
            return kp_errf(errmsg, errlen, KP_EPARSE,
                           "token id: character %zu is not one of a-z, 2-7 (mistyped token?)",
                           i + 1);
    }
    if (i == len)
        return kp_errf(errmsg, errlen, KP_EPARSE, "token has no '_' after its id");
    if (i - ID_OFF != KP_TOKEN_ID_CHARS)
        return kp_errf(errmsg, errlen, KP_EPARSE, "token id has %zu characters; expected %d",
                       i - ID_OFF, KP_TOKEN_ID_CHARS);

    for (i = SECRET_OFF; i < len; i++) {
        if (!is_base62(text[i]))
            return kp_errf(errmsg, errlen, KP_EPARSE,
                           "token secret: character %zu is not one of A-Z, a-z, 0-9", i + 1);
    }
    if (len - SECRET_OFF != BODY_CHARS)
        return kp_errf(errmsg, errlen, KP_EPARSE,
                       "token secret has %zu characters; expected %d (%d secret, %d checksum)",
                       len - SECRET_OFF, BODY_CHARS, KP_TOKEN_SECRET_CHARS, KP_TOKEN_CHECK_CHARS);

    /* Public information: no need for a constant-time comparison. */
    char check[KP_TOKEN_CHECK_CHARS];
    checksum_digits(text, check);
    if (memcmp(check, text + CHECK_OFF, KP_TOKEN_CHECK_CHARS) != 0)
        return kp_errf(errmsg, errlen, KP_EPARSE,
                       "token checksum does not match (mistyped, truncated or altered token)");

    memcpy(out->id, "tk_", 3);
    memcpy(out->id + 3, text + ID_OFF, KP_TOKEN_ID_CHARS);
    out->id[KP_TOKEN_ID_SIZE - 1] = '\0';
    out->secret = text + SECRET_OFF;
    out->secret_len = KP_TOKEN_SECRET_CHARS;
    return KP_OK;
}

bool kp_token_id_valid(const char *id)
{
    if (id == NULL || strncmp(id, "tk_", 3) != 0 || strlen(id) != KP_TOKEN_ID_SIZE - 1)
        return false;
    for (size_t i = 3; i < KP_TOKEN_ID_SIZE - 1; i++) {
        if (!is_base32(id[i]))
            return false;
    }
    return true;
}

/* --- hashing and verification ---------------------------------------------- */

int kp_token_hash(const uint8_t pepper[KP_TOKEN_PEPPER_LEN], const char *secret, size_t len,
                  uint8_t out[KP_TOKEN_HASH_LEN])
{
    unsigned int n = 0;
    /* HMAC() fails only when OpenSSL cannot allocate or fetch SHA-256. */
    if (HMAC(EVP_sha256(), pepper, KP_TOKEN_PEPPER_LEN, (const unsigned char *)secret, len, out,
             &n) == NULL ||
        n != KP_TOKEN_HASH_LEN)
        return KP_EIO;
    return KP_OK;
}

int kp_token_verify(const uint8_t stored_hash[KP_TOKEN_HASH_LEN],
                    const uint8_t pepper[KP_TOKEN_PEPPER_LEN], const char *secret, size_t len)
{
    uint8_t mac[KP_TOKEN_HASH_LEN];
    int rc = kp_token_hash(pepper, secret, len, mac);
    if (rc == KP_OK)
        rc = CRYPTO_memcmp(mac, stored_hash, KP_TOKEN_HASH_LEN) == 0 ? KP_OK : KP_EPERM;
    OPENSSL_cleanse(mac, sizeof(mac));
    return rc;
}

/* --- scope ------------------------------------------------------------------ */

/* Longest request value quoted back in a refusal. Values come from request
 * headers and bodies, so they are cut rather than echoed whole, and bytes
 * outside printable ASCII become '?': the message ends up in a JSON body,
 * and a cut UTF-8 sequence would make it invalid. */
#define QUOTE_MAX 64

static void quote_value(char out[QUOTE_MAX + 4], const char *value)
{
    size_t i;
    for (i = 0; value[i] != '\0' && i < QUOTE_MAX; i++)
        out[i] = value[i] >= ' ' && value[i] <= '~' ? value[i] : '?';
    if (value[i] != '\0') {
        memcpy(out + i, "...", 3);
        i += 3;
    }
    out[i] = '\0';
}

static bool model_matches(const char *pattern, const char *model)
{
    size_t n = strlen(pattern);
    if (n > 0 && pattern[n - 1] == '*')
        return strncmp(pattern, model, n - 1) == 0;
    return strcmp(pattern, model) == 0;
}

/* Whether @value is in the list; an empty list holds everything. */
static bool listed(const char *const *items, size_t n, const char *value, bool wildcards)
{
    if (n == 0)
        return true;
    for (size_t i = 0; i < n; i++) {
        if (wildcards ? model_matches(items[i], value) : strcmp(items[i], value) == 0)
            return true;
    }
    return false;
}

/* "<what> <value> is outside this token's scope (allowed: a, b)" into @buf.
 * A list that does not fit ends with "...", so the message stays whole. */
static void outside_text(char *buf, size_t cap, const char *what, const char *value,
                         const char *const *allowed, size_t n)
{
    const size_t tail = sizeof(", ...)"); /* kept free for the end of a cut list */
    char quoted[QUOTE_MAX + 4];
    quote_value(quoted, value);
    int w = snprintf(buf, cap, "%s %s is outside this token's scope (allowed: ", what, quoted);
    if (w < 0 || (size_t)w + tail > cap)
        return;
    size_t used = (size_t)w;
    for (size_t i = 0; i < n; i++) {
        const char *sep = i > 0 ? ", " : "";
        if (used + strlen(sep) + strlen(allowed[i]) + tail > cap) {
            used += (size_t)snprintf(buf + used, cap - used, "%s...", sep);
            break;
        }
        used += (size_t)snprintf(buf + used, cap - used, "%s%s", sep, allowed[i]);
    }
    snprintf(buf + used, cap - used, ")");
}

static int refuse_outside(struct kp_token_refusal *why, enum kp_token_scope_dim dim,
                          const char *what, const char *value, const char *const *allowed, size_t n)
{
    why->dim = dim;
    outside_text(why->msg, sizeof(why->msg), what, value, allowed, n);
    return KP_EPERM;
}

static bool tenant_allowed(const char *scope_tenant, const char *tenant)
{
    /* A scope without a tenant is invalid (kp_token_scope_check); refuse. */
    if (scope_tenant == NULL)
        return false;
    return strcmp(scope_tenant, "*") == 0 || strcmp(scope_tenant, tenant) == 0;
}

int kp_token_scope_allows(const struct kp_token_scope *scope, int64_t now_ms, const char *tenant,
                          const char *project, const char *feature, const char *pool,
                          const char *model, struct kp_token_refusal *why)
{
    struct kp_token_refusal unused;
    if (why == NULL)
        why = &unused;
    why->dim = KP_TOKEN_SCOPE_ALLOWED;
    why->msg[0] = '\0';

    /* expires_at is the first instant at which the token no longer works. */
    if (scope->expires_at != 0 && now_ms >= scope->expires_at) {
        char when[32];
        kp_format_time_ms(scope->expires_at, when, sizeof(when));
        why->dim = KP_TOKEN_SCOPE_EXPIRED;
        snprintf(why->msg, sizeof(why->msg), "token expired at %s", when);
        return KP_EPERM;
    }
    if (tenant != NULL && !tenant_allowed(scope->tenant, tenant)) {
        const char *none = "none";
        return refuse_outside(why, KP_TOKEN_SCOPE_TENANT, "tenant", tenant,
                              scope->tenant ? &scope->tenant : &none, 1);
    }
    if (project != NULL && !listed(scope->projects, scope->n_projects, project, false))
        return refuse_outside(why, KP_TOKEN_SCOPE_PROJECT, "project", project, scope->projects,
                              scope->n_projects);
    if (feature != NULL && !listed(scope->features, scope->n_features, feature, false))
        return refuse_outside(why, KP_TOKEN_SCOPE_FEATURE, "feature", feature, scope->features,
                              scope->n_features);
    if (pool != NULL && !listed(scope->pools, scope->n_pools, pool, false))
        return refuse_outside(why, KP_TOKEN_SCOPE_POOL, "pool", pool, scope->pools, scope->n_pools);
    if (model != NULL && !listed(scope->models, scope->n_models, model, true))
        return refuse_outside(why, KP_TOKEN_SCOPE_MODEL, "model", model, scope->models,
                              scope->n_models);
    return KP_OK;
}

/* One scope entry: non-empty, bounded, printable ASCII without spaces or
 * ',' (lists are shown comma-separated), '*' only last and only in models. */
static int check_entry(const char *what, size_t index, const char *s, bool wildcard_ok,
                       char *errmsg, size_t errlen)
{
    if (s == NULL || s[0] == '\0')
        return kp_errf(errmsg, errlen, KP_EINVAL, "%s entry %zu is empty", what, index + 1);
    size_t len = strlen(s);
    if (len > KP_TOKEN_SCOPE_MAX_NAME)
        return kp_errf(errmsg, errlen, KP_EINVAL, "%s entry %zu is longer than %d bytes", what,
                       index + 1, KP_TOKEN_SCOPE_MAX_NAME);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= ' ' || c > '~' || c == ',')
            return kp_errf(
                errmsg, errlen, KP_EINVAL,
                "%s entry %zu: character %zu is not printable ASCII, or is a space or ','", what,
                index + 1, i + 1);
        if (c == '*' && (!wildcard_ok || i != len - 1))
            return kp_errf(errmsg, errlen, KP_EINVAL,
                           "%s entry %zu: '*' is allowed only as the last character of a model",
                           what, index + 1);
    }
    return KP_OK;
}

static int check_list(const char *what, const char *const *items, size_t n, bool wildcard_ok,
                      char *errmsg, size_t errlen)
{
    if (n > KP_TOKEN_SCOPE_MAX_ENTRIES)
        return kp_errf(errmsg, errlen, KP_EINVAL, "%s: %zu entries; at most %d", what, n,
                       KP_TOKEN_SCOPE_MAX_ENTRIES);
    if (n > 0 && items == NULL)
        return kp_errf(errmsg, errlen, KP_EINVAL, "%s: %zu entries but no list", what, n);
    for (size_t i = 0; i < n; i++) {
        int rc = check_entry(what, i, items[i], wildcard_ok, errmsg, errlen);
        if (rc != KP_OK)
            return rc;
    }
    return KP_OK;
}

int kp_token_scope_check(const struct kp_token_scope *scope, char *errmsg, size_t errlen)
{
    int rc;
    if (scope->tenant == NULL || scope->tenant[0] == '\0')
        return kp_errf(errmsg, errlen, KP_EINVAL,
                       "scope needs a tenant, or \"*\" for every tenant");
    if (strcmp(scope->tenant, "*") != 0 &&
        (rc = check_entry("tenant", 0, scope->tenant, false, errmsg, errlen)) != KP_OK)
        return rc;
    if ((rc = check_list("projects", scope->projects, scope->n_projects, false, errmsg, errlen)) !=
            KP_OK ||
        (rc = check_list("features", scope->features, scope->n_features, false, errmsg, errlen)) !=
            KP_OK ||
        (rc = check_list("pools", scope->pools, scope->n_pools, false, errmsg, errlen)) != KP_OK ||
        (rc = check_list("models", scope->models, scope->n_models, true, errmsg, errlen)) != KP_OK)
        return rc;
    if (scope->expires_at < 0)
        return kp_errf(errmsg, errlen, KP_EINVAL, "expires_at is negative; 0 means never");
    return KP_OK;
}

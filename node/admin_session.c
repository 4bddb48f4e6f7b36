/* Console sessions (docs/console.md): a token exchanged for a cookie, so
 * that the web console never keeps the token text where script can read it.
 *
 *   POST   /admin/v1/session   Bearer token -> Set-Cookie kp_session, CSRF token
 *   GET    /admin/v1/session   who the session (or token) is, and its CSRF token
 *   DELETE /admin/v1/session   clears the cookie
 *
 * The cookie is no node's memory: it is "<token id>.<expiry>.<mac>", the
 * MAC an HMAC-SHA256 under a key derived from the master key (which every
 * node of the cluster holds) over the id, the expiry and the token's stored
 * hash. Any node checks it, and every request looks the token up in the
 * registry again, so a token that is disabled, expires or is deleted ends
 * its sessions at once; a token re-created under the same id (its hash
 * differs) does not inherit them. During a master key rotation cookies
 * signed under the previous key stay valid.
 *
 * Requests that change anything (every method but GET and HEAD) made with
 * the cookie must also carry X-CSRF-Token, an HMAC of the cookie that only
 * the page that signed in learned (from the answers above), and an Origin,
 * when the browser sends one, naming this host. With SameSite=Strict the
 * browser already keeps the cookie off other sites' requests; these checks
 * hold even where it does not. */
#include <inttypes.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "admin_internal.h"

#define COOKIE_NAME   "kp_session"
#define SESSION_LABEL "keyplane console session v1"
#define MAC_B64_LEN   43 /* 32 bytes, base64url without padding */
#define SESSION_TTL_S (12 * 3600)
#define COOKIE_ATTRS  "Path=/; HttpOnly; SameSite=Strict"

static void b64url(const uint8_t *in, size_t n, char *out)
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n)
            v |= in[i + 2];
        out[o++] = abc[(v >> 18) & 63];
        out[o++] = abc[(v >> 12) & 63];
        if (i + 1 < n)
            out[o++] = abc[(v >> 6) & 63];
        if (i + 2 < n)
            out[o++] = abc[v & 63];
    }
    out[o] = '\0';
}

/* HMAC-SHA256 under the session key of @kek over @a and @b, base64url into
 * @out (MAC_B64_LEN + 1 bytes). */
static bool session_mac(const struct kp_seal_kek *kek, const char *a, const uint8_t *b, size_t bn,
                        char *out)
{
    uint8_t key[KP_SEAL_KEK_LEN], mac[32], msg[256];
    unsigned maclen = 0;
    size_t an = strlen(a);
    bool ok = false;
    if (an + bn <= sizeof(msg) && kp_seal_kek_derive(kek, SESSION_LABEL, key) == KP_OK) {
        memcpy(msg, a, an);
        if (bn > 0)
            memcpy(msg + an, b, bn);
        ok = HMAC(EVP_sha256(), key, sizeof(key), msg, an + bn, mac, &maclen) != NULL &&
             maclen == sizeof(mac);
    }
    kp_secret_wipe(key, sizeof(key));
    if (ok)
        b64url(mac, sizeof(mac), out);
    return ok;
}

static bool mac_equal(const char *a, const char *b)
{
    return strlen(a) == MAC_B64_LEN && strlen(b) == MAC_B64_LEN &&
           CRYPTO_memcmp(a, b, MAC_B64_LEN) == 0;
}

/* The MAC of a cookie for token @tok expiring at @exp_s. */
static bool cookie_mac(const struct kp_seal_kek *kek, const struct kp_token *tok, int64_t exp_s,
                       char *out)
{
    char head[128];
    snprintf(head, sizeof(head), "session\n%s\n%" PRId64 "\n", tok->e.id, exp_s);
    return session_mac(kek, head, tok->hash, sizeof(tok->hash), out);
}

const char *kp_admin__session_cookie(const struct kp_http_request *req)
{
    for (unsigned i = 0; i < req->n_headers; i++) {
        if (strcasecmp(req->headers[i].name, "cookie") != 0)
            continue;
        const char *p = req->headers[i].value;
        while (p != NULL && *p != '\0') {
            while (*p == ' ' || *p == ';')
                p++;
            if (strncmp(p, COOKIE_NAME "=", sizeof(COOKIE_NAME)) == 0)
                return p + sizeof(COOKIE_NAME);
            p = strchr(p, ';');
        }
    }
    return NULL;
}

/* The length of the cookie value at @v (up to ';' or the end). */
static size_t cookie_len(const char *v)
{
    size_t n = strcspn(v, ";");
    while (n > 0 && v[n - 1] == ' ')
        n--;
    return n;
}

int kp_admin__session_verify(struct kp_admin_req *r, const char *cookie, char *id_out,
                             size_t id_len, const struct kp_token **tok_out, char *why,
                             size_t why_len)
{
    size_t n = cookie_len(cookie);
    char v[160], *dot1 = NULL, *dot2 = NULL, *end;
    *tok_out = NULL;
    id_out[0] = '\0';
    if (n > 0 && n < sizeof(v)) {
        memcpy(v, cookie, n);
        v[n] = '\0';
        dot1 = strchr(v, '.');
        dot2 = dot1 != NULL ? strchr(dot1 + 1, '.') : NULL;
    }
    if (dot2 == NULL || (size_t)(dot1 - v) >= KP_TOKEN_ID_SIZE) {
        snprintf(why, why_len, "the session cookie is malformed: sign in again");
        return KP_EPERM;
    }
    *dot1 = *dot2 = '\0';
    long long exp_s = strtoll(dot1 + 1, &end, 10);
    if (*end != '\0' || exp_s <= 0) {
        snprintf(why, why_len, "the session cookie is malformed: sign in again");
        return KP_EPERM;
    }
    snprintf(id_out, id_len, "%s", v);
    const struct kp_token *tok =
        (const struct kp_token *)kp_fsm_get(kp_admin__fsm(r), KP_KIND_TOKEN, v);
    const struct kp_seal_kek *keks[2] = {r->n->kek, r->n->prev_kek};
    for (int i = 0; tok != NULL && i < 2; i++) {
        char want[MAC_B64_LEN + 1];
        if (keks[i] == NULL || !cookie_mac(keks[i], tok, exp_s, want))
            continue;
        if (!mac_equal(want, dot2 + 1))
            continue;
        if (kp_now_unix_ms() / 1000 >= exp_s) {
            snprintf(why, why_len, "the session of token %s has expired: sign in again", v);
            return KP_ETIMEDOUT;
        }
        *tok_out = tok;
        return KP_OK;
    }
    snprintf(why, why_len,
             "the session cookie is not valid (altered, signed under another master key, or its "
             "token is gone): sign in again");
    return KP_EPERM;
}

/* The CSRF token of the session whose cookie value is @cookie: always under
 * the current master key, also for a cookie signed under the previous one,
 * so that the token handed out and the token checked agree. */
static bool csrf_of(const struct kp_seal_kek *kek, const char *cookie, char *out)
{
    char head[200];
    snprintf(head, sizeof(head), "csrf\n%.*s", (int)cookie_len(cookie), cookie);
    return session_mac(kek, head, NULL, 0, out);
}

bool kp_admin__session_csrf_ok(struct kp_admin_req *r, const char *cookie, const char **code,
                               char *why, size_t why_len)
{
    const struct kp_http_request *req = r->req;
    const char *origin = kp_http_request_header(req, "origin");
    const char *host = kp_http_request_header(req, "host");
    if (origin != NULL) {
        const char *rest = strncmp(origin, "http://", 7) == 0    ? origin + 7
                           : strncmp(origin, "https://", 8) == 0 ? origin + 8
                                                                 : NULL;
        if (rest == NULL || host == NULL || strcasecmp(rest, host) != 0) {
            *code = "origin_mismatch";
            snprintf(why, why_len,
                     "a change made with a console session must come from a page of this host "
                     "(the Origin header names another)");
            return false;
        }
    }
    const char *given = kp_http_request_header(req, "x-csrf-token");
    char want[MAC_B64_LEN + 1];
    if (given == NULL || !csrf_of(r->n->kek, cookie, want) || !mac_equal(want, given)) {
        *code = "csrf_failed";
        snprintf(why, why_len,
                 "a change made with a console session needs the session's X-CSRF-Token header "
                 "(reload the console)");
        return false;
    }
    return true;
}

/* --- the routes ------------------------------------------------------------ */

static void answer_session(struct kp_admin_req *r, int status, const char *cookie, int64_t exp_s,
                           const char *set_cookie)
{
    json_t *perms = json_array(), *v = json_object();
    unsigned have = kp_role_perms(r->who.role);
    for (unsigned bit = 1; perms != NULL && bit != 0 && bit <= KP_PERM_ALL; bit <<= 1) {
        if (have & bit)
            json_array_append_new(perms, json_string(kp_perm_name(bit)));
    }
    char csrf[MAC_B64_LEN + 1] = "", at[32] = "";
    if (cookie != NULL && !csrf_of(r->n->kek, cookie, csrf)) {
        json_decref(perms);
        json_decref(v);
        kp_admin__oom(r);
        return;
    }
    if (perms == NULL || v == NULL) {
        json_decref(perms);
        json_decref(v);
        kp_admin__oom(r);
        return;
    }
    json_object_set_new(v, "token_id", json_string(r->who.token_id));
    json_object_set_new(v, "role", json_string(kp_role_name(r->who.role)));
    json_object_set_new(v, "permissions", perms);
    json_object_set_new(v, "session", json_boolean(cookie != NULL));
    if (cookie != NULL) {
        json_object_set_new(v, "csrf_token", json_string(csrf));
        kp_format_time_ms(exp_s * 1000, at, sizeof(at));
        json_object_set_new(v, "expires_at", json_string(at));
    }
    struct kp_http_header h[2] = {KP_HTTP_HEADER("Cache-Control", "no-store")};
    unsigned nh = 1;
    if (set_cookie != NULL)
        h[nh++] = KP_HTTP_HEADER("Set-Cookie", set_cookie);
    kp_admin__respond_with(r, status, v, h, nh, false);
}

/* "Secure" when the browser reached us over TLS: a TLS-terminating proxy
 * says so in X-Forwarded-Proto. (The flag only narrows where the browser
 * sends the cookie, so trusting the header cannot weaken anything.) */
/* Secure when the browser reached us over TLS: this listener's own, or a
 * TLS-terminating proxy's that says so. */
static const char *secure_attr(struct kp_admin_req *r)
{
    const char *p = kp_http_request_header(r->req, "x-forwarded-proto");
    bool tls = kp_http_tls(r->ex) || (p != NULL && strcasecmp(p, "https") == 0);
    return tls ? "; Secure" : "";
}

void kp_admin__session_start(struct kp_admin_req *r)
{
    if (r->session != NULL || kp_http_request_header(r->req, "authorization") == NULL) {
        kp_admin__fail(r, 400, "invalid_request", NULL,
                       "sign in with the token in Authorization: Bearer kp_...");
        return;
    }
    const struct kp_token *tok =
        (const struct kp_token *)kp_fsm_get(kp_admin__fsm(r), KP_KIND_TOKEN, r->who.token_id);
    if (tok == NULL) { /* authenticated a moment ago on this loop */
        kp_admin__fail(r, 401, "invalid_token", NULL, "token %s is gone", r->who.token_id);
        return;
    }
    int64_t now_s = kp_now_unix_ms() / 1000, exp_s = now_s + SESSION_TTL_S;
    if (tok->expires_at_ms != 0 && tok->expires_at_ms / 1000 < exp_s)
        exp_s = tok->expires_at_ms / 1000;
    char mac[MAC_B64_LEN + 1], value[160], set[320];
    if (!cookie_mac(r->n->kek, tok, exp_s, mac)) {
        kp_admin__fail(r, 503, "session_failed", NULL, "cannot sign a session now; retry");
        return;
    }
    snprintf(value, sizeof(value), "%s.%" PRId64 ".%s", tok->e.id, exp_s, mac);
    snprintf(set, sizeof(set), COOKIE_NAME "=%s; Max-Age=%" PRId64 "; " COOKIE_ATTRS "%s", value,
             exp_s - now_s, secure_attr(r));
    answer_session(r, 200, value, exp_s, set);
    kp_secret_wipe(set, sizeof(set));
    kp_secret_wipe(value, sizeof(value));
}

void kp_admin__session_get(struct kp_admin_req *r)
{
    int64_t exp_s = 0;
    if (r->session != NULL) {
        const char *dot = strchr(r->session, '.');
        exp_s = dot != NULL ? strtoll(dot + 1, NULL, 10) : 0;
    }
    answer_session(r, 200, r->session, exp_s, NULL);
}

void kp_admin__session_end(struct kp_admin_req *r)
{
    char set[160];
    snprintf(set, sizeof(set), COOKIE_NAME "=; Max-Age=0; " COOKIE_ATTRS "%s", secure_attr(r));
    struct kp_http_header h[2] = {KP_HTTP_HEADER("Cache-Control", "no-store"),
                                  KP_HTTP_HEADER("Set-Cookie", set)};
    kp_admin__respond_with(r, 200, json_pack("{s:b}", "signed_out", 1), h, 2, false);
}

/* TLS contexts for the HTTP server's listeners (tls.h).
 *
 * A context is built whole from the files and only then published, so a
 * connection always sees either the old certificate or the new one, never
 * a half-loaded context. The pointer is guarded by a mutex taken once per
 * new connection (not per request) and, briefly, by a reload: connections
 * hold their own reference (SSL_new takes one), so the old context lives
 * on until its last connection closes.
 *
 * Every context: TLS 1.2 or later, no renegotiation, ALPN "http/1.1" only
 * (a client offering only other protocols is refused with the
 * no_application_protocol alert), OpenSSL's default cipher suites. With a
 * client CA file, clients are asked for a certificate chaining to it; a
 * certificate that does not verify fails the handshake, and with
 * require_client_cert so does a client that sends none. */
#include "tls.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "alloc.h"
#include "error.h"

struct kp_tls_server {
    char *cert_file, *key_file, *client_ca_file;
    bool require_client_cert;
    pthread_mutex_t mu;
    SSL_CTX *ctx; /* guarded by mu */
};

void kp_tls__errors(char *out, size_t len)
{
    size_t o = 0;
    unsigned long e;
    out[0] = '\0';
    while ((e = ERR_get_error()) != 0) {
        char one[256];
        ERR_error_string_n(e, one, sizeof(one));
        /* "error:0A000086:SSL routines::certificate verify failed": keep the
         * reason, the part people can act on. */
        const char *reason = strrchr(one, ':');
        reason = reason != NULL && reason[1] != '\0' ? reason + 1 : one;
        if (o + 3 < len)
            o += (size_t)snprintf(out + o, len - o, "%s%s", o > 0 ? "; " : "", reason);
    }
    if (out[0] == '\0')
        snprintf(out, len, "unknown TLS error");
}

static int readable(const char *what, const char *path, char *errmsg, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return kp_errf(errmsg, errlen, KP_ECONFIG, "%s %s: cannot open: %s", what, path,
                       strerror(errno));
    fclose(f);
    return KP_OK;
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    static const unsigned char http11[] = "\x08http/1.1";
    unsigned char *chosen = NULL;
    (void)ssl;
    (void)arg;
    if (SSL_select_next_proto(&chosen, outlen, http11, sizeof(http11) - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    *out = chosen;
    return SSL_TLSEXT_ERR_OK;
}

static int build_ctx(const struct kp_tls_server *t, SSL_CTX **out, char *errmsg, size_t errlen)
{
    char why[512];
    int rc;
    if ((rc = readable("certificate", t->cert_file, errmsg, errlen)) != KP_OK ||
        (rc = readable("private key", t->key_file, errmsg, errlen)) != KP_OK ||
        (t->client_ca_file != NULL &&
         (rc = readable("client CA file", t->client_ca_file, errmsg, errlen)) != KP_OK))
        return rc;
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL)
        return kp_errf(errmsg, errlen, KP_ENOMEM, "TLS context: out of memory");
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    /* Idle keep-alive connections give their record buffers back. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
    /* Needed for session resumption once clients are verified. */
    SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"keyplane", 8);
    if (SSL_CTX_use_certificate_chain_file(ctx, t->cert_file) != 1) {
        kp_tls__errors(why, sizeof(why));
        rc = kp_errf(errmsg, errlen, KP_ECONFIG, "certificate %s: not a PEM certificate (%s)",
                     t->cert_file, why);
        goto err_after_ctx;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, t->key_file, SSL_FILETYPE_PEM) != 1) {
        kp_tls__errors(why, sizeof(why));
        rc = kp_errf(errmsg, errlen, KP_ECONFIG,
                     "private key %s: not a PEM private key, or not the key of certificate %s "
                     "(%s)",
                     t->key_file, t->cert_file, why);
        goto err_after_ctx;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        kp_tls__errors(why, sizeof(why));
        rc =
            kp_errf(errmsg, errlen, KP_ECONFIG, "private key %s does not match certificate %s (%s)",
                    t->key_file, t->cert_file, why);
        goto err_after_ctx;
    }
    if (t->client_ca_file != NULL) {
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(t->client_ca_file);
        if (names == NULL || SSL_CTX_load_verify_locations(ctx, t->client_ca_file, NULL) != 1) {
            if (names != NULL)
                sk_X509_NAME_pop_free(names, X509_NAME_free);
            kp_tls__errors(why, sizeof(why));
            rc = kp_errf(errmsg, errlen, KP_ECONFIG,
                         "client CA file %s: no PEM CA certificate in it (%s)", t->client_ca_file,
                         why);
            goto err_after_ctx;
        }
        SSL_CTX_set_client_CA_list(ctx, names); /* takes @names */
        SSL_CTX_set_verify(
            ctx, SSL_VERIFY_PEER | (t->require_client_cert ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0),
            NULL);
    }
    *out = ctx;
    return KP_OK;

err_after_ctx:
    SSL_CTX_free(ctx);
    ERR_clear_error();
    return rc;
}

static char *dup_or_null(const char *s, bool *ok)
{
    if (s == NULL)
        return NULL;
    char *d = kp_strdup(s);
    if (d == NULL)
        *ok = false;
    return d;
}

void kp_tls_server_free(struct kp_tls_server *t)
{
    if (t == NULL)
        return;
    SSL_CTX_free(t->ctx);
    pthread_mutex_destroy(&t->mu);
    kp_free(t->cert_file);
    kp_free(t->key_file);
    kp_free(t->client_ca_file);
    kp_free(t);
}

int kp_tls_server_new(struct kp_tls_server **out, const struct kp_tls_settings *s, char *errmsg,
                      size_t errlen)
{
    if (s->cert_file == NULL || s->key_file == NULL)
        return kp_errf(errmsg, errlen, KP_ECONFIG, "TLS needs a certificate and a private key");
    if (s->require_client_cert && s->client_ca_file == NULL)
        return kp_errf(errmsg, errlen, KP_ECONFIG,
                       "requiring client certificates needs a client CA file to verify them");
    struct kp_tls_server *t = kp_calloc(1, sizeof(*t));
    if (t == NULL)
        return kp_errf(errmsg, errlen, KP_ENOMEM, "out of memory");
    bool ok = true;
    t->cert_file = dup_or_null(s->cert_file, &ok);
    t->key_file = dup_or_null(s->key_file, &ok);
    t->client_ca_file = dup_or_null(s->client_ca_file, &ok);
    t->require_client_cert = s->require_client_cert;
    pthread_mutex_init(&t->mu, NULL);
    int rc = ok ? build_ctx(t, &t->ctx, errmsg, errlen)
                : kp_errf(errmsg, errlen, KP_ENOMEM, "out of memory");
    if (rc != KP_OK) {
        kp_tls_server_free(t);
        return rc;
    }
    *out = t;
    return KP_OK;
}

int kp_tls_server_reload(struct kp_tls_server *t, char *errmsg, size_t errlen)
{
    SSL_CTX *fresh = NULL;
    int rc = build_ctx(t, &fresh, errmsg, errlen);
    if (rc != KP_OK)
        return rc;
    pthread_mutex_lock(&t->mu);
    SSL_CTX *old = t->ctx;
    t->ctx = fresh;
    pthread_mutex_unlock(&t->mu);
    SSL_CTX_free(old); /* open connections keep their own references */
    return KP_OK;
}

SSL_CTX *kp_tls__acquire(struct kp_tls_server *t)
{
    pthread_mutex_lock(&t->mu);
    SSL_CTX *ctx = t->ctx;
    SSL_CTX_up_ref(ctx);
    pthread_mutex_unlock(&t->mu);
    return ctx;
}

void kp_tls_server_describe(struct kp_tls_server *t, char *out, size_t len)
{
    SSL_CTX *ctx = kp_tls__acquire(t);
    X509 *x = SSL_CTX_get0_certificate(ctx);
    char subject[256] = "?", serial[80] = "?", expires[64] = "?";
    if (x != NULL) {
        X509_NAME_oneline(X509_get_subject_name(x), subject, sizeof(subject));
        BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
        char *hex = bn != NULL ? BN_bn2hex(bn) : NULL;
        if (hex != NULL)
            snprintf(serial, sizeof(serial), "%s", hex);
        OPENSSL_free(hex);
        BN_free(bn);
        struct tm tm;
        if (ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) == 1)
            strftime(expires, sizeof(expires), "%Y-%m-%d %H:%M:%S UTC", &tm);
    }
    SSL_CTX_free(ctx);
    snprintf(out, len, "subject %s, serial %s, expires %s", subject, serial, expires);
}

int kp_tls_server_check_chain(struct kp_tls_server *t, const char *ca_file, char *errmsg,
                              size_t errlen)
{
    int rc = KP_OK;
    SSL_CTX *ctx = kp_tls__acquire(t);
    X509 *leaf = SSL_CTX_get0_certificate(ctx);
    STACK_OF(X509) *chain = NULL;
    X509_STORE *store = X509_STORE_new();
    X509_STORE_CTX *vctx = X509_STORE_CTX_new();
    ERR_clear_error();
    SSL_CTX_get0_chain_certs(ctx, &chain);
    if (store == NULL || vctx == NULL || leaf == NULL) {
        rc = kp_errf(errmsg, errlen, KP_ENOMEM, "out of memory");
    } else if (X509_STORE_load_file(store, ca_file) != 1) {
        rc = kp_errf(errmsg, errlen, KP_ECONFIG, "CA file %s cannot be read", ca_file);
    } else if (X509_STORE_CTX_init(vctx, store, leaf, chain) != 1 || X509_verify_cert(vctx) != 1) {
        rc = kp_errf(errmsg, errlen, KP_EAUTH, "%s",
                     X509_verify_cert_error_string(X509_STORE_CTX_get_error(vctx)));
    }
    ERR_clear_error();
    X509_STORE_CTX_free(vctx);
    X509_STORE_free(store);
    SSL_CTX_free(ctx);
    return rc;
}

long long kp_tls_server_not_after(struct kp_tls_server *t)
{
    SSL_CTX *ctx = kp_tls__acquire(t);
    X509 *x = SSL_CTX_get0_certificate(ctx);
    struct tm tm;
    long long at = 0;
    if (x != NULL && ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) == 1)
        at = (long long)timegm(&tm);
    SSL_CTX_free(ctx);
    return at;
}

int kp_tls_check_ca_file(const char *path, char *errmsg, size_t errlen)
{
    int rc = readable("CA file", path, errmsg, errlen);
    if (rc != KP_OK)
        return rc;
    ERR_clear_error();
    X509_STORE *st = X509_STORE_new();
    if (st == NULL)
        return kp_errf(errmsg, errlen, KP_ENOMEM, "out of memory");
    if (X509_STORE_load_file(st, path) != 1) {
        char why[512];
        kp_tls__errors(why, sizeof(why));
        rc = kp_errf(errmsg, errlen, KP_ECONFIG, "CA file %s: no PEM CA certificate in it (%s)",
                     path, why);
    }
    X509_STORE_free(st);
    return rc;
}

/* TLS for the HTTP server's listeners (OpenSSL 3).
 *
 * A kp_tls_server holds a listener's settings (file names) and the SSL_CTX
 * built from them. Every server that serves the listener, on any thread,
 * shares it: each new connection takes a reference to the context current
 * at that moment, so kp_tls_server_reload() can swap in a context built
 * from the files as they are now without touching connections already
 * open. A reload that fails (a file missing, a key that does not match its
 * certificate) keeps the context that was loaded. */
#ifndef KP_CORE_TLS_H
#define KP_CORE_TLS_H

#include <stdbool.h>
#include <stddef.h>

struct kp_tls_settings {
    const char *cert_file;      /* PEM: the certificate, then any intermediates */
    const char *key_file;       /* PEM: its private key */
    const char *client_ca_file; /* PEM CA certificates client certificates must chain to;
                                   NULL: clients are not asked for one */
    bool require_client_cert;   /* refuse a handshake without a valid client certificate */
};

struct kp_tls_server;

/* Build the first context. The settings' strings are copied. KP_ECONFIG
 * with @errmsg naming the file and what is wrong with it. */
int kp_tls_server_new(struct kp_tls_server **out, const struct kp_tls_settings *s, char *errmsg,
                      size_t errlen);
/* Read the files again and swap the context in (any thread). On error the
 * old context stays and @errmsg says why. */
int kp_tls_server_reload(struct kp_tls_server *t, char *errmsg, size_t errlen);
/* "subject CN=n1, serial 1A2B, expires 2027-11-30 08:00:00 UTC" of the
 * certificate currently served. */
void kp_tls_server_describe(struct kp_tls_server *t, char *out, size_t len);
/* The certificate's notAfter, in seconds since the epoch (0 if unknown). */
long long kp_tls_server_not_after(struct kp_tls_server *t);
/* After every server using it is closed. NULL is fine. */
void kp_tls_server_free(struct kp_tls_server *t);

/* Check that @path holds at least one PEM CA certificate (the CA a
 * client verifies servers against). KP_ECONFIG with a message. */
int kp_tls_check_ca_file(const char *path, char *errmsg, size_t errlen);

/* Whether the served certificate chains to a CA in @ca_file (as another
 * node verifying it would find). KP_OK, or KP_EAUTH with @errmsg saying
 * why (KP_ECONFIG when @ca_file cannot be read). */
int kp_tls_server_check_chain(struct kp_tls_server *t, const char *ca_file, char *errmsg,
                              size_t errlen);

/* Internal to node/core (http_server.c): the current context, with a
 * reference the caller gives back with SSL_CTX_free(). */
struct ssl_ctx_st *kp_tls__acquire(struct kp_tls_server *t);
/* The OpenSSL error queue of this thread as one line (and cleared). */
void kp_tls__errors(char *out, size_t len);

#endif

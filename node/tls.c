/* The node's TLS (docs/operations.md, "TLS"): the context its gateway and
 * control listeners serve, reloaded on SIGHUP, and how it calls other
 * nodes.
 *
 * One context serves both listeners: they present the same certificate
 * (tls.cert_file) and ask clients for certificates the same way
 * (tls.client_ca_file, tls.require_client_cert). tls.gateway and
 * tls.control say which listeners use it.
 *
 * Calls to other nodes' control ports (forwarding, joins, budget leases,
 * segment shipping, polls) use https exactly when this node's own control
 * port serves TLS: a cluster runs tls.control on every node or on none, so
 * a node's own setting says how its peers listen, and no member record
 * needs a scheme. Those calls verify the peer's certificate and host name
 * against tls.ca_file and present tls.cert_file as a client certificate,
 * so that peers requiring client certificates accept them. The cluster
 * secret is checked as over plain HTTP. */
#include <stdio.h>
#include <string.h>

#include "node.h"

/* keyplane_tls_certificate_expiry_seconds and keyplane_tls_reloads_total:
 * what an operator alerts on before a certificate runs out. */
static void note_certificate(struct kp_node *n, const char *result)
{
    kp_metric_set(kp_metric_gauge("keyplane_tls_certificate_expiry_seconds",
                                  "notAfter of the certificate the TLS listeners serve, in seconds "
                                  "since the epoch"),
                  kp_tls_server_not_after(n->rt->tls));
    if (result != NULL)
        kp_metric_family_add(kp_metric_family_counter("keyplane_tls_reloads_total",
                                                      "TLS reloads on SIGHUP, by result", 1,
                                                      (const char *const[]){"result"}, 4),
                             (const char *const[]){result}, 1);
}

int kp_node_tls_open(struct kp_node *n, char *errmsg, size_t errlen)
{
    const struct kp_config *cfg = n->cfg;
    char why[768];
    int rc;
    if (cfg->tls_ca_file != NULL &&
        (rc = kp_tls_check_ca_file(cfg->tls_ca_file, why, sizeof(why))) != KP_OK)
        return kp_errf(errmsg, errlen, rc, "tls.ca_file: %s", why);
    if (cfg->tls_cert_file != NULL) {
        /* Checked even when no listener serves TLS: the certificate is also
         * the client certificate of calls to other nodes. */
        struct kp_tls_settings s = {cfg->tls_cert_file, cfg->tls_key_file, cfg->tls_client_ca_file,
                                    cfg->tls_require_client_cert};
        rc = kp_tls_server_new(&n->rt->tls, &s, why, sizeof(why));
        if (rc != KP_OK)
            return kp_errf(errmsg, errlen, rc, "tls: %s", why);
        char desc[512];
        kp_tls_server_describe(n->rt->tls, desc, sizeof(desc));
        kp_info("tls", "certificate %s: %s; TLS on the gateway: %s, on the control port: %s%s",
                cfg->tls_cert_file, desc, cfg->tls_gateway ? "yes" : "no",
                cfg->tls_control ? "yes" : "no",
                cfg->tls_require_client_cert ? "; client certificates required"
                : cfg->tls_client_ca_file    ? "; client certificates verified when sent"
                                             : "");
        note_certificate(n, NULL);
        if (cfg->tls_ca_file != NULL &&
            kp_tls_server_check_chain(n->rt->tls, cfg->tls_ca_file, why, sizeof(why)) != KP_OK)
            kp_warn("tls",
                    "certificate %s does not verify against tls.ca_file %s (%s): other nodes "
                    "will refuse this node's calls, and clients trusting that CA its listeners",
                    cfg->tls_cert_file, cfg->tls_ca_file, why);
    }
    if (cfg->tls_control)
        kp_call_set_tls(cfg->tls_ca_file, cfg->tls_cert_file, cfg->tls_key_file);
    return KP_OK;
}

void kp_node_tls_reload(struct kp_node *n)
{
    char why[768], desc[512];
    if (n->rt->tls == NULL)
        return;
    if (kp_tls_server_reload(n->rt->tls, why, sizeof(why)) != KP_OK) {
        kp_tls_server_describe(n->rt->tls, desc, sizeof(desc));
        kp_error("tls",
                 "SIGHUP: TLS reload failed, still serving the certificate loaded before "
                 "(%s): %s",
                 desc, why);
        note_certificate(n, "failed");
        return;
    }
    kp_tls_server_describe(n->rt->tls, desc, sizeof(desc));
    kp_info("tls", "SIGHUP: TLS certificate reloaded from %s: %s; new connections use it",
            n->cfg->tls_cert_file, desc);
    note_certificate(n, "ok");
}

void kp_node_tls_close(struct kp_runtime *rt)
{
    kp_tls_server_free(rt->tls);
    rt->tls = NULL;
}

int kp_node_peer_url(char *out, size_t len, const char *control, const char *path)
{
    int n = snprintf(out, len, "%s://%s%s", kp_call_https() ? "https" : "http", control, path);
    return n >= 0 && (size_t)n < len ? KP_OK : KP_ETOOBIG;
}

/* Node-to-node HTTP from the main loop: forwarding control API requests to
 * the leader, join requests, and status polls of other members.
 *
 * Each call runs libcurl's easy interface on a libuv threadpool thread
 * (uv_queue_work) and completes on the main loop. These calls are rare
 * (admin writes, joins, a status page), so a blocking transfer per call is
 * simpler than a multi handle and costs nothing on the request path; the
 * router's upstream client is separate work. Everything a call needs is
 * copied into it, so the exchange it serves may go away meanwhile. */
#include <ctype.h>
#include <curl/curl.h>
#include <stdio.h>
#include <string.h>

#include "node.h"

enum { CONNECT_TIMEOUT_MS = 2000 };

/* How calls to other nodes use TLS (node/tls.c): set once before any call
 * starts, read by the threadpool threads after. */
static struct {
    bool https;
    const char *ca_file, *cert_file, *key_file;
} peer_tls;

void kp_call_set_tls(const char *ca_file, const char *cert_file, const char *key_file)
{
    peer_tls.https = true;
    peer_tls.ca_file = ca_file;
    peer_tls.cert_file = cert_file;
    peer_tls.key_file = key_file;
}

bool kp_call_https(void)
{
    return peer_tls.https;
}

struct kp_call {
    uv_work_t work;
    /* in */
    char *method;
    char *url;
    struct curl_slist *headers;
    char *body;
    size_t body_len;
    long timeout_ms;
    bool peer; /* another node's control port: the cluster's TLS settings */
    kp_call_cb cb;
    void *arg;
    /* out */
    struct kp_call_result res;
};

static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
    struct kp_buf *body = arg;
    if (body->len + size * n > (size_t)64 << 20 || kp_buf_append(body, data, size * n) != 0)
        return 0;
    return size * n;
}

/* Keep the few response headers a forwarded answer passes on. */
static void keep_header(struct kp_call_result *r, const char *line, size_t n)
{
    static const struct {
        const char *name;
        size_t off;
    } kept[] = {
        {"content-type:", offsetof(struct kp_call_result, content_type)},
        {"etag:", offsetof(struct kp_call_result, etag)},
        {"retry-after:", offsetof(struct kp_call_result, retry_after)},
        {"allow:", offsetof(struct kp_call_result, allow)},
    };
    for (size_t i = 0; i < sizeof(kept) / sizeof(kept[0]); i++) {
        size_t k = strlen(kept[i].name);
        if (n <= k || strncasecmp(line, kept[i].name, k) != 0)
            continue;
        const char *v = line + k;
        size_t vn = n - k;
        while (vn > 0 && (*v == ' ' || *v == '\t'))
            v++, vn--;
        while (vn > 0 && (v[vn - 1] == '\r' || v[vn - 1] == '\n' || v[vn - 1] == ' '))
            vn--;
        char *dst = (char *)r + kept[i].off;
        snprintf(dst, KP_CALL_HEADER_MAX, "%.*s", (int)vn, v);
    }
}

/* X-Keyplane-* headers of the answer, but X-Keyplane-Forwarded-To, which
 * the forwarding node sets itself. */
static void keep_extra(struct kp_call_result *r, const char *line, size_t n)
{
    static const char prefix[] = "x-keyplane-";
    const char *colon = memchr(line, ':', n);
    size_t nl = colon != NULL ? (size_t)(colon - line) : 0;
    if (colon == NULL || nl <= sizeof(prefix) - 1 || nl >= sizeof(r->extra[0].name) ||
        strncasecmp(line, prefix, sizeof(prefix) - 1) != 0 ||
        (nl == strlen("x-keyplane-forwarded-to") &&
         strncasecmp(line, "x-keyplane-forwarded-to", nl) == 0) ||
        r->n_extra == KP_CALL_EXTRA_MAX)
        return;
    const char *v = colon + 1;
    size_t vn = n - nl - 1;
    while (vn > 0 && (*v == ' ' || *v == '\t'))
        v++, vn--;
    while (vn > 0 && (v[vn - 1] == '\r' || v[vn - 1] == '\n' || v[vn - 1] == ' '))
        vn--;
    for (size_t i = 0; i < nl; i++)
        r->extra[r->n_extra].name[i] = (char)tolower((unsigned char)line[i]);
    r->extra[r->n_extra].name[nl] = '\0';
    snprintf(r->extra[r->n_extra].value, KP_CALL_HEADER_MAX, "%.*s", (int)vn, v);
    r->n_extra++;
}

static size_t on_header(char *data, size_t size, size_t n, void *arg)
{
    keep_header(arg, data, size * n);
    keep_extra(arg, data, size * n);
    return size * n;
}

static void call_work(uv_work_t *w)
{
    struct kp_call *c = w->data;
    char curl_err[CURL_ERROR_SIZE] = "";
    CURL *curl = curl_easy_init();
    if (curl == NULL) {
        snprintf(c->res.error, sizeof(c->res.error), "out of memory");
        return;
    }
    CURLcode rc = CURLE_OK;
#define SET(opt, val)                                                                              \
    if (rc == CURLE_OK)                                                                            \
    rc = curl_easy_setopt(curl, opt, val)
    SET(CURLOPT_URL, c->url);
    SET(CURLOPT_PATH_AS_IS, 1L); /* forward the target exactly as received */
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_FOLLOWLOCATION, 0L);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_CONNECTTIMEOUT_MS, (long)CONNECT_TIMEOUT_MS);
    SET(CURLOPT_TIMEOUT_MS, c->timeout_ms);
    SET(CURLOPT_CUSTOMREQUEST, c->method);
    SET(CURLOPT_HTTPHEADER, c->headers);
    SET(CURLOPT_WRITEFUNCTION, on_body);
    SET(CURLOPT_WRITEDATA, &c->res.body);
    SET(CURLOPT_HEADERFUNCTION, on_header);
    SET(CURLOPT_HEADERDATA, &c->res);
    SET(CURLOPT_ERRORBUFFER, curl_err);
    if (c->peer && peer_tls.https && strncmp(c->url, "https://", 8) == 0) {
        /* The peer's certificate and name are verified (curl's default)
         * against the cluster CA only; ours goes along for peers that
         * require client certificates. The files are read for every call,
         * so a SIGHUP's new ones take effect at once. */
        SET(CURLOPT_CAINFO, peer_tls.ca_file);
        SET(CURLOPT_CAPATH, NULL);
        SET(CURLOPT_SSLCERT, peer_tls.cert_file);
        SET(CURLOPT_SSLKEY, peer_tls.key_file);
    }
    if (strcmp(c->method, "HEAD") == 0) {
        SET(CURLOPT_NOBODY, 1L);
    } else if (c->body != NULL) {
        SET(CURLOPT_POSTFIELDS, c->body);
        SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)c->body_len);
    } else if (strcmp(c->method, "GET") == 0) {
        SET(CURLOPT_HTTPGET, 1L);
    }
#undef SET
    if (rc == CURLE_OK)
        rc = curl_easy_perform(curl);
    if (rc == CURLE_OK) {
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &c->res.status);
        if (kp_buf_append(&c->res.body, "", 1) == 0)
            c->res.body.len--; /* keep it NUL-terminated */
    } else {
        snprintf(c->res.error, sizeof(c->res.error), "%s",
                 curl_err[0] ? curl_err : curl_easy_strerror(rc));
        c->res.status = 0;
    }
    curl_easy_cleanup(curl);
}

static void call_free(struct kp_call *c)
{
    kp_free(c->method);
    kp_free(c->url);
    curl_slist_free_all(c->headers);
    if (c->body != NULL)
        kp_secret_wipe(c->body, c->body_len); /* may hold a key being added */
    kp_free(c->body);
    kp_buf_free(&c->res.body);
    kp_free(c);
}

static void call_done(uv_work_t *w, int status)
{
    struct kp_call *c = w->data;
    if (status != 0 && c->res.error[0] == '\0')
        snprintf(c->res.error, sizeof(c->res.error), "cancelled");
    c->cb(c->arg, &c->res);
    call_free(c);
}

static int call_start(uv_loop_t *loop, bool peer, const char *method, const char *url,
                      const char *const *headers, const void *body, size_t body_len,
                      long timeout_ms, kp_call_cb cb, void *arg)
{
    struct kp_call *c = kp_calloc(1, sizeof(*c));
    if (c == NULL)
        return KP_ENOMEM;
    c->peer = peer;
    kp_buf_init(&c->res.body);
    c->method = kp_strdup(method);
    c->url = kp_strdup(url);
    c->timeout_ms = timeout_ms;
    c->cb = cb;
    c->arg = arg;
    bool ok = c->method != NULL && c->url != NULL;
    /* curl would add "Expect: 100-continue" to large bodies; our server
     * handles it, but it costs a round trip. */
    struct curl_slist *h = curl_slist_append(NULL, "Expect:");
    ok = ok && h != NULL;
    for (size_t i = 0; ok && headers != NULL && headers[i] != NULL; i++) {
        struct curl_slist *n = curl_slist_append(h, headers[i]);
        if (n == NULL)
            ok = false;
        else
            h = n;
    }
    c->headers = h;
    if (ok && body != NULL) {
        c->body = kp_malloc(body_len + 1);
        if (c->body == NULL)
            ok = false;
        else {
            memcpy(c->body, body, body_len);
            c->body[body_len] = '\0';
            c->body_len = body_len;
        }
    }
    c->work.data = c;
    if (!ok || uv_queue_work(loop, &c->work, call_work, call_done) != 0) {
        call_free(c);
        return KP_ENOMEM;
    }
    return KP_OK;
}

int kp_call_start(uv_loop_t *loop, const char *method, const char *url, const char *const *headers,
                  const void *body, size_t body_len, long timeout_ms, kp_call_cb cb, void *arg)
{
    return call_start(loop, false, method, url, headers, body, body_len, timeout_ms, cb, arg);
}

int kp_call_start_peer(uv_loop_t *loop, const char *method, const char *url,
                       const char *const *headers, const void *body, size_t body_len,
                       long timeout_ms, kp_call_cb cb, void *arg)
{
    return call_start(loop, true, method, url, headers, body, body_len, timeout_ms, cb, arg);
}

/* --- forwarding to the leader ----------------------------------------------- */

struct forward {
    struct kp_http_exchange *ex;
    char rid[160];
    const char *to; /* "leader", "meter": for messages and X-Keyplane-Forwarded-To */
};

/* Forwards in flight: each holds a threadpool thread until the leader
 * answers, so beyond this many the node answers 503 at once instead of
 * queueing behind them (joins and status polls share the pool). */
enum { MAX_FORWARDS = 32, FORWARD_TIMEOUT_MS = 10000 };
static unsigned forwards_inflight;

struct find_member {
    uint64_t node_id;
    char *control;
    size_t len;
    bool found;
};

static int find_member(const struct kp_entity *e, void *arg)
{
    const struct kp_member *m = (const struct kp_member *)e;
    struct find_member *f = arg;
    if (m->node_id != f->node_id)
        return 0;
    f->found = m->control_address != NULL;
    if (f->found)
        snprintf(f->control, f->len, "%s", m->control_address);
    return 1;
}

bool kp_node_member_control(struct kp_node *n, uint64_t node_id, char *out, size_t len)
{
    struct find_member f = {node_id, out, len, false};
    struct kp_view *v = kp_view_acquire(kp_store_views(n->store));
    if (v == NULL)
        return false;
    kp_view_each(v, KP_KIND_MEMBER, find_member, &f);
    kp_view_release(v);
    return f.found;
}

static void forward_done(void *arg, const struct kp_call_result *r)
{
    struct forward *f = arg;
    forwards_inflight--;
    if (r->status == 0) {
        char msg[400];
        char code[40];
        snprintf(msg, sizeof(msg), "cannot reach the %s: %s; retry shortly", f->to, r->error);
        snprintf(code, sizeof(code), "%s_unreachable", f->to);
        kp_admin_error(f->ex, 503, f->rid, "unavailable", code, NULL, msg);
        kp_free(f);
        return;
    }
    struct kp_http_header h[6 + KP_CALL_EXTRA_MAX];
    unsigned nh = 0;
    h[nh++] = KP_HTTP_HEADER("X-Request-Id", f->rid);
    h[nh++] = KP_HTTP_HEADER("X-Keyplane-Forwarded-To", f->to);
    if (r->content_type[0])
        h[nh++] = KP_HTTP_HEADER("Content-Type", r->content_type);
    if (r->etag[0])
        h[nh++] = KP_HTTP_HEADER("ETag", r->etag);
    if (r->retry_after[0])
        h[nh++] = KP_HTTP_HEADER("Retry-After", r->retry_after);
    if (r->allow[0])
        h[nh++] = KP_HTTP_HEADER("Allow", r->allow);
    for (unsigned i = 0; i < r->n_extra; i++)
        h[nh++] = (struct kp_http_header){r->extra[i].name, strlen(r->extra[i].name),
                                          r->extra[i].value, strlen(r->extra[i].value)};
    kp_http_respond(f->ex, (int)r->status, h, nh, r->body.data, r->body.len);
    kp_free(f);
}

/* Request headers a forwarded request carries (the app's trace context
 * too, so the leader's span joins its trace; a console session's cookie
 * and CSRF token, which the leader checks again); hop-by-hop and framing
 * headers are curl's business. */
static bool forwarded_header(const char *name)
{
    static const char *const pass[] = {
        "authorization", "content-type", "if-match", "if-none-match", "accept",
        "traceparent",   "tracestate",   "cookie",   "x-csrf-token",
    };
    for (size_t i = 0; i < sizeof(pass) / sizeof(pass[0]); i++)
        if (strcasecmp(name, pass[i]) == 0)
            return true;
    return false;
}

void kp_forward_to_leader(struct kp_node *n, struct kp_http_exchange *ex,
                          const struct kp_http_request *req, const char *rid)
{
    uint64_t leader = 0;
    char raft_addr[256];
    if (kp_http_request_header(req, "x-keyplane-forwarded") != NULL) {
        kp_admin_error(ex, 503, rid, "unavailable", "no_leader", NULL,
                       "leadership is changing (the node this was forwarded to is no longer "
                       "leader); retry shortly");
        return;
    }
    if (kp_store_leader(n->store, &leader, raft_addr, sizeof(raft_addr)) != KP_OK ||
        leader == n->node_id) {
        kp_admin_error(ex, 503, rid, "unavailable", "no_leader", NULL,
                       "no Raft leader right now (election in progress or quorum lost); "
                       "retry shortly");
        return;
    }
    char control[256];
    if (!kp_node_member_control(n, leader, control, sizeof(control))) {
        kp_admin_error(ex, 503, rid, "unavailable", "leader_unknown", NULL,
                       "the leader's control address is not in the registry yet; retry "
                       "shortly");
        return;
    }
    kp_forward_to(n, ex, req, rid, control, "leader");
}

void kp_forward_to(struct kp_node *n, struct kp_http_exchange *ex,
                   const struct kp_http_request *req, const char *rid, const char *control,
                   const char *to)
{
    (void)n;
    if (forwards_inflight >= MAX_FORWARDS) {
        char msg[200];
        snprintf(msg, sizeof(msg),
                 "this node has too many requests waiting on the %s; retry shortly, or send to "
                 "the %s",
                 to, to);
        kp_admin_error(ex, 503, rid, "unavailable", "too_many_forwards", NULL, msg);
        return;
    }
    struct forward *f = kp_calloc(1, sizeof(*f));
    char url[1024];
    const char *hdrs[16];
    char lines[12][512];
    size_t nh = 0;
    if (f == NULL) {
        kp_admin_error(ex, 503, rid, "unavailable", "out_of_memory", NULL, "out of memory; retry");
        return;
    }
    f->ex = ex;
    f->to = to;
    snprintf(f->rid, sizeof(f->rid), "%s", rid);
    kp_node_peer_url(url, sizeof(url), control, req->target);
    for (unsigned i = 0; i < req->n_headers && nh < 12; i++) {
        const struct kp_http_header *hh = &req->headers[i];
        if (!forwarded_header(hh->name) || hh->value_len > 400)
            continue;
        snprintf(lines[nh], sizeof(lines[nh]), "%s: %s", hh->name, hh->value);
        hdrs[nh] = lines[nh];
        nh++;
    }
    char rid_line[200];
    snprintf(rid_line, sizeof(rid_line), "X-Request-Id: %s", rid);
    hdrs[nh++] = rid_line;
    hdrs[nh++] = "X-Keyplane-Forwarded: 1";
    hdrs[nh] = NULL;
    bool has_body =
        req->body_len > 0 || (strcmp(req->method, "GET") != 0 && strcmp(req->method, "HEAD") != 0);
    int rc =
        kp_call_start_peer(kp_http_loop(ex), req->method, url, hdrs, has_body ? req->body : NULL,
                           req->body_len, FORWARD_TIMEOUT_MS, forward_done, f);
    kp_secret_wipe(lines, sizeof(lines)); /* the Authorization line */
    if (rc != KP_OK) {
        kp_free(f);
        kp_admin_error(ex, 503, rid, "unavailable", "out_of_memory", NULL, "out of memory; retry");
        return;
    }
    forwards_inflight++;
}

/* HTTP to a keyplaned control port with libcurl's easy interface.
 *
 * One easy handle per run, so the requests of one command share a
 * keep-alive connection. A request either gets an answer, whatever its
 * status, or fails to reach the server (refused, unresolvable, timed out,
 * TLS); only the second is an error here, and it becomes exit code 3 with a
 * message that names the URL and where it came from. An answer outside 2xx
 * becomes exit code 1 with the server's message and what to do next
 * (kp_ctl__refused). Redirects are not followed: a control port never
 * redirects, and following one could carry the token elsewhere.
 *
 * Bodies may hold secrets (a key's secret going out, a new token coming
 * back): the caller wipes what it sent, and response bodies are wiped when
 * freed. Header lists are wiped too, since one carries the token. */
#include <curl/curl.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clusterctl.h"

enum {
    CONNECT_TIMEOUT_MS = 5000,
    REQUEST_TIMEOUT_MS = 30000,
};

static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
    struct kp_buf *body = arg;
    if (kp_buf_append(body, data, size * n) != 0)
        return 0; /* makes curl fail the transfer with CURLE_WRITE_ERROR */
    return size * n;
}

bool kp_ctl__valid_server(const char *url)
{
    return (strncmp(url, "http://", 7) == 0 && url[7] != '\0') ||
           (strncmp(url, "https://", 8) == 0 && url[8] != '\0');
}

static CURL *easy_handle(struct kp_ctl *ctl)
{
    if (ctl->curl == NULL)
        ctl->curl = curl_easy_init();
    return ctl->curl;
}

struct request {
    const char *url;
    const char *method;
    const char *body; /* NULL: none */
    size_t body_len;
};

static int setup(const struct kp_ctl *ctl, CURL *curl, const struct request *req,
                 struct curl_slist *headers, struct kp_ctl_response *resp, char *curl_err)
{
    char agent[64];
    CURLcode rc = CURLE_OK;

    snprintf(agent, sizeof(agent), "clusterctl/%s", kp_version());
#define SET(opt, val)                                                                              \
    if (rc == CURLE_OK)                                                                            \
    rc = curl_easy_setopt(curl, opt, val)
    SET(CURLOPT_URL, req->url);
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_FOLLOWLOCATION, 0L);
    SET(CURLOPT_PATH_AS_IS, 1L); /* kp_ctl__path already made every segment safe */
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_CONNECTTIMEOUT_MS, (long)CONNECT_TIMEOUT_MS);
    SET(CURLOPT_TIMEOUT_MS, (long)REQUEST_TIMEOUT_MS);
    SET(CURLOPT_USERAGENT, agent); /* copied by curl */
    SET(CURLOPT_HTTPHEADER, headers);
    SET(CURLOPT_WRITEFUNCTION, on_body);
    SET(CURLOPT_WRITEDATA, &resp->body);
    SET(CURLOPT_ERRORBUFFER, curl_err);
    if (ctl->cacert != NULL)
        SET(CURLOPT_CAINFO, ctl->cacert);
    if (ctl->cert != NULL) {
        SET(CURLOPT_SSLCERT, ctl->cert);
        SET(CURLOPT_SSLKEY, ctl->key);
    }
    if (req->body != NULL || strcmp(req->method, "POST") == 0) {
        /* Not copied by curl: @body outlives the transfer. */
        SET(CURLOPT_POSTFIELDS, req->body != NULL ? req->body : "");
        SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(req->body != NULL ? req->body_len : 0));
    }
    if (strcmp(req->method, "GET") != 0 && strcmp(req->method, "POST") != 0)
        SET(CURLOPT_CUSTOMREQUEST, req->method);
#undef SET
    return rc == CURLE_OK ? 0 : -1;
}

/* The request's header lines: Accept, Authorization: Bearer TOKEN (the
 * line holding the token is wiped before it is freed), Content-Type when
 * there is a body, and @extra. */
static struct curl_slist *request_headers(const struct kp_ctl *ctl, bool has_body,
                                          const char *const *extra)
{
    struct curl_slist *list = curl_slist_append(NULL, "Accept: application/json, text/plain");
    struct curl_slist *more;

    if (list != NULL && has_body) {
        if ((more = curl_slist_append(list, "Content-Type: application/json")) == NULL ||
            (more = curl_slist_append(list, "Expect:")) == NULL)
            goto err;
    }
    for (size_t i = 0; list != NULL && extra != NULL && extra[i] != NULL; i++) {
        if ((more = curl_slist_append(list, extra[i])) == NULL)
            goto err;
    }
    if (list == NULL || ctl->token == NULL)
        return list;
    size_t n = strlen("Authorization: Bearer ") + strlen(ctl->token) + 1;
    char *line = kp_malloc(n);
    if (line == NULL)
        goto err;
    snprintf(line, n, "Authorization: Bearer %s", ctl->token);
    more = curl_slist_append(list, line);
    memset(line, 0, n);
    kp_free(line);
    if (more == NULL)
        goto err;
    return list;

err:
    curl_slist_free_all(list);
    return NULL;
}

void kp_ctl__free_header_lines(struct curl_slist *list)
{
    for (struct curl_slist *l = list; l != NULL; l = l->next)
        memset(l->data, 0, strlen(l->data));
    curl_slist_free_all(list);
}

static void read_answer_headers(CURL *curl, struct kp_ctl_response *resp)
{
    struct curl_header *h;
    char *ctype = NULL;

    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &resp->status);
    if (curl_easy_getinfo(curl, CURLINFO_CONTENT_TYPE, &ctype) == CURLE_OK && ctype != NULL)
        snprintf(resp->content_type, sizeof(resp->content_type), "%s", ctype);
    if (curl_easy_header(curl, "ETag", 0, CURLH_HEADER, -1, &h) == CURLHE_OK)
        snprintf(resp->etag, sizeof(resp->etag), "%s", h->value);
    static const struct {
        const char *name;
        size_t off, len;
    } snap[] = {
#define SNAP_HEADER(n, f)                                                                          \
    {n, offsetof(struct kp_ctl_response, f), sizeof(((struct kp_ctl_response *)0)->f)}
        SNAP_HEADER("X-Keyplane-Snapshot-Sha256", snapshot_sha256),
        SNAP_HEADER("X-Keyplane-Snapshot-Index", snapshot_index),
        SNAP_HEADER("X-Keyplane-Cluster-Id", cluster_id),
        SNAP_HEADER("X-Keyplane-Kek-Id", kek_id),
#undef SNAP_HEADER
    };
    for (size_t i = 0; i < sizeof(snap) / sizeof(snap[0]); i++)
        if (curl_easy_header(curl, snap[i].name, 0, CURLH_HEADER, -1, &h) == CURLHE_OK)
            snprintf((char *)resp + snap[i].off, snap[i].len, "%s", h->value);
}

int kp_ctl__request(struct kp_ctl *ctl, const char *method, const char *path, const char *body,
                    size_t body_len, const char *const *headers, struct kp_ctl_response *resp)
{
    char curl_err[CURL_ERROR_SIZE] = "";
    struct curl_slist *list = NULL;
    struct request req = {NULL, method, body, body_len};
    char *url = NULL;
    CURL *curl;
    CURLcode rc;
    int ret = -1;

    memset(resp, 0, sizeof(*resp));
    resp->method = method;
    kp_buf_init(&resp->body);
    curl = easy_handle(ctl);
    list = request_headers(ctl, body != NULL, headers);
    size_t n = strlen(ctl->server) + strlen(path) + 1;
    url = kp_malloc(n);
    if (curl == NULL || list == NULL || url == NULL) {
        snprintf(ctl->errmsg, sizeof(ctl->errmsg), "out of memory");
        goto err_after_alloc;
    }
    snprintf(url, n, "%s%s", ctl->server, path);
    req.url = url;
    if (setup(ctl, curl, &req, list, resp, curl_err) != 0) {
        snprintf(ctl->errmsg, sizeof(ctl->errmsg), "cannot set up the request");
        goto err_after_alloc;
    }
    rc = curl_easy_perform(curl);
    if (rc != CURLE_OK) {
        snprintf(ctl->errmsg, sizeof(ctl->errmsg), "%s",
                 curl_err[0] ? curl_err : curl_easy_strerror(rc));
        goto err_after_alloc;
    }
    read_answer_headers(curl, resp);
    /* Callers treat the body as a C string. */
    if (kp_buf_append(&resp->body, "", 1) != 0) {
        snprintf(ctl->errmsg, sizeof(ctl->errmsg), "out of memory");
        goto err_after_alloc;
    }
    resp->body.len--;
    ret = 0;
    goto out;

err_after_alloc:
    kp_ctl__response_free(resp);
out:
    /* The handle keeps pointers to the header list, the error buffer, the
     * request body and the response body until the next reset; none of them
     * outlives this call. */
    if (curl != NULL)
        curl_easy_reset(curl);
    kp_ctl__free_header_lines(list);
    kp_free(url);
    return ret;
}

int kp_ctl__get(struct kp_ctl *ctl, const char *path, struct kp_ctl_response *resp)
{
    return kp_ctl__request(ctl, "GET", path, NULL, 0, NULL, resp);
}

int kp_ctl__call_raw(struct kp_ctl *ctl, const char *method, const char *path, const char *body,
                     size_t body_len, const char *const *headers, json_t **out)
{
    struct kp_ctl_response resp;
    int rc = KP_CTL_EXIT_OK;

    if (out != NULL)
        *out = NULL;
    if (kp_ctl__request(ctl, method, path, body, body_len, headers, &resp) != 0)
        return kp_ctl__unreachable(ctl);
    if (resp.status < 200 || resp.status > 299) {
        rc = kp_ctl__refused(ctl, path, &resp);
    } else if (out != NULL) {
        *out = resp.body.len > 0 ? kp_ctl__response_json(&resp) : json_null();
        if (*out == NULL) {
            kp_ctl__error(ctl, "%s %s%s: the answer (%ld) is not JSON", method, ctl->server, path,
                          resp.status);
            rc = KP_CTL_EXIT_NO;
        }
    }
    kp_ctl__response_free(&resp);
    return rc;
}

int kp_ctl__call(struct kp_ctl *ctl, const char *method, const char *path, const json_t *body,
                 const char *const *headers, json_t **out)
{
    size_t len = 0;
    char *text = NULL;
    int rc;

    if (body != NULL && (text = kp_json_dumps(body, &len)) == NULL) {
        if (out != NULL)
            *out = NULL;
        kp_ctl__error(ctl, "out of memory");
        return KP_CTL_EXIT_NO;
    }
    rc = kp_ctl__call_raw(ctl, method, path, text, len, headers, out);
    kp_free(text);
    return rc;
}

/* Percent-encodes @s onto @out. */
static int url_encode(struct kp_buf *out, const char *s, bool dots)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
        char esc[3] = {'%', hex[*p >> 4], hex[*p & 15]};
        bool plain = (*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
                     (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' || *p == '~' ||
                     (*p == '.' && !dots);
        if (plain ? kp_buf_append(out, p, 1) != 0 : kp_buf_append(out, esc, 3) != 0)
            return -1;
    }
    return 0;
}

/* "." and ".." would be removed or climb a level on the way. */
static bool only_dots(const char *s)
{
    return s[0] != '\0' && strspn(s, ".") == strlen(s);
}

char *kp_ctl__path(const char *segment, ...)
{
    struct kp_buf path;
    va_list ap;
    int rc;

    kp_buf_init(&path);
    rc = kp_buf_append_lit(&path, "/admin/v1");
    va_start(ap, segment);
    for (const char *s = segment; rc == 0 && s != NULL; s = va_arg(ap, const char *)) {
        rc = kp_buf_append_lit(&path, "/");
        if (rc == 0)
            rc = url_encode(&path, s, only_dots(s));
    }
    va_end(ap);
    if (rc != 0) {
        kp_buf_free(&path);
        return NULL;
    }
    return path.data;
}

int kp_ctl__query_add(struct kp_buf *path, const char *name, const char *value)
{
    bool first = path->data == NULL || strchr(path->data, '?') == NULL;
    if (kp_buf_append(path, first ? "?" : "&", 1) != 0 || url_encode(path, name, false) != 0 ||
        kp_buf_append_lit(path, "=") != 0)
        return -1;
    return url_encode(path, value, false);
}

void kp_ctl__if_match(char *buf, size_t len, uint64_t version)
{
    snprintf(buf, len, "If-Match: \"%llu\"", (unsigned long long)version);
}

void kp_ctl__response_free(struct kp_ctl_response *resp)
{
    if (resp->body.data != NULL)
        memset(resp->body.data, 0, resp->body.cap);
    kp_buf_free(&resp->body);
}

void kp_ctl__client_close(struct kp_ctl *ctl)
{
    if (ctl->curl != NULL)
        curl_easy_cleanup(ctl->curl);
    ctl->curl = NULL;
}

int kp_ctl__unreachable(struct kp_ctl *ctl)
{
    kp_ctl__error(ctl, "cannot reach keyplaned at %s (server from %s): %s", ctl->server,
                  ctl->server_source, ctl->errmsg);
    fprintf(stderr,
            "%s: check --server (or KEYPLANE_SERVER, or the current context: %s config "
            "get-contexts), or start keyplaned\n",
            ctl->prog, ctl->prog);
    return KP_CTL_EXIT_UNREACHABLE;
}

json_t *kp_ctl__response_json(const struct kp_ctl_response *resp)
{
    if (resp->body.len == 0)
        return NULL;
    return json_loadb(resp->body.data, resp->body.len, 0, NULL);
}

static void first_line(const char *s, size_t n, char *out, size_t len)
{
    size_t i = 0;
    while (i < n && s[i] != '\n' && s[i] != '\r' && i + 1 < len) {
        out[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
        i++;
    }
    out[i] = '\0';
}

void kp_ctl__describe_body(const struct kp_ctl_response *resp, char *out, size_t len)
{
    json_t *v = kp_ctl__response_json(resp);
    const char *s = NULL;

    out[0] = '\0';
    if (json_is_object(v)) {
        json_t *err = json_object_get(v, "error");
        if (json_is_object(err))
            s = json_string_value(json_object_get(err, "message"));
        else if (json_is_string(err))
            s = json_string_value(err);
        if (s == NULL)
            s = json_string_value(json_object_get(v, "reason"));
        if (s == NULL)
            s = json_string_value(json_object_get(v, "status"));
    }
    if (s != NULL)
        first_line(s, strlen(s), out, len);
    else if (v == NULL && resp->body.len > 0)
        first_line(resp->body.data, resp->body.len, out, len);
    json_decref(v);
}

/* Percent-decodes one path segment of @p (up to '/', '?' or the end) into
 * @out; returns where it stopped. */
static const char *decode_segment(const char *p, char *out, size_t len)
{
    size_t n = 0;
    for (; *p != '\0' && *p != '/' && *p != '?'; p++) {
        char c = *p;
        if (c == '%' && kp_hex_value(p[1]) >= 0 && kp_hex_value(p[2]) >= 0) {
            c = (char)(kp_hex_value(p[1]) * 16 + kp_hex_value(p[2]));
            p += 2;
        }
        if (n + 1 < len)
            out[n++] = ((unsigned char)c < 0x20 || c == 0x7f) ? '?' : c;
    }
    out[n] = '\0';
    return p;
}

/* "clusterctl get pools main" for a request about /admin/v1/pools/main (or
 * one of its actions), so that the advice names the command to run. */
static void reread_command(const char *path, char *out, size_t len)
{
    char kind[64], id[256];
    const char *p = path;
    const char *quote;

    snprintf(out, len, "clusterctl get KIND ID");
    if (strncmp(p, "/admin/v1/", 10) != 0)
        return;
    p = decode_segment(p + 10, kind, sizeof(kind));
    if (*p != '/' || kp_ctl__kind_find(kind) == NULL)
        return;
    decode_segment(p + 1, id, sizeof(id));
    if (id[0] == '\0')
        return;
    /* Quoted for the shell unless it is made of id characters only. */
    quote = strspn(id, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:/-") !=
                        strlen(id) &&
                    strchr(id, '\'') == NULL
                ? "'"
                : "";
    snprintf(out, len, "clusterctl get %s %s%s%s", kind, quote, id, quote);
}

/* What to do about a refusal, by status; "" when there is nothing useful to
 * add. */
static void next_step(const struct kp_ctl *ctl, const char *path, long status, const char *code,
                      char *out, size_t len)
{
    char reread[400];

    reread_command(path, reread, sizeof(reread));
    switch (status) {
    case 400:
        snprintf(out, len, "fix the field named above and run the command again");
        break;
    case 401:
        snprintf(out, len, "%s",
                 ctl->token != NULL
                     ? "the token was refused (unknown, disabled, expired or mistyped): check "
                       "--token, KEYPLANE_TOKEN or the context's token (clusterctl config "
                       "set-context NAME --token-file FILE)"
                     : "no token was sent: pass one with KEYPLANE_TOKEN (or --token), or set one "
                       "in the context (clusterctl config set-context NAME --token-file FILE)");
        break;
    case 403:
        snprintf(out, len,
                 "the token's role lacks the permission named above: use a token whose "
                 "role has it (clusterctl whoami shows this token's role and "
                 "permissions)");
        break;
    case 404:
        snprintf(out, len,
                 "nothing by that name: check the id (clusterctl get KIND lists what "
                 "exists)");
        break;
    case 409:
        snprintf(out, len,
                 "it changed meanwhile, is still in use, already exists, or is revoked: re-read "
                 "it (%s) and retry",
                 reread);
        break;
    case 413:
        snprintf(out, len, "the request is too large for the server");
        break;
    case 503:
        if (strcmp(code, "leadership_changed") == 0 || strcmp(code, "not_committed") == 0)
            snprintf(out, len,
                     "the leader changed while this write was in flight, so it may still have "
                     "been applied: check (%s) before you retry",
                     reread);
        else
            snprintf(out, len,
                     "no leader right now (an election is running, or this node lost "
                     "quorum): retry in a few seconds; clusterctl cluster shows the "
                     "members");
        break;
    default:
        snprintf(out, len, "%s", status >= 500 ? "the server failed: its log says why" : "");
    }
}

int kp_ctl__refused(struct kp_ctl *ctl, const char *path, const struct kp_ctl_response *resp)
{
    char why[400], next[640];
    json_t *body = kp_ctl__response_json(resp);
    const char *code = json_string_value(json_object_get(json_object_get(body, "error"), "code"));

    next_step(ctl, path, resp->status, code != NULL ? code : "", next, sizeof(next));
    json_decref(body);
    kp_ctl__describe_body(resp, why, sizeof(why));
    kp_ctl__error(ctl, "%s %s%s: %ld %s%s%s", resp->method ? resp->method : "GET", ctl->server,
                  path, resp->status, kp_http_reason((int)resp->status), why[0] ? ": " : "", why);
    if (next[0] != '\0')
        fprintf(stderr, "%s: %s\n", ctl->prog, next);
    return KP_CTL_EXIT_NO;
}

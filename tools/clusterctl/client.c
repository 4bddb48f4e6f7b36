/* HTTP to a keyplaned control port with libcurl's easy interface.
 *
 * One easy handle per run, so the requests of one command share a
 * keep-alive connection. A request either gets an answer, whatever its
 * status, or fails to reach the server (refused, unresolvable, timed out,
 * TLS); only the second is an error here, and it becomes exit code 3 with a
 * message that names the URL and where it came from. Redirects are not
 * followed: a control port never redirects, and following one could carry
 * the token elsewhere. */
#include <curl/curl.h>
#include <stdio.h>
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

static int setup(CURL *curl, const char *url, struct curl_slist *headers,
                 struct kp_ctl_response *resp, char *curl_err)
{
    char agent[64];
    CURLcode rc = CURLE_OK;

    snprintf(agent, sizeof(agent), "clusterctl/%s", kp_version());
#define SET(opt, val)                                                                              \
    if (rc == CURLE_OK)                                                                            \
    rc = curl_easy_setopt(curl, opt, val)
    SET(CURLOPT_URL, url);
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_FOLLOWLOCATION, 0L);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_CONNECTTIMEOUT_MS, (long)CONNECT_TIMEOUT_MS);
    SET(CURLOPT_TIMEOUT_MS, (long)REQUEST_TIMEOUT_MS);
    SET(CURLOPT_USERAGENT, agent); /* copied by curl */
    SET(CURLOPT_HTTPHEADER, headers);
    SET(CURLOPT_WRITEFUNCTION, on_body);
    SET(CURLOPT_WRITEDATA, &resp->body);
    SET(CURLOPT_ERRORBUFFER, curl_err);
#undef SET
    return rc == CURLE_OK ? 0 : -1;
}

/* Adds "Authorization: Bearer TOKEN". The header line holds the token, so
 * it is wiped before it is freed. */
static struct curl_slist *auth_headers(const struct kp_ctl *ctl)
{
    struct curl_slist *list = curl_slist_append(NULL, "Accept: application/json, text/plain");
    if (list == NULL || ctl->token == NULL)
        return list;
    size_t n = strlen("Authorization: Bearer ") + strlen(ctl->token) + 1;
    char *line = kp_malloc(n);
    if (line == NULL) {
        curl_slist_free_all(list);
        return NULL;
    }
    snprintf(line, n, "Authorization: Bearer %s", ctl->token);
    struct curl_slist *more = curl_slist_append(list, line);
    memset(line, 0, n);
    kp_free(line);
    if (more == NULL) {
        curl_slist_free_all(list);
        return NULL;
    }
    return more;
}

static void free_headers(struct curl_slist *list)
{
    for (struct curl_slist *l = list; l != NULL; l = l->next)
        memset(l->data, 0, strlen(l->data));
    curl_slist_free_all(list);
}

int kp_ctl__get(struct kp_ctl *ctl, const char *path, struct kp_ctl_response *resp)
{
    char curl_err[CURL_ERROR_SIZE] = "";
    struct curl_slist *headers = NULL;
    char *url = NULL;
    char *ctype = NULL;
    CURL *curl;
    CURLcode rc;
    int ret = -1;

    memset(resp, 0, sizeof(*resp));
    kp_buf_init(&resp->body);
    curl = easy_handle(ctl);
    headers = auth_headers(ctl);
    size_t n = strlen(ctl->server) + strlen(path) + 1;
    url = kp_malloc(n);
    if (curl == NULL || headers == NULL || url == NULL) {
        snprintf(ctl->errmsg, sizeof(ctl->errmsg), "out of memory");
        goto err_after_alloc;
    }
    snprintf(url, n, "%s%s", ctl->server, path);
    if (setup(curl, url, headers, resp, curl_err) != 0) {
        snprintf(ctl->errmsg, sizeof(ctl->errmsg), "cannot set up the request");
        goto err_after_alloc;
    }
    rc = curl_easy_perform(curl);
    if (rc != CURLE_OK) {
        snprintf(ctl->errmsg, sizeof(ctl->errmsg), "%s",
                 curl_err[0] ? curl_err : curl_easy_strerror(rc));
        goto err_after_alloc;
    }
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &resp->status);
    if (curl_easy_getinfo(curl, CURLINFO_CONTENT_TYPE, &ctype) == CURLE_OK && ctype != NULL)
        snprintf(resp->content_type, sizeof(resp->content_type), "%s", ctype);
    /* Callers treat the body as a C string. */
    if (kp_buf_append(&resp->body, "", 1) != 0) {
        snprintf(ctl->errmsg, sizeof(ctl->errmsg), "out of memory");
        goto err_after_alloc;
    }
    resp->body.len--;
    ret = 0;
    goto out;

err_after_alloc:
    kp_buf_free(&resp->body);
out:
    /* The handle keeps pointers to the header list, the error buffer and the
     * body until the next reset; none of them outlives this call. */
    if (curl != NULL)
        curl_easy_reset(curl);
    free_headers(headers);
    kp_free(url);
    return ret;
}

void kp_ctl__response_free(struct kp_ctl_response *resp)
{
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

int kp_ctl__refused(struct kp_ctl *ctl, const char *path, const struct kp_ctl_response *resp)
{
    char why[200];
    kp_ctl__describe_body(resp, why, sizeof(why));
    kp_ctl__error(ctl, "GET %s%s: %ld %s%s%s", ctl->server, path, resp->status,
                  kp_http_reason((int)resp->status), why[0] ? ": " : "", why);
    if (resp->status == 401 || resp->status == 403)
        fprintf(stderr,
                "%s: %s; pass an admin token with --token or KEYPLANE_TOKEN, or set one "
                "in the context (%s config set-context)\n",
                ctl->prog, ctl->token ? "the token was refused" : "no token was sent", ctl->prog);
    return KP_CTL_EXIT_NO;
}

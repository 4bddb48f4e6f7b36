/* The web console's files under /ui/ on the control listener
 * (docs/console.md). They are compiled into keyplaned (ui_assets.c, made
 * from node/ui/ by node/ui/embed.cmake at build time), so a node serves the
 * console it was built with and fetches nothing at run time.
 *
 * Every answer carries a Content-Security-Policy that allows scripts,
 * styles and fetches from this origin only (no inline script or style), may
 * not be framed, and is revalidated by ETag (the files' names carry no
 * version). What the pages show comes from /admin/v1/, signed in with a
 * session cookie (admin_session.c). */
#include <stdio.h>
#include <string.h>

#include "node.h"
#include "ui_assets.h"

static const char csp[] = "default-src 'none'; script-src 'self'; style-src 'self'; "
                          "img-src 'self' data:; connect-src 'self'; font-src 'self'; "
                          "base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

static const struct kp_ui_asset *find_asset(const char *path)
{
    const char *name = strcmp(path, "/ui/") == 0 ? "index.html" : path + strlen("/ui/");
    for (size_t i = 0; i < kp_ui_n_assets; i++) {
        if (strcmp(kp_ui_assets[i].name, name) == 0)
            return &kp_ui_assets[i];
    }
    return NULL;
}

void kp_console_handle(struct kp_http_exchange *ex, const struct kp_http_request *req,
                       const char *rid)
{
    kp_http_set_route(ex, "/ui/*");
    if (strcmp(req->method, "GET") != 0 && strcmp(req->method, "HEAD") != 0) {
        kp_node_error(ex, 405, rid, "invalid_request_error", "method_not_allowed",
                      "the console's files are read with GET; its changes go to /admin/v1/");
        return;
    }
    if (strcmp(req->path, "/ui") == 0) {
        struct kp_http_header h[2] = {KP_HTTP_HEADER("Location", "/ui/"),
                                      KP_HTTP_HEADER("X-Request-Id", rid)};
        kp_http_respond(ex, 308, h, 2, NULL, 0);
        return;
    }
    const struct kp_ui_asset *a = find_asset(req->path);
    if (a == NULL) {
        kp_node_error(ex, 404, rid, "invalid_request_error", "not_found",
                      "no such console file; open /ui/");
        return;
    }
    char etag[40];
    snprintf(etag, sizeof(etag), "\"%s\"", a->etag);
    struct kp_http_header h[] = {
        KP_HTTP_HEADER("Content-Type", a->type),
        KP_HTTP_HEADER("ETag", etag),
        KP_HTTP_HEADER("Cache-Control", "no-cache"),
        KP_HTTP_HEADER("Content-Security-Policy", csp),
        KP_HTTP_HEADER("X-Content-Type-Options", "nosniff"),
        KP_HTTP_HEADER("X-Frame-Options", "DENY"),
        KP_HTTP_HEADER("Referrer-Policy", "no-referrer"),
        KP_HTTP_HEADER("Cross-Origin-Opener-Policy", "same-origin"),
        KP_HTTP_HEADER("X-Request-Id", rid),
    };
    const char *inm = kp_http_request_header(req, "if-none-match");
    if (inm != NULL && strstr(inm, etag) != NULL) {
        kp_http_respond(ex, 304, h + 1, sizeof(h) / sizeof(h[0]) - 1, NULL, 0);
        return;
    }
    kp_http_respond(ex, 200, h, sizeof(h) / sizeof(h[0]), (const char *)a->data, a->len);
}

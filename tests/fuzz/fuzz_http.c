/* libFuzzer driver for the HTTP request path: every input is sent as the
 * bytes of one client connection to a real kp_http_server on loopback, and
 * the server's answer is read until it closes or goes quiet. Crashes, leaks,
 * sanitizer reports and hangs (the loop must finish every connection) are
 * what the fuzzer looks for. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/core.h"

static uv_loop_t loop;
static struct kp_http_server *srv;
static int port;

static void on_request(struct kp_http_exchange *ex, const struct kp_http_request *req, void *arg)
{
    (void)arg;
    if (strcmp(req->path, "/stream") == 0) {
        kp_http_stream_begin(ex, 200, NULL, 0);
        kp_http_stream_write(ex, req->body, req->body_len);
        kp_http_stream_write(ex, "data: x\n\n", 9);
        kp_http_stream_end(ex);
        return;
    }
    if (strcmp(req->path, "/reset") == 0) {
        kp_http_reset(ex);
        return;
    }
    char msg[64];
    int n = snprintf(msg, sizeof(msg), "%s %zu %u", req->method, req->body_len, req->n_headers);
    kp_http_respond(ex, 200, NULL, 0, msg, (size_t)n);
}

static void setup(void)
{
    char err[256];
    uv_loop_init(&loop);
    struct kp_http_server_config cfg = {.name = "fuzz", .handler = on_request};
    kp_http_limits_default(&cfg.limits);
    cfg.limits.max_body_bytes = 1024;
    cfg.limits.max_header_bytes = 1024;
    cfg.limits.max_headers = 16;
    /* Short timeouts: an input that leaves a request half-sent must end. */
    cfg.limits.header_timeout_ms = 20;
    cfg.limits.body_timeout_ms = 20;
    cfg.limits.idle_timeout_ms = 20;
    if (kp_http_server_start(&srv, &loop, &cfg, "127.0.0.1:0", &port, err, sizeof(err)) != 0) {
        fprintf(stderr, "fuzz_http: %s\n", err);
        abort();
    }
    kp_log_set_level(KP_LOG_OFF);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (srv == NULL)
        setup();
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 && errno != EINPROGRESS)
        abort();
    size_t sent = 0;
    bool eof = false;
    char buf[65536];
    /* Drive the server until it has answered everything and closed. */
    for (int spins = 0; spins < 100000 && !eof; spins++) {
        if (sent < size) {
            ssize_t k = send(fd, data + sent, size - sent, MSG_NOSIGNAL);
            if (k > 0)
                sent += (size_t)k;
            if (sent == size)
                shutdown(fd, SHUT_WR);
        } else if (size == 0 && spins == 0) {
            shutdown(fd, SHUT_WR);
        }
        uv_run(&loop, UV_RUN_NOWAIT);
        ssize_t r = recv(fd, buf, sizeof(buf), 0);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK))
            eof = true;
        if (!eof && r < 0)
            uv_run(&loop, UV_RUN_ONCE);
    }
    close(fd);
    /* Let the server see the close and free the connection. */
    while (kp_http_server_connections(srv) > 0)
        uv_run(&loop, UV_RUN_ONCE);
    return 0;
}

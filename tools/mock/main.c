/* keyplane-mock: a mock OpenAI / Anthropic / Gemini upstream for tests and
 * benchmarks.
 *
 *   keyplane-mock [--listen ADDR] [--workers N] [--log-level L]
 *                 [--write-watermark BYTES] [--help] [--version]
 *
 * It starts N workers on the same address (SO_REUSEPORT), prints
 * "keyplane-mock listening on http://HOST:PORT" to stdout once every worker is
 * bound (the real port when ADDR asks for port 0), and serves until SIGTERM or
 * SIGINT, when it closes every connection and exits 0. A bad flag or an
 * address it cannot bind exits 2 or 1 with a message on stderr. Should a
 * worker not stop within STOP_GRACE_MS, it exits 0 anyway, saying so: a test
 * harness must never hang on the mock. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "serve.h"

#define DEFAULT_LISTEN "127.0.0.1:7700"
#define MAX_WORKERS    256
#define STOP_GRACE_MS  5000

struct options {
    const char *listen;
    unsigned workers;
    size_t write_watermark; /* 0: the server's default */
};

struct supervisor {
    uv_loop_t *loop;
    uv_signal_t sigterm, sigint;
    uv_async_t worker_exited;
    uv_timer_t grace;
    atomic_uint n_exited;
    struct kp_mock_worker *workers;
    unsigned n_workers;
    bool stopping;
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: keyplane-mock [--listen ADDR] [--workers N] [--log-level L]\n"
            "                     [--write-watermark BYTES] [--help] [--version]\n"
            "\n"
            "A mock OpenAI / Anthropic / Gemini upstream with fault injection.\n"
            "  --listen ADDR     host:port, [v6]:port or :port (default %s; port 0 picks one)\n"
            "  --workers N       worker threads, each with its own loop (default 1, max %d)\n"
            "  --log-level L     debug, info, warn, error or off (default info)\n"
            "  --write-watermark BYTES  queued bytes above which a stream waits for the\n"
            "                    client (default 256 KiB; tests make it tiny)\n"
            "Routes, fault specs (X-Mock-Fault, POST /mock/faults) and /mock/stats are\n"
            "described in tools/mock/README.md.\n",
            DEFAULT_LISTEN, MAX_WORKERS);
}

/* The value of "--name VALUE" or "--name=VALUE"; NULL when @arg is another flag. */
static const char *flag_value(int argc, char **argv, int *i, const char *name)
{
    size_t n = strlen(name);

    if (strncmp(argv[*i], name, n) != 0)
        return NULL;
    if (argv[*i][n] == '=')
        return argv[*i] + n + 1;
    if (argv[*i][n] != '\0')
        return NULL;
    if (*i + 1 >= argc) {
        fprintf(stderr, "keyplane-mock: %s needs a value\n", name);
        exit(2);
    }
    return argv[++*i];
}

static void parse_workers(const char *v, struct options *o)
{
    char *end;
    long n = strtol(v, &end, 10);

    if (*v == '\0' || *end != '\0' || n < 1 || n > MAX_WORKERS) {
        fprintf(stderr, "keyplane-mock: --workers wants a number from 1 to %d, not '%s'\n",
                MAX_WORKERS, v);
        exit(2);
    }
    o->workers = (unsigned)n;
}

static void parse_watermark(const char *v, struct options *o)
{
    char *end;
    long n = strtol(v, &end, 10);

    if (*v == '\0' || *end != '\0' || n < 1 || n > (1L << 30)) {
        fprintf(stderr,
                "keyplane-mock: --write-watermark wants a byte count from 1 to 2^30, "
                "not '%s'\n",
                v);
        exit(2);
    }
    o->write_watermark = (size_t)n;
}

static void parse_options(int argc, char **argv, struct options *o)
{
    const char *v;

    o->listen = DEFAULT_LISTEN;
    o->workers = 1;
    o->write_watermark = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            exit(0);
        } else if (strcmp(argv[i], "--version") == 0) {
            printf("keyplane-mock %s (%s)\n", kp_version(), kp_build_commit());
            exit(0);
        } else if ((v = flag_value(argc, argv, &i, "--listen")) != NULL) {
            o->listen = v;
        } else if ((v = flag_value(argc, argv, &i, "--workers")) != NULL) {
            parse_workers(v, o);
        } else if ((v = flag_value(argc, argv, &i, "--write-watermark")) != NULL) {
            parse_watermark(v, o);
        } else if ((v = flag_value(argc, argv, &i, "--log-level")) != NULL) {
            if (kp_log_parse_level(v) < 0) {
                fprintf(stderr, "keyplane-mock: unknown log level '%s'\n", v);
                exit(2);
            }
            kp_log_set_level(kp_log_parse_level(v));
        } else {
            fprintf(stderr, "keyplane-mock: unknown argument '%s' (try --help)\n", argv[i]);
            exit(2);
        }
    }
}

/* "HOST" of a parsed address, IPv6 in brackets. */
static int host_of(const char *addr, char *host, size_t len)
{
    struct sockaddr_storage ss;
    char errmsg[256], ip[64];

    if (kp_http_parse_addr(addr, &ss, errmsg, sizeof(errmsg)) != 0) {
        fprintf(stderr, "keyplane-mock: --listen %s: %s\n", addr, errmsg);
        return -1;
    }
    if (ss.ss_family == AF_INET6) {
        uv_ip6_name((const struct sockaddr_in6 *)&ss, ip, sizeof(ip));
        snprintf(host, len, "[%s]", ip);
    } else {
        uv_ip4_name((const struct sockaddr_in *)&ss, ip, sizeof(ip));
        snprintf(host, len, "%s", ip);
    }
    return 0;
}

static void worker_exited(void *arg)
{
    struct supervisor *s = arg;

    atomic_fetch_add(&s->n_exited, 1);
    uv_async_send(&s->worker_exited);
}

static void close_supervisor(struct supervisor *s)
{
    uv_close((uv_handle_t *)&s->sigterm, NULL);
    uv_close((uv_handle_t *)&s->sigint, NULL);
    uv_close((uv_handle_t *)&s->worker_exited, NULL);
    uv_close((uv_handle_t *)&s->grace, NULL);
}

static void on_worker_exited(uv_async_t *h)
{
    struct supervisor *s = h->data;

    if (atomic_load(&s->n_exited) == s->n_workers && !uv_is_closing((uv_handle_t *)&s->grace))
        close_supervisor(s);
}

static void on_grace_over(uv_timer_t *t)
{
    (void)t;
    kp_error("mock", "workers did not stop within %d ms -> exit now", STOP_GRACE_MS);
    fflush(stderr);
    _exit(0);
}

static void on_signal(uv_signal_t *h, int signum)
{
    struct supervisor *s = h->data;

    if (s->stopping) {
        kp_warn("mock", "second signal %d -> exit now", signum);
        _exit(0);
    }
    s->stopping = true;
    kp_info("mock", "signal %d -> stopping %u workers", signum, s->n_workers);
    for (unsigned i = 0; i < s->n_workers; i++)
        kp_mock_worker_stop(&s->workers[i]);
    uv_timer_start(&s->grace, on_grace_over, STOP_GRACE_MS, 0);
}

static void supervisor_init(struct supervisor *s, struct kp_mock_worker *workers, unsigned n)
{
    memset(s, 0, sizeof(*s));
    s->loop = uv_default_loop();
    s->workers = workers;
    s->n_workers = n;
    atomic_init(&s->n_exited, 0);
    uv_signal_init(s->loop, &s->sigterm);
    uv_signal_init(s->loop, &s->sigint);
    uv_async_init(s->loop, &s->worker_exited, on_worker_exited);
    uv_timer_init(s->loop, &s->grace);
    s->sigterm.data = s->sigint.data = s->worker_exited.data = s;
    uv_signal_start(&s->sigterm, on_signal, SIGTERM);
    uv_signal_start(&s->sigint, on_signal, SIGINT);
}

/* Start the workers one by one: the first binds (maybe port 0), the others
 * join it on the port it got. Returns how many started. */
static unsigned start_workers(struct kp_mock *mock, struct kp_mock_worker *workers,
                              const struct options *o, const char *host, int *port)
{
    char addr[128];

    for (unsigned i = 0; i < o->workers; i++) {
        if (i > 0)
            snprintf(addr, sizeof(addr), "%s:%d", host, *port);
        if (kp_mock_worker_init(&workers[i], mock, i, i == 0 ? o->listen : addr, o->write_watermark,
                                port) != 0) {
            fprintf(stderr, "keyplane-mock: listen on %s: %s\n", i == 0 ? o->listen : addr,
                    workers[i].errmsg);
            return i;
        }
    }
    return o->workers;
}

static int serve(struct kp_mock *mock, const struct options *o, const char *host)
{
    struct kp_mock_worker *workers = kp_calloc(o->workers, sizeof(*workers));
    struct supervisor sup;
    unsigned started;
    int port = 0, rv = 1;

    if (workers == NULL) {
        fprintf(stderr, "keyplane-mock: out of memory\n");
        return 1;
    }
    started = start_workers(mock, workers, o, host, &port);
    if (started < o->workers)
        goto out;
    supervisor_init(&sup, workers, o->workers);
    for (unsigned i = 0; i < o->workers; i++) {
        workers[i].on_exit = worker_exited;
        workers[i].exit_arg = &sup;
        if (kp_mock_worker_run(&workers[i]) != 0) {
            fprintf(stderr, "keyplane-mock: %s\n", workers[i].errmsg);
            _exit(1);
        }
    }
    printf("keyplane-mock listening on http://%s:%d\n", host, port);
    fflush(stdout);
    kp_info("mock", "listening on http://%s:%d with %u workers", host, port, o->workers);
    uv_run(sup.loop, UV_RUN_DEFAULT);
    uv_loop_close(sup.loop);
    rv = sup.stopping ? 0 : 1;
out:
    for (unsigned i = 0; i < started; i++)
        kp_mock_worker_close(&workers[i]);
    kp_free(workers);
    return rv;
}

int main(int argc, char **argv)
{
    struct kp_mock mock;
    struct options o;
    char host[80];
    int rv;

    kp_log_init_from_env();
    parse_options(argc, argv, &o);
    signal(SIGPIPE, SIG_IGN);
    if (host_of(o.listen, host, sizeof(host)) != 0)
        return 2;
    if (kp_mock_init(&mock, o.workers) != 0) {
        fprintf(stderr, "keyplane-mock: out of memory\n");
        return 1;
    }
    rv = serve(&mock, &o, host);
    kp_mock_close(&mock);
    if (rv == 0)
        kp_info("mock", "stopped");
    return rv;
}

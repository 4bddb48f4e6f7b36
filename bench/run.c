/* A run: resolve the target, start the generator threads, line them up,
 * print progress while they work, and merge their figures.
 *
 * The threads first open their connections and wait at a barrier; only then
 * does this thread fix the start time, so that connecting is never part of
 * the measurement and all threads share one schedule. A thread that could
 * not connect aborts the run for all, and its message ("cannot connect to
 * 127.0.0.1:7600: connection refused") becomes the run's error. */
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"
#include "worker.h"

#define START_MARGIN_NS 2000000ull /* lets every thread wake before request 0 */
#define POLL_MS         20

static atomic_bool interrupt_requested;

void kp_bench_interrupt(void)
{
    atomic_store(&interrupt_requested, true);
}

/* https: one client context for every thread (connections take their own
 * SSL objects from it): TLS 1.2 or later, ALPN http/1.1, the server
 * verified against --cacert or the system's CAs. */
static int tls_context(const struct kp_bench_config *cfg, SSL_CTX **out, char *errmsg,
                       size_t errlen)
{
    static const unsigned char alpn[] = "\x08http/1.1";
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        snprintf(errmsg, errlen, "out of memory");
        return KP_ENOMEM;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_alpn_protos(ctx, alpn, sizeof(alpn) - 1);
    int ok = cfg->cacert != NULL ? SSL_CTX_load_verify_locations(ctx, cfg->cacert, NULL)
                                 : SSL_CTX_set_default_verify_paths(ctx);
    if (ok != 1) {
        char why[256];
        ERR_error_string_n(ERR_get_error(), why, sizeof(why));
        ERR_clear_error();
        snprintf(errmsg, errlen, "--cacert '%s': no PEM CA certificate in it (%s)",
                 cfg->cacert ? cfg->cacert : "(system)", why);
        SSL_CTX_free(ctx);
        return KP_EINVAL;
    }
    *out = ctx;
    return KP_OK;
}

static int resolve(const struct kp_bench_url *url, struct sockaddr_storage *out, char *errmsg,
                   size_t errlen)
{
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    int rv = getaddrinfo(url->host, url->port_text, &hints, &res);
    if (rv != 0 || res == NULL) {
        snprintf(errmsg, errlen, "cannot resolve host '%s': %s", url->host, gai_strerror(rv));
        return KP_EADDR;
    }
    memcpy(out, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    return KP_OK;
}

static unsigned share(uint64_t total, unsigned parts, unsigned i)
{
    return (unsigned)(total / parts + (i < total % parts ? 1 : 0));
}

static int workers_create(struct kp_bench_shared *sh, struct kp_bench_worker **out)
{
    const struct kp_bench_config *cfg = sh->cfg;
    struct kp_bench_worker *w = kp_calloc(sh->threads, sizeof(*w));
    if (w == NULL)
        return KP_ENOMEM;
    for (unsigned i = 0; i < sh->threads; i++) {
        w[i].shared = sh;
        w[i].index = i;
        w[i].n_conns = share(cfg->connections, sh->threads, i);
        if (cfg->mode == KP_BENCH_CLOSED_LOOP && cfg->requests)
            w[i].request_limit = share(cfg->requests, sh->threads, i);
        if (kp_bench_stats_init(&w[i].stats) != KP_OK) {
            for (unsigned j = 0; j < i; j++)
                kp_bench_stats_close(&w[j].stats);
            kp_free(w);
            return KP_ENOMEM;
        }
    }
    *out = w;
    return KP_OK;
}

/* Between the barriers: when the schedule starts, where the warm-up ends,
 * and when the measured window closes. */
static void set_times(struct kp_bench_shared *sh)
{
    const struct kp_bench_config *cfg = sh->cfg;
    uint64_t now = uv_hrtime();
    uint64_t warmup_ns = (uint64_t)(cfg->warmup_s * 1e9);
    if (cfg->mode == KP_BENCH_OPEN_LOOP) {
        struct kp_bench_sched whole;
        sh->start_ns = now + START_MARGIN_NS;
        sh->warmup_requests = kp_bench_sched_count_before(cfg->rate, warmup_ns);
        kp_bench_sched_init(&whole, cfg->rate, sh->start_ns, 1, 0, KP_BENCH_NEVER, KP_BENCH_NEVER);
        sh->measure_ns = kp_bench_sched_time(&whole, sh->warmup_requests);
    } else {
        sh->start_ns = now;
        sh->measure_ns = now + warmup_ns;
    }
    sh->stop_ns =
        cfg->duration_s > 0 ? sh->measure_ns + (uint64_t)(cfg->duration_s * 1e9) : KP_BENCH_NEVER;
}

struct progress {
    uint64_t last_ns;
    uint64_t last_done;
    bool tty;
    bool printed;
};

static void progress_print(struct progress *p, const struct kp_bench_shared *sh,
                           struct kp_bench_worker *w, uint64_t now)
{
    uint64_t done = 0, warm = 0, errors = 0;
    for (unsigned i = 0; i < sh->threads; i++) {
        done += atomic_load_explicit(&w[i].progress_done, memory_order_relaxed);
        warm += atomic_load_explicit(&w[i].progress_warmup, memory_order_relaxed);
        errors += atomic_load_explicit(&w[i].progress_errors, memory_order_relaxed);
    }
    double dt = (double)(now - p->last_ns) / 1e9;
    double rate = dt > 0 ? (double)(done - p->last_done) / dt : 0;
    if (now < sh->measure_ns)
        fprintf(stderr, "%s[warm-up %5.1fs] %llu answers", p->tty ? "\r\033[K" : "",
                (double)(now - sh->start_ns) / 1e9, (unsigned long long)warm);
    else
        fprintf(stderr, "%s[%6.1fs] %llu answers, %.0f req/s, %llu errors",
                p->tty ? "\r\033[K" : "", (double)(now - sh->measure_ns) / 1e9,
                (unsigned long long)done, rate, (unsigned long long)errors);
    fputs(p->tty ? "" : "\n", stderr);
    fflush(stderr);
    p->last_ns = now;
    p->last_done = done;
    p->printed = true;
}

/* Waits for every thread, passing on an interrupt and printing progress. */
static void watch(struct kp_bench_shared *sh, struct kp_bench_worker *w)
{
    const struct kp_bench_config *cfg = sh->cfg;
    bool show = !cfg->quiet && cfg->progress_s > 0;
    uint64_t every_ns = (uint64_t)(cfg->progress_s * 1e9);
    struct progress p = {uv_hrtime(), 0, isatty(STDERR_FILENO) == 1, false};
    for (;;) {
        unsigned finished = 0;
        for (unsigned i = 0; i < sh->threads; i++)
            finished += atomic_load(&w[i].finished) ? 1 : 0;
        if (finished == sh->threads)
            break;
        if (atomic_load(&interrupt_requested))
            atomic_store(&sh->abort, true);
        uv_sleep(POLL_MS);
        uint64_t now = uv_hrtime();
        if (show && now - p.last_ns >= every_ns)
            progress_print(&p, sh, w, now);
    }
    if (p.printed && p.tty)
        fputs("\n", stderr);
}

static int collect(struct kp_bench_shared *sh, struct kp_bench_worker *w,
                   struct kp_bench_result *res)
{
    int rv = KP_OK;
    for (unsigned i = 0; i < sh->threads; i++) {
        rv |= kp_bench_stats_merge(&res->stats, &w[i].stats);
        res->interrupted |= w[i].interrupted;
    }
    /* The window ends with the last answer, or, in a timed run, no earlier
     * than the end of the duration: a target that died halfway must not
     * look fast because its few answers came early. */
    uint64_t end = res->stats.last_done_ns;
    uint64_t now = uv_hrtime();
    uint64_t timed_end = sh->stop_ns < now ? sh->stop_ns : now;
    if (sh->stop_ns != KP_BENCH_NEVER && timed_end > end)
        end = timed_end;
    if (end > sh->measure_ns)
        res->elapsed_s = (double)(end - sh->measure_ns) / 1e9;
    if (res->elapsed_s > 0)
        res->throughput = (double)res->stats.completed / res->elapsed_s;
    return rv;
}

static int start_threads(struct kp_bench_shared *sh, struct kp_bench_worker *w, char *errmsg,
                         size_t errlen)
{
    for (unsigned i = 0; i < sh->threads; i++) {
        if (uv_thread_create(&w[i].thread, kp_bench__worker_main, &w[i]) != 0) {
            /* Threads already started wait at the barriers sized for all of
             * them; nothing can release them, so this cannot be undone. */
            snprintf(errmsg, errlen, "cannot start generator thread %u", i);
            return KP_ENOMEM;
        }
    }
    return KP_OK;
}

int kp_bench_run(const struct kp_bench_config *cfg, struct kp_bench_result *res, char *errmsg,
                 size_t errlen)
{
    struct kp_bench_shared sh;
    struct kp_bench_worker *w = NULL;
    memset(res, 0, sizeof(*res));
    memset(&sh, 0, sizeof(sh));
    errmsg[0] = '\0';
    atomic_store(&interrupt_requested, false);
    int rv = kp_bench_stats_init(&res->stats);
    if (rv != KP_OK)
        goto err_out;
    sh.cfg = cfg;
    sh.threads = cfg->threads;
    atomic_init(&sh.abort, false);
    rv = resolve(&cfg->url, &sh.addr, errmsg, errlen);
    if (rv != KP_OK)
        return rv;
    if (cfg->url.tls && (rv = tls_context(cfg, &sh.tls, errmsg, errlen)) != KP_OK)
        goto err_out;
    rv = workers_create(&sh, &w);
    if (rv != KP_OK)
        goto err_out;
    if (uv_barrier_init(&sh.connected, sh.threads + 1) != 0) {
        rv = KP_ENOMEM;
        goto err_after_workers;
    }
    if (uv_barrier_init(&sh.go, sh.threads + 1) != 0) {
        rv = KP_ENOMEM;
        goto err_after_connected;
    }
    rv = start_threads(&sh, w, errmsg, errlen);
    if (rv != KP_OK) {
        fprintf(stderr, "keyplane-bench: %s\n", errmsg);
        abort(); /* see start_threads */
    }
    uv_barrier_wait(&sh.connected);
    for (unsigned i = 0; i < sh.threads && rv == KP_OK; i++) {
        if (w[i].err != KP_OK) {
            rv = w[i].err;
            snprintf(errmsg, errlen, "%s", w[i].errmsg);
            atomic_store(&sh.abort, true);
        }
    }
    set_times(&sh);
    uv_barrier_wait(&sh.go);
    if (rv == KP_OK)
        watch(&sh, w);
    for (unsigned i = 0; i < sh.threads; i++)
        uv_thread_join(&w[i].thread);
    if (rv == KP_OK)
        rv = collect(&sh, w, res);
    uv_barrier_destroy(&sh.go);
err_after_connected:
    uv_barrier_destroy(&sh.connected);
err_after_workers:
    for (unsigned i = 0; i < sh.threads; i++)
        kp_bench_stats_close(&w[i].stats);
    kp_free(w);
err_out:
    SSL_CTX_free(sh.tls);
    if (rv == KP_ENOMEM && errmsg[0] == '\0')
        snprintf(errmsg, errlen, "out of memory");
    return rv;
}

void kp_bench_result_close(struct kp_bench_result *res)
{
    kp_bench_stats_close(&res->stats);
}

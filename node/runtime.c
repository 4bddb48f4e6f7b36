/* The keyplaned runtime: worker threads, signals and the drain.
 *
 * Each worker owns a libuv loop and its own gateway listener bound to the
 * same address with SO_REUSEPORT, so a request lives and dies on one
 * thread. The main thread runs Raft (raftstore's store) and the control
 * listener on its own loop, so control API handlers read and propose to
 * the state machine without crossing threads; it also waits for signals
 * and runs the drain:
 *
 *   RUNNING --SIGTERM/SIGINT--> DELAY (readyz 503, still accepting,
 *                                      answers say Connection: close,
 *                                      a leader hands leadership over;
 *                                      drain_delay_ms)
 *                                 |
 *                                 v
 *                               DRAIN (gateway stops accepting; in-flight
 *                                      calls and streams finish)
 *                                 |  all workers idle, or drain_timeout_ms,
 *                                 v  or a second signal
 *                               STOP (every listener and connection closed,
 *                                     loops end, threads joined) -> exit 0
 *
 * Cross-thread messages go through uv_async_t; shared state is atomics. */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "node.h"

enum worker_cmd { CMD_RUN, CMD_DRAIN, CMD_STOP };

struct kp_worker {
    struct kp_runtime *rt;
    int index;
    uv_thread_t thread;
    uv_loop_t loop;
    uv_async_t wake;
    uv_timer_t tick;
    struct kp_http_server *gateway;
    struct kp_router *router;
    int gateway_port;
    uv_sem_t started;
    int start_rc;
    char errmsg[256];
    atomic_int cmd;
    int applied_cmd;
    atomic_bool idle; /* draining and nothing left on the gateway */
    atomic_uint gw_inflight, gw_conns;
    int servers_open;
};

static uv_async_t main_wake;

static void publish_counts(struct kp_worker *w)
{
    atomic_store(&w->gw_inflight, w->gateway ? kp_http_server_inflight(w->gateway) : 0);
    atomic_store(&w->gw_conns, w->gateway ? kp_http_server_connections(w->gateway) : 0);
}

static void close_loop_handles(void *arg)
{
    struct kp_worker *w = arg;
    uv_close((uv_handle_t *)&w->wake, NULL);
    uv_close((uv_handle_t *)&w->tick, NULL);
}

/* The gateway server is closed (every exchange finished): then the router,
 * then the loop's own handles. */
static void server_closed(void *arg)
{
    struct kp_worker *w = arg;
    if (--w->servers_open == 0) {
        struct kp_router *r = w->router;
        w->router = NULL;
        if (r != NULL)
            kp_router_close(r, close_loop_handles, w);
        else
            close_loop_handles(w);
    }
}

static void worker_apply(struct kp_worker *w)
{
    int cmd = atomic_load(&w->cmd);
    if (cmd == w->applied_cmd)
        return;
    w->applied_cmd = cmd;
    if (cmd == CMD_DRAIN) {
        kp_http_server_drain(w->gateway);
    } else if (cmd == CMD_STOP) {
        struct kp_http_server *g = w->gateway;
        w->gateway = NULL;
        publish_counts(w);
        kp_http_server_close(g, server_closed, w);
    }
}

static void worker_tick(uv_timer_t *t)
{
    struct kp_worker *w = t->data;
    publish_counts(w);
    if (w->applied_cmd == CMD_DRAIN && !atomic_load(&w->idle) &&
        kp_http_server_inflight(w->gateway) == 0 && kp_http_server_connections(w->gateway) == 0) {
        atomic_store(&w->idle, true);
        uv_async_send(&main_wake);
    }
}

static void worker_wake(uv_async_t *a)
{
    struct kp_worker *w = a->data;
    worker_apply(w);
    worker_tick(&w->tick);
}

static int worker_listen(struct kp_worker *w)
{
    struct kp_runtime *rt = w->rt;
    int rc = kp_router_new(&w->router, &w->loop, rt->router, w->errmsg, sizeof(w->errmsg));
    if (rc != KP_OK)
        return rc;
    /* Answers say Connection: close from the moment the drain flag is set,
     * the same moment /readyz turns 503. */
    struct kp_http_server_config gw = {.name = "gateway",
                                       .handler = kp_router_handle,
                                       .arg = w->router,
                                       .limits = rt->limits,
                                       .tls = rt->cfg->tls_gateway ? rt->tls : NULL,
                                       .quiesce = &rt->draining};
    rc = kp_http_server_start(&w->gateway, &w->loop, &gw, rt->cfg->gateway_listen, &w->gateway_port,
                              w->errmsg, sizeof(w->errmsg));
    if (rc != KP_OK)
        return rc;
    w->servers_open++;
    return KP_OK;
}

static void worker_main(void *arg)
{
    struct kp_worker *w = arg;
    kp_thread_name("kp-worker", w->index);
    uv_async_init(&w->loop, &w->wake, worker_wake);
    w->wake.data = w;
    uv_timer_init(&w->loop, &w->tick);
    w->tick.data = w;
    w->start_rc = worker_listen(w);
    if (w->start_rc != KP_OK) {
        struct kp_router *r = w->router;
        w->router = NULL;
        if (r != NULL)
            kp_router_close(r, close_loop_handles, w);
        else
            close_loop_handles(w);
        uv_sem_post(&w->started);
        uv_run(&w->loop, UV_RUN_DEFAULT);
        return;
    }
    uv_timer_start(&w->tick, worker_tick, 50, 50);
    publish_counts(w);
    uv_sem_post(&w->started);
    uv_run(&w->loop, UV_RUN_DEFAULT);
}

static int worker_start(struct kp_worker *w)
{
    if (uv_loop_init(&w->loop) != 0 || uv_sem_init(&w->started, 0) != 0)
        return KP_ENOMEM;
    if (uv_thread_create(&w->thread, worker_main, w) != 0) {
        snprintf(w->errmsg, sizeof(w->errmsg), "cannot start worker thread %d", w->index);
        return KP_ENOMEM;
    }
    uv_sem_wait(&w->started);
    return w->start_rc;
}

static void worker_join(struct kp_worker *w)
{
    uv_thread_join(&w->thread);
    if (uv_loop_close(&w->loop) != 0)
        kp_warn("runtime", "worker %d: loop closed with open handles", w->index);
    uv_sem_destroy(&w->started);
}

static void send_all(struct kp_runtime *rt, int cmd)
{
    for (int i = 0; i < rt->n_workers; i++) {
        atomic_store(&rt->workers[i].cmd, cmd);
        uv_async_send(&rt->workers[i].wake);
    }
}

static void main_close_handles(struct kp_runtime *rt)
{
    uv_close((uv_handle_t *)&rt->sig_term, NULL);
    uv_close((uv_handle_t *)&rt->sig_int, NULL);
    uv_close((uv_handle_t *)&rt->sig_hup, NULL);
    uv_close((uv_handle_t *)&rt->drain_timer, NULL);
    uv_close((uv_handle_t *)&main_wake, NULL);
}

static void stop_now(struct kp_runtime *rt, const char *why)
{
    if (rt->drain_accepting_over && uv_is_closing((uv_handle_t *)&main_wake))
        return;
    kp_info("runtime", "stopping: %s", why);
    rt->drain_accepting_over = true;
    send_all(rt, CMD_STOP);
    main_close_handles(rt);
    struct kp_http_server *c = rt->control;
    rt->control = NULL;
    kp_http_server_close(c, NULL, NULL);
    if (rt->on_stop != NULL)
        rt->on_stop(rt->control_arg);
}

void kp_runtime_fail(struct kp_runtime *rt, int exit_code, const char *why)
{
    rt->exit_code = exit_code;
    atomic_store(&rt->ready, false);
    stop_now(rt, why);
}

static void drain_check(uv_async_t *a)
{
    struct kp_runtime *rt = a->data;
    if (!atomic_load(&rt->draining) || uv_is_closing((uv_handle_t *)a))
        return;
    for (int i = 0; i < rt->n_workers; i++)
        if (!atomic_load(&rt->workers[i].idle))
            return;
    stop_now(rt, "drained: no request in flight");
}

static void drain_deadline(uv_timer_t *t)
{
    struct kp_runtime *rt = t->data;
    stop_now(rt, "drain timeout reached; closing remaining connections");
}

static void begin_drain(uv_timer_t *t)
{
    struct kp_runtime *rt = t->data;
    kp_info("runtime", "drain: gateway stops accepting; waiting up to %lld ms for in-flight work",
            (long long)rt->cfg->drain_timeout_ms);
    send_all(rt, CMD_DRAIN);
    uv_timer_start(&rt->drain_timer, drain_deadline, (uint64_t)rt->cfg->drain_timeout_ms, 0);
}

static void on_signal(uv_signal_t *s, int signum)
{
    struct kp_runtime *rt = s->data;
    if (signum == SIGHUP) {
        kp_info("runtime", "SIGHUP -> reopen the access log, reload TLS certificates");
        if (rt->on_hup != NULL)
            rt->on_hup(rt->control_arg);
        return;
    }
    if (atomic_load(&rt->draining)) {
        stop_now(rt, "second signal during drain");
        return;
    }
    atomic_store(&rt->draining, true);
    kp_info("runtime", "%s -> draining (readyz now 503)", signum == SIGTERM ? "SIGTERM" : "SIGINT");
    if (rt->on_drain != NULL)
        rt->on_drain(rt->control_arg);
    if (rt->cfg->drain_delay_ms > 0)
        uv_timer_start(&rt->drain_timer, begin_drain, (uint64_t)rt->cfg->drain_delay_ms, 0);
    else
        begin_drain(&rt->drain_timer);
}

static void format_addr(char *out, size_t len, const char *configured, int port)
{
    /* Keep the configured host, put the bound port. */
    const char *colon = strrchr(configured, ':');
    int hostlen = colon ? (int)(colon - configured) : 0;
    snprintf(out, len, "%.*s:%d", hostlen, configured, port);
}

/* The control listener's counts are read on the main loop, its own. */
unsigned kp_runtime_inflight(struct kp_runtime *rt, const char *listener)
{
    if (strcmp(listener, "gateway") != 0)
        return rt->control ? kp_http_server_inflight(rt->control) : 0;
    unsigned n = 0;
    for (int i = 0; i < rt->n_workers; i++)
        n += atomic_load(&rt->workers[i].gw_inflight);
    return n;
}

unsigned kp_runtime_connections(struct kp_runtime *rt, const char *listener)
{
    if (strcmp(listener, "gateway") != 0)
        return rt->control ? kp_http_server_connections(rt->control) : 0;
    unsigned n = 0;
    for (int i = 0; i < rt->n_workers; i++)
        n += atomic_load(&rt->workers[i].gw_conns);
    return n;
}

static int start_workers(struct kp_runtime *rt, char *errmsg, size_t errlen)
{
    int gw_port = 0;
    for (int i = 0; i < rt->n_workers; i++) {
        struct kp_worker *w = &rt->workers[i];
        w->rt = rt;
        w->index = i;
        w->gateway_port = gw_port;
        int rc = worker_start(w);
        if (rc != KP_OK) {
            snprintf(errmsg, errlen, "worker %d: %s", i, w->errmsg);
            /* Stop the ones already running, and this one's loop. */
            atomic_store(&w->cmd, CMD_STOP);
            worker_join(w);
            for (int j = 0; j < i; j++) {
                atomic_store(&rt->workers[j].cmd, CMD_STOP);
                uv_async_send(&rt->workers[j].wake);
                worker_join(&rt->workers[j]);
            }
            return rc;
        }
        gw_port = w->gateway_port;
    }
    format_addr(rt->gateway_addr, sizeof(rt->gateway_addr), rt->cfg->gateway_listen, gw_port);
    return KP_OK;
}

int kp_runtime_run(struct kp_runtime *rt, char *errmsg, size_t errlen)
{
    signal(SIGPIPE, SIG_IGN);
    rt->workers = kp_calloc((size_t)rt->n_workers, sizeof(*rt->workers));
    if (rt->workers == NULL) {
        snprintf(errmsg, errlen, "out of memory");
        return KP_ENOMEM;
    }
    uv_loop_t *loop = rt->main_loop;
    uv_async_init(loop, &main_wake, drain_check);
    main_wake.data = rt;
    int ctl_port = 0;
    struct kp_http_server_config ctl = {.name = "control",
                                        .handler = kp_control_handle,
                                        .arg = rt->control_arg,
                                        .limits = rt->control_limits,
                                        .tls = rt->cfg->tls_control ? rt->tls : NULL};
    int rc = kp_http_server_start(&rt->control, loop, &ctl, rt->cfg->control_listen, &ctl_port,
                                  errmsg, errlen);
    if (rc == KP_OK) {
        format_addr(rt->control_addr, sizeof(rt->control_addr), rt->cfg->control_listen, ctl_port);
        rc = start_workers(rt, errmsg, errlen);
        if (rc != KP_OK) {
            kp_http_server_close(rt->control, NULL, NULL);
            rt->control = NULL;
        }
    }
    if (rc != KP_OK) {
        uv_close((uv_handle_t *)&main_wake, NULL);
        uv_run(loop, UV_RUN_DEFAULT);
        kp_free(rt->workers);
        rt->workers = NULL;
        return rc;
    }
    uv_signal_init(loop, &rt->sig_term);
    uv_signal_init(loop, &rt->sig_int);
    uv_signal_init(loop, &rt->sig_hup);
    rt->sig_term.data = rt->sig_int.data = rt->sig_hup.data = rt;
    uv_signal_start(&rt->sig_term, on_signal, SIGTERM);
    uv_signal_start(&rt->sig_int, on_signal, SIGINT);
    uv_signal_start(&rt->sig_hup, on_signal, SIGHUP);
    uv_timer_init(loop, &rt->drain_timer);
    rt->drain_timer.data = rt;
    return KP_OK;
}

/* Runs the main loop until the workers stopped; joins them. */
int kp_runtime_wait(struct kp_runtime *rt)
{
    uv_run(rt->main_loop, UV_RUN_DEFAULT);
    for (int i = 0; i < rt->n_workers; i++)
        worker_join(&rt->workers[i]);
    kp_free(rt->workers);
    rt->workers = NULL;
    return rt->exit_code;
}

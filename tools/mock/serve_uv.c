/* The libuv side of keyplane-mock: each worker answers its exchanges with
 * kpmock and carries out the timing faults.
 *
 * Happy path: the handler builds the answer into the worker's scratch answer
 * and, when nothing is delayed or streamed, responds at once with no
 * allocation of ours. Otherwise a call (one allocation holding a copy of the
 * answer) runs this state machine:
 *
 *     start --delay--> WAIT_HEAD --timer--+
 *       |                                 v
 *       +------------------------------> send: whole answer -> DONE
 *                                         | stream
 *                                         v
 *                  +--> pump: write events while writable
 *                  |      | not writable -> WAIT_DRAIN --drain--+
 *                  |      | slow_chunks  -> WAIT_CHUNK --timer--+--> pump
 *                  |      | reset fault  -> kp_http_reset -> DONE
 *                  |      v all written
 *                  |    kp_http_stream_end -> DONE
 *     any state --client gone (on_abort)--> kp_http_reset -> DONE
 *
 * How it fails: a client that goes away is finished with kp_http_reset from
 * the abort callback (or, inside the pump, right after the write that
 * noticed), its timer stopped; DONE closes the timer and frees the call in
 * the close callback, so every exchange is finished exactly once and no
 * handle outlives its call. Out of memory for a call is a 503. */
#include <stdio.h>
#include <string.h>

#include "serve.h"

enum call_state { CALL_WAIT_HEAD, CALL_SENDING, CALL_WAIT_DRAIN, CALL_WAIT_CHUNK, CALL_DONE };

struct mock_call {
    struct kp_mock_worker *w;
    struct kp_http_exchange *ex; /* NULL once finished */
    uv_timer_t timer;
    enum call_state state;
    bool in_pump;
    bool aborted;
    unsigned next_event;
    struct kp_mock_answer ans; /* body points at data[] */
    char data[];
};

static const char oom_body[] = "{\"error\":{\"message\":\"keyplane-mock is out of memory\","
                               "\"type\":\"server_error\",\"param\":null,\"code\":null}}";

static void count_status(struct kp_mock_worker *w, const struct kp_mock_answer *a)
{
    if (a->counted)
        kp_mock_stats_status(w->mock, w->index, a->status);
    if (a->counted && a->status == 200)
        kp_mock_stats_tokens(w->mock, w->index, a->tokens_in, a->tokens_out);
}

static void respond_oom(struct kp_mock_worker *w, struct kp_http_exchange *ex, bool counted)
{
    if (counted)
        kp_mock_stats_status(w->mock, w->index, 503);
    kp_http_respond_json(ex, 503, oom_body, sizeof(oom_body) - 1);
}

static void respond_whole(struct kp_mock_worker *w, struct kp_http_exchange *ex,
                          const struct kp_mock_answer *a)
{
    struct kp_http_header headers[KP_MOCK_ANSWER_HEADERS];
    unsigned n = kp_mock_answer_headers(a, headers);

    count_status(w, a);
    kp_http_respond(ex, a->status, headers, n, a->body.data, a->body.len);
}

static void timer_closed(uv_handle_t *h)
{
    kp_free(h->data);
}

/* The exchange is finished: forget it and free the call once the timer is
 * closed. */
static void call_done(struct mock_call *c)
{
    c->ex = NULL;
    c->state = CALL_DONE;
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, timer_closed);
}

static void call_reset(struct mock_call *c, bool by_fault)
{
    if (by_fault)
        kp_mock_stats_reset_sent(c->w->mock, c->w->index);
    kp_http_reset(c->ex);
    call_done(c);
}

static void on_timer(uv_timer_t *t);

static void call_pump(struct mock_call *c)
{
    const struct kp_mock_faults *f = &c->ans.faults;
    const char *p;
    size_t len;

    c->state = CALL_SENDING;
    c->in_pump = true;
    for (;;) {
        if (c->aborted) {
            call_reset(c, false);
            break;
        }
        if (f->reset_after >= 0 && c->next_event >= (unsigned)f->reset_after) {
            kp_trace("mock", "reset_mid_stream after %u events -> reset", c->next_event);
            call_reset(c, true); /* the core resets once queued bytes are written */
            break;
        }
        if (c->next_event == c->ans.n_events) {
            kp_http_stream_end(c->ex);
            call_done(c);
            break;
        }
        /* Wait only once an event of ours is queued: the write that filled the
         * queue is what arms the drain callback, so the wait cannot be lost
         * (before the first event the queue holds only the head). */
        if (c->next_event > 0 && !kp_http_stream_writable(c->ex)) {
            c->state = CALL_WAIT_DRAIN;
            break;
        }
        kp_mock_answer_event(&c->ans, c->next_event++, &p, &len);
        if (kp_http_stream_write(c->ex, p, len) != 0) {
            c->aborted = true; /* closed, or out of memory: either way give up */
            continue;
        }
        if (f->slow_chunks_ms > 0 && c->next_event < c->ans.n_events) {
            c->state = CALL_WAIT_CHUNK;
            uv_timer_start(&c->timer, on_timer, f->slow_chunks_ms, 0);
            break;
        }
    }
    c->in_pump = false;
}

static void call_send(struct mock_call *c)
{
    struct kp_http_header headers[KP_MOCK_ANSWER_HEADERS];
    unsigned n;

    if (!c->ans.stream) {
        respond_whole(c->w, c->ex, &c->ans);
        call_done(c);
        return;
    }
    n = kp_mock_answer_headers(&c->ans, headers);
    count_status(c->w, &c->ans);
    c->in_pump = true;
    if (kp_http_stream_begin(c->ex, c->ans.status, headers, n) != 0)
        c->aborted = true;
    c->in_pump = false;
    call_pump(c);
}

static void on_timer(uv_timer_t *t)
{
    struct mock_call *c = t->data;

    if (c->state == CALL_WAIT_HEAD)
        call_send(c);
    else if (c->state == CALL_WAIT_CHUNK)
        call_pump(c);
}

static void on_drain(struct kp_http_exchange *ex, void *arg)
{
    struct mock_call *c = arg;

    (void)ex;
    if (c->state == CALL_WAIT_DRAIN) {
        kp_trace("mock", "drain -> resume stream at event %u", c->next_event);
        call_pump(c);
    }
}

static void on_abort(struct kp_http_exchange *ex, void *arg)
{
    struct mock_call *c = arg;

    (void)ex;
    if (c->aborted || c->state == CALL_DONE)
        return;
    c->aborted = true;
    kp_mock_stats_aborted(c->w->mock, c->w->index);
    kp_trace("mock", "client gone -> reset exchange");
    if (c->in_pump)
        return; /* the pump finishes the exchange when control returns to it */
    uv_timer_stop(&c->timer);
    call_reset(c, false);
}

static struct mock_call *call_new(struct kp_mock_worker *w, struct kp_http_exchange *ex,
                                  const struct kp_mock_answer *a)
{
    struct mock_call *c = kp_malloc(sizeof(*c) + a->body.len + 1);

    if (c == NULL)
        return NULL;
    memset(c, 0, sizeof(*c));
    c->w = w;
    c->ex = ex;
    c->ans = *a;
    memcpy(c->data, a->body.data, a->body.len);
    c->ans.body.data = c->data;
    c->ans.body.cap = a->body.len + 1;
    uv_timer_init(&w->loop, &c->timer);
    c->timer.data = c;
    kp_http_on_abort(ex, on_abort, c);
    kp_http_on_drain(ex, on_drain, c);
    return c;
}

static void on_request(struct kp_http_exchange *ex, const struct kp_http_request *req, void *arg)
{
    struct kp_mock_worker *w = arg;
    struct kp_mock_answer *a = &w->answer;
    unsigned delay;
    struct mock_call *c;

    kp_mock_handle(w->mock, w->index, req, a);
    kp_http_set_route(ex, kp_mock_route_name(a->route));
    if (a->failed) {
        respond_oom(w, ex, a->counted);
        return;
    }
    delay = kp_mock_faults_head_delay(&a->faults);
    if (!a->stream && delay == 0) {
        respond_whole(w, ex, a);
        return;
    }
    c = call_new(w, ex, a);
    if (c == NULL) {
        respond_oom(w, ex, a->counted);
        return;
    }
    if (delay > 0) {
        c->state = CALL_WAIT_HEAD;
        uv_timer_start(&c->timer, on_timer, delay, 0);
        return;
    }
    call_send(c);
}

/* --- workers ------------------------------------------------------------- */

static void server_closed(void *arg)
{
    (void)arg;
}

static void on_stop(uv_async_t *h)
{
    struct kp_mock_worker *w = h->data;

    kp_http_server_close(w->srv, server_closed, w);
    w->srv = NULL;
    uv_close((uv_handle_t *)&w->stop, NULL);
}

int kp_mock_worker_init(struct kp_mock_worker *w, struct kp_mock *mock, unsigned index,
                        const char *addr, size_t write_watermark, int *bound_port)
{
    struct kp_http_server_config cfg = {.name = "mock", .handler = on_request, .arg = w};
    int rv;

    memset(w, 0, sizeof(*w));
    w->index = index;
    w->mock = mock;
    kp_mock_answer_init(&w->answer);
    kp_http_limits_default(&cfg.limits);
    if (write_watermark > 0)
        cfg.limits.write_high_watermark = write_watermark;
    rv = uv_loop_init(&w->loop);
    if (rv != 0) {
        snprintf(w->errmsg, sizeof(w->errmsg), "uv_loop_init: %s", uv_strerror(rv));
        goto err_after_answer;
    }
    rv = uv_async_init(&w->loop, &w->stop, on_stop);
    if (rv != 0) {
        snprintf(w->errmsg, sizeof(w->errmsg), "uv_async_init: %s", uv_strerror(rv));
        goto err_after_loop;
    }
    w->stop.data = w;
    rv = kp_http_server_start(&w->srv, &w->loop, &cfg, addr, bound_port, w->errmsg,
                              sizeof(w->errmsg));
    if (rv != 0)
        goto err_after_async;
    return 0;

err_after_async:
    uv_close((uv_handle_t *)&w->stop, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
err_after_loop:
    uv_loop_close(&w->loop);
err_after_answer:
    kp_mock_answer_free(&w->answer);
    return rv < 0 ? kp_err_from_uv(rv) : rv;
}

static void worker_main(void *arg)
{
    struct kp_mock_worker *w = arg;

    kp_thread_name("mock-worker", (int)w->index);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    if (w->on_exit != NULL)
        w->on_exit(w->exit_arg);
}

int kp_mock_worker_run(struct kp_mock_worker *w)
{
    int rv = uv_thread_create(&w->thread, worker_main, w);

    if (rv != 0) {
        snprintf(w->errmsg, sizeof(w->errmsg), "uv_thread_create: %s", uv_strerror(rv));
        return kp_err_from_uv(rv);
    }
    w->thread_started = true;
    return 0;
}

void kp_mock_worker_stop(struct kp_mock_worker *w)
{
    uv_async_send(&w->stop);
}

void kp_mock_worker_close(struct kp_mock_worker *w)
{
    int rv;

    if (w->thread_started) {
        uv_thread_join(&w->thread);
    } else {
        /* Never ran: stop the server and let its handles close here. */
        on_stop(&w->stop);
        uv_run(&w->loop, UV_RUN_DEFAULT);
    }
    rv = uv_loop_close(&w->loop);
    if (rv != 0)
        kp_error("mock", "worker %u: loop still has handles at exit: %s", w->index,
                 uv_strerror(rv));
    kp_mock_answer_free(&w->answer);
}

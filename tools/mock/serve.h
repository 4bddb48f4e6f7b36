/* keyplane-mock's workers: one thread, one libuv loop and one HTTP server
 * (SO_REUSEPORT on the shared address) each, answering with kpmock. Internal
 * to the keyplane-mock program. */
#ifndef KP_TOOLS_MOCK_SERVE_H
#define KP_TOOLS_MOCK_SERVE_H

#include <uv.h>

#include "mock.h"

struct kp_mock_worker {
    unsigned index; /* also the stats shard */
    struct kp_mock *mock;
    uv_loop_t loop;
    uv_async_t stop;
    struct kp_http_server *srv;
    struct kp_mock_answer answer; /* scratch, reused by every request */
    uv_thread_t thread;
    bool thread_started;
    void (*on_exit)(void *arg); /* from the worker thread, after its loop */
    void *exit_arg;
    char errmsg[256];
};

/* Initialise the loop and start the server on @addr from the calling thread;
 * the worker thread is not started yet. *bound_port receives the port.
 * @write_watermark overrides the server's (0: the default); tests make it
 * tiny so that every stream goes through the drain path. */
int kp_mock_worker_init(struct kp_mock_worker *w, struct kp_mock *mock, unsigned index,
                        const char *addr, size_t write_watermark, int *bound_port);
/* Run the loop in a new thread. */
int kp_mock_worker_run(struct kp_mock_worker *w);
/* Ask the worker to close its server and end its loop (any thread). */
void kp_mock_worker_stop(struct kp_mock_worker *w);
/* Join the thread (if started) and release everything. */
void kp_mock_worker_close(struct kp_mock_worker *w);

#endif

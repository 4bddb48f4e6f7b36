/* Internal to bench/: one generator thread and what the threads share.
 * run.c starts the threads and reads their figures; client_uv.c is the
 * thread's loop. */
#ifndef KP_BENCH_WORKER_H
#define KP_BENCH_WORKER_H

#include <llhttp.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <uv.h>

#include "bench.h"

/* Set once by run.c before the threads start (address) or between the two
 * barriers (times), then only read. */
struct kp_bench_shared {
    const struct kp_bench_config *cfg;
    struct sockaddr_storage addr;
    unsigned threads;
    uint64_t start_ns;        /* open loop: when global request 0 is due */
    uint64_t measure_ns;      /* end of the warm-up */
    uint64_t stop_ns;         /* end of the measured window, or KP_BENCH_NEVER */
    uint64_t warmup_requests; /* open loop: global requests of the warm-up */
    uv_barrier_t connected;   /* every thread has its connections open */
    uv_barrier_t go;          /* run.c has set the times */
    atomic_bool abort;        /* a thread failed, or the user interrupted */
    struct ssl_ctx_st *tls;   /* https: the client context (run.c), else NULL */
};

enum kp_bench_phase {
    KP_BENCH_CONNECTING, /* opening the first connections */
    KP_BENCH_RUNNING,    /* sending on schedule, or as answers return */
    KP_BENCH_DRAINING,   /* nothing more to send; waiting for answers */
    KP_BENCH_DONE        /* closing every handle */
};

struct kp_bench_conn;

struct kp_bench_worker {
    struct kp_bench_shared *shared;
    unsigned index;
    unsigned n_conns;
    uint64_t request_limit; /* closed loop with --requests: this thread's share */
    uv_thread_t thread;
    int err;
    char errmsg[512];
    struct kp_bench_stats stats;
    bool interrupted;
    /* Read by run.c's progress line while the thread runs. */
    atomic_uint_fast64_t progress_done;
    atomic_uint_fast64_t progress_warmup;
    atomic_uint_fast64_t progress_errors;
    atomic_bool finished;

    /* The rest belongs to the thread. */
    uv_loop_t loop;
    uv_timer_t tick;
    uv_poll_t timer_poll;
    int timer_fd;
    uint64_t armed_ns;
    llhttp_settings_t settings;
    struct kp_bench_conn *conns;
    struct kp_bench_conn **idle;
    unsigned n_idle;
    unsigned busy;
    unsigned connecting; /* first connections not yet answered */
    enum kp_bench_phase phase;
    struct kp_bench_sched sched;
    struct kp_bench_picker picker;
    uint64_t issued_measured;
    uint64_t deadline_ns; /* give up on what is still out at this time */
    uint64_t connect_deadline_ns;
    bool starved; /* open loop: requests due and no free connection */
    bool loop_ready;
};

/* The thread's body: connect, wait at the barriers, run, clean up. */
void kp_bench__worker_main(void *arg);

#endif

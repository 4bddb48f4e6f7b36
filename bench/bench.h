/* keyplane-bench: an HTTP/1.1 load generator for keyplane's gateway and its
 * neighbours (the mock upstream, nginx), on libuv and llhttp.
 *
 * Two modes. Open loop (--rate R): requests leave on a fixed schedule
 * whatever the server does, from a pool of keep-alive connections, and each
 * latency counts from the request's place in the schedule, so a stall shows
 * in the percentiles as long as it lasted (schedule.h). Closed loop
 * (--connections C without --rate): C connections each send the next request
 * when the last one returned, as wrk does, which finds the ceiling.
 *
 * The module's parts: the histogram (hist.h) and the schedule (schedule.h) are
 * pure; args.c and mix.c turn a command line into a config and the bytes of
 * each request; response.c reads an answer (llhttp, SSE events), also
 * pure; client_uv.c is one generator thread (libuv loop, connections,
 * timerfd for the schedule); run.c starts the threads, prints progress and
 * merges their figures; report.c prints the table or the JSON. */
#ifndef KP_BENCH_H
#define KP_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "hist.h"
#include "schedule.h"

/* --- target -------------------------------------------------------------- */

struct kp_bench_url {
    char host[256]; /* without brackets for IPv6 */
    char port_text[8];
    int port;
    char hostport[270]; /* the Host header: "127.0.0.1:8080", "[::1]:80" */
    char path[2048];    /* request-target: path and query, "/" at least */
    bool tls;           /* https:// */
};

/* Parses "http[s]://HOST[:PORT][/PATH][?QUERY]". Writes a message that says
 * what is wrong and what is expected on error. */
int kp_bench_url_parse(const char *text, struct kp_bench_url *out, char *errmsg, size_t errlen);

/* --- requests ------------------------------------------------------------ */

/* The built-in bodies of --mix. */
#define KP_BENCH_KIND_MAP(X)                                                                       \
    X(KP_BENCH_CHAT_SMALL, "chat_small", "/chat/completions", false)                               \
    X(KP_BENCH_CHAT_LARGE, "chat_large", "/chat/completions", false)                               \
    X(KP_BENCH_CHAT_STREAM, "chat_stream", "/chat/completions", true)                              \
    X(KP_BENCH_CHAT_LARGE_STREAM, "chat_large_stream", "/chat/completions", true)                  \
    X(KP_BENCH_EMBEDDINGS, "embeddings", "/embeddings", false)

enum kp_bench_kind {
#define KP_BENCH_KIND_ENUM(kind, name, path, stream) kind,
    KP_BENCH_KIND_MAP(KP_BENCH_KIND_ENUM)
#undef KP_BENCH_KIND_ENUM
        KP_BENCH_N_KINDS
};

#define KP_BENCH_MAX_REQUESTS KP_BENCH_N_KINDS

/* One request exactly as it goes on the wire (head and body), built once and
 * shared read-only by every thread. */
struct kp_bench_request {
    const char *name;
    char *bytes;
    size_t len;
    unsigned weight;
};

/* Picks requests by smooth weighted round robin: deterministic, and the
 * kinds interleave evenly instead of coming in runs. One per thread. */
struct kp_bench_picker {
    const struct kp_bench_request *reqs;
    unsigned n;
    long current[KP_BENCH_MAX_REQUESTS];
};

void kp_bench_picker_init(struct kp_bench_picker *p, const struct kp_bench_request *reqs,
                          unsigned n);
unsigned kp_bench_picker_next(struct kp_bench_picker *p);

/* --- configuration ------------------------------------------------------- */

enum kp_bench_mode { KP_BENCH_CLOSED_LOOP, KP_BENCH_OPEN_LOOP };

#define KP_BENCH_MAX_HEADERS 64

struct kp_bench_config {
    const char *url_text;
    struct kp_bench_url url;
    enum kp_bench_mode mode;
    double rate;          /* open loop: requests per second, all threads */
    unsigned connections; /* closed loop: connections; open loop: pool cap */
    unsigned threads;
    double duration_s; /* 0 when a request count is given */
    uint64_t requests; /* 0 when a duration is given */
    double warmup_s;
    double timeout_s; /* per request, and the drain at the end */
    double progress_s;
    const char *method;
    const char *body_path; /* --body */
    char *body;            /* its contents (owned) */
    size_t body_len;
    const char *headers[KP_BENCH_MAX_HEADERS];
    unsigned n_headers;
    const char *token;
    const char *cacert;                 /* https: verify the server against this CA (PEM); NULL: the
                                           system's CAs */
    unsigned weights[KP_BENCH_N_KINDS]; /* --mix */
    bool mix_set;
    const char *model;
    const char *embedding_model;
    bool json;
    bool quiet;
    bool help;
    bool version;

    /* Built by kp_bench_requests_build(). */
    struct kp_bench_request reqs[KP_BENCH_MAX_REQUESTS];
    unsigned n_reqs;
};

/* Fills @cfg from a command line. KP_OK, or KP_EINVAL / KP_ENOENT / KP_EIO
 * with a message in @errmsg. Sets cfg->help or cfg->version and returns KP_OK
 * when those were asked for. The config points into @argv. */
int kp_bench_args_parse(struct kp_bench_config *cfg, int argc, char **argv, char *errmsg,
                        size_t errlen);
/* Builds the wire bytes of every request (KP_ENOMEM on failure). */
int kp_bench_requests_build(struct kp_bench_config *cfg, char *errmsg, size_t errlen);
void kp_bench_config_free(struct kp_bench_config *cfg);
void kp_bench_usage(FILE *out);

/* --- running ------------------------------------------------------------- */

enum kp_bench_error_kind {
    KP_BENCH_ERR_CONNECT, /* a connection could not be (re)opened */
    KP_BENCH_ERR_WRITE,   /* sending the request failed */
    KP_BENCH_ERR_READ,    /* the socket failed while a response was due */
    KP_BENCH_ERR_CLOSED,  /* the server closed before the response ended */
    KP_BENCH_ERR_PARSE,   /* the response was not HTTP/1.1 */
    KP_BENCH_ERR_TIMEOUT, /* no full response within --timeout */
    KP_BENCH_ERR_UNSENT,  /* still waiting for a connection at the end */
    KP_BENCH_N_ERRORS
};

const char *kp_bench_error_name(int kind);

/* The figures of a run, per thread while running and merged at the end.
 * Times in nanoseconds; latencies count from the scheduled time in open
 * loop and from the send in closed loop. */
struct kp_bench_stats {
    struct kp_bench_hist latency;     /* to the last byte of the response */
    struct kp_bench_hist ttfb;        /* to the first byte of the response */
    struct kp_bench_hist first_event; /* SSE: to the end of the first event */
    struct kp_bench_hist stream_total;
    struct kp_bench_hist events; /* SSE: events per stream */
    struct kp_bench_hist lag;    /* open loop: send time - scheduled time */
    uint64_t completed;
    uint64_t streams;
    uint64_t status[600]; /* by status code; [0]: anything outside 100..599 */
    uint64_t errors[KP_BENCH_N_ERRORS];
    uint64_t waited; /* open loop: due while every connection was busy */
    uint64_t bytes_sent;
    uint64_t bytes_received;
    uint64_t warmup_completed;
    uint64_t last_done_ns;
};

int kp_bench_stats_init(struct kp_bench_stats *s);
void kp_bench_stats_close(struct kp_bench_stats *s);
int kp_bench_stats_merge(struct kp_bench_stats *dst, const struct kp_bench_stats *src);
uint64_t kp_bench_stats_errors(const struct kp_bench_stats *s);

struct kp_bench_result {
    struct kp_bench_stats stats;
    double elapsed_s; /* measured window: end of warm-up to the last answer */
    double throughput;
    bool interrupted;
};

/* Runs the load described by @cfg. KP_OK with @res filled (release it with
 * kp_bench_result_close), or an error with a message: the target cannot be
 * resolved or reached, or resources ran out. @res needs closing either way. */
int kp_bench_run(const struct kp_bench_config *cfg, struct kp_bench_result *res, char *errmsg,
                 size_t errlen);
void kp_bench_result_close(struct kp_bench_result *res);

/* Asks a running kp_bench_run to stop at once (safe from a signal handler). */
void kp_bench_interrupt(void);

/* --- reporting ----------------------------------------------------------- */

void kp_bench_report_table(FILE *out, const struct kp_bench_config *cfg,
                           const struct kp_bench_result *res);
int kp_bench_report_json(FILE *out, const struct kp_bench_config *cfg,
                         const struct kp_bench_result *res);

#endif

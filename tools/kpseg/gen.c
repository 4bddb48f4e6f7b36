/* kpseg gen: a deterministic synthetic segment, for tests and benchmarks
 * before real routers write any.
 *
 * The same arguments always give the same bytes: events come from a
 * splitmix64 generator seeded with --seed, times start at the segment's
 * creation time (2026-01-01T00:00:00Z unless --created-ms) and advance by
 * 0..250 ms per event, and zstd is deterministic. The traffic looks like a
 * small deployment: a few tenants, projects and features over five models
 * of three providers, with list-price costs, about 10% errors of the usual
 * classes, retries, streaming and 2% canary calls. The segment is sealed
 * unless --open. It fails on a usage error (exit 2) or when the file cannot
 * be written (exit 1, the file may then be partly written). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "kpseg.h"
#include "meter/meter.h"

#define GEN_CREATED_DEFAULT 1767225600000 /* 2026-01-01T00:00:00Z */

struct gen_opts {
    uint64_t events, seed, seq, frame_bytes, created_ms;
    const char *node;
    bool open, have_events, have_seed;
};

struct model_spec {
    const char *provider;
    const char *model;
    kp_nanousd in_price, out_price; /* per token */
};

static const struct model_spec models[] = {
    {"openai", "gpt-4o", 2500, 10000},
    {"openai", "gpt-4o-mini", 150, 600},
    {"anthropic", "claude-sonnet-4", 3000, 15000},
    {"anthropic", "claude-haiku-3.5", 800, 4000},
    {"gemini", "gemini-2.0-flash", 100, 400},
};
static const char *const tenants[] = {"acme", "globex", "initech", "umbrella"};
static const char *const projects[] = {"search", "support", "chat"};
static const char *const features[] = {"summarize", "classify", "answer", "translate"};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static uint64_t next_rand(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t below(uint64_t *s, uint64_t n)
{
    return next_rand(s) % n;
}

/* How a call ended: status, error class, retries. */
static void gen_outcome(uint64_t *rng, struct kp_usage_event *ev)
{
    static const struct {
        unsigned upto; /* cumulative percent */
        uint16_t status;
        const char *error_class;
    } outcomes[] = {
        {90, 200, ""},       {94, 429, "rate_limit"}, {96, 502, "server"},   {97, 504, "timeout"},
        {98, 400, "client"}, {99, 401, "auth"},       {100, 502, "connect"},
    };
    unsigned pct = (unsigned)below(rng, 100);
    size_t i = 0;
    while (pct >= outcomes[i].upto)
        i++;
    ev->status = outcomes[i].status;
    kp_usage_set_str(ev->error_class, outcomes[i].error_class);
    ev->retries = ev->status == 200 ? (below(rng, 20) == 0) : (uint32_t)below(rng, 3);
}

static void gen_usage(uint64_t *rng, const struct model_spec *m, struct kp_usage_event *ev)
{
    ev->tokens_in = 20 + below(rng, 4000);
    ev->tokens_cached = below(rng, 4) == 0 ? ev->tokens_in / 2 : 0;
    ev->tokens_out = ev->status == 200 ? 1 + below(rng, 1200) : 0;
    ev->tokens_estimated = below(rng, 20) == 0;
    ev->cost = ev->status == 200 ? (kp_nanousd)ev->tokens_in * m->in_price +
                                       (kp_nanousd)ev->tokens_out * m->out_price
                                 : 0;
    ev->streamed = below(rng, 2) == 0;
    ev->ttfb_us = 80000 + below(rng, 1500000);
    ev->total_us = ev->ttfb_us + ev->tokens_out * (5000 + below(rng, 20000));
}

static void gen_who(uint64_t *rng, struct kp_usage_event *ev)
{
    if (below(rng, 50) == 0) {
        kp_usage_set_str(ev->kind, KP_USAGE_KIND_CANARY);
        kp_usage_set_str(ev->tenant, "keyplane");
        kp_usage_set_str(ev->project, "health");
        kp_usage_set_str(ev->feature, "canary");
        return;
    }
    kp_usage_set_str(ev->tenant, tenants[below(rng, COUNT(tenants))]);
    kp_usage_set_str(ev->project, projects[below(rng, COUNT(projects))]);
    kp_usage_set_str(ev->feature, features[below(rng, COUNT(features))]);
}

static void gen_event(uint64_t *rng, const struct gen_opts *o, int64_t t, struct kp_usage_event *ev)
{
    size_t mi = (size_t)below(rng, COUNT(models));
    const struct model_spec *m = &models[mi];
    kp_usage_event_init(ev);
    ev->time_ms = t;
    snprintf(ev->request_id, sizeof(ev->request_id), "req_%016" PRIx64, next_rand(rng));
    kp_usage_set_str(ev->node, o->node);
    snprintf(ev->key_id, sizeof(ev->key_id), "%s-key-%u", m->provider, (unsigned)below(rng, 3));
    snprintf(ev->pool, sizeof(ev->pool), "%s-pool", m->provider);
    gen_who(rng, ev);
    kp_usage_set_str(ev->provider, m->provider);
    kp_usage_set_str(ev->model_served, m->model);
    /* One call in ten was downgraded from the model next to it. */
    kp_usage_set_str(ev->model_requested,
                     below(rng, 10) == 0 ? models[(mi + 1) % COUNT(models)].model : m->model);
    gen_outcome(rng, ev);
    gen_usage(rng, m, ev);
}

static int build(const struct gen_opts *o, struct kp_segment_writer *w)
{
    struct kp_segment_writer_options wo = {
        .node = o->node,
        .seq = o->seq,
        .created_ms = (int64_t)o->created_ms,
        .frame_bytes = (size_t)o->frame_bytes,
    };
    struct kp_usage_event ev;
    uint64_t rng = o->seed;
    int64_t t = (int64_t)o->created_ms;
    int rc = kp_segment_writer_init(w, &wo);
    for (uint64_t i = 0; rc == KP_OK && i < o->events; i++) {
        t += (int64_t)below(&rng, 251);
        gen_event(&rng, o, t, &ev);
        rc = kp_segment_writer_add(w, &ev);
    }
    if (rc == KP_OK)
        rc = o->open ? kp_segment_writer_flush(w) : kp_segment_writer_seal(w);
    return rc;
}

static int write_file(const char *path, const void *data, size_t len)
{
    const char *p = data;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        goto err;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            goto err_after_open;
        p += n;
        len -= (size_t)n;
    }
    if (close(fd) != 0)
        goto err;
    return KP_KPSEG_EXIT_OK;

err_after_open:
    close(fd);
err:
    fprintf(stderr, "%s: cannot write: %s\n", path, strerror(errno));
    return KP_KPSEG_EXIT_INVALID;
}

static int gen_apply(int c, const char *arg, void *ctx)
{
    struct gen_opts *o = ctx;
    bool ok = true;
    switch (c) {
    case 'e':
        ok = kp_kpseg__parse_u64("--events", arg, 100000000, &o->events);
        o->have_events = true;
        break;
    case 's':
        ok = kp_kpseg__parse_u64("--seed", arg, UINT64_MAX, &o->seed);
        o->have_seed = true;
        break;
    case 'q':
        ok = kp_kpseg__parse_u64("--seq", arg, UINT64_MAX, &o->seq);
        break;
    case 'f':
        ok = kp_kpseg__parse_u64("--frame-bytes", arg,
                                 KP_SEGMENT_FRAME_MAX_RAW - KP_USAGE_ENCODED_MAX, &o->frame_bytes);
        break;
    case 'c':
        ok = kp_kpseg__parse_u64("--created-ms", arg, 253402300799999, &o->created_ms);
        break;
    case 'n':
        o->node = arg;
        break;
    case 'o':
        o->open = true;
        break;
    }
    return ok ? KP_KPSEG_EXIT_OK : KP_KPSEG_EXIT_USAGE;
}

static int gen_failed(const char *why)
{
    fprintf(stderr, "kpseg: gen: %s\n", why);
    return KP_KPSEG_EXIT_INVALID;
}

static const char gen_usage_text[] =
    "usage: kpseg gen FILE --events N --seed S [--node NAME] [--seq N]\n"
    "                 [--frame-bytes B] [--created-ms MS] [--open]\n"
    "Write a deterministic synthetic segment (sealed unless --open).\n";

int kp_kpseg__cmd_gen(int argc, char **argv)
{
    static const struct option opts[] = {
        {"events", required_argument, NULL, 'e'},
        {"seed", required_argument, NULL, 's'},
        {"node", required_argument, NULL, 'n'},
        {"seq", required_argument, NULL, 'q'},
        {"frame-bytes", required_argument, NULL, 'f'},
        {"created-ms", required_argument, NULL, 'c'},
        {"open", no_argument, NULL, 'o'},
        {NULL, 0, NULL, 0},
    };
    struct gen_opts o = {.seq = 1, .created_ms = GEN_CREATED_DEFAULT, .node = "gen-node"};
    struct kp_segment_writer w;
    if (kp_kpseg__wants_help(argc, argv)) {
        fputs(gen_usage_text, stdout);
        return KP_KPSEG_EXIT_OK;
    }
    int rc = kp_kpseg__parse_options(argc, argv, opts, gen_apply, &o);
    if (rc != KP_KPSEG_EXIT_OK)
        return rc;
    if (optind >= argc)
        return kp_kpseg__usage_error("gen: no FILE given");
    if (argc - optind > 1)
        return kp_kpseg__usage_error("gen: one FILE at a time");
    if (!o.have_events || !o.have_seed)
        return kp_kpseg__usage_error("gen: --events and --seed are required");
    rc = build(&o, &w);
    if (rc == KP_OK)
        rc = write_file(argv[optind], w.out.data, w.out.len);
    else if (rc == KP_EINVAL)
        rc = kp_kpseg__usage_error("gen: %s", w.errmsg);
    else
        rc = gen_failed(w.errmsg);
    kp_segment_writer_close(&w);
    return rc;
}

/* keyplane-bench: parse the command line, build the requests, run, report.
 *
 * Exit status: 0 when the run finished and at least one answer came back;
 * 1 for bad arguments (the message says which); 2 when the target could not
 * be used: it does not resolve, nothing listens, or no request succeeded. */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "bench.h"
#include "core/core.h"

static void on_signal(int sig)
{
    (void)sig;
    kp_bench_interrupt();
}

static int run(struct kp_bench_config *cfg)
{
    char errmsg[512];
    struct kp_bench_result res;
    int rv = kp_bench_requests_build(cfg, errmsg, sizeof(errmsg));
    if (rv != KP_OK) {
        fprintf(stderr, "keyplane-bench: %s\n", errmsg);
        return 2;
    }
    rv = kp_bench_run(cfg, &res, errmsg, sizeof(errmsg));
    if (rv != KP_OK) {
        fprintf(stderr, "keyplane-bench: %s\n", errmsg);
        kp_bench_result_close(&res);
        return 2;
    }
    if (cfg->json)
        kp_bench_report_json(stdout, cfg, &res);
    else
        kp_bench_report_table(stdout, cfg, &res);
    int status = 0;
    if (res.stats.completed == 0 && !res.interrupted) {
        fprintf(stderr, "keyplane-bench: no request got an answer from %s\n", cfg->url_text);
        status = 2;
    }
    kp_bench_result_close(&res);
    return status;
}

int main(int argc, char **argv)
{
    struct kp_bench_config cfg;
    char errmsg[512];
    int status = 1;
    if (kp_bench_args_parse(&cfg, argc, argv, errmsg, sizeof(errmsg)) != KP_OK) {
        fprintf(stderr, "keyplane-bench: %s\n", errmsg);
        goto out;
    }
    if (cfg.help) {
        kp_bench_usage(stdout);
        status = 0;
        goto out;
    }
    if (cfg.version) {
        printf("keyplane-bench %s (%s)\n", kp_version(), kp_build_commit());
        status = 0;
        goto out;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    status = run(&cfg);
out:
    kp_bench_config_free(&cfg);
    return status;
}

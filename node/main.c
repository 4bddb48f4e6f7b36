/* keyplaned: one node of a keyplane cluster.
 *
 * Loads the configuration (file, environment, flags), locks the data
 * directory, starts the worker threads and their listeners, writes
 * listen.json, and runs until SIGTERM or SIGINT has drained it.
 * With --recover it only rewrites the Raft configuration of its stopped
 * data directory (node/restore.c) and exits.
 * Exit codes: 0 after a clean drain, 1 when the node cannot run (data
 * directory in use, address taken, ...), 2 for a usage or configuration
 * error. */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "node.h"

extern char **environ;

static void apply_limits(struct kp_runtime *rt, const struct kp_config *cfg)
{
    kp_http_limits_default(&rt->limits);
    rt->limits.max_body_bytes = (size_t)cfg->max_body_bytes;
    rt->limits.max_header_bytes = (size_t)cfg->max_header_bytes;
    rt->limits.max_headers = (unsigned)cfg->max_headers;
    rt->limits.header_timeout_ms = (uint64_t)cfg->header_timeout_ms;
    rt->limits.body_timeout_ms = (uint64_t)cfg->body_timeout_ms;
    rt->limits.idle_timeout_ms = (uint64_t)cfg->idle_timeout_ms;
    /* The control listener also takes sealed usage segments (one per
     * request body): at most spool_seal_bytes plus one commit of at most as
     * much, plus framing (docs/meter.md). */
    rt->control_limits = rt->limits;
    size_t segment_max = kp_metering_segment_max(cfg);
    if (rt->control_limits.max_body_bytes < segment_max)
        rt->control_limits.max_body_bytes = segment_max;
}

static int run(struct kp_config *cfg)
{
    char errmsg[512];
    struct kp_datadir dd;
    struct kp_runtime rt = {0};
    struct kp_node node = {0};
    int code = 1;

    if (kp_datadir_open(&dd, cfg->data_dir, errmsg, sizeof(errmsg)) != KP_OK) {
        kp_error("main", "%s", errmsg);
        return 1;
    }
    rt.cfg = cfg;
    rt.n_workers = cfg->workers > 0 ? cfg->workers : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (rt.n_workers < 1)
        rt.n_workers = 1;
    rt.started_unix_ms = kp_now_unix_ms();
    rt.main_loop = uv_default_loop();
    apply_limits(&rt, cfg);
    node.rt = &rt;
    node.cfg = cfg;
    rt.control_arg = &node;
    rt.on_stop = kp_node_stop;
    rt.on_hup = kp_node_hup;
    rt.on_drain = kp_node_draining;
    kp_view_slot_init(&node.views);
    node.usage = kp_usage_log_new();
    int rc = node.usage != NULL ? kp_node_tls_open(&node, errmsg, sizeof(errmsg)) : KP_ENOMEM;
    if (rc == KP_OK)
        rc = kp_node_prepare(&node, errmsg, sizeof(errmsg));
    if (rc != KP_OK) {
        kp_error("main", "cannot start: %s", node.usage ? errmsg : "out of memory");
        code = rc == KP_ECONFIG ? 2 : 1;
        goto out;
    }
    node.router = (struct kp_router_shared){
        .views = &node.views,
        .node_name = cfg->node_name,
        .kek = node.kek,
        .prev_kek = node.prev_kek,
        .usage = {kp_metering_record, kp_metering_accepting, &node},
        .max_inflight = (uint32_t)cfg->max_inflight_calls,
    };
    rc = kp_metering_open(&node, errmsg, sizeof(errmsg));
    if (rc != KP_OK) {
        kp_error("main", "cannot start: %s", errmsg);
        code = rc == KP_ECONFIG ? 2 : 1;
        goto out;
    }
    if (kp_lease_start(&node) != KP_OK) {
        kp_error("main", "cannot start: out of memory");
        goto out;
    }
    if (kp_telemetry_open(&node, errmsg, sizeof(errmsg)) != KP_OK) {
        kp_error("main", "cannot start: %s", errmsg);
        goto out;
    }
    node.health = kp_health_queue_new(&node, rt.main_loop);
    node.router.health =
        (struct kp_health_sink){node.health ? kp_health_report : NULL, node.health};
    rt.router = &node.router;

    if (kp_runtime_run(&rt, errmsg, sizeof(errmsg)) != KP_OK) {
        kp_error("main", "cannot start: %s", errmsg);
        goto out;
    }
    rc = kp_node_start(&node, errmsg, sizeof(errmsg));
    if (rc != KP_OK) {
        kp_error("main", "cannot start: %s", errmsg);
        /* kp_node_stop closes what was opened (the health queue's handle
         * would keep the loop, and this process, alive); n->store is NULL. */
        kp_runtime_fail(&rt, rc == KP_ECONFIG ? 2 : 1, "cannot start");
        code = kp_runtime_wait(&rt);
        goto out;
    }
    if (kp_metering_start(&node, errmsg, sizeof(errmsg)) != KP_OK) {
        kp_error("main", "cannot start: %s", errmsg);
        kp_runtime_fail(&rt, 1, "cannot start");
        code = kp_runtime_wait(&rt);
        goto out;
    }
    if (kp_datadir_write_listen(&dd, rt.gateway_addr, rt.control_addr, node.raft_addr, errmsg,
                                sizeof(errmsg)) != KP_OK)
        kp_warn("main", "%s", errmsg);
    kp_info("main", "keyplaned %s started: node %s, %d workers, gateway %s://%s, control %s://%s",
            kp_version(), cfg->node_name, rt.n_workers, cfg->tls_gateway ? "https" : "http",
            rt.gateway_addr, cfg->tls_control ? "https" : "http", rt.control_addr);
    code = kp_runtime_wait(&rt);
    kp_info("main", "stopped");
out:
    kp_node_release_raft_port(&node);
    kp_health_queue_close(node.health);
    /* Let closing handles (raft, timers) finish. */
    uv_run(rt.main_loop, UV_RUN_DEFAULT);
    if (uv_loop_close(rt.main_loop) != 0)
        kp_warn("main", "main loop closed with open handles");
    kp_metering_close(&node);
    kp_telemetry_close(&node); /* the workers and the main loop are done */
    kp_health_queue_free(node.health);
    kp_budget_ledger_free(node.router.budgets);
    kp_view_slot_close(&node.views);
    kp_usage_log_free(node.usage);
    kp_seal_kek_free(node.kek);
    kp_seal_kek_free(node.prev_kek);
    kp_node_tls_close(&rt);
    kp_datadir_close(&dd);
    return code;
}

int main(int argc, char **argv)
{
    struct kp_config cfg = {0};
    enum kp_config_action action;
    char errmsg[1024];

    kp_log_init_from_env();
    /* libuv's threadpool runs raft's disk work and node-to-node calls
     * (forward.c); its default of 4 threads is easily held up. */
    setenv("UV_THREADPOOL_SIZE", "16", 0);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "keyplaned: libcurl cannot initialise\n");
        return 1;
    }
    if (kp_config_load(&cfg, argc, argv, environ, &action, errmsg, sizeof(errmsg)) != 0) {
        fprintf(stderr, "keyplaned: %s\n", errmsg);
        return 2;
    }
    int code = 0;
    switch (action) {
    case KP_CONFIG_HELP:
        fputs(kp_config_usage(), stdout);
        break;
    case KP_CONFIG_VERSION:
        printf("keyplaned %s (commit %s)\n", kp_version(), kp_build_commit());
        break;
    case KP_CONFIG_CHECK:
        kp_config_print(&cfg, stdout);
        fprintf(stderr, "keyplaned: configuration is valid\n");
        break;
    case KP_CONFIG_RECOVER:
        code = kp_node_recover(&cfg, errmsg, sizeof(errmsg));
        if (code != KP_OK)
            kp_error("main", "%s", errmsg);
        code = code == KP_OK ? 0 : code == KP_ECONFIG ? 2 : 1;
        break;
    case KP_CONFIG_RUN: {
        int level = kp_log_parse_level(cfg.log_level ? cfg.log_level : "info");
        if (level >= 0 && !kp_trace_enabled)
            kp_log_set_level(level);
        code = run(&cfg);
        break;
    }
    }
    kp_config_free(&cfg);
    curl_global_cleanup();
    return code;
}

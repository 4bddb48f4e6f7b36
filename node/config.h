/* keyplaned configuration: defaults, then the YAML file, then KEYPLANE_*
 * environment variables, then command-line flags (each later source wins).
 *
 * Every setting has one name used in all three places: YAML key
 * `gateway_listen`, environment `KEYPLANE_GATEWAY_LISTEN`, flag
 * `--gateway-listen`. Errors name the source, line and field. */
#ifndef KP_NODE_CONFIG_H
#define KP_NODE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct kp_config {
    char *config_file;              /* NULL when none */
    char *data_dir;                 /* default "./keyplane-data" */
    char *gateway_listen;           /* default "127.0.0.1:7600" */
    char *control_listen;           /* default "127.0.0.1:7601" */
    char *raft_listen;              /* default "127.0.0.1:7602" */
    char *join;                     /* comma-separated host:port list, NULL when none */
    char *master_key_file;          /* NULL when none */
    char *previous_master_key_file; /* NULL when none: during a rotation only */
    char *restore;                  /* a registry snapshot to start a new cluster from; NULL
                                       when none; read only with an empty data directory */
    char *node_name;                /* default: the host name */
    int workers;                    /* 0 = one per core (default) */
    char *log_level;                /* "info" */
    char *raft_role;                /* "voter": the role asked for when joining */
    char *meter;                    /* "auto", "yes", "no" */
    int64_t meter_retention_ms;     /* 720 h */
    int64_t spool_max_bytes;        /* 1 GiB */
    char *spool_full;               /* "serve" or "refuse" */
    int64_t spool_seal_bytes;       /* 2 MiB */
    int64_t spool_seal_age_ms;      /* 10 s */
    int snapshot_threshold;         /* 1024 Raft entries between snapshots */
    int snapshot_trailing;          /* 128 entries kept after a snapshot */
    int64_t election_timeout_ms;    /* 1000 */
    int64_t heartbeat_timeout_ms;   /* 100 */
    int64_t raft_segment_bytes;     /* 8 MiB: raft_uv's open segment size */
    /* HTTP limits (node/core/http.h) */
    int64_t max_body_bytes;         /* 8 MiB */
    int64_t max_header_bytes;       /* 32 KiB */
    int64_t max_headers;            /* 100 */
    int64_t header_timeout_ms;      /* 10000 */
    int64_t body_timeout_ms;        /* 30000 */
    int64_t idle_timeout_ms;        /* 60000 */
    int64_t drain_timeout_ms;       /* 30000: how long SIGTERM waits for in-flight work */
    int64_t drain_delay_ms;         /* 0: after SIGTERM, keep accepting this long with /readyz
                                       answering 503, so load balancers stop sending first */
    int64_t max_inflight_calls;     /* 20000: gateway calls in flight on the node beyond which
                                       new ones are answered 503 overloaded; 0: no cap */
    int64_t ready_max_staleness_ms; /* 10 s: /readyz fails when no leader was known for longer */
    int64_t alert_interval_ms;      /* 5 s: how often the leader evaluates alert rules */
    int64_t canary_interval_ms;     /* 5 min: how often the leader probes each key */
    /* Traces and the access log (docs/observability.md) */
    char *otlp_endpoint;       /* http(s)://collector:4318, NULL: no export (default) */
    char *otlp_headers;        /* "Name: value" lines joined by '\n' (secret values), NULL */
    double trace_sample_ratio; /* 1.0: the share of traces without a parent kept */
    int64_t otlp_timeout_ms;   /* 10 s per export request */
    int trace_queue_spans;     /* 4096 spans waiting at most */
    char *access_log;          /* NULL: off (default), "stderr", or a file */
    /* TLS (YAML section tls:, docs/operations.md): the three files, all or
     * none, make Raft links mutual TLS; the listeners use them when
     * tls.gateway / tls.control say so. Files are checked when the node
     * starts, not here. */
    char *tls_cert_file;          /* tls.cert_file: this node's certificate (PEM), NULL */
    char *tls_key_file;           /* tls.key_file: its private key (PEM), NULL */
    char *tls_ca_file;            /* tls.ca_file: the cluster CA (PEM), NULL */
    bool tls_gateway;             /* tls.gateway: serve the gateway port over TLS */
    bool tls_control;             /* tls.control: serve the control port over TLS, and call
                                     other nodes' control ports over https */
    char *tls_client_ca_file;     /* tls.client_ca_file: CA of client certificates, NULL */
    bool tls_require_client_cert; /* tls.require_client_cert */
};

/* What the command line asked for besides settings. */
enum kp_config_action {
    KP_CONFIG_RUN,
    KP_CONFIG_HELP,
    KP_CONFIG_VERSION,
    KP_CONFIG_CHECK,   /* --check-config: validate, print a summary, exit */
    KP_CONFIG_RECOVER, /* --recover: make this stopped node a one-voter cluster, exit */
};

/* Fill @cfg from defaults, file, environment (@envp, NULL-terminated
 * "NAME=value" strings, normally `environ`) and flags (argc/argv, argv[0] is
 * the program). On error returns non-zero and writes a message naming the
 * source and field into errmsg, e.g.
 * "keyplane.yaml:7: workers: expected an integer from 0 to 1024, got \"many\"".
 *
 * @cfg must be zeroed (`struct kp_config cfg = {0};`) or hold an earlier
 * load: on success its old values are freed and replaced. On error it is
 * left exactly as it was. Errors are KP_ECONFIG (bad input; errmsg says
 * what) or KP_ENOMEM ("out of memory"). The file is named by --config or
 * KEYPLANE_CONFIG; with neither, no file is read. -h/--help and -V/--version
 * anywhere on the line return 0 with that action and @cfg holding the
 * defaults, without reading the file or the environment. */
int kp_config_load(struct kp_config *cfg, int argc, char **argv, char **envp,
                   enum kp_config_action *action, char *errmsg, size_t errlen);
/* Frees every value and zeroes @cfg; calling it again is harmless. */
void kp_config_free(struct kp_config *cfg);
/* The --help text, generated from the settings table (static storage; call
 * from one thread). */
const char *kp_config_usage(void);
/* The TLS settings that go together (tls.gateway needs a certificate and a
 * key, ...); kp_config_load runs it. The files themselves are read when
 * the node starts (node/tls.c). */
int kp_config_check_tls(const struct kp_config *cfg, char *errmsg, size_t errlen);
/* Print the effective configuration as YAML (for --check-config). */
void kp_config_print(const struct kp_config *cfg, FILE *out);

#endif

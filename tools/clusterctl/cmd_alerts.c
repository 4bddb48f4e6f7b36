/* `alerts list|show|ack|dead-letters`: the alerts the Raft leader raised
 * (GET /admin/v1/alerts..., docs/alerts.md). Reading needs read_alerts
 * (admin, operator, finance, auditor); ack needs operate. Rules and
 * webhooks are registry entities: `clusterctl get alert-rules`, `put
 * webhooks ...`. */
#include <stdio.h>
#include <string.h>

#include "clusterctl.h"

static int alerts_list(struct kp_ctl *ctl, int argc, char **argv);
static int alerts_show(struct kp_ctl *ctl, int argc, char **argv);
static int alerts_ack(struct kp_ctl *ctl, int argc, char **argv);
static int alerts_dead(struct kp_ctl *ctl, int argc, char **argv);

static const struct kp_ctl_command alerts_commands[] = {
    {"list", "[--all | --resolved] [--rule R] [--severity S]",
     "open alerts, newest first (--all: resolved ones too)", alerts_list, false},
    {"show", "ID", "one alert: message, recommended action, deliveries", alerts_show, false},
    {"ack", "ID", "acknowledge an alert (audited; it stays open until its cause is gone)",
     alerts_ack, false},
    {"dead-letters", "", "deliveries to webhooks given up after every retry", alerts_dead, false},
};
#define N_CMDS (sizeof(alerts_commands) / sizeof(alerts_commands[0]))

int kp_ctl__cmd_alerts(struct kp_ctl *ctl, int argc, char **argv)
{
    return kp_ctl__group(ctl, "alerts", alerts_commands, N_CMDS, argc, argv);
}

static const struct kp_ctl_column columns[] = {
    {"SEVERITY", "severity", NULL}, {"STATE", "state", NULL},      {"ID", "id", NULL},
    {"SUBJECT", "subject", NULL},   {"SINCE", "started_at", NULL}, {"ACKED_BY", "acked_by", NULL},
};
#define N_COLS (sizeof(columns) / sizeof(columns[0]))

static const struct kp_ctl_column record[] = {
    {"ID", "id", NULL},
    {"SEVERITY", "severity", NULL},
    {"STATE", "state", NULL},
    {"RULE", "rule", NULL},
    {"SUBJECT", "subject", NULL},
    {"MESSAGE", "message", NULL},
    {"ACTION", "action", NULL},
    {"STARTED", "started_at", NULL},
    {"RESOLVED", "resolved_at", NULL},
    {"ACKED_BY", "acked_by", NULL},
    {"ACKED", "acked_at", NULL},
    {"VALUE", "last_value", NULL},
};
#define N_RECORD (sizeof(record) / sizeof(record[0]))

static const struct kp_ctl_column delivery_columns[] = {
    {"WEBHOOK", "webhook", NULL},
    {"EVENT", "event", NULL},
    {"STATE", "state", NULL},
    {"ATTEMPTS", "attempts", NULL},
    {"ERROR", "error", NULL},
    {"AT", "at_ms", kp_ctl__cell_time},
    {"DELIVERY_ID", "delivery_id", NULL},
};

static const struct kp_ctl_column dead_columns[] = {
    {"ALERT", "alert", NULL}, {"SEVERITY", "severity", NULL}, {"WEBHOOK", "webhook", NULL},
    {"EVENT", "event", NULL}, {"ATTEMPTS", "attempts", NULL}, {"ERROR", "error", NULL},
    {"AT", "at", NULL},
};

static int alerts_list(struct kp_ctl *ctl, int argc, char **argv)
{
    bool all = false, resolved = false;
    const char *rule = NULL, *severity = NULL;
    const struct kp_ctl_flag flags[] = {
        {"all", 'a', KP_CTL_FLAG_BOOL, &all},
        {"resolved", 0, KP_CTL_FLAG_BOOL, &resolved},
        {"rule", 0, KP_CTL_FLAG_VALUE, &rule},
        {"severity", 0, KP_CTL_FLAG_VALUE, &severity},
    };
    struct kp_buf path;
    json_t *answer = NULL;
    int first, rc = kp_ctl__parse(ctl, argc, argv, flags, 4, &first);
    kp_buf_init(&path);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__positionals(ctl, argc - first, 0, 0, alerts_commands[0].synopsis, false);
    if (rc == KP_CTL_EXIT_OK && all && resolved) {
        kp_ctl__usage_error(ctl, "alerts list: --all or --resolved, not both");
        rc = KP_CTL_EXIT_USAGE;
    }
    if (rc == KP_CTL_EXIT_OK &&
        (kp_buf_append_lit(&path, "/admin/v1/alerts") != 0 ||
         kp_ctl__query_add(&path, "state",
                           all        ? "all"
                           : resolved ? "resolved"
                                      : "open") != 0 ||
         (rule != NULL && kp_ctl__query_add(&path, "rule", rule) != 0) ||
         (severity != NULL && kp_ctl__query_add(&path, "severity", severity) != 0))) {
        kp_ctl__error(ctl, "out of memory");
        rc = KP_CTL_EXIT_NO;
    }
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__resolve(ctl);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__call(ctl, "GET", path.data, NULL, NULL, &answer);
    if (rc == KP_CTL_EXIT_OK) {
        json_t *items = json_object_get(answer, "items");
        if (ctl->output != KP_CTL_OUTPUT_TABLE)
            kp_ctl__print_doc(ctl, answer);
        else if (json_array_size(items) == 0)
            fprintf(stderr, "%s: no %s alerts\n", ctl->prog,
                    all        ? "open or resolved"
                    : resolved ? "resolved"
                               : "open");
        else
            kp_ctl__print_table(columns, N_COLS, items);
    }
    json_decref(answer);
    kp_buf_free(&path);
    return rc;
}

/* GET or POST /admin/v1/alerts/ID[/ack]; the answer is the alert. */
static int one(struct kp_ctl *ctl, int argc, char **argv, size_t cmd, const char *method,
               const char *suffix, json_t **answer)
{
    char *path = NULL;
    int first, rc = kp_ctl__parse(ctl, argc, argv, NULL, 0, &first);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__positionals(ctl, argc - first, 1, 1, alerts_commands[cmd].synopsis, false);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__resolve(ctl);
    if (rc == KP_CTL_EXIT_OK &&
        (path = kp_ctl__path("alerts", argv[first], suffix, NULL)) == NULL) {
        kp_ctl__error(ctl, "out of memory");
        rc = KP_CTL_EXIT_NO;
    }
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__call(ctl, method, path, NULL, NULL, answer);
    kp_free(path);
    return rc;
}

static int alerts_show(struct kp_ctl *ctl, int argc, char **argv)
{
    json_t *answer = NULL;
    int rc = one(ctl, argc, argv, 1, "GET", NULL, &answer);
    if (rc == KP_CTL_EXIT_OK) {
        if (ctl->output != KP_CTL_OUTPUT_TABLE) {
            kp_ctl__print_doc(ctl, answer);
        } else {
            kp_ctl__print_record(record, N_RECORD, answer);
            json_t *d = json_object_get(answer, "deliveries");
            if (json_array_size(d) > 0) {
                printf("\n");
                kp_ctl__print_table(delivery_columns,
                                    sizeof(delivery_columns) / sizeof(delivery_columns[0]), d);
            }
        }
    }
    json_decref(answer);
    return rc;
}

static int alerts_ack(struct kp_ctl *ctl, int argc, char **argv)
{
    json_t *answer = NULL;
    int rc = one(ctl, argc, argv, 2, "POST", "ack", &answer);
    if (rc == KP_CTL_EXIT_OK) {
        if (ctl->output != KP_CTL_OUTPUT_TABLE) {
            kp_ctl__print_doc(ctl, answer);
        } else {
            struct kp_buf id, by;
            kp_buf_init(&id);
            kp_buf_init(&by);
            kp_ctl__cell_text(&id, json_object_get(answer, "id"), NULL);
            kp_ctl__cell_text(&by, json_object_get(answer, "acked_by"), NULL);
            printf("alert %s: acknowledged by %s\n", id.len ? id.data : "-",
                   by.len ? by.data : "-");
            kp_buf_free(&id);
            kp_buf_free(&by);
        }
    }
    json_decref(answer);
    return rc;
}

static int alerts_dead(struct kp_ctl *ctl, int argc, char **argv)
{
    json_t *answer = NULL;
    int first, rc = kp_ctl__parse(ctl, argc, argv, NULL, 0, &first);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__positionals(ctl, argc - first, 0, 0, "", false);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__resolve(ctl);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__call(ctl, "GET", "/admin/v1/alerts/dead-letters", NULL, NULL, &answer);
    if (rc == KP_CTL_EXIT_OK) {
        json_t *items = json_object_get(answer, "items");
        if (ctl->output != KP_CTL_OUTPUT_TABLE)
            kp_ctl__print_doc(ctl, answer);
        else if (json_array_size(items) == 0)
            fprintf(stderr, "%s: no dead letters: every delivery ended or is being tried\n",
                    ctl->prog);
        else
            kp_ctl__print_table(dead_columns, sizeof(dead_columns) / sizeof(dead_columns[0]),
                                items);
    }
    json_decref(answer);
    return rc;
}

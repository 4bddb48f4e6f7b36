/* `audit list` and `audit verify`: the registry's hash-chained audit log.
 *
 * list passes its filters to GET /admin/v1/audit as they are, after turning
 * --since and --until into Unix ms (args.c accepts "1h", RFC 3339 times and
 * dates), and says how to fetch the next page when the page is full. verify
 * is for scripts: exit 0 when the server checked the chain and it holds, 1
 * naming the first broken link. */
#include <stdio.h>
#include <string.h>

#include "clusterctl.h"

enum { DEFAULT_LIMIT = 100, MAX_LIMIT = 1000 };

static int audit_list(struct kp_ctl *ctl, int argc, char **argv);
static int audit_verify(struct kp_ctl *ctl, int argc, char **argv);

static const struct kp_ctl_command audit_commands[] = {
    {"list",
     "[--actor A] [--target T] [--action X] [--since WHEN] [--until WHEN] [--after-seq N] "
     "[--limit N]",
     "list audit entries (WHEN: 1h, 7d, 2026-01-02, 2026-01-02T03:04:05Z)", audit_list, false},
    {"verify", "", "check the audit chain; exit 0 when it holds, 1 naming the first broken link",
     audit_verify, false},
};

int kp_ctl__cmd_audit(struct kp_ctl *ctl, int argc, char **argv)
{
    return kp_ctl__group(ctl, "audit", audit_commands,
                         sizeof(audit_commands) / sizeof(audit_commands[0]), argc, argv);
}

static const struct kp_ctl_column entry_columns[] = {
    {"SEQ", "seq", NULL},       {"TIME", "ts", kp_ctl__cell_time}, {"ACTOR", "actor", NULL},
    {"ROLE", "role", NULL},     {"ACTION", "action", NULL},        {"TARGET", "target", NULL},
    {"RESULT", "result", NULL},
};

struct list_args {
    const char *actor, *target, *action, *since, *until, *after_seq, *limit;
};

/* The query string; usage errors for values that do not parse. */
static int build_query(struct kp_ctl *ctl, const struct list_args *a, struct kp_buf *path,
                       uint64_t *limit)
{
    const char *text[] = {a->actor, a->target, a->action};
    const char *names[] = {"actor", "target", "action"};
    char num[32];
    int64_t ms;
    uint64_t n;
    int rc = 0;

    *limit = DEFAULT_LIMIT;
    for (size_t i = 0; i < 3; i++) {
        if (text[i] != NULL)
            rc |= kp_ctl__query_add(path, names[i], text[i]);
    }
    if (a->since != NULL) {
        if (kp_ctl__parse_time(ctl, "--since", a->since, &ms) != KP_CTL_EXIT_OK)
            return KP_CTL_EXIT_USAGE;
        snprintf(num, sizeof(num), "%lld", (long long)ms);
        rc |= kp_ctl__query_add(path, "since_ms", num);
    }
    if (a->until != NULL) {
        if (kp_ctl__parse_time(ctl, "--until", a->until, &ms) != KP_CTL_EXIT_OK)
            return KP_CTL_EXIT_USAGE;
        snprintf(num, sizeof(num), "%lld", (long long)ms);
        rc |= kp_ctl__query_add(path, "until_ms", num);
    }
    if (a->after_seq != NULL) {
        if (kp_ctl__parse_uint(ctl, "--after-seq", a->after_seq, INT64_MAX, &n) != KP_CTL_EXIT_OK)
            return KP_CTL_EXIT_USAGE;
        rc |= kp_ctl__query_add(path, "after_seq", a->after_seq);
    }
    if (a->limit != NULL) {
        if (kp_ctl__parse_uint(ctl, "--limit", a->limit, MAX_LIMIT, limit) != KP_CTL_EXIT_OK)
            return KP_CTL_EXIT_USAGE;
        if (*limit == 0) {
            kp_ctl__usage_error(ctl, "audit list: --limit must be 1 to %d", MAX_LIMIT);
            return KP_CTL_EXIT_USAGE;
        }
        rc |= kp_ctl__query_add(path, "limit", a->limit);
    }
    if (rc != 0) {
        kp_ctl__error(ctl, "out of memory");
        return KP_CTL_EXIT_NO;
    }
    return KP_CTL_EXIT_OK;
}

static void print_entries(struct kp_ctl *ctl, json_t *answer, uint64_t limit)
{
    json_t *entries = json_object_get(answer, "entries");
    size_t n = json_array_size(entries);

    if (ctl->output != KP_CTL_OUTPUT_TABLE) {
        kp_ctl__print_doc(ctl, answer);
        return;
    }
    if (n == 0) {
        fprintf(stderr, "%s: no audit entries match\n", ctl->prog);
        return;
    }
    kp_ctl__print_table(entry_columns, sizeof(entry_columns) / sizeof(entry_columns[0]), entries);
    if (n >= limit)
        fprintf(stderr,
                "%s: %zu entries shown, there may be more: add --after-seq %" JSON_INTEGER_FORMAT
                " for the next page\n",
                ctl->prog, n,
                json_integer_value(json_object_get(json_array_get(entries, n - 1), "seq")));
}

static int audit_list(struct kp_ctl *ctl, int argc, char **argv)
{
    struct list_args a;
    const struct kp_ctl_flag flags[] = {
        {"actor", 0, KP_CTL_FLAG_VALUE, &a.actor},
        {"target", 0, KP_CTL_FLAG_VALUE, &a.target},
        {"action", 0, KP_CTL_FLAG_VALUE, &a.action},
        {"since", 0, KP_CTL_FLAG_VALUE, &a.since},
        {"until", 0, KP_CTL_FLAG_VALUE, &a.until},
        {"after-seq", 0, KP_CTL_FLAG_VALUE, &a.after_seq},
        {"limit", 0, KP_CTL_FLAG_VALUE, &a.limit},
    };
    struct kp_buf path;
    json_t *answer = NULL;
    uint64_t limit;
    int first, rc;

    memset(&a, 0, sizeof(a));
    kp_buf_init(&path);
    rc = kp_ctl__parse(ctl, argc, argv, flags, sizeof(flags) / sizeof(flags[0]), &first);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__positionals(ctl, argc - first, 0, 0, audit_commands[0].synopsis, false);
    if (rc == KP_CTL_EXIT_OK && kp_buf_append_lit(&path, "/admin/v1/audit") != 0)
        rc = KP_CTL_EXIT_NO;
    if (rc == KP_CTL_EXIT_OK)
        rc = build_query(ctl, &a, &path, &limit);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__resolve(ctl);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__call(ctl, "GET", path.data, NULL, NULL, &answer);
    if (rc == KP_CTL_EXIT_OK)
        print_entries(ctl, answer, limit);
    json_decref(answer);
    kp_buf_free(&path);
    return rc;
}

static int audit_verify(struct kp_ctl *ctl, int argc, char **argv)
{
    json_t *answer = NULL, *head;
    bool ok;
    int rc = kp_ctl__begin(ctl, argc, argv, "");

    if (rc != KP_CTL_EXIT_OK || (rc = kp_ctl__call(ctl, "GET", "/admin/v1/audit/verify", NULL, NULL,
                                                   &answer)) != KP_CTL_EXIT_OK)
        return rc;
    ok = json_is_true(json_object_get(answer, "ok"));
    head = json_object_get(answer, "head");
    if (ctl->output != KP_CTL_OUTPUT_TABLE) {
        kp_ctl__print_doc(ctl, answer);
    } else if (ok) {
        struct kp_buf hash;
        kp_buf_init(&hash);
        kp_ctl__cell_text(&hash, json_object_get(head, "hash"), NULL);
        printf("audit chain verified: %" JSON_INTEGER_FORMAT
               " entries checked; head seq %" JSON_INTEGER_FORMAT ", hash %s\n",
               json_integer_value(json_object_get(answer, "checked")),
               json_integer_value(json_object_get(head, "seq")), hash.len ? hash.data : "-");
        kp_buf_free(&hash);
    } else {
        struct kp_buf why;
        kp_buf_init(&why);
        kp_ctl__cell_text(&why, json_object_get(answer, "message"), NULL);
        printf("audit chain BROKEN at seq %" JSON_INTEGER_FORMAT ": %s\n",
               json_integer_value(json_object_get(answer, "broken_seq")),
               why.len ? why.data : "(no message)");
        kp_buf_free(&why);
    }
    if (!ok)
        fprintf(stderr,
                "%s: the audit chain does not verify: entries from the seq above on may have "
                "been altered; keep the nodes' data directories for investigation\n",
                ctl->prog);
    json_decref(answer);
    return ok ? KP_CTL_EXIT_OK : KP_CTL_EXIT_NO;
}

/* `keys ...`: provider keys and their secrets.
 *
 * A key's secret is read from stdin (prompted for without echo when stdin
 * is a terminal) or from --secret-file, never from the command line, where
 * the process list and the shell history would keep it: --secret is refused
 * and an extra argument is never repeated in a message. secret.c reads it
 * and sends it; both copies are wiped once the request is done.
 *
 * add creates the key with its first secret (If-None-Match: *, so an
 * existing key is a 409, not replaced); rotate adds a new primary secret and
 * keeps the old one usable for --grace; revoke is final and asks for --yes.
 * balance shows a key's prepaid credit less its metered cost, after
 * recording a new credit (--set) or a top-up (--topup) when asked. */
#include <stdio.h>
#include <string.h>

#include "clusterctl.h"

static int keys_add(struct kp_ctl *ctl, int argc, char **argv);
static int keys_rotate(struct kp_ctl *ctl, int argc, char **argv);
static int keys_disable(struct kp_ctl *ctl, int argc, char **argv);
static int keys_enable(struct kp_ctl *ctl, int argc, char **argv);
static int keys_revoke(struct kp_ctl *ctl, int argc, char **argv);
static int keys_retire(struct kp_ctl *ctl, int argc, char **argv);
static int keys_list(struct kp_ctl *ctl, int argc, char **argv);
static int keys_balance(struct kp_ctl *ctl, int argc, char **argv);
static int keys_health(struct kp_ctl *ctl, int argc, char **argv);

static const struct kp_ctl_command keys_commands[] = {
    {"list", "", "list the keys (same as clusterctl get keys)", keys_list, false},
    {"add",
     "ID --provider P [--name N] [--owner O] [--tag T]... [--model M]... [--rpm N] [--tpm N] "
     "[--secret-file FILE]",
     "add a key; its secret is read from stdin (or --secret-file), never from the command line",
     keys_add, false},
    {"rotate", "ID [--grace 3600] [--secret-file FILE]",
     "give a key a new secret from stdin; the old one stays usable for --grace (default 1h)",
     keys_rotate, false},
    {"disable", "ID", "stop routing to a key (reversible)", keys_disable, false},
    {"enable", "ID", "route to a disabled key again", keys_enable, false},
    {"revoke", "ID --yes", "revoke a key for good: its secrets are erased", keys_revoke, false},
    {"retire", "ID VERSION", "retire an old secret version of a key now", keys_retire, false},
    {"balance", "ID [--set USD [--since TIME]] [--topup USD [--note TEXT]]",
     "show a key's prepaid credit, spent, remaining and projected exhaustion; --set records the "
     "credit, --topup adds to it",
     keys_balance, false},
    {"health", "[ID]",
     "every key's status, last error and last canary; with ID, the key's record and its status "
     "history",
     keys_health, false},
};

int kp_ctl__cmd_keys(struct kp_ctl *ctl, int argc, char **argv)
{
    return kp_ctl__group(ctl, "keys", keys_commands,
                         sizeof(keys_commands) / sizeof(keys_commands[0]), argc, argv);
}

static int keys_list(struct kp_ctl *ctl, int argc, char **argv)
{
    return kp_ctl__list_kind(ctl, "keys", argc, argv);
}

/* --- what the answers say -------------------------------------------------- */

static void print_secret(const json_t *s)
{
    const char *last4 = json_string_value(json_object_get(s, "last4"));
    printf("v%" JSON_INTEGER_FORMAT, json_integer_value(json_object_get(s, "version")));
    if (last4 != NULL) {
        fputs(" (...", stdout);
        kp_ctl__print_clean(stdout, last4);
        putchar(')');
    }
}

/* "key k1: <what>", or the key as JSON/YAML. */
static void print_key_result(struct kp_ctl *ctl, const char *id, json_t *key, const char *what)
{
    json_t *primary = kp_ctl__key_secret_in_state(key, "primary");
    json_t *previous = kp_ctl__key_secret_in_state(key, "previous");

    if (ctl->output != KP_CTL_OUTPUT_TABLE) {
        kp_ctl__print_doc(ctl, key);
        return;
    }
    fputs("key ", stdout);
    kp_ctl__print_clean(stdout, id);
    printf(": %s", what);
    if (primary != NULL && (strcmp(what, "added") == 0 || strcmp(what, "rotated") == 0)) {
        fputs("; primary secret ", stdout);
        print_secret(primary);
    }
    if (previous != NULL && strcmp(what, "rotated") == 0) {
        char when[40];
        kp_format_time_ms(json_integer_value(json_object_get(previous, "retire_after_ms")), when,
                          sizeof(when));
        fputs("; previous ", stdout);
        print_secret(previous);
        printf(" stays usable until %s", when);
    }
    putchar('\n');
}

/* --- commands -------------------------------------------------------------- */

static int add_fields(struct kp_ctl *ctl, json_t *fields, const char *rpm, const char *tpm)
{
    uint64_t n;
    int rc;

    if (rpm != NULL) {
        if ((rc = kp_ctl__parse_uint(ctl, "--rpm", rpm, 1000000000000ULL, &n)) != KP_CTL_EXIT_OK)
            return rc;
        json_object_set_new(fields, "rpm", json_integer((json_int_t)n));
    }
    if (tpm != NULL) {
        if ((rc = kp_ctl__parse_uint(ctl, "--tpm", tpm, 1000000000000000ULL, &n)) != KP_CTL_EXIT_OK)
            return rc;
        json_object_set_new(fields, "tpm", json_integer((json_int_t)n));
    }
    return KP_CTL_EXIT_OK;
}

static int keys_add(struct kp_ctl *ctl, int argc, char **argv)
{
    const char *provider = NULL, *name = NULL, *owner = NULL, *file = NULL;
    const char *rpm = NULL, *tpm = NULL;
    json_t *tags = NULL, *models = NULL, *fields = NULL, *answer = NULL;
    const struct kp_ctl_flag flags[] = {
        {"provider", 0, KP_CTL_FLAG_VALUE, &provider}, {"name", 0, KP_CTL_FLAG_VALUE, &name},
        {"owner", 0, KP_CTL_FLAG_VALUE, &owner},       {"tag", 0, KP_CTL_FLAG_LIST, &tags},
        {"model", 0, KP_CTL_FLAG_LIST, &models},       {"rpm", 0, KP_CTL_FLAG_VALUE, &rpm},
        {"tpm", 0, KP_CTL_FLAG_VALUE, &tpm},           {"secret-file", 0, KP_CTL_FLAG_VALUE, &file},
        {"secret", 0, KP_CTL_FLAG_SECRET, NULL},
    };
    const char *const headers[] = {"If-None-Match: *", NULL};
    struct kp_ctl_secret secret;
    char *path = NULL;
    int first, rc;

    secret.len = 0;
    rc = kp_ctl__parse(ctl, argc, argv, flags, sizeof(flags) / sizeof(flags[0]), &first);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__positionals(ctl, argc - first, 1, 1, keys_commands[1].synopsis, true);
    if (rc == KP_CTL_EXIT_OK && provider == NULL) {
        kp_ctl__usage_error(ctl, "keys add: --provider is required (clusterctl get providers "
                                 "lists them)");
        rc = KP_CTL_EXIT_USAGE;
    }
    if (rc == KP_CTL_EXIT_OK) {
        fields = json_pack("{s:s, s:s*, s:s*, s:O*, s:O*}", "provider", provider, "name", name,
                           "owner", owner, "tags", tags, "models", models);
        if (fields == NULL) {
            kp_ctl__usage_error(ctl, "keys add: the values must be valid UTF-8");
            rc = KP_CTL_EXIT_USAGE;
        } else {
            rc = add_fields(ctl, fields, rpm, tpm);
        }
    }
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__read_secret(ctl, file, argv[first], &secret);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__resolve(ctl);
    if (rc == KP_CTL_EXIT_OK && (path = kp_ctl__path("keys", argv[first], NULL)) == NULL)
        rc = KP_CTL_EXIT_NO;
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__send_secret(ctl, "PUT", path, fields, &secret, headers, &answer);
    if (rc == KP_CTL_EXIT_OK)
        print_key_result(ctl, argv[first], answer, "added");
    kp_ctl__secret_wipe(&secret);
    json_decref(tags);
    json_decref(models);
    json_decref(fields);
    json_decref(answer);
    kp_free(path);
    return rc;
}

static int keys_rotate(struct kp_ctl *ctl, int argc, char **argv)
{
    const char *file = NULL, *grace = NULL;
    const struct kp_ctl_flag flags[] = {
        {"grace", 0, KP_CTL_FLAG_VALUE, &grace},
        {"secret-file", 0, KP_CTL_FLAG_VALUE, &file},
        {"secret", 0, KP_CTL_FLAG_SECRET, NULL},
    };
    json_t *fields = json_object(), *answer = NULL;
    struct kp_ctl_secret secret;
    uint64_t seconds;
    char *path = NULL;
    int first, rc;

    secret.len = 0;
    rc = kp_ctl__parse(ctl, argc, argv, flags, sizeof(flags) / sizeof(flags[0]), &first);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__positionals(ctl, argc - first, 1, 1, keys_commands[2].synopsis, true);
    if (rc == KP_CTL_EXIT_OK && grace != NULL &&
        (rc = kp_ctl__parse_duration(ctl, "--grace", grace, &seconds)) == KP_CTL_EXIT_OK)
        json_object_set_new(fields, "grace_seconds", json_integer((json_int_t)seconds));
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__read_secret(ctl, file, argv[first], &secret);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__resolve(ctl);
    if (rc == KP_CTL_EXIT_OK && (path = kp_ctl__path("keys", argv[first], "secret", NULL)) == NULL)
        rc = KP_CTL_EXIT_NO;
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__send_secret(ctl, "POST", path, fields, &secret, NULL, &answer);
    if (rc == KP_CTL_EXIT_OK)
        print_key_result(ctl, argv[first], answer, "rotated");
    kp_ctl__secret_wipe(&secret);
    json_decref(fields);
    json_decref(answer);
    kp_free(path);
    return rc;
}

/* POST /admin/v1/keys/ID/ACTION for the one-ID subcommands. */
static int key_action(struct kp_ctl *ctl, const char *id, const char *action, const char *done)
{
    char *path = kp_ctl__path("keys", id, action, NULL);
    json_t *answer = NULL;
    int rc;

    if (path == NULL) {
        kp_ctl__error(ctl, "out of memory");
        return KP_CTL_EXIT_NO;
    }
    rc = kp_ctl__call(ctl, "POST", path, NULL, NULL, &answer);
    if (rc == KP_CTL_EXIT_OK)
        print_key_result(ctl, id, answer, done);
    json_decref(answer);
    kp_free(path);
    return rc;
}

static int one_id_action(struct kp_ctl *ctl, int argc, char **argv, const char *action,
                         const char *done)
{
    int first, rc = kp_ctl__parse(ctl, argc, argv, NULL, 0, &first);

    if (rc != KP_CTL_EXIT_OK ||
        (rc = kp_ctl__positionals(ctl, argc - first, 1, 1, "ID", false)) != KP_CTL_EXIT_OK ||
        (rc = kp_ctl__resolve(ctl)) != KP_CTL_EXIT_OK)
        return rc;
    return key_action(ctl, argv[first], action, done);
}

static int keys_disable(struct kp_ctl *ctl, int argc, char **argv)
{
    return one_id_action(ctl, argc, argv, "disable", "disabled");
}

static int keys_enable(struct kp_ctl *ctl, int argc, char **argv)
{
    return one_id_action(ctl, argc, argv, "enable", "enabled");
}

static int keys_revoke(struct kp_ctl *ctl, int argc, char **argv)
{
    bool yes = false;
    const struct kp_ctl_flag flags[] = {{"yes", 0, KP_CTL_FLAG_BOOL, &yes}};
    int first, rc = kp_ctl__parse(ctl, argc, argv, flags, 1, &first);

    if (rc != KP_CTL_EXIT_OK ||
        (rc = kp_ctl__positionals(ctl, argc - first, 1, 1, "ID --yes", false)) != KP_CTL_EXIT_OK)
        return rc;
    if (!yes) {
        kp_ctl__error(ctl,
                      "keys revoke: revoking key %s is final: its secrets are erased and it can "
                      "never be enabled again. To stop using it for now, run clusterctl keys "
                      "disable %s; to revoke it, run the command again with --yes",
                      argv[first], argv[first]);
        return KP_CTL_EXIT_USAGE;
    }
    if ((rc = kp_ctl__resolve(ctl)) != KP_CTL_EXIT_OK)
        return rc;
    return key_action(ctl, argv[first], "revoke", "revoked (final; its secrets are erased)");
}

static int keys_retire(struct kp_ctl *ctl, int argc, char **argv)
{
    char done[64];
    uint64_t version;
    char *path = NULL;
    json_t *answer = NULL;
    int first, rc = kp_ctl__parse(ctl, argc, argv, NULL, 0, &first);

    if (rc != KP_CTL_EXIT_OK ||
        (rc = kp_ctl__positionals(ctl, argc - first, 2, 2, "ID VERSION", false)) !=
            KP_CTL_EXIT_OK ||
        (rc = kp_ctl__parse_uint(ctl, "VERSION", argv[first + 1], INT64_MAX, &version)) !=
            KP_CTL_EXIT_OK ||
        (rc = kp_ctl__resolve(ctl)) != KP_CTL_EXIT_OK)
        return rc;
    if ((path = kp_ctl__path("keys", argv[first], "secrets", argv[first + 1], "retire", NULL)) ==
        NULL) {
        kp_ctl__error(ctl, "out of memory");
        return KP_CTL_EXIT_NO;
    }
    rc = kp_ctl__call(ctl, "POST", path, NULL, NULL, &answer);
    snprintf(done, sizeof(done), "secret v%llu retired", (unsigned long long)version);
    if (rc == KP_CTL_EXIT_OK)
        print_key_result(ctl, argv[first], answer, done);
    json_decref(answer);
    kp_free(path);
    return rc;
}

/* --- balance ------------------------------------------------------------------ */

static const struct kp_ctl_column balance_cols[] = {
    {"KEY", "key", NULL},
    {"CREDIT", "credit_nanousd", kp_ctl__cell_usd},
    {"SINCE", "since", NULL},
    {"SPENT", "spent_nanousd", kp_ctl__cell_usd},
    {"REMAINING", "remaining_nanousd", kp_ctl__cell_usd},
    {"BURN/HOUR", "burn_per_hour_nanousd", kp_ctl__cell_usd},
    {"EXHAUSTED", "exhausted", NULL},
    {"RUNS OUT", "exhaustion_at", NULL},
    {"TOP-UPS", "topups", kp_ctl__cell_count},
};

/* PUT or POST @body (consumed) to @path. */
static int balance_write(struct kp_ctl *ctl, const char *method, char *path, json_t *body)
{
    int rc = path != NULL && body != NULL ? kp_ctl__call(ctl, method, path, body, NULL, NULL)
                                          : KP_CTL_EXIT_NO;
    if (path == NULL || body == NULL)
        kp_ctl__error(ctl, "out of memory");
    json_decref(body);
    kp_free(path);
    return rc;
}

static int keys_balance(struct kp_ctl *ctl, int argc, char **argv)
{
    const char *set = NULL, *since = NULL, *topup = NULL, *note = NULL;
    const struct kp_ctl_flag flags[] = {
        {"set", 0, KP_CTL_FLAG_VALUE, &set},
        {"since", 0, KP_CTL_FLAG_VALUE, &since},
        {"topup", 0, KP_CTL_FLAG_VALUE, &topup},
        {"note", 0, KP_CTL_FLAG_VALUE, &note},
    };
    int64_t since_ms = 0;
    json_t *answer = NULL;
    int first, rc = kp_ctl__parse(ctl, argc, argv, flags, sizeof(flags) / sizeof(flags[0]), &first);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__positionals(ctl, argc - first, 1, 1, "ID", false);
    if (rc == KP_CTL_EXIT_OK &&
        ((since != NULL && set == NULL) || (note != NULL && topup == NULL))) {
        kp_ctl__usage_error(ctl, "keys balance: --since goes with --set, --note with --topup");
        rc = KP_CTL_EXIT_USAGE;
    }
    if (rc == KP_CTL_EXIT_OK && since != NULL)
        rc = kp_ctl__parse_instant(ctl, "--since", since, &since_ms);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__resolve(ctl);
    const char *id = rc == KP_CTL_EXIT_OK ? argv[first] : NULL;
    /* Amounts go as decimal strings: the server parses them exactly. */
    if (rc == KP_CTL_EXIT_OK && set != NULL) {
        json_t *body = json_pack("{s:s}", "credit_usd", set);
        if (body != NULL && since != NULL)
            json_object_set_new(body, "since", json_integer(since_ms));
        rc = balance_write(ctl, "PUT", kp_ctl__path("keys", id, "balance", NULL), body);
    }
    if (rc == KP_CTL_EXIT_OK && topup != NULL) {
        json_t *body = json_pack("{s:s}", "amount_usd", topup);
        if (body != NULL && note != NULL)
            json_object_set_new(body, "note", json_string(note));
        rc = balance_write(ctl, "POST", kp_ctl__path("keys", id, "balance", "topups", NULL), body);
    }
    char *path = rc == KP_CTL_EXIT_OK ? kp_ctl__path("keys", id, "balance", NULL) : NULL;
    if (rc == KP_CTL_EXIT_OK && path == NULL) {
        kp_ctl__error(ctl, "out of memory");
        rc = KP_CTL_EXIT_NO;
    }
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__call(ctl, "GET", path, NULL, NULL, &answer);
    if (rc == KP_CTL_EXIT_OK && ctl->output != KP_CTL_OUTPUT_TABLE)
        kp_ctl__print_doc(ctl, answer);
    else if (rc == KP_CTL_EXIT_OK)
        kp_ctl__print_record(balance_cols, sizeof(balance_cols) / sizeof(balance_cols[0]), answer);
    json_decref(answer);
    kp_free(path);
    return rc;
}

/* --- health -------------------------------------------------------------------- */

static const struct kp_ctl_column health_cols[] = {
    {"KEY", "id", NULL},
    {"STATUS", "status", NULL},
    {"LAST ERROR", "last_error_class", NULL},
    {"SINCE", "last_change_ms", kp_ctl__cell_time},
    {"LAST CANARY", "last_canary_ms", kp_ctl__cell_time},
    {"RESULT", "last_canary_result", NULL},
    {"STREAK", "canary_streak", NULL},
};

static const struct kp_ctl_column history_cols[] = {
    {"AT", "at_ms", kp_ctl__cell_time},
    {"STATUS", "status", NULL},
    {"ERROR", "error_class", NULL},
    {"SOURCE", "source", NULL},
};

/* Every key with its health record, "healthy" where none was ever
 * recorded: keys come from /keys, records from /key-health. */
static int health_rows(struct kp_ctl *ctl, json_t **out)
{
    json_t *keys = NULL, *records = NULL;
    int rc = kp_ctl__get_list(ctl, "keys", false, &keys);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__get_list(ctl, "key-health", false, &records);
    json_t *rows = rc == KP_CTL_EXIT_OK ? json_array() : NULL, *by_id = json_object();
    size_t i;
    json_t *k;
    json_array_foreach(json_object_get(records, "items"), i, k)
    {
        const char *id = json_string_value(json_object_get(k, "id"));
        if (id != NULL)
            json_object_set(by_id, id, k);
    }
    json_array_foreach(json_object_get(keys, "items"), i, k)
    {
        const char *id = json_string_value(json_object_get(k, "id"));
        json_t *row = id != NULL ? json_incref(json_object_get(by_id, id)) : NULL;
        if (row == NULL)
            row = json_pack("{s:s?,s:s}", "id", id, "status", "healthy");
        json_array_append_new(rows, row);
    }
    json_decref(by_id);
    json_decref(keys);
    json_decref(records);
    *out = rows;
    return rc;
}

static int keys_health(struct kp_ctl *ctl, int argc, char **argv)
{
    int first, rc = kp_ctl__parse(ctl, argc, argv, NULL, 0, &first);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__positionals(ctl, argc - first, 0, 1, "[ID]", false);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__resolve(ctl);
    if (rc != KP_CTL_EXIT_OK)
        return rc;
    json_t *answer = NULL;
    if (first == argc) {
        rc = health_rows(ctl, &answer);
        if (rc == KP_CTL_EXIT_OK && ctl->output != KP_CTL_OUTPUT_TABLE)
            kp_ctl__print_doc(ctl, answer);
        else if (rc == KP_CTL_EXIT_OK)
            kp_ctl__print_table(health_cols, sizeof(health_cols) / sizeof(health_cols[0]), answer);
        json_decref(answer);
        return rc;
    }
    char *path = kp_ctl__path("keys", argv[first], "health", NULL);
    if (path == NULL) {
        kp_ctl__error(ctl, "out of memory");
        return KP_CTL_EXIT_NO;
    }
    rc = kp_ctl__call(ctl, "GET", path, NULL, NULL, &answer);
    kp_free(path);
    if (rc == KP_CTL_EXIT_OK && ctl->output != KP_CTL_OUTPUT_TABLE) {
        kp_ctl__print_doc(ctl, answer);
    } else if (rc == KP_CTL_EXIT_OK) {
        kp_ctl__print_record(health_cols, sizeof(health_cols) / sizeof(health_cols[0]), answer);
        json_t *history = json_object_get(answer, "history");
        if (json_array_size(history) > 0) {
            printf("\nHISTORY (oldest first)\n");
            kp_ctl__print_table(history_cols, sizeof(history_cols) / sizeof(history_cols[0]),
                                history);
        }
    }
    json_decref(answer);
    return rc;
}

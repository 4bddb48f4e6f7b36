/* `get`, `put` and `delete`: the registry's entities, generic over the kinds
 * of kinds.c.
 *
 * get lists a kind or shows one entity, as a table or as the server's JSON
 * (or that as YAML); `get prices --effective` reads the price table that
 * applies instead (GET /admin/v1/price-table: the registry's prices and the
 * built-in defaults they leave in place). put has two shapes. With -f FILE it sends the file's
 * object as the whole entity (create or replace; fields the file leaves out
 * take their defaults). With only --set FIELD=VALUE it changes those fields
 * of what is there: it reads the entity, sets the fields and writes it back
 * with If-Match of the version it read, so a change made meanwhile is a 409,
 * never silently overwritten (and a missing entity is created, with
 * If-None-Match: *). delete removes one entity; --if-version makes it
 * conditional. A key's secret cannot be --set: secrets never come from the
 * command line (`keys add` and `keys rotate` read them from stdin). */
#include <stdio.h>
#include <string.h>

#include "clusterctl.h"

static const struct kp_ctl_kind *find_kind(struct kp_ctl *ctl, const char *name, unsigned flags,
                                           const char *verb)
{
    const struct kp_ctl_kind *kind = kp_ctl__kind_find(name);
    char names[256];

    kp_ctl__kind_names(flags, names, sizeof(names));
    if (kind == NULL) {
        kp_ctl__usage_error(ctl, "%s: unknown kind '%s'; one of: %s", ctl->command, name, names);
        return NULL;
    }
    if ((kind->flags & flags) != flags) {
        const char *instead = strcmp(kind->plural, "tokens") == 0    ? "clusterctl tokens create"
                              : strcmp(kind->plural, "members") == 0 ? "clusterctl members add"
                                                                     : NULL;
        kp_ctl__usage_error(ctl, "%s: %s cannot be %s here%s%s; kinds that can: %s", ctl->command,
                            kind->plural, verb, instead ? "; use " : "", instead ? instead : "",
                            names);
        return NULL;
    }
    return kind;
}

/* What `get` reads and prints: a kind's entities, or the price table that
 * applies (`get prices --effective`). */
struct listing {
    const char *segment; /* under /admin/v1/ */
    const char *what;    /* "no prices" */
    const struct kp_ctl_column *columns;
    size_t n_columns;
    bool resolves; /* one item may answer for another name ("requested") */
};

static struct listing kind_listing(const struct kp_ctl_kind *kind)
{
    return (struct listing){kind->plural, kind->plural, kind->columns, kind->n_columns, false};
}

static const struct kp_ctl_column effective_columns[] = {
    {"MODEL", "model", NULL},
    {"INPUT/MTOK", "input_per_mtok", kp_ctl__cell_usd},
    {"CACHED/MTOK", "cached_input_per_mtok", kp_ctl__cell_usd},
    {"OUTPUT/MTOK", "output_per_mtok", kp_ctl__cell_usd},
    {"REQUEST_FEE", "request_fee", kp_ctl__cell_usd},
    {"SOURCE", "source", NULL},
};
static const struct listing effective_prices = {
    "price-table", "prices", effective_columns,
    sizeof(effective_columns) / sizeof(effective_columns[0]), true};

/* One model's price answered under another name (a dated one resolved to
 * its base): say so on stderr, the table shows the entry that applies. */
static void note_resolved(struct kp_ctl *ctl, const json_t *answer)
{
    const char *model = json_string_value(json_object_get(answer, "model"));
    const char *asked = json_string_value(json_object_get(answer, "requested"));
    const char *source = json_string_value(json_object_get(answer, "source"));
    if (model == NULL || asked == NULL || strcmp(model, asked) == 0)
        return;
    fprintf(stderr, "%s: ", ctl->prog);
    kp_ctl__print_clean(stderr, asked);
    fprintf(stderr, " is priced as ");
    kp_ctl__print_clean(stderr, model);
    fprintf(stderr, " (%s)\n",
            source != NULL && strcmp(source, "registry") == 0 ? "registry" : "built-in default");
}

/* Prints a list answer or one entity. */
static void print_entities(struct kp_ctl *ctl, const struct listing *l, json_t *answer, bool one)
{
    json_t *rows;

    if (ctl->output != KP_CTL_OUTPUT_TABLE) {
        kp_ctl__print_doc(ctl, answer);
        return;
    }
    if (one && l->resolves)
        note_resolved(ctl, answer);
    rows = one ? json_pack("[O]", answer) : json_incref(json_object_get(answer, "items"));
    if (json_array_size(rows) == 0)
        fprintf(stderr, "%s: no %s\n", ctl->prog, l->what);
    else
        kp_ctl__print_table(l->columns, l->n_columns, rows);
    json_decref(rows);
}

int kp_ctl__get_list(struct kp_ctl *ctl, const char *segment, bool consistent, json_t **out)
{
    json_t *answer = NULL;
    const char *after = NULL;
    int rc = KP_CTL_EXIT_OK;
    *out = NULL;
    /* A list comes in pages: follow "next" and gather them as one. */
    do {
        char *base = kp_ctl__path(segment, NULL);
        struct kp_buf q = {base, base ? strlen(base) : 0, base ? strlen(base) + 1 : 0};
        json_t *page = NULL;
        if (base == NULL || (consistent && kp_ctl__query_add(&q, "consistent", "true") != 0) ||
            (after != NULL && kp_ctl__query_add(&q, "after", after) != 0)) {
            kp_buf_free(&q);
            kp_ctl__error(ctl, "out of memory");
            rc = KP_CTL_EXIT_NO;
            break;
        }
        rc = kp_ctl__call(ctl, "GET", q.data, NULL, NULL, &page);
        kp_buf_free(&q);
        if (rc == KP_CTL_EXIT_OK && answer == NULL) {
            answer = page;
        } else if (rc == KP_CTL_EXIT_OK) {
            json_t *next = json_object_get(page, "next");
            json_array_extend(json_object_get(answer, "items"), json_object_get(page, "items"));
            if (next != NULL)
                json_object_set(answer, "next", next);
            else
                json_object_del(answer, "next");
            json_decref(page);
        }
        after = json_string_value(json_object_get(answer, "next"));
    } while (rc == KP_CTL_EXIT_OK && after != NULL);
    if (rc != KP_CTL_EXIT_OK) {
        json_decref(answer);
        return rc;
    }
    json_object_del(answer, "next");
    *out = answer;
    return rc;
}

static int show(struct kp_ctl *ctl, const struct listing *l, const char *id, bool consistent)
{
    json_t *answer = NULL;
    int rc;
    if (id == NULL) {
        rc = kp_ctl__get_list(ctl, l->segment, consistent, &answer);
    } else {
        char *path = kp_ctl__path(l->segment, id, NULL);
        struct kp_buf query = {path, path ? strlen(path) : 0, path ? strlen(path) + 1 : 0};
        if (path == NULL || (consistent && kp_ctl__query_add(&query, "consistent", "true") != 0)) {
            kp_buf_free(&query);
            kp_ctl__error(ctl, "out of memory");
            return KP_CTL_EXIT_NO;
        }
        rc = kp_ctl__call(ctl, "GET", query.data, NULL, NULL, &answer);
        kp_buf_free(&query);
    }
    if (rc == KP_CTL_EXIT_OK)
        print_entities(ctl, l, answer, id != NULL);
    json_decref(answer);
    return rc;
}

/* `get KIND [ID]`; `get prices [MODEL] --effective` reads the price table
 * that applies (registry prices and the built-in defaults) instead of the
 * registry's price entities. */
int kp_ctl__cmd_get(struct kp_ctl *ctl, int argc, char **argv)
{
    bool consistent = false, effective = false;
    const struct kp_ctl_flag flags[] = {{"consistent", 0, KP_CTL_FLAG_BOOL, &consistent},
                                        {"effective", 0, KP_CTL_FLAG_BOOL, &effective}};
    const struct kp_ctl_kind *kind;
    struct listing l;
    int first, rc = kp_ctl__parse(ctl, argc, argv, flags, 2, &first);

    if (rc != KP_CTL_EXIT_OK ||
        (rc = kp_ctl__positionals(ctl, argc - first, 1, 2, "KIND [ID]", false)) != KP_CTL_EXIT_OK)
        return rc;
    if ((kind = find_kind(ctl, argv[first], 0, "read")) == NULL)
        return KP_CTL_EXIT_USAGE;
    if (effective && strcmp(kind->plural, "prices") != 0) {
        kp_ctl__usage_error(ctl,
                            "%s: --effective is for prices only (get prices [MODEL] --effective)",
                            ctl->command);
        return KP_CTL_EXIT_USAGE;
    }
    l = effective ? effective_prices : kind_listing(kind);
    if ((rc = kp_ctl__resolve(ctl)) != KP_CTL_EXIT_OK)
        return rc;
    return show(ctl, &l, first + 1 < argc ? argv[first + 1] : NULL, consistent);
}

int kp_ctl__list_kind(struct kp_ctl *ctl, const char *kind, int argc, char **argv)
{
    bool consistent = false;
    const struct kp_ctl_flag flags[] = {{"consistent", 0, KP_CTL_FLAG_BOOL, &consistent}};
    int first, rc = kp_ctl__parse(ctl, argc, argv, flags, 1, &first);

    if (rc != KP_CTL_EXIT_OK ||
        (rc = kp_ctl__positionals(ctl, argc - first, 0, 0, "", false)) != KP_CTL_EXIT_OK ||
        (rc = kp_ctl__resolve(ctl)) != KP_CTL_EXIT_OK)
        return rc;
    struct listing l = kind_listing(kp_ctl__kind_find(kind));
    return show(ctl, &l, NULL, consistent);
}

/* --- put ------------------------------------------------------------------- */

struct put_args {
    const struct kp_ctl_kind *kind;
    const char *id;
    const char *file;
    const char *if_version;
    json_t *sets;     /* "field=value" strings */
    json_t *changes;  /* the --set fields */
    json_t *body;     /* what is sent */
    uint64_t version; /* If-Match; 0: none */
    bool create_only; /* If-None-Match: * */
};

/* --set's VALUE is JSON when it parses as JSON (42, true, ["a","b"],
 * {"k":"v"}, "quoted"), else the text itself. */
static json_t *set_value(const char *text)
{
    json_t *v = json_loads(text, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, NULL);
    return v != NULL ? v : json_string(text);
}

static int parse_set(struct kp_ctl *ctl, struct put_args *a, const char *s)
{
    const char *eq = strchr(s, '=');
    char field[128];

    if (eq == NULL || eq == s || (size_t)(eq - s) >= sizeof(field)) {
        kp_ctl__usage_error(ctl, "%s: --set takes FIELD=VALUE, not '%.*s'", ctl->command,
                            (int)strcspn(s, "="), s);
        return KP_CTL_EXIT_USAGE;
    }
    snprintf(field, sizeof(field), "%.*s", (int)(eq - s), s);
    if (strcmp(field, "secret") == 0) {
        kp_ctl__usage_error(ctl,
                            "%s: a secret is never taken from the command line; use clusterctl "
                            "keys add or keys rotate, which read it from stdin or --secret-file",
                            ctl->command);
        return KP_CTL_EXIT_USAGE;
    }
    if (kp_ctl__kind_readonly(a->kind, field)) {
        kp_ctl__usage_error(ctl, "%s: %s is set by the registry, not by --set", ctl->command,
                            field);
        return KP_CTL_EXIT_USAGE;
    }
    if (json_object_set_new(a->changes, field, set_value(eq + 1)) != 0) {
        kp_ctl__usage_error(ctl, "%s: --set %s: not valid UTF-8", ctl->command, field);
        return KP_CTL_EXIT_USAGE;
    }
    return KP_CTL_EXIT_OK;
}

static int parse_sets(struct kp_ctl *ctl, struct put_args *a)
{
    size_t i;
    json_t *item;
    int rc = KP_CTL_EXIT_OK;

    if ((a->changes = json_object()) == NULL) {
        kp_ctl__error(ctl, "out of memory");
        return KP_CTL_EXIT_NO;
    }
    json_array_foreach(a->sets, i, item)
    {
        if ((rc = parse_set(ctl, a, json_string_value(item))) != KP_CTL_EXIT_OK)
            break;
    }
    return rc;
}

/* The file's object, without the fields the registry sets (so that the
 * output of `get -o yaml` can be edited and put back). */
static int body_from_file(struct kp_ctl *ctl, struct put_args *a)
{
    char err[512];
    const char *file_id;
    json_t *obj;

    if (kp_ctl__load_object(a->file, &obj, err, sizeof(err)) != 0) {
        kp_ctl__usage_error(ctl, "%s: %s", ctl->command, err);
        return KP_CTL_EXIT_USAGE;
    }
    file_id = json_string_value(json_object_get(obj, "id"));
    if (file_id != NULL && strcmp(file_id, a->id) != 0) {
        kp_ctl__usage_error(ctl, "%s: %s has id '%s' but the command names '%s'", ctl->command,
                            a->file, file_id, a->id);
        json_decref(obj);
        return KP_CTL_EXIT_USAGE;
    }
    a->body = kp_ctl__kind_body(a->kind, obj);
    json_decref(obj);
    return a->body != NULL ? KP_CTL_EXIT_OK : KP_CTL_EXIT_NO;
}

/* For --set alone: the current entity (or nothing), and the version to
 * write over unless --if-version named one. */
static int body_from_server(struct kp_ctl *ctl, struct put_args *a, const char *path)
{
    struct kp_ctl_response resp;
    json_t *current;

    if (kp_ctl__get(ctl, path, &resp) != 0)
        return kp_ctl__unreachable(ctl);
    current = resp.status == 200 ? kp_ctl__response_json(&resp) : NULL;
    if (resp.status == 404) {
        a->create_only = a->version == 0;
        a->body = json_object();
    } else if (json_is_object(current)) {
        if (a->version == 0)
            a->version = (uint64_t)json_integer_value(json_object_get(current, "version"));
        a->body = kp_ctl__kind_body(a->kind, current);
    } else {
        int rc = kp_ctl__refused(ctl, path, &resp);
        json_decref(current);
        kp_ctl__response_free(&resp);
        return rc;
    }
    json_decref(current);
    kp_ctl__response_free(&resp);
    return a->body != NULL ? KP_CTL_EXIT_OK : KP_CTL_EXIT_NO;
}

static void print_put(struct kp_ctl *ctl, const struct put_args *a, json_t *answer)
{
    json_int_t version = json_integer_value(json_object_get(answer, "version"));

    if (ctl->output != KP_CTL_OUTPUT_TABLE) {
        kp_ctl__print_doc(ctl, answer);
        return;
    }
    printf("%s ", a->kind->singular);
    kp_ctl__print_clean(stdout, a->id);
    printf(": %s (version %" JSON_INTEGER_FORMAT ")\n", version == 1 ? "created" : "replaced",
           version);
}

static int put(struct kp_ctl *ctl, struct put_args *a)
{
    char if_match[64];
    const char *headers[2] = {NULL, NULL};
    char *path = kp_ctl__path(a->kind->plural, a->id, NULL);
    json_t *answer = NULL;
    int rc = KP_CTL_EXIT_OK;

    if (path == NULL) {
        kp_ctl__error(ctl, "out of memory");
        return KP_CTL_EXIT_NO;
    }
    if (a->body == NULL && (rc = body_from_server(ctl, a, path)) != KP_CTL_EXIT_OK)
        goto out;
    if (json_object_update(a->body, a->changes) != 0) {
        kp_ctl__error(ctl, "out of memory");
        rc = KP_CTL_EXIT_NO;
        goto out;
    }
    if (a->version != 0) {
        kp_ctl__if_match(if_match, sizeof(if_match), a->version);
        headers[0] = if_match;
    } else if (a->create_only) {
        headers[0] = "If-None-Match: *";
    }
    rc = kp_ctl__call(ctl, "PUT", path, a->body, headers, &answer);
    if (rc == KP_CTL_EXIT_OK)
        print_put(ctl, a, answer);
out:
    json_decref(answer);
    kp_free(path);
    return rc;
}

static int check_put_args(struct kp_ctl *ctl, struct put_args *a, int argc, char **argv, int first)
{
    static const char synopsis[] = "KIND ID (-f FILE | --set FIELD=VALUE ...) [--if-version N]";
    int rc = kp_ctl__positionals(ctl, argc - first, 2, 2, synopsis, false);

    if (rc != KP_CTL_EXIT_OK)
        return rc;
    if ((a->kind = find_kind(ctl, argv[first], KP_CTL_KIND_PUT, "put")) == NULL)
        return KP_CTL_EXIT_USAGE;
    a->id = argv[first + 1];
    if (a->file == NULL && a->sets == NULL) {
        kp_ctl__usage_error(ctl, "put: give -f FILE (the whole entity) or --set FIELD=VALUE");
        return KP_CTL_EXIT_USAGE;
    }
    if (a->if_version != NULL &&
        (rc = kp_ctl__parse_uint(ctl, "--if-version", a->if_version, INT64_MAX, &a->version)) !=
            KP_CTL_EXIT_OK)
        return rc;
    if ((rc = parse_sets(ctl, a)) != KP_CTL_EXIT_OK)
        return rc;
    return a->file != NULL ? body_from_file(ctl, a) : KP_CTL_EXIT_OK;
}

int kp_ctl__cmd_put(struct kp_ctl *ctl, int argc, char **argv)
{
    struct put_args a;
    const struct kp_ctl_flag flags[] = {
        {"file", 'f', KP_CTL_FLAG_VALUE, &a.file},
        {"set", 0, KP_CTL_FLAG_LIST, &a.sets},
        {"if-version", 0, KP_CTL_FLAG_VALUE, &a.if_version},
    };
    int first, rc;

    memset(&a, 0, sizeof(a));
    rc = kp_ctl__parse(ctl, argc, argv, flags, sizeof(flags) / sizeof(flags[0]), &first);
    /* Every usage error (a bad file, a bad --set) comes before any request. */
    if (rc == KP_CTL_EXIT_OK)
        rc = check_put_args(ctl, &a, argc, argv, first);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__resolve(ctl);
    if (rc == KP_CTL_EXIT_OK)
        rc = put(ctl, &a);
    json_decref(a.sets);
    json_decref(a.changes);
    json_decref(a.body);
    return rc;
}

/* --- delete ---------------------------------------------------------------- */

int kp_ctl__cmd_delete(struct kp_ctl *ctl, int argc, char **argv)
{
    const char *if_version = NULL;
    const struct kp_ctl_flag flags[] = {{"if-version", 0, KP_CTL_FLAG_VALUE, &if_version}};
    const struct kp_ctl_kind *kind;
    const char *headers[2] = {NULL, NULL};
    char if_match[64];
    uint64_t version;
    char *path;
    int first, rc = kp_ctl__parse(ctl, argc, argv, flags, 1, &first);

    if (rc != KP_CTL_EXIT_OK ||
        (rc = kp_ctl__positionals(ctl, argc - first, 2, 2, "KIND ID [--if-version N]", false)) !=
            KP_CTL_EXIT_OK)
        return rc;
    if ((kind = find_kind(ctl, argv[first], KP_CTL_KIND_DELETE, "deleted")) == NULL)
        return KP_CTL_EXIT_USAGE;
    if (if_version != NULL) {
        if ((rc = kp_ctl__parse_uint(ctl, "--if-version", if_version, INT64_MAX, &version)) !=
            KP_CTL_EXIT_OK)
            return rc;
        kp_ctl__if_match(if_match, sizeof(if_match), version);
        headers[0] = if_match;
    }
    if ((rc = kp_ctl__resolve(ctl)) != KP_CTL_EXIT_OK)
        return rc;
    if ((path = kp_ctl__path(kind->plural, argv[first + 1], NULL)) == NULL) {
        kp_ctl__error(ctl, "out of memory");
        return KP_CTL_EXIT_NO;
    }
    json_t *answer = NULL;
    rc = kp_ctl__call(ctl, "DELETE", path, NULL, headers, &answer);
    if (rc == KP_CTL_EXIT_OK && ctl->output != KP_CTL_OUTPUT_TABLE) {
        kp_ctl__print_doc(ctl, answer);
    } else if (rc == KP_CTL_EXIT_OK) {
        printf("%s ", kind->singular);
        kp_ctl__print_clean(stdout, argv[first + 1]);
        printf(": deleted\n");
    }
    json_decref(answer);
    kp_free(path);
    return rc;
}

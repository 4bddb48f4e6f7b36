/* `apply -f FILE.yaml [--dry-run]`: declarative upserts.
 *
 * The file holds lists under providers, pools, tenants, projects, policies
 * and prices; each item has an id (a price's is the model name) and the
 * entity's fields:
 *
 *   tenants:
 *   - id: acme
 *     display_name: Acme Inc
 *   pools:
 *   - id: main
 *     strategy: priority
 *     members: [{key: k-prod-1}, {key: k-prod-2, priority: 1}]
 *     fallback: backup
 *
 * The whole file is read and checked first (a usage error, exit 2, names
 * the file and line), so nothing is sent for a file that cannot be applied.
 * Items then go in dependency order: tenants, providers, projects, pools
 * (fallback pools first when the file holds them), policies, prices. For
 * each item: GET it; 404 means "created"; otherwise compare only the fields
 * the file gives with the server's ("unchanged", or "changed" listing them),
 * where a list or object in the file is compared on what it gives, so
 * defaults the server fills in (a pool member's weight) are not changes,
 * while maps such as a provider's headers are compared whole. A change is
 * written as the server's entity with the file's fields laid over it, with
 * If-Match of the version read (a create with If-None-Match: *), so a change
 * someone made meanwhile is a 409 and never overwritten. --dry-run stops
 * after the GETs and prints the same plan.
 *
 * The first failure stops the run: the message says what failed, what was
 * applied before it and what was not tried. Exit codes are the usual ones. */
#include <libfyaml.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "clusterctl.h"

/* The order items are applied in: what others refer to comes first. */
static const char *const apply_order[] = {"tenants", "providers", "projects",
                                          "pools",   "policies",  "prices"};
#define N_KINDS (sizeof(apply_order) / sizeof(apply_order[0]))

enum result { R_NOT_TRIED, R_CREATED, R_CHANGED, R_UNCHANGED, R_FAILED };

static const char *const result_names[] = {"not tried", "created", "changed", "unchanged",
                                           "failed"};

struct item {
    const struct kp_ctl_kind *kind;
    char *id;
    int line;
    json_t *fields;  /* from the file, without id and what the registry sets */
    json_t *changed; /* names of the fields that differ */
    enum result result;
};

struct plan {
    const char *file;
    bool dry_run;
    struct item *items; /* in the order they are applied */
    size_t n;
};

static void plan_free(struct plan *p)
{
    for (size_t i = 0; i < p->n; i++) {
        kp_free(p->items[i].id);
        json_decref(p->items[i].fields);
        json_decref(p->items[i].changed);
    }
    kp_free(p->items);
}

/* --- reading the file ------------------------------------------------------ */

struct loader {
    struct kp_ctl *ctl;
    struct plan *plan;
    char err[512];
};

static int fail(struct loader *l, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct loader *l, int line, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    kp_ctl__usage_error(l->ctl, "apply: %s:%d: %s", l->plan->file, line, msg);
    return KP_CTL_EXIT_USAGE;
}

static struct item *find_item(struct plan *p, const struct kp_ctl_kind *kind, const char *id)
{
    for (size_t i = 0; i < p->n; i++) {
        if (p->items[i].kind == kind && strcmp(p->items[i].id, id) == 0)
            return &p->items[i];
    }
    return NULL;
}

static int load_item(struct loader *l, const struct kp_ctl_kind *kind, struct fy_node *node,
                     size_t index)
{
    struct fy_node *id_node = fy_node_mapping_lookup_by_string(node, "id", FY_NT);
    const char *id = id_node != NULL ? fy_node_get_scalar0(id_node) : NULL;
    int line = kp_ctl__yaml_line(node);
    struct item *it = &l->plan->items[l->plan->n];
    struct item *dup;
    json_t *obj;
    const char *field;
    json_t *v;
    void *tmp;

    if (fy_node_get_type(node) != FYNT_MAPPING)
        return fail(l, line, "%s[%zu]: expected a mapping with an id and the %s's fields",
                    kind->plural, index, kind->singular);
    if (id == NULL || id[0] == '\0')
        return fail(l, line, "%s[%zu]: no id%s", kind->plural, index,
                    strcmp(kind->plural, "prices") == 0 ? " (a price's id is the model name)" : "");
    if ((dup = find_item(l->plan, kind, id)) != NULL)
        return fail(l, line, "%s[%zu]: %s '%s' is already given at line %d", kind->plural, index,
                    kind->singular, id, dup->line);
    if (kp_ctl__yaml_to_json(node, l->plan->file, &obj, l->err, sizeof(l->err)) != 0) {
        kp_ctl__usage_error(l->ctl, "apply: %s", l->err);
        return KP_CTL_EXIT_USAGE;
    }
    json_object_foreach_safe(obj, tmp, field, v)
    {
        if (kp_ctl__kind_readonly(kind, field))
            json_object_del(obj, field);
    }
    memset(it, 0, sizeof(*it));
    it->kind = kind;
    it->line = line;
    it->fields = obj;
    if ((it->id = kp_strdup(id)) == NULL || (it->changed = json_array()) == NULL) {
        l->plan->n++; /* freed with the plan */
        kp_ctl__error(l->ctl, "out of memory");
        return KP_CTL_EXIT_NO;
    }
    l->plan->n++;
    return KP_CTL_EXIT_OK;
}

static int load_list(struct loader *l, const struct kp_ctl_kind *kind, struct fy_node *list)
{
    struct fy_node *node;
    void *iter = NULL;
    size_t index = 0;
    int rc;

    if (list == NULL || (fy_node_get_type(list) == FYNT_SCALAR &&
                         (fy_node_get_scalar0(list) == NULL || !fy_node_get_scalar0(list)[0] ||
                          strcmp(fy_node_get_scalar0(list), "null") == 0 ||
                          strcmp(fy_node_get_scalar0(list), "~") == 0)))
        return KP_CTL_EXIT_OK; /* "pools:" with nothing under it */
    if (fy_node_get_type(list) != FYNT_SEQUENCE)
        return fail(l, kp_ctl__yaml_line(list), "%s: expected a list of items (- id: ...)",
                    kind->plural);
    struct item *grown =
        kp_realloc(l->plan->items, (l->plan->n + (size_t)fy_node_sequence_item_count(list) + 1) *
                                       sizeof(struct item));
    if (grown == NULL) {
        kp_ctl__error(l->ctl, "out of memory");
        return KP_CTL_EXIT_NO;
    }
    l->plan->items = grown;
    while ((node = fy_node_sequence_iterate(list, &iter)) != NULL) {
        if ((rc = load_item(l, kind, node, index++)) != KP_CTL_EXIT_OK)
            return rc;
    }
    return KP_CTL_EXIT_OK;
}

static int unknown_key(struct loader *l, struct fy_node *key, const char *name)
{
    char names[128];
    kp_ctl__kind_names(KP_CTL_KIND_APPLY, names, sizeof(names));
    return fail(l, kp_ctl__yaml_line(key), "unknown key '%s'; apply takes %s%s", name, names,
                strcmp(name, "keys") == 0 || strcmp(name, "key") == 0
                    ? " (keys carry secrets: add them with clusterctl keys add, which reads the "
                      "secret from stdin)"
                    : "");
}

/* Loads every list of @root, kind by kind in apply order. */
static int load_root(struct loader *l, struct fy_node *root)
{
    struct fy_node_pair *pair;
    void *iter = NULL;
    int rc;

    if (fy_node_get_type(root) != FYNT_MAPPING)
        return fail(l, kp_ctl__yaml_line(root),
                    "expected a mapping with lists under providers, pools, tenants, projects, "
                    "policies and prices");
    while ((pair = fy_node_mapping_iterate(root, &iter)) != NULL) {
        struct fy_node *key = fy_node_pair_key(pair);
        const char *name = key != NULL ? fy_node_get_scalar0(key) : NULL;
        const struct kp_ctl_kind *kind = name != NULL ? kp_ctl__kind_find(name) : NULL;
        if (kind == NULL || !(kind->flags & KP_CTL_KIND_APPLY) || strcmp(kind->plural, name) != 0)
            return unknown_key(l, key, name != NULL ? name : "?");
    }
    for (size_t k = 0; k < N_KINDS; k++) {
        struct fy_node *list = fy_node_mapping_lookup_by_string(root, apply_order[k], FY_NT);
        if ((rc = load_list(l, kp_ctl__kind_find(apply_order[k]), list)) != KP_CTL_EXIT_OK)
            return rc;
    }
    return KP_CTL_EXIT_OK;
}

/* Puts the file's pools so that a pool's fallback, when the file holds it
 * too, comes first; a cycle (which the server refuses) keeps file order. */
static void order_pools(struct plan *p)
{
    const struct kp_ctl_kind *pools = kp_ctl__kind_find("pools");
    size_t start = 0, end, placed;

    while (start < p->n && p->items[start].kind != pools)
        start++;
    for (end = start; end < p->n && p->items[end].kind == pools; end++)
        ;
    for (placed = start; placed < end;) {
        size_t i;
        for (i = placed; i < end; i++) {
            const char *fb = json_string_value(json_object_get(p->items[i].fields, "fallback"));
            struct item *target = fb != NULL ? find_item(p, pools, fb) : NULL;
            if (target == NULL || target < &p->items[placed] || target == &p->items[i])
                break; /* ready: no fallback here, or it is placed already */
        }
        if (i == end)
            return; /* a cycle: leave the rest in file order */
        struct item ready = p->items[i];
        memmove(&p->items[placed + 1], &p->items[placed], (i - placed) * sizeof(struct item));
        p->items[placed++] = ready;
    }
}

static int load_plan(struct kp_ctl *ctl, struct plan *p)
{
    struct loader l = {ctl, p, ""};
    struct fy_document *doc = kp_ctl__yaml_parse_file(p->file, l.err, sizeof(l.err));
    int rc;

    if (doc == NULL) {
        kp_ctl__usage_error(ctl, "apply: %s", l.err);
        return KP_CTL_EXIT_USAGE;
    }
    if (fy_document_root(doc) == NULL) {
        kp_ctl__usage_error(ctl, "apply: %s is empty: nothing to apply", p->file);
        rc = KP_CTL_EXIT_USAGE;
    } else {
        rc = load_root(&l, fy_document_root(doc));
    }
    fy_document_destroy(doc);
    if (rc == KP_CTL_EXIT_OK)
        order_pools(p);
    return rc;
}

/* --- comparing ------------------------------------------------------------- */

/* Absent, null, "", [] and {} all mean "not set" to the registry. */
static bool unset(const json_t *v)
{
    return v == NULL || json_is_null(v) || (json_is_string(v) && json_string_length(v) == 0) ||
           (json_is_array(v) && json_array_size(v) == 0) ||
           (json_is_object(v) && json_object_size(v) == 0);
}

/* Whether the file's @want matches the server's @have. Objects compare on
 * the fields @want gives, unless @whole (a map, where a missing entry is a
 * difference); lists item by item. */
static bool same(const json_t *want, const json_t *have, bool whole)
{
    const char *k;
    json_t *v;
    size_t i;

    if (unset(want) || unset(have))
        return unset(want) && unset(have);
    if (json_is_integer(want) && json_is_integer(have))
        return json_integer_value(want) == json_integer_value(have);
    if (json_is_number(want) && json_is_number(have))
        return json_number_value(want) == json_number_value(have);
    if (json_is_object(want) && json_is_object(have)) {
        json_object_foreach((json_t *)want, k, v)
        {
            if (!same(v, json_object_get(have, k), whole))
                return false;
        }
        json_object_foreach((json_t *)have, k, v)
        {
            if (whole && json_object_get(want, k) == NULL && !unset(v))
                return false;
        }
        return true;
    }
    if (json_is_array(want) && json_is_array(have)) {
        if (json_array_size(want) != json_array_size(have))
            return false;
        json_array_foreach(want, i, v)
        {
            if (!same(v, json_array_get(have, i), whole))
                return false;
        }
        return true;
    }
    return json_equal(want, have);
}

static bool is_map_field(const struct kp_ctl_kind *kind, const char *field)
{
    for (const char *const *f = kind->map_fields; *f != NULL; f++) {
        if (strcmp(*f, field) == 0)
            return true;
    }
    return false;
}

static void diff(struct item *it, const json_t *current)
{
    const char *field;
    json_t *want;

    json_object_foreach(it->fields, field, want)
    {
        if (!same(want, json_object_get(current, field), is_map_field(it->kind, field)))
            json_array_append_new(it->changed, json_string(field));
    }
    it->result = json_array_size(it->changed) > 0 ? R_CHANGED : R_UNCHANGED;
}

/* --- applying -------------------------------------------------------------- */

static void print_item(const struct kp_ctl *ctl, const struct item *it)
{
    size_t i;
    json_t *f;

    if (ctl->output != KP_CTL_OUTPUT_TABLE)
        return;
    printf("%s ", it->kind->singular);
    kp_ctl__print_clean(stdout, it->id);
    printf(": %s", result_names[it->result]);
    json_array_foreach(it->changed, i, f)
    {
        printf("%s%s", i == 0 ? " (" : ", ", json_string_value(f));
    }
    puts(json_array_size(it->changed) > 0 ? ")" : "");
}

/* Reads the item's entity: decides created/changed/unchanged and fills
 * *current (NULL when it does not exist). */
static int read_item(struct kp_ctl *ctl, struct item *it, const char *path, json_t **current)
{
    struct kp_ctl_response resp;
    int rc = KP_CTL_EXIT_OK;

    *current = NULL;
    if (kp_ctl__get(ctl, path, &resp) != 0)
        return kp_ctl__unreachable(ctl);
    if (resp.status == 200)
        *current = kp_ctl__response_json(&resp);
    if (resp.status == 404) {
        it->result = R_CREATED;
    } else if (json_is_object(*current)) {
        diff(it, *current);
    } else {
        json_decref(*current);
        *current = NULL;
        rc = kp_ctl__refused(ctl, path, &resp);
    }
    kp_ctl__response_free(&resp);
    return rc;
}

/* PUT of the file's fields laid over the current entity. */
static int write_item(struct kp_ctl *ctl, struct plan *p, struct item *it, const char *path,
                      const json_t *current)
{
    struct kp_ctl_response resp;
    char if_match[64];
    const char *headers[2] = {"If-None-Match: *", NULL};
    json_t *body = current != NULL ? kp_ctl__kind_body(it->kind, current) : json_object();
    char *text = NULL;
    size_t len = 0;
    int rc = KP_CTL_EXIT_OK;

    if (current != NULL) {
        kp_ctl__if_match(if_match, sizeof(if_match),
                         (uint64_t)json_integer_value(json_object_get(current, "version")));
        headers[0] = if_match;
    }
    if (body == NULL || json_object_update(body, it->fields) != 0 ||
        (text = kp_json_dumps(body, &len)) == NULL) {
        kp_ctl__error(ctl, "out of memory");
        rc = KP_CTL_EXIT_NO;
    } else if (kp_ctl__request(ctl, "PUT", path, text, len, headers, &resp) != 0) {
        rc = kp_ctl__unreachable(ctl);
    } else {
        if (resp.status == 409) {
            char why[300];
            kp_ctl__describe_body(&resp, why, sizeof(why));
            kp_ctl__error(ctl, "PUT %s%s: 409 Conflict: %s", ctl->server, path, why);
            kp_ctl__error(ctl,
                          "%s %s was %s on the server since apply read it: run clusterctl "
                          "apply -f %s again",
                          it->kind->singular, it->id, current ? "changed" : "created", p->file);
            rc = KP_CTL_EXIT_NO;
        } else if (resp.status < 200 || resp.status > 299) {
            rc = kp_ctl__refused(ctl, path, &resp);
        }
        kp_ctl__response_free(&resp);
    }
    kp_free(text);
    json_decref(body);
    return rc;
}

static int run_item(struct kp_ctl *ctl, struct plan *p, struct item *it)
{
    char *path = kp_ctl__path(it->kind->plural, it->id, NULL);
    json_t *current = NULL;
    int rc;

    if (path == NULL) {
        kp_ctl__error(ctl, "out of memory");
        return KP_CTL_EXIT_NO;
    }
    rc = read_item(ctl, it, path, &current);
    if (rc == KP_CTL_EXIT_OK && !p->dry_run && (it->result == R_CREATED || it->result == R_CHANGED))
        rc = write_item(ctl, p, it, path, current);
    if (rc != KP_CTL_EXIT_OK) {
        json_array_clear(it->changed);
        it->result = R_FAILED;
    }
    print_item(ctl, it);
    json_decref(current);
    kp_free(path);
    return rc;
}

/* --- reporting ------------------------------------------------------------- */

static void list_items(struct kp_buf *out, const struct plan *p, bool applied)
{
    for (size_t i = 0; i < p->n; i++) {
        const struct item *it = &p->items[i];
        bool was_applied = it->result == R_CREATED || it->result == R_CHANGED;
        if (applied ? !was_applied : it->result != R_NOT_TRIED)
            continue;
        kp_buf_appendf(out, "%s%s %s", out->len ? ", " : "", it->kind->singular, it->id);
        if (applied)
            kp_buf_appendf(out, " (%s)", result_names[it->result]);
    }
}

static void report_failure(struct kp_ctl *ctl, const struct plan *p, const struct item *failed)
{
    struct kp_buf applied, rest;

    kp_buf_init(&applied);
    kp_buf_init(&rest);
    list_items(&applied, p, true);
    list_items(&rest, p, false);
    fprintf(stderr, "%s: apply stopped at %s %s (%s line %d). ", ctl->prog, failed->kind->singular,
            failed->id, p->file, failed->line);
    if (p->dry_run)
        fprintf(stderr, "Dry run: nothing was changed.");
    else if (applied.len > 0)
        fprintf(stderr, "Applied before it: %s.", applied.data);
    else
        fprintf(stderr, "Nothing was changed.");
    if (rest.len > 0)
        fprintf(stderr, " Not tried: %s.", rest.data);
    fputc('\n', stderr);
    kp_buf_free(&applied);
    kp_buf_free(&rest);
}

static void print_summary(const struct kp_ctl *ctl, const struct plan *p, bool ok)
{
    size_t count[R_FAILED + 1] = {0};
    json_t *items, *doc;

    for (size_t i = 0; i < p->n; i++)
        count[p->items[i].result]++;
    if (ctl->output == KP_CTL_OUTPUT_TABLE) {
        if (!ok)
            return;
        if (p->dry_run)
            printf("dry run, nothing changed: %zu to create, %zu to change, %zu unchanged\n",
                   count[R_CREATED], count[R_CHANGED], count[R_UNCHANGED]);
        else
            printf("applied: %zu created, %zu changed, %zu unchanged\n", count[R_CREATED],
                   count[R_CHANGED], count[R_UNCHANGED]);
        return;
    }
    items = json_array();
    for (size_t i = 0; i < p->n; i++) {
        const struct item *it = &p->items[i];
        json_array_append_new(items, json_pack("{s:s, s:s, s:s, s:O}", "kind", it->kind->singular,
                                               "id", it->id, "result", result_names[it->result],
                                               "changed", it->changed));
    }
    doc = json_pack("{s:s, s:b, s:b, s:o}", "file", p->file, "dry_run", p->dry_run, "ok", ok,
                    "items", items);
    if (doc != NULL)
        kp_ctl__print_doc(ctl, doc);
    json_decref(doc);
}

static int run_plan(struct kp_ctl *ctl, struct plan *p)
{
    int rc = KP_CTL_EXIT_OK;

    if (p->n == 0 && ctl->output == KP_CTL_OUTPUT_TABLE) {
        printf("nothing to apply: %s holds no items\n", p->file);
        return KP_CTL_EXIT_OK;
    }
    for (size_t i = 0; i < p->n && rc == KP_CTL_EXIT_OK; i++) {
        if ((rc = run_item(ctl, p, &p->items[i])) != KP_CTL_EXIT_OK)
            report_failure(ctl, p, &p->items[i]);
    }
    print_summary(ctl, p, rc == KP_CTL_EXIT_OK);
    return rc;
}

int kp_ctl__cmd_apply(struct kp_ctl *ctl, int argc, char **argv)
{
    struct plan plan;
    const struct kp_ctl_flag flags[] = {
        {"file", 'f', KP_CTL_FLAG_VALUE, &plan.file},
        {"dry-run", 0, KP_CTL_FLAG_BOOL, &plan.dry_run},
    };
    int first, rc;

    memset(&plan, 0, sizeof(plan));
    rc = kp_ctl__parse(ctl, argc, argv, flags, sizeof(flags) / sizeof(flags[0]), &first);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__positionals(ctl, argc - first, 0, 0, "-f FILE.yaml [--dry-run]", false);
    if (rc == KP_CTL_EXIT_OK && plan.file == NULL) {
        kp_ctl__usage_error(ctl, "apply: -f FILE.yaml is required");
        rc = KP_CTL_EXIT_USAGE;
    }
    if (rc == KP_CTL_EXIT_OK)
        rc = load_plan(ctl, &plan);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__resolve(ctl);
    if (rc == KP_CTL_EXIT_OK)
        rc = run_plan(ctl, &plan);
    plan_free(&plan);
    return rc;
}

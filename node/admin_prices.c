/* The prices that apply, in the control API (docs/control-api.md;
 * docs/registry.md, "Prices"):
 *
 *   GET /admin/v1/price-table          every price that applies: each registry
 *                                      price, and each built-in default that no
 *                                      registry price of the same name
 *                                      overrides; sorted by model, paged as the
 *                                      registry's lists are
 *   GET /admin/v1/price-table/{model}  the price kp_price_lookup gives one model
 *                                      name (a dated name resolves to its base)
 *
 * GET /admin/v1/prices stays the registry's own price entities. The table
 * has a route of its own rather than /admin/v1/prices/effective because a
 * price's id can be any printable name, "effective" included. Reads come
 * from this node's view (?consistent=true reads after a barrier, as
 * everywhere). */
#include <stdlib.h>
#include <string.h>

#include "admin_internal.h"

struct row {
    const struct kp_price *p;
    const char *source; /* "registry" or "default" */
};

struct rows {
    struct row *v;
    size_t n, cap;
};

static int add_registry(const struct kp_entity *e, void *arg)
{
    struct rows *t = arg;
    if (t->n < t->cap)
        t->v[t->n++] = (struct row){(const struct kp_price *)e, "registry"};
    return 0;
}

static int cmp_model(const void *a, const void *b)
{
    return strcmp(((const struct row *)a)->p->e.id, ((const struct row *)b)->p->e.id);
}

/* Every price that applies under its own name, sorted by model; false when
 * out of memory. The rows point into @view. */
static bool merged(const struct kp_view *view, struct rows *t)
{
    size_t ndefaults = 0;
    while (kp_price_default(ndefaults) != NULL)
        ndefaults++;
    t->cap = kp_view_count(view, KP_KIND_PRICE) + ndefaults;
    t->v = kp_malloc((t->cap + 1) * sizeof(*t->v));
    if (t->v == NULL)
        return false;
    kp_view_each(view, KP_KIND_PRICE, add_registry, t);
    const struct kp_price *d;
    for (size_t i = 0; (d = kp_price_default(i)) != NULL && t->n < t->cap; i++) {
        if (kp_view_price(view, d->e.id) == NULL)
            t->v[t->n++] = (struct row){d, "default"};
    }
    qsort(t->v, t->n, sizeof(*t->v), cmp_model);
    return true;
}

static json_t *row_json(const struct row *w)
{
    const struct kp_price *p = w->p;
    return json_pack("{s:s,s:I,s:I,s:I,s:I,s:s}", "model", p->e.id, "input_per_mtok",
                     (json_int_t)p->input_per_mtok, "cached_input_per_mtok",
                     (json_int_t)p->cached_input_per_mtok, "output_per_mtok",
                     (json_int_t)p->output_per_mtok, "request_fee", (json_int_t)p->request_fee,
                     "source", w->source);
}

/* One page of @t: the rows after ?after, at most @limit of them, with
 * "next" while more remain. NULL when out of memory. */
static json_t *page_json(struct kp_admin_req *r, const struct kp_view *view, const struct rows *t,
                         size_t limit)
{
    const char *after = kp_admin__query(r, "after");
    json_t *items = json_array(), *v = json_object();
    bool ok = items != NULL && v != NULL;
    size_t i = 0, shown = 0;
    while (after != NULL && i < t->n && strcmp(t->v[i].p->e.id, after) <= 0)
        i++;
    for (; ok && i < t->n && shown < limit; i++, shown++)
        ok = json_array_append_new(items, row_json(&t->v[i])) == 0;
    if (!ok) {
        json_decref(items);
        json_decref(v);
        return NULL;
    }
    json_object_set_new(v, "items", items);
    json_object_set_new(v, "applied_index", json_integer((json_int_t)kp_view_applied_index(view)));
    if (i < t->n)
        json_object_set_new(v, "next", json_string(t->v[i - 1].p->e.id));
    return v;
}

void kp_admin__price_table(struct kp_admin_req *r)
{
    size_t limit;
    if (!kp_admin__list_limit(r, &limit))
        return;
    struct kp_view *view = kp_admin__view(r);
    if (view == NULL)
        return;
    struct rows t = {NULL, 0, 0};
    json_t *v = merged(view, &t) ? page_json(r, view, &t, limit) : NULL;
    kp_free(t.v);
    kp_view_release(view);
    if (v == NULL) {
        kp_admin__oom(r);
        return;
    }
    kp_admin__respond(r, 200, v, 0, false);
}

void kp_admin__price_of(struct kp_admin_req *r)
{
    char asked[260];
    kp_admin__quote(asked, sizeof(asked), r->id);
    struct kp_view *view = kp_admin__view(r);
    if (view == NULL)
        return;
    struct row w = {NULL, NULL};
    w.p = kp_price_lookup(view, r->id, &w.source);
    json_t *v = w.p != NULL ? row_json(&w) : NULL;
    kp_view_release(view);
    if (w.p == NULL) {
        kp_admin__fail(r, 404, "not_found", NULL,
                       "no price for model '%s': neither the registry nor the built-in table "
                       "has it or a name it extends; add one with PUT /admin/v1/prices/{model}",
                       asked);
        return;
    }
    if (v == NULL || json_object_set_new(v, "requested", json_string(asked)) != 0) {
        json_decref(v);
        kp_admin__oom(r);
        return;
    }
    kp_admin__respond(r, 200, v, 0, false);
}

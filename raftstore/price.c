/* Which price applies to a model name: the registry's price entity (an
 * operator's override or addition) or the built-in table's
 * (price_defaults.c). Every reader that means "what does this model cost"
 * goes through kp_price_lookup; kp_view_price stays the raw registry
 * lookup.
 *
 * Providers answer with names the table does not hold: dated snapshots
 * ("gpt-4o-2024-08-06", "claude-sonnet-4-5-20250929"), aliases
 * ("claude-3-7-sonnet-latest"), Vertex's "@" versions, Google's resource
 * names ("models/gemini-2.5-flash"). The rule, first hit wins:
 *
 *   1. the name exactly: the registry, then the defaults;
 *   2. without a leading "models/": the registry, then the defaults;
 *   3. the longest prefix of that name which ends just before a '-', '@'
 *      or ':' and names a price; at each length the registry before the
 *      defaults.
 *
 * So an operator's exact price always wins; a default for the exact name
 * beats an operator's price for a shorter base (an override of gpt-4o does
 * not reprice gpt-4o-mini); and a longer base beats a shorter one
 * ("gpt-4o-mini-2024-07-18" is gpt-4o-mini, not gpt-4o). A prefix ends
 * only at those separators, so "gpt-4o" never matches "gpt-4" and
 * "gpt-4.1-mini" never matches "gpt-4". A variant that is priced
 * differently from its base must have an entry of its own: the table lists
 * o3-pro for that reason; an operator adds the ones it lacks. */
#include <string.h>

#include "raftstore/internal.h"

/* The longest id an entity can have (registry.c's HEADER). */
enum { PRICE_ID_MAX = 128 };

static const char google_prefix[] = "models/";

const struct kp_price *kp_price_default(size_t i)
{
    return i < kp_store__price_defaults_n ? &kp_store__price_defaults[i] : NULL;
}

static const struct kp_price *default_find(const char *model)
{
    size_t lo = 0, hi = kp_store__price_defaults_n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(model, kp_store__price_defaults[mid].e.id);
        if (c == 0)
            return &kp_store__price_defaults[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

/* @name exactly: the registry, then the defaults. */
static const struct kp_price *exact(const struct kp_view *view, const char *name,
                                    const char **source)
{
    const struct kp_price *p = view != NULL ? kp_view_price(view, name) : NULL;
    if (p != NULL) {
        *source = "registry";
        return p;
    }
    p = default_find(name);
    if (p != NULL)
        *source = "default";
    return p;
}

static bool is_separator(char c)
{
    return c == '-' || c == '@' || c == ':';
}

/* The longest proper prefix of @name that ends before a separator and has
 * a price. Prefixes longer than an id can be are skipped: nothing has
 * them. */
static const struct kp_price *longest_prefix(const struct kp_view *view, const char *name,
                                             const char **source)
{
    char buf[PRICE_ID_MAX + 1];
    size_t n = strlen(name);
    for (size_t i = n - 1 < PRICE_ID_MAX ? n - 1 : PRICE_ID_MAX; i > 0; i--) {
        if (!is_separator(name[i]))
            continue;
        memcpy(buf, name, i);
        buf[i] = '\0';
        const struct kp_price *p = exact(view, buf, source);
        if (p != NULL)
            return p;
    }
    return NULL;
}

const struct kp_price *kp_price_lookup(const struct kp_view *view, const char *model,
                                       const char **source)
{
    const char *src = NULL;
    const struct kp_price *p = NULL;
    if (model != NULL && model[0] != '\0') {
        size_t g = sizeof(google_prefix) - 1;
        const char *base =
            strncmp(model, google_prefix, g) == 0 && model[g] != '\0' ? model + g : model;
        p = exact(view, model, &src);
        if (p == NULL && base != model)
            p = exact(view, base, &src);
        if (p == NULL)
            p = longest_prefix(view, base, &src);
    }
    if (source != NULL)
        *source = p != NULL ? src : NULL;
    return p;
}

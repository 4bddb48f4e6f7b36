/* Unit tests of the price lookup (raftstore/price.c) and the built-in price
 * table (raftstore/price_defaults.c): the table's sanity (sorted, unique,
 * amounts that make sense, every model the docs promise), exact and
 * dated-name resolution against the defaults, the precedence between an
 * operator's registry prices and the defaults, and names that must not
 * resolve. Registry prices are put through the state machine, as the
 * control API puts them, and read through a view, as routers read them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "raftstore/raftstore.h"

#define USD(d) ((kp_nanousd)((d)*1e9 + 0.5))

/* --- helpers ------------------------------------------------------------- */

static uint64_t next_index;

static int setup(void **state)
{
    next_index = 0;
    *state = kp_fsm_new();
    return *state == NULL;
}

static int teardown(void **state)
{
    kp_fsm_free(*state);
    return 0;
}

/* Put a registry price for @model through the state machine. */
static void put_price(struct kp_fsm *f, const char *model, kp_nanousd in, kp_nanousd out)
{
    struct kp_audit_ctx who = {.actor = (char *)"alice", .role = (char *)"admin"};
    struct kp_price p = {.e.id = (char *)model,
                         .input_per_mtok = in,
                         .cached_input_per_mtok = in,
                         .output_per_mtok = out};
    struct kp_command c = {
        .v = 1, .op = KP_OP_PUT_PRICE, .ts = 1767225600000, .audit = who, .body.price = &p};
    struct kp_fsm_result res;
    struct kp_buf b;
    char err[256];
    kp_buf_init(&b);
    assert_int_equal(kp_command_encode(&c, &b, err, sizeof(err)), KP_OK);
    assert_int_equal(kp_fsm_apply(f, ++next_index, b.data, b.len, &res), KP_OK);
    assert_int_equal(res.code, KP_OK);
    kp_buf_free(&b);
}

/* kp_price_lookup, checking the entry's name and the source. */
static void expect(const struct kp_view *v, const char *model, const char *entry,
                   const char *source)
{
    const char *src = "unset";
    const struct kp_price *p = kp_price_lookup(v, model, &src);
    if (entry == NULL) {
        if (p != NULL)
            fail_msg("%s: expected no price, got %s (%s)", model, p->e.id, src);
        assert_null(src);
        return;
    }
    if (p == NULL)
        fail_msg("%s: expected %s (%s), got no price", model, entry, source);
    if (strcmp(p->e.id, entry) != 0 || strcmp(src, source) != 0)
        fail_msg("%s: expected %s (%s), got %s (%s)", model, entry, source, p->e.id, src);
}

static size_t n_defaults(void)
{
    size_t n = 0;
    while (kp_price_default(n) != NULL)
        n++;
    return n;
}

/* --- the table ------------------------------------------------------------- */

/* Entries are sorted and unique (the lookup bisects), look like prices
 * (nothing negative, cached input never above input, output at least input
 * except for embeddings, which have no output), and are not registry
 * entities. */
static void test_defaults_are_sane(void **state)
{
    (void)state;
    size_t n = n_defaults();
    assert_true(n >= 40);
    for (size_t i = 0; i < n; i++) {
        const struct kp_price *p = kp_price_default(i);
        assert_int_equal(p->e.kind, KP_KIND_PRICE);
        assert_int_equal(p->e.version, 0);
        assert_true(strlen(p->e.id) > 0 && strlen(p->e.id) <= 128);
        if (i > 0 && strcmp(kp_price_default(i - 1)->e.id, p->e.id) >= 0)
            fail_msg("not sorted or not unique: %s, %s", kp_price_default(i - 1)->e.id, p->e.id);
        assert_true(p->input_per_mtok > 0);
        assert_true(p->cached_input_per_mtok > 0);
        assert_true(p->cached_input_per_mtok <= p->input_per_mtok);
        assert_true(p->output_per_mtok >= 0 && p->request_fee >= 0);
        bool embedding = strncmp(p->e.id, "text-embedding-", 15) == 0;
        if (embedding ? p->output_per_mtok != 0 : p->output_per_mtok < p->input_per_mtok)
            fail_msg("%s: output price %lld against input %lld", p->e.id,
                     (long long)p->output_per_mtok, (long long)p->input_per_mtok);
        /* Nothing in this table costs more than $1,000 per million tokens:
         * a misplaced digit would. */
        assert_true(p->output_per_mtok <= USD(1000) && p->input_per_mtok <= USD(1000));
    }
    assert_null(kp_price_default(n));
    assert_null(kp_price_default((size_t)-1));
}

/* Every model docs/registry.md promises has an entry under its own name. */
static void test_defaults_cover_the_common_models(void **state)
{
    (void)state;
    static const char *const models[] = {"gpt-4o",
                                         "gpt-4o-mini",
                                         "gpt-4.1",
                                         "gpt-4.1-mini",
                                         "gpt-4.1-nano",
                                         "o1",
                                         "o3",
                                         "o3-mini",
                                         "o4-mini",
                                         "gpt-5",
                                         "gpt-5-mini",
                                         "gpt-5-nano",
                                         "text-embedding-3-small",
                                         "text-embedding-3-large",
                                         "claude-opus-4-1",
                                         "claude-opus-4",
                                         "claude-sonnet-4-5",
                                         "claude-sonnet-4",
                                         "claude-3-7-sonnet",
                                         "claude-3-5-haiku",
                                         "claude-haiku-4-5",
                                         "gemini-2.5-pro",
                                         "gemini-2.5-flash",
                                         "gemini-2.5-flash-lite",
                                         "gemini-2.0-flash",
                                         "mistral-large-latest",
                                         "mistral-medium-latest",
                                         "mistral-small-latest",
                                         "codestral-latest",
                                         "deepseek-chat",
                                         "deepseek-reasoner"};
    for (size_t i = 0; i < sizeof(models) / sizeof(models[0]); i++)
        expect(NULL, models[i], models[i], "default");
}

/* Amounts are nano-USD per million tokens, exactly: $2.50 is 2500000000,
 * and fractions of a cent survive the conversion. */
static void test_default_amounts_are_exact(void **state)
{
    (void)state;
    const struct kp_price *p = kp_price_lookup(NULL, "gpt-4o", NULL);
    assert_int_equal(p->input_per_mtok, 2500000000);
    assert_int_equal(p->cached_input_per_mtok, 1250000000);
    assert_int_equal(p->output_per_mtok, 10000000000);
    assert_int_equal(p->request_fee, 0);
    assert_int_equal(kp_price_lookup(NULL, "gpt-5-nano", NULL)->cached_input_per_mtok, 5000000);
    assert_int_equal(kp_price_lookup(NULL, "deepseek-chat", NULL)->cached_input_per_mtok, 28000000);
    assert_int_equal(kp_price_lookup(NULL, "o4-mini", NULL)->cached_input_per_mtok, 275000000);
    assert_int_equal(kp_price_lookup(NULL, "gemini-2.0-flash-lite", NULL)->input_per_mtok,
                     75000000);
    assert_int_equal(kp_price_lookup(NULL, "claude-opus-4-1", NULL)->output_per_mtok, 75000000000);
}

/* --- resolution against the defaults ---------------------------------------- */

/* The names providers answer with find their base entry: dated snapshots,
 * -latest aliases, Vertex's @version, Google's models/ resource names. */
static void test_dated_names_resolve_to_their_base(void **state)
{
    (void)state;
    expect(NULL, "gpt-4o-2024-08-06", "gpt-4o", "default");
    expect(NULL, "gpt-4o-mini-2024-07-18", "gpt-4o-mini", "default");
    expect(NULL, "gpt-4.1-mini-2025-04-14", "gpt-4.1-mini", "default");
    expect(NULL, "gpt-5-2025-08-07", "gpt-5", "default");
    expect(NULL, "gpt-5.1-2025-11-13", "gpt-5.1", "default");
    expect(NULL, "o3-pro-2025-06-10", "o3-pro", "default");
    expect(NULL, "claude-sonnet-4-5-20250929", "claude-sonnet-4-5", "default");
    expect(NULL, "claude-sonnet-4-20250514", "claude-sonnet-4", "default");
    expect(NULL, "claude-opus-4-1-20250805", "claude-opus-4-1", "default");
    expect(NULL, "claude-3-7-sonnet-latest", "claude-3-7-sonnet", "default");
    expect(NULL, "claude-sonnet-4-5@20250929", "claude-sonnet-4-5", "default");
    expect(NULL, "models/gemini-2.5-flash", "gemini-2.5-flash", "default");
    expect(NULL, "models/gemini-2.5-flash-preview-09-2025", "gemini-2.5-flash", "default");
    expect(NULL, "gemini-2.5-flash-lite-preview-09-2025", "gemini-2.5-flash-lite", "default");
    expect(NULL, "deepseek-chat:beta", "deepseek-chat", "default");
}

/* A prefix ends only before '-', '@' or ':': gpt-4o is not gpt-4, and a
 * name that merely starts like an entry does not take its price. */
static void test_prefixes_end_at_separators(void **state)
{
    struct kp_fsm *f = *state;
    expect(NULL, "gpt-4", NULL, NULL);
    expect(NULL, "gpt-4.5-preview", NULL, NULL);
    expect(NULL, "gpt-4o2", NULL, NULL);
    expect(NULL, "o3x", NULL, NULL);
    put_price(f, "gpt-4", USD(30), USD(60));
    struct kp_view *v = kp_fsm_view_build(f);
    expect(v, "gpt-4o", "gpt-4o", "default");
    expect(v, "gpt-4o-2024-08-06", "gpt-4o", "default");
    expect(v, "gpt-4-0613", "gpt-4", "registry");
    expect(v, "gpt-4.5-preview", NULL, NULL);
    kp_view_release(v);
}

/* Names with no price get none: unknown models, empty and absent names, a
 * bare models/, and a separator beyond the longest possible id. */
static void test_unknown_models_have_no_price(void **state)
{
    (void)state;
    expect(NULL, "llama-3.1-70b", NULL, NULL);
    expect(NULL, "", NULL, NULL);
    expect(NULL, NULL, NULL, NULL);
    expect(NULL, "models/", NULL, NULL);
    expect(NULL, "-", NULL, NULL);
    expect(NULL, "ft:gpt-4o-mini-2024-07-18:acme::abc123", NULL, NULL);
    assert_null(kp_price_lookup(NULL, "nothing", NULL));
    char name[400];
    memset(name, 'a', sizeof(name) - 1);
    name[sizeof(name) - 1] = '\0';
    memcpy(name + 300, "-2024", 5);
    expect(NULL, name, NULL, NULL);
    memcpy(name, "gpt-4o-", 7);
    expect(NULL, name, "gpt-4o", "default");
}

/* --- the registry and the defaults ------------------------------------------- */

/* An operator's price for a model overrides the default of that name, and
 * also prices the dated names of that model. */
static void test_registry_override_wins(void **state)
{
    struct kp_fsm *f = *state;
    put_price(f, "gpt-4o", USD(2), USD(8));
    struct kp_view *v = kp_fsm_view_build(f);
    const char *src;
    const struct kp_price *p = kp_price_lookup(v, "gpt-4o", &src);
    assert_string_equal(src, "registry");
    assert_int_equal(p->input_per_mtok, USD(2));
    assert_int_equal(p->e.version, 1);
    assert_ptr_equal(p, kp_view_price(v, "gpt-4o"));
    expect(v, "gpt-4o-2024-08-06", "gpt-4o", "registry");
    /* A longer default beats a shorter override: gpt-4o-mini is its own model. */
    expect(v, "gpt-4o-mini", "gpt-4o-mini", "default");
    expect(v, "gpt-4o-mini-2024-07-18", "gpt-4o-mini", "default");
    /* The lookup without a view, and kp_view_price, are unchanged. */
    expect(NULL, "gpt-4o", "gpt-4o", "default");
    assert_null(kp_view_price(v, "gpt-4o-mini"));
    kp_view_release(v);
}

/* The defaults' exact entry beats an operator's price for a shorter base,
 * and the registry beats the defaults at every length. */
static void test_precedence(void **state)
{
    struct kp_fsm *f = *state;
    put_price(f, "claude-sonnet-4", USD(1), USD(2));
    put_price(f, "models/gemini-2.5-pro", USD(3), USD(4));
    put_price(f, "gemini-2.5-flash", USD(5), USD(6));
    struct kp_view *v = kp_fsm_view_build(f);
    expect(v, "claude-sonnet-4-5", "claude-sonnet-4-5", "default");
    expect(v, "claude-sonnet-4-5-20250929", "claude-sonnet-4-5", "default");
    expect(v, "claude-sonnet-4-20250514", "claude-sonnet-4", "registry");
    /* models/: the registry's exact name, then the registry's bare name. */
    expect(v, "models/gemini-2.5-pro", "models/gemini-2.5-pro", "registry");
    expect(v, "gemini-2.5-pro", "gemini-2.5-pro", "default");
    expect(v, "models/gemini-2.5-flash", "gemini-2.5-flash", "registry");
    expect(v, "models/gemini-2.5-flash-lite", "gemini-2.5-flash-lite", "default");
    kp_view_release(v);
}

/* Operators add models the table lacks, under any printable name; their
 * dated names resolve like the built-in ones. */
static void test_registry_additions(void **state)
{
    struct kp_fsm *f = *state;
    put_price(f, "meta/llama-3.1-70b", USD(0.5), USD(0.7));
    put_price(f, "acme-mini@2", USD(1), USD(1));
    struct kp_view *v = kp_fsm_view_build(f);
    expect(v, "meta/llama-3.1-70b", "meta/llama-3.1-70b", "registry");
    expect(v, "meta/llama-3.1-70b-instruct", "meta/llama-3.1-70b", "registry");
    expect(v, "acme-mini@2:latest", "acme-mini@2", "registry");
    expect(v, "meta/llama-3.1-8b", NULL, NULL);
    kp_view_release(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_are_sane),
        cmocka_unit_test(test_defaults_cover_the_common_models),
        cmocka_unit_test(test_default_amounts_are_exact),
        cmocka_unit_test(test_dated_names_resolve_to_their_base),
        cmocka_unit_test_setup_teardown(test_prefixes_end_at_separators, setup, teardown),
        cmocka_unit_test(test_unknown_models_have_no_price),
        cmocka_unit_test_setup_teardown(test_registry_override_wins, setup, teardown),
        cmocka_unit_test_setup_teardown(test_precedence, setup, teardown),
        cmocka_unit_test_setup_teardown(test_registry_additions, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* The built-in price table: what a model costs when the registry holds no
 * price for it (price.c says how a name finds its entry; docs/registry.md,
 * "Prices", is the operator's account of both).
 *
 * These are the providers' standard pay-as-you-go list prices for text, as
 * published in December 2025, in US dollars per million tokens. They are a
 * starting point, not a bill: an operator with contract, batch, regional or
 * committed-use prices overrides an entry with a registry price of the same
 * name. Where a provider publishes a price for cached input (OpenAI cached
 * input, Anthropic cache reads, Gemini context caching, DeepSeek cache hits)
 * it is the cached price; where it does not (Mistral, the pro and
 * embedding models) cached input costs what input costs. What the table
 * cannot say:
 *   - tiers: Gemini 2.5 Pro and 3 Pro charge more above 200k prompt tokens;
 *     the entry is the base (<= 200k) tier;
 *   - cache writes: Anthropic bills them at 1.25x input (2x for the one-hour
 *     cache); they are counted as ordinary input;
 *   - other modalities: audio and image tokens, image output, and per-call
 *     tool fees (web search, grounding). No model here has a fee per request,
 *     so request_fee is 0 throughout.
 *
 * The array is sorted by model name (strcmp order) and names are unique:
 * price.c searches it by bisection, and tests/unit/test_price.c checks
 * both. Entries are static and never reference-counted: they are not
 * registry entities (version 0) and must never reach the store. */
#include "raftstore/internal.h"

/* Dollars per million tokens, as nano-USD per million tokens (exact for
 * every amount below: at most four decimals). */
#define USD(d) ((kp_nanousd)((d)*1e9 + 0.5))

#define PRICE(model, in, cached, out)                                                              \
    {                                                                                              \
        .e = {.kind = KP_KIND_PRICE, .id = (char *)(model)}, .input_per_mtok = USD(in),            \
        .cached_input_per_mtok = USD(cached), .output_per_mtok = USD(out)                          \
    }

/* model, input, cached input, output; dollars per million tokens. */
const struct kp_price kp_store__price_defaults[] = {
    /* Anthropic: cached input is the cache-read price. */
    PRICE("claude-3-5-haiku", 0.80, 0.08, 4.00),
    PRICE("claude-3-7-sonnet", 3.00, 0.30, 15.00),
    PRICE("claude-3-haiku", 0.25, 0.03, 1.25),
    PRICE("claude-haiku-4-5", 1.00, 0.10, 5.00),
    PRICE("claude-opus-4", 15.00, 1.50, 75.00),
    PRICE("claude-opus-4-1", 15.00, 1.50, 75.00),
    PRICE("claude-opus-4-5", 5.00, 0.50, 25.00),
    PRICE("claude-sonnet-4", 3.00, 0.30, 15.00),
    PRICE("claude-sonnet-4-5", 3.00, 0.30, 15.00),
    /* Mistral: no cached-input price is published. */
    PRICE("codestral-2508", 0.30, 0.30, 0.90),
    PRICE("codestral-latest", 0.30, 0.30, 0.90),
    /* DeepSeek (V3.2): cached input is the cache-hit price. */
    PRICE("deepseek-chat", 0.28, 0.028, 0.42),
    PRICE("deepseek-reasoner", 0.28, 0.028, 0.42),
    /* Google (Gemini API, paid tier, text input): cached input is the
     * context-caching price (storage per hour is not modelled). */
    PRICE("gemini-2.0-flash", 0.10, 0.025, 0.40),
    PRICE("gemini-2.0-flash-lite", 0.075, 0.075, 0.30),
    PRICE("gemini-2.5-flash", 0.30, 0.03, 2.50),
    PRICE("gemini-2.5-flash-lite", 0.10, 0.01, 0.40),
    PRICE("gemini-2.5-pro", 1.25, 0.125, 10.00),
    PRICE("gemini-3-pro-preview", 2.00, 0.20, 12.00),
    /* OpenAI: cached input is the cached-input price. */
    PRICE("gpt-4.1", 2.00, 0.50, 8.00),
    PRICE("gpt-4.1-mini", 0.40, 0.10, 1.60),
    PRICE("gpt-4.1-nano", 0.10, 0.025, 0.40),
    PRICE("gpt-4o", 2.50, 1.25, 10.00),
    PRICE("gpt-4o-mini", 0.15, 0.075, 0.60),
    PRICE("gpt-5", 1.25, 0.125, 10.00),
    PRICE("gpt-5-mini", 0.25, 0.025, 2.00),
    PRICE("gpt-5-nano", 0.05, 0.005, 0.40),
    PRICE("gpt-5-pro", 15.00, 15.00, 120.00),
    PRICE("gpt-5.1", 1.25, 0.125, 10.00),
    /* Mistral again (sorted by name): the -latest aliases follow Mistral's
     * current models (Large 3, Medium 3.1, Small 3.2); pin a dated name if
     * you need a price that does not move. */
    PRICE("mistral-large-2411", 2.00, 2.00, 6.00),
    PRICE("mistral-large-2512", 0.50, 0.50, 1.50),
    PRICE("mistral-large-latest", 0.50, 0.50, 1.50),
    PRICE("mistral-medium-2508", 0.40, 0.40, 2.00),
    PRICE("mistral-medium-latest", 0.40, 0.40, 2.00),
    PRICE("mistral-small-2506", 0.10, 0.10, 0.30),
    PRICE("mistral-small-latest", 0.10, 0.10, 0.30),
    /* OpenAI reasoning models. The pro and deep-research variants are listed
     * so that they do not fall back to their (much cheaper) base entry. */
    PRICE("o1", 15.00, 7.50, 60.00),
    PRICE("o1-mini", 1.10, 0.55, 4.40),
    PRICE("o1-pro", 150.00, 150.00, 600.00),
    PRICE("o3", 2.00, 0.50, 8.00),
    PRICE("o3-deep-research", 10.00, 2.50, 40.00),
    PRICE("o3-mini", 1.10, 0.55, 4.40),
    PRICE("o3-pro", 20.00, 20.00, 80.00),
    PRICE("o4-mini", 1.10, 0.275, 4.40),
    PRICE("o4-mini-deep-research", 2.00, 0.50, 8.00),
    /* OpenAI embeddings: input only. */
    PRICE("text-embedding-3-large", 0.13, 0.13, 0),
    PRICE("text-embedding-3-small", 0.02, 0.02, 0),
    PRICE("text-embedding-ada-002", 0.10, 0.10, 0),
};

const size_t kp_store__price_defaults_n =
    sizeof(kp_store__price_defaults) / sizeof(kp_store__price_defaults[0]);

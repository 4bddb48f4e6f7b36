/* The router's metrics (Prometheus, rendered with everything else on
 * /metrics): attempts by provider, key and outcome; retries of a key and
 * failovers by pool; tokens and cost by provider, model and tenant, and by
 * key; cooldowns by key and reason; tripped breakers by key; time to the
 * provider's answer head by provider (a histogram); rate limits that could
 * not be applied. Label sets are bounded (node/core/metrics.h: past
 * 500 per family they count as "overflow"), so apps sending odd model names cannot blow the series
 * up. Registered once per process. */
#include <pthread.h>
#include <stdio.h>

#include "router_internal.h"

enum { MAX_SERIES = 500 };

static struct kp_metric_family *attempts, *retries, *failovers, *tokens, *cost, *key_tokens,
    *key_cost, *cooldowns, *tripped, *head_time;
static struct kp_metric *table_full;
static struct kp_metric *shed;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void init(void)
{
    attempts = kp_metric_family_counter(
        "keyplane_router_attempts_total",
        "Upstream attempts, by provider, key and outcome (ok or the failure class).", 3,
        (const char *[]){"provider", "key", "outcome"}, MAX_SERIES);
    retries = kp_metric_family_counter(
        "keyplane_router_retries_total",
        "Attempts that retried the same key after a retryable failure, by provider and key.", 2,
        (const char *[]){"provider", "key"}, MAX_SERIES);
    failovers = kp_metric_family_counter("keyplane_router_failovers_total",
                                         "Attempts that failed and moved on to the next key.", 1,
                                         (const char *[]){"pool"}, MAX_SERIES);
    tokens = kp_metric_family_counter(
        "keyplane_router_tokens_total",
        "Tokens of answered calls, by provider, model, tenant and direction (in, out).", 4,
        (const char *[]){"provider", "model", "tenant", "direction"}, MAX_SERIES);
    cost = kp_metric_family_counter("keyplane_router_cost_nanousd_total",
                                    "Cost of answered calls in billionths of a US dollar.", 3,
                                    (const char *[]){"provider", "model", "tenant"}, MAX_SERIES);
    key_tokens =
        kp_metric_family_counter("keyplane_router_key_tokens_total",
                                 "Tokens of answered calls, by key and direction (in, out).", 2,
                                 (const char *[]){"key", "direction"}, MAX_SERIES);
    key_cost = kp_metric_family_counter("keyplane_router_key_cost_nanousd_total",
                                        "Cost of answered calls by key, in billionths of a US "
                                        "dollar.",
                                        1, (const char *[]){"key"}, MAX_SERIES);
    tripped = kp_metric_family_gauge(
        "keyplane_router_breakers_tripped",
        "Workers whose breaker for the key is open or half-open (tripped, no success since).", 1,
        (const char *[]){"key"}, MAX_SERIES);
    head_time = kp_metric_family_histogram(
        "keyplane_router_upstream_head_seconds",
        "Time from starting an attempt to the provider's answer head (status and headers), by "
        "provider: connection, request and the provider's wait before answering.",
        1, (const char *[]){"provider"}, MAX_SERIES);
    cooldowns = kp_metric_family_counter(
        "keyplane_router_cooldowns_total",
        "Keys set aside by a worker: rate_limit (a 429) or breaker (failing).", 2,
        (const char *[]){"key", "reason"}, MAX_SERIES);
    table_full = kp_metric_counter("keyplane_router_ratelimit_table_full_total",
                                   "Calls not rate limited because the bucket table was full.");
    shed = kp_metric_counter("keyplane_router_shed_total",
                             "Calls answered 503 overloaded: the node had max_inflight_calls in "
                             "flight.");
}

void kp_router__count_shed(void)
{
    kp_metric_add(shed, 1);
}

void kp_router__count_ratelimit_table_full(void)
{
    kp_metric_add(table_full, 1);
}

void kp_router__metrics_init(void)
{
    pthread_once(&once, init);
}

void kp_router__count_attempt(const char *provider, const char *key, const char *outcome)
{
    kp_metric_family_add(attempts, (const char *[]){provider, key, outcome}, 1);
}

void kp_router__count_failover(const char *pool)
{
    kp_metric_family_add(failovers, (const char *[]){pool}, 1);
}

void kp_router__count_usage(const struct kp_usage_event *ev)
{
    if (ev->tokens_in == 0 && ev->tokens_out == 0 && ev->cost == 0)
        return;
    const char *model = ev->model_served[0] ? ev->model_served : ev->model_requested;
    kp_metric_family_add(tokens, (const char *[]){ev->provider, model, ev->tenant, "in"},
                         (int64_t)ev->tokens_in);
    kp_metric_family_add(tokens, (const char *[]){ev->provider, model, ev->tenant, "out"},
                         (int64_t)ev->tokens_out);
    kp_metric_family_add(cost, (const char *[]){ev->provider, model, ev->tenant}, ev->cost);
    if (ev->key_id[0] == '\0')
        return;
    kp_metric_family_add(key_tokens, (const char *[]){ev->key_id, "in"}, (int64_t)ev->tokens_in);
    kp_metric_family_add(key_tokens, (const char *[]){ev->key_id, "out"}, (int64_t)ev->tokens_out);
    kp_metric_family_add(key_cost, (const char *[]){ev->key_id}, ev->cost);
}

void kp_router__observe_head(const char *provider, uint64_t us)
{
    kp_metric_family_observe_us(head_time, (const char *[]){provider}, us);
}

void kp_router__count_retry(const char *provider, const char *key)
{
    kp_metric_family_add(retries, (const char *[]){provider, key}, 1);
}

void kp_router__count_tripped(const char *key, int delta)
{
    kp_metric_family_add(tripped, (const char *[]){key}, delta);
}

void kp_router__count_cooldown(const char *key, const char *reason)
{
    kp_metric_family_add(cooldowns, (const char *[]){key, reason}, 1);
}

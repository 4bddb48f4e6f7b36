/* Key balances as keyplane shows them (docs/balances.md): the registry's
 * record (credit, since, top-ups) with the meter's cost subtracted.
 * Internal to node/: the control API (admin_balance.c) and the key_balance
 * alert rule (alert_rules.c, fed by alerts.c) compute the same figures
 * here, so that what GET /admin/v1/keys/{id}/balance shows is what the
 * rule alerts on. */
#ifndef KP_NODE_BALANCE_H
#define KP_NODE_BALANCE_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "raftstore/raftstore.h"

struct kp_meter_store;

/* The window the burn rate is measured over: the last day, or since
 * since_ms when that is later. */
#define KP_BALANCE_BURN_WINDOW_MS 86400000

/* What the meter says a key cost: since the balance's since_ms, and over
 * the burn window [recent_from_ms, now). */
struct kp_balance_spend {
    kp_nanousd spent;
    kp_nanousd recent;
    int64_t recent_from_ms;
};

/* Query @m for the cost of @key since @since_ms and over the burn window
 * ending at @now_ms. The meter counts whole minutes: a since_ms inside a
 * minute counts that minute whole, and at most the last 400 days (the
 * usage API's longest span). Blocking (it reads day files and segments):
 * run it on the threadpool. KP_OK; KP_ENOMEM; KP_EIO with @errmsg. */
int kp_balance_query(struct kp_meter_store *m, const char *key, int64_t since_ms, int64_t now_ms,
                     struct kp_balance_spend *out, char *errmsg, size_t errlen);

/* A balance at one moment. */
struct kp_balance_figures {
    kp_nanousd credit;
    kp_nanousd spent;
    kp_nanousd remaining;     /* credit - spent; negative when overspent */
    kp_nanousd burn_per_hour; /* cost per hour over the burn window */
    int64_t burn_from_ms;
    bool exhausted;           /* remaining <= 0 */
    int64_t exhaustion_at_ms; /* projected at the burn rate; 0: no burn (or exhausted) */
};

/* The figures of @b given what the meter said (@s) at @now_ms. Pure. */
void kp_balance_figures(const struct kp_key_balance *b, const struct kp_balance_spend *s,
                        int64_t now_ms, struct kp_balance_figures *out);

/* "-1.500000000": @v nano-USD as a decimal with 9 places, exact. */
void kp_balance_usd(kp_nanousd v, char *out, size_t len);

/* The control API's answer for @b with @f (docs/control-api.md); NULL
 * when out of memory. */
json_t *kp_balance_json(const struct kp_key_balance *b, const struct kp_balance_figures *f);

#endif

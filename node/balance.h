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
    int64_t provider_ms;      /* remaining is what the provider said then; 0: credit - spent */
};

/* The figures of key balance @b (NULL: none recorded) given what the meter
 * said (@s) at @now_ms. When the key's health @h (may be NULL) holds a
 * balance its provider's endpoint reported, that is what remains; else
 * credit - spent. Pure. */
void kp_balance_figures(const struct kp_key_balance *b, const struct kp_key_health *h,
                        const struct kp_balance_spend *s, int64_t now_ms,
                        struct kp_balance_figures *out);

/* "12.5" (at most 9 decimals, at most 9 * 10^9 dollars; a leading '-'
 * when @negative_ok) into nano-USD; false when it is not one. */
bool kp_balance_parse_usd(const char *s, bool negative_ok, kp_nanousd *out);

/* What a provider's balance endpoint answered (@body, JSON): the USD
 * amount at the JSON pointer @pointer (RFC 6901), a number or a numeric
 * string, less the one at @used_pointer when not NULL, into *@out.
 * KP_OK, or KP_EPARSE with @errmsg naming what is missing. */
int kp_balance_from_provider(const char *body, size_t len, const char *pointer,
                             const char *used_pointer, kp_nanousd *out, char *errmsg,
                             size_t errlen);

/* "-1.500000000": @v nano-USD as a decimal with 9 places, exact. */
void kp_balance_usd(kp_nanousd v, char *out, size_t len);

/* The control API's answer for @b with @f (docs/control-api.md); NULL
 * when out of memory. */
json_t *kp_balance_json(const char *key, const struct kp_key_balance *b,
                        const struct kp_balance_figures *f);

#endif

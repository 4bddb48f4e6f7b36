/* Canaries: the leader's cheap probe of every active key, and the key
 * status rules they share with passive classification (docs/health.md).
 *
 * canary_rules.c is pure (no clock, no I/O): when a key is due, what the
 * probe sends, how its answer is classified and which status follows.
 * canary.c is the leader's loop that runs the probes and commits the
 * results through Raft. */
#ifndef KP_NODE_CANARY_H
#define KP_NODE_CANARY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "alerts.h"
#include "raftstore/raftstore.h"

/* How a probe ended. */
enum kp_canary_outcome {
    KP_CANARY_OK,         /* 2xx */
    KP_CANARY_AUTH,       /* 401, 403: the key is refused */
    KP_CANARY_QUOTA,      /* out of money (insufficient_quota, credit balance) */
    KP_CANARY_RATE_LIMIT, /* 429 that is not about quota */
    KP_CANARY_FAILED,     /* 5xx, timeout, connect, other 4xx: the provider's trouble */
};

/* Consecutive failures (or successes) that move a key (hysteresis). */
#define KP_CANARY_STREAK 2

/* The probe's share of the interval it may move early or late: ±20%. */
#define KP_CANARY_JITTER_PCT 20

/* When a key last probed at @last_ms (0: never) is next due: @last_ms +
 * @interval_ms ± 20%, the offset a hash of the key id and @last_ms, so
 * that any leader computes the same time from the registry and keys spread
 * over the interval. A key never probed is due at once. */
int64_t kp_canary_due_ms(const char *key_id, int64_t last_ms, int64_t interval_ms);

/* Whether the leader probes the key at all: an active key with a secret,
 * whose status is not disabled (an operator's). */
bool kp_canary_wanted(const struct kp_key *key, const struct kp_key_health *h);

/* What one probe sends. The auth header's name; its value is the secret
 * (after "Bearer " when @bearer). */
struct kp_canary_request {
    const char *method;
    char url[2300];
    const char *auth_name;
    bool bearer;
    char body[512]; /* "" for a GET */
    bool anthropic_version;
};

/* Build the probe of @key at @p: OpenAI, OpenAI-compatible: GET
 * {base}/models; Azure: GET {base}/openai/models?api-version=V; Anthropic:
 * POST {base}/messages with max_tokens 1 to the key's first model (else a
 * small default); Gemini: GET {base}/models. KP_OK, or KP_ETOOBIG for a
 * URL or model too long. */
int kp_canary_request(const struct kp_provider *p, const struct kp_key *key,
                      struct kp_canary_request *out);

/* The request that reads @p's balance endpoint with @key's auth (as the
 * probe's): GET base_url + balance_path. KP_ENOENT when the provider has
 * none; KP_ETOOBIG for a URL too long. */
int kp_canary_balance_request(const struct kp_provider *p, const struct kp_key *key,
                              struct kp_canary_request *out);

/* Classify an answer: @status 0 is a transport failure. @body may be NULL.
 * *@error_class gets "" for success, else auth, quota, rate_limit,
 * server, timeout, connect or client (a static string). */
enum kp_canary_outcome kp_canary_classify(long status, const char *body, bool timed_out,
                                          const char **error_class);

/* The status after a probe. @status is the current one (healthy when the
 * key has no record); @streak the committed streak (> 0 successes in a
 * row, < 0 failures in a row). Writes the new streak to *@streak_out and
 * returns the new status:
 *   - auth: invalid at once; quota: quota_exhausted at once;
 *   - success on invalid or quota_exhausted: healthy at once (the key
 *     works again);
 *   - success on degraded or rate_limited: healthy after KP_CANARY_STREAK
 *     in a row;
 *   - rate_limit, failed: rate_limited, degraded after KP_CANARY_STREAK in
 *     a row; an invalid or quota_exhausted key stays so (only a success
 *     brings it back);
 *   - disabled stays disabled. */
int kp_canary_next(int status, int32_t streak, enum kp_canary_outcome outcome, int32_t *streak_out);

/* Passive classification on the leader, from the last minute of real
 * traffic summed over the members (@s). Troubled: at least
 * KP_PASSIVE_MIN_EVENTS 429s making half the attempts or more (rate
 * limited), or at least KP_PASSIVE_MIN_EVENTS attempts of which half or
 * more failed (degraded); *@error_class gets "rate_limit" or "error_rate"
 * ("" when not troubled). */
#define KP_PASSIVE_MIN_EVENTS 10
#define KP_PASSIVE_QUIET_MS   60000
int kp_passive_troubled(const struct kp_alert_key_stats *s, const char **error_class);

/* The status traffic gives a key now in @status: a healthy key that is
 * troubled becomes rate_limited or degraded, unless it came back to
 * healthy less than KP_PASSIVE_QUIET_MS ago (@since_back_ms; the window
 * would still hold the failures that took it out). Anything else is
 * returned as is: traffic never brings a key back (a canary does, once
 * the traffic is no longer troubled), and invalid, quota_exhausted and
 * disabled come from single answers and operators, not from rates. */
int kp_passive_next(int status, const struct kp_alert_key_stats *s, int64_t since_back_ms,
                    const char **error_class);

/* Whether @status takes a key out of rotation at once. */
bool kp_canary_out_of_rotation(int status);

/* "ok", "auth", "quota", "rate_limit", "failed"; and back (false for any
 * other text), for the probe's answer between nodes. */
const char *kp_canary_outcome_name(enum kp_canary_outcome o);
bool kp_canary_outcome_parse(const char *s, enum kp_canary_outcome *out);

/* --- canary_probe.c: running one probe on this node ------------------------------------ */

struct kp_node;
struct kp_http_exchange;
struct kp_http_request;

/* What a probe learned: the provider's status (0: not reached), the
 * outcome and the error class ("" on success; a static string). */
struct kp_canary_answer {
    long status;
    enum kp_canary_outcome outcome;
    const char *error_class;
    bool has_balance; /* the provider's balance endpoint was read */
    kp_nanousd balance;
};
typedef void (*kp_canary_probe_cb)(void *arg, const struct kp_canary_answer *a);

/* Probe key @key_id as this node's registry view has it, on the main loop:
 * @cb runs once with the answer, after the probe was metered as canary
 * traffic from this node (time @started_ms). KP_OK, or an error (no such
 * key or provider: KP_ENOENT; the secret cannot be opened: KP_EPERM) with
 * @errmsg set and no callback and nothing sent. */
int kp_canary_probe(struct kp_node *n, const char *key_id, int64_t started_ms,
                    kp_canary_probe_cb cb, void *arg, char *errmsg, size_t errlen);

/* POST /internal/v1/canary {"key","started_ms"} (cluster secret checked by
 * the caller): the leader asks this node to run a probe; 200 {"status",
 * "outcome","error_class"} once it answered, 404 for an unknown key, 503
 * when it could not be sent. */
void kp_canary_internal(struct kp_node *n, struct kp_http_exchange *ex,
                        const struct kp_http_request *req, const char *rid);

#endif

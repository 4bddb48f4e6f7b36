/* Internal to the control API's /admin/v1/ handlers (admin.c, admin_auth.c,
 * admin_write.c, admin_keys.c, admin_secrets.c, admin_audit.c,
 * admin_budgets.c, admin_freezes.c, admin_usage.c, admin_alerts.c,
 * admin_balance.c, admin_session.c); nothing
 * else includes this.
 *
 * admin.c routes a request, authenticates its caller and checks the
 * permission, then calls the route's handler with a struct kp_admin_req
 * allocated from the exchange (valid until the exchange is answered). A
 * handler that writes builds a command, wraps it in a struct kp_admin_write
 * and hands it to kp_admin__submit, which proposes it and, once applied,
 * answers through the write's continuation (@then). */
#ifndef KP_NODE_ADMIN_INTERNAL_H
#define KP_NODE_ADMIN_INTERNAL_H

#include "node.h"

struct kp_admin_route;

struct kp_admin_req {
    struct kp_node *n;
    struct kp_http_exchange *ex;
    const struct kp_http_request *req;
    const char *rid;
    const struct kp_admin_route *route;
    struct kp_admin_caller who;
    int kind;        /* enum kp_kind the path names, or -1 */
    const char *id;  /* the decoded {id} segment, or NULL */
    const char *sub; /* the decoded second parameter ({version}), or NULL */
    bool has_expect; /* If-Match / If-None-Match, as expect_version */
    uint64_t expect;
    struct kp_admin_span *span; /* admin_trace.c: a write's span, or NULL */
    const char *session;        /* the console session cookie's value (up to ';') when the
                                   caller came by it, else NULL (admin_session.c) */
};

struct kp_admin_write;

/* What to do once the proposed entry applied and took effect: answer (then
 * free @w) or propose the next step (kp_admin__submit with @w again). */
typedef void (*kp_admin_then_fn)(struct kp_admin_write *w, const struct kp_fsm_result *res);

/* One write in flight. Owned by whoever holds it: the handler until it
 * submits, the store's callback afterwards. */
struct kp_admin_write {
    struct kp_admin_req *r;
    int kind;          /* entity to render at the end */
    const char *id;    /* its id (arena memory of the exchange) */
    bool is_delete;    /* answer {"deleted": id} */
    bool created;      /* some step created the entity: answer 201 */
    bool wipe_request; /* the request body held a secret: wipe it once
                          the request cannot be forwarded any more */
    kp_admin_then_fn then;
    /* Refusal with KP_ECONFLICT: call @redo instead of answering while
     * redos_left > 0 (a token whose random id clashed draws again). */
    void (*redo)(struct kp_admin_write *w);
    int redos_left;
    /* Keys: the plaintext still to seal (wiped and freed with @w), the
     * grace for the previous primary, and the version to retire after a
     * rotation with no grace (0: none). */
    struct kp_secret *secret;
    int64_t grace_ms;
    uint32_t retire_version;
    /* Tokens: the request body (for a redraw) and the text shown once
     * (wiped and freed with @w). */
    json_t *body;
    char *token_text;
    /* Rewrap: how many secrets the command reseals. */
    uint32_t count;
};

/* --- admin.c: shared by the handlers ------------------------------------- */

const struct kp_fsm *kp_admin__fsm(const struct kp_admin_req *r);

/* The request body as a JSON object (an empty body is {} when
 * @empty_ok); NULL after answering 400. */
json_t *kp_admin__body(struct kp_admin_req *r, bool empty_ok);
/* The decoded value of query parameter @name (arena memory), or NULL. */
const char *kp_admin__query(struct kp_admin_req *r, const char *name);
/* Call @fn with every query parameter, decoded, in order; stops at the
 * first non-KP_OK return and returns it (KP_EINVAL: a bad escape). */
int kp_admin__query_each(struct kp_admin_req *r,
                         int (*fn)(void *arg, const char *name, const char *value), void *arg);
/* @src made safe to quote in a message: at most @len - 1 bytes, bytes
 * outside printable ASCII as '?'. */
void kp_admin__quote(char *dst, size_t len, const char *src);

/* ?limit=N of a paged list: 1..5000, 500 when absent. False after
 * answering 400. */
bool kp_admin__list_limit(struct kp_admin_req *r, size_t *limit);
/* A view of this node's state machine, held for the caller (release it);
 * NULL after answering 503 when out of memory. */
struct kp_view *kp_admin__view(struct kp_admin_req *r);

/* An entity as the API shows it (binary fields dropped even if the
 * renderer were to add them); NULL when out of memory. */
json_t *kp_admin__entity_json(const struct kp_entity *e);
/* Answer @v (consumed) with X-Request-Id and, when @etag > 0, ETag "N".
 * With @wipe the serialized body is wiped before it is freed (it holds a
 * secret shown once). */
void kp_admin__respond(struct kp_admin_req *r, int status, json_t *v, uint64_t etag, bool wipe);
/* The same with up to 4 extra headers (@h: valid until this returns). */
void kp_admin__respond_with(struct kp_admin_req *r, int status, json_t *v,
                            const struct kp_http_header *h, unsigned nh, bool wipe);
/* Answer the control API's error shape; the type follows @status. */
void kp_admin__fail(struct kp_admin_req *r, int status, const char *code, const char *field,
                    const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* 503: out of memory. */
void kp_admin__oom(struct kp_admin_req *r);
/* The part of @msg before ": " when it reads like a field path
 * ("members[2].weight: must be 1..1000"), copied into @buf; else NULL. */
const char *kp_admin__field_of(const char *msg, char *buf, size_t len);

/* --- admin_write.c --------------------------------------------------------- */

/* A write for @r that renders (@kind, @id) when done; NULL after answering
 * 503 when out of memory. */
struct kp_admin_write *kp_admin__write_new(struct kp_admin_req *r, int kind, const char *id);
/* Wipes and frees what @w holds; never touches w->r, so it may run after
 * the exchange was answered. */
void kp_admin__write_free(struct kp_admin_write *w);
/* Propose @cmd (freed here) for @w; every outcome is answered. When this
 * node is no longer the leader the request is forwarded if @may_forward
 * (nothing of it applied yet), else answered 503. */
void kp_admin__submit(struct kp_admin_write *w, struct kp_buf *cmd, bool may_forward);
/* The default continuation: the entity (with ETag) or {"deleted": id}. */
void kp_admin__answer_entity(struct kp_admin_write *w, const struct kp_fsm_result *res);

/* The envelope of a command for @r: version, @op, ts, audit context and
 * the request's expect_version. */
void kp_admin__envelope(struct kp_admin_req *r, struct kp_command *cmd, enum kp_op op);
/* Encode @cmd into @out and check it as a replica would (kp_command_decode),
 * so that a bad field is a 400 naming it before anything is proposed.
 * Answers and returns false on failure. */
bool kp_admin__encode(struct kp_admin_req *r, const struct kp_command *cmd, struct kp_buf *out);

/* The request body held a secret: wipe it once this node answers itself
 * (the HTTP server frees it without wiping; a forwarded request still
 * needs it). */
void kp_admin__wipe_body(struct kp_admin_req *r);

/* --- admin_trace.c (docs/observability.md) ---------------------------------- */

/* A write to @route (a pattern, static) on the control listener: its span
 * starts now and is exported when the exchange finishes, when traces are
 * exported and the trace is kept. */
void kp_admin__span_begin(struct kp_admin_req *r, const char *route);
/* The write's proposals to Raft and their outcomes (@code: KP_OK applied,
 * else not committed): the raft.commit child span. */
void kp_admin__span_proposed(struct kp_admin_req *r);
void kp_admin__span_applied(struct kp_admin_req *r, int code);

/* --- admin_auth.c -------------------------------------------------------- */

/* Authenticate the caller of @r into r->who and check @perm (0: any valid
 * token). On refusal the request is answered (401/403, audited) or
 * forwarded to the leader, and false returned. */
bool kp_admin__authenticate(struct kp_admin_req *r, unsigned perm);

/* --- admin_session.c (docs/console.md) --------------------------------------- */

/* The value of the kp_session cookie in @req (up to ';' or the end of the
 * header), or NULL. */
const char *kp_admin__session_cookie(const struct kp_http_request *req);
/* Check a session cookie: its MAC (under the master key or, during a
 * rotation, the previous one), its expiry and that its
 * token still exists with the hash it was signed for. @id_out gets the
 * token id the cookie names even when it is refused. KP_OK with *@tok_out,
 * else KP_EPERM (malformed, altered, token gone) or KP_ETIMEDOUT (expired)
 * with @why. The token's own state and role are the caller's to check. */
int kp_admin__session_verify(struct kp_admin_req *r, const char *cookie, char *id_out,
                             size_t id_len, const struct kp_token **tok_out, char *why,
                             size_t why_len);
/* A change made with a session: Origin (when sent) names this host and
 * X-CSRF-Token is the session's. False with @code and @why otherwise. */
bool kp_admin__session_csrf_ok(struct kp_admin_req *r, const char *cookie, const char **code,
                               char *why, size_t why_len);
/* POST, GET and DELETE /admin/v1/session. */
void kp_admin__session_start(struct kp_admin_req *r);
void kp_admin__session_get(struct kp_admin_req *r);
void kp_admin__session_end(struct kp_admin_req *r);

/* --- admin_keys.c --------------------------------------------------------- */

void kp_admin__key_put(struct kp_admin_req *r);
void kp_admin__key_rotate(struct kp_admin_req *r);
void kp_admin__key_retire(struct kp_admin_req *r);
void kp_admin__key_disable(struct kp_admin_req *r);
void kp_admin__key_enable(struct kp_admin_req *r);
void kp_admin__key_revoke(struct kp_admin_req *r);
void kp_admin__token_create(struct kp_admin_req *r);

/* --- admin_secrets.c ----------------------------------------------------- */

void kp_admin__secrets_rewrap(struct kp_admin_req *r);

/* --- admin_snapshot.c ----------------------------------------------------- */

/* GET /admin/v1/snapshot: the registry snapshot (leader; audited). */
void kp_admin__snapshot(struct kp_admin_req *r);

/* --- admin_audit.c -------------------------------------------------------- */

void kp_admin__audit_list(struct kp_admin_req *r);
/* admin_budgets.c: GET /admin/v1/budgets, GET /admin/v1/budgets/{policy}/{budget},
 * POST .../reset (docs/budgets.md). */
void kp_admin__budgets_list(struct kp_admin_req *r);
void kp_admin__budget_get(struct kp_admin_req *r);
void kp_admin__budget_reset(struct kp_admin_req *r);
/* admin_prices.c: GET /admin/v1/price-table and /admin/v1/price-table/{model}:
 * the prices that apply, registry and built-in (docs/registry.md, "Prices"). */
void kp_admin__price_table(struct kp_admin_req *r);
void kp_admin__price_of(struct kp_admin_req *r);
/* admin_freezes.c: GET /admin/v1/freezes, GET, PUT and DELETE
 * /admin/v1/freezes/{scope}/{name} (docs/budgets.md). */
void kp_admin__freezes_list(struct kp_admin_req *r);
void kp_admin__freeze_get(struct kp_admin_req *r);
void kp_admin__freeze_put(struct kp_admin_req *r);
void kp_admin__freeze_delete(struct kp_admin_req *r);
/* admin_usage.c: GET /admin/v1/usage and /admin/v1/usage/events (docs/usage-api.md). */
void kp_admin__usage_query(struct kp_admin_req *r);
void kp_admin__usage_events(struct kp_admin_req *r);
/* Not a meter: relay @r to one, once (503 no_meter when there is none).
 * False when the caller must answer itself (this node is a meter). */
bool kp_admin__relay_to_meter(struct kp_admin_req *r);
/* admin_balance.c: PUT and GET /admin/v1/keys/{id}/balance, POST
 * /admin/v1/keys/{id}/balance/topups (docs/balances.md). */
void kp_admin__balance_put(struct kp_admin_req *r);
void kp_admin__balance_topup(struct kp_admin_req *r);
void kp_admin__balance_get(struct kp_admin_req *r);
void kp_admin__audit_verify(struct kp_admin_req *r);
/* admin_alerts.c: GET /admin/v1/alerts, /alerts/dead-letters, /alerts/{id},
 * POST /alerts/{id}/ack (docs/alerts.md). */
void kp_admin__alerts_list(struct kp_admin_req *r);
void kp_admin__alerts_dead_letters(struct kp_admin_req *r);
void kp_admin__alert_get(struct kp_admin_req *r);
void kp_admin__alert_ack(struct kp_admin_req *r);
/* What the API adds to an entity's JSON: an alert's state and times, a
 * webhook's credentials masked. */
void kp_admin__decorate(json_t *v, const struct kp_entity *e);
/* A PUT of an alert rule or a webhook (@body, which may be changed: a
 * masked url or secret sent back becomes the stored one) checked against
 * the alert rules' and webhooks' own rules. False after answering 400;
 * true for other kinds. */
bool kp_admin__check_alerting(struct kp_admin_req *r, json_t *body);

#endif

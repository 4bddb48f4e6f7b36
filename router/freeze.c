/* Freezes on the request path (docs/budgets.md "Freeze: the stop-loss
 * button"): an operator froze the call's tenant, project, feature, pool or
 * token, so the call is refused before any key is chosen, with the scope,
 * the name, the operator's reason and since when. A frozen key is not
 * refused here: select.c skips it like a disabled one.
 *
 * The check reads the view the call holds, so a freeze takes effect on
 * each router with the first view published after it applied there.
 * Nothing is frozen almost always: then the check is one count. */
#include <stdio.h>
#include <string.h>

#include "router_internal.h"

int kp_router__check_freeze(struct kp_call *c)
{
    if (kp_view_count(c->view, KP_KIND_FREEZE) == 0)
        return KP_OK;
    /* Broadest first: the message names the widest stop in force. */
    const struct {
        int scope;
        const char *target;
    } on[] = {
        {KP_FREEZE_TENANT, c->ev.tenant},
        {KP_FREEZE_PROJECT, c->ev.project},
        {KP_FREEZE_FEATURE, c->ev.feature},
        {KP_FREEZE_POOL, c->pool_name},
        {KP_FREEZE_TOKEN, c->token != NULL ? c->token->e.id : NULL},
    };
    const struct kp_freeze *f = NULL;
    for (size_t i = 0; f == NULL && i < sizeof(on) / sizeof(on[0]); i++)
        f = kp_view_freeze(c->view, on[i].scope, on[i].target);
    if (f == NULL)
        return KP_OK;
    char since[32], msg[768];
    kp_format_time_ms(f->e.created_ms, since, sizeof(since));
    /* Whole seconds: "2026-11-30T07:12:03Z". */
    if (strlen(since) == 24)
        memcpy(since + 19, "Z", 2);
    snprintf(msg, sizeof(msg), "%s %s is frozen by an operator: \"%s\" (since %s)",
             kp_freeze_scope_name(f->scope), f->target, f->reason, since);
    kp_usage_set_str(c->ev.error_class, "frozen");
    return kp_router__fail(c, 403, "permission_error", "frozen", msg);
}

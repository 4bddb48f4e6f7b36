/* Roles and their permissions: the one table that says what each role of
 * token may do, and the names 403 messages use.
 *
 * The split follows DESIGN.md "Secrets": change (admin), operate (disable,
 * enable, rotate keys; manage pools; revoking is final and needs change),
 * use (call the gateway, never see a key), read usage, read audit; reading
 * the non-secret registry, and reading alerts (which budgets crossed what,
 * which keys failed), are permissions of their own so that each role gets exactly what its job
 * needs. Permissions do not imply one another: a check asks for the bits it needs and the table
 * grants them explicitly, so admin lists every bit. */
#include "raftstore/raftstore.h"

#include <stdio.h>
#include <string.h>

static const char *const role_names[KP_ROLE_COUNT] = {
#define ROLE_NAME(e, name) [e] = name,
    KP_ROLE_MAP(ROLE_NAME)
#undef ROLE_NAME
};

/* Why each role holds what it holds is in docs/tokens.md, "Roles". */
static const unsigned role_perms[KP_ROLE_COUNT] = {
    [KP_ROLE_ADMIN] = KP_PERM_ALL,
    [KP_ROLE_OPERATOR] =
        KP_PERM_OPERATE | KP_PERM_READ_REGISTRY | KP_PERM_READ_USAGE | KP_PERM_READ_ALERTS,
    [KP_ROLE_APP] = KP_PERM_USE,
    [KP_ROLE_FINANCE] = KP_PERM_READ_USAGE | KP_PERM_READ_ALERTS,
    [KP_ROLE_AUDITOR] = KP_PERM_READ_AUDIT | KP_PERM_READ_REGISTRY | KP_PERM_READ_ALERTS,
};

static bool role_known(enum kp_role role)
{
    return (unsigned)role < KP_ROLE_COUNT;
}

int kp_role_parse(const char *name, enum kp_role *out)
{
    if (name == NULL)
        return KP_EINVAL;
    for (unsigned r = 0; r < KP_ROLE_COUNT; r++) {
        if (strcmp(name, role_names[r]) == 0) {
            *out = (enum kp_role)r;
            return KP_OK;
        }
    }
    return KP_EINVAL;
}

const char *kp_role_name(enum kp_role role)
{
    return role_known(role) ? role_names[role] : "unknown";
}

unsigned kp_role_perms(enum kp_role role)
{
    return role_known(role) ? role_perms[role] : 0;
}

bool kp_role_has(enum kp_role role, unsigned perms)
{
    return perms != 0 && (kp_role_perms(role) & perms) == perms;
}

const char *kp_perm_name(unsigned perm)
{
#define PERM_NAME(e, bit, name)                                                                    \
    if (perm == (unsigned)(e))                                                                     \
        return name;
    KP_PERM_MAP(PERM_NAME)
#undef PERM_NAME
    return "unknown";
}

void kp_role_refusal(char *buf, size_t len, const char *token_id, enum kp_role role, unsigned perms)
{
    unsigned missing = perms & ~kp_role_perms(role);
    /* The lowest missing bit; with nothing missing (a caller bug), the
     * requirement itself is named. */
    unsigned first = missing ? missing & (0u - missing) : perms;
    snprintf(buf, len, "token %s (role %s) lacks permission %s", token_id, kp_role_name(role),
             kp_perm_name(first));
}

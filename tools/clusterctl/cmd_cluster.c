/* The cluster itself: `members ...`, `cluster`, `leader transfer`, and
 * `whoami`.
 *
 * `cluster` shows what the answering node knows of the Raft group: who
 * leads, at which term, and how far each member has committed and applied
 * (as that member last reported it; a member that did not answer shows as
 * unreachable). Membership changes go through the leader; a 503 while there
 * is none says to retry shortly (client.c). */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "clusterctl.h"

static int members_list(struct kp_ctl *ctl, int argc, char **argv);
static int members_add(struct kp_ctl *ctl, int argc, char **argv);
static int members_remove(struct kp_ctl *ctl, int argc, char **argv);
static int members_role(struct kp_ctl *ctl, int argc, char **argv);
static int members_meter(struct kp_ctl *ctl, int argc, char **argv);
static int leader_transfer(struct kp_ctl *ctl, int argc, char **argv);

static const struct kp_ctl_command members_commands[] = {
    {"list", "", "list the registry's members", members_list, false},
    {"add",
     "--node-id N --address HOST:PORT [--name NAME] [--control-address HOST:PORT] "
     "[--role voter|standby|spare]",
     "add a node (its id is in its DATA_DIR/node.id) to the Raft configuration", members_add,
     false},
    {"remove", "NAME",
     "remove a member from the Raft configuration (leadership moves off it first when it leads)",
     members_remove, false},
    {"role", "NAME voter|standby|spare", "change a member's role", members_role, false},
    {"meter", "NAME on|off",
     "make a member a meter (it receives usage segments and answers usage queries), or not",
     members_meter, false},
};

static const struct kp_ctl_command leader_commands[] = {
    {"transfer", "[NODE_ID]",
     "hand leadership to NODE_ID, or to the most up-to-date voter; waits for the election",
     leader_transfer, false},
};

#define N(table) (sizeof(table) / sizeof(table[0]))

int kp_ctl__cmd_members(struct kp_ctl *ctl, int argc, char **argv)
{
    return kp_ctl__group(ctl, "members", members_commands, N(members_commands), argc, argv);
}

int kp_ctl__cmd_leader(struct kp_ctl *ctl, int argc, char **argv)
{
    return kp_ctl__group(ctl, "leader", leader_commands, N(leader_commands), argc, argv);
}

static int members_list(struct kp_ctl *ctl, int argc, char **argv)
{
    return kp_ctl__list_kind(ctl, "members", argc, argv);
}

static bool valid_role(const char *role)
{
    return strcmp(role, "voter") == 0 || strcmp(role, "standby") == 0 || strcmp(role, "spare") == 0;
}

static int bad_role(struct kp_ctl *ctl, const char *role)
{
    kp_ctl__usage_error(ctl, "%s: role must be voter, standby or spare, not '%s'", ctl->command,
                        role);
    return KP_CTL_EXIT_USAGE;
}

/* Prints "member NAME: <what>" or the answer as JSON/YAML. */
static void print_member(struct kp_ctl *ctl, const char *name, json_t *answer, const char *what)
{
    if (ctl->output != KP_CTL_OUTPUT_TABLE) {
        kp_ctl__print_doc(ctl, answer);
        return;
    }
    fputs("member ", stdout);
    kp_ctl__print_clean(stdout, name);
    printf(": %s\n", what);
}

struct add_args {
    const char *node_id, *address, *name, *control_address, *role;
};

/* The request body, or NULL after a usage error. */
static json_t *add_body(struct kp_ctl *ctl, const struct add_args *a)
{
    uint64_t id;

    if (a->node_id == NULL || a->address == NULL) {
        kp_ctl__usage_error(ctl, "members add: --node-id and --address are required (the "
                                 "node's id is in its DATA_DIR/node.id)");
        return NULL;
    }
    if (kp_ctl__parse_uint(ctl, "--node-id", a->node_id, INT64_MAX, &id) != KP_CTL_EXIT_OK)
        return NULL;
    if (id == 0) {
        kp_ctl__usage_error(ctl, "members add: --node-id must be 1 or more");
        return NULL;
    }
    if (strrchr(a->address, ':') == NULL ||
        (a->control_address != NULL && strrchr(a->control_address, ':') == NULL)) {
        kp_ctl__usage_error(ctl, "members add: --address (the node's Raft address) and "
                                 "--control-address must be HOST:PORT");
        return NULL;
    }
    if (!valid_role(a->role)) {
        bad_role(ctl, a->role);
        return NULL;
    }
    json_t *body =
        json_pack("{s:I, s:s, s:s*, s:s*, s:s}", "node_id", (json_int_t)id, "address", a->address,
                  "name", a->name, "control_address", a->control_address, "role", a->role);
    if (body == NULL)
        kp_ctl__usage_error(ctl, "members add: the values must be valid UTF-8");
    return body;
}

static int members_add(struct kp_ctl *ctl, int argc, char **argv)
{
    struct add_args a = {NULL, NULL, NULL, NULL, "voter"};
    const struct kp_ctl_flag flags[] = {
        {"node-id", 0, KP_CTL_FLAG_VALUE, &a.node_id},
        {"address", 0, KP_CTL_FLAG_VALUE, &a.address},
        {"name", 0, KP_CTL_FLAG_VALUE, &a.name},
        {"control-address", 0, KP_CTL_FLAG_VALUE, &a.control_address},
        {"role", 0, KP_CTL_FLAG_VALUE, &a.role},
    };
    char what[400], node[40];
    json_t *body = NULL, *answer = NULL;
    const char *name;
    int first, rc = kp_ctl__parse(ctl, argc, argv, flags, N(flags), &first);

    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__positionals(ctl, argc - first, 0, 0, members_commands[1].synopsis, false);
    if (rc == KP_CTL_EXIT_OK && (body = add_body(ctl, &a)) == NULL)
        rc = KP_CTL_EXIT_USAGE;
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__resolve(ctl);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__call(ctl, "POST", "/admin/v1/members", body, NULL, &answer);
    if (rc == KP_CTL_EXIT_OK) {
        /* The server names the member when --name was not given. */
        snprintf(node, sizeof(node), "node %s", a.node_id);
        name = json_string_value(json_object_get(answer, "id"));
        name = name != NULL ? name : a.name != NULL ? a.name : node;
        snprintf(what, sizeof(what), "added (node %s, %s, %s)", a.node_id, a.address, a.role);
        print_member(ctl, name, answer, what);
    }
    json_decref(body);
    json_decref(answer);
    return rc;
}

/* The leader's node id and @name's, from GET /admin/v1/cluster (0 when
 * unknown). */
static int leader_and_member(struct kp_ctl *ctl, const char *name, json_int_t *leader,
                             json_int_t *member)
{
    json_t *answer = NULL, *m;
    size_t i;
    int rc = kp_ctl__call(ctl, "GET", "/admin/v1/cluster", NULL, NULL, &answer);
    *leader = *member = 0;
    if (rc != KP_CTL_EXIT_OK)
        return rc;
    *leader = json_integer_value(json_object_get(json_object_get(answer, "leader"), "node_id"));
    json_array_foreach(json_object_get(answer, "members"), i, m)
    {
        const char *n = json_string_value(json_object_get(m, "name"));
        if (n != NULL && strcmp(n, name) == 0)
            *member = json_integer_value(json_object_get(m, "node_id"));
    }
    json_decref(answer);
    return KP_CTL_EXIT_OK;
}

/* DELETE, retried while the cluster has no leader to take it (503): after
 * a leadership transfer the nodes learn the new leader within an election
 * timeout or so. */
static int delete_member(struct kp_ctl *ctl, const char *path, json_t **answer)
{
    struct kp_ctl_response resp;
    for (int attempt = 0;; attempt++) {
        if (kp_ctl__request(ctl, "DELETE", path, NULL, 0, NULL, &resp) != 0)
            return kp_ctl__unreachable(ctl);
        if (resp.status != 503 || attempt == 40)
            break;
        kp_ctl__response_free(&resp);
        usleep(250 * 1000);
    }
    int rc = KP_CTL_EXIT_OK;
    if (resp.status < 200 || resp.status > 299)
        rc = kp_ctl__refused(ctl, path, &resp);
    else if ((*answer = kp_ctl__response_json(&resp)) == NULL)
        *answer = json_null();
    kp_ctl__response_free(&resp);
    return rc;
}

static int members_remove(struct kp_ctl *ctl, int argc, char **argv)
{
    char *path;
    json_t *answer = NULL;
    json_int_t leader, member;
    int first, rc = kp_ctl__parse(ctl, argc, argv, NULL, 0, &first);

    if (rc != KP_CTL_EXIT_OK ||
        (rc = kp_ctl__positionals(ctl, argc - first, 1, 1, "NAME", false)) != KP_CTL_EXIT_OK ||
        (rc = kp_ctl__resolve(ctl)) != KP_CTL_EXIT_OK)
        return rc;
    const char *name = argv[first];
    /* The leader cannot remove itself: move leadership to another voter
     * first (docs/operations.md, "Remove a node"). */
    if ((rc = leader_and_member(ctl, name, &leader, &member)) != KP_CTL_EXIT_OK)
        return rc;
    if (member != 0 && member == leader) {
        fprintf(stderr, "%s: %s leads the cluster: handing leadership to another voter first\n",
                ctl->prog, name);
        json_t *body = json_object();
        rc = kp_ctl__call(ctl, "POST", "/admin/v1/cluster/transfer", body, NULL, &answer);
        json_decref(body);
        json_decref(answer);
        answer = NULL;
        if (rc != KP_CTL_EXIT_OK)
            return rc;
    }
    if ((path = kp_ctl__path("members", name, NULL)) == NULL) {
        kp_ctl__error(ctl, "out of memory");
        return KP_CTL_EXIT_NO;
    }
    rc = delete_member(ctl, path, &answer);
    if (rc == KP_CTL_EXIT_OK)
        print_member(ctl, name, answer, "removed");
    json_decref(answer);
    kp_free(path);
    return rc;
}

static int members_role(struct kp_ctl *ctl, int argc, char **argv)
{
    char *path, what[64];
    json_t *body, *answer = NULL;
    int first, rc = kp_ctl__parse(ctl, argc, argv, NULL, 0, &first);

    if (rc != KP_CTL_EXIT_OK ||
        (rc = kp_ctl__positionals(ctl, argc - first, 2, 2, members_commands[3].synopsis, false)) !=
            KP_CTL_EXIT_OK)
        return rc;
    if (!valid_role(argv[first + 1]))
        return bad_role(ctl, argv[first + 1]);
    if ((rc = kp_ctl__resolve(ctl)) != KP_CTL_EXIT_OK)
        return rc;
    if ((path = kp_ctl__path("members", argv[first], "role", NULL)) == NULL) {
        kp_ctl__error(ctl, "out of memory");
        return KP_CTL_EXIT_NO;
    }
    body = json_pack("{s:s}", "role", argv[first + 1]);
    rc = kp_ctl__call(ctl, "PUT", path, body, NULL, &answer);
    snprintf(what, sizeof(what), "now %s", argv[first + 1]);
    if (rc == KP_CTL_EXIT_OK)
        print_member(ctl, argv[first], answer, what);
    json_decref(body);
    json_decref(answer);
    kp_free(path);
    return rc;
}

static int members_meter(struct kp_ctl *ctl, int argc, char **argv)
{
    char *path;
    json_t *body, *answer = NULL;
    int first, rc = kp_ctl__parse(ctl, argc, argv, NULL, 0, &first);

    if (rc != KP_CTL_EXIT_OK ||
        (rc = kp_ctl__positionals(ctl, argc - first, 2, 2, members_commands[4].synopsis, false)) !=
            KP_CTL_EXIT_OK)
        return rc;
    const char *v = argv[first + 1];
    bool on = strcmp(v, "on") == 0;
    if (!on && strcmp(v, "off") != 0) {
        kp_ctl__usage_error(ctl, "members meter: say on or off");
        return KP_CTL_EXIT_USAGE;
    }
    if ((rc = kp_ctl__resolve(ctl)) != KP_CTL_EXIT_OK)
        return rc;
    if ((path = kp_ctl__path("members", argv[first], "meter", NULL)) == NULL) {
        kp_ctl__error(ctl, "out of memory");
        return KP_CTL_EXIT_NO;
    }
    body = json_pack("{s:b}", "meter", on);
    rc = kp_ctl__call(ctl, "PUT", path, body, NULL, &answer);
    if (rc == KP_CTL_EXIT_OK)
        print_member(ctl, argv[first], answer, on ? "now a meter" : "no longer a meter");
    json_decref(body);
    json_decref(answer);
    kp_free(path);
    return rc;
}

/* --- cluster --------------------------------------------------------------- */

/* The name of node @id: the leader object may carry none, the members
 * list of the same answer does. */
static const json_t *member_name(const json_t *leader, const json_t *answer)
{
    json_t *id = json_object_get(leader, "node_id");
    json_t *m;
    size_t i;

    if (json_object_get(leader, "name") != NULL)
        return json_object_get(leader, "name");
    json_array_foreach(json_object_get(answer, "members"), i, m)
    {
        if (json_is_integer(id) &&
            json_integer_value(json_object_get(m, "node_id")) == json_integer_value(id))
            return json_object_get(m, "name");
    }
    return NULL;
}

/* "n1 (node 1)", or "none" while there is no leader. */
static void cell_leader(struct kp_buf *out, const json_t *value, const json_t *row)
{
    const json_t *name = member_name(value, row);

    if (!json_is_object(value)) {
        kp_buf_append_lit(out, "none (election in progress, or no quorum)");
        return;
    }
    if (name != NULL) {
        kp_ctl__cell_text(out, name, NULL);
        kp_buf_append_lit(out, " ");
    }
    kp_buf_appendf(out, "%snode %" JSON_INTEGER_FORMAT "%s", name != NULL ? "(" : "",
                   json_integer_value(json_object_get(value, "node_id")), name != NULL ? ")" : "");
}

static void cell_contact(struct kp_buf *out, const json_t *value, const json_t *row)
{
    if (json_is_false(json_object_get(row, "reachable")))
        kp_buf_append_lit(out, "unreachable");
    else
        kp_ctl__cell_ms(out, value, row);
}

static void cell_mark(struct kp_buf *out, const json_t *value, const json_t *row)
{
    (void)row;
    if (json_is_true(value))
        kp_buf_append_lit(out, "*");
}

static const struct kp_ctl_column cluster_record[] = {
    {"CLUSTER", "cluster_id", NULL},
    {"LEADER", "leader", cell_leader},
    {"TERM", "term", NULL},
    {"COMMIT", "commit_index", NULL},
    {"APPLIED", "applied_index", NULL},
    {"ANSWERED_BY", "this_node", NULL},
};

static const struct kp_ctl_column cluster_members[] = {
    {"NODE", "node_id", NULL},
    {"NAME", "name", NULL},
    {"ADDRESS", "address", NULL},
    {"ROLE", "role", NULL},
    {"LEADER", "leader", cell_mark},
    {"TERM", "term", NULL},
    {"COMMIT", "commit_index", NULL},
    {"APPLIED", "applied_index", NULL},
    {"LAST_CONTACT", "last_contact_ms", cell_contact},
};

int kp_ctl__cmd_cluster(struct kp_ctl *ctl, int argc, char **argv)
{
    json_t *answer = NULL;
    int rc = kp_ctl__begin(ctl, argc, argv, "");

    if (rc != KP_CTL_EXIT_OK)
        return rc;
    rc = kp_ctl__call(ctl, "GET", "/admin/v1/cluster", NULL, NULL, &answer);
    if (rc == KP_CTL_EXIT_OK && ctl->output != KP_CTL_OUTPUT_TABLE) {
        kp_ctl__print_doc(ctl, answer);
    } else if (rc == KP_CTL_EXIT_OK) {
        kp_ctl__print_record(cluster_record, N(cluster_record), answer);
        putchar('\n');
        kp_ctl__print_table(cluster_members, N(cluster_members),
                            json_object_get(answer, "members"));
    }
    json_decref(answer);
    return rc;
}

static int leader_transfer(struct kp_ctl *ctl, int argc, char **argv)
{
    json_t *body = json_object(), *answer = NULL, *leader;
    uint64_t id;
    int first, rc = kp_ctl__parse(ctl, argc, argv, NULL, 0, &first);

    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__positionals(ctl, argc - first, 0, 1, "[NODE_ID]", false);
    if (rc == KP_CTL_EXIT_OK && first < argc &&
        (rc = kp_ctl__parse_uint(ctl, "NODE_ID", argv[first], INT64_MAX, &id)) == KP_CTL_EXIT_OK)
        json_object_set_new(body, "node_id", json_integer((json_int_t)id));
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__resolve(ctl);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__call(ctl, "POST", "/admin/v1/cluster/transfer", body, NULL, &answer);
    if (rc == KP_CTL_EXIT_OK && ctl->output != KP_CTL_OUTPUT_TABLE) {
        kp_ctl__print_doc(ctl, answer);
    } else if (rc == KP_CTL_EXIT_OK) {
        struct kp_buf what;
        kp_buf_init(&what);
        leader = json_object_get(answer, "leader");
        if (json_is_string(json_object_get(answer, "result")))
            kp_ctl__cell_text(&what, json_object_get(answer, "result"), NULL);
        else if (json_is_object(leader))
            cell_leader(&what, leader, answer);
        printf("leadership transferred%s%s\n", what.len ? ": " : "", what.len ? what.data : "");
        kp_buf_free(&what);
    }
    json_decref(body);
    json_decref(answer);
    return rc;
}

/* --- whoami ---------------------------------------------------------------- */

static const struct kp_ctl_column whoami_record[] = {
    {"TOKEN", "token_id", NULL},
    {"ROLE", "role", NULL},
    {"PERMISSIONS", "permissions", NULL},
    {"SERVER", "server", NULL},
};

int kp_ctl__cmd_whoami(struct kp_ctl *ctl, int argc, char **argv)
{
    json_t *answer = NULL;
    int rc = kp_ctl__begin(ctl, argc, argv, "");

    if (rc != KP_CTL_EXIT_OK)
        return rc;
    rc = kp_ctl__call(ctl, "GET", "/admin/v1/whoami", NULL, NULL, &answer);
    if (rc == KP_CTL_EXIT_OK && ctl->output != KP_CTL_OUTPUT_TABLE) {
        kp_ctl__print_doc(ctl, answer);
    } else if (rc == KP_CTL_EXIT_OK && json_is_object(answer)) {
        char server[512];
        snprintf(server, sizeof(server), "%s (from %s)", ctl->server, ctl->server_source);
        json_object_set_new(answer, "server", json_string(server));
        kp_ctl__print_record(whoami_record, N(whoami_record), answer);
    }
    json_decref(answer);
    return rc;
}

/* --- secrets rewrap ------------------------------------------------------------ */

static int secrets_rewrap(struct kp_ctl *ctl, int argc, char **argv)
{
    json_t *answer = NULL;
    int first, rc = kp_ctl__parse(ctl, argc, argv, NULL, 0, &first);

    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__positionals(ctl, argc - first, 0, 0, "", false);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__resolve(ctl);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__call(ctl, "POST", "/admin/v1/secrets/rewrap", NULL, NULL, &answer);
    if (rc == KP_CTL_EXIT_OK && ctl->output != KP_CTL_OUTPUT_TABLE) {
        kp_ctl__print_doc(ctl, answer);
    } else if (rc == KP_CTL_EXIT_OK) {
        json_int_t n = json_integer_value(json_object_get(answer, "secrets"));
        const char *kek = json_string_value(json_object_get(answer, "kek_id"));
        if (n == 0)
            printf("every secret is already sealed under master key %s\n", kek ? kek : "?");
        else
            printf("resealed %lld secrets under master key %s; the previous key can now be "
                   "removed from every node (previous_master_key_file)\n",
                   (long long)n, kek ? kek : "?");
    }
    json_decref(answer);
    return rc;
}

static const struct kp_ctl_command secrets_commands[] = {
    {"rewrap", "",
     "reseal every stored secret under the current master key (the last step of a master key "
     "rotation, docs/operations.md)",
     secrets_rewrap, false},
};

int kp_ctl__cmd_secrets(struct kp_ctl *ctl, int argc, char **argv)
{
    return kp_ctl__group(ctl, "secrets", secrets_commands, N(secrets_commands), argc, argv);
}

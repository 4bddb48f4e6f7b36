/* Commands about one node: status, health, metrics, and clusterctl's own
 * version.
 *
 * status asks three endpoints (/admin/v1/status, /healthz, /readyz) and
 * shows them together; a node that is up but not ready is still a successful
 * status (the table says so), while a refused status request is exit 1.
 * health is the scriptable question "is it ready?": exit 0 or 1, with the
 * reason on one line. Anything unreachable is exit 3. Strings from the server
 * are printed with control characters replaced, so a hostile or broken
 * server cannot drive the terminal. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clusterctl.h"

enum { STATUS_ADMIN, STATUS_HEALTHZ, STATUS_READYZ, STATUS_N };

static const char *const status_paths[STATUS_N] = {"/admin/v1/status", "/healthz", "/readyz"};

static void print_clean(const char *s)
{
    kp_ctl__print_clean(stdout, s);
}

/* One table cell for a JSON value: strings bare, booleans yes/no, the rest
 * as compact JSON. */
static void print_value(const json_t *v)
{
    char *s;
    if (json_is_string(v)) {
        print_clean(json_string_value(v));
    } else if (json_is_boolean(v)) {
        fputs(json_is_true(v) ? "yes" : "no", stdout);
    } else if ((s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY)) != NULL) {
        print_clean(s);
        free(s);
    }
}

static void print_key(const char *key, int width)
{
    int n = 0;
    for (; key[n] != '\0'; n++)
        putchar(isalnum((unsigned char)key[n]) ? toupper((unsigned char)key[n]) : '_');
    printf("%*s", width - n + 2, "");
}

/* "200 OK" or "503 Service Unavailable (draining)". */
static void print_probe(const char *name, const struct kp_ctl_response *r, int width)
{
    char why[160];
    kp_ctl__describe_body(r, why, sizeof(why));
    print_key(name, width);
    printf("%ld %s", r->status, kp_http_reason((int)r->status));
    if (why[0] != '\0' && r->status != 200) {
        fputs(" (", stdout);
        print_clean(why);
        putchar(')');
    }
    putchar('\n');
}

static void print_status_table(const struct kp_ctl *ctl, json_t *info,
                               const struct kp_ctl_response *r)
{
    const char *key;
    json_t *v;
    int width = (int)strlen("healthz");

    json_object_foreach(info, key, v)
    {
        if ((int)strlen(key) > width)
            width = (int)strlen(key);
    }
    print_key("server", width);
    print_clean(ctl->server);
    putchar('\n');
    json_object_foreach(info, key, v)
    {
        print_key(key, width);
        print_value(v);
        putchar('\n');
    }
    print_probe("healthz", &r[STATUS_HEALTHZ], width);
    print_probe("readyz", &r[STATUS_READYZ], width);
}

static json_t *probe_json(const struct kp_ctl_response *r)
{
    json_t *body = kp_ctl__response_json(r);
    if (body == NULL)
        body = json_stringn(r->body.data ? r->body.data : "", r->body.len);
    return json_pack("{s:I, s:o*}", "code", (json_int_t)r->status, "body", body);
}

static void print_status_doc(const struct kp_ctl *ctl, json_t *info,
                             const struct kp_ctl_response *r)
{
    json_t *out =
        json_pack("{s:s, s:O, s:o*, s:o*}", "server", ctl->server, "status", info, "healthz",
                  probe_json(&r[STATUS_HEALTHZ]), "readyz", probe_json(&r[STATUS_READYZ]));
    if (out != NULL)
        kp_ctl__print_doc(ctl, out);
    json_decref(out);
}

int kp_ctl__cmd_status(struct kp_ctl *ctl, int argc, char **argv)
{
    struct kp_ctl_response r[STATUS_N];
    json_t *info = NULL;
    int n = 0;
    int rc = kp_ctl__begin(ctl, argc, argv, "");

    if (rc != KP_CTL_EXIT_OK)
        return rc;
    for (; n < STATUS_N; n++) {
        if (kp_ctl__get(ctl, status_paths[n], &r[n]) != 0) {
            rc = kp_ctl__unreachable(ctl);
            goto out;
        }
    }
    if (r[STATUS_ADMIN].status != 200) {
        rc = kp_ctl__refused(ctl, status_paths[STATUS_ADMIN], &r[STATUS_ADMIN]);
        goto out;
    }
    info = kp_ctl__response_json(&r[STATUS_ADMIN]);
    if (!json_is_object(info)) {
        kp_ctl__error(ctl, "GET %s%s: the answer is not a JSON object", ctl->server,
                      status_paths[STATUS_ADMIN]);
        rc = KP_CTL_EXIT_NO;
        goto out;
    }
    if (ctl->output != KP_CTL_OUTPUT_TABLE)
        print_status_doc(ctl, info, r);
    else
        print_status_table(ctl, info, r);
out:
    json_decref(info);
    while (n-- > 0)
        kp_ctl__response_free(&r[n]);
    return rc;
}

int kp_ctl__cmd_health(struct kp_ctl *ctl, int argc, char **argv)
{
    struct kp_ctl_response r;
    char why[160];
    int rc = kp_ctl__begin(ctl, argc, argv, "");
    bool ready;

    if (rc != KP_CTL_EXIT_OK)
        return rc;
    if (kp_ctl__get(ctl, "/readyz", &r) != 0)
        return kp_ctl__unreachable(ctl);
    ready = r.status == 200;
    kp_ctl__describe_body(&r, why, sizeof(why));
    if (ctl->output != KP_CTL_OUTPUT_TABLE) {
        json_t *out = json_pack("{s:s, s:b, s:I, s:s}", "server", ctl->server, "ready", ready,
                                "code", (json_int_t)r.status, "reason", why);
        if (out != NULL)
            kp_ctl__print_doc(ctl, out);
        json_decref(out);
    } else {
        printf("%s: %s/readyz answered %ld %s", ready ? "ready" : "not ready", ctl->server,
               r.status, kp_http_reason((int)r.status));
        if (!ready && why[0] != '\0') {
            fputs(": ", stdout);
            print_clean(why);
        }
        putchar('\n');
    }
    kp_ctl__response_free(&r);
    return ready ? KP_CTL_EXIT_OK : KP_CTL_EXIT_NO;
}

int kp_ctl__cmd_metrics(struct kp_ctl *ctl, int argc, char **argv)
{
    struct kp_ctl_response r;
    int rc = kp_ctl__begin(ctl, argc, argv, "");

    if (rc != KP_CTL_EXIT_OK)
        return rc;
    if (kp_ctl__get(ctl, "/metrics", &r) != 0)
        return kp_ctl__unreachable(ctl);
    if (r.status == 200)
        fwrite(r.body.data, 1, r.body.len, stdout);
    else
        rc = kp_ctl__refused(ctl, "/metrics", &r);
    kp_ctl__response_free(&r);
    return rc;
}

int kp_ctl__cmd_version(struct kp_ctl *ctl, int argc, char **argv)
{
    int rc = kp_ctl__options(ctl, argc, argv, "");

    if (rc != KP_CTL_EXIT_OK)
        return rc;
    if (ctl->output != KP_CTL_OUTPUT_TABLE) {
        json_t *out = json_pack("{s:{s:s, s:s}}", "clusterctl", "version", kp_version(), "commit",
                                kp_build_commit());
        if (out != NULL)
            kp_ctl__print_doc(ctl, out);
        json_decref(out);
    } else {
        printf("clusterctl %s (commit %s)\n", kp_version(), kp_build_commit());
    }
    return KP_CTL_EXIT_OK;
}

/* `drill rotate KEY`: rehearse a leaked key on a test pool, under traffic.
 *
 * The drill runs what a real leak response runs, and measures it from the
 * client's side:
 *
 *   checks ─▶ traffic ─▶ KEY serves ─▶ disable (T0) ─▶ observe ─▶ rotate ─▶ enable ─▶ KEY serves
 *                                                                          again ─▶ stop, report
 *
 * Checks refuse (exit 2, nothing sent) without --yes, when KEY is not a
 * member of POOL, when it is not active, and when POOL has no other active
 * member and no fallback pool to fail over to; an unreadable app token file
 * or secret is a usage error too. The traffic thread (drill_traffic.c) then
 * sends tiny completions through the gateway; once KEY has served one
 * (within WAIT_SERVED_S, else the drill stops before changing anything:
 * the pool must route to KEY first), the drill disables KEY — reversible,
 * cluster-wide through Raft, routers skip it from their next registry view,
 * whereas `keys revoke` would erase the key for good — and watches for
 * --observe while the pool's other keys serve. It then gives KEY the new
 * secret with grace 0 (the old version is retired, its sealed blob erased,
 * in the same call) and enables KEY. Rotate before enable matters: the
 * enable is a later Raft entry than the rotation, so no router's view can
 * have KEY enabled with its old secret. Finally it waits (WAIT_SERVED_S)
 * for KEY to serve again through every gateway (each node applies the
 * enable on its own), stops the traffic and reports.
 *
 * What fails after the disable is undone as far as it can be: a failed
 * rotation enables KEY again with its old secret (the drill changed
 * nothing then), a failed enable says how to finish by hand. Ctrl-C (or
 * SIGTERM) before the disable stops the drill with nothing changed; after
 * it, Ctrl-C cuts the observation short but still rotates, enables and
 * waits for KEY to serve, so KEY is never left out of service by an
 * impatient operator; a second Ctrl-C kills clusterctl.
 *
 * Exit codes: 0 the drill ran (the report says how many calls clients saw
 * fail); 1 the server refused a step, KEY never served (before or after),
 * the drill was interrupted, or --fail-on-errors and a call failed. */
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "clusterctl.h"

enum {
    WAIT_SERVED_S = 10, /* for KEY to serve, before the drill and after the enable */
    RPS_DEFAULT = 20,
    RPS_MAX = 1000,
    OBSERVE_DEFAULT_S = 5,
    OBSERVE_MAX_S = 3600,
};

static int drill_rotate(struct kp_ctl *ctl, int argc, char **argv);

static const struct kp_ctl_command drill_commands[] = {
    {"rotate",
     "KEY --pool POOL --gateway URL [--gateway URL]... --app-token-file FILE --model MODEL "
     "[--rps 20] [--observe 5s] [--secret-file FILE] [--fail-on-errors] --yes",
     "rehearse a leaked key on a test pool: under traffic, disable KEY, give it a new secret "
     "(the old one retired at once) and enable it; report how long the old key was still used "
     "and what the clients saw",
     drill_rotate, false},
};

int kp_ctl__cmd_drill(struct kp_ctl *ctl, int argc, char **argv)
{
    return kp_ctl__group(ctl, "drill", drill_commands,
                         sizeof(drill_commands) / sizeof(drill_commands[0]), argc, argv);
}

static volatile sig_atomic_t interrupted;

static void on_interrupt(int sig)
{
    (void)sig;
    interrupted = 1;
}

struct drill {
    const char *key, *pool, *model, *token_file, *secret_file, *rps_text, *observe_text;
    json_t *gateway_flags, *gateways; /* as given; trimmed */
    bool yes, fail_on_errors;
    uint64_t rps, observe_s;
    struct kp_ctl_secret token, secret;
    json_int_t old_version;
    json_t *rotated; /* the key as the rotation answered it */
    char prefix[48]; /* of the request ids */
    struct kp_ctl_traffic *traffic;
    /* Monotonic µs: disable sent (T0) and answered, rotation sent and
     * answered, enable sent and answered. */
    uint64_t t0, t_disabled, t_rotate, t_rotated, t_enable, t_enabled;
    int64_t t0_unix_ms, enable_unix_ms;
    bool back; /* KEY served a request that started after the enable was sent */
};

/* --- checks ------------------------------------------------------------------ */

static int parse_args(struct kp_ctl *ctl, int argc, char **argv, struct drill *d)
{
    const struct kp_ctl_flag flags[] = {
        {"pool", 0, KP_CTL_FLAG_VALUE, &d->pool},
        {"gateway", 0, KP_CTL_FLAG_LIST, &d->gateway_flags},
        {"app-token-file", 0, KP_CTL_FLAG_VALUE, &d->token_file},
        {"model", 0, KP_CTL_FLAG_VALUE, &d->model},
        {"rps", 0, KP_CTL_FLAG_VALUE, &d->rps_text},
        {"observe", 0, KP_CTL_FLAG_VALUE, &d->observe_text},
        {"secret-file", 0, KP_CTL_FLAG_VALUE, &d->secret_file},
        {"fail-on-errors", 0, KP_CTL_FLAG_BOOL, &d->fail_on_errors},
        {"yes", 0, KP_CTL_FLAG_BOOL, &d->yes},
        {"secret", 0, KP_CTL_FLAG_SECRET, NULL},
    };
    int first, rc = kp_ctl__parse(ctl, argc, argv, flags, sizeof(flags) / sizeof(flags[0]), &first);

    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__positionals(ctl, argc - first, 1, 1, drill_commands[0].synopsis, true);
    if (rc != KP_CTL_EXIT_OK)
        return rc;
    d->key = argv[first];
    if (!d->yes) {
        kp_ctl__error(ctl,
                      "drill rotate: the drill disables key %s, gives it a new secret (its old "
                      "secret is retired at once: anything else still using it stops working) "
                      "and enables it again, under test traffic. Run it on a test pool; to go "
                      "ahead, run the command again with --yes",
                      d->key);
        return KP_CTL_EXIT_USAGE;
    }
    const char *missing = d->pool == NULL            ? "--pool POOL"
                          : d->gateway_flags == NULL ? "--gateway URL (the gateway port: /v1)"
                          : d->token_file == NULL    ? "--app-token-file FILE (an app token "
                                                       "allowed to use the pool)"
                          : d->model == NULL         ? "--model MODEL (one the pool serves)"
                                                     : NULL;
    if (missing != NULL) {
        kp_ctl__usage_error(ctl, "drill rotate: %s is required", missing);
        return KP_CTL_EXIT_USAGE;
    }
    d->rps = RPS_DEFAULT;
    d->observe_s = OBSERVE_DEFAULT_S;
    if (d->rps_text != NULL &&
        (rc = kp_ctl__parse_uint(ctl, "--rps", d->rps_text, RPS_MAX, &d->rps)) != KP_CTL_EXIT_OK)
        return rc;
    if (d->rps == 0) {
        kp_ctl__usage_error(ctl, "drill rotate: --rps must be 1 to %d", RPS_MAX);
        return KP_CTL_EXIT_USAGE;
    }
    if (d->observe_text != NULL && (rc = kp_ctl__parse_duration(ctl, "--observe", d->observe_text,
                                                                &d->observe_s)) != KP_CTL_EXIT_OK)
        return rc;
    if (d->observe_s > OBSERVE_MAX_S) {
        kp_ctl__usage_error(ctl, "drill rotate: --observe must be at most 1h");
        return KP_CTL_EXIT_USAGE;
    }
    return KP_CTL_EXIT_OK;
}

/* The --gateway URLs without trailing slashes, checked. */
static int gateway_urls(struct kp_ctl *ctl, struct drill *d)
{
    size_t i;
    json_t *g;

    if ((d->gateways = json_array()) == NULL) {
        kp_ctl__error(ctl, "out of memory");
        return KP_CTL_EXIT_NO;
    }
    if (json_array_size(d->gateway_flags) > KP_CTL_GATEWAYS_MAX) {
        kp_ctl__usage_error(ctl, "drill rotate: at most %d --gateway URLs", KP_CTL_GATEWAYS_MAX);
        return KP_CTL_EXIT_USAGE;
    }
    json_array_foreach(d->gateway_flags, i, g)
    {
        const char *url = json_string_value(g);
        size_t n = strlen(url);
        while (n > 0 && url[n - 1] == '/')
            n--;
        json_t *trimmed = json_stringn(url, n);
        if (trimmed == NULL || !kp_ctl__valid_server(json_string_value(trimmed)) ||
            strpbrk(url, " \r\n") != NULL) {
            json_decref(trimmed);
            kp_ctl__usage_error(ctl,
                                "drill rotate: --gateway '%s' is not an http:// or https:// "
                                "URL (the gateway port, e.g. http://127.0.0.1:7600)",
                                url);
            return KP_CTL_EXIT_USAGE;
        }
        json_array_append_new(d->gateways, trimmed);
    }
    return KP_CTL_EXIT_OK;
}

static int get_entity(struct kp_ctl *ctl, const char *kind, const char *id, json_t **out)
{
    char *path = kp_ctl__path(kind, id, NULL);
    int rc;

    *out = NULL;
    if (path == NULL) {
        kp_ctl__error(ctl, "out of memory");
        return KP_CTL_EXIT_NO;
    }
    rc = kp_ctl__call(ctl, "GET", path, NULL, NULL, out);
    kp_free(path);
    return rc;
}

static const char *str(const json_t *obj, const char *field)
{
    const char *s = json_string_value(json_object_get(obj, field));
    return s != NULL ? s : "";
}

/* KEY is an active member of POOL, and POOL has another active member or a
 * fallback pool to fail over to. */
static int check_pool(struct kp_ctl *ctl, struct drill *d, const json_t *pool, const json_t *keys)
{
    bool member = false, other = false;
    size_t i, j;
    json_t *m, *k;

    json_array_foreach(json_object_get(pool, "members"), i, m)
    {
        const char *id = str(m, "key");
        if (strcmp(id, d->key) == 0) {
            member = true;
            continue;
        }
        json_array_foreach(json_object_get(keys, "items"), j, k)
        {
            if (strcmp(str(k, "id"), id) == 0 && strcmp(str(k, "status"), "active") == 0)
                other = true;
        }
    }
    if (!member) {
        kp_ctl__error(ctl,
                      "drill rotate: key %s is not a member of pool %s, so the drill's traffic "
                      "would never reach it: name the pool the key serves (clusterctl get pools "
                      "%s lists its members)",
                      d->key, d->pool, d->pool);
        return KP_CTL_EXIT_USAGE;
    }
    if (!other && str(pool, "fallback")[0] == '\0') {
        kp_ctl__error(ctl,
                      "drill rotate: pool %s has no other active key and no fallback pool, so "
                      "every call would fail while key %s is disabled: add a second key to the "
                      "pool first (its members' priority says which serves first)",
                      d->pool, d->key);
        return KP_CTL_EXIT_USAGE;
    }
    return KP_CTL_EXIT_OK;
}

/* The pool and the key as the drill needs them; the key's primary secret
 * version is the one the drill retires. */
static int check_registry(struct kp_ctl *ctl, struct drill *d)
{
    json_t *pool = NULL, *keys = NULL, *key = NULL;
    int rc = get_entity(ctl, "pools", d->pool, &pool);

    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__get_list(ctl, "keys", false, &keys);
    if (rc == KP_CTL_EXIT_OK)
        rc = check_pool(ctl, d, pool, keys);
    if (rc == KP_CTL_EXIT_OK)
        rc = get_entity(ctl, "keys", d->key, &key);
    if (rc == KP_CTL_EXIT_OK && strcmp(str(key, "status"), "active") != 0) {
        kp_ctl__error(ctl,
                      "drill rotate: key %s is %s; the drill starts from a key that serves "
                      "(clusterctl keys enable %s)",
                      d->key, str(key, "status"), d->key);
        rc = KP_CTL_EXIT_USAGE;
    }
    json_t *primary = rc == KP_CTL_EXIT_OK ? kp_ctl__key_secret_in_state(key, "primary") : NULL;
    if (rc == KP_CTL_EXIT_OK && primary == NULL) {
        kp_ctl__error(ctl, "drill rotate: key %s has no primary secret to rotate", d->key);
        rc = KP_CTL_EXIT_NO;
    }
    if (rc == KP_CTL_EXIT_OK)
        d->old_version = json_integer_value(json_object_get(primary, "version"));
    json_decref(pool);
    json_decref(keys);
    json_decref(key);
    return rc;
}

/* --- the drill ----------------------------------------------------------------- */

static int start_traffic(struct kp_ctl *ctl, struct drill *d)
{
    char hex[9], err[256];
    struct kp_ctl_traffic_config cfg = {
        .gateways = d->gateways,
        .token = d->token.buf,
        .pool = d->pool,
        .model = d->model,
        .rps = (unsigned)d->rps,
        .request_prefix = d->prefix,
    };

    if (kp_random_hex(hex, 4) != 0)
        snprintf(hex, sizeof(hex), "%08x", (unsigned)getpid());
    snprintf(d->prefix, sizeof(d->prefix), "drill-%s", hex);
    if (kp_ctl__traffic_start(&cfg, &d->traffic, err, sizeof(err)) != 0) {
        kp_ctl__error(ctl, "drill rotate: %s", err);
        return KP_CTL_EXIT_NO;
    }
    return KP_CTL_EXIT_OK;
}

/* "N requests, M answered 2xx; the last failure: 401 unauthorized" of
 * what the traffic got; the traffic must be stopped. */
static void describe_traffic(const struct drill *d, char *out, size_t len)
{
    const struct kp_ctl_request_record *r;
    size_t n = kp_ctl__traffic_records(d->traffic, &r), ok = 0, off;
    const char *last = NULL;

    for (size_t i = 0; i < n; i++) {
        ok += r[i].status >= 200 && r[i].status <= 299;
        if (r[i].error >= 0)
            last = kp_ctl__traffic_name(d->traffic, r[i].error);
    }
    off = (size_t)snprintf(out, len, "%zu requests, %zu answered 2xx", n, ok);
    if (last != NULL && off < len)
        snprintf(out + off, len - off, "; the last failure: %s", last);
}

static int wait_first_served(struct kp_ctl *ctl, struct drill *d)
{
    uint64_t start = kp_now_mono_us();
    char what[512];

    if (kp_ctl__traffic_wait_served(d->traffic, d->key, start, false,
                                    start + WAIT_SERVED_S * 1000000ULL, &interrupted))
        return KP_CTL_EXIT_OK;
    kp_ctl__traffic_stop(d->traffic);
    if (interrupted) {
        kp_ctl__error(ctl, "drill rotate: interrupted before anything was changed");
        return KP_CTL_EXIT_NO;
    }
    describe_traffic(d, what, sizeof(what));
    kp_ctl__error(ctl,
                  "drill rotate: key %s served none of the drill's calls in %ds (%s); nothing "
                  "was changed. The pool must route to the key first: give it the lowest "
                  "priority value in pool %s, and check that the app token may use the pool and "
                  "the model",
                  d->key, WAIT_SERVED_S, what, d->pool);
    return KP_CTL_EXIT_NO;
}

/* POST /admin/v1/keys/KEY/ACTION. */
static int key_action(struct kp_ctl *ctl, const struct drill *d, const char *action)
{
    char *path = kp_ctl__path("keys", d->key, action, NULL);
    int rc;

    if (path == NULL) {
        kp_ctl__error(ctl, "out of memory");
        return KP_CTL_EXIT_NO;
    }
    rc = kp_ctl__call(ctl, "POST", path, NULL, NULL, NULL);
    kp_free(path);
    return rc;
}

static int rotate(struct kp_ctl *ctl, struct drill *d)
{
    json_t *fields = json_pack("{s:i}", "grace_seconds", 0);
    char *path = kp_ctl__path("keys", d->key, "secret", NULL);
    int rc = KP_CTL_EXIT_NO;

    if (fields == NULL || path == NULL)
        kp_ctl__error(ctl, "out of memory");
    else
        rc = kp_ctl__send_secret(ctl, "POST", path, fields, &d->secret, NULL, &d->rotated);
    kp_ctl__secret_wipe(&d->secret);
    json_decref(fields);
    kp_free(path);
    return rc;
}

/* Disable, observe, rotate, enable. */
static int run_steps(struct kp_ctl *ctl, struct drill *d)
{
    d->t0 = kp_now_mono_us();
    d->t0_unix_ms = kp_now_unix_ms();
    int rc = key_action(ctl, d, "disable");
    if (rc != KP_CTL_EXIT_OK) {
        kp_ctl__error(ctl, "drill rotate: the disable failed; the drill stopped there");
        return rc;
    }
    d->t_disabled = kp_now_mono_us();
    kp_ctl__traffic_wait_served(d->traffic, NULL, 0, false, d->t_disabled + d->observe_s * 1000000,
                                &interrupted);
    d->t_rotate = kp_now_mono_us();
    if ((rc = rotate(ctl, d)) != KP_CTL_EXIT_OK) {
        if (key_action(ctl, d, "enable") == KP_CTL_EXIT_OK)
            kp_ctl__error(ctl, "drill rotate: the rotation failed; key %s was enabled again",
                          d->key);
        else
            kp_ctl__error(ctl,
                          "drill rotate: the rotation failed and key %s is still disabled: run "
                          "clusterctl keys enable %s once the cluster answers",
                          d->key, d->key);
        return rc;
    }
    d->t_rotated = kp_now_mono_us();
    d->t_enable = kp_now_mono_us();
    d->enable_unix_ms = kp_now_unix_ms();
    if ((rc = key_action(ctl, d, "enable")) != KP_CTL_EXIT_OK) {
        kp_ctl__error(ctl,
                      "drill rotate: key %s has its new secret but is still disabled: run "
                      "clusterctl keys enable %s",
                      d->key, d->key);
        return rc;
    }
    d->t_enabled = kp_now_mono_us();
    /* Through every gateway: each node applies the enable on its own. Not
     * cut short by a Ctrl-C: KEY is in service again either way, and the
     * report should say whether it serves. */
    d->back = kp_ctl__traffic_wait_served(d->traffic, d->key, d->t_enable, true,
                                          d->t_enable + WAIT_SERVED_S * 1000000ULL, NULL);
    return KP_CTL_EXIT_OK;
}

/* --- the report ------------------------------------------------------------------ */

static json_int_t ms_between(uint64_t from_us, uint64_t to_us)
{
    return to_us > from_us ? (json_int_t)((to_us - from_us + 500) / 1000) : 0;
}

static void bump(json_t *counts, const char *name)
{
    json_object_set_new(counts, name,
                        json_integer(json_integer_value(json_object_get(counts, name)) + 1));
}

/* When KEY was back: the start of the first request it served after the
 * enable was sent, through the last gateway to serve one (0 when one never
 * did). */
static uint64_t back_at(const struct drill *d)
{
    const struct kp_ctl_request_record *r;
    size_t n = kp_ctl__traffic_records(d->traffic, &r), n_back = 0;
    uint64_t first[KP_CTL_GATEWAYS_MAX] = {0}, last = 0;

    for (size_t i = 0; i < n && d->t_enable != 0; i++) {
        const char *key = kp_ctl__traffic_name(d->traffic, r[i].key);
        if (key == NULL || strcmp(key, d->key) != 0 || r[i].status < 200 || r[i].status > 299 ||
            r[i].start_us < d->t_enable || first[r[i].gateway] != 0)
            continue;
        first[r[i].gateway] = last = r[i].start_us;
        n_back++;
    }
    return n_back == json_array_size(d->gateways) ? last : 0;
}

/* What the clients saw: requests, errors by class, answers by key. */
static json_t *traffic_report(const struct drill *d)
{
    const struct kp_ctl_request_record *r;
    size_t n = kp_ctl__traffic_records(d->traffic, &r), errors = 0;
    json_t *by_class = json_object(), *by_key = json_object();

    for (size_t i = 0; i < n; i++) {
        const char *key = kp_ctl__traffic_name(d->traffic, r[i].key);
        if (r[i].status < 200 || r[i].status > 299) {
            const char *class = kp_ctl__traffic_name(d->traffic, r[i].error);
            errors++;
            bump(by_class, class != NULL ? class : "unknown");
        } else if (key != NULL) {
            bump(by_key, key);
        }
    }
    return json_pack("{s:I, s:I, s:I, s:o, s:o}", "requests", (json_int_t)n, "errors",
                     (json_int_t)errors, "duration_ms",
                     n > 0 ? ms_between(r[0].start_us, r[n - 1].end_us) : 0, "errors_by_class",
                     by_class, "served_by", by_key);
}

/* The old key: every request KEY answered that started before the enable
 * was sent went out with the old secret (a router's view with the enable
 * has the rotation too). Counted from T0 on: the ones that started after
 * it (routed by a view from before the disable), when the last of them
 * started, and when the last request of the old key ended (one in flight
 * at T0 included): after that no request used the old key. Requests other
 * keys answered between T0 and KEY's return through every gateway are the
 * failover. */
static json_t *old_key_report(const struct drill *d, uint64_t back)
{
    const struct kp_ctl_request_record *r;
    size_t n = kp_ctl__traffic_records(d->traffic, &r), after = 0, failover = 0;
    uint64_t last_start = d->t0, last_end = d->t0;
    uint64_t failover_until = back != 0 ? back : UINT64_MAX;

    for (size_t i = 0; i < n; i++) {
        const char *key = kp_ctl__traffic_name(d->traffic, r[i].key);
        if (key == NULL)
            continue;
        if (strcmp(key, d->key) != 0) {
            failover += r[i].status >= 200 && r[i].status <= 299 && r[i].start_us >= d->t0 &&
                        r[i].start_us < failover_until;
            continue;
        }
        if (r[i].start_us >= d->t_enable || r[i].end_us <= d->t0)
            continue; /* the new secret's, or over before T0 */
        if (r[i].start_us >= d->t0) {
            after++;
            last_start = r[i].start_us;
        }
        if (r[i].end_us > last_end)
            last_end = r[i].end_us;
    }
    return json_pack("{s:I, s:I, s:I, s:I}", "old_key_requests_after_disable", (json_int_t)after,
                     "old_key_last_start_ms", ms_between(d->t0, last_start),
                     "old_key_unused_after_ms", ms_between(d->t0, last_end), "failover_requests",
                     (json_int_t)failover);
}

static json_t *secret_report(const json_t *key, json_int_t version)
{
    size_t i;
    json_t *s;

    json_array_foreach(json_object_get(key, "secrets"), i, s)
    {
        if (json_integer_value(json_object_get(s, "version")) == version)
            return json_pack("{s:I, s:s}", "version", version, "state", str(s, "state"));
    }
    return json_pack("{s:I, s:s}", "version", version, "state", "dropped");
}

/* The report, its fields in the order a reader wants them. */
static json_t *build_report(const struct drill *d)
{
    uint64_t back = back_at(d);
    json_t *traffic = traffic_report(d);
    json_t *old = old_key_report(d, back);
    json_t *primary = kp_ctl__key_secret_in_state(d->rotated, "primary");
    json_t *r = json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:s}", "key", d->key, "pool", d->pool,
                          "model", d->model, "gateways", (json_int_t)json_array_size(d->gateways),
                          "rps", (json_int_t)d->rps, "observe_seconds", (json_int_t)d->observe_s,
                          "request_id_prefix", d->prefix);
    json_t *steps = json_pack(
        "{s:I, s:I, s:I, s:I, s:I, s:b, s:o, s:o, s:o, s:b}", "disable_sent_unix_ms",
        (json_int_t)d->t0_unix_ms, "disable_ms", ms_between(d->t0, d->t_disabled), "rotate_ms",
        ms_between(d->t_rotate, d->t_rotated), "enable_sent_unix_ms", (json_int_t)d->enable_unix_ms,
        "enable_ms", ms_between(d->t_enable, d->t_enabled), "key_back", d->back,
        "key_back_after_ms", back != 0 ? json_integer(ms_between(d->t_enable, back)) : json_null(),
        "old_secret", secret_report(d->rotated, d->old_version), "new_secret",
        secret_report(d->rotated, json_integer_value(json_object_get(primary, "version"))),
        "interrupted", interrupted != 0);

    if (r == NULL || traffic == NULL || old == NULL || steps == NULL) {
        json_decref(r);
        r = NULL;
    } else {
        json_object_update(r, traffic);
        json_object_update(r, old);
        json_object_update(r, steps);
    }
    json_decref(traffic);
    json_decref(old);
    json_decref(steps);
    return r;
}

static void row(const char *label, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void row(const char *label, const char *fmt, ...)
{
    struct kp_buf b;
    va_list ap;

    kp_buf_init(&b);
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n >= 0 && kp_buf_reserve(&b, (size_t)n + 1) == 0) {
        va_start(ap, fmt);
        vsnprintf(b.data, (size_t)n + 1, fmt, ap);
        va_end(ap);
        printf("%-18s", label);
        kp_ctl__print_clean(stdout, b.data);
        putchar('\n');
    }
    kp_buf_free(&b);
}

/* "12ms", "3.4s". */
static const char *ms_text(const json_t *report, const char *field, char *buf, size_t len)
{
    struct kp_buf b;

    kp_buf_init(&b);
    kp_ctl__cell_ms(&b, json_object_get(report, field), report);
    snprintf(buf, len, "%s", b.data != NULL ? b.data : "-");
    kp_buf_free(&b);
    return buf;
}

/* "key-a: 3, key-b: 5" of an object of counts. */
static void counts_text(const json_t *counts, char *buf, size_t len)
{
    const char *name;
    json_t *v;
    size_t off = 0;

    buf[0] = '\0';
    json_object_foreach((json_t *)counts, name, v)
    {
        off += (size_t)snprintf(buf + off, off < len ? len - off : 0, "%s%s: %" JSON_INTEGER_FORMAT,
                                off ? ", " : "", name, json_integer_value(v));
        if (off >= len)
            break;
    }
}

static json_int_t num(const json_t *report, const char *field)
{
    return json_integer_value(json_object_get(report, field));
}

static void print_report(const json_t *r)
{
    char a[32], b[32], c[32], text[1024];
    const char *key = str(r, "key");

    row("KEY", "%s in pool %s (model %s)", key, str(r, "pool"), str(r, "model"));
    row("TRAFFIC",
        "%" JSON_INTEGER_FORMAT " requests at %" JSON_INTEGER_FORMAT "/s over %s, request ids "
        "%s-N",
        num(r, "requests"), num(r, "rps"), ms_text(r, "duration_ms", a, sizeof(a)),
        str(r, "request_id_prefix"));
    counts_text(json_object_get(r, "errors_by_class"), text, sizeof(text));
    row("CLIENT ERRORS", "%" JSON_INTEGER_FORMAT "%s%s%s", num(r, "errors"), text[0] ? " (" : "",
        text, text[0] ? ")" : "");
    row("DISABLE", "committed %s after it was sent", ms_text(r, "disable_ms", a, sizeof(a)));
    if (num(r, "old_key_unused_after_ms") == 0)
        row("OLD KEY", "no request used the old key after the disable was sent");
    else if (num(r, "old_key_requests_after_disable") == 0)
        row("OLD KEY",
            "no request that started after the disable used the old key; the last one in flight "
            "ended %s after it",
            ms_text(r, "old_key_unused_after_ms", a, sizeof(a)));
    else
        row("OLD KEY",
            "%" JSON_INTEGER_FORMAT " request(s) that started after the disable still used the "
            "old key (the last %s after it); none did after %s (the disable committed after %s)",
            num(r, "old_key_requests_after_disable"),
            ms_text(r, "old_key_last_start_ms", a, sizeof(a)),
            ms_text(r, "old_key_unused_after_ms", b, sizeof(b)),
            ms_text(r, "disable_ms", c, sizeof(c)));
    row("FAILOVER", "%" JSON_INTEGER_FORMAT " requests served by other keys while %s was out",
        num(r, "failover_requests"), key);
    json_t *old = json_object_get(r, "old_secret"), *new = json_object_get(r, "new_secret");
    row("ROTATE", "secret v%" JSON_INTEGER_FORMAT " %s, v%" JSON_INTEGER_FORMAT " %s (%s)",
        num(old, "version"), str(old, "state"), num(new, "version"), str(new, "state"),
        ms_text(r, "rotate_ms", a, sizeof(a)));
    const char *every = num(r, "gateways") > 1 ? " through every gateway" : "";
    if (json_is_integer(json_object_get(r, "key_back_after_ms")))
        row("BACK", "%s served again%s %s after the enable was sent", key, every,
            ms_text(r, "key_back_after_ms", a, sizeof(a)));
    else
        row("BACK", "%s did NOT serve%s within %ds of the enable: check clusterctl keys health %s",
            key, every, WAIT_SERVED_S, key);
    counts_text(json_object_get(r, "served_by"), text, sizeof(text));
    row("SERVED BY", "%s", text[0] ? text : "-");
}

static int report(struct kp_ctl *ctl, struct drill *d)
{
    json_t *r = build_report(d);

    if (r == NULL) {
        kp_ctl__error(ctl, "out of memory");
        return KP_CTL_EXIT_NO;
    }
    if (ctl->output != KP_CTL_OUTPUT_TABLE)
        kp_ctl__print_doc(ctl, r);
    else
        print_report(r);
    int rc = KP_CTL_EXIT_OK;
    if (!d->back || interrupted) {
        kp_ctl__error(ctl, "drill rotate: %s",
                      interrupted ? "interrupted: the observation was cut short"
                                  : "the key did not serve again");
        rc = KP_CTL_EXIT_NO;
    } else if (d->fail_on_errors && num(r, "errors") > 0) {
        kp_ctl__error(ctl,
                      "drill rotate: clients saw %" JSON_INTEGER_FORMAT " failed calls "
                      "(--fail-on-errors)",
                      num(r, "errors"));
        rc = KP_CTL_EXIT_NO;
    }
    json_decref(r);
    return rc;
}

static int drill_rotate(struct kp_ctl *ctl, int argc, char **argv)
{
    struct drill d;
    struct sigaction sa, old_int, old_term;
    int rc;

    memset(&d, 0, sizeof(d));
    rc = parse_args(ctl, argc, argv, &d);
    if (rc == KP_CTL_EXIT_OK)
        rc = gateway_urls(ctl, &d);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__read_token_file(ctl, "--app-token-file", d.token_file, &d.token);
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__resolve(ctl);
    if (rc == KP_CTL_EXIT_OK)
        rc = check_registry(ctl, &d);
    /* Last, so nobody types a secret for a drill that is then refused. */
    if (rc == KP_CTL_EXIT_OK)
        rc = kp_ctl__read_secret(ctl, d.secret_file, d.key, &d.secret);
    if (rc != KP_CTL_EXIT_OK)
        goto out;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_interrupt;
    sa.sa_flags = SA_RESETHAND | SA_RESTART; /* a second Ctrl-C kills */
    sigemptyset(&sa.sa_mask);
    interrupted = 0;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    rc = start_traffic(ctl, &d);
    if (rc == KP_CTL_EXIT_OK)
        rc = wait_first_served(ctl, &d);
    if (rc == KP_CTL_EXIT_OK)
        rc = run_steps(ctl, &d);
    kp_ctl__traffic_stop(d.traffic);
    if (rc == KP_CTL_EXIT_OK)
        rc = report(ctl, &d);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
out:
    kp_ctl__traffic_free(d.traffic);
    kp_ctl__secret_wipe(&d.token);
    kp_ctl__secret_wipe(&d.secret);
    json_decref(d.gateway_flags);
    json_decref(d.gateways);
    json_decref(d.rotated);
    return rc;
}

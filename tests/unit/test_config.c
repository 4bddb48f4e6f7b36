/* Unit tests for node/config.c: defaults, the four sources and their order,
 * every kind of value, the shape of every error message, the --help,
 * --version and --check-config actions, printing, and the cleanup ladders
 * under allocation failure.
 *
 * Each test gets a fresh mkdtemp directory for its YAML files and removes it
 * afterwards. Environments are passed as arrays, never through setenv, so the
 * tests do not depend on the environment they run in. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "core/core.h"

#define MAX_FILES 16

struct fixture {
    char dir[64];
    char files[MAX_FILES][PATH_MAX];
    int n_files;
    struct kp_config cfg;
    enum kp_config_action action;
    char err[512];
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    strcpy(f->dir, "/tmp/kp-test-config.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    kp_config_free(&f->cfg);
    for (int i = 0; i < f->n_files; i++)
        unlink(f->files[i]);
    rmdir(f->dir);
    free(f);
    return 0;
}

/* Writes @text to DIR/@name and returns the path (owned by the fixture). */
static const char *write_file(struct fixture *f, const char *name, const char *text)
{
    assert_true(f->n_files < MAX_FILES);
    char *path = f->files[f->n_files++], tmp[PATH_MAX];
    /* Through tmp: gcc cannot tell that f->dir and path do not overlap. */
    snprintf(tmp, sizeof(tmp), "%s/%s", f->dir, name);
    memcpy(path, tmp, sizeof(tmp));
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs(text, fp);
    assert_int_equal(fclose(fp), 0);
    return path;
}

/* Loads with argv = {"keyplaned", args..., NULL}. */
static int load_argv(struct fixture *f, char **env, char **args)
{
    int argc = 1;
    char *argv[32] = {"keyplaned"};
    for (char **a = args; *a != NULL; a++) {
        assert_true(argc < 31);
        argv[argc++] = *a;
    }
    argv[argc] = NULL;
    f->err[0] = '\0';
    return kp_config_load(&f->cfg, argc, argv, env, &f->action, f->err, sizeof(f->err));
}

#define LOAD(f, env, ...) load_argv((f), (env), (char *[]){__VA_ARGS__, NULL})
#define LOAD0(f, env)     load_argv((f), (env), (char *[]){NULL})

/* Fails the test with the loader's message when @rv is not 0. */
#define assert_loads(f, rv)                                                                        \
    do {                                                                                           \
        if ((rv) != 0)                                                                             \
            fail_msg("load failed: %s", (f)->err);                                                 \
    } while (0)

/* Loads expecting failure and checks the whole message. */
static void expect_error(struct fixture *f, int rv, const char *want)
{
    assert_int_not_equal(rv, 0);
    assert_string_equal(f->err, want);
}

/* --- defaults and precedence --------------------------------------------- */

/* With no file, environment or flags every setting has its documented
 * default and the node is named after the host. */
static void test_defaults(void **state)
{
    struct fixture *f = *state;
    char host[256] = "";
    assert_loads(f, LOAD0(f, NULL));
    assert_int_equal(f->action, KP_CONFIG_RUN);
    assert_null(f->cfg.config_file);
    assert_string_equal(f->cfg.data_dir, "./keyplane-data");
    assert_string_equal(f->cfg.gateway_listen, "127.0.0.1:7600");
    assert_string_equal(f->cfg.control_listen, "127.0.0.1:7601");
    assert_string_equal(f->cfg.raft_listen, "127.0.0.1:7602");
    assert_null(f->cfg.join);
    assert_null(f->cfg.master_key_file);
    gethostname(host, sizeof(host) - 1);
    assert_string_equal(f->cfg.node_name, host);
    assert_int_equal(f->cfg.workers, 0);
    assert_string_equal(f->cfg.log_level, "info");
    assert_int_equal(f->cfg.max_body_bytes, 8 * 1024 * 1024);
    assert_int_equal(f->cfg.max_header_bytes, 32 * 1024);
    assert_int_equal(f->cfg.max_headers, 100);
    assert_int_equal(f->cfg.header_timeout_ms, 10000);
    assert_int_equal(f->cfg.body_timeout_ms, 30000);
    assert_int_equal(f->cfg.idle_timeout_ms, 60000);
    assert_int_equal(f->cfg.drain_timeout_ms, 30000);
    assert_int_equal(f->cfg.drain_delay_ms, 0);
}

/* Values in the YAML file replace the defaults; settings it omits keep
 * theirs. */
static void test_file_overrides_defaults(void **state)
{
    struct fixture *f = *state;
    const char *path = write_file(f, "k.yaml",
                                  "# a comment\n"
                                  "data_dir: /var/lib/keyplane\n"
                                  "gateway_listen: 0.0.0.0:8600\n"
                                  "node_name: n1\n"
                                  "workers: 4\n"
                                  "log_level: debug\n"
                                  "master_key_file: \"/etc/keyplane/master key\"\n"
                                  "max_body_bytes: 16MiB\n"
                                  "idle_timeout_ms: 2m\n");
    assert_loads(f, LOAD(f, NULL, "--config", (char *)path));
    assert_string_equal(f->cfg.config_file, path);
    assert_string_equal(f->cfg.data_dir, "/var/lib/keyplane");
    assert_string_equal(f->cfg.gateway_listen, "0.0.0.0:8600");
    assert_string_equal(f->cfg.control_listen, "127.0.0.1:7601");
    assert_string_equal(f->cfg.node_name, "n1");
    assert_int_equal(f->cfg.workers, 4);
    assert_string_equal(f->cfg.log_level, "debug");
    assert_string_equal(f->cfg.master_key_file, "/etc/keyplane/master key");
    assert_int_equal(f->cfg.max_body_bytes, 16 * 1024 * 1024);
    assert_int_equal(f->cfg.idle_timeout_ms, 120000);
    assert_int_equal(f->cfg.max_headers, 100);
}

/* KEYPLANE_* variables beat the file, and KEYPLANE_CONFIG names the file. */
static void test_env_overrides_file(void **state)
{
    struct fixture *f = *state;
    const char *path = write_file(f, "k.yaml", "workers: 4\nnode_name: from-file\n");
    char cfgvar[PATH_MAX + 32];
    snprintf(cfgvar, sizeof(cfgvar), "KEYPLANE_CONFIG=%s", path);
    char *env[] = {"PATH=/bin",          cfgvar,
                   "KEYPLANE_WORKERS=8", "KEYPLANE_MASTER_KEY=not-a-setting",
                   "KEYPLANE_TRACE=1",   NULL};
    assert_loads(f, LOAD0(f, env));
    assert_string_equal(f->cfg.config_file, path);
    assert_int_equal(f->cfg.workers, 8);
    assert_string_equal(f->cfg.node_name, "from-file");
    assert_null(f->cfg.master_key_file);
}

/* Flags beat the environment, in both --name VALUE and --name=VALUE forms,
 * and a later flag beats an earlier one. */
static void test_flags_override_env(void **state)
{
    struct fixture *f = *state;
    const char *path = write_file(f, "k.yaml", "workers: 4\nlog_level: error\n");
    char *env[] = {"KEYPLANE_WORKERS=8", "KEYPLANE_LOG_LEVEL=warn", "KEYPLANE_DATA_DIR=/env", NULL};
    assert_loads(f, LOAD(f, env, "--config", (char *)path, "--workers", "16", "--log-level=debug",
                         "--workers=2"));
    assert_int_equal(f->cfg.workers, 2);
    assert_string_equal(f->cfg.log_level, "debug");
    assert_string_equal(f->cfg.data_dir, "/env");
}

/* --config beats KEYPLANE_CONFIG. */
static void test_config_flag_beats_env(void **state)
{
    struct fixture *f = *state;
    const char *a = write_file(f, "a.yaml", "node_name: a\n");
    const char *b = write_file(f, "b.yaml", "node_name: b\n");
    char cfgvar[PATH_MAX + 32];
    snprintf(cfgvar, sizeof(cfgvar), "KEYPLANE_CONFIG=%s", a);
    char *env[] = {cfgvar, NULL};
    char flag[PATH_MAX + 16];
    snprintf(flag, sizeof(flag), "--config=%s", b);
    assert_loads(f, LOAD(f, env, flag));
    assert_string_equal(f->cfg.node_name, "b");
}

/* No file is read unless one is named, even if keyplane.yaml sits in the
 * working directory. */
static void test_no_implicit_file(void **state)
{
    struct fixture *f = *state;
    char cwd[PATH_MAX];
    write_file(f, "keyplane.yaml", "workers: [not, valid]\n");
    write_file(f, "config.yaml", "workers: [not, valid]\n");
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    assert_int_equal(chdir(f->dir), 0);
    int rv = LOAD0(f, NULL);
    assert_int_equal(chdir(cwd), 0);
    assert_loads(f, rv);
    assert_null(f->cfg.config_file);
    assert_int_equal(f->cfg.workers, 0);
}

/* An empty file, a comment-only file and a bare "---" set nothing. */
static void test_empty_files(void **state)
{
    struct fixture *f = *state;
    const char *texts[] = {"", "# nothing here\n\n", "---\n", "{}\n"};
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        char name[16];
        snprintf(name, sizeof(name), "e%zu.yaml", i);
        const char *path = write_file(f, name, texts[i]);
        assert_loads(f, LOAD(f, NULL, "--config", (char *)path));
        assert_int_equal(f->cfg.workers, 0);
    }
}

/* --- values ---------------------------------------------------------------- */

/* Sizes take B/KiB/MiB/GiB (binary, case-insensitive, short forms too);
 * durations take ms/s/m/h; plain numbers are bytes and milliseconds. */
static void test_sizes_and_durations(void **state)
{
    struct fixture *f = *state;
    static const struct {
        const char *flag, *value;
        int64_t want; /* -1: refused */
    } cases[] = {
        {"--max-body-bytes", "8MiB", 8 << 20},
        {"--max-body-bytes", "2048", 2048},
        {"--max-body-bytes", "1GiB", 1 << 30},
        {"--max-body-bytes", "64k", 64 << 10},
        {"--max-body-bytes", "3 mb", 3 << 20},
        {"--max-body-bytes", "100B", -1},   /* below 1KiB */
        {"--max-body-bytes", "2GiB", -1},   /* above 1GiB */
        {"--max-body-bytes", "1.5MiB", -1}, /* integers only */
        {"--max-body-bytes", "8 MiBs", -1}, /* unknown suffix */
        {"--max-body-bytes", "-1", -1},     /* negative */
        {"--max-body-bytes", " 8MiB", -1},  /* leading blank */
        {"--max-body-bytes", "99999999999999999999GiB", -1},
        {"--max-body-bytes", "9999999999GiB", -1}, /* overflows int64 */
        {"--max-header-bytes", "32KiB", 32 << 10},
        {"--header-timeout-ms", "250ms", 250},
        {"--header-timeout-ms", "2s", 2000},
        {"--header-timeout-ms", "1m", 60000},
        {"--header-timeout-ms", "1h", 3600000},
        {"--header-timeout-ms", "500", 500},
        {"--header-timeout-ms", "0", -1}, /* below 1ms */
        {"--header-timeout-ms", "1d", -1},
        {"--header-timeout-ms", "25h", -1},
        {"--drain-timeout-ms", "0", 0},
        {"--max-headers", "1", 1},
        {"--max-headers", "10k", -1}, /* plain integers take no suffix */
        {"--workers", "1024", 1024},
        {"--workers", "1025", -1},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int rv = LOAD(f, NULL, (char *)cases[i].flag, (char *)cases[i].value);
        if (cases[i].want < 0) {
            assert_int_not_equal(rv, 0);
            assert_non_null(strstr(f->err, cases[i].flag));
            continue;
        }
        assert_int_equal(rv, 0);
        int64_t got = strcmp(cases[i].flag, "--max-body-bytes") == 0      ? f->cfg.max_body_bytes
                      : strcmp(cases[i].flag, "--max-header-bytes") == 0  ? f->cfg.max_header_bytes
                      : strcmp(cases[i].flag, "--header-timeout-ms") == 0 ? f->cfg.header_timeout_ms
                      : strcmp(cases[i].flag, "--drain-timeout-ms") == 0  ? f->cfg.drain_timeout_ms
                      : strcmp(cases[i].flag, "--max-headers") == 0       ? f->cfg.max_headers
                                                                          : f->cfg.workers;
        assert_int_equal(got, cases[i].want);
    }
}

/* The size and duration errors say the range and the accepted suffixes. */
static void test_size_duration_messages(void **state)
{
    struct fixture *f = *state;
    expect_error(f, LOAD(f, NULL, "--max-body-bytes", "lots"),
                 "--max-body-bytes: expected a size from 1KiB to 1GiB (bytes, or a number with "
                 "KiB, MiB or GiB), got \"lots\"");
    expect_error(f, LOAD(f, NULL, "--idle-timeout-ms=1d"),
                 "--idle-timeout-ms: expected a duration from 1ms to 24h (milliseconds, or a "
                 "number with ms, s, m or h), got \"1d\"");
}

/* A Raft segment size libraft would round down silently is refused. */
static void test_raft_segment_bytes(void **state)
{
    struct fixture *f = *state;
    assert_loads(f, LOAD(f, NULL, "--raft-segment-bytes", "64KiB"));
    assert_int_equal(f->cfg.raft_segment_bytes, 65536);
    expect_error(f, LOAD(f, NULL, "--raft-segment-bytes", "100000"),
                 "raft_segment_bytes: 100000 is not a multiple of 4KiB (4096 bytes); try 96KiB");
    expect_error(f, LOAD(f, NULL, "--raft-segment-bytes", "4KiB"),
                 "--raft-segment-bytes: expected a size from 64KiB to 256MiB (bytes, or a number "
                 "with KiB, MiB or GiB), got \"4KiB\"");
}

/* Log levels are debug, info, warn, error (any case; "warning" reads as
 * warn) and nothing else. */
static void test_log_level(void **state)
{
    struct fixture *f = *state;
    assert_loads(f, LOAD(f, NULL, "--log-level", "WARNING"));
    assert_string_equal(f->cfg.log_level, "warn");
    assert_loads(f, LOAD(f, NULL, "--log-level", "Error"));
    assert_string_equal(f->cfg.log_level, "error");
    expect_error(f, LOAD(f, NULL, "--log-level", "trace"),
                 "--log-level: expected one of debug, info, warn, error, got \"trace\"");
}

/* Listen addresses are checked for shape only: host:port, [v6]:port or
 * :port, port 0..65535, and no name is resolved. */
static void test_listen_addresses(void **state)
{
    struct fixture *f = *state;
    static const char *good[] = {
        "127.0.0.1:8600",        "0.0.0.0:0", "[::1]:7600", "[::]:65535", ":7600", "localhost:80",
        "no-such-host.invalid:1"};
    static const struct {
        const char *addr, *why;
    } bad[] = {
        {"127.0.0.1", "missing :port"},
        {"127.0.0.1:", "missing port"},
        {"127.0.0.1:65536", "port must be from 0 to 65535"},
        {"127.0.0.1:http", "port is not a number"},
        {"::1:7600", "an IPv6 address needs brackets, as in [::1]:7600"},
        {"[::1]7600", "missing :port after ']'"},
        {"[::1:7600", "missing ']'"},
        {"[nope]:7600", "not an IPv6 address inside [ ]"},
        {"bad host:7600", "bad host name"},
        {"", "missing :port"},
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        assert_loads(f, LOAD(f, NULL, "--control-listen", (char *)good[i]));
        assert_string_equal(f->cfg.control_listen, good[i]);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char want[256];
        snprintf(want, sizeof(want),
                 "--control-listen: expected an address host:port, [ipv6]:port or :port, got "
                 "\"%s\": %s",
                 bad[i].addr, bad[i].why);
        expect_error(f, LOAD(f, NULL, "--control-listen", (char *)bad[i].addr), want);
    }
}

/* Two listeners on the same address are refused before any bind. */
static void test_listener_clash(void **state)
{
    struct fixture *f = *state;
    expect_error(f, LOAD(f, NULL, "--control-listen", "127.0.0.1:7600"),
                 "gateway_listen and control_listen are both \"127.0.0.1:7600\"; each listener "
                 "needs its own address");
    /* Port 0 picks a free port for each, so it never clashes. */
    assert_loads(f, LOAD(f, NULL, "--gateway-listen=:0", "--control-listen=:0"));
}

/* join is a comma-separated string (blanks around items dropped) or a YAML
 * sequence; empty means none. */
static void test_join(void **state)
{
    struct fixture *f = *state;
    const char *list = write_file(f, "list.yaml",
                                  "join:\n"
                                  "  - 10.0.0.1:7602\n"
                                  "  - \"[fd00::2]:7602\"\n"
                                  "  - node3.internal:7602\n");
    const char *flow = write_file(f, "flow.yaml", "join: [a:1, b:2]\n");
    const char *str = write_file(f, "str.yaml", "join: a:1, b:2\n");
    const char *none = write_file(f, "none.yaml", "join: []\n");
    const char *null = write_file(f, "null.yaml", "join:\n");

    assert_loads(f, LOAD(f, NULL, "--config", (char *)list));
    assert_string_equal(f->cfg.join, "10.0.0.1:7602,[fd00::2]:7602,node3.internal:7602");
    assert_loads(f, LOAD(f, NULL, "--config", (char *)flow));
    assert_string_equal(f->cfg.join, "a:1,b:2");
    assert_loads(f, LOAD(f, NULL, "--config", (char *)str));
    assert_string_equal(f->cfg.join, "a:1,b:2");
    assert_loads(f, LOAD(f, NULL, "--config", (char *)none));
    assert_null(f->cfg.join);
    assert_loads(f, LOAD(f, NULL, "--config", (char *)null));
    assert_null(f->cfg.join);
    assert_loads(f, LOAD(f, NULL, "--join", " x:1 ,y:2 "));
    assert_string_equal(f->cfg.join, "x:1,y:2");
    /* An empty flag clears what the file set. */
    assert_loads(f, LOAD(f, NULL, "--config", (char *)list, "--join="));
    assert_null(f->cfg.join);
}

/* A bad join item is reported at its own line; port 0 and empty items are
 * refused. */
static void test_join_errors(void **state)
{
    struct fixture *f = *state;
    const char *path = write_file(f, "j.yaml", "join:\n  - a:1\n  - b\n");
    const char *nested = write_file(f, "n.yaml", "join:\n  - a:1\n  - {host: b}\n");
    char want[PATH_MAX + 256];

    snprintf(want, sizeof(want),
             "%s:3: join: expected addresses host:port or [ipv6]:port separated by commas, got "
             "\"b\": missing :port",
             path);
    expect_error(f, LOAD(f, NULL, "--config", (char *)path), want);
    snprintf(want, sizeof(want),
             "%s:3: join: expected addresses host:port or [ipv6]:port separated by commas, got a "
             "mapping",
             nested);
    expect_error(f, LOAD(f, NULL, "--config", (char *)nested), want);
    expect_error(f, LOAD(f, NULL, "--join", "a:1,,b:2"),
                 "--join: expected addresses host:port or [ipv6]:port separated by commas, got "
                 "\"a:1,,b:2\": empty address in the list");
    expect_error(f, LOAD(f, NULL, "--join", "a:0"),
                 "--join: expected addresses host:port or [ipv6]:port separated by commas, got "
                 "\"a:0\": port 0 is only for listening");
}

/* YAML anchors and aliases resolve to their values. */
static void test_yaml_alias(void **state)
{
    struct fixture *f = *state;
    const char *path = write_file(f, "a.yaml", "data_dir: &d /srv/kp\nmaster_key_file: *d\n");
    assert_loads(f, LOAD(f, NULL, "--config", (char *)path));
    assert_string_equal(f->cfg.master_key_file, "/srv/kp");
}

/* --- error messages ------------------------------------------------------- */

/* A bad value in the file names the file, the line and the setting, says
 * what was expected and quotes what was found. */
static void test_file_value_error(void **state)
{
    struct fixture *f = *state;
    const char *path = write_file(f, "keyplane.yaml",
                                  "# keyplane\n\ndata_dir: /tmp/x\n"
                                  "gateway_listen: 127.0.0.1:7600\n"
                                  "control_listen: 127.0.0.1:7601\n\n"
                                  "workers: many\n");
    char want[PATH_MAX + 128];
    snprintf(want, sizeof(want), "%s:7: workers: expected an integer from 0 to 1024, got \"many\"",
             path);
    expect_error(f, LOAD(f, NULL, "--config", (char *)path), want);
}

/* Environment and flag errors name the variable or the flag. */
static void test_env_and_flag_value_errors(void **state)
{
    struct fixture *f = *state;
    char *env[] = {"KEYPLANE_WORKERS=many", NULL};
    expect_error(f, LOAD0(f, env),
                 "KEYPLANE_WORKERS: expected an integer from 0 to 1024, got \"many\"");
    expect_error(f, LOAD(f, NULL, "--workers", "many"),
                 "--workers: expected an integer from 0 to 1024, got \"many\"");
    expect_error(f, LOAD(f, NULL, "--node-name", "no spaces"),
                 "--node-name: expected a name of letters, digits, '.', '-' and '_' (at most 64), "
                 "got \"no spaces\"");
    expect_error(f, LOAD(f, NULL, "--data-dir="),
                 "--data-dir: expected a non-empty path, got \"\"");
}

/* Command-line mistakes: unknown option (with a suggestion when one is
 * obvious), missing value, stray argument, value on a switch. */
static void test_flag_syntax_errors(void **state)
{
    struct fixture *f = *state;
    expect_error(f, LOAD(f, NULL, "--foo"), "unknown option --foo (see --help)");
    expect_error(f, LOAD(f, NULL, "--foo=bar"), "unknown option --foo (see --help)");
    expect_error(f, LOAD(f, NULL, "-x"), "unknown option -x (see --help)");
    expect_error(f, LOAD(f, NULL, "--gateway-listn", "x"),
                 "unknown option --gateway-listn (did you mean --gateway-listen?)");
    expect_error(f, LOAD(f, NULL, "--data-dir"), "--data-dir needs a value");
    expect_error(f, LOAD(f, NULL, "--data-dir", "--workers", "3"), "--data-dir needs a value");
    expect_error(f, LOAD(f, NULL, "--config"), "--config needs a value");
    expect_error(f, LOAD(f, NULL, "serve"), "unexpected argument \"serve\" (see --help)");
    expect_error(f, LOAD(f, NULL, "--check-config=yes"), "--check-config takes no value");
    /* A value that starts with dashes can still be given with '='. */
    assert_loads(f, LOAD(f, NULL, "--data-dir=--odd"));
    assert_string_equal(f->cfg.data_dir, "--odd");
}

/* Unknown keys are errors at their line, with a suggestion when one setting
 * is clearly meant and none otherwise. */
static void test_unknown_key(void **state)
{
    struct fixture *f = *state;
    const char *typo = write_file(f, "t.yaml", "workers: 2\ngateway_listn: 1.2.3.4:5\n");
    const char *dash = write_file(f, "d.yaml", "data-dir: /x\n");
    const char *far = write_file(f, "f.yaml", "colour: blue\n");
    char want[PATH_MAX + 128];

    snprintf(want, sizeof(want),
             "%s:2: unknown setting \"gateway_listn\" (did you mean \"gateway_listen\"?)", typo);
    expect_error(f, LOAD(f, NULL, "--config", (char *)typo), want);
    snprintf(want, sizeof(want), "%s:1: unknown setting \"data-dir\" (did you mean \"data_dir\"?)",
             dash);
    expect_error(f, LOAD(f, NULL, "--config", (char *)dash), want);
    snprintf(want, sizeof(want), "%s:1: unknown setting \"colour\"", far);
    expect_error(f, LOAD(f, NULL, "--config", (char *)far), want);
}

/* A syntax error gives file:line and libfyaml's message; nothing is printed
 * to stderr by libfyaml (not asserted here, but visible when run). */
static void test_yaml_syntax_error(void **state)
{
    struct fixture *f = *state;
    const char *path = write_file(f, "s.yaml", "workers: 2\nlog_level: \"info\n");
    char want[PATH_MAX + 64];
    snprintf(want, sizeof(want), "%s:2: YAML syntax error: ", path);
    assert_int_not_equal(LOAD(f, NULL, "--config", (char *)path), 0);
    assert_memory_equal(f->err, want, strlen(want));
    assert_true(strlen(f->err) > strlen(want));
}

/* The shape of the document: a mapping at the top, scalars under it, each
 * key once, one document. */
static void test_yaml_shape_errors(void **state)
{
    struct fixture *f = *state;
    const char *seq = write_file(f, "seq.yaml", "- workers\n- 2\n");
    const char *scalar = write_file(f, "scalar.yaml", "\nworkers\n");
    const char *nested = write_file(f, "nested.yaml", "http:\n  x: 1\nworkers:\n  count: 2\n");
    const char *dup = write_file(f, "dup.yaml", "workers: 1\nnode_name: a\nworkers: 2\n");
    const char *two = write_file(f, "two.yaml", "workers: 1\n---\nworkers: 2\n");
    const char *null = write_file(f, "null.yaml", "workers: 1\ndata_dir:\n");
    const char *key = write_file(f, "key.yaml", "? [a, b]\n: 1\n");
    char want[PATH_MAX + 256];

    snprintf(want, sizeof(want),
             "%s:1: expected a mapping of settings (name: value) at the top level, got a "
             "sequence",
             seq);
    expect_error(f, LOAD(f, NULL, "--config", (char *)seq), want);
    snprintf(want, sizeof(want),
             "%s:2: expected a mapping of settings (name: value) at the top level, got a scalar",
             scalar);
    expect_error(f, LOAD(f, NULL, "--config", (char *)scalar), want);
    /* "http" is unknown, which is found first. */
    snprintf(want, sizeof(want), "%s:1: unknown setting \"http\"", nested);
    expect_error(f, LOAD(f, NULL, "--config", (char *)nested), want);
    const char *nested2 = write_file(f, "nested2.yaml", "workers:\n  count: 2\n");
    snprintf(want, sizeof(want), "%s:1: workers: expected an integer from 0 to 1024, got a mapping",
             nested2);
    expect_error(f, LOAD(f, NULL, "--config", (char *)nested2), want);
    snprintf(want, sizeof(want), "%s:3: workers: set twice (first on line 1)", dup);
    expect_error(f, LOAD(f, NULL, "--config", (char *)dup), want);
    snprintf(want, sizeof(want), "%s: holds more than one YAML document", two);
    expect_error(f, LOAD(f, NULL, "--config", (char *)two), want);
    snprintf(want, sizeof(want), "%s:2: data_dir: expected a non-empty path, got nothing", null);
    expect_error(f, LOAD(f, NULL, "--config", (char *)null), want);
    snprintf(want, sizeof(want), "%s:1: setting names must be plain strings", key);
    expect_error(f, LOAD(f, NULL, "--config", (char *)key), want);
}

/* A file that cannot be read is named with the reason. */
static void test_missing_file(void **state)
{
    struct fixture *f = *state;
    char path[PATH_MAX], want[PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/absent.yaml", f->dir);
    snprintf(want, sizeof(want), "%s: cannot open: No such file or directory", path);
    expect_error(f, LOAD(f, NULL, "--config", path), want);
    snprintf(want, sizeof(want), "%s: not a regular file", f->dir);
    expect_error(f, LOAD(f, NULL, "--config", f->dir), want);
}

/* A failed load leaves the caller's config as it was. */
static void test_failed_load_keeps_config(void **state)
{
    struct fixture *f = *state;
    assert_loads(f, LOAD(f, NULL, "--workers", "3", "--join", "a:1"));
    assert_int_not_equal(LOAD(f, NULL, "--workers", "many"), 0);
    assert_int_equal(f->cfg.workers, 3);
    assert_string_equal(f->cfg.join, "a:1");
}

/* --- actions, usage, printing --------------------------------------------- */

/* --help/-h and --version/-V are reported as actions, win over anything else
 * on the line (even mistakes) and read no file. */
static void test_help_and_version(void **state)
{
    struct fixture *f = *state;
    assert_loads(f, LOAD(f, NULL, "--help"));
    assert_int_equal(f->action, KP_CONFIG_HELP);
    assert_loads(f, LOAD(f, NULL, "--bogus", "-h"));
    assert_int_equal(f->action, KP_CONFIG_HELP);
    assert_loads(f, LOAD(f, NULL, "--config", "/nonexistent.yaml", "--version"));
    assert_int_equal(f->action, KP_CONFIG_VERSION);
    assert_loads(f, LOAD(f, NULL, "-V"));
    assert_int_equal(f->action, KP_CONFIG_VERSION);
    assert_loads(f, LOAD(f, NULL, "-V", "--help"));
    assert_int_equal(f->action, KP_CONFIG_HELP);
}

/* --check-config loads everything (so errors still fail) and asks for a
 * print. */
static void test_check_config(void **state)
{
    struct fixture *f = *state;
    assert_loads(f, LOAD(f, NULL, "--check-config", "--workers", "7"));
    assert_int_equal(f->action, KP_CONFIG_CHECK);
    assert_int_equal(f->cfg.workers, 7);
    assert_int_not_equal(LOAD(f, NULL, "--check-config", "--workers", "x"), 0);
}

/* The help text lists every setting with its flag, metavariable, default and
 * environment variable. */
static void test_usage(void **state)
{
    (void)state;
    const char *u = kp_config_usage();
    static const char *want[] = {
        "--config FILE",
        "KEYPLANE_CONFIG",
        "--check-config",
        "-h, --help",
        "-V, --version",
        "--data-dir DIR",
        "default: ./keyplane-data; env KEYPLANE_DATA_DIR",
        "--gateway-listen ADDR",
        "default: 127.0.0.1:7600; env KEYPLANE_GATEWAY_LISTEN",
        "--control-listen ADDR",
        "KEYPLANE_CONTROL_LISTEN",
        "--raft-listen ADDR",
        "KEYPLANE_RAFT_LISTEN",
        "--join ADDR[,ADDR...]",
        "default: none; env KEYPLANE_JOIN",
        "--master-key-file FILE",
        "KEYPLANE_MASTER_KEY_FILE",
        "--node-name NAME",
        "default: the host name; env KEYPLANE_NODE_NAME",
        "--workers N",
        "default: 0; env KEYPLANE_WORKERS",
        "--log-level LEVEL",
        "default: info; env KEYPLANE_LOG_LEVEL",
        "--max-body-bytes SIZE",
        "default: 8MiB; env KEYPLANE_MAX_BODY_BYTES",
        "--max-header-bytes SIZE",
        "default: 32KiB",
        "--max-headers N",
        "default: 100",
        "--header-timeout-ms DURATION",
        "default: 10s; env KEYPLANE_HEADER_TIMEOUT_MS",
        "--body-timeout-ms DURATION",
        "--idle-timeout-ms DURATION",
        "--drain-timeout-ms DURATION",
        "default: 30s; env KEYPLANE_DRAIN_TIMEOUT_MS",
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        if (strstr(u, want[i]) == NULL)
            fail_msg("usage lacks \"%s\"", want[i]);
    /* Not truncated, and the same text every call. */
    assert_non_null(strstr(u, "durations take ms, s, m or h (30s).\n"));
    assert_ptr_equal(u, kp_config_usage());
}

static char *print_to_string(const struct kp_config *cfg)
{
    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    assert_non_null(mem);
    kp_config_print(cfg, mem);
    assert_int_equal(fclose(mem), 0);
    return text;
}

/* The printed configuration is YAML that loads back to the same settings,
 * quoting what needs it. */
static void test_print_round_trip(void **state)
{
    struct fixture *f = *state;
    struct kp_config first = {0};
    assert_loads(f, LOAD(f, NULL, "--data-dir", "/srv/my dir: \"x\" #1", "--join",
                         "[fd00::1]:7602,b:2", "--gateway-listen", ":7600", "--node-name", "123",
                         "--max-body-bytes", "1000000", "--master-key-file", "true"));
    char *text = print_to_string(&f->cfg);
    assert_non_null(strstr(text, "data_dir: \"/srv/my dir: \\\"x\\\" #1\"\n"));
    assert_non_null(strstr(text, "join:\n  - \"[fd00::1]:7602\"\n  - b:2\n"));
    assert_non_null(strstr(text, "gateway_listen: \":7600\"\n"));
    assert_non_null(strstr(text, "control_listen: 127.0.0.1:7601\n"));
    assert_non_null(strstr(text, "node_name: \"123\"\n"));
    assert_non_null(strstr(text, "master_key_file: \"true\"\n"));
    assert_non_null(strstr(text, "max_body_bytes: 1000000\n"));
    assert_non_null(strstr(text, "max_header_bytes: 32768  # 32KiB\n"));
    assert_non_null(strstr(text, "header_timeout_ms: 10000  # 10s\n"));
    assert_non_null(strstr(text, "log_level: info\n"));
    assert_non_null(strstr(text, "# config file: none\n"));

    memcpy(&first, &f->cfg, sizeof(first));
    memset(&f->cfg, 0, sizeof(f->cfg));
    const char *path = write_file(f, "printed.yaml", text);
    assert_loads(f, LOAD(f, NULL, "--config", (char *)path));
    assert_string_equal(f->cfg.data_dir, first.data_dir);
    assert_string_equal(f->cfg.join, first.join);
    assert_string_equal(f->cfg.gateway_listen, first.gateway_listen);
    assert_string_equal(f->cfg.node_name, first.node_name);
    assert_string_equal(f->cfg.master_key_file, first.master_key_file);
    assert_int_equal(f->cfg.max_body_bytes, first.max_body_bytes);
    assert_int_equal(f->cfg.idle_timeout_ms, first.idle_timeout_ms);
    kp_config_free(&first);
    free(text);

    /* Unset optional settings print as null and [] and load back unset. */
    assert_loads(f, LOAD0(f, NULL));
    text = print_to_string(&f->cfg);
    assert_non_null(strstr(text, "join: []\n"));
    assert_non_null(strstr(text, "master_key_file: null\n"));
    path = write_file(f, "printed2.yaml", text);
    free(text);
    assert_loads(f, LOAD(f, NULL, "--config", (char *)path));
    assert_null(f->cfg.join);
    assert_null(f->cfg.master_key_file);
}

/* --- traces and the access log ---------------------------------------------- */

/* Off by default; the endpoint, headers (text with %-escapes, or a YAML
 * mapping), ratio, timeout, queue and access log load from every source;
 * errors about headers never quote a value, and printing hides the values. */
static void test_telemetry_settings(void **state)
{
    struct fixture *f = *state;
    assert_loads(f, LOAD0(f, NULL));
    assert_null(f->cfg.otlp_endpoint);
    assert_null(f->cfg.otlp_headers);
    assert_null(f->cfg.access_log);
    assert_true(f->cfg.trace_sample_ratio == 1.0);
    assert_int_equal(f->cfg.otlp_timeout_ms, 10000);
    assert_int_equal(f->cfg.trace_queue_spans, 4096);

    const char *path = write_file(f, "t.yaml",
                                  "otlp_endpoint: https://otel.example:4318/\n"
                                  "otlp_headers:\n  Authorization: Bearer s3cret-value\n"
                                  "  x-scope: a,b\n"
                                  "trace_sample_ratio: 0.25\notlp_timeout_ms: 2s\n"
                                  "trace_queue_spans: 100\naccess_log: stderr\n");
    assert_loads(f, LOAD(f, NULL, "--config", (char *)path));
    assert_string_equal(f->cfg.otlp_endpoint, "https://otel.example:4318/");
    assert_string_equal(f->cfg.otlp_headers, "Authorization: Bearer s3cret-value\nx-scope: a,b");
    assert_true(f->cfg.trace_sample_ratio == 0.25);
    assert_int_equal(f->cfg.otlp_timeout_ms, 2000);
    assert_int_equal(f->cfg.trace_queue_spans, 100);
    assert_string_equal(f->cfg.access_log, "stderr");
    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    kp_config_print(&f->cfg, mem);
    fclose(mem);
    assert_null(strstr(text, "s3cret"));
    assert_non_null(strstr(text, "otlp_headers:  # values are not shown\n"
                                 "  Authorization: \"(hidden)\"\n"));
    assert_non_null(strstr(text, "trace_sample_ratio: 0.25\n"));
    free(text);

    char *env[] = {"KEYPLANE_OTLP_HEADERS=api-key = k%2C1 , x=y", NULL};
    assert_loads(f, LOAD0(f, env));
    assert_string_equal(f->cfg.otlp_headers, "api-key: k,1\nx: y");
    assert_loads(f, LOAD(f, NULL, "--otlp-headers", ""));
    assert_null(f->cfg.otlp_headers);

    expect_error(f, LOAD(f, NULL, "--otlp-headers", "Authorization"),
                 "--otlp-headers: expected headers name=value separated by commas: expected "
                 "name=value");
    expect_error(f, LOAD(f, NULL, "--otlp-headers", "Host=x"),
                 "--otlp-headers: expected headers name=value separated by commas: header Host "
                 "is set by keyplane");
    expect_error(f, LOAD(f, NULL, "--otlp-headers", "a b=secret-xyz"),
                 "--otlp-headers: expected headers name=value separated by commas: bad "
                 "character in header name");
    expect_error(f, LOAD(f, NULL, "--otlp-headers", "a=%zz-secret"),
                 "--otlp-headers: expected headers name=value separated by commas: bad "
                 "%-escape in a header value");
    const char *bad = write_file(f, "h.yaml", "otlp_headers:\n  x: [1]\n");
    char want[PATH_MAX + 80];
    snprintf(want, sizeof(want), "%s:1: otlp_headers: expected a mapping of names to values", bad);
    expect_error(f, LOAD(f, NULL, "--config", (char *)bad), want);
    expect_error(f, LOAD(f, NULL, "--trace-sample-ratio", "1.5"),
                 "--trace-sample-ratio: expected a number from 0 to 1, got \"1.5\"");
    expect_error(f, LOAD(f, NULL, "--trace-sample-ratio", "-0"),
                 "--trace-sample-ratio: expected a number from 0 to 1, got \"-0\"");
    expect_error(f, LOAD(f, NULL, "--otlp-endpoint", "grpc://x:4317"),
                 "--otlp-endpoint: expected an http:// or https:// URL without a query, got "
                 "\"grpc://x:4317\": not http:// or https://");
    expect_error(f, LOAD(f, NULL, "--otlp-endpoint", "http://x/v1?k=1"),
                 "--otlp-endpoint: expected an http:// or https:// URL without a query, got "
                 "\"http://x/v1?k=1\": a query or fragment");
    assert_loads(f, LOAD(f, NULL, "--trace-sample-ratio", "0", "--otlp-endpoint", "http://c:4318"));
    assert_true(f->cfg.trace_sample_ratio == 0);
}

/* The tls: section: nested in YAML, KEYPLANE_TLS_* and --tls-* with the
 * same names, booleans in their usual spellings, the settings that go
 * together checked, and a round trip through --check-config's output. */
static void test_tls_settings(void **state)
{
    struct fixture *f = *state;
    assert_loads(f, LOAD0(f, NULL));
    assert_null(f->cfg.tls_cert_file);
    assert_false(f->cfg.tls_gateway);
    assert_false(f->cfg.tls_control);
    assert_false(f->cfg.tls_require_client_cert);

    const char *path = write_file(f, "tls.yaml",
                                  "tls:\n  cert_file: /etc/kp/n1.crt\n  key_file: /etc/kp/n1.key\n"
                                  "  ca_file: /etc/kp/ca.crt\n  gateway: yes\n  control: true\n"
                                  "  client_ca_file: /etc/kp/clients.crt\n"
                                  "  require_client_cert: on\n");
    assert_loads(f, LOAD(f, NULL, "--config", (char *)path));
    assert_string_equal(f->cfg.tls_cert_file, "/etc/kp/n1.crt");
    assert_string_equal(f->cfg.tls_key_file, "/etc/kp/n1.key");
    assert_string_equal(f->cfg.tls_ca_file, "/etc/kp/ca.crt");
    assert_string_equal(f->cfg.tls_client_ca_file, "/etc/kp/clients.crt");
    assert_true(f->cfg.tls_gateway && f->cfg.tls_control && f->cfg.tls_require_client_cert);

    char *env[] = {"KEYPLANE_TLS_GATEWAY=false", "KEYPLANE_TLS_REQUIRE_CLIENT_CERT=0", NULL};
    assert_loads(f, LOAD(f, env, "--config", (char *)path, "--tls-control=off"));
    assert_false(f->cfg.tls_gateway);
    assert_false(f->cfg.tls_control);
    assert_false(f->cfg.tls_require_client_cert);

    /* --check-config prints what loads back the same. */
    assert_loads(f, LOAD(f, NULL, "--config", (char *)path));
    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    kp_config_print(&f->cfg, mem);
    fclose(mem);
    assert_non_null(strstr(text, "tls:\n"));
    assert_non_null(strstr(text, "  gateway: true\n"));
    const char *again = write_file(f, "printed.yaml", text);
    free(text);
    assert_loads(f, LOAD(f, NULL, "--config", (char *)again));
    assert_true(f->cfg.tls_gateway && f->cfg.tls_require_client_cert);
    assert_string_equal(f->cfg.tls_ca_file, "/etc/kp/ca.crt");

    expect_error(f, LOAD(f, NULL, "--tls-gateway", "maybe"),
                 "--tls-gateway: expected true or false, got \"maybe\"");
    expect_error(f, LOAD(f, NULL, "--tls-gateway", "true"),
                 "tls.gateway: needs tls.cert_file, tls.key_file and tls.ca_file");
    /* The three files go together (test_tls_partial_refused). */
    expect_error(
        f, LOAD(f, NULL, "--tls-control", "true", "--tls-cert-file", "a", "--tls-key-file", "b"),
        "tls.cert_file, tls.key_file set but not tls.ca_file: TLS needs this node's "
        "certificate, its key and the cluster CA (docs/operations.md, \"Securing node links\")");
    expect_error(f, LOAD(f, NULL, "--tls-require-client-cert", "true"),
                 "tls.require_client_cert: needs tls.client_ca_file to verify them against");
    /* A flag's typo is matched against the section's settings too. */
    expect_error(f, LOAD(f, NULL, "--tls-cert-fle", "x"),
                 "unknown option --tls-cert-fle (did you mean --tls-cert-file?)");
    const char *bad = write_file(f, "bad.yaml", "tls:\n  cert_flie: x\n");
    char want[PATH_MAX + 120];
    snprintf(want, sizeof(want),
             "%s:2: unknown setting \"tls.cert_flie\" (did you mean \"tls.cert_file\"?)", bad);
    expect_error(f, LOAD(f, NULL, "--config", (char *)bad), want);
    bad = write_file(f, "bad2.yaml", "tls: on\n");
    snprintf(want, sizeof(want), "%s:1: tls: expected a mapping of settings, got a scalar", bad);
    expect_error(f, LOAD(f, NULL, "--config", (char *)bad), want);
}

/* --- memory ---------------------------------------------------------------- */

/* Loading again into a loaded struct frees the old values (ASan checks). */
static void test_load_twice(void **state)
{
    struct fixture *f = *state;
    const char *path = write_file(f, "k.yaml", "join: [a:1, b:2]\nmaster_key_file: /k\n");
    for (int i = 0; i < 3; i++)
        assert_loads(f, LOAD(f, NULL, "--config", (char *)path, "--node-name", "n"));
    kp_config_free(&f->cfg);
    kp_config_free(&f->cfg); /* freeing twice is harmless */
}

/* Every allocation in a full load (file, environment, flags) may fail: each
 * failure is an error, never a crash or a leak, and the caller's struct is
 * untouched. */
static void test_alloc_failures(void **state)
{
    struct fixture *f = *state;
    const char *path = write_file(f, "k.yaml",
                                  "data_dir: /srv/kp\njoin: [a:1, \"[::1]:2\"]\n"
                                  "master_key_file: /k\nlog_level: debug\n");
    char *env[] = {"KEYPLANE_NODE_NAME=env-node", "KEYPLANE_JOIN=c:3", NULL};
    long n;
    int rv = -1;

    for (n = 0; n < 10000; n++) {
        kp_alloc_fail_after(n);
        rv = LOAD(f, env, "--config", (char *)path, "--control-listen", "[::1]:9",
                  "--log-level=warn");
        kp_alloc_fail_reset();
        if (rv == 0)
            break;
        assert_string_equal(f->err, "out of memory");
        assert_null(f->cfg.data_dir);
    }
    assert_int_equal(rv, 0);
    assert_true(n > 5);
    assert_string_equal(f->cfg.join, "c:3");
    assert_string_equal(f->cfg.log_level, "warn");

    /* The same on top of a loaded struct: it stays as it was. */
    for (n = 0; n < 10000; n++) {
        kp_alloc_fail_after(n);
        rv = LOAD(f, NULL, "--config", (char *)path);
        kp_alloc_fail_reset();
        if (rv == 0)
            break;
        assert_string_equal(f->cfg.join, "c:3");
    }
    assert_int_equal(rv, 0);
    assert_string_equal(f->cfg.join, "a:1,[::1]:2");
}

/* --- the tls section ------------------------------------------------------ */

/* The Raft TLS files come from a YAML tls: section, from
 * KEYPLANE_TLS_*_FILE and from --tls-*-file flags, with the usual order;
 * they are unset by default. */
static void test_tls_sources(void **state)
{
    struct fixture *f = *state;
    assert_loads(f, LOAD0(f, NULL));
    assert_null(f->cfg.tls_cert_file);
    assert_null(f->cfg.tls_key_file);
    assert_null(f->cfg.tls_ca_file);

    const char *path = write_file(f, "tls.yaml",
                                  "workers: 2\n"
                                  "tls:\n"
                                  "  cert_file: /etc/kp/node.pem\n"
                                  "  key_file: /etc/kp/node.key\n"
                                  "  ca_file: /etc/kp/ca.pem\n");
    assert_loads(f, LOAD(f, NULL, "--config", (char *)path));
    assert_string_equal(f->cfg.tls_cert_file, "/etc/kp/node.pem");
    assert_string_equal(f->cfg.tls_key_file, "/etc/kp/node.key");
    assert_string_equal(f->cfg.tls_ca_file, "/etc/kp/ca.pem");

    char *env[] = {"KEYPLANE_TLS_CA_FILE=/env/ca.pem", "KEYPLANE_TLS_KEY_FILE=/env/k", NULL};
    assert_loads(f, LOAD(f, env, "--config", (char *)path, "--tls-key-file", "/flag/k"));
    assert_string_equal(f->cfg.tls_cert_file, "/etc/kp/node.pem");
    assert_string_equal(f->cfg.tls_ca_file, "/env/ca.pem");
    assert_string_equal(f->cfg.tls_key_file, "/flag/k");

    /* An empty section sets nothing. */
    path = write_file(f, "empty.yaml", "tls:\n");
    assert_loads(f, LOAD(f, NULL, "--config", (char *)path));
    assert_null(f->cfg.tls_cert_file);
}

/* Raft over TLS needs all three files: a partial set is refused, naming
 * what is set and what is missing, wherever the values came from. */
static void test_tls_partial_refused(void **state)
{
    struct fixture *f = *state;
    const char *tail = ": TLS needs this node's certificate, its key and the cluster CA "
                       "(docs/operations.md, \"Securing node links\")";
    char want[512];

    snprintf(want, sizeof(want), "tls.cert_file set but not tls.key_file, tls.ca_file%s", tail);
    expect_error(f, LOAD(f, NULL, "--tls-cert-file", "/c.pem"), want);

    char *env[] = {"KEYPLANE_TLS_CERT_FILE=/c.pem", "KEYPLANE_TLS_KEY_FILE=/k.pem", NULL};
    snprintf(want, sizeof(want), "tls.cert_file, tls.key_file set but not tls.ca_file%s", tail);
    expect_error(f, LOAD0(f, env), want);

    const char *path = write_file(f, "ca.yaml", "tls:\n  ca_file: /ca.pem\n");
    snprintf(want, sizeof(want), "tls.ca_file set but not tls.cert_file, tls.key_file%s", tail);
    expect_error(f, LOAD(f, NULL, "--config", (char *)path), want);

    /* A flag may unset what the file set. */
    path = write_file(f, "all.yaml", "tls: {cert_file: /c, key_file: /k, ca_file: /ca}\n");
    assert_loads(f, LOAD(f, NULL, "--config", (char *)path));
    snprintf(want, sizeof(want), "tls.cert_file, tls.ca_file set but not tls.key_file%s", tail);
    expect_error(f, LOAD(f, NULL, "--config", (char *)path, "--tls-key-file="), want);
}

/* Inside tls: only its own names are settings, a section must be a
 * mapping, and a name set twice is refused like any other. */
static void test_tls_section_errors(void **state)
{
    struct fixture *f = *state;
    char want[PATH_MAX + 128];
    const char *typo = write_file(f, "t.yaml", "tls:\n  cert_fil: /c\n");
    snprintf(want, sizeof(want),
             "%s:2: unknown setting \"tls.cert_fil\" (did you mean \"tls.cert_file\"?)", typo);
    expect_error(f, LOAD(f, NULL, "--config", (char *)typo), want);

    const char *scalar = write_file(f, "s.yaml", "tls: /etc/kp\n");
    snprintf(want, sizeof(want), "%s:1: tls: expected a mapping of settings, got a scalar", scalar);
    expect_error(f, LOAD(f, NULL, "--config", (char *)scalar), want);

    const char *twice = write_file(f, "d.yaml",
                                   "tls:\n  ca_file: /a\n  cert_file: /c\n  key_file: /k\n"
                                   "tls:\n  ca_file: /b\n");
    snprintf(want, sizeof(want), "%s:6: tls.ca_file: set twice (first on line 2)", twice);
    expect_error(f, LOAD(f, NULL, "--config", (char *)twice), want);
}

/* --check-config prints the section as YAML that loads back, and --help
 * names its flag, variable and YAML key. */
static void test_tls_print_and_usage(void **state)
{
    struct fixture *f = *state;
    assert_loads(f, LOAD(f, NULL, "--tls-cert-file", "/c.pem", "--tls-key-file", "/k.pem",
                         "--tls-ca-file", "/ca.pem"));
    char *text = print_to_string(&f->cfg);
    assert_non_null(strstr(text, "tls:\n  cert_file: /c.pem\n  key_file: /k.pem\n"
                                 "  ca_file: /ca.pem\n"));
    const char *path = write_file(f, "printed.yaml", text);
    free(text);
    kp_config_free(&f->cfg);
    assert_loads(f, LOAD(f, NULL, "--config", (char *)path));
    assert_string_equal(f->cfg.tls_key_file, "/k.pem");

    const char *usage = kp_config_usage();
    assert_non_null(strstr(usage, "  --tls-ca-file FILE\n"));
    assert_non_null(strstr(usage, "env KEYPLANE_TLS_CA_FILE; YAML tls: ca_file\n"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_telemetry_settings, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_settings, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_overrides_defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_env_overrides_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flags_override_env, setup, teardown),
        cmocka_unit_test_setup_teardown(test_config_flag_beats_env, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_implicit_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_empty_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sizes_and_durations, setup, teardown),
        cmocka_unit_test_setup_teardown(test_size_duration_messages, setup, teardown),
        cmocka_unit_test_setup_teardown(test_raft_segment_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_log_level, setup, teardown),
        cmocka_unit_test_setup_teardown(test_listen_addresses, setup, teardown),
        cmocka_unit_test_setup_teardown(test_listener_clash, setup, teardown),
        cmocka_unit_test_setup_teardown(test_join, setup, teardown),
        cmocka_unit_test_setup_teardown(test_join_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_yaml_alias, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_value_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_env_and_flag_value_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flag_syntax_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_yaml_syntax_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_yaml_shape_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_load_keeps_config, setup, teardown),
        cmocka_unit_test_setup_teardown(test_help_and_version, setup, teardown),
        cmocka_unit_test_setup_teardown(test_check_config, setup, teardown),
        cmocka_unit_test_setup_teardown(test_usage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_print_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_twice, setup, teardown),
        cmocka_unit_test_setup_teardown(test_alloc_failures, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_sources, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_partial_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_section_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_print_and_usage, setup, teardown),
    };
    return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}

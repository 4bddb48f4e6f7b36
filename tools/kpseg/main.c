/* kpseg: inspect usage segments (docs/segment-format.md).
 *
 * `kpseg validate`, `dump` and `summary` read segment files and never trust
 * them: a corrupt or torn file yields what is valid in it and a line on
 * stderr saying at which offset it stops being valid and why. `kpseg gen`
 * (left out of --help, documented in docs/segment-format.md) writes a
 * deterministic synthetic segment for tests and benchmarks.
 *
 * Exit codes: 0 ok; 1 a segment is invalid, a file is missing or
 * unreadable; 2 a usage error (unknown command or option, bad number). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "meter/meter.h"
#include "kpseg.h"

struct command {
    const char *name;
    int (*run)(int argc, char **argv);
};

static const struct command commands[] = {
    {"validate", kp_kpseg__cmd_validate},
    {"dump", kp_kpseg__cmd_dump},
    {"summary", kp_kpseg__cmd_summary},
    {"gen", kp_kpseg__cmd_gen},
};

static const char usage_text[] =
    "usage: kpseg COMMAND [ARGS]\n"
    "\n"
    "Inspect keyplane usage segments (docs/segment-format.md).\n"
    "\n"
    "Commands:\n"
    "  validate [--allow-open] FILE...\n"
    "                      check every header, frame and footer; prints FILE: ok, or\n"
    "                      FILE: offset N: what is wrong. Open segments fail unless\n"
    "                      --allow-open.\n"
    "  dump [--limit N] FILE\n"
    "                      print the events as JSON lines; on a damaged file, the valid\n"
    "                      events and then the error\n"
    "  summary [--json] FILE...\n"
    "                      header, state, frames, events, time range and totals by\n"
    "                      tenant and model (requests, tokens, cost in USD)\n"
    "\n"
    "Options:\n"
    "  -h, --help          show this help\n"
    "  --version           print kpseg's version\n"
    "\n"
    "Exit codes: 0 ok, 1 invalid segment or unreadable file, 2 usage error.\n";

int kp_kpseg__usage_error(const char *fmt, ...)
{
    va_list ap;
    fputs("kpseg: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\nRun 'kpseg --help' for usage.\n", stderr);
    return KP_KPSEG_EXIT_USAGE;
}

bool kp_kpseg__parse_u64(const char *opt, const char *s, uint64_t max, uint64_t *out)
{
    char *end;
    if (s == NULL || *s < '0' || *s > '9') {
        kp_kpseg__usage_error("%s needs a non-negative integer, not '%s'", opt, s ? s : "");
        return false;
    }
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0' || v > max) {
        kp_kpseg__usage_error("%s: '%s' is not an integer in 0..%llu", opt, s,
                              (unsigned long long)max);
        return false;
    }
    *out = v;
    return true;
}

int kp_kpseg__parse_options(int argc, char **argv, const struct option *opts,
                            int (*apply)(int c, const char *arg, void *ctx), void *ctx)
{
    opterr = 0;
    optind = 0; /* glibc: start over; options may follow the operands */
    for (;;) {
        int c = getopt_long(argc, argv, "", opts, NULL);
        if (c == -1)
            return KP_KPSEG_EXIT_OK;
        if (c == '?' || c == ':')
            return kp_kpseg__usage_error("%s: %s '%s'", argv[0],
                                         c == ':' ? "missing value for" : "unknown option",
                                         argv[optind - 1]);
        int rc = apply(c, optarg, ctx);
        if (rc != KP_KPSEG_EXIT_OK)
            return rc;
    }
}

bool kp_kpseg__read(const char *path, struct kp_buf *buf)
{
    char why[256];
    if (kp_segment_file_read(path, KP_KPSEG_MAX_FILE, buf, why, sizeof(why)) != KP_OK) {
        fprintf(stderr, "%s: cannot read: %s\n", path, why);
        return false;
    }
    return true;
}

void kp_kpseg__report(const char *path, int err, size_t offset, const char *msg)
{
    if (err == KP_ENOMEM)
        fprintf(stderr, "%s: out of memory\n", path);
    else
        fprintf(stderr, "%s: offset %zu: %s\n", path, offset, msg);
}

bool kp_kpseg__wants_help(int argc, char **argv)
{
    for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return true;
    }
    return false;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return kp_kpseg__usage_error("missing command");
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        fputs(usage_text, stdout);
        return KP_KPSEG_EXIT_OK;
    }
    if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "version") == 0) {
        printf("kpseg %s (%s), segment format version %d\n", kp_version(), kp_build_commit(),
               KP_SEGMENT_VERSION);
        return KP_KPSEG_EXIT_OK;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (strcmp(argv[1], commands[i].name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    }
    if (argv[1][0] == '-')
        return kp_kpseg__usage_error("unknown option '%s'", argv[1]);
    return kp_kpseg__usage_error("unknown command '%s'", argv[1]);
}

/* kpseg internals: the command table's entry points and the helpers they
 * share. Exit codes: 0 ok, 1 a segment is invalid or a file unreadable, 2 a
 * usage error. */
#ifndef KP_KPSEG_H
#define KP_KPSEG_H

#include <getopt.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "meter/meter.h"

#define KP_KPSEG_EXIT_OK      0
#define KP_KPSEG_EXIT_INVALID 1
#define KP_KPSEG_EXIT_USAGE   2

/* Files larger than this are refused rather than read into memory. */
#define KP_KPSEG_MAX_FILE ((size_t)1 << 30)

/* Each takes the command's own argv (argv[0] is the command name). */
int kp_kpseg__cmd_validate(int argc, char **argv);
int kp_kpseg__cmd_dump(int argc, char **argv);
int kp_kpseg__cmd_summary(int argc, char **argv);
int kp_kpseg__cmd_gen(int argc, char **argv);

/* "kpseg: ..." and the --help hint on stderr; returns KP_KPSEG_EXIT_USAGE. */
int kp_kpseg__usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Parse a decimal unsigned integer for option @opt; false (after a usage
 * error message) when @s is not one or exceeds @max. */
bool kp_kpseg__parse_u64(const char *opt, const char *s, uint64_t max, uint64_t *out);
/* Parse the command's options with getopt_long (our own messages; options
 * may come before or after the operands, "--" ends them): calls @apply for
 * each; returns KP_KPSEG_EXIT_OK with the operands in argv[optind..], or
 * the exit code of a usage error. */
int kp_kpseg__parse_options(int argc, char **argv, const struct option *opts,
                            int (*apply)(int c, const char *arg, void *ctx), void *ctx);
/* Read @path into @buf; false after "FILE: cannot read: REASON". */
bool kp_kpseg__read(const char *path, struct kp_buf *buf);
/* "FILE: offset N: WHAT" (or "FILE: out of memory") on stderr. */
void kp_kpseg__report(const char *path, int err, size_t offset, const char *msg);
/* True when argv holds --help or -h (before any "--"). */
bool kp_kpseg__wants_help(int argc, char **argv);

#endif

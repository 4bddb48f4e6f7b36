/* kpseg validate, dump and summary: read segment files and say what is in
 * them, and where and why they stop being valid.
 *
 * Each file is read whole (kp_segment_file_read, at most KP_KPSEG_MAX_FILE
 * bytes) and checked with kp_segment_validate (validate) or walked with a
 * kp_segment_reader (dump). A missing or unreadable file is reported as
 * "FILE: cannot read: REASON"; a damaged one as "FILE: offset N: WHAT",
 * after whatever was valid before that offset has been printed (dump). */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kpseg.h"
#include "meter/meter.h"

/* --- validate ------------------------------------------------------------ */

struct validate_opts {
    bool allow_open;
};

static int validate_apply(int c, const char *arg, void *ctx)
{
    (void)arg;
    if (c == 'o')
        ((struct validate_opts *)ctx)->allow_open = true;
    return KP_KPSEG_EXIT_OK;
}

static bool validate_one(const char *path, const struct validate_opts *o, struct kp_buf *buf)
{
    struct kp_segment_summary s;
    if (!kp_kpseg__read(path, buf))
        return false;
    int rc = o->allow_open ? kp_segment_scan(buf->data, buf->len, &s)
                           : kp_segment_validate(buf->data, buf->len, &s);
    if (rc != KP_OK) {
        kp_kpseg__report(path, rc, s.err_offset, s.errmsg);
        return false;
    }
    printf("%s: ok (%s, %" PRIu64 " frames, %" PRIu64 " events)\n", path,
           s.sealed ? "sealed" : "open", s.frames, s.events);
    return true;
}

int kp_kpseg__cmd_validate(int argc, char **argv)
{
    static const struct option opts[] = {
        {"allow-open", no_argument, NULL, 'o'},
        {NULL, 0, NULL, 0},
    };
    struct validate_opts o = {false};
    struct kp_buf buf;
    if (kp_kpseg__wants_help(argc, argv)) {
        puts("usage: kpseg validate [--allow-open] FILE...");
        return KP_KPSEG_EXIT_OK;
    }
    int rc = kp_kpseg__parse_options(argc, argv, opts, validate_apply, &o);
    if (rc != KP_KPSEG_EXIT_OK)
        return rc;
    if (optind >= argc)
        return kp_kpseg__usage_error("validate: no FILE given");
    kp_buf_init(&buf);
    int exit_code = KP_KPSEG_EXIT_OK;
    for (int i = optind; i < argc; i++) {
        if (!validate_one(argv[i], &o, &buf))
            exit_code = KP_KPSEG_EXIT_INVALID;
    }
    kp_buf_free(&buf);
    return exit_code;
}

/* --- dump ---------------------------------------------------------------- */

struct dump_opts {
    uint64_t limit; /* UINT64_MAX: all */
};

static int dump_apply(int c, const char *arg, void *ctx)
{
    struct dump_opts *o = ctx;
    if (c == 'n' && !kp_kpseg__parse_u64("--limit", arg, UINT64_MAX - 1, &o->limit))
        return KP_KPSEG_EXIT_USAGE;
    return KP_KPSEG_EXIT_OK;
}

static bool print_event(const struct kp_usage_event *ev)
{
    json_t *j = kp_usage_event_to_json(ev);
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (s == NULL)
        return false;
    puts(s);
    free(s);
    return true;
}

static int dump_file(const char *path, const struct kp_buf *buf, uint64_t limit)
{
    struct kp_segment_reader r;
    struct kp_usage_event ev;
    int exit_code = KP_KPSEG_EXIT_OK;
    if (kp_segment_reader_init(&r, buf->data, buf->len) == KP_OK) {
        for (uint64_t n = 0; n < limit && kp_segment_reader_next(&r, &ev); n++) {
            if (!print_event(&ev)) {
                fprintf(stderr, "%s: out of memory\n", path);
                exit_code = KP_KPSEG_EXIT_INVALID;
                break;
            }
        }
    }
    if (r.err != KP_OK) {
        fflush(stdout);
        kp_kpseg__report(path, r.err, r.err_offset, r.errmsg);
        exit_code = KP_KPSEG_EXIT_INVALID;
    }
    kp_segment_reader_close(&r);
    return exit_code;
}

int kp_kpseg__cmd_dump(int argc, char **argv)
{
    static const struct option opts[] = {
        {"limit", required_argument, NULL, 'n'},
        {NULL, 0, NULL, 0},
    };
    struct dump_opts o = {UINT64_MAX};
    struct kp_buf buf;
    if (kp_kpseg__wants_help(argc, argv)) {
        puts("usage: kpseg dump [--limit N] FILE");
        return KP_KPSEG_EXIT_OK;
    }
    int rc = kp_kpseg__parse_options(argc, argv, opts, dump_apply, &o);
    if (rc != KP_KPSEG_EXIT_OK)
        return rc;
    if (optind >= argc)
        return kp_kpseg__usage_error("dump: no FILE given");
    if (argc - optind > 1)
        return kp_kpseg__usage_error("dump: one FILE at a time");
    kp_buf_init(&buf);
    rc = kp_kpseg__read(argv[optind], &buf) ? dump_file(argv[optind], &buf, o.limit)
                                            : KP_KPSEG_EXIT_INVALID;
    kp_buf_free(&buf);
    return rc;
}

/* A command's own options and the values they take.
 *
 * kp_ctl__parse builds one getopt_long table from the common options
 * (--server, --token, --output, --help) and the command's flags, so every
 * command accepts both, anywhere on its command line; GNU getopt moves the
 * positional arguments to the end, in order. A usage error names the option,
 * never the value given to it: a value can be a secret (--secret is refused
 * on purpose, see KP_CTL_FLAG_SECRET).
 *
 * The value parsers (integers, durations, times) print their own usage error
 * and return KP_CTL_EXIT_USAGE, so callers just pass the code on. */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clusterctl.h"

enum { N_COMMON = 7, FLAG_BASE = 0x100 };

static const struct option common[N_COMMON] = {
    {"server", required_argument, NULL, 's'},
    {"token", required_argument, NULL, 't'},
    {"output", required_argument, NULL, 'o'},
    {"help", no_argument, NULL, 'h'},
    {"cacert", required_argument, NULL, KP_CTL_OPT_CACERT},
    {"cert", required_argument, NULL, KP_CTL_OPT_CERT},
    {"key", required_argument, NULL, KP_CTL_OPT_KEY},
};

/* The option as the user typed it, without any "=value". */
static int option_len(const char *arg)
{
    return (int)strcspn(arg, "=");
}

static int bad_option(struct kp_ctl *ctl, int c, char **argv, int index)
{
    const char *arg = argv[index];
    if (c == ':')
        kp_ctl__usage_error(ctl, "%s: option '%.*s' needs a value", ctl->command, option_len(arg),
                            arg);
    else if (optopt != 0 && optopt < FLAG_BASE)
        kp_ctl__usage_error(ctl, "%s: unknown option '-%c'", ctl->command, optopt);
    else
        kp_ctl__usage_error(ctl, "%s: unknown option '%.*s'", ctl->command, option_len(arg), arg);
    return KP_CTL_EXIT_USAGE;
}

static int refuse_secret(struct kp_ctl *ctl)
{
    kp_ctl__usage_error(ctl,
                        "%s: a secret is never taken from the command line (the process list "
                        "and the shell history would show it); pipe it on stdin or pass "
                        "--secret-file FILE",
                        ctl->command);
    return KP_CTL_EXIT_USAGE;
}

static int take_flag(struct kp_ctl *ctl, const struct kp_ctl_flag *f, const char *value)
{
    json_t **list;

    switch (f->type) {
    case KP_CTL_FLAG_BOOL:
        *(bool *)f->dest = true;
        return KP_CTL_EXIT_OK;
    case KP_CTL_FLAG_VALUE:
        *(const char **)f->dest = value;
        return KP_CTL_EXIT_OK;
    case KP_CTL_FLAG_LIST:
        list = f->dest;
        if (*list == NULL && (*list = json_array()) == NULL)
            break;
        if (json_array_append_new(*list, json_string(value)) != 0) {
            kp_ctl__usage_error(ctl, "%s: --%s: not valid UTF-8", ctl->command, f->name);
            return KP_CTL_EXIT_USAGE;
        }
        return KP_CTL_EXIT_OK;
    case KP_CTL_FLAG_SECRET:
        return refuse_secret(ctl);
    }
    kp_ctl__error(ctl, "out of memory");
    return KP_CTL_EXIT_NO;
}

/* The getopt tables: common options then @flags, and the short-option
 * string. */
static struct option *build_options(const struct kp_ctl_flag *flags, size_t n, char *shorts,
                                    size_t shorts_len)
{
    struct option *opts = kp_calloc(N_COMMON + n + 1, sizeof(*opts));
    size_t k = strlen(strcpy(shorts, ":s:t:o:h"));

    if (opts == NULL)
        return NULL;
    memcpy(opts, common, sizeof(common));
    for (size_t i = 0; i < n; i++) {
        bool takes_value = flags[i].type != KP_CTL_FLAG_BOOL;
        opts[N_COMMON + i].name = flags[i].name;
        opts[N_COMMON + i].has_arg = takes_value ? required_argument : no_argument;
        opts[N_COMMON + i].val = flags[i].short_name ? flags[i].short_name : FLAG_BASE + (int)i;
        if (flags[i].short_name && k + 3 < shorts_len) {
            shorts[k++] = (char)flags[i].short_name;
            if (takes_value)
                shorts[k++] = ':';
            shorts[k] = '\0';
        }
    }
    return opts;
}

static const struct kp_ctl_flag *find_flag(const struct kp_ctl_flag *flags, size_t n, int c)
{
    for (size_t i = 0; i < n; i++) {
        if (flags[i].short_name ? flags[i].short_name == c : FLAG_BASE + (int)i == c)
            return &flags[i];
    }
    return NULL;
}

int kp_ctl__parse(struct kp_ctl *ctl, int argc, char **argv, const struct kp_ctl_flag *flags,
                  size_t n_flags, int *first)
{
    char shorts[64];
    struct option *opts = build_options(flags, n_flags, shorts, sizeof(shorts));
    bool help = false; /* already answered by kp_ctl__dispatch */
    int c, rc = KP_CTL_EXIT_OK;

    if (opts == NULL) {
        kp_ctl__error(ctl, "out of memory");
        return KP_CTL_EXIT_NO;
    }
    opterr = 0;
    optind = 0; /* glibc: restart the scan on a new argv */
    while (rc == KP_CTL_EXIT_OK && (c = getopt_long(argc, argv, shorts, opts, NULL)) != -1) {
        const struct kp_ctl_flag *f = find_flag(flags, n_flags, c);
        if (c == ':' || c == '?')
            rc = bad_option(ctl, c, argv, optind - 1);
        else if (f != NULL)
            rc = take_flag(ctl, f, optarg);
        else
            rc = kp_ctl__common_option(ctl, c, optarg, &help);
    }
    *first = optind;
    kp_free(opts);
    return rc;
}

int kp_ctl__positionals(struct kp_ctl *ctl, int n, int min, int max, const char *synopsis,
                        bool secret_hint)
{
    if (n < min) {
        kp_ctl__usage_error(ctl, "%s: missing arguments; usage: %s %s", ctl->command, ctl->command,
                            synopsis);
        return KP_CTL_EXIT_USAGE;
    }
    if (n > max) {
        kp_ctl__usage_error(ctl, "%s: too many arguments (%d, at most %d)%s; usage: %s %s",
                            ctl->command, n, max,
                            secret_hint ? "; a secret is read from stdin or --secret-file" : "",
                            ctl->command, synopsis);
        return KP_CTL_EXIT_USAGE;
    }
    return KP_CTL_EXIT_OK;
}

int kp_ctl__parse_uint(struct kp_ctl *ctl, const char *what, const char *text, uint64_t max,
                       uint64_t *out)
{
    char *end;
    unsigned long long v;

    errno = 0;
    v = isdigit((unsigned char)text[0]) ? strtoull(text, &end, 10) : 0;
    if (!isdigit((unsigned char)text[0]) || *end != '\0' || errno != 0 || v > max) {
        kp_ctl__usage_error(ctl, "%s: %s must be a whole number from 0 to %llu, not '%s'",
                            ctl->command, what, (unsigned long long)max, text);
        return KP_CTL_EXIT_USAGE;
    }
    *out = v;
    return KP_CTL_EXIT_OK;
}

static uint64_t unit_seconds(char unit)
{
    switch (unit) {
    case 's':
        return 1;
    case 'm':
        return 60;
    case 'h':
        return 3600;
    case 'd':
        return 86400;
    case 'w':
        return 7 * 86400;
    default:
        return 0;
    }
}

/* Parses "3600", "90s", "1h30m". Returns false when @text is not one. */
static bool duration_value(const char *text, bool bare_number_ok, uint64_t *seconds)
{
    const char *p = text;
    uint64_t total = 0;

    if (*p == '\0')
        return false;
    while (*p != '\0') {
        char *end;
        uint64_t unit;
        if (!isdigit((unsigned char)*p))
            return false;
        errno = 0;
        unsigned long long n = strtoull(p, &end, 10);
        if (errno != 0)
            return false;
        if (*end == '\0' && p == text && bare_number_ok)
            unit = 1;
        else if ((unit = unit_seconds(*end)) == 0)
            return false;
        if (n > (UINT64_MAX - total) / unit / 1000)
            return false;
        total += n * unit;
        p = *end != '\0' ? end + 1 : end;
    }
    *seconds = total;
    return true;
}

int kp_ctl__parse_duration(struct kp_ctl *ctl, const char *what, const char *text,
                           uint64_t *seconds)
{
    if (!duration_value(text, true, seconds)) {
        kp_ctl__usage_error(ctl,
                            "%s: %s must be a duration such as 3600 (seconds), 90s, 15m, 12h, "
                            "30d, 2w or 1h30m, not '%s'",
                            ctl->command, what, text);
        return KP_CTL_EXIT_USAGE;
    }
    return KP_CTL_EXIT_OK;
}

/* "+01:00", "-0530", "Z" at @p into seconds east of UTC. */
static bool zone_offset(const char *p, long *offset)
{
    int h, m;
    if (strcmp(p, "Z") == 0 || strcmp(p, "z") == 0) {
        *offset = 0;
        return true;
    }
    if ((p[0] != '+' && p[0] != '-') ||
        (sscanf(p + 1, "%2d:%2d", &h, &m) != 2 && sscanf(p + 1, "%2d%2d", &h, &m) != 2) ||
        strlen(p) > 6 || h > 23 || m > 59)
        return false;
    *offset = (p[0] == '-' ? -1 : 1) * (h * 3600L + m * 60L);
    return true;
}

int kp_ctl__parse_utc_offset(struct kp_ctl *ctl, const char *what, const char *text,
                             int32_t *minutes)
{
    long offset;
    if (!zone_offset(text, &offset) || offset < -12 * 3600L || offset > 14 * 3600L) {
        kp_ctl__usage_error(ctl,
                            "%s: %s must be a fixed offset from UTC between -12:00 and +14:00 "
                            "such as +05:30, -08:00 or Z, not '%s' (time zone names are not "
                            "taken: every node must compute the same boundaries)",
                            ctl->command, what, text);
        return KP_CTL_EXIT_USAGE;
    }
    *minutes = (int32_t)(offset / 60);
    return KP_CTL_EXIT_OK;
}

/* RFC 3339 ("2026-01-02T03:04:05.123Z") or a date ("2026-01-02"). */
static bool rfc3339_value(const char *text, int64_t *unix_ms)
{
    struct tm tm;
    const char *p;
    long offset = 0;
    int64_t ms = 0;

    memset(&tm, 0, sizeof(tm));
    p = strptime(text, "%Y-%m-%d", &tm);
    if (p == NULL)
        return false;
    if (*p == 'T' || *p == 't' || *p == ' ') {
        if ((p = strptime(p + 1, "%H:%M:%S", &tm)) == NULL)
            return false;
        if (*p == '.') {
            int digits = 0;
            for (p++; isdigit((unsigned char)*p); p++, digits++) {
                if (digits < 3)
                    ms = ms * 10 + (*p - '0');
            }
            for (; digits < 3; digits++)
                ms *= 10;
        }
        if (!zone_offset(p, &offset))
            return false;
    } else if (*p != '\0') {
        return false;
    }
    *unix_ms = ((int64_t)timegm(&tm) - offset) * 1000 + ms;
    return true;
}

int kp_ctl__parse_time(struct kp_ctl *ctl, const char *what, const char *text, int64_t *unix_ms)
{
    uint64_t seconds, n;
    char *end;

    if (duration_value(text, false, &seconds)) {
        *unix_ms = kp_now_unix_ms() - (int64_t)seconds * 1000;
        return KP_CTL_EXIT_OK;
    }
    if (rfc3339_value(text, unix_ms))
        return KP_CTL_EXIT_OK;
    errno = 0;
    n = isdigit((unsigned char)text[0]) ? strtoull(text, &end, 10) : 0;
    if (isdigit((unsigned char)text[0]) && *end == '\0' && errno == 0 && n <= INT64_MAX) {
        *unix_ms = (int64_t)n;
        return KP_CTL_EXIT_OK;
    }
    kp_ctl__usage_error(ctl,
                        "%s: %s must be a time such as 2026-01-02T03:04:05Z or 2026-01-02, a "
                        "duration ago such as 1h or 7d, or Unix milliseconds, not '%s'",
                        ctl->command, what, text);
    return KP_CTL_EXIT_USAGE;
}

int kp_ctl__parse_instant(struct kp_ctl *ctl, const char *what, const char *text, int64_t *unix_ms)
{
    uint64_t n;
    char *end;

    if (rfc3339_value(text, unix_ms))
        return KP_CTL_EXIT_OK;
    errno = 0;
    n = isdigit((unsigned char)text[0]) ? strtoull(text, &end, 10) : 0;
    if (isdigit((unsigned char)text[0]) && *end == '\0' && errno == 0 && n <= INT64_MAX) {
        *unix_ms = (int64_t)n;
        return KP_CTL_EXIT_OK;
    }
    kp_ctl__usage_error(ctl,
                        "%s: %s must be a time such as 2026-01-05T00:00:00Z or 2026-01-05, or "
                        "Unix milliseconds, not '%s'",
                        ctl->command, what, text);
    return KP_CTL_EXIT_USAGE;
}

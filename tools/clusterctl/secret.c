/* Secrets clusterctl reads and sends: a key's secret (`keys add`, `keys
 * rotate`, `drill rotate`) and token files (`config set-context
 * --token-file`, `drill rotate --app-token-file`).
 *
 * A secret is read from stdin (prompted for without echo when stdin is a
 * terminal) or from a file, never from the command line, where the process
 * list and the shell history would keep it. It is read with read(2) into a
 * fixed buffer (no stdio buffer keeps a copy), put into a request body sized
 * up front (no reallocation leaves a copy behind), and the caller wipes both
 * once the request is done. Surrounding whitespace is dropped; an empty
 * secret, or one that is not one line of printable characters, is refused
 * before anything is sent. No message ever repeats a secret. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "clusterctl.h"

void kp_ctl__secret_wipe(struct kp_ctl_secret *s)
{
    memset(s->buf, 0, sizeof(s->buf));
    s->len = 0;
}

/* Reads all of @fd, refusing more than KP_CTL_SECRET_MAX bytes. */
static int read_all(int fd, struct kp_ctl_secret *s)
{
    ssize_t n;

    s->len = 0;
    while ((n = read(fd, s->buf + s->len, sizeof(s->buf) - 1 - s->len)) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        s->len += (size_t)n;
        if (s->len > KP_CTL_SECRET_MAX)
            return 1;
    }
    return 0;
}

/* Reads all of @path. */
static int read_file(const char *path, struct kp_ctl_secret *s)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC), rc;

    if (fd < 0)
        return -1;
    rc = read_all(fd, s);
    close(fd);
    return rc;
}

/* One line from the terminal, without echo. */
static int read_tty(const char *id, struct kp_ctl_secret *s)
{
    struct termios old, quiet;
    ssize_t n;
    bool echo_off = tcgetattr(STDIN_FILENO, &old) == 0;

    fprintf(stderr, "Secret for key %s (input hidden, end with Enter): ", id);
    fflush(stderr);
    if (echo_off) {
        quiet = old;
        quiet.c_lflag &= ~(tcflag_t)ECHO;
        quiet.c_lflag |= ECHONL;
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
    }
    do
        n = read(STDIN_FILENO, s->buf, sizeof(s->buf) - 1);
    while (n < 0 && errno == EINTR);
    if (echo_off)
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &old);
    s->len = n > 0 ? (size_t)n : 0;
    return n < 0 ? -1 : s->len > KP_CTL_SECRET_MAX ? 1 : 0;
}

/* Drops surrounding whitespace (the newline of `echo KEY |` or of a file).
 * Returns 1 when nothing is left, 2 when what is left is not one line of
 * printable characters, 0 otherwise. */
static int trim_secret(struct kp_ctl_secret *s)
{
    size_t start = 0;

    while (s->len > 0 && strchr(" \t\r\n", s->buf[s->len - 1]) != NULL)
        s->len--;
    while (start < s->len && (s->buf[start] == ' ' || s->buf[start] == '\t'))
        start++;
    memmove(s->buf, s->buf + start, s->len - start);
    memset(s->buf + s->len - start, 0, start);
    s->len -= start;
    s->buf[s->len] = '\0';
    if (s->len == 0)
        return 1;
    for (size_t i = 0; i < s->len; i++) {
        if ((unsigned char)s->buf[i] < 0x20 || s->buf[i] == 0x7f)
            return 2;
    }
    return 0;
}

/* Turns a failed read into a usage error; @from says where ("in FILE"). */
static int read_failed(struct kp_ctl *ctl, int rc, const char *from)
{
    if (rc < 0)
        kp_ctl__usage_error(ctl, "%s: cannot read the secret %s: %s", ctl->command, from,
                            strerror(errno));
    else
        kp_ctl__usage_error(ctl, "%s: the secret %s is longer than %d bytes", ctl->command, from,
                            KP_CTL_SECRET_MAX);
    return KP_CTL_EXIT_USAGE;
}

int kp_ctl__read_secret(struct kp_ctl *ctl, const char *file, const char *id,
                        struct kp_ctl_secret *s)
{
    char from[300];
    int rc;

    if (file != NULL && strcmp(file, "-") != 0) {
        snprintf(from, sizeof(from), "in %s", file);
        if ((rc = read_file(file, s)) < 0) {
            kp_ctl__usage_error(ctl, "%s: cannot read --secret-file %s: %s", ctl->command, file,
                                strerror(errno));
            return KP_CTL_EXIT_USAGE;
        }
    } else if (file == NULL && isatty(STDIN_FILENO)) {
        snprintf(from, sizeof(from), "was typed");
        rc = read_tty(id, s);
    } else {
        snprintf(from, sizeof(from), "on stdin");
        rc = read_all(STDIN_FILENO, s);
    }
    if (rc != 0)
        return read_failed(ctl, rc, from);
    switch (trim_secret(s)) {
    case 1:
        kp_ctl__usage_error(ctl,
                            "%s: no secret %s: pipe it in (%s ... < FILE) or pass --secret-file "
                            "FILE",
                            ctl->command, from, ctl->command);
        return KP_CTL_EXIT_USAGE;
    case 2:
        kp_ctl__usage_error(ctl, "%s: the secret %s must be one line of printable characters",
                            ctl->command, from);
        return KP_CTL_EXIT_USAGE;
    }
    return KP_CTL_EXIT_OK;
}

int kp_ctl__read_token_file(struct kp_ctl *ctl, const char *flag, const char *path,
                            struct kp_ctl_secret *s)
{
    int rc = read_file(path, s);

    if (rc < 0) {
        kp_ctl__usage_error(ctl, "%s: cannot read %s %s: %s", ctl->command, flag, path,
                            strerror(errno));
        return KP_CTL_EXIT_USAGE;
    }
    if (rc > 0 || trim_secret(s) != 0) {
        kp_ctl__secret_wipe(s);
        kp_ctl__usage_error(ctl, "%s: %s %s must hold one non-empty line (a token)", ctl->command,
                            flag, path);
        return KP_CTL_EXIT_USAGE;
    }
    return KP_CTL_EXIT_OK;
}

/* {"secret":"...", <the fields of @fields>} into @out, reserved up front so
 * that no reallocation leaves a copy of the secret in freed memory. */
static int secret_body(const json_t *fields, const struct kp_ctl_secret *s, struct kp_buf *out)
{
    size_t n;
    char *rest = kp_json_dumps(fields, &n); /* "{...}" */
    int rc;

    kp_buf_init(out);
    if (rest == NULL)
        return -1;
    rc = kp_buf_reserve(out, n + 6 * s->len + 16);
    if (rc == 0)
        rc = kp_buf_append_lit(out, "{\"secret\":\"");
    if (rc == 0)
        rc = kp_json_escape(out, s->buf, s->len);
    if (rc == 0)
        rc = kp_buf_append_lit(out, "\"");
    if (rc == 0 && n > 2)
        rc = kp_buf_append_lit(out, ",");
    if (rc == 0)
        rc = kp_buf_append(out, rest + 1, n - 1);
    kp_free(rest);
    return rc;
}

static void body_wipe(struct kp_buf *b)
{
    if (b->data != NULL)
        memset(b->data, 0, b->cap);
    kp_buf_free(b);
}

int kp_ctl__send_secret(struct kp_ctl *ctl, const char *method, const char *path,
                        const json_t *fields, const struct kp_ctl_secret *s,
                        const char *const *headers, json_t **answer)
{
    struct kp_buf body;
    int rc;

    if (secret_body(fields, s, &body) != 0) {
        body_wipe(&body);
        if (answer != NULL)
            *answer = NULL;
        kp_ctl__error(ctl, "out of memory");
        return KP_CTL_EXIT_NO;
    }
    rc = kp_ctl__call_raw(ctl, method, path, body.data, body.len, headers, answer);
    body_wipe(&body);
    return rc;
}

json_t *kp_ctl__key_secret_in_state(const json_t *key, const char *state)
{
    size_t i;
    json_t *s;

    json_array_foreach(json_object_get(key, "secrets"), i, s)
    {
        const char *st = json_string_value(json_object_get(s, "state"));
        if (st != NULL && strcmp(st, state) == 0)
            return s;
    }
    return NULL;
}

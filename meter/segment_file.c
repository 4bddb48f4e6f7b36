/* Reading a segment file from disk, for tools (kpseg) and tests.
 *
 * The whole file is read into a kp_buf, refusing files longer than the
 * caller's limit before reading them, and reading until end of file rather
 * than trusting the size fstat gave (a file that grows meanwhile is read as
 * far as the limit). It fails with a message a person can act on: the file
 * is missing, unreadable, a directory, or too large. Everything that parses
 * the bytes lives in segment.c; the spool's writer, with its group commit,
 * will live in its own file. */
#include "meter/meter.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int check_regular(int fd, size_t max_len, size_t *size, char *errmsg, size_t errlen)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return kp_errf(errmsg, errlen, kp_err_from_errno(errno), "%s", strerror(errno));
    if (S_ISDIR(st.st_mode))
        return kp_errf(errmsg, errlen, KP_EINVAL, "is a directory");
    if (!S_ISREG(st.st_mode))
        return kp_errf(errmsg, errlen, KP_EINVAL, "not a regular file");
    if ((uint64_t)st.st_size > max_len)
        return kp_errf(errmsg, errlen, KP_ETOOBIG, "%lld bytes, larger than the %zu-byte limit",
                       (long long)st.st_size, max_len);
    *size = (size_t)st.st_size;
    return KP_OK;
}

static int read_all(int fd, size_t max_len, struct kp_buf *out, char *errmsg, size_t errlen)
{
    for (;;) {
        /* kp_buf keeps one byte for its terminating NUL. */
        if (out->cap - out->len <= 1 && kp_buf_reserve(out, 65536) != 0)
            return kp_errf(errmsg, errlen, KP_ENOMEM, "out of memory");
        size_t room = out->cap - out->len - 1;
        ssize_t n = read(fd, out->data + out->len, room);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return kp_errf(errmsg, errlen, kp_err_from_errno(errno), "%s", strerror(errno));
        if (n == 0)
            return KP_OK;
        out->len += (size_t)n;
        if (out->len > max_len)
            return kp_errf(errmsg, errlen, KP_ETOOBIG, "larger than the %zu-byte limit", max_len);
    }
}

int kp_segment_file_read(const char *path, size_t max_len, struct kp_buf *out, char *errmsg,
                         size_t errlen)
{
    size_t size = 0;
    out->len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return kp_errf(errmsg, errlen, kp_err_from_errno(errno), "%s", strerror(errno));
    int rc = check_regular(fd, max_len, &size, errmsg, errlen);
    if (rc != KP_OK)
        goto out_close;
    /* One allocation for the usual case of a file that does not change. */
    if (kp_buf_reserve(out, size + 1) != 0) {
        rc = kp_errf(errmsg, errlen, KP_ENOMEM, "out of memory");
        goto out_close;
    }
    rc = read_all(fd, max_len, out, errmsg, errlen);
out_close:
    close(fd);
    return rc;
}

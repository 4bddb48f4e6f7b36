/* Durable file helpers (file.h). */
#include "file.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"

int kp_write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n == 0)
                errno = EIO;
            return KP_EIO;
        }
        p += n;
        len -= (size_t)n;
    }
    return KP_OK;
}

int kp_pwrite_all(int fd, const void *buf, size_t len, off_t off)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = pwrite(fd, p, len, off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n == 0)
                errno = EIO;
            return KP_EIO;
        }
        p += n;
        off += n;
        len -= (size_t)n;
    }
    return KP_OK;
}

int kp_fsync_dir(const char *path, int is_dir, char *errmsg, size_t errlen)
{
    char copy[4096];
    snprintf(copy, sizeof(copy), "%s", path);
    const char *dir = is_dir ? copy : dirname(copy);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) != 0) {
        snprintf(errmsg, errlen, "%s: fsync: %s", dir, strerror(errno));
        if (fd >= 0)
            close(fd);
        return KP_EIO;
    }
    close(fd);
    return KP_OK;
}

int kp_file_replace(const char *path, const void *data, size_t len, unsigned mode, char *errmsg,
                    size_t errlen)
{
    char tmp[4200];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, (mode_t)mode);
    if (fd < 0) {
        snprintf(errmsg, errlen, "%s: %s", tmp, strerror(errno));
        return KP_EIO;
    }
    if (kp_write_all(fd, data, len) != KP_OK || fsync(fd) != 0) {
        snprintf(errmsg, errlen, "%s: %s", tmp, strerror(errno));
        close(fd);
        unlink(tmp);
        return KP_EIO;
    }
    close(fd);
    if (rename(tmp, path) != 0) {
        snprintf(errmsg, errlen, "%s: rename: %s", path, strerror(errno));
        unlink(tmp);
        return KP_EIO;
    }
    return kp_fsync_dir(path, 0, errmsg, errlen);
}

int kp_mkdir_p(const char *path, unsigned mode, char *errmsg, size_t errlen)
{
    char p[4096];
    snprintf(p, sizeof(p), "%s", path);
    for (char *s = p + 1;; s++) {
        char c = *s;
        if (c != '/' && c != '\0')
            continue;
        *s = '\0';
        if (mkdir(p, (mode_t)mode) != 0 && errno != EEXIST) {
            snprintf(errmsg, errlen, "%s: %s", p, strerror(errno));
            return KP_EIO;
        }
        *s = c;
        if (c == '\0')
            break;
    }
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) {
        snprintf(errmsg, errlen, "%s: not a directory", path);
        return KP_EIO;
    }
    return KP_OK;
}

DIR *kp_opendir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    DIR *d = fdopendir(fd);
    if (d == NULL) {
        int err = errno;
        close(fd);
        errno = err;
    }
    return d;
}

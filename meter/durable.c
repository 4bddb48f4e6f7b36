/* Stopping the node when a usage file cannot be made durable (durable.h),
 * shared by the spool and the meter's store so that both fail the same
 * way. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "meter/durable.h"
#include "meter/meter.h"

_Noreturn void kp_meter__fsync_failed(const char *comp, const char *path, const char *what)
{
    kp_error(comp, "%s: %s: %s; stopping this node (usage events would be lost silently)", path,
             what, strerror(errno));
    _exit(KP_EXIT_FSYNC);
}

int kp_meter__file_replace(const char *comp, const char *path, const void *data, size_t len,
                           char *errmsg, size_t errlen)
{
    char tmp[4200], dirmsg[512];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || kp_write_all(fd, data, len) != KP_OK) {
        snprintf(errmsg, errlen, "%s: %s", tmp, strerror(errno));
        if (fd >= 0) {
            close(fd);
            unlink(tmp);
        }
        return KP_EIO;
    }
    if (fsync(fd) != 0)
        kp_meter__fsync_failed(comp, tmp, "fsync");
    close(fd);
    if (rename(tmp, path) != 0) {
        snprintf(errmsg, errlen, "%s: rename: %s", path, strerror(errno));
        unlink(tmp);
        return KP_EIO;
    }
    if (kp_fsync_dir(path, 0, dirmsg, sizeof(dirmsg)) != KP_OK)
        kp_meter__fsync_failed(comp, path, "fsync of the directory");
    return KP_OK;
}

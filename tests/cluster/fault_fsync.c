/* An LD_PRELOAD library for the reliability scenarios: fsync(2) and
 * fdatasync(2) fail with EIO on files whose path contains
 * KP_FAULT_FSYNC_MATCH, once the file KP_FAULT_FSYNC_TRIGGER exists (the
 * test creates it when the fault should start). Everything else goes to
 * libc. It stands in for a disk whose write-back failed: after such a
 * failure the kernel may have dropped the dirty pages, so a process that
 * retries would report data durable that is not. */
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int fsync(int fd);
int fdatasync(int fd);

static int injected(int fd)
{
    const char *match = getenv("KP_FAULT_FSYNC_MATCH");
    const char *trigger = getenv("KP_FAULT_FSYNC_TRIGGER");
    char link[64], path[4096];
    if (match == NULL || trigger == NULL || access(trigger, F_OK) != 0)
        return 0;
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof(path) - 1);
    if (n < 0)
        return 0;
    path[n] = '\0';
    return strstr(path, match) != NULL;
}

int fsync(int fd)
{
    static int (*real)(int);
    if (injected(fd)) {
        errno = EIO;
        return -1;
    }
    if (real == NULL)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return real(fd);
}

int fdatasync(int fd)
{
    static int (*real)(int);
    if (injected(fd)) {
        errno = EIO;
        return -1;
    }
    if (real == NULL)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return real(fd);
}

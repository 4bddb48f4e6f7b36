/* An LD_PRELOAD library for the reliability scenarios: writes that should
 * be durable fail with EIO on files whose path contains
 * KP_FAULT_FSYNC_MATCH, once the file KP_FAULT_FSYNC_TRIGGER exists (the
 * test creates it when the fault should start). Everything else goes to
 * libc. It stands in for a disk whose write-back failed: after such a
 * failure the kernel may have dropped the dirty pages, so a process that
 * retries would report data durable that is not.
 *
 * Two ways a file is made durable, both covered:
 *
 *   - fsync(2) and fdatasync(2): the spool, the meter's store, node files,
 *     and raft_uv's metadata files, snapshots and directories (libuv's
 *     uv_fs_fsync calls them through libc);
 *   - the completion of a kernel AIO write: raft_uv (canonical/raft 0.15)
 *     opens its log segments with O_DSYNC and writes them with io_submit,
 *     reading the outcome with io_getevents, both through syscall(2) (it
 *     imports no fsync for the log). An O_DSYNC write is durable when it
 *     completes, so a device error surfaces as that write's result: here
 *     the result of a matching file's write becomes -EIO, as the kernel
 *     reports it (the bytes did reach the file: what a failed write leaves
 *     behind is for the reader of the file to find out, not the writer). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <linux/aio_abi.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

int fsync(int fd);
int fdatasync(int fd);
long syscall(long number, ...);

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

/* syscall(2) is variadic; every Linux ABI passes at most six word-sized
 * arguments, so all six are forwarded whatever the call takes. */
long syscall(long number, ...)
{
    static long (*real)(long, ...);
    long a[6];
    va_list ap;
    va_start(ap, number);
    for (int i = 0; i < 6; i++)
        a[i] = va_arg(ap, long);
    va_end(ap);
    if (real == NULL)
        real = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
    long rv = real(number, a[0], a[1], a[2], a[3], a[4], a[5]);
    if (number == SYS_io_getevents && rv > 0) {
        int saved = errno;
        struct io_event *events = (struct io_event *)a[3];
        for (long i = 0; i < rv; i++) {
            const struct iocb *cb = (const struct iocb *)(uintptr_t)events[i].obj;
            if (cb != NULL && events[i].res >= 0 && injected((int)cb->aio_fildes))
                events[i].res = -EIO;
        }
        errno = saved;
    }
    return rv;
}

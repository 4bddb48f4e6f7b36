/* Durable files: whole writes, fsync of a file and of its directory, and
 * replacing a file atomically. Errors come back as KP_EIO (KP_ENOSPC-like
 * conditions included) with errno's text and the path in @errmsg. */
#ifndef KP_CORE_FILE_H
#define KP_CORE_FILE_H

#include <dirent.h>
#include <stddef.h>
#include <sys/types.h>

/* write() until all of @buf is written (EINTR retried). KP_OK or KP_EIO
 * with errno set. */
int kp_write_all(int fd, const void *buf, size_t len);
/* pwrite() until all of @buf is written at @off. */
int kp_pwrite_all(int fd, const void *buf, size_t len, off_t off);
/* fsync the directory that holds @path (the path itself when @is_dir). */
int kp_fsync_dir(const char *path, int is_dir, char *errmsg, size_t errlen);
/* Write @data to @path so that a crash leaves either the old file or the
 * whole new one: PATH.tmp written, fsynced, renamed over @path, directory
 * fsynced. @mode for a new file (0644, 0600). */
int kp_file_replace(const char *path, const void *data, size_t len, unsigned mode, char *errmsg,
                    size_t errlen);
/* opendir(), through open() and fdopendir(): ThreadSanitizer sees the
 * descriptor being created (glibc's opendir opens it internally), so a
 * descriptor number reused from another thread's socket is not reported
 * as a race. NULL with errno set. */
DIR *kp_opendir(const char *path);
/* mkdir -p with @mode for the directories it creates. */
int kp_mkdir_p(const char *path, unsigned mode, char *errmsg, size_t errlen);

#endif

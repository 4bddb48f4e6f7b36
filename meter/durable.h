/* Internal to meter/ (the spool and the meter's store): what happens when a
 * usage file cannot be made durable (docs/meter.md, "Durability").
 *
 * A write that fails (the disk is full) leaves nothing claimed: the caller
 * reports it and tries again later. A failed fsync or fdatasync is another
 * matter: the kernel may have dropped the dirty pages and will report
 * success next time, so retrying would declare durable what is not. The node
 * stops instead (exit KP_EXIT_FSYNC), saying why; what it had acknowledged
 * is on disk, what it had not is sent again by its sender once it is
 * restarted. */
#ifndef KP_METER_DURABLE_H
#define KP_METER_DURABLE_H

#include <stddef.h>

enum { KP_EXIT_FSYNC = 70 }; /* EX_SOFTWARE; deploy/systemd restarts it */

/* @what (an fsync of @path) failed with errno: log it as @comp and stop
 * the process. */
_Noreturn void kp_meter__fsync_failed(const char *comp, const char *path, const char *what);

/* Replace @path by @len bytes of @data atomically (a temporary file, fsync,
 * rename, fsync of the directory). KP_EIO with @errmsg when a write, the
 * rename or an open fails (@path is unchanged); a failed fsync stops the
 * node. */
int kp_meter__file_replace(const char *comp, const char *path, const void *data, size_t len,
                           char *errmsg, size_t errlen);

#endif

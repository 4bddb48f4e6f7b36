/* Error codes shared by every keyplane module.
 *
 * One X-macro yields the enum, the names and the messages. Library codes
 * (errno, libuv) are translated into it in one place: kp_err_from_errno(),
 * kp_err_from_uv(). */
#ifndef KP_CORE_ERROR_H
#define KP_CORE_ERROR_H

#define KP_ERR_MAP(X)                                                                              \
    X(KP_OK, "ok")                                                                                 \
    X(KP_ENOMEM, "out of memory")                                                                  \
    X(KP_EINVAL, "invalid argument")                                                               \
    X(KP_EIO, "input/output error")                                                                \
    X(KP_ENOENT, "not found")                                                                      \
    X(KP_EEXIST, "already exists")                                                                 \
    X(KP_EBUSY, "resource busy")                                                                   \
    X(KP_ETIMEDOUT, "timed out")                                                                   \
    X(KP_ECLOSED, "connection closed")                                                             \
    X(KP_ETOOBIG, "too large")                                                                     \
    X(KP_EPARSE, "parse error")                                                                    \
    X(KP_ECONFIG, "invalid configuration")                                                         \
    X(KP_EPERM, "permission denied")                                                               \
    X(KP_EADDR, "bad address")                                                                     \
    X(KP_ENET, "network error")                                                                    \
    X(KP_ESHUTDOWN, "shutting down")                                                               \
    X(KP_ECONFLICT, "version conflict")                                                            \
    X(KP_ENOTLEADER, "not the leader")                                                             \
    X(KP_EVERSION, "unsupported version")                                                          \
    X(KP_EAUTH, "authentication failed")

enum kp_err {
#define KP_ERR_ENUM(code, msg) code,
    KP_ERR_MAP(KP_ERR_ENUM)
#undef KP_ERR_ENUM
        KP_ERR_COUNT
};

/* "KP_ENOMEM" */
const char *kp_err_name(int err);
/* "out of memory" */
const char *kp_err_msg(int err);
/* Translate a (positive) errno value. */
int kp_err_from_errno(int e);
/* Translate a (negative) libuv error code. */
int kp_err_from_uv(int uverr);

#include <stddef.h>

/* Write a formatted message into @errmsg (when not NULL) and return @rc: the
 * one-line way to fail with context ("return kp_errf(errmsg, errlen,
 * KP_EPARSE, "line %d: ...", n);"). */
int kp_errf(char *errmsg, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif

/* Error names and messages from the X-macro in error.h, and the one place
 * where errno and libuv codes are translated into keyplane's. */
#include "error.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <uv.h>

static const char *const names[] = {
#define KP_ERR_NAME(code, msg) #code,
    KP_ERR_MAP(KP_ERR_NAME)
#undef KP_ERR_NAME
};

static const char *const messages[] = {
#define KP_ERR_TEXT(code, msg) msg,
    KP_ERR_MAP(KP_ERR_TEXT)
#undef KP_ERR_TEXT
};

const char *kp_err_name(int err)
{
    if (err < 0 || err >= KP_ERR_COUNT)
        return "KP_EUNKNOWN";
    return names[err];
}

const char *kp_err_msg(int err)
{
    if (err < 0 || err >= KP_ERR_COUNT)
        return "unknown error";
    return messages[err];
}

int kp_err_from_errno(int e)
{
    switch (e) {
    case 0:
        return KP_OK;
    case ENOMEM:
        return KP_ENOMEM;
    case EINVAL:
        return KP_EINVAL;
    case ENOENT:
        return KP_ENOENT;
    case EEXIST:
        return KP_EEXIST;
    case EBUSY:
    case EAGAIN:
        return KP_EBUSY;
    case ETIMEDOUT:
        return KP_ETIMEDOUT;
    case EPIPE:
    case ECONNRESET:
        return KP_ECLOSED;
    case EACCES:
    case EPERM:
        return KP_EPERM;
    case EADDRINUSE:
    case EADDRNOTAVAIL:
        return KP_EADDR;
    case ECONNREFUSED:
    case ENETUNREACH:
    case EHOSTUNREACH:
        return KP_ENET;
    case EFBIG:
    case E2BIG:
        return KP_ETOOBIG;
    default:
        return KP_EIO;
    }
}

int kp_errf(char *errmsg, size_t errlen, int rc, const char *fmt, ...)
{
    if (errmsg != NULL && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(errmsg, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

int kp_err_from_uv(int uverr)
{
    if (uverr == UV_EOF)
        return KP_ECLOSED;
    if (uverr == UV_ECANCELED)
        return KP_ESHUTDOWN;
    if (uverr < 0 && uverr > -4096)
        return kp_err_from_errno(-uverr);
    return KP_EIO;
}

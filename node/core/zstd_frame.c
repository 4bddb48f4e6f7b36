/* zstd glue (zstd_frame.h). */
#define ZSTD_STATIC_LINKING_ONLY /* ZSTD_customMem, ZSTD_create*_advanced */
#include "zstd_frame.h"

#include <zstd.h>
#include <zstd_errors.h>

#include "alloc.h"
#include "error.h"

static void *zstd_alloc(void *opaque, size_t size)
{
    (void)opaque;
    return kp_malloc(size);
}

static void zstd_free(void *opaque, void *p)
{
    (void)opaque;
    kp_free(p);
}

static const ZSTD_customMem zstd_mem = {zstd_alloc, zstd_free, NULL};

ZSTD_CCtx *kp_zstd_cctx_new(void)
{
    return ZSTD_createCCtx_advanced(zstd_mem);
}

ZSTD_DCtx *kp_zstd_dctx_new(void)
{
    return ZSTD_createDCtx_advanced(zstd_mem);
}

int kp_zstd_err(size_t code, int otherwise)
{
    return ZSTD_getErrorCode(code) == ZSTD_error_memory_allocation ? KP_ENOMEM : otherwise;
}

enum kp_zstd_frame kp_zstd_frame_check(const void *src, size_t len, uint64_t content_size)
{
    if (ZSTD_getFrameContentSize(src, len) != content_size)
        return KP_ZSTD_FRAME_SIZE;
    size_t n = ZSTD_findFrameCompressedSize(src, len);
    if (ZSTD_isError(n) || n != len)
        return KP_ZSTD_FRAME_EXTENT;
    return KP_ZSTD_FRAME_OK;
}

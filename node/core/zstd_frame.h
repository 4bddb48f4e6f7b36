/* zstd for keyplane's file formats (snapshots, segments): contexts whose
 * memory comes from kp_malloc, so allocation-failure tests reach zstd too;
 * zstd's error codes in keyplane's; and the rule both formats keep, that a
 * stored payload is exactly one zstd frame declaring its content size (so
 * a reader knows, and can bound, the output before it decompresses, and
 * no bytes hide after the frame). How much to decompress at once is the
 * format's business: a segment frame is small and capped, a snapshot is
 * not. The contexts are zstd's own types, freed with ZSTD_freeCCtx and
 * ZSTD_freeDCtx; this header spares its includers <zstd.h>. */
#ifndef KP_CORE_ZSTD_FRAME_H
#define KP_CORE_ZSTD_FRAME_H

#include <stddef.h>
#include <stdint.h>

struct ZSTD_CCtx_s; /* ZSTD_CCtx */
struct ZSTD_DCtx_s; /* ZSTD_DCtx */

/* NULL when out of memory. */
struct ZSTD_CCtx_s *kp_zstd_cctx_new(void);
struct ZSTD_DCtx_s *kp_zstd_dctx_new(void);

/* KP_ENOMEM when zstd's error @code says it could not allocate, else
 * @otherwise. */
int kp_zstd_err(size_t code, int otherwise);

enum kp_zstd_frame {
    KP_ZSTD_FRAME_OK,
    KP_ZSTD_FRAME_SIZE,   /* the frame does not declare @content_size bytes of content */
    KP_ZSTD_FRAME_EXTENT, /* @src is not exactly one whole frame */
};

/* Whether the @len bytes at @src are exactly one zstd frame that declares
 * @content_size bytes of content. Reads only the frame's headers. */
enum kp_zstd_frame kp_zstd_frame_check(const void *src, size_t len, uint64_t content_size);

#endif

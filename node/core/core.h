/* node/core: the building blocks every keyplane module and tool may use.
 * Depends on no other keyplane folder. */
#ifndef KP_CORE_H
#define KP_CORE_H

#include "alloc.h"
#include "bytes.h"
#include "clock.h"
#include "error.h"
#include "file.h"
#include "http.h"
#include "json.h"
#include "log.h"
#include "metrics.h"
#include "mpack.h"
#include "seal.h"
#include "siphash.h"
#include "thread.h"
#include "tls.h"
#include "trace.h"
#include "version.h"
#include "zstd_frame.h"

#endif

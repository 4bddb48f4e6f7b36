/* The web console's files, compiled in (console.c serves them; the table
 * is generated from node/ui/ by node/ui/embed.cmake). */
#ifndef KP_NODE_UI_ASSETS_H
#define KP_NODE_UI_ASSETS_H

#include <stddef.h>

struct kp_ui_asset {
    const char *name; /* path under /ui/, "index.html" */
    const char *type; /* Content-Type */
    const char *etag; /* without quotes */
    const unsigned char *data;
    size_t len;
};

extern const struct kp_ui_asset kp_ui_assets[];
extern const size_t kp_ui_n_assets;

#endif

/* libFuzzer driver for token parsing: kp_token_parse() reads what an app
 * sends in Authorization or x-api-key, so any bytes must give either a parsed
 * token or a clean error, and a parsed token's parts must lie inside the
 * input. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "raftstore/raftstore.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct kp_token_parts parts;
    char err[256];
    const char *text = (const char *)data;
    if (kp_token_parse(text, size, &parts, err, sizeof(err)) == 0) {
        if (parts.secret < text || parts.secret + parts.secret_len > text + size)
            abort();
    } else if (strlen(err) == 0) {
        abort();
    }
    return 0;
}

/* JSON helpers over jansson, for the shapes keyplane writes often. */
#ifndef KP_CORE_JSON_H
#define KP_CORE_JSON_H

#include <jansson.h>
#include <stddef.h>

#include "alloc.h"

/* Append @s (len bytes) to @out as a JSON string body, escaped, without the
 * surrounding quotes. */
int kp_json_escape(struct kp_buf *out, const char *s, size_t len);
/* Serialise @v compactly into a new NUL-terminated string (kp_free it). */
char *kp_json_dumps(const json_t *v, size_t *len);
/* An OpenAI-shaped error body:
 * {"error":{"message":...,"type":...,"code":...,"param":null}} */
/* An amount of nano-USD as exact decimal dollars with 9 places
 * ("-0.000001250"), into @out (at least 32 bytes); and as a JSON string. */
void kp_format_nanousd(int64_t nanousd, char *out, size_t len);
json_t *kp_json_usd(int64_t nanousd);

char *kp_json_error_body(const char *message, const char *type, const char *code, size_t *len);

#endif

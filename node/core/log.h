/* Logging: one JSON object per line on stderr (or a test sink), with levels.
 *
 * Every line passes through kp_redact() at the sink, so a provider key or
 * token that reaches a log call by mistake is masked: sk-..., sk-ant-...,
 * "Bearer ...", x-api-key values, kp_... tokens, and every secret registered
 * with kp_log_register_secret(). */
#ifndef KP_CORE_LOG_H
#define KP_CORE_LOG_H

#include <stdbool.h>
#include <stddef.h>

enum kp_log_level { KP_LOG_DEBUG, KP_LOG_INFO, KP_LOG_WARN, KP_LOG_ERROR, KP_LOG_OFF };

void kp_log_set_level(int level);
int kp_log_get_level(void);
/* "debug", "info", "warn", "error", "off" -> level; -1 when unknown. */
int kp_log_parse_level(const char *s);

/* Replace the sink (stderr by default). The sink receives a whole line,
 * newline included, already redacted. NULL restores stderr. */
typedef void (*kp_log_sink_fn)(const char *line, size_t len, void *arg);
void kp_log_set_sink(kp_log_sink_fn fn, void *arg);

void kp_log(int level, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define kp_debug(comp, ...) kp_log(KP_LOG_DEBUG, comp, __VA_ARGS__)
#define kp_info(comp, ...)  kp_log(KP_LOG_INFO, comp, __VA_ARGS__)
#define kp_warn(comp, ...)  kp_log(KP_LOG_WARN, comp, __VA_ARGS__)
#define kp_error(comp, ...) kp_log(KP_LOG_ERROR, comp, __VA_ARGS__)

/* Trace lines ("event -> action"), off unless KEYPLANE_TRACE is set. */
extern bool kp_trace_enabled;
#define kp_trace(comp, ...)                                                                        \
    do {                                                                                           \
        if (kp_trace_enabled)                                                                      \
            kp_log(KP_LOG_DEBUG, comp, __VA_ARGS__);                                               \
    } while (0)
void kp_log_init_from_env(void);

/* Mask key-shaped substrings of s[0..len) in place. Returns the new length
 * (never longer than len). */
size_t kp_redact(char *s, size_t len);

/* Register a secret value so that any later log line containing it is
 * masked. The value is copied. Values shorter than 6 bytes are ignored. */
void kp_log_register_secret(const char *s, size_t len);
void kp_log_clear_secrets(void);

#endif

/* Clocks and ids. */
#ifndef KP_CORE_CLOCK_H
#define KP_CORE_CLOCK_H

#include <stddef.h>
#include <stdint.h>

/* Monotonic time. */
uint64_t kp_now_mono_us(void);
uint64_t kp_now_mono_ms(void);
/* Wall clock, Unix epoch. */
int64_t kp_now_unix_ms(void);
/* "2026-11-29T23:04:05.123Z" into buf (at least 25 bytes). */
void kp_format_time_ms(int64_t unix_ms, char *buf, size_t len);
/* Days since 1970-01-01 of year @y, month @m (1..12), day @d of the
 * proleptic Gregorian calendar, and back (H. Hinnant's algorithms; exact
 * for every int64 day a caller here can produce). */
int64_t kp_days_from_civil(int64_t y, int m, int d);
void kp_civil_from_days(int64_t days, int64_t *y, int *m, int *d);
/* An HTTP-date in the IMF-fixdate form every server must send ("Sun, 06
 * Nov 1994 08:49:37 GMT", RFC 9110 section 5.6.7) into Unix milliseconds.
 * KP_OK, or KP_EINVAL for anything else (the obsolete forms, which a
 * recipient may ignore, included). */
int kp_parse_http_date(const char *s, int64_t *unix_ms);
/* Fill @buf with @len cryptographically random bytes (OpenSSL). */
int kp_random_bytes(void *buf, size_t len);
/* The same bytes for what is random but no secret (request, trace and span
 * ids, retry jitter), handed out from a per-thread pool refilled from
 * kp_random_bytes 1 KiB at a time: one RAND_bytes call costs about as
 * much as the rest of a gateway call's id work (a lock, a getpid, the
 * DRBG's parameter lookups). @len at most 64. KP_OK or KP_EIO. */
int kp_random_pooled(void *buf, size_t len);
/* A random id: @n random bytes as lower-case hex into out (2n+1 bytes). */
int kp_random_hex(char *out, size_t n);

#endif

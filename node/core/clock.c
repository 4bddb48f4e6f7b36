/* Clocks and random ids. Randomness comes from OpenSSL's CSPRNG. */
#include "clock.h"

#include <openssl/rand.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "bytes.h"
#include "error.h"

uint64_t kp_now_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

uint64_t kp_now_mono_ms(void)
{
    return kp_now_mono_us() / 1000u;
}

int64_t kp_now_unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void kp_format_time_ms(int64_t unix_ms, char *buf, size_t len)
{
    /* Floor division, so times before 1970 count down correctly. */
    int64_t ms = unix_ms % 1000;
    int64_t s = unix_ms / 1000;
    if (ms < 0) {
        ms += 1000;
        s -= 1;
    }
    time_t secs = (time_t)s;
    struct tm tm;
    if (gmtime_r(&secs, &tm) == NULL) {
        snprintf(buf, len, "invalid-time");
        return;
    }
    snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)ms);
}

int kp_random_bytes(void *buf, size_t len)
{
    return RAND_bytes(buf, (int)len) == 1 ? KP_OK : KP_EIO;
}

int kp_random_pooled(void *buf, size_t len)
{
    static _Thread_local struct {
        unsigned char bytes[1024];
        size_t used;
    } pool = {.used = sizeof(pool.bytes)};
    if (len > 64)
        return KP_EINVAL;
    if (pool.used + len > sizeof(pool.bytes)) {
        if (kp_random_bytes(pool.bytes, sizeof(pool.bytes)) != KP_OK)
            return KP_EIO;
        pool.used = 0;
    }
    memcpy(buf, pool.bytes + pool.used, len);
    memset(pool.bytes + pool.used, 0, len); /* handed out once */
    pool.used += len;
    return KP_OK;
}

int kp_random_hex(char *out, size_t n)
{
    unsigned char raw[64];
    if (n > sizeof(raw))
        return KP_EINVAL;
    if (kp_random_bytes(raw, n) != KP_OK)
        return KP_EIO;
    kp_hex_encode(raw, n, out);
    return KP_OK;
}

/* @n digits at @s as a number, or -1. */
static int digits(const char *s, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

int kp_parse_http_date(const char *s, int64_t *unix_ms)
{
    static const char days[] = "MonTueWedThuFriSatSun";
    static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    /* "Sun, 06 Nov 1994 08:49:37 GMT": 29 bytes, every field in place. */
    if (s == NULL || strlen(s) != 29 || s[3] != ',' || s[4] != ' ' || s[7] != ' ' || s[11] != ' ' ||
        s[16] != ' ' || s[19] != ':' || s[22] != ':' || strcmp(s + 25, " GMT") != 0)
        return KP_EINVAL;
    bool day_ok = false;
    for (int i = 0; i < 7 && !day_ok; i++)
        day_ok = memcmp(s, days + 3 * i, 3) == 0;
    int month = 0;
    for (int i = 0; i < 12 && month == 0; i++)
        if (memcmp(s + 8, months + 3 * i, 3) == 0)
            month = i + 1;
    int d = digits(s + 5, 2), y = digits(s + 12, 4), h = digits(s + 17, 2), mi = digits(s + 20, 2),
        sec = digits(s + 23, 2);
    if (!day_ok || month == 0 || d < 1 || d > 31 || y < 0 || h < 0 || h > 23 || mi < 0 || mi > 59 ||
        sec < 0 || sec > 60)
        return KP_EINVAL;
    int64_t days_since = kp_days_from_civil(y, month, d), by;
    int bm, bd;
    kp_civil_from_days(days_since, &by, &bm, &bd);
    if (bd != d) /* "31 Feb" */
        return KP_EINVAL;
    *unix_ms = ((days_since * 24 + h) * 60 + mi) * 60000 + (int64_t)sec * 1000;
    return KP_OK;
}

int64_t kp_days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

void kp_civil_from_days(int64_t z, int64_t *y, int *m, int *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

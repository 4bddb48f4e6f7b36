/* Fault specs and the table of faults scripted per key.
 *
 * A spec list is "SPEC[,SPEC...]" from the X-Mock-Fault header or from
 * POST /mock/faults. Parsing is strict: an unknown name, a number that is not
 * plain digits, a value out of range or two different error statuses are
 * refused with a message naming the offending spec, so a typo in a test never
 * silently turns into "no fault".
 *
 * The script table is shared by every worker and guarded by script_lock. The
 * request path reads the atomic n_scripts first and takes the lock only when
 * some key is scripted. Keys are kept only to match requests; listings show
 * fingerprints. */
#include <stdio.h>
#include <string.h>

#include "internal.h"

struct kp_mock_script {
    char *key;
    size_t key_len;
    char fp[KP_MOCK_FP_LEN];
    char *spec;
    struct kp_mock_faults faults;
    unsigned times_left; /* 0: until cleared */
    int route;           /* -1: every route */
    uint64_t hits;
};

#define SCRIPT_MAX 4096

void kp_mock_faults_init(struct kp_mock_faults *f)
{
    memset(f, 0, sizeof(*f));
    f->reset_after = -1;
}

/* Plain decimal digits up to @max. */
static int parse_uint(const char *s, size_t n, unsigned long max, unsigned long *out)
{
    unsigned long v = 0;

    if (n == 0 || n > 10)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (unsigned long)(s[i] - '0');
    }
    if (v > max)
        return -1;
    *out = v;
    return 0;
}

static bool is_status_fault(const char *s, size_t n, int *status)
{
    static const int statuses[] = {401, 403, 404, 429, 500, 502, 503, 529};
    unsigned long v;

    if (n != 3 || parse_uint(s, n, 999, &v) != 0)
        return false;
    for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++) {
        if ((int)v == statuses[i]) {
            *status = statuses[i];
            return true;
        }
    }
    return false;
}

static int set_status(struct kp_mock_faults *f, int status, bool quota)
{
    if (f->status != 0 && (f->status != status || f->quota != quota))
        return -1;
    f->status = status;
    f->quota = quota;
    return 0;
}

/* "NAME=VALUE" where NAME is @name; *value_len is SIZE_MAX when no "=". */
static bool match_name(const char *s, size_t n, const char *name, const char **value,
                       size_t *value_len)
{
    size_t nl = strlen(name);

    if (n < nl || memcmp(s, name, nl) != 0)
        return false;
    if (n == nl) {
        *value = NULL;
        *value_len = SIZE_MAX;
        return true;
    }
    if (s[nl] != '=')
        return false;
    *value = s + nl + 1;
    *value_len = n - nl - 1;
    return true;
}

static int parse_delay(const char *v, size_t vl, unsigned *out)
{
    unsigned long ms;

    if (vl == SIZE_MAX || parse_uint(v, vl, KP_MOCK_MAX_DELAY_MS, &ms) != 0)
        return -1;
    *out = (unsigned)ms;
    return 0;
}

static int parse_timing(struct kp_mock_faults *f, const char *s, size_t n)
{
    const char *v;
    size_t vl;
    unsigned long num;

    if (match_name(s, n, "latency", &v, &vl))
        return parse_delay(v, vl, &f->latency_ms);
    if (match_name(s, n, "slow_first_byte", &v, &vl))
        return parse_delay(v, vl, &f->slow_first_byte_ms);
    if (match_name(s, n, "slow_chunks", &v, &vl))
        return parse_delay(v, vl, &f->slow_chunks_ms);
    if (match_name(s, n, "reset_mid_stream", &v, &vl)) {
        if (vl == SIZE_MAX) {
            f->reset_after = 2;
            return 0;
        }
        if (parse_uint(v, vl, KP_MOCK_MAX_RESET_AFTER, &num) != 0)
            return -1;
        f->reset_after = (int)num;
        return 0;
    }
    if (n == strlen("malformed_json") && memcmp(s, "malformed_json", n) == 0) {
        f->malformed_json = true;
        return 0;
    }
    return -1;
}

static int parse_one(struct kp_mock_faults *f, const char *s, size_t n)
{
    /* Retry-After in seconds, or as an HTTP-date that many seconds ahead;
     * or retry-after-ms alone. */
    static const struct {
        const char *prefix;
        size_t len;
        enum kp_mock_retry_form form;
    } retry[] = {{"429:retry_after=", 16, KP_MOCK_RETRY_SECONDS},
                 {"429:retry_at=", 13, KP_MOCK_RETRY_DATE},
                 {"429:retry_after_ms=", 19, KP_MOCK_RETRY_MS}};
    int status;
    unsigned long secs;

    if (is_status_fault(s, n, &status)) {
        if (set_status(f, status, false) != 0)
            return -1;
        if (status == 429 && f->retry_after == 0)
            f->retry_after = 1;
        return 0;
    }
    for (size_t i = 0; i < sizeof(retry) / sizeof(retry[0]); i++) {
        if (n <= retry[i].len || memcmp(s, retry[i].prefix, retry[i].len) != 0)
            continue;
        if (parse_uint(s + retry[i].len, n - retry[i].len, KP_MOCK_MAX_RETRY_AFTER, &secs) != 0 ||
            set_status(f, 429, false) != 0)
            return -1;
        f->retry_after = (unsigned)secs;
        f->retry_form = (uint8_t)retry[i].form;
        return 0;
    }
    if (n == 5 && memcmp(s, "quota", 5) == 0)
        return set_status(f, 429, true);
    return parse_timing(f, s, n);
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t';
}

int kp_mock_faults_parse(struct kp_mock_faults *f, const char *spec, size_t len, char *errmsg,
                         size_t errlen)
{
    size_t i = 0;
    unsigned count = 0;

    kp_mock_faults_init(f);
    while (i <= len) {
        size_t start = i, end;

        while (i < len && spec[i] != ',')
            i++;
        end = i++;
        while (start < end && is_space(spec[start]))
            start++;
        while (end > start && is_space(spec[end - 1]))
            end--;
        if (start == end)
            continue;
        count++;
        if (parse_one(f, spec + start, end - start) != 0) {
            snprintf(errmsg, errlen,
                     "bad fault spec '%.*s' (want "
                     "401|403|404|429[:retry_after=S|:retry_at=S|:retry_after_ms=MS]|quota|500|502|"
                     "503|529|latency=MS|slow_first_byte=MS|slow_chunks=MS|reset_mid_stream[=N]|"
                     "malformed_json, one error status at most)",
                     (int)(end - start > 64 ? 64 : end - start), spec + start);
            return KP_EINVAL;
        }
    }
    if (count == 0) {
        snprintf(errmsg, errlen, "empty fault spec");
        return KP_EINVAL;
    }
    return 0;
}

void kp_mock_faults_merge(struct kp_mock_faults *dst, const struct kp_mock_faults *src)
{
    if (src->status != 0) {
        dst->status = src->status;
        dst->quota = src->quota;
        dst->retry_after = src->retry_after;
        dst->retry_form = src->retry_form;
    }
    if (src->latency_ms)
        dst->latency_ms = src->latency_ms;
    if (src->slow_first_byte_ms)
        dst->slow_first_byte_ms = src->slow_first_byte_ms;
    if (src->slow_chunks_ms)
        dst->slow_chunks_ms = src->slow_chunks_ms;
    if (src->reset_after >= 0)
        dst->reset_after = src->reset_after;
    if (src->malformed_json)
        dst->malformed_json = true;
}

unsigned kp_mock_faults_head_delay(const struct kp_mock_faults *f)
{
    return f->latency_ms + f->slow_first_byte_ms;
}

/* --- scripts ------------------------------------------------------------- */

static void script_free(struct kp_mock_script *s)
{
    kp_free(s->key);
    kp_free(s->spec);
}

/* Index of @key's script or -1. Caller holds the lock. */
static int script_find(struct kp_mock *m, const char *key, size_t key_len)
{
    unsigned n = atomic_load_explicit(&m->n_scripts, memory_order_relaxed);

    for (unsigned i = 0; i < n; i++) {
        if (m->scripts[i].key_len == key_len && memcmp(m->scripts[i].key, key, key_len) == 0)
            return (int)i;
    }
    return -1;
}

/* Removes script @i by moving the last one into its place. Caller locks. */
static void script_remove(struct kp_mock *m, unsigned i)
{
    unsigned n = atomic_load_explicit(&m->n_scripts, memory_order_relaxed);

    script_free(&m->scripts[i]);
    m->scripts[i] = m->scripts[n - 1];
    atomic_store_explicit(&m->n_scripts, n - 1, memory_order_release);
}

static int script_reserve(struct kp_mock *m, unsigned n)
{
    struct kp_mock_script *grown;
    unsigned cap;

    if (n < m->script_cap)
        return 0;
    if (n >= SCRIPT_MAX)
        return KP_ETOOBIG;
    cap = m->script_cap ? m->script_cap * 2 : 16;
    grown = kp_realloc(m->scripts, cap * sizeof(*grown));
    if (grown == NULL)
        return KP_ENOMEM;
    m->scripts = grown;
    m->script_cap = cap;
    return 0;
}

int kp_mock_script_set(struct kp_mock *m, const char *key, size_t key_len, const char *spec,
                       size_t spec_len, unsigned times, int route, char *errmsg, size_t errlen)
{
    struct kp_mock_script s = {0};
    unsigned n;
    int rv, at;

    rv = kp_mock_faults_parse(&s.faults, spec, spec_len, errmsg, errlen);
    if (rv != 0)
        return rv;
    s.key = kp_strndup(key, key_len);
    s.spec = kp_strndup(spec, spec_len);
    if (s.key == NULL || s.spec == NULL) {
        snprintf(errmsg, errlen, "out of memory");
        rv = KP_ENOMEM;
        goto err_after_strdup;
    }
    s.key_len = key_len;
    s.times_left = times;
    s.route = route;
    kp_mock_fingerprint(key, key_len, s.fp);

    pthread_mutex_lock(&m->script_lock);
    at = script_find(m, key, key_len);
    if (at >= 0) {
        script_free(&m->scripts[at]);
        m->scripts[at] = s;
        pthread_mutex_unlock(&m->script_lock);
        return 0;
    }
    n = atomic_load_explicit(&m->n_scripts, memory_order_relaxed);
    rv = script_reserve(m, n);
    if (rv != 0) {
        pthread_mutex_unlock(&m->script_lock);
        snprintf(errmsg, errlen, "%s",
                 rv == KP_ETOOBIG ? "too many scripted keys (4096)" : "out of memory");
        goto err_after_strdup;
    }
    m->scripts[n] = s;
    atomic_store_explicit(&m->n_scripts, n + 1, memory_order_release);
    pthread_mutex_unlock(&m->script_lock);
    return 0;

err_after_strdup:
    script_free(&s);
    return rv;
}

bool kp_mock_script_take(struct kp_mock *m, const char *key, size_t key_len,
                         enum kp_mock_route route, struct kp_mock_faults *out)
{
    struct kp_mock_script *s;
    int at;

    if (atomic_load_explicit(&m->n_scripts, memory_order_acquire) == 0)
        return false;
    pthread_mutex_lock(&m->script_lock);
    at = script_find(m, key, key_len);
    if (at < 0 || (m->scripts[at].route >= 0 && m->scripts[at].route != (int)route)) {
        pthread_mutex_unlock(&m->script_lock);
        return false;
    }
    s = &m->scripts[at];
    *out = s->faults;
    s->hits++;
    if (s->times_left > 0 && --s->times_left == 0)
        script_remove(m, (unsigned)at);
    pthread_mutex_unlock(&m->script_lock);
    return true;
}

unsigned kp_mock_script_clear(struct kp_mock *m, const char *key, size_t key_len)
{
    unsigned removed = 0;
    int at;

    pthread_mutex_lock(&m->script_lock);
    if (key != NULL) {
        at = script_find(m, key, key_len);
        if (at >= 0) {
            script_remove(m, (unsigned)at);
            removed = 1;
        }
    } else {
        removed = atomic_load_explicit(&m->n_scripts, memory_order_relaxed);
        for (unsigned i = 0; i < removed; i++)
            script_free(&m->scripts[i]);
        atomic_store_explicit(&m->n_scripts, 0, memory_order_release);
    }
    pthread_mutex_unlock(&m->script_lock);
    return removed;
}

int kp_mock_script_render(struct kp_mock *m, struct kp_buf *out)
{
    unsigned n;
    int rv = 0;

    pthread_mutex_lock(&m->script_lock);
    n = atomic_load_explicit(&m->n_scripts, memory_order_relaxed);
    rv |= kp_buf_appendf(out, "{\"faults\":[");
    for (unsigned i = 0; i < n; i++) {
        const struct kp_mock_script *s = &m->scripts[i];

        rv |= kp_buf_appendf(out, "%s{\"key_fp\":\"%s\",\"faults\":\"", i ? "," : "", s->fp);
        rv |= kp_json_escape(out, s->spec, strlen(s->spec));
        if (s->times_left)
            rv |= kp_buf_appendf(out, "\",\"times_left\":%u", s->times_left);
        else
            rv |= kp_buf_appendf(out, "\",\"times_left\":null");
        if (s->route >= 0)
            rv |= kp_buf_appendf(out, ",\"route\":\"%s\"",
                                 kp_mock_route_name((enum kp_mock_route)s->route));
        rv |= kp_buf_appendf(out, ",\"hits\":%llu}", (unsigned long long)s->hits);
    }
    rv |= kp_buf_appendf(out, "]}");
    pthread_mutex_unlock(&m->script_lock);
    return rv ? KP_ENOMEM : 0;
}

void kp_mock__scripts_free(struct kp_mock *m)
{
    kp_mock_script_clear(m, NULL, 0);
    kp_free(m->scripts);
    m->scripts = NULL;
    m->script_cap = 0;
}

/* --- account balances (GET /v1/user/balance) ----------------------------- */

int kp_mock_balance_set(struct kp_mock *m, const char *key, size_t key_len, const char *usd)
{
    char fp[KP_MOCK_FP_LEN];
    size_t n = strlen(usd);
    if (n == 0 || n >= sizeof(m->balances[0].usd) || strspn(usd, "-0123456789.") != n)
        return -1;
    kp_mock_fingerprint(key, key_len, fp);
    pthread_mutex_lock(&m->script_lock);
    unsigned i = 0;
    while (i < m->n_balances && strcmp(m->balances[i].fp, fp) != 0)
        i++;
    int rv = 0;
    if (i == m->n_balances && m->n_balances == KP_MOCK_BALANCES) {
        rv = -1;
    } else {
        if (i == m->n_balances)
            m->n_balances++;
        memcpy(m->balances[i].fp, fp, sizeof(fp));
        memcpy(m->balances[i].usd, usd, n + 1);
    }
    pthread_mutex_unlock(&m->script_lock);
    return rv;
}

bool kp_mock_balance_get(struct kp_mock *m, const char *key, size_t key_len, char out[32])
{
    char fp[KP_MOCK_FP_LEN];
    bool found = false;
    if (key == NULL)
        return false;
    kp_mock_fingerprint(key, key_len, fp);
    pthread_mutex_lock(&m->script_lock);
    for (unsigned i = 0; i < m->n_balances && !found; i++) {
        if (strcmp(m->balances[i].fp, fp) == 0) {
            memcpy(out, m->balances[i].usd, sizeof(m->balances[i].usd));
            found = true;
        }
    }
    pthread_mutex_unlock(&m->script_lock);
    return found;
}

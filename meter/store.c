/* The meter's store (store.h, docs/meter.md "Meter").
 *
 * Threads: callers (the control listener's threadpool) store segments and
 * run queries; one compactor thread merges stored segments into day files
 * and enforces raw retention. @mu guards the pending list and the
 * statistics; @days_mu guards the day cache and the day objects in it
 * (held while a day is merged into or read by a query). Day files are
 * replaced atomically, so a reader never sees half of one. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "meter/durable.h"
#include "meter/meter.h"

#define DAY_MS      86400000LL
#define CACHE_DAYS  3      /* days kept decoded for compaction: today, yesterday, one more */
#define SWEEP_EVERY 600000 /* ms between raw retention sweeps */
/* How many matching events a search collects before it stops scanning. */
#define SEARCH_MAX 200000

struct seg_ref {
    char node[KP_SEGMENT_NODE_MAX + 1];
    uint64_t seq;
    int64_t first_ms, last_ms; /* from the footer */
    uint64_t events;
};

struct cached_day {
    int64_t day;
    struct kp_rollup_day *d;
    uint64_t used; /* LRU clock */
};

struct kp_meter_store {
    struct kp_meter_store_options opt;
    char dir[3000];
    pthread_t thread;
    bool thread_started;

    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    struct seg_ref *pending;
    size_t n_pending, cap_pending;
    uint64_t put_gen, done_gen; /* segments stored / compacted, by count */
    uint64_t flush_gen;         /* kp_meter_store_flush wants done_gen to reach this */
    int64_t first_pending_ms;   /* when the pending list last became non-empty */
    bool stop;
    struct kp_meter_store_stats st;

    pthread_mutex_t days_mu;
    struct cached_day cache[CACHE_DAYS];
    uint64_t clock;
};

/* --- names and small files ----------------------------------------------------- */

/* Node names become directory names: only [A-Za-z0-9._-], not "." or "..". */
static bool node_name_ok(const char *s)
{
    if (s[0] == '\0' || strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '.' || *s == '-' || *s == '_'))
            return false;
    return true;
}

static void seg_path(const struct kp_meter_store *m, const char *node, uint64_t seq, char *out,
                     size_t len)
{
    snprintf(out, len, "%s/segments/%s/%020" PRIu64 ".kpseg", m->dir, node, seq);
}

static void day_path(const struct kp_meter_store *m, int64_t day, char *out, size_t len)
{
    time_t t = (time_t)(day / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(out, len, "%s/rollups/%04d-%02d-%02d.kpru", m->dir, tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday);
}

/* The footer of sealed segment @path: event count and time range. */
static int read_footer(const char *path, struct seg_ref *r)
{
    uint8_t f[KP_SEGMENT_FOOTER_SIZE];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return KP_EIO;
    struct stat st;
    bool ok = fstat(fd, &st) == 0 &&
              st.st_size >= KP_SEGMENT_HEADER_SIZE + KP_SEGMENT_FOOTER_SIZE &&
              pread(fd, f, sizeof(f), st.st_size - KP_SEGMENT_FOOTER_SIZE) == (ssize_t)sizeof(f) &&
              memcmp(f, "KPFT", 4) == 0;
    close(fd);
    if (!ok)
        return KP_EPARSE;
    r->events = kp_get_le(f + 8, 8);
    r->first_ms = (int64_t)kp_get_le(f + 16, 8);
    r->last_ms = (int64_t)kp_get_le(f + 24, 8);
    return KP_OK;
}

/* --- the day cache (days_mu held) ---------------------------------------------- */

static struct kp_rollup_day *day_cached(struct kp_meter_store *m, int64_t day)
{
    for (int i = 0; i < CACHE_DAYS; i++) {
        struct cached_day *c = &m->cache[i];
        if (c->d != NULL && c->day == day) {
            c->used = ++m->clock;
            return c->d;
        }
    }
    return NULL;
}

/* Read the day file of @day, decoding the levels in @levels (bits of enum
 * kp_rollup_level; ~0u: all). KP_ENOENT when there is none; KP_EPARSE for
 * a damaged one (logged). */
static int day_load(struct kp_meter_store *m, int64_t day, unsigned levels,
                    struct kp_rollup_day **out)
{
    char path[4096], errmsg[512];
    struct kp_buf b;
    kp_buf_init(&b);
    *out = NULL;
    day_path(m, day, path, sizeof(path));
    if (access(path, F_OK) != 0 && errno == ENOENT)
        return KP_ENOENT;
    int rc = kp_segment_file_read(path, (size_t)1 << 32, &b, errmsg, sizeof(errmsg));
    if (rc == KP_OK) {
        rc = kp_rollup_day_decode_levels(b.data, b.len, levels, out, errmsg, sizeof(errmsg));
        if (rc != KP_OK)
            kp_error("meter",
                     "%s: %s; move it aside and restart to rebuild it from the raw "
                     "segments (docs/meter.md)",
                     path, errmsg);
    } else {
        kp_error("meter", "%s: %s", path, errmsg);
    }
    kp_buf_free(&b);
    return rc;
}

/* The day starting at @day with every level, for compaction: cached,
 * loaded, or new (with @create). NULL with *rc set otherwise (KP_ENOENT: no
 * file and not @create). */
static struct kp_rollup_day *day_get(struct kp_meter_store *m, int64_t day, bool create, int *rc)
{
    struct kp_rollup_day *d = day_cached(m, day);
    if (d != NULL)
        return d;
    *rc = day_load(m, day, KP_ROLLUP_ALL_LEVELS, &d);
    if (*rc == KP_ENOENT && create)
        *rc = kp_rollup_day_new(day, &d);
    if (d == NULL)
        return NULL;
    struct cached_day *slot = &m->cache[0];
    for (int i = 1; i < CACHE_DAYS && slot->d != NULL; i++)
        if (m->cache[i].d == NULL || m->cache[i].used < slot->used)
            slot = &m->cache[i];
    kp_rollup_day_free(slot->d);
    slot->d = d;
    slot->day = day;
    slot->used = ++m->clock;
    return d;
}

static int day_write(struct kp_meter_store *m, const struct kp_rollup_day *d)
{
    char path[4096], errmsg[512];
    struct kp_buf b;
    kp_buf_init(&b);
    day_path(m, kp_rollup_day_start(d), path, sizeof(path));
    int rc = kp_rollup_day_encode(d, &b);
    if (rc == KP_OK)
        rc = kp_meter__file_replace("meter", path, b.data, b.len, errmsg, sizeof(errmsg));
    if (rc == KP_EIO)
        kp_error("meter", "%s", errmsg);
    kp_buf_free(&b);
    return rc;
}

/* Forget cached day @day (its merge failed half way). */
static void day_drop(struct kp_meter_store *m, int64_t day)
{
    for (int i = 0; i < CACHE_DAYS; i++)
        if (m->cache[i].d != NULL && m->cache[i].day == day) {
            kp_rollup_day_free(m->cache[i].d);
            m->cache[i].d = NULL;
        }
}

/* --- compaction ---------------------------------------------------------------- */

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* Move a stored segment that no longer reads back whole to DIR/quarantine/
 * with a note, and say so loudly: its events are missing from the
 * rollups until it is replaced (the other meter has it). */
static void quarantine(struct kp_meter_store *m, const struct seg_ref *r, const char *path,
                       const char *why)
{
    char dir[4096], dst[4300], note[4400], text[700];
    snprintf(dir, sizeof(dir), "%s/quarantine", m->dir);
    snprintf(dst, sizeof(dst), "%s/%s-%020" PRIu64 ".kpseg", dir, r->node, r->seq);
    snprintf(note, sizeof(note), "%s.why", dst);
    int n = snprintf(text, sizeof(text), "%s\n", why);
    char errmsg[256];
    if (kp_mkdir_p(dir, 0700, errmsg, sizeof(errmsg)) != KP_OK || rename(path, dst) != 0) {
        kp_error("meter", "segment %s is damaged (%s) and cannot be moved aside: %s", path, why,
                 strerror(errno));
        return;
    }
    if (kp_file_replace(note, text, (size_t)n, 0644, errmsg, sizeof(errmsg)) != KP_OK)
        kp_warn("meter", "%s", errmsg);
    kp_error("meter",
             "stored segment %s is damaged (%s): moved to %s; its %" PRIu64
             " events are missing from the rollups until a good copy is delivered again "
             "(copy it from the other meter into %s/segments/%s/ and restart)",
             path, why, dst, r->events, m->dir, r->node);
    pthread_mutex_lock(&m->mu);
    m->st.quarantined++;
    pthread_mutex_unlock(&m->mu);
}

/* Merge @segs into every day they touch: one load and one write per day. */
static int compact(struct kp_meter_store *m, const struct seg_ref *segs, size_t n)
{
    int64_t *days = NULL;
    size_t n_days = 0, cap = 0;
    int rc = KP_OK;
    for (size_t i = 0; i < n && rc == KP_OK; i++) {
        if (segs[i].events == 0)
            continue;
        for (int64_t d = kp_day_floor_ms(segs[i].first_ms); d <= segs[i].last_ms; d += DAY_MS) {
            if (n_days == cap) {
                cap = cap ? cap * 2 : 16;
                int64_t *p = kp_realloc(days, cap * sizeof(*p));
                if (p == NULL) {
                    rc = KP_ENOMEM;
                    break;
                }
                days = p;
            }
            days[n_days++] = d;
        }
    }
    if (n_days > 0)
        qsort(days, n_days, sizeof(*days), cmp_i64);
    struct kp_buf seg;
    kp_buf_init(&seg);
    char path[4096], errmsg[512];
    uint64_t merged = 0;
    int64_t newest = 0;
    for (size_t k = 0; k < n_days && rc == KP_OK; k++) {
        if (k > 0 && days[k] == days[k - 1])
            continue;
        int64_t day = days[k];
        pthread_mutex_lock(&m->days_mu);
        struct kp_rollup_day *d = day_get(m, day, true, &rc);
        bool changed = false;
        for (size_t i = 0; d != NULL && i < n; i++) {
            const struct seg_ref *r = &segs[i];
            if (r->events == 0 || r->last_ms < day || r->first_ms >= day + DAY_MS ||
                kp_rollup_day_has_segment(d, r->node, r->seq))
                continue;
            seg_path(m, r->node, r->seq, path, sizeof(path));
            rc = kp_segment_file_read(path, m->opt.max_segment_bytes, &seg, errmsg, sizeof(errmsg));
            if (rc == KP_ENOENT) {
                rc = KP_OK; /* quarantined while compacting another day */
                continue;
            }
            if (rc == KP_OK)
                rc = kp_rollup_day_merge_segment(d, seg.data, seg.len, errmsg, sizeof(errmsg));
            if (rc == KP_EEXIST)
                rc = KP_OK;
            if (rc == KP_EPARSE || rc == KP_ETOOBIG || rc == KP_EINVAL) {
                /* Damaged on disk since it was stored whole (the merge left
                 * the day unchanged): set it aside instead of retrying it
                 * forever in front of every later segment. */
                quarantine(m, r, path, errmsg);
                rc = KP_OK;
                continue;
            }
            if (rc != KP_OK) {
                kp_error("meter", "compacting %s: %s", path, errmsg);
                break;
            }
            changed = true;
            merged++;
            if (r->last_ms > newest)
                newest = r->last_ms;
        }
        if (d != NULL && changed && rc == KP_OK)
            rc = day_write(m, d);
        if (rc != KP_OK)
            day_drop(m, day); /* the file on disk is still whole and right */
        pthread_mutex_unlock(&m->days_mu);
    }
    kp_buf_free(&seg);
    kp_free(days);
    pthread_mutex_lock(&m->mu);
    m->st.compacted += merged;
    if (newest > m->st.newest_event_ms)
        m->st.newest_event_ms = newest;
    pthread_mutex_unlock(&m->mu);
    return rc;
}

static int pending_add(struct kp_meter_store *m, const struct seg_ref *r)
{
    if (m->n_pending == m->cap_pending) {
        size_t cap = m->cap_pending ? m->cap_pending * 2 : 64;
        struct seg_ref *p = kp_realloc(m->pending, cap * sizeof(*p));
        if (p == NULL)
            return KP_ENOMEM;
        m->pending = p;
        m->cap_pending = cap;
    }
    m->pending[m->n_pending++] = *r;
    m->st.pending = m->n_pending;
    return KP_OK;
}

/* Calls @fn for each raw segment on disk with its footer read. */
static int each_segment(struct kp_meter_store *m, int (*fn)(void *arg, const struct seg_ref *r),
                        void *arg)
{
    char base[4096], sub[4400], path[4700];
    snprintf(base, sizeof(base), "%s/segments", m->dir);
    DIR *d = kp_opendir(base);
    if (d == NULL)
        return KP_EIO;
    struct dirent *e;
    int rc = KP_OK;
    while (rc == KP_OK && (e = readdir(d)) != NULL) {
        if (!node_name_ok(e->d_name) || strlen(e->d_name) > KP_SEGMENT_NODE_MAX)
            continue;
        snprintf(sub, sizeof(sub), "%s/%s", base, e->d_name);
        DIR *d2 = kp_opendir(sub);
        if (d2 == NULL)
            continue;
        struct dirent *f;
        while (rc == KP_OK && (f = readdir(d2)) != NULL) {
            struct seg_ref r = {0};
            char *end = NULL;
            unsigned long long seq = strtoull(f->d_name, &end, 10);
            if (end != f->d_name + 20 || strcmp(end, ".kpseg") != 0)
                continue;
            snprintf(r.node, sizeof(r.node), "%.*s", KP_SEGMENT_NODE_MAX, e->d_name);
            r.seq = seq;
            snprintf(path, sizeof(path), "%s/%s", sub, f->d_name);
            if (read_footer(path, &r) != KP_OK) {
                kp_error("meter", "%s: unreadable footer; left out of rollups", path);
                continue;
            }
            rc = fn(arg, &r);
        }
        closedir(d2);
    }
    closedir(d);
    return rc;
}

struct scan {
    struct seg_ref *v;
    size_t n, cap;
};

static int scan_add(void *arg, const struct seg_ref *r)
{
    struct scan *s = arg;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 256;
        struct seg_ref *p = kp_realloc(s->v, cap * sizeof(*p));
        if (p == NULL)
            return KP_ENOMEM;
        s->v = p;
        s->cap = cap;
    }
    s->v[s->n++] = *r;
    return KP_OK;
}

/* At open: every raw segment that some day it touches does not hold yet
 * (a crash came between storing and compacting) is pending again. */
static int cmp_seg_first(const void *a, const void *b)
{
    const struct seg_ref *x = a, *y = b;
    return x->first_ms < y->first_ms ? -1 : x->first_ms > y->first_ms;
}

/* Delete the *.tmp files in @dir. */
static void remove_tmp_in(const char *dir)
{
    char path[4700];
    DIR *d = kp_opendir(dir);
    if (d == NULL)
        return;
    struct dirent *f;
    while ((f = readdir(d)) != NULL) {
        size_t len = strlen(f->d_name);
        if (len > 4 && strcmp(f->d_name + len - 4, ".tmp") == 0) {
            snprintf(path, sizeof(path), "%s/%s", dir, f->d_name);
            if (unlink(path) == 0)
                kp_info("meter", "%s: removed an unfinished write", path);
        }
    }
    closedir(d);
}

/* At open, before any delivery: delete what writes that never finished
 * left (SEQ.kpseg.PID.N.tmp between write and link, DAY.kpru.tmp before
 * its rename), for instance when a failed fsync stopped the node. Senders
 * deliver such segments again; a day file is merged again. */
static void remove_unfinished(struct kp_meter_store *m)
{
    char base[4096], sub[4400];
    snprintf(sub, sizeof(sub), "%s/rollups", m->dir);
    remove_tmp_in(sub);
    snprintf(base, sizeof(base), "%s/segments", m->dir);
    DIR *d = kp_opendir(base);
    if (d == NULL)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!node_name_ok(e->d_name))
            continue;
        snprintf(sub, sizeof(sub), "%s/%s", base, e->d_name);
        remove_tmp_in(sub);
    }
    closedir(d);
}

static int find_pending(struct kp_meter_store *m)
{
    struct scan all = {0};
    struct kp_rollup_day *memo = NULL;
    int64_t memo_day = INT64_MIN;
    int rc = each_segment(m, scan_add, &all);
    /* In time order, so that each day file is read about once. */
    if (all.n > 1)
        qsort(all.v, all.n, sizeof(*all.v), cmp_seg_first);
    for (size_t i = 0; i < all.n && rc == KP_OK; i++) {
        struct seg_ref *r = &all.v[i];
        bool missing = false;
        for (int64_t day = kp_day_floor_ms(r->first_ms); r->events > 0 && day <= r->last_ms;
             day += DAY_MS) {
            /* The segment set is in every decoding; the day rows are the
             * smallest level to decode with it. Not cached: a meter that
             * starts with many days must not hold them all. */
            if (day != memo_day) {
                kp_rollup_day_free(memo);
                memo = NULL;
                memo_day = day;
                day_load(m, day, KP_ROLLUP_LEVEL_BIT(KP_ROLLUP_DAY), &memo);
            }
            missing |= memo == NULL || !kp_rollup_day_has_segment(memo, r->node, r->seq);
        }
        if (missing)
            rc = pending_add(m, r);
        m->st.segments++;
    }
    kp_rollup_day_free(memo);
    kp_free(all.v);
    return rc;
}

struct sweep {
    struct kp_meter_store *m;
    int64_t cutoff;
    uint64_t deleted, bytes;
};

static int sweep_one(void *arg, const struct seg_ref *r)
{
    struct sweep *s = arg;
    char path[4096];
    seg_path(s->m, r->node, r->seq, path, sizeof(path));
    struct stat st;
    if (stat(path, &st) != 0)
        return KP_OK;
    s->bytes += (uint64_t)st.st_size;
    /* Recent files may still be on their way into the pending list. */
    if (r->last_ms >= s->cutoff || (int64_t)st.st_mtime * 1000 > kp_now_unix_ms() - 3600000)
        return KP_OK;
    pthread_mutex_lock(&s->m->mu);
    bool pending = false;
    for (size_t i = 0; i < s->m->n_pending && !pending; i++)
        pending = s->m->pending[i].seq == r->seq && strcmp(s->m->pending[i].node, r->node) == 0;
    pthread_mutex_unlock(&s->m->mu);
    if (!pending && unlink(path) == 0) {
        s->deleted++;
        s->bytes -= (uint64_t)st.st_size;
    }
    return KP_OK;
}

/* Delete raw segments past retention (their rollups stay) and count what
 * remains. */
static void sweep(struct kp_meter_store *m)
{
    struct sweep s = {m, kp_now_unix_ms() - m->opt.raw_retention_ms, 0, 0};
    struct scan count = {0};
    each_segment(m, sweep_one, &s);
    each_segment(m, scan_add, &count);
    kp_free(count.v);
    pthread_mutex_lock(&m->mu);
    m->st.segments = count.n;
    m->st.raw_bytes = s.bytes;
    pthread_mutex_unlock(&m->mu);
    if (s.deleted > 0)
        kp_info("meter",
                "deleted %" PRIu64 " raw segments older than the retention of %" PRId64
                " days (their rollups stay)",
                s.deleted, (int64_t)(m->opt.raw_retention_ms / DAY_MS));
}

static void *compactor(void *arg)
{
    struct kp_meter_store *m = arg;
    kp_thread_name("kp-compact", -1);
    int64_t next_sweep = 0;
    pthread_mutex_lock(&m->mu);
    while (!m->stop) {
        int64_t now = kp_now_unix_ms();
        if (now >= next_sweep) {
            pthread_mutex_unlock(&m->mu);
            sweep(m);
            pthread_mutex_lock(&m->mu);
            next_sweep = now + SWEEP_EVERY;
            continue;
        }
        if (m->n_pending == 0) {
            int64_t until = next_sweep;
            struct timespec ts = {.tv_sec = until / 1000, .tv_nsec = (until % 1000) * 1000000};
            pthread_cond_timedwait(&m->wake, &m->mu, &ts);
            continue;
        }
        /* Let more segments arrive so that a day is written once for many
         * (a flush request does not wait). */
        int64_t due = m->first_pending_ms + m->opt.compact_delay_ms;
        if (m->flush_gen <= m->done_gen && now < due) {
            struct timespec ts = {.tv_sec = due / 1000, .tv_nsec = (due % 1000) * 1000000};
            pthread_cond_timedwait(&m->wake, &m->mu, &ts);
            continue;
        }
        struct seg_ref *batch = m->pending;
        size_t n = m->n_pending;
        uint64_t gen = m->put_gen;
        m->pending = NULL;
        m->n_pending = m->cap_pending = 0;
        pthread_mutex_unlock(&m->mu);
        int rc = compact(m, batch, n);
        pthread_mutex_lock(&m->mu);
        if (rc != KP_OK) {
            /* Put them back and try again a little later. */
            for (size_t i = 0; i < n; i++)
                pending_add(m, &batch[i]);
            kp_free(batch);
            struct timespec ts = {.tv_sec = now / 1000 + 1, .tv_nsec = (now % 1000) * 1000000};
            pthread_cond_timedwait(&m->wake, &m->mu, &ts);
            continue;
        }
        kp_free(batch);
        m->st.pending = m->n_pending;
        m->done_gen = gen;
        pthread_cond_broadcast(&m->done);
    }
    pthread_cond_broadcast(&m->done);
    pthread_mutex_unlock(&m->mu);
    return NULL;
}

/* --- API ----------------------------------------------------------------------- */

int kp_meter_store_open(const struct kp_meter_store_options *opt, struct kp_meter_store **out,
                        char *errmsg, size_t errlen)
{
    *out = NULL;
    struct kp_meter_store *m = kp_calloc(1, sizeof(*m));
    if (m == NULL)
        return KP_ENOMEM;
    m->opt = *opt;
    if (m->opt.raw_retention_ms <= 0)
        m->opt.raw_retention_ms = 30 * DAY_MS;
    if (m->opt.compact_delay_ms <= 0)
        m->opt.compact_delay_ms = 200;
    if (m->opt.max_segment_bytes == 0)
        m->opt.max_segment_bytes = (size_t)64 << 20;
    snprintf(m->dir, sizeof(m->dir), "%s", opt->dir);
    m->opt.dir = m->dir;
    pthread_mutex_init(&m->mu, NULL);
    pthread_mutex_init(&m->days_mu, NULL);
    pthread_cond_init(&m->wake, NULL);
    pthread_cond_init(&m->done, NULL);
    char sub[4096];
    snprintf(sub, sizeof(sub), "%s/segments", m->dir);
    int rc = kp_mkdir_p(sub, 0700, errmsg, errlen);
    snprintf(sub, sizeof(sub), "%s/rollups", m->dir);
    if (rc == KP_OK)
        rc = kp_mkdir_p(sub, 0700, errmsg, errlen);
    if (rc == KP_OK) {
        remove_unfinished(m);
        rc = find_pending(m);
        if (rc != KP_OK)
            snprintf(errmsg, errlen, "%s: cannot scan the stored segments: %s", m->dir,
                     kp_err_msg(rc));
    }
    m->put_gen = m->n_pending;
    m->first_pending_ms = kp_now_unix_ms();
    if (rc == KP_OK && pthread_create(&m->thread, NULL, compactor, m) != 0) {
        snprintf(errmsg, errlen, "meter: cannot start the compactor thread");
        rc = KP_ENOMEM;
    }
    if (rc != KP_OK) {
        kp_meter_store_close(m);
        return rc;
    }
    m->thread_started = true;
    if (m->n_pending > 0)
        kp_info("meter", "%s: %zu stored segments to compact", m->dir, m->n_pending);
    *out = m;
    return KP_OK;
}

void kp_meter_store_close(struct kp_meter_store *m)
{
    if (m == NULL)
        return;
    if (m->thread_started) {
        pthread_mutex_lock(&m->mu);
        m->stop = true;
        pthread_cond_signal(&m->wake);
        pthread_mutex_unlock(&m->mu);
        pthread_join(m->thread, NULL);
    }
    for (int i = 0; i < CACHE_DAYS; i++)
        kp_rollup_day_free(m->cache[i].d);
    kp_free(m->pending);
    pthread_cond_destroy(&m->done);
    pthread_cond_destroy(&m->wake);
    pthread_mutex_destroy(&m->days_mu);
    pthread_mutex_destroy(&m->mu);
    kp_free(m);
}

/* Same bytes as the stored file? */
static int same_file(const char *path, const void *buf, size_t len, bool *same, char *errmsg,
                     size_t errlen)
{
    struct kp_buf b;
    kp_buf_init(&b);
    int rc = kp_segment_file_read(path, len + 1, &b, errmsg, errlen);
    *same = rc == KP_OK && b.len == len && memcmp(b.data, buf, len) == 0;
    if (rc == KP_ETOOBIG)
        rc = KP_OK;
    kp_buf_free(&b);
    return rc;
}

int kp_meter_store_put(struct kp_meter_store *m, const void *buf, size_t len, bool *duplicate,
                       char *errmsg, size_t errlen)
{
    *duplicate = false;
    if (len > m->opt.max_segment_bytes)
        return kp_errf(errmsg, errlen, KP_ETOOBIG, "segment of %zu bytes exceeds the limit of %zu",
                       len, m->opt.max_segment_bytes);
    struct kp_segment_summary sum;
    int rc = kp_segment_validate(buf, len, &sum);
    if (rc == KP_ENOMEM)
        return rc;
    if (rc != KP_OK) {
        pthread_mutex_lock(&m->mu);
        m->st.rejected++;
        pthread_mutex_unlock(&m->mu);
        return kp_errf(errmsg, errlen, KP_EPARSE, "invalid segment: offset %zu: %s", sum.err_offset,
                       sum.errmsg);
    }
    if (!node_name_ok(sum.header.node))
        return kp_errf(errmsg, errlen, KP_EPARSE,
                       "segment node name must be letters, digits, '.', '-' and '_'");
    char dir[4096], path[4200], tmp[4300];
    snprintf(dir, sizeof(dir), "%s/segments/%s", m->dir, sum.header.node);
    seg_path(m, sum.header.node, sum.header.seq, path, sizeof(path));
    rc = kp_mkdir_p(dir, 0700, errmsg, errlen);
    if (rc != KP_OK)
        return rc;
    /* A private temporary name, then link(): never replaces a stored
     * segment, so two deliveries racing cannot overwrite each other. */
    static _Atomic uint64_t counter;
    snprintf(tmp, sizeof(tmp), "%s.%d.%" PRIu64 ".tmp", path, (int)getpid(), ++counter);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0)
        return kp_errf(errmsg, errlen, KP_EIO, "%s: %s", tmp, strerror(errno));
    if (kp_write_all(fd, buf, len) != KP_OK) {
        /* The disk is full: nothing is claimed, the sender tries again. */
        rc = kp_errf(errmsg, errlen, KP_EIO, "%s: %s", tmp, strerror(errno));
        close(fd);
        unlink(tmp);
        return rc;
    }
    /* A failed fsync is not retried (durable.h): an answer the sender
     * took for "stored" would be a lie, and so would the "duplicate" a
     * later delivery of the same segment would get. */
    if (fsync(fd) != 0)
        kp_meter__fsync_failed("meter", tmp, "fsync of a received segment");
    close(fd);
    bool exists = link(tmp, path) != 0;
    int link_errno = errno;
    unlink(tmp);
    if (exists && link_errno != EEXIST)
        return kp_errf(errmsg, errlen, KP_EIO, "%s: %s", path, strerror(link_errno));
    if (exists) {
        bool same = false;
        rc = same_file(path, buf, len, &same, errmsg, errlen);
        pthread_mutex_lock(&m->mu);
        if (rc == KP_OK && same)
            m->st.duplicates++;
        else if (rc == KP_OK)
            m->st.rejected++;
        pthread_mutex_unlock(&m->mu);
        if (rc != KP_OK)
            return rc;
        if (!same)
            return kp_errf(errmsg, errlen, KP_ECONFLICT,
                           "segment %s/%" PRIu64 " is already stored with different content",
                           sum.header.node, sum.header.seq);
        *duplicate = true;
        return KP_OK;
    }
    if (kp_fsync_dir(dir, 1, errmsg, errlen) != KP_OK)
        kp_meter__fsync_failed("meter", dir, "fsync of the directory");
    struct seg_ref r = {.seq = sum.header.seq,
                        .first_ms = sum.min_time_ms,
                        .last_ms = sum.max_time_ms,
                        .events = sum.events};
    snprintf(r.node, sizeof(r.node), "%s", sum.header.node);
    pthread_mutex_lock(&m->mu);
    /* Out of memory here leaves it stored and uncompacted until the next
     * open finds it. */
    if (m->n_pending == 0)
        m->first_pending_ms = kp_now_unix_ms();
    if (pending_add(m, &r) == KP_OK)
        m->put_gen++;
    m->st.stored++;
    m->st.segments++;
    m->st.raw_bytes += len;
    pthread_cond_signal(&m->wake);
    pthread_mutex_unlock(&m->mu);
    return KP_OK;
}

int kp_meter_store_flush(struct kp_meter_store *m)
{
    pthread_mutex_lock(&m->mu);
    uint64_t target = m->put_gen;
    if (target > m->flush_gen)
        m->flush_gen = target;
    pthread_cond_signal(&m->wake);
    while (m->done_gen < target && !m->stop)
        pthread_cond_wait(&m->done, &m->mu);
    int rc = m->done_gen >= target ? KP_OK : KP_ESHUTDOWN;
    pthread_mutex_unlock(&m->mu);
    return rc;
}

void kp_meter_store_get_stats(struct kp_meter_store *m, struct kp_meter_store_stats *st)
{
    pthread_mutex_lock(&m->mu);
    *st = m->st;
    pthread_mutex_unlock(&m->mu);
}

int kp_meter_store_query(struct kp_meter_store *m, const struct kp_usage_query *q,
                         struct kp_usage_result **out, char *errmsg, size_t errlen)
{
    struct kp_usage_result *res = NULL;
    int rc = kp_usage_result_new(q, &res);
    if (rc != KP_OK)
        return kp_errf(errmsg, errlen, rc, "%s", kp_err_msg(rc));
    for (int64_t day = kp_day_floor_ms(q->from_ms); day < q->to_ms && rc == KP_OK; day += DAY_MS) {
        pthread_mutex_lock(&m->days_mu);
        struct kp_rollup_day *d = day_cached(m, day);
        if (d != NULL)
            rc = kp_usage_result_add_day(res, d);
        pthread_mutex_unlock(&m->days_mu);
        if (d != NULL)
            continue;
        /* Not cached: decode only the levels this query uses, and do not
         * keep them (a long range would evict the days being compacted). */
        rc = day_load(m, day, kp_usage_query_levels(q, day), &d);
        if (rc == KP_OK)
            rc = kp_usage_result_add_day(res, d);
        else if (rc == KP_ENOENT)
            rc = KP_OK;
        kp_rollup_day_free(d);
    }
    if (rc != KP_OK) {
        kp_usage_result_free(res);
        if (rc == KP_ETOOBIG)
            return kp_errf(errmsg, errlen, rc,
                           "more than 100000 rows; narrow the range, use a coarser granularity "
                           "or group by less");
        return kp_errf(errmsg, errlen, rc, "cannot read the rollups: %s", kp_err_msg(rc));
    }
    *out = res;
    return KP_OK;
}

/* --- event search -------------------------------------------------------------- */

static bool match(const char *want, const char *have)
{
    return want == NULL || want[0] == '\0' || strcmp(want, have) == 0;
}

static bool event_matches(const struct kp_usage_event_filter *f, const struct kp_usage_event *e)
{
    return e->time_ms >= f->from_ms && e->time_ms < f->to_ms &&
           match(f->request_id, e->request_id) && match(f->key, e->key_id) &&
           match(f->tenant, e->tenant) && match(f->project, e->project) &&
           match(f->error_class, e->error_class) && match(f->kind, e->kind) &&
           match(f->trace_id, e->trace_id) &&
           (match(f->model, e->model_served) || match(f->model, e->model_requested));
}

struct search {
    struct kp_meter_store *m;
    const struct kp_usage_event_filter *f;
    json_t *found;
    uint64_t scanned;
    bool full;
    struct kp_buf buf;
};

static int search_one(void *arg, const struct seg_ref *r)
{
    struct search *s = arg;
    if (s->full || r->events == 0 || r->last_ms < s->f->from_ms || r->first_ms >= s->f->to_ms)
        return KP_OK;
    char path[4096], errmsg[256];
    seg_path(s->m, r->node, r->seq, path, sizeof(path));
    if (kp_segment_file_read(path, s->m->opt.max_segment_bytes, &s->buf, errmsg, sizeof(errmsg)) !=
        KP_OK)
        return KP_OK; /* deleted by retention meanwhile */
    s->scanned++;
    struct kp_segment_reader rd;
    struct kp_usage_event ev;
    int rc = kp_segment_reader_init(&rd, s->buf.data, s->buf.len);
    while (rc == KP_OK && kp_segment_reader_next(&rd, &ev)) {
        if (!event_matches(s->f, &ev))
            continue;
        json_t *j = kp_usage_event_to_json(&ev);
        if (j == NULL || json_array_append_new(s->found, j) != 0) {
            rc = KP_ENOMEM;
            break;
        }
        if (json_array_size(s->found) >= SEARCH_MAX) {
            s->full = true;
            break;
        }
    }
    kp_segment_reader_close(&rd);
    return rc == KP_ENOMEM ? rc : KP_OK;
}

static int by_time_then_id(const void *a, const void *b)
{
    json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
    json_int_t tx = json_integer_value(json_object_get(x, "time_ms"));
    json_int_t ty = json_integer_value(json_object_get(y, "time_ms"));
    if (tx != ty)
        return tx < ty ? -1 : 1;
    return strcmp(json_string_value(json_object_get(x, "request_id")),
                  json_string_value(json_object_get(y, "request_id")));
}

int kp_meter_store_events(struct kp_meter_store *m, const struct kp_usage_event_filter *f,
                          json_t **out, char *errmsg, size_t errlen)
{
    struct search s = {.m = m, .f = f, .found = json_array()};
    kp_buf_init(&s.buf);
    int rc = s.found ? each_segment(m, search_one, &s) : KP_ENOMEM;
    kp_buf_free(&s.buf);
    size_t n = s.found ? json_array_size(s.found) : 0;
    json_t **v = rc == KP_OK ? kp_malloc((n ? n : 1) * sizeof(*v)) : NULL;
    json_t *events = json_array();
    if (rc == KP_OK && (v == NULL || events == NULL))
        rc = KP_ENOMEM;
    if (rc == KP_OK) {
        for (size_t i = 0; i < n; i++)
            v[i] = json_array_get(s.found, i);
        qsort(v, n, sizeof(*v), by_time_then_id);
        for (size_t i = 0; i < n && i < f->limit; i++)
            json_array_append(events, v[i]);
        *out = json_pack("{s:o,s:b,s:I}", "events", events, "truncated", s.full || n > f->limit,
                         "segments_scanned", (json_int_t)s.scanned);
        events = NULL;
        if (*out == NULL)
            rc = KP_ENOMEM;
    }
    kp_free(v);
    json_decref(events);
    json_decref(s.found);
    if (rc != KP_OK)
        return kp_errf(errmsg, errlen, rc, "event search failed: %s", kp_err_msg(rc));
    return KP_OK;
}

/* The router's spool (spool.h, docs/meter.md "Spool").
 *
 * Files in the spool directory:
 *   NNNNNNNNNNNNNNNNNNNN.open   the open segment (at most one)
 *   NNNNNNNNNNNNNNNNNNNN.kpseg  sealed, waiting to be shipped
 *   NNNNNNNNNNNNNNNNNNNN.acks   the shipper's record of meters that have it
 *   last_seq                    the highest sequence ever used
 *   quarantine/                 segments that failed validation, with .why notes
 *
 * Threads: any thread appends (mutex held for a memcpy into the queue); the
 * spool thread owns the segment writer and every file operation on the open
 * segment; the shipper lists, removes and quarantines sealed segments (the
 * sealed list is under the mutex). */
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

/* zstd level of the spool's segments (open_segment). */
#define SPOOL_ZSTD_LEVEL 1

#define SEQ_FMT      "%020" PRIu64
#define WARN_PERCENT 80

struct kp_spool {
    struct kp_spool_options opt;
    char dir[3000];
    char node[KP_SEGMENT_NODE_MAX + 1];
    pthread_t thread;
    bool thread_started;

    pthread_mutex_t mu;
    pthread_cond_t wake; /* the spool thread: work, sync request, stop */
    pthread_cond_t done; /* sync waiters */
    /* The queue: records of [int64 time][uint32 len][len bytes]. */
    struct kp_buf queue;
    uint64_t queue_events;
    uint64_t want_gen, done_gen; /* sync requests and what was done */
    uint64_t seal_gen;           /* the latest sync request that asked to seal */
    bool stop;
    uint64_t *sealed_seqs; /* sorted ascending */
    size_t n_sealed, cap_sealed;
    uint64_t sealed_bytes; /* sum of their sizes */
    uint64_t open_bytes;   /* committed length of the open segment */
    struct kp_spool_stats st;
    bool warned_full;

    /* The spool thread's own. */
    struct kp_segment_writer w;
    bool have_open;
    int fd;
    uint64_t seq, next_seq;
    uint64_t open_deadline_us; /* seal by age at this monotonic time (a wall
                                  clock stepped back must not hold it) */
    uint64_t last_commit_us;   /* monotonic */
};

static void seg_name(char *out, size_t len, const char *dir, uint64_t seq, const char *ext)
{
    snprintf(out, len, "%s/" SEQ_FMT ".%s", dir, seq, ext);
}

/* --- the sealed list (mutex held) ----------------------------------------------- */

static int sealed_add(struct kp_spool *s, uint64_t seq, uint64_t bytes)
{
    if (s->n_sealed == s->cap_sealed) {
        size_t cap = s->cap_sealed ? s->cap_sealed * 2 : 64;
        uint64_t *p = kp_realloc(s->sealed_seqs, cap * sizeof(*p));
        if (p == NULL)
            return KP_ENOMEM;
        s->sealed_seqs = p;
        s->cap_sealed = cap;
    }
    size_t i = s->n_sealed;
    while (i > 0 && s->sealed_seqs[i - 1] > seq) {
        s->sealed_seqs[i] = s->sealed_seqs[i - 1];
        i--;
    }
    s->sealed_seqs[i] = seq;
    s->n_sealed++;
    s->sealed_bytes += bytes;
    return KP_OK;
}

static bool sealed_drop(struct kp_spool *s, uint64_t seq)
{
    for (size_t i = 0; i < s->n_sealed; i++) {
        if (s->sealed_seqs[i] != seq)
            continue;
        memmove(&s->sealed_seqs[i], &s->sealed_seqs[i + 1],
                (s->n_sealed - i - 1) * sizeof(*s->sealed_seqs));
        s->n_sealed--;
        return true;
    }
    return false;
}

static void update_fill(struct kp_spool *s)
{
    uint64_t bytes = s->sealed_bytes + s->open_bytes;
    s->st.bytes = bytes;
    s->st.waiting = s->n_sealed;
    s->st.full = bytes >= s->opt.max_bytes;
    if (!s->warned_full && bytes >= s->opt.max_bytes / 100 * WARN_PERCENT) {
        s->warned_full = true;
        kp_warn("spool",
                "spool %s holds %" PRIu64 " bytes, %" PRIu64 "%% of its cap of %" PRIu64
                " (are the meters reachable?); at the cap it %s",
                s->dir, bytes, bytes * 100 / s->opt.max_bytes, s->opt.max_bytes,
                s->opt.refuse_when_full ? "refuses calls with 503" : "drops usage events");
    } else if (s->warned_full && bytes < s->opt.max_bytes / 100 * (WARN_PERCENT - 10)) {
        s->warned_full = false;
        kp_info("spool", "spool %s is below %d%% of its cap again", s->dir, WARN_PERCENT - 10);
    }
}

/* --- recovery -------------------------------------------------------------------- */

static int move_to_quarantine(struct kp_spool *s, const char *path, const char *base,
                              const char *why)
{
    char dst[4096], note[4200];
    snprintf(dst, sizeof(dst), "%s/quarantine/%s", s->dir, base);
    snprintf(note, sizeof(note), "%s.why", dst);
    if (rename(path, dst) != 0) {
        kp_error("spool", "cannot quarantine %s: %s", path, strerror(errno));
        return KP_EIO;
    }
    char errmsg[256], text[600];
    int n = snprintf(text, sizeof(text), "%s\n", why);
    if (kp_file_replace(note, text, (size_t)n, 0644, errmsg, sizeof(errmsg)) != KP_OK)
        kp_warn("spool", "%s", errmsg);
    kp_error("spool", "segment %s is damaged (%s): moved to %s; its events are not shipped", path,
             why, dst);
    s->st.quarantined++;
    return KP_OK;
}

/* Rewrite the events of the valid prefix of an open segment left by a
 * crash as a sealed segment with the same sequence. */
static int reseal(struct kp_spool *s, const char *path, uint64_t seq, const struct kp_buf *data,
                  size_t valid_len)
{
    char errmsg[512], dst[4096];
    struct kp_segment_reader r;
    struct kp_segment_writer w;
    struct kp_usage_event ev;
    int rc = kp_segment_reader_init(&r, data->data, valid_len);
    if (rc != KP_OK) {
        kp_segment_reader_close(&r);
        return rc;
    }
    struct kp_segment_writer_options wo = {.node = r.header.node,
                                           .seq = seq,
                                           .created_ms = r.header.created_ms,
                                           .zstd_level = SPOOL_ZSTD_LEVEL};
    rc = kp_segment_writer_init(&w, &wo);
    while (rc == KP_OK && kp_segment_reader_next(&r, &ev))
        rc = kp_segment_writer_add(&w, &ev);
    if (rc == KP_OK && r.err != KP_OK)
        rc = r.err;
    uint64_t events = r.events;
    kp_segment_reader_close(&r);
    if (rc == KP_OK)
        rc = kp_segment_writer_seal(&w);
    if (rc == KP_OK && events == 0) {
        kp_segment_writer_close(&w);
        unlink(path);
        return KP_OK;
    }
    seg_name(dst, sizeof(dst), s->dir, seq, "kpseg");
    if (rc == KP_OK)
        rc = kp_file_replace(dst, w.out.data, w.out.len, 0644, errmsg, sizeof(errmsg));
    uint64_t size = w.out.len;
    kp_segment_writer_close(&w);
    if (rc != KP_OK)
        return rc;
    unlink(path);
    if (data->len > valid_len)
        kp_warn("spool",
                "%s: cut a torn tail of %zu bytes (a crash during a write); sealed its %" PRIu64
                " whole events as " SEQ_FMT ".kpseg",
                path, data->len - valid_len, events, seq);
    return sealed_add(s, seq, size);
}

static bool parse_seq(const char *name, const char *ext, uint64_t *seq)
{
    size_t n = strlen(name), el = strlen(ext);
    if (n != 20 + 1 + el || name[20] != '.' || strcmp(name + 21, ext) != 0)
        return false;
    uint64_t v = 0;
    for (int i = 0; i < 20; i++) {
        if (name[i] < '0' || name[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(name[i] - '0');
    }
    *seq = v;
    return true;
}

static int recover_one(struct kp_spool *s, const char *name, uint64_t *max_seq)
{
    char path[4096], errmsg[512];
    uint64_t seq = 0;
    bool open_seg = parse_seq(name, "open", &seq);
    bool sealed_seg = !open_seg && parse_seq(name, "kpseg", &seq);
    snprintf(path, sizeof(path), "%s/%s", s->dir, name);
    if (parse_seq(name, "acks", &seq) || strcmp(name, "last_seq") == 0)
        return KP_OK;
    if (!open_seg && !sealed_seg) {
        size_t n = strlen(name);
        if (n > 4 && strcmp(name + n - 4, ".tmp") == 0)
            unlink(path); /* an interrupted kp_file_replace */
        return KP_OK;
    }
    if (seq > *max_seq)
        *max_seq = seq;
    struct kp_buf data;
    kp_buf_init(&data);
    int rc = kp_segment_file_read(path, 1u << 30, &data, errmsg, sizeof(errmsg));
    if (rc != KP_OK) {
        kp_buf_free(&data);
        return rc == KP_ETOOBIG ? move_to_quarantine(s, path, name, "larger than 1 GiB") : rc;
    }
    struct kp_segment_summary sum;
    rc = kp_segment_validate(data.data, data.len, &sum);
    if (rc == KP_OK && open_seg) {
        /* Sealed, but the crash came before the rename. */
        char dst[4096];
        seg_name(dst, sizeof(dst), s->dir, seq, "kpseg");
        rc = rename(path, dst) == 0 ? sealed_add(s, seq, data.len) : KP_EIO;
    } else if (rc == KP_OK) {
        rc = sealed_add(s, seq, data.len);
    } else if (open_seg) {
        size_t valid = 0;
        if (kp_segment_scan_valid_prefix(data.data, data.len, &valid) == KP_OK && valid > 0)
            rc = reseal(s, path, seq, &data, valid);
        else if (data.len < KP_SEGMENT_HEADER_SIZE)
            rc = unlink(path) == 0 ? KP_OK : KP_EIO; /* the header never made it: no events */
        else
            rc = move_to_quarantine(s, path, name, "its header is damaged");
    } else {
        char why[400];
        snprintf(why, sizeof(why), "offset %zu: %s", sum.err_offset, sum.errmsg);
        rc = move_to_quarantine(s, path, name, why);
    }
    kp_buf_free(&data);
    return rc;
}

static int read_last_seq(struct kp_spool *s, uint64_t *out)
{
    char path[4096], text[32] = "";
    snprintf(path, sizeof(path), "%s/last_seq", s->dir);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return errno == ENOENT ? KP_OK : KP_EIO;
    bool ok = fgets(text, sizeof(text), f) != NULL;
    fclose(f);
    char *end = NULL;
    unsigned long long v = ok ? strtoull(text, &end, 10) : 0;
    if (!ok || end == text) {
        kp_warn("spool", "%s is unreadable; sequence numbers continue from the files present",
                path);
        return KP_OK;
    }
    if (v > *out)
        *out = v;
    return KP_OK;
}

static int recover(struct kp_spool *s, char *errmsg, size_t errlen)
{
    char q[4096];
    snprintf(q, sizeof(q), "%s/quarantine", s->dir);
    int rc = kp_mkdir_p(q, 0700, errmsg, errlen);
    if (rc != KP_OK)
        return rc;
    uint64_t max_seq = 0;
    DIR *d = kp_opendir(s->dir);
    if (d == NULL) {
        snprintf(errmsg, errlen, "%s: %s", s->dir, strerror(errno));
        return KP_EIO;
    }
    /* Names first: recovery renames files in the directory it lists. */
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    rc = KP_OK;
    while (rc == KP_OK && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            char **p = kp_realloc(names, cap * sizeof(*p));
            if (p == NULL) {
                rc = KP_ENOMEM;
                break;
            }
            names = p;
        }
        names[n] = kp_strdup(e->d_name);
        rc = names[n] ? KP_OK : KP_ENOMEM;
        n++;
    }
    closedir(d);
    for (size_t i = 0; i < n && rc == KP_OK; i++) {
        rc = recover_one(s, names[i], &max_seq);
        if (rc != KP_OK)
            snprintf(errmsg, errlen, "%s/%s: cannot recover: %s", s->dir, names[i], kp_err_msg(rc));
    }
    for (size_t i = 0; i < n; i++)
        kp_free(names[i]);
    kp_free(names);
    /* Quarantined sequences stay used: shipping the same (node, seq) twice
     * with different contents would be refused by the meters. */
    if (rc == KP_OK && (d = kp_opendir(q)) != NULL) {
        uint64_t seq = 0;
        while ((e = readdir(d)) != NULL)
            if ((parse_seq(e->d_name, "kpseg", &seq) || parse_seq(e->d_name, "open", &seq)) &&
                seq > max_seq)
                max_seq = seq;
        closedir(d);
    }
    if (rc == KP_OK)
        rc = read_last_seq(s, &max_seq);
    s->next_seq = max_seq + 1;
    return rc;
}

/* --- the spool thread ----------------------------------------------------------- */

/* After a failed fsync the kernel may have dropped the dirty pages:
 * retrying would report data durable that is not. Stop the node
 * (durable.h). */
_Noreturn static void fatal_io(struct kp_spool *s, const char *what)
{
    kp_meter__fsync_failed("spool", s->dir, what);
}

/* DATA_DIR/spool/last_seq = @seq, replaced atomically. A write that fails
 * (disk full) is an error the spool retries; a failed fsync is fatal, as
 * for a segment: the node must not go on answering calls whose events it
 * cannot make durable. */
static int write_last_seq(struct kp_spool *s, uint64_t seq)
{
    char path[4096], tmp[4200], errmsg[512], text[32];
    int n = snprintf(text, sizeof(text), "%" PRIu64 "\n", seq);
    snprintf(path, sizeof(path), "%s/last_seq", s->dir);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || kp_write_all(fd, text, (size_t)n) != KP_OK) {
        kp_error("spool", "%s: %s", tmp, strerror(errno));
        if (fd >= 0) {
            close(fd);
            unlink(tmp);
        }
        return KP_EIO;
    }
    if (fsync(fd) != 0)
        fatal_io(s, "fsync of last_seq");
    close(fd);
    if (rename(tmp, path) != 0) {
        kp_error("spool", "%s: rename: %s", path, strerror(errno));
        unlink(tmp);
        return KP_EIO;
    }
    if (kp_fsync_dir(s->dir, 1, errmsg, sizeof(errmsg)) != KP_OK)
        fatal_io(s, "fsync of the directory");
    return KP_OK;
}

static int open_segment(struct kp_spool *s, int64_t now_ms)
{
    char path[4096], errmsg[512];
    uint64_t seq = s->next_seq;
    if (write_last_seq(s, seq) != KP_OK)
        return KP_EIO;
    /* zstd's fastest level: a router compresses on the request path's
     * CPU; the meter's compaction makes the files that are kept. */
    struct kp_segment_writer_options wo = {
        .node = s->node, .seq = seq, .created_ms = now_ms, .zstd_level = SPOOL_ZSTD_LEVEL};
    int rc = kp_segment_writer_init(&s->w, &wo);
    if (rc != KP_OK)
        return rc;
    seg_name(path, sizeof(path), s->dir, seq, "open");
    s->fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (s->fd < 0) {
        kp_error("spool", "%s: %s", path, strerror(errno));
        kp_segment_writer_close(&s->w);
        return KP_EIO;
    }
    if (kp_fsync_dir(s->dir, 1, errmsg, sizeof(errmsg)) != KP_OK)
        fatal_io(s, "fsync of the directory");
    s->seq = seq;
    s->next_seq = seq + 1;
    s->have_open = true;
    s->open_deadline_us = kp_now_mono_us() + (uint64_t)s->opt.seal_age_ms * 1000;
    return KP_OK;
}

/* Write what the writer has produced and make it durable. On a write
 * error (disk full) the file is cut back and the bytes stay in the writer
 * to be written by the next attempt. */
static int write_out(struct kp_spool *s)
{
    size_t len = s->w.out.len;
    if (len == 0)
        return KP_OK;
    if (kp_pwrite_all(s->fd, s->w.out.data, len, (off_t)s->w.out_offset) != KP_OK) {
        int err = errno;
        if (ftruncate(s->fd, (off_t)s->w.out_offset) != 0)
            fatal_io(s, "truncate after a failed write");
        errno = err;
        return KP_EIO;
    }
    if (fdatasync(s->fd) != 0)
        fatal_io(s, "fdatasync");
    kp_segment_writer_consume(&s->w, len);
    return KP_OK;
}

static int seal_segment(struct kp_spool *s)
{
    char from[4096], to[4096], errmsg[512];
    int rc = kp_segment_writer_seal(&s->w);
    if (rc == KP_OK)
        rc = write_out(s);
    if (rc != KP_OK)
        return rc;
    if (kp_pwrite_all(s->fd, s->w.sealed_header, KP_SEGMENT_HEADER_SIZE, 0) != KP_OK ||
        fdatasync(s->fd) != 0)
        fatal_io(s, "rewriting the header of a sealed segment");
    uint64_t size = s->w.out_offset;
    close(s->fd);
    s->fd = -1;
    kp_segment_writer_close(&s->w);
    s->have_open = false;
    seg_name(from, sizeof(from), s->dir, s->seq, "open");
    seg_name(to, sizeof(to), s->dir, s->seq, "kpseg");
    if (rename(from, to) != 0)
        fatal_io(s, "renaming a sealed segment");
    if (kp_fsync_dir(s->dir, 1, errmsg, sizeof(errmsg)) != KP_OK)
        fatal_io(s, "fsync of the directory");
    pthread_mutex_lock(&s->mu);
    s->open_bytes = 0;
    rc = sealed_add(s, s->seq, size);
    s->st.sealed++;
    update_fill(s);
    pthread_mutex_unlock(&s->mu);
    if (rc != KP_OK)
        kp_error("spool", "out of memory listing " SEQ_FMT ".kpseg; it ships after a restart",
                 s->seq);
    return KP_OK;
}

/* Write the batch (queue records) as one frame of the open segment. */
static int commit(struct kp_spool *s, const struct kp_buf *batch, uint64_t events)
{
    int rc = KP_OK;
    if (events > 0 && !s->have_open)
        rc = open_segment(s, kp_now_unix_ms());
    for (size_t off = 0; rc == KP_OK && off < batch->len;) {
        int64_t t = (int64_t)kp_get_le((const uint8_t *)batch->data + off, 8);
        uint32_t len = (uint32_t)kp_get_le((const uint8_t *)batch->data + off + 8, 4);
        rc = kp_segment_writer_add_encoded(&s->w, batch->data + off + 12, len, t);
        off += 12 + (size_t)len;
    }
    if (rc == KP_OK && s->have_open)
        rc = kp_segment_writer_flush(&s->w);
    if (rc == KP_OK && s->have_open)
        rc = write_out(s);
    return rc;
}

/* @wake runs on CLOCK_MONOTONIC (kp_spool_open), as do the deadlines. */
static void wait_until_us(struct kp_spool *s, uint64_t deadline_us)
{
    struct timespec ts = {.tv_sec = (time_t)(deadline_us / 1000000),
                          .tv_nsec = (long)(deadline_us % 1000000) * 1000};
    pthread_cond_timedwait(&s->wake, &s->mu, &ts);
}

static void *spool_thread(void *arg)
{
    struct kp_spool *s = arg;
    kp_thread_name("kp-spool", -1);
    struct kp_buf batch;
    kp_buf_init(&batch);
    bool failing = false;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        uint64_t mono = kp_now_mono_us();
        bool sync_wanted = s->want_gen != s->done_gen;
        bool age_due = s->have_open && mono >= s->open_deadline_us;
        if (s->queue_events == 0 && !sync_wanted && !age_due && !s->stop && !failing) {
            wait_until_us(s, s->have_open ? s->open_deadline_us : mono + 1000000);
            continue;
        }
        /* Group commit: one frame and one fdatasync per interval at most
         * (a sync request or a stop does not wait). After a failed write,
         * retry once a second. */
        int64_t gap_ms = failing ? 1000 : s->opt.commit_interval_ms;
        uint64_t next_us = s->last_commit_us + (uint64_t)gap_ms * 1000;
        if (!sync_wanted && !s->stop && !age_due && mono < next_us) {
            wait_until_us(s, next_us);
            continue;
        }
        struct kp_buf tmp = s->queue;
        s->queue = batch;
        batch = tmp;
        s->queue.len = 0;
        uint64_t events = s->queue_events, gen = s->want_gen;
        bool seal = s->seal_gen > s->done_gen || s->stop;
        s->queue_events = 0;
        pthread_mutex_unlock(&s->mu);

        s->last_commit_us = kp_now_mono_us();
        int rc = commit(s, &batch, events);
        if (rc == KP_OK && s->have_open &&
            (seal || s->w.out_offset >= s->opt.seal_bytes ||
             kp_now_mono_us() >= s->open_deadline_us))
            rc = seal_segment(s);

        pthread_mutex_lock(&s->mu);
        if (rc != KP_OK) {
            /* The events are in the writer (or, when no segment could be
             * opened, back at the head of the queue); nothing is lost. */
            if (!failing)
                kp_error("spool", "%s: cannot write usage events: %s; retrying every second",
                         s->dir, strerror(errno));
            failing = true;
            s->st.write_error = true;
            pthread_cond_broadcast(&s->done); /* kp_spool_sync answers KP_EIO */
            if (!s->have_open && batch.len > 0) {
                if (kp_buf_append(&batch, s->queue.data, s->queue.len) == KP_OK) {
                    struct kp_buf t2 = s->queue;
                    s->queue = batch;
                    batch = t2;
                    s->queue_events += events;
                }
            }
            if (s->stop)
                break;
        } else {
            if (failing)
                kp_info("spool", "%s: writing usage events again", s->dir);
            failing = false;
            s->st.write_error = false;
            s->st.committed += events;
            if (s->have_open)
                s->open_bytes = s->w.out_offset;
            s->done_gen = gen;
            update_fill(s);
            pthread_cond_broadcast(&s->done);
            if (s->stop && s->queue_events == 0)
                break;
        }
        batch.len = 0;
    }
    pthread_cond_broadcast(&s->done);
    pthread_mutex_unlock(&s->mu);
    kp_buf_free(&batch);
    return NULL;
}

/* --- API ----------------------------------------------------------------------- */

int kp_spool_open(const struct kp_spool_options *opt, struct kp_spool **out, char *errmsg,
                  size_t errlen)
{
    *out = NULL;
    if (opt->dir == NULL || opt->node == NULL || strlen(opt->node) == 0 ||
        strlen(opt->node) > KP_SEGMENT_NODE_MAX) {
        snprintf(errmsg, errlen, "spool: a directory and a node name of 1..%d bytes are needed",
                 KP_SEGMENT_NODE_MAX);
        return KP_EINVAL;
    }
    struct kp_spool *s = kp_calloc(1, sizeof(*s));
    if (s == NULL)
        return KP_ENOMEM;
    s->opt = *opt;
    if (s->opt.seal_bytes == 0)
        s->opt.seal_bytes = 4u << 20;
    if (s->opt.seal_age_ms <= 0)
        s->opt.seal_age_ms = 10000;
    if (s->opt.commit_interval_ms <= 0)
        s->opt.commit_interval_ms = 20;
    if (s->opt.max_bytes == 0)
        s->opt.max_bytes = 1u << 30;
    if (s->opt.queue_bytes == 0)
        s->opt.queue_bytes = 8u << 20;
    snprintf(s->dir, sizeof(s->dir), "%s", opt->dir);
    snprintf(s->node, sizeof(s->node), "%s", opt->node);
    s->opt.dir = s->dir;
    s->opt.node = s->node;
    s->st.max_bytes = s->opt.max_bytes;
    s->fd = -1;
    kp_buf_init(&s->queue);
    pthread_mutex_init(&s->mu, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&s->wake, &attr);
    pthread_condattr_destroy(&attr);
    pthread_cond_init(&s->done, NULL);
    int rc = kp_mkdir_p(s->dir, 0700, errmsg, errlen);
    if (rc == KP_OK)
        rc = recover(s, errmsg, errlen);
    if (rc == KP_OK) {
        update_fill(s);
        if (pthread_create(&s->thread, NULL, spool_thread, s) != 0) {
            snprintf(errmsg, errlen, "spool: cannot start its thread");
            rc = KP_ENOMEM;
        } else {
            s->thread_started = true;
        }
    }
    if (rc != KP_OK) {
        kp_spool_close(s);
        return rc;
    }
    if (s->n_sealed > 0)
        kp_info("spool", "%s: %zu sealed segments waiting to be shipped", s->dir, s->n_sealed);
    *out = s;
    return KP_OK;
}

void kp_spool_close(struct kp_spool *s)
{
    if (s == NULL)
        return;
    if (s->thread_started) {
        pthread_mutex_lock(&s->mu);
        s->stop = true;
        pthread_cond_signal(&s->wake);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->thread, NULL);
    }
    if (s->have_open) {
        /* The seal failed (disk full): the open segment is recovered on
         * the next start. */
        close(s->fd);
        kp_segment_writer_close(&s->w);
    }
    if (s->queue_events > 0)
        kp_error("spool", "%s: %" PRIu64 " usage events could not be written before stopping",
                 s->dir, s->queue_events);
    kp_buf_free(&s->queue);
    kp_free(s->sealed_seqs);
    pthread_cond_destroy(&s->done);
    pthread_cond_destroy(&s->wake);
    pthread_mutex_destroy(&s->mu);
    kp_free(s);
}

int kp_spool_append(struct kp_spool *s, const struct kp_usage_event *ev)
{
    char why[200];
    struct kp_buf enc;
    kp_buf_init(&enc);
    int rc = kp_usage_event_encode(ev, &enc, why, sizeof(why));
    if (rc != KP_OK) {
        kp_buf_free(&enc);
        if (rc == KP_EINVAL)
            kp_warn("spool", "usage event of request %.64s refused: %s", ev->request_id, why);
        pthread_mutex_lock(&s->mu);
        s->st.dropped++;
        pthread_mutex_unlock(&s->mu);
        return rc == KP_EINVAL ? KP_EINVAL : KP_EBUSY;
    }
    rc = kp_spool_append_encoded(s, ev->time_ms, enc.data, enc.len);
    kp_buf_free(&enc);
    return rc;
}

int kp_spool_append_encoded(struct kp_spool *s, int64_t time_ms, const void *enc, size_t len)
{
    uint8_t head[12];
    int rc;
    kp_put_le(head, (uint64_t)time_ms, 8);
    kp_put_le(head + 8, len, 4);
    pthread_mutex_lock(&s->mu);
    bool over = s->queue.len + sizeof(head) + len > s->opt.queue_bytes;
    if (over || s->st.full) {
        rc = KP_EBUSY;
    } else {
        size_t mark = s->queue.len;
        rc = kp_buf_append(&s->queue, head, sizeof(head));
        if (rc == KP_OK)
            rc = kp_buf_append(&s->queue, enc, len);
        if (rc != KP_OK) {
            s->queue.len = mark;
            rc = KP_EBUSY;
        }
    }
    if (rc == KP_OK) {
        s->st.appended++;
        if (s->queue_events++ == 0)
            pthread_cond_signal(&s->wake);
    } else {
        if (s->st.dropped++ % 10000 == 0)
            kp_error("spool", "%s: usage event dropped (%s); %" PRIu64 " dropped so far", s->dir,
                     s->st.full ? "the spool is at its cap" : "the spool thread is behind",
                     s->st.dropped);
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

bool kp_spool_accepting(struct kp_spool *s)
{
    pthread_mutex_lock(&s->mu);
    /* refuse: at the cap, and while events cannot be written (a full or
     * failing disk), so that no call is answered whose event only waits
     * in memory. */
    bool ok = !(s->opt.refuse_when_full && (s->st.full || s->st.write_error));
    pthread_mutex_unlock(&s->mu);
    return ok;
}

void kp_spool_get_stats(struct kp_spool *s, struct kp_spool_stats *st)
{
    pthread_mutex_lock(&s->mu);
    *st = s->st;
    pthread_mutex_unlock(&s->mu);
}

int kp_spool_sync(struct kp_spool *s, bool seal)
{
    pthread_mutex_lock(&s->mu);
    uint64_t gen = ++s->want_gen;
    if (seal)
        s->seal_gen = gen;
    pthread_cond_signal(&s->wake);
    while (s->done_gen < gen && !s->st.write_error && !s->stop)
        pthread_cond_wait(&s->done, &s->mu);
    int rc = s->done_gen >= gen ? KP_OK : KP_EIO;
    pthread_mutex_unlock(&s->mu);
    return rc;
}

size_t kp_spool_sealed(struct kp_spool *s, uint64_t *seqs, size_t max)
{
    pthread_mutex_lock(&s->mu);
    size_t n = s->n_sealed;
    for (size_t i = 0; i < n && i < max; i++)
        seqs[i] = s->sealed_seqs[i];
    pthread_mutex_unlock(&s->mu);
    return n;
}

void kp_spool_segment_path(struct kp_spool *s, uint64_t seq, char *out, size_t len)
{
    seg_name(out, len, s->dir, seq, "kpseg");
}

const char *kp_spool_dir(struct kp_spool *s)
{
    return s->dir;
}

const char *kp_spool_node(struct kp_spool *s)
{
    return s->node;
}

static void forget(struct kp_spool *s, uint64_t seq, uint64_t size)
{
    char acks[4096];
    seg_name(acks, sizeof(acks), s->dir, seq, "acks");
    unlink(acks);
    pthread_mutex_lock(&s->mu);
    if (sealed_drop(s, seq))
        s->sealed_bytes -= size < s->sealed_bytes ? size : s->sealed_bytes;
    update_fill(s);
    pthread_mutex_unlock(&s->mu);
}

int kp_spool_remove(struct kp_spool *s, uint64_t seq)
{
    char path[4096];
    struct stat st;
    seg_name(path, sizeof(path), s->dir, seq, "kpseg");
    uint64_t size = stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
    if (unlink(path) != 0 && errno != ENOENT)
        return KP_EIO;
    forget(s, seq, size);
    return KP_OK;
}

int kp_spool_quarantine(struct kp_spool *s, uint64_t seq, const char *why)
{
    char path[4096], base[64];
    struct stat st;
    seg_name(path, sizeof(path), s->dir, seq, "kpseg");
    snprintf(base, sizeof(base), SEQ_FMT ".kpseg", seq);
    uint64_t size = stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
    pthread_mutex_lock(&s->mu);
    int rc = move_to_quarantine(s, path, base, why);
    pthread_mutex_unlock(&s->mu);
    if (rc == KP_OK)
        forget(s, seq, size);
    return rc;
}

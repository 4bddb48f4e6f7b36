/* Shipping sealed segments from the spool to every meter (spool.h,
 * docs/meter.md "Shipping").
 *
 * One thread, one libcurl easy handle per meter (connections are reused).
 * Delivery is idempotent on the meter by (node, sequence), so the ack
 * record need not be durable: after a crash a segment is sent again and the
 * meter answers "duplicate". */
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "meter/meter.h"

#define MAX_TARGETS 16
#define BATCH       256
#define POLL_MS     200
#define BACKOFF_MIN 100
#define BACKOFF_MAX 30000

struct target_state {
    char name[129];
    CURL *curl;
    int64_t retry_at_ms;
    int64_t backoff_ms;
    bool warned;
};

struct kp_shipper {
    struct kp_shipper_options opt;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t wake;
    bool stop, kicked;
    struct kp_shipper_stats st;
    /* The thread's own. */
    struct target_state ts[MAX_TARGETS];
    struct kp_buf body, answer;
    bool warned_none;
};

static size_t on_answer(char *data, size_t size, size_t n, void *arg)
{
    struct kp_buf *b = arg;
    if (b->len < 4096)
        kp_buf_append(b, data, size * n < 4096 ? size * n : 4096);
    return size * n;
}

static struct target_state *state_for(struct kp_shipper *sh, const char *name)
{
    struct target_state *free_slot = NULL;
    for (int i = 0; i < MAX_TARGETS; i++) {
        if (sh->ts[i].name[0] != '\0' && strcmp(sh->ts[i].name, name) == 0)
            return &sh->ts[i];
        if (free_slot == NULL && sh->ts[i].name[0] == '\0')
            free_slot = &sh->ts[i];
    }
    if (free_slot == NULL)
        return NULL;
    snprintf(free_slot->name, sizeof(free_slot->name), "%s", name);
    free_slot->backoff_ms = 0;
    free_slot->retry_at_ms = 0;
    return free_slot;
}

/* Does SEQ.acks name @name? The file holds one member name per line. */
static bool acked(const char *acks, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = acks; *p;) {
        const char *e = strchr(p, '\n');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && memcmp(p, name, n) == 0)
            return true;
        p += len + (e != NULL);
    }
    return false;
}

static void read_acks(struct kp_shipper *sh, uint64_t seq, char *out, size_t len)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%020" PRIu64 ".acks", kp_spool_dir(sh->opt.spool), seq);
    out[0] = '\0';
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    ssize_t n = read(fd, out, len - 1);
    out[n > 0 ? n : 0] = '\0';
    close(fd);
}

static void add_ack(struct kp_shipper *sh, uint64_t seq, const char *name)
{
    char path[4096], line[160];
    snprintf(path, sizeof(path), "%s/%020" PRIu64 ".acks", kp_spool_dir(sh->opt.spool), seq);
    int n = snprintf(line, sizeof(line), "%s\n", name);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0 || kp_write_all(fd, line, (size_t)n) != KP_OK)
        kp_warn("ship", "%s: %s (the segment will be delivered again)", path, strerror(errno));
    if (fd >= 0)
        close(fd);
}

enum outcome { DELIVERED, FAILED, INVALID };

static enum outcome deliver(struct kp_shipper *sh, struct target_state *t,
                            const struct kp_ship_target *to, const char *token, uint64_t seq,
                            char *why, size_t whylen)
{
    char url[400], auth[200], label[200];
    if (t->curl == NULL && (t->curl = curl_easy_init()) == NULL) {
        snprintf(why, whylen, "out of memory");
        return FAILED;
    }
    CURL *c = t->curl;
    snprintf(url, sizeof(url), "%s://%s/internal/v1/segments", sh->opt.https ? "https" : "http",
             to->address);
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
    snprintf(label, sizeof(label), "X-Keyplane-Segment: %s/%" PRIu64, kp_spool_node(sh->opt.spool),
             seq);
    struct curl_slist *h = curl_slist_append(NULL, auth);
    struct curl_slist *h2 = h ? curl_slist_append(h, label) : NULL;
    struct curl_slist *h3 =
        h2 ? curl_slist_append(h2, "Content-Type: application/vnd.keyplane.segment") : NULL;
    kp_secret_wipe(auth, sizeof(auth));
    if (h3 == NULL) {
        curl_slist_free_all(h);
        snprintf(why, whylen, "out of memory");
        return FAILED;
    }
    sh->answer.len = 0;
    curl_easy_reset(c);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h3);
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, sh->body.data);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)sh->body.len);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, sh->opt.timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, sh->opt.https ? "https" : "http");
    if (sh->opt.https) {
        curl_easy_setopt(c, CURLOPT_CAINFO, sh->opt.ca_file);
        curl_easy_setopt(c, CURLOPT_CAPATH, NULL);
        curl_easy_setopt(c, CURLOPT_SSLCERT, sh->opt.cert_file);
        curl_easy_setopt(c, CURLOPT_SSLKEY, sh->opt.key_file);
#if LIBCURL_VERSION_NUM >= 0x075700
        /* Read the CA file for each new connection (a SIGHUP may have
         * replaced it), not once a day. */
        curl_easy_setopt(c, CURLOPT_CA_CACHE_TIMEOUT, 0L);
#endif
    }
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_answer);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &sh->answer);
    CURLcode cc = curl_easy_perform(c);
    curl_slist_free_all(h3);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    if (cc != CURLE_OK) {
        snprintf(why, whylen, "%s: %s", to->address, curl_easy_strerror(cc));
        return FAILED;
    }
    if (status == 200 || status == 201)
        return DELIVERED;
    kp_buf_append(&sh->answer, "", 1);
    snprintf(why, whylen, "%s answered %ld: %.180s", to->address, status,
             sh->answer.data ? sh->answer.data : "");
    bool invalid = status == 400 && sh->answer.data != NULL &&
                   strstr(sh->answer.data, "\"invalid_segment\"") != NULL;
    return invalid ? INVALID : FAILED;
}

static void note_failure(struct kp_shipper *sh, struct target_state *t, const char *why)
{
    int64_t now = kp_now_unix_ms();
    t->backoff_ms = t->backoff_ms ? t->backoff_ms * 2 : BACKOFF_MIN;
    if (t->backoff_ms > BACKOFF_MAX)
        t->backoff_ms = BACKOFF_MAX;
    t->retry_at_ms = now + t->backoff_ms;
    if (!t->warned)
        kp_warn("ship", "cannot deliver usage segments to meter %s: %s; retrying with backoff",
                t->name, why);
    t->warned = true;
    pthread_mutex_lock(&sh->mu);
    sh->st.failures++;
    snprintf(sh->st.last_error, sizeof(sh->st.last_error), "%.255s", why);
    pthread_mutex_unlock(&sh->mu);
}

/* One pass over the waiting segments. True when something was delivered. */
static bool ship_pass(struct kp_shipper *sh)
{
    struct kp_ship_target to[MAX_TARGETS];
    char token[200] = "";
    size_t nt = sh->opt.targets(sh->opt.arg, to, MAX_TARGETS, token, sizeof(token));
    uint64_t seqs[BATCH];
    size_t waiting = kp_spool_sealed(sh->opt.spool, seqs, BATCH);
    if (nt == 0) {
        if (waiting > 0 && !sh->warned_none)
            kp_warn("ship",
                    "%zu usage segments wait in the spool but the registry names no "
                    "meter node; mark one with clusterctl (docs/meter.md)",
                    waiting);
        sh->warned_none = waiting > 0;
        kp_secret_wipe(token, sizeof(token));
        return false;
    }
    sh->warned_none = false;
    bool progress = false;
    size_t n = waiting < BATCH ? waiting : BATCH;
    for (size_t i = 0; i < n; i++) {
        char acks[4096], path[4096], errmsg[256], why[300];
        read_acks(sh, seqs[i], acks, sizeof(acks));
        bool all = true, loaded = false;
        for (size_t k = 0; k < nt; k++) {
            if (acked(acks, to[k].name))
                continue;
            struct target_state *t = state_for(sh, to[k].name);
            if (t == NULL || kp_now_unix_ms() < t->retry_at_ms) {
                all = false;
                continue;
            }
            if (!loaded) {
                kp_spool_segment_path(sh->opt.spool, seqs[i], path, sizeof(path));
                if (kp_segment_file_read(path, (size_t)1 << 30, &sh->body, errmsg,
                                         sizeof(errmsg)) != KP_OK) {
                    kp_error("ship", "%s: %s", path, errmsg);
                    all = false;
                    break;
                }
                loaded = true;
            }
            enum outcome o = deliver(sh, t, &to[k], token, seqs[i], why, sizeof(why));
            if (o == DELIVERED) {
                add_ack(sh, seqs[i], to[k].name);
                if (t->warned)
                    kp_info("ship", "delivering usage segments to meter %s again", t->name);
                t->warned = false;
                t->backoff_ms = 0;
                progress = true;
                pthread_mutex_lock(&sh->mu);
                sh->st.deliveries++;
                sh->st.last_success_ms = kp_now_unix_ms();
                pthread_mutex_unlock(&sh->mu);
            } else if (o == INVALID) {
                kp_spool_quarantine(sh->opt.spool, seqs[i], why);
                pthread_mutex_lock(&sh->mu);
                sh->st.quarantined++;
                pthread_mutex_unlock(&sh->mu);
                all = false;
                loaded = false;
                break;
            } else {
                note_failure(sh, t, why);
                all = false;
            }
        }
        if (all && kp_spool_remove(sh->opt.spool, seqs[i]) == KP_OK) {
            pthread_mutex_lock(&sh->mu);
            sh->st.removed++;
            pthread_mutex_unlock(&sh->mu);
        }
    }
    kp_secret_wipe(token, sizeof(token));
    return progress;
}

static void *ship_thread(void *arg)
{
    struct kp_shipper *sh = arg;
    kp_thread_name("kp-ship", -1);
    pthread_mutex_lock(&sh->mu);
    while (!sh->stop) {
        sh->kicked = false;
        pthread_mutex_unlock(&sh->mu);
        bool progress = ship_pass(sh);
        pthread_mutex_lock(&sh->mu);
        if (progress || sh->kicked || sh->stop)
            continue;
        int64_t until = kp_now_unix_ms() + POLL_MS;
        struct timespec ts = {.tv_sec = until / 1000, .tv_nsec = (until % 1000) * 1000000};
        pthread_cond_timedwait(&sh->wake, &sh->mu, &ts);
    }
    pthread_mutex_unlock(&sh->mu);
    return NULL;
}

int kp_shipper_start(const struct kp_shipper_options *opt, struct kp_shipper **out, char *errmsg,
                     size_t errlen)
{
    *out = NULL;
    struct kp_shipper *sh = kp_calloc(1, sizeof(*sh));
    if (sh == NULL)
        return KP_ENOMEM;
    sh->opt = *opt;
    if (sh->opt.timeout_ms <= 0)
        sh->opt.timeout_ms = 30000;
    kp_buf_init(&sh->body);
    kp_buf_init(&sh->answer);
    pthread_mutex_init(&sh->mu, NULL);
    pthread_cond_init(&sh->wake, NULL);
    if (pthread_create(&sh->thread, NULL, ship_thread, sh) != 0) {
        pthread_cond_destroy(&sh->wake);
        pthread_mutex_destroy(&sh->mu);
        kp_free(sh);
        snprintf(errmsg, errlen, "shipper: cannot start its thread");
        return KP_ENOMEM;
    }
    *out = sh;
    return KP_OK;
}

void kp_shipper_stop(struct kp_shipper *sh)
{
    if (sh == NULL)
        return;
    pthread_mutex_lock(&sh->mu);
    sh->stop = true;
    pthread_cond_signal(&sh->wake);
    pthread_mutex_unlock(&sh->mu);
    pthread_join(sh->thread, NULL);
    for (int i = 0; i < MAX_TARGETS; i++)
        if (sh->ts[i].curl != NULL)
            curl_easy_cleanup(sh->ts[i].curl);
    kp_buf_free(&sh->body);
    kp_buf_free(&sh->answer);
    pthread_cond_destroy(&sh->wake);
    pthread_mutex_destroy(&sh->mu);
    kp_free(sh);
}

void kp_shipper_kick(struct kp_shipper *sh)
{
    pthread_mutex_lock(&sh->mu);
    sh->kicked = true;
    pthread_cond_signal(&sh->wake);
    pthread_mutex_unlock(&sh->mu);
}

void kp_shipper_get_stats(struct kp_shipper *sh, struct kp_shipper_stats *st)
{
    pthread_mutex_lock(&sh->mu);
    *st = sh->st;
    pthread_mutex_unlock(&sh->mu);
}

/* The drill's test traffic: one thread that sends tiny chat completions to
 * the gateway at a steady rate and records how each one went.
 *
 * The thread owns a libcurl easy handle (keep-alive, one request at a time)
 * and sends `max_tokens: 1` completions as the app token, in the drill's
 * pool, with an X-Request-Id of PREFIX-SEQ so that the gateway's usage
 * events can be matched to them. Requests start every 1/rps seconds; one
 * that takes longer than that delays the next instead of piling up (the
 * schedule restarts from now), so a slow gateway is not also flooded. Given
 * several gateway URLs, requests take them in turn.
 *
 * For each request it records when it started and ended (monotonic), the
 * HTTP status (0 when none came: a transport failure), the key that served
 * it (the answer's X-Keyplane-Key) and, for an error, its class (the
 * gateway's X-Keyplane-Error, else the status; curl's message for a
 * transport failure). Records and names live under one mutex; each new
 * record broadcasts a condition variable, on which the drill waits for
 * "KEY served a request that started after T" with a deadline. The same
 * condition paces the thread, so a stop wakes it at once; a request in
 * flight is finished, not cut (cutting it would count as an error).
 *
 * The app token goes only into the Authorization header line, which is
 * wiped when freed, like the copy of the token itself. */
#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "clusterctl.h"

enum {
    CONNECT_TIMEOUT_MS = 5000,
    REQUEST_TIMEOUT_MS = 30000,
    MAX_NAMES = 64, /* distinct keys and error classes kept by name */
};

struct kp_ctl_traffic {
    /* Set before the thread starts, then read-only. */
    char **gateways; /* ".../v1/chat/completions" */
    size_t n_gateways;
    char *token;
    char *pool_header; /* "X-Keyplane-Pool: POOL" */
    char *body;
    char prefix[48];
    uint64_t interval_us;

    pthread_t thread;
    bool started;
    bool sync_init; /* @lock and @cond made */
    pthread_mutex_t lock;
    pthread_cond_t cond; /* a new record, or stop */
    /* Under @lock. */
    bool stop;
    struct kp_ctl_request_record *records;
    size_t n_records, cap_records;
    char *names[MAX_NAMES];
    size_t n_names;
};

/* Deadline @us (monotonic µs) as a timespec for pthread_cond_timedwait on
 * a CLOCK_MONOTONIC condition. */
static struct timespec mono_deadline(uint64_t us)
{
    struct timespec ts = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000};
    return ts;
}

/* The index of @name, added when new; past MAX_NAMES - 1 names, the last
 * slot, "(other)", stands for the rest. Called under @lock. */
static int name_index(struct kp_ctl_traffic *t, const char *name)
{
    for (size_t i = 0; i < t->n_names; i++) {
        if (strcmp(t->names[i], name) == 0)
            return (int)i;
    }
    if (t->n_names < MAX_NAMES - 1) {
        if ((t->names[t->n_names] = kp_strdup(name)) == NULL)
            return -1;
        return (int)t->n_names++;
    }
    if (t->n_names == MAX_NAMES - 1 && (t->names[t->n_names] = kp_strdup("(other)")) != NULL)
        t->n_names++;
    return t->n_names == MAX_NAMES ? MAX_NAMES - 1 : -1;
}

static size_t discard(char *data, size_t size, size_t n, void *arg)
{
    (void)data;
    (void)arg;
    return size * n;
}

/* The request's header lines; the token's line is wiped when freed. */
static struct curl_slist *headers_for(const struct kp_ctl_traffic *t, uint64_t seq)
{
    char rid[96];
    size_t n = strlen("Authorization: Bearer ") + strlen(t->token) + 1;
    char *auth = kp_malloc(n);
    struct curl_slist *list = NULL, *more = NULL;

    snprintf(rid, sizeof(rid), "X-Request-Id: %s-%llu", t->prefix, (unsigned long long)seq);
    if (auth != NULL) {
        snprintf(auth, n, "Authorization: Bearer %s", t->token);
        list = curl_slist_append(NULL, auth);
        memset(auth, 0, n);
        kp_free(auth);
    }
    const char *lines[] = {"Content-Type: application/json", "Accept: application/json",
                           "Expect:", t->pool_header, rid};
    for (size_t i = 0; list != NULL && i < sizeof(lines) / sizeof(lines[0]); i++) {
        if ((more = curl_slist_append(list, lines[i])) == NULL)
            break;
    }
    if (list != NULL && more == NULL) {
        kp_ctl__free_header_lines(list);
        return NULL;
    }
    return list;
}

/* Sends request @seq; says which key served it and, for a failure, what
 * the failure was ("" for none). */
static void send_one(struct kp_ctl_traffic *t, CURL *curl, uint64_t seq, char *key, size_t key_len,
                     char *error, size_t error_len, long *status)
{
    char curl_err[CURL_ERROR_SIZE] = "";
    struct curl_slist *headers = headers_for(t, seq);
    struct curl_header *h;
    CURLcode rc = CURLE_OUT_OF_MEMORY;

    key[0] = error[0] = '\0';
    *status = 0;
    if (headers != NULL) {
        curl_easy_setopt(curl, CURLOPT_URL, t->gateways[seq % t->n_gateways]);
        curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
        curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, curl_err);
        rc = curl_easy_perform(curl);
        curl_easy_setopt(curl, CURLOPT_HTTPHEADER, NULL);
        curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, NULL);
        kp_ctl__free_header_lines(headers);
    }
    if (rc != CURLE_OK) {
        snprintf(error, error_len, "transport: %s",
                 curl_err[0] ? curl_err : curl_easy_strerror(rc));
        return;
    }
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, status);
    if (curl_easy_header(curl, "X-Keyplane-Key", 0, CURLH_HEADER, -1, &h) == CURLHE_OK)
        snprintf(key, key_len, "%s", h->value);
    if (*status >= 200 && *status <= 299)
        return;
    if (curl_easy_header(curl, "X-Keyplane-Error", 0, CURLH_HEADER, -1, &h) == CURLHE_OK)
        snprintf(error, error_len, "%ld %s", *status, h->value);
    else
        snprintf(error, error_len, "%ld", *status);
}

static void record(struct kp_ctl_traffic *t, uint64_t seq, uint64_t start, uint64_t end,
                   long status, const char *key, const char *error)
{
    pthread_mutex_lock(&t->lock);
    if (t->n_records == t->cap_records) {
        size_t cap = t->cap_records ? 2 * t->cap_records : 1024;
        void *p = kp_realloc(t->records, cap * sizeof(*t->records));
        if (p != NULL) {
            t->records = p;
            t->cap_records = cap;
        }
    }
    if (t->n_records < t->cap_records) {
        struct kp_ctl_request_record *r = &t->records[t->n_records++];
        r->start_us = start;
        r->end_us = end;
        r->status = status;
        r->gateway = (unsigned)(seq % t->n_gateways);
        r->key = key[0] != '\0' ? name_index(t, key) : -1;
        r->error = error[0] != '\0' ? name_index(t, error) : -1;
    }
    pthread_cond_broadcast(&t->cond);
    pthread_mutex_unlock(&t->lock);
}

static CURL *traffic_handle(struct kp_ctl_traffic *t)
{
    char agent[64];
    CURL *curl = curl_easy_init();
    CURLcode rc = curl != NULL ? CURLE_OK : CURLE_OUT_OF_MEMORY;

    snprintf(agent, sizeof(agent), "clusterctl-drill/%s", kp_version());
#define SET(opt, val)                                                                              \
    if (rc == CURLE_OK)                                                                            \
    rc = curl_easy_setopt(curl, opt, val)
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_FOLLOWLOCATION, 0L);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_CONNECTTIMEOUT_MS, (long)CONNECT_TIMEOUT_MS);
    SET(CURLOPT_TIMEOUT_MS, (long)REQUEST_TIMEOUT_MS);
    SET(CURLOPT_USERAGENT, agent);
    SET(CURLOPT_WRITEFUNCTION, discard);
    SET(CURLOPT_POSTFIELDS, t->body); /* not copied: @t outlives the handle */
    SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(t->body));
#undef SET
    if (rc != CURLE_OK && curl != NULL) {
        curl_easy_cleanup(curl);
        curl = NULL;
    }
    return curl;
}

/* Waits under @lock until @at (monotonic µs) or a stop; true to go on. */
static bool pace(struct kp_ctl_traffic *t, uint64_t at)
{
    struct timespec ts = mono_deadline(at);
    bool go;

    pthread_mutex_lock(&t->lock);
    while (!t->stop && kp_now_mono_us() < at) {
        if (pthread_cond_timedwait(&t->cond, &t->lock, &ts) == ETIMEDOUT)
            break;
    }
    go = !t->stop;
    pthread_mutex_unlock(&t->lock);
    return go;
}

static void *traffic_main(void *arg)
{
    struct kp_ctl_traffic *t = arg;
    CURL *curl = traffic_handle(t);
    uint64_t next = kp_now_mono_us();
    char key[256], error[CURL_ERROR_SIZE + 64];
    long status;

    for (uint64_t seq = 1; pace(t, next); seq++) {
        uint64_t start = kp_now_mono_us(), end;
        if (curl != NULL) {
            send_one(t, curl, seq, key, sizeof(key), error, sizeof(error), &status);
        } else {
            snprintf(error, sizeof(error), "transport: cannot set up libcurl");
            key[0] = '\0';
            status = 0;
        }
        end = kp_now_mono_us();
        record(t, seq, start, end, status, key, error);
        next += t->interval_us;
        if (next < end) /* late: start again from now rather than burst */
            next = end;
    }
    if (curl != NULL)
        curl_easy_cleanup(curl);
    return NULL;
}

static char *chat_body(const char *model)
{
    json_t *body = json_pack("{s:s, s:[{s:s, s:s}], s:i}", "model", model, "messages", "role",
                             "user", "content", "keyplane rotation drill", "max_tokens", 1);
    char *text = body != NULL ? kp_json_dumps(body, NULL) : NULL;

    json_decref(body);
    return text;
}

static char *concat(const char *a, const char *b)
{
    size_t n = strlen(a) + strlen(b) + 1;
    char *s = kp_malloc(n);

    if (s != NULL)
        snprintf(s, n, "%s%s", a, b);
    return s;
}

int kp_ctl__traffic_start(const struct kp_ctl_traffic_config *cfg, struct kp_ctl_traffic **out,
                          char *errmsg, size_t errlen)
{
    struct kp_ctl_traffic *t = kp_calloc(1, sizeof(*t));
    pthread_condattr_t attr;
    bool ok = t != NULL;
    size_t i;
    json_t *g;

    *out = NULL;
    if (ok) {
        t->n_gateways = json_array_size(cfg->gateways);
        if (t->n_gateways == 0 || t->n_gateways > KP_CTL_GATEWAYS_MAX) {
            kp_free(t);
            snprintf(errmsg, errlen, "1 to %d gateways", KP_CTL_GATEWAYS_MAX);
            return -1;
        }
        t->gateways = kp_calloc(t->n_gateways, sizeof(*t->gateways));
        t->token = kp_strdup(cfg->token);
        t->pool_header = concat("X-Keyplane-Pool: ", cfg->pool);
        t->body = chat_body(cfg->model);
        t->interval_us = 1000000 / (cfg->rps > 0 ? cfg->rps : 1);
        snprintf(t->prefix, sizeof(t->prefix), "%s", cfg->request_prefix);
        ok = t->gateways != NULL && t->token != NULL && t->pool_header != NULL && t->body != NULL;
    }
    json_array_foreach(cfg->gateways, i, g)
    {
        if (ok && (t->gateways[i] = concat(json_string_value(g), "/v1/chat/completions")) == NULL)
            ok = false;
    }
    if (!ok) {
        kp_ctl__traffic_free(t);
        snprintf(errmsg, errlen, "out of memory");
        return -1;
    }
    pthread_mutex_init(&t->lock, NULL);
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&t->cond, &attr);
    pthread_condattr_destroy(&attr);
    t->sync_init = true;
    int rc = pthread_create(&t->thread, NULL, traffic_main, t);
    if (rc != 0) {
        snprintf(errmsg, errlen, "cannot start the traffic thread: %s", strerror(rc));
        kp_ctl__traffic_free(t);
        return -1;
    }
    t->started = true;
    *out = t;
    return 0;
}

/* True when key @key (an index) served a request that started at or after
 * @after_us, through every gateway when @every_gateway, else through any.
 * Called under @lock. */
static bool served_since(const struct kp_ctl_traffic *t, int key, uint64_t after_us,
                         bool every_gateway)
{
    bool seen[KP_CTL_GATEWAYS_MAX] = {false};
    size_t n_seen = 0;

    for (size_t i = t->n_records; key >= 0 && i-- > 0;) {
        const struct kp_ctl_request_record *r = &t->records[i];
        if (r->start_us < after_us)
            break; /* records are in start order */
        if (r->key != key || r->status < 200 || r->status > 299 || seen[r->gateway])
            continue;
        seen[r->gateway] = true;
        if (++n_seen == (every_gateway ? t->n_gateways : 1))
            return true;
    }
    return false;
}

bool kp_ctl__traffic_wait_served(struct kp_ctl_traffic *t, const char *key, uint64_t after_us,
                                 bool every_gateway, uint64_t deadline_us,
                                 const volatile sig_atomic_t *cancel)
{
    bool served = false;

    pthread_mutex_lock(&t->lock);
    for (;;) {
        int k = -1;
        for (size_t i = 0; key != NULL && i < t->n_names; i++) {
            if (strcmp(t->names[i], key) == 0)
                k = (int)i;
        }
        uint64_t now = kp_now_mono_us();
        if ((served = served_since(t, k, after_us, every_gateway)) || now >= deadline_us ||
            (cancel != NULL && *cancel))
            break;
        /* Woken by each record; at least every 100 ms to see @cancel. */
        uint64_t until = deadline_us < now + 100000 ? deadline_us : now + 100000;
        struct timespec ts = mono_deadline(until);
        pthread_cond_timedwait(&t->cond, &t->lock, &ts);
    }
    pthread_mutex_unlock(&t->lock);
    return served;
}

void kp_ctl__traffic_stop(struct kp_ctl_traffic *t)
{
    if (t == NULL || !t->started)
        return;
    pthread_mutex_lock(&t->lock);
    t->stop = true;
    pthread_cond_broadcast(&t->cond);
    pthread_mutex_unlock(&t->lock);
    pthread_join(t->thread, NULL);
    t->started = false;
}

size_t kp_ctl__traffic_records(const struct kp_ctl_traffic *t,
                               const struct kp_ctl_request_record **records)
{
    *records = t->records;
    return t->n_records;
}

const char *kp_ctl__traffic_name(const struct kp_ctl_traffic *t, int index)
{
    return index >= 0 && (size_t)index < t->n_names ? t->names[index] : NULL;
}

void kp_ctl__traffic_free(struct kp_ctl_traffic *t)
{
    if (t == NULL)
        return;
    kp_ctl__traffic_stop(t);
    if (t->sync_init) {
        pthread_cond_destroy(&t->cond);
        pthread_mutex_destroy(&t->lock);
    }
    for (size_t i = 0; t->gateways != NULL && i < t->n_gateways; i++)
        kp_free(t->gateways[i]);
    kp_free(t->gateways);
    if (t->token != NULL)
        memset(t->token, 0, strlen(t->token));
    kp_free(t->token);
    kp_free(t->pool_header);
    kp_free(t->body);
    kp_free(t->records);
    for (size_t i = 0; i < t->n_names; i++)
        kp_free(t->names[i]);
    kp_free(t);
}

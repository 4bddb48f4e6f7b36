/* Where traffic went: counters per route, per status and per key
 * fingerprint, plus aborted exchanges and resets sent.
 *
 * Each worker writes only its own shard. A shard's mutex is uncontended except
 * while /mock/stats or /mock/reset reads or clears it from another worker, so
 * the request path pays two uncontended lock pairs. Keys are counted in a
 * small open-addressing table per shard that keeps the key (to match it) and
 * its fingerprint (to show it); the fingerprint, SHA-256 based, is computed
 * once per new key. Past KEY_SLOTS * 3/4 distinct keys per shard the rest are
 * counted under "other". */
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

#define KEY_SLOTS  1024u
#define MAX_KEYS   (KEY_SLOTS * 3 / 4)
#define MAX_STATUS 600

struct key_count {
    char *key; /* NULL: empty slot */
    size_t key_len;
    uint64_t hash;
    uint64_t count;
    char fp[KP_MOCK_FP_LEN];
};

struct kp_mock_shard {
    pthread_mutex_t lock;
    uint64_t requests;
    uint64_t routes[KP_MOCK_R_COUNT];
    uint64_t statuses[MAX_STATUS]; /* [0]: out of range */
    uint64_t aborted;
    uint64_t resets;
    uint64_t keys_other;
    uint64_t tokens_in, tokens_out;
    unsigned n_keys;
    struct key_count keys[KEY_SLOTS];
    uint64_t next_id; /* never cleared: ids stay unique */
    unsigned index;
    char traceparent[129]; /* the last one this shard saw, "" */
    uint64_t traceparent_seq;
};

static const char *const route_names[KP_MOCK_R_COUNT] = {
    [KP_MOCK_R_CHAT] = "/v1/chat/completions",
    [KP_MOCK_R_COMPLETIONS] = "/v1/completions",
    [KP_MOCK_R_EMBEDDINGS] = "/v1/embeddings",
    [KP_MOCK_R_RESPONSES] = "/v1/responses",
    [KP_MOCK_R_MODELS] = "/v1/models",
    [KP_MOCK_R_MESSAGES] = "/v1/messages",
    [KP_MOCK_R_GENERATE] = "/v1beta/models:generateContent",
    [KP_MOCK_R_STREAM_GENERATE] = "/v1beta/models:streamGenerateContent",
    [KP_MOCK_R_GEMINI_MODELS] = "/v1beta/models",
    [KP_MOCK_R_BALANCE] = "/v1/user/balance",
    [KP_MOCK_R_OTHER] = "other",
    [KP_MOCK_R_CONTROL] = "/mock",
};

const char *kp_mock_route_name(enum kp_mock_route r)
{
    return (unsigned)r < KP_MOCK_R_COUNT ? route_names[r] : "other";
}

int kp_mock_route_parse(const char *name)
{
    for (int r = 0; r < KP_MOCK_R_OTHER; r++)
        if (strcmp(name, route_names[r]) == 0)
            return r;
    return -1;
}

void kp_mock_fingerprint(const char *key, size_t len, char out[KP_MOCK_FP_LEN])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned md_len = 0;

    memcpy(out, "fp_", 3);
    if (EVP_Digest(key, len, md, &md_len, EVP_sha256(), NULL) != 1 || md_len < 6) {
        memcpy(out + 3, "000000000000", 13);
        return;
    }
    for (unsigned i = 0; i < 6; i++) {
        out[3 + 2 * i] = hex[md[i] >> 4];
        out[4 + 2 * i] = hex[md[i] & 15];
    }
    out[15] = '\0';
}

static uint64_t key_hash(const char *key, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ULL;

    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)key[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* Count one use of @key. Caller holds the shard lock. */
static void count_key(struct kp_mock_shard *s, const char *key, size_t len)
{
    uint64_t h = key_hash(key, len);
    unsigned i = (unsigned)h & (KEY_SLOTS - 1);
    struct key_count *k;

    for (;; i = (i + 1) & (KEY_SLOTS - 1)) {
        k = &s->keys[i];
        if (k->key == NULL)
            break;
        if (k->hash == h && k->key_len == len && memcmp(k->key, key, len) == 0) {
            k->count++;
            return;
        }
    }
    if (s->n_keys >= MAX_KEYS || (k->key = kp_strndup(key, len)) == NULL) {
        s->keys_other++;
        return;
    }
    k->key_len = len;
    k->hash = h;
    k->count = 1;
    kp_mock_fingerprint(key, len, k->fp);
    s->n_keys++;
}

void kp_mock_stats_request(struct kp_mock *m, unsigned shard, enum kp_mock_route route,
                           const char *key, size_t key_len)
{
    struct kp_mock_shard *s = m->shards[shard];

    pthread_mutex_lock(&s->lock);
    s->requests++;
    s->routes[route]++;
    if (key != NULL)
        count_key(s, key, key_len);
    pthread_mutex_unlock(&s->lock);
}

void kp_mock_stats_status(struct kp_mock *m, unsigned shard, int status)
{
    struct kp_mock_shard *s = m->shards[shard];

    pthread_mutex_lock(&s->lock);
    s->statuses[status > 0 && status < MAX_STATUS ? status : 0]++;
    pthread_mutex_unlock(&s->lock);
}

void kp_mock_stats_tokens(struct kp_mock *m, unsigned shard, uint64_t in, uint64_t out)
{
    struct kp_mock_shard *s = m->shards[shard];

    pthread_mutex_lock(&s->lock);
    s->tokens_in += in;
    s->tokens_out += out;
    pthread_mutex_unlock(&s->lock);
}

void kp_mock_stats_aborted(struct kp_mock *m, unsigned shard)
{
    struct kp_mock_shard *s = m->shards[shard];

    pthread_mutex_lock(&s->lock);
    s->aborted++;
    pthread_mutex_unlock(&s->lock);
}

void kp_mock_stats_reset_sent(struct kp_mock *m, unsigned shard)
{
    struct kp_mock_shard *s = m->shards[shard];

    pthread_mutex_lock(&s->lock);
    s->resets++;
    pthread_mutex_unlock(&s->lock);
}

/* The decimal digits of @v, at least @width of them, written backwards so
 * that they end at @end; returns where they start. */
static char *put_digits(char *end, uint64_t v, size_t width)
{
    char *start = end;

    do {
        *--start = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    while ((size_t)(end - start) < width)
        *--start = '0';
    return start;
}

void kp_mock_next_id(struct kp_mock *m, unsigned shard, char *out, size_t len)
{
    struct kp_mock_shard *s = m->shards[shard];
    char tmp[48], *end = tmp + sizeof(tmp), *p;
    size_t n;

    /* "mock" + index + the counter in at least 9 digits, with no printf on
     * the request path. Only the owning worker touches next_id. */
    p = put_digits(end, ++s->next_id, 9);
    p = put_digits(p, s->index, 1);
    p -= 4;
    memcpy(p, "mock", 4);
    n = (size_t)(end - p) < len ? (size_t)(end - p) : len - 1;
    memcpy(out, p, n);
    out[n] = '\0';
}

void kp_mock_stats_traceparent(struct kp_mock *m, unsigned shard, const char *value)
{
    struct kp_mock_shard *s = m->shards[shard];
    size_t n = strlen(value);
    uint64_t seq = atomic_fetch_add(&m->tp_seq, 1) + 1;

    if (n >= sizeof(s->traceparent))
        return;
    pthread_mutex_lock(&s->lock);
    memcpy(s->traceparent, value, n + 1);
    s->traceparent_seq = seq;
    pthread_mutex_unlock(&s->lock);
}

/* Zero a shard's counters. Caller holds the lock. */
static void shard_clear(struct kp_mock_shard *s)
{
    for (unsigned i = 0; i < KEY_SLOTS; i++)
        kp_free(s->keys[i].key);
    s->requests = s->aborted = s->resets = s->keys_other = 0;
    s->tokens_in = s->tokens_out = 0;
    s->n_keys = 0;
    s->traceparent[0] = '\0';
    s->traceparent_seq = 0;
    memset(s->routes, 0, sizeof(s->routes));
    memset(s->statuses, 0, sizeof(s->statuses));
    memset(s->keys, 0, sizeof(s->keys));
}

void kp_mock_stats_clear(struct kp_mock *m)
{
    for (unsigned i = 0; i < m->n_shards; i++) {
        pthread_mutex_lock(&m->shards[i]->lock);
        shard_clear(m->shards[i]);
        pthread_mutex_unlock(&m->shards[i]->lock);
    }
}

/* --- rendering ----------------------------------------------------------- */

/* Sums across shards, built under each shard's lock in turn. */
struct totals {
    uint64_t requests, aborted, resets, keys_other, tokens_in, tokens_out;
    uint64_t routes[KP_MOCK_R_COUNT];
    uint64_t statuses[MAX_STATUS];
    json_t *keys; /* fp -> count */
    char traceparent[129];
    uint64_t traceparent_seq;
};

static int add_shard(struct totals *t, struct kp_mock_shard *s)
{
    int rv = 0;

    pthread_mutex_lock(&s->lock);
    t->requests += s->requests;
    t->aborted += s->aborted;
    t->resets += s->resets;
    t->keys_other += s->keys_other;
    t->tokens_in += s->tokens_in;
    t->tokens_out += s->tokens_out;
    for (unsigned i = 0; i < KP_MOCK_R_COUNT; i++)
        t->routes[i] += s->routes[i];
    for (unsigned i = 0; i < MAX_STATUS; i++)
        t->statuses[i] += s->statuses[i];
    if (s->traceparent_seq > t->traceparent_seq) {
        t->traceparent_seq = s->traceparent_seq;
        memcpy(t->traceparent, s->traceparent, sizeof(t->traceparent));
    }
    for (unsigned i = 0; i < KEY_SLOTS && rv == 0; i++) {
        const struct key_count *k = &s->keys[i];
        json_t *prev;

        if (k->key == NULL)
            continue;
        prev = json_object_get(t->keys, k->fp);
        rv = json_object_set_new(t->keys, k->fp,
                                 json_integer((json_int_t)(k->count + json_integer_value(prev))));
    }
    pthread_mutex_unlock(&s->lock);
    return rv;
}

static int render_totals(const struct totals *t, struct kp_buf *out)
{
    const char *fp;
    json_t *v;
    int rv = 0;
    bool first = true;

    rv |= kp_buf_appendf(out, "{\"requests\":%llu,\"routes\":{", (unsigned long long)t->requests);
    for (unsigned i = 0; i < KP_MOCK_R_COUNT; i++) {
        if (t->routes[i] == 0)
            continue;
        rv |= kp_buf_appendf(out, "%s\"%s\":%llu", first ? "" : ",", route_names[i],
                             (unsigned long long)t->routes[i]);
        first = false;
    }
    rv |= kp_buf_appendf(out, "},\"keys\":{");
    first = true;
    json_object_foreach(t->keys, fp, v)
    {
        rv |= kp_buf_appendf(out, "%s\"%s\":%lld", first ? "" : ",", fp,
                             (long long)json_integer_value(v));
        first = false;
    }
    if (t->keys_other)
        rv |= kp_buf_appendf(out, "%s\"other\":%llu", first ? "" : ",",
                             (unsigned long long)t->keys_other);
    rv |= kp_buf_appendf(out, "},\"statuses\":{");
    first = true;
    for (unsigned i = 0; i < MAX_STATUS; i++) {
        if (t->statuses[i] == 0)
            continue;
        rv |= kp_buf_appendf(out, "%s\"%u\":%llu", first ? "" : ",", i,
                             (unsigned long long)t->statuses[i]);
        first = false;
    }
    rv |= kp_buf_appendf(out, "},\"aborted\":%llu,\"resets\":%llu", (unsigned long long)t->aborted,
                         (unsigned long long)t->resets);
    rv |= kp_buf_appendf(out, ",\"tokens\":{\"input\":%llu,\"output\":%llu}",
                         (unsigned long long)t->tokens_in, (unsigned long long)t->tokens_out);
    rv |= kp_buf_append_lit(out, ",\"last_traceparent\":");
    if (t->traceparent[0] == '\0') {
        rv |= kp_buf_append_lit(out, "null}");
    } else {
        rv |= kp_buf_append_lit(out, "\"");
        rv |= kp_json_escape(out, t->traceparent, strlen(t->traceparent));
        rv |= kp_buf_append_lit(out, "\"}");
    }
    return rv ? KP_ENOMEM : 0;
}

int kp_mock_stats_render(struct kp_mock *m, struct kp_buf *out)
{
    struct totals t;
    int rv = 0;

    memset(&t, 0, sizeof(t));
    t.keys = json_object();
    if (t.keys == NULL)
        return KP_ENOMEM;
    for (unsigned i = 0; i < m->n_shards && rv == 0; i++)
        rv = add_shard(&t, m->shards[i]);
    if (rv == 0)
        rv = render_totals(&t, out);
    json_decref(t.keys);
    return rv ? KP_ENOMEM : 0;
}

/* --- the mock ------------------------------------------------------------ */

int kp_mock_init(struct kp_mock *m, unsigned n_shards)
{
    memset(m, 0, sizeof(*m));
    m->shards = kp_calloc(n_shards, sizeof(*m->shards));
    if (m->shards == NULL)
        return KP_ENOMEM;
    for (; m->n_shards < n_shards; m->n_shards++) {
        struct kp_mock_shard *s = kp_calloc(1, sizeof(*s));

        if (s == NULL)
            goto err_after_shards;
        pthread_mutex_init(&s->lock, NULL);
        s->index = m->n_shards;
        m->shards[m->n_shards] = s;
    }
    pthread_mutex_init(&m->script_lock, NULL);
    atomic_init(&m->n_scripts, 0);
    atomic_init(&m->tp_seq, 0);
    return 0;

err_after_shards:
    for (unsigned i = 0; i < m->n_shards; i++) {
        pthread_mutex_destroy(&m->shards[i]->lock);
        kp_free(m->shards[i]);
    }
    kp_free(m->shards);
    m->shards = NULL;
    m->n_shards = 0;
    return KP_ENOMEM;
}

void kp_mock_close(struct kp_mock *m)
{
    kp_mock__scripts_free(m);
    pthread_mutex_destroy(&m->script_lock);
    for (unsigned i = 0; i < m->n_shards; i++) {
        shard_clear(m->shards[i]);
        pthread_mutex_destroy(&m->shards[i]->lock);
        kp_free(m->shards[i]);
    }
    kp_free(m->shards);
    m->shards = NULL;
    m->n_shards = 0;
}

int64_t kp_mock__now(const struct kp_mock *m)
{
    return m->fixed_time ? m->fixed_time : kp_now_unix_ms() / 1000;
}

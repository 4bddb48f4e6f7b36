/* Usage metering on this node (docs/meter.md): the spool the router's
 * workers write usage events to, the shipper that delivers sealed segments
 * to every meter, and, when the registry names this node a meter, the meter
 * store with its ingest route POST /internal/v1/segments.
 *
 * The spool and shipper have their own threads; the store has its
 * compactor thread, and its blocking calls (ingest, queries) run on libuv's
 * threadpool and answer on the main loop. A 1 s timer on the main loop
 * publishes gauges and opens the store once this node's member record says
 * meter. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "node.h"

struct kp_metering {
    struct kp_spool *spool;
    struct kp_shipper *shipper;
    struct kp_meter_store *store;
    bool store_failed; /* opening it failed once: logged, retried each tick */
    uv_timer_t tick;
    bool tick_open;
    struct kp_metric *g_spool_bytes, *g_spool_cap, *g_spool_waiting, *c_dropped, *c_committed,
        *c_quarantined, *c_shipped, *c_ship_failures, *g_meter_pending, *c_meter_stored,
        *c_meter_dups, *c_meter_rejected, *g_meter_newest;
    uint64_t last_dropped, last_committed, last_quarantined, last_shipped, last_ship_fail,
        last_stored, last_dups, last_rejected;
};

/* --- the usage sink the router writes to ----------------------------------------- */

/* Encoded once, for the spool and for the ring of recent events. */
void kp_metering_record(void *node, const struct kp_usage_event *ev)
{
    struct kp_node *n = node;
    struct kp_spool *spool = n->metering != NULL ? n->metering->spool : NULL;
    char why[200];
    struct kp_buf enc;
    kp_buf_init(&enc);
    if (kp_usage_event_encode(ev, &enc, why, sizeof(why)) != KP_OK) {
        if (spool != NULL)
            kp_spool_append(spool, ev); /* which says why and counts the drop */
        else
            kp_warn("metering", "usage event of request %.64s not recorded: %s", ev->request_id,
                    why);
        kp_buf_free(&enc);
        return;
    }
    kp_usage_log_record(n->usage, enc.data, enc.len);
    if (spool != NULL)
        kp_spool_append_encoded(spool, ev->time_ms, enc.data, enc.len);
    kp_buf_free(&enc);
}

bool kp_metering_accepting(void *node)
{
    struct kp_node *n = node;
    return n->metering == NULL || n->metering->spool == NULL ||
           kp_spool_accepting(n->metering->spool);
}

/* --- shipping targets: the meters in the registry ------------------------------------ */

struct targets {
    struct kp_ship_target *out;
    size_t max, n;
};

static int add_target(const struct kp_entity *e, void *arg)
{
    const struct kp_member *m = (const struct kp_member *)e;
    struct targets *t = arg;
    if (!m->meter || m->control_address == NULL || t->n == t->max)
        return 0;
    snprintf(t->out[t->n].name, sizeof(t->out[t->n].name), "%s", e->id);
    snprintf(t->out[t->n].address, sizeof(t->out[t->n].address), "%s", m->control_address);
    t->n++;
    return 0;
}

static size_t ship_targets(void *arg, struct kp_ship_target *out, size_t max, char *token,
                           size_t token_len)
{
    struct kp_node *n = arg;
    struct targets t = {out, max, 0};
    struct kp_view *v = kp_view_acquire(&n->views);
    if (v == NULL)
        return 0;
    kp_view_each(v, KP_KIND_MEMBER, add_target, &t);
    kp_view_release(v);
    snprintf(token, token_len, "%s", kp_node_out_token(n));
    return t.n;
}

bool kp_metering_find_meter(struct kp_node *n, char *control, size_t len)
{
    struct kp_ship_target t[16];
    char token[200];
    size_t k = ship_targets(n, t, 16, token, sizeof(token));
    kp_secret_wipe(token, sizeof(token));
    for (size_t i = 0; i < k; i++)
        if (strcmp(t[i].name, n->cfg->node_name) != 0) {
            snprintf(control, len, "%s", t[i].address);
            return true;
        }
    return false;
}

/* --- the meter role ---------------------------------------------------------------- */

static bool registry_says_meter(struct kp_node *n)
{
    struct kp_view *v = kp_view_acquire(&n->views);
    if (v == NULL)
        return false;
    const struct kp_member *m = kp_view_member(v, n->cfg->node_name);
    bool meter = m != NULL && m->meter;
    kp_view_release(v);
    return meter;
}

static void open_store(struct kp_node *n)
{
    struct kp_metering *mt = n->metering;
    char dir[4096], errmsg[512];
    snprintf(dir, sizeof(dir), "%s/meter", n->cfg->data_dir);
    struct kp_meter_store_options o = {.dir = dir,
                                       .raw_retention_ms = n->cfg->meter_retention_ms,
                                       .max_segment_bytes = n->rt->control_limits.max_body_bytes};
    if (kp_meter_store_open(&o, &mt->store, errmsg, sizeof(errmsg)) != KP_OK) {
        if (!mt->store_failed)
            kp_error("meter", "cannot open the meter store: %s; retrying every second", errmsg);
        mt->store_failed = true;
        return;
    }
    kp_info("meter", "this node is a meter: usage segments are stored in %s", dir);
}

static uint64_t delta(uint64_t now, uint64_t *last)
{
    uint64_t d = now - *last;
    *last = now;
    return d;
}

bool kp_metering_spool_ok(struct kp_node *n, const char **why)
{
    struct kp_spool_stats st;
    if (n->metering == NULL)
        return true;
    kp_spool_get_stats(n->metering->spool, &st);
    if (st.write_error)
        *why = "the usage spool cannot write (disk full?)";
    else if (!kp_spool_accepting(n->metering->spool))
        *why = "the usage spool is full and set to refuse calls";
    else
        return true;
    return false;
}

void kp_metering_health(struct kp_node *n, struct kp_metering_health *out)
{
    struct kp_spool_stats ss;
    memset(out, 0, sizeof(*out));
    if (n->metering == NULL)
        return;
    kp_spool_get_stats(n->metering->spool, &ss);
    out->spool_bytes = ss.bytes;
    out->spool_cap_bytes = ss.max_bytes;
    out->spool_waiting = ss.waiting;
    uint64_t seq;
    char path[4200];
    struct stat st;
    if (kp_spool_sealed(n->metering->spool, &seq, 1) == 0)
        return;
    /* A sealed segment is not written again: its mtime is when it was
     * sealed, which is when it started waiting. */
    kp_spool_segment_path(n->metering->spool, seq, path, sizeof(path));
    if (stat(path, &st) == 0) {
        int64_t sealed = (int64_t)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000;
        int64_t age = kp_now_unix_ms() - sealed;
        out->oldest_unshipped_ms = age > 0 ? age : 1;
    }
}

static void on_tick(uv_timer_t *t)
{
    struct kp_node *n = t->data;
    struct kp_metering *mt = n->metering;
    kp_node_note_leader(n);
    if (mt->store == NULL && registry_says_meter(n))
        open_store(n);
    struct kp_spool_stats ss;
    kp_spool_get_stats(mt->spool, &ss);
    kp_metric_set(mt->g_spool_bytes, (int64_t)ss.bytes);
    kp_metric_set(mt->g_spool_cap, (int64_t)ss.max_bytes);
    kp_metric_set(mt->g_spool_waiting, (int64_t)ss.waiting);
    kp_metric_add(mt->c_dropped, (int64_t)delta(ss.dropped, &mt->last_dropped));
    kp_metric_add(mt->c_committed, (int64_t)delta(ss.committed, &mt->last_committed));
    kp_metric_add(mt->c_quarantined, (int64_t)delta(ss.quarantined, &mt->last_quarantined));
    if (mt->shipper != NULL) {
        struct kp_shipper_stats hs;
        kp_shipper_get_stats(mt->shipper, &hs);
        kp_metric_add(mt->c_shipped, (int64_t)delta(hs.deliveries, &mt->last_shipped));
        kp_metric_add(mt->c_ship_failures, (int64_t)delta(hs.failures, &mt->last_ship_fail));
    }
    if (mt->store != NULL) {
        struct kp_meter_store_stats ms;
        kp_meter_store_get_stats(mt->store, &ms);
        kp_metric_set(mt->g_meter_pending, (int64_t)ms.pending);
        kp_metric_add(mt->c_meter_stored, (int64_t)delta(ms.stored, &mt->last_stored));
        kp_metric_add(mt->c_meter_dups, (int64_t)delta(ms.duplicates, &mt->last_dups));
        kp_metric_add(mt->c_meter_rejected, (int64_t)delta(ms.rejected, &mt->last_rejected));
        kp_metric_set(mt->g_meter_newest, ms.newest_event_ms / 1000);
    }
}

/* --- lifecycle ------------------------------------------------------------------- */

size_t kp_metering_segment_max(const struct kp_config *cfg)
{
    return (size_t)cfg->spool_seal_bytes * 2 + 65536;
}

int kp_metering_open(struct kp_node *n, char *errmsg, size_t errlen)
{
    const struct kp_config *c = n->cfg;
    if (strlen(c->node_name) > KP_SEGMENT_NODE_MAX) {
        snprintf(errmsg, errlen, "node_name: at most %d bytes (it names usage segments)",
                 KP_SEGMENT_NODE_MAX);
        return KP_ECONFIG;
    }
    struct kp_metering *mt = kp_calloc(1, sizeof(*mt));
    if (mt == NULL)
        return KP_ENOMEM;
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/spool", c->data_dir);
    struct kp_spool_options o = {.dir = dir,
                                 .node = c->node_name,
                                 .seal_bytes = (uint64_t)c->spool_seal_bytes,
                                 .seal_age_ms = c->spool_seal_age_ms,
                                 .max_bytes = (uint64_t)c->spool_max_bytes,
                                 .refuse_when_full = strcmp(c->spool_full, "refuse") == 0,
                                 .queue_bytes = (uint64_t)c->spool_seal_bytes};
    int rc = kp_spool_open(&o, &mt->spool, errmsg, errlen);
    if (rc != KP_OK) {
        kp_free(mt);
        return rc;
    }
    mt->g_spool_bytes =
        kp_metric_gauge("keyplane_spool_bytes", "Bytes of usage segments in this node's spool");
    mt->g_spool_cap = kp_metric_gauge("keyplane_spool_cap_bytes", "The spool's size cap");
    mt->g_spool_waiting = kp_metric_gauge("keyplane_spool_segments_waiting",
                                          "Sealed usage segments not yet delivered to every meter");
    mt->c_dropped = kp_metric_counter("keyplane_usage_events_dropped_total",
                                      "Usage events lost: the spool was full or behind");
    mt->c_committed = kp_metric_counter("keyplane_usage_events_committed_total",
                                        "Usage events made durable in the spool");
    mt->c_quarantined = kp_metric_counter("keyplane_spool_quarantined_total",
                                          "Damaged usage segments moved to quarantine");
    mt->c_shipped = kp_metric_counter("keyplane_segments_shipped_total",
                                      "Usage segment deliveries a meter acknowledged");
    mt->c_ship_failures = kp_metric_counter("keyplane_segment_ship_failures_total",
                                            "Failed usage segment deliveries");
    mt->g_meter_pending = kp_metric_gauge("keyplane_meter_segments_pending",
                                          "Segments this meter stored but not yet compacted");
    mt->c_meter_stored =
        kp_metric_counter("keyplane_meter_segments_stored_total", "Segments this meter stored");
    mt->c_meter_dups = kp_metric_counter("keyplane_meter_segments_duplicate_total",
                                         "Deliveries of segments this meter already had");
    mt->c_meter_rejected = kp_metric_counter("keyplane_meter_segments_rejected_total",
                                             "Invalid or conflicting segment deliveries refused");
    mt->g_meter_newest =
        kp_metric_gauge("keyplane_meter_newest_event_seconds",
                        "Unix time of the newest compacted usage event (meter lag = now - this)");
    n->metering = mt;
    return KP_OK;
}

int kp_metering_start(struct kp_node *n, char *errmsg, size_t errlen)
{
    struct kp_metering *mt = n->metering;
    struct kp_shipper_options so = {.spool = mt->spool,
                                    .targets = ship_targets,
                                    .arg = n,
                                    .https = n->cfg->tls_control,
                                    .ca_file = n->cfg->tls_ca_file,
                                    .cert_file = n->cfg->tls_cert_file,
                                    .key_file = n->cfg->tls_key_file};
    int rc = kp_shipper_start(&so, &mt->shipper, errmsg, errlen);
    if (rc != KP_OK)
        return rc;
    uv_timer_init(n->rt->main_loop, &mt->tick);
    mt->tick.data = n;
    mt->tick_open = true;
    uv_timer_start(&mt->tick, on_tick, 0, 1000);
    return KP_OK;
}

void kp_metering_stop_timer(struct kp_node *n)
{
    struct kp_metering *mt = n->metering;
    if (mt != NULL && mt->tick_open) {
        uv_close((uv_handle_t *)&mt->tick, NULL);
        mt->tick_open = false;
    }
}

void kp_metering_close(struct kp_node *n)
{
    struct kp_metering *mt = n->metering;
    if (mt == NULL)
        return;
    kp_shipper_stop(mt->shipper);
    kp_spool_close(mt->spool); /* seals: the shipper delivers it at the next start */
    kp_meter_store_close(mt->store);
    kp_free(mt);
    n->metering = NULL;
}

struct kp_meter_store *kp_metering_store(struct kp_node *n)
{
    struct kp_metering *mt = n->metering;
    if (mt == NULL)
        return NULL;
    /* The registry may have named this node a meter since the last tick. */
    if (mt->store == NULL && registry_says_meter(n))
        open_store(n);
    return mt->store;
}

/* --- POST /internal/v1/segments ------------------------------------------------------ */

struct ingest {
    uv_work_t work;
    struct kp_meter_store *store;
    struct kp_http_exchange *ex;
    char rid[160];
    char *buf;
    size_t len;
    int rc;
    bool duplicate;
    char errmsg[512];
};

static void ingest_work(uv_work_t *w)
{
    struct ingest *in = w->data;
    in->rc = kp_meter_store_put(in->store, in->buf, in->len, &in->duplicate, in->errmsg,
                                sizeof(in->errmsg));
}

static void ingest_done(uv_work_t *w, int status)
{
    struct ingest *in = w->data;
    (void)status;
    switch (in->rc) {
    case KP_OK:
        kp_node_respond_json(in->ex, 200, in->rid,
                             json_pack("{s:s}", "result", in->duplicate ? "duplicate" : "stored"));
        break;
    case KP_EPARSE:
        kp_admin_error(in->ex, 400, in->rid, "invalid_request", "invalid_segment", NULL,
                       in->errmsg);
        break;
    case KP_ECONFLICT:
        kp_admin_error(in->ex, 409, in->rid, "conflict", "segment_conflict", NULL, in->errmsg);
        break;
    case KP_ETOOBIG:
        kp_admin_error(in->ex, 413, in->rid, "invalid_request", "segment_too_large", NULL,
                       in->errmsg);
        break;
    default:
        kp_admin_error(in->ex, 503, in->rid, "unavailable", "meter_storage", NULL,
                       in->rc == KP_ENOMEM ? "out of memory" : in->errmsg);
        break;
    }
    kp_free(in->buf);
    kp_free(in);
}

void kp_metering_ingest(struct kp_node *n, struct kp_http_exchange *ex,
                        const struct kp_http_request *req, const char *rid)
{
    struct kp_meter_store *store = kp_metering_store(n);
    if (store == NULL) {
        kp_admin_error(ex, 503, rid, "unavailable", "not_a_meter", NULL,
                       "this node is not a meter (yet): the registry does not name it one, or "
                       "its store is still opening");
        return;
    }
    struct ingest *in = kp_calloc(1, sizeof(*in));
    char *copy = in ? kp_malloc(req->body_len ? req->body_len : 1) : NULL;
    if (copy == NULL) {
        kp_free(in);
        kp_admin_error(ex, 503, rid, "unavailable", "out_of_memory", NULL, "out of memory");
        return;
    }
    memcpy(copy, req->body, req->body_len);
    in->store = store;
    in->ex = ex;
    snprintf(in->rid, sizeof(in->rid), "%s", rid);
    in->buf = copy;
    in->len = req->body_len;
    in->work.data = in;
    if (uv_queue_work(kp_http_loop(ex), &in->work, ingest_work, ingest_done) != 0) {
        kp_free(copy);
        kp_free(in);
        kp_admin_error(ex, 503, rid, "unavailable", "busy", NULL, "retry shortly");
    }
}

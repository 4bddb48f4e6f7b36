/* Part of meter/meter.h; include that.
 *
 * The meter's store (docs/meter.md, "Meter"): sealed segments received
 * from routers, kept raw for event searches, and compacted into one rollup
 * file per UTC day (rollup.h) by a compactor thread.
 *
 *   DIR/segments/NODE/SEQ.kpseg   raw segments as received (validated)
 *   DIR/rollups/YYYY-MM-DD.kpru   each day's rollups and the set of
 *                                 segments merged into them
 *
 * A day file records which (node, sequence) it holds, so compaction is
 * idempotent: after a crash anywhere, a segment is merged into each day it
 * touches exactly once, and two meters that received the same segments hold
 * byte-identical day files. Every function is thread-safe. */
#ifndef KP_METER_STORE_H
#define KP_METER_STORE_H

struct kp_meter_store_options {
    const char *dir;          /* created when missing */
    int64_t raw_retention_ms; /* raw segments older than this are deleted once
                                 compacted; 0 = 30 days */
    int64_t compact_delay_ms; /* wait this long after a segment arrives to
                                 compact it with others; 0 = 200 ms */
    size_t max_segment_bytes; /* larger uploads are refused; 0 = 64 MiB */
};

struct kp_meter_store_stats {
    uint64_t stored;         /* segments stored since open */
    uint64_t duplicates;     /* deliveries of a segment already stored */
    uint64_t rejected;       /* invalid or conflicting deliveries */
    uint64_t compacted;      /* segment merges into day files since open */
    uint64_t pending;        /* segments stored but not yet compacted */
    uint64_t quarantined;    /* stored segments found damaged at compaction */
    uint64_t segments;       /* raw segments on disk */
    uint64_t raw_bytes;      /* their size */
    int64_t newest_event_ms; /* the latest event time compacted; 0 when none */
};

struct kp_meter_store;

int kp_meter_store_open(const struct kp_meter_store_options *opt, struct kp_meter_store **out,
                        char *errmsg, size_t errlen);
void kp_meter_store_close(struct kp_meter_store *m);

/* Store one segment as delivered by a router. It must be sealed and valid.
 * KP_OK when it is now durable (*duplicate tells whether it was already
 * there byte for byte); KP_EPARSE (invalid, not sealed; @errmsg says where),
 * KP_ECONFLICT (this node and sequence are stored with other bytes),
 * KP_ETOOBIG, KP_EIO, KP_ENOMEM. */
int kp_meter_store_put(struct kp_meter_store *m, const void *buf, size_t len, bool *duplicate,
                       char *errmsg, size_t errlen);
/* Wait until every segment stored before the call is compacted. */
int kp_meter_store_flush(struct kp_meter_store *m);
void kp_meter_store_get_stats(struct kp_meter_store *m, struct kp_meter_store_stats *st);

/* Answer a usage query from the day files (*out: free with
 * kp_usage_result_free). KP_ETOOBIG: too many rows. */
int kp_meter_store_query(struct kp_meter_store *m, const struct kp_usage_query *q,
                         struct kp_usage_result **out, char *errmsg, size_t errlen);

/* A search of raw events (GET /admin/v1/usage/events). NULL or "" strings
 * match anything; @model matches the served or the requested model. */
struct kp_usage_event_filter {
    int64_t from_ms, to_ms; /* [from, to) */
    const char *request_id, *key, *tenant, *project, *model, *error_class, *kind;
    const char *trace_id;
    size_t limit;
};
/* *out: {"events": [...], "truncated": bool, "segments_scanned": N}. */
int kp_meter_store_events(struct kp_meter_store *m, const struct kp_usage_event_filter *f,
                          json_t **out, char *errmsg, size_t errlen);

#endif

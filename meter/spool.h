/* Part of meter/meter.h; include that.
 *
 * The spool: where a router's usage events become durable segments
 * (docs/meter.md, "Spool").
 *
 * Worker threads hand events to kp_spool_append(), which encodes them and
 * queues the bytes (a mutex held for one memcpy), or already encoded ones
 * to kp_spool_append_encoded(). One spool thread takes
 * the queue at most every commit_interval_ms, writes it as one frame of the
 * open segment and fdatasyncs it (group commit), and seals the segment when
 * it reaches seal_bytes or seal_age_ms. Sealed segments wait in the
 * directory until the shipper (ship.c) has delivered them to every meter and
 * removes them. On open, a leftover open segment is cut back to its last
 * whole frame and sealed; a sealed segment that fails validation is moved to
 * quarantine/ and reported, never dropped. */
#ifndef KP_METER_SPOOL_H
#define KP_METER_SPOOL_H

struct kp_spool_options {
    const char *dir;            /* created when missing */
    const char *node;           /* the node name written in segment headers */
    uint64_t seal_bytes;        /* seal at this size; 0 = 4 MiB */
    int64_t seal_age_ms;        /* seal when this old; 0 = 10 s */
    int64_t commit_interval_ms; /* at most one fdatasync per interval; 0 = 20 ms */
    uint64_t max_bytes;         /* the spool's cap on disk; 0 = 1 GiB */
    bool refuse_when_full;      /* at the cap: false = keep serving (events past
                                   the cap are dropped and counted), true = stop
                                   accepting calls (kp_spool_accepting) */
    uint64_t queue_bytes;       /* encoded events waiting for the spool thread;
                                   0 = 8 MiB; past it events are dropped and counted */
};

struct kp_spool_stats {
    uint64_t appended;    /* events queued */
    uint64_t committed;   /* events durable on disk */
    uint64_t dropped;     /* events lost: spool full or queue overflow */
    uint64_t sealed;      /* segments sealed since the spool opened */
    uint64_t quarantined; /* segments moved to quarantine/ since it opened */
    uint64_t bytes;       /* on disk: sealed segments waiting plus the open one */
    uint64_t max_bytes;
    uint64_t waiting; /* sealed segments not yet removed */
    bool full;        /* bytes >= max_bytes */
    bool write_error; /* the last write failed (disk full?); retried */
};

struct kp_spool;

/* Recover the directory and start the spool thread. KP_EIO with @errmsg
 * when the directory cannot be used; KP_ENOMEM. */
int kp_spool_open(const struct kp_spool_options *opt, struct kp_spool **out, char *errmsg,
                  size_t errlen);
/* Commit what is queued, seal the open segment, stop the thread, free. */
void kp_spool_close(struct kp_spool *s);
/* Queue one event (any thread; never blocks on I/O). KP_OK, KP_EINVAL (the
 * event does not pass kp_usage_event_check), KP_EBUSY (dropped: the spool
 * is full or the queue overflowed; counted in stats). */
int kp_spool_append(struct kp_spool *s, const struct kp_usage_event *ev);
/* kp_spool_append for an event already encoded (kp_usage_event_encode, so
 * checked), of @len bytes at @enc: KP_OK or KP_EBUSY. */
int kp_spool_append_encoded(struct kp_spool *s, int64_t time_ms, const void *enc, size_t len);
/* False when calls should be refused: full with refuse_when_full. */
bool kp_spool_accepting(struct kp_spool *s);
void kp_spool_get_stats(struct kp_spool *s, struct kp_spool_stats *st);
/* Wait until every event appended before the call is durable, and the
 * segment holding them sealed when @seal. KP_OK, or KP_EIO when the spool
 * cannot write (the events stay queued). */
int kp_spool_sync(struct kp_spool *s, bool seal);
/* The sequence numbers of the sealed segments waiting, oldest first: at
 * most @max into @seqs; returns how many are waiting in all. */
size_t kp_spool_sealed(struct kp_spool *s, uint64_t *seqs, size_t max);
/* The path of sealed segment @seq ("DIR/00000000000000000042.kpseg"). */
void kp_spool_segment_path(struct kp_spool *s, uint64_t seq, char *out, size_t len);
/* The directory and node name the spool was opened with. */
const char *kp_spool_dir(struct kp_spool *s);
const char *kp_spool_node(struct kp_spool *s);
/* Delivered everywhere: delete sealed segment @seq. */
int kp_spool_remove(struct kp_spool *s, uint64_t seq);
/* Move sealed segment @seq to quarantine/ with a note saying @why. */
int kp_spool_quarantine(struct kp_spool *s, uint64_t seq, const char *why);

/* --- shipping (ship.c) ---------------------------------------------------------------
 *
 * A shipper thread delivers the spool's sealed segments to every meter
 * (POST /internal/v1/segments on its control listener, with the cluster
 * secret), records which meters acknowledged each one in SEQ.acks, and
 * removes a segment once every current meter has it. Failures back off per
 * meter (0.1 s doubling to 30 s); a segment a meter calls invalid is
 * quarantined. */

struct kp_ship_target {
    char name[129];    /* the member name (what SEQ.acks records) */
    char address[257]; /* host:port of its control listener */
};

/* Fills @out with the meters to deliver to (at most @max) and @token with
 * the cluster secret; returns how many. Called on the shipper thread. */
typedef size_t (*kp_ship_targets_fn)(void *arg, struct kp_ship_target *out, size_t max, char *token,
                                     size_t token_len);

struct kp_shipper_options {
    struct kp_spool *spool;
    kp_ship_targets_fn targets;
    void *arg;
    long timeout_ms; /* per delivery; 0 = 30 s */
    /* https to the meters' control ports, verifying them against @ca_file
     * and presenting @cert_file/@key_file (the cluster's TLS, node/tls.c);
     * the strings must outlive the shipper. */
    bool https;
    const char *ca_file, *cert_file, *key_file;
};

struct kp_shipper_stats {
    uint64_t deliveries; /* acknowledged deliveries */
    uint64_t failures;   /* failed attempts */
    uint64_t removed;    /* segments delivered everywhere and removed */
    uint64_t quarantined;
    int64_t last_success_ms;
    char last_error[256];
};

struct kp_shipper;

int kp_shipper_start(const struct kp_shipper_options *opt, struct kp_shipper **out, char *errmsg,
                     size_t errlen);
/* Stop (an attempt in flight finishes first) and free. */
void kp_shipper_stop(struct kp_shipper *sh);
/* Look at the spool now instead of at the next poll. */
void kp_shipper_kick(struct kp_shipper *sh);
void kp_shipper_get_stats(struct kp_shipper *sh, struct kp_shipper_stats *st);

#endif

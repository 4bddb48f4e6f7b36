/* meter: usage events and the segments that carry them from routers to
 * meters.
 *
 * A usage event is one call through keyplane (who, what, how many tokens,
 * what it cost, how it went). It is encoded as a msgpack map with short
 * stable keys (usage_event.c). Events travel in segments: a fixed header,
 * then frames of zstd-compressed concatenated events each with its own
 * checksums, then a footer when the segment is sealed (segment.c). The exact
 * layout is specified in docs/segment-format.md; this header is the API.
 *
 * Everything here except segment_file.c works on memory buffers and does no
 * I/O, so that unit tests and fuzzers reach it directly. Input is untrusted:
 * the decoders never read outside the buffer, never allocate more than a
 * bounded amount (one frame of at most KP_SEGMENT_FRAME_MAX_RAW bytes) and
 * report what is wrong with the byte offset where they found it. */
#ifndef KP_METER_H
#define KP_METER_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/core.h"

/* Money: billionths of a US dollar. int64 holds ±9.2 billion USD. */
typedef int64_t kp_nanousd;

/* --- usage events -------------------------------------------------------- */

/* Longest string (in bytes) an event may carry; longer ones are refused by
 * the encoder and by the decoder. */
#define KP_USAGE_STR_MAX 256
/* An upper bound on one encoded event (all strings at their maximum). */
#define KP_USAGE_ENCODED_MAX 8192

/* A trace id in hex (usage_event.trace_id). */
#define KP_USAGE_TRACE_ID_LEN 32

#define KP_USAGE_KIND_APP    "app"
#define KP_USAGE_KIND_CANARY "canary"

/* One call through keyplane. Strings are NUL-terminated, valid UTF-8, at
 * most KP_USAGE_STR_MAX bytes; "" means "not applicable" (error_class of a
 * success, model_served of a call that never reached a provider). Integers
 * other than time_ms and cost are non-negative and at most INT64_MAX so that
 * every value survives JSON. */
struct kp_usage_event {
    int64_t time_ms; /* Unix ms when the call started */
    char request_id[KP_USAGE_STR_MAX + 1];
    char node[KP_USAGE_STR_MAX + 1]; /* router node that served it */
    char key_id[KP_USAGE_STR_MAX + 1];
    char pool[KP_USAGE_STR_MAX + 1];
    char tenant[KP_USAGE_STR_MAX + 1];
    char project[KP_USAGE_STR_MAX + 1];
    char feature[KP_USAGE_STR_MAX + 1];
    char provider[KP_USAGE_STR_MAX + 1];
    char model_requested[KP_USAGE_STR_MAX + 1];
    char model_served[KP_USAGE_STR_MAX + 1];
    uint64_t tokens_in;
    uint64_t tokens_out;
    uint64_t tokens_cached;
    bool tokens_estimated; /* counted locally, not reported by the provider */
    kp_nanousd cost;
    uint64_t ttfb_us;
    uint64_t total_us;
    uint16_t status; /* HTTP status sent to the app, 0 when none was */
    /* "", auth, rate_limit, quota, server, timeout, connect, client,
     * canary, ... (DESIGN.md "Health and failover"). */
    char error_class[KP_USAGE_STR_MAX + 1];
    uint32_t retries;
    bool streamed;
    char kind[KP_USAGE_STR_MAX + 1]; /* KP_USAGE_KIND_APP or _CANARY */
    /* The call's W3C trace id, 32 lower-case hex digits; "" when unknown
     * (events written before traces were, canaries). Optional on the
     * wire: left out when empty. */
    char trace_id[KP_USAGE_TRACE_ID_LEN + 1];
};

/* Zero every field and set kind to "app". */
void kp_usage_event_init(struct kp_usage_event *ev);

/* Copy @s into one of @ev's string fields. KP_ETOOBIG when longer than
 * KP_USAGE_STR_MAX (the field is then left empty). */
int kp_usage_set_str(char dst[KP_USAGE_STR_MAX + 1], const char *s);

/* True when @s[0..len) may be an event or segment string: at most
 * KP_USAGE_STR_MAX bytes, valid UTF-8, no NUL byte. */
bool kp_usage_str_valid(const char *s, size_t len);

/* Check @ev against the rules the decoder enforces (string bounds and
 * encoding, required non-empty strings, integer ranges). KP_OK, or
 * KP_EINVAL with a message naming the field in @errmsg. */
int kp_usage_event_check(const struct kp_usage_event *ev, char *errmsg, size_t errlen);

/* Append @ev to @out as one msgpack map. The event is checked first; on
 * error (KP_EINVAL, KP_ENOMEM) @out is left as it was. */
int kp_usage_event_encode(const struct kp_usage_event *ev, struct kp_buf *out, char *errmsg,
                          size_t errlen);

/* Decode the msgpack map at the start of @buf[0..len) into @ev. On KP_OK,
 * *used is the map's length in bytes. On KP_EPARSE, *used is the offset of
 * the offending byte and @errmsg says what is wrong, naming the field: a
 * wrong type, an out-of-range value, an oversized or invalid string, a
 * duplicate or missing field, or truncated input. Unknown keys are skipped
 * (a newer writer may add fields); every field of version 1 is required,
 * except the optional ones added since (trace_id). */
int kp_usage_event_decode(const void *buf, size_t len, struct kp_usage_event *ev, size_t *used,
                          char *errmsg, size_t errlen);

/* @ev as a JSON object keyed by the field names above (plus "time", the
 * ISO 8601 form of time_ms). NULL when out of memory. */
json_t *kp_usage_event_to_json(const struct kp_usage_event *ev);

/* --- segments ------------------------------------------------------------ */

#define KP_SEGMENT_VERSION           1
#define KP_SEGMENT_HEADER_SIZE       128
#define KP_SEGMENT_FRAME_HEADER_SIZE 40
#define KP_SEGMENT_FOOTER_SIZE       64
#define KP_SEGMENT_NODE_MAX          63
#define KP_SEGMENT_FLAG_SEALED       1u
/* A frame's uncompressed payload is at most this long; readers refuse
 * frames that claim more, so a corrupt length cannot make them allocate. */
#define KP_SEGMENT_FRAME_MAX_RAW (16u << 20)
/* Default frame size a writer aims for (uncompressed bytes). */
#define KP_SEGMENT_FRAME_DEFAULT (1u << 20)

/* Bit-reflected CRC-32C (Castagnoli), as used by iSCSI and ext4: start with
 * crc = 0; chain by passing the previous result. "123456789" -> 0xe3069283. */
uint32_t kp_segment_crc32c(uint32_t crc, const void *buf, size_t len);

struct kp_segment_header {
    uint16_t version;
    uint32_t flags; /* KP_SEGMENT_FLAG_SEALED */
    uint64_t seq;   /* per node, strictly increasing */
    int64_t created_ms;
    char node[KP_SEGMENT_NODE_MAX + 1];
};

struct kp_segment_writer_options {
    const char *node; /* 1..KP_SEGMENT_NODE_MAX bytes of UTF-8 */
    uint64_t seq;
    int64_t created_ms;
    size_t frame_bytes; /* aim for frames this big uncompressed; 0 = default */
    int zstd_level;     /* 0 = zstd's default */
};

/* Builds a segment in memory, to be written out by the caller.
 *
 * Bytes to append to the file accumulate in @out; the caller writes them and
 * drops them with kp_segment_writer_consume() (the spool does this at each
 * group commit), or keeps them all (an in-memory segment). Events go to a
 * pending frame; kp_segment_writer_flush() compresses it into @out, and add
 * flushes by itself first when the pending frame has reached frame_bytes
 * (so a frame holds frame_bytes plus at most one event). Sealing
 * flushes, appends the footer and produces the sealed header: the caller
 * must overwrite the file's first KP_SEGMENT_HEADER_SIZE bytes with
 * @sealed_header after the footer is durable (when the header is still in
 * @out, the writer patches it there itself). Every function leaves the
 * writer as it was when it fails, so the caller may retry. */
struct kp_segment_writer {
    struct kp_segment_header header;
    struct kp_buf out;
    uint64_t out_offset; /* file offset of out.data[0] */
    uint64_t frames;
    uint64_t events; /* in frames written to @out */
    int64_t min_time_ms, max_time_ms;
    bool sealed;
    uint8_t sealed_header[KP_SEGMENT_HEADER_SIZE];
    char errmsg[256];
    /* Private. */
    struct kp_buf pending; /* encoded events of the next frame */
    uint32_t pending_events;
    int64_t pending_min, pending_max;
    uint32_t frames_crc;
    uint64_t frames_len;
    size_t frame_bytes;
    int zstd_level;
    void *cctx;
};

/* KP_EINVAL (bad options, errmsg says which), KP_ENOMEM. */
int kp_segment_writer_init(struct kp_segment_writer *w,
                           const struct kp_segment_writer_options *opt);
/* Add one event (checked first: KP_EINVAL names the field). */
int kp_segment_writer_add(struct kp_segment_writer *w, const struct kp_usage_event *ev);
/* Add one event already encoded by kp_usage_event_encode() (@enc[0..len),
 * its time @time_ms), e.g. by another thread; the bytes are trusted. */
int kp_segment_writer_add_encoded(struct kp_segment_writer *w, const void *enc, size_t len,
                                  int64_t time_ms);
/* Compress the pending events, if any, into one frame in @out. */
int kp_segment_writer_flush(struct kp_segment_writer *w);
/* Flush, append the footer, compute @sealed_header. No add after this. */
int kp_segment_writer_seal(struct kp_segment_writer *w);
/* The caller has written the first @n bytes of @out. */
void kp_segment_writer_consume(struct kp_segment_writer *w, size_t n);
void kp_segment_writer_close(struct kp_segment_writer *w);

/* Iterates over the events of a segment in memory (open or sealed).
 *
 * Each frame is verified before any of its events is yielded (header
 * checksum, bounds, payload checksum, decompression to the declared size),
 * so a torn or corrupt frame yields nothing. Its events are then decoded one
 * at a time; a frame that passed those checks can still hold an event that
 * fails to decode only if its writer was broken, and then the events before
 * that one have been yielded. Errors are sticky and say where: @err_offset
 * is the file offset of the structure (header, header field, frame, payload,
 * footer, footer field) found wrong, and @valid_len the end of the last
 * whole valid frame, where a torn open segment is cut back to. The reader
 * keeps a pointer to @buf, which must outlive it, and allocates one zstd
 * context and one buffer of at most KP_SEGMENT_FRAME_MAX_RAW bytes. */
struct kp_segment_reader {
    struct kp_segment_header header;
    uint64_t frames;     /* whole frames read so far */
    uint64_t events;     /* events yielded so far */
    int64_t min_time_ms; /* over the events yielded; 0 when none */
    int64_t max_time_ms;
    size_t valid_len; /* bytes known to form a valid segment prefix */
    bool sealed;      /* the footer was reached and matched */
    int err;          /* KP_OK, or the sticky error */
    size_t err_offset;
    char errmsg[256];
    /* Private. */
    const uint8_t *buf;
    size_t len;
    size_t pos;       /* offset of the next frame or of the footer */
    size_t frame_off; /* offset of the current frame */
    uint8_t *raw;     /* its decompressed payload */
    size_t raw_cap, raw_len, raw_pos;
    uint32_t frame_left, frame_events;
    int64_t frame_min, frame_max; /* as its header claims */
    int64_t seen_min, seen_max;   /* as its events so far say */
    uint32_t frames_crc;
    bool done;
    void *dctx;
};

/* Parse and verify the header (KP_OK, or KP_EPARSE with @errmsg and
 * @err_offset set). kp_segment_reader_close() is safe to call either way. */
int kp_segment_reader_init(struct kp_segment_reader *r, const void *buf, size_t len);
/* True with *ev filled: the next event. False: the end when @err is KP_OK (a
 * whole open segment, or a sealed one whose footer matched), else the error:
 * KP_EPARSE (corrupt or torn), KP_ETOOBIG (a frame claims more than the
 * limits), KP_ENOMEM. */
bool kp_segment_reader_next(struct kp_segment_reader *r, struct kp_usage_event *ev);
void kp_segment_reader_close(struct kp_segment_reader *r);

/* What a full pass over a segment found. */
struct kp_segment_summary {
    struct kp_segment_header header;
    bool sealed;
    uint64_t frames, events;
    int64_t min_time_ms, max_time_ms;
    size_t valid_len;
    size_t err_offset;
    char errmsg[256];
};

/* Read the whole segment. KP_OK when all of @buf is a valid segment, open or
 * sealed; else the reader's error, with @out saying where and why. */
int kp_segment_scan(const void *buf, size_t len, struct kp_segment_summary *out);
/* kp_segment_scan() that also requires the segment to be sealed. */
int kp_segment_validate(const void *buf, size_t len, struct kp_segment_summary *out);
/* How many leading bytes of @buf form a valid segment: the header and every
 * whole valid frame after it (all of @buf when it ends in a valid footer).
 * This is where a torn open segment is cut back to. KP_OK even when a tail
 * is cut; KP_EPARSE (and 0) when the header itself is torn or invalid;
 * KP_ENOMEM. */
int kp_segment_scan_valid_prefix(const void *buf, size_t len, size_t *valid_len);

/* --- segment files (segment_file.c) -------------------------------------- */

/* Read the file at @path into @out (replacing its content). Files longer
 * than @max_len are refused with KP_ETOOBIG. On error @errmsg holds a
 * message for a person ("No such file or directory"). */
int kp_segment_file_read(const char *path, size_t max_len, struct kp_buf *out, char *errmsg,
                         size_t errlen);

/* --- CSV (csv.c), RFC 4180 ----------------------------------------------- */

/* Append one field to @out, quoted when it holds a comma, a double quote,
 * CR or LF, or starts/ends with a space, or starts with a UTF-8 byte-order
 * mark (quotes doubled inside); a comma first unless @first. KP_ENOMEM, and
 * @out is left as it was. */
int kp_csv_field(struct kp_buf *out, const char *s, size_t len, bool first);
/* End the record: "\r\n". */
int kp_csv_end(struct kp_buf *out);

/* Reads records from a CSV text in memory (RFC 4180: CRLF or LF line
 * ends, quoted fields with doubled quotes, embedded line breaks; a UTF-8
 * byte-order mark at the start is skipped). Untrusted input: a record of
 * more than KP_CSV_MAX_FIELDS fields or a field over KP_CSV_MAX_FIELD bytes
 * is an error, never an allocation to match. */
#define KP_CSV_MAX_FIELDS 256
#define KP_CSV_MAX_FIELD  (64u << 10)
struct kp_csv_reader {
    const char *buf;
    size_t len, pos;
    size_t line;                     /* 1-based line where the current record starts */
    char *fields[KP_CSV_MAX_FIELDS]; /* NUL-terminated, valid until the next call */
    size_t n_fields;                 /* at least 1 in a record */
    int err;                         /* KP_OK, or the sticky error */
    char errmsg[160];
    /* Private. */
    struct kp_buf text; /* the fields' storage */
    size_t next_line;   /* where the next record starts */
};
void kp_csv_reader_init(struct kp_csv_reader *r, const void *buf, size_t len);
/* True: a record is in fields[0..n_fields) (a blank line is one empty
 * field). False: the end when @err is KP_OK, else the error, which sticks:
 * KP_EPARSE (errmsg says which line and why: an unterminated quote, a stray
 * quote, text after a closing quote, too many fields, a field too long, a
 * NUL byte) or KP_ENOMEM. */
bool kp_csv_next(struct kp_csv_reader *r);
void kp_csv_reader_close(struct kp_csv_reader *r);

/* The rest of the API, one header per part (include meter.h, not them). */
#include "meter/rollup.h"    /* rollups, the latency sketch, usage queries */
#include "meter/reconcile.h" /* vendor bills against metered usage */
#include "meter/spool.h"     /* the router's spool, sealing and shipping */
#include "meter/store.h"     /* the meter's segment store and compaction */

#endif

/* router/upstream: HTTP calls to providers, libcurl's multi-socket API on a
 * worker's libuv loop (router/upstream.h).
 *
 * Happy path: kp_upstream_start validates the request, makes one allocation
 * (the call, its curl_slist nodes and its header strings), takes an easy
 * handle from the free list and adds it to the multi handle. curl then says
 * which sockets to watch (CURLMOPT_SOCKETFUNCTION -> one uv_poll_t per
 * socket) and when to wake it (CURLMOPT_TIMERFUNCTION -> one uv_timer_t);
 * every poll or timer event goes to curl_multi_socket_action, after which
 * finished transfers are read with curl_multi_info_read. Header lines are
 * collected until the final (non-1xx) head is complete, then on_head runs
 * once; body bytes go to on_body as they arrive; on_done runs once curl
 * reports the transfer finished. The easy handle goes back to the free list
 * and its connection stays in the multi handle's cache for the next call.
 *
 *   start --add--> CONNECT --prereq--> HEAD --final head--> BODY --done--> DONE
 *                     |                  |                   | (pause <-> resume)
 *                     +------------------+-------------------+--error/timeout--> DONE
 *   any state --cancel--> CANCELLED: no callback; an unfinished exchange closes
 *                         its connection (HTTP/2: resets its stream)
 *
 * How it fails: curl errors map onto enum kp_upstream_result (result_of).
 * The connect timeout is curl's (CURLOPT_CONNECTTIMEOUT_MS: DNS, TCP and
 * TLS); the first-byte, idle and total timeouts are one uv_timer_t per call
 * armed at the earliest deadline that applies (the idle deadline moves with
 * every body callback without touching the timer). When one passes, the
 * call is taken out of the multi handle mid-transfer, which makes curl close
 * the connection, and on_done reports the timeout. curl sets no timeout of
 * its own besides the connect one, so CURLE_OPERATION_TIMEDOUT always means
 * the connect phase.
 *
 * Re-entrancy: user callbacks run inside curl (curl_multi_socket_action,
 * curl_easy_pause), where curl refuses curl_multi_add_handle and
 * curl_multi_remove_handle. While u->depth > 0, cancel, start and resume
 * only mark the call and queue it on u->todo; after_curl does the work once
 * curl has returned. A cancelled call's curl callbacks fail its transfer, so
 * nothing reaches the user after kp_upstream_cancel. on_done runs only from
 * the loop (completions, a call's timer), never from kp_upstream_start.
 *
 * curl_global_init(CURL_GLOBAL_DEFAULT) must have run before
 * kp_upstream_new: the process does it once in main (tests in theirs), while
 * no other thread is running. */
#include "router/upstream.h"

#include <curl/curl.h>
#include <stdalign.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

/* Easy handles (and their header buffers) kept for reuse per upstream. */
#define SPARE_MAX 32
/* Parsed URLs kept for CURLOPT_CURLU (url_take). */
#define URLS_MAX 16
/* A header buffer that grew beyond this is not kept. */
#define HEAD_KEEP ((size_t)16 << 10)
/* Limits on a response head (curl has its own per-line limit). */
#define HEAD_MAX_BYTES ((size_t)64 << 10)
#define HEAD_MAX_LINES 256
/* Limits on what a caller may send. */
#define URL_MAX          ((size_t)16 << 10)
#define REQ_HEADERS_MAX  ((size_t)64 << 10)
#define REQ_HEADER_COUNT 256u

enum call_state { ST_CONNECT, ST_HEAD, ST_BODY };
enum { METHOD_POST, METHOD_GET, METHOD_HEAD, METHOD_OTHER };

/* The per-call options an easy handle was last given, so a call sets only
 * those that differ: curl parses CURLOPT_PROTOCOLS_STR again on every set.
 * -1: not set yet (a new handle). */
struct easy_memo {
    int8_t allow_http, pipewait, method; /* method: a METHOD_* */
    int32_t bufsize;
    int64_t connect_ms;
};

#define EASY_MEMO_UNSET ((struct easy_memo){-1, -1, -1, -1, -1})

struct easy_slot {
    CURL *easy;
    struct kp_buf head;
    struct easy_memo memo;
};

struct sock {
    uv_poll_t poll;
    curl_socket_t fd;
    int events;  /* UV_READABLE | UV_WRITABLE the handle watches now */
    bool parked; /* curl let go of it, its connection idles in curl's cache */
    struct kp_upstream *u;
    struct sock *prev, *next;
};

/* What the upstream knows of a file descriptor number: whether curl opened
 * it through on_curl_opensocket (so on_curl_closesocket will say when it is
 * closed), and the poll handle parked on it between two transfers. */
struct fd_slot {
    struct sock *sock;
    bool ours;
};

/* A URL as curl parsed it. Each transfer is given one (CURLOPT_CURLU) and
 * curl copies it when the transfer starts, so it neither parses the URL
 * string nor assembles it again from the parts (that was 9% of a call's
 * user-space instructions with curl 7.88). Calls go to a few URLs, over and
 * over: those without a query (which may hold a key) are kept, the others
 * belong to their call alone. */
struct parsed_url {
    char *url; /* NULL: a free slot */
    CURLU *h;
    unsigned refs; /* calls holding it; never dropped while > 0 */
    uint64_t used; /* u->url_clock when last handed out */
};

struct kp_upstream {
    uv_loop_t *loop;
    CURLM *multi;
    struct parsed_url urls[URLS_MAX];
    uint64_t url_clock;
    uv_timer_t timer;
    struct kp_upstream_call *calls; /* not yet finished or released */
    struct kp_upstream_call *todo, *todo_tail;
    struct sock *socks;
    struct fd_slot *fds; /* by descriptor number */
    unsigned n_fds;
    struct easy_slot spare[SPARE_MAX];
    unsigned n_spare;
    unsigned active;
    unsigned peak_active;  /* the most calls in flight at once so far */
    unsigned depth;        /* nesting of curl calls that may run callbacks */
    unsigned open_handles; /* uv handles not closed yet: timer, polls, calls */
    bool closing;
    void (*close_cb)(void *arg);
    void *close_arg;
    void (*settled_fn)(void *arg);
    void *settled_arg;
};

struct kp_upstream_call {
    struct kp_upstream *u;
    struct kp_upstream_call *prev, *next; /* u->calls */
    struct kp_upstream_call *todo_next;
    CURL *easy;
    struct easy_memo memo; /* what easy was last set to */
    struct kp_buf head;    /* "name\0value\0" pairs, then the index */
    struct kp_upstream_callbacks cb;
    uv_timer_t timer;
    enum call_state state;
    bool linked, queued, in_multi, want_add, want_resume;
    bool paused, cancelled, finished;
    int status;
    unsigned n_headers;
    size_t skip; /* bytes curl delivers again after a pause, already given */
    enum kp_upstream_result fail;
    const char *fail_detail;
    uint32_t connect_ms, first_byte_ms, idle_ms, total_ms;
    uint64_t head_due, total_due, last_rx;
    uintptr_t body_at; /* where the last body callback's bytes were */
    size_t secret_len; /* bytes of header strings to wipe */
    char *strings;
    struct parsed_url *url; /* held until the handle is put back: kept, or own_url */
    struct parsed_url own_url;
    char errbuf[CURL_ERROR_SIZE];
    struct curl_slist nodes[]; /* then the header strings */
};

static const char *const result_names[] = {
    "ok",           "connect",       "timeout_connect", "timeout_first_byte",
    "timeout_idle", "timeout_total", "protocol",        "nomem",
};

const char *kp_upstream_result_name(enum kp_upstream_result r)
{
    if ((unsigned)r >= sizeof(result_names) / sizeof(result_names[0]))
        return "unknown";
    return result_names[r];
}

unsigned kp_upstream_active(const struct kp_upstream *u)
{
    return u->active;
}

bool kp_upstream_in_pass(const struct kp_upstream *u)
{
    return u->depth > 0;
}

void kp_upstream_on_settled(struct kp_upstream *u, void (*fn)(void *arg), void *arg)
{
    u->settled_fn = fn;
    u->settled_arg = arg;
}

static void after_curl(struct kp_upstream *u, bool read_done);
static void upstream_maybe_free(struct kp_upstream *u);
static void upstream_timer_closed(uv_handle_t *h);

/* --- easy handles ---------------------------------------------------------- */

static CURLcode easy_defaults(CURL *e, struct kp_upstream *u);
static CURLcode easy_forget(CURL *e);

static int easy_get(struct kp_upstream *u, struct kp_upstream_call *call)
{
    if (u->n_spare > 0) {
        struct easy_slot *s = &u->spare[--u->n_spare];
        call->easy = s->easy;
        call->head = s->head;
        call->memo = s->memo;
        return KP_OK;
    }
    call->memo = EASY_MEMO_UNSET;
    call->easy = curl_easy_init();
    kp_buf_init(&call->head);
    if (call->easy != NULL && easy_defaults(call->easy, u) != CURLE_OK) {
        curl_easy_cleanup(call->easy);
        call->easy = NULL;
    }
    return call->easy ? KP_OK : KP_ENOMEM;
}

static void url_release(struct kp_upstream_call *call);

/* Back to the free list, holding no pointer into the call. */
static void easy_put(struct kp_upstream *u, struct kp_upstream_call *call)
{
    if (call->easy == NULL)
        return;
    url_release(call); /* easy_forget or the cleanup below drops curl's pointer to it */
    if (!u->closing && u->n_spare < SPARE_MAX && easy_forget(call->easy) == CURLE_OK) {
        if (call->head.cap > HEAD_KEEP)
            kp_buf_free(&call->head);
        call->head.len = 0;
        u->spare[u->n_spare++] = (struct easy_slot){call->easy, call->head, call->memo};
    } else {
        curl_easy_cleanup(call->easy);
        kp_buf_free(&call->head);
    }
    call->easy = NULL;
    kp_buf_init(&call->head);
}

/* --- the call's lifetime ------------------------------------------------------ */

static void todo_push(struct kp_upstream_call *call)
{
    struct kp_upstream *u = call->u;
    if (call->queued)
        return;
    call->queued = true;
    call->todo_next = NULL;
    if (u->todo_tail)
        u->todo_tail->todo_next = call;
    else
        u->todo = call;
    u->todo_tail = call;
}

static void todo_unlink(struct kp_upstream_call *call)
{
    struct kp_upstream *u = call->u;
    struct kp_upstream_call **pp = &u->todo, *prev = NULL;
    if (!call->queued)
        return;
    while (*pp != call) {
        prev = *pp;
        pp = &(*pp)->todo_next;
    }
    *pp = call->todo_next;
    if (u->todo_tail == call)
        u->todo_tail = prev;
    call->queued = false;
}

/* Take the call out of curl and out of the books. No callback runs. Only
 * with u->depth == 0 (curl_multi_remove_handle). */
static void call_detach(struct kp_upstream_call *call)
{
    struct kp_upstream *u = call->u;
    uv_timer_stop(&call->timer);
    todo_unlink(call);
    if (call->in_multi) {
        /* Mid-transfer this closes the connection (an HTTP/2 stream is
         * reset instead): curl never keeps one whose exchange did not end. */
        curl_multi_remove_handle(u->multi, call->easy);
        call->in_multi = false;
    }
    easy_put(u, call);
    if (call->linked) {
        if (call->prev)
            call->prev->next = call->next;
        else
            u->calls = call->next;
        if (call->next)
            call->next->prev = call->prev;
        call->linked = false;
    }
}

static void call_closed(uv_handle_t *h)
{
    struct kp_upstream_call *call = h->data;
    struct kp_upstream *u = call->u;
    kp_free(call);
    u->open_handles--;
    upstream_maybe_free(u);
}

/* Free once the timer is closed; the header strings (provider keys) are
 * wiped now. */
static void call_free(struct kp_upstream_call *call)
{
    explicit_bzero(call->strings, call->secret_len);
    uv_close((uv_handle_t *)&call->timer, call_closed);
}

static void call_complete(struct kp_upstream_call *call, enum kp_upstream_result r,
                          const char *detail)
{
    struct kp_upstream *u = call->u;
    call_detach(call);
    call->finished = true;
    u->active--;
    kp_trace("upstream", "call done %s -> on_done", kp_upstream_result_name(r));
    call->cb.on_done(call->cb.arg, r, detail);
    call_free(call);
}

/* The earliest deadline that applies now. */
static void call_arm(struct kp_upstream_call *call);

static void on_call_timer(uv_timer_t *t)
{
    struct kp_upstream_call *call = t->data;
    char detail[80];
    uint64_t now = uv_now(t->loop);
    uint64_t idle_due = call->last_rx + call->idle_ms;

    if (call->cancelled || call->finished)
        return;
    if (call->fail != KP_UPSTREAM_OK) {
        call_complete(call, call->fail, call->fail_detail);
        return;
    }
    if (call->state == ST_HEAD && now >= call->head_due && call->head_due <= call->total_due) {
        snprintf(detail, sizeof(detail), "no response head within %u ms", call->first_byte_ms);
        call_complete(call, KP_UPSTREAM_TIMEOUT_FIRST_BYTE, detail);
    } else if (call->state == ST_BODY && !call->paused && now >= idle_due &&
               idle_due <= call->total_due) {
        snprintf(detail, sizeof(detail), "no body bytes for %u ms", call->idle_ms);
        call_complete(call, KP_UPSTREAM_TIMEOUT_IDLE, detail);
    } else if (now >= call->total_due) {
        snprintf(detail, sizeof(detail), "not complete within %u ms", call->total_ms);
        call_complete(call, KP_UPSTREAM_TIMEOUT_TOTAL, detail);
    } else {
        call_arm(call);
    }
}

static void call_arm(struct kp_upstream_call *call)
{
    uint64_t now = uv_now(call->u->loop);
    uint64_t due = call->total_due;
    if (call->state == ST_HEAD && call->head_due < due)
        due = call->head_due;
    if (call->state == ST_BODY && !call->paused && call->last_rx + call->idle_ms < due)
        due = call->last_rx + call->idle_ms;
    uv_timer_start(&call->timer, on_call_timer, due > now ? due - now : 0, 0);
}

/* Fail the call from its timer on the next loop iteration: for failures
 * found where on_done must not run (inside curl or start). */
static void call_fail_soon(struct kp_upstream_call *call, enum kp_upstream_result r,
                           const char *detail)
{
    if (call->fail == KP_UPSTREAM_OK) {
        call->fail = r;
        call->fail_detail = detail;
    }
    uv_timer_start(&call->timer, on_call_timer, 0, 0);
}

/* --- response head -------------------------------------------------------- */

static bool is_ws(char c)
{
    return c == ' ' || c == '\t';
}

/* Stop the transfer from a curl callback with our own reason. */
static size_t call_stop(struct kp_upstream_call *call, enum kp_upstream_result r,
                        const char *detail)
{
    if (call->fail == KP_UPSTREAM_OK) {
        call->fail = r;
        call->fail_detail = detail;
    }
    return 0;
}

/* Point an index of the stored pairs after them in the same buffer. */
static struct kp_http_header *head_index(struct kp_upstream_call *call)
{
    struct kp_buf *b = &call->head;
    size_t align = alignof(struct kp_http_header);
    size_t off = (b->len + align - 1) & ~(align - 1);
    if (kp_buf_reserve(b, off - b->len + (size_t)call->n_headers * sizeof(struct kp_http_header)) !=
        0)
        return NULL;
    struct kp_http_header *h = (struct kp_http_header *)(void *)(b->data + off);
    const char *p = b->data;
    for (unsigned i = 0; i < call->n_headers; i++) {
        h[i].name = p;
        h[i].name_len = strlen(p);
        p += h[i].name_len + 1;
        h[i].value = p;
        h[i].value_len = strlen(p);
        p += h[i].value_len + 1;
    }
    return h;
}

/* The final head is complete: hand it over and start the body phase.
 * Returns false when the transfer must stop. */
static bool head_deliver(struct kp_upstream_call *call)
{
    struct kp_http_header *h = head_index(call);
    if (h == NULL) {
        call_stop(call, KP_UPSTREAM_NOMEM, "out of memory for the response head");
        return false;
    }
    call->state = ST_BODY;
    call->last_rx = uv_now(call->u->loop);
    call_arm(call);
    if (call->cb.on_head)
        call->cb.on_head(call->cb.arg, call->status, h, call->n_headers);
    call->head.len = 0;
    return !call->cancelled;
}

static size_t head_status_line(struct kp_upstream_call *call, const char *line, size_t len,
                               size_t ret)
{
    const char *sp = memchr(line, ' ', len);
    size_t i = sp ? (size_t)(sp - line) + 1 : len;
    int status = 0;
    for (unsigned d = 0; d < 3; d++, i++) {
        if (i >= len || line[i] < '0' || line[i] > '9')
            return call_stop(call, KP_UPSTREAM_PROTOCOL, "malformed status line");
        status = status * 10 + (line[i] - '0');
    }
    call->status = status;
    call->n_headers = 0;
    call->head.len = 0;
    return ret;
}

static size_t head_field(struct kp_upstream_call *call, const char *line, size_t len, size_t ret)
{
    struct kp_buf *b = &call->head;
    size_t vs, ve = len;
    int rc = 0;

    if (memchr(line, '\0', len) != NULL)
        return call_stop(call, KP_UPSTREAM_PROTOCOL, "NUL in a response header");
    if (b->len + len + 2 > HEAD_MAX_BYTES || call->n_headers >= HEAD_MAX_LINES)
        return call_stop(call, KP_UPSTREAM_PROTOCOL, "response head too large");
    if (is_ws(line[0])) {
        /* obs-fold: continues the previous value, joined by one space. */
        if (call->n_headers == 0)
            return ret;
        for (vs = 0; vs < len && is_ws(line[vs]); vs++)
            ;
        while (ve > vs && is_ws(line[ve - 1]))
            ve--;
        if (ve == vs)
            return ret;
        b->len--; /* the value's NUL */
        rc |= kp_buf_append(b, " ", 1);
        rc |= kp_buf_append(b, line + vs, ve - vs);
        rc |= kp_buf_append(b, "", 1);
    } else {
        const char *colon = memchr(line, ':', len);
        if (colon == NULL || colon == line)
            return ret; /* not a header: curl let it through, we drop it */
        size_t nlen = (size_t)(colon - line);
        while (nlen > 0 && is_ws(line[nlen - 1]))
            nlen--;
        size_t start = b->len;
        rc |= kp_buf_append(b, line, nlen);
        rc |= kp_buf_append(b, "", 1);
        if (rc == 0)
            for (size_t i = 0; i < nlen; i++)
                if (b->data[start + i] >= 'A' && b->data[start + i] <= 'Z')
                    b->data[start + i] = (char)(b->data[start + i] + ('a' - 'A'));
        for (vs = (size_t)(colon - line) + 1; vs < len && is_ws(line[vs]); vs++)
            ;
        while (ve > vs && is_ws(line[ve - 1]))
            ve--;
        rc |= kp_buf_append(b, line + vs, ve - vs);
        rc |= kp_buf_append(b, "", 1);
        call->n_headers++;
    }
    if (rc != 0)
        return call_stop(call, KP_UPSTREAM_NOMEM, "out of memory for the response head");
    return ret;
}

/* CURLOPT_HEADERFUNCTION: one line at a time, CRLF included, for every
 * head (interim 1xx ones and the final one) and for trailers. */
static size_t on_curl_header(char *buf, size_t size, size_t nitems, void *arg)
{
    struct kp_upstream_call *call = arg;
    size_t n = size * nitems, len = n;

    if (call->cancelled)
        return 0;
    if (call->state == ST_BODY)
        return n; /* trailers */
    while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
        len--;
    if (len == 0) {
        if (call->status == 0)
            return call_stop(call, KP_UPSTREAM_PROTOCOL, "response head without status line");
        if (call->status < 200) { /* interim: wait for the final head */
            call->status = 0;
            call->n_headers = 0;
            call->head.len = 0;
            return n;
        }
        return head_deliver(call) ? n : 0;
    }
    if (len >= 5 && memcmp(buf, "HTTP/", 5) == 0)
        return head_status_line(call, buf, len, n);
    if (call->status == 0)
        return call_stop(call, KP_UPSTREAM_PROTOCOL, "response header before status line");
    return head_field(call, buf, len, n);
}

/* --- response body -------------------------------------------------------- */

/* CURLOPT_WRITEFUNCTION. Returning CURL_WRITEFUNC_PAUSE makes curl keep the
 * bytes of this callback (and any that follow) and deliver them again when
 * unpaused, possibly cut differently; the user has already taken the ones
 * of this callback, so @skip says how many of the next ones to drop. */
static size_t on_curl_body(char *data, size_t size, size_t nmemb, void *arg)
{
    struct kp_upstream_call *call = arg;
    size_t len = size * nmemb;

    if (call->cancelled)
        return CURL_WRITEFUNC_ERROR;
    if (call->paused)
        return CURL_WRITEFUNC_PAUSE;
    if (call->state != ST_BODY) {
        /* curl always ends a head with an empty line first; be safe. */
        if (call->status < 200)
            return call_stop(call, KP_UPSTREAM_PROTOCOL, "body before response head");
        if (!head_deliver(call))
            return CURL_WRITEFUNC_ERROR;
    }
    size_t skip = call->skip < len ? call->skip : len;
    call->skip -= skip;
    if (skip == len)
        return len;
    call->last_rx = uv_now(call->u->loop);
    /* curl reads the network into the start of the transfer's receive
     * buffer each time and hands the bytes over from there, in order. Bytes
     * at or before where the last callback's were came from a new read,
     * which curl makes in the same pass while the socket stays readable.
     * Only batching rests on this: were curl to hand bytes over otherwise,
     * on_read would come more or less often, never out of order. */
    uintptr_t at = (uintptr_t)data;
    if (call->body_at != 0 && at <= call->body_at && call->cb.on_read != NULL) {
        call->cb.on_read(call->cb.arg);
        if (call->cancelled)
            return CURL_WRITEFUNC_ERROR;
    }
    call->body_at = at;
    bool more = call->cb.on_body ? call->cb.on_body(call->cb.arg, data + skip, len - skip) : true;
    if (call->cancelled)
        return CURL_WRITEFUNC_ERROR;
    if (!more) {
        kp_trace("upstream", "on_body full -> pause transfer");
        call->paused = true;
        call->skip = len;
        return CURL_WRITEFUNC_PAUSE;
    }
    return len;
}

/* CURLOPT_PREREQFUNCTION: connected (or reusing), the request goes out
 * now; the first-byte clock starts. */
static int on_curl_prereq(void *arg, char *primary_ip, char *local_ip, int primary_port,
                          int local_port)
{
    struct kp_upstream_call *call = arg;
    (void)primary_ip, (void)local_ip, (void)primary_port, (void)local_port;
    if (call->state == ST_CONNECT) {
        call->state = ST_HEAD;
        call->head_due = uv_now(call->u->loop) + call->first_byte_ms;
        call_arm(call);
    }
    return CURL_PREREQFUNC_OK;
}

/* --- completions ------------------------------------------------------------ */

/* curl's message for the failure, cut before any '?' (curl's messages name
 * at most the host and port, but the URL's query must never get out). */
static void detail_from(char *out, size_t len, const struct kp_upstream_call *c, CURLcode code)
{
    const char *msg = c->errbuf[0] ? c->errbuf : curl_easy_strerror(code);
    size_t n = strcspn(msg, "?\r\n");
    snprintf(out, len, "%.*s", (int)n, msg);
}

static enum kp_upstream_result result_of(const struct kp_upstream_call *call, CURLcode code,
                                         char *detail, size_t len)
{
    if (call->fail != KP_UPSTREAM_OK) {
        snprintf(detail, len, "%s", call->fail_detail);
        return call->fail;
    }
    switch (code) {
    case CURLE_OK:
        if (call->state != ST_BODY) {
            snprintf(detail, len, "no response head");
            return KP_UPSTREAM_PROTOCOL;
        }
        snprintf(detail, len, "ok");
        return KP_UPSTREAM_OK;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_CONNECT:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_USE_SSL_FAILED:
    case CURLE_SSL_CLIENTCERT:
        detail_from(detail, len, call, code);
        return KP_UPSTREAM_CONNECT;
    case CURLE_OPERATION_TIMEDOUT:
        snprintf(detail, len, "not connected within %u ms", call->connect_ms);
        return KP_UPSTREAM_TIMEOUT_CONNECT;
    case CURLE_OUT_OF_MEMORY:
        snprintf(detail, len, "out of memory (libcurl)");
        return KP_UPSTREAM_NOMEM;
    default:
        detail_from(detail, len, call, code);
        return KP_UPSTREAM_PROTOCOL;
    }
}

static void read_completions(struct kp_upstream *u)
{
    CURLMsg *msg;
    int left;
    char detail[CURL_ERROR_SIZE + 32];

    while (!u->closing && (msg = curl_multi_info_read(u->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        CURLcode code = msg->data.result; /* msg dies with the easy's removal */
        char *priv = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
        struct kp_upstream_call *call = (struct kp_upstream_call *)(void *)priv;
        if (call == NULL || call->finished)
            continue;
        if (call->cancelled) {
            call_detach(call);
            call_free(call);
            continue;
        }
        enum kp_upstream_result r = result_of(call, code, detail, sizeof(detail));
        call_complete(call, r, detail);
    }
}

/* --- the multi handle on the loop ------------------------------------------ */

/* curl's connection cache holds by default 4 connections per transfer in
 * the multi handle right now, and closes the oldest idle one when a
 * transfer ends over that. The number of transfers dips between calls
 * (16 clients in a closed loop leave 2 or 3 in flight at times), so warm
 * connections were closed and opened again (1.6% of calls opened one).
 * The cache is sized from the most calls this upstream ever had in flight
 * instead (4 connections per call of that peak, as curl's default at the
 * peak); curl still closes connections idle past CURLOPT_MAXAGE_CONN. Only
 * outside curl's callbacks (depth 0), where curl takes options. */
static void cache_fit(struct kp_upstream *u, unsigned in_flight)
{
    if (in_flight <= u->peak_active)
        return;
    u->peak_active = in_flight;
    curl_multi_setopt(u->multi, CURLMOPT_MAXCONNECTS, (long)u->peak_active * 4);
}

static void do_add(struct kp_upstream_call *call)
{
    call->want_add = false;
    cache_fit(call->u, call->u->active);
    if (curl_multi_add_handle(call->u->multi, call->easy) != CURLM_OK) {
        call_fail_soon(call, KP_UPSTREAM_NOMEM, "out of memory (adding the transfer)");
        return;
    }
    call->in_multi = true;
}

static void do_resume(struct kp_upstream_call *call)
{
    struct kp_upstream *u = call->u;
    call->want_resume = false;
    if (!call->paused || call->cancelled || !call->in_multi)
        return;
    kp_trace("upstream", "resume -> unpause transfer");
    call->paused = false;
    call->last_rx = uv_now(u->loop);
    call_arm(call);
    u->depth++;
    /* curl may deliver what it kept right here, through on_curl_body. */
    CURLcode rc = curl_easy_pause(call->easy, CURLPAUSE_CONT);
    u->depth--;
    if (rc != CURLE_OK && !call->cancelled)
        call_fail_soon(call, rc == CURLE_OUT_OF_MEMORY ? KP_UPSTREAM_NOMEM : KP_UPSTREAM_PROTOCOL,
                       "cannot resume the transfer");
}

/* What callbacks asked for while curl was running. */
static void run_todo(struct kp_upstream *u)
{
    while (u->depth == 0 && u->todo != NULL) {
        struct kp_upstream_call *call = u->todo;
        u->todo = call->todo_next;
        if (u->todo == NULL)
            u->todo_tail = NULL;
        call->queued = false;
        if (call->cancelled) {
            call_detach(call);
            call_free(call);
            continue;
        }
        if (call->want_add)
            do_add(call);
        if (call->want_resume)
            do_resume(call);
    }
}

static void sock_closed(uv_handle_t *h)
{
    struct sock *s = h->data;
    struct kp_upstream *u = s->u;
    kp_free(s);
    u->open_handles--;
    upstream_maybe_free(u);
}

static struct fd_slot *fd_slot(struct kp_upstream *u, curl_socket_t fd, bool grow)
{
    if (fd < 0)
        return NULL;
    if ((unsigned)fd >= u->n_fds) {
        if (!grow)
            return NULL;
        unsigned n = u->n_fds ? u->n_fds : 64;
        while (n <= (unsigned)fd)
            n *= 2;
        struct fd_slot *f = kp_realloc(u->fds, n * sizeof(*f));
        if (f == NULL)
            return NULL;
        memset(f + u->n_fds, 0, (n - u->n_fds) * sizeof(*f));
        u->fds = f;
        u->n_fds = n;
    }
    return &u->fds[fd];
}

static void sock_close(struct kp_upstream *u, struct sock *s)
{
    if (u->multi && !s->parked)
        curl_multi_assign(u->multi, s->fd, NULL);
    struct fd_slot *slot = fd_slot(u, s->fd, false);
    if (slot && slot->sock == s)
        slot->sock = NULL;
    if (s->prev)
        s->prev->next = s->next;
    else
        u->socks = s->next;
    if (s->next)
        s->next->prev = s->prev;
    /* Synchronously removes the fd from the backend, so curl may close it
     * and reuse the number right after. */
    uv_close((uv_handle_t *)&s->poll, sock_closed);
}

static void finish_close(struct kp_upstream *u)
{
    if (u->multi == NULL)
        return;
    run_todo(u);
    while (u->calls != NULL) { /* not expected: every call was cancelled */
        struct kp_upstream_call *call = u->calls;
        call->cancelled = true;
        call_detach(call);
        call_free(call);
    }
    while (u->socks != NULL)
        sock_close(u, u->socks);
    curl_multi_cleanup(u->multi); /* closes cached connections: on_curl_closesocket */
    u->multi = NULL;
    kp_free(u->fds);
    u->fds = NULL;
    u->n_fds = 0;
    for (unsigned i = 0; i < URLS_MAX; i++) {
        curl_url_cleanup(u->urls[i].h);
        kp_free(u->urls[i].url);
        u->urls[i] = (struct parsed_url){0};
    }
    while (u->n_spare > 0) {
        struct easy_slot *s = &u->spare[--u->n_spare];
        curl_easy_cleanup(s->easy);
        kp_buf_free(&s->head);
    }
    uv_timer_stop(&u->timer);
    uv_close((uv_handle_t *)&u->timer, upstream_timer_closed);
}

/* Once curl has returned: queued work, then finished transfers (not from
 * kp_upstream_resume, so that on_done never runs inside it), then a close
 * asked for from a callback. */
static void after_curl(struct kp_upstream *u, bool read_done)
{
    if (u->depth > 0)
        return;
    run_todo(u);
    if (read_done)
        read_completions(u);
    if (u->closing)
        finish_close(u);
    else if (u->settled_fn != NULL)
        u->settled_fn(u->settled_arg);
}

static void drive(struct kp_upstream *u, curl_socket_t fd, int flags)
{
    int running;
    if (u->multi == NULL)
        return;
    u->depth++;
    curl_multi_socket_action(u->multi, fd, flags, &running);
    u->depth--;
    after_curl(u, true);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    struct sock *s = h->data;
    int flags = 0;
    if (s->parked) {
        /* An idle connection turned readable: the provider closed it (or
         * sent what nobody asked for). Stop watching; curl finds it dead
         * when it next looks for a connection to reuse. */
        uv_poll_stop(h);
        s->events = 0;
        return;
    }
    /* libuv reports a socket error (and stops the handle); let curl read
     * and write too, so that it fails with the socket's own error ("Recv
     * failure: Connection reset by peer") rather than a generic one. */
    if (status < 0) {
        flags = CURL_CSELECT_ERR | CURL_CSELECT_IN | CURL_CSELECT_OUT;
        s->events = 0;
    }
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    drive(s->u, s->fd, flags);
}

static void on_timeout(uv_timer_t *t)
{
    drive(t->data, CURL_SOCKET_TIMEOUT, 0);
}

/* CURLMOPT_TIMERFUNCTION: never calls curl back from here. */
static int on_curl_timer(CURLM *multi, long ms, void *arg)
{
    struct kp_upstream *u = arg;
    (void)multi;
    if (u->closing)
        return 0;
    if (ms < 0)
        uv_timer_stop(&u->timer);
    else
        uv_timer_start(&u->timer, on_timeout, (uint64_t)ms, 0);
    return 0;
}

/* A socket we cannot watch fails the transfer that asked (returning -1
 * would make curl give up on the whole multi handle). */
static int sock_trouble(CURL *easy)
{
    char *priv = NULL;
    curl_easy_getinfo(easy, CURLINFO_PRIVATE, &priv);
    struct kp_upstream_call *call = (struct kp_upstream_call *)(void *)priv;
    if (call != NULL && !call->cancelled && !call->finished)
        call_fail_soon(call, KP_UPSTREAM_NOMEM, "cannot watch the socket");
    return 0;
}

/* Between two transfers on one connection curl says CURL_POLL_REMOVE and
 * then asks for the same socket again. A socket curl opened through
 * on_curl_opensocket keeps its poll handle meanwhile (parked, still
 * watching for the provider closing the connection), so that the next
 * transfer costs no handle set-up and, when it watches the same events,
 * no epoll_ctl at all (libuv re-registers the descriptor on every
 * uv_poll_start). on_curl_closesocket closes the handle before the
 * descriptor. Other sockets (the resolver's) are closed on REMOVE, as curl
 * may close them behind our back. */
static int sock_watch(struct sock *s, int events)
{
    if (events == s->events)
        return 0;
    int rc = events ? uv_poll_start(&s->poll, events, on_poll) : uv_poll_stop(&s->poll);
    s->events = rc == 0 ? events : 0;
    return rc;
}

static struct sock *sock_new(struct kp_upstream *u, curl_socket_t fd)
{
    struct sock *s = kp_malloc(sizeof(*s));
    if (s == NULL)
        return NULL;
    if (uv_poll_init_socket(u->loop, &s->poll, fd) != 0) {
        kp_free(s);
        return NULL;
    }
    s->poll.data = s;
    s->fd = fd;
    s->events = 0;
    s->parked = false;
    s->u = u;
    s->prev = NULL;
    s->next = u->socks;
    if (u->socks)
        u->socks->prev = s;
    u->socks = s;
    u->open_handles++;
    struct fd_slot *slot = fd_slot(u, fd, false);
    if (slot && slot->ours)
        slot->sock = s;
    return s;
}

/* CURLMOPT_SOCKETFUNCTION */
static int on_curl_socket(CURL *easy, curl_socket_t fd, int what, void *arg, void *sockp)
{
    struct kp_upstream *u = arg;
    struct sock *s = sockp;

    if (what == CURL_POLL_REMOVE) {
        if (s == NULL)
            return 0;
        struct fd_slot *slot = fd_slot(u, fd, false);
        if (u->closing || slot == NULL || slot->sock != s || sock_watch(s, UV_READABLE) != 0) {
            sock_close(u, s);
            return 0;
        }
        s->parked = true;
        return 0;
    }
    if (u->closing)
        return 0;
    if (s == NULL) {
        struct fd_slot *slot = fd_slot(u, fd, false);
        s = slot ? slot->sock : NULL;
        if (s != NULL)
            s->parked = false;
        else if ((s = sock_new(u, fd)) == NULL)
            return sock_trouble(easy);
        curl_multi_assign(u->multi, fd, s);
    }
    int events =
        ((what & CURL_POLL_IN) ? UV_READABLE : 0) | ((what & CURL_POLL_OUT) ? UV_WRITABLE : 0);
    return sock_watch(s, events) == 0 ? 0 : sock_trouble(easy);
}

/* CURLOPT_OPENSOCKETFUNCTION: the socket curl would open, remembered as
 * one that on_curl_closesocket will see closed. */
static curl_socket_t on_curl_opensocket(void *arg, curlsocktype purpose, struct curl_sockaddr *addr)
{
    struct kp_upstream *u = arg;
    (void)purpose;
    curl_socket_t fd = socket(addr->family, addr->socktype | SOCK_CLOEXEC, addr->protocol);
    if (fd == CURL_SOCKET_BAD)
        return fd;
    struct fd_slot *slot = fd_slot(u, fd, true); /* NULL: not parked, still works */
    if (slot) {
        slot->ours = true;
        slot->sock = NULL;
    }
    return fd;
}

/* CURLOPT_CLOSESOCKETFUNCTION: a parked handle goes before the descriptor
 * (libuv must not watch a number the kernel may hand out again). */
static int on_curl_closesocket(void *arg, curl_socket_t fd)
{
    struct kp_upstream *u = arg;
    struct fd_slot *slot = fd_slot(u, fd, false);
    if (slot) {
        if (slot->sock)
            sock_close(u, slot->sock);
        slot->ours = false;
    }
    return close(fd);
}

/* --- the upstream ------------------------------------------------------------ */

int kp_upstream_new(struct kp_upstream **out, uv_loop_t *loop, char *errmsg, size_t errlen)
{
    const curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
    if (v->version_num < 0x075500)
        return kp_errf(errmsg, errlen, KP_ECONFIG, "upstream: libcurl %s is older than 7.85.0",
                       v->version);
    if (!(v->features & CURL_VERSION_SSL))
        return kp_errf(errmsg, errlen, KP_ECONFIG, "upstream: libcurl %s has no TLS", v->version);
    if (!(v->features & CURL_VERSION_ASYNCHDNS))
        return kp_errf(errmsg, errlen, KP_ECONFIG,
                       "upstream: libcurl %s resolves names synchronously (would block the loop)",
                       v->version);

    struct kp_upstream *u = kp_calloc(1, sizeof(*u));
    if (u == NULL)
        goto err;
    u->loop = loop;
    u->multi = curl_multi_init();
    if (u->multi == NULL)
        goto err_after_alloc;
    if (curl_multi_setopt(u->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket) != CURLM_OK ||
        curl_multi_setopt(u->multi, CURLMOPT_SOCKETDATA, u) != CURLM_OK ||
        curl_multi_setopt(u->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer) != CURLM_OK ||
        curl_multi_setopt(u->multi, CURLMOPT_TIMERDATA, u) != CURLM_OK ||
        curl_multi_setopt(u->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX) != CURLM_OK) {
        kp_errf(errmsg, errlen, KP_ECONFIG, "upstream: libcurl %s refused a multi option",
                v->version);
        curl_multi_cleanup(u->multi);
        kp_free(u);
        return KP_ECONFIG;
    }
    uv_timer_init(loop, &u->timer);
    u->timer.data = u;
    u->open_handles = 1;
    *out = u;
    return KP_OK;

err_after_alloc:
    kp_free(u);
err:
    return kp_errf(errmsg, errlen, KP_ENOMEM, "upstream: out of memory");
}

static void upstream_timer_closed(uv_handle_t *h)
{
    struct kp_upstream *u = h->data;
    u->open_handles--;
    upstream_maybe_free(u);
}

static void upstream_maybe_free(struct kp_upstream *u)
{
    if (!u->closing || u->multi != NULL || u->open_handles > 0)
        return;
    void (*cb)(void *) = u->close_cb;
    void *arg = u->close_arg;
    kp_free(u);
    if (cb)
        cb(arg);
}

void kp_upstream_close(struct kp_upstream *u, void (*cb)(void *arg), void *arg)
{
    if (u->closing)
        return;
    u->close_cb = cb;
    u->close_arg = arg;
    for (struct kp_upstream_call *c = u->calls, *next; c != NULL; c = next) {
        next = c->next;
        kp_upstream_cancel(c);
    }
    u->closing = true;
    if (u->depth == 0)
        finish_close(u);
}

/* --- starting a call ------------------------------------------------------- */

static bool ascii_prefix(const char *s, const char *prefix)
{
    return strncasecmp(s, prefix, strlen(prefix)) == 0;
}

/* Never copies the URL into @errmsg: its query may hold a key. */
static int check_url(const struct kp_upstream_request *req, char *errmsg, size_t errlen)
{
    if (req->url == NULL)
        return kp_errf(errmsg, errlen, KP_EINVAL, "upstream: no URL");
    bool https = ascii_prefix(req->url, "https://");
    if (!https && !ascii_prefix(req->url, "http://"))
        return kp_errf(errmsg, errlen, KP_EINVAL, "upstream: URL scheme must be https");
    if (!https && !req->allow_http)
        return kp_errf(errmsg, errlen, KP_EINVAL,
                       "upstream: http URL refused (https is required for this provider)");
    const char *host = req->url + (https ? 8 : 7);
    if (*host == '\0' || strchr("/?#", *host) != NULL) /* curl would make "http:///x" host x */
        return kp_errf(errmsg, errlen, KP_EINVAL, "upstream: URL without a host");
    if (strnlen(req->url, URL_MAX + 1) > URL_MAX)
        return kp_errf(errmsg, errlen, KP_EINVAL, "upstream: URL too long");
    return KP_OK;
}

/* @url as curl parses it, refusing credentials in it. Spaces and control
 * bytes are refused too (curl's default). */
static int url_parse(CURLU **out, const char *url, char *errmsg, size_t errlen)
{
    CURLU *h = curl_url();
    if (h == NULL)
        return kp_errf(errmsg, errlen, KP_ENOMEM, "upstream: out of memory");
    CURLUcode uc = curl_url_set(h, CURLUPART_URL, url, 0);
    if (uc == CURLUE_OK) {
        char *user = NULL;
        CURLUcode uu = curl_url_get(h, CURLUPART_USER, &user, 0);
        curl_free(user);
        if (uu != CURLUE_NO_USER) {
            curl_url_cleanup(h);
            return kp_errf(errmsg, errlen, KP_EINVAL,
                           "upstream: credentials in the URL are refused");
        }
        *out = h;
        return KP_OK;
    }
    curl_url_cleanup(h);
    if (uc == CURLUE_OUT_OF_MEMORY)
        return kp_errf(errmsg, errlen, KP_ENOMEM, "upstream: out of memory");
    return kp_errf(errmsg, errlen, KP_EINVAL, "upstream: bad URL: %s", curl_url_strerror(uc));
}

/* Where a new URL is kept: a free slot, else the least recently used one
 * that no call holds. */
static bool better_slot(const struct parsed_url *p, const struct parsed_url *best)
{
    if (p->url == NULL)
        return best == NULL || best->url != NULL;
    if (p->refs > 0)
        return false;
    return best == NULL || (best->url != NULL && p->used < best->used);
}

/* The parsed URL @call's transfer is given: a kept one (parsed once for
 * every call to it), or, for a URL with a query or when every kept one is
 * held, the call's own. Held until the handle is put back (url_release). */
static int url_take(struct kp_upstream *u, struct kp_upstream_call *call, const char *url,
                    char *errmsg, size_t errlen)
{
    bool keep = strchr(url, '?') == NULL; /* a query may hold a key: not kept */
    struct parsed_url *slot = NULL;
    for (unsigned i = 0; keep && i < URLS_MAX; i++) {
        struct parsed_url *p = &u->urls[i];
        if (p->url != NULL && strcmp(p->url, url) == 0) {
            p->refs++;
            p->used = ++u->url_clock;
            call->url = p;
            return KP_OK;
        }
        if (better_slot(p, slot))
            slot = p;
    }
    CURLU *h = NULL;
    int rc = url_parse(&h, url, errmsg, errlen);
    if (rc != KP_OK)
        return rc;
    char *copy = slot != NULL ? kp_strdup(url) : NULL;
    if (copy == NULL) {
        call->own_url = (struct parsed_url){.h = h, .refs = 1};
        call->url = &call->own_url;
        return KP_OK;
    }
    curl_url_cleanup(slot->h);
    kp_free(slot->url);
    *slot = (struct parsed_url){.url = copy, .h = h, .refs = 1, .used = ++u->url_clock};
    call->url = slot;
    return KP_OK;
}

static void url_release(struct kp_upstream_call *call)
{
    struct parsed_url *p = call->url;
    call->url = NULL;
    if (p == &call->own_url) {
        curl_url_cleanup(p->h);
        p->h = NULL;
    } else if (p != NULL) {
        p->refs--;
    }
}

static bool name_is(const struct kp_http_header *h, const char *name, size_t len)
{
    return h->name_len == len && strncasecmp(h->name, name, len) == 0;
}

#define NAME_IS(h, lit) name_is((h), (lit), sizeof(lit) - 1)

/* Framing and hop-by-hop headers are curl's to write. */
static bool header_reserved(const struct kp_http_header *h)
{
    return NAME_IS(h, "content-length") || NAME_IS(h, "transfer-encoding") ||
           NAME_IS(h, "connection") || NAME_IS(h, "keep-alive") || NAME_IS(h, "upgrade") ||
           NAME_IS(h, "te") || NAME_IS(h, "trailer") || NAME_IS(h, "expect") ||
           NAME_IS(h, "proxy-connection") || NAME_IS(h, "host");
}

/* Validate the request headers and the method; the bytes the header lines
 * need ("Name: value\0" each) into *@bytes. Never copies a value into
 * @errmsg. */
static int check_headers(const struct kp_upstream_request *req, size_t *bytes, bool *has_ctype,
                         char *errmsg, size_t errlen)
{
    size_t total = 0;
    if (req->n_headers > REQ_HEADER_COUNT || (req->n_headers > 0 && req->headers == NULL))
        return kp_errf(errmsg, errlen, KP_EINVAL, "upstream: too many request headers");
    *has_ctype = false;
    for (unsigned i = 0; i < req->n_headers; i++) {
        const struct kp_http_header *h = &req->headers[i];
        if (h->name_len == 0 || h->name_len > REQ_HEADERS_MAX || h->value_len > REQ_HEADERS_MAX)
            return kp_errf(errmsg, errlen, KP_EINVAL, "upstream: request header %u: bad length", i);
        for (size_t k = 0; k < h->name_len; k++)
            if (!kp_is_tchar((unsigned char)h->name[k]))
                return kp_errf(errmsg, errlen, KP_EINVAL,
                               "upstream: request header %u: bad byte in the name", i);
        if (!kp_field_value_ok(h->value, h->value_len))
            return kp_errf(errmsg, errlen, KP_EINVAL,
                           "upstream: request header %.*s: control byte in the value",
                           (int)h->name_len, h->name);
        if (header_reserved(h))
            return kp_errf(errmsg, errlen, KP_EINVAL,
                           "upstream: request header %.*s is set by the transport",
                           (int)h->name_len, h->name);
        if (NAME_IS(h, "content-type"))
            *has_ctype = true;
        total += h->name_len + 2 + h->value_len + 1;
        if (total > REQ_HEADERS_MAX)
            return kp_errf(errmsg, errlen, KP_EINVAL, "upstream: request headers too large");
    }
    *bytes = total;
    return KP_OK;
}

static bool method_ok(const char *m)
{
    if (m == NULL || *m == '\0' || strlen(m) > 16)
        return false;
    for (; *m; m++)
        if (!kp_is_tchar((unsigned char)*m))
            return false;
    return true;
}

/* Bodies from this size on get "Expect:" (below). curl asks for
 * 100-continue above 1 MiB (7.88; earlier versions above 1 KiB), and each
 * header in the list costs curl some 1 k instructions a call. */
#define EXPECT_FROM 1024u

/* The header list in the call's own memory: curl only reads it. An empty
 * value is written "Name;" (curl drops "Name:"); "Expect:" stops curl from
 * waiting for 100-continue, "Content-Type:" from sending its form type. */
static struct curl_slist *build_headers(struct kp_upstream_call *call,
                                        const struct kp_upstream_request *req, bool has_body,
                                        bool has_ctype)
{
    char *p = call->strings;
    unsigned n = 0;
    for (unsigned i = 0; i < req->n_headers; i++) {
        const struct kp_http_header *h = &req->headers[i];
        call->nodes[n].data = p;
        memcpy(p, h->name, h->name_len);
        p += h->name_len;
        if (h->value_len == 0) {
            *p++ = ';';
        } else {
            *p++ = ':';
            *p++ = ' ';
            memcpy(p, h->value, h->value_len);
            p += h->value_len;
        }
        *p++ = '\0';
        n++;
    }
    if (has_body) {
        if (req->body_len >= EXPECT_FROM)
            call->nodes[n++].data = (char *)"Expect:";
        if (!has_ctype)
            call->nodes[n++].data = (char *)"Content-Type:";
    }
    call->secret_len = (size_t)(p - call->strings);
    if (n == 0)
        return NULL;
    for (unsigned i = 0; i + 1 < n; i++)
        call->nodes[i].next = &call->nodes[i + 1];
    call->nodes[n - 1].next = NULL;
    return &call->nodes[0];
}

#define SET(opt, val)                                                                              \
    do {                                                                                           \
        if (rc == CURLE_OK)                                                                        \
            rc = curl_easy_setopt(e, opt, val);                                                    \
    } while (0)

/* The options every transfer has, set once per easy handle: a handle goes
 * back to the free list without curl_easy_reset (which frees and sets
 * again some 30 options, 4% of a call's user-space instructions), so these
 * stay, and easy_setup sets everything that differs between calls. */
static CURLcode easy_defaults(CURL *e, struct kp_upstream *u)
{
    CURLcode rc = CURLE_OK;
    SET(CURLOPT_OPENSOCKETFUNCTION, on_curl_opensocket);
    SET(CURLOPT_OPENSOCKETDATA, (void *)u);
    SET(CURLOPT_CLOSESOCKETFUNCTION, on_curl_closesocket);
    SET(CURLOPT_CLOSESOCKETDATA, (void *)u);
    SET(CURLOPT_REDIR_PROTOCOLS_STR, "https");
    SET(CURLOPT_FOLLOWLOCATION, 0L);
    SET(CURLOPT_SSL_VERIFYPEER, 1L);
    SET(CURLOPT_SSL_VERIFYHOST, 2L);
    SET(CURLOPT_NOSIGNAL, 1L);
    /* Never a proxy, whatever the environment says. */
    SET(CURLOPT_PROXY, "");
    SET(CURLOPT_NOPROXY, "*");
    /* Bodies pass through as the provider encoded them: no Accept-Encoding
     * from curl and no decoding (the caller asks for what it can read). */
    SET(CURLOPT_HTTP_CONTENT_DECODING, 0L);
    SET(CURLOPT_HTTP_TRANSFER_DECODING, 1L);
    SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    SET(CURLOPT_HEADERFUNCTION, on_curl_header);
    SET(CURLOPT_WRITEFUNCTION, on_curl_body);
    SET(CURLOPT_PREREQFUNCTION, on_curl_prereq);
    return rc;
}

/* Everything of one call: its pointers, URL, timeouts, headers, method
 * and body. */
static int easy_setup(struct kp_upstream_call *call, const struct kp_upstream_request *req,
                      struct curl_slist *headers, bool https)
{
    CURL *e = call->easy;
    CURLcode rc = CURLE_OK;
    bool post = strcmp(req->method, "POST") == 0;
    bool get = strcmp(req->method, "GET") == 0;
    bool head = strcmp(req->method, "HEAD") == 0;
    struct easy_memo *m = &call->memo,
                     want = {
                         .allow_http = req->allow_http,
                         .pipewait = https,
                         .method = post   ? METHOD_POST
                                   : get  ? METHOD_GET
                                   : head ? METHOD_HEAD
                                          : METHOD_OTHER,
                         /* Provider answers arrive in small pieces (stream events, a few
                          * KiB of JSON); half of curl's 16 KiB default receive buffer per
                          * transfer is plenty and counts with thousands of open streams. */
                         .bufsize = req->stream ? 2048 : 8192,
                         .connect_ms = call->connect_ms,
                     };
    /* Set again from scratch if anything fails: the memo no longer says
     * what the handle holds. */
    struct easy_memo had = *m;
    *m = EASY_MEMO_UNSET;

    SET(CURLOPT_PRIVATE, (void *)call);
    SET(CURLOPT_CURLU, call->url->h);
    if (want.allow_http != had.allow_http)
        SET(CURLOPT_PROTOCOLS_STR, want.allow_http ? "http,https" : "https");
    /* Over TLS, wait for a connection being set up that may multiplex
     * rather than open one more. */
    if (want.pipewait != had.pipewait)
        SET(CURLOPT_PIPEWAIT, (long)want.pipewait);
    if (want.bufsize != had.bufsize)
        SET(CURLOPT_BUFFERSIZE, (long)want.bufsize);
    if (want.connect_ms != had.connect_ms)
        SET(CURLOPT_CONNECTTIMEOUT_MS, (long)want.connect_ms);
    SET(CURLOPT_ERRORBUFFER, call->errbuf);
    SET(CURLOPT_HTTPHEADER, headers);
    SET(CURLOPT_HEADERDATA, (void *)call);
    SET(CURLOPT_WRITEDATA, (void *)call);
    SET(CURLOPT_PREREQDATA, (void *)call);
    /* The method from scratch, as the last call's may linger: NOBODY
     * first (turning it off makes a HEAD a GET), then the rest. A POST or
     * GET after one of its own kind needs neither (easy_forget's
     * POSTFIELDS turns the method into POST, which HTTPGET or POSTFIELDS
     * below sets again, and NOBODY stays off); a HEAD needs NOBODY again. */
    if (want.method != had.method || (want.method != METHOD_POST && want.method != METHOD_GET)) {
        SET(CURLOPT_NOBODY, head ? 1L : 0L);
        SET(CURLOPT_CUSTOMREQUEST, post || get || head ? NULL : req->method);
    }
    if (head) {
        /* NOBODY made it a HEAD */
    } else if (get && req->body_len == 0) {
        SET(CURLOPT_HTTPGET, 1L);
    } else {
        /* Not copied: the caller keeps the body until on_done or cancel. */
        SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
        SET(CURLOPT_POSTFIELDS, req->body_len ? req->body : "");
    }
    if (rc == CURLE_OK)
        *m = want;
    return rc == CURLE_OK ? KP_OK : rc == CURLE_OUT_OF_MEMORY ? KP_ENOMEM : KP_ECONFIG;
}

/* What points into the call (freed next) goes before the handle is kept
 * for another: curl holds these pointers, not copies. */
static CURLcode easy_forget(CURL *e)
{
    CURLcode rc = CURLE_OK;
    SET(CURLOPT_PRIVATE, NULL);
    SET(CURLOPT_CURLU, NULL);
    SET(CURLOPT_ERRORBUFFER, NULL);
    SET(CURLOPT_HTTPHEADER, NULL);
    SET(CURLOPT_HEADERDATA, NULL);
    SET(CURLOPT_WRITEDATA, NULL);
    SET(CURLOPT_PREREQDATA, NULL);
    SET(CURLOPT_POSTFIELDS, NULL);
    SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)-1);
    return rc;
}
#undef SET

static uint32_t or_default(uint32_t v, uint32_t def)
{
    return v ? v : def;
}

int kp_upstream_start(struct kp_upstream *u, const struct kp_upstream_request *req,
                      const struct kp_upstream_callbacks *cb, struct kp_upstream_call **out,
                      char *errmsg, size_t errlen)
{
    size_t bytes = 0;
    bool has_ctype = false;
    int rc;

    if (u->closing)
        return kp_errf(errmsg, errlen, KP_ESHUTDOWN, "upstream: closing");
    if (cb == NULL || cb->on_done == NULL)
        return kp_errf(errmsg, errlen, KP_EINVAL, "upstream: no on_done callback");
    if (!method_ok(req->method))
        return kp_errf(errmsg, errlen, KP_EINVAL, "upstream: bad method");
    bool has_body = strcmp(req->method, "GET") != 0 && strcmp(req->method, "HEAD") != 0;
    if (!has_body && req->body_len > 0)
        return kp_errf(errmsg, errlen, KP_EINVAL, "upstream: %s with a body", req->method);
    if (req->body_len > 0 && req->body == NULL)
        return kp_errf(errmsg, errlen, KP_EINVAL, "upstream: body_len without body");
    rc = check_url(req, errmsg, errlen);
    if (rc != KP_OK)
        return rc;
    rc = check_headers(req, &bytes, &has_ctype, errmsg, errlen);
    if (rc != KP_OK)
        return rc;

    size_t n_nodes = req->n_headers + 2u;
    struct kp_upstream_call *call =
        kp_malloc(sizeof(*call) + n_nodes * sizeof(struct curl_slist) + bytes);
    if (call == NULL)
        goto err_nomem;
    memset(call, 0, sizeof(*call));
    call->u = u;
    call->cb = *cb;
    call->strings = (char *)&call->nodes[n_nodes];
    call->connect_ms = or_default(req->connect_timeout_ms, 5000);
    call->first_byte_ms = or_default(req->first_byte_timeout_ms, 60000);
    call->idle_ms = or_default(req->idle_timeout_ms, 60000);
    call->total_ms = or_default(req->total_timeout_ms, KP_UPSTREAM_TOTAL_MS);
    call->total_due = uv_now(u->loop) + call->total_ms;
    if (easy_get(u, call) != KP_OK)
        goto err_after_alloc;
    rc = url_take(u, call, req->url, errmsg, errlen);
    if (rc != KP_OK)
        goto err_after_easy;
    struct curl_slist *headers = build_headers(call, req, has_body, has_ctype);
    rc = easy_setup(call, req, headers, ascii_prefix(req->url, "https://"));
    if (rc != KP_OK) {
        kp_errf(errmsg, errlen, rc, "upstream: libcurl refused an option");
        goto err_after_easy;
    }
    if (u->depth == 0) {
        cache_fit(u, u->active + 1); /* counting this call */
        if (curl_multi_add_handle(u->multi, call->easy) != CURLM_OK)
            goto err_after_easy_nomem;
        call->in_multi = true;
    } else {
        call->want_add = true; /* curl refuses adds from its callbacks */
        todo_push(call);
    }
    uv_timer_init(u->loop, &call->timer);
    call->timer.data = call;
    u->open_handles++;
    call->linked = true;
    call->next = u->calls;
    if (u->calls)
        u->calls->prev = call;
    u->calls = call;
    u->active++;
    call_arm(call);
    *out = call;
    return KP_OK;

err_after_easy_nomem:
    rc = KP_ENOMEM;
    kp_errf(errmsg, errlen, rc, "upstream: out of memory");
err_after_easy:
    explicit_bzero(call->strings, call->secret_len);
    easy_put(u, call);
    kp_free(call);
    return rc;
err_after_alloc:
    kp_free(call);
err_nomem:
    return kp_errf(errmsg, errlen, KP_ENOMEM, "upstream: out of memory");
}

void kp_upstream_cancel(struct kp_upstream_call *call)
{
    if (call == NULL || call->cancelled || call->finished)
        return;
    struct kp_upstream *u = call->u;
    kp_trace("upstream", "cancel -> drop transfer");
    call->cancelled = true;
    u->active--;
    uv_timer_stop(&call->timer);
    if (u->depth > 0) {
        todo_push(call); /* its curl callbacks now fail the transfer */
        return;
    }
    call_detach(call);
    call_free(call);
}

void kp_upstream_resume(struct kp_upstream_call *call)
{
    if (call == NULL || call->cancelled || call->finished || !call->paused)
        return;
    struct kp_upstream *u = call->u;
    if (u->depth > 0) {
        call->want_resume = true; /* not nested inside another call's callback */
        todo_push(call);
        return;
    }
    do_resume(call);
    after_curl(u, false);
}

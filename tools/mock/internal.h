/* Internal to kpmock: what the route, shape and error files share.
 *
 * Answers are written straight into the answer's buffer with the put helpers
 * below rather than built as jansson trees: the mock must never be the
 * bottleneck of a benchmark. A failed append sets a->failed, which
 * kp_mock_handle turns into a 503, so builders need not check each call. */
#ifndef KP_TOOLS_MOCK_INTERNAL_H
#define KP_TOOLS_MOCK_INTERNAL_H

#include <jansson.h>
#include <string.h>

#include "mock.h"

/* What every shape builder needs to know about the request. */
struct kp_mock_gen {
    enum kp_mock_provider provider;
    const char *model; /* echoed back; not NUL-terminated */
    size_t model_len;
    unsigned prompt_tokens;
    unsigned completion_tokens;
    bool truncated; /* the max-tokens cap cut the reply short */
    bool include_usage;
    char id[32];
    int64_t created;
};

/* --- writing (answer.c) -------------------------------------------------- */

void kp_mock__put(struct kp_mock_answer *a, const char *s);
/* kp_mock__putn when the body must grow first. */
void kp_mock__putn_grow(struct kp_mock_answer *a, const char *s, size_t n);

/* Inline, so that appending a literal is a few moves: a chat completion is
 * some 25 appends. Keeps kp_buf's invariants (room for the NUL, which it
 * writes) and grows through it. */
static inline void kp_mock__putn(struct kp_mock_answer *a, const char *s, size_t n)
{
    struct kp_buf *b = &a->body;

    if (b->cap - b->len <= n) {
        kp_mock__putn_grow(a, s, n);
        return;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void kp_mock__putf(struct kp_mock_answer *a, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* A string literal. */
#define kp_mock__put_lit(a, lit) kp_mock__putn((a), (lit), sizeof(lit) - 1)
void kp_mock__put_u(struct kp_mock_answer *a, uint64_t v);
void kp_mock__put_i(struct kp_mock_answer *a, int64_t v);
/* A quoted, escaped JSON string. */
void kp_mock__put_str(struct kp_mock_answer *a, const char *s, size_t n);
/* A quoted string of our own that needs no escaping (the reply text). */
void kp_mock__put_quoted(struct kp_mock_answer *a, const char *s, size_t n);
/* "event: NAME\n" (when @name) then "data: ". */
void kp_mock__event_begin(struct kp_mock_answer *a, const char *name);
/* Ends an event with @sep and records its end. */
void kp_mock__event_end(struct kp_mock_answer *a, const char *sep);
/* The reply text of @words words: "mock0 mock1 ...". */
void kp_mock__reply_text(unsigned words, const char **p, size_t *len);
/* Word @i as it appears in a stream delta (" mock3" after the first). */
void kp_mock__reply_word(unsigned i, const char **p, size_t *len);

/* Begin a 200 answer of @content_type. */
void kp_mock__begin(struct kp_mock_answer *a, int status, const char *content_type);
void kp_mock__begin_stream(struct kp_mock_answer *a, const char *content_type);
/* An error answer in @p's shape. @quota selects the out-of-quota flavour of
 * 429. @message is a plain sentence and must not contain a key. */
void kp_mock__error(struct kp_mock_answer *a, enum kp_mock_provider p, int status, bool quota,
                    const char *message);
/* kp_mock__error with a printf message. */
void kp_mock__errorf(struct kp_mock_answer *a, enum kp_mock_provider p, int status, const char *fmt,
                     ...) __attribute__((format(printf, 4, 5)));
/* The error a status fault asks for, with the provider's usual message. */
void kp_mock__fault_error(struct kp_mock_answer *a, enum kp_mock_provider p,
                          const struct kp_mock_faults *f, const char *model, size_t model_len);
/* Apply malformed_json and a non-stream reset_mid_stream to a built answer. */
void kp_mock__apply_body_faults(struct kp_mock_answer *a);

/* --- bodies read in place (raw_json.c) ----------------------------------- */

/* A JSON value inside a body that kp_mock__raw_check() accepted: its text. */
struct kp_mock_raw {
    const char *p; /* first character; tells the kind (KP_MOCK_RAW_...) */
    const char *end;
};

enum {
    KP_MOCK_RAW_OBJECT = '{',
    KP_MOCK_RAW_ARRAY = '[',
    KP_MOCK_RAW_STRING = '"',
    KP_MOCK_RAW_TRUE = 't',
    KP_MOCK_RAW_NULL = 'n',
};

static inline bool kp_mock__raw_is(const struct kp_mock_raw *v, char kind)
{
    return v->p[0] == kind;
}

/* True when @body is a JSON object that json_loadb() certainly accepts, with
 * the same members; *out is then the object. False for every body jansson
 * refuses and for a few it accepts (see raw_json.c): ask jansson then. */
bool kp_mock__raw_check(const char *body, size_t len, struct kp_mock_raw *out);
/* Member @name of @obj, the last when repeated, as json_object_get() gives
 * it; false when absent or @obj is not an object. */
bool kp_mock__raw_member(const struct kp_mock_raw *obj, const char *name, struct kp_mock_raw *out);
/* kp_mock__raw_member for @n names in one pass; out[i].p is NULL when
 * names[i] is absent. */
void kp_mock__raw_members(const struct kp_mock_raw *obj, const char *const names[], unsigned n,
                          struct kp_mock_raw out[]);
/* Whether @v, an array or an object, has no elements. */
bool kp_mock__raw_empty(const struct kp_mock_raw *v);
/* The element after @item in @arr, the first when item->p is NULL; false at
 * the end or when @arr is not an array. */
bool kp_mock__raw_next(const struct kp_mock_raw *arr, struct kp_mock_raw *item);
/* A string's decoded length in bytes, as json_string_length() gives it. */
size_t kp_mock__raw_strlen(const struct kp_mock_raw *str);
/* A string's text between its quotes; false when it has escapes. */
bool kp_mock__raw_plain(const struct kp_mock_raw *str, const char **s, size_t *len);
/* An integer's value; false for anything else (reals included). */
bool kp_mock__raw_int(const struct kp_mock_raw *num, long long *out);

/* --- usage (usage.c) ----------------------------------------------------- */

unsigned kp_mock__text_tokens(size_t bytes);
/* Bytes of text in a message content: a string, or an array of parts whose
 * "text" members count. */
size_t kp_mock__content_bytes(const json_t *content);
/* Prompt tokens of a list of messages: ceil(text bytes / 4) + overhead per
 * message. @field names the member holding each message's content. */
unsigned kp_mock__messages_tokens(const json_t *messages, const char *field, size_t extra_bytes,
                                  unsigned extra_messages);
unsigned kp_mock__input_tokens(const json_t *input);
/* Read the cap named @field from @obj (absent or null: none). Returns 0, or
 * -1 when present but not an integer >= @min. */
int kp_mock__max_tokens(const json_t *obj, const char *field, long long min, bool *present,
                        long long *value);
/* kp_mock__messages_tokens on a body read in place. */
unsigned kp_mock__raw_messages_tokens(const struct kp_mock_raw *messages, const char *field);
/* kp_mock__max_tokens on a member read in place (v->p NULL: absent). */
int kp_mock__raw_max_tokens(const struct kp_mock_raw *v, long long min, bool *present,
                            long long *value);
/* Set completion_tokens and truncated from a cap. */
void kp_mock__set_completion(struct kp_mock_gen *g, bool capped, long long cap);

/* --- shapes -------------------------------------------------------------- */

void kp_mock__openai_chat(struct kp_mock_gen *g, const json_t *body, bool stream,
                          struct kp_mock_answer *a);
/* The same answer from a body read in place. */
void kp_mock__openai_chat_raw(struct kp_mock_gen *g, const struct kp_mock_raw *body,
                              struct kp_mock_answer *a);
void kp_mock__openai_completions(struct kp_mock_gen *g, const json_t *body, bool stream,
                                 struct kp_mock_answer *a);
void kp_mock__openai_embeddings(struct kp_mock_gen *g, const json_t *body,
                                struct kp_mock_answer *a);
void kp_mock__openai_responses(struct kp_mock_gen *g, const json_t *body, bool stream,
                               struct kp_mock_answer *a);
void kp_mock__openai_models(const char *path, struct kp_mock_answer *a);
/* GET /v1beta/models: {"models":[{"name":"models/…",…}]}. */
void kp_mock__gemini_models(struct kp_mock_answer *a);
void kp_mock__anthropic_messages(struct kp_mock_gen *g, const json_t *body, bool stream,
                                 struct kp_mock_answer *a);
void kp_mock__gemini_generate(struct kp_mock_gen *g, const json_t *body, bool stream, bool sse,
                              struct kp_mock_answer *a);

/* The /mock/... control routes and /healthz (control.c). */
void kp_mock__control(struct kp_mock *m, const struct kp_http_request *req,
                      struct kp_mock_answer *a);

/* Free the script table (fault.c), at kp_mock_close. */
void kp_mock__scripts_free(struct kp_mock *m);

/* Unix seconds for "created" fields. */
int64_t kp_mock__now(const struct kp_mock *m);

#endif

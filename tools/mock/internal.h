/* Internal to kpmock: what the route, shape and error files share.
 *
 * Answers are written straight into the answer's buffer with the put helpers
 * below rather than built as jansson trees: the mock must never be the
 * bottleneck of a benchmark. A failed append sets a->failed, which
 * kp_mock_handle turns into a 503, so builders need not check each call. */
#ifndef KP_TOOLS_MOCK_INTERNAL_H
#define KP_TOOLS_MOCK_INTERNAL_H

#include <jansson.h>

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
void kp_mock__putn(struct kp_mock_answer *a, const char *s, size_t n);
void kp_mock__putf(struct kp_mock_answer *a, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void kp_mock__put_u(struct kp_mock_answer *a, uint64_t v);
/* A quoted, escaped JSON string. */
void kp_mock__put_str(struct kp_mock_answer *a, const char *s, size_t n);
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
/* Set completion_tokens and truncated from a cap. */
void kp_mock__set_completion(struct kp_mock_gen *g, bool capped, long long cap);

/* --- shapes -------------------------------------------------------------- */

void kp_mock__openai_chat(struct kp_mock_gen *g, const json_t *body, bool stream,
                          struct kp_mock_answer *a);
void kp_mock__openai_completions(struct kp_mock_gen *g, const json_t *body, bool stream,
                                 struct kp_mock_answer *a);
void kp_mock__openai_embeddings(struct kp_mock_gen *g, const json_t *body,
                                struct kp_mock_answer *a);
void kp_mock__openai_responses(struct kp_mock_gen *g, const json_t *body, bool stream,
                               struct kp_mock_answer *a);
void kp_mock__openai_models(const char *path, struct kp_mock_answer *a);
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

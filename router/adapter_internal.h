/* router/adapter_internal: what the adapter_*.c files share among
 * themselves, behind the public router/adapter.h. The Anthropic helpers
 * (and kp_adapter__load, which both providers use) are defined in
 * adapter_anthropic.c and the Gemini answer readers in adapter_gemini.c;
 * each of those files opens with the decisions its provider's
 * translations make. Internal to the adapters. */
#ifndef KP_ROUTER_ADAPTER_INTERNAL_H
#define KP_ROUTER_ADAPTER_INTERNAL_H

#include "router/adapter.h"

/* --- Anthropic <-> OpenAI (adapter_anthropic.c) ------------------------- */

/* jansson shorthands. put and push take the reference to @v and are
 * non-zero when @v is NULL or jansson runs out of memory. */
int kp_adapter__put(json_t *o, const char *key, json_t *v);
int kp_adapter__push(json_t *a, json_t *v);
const char *kp_adapter__str(const json_t *o, const char *key);
json_t *kp_adapter__strn(const char *s, size_t n);
json_t *kp_adapter__str_copy(const json_t *s);

/* Anthropic stop_reason <-> OpenAI finish_reason. */
const char *kp_adapter__finish_from_stop(const char *stop);
const char *kp_adapter__stop_from_finish(const char *finish);

/* Usage objects and counts, both ways; NULL or false when out of memory or
 * a count is not a non-negative integer. */
json_t *kp_adapter__chat_usage(uint64_t prompt, uint64_t completion, uint64_t cached);
json_t *kp_adapter__messages_usage(uint64_t prompt, uint64_t completion, uint64_t cached);
bool kp_adapter__read_anthropic_usage(const json_t *u, uint64_t *input, uint64_t *cache_read,
                                      uint64_t *cache_write, uint64_t *output);
bool kp_adapter__read_chat_usage(const json_t *u, struct kp_usage_counts *c);

/* Whether @text is one JSON value by RFC 8259 and jansson's syntax rules
 * (strict UTF-8, surrogate escapes in pairs, at most JSON_PARSER_MAX_DEPTH
 * nested containers; \u0000 and numbers of any size pass: jansson gives
 * those errors codes of their own). Allocates nothing (answer_scan.c, the
 * gateway's scanner). */
bool kp_router__json_syntax_ok(const char *text, size_t len);

/* json_loadb(@text, @len, JSON_DECODE_ANY | @flags, @jerr). When it fails,
 * *@nomem says whether for want of memory (jansson 2.14 does not say so
 * reliably) rather than for what the text holds, which @jerr then
 * locates. Both providers' adapters read JSON text with it. */
json_t *kp_adapter__load(const char *text, size_t len, size_t flags, json_error_t *jerr,
                         bool *nomem);
/* Tool-call arguments (JSON text) -> a new object: KP_OK, KP_ENOMEM, or
 * KP_EINVAL when the text is not a JSON object. */
int kp_adapter__parse_arguments(const char *text, size_t len, json_t **out);
/* Compact JSON text of @v (kp_free it); NULL when out of memory. */
char *kp_adapter__dumps_compact(const json_t *v);

/* Pieces both directions build: an Anthropic text block, an OpenAI tool
 * call (with "index" when @with_index, as in stream deltas). */
json_t *kp_adapter__text_block(const json_t *text);
json_t *kp_adapter__tool_call(const char *id, const char *name, const char *args, int64_t index,
                              bool with_index);

/* KP_ENOMEM, and KP_EPARSE about a chat completion, with their messages. */
int kp_adapter__oom_msg(char *errmsg, size_t errlen);
int kp_adapter__chat_bad(char *errmsg, size_t errlen, const char *what);

/* --- Gemini answers, whole and streamed (adapter_gemini.c) -------------- */

/* Usage as Gemini reported it, latest first. */
struct usage_meta {
    struct kp_usage_counts c;
    uint64_t reasoning; /* thoughtsTokenCount, part of c.output */
};

/* What one candidate said. */
struct turn {
    struct kp_buf text;
    bool has_text;
    json_t *calls;      /* OpenAI tool_calls; NULL when none */
    const char *finish; /* Gemini finishReason, borrowed from the answer */
};

/* The tool call ids of one completion: "call_<id suffix>_<n>". */
struct call_ids {
    const char *suffix; /* the completion id without "chatcmpl-" */
    size_t next;
    bool with_index; /* stream deltas carry an index */
};

int kp_adapter__gemini_read_usage(const json_t *resp, struct usage_meta *u, char *errmsg,
                                  size_t errlen);
json_t *kp_adapter__gemini_usage_json(const struct usage_meta *u);
int kp_adapter__gemini_read_error(const json_t *resp, char *errmsg, size_t errlen);
bool kp_adapter__gemini_prompt_blocked(const json_t *resp);
int kp_adapter__gemini_first_candidate(const json_t *resp, const json_t **cand, char *errmsg,
                                       size_t errlen);
const char *kp_adapter__gemini_chat_finish(const char *gemini, bool called);
void kp_adapter__gemini_turn_init(struct turn *t);
void kp_adapter__gemini_turn_free(struct turn *t);
const char *kp_adapter__gemini_id_suffix(const char *id);
/* Reads candidate @cand into @t (kp_adapter__gemini_turn_init'ed). */
int kp_adapter__gemini_read_candidate(const json_t *cand, struct call_ids *ids, struct turn *t,
                                      char *errmsg, size_t errlen);

#endif

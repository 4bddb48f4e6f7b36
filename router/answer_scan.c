/* What the gateway reads of JSON it relays as is, without building the
 * document: the top-level "model" and the "usage" object of an
 * OpenAI-shaped answer (attempt.c, relay_answer), and the fields of the
 * app's request the gateway itself needs (gateway.c, parse_body). The same
 * scanner, in syntax mode, tells the adapters whether a text jansson
 * refused was valid after all (kp_router__json_syntax_ok: jansson 2.14
 * reports some failed allocations as syntax errors).
 *
 * Parsing with jansson builds the whole document (an allocation per
 * object, key and string) only for a few fields: for a 560-byte chat
 * answer that was 12% of the gateway's CPU per call, and as much again for
 * the request. This scanner reads the bytes once and allocates nothing. It
 * answers only when it is sure that json_loadb would have read the same
 * text the same way: the text is one JSON object, valid by RFC 8259 and by
 * jansson's own rules (strict UTF-8, no \u0000, surrogates in pairs,
 * integers that fit in json_int_t, reals that do not overflow), and the
 * keys and strings it reads hold no escape. For anything else (a syntax
 * error, an escaped key at a level it reads, an integer of 19 digits or
 * more, nesting deeper than SCAN_MAX_DEPTH) it returns false and the
 * caller parses with jansson as before.
 *
 * Answers: a key given twice counts as jansson counts it (the last wins).
 * Requests are parsed with JSON_REJECT_DUPLICATES, so there the scan is
 * strict: every key of every object is compared with the others of its
 * object, and an escaped key, or an object of more than SCAN_MAX_KEYS
 * members, sends the request to jansson (which decides on duplicates). */
#include <stdint.h>
#include <string.h>

#include "router/adapter_internal.h"
#include "router_internal.h"

enum { SCAN_MAX_DEPTH = 64, SCAN_MAX_KEYS = 24 };

/* What the object being scanned is to the caller. */
enum level {
    L_OTHER,
    L_TOP,
    L_USAGE,
    L_PROMPT_DETAILS,
    L_INPUT_DETAILS,
    L_REQ_TOP,            /* the app's request */
    L_REQ_STREAM_OPTIONS, /* its stream_options */
};

struct scan {
    const unsigned char *p, *end;
    unsigned depth, max_depth;
    bool strict; /* no escaped key, no key twice in an object (requests) */
    bool syntax; /* syntax only (kp_router__json_syntax_ok): \u0000 and any number */
    struct kp_answer_facts *answer;
    struct kp_request_facts *request;
};

static bool scan_object(struct scan *s, enum level lv);

static bool at(const struct scan *s, unsigned char c)
{
    return s->p < s->end && *s->p == c;
}

static bool is_digit(const struct scan *s)
{
    return s->p < s->end && *s->p >= '0' && *s->p <= '9';
}

static bool is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static void skip_ws(struct scan *s)
{
    while (s->p < s->end && is_ws(*s->p))
        s->p++;
}

static int hex4(const unsigned char *p)
{
    int v = 0;
    for (int i = 0; i < 4; i++) {
        int d = kp_hex_value((char)p[i]);
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

/* The bytes among the 8 at @p that scan_string must look at (a quote, a
 * backslash, a control or a non-ASCII byte) as the high bits of a mask; 0
 * when there are none. Bytes after the first one may be marked wrongly,
 * never before it. Strings are mostly plain ASCII, so they are passed over
 * 8 bytes at a time: the byte loop was most of a scan's cost. */
static uint64_t specials_in_8(const unsigned char *p)
{
    uint64_t x;
    memcpy(&x, p, sizeof(x));
    return kp_word_has_byte(x, '"') | kp_word_has_byte(x, '\\') | kp_word_has_below(x, 0x20) |
           (x & KP_WORD_HIGHS);
}

/* A string, s->p on its opening quote: its bytes between the quotes into
 * @str and @len, and whether it holds an escape. */
static bool scan_string(struct scan *s, const char **str, size_t *len, bool *escaped)
{
    const unsigned char *p = s->p + 1, *end = s->end;
    *escaped = false;
    while (p < end) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        if (end - p >= 8) {
            uint64_t m = specials_in_8(p);
            if (m == 0) {
                p += 8;
                continue;
            }
            p += (unsigned)__builtin_ctzll(m) / 8; /* the first: the byte loop's */
        }
#endif
        unsigned char c = *p;
        if (c == '"') {
            *str = (const char *)s->p + 1;
            *len = (size_t)(p - s->p - 1);
            s->p = p + 1;
            return true;
        }
        if (c < 0x20)
            return false;
        if (c >= 0x80) {
            /* jansson's rules too: no overlong form, surrogate or code
             * point past U+10FFFF. */
            size_t n = kp_utf8_len(p, (size_t)(end - p));
            if (n == 0)
                return false;
            p += n;
            continue;
        }
        if (c != '\\') {
            p++;
            continue;
        }
        *escaped = true;
        if (end - p < 2)
            return false;
        c = p[1];
        if (c == 'u') {
            /* jansson refuses \u0000 and a surrogate that is not half of a
             * high-low pair. */
            int v = end - p >= 6 ? hex4(p + 2) : -1;
            if (v < 0 || (v == 0 && !s->syntax) || (v >= 0xDC00 && v <= 0xDFFF))
                return false;
            p += 6;
            if (v >= 0xD800 && v <= 0xDBFF) {
                int lo = end - p >= 6 && p[0] == '\\' && p[1] == 'u' ? hex4(p + 2) : -1;
                if (lo < 0xDC00 || lo > 0xDFFF)
                    return false;
                p += 6;
            }
            continue;
        }
        if (c != '"' && c != '\\' && c != '/' && c != 'b' && c != 'f' && c != 'n' && c != 'r' &&
            c != 't')
            return false;
        p += 2;
    }
    return false;
}

/* A number, s->p on its first byte. *is_int when it has neither fraction
 * nor exponent, with its value in *value. */
static bool scan_number(struct scan *s, bool *is_int, int64_t *value)
{
    bool neg = at(s, '-');
    if (neg)
        s->p++;
    const unsigned char *digits = s->p;
    if (at(s, '0'))
        s->p++;
    else if (is_digit(s))
        while (is_digit(s))
            s->p++;
    else
        return false;
    size_t nint = (size_t)(s->p - digits);
    if (is_digit(s)) /* a leading zero */
        return false;
    bool real = false;
    long exp = 0;
    if (at(s, '.')) {
        s->p++;
        if (!is_digit(s))
            return false;
        while (is_digit(s))
            s->p++;
        real = true;
    }
    if (at(s, 'e') || at(s, 'E')) {
        s->p++;
        bool eneg = at(s, '-');
        if (at(s, '+') || at(s, '-'))
            s->p++;
        const unsigned char *e0 = s->p;
        if (!is_digit(s))
            return false;
        for (; is_digit(s); s->p++)
            if (s->p - e0 < 6)
                exp = exp * 10 + (*s->p - '0');
        if (s->p - e0 > 6 && !s->syntax)
            return false;
        exp = eneg ? -exp : exp;
        real = true;
    }
    *is_int = !real;
    if (s->syntax) {
        *value = 0; /* not read: too big a number is jansson's other error */
        return true;
    }
    if (real) {
        /* Below 10^(nint + exp): past 10^300 it might overflow a double,
         * which jansson refuses (underflow it takes). */
        return (long)nint + exp <= 300;
    }
    if (nint > 18) /* might not fit in json_int_t (jansson refuses those) */
        return false;
    int64_t v = 0;
    for (const unsigned char *d = digits; d < s->p; d++)
        v = v * 10 + (*d - '0');
    *value = neg ? -v : v;
    return true;
}

static bool scan_literal(struct scan *s, const char *lit, size_t n)
{
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, lit, n) != 0)
        return false;
    s->p += n;
    return true;
}

static bool skip_value(struct scan *s)
{
    const char *str;
    size_t len;
    bool esc, is_int;
    int64_t v;
    if (s->p >= s->end)
        return false;
    switch (*s->p) {
    case '{':
        return scan_object(s, L_OTHER);
    case '[':
        if (++s->depth > s->max_depth)
            return false;
        s->p++;
        skip_ws(s);
        if (at(s, ']')) {
            s->p++;
            s->depth--;
            return true;
        }
        for (;;) {
            if (!skip_value(s))
                return false;
            skip_ws(s);
            if (at(s, ']')) {
                s->p++;
                s->depth--;
                return true;
            }
            if (!at(s, ','))
                return false;
            s->p++;
            skip_ws(s);
        }
    case '"':
        return scan_string(s, &str, &len, &esc);
    case 't':
        return scan_literal(s, "true", 4);
    case 'f':
        return scan_literal(s, "false", 5);
    case 'n':
        return scan_literal(s, "null", 4);
    default:
        return scan_number(s, &is_int, &v);
    }
}

/* A token count: what uint_at (attempt.c) makes of the value. */
static bool scan_count(struct scan *s, uint64_t *out)
{
    bool is_int = false;
    int64_t v = 0;
    *out = 0;
    if (s->p < s->end && (*s->p == '-' || (*s->p >= '0' && *s->p <= '9'))) {
        if (!scan_number(s, &is_int, &v))
            return false;
        if (is_int && v > 0)
            *out = (uint64_t)v;
        return true;
    }
    return skip_value(s);
}

static bool key_is(const char *key, size_t len, const char *name)
{
    return len == strlen(name) && memcmp(key, name, len) == 0;
}

/* The value of member @key of the app's request at level @lv. Anything
 * but the plain case (a model that is an unescaped string, stream true,
 * false or null) goes to jansson, which gives the error answers. */
static bool scan_request_member(struct scan *s, enum level lv, const char *key, size_t klen)
{
    struct kp_request_facts *f = s->request;
    bool esc;
    if (lv == L_REQ_TOP && key_is(key, klen, "model"))
        return at(s, '"') && scan_string(s, &f->model, &f->model_len, &esc) && !esc;
    if (lv == L_REQ_TOP && key_is(key, klen, "stream")) {
        f->stream = at(s, 't');
        return scan_literal(s, "true", 4) || scan_literal(s, "false", 5) ||
               scan_literal(s, "null", 4);
    }
    if (lv == L_REQ_TOP && key_is(key, klen, "stream_options")) {
        f->stream_options = true;
        return at(s, '{') ? scan_object(s, L_REQ_STREAM_OPTIONS) : skip_value(s);
    }
    if (lv == L_REQ_STREAM_OPTIONS && key_is(key, klen, "include_usage")) {
        f->include_usage = at(s, 't');
        return skip_value(s);
    }
    return skip_value(s);
}

/* The value of member @key of an object at level @lv, s->p on it. */
static bool scan_member(struct scan *s, enum level lv, const char *key, size_t klen)
{
    struct kp_answer_facts *f = s->answer;
    if (lv >= L_REQ_TOP)
        return scan_request_member(s, lv, key, klen);
    if (lv == L_TOP && key_is(key, klen, "model")) {
        f->model = NULL;
        if (!at(s, '"'))
            return skip_value(s);
        bool esc;
        if (!scan_string(s, &f->model, &f->model_len, &esc) || esc)
            return false;
        return true;
    }
    if (lv == L_TOP && key_is(key, klen, "choices")) {
        /* Whether it is [] (a stream's usage-only chunk), then skipped. */
        const unsigned char *start = s->p;
        f->choices = true;
        f->choices_empty = false;
        if (at(s, '[')) {
            s->p++;
            skip_ws(s);
            f->choices_empty = at(s, ']');
            s->p = start;
        }
        return skip_value(s);
    }
    if (lv == L_TOP && key_is(key, klen, "usage")) {
        f->usage = false;
        memset(&f->u, 0, sizeof(f->u));
        if (!at(s, '{'))
            return skip_value(s);
        f->usage = true;
        return scan_object(s, L_USAGE);
    }
    if (lv == L_USAGE) {
        uint64_t *count = key_is(key, klen, "prompt_tokens")       ? &f->u.prompt_tokens
                          : key_is(key, klen, "input_tokens")      ? &f->u.input_tokens
                          : key_is(key, klen, "completion_tokens") ? &f->u.completion_tokens
                          : key_is(key, klen, "output_tokens")     ? &f->u.output_tokens
                                                                   : NULL;
        if (count != NULL)
            return scan_count(s, count);
        bool prompt = key_is(key, klen, "prompt_tokens_details");
        if (prompt || key_is(key, klen, "input_tokens_details")) {
            /* Present even when not an object (uint_at then reads 0). */
            *(prompt ? &f->u.prompt_details : &f->u.input_details) = true;
            *(prompt ? &f->u.prompt_cached : &f->u.input_cached) = 0;
            if (!at(s, '{'))
                return skip_value(s);
            return scan_object(s, prompt ? L_PROMPT_DETAILS : L_INPUT_DETAILS);
        }
    }
    if ((lv == L_PROMPT_DETAILS || lv == L_INPUT_DETAILS) && key_is(key, klen, "cached_tokens"))
        return scan_count(s, lv == L_PROMPT_DETAILS ? &f->u.prompt_cached : &f->u.input_cached);
    return skip_value(s);
}

/* An object, s->p on its '{'. */
static bool scan_object(struct scan *s, enum level lv)
{
    const char *seen[SCAN_MAX_KEYS];
    size_t seen_len[SCAN_MAX_KEYS];
    unsigned nseen = 0;
    if (++s->depth > s->max_depth)
        return false;
    s->p++;
    skip_ws(s);
    if (at(s, '}')) {
        s->p++;
        s->depth--;
        return true;
    }
    for (;;) {
        const char *key;
        size_t klen;
        bool esc;
        if (!at(s, '"') || !scan_string(s, &key, &klen, &esc))
            return false;
        if (esc && (lv != L_OTHER || s->strict))
            return false; /* might name a member read here (or another key) once decoded */
        if (s->strict) {
            if (nseen == SCAN_MAX_KEYS)
                return false;
            for (unsigned i = 0; i < nseen; i++)
                if (seen_len[i] == klen && memcmp(seen[i], key, klen) == 0)
                    return false;
            seen[nseen] = key;
            seen_len[nseen++] = klen;
        }
        skip_ws(s);
        if (!at(s, ':'))
            return false;
        s->p++;
        skip_ws(s);
        if (!scan_member(s, lv, key, klen))
            return false;
        skip_ws(s);
        if (at(s, '}')) {
            s->p++;
            s->depth--;
            return true;
        }
        if (!at(s, ','))
            return false;
        s->p++;
        skip_ws(s);
    }
}

static bool scan_document(struct scan *s, enum level lv)
{
    skip_ws(s);
    if (!at(s, '{') || !scan_object(s, lv))
        return false;
    skip_ws(s);
    return s->p == s->end;
}

/* A scan of the @len bytes at @data, no deeper than @max_depth. */
static struct scan scan_start(const char *data, size_t len, unsigned max_depth)
{
    return (struct scan){.p = (const unsigned char *)data,
                         .end = (const unsigned char *)data + len,
                         .max_depth = max_depth};
}

bool kp_router__scan_answer(const char *data, size_t len, struct kp_answer_facts *f)
{
    memset(f, 0, sizeof(*f));
    if (data == NULL)
        return false;
    struct scan s = scan_start(data, len, SCAN_MAX_DEPTH);
    s.answer = f;
    return scan_document(&s, L_TOP);
}

bool kp_router__scan_request(const char *data, size_t len, struct kp_request_facts *f)
{
    memset(f, 0, sizeof(*f));
    if (data == NULL)
        return false;
    struct scan s = scan_start(data, len, SCAN_MAX_DEPTH);
    s.strict = true;
    s.request = f;
    return scan_document(&s, L_REQ_TOP) && f->model != NULL;
}

bool kp_router__json_syntax_ok(const char *text, size_t len)
{
    if (text == NULL)
        return false;
    struct scan s = scan_start(text, len, JSON_PARSER_MAX_DEPTH);
    s.syntax = true;
    skip_ws(&s);
    if (!skip_value(&s))
        return false;
    skip_ws(&s);
    return s.p == s.end;
}

/* --- "usage" in stream events ------------------------------------------------------------ */

/* Whether the quote at @q opens a member name: in JSON only '{' or ','
 * (and whitespace) come before one. This tells the key "usage" from the
 * same bytes after an escaped quote inside another name or a string. */
static bool opens_key(const char *data, const char *q)
{
    while (q > data && is_ws(q[-1]))
        q--;
    return q > data && (q[-1] == '{' || q[-1] == ',');
}

/* The span of a "usage": null member from its key at @key to its value's
 * end at @after, widened to one comma beside it; nothing when neither side
 * has one (the only member, which stays). */
static void null_span(const char *data, const char *end, const char *key, const char *after,
                      size_t *from, size_t *to)
{
    const char *q = key;
    while (q > data && is_ws(q[-1]))
        q--;
    if (q > data && q[-1] == ',') {
        key = q - 1; /* ..., "usage": null} */
    } else {
        while (after < end && is_ws(*after))
            after++;
        if (after >= end || *after != ',')
            return;
        after++; /* {"usage":null, ... */
    }
    *from = (size_t)(key - data);
    *to = (size_t)(after - data);
}

enum kp_usage_member kp_router__usage_member(const char *data, size_t len, size_t *from, size_t *to)
{
    const char *end = data + len, *p = end;
    *from = *to = 0;
    /* OpenAI's chunks end with it: ..."usage":null}, found without a
     * search. Its closing brace is the text's last byte, so it is the
     * top-level member. */
    while (p > data && is_ws(p[-1]))
        p--;
    if (p - data >= 13 && p[-1] == '}' && memcmp(p - 5, "null", 4) == 0) {
        const char *q = p - 5;
        while (q > data && is_ws(q[-1]))
            q--;
        if (q > data && q[-1] == ':') {
            q--;
            while (q > data && is_ws(q[-1]))
                q--;
            if (q - data >= 7 && memcmp(q - 7, "\"usage\"", 7) == 0 && opens_key(data, q - 7)) {
                null_span(data, end, q - 7, p - 1, from, to);
                return KP_USAGE_NULL;
            }
        }
    }
    /* Elsewhere: every "usage" key in the text is looked at, found by its
     * 'g' (memchr: a rarer byte in JSON than the quote, and a quicker
     * search than memmem's); the key is p[-4] to p[2] around its 'g' at p.
     * An object anywhere wins (one in a nested object only costs the
     * caller a parse); else the first null is the one cut. */
    if (len < 7)
        return KP_USAGE_NONE;
    enum kp_usage_member found = KP_USAGE_NONE;
    const char *last = end - 2;
    p = data + 4;
    while (p < last && (p = memchr(p, 'g', (size_t)(last - p))) != NULL) {
        const char *key = p - 4;
        if (memcmp(key, "\"usage\"", 7) != 0 || !opens_key(data, key)) {
            p++;
            continue;
        }
        p += 3;
        while (p < end && is_ws(*p))
            p++;
        if (p >= end || *p != ':')
            continue;
        p++;
        while (p < end && is_ws(*p))
            p++;
        if (p < end && *p == '{') {
            *from = *to = 0;
            return KP_USAGE_OBJECT;
        }
        if (found == KP_USAGE_NONE && (size_t)(end - p) >= 4 && memcmp(p, "null", 4) == 0) {
            null_span(data, end, key, p + 4, from, to);
            found = KP_USAGE_NULL;
        }
    }
    return found;
}

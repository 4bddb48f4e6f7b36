/* Request bodies read in place: the hot route checks a body once and then
 * reads the members it needs straight from the text, with no tree and no
 * allocation (a jansson parse was most of the cost of a chat completion).
 *
 * The check is sound but not complete. When kp_mock__raw_check() accepts a
 * body, json_loadb(body, len, 0, ...) returns an object, and every reader
 * below gives what the matching jansson call gives on that object: the last
 * of duplicate members wins, a string's length is its decoded length. It
 * refuses every body jansson refuses (bad syntax, control characters, bad
 * escapes, lone surrogates, \u0000, malformed UTF-8, integers beyond
 * json_int_t, reals beyond a double) and, to stay short, some valid ones:
 * object keys with escapes, integers of more than 18 digits, reals that come
 * near DBL_MAX and nesting deeper than RAW_MAX_DEPTH. The caller hands
 * whatever it refuses to jansson, which also words the 400s.
 *
 * The readers trust the checked text: they never look past a value's end and
 * need no bounds of their own. */
#include <stddef.h>
#include <string.h>

#include "internal.h"

#define RAW_MAX_DEPTH      64
#define RAW_MAX_INT_DIGITS 18 /* always fits json_int_t (long long) */
/* A real below 10^RAW_MAX_REAL_EXP is finite as a double. */
#define RAW_MAX_REAL_EXP 300

static bool is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* The UTF-16 code unit of the four hex digits at @p, or -1. */
static long hex4(const char *p)
{
    long v = 0;

    for (int i = 0; i < 4; i++) {
        int d = kp_hex_value(p[i]);

        if (d < 0)
            return -1;
        v = v << 4 | d;
    }
    return v;
}

/* The code point of the \u escape whose hex digits start at *p, joining a
 * surrogate pair; *p moves past it. -1 for a bad escape or a lone
 * surrogate, which jansson refuses. */
static long unicode_escape(const char **p, const char *end)
{
    long hi, lo;

    if (end - *p < 4 || (hi = hex4(*p)) < 0)
        return -1;
    *p += 4;
    if (hi < 0xd800 || hi > 0xdfff)
        return hi;
    if (hi > 0xdbff || end - *p < 6 || (*p)[0] != '\\' || (*p)[1] != 'u')
        return -1;
    lo = hex4(*p + 2);
    if (lo < 0xdc00 || lo > 0xdfff)
        return -1;
    *p += 6;
    return 0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00);
}

/* --- the check ----------------------------------------------------------- */

struct scan {
    const char *p;
    const char *end;
};

static void skip_ws(struct scan *s)
{
    while (s->p < s->end && is_ws(*s->p))
        s->p++;
}

static bool eat(struct scan *s, char c)
{
    if (s->p == s->end || *s->p != c)
        return false;
    s->p++;
    return true;
}

static size_t eat_digits(struct scan *s)
{
    const char *start = s->p;

    while (s->p < s->end && is_digit(*s->p))
        s->p++;
    return (size_t)(s->p - start);
}

/* The escape at s->p (on its backslash). */
static bool check_escape(struct scan *s)
{
    if (s->end - s->p < 2)
        return false;
    s->p += 2;
    switch (s->p[-1]) {
    case '"':
    case '\\':
    case '/':
    case 'b':
    case 'f':
    case 'n':
    case 'r':
    case 't':
        return true;
    case 'u':
        return unicode_escape(&s->p, s->end) > 0; /* jansson refuses U+0000 */
    default:
        return false;
    }
}

/* The string at s->p (on its opening quote). */
static bool check_string(struct scan *s, bool key)
{
    const unsigned char *u;
    size_t n;

    s->p++;
    for (;;) {
        while (s->p < s->end && (unsigned char)*s->p >= 0x20 && (unsigned char)*s->p < 0x80 &&
               *s->p != '"' && *s->p != '\\')
            s->p++;
        if (s->p == s->end)
            return false;
        u = (const unsigned char *)s->p;
        if (*u == '"') {
            s->p++;
            return true;
        }
        if (*u == '\\') {
            if (key || !check_escape(s))
                return false;
        } else if (*u >= 0x80 &&
                   (n = kp_utf8_len(u, (size_t)((const unsigned char *)s->end - u))) > 0) {
            s->p += n;
        } else {
            return false; /* a control character or malformed UTF-8 */
        }
    }
}

/* The exponent's digits as a number, saturated. */
static long eat_exponent(struct scan *s)
{
    long e = 0;

    while (s->p < s->end && is_digit(*s->p)) {
        if (e < 100000)
            e = e * 10 + (*s->p - '0');
        s->p++;
    }
    return e;
}

static bool check_number(struct scan *s)
{
    const char *exp_start;
    size_t int_digits;
    bool real = false;
    long exp = 0;

    eat(s, '-');
    if (eat(s, '0'))
        int_digits = 1;
    else if (s->p < s->end && *s->p >= '1' && *s->p <= '9')
        int_digits = eat_digits(s);
    else
        return false;
    if (eat(s, '.')) {
        real = true;
        if (eat_digits(s) == 0)
            return false;
    }
    if (eat(s, 'e') || eat(s, 'E')) {
        bool negative = !eat(s, '+') && eat(s, '-');

        real = true;
        exp_start = s->p;
        exp = eat_exponent(s);
        if (s->p == exp_start)
            return false;
        if (negative)
            exp = -exp;
    }
    if (real)
        return (long)int_digits + exp <= RAW_MAX_REAL_EXP;
    return int_digits <= RAW_MAX_INT_DIGITS;
}

static bool check_word(struct scan *s, const char *word)
{
    size_t n = strlen(word);

    if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n) != 0)
        return false;
    s->p += n;
    return true;
}

static bool check_value(struct scan *s, unsigned depth);

static bool check_object(struct scan *s, unsigned depth)
{
    s->p++;
    skip_ws(s);
    if (eat(s, '}'))
        return true;
    do {
        skip_ws(s);
        if (s->p == s->end || *s->p != '"' || !check_string(s, true))
            return false;
        skip_ws(s);
        if (!eat(s, ':'))
            return false;
        skip_ws(s);
        if (!check_value(s, depth + 1))
            return false;
        skip_ws(s);
    } while (eat(s, ','));
    return eat(s, '}');
}

static bool check_array(struct scan *s, unsigned depth)
{
    s->p++;
    skip_ws(s);
    if (eat(s, ']'))
        return true;
    do {
        skip_ws(s);
        if (!check_value(s, depth + 1))
            return false;
        skip_ws(s);
    } while (eat(s, ','));
    return eat(s, ']');
}

/* Any value; @depth counts like jansson's (the top-level value is 1). A
 * literal or number ends where the grammar says, so "truex" or "01" leave
 * a character that the enclosing object or array refuses. */
static bool check_value(struct scan *s, unsigned depth)
{
    if (s->p == s->end || depth > RAW_MAX_DEPTH)
        return false;
    switch (*s->p) {
    case '{':
        return check_object(s, depth);
    case '[':
        return check_array(s, depth);
    case '"':
        return check_string(s, false);
    case 't':
        return check_word(s, "true");
    case 'f':
        return check_word(s, "false");
    case 'n':
        return check_word(s, "null");
    default:
        return check_number(s);
    }
}

bool kp_mock__raw_check(const char *body, size_t len, struct kp_mock_raw *out)
{
    struct scan s = {body, body + len};

    skip_ws(&s);
    if (s.p == s.end || *s.p != '{')
        return false;
    out->p = s.p;
    if (!check_object(&s, 1))
        return false;
    out->end = s.p;
    skip_ws(&s);
    return s.p == s.end;
}

/* --- reading checked text ------------------------------------------------ */

static const char *skip_blank(const char *p)
{
    while (is_ws(*p))
        p++;
    return p;
}

/* Past the closing quote of the string opening at @p: the first quote not
 * escaped by an odd run of backslashes. strchr() rather than a loop over
 * bytes, whose test of each byte for a backslash makes a chain of dependent
 * loads several times slower; a checked string holds no NUL. */
static const char *skip_string(const char *p)
{
    size_t backslashes;

    do {
        p = strchr(p + 1, '"');
        for (backslashes = 0; p[-1 - (ptrdiff_t)backslashes] == '\\'; backslashes++)
            ;
    } while (backslashes % 2 == 1);
    return p + 1;
}

static const char *skip_container(const char *p)
{
    unsigned depth = 0;

    do {
        if (*p == '"') {
            p = skip_string(p);
            continue;
        }
        if (*p == '{' || *p == '[')
            depth++;
        else if (*p == '}' || *p == ']')
            depth--;
        p++;
    } while (depth > 0);
    return p;
}

static const char *skip_value(const char *p)
{
    if (*p == '"')
        return skip_string(p);
    if (*p == '{' || *p == '[')
        return skip_container(p);
    while (!is_ws(*p) && *p != ',' && *p != '}' && *p != ']')
        p++;
    return p;
}

/* Whether the unescaped key of @len bytes at @key is @name. */
static bool key_is(const char *key, size_t len, const char *name)
{
    for (size_t i = 0; i < len; i++) {
        if (key[i] != name[i]) /* also stops at the end of a shorter @name */
            return false;
    }
    return name[len] == '\0';
}

/* From the end of a member or element to the start of the next one, or to
 * the closing bracket. */
static const char *next_item(const char *p)
{
    p = skip_blank(p);
    return *p == ',' ? skip_blank(p + 1) : p;
}

void kp_mock__raw_members(const struct kp_mock_raw *obj, const char *const names[], unsigned n,
                          struct kp_mock_raw out[])
{
    const char *p, *key, *value;
    size_t key_len;

    for (unsigned i = 0; i < n; i++)
        out[i].p = out[i].end = NULL;
    if (!kp_mock__raw_is(obj, KP_MOCK_RAW_OBJECT))
        return;
    for (p = skip_blank(obj->p + 1); *p == '"'; p = next_item(p)) {
        key = p + 1;
        p = skip_string(p);
        key_len = (size_t)(p - 1 - key);       /* keys are unescaped */
        value = skip_blank(skip_blank(p) + 1); /* past ':' */
        p = skip_value(value);
        for (unsigned i = 0; i < n; i++) {
            if (key_is(key, key_len, names[i])) {
                out[i].p = value;
                out[i].end = p;
            }
        }
    }
}

bool kp_mock__raw_member(const struct kp_mock_raw *obj, const char *name, struct kp_mock_raw *out)
{
    kp_mock__raw_members(obj, &name, 1, out);
    return out->p != NULL;
}

bool kp_mock__raw_empty(const struct kp_mock_raw *v)
{
    char close = *skip_blank(v->p + 1);

    return close == ']' || close == '}';
}

bool kp_mock__raw_next(const struct kp_mock_raw *arr, struct kp_mock_raw *item)
{
    const char *p;

    if (!kp_mock__raw_is(arr, KP_MOCK_RAW_ARRAY))
        return false;
    p = item->p == NULL ? skip_blank(arr->p + 1) : next_item(item->end);
    if (*p == ']')
        return false;
    item->p = p;
    item->end = skip_value(p);
    return true;
}

size_t kp_mock__raw_strlen(const struct kp_mock_raw *str)
{
    const char *p = str->p + 1, *end = str->end - 1, *esc;
    size_t n = 0;
    long cp;

    while ((esc = memchr(p, '\\', (size_t)(end - p))) != NULL) {
        n += (size_t)(esc - p);
        p = esc + 2;
        if (esc[1] != 'u') {
            n++;
            continue;
        }
        cp = unicode_escape(&p, end);
        n += cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
    }
    return n + (size_t)(end - p);
}

bool kp_mock__raw_plain(const struct kp_mock_raw *str, const char **s, size_t *len)
{
    *s = str->p + 1;
    *len = (size_t)(str->end - str->p) - 2;
    return memchr(*s, '\\', *len) == NULL;
}

bool kp_mock__raw_int(const struct kp_mock_raw *num, long long *out)
{
    const char *p = num->p;
    bool negative = *p == '-';
    unsigned long long v = 0; /* a real's digits may run past LLONG_MAX */

    if (negative)
        p++;
    if (!is_digit(*p))
        return false;
    for (; p < num->end; p++) {
        if (!is_digit(*p))
            return false; /* a real */
        v = v * 10 + (unsigned)(*p - '0');
    }
    /* An integer has at most RAW_MAX_INT_DIGITS digits: no overflow. */
    *out = negative ? -(long long)v : (long long)v;
    return true;
}

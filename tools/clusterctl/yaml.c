/* YAML documents as jansson values, both ways (libfyaml).
 *
 * Reading: a file is parsed into a libfyaml document (aliases and merge keys
 * resolved), which must be the only document of the file; a syntax error
 * names the file and the line. Nodes are then converted to jansson with YAML
 * 1.2's core schema, so `weight: 2` is a number and `name: "2"` a string;
 * the lines of the nodes stay available for messages about an item
 * (apply's "pools.yaml:12: pools[1]: no id").
 *
 * Writing: the value is rebuilt as a libfyaml document and emitted in block
 * style. A string is written plain only when it would read back as the same
 * string under both YAML 1.2 and 1.1 (which still call `yes` and `on`
 * booleans); anything else is double-quoted. libfyaml's event emitter
 * mangles a sequence of mappings (0.7.12), so the document path is used. */
#include <ctype.h>
#include <errno.h>
#include <libfyaml.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clusterctl.h"

static int errf(char *errmsg, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int errf(char *errmsg, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errmsg, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* --- parsing --------------------------------------------------------------- */

static void diag_discard(struct fy_diag *diag, void *user, const char *buf, size_t len)
{
    (void)diag;
    (void)user;
    (void)buf;
    (void)len;
}

/* Diagnostics are collected, not printed: the first error becomes our one
 * message with the file and line. */
static struct fy_diag *diag_new(void)
{
    struct fy_diag_cfg dcfg;
    struct fy_diag *diag;

    fy_diag_cfg_default(&dcfg);
    dcfg.fp = NULL;
    dcfg.output_fn = diag_discard;
    dcfg.colorize = false;
    diag = fy_diag_create(&dcfg);
    if (diag != NULL)
        fy_diag_set_collect_errors(diag, true);
    return diag;
}

static int syntax_error(const char *path, struct fy_diag *diag, char *errmsg, size_t errlen)
{
    struct fy_diag_error *e;
    void *iter = NULL;
    while ((e = fy_diag_errors_iterate(diag, &iter)) != NULL) {
        if (e->type >= FYET_ERROR)
            return errf(errmsg, errlen, "%s:%d: YAML syntax error: %s", path, e->line,
                        e->msg ? e->msg : "unknown");
    }
    return errf(errmsg, errlen, "cannot read %s", path);
}

/* Loads the first document and makes sure there is no second one. An empty
 * stream is an empty document (no root). */
static struct fy_document *load_stream(struct fy_parser *parser, const char *path,
                                       struct fy_diag *diag, char *errmsg, size_t errlen)
{
    struct fy_document *doc = fy_parse_load_document(parser);
    struct fy_document *more;

    if (doc == NULL) {
        if (fy_parser_get_stream_error(parser)) {
            syntax_error(path, diag, errmsg, errlen);
            return NULL;
        }
        if ((doc = fy_document_create(NULL)) == NULL)
            errf(errmsg, errlen, "out of memory");
        return doc;
    }
    more = fy_parse_load_document(parser);
    if (more != NULL || fy_parser_get_stream_error(parser)) {
        if (more != NULL)
            errf(errmsg, errlen, "%s:%d: a second YAML document (after ---): put everything in one",
                 path, kp_ctl__yaml_line(fy_document_root(more)));
        else
            syntax_error(path, diag, errmsg, errlen);
        if (more != NULL)
            fy_parse_document_destroy(parser, more);
        fy_document_destroy(doc);
        return NULL;
    }
    return doc;
}

/* All of @fp in a buffer (kp_free() it) and its length; NULL on a read error
 * or out of memory, with errno set. */
static char *read_all(FILE *fp, size_t *len)
{
    size_t cap = 8192, n = 0;
    char *buf = kp_malloc(cap);
    while (buf != NULL) {
        n += fread(buf + n, 1, cap - n, fp);
        if (ferror(fp)) {
            kp_free(buf);
            return NULL;
        }
        if (n < cap) {
            *len = n;
            return buf;
        }
        char *bigger = kp_realloc(buf, cap * 2);
        if (bigger == NULL)
            kp_free(buf);
        buf = bigger;
        cap *= 2;
    }
    errno = ENOMEM;
    return NULL;
}

struct fy_document *kp_ctl__yaml_parse_file(const char *path, char *errmsg, size_t errlen)
{
    struct fy_parse_cfg pcfg;
    struct fy_parser *parser = NULL;
    struct fy_document *doc = NULL;
    struct fy_diag *diag = NULL;
    bool from_stdin = strcmp(path, "-") == 0;
    const char *name = from_stdin ? "stdin" : path;
    FILE *fp = from_stdin ? stdin : fopen(path, "re");
    FILE *mem = NULL;
    char *text = NULL;
    size_t len = 0, bad;

    if (fp == NULL || (text = read_all(fp, &len)) == NULL) {
        errf(errmsg, errlen, "cannot read %s: %s", path, strerror(errno));
        goto out;
    }
    /* YAML is Unicode text; libfyaml 0.7 loops forever on some bytes that
     * are not UTF-8 (a directive "%\xff"), so they never reach it. */
    if ((bad = kp_utf8_invalid_at(text, len)) < len) {
        errf(errmsg, errlen, "%s: byte %zu: not UTF-8 (YAML is UTF-8 text)", name, bad + 1);
        goto out;
    }
    memset(&pcfg, 0, sizeof(pcfg));
    pcfg.flags = FYPCF_QUIET | FYPCF_RESOLVE_DOCUMENT;
    if ((diag = diag_new()) == NULL ||
        (mem = len > 0 ? fmemopen(text, len, "r") : fopen("/dev/null", "re")) == NULL) {
        errf(errmsg, errlen, "out of memory");
        goto out;
    }
    pcfg.diag = diag;
    if ((parser = fy_parser_create(&pcfg)) == NULL ||
        fy_parser_set_input_fp(parser, name, mem) != 0) {
        errf(errmsg, errlen, "out of memory");
        goto out;
    }
    doc = load_stream(parser, name, diag, errmsg, errlen);
out:
    /* The document keeps what it needs of the input after this. */
    if (parser != NULL)
        fy_parser_destroy(parser);
    if (mem != NULL)
        fclose(mem);
    kp_free(text);
    if (fp != NULL && !from_stdin)
        fclose(fp);
    if (diag != NULL)
        fy_diag_destroy(diag);
    return doc;
}

/* The first scalar token at or under @node: where the node starts, close
 * enough for a message (a block mapping starts with its first key). */
static struct fy_token *first_token(struct fy_node *node)
{
    struct fy_node_pair *pair;
    struct fy_node *item;
    void *iter = NULL;

    if (node == NULL)
        return NULL;
    switch (fy_node_get_type(node)) {
    case FYNT_SCALAR:
        return fy_node_get_scalar_token(node);
    case FYNT_SEQUENCE:
        item = fy_node_sequence_iterate(node, &iter);
        return first_token(item);
    case FYNT_MAPPING:
        pair = fy_node_mapping_iterate(node, &iter);
        return pair != NULL ? first_token(fy_node_pair_key(pair)) : NULL;
    }
    return NULL;
}

int kp_ctl__yaml_line(struct fy_node *node)
{
    struct fy_token *t = first_token(node);
    const struct fy_mark *m = t != NULL ? fy_token_start_mark(t) : NULL;
    return m != NULL ? m->line + 1 : 0;
}

/* --- YAML to JSON ---------------------------------------------------------- */

static bool matches_number(const char *s, bool *is_int)
{
    const char *p = s + (*s == '-' || *s == '+');
    bool digits = false, frac = false;

    while (isdigit((unsigned char)*p))
        p++, digits = true;
    *is_int = digits && *p == '\0';
    if (*p == '.') {
        for (p++; isdigit((unsigned char)*p); p++)
            frac = true;
    }
    if (!digits && !frac)
        return false;
    if (*p == 'e' || *p == 'E') {
        p += 1 + (p[1] == '-' || p[1] == '+');
        if (!isdigit((unsigned char)*p))
            return false;
        while (isdigit((unsigned char)*p))
            p++;
    }
    return *p == '\0';
}

static bool one_of(const char *s, const char *const *words)
{
    for (; *words != NULL; words++) {
        if (strcmp(s, *words) == 0)
            return true;
    }
    return false;
}

static const char *const null_words[] = {"", "~", "null", "Null", "NULL", NULL};
static const char *const true_words[] = {"true", "True", "TRUE", NULL};
static const char *const false_words[] = {"false", "False", "FALSE", NULL};

static bool tagged_str(struct fy_node *node)
{
    size_t len = 0;
    const char *tag = fy_node_get_tag(node, &len);
    return tag != NULL && len >= 3 && memcmp(tag + len - 3, "str", 3) == 0;
}

static json_t *scalar_to_json(struct fy_node *node, const char *path, char *errmsg, size_t errlen)
{
    size_t len = 0;
    const char *text = fy_node_get_scalar(node, &len);
    char buf[64];
    bool is_int;

    if (text == NULL)
        text = "";
    if (fy_node_get_style(node) == FYNS_PLAIN && !tagged_str(node) && len < sizeof(buf)) {
        memcpy(buf, text, len);
        buf[len] = '\0';
        if (one_of(buf, null_words))
            return json_null();
        if (one_of(buf, true_words) || one_of(buf, false_words))
            return json_boolean(one_of(buf, true_words));
        if (matches_number(buf, &is_int)) {
            errno = 0;
            long long v = is_int ? strtoll(buf, NULL, 10) : 0;
            if (errno != 0) {
                errf(errmsg, errlen, "%s:%d: %s: number out of range", path,
                     kp_ctl__yaml_line(node), buf);
                return NULL;
            }
            return is_int ? json_integer(v) : json_real(strtod(buf, NULL));
        }
    }
    json_t *s = json_stringn(text, len);
    if (s == NULL)
        errf(errmsg, errlen, "%s:%d: not valid UTF-8", path, kp_ctl__yaml_line(node));
    return s;
}

static json_t *mapping_to_json(struct fy_node *node, const char *path, char *errmsg, size_t errlen)
{
    json_t *obj = json_object();
    struct fy_node_pair *pair;
    void *iter = NULL;

    while (obj != NULL && (pair = fy_node_mapping_iterate(node, &iter)) != NULL) {
        struct fy_node *key = fy_node_pair_key(pair);
        size_t len = 0;
        const char *k = key != NULL && fy_node_get_type(key) == FYNT_SCALAR
                            ? fy_node_get_scalar(key, &len)
                            : NULL;
        json_t *v;

        if (k == NULL || memchr(k, '\0', len) != NULL) {
            errf(errmsg, errlen, "%s:%d: a key must be a plain string", path,
                 kp_ctl__yaml_line(key != NULL ? key : node));
            goto err;
        }
        if (kp_ctl__yaml_to_json(fy_node_pair_value(pair), path, &v, errmsg, errlen) != 0)
            goto err;
        if (json_object_setn_new(obj, k, len, v) != 0) {
            errf(errmsg, errlen, "%s:%d: key '%.*s' is not valid UTF-8", path,
                 kp_ctl__yaml_line(key), (int)len, k);
            goto err;
        }
    }
    if (obj == NULL)
        errf(errmsg, errlen, "out of memory");
    return obj;
err:
    json_decref(obj);
    return NULL;
}

int kp_ctl__yaml_to_json(struct fy_node *node, const char *path, json_t **out, char *errmsg,
                         size_t errlen)
{
    struct fy_node *item;
    void *iter = NULL;
    json_t *v = NULL;

    if (node == NULL) {
        v = json_null();
    } else if (fy_node_get_type(node) == FYNT_SCALAR) {
        v = scalar_to_json(node, path, errmsg, errlen);
    } else if (fy_node_get_type(node) == FYNT_MAPPING) {
        v = mapping_to_json(node, path, errmsg, errlen);
    } else if ((v = json_array()) != NULL) {
        while ((item = fy_node_sequence_iterate(node, &iter)) != NULL) {
            json_t *x;
            if (kp_ctl__yaml_to_json(item, path, &x, errmsg, errlen) != 0) {
                json_decref(v);
                return -1;
            }
            json_array_append_new(v, x);
        }
    } else {
        errf(errmsg, errlen, "out of memory");
    }
    *out = v;
    return v != NULL ? 0 : -1;
}

/* --- JSON to YAML ---------------------------------------------------------- */

/* Whether @s reads back as the same string when written plain. */
static bool plain_safe(const char *s)
{
    static const char *const yaml11_words[] = {"yes", "Yes", "YES", "no",  "No",  "NO",
                                               "on",  "On",  "ON",  "off", "Off", "OFF",
                                               "y",   "Y",   "n",   "N",   NULL};
    size_t len = strlen(s);
    bool is_int;

    if (len == 0 || len > 1024 || !(isalpha((unsigned char)s[0]) || strchr("_./", s[0])))
        return false;
    for (const char *p = s; *p != '\0'; p++) {
        if (!isalnum((unsigned char)*p) && strchr("_-./:@+ ()", *p) == NULL)
            return false;
    }
    if (s[len - 1] == ' ' || s[len - 1] == ':' || strstr(s, ": ") != NULL)
        return false;
    return !one_of(s, null_words) && !one_of(s, true_words) && !one_of(s, false_words) &&
           !one_of(s, yaml11_words) && !matches_number(s, &is_int) && strcmp(s, ".inf") != 0 &&
           strcmp(s, ".nan") != 0 && strcmp(s, ".Inf") != 0 && strcmp(s, ".NaN") != 0;
}

static struct fy_node *string_node(struct fy_document *doc, const char *s)
{
    struct fy_node *node;
    char *quoted;

    if (plain_safe(s))
        return fy_node_create_scalar_copy(doc, s, strlen(s));
    /* A JSON string literal is a valid YAML double-quoted scalar. The node
     * points into its source, so the document takes the malloc()ed text
     * (jansson's default allocator) and frees it when destroyed. */
    json_t *str = json_string(s);
    quoted = str != NULL ? json_dumps(str, JSON_ENCODE_ANY) : NULL;
    json_decref(str);
    if (quoted == NULL)
        return NULL;
    node = fy_node_build_from_malloc_string(doc, quoted, strlen(quoted));
    return node;
}

static struct fy_node *build_node(struct fy_document *doc, const json_t *v);

static struct fy_node *build_mapping(struct fy_document *doc, const json_t *v)
{
    struct fy_node *map = fy_node_create_mapping(doc);
    const char *key;
    json_t *value;

    json_object_foreach((json_t *)v, key, value)
    {
        struct fy_node *k = string_node(doc, key);
        struct fy_node *x = build_node(doc, value);
        if (map == NULL || k == NULL || x == NULL || fy_node_mapping_append(map, k, x) != 0) {
            fy_node_free(k);
            fy_node_free(x);
            fy_node_free(map);
            return NULL;
        }
    }
    return map;
}

static struct fy_node *build_sequence(struct fy_document *doc, const json_t *v)
{
    struct fy_node *seq = fy_node_create_sequence(doc);
    size_t i;
    json_t *item;

    json_array_foreach(v, i, item)
    {
        struct fy_node *x = build_node(doc, item);
        if (seq == NULL || x == NULL || fy_node_sequence_append(seq, x) != 0) {
            fy_node_free(x);
            fy_node_free(seq);
            return NULL;
        }
    }
    return seq;
}

static struct fy_node *build_node(struct fy_document *doc, const json_t *v)
{
    struct fy_node *node;
    char *text;

    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return build_mapping(doc, v);
    case JSON_ARRAY:
        return build_sequence(doc, v);
    case JSON_STRING:
        return string_node(doc, json_string_value(v));
    default:
        /* Numbers, booleans and null: JSON's spelling is YAML's. */
        if ((text = json_dumps(v, JSON_ENCODE_ANY)) == NULL)
            return NULL;
        node = fy_node_create_scalar_copy(doc, text, strlen(text));
        free(text);
        return node;
    }
}

char *kp_ctl__yaml_dump(const json_t *v)
{
    const enum fy_emitter_cfg_flags flags =
        FYECF_MODE_BLOCK | FYECF_INDENT_2 | FYECF_WIDTH_INF | FYECF_DOC_START_MARK_OFF;
    struct fy_document *doc = fy_document_create(NULL);
    struct fy_node *root = doc != NULL ? build_node(doc, v) : NULL;
    char *text = NULL;

    if (root != NULL && fy_document_set_root(doc, root) == 0)
        text = fy_emit_document_to_string(doc, flags);
    else
        fy_node_free(root);
    fy_document_destroy(doc);
    return text;
}

/* --- files holding one object ---------------------------------------------- */

static bool is_json_file(const char *path)
{
    size_t n = strlen(path);
    return n > 5 && strcmp(path + n - 5, ".json") == 0;
}

int kp_ctl__load_object(const char *path, json_t **out, char *errmsg, size_t errlen)
{
    json_error_t jerr;
    struct fy_document *doc;
    json_t *v = NULL;

    if (is_json_file(path)) {
        if ((v = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr)) == NULL)
            return jerr.line > 0 ? errf(errmsg, errlen, "%s:%d: JSON syntax error: %s", path,
                                        jerr.line, jerr.text)
                                 : errf(errmsg, errlen, "cannot read %s: %s", path, jerr.text);
    } else {
        if ((doc = kp_ctl__yaml_parse_file(path, errmsg, errlen)) == NULL)
            return -1;
        int rc = fy_document_root(doc) == NULL
                     ? errf(errmsg, errlen, "%s is empty", path)
                     : kp_ctl__yaml_to_json(fy_document_root(doc), path, &v, errmsg, errlen);
        fy_document_destroy(doc);
        if (rc != 0)
            return -1;
    }
    if (!json_is_object(v)) {
        json_decref(v);
        return errf(errmsg, errlen, "%s must hold one object (a mapping of field: value)", path);
    }
    *out = v;
    return 0;
}

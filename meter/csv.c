/* CSV as RFC 4180 writes it: the usage export (writer) and the vendor
 * bills reconciliation reads (reader). */
#include <stdio.h>
#include <string.h>

#include "meter/meter.h"

static bool needs_quotes(const char *s, size_t len)
{
    if (len == 0)
        return false;
    if (s[0] == ' ' || s[len - 1] == ' ')
        return true;
    /* At the start of a text a reader would drop it as a byte-order mark. */
    if (len >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0)
        return true;
    for (size_t i = 0; i < len; i++)
        if (s[i] == ',' || s[i] == '"' || s[i] == '\r' || s[i] == '\n')
            return true;
    return false;
}

int kp_csv_field(struct kp_buf *out, const char *s, size_t len, bool first)
{
    size_t mark = out->len;
    int rc = first ? KP_OK : kp_buf_append_lit(out, ",");
    if (rc == KP_OK && !needs_quotes(s, len)) {
        rc = kp_buf_append(out, s, len);
    } else if (rc == KP_OK) {
        rc = kp_buf_append_lit(out, "\"");
        size_t from = 0;
        for (size_t i = 0; rc == KP_OK && i <= len; i++) {
            if (i < len && s[i] != '"')
                continue;
            rc = kp_buf_append(out, s + from, i - from);
            if (rc == KP_OK && i < len)
                rc = kp_buf_append_lit(out, "\"\"");
            from = i + 1;
        }
        if (rc == KP_OK)
            rc = kp_buf_append_lit(out, "\"");
    }
    if (rc != KP_OK) {
        /* kp_buf_append fails with -1: leave @out as it was, terminated. */
        out->len = mark;
        if (out->data != NULL)
            out->data[mark] = '\0';
        return KP_ENOMEM;
    }
    return KP_OK;
}

int kp_csv_end(struct kp_buf *out)
{
    return kp_buf_append_lit(out, "\r\n") == 0 ? KP_OK : KP_ENOMEM;
}

void kp_csv_reader_init(struct kp_csv_reader *r, const void *buf, size_t len)
{
    memset(r, 0, sizeof(*r));
    r->buf = buf;
    r->len = len;
    r->line = 1;
    r->next_line = 1;
    kp_buf_init(&r->text);
    if (len >= 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0)
        r->pos = 3;
}

void kp_csv_reader_close(struct kp_csv_reader *r)
{
    kp_buf_free(&r->text);
    r->n_fields = 0;
}

/* Errors stick: later calls return false with the same err and errmsg. */
static bool fail(struct kp_csv_reader *r, int err, size_t line, const char *why)
{
    snprintf(r->errmsg, sizeof(r->errmsg), "line %zu: %s", line, why);
    r->err = err;
    r->n_fields = 0;
    return false;
}

/* Reads one field at r->pos into r->text, NUL-terminated; stops at the
 * comma or line end that follows it (not consumed) or at the end. Counts the
 * line breaks inside quotes in r->next_line. */
static bool read_field(struct kp_csv_reader *r)
{
    const char *b = r->buf;
    size_t start = r->text.len;
    size_t quote_line = r->next_line; /* where an unterminated quote opened */
    bool quoted = r->pos < r->len && b[r->pos] == '"';

    if (quoted)
        r->pos++;
    for (;;) {
        if (r->pos >= r->len) {
            if (quoted)
                return fail(r, KP_EPARSE, quote_line, "a quoted field is never closed");
            break;
        }
        char c = b[r->pos];
        if (c == '\0')
            return fail(r, KP_EPARSE, r->next_line, "a NUL byte");
        if (quoted && c == '"') {
            if (r->pos + 1 < r->len && b[r->pos + 1] == '"') {
                r->pos += 2;
            } else {
                r->pos++;
                quoted = false;
                if (r->pos < r->len && b[r->pos] != ',' && b[r->pos] != '\r' && b[r->pos] != '\n')
                    return fail(r, KP_EPARSE, r->next_line, "text after a closing quote");
                continue;
            }
        } else if (!quoted && (c == ',' || c == '\r' || c == '\n')) {
            break;
        } else if (!quoted && c == '"') {
            return fail(r, KP_EPARSE, r->next_line, "a quote inside an unquoted field");
        } else {
            r->next_line += c == '\n';
            r->pos++;
        }
        if (r->text.len - start >= KP_CSV_MAX_FIELD)
            return fail(r, KP_EPARSE, r->line, "a field longer than 65536 bytes");
        if (kp_buf_append(&r->text, &c, 1) != 0)
            return fail(r, KP_ENOMEM, r->line, "out of memory");
    }
    if (kp_buf_append(&r->text, "", 1) != 0)
        return fail(r, KP_ENOMEM, r->line, "out of memory");
    return true;
}

/* Fields are stored one after the other in r->text, each NUL-terminated;
 * their offsets are turned into pointers once the record is complete (the
 * buffer may move while it grows). */
bool kp_csv_next(struct kp_csv_reader *r)
{
    size_t offs[KP_CSV_MAX_FIELDS];
    size_t n = 0;

    r->n_fields = 0;
    r->text.len = 0;
    if (r->err != KP_OK || r->pos >= r->len)
        return false;
    r->line = r->next_line;
    for (;;) {
        if (n == KP_CSV_MAX_FIELDS)
            return fail(r, KP_EPARSE, r->line, "more than 256 fields in a record");
        offs[n++] = r->text.len;
        if (!read_field(r))
            return false;
        if (r->pos < r->len && r->buf[r->pos] == ',') {
            r->pos++;
            continue;
        }
        /* End of record: CRLF, LF, a lone CR, or the end of the text. */
        if (r->pos < r->len && r->buf[r->pos] == '\r')
            r->pos++;
        if (r->pos < r->len && r->buf[r->pos] == '\n')
            r->pos++;
        r->next_line++;
        break;
    }
    for (size_t i = 0; i < n; i++)
        r->fields[i] = r->text.data + offs[i];
    r->n_fields = n;
    return true;
}

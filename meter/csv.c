/* CSV as RFC 4180 writes it: the usage export (writer) and the vendor
 * bills reconciliation reads (reader). */
#include <string.h>

#include "meter/meter.h"

static bool needs_quotes(const char *s, size_t len)
{
    if (len == 0)
        return false;
    if (s[0] == ' ' || s[len - 1] == ' ')
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
    if (rc != KP_OK)
        out->len = mark;
    return rc;
}

int kp_csv_end(struct kp_buf *out)
{
    return kp_buf_append_lit(out, "\r\n");
}

void kp_csv_reader_init(struct kp_csv_reader *r, const void *buf, size_t len)
{
    memset(r, 0, sizeof(*r));
    r->buf = buf;
    r->len = len;
    r->line = 1;
    kp_buf_init(&r->text);
    if (len >= 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0)
        r->pos = 3;
}

void kp_csv_reader_close(struct kp_csv_reader *r)
{
    kp_buf_free(&r->text);
    r->n_fields = 0;
}

static int fail(struct kp_csv_reader *r, size_t line, const char *why)
{
    snprintf(r->errmsg, sizeof(r->errmsg), "line %zu: %s", line, why);
    r->pos = r->len + 1; /* sticky */
    return KP_EPARSE;
}

/* Fields are stored one after the other in r->text, each NUL-terminated;
 * their offsets are turned into pointers once the record is complete (the
 * buffer may move while it grows). */
int kp_csv_next(struct kp_csv_reader *r)
{
    size_t offs[KP_CSV_MAX_FIELDS];
    if (r->pos > r->len)
        return KP_EPARSE;
    r->n_fields = 0;
    r->text.len = 0;
    if (r->pos == r->len)
        return 0;
    size_t line = r->line, n = 0;
    const char *b = r->buf;
    for (;;) {
        if (n == KP_CSV_MAX_FIELDS)
            return fail(r, line, "more than 256 fields in a record");
        offs[n++] = r->text.len;
        size_t start = r->text.len;
        bool quoted = r->pos < r->len && b[r->pos] == '"';
        if (quoted)
            r->pos++;
        for (;;) {
            if (r->pos >= r->len) {
                if (quoted)
                    return fail(r, line, "a quoted field is never closed");
                break;
            }
            char c = b[r->pos];
            if (c == '\0')
                return fail(r, r->line, "a NUL byte");
            if (quoted && c == '"') {
                if (r->pos + 1 < r->len && b[r->pos + 1] == '"') {
                    r->pos += 2;
                    c = '"';
                } else {
                    r->pos++;
                    quoted = false;
                    if (r->pos < r->len && b[r->pos] != ',' && b[r->pos] != '\r' &&
                        b[r->pos] != '\n')
                        return fail(r, r->line, "text after a closing quote");
                    continue;
                }
            } else if (!quoted && (c == ',' || c == '\r' || c == '\n')) {
                break;
            } else if (!quoted && c == '"') {
                return fail(r, r->line, "a quote inside an unquoted field");
            } else {
                if (c == '\n')
                    r->line++;
                r->pos++;
            }
            if (r->text.len - start >= KP_CSV_MAX_FIELD)
                return fail(r, line, "a field longer than 65536 bytes");
            if (kp_buf_append(&r->text, &c, 1) != KP_OK)
                return KP_ENOMEM;
        }
        if (kp_buf_append(&r->text, "", 1) != KP_OK)
            return KP_ENOMEM;
        if (r->pos < r->len && b[r->pos] == ',') {
            r->pos++;
            continue;
        }
        /* End of record: CRLF, LF, a lone CR, or the end of the text. */
        if (r->pos < r->len && b[r->pos] == '\r')
            r->pos++;
        if (r->pos < r->len && b[r->pos] == '\n')
            r->pos++;
        r->line++;
        break;
    }
    for (size_t i = 0; i < n; i++)
        r->fields[i] = (char *)r->text.data + offs[i];
    r->n_fields = n;
    return 1;
}

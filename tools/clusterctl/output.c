/* What commands print: tables with aligned columns, "KEY  value" records,
 * and documents as JSON or YAML.
 *
 * A table is built in two passes: every cell is formatted first (a column's
 * cell function turns the JSON value at its field into text), then the
 * widths are known and the rows are printed. Cells are cleaned of control
 * characters as they are formatted, so what reaches the terminal is
 * printable whatever the server sent. Widths count UTF-8 code points, which
 * is right for the ids and names the registry holds. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clusterctl.h"

enum { COLUMN_GAP = 2 };

void kp_ctl__print_clean(FILE *out, const char *s)
{
    for (; *s != '\0'; s++)
        fputc(((unsigned char)*s < 0x20 || *s == 0x7f) ? '?' : *s, out);
}

void kp_ctl__print_json(const json_t *v)
{
    char *s = json_dumps(v, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY);
    if (s != NULL) {
        puts(s);
        free(s);
    }
}

void kp_ctl__print_doc(const struct kp_ctl *ctl, const json_t *v)
{
    char *s;

    if (ctl->output != KP_CTL_OUTPUT_YAML) {
        kp_ctl__print_json(v);
        return;
    }
    if ((s = kp_ctl__yaml_dump(v)) != NULL) {
        fputs(s, stdout);
        free(s);
    }
}

/* --- cells ----------------------------------------------------------------- */

static void append_clean(struct kp_buf *out, const char *s)
{
    for (; *s != '\0'; s++) {
        char c = ((unsigned char)*s < 0x20 || *s == 0x7f) ? '?' : *s;
        kp_buf_append(out, &c, 1);
    }
}

static void append_scalar(struct kp_buf *out, const json_t *v)
{
    char *s;

    if (json_is_string(v)) {
        append_clean(out, json_string_value(v));
    } else if (json_is_integer(v)) {
        kp_buf_appendf(out, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    } else if (json_is_boolean(v)) {
        append_clean(out, json_is_true(v) ? "yes" : "no");
    } else if (v != NULL && !json_is_null(v) &&
               (s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY))) {
        append_clean(out, s);
        free(s);
    }
}

void kp_ctl__cell_text(struct kp_buf *out, const json_t *value, const json_t *row)
{
    size_t i;
    json_t *item;

    (void)row;
    if (!json_is_array(value)) {
        append_scalar(out, value);
        return;
    }
    json_array_foreach(value, i, item)
    {
        if (i > 0)
            kp_buf_append_lit(out, ",");
        append_scalar(out, item);
    }
}

void kp_ctl__cell_count(struct kp_buf *out, const json_t *value, const json_t *row)
{
    (void)row;
    if (json_is_array(value))
        kp_buf_appendf(out, "%zu", json_array_size(value));
    else if (json_is_object(value))
        kp_buf_appendf(out, "%zu", json_object_size(value));
}

void kp_ctl__cell_time(struct kp_buf *out, const json_t *value, const json_t *row)
{
    char buf[40];

    (void)row;
    if (!json_is_integer(value))
        return;
    if (json_integer_value(value) == 0) {
        kp_buf_append_lit(out, "never");
        return;
    }
    kp_format_time_ms(json_integer_value(value), buf, sizeof(buf));
    append_clean(out, buf);
}

void kp_ctl__cell_usd(struct kp_buf *out, const json_t *value, const json_t *row)
{
    json_int_t n;
    char frac[16];
    int len;

    (void)row;
    if (!json_is_integer(value))
        return;
    n = json_integer_value(value);
    if (n < 0) {
        kp_buf_appendf(out, "%" JSON_INTEGER_FORMAT, n);
        return;
    }
    /* Nine decimals of nano-USD, trailing zeros dropped down to cents. */
    len = snprintf(frac, sizeof(frac), "%09" JSON_INTEGER_FORMAT, n % 1000000000);
    while (len > 2 && frac[len - 1] == '0')
        frac[--len] = '\0';
    kp_buf_appendf(out, "$%" JSON_INTEGER_FORMAT ".%s", n / 1000000000, frac);
}

void kp_ctl__cell_ms(struct kp_buf *out, const json_t *value, const json_t *row)
{
    json_int_t ms;

    (void)row;
    if (!json_is_integer(value))
        return;
    ms = json_integer_value(value);
    if (ms < 1000)
        kp_buf_appendf(out, "%" JSON_INTEGER_FORMAT "ms", ms);
    else if (ms < 60000)
        kp_buf_appendf(out, "%.1fs", (double)ms / 1000);
    else if (ms < 3600000)
        kp_buf_appendf(out, "%" JSON_INTEGER_FORMAT "m", ms / 60000);
    else
        kp_buf_appendf(out, "%" JSON_INTEGER_FORMAT "h", ms / 3600000);
}

/* The value at the dotted path @field of @row. Through a list the rest of
 * the path is taken in every item, and the result is a new list: *owned
 * says so (json_decref it). */
static json_t *lookup(const json_t *row, const char *field, bool *owned)
{
    const char *dot = strchr(field, '.');
    size_t n = dot != NULL ? (size_t)(dot - field) : strlen(field);
    json_t *v = json_is_object(row) ? json_object_getn(row, field, n) : NULL;
    json_t *list, *item;
    size_t i;

    *owned = false;
    if (dot == NULL || v == NULL)
        return v;
    if (!json_is_array(v))
        return lookup(v, dot + 1, owned);
    if ((list = json_array()) == NULL)
        return NULL;
    json_array_foreach(v, i, item)
    {
        bool item_owned;
        json_t *x = lookup(item, dot + 1, &item_owned);
        if (x != NULL)
            json_array_append(list, x);
        if (item_owned)
            json_decref(x);
    }
    *owned = true;
    return list;
}

static char *format_cell(const struct kp_ctl_column *col, const json_t *row)
{
    struct kp_buf out;
    bool owned;
    json_t *v = lookup(row, col->field, &owned);

    kp_buf_init(&out);
    (col->cell ? col->cell : kp_ctl__cell_text)(&out, v, row);
    if (owned)
        json_decref(v);
    if (out.len == 0)
        kp_buf_append_lit(&out, "-");
    return out.data; /* NULL when out of memory: printed as empty */
}

/* --- tables and records ---------------------------------------------------- */

static size_t display_width(const char *s)
{
    size_t n = 0;
    for (; s != NULL && *s != '\0'; s++)
        n += ((unsigned char)*s & 0xc0) != 0x80;
    return n;
}

static void print_padded(const char *s, size_t width, bool last)
{
    fputs(s != NULL ? s : "", stdout);
    if (!last)
        printf("%*s", (int)(width - display_width(s) + COLUMN_GAP), "");
}

void kp_ctl__print_table(const struct kp_ctl_column *cols, size_t n, const json_t *rows)
{
    size_t n_rows = json_array_size(rows);
    char **cells = kp_calloc(n_rows * n + 1, sizeof(char *));
    size_t *width = kp_calloc(n + 1, sizeof(size_t));

    if (cells == NULL || width == NULL) {
        kp_free(cells);
        kp_free(width);
        fputs("clusterctl: out of memory\n", stderr);
        return;
    }
    for (size_t c = 0; c < n; c++)
        width[c] = display_width(cols[c].header);
    for (size_t r = 0; r < n_rows; r++) {
        for (size_t c = 0; c < n; c++) {
            char *cell = format_cell(&cols[c], json_array_get(rows, r));
            cells[r * n + c] = cell;
            if (display_width(cell) > width[c])
                width[c] = display_width(cell);
        }
    }
    for (size_t c = 0; c < n; c++)
        print_padded(cols[c].header, width[c], c + 1 == n);
    putchar('\n');
    for (size_t r = 0; r < n_rows; r++) {
        for (size_t c = 0; c < n; c++)
            print_padded(cells[r * n + c], width[c], c + 1 == n);
        putchar('\n');
    }
    for (size_t i = 0; i < n_rows * n; i++)
        kp_free(cells[i]);
    kp_free(cells);
    kp_free(width);
}

void kp_ctl__print_record(const struct kp_ctl_column *cols, size_t n, const json_t *obj)
{
    size_t width = 0;

    for (size_t c = 0; c < n; c++) {
        if (display_width(cols[c].header) > width)
            width = display_width(cols[c].header);
    }
    for (size_t c = 0; c < n; c++) {
        char *cell = format_cell(&cols[c], obj);
        print_padded(cols[c].header, width, false);
        fputs(cell != NULL ? cell : "", stdout);
        putchar('\n');
        kp_free(cell);
    }
}

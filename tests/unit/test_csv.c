/* Unit tests of meter's CSV writer and reader (meter/csv.c) against RFC
 * 4180: when the writer quotes and how it doubles quotes; how the reader
 * takes CRLF, LF and lone CR line ends, quoted fields with doubled quotes
 * and embedded line breaks, a byte-order mark, empty fields; the errors it
 * reports with their line numbers (and that they stick); its limits; the
 * writer's output read back over many random records; and allocation
 * failures on both sides. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "meter/meter.h"

/* --- helpers ------------------------------------------------------------- */

/* One field through the writer, as a C string (static storage). */
static const char *write_one(const char *s, size_t len, bool first)
{
    static char out[256];
    struct kp_buf b;
    kp_buf_init(&b);
    assert_int_equal(kp_csv_field(&b, s, len, first), KP_OK);
    assert_true(b.len < sizeof(out));
    memcpy(out, b.data != NULL ? b.data : "", b.len);
    out[b.len] = '\0';
    kp_buf_free(&b);
    return out;
}

/* Reads the next record of @r and checks it holds exactly the fields given
 * (a NULL-terminated list). */
static void expect_record(struct kp_csv_reader *r, ...)
{
    va_list ap;
    size_t i = 0;
    const char *want;

    assert_true(kp_csv_next(r));
    va_start(ap, r);
    while ((want = va_arg(ap, const char *)) != NULL) {
        assert_true(i < r->n_fields);
        assert_string_equal(r->fields[i], want);
        i++;
    }
    va_end(ap);
    assert_int_equal(r->n_fields, i);
}

/* Reads @text to its end or its first error; returns the error (KP_OK at
 * the end), with the message in @msg. */
static int first_error(const char *text, size_t len, char *msg, size_t msglen)
{
    struct kp_csv_reader r;
    int rc;

    kp_csv_reader_init(&r, text, len);
    while (kp_csv_next(&r))
        ;
    rc = r.err;
    snprintf(msg, msglen, "%s", r.errmsg);
    kp_csv_reader_close(&r);
    return rc;
}

/* The end of the text, reached without an error (and it stays the end). */
static void expect_end(struct kp_csv_reader *r)
{
    assert_false(kp_csv_next(r));
    assert_int_equal(r->err, KP_OK);
    assert_int_equal(r->n_fields, 0);
    assert_false(kp_csv_next(r));
    assert_int_equal(r->err, KP_OK);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

/* xorshift64*: deterministic, so a failure reproduces. */
static uint64_t rng(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

/* --- writer -------------------------------------------------------------- */

/* Fields are quoted only when they hold a comma, a quote, CR or LF, or
 * start or end with a space; quotes inside are doubled. */
static void test_writer_quoting(void **state)
{
    (void)state;
    assert_string_equal(write_one("plain", 5, true), "plain");
    assert_string_equal(write_one("plain", 5, false), ",plain");
    assert_string_equal(write_one("", 0, true), "");
    assert_string_equal(write_one("", 0, false), ",");
    assert_string_equal(write_one("a,b", 3, true), "\"a,b\"");
    assert_string_equal(write_one("say \"hi\"", 8, true), "\"say \"\"hi\"\"\"");
    assert_string_equal(write_one("\"", 1, true), "\"\"\"\"");
    assert_string_equal(write_one("a\r\nb", 4, true), "\"a\r\nb\"");
    assert_string_equal(write_one("a\nb", 3, true), "\"a\nb\"");
    assert_string_equal(write_one("a\rb", 3, true), "\"a\rb\"");
    assert_string_equal(write_one(" lead", 5, true), "\" lead\"");
    assert_string_equal(write_one("trail ", 6, true), "\"trail \"");
    assert_string_equal(write_one("in side", 7, true), "in side");
    assert_string_equal(write_one("caf\xc3\xa9", 5, true), "caf\xc3\xa9");
    /* A leading byte-order mark would be dropped by a reader. */
    assert_string_equal(write_one("\xEF\xBB\xBFx", 4, true), "\"\xEF\xBB\xBFx\"");
    /* Only @len bytes are read: the rest of the string is not written. */
    assert_string_equal(write_one("abc,def", 3, true), "abc");
}

/* A record ends with CRLF; a whole record reads back as written. */
static void test_writer_record(void **state)
{
    struct kp_buf b;
    (void)state;

    kp_buf_init(&b);
    assert_int_equal(kp_csv_field(&b, "start", 5, true), KP_OK);
    assert_int_equal(kp_csv_field(&b, "a,b", 3, false), KP_OK);
    assert_int_equal(kp_csv_field(&b, "", 0, false), KP_OK);
    assert_int_equal(kp_csv_end(&b), KP_OK);
    assert_int_equal(kp_csv_field(&b, "x", 1, true), KP_OK);
    assert_int_equal(kp_csv_end(&b), KP_OK);
    assert_string_equal(b.data, "start,\"a,b\",\r\nx\r\n");
    kp_buf_free(&b);
}

/* When the buffer cannot grow the writer says KP_ENOMEM and leaves what
 * was written before untouched (and still NUL-terminated). */
static void test_writer_out_of_memory(void **state)
{
    struct kp_buf b;
    char big[600];
    (void)state;

    memset(big, '"', sizeof(big));
    kp_buf_init(&b);
    assert_int_equal(kp_csv_field(&b, "keep", 4, true), KP_OK);
    kp_alloc_fail_after(0);
    assert_int_equal(kp_csv_field(&b, big, sizeof(big), false), KP_ENOMEM);
    assert_int_equal(kp_csv_end(&b), KP_OK); /* fits without growing */
    kp_alloc_fail_reset();
    assert_string_equal(b.data, "keep\r\n");
    kp_buf_free(&b);

    kp_buf_init(&b);
    kp_alloc_fail_after(0);
    assert_int_equal(kp_csv_end(&b), KP_ENOMEM);
    kp_alloc_fail_reset();
    assert_int_equal(b.len, 0);
    kp_buf_free(&b);
}

/* --- reader: what it accepts --------------------------------------------- */

/* CRLF, LF and a lone CR all end a record, and may be mixed; the last
 * record needs no line end. */
static void test_reader_line_ends(void **state)
{
    const char text[] = "a,b\r\nc,d\ne,f\rg,h";
    struct kp_csv_reader r;
    (void)state;

    kp_csv_reader_init(&r, text, sizeof(text) - 1);
    expect_record(&r, "a", "b", NULL);
    assert_int_equal(r.line, 1);
    expect_record(&r, "c", "d", NULL);
    assert_int_equal(r.line, 2);
    expect_record(&r, "e", "f", NULL);
    expect_record(&r, "g", "h", NULL);
    assert_int_equal(r.line, 4);
    expect_end(&r);
    kp_csv_reader_close(&r);
}

/* Quoted fields hold commas, doubled quotes and line breaks (CRLF kept as
 * is); line numbers count the breaks inside them. */
static void test_reader_quoted(void **state)
{
    const char text[] = "\"a,b\",\"say \"\"hi\"\"\",\"\"\r\n"
                        "\"two\r\nlines\",\"lf\nonly\",x\r\n"
                        "\"\"\"\",\"\"\"\"\"\"\r\n"
                        "after\r\n";
    struct kp_csv_reader r;
    (void)state;

    kp_csv_reader_init(&r, text, sizeof(text) - 1);
    expect_record(&r, "a,b", "say \"hi\"", "", NULL);
    assert_int_equal(r.line, 1);
    expect_record(&r, "two\r\nlines", "lf\nonly", "x", NULL);
    assert_int_equal(r.line, 2);
    expect_record(&r, "\"", "\"\"", NULL);
    assert_int_equal(r.line, 5);
    expect_record(&r, "after", NULL);
    assert_int_equal(r.line, 6);
    expect_end(&r);
    kp_csv_reader_close(&r);
}

/* A UTF-8 byte-order mark is skipped at the start, and only there. */
static void test_reader_bom(void **state)
{
    const char text[] = "\xEF\xBB\xBFid,name\r\n\xEF\xBB\xBFx,y\r\n";
    struct kp_csv_reader r;
    (void)state;

    kp_csv_reader_init(&r, text, sizeof(text) - 1);
    expect_record(&r, "id", "name", NULL);
    expect_record(&r, "\xEF\xBB\xBFx", "y", NULL);
    expect_end(&r);
    kp_csv_reader_close(&r);

    /* A BOM alone is an empty text. */
    kp_csv_reader_init(&r, "\xEF\xBB\xBF", 3);
    expect_end(&r);
    kp_csv_reader_close(&r);

    /* A part of a BOM is data. */
    kp_csv_reader_init(&r, "\xEF\xBB", 2);
    expect_record(&r, "\xEF\xBB", NULL);
    kp_csv_reader_close(&r);
}

/* Empty fields anywhere, an empty last field before a line end or at the
 * end of the text, and a blank line as one empty field. */
static void test_reader_empty_fields(void **state)
{
    const char text[] = ",,\r\na,,b\r\na,\r\n\r\n\"\",\"\"\nlast,";
    struct kp_csv_reader r;
    (void)state;

    kp_csv_reader_init(&r, text, sizeof(text) - 1);
    expect_record(&r, "", "", "", NULL);
    expect_record(&r, "a", "", "b", NULL);
    expect_record(&r, "a", "", NULL);
    expect_record(&r, "", NULL);
    expect_record(&r, "", "", NULL);
    expect_record(&r, "last", "", NULL);
    expect_end(&r);
    kp_csv_reader_close(&r);

    kp_csv_reader_init(&r, "", 0);
    expect_end(&r);
    kp_csv_reader_close(&r);
    kp_csv_reader_init(&r, NULL, 0);
    expect_end(&r);
    kp_csv_reader_close(&r);
}

/* Spaces are data: nothing is trimmed, quoted or not. */
static void test_reader_spaces_kept(void **state)
{
    const char text[] = " a , \" b \" \r\n";
    char msg[160];
    struct kp_csv_reader r;
    (void)state;

    /* A quote after a space is inside an unquoted field: refused. */
    assert_int_equal(first_error(text, sizeof(text) - 1, msg, sizeof(msg)), KP_EPARSE);
    kp_csv_reader_init(&r, " a ,\" b \"\r\n", 10);
    expect_record(&r, " a ", " b ", NULL);
    kp_csv_reader_close(&r);
}

/* Exactly KP_CSV_MAX_FIELDS fields and a field of exactly
 * KP_CSV_MAX_FIELD bytes (quoted or not) are accepted. */
static void test_reader_limits_accepted(void **state)
{
    struct kp_buf b;
    struct kp_csv_reader r;
    (void)state;

    kp_buf_init(&b);
    for (size_t i = 0; i < KP_CSV_MAX_FIELDS; i++)
        assert_int_equal(kp_buf_append_lit(&b, "x,"), 0);
    b.data[--b.len] = '\0'; /* 256 fields */
    kp_csv_reader_init(&r, b.data, b.len);
    assert_true(kp_csv_next(&r));
    assert_int_equal(r.n_fields, KP_CSV_MAX_FIELDS);
    kp_csv_reader_close(&r);

    b.len = 0;
    for (size_t i = 0; i < KP_CSV_MAX_FIELD; i++)
        assert_int_equal(kp_buf_append_lit(&b, "y"), 0);
    assert_int_equal(kp_buf_append_lit(&b, ",\""), 0);
    for (size_t i = 0; i < KP_CSV_MAX_FIELD; i++)
        assert_int_equal(kp_buf_append_lit(&b, "\"\""), 0); /* one quote each */
    assert_int_equal(kp_buf_append_lit(&b, "\"\r\n"), 0);
    kp_csv_reader_init(&r, b.data, b.len);
    assert_true(kp_csv_next(&r));
    assert_int_equal(r.n_fields, 2);
    assert_int_equal(strlen(r.fields[0]), KP_CSV_MAX_FIELD);
    assert_int_equal(strlen(r.fields[1]), KP_CSV_MAX_FIELD);
    expect_end(&r);
    kp_csv_reader_close(&r);
    kp_buf_free(&b);
}

/* --- reader: errors ------------------------------------------------------ */

/* An unterminated quote names the line where the quoted field opened. */
static void test_error_unterminated_quote(void **state)
{
    const char text[] = "h1,h2\r\nok,fine\r\na,\"never\r\nclosed\r\n";
    char msg[160];
    (void)state;

    assert_int_equal(first_error(text, sizeof(text) - 1, msg, sizeof(msg)), KP_EPARSE);
    assert_string_equal(msg, "line 3: a quoted field is never closed");

    /* In a record that started lines before. */
    const char text2[] = "a,\"one\ntwo\",\"three\nfour";
    assert_int_equal(first_error(text2, sizeof(text2) - 1, msg, sizeof(msg)), KP_EPARSE);
    assert_string_equal(msg, "line 2: a quoted field is never closed");

    assert_int_equal(first_error("\"", 1, msg, sizeof(msg)), KP_EPARSE);
    assert_string_equal(msg, "line 1: a quoted field is never closed");
}

/* A quote inside an unquoted field is refused, with its line. */
static void test_error_stray_quote(void **state)
{
    const char text[] = "a,b\r\nc,d\"e\r\n";
    char msg[160];
    (void)state;

    assert_int_equal(first_error(text, sizeof(text) - 1, msg, sizeof(msg)), KP_EPARSE);
    assert_string_equal(msg, "line 2: a quote inside an unquoted field");
}

/* Text after a closing quote (other than a comma or a line end) is
 * refused, with the line it is on. */
static void test_error_text_after_quote(void **state)
{
    const char text[] = "a\n\"multi\nline\"x,b\n";
    char msg[160];
    (void)state;

    assert_int_equal(first_error(text, sizeof(text) - 1, msg, sizeof(msg)), KP_EPARSE);
    assert_string_equal(msg, "line 3: text after a closing quote");
    assert_int_equal(first_error("\"a\" ,b", 6, msg, sizeof(msg)), KP_EPARSE);
    assert_string_equal(msg, "line 1: text after a closing quote");
}

/* One field more than KP_CSV_MAX_FIELDS is refused. */
static void test_error_too_many_fields(void **state)
{
    struct kp_buf b;
    char msg[160];
    (void)state;

    kp_buf_init(&b);
    assert_int_equal(kp_buf_append_lit(&b, "ok\n"), 0);
    for (size_t i = 0; i <= KP_CSV_MAX_FIELDS; i++)
        assert_int_equal(kp_buf_append_lit(&b, ","), 0); /* 257 fields */
    assert_int_equal(first_error(b.data, b.len, msg, sizeof(msg)), KP_EPARSE);
    assert_string_equal(msg, "line 2: more than 256 fields in a record");
    kp_buf_free(&b);
}

/* One byte more than KP_CSV_MAX_FIELD is refused, quoted or not. */
static void test_error_field_too_long(void **state)
{
    struct kp_buf b;
    char msg[160];
    (void)state;

    kp_buf_init(&b);
    assert_int_equal(kp_buf_append_lit(&b, "a\r\nb,"), 0);
    for (size_t i = 0; i <= KP_CSV_MAX_FIELD; i++)
        assert_int_equal(kp_buf_append_lit(&b, "z"), 0);
    assert_int_equal(first_error(b.data, b.len, msg, sizeof(msg)), KP_EPARSE);
    assert_string_equal(msg, "line 2: a field longer than 65536 bytes");

    b.len = 0;
    assert_int_equal(kp_buf_append_lit(&b, "\""), 0);
    for (size_t i = 0; i <= KP_CSV_MAX_FIELD; i++)
        assert_int_equal(kp_buf_append_lit(&b, "\n"), 0);
    assert_int_equal(kp_buf_append_lit(&b, "\""), 0);
    assert_int_equal(first_error(b.data, b.len, msg, sizeof(msg)), KP_EPARSE);
    assert_string_equal(msg, "line 1: a field longer than 65536 bytes");
    kp_buf_free(&b);
}

/* A NUL byte is refused, quoted or not, naming the line it is on. */
static void test_error_nul(void **state)
{
    char msg[160];
    (void)state;

    assert_int_equal(first_error("a,b\r\nc\0d\r\n", 10, msg, sizeof(msg)), KP_EPARSE);
    assert_string_equal(msg, "line 2: a NUL byte");
    assert_int_equal(first_error("\"x\ny\0\"", 6, msg, sizeof(msg)), KP_EPARSE);
    assert_string_equal(msg, "line 2: a NUL byte");
}

/* After an error every call fails the same way and yields no fields. */
static void test_error_sticky(void **state)
{
    const char text[] = "a,b\r\n\"bad\"x\r\nc,d\r\n";
    struct kp_csv_reader r;
    (void)state;

    kp_csv_reader_init(&r, text, sizeof(text) - 1);
    expect_record(&r, "a", "b", NULL);
    assert_false(kp_csv_next(&r));
    assert_int_equal(r.err, KP_EPARSE);
    assert_int_equal(r.n_fields, 0);
    assert_false(kp_csv_next(&r));
    assert_false(kp_csv_next(&r));
    assert_int_equal(r.err, KP_EPARSE);
    assert_int_equal(r.n_fields, 0);
    assert_string_equal(r.errmsg, "line 2: text after a closing quote");
    kp_csv_reader_close(&r);
}

/* Allocation failures end the reading with KP_ENOMEM, which sticks: the
 * reader never resumes in the middle of a record. Walked one allocation
 * at a time until the whole text reads. */
static void test_reader_out_of_memory(void **state)
{
    struct kp_buf b;
    (void)state;

    kp_buf_init(&b);
    for (int i = 0; i < 50; i++)
        assert_int_equal(kp_buf_appendf(&b, "field-%d,\"quoted, %d\",%d\r\n", i, i, i * i), 0);
    for (long n = 0;; n++) {
        struct kp_csv_reader r;
        int records = 0;
        kp_csv_reader_init(&r, b.data, b.len);
        kp_alloc_fail_after(n);
        while (kp_csv_next(&r)) {
            assert_int_equal(r.n_fields, 3);
            records++;
        }
        kp_alloc_fail_reset();
        if (r.err == KP_OK) {
            assert_int_equal(records, 50);
            kp_csv_reader_close(&r);
            break;
        }
        assert_int_equal(r.err, KP_ENOMEM);
        assert_false(kp_csv_next(&r));
        assert_int_equal(r.err, KP_ENOMEM);
        assert_int_equal(r.n_fields, 0);
        kp_csv_reader_close(&r);
    }
    kp_buf_free(&b);
}

/* --- round trip ---------------------------------------------------------- */

/* A random field: mostly letters, often the characters that need quoting,
 * sometimes other bytes (never NUL), now and then after a byte-order mark. */
static size_t random_field(char *out, size_t max)
{
    static const char special[] = ",\"\r\n ";
    size_t len = rng() % 4 == 0 ? 0 : (size_t)(rng() % max);
    for (size_t i = 0; i < len; i++) {
        uint64_t k = rng() % 10;
        if (k < 5)
            out[i] = (char)('a' + rng() % 26);
        else if (k < 8)
            out[i] = special[rng() % (sizeof(special) - 1)];
        else
            out[i] = (char)(1 + rng() % 255);
    }
    if (len >= 3 && rng() % 16 == 0)
        memcpy(out, "\xEF\xBB\xBF", 3); /* the writer must protect it */
    return len;
}

/* Whatever fields the writer writes, the reader reads back the same ones,
 * record by record, with the line numbers the text has. */
static void test_round_trip(void **state)
{
    enum { RECORDS = 400, MAX_FIELDS = 12, MAX_LEN = 40 };
    static char fields[RECORDS][MAX_FIELDS][MAX_LEN];
    static size_t lens[RECORDS][MAX_FIELDS];
    size_t counts[RECORDS];
    struct kp_buf b;
    struct kp_csv_reader r;
    (void)state;

    for (int round = 0; round < 20; round++) {
        kp_buf_init(&b);
        for (size_t i = 0; i < RECORDS; i++) {
            counts[i] = 1 + (size_t)(rng() % MAX_FIELDS);
            for (size_t j = 0; j < counts[i]; j++) {
                lens[i][j] = random_field(fields[i][j], MAX_LEN);
                assert_int_equal(kp_csv_field(&b, fields[i][j], lens[i][j], j == 0), KP_OK);
            }
            assert_int_equal(kp_csv_end(&b), KP_OK);
        }
        kp_csv_reader_init(&r, b.data, b.len);
        size_t line = 1;
        for (size_t i = 0; i < RECORDS; i++) {
            assert_true(kp_csv_next(&r));
            assert_int_equal(r.line, line);
            assert_int_equal(r.n_fields, counts[i]);
            for (size_t j = 0; j < counts[i]; j++) {
                assert_int_equal(strlen(r.fields[j]), lens[i][j]);
                assert_memory_equal(r.fields[j], fields[i][j], lens[i][j]);
                for (size_t k = 0; k < lens[i][j]; k++)
                    line += fields[i][j][k] == '\n';
            }
            line++;
        }
        expect_end(&r);
        kp_csv_reader_close(&r);
        kp_buf_free(&b);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_writer_quoting),
        cmocka_unit_test(test_writer_record),
        cmocka_unit_test(test_writer_out_of_memory),
        cmocka_unit_test(test_reader_line_ends),
        cmocka_unit_test(test_reader_quoted),
        cmocka_unit_test(test_reader_bom),
        cmocka_unit_test(test_reader_empty_fields),
        cmocka_unit_test(test_reader_spaces_kept),
        cmocka_unit_test(test_reader_limits_accepted),
        cmocka_unit_test(test_error_unterminated_quote),
        cmocka_unit_test(test_error_stray_quote),
        cmocka_unit_test(test_error_text_after_quote),
        cmocka_unit_test(test_error_too_many_fields),
        cmocka_unit_test(test_error_field_too_long),
        cmocka_unit_test(test_error_nul),
        cmocka_unit_test(test_error_sticky),
        cmocka_unit_test(test_reader_out_of_memory),
        cmocka_unit_test(test_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * test_fastcgi.c - unit tests for proxyd/upstream/fastcgi.c (records out
 * and in, the CGI head of a health check) and common/route.c's split of a
 * path into SCRIPT_NAME and PATH_INFO.
 *
 * Records out are read back by a small decoder of our own here (params()),
 * so a test states the parameters, not bytes.  The record decoder is fed
 * every input split at every byte and must answer as it does for the whole.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../common/route.h"
#include "upstream/fastcgi.h"

/* ---- reading our own records back -------------------------------------------- */

typedef struct {
    char name[300], value[70000];
} param_t;

static size_t rd_len(const unsigned char *p, size_t *at)
{
    if (p[*at] < 128)
        return p[(*at)++];
    size_t n = ((size_t)(p[*at] & 0x7f) << 24) | (size_t)p[*at + 1] << 16 | (size_t)p[*at + 2] << 8 | p[*at + 3];
    *at += 4;
    return n;
}

/* The name-value pairs of a PARAMS record at p (its header first); asserts
 * the framing and that an empty PARAMS record follows.  Returns their count. */
static size_t params(const char *rec, size_t n, param_t *out, size_t max)
{
    const unsigned char *p = (const unsigned char *)rec;
    assert_true(n >= 16);
    assert_int_equal(p[0], 1);
    assert_int_equal(p[1], FCGI_PARAMS);
    assert_int_equal(p[2] << 8 | p[3], FCGI_REQUEST_ID);
    size_t len = (size_t)p[4] << 8 | p[5], at = 8, k = 0;
    assert_int_equal(p[6], 0);
    assert_int_equal(n, 8 + len + 8);
    while (at < 8 + len) {
        size_t nn = rd_len(p, &at), vn = rd_len(p, &at);
        assert_true(at + nn + vn <= 8 + len);
        assert_true(k < max);
        memcpy(out[k].name, p + at, nn);
        out[k].name[nn] = 0;
        memcpy(out[k].value, p + at + nn, vn);
        out[k].value[vn] = 0;
        at += nn + vn;
        k++;
    }
    assert_int_equal(at, 8 + len);
    static const unsigned char end[8] = {1, FCGI_PARAMS, 0, 1, 0, 0, 0, 0};
    assert_memory_equal(p + at, end, 8);
    return k;
}

static const char *param(const param_t *v, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i].name, name) == 0)
            return v[i].value;
    return NULL;
}

static param_t pv[64];

/* ---- records out ------------------------------------------------------------ */

static void test_header_and_begin(void **state)
{
    (void)state;
    char h[8];
    fcgi_header(h, FCGI_STDIN, 65535);
    static const char want[8] = {1, 5, 0, 1, (char)0xff, (char)0xff, 0, 0};
    assert_memory_equal(h, want, 8);
    char buf[64];
    str_buf_t b = str_buf_fixed(buf, sizeof(buf));
    fcgi_begin(&b, true);
    static const char begin[16] = {1, 1, 0, 1, 0, 8, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0};
    assert_int_equal(b.len, 16);
    assert_memory_equal(buf, begin, 16);
    b.len = 0;
    fcgi_begin(&b, false);
    assert_int_equal(buf[10], 0);
}

static void test_param_lengths(void **state)
{
    (void)state;
    static char buf[70000 + 300];
    static char longv[200], huge[70000];
    memset(longv, 'v', sizeof(longv));
    memset(huge, 'h', sizeof(huge));
    str_buf_t b = str_buf_fixed(buf, sizeof(buf));
    size_t at = fcgi_params_open(&b);
    fcgi_param_str(&b, "A", "");
    fcgi_param(&b, "LONG", 4, longv, sizeof(longv));
    fcgi_piece_t parts[3] = {{"ab", 2}, {"", 0}, {"cd", 2}};
    fcgi_param_pieces(&b, "PIECES", 6, parts, 3);
    fcgi_params_close(&b, at);
    assert_false(b.overflow);
    assert_int_equal(params(buf, b.len, pv, 64), 3);
    assert_string_equal(param(pv, 3, "A"), "");
    assert_int_equal(strlen(param(pv, 3, "LONG")), 200);
    assert_string_equal(param(pv, 3, "PIECES"), "abcd");
    /* a value over 65535 bytes cannot be a parameter; nor a stream over one record */
    b = str_buf_fixed(buf, sizeof(buf));
    at = fcgi_params_open(&b);
    fcgi_param(&b, "HUGE", 4, huge, sizeof(huge));
    fcgi_params_close(&b, at);
    assert_true(b.overflow);
    b = str_buf_fixed(buf, sizeof(buf));
    at = fcgi_params_open(&b);
    for (int i = 0; i < 2; i++)
        fcgi_param(&b, "HALF", 4, huge, 40000);
    fcgi_params_close(&b, at);
    assert_true(b.overflow);
    /* a fixed buffer too small overflows instead of writing past it */
    char small[40];
    b = str_buf_fixed(small, sizeof(small));
    at = fcgi_params_open(&b);
    fcgi_param(&b, "LONG", 4, longv, sizeof(longv));
    fcgi_params_close(&b, at);
    assert_true(b.overflow);
}

static size_t from_head(const char *head, char *buf, size_t cap)
{
    str_buf_t b = str_buf_fixed(buf, cap);
    size_t at = fcgi_params_open(&b);
    fcgi_params_from_head(&b, head, strlen(head));
    fcgi_params_close(&b, at);
    assert_false(b.overflow);
    return params(buf, b.len, pv, 64);
}

static void test_params_from_head(void **state)
{
    (void)state;
    static char buf[8192];
    const char *head = "POST /x.php?a=1 HTTP/1.1\r\n"
                       "Host: php.test\r\n"
                       "Content-Type: text/plain\r\n"
                       "Content-Length: 5\r\n"
                       "Transfer-Encoding: chunked\r\n"
                       "Cookie: a=1\r\n"
                       "X-Multi: one\r\n"
                       "cookie: b=2\r\n"
                       "X-Multi: two\r\n"
                       "X_Under: spoof\r\n"
                       "Proxy: http://evil:8080\r\n"
                       "user-agent: t/1\r\n"
                       "X-Empty:\r\n"
                       "\r\n"
                       "Not-A: field after the head\r\n";
    size_t n = from_head(head, buf, sizeof(buf));
    assert_int_equal(n, 7);
    assert_string_equal(param(pv, n, "HTTP_HOST"), "php.test");
    assert_string_equal(param(pv, n, "CONTENT_TYPE"), "text/plain");
    assert_string_equal(param(pv, n, "CONTENT_LENGTH"), "5");
    assert_string_equal(param(pv, n, "HTTP_COOKIE"), "a=1; b=2");
    assert_string_equal(param(pv, n, "HTTP_X_MULTI"), "one, two");
    assert_string_equal(param(pv, n, "HTTP_USER_AGENT"), "t/1");
    assert_string_equal(param(pv, n, "HTTP_X_EMPTY"), "");
    assert_null(param(pv, n, "HTTP_X_UNDER"));
    assert_null(param(pv, n, "HTTP_PROXY"));
    assert_null(param(pv, n, "HTTP_TRANSFER_ENCODING"));
    assert_null(param(pv, n, "HTTP_NOT_A"));
    assert_null(param(pv, n, "HTTP_CONTENT_TYPE"));
    /* bare LF lines and a head without an end read the same */
    n = from_head("GET / HTTP/1.1\nHost: h\nX-A: 1", buf, sizeof(buf));
    assert_int_equal(n, 1);
    assert_string_equal(param(pv, n, "HTTP_HOST"), "h");
    assert_int_equal(from_head("GET / HTTP/1.1", buf, sizeof(buf)), 0);
}

static void test_probe_request(void **state)
{
    (void)state;
    static char buf[4096];
    str_buf_t b = str_buf_fixed(buf, sizeof(buf));
    fcgi_probe_request(&b, "/srv/www/", "/fpm-ping", "php.test");
    assert_false(b.overflow);
    assert_int_equal(buf[1], FCGI_BEGIN_REQUEST);
    assert_int_equal(buf[10], 0); /* not kept */
    size_t plen = (size_t)(unsigned char)buf[16 + 4] << 8 | (unsigned char)buf[16 + 5];
    size_t n = params(buf + 16, 8 + plen + 8, pv, 64);
    assert_string_equal(param(pv, n, "SCRIPT_FILENAME"), "/srv/www/fpm-ping");
    assert_string_equal(param(pv, n, "SCRIPT_NAME"), "/fpm-ping");
    assert_string_equal(param(pv, n, "REQUEST_METHOD"), "GET");
    assert_string_equal(param(pv, n, "DOCUMENT_ROOT"), "/srv/www");
    assert_string_equal(param(pv, n, "HTTP_HOST"), "php.test");
    static const char stdin_end[8] = {1, FCGI_STDIN, 0, 1, 0, 0, 0, 0};
    assert_int_equal(b.len, 16 + 8 + plen + 8 + 8);
    assert_memory_equal(buf + b.len - 8, stdin_end, 8);
}

/* ---- records in ---------------------------------------------------------------- */

static size_t rec(char *p, unsigned type, unsigned id, const char *content, size_t n, unsigned pad)
{
    p[0] = 1;
    p[1] = (char)type;
    p[2] = (char)(id >> 8);
    p[3] = (char)id;
    p[4] = (char)(n >> 8);
    p[5] = (char)n;
    p[6] = (char)pad;
    p[7] = 0;
    memcpy(p + 8, content, n);
    memset(p + 8 + n, 'P', pad);
    return 8 + n + pad;
}

static size_t end_rec(char *p, uint32_t app, unsigned proto)
{
    char body[8] = {(char)(app >> 24), (char)(app >> 16), (char)(app >> 8), (char)app, (char)proto, 0, 0, 0};
    return rec(p, FCGI_END_REQUEST, 1, body, 8, 3);
}

typedef struct {
    char out[4096];
    size_t outn;
    char err[1024];
    size_t errn;
    size_t used;
    int rc;
    fcgi_decoder_t d;
} run_t;

/* Feed in[0..n) in pieces of at most step bytes (0: whole), as a caller would. */
static void feed(run_t *r, const char *in, size_t n, size_t step, size_t cap)
{
    memset(r, 0, sizeof(*r));
    size_t at = 0;
    r->rc = FCGI_MORE;
    while (at < n || r->rc == FCGI_TEXT) {
        size_t k = step && n - at > step ? step : n - at;
        char *piece = malloc(k ? k : 1); /* exact size: ASan sees an overread */
        memcpy(piece, in + at, k);
        size_t used = 0;
        const char *text = NULL;
        size_t tn = 0;
        r->rc = fcgi_decode(&r->d, piece, k, &used, r->out, cap, &r->outn, &text, &tn);
        assert_true(used <= k);
        if (r->rc == FCGI_TEXT) {
            assert_true(text >= piece && text + tn <= piece + k);
            memcpy(r->err + r->errn, text, tn);
            r->errn += tn;
        }
        free(piece);
        at += used;
        r->used = at;
        if (r->rc == FCGI_ERROR || r->rc == FCGI_END || (r->rc == FCGI_MORE && used < k))
            break;
    }
}

static void test_decode_every_split(void **state)
{
    (void)state;
    char in[2048];
    size_t n = 0;
    n += rec(in + n, FCGI_STDOUT, 1, "Status: 404\r\n", 13, 3);
    n += rec(in + n, FCGI_STDERR, 1, "PHP warning\n", 12, 0);
    n += rec(in + n, FCGI_STDOUT, 1, "", 0, 0);
    n += rec(in + n, FCGI_STDOUT, 1, "\r\nbody", 6, 7);
    n += rec(in + n, FCGI_STDERR, 1, "", 0, 0);
    n += end_rec(in + n, 0x01020304, FCGI_REQUEST_COMPLETE);
    size_t total = n;
    n += rec(in + n, FCGI_STDOUT, 1, "after", 5, 0); /* not taken: after END_REQUEST */
    for (size_t step = 0; step <= total; step++) {
        run_t r;
        feed(&r, in, n, step, sizeof(r.out));
        assert_int_equal(r.rc, FCGI_END);
        assert_int_equal(r.used, total);
        assert_int_equal(r.outn, 19);
        assert_memory_equal(r.out, "Status: 404\r\n\r\nbody", 19);
        assert_int_equal(r.errn, 12);
        assert_memory_equal(r.err, "PHP warning\n", 12);
        assert_true(r.d.ended);
        assert_int_equal(r.d.app_status, 0x01020304);
        assert_int_equal(r.d.protocol_status, FCGI_REQUEST_COMPLETE);
        /* once ended, it stays so and takes nothing */
        size_t used = 0, outn = r.outn, tn = 0;
        const char *text;
        assert_int_equal(fcgi_decode(&r.d, "x", 1, &used, r.out, sizeof(r.out), &outn, &text, &tn), FCGI_END);
        assert_int_equal(used, 0);
    }
}

static void test_decode_full_output_resumes(void **state)
{
    (void)state;
    char in[256];
    size_t n = rec(in, FCGI_STDOUT, 1, "0123456789", 10, 0);
    n += end_rec(in + n, 0, 0);
    fcgi_decoder_t d;
    memset(&d, 0, sizeof(d));
    char out[4];
    size_t used = 0, outn = 0, tn;
    const char *text;
    assert_int_equal(fcgi_decode(&d, in, n, &used, out, sizeof(out), &outn, &text, &tn), FCGI_MORE);
    assert_int_equal(outn, 4);
    assert_int_equal(used, 12);
    assert_memory_equal(out, "0123", 4);
    /* still full: nothing moves */
    size_t u2 = 0;
    assert_int_equal(fcgi_decode(&d, in + used, n - used, &u2, out, sizeof(out), &outn, &text, &tn), FCGI_MORE);
    assert_int_equal(u2, 0);
    outn = 0;
    used += u2;
    assert_int_equal(fcgi_decode(&d, in + used, n - used, &used, out, sizeof(out), &outn, &text, &tn), FCGI_MORE);
    assert_memory_equal(out, "4567", 4);
    outn = 0;
    assert_int_equal(fcgi_decode(&d, in + used, n - used, &used, out, sizeof(out), &outn, &text, &tn), FCGI_END);
    assert_int_equal(outn, 2);
    assert_memory_equal(out, "89", 2);
    assert_int_equal(used, n);
}

static void test_decode_refusals(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        unsigned version, type, id, len;
        const char *error;
    } rows[] = {
        {"version 2", 2, FCGI_STDOUT, 1, 0, "not FastCGI version 1"},
        {"version 0", 0, FCGI_STDOUT, 1, 0, "not FastCGI version 1"},
        {"other request id", 1, FCGI_STDOUT, 2, 0, "record of another request id"},
        {"management record", 1, FCGI_STDERR, 0, 0, "record of another request id"},
        {"BEGIN_REQUEST", 1, FCGI_BEGIN_REQUEST, 1, 8, "unexpected record type"},
        {"PARAMS", 1, FCGI_PARAMS, 1, 0, "unexpected record type"},
        {"STDIN", 1, FCGI_STDIN, 1, 0, "unexpected record type"},
        {"GET_VALUES_RESULT", 1, FCGI_GET_VALUES_RESULT, 0, 0, "unexpected record type"},
        {"UNKNOWN_TYPE", 1, FCGI_UNKNOWN_TYPE, 0, 8, "unexpected record type"},
        {"type 0", 1, 0, 1, 0, "unexpected record type"},
        {"type 200", 1, 200, 1, 0, "unexpected record type"},
        {"short END_REQUEST", 1, FCGI_END_REQUEST, 1, 7, "END_REQUEST of a length other than 8"},
        {"long END_REQUEST", 1, FCGI_END_REQUEST, 1, 9, "END_REQUEST of a length other than 8"},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        char in[64] = {0};
        size_t n = rec(in, rows[i].type, rows[i].id, "12345678901234567890", rows[i].len, 0);
        in[0] = (char)rows[i].version;
        /* some good output first: the refusal still comes at the header */
        char all[128];
        size_t k = rec(all, FCGI_STDOUT, 1, "ok", 2, 0);
        memcpy(all + k, in, n);
        for (size_t step = 0; step <= 9; step++) {
            run_t r;
            feed(&r, all, k + n, step, sizeof(r.out));
            if (r.rc != FCGI_ERROR)
                fail_msg("%s, step %zu: rc %d", rows[i].name, step, r.rc);
            assert_string_equal(r.d.error, rows[i].error);
            assert_int_equal(r.used, k + 8); /* the header that decided it, nothing after */
            size_t used = 0, outn = 0, tn;
            const char *text;
            assert_int_equal(fcgi_decode(&r.d, "", 0, &used, r.out, 1, &outn, &text, &tn), FCGI_ERROR);
        }
    }
}

static void test_status_value(void **state)
{
    (void)state;
    assert_int_equal(fcgi_status_value("404 Not Found", 13), 404);
    assert_int_equal(fcgi_status_value("200", 3), 200);
    assert_int_equal(fcgi_status_value("999 x", 5), 999);
    assert_int_equal(fcgi_status_value("099", 3), -1);
    assert_int_equal(fcgi_status_value("20", 2), -1);
    assert_int_equal(fcgi_status_value("2000", 4), -1);
    assert_int_equal(fcgi_status_value("20x", 3), -1);
    assert_int_equal(fcgi_status_value("-20", 3), -1);
    assert_int_equal(fcgi_status_value("", 0), -1);
}

static int probe(const char *stdout_text, bool end)
{
    char in[2048];
    size_t n = rec(in, FCGI_STDOUT, 1, stdout_text, strlen(stdout_text), 0);
    if (end)
        n += end_rec(in + n, 0, 0);
    return fcgi_probe_status(in, n);
}

static void test_probe_status(void **state)
{
    (void)state;
    assert_int_equal(probe("Content-type: text/plain\r\n\r\npong", true), 200);
    assert_int_equal(probe("Status: 503 Service Unavailable\r\nX: y\r\n\r\n", false), 503);
    assert_int_equal(probe("Location: /x\r\n\r\n", false), 302);
    assert_int_equal(probe("Location: /x\r\nStatus: 301\r\n\r\n", false), 301);
    assert_int_equal(probe("X: y\n\n", false), 200);
    assert_int_equal(probe("Status: 503\r\n", false), 0);  /* more to come */
    assert_int_equal(probe("Status: 503\r\n", true), -1);  /* ended without the end of the head */
    assert_int_equal(probe("Status: abc\r\n\r\n", false), -1);
    assert_int_equal(probe("no colon here\r\n\r\n", false), -1);
    assert_int_equal(fcgi_probe_status("HTTP/1.1 200 OK\r\n\r\n", 19), -1);
    assert_int_equal(fcgi_probe_status("", 0), 0);
    /* a split record: need more */
    char in[64];
    size_t n = rec(in, FCGI_STDOUT, 1, "Status: 200\r\n\r\n", 15, 0);
    for (size_t k = 0; k < n; k++)
        assert_int_equal(fcgi_probe_status(in, k), 0);
    assert_int_equal(fcgi_probe_status(in, n), 200);
}

/* ---- SCRIPT_NAME and PATH_INFO (common/route.c) ------------------------------------ */

static void test_script_split(void **state)
{
    (void)state;
    static const struct {
        const char *path;
        size_t script;
        bool index;
    } rows[] = {
        {"/index.php", 10, false},
        {"/a/info.php/x/y", 11, false},
        {"/a/info.php/", 11, false},
        {"/a.php/b.php/c", 6, false},
        {"/x.phpx/y.php", 13, false},
        {"/x.phpx/y", 9, false},
        {"/dir/", 5, true},
        {"/", 1, true},
        {"/.php", 5, false},
        {"/.php/x", 7, false},
        {"/a/.php/b", 9, false},
        {"/file.PHP", 9, false},
        {"", 0, false},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        bool index = !rows[i].index;
        size_t n = route_fastcgi_script(rows[i].path, strlen(rows[i].path), &index);
        if (n != rows[i].script || index != rows[i].index)
            fail_msg("%s: script %zu index %d", rows[i].path, n, index);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header_and_begin),   cmocka_unit_test(test_param_lengths),
        cmocka_unit_test(test_params_from_head),   cmocka_unit_test(test_probe_request),
        cmocka_unit_test(test_decode_every_split), cmocka_unit_test(test_decode_full_output_resumes),
        cmocka_unit_test(test_decode_refusals),    cmocka_unit_test(test_status_value),
        cmocka_unit_test(test_probe_status),       cmocka_unit_test(test_script_split),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * test_http1.c - unit tests for proxyd/http/http1.c.
 *
 * Mostly tables: every refusal with the status it must produce, valid
 * requests with the fields they must yield, chunked bodies and upstream
 * responses.  Each row is its own cmocka test (named after the row), and
 * each row is also replayed at every split point: a head parser fed a
 * prefix must answer 0 or the whole input's verdict, and the chunked
 * decoder must give the same bytes however its input is cut.  Every
 * parse runs on an exact-size heap copy so that ASan catches a read past
 * `len`.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "http/http1.h"

#define S(lit) lit, sizeof(lit) - 1

static const h1_limits_t small_uri = {1024, 16, 100};
static const h1_limits_t small_head = {64, 32, 100};
static const h1_limits_t two_headers = {1024, 64, 2};

/* An exact-size heap copy, so any read past n is an ASan error. */
static char *dup_exact(const char *s, size_t n)
{
    char *p = malloc(n ? n : 1);
    assert_non_null(p);
    memcpy(p, s, n);
    return p;
}

static int parse_req_copy(const char *s, size_t n, h1_request_t *req, const h1_limits_t *lim)
{
    char *p = dup_exact(s, n);
    int r = h1_parse_request(p, n, req, lim);
    free(p);
    return r;
}

static void assert_slice(h1_slice_t s, const char *want)
{
    if (want == NULL) {
        assert_null(s.p);
        return;
    }
    assert_int_equal(s.n, strlen(want));
    assert_memory_equal(s.p, want, s.n);
}

/* ---- refusals ------------------------------------------------------------ */

typedef struct {
    const char *name;
    const char *in;
    size_t len;
    const h1_limits_t *lim;
    int status;
    const char *error;
} refusal_t;

#define H11(extra) "GET / HTTP/1.1\r\nHost: example.com\r\n" extra "\r\n"
#define P11(extra) "POST / HTTP/1.1\r\nHost: example.com\r\n" extra "\r\n"
#define REQ(line) line "\r\nHost: example.com\r\n\r\n"

static const refusal_t refusals[] = {
    {"cl_with_te", S(P11("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n")), NULL, 400,
     "Content-Length with Transfer-Encoding"},
    {"te_with_cl", S(P11("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n")), NULL, 400,
     "Content-Length with Transfer-Encoding"},
    {"cl_dup_differ", S(P11("Content-Length: 5\r\nContent-Length: 6\r\n")), NULL, 400,
     "conflicting Content-Length"},
    {"cl_list_differ", S(P11("Content-Length: 5, 6\r\n")), NULL, 400, "conflicting Content-Length"},
    {"cl_nondigit", S(P11("Content-Length: abc\r\n")), NULL, 400, "invalid Content-Length"},
    {"cl_negative", S(P11("Content-Length: -1\r\n")), NULL, 400, "invalid Content-Length"},
    {"cl_plus", S(P11("Content-Length: +5\r\n")), NULL, 400, "invalid Content-Length"},
    {"cl_inner_space", S(P11("Content-Length: 5 5\r\n")), NULL, 400, "invalid Content-Length"},
    {"cl_hex", S(P11("Content-Length: 0x10\r\n")), NULL, 400, "invalid Content-Length"},
    {"cl_overflow", S(P11("Content-Length: 99999999999999999999\r\n")), NULL, 400,
     "Content-Length overflow"},
    {"cl_int64_max_plus1", S(P11("Content-Length: 9223372036854775808\r\n")), NULL, 400,
     "Content-Length overflow"},
    {"cl_empty", S(P11("Content-Length: \r\n")), NULL, 400, "invalid Content-Length"},
    {"cl_list_empty_elem", S(P11("Content-Length: 5,\r\n")), NULL, 400, "invalid Content-Length"},
    {"te_gzip", S(P11("Transfer-Encoding: gzip\r\n")), NULL, 400,
     "final transfer coding is not chunked"},
    {"te_chunked_then_gzip", S(P11("Transfer-Encoding: chunked, gzip\r\n")), NULL, 400,
     "final transfer coding is not chunked"},
    {"te_gzip_then_chunked", S(P11("Transfer-Encoding: gzip, chunked\r\n")), NULL, 501,
     "unsupported transfer coding"},
    {"te_chunked_twice", S(P11("Transfer-Encoding: chunked, chunked\r\n")), NULL, 400,
     "chunked applied more than once"},
    {"te_two_fields", S(P11("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n")), NULL,
     400, "chunked applied more than once"},
    {"te_split_gzip", S(P11("Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n")), NULL,
     400, "final transfer coding is not chunked"},
    {"te_params", S(P11("Transfer-Encoding: chunked;q=1\r\n")), NULL, 400,
     "final transfer coding is not chunked"},
    {"te_empty", S(P11("Transfer-Encoding: \r\n")), NULL, 400,
     "final transfer coding is not chunked"},
    {"te_identity", S(P11("Transfer-Encoding: identity\r\n")), NULL, 400,
     "final transfer coding is not chunked"},
    {"te_xchunked", S(P11("Transfer-Encoding: xchunked\r\n")), NULL, 400,
     "final transfer coding is not chunked"},
    {"te_http10", S("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), NULL, 400,
     "Transfer-Encoding in HTTP/1.0"},
    {"te_vtab", S(P11("Transfer-Encoding: chunked\x0b\r\n")), NULL, 400,
     "control character in field value"},
    {"bare_cr_in_value", S(H11("X: a\rb\r\n")), NULL, 400, "bare CR in header"},
    {"bare_lf_after_value", S(H11("X: a\n")), NULL, 400, "bare LF in header"},
    {"bare_lf_in_value", S(H11("X: a\nb\r\n")), NULL, 400, "bare LF in header"},
    {"bare_lf_request_line", S("GET / HTTP/1.1\nHost: a\r\n\r\n"), NULL, 400,
     "bare LF in start line"},
    {"bare_cr_request_line", S("GET / HTTP/1.1\rHost: a\r\n\r\n"), NULL, 400,
     "bare CR in start line"},
    {"bare_lf_final_line", S("GET / HTTP/1.1\r\nHost: a\r\n\n"), NULL, 400, "bare LF in header"},
    {"bare_cr_final_line", S("GET / HTTP/1.1\r\nHost: a\r\n\rX"), NULL, 400, "bare CR in header"},
    {"bare_lf_leading", S("\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"), NULL, 400,
     "bare LF in request line"},
    {"bare_cr_leading", S("\rGET / HTTP/1.1\r\nHost: a\r\n\r\n"), NULL, 400,
     "bare CR in request line"},
    {"too_many_empty_lines", S("\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"), NULL, 400,
     "too many empty lines before request"},
    {"obs_fold", S(H11("X: a\r\n b\r\n")), NULL, 400, "obs-fold in header"},
    {"obs_fold_tab", S(H11("X: a\r\n\tb\r\n")), NULL, 400, "obs-fold in header"},
    {"ws_before_first_header", S("GET / HTTP/1.1\r\n Host: a\r\n\r\n"), NULL, 400,
     "whitespace before first header"},
    {"ws_before_colon", S(H11("X-A : b\r\n")), NULL, 400, "whitespace between field name and colon"},
    {"tab_before_colon", S(P11("Content-Length\t: 5\r\n")), NULL, 400,
     "whitespace between field name and colon"},
    {"method_bad_char", S(REQ("G@T / HTTP/1.1")), NULL, 400, "invalid character in method"},
    {"method_empty", S(REQ(" / HTTP/1.1")), NULL, 400, "invalid character in method"},
    {"method_tab", S(REQ("GET\t/ HTTP/1.1")), NULL, 400, "invalid character in method"},
    {"name_bad_char", S(H11("X(y): 1\r\n")), NULL, 400, "invalid character in field name"},
    {"name_non_ascii", S(H11("X\xc3\xa9: 1\r\n")), NULL, 400, "invalid character in field name"},
    {"name_empty", S(H11(": x\r\n")), NULL, 400, "empty field name"},
    {"name_without_colon", S(H11("X-Foo\r\n")), NULL, 400, "header line without colon"},
    {"value_ctl", S(H11("X: a\x01z\r\n")), NULL, 400, "control character in field value"},
    {"value_nul", S(H11("X: a\0z\r\n")), NULL, 400, "control character in field value"},
    {"value_del", S(H11("X: a\x7f\r\n")), NULL, 400, "control character in field value"},
    {"value_esc", S(H11("X: \x1b[31m\r\n")), NULL, 400, "control character in field value"},
    {"missing_host", S("GET / HTTP/1.1\r\n\r\n"), NULL, 400, "missing Host"},
    {"two_hosts", S(H11("Host: example.com\r\n")), NULL, 400, "more than one Host"},
    {"two_hosts_http10", S("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"), NULL, 400,
     "more than one Host"},
    {"host_space", S("GET / HTTP/1.1\r\nHost: exa mple.com\r\n\r\n"), NULL, 400, "invalid Host"},
    {"host_userinfo", S("GET / HTTP/1.1\r\nHost: u@example.com\r\n\r\n"), NULL, 400,
     "invalid Host"},
    {"host_port_range", S("GET / HTTP/1.1\r\nHost: a:65536\r\n\r\n"), NULL, 400, "invalid Host"},
    {"host_port_alpha", S("GET / HTTP/1.1\r\nHost: a:8o\r\n\r\n"), NULL, 400, "invalid Host"},
    {"host_slash", S("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"), NULL, 400, "invalid Host"},
    {"host_bad_ipv6", S("GET / HTTP/1.1\r\nHost: [::1\r\n\r\n"), NULL, 400, "invalid Host"},
    {"target_relative", S(REQ("GET foo HTTP/1.1")), NULL, 400, "invalid request-target"},
    {"target_asterisk_get", S(REQ("GET * HTTP/1.1")), NULL, 400,
     "asterisk-form target outside OPTIONS"},
    {"target_authority_get", S(REQ("GET example.com:80 HTTP/1.1")), NULL, 400,
     "invalid request-target"},
    {"connect_origin", S(REQ("CONNECT / HTTP/1.1")), NULL, 400,
     "CONNECT needs authority-form target"},
    {"connect_no_port", S(REQ("CONNECT example.com HTTP/1.1")), NULL, 400,
     "CONNECT needs authority-form target"},
    {"connect_absolute", S(REQ("CONNECT http://a/ HTTP/1.1")), NULL, 400,
     "CONNECT needs authority-form target"},
    {"target_fragment", S(REQ("GET /a#b HTTP/1.1")), NULL, 400,
     "invalid character in request-target"},
    {"target_quote", S(REQ("GET /a\"b HTTP/1.1")), NULL, 400, "invalid character in request-target"},
    {"target_backslash", S(REQ("GET /a\\b HTTP/1.1")), NULL, 400,
     "invalid character in request-target"},
    {"target_ctl", S(REQ("GET /a\x01 HTTP/1.1")), NULL, 400, "invalid character in request-target"},
    {"target_tab", S(REQ("GET /a\tb HTTP/1.1")), NULL, 400, "invalid character in request-target"},
    {"target_non_ascii", S(REQ("GET /\xc3\xa9 HTTP/1.1")), NULL, 400,
     "invalid character in request-target"},
    {"target_bad_pct", S(REQ("GET /%zz HTTP/1.1")), NULL, 400,
     "invalid percent-encoding in request-target"},
    {"target_short_pct", S(REQ("GET /%4 HTTP/1.1")), NULL, 400,
     "invalid percent-encoding in request-target"},
    {"absolute_userinfo", S(REQ("GET http://u@h/ HTTP/1.1")), NULL, 400,
     "invalid authority in request-target"},
    {"absolute_ftp", S(REQ("GET ftp://h/ HTTP/1.1")), NULL, 400, "invalid request-target"},
    {"absolute_no_slashes", S(REQ("GET http:h/ HTTP/1.1")), NULL, 400, "invalid request-target"},
    {"absolute_empty_host", S(REQ("GET http:///x HTTP/1.1")), NULL, 400,
     "invalid authority in request-target"},
    {"absolute_bad_port", S(REQ("GET http://h:abc/ HTTP/1.1")), NULL, 400,
     "invalid authority in request-target"},
    {"double_space", S(REQ("GET  / HTTP/1.1")), NULL, 400, "empty request-target"},
    {"http09", S("GET /\r\n\r\n"), NULL, 400, "missing HTTP version"},
    {"version_lowercase", S(REQ("GET / http/1.1")), NULL, 400, "invalid HTTP version"},
    {"version_garbage", S(REQ("GET / HTTP/x.1")), NULL, 400, "invalid HTTP version"},
    {"version_2_0", S(REQ("GET / HTTP/2.0")), NULL, 505, "HTTP version not supported"},
    {"version_1_2", S(REQ("GET / HTTP/1.2")), NULL, 505, "HTTP version not supported"},
    {"version_0_9", S(REQ("GET / HTTP/0.9")), NULL, 505, "HTTP version not supported"},
    {"version_1_10", S(REQ("GET / HTTP/1.10")), NULL, 400, "invalid request line"},
    {"version_trailing_space", S(REQ("GET / HTTP/1.1 ")), NULL, 400, "invalid request line"},
    {"connection_bad_token", S(H11("Connection: close, @x\r\n")), NULL, 400,
     "invalid Connection option"},
    {"uri_too_long", S(REQ("GET /0123456789abcdef HTTP/1.1")), &small_uri, 414,
     "request-target too long"},
    {"uri_too_long_incomplete", S("GET /0123456789abcdefghij"), &small_uri, 414,
     "request-target too long"},
    {"head_too_large", S(H11("X-Padding: 0123456789012345678901234567890123456789\r\n")),
     &small_head, 431, "header section too large"},
    {"head_too_large_incomplete",
     S("GET / HTTP/1.1\r\nHost: a\r\nX: 0123456789012345678901234567890123456789"), &small_head,
     431, "header section too large"},
    {"too_many_headers", S(H11("A: 1\r\nB: 2\r\n")), &two_headers, 431, "too many header fields"},
};

static void test_refusal(void **state)
{
    const refusal_t *t = *state;
    h1_request_t req;
    int r = parse_req_copy(t->in, t->len, &req, t->lim);
    assert_int_equal(r, -1);
    assert_int_equal(req.status, t->status);
    assert_string_equal(req.error, t->error);
    /* Every prefix: "need more" or the same verdict. */
    for (size_t k = 0; k < t->len; k++) {
        r = parse_req_copy(t->in, k, &req, t->lim);
        if (r != 0) {
            assert_int_equal(r, -1);
            assert_int_equal(req.status, t->status);
            assert_string_equal(req.error, t->error);
        }
    }
}

/* ---- valid requests ------------------------------------------------------ */

typedef struct {
    const char *name;
    const char *in;
    size_t len;
    h1_method_t method;
    const char *path, *query, *host;
    int64_t clen;
    bool chunked, keep_alive;
    int minor;
    size_t nheaders;
} valid_t;

static const valid_t valids[] = {
    {"get", S(H11("")), H1_METHOD_GET, "/", NULL, "example.com", -1, false, true, 1, 1},
    {"get_query", S(REQ("GET /a/b?x=1&y[]=2&z={}|^` HTTP/1.1")), H1_METHOD_GET, "/a/b",
     "x=1&y[]=2&z={}|^`", "example.com", -1, false, true, 1, 1},
    {"empty_query", S(REQ("GET /a? HTTP/1.1")), H1_METHOD_GET, "/a", "", "example.com", -1, false,
     true, 1, 1},
    {"pct_encoded", S(REQ("GET /a%20b%2F?q=%C3%A9 HTTP/1.1")), H1_METHOD_GET, "/a%20b%2F",
     "q=%C3%A9", "example.com", -1, false, true, 1, 1},
    {"double_slash_path", S(REQ("GET //x HTTP/1.1")), H1_METHOD_GET, "//x", NULL, "example.com", -1,
     false, true, 1, 1},
    {"post_cl", S(P11("Content-Length: 5\r\n")), H1_METHOD_POST, "/", NULL, "example.com", 5, false,
     true, 1, 2},
    {"cl_dup_same", S(P11("Content-Length: 5\r\nContent-Length: 5\r\n")), H1_METHOD_POST, "/",
     NULL, "example.com", 5, false, true, 1, 3},
    {"cl_list_same", S(P11("Content-Length: 5 , 5\r\n")), H1_METHOD_POST, "/", NULL, "example.com",
     5, false, true, 1, 2},
    {"cl_leading_zeros", S(P11("Content-Length: 007\r\n")), H1_METHOD_POST, "/", NULL,
     "example.com", 7, false, true, 1, 2},
    {"cl_int64_max", S(P11("Content-Length: 9223372036854775807\r\n")), H1_METHOD_POST, "/", NULL,
     "example.com", INT64_MAX, false, true, 1, 2},
    {"chunked", S(P11("Transfer-Encoding: chunked\r\n")), H1_METHOD_POST, "/", NULL, "example.com",
     -1, true, true, 1, 2},
    {"chunked_mixed_case", S(P11("transfer-ENCODING: ChunKed\r\n")), H1_METHOD_POST, "/", NULL,
     "example.com", -1, true, true, 1, 2},
    {"chunked_empty_elements", S(P11("Transfer-Encoding: , chunked ,\r\n")), H1_METHOD_POST, "/",
     NULL, "example.com", -1, true, true, 1, 2},
    {"http10_default_close", S("GET / HTTP/1.0\r\n\r\n"), H1_METHOD_GET, "/", NULL, NULL, -1, false,
     false, 0, 0},
    {"http10_keep_alive", S("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"), H1_METHOD_GET, "/",
     NULL, NULL, -1, false, true, 0, 1},
    {"http11_close", S(H11("Connection: close\r\n")), H1_METHOD_GET, "/", NULL, "example.com", -1,
     false, false, 1, 2},
    {"close_wins", S(H11("Connection: keep-alive, CLOSE\r\n")), H1_METHOD_GET, "/", NULL,
     "example.com", -1, false, false, 1, 2},
    {"absolute_form", S("GET http://Example.com:8080?q HTTP/1.1\r\nHost: x\r\n\r\n"),
     H1_METHOD_GET, "/", "q", "Example.com:8080", -1, false, true, 1, 1},
    {"absolute_https", S("GET HTTPS://h/p/q HTTP/1.1\r\nHost: other\r\n\r\n"), H1_METHOD_GET,
     "/p/q", NULL, "h", -1, false, true, 1, 1},
    {"absolute_ipv6", S("GET http://[::1]:80/ HTTP/1.1\r\nHost: x\r\n\r\n"), H1_METHOD_GET, "/",
     NULL, "[::1]:80", -1, false, true, 1, 1},
    {"connect", S("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"),
     H1_METHOD_CONNECT, NULL, NULL, "example.com:443", -1, false, true, 1, 1},
    {"options_star", S(REQ("OPTIONS * HTTP/1.1")), H1_METHOD_OPTIONS, "*", NULL, "example.com", -1,
     false, true, 1, 1},
    {"options_origin", S(REQ("OPTIONS /x HTTP/1.1")), H1_METHOD_OPTIONS, "/x", NULL,
     "example.com", -1, false, true, 1, 1},
    {"leading_crlf", S("\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"), H1_METHOD_GET, "/", NULL, "a",
     -1, false, true, 1, 1},
    {"method_other", S(REQ("PROPFIND /d HTTP/1.1")), H1_METHOD_OTHER, "/d", NULL, "example.com", -1,
     false, true, 1, 1},
    {"method_lowercase_is_other", S(REQ("get / HTTP/1.1")), H1_METHOD_OTHER, "/", NULL,
     "example.com", -1, false, true, 1, 1},
    {"host_ipv6", S("GET / HTTP/1.1\r\nHost: [2001:db8::1]:8080\r\n\r\n"), H1_METHOD_GET, "/",
     NULL, "[2001:db8::1]:8080", -1, false, true, 1, 1},
    {"host_empty", S("GET / HTTP/1.1\r\nHost:\r\n\r\n"), H1_METHOD_GET, "/", NULL, "", -1, false,
     true, 1, 1},
    {"host_ows", S("GET / HTTP/1.1\r\nhOsT: \t a.example:81 \t\r\n\r\n"), H1_METHOD_GET, "/",
     NULL, "a.example:81", -1, false, true, 1, 1},
    {"obs_text_value", S(H11("X-Name: caf\xc3\xa9\r\n")), H1_METHOD_GET, "/", NULL, "example.com",
     -1, false, true, 1, 2},
    {"empty_value", S(H11("X-Empty:\r\n")), H1_METHOD_GET, "/", NULL, "example.com", -1, false,
     true, 1, 2},
};

static void check_valid(const valid_t *t, const h1_request_t *req)
{
    assert_int_equal(req->method_id, t->method);
    if (t->path)
        assert_slice(req->path, t->path);
    else
        assert_int_equal(req->path.n, 0);
    assert_slice(req->query, t->query);
    if (t->host)
        assert_slice(req->host, t->host);
    else
        assert_int_equal(req->host.n, 0);
    assert_true(req->content_length == t->clen);
    assert_int_equal(req->chunked, t->chunked);
    assert_int_equal(req->keep_alive, t->keep_alive);
    assert_int_equal(req->minor, t->minor);
    assert_int_equal(req->nheaders, t->nheaders);
}

static void test_valid(void **state)
{
    const valid_t *t = *state;
    h1_request_t req;
    char *p = dup_exact(t->in, t->len);
    int r = h1_parse_request(p, t->len, &req, NULL);
    assert_int_equal(r, (int)t->len);
    check_valid(t, &req);
    free(p);
    /* Incremental: every proper prefix needs more, then the same result. */
    for (size_t k = 0; k < t->len; k++)
        assert_int_equal(parse_req_copy(t->in, k, &req, NULL), 0);
    p = dup_exact(t->in, t->len);
    assert_int_equal(h1_parse_request(p, t->len, &req, NULL), (int)t->len);
    check_valid(t, &req);
    free(p);
}

/* ---- individual request tests -------------------------------------------- */

static void test_methods(void **state)
{
    static const struct {
        const char *m;
        h1_method_t id;
    } tab[] = {{"GET", H1_METHOD_GET},         {"HEAD", H1_METHOD_HEAD},
               {"POST", H1_METHOD_POST},       {"PUT", H1_METHOD_PUT},
               {"DELETE", H1_METHOD_DELETE},   {"PATCH", H1_METHOD_PATCH},
               {"OPTIONS", H1_METHOD_OPTIONS}, {"TRACE", H1_METHOD_TRACE},
               {"GETS", H1_METHOD_OTHER},      {"M-SEARCH", H1_METHOD_OTHER}};
    (void)state;
    for (size_t i = 0; i < sizeof(tab) / sizeof(tab[0]); i++) {
        char buf[128];
        h1_request_t req;
        int n = snprintf(buf, sizeof(buf), "%s / HTTP/1.1\r\nHost: a\r\n\r\n", tab[i].m);
        assert_int_equal(h1_parse_request(buf, (size_t)n, &req, NULL), n);
        assert_int_equal(req.method_id, tab[i].id);
        assert_slice(req.method, tab[i].m);
    }
}

static void test_pipelined(void **state)
{
    static const char two[] = "GET /one HTTP/1.1\r\nHost: a\r\n\r\n"
                              "POST /two?x HTTP/1.1\r\nHost: b\r\nContent-Length: 0\r\n\r\n";
    h1_request_t req;
    (void)state;
    size_t len = sizeof(two) - 1;
    int r1 = h1_parse_request(two, len, &req, NULL);
    assert_int_equal(r1, 30);
    assert_slice(req.path, "/one");
    int r2 = h1_parse_request(two + r1, len - (size_t)r1, &req, NULL);
    assert_int_equal((size_t)r1 + (size_t)r2, len);
    assert_int_equal(req.method_id, H1_METHOD_POST);
    assert_slice(req.path, "/two");
    assert_slice(req.query, "x");
    assert_slice(req.host, "b");
    assert_true(req.content_length == 0);
    assert_int_equal(h1_parse_request(two + len, 0, &req, NULL), 0);
}

static void test_headers_and_hop(void **state)
{
    static const char in[] = "GET / HTTP/1.1\r\nHost: a\r\nConnection: X-Secret, close\r\n"
                             "x-secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\n"
                             "X-Keep:  two words \t\r\nConnection: Host, content-length\r\n"
                             "Content-Length: 0\r\n\r\n";
    h1_request_t req;
    (void)state;
    assert_int_equal(h1_parse_request(in, sizeof(in) - 1, &req, NULL), (int)sizeof(in) - 1);
    assert_int_equal(req.nheaders, 8);
    static const bool hop[8] = {false, true, true, true, true, false, true, false};
    for (size_t i = 0; i < 8; i++)
        assert_int_equal(req.headers[i].hop, hop[i]);
    assert_slice(req.headers[5].name, "X-Keep");
    assert_slice(req.headers[5].value, "two words");
    assert_int_equal(req.headers[0].id, H1_HDR_HOST);
    assert_int_equal(req.headers[7].id, H1_HDR_CONTENT_LENGTH);
    assert_true(req.conn_flags & H1_CONN_CLOSE);
    assert_false(req.keep_alive);
    const h1_header_t *h = h1_find_header(req.headers, req.nheaders, H1_HDR_TE);
    assert_non_null(h);
    assert_slice(h->value, "trailers");
    assert_null(h1_find_header(req.headers, req.nheaders, H1_HDR_UPGRADE));
}

static void test_websocket(void **state)
{
    static const char ws[] = "GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\n"
                             "Connection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n";
    static const char no_conn[] = "GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n";
    static const char post[] = "POST /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
                               "Connection: upgrade\r\nContent-Length: 0\r\n\r\n";
    static const char h2c[] = "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c, foo/2\r\n"
                              "Connection: Upgrade\r\n\r\n";
    h1_request_t req;
    (void)state;
    assert_true(h1_parse_request(ws, sizeof(ws) - 1, &req, NULL) > 0);
    assert_true(req.upgrade && req.websocket);
    assert_slice(req.upgrade_proto, "WebSocket");
    assert_true(h1_parse_request(no_conn, sizeof(no_conn) - 1, &req, NULL) > 0);
    assert_false(req.upgrade || req.websocket);
    assert_true(h1_parse_request(post, sizeof(post) - 1, &req, NULL) > 0);
    assert_true(req.upgrade && !req.websocket);
    assert_true(h1_parse_request(h2c, sizeof(h2c) - 1, &req, NULL) > 0);
    assert_true(req.upgrade && !req.websocket);
}

static void test_expect(void **state)
{
    static const char v11[] = "PUT /f HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\n"
                              "Content-Length: 10\r\n\r\n";
    static const char v10[] = "PUT /f HTTP/1.0\r\nExpect: 100-continue\r\n"
                              "Content-Length: 10\r\n\r\n";
    h1_request_t req;
    (void)state;
    assert_true(h1_parse_request(v11, sizeof(v11) - 1, &req, NULL) > 0);
    assert_true(req.expect_continue);
    assert_true(h1_parse_request(v10, sizeof(v10) - 1, &req, NULL) > 0);
    assert_false(req.expect_continue);
}

/* Builds "GET / HTTP/1.1\r\nHost: a\r\n" + n "X-i: v" lines + CRLF. */
static size_t build_many(char *buf, size_t cap, size_t n)
{
    size_t len = (size_t)snprintf(buf, cap, "GET / HTTP/1.1\r\nHost: a\r\n");
    for (size_t i = 0; i < n; i++)
        len += (size_t)snprintf(buf + len, cap - len, "X-%zu: v\r\n", i);
    len += (size_t)snprintf(buf + len, cap - len, "\r\n");
    return len;
}

static void test_header_count_limit(void **state)
{
    static char buf[4096];
    h1_request_t req;
    (void)state;
    size_t len = build_many(buf, sizeof(buf), 99); /* + Host = 100 */
    assert_int_equal(parse_req_copy(buf, len, &req, NULL), (int)len);
    assert_int_equal(req.nheaders, 100);
    len = build_many(buf, sizeof(buf), 100);
    assert_int_equal(parse_req_copy(buf, len, &req, NULL), -1);
    assert_int_equal(req.status, 431);
}

static void test_uri_and_head_limits(void **state)
{
    static char buf[20000];
    h1_request_t req;
    (void)state;
    /* A target of exactly 8192 bytes is accepted, 8193 is 414. */
    for (size_t tl = 8192; tl <= 8193; tl++) {
        size_t len = 0;
        memcpy(buf, "GET /", 5);
        len = 5;
        memset(buf + len, 'a', tl - 1);
        len += tl - 1;
        len += (size_t)snprintf(buf + len, sizeof(buf) - len, " HTTP/1.1\r\nHost: a\r\n\r\n");
        int r = parse_req_copy(buf, len, &req, NULL);
        assert_int_equal(r, tl == 8192 ? (int)len : -1);
        if (r < 0)
            assert_int_equal(req.status, 414);
    }
    /* A head of exactly 16384 bytes is accepted, one more byte is 431. */
    for (size_t hl = 16384; hl <= 16385; hl++) {
        size_t len = (size_t)snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: a\r\nX: ");
        size_t pad = hl - len - 4;
        memset(buf + len, 'v', pad);
        len += pad;
        memcpy(buf + len, "\r\n\r\n", 4);
        len += 4;
        assert_int_equal(len, hl);
        int r = parse_req_copy(buf, len, &req, NULL);
        assert_int_equal(r, hl == 16384 ? (int)len : -1);
        if (r < 0)
            assert_int_equal(req.status, 431);
        /* With the next request's bytes behind it, the verdict is the same. */
        memcpy(buf + len, "GET", 3);
        assert_int_equal(parse_req_copy(buf, len + 3, &req, NULL), r);
    }
}

static void test_head_ready(void **state)
{
    static const char in[] = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    size_t scanned = 0;
    (void)state;
    for (size_t k = 0; k < sizeof(in) - 1; k++)
        assert_false(h1_head_ready(in, k, &scanned, 16384));
    assert_true(h1_head_ready(in, sizeof(in) - 1, &scanned, 16384));
    scanned = 0;
    assert_true(h1_head_ready(S("GET / HTTP/1.1\nHost"), &scanned, 16384));
    scanned = 0;
    assert_true(h1_head_ready(S("GET / HTTP/1.1\rX"), &scanned, 16384));
    scanned = 0;
    assert_true(h1_head_ready(S("GET /aaaa"), &scanned, 4));
}

/* ---- chunked ------------------------------------------------------------- */

typedef struct {
    const char *name;
    const char *in;
    size_t len;
    int result;       /* H1_CHUNK_DONE, _ERROR or _MORE at the end of input */
    const char *data; /* decoded bytes (DONE/MORE) */
    size_t end;       /* DONE: bytes of the body; ERROR: offset of the bad byte */
    const char *error;
    size_t max_line, max_trailer; /* 0: defaults */
} chunk_case_t;

#define CDONE(name, in, data, end) {name, S(in), H1_CHUNK_DONE, data, end, NULL, 0, 0}
#define CERR(name, in, at, err) {name, S(in), H1_CHUNK_ERROR, "", at, err, 0, 0}

static const chunk_case_t chunk_cases[] = {
    CDONE("ch_simple", "5\r\nhello\r\n0\r\n\r\n", "hello", 15),
    CDONE("ch_two_chunks", "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "hello world", 26),
    CDONE("ch_hex_upper", "A\r\n0123456789\r\n0\r\n\r\n", "0123456789", 20),
    CDONE("ch_hex_lower", "a\r\n0123456789\r\n0\r\n\r\n", "0123456789", 20),
    CDONE("ch_leading_zeros", "0005\r\nhello\r\n000\r\n\r\n", "hello", 20),
    CDONE("ch_extension", "5;name=val\r\nhello\r\n0;last\r\n\r\n", "hello", 29),
    CDONE("ch_extension_bws", "5 \t;a=b\r\nhello\r\n0\r\n\r\n", "hello", 21),
    CDONE("ch_extension_quoted", "5;a=\"x;y z\"\r\nhello\r\n0\r\n\r\n", "hello", 25),
    CDONE("ch_trailers", "3\r\nabc\r\n0\r\nX-Sum: 1\r\nY:\r\n\r\n", "abc", 27),
    CDONE("ch_trailer_obs_text", "0\r\nX: caf\xc3\xa9\r\n\r\n", "", 15),
    CDONE("ch_empty_body", "0\r\n\r\n", "", 5),
    CDONE("ch_next_message_follows", "2\r\nhi\r\n0\r\n\r\nGET / HTTP/1.1\r\n", "hi", 12),
    CDONE("ch_crlf_in_data", "4\r\n\r\n\r\n\r\n0\r\n\r\n", "\r\n\r\n", 14),
    {"ch_max_size_accepted", S("4000000000000000\r\nabc"), H1_CHUNK_MORE, "abc", 21, NULL, 0, 0},
    CERR("ch_bad_hex", "g\r\n", 0, "invalid chunk size"),
    CERR("ch_empty_size", "\r\n", 0, "invalid chunk size"),
    CERR("ch_overflow_2_62_plus_1", "4000000000000001\r\n", 15, "chunk size overflow"),
    CERR("ch_overflow_17_digits", "10000000000000000\r\n", 16, "chunk size overflow"),
    CERR("ch_overflow_uint64", "FFFFFFFFFFFFFFFFF\r\n", 15, "chunk size overflow"),
    CERR("ch_missing_crlf_after_data", "5\r\nhelloX\r\n0\r\n\r\n", 8, "missing CRLF after chunk data"),
    CERR("ch_lf_only_after_data", "5\r\nhello\n0\r\n\r\n", 8, "missing CRLF after chunk data"),
    CERR("ch_cr_only_after_data", "5\r\nhello\r0\r\n\r\n", 9, "missing CRLF after chunk data"),
    CERR("ch_short_data", "5\r\nhell\r\n0\r\n\r\n", 8, "missing CRLF after chunk data"),
    CERR("ch_bare_lf_size", "5\nhello\r\n0\r\n\r\n", 1, "bare LF in chunk size line"),
    CERR("ch_bare_lf_ext", "5;x\nhello\r\n0\r\n\r\n", 3, "bare LF in chunk extension"),
    CERR("ch_bare_cr_size", "5\rhello", 2, "bare CR in chunk size line"),
    CERR("ch_size_trailing_space", "5 \r\nhello\r\n0\r\n\r\n", 2, "invalid chunk size"),
    CERR("ch_negative", "-5\r\n", 0, "invalid chunk size"),
    CERR("ch_0x_prefix", "0x5\r\n", 1, "invalid chunk size"),
    CERR("ch_plus", "+5\r\n", 0, "invalid chunk size"),
    CERR("ch_ctl_in_ext", "5;\x01\r\nhello", 2, "control character in chunk extension"),
    CERR("ch_trailer_obs_fold", "0\r\nX: 1\r\n y\r\n\r\n", 9, "obs-fold in trailer"),
    CERR("ch_trailer_bare_lf", "0\r\nX: 1\n\r\n", 7, "bare LF in trailer"),
    CERR("ch_trailer_bare_cr", "0\r\nX: 1\rZ\r\n", 8, "bare CR in trailer"),
    CERR("ch_trailer_no_colon", "0\r\nX\r\n\r\n", 4, "invalid trailer field name"),
    CERR("ch_trailer_ws_before_colon", "0\r\nX : 1\r\n\r\n", 4, "whitespace before colon in trailer"),
    CERR("ch_trailer_ctl", "0\r\nX: \x01\r\n\r\n", 6, "control character in trailer value"),
    CERR("ch_final_bare_lf", "0\r\n\n", 3, "bare LF in trailer"),
    CERR("ch_final_bare_cr", "0\r\n\rX", 4, "bare CR in trailer"),
    CERR("ch_smuggle_lf_in_ext", "2;\nxx\r\n0\r\n\r\n", 2, "bare LF in chunk extension"),
    {"ch_line_too_long", S("5;aaaaaaaaaaaaaaaa\r\nhello\r\n0\r\n\r\n"), H1_CHUNK_ERROR, "", 8,
     "chunk size line too long", 8, 0},
    {"ch_zeros_too_long", S("000000000005\r\nhello\r\n0\r\n\r\n"), H1_CHUNK_ERROR, "", 8,
     "chunk size line too long", 8, 0},
    {"ch_trailer_too_large", S("0\r\nX-A: 0123456789\r\n\r\n"), H1_CHUNK_ERROR, "", 11,
     "trailer section too large", 0, 8},
};

typedef struct {
    int result;
    size_t consumed; /* total input bytes consumed */
    char data[256];
    size_t ndata;
    const char *error;
    unsigned ntrailers;
} chunk_out_t;

static void chunk_init(h1_chunked_t *st, const chunk_case_t *t)
{
    h1_chunked_init(st);
    if (t->max_line)
        st->max_line = t->max_line;
    if (t->max_trailer)
        st->max_trailer = t->max_trailer;
}

/* Feed one piece (as an exact heap copy); returns true when finished. */
static bool chunk_feed(h1_chunked_t *st, const char *s, size_t n, chunk_out_t *o)
{
    char *p = dup_exact(s, n);
    size_t off = 0;
    for (;;) {
        size_t used = 0;
        h1_slice_t d;
        int r = h1_chunked_decode(st, p + off, n - off, &used, &d);
        assert_true(used <= n - off);
        off += used;
        o->consumed += used;
        o->result = r;
        if (r == H1_CHUNK_DATA) {
            assert_true(d.n > 0 && o->ndata + d.n <= sizeof(o->data));
            memcpy(o->data + o->ndata, d.p, d.n);
            o->ndata += d.n;
            continue;
        }
        if (r == H1_CHUNK_MORE)
            assert_int_equal(off, n);
        o->error = st->error;
        o->ntrailers = st->ntrailers;
        free(p);
        return r != H1_CHUNK_MORE;
    }
}

static void chunk_check(const chunk_case_t *t, const chunk_out_t *o)
{
    assert_int_equal(o->result, t->result);
    if (t->result == H1_CHUNK_ERROR) {
        assert_string_equal(o->error, t->error);
    } else {
        assert_int_equal(o->ndata, strlen(t->data));
        assert_memory_equal(o->data, t->data, o->ndata);
    }
    assert_int_equal(o->consumed, t->end);
}

static void test_chunked(void **state)
{
    const chunk_case_t *t = *state;
    h1_chunked_t st;
    chunk_out_t o;
    /* Whole, then cut in two at every point, then byte by byte. */
    for (size_t k = 0; k <= t->len + 1; k++) {
        memset(&o, 0, sizeof(o));
        chunk_init(&st, t);
        if (k > t->len) {
            for (size_t i = 0; i < t->len && !chunk_feed(&st, t->in + i, 1, &o); i++)
                ;
        } else if (!chunk_feed(&st, t->in, k, &o)) {
            chunk_feed(&st, t->in + k, t->len - k, &o);
        }
        chunk_check(t, &o);
    }
}

static void test_chunked_trailer_count(void **state)
{
    h1_chunked_t st;
    chunk_out_t o;
    (void)state;
    memset(&o, 0, sizeof(o));
    h1_chunked_init(&st);
    assert_true(chunk_feed(&st, S("1\r\nz\r\n0\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"), &o));
    assert_int_equal(o.result, H1_CHUNK_DONE);
    assert_int_equal(o.ntrailers, 3);
    assert_true(st.total == 1);
    /* DONE and ERROR are sticky. */
    size_t used = 99;
    h1_slice_t d;
    assert_int_equal(h1_chunked_decode(&st, "5\r\n", 3, &used, &d), H1_CHUNK_DONE);
    assert_int_equal(used, 0);
    h1_chunked_init(&st);
    assert_int_equal(h1_chunked_decode(&st, "x", 1, &used, &d), H1_CHUNK_ERROR);
    assert_int_equal(h1_chunked_decode(&st, "0\r\n\r\n", 5, &used, &d), H1_CHUNK_ERROR);
}

/* ---- responses ----------------------------------------------------------- */

typedef struct {
    const char *name;
    const char *in;
    size_t len;
    h1_method_t method;
    int ok;      /* 1: parses, -1: refused */
    int status;
    h1_body_t body;
    int64_t clen;
    bool keep_alive;
    const char *error;
} resp_case_t;

#define ROK(name, in, m, st, body, clen, ka) {name, S(in), m, 1, st, body, clen, ka, NULL}
#define RERR(name, in, err) {name, S(in), H1_METHOD_GET, -1, 0, H1_BODY_NONE, -1, false, err}

static const resp_case_t resp_cases[] = {
    ROK("rs_length", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", H1_METHOD_GET, 200,
        H1_BODY_LENGTH, 5, true),
    ROK("rs_chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", H1_METHOD_GET, 200,
        H1_BODY_CHUNKED, -1, true),
    ROK("rs_until_close", "HTTP/1.1 200 OK\r\nServer: x\r\n\r\n", H1_METHOD_GET, 200,
        H1_BODY_CLOSE, -1, true),
    ROK("rs_http10", "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n", H1_METHOD_GET, 200,
        H1_BODY_LENGTH, 3, false),
    ROK("rs_http10_keep_alive", "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\n",
        H1_METHOD_GET, 200, H1_BODY_LENGTH, 3, true),
    ROK("rs_close", "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\n",
        H1_METHOD_GET, 200, H1_BODY_LENGTH, 3, false),
    ROK("rs_204", "HTTP/1.1 204 No Content\r\n\r\n", H1_METHOD_DELETE, 204, H1_BODY_NONE, -1, true),
    ROK("rs_304_with_length", "HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n",
        H1_METHOD_GET, 304, H1_BODY_NONE, 100, true),
    ROK("rs_head", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", H1_METHOD_HEAD, 200,
        H1_BODY_NONE, 100, true),
    ROK("rs_100_continue", "HTTP/1.1 100 Continue\r\n\r\n", H1_METHOD_POST, 100, H1_BODY_NONE, -1,
        true),
    ROK("rs_101", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        H1_METHOD_GET, 101, H1_BODY_TUNNEL, -1, true),
    ROK("rs_connect_200", "HTTP/1.1 200 Connection Established\r\n\r\n", H1_METHOD_CONNECT, 200,
        H1_BODY_TUNNEL, -1, true),
    ROK("rs_no_reason", "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", H1_METHOD_GET, 200,
        H1_BODY_NONE, 0, true),
    ROK("rs_empty_reason", "HTTP/1.1 404 \r\nContent-Length: 2\r\n\r\n", H1_METHOD_GET, 404,
        H1_BODY_LENGTH, 2, true),
    ROK("rs_reason_obs_text", "HTTP/1.1 200 \xc3\x89tat\tok\r\n\r\n", H1_METHOD_GET, 200,
        H1_BODY_CLOSE, -1, true),
    ROK("rs_599", "HTTP/1.1 599 X\r\nContent-Length: 1\r\n\r\n", H1_METHOD_GET, 599,
        H1_BODY_LENGTH, 1, true),
    RERR("rs_cl_with_te", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
         "Content-Length with Transfer-Encoding"),
    RERR("rs_cl_conflict", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 4\r\n\r\n",
         "conflicting Content-Length"),
    RERR("rs_te_gzip", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
         "final transfer coding is not chunked"),
    RERR("rs_te_http10", "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
         "Transfer-Encoding in HTTP/1.0"),
    RERR("rs_status_alpha", "HTTP/1.1 20x OK\r\n\r\n", "invalid status line"),
    RERR("rs_status_4_digits", "HTTP/1.1 2000 OK\r\n\r\n", "invalid status line"),
    RERR("rs_status_099", "HTTP/1.1 099 X\r\n\r\n", "invalid status code"),
    RERR("rs_status_600", "HTTP/1.1 600 X\r\n\r\n", "invalid status code"),
    RERR("rs_http2", "HTTP/2.0 200 OK\r\n\r\n", "HTTP version not supported"),
    RERR("rs_lowercase_version", "http/1.1 200 OK\r\n\r\n", "invalid HTTP version"),
    RERR("rs_leading_crlf", "\r\nHTTP/1.1 200 OK\r\n\r\n", "invalid HTTP version"),
    RERR("rs_bare_lf_status", "HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n", "bare LF in start line"),
    RERR("rs_bare_lf_header", "HTTP/1.1 200 OK\r\nContent-Length: 0\n\r\n", "bare LF in header"),
    RERR("rs_obs_fold", "HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", "obs-fold in header"),
    RERR("rs_reason_ctl", "HTTP/1.1 200 O\x01K\r\n\r\n", "invalid status line"),
    RERR("rs_ws_before_colon", "HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n",
         "whitespace between field name and colon"),
};

static void test_response(void **state)
{
    const resp_case_t *t = *state;
    h1_response_t res;
    char *p = dup_exact(t->in, t->len);
    int r = h1_parse_response(p, t->len, &res, NULL);
    free(p);
    if (t->ok < 0) {
        assert_int_equal(r, -1);
        assert_string_equal(res.error, t->error);
    } else {
        assert_int_equal(r, (int)t->len);
        assert_int_equal(res.status, t->status);
        assert_int_equal(h1_response_body(&res, t->method), t->body);
        assert_true(res.content_length == t->clen);
        assert_int_equal(res.keep_alive, t->keep_alive);
    }
    for (size_t k = 0; k < t->len; k++) {
        p = dup_exact(t->in, k);
        int rk = h1_parse_response(p, k, &res, NULL);
        free(p);
        assert_true(rk == 0 || (t->ok < 0 && rk == -1 && strcmp(res.error, t->error) == 0));
    }
}

static void test_response_fields(void **state)
{
    static const char in[] = "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\n"
                             "Connection: X-Hop\r\nX-Hop: 1\r\nContent-Length: 0\r\n\r\nHTTP/1.1";
    h1_response_t res;
    (void)state;
    int r = h1_parse_response(in, sizeof(in) - 1, &res, NULL);
    assert_int_equal(r, (int)sizeof(in) - 1 - 8);
    assert_int_equal(res.minor, 1);
    assert_slice(res.reason, "Service Unavailable");
    assert_int_equal(res.nheaders, 4);
    assert_false(res.headers[0].hop);
    assert_true(res.headers[1].hop && res.headers[2].hop);
    assert_false(res.headers[3].hop);
}

/* Field names known by number, in any case; near misses stay OTHER. */
static void test_header_ids(void **state)
{
    static const struct {
        const char *name;
        h1_hdr_id_t id;
    } tab[] = {
        {"X-Forwarded-For", H1_HDR_X_FORWARDED_FOR}, {"x-real-ip", H1_HDR_X_REAL_IP},
        {"X-FORWARDED-PROTO", H1_HDR_X_FORWARDED_PROTO}, {"X-Forwarded-Host", H1_HDR_X_FORWARDED_HOST},
        {"x-Forwarded-port", H1_HDR_X_FORWARDED_PORT}, {"User-Agent", H1_HDR_USER_AGENT},
        {"REFERER", H1_HDR_REFERER}, {"Server", H1_HDR_SERVER}, {"date", H1_HDR_DATE},
        {"Expect", H1_HDR_EXPECT}, {"TE", H1_HDR_TE}, {"Trailer", H1_HDR_TRAILER},
        {"X-Forwarded-Fo", H1_HDR_OTHER}, {"X-Forwarded-Fort", H1_HDR_OTHER}, {"Dates", H1_HDR_OTHER},
        {"Referrer", H1_HDR_OTHER}, {"Serve", H1_HDR_OTHER}, {"E", H1_HDR_OTHER}, {"Ta", H1_HDR_OTHER},
    };
    (void)state;
    for (size_t i = 0; i < sizeof(tab) / sizeof(tab[0]); i++) {
        char in[256];
        int n = snprintf(in, sizeof(in), "GET / HTTP/1.1\r\nHost: a\r\n%s: v\r\n\r\n", tab[i].name);
        h1_request_t req;
        assert_int_equal(parse_req_copy(in, (size_t)n, &req, NULL), n);
        assert_int_equal(req.nheaders, 2);
        assert_int_equal(req.headers[1].id, tab[i].id);
    }
}

/* ---- runner -------------------------------------------------------------- */

#define NTAB(a) (sizeof(a) / sizeof((a)[0]))

int main(void)
{
    static const struct CMUnitTest fixed[] = {
        cmocka_unit_test(test_methods),
        cmocka_unit_test(test_pipelined),
        cmocka_unit_test(test_headers_and_hop),
        cmocka_unit_test(test_websocket),
        cmocka_unit_test(test_expect),
        cmocka_unit_test(test_header_count_limit),
        cmocka_unit_test(test_uri_and_head_limits),
        cmocka_unit_test(test_head_ready),
        cmocka_unit_test(test_chunked_trailer_count),
        cmocka_unit_test(test_response_fields),
        cmocka_unit_test(test_header_ids),
    };
    enum {
        N = NTAB(fixed) + NTAB(refusals) + NTAB(valids) + NTAB(chunk_cases) + NTAB(resp_cases)
    };
    static struct CMUnitTest tests[N];
    size_t n = 0;
    for (size_t i = 0; i < NTAB(fixed); i++)
        tests[n++] = fixed[i];
#define ADD_ROWS(tab, fn)                                                                          \
    for (size_t i = 0; i < NTAB(tab); i++)                                                         \
    tests[n++] = (struct CMUnitTest){tab[i].name, fn, NULL, NULL, (void *)&tab[i]}
    ADD_ROWS(refusals, test_refusal);
    ADD_ROWS(valids, test_valid);
    ADD_ROWS(chunk_cases, test_chunked);
    ADD_ROWS(resp_cases, test_response);
    return _cmocka_run_group_tests("http1", tests, n, NULL, NULL);
}

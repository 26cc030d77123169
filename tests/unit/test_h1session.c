/*
 * test_h1session.c - the HTTP/1.1 session (http/h1session.c) on the real
 * transport: raw request bytes written into a socketpair, the worker's loop
 * run, the response bytes read back.  Framing (Content-Length, chunked, the
 * close for HTTP/1.0), keep-alive and pipelining, heads that arrive in
 * pieces, refusals (400, 405 with Allow), HEAD, the smuggling guard (a body
 * nobody read closes the connection), and the header and keep-alive
 * timeouts.
 */
#include "proxyd_fixture.h"

#define HELLO "hello, world\n"
#define STREAMED "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"

static const char *SITE_FMT =
    "site: t\n"
    "hosts: [t.example]\n"
    "upstreams:\n"
    "  app:\n"
    "    servers: [\"127.0.0.1:%u\"]\n"
    "routes:\n"
    "  - match: {path_exact: /hello, methods: [GET, HEAD]}\n"
    "    return: {status: 200, body: \"hello, world\\n\"}\n"
    "  - match: {path_exact: /old}\n"
    "    redirect: {to: \"https://t.example/new\", status: 308}\n"
    "  - match: {path_prefix: /files/}\n"
    "    static: {root: \"%s\"}\n"
    "  - match: {path_prefix: /app/}\n"
    "    upstream: app\n";

static const char *SHORT = "limits: {header_timeout: 150ms, keepalive_timeout: 150ms, body_timeout: 150ms}\n";

static struct {
    tref_t *normal, *short_timeouts;
    fx_backend_t *backend;
    char file[200];
} g;

static int group_setup(void **state)
{
    (void)state;
    fx_worker_init();
    g.backend = fx_backend_new(STREAMED);
    char root[160], dir[200], site[2048];
    snprintf(root, sizeof(root), "%s/www", fx_dir);
    snprintf(dir, sizeof(dir), "%s/files", root);
    assert_int_equal(mkdir(root, 0755), 0);
    assert_int_equal(mkdir(dir, 0755), 0);
    snprintf(g.file, sizeof(g.file), "%s/a.txt", dir);
    FILE *f = fopen(g.file, "w");
    assert_non_null(f);
    for (int i = 0; i < 3000; i++)
        fprintf(f, "line %04d of the static file\n", i);
    fclose(f);
    snprintf(site, sizeof(site), SITE_FMT, g.backend->port, root);
    g.normal = fx_table(NULL, site);
    g.short_timeouts = fx_table(SHORT, site);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    upool_close_idle();
    fx_run_for(1);
    fx_backend_free(g.backend);
    tref_put(g.normal);
    tref_put(g.short_timeouts);
    fx_worker_free();
    return 0;
}

static int setup_with(void **state, tref_t *t)
{
    W->table = t;
    W->draining = false;
    *state = fx_client();
    return 0;
}

static int setup(void **state) { return setup_with(state, g.normal); }
static int setup_short(void **state) { return setup_with(state, g.short_timeouts); }

static int teardown(void **state)
{
    fx_client_close(*state);
    fx_run(fx_no_conns, NULL, 3000);
    assert_int_equal(W->conns, 0);
    /* nothing holds the table: every request finished */
    assert_int_equal(W->table->refs, 1);
    W->draining = false;
    return 0;
}

/* The k-th response must be complete; returns it (in a static). */
static fx_resp_t *response(const fx_client_t *cl, int k, unsigned heads)
{
    static fx_resp_t r;
    int rc = fx_response(cl, k, heads, &r);
    if (rc != 1)
        fail_msg("response %d is %s; the client has:\n%s", k, rc < 0 ? "invalid" : "incomplete", cl->buf);
    return &r;
}

static void assert_body(const fx_resp_t *r, const char *body)
{
    assert_int_equal(r->body_len, strlen(body));
    assert_memory_equal(r->body, body, r->body_len);
}

static bool still_open(const fx_client_t *cl)
{
    fx_run_for(20);
    return !cl->eof && W->conns == 1;
}

#define GET_HELLO_LIT "GET /hello HTTP/1.1\r\nHost: t.example\r\n\r\n"
static const char GET_HELLO[] = GET_HELLO_LIT;

/* ---- answers and keep-alive ------------------------------------------------------------ */

static void test_return_keepalive(void **state)
{
    fx_client_t *cl = *state;
    uint64_t reqs = W->stats->requests_total, ok = W->stats->site[0][1];
    fx_send_str(cl, GET_HELLO);
    assert_true(fx_wait_responses(cl, 1, 0));
    fx_resp_t *r = response(cl, 0, 0);
    assert_int_equal(r->status, 200);
    assert_memory_equal(r->head, "HTTP/1.1 200 OK\r\n", 17);
    assert_true(fx_has_field(r, "Content-Length", "13"));
    assert_true(fx_has_field(r, "Content-Type", "text/plain; charset=utf-8"));
    assert_true(fx_has_field(r, "Server", "proxyd"));
    assert_true(fx_has_field(r, "Date", NULL));
    assert_false(fx_has_field(r, "Connection", NULL)); /* HTTP/1.1: keep-alive goes unsaid */
    assert_body(r, HELLO);
    assert_int_equal(cl->n, r->total); /* nothing more */
    assert_true(still_open(cl));

    /* the same connection takes the next request */
    fx_client_reset(cl);
    fx_send_str(cl, GET_HELLO);
    assert_true(fx_wait_responses(cl, 1, 0));
    assert_body(response(cl, 0, 0), HELLO);
    assert_true(still_open(cl));
    assert_int_equal(W->stats->requests_total - reqs, 2);
    assert_int_equal(W->stats->site[0][1] - ok, 2); /* counted as 2xx of site 0 */
}

static void test_pipelined_in_order(void **state)
{
    fx_client_t *cl = *state;
    fx_send_str(cl, "GET /hello HTTP/1.1\r\nHost: t.example\r\n\r\n"
                    "GET /old HTTP/1.1\r\nHost: t.example\r\n\r\n"
                    "GET /nothing/here HTTP/1.1\r\nHost: t.example\r\n\r\n");
    assert_true(fx_wait_responses(cl, 3, 0));
    assert_int_equal(response(cl, 0, 0)->status, 200);
    assert_body(response(cl, 0, 0), HELLO);
    fx_resp_t *r = response(cl, 1, 0);
    assert_int_equal(r->status, 308);
    assert_true(fx_has_field(r, "Location", "https://t.example/new"));
    assert_body(r, "308 Permanent Redirect\n");
    r = response(cl, 2, 0);
    assert_int_equal(r->status, 404);
    assert_false(fx_has_field(r, "Connection", NULL)); /* a 404 keeps the connection */
    assert_int_equal(fx_count_responses(cl, 0), 3);
    assert_true(still_open(cl));
}

/* ---- heads in pieces ------------------------------------------------------------------------ */

static void test_head_in_three_writes(void **state)
{
    fx_client_t *cl = *state;
    uint64_t reqs = W->stats->requests_total;
    fx_send_str(cl, "GET /hello HTTP/1.1\r\nHo");
    fx_run_for(20);
    fx_send_str(cl, "st: t.example\r\n");
    fx_run_for(20);
    assert_int_equal(cl->n, 0);
    assert_int_equal(W->stats->requests_total, reqs);
    fx_send_str(cl, "\r\n");
    assert_true(fx_wait_responses(cl, 1, 0));
    assert_body(response(cl, 0, 0), HELLO);
    assert_int_equal(W->stats->requests_total - reqs, 1);
    assert_true(still_open(cl));
    assert_int_equal(fx_count_responses(cl, 0), 1);
}

static void test_head_byte_by_byte(void **state)
{
    fx_client_t *cl = *state;
    uint64_t reqs = W->stats->requests_total;
    const char *req = "GET /old HTTP/1.1\r\nHost: t.example\r\nAccept: */*\r\n\r\n";
    size_t n = strlen(req);
    for (size_t i = 0; i < n; i++) {
        fx_send(cl, req + i, 1);
        fx_run_for(1);
        if (i + 1 < n && cl->n)
            fail_msg("answered after %zu of %zu bytes: %s", i + 1, n, cl->buf);
    }
    assert_true(fx_wait_responses(cl, 1, 0));
    assert_int_equal(response(cl, 0, 0)->status, 308);
    assert_int_equal(W->stats->requests_total - reqs, 1);
    assert_true(still_open(cl));
}

/* ---- refusals ---------------------------------------------------------------------------------- */

static void test_malformed_400_closes(void **state)
{
    fx_client_t *cl = *state;
    uint64_t bad = W->stats->other_site[3];
    fx_send_str(cl, "GET /hello HTTP/1.1\r\nHost: t.example\r\nNo colon here\r\n\r\n"
                    "GET /hello HTTP/1.1\r\nHost: t.example\r\n\r\n");
    assert_true(fx_run(fx_client_eof, cl, 3000));
    fx_resp_t *r = response(cl, 0, 0);
    assert_int_equal(r->status, 400);
    assert_true(fx_has_field(r, "Connection", "close"));
    assert_body(r, "400 Bad Request\n");
    assert_int_equal(cl->n, r->total); /* the request after it is not answered */
    assert_int_equal(W->stats->other_site[3] - bad, 1);
}

static void test_405_allow(void **state)
{
    fx_client_t *cl = *state;
    fx_send_str(cl, "DELETE /hello HTTP/1.1\r\nHost: t.example\r\n\r\n" GET_HELLO_LIT);
    assert_true(fx_wait_responses(cl, 2, 0));
    fx_resp_t *r = response(cl, 0, 0);
    assert_int_equal(r->status, 405);
    assert_true(fx_has_field(r, "Allow", "GET, HEAD"));
    assert_body(r, "405 Method Not Allowed\n");
    assert_false(fx_has_field(r, "Connection", NULL));
    assert_int_equal(response(cl, 1, 0)->status, 200);
    assert_true(still_open(cl));
}

static void test_head_has_no_body(void **state)
{
    fx_client_t *cl = *state;
    fx_send_str(cl, "HEAD /hello HTTP/1.1\r\nHost: t.example\r\n\r\n" GET_HELLO_LIT);
    assert_true(fx_wait_responses(cl, 2, 1));
    fx_resp_t *r = response(cl, 0, 1);
    assert_int_equal(r->status, 200);
    assert_true(fx_has_field(r, "Content-Length", "13")); /* what a GET would get */
    /* the next response starts right after the head */
    assert_memory_equal(cl->buf + r->head_len, "HTTP/1.1 200 OK\r\n", 17);
    assert_body(response(cl, 1, 1), HELLO);
    assert_int_equal(cl->n, r->head_len + response(cl, 1, 1)->total);
}

/* A body the route does not read would be parsed as the next request:
 * the connection closes after the response instead. */
static void test_unread_body_closes(void **state)
{
    fx_client_t *cl = *state;
    fx_send_str(cl, "GET /hello HTTP/1.1\r\nHost: t.example\r\nContent-Length: 40\r\n\r\n"
                    "GET /old HTTP/1.1\r\nHost: t.example\r\n\r\n");
    assert_true(fx_run(fx_client_eof, cl, 3000));
    fx_resp_t *r = response(cl, 0, 0);
    assert_int_equal(r->status, 200);
    assert_true(fx_has_field(r, "Connection", "close"));
    assert_body(r, HELLO);
    assert_int_equal(cl->n, r->total); /* the smuggled GET /old is not answered */
}

/* ---- timeouts ------------------------------------------------------------------------------------ */

static void test_header_timeout_408(void **state)
{
    fx_client_t *cl = *state;
    fx_send_str(cl, "GET /hello HTTP/1.1\r\nHost: t.exa");
    assert_true(fx_run(fx_client_eof, cl, 3000));
    fx_resp_t *r = response(cl, 0, 0);
    assert_int_equal(r->status, 408);
    assert_true(fx_has_field(r, "Connection", "close"));
    assert_body(r, "408 Request Timeout\n");
}

/* A connection that never sends a byte is closed after header_timeout,
 * without a response. */
static void test_header_timeout_silent(void **state)
{
    fx_client_t *cl = *state;
    uint64_t header = W->stats->closed[CLOSE_HEADER_TIMEOUT], keepalive = W->stats->closed[CLOSE_KEEPALIVE_TIMEOUT];
    fx_run_for(100);
    assert_false(cl->eof); /* header_timeout is 150ms */
    assert_true(fx_run(fx_client_eof, cl, 3000));
    assert_int_equal(cl->n, 0);
    assert_int_equal(W->stats->closed[CLOSE_HEADER_TIMEOUT] - header + W->stats->closed[CLOSE_KEEPALIVE_TIMEOUT] -
                         keepalive,
                     1);
}

/*
 * A connection that never sends a byte is closed by the header timeout
 * armed at accept, and counted as such, not as an idle keep-alive one
 * (the session starts in H1_IDLE; found by this test).
 */
static void test_silent_connection_counts_as_header_timeout(void **state)
{
    fx_client_t *cl = *state;
    uint64_t header = W->stats->closed[CLOSE_HEADER_TIMEOUT], keepalive = W->stats->closed[CLOSE_KEEPALIVE_TIMEOUT];
    assert_true(fx_run(fx_client_eof, cl, 3000));
    assert_int_equal(W->stats->closed[CLOSE_HEADER_TIMEOUT] - header, 1);
    assert_int_equal(W->stats->closed[CLOSE_KEEPALIVE_TIMEOUT] - keepalive, 0);
}

static void test_keepalive_timeout(void **state)
{
    fx_client_t *cl = *state;
    uint64_t n = W->stats->closed[CLOSE_KEEPALIVE_TIMEOUT];
    fx_send_str(cl, GET_HELLO);
    assert_true(fx_wait_responses(cl, 1, 0));
    assert_false(cl->eof);
    assert_true(fx_run(fx_client_eof, cl, 3000));
    assert_int_equal(W->stats->closed[CLOSE_KEEPALIVE_TIMEOUT] - n, 1);
    assert_int_equal(fx_count_responses(cl, 0), 1);
}

static void test_client_closes_idle(void **state)
{
    fx_client_t *cl = *state;
    uint64_t n = W->stats->closed[CLOSE_CLIENT_EOF];
    fx_send_str(cl, GET_HELLO);
    assert_true(fx_wait_responses(cl, 1, 0));
    shutdown(cl->fd, SHUT_WR);
    assert_true(fx_run(fx_no_conns, NULL, 3000));
    assert_int_equal(W->stats->closed[CLOSE_CLIENT_EOF] - n, 1);
}

/* ---- streamed bodies (from the upstream), files --------------------------------------------------- */

static void test_stream_chunked_http11(void **state)
{
    fx_client_t *cl = *state;
    fx_send_str(cl, "GET /app/x HTTP/1.1\r\nHost: t.example\r\n\r\n");
    assert_true(fx_wait_responses(cl, 1, 0));
    fx_resp_t *r = response(cl, 0, 0);
    assert_int_equal(r->status, 200);
    assert_true(r->is_chunked);
    assert_true(fx_has_field(r, "Transfer-Encoding", "chunked"));
    assert_false(fx_has_field(r, "Content-Length", NULL));
    assert_body(r, "hello world");
    assert_true(still_open(cl));
}

/* HTTP/1.0 has no chunked coding: a body of unknown length ends with the
 * connection, even when the client asked to keep it. */
static void test_stream_http10_closes(void **state)
{
    fx_client_t *cl = *state;
    fx_send_str(cl, "GET /app/x HTTP/1.0\r\nHost: t.example\r\nConnection: keep-alive\r\n\r\n");
    assert_true(fx_run(fx_client_eof, cl, 3000));
    fx_resp_t *r = response(cl, 0, 0);
    assert_int_equal(r->status, 200);
    assert_true(r->until_close);
    assert_false(fx_has_field(r, "Transfer-Encoding", NULL));
    assert_false(fx_has_field(r, "Content-Length", NULL));
    assert_true(fx_has_field(r, "Connection", "close"));
    assert_body(r, "hello world");
}

/* A length-delimited answer keeps an HTTP/1.0 keep-alive connection. */
static void test_http10_keepalive_length(void **state)
{
    fx_client_t *cl = *state;
    fx_send_str(cl, "GET /hello HTTP/1.0\r\nConnection: keep-alive\r\nHost: t.example\r\n\r\n");
    assert_true(fx_wait_responses(cl, 1, 0));
    assert_body(response(cl, 0, 0), HELLO);
    assert_true(still_open(cl));
}

static void test_static_file(void **state)
{
    fx_client_t *cl = *state;
    static char want[1 << 17];
    FILE *f = fopen(g.file, "r");
    size_t n = fread(want, 1, sizeof(want) - 1, f);
    fclose(f);
    want[n] = '\0';
    assert_true(n > IOBUF_SIZE);
    fx_send_str(cl, "GET /files/a.txt HTTP/1.1\r\nHost: t.example\r\n\r\n"
                    "HEAD /files/a.txt HTTP/1.1\r\nHost: t.example\r\n\r\n");
    assert_true(fx_wait_responses(cl, 2, 2));
    fx_resp_t *r = response(cl, 0, 2);
    char len[32];
    snprintf(len, sizeof(len), "%zu", n);
    assert_int_equal(r->status, 200);
    assert_true(fx_has_field(r, "Content-Length", len));
    assert_true(fx_has_field(r, "ETag", NULL));
    assert_body(r, want);
    r = response(cl, 1, 2);
    assert_true(fx_has_field(r, "Content-Length", len));
    assert_int_equal(cl->n, response(cl, 0, 2)->total + r->head_len);
    assert_true(still_open(cl));
}

/* ---- draining ---------------------------------------------------------------------------------------- */

static void test_draining_answers_with_close(void **state)
{
    fx_client_t *cl = *state;
    W->draining = true;
    fx_send_str(cl, GET_HELLO);
    assert_true(fx_run(fx_client_eof, cl, 3000));
    fx_resp_t *r = response(cl, 0, 0);
    assert_body(r, HELLO);
    assert_true(fx_has_field(r, "Connection", "close"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_return_keepalive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pipelined_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_head_in_three_writes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_head_byte_by_byte, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed_400_closes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_405_allow, setup, teardown),
        cmocka_unit_test_setup_teardown(test_head_has_no_body, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unread_body_closes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_header_timeout_408, setup_short, teardown),
        cmocka_unit_test_setup_teardown(test_header_timeout_silent, setup_short, teardown),
        cmocka_unit_test_setup_teardown(test_silent_connection_counts_as_header_timeout, setup_short, teardown),
        cmocka_unit_test_setup_teardown(test_keepalive_timeout, setup_short, teardown),
        cmocka_unit_test_setup_teardown(test_client_closes_idle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_chunked_http11, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_http10_closes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http10_keepalive_length, setup, teardown),
        cmocka_unit_test_setup_teardown(test_static_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_draining_answers_with_close, setup, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}

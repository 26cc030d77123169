/*
 * test_proxy.c - the proxy content handler (handlers/proxy.c) between a
 * client on a socketpair and scripted backends on 127.0.0.1, all on the
 * test's loop: the upstream request head (Host kept, X-Forwarded-* written,
 * hop-by-hop fields dropped), request bodies re-framed, the response head
 * and body relayed, keep-alive reuse of upstream connections, failures
 * (502 on a close without a response, 504 on a read timeout, 408 on a
 * client body that stops) and a retry on the next server when the first
 * refuses the connection.
 */
#include "proxyd_fixture.h"

#define OK_HELLO "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Backend: b1\r\nServer: backend\r\nKeep-Alive: timeout=5\r\n\r\nhello"

static const char *SITE_FMT =
    "site: p\n"
    "hosts: [p.example]\n"
    "upstreams:\n"
    "  app:\n"
    "    servers: [\"127.0.0.1:%u\"]\n"
    "  pair:\n"
    "    servers: [\"127.0.0.1:%u\", \"127.0.0.1:%u\"]\n"
    "routes:\n"
    "  - match: {path_prefix: /retry/}\n"
    "    upstream: pair\n"
    "    retry: {on: [error], tries: 2}\n"
    "  - match: {path_prefix: /once/}\n"
    "    upstream: pair\n"
    "    retry: {tries: 1}\n"
    "  - match: {path_prefix: /default/}\n"
    "    upstream: pair\n"
    "  - match: {path_prefix: /slow/}\n"
    "    upstream: app\n"
    "    timeouts: {read: 100ms}\n"
    "  - match: {path_prefix: /}\n"
    "    upstream: app\n";

typedef struct {
    fx_client_t *cl;
    fx_backend_t *be, *be2;
    uint16_t closed; /* the first server of pair: it refuses connections */
    int closed_fd;
    tref_t *t;
} px_t;

/* A table whose app is be, and whose pair is a closed port then be2. */
static int setup_with(void **state, const char *global, const char *client_ip)
{
    px_t *p = calloc(1, sizeof(*p));
    assert_non_null(p);
    p->be = fx_backend_new(OK_HELLO);
    p->be2 = fx_backend_new(OK_HELLO);
    char site[2048];
    p->closed = fx_refusing_port(&p->closed_fd);
    snprintf(site, sizeof(site), SITE_FMT, p->be->port, p->closed, p->be2->port);
    p->t = fx_table(global, site);
    W->table = p->t;
    p->cl = fx_client_from(client_ip, 40000);
    fx_log_clear();
    *state = p;
    return 0;
}

static int setup(void **state) { return setup_with(state, NULL, "127.0.0.1"); }
static int setup_untrusted(void **state) { return setup_with(state, NULL, "192.0.2.7"); }
static int setup_short(void **state)
{
    return setup_with(state, "limits: {body_timeout: 150ms}\n", "127.0.0.1");
}

static int teardown(void **state)
{
    px_t *p = *state;
    /* the client goes, then the backends: a request still waiting for one
     * (a failed test) sees it close and ends */
    fx_client_close(p->cl);
    fx_backend_free(p->be);
    fx_backend_free(p->be2);
    close(p->closed_fd);
    fx_run(fx_no_conns, NULL, 3000);
    assert_int_equal(W->conns, 0);
    upool_close_idle();
    fx_run_for(1);
    /* every attempt let go of its server; nothing holds the table */
    for (uint32_t i = 0; i < p->t->t.nservers; i++)
        assert_int_equal(health_load(health_slot_of(p->t, i)), 0);
    assert_int_equal(p->t->refs, 1);
    tref_put(p->t);
    W->table = NULL;
    free(p);
    return 0;
}

/* The slot of the server at 127.0.0.1:port. */
static health_slot_t *slot_at(const tref_t *t, uint16_t port)
{
    char addr[32];
    snprintf(addr, sizeof(addr), "127.0.0.1:%u", port);
    for (uint32_t i = 0; i < t->t.nservers; i++)
        if (strcmp(rt_cstr(&t->t, t->t.servers[i].sa.addr), addr) == 0)
            return health_slot_of(t, i);
    fail_msg("no server %s", addr);
    return NULL;
}

static fx_resp_t *response(const fx_client_t *cl, int k)
{
    static fx_resp_t r;
    int rc = fx_response(cl, k, 0, &r);
    if (rc != 1)
        fail_msg("response %d is %s; the client has:\n%s", k, rc < 0 ? "invalid" : "incomplete", cl->buf);
    return &r;
}

static void assert_body(const fx_resp_t *r, const char *body)
{
    assert_int_equal(r->body_len, strlen(body));
    assert_memory_equal(r->body, body, r->body_len);
}

/* Does the backend's last request carry this line (a field or the request line)? */
static bool has_line(const fx_backend_t *be, const char *line)
{
    char want[512];
    snprintf(want, sizeof(want), "\n%s\r\n", line);
    return strstr(be->request, want) != NULL || strncmp(be->request, line, strlen(line)) == 0;
}

static bool has_field(const fx_backend_t *be, const char *name)
{
    char want[128];
    snprintf(want, sizeof(want), "\r\n%s:", name);
    return strcasestr(be->request, want) != NULL;
}

/* The body of the backend's last request. */
static const char *request_body(const fx_backend_t *be)
{
    const char *p = strstr(be->request, "\r\n\r\n");
    assert_non_null(p);
    return p + 4;
}

/* ---- the upstream request --------------------------------------------------------------- */

static void test_request_head_rewritten(void **state)
{
    px_t *p = *state;
    fx_send_str(p->cl, "GET /api/users?page=2 HTTP/1.1\r\n"
                       "Host: p.example\r\n"
                       "X-Forwarded-For: 203.0.113.9\r\n"
                       "Accept: */*\r\n"
                       "Connection: keep-alive, X-Secret\r\n"
                       "X-Secret: 1\r\n"
                       "Keep-Alive: timeout=5\r\n"
                       "Proxy-Connection: keep-alive\r\n"
                       "TE: trailers\r\n"
                       "X-Custom: yes\r\n"
                       "\r\n");
    assert_true(fx_wait_responses(p->cl, 1, 0));
    fx_backend_t *be = p->be;
    assert_int_equal(be->requests, 1);
    /* the request line, then Host as the client gave it */
    assert_memory_equal(be->request, "GET /api/users?page=2 HTTP/1.1\r\nHost: p.example\r\n", 49);
    assert_true(has_line(be, "Accept: */*"));
    assert_true(has_line(be, "X-Custom: yes"));
    /* a trusted peer (127.0.0.1 by default): its X-Forwarded-For is kept and we
     * append; its rightmost untrusted address is the client */
    assert_true(has_line(be, "X-Forwarded-For: 203.0.113.9, 127.0.0.1"));
    assert_true(has_line(be, "X-Real-IP: 203.0.113.9"));
    assert_true(has_line(be, "X-Forwarded-Proto: http"));
    assert_true(has_line(be, "X-Forwarded-Host: p.example"));
    assert_true(has_line(be, "X-Forwarded-Port: 80"));
    /* hop-by-hop: never forwarded, nor what Connection names */
    assert_false(has_field(be, "Connection"));
    assert_false(has_field(be, "Keep-Alive"));
    assert_false(has_field(be, "Proxy-Connection"));
    assert_false(has_field(be, "TE"));
    assert_false(has_field(be, "X-Secret"));
    assert_false(has_field(be, "Content-Length"));
    assert_false(has_field(be, "Transfer-Encoding"));
    assert_string_equal(request_body(be), "");
    /* exactly one X-Forwarded-For */
    const char *xff = strstr(be->request, "X-Forwarded-For");
    assert_null(strstr(xff + 1, "X-Forwarded-For"));
}

/* An untrusted peer's X-Forwarded-* claims are replaced, not extended. */
static void test_untrusted_forwarded_fields(void **state)
{
    px_t *p = *state;
    fx_send_str(p->cl, "GET / HTTP/1.1\r\nHost: p.example\r\nX-Forwarded-For: 203.0.113.9\r\n"
                       "X-Real-IP: 203.0.113.9\r\nX-Forwarded-Proto: https\r\n\r\n");
    assert_true(fx_wait_responses(p->cl, 1, 0));
    assert_true(has_line(p->be, "X-Forwarded-For: 192.0.2.7"));
    assert_true(has_line(p->be, "X-Real-IP: 192.0.2.7"));
    assert_true(has_line(p->be, "X-Forwarded-Proto: http"));
    assert_null(strstr(p->be->request, "203.0.113.9"));
}

static void test_chunked_body_reframed(void **state)
{
    px_t *p = *state;
    fx_send_str(p->cl, "POST /upload HTTP/1.1\r\nHost: p.example\r\nTransfer-Encoding: chunked\r\n\r\n"
                       "5\r\nhello\r\n");
    fx_run_for(20);
    fx_send_str(p->cl, "7;name=value\r\n, world\r\n0\r\n\r\n");
    assert_true(fx_wait_responses(p->cl, 1, 0));
    fx_backend_t *be = p->be;
    assert_int_equal(be->requests, 1);
    assert_true(has_line(be, "POST /upload HTTP/1.1"));
    assert_true(has_line(be, "Transfer-Encoding: chunked"));
    assert_false(has_field(be, "Content-Length"));
    /* our own chunks: the data, without the client's extensions, then the last chunk */
    fx_resp_t body;
    size_t used = 0;
    const char *b = request_body(be);
    assert_int_equal(fx_dechunk(&body, b, strlen(b), &used), 1);
    assert_int_equal(used, strlen(b));
    assert_int_equal(body.body_len, 12);
    assert_memory_equal(body.body, "hello, world", 12);
    assert_null(strstr(b, "name=value"));
    assert_int_equal(response(p->cl, 0)->status, 200);
}

static void test_length_body_forwarded(void **state)
{
    px_t *p = *state;
    fx_send_str(p->cl, "PUT /doc HTTP/1.1\r\nHost: p.example\r\nContent-Length: 11\r\n\r\nhello");
    fx_run_for(20);
    fx_send_str(p->cl, " world");
    assert_true(fx_wait_responses(p->cl, 1, 0));
    assert_true(has_line(p->be, "Content-Length: 11"));
    assert_false(has_field(p->be, "Transfer-Encoding"));
    assert_string_equal(request_body(p->be), "hello world");
    /* the body was read: the connection stays for the next request */
    assert_false(fx_has_field(response(p->cl, 0), "Connection", NULL));
}

/* Expect: 100-continue is answered by us before the body is read. */
static void test_expect_continue(void **state)
{
    px_t *p = *state;
    fx_send_str(p->cl, "POST /form HTTP/1.1\r\nHost: p.example\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n");
    assert_true(fx_wait_responses(p->cl, 1, 0));
    assert_int_equal(response(p->cl, 0)->status, 100);
    fx_client_reset(p->cl);
    fx_send_str(p->cl, "data");
    assert_true(fx_wait_responses(p->cl, 1, 0));
    assert_int_equal(response(p->cl, 0)->status, 200);
    assert_false(has_field(p->be, "Expect"));
    assert_string_equal(request_body(p->be), "data");
}

/* ---- the response ---------------------------------------------------------------------------- */

static void test_response_relayed(void **state)
{
    px_t *p = *state;
    uint64_t answered = W->stats->upstream_count;
    fx_send_str(p->cl, "GET /a HTTP/1.1\r\nHost: p.example\r\n\r\n");
    assert_true(fx_wait_responses(p->cl, 1, 0));
    fx_resp_t *r = response(p->cl, 0);
    assert_int_equal(W->stats->upstream_count - answered, 1); /* its latency observed */
    assert_int_equal(r->status, 200);
    assert_true(fx_has_field(r, "Content-Length", "5"));
    assert_true(fx_has_field(r, "X-Backend", "b1"));
    assert_true(fx_has_field(r, "Server", "proxyd")); /* ours, not the backend's */
    assert_null(memmem(r->head, r->head_len, "backend", 7));
    assert_false(fx_has_field(r, "Keep-Alive", NULL));
    assert_false(r->is_chunked);
    assert_body(r, "hello");
    assert_int_equal(p->cl->n, r->total);
}

/* A body delimited by the upstream's close reaches an HTTP/1.1 client chunked. */
static void test_close_delimited_response(void **state)
{
    px_t *p = *state;
    p->be->reply = "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end";
    p->be->close_after = true;
    fx_send_str(p->cl, "GET /a HTTP/1.1\r\nHost: p.example\r\n\r\n");
    assert_true(fx_wait_responses(p->cl, 1, 0));
    fx_resp_t *r = response(p->cl, 0);
    assert_true(r->is_chunked);
    assert_body(r, "until the end");
    assert_false(fx_has_field(r, "Connection", NULL));
}

/* The upstream connection goes back to the pool and serves the next request. */
static void test_upstream_keepalive(void **state)
{
    px_t *p = *state;
    health_slot_t *s = slot_at(p->t, p->be->port);
    for (int i = 0; i < 3; i++) {
        fx_client_reset(p->cl);
        fx_send_str(p->cl, "GET /k HTTP/1.1\r\nHost: p.example\r\n\r\n");
        assert_true(fx_wait_responses(p->cl, 1, 0));
        assert_body(response(p->cl, 0), "hello");
        assert_int_equal(health_load(s), 0); /* in flight only while it is served */
    }
    assert_int_equal(p->be->requests, 3);
    assert_int_equal(p->be->accepted, 1);
    assert_int_equal(atomic_load(&s->requests), 3);
}

/* ---- failures ---------------------------------------------------------------------------------- */

static void test_502_when_upstream_closes(void **state)
{
    px_t *p = *state;
    p->be->reply = NULL; /* read the request, close without a word */
    fx_send_str(p->cl, "GET /a HTTP/1.1\r\nHost: p.example\r\n\r\n");
    assert_true(fx_wait_responses(p->cl, 1, 0));
    fx_resp_t *r = response(p->cl, 0);
    assert_int_equal(r->status, 502);
    assert_body(r, "502 Bad Gateway\n");
    assert_true(fx_has_field(r, "Connection", "close"));
    assert_int_equal(p->be->requests, 1);
    assert_true(fx_log_has("upstream 127.0.0.1:"));
    assert_true(fx_log_has("(site p): closed the connection without responding"));
    assert_int_equal(atomic_load(&slot_at(p->t, p->be->port)->failures), 1);
    assert_true(fx_run(fx_client_eof, p->cl, 3000));
}

static void test_504_read_timeout(void **state)
{
    px_t *p = *state;
    p->be->reply = ""; /* read the request, never answer */
    fx_send_str(p->cl, "GET /slow/x HTTP/1.1\r\nHost: p.example\r\n\r\n");
    assert_true(fx_wait_responses(p->cl, 1, 0));
    assert_int_equal(response(p->cl, 0)->status, 504);
    assert_true(fx_log_has("read timed out after 100ms"));
}

/* The first server of pair refuses; retry.on error with two tries moves
 * the request to the second. */
static void test_retry_on_refused(void **state)
{
    px_t *p = *state;
    fx_send_str(p->cl, "GET /retry/x HTTP/1.1\r\nHost: p.example\r\n\r\n");
    assert_true(fx_wait_responses(p->cl, 1, 0));
    fx_resp_t *r = response(p->cl, 0);
    assert_int_equal(r->status, 200);
    assert_body(r, "hello");
    assert_int_equal(p->be2->requests, 1);
    assert_true(has_line(p->be2, "GET /retry/x HTTP/1.1"));
    assert_int_equal(atomic_load(&slot_at(p->t, p->closed)->failures), 1);
    assert_int_equal(atomic_load(&slot_at(p->t, p->be2->port)->failures), 0);
    assert_true(fx_log_has("connection refused"));
}

/* retry not written: a refused connection (nothing sent) moves on to the
 * next server whatever the method (SPEC §10). */
static void test_refused_retried_by_default(void **state)
{
    px_t *p = *state;
    fx_send_str(p->cl, "POST /default/x HTTP/1.1\r\nHost: p.example\r\nContent-Length: 3\r\n\r\na=1");
    assert_true(fx_wait_responses(p->cl, 1, 0));
    assert_int_equal(response(p->cl, 0)->status, 200);
    assert_int_equal(p->be2->requests, 1);
    assert_true(has_line(p->be2, "POST /default/x HTTP/1.1"));
}

/* retry: {tries: 1}: the refusal is the answer. */
static void test_refused_without_retry(void **state)
{
    px_t *p = *state;
    fx_send_str(p->cl, "GET /once/x HTTP/1.1\r\nHost: p.example\r\n\r\n");
    assert_true(fx_wait_responses(p->cl, 1, 0));
    assert_int_equal(response(p->cl, 0)->status, 502);
    assert_int_equal(p->be2->requests, 0);
    assert_true(fx_log_has("connection refused"));
}

/* The client stops sending its body: 408 after body_timeout. */
static void test_client_body_timeout(void **state)
{
    px_t *p = *state;
    fx_send_str(p->cl, "POST /upload HTTP/1.1\r\nHost: p.example\r\nContent-Length: 10\r\n\r\nabc");
    assert_true(fx_run(fx_client_eof, p->cl, 3000));
    fx_resp_t *r = response(p->cl, 0);
    assert_int_equal(r->status, 408);
    assert_true(fx_has_field(r, "Connection", "close"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_request_head_rewritten, setup, teardown),
        cmocka_unit_test_setup_teardown(test_untrusted_forwarded_fields, setup_untrusted, teardown),
        cmocka_unit_test_setup_teardown(test_chunked_body_reframed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_length_body_forwarded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expect_continue, setup, teardown),
        cmocka_unit_test_setup_teardown(test_response_relayed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_delimited_response, setup, teardown),
        cmocka_unit_test_setup_teardown(test_upstream_keepalive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_502_when_upstream_closes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_504_read_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retry_on_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused_retried_by_default, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused_without_retry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_body_timeout, setup_short, teardown),
    };
    return cmocka_run_group_tests(tests, fx_group_setup, fx_group_teardown);
}

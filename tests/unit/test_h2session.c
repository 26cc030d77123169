/*
 * test_h2session.c - the HTTP/2 session (proxyd/http/h2session.c) in a real
 * worker (tests/unit/proxyd_fixture.h), driven over a socketpair by an
 * nghttp2 client session: prior knowledge on a plain connection, answers
 * from proxyd itself, a file larger than the client's window, a request
 * body, the 431 of HTTP/2, a zero-window stall reset after body_timeout, and
 * GOAWAY when the worker drains.
 */
#include "proxyd_fixture.h"

#include <nghttp2/nghttp2.h>

#include "http/h2session.h"

#define MAXS 16
#define FILE_LINES 3000 /* 87 000 bytes: more than a 65 535-byte window */

static const char *SITE_FMT = "site: t\n"
                              "hosts: [t.example]\n"
                              "routes:\n"
                              "  - match: {path_exact: /hello}\n"
                              "    return: {status: 200, body: \"hello, world\\n\"}\n"
                              "  - match: {path_prefix: /files/}\n"
                              "    static: {root: \"%s\"}\n";

static const char *GLOBAL = "http2_cleartext: true\nlimits: {h2_max_streams: 8}\n";
static const char *SHORT = "http2_cleartext: true\nlimits: {body_timeout: 300ms}\n";

static struct {
    tref_t *normal, *short_timeouts;
} g;

/* ---- a client ----------------------------------------------------------------------- */

typedef struct {
    nghttp2_session *ng;
    fx_client_t *cl;
    int status[MAXS];
    size_t body[MAXS];
    bool closed[MAXS];
    uint32_t error[MAXS];
    bool goaway;
    uint32_t max_streams;
} cli_t;

static ssize_t cli_send(nghttp2_session *ng, const uint8_t *data, size_t len, int flags, void *user)
{
    cli_t *c = user;
    (void)ng;
    (void)flags;
    fx_send(c->cl, (const char *)data, len);
    return (ssize_t)len;
}

static int cli_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                      const uint8_t *value, size_t vlen, uint8_t flags, void *user)
{
    cli_t *c = user;
    (void)ng;
    (void)flags;
    (void)vlen;
    if (f->hd.type == NGHTTP2_HEADERS && nlen == 7 && memcmp(name, ":status", 7) == 0 && f->hd.stream_id < MAXS)
        c->status[f->hd.stream_id] = atoi((const char *)value);
    return 0;
}

static int cli_data(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data, size_t len, void *user)
{
    cli_t *c = user;
    (void)ng;
    (void)flags;
    (void)data;
    if (id < MAXS)
        c->body[id] += len;
    return 0;
}

static int cli_close(nghttp2_session *ng, int32_t id, uint32_t error, void *user)
{
    cli_t *c = user;
    (void)ng;
    if (id < MAXS) {
        c->closed[id] = true;
        c->error[id] = error;
    }
    return 0;
}

static int cli_frame(nghttp2_session *ng, const nghttp2_frame *f, void *user)
{
    cli_t *c = user;
    if (f->hd.type == NGHTTP2_GOAWAY)
        c->goaway = true;
    if (f->hd.type == NGHTTP2_SETTINGS && !(f->hd.flags & NGHTTP2_FLAG_ACK))
        c->max_streams = nghttp2_session_get_remote_settings(ng, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
    return 0;
}

static cli_t *cli_new(uint32_t window)
{
    cli_t *c = calloc(1, sizeof(*c));
    nghttp2_session_callbacks *cb;
    assert_non_null(c);
    assert_int_equal(nghttp2_session_callbacks_new(&cb), 0);
    nghttp2_session_callbacks_set_send_callback(cb, cli_send);
    nghttp2_session_callbacks_set_on_header_callback(cb, cli_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, cli_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, cli_close);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, cli_frame);
    assert_int_equal(nghttp2_session_client_new(&c->ng, cb, c), 0);
    nghttp2_session_callbacks_del(cb);
    c->cl = fx_client();
    nghttp2_settings_entry iv = {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, window};
    assert_int_equal(nghttp2_submit_settings(c->ng, NGHTTP2_FLAG_NONE, &iv, 1), 0);
    return c;
}

static void cli_free(cli_t *c)
{
    nghttp2_session_del(c->ng);
    fx_client_close(c->cl);
    free(c);
}

static int32_t cli_request(cli_t *c, const char *method, const char *path, const nghttp2_data_provider *body,
                           const nghttp2_nv *extra, size_t nextra)
{
    nghttp2_nv nv[8] = {
        {(uint8_t *)":method", (uint8_t *)method, 7, strlen(method), 0},
        {(uint8_t *)":scheme", (uint8_t *)"http", 7, 4, 0},
        {(uint8_t *)":authority", (uint8_t *)"t.example", 10, 9, 0},
        {(uint8_t *)":path", (uint8_t *)path, 5, strlen(path), 0},
    };
    for (size_t i = 0; i < nextra && i < 4; i++)
        nv[4 + i] = extra[i];
    int32_t id = nghttp2_submit_request(c->ng, NULL, nv, 4 + (nextra < 4 ? nextra : 4), body, NULL);
    assert_true(id > 0 && id < MAXS);
    return id;
}

/* Exchange bytes until cond holds (or the loop's deadline). */
typedef struct {
    cli_t *c;
    bool (*cond)(cli_t *c, int32_t id);
    int32_t id;
} wait_t;

static bool pump(void *arg)
{
    wait_t *w = arg;
    cli_t *c = w->c;
    if (c->cl->n) {
        assert_true(nghttp2_session_mem_recv(c->ng, (const uint8_t *)c->cl->buf, c->cl->n) >= 0);
        fx_client_reset(c->cl);
    }
    nghttp2_session_send(c->ng);
    return w->cond(c, w->id);
}

static bool closed(cli_t *c, int32_t id) { return c->closed[id]; }
static bool got_goaway(cli_t *c, int32_t id) { return c->goaway && (id == 0 || c->closed[id]); }

static bool run_until(cli_t *c, bool (*cond)(cli_t *c, int32_t id), int32_t id, uint64_t ms)
{
    wait_t w = {c, cond, id};
    nghttp2_session_send(c->ng);
    return fx_run(pump, &w, ms);
}

/* ---- tests --------------------------------------------------------------------------- */

static int group_setup(void **state)
{
    (void)state;
    fx_worker_init();
    char root[160], dir[200], file[240], site[1024];
    snprintf(root, sizeof(root), "%s/www", fx_dir);
    snprintf(dir, sizeof(dir), "%s/files", root);
    assert_int_equal(mkdir(root, 0755), 0);
    assert_int_equal(mkdir(dir, 0755), 0);
    snprintf(file, sizeof(file), "%s/a.txt", dir);
    FILE *f = fopen(file, "w");
    assert_non_null(f);
    for (int i = 0; i < FILE_LINES; i++)
        fprintf(f, "line %04d of the static file\n", i); /* 29 bytes a line */
    fclose(f);
    snprintf(site, sizeof(site), SITE_FMT, root);
    g.normal = fx_table(GLOBAL, site);
    g.short_timeouts = fx_table(SHORT, site);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    tref_put(g.normal);
    tref_put(g.short_timeouts);
    fx_worker_free();
    return 0;
}

static int setup(void **state)
{
    W->table = g.normal;
    W->draining = false;
    *state = NULL;
    return 0;
}

static int setup_short(void **state)
{
    setup(state);
    W->table = g.short_timeouts;
    return 0;
}

static int teardown(void **state)
{
    if (*state)
        cli_free(*state);
    fx_run(fx_no_conns, NULL, 3000);
    assert_int_equal(W->conns, 0);
    assert_int_equal(W->table->refs, 1); /* every request finished */
    W->draining = false;
    return 0;
}

static void test_get_and_settings(void **state)
{
    cli_t *c = *state = cli_new(65535);
    int32_t a = cli_request(c, "GET", "/hello", NULL, NULL, 0);
    int32_t b = cli_request(c, "GET", "/nowhere", NULL, NULL, 0);
    assert_true(run_until(c, closed, b, 3000));
    assert_true(c->closed[a]);
    assert_int_equal(c->status[a], 200);
    assert_int_equal(c->body[a], strlen("hello, world\n"));
    assert_int_equal(c->status[b], 404);
    assert_int_equal(c->max_streams, 8);
    assert_int_equal(W->stats->requests_h2, 2);
}

static void test_file_larger_than_the_window(void **state)
{
    cli_t *c = *state = cli_new(1000); /* the client consumes, and so reopens, as data comes */
    int32_t id = cli_request(c, "GET", "/files/a.txt", NULL, NULL, 0);
    assert_true(run_until(c, closed, id, 5000));
    assert_int_equal(c->status[id], 200);
    assert_int_equal(c->body[id], FILE_LINES * 29);
    assert_int_equal(c->error[id], 0);
}

static ssize_t body_read(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                         nghttp2_data_source *src, void *user)
{
    size_t *left = src->ptr;
    (void)ng;
    (void)id;
    (void)user;
    size_t k = *left < len ? *left : len;
    memset(buf, 'b', k);
    *left -= k;
    if (*left == 0)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)k;
}

static void test_request_body_then_next_request(void **state)
{
    cli_t *c = *state = cli_new(65535);
    size_t left = 200000; /* more than the stream's window: read as it is taken */
    nghttp2_data_provider prd = {.source.ptr = &left, .read_callback = body_read};
    int32_t id = cli_request(c, "POST", "/hello", &prd, NULL, 0);
    assert_true(run_until(c, closed, id, 5000));
    assert_int_equal(c->status[id], 200);
    int32_t next = cli_request(c, "GET", "/hello", NULL, NULL, 0);
    assert_true(run_until(c, closed, next, 3000));
    assert_int_equal(c->status[next], 200);
}

static void test_oversize_head_gets_431(void **state)
{
    cli_t *c = *state = cli_new(65535);
    static char big[5000];
    memset(big, 'v', sizeof(big));
    nghttp2_nv extra[4];
    static const char *names[4] = {"x-a", "x-b", "x-c", "x-d"};
    for (int i = 0; i < 4; i++)
        extra[i] = (nghttp2_nv){(uint8_t *)names[i], (uint8_t *)big, 3, sizeof(big), 0};
    int32_t id = cli_request(c, "GET", "/hello", NULL, extra, 4);
    assert_true(run_until(c, closed, id, 3000));
    assert_int_equal(c->status[id], 431);
    assert_int_equal(W->stats->h2_refused[H2_REFUSED_HEADERS_TOO_LARGE], 1);
}

static void test_zero_window_stall_is_reset(void **state)
{
    cli_t *c = *state = cli_new(0);
    int32_t id = cli_request(c, "GET", "/files/a.txt", NULL, NULL, 0);
    assert_true(run_until(c, closed, id, 3000));
    assert_int_equal(c->error[id], NGHTTP2_CANCEL);
    assert_int_equal(c->body[id], 0);
    assert_int_equal(W->stats->h2_refused[H2_REFUSED_ZERO_WINDOW], 1);
}

static void test_drain_sends_goaway_and_closes(void **state)
{
    cli_t *c = *state = cli_new(65535);
    int32_t id = cli_request(c, "GET", "/hello", NULL, NULL, 0);
    assert_true(run_until(c, closed, id, 3000));
    W->draining = true;
    conn_drain_all();
    assert_true(run_until(c, got_goaway, 0, 3000));
    assert_true(fx_run(fx_no_conns, NULL, 3000));
    assert_int_equal(W->stats->closed[CLOSE_DRAIN], 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_get_and_settings, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_larger_than_the_window, setup, teardown),
        cmocka_unit_test_setup_teardown(test_request_body_then_next_request, setup, teardown),
        cmocka_unit_test_setup_teardown(test_oversize_head_gets_431, setup, teardown),
        cmocka_unit_test_setup_teardown(test_zero_window_stall_is_reset, setup_short, teardown),
        cmocka_unit_test_setup_teardown(test_drain_sends_goaway_and_closes, setup, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}

/*
 * test_conn.c - the transport of a client connection (conn/conn.c) under a
 * fake session whose callbacks record what they are called with: the
 * session starts on a ready connection, hears bytes, EOF and "nothing
 * new", output goes out (c->out, then a file segment by sendfile) with
 * on_writable once everything is written, backpressure, the timer, the
 * single teardown with its reason counted, and the lingering close.
 */
#include "proxyd_fixture.h"

/* ---- the fake session ------------------------------------------------------------------ */

#define MAX_READS 64

static struct {
    conn_t *conn;
    int opens, writables, timeouts, closes, drains;
    conn_close_reason_t reason;
    int nreads;               /* on_read calls; the first MAX_READS recorded */
    ssize_t reads[MAX_READS], last_read;
    size_t in_at_close;       /* bytes c->in held when on_close ran */
    bool consume;             /* take what c->in holds on each read */
    bool close_on_eof;        /* conn_close(CLIENT_EOF) on a 0 read */
    size_t taken;
    char data[1 << 17];       /* bytes taken out of c->in */
} fake;

static void f_open(conn_t *c)
{
    fake.opens++;
    fake.conn = c;
    conn_want_read(c, true);
}

static void f_read(conn_t *c, ssize_t n)
{
    if (fake.nreads < MAX_READS)
        fake.reads[fake.nreads] = n;
    fake.nreads++;
    fake.last_read = n;
    if (!fake.consume && iobuf_space(c->in) == 0)
        conn_pause_read(c, true); /* backpressure, as a real session does */
    if (fake.consume && iobuf_len(c->in)) {
        size_t k = iobuf_len(c->in);
        assert_true(fake.taken + k <= sizeof(fake.data));
        memcpy(fake.data + fake.taken, iobuf_rd(c->in), k);
        fake.taken += k;
        iobuf_consume(c->in, k);
    }
    if (n == 0 && fake.close_on_eof)
        conn_close(c, CLOSE_CLIENT_EOF);
}

static void f_writable(conn_t *c)
{
    (void)c;
    fake.writables++;
}

static void f_timeout(conn_t *c)
{
    (void)c;
    fake.timeouts++;
}

static void f_close(conn_t *c, conn_close_reason_t reason)
{
    fake.closes++;
    fake.reason = reason;
    fake.in_at_close = iobuf_len(c->in);
}

static void f_drain(conn_t *c)
{
    (void)c;
    fake.drains++;
}

static const conn_session_ops_t fake_ops = {
    .name = "fake",
    .on_open = f_open,
    .on_read = f_read,
    .on_writable = f_writable,
    .on_timeout = f_timeout,
    .on_close = f_close,
    .on_drain = f_drain,
};

static const conn_session_ops_t *select_fake(conn_t *c)
{
    (void)c;
    return &fake_ops;
}

/* ---- fixtures ----------------------------------------------------------------------------- */

static const char *SITE = "site: c\nhosts: [c.example]\nroutes:\n  - match: {path_prefix: /}\n    return: {status: 204}\n";

static int group_setup(void **state)
{
    (void)state;
    fx_worker_init();
    conn_set_selector(select_fake);
    W->table = fx_table(NULL, SITE);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    tref_put(W->table);
    fx_worker_free();
    return 0;
}

static int setup(void **state)
{
    memset(&fake, 0, sizeof(fake));
    fake.close_on_eof = true;
    fake.consume = true;
    *state = fx_client();
    return 0;
}

static int teardown(void **state)
{
    fx_client_t *cl = *state;
    fx_client_close(cl);
    /* the server's end reads EOF and closes (or was closed already) */
    fx_run(fx_no_conns, NULL, 2000);
    assert_int_equal(W->conns, 0);
    assert_null(W->closed);
    return 0;
}

static bool reads_reach(void *arg) { return fake.nreads >= *(int *)arg; }

static void run_reads(int n) { assert_true(fx_run(reads_reach, &n, 2000)); }

/* Make the server's end slow to take bytes: output stays queued. */
static void small_buffers(fx_client_t *cl)
{
    int small = 4096;
    assert_int_equal(setsockopt(cl->conn->io.fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
    assert_int_equal(setsockopt(cl->fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)), 0);
}

/* ---- the tests ------------------------------------------------------------------------------ */

static void test_open(void **state)
{
    fx_client_t *cl = *state;
    conn_t *c = cl->conn;
    assert_int_equal(fake.opens, 1);
    assert_ptr_equal(fake.conn, c);
    assert_ptr_equal(c->ops, &fake_ops);
    assert_int_equal(c->state, CONN_OPEN);
    assert_false(c->tls);
    assert_int_equal(c->peer_family, 4);
    assert_memory_equal(c->peer_ip, "\xc0\x00\x02\x07", 4); /* 192.0.2.7 */
    assert_int_equal(c->peer_port, 50123);
    assert_int_equal(c->local_port, 80);
    assert_int_equal(W->conns, 1);
    assert_int_equal(W->stats->conns_active, 1);
    /* a connection holds no buffer before bytes arrive */
    assert_null(c->in);
    assert_null(c->out);
    assert_true(ev_timer_armed(&c->timer)); /* the header timeout, from the accept */
}

static void test_read_bytes_eof(void **state)
{
    fx_client_t *cl = *state;
    uint64_t in_before = W->stats->bytes_in;
    fx_send_str(cl, "hello");
    run_reads(1);
    assert_int_equal(fake.reads[0], 5);
    assert_int_equal(fake.taken, 5);
    assert_memory_equal(fake.data, "hello", 5);
    assert_int_equal(W->stats->bytes_in - in_before, 5);

    /* the client shuts its side: 0, and the fake session closes */
    uint64_t eofs = W->stats->closed[CLOSE_CLIENT_EOF];
    shutdown(cl->fd, SHUT_WR);
    run_reads(2);
    assert_int_equal(fake.reads[1], 0);
    assert_int_equal(fake.closes, 1);
    assert_int_equal(fake.reason, CLOSE_CLIENT_EOF);
    assert_int_equal(W->stats->closed[CLOSE_CLIENT_EOF], eofs + 1);
    assert_true(fx_run(fx_client_eof, cl, 2000)); /* our side went away too */
}

/* -1: the socket has nothing now, or c->in is full. */
static void test_read_nothing_new(void **state)
{
    fx_client_t *cl = *state;
    conn_t *c = cl->conn;
    conn_read(c);
    assert_int_equal(fake.nreads, 1);
    assert_int_equal(fake.reads[0], -1);

    fake.consume = false;
    static char big[IOBUF_SIZE + 100];
    memset(big, 'x', sizeof(big));
    fx_send(cl, big, sizeof(big));
    run_reads(2);
    assert_int_equal(fake.reads[1], IOBUF_SIZE); /* what fits */
    assert_int_equal(iobuf_len(c->in), IOBUF_SIZE);
    assert_true(c->read_paused);
    conn_read(c);
    assert_int_equal(fake.nreads, 3);
    assert_int_equal(fake.reads[2], -1);
    assert_int_equal(iobuf_len(c->in), IOBUF_SIZE);
    /* taken: the rest follows */
    iobuf_consume(c->in, IOBUF_SIZE);
    conn_pause_read(c, false);
    run_reads(4);
    assert_int_equal(fake.reads[3], 100);
    fx_run_for(10);
    assert_int_equal(fake.nreads, 4);
}

static void test_pause_read(void **state)
{
    fx_client_t *cl = *state;
    conn_t *c = cl->conn;
    conn_pause_read(c, true);
    fx_send_str(cl, "abc");
    fx_run_for(30);
    assert_int_equal(fake.nreads, 0);
    conn_pause_read(c, false);
    run_reads(1);
    assert_int_equal(fake.reads[0], 3);

    /* no reading interest at all: the same */
    conn_want_read(c, false);
    fx_send_str(cl, "de");
    fx_run_for(30);
    assert_int_equal(fake.nreads, 1);
    conn_want_read(c, true);
    run_reads(2);
    assert_int_equal(fake.reads[1], 2);
    assert_memory_equal(fake.data, "abcde", 5);
}

static bool writable_once(void *arg)
{
    (void)arg;
    return fake.writables > 0;
}

typedef struct {
    const fx_client_t *cl;
    size_t n;
} want_bytes_t;

static bool client_has(void *arg)
{
    const want_bytes_t *w = arg;
    return w->cl->n >= w->n;
}

/* Run until the client holds n bytes. */
static bool wait_bytes(const fx_client_t *cl, size_t n)
{
    want_bytes_t w = {cl, n};
    return fx_run(client_has, &w, 3000);
}

static void test_write_flush(void **state)
{
    fx_client_t *cl = *state;
    conn_t *c = cl->conn;
    uint64_t out_before = W->stats->bytes_out;

    /* a small answer goes out at once: nothing stays queued, no EV_WRITE */
    conn_write_str(c, "HTTP/1.1 ");
    conn_write_u64(c, 204);
    CONN_LIT(c, " ok\r\n");
    assert_true(conn_pending(c));
    assert_int_equal(conn_flush(c), 0);
    assert_false(conn_pending(c));
    assert_null(c->out); /* the emptied buffer went back */
    assert_true(wait_bytes(cl, 17));
    assert_string_equal(cl->buf, "HTTP/1.1 204 ok\r\n");
    assert_int_equal(c->bytes_out, 17);
    assert_int_equal(fake.writables, 0);

    /* more than the socket takes: the rest goes out on EV_WRITE, then on_writable once */
    fx_client_reset(cl);
    small_buffers(cl);
    static char big[IOBUF_SIZE];
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (char)('a' + i % 26);
    assert_true(conn_out_space(c) >= sizeof(big));
    conn_write(c, big, sizeof(big));
    assert_int_equal(conn_flush(c), 0);
    assert_true(conn_pending(c));
    assert_true(c->io.events & EV_WRITE);
    assert_int_equal(fake.writables, 0);
    assert_true(wait_bytes(cl, sizeof(big)));
    assert_true(fx_run(writable_once, NULL, 2000));
    fx_run_for(20);
    assert_int_equal(fake.writables, 1);
    assert_false(conn_pending(c));
    assert_false(c->io.events & EV_WRITE);
    assert_int_equal(cl->n, sizeof(big));
    assert_memory_equal(cl->buf, big, sizeof(big));
    assert_int_equal(c->bytes_out, 17 + sizeof(big));
    assert_int_equal(W->stats->bytes_out - out_before, 17 + sizeof(big));
}

static void test_send_file(void **state)
{
    fx_client_t *cl = *state;
    conn_t *c = cl->conn;
    char path[160];
    snprintf(path, sizeof(path), "%s/segment.bin", fx_dir);
    static char content[200000];
    for (size_t i = 0; i < sizeof(content); i++)
        content[i] = (char)(i * 7 + i / 251);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(content, 1, sizeof(content), f), sizeof(content));
    fclose(f);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);

    small_buffers(cl);
    CONN_LIT(c, "HEAD\n");
    conn_send_file(c, fd, 1000, 150000); /* after c->out */
    assert_true(conn_pending(c));
    assert_int_equal(conn_flush(c), 0);
    assert_true(wait_bytes(cl, 5 + 150000));
    assert_true(fx_run(writable_once, NULL, 2000));
    assert_int_equal(fake.writables, 1);
    assert_int_equal(cl->n, 5 + 150000);
    assert_memory_equal(cl->buf, "HEAD\n", 5);
    assert_memory_equal(cl->buf + 5, content + 1000, 150000);
    assert_null(c->file); /* sent whole: the connection closed the file */
    assert_int_equal(c->bytes_out, 5 + 150000);
    assert_int_equal(fcntl(fd, F_GETFD), -1);
}

/* A segment still queued when the connection closes is closed with it. */
static void test_close_with_file_queued(void **state)
{
    fx_client_t *cl = *state;
    conn_t *c = cl->conn;
    int fd = open("/dev/zero", O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    conn_send_file(c, fd, 0, 1 << 20);
    conn_close(c, CLOSE_CLIENT_ERROR);
    assert_int_equal(fcntl(fd, F_GETFD), -1);
}

static void test_close_once_with_reason(void **state)
{
    fx_client_t *cl = *state;
    conn_t *c = cl->conn;
    uint64_t before[STATS_CLOSE_COUNT];
    for (int i = 0; i < STATS_CLOSE_COUNT; i++)
        before[i] = W->stats->closed[i];
    fx_send_str(cl, "held");
    fake.consume = false;
    run_reads(1);
    conn_close(c, CLOSE_SEND_TIMEOUT);
    conn_close(c, CLOSE_DONE); /* a second teardown is a no-op */
    assert_int_equal(fake.closes, 1);
    assert_int_equal(fake.reason, CLOSE_SEND_TIMEOUT);
    assert_int_equal(fake.in_at_close, 4); /* the session hears it first, buffers intact */
    assert_true(c->closed);
    assert_int_equal(c->io.fd, -1);
    assert_null(c->in);
    for (int i = 0; i < STATS_CLOSE_COUNT; i++)
        assert_int_equal(W->stats->closed[i] - before[i], i == CLOSE_SEND_TIMEOUT);
    assert_int_equal(W->conns, 0);
    assert_int_equal(W->stats->conns_active, 0);
    assert_ptr_equal(W->closed, c); /* freed after the batch of events, not now */
    assert_string_equal(conn_close_name(CLOSE_SEND_TIMEOUT), "send_timeout");
    assert_string_equal(conn_close_name(STATS_CLOSE_COUNT), "?");
    assert_true(fx_run(fx_client_eof, cl, 2000));
    assert_null(W->closed);
}

static bool timed_out(void *arg)
{
    (void)arg;
    return fake.timeouts > 0;
}

static void test_timer(void **state)
{
    fx_client_t *cl = *state;
    conn_t *c = cl->conn;
    conn_timer(c, 20);
    assert_true(fx_run(timed_out, NULL, 2000));
    assert_int_equal(fake.timeouts, 1);
    assert_int_equal(fake.closes, 0); /* what a timeout means is the session's business */
    conn_timer(c, 20);
    conn_timer_stop(c);
    fx_run_for(60);
    assert_int_equal(fake.timeouts, 1);
}

static void test_drain_all(void **state)
{
    fx_client_t *cl = *state;
    fx_client_t *other = fx_client_from("198.51.100.1", 1);
    assert_int_equal(W->conns, 2);
    conn_drain_all();
    assert_int_equal(fake.drains, 2);
    fx_client_close(other);
    (void)cl;
}

static void test_linger(void **state)
{
    fx_client_t *cl = *state;
    conn_t *c = cl->conn;
    uint64_t done = W->stats->closed[CLOSE_DONE];
    CONN_LIT(c, "bye");
    assert_int_equal(conn_flush(c), 0);
    conn_linger(c);
    assert_int_equal(c->state, CONN_LINGER);
    /* our side is shut: the client reads the answer, then EOF */
    assert_true(fx_run(fx_client_eof, cl, 2000));
    assert_string_equal(cl->buf, "bye");
    assert_int_equal(W->conns, 1);
    /* what the client still sends is drained, not handed to the session */
    static char late[50000];
    memset(late, 'z', sizeof(late));
    fx_send(cl, late, sizeof(late));
    fx_run_for(30);
    assert_int_equal(fake.nreads, 0);
    assert_int_equal(fake.closes, 0);
    assert_int_equal(W->conns, 1);
    /* the client closes: the drain ends and the connection closes as done */
    shutdown(cl->fd, SHUT_WR);
    assert_true(fx_run(fx_no_conns, NULL, 2000));
    assert_int_equal(fake.closes, 1);
    assert_int_equal(fake.reason, CLOSE_DONE);
    assert_int_equal(W->stats->closed[CLOSE_DONE], done + 1);
}

/* A client that keeps sending past the drain allowance is cut off. */
static void test_linger_bounded(void **state)
{
    fx_client_t *cl = *state;
    conn_t *c = cl->conn;
    conn_linger(c);
    static char junk[64 * 1024];
    memset(junk, 'j', sizeof(junk));
    size_t sent = 0;
    while (W->conns && sent < 4 * 256 * 1024) {
        ssize_t k = write(cl->fd, junk, sizeof(junk));
        if (k > 0)
            sent += (size_t)k;
        else if (k < 0 && errno != EAGAIN)
            break;
        fx_run_for(2);
    }
    assert_int_equal(W->conns, 0);
    assert_true(sent < 4 * 256 * 1024); /* cut off after the allowance (plus what the sockets hold) */
    assert_int_equal(fake.reason, CLOSE_DONE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_open, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_bytes_eof, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_nothing_new, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pause_read, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_flush, setup, teardown),
        cmocka_unit_test_setup_teardown(test_send_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_with_file_queued, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_once_with_reason, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drain_all, setup, teardown),
        cmocka_unit_test_setup_teardown(test_linger, setup, teardown),
        cmocka_unit_test_setup_teardown(test_linger_bounded, setup, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}

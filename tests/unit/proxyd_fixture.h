/*
 * proxyd_fixture.h - a proxyd worker inside a unit test, for the tests that
 * drive the real transport, HTTP/1.1 session and handlers (test_conn,
 * test_h1session, test_proxy, test_health).
 *
 *   fx_worker_init   W with its event loop, a stats slot and the parse
 *                    scratch, the modules' worker hooks run (session
 *                    selector, filter chains, log phase; worker_idle between
 *                    batches of events), the error log captured to a file
 *                    (fx_log_has), a temporary directory for the store and
 *                    static roots
 *   fx_table         site YAML compiled in-process by proxyctl's compiler,
 *                    stored as a generation of that store and loaded the way
 *                    the master loads one (tref_load: the bundle a worker
 *                    is handed, verified and prepared)
 *   fx_client        one end of an AF_UNIX socketpair served as a client
 *                    connection (conn_adopt); the test holds the other end,
 *                    whose bytes the loop collects into cl->buf
 *   fx_backend       a scripted upstream on 127.0.0.1 accepted within the
 *                    loop: it collects each complete request and answers it
 *                    with a canned reply, or closes without one
 *   fx_run           the loop, until a condition holds or a deadline passes
 *   fx_parse         an independent reading of a response (status, fields,
 *                    Content-Length / chunked / close-delimited body)
 *
 * The test binary links proxyd's objects (main.c left out); this header
 * brings the compiler and the common sources (proxyctl_all.h).
 */
#ifndef PROXYD_FIXTURE_H
#define PROXYD_FIXTURE_H

#include "proxyctl_all.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "../../common/log.h"
#include "conn/conn.h"
#include "core/module.h"
#include "http/h1session.h"
#include "http/request.h"
#include "upstream/health.h"
#include "upstream/pool.h"

/* ---- the worker ----------------------------------------------------------------- */

static worker_t fx_worker;
static char fx_dir[64];
static char fx_db[128], fx_log[128], fx_why[256];
static bool (*fx_until)(void *);
static void *fx_until_arg;

static inline void fx_idle(void *arg)
{
    (void)arg;
    modules_worker_idle(); /* the worker's housekeeping between batches of events */
    if (fx_until && fx_until(fx_until_arg))
        ev_stop(W->loop);
}

static inline void fx_worker_init(void)
{
    memset(&fx_worker, 0, sizeof(fx_worker));
    W = &fx_worker;
    W->loop = ev_new();
    W->stats = calloc(1, sizeof(*W->stats));
    W->hreq = malloc(sizeof(*W->hreq));
    W->hres = malloc(sizeof(*W->hres));
    W->pid_hash = 0x5eed;
    W->id = 1; /* not worker 0, which runs the node's health checker */
    assert_non_null(W->loop);
    assert_non_null(W->stats);
    assert_non_null(W->hreq);
    assert_non_null(W->hres);
    snprintf(fx_dir, sizeof(fx_dir), "/tmp/proxyd-unit-XXXXXX");
    assert_non_null(mkdtemp(fx_dir));
    snprintf(fx_db, sizeof(fx_db), "%s/store.db", fx_dir);
    snprintf(fx_log, sizeof(fx_log), "%s/error.log", fx_dir);
    if (getenv("PROXYD_UNIT_STDERR") == NULL) /* the error log on the terminal, to debug a failure */
        assert_int_equal(log_open(fx_log, fx_why, sizeof(fx_why)), 0);
    signal(SIGPIPE, SIG_IGN);
    /* as worker_main: the modules' worker hooks pick the session, set up
     * the filter chains and the log phase (there are no listeners) */
    assert_int_equal(modules_worker_init(), 0);
    ev_set_idle(W->loop, fx_idle, NULL);
}

static inline int fx_rm(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static inline void fx_worker_free(void)
{
    ev_free(W->loop);
    free(W->stats);
    free(W->hreq);
    free(W->hres);
    log_open(NULL, fx_why, sizeof(fx_why));
    nftw(fx_dir, fx_rm, 8, FTW_DEPTH | FTW_PHYS);
    W = NULL;
}

/* cmocka group hooks for tests that need only the worker. */
static inline int fx_group_setup(void **state)
{
    (void)state;
    fx_worker_init();
    return 0;
}

static inline int fx_group_teardown(void **state)
{
    (void)state;
    fx_worker_free();
    return 0;
}

/* Did the error log get a line containing s since the last fx_log_clear? */
static inline bool fx_log_has(const char *s)
{
    static char text[1 << 16];
    FILE *f = fopen(fx_log, "r");
    if (f == NULL)
        return false;
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    text[n] = '\0';
    return strstr(text, s) != NULL;
}

static inline void fx_log_clear(void)
{
    FILE *f = fopen(fx_log, "w");
    if (f)
        fclose(f);
}

/* ---- the loop ---------------------------------------------------------------------- */

static inline void fx_deadline(ev_loop_t *loop, ev_timer_t *t)
{
    (void)t;
    ev_stop(loop);
}

/* The loop's clock moves only when the loop wakes: wait once (1 ms at most)
 * so that timers armed next count from now, not from its last wake-up
 * (which may be long ago when the test did other work meanwhile). */
static inline void fx_tick(void)
{
    ev_timer_t t = {0};
    ev_timer_start(W->loop, &t, 1, fx_deadline);
    ev_run(W->loop);
    ev_timer_stop(W->loop, &t);
}

/* Run the loop until until(arg) holds (checked between batches of events) or
 * max_ms passed; true when the condition was met. */
static inline bool fx_run(bool (*until)(void *), void *arg, uint64_t max_ms)
{
    ev_timer_t t = {0};
    fx_tick();
    fx_until = until;
    fx_until_arg = arg;
    ev_timer_start(W->loop, &t, max_ms, fx_deadline);
    ev_run(W->loop);
    ev_timer_stop(W->loop, &t);
    fx_until = NULL;
    bool met = until ? until(arg) : false;
    conn_free_deferred();
    upconn_free_deferred();
    return met;
}

/* Run for ms whatever happens. */
static inline void fx_run_for(uint64_t ms) { fx_run(NULL, NULL, ms); }

static inline bool fx_no_conns(void *arg)
{
    (void)arg;
    return W->conns == 0;
}

/* ---- the rule table ------------------------------------------------------------------- */

/* Compile global (NULL: defaults) and one site, store it as the active
 * generation and load it as a worker does. */
static inline tref_t *fx_table(const char *global, const char *site)
{
    arena_t a;
    diag_t d = {0};
    arena_init(&a, 0);
    cfg_global_t *g = config_global(&a, "proxy.yaml", global, &d);
    cfg_site_t *s = config_site(&a, "site.yaml", site, &d);
    if (g && s && d.errors == 0)
        check_sites(g, &s, 1, &d);
    if (g == NULL || s == NULL || d.errors) {
        diag_print(&d, stderr);
        diag_free(&d);
        arena_free(&a);
        fail_msg("the test configuration does not compile");
    }
    uint8_t *blob = NULL;
    size_t len = 0;
    assert_int_equal(compile_table(g, &s, 1, &blob, &len), 0);
    diag_free(&d);
    arena_free(&a);

    store_t st;
    int from = 0;
    int64_t id = 0;
    if (store_open(&st, fx_db, STORE_CREATE) < 0 || store_migrate(&st, &from) < 0 ||
        store_add_generation(&st, blob, len, "unit test", global, &id) < 0)
        fail_msg("store %s: %s", fx_db, st.err);
    store_close(&st);
    free(blob);

    char err[512];
    tref_t *t = tref_load(fx_db, id, err, sizeof(err));
    if (t == NULL)
        fail_msg("tref_load: %s", err);
    return t;
}

/* ---- a client on a socketpair ----------------------------------------------------------- */

#define FX_CLIENT_BUF (1 << 20)

typedef struct {
    ev_io_t io;       /* first: the io callback gets this pointer */
    int fd;           /* the test's end of the pair */
    bool eof, registered;
    conn_t *conn;     /* the server's end; valid until it is closed and freed */
    size_t n;
    char *buf;        /* what the server sent, NUL-terminated */
} fx_client_t;

static inline void fx_client_io(ev_loop_t *loop, ev_io_t *io, uint32_t revents)
{
    fx_client_t *cl = (fx_client_t *)io;
    (void)revents;
    for (;;) {
        if (cl->n + 1 >= FX_CLIENT_BUF)
            fail_msg("the client buffer is full");
        ssize_t k = read(cl->fd, cl->buf + cl->n, FX_CLIENT_BUF - 1 - cl->n);
        if (k > 0) {
            cl->n += (size_t)k;
            cl->buf[cl->n] = '\0';
            continue;
        }
        if (k == 0 || errno != EAGAIN) {
            cl->eof = true;
            ev_del(loop, io);
            cl->registered = false;
        }
        return;
    }
}

static inline void fx_sockaddr(struct sockaddr_storage *ss, const char *ip, uint16_t port)
{
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    s4->sin_family = AF_INET;
    s4->sin_port = htons(port);
    assert_int_equal(inet_pton(AF_INET, ip, &s4->sin_addr), 1);
}

/* A client connection from ip:port to local port 80.  The session starts
 * at once (conn_adopt) and, with nothing to read yet, waits. */
static inline fx_client_t *fx_client_from(const char *ip, uint16_t port)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
    fx_client_t *cl = calloc(1, sizeof(*cl));
    assert_non_null(cl);
    cl->buf = malloc(FX_CLIENT_BUF);
    assert_non_null(cl->buf);
    cl->buf[0] = '\0';
    cl->fd = sv[1];
    assert_int_equal(ev_add(W->loop, &cl->io, cl->fd, EV_READ, fx_client_io), 0);
    cl->registered = true;
    struct sockaddr_storage ss;
    fx_sockaddr(&ss, ip, port);
    fx_tick(); /* its header timer counts from now */
    cl->conn = conn_adopt(sv[0], &ss, 80);
    assert_non_null(cl->conn);
    return cl;
}

static inline fx_client_t *fx_client(void) { return fx_client_from("192.0.2.7", 50123); }

/* Write all of p (the loop runs while the socket is full). */
static inline void fx_send(fx_client_t *cl, const char *p, size_t n)
{
    while (n) {
        ssize_t k = write(cl->fd, p, n);
        if (k < 0 && errno == EAGAIN) {
            fx_run_for(5);
            continue;
        }
        assert_true(k > 0);
        p += k;
        n -= (size_t)k;
    }
}

static inline void fx_send_str(fx_client_t *cl, const char *s) { fx_send(cl, s, strlen(s)); }

/* Forget what the client received so far. */
static inline void fx_client_reset(fx_client_t *cl)
{
    cl->n = 0;
    cl->buf[0] = '\0';
}

static inline void fx_client_close(fx_client_t *cl)
{
    if (cl == NULL)
        return;
    if (cl->registered)
        ev_del(W->loop, &cl->io);
    close(cl->fd);
    free(cl->buf);
    free(cl);
}

static inline bool fx_client_eof(void *arg) { return ((fx_client_t *)arg)->eof; }

/* ---- reading responses -------------------------------------------------------------------- */

typedef struct {
    int status;
    const char *head;  /* from the status line to the blank line, inclusive */
    size_t head_len;
    const char *body;  /* the payload (de-chunked into `chunked` when chunked) */
    size_t body_len;
    size_t total;      /* bytes of the message on the wire */
    bool is_chunked, until_close;
    char chunked[1 << 16];
} fx_resp_t;

/* The value of field name in r's head, NUL-terminated into out; NULL when absent. */
static inline const char *fx_field(const fx_resp_t *r, const char *name, char *out, size_t cap)
{
    size_t nl = strlen(name);
    const char *p = memchr(r->head, '\n', r->head_len), *end = r->head + r->head_len;
    while (p && p + 1 < end) {
        const char *line = p + 1, *eol = memchr(line, '\n', (size_t)(end - line));
        if (eol == NULL)
            break;
        if ((size_t)(eol - line) > nl && line[nl] == ':' && strncasecmp(line, name, nl) == 0) {
            const char *v = line + nl + 1;
            while (*v == ' ')
                v++;
            size_t vn = (size_t)(eol - v);
            if (vn && v[vn - 1] == '\r')
                vn--;
            snprintf(out, cap, "%.*s", (int)vn, v);
            return out;
        }
        p = eol;
    }
    return NULL;
}

static inline bool fx_has_field(const fx_resp_t *r, const char *name, const char *value)
{
    char v[512];
    return fx_field(r, name, v, sizeof(v)) && (value == NULL || strcmp(v, value) == 0);
}

/* Parse the chunked body at p; 1 complete (r->body set, *used), 0 incomplete, -1 invalid. */
static inline int fx_dechunk(fx_resp_t *r, const char *p, size_t n, size_t *used)
{
    size_t o = 0;
    r->body_len = 0;
    for (;;) {
        const char *eol = memmem(p + o, n - o, "\r\n", 2);
        if (eol == NULL)
            return 0;
        char *e;
        unsigned long size = strtoul(p + o, &e, 16);
        if (e == p + o)
            return -1;
        o = (size_t)(eol - p) + 2;
        if (size == 0) {
            if (n - o < 2)
                return 0;
            if (memcmp(p + o, "\r\n", 2) != 0)
                return -1; /* no trailers in these tests */
            *used = o + 2;
            r->body = r->chunked;
            return 1;
        }
        if (n - o < size + 2)
            return 0;
        if (r->body_len + size > sizeof(r->chunked) || memcmp(p + o + size, "\r\n", 2) != 0)
            return -1;
        memcpy(r->chunked + r->body_len, p + o, size);
        r->body_len += size;
        o += size + 2;
    }
}

/* Read one response from p[0..n): 1 complete, 0 incomplete, -1 invalid.
 * no_body: the answer to a HEAD.  eof: nothing follows p[n) (a body
 * delimited by the close is complete). */
static inline int fx_parse(const char *p, size_t n, bool no_body, bool eof, fx_resp_t *r)
{
    memset(r, 0, offsetof(fx_resp_t, chunked));
    const char *end = memmem(p, n, "\r\n\r\n", 4);
    if (end == NULL)
        return 0;
    if (n < 12 || memcmp(p, "HTTP/1.1 ", 9) != 0)
        return -1;
    r->status = atoi(p + 9);
    r->head = p;
    r->head_len = (size_t)(end - p) + 4;
    const char *body = p + r->head_len;
    size_t avail = n - r->head_len;
    char v[64];
    if (no_body || r->status < 200 || r->status == 204 || r->status == 304) {
        r->body = body;
        r->total = r->head_len;
        return 1;
    }
    if (fx_field(r, "Transfer-Encoding", v, sizeof(v))) {
        size_t used;
        int rc = fx_dechunk(r, body, avail, &used);
        r->is_chunked = true;
        r->total = r->head_len + used;
        return rc;
    }
    r->body = body;
    if (fx_field(r, "Content-Length", v, sizeof(v))) {
        r->body_len = strtoull(v, NULL, 10);
        r->total = r->head_len + r->body_len;
        return avail >= r->body_len ? 1 : 0;
    }
    r->until_close = true;
    r->body_len = avail;
    r->total = n;
    return eof ? 1 : 0;
}

/* The k-th response (from 0) the client received; heads: bit i set when
 * request i was a HEAD.  1 complete, 0 not (yet), -1 invalid. */
static inline int fx_response(const fx_client_t *cl, int k, unsigned heads, fx_resp_t *r)
{
    size_t off = 0;
    for (int i = 0;; i++) {
        int rc = fx_parse(cl->buf + off, cl->n - off, (heads >> i) & 1, cl->eof, r);
        if (rc <= 0 || i == k)
            return rc;
        off += r->total;
    }
}

static inline int fx_count_responses(const fx_client_t *cl, unsigned heads)
{
    static fx_resp_t r;
    size_t off = 0;
    int k = 0;
    while (off < cl->n && fx_parse(cl->buf + off, cl->n - off, (heads >> k) & 1, cl->eof, &r) == 1) {
        off += r.total;
        k++;
        if (r.until_close)
            break;
    }
    return k;
}

typedef struct {
    fx_client_t *cl;
    int k;
    unsigned heads;
} fx_want_t;

static inline bool fx_has_responses(void *arg)
{
    const fx_want_t *w = arg;
    return fx_count_responses(w->cl, w->heads) >= w->k || w->cl->eof;
}

/* Run until the client holds k complete responses (or the connection closed). */
static inline bool fx_wait_responses(fx_client_t *cl, int k, unsigned heads)
{
    fx_want_t w = {cl, k, heads};
    fx_run(fx_has_responses, &w, 3000);
    if (fx_count_responses(cl, heads) >= k)
        return true;
    fprintf(stderr, "expected %d responses; the client has %zu bytes%s:\n%s\n", k, cl->n, cl->eof ? " and EOF" : "",
            cl->buf);
    return false;
}

/* ---- a scripted backend on 127.0.0.1 ---------------------------------------------------------- */

#define FX_PEERS 8

typedef struct fx_backend fx_backend_t;

typedef struct {
    ev_io_t io;        /* first: the io callback gets this pointer */
    fx_backend_t *b;
    bool open;
    size_t n;
    char buf[1 << 16];
} fx_peer_t;

struct fx_backend {
    ev_io_t lio;       /* first */
    uint16_t port;
    const char *reply; /* written for each complete request; NULL: close without a response */
    bool close_after;  /* close once the reply is written */
    int accepted, requests, closed_by_proxy;
    char request[1 << 16]; /* the last complete request, NUL-terminated */
    size_t request_len;
    fx_peer_t peers[FX_PEERS];
};

/* Length of the complete request at p, or 0. */
static inline size_t fx_request_complete(const char *p, size_t n)
{
    const char *end = memmem(p, n, "\r\n\r\n", 4);
    if (end == NULL)
        return 0;
    size_t head = (size_t)(end - p) + 4;
    const char *cl = strcasestr(p, "\r\nContent-Length:");
    if (cl && cl < end) {
        size_t len = strtoull(cl + 17, NULL, 10);
        return n - head >= len ? head + len : 0;
    }
    const char *te = strcasestr(p, "\r\nTransfer-Encoding: chunked");
    if (te && te < end) {
        const char *last = memmem(p + head, n - head, "0\r\n\r\n", 5);
        return last ? (size_t)(last - p) + 5 : 0;
    }
    return head;
}

static inline void fx_peer_close(fx_peer_t *pe)
{
    if (!pe->open)
        return;
    ev_del(W->loop, &pe->io);
    close(pe->io.fd);
    pe->open = false;
}

static inline void fx_peer_io(ev_loop_t *loop, ev_io_t *io, uint32_t revents)
{
    fx_peer_t *pe = (fx_peer_t *)io;
    fx_backend_t *b = pe->b;
    (void)loop;
    (void)revents;
    ssize_t k = read(io->fd, pe->buf + pe->n, sizeof(pe->buf) - 1 - pe->n);
    if (k == 0 || (k < 0 && errno != EAGAIN)) {
        b->closed_by_proxy++;
        fx_peer_close(pe);
        return;
    }
    if (k < 0)
        return;
    pe->n += (size_t)k;
    pe->buf[pe->n] = '\0';
    size_t len;
    while (pe->open && (len = fx_request_complete(pe->buf, pe->n)) > 0) {
        memcpy(b->request, pe->buf, len);
        b->request[len] = '\0';
        b->request_len = len;
        b->requests++;
        memmove(pe->buf, pe->buf + len, pe->n - len);
        pe->n -= len;
        pe->buf[pe->n] = '\0';
        if (b->reply && write(io->fd, b->reply, strlen(b->reply)) != (ssize_t)strlen(b->reply))
            fail_msg("backend: short write");
        if (b->reply == NULL || b->close_after)
            fx_peer_close(pe);
    }
}

static inline void fx_backend_accept(ev_loop_t *loop, ev_io_t *io, uint32_t revents)
{
    fx_backend_t *b = (fx_backend_t *)io;
    (void)revents;
    int fd;
    while ((fd = accept4(io->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
        fx_peer_t *pe = NULL;
        for (int i = 0; i < FX_PEERS && pe == NULL; i++)
            if (!b->peers[i].open)
                pe = &b->peers[i];
        if (pe == NULL)
            fail_msg("backend: too many connections");
        memset(pe, 0, offsetof(fx_peer_t, buf));
        pe->b = b;
        pe->open = true;
        b->accepted++;
        assert_int_equal(ev_add(loop, &pe->io, fd, EV_READ, fx_peer_io), 0);
    }
}

/* A listening socket on 127.0.0.1 (a free port), served by the loop. */
static inline fx_backend_t *fx_backend_new(const char *reply)
{
    fx_backend_t *b = calloc(1, sizeof(*b));
    assert_non_null(b);
    b->reply = reply;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_storage ss;
    fx_sockaddr(&ss, "127.0.0.1", 0);
    socklen_t sl = sizeof(struct sockaddr_in);
    assert_int_equal(bind(fd, (struct sockaddr *)&ss, sl), 0);
    assert_int_equal(listen(fd, 16), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&ss, &sl), 0);
    b->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    assert_int_equal(ev_add(W->loop, &b->lio, fd, EV_READ, fx_backend_accept), 0);
    return b;
}

static inline void fx_backend_free(fx_backend_t *b)
{
    if (b == NULL)
        return;
    for (int i = 0; i < FX_PEERS; i++)
        fx_peer_close(&b->peers[i]);
    ev_del(W->loop, &b->lio);
    close(b->lio.fd);
    free(b);
}

/* A port where connecting is refused: bound, never listening.  *hold keeps
 * it bound so nobody else takes it meanwhile; the caller closes it. */
static inline uint16_t fx_refusing_port(int *hold)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_storage ss;
    fx_sockaddr(&ss, "127.0.0.1", 0);
    socklen_t sl = sizeof(struct sockaddr_in);
    assert_int_equal(bind(fd, (struct sockaddr *)&ss, sl), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&ss, &sl), 0);
    *hold = fd;
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

#endif

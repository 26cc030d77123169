/*
 * conn.c - client connection transport (see conn.h).
 *
 * Accept, read, write, sendfile, TLS glue, the connection timer, lingering
 * close and the deferred free.  Which protocol runs on the bytes is the
 * session's business: this file calls c->ops and never looks at a byte.
 */
#include "conn/conn.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "../common/log.h"
#include "conn/peers.h"
#include "conn/proxyproto.h"
#include "conn/tls.h"

#define ACCEPT_BATCH 64
/* Out of descriptors (EMFILE/ENFILE): stop accepting this long instead of
 * spinning on a level-triggered listener that stays readable. */
#define ACCEPT_PAUSE_MS 100
/* Draining: a connection between requests gets this grace (see conn_drain_all). */
#define DEFERRED_MAX 256

static conn_t *all_conns;
static const conn_session_ops_t *(*select_session)(conn_t *c);
static conn_t *deferred_reads[DEFERRED_MAX];
static unsigned ndeferred;
static ev_timer_t accept_pause;

static void on_io(ev_loop_t *loop, ev_io_t *io, uint32_t revents);
static void on_timer(ev_loop_t *loop, ev_timer_t *t);
static void handshake(conn_t *c);
static void on_readable(conn_t *c);

void conn_read(conn_t *c) { on_readable(c); }

#define CLOSE_NAME(e, label) label,
static const char *const close_names[] = {STATS_CLOSE_REASONS(CLOSE_NAME)};

const char *conn_close_name(conn_close_reason_t reason)
{
    return reason < STATS_CLOSE_COUNT ? close_names[reason] : "?";
}

/* During the handshake the session space holds the table SNI reads. */
static tref_t *hs_table(conn_t *c)
{
    tref_t *t;
    memcpy(&t, c->session_space, sizeof(t));
    return t;
}

static void hs_table_set(conn_t *c, tref_t *t) { memcpy(c->session_space, &t, sizeof(t)); }

static void file_done(conn_t *c)
{
    if (c->file == NULL)
        return;
    close(c->file->fd);
    free(c->file);
    c->file = NULL;
}

void conn_set_selector(const conn_session_ops_t *(*select)(conn_t *c)) { select_session = select; }

/* ---- accept ------------------------------------------------------------------------ */

/* The address of ss: its family (4 or 6, 0 for others) into ip[16] and port. */
static int sockaddr_ip(const struct sockaddr_storage *ss, uint8_t ip[16], uint16_t *port)
{
    memset(ip, 0, 16);
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;
        memcpy(ip, &s4->sin_addr, 4);
        *port = ntohs(s4->sin_port);
        return 4;
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
        memcpy(ip, &s6->sin6_addr, 16);
        *port = ntohs(s6->sin6_port);
        return ip_unmap(6, ip); /* a dual-stack socket's IPv4 peer is IPv4 */
    }
    *port = 0;
    return 0;
}

/* Listeners are registered EPOLLEXCLUSIVE, which EPOLL_CTL_MOD refuses:
 * pausing is a removal and resuming a new registration. */
static void accept_resume(ev_loop_t *loop, ev_timer_t *t)
{
    (void)t;
    for (int i = 0; i < W->nlisteners; i++) {
        listener_t *l = &W->listeners[i];
        if (l->fd >= 0 && !W->draining && ev_add_exclusive(loop, &l->io, l->fd, l->io.cb) < 0)
            log_err("cannot watch listener on port %u again: %s", l->port, strerror(errno));
    }
}

static void accept_pause_now(const listener_t *l)
{
    if (ev_timer_armed(&accept_pause))
        return;
    log_err("accept on port %u: %s; not accepting for %d ms", l->port, strerror(errno), ACCEPT_PAUSE_MS);
    for (int i = 0; i < W->nlisteners; i++)
        if (W->listeners[i].fd >= 0)
            ev_del(W->loop, &W->listeners[i].io);
    ev_timer_start(W->loop, &accept_pause, ACCEPT_PAUSE_MS, accept_resume);
}

/* limits.max_connections is the node's: every worker's open connections,
 * from the shared counters (a worker that died counts until its slot is
 * reused; the limit may be passed by one connection per worker at once). */
static uint64_t node_conns(void)
{
    uint64_t n = 0;
    for (int i = 0; i < STATS_MAX_WORKERS; i++)
        if (W->shm->workers[i].pid)
            n += W->shm->workers[i].conns_active;
    return n;
}

/* Over the limit: a plain client gets a 503 it can read (what it sent so
 * far is drained first, so the close is not a reset), TLS ones a close. */
static void refuse(const listener_t *l, int fd)
{
    static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
                               "Content-Length: 24\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
                               "503 Service Unavailable\n";
    static time_t logged;
    char sink[4096];
    W->stats->closed[CLOSE_REFUSED]++;
    if (!W->draining && time(NULL) != logged) {
        logged = time(NULL);
        log_warn("port %u: refusing connections over limits.max_connections (%u for the node)", l->port,
                 W->table->t.global->max_connections);
    }
    if (l->kind != RT_LISTEN_HTTPS && !W->draining) {
        while (read(fd, sink, sizeof(sink)) > 0)
            ;
        (void)!write(fd, busy, sizeof(busy) - 1);
        shutdown(fd, SHUT_WR);
    }
    close(fd);
}

static void link_conn(conn_t *c)
{
    c->all_next = all_conns;
    if (all_conns)
        all_conns->all_prev = c;
    all_conns = c;
    W->conns++;
    W->stats->conns_active = W->conns;
    W->stats->conns_total++;
}

/* ---- per-address caps and the PROXY protocol ----------------------------------------- */

/* The listen entry's flags in the current table (a reload may change them). */
static uint8_t listener_flags(const listener_t *l)
{
    const rt_table_t *t = &W->table->t;
    for (uint32_t i = 0; i < t->global->listens.count; i++) {
        const rt_listen_t *e = &t->listens[t->global->listens.first + i];
        if (e->kind == l->kind && e->sa.port == l->port && e->sa.kind == l->addr_kind &&
            memcmp(e->sa.ip, l->ip, sizeof(l->ip)) == 0)
            return e->flags;
    }
    return 0;
}

static void log_refusal(log_limit_t *limit, int family, const uint8_t *ip, const char *what)
{
    unsigned long quiet;
    char peer[64], more[64] = "";
    if (W->draining || !log_limited(limit, &quiet))
        return;
    if (family == 4 || family == 6)
        fmt_ip(peer, family, ip);
    else
        snprintf(peer, sizeof(peer), "unix");
    if (quiet)
        snprintf(more, sizeof(more), " (%lu more since the last such line)", quiet);
    log_warn("client %s: %s%s", peer, what, more);
}

/* limits.max_connections_per_ip: false when the address has its share. */
static bool peer_admitted(int family, const uint8_t *ip, bool *counted)
{
    static log_limit_t limit;
    uint32_t cap = W->table->t.global->max_conns_per_ip;
    *counted = false;
    if (cap == 0 || peers_take(family, ip, cap, counted))
        return true;
    W->stats->closed[CLOSE_PER_IP]++;
    char what[96];
    snprintf(what, sizeof(what), "connection closed: over limits.max_connections_per_ip (%u)", cap);
    log_refusal(&limit, family, ip, what);
    return false;
}

static void session_start(conn_t *c);

/* After the PROXY header: the TLS handshake or the session. */
static void proxy_done(conn_t *c)
{
    if (!c->tls) {
        session_start(c);
        return;
    }
    if ((c->ssl = tls_accept(W->table, c->io.fd)) == NULL) {
        conn_close(c, CLOSE_NO_MEMORY);
        return;
    }
    c->state = CONN_HANDSHAKE;
    hs_table_set(c, tref_get(W->table));
    handshake(c);
}

static void proxy_refused(conn_t *c, const char *why)
{
    static log_limit_t limit;
    char what[160];
    snprintf(what, sizeof(what), "connection closed: %s", why);
    log_refusal(&limit, c->peer_family, c->peer_ip, what);
    conn_close(c, CLOSE_PROXY_PROTOCOL);
}

/* CONN_PROXY: the header is peeked, and only its own bytes are read (what
 * follows is the client's TLS or HTTP).  Epoll is level-triggered, so a
 * header that arrives in pieces is read as it comes (every byte before its
 * end is its own) into c->in, and parsed again with what follows. */
static void proxy_header(conn_t *c)
{
    uint8_t buf[PP_V2_MAX];
    size_t have = iobuf_len(c->in);
    memcpy(buf, have ? iobuf_rd(c->in) : "", have);
    ssize_t n;
    do
        n = recv(c->io.fd, buf + have, sizeof(buf) - have, MSG_PEEK);
    while (n < 0 && errno == EINTR);
    if (n < 0 && errno == EAGAIN)
        return;
    if (n <= 0) {
        conn_close(c, n == 0 ? CLOSE_CLIENT_EOF : CLOSE_CLIENT_ERROR);
        return;
    }
    pp_addr_t src;
    const char *why;
    long len = pp_parse(buf, have + (size_t)n, &src, &why);
    if (len < 0) {
        proxy_refused(c, why);
        return;
    }
    if (len == 0 && c->in == NULL && (c->in = iobuf_get()) == NULL) {
        conn_close(c, CLOSE_NO_MEMORY);
        return;
    }
    size_t take = len ? (size_t)len - have : (size_t)n;
    uint8_t *to = len ? buf : (uint8_t *)iobuf_wr(c->in);
    if (recv(c->io.fd, to, take, 0) != (ssize_t)take) {
        conn_close(c, CLOSE_CLIENT_ERROR);
        return;
    }
    W->stats->bytes_in += take;
    if (len == 0) {
        c->in->end += (uint32_t)take;
        return;
    }
    iobuf_put(c->in);
    c->in = NULL;
    if (src.family) {
        if (!trusted_proxy(&W->table->t, c->peer_family, c->peer_ip)) {
            proxy_refused(c, "PROXY protocol header from a peer not in trusted_proxies");
            return;
        }
        memcpy(c->peer_ip, src.ip, sizeof(c->peer_ip));
        c->peer_family = (uint8_t)ip_unmap(src.family, c->peer_ip);
        c->peer_port = src.port;
    }
    if (!peer_admitted(c->peer_family, c->peer_ip, &c->peer_counted)) {
        conn_close(c, CLOSE_PER_IP);
        return;
    }
    proxy_done(c);
}

/* A connection is ready for its protocol: plain at once, TLS after the handshake. */
static void session_start(conn_t *c)
{
    c->state = CONN_OPEN;
    memset(c->session_space, 0, sizeof(c->session_space));
    c->ops = select_session(c);
    c->ops->on_open(c);
}

/* A set-up connection goes live: counted, under the header timeout, and
 * its TLS handshake or its session started. */
static void conn_start(conn_t *c)
{
    link_conn(c);
    conn_timer(c, W->table->t.global->header_timeout_ms);
    /* A client that connects and writes at once (most do) has its first
     * bytes here already: take them now, not after a trip through epoll.
     * (TCP_DEFER_ACCEPT would save more, but hides silent connections
     * from the header timeout.) */
    if (c->state == CONN_PROXY)
        proxy_header(c);
    else if (c->ssl)
        handshake(c);
    else
        session_start(c);
}

/* A new connection on fd; NULL (fd closed) when it cannot be set up. */
static conn_t *conn_new(listener_t *l, int fd, const struct sockaddr_storage *ss, bool proxy_protocol)
{
    conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        goto fail;
    c->peer_family = (uint8_t)sockaddr_ip(ss, c->peer_ip, &c->peer_port);
    c->local_port = l->port;
    if (proxy_protocol) {
        c->state = CONN_PROXY; /* TLS, if any, after the header */
        c->tls = l->kind == RT_LISTEN_HTTPS;
    } else if (l->kind == RT_LISTEN_HTTPS) {
        if ((c->ssl = tls_accept(W->table, fd)) == NULL)
            goto fail;
        c->tls = true;
        c->state = CONN_HANDSHAKE;
        hs_table_set(c, tref_get(W->table)); /* a reload must not free what SNI looks at */
    }
    if (ev_add(W->loop, &c->io, fd, EV_READ, on_io) < 0)
        goto fail;
    return c;
fail:
    if (c) {
        tls_free(c->ssl);
        if (c->state == CONN_HANDSHAKE)
            tref_put(hs_table(c));
        free(c);
    }
    close(fd);
    return NULL;
}

void conn_accept(listener_t *l)
{
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int fd = accept4(l->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
                accept_pause_now(l);
            return;
        }
        if (W->draining || node_conns() >= W->table->t.global->max_connections) {
            refuse(l, fd);
            continue;
        }
        bool pp = listener_flags(l) & RT_LF_PROXY_PROTOCOL, counted = false;
        uint8_t ip[16];
        uint16_t port;
        int family = sockaddr_ip(&ss, ip, &port);
        if (!pp && !peer_admitted(family, ip, &counted)) { /* with PROXY, once the header names the client */
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        conn_t *c = conn_new(l, fd, &ss, pp);
        if (c == NULL) {
            if (counted)
                peers_release(family, ip);
            continue;
        }
        c->peer_counted = counted;
        conn_start(c);
    }
}

conn_t *conn_adopt(int fd, const struct sockaddr_storage *peer, uint16_t local_port)
{
    listener_t l = {.fd = -1, .kind = RT_LISTEN_HTTP, .port = local_port};
    conn_t *c = conn_new(&l, fd, peer, false);
    if (c != NULL)
        conn_start(c);
    return c;
}

/* ---- teardown ------------------------------------------------------------------------ */

void conn_close(conn_t *c, conn_close_reason_t reason)
{
    if (c->closed)
        return;
    c->closed = true;
    W->stats->closed[reason < STATS_CLOSE_COUNT ? reason : CLOSE_ABORTED]++;
    log_debug("connection from port %u closed: %s", c->peer_port, conn_close_name(reason));
    if (c->ops)
        c->ops->on_close(c, reason);
    ev_timer_stop(W->loop, &c->timer);
    ev_close(W->loop, &c->io); /* close() below unregisters it: one system call less */
    tls_free(c->ssl);
    c->ssl = NULL;
    if (c->state == CONN_HANDSHAKE)
        tref_put(hs_table(c));
    if (c->peer_counted)
        peers_release(c->peer_family, c->peer_ip);
    file_done(c);
    close(c->io.fd);
    c->io.fd = -1;
    iobuf_put(c->in);
    iobuf_put(c->out);
    c->in = c->out = NULL;
    if (c->all_prev)
        c->all_prev->all_next = c->all_next;
    else
        all_conns = c->all_next;
    if (c->all_next)
        c->all_next->all_prev = c->all_prev;
    W->conns--;
    W->stats->conns_active = W->conns;
    c->next = W->closed;
    W->closed = c;
}

void conn_drain_all(void)
{
    for (conn_t *c = all_conns, *next; c; c = next) {
        next = c->all_next;
        if (c->state == CONN_OPEN && c->ops->on_drain)
            c->ops->on_drain(c);
    }
}

void conn_free_deferred(void)
{
    while (W->closed) {
        conn_t *c = W->closed;
        W->closed = c->next;
        free(c);
    }
}

/* ---- interest ------------------------------------------------------------------------ */

static void update_events(conn_t *c)
{
    if (c->closed || c->state != CONN_OPEN)
        return;
    uint32_t ev = 0;
    if (c->want_read && !c->read_paused)
        ev |= EV_READ;
    if (conn_pending(c) || c->tls_want_write)
        ev |= EV_WRITE;
    ev_set(W->loop, &c->io, ev);
    /* Bytes TLS already holds (read ahead, or decrypted but not taken) make
     * the socket no more readable: take them after this loop turn. */
    if ((ev & EV_READ) && c->ssl && !c->read_deferred && ndeferred < DEFERRED_MAX && SSL_has_pending(c->ssl)) {
        c->read_deferred = true;
        deferred_reads[ndeferred++] = c;
    }
}

void conn_want_read(conn_t *c, bool want)
{
    c->want_read = want;
    update_events(c);
}

void conn_pause_read(conn_t *c, bool pause)
{
    c->read_paused = pause;
    update_events(c);
}

void conn_timer(conn_t *c, uint64_t ms) { ev_timer_start(W->loop, &c->timer, ms, on_timer); }
void conn_timer_stop(conn_t *c) { ev_timer_stop(W->loop, &c->timer); }

/* ---- output ---------------------------------------------------------------------------- */

/* Socket I/O, plain or TLS: >0 bytes, 0 EOF (reads), -1 try later, -2 error. */
static ssize_t c_write(conn_t *c, const void *p, size_t n)
{
    if (c->ssl) {
        ssize_t r = tls_write(c->ssl, p, n);
        c->tls_want_write = false;
        return r > 0 ? r : r == TLS_WANT_WRITE || r == TLS_WANT_READ ? -1 : -2;
    }
    ssize_t r;
    do
        r = write(c->io.fd, p, n);
    while (r < 0 && errno == EINTR);
    return r >= 0 ? r : errno == EAGAIN ? -1 : -2;
}

static ssize_t c_read(conn_t *c, void *p, size_t n)
{
    if (c->ssl) {
        ssize_t r = tls_read(c->ssl, p, n);
        c->tls_want_write = r == TLS_WANT_WRITE;
        return r >= 0 ? r : r == TLS_WANT_READ || r == TLS_WANT_WRITE ? -1 : -2;
    }
    ssize_t r;
    do
        r = read(c->io.fd, p, n);
    while (r < 0 && errno == EINTR);
    return r >= 0 ? r : errno == EAGAIN ? -1 : -2;
}

size_t conn_out_space(conn_t *c)
{
    if (c->out == NULL && (c->out = iobuf_get()) == NULL)
        return 0;
    if (iobuf_space(c->out) < IOBUF_SIZE / 4)
        iobuf_compact(c->out);
    return iobuf_space(c->out);
}

void conn_write(conn_t *c, const char *p, size_t n)
{
    if (c->out && n <= iobuf_space(c->out)) { /* the common case: a small piece that fits */
        memcpy(iobuf_wr(c->out), p, n);
        c->out->end += (uint32_t)n;
        return;
    }
    while (n && conn_out_space(c)) {
        size_t k = n < iobuf_space(c->out) ? n : iobuf_space(c->out);
        memcpy(iobuf_wr(c->out), p, k);
        c->out->end += (uint32_t)k;
        p += k;
        n -= k;
    }
}

void conn_write_str(conn_t *c, const char *s) { conn_write(c, s, strlen(s)); }

void conn_write_u64(conn_t *c, uint64_t v)
{
    char tmp[24];
    conn_write(c, tmp, fmt_u64(tmp, v));
}

void conn_send_file(conn_t *c, int fd, uint64_t off, uint64_t len)
{
    file_done(c);
    if (len == 0 || (c->file = malloc(sizeof(*c->file))) == NULL) {
        if (len)
            log_err("static file: out of memory");
        close(fd);
        return;
    }
    *c->file = (conn_file_t){fd, off, len};
}

static void sent(conn_t *c, size_t n)
{
    c->bytes_out += n;
    W->stats->bytes_out += n;
}

/* TLS has no sendfile: stage file bytes through the output buffer. */
static int send_file_tls(conn_t *c)
{
    conn_file_t *f = c->file;
    while (f->left && conn_out_space(c)) {
        size_t k = f->left < iobuf_space(c->out) ? (size_t)f->left : iobuf_space(c->out);
        ssize_t n = pread(f->fd, iobuf_wr(c->out), k, (off_t)f->off);
        if (n <= 0) {
            log_err("static file read failed: %s", n == 0 ? "file shrank while sending" : strerror(errno));
            conn_close(c, CLOSE_FILE_ERROR);
            return -1;
        }
        c->out->end += (uint32_t)n;
        f->off += (uint64_t)n;
        f->left -= (uint64_t)n;
        ssize_t w = c_write(c, iobuf_rd(c->out), iobuf_len(c->out));
        if (w == -2) {
            conn_close(c, CLOSE_CLIENT_ERROR);
            return -1;
        }
        if (w < 0)
            return 0; /* what is staged goes out with the next flush */
        iobuf_consume(c->out, (size_t)w);
        sent(c, (size_t)w);
        if (iobuf_len(c->out))
            return 0;
    }
    return 0;
}

static int send_file(conn_t *c)
{
    if (c->ssl)
        return send_file_tls(c);
    conn_file_t *f = c->file;
    while (f->left) {
        off_t off = (off_t)f->off;
        size_t chunk = f->left > (1u << 20) ? (1u << 20) : (size_t)f->left;
        ssize_t n = sendfile(c->io.fd, f->fd, &off, chunk);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return 0;
        if (n <= 0) {
            log_err("static file send failed: %s", n == 0 ? "file shrank while sending" : strerror(errno));
            conn_close(c, n == 0 ? CLOSE_FILE_ERROR : CLOSE_CLIENT_ERROR);
            return -1;
        }
        f->off += (uint64_t)n;
        f->left -= (uint64_t)n;
        sent(c, (size_t)n);
    }
    return 0;
}

/* Write what is queued; 0, or -1 when the connection closed. */
static int write_out(conn_t *c)
{
    while (iobuf_len(c->out)) {
        ssize_t n = c_write(c, iobuf_rd(c->out), iobuf_len(c->out));
        if (n == -1)
            break;
        if (n < 0) {
            conn_close(c, CLOSE_CLIENT_ERROR);
            return -1;
        }
        iobuf_consume(c->out, (size_t)n);
        sent(c, (size_t)n);
    }
    if (iobuf_len(c->out) == 0) {
        iobuf_put(c->out);
        c->out = NULL;
        if (c->file && send_file(c) < 0)
            return -1;
        if (c->file && c->file->left == 0)
            file_done(c);
    }
    return 0;
}

int conn_flush(conn_t *c)
{
    if (c->closed || write_out(c) < 0)
        return -1;
    update_events(c);
    return 0;
}

/* ---- input ------------------------------------------------------------------------------ */

/* Read what the socket has into c->in: >0 bytes, 0 EOF, -1 nothing now (or
 * c->in full), -2 error. */
static ssize_t read_in(conn_t *c)
{
    if (c->in == NULL && (c->in = iobuf_get()) == NULL)
        return -2;
    if (iobuf_space(c->in) == 0)
        iobuf_compact(c->in);
    if (iobuf_space(c->in) == 0)
        return -1;
    ssize_t n = c_read(c, iobuf_wr(c->in), iobuf_space(c->in));
    if (n > 0) {
        c->in->end += (uint32_t)n;
        W->stats->bytes_in += (uint64_t)n;
    }
    return n;
}

static void on_readable(conn_t *c)
{
    ssize_t n = read_in(c);
    /* TLS may hold more decrypted bytes than one read took: take what fits. */
    while (n > 0 && c->ssl && SSL_has_pending(c->ssl) && iobuf_space(c->in) > 0) {
        ssize_t more = read_in(c);
        if (more <= 0)
            break;
    }
    c->ops->on_read(c, n);
}

static void handshake(conn_t *c)
{
    int rc = tls_handshake(c->ssl);
    if (rc == TLS_WANT_READ || rc == TLS_WANT_WRITE) {
        ev_set(W->loop, &c->io, rc == TLS_WANT_READ ? EV_READ : EV_WRITE);
        return;
    }
    if (rc != 1) {
        tls_error(); /* clears the queue; failed handshakes (scanners, bad SNI) are not worth a log line */
        conn_close(c, CLOSE_TLS_FAILED);
        return;
    }
    tref_put(hs_table(c));
    session_start(c); /* the first request may have arrived with the handshake */
}

void conn_run_deferred_reads(void)
{
    /* Only those deferred before this turn: a connection whose TLS holds a
     * partial record defers itself again and waits for the socket. */
    conn_t *batch[DEFERRED_MAX];
    unsigned n = ndeferred;
    memcpy(batch, deferred_reads, n * sizeof(*batch));
    ndeferred = 0;
    for (unsigned i = 0; i < n; i++) {
        conn_t *c = batch[i];
        c->read_deferred = false;
        if (!c->closed && c->want_read && !c->read_paused)
            on_readable(c);
    }
}

/* ---- lingering close ---------------------------------------------------------------------- */

#define LINGER_MS 2000
#define LINGER_BYTES (256 * 1024)

void conn_linger(conn_t *c) { conn_linger_for(c, CLOSE_DONE); }

void conn_linger_for(conn_t *c, conn_close_reason_t why)
{
    c->linger_why = (uint8_t)why;
    if (c->ssl) {
        SSL_shutdown(c->ssl); /* close_notify before our half of the TCP close */
        tls_error();
    }
    if (shutdown(c->io.fd, SHUT_WR) < 0) {
        conn_close(c, why);
        return;
    }
    c->state = CONN_LINGER;
    c->read_paused = false;
    c->linger_left = LINGER_BYTES;
    conn_timer(c, LINGER_MS);
    ev_set(W->loop, &c->io, EV_READ);
}

static void linger_read(conn_t *c)
{
    char sink[4096];
    for (;;) {
        ssize_t n = read(c->io.fd, sink, sizeof(sink));
        if (n > 0 && (size_t)n < c->linger_left) {
            c->linger_left -= (size_t)n;
            continue;
        }
        if (n < 0 && errno == EAGAIN)
            return;
        conn_close(c, c->linger_why);
        return;
    }
}

/* ---- events ------------------------------------------------------------------------------- */

static void on_io(ev_loop_t *loop, ev_io_t *io, uint32_t revents)
{
    conn_t *c = (conn_t *)io;
    (void)loop;
    if (c->closed)
        return;
    switch (c->state) {
    case CONN_PROXY:
        proxy_header(c);
        return;
    case CONN_HANDSHAKE:
        handshake(c);
        return;
    case CONN_LINGER:
        linger_read(c);
        return;
    default:
        break;
    }
    if ((revents & EV_WRITE) && c->tls_want_write) {
        c->tls_want_write = false;
        on_readable(c);
        if (c->closed)
            return;
    }
    if (revents & EV_WRITE) {
        if (write_out(c) < 0)
            return;
        update_events(c);
        if (!conn_pending(c))
            c->ops->on_writable(c);
    }
    if (!c->closed && (revents & (EV_READ | EV_HUP | EV_ERROR)) && (c->io.events & EV_READ))
        on_readable(c);
}

static void on_timer(ev_loop_t *loop, ev_timer_t *t)
{
    conn_t *c = (conn_t *)((char *)t - offsetof(conn_t, timer));
    (void)loop;
    switch (c->state) {
    case CONN_PROXY:
        conn_close(c, CLOSE_HEADER_TIMEOUT);
        return;
    case CONN_HANDSHAKE:
        conn_close(c, CLOSE_TLS_TIMEOUT);
        return;
    case CONN_LINGER:
        conn_close(c, c->linger_why);
        return;
    default:
        c->ops->on_timeout(c);
        return;
    }
}

/* ---- the module ------------------------------------------------------------------------- */

static void on_accept(ev_loop_t *loop, ev_io_t *io, uint32_t revents)
{
    (void)loop;
    (void)revents;
    conn_accept((listener_t *)io);
}

static int conn_worker_init(void)
{
    for (int i = 0; i < W->nlisteners; i++) {
        listener_t *l = &W->listeners[i];
        if (ev_add_exclusive(W->loop, &l->io, l->fd, on_accept) < 0) {
            log_err("cannot watch listener on port %u: %s", l->port, strerror(errno));
            return -1;
        }
    }
    return 0;
}

static void conn_worker_idle(void)
{
    conn_run_deferred_reads();
    conn_free_deferred();
}

const module_t conn_module = {
    .name = "conn", .worker_init = conn_worker_init, .worker_idle = conn_worker_idle, .worker_drain = conn_drain_all};

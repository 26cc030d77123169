/*
 * conn.c - client connections: accept, read, parse, route, respond,
 * keep-alive and pipelining (see conn.h for the state machine).
 *
 * Invariants: a connection holds buffers only while bytes are in flight;
 * c->req exists from a parsed head until the response is complete; every
 * teardown goes through conn_close(c, reason) and the memory is freed after
 * the current batch of events (another event in the batch may still name
 * it).  Errors before the first response byte get a status; after it, the
 * connection is closed, because a half-sent response cannot be repaired.
 */
#include "conn/conn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../common/log.h"
#include "../common/route.h"
#include "http/accesslog.h"
#include "http/path.h"
#include "handlers/proxy.h"
#include "handlers/static.h"
#include "conn/tls.h"
#include "http/vars.h"

#define ACCEPT_BATCH 64

static void on_io(ev_loop_t *loop, ev_io_t *io, uint32_t revents);
static conn_t *all_conns;
static void on_timer(ev_loop_t *loop, ev_timer_t *t);
static void process(conn_t *c);
static void finish_request(conn_t *c);
static void request_release(request_t *r);
static void handshake(conn_t *c);
static void on_readable(conn_t *c);

const char *status_reason(int s)
{
    switch (s) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 410: return "Gone";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 416: return "Range Not Satisfiable";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return s < 200 ? "Informational" : s < 300 ? "OK" : s < 400 ? "Redirect" : s < 500 ? "Client Error" : "Server Error";
    }
}

/* ---- connection lifetime --------------------------------------------------- */

static void peer_from(conn_t *c, const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;
        c->peer_family = 4;
        memcpy(c->peer_ip, &s4->sin_addr, 4);
        c->peer_port = ntohs(s4->sin_port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
        c->peer_family = 6;
        memcpy(c->peer_ip, &s6->sin6_addr, 16);
        c->peer_port = ntohs(s6->sin6_port);
    }
}

void conn_accept(listener_t *l)
{
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int fd = accept4(l->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE)
                log_err("accept on port %u: %s", l->port, strerror(errno));
            return;
        }
        if (W->draining || W->conns >= W->table->t.global->max_connections) {
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        conn_t *c = calloc(1, sizeof(*c));
        if (c == NULL) {
            close(fd);
            return;
        }
        peer_from(c, &ss);
        c->local_port = l->port;
        c->io.fd = -1;
        if (l->kind == RT_LISTEN_HTTPS) {
            if ((c->ssl = tls_accept(W->table, fd)) == NULL) {
                close(fd);
                free(c);
                continue;
            }
            c->tls = true;
            c->state = CS_HANDSHAKE;
            c->hs_table = tref_get(W->table); /* a reload must not free what SNI looks at */
        }
        if (ev_add(W->loop, &c->io, fd, EV_READ, on_io) < 0) {
            close(fd);
            free(c);
            continue;
        }
        c->all_next = all_conns;
        if (all_conns)
            all_conns->all_prev = c;
        all_conns = c;
        W->conns++;
        W->stats->conns_active = W->conns;
        W->stats->conns_total++;
        ev_timer_start(W->loop, &c->timer, W->table->t.global->header_timeout_ms, on_timer);
        /* A client that connects and writes at once (most do) has its first
         * bytes here already: take them now, not after a trip through epoll.
         * (TCP_DEFER_ACCEPT would save more, but hides silent connections
         * from the header timeout.) */
        if (c->ssl)
            handshake(c);
        else
            on_readable(c);
    }
}

void conn_close(conn_t *c, const char *reason)
{
    if (c->closed)
        return;
    (void)reason;
    c->closed = true;
    if (c->req) {
        if (c->req->up)
            proxy_detach(c, false);
        if (c->req->status && !c->req->response_done)
            c->req->status = c->req->response_started ? c->req->status : 499;
        request_t *r = c->req;
        accesslog_request(c, r);
        request_release(r);
        c->req = NULL;
    }
    ev_timer_stop(W->loop, &c->timer);
    ev_close(W->loop, &c->io); /* close() below unregisters it: one system call less */
    tls_free(c->ssl);
    c->ssl = NULL;
    if (c->hs_table) {
        tref_put(c->hs_table);
        c->hs_table = NULL;
    }
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

/* Draining (stop or binary upgrade): a connection between requests gets a
 * short grace instead of an abrupt close, so a client that is sending its
 * next request right now is answered (with Connection: close) rather than
 * reset; connections that stay quiet are closed when it ends. */
#define DRAIN_IDLE_GRACE_MS 1000

void conn_drain_idle(void)
{
    for (conn_t *c = all_conns, *next; c; c = next) {
        next = c->all_next;
        if (c->state == CS_IDLE || (c->state == CS_HEAD && iobuf_len(c->in) == 0))
            ev_timer_start(W->loop, &c->timer, DRAIN_IDLE_GRACE_MS, on_timer);
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

#define DEFERRED_MAX 256
static conn_t *deferred_reads[DEFERRED_MAX];
static unsigned ndeferred;

static void update_events(conn_t *c)
{
    if (c->closed)
        return;
    uint32_t ev = 0;
    bool reading = c->state == CS_IDLE || c->state == CS_HEAD || c->state == CS_PROXY || c->state == CS_TUNNEL;
    if (reading && !c->read_paused)
        ev |= EV_READ;
    if (iobuf_len(c->out) || (c->req && c->req->static_left) || c->tls_want_write)
        ev |= EV_WRITE;
    ev_set(W->loop, &c->io, ev);
    /* Bytes TLS already holds (read ahead, or decrypted but not taken) make
     * the socket no more readable: take them after this loop turn. */
    if ((ev & EV_READ) && c->ssl && !c->read_deferred && ndeferred < DEFERRED_MAX && SSL_has_pending(c->ssl)) {
        c->read_deferred = true;
        deferred_reads[ndeferred++] = c;
    }
}

void conn_pause_read(conn_t *c, bool pause)
{
    c->read_paused = pause;
    update_events(c);
}

size_t conn_out_space(conn_t *c)
{
    if (c->out == NULL && (c->out = iobuf_get()) == NULL)
        return 0;
    if (iobuf_space(c->out) < IOBUF_SIZE / 4)
        iobuf_compact(c->out);
    return iobuf_space(c->out);
}

/* ---- output -------------------------------------------------------------------- */

static ssize_t c_write(conn_t *c, const void *p, size_t n);

/* TLS has no sendfile: stage file bytes through the output buffer. */
static int send_static_tls(conn_t *c)
{
    request_t *r = c->req;
    while (r->static_left && conn_out_space(c)) {
        size_t k = r->static_left < iobuf_space(c->out) ? (size_t)r->static_left : iobuf_space(c->out);
        ssize_t n = pread(r->static_fd, iobuf_wr(c->out), k, (off_t)r->static_off);
        if (n <= 0) {
            conn_close(c, "static file read failed");
            return -1;
        }
        c->out->end += (uint32_t)n;
        r->static_off += (uint64_t)n;
        r->static_left -= (uint64_t)n;
        ssize_t w = c_write(c, iobuf_rd(c->out), iobuf_len(c->out));
        if (w == -2) {
            conn_close(c, "client write failed");
            return -1;
        }
        if (w < 0)
            return 0; /* what is staged goes out with the next flush */
        iobuf_consume(c->out, (size_t)w);
        W->stats->bytes_out += (uint64_t)w;
        r->resp_bytes += (uint64_t)w;
        if (iobuf_len(c->out))
            return 0;
    }
    return 0;
}

static int send_static(conn_t *c)
{
    request_t *r = c->req;
    if (c->ssl)
        return send_static_tls(c);
    while (r->static_left) {
        off_t off = (off_t)r->static_off;
        size_t chunk = r->static_left > (1u << 20) ? (1u << 20) : (size_t)r->static_left;
        ssize_t n = sendfile(c->io.fd, r->static_fd, &off, chunk);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return 0;
        if (n <= 0) {
            conn_close(c, n == 0 ? "static file shrank while sending" : "sendfile failed");
            return -1;
        }
        r->static_off += (uint64_t)n;
        r->static_left -= (uint64_t)n;
        r->resp_bytes += (uint64_t)n;
        W->stats->bytes_out += (uint64_t)n;
    }
    return 0;
}

int conn_flush(conn_t *c)
{
    if (c->closed)
        return -1;
    while (iobuf_len(c->out)) {
        ssize_t n = c_write(c, iobuf_rd(c->out), iobuf_len(c->out));
        if (n == -1)
            break;
        if (n < 0) {
            conn_close(c, "client write failed");
            return -1;
        }
        iobuf_consume(c->out, (size_t)n);
        W->stats->bytes_out += (uint64_t)n;
        if (c->req)
            c->req->resp_bytes += (uint64_t)n;
    }
    if (iobuf_len(c->out) == 0) {
        iobuf_put(c->out);
        c->out = NULL;
        if (c->req && c->req->static_left && send_static(c) < 0)
            return -1;
    }
    update_events(c);
    return 0;
}

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

/* Append formatted bytes to c->out (response heads are small). */
void conn_printf(conn_t *c, const char *fmt, ...)
{
    if (conn_out_space(c) == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(iobuf_wr(c->out), iobuf_space(c->out), fmt, ap);
    va_end(ap);
    if (n > 0)
        c->out->end += (uint32_t)((size_t)n < iobuf_space(c->out) ? (size_t)n : iobuf_space(c->out));
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

/* Status line, Server, Date and the site's security headers. */
void conn_head_begin(conn_t *c, int status)
{
    request_t *r = c->req;
    char code[4] = {(char)('0' + status / 100 % 10), (char)('0' + status / 10 % 10), (char)('0' + status % 10), ' '};
    r->status = status;
    r->response_started = true;
    CONN_LIT(c, "HTTP/1.1 ");
    conn_write(c, code, 4);
    conn_write_str(c, status_reason(status));
    CONN_LIT(c, "\r\n");
    const rt_table_t *t = &r->table->t;
    if (r->route == RT_NONE || !vars_route_names(t, &t->routes[r->route], RT_HDR_RESPONSE, "Server", 6))
        CONN_LIT(c, "Server: proxyd\r\n");
    conn_write_str(c, worker_date());
    if (r->site == RT_NONE)
        return;
    const rt_site_t *s = &r->table->t.sites[r->site];
    if ((s->flags & RT_SF_HSTS) && c->tls) {
        CONN_LIT(c, "Strict-Transport-Security: max-age=");
        conn_write_u64(c, s->hsts_max_age);
        if (s->flags & RT_SF_HSTS_SUBDOMAINS)
            CONN_LIT(c, "; includeSubDomains");
        if (s->flags & RT_SF_HSTS_PRELOAD)
            CONN_LIT(c, "; preload");
        CONN_LIT(c, "\r\n");
    }
    if (s->security_headers >= RT_SECHDR_BASIC)
        CONN_LIT(c, "X-Content-Type-Options: nosniff\r\n");
    if (s->security_headers >= RT_SECHDR_STRICT)
        CONN_LIT(c, "X-Frame-Options: DENY\r\nReferrer-Policy: strict-origin-when-cross-origin\r\n");
}

static void head_end(conn_t *c)
{
    request_t *r = c->req;
    /* Answered without reading its body: the body would be parsed as the
     * next request (smuggling).  Close after the response instead. */
    if (W->draining || (!r->body_done && r->body_remain != 0))
        r->keep_alive = false;
    if (!c->req->keep_alive)
        CONN_LIT(c, "Connection: close\r\n");
    CONN_LIT(c, "\r\n");
}

static void respond(conn_t *c, int status, const char *ctype, const char *body, size_t blen, const char *extra)
{
    conn_head_begin(c, status);
    conn_printf(c, "Content-Type: %s\r\nContent-Length: %zu\r\n%s", ctype, blen, extra ? extra : "");
    head_end(c);
    if (!c->req->head)
        conn_write(c, body, blen);
    c->state = CS_RESPOND;
    conn_response_complete(c);
}

static void respond_status(conn_t *c, int status, const char *extra)
{
    char body[96];
    int n = snprintf(body, sizeof(body), "%d %s\n", status, status_reason(status));
    respond(c, status, "text/plain; charset=utf-8", body, (size_t)n, extra);
}

/* Requests are recycled through a small free list with their arena's
 * first chunk, so a typical request allocates nothing. */
#define REQ_KEEP 256
static request_t *req_free;
static unsigned nreq_free;

static void hex32(char *out, uint32_t v)
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 7; i >= 0; i--, v >>= 4)
        out[i] = digits[v & 15];
}

static void request_release(request_t *r)
{
    if (r->static_fd >= 0)
        close(r->static_fd);
    tref_put(r->table);
    if (nreq_free >= REQ_KEEP) {
        arena_free(&r->arena);
        free(r);
        return;
    }
    arena_reset(&r->arena);
    r->up = (upconn_t *)req_free; /* free-list link while unused */
    req_free = r;
    nreq_free++;
}

static request_t *request_new(conn_t *c)
{
    request_t *r = req_free;
    if (r) {
        req_free = (request_t *)r->up;
        nreq_free--;
        arena_t keep = r->arena;
        memset(r, 0, sizeof(*r));
        r->arena = keep;
    } else {
        if ((r = calloc(1, sizeof(*r))) == NULL)
            return NULL;
        arena_init(&r->arena, 1024);
    }
    r->table = tref_get(W->table);
    r->site = r->route = r->server = RT_NONE;
    r->static_fd = -1;
    r->started_ms = ev_now(W->loop);
    r->id = ++W->seq;
    hex32(r->request_id, W->pid_hash);
    hex32(r->request_id + 8, (uint32_t)r->id);
    c->req = r;
    return r;
}

void conn_error(conn_t *c, int status, const char *reason)
{
    if (c->closed)
        return;
    if (c->req == NULL && request_new(c) == NULL) {
        conn_close(c, "out of memory");
        return;
    }
    request_t *r = c->req;
    if (r->response_started) {
        /* Part of another response is out: the only honest end is a close. */
        if (reason)
            log_warn("%s: closing mid-response: %s", r->host ? r->host : "-", reason);
        r->status = status;
        conn_close(c, reason);
        return;
    }
    if (reason && status >= 500)
        log_err("%s %s: %d: %s", r->method ? r->method : "-", r->uri ? r->uri : "-", status, reason);
    if (r->up)
        proxy_detach(c, false);
    if (status >= 400 && (status != 404 && status != 403 && status != 405))
        r->keep_alive = false;
    if (!r->body_done && (r->body_remain != 0))
        r->keep_alive = false; /* unread request body: the stream is out of sync */
    respond_status(c, status, NULL);
}

void conn_response_complete(conn_t *c)
{
    c->req->response_done = true;
    if (conn_flush(c) < 0)
        return;
    if (iobuf_len(c->out) == 0 && c->req->static_left == 0)
        finish_request(c);
}

/* Close after a final response, politely: a client that is still sending
 * (a refused request's body, pipelined requests) would otherwise get an RST
 * that can destroy the response before it reads it (RFC 9112 §9.6). */
#define LINGER_MS 2000
#define LINGER_BYTES (256 * 1024)

static void linger(conn_t *c)
{
    if (c->ssl) {
        SSL_shutdown(c->ssl); /* close_notify before our half of the TCP close */
        tls_error();
    }
    if (shutdown(c->io.fd, SHUT_WR) < 0) {
        conn_close(c, "response complete");
        return;
    }
    c->state = CS_LINGER;
    c->read_paused = false;
    c->linger_left = LINGER_BYTES;
    ev_timer_start(W->loop, &c->timer, LINGER_MS, on_timer);
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
        conn_close(c, "response complete");
        return;
    }
}

static void finish_request(conn_t *c)
{
    request_t *r = c->req;
    bool keep = r->keep_alive && !W->draining && c->state != CS_TUNNEL;
    /* Linger only when the client may still be sending: an unread body, bytes
     * we hold, or a refused request.  A plain Connection: close just closes. */
    bool may_send = !r->body_done || iobuf_len(c->in) || r->status >= 400;
    if (r->up)
        proxy_detach(c, true);
    worker_count_status(r->site, r->status);
    accesslog_request(c, r);
    request_release(r);
    c->req = NULL;
    if (!keep) {
        if (may_send)
            linger(c);
        else
            conn_close(c, "response complete");
        return;
    }
    c->state = CS_IDLE;
    c->read_paused = false;
    ev_timer_start(W->loop, &c->timer, W->table->t.global->keepalive_timeout_ms, on_timer);
    if (iobuf_len(c->in)) {
        process(c); /* a pipelined request is waiting */
        return;
    }
    iobuf_put(c->in); /* an idle connection holds no buffer */
    c->in = NULL;
    update_events(c);
}

/* ---- request dispatch -------------------------------------------------------- */

static char *slice_dup(request_t *r, h1_slice_t s)
{
    return s.p ? arena_strndup(&r->arena, s.p, s.n) : NULL;
}

static bool allowed(const conn_t *c, const rt_table_t *t, const rt_policy_t *p)
{
    if (p->allow.count == 0)
        return true;
    for (uint32_t i = 0; i < p->allow.count; i++)
        if (cidr_contains(&t->cidrs[p->allow.first + i], c->peer_family, c->peer_ip))
            return true;
    return false;
}

static void allow_header(uint32_t mask, char *out, size_t cap)
{
    size_t o = (size_t)snprintf(out, cap, "Allow: ");
    for (unsigned i = 0, first = 1; i < RT_M_COUNT; i++)
        if (mask & (1u << i)) {
            o += (size_t)snprintf(out + o, cap - o, "%s%s", first ? "" : ", ", rt_method_name(i));
            first = 0;
        }
    snprintf(out + o, cap - o, "\r\n");
}

static void redirect_to(conn_t *c, int status, const char *scheme_host, const char *target)
{
    request_t *r = c->req;
    char *loc = arena_printf(&r->arena, "Location: %s%s\r\n", scheme_host ? scheme_host : "", target);
    char body[64];
    int n = snprintf(body, sizeof(body), "%d %s\n", status, status_reason(status));
    respond(c, status, "text/plain; charset=utf-8", body, (size_t)n, loc);
}

static void serve_static(conn_t *c, const h1_request_t *h, const rt_route_t *rt)
{
    request_t *r = c->req;
    static_result_t sr;
    size_t skip = (rt->flags & RT_RF_STRIP_PREFIX) && rt->match == RT_MATCH_PREFIX ? rt->path.len : 0;
    if (skip && rt_cstr(&r->table->t, rt->path)[skip - 1] == '/')
        skip--; /* keep the leading slash of the remainder */
    static_req_t sq = {
        .path = {r->path, r->path_len},
        .strip = skip,
        .index = rt->extra.len ? rt_cstr(&r->table->t, rt->extra) : NULL,
        .method = (h1_method_t)r->method_id,
        .headers = h->headers,
        .nheaders = h->nheaders,
        .expires_s = rt->expires_s,
    };
    int root = r->table->root_fd[r->route];
    if (root < 0) {
        log_err("site %s: static root %s cannot be opened", rt_cstr(&r->table->t, r->table->t.sites[r->site].name),
                rt_cstr(&r->table->t, rt->target));
        conn_error(c, 404, NULL);
        return;
    }
    if (static_serve(root, &sq, &sr) < 0) {
        log_err("static %s: %s", r->path, strerror(errno));
        conn_error(c, 500, NULL);
        return;
    }
    if (sr.status == 301) {
        redirect_to(c, 301, NULL, arena_printf(&r->arena, "%s/", r->path));
        return;
    }
    if (sr.status != 200 && sr.status != 206 && sr.status != 304) {
        char extra[128] = "";
        if (sr.status == 416)
            snprintf(extra, sizeof(extra), "Content-Range: %s\r\n", sr.content_range);
        if (sr.status == 405)
            snprintf(extra, sizeof(extra), "Allow: %s\r\n", STATIC_ALLOW);
        respond_status(c, sr.status, extra);
        return;
    }
    conn_head_begin(c, sr.status);
    conn_printf(c, "Last-Modified: %s\r\nETag: %s\r\nAccept-Ranges: bytes\r\n", sr.last_modified, sr.etag);
    if (rt->expires_s)
        conn_printf(c, "Cache-Control: max-age=%u\r\n", rt->expires_s);
    if (sr.status == 304) {
        head_end(c);
    } else {
        conn_printf(c, "Content-Type: %s\r\nContent-Length: %llu\r\n", sr.content_type, (unsigned long long)sr.length);
        if (sr.status == 206)
            conn_printf(c, "Content-Range: %s\r\n", sr.content_range);
        head_end(c);
        if (!r->head) {
            r->static_fd = sr.fd;
            r->static_off = sr.offset;
            r->static_left = sr.length;
        } else {
            close(sr.fd);
        }
    }
    c->state = CS_RESPOND;
    conn_response_complete(c);
}

static void do_return(conn_t *c, const rt_route_t *rt)
{
    const rt_table_t *t = &c->req->table->t;
    const char *ctype = rt->extra.len ? rt_cstr(t, rt->extra) : "text/plain; charset=utf-8";
    if (rt->target.len == 0 && rt->status >= 400) {
        respond_status(c, rt->status, NULL);
        return;
    }
    respond(c, rt->status, ctype, rt_cstr(t, rt->target), rt->target.len, NULL);
}

static void act(conn_t *c, const h1_request_t *h, const rt_route_t *rt)
{
    request_t *r = c->req;
    const rt_table_t *t = &r->table->t;
    const rt_policy_t *p = &t->policies[rt->policy];
    if (!allowed(c, t, p)) {
        conn_error(c, 403, NULL);
        return;
    }
    r->max_body = p->max_body;
    if (p->max_body && h->content_length > 0 && (uint64_t)h->content_length > p->max_body) {
        conn_error(c, 413, NULL);
        return;
    }
    switch (rt->action) {
    case RT_ACT_RETURN:
        do_return(c, rt);
        return;
    case RT_ACT_REDIRECT: {
        char to[2048];
        if (vars_expand(c, rt_cstr(t, rt->target), to, sizeof(to)) >= sizeof(to)) {
            conn_error(c, 500, "redirect target too long after expansion");
            return;
        }
        redirect_to(c, rt->status, NULL, to);
        return;
    }
    case RT_ACT_STATIC:
        serve_static(c, h, rt);
        return;
    case RT_ACT_UPSTREAM:
        c->state = CS_PROXY;
        proxy_start(c, h);
        return;
    }
}

static void copy_request(conn_t *c, const h1_request_t *h)
{
    request_t *r = c->req;
    r->method_id = (uint8_t)h->method_id;
    r->method = slice_dup(r, h->method);
    r->host = h->host.p ? slice_dup(r, h->host) : arena_strdup(&r->arena, ""); /* HTTP/1.0 may omit Host */
    r->uri = slice_dup(r, h->target);
    if (accesslog_on()) { /* only the access log reads them */
        const h1_header_t *ua = h1_find_header(h->headers, h->nheaders, H1_HDR_USER_AGENT);
        const h1_header_t *ref = h1_find_header(h->headers, h->nheaders, H1_HDR_REFERER);
        r->user_agent = ua ? slice_dup(r, ua->value) : NULL;
        r->referer = ref ? slice_dup(r, ref->value) : NULL;
    }
    r->head = h->method_id == H1_METHOD_HEAD;
    r->keep_alive = h->keep_alive && !W->draining;
    r->expect_continue = h->expect_continue;
    r->upgrade = h->upgrade;
    r->http10 = h->minor == 0;
    r->body_remain = h->chunked ? -1 : h->content_length > 0 ? h->content_length : 0;
    r->body_done = r->body_remain == 0;
    if (h->chunked)
        h1_chunked_init(&r->body_chunks);
}

/* ACME HTTP-01 (RFC 8555 §8.3): proxyctl renew-cert publishes tokens in the
 * store; any host on a plain listener gets the key authorization.  Returns
 * false when the path is not a token we hold, so routing proceeds. */
#define ACME_PREFIX "/.well-known/acme-challenge/"

static bool acme_challenge(conn_t *c)
{
    request_t *r = c->req;
    const char *token = r->path + sizeof(ACME_PREFIX) - 1;
    size_t n = strlen(token);
    if (c->tls || n == 0 || n > 128 || strspn(token, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-") != n)
        return false;
    if (W->challenges.db == NULL && store_open(&W->challenges, W->db, STORE_RDONLY) < 0) {
        log_err("acme challenge %s: %s", token, W->challenges.err);
        return false;
    }
    sqlite3_stmt *q = store_prepare(&W->challenges, "SELECT key_authorization FROM acme_challenges "
                                                    "WHERE token = ? AND expires > strftime('%s','now')");
    if (q == NULL)
        return false;
    sqlite3_bind_text(q, 1, token, (int)n, SQLITE_STATIC);
    bool found = sqlite3_step(q) == SQLITE_ROW;
    if (found) {
        const char *ka = (const char *)sqlite3_column_text(q, 0);
        respond(c, 200, "application/octet-stream", ka, strlen(ka), NULL);
    }
    sqlite3_finalize(q);
    return found;
}

/* redirect_http: the same host without its port (an IPv6 literal keeps its
 * brackets) and the same path and query, over https. */
static void redirect_https(conn_t *c, const h1_request_t *h)
{
    request_t *r = c->req;
    size_t hn = r->host[0] == '[' ? strcspn(r->host, "]") + 1 : strcspn(r->host, ":");
    if (hn == 0 || hn > strlen(r->host)) {
        conn_error(c, 400, NULL); /* no host to redirect to */
        return;
    }
    char *to = h->form == H1_FORM_ABSOLUTE
                   ? arena_printf(&r->arena, "https://%.*s%.*s%s%.*s", (int)hn, r->host, (int)h->path.n, h->path.p,
                                  h->query.p ? "?" : "", (int)h->query.n, h->query.p ? h->query.p : "")
                   : arena_printf(&r->arena, "https://%.*s%s", (int)hn, r->host, r->uri);
    redirect_to(c, 301, NULL, to);
}

static void dispatch(conn_t *c, const h1_request_t *h)
{
    request_t *r = c->req;
    const rt_table_t *t = &r->table->t;
    copy_request(c, h);
    if (h->form == H1_FORM_AUTHORITY || h->form == H1_FORM_ASTERISK) {
        conn_error(c, h->form == H1_FORM_AUTHORITY ? 405 : 404, NULL);
        return;
    }
    const char *why;
    r->path = arena_alloc(&r->arena, h->path.n + 1);
    long pn = path_normalize(h->path.p, h->path.n, r->path, h->path.n + 1, &why);
    if (pn < 0) {
        conn_error(c, 400, NULL);
        return;
    }
    r->path[pn] = '\0';
    r->path_len = (size_t)pn;
    if (strncmp(r->path, ACME_PREFIX, sizeof(ACME_PREFIX) - 1) == 0 && acme_challenge(c))
        return;
    r->site = route_site(t, r->host, strlen(r->host));
    if (r->site == RT_NONE) {
        conn_error(c, 404, NULL);
        return;
    }
    const rt_site_t *s = &t->sites[r->site];
    if ((s->flags & RT_SF_REDIRECT_HTTP) && !c->tls && strncmp(r->path, "/.well-known/acme-challenge/", 28) != 0) {
        redirect_https(c, h);
        return;
    }
    route_result_t res;
    route_match(t, r->site, h->method.p, h->method.n, r->path, r->path_len, tref_regex, r->table, &res);
    if (res.status) {
        char allow[160] = "";
        if (res.status == 405)
            allow_header(res.allow, allow, sizeof(allow));
        if (res.status == 405)
            respond_status(c, 405, allow);
        else
            conn_error(c, res.status, NULL);
        return;
    }
    r->route = res.route;
    act(c, h, &t->routes[res.route]);
}

/* ---- input ------------------------------------------------------------------------ */

static size_t head_limit(void)
{
    size_t lim = W->table->t.global->max_header_size;
    /* One byte short of the buffer, so a head that fills it is refused (431), never stuck. */
    return lim > IOBUF_SIZE - 1 ? IOBUF_SIZE - 1 : lim;
}

/* Parse and dispatch every complete request head in c->in, one at a time. */
static void process(conn_t *c)
{
    while (!c->closed && (c->state == CS_IDLE || c->state == CS_HEAD)) {
        if (iobuf_len(c->in) == 0) {
            iobuf_put(c->in);
            c->in = NULL;
            update_events(c);
            return;
        }
        if (c->state == CS_IDLE) {
            c->state = CS_HEAD;
            ev_timer_start(W->loop, &c->timer, W->table->t.global->header_timeout_ms, on_timer);
        }
        const rt_global_t *g = W->table->t.global;
        h1_limits_t lim = {head_limit(), g->max_uri_size, 100};
        int n = h1_parse_request(iobuf_rd(c->in), iobuf_len(c->in), W->hreq, &lim);
        if (n == 0) {
            update_events(c);
            return;
        }
        if (request_new(c) == NULL) {
            conn_close(c, "out of memory");
            return;
        }
        W->stats->requests_total++;
        if (n < 0) {
            c->req->keep_alive = false;
            conn_error(c, W->hreq->status, W->hreq->error);
            return;
        }
        c->state = CS_RESPOND;
        ev_timer_stop(W->loop, &c->timer);
        /* Slices in hreq point into c->in; consume first, nothing moves the bytes. */
        iobuf_consume(c->in, (size_t)n);
        dispatch(c, W->hreq);
    }
}

/* Read what the socket has into c->in: >0 bytes, 0 EOF, -1 nothing now, -2 error. */
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
    if (n == 0 || n == -2) {
        if (c->state == CS_PROXY || c->state == CS_TUNNEL) {
            proxy_client_input(c); /* let the proxy see EOF on a half-closed client */
            if (!c->closed && (c->state == CS_TUNNEL || !c->req->body_done))
                conn_close(c, n == 0 ? "client closed" : "client read error");
            else if (!c->closed)
                c->read_paused = true, update_events(c);
            return;
        }
        conn_close(c, n == 0 ? "client closed" : "client read error");
        return;
    }
    if (n == -1 && iobuf_space(c->in) == 0 && c->state == CS_PROXY) {
        conn_pause_read(c, true); /* the upstream has not taken what we hold */
        return;
    }
    if (c->state == CS_PROXY || c->state == CS_TUNNEL)
        proxy_client_input(c);
    else
        process(c);
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
        conn_close(c, "TLS handshake failed");
        return;
    }
    tref_put(c->hs_table);
    c->hs_table = NULL;
    c->state = CS_IDLE;
    update_events(c);
    on_readable(c); /* the first request may have arrived with the handshake */
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
        if (!c->closed && !c->read_paused)
            on_readable(c);
    }
}

static void on_io(ev_loop_t *loop, ev_io_t *io, uint32_t revents)
{
    conn_t *c = (conn_t *)io;
    (void)loop;
    if (c->closed)
        return;
    if (c->state == CS_HANDSHAKE) {
        handshake(c);
        return;
    }
    if ((revents & EV_WRITE) && c->tls_want_write) {
        c->tls_want_write = false;
        on_readable(c);
        if (c->closed)
            return;
    }
    if (revents & EV_WRITE) {
        if (conn_flush(c) < 0)
            return;
        if (c->req && iobuf_len(c->out) == 0 && c->req->static_left == 0) {
            if (c->req->response_done && c->state != CS_TUNNEL)
                finish_request(c);
            else if (c->state == CS_PROXY || c->state == CS_TUNNEL)
                proxy_client_drained(c);
        }
    }
    if (!c->closed && (revents & (EV_READ | EV_HUP | EV_ERROR)) && (c->io.events & EV_READ))
        c->state == CS_LINGER ? linger_read(c) : on_readable(c);
}

static void on_timer(ev_loop_t *loop, ev_timer_t *t)
{
    conn_t *c = (conn_t *)((char *)t - offsetof(conn_t, timer));
    (void)loop;
    switch (c->state) {
    case CS_HEAD:
        if (iobuf_len(c->in)) {
            conn_error(c, 408, NULL);
            if (c->req)
                c->req->keep_alive = false;
            return;
        }
        conn_close(c, "header timeout");
        return;
    case CS_IDLE:
        conn_close(c, "keep-alive timeout");
        return;
    case CS_LINGER:
        conn_close(c, "response complete");
        return;
    case CS_HANDSHAKE:
        conn_close(c, "TLS handshake timeout");
        return;
    case CS_PROXY:
        if (c->req && !c->req->body_done) {
            conn_error(c, 408, "client body timeout");
            return;
        }
        conn_close(c, "timeout");
        return;
    default:
        conn_close(c, "send timeout");
        return;
    }
}

void conn_arm_body_timer(conn_t *c)
{
    ev_timer_start(W->loop, &c->timer, W->table->t.global->body_timeout_ms, on_timer);
}

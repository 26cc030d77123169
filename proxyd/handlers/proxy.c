/*
 * proxy.c - upstream connections (see proxy.h).
 *
 * Data flow of one proxied request, every hop bounded by one iobuf:
 *
 *   client --c->in--> [request body decode/re-frame] --up->out--> upstream
 *   client <--c->out-- [response body decode/re-frame] <--up->in-- upstream
 *
 * When the next buffer is full the side feeding it stops reading until the
 * buffer drains (backpressure), so memory per request is four buffers
 * whatever the body size.  Bodies are re-framed, never passed through
 * blindly: the request body is decoded by our parser and written with our
 * own framing, so a smuggled second request cannot ride along.
 *
 * Server choice, failures and retries.  Every attempt goes to the server
 * balance_pick() chooses, leaving out those this request already tried.  An
 * attempt that fails before any response byte reached the client counts
 * against its server (passive health, health.h) and, when the route's
 * retry.on lists the failure (error, timeout, or the response status) and
 * tries are left, the request moves to another server of the pool:
 *   - nothing was written to the failed server yet: its buffer (the head
 *     and the body read so far) moves over as it is, whatever the method;
 *   - bytes were written: only idempotent methods (GET HEAD PUT DELETE
 *     OPTIONS TRACE) are replayed, from r->replay, a copy of everything
 *     sent so far; it holds REPLAY_MAX bytes, so a body that has streamed
 *     beyond that (we never buffer a whole body) cannot be replayed.
 * tries counts attempts (1: no retry).  When no other server is up, a
 * failed status is relayed as the upstream gave it.  A connection taken from
 * the keep-alive pool may have been closed by the upstream just before we
 * wrote to it: a request that got no response byte is replayed once on a
 * fresh connection to the same server, which counts neither as a try nor
 * as a failure (RFC 9110 §9.2.2; non-idempotent only when bodiless).
 */
#include "handlers/proxy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "../common/log.h"
#include "upstream/balance.h"
#include "upstream/health.h"
#include "http/path.h"
#include "conn/tls.h"
#include "http/vars.h"

enum up_state { US_CONNECTING, US_HANDSHAKE, US_ACTIVE, US_IDLE };

#define POOL_BUCKETS 256
#define TUNNEL_TIMEOUT_MS 3600000
#define REPLAY_MAX IOBUF_SIZE /* request bytes kept for a replay on another server */

struct upconn {
    ev_io_t io;
    ev_timer_t timer;
    iobuf_t *in, *out;
    conn_t *client;
    upconn_t *next;             /* its pool's idle list or the deferred-free list */
    struct upool *pool;         /* the keep-alive pool it belongs to (one reference) */
    uint8_t state;
    bool closed, reused, head_done, read_paused, got_bytes;
    uint8_t body;               /* h1_body_t of the response */
    uint32_t server;            /* index in the client's table */
    uint32_t keepalive;         /* pool limit of its upstream */
    health_slot_t *slot;        /* the server's shared state, while counted */
    bool counted;               /* counted in the server's requests in flight */
    uint8_t tries;              /* attempts of this request so far, this one included */
    uint64_t tried;             /* pool positions (bit pos % 64) this request tried */
    uint64_t sent;              /* bytes of this request written to the server */
    h1_chunked_t chunks;        /* response body decoder */
    SSL *ssl;                   /* https upstreams */
};

/*
 * A keep-alive pool: the idle connections to one address (with, for TLS, one
 * upstream TLS identity), shared by every table that names it, so a reload
 * keeps them.  A table caches its servers' pools on first use (tref_t.upool);
 * a pool lives while a table caches it or a connection belongs to it.
 */
typedef struct upool {
    struct upool *next;         /* hash chain */
    upconn_t *idle;             /* most recently used first */
    unsigned nidle;
    unsigned refs;              /* caching tables + connections */
    uint32_t hash;
    char key[];                 /* [tls:SNI@]server address[=resolved address] */
} upool_t;

static upool_t *pools[POOL_BUCKETS];

static void up_io(ev_loop_t *loop, ev_io_t *io, uint32_t revents);
static void up_timer(ev_loop_t *loop, ev_timer_t *t);
static void up_close(upconn_t *u);
static void relay_response(upconn_t *u);
static void up_failed(upconn_t *u, unsigned cond, int status, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* ---- naming things in the error log ------------------------------------------ */

static const char *site_name(const request_t *r)
{
    return r->site == RT_NONE ? "-" : rt_cstr(&r->table->t, r->table->t.sites[r->site].name);
}

static void fail(conn_t *c, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void fail(conn_t *c, int status, const char *fmt, ...)
{
    request_t *r = c->req;
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    const char *addr = r->server != RT_NONE ? rt_cstr(&r->table->t, r->table->t.servers[r->server].sa.addr) : "-";
    log_err("upstream %s (site %s): %s", addr, site_name(r), msg);
    conn_error(c, status, NULL);
}

/* ---- the keep-alive pool --------------------------------------------------------- */

static void pool_unref(upool_t *p)
{
    if (p == NULL || --p->refs > 0)
        return;
    for (upool_t **pp = &pools[p->hash & (POOL_BUCKETS - 1)]; *pp; pp = &(*pp)->next)
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    free(p);
}

static upconn_t *pool_take(upool_t *p)
{
    upconn_t *u = p->idle;
    if (u == NULL)
        return NULL;
    p->idle = u->next;
    p->nidle--;
    u->next = NULL;
    u->reused = true;
    return u;
}

static void pool_put(upconn_t *u)
{
    upool_t *p = u->pool;
    if (W->draining || p->nidle >= u->keepalive) {
        up_close(u);
        return;
    }
    iobuf_put(u->in);
    iobuf_put(u->out);
    u->in = u->out = NULL;
    u->client = NULL;
    u->state = US_IDLE;
    u->head_done = u->got_bytes = u->read_paused = false;
    ev_set(W->loop, &u->io, EV_READ); /* an idle upstream speaking means it is closing */
    ev_timer_start(W->loop, &u->timer, W->table->t.global->keepalive_timeout_ms, up_timer);
    u->next = p->idle;
    p->idle = u;
    p->nidle++;
}

static void pool_remove(upconn_t *u)
{
    for (upconn_t **pp = &u->pool->idle; *pp; pp = &(*pp)->next)
        if (*pp == u) {
            *pp = u->next;
            u->next = NULL;
            u->pool->nidle--;
            return;
        }
}

void proxy_pool_close_all(void)
{
    for (int b = 0; b < POOL_BUCKETS; b++)
        for (upool_t *p = pools[b]; p; p = p->next)
            while (p->idle) /* the pool outlives them: they are freed later (proxy_free_deferred) */
                up_close(p->idle);
}

/* The attempt no longer occupies its server. */
static void unclaim(upconn_t *u)
{
    if (u->counted)
        health_end(u->slot);
    u->counted = false;
}

static void up_close(upconn_t *u)
{
    if (u->closed)
        return;
    u->closed = true;
    unclaim(u);
    if (u->state == US_IDLE)
        pool_remove(u);
    ev_timer_stop(W->loop, &u->timer);
    ev_close(W->loop, &u->io); /* close() below unregisters it */
    tls_free(u->ssl);
    u->ssl = NULL;
    close(u->io.fd);
    iobuf_put(u->in);
    iobuf_put(u->out);
    u->in = u->out = NULL;
    u->next = W->up_closed;
    W->up_closed = u;
}

void proxy_free_deferred(void)
{
    while (W->up_closed) {
        upconn_t *u = W->up_closed;
        W->up_closed = u->next;
        pool_unref(u->pool);
        free(u);
    }
}

/* ---- connect ----------------------------------------------------------------------- */

/* Connections are pooled per address and, for TLS, per upstream TLS identity.
 * The pool of a table's server, found or made on first use and then cached
 * in the table; NULL when out of memory. */
static upool_t *pool_of(tref_t *tr, uint32_t server)
{
    if (tr->upool && tr->upool[server])
        return tr->upool[server];
    if (tr->upool == NULL && (tr->upool = calloc(tr->t.nservers, sizeof(*tr->upool))) == NULL)
        return NULL;
    const rt_table_t *t = &tr->t;
    const rt_server_t *sv = &t->servers[server];
    const rt_upstream_t *u = &t->upstreams[sv->upstream];
    char ip[INET6_ADDRSTRLEN + 1] = "", key[1024];
    if (sv->sa.kind == RT_ADDR_NAME && tr->resolved && tr->resolved[server].ss_family) {
        /* A name is pooled with what it resolved to: a reload may resolve it elsewhere. */
        const struct sockaddr_storage *ss = &tr->resolved[server];
        const void *a = ss->ss_family == AF_INET ? (const void *)&((const struct sockaddr_in *)ss)->sin_addr
                                                 : (const void *)&((const struct sockaddr_in6 *)ss)->sin6_addr;
        ip[0] = '=';
        inet_ntop(ss->ss_family, a, ip + 1, sizeof(ip) - 1);
    }
    int n = u->tls_flags & RT_UTLS_ON
                ? snprintf(key, sizeof(key), "tls:%s@%s%s", rt_cstr(t, u->tls_sni), rt_cstr(t, sv->sa.addr), ip)
                : snprintf(key, sizeof(key), "%s%s", rt_cstr(t, sv->sa.addr), ip);
    size_t len = n < 0 ? 0 : (size_t)n < sizeof(key) ? (size_t)n : sizeof(key) - 1;
    uint32_t h = rt_hash(key, len);
    upool_t *p = pools[h & (POOL_BUCKETS - 1)];
    while (p && (p->hash != h || strcmp(p->key, key) != 0))
        p = p->next;
    if (p == NULL) {
        if ((p = calloc(1, sizeof(*p) + len + 1)) == NULL)
            return NULL;
        memcpy(p->key, key, len);
        p->hash = h;
        p->next = pools[h & (POOL_BUCKETS - 1)];
        pools[h & (POOL_BUCKETS - 1)] = p;
    }
    p->refs++;
    tr->upool[server] = p;
    return p;
}

void proxy_table_release(tref_t *tr)
{
    for (uint32_t i = 0; tr->upool && i < tr->t.nservers; i++)
        pool_unref(tr->upool[i]);
    free(tr->upool);
    tr->upool = NULL;
}

static upconn_t *up_connect(conn_t *c, uint32_t server, upool_t *p, const char **why)
{
    request_t *r = c->req;
    struct sockaddr_storage ss;
    socklen_t sl;
    if (p == NULL) {
        *why = "out of memory";
        return NULL;
    }
    if (tref_sockaddr(r->table, server, &ss, &sl, why) < 0)
        return NULL;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *why = strerror(errno);
        return NULL;
    }
    if (ss.ss_family != AF_UNIX) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    if (connect(fd, (const struct sockaddr *)&ss, sl) < 0 && errno != EINPROGRESS) {
        *why = errno == ECONNREFUSED ? "connection refused" : strerror(errno);
        close(fd);
        return NULL;
    }
    upconn_t *u = calloc(1, sizeof(*u));
    if (u == NULL || ev_add(W->loop, &u->io, fd, EV_WRITE, up_io) < 0) {
        *why = "out of memory";
        free(u);
        close(fd);
        return NULL;
    }
    u->state = US_CONNECTING;
    u->pool = p;
    p->refs++;
    return u;
}

/* ---- the upstream request head ------------------------------------------------------ */

typedef struct {
    char *p;
    size_t n, cap;
    bool overflow;
} hbuf_t;

static void hb_add(hbuf_t *b, const char *s, size_t n)
{
    if (b->n + n > b->cap) {
        b->overflow = true;
        return;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}

static void hb_str(hbuf_t *b, const char *s) { hb_add(b, s, strlen(s)); }

static void hb_header(hbuf_t *b, const char *name, const char *v, size_t vn)
{
    hb_str(b, name);
    hb_add(b, ": ", 2);
    hb_add(b, v, vn);
    hb_add(b, "\r\n", 2);
}

static bool peer_trusted(const conn_t *c, const rt_table_t *t)
{
    const rt_span_t tp = t->global->trusted_proxies;
    for (uint32_t i = 0; i < tp.count; i++)
        if (cidr_contains(&t->cidrs[tp.first + i], c->peer_family, c->peer_ip))
            return true;
    return false;
}

/* Append a template with its variables expanded. */
static void hb_expand(hbuf_t *b, const conn_t *c, const char *tmpl)
{
    char val[2048];
    size_t n = vars_expand(c, tmpl, val, sizeof(val));
    if (n >= sizeof(val))
        b->overflow = true;
    else
        hb_add(b, val, n);
}

static void forwarded_headers(hbuf_t *b, const conn_t *c, const h1_request_t *h, const rt_table_t *t)
{
    const request_t *r = c->req;
    bool trusted = peer_trusted(c, t);
    char peer[VARS_PEER_MAX], port[24];
    size_t peer_len = vars_peer(c, peer);
    size_t port_len = fmt_u64(port, c->local_port);
    h1_slice_t xri = {NULL, 0}, xfp = {NULL, 0}, xfh = {NULL, 0}, xfport = {NULL, 0};
    for (size_t i = 0; trusted && i < h->nheaders; i++) {
        const h1_header_t *x = &h->headers[i];
        switch (x->id) {
        case H1_HDR_X_REAL_IP: xri = x->value; break;
        case H1_HDR_X_FORWARDED_PROTO: xfp = x->value; break;
        case H1_HDR_X_FORWARDED_HOST: xfh = x->value; break;
        case H1_HDR_X_FORWARDED_PORT: xfport = x->value; break;
        default: break; /* X-Forwarded-For is joined below: several fields are one list (RFC 9110 §5.3) */
        }
    }
    hb_str(b, "X-Forwarded-For: ");
    for (size_t i = 0; trusted && i < h->nheaders; i++)
        if (h->headers[i].id == H1_HDR_X_FORWARDED_FOR && h->headers[i].value.n) {
            hb_add(b, h->headers[i].value.p, h->headers[i].value.n);
            hb_str(b, ", ");
        }
    hb_add(b, peer, peer_len);
    hb_add(b, "\r\n", 2);
    hb_header(b, "X-Real-IP", xri.n ? xri.p : peer, xri.n ? xri.n : peer_len);
    const char *scheme = c->tls ? "https" : "http";
    hb_header(b, "X-Forwarded-Proto", xfp.n ? xfp.p : scheme, xfp.n ? xfp.n : strlen(scheme));
    hb_header(b, "X-Forwarded-Host", xfh.n ? xfh.p : r->host, xfh.n ? xfh.n : strlen(r->host));
    hb_header(b, "X-Forwarded-Port", xfport.n ? xfport.p : port, xfport.n ? xfport.n : port_len);
}

static bool skip_request_header(const h1_header_t *x)
{
    if (x->hop)
        return true;
    switch (x->id) {
    case H1_HDR_HOST: case H1_HDR_CONTENT_LENGTH: case H1_HDR_TRANSFER_ENCODING: case H1_HDR_EXPECT:
    case H1_HDR_X_FORWARDED_FOR: case H1_HDR_X_REAL_IP: case H1_HDR_X_FORWARDED_PROTO:
    case H1_HDR_X_FORWARDED_HOST: case H1_HDR_X_FORWARDED_PORT:
        return true; /* written by build_head() itself */
    default:
        return false;
    }
}

static void request_line(hbuf_t *b, const conn_t *c, const h1_request_t *h, const rt_route_t *rt)
{
    const request_t *r = c->req;
    const char *p = r->path;
    size_t n = r->path_len;
    if ((rt->flags & RT_RF_STRIP_PREFIX) && rt->match == RT_MATCH_PREFIX) {
        size_t skip = rt->path.len;
        if (skip && rt_cstr(&r->table->t, rt->path)[skip - 1] == '/')
            skip--; /* "/api/" strips to "/users", keeping the slash */
        p += skip;
        n -= skip;
    }
    char enc[3 * 8192 + 4];
    size_t en = n ? path_encode(p, n > 8192 ? 8192 : n, enc) : 0;
    hb_add(b, h->method.p, h->method.n);
    hb_add(b, " ", 1);
    if (en == 0 || enc[0] != '/')
        hb_add(b, "/", 1);
    hb_add(b, enc, en);
    if (h->query.p) {
        hb_add(b, "?", 1);
        hb_add(b, h->query.p, h->query.n);
    }
    hb_str(b, " HTTP/1.1\r\n");
}

static int build_head(conn_t *c, const h1_request_t *h, iobuf_t *out)
{
    request_t *r = c->req;
    const rt_table_t *t = &r->table->t;
    const rt_route_t *rt = &t->routes[r->route];
    hbuf_t b = {iobuf_wr(out), 0, iobuf_space(out), false};
    request_line(&b, c, h, rt);
    h1_slice_t host_name = {"Host", 4};
    if (!vars_route_names(t, rt, RT_HDR_REQUEST, host_name.p, host_name.n)) /* headers: {request: {set: {Host: ...}}} replaces it */
        hb_header(&b, "Host", r->host, strlen(r->host));
    for (size_t i = 0; i < h->nheaders; i++) {
        const h1_header_t *x = &h->headers[i];
        if (skip_request_header(x) || vars_route_names(t, rt, RT_HDR_REQUEST, x->name.p, x->name.n))
            continue;
        hb_add(&b, x->name.p, x->name.n);
        hb_add(&b, ": ", 2);
        hb_add(&b, x->value.p, x->value.n);
        hb_add(&b, "\r\n", 2);
    }
    forwarded_headers(&b, c, h, t);
    for (uint32_t i = 0; i < rt->header_ops.count; i++) {
        const rt_header_op_t *o = &t->hdrops[rt->header_ops.first + i];
        if (o->dir != RT_HDR_REQUEST || o->op != RT_HDR_SET)
            continue;
        hb_str(&b, rt_cstr(t, o->name));
        hb_str(&b, ": ");
        hb_expand(&b, c, rt_cstr(t, o->value));
        hb_str(&b, "\r\n");
    }
    if (r->body_remain > 0) {
        char num[24];
        size_t nl = fmt_u64(num, (uint64_t)r->body_remain);
        hb_header(&b, "Content-Length", num, nl);
    } else if (r->body_remain < 0) {
        hb_str(&b, "Transfer-Encoding: chunked\r\n");
    } else if (h->content_length == 0) {
        hb_str(&b, "Content-Length: 0\r\n"); /* some upstreams answer 411 without it */
    }
    if (r->websocket_ok) {
        hb_str(&b, "Connection: upgrade\r\nUpgrade: ");
        hb_add(&b, h->upgrade_proto.p, h->upgrade_proto.n);
        hb_str(&b, "\r\n");
    }
    hb_str(&b, "\r\n");
    if (b.overflow)
        return -1;
    out->end += (uint32_t)b.n;
    return 0;
}

/* ---- request body: client -> upstream ------------------------------------------------- */

static int body_chunked(conn_t *c, upconn_t *u)
{
    request_t *r = c->req;
    while (iobuf_len(c->in) && !r->body_done) {
        size_t space = iobuf_space(u->out);
        if (space < 64) {
            iobuf_compact(u->out);
            if ((space = iobuf_space(u->out)) < 64)
                return 0;
        }
        size_t in = iobuf_len(c->in) < space - 32 ? iobuf_len(c->in) : space - 32, used;
        h1_slice_t data;
        int rc = h1_chunked_decode(&r->body_chunks, iobuf_rd(c->in), in, &used, &data);
        iobuf_consume(c->in, used);
        if (rc == H1_CHUNK_ERROR) {
            log_warn("client request body (site %s): %s", site_name(r), r->body_chunks.error);
            conn_error(c, 400, NULL);
            return -1;
        }
        if (rc == H1_CHUNK_DATA) {
            int n = snprintf(iobuf_wr(u->out), iobuf_space(u->out), "%zx\r\n", data.n);
            u->out->end += (uint32_t)n;
            memcpy(iobuf_wr(u->out), data.p, data.n);
            u->out->end += (uint32_t)data.n;
            memcpy(iobuf_wr(u->out), "\r\n", 2);
            u->out->end += 2;
            r->body_bytes += data.n;
        } else if (rc == H1_CHUNK_DONE) {
            memcpy(iobuf_wr(u->out), "0\r\n\r\n", 5);
            u->out->end += 5;
            r->body_done = true;
        }
        if (r->max_body && r->body_bytes > r->max_body) {
            conn_error(c, 413, NULL);
            return -1;
        }
    }
    return 0;
}

static int body_length(conn_t *c, upconn_t *u)
{
    request_t *r = c->req;
    while (iobuf_len(c->in) && r->body_remain > 0) {
        if (iobuf_space(u->out) == 0)
            iobuf_compact(u->out);
        size_t k = iobuf_len(c->in);
        if (k > (uint64_t)r->body_remain)
            k = (size_t)r->body_remain;
        if (k > iobuf_space(u->out))
            k = iobuf_space(u->out);
        if (k == 0)
            return 0;
        memcpy(iobuf_wr(u->out), iobuf_rd(c->in), k);
        u->out->end += (uint32_t)k;
        iobuf_consume(c->in, k);
        r->body_remain -= (int64_t)k;
        r->body_bytes += k;
    }
    if (r->body_remain == 0)
        r->body_done = true;
    return 0;
}

static int up_flush(upconn_t *u);
static void up_read(upconn_t *u);

/* Keep a copy of request bytes as they go to the upstream buffer; past
 * REPLAY_MAX the request can no longer be replayed. */
static void replay_add(request_t *r, const char *p, size_t n)
{
    if (r->replay == NULL || n == 0)
        return;
    if (r->replay_len + n > REPLAY_MAX) {
        r->replay = NULL;
        return;
    }
    memcpy(r->replay + r->replay_len, p, n);
    r->replay_len += n;
}

/* Move request bytes from the client to the upstream buffer and set who reads. */
static void feed_body(conn_t *c)
{
    request_t *r = c->req;
    upconn_t *u = r->up;
    if (u == NULL)
        return;
    if (u->out == NULL && (u->out = iobuf_get()) == NULL) {
        conn_close(c, "out of memory");
        return;
    }
    if (c->state == CS_TUNNEL) {
        size_t k = iobuf_len(c->in) < iobuf_space(u->out) ? iobuf_len(c->in) : iobuf_space(u->out);
        memcpy(iobuf_wr(u->out), iobuf_rd(c->in), k);
        u->out->end += (uint32_t)k;
        iobuf_consume(c->in, k);
    } else if (!r->body_done) {
        size_t before = iobuf_len(u->out);
        if ((r->body_remain < 0 ? body_chunked(c, u) : body_length(c, u)) < 0)
            return;
        replay_add(r, iobuf_rd(u->out) + before, iobuf_len(u->out) - before);
    }
    bool room = iobuf_space(u->out) > 0;
    if (c->state == CS_TUNNEL)
        conn_pause_read(c, !room || iobuf_len(c->in) > 0);
    else if (!r->body_done) {
        conn_pause_read(c, iobuf_len(c->in) > 0); /* wait for the upstream to take what we hold */
        conn_arm_body_timer(c);
    } else if (c->read_paused) {
        conn_pause_read(c, false); /* body complete: pipelined bytes may wait in c->in */
    }
    if (u->state == US_ACTIVE)
        up_flush(u); /* at once: the upstream works while we go on with the batch */
}

void proxy_client_input(conn_t *c)
{
    if (c->req && c->req->up)
        feed_body(c);
}

/* ---- start ------------------------------------------------------------------------------ */

static void arm_timer(upconn_t *u)
{
    request_t *r = u->client->req;
    const rt_policy_t *p = &r->table->t.policies[r->table->t.routes[r->route].policy];
    uint64_t ms = u->state == US_CONNECTING || u->state == US_HANDSHAKE ? p->connect_ms
                : u->client->state == CS_TUNNEL ? TUNNEL_TIMEOUT_MS
                : iobuf_len(u->out) ? p->send_ms : p->read_ms;
    ev_timer_start(W->loop, &u->timer, ms, up_timer);
}

static void attach(conn_t *c, upconn_t *u, uint32_t server)
{
    request_t *r = c->req;
    const rt_table_t *t = &r->table->t;
    u->client = c;
    u->server = server;
    u->keepalive = t->upstreams[t->servers[server].upstream].keepalive;
    u->slot = r->table->slot[server];
    u->counted = true;
    health_begin(u->slot);
    r->up = u;
    r->server = server;
    if (u->state == US_IDLE) {
        u->state = US_ACTIVE;
        ev_set(W->loop, &u->io, EV_READ);
    }
}

/* The request lets go of u (which is closed). */
static void abandon(upconn_t *u)
{
    u->client->req->up = NULL;
    u->client = NULL;
    up_close(u);
}

static void send_continue(conn_t *c)
{
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    conn_write(c, cont, sizeof(cont) - 1);
    conn_flush(c);
}

/* ---- server choice and retries ---------------------------------------------------------- */

static const rt_policy_t *policy_of(const request_t *r)
{
    return &r->table->t.policies[r->table->t.routes[r->route].policy];
}

static bool idempotent(unsigned method)
{
    return method == H1_METHOD_GET || method == H1_METHOD_HEAD || method == H1_METHOD_PUT ||
           method == H1_METHOD_DELETE || method == H1_METHOD_OPTIONS || method == H1_METHOD_TRACE;
}

static uint32_t pick(conn_t *c, uint64_t tried)
{
    request_t *r = c->req;
    size_t n = c->peer_family == 4 ? 4 : c->peer_family == 6 ? 16 : 0;
    return balance_pick(r->table, r->table->t.routes[r->route].upstream, c->peer_ip, n, tried, ev_now(W->loop));
}

static uint64_t pos_bit(const tref_t *tr, uint32_t server)
{
    const rt_upstream_t *u = &tr->t.upstreams[tr->t.servers[server].upstream];
    return 1ull << ((server - u->servers.first) % 64);
}

/* Start an attempt with out (the bytes to send first) on server first, or
 * when that is RT_NONE on the server balance_pick() chooses; tries and
 * tried carry over from earlier attempts.  A server that cannot even be
 * connected to counts as failed and the next is tried (as retry.on and
 * tries allow).  When none is left, answer status with msg (the last
 * failure; NULL: no server of the upstream is up) and return NULL. */
static upconn_t *launch(conn_t *c, iobuf_t *out, uint8_t tries, uint64_t tried, uint32_t first, int status,
                        const char *msg)
{
    request_t *r = c->req;
    const rt_policy_t *p = policy_of(r);
    uint32_t max = p->retry_tries ? p->retry_tries : 1, server = first;
    char why_msg[192];
    for (;;) {
        if (server == RT_NONE && tries < max)
            server = pick(c, tried);
        if (server == RT_NONE)
            break;
        tries++;
        tried |= pos_bit(r->table, server);
        const char *why = NULL;
        upool_t *pl = pool_of(r->table, server);
        upconn_t *u = r->websocket_ok || pl == NULL ? NULL : pool_take(pl);
        if (u == NULL && (u = up_connect(c, server, pl, &why)) == NULL) {
            r->server = server;
            health_failed(r->table, server, ev_now(W->loop), why);
            snprintf(why_msg, sizeof(why_msg), "connect failed: %s", why);
            status = 502;
            msg = why_msg;
            server = RT_NONE;
            if (!(p->retry_on & RT_ON_ERROR))
                break;
            if (tries < max)
                log_warn("upstream %s (site %s): %s; trying another server",
                         rt_cstr(&r->table->t, r->table->t.servers[r->server].sa.addr), site_name(r), msg);
            continue;
        }
        attach(c, u, server);
        u->tries = tries;
        u->tried = tried;
        iobuf_put(u->out);
        u->out = out;
        return u;
    }
    iobuf_put(out);
    if (msg == NULL) {
        const rt_table_t *t = &r->table->t;
        snprintf(why_msg, sizeof(why_msg), "no server of upstream %s is up",
                 rt_cstr(t, t->upstreams[t->routes[r->route].upstream].name));
        msg = why_msg;
    }
    fail(c, status, "%s", msg);
    return NULL;
}

/* After a new attempt started: move what the client sent meanwhile and arm
 * its timer (the attempt may already have failed over again). */
static void attempt_go(conn_t *c, request_t *r)
{
    feed_body(c);
    if (!c->closed && c->req == r && r->up && !r->up->closed)
        arm_timer(r->up);
}

/* Move the request to another server after u failed with cond.  false when
 * the route, the method or what was sent does not allow it, or no other
 * server is up (the caller then answers). */
static bool retry_elsewhere(upconn_t *u, unsigned cond, int status, const char *msg)
{
    conn_t *c = u->client;
    request_t *r = c->req;
    const rt_policy_t *p = policy_of(r);
    if (!(p->retry_on & cond) || u->tries >= p->retry_tries || c->state == CS_TUNNEL)
        return false;
    if (u->sent != 0 && !(idempotent(r->method_id) && r->replay))
        return false;
    uint32_t next = pick(c, u->tried);
    if (next == RT_NONE)
        return false;
    iobuf_t *out = NULL;
    if (u->sent == 0) {
        out = u->out;
        u->out = NULL;
    } else if ((out = iobuf_get()) != NULL) {
        memcpy(iobuf_wr(out), r->replay, r->replay_len);
        out->end += (uint32_t)r->replay_len;
    }
    if (out == NULL)
        return false;
    log_warn("upstream %s (site %s): %s; retrying on %s (attempt %u of %u)", u->pool->key, site_name(r), msg,
             rt_cstr(&r->table->t, r->table->t.servers[next].sa.addr), u->tries + 1u, p->retry_tries);
    uint8_t tries = u->tries;
    uint64_t tried = u->tried;
    abandon(u);
    if (launch(c, out, tries, tried, next, status, msg))
        attempt_go(c, r);
    return true;
}

/* A pooled connection died before its first response byte: replay on a
 * fresh connection to the same server (see the top of the file). */
static bool retry_fresh(upconn_t *u)
{
    conn_t *c = u->client;
    request_t *r = c->req;
    bool bodiless = r->body_done && r->body_bytes == 0;
    if (!u->reused || u->got_bytes || (u->sent != 0 && !(r->replay && (bodiless || idempotent(r->method_id)))))
        return false;
    uint32_t server = u->server;
    uint8_t tries = u->tries;
    uint64_t tried = u->tried;
    iobuf_t *out = u->sent == 0 ? u->out : iobuf_get();
    if (out == NULL)
        return false;
    if (u->sent == 0)
        u->out = NULL;
    else {
        memcpy(iobuf_wr(out), r->replay, r->replay_len);
        out->end += (uint32_t)r->replay_len;
    }
    abandon(u);
    const char *why;
    upconn_t *fresh = up_connect(c, server, pool_of(r->table, server), &why);
    if (fresh == NULL) {
        char msg[192];
        snprintf(msg, sizeof(msg), "reconnect failed: %s", why);
        r->server = server;
        health_failed(r->table, server, ev_now(W->loop), msg);
        if (!(policy_of(r)->retry_on & RT_ON_ERROR)) {
            iobuf_put(out);
            fail(c, 502, "%s", msg);
        } else if (launch(c, out, tries, tried, RT_NONE, 502, msg)) {
            attempt_go(c, r);
        }
        return true;
    }
    attach(c, fresh, server);
    fresh->tries = tries;
    fresh->tried = tried;
    fresh->out = out;
    attempt_go(c, r);
    return true;
}

/* The attempt on u failed (cond: RT_ON_ERROR or RT_ON_TIMEOUT).  Before any
 * response byte reached the client this counts against the server and may
 * move the request elsewhere; after it the client connection is closed. */
static void up_failed(upconn_t *u, unsigned cond, int status, const char *fmt, ...)
{
    conn_t *c = u->client;
    request_t *r = c->req;
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (u->head_done || c->state == CS_TUNNEL) {
        fail(c, status, "%s", msg);
        return;
    }
    if (cond == RT_ON_ERROR && retry_fresh(u))
        return;
    health_failed(r->table, u->server, ev_now(W->loop), msg);
    if (!retry_elsewhere(u, cond, status, msg))
        fail(c, status, "%s", msg);
}

/* A response status retry.on may name. */
static unsigned status_cond(int status)
{
    switch (status) {
    case 500: return RT_ON_500;
    case 502: return RT_ON_502;
    case 503: return RT_ON_503;
    case 504: return RT_ON_504;
    case 429: return RT_ON_429;
    default: return 0;
    }
}

/* Copy the request head (and, when the route may retry, the start of the
 * body as it is sent) for a replay. */
static void replay_begin(request_t *r, const iobuf_t *out)
{
    size_t n = iobuf_len(out);
    bool body = !r->body_done;
    r->replay = NULL;
    r->replay_len = 0;
    if (body && policy_of(r)->retry_tries < 2)
        return;
    r->replay = arena_alloc(&r->arena, body ? REPLAY_MAX : n);
    memcpy(r->replay, out->data + out->start, n);
    r->replay_len = n;
}

void proxy_start(conn_t *c, const h1_request_t *h)
{
    request_t *r = c->req;
    const rt_table_t *t = &r->table->t;
    const rt_route_t *rt = &t->routes[r->route];
    r->websocket_ok = h->upgrade && (rt->flags & RT_RF_WEBSOCKET) && h->method_id == H1_METHOD_GET;
    iobuf_t *out = iobuf_get();
    if (out == NULL) {
        conn_close(c, "out of memory");
        return;
    }
    if (build_head(c, h, out) < 0) {
        iobuf_put(out);
        fail(c, 502, "request head too large to forward");
        return;
    }
    replay_begin(r, out);
    if (launch(c, out, 0, 0, RT_NONE, 503, NULL) == NULL)
        return;
    r->upstream_ms = ev_now(W->loop);
    if (r->expect_continue && !r->body_done)
        send_continue(c);
    attempt_go(c, r);
}

/* ---- response: upstream -> client ---------------------------------------------------------- */

static bool skip_response_header(const h1_header_t *x)
{
    return x->hop || x->id == H1_HDR_SERVER || x->id == H1_HDR_DATE || x->id == H1_HDR_CONTENT_LENGTH ||
           x->id == H1_HDR_TRANSFER_ENCODING;
}

static void observe_latency(uint64_t ms)
{
    static const uint64_t bounds[STATS_LAT_BUCKETS] = STATS_LAT_BOUNDS;
    unsigned b = 0;
    while (b < STATS_LAT_BUCKETS - 1 && ms > bounds[b])
        b++;
    W->stats->upstream_hist[b]++;
    W->stats->upstream_count++;
    W->stats->upstream_ms_sum += ms;
}

static void client_head(conn_t *c, const h1_response_t *res, h1_body_t body)
{
    request_t *r = c->req;
    const rt_table_t *t = &r->table->t;
    const rt_route_t *rt = &t->routes[r->route];
    conn_head_begin(c, res->status);
    for (size_t i = 0; i < res->nheaders; i++) {
        const h1_header_t *x = &res->headers[i];
        if (skip_response_header(x) || vars_route_names(t, rt, RT_HDR_RESPONSE, x->name.p, x->name.n))
            continue;
        conn_write(c, x->name.p, x->name.n);
        CONN_LIT(c, ": ");
        conn_write(c, x->value.p, x->value.n);
        CONN_LIT(c, "\r\n");
    }
    for (uint32_t i = 0; i < rt->header_ops.count; i++) {
        const rt_header_op_t *o = &t->hdrops[rt->header_ops.first + i];
        if (o->dir != RT_HDR_RESPONSE || o->op != RT_HDR_SET)
            continue;
        char val[1024];
        size_t vn = vars_expand(c, rt_cstr(t, o->value), val, sizeof(val));
        conn_write_str(c, rt_cstr(t, o->name));
        CONN_LIT(c, ": ");
        conn_write(c, val, vn < sizeof(val) ? vn : strlen(val));
        CONN_LIT(c, "\r\n");
    }
    if (body == H1_BODY_TUNNEL) {
        CONN_LIT(c, "Connection: upgrade\r\nUpgrade: websocket\r\n\r\n");
        return;
    }
    if (body == H1_BODY_LENGTH || (body == H1_BODY_NONE && res->content_length >= 0)) {
        CONN_LIT(c, "Content-Length: ");
        conn_write_u64(c, (uint64_t)res->content_length);
        CONN_LIT(c, "\r\n");
    }
    if ((body == H1_BODY_CHUNKED || body == H1_BODY_CLOSE) && !r->http10) {
        r->resp_mode = RM_CHUNKED; /* re-framed: the client always learns where the body ends */
        CONN_LIT(c, "Transfer-Encoding: chunked\r\n");
    } else if (body == H1_BODY_CHUNKED || body == H1_BODY_CLOSE) {
        r->keep_alive = false; /* HTTP/1.0 has no chunked coding: the close delimits */
    }
    if (W->draining)
        r->keep_alive = false;
    if (!r->keep_alive)
        CONN_LIT(c, "Connection: close\r\n");
    CONN_LIT(c, "\r\n");
}

/* A status the route's retry.on lists counts against the server; true when
 * the request went on to another server instead (the response is dropped). */
static bool failed_status(upconn_t *u, int status)
{
    request_t *r = u->client->req;
    unsigned cond = status_cond(status);
    if (cond == 0 || !(policy_of(r)->retry_on & cond))
        return false;
    char msg[48];
    snprintf(msg, sizeof(msg), "answered %d", status);
    health_failed(r->table, u->server, ev_now(W->loop), msg);
    return retry_elsewhere(u, cond, status, msg);
}

/* Parse the response head in u->in; 1 when the body phase can start, 0 wait, -1 failed. */
static int response_head(upconn_t *u)
{
    conn_t *c = u->client;
    request_t *r = c->req;
    for (;;) {
        h1_limits_t lim = {IOBUF_SIZE - 1, IOBUF_SIZE - 1, 100};
        int n = h1_parse_response(iobuf_rd(u->in), iobuf_len(u->in), W->hres, &lim);
        if (n == 0)
            return 0;
        if (n < 0) {
            up_failed(u, RT_ON_ERROR, 502, "invalid response: %s", W->hres->error);
            return -1;
        }
        const h1_response_t *res = W->hres;
        if (res->status >= 100 && res->status < 200 && res->status != 101) {
            iobuf_consume(u->in, (size_t)n); /* interim response: we answered 100-continue ourselves */
            continue;
        }
        h1_body_t body = h1_response_body(res, r->head ? H1_METHOD_HEAD : (h1_method_t)r->method_id);
        if (body == H1_BODY_TUNNEL && !(res->status == 101 && r->websocket_ok)) {
            up_failed(u, RT_ON_ERROR, 502, "unexpected %d response", res->status);
            return -1;
        }
        if (failed_status(u, res->status))
            return -1;
        if (!res->keep_alive || body == H1_BODY_CLOSE)
            u->keepalive = 0;
        observe_latency(ev_now(W->loop) - r->upstream_ms);
        r->upstream_ms = ev_now(W->loop) - r->upstream_ms;
        r->upstream_answered = true;
        u->body = (uint8_t)body;
        r->resp_mode = body == H1_BODY_LENGTH ? RM_LENGTH : body == H1_BODY_NONE ? RM_NONE : RM_CLOSE;
        r->resp_remain = res->content_length;
        if (body == H1_BODY_CHUNKED)
            h1_chunked_init(&u->chunks);
        client_head(c, res, body);
        iobuf_consume(u->in, (size_t)n);
        u->head_done = true;
        if (body == H1_BODY_TUNNEL) {
            c->state = CS_TUNNEL;
            r->response_done = false;
        }
        return 1;
    }
}

static void body_done(upconn_t *u)
{
    conn_t *c = u->client;
    if (c->req->resp_mode == RM_CHUNKED)
        CONN_LIT(c, "0\r\n\r\n");
    c->req->status = c->req->status ? c->req->status : 200;
    conn_response_complete(c);
}

/* Relay decoded upstream body bytes as the client framing wants. */
static void emit(conn_t *c, const char *p, size_t n)
{
    if (c->req->resp_mode == RM_CHUNKED) {
        conn_printf(c, "%zx\r\n", n);
        conn_write(c, p, n);
        CONN_LIT(c, "\r\n");
    } else {
        conn_write(c, p, n);
    }
}

/* Move as much body as c->out takes; returns 1 when the body is complete. */
static int move_response(upconn_t *u)
{
    conn_t *c = u->client;
    request_t *r = c->req;
    while (iobuf_len(u->in)) {
        size_t space = conn_out_space(c);
        if (space < 64)
            return 0;
        size_t take = iobuf_len(u->in) < space - 32 ? iobuf_len(u->in) : space - 32;
        if (u->body == H1_BODY_CHUNKED) {
            size_t used;
            h1_slice_t data;
            int rc = h1_chunked_decode(&u->chunks, iobuf_rd(u->in), take, &used, &data);
            iobuf_consume(u->in, used);
            if (rc == H1_CHUNK_ERROR) {
                fail(c, 502, "invalid chunked body: %s", u->chunks.error);
                return -1;
            }
            if (rc == H1_CHUNK_DATA)
                emit(c, data.p, data.n);
            if (rc == H1_CHUNK_DONE)
                return 1;
            continue;
        }
        if (u->body == H1_BODY_LENGTH && (uint64_t)r->resp_remain < take)
            take = (size_t)r->resp_remain;
        if (u->body == H1_BODY_TUNNEL)
            conn_write(c, iobuf_rd(u->in), take);
        else
            emit(c, iobuf_rd(u->in), take);
        iobuf_consume(u->in, take);
        if (u->body == H1_BODY_LENGTH && (r->resp_remain -= (int64_t)take) == 0)
            return 1;
    }
    return u->body == H1_BODY_NONE || (u->body == H1_BODY_LENGTH && r->resp_remain == 0);
}

static void relay_response(upconn_t *u)
{
    conn_t *c = u->client;
    if (!u->head_done) {
        int rc = response_head(u);
        if (rc <= 0)
            return;
    }
    for (;;) {
        int done = move_response(u);
        if (done < 0 || c->closed)
            return;
        if (done == 1 && u->body != H1_BODY_TUNNEL) {
            if (iobuf_len(u->in))
                u->keepalive = 0; /* bytes after the response: do not trust this connection */
            body_done(u);
            return;
        }
        if (conn_flush(c) < 0)
            return;
        if (iobuf_len(c->out) || iobuf_len(u->in) == 0)
            break; /* the client is behind, or everything read so far is out */
    }
    /* Backpressure: stop reading the upstream while the client has not taken the last buffer. */
    u->read_paused = iobuf_len(c->out) > 0;
    if (u->in && iobuf_space(u->in) < IOBUF_SIZE / 4)
        iobuf_compact(u->in);
    ev_set(W->loop, &u->io, (u->read_paused ? 0 : EV_READ) | (iobuf_len(u->out) ? EV_WRITE : 0));
    arm_timer(u);
}

void proxy_client_drained(conn_t *c)
{
    upconn_t *u = c->req ? c->req->up : NULL;
    if (u == NULL || u->closed)
        return;
    if (iobuf_len(u->in))
        relay_response(u);
    else if (u->read_paused) {
        u->read_paused = false;
        ev_set(W->loop, &u->io, EV_READ | (iobuf_len(u->out) ? EV_WRITE : 0));
        if (u->ssl && SSL_pending(u->ssl) > 0)
            up_read(u);
    }
    if (c->state == CS_TUNNEL && !c->closed && iobuf_len(c->in))
        feed_body(c);
}

/* ---- upstream events --------------------------------------------------------------------- */

static void upstream_eof(upconn_t *u)
{
    conn_t *c = u->client;
    request_t *r = c->req;
    if (!u->head_done) {
        up_failed(u, RT_ON_ERROR, 502, "%s", u->got_bytes ? "closed in the middle of the response head"
                                                          : "closed the connection without responding");
        return;
    }
    if (u->body == H1_BODY_CLOSE) {
        u->keepalive = 0;
        move_response(u);
        body_done(u);
        return;
    }
    if (u->body == H1_BODY_TUNNEL) {
        conn_flush(c);
        conn_close(c, "upstream closed the tunnel");
        return;
    }
    log_err("upstream %s (site %s): closed after %llu bytes of the response body", u->pool->key, site_name(r),
            (unsigned long long)r->resp_bytes);
    conn_close(c, "upstream closed mid-body");
}

/* Socket I/O, plain or TLS: >0 bytes, 0 EOF (reads), -1 try later (errno EAGAIN), -2 error. */
static ssize_t u_io(upconn_t *u, bool wr, void *p, size_t n)
{
    if (u->ssl) {
        ssize_t r = wr ? tls_write(u->ssl, p, n) : tls_read(u->ssl, p, n);
        if (r >= 0)
            return r;
        if (r == TLS_WANT_READ || r == TLS_WANT_WRITE) {
            errno = EAGAIN;
            return -1;
        }
        errno = EPROTO;
        return -2;
    }
    ssize_t r;
    do
        r = wr ? write(u->io.fd, p, n) : read(u->io.fd, p, n);
    while (r < 0 && errno == EINTR);
    return r >= 0 ? r : errno == EAGAIN ? -1 : -2;
}

static int up_flush(upconn_t *u)
{
    while (iobuf_len(u->out)) {
        ssize_t n = u_io(u, true, iobuf_rd(u->out), iobuf_len(u->out));
        if (n == -1)
            break;
        if (n < 0) {
            up_failed(u, RT_ON_ERROR, 502, "send failed: %s", strerror(errno));
            return -1;
        }
        u->sent += (uint64_t)n;
        iobuf_consume(u->out, (size_t)n);
    }
    conn_t *c = u->client;
    if (iobuf_len(u->out) == 0 && c->read_paused && (!c->req->body_done || c->state == CS_TUNNEL))
        conn_pause_read(c, false);
    if (iobuf_len(u->out) == 0 && iobuf_len(c->in) && (!c->req->body_done || c->state == CS_TUNNEL))
        feed_body(c);
    if (!u->closed && u->client)
        ev_set(W->loop, &u->io, (u->read_paused ? 0 : EV_READ) | (u->out && iobuf_len(u->out) ? EV_WRITE : 0));
    return 0;
}

static void up_read(upconn_t *u)
{
    if (u->in == NULL && (u->in = iobuf_get()) == NULL) {
        conn_close(u->client, "out of memory");
        return;
    }
    if (iobuf_space(u->in) == 0)
        iobuf_compact(u->in);
    if (iobuf_space(u->in) == 0) {
        if (!u->head_done)
            up_failed(u, RT_ON_ERROR, 502, "response head larger than %d bytes", IOBUF_SIZE);
        return;
    }
    ssize_t n = u_io(u, false, iobuf_wr(u->in), iobuf_space(u->in));
    if (n == -1)
        return;
    if (n <= 0) {
        if (n < 0)
            log_warn("upstream %s: read: %s", u->pool->key, u->ssl ? tls_error() : strerror(errno));
        upstream_eof(u);
        return;
    }
    u->got_bytes = true;
    u->in->end += (uint32_t)n;
    relay_response(u);
    /* Decrypted bytes the TLS layer still holds raise no epoll event. */
    if (!u->closed && u->client && u->ssl && !u->read_paused && SSL_pending(u->ssl) > 0)
        up_read(u);
}

static void connected(upconn_t *u)
{
    int err = 0;
    socklen_t len = sizeof(err);
    getsockopt(u->io.fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        up_failed(u, RT_ON_ERROR, 502, "connect failed: %s", err == ECONNREFUSED ? "connection refused" : strerror(err));
        return;
    }
    request_t *r = u->client->req;
    uint32_t up = r->table->t.servers[u->server].upstream;
    if (r->table->up_ctx[up]) {
        if ((u->ssl = tls_connect(r->table, up, u->io.fd)) == NULL) {
            up_failed(u, RT_ON_ERROR, 502, "TLS setup failed: %s", tls_error());
            return;
        }
        u->state = US_HANDSHAKE;
        return;
    }
    u->state = US_ACTIVE;
    ev_set(W->loop, &u->io, EV_READ | EV_WRITE);
    arm_timer(u);
}

static void up_handshake(upconn_t *u)
{
    int rc = tls_handshake(u->ssl);
    if (rc == TLS_WANT_READ || rc == TLS_WANT_WRITE) {
        ev_set(W->loop, &u->io, rc == TLS_WANT_READ ? EV_READ : EV_WRITE);
        return;
    }
    if (rc != 1) {
        long v = SSL_get_verify_result(u->ssl);
        up_failed(u, RT_ON_ERROR, 502, "TLS handshake failed: %s",
             v != X509_V_OK ? X509_verify_cert_error_string(v) : tls_error());
        return;
    }
    u->state = US_ACTIVE;
    ev_set(W->loop, &u->io, EV_READ | EV_WRITE);
    arm_timer(u);
}

static void up_io(ev_loop_t *loop, ev_io_t *io, uint32_t revents)
{
    upconn_t *u = (upconn_t *)io;
    (void)loop;
    if (u->closed)
        return;
    if (u->state == US_IDLE) {
        up_close(u); /* data or EOF on an idle pooled connection */
        return;
    }
    if (u->client == NULL || u->client->closed)
        return;
    if (u->state == US_CONNECTING)
        connected(u);
    if (!u->closed && u->client && !u->client->closed && u->state == US_HANDSHAKE)
        up_handshake(u);
    if (u->closed || u->client == NULL || u->client->closed || u->state != US_ACTIVE)
        return;
    if ((revents & EV_WRITE) && up_flush(u) < 0)
        return;
    if (!u->closed && u->client && (revents & (EV_READ | EV_HUP | EV_ERROR)) && !u->read_paused)
        up_read(u);
    if (!u->closed && u->client && !u->client->closed && u->client->req && u->client->req->up == u)
        arm_timer(u);
}

static void up_timer(ev_loop_t *loop, ev_timer_t *t)
{
    upconn_t *u = (upconn_t *)((char *)t - offsetof(upconn_t, timer));
    (void)loop;
    if (u->state == US_IDLE || u->client == NULL) {
        up_close(u);
        return;
    }
    conn_t *c = u->client;
    const rt_policy_t *p = &c->req->table->t.policies[c->req->table->t.routes[c->req->route].policy];
    if (u->state == US_CONNECTING)
        up_failed(u, RT_ON_TIMEOUT, 504, "connect timed out after %ums", p->connect_ms);
    else if (u->state == US_HANDSHAKE)
        up_failed(u, RT_ON_TIMEOUT, 504, "TLS handshake timed out after %ums", p->connect_ms);
    else if (c->state == CS_TUNNEL)
        conn_close(c, "tunnel idle timeout");
    else if (iobuf_len(u->out))
        up_failed(u, RT_ON_TIMEOUT, 504, "send timed out after %ums", p->send_ms);
    else
        up_failed(u, RT_ON_TIMEOUT, 504, "read timed out after %ums", p->read_ms);
}

void proxy_detach(conn_t *c, bool reusable)
{
    request_t *r = c->req;
    upconn_t *u = r->up;
    if (u == NULL)
        return;
    r->up = NULL;
    u->client = NULL;
    unclaim(u);
    if (reusable && u->state == US_ACTIVE && u->head_done && u->keepalive && r->body_done &&
        iobuf_len(u->out) == 0 && iobuf_len(u->in) == 0 && u->body != H1_BODY_TUNNEL)
        pool_put(u);
    else
        up_close(u);
}

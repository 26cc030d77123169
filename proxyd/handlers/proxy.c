/*
 * proxy.c - the proxy content handler (see proxy.h).
 *
 * Data flow of one proxied request, every hop bounded by one iobuf:
 *
 *   session --body_next--> [request body re-framed] --u->out--> upstream
 *   session <--http_send_data-- filters <-- [response body decoded] <--u->in-- upstream
 *
 * When the next buffer is full the side feeding it stops reading until the
 * buffer drains (backpressure), so memory per request is four buffers
 * whatever the body size.  With `buffering` on, the spool filter
 * (filters/spool.c) below the response side takes what the client is behind
 * on, so the upstream is read to its end and pooled before the client has
 * it all.  Bodies are re-framed, never passed through
 * blindly: the request body is decoded by the session and written with our
 * own framing, so a smuggled second request cannot ride along; the response
 * body is decoded here and framed again by the client's session.
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
 *     OPTIONS TRACE) are replayed, from px->replay, a copy of everything
 *     sent so far; it holds REPLAY_MAX bytes, so a body that has streamed
 *     beyond that (we never buffer a whole body) cannot be replayed.
 * tries counts attempts (1: no retry; without retry.tries written the
 * compiler makes it the pool's server count, nginx's default).  When no other server is up, a
 * failed status is relayed as the upstream gave it.  A connection taken from
 * the keep-alive pool may have been closed by the upstream just before we
 * wrote to it: a request that got no response byte is replayed once on a
 * fresh connection to the same server, which counts neither as a try nor
 * as a failure (RFC 9110 §9.2.2; non-idempotent only when bodiless).
 */
#include "cache/cache.h"
#include "handlers/proxy.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../common/log.h"
#include "../common/route.h"
#include "../common/str.h"
#include "conn/tls.h"
#include "http/path.h"
#include "http/vars.h"
#include "upstream/balance.h"
#include "upstream/fastcgi.h"
#include "upstream/health.h"
#include "upstream/pool.h"
#include "upstream/resolve.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#define TUNNEL_TIMEOUT_MS 3600000
#define REPLAY_MAX IOBUF_SIZE /* request bytes kept for a replay on another server */
/* An upstream's response head: what proxyd adds to it (Date, Server, the
 * security headers, framing, Vary, X-Cache-Status...) must still fit the
 * client's 16 KiB output buffer, so a longer head is refused (502). */
#define UPSTREAM_HEAD_MAX (IOBUF_SIZE - 4096)

/* A FastCGI route's attempt: its records decoded, STDOUT into out.  out
 * starts with a status line of our own ("HTTP/1.1 200 FastCGI"), so the
 * CGI head behind it parses as an HTTP/1.1 response head, with every check
 * the HTTP parser makes against smuggled lengths; Status then replaces 200. */
typedef struct {
    fcgi_decoder_t dec;
    iobuf_t *out;
} fcgi_t;

#define FCGI_HEAD_LINE "HTTP/1.1 200 FastCGI\r\n"

/* The proxy's per-request state (r->ctx[MODULE_CTX_PROXY]). */
typedef struct {
    upconn_t *up;               /* the attempt in progress */
    fcgi_t *fc;                 /* a fastcgi route's state, else NULL */
    const char *pending;        /* FastCGI: request records that did not fit the first buffer */
    size_t pending_len;
    uint32_t server;            /* its server (table index), RT_NONE */
    bool websocket_ok;          /* an Upgrade this route lets through */
    bool body_end_sent;         /* the chunked request body's last-chunk is written */
    char *replay;               /* saved upstream head (and body start) for a retry */
    size_t replay_len, replay_cap;
    int64_t resp_remain;        /* response body bytes left (length-delimited) */
    bool upstream_idle;         /* the last read took all the upstream had: nothing more for now */
} proxy_ctx_t;

static void up_event(upconn_t *u, uint32_t revents);
static void up_timeout(upconn_t *u);
static void relay_response(upconn_t *u);
static int up_flush(upconn_t *u);
static void up_read(upconn_t *u);
static void up_failed(upconn_t *u, unsigned cond, int status, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static bool drained(const upconn_t *u);

static proxy_ctx_t *ctx_of(const request_t *r) { return r->ctx[MODULE_CTX_PROXY]; }

/* ---- naming things in the error log ------------------------------------------ */

static const char *site_name(const request_t *r)
{
    return r->site == RT_NONE ? "-" : rt_cstr(&r->table->t, r->table->t.sites[r->site].name);
}

static void fail(request_t *r, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void fail(request_t *r, int status, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    uint32_t server = ctx_of(r)->server;
    const char *addr = server != RT_NONE ? rt_cstr(&r->table->t, r->table->t.servers[server].sa.addr) : "-";
    log_err("upstream %s (site %s): %s", addr, site_name(r), msg);
    if (!r->response_started && r->ctx[MODULE_CTX_CACHE] && cache_upstream_answer(r, status, NULL))
        return; /* a stale entry answers instead */
    http_error(r, status, NULL);
}

static const rt_policy_t *policy_of(const request_t *r)
{
    return &r->table->t.policies[r->table->t.routes[r->route].policy];
}

/* ---- the upstream request head ------------------------------------------------------ */

/* The head is built straight into the upstream iobuf with a fixed str_buf_t:
 * no allocation, no copy; a head that does not fit fails the request. */

static void hb_header(str_buf_t *b, const char *name, size_t nn, const char *v, size_t vn)
{
    str_append(b, name, nn);
    STR_APPEND_LIT(b, ": ");
    str_append(b, v, vn);
    STR_APPEND_LIT(b, "\r\n");
}

#define HB_HEADER_LIT(b, name, v, vn) hb_header((b), "" name, sizeof(name) - 1, (v), (vn))

/* Append a template with its variables expanded (2047 bytes at most). */
static void hb_expand(str_buf_t *b, const request_t *r, const char *tmpl)
{
    char val[2048];
    size_t n = vars_expand(r, tmpl, val, sizeof(val));
    if (n >= sizeof(val))
        str_refuse(b);
    else
        str_append(b, val, n);
}

static void forwarded_headers(str_buf_t *b, const request_t *r)
{
    const conn_t *c = r->conn;
    bool trusted = r->peer_trusted;
    char peer[VARS_PEER_MAX], client[VARS_PEER_MAX], port[24];
    size_t peer_len = vars_peer(c, peer), client_len = vars_client(r, client);
    size_t port_len = fmt_u64(port, c->local_port);
    slice_t xfp = {NULL, 0}, xfh = {NULL, 0}, xfport = {NULL, 0};
    for (size_t i = 0; trusted && i < r->nheaders; i++) {
        const h1_header_t *x = &r->headers[i];
        switch (x->id) {
        case H1_HDR_X_FORWARDED_PROTO: xfp = x->value; break;
        case H1_HDR_X_FORWARDED_HOST: xfh = x->value; break;
        case H1_HDR_X_FORWARDED_PORT: xfport = x->value; break;
        default: break; /* X-Forwarded-For is joined below: several fields are one list (RFC 9110 §5.3) */
        }
    }
    STR_APPEND_LIT(b, "X-Forwarded-For: ");
    for (size_t i = 0; trusted && i < r->nheaders; i++)
        if (r->headers[i].id == H1_HDR_X_FORWARDED_FOR && r->headers[i].value.n) {
            str_append(b, r->headers[i].value.p, r->headers[i].value.n);
            STR_APPEND_LIT(b, ", ");
        }
    str_append(b, peer, peer_len);
    STR_APPEND_LIT(b, "\r\n");
    HB_HEADER_LIT(b, "X-Real-IP", client, client_len); /* $remote_addr */
    const char *scheme = c->tls ? "https" : "http";
    HB_HEADER_LIT(b, "X-Forwarded-Proto", xfp.n ? xfp.p : scheme, xfp.n ? xfp.n : strlen(scheme));
    HB_HEADER_LIT(b, "X-Forwarded-Host", xfh.n ? xfh.p : r->host.p, xfh.n ? xfh.n : r->host.n);
    HB_HEADER_LIT(b, "X-Forwarded-Port", xfport.n ? xfport.p : port, xfport.n ? xfport.n : port_len);
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

/* Forwarded (RFC 7239) says who the client is, like X-Forwarded-For: from
 * a client that is not a trusted proxy it is a claim, and is not passed on. */
static bool is_forwarded(const h1_header_t *x)
{
    return x->name.n == 9 && strncasecmp(x->name.p, "Forwarded", 9) == 0;
}

/* The normalized path, percent-encoded for the wire in pieces (no length
 * limit of its own: the head buffer's is the one that answers). */
#define ENCODE_PIECE 1024

static void hb_path(str_buf_t *b, const char *p, size_t n)
{
    char enc[3 * ENCODE_PIECE];
    for (size_t k; n; p += k, n -= k) {
        k = n < ENCODE_PIECE ? n : ENCODE_PIECE;
        size_t en = path_encode(p, k, enc);
        str_append(b, enc, en);
    }
}

static void request_line(str_buf_t *b, const request_t *r, const rt_route_t *rt)
{
    const char *head, *p;
    size_t hn, n;
    route_upstream_path(&r->table->t, rt, r->path.p, r->path.n, &head, &hn, &p, &n);
    str_append(b, r->method.p, r->method.n);
    STR_APPEND_LIT(b, " ");
    if (hn)
        hb_path(b, head, hn);
    else if (n == 0 || p[0] != '/')
        STR_APPEND_LIT(b, "/");
    hb_path(b, p, n);
    if (r->query.p) {
        STR_APPEND_LIT(b, "?");
        str_append(b, r->query.p, r->query.n);
    }
    STR_APPEND_LIT(b, " HTTP/1.1\r\n");
}

static bool route_names(const rt_table_t *t, const rt_route_t *rt, const char *name, size_t n)
{
    return vars_route_names(t, rt, RT_HDR_REQUEST, name, n);
}

static int build_head(request_t *r, iobuf_t *out)
{
    const rt_table_t *t = &r->table->t;
    const rt_route_t *rt = &t->routes[r->route];
    str_buf_t b = str_buf_fixed(iobuf_wr(out), iobuf_space(out));
    request_line(&b, r, rt);
    if (!route_names(t, rt, "Host", 4)) /* headers: {request: {set: {Host: ...}}} replaces it */
        HB_HEADER_LIT(&b, "Host", r->host.p, r->host.n);
    bool trusted = r->peer_trusted;
    /* A fill for the cache asks for the whole representation, with the
     * cache's own validators when it revalidates. */
    bool fill = r->ctx[MODULE_CTX_CACHE] && cache_upstream_fields(r, &b);
    for (size_t i = 0; i < r->nheaders; i++) {
        const h1_header_t *x = &r->headers[i];
        if (skip_request_header(x) || (!trusted && is_forwarded(x)) || route_names(t, rt, x->name.p, x->name.n) ||
            (fill && http_field_conditional(x)))
            continue;
        hb_header(&b, x->name.p, x->name.n, x->value.p, x->value.n);
    }
    forwarded_headers(&b, r);
    for (uint32_t i = 0; i < rt->header_ops.count; i++) {
        const rt_header_op_t *o = &t->hdrops[rt->header_ops.first + i];
        if (o->dir != RT_HDR_REQUEST || o->op != RT_HDR_SET)
            continue;
        str_append(&b, rt_cstr(t, o->name), o->name.len);
        STR_APPEND_LIT(&b, ": ");
        hb_expand(&b, r, rt_cstr(t, o->value));
        STR_APPEND_LIT(&b, "\r\n");
    }
    if (r->body_length > 0) {
        STR_APPEND_LIT(&b, "Content-Length: ");
        str_append_u64(&b, (uint64_t)r->body_length);
        STR_APPEND_LIT(&b, "\r\n");
    } else if (r->body_length < 0) {
        STR_APPEND_LIT(&b, "Transfer-Encoding: chunked\r\n");
    } else if (r->content_length == 0) {
        STR_APPEND_LIT(&b, "Content-Length: 0\r\n"); /* some upstreams answer 411 without it */
    }
    if (ctx_of(r)->websocket_ok) {
        STR_APPEND_LIT(&b, "Connection: upgrade\r\nUpgrade: ");
        str_append(&b, r->upgrade_proto.p, r->upgrade_proto.n);
        STR_APPEND_LIT(&b, "\r\n");
    }
    STR_APPEND_LIT(&b, "\r\n");
    if (b.overflow)
        return -1;
    out->end += (uint32_t)b.len;
    return 0;
}

/* ---- the FastCGI request: BEGIN_REQUEST and PARAMS ------------------------------------- */

/* ---- the FastCGI request: BEGIN_REQUEST and PARAMS ----------------------------------- */

#define CGI_VAR(b, name, p, n) fcgi_param((b), "" name, sizeof(name) - 1, (p), (n))
#define CGI_VAR_LIT(b, name, lit) fcgi_param((b), "" name, sizeof(name) - 1, "" lit, sizeof(lit) - 1)

/* The CGI meta-variables of the request (RFC 3875 §4.1, as nginx's
 * fastcgi_params set them); the header fields follow (fcgi_params_from_head). */
static void cgi_vars(str_buf_t *b, const request_t *r, const rt_route_t *rt)
{
    const rt_table_t *t = &r->table->t;
    const conn_t *c = r->conn;
    const char *root = rt_cstr(t, rt->target);
    size_t rn = rt->target.len;
    while (rn > 1 && root[rn - 1] == '/')
        rn--;
    bool index;
    size_t sn = route_fastcgi_script(r->path.p, r->path.n, &index);
    fcgi_piece_t file[3] = {
        {root, rn == 1 ? 0 : rn}, {r->path.p, sn}, {rt_cstr(t, rt->extra), index ? rt->extra.len : 0}};
    fcgi_param_pieces(b, "SCRIPT_FILENAME", 15, file, 3);
    fcgi_param_pieces(b, "SCRIPT_NAME", 11, file + 1, 2);
    if (sn < r->path.n)
        CGI_VAR(b, "PATH_INFO", r->path.p + sn, r->path.n - sn);
    CGI_VAR(b, "DOCUMENT_ROOT", root, rn);
    CGI_VAR(b, "DOCUMENT_URI", r->path.p, r->path.n);
    fcgi_piece_t uri[3] = {{r->path_raw.p, r->path_raw.n}, {"?", r->query.p ? 1 : 0}, {r->query.p, r->query.n}};
    fcgi_param_pieces(b, "REQUEST_URI", 11, uri, 3);
    CGI_VAR(b, "QUERY_STRING", r->query.p ? r->query.p : "", r->query.n);
    CGI_VAR(b, "REQUEST_METHOD", r->method.p, r->method.n);
    const char *proto = r->http10 ? "HTTP/1.0" : r->sess->proto ? r->sess->proto : "HTTP/1.1";
    CGI_VAR(b, "SERVER_PROTOCOL", proto, strlen(proto));
    CGI_VAR_LIT(b, "GATEWAY_INTERFACE", "CGI/1.1");
    CGI_VAR_LIT(b, "SERVER_SOFTWARE", "proxyd");
    char addr[VARS_PEER_MAX], port[24];
    CGI_VAR(b, "REMOTE_ADDR", addr, vars_client(r, addr));
    CGI_VAR(b, "REMOTE_PORT", port, fmt_u64(port, c->peer_port));
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    char local[INET6_ADDRSTRLEN] = "";
    if (c->io.fd >= 0 && getsockname(c->io.fd, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET)
            inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, local, sizeof(local));
        else if (ss.ss_family == AF_INET6)
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, local, sizeof(local));
    }
    if (local[0])
        CGI_VAR(b, "SERVER_ADDR", local, strlen(local));
    CGI_VAR(b, "SERVER_PORT", port, fmt_u64(port, c->local_port));
    const char *colon = r->host.n && r->host.p[r->host.n - 1] != ']' ? memrchr(r->host.p, ':', r->host.n) : NULL;
    CGI_VAR(b, "SERVER_NAME", r->host.p, colon ? (size_t)(colon - r->host.p) : r->host.n);
    if (c->tls) {
        CGI_VAR_LIT(b, "REQUEST_SCHEME", "https");
        CGI_VAR_LIT(b, "HTTPS", "on");
    } else {
        CGI_VAR_LIT(b, "REQUEST_SCHEME", "http");
    }
    CGI_VAR_LIT(b, "REDIRECT_STATUS", "200"); /* php-cgi's cgi.force_redirect asks for it */
}

/* The FastCGI request's records into out: BEGIN_REQUEST, then PARAMS with
 * the CGI variables and the header fields the HTTP request to an upstream
 * would carry (so headers.request, X-Forwarded-*, the cache's validators
 * apply alike); STDIN follows as the body streams (move_body). */
static void fcgi_records(str_buf_t *b, request_t *r, const iobuf_t *head)
{
    const rt_table_t *t = &r->table->t;
    const rt_route_t *rt = &t->routes[r->route];
    fcgi_begin(b, t->upstreams[rt->upstream].keepalive > 0);
    size_t at = fcgi_params_open(b);
    cgi_vars(b, r, rt);
    fcgi_params_from_head(b, head->data + head->start, head->end - head->start);
    fcgi_params_close(b, at);
}

/* The records go into out; those that do not fit (a long path is in four
 * parameters) wait in px->pending, sent before the body (move_body). */
static int fcgi_build(request_t *r, iobuf_t *out)
{
    proxy_ctx_t *px = ctx_of(r);
    iobuf_t *head = iobuf_get();
    int rc = -1;
    if (head && build_head(r, head) == 0) {
        str_buf_t b = str_buf_fixed(iobuf_wr(out), iobuf_space(out));
        fcgi_records(&b, r, head);
        if (!b.overflow) {
            out->end += (uint32_t)b.len;
            rc = 0;
        } else {
            size_t cap = 4 * FCGI_HEADER_LEN + 8 + FCGI_MAX_CONTENT;
            char *big = malloc(cap);
            b = str_buf_fixed(big, big ? cap : 0);
            fcgi_records(&b, r, head);
            if (big && !b.overflow) {
                size_t first = b.len < iobuf_space(out) ? b.len : iobuf_space(out);
                memcpy(iobuf_wr(out), big, first);
                out->end += (uint32_t)first;
                px->pending_len = b.len - first;
                px->pending = memcpy(arena_alloc_raw(&r->arena, px->pending_len), big + first, px->pending_len);
                rc = 0;
            }
            free(big);
        }
    }
    iobuf_put(head);
    return rc;
}

/* Request bytes still to go besides the client's body: FastCGI records that
 * waited for room, or the empty STDIN record that ends the body. */
static bool more_to_send(const proxy_ctx_t *px)
{
    return px->pending_len || (px->fc && !px->body_end_sent);
}

/* ---- request body: client -> upstream ------------------------------------------------- */

/* Keep a copy of request bytes as they go to the upstream buffer; past
 * REPLAY_MAX the request can no longer be replayed. */
static void replay_add(proxy_ctx_t *px, const char *p, size_t n)
{
    if (px->replay == NULL || n == 0)
        return;
    if (px->replay_len + n > px->replay_cap) {
        px->replay = NULL;
        return;
    }
    memcpy(px->replay + px->replay_len, p, n);
    px->replay_len += n;
}

static void put_out(iobuf_t *b, const char *p, size_t n)
{
    memcpy(iobuf_wr(b), p, n);
    b->end += (uint32_t)n;
}

/* Move what the session holds of the request body (or the tunnel) into
 * u->out, framed for the upstream: 0, or -1 when the request went away. */
static int move_body(request_t *r, upconn_t *u)
{
    proxy_ctx_t *px = ctx_of(r);
    bool chunked = !r->tunnel && r->body_length < 0, fcgi = px->fc != NULL;
    if (px->pending_len) {
        if (iobuf_space(u->out) < 64)
            iobuf_compact(u->out);
        size_t k = px->pending_len < iobuf_space(u->out) ? px->pending_len : iobuf_space(u->out);
        put_out(u->out, px->pending, k);
        px->pending += k;
        px->pending_len -= k;
        if (px->pending_len)
            return 0; /* after the next flush */
    }
    for (;;) {
        if (iobuf_space(u->out) < 64)
            iobuf_compact(u->out);
        size_t space = iobuf_space(u->out);
        /* FastCGI: a STDIN record header before the bytes, and room for the empty record that ends the stream */
        size_t max = chunked ? (space > 32 ? space - 32 : 0)
                   : fcgi    ? (space > 2 * FCGI_HEADER_LEN ? space - 2 * FCGI_HEADER_LEN : 0)
                             : space;
        if (fcgi && max > FCGI_MAX_CONTENT)
            max = FCGI_MAX_CONTENT;
        slice_t d;
        int rc = r->sess->body_next(r, max, &d);
        if (rc < 0)
            return -1;
        if (rc == 2 && (chunked || fcgi) && !px->body_end_sent) {
            if (fcgi && space < FCGI_HEADER_LEN)
                return 0; /* after the next flush */
            if (fcgi) {
                fcgi_header(iobuf_wr(u->out), FCGI_STDIN, 0);
                u->out->end += FCGI_HEADER_LEN;
            } else {
                put_out(u->out, "0\r\n\r\n", 5);
            }
            px->body_end_sent = true;
        }
        if (rc != 1)
            return 0;
        if (fcgi) {
            fcgi_header(iobuf_wr(u->out), FCGI_STDIN, d.n);
            u->out->end += FCGI_HEADER_LEN;
            put_out(u->out, d.p, d.n);
        } else if (chunked) {
            char size[24];
            int k = snprintf(size, sizeof(size), "%zx\r\n", d.n);
            put_out(u->out, size, (size_t)k);
            put_out(u->out, d.p, d.n);
            put_out(u->out, "\r\n", 2);
        } else {
            put_out(u->out, d.p, d.n);
        }
    }
}

static void feed_body(request_t *r)
{
    proxy_ctx_t *px = ctx_of(r);
    upconn_t *u = px->up;
    if (u == NULL)
        return;
    if (u->out == NULL && (u->out = iobuf_get()) == NULL) {
        r->sess->abort(r, CLOSE_NO_MEMORY);
        return;
    }
    size_t before = iobuf_len(u->out);
    if (move_body(r, u) < 0 || px->up != u)
        return;
    if (!r->tunnel)
        replay_add(px, iobuf_rd(u->out) + before, iobuf_len(u->out) - before);
    if (u->state == US_ACTIVE && iobuf_len(u->out))
        up_flush(u); /* at once: the upstream works while we go on with the batch */
}

/* ---- attempts ------------------------------------------------------------------------------ */

static void arm_timer(upconn_t *u)
{
    request_t *r = u->req;
    const rt_policy_t *p = policy_of(r);
    uint64_t ms = u->state == US_CONNECTING || u->state == US_HANDSHAKE ? p->connect_ms
                : r->tunnel ? TUNNEL_TIMEOUT_MS
                : iobuf_len(u->out) ? p->send_ms : p->read_ms;
    upconn_timer(u, ms);
}

static void attach(request_t *r, upconn_t *u, uint32_t server)
{
    proxy_ctx_t *px = ctx_of(r);
    const rt_table_t *t = &r->table->t;
    u->req = r;
    u->on_event = up_event;
    u->on_timeout = up_timeout;
    u->server = server;
    u->keepalive = t->upstreams[t->servers[server].upstream].keepalive;
    upconn_claim(u, health_slot_of(r->table, server));
    u->fcgi = px->fc != NULL;
    if (u->fcgi && !u->reused)
        upconn_wait_later(u); /* counted if no answer comes soon: see pool.h */
    px->up = u;
    px->server = server;
    if (px->fc) { /* a new attempt: the records of an earlier one are gone */
        memset(&px->fc->dec, 0, sizeof(px->fc->dec));
        px->fc->out->start = 0;
        px->fc->out->end = sizeof(FCGI_HEAD_LINE) - 1;
        memcpy(px->fc->out->data, FCGI_HEAD_LINE, sizeof(FCGI_HEAD_LINE) - 1);
    }
    if (u->state == US_IDLE) {
        u->state = US_ACTIVE;
        ev_set(W->loop, &u->io, EV_READ);
    }
}

/* The request lets go of its upstream connection: pooled when reusable. */
static void detach(request_t *r, bool reusable)
{
    proxy_ctx_t *px = ctx_of(r);
    upconn_t *u = px->up;
    if (u == NULL)
        return;
    px->up = NULL;
    u->req = NULL;
    upconn_unclaim(u);
    if (reusable && u->state == US_ACTIVE && u->head_done && u->keepalive && r->body_done &&
        (!px->fc || px->body_end_sent) && iobuf_len(u->out) == 0 && iobuf_len(u->in) == 0 &&
        u->body != H1_BODY_TUNNEL)
        upool_put(u);
    else
        upconn_close(u);
}

/* The request lets go of u (which is closed). */
static void abandon(upconn_t *u)
{
    ctx_of(u->req)->up = NULL;
    u->req = NULL;
    upconn_close(u);
}

static bool idempotent(unsigned method)
{
    return method == H1_METHOD_GET || method == H1_METHOD_HEAD || method == H1_METHOD_PUT ||
           method == H1_METHOD_DELETE || method == H1_METHOD_OPTIONS || method == H1_METHOD_TRACE;
}

static uint32_t pick(request_t *r, uint64_t tried)
{
    size_t n = r->client_family == 4 ? 4 : r->client_family == 6 ? 16 : 0;
    return balance_pick(r->table, r->table->t.routes[r->route].upstream, r->client_ip, n, tried, ev_now(W->loop));
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
static upconn_t *launch(request_t *r, iobuf_t *out, uint8_t tries, uint64_t tried, uint32_t first, int status,
                        const char *msg)
{
    proxy_ctx_t *px = ctx_of(r);
    const rt_policy_t *p = policy_of(r);
    uint32_t max = p->retry_tries ? p->retry_tries : 1, server = first;
    char why_msg[192];
    for (;;) {
        if (server == RT_NONE && tries < max)
            server = pick(r, tried);
        if (server == RT_NONE)
            break;
        tries++;
        tried |= pos_bit(r->table, server);
        const char *why = NULL;
        upool_t *pl = upool_of(r->table, server);
        upconn_t *u = px->websocket_ok || pl == NULL ? NULL : upool_take(pl);
        if (u == NULL && (u = upconn_connect(r->table, server, pl, &why)) == NULL) {
            px->server = server;
            if (upool_failed(pl, r->table, server, ev_now(W->loop), why)) { /* the name's next address */
                tried &= ~pos_bit(r->table, server);
                tries--;
            }
            snprintf(why_msg, sizeof(why_msg), "connect failed: %s", why);
            status = 502;
            msg = why_msg;
            server = RT_NONE;
            if (!(p->retry_on & RT_ON_ERROR))
                break;
            if (tries < max)
                log_warn("upstream %s (site %s): %s; trying another server",
                         rt_cstr(&r->table->t, r->table->t.servers[px->server].sa.addr), site_name(r), msg);
            continue;
        }
        attach(r, u, server);
        u->tries = tries;
        u->tried = tried;
        iobuf_put(u->out);
        u->out = out;
        return u;
    }
    iobuf_put(out);
    if (msg == NULL) {
        const rt_table_t *t = &r->table->t;
        uint32_t up = t->routes[r->route].upstream;
        const char *name = resolve_unresolved(r->table, up);
        snprintf(why_msg, sizeof(why_msg), "no server of upstream %s is up%s%s%s", rt_cstr(t, t->upstreams[up].name),
                 name ? " (" : "", name ? name : "", name ? ": its host name has not resolved)" : "");
        msg = why_msg;
    }
    fail(r, status, "%s", msg);
    return NULL;
}

/* After a new attempt started: move what the client sent meanwhile and arm
 * its timer (the attempt may already have failed over again). */
static void attempt_go(request_t *r, uint64_t id)
{
    feed_body(r);
    upconn_t *u = r->id == id ? ctx_of(r)->up : NULL;
    if (u && !u->closed && u->req == r)
        arm_timer(u);
}

/* A copy of the replay buffer, or the unsent buffer itself, for the next attempt. */
static iobuf_t *replay_out(upconn_t *u, proxy_ctx_t *px)
{
    iobuf_t *out = NULL;
    if (u->sent == 0) {
        out = u->out;
        u->out = NULL;
    } else if ((out = iobuf_get()) != NULL) {
        memcpy(iobuf_wr(out), px->replay, px->replay_len);
        out->end += (uint32_t)px->replay_len;
    }
    return out;
}

/* Move the request to another server after u failed with cond.  false when
 * the route, the method or what was sent does not allow it, or no other
 * server is up (the caller then answers). */
static bool retry_elsewhere(upconn_t *u, unsigned cond, int status, const char *msg)
{
    request_t *r = u->req;
    proxy_ctx_t *px = ctx_of(r);
    const rt_policy_t *p = policy_of(r);
    if (!(p->retry_on & cond) || u->tries >= p->retry_tries || r->tunnel)
        return false;
    if (u->sent != 0 && !(idempotent(r->method_id) && px->replay))
        return false;
    uint32_t next = pick(r, u->tried);
    if (next == RT_NONE)
        return false;
    iobuf_t *out = replay_out(u, px);
    if (out == NULL)
        return false;
    log_warn("upstream %s (site %s): %s; retrying on %s (attempt %u of %u)", upool_name(u->pool), site_name(r), msg,
             rt_cstr(&r->table->t, r->table->t.servers[next].sa.addr), u->tries + 1u, p->retry_tries);
    uint8_t tries = u->tries;
    uint64_t tried = u->tried, id = r->id;
    abandon(u);
    if (launch(r, out, tries, tried, next, status, msg))
        attempt_go(r, id);
    return true;
}

/* A pooled connection died before its first response byte: replay on a
 * fresh connection to the same server (see the top of the file). */
static bool retry_fresh(upconn_t *u)
{
    request_t *r = u->req;
    proxy_ctx_t *px = ctx_of(r);
    bool bodiless = r->body_done && r->body_bytes == 0;
    if (!u->reused || u->got_bytes || (u->sent != 0 && !(px->replay && (bodiless || idempotent(r->method_id)))))
        return false;
    uint32_t server = u->server;
    uint8_t tries = u->tries;
    uint64_t tried = u->tried, id = r->id;
    iobuf_t *out = replay_out(u, px);
    if (out == NULL)
        return false;
    abandon(u);
    const char *why;
    upool_t *pl = upool_of(r->table, server);
    upconn_t *fresh = upconn_connect(r->table, server, pl, &why);
    if (fresh == NULL) {
        char msg[192];
        snprintf(msg, sizeof(msg), "reconnect failed: %s", why);
        px->server = server;
        upool_failed(pl, r->table, server, ev_now(W->loop), msg);
        if (!(policy_of(r)->retry_on & RT_ON_ERROR)) {
            iobuf_put(out);
            fail(r, 502, "%s", msg);
        } else if (launch(r, out, tries, tried, RT_NONE, 502, msg)) {
            attempt_go(r, id);
        }
        return true;
    }
    attach(r, fresh, server);
    fresh->tries = tries;
    fresh->tried = tried;
    fresh->out = out;
    attempt_go(r, id);
    return true;
}

/* The attempt on u failed (cond: RT_ON_ERROR or RT_ON_TIMEOUT).  Before any
 * response byte reached the client this counts against the server and may
 * move the request elsewhere; after it the client's stream is aborted. */
static void up_failed(upconn_t *u, unsigned cond, int status, const char *fmt, ...)
{
    request_t *r = u->req;
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (u->head_done || r->tunnel) {
        fail(r, status, "%s", msg);
        return;
    }
    if (cond == RT_ON_ERROR && retry_fresh(u))
        return;
    if (upool_failed(u->pool, r->table, u->server, ev_now(W->loop), msg) && u->tries > 0) {
        /* Another address of the server's name is usable: it is the next
         * server of the pool (upstream/resolve.h), not a try of this one. */
        u->tried &= ~pos_bit(r->table, u->server);
        u->tries--;
    }
    if (!retry_elsewhere(u, cond, status, msg))
        fail(r, status, "%s", msg);
}

/* Copy the request head (and, when the route may retry, the start of the
 * body as it is sent) for a replay. */
static void replay_begin(request_t *r, const iobuf_t *out)
{
    proxy_ctx_t *px = ctx_of(r);
    size_t n = iobuf_len(out);
    bool body = !r->body_done;
    if (body && policy_of(r)->retry_tries < 2)
        return;
    /* a bodiless FastCGI request still sends the empty STDIN record that ends its body */
    px->replay_cap = body ? REPLAY_MAX : n + (px->fc ? FCGI_HEADER_LEN : 0);
    if (px->replay_cap > REPLAY_MAX)
        px->replay_cap = REPLAY_MAX; /* what a replay's buffer holds: past it, no replay */
    px->replay = arena_alloc(&r->arena, px->replay_cap);
    memcpy(px->replay, out->data + out->start, n);
    px->replay_len = n;
}

/* ---- request hooks ------------------------------------------------------------------------ */

static void on_body(request_t *r) { feed_body(r); }

static void on_drain(request_t *r)
{
    upconn_t *u = ctx_of(r)->up;
    uint64_t id = r->id;
    if (u == NULL || u->closed)
        return;
    if (!drained(u))
        relay_response(u);
    else if (u->read_paused) {
        u->read_paused = false;
        ev_set(W->loop, &u->io, EV_READ | (iobuf_len(u->out) ? EV_WRITE : 0));
        if (u->ssl && SSL_pending(u->ssl) > 0)
            up_read(u);
    }
    if (r->id == id && r->tunnel && ctx_of(r)->up)
        feed_body(r);
}

static void on_abort(request_t *r) { detach(r, false); }

static void fcgi_cleanup(request_t *r)
{
    proxy_ctx_t *px = ctx_of(r);
    iobuf_put(px->fc->out);
    px->fc->out = NULL;
}

/* A fastcgi route's state: 0, or -1 when the request was answered. */
static int fcgi_start(request_t *r, proxy_ctx_t *px)
{
    if (r->body_length < 0) {
        /* php-fpm reads CONTENT_LENGTH bytes of STDIN and no more: a body of unknown length cannot reach it */
        http_error(r, 411, "a FastCGI request body needs a Content-Length");
        return -1;
    }
    px->fc = arena_alloc(&r->arena, sizeof(*px->fc));
    if ((px->fc->out = iobuf_get()) == NULL) {
        r->sess->abort(r, CLOSE_NO_MEMORY);
        return -1;
    }
    request_cleanup_add(r, fcgi_cleanup);
    return 0;
}

static void proxy_start(request_t *r)
{
    const rt_route_t *rt = &r->table->t.routes[r->route];
    proxy_ctx_t *px = arena_alloc(&r->arena, sizeof(*px));
    px->server = RT_NONE;
    r->ctx[MODULE_CTX_PROXY] = px;
    if (rt->action == RT_ACT_FASTCGI && fcgi_start(r, px) < 0)
        return;
    r->on_body = on_body;
    r->on_drain = on_drain;
    r->on_abort = on_abort;
    px->websocket_ok = r->upgrade && (rt->flags & RT_RF_WEBSOCKET) && r->method_id == H1_METHOD_GET;
    iobuf_t *out = iobuf_get();
    if (out == NULL) {
        r->sess->abort(r, CLOSE_NO_MEMORY);
        return;
    }
    if ((px->fc ? fcgi_build(r, out) : build_head(r, out)) < 0) {
        iobuf_put(out);
        fail(r, 502, "request head too large to forward");
        return;
    }
    replay_begin(r, out);
    uint64_t id = r->id;
    if (launch(r, out, 0, 0, RT_NONE, 503, NULL) == NULL)
        return;
    r->upstream_ms = ev_now(W->loop);
    if (r->expect_continue && !r->body_done)
        r->sess->send_interim(r, 100);
    if (r->id == id)
        attempt_go(r, id);
}

const http_handler_t proxy_handler = {"proxy", proxy_start};
const http_handler_t fastcgi_handler = {"fastcgi", proxy_start};

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

/* The client's response head from the upstream's (its slices are valid
 * while u->in is not consumed, which is through http_send_head). */
static void client_head(request_t *r, const h1_response_t *res, h1_body_t body)
{
    http_resp_init(r, res->status);
    for (size_t i = 0; i < res->nheaders; i++) {
        const h1_header_t *x = &res->headers[i];
        if (!skip_response_header(x))
            http_resp_add(r, x->name.p, x->name.n, x->value.p, x->value.n);
    }
    switch (body) {
    case H1_BODY_TUNNEL: r->resp.body = HTTP_BODY_TUNNEL; break;
    case H1_BODY_LENGTH: r->resp.body = HTTP_BODY_LENGTH; break;
    case H1_BODY_NONE: r->resp.body = HTTP_BODY_NONE; break;
    default: r->resp.body = HTTP_BODY_STREAM; break;
    }
    r->resp.length = body == H1_BODY_LENGTH || body == H1_BODY_NONE ? res->content_length : -1;
    http_send_head(r);
}

/* A status the route's retry.on lists counts against the server; true when
 * the request went on to another server instead (the response is dropped). */
static bool failed_status(upconn_t *u, int status)
{
    request_t *r = u->req;
    unsigned cond = rt_status_cond(status);
    if (cond == 0 || !(policy_of(r)->retry_on & cond))
        return false;
    char msg[48];
    snprintf(msg, sizeof(msg), "answered %d", status);
    upool_failed(u->pool, r->table, u->server, ev_now(W->loop), msg);
    return retry_elsewhere(u, cond, status, msg);
}

/* The response head res, n bytes at the start of in, is parsed: answer the
 * client (or retry, or let the cache answer).  1 when the body phase can
 * start, -1 when the attempt ended. */
static int head_parsed(upconn_t *u, h1_response_t *res, iobuf_t *in, size_t n)
{
    request_t *r = u->req;
    proxy_ctx_t *px = ctx_of(r);
    h1_body_t body = h1_response_body(res, r->head ? H1_METHOD_HEAD : (h1_method_t)r->method_id);
    if (body == H1_BODY_TUNNEL && !(res->status == 101 && px->websocket_ok)) {
        up_failed(u, RT_ON_ERROR, 502, "unexpected %d response", res->status);
        return -1;
    }
    if (failed_status(u, res->status))
        return -1;
    if (r->ctx[MODULE_CTX_CACHE] && cache_upstream_answer(r, res->status, res))
        return -1; /* the cache answers: a stale entry, or the one a 304 revalidated */
    /* (FastCGI: END_REQUEST ends the answer, and FCGI_KEEP_CONN said whether the server keeps the connection) */
    if (!px->fc && (!res->keep_alive || body == H1_BODY_CLOSE))
        u->keepalive = 0;
    observe_latency(ev_now(W->loop) - r->upstream_ms);
    r->upstream_ms = ev_now(W->loop) - r->upstream_ms;
    r->upstream_answered = true;
    u->body = (uint8_t)body;
    px->resp_remain = res->content_length;
    if (body == H1_BODY_CHUNKED)
        h1_chunked_init(&u->chunks);
    client_head(r, res, body);
    if (u->closed)
        return -1;
    iobuf_consume(in, n);
    u->head_done = true;
    return 1;
}

/* Parse the response head in u->in; 1 when the body phase can start, 0 wait, -1 failed. */
static int response_head(upconn_t *u)
{
    for (;;) {
        h1_limits_t lim = {UPSTREAM_HEAD_MAX, IOBUF_SIZE - 1, H1_MAX_HEADERS};
        int n = h1_parse_response(iobuf_rd(u->in), iobuf_len(u->in), W->hres, &lim);
        if (n == 0)
            return 0;
        if (n < 0) {
            up_failed(u, RT_ON_ERROR, 502, "invalid response: %s", W->hres->error);
            return -1;
        }
        h1_response_t *res = W->hres;
        if (res->status >= 100 && res->status < 200 && res->status != 101) {
            iobuf_consume(u->in, (size_t)n); /* interim response: we answered 100-continue ourselves */
            continue;
        }
        return head_parsed(u, res, u->in, (size_t)n);
    }
}

/* The upstream's response is complete: the connection goes back to its
 * pool (when it may) before the client has it all. */
static void response_end(upconn_t *u)
{
    request_t *r = u->req;
    r->on_drain = NULL;
    r->on_abort = NULL;
    r->on_body = NULL;
    detach(r, true);
    http_send_end(r);
}

/* Move as much body as the client side takes; 1 when the body is complete. */
static int move_response(upconn_t *u)
{
    request_t *r = u->req;
    proxy_ctx_t *px = ctx_of(r);
    while (iobuf_len(u->in)) {
        size_t space = http_send_space(r);
        if (space == 0)
            return 0;
        size_t take = iobuf_len(u->in) < space ? iobuf_len(u->in) : space;
        if (u->body == H1_BODY_CHUNKED) {
            size_t used;
            slice_t data;
            int rc = h1_chunked_decode(&u->chunks, iobuf_rd(u->in), take, &used, &data);
            iobuf_consume(u->in, used);
            if (rc == H1_CHUNK_ERROR) {
                fail(r, 502, "invalid chunked body: %s", u->chunks.error);
                return -1;
            }
            if (rc == H1_CHUNK_DATA) {
                http_send_data(r, data.p, data.n);
                if (u->closed || u->req != r)
                    return -1; /* the send ended the request: a filter flushed to a client that had gone */
            }
            if (rc == H1_CHUNK_DONE)
                return 1;
            continue;
        }
        if (u->body == H1_BODY_LENGTH && (uint64_t)px->resp_remain < take)
            take = (size_t)px->resp_remain;
        http_send_data(r, iobuf_rd(u->in), take);
        if (u->closed || u->req != r)
            return -1; /* as above */
        iobuf_consume(u->in, take);
        if (u->body == H1_BODY_LENGTH && (px->resp_remain -= (int64_t)take) == 0)
            return 1;
    }
    return u->body == H1_BODY_NONE || (u->body == H1_BODY_LENGTH && px->resp_remain == 0);
}

/* ---- response: FastCGI records -> the CGI head and body ------------------------------- */

static const char *fcgi_protocol_status(unsigned st)
{
    return st == FCGI_CANT_MPX_CONN ? "cannot multiplex" : st == FCGI_OVERLOADED ? "overloaded"
         : st == FCGI_UNKNOWN_ROLE ? "unknown role" : "refused";
}

/* STDERR of the application: to the error log, a line at a time (a line
 * split over two records is logged as two). */
static void fcgi_stderr(upconn_t *u, const char *p, size_t n)
{
    request_t *r = u->req;
    while (n) {
        const char *nl = memchr(p, '\n', n);
        size_t k = nl ? (size_t)(nl - p) : n, line = k;
        while (line && (p[line - 1] == '\r' || p[line - 1] == ' '))
            line--;
        if (line)
            log_warn("fastcgi %s (site %s): stderr: %.*s", upool_name(u->pool), site_name(r),
                     (int)(line > 2048 ? 2048 : line), p);
        k += nl != NULL;
        p += k;
        n -= k;
    }
}

/* Decode what u->in holds into the STDOUT buffer, as far as it has room:
 * 0, or -1 when the attempt ended (bad records). */
static int fcgi_pump(upconn_t *u)
{
    request_t *r = u->req;
    fcgi_t *fc = ctx_of(r)->fc;
    while (iobuf_len(u->in) && !fc->dec.ended) {
        if (iobuf_space(fc->out) < IOBUF_SIZE / 4 && u->head_done)
            iobuf_compact(fc->out);
        size_t used = 0, outn = fc->out->end, tn;
        const char *text;
        int rc = fcgi_decode(&fc->dec, iobuf_rd(u->in), iobuf_len(u->in), &used, fc->out->data, IOBUF_SIZE, &outn,
                             &text, &tn);
        fc->out->end = (uint32_t)outn;
        if (rc == FCGI_TEXT)
            fcgi_stderr(u, text, tn);
        iobuf_consume(u->in, used);
        if (rc == FCGI_ERROR) {
            if (u->head_done) {
                log_err("fastcgi %s (site %s): invalid record: %s", upool_name(u->pool), site_name(r), fc->dec.error);
                r->sess->abort(r, CLOSE_UPSTREAM);
            } else {
                up_failed(u, RT_ON_ERROR, 502, "invalid FastCGI record: %s", fc->dec.error);
            }
            return -1;
        }
        if (rc == FCGI_MORE)
            break; /* all taken, or no room */
    }
    return 0;
}

/* The CGI head (behind our own status line, see fcgi_t): 1 when the body
 * phase can start, 0 wait, -1 failed. */
static int fcgi_head(upconn_t *u)
{
    request_t *r = u->req;
    fcgi_t *fc = ctx_of(r)->fc;
    h1_limits_t lim = {UPSTREAM_HEAD_MAX + sizeof(FCGI_HEAD_LINE) - 1, IOBUF_SIZE - 1, H1_MAX_HEADERS};
    h1_response_t *res = W->hres;
    int n = h1_parse_response(iobuf_rd(fc->out), iobuf_len(fc->out), res, &lim);
    if (n == 0 && fc->dec.ended) {
        if (fc->dec.protocol_status != FCGI_REQUEST_COMPLETE)
            up_failed(u, RT_ON_ERROR, 502, "the FastCGI server refused the request (%s)",
                      fcgi_protocol_status(fc->dec.protocol_status));
        else
            up_failed(u, RT_ON_ERROR, 502, "ended the request without a complete response head (%u bytes of output)",
                      (unsigned)(iobuf_len(fc->out) - (sizeof(FCGI_HEAD_LINE) - 1)));
        return -1;
    }
    if (n == 0 && iobuf_space(fc->out) == 0) { /* (the parser refuses a head over lim first) */
        up_failed(u, RT_ON_ERROR, 502, "response head larger than %d bytes", UPSTREAM_HEAD_MAX);
        return -1;
    }
    if (n == 0)
        return 0;
    if (n < 0 || res->chunked) {
        up_failed(u, RT_ON_ERROR, 502, "invalid FastCGI response head: %s",
                  n < 0 ? res->error : "Transfer-Encoding from a CGI application");
        return -1;
    }
    int status = 0;
    bool location = false;
    size_t k = 0;
    for (size_t i = 0; i < res->nheaders; i++) {
        const h1_header_t *x = &res->headers[i];
        if (x->name.n == 6 && strncasecmp(x->name.p, "Status", 6) == 0) {
            if ((status = fcgi_status_value(x->value.p, x->value.n)) < 200 || status > 599) {
                up_failed(u, RT_ON_ERROR, 502, "invalid FastCGI response head: Status '%.*s'", (int)x->value.n,
                          x->value.p);
                return -1;
            }
            continue;
        }
        location |= x->name.n == 8 && strncasecmp(x->name.p, "Location", 8) == 0;
        res->headers[k++] = *x;
    }
    res->nheaders = k;
    res->status = status ? status : location ? 302 : 200; /* RFC 3875 §6.2.3: a client redirect */
    return head_parsed(u, res, fc->out, (size_t)n);
}

/* Move STDOUT to the client; what lies beyond a Content-Length, or any body
 * of a bodiless answer (HEAD, 204, 304), is dropped.  1 when the answer is
 * complete (END_REQUEST taken), 0 wait, -1 the request ended. */
static int move_fcgi(upconn_t *u)
{
    request_t *r = u->req;
    proxy_ctx_t *px = ctx_of(r);
    iobuf_t *in = px->fc->out;
    while (iobuf_len(in)) {
        size_t take = iobuf_len(in);
        if (u->body == H1_BODY_NONE || (u->body == H1_BODY_LENGTH && px->resp_remain == 0)) {
            iobuf_consume(in, take);
            break;
        }
        size_t space = http_send_space(r);
        if (space == 0)
            return 0;
        if (take > space)
            take = space;
        if (u->body == H1_BODY_LENGTH && (uint64_t)px->resp_remain < take)
            take = (size_t)px->resp_remain;
        http_send_data(r, iobuf_rd(in), take);
        if (u->closed || u->req != r)
            return -1; /* the send ended the request: a filter flushed to a client that had gone */
        iobuf_consume(in, take);
        if (u->body == H1_BODY_LENGTH)
            px->resp_remain -= (int64_t)take;
    }
    if (!px->fc->dec.ended)
        return 0;
    if (u->body == H1_BODY_LENGTH && px->resp_remain > 0) {
        log_err("fastcgi %s (site %s): the response ended %lld bytes short of its Content-Length", upool_name(u->pool),
                site_name(r), (long long)px->resp_remain);
        r->sess->abort(r, CLOSE_UPSTREAM);
        return -1;
    }
    return 1;
}

/* Nothing of the response is left to move: neither raw bytes nor, for
 * FastCGI, decoded ones. */
static bool drained(const upconn_t *u)
{
    const fcgi_t *fc = ctx_of(u->req)->fc;
    return iobuf_len(u->in) == 0 && (fc == NULL || iobuf_len(fc->out) == 0);
}

static void relay_response(upconn_t *u)
{
    request_t *r = u->req;
    fcgi_t *fc = ctx_of(r)->fc;
    if (fc && fcgi_pump(u) < 0)
        return;
    if (!u->head_done && (fc ? fcgi_head(u) : response_head(u)) <= 0)
        return;
    int pending = 0;
    for (;;) {
        int done = fc ? move_fcgi(u) : move_response(u);
        if (done < 0 || u->closed || u->req != r)
            return;
        if (done == 1 && u->body != H1_BODY_TUNNEL) {
            if (iobuf_len(u->in))
                u->keepalive = 0; /* bytes after the response: do not trust this connection */
            response_end(u);
            return;
        }
        /* The origin's pace: all it sent is out and it has nothing more now,
         * so a filter holding bytes back (compression) lets them go. */
        if (drained(u) && ctx_of(r)->upstream_idle) {
            http_send_flush(r);
            if (u->closed || u->req != r)
                return;
        }
        if ((pending = r->sess->flush(r)) < 0 || u->closed)
            return;
        /* Output still pending matters only when nothing more is taken now:
         * a buffering filter (filters/spool.c) takes what the client is
         * behind on, so the upstream is read at its own pace to its end. */
        if (pending && http_send_space(r) > 0)
            pending = 0;
        if (pending || drained(u))
            break; /* the client is behind, or everything read so far is out */
        if (fc && fcgi_pump(u) < 0)
            return;
    }
    /* Backpressure: stop reading the upstream while the client has not taken the last buffer. */
    u->read_paused = pending > 0;
    if (u->in && iobuf_space(u->in) < IOBUF_SIZE / 4)
        iobuf_compact(u->in);
    ev_set(W->loop, &u->io, (u->read_paused ? 0 : EV_READ) | (iobuf_len(u->out) ? EV_WRITE : 0));
    arm_timer(u);
}

/* ---- upstream events --------------------------------------------------------------------- */

static void upstream_eof(upconn_t *u)
{
    request_t *r = u->req;
    fcgi_t *fc = ctx_of(r)->fc;
    if (fc && !u->head_done && fc->dec.ended) {
        relay_response(u); /* all it had to say came before the close */
        return;
    }
    if (!u->head_done) {
        up_failed(u, RT_ON_ERROR, 502, "%s", u->got_bytes ? "closed in the middle of the response head"
                                                          : "closed the connection without responding");
        return;
    }
    if (fc) {
        if (fc->dec.ended) { /* the answer is complete and waits for the client: stop reading */
            u->keepalive = 0;
            u->read_paused = true;
            ev_set(W->loop, &u->io, 0);
            return;
        }
        log_err("fastcgi %s (site %s): closed before the end of the request, after %llu bytes of the response body",
                upool_name(u->pool), site_name(r), (unsigned long long)(r->conn->bytes_out - r->bytes_at_start));
        r->sess->abort(r, CLOSE_UPSTREAM);
        return;
    }
    if (u->body == H1_BODY_CLOSE) {
        u->keepalive = 0;
        if (move_response(u) >= 0 && !u->closed)
            response_end(u);
        return;
    }
    if (u->body == H1_BODY_TUNNEL) {
        r->sess->flush(r);
        if (!u->closed)
            r->sess->abort(r, CLOSE_UPSTREAM);
        return;
    }
    log_err("upstream %s (site %s): closed after %llu bytes of the response body", upool_name(u->pool),
            site_name(r), (unsigned long long)(r->conn->bytes_out - r->bytes_at_start));
    r->sess->abort(r, CLOSE_UPSTREAM);
}

static int up_flush(upconn_t *u)
{
    while (iobuf_len(u->out)) {
        ssize_t n = upconn_io(u, true, iobuf_rd(u->out), iobuf_len(u->out));
        if (n == -1)
            break;
        if (n < 0) {
            up_failed(u, RT_ON_ERROR, 502, "send failed: %s", strerror(errno));
            return -1;
        }
        u->sent += (uint64_t)n;
        iobuf_consume(u->out, (size_t)n);
    }
    request_t *r = u->req;
    if (iobuf_len(u->out) == 0 && (!r->body_done || r->tunnel || more_to_send(ctx_of(r))))
        feed_body(r);
    if (!u->closed && u->req)
        ev_set(W->loop, &u->io, (u->read_paused ? 0 : EV_READ) | (u->out && iobuf_len(u->out) ? EV_WRITE : 0));
    return 0;
}

static void up_read(upconn_t *u)
{
    if (u->in == NULL && (u->in = iobuf_get()) == NULL) {
        u->req->sess->abort(u->req, CLOSE_NO_MEMORY);
        return;
    }
    if (iobuf_space(u->in) == 0)
        iobuf_compact(u->in);
    if (iobuf_space(u->in) == 0) {
        if (!u->head_done)
            up_failed(u, RT_ON_ERROR, 502, "response head larger than %d bytes", IOBUF_SIZE);
        return;
    }
    size_t asked = iobuf_space(u->in);
    ssize_t n = upconn_io(u, false, iobuf_wr(u->in), asked);
    if (n == -1)
        return;
    if (n <= 0) {
        if (n < 0)
            log_warn("upstream %s: read: %s", upool_name(u->pool), u->ssl ? tls_error() : strerror(errno));
        upstream_eof(u);
        return;
    }
    u->got_bytes = true;
    upconn_wait(u, false);
    u->in->end += (uint32_t)n;
    ctx_of(u->req)->upstream_idle = (size_t)n < asked && !(u->ssl && SSL_pending(u->ssl) > 0);
    relay_response(u);
    /* Decrypted bytes the TLS layer still holds raise no epoll event. */
    if (!u->closed && u->req && u->ssl && !u->read_paused && SSL_pending(u->ssl) > 0)
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
    request_t *r = u->req;
    uint32_t up = r->table->t.servers[u->server].upstream;
    if (tls_upstream_on(r->table, up)) {
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

static bool live(const upconn_t *u) { return !u->closed && u->req != NULL; }

static void up_event(upconn_t *u, uint32_t revents)
{
    if (!live(u))
        return;
    if (u->state == US_CONNECTING)
        connected(u);
    if (live(u) && u->state == US_HANDSHAKE)
        up_handshake(u);
    if (!live(u) || u->state != US_ACTIVE)
        return;
    if ((revents & EV_WRITE) && up_flush(u) < 0)
        return;
    if (live(u) && (revents & (EV_READ | EV_HUP | EV_ERROR)) && !u->read_paused)
        up_read(u);
    if (live(u) && ctx_of(u->req)->up == u)
        arm_timer(u);
}

/* The upstream waited on the client: a client that stopped reading is the
 * client's timeout, not the upstream's (the server is not counted as failed). */
static void client_stalled(request_t *r, uint32_t ms)
{
    char peer[VARS_PEER_MAX];
    vars_client(r, peer);
    log_warn("client %s (site %s): send timed out after %ums: the client stopped reading the response", peer,
             site_name(r), ms);
    r->sess->abort(r, CLOSE_SEND_TIMEOUT);
}

static void up_timeout(upconn_t *u)
{
    request_t *r = u->req;
    const rt_policy_t *p = policy_of(r);
    if (u->state == US_CONNECTING)
        up_failed(u, RT_ON_TIMEOUT, 504, "connect timed out after %ums", p->connect_ms);
    else if (u->state == US_HANDSHAKE)
        up_failed(u, RT_ON_TIMEOUT, 504, "TLS handshake timed out after %ums", p->connect_ms);
    else if (r->tunnel)
        r->sess->abort(r, CLOSE_TUNNEL_IDLE);
    else if (u->read_paused)
        client_stalled(r, p->read_ms);
    else if (iobuf_len(u->out))
        up_failed(u, RT_ON_TIMEOUT, 504, "send timed out after %ums", p->send_ms);
    else
        up_failed(u, RT_ON_TIMEOUT, 504, "read timed out after %ums", p->read_ms);
}

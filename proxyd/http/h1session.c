/*
 * h1session.c - the HTTP/1.1 protocol session (RFC 9112): request heads
 * out of the connection's bytes, request bodies decoded (length or
 * chunked), responses framed (Content-Length, chunked, or the close for
 * HTTP/1.0), keep-alive and pipelining, 100-continue, upgrades.
 *
 *   IDLE --bytes--> HEAD --head parsed--> BUSY (one request: phases, handler,
 *   response) --response complete--> IDLE (keep-alive) | linger/close
 *
 * One request at a time: pipelined requests wait in c->in and are parsed
 * when the previous response is complete.  A head is parsed again only
 * when new bytes may complete it (h1_head_ready), not on every read.
 */
#include "http/h1session.h"

#include <stdio.h>
#include <string.h>

#include "../common/log.h"
#include "http/h2session.h"
#include "http/vars.h"

enum h1_state { H1_IDLE, H1_HEAD, H1_BUSY };

/* Draining (stop or binary upgrade): a connection between requests gets a
 * short grace instead of an abrupt close, so a client that is sending its
 * next request right now is answered (with Connection: close) rather than
 * reset; connections that stay quiet are closed when it ends. */
#define DRAIN_IDLE_GRACE_MS 1000

typedef struct {
    request_t *req;
    uint32_t scanned;           /* h1_head_ready resume offset of the head being read */
    uint8_t state;              /* h1_state */
    bool partial;               /* a parse of this head found it incomplete */
} h1_session_t;

_Static_assert(sizeof(h1_session_t) <= CONN_SESSION_INLINE, "the HTTP/1.1 session lives inside the connection");

/* Per request, in its arena. */
typedef struct {
    h1_chunked_t chunks;        /* request body decoder when chunked */
    int64_t remain;             /* request body bytes left when its length is known */
    uint64_t wait_since;        /* ms: waiting for body bytes from the client since (0: not waiting) */
    uint64_t waited_ms;         /* time the client was waited on for its body, so far */
    bool chunked_out;           /* the response is sent chunked */
} h1_stream_t;

static const http_session_ops_t h1_http_ops;
static void process(conn_t *c);

static h1_session_t *sess_of(conn_t *c) { return conn_session(c); }

static size_t head_limit(void)
{
    size_t lim = W->table->t.global->max_header_size;
    /* One byte short of the buffer, so a head that fills it is refused (431), never stuck. */
    return lim > IOBUF_SIZE - 1 ? IOBUF_SIZE - 1 : lim;
}

/* ---- request body ------------------------------------------------------------------ */

/* Who reads the client now: the body's consumer takes what c->in holds
 * before more is read; a complete body lets pipelined bytes in. */
static void body_flow(conn_t *c, request_t *r)
{
    if (c->closed)
        return;
    bool held = iobuf_len(c->in) > 0;
    if (r->tunnel) {
        conn_pause_read(c, held);
    } else if (!r->body_done) {
        h1_stream_t *st = r->stream;
        conn_pause_read(c, held);
        conn_timer(c, W->table->t.global->body_timeout_ms);
        if (!held && st->wait_since == 0)
            st->wait_since = ev_now(W->loop);
    } else {
        conn_timer_stop(c);
        conn_pause_read(c, false);
    }
}

static int body_chunk(request_t *r, h1_stream_t *st, size_t max, slice_t *data)
{
    conn_t *c = r->conn;
    while (iobuf_len(c->in)) {
        size_t in = iobuf_len(c->in) < max ? iobuf_len(c->in) : max, used;
        int rc = h1_chunked_decode(&st->chunks, iobuf_rd(c->in), in, &used, data);
        iobuf_consume(c->in, used);
        if (rc == H1_CHUNK_ERROR) {
            const char *site = r->site == RT_NONE ? "-" : rt_cstr(&r->table->t, r->table->t.sites[r->site].name);
            log_warn("client request body (site %s): %s", site, st->chunks.error);
            http_error(r, 400, NULL);
            return -1;
        }
        if (rc == H1_CHUNK_DONE) {
            r->body_done = true;
            return 2;
        }
        if (rc == H1_CHUNK_DATA) {
            r->body_bytes += data->n;
            if (r->max_body && r->body_bytes > r->max_body) {
                http_error(r, 413, NULL);
                return -1;
            }
            return 1;
        }
        if (used == 0)
            break;
    }
    return 0;
}

/* limits.body_min_rate: the time the client was waited on counts, not the
 * time the consumer (a slow upstream) held the body back.  Within
 * body_timeout any pace goes (a slow start is not a slow upload); after it
 * a client that has not kept up the rate on average is cut off (408), so a
 * 1 byte/s upload ends instead of holding its connection for hours. */
static bool body_too_slow(request_t *r, h1_stream_t *st)
{
    const rt_global_t *g = W->table->t.global;
    if (st->wait_since) {
        st->waited_ms += ev_now(W->loop) - st->wait_since;
        st->wait_since = 0;
    }
    return g->body_min_rate && st->waited_ms > g->body_timeout_ms &&
           r->body_bytes * 1000 < (uint64_t)g->body_min_rate * st->waited_ms;
}

static int body_next(request_t *r, size_t max, slice_t *data)
{
    conn_t *c = r->conn;
    h1_stream_t *st = r->stream;
    int rc = 0;
    if (c->closed)
        return -1;
    if (r->tunnel || (!r->body_done && r->body_length >= 0)) {
        size_t k = iobuf_len(c->in) < max ? iobuf_len(c->in) : max;
        if (!r->tunnel && (uint64_t)st->remain < k)
            k = (size_t)st->remain;
        if (k) {
            *data = (slice_t){iobuf_rd(c->in), k};
            iobuf_consume(c->in, k);
            rc = 1;
            if (!r->tunnel) {
                r->body_bytes += k;
                r->body_done = (st->remain -= (int64_t)k) == 0;
            }
        }
    } else if (r->body_done) {
        return 2;
    } else if (max) {
        rc = body_chunk(r, st, max, data);
        if (rc < 0)
            return rc;
    }
    if (rc == 1 && !r->tunnel && body_too_slow(r, st)) {
        static log_limit_t limit;
        unsigned long quiet;
        char peer[VARS_PEER_MAX];
        if (log_limited(&limit, &quiet)) {
            vars_client(r, peer);
            log_warn("client %s: request body too slow: %llu bytes in %llu ms, under limits.body_min_rate (%u bytes/s)",
                     peer, (unsigned long long)r->body_bytes, (unsigned long long)st->waited_ms,
                     W->table->t.global->body_min_rate);
        }
        http_error(r, 408, NULL);
        return -1;
    }
    body_flow(c, r);
    return rc;
}

/* ---- response ----------------------------------------------------------------------- */

static char *put(char *o, const char *p, size_t n)
{
    memcpy(o, p, n);
    return o + n;
}
#define PUT_LIT(o, lit) put((o), (lit), sizeof(lit) - 1)

/* The framing fields: how the client learns where the body ends. */
static char *put_framing(request_t *r, char *o)
{
    h1_stream_t *st = r->stream;
    const http_resp_t *p = &r->resp;
    if (p->body == HTTP_BODY_TUNNEL) {
        r->tunnel = true;
        return PUT_LIT(o, "Connection: upgrade\r\nUpgrade: websocket\r\n\r\n");
    }
    if (p->length >= 0 && (p->body == HTTP_BODY_LENGTH || p->body == HTTP_BODY_NONE)) {
        o = PUT_LIT(o, "Content-Length: ");
        o += fmt_u64(o, (uint64_t)p->length);
        o = PUT_LIT(o, "\r\n");
    }
    if (p->body == HTTP_BODY_STREAM && !r->http10) {
        st->chunked_out = true; /* re-framed: the client always learns where the body ends */
        o = PUT_LIT(o, "Transfer-Encoding: chunked\r\n");
    } else if (p->body == HTTP_BODY_STREAM) {
        r->keep_alive = false; /* HTTP/1.0 has no chunked coding: the close delimits */
    }
    /* Answered without reading its body, which would then be parsed as the
     * next request (smuggling): close after the response instead. */
    if (W->draining || (!r->body_done && r->on_body == NULL))
        r->keep_alive = false;
    if (!r->keep_alive)
        o = PUT_LIT(o, "Connection: close\r\n");
    return PUT_LIT(o, "\r\n");
}

/* The head is laid out in place in c->out when it fits (the common case),
 * else in the arena and then queued. */
static void send_head(request_t *r)
{
    conn_t *c = r->conn;
    const http_resp_t *p = &r->resp;
    const char *reason = http_status_reason(p->status), *date = worker_date();
    size_t rn = strlen(reason), dn = strlen(date), need = 13 + rn + 2 + dn + 160;
    for (uint32_t i = 0; i < p->nfields; i++)
        need += p->fields[i].name.n + p->fields[i].value.n + 4;
    if (need > conn_out_space(c)) {
        /* Never a head cut short: a response only starts once the last one is out, so
         * this is a head larger than the buffer (the proxy refuses such upstream heads). */
        log_err("%.*s %.*s: a response head of %zu bytes does not fit the output buffer; closing", (int)r->method.n,
                r->method.p, (int)r->target.n, r->target.p, need);
        conn_close(c, CLOSE_ABORTED);
        return;
    }
    char *base = iobuf_wr(c->out), *o = base;
    o = PUT_LIT(o, "HTTP/1.1 ");
    *o++ = (char)('0' + p->status / 100 % 10);
    *o++ = (char)('0' + p->status / 10 % 10);
    *o++ = (char)('0' + p->status % 10);
    *o++ = ' ';
    o = put(o, reason, rn);
    o = PUT_LIT(o, "\r\n");
    o = put(o, date, dn);
    for (uint32_t i = 0; i < p->nfields; i++) {
        const h1_header_t *f = &p->fields[i];
        o = put(o, f->name.p, f->name.n);
        o = PUT_LIT(o, ": ");
        o = put(o, f->value.p, f->value.n);
        o = PUT_LIT(o, "\r\n");
    }
    o = put_framing(r, o);
    c->out->end += (uint32_t)(o - base);
}

static size_t send_space(request_t *r)
{
    size_t space = conn_out_space(r->conn);
    return space < 64 ? 0 : space - 32;
}

static void send_data(request_t *r, const char *p, size_t n)
{
    conn_t *c = r->conn;
    h1_stream_t *st = r->stream;
    if (st->chunked_out) {
        char size[24];
        int k = snprintf(size, sizeof(size), "%zx\r\n", n);
        conn_write(c, size, (size_t)k);
        conn_write(c, p, n);
        CONN_LIT(c, "\r\n");
    } else {
        conn_write(c, p, n);
    }
}

static void send_file(request_t *r, int fd, uint64_t off, uint64_t len) { conn_send_file(r->conn, fd, off, len); }

static void finish(conn_t *c);

static void send_end(request_t *r)
{
    conn_t *c = r->conn;
    h1_stream_t *st = r->stream;
    if (st->chunked_out)
        CONN_LIT(c, "0\r\n\r\n");
    r->response_done = true;
    if (conn_flush(c) < 0)
        return;
    if (!conn_pending(c))
        finish(c);
}

static int flush(request_t *r)
{
    if (conn_flush(r->conn) < 0)
        return -1;
    return conn_pending(r->conn) ? 1 : 0;
}

static void send_interim(request_t *r, int status)
{
    conn_t *c = r->conn;
    if (status == 100)
        CONN_LIT(c, "HTTP/1.1 100 Continue\r\n\r\n");
    conn_flush(c);
}

static void abort_stream(request_t *r, conn_close_reason_t why) { conn_close(r->conn, why); }

/* Nothing of this response was written yet, and c->out holds nothing older
 * (a response starts on an empty buffer): drop it. */
static bool retract(request_t *r)
{
    conn_t *c = r->conn;
    h1_stream_t *st = r->stream;
    if (c->bytes_out != r->bytes_at_start || r->response_done || r->tunnel)
        return false;
    iobuf_put(c->out);
    c->out = NULL;
    st->chunked_out = false;
    r->response_started = false;
    return true;
}

static const http_session_ops_t h1_http_ops = {
    .proto = "HTTP/1.1",
    .send_head = send_head,
    .send_space = send_space,
    .send_data = send_data,
    .send_file = send_file,
    .send_end = send_end,
    .flush = flush,
    .send_interim = send_interim,
    .body_next = body_next,
    .abort = abort_stream,
    .retract = retract,
};

/* ---- requests one after another -------------------------------------------------------- */

static void go_idle(conn_t *c, h1_session_t *s)
{
    s->state = H1_IDLE;
    s->scanned = 0;
    s->partial = false;
    c->read_paused = false;
    conn_timer(c, W->table->t.global->keepalive_timeout_ms);
    if (iobuf_len(c->in)) {
        process(c); /* a pipelined request is waiting */
        return;
    }
    iobuf_put(c->in); /* an idle connection holds no buffer */
    c->in = NULL;
    conn_want_read(c, true);
}

static void finish(conn_t *c)
{
    h1_session_t *s = sess_of(c);
    request_t *r = s->req;
    bool keep = r->keep_alive && !W->draining && !r->tunnel && r->body_done;
    /* Linger only when the client may still be sending: an unread body, bytes
     * we hold, or a refused request.  A plain Connection: close just closes. */
    bool may_send = !r->body_done || iobuf_len(c->in) || r->status >= 400;
    r->resp_bytes = c->bytes_out - r->bytes_at_start;
    s->req = NULL;
    request_finish(r);
    if (!keep) {
        if (may_send)
            conn_linger(c);
        else
            conn_close(c, CLOSE_DONE);
        return;
    }
    go_idle(c, s);
}

static request_t *start_request(conn_t *c, h1_session_t *s)
{
    request_t *r = request_new(c, &h1_http_ops);
    if (r == NULL) {
        conn_close(c, CLOSE_NO_MEMORY);
        return NULL;
    }
    r->stream = arena_alloc(&r->arena, sizeof(h1_stream_t));
    r->bytes_at_start = c->bytes_out;
    s->req = r;
    return r;
}

/* Hand a parsed head (n bytes of c->in) to a new request and run it. */
static void dispatch(conn_t *c, h1_session_t *s, request_t *r, size_t n)
{
    h1_stream_t *st = r->stream;
    s->state = H1_BUSY;
    conn_timer_stop(c);
    request_set_head(r, W->hreq, n);
    if (W->hreq->chunked)
        h1_chunked_init(&st->chunks);
    st->remain = r->body_length > 0 ? r->body_length : 0;
    iobuf_consume(c->in, n);
    c->want_read = false; /* epoll hears of it with the next change (a flush, or below) */
    uint64_t id = r->id;
    request_run(r);
    /* The handler reads the body (or a tunnel) while it answers; the request
     * may also be over already, and a pipelined one running. */
    if (!c->closed && s->req && s->req->id == id && s->req->on_body && !s->req->response_done) {
        conn_want_read(c, true);
        if (!s->req->body_done || c->read_paused)
            body_flow(c, s->req);
    }
}

/* A head refused by the parser (400, 414, 431, 501, 505) is logged with its
 * reason and the client, at most once a second. */
static void refused(const conn_t *c, const h1_request_t *h)
{
    static log_limit_t limit;
    unsigned long quiet;
    char peer[VARS_PEER_MAX], more[64] = "";
    if (!log_limited(&limit, &quiet))
        return;
    vars_peer(c, peer);
    if (quiet)
        snprintf(more, sizeof(more), " (%lu more since the last such line)", quiet);
    log_warn("client %s: request refused with %d: %s%s", peer, h->status, h->error, more);
}

/* Parse and dispatch every complete request head in c->in, one at a time. */
static void process(conn_t *c)
{
    h1_session_t *s = sess_of(c);
    while (!c->closed && s->state != H1_BUSY) {
        if (iobuf_len(c->in) == 0) {
            iobuf_put(c->in);
            c->in = NULL;
            conn_want_read(c, true);
            return;
        }
        if (s->state == H1_IDLE) {
            s->state = H1_HEAD;
            s->scanned = 0;
            s->partial = false;
            conn_timer(c, W->table->t.global->header_timeout_ms);
        }
        size_t limit = head_limit(), scanned = s->scanned;
        /* Most heads arrive whole and are parsed once; one that did not is
         * parsed again only when the new bytes may complete it. */
        if (s->partial) {
            bool ready = h1_head_ready(iobuf_rd(c->in), iobuf_len(c->in), &scanned, limit);
            s->scanned = (uint32_t)scanned;
            if (!ready) {
                conn_want_read(c, true);
                return;
            }
        }
        const rt_global_t *g = W->table->t.global;
        h1_limits_t lim = {limit, g->max_uri_size, g->max_headers ? g->max_headers : H1_MAX_HEADERS};
        int n = h1_parse_request(iobuf_rd(c->in), iobuf_len(c->in), W->hreq, &lim);
        if (n == 0) {
            s->partial = true;
            conn_want_read(c, true);
            return;
        }
        request_t *r = start_request(c, s);
        if (r == NULL)
            return;
        if (n < 0) {
            refused(c, W->hreq);
            s->state = H1_BUSY;
            r->keep_alive = false;
            r->body_done = true; /* nothing of it will be read: the connection closes */
            conn_want_read(c, false);
            http_error(r, W->hreq->status, W->hreq->error);
            return;
        }
        dispatch(c, s, r, (size_t)n);
    }
}

/* ---- connection events ------------------------------------------------------------------ */

static void on_open(conn_t *c)
{
    h1_session_t *s = sess_of(c);
    memset(s, 0, sizeof(*s));
    W->stats->conns_h1++;
    c->want_read = true;
    conn_read(c);
}

static void on_read(conn_t *c, ssize_t n)
{
    h1_session_t *s = sess_of(c);
    request_t *r = s->req;
    if (s->state != H1_BUSY) {
        if (n == 0 || n == -2)
            conn_close(c, n == 0 ? CLOSE_CLIENT_EOF : CLOSE_CLIENT_ERROR);
        else
            process(c);
        return;
    }
    if (r == NULL || r->on_body == NULL) {
        if (n == 0 || n == -2)
            conn_close(c, n == 0 ? CLOSE_CLIENT_EOF : CLOSE_CLIENT_ERROR);
        else
            conn_want_read(c, false);
        return;
    }
    uint64_t id = r->id;
    r->on_body(r); /* also lets the handler see EOF on a half-closed client */
    if (c->closed || s->req == NULL || s->req->id != id)
        return;
    if (n == 0 || n == -2) {
        if (r->tunnel || !r->body_done)
            conn_close(c, n == 0 ? CLOSE_CLIENT_EOF : CLOSE_CLIENT_ERROR);
        else
            conn_pause_read(c, true);
        return;
    }
    body_flow(c, r);
}

static void on_writable(conn_t *c)
{
    request_t *r = sess_of(c)->req;
    if (r == NULL)
        return;
    if (r->response_done && !r->tunnel)
        finish(c);
    else
        http_drained(r);
}

static void on_timeout(conn_t *c)
{
    h1_session_t *s = sess_of(c);
    switch (s->state) {
    case H1_HEAD:
        if (iobuf_len(c->in)) {
            request_t *r = s->req ? s->req : start_request(c, s);
            if (r == NULL)
                return;
            s->state = H1_BUSY;
            r->keep_alive = false;
            r->body_done = true;
            conn_want_read(c, false);
            http_error(r, 408, NULL);
            return;
        }
        conn_close(c, W->draining ? CLOSE_DRAIN : CLOSE_HEADER_TIMEOUT);
        return;
    case H1_IDLE: /* before any request it was the header timeout armed at accept */
        conn_close(c, W->draining ? CLOSE_DRAIN : c->bytes_out ? CLOSE_KEEPALIVE_TIMEOUT : CLOSE_HEADER_TIMEOUT);
        return;
    default:
        if (s->req && !s->req->body_done && !s->req->tunnel) {
            http_error(s->req, 408, "client body timeout");
            return;
        }
        conn_close(c, CLOSE_SEND_TIMEOUT);
        return;
    }
}

static void on_close(conn_t *c, conn_close_reason_t reason)
{
    h1_session_t *s = sess_of(c);
    request_t *r = s->req;
    (void)reason;
    if (r == NULL)
        return;
    s->req = NULL;
    r->resp_bytes = c->bytes_out - r->bytes_at_start;
    request_finish(r);
}

static void on_drain(conn_t *c)
{
    h1_session_t *s = sess_of(c);
    if (s->state == H1_IDLE || (s->state == H1_HEAD && iobuf_len(c->in) == 0))
        conn_timer(c, DRAIN_IDLE_GRACE_MS);
}

const conn_session_ops_t h1_session_ops = {
    .name = "http/1.1",
    .on_open = on_open,
    .on_read = on_read,
    .on_writable = on_writable,
    .on_timeout = on_timeout,
    .on_close = on_close,
    .on_drain = on_drain,
};

/* Once per connection: ALPN "h2", or a plain listener taking prior
 * knowledge, goes to HTTP/2; everything else is HTTP/1.1. */
const conn_session_ops_t *http_select_session(conn_t *c)
{
    const conn_session_ops_t *h2 = h2_select_session(c);
    return h2 ? h2 : &h1_session_ops;
}

static int h1_worker_init(void)
{
    conn_set_selector(http_select_session);
    return 0;
}

const module_t h1_session_module = {.name = "http/1.1", .worker_init = h1_worker_init};

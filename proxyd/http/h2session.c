/*
 * h2session.c - the HTTP/2 protocol session (RFC 9113) for clients.
 *
 * nghttp2 does the framing, HPACK and the flow-control bookkeeping; this
 * file connects it to the transport (c->in, c->out) and to requests.  Each
 * client stream becomes a request_t framed by h2_http_ops and runs the
 * same phases, handlers and filters as an HTTP/1.1 request: its head is
 * handed over as the HTTP/1.1 head it stands for (pseudo-header fields
 * turned into a request line and Host, cookies joined, RFC 9113 §8.2.3)
 * and parsed by the strict HTTP/1.1 parser, so both protocols apply one
 * set of rules and the HTTP/1.1 path stays untouched.
 *
 *   client bytes --mem_recv--> callbacks: streams, heads, DATA --> todo list
 *   todo list --> request_run / on_body / http_drained (never inside nghttp2)
 *   handlers --> per-stream buffers --> data provider --> session_send --> c->out
 *
 * Bounds (nothing grows with what a client sends):
 *  - c->out: nghttp2 writes into it only while it has room (WOULDBLOCK
 *    otherwise), so the connection's output is one buffer.
 *  - response: a stream holds at most one buffer (send_space is its room;
 *    a handler waits for on_drain) or a file it reads with pread as the
 *    client's window allows; a stalled window is reset after body_timeout.
 *  - request bodies: a stream holds at most its receive window; window
 *    updates follow what the handler takes (nghttp2_session_consume_stream),
 *    so a slow upstream stalls its stream, not the connection.
 *  - heads: max_header_size, as HTTP/1.1 (the 431 of HTTP/2); decoded
 *    header bytes beyond H2_HPACK_FACTOR times that end the connection.
 *  - rapid reset (CVE-2023-44487): a token bucket of RST_STREAMs per
 *    connection; CONTINUATION, SETTINGS and PING floods: nghttp2 options.
 *
 * WebSocket (RFC 8441): an extended CONNECT is handed over as the HTTP/1.1
 * GET with Upgrade it stands for; the upstream's 101 is the client's 200 and
 * the stream's DATA both ways is the tunnel.
 *
 * nghttp2 is never re-entered: requests run from the todo list after
 * mem_recv or session_send returned, and what handlers queue from outside
 * a run (an upstream's event) is sent after the batch of events (the dirty
 * list, or a zero timer).
 */
#include "http/h2session.h"

#include <errno.h>
#include <nghttp2/nghttp2.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "../common/log.h"
#include "http/h1session.h"
#include "http/vars.h"

#define H2_STREAM_WINDOW 65535       /* a stream's receive window: the request body bytes it may hold */
#define H2_CONN_WINDOW (1 << 24)     /* the connection's: streams' windows already bound what is held */
#define H2_RESET_BURST 200           /* RST_STREAMs a connection may send at once ... */
#define H2_RESET_PER_SEC 50          /* ... and per second after that */
#define H2_HPACK_FACTOR 4            /* decoded header bytes per stream beyond 4 x max_header_size: a bomb */
#define H2_MAX_CONTINUATIONS 16      /* CONTINUATION frames after one HEADERS */
#define H2_MAX_SETTINGS 32           /* entries in one SETTINGS frame */
#define H2_MAX_OUTBOUND_ACK 256      /* SETTINGS/PING acks queued while the client does not read */
#define H2_TICK_MS 1000              /* while streams are open: stalled windows, silent bodies */
#define H2_RUN_GUARD 64              /* rounds of run: a bound, not a value ever reached */

static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
#define PREFACE_LEN (sizeof(preface) - 1)

typedef struct h2_stream h2_stream_t;

typedef struct h2 {
    nghttp2_session *ng;
    conn_t *c;
    h2_stream_t *streams;         /* every stream with state here */
    h2_stream_t *todo, **todo_tail;
    struct h2 *dirty_next;
    uint32_t nstreams;
    uint32_t reset_tokens;
    uint64_t reset_ms;            /* when the reset bucket was last refilled */
    uint64_t out_seen, out_ms;    /* c->bytes_out at the last tick, and when it last moved */
    conn_close_reason_t close_reason; /* why nghttp2 ends the session (GOAWAY sent) */
    struct h2 *all_prev, *all_next;   /* the worker's open sessions (a reload looks at them) */
    uint32_t opened_streams;          /* the SETTINGS_MAX_CONCURRENT_STREAMS the session announced */
    bool running, again, dirty, dead, goaway, got_frame, ticking;
} h2_t;

enum { TODO_HEAD = 1, TODO_BODY = 2, TODO_DRAIN = 4, TODO_CLOSED = 8 };

typedef struct {
    uint32_t off, len;
} h2_span_t;

struct h2_stream {
    h2_stream_t *prev, *next, *todo_next;
    h2_t *h;
    request_t *r;
    int32_t id;
    uint8_t todo;                 /* TODO_* */
    uint16_t refuse;              /* a status to answer instead of running the head (431) */
    bool in_todo, closed, aborted, head_ready, no_body, eos_in;
    bool submitted, end, deferred, drain_wanted, out_done;
    bool swallow;                 /* an extended CONNECT answered without a tunnel: its body is dropped */
    uint8_t body_kind;            /* http_body_kind of the response */
    /* the head while it arrives: pseudo-header values, then field lines */
    char *hb, *ck;
    uint32_t hlen, hcap, cklen, ckcap;
    h2_span_t method, path, authority, protocol; /* protocol: RFC 8441 extended CONNECT */
    uint64_t decoded;
    /* the response */
    nghttp2_nv *nv;
    size_t nnv;
    iobuf_t *out;
    int fd;
    uint64_t foff, fleft, sent;
    /* the request body: [ibstart, ibend) of ib */
    char *ib;
    uint32_t ibstart, ibend, ibcap;
    uint64_t progress_ms;
};

static nghttp2_session_callbacks *callbacks;
static nghttp2_option *options;
static h2_t *dirty_head;
static h2_t *all_sessions;
static ev_timer_t kick;

static const http_session_ops_t h2_http_ops;
static void run(h2_t *h);

static h2_t *sess_of(conn_t *c)
{
    h2_t *h;
    memcpy(&h, conn_session(c), sizeof(h));
    return h;
}

static const rt_global_t *global(void) { return W->table->t.global; }

static void refused(h2_refusal_t why) { W->stats->h2_refused[why]++; }

/* ---- scheduling ------------------------------------------------------------------------ */

static void todo(h2_stream_t *st, uint8_t what)
{
    h2_t *h = st->h;
    st->todo |= what;
    if (st->in_todo)
        return;
    st->in_todo = true;
    st->todo_next = NULL;
    *h->todo_tail = st;
    h->todo_tail = &st->todo_next;
}

static void run_dirty(void);

static void on_kick(ev_loop_t *loop, ev_timer_t *t)
{
    (void)loop;
    (void)t;
    run_dirty();
}

/* Something was queued from outside a run: send it after this batch. */
static void mark(h2_t *h)
{
    if (h->running) {
        h->again = true;
        return;
    }
    if (h->dirty || h->dead)
        return;
    h->dirty = true;
    h->dirty_next = dirty_head;
    dirty_head = h;
    if (!ev_timer_armed(&kick))
        ev_timer_start(W->loop, &kick, 0, on_kick);
}

/* ---- streams ------------------------------------------------------------------------------ */

static void stream_free(h2_t *h, h2_stream_t *st)
{
    if (st->fd >= 0)
        close(st->fd);
    iobuf_put(st->out);
    free(st->ib);
    free(st->hb);
    free(st->ck);
    if (st->prev)
        st->prev->next = st->next;
    else
        h->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    h->nstreams--;
    free(st);
}

/* The request of a stream ends (the stream closed, or the connection). */
static void stream_finish(h2_stream_t *st)
{
    request_t *r = st->r;
    st->closed = true;
    if (r == NULL)
        return;
    st->r = NULL;
    r->resp_bytes = st->sent;
    request_finish(r);
}

static void h2_unlink(h2_t *h)
{
    if (h->all_prev)
        h->all_prev->all_next = h->all_next;
    else if (all_sessions == h)
        all_sessions = h->all_next;
    if (h->all_next)
        h->all_next->all_prev = h->all_prev;
    h->all_prev = h->all_next = NULL;
}

static void h2_free(h2_t *h)
{
    h2_unlink(h);
    while (h->streams) {
        stream_finish(h->streams);
        stream_free(h, h->streams);
    }
    nghttp2_session_del(h->ng);
    free(h);
}

static int buf_add(char **b, uint32_t *len, uint32_t *cap, const void *p, size_t n)
{
    if (*len + n > *cap) {
        size_t want = *cap ? *cap : 256;
        while (want < *len + n)
            want *= 2;
        char *nb = realloc(*b, want);
        if (nb == NULL)
            return -1;
        *b = nb;
        *cap = (uint32_t)want;
    }
    memcpy(*b + *len, p, n);
    *len += (uint32_t)n;
    return 0;
}

/* ---- the request head ---------------------------------------------------------------------- */

static void head_refuse(h2_stream_t *st, int status, h2_refusal_t why)
{
    if (st->refuse)
        return;
    st->refuse = (uint16_t)status;
    if (why != H2_REFUSED_HPACK_BOMB)
        refused(why);
    free(st->hb);
    free(st->ck);
    st->hb = st->ck = NULL;
    st->hlen = st->hcap = st->cklen = st->ckcap = 0;
}

static int head_pseudo(h2_stream_t *st, const uint8_t *name, size_t nlen, const uint8_t *value, size_t vlen)
{
    h2_span_t *to = NULL;
    if (nlen == 7 && memcmp(name, ":method", 7) == 0)
        to = &st->method;
    else if (nlen == 5 && memcmp(name, ":path", 5) == 0)
        to = &st->path;
    else if (nlen == 10 && memcmp(name, ":authority", 10) == 0)
        to = &st->authority;
    else if (nlen == 9 && memcmp(name, ":protocol", 9) == 0)
        to = &st->protocol;
    if (to == NULL) /* :scheme: nghttp2 checked it */
        return 0;
    to->off = st->hlen;
    to->len = (uint32_t)vlen;
    return buf_add(&st->hb, &st->hlen, &st->hcap, value, vlen);
}

static int head_field(h2_stream_t *st, const uint8_t *name, size_t nlen, const uint8_t *value, size_t vlen)
{
    if (nlen == 6 && memcmp(name, "cookie", 6) == 0) {
        if (st->cklen && buf_add(&st->ck, &st->cklen, &st->ckcap, "; ", 2) < 0)
            return -1;
        return buf_add(&st->ck, &st->cklen, &st->ckcap, value, vlen);
    }
    if (nlen == 4 && memcmp(name, "host", 4) == 0 && st->authority.len)
        return 0; /* :authority wins (RFC 9113 §8.3.1) */
    if (buf_add(&st->hb, &st->hlen, &st->hcap, name, nlen) < 0 || buf_add(&st->hb, &st->hlen, &st->hcap, ": ", 2) < 0 ||
        buf_add(&st->hb, &st->hlen, &st->hcap, value, vlen) < 0)
        return -1;
    return buf_add(&st->hb, &st->hlen, &st->hcap, "\r\n", 2);
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *user)
{
    h2_stream_t *st = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
    uint64_t limit = global()->max_header_size;
    (void)flags;
    (void)user;
    if (st == NULL)
        return 0;
    st->decoded += nlen + vlen + 32; /* trailers count too */
    if (st->decoded > H2_HPACK_FACTOR * limit) {
        if (st->h->close_reason != CLOSE_H2_ABUSE)
            refused(H2_REFUSED_HPACK_BOMB); /* once, also when the head was already too large */
        head_refuse(st, 431, H2_REFUSED_HPACK_BOMB);
        st->h->close_reason = CLOSE_H2_ABUSE;
        nghttp2_session_terminate_session(ng, NGHTTP2_ENHANCE_YOUR_CALM);
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    if (st->refuse || st->head_ready)
        return 0; /* trailers: validated by nghttp2, not forwarded */
    int rc = name[0] == ':' ? head_pseudo(st, name, nlen, value, vlen) : head_field(st, name, nlen, value, vlen);
    if (rc < 0)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    if ((uint64_t)st->hlen + st->cklen > limit)
        head_refuse(st, 431, H2_REFUSED_HEADERS_TOO_LARGE);
    return 0;
}

static int on_begin_headers(nghttp2_session *ng, const nghttp2_frame *frame, void *user)
{
    h2_t *h = user;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    h2_stream_t *st = calloc(1, sizeof(*st));
    if (st == NULL)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    st->h = h;
    st->id = frame->hd.stream_id;
    st->fd = -1;
    st->progress_ms = ev_now(W->loop);
    st->next = h->streams;
    if (h->streams)
        h->streams->prev = st;
    h->streams = st;
    h->nstreams++;
    nghttp2_session_set_stream_user_data(ng, st->id, st);
    return 0;
}

/* Connection, Upgrade and a Sec-WebSocket-Key (RFC 6455 §4.1: 16 bytes in
 * base64; an HTTP/2 client sends none, RFC 8441 §5) for the upstream. */
static char *upgrade_fields(const h2_stream_t *st, const char *hb, char *p)
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    uint8_t key[18] = {0};
    uint64_t a = hash_mix64(W->seq ^ ((uint64_t)W->pid_hash << 32)), b = hash_mix64(a ^ ev_now(W->loop));
    memcpy(key, &a, 8);
    memcpy(key + 8, &b, 8);
    memcpy(p, "connection: upgrade\r\nupgrade: ", 30);
    p += 30;
    memcpy(p, hb + st->protocol.off, st->protocol.len);
    p += st->protocol.len;
    memcpy(p, "\r\nsec-websocket-key: ", 21);
    p += 21;
    for (int i = 0; i < 18; i += 3) { /* 16 bytes: 22 characters and "==" */
        uint32_t v = (uint32_t)key[i] << 16 | (uint32_t)key[i + 1] << 8 | key[i + 2];
        *p++ = b64[v >> 18 & 63];
        *p++ = b64[v >> 12 & 63];
        *p++ = i + 1 < 16 ? b64[v >> 6 & 63] : '=';
        *p++ = i + 2 < 16 ? b64[v & 63] : '=';
    }
    *p++ = '\r';
    *p++ = '\n';
    return p;
}

/* The HTTP/1.1 head this stream's head stands for, in r's arena. */
static size_t head_text(h2_stream_t *st, request_t *r, char **out)
{
    const char *hb = st->hb ? st->hb : "";
    bool connect = st->path.len == 0;
    h2_span_t target = connect ? st->authority : st->path;
    size_t fields = st->hlen - (st->method.len + st->path.len + st->authority.len + st->protocol.len);
    size_t need = st->method.len + target.len + st->authority.len + fields + st->cklen + st->protocol.len + 160;
    char *o = arena_alloc_raw(&r->arena, need), *p = o;
    if (st->protocol.len) { /* RFC 8441 §5: the HTTP/1.1 Upgrade it stands for */
        memcpy(p, "GET", 3);
        p += 3;
    } else {
        memcpy(p, hb + st->method.off, st->method.len);
        p += st->method.len;
    }
    *p++ = ' ';
    memcpy(p, hb + target.off, target.len);
    p += target.len;
    memcpy(p, " HTTP/1.1\r\n", 11);
    p += 11;
    if (st->authority.len) {
        memcpy(p, "host: ", 6);
        memcpy(p + 6, hb + st->authority.off, st->authority.len);
        p += 6 + st->authority.len;
        *p++ = '\r';
        *p++ = '\n';
    }
    if (st->protocol.len)
        p = upgrade_fields(st, hb, p);
    /* the field lines follow the pseudo-header values (nghttp2 keeps pseudo-headers first) */
    size_t first = st->hlen - fields;
    memcpy(p, hb + first, fields);
    p += fields;
    if (st->cklen) {
        memcpy(p, "cookie: ", 8);
        memcpy(p + 8, st->ck, st->cklen);
        p += 8 + st->cklen;
        *p++ = '\r';
        *p++ = '\n';
    }
    *p++ = '\r';
    *p++ = '\n';
    *out = o;
    return (size_t)(p - o);
}

static void head_log(const conn_t *c, int status, const char *why)
{
    static log_limit_t limit;
    unsigned long quiet;
    char peer[VARS_PEER_MAX], more[64] = "";
    if (!log_limited(&limit, &quiet))
        return;
    vars_peer(c, peer);
    if (quiet)
        snprintf(more, sizeof(more), " (%lu more since the last such line)", quiet);
    log_warn("client %s: HTTP/2 request refused with %d: %s%s", peer, status, why, more);
}

/* A complete head: a request runs (or is answered at once when refused). */
static void stream_start(h2_t *h, h2_stream_t *st)
{
    request_t *r = request_new(h->c, &h2_http_ops);
    if (r == NULL) {
        nghttp2_submit_rst_stream(h->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
        return;
    }
    W->stats->requests_h2++;
    r->stream = st;
    st->r = r;
    st->progress_ms = ev_now(W->loop);
    char *text = NULL;
    size_t len = st->refuse ? 0 : head_text(st, r, &text);
    const rt_global_t *g = global();
    h1_limits_t lim = {g->max_header_size + 64, g->max_uri_size, g->max_headers ? g->max_headers : H1_MAX_HEADERS};
    int n = st->refuse ? -1 : h1_parse_request(text, len, W->hreq, &lim);
    free(st->hb);
    free(st->ck);
    st->hb = st->ck = NULL;
    if (n <= 0) {
        int status = st->refuse ? st->refuse : n == 0 ? 400 : W->hreq->status;
        if (!st->refuse)
            refused(status == 431 ? H2_REFUSED_HEADERS_TOO_LARGE : H2_REFUSED_INVALID_HEADERS);
        head_log(h->c, status, st->refuse ? "header fields too large" : n == 0 ? "incomplete head" : W->hreq->error);
        r->body_done = true; /* what the client sends of it is discarded */
        http_error(r, status, NULL);
        return;
    }
    request_set_head(r, W->hreq, (size_t)n);
    r->keep_alive = true;
    r->upgrade = st->protocol.len > 0;
    r->http10 = false;
    if (st->no_body || st->protocol.len) { /* a tunnel's bytes are not a request body */
        r->body_length = 0;
    } else {
        r->body_length = r->content_length >= 0 ? r->content_length : -1;
    }
    r->body_done = r->body_length == 0 && (st->eos_in || st->protocol.len);
    request_run(r);
}

/* ---- frames in --------------------------------------------------------------------------- */

/* CVE-2023-44487: streams opened and reset at once cost us a request each;
 * a client that resets faster than the bucket refills is told to calm down. */
static void count_reset(h2_t *h)
{
    uint64_t now = ev_now(W->loop), add = (now - h->reset_ms) * H2_RESET_PER_SEC / 1000;
    if (add) {
        h->reset_tokens = add + h->reset_tokens > H2_RESET_BURST ? H2_RESET_BURST : h->reset_tokens + (uint32_t)add;
        h->reset_ms = now;
    }
    if (h->reset_tokens) {
        h->reset_tokens--;
        return;
    }
    if (h->close_reason != CLOSE_H2_ABUSE) {
        refused(H2_REFUSED_RAPID_RESET);
        h->close_reason = CLOSE_H2_ABUSE;
        nghttp2_session_terminate_session(h->ng, NGHTTP2_ENHANCE_YOUR_CALM);
    }
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame, void *user)
{
    h2_t *h = user;
    h2_stream_t *st = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
    h->got_frame = true;
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
        if (st == NULL)
            return 0;
        if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)
            st->eos_in = true;
        if (frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
            st->no_body = st->eos_in;
            st->head_ready = true;
            todo(st, TODO_HEAD);
        } else if (st->eos_in) {
            todo(st, TODO_BODY);
        }
        return 0;
    case NGHTTP2_DATA:
        if (st && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
            st->eos_in = true;
            todo(st, TODO_BODY);
        }
        return 0;
    case NGHTTP2_RST_STREAM:
        count_reset(h);
        return 0;
    default:
        return 0;
    }
}

static int on_data_chunk(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data, size_t len, void *user)
{
    h2_stream_t *st = nghttp2_session_get_stream_user_data(ng, id);
    (void)flags;
    (void)user;
    nghttp2_session_consume_connection(ng, len);
    if (st == NULL || st->closed || st->aborted || st->refuse || (st->r && st->r->body_done && !st->r->tunnel)) {
        nghttp2_session_consume_stream(ng, id, len); /* nobody reads it */
        return 0;
    }
    if (st->ibstart && st->ibend + len > st->ibcap) {
        memmove(st->ib, st->ib + st->ibstart, st->ibend - st->ibstart);
        st->ibend -= st->ibstart;
        st->ibstart = 0;
    }
    if (st->ibend + len > H2_STREAM_WINDOW + 1) {
        nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, id, NGHTTP2_FLOW_CONTROL_ERROR);
        return 0;
    }
    if (buf_add(&st->ib, &st->ibend, &st->ibcap, data, len) < 0)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    st->progress_ms = ev_now(W->loop);
    todo(st, TODO_BODY);
    return 0;
}

static int on_stream_close(nghttp2_session *ng, int32_t id, uint32_t error, void *user)
{
    h2_stream_t *st = nghttp2_session_get_stream_user_data(ng, id);
    (void)error;
    (void)user;
    if (st == NULL)
        return 0;
    nghttp2_session_set_stream_user_data(ng, id, NULL);
    st->closed = true;
    todo(st, TODO_CLOSED);
    return 0;
}

static int on_invalid_frame(nghttp2_session *ng, const nghttp2_frame *frame, int error, void *user)
{
    (void)ng;
    (void)frame;
    (void)user;
    /* A malformed request resets its stream; errors that end the connection
     * are counted with the GOAWAY nghttp2 sends (on_frame_send). */
    if (error == NGHTTP2_ERR_HTTP_HEADER || error == NGHTTP2_ERR_HTTP_MESSAGING)
        refused(H2_REFUSED_INVALID_HEADERS);
    return 0;
}

/* A response ended (END_STREAM sent) before the client's body: the rest of
 * it is not wanted (RFC 9113 §8.1). */
static int on_frame_send(nghttp2_session *ng, const nghttp2_frame *frame, void *user)
{
    h2_t *h = user;
    if ((frame->hd.type == NGHTTP2_DATA || frame->hd.type == NGHTTP2_HEADERS) &&
        (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        h2_stream_t *st = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
        if (st)
            st->out_done = true;
        if (st && !st->eos_in)
            nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_NO_ERROR);
    } else if (frame->hd.type == NGHTTP2_GOAWAY && frame->goaway.error_code != NGHTTP2_NO_ERROR &&
               h->close_reason == CLOSE_DONE) {
        /* nghttp2 ended the session itself (our own refusals set close_reason first) */
        const nghttp2_goaway *g = &frame->goaway;
        bool settings = g->opaque_data_len >= 8 && memcmp(g->opaque_data, "SETTINGS", 8) == 0;
        refused(settings ? H2_REFUSED_SETTINGS_FLOOD : H2_REFUSED_PROTOCOL);
        h->close_reason = g->error_code == NGHTTP2_ENHANCE_YOUR_CALM ? CLOSE_H2_ABUSE : CLOSE_H2_ERROR;
    }
    return 0;
}

/* ---- frames out ------------------------------------------------------------------------------ */

/* Into c->out while it has room: the connection's output stays one buffer. */
static ssize_t on_send(nghttp2_session *ng, const uint8_t *data, size_t len, int flags, void *user)
{
    h2_t *h = user;
    conn_t *c = h->c;
    (void)ng;
    (void)flags;
    if (c->closed)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    size_t space = conn_out_space(c);
    if (space == 0)
        return NGHTTP2_ERR_WOULDBLOCK;
    size_t k = len < space ? len : space;
    memcpy(iobuf_wr(c->out), data, k);
    c->out->end += (uint32_t)k;
    return (ssize_t)k;
}

/* DATA for a stream: its buffer first, then its file; deferred while the
 * handler has nothing for us, and on_drain when the buffer emptied. */
static ssize_t on_read_data(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t length, uint32_t *flags,
                            nghttp2_data_source *src, void *user)
{
    h2_stream_t *st = src->ptr;
    size_t n = 0;
    (void)user;
    if (iobuf_len(st->out)) {
        n = iobuf_len(st->out) < length ? iobuf_len(st->out) : length;
        memcpy(buf, iobuf_rd(st->out), n);
        iobuf_consume(st->out, n);
    }
    if (n < length && st->fleft && iobuf_len(st->out) == 0) {
        size_t k = st->fleft < length - n ? (size_t)st->fleft : length - n;
        ssize_t got = pread(st->fd, buf + n, k, (off_t)st->foff);
        if (got <= 0) {
            log_err("static file read failed: %s", got == 0 ? "file shrank while sending" : strerror(errno));
            nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, id, NGHTTP2_INTERNAL_ERROR);
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        }
        n += (size_t)got;
        st->foff += (uint64_t)got;
        st->fleft -= (uint64_t)got;
        if (st->fleft == 0) {
            close(st->fd);
            st->fd = -1;
        }
    }
    if (iobuf_len(st->out) == 0 && st->fleft == 0) {
        if (st->drain_wanted && !st->end) {
            st->drain_wanted = false;
            todo(st, TODO_DRAIN);
        }
        if (st->end) {
            *flags |= NGHTTP2_DATA_FLAG_EOF;
        } else if (n == 0) {
            st->deferred = true;
            return NGHTTP2_ERR_DEFERRED;
        }
    }
    st->sent += n;
    st->progress_ms = ev_now(W->loop);
    return (ssize_t)n;
}

/* ---- the response (http_session_ops_t) ------------------------------------------------------- */

static bool conn_specific(const char *name, size_t n)
{
    static const char *const names[] = {"connection", "keep-alive", "transfer-encoding", "upgrade", "proxy-connection"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strlen(names[i]) == n && strncasecmp(names[i], name, n) == 0)
            return true;
    return false;
}

static nghttp2_nv nv_of(const char *name, size_t nlen, const char *value, size_t vlen)
{
    return (nghttp2_nv){(uint8_t *)name, (uint8_t *)value, nlen, vlen,
                        NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE};
}

/* The head is laid out in the request's arena (names lowercased, RFC 9113
 * §8.2.2) and submitted with the first flush or end, so that a response
 * of which nothing left can still be retracted. */
static void send_head(request_t *r)
{
    h2_stream_t *st = r->stream;
    const http_resp_t *p = &r->resp;
    nghttp2_nv *nv = arena_alloc_raw(&r->arena, (p->nfields + 3) * sizeof(*nv));
    size_t n = 0;
    int code = p->status;
    uint8_t kind = p->body;
    if (kind == HTTP_BODY_TUNNEL) { /* RFC 8441 §5: the 101 of HTTP/1.1 is a 200 */
        code = 200;
        kind = HTTP_BODY_STREAM;
        r->tunnel = true;
    } else if (st->protocol.len && code >= 200 && code < 300) {
        /* a 2xx would tell the client its tunnel is open: the route took no Upgrade */
        log_warn("HTTP/2 stream %d: extended CONNECT on a route that takes no Upgrade (websocket: false): 501",
                 st->id);
        code = 501;
        kind = HTTP_BODY_NONE;
        st->swallow = true;
    }
    char *status = arena_alloc_raw(&r->arena, 3);
    status[0] = (char)('0' + code / 100 % 10);
    status[1] = (char)('0' + code / 10 % 10);
    status[2] = (char)('0' + code % 10);
    nv[n++] = nv_of(":status", 7, status, 3);
    const char *date = worker_date(); /* "Date: ...\r\n" */
    size_t dlen = strlen(date);
    nv[n++] = nv_of("date", 4, arena_strndup(&r->arena, date + 6, dlen - 8), dlen - 8);
    for (uint32_t i = 0; i < p->nfields; i++) {
        const h1_header_t *f = &p->fields[i];
        if (conn_specific(f->name.p, f->name.n) || (r->tunnel && f->name.n == 20 &&
                                                    strncasecmp(f->name.p, "sec-websocket-accept", 20) == 0))
            continue;
        char *name = arena_alloc_raw(&r->arena, f->name.n + f->value.n + 1);
        for (size_t k = 0; k < f->name.n; k++)
            name[k] = (char)(f->name.p[k] >= 'A' && f->name.p[k] <= 'Z' ? f->name.p[k] + 32 : f->name.p[k]);
        memcpy(name + f->name.n, f->value.p, f->value.n);
        nv[n++] = nv_of(name, f->name.n, name + f->name.n, f->value.n);
    }
    if (st->swallow) {
        nv[n++] = nv_of("content-length", 14, "0", 1);
    } else if (p->length >= 0 && (kind == HTTP_BODY_LENGTH || kind == HTTP_BODY_NONE)) {
        char *len = arena_alloc_raw(&r->arena, 24);
        nv[n++] = nv_of("content-length", 14, len, fmt_u64(len, (uint64_t)p->length));
    }
    st->nv = nv;
    st->nnv = n;
    st->body_kind = kind;
}

static void submit_head(h2_stream_t *st)
{
    if (st->submitted || st->nv == NULL || st->closed || st->aborted)
        return;
    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = on_read_data};
    bool body = st->body_kind == HTTP_BODY_LENGTH || st->body_kind == HTTP_BODY_STREAM;
    st->submitted = true;
    if (nghttp2_submit_response(st->h->ng, st->id, st->nv, st->nnv, body ? &prd : NULL) != 0)
        nghttp2_submit_rst_stream(st->h->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
    mark(st->h);
}

static void resume(h2_stream_t *st)
{
    if (st->deferred && st->submitted && !st->closed) {
        st->deferred = false;
        nghttp2_session_resume_data(st->h->ng, st->id);
    }
    mark(st->h);
}

static bool gone(const h2_stream_t *st) { return st->closed || st->aborted || st->h->c->closed; }

static size_t send_space(request_t *r)
{
    h2_stream_t *st = r->stream;
    if (st->swallow && !gone(st))
        return IOBUF_SIZE;
    if (gone(st) || st->fleft)
        return 0;
    if (st->out == NULL && (st->out = iobuf_get()) == NULL)
        return 0;
    if (iobuf_space(st->out) < IOBUF_SIZE / 4)
        iobuf_compact(st->out);
    size_t space = iobuf_space(st->out);
    if (space == 0)
        st->drain_wanted = true;
    return space;
}

static void send_data(request_t *r, const char *p, size_t n)
{
    h2_stream_t *st = r->stream;
    if (gone(st) || st->swallow)
        return;
    size_t space = send_space(r);
    if (n > space) { /* the contract is n <= send_space: never drop bytes silently */
        log_err("HTTP/2 stream %d: %zu response bytes with room for %zu; resetting it", st->id, n, space);
        r->sess->abort(r, CLOSE_ABORTED);
        return;
    }
    memcpy(iobuf_wr(st->out), p, n);
    st->out->end += (uint32_t)n;
    resume(st);
}

static void send_file(request_t *r, int fd, uint64_t off, uint64_t len)
{
    h2_stream_t *st = r->stream;
    if (gone(st) || len == 0 || st->fd >= 0 || st->swallow) {
        close(fd);
        return;
    }
    st->fd = fd;
    st->foff = off;
    st->fleft = len;
    submit_head(st);
    resume(st);
}

static void send_end(request_t *r)
{
    h2_stream_t *st = r->stream;
    r->response_done = true;
    if (gone(st))
        return;
    st->end = true;
    submit_head(st);
    resume(st);
}

static int flush(request_t *r)
{
    h2_stream_t *st = r->stream;
    if (gone(st))
        return -1;
    submit_head(st);
    resume(st);
    if (iobuf_len(st->out) || st->fleft) {
        st->drain_wanted = true;
        return 1;
    }
    return 0;
}

static void send_interim(request_t *r, int status)
{
    h2_stream_t *st = r->stream;
    if (gone(st) || status != 100)
        return;
    nghttp2_nv nv = nv_of(":status", 7, "100", 3);
    nghttp2_submit_headers(st->h->ng, NGHTTP2_FLAG_NONE, st->id, NULL, &nv, 1, NULL);
    mark(st->h);
}

static int body_next(request_t *r, size_t max, slice_t *data)
{
    h2_stream_t *st = r->stream;
    if (gone(st))
        return -1;
    size_t held = st->ibend - st->ibstart, k = held < max ? held : max;
    if (k == 0) {
        if (held || !st->eos_in)
            return 0;
        r->body_done = true;
        return 2;
    }
    if (r->tunnel) { /* tunnel bytes are not the request body */
        *data = (slice_t){st->ib + st->ibstart, k};
        st->ibstart += (uint32_t)k;
        if (st->ibstart == st->ibend)
            st->ibstart = st->ibend = 0;
        nghttp2_session_consume_stream(st->h->ng, st->id, k);
        mark(st->h);
        return 1;
    }
    *data = (slice_t){st->ib + st->ibstart, k};
    st->ibstart += (uint32_t)k;
    if (st->ibstart == st->ibend)
        st->ibstart = st->ibend = 0; /* the caller copies it before the next call */
    nghttp2_session_consume_stream(st->h->ng, st->id, k);
    mark(st->h);
    r->body_bytes += k;
    if (r->body_length < 0 && r->max_body && r->body_bytes > r->max_body) {
        http_error(r, 413, NULL);
        return -1;
    }
    return 1;
}

static void abort_stream(request_t *r, conn_close_reason_t why)
{
    h2_stream_t *st = r->stream;
    (void)why;
    if (gone(st))
        return;
    if (r->tunnel) { /* the upstream closed or went quiet: the tunnel ends (END_STREAM, RFC 8441 §4) */
        send_end(r);
        return;
    }
    st->aborted = true;
    nghttp2_submit_rst_stream(st->h->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
    mark(st->h);
}

static bool retract(request_t *r)
{
    h2_stream_t *st = r->stream;
    if (st->submitted || gone(st))
        return false;
    st->nv = NULL;
    st->end = false;
    if (st->out)
        st->out->start = st->out->end = 0;
    if (st->fd >= 0)
        close(st->fd);
    st->fd = -1;
    st->fleft = 0;
    r->response_started = false;
    return true;
}

static const http_session_ops_t h2_http_ops = {
    .proto = "HTTP/2.0",
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

/* ---- running ------------------------------------------------------------------------------ */

static void fail(h2_t *h, int rv)
{
    conn_close_reason_t why = CLOSE_H2_ABUSE;
    switch (rv) {
    case NGHTTP2_ERR_FLOODED: refused(H2_REFUSED_CONTROL_FLOOD); break;
    case NGHTTP2_ERR_TOO_MANY_SETTINGS: refused(H2_REFUSED_SETTINGS_FLOOD); break;
    case NGHTTP2_ERR_TOO_MANY_CONTINUATIONS: refused(H2_REFUSED_CONTINUATION); break;
    case NGHTTP2_ERR_CALLBACK_FAILURE: why = h->c->closed ? CLOSE_CLIENT_ERROR : CLOSE_NO_MEMORY; break;
    case NGHTTP2_ERR_NOMEM: why = CLOSE_NO_MEMORY; break;
    default:
        refused(H2_REFUSED_PROTOCOL);
        why = CLOSE_H2_ERROR;
        break;
    }
    log_debug("HTTP/2 connection from port %u: %s", h->c->peer_port, nghttp2_strerror(rv));
    conn_close(h->c, why);
}

/* Requests run, bodies and drains are handed over: outside nghttp2. */
static void run_todo(h2_t *h)
{
    conn_t *c = h->c;
    h2_stream_t *st;
    while (!c->closed && (st = h->todo) != NULL) {
        h->todo = st->todo_next;
        if (h->todo == NULL)
            h->todo_tail = &h->todo;
        uint8_t what = st->todo;
        st->todo = 0;
        st->in_todo = false;
        if (what & TODO_CLOSED) {
            stream_finish(st);
            stream_free(h, st);
            continue;
        }
        if ((what & TODO_HEAD) && st->r == NULL)
            stream_start(h, st);
        if (c->closed || st->closed || st->aborted || st->r == NULL)
            continue;
        if ((what & TODO_BODY) && st->r->on_body)
            st->r->on_body(st->r);
        if (!c->closed && !st->closed && st->r && (what & TODO_DRAIN))
            http_drained(st->r); /* through the body filters (a compressor may hold bytes) to on_drain */
    }
}

/* Frames out into c->out and onto the socket while both take them. */
static int send_all(h2_t *h)
{
    conn_t *c = h->c;
    for (int i = 0; i < H2_RUN_GUARD && !c->closed; i++) {
        int rv = nghttp2_session_send(h->ng);
        if (rv != 0) {
            fail(h, rv);
            return -1;
        }
        if (conn_flush(c) < 0)
            return -1;
        if (conn_pending(c) || !nghttp2_session_want_write(h->ng))
            break;
    }
    return c->closed ? -1 : 0;
}

/* After a run: close when the session is over, else arm the right timer. */
static void settle(h2_t *h)
{
    conn_t *c = h->c;
    bool ww = nghttp2_session_want_write(h->ng);
    if (c->state != CONN_OPEN)
        return;
    /* Over: linger, so that what the client still sends does not turn our
     * GOAWAY into a reset it never reads. */
    if (h->goaway && h->nstreams == 0 && !ww && !conn_pending(c)) {
        conn_linger_for(c, CLOSE_DRAIN);
        return;
    }
    if (!nghttp2_session_want_read(h->ng) && !ww && !conn_pending(c)) {
        conn_linger_for(c, h->close_reason);
        return;
    }
    if (h->nstreams || conn_pending(c)) {
        if (!h->ticking) {
            h->ticking = true;
            h->out_seen = c->bytes_out;
            h->out_ms = ev_now(W->loop);
            conn_timer(c, H2_TICK_MS);
        }
        return;
    }
    h->ticking = false;
    if (h->got_frame)
        conn_timer(c, global()->keepalive_timeout_ms);
    else if (!ev_timer_armed(&c->timer)) /* the preface's deadline does not move with its bytes */
        conn_timer(c, global()->header_timeout_ms);
}

static void run(h2_t *h)
{
    conn_t *c = h->c;
    if (h->running) {
        h->again = true;
        return;
    }
    h->running = true;
    for (int i = 0; i < H2_RUN_GUARD && !c->closed && c->state == CONN_OPEN; i++) {
        h->again = false;
        run_todo(h);
        if (c->closed || send_all(h) < 0)
            break;
        if (h->todo == NULL && !h->again)
            break;
    }
    h->running = false;
    if (h->dead) {
        if (!h->dirty)
            h2_free(h);
        return;
    }
    if (!c->closed)
        settle(h);
}

static void run_dirty(void)
{
    for (int i = 0; dirty_head && i < 4096; i++) {
        h2_t *h = dirty_head;
        dirty_head = h->dirty_next;
        h->dirty = false;
        if (h->dead)
            h2_free(h);
        else
            run(h);
    }
}

/* ---- connection events (conn_session_ops_t) ----------------------------------------------------- */

static void submit_settings(h2_t *h)
{
    const rt_global_t *g = global();
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, g->h2_max_streams ? g->h2_max_streams : 128},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2_STREAM_WINDOW},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, g->max_header_size},
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL, 1}, /* RFC 8441: WebSocket on websocket: true routes */
    };
    nghttp2_submit_settings(h->ng, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0]));
    nghttp2_session_set_local_window_size(h->ng, NGHTTP2_FLAG_NONE, 0, H2_CONN_WINDOW);
}

static void on_read(conn_t *c, ssize_t n);

static void on_open(conn_t *c)
{
    h2_t *h = calloc(1, sizeof(*h));
    if (h == NULL || nghttp2_session_server_new2(&h->ng, callbacks, h, options) != 0) {
        free(h);
        memset(conn_session(c), 0, sizeof(h2_t *)); /* on_close finds no session */
        conn_close(c, CLOSE_NO_MEMORY);
        return;
    }
    memcpy(conn_session(c), &h, sizeof(h));
    h->c = c;
    h->todo_tail = &h->todo;
    h->reset_tokens = H2_RESET_BURST;
    h->reset_ms = ev_now(W->loop);
    h->close_reason = CLOSE_DONE;
    W->stats->conns_h2++;
    h->opened_streams = global()->h2_max_streams;
    h->all_next = all_sessions;
    if (all_sessions)
        all_sessions->all_prev = h;
    all_sessions = h;
    submit_settings(h);
    c->want_read = true;
    conn_read(c); /* the preface may be here already */
}

static void on_read(conn_t *c, ssize_t n)
{
    h2_t *h = sess_of(c);
    if (iobuf_len(c->in)) {
        ssize_t used = nghttp2_session_mem_recv(h->ng, (const uint8_t *)iobuf_rd(c->in), iobuf_len(c->in));
        if (used < 0) {
            fail(h, (int)used);
            return;
        }
        iobuf_consume(c->in, (size_t)used);
    }
    if (c->in && iobuf_len(c->in) == 0) {
        iobuf_put(c->in); /* an idle connection holds no buffer */
        c->in = NULL;
    }
    if (n == 0 || n == -2) {
        conn_close(c, n == 0 ? CLOSE_CLIENT_EOF : CLOSE_CLIENT_ERROR);
        return;
    }
    conn_want_read(c, true);
    run(h);
}

static void on_writable(conn_t *c) { run(sess_of(c)); }

/* Streams that made no progress for body_timeout: a window the client keeps
 * shut (it does not read), or a body it does not send. */
static void tick(h2_t *h)
{
    conn_t *c = h->c;
    uint64_t now = ev_now(W->loop), limit = global()->body_timeout_ms;
    if (c->bytes_out != h->out_seen || !conn_pending(c)) {
        h->out_seen = c->bytes_out;
        h->out_ms = now;
    } else if (now - h->out_ms > limit) {
        conn_close(c, CLOSE_SEND_TIMEOUT);
        return;
    }
    for (h2_stream_t *st = h->streams; st; st = st->next) {
        request_t *r = st->r;
        if (!st->head_ready && !st->closed && now - st->progress_ms > global()->header_timeout_ms) {
            conn_close(c, CLOSE_HEADER_TIMEOUT); /* a head block that never ends holds the connection */
            return;
        }
        if (r == NULL || st->closed || st->aborted || now - st->progress_ms <= limit)
            continue;
        bool out = st->submitted && !st->out_done && (iobuf_len(st->out) || st->fleft || st->end);
        bool window = nghttp2_session_get_stream_remote_window_size(h->ng, st->id) <= 0 ||
                      nghttp2_session_get_remote_window_size(h->ng) <= 0;
        if (out && window) {
            refused(H2_REFUSED_ZERO_WINDOW);
            st->aborted = true;
            nghttp2_submit_rst_stream(h->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
        } else if (!r->body_done && !st->eos_in && r->on_body && !r->response_started) {
            http_error(r, 408, NULL);
        }
    }
}

static void on_timeout(conn_t *c)
{
    h2_t *h = sess_of(c);
    if (h->nstreams == 0 && !conn_pending(c)) {
        nghttp2_session_terminate_session(h->ng, NGHTTP2_NO_ERROR);
        conn_close_reason_t why = W->draining ? CLOSE_DRAIN : h->got_frame ? CLOSE_KEEPALIVE_TIMEOUT : CLOSE_HEADER_TIMEOUT;
        if (send_all(h) < 0)
            return;
        if (conn_pending(c))
            conn_close(c, why); /* a client that does not read gets no grace */
        else
            conn_linger_for(c, why);
        return;
    }
    h->ticking = false;
    tick(h);
    if (!c->closed)
        run(h);
}

static void on_close(conn_t *c, conn_close_reason_t reason)
{
    h2_t *h = sess_of(c);
    (void)reason;
    if (h == NULL)
        return;
    for (h2_stream_t *st = h->streams; st; st = st->next)
        stream_finish(st);
    h2_unlink(h);
    if (h->running || h->dirty)
        h->dead = true;
    else
        h2_free(h);
}

/* Stop and binary upgrade: GOAWAY with the last stream we took, the
 * streams in flight finish, then the connection closes (settle). */
static void on_drain(conn_t *c)
{
    h2_t *h = sess_of(c);
    if (h->goaway)
        return;
    h->goaway = true;
    nghttp2_submit_goaway(h->ng, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(h->ng), NGHTTP2_NO_ERROR,
                          NULL, 0);
    run(h);
}

/* A reload is in place: open connections go on with the new table.  Only a
 * session whose announced settings the new table changes (HTTP/2 turned
 * off, another h2_max_streams) is told GOAWAY, so that its client comes
 * back on a connection that has them; its streams in flight finish. */
static void h2_worker_switch(tref_t *t)
{
    const rt_global_t *g = t->t.global;
    for (h2_t *h = all_sessions, *next; h; h = next) {
        next = h->all_next;
        bool off = !(g->flags & (h->c->ssl ? RT_GF_HTTP2 : RT_GF_HTTP2_CLEARTEXT));
        if (!h->dead && !h->c->closed && h->c->state == CONN_OPEN && (off || g->h2_max_streams != h->opened_streams))
            on_drain(h->c);
    }
}

const conn_session_ops_t h2_session_ops = {
    .name = "h2",
    .on_open = on_open,
    .on_read = on_read,
    .on_writable = on_writable,
    .on_timeout = on_timeout,
    .on_close = on_close,
    .on_drain = on_drain,
};

/* ---- prior knowledge on plain listeners ---------------------------------------------------- */

/* The first bytes decide: the client preface is HTTP/2, anything else
 * HTTP/1.1 (which then parses what was read). */
static void sniff_read(conn_t *c, ssize_t n)
{
    size_t have = iobuf_len(c->in), k = have < PREFACE_LEN ? have : PREFACE_LEN;
    if (k && memcmp(iobuf_rd(c->in), preface, k) != 0) {
        c->ops = &h1_session_ops;
        h1_session_ops.on_open(c);
        return;
    }
    if (k == PREFACE_LEN) {
        c->ops = &h2_session_ops;
        h2_session_ops.on_open(c);
        return;
    }
    if (n == 0 || n == -2)
        conn_close(c, n == 0 ? CLOSE_CLIENT_EOF : CLOSE_CLIENT_ERROR);
}

static void sniff_open(conn_t *c)
{
    c->want_read = true;
    conn_read(c);
}

static void sniff_timeout(conn_t *c) { conn_close(c, CLOSE_HEADER_TIMEOUT); }
static void sniff_nothing(conn_t *c) { (void)c; }
static void sniff_close(conn_t *c, conn_close_reason_t reason)
{
    (void)c;
    (void)reason;
}

static const conn_session_ops_t sniff_ops = {
    .name = "h2c-or-http/1.1",
    .on_open = sniff_open,
    .on_read = sniff_read,
    .on_writable = sniff_nothing,
    .on_timeout = sniff_timeout,
    .on_close = sniff_close,
    .on_drain = sniff_nothing,
};

const conn_session_ops_t *h2_select_session(conn_t *c)
{
    uint32_t flags = global()->flags;
    if (c->ssl) {
        const unsigned char *p;
        unsigned n;
        SSL_get0_alpn_selected(c->ssl, &p, &n);
        return n == 2 && memcmp(p, "h2", 2) == 0 ? &h2_session_ops : NULL;
    }
    return (flags & RT_GF_HTTP2_CLEARTEXT) ? &sniff_ops : NULL;
}

/* ---- the module --------------------------------------------------------------------------------- */

static int h2_worker_init(void)
{
    if (nghttp2_session_callbacks_new(&callbacks) != 0 || nghttp2_option_new(&options) != 0) {
        log_err("HTTP/2: out of memory");
        return -1;
    }
    nghttp2_session_callbacks_set_send_callback(callbacks, on_send);
    nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(callbacks, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, on_stream_close);
    nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(callbacks, on_invalid_frame);
    nghttp2_session_callbacks_set_on_frame_send_callback(callbacks, on_frame_send);
    nghttp2_option_set_no_auto_window_update(options, 1);
    nghttp2_option_set_max_outbound_ack(options, H2_MAX_OUTBOUND_ACK);
    nghttp2_option_set_max_settings(options, H2_MAX_SETTINGS);
    nghttp2_option_set_max_continuations(options, H2_MAX_CONTINUATIONS);
    nghttp2_option_set_max_deflate_dynamic_table_size(options, 4096);
    /* nghttp2's own bucket stands behind ours (count_reset), which counts */
    nghttp2_option_set_stream_reset_rate_limit(options, 2 * H2_RESET_BURST, 2 * H2_RESET_PER_SEC);
    return 0;
}

static void h2_worker_exit(void)
{
    nghttp2_session_callbacks_del(callbacks);
    nghttp2_option_del(options);
    callbacks = NULL;
    options = NULL;
}

const module_t h2_session_module = {.name = "h2",
                                    .worker_init = h2_worker_init,
                                    .worker_idle = run_dirty,
                                    .worker_switch = h2_worker_switch,
                                    .worker_exit = h2_worker_exit};

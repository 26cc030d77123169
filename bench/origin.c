/*
 * origin.c - a small, fast HTTP/1.1 origin server for benchmarks and tests.
 *
 *   origin PORT [--host ADDR] [--body N | --body-file F] [--type T] [--echo] [--pid-file F]
 *
 * Every request gets 200 with an N-byte body of 'x' (default 100, text/plain),
 * or the bytes of file F read once at start (--body-file, for a realistic
 * body such as bench/compress_bench.sh's HTML), with Content-Type T (--type),
 * or, with --echo, a JSON object describing the request line and header fields
 * it received, in order, and the connection's TCP peer, so a test can see what
 * a proxy forwarded and which proxy connected:
 *   {"request_line": "GET / HTTP/1.1", "method": "GET", "target": "/",
 *    "version": "HTTP/1.1", "headers": [["Host", "a"], ...],
 *    "peer": "127.0.0.1:40312", "body_bytes": 0}
 * Bytes outside printable ASCII are written as \u00XX (read them as Latin-1).
 * In both modes, GET /bytes/N streams N bytes (N <= 2 GiB) from one shared
 * buffer, and POST /sink reads a body (Content-Length or chunked) and answers
 * {"received": N}.
 *
 * One thread, one level-triggered epoll loop, non-blocking sockets, keep-alive
 * and pipelining.  Request bodies are read and discarded (or counted); the
 * response is queued once the body is complete.  Invariants: a connection
 * parses its next request only when no streamed body is pending and less than
 * OUT_HIGH bytes wait to be sent, so responses leave in request order; it
 * stops reading while output is blocked (backpressure on pipelined input).
 * Malformed heads get 400, heads over IN_SIZE get 431, both then close.
 * A connection closed with input still unread lingers first (as nginx's
 * lingering_close): its write side is shut and input discarded until EOF,
 * LINGER_MS of silence or LINGER_MAX bytes, so the kernel does not answer
 * the unread bytes with a reset that destroys the response in flight.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define IN_SIZE    (32 * 1024)     /* read buffer; also the request-head limit */
#define FILL_SIZE  (256 * 1024)    /* shared 'x' buffer that bodies are sent from */
#define INLINE_MAX (64 * 1024)     /* bodies up to this are copied into out */
#define OUT_HIGH   (64 * 1024)     /* queued output above which parsing pauses */
#define BYTES_MAX  (2ULL << 30)    /* GET /bytes/N limit: 2 GiB */
#define MAX_EVENTS 256
#define LINGER_MS  1000            /* lingering close: silence before closing */
#define LINGER_MAX (1024 * 1024)   /* lingering close: bytes discarded at most */

struct slice {
    const char *p;
    size_t len;
};

/* Growable buffer; an allocation failure is sticky and checked once. */
struct buf {
    char *p;
    size_t len, cap;
    bool failed;
};

/* Chunked request body decoder, RFC 9112 section 7.1. */
enum chunk_state {
    CH_SIZE, CH_EXT, CH_SIZE_LF, CH_DATA, CH_DATA_CR, CH_DATA_LF,
    CH_LINE_START, CH_TRAILER, CH_TRAILER_LF, CH_END_LF
};

struct chunker {
    enum chunk_state st;
    uint64_t left;
    int digits;
};

struct request {
    struct slice method, target, version;
    bool http10, conn_close, conn_keep_alive, chunked, has_length, expect_continue;
    uint64_t length;
};

enum conn_state { CONN_HEAD, CONN_BODY, CONN_CLOSING, CONN_LINGER };
enum resp_kind { RESP_FIXED, RESP_BYTES, RESP_SINK, RESP_ECHO };

struct conn {
    int fd;
    uint32_t events;            /* current epoll interest */
    enum conn_state state;
    bool eof;                   /* the client shut down its side */
    bool failed;                /* answered with an error: input left unread */
    /* the request whose body is being read */
    enum resp_kind resp;
    bool chunked, head_only, keep_alive, http10;
    uint64_t body_left;         /* Content-Length bytes still to read */
    uint64_t body_bytes;        /* body data bytes read so far */
    uint64_t bytes_n;           /* RESP_BYTES: body size */
    struct chunker ch;
    struct buf echo;            /* RESP_ECHO: JSON built from the head */
    char peer[INET_ADDRSTRLEN + 6]; /* "IP:PORT" of the client, for --echo */
    /* output, in order: out.p[out_off..out.len), then stream_left filler bytes */
    struct buf out;
    size_t out_off;
    uint64_t stream_left;
    struct conn *next_free;
    struct conn *linger_prev, *linger_next;
    int64_t linger_until;       /* CONN_LINGER: close at this CLOCK_MONOTONIC ms */
    uint64_t linger_bytes;
    size_t in_len;
    char in[IN_SIZE];
};

static struct {
    int epfd, lfd, spare_fd;
    uint64_t body_len;
    bool echo;
    const char *ctype;          /* Content-Type of the default response */
    char *file_body;            /* --body-file: the default response's body, else NULL */
    struct conn *free_list;
    struct conn *lingering;     /* list of CONN_LINGER connections */
    struct buf fixed_ka;        /* the whole default response, HTTP/1.1 keep-alive */
    char fill[FILL_SIZE];
} g;

static volatile sig_atomic_t g_stop;

/* ---- buffers and slices ------------------------------------------------ */

static void buf_reserve(struct buf *b, size_t extra)
{
    if (b->failed || b->len + extra <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + extra)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (p == NULL) {
        b->failed = true;
        return;
    }
    b->p = p;
    b->cap = cap;
}

static void buf_put(struct buf *b, const void *p, size_t n)
{
    buf_reserve(b, n);
    if (b->failed)
        return;
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

static void buf_puts(struct buf *b, const char *s)
{
    buf_put(b, s, strlen(s));
}

/* A JSON string literal; bytes outside printable ASCII become \u00XX. */
static void buf_json(struct buf *b, struct slice s)
{
    static const char hex[] = "0123456789abcdef";
    buf_reserve(b, s.len * 6 + 2);
    if (b->failed)
        return;
    char *o = b->p + b->len;
    *o++ = '"';
    for (size_t i = 0; i < s.len; i++) {
        unsigned char ch = (unsigned char)s.p[i];
        if (ch == '"' || ch == '\\') {
            *o++ = '\\';
            *o++ = (char)ch;
        } else if (ch < 0x20 || ch >= 0x7f) {
            memcpy(o, "\\u00", 4);
            o[4] = hex[ch >> 4];
            o[5] = hex[ch & 15];
            o += 6;
        } else {
            *o++ = (char)ch;
        }
    }
    *o++ = '"';
    b->len = (size_t)(o - b->p);
}

static bool slice_ieq(struct slice s, const char *lit)
{
    return s.len == strlen(lit) && strncasecmp(s.p, lit, s.len) == 0;
}

static bool slice_eq(struct slice s, const char *lit)
{
    return s.len == strlen(lit) && memcmp(s.p, lit, s.len) == 0;
}

/* Decimal digits only, no sign, no overflow. */
static int parse_u64(struct slice s, uint64_t *out)
{
    uint64_t v = 0;
    if (s.len == 0 || s.len > 19)
        return -1;
    for (size_t i = 0; i < s.len; i++) {
        if (s.p[i] < '0' || s.p[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(s.p[i] - '0');
    }
    *out = v;
    return 0;
}

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* RFC 9110 section 5.6.2 tchar. */
static bool is_tchar(char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return true;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* Next element of a comma-separated list, trimmed; false at the end. */
static bool list_next(struct slice *rest, struct slice *item)
{
    const char *p = rest->p, *end = rest->p + rest->len;
    while (p < end && (is_ows(*p) || *p == ','))
        p++;
    if (p == end)
        return false;
    const char *e = memchr(p, ',', (size_t)(end - p));
    if (e == NULL)
        e = end;
    rest->p = e;
    rest->len = (size_t)(end - e);
    while (e > p && is_ows(e[-1]))
        e--;
    *item = (struct slice){p, (size_t)(e - p)};
    return true;
}

static bool list_has(struct slice v, const char *tok)
{
    struct slice item;
    while (list_next(&v, &item))
        if (slice_ieq(item, tok))
            return true;
    return false;
}

static bool list_last_is(struct slice v, const char *tok)
{
    struct slice item, last = {NULL, 0};
    while (list_next(&v, &item))
        last = item;
    return last.p != NULL && slice_ieq(last, tok);
}

/* ---- request parsing --------------------------------------------------- */

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/*
 * Feeds n bytes of a chunked body.  Returns 1 when the body and its trailer
 * section are complete, 0 when more input is needed, -1 when malformed.
 * *used is the bytes consumed, *data the chunk-data bytes among them.
 */
static int chunk_feed(struct chunker *k, const char *p, size_t n, size_t *used, uint64_t *data)
{
    size_t i = 0;
    *data = 0;
    while (i < n) {
        char c = p[i];
        switch (k->st) {
        case CH_DATA: {
            size_t take = n - i < k->left ? n - i : (size_t)k->left;
            i += take;
            k->left -= take;
            *data += take;
            if (k->left == 0)
                k->st = CH_DATA_CR;
            continue;
        }
        case CH_SIZE:
            if (hex_value(c) >= 0) {
                if (++k->digits > 15)
                    return -1;
                k->left = k->left * 16 + (uint64_t)hex_value(c);
            } else if (k->digits > 0 && (c == ';' || is_ows(c))) {
                k->st = CH_EXT;
            } else if (k->digits > 0 && c == '\r') {
                k->st = CH_SIZE_LF;
            } else {
                return -1;
            }
            break;
        case CH_EXT:
            if (c == '\r')
                k->st = CH_SIZE_LF;
            else if (c == '\n')
                return -1;
            break;
        case CH_SIZE_LF:
            if (c != '\n')
                return -1;
            k->st = k->left > 0 ? CH_DATA : CH_LINE_START;
            break;
        case CH_DATA_CR:
            if (c != '\r')
                return -1;
            k->st = CH_DATA_LF;
            break;
        case CH_DATA_LF:
            if (c != '\n')
                return -1;
            *k = (struct chunker){.st = CH_SIZE};
            break;
        case CH_LINE_START:     /* start of a trailer field or the final CRLF */
            if (c == '\n')
                return -1;
            k->st = c == '\r' ? CH_END_LF : CH_TRAILER;
            break;
        case CH_TRAILER:
            if (c == '\r')
                k->st = CH_TRAILER_LF;
            else if (c == '\n')
                return -1;
            break;
        case CH_TRAILER_LF:
            if (c != '\n')
                return -1;
            k->st = CH_LINE_START;
            break;
        case CH_END_LF:
            if (c != '\n')
                return -1;
            *used = i + 1;
            return 1;
        }
        i++;
    }
    *used = i;
    return 0;
}

/* method SP request-target SP HTTP-version, RFC 9112 section 3. */
static int parse_request_line(struct request *rq, const char *p, const char *end)
{
    const char *s = p;
    while (s < end && is_tchar(*s))
        s++;
    if (s == p || s == end || *s != ' ')
        return -1;
    rq->method = (struct slice){p, (size_t)(s - p)};
    const char *t = ++s;
    while (s < end && (unsigned char)*s > 0x20 && (unsigned char)*s < 0x7f)
        s++;
    if (s == t || s == end || *s != ' ')
        return -1;
    rq->target = (struct slice){t, (size_t)(s - t)};
    s++;
    if (end - s != 8 || memcmp(s, "HTTP/1.", 7) != 0 || (s[7] != '0' && s[7] != '1'))
        return -1;
    rq->version = (struct slice){s, 8};
    rq->http10 = s[7] == '0';
    return 0;
}

/*
 * Next field line of [*pos, end), where every line ends in CRLF.  Returns 1
 * with name and trimmed value, 0 at the end, -1 when malformed (bare CR or
 * LF, obs-fold, no colon, control characters in the value).
 */
static int next_field(const char **pos, const char *end, struct slice *name, struct slice *value)
{
    const char *p = *pos;
    if (p >= end)
        return 0;
    const char *eol = memchr(p, '\r', (size_t)(end - p));
    if (eol == NULL || eol + 1 >= end || eol[1] != '\n')
        return -1;
    const char *colon = p;
    while (colon < eol && is_tchar(*colon))
        colon++;
    if (colon == p || colon == eol || *colon != ':')
        return -1;
    const char *v = colon + 1, *ve = eol;
    while (v < ve && is_ows(*v))
        v++;
    while (ve > v && is_ows(ve[-1]))
        ve--;
    for (const char *q = v; q < ve; q++)
        if (((unsigned char)*q < 0x20 && *q != '\t') || *q == 0x7f)
            return -1;
    *name = (struct slice){p, (size_t)(colon - p)};
    *value = (struct slice){v, (size_t)(ve - v)};
    *pos = eol + 2;
    return 1;
}

static int parse_fields(struct request *rq, const char *p, const char *end)
{
    struct slice name, value;
    int r;
    while ((r = next_field(&p, end, &name, &value)) > 0) {
        if (slice_ieq(name, "content-length")) {
            uint64_t len;
            if (parse_u64(value, &len) < 0 || (rq->has_length && len != rq->length))
                return -1;
            rq->has_length = true;
            rq->length = len;
        } else if (slice_ieq(name, "transfer-encoding")) {
            /* Only a final "chunked" delimits a request body (RFC 9112 6.3). */
            if (!list_last_is(value, "chunked"))
                return -1;
            rq->chunked = true;
        } else if (slice_ieq(name, "connection")) {
            rq->conn_close |= list_has(value, "close");
            rq->conn_keep_alive |= list_has(value, "keep-alive");
        } else if (slice_ieq(name, "expect")) {
            rq->expect_continue = slice_ieq(value, "100-continue");
        }
    }
    return r;
}

/* ---- responses --------------------------------------------------------- */

static const char *reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 431: return "Request Header Fields Too Large";
    default: return "Unknown";
    }
}

static void put_head(struct conn *c, int status, const char *ctype, uint64_t len)
{
    const char *connection = !c->keep_alive ? "Connection: close\r\n"
                             : c->http10    ? "Connection: keep-alive\r\n"
                                            : "";
    char h[256];
    int n = snprintf(h, sizeof h,
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %" PRIu64 "\r\n%s\r\n",
                     status, reason(status), ctype, len, connection);
    buf_put(&c->out, h, (size_t)n);
}

static void put_body(struct conn *c, const void *p, size_t n)
{
    if (!c->head_only)
        buf_put(&c->out, p, n);
}

/* n filler bytes: copied when small, else streamed from g.fill by conn_flush. */
static void put_fill(struct conn *c, uint64_t n)
{
    if (c->head_only)
        return;
    if (n <= INLINE_MAX)
        buf_put(&c->out, g.fill, (size_t)n);
    else
        c->stream_left = n;
}

/* The default response's head and body. */
static void put_default(struct conn *c)
{
    put_head(c, 200, g.ctype, g.body_len);
    if (g.file_body)
        put_body(c, g.file_body, g.body_len);
    else
        put_fill(c, g.body_len);
}

/* Answers with an empty error response and closes once it is sent. */
static void conn_fail(struct conn *c, int status)
{
    c->keep_alive = false;
    c->failed = true;
    put_head(c, status, "text/plain", 0);
    c->state = CONN_CLOSING;
}

static void echo_begin(struct conn *c, const struct request *rq, const char *fields, const char *end)
{
    struct buf *b = &c->echo;
    struct slice line = {rq->method.p, (size_t)(rq->version.p + rq->version.len - rq->method.p)};
    struct slice name, value;
    b->len = 0;
    buf_puts(b, "{\"request_line\": ");
    buf_json(b, line);
    buf_puts(b, ", \"method\": ");
    buf_json(b, rq->method);
    buf_puts(b, ", \"target\": ");
    buf_json(b, rq->target);
    buf_puts(b, ", \"version\": ");
    buf_json(b, rq->version);
    buf_puts(b, ", \"headers\": [");
    bool first = true;
    for (const char *p = fields; next_field(&p, end, &name, &value) > 0; first = false) {
        buf_puts(b, first ? "[" : ", [");
        buf_json(b, name);
        buf_puts(b, ", ");
        buf_json(b, value);
        buf_puts(b, "]");
    }
    buf_puts(b, "], \"peer\": ");
    buf_json(b, (struct slice){c->peer, strlen(c->peer)});
}

static void respond(struct conn *c)
{
    char body[64];
    int n;
    switch (c->resp) {
    case RESP_FIXED:
        if (g.fixed_ka.len > 0 && c->keep_alive && !c->http10 && !c->head_only) {
            buf_put(&c->out, g.fixed_ka.p, g.fixed_ka.len);
            break;
        }
        put_default(c);
        break;
    case RESP_BYTES:
        put_head(c, 200, "application/octet-stream", c->bytes_n);
        put_fill(c, c->bytes_n);
        break;
    case RESP_SINK:
        n = snprintf(body, sizeof body, "{\"received\": %" PRIu64 "}\n", c->body_bytes);
        put_head(c, 200, "application/json", (uint64_t)n);
        put_body(c, body, (size_t)n);
        break;
    case RESP_ECHO:
        n = snprintf(body, sizeof body, ", \"body_bytes\": %" PRIu64 "}\n", c->body_bytes);
        buf_put(&c->echo, body, (size_t)n);
        put_head(c, 200, "application/json", c->echo.len);
        put_body(c, c->echo.p, c->echo.len);
        break;
    }
}

/* ---- per-connection protocol ------------------------------------------- */

/* Picks the response for a parsed head and starts reading its body. */
static void request_begin(struct conn *c, const struct request *rq, const char *fields, const char *end)
{
    struct slice path = rq->target;
    const char *q = memchr(path.p, '?', path.len);
    if (q != NULL)
        path.len = (size_t)(q - path.p);
    bool get = slice_eq(rq->method, "GET"), head = slice_eq(rq->method, "HEAD");

    c->http10 = rq->http10;
    c->keep_alive = rq->http10 ? rq->conn_keep_alive && !rq->conn_close : !rq->conn_close;
    if (rq->chunked && rq->has_length)
        c->keep_alive = false;  /* RFC 9112 section 6.3: close after responding */
    c->head_only = head;
    c->chunked = rq->chunked;
    c->body_left = rq->chunked ? 0 : rq->length;
    c->body_bytes = 0;
    c->ch = (struct chunker){.st = CH_SIZE};

    if ((get || head) && path.len > 7 && memcmp(path.p, "/bytes/", 7) == 0) {
        struct slice n = {path.p + 7, path.len - 7};
        if (parse_u64(n, &c->bytes_n) < 0 || c->bytes_n > BYTES_MAX) {
            conn_fail(c, 400);
            return;
        }
        c->resp = RESP_BYTES;
    } else if (slice_eq(rq->method, "POST") && slice_eq(path, "/sink")) {
        c->resp = RESP_SINK;
    } else if (g.echo) {
        c->resp = RESP_ECHO;
        echo_begin(c, rq, fields, end);
    } else {
        c->resp = RESP_FIXED;
    }
    if (rq->expect_continue && !rq->http10 && (rq->chunked || rq->length > 0))
        buf_puts(&c->out, "HTTP/1.1 100 Continue\r\n\r\n");
    c->state = CONN_BODY;
}

/* Parses one head from p; returns the bytes it used, 0 when incomplete. */
static size_t conn_head(struct conn *c, const char *p, size_t n)
{
    const char *e = memmem(p, n, "\r\n\r\n", 4);
    if (e == NULL)
        return 0;
    const char *line_end = memmem(p, (size_t)(e - p) + 2, "\r\n", 2);
    struct request rq;
    memset(&rq, 0, sizeof rq);
    if (parse_request_line(&rq, p, line_end) < 0 || parse_fields(&rq, line_end + 2, e + 2) < 0)
        conn_fail(c, 400);
    else
        request_begin(c, &rq, line_end + 2, e + 2);
    return (size_t)(e - p) + 4;
}

/* Consumes body bytes; returns 1 when the request is answered, 0 for more, -1 if malformed. */
static int conn_body(struct conn *c, const char *p, size_t n, size_t *used)
{
    if (c->chunked) {
        uint64_t data;
        int r = chunk_feed(&c->ch, p, n, used, &data);
        c->body_bytes += data;
        if (r <= 0)
            return r;
    } else {
        size_t take = n < c->body_left ? n : (size_t)c->body_left;
        *used = take;
        c->body_left -= take;
        c->body_bytes += take;
        if (c->body_left > 0)
            return 0;
    }
    respond(c);
    c->state = c->keep_alive ? CONN_HEAD : CONN_CLOSING;
    return 1;
}

/*
 * Handles as much buffered input as output allows.  Returns 1 when it
 * stopped because output is pending, 0 when it needs more input, -1 on
 * allocation failure.
 */
static int conn_process(struct conn *c)
{
    size_t off = 0;
    int rc = 0;
    while (c->state != CONN_CLOSING) {
        if (c->stream_left > 0 || c->out.len - c->out_off >= OUT_HIGH) {
            rc = 1;
            break;
        }
        if (c->state == CONN_HEAD) {
            /* RFC 9112 section 2.2: ignore empty lines before a request line. */
            while (c->in_len - off >= 2 && c->in[off] == '\r' && c->in[off + 1] == '\n')
                off += 2;
            size_t used = conn_head(c, c->in + off, c->in_len - off);
            if (used == 0) {
                if (c->in_len == IN_SIZE && off == 0)
                    conn_fail(c, 431);
                break;
            }
            off += used;
        } else {
            size_t used = 0;
            int r = conn_body(c, c->in + off, c->in_len - off, &used);
            off += used;
            if (r < 0)
                conn_fail(c, 400);
            if (r <= 0)
                break;
        }
    }
    memmove(c->in, c->in + off, c->in_len - off);
    c->in_len -= off;
    return c->out.failed || c->echo.failed ? -1 : rc;
}

static bool conn_output_pending(const struct conn *c)
{
    return c->out_off < c->out.len || c->stream_left > 0;
}

/* Sends queued output; 1 when all is sent, 0 when the socket is full, -1 on error. */
static int conn_flush(struct conn *c)
{
    while (conn_output_pending(c)) {
        ssize_t n;
        if (c->out_off < c->out.len) {
            n = send(c->fd, c->out.p + c->out_off, c->out.len - c->out_off, MSG_NOSIGNAL);
            if (n > 0 && (c->out_off += (size_t)n) == c->out.len)
                c->out.len = c->out_off = 0;
        } else {
            size_t k = c->stream_left < FILL_SIZE ? (size_t)c->stream_left : FILL_SIZE;
            n = send(c->fd, g.fill, k, MSG_NOSIGNAL);
            if (n > 0)
                c->stream_left -= (uint64_t)n;
        }
        if (n < 0 && errno != EINTR)
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
    }
    return 1;
}

static struct conn *conn_new(int fd, const struct sockaddr_in *peer)
{
    struct conn *c = g.free_list;
    if (c != NULL) {
        g.free_list = c->next_free;
    } else {
        c = calloc(1, sizeof *c);
        if (c == NULL)
            return NULL;
    }
    c->fd = fd;
    char ip[INET_ADDRSTRLEN] = "?";
    inet_ntop(AF_INET, &peer->sin_addr, ip, sizeof ip);
    snprintf(c->peer, sizeof c->peer, "%s:%u", ip, (unsigned)ntohs(peer->sin_port));
    c->events = EPOLLIN;
    c->state = CONN_HEAD;
    c->eof = c->failed = false;
    c->in_len = 0;
    c->out.len = c->out_off = 0;
    c->out.failed = c->echo.failed = false;
    c->stream_left = 0;
    return c;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Buffers stay allocated with the connection on the free list. */
static void conn_close(struct conn *c)
{
    if (c->state == CONN_LINGER) {
        if (c->linger_prev != NULL)
            c->linger_prev->linger_next = c->linger_next;
        else
            g.lingering = c->linger_next;
        if (c->linger_next != NULL)
            c->linger_next->linger_prev = c->linger_prev;
    }
    close(c->fd);
    c->next_free = g.free_list;
    g.free_list = c;
}

static void conn_update_events(struct conn *c)
{
    uint32_t want = 0;
    if (conn_output_pending(c))
        want = EPOLLOUT;
    else if (!c->eof && (c->in_len < IN_SIZE || c->state == CONN_LINGER))
        want = EPOLLIN;
    if (want == c->events)
        return;
    struct epoll_event ev = {.events = want, .data.ptr = c};
    if (epoll_ctl(g.epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) {
        conn_close(c);
        return;
    }
    c->events = want;
}

/* Everything is sent and the connection must end: close, or linger if input was left. */
static void conn_finish(struct conn *c)
{
    if (c->eof || (!c->failed && c->in_len == 0) || shutdown(c->fd, SHUT_WR) < 0) {
        conn_close(c);
        return;
    }
    c->state = CONN_LINGER;
    c->linger_until = now_ms() + LINGER_MS;
    c->linger_bytes = 0;
    c->linger_prev = NULL;
    c->linger_next = g.lingering;
    if (g.lingering != NULL)
        g.lingering->linger_prev = c;
    g.lingering = c;
    conn_update_events(c);
}

static void conn_linger_read(struct conn *c)
{
    ssize_t n = recv(c->fd, c->in, IN_SIZE, 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    c->linger_bytes += n > 0 ? (uint64_t)n : 0;
    c->linger_until = now_ms() + LINGER_MS;
    if (n <= 0 || c->linger_bytes > LINGER_MAX)
        conn_close(c);
}

static void linger_sweep(void)
{
    int64_t now = now_ms();
    struct conn *c = g.lingering;
    while (c != NULL) {
        struct conn *next = c->linger_next;
        if (now >= c->linger_until)
            conn_close(c);
        c = next;
    }
}

static void conn_event(struct conn *c, uint32_t events)
{
    if (events & EPOLLERR)
        goto close;
    if (c->state == CONN_LINGER) {
        conn_linger_read(c);
        return;
    }
    if ((events & (EPOLLIN | EPOLLHUP)) && !c->eof && c->in_len < IN_SIZE) {
        ssize_t n = recv(c->fd, c->in + c->in_len, IN_SIZE - c->in_len, 0);
        if (n > 0)
            c->in_len += (size_t)n;
        else if (n == 0)
            c->eof = true;
        else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            goto close;
    }
    int rc;
    do {
        rc = conn_process(c);
        if (rc < 0)
            goto close;
        int w = conn_flush(c);
        if (w < 0)
            goto close;
        if (w == 0)
            break;
        if (c->state == CONN_CLOSING) {
            conn_finish(c);
            return;
        }
    } while (rc == 1);
    if (c->eof && !conn_output_pending(c))
        goto close;
    conn_update_events(c);
    return;
close:
    conn_close(c);
}

/* ---- listener and main loop -------------------------------------------- */

/*
 * Out of descriptors, a pending connection would keep the level-triggered
 * listener ready forever; accept it on the spare descriptor and drop it.
 */
static void accept_shed(void)
{
    close(g.spare_fd);
    int fd = accept(g.lfd, NULL, NULL);
    if (fd >= 0)
        close(fd);
    g.spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

static void accept_all(void)
{
    for (;;) {
        struct sockaddr_in sa = {.sin_family = AF_INET};
        socklen_t salen = sizeof sa;
        int fd = accept4(g.lfd, (struct sockaddr *)&sa, &salen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE)
                accept_shed();
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = conn_new(fd, &sa);
        if (c == NULL) {
            close(fd);
            continue;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(g.epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
            conn_close(c);
    }
}

static int listen_on(const char *host, int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "origin: invalid IPv4 address '%s'\n", host);
        return -1;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 4096) < 0) {
        fprintf(stderr, "origin: listen on %s:%d: %s\n", host, port, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

/* --body-file: the whole file, once. */
static int read_body_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    struct buf b = {0};
    char piece[65536];
    size_t n;
    if (f == NULL) {
        fprintf(stderr, "origin: %s: %s\n", path, strerror(errno));
        return -1;
    }
    while ((n = fread(piece, 1, sizeof piece, f)) > 0)
        buf_put(&b, piece, n);
    fclose(f);
    if (b.failed || b.len > INLINE_MAX * 64) {
        fprintf(stderr, "origin: %s: too large or out of memory\n", path);
        free(b.p);
        return -1;
    }
    g.file_body = b.p ? b.p : strdup("");
    g.body_len = b.len;
    return 0;
}

static int setup(const char *host, int port)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    /* No SA_RESTART: epoll_wait returns EINTR and the loop sees g_stop. */
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    memset(g.fill, 'x', sizeof g.fill);
    struct conn tmpl = {.keep_alive = true};
    put_default(&tmpl);
    if (tmpl.out.failed)
        return -1;
    if (tmpl.stream_left == 0)
        g.fixed_ka = tmpl.out;
    else
        free(tmpl.out.p);       /* a streamed body cannot be precomputed */

    g.spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    g.lfd = listen_on(host, port);
    g.epfd = epoll_create1(EPOLL_CLOEXEC);
    if (g.lfd < 0 || g.epfd < 0)
        return -1;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    return epoll_ctl(g.epfd, EPOLL_CTL_ADD, g.lfd, &ev);
}

static void run(void)
{
    struct epoll_event evs[MAX_EVENTS];
    while (!g_stop) {
        int n = epoll_wait(g.epfd, evs, MAX_EVENTS, g.lingering != NULL ? LINGER_MS / 2 : -1);
        if (n < 0 && errno != EINTR) {
            fprintf(stderr, "origin: epoll_wait: %s\n", strerror(errno));
            return;
        }
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL)
                accept_all();
            else
                conn_event(evs[i].data.ptr, evs[i].events);
        }
        if (g.lingering != NULL)
            linger_sweep();
    }
}

static int write_pid_file(const char *path)
{
    FILE *f = fopen(path, "w");
    if (f == NULL || fprintf(f, "%ld\n", (long)getpid()) < 0 || fclose(f) != 0) {
        fprintf(stderr, "origin: pid file %s: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: origin PORT [--host ADDR] [--body N | --body-file F] [--type T] [--echo] [--pid-file F]\n"
                    "  answers 200 with N bytes of 'x' (default 100) or file F's bytes, as\n"
                    "  Content-Type T (default text/plain), or with --echo a JSON\n"
                    "  description of the request and its TCP peer; GET /bytes/N streams N\n"
                    "  bytes; POST /sink counts the request body.  Listens on 127.0.0.1\n"
                    "  unless --host.\n");
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *pid_file = NULL, *body_file = NULL;
    long port = -1;
    g.body_len = 100;
    g.ctype = "text/plain";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has_value = i + 1 < argc;
        if (strcmp(a, "--echo") == 0) {
            g.echo = true;
        } else if (strcmp(a, "--body") == 0 && has_value) {
            i++;
            struct slice s = {argv[i], strlen(argv[i])};
            if (parse_u64(s, &g.body_len) < 0 || g.body_len > BYTES_MAX)
                return usage(), 2;
        } else if (strcmp(a, "--body-file") == 0 && has_value) {
            body_file = argv[++i];
        } else if (strcmp(a, "--type") == 0 && has_value) {
            g.ctype = argv[++i];
        } else if (strcmp(a, "--pid-file") == 0 && has_value) {
            pid_file = argv[++i];
        } else if (strcmp(a, "--host") == 0 && has_value) {
            host = argv[++i];
        } else if (a[0] != '-' && port < 0) {
            char *end;
            port = strtol(a, &end, 10);
            if (*end != '\0' || port < 1 || port > 65535)
                return usage(), 2;
        } else {
            return usage(), 2;
        }
    }
    if (port < 0)
        return usage(), 2;
    if (body_file != NULL && read_body_file(body_file) < 0)
        return 1;
    if (setup(host, (int)port) < 0)
        return 1;
    if (pid_file != NULL && write_pid_file(pid_file) < 0)
        return 1;
    fprintf(stderr, "origin: listening on %s:%ld (%s)\n", host, port,
            g.echo ? "echo" : "fixed body");
    run();
    if (pid_file != NULL)
        unlink(pid_file);
    return 0;
}

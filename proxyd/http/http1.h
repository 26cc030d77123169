/*
 * http1.h - strict, zero-copy HTTP/1.1 message-head parsers (RFC 9112,
 * RFC 9110) and a streaming chunked-body decoder.
 *
 * Invariants:
 *  - Nothing here allocates.  Every h1_slice_t points into the caller's
 *    buffer (the one exception: the path of an absolute-form target without
 *    a path is the static string "/"), so the buffer must outlive the parsed
 *    request and must not move while slices are in use.
 *  - The head parsers are pure functions of (buf, len): calling them again
 *    from the start when more bytes have arrived gives the same answer as a
 *    single call on the whole buffer.  A prefix of a valid head always parses
 *    as "incomplete" (0), never as an error.  h1_head_ready() lets a caller
 *    skip re-parses that cannot complete.
 *  - Anything that could make two implementations disagree on where a message
 *    ends (smuggling) is refused, never repaired: bare CR/LF, obs-fold,
 *    Content-Length with Transfer-Encoding, conflicting lengths, codings other
 *    than a single final "chunked".
 *  - Header names and values are not case-folded or copied; compare names
 *    case-insensitively.  Values have surrounding OWS trimmed.
 */
#ifndef PROXYD_HTTP1_H
#define PROXYD_HTTP1_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *p;
    size_t n;
} h1_slice_t;

/* Capacity of the header arrays; h1_limits_t.max_headers is clamped to it. */
#define H1_HEADERS_CAP 128
/* Empty lines (CRLF) tolerated before a request-line (RFC 9112 §2.2). */
#define H1_MAX_LEADING_CRLF 4

typedef struct {
    size_t max_header_size; /* whole head incl. final CRLF; 431 beyond */
    size_t max_uri_size;    /* request-target bytes; 414 beyond */
    size_t max_headers;     /* field lines; 431 beyond */
} h1_limits_t;

/* Field lines in a message head unless the caller says otherwise. */
#define H1_MAX_HEADERS 100
#define H1_LIMITS_DEFAULT {16384, 8192, H1_MAX_HEADERS}

typedef enum {
    H1_METHOD_OTHER,
    H1_METHOD_GET,
    H1_METHOD_HEAD,
    H1_METHOD_POST,
    H1_METHOD_PUT,
    H1_METHOD_DELETE,
    H1_METHOD_PATCH,
    H1_METHOD_OPTIONS,
    H1_METHOD_CONNECT,
    H1_METHOD_TRACE,
} h1_method_t;

/* Field names known by number; everything else is H1_HDR_OTHER. */
typedef enum {
    H1_HDR_OTHER,
    H1_HDR_HOST,
    H1_HDR_CONTENT_LENGTH,
    H1_HDR_TRANSFER_ENCODING,
    H1_HDR_CONNECTION,
    H1_HDR_KEEP_ALIVE,
    H1_HDR_PROXY_CONNECTION,
    H1_HDR_TE,
    H1_HDR_UPGRADE,
    H1_HDR_TRAILER,
    H1_HDR_EXPECT,
    /* named for the proxy's sake, not interpreted by the parser: */
    H1_HDR_USER_AGENT,
    H1_HDR_REFERER,
    H1_HDR_SERVER,
    H1_HDR_DATE,
    H1_HDR_X_FORWARDED_FOR,
    H1_HDR_X_REAL_IP,
    H1_HDR_X_FORWARDED_PROTO,
    H1_HDR_X_FORWARDED_HOST,
    H1_HDR_X_FORWARDED_PORT,
} h1_hdr_id_t;

typedef struct {
    h1_slice_t name;
    h1_slice_t value;
    uint8_t id;  /* h1_hdr_id_t */
    bool hop;    /* hop-by-hop (RFC 9110 §7.6.1): a proxy must not forward it */
} h1_header_t;

typedef enum {
    H1_FORM_ORIGIN,    /* "/path?query" */
    H1_FORM_ABSOLUTE,  /* "http://host/path?query" */
    H1_FORM_AUTHORITY, /* "host:port", CONNECT only */
    H1_FORM_ASTERISK,  /* "*", OPTIONS only */
} h1_form_t;

/* Flags from the Connection field (RFC 9110 §7.6.1). */
#define H1_CONN_CLOSE 0x1u
#define H1_CONN_KEEP_ALIVE 0x2u
#define H1_CONN_UPGRADE 0x4u

typedef struct {
    h1_slice_t method;
    h1_method_t method_id;
    h1_slice_t target;  /* request-target as received */
    h1_form_t form;
    h1_slice_t scheme;  /* absolute-form only, else empty */
    h1_slice_t path;    /* origin/absolute: "/..." without query; "*"; empty for CONNECT */
    h1_slice_t query;   /* after '?', without it; .p == NULL when there is no '?' */
    int minor;          /* 0 or 1 */
    size_t nheaders;
    h1_slice_t host;    /* target authority (absolute/authority form) else Host value */
    int64_t content_length; /* -1: none */
    bool chunked;       /* Transfer-Encoding: chunked (the only coding accepted) */
    bool keep_alive;    /* persistent after this exchange (RFC 9112 §9.3) */
    bool upgrade;       /* Connection: upgrade and an Upgrade field */
    bool websocket;     /* upgrade, GET, HTTP/1.1, Upgrade lists "websocket" */
    bool expect_continue; /* Expect: 100-continue on HTTP/1.1 */
    unsigned conn_flags;  /* H1_CONN_* */
    h1_slice_t upgrade_proto; /* Upgrade field value (last one) */
    int status;         /* on error: the status to answer */
    const char *error;  /* on error: a short static reason */
    h1_header_t headers[H1_HEADERS_CAP]; /* last: only [0, nheaders) is written */
} h1_request_t;

typedef struct {
    int minor;
    int status;         /* 100..599 */
    h1_slice_t reason;  /* may be empty */
    size_t nheaders;
    int64_t content_length; /* -1: none */
    bool chunked;
    bool keep_alive;    /* per version and Connection only; see h1_response_body() */
    unsigned conn_flags;
    const char *error;  /* on error: a short static reason (answer 502) */
    h1_header_t headers[H1_HEADERS_CAP]; /* last: only [0, nheaders) is written */
} h1_response_t;

/* How the body of a response is delimited (RFC 9112 §6.3). */
typedef enum {
    H1_BODY_NONE,    /* no body: HEAD, 1xx, 204, 304, or Content-Length: 0 */
    H1_BODY_LENGTH,  /* content_length bytes */
    H1_BODY_CHUNKED, /* use h1_chunked_decode() */
    H1_BODY_CLOSE,   /* until the upstream closes; the connection is not reusable */
    H1_BODY_TUNNEL,  /* 101, or 2xx to CONNECT: both sides become a byte stream */
} h1_body_t;

/*
 * Parse a request head at buf[0..len).  Returns the number of bytes of the
 * head (request line, fields, final CRLF, and skipped leading CRLFs), 0 when
 * more bytes are needed, or -1 with req->status (400, 414, 431, 501, 505) and
 * req->error set.  lim may be NULL for H1_LIMITS_DEFAULT.
 */
int h1_parse_request(const char *buf, size_t len, h1_request_t *req, const h1_limits_t *lim);

/*
 * Parse an upstream response head.  Same return convention; on -1 only
 * res->error is set (the proxy answers 502).  No leading CRLF is skipped.
 * 1xx other than 101 are interim: the caller consumes them and parses again.
 */
int h1_parse_response(const char *buf, size_t len, h1_response_t *res, const h1_limits_t *lim);

/* Body framing of a parsed response to a request with method `req_method`. */
h1_body_t h1_response_body(const h1_response_t *res, h1_method_t req_method);

/*
 * Cheap pre-check for callers that re-parse from the start on every read:
 * true when buf[0..len) holds an empty line, a bare LF, or more than max
 * bytes, i.e. when a parse may give something other than 0.  *scanned is the
 * resume offset (0 for a new message); it only grows.
 */
bool h1_head_ready(const char *buf, size_t len, size_t *scanned, size_t max);

/* First header with this id (or NULL); a small convenience for callers. */
const h1_header_t *h1_find_header(const h1_header_t *h, size_t n, h1_hdr_id_t id);

/* ---- chunked transfer coding (RFC 9112 §7.1) ---------------------------- */

#define H1_CHUNK_MAX_SIZE (UINT64_C(1) << 62)

enum {
    H1_CHUNK_ERROR = -1, /* st->error says why; the stream is unusable */
    H1_CHUNK_MORE = 0,   /* all input consumed, need more */
    H1_CHUNK_DATA = 1,   /* *data holds decoded bytes; call again with the rest */
    H1_CHUNK_DONE = 2,   /* last-chunk and trailer section consumed */
};

typedef struct {
    int state;
    uint64_t remain;        /* size being read, then bytes left in the chunk */
    uint64_t total;         /* decoded body bytes so far */
    size_t line_len;        /* bytes of the current size line or trailer section */
    size_t max_line;        /* chunk-size line incl. extensions (default 4096) */
    size_t max_trailer;     /* trailer section bytes (default 8192) */
    unsigned ntrailers;     /* trailer fields seen (validated, then discarded) */
    const char *error;
} h1_chunked_t;

void h1_chunked_init(h1_chunked_t *st);

/*
 * Decode from in[0..len).  *consumed is set to the bytes used by this call
 * (always <= len); on H1_CHUNK_DATA *data points into `in` and the caller
 * relays it, then calls again with in + *consumed.  On H1_CHUNK_DONE the
 * bytes from in + *consumed on belong to the next message.  Trailer fields
 * are validated like header fields and discarded (RFC 9110 §6.5.1 allows a
 * recipient to drop them).
 */
int h1_chunked_decode(h1_chunked_t *st, const char *in, size_t len, size_t *consumed,
                      h1_slice_t *data);

#endif

/*
 * request.h - one HTTP request as every protocol session hands it over, and
 * the path it travels (docs/architecture.md draws it):
 *
 *   session (HTTP/1.1; HTTP/2 next) parses a head into a request_t
 *     -> phases, in order: route -> access -> limit        (http/phases.c)
 *     -> one content handler: proxy | static | return | redirect | acme
 *     -> response head: header filters (top..bottom) -> session frames it
 *     -> response body: body filters (top..bottom) -> session frames it
 *
 * A request is a stream of a session, not the connection: r->conn is the
 * transport it arrived on (client address, TLS), r->sess the protocol that
 * frames its answer, and a connection may carry several at once.
 *
 * State transitions swap handler pointers: a handler sets r->on_body (the
 * session holds request-body bytes, or the body ended), r->on_drain (the
 * session can take response bytes again) and r->on_abort (the request is
 * torn down) as it moves from state to state.
 *
 * Strings of the request head are slices into one arena copy of the head;
 * nothing of the request is NUL-terminated or strlen'd on the hot path.
 */
#ifndef PROXYD_REQUEST_H
#define PROXYD_REQUEST_H

#include "conn/conn.h"
#include "core/module.h"

typedef h1_slice_t slice_t;
#define SLICE_LIT(s) ((slice_t){(s), sizeof(s) - 1})

/* How a response body is delimited, whatever the protocol. */
enum http_body_kind {
    HTTP_BODY_NONE,   /* no body (HEAD, 204, 304, errors to HEAD); `length` may still be announced */
    HTTP_BODY_LENGTH, /* exactly `length` bytes */
    HTTP_BODY_STREAM, /* unknown length: the session frames it (chunked, or DATA frames) */
    HTTP_BODY_TUNNEL, /* 101: both directions become a byte stream */
};

typedef struct {
    int status;
    uint8_t body;              /* http_body_kind */
    int64_t length;            /* Content-Length to announce, -1 none */
    h1_header_t *fields;       /* in the request's arena, or slices valid during http_send_head */
    uint32_t nfields, cap;
    uint64_t name_lens;        /* bit (length % 64) of every name added: most removals end here */
} http_resp_t;

#define HTTP_NAME_LEN_BIT(n) (UINT64_C(1) << ((n) & 63))

/* What a protocol session does for its requests (the bottom of both filter chains). */
typedef struct http_session_ops {
    const char *proto;         /* "HTTP/1.1" (access log) */
    void (*send_head)(request_t *r);
    /* Payload bytes the session takes now (framing excluded), 0 when blocked. */
    size_t (*send_space)(request_t *r);
    void (*send_data)(request_t *r, const char *p, size_t n); /* n <= send_space */
    void (*send_file)(request_t *r, int fd, uint64_t off, uint64_t len); /* takes fd */
    void (*send_end)(request_t *r);
    /* Write what is queued: 0 all out, 1 some left (on_drain follows), -1 gone. */
    int (*flush)(request_t *r);
    void (*send_interim)(request_t *r, int status); /* 100 Continue */
    /* Request body (or tunnel) bytes held now, at most max, in place: 1 and
     * *data (the caller takes all of it), 0 none yet (r->on_body follows),
     * 2 the body is complete, -1 the request failed (already answered). */
    int (*body_next)(request_t *r, size_t max, slice_t *data);
    /* The response cannot be completed: end the stream (HTTP/1.1 closes). */
    void (*abort)(request_t *r, conn_close_reason_t why);
    /* Take back a response of which no byte has left yet (a failure found
     * before the first flush can still be answered): true if it could. */
    bool (*retract)(request_t *r);
} http_session_ops_t;

/* A content handler; start() runs once the phases let the request through. */
typedef struct http_handler {
    const char *name;
    void (*start)(request_t *r);
} http_handler_t;

struct request {
    conn_t *conn;
    const http_session_ops_t *sess;
    const http_handler_t *handler;
    void *stream;                /* the session's per-request state */
    void (*on_body)(request_t *r);
    void (*on_drain)(request_t *r);
    void (*on_abort)(request_t *r);
    void *ctx[MODULE_CTX_MAX];   /* per-request state of the modules that want one */
    struct request_cleanup *cleanups; /* run when the request ends (request_cleanup_add) */
    tref_t *table;
    uint32_t site, route;        /* RT_NONE when unmatched */
    uint64_t id;                 /* 0 once finished: callers that may outlive it compare ids */
    uint64_t started_ms, upstream_ms;
    uint64_t bytes_at_start;     /* conn->bytes_out when the response began (HTTP/1.1) */
    uint64_t resp_bytes;         /* bytes of the response written (set when logged) */
    int status;
    uint8_t client_family;       /* the client's address (4 or 6; 0 unix): the TCP peer, */
    uint8_t client_ip[16];       /* or what a trusted proxy's X-Forwarded-For says (route phase) */
    uint8_t phase;               /* the next of http_phases[] to run */
    uint8_t method_id;           /* h1_method_t */
    uint8_t form;                /* h1_form_t */
    bool peer_trusted;           /* the connection's peer is in trusted_proxies (route phase) */
    bool head, http10, keep_alive, expect_continue, upgrade, websocket_ok, upstream_answered;
    bool response_started, response_done, body_done, tunnel;
    bool body_filtered;          /* a body filter changes the bytes: send data, not a file */
    /* the request head: slices into `raw`, the arena copy of the head */
    slice_t method, host, target, path, query, upgrade_proto;
    slice_t path_raw;            /* the path as received (path is normalized by the route phase) */
    slice_t user_agent, referer; /* empty unless the access log is on */
    const h1_header_t *headers;
    size_t nheaders;
    int64_t content_length;      /* as received: -1 none */
    int64_t body_length;         /* body to forward: -1 unknown (chunked), 0 none, N */
    uint64_t body_bytes;         /* request body bytes taken so far */
    uint64_t max_body;           /* 413 beyond (0: no limit) */
    http_resp_t resp;
    arena_t arena;
    request_t *next_free;        /* the free list's link while unused */
    char request_id[17];
};

/* ---- for sessions ---------------------------------------------------------- */

/* A new request on c, framed by sess (from a free list; NULL out of memory). */
request_t *request_new(conn_t *c, const http_session_ops_t *sess);
/* Take the parsed head h (slices into a buffer about to be reused): one
 * arena copy, slices rebased into it.  -1 out of memory. */
int request_set_head(request_t *r, const h1_request_t *h, size_t head_len);
/* Run the phases and then the content handler (http/phases.c). */
void request_run(request_t *r);
/* The request ends (response complete, or torn down): log, count, free. */
void request_finish(request_t *r);
/* The session can take response bytes again: what filters hold goes first,
 * then the handler hears of it (r->on_drain). */
void http_drained(request_t *r);

/* Something to release when the request ends, whatever way it ends (state
 * a module keeps outside the arena: compressor contexts).  Run in reverse
 * order of adding, after the handler's on_abort. */
typedef struct request_cleanup {
    void (*fn)(request_t *r);
    struct request_cleanup *next;
} request_cleanup_t;
void request_cleanup_add(request_t *r, void (*fn)(request_t *r));

/* ---- for handlers: answering ------------------------------------------------ */

/* Start a response: status, Server and no fields yet. */
void http_resp_init(request_t *r, int status);
void http_resp_add(request_t *r, const char *name, size_t nlen, const char *value, size_t vlen);
#define HTTP_RESP_LIT(r, name, value) http_resp_add((r), (name), sizeof(name) - 1, (value), sizeof(value) - 1)
void http_resp_add_str(request_t *r, const char *name, const char *value);
/* Remove every field named name (case-insensitively). */
void http_resp_remove(request_t *r, const char *name, size_t nlen);
/* The response's first field named name (case-insensitively), or NULL. */
h1_header_t *http_resp_field(request_t *r, const char *name, size_t nlen);
/* The request's next field named name (case-insensitively) at index *at or
 * after; *at moves past it.  NULL when there is none left. */
const h1_header_t *http_req_field(const request_t *r, const char *name, size_t nlen, size_t *at);
/* Range, If-Range and the preconditions (RFC 9110 §13): the client's own,
 * which a cache fill does not pass on. */
bool http_field_conditional(const h1_header_t *x);
/* Send r->resp through the header filters to the session. */
void http_send_head(request_t *r);
/* Body bytes the filters and the session take now; 0: flush, and when
 * output is still pending wait for r->on_drain. */
size_t http_send_space(request_t *r);
/* Body bytes through the body filters; n <= http_send_space(r).  After
 * sending, a handler flushes (r->sess->flush) and, when output is still
 * pending, waits for r->on_drain. */
void http_send_data(request_t *r, const char *p, size_t n);
/* The producer has nothing more for now (an upstream that has sent all it
 * had): a filter that holds bytes back (a compressor) lets them go, so a
 * slow stream reaches the client at the origin's pace. */
void http_send_flush(request_t *r);
/* A file segment, sent by the session as it is (sendfile); only when no
 * body filter changes the bytes (!r->body_filtered). */
void http_send_file(request_t *r, int fd, uint64_t off, uint64_t len);
/* The end of the body.  The request may be over when this returns. */
void http_send_end(request_t *r);
/* A complete small answer: status, Content-Type, body (not sent to HEAD). */
void http_respond(request_t *r, int status, const char *ctype, const char *body, size_t blen);
/* An error answer "<status> <reason>\n"; reason (may be NULL) goes to the
 * error log for 5xx.  After the response started, the stream is aborted. */
void http_error(request_t *r, int status, const char *reason);
/* r->resp (status and extra fields set) with the "<status> <reason>\n" body. */
void http_send_status_body(request_t *r);
void http_redirect(request_t *r, int status, const char *location, size_t n);
const char *http_status_reason(int status);

/* ---- filters ------------------------------------------------------------------ */

/*
 * The filter chains, nginx style: each filter module keeps the filter that
 * was on top when it registered as its `next`, and puts itself on top.  The
 * bottom of every chain is the session.  Filters register at worker start
 * (modules' worker_init), so the order is fixed and known.
 *
 * A body filter gets bytes (n may be 0) and flags:
 *   HTTP_BODY_FLUSH   the producer has nothing more for now: pass on what
 *                     is held back;
 *   HTTP_BODY_LAST    the end of the body;
 *   HTTP_BODY_RESUME  the session can take bytes again (http_drained): push
 *                     what is held; the session, at the bottom, then calls
 *                     the handler's on_drain.
 * A filter that holds bytes the session could not take (its output is not
 * a copy of its input) passes RESUME on only once it holds none, answers 0
 * from its space filter until then, and after LAST or RESUME flushes the
 * session itself so that the next drain calls it again.  The space chain
 * says how many bytes the filters and the session take now.
 */
enum { HTTP_BODY_FLUSH = 1u, HTTP_BODY_LAST = 2u, HTTP_BODY_RESUME = 4u };
typedef void (*http_header_filter_t)(request_t *r);
typedef void (*http_body_filter_t)(request_t *r, const char *p, size_t n, unsigned flags);
typedef size_t (*http_space_filter_t)(request_t *r);
extern http_header_filter_t http_top_header_filter;
extern http_body_filter_t http_top_body_filter;
extern http_space_filter_t http_top_space_filter;
/* The log phase: called for every request that ends (the access log sets it). */
extern void (*http_log)(const request_t *r);
extern bool http_log_agents; /* the log reads user_agent and referer */
/* The module: the session at the bottom of both chains. */
extern const module_t request_module;

#endif

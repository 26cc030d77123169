/*
 * conn.h - a client connection speaking HTTP/1.1, and the request it is
 * serving.
 *
 * A connection is an explicit state plus the buffers it holds only while
 * bytes are in flight:
 *
 *   [HANDSHAKE on TLS listeners] --> IDLE --bytes--> HEAD --head parsed--> request dispatched:
 *        return/redirect/error/static: RESPOND --flushed--> IDLE (keep-alive) | closed
 *        upstream: PROXY (body to upstream, response from upstream) --done--> IDLE | closed
 *        upgrade accepted: TUNNEL --either side closes--> closed
 *   a response after which the connection closes: LINGER (our side shut,
 *   the client's unread bytes drained for a moment so they cannot turn the
 *   response into a reset) --> closed
 *
 * Only one request per connection is served at a time; pipelined requests
 * wait in `in` and are parsed when the previous response is complete.
 */
#ifndef PROXYD_CONN_H
#define PROXYD_CONN_H

#include "core/worker.h"

enum conn_state { CS_IDLE, CS_HEAD, CS_RESPOND, CS_PROXY, CS_TUNNEL, CS_LINGER, CS_HANDSHAKE };

/* How the response body is framed towards the client. */
enum resp_mode { RM_NONE, RM_LENGTH, RM_CHUNKED, RM_CLOSE };

struct request {
    tref_t *table;
    uint32_t site, route;     /* RT_NONE when unmatched */
    uint64_t id;
    uint64_t started_ms, upstream_ms;
    int status;
    uint8_t method_id;        /* h1_method_t */
    bool keep_alive, head, websocket_ok, response_started, response_done, body_done;
    bool expect_continue, upgrade, http10, upstream_answered;
    char *replay;             /* saved upstream head for a retry on a fresh connection */
    size_t replay_len;
    int64_t body_remain;      /* request body: bytes left, or -1 when chunked */
    h1_chunked_t body_chunks; /* request body decoder when chunked */
    uint64_t body_bytes;      /* request body bytes relayed */
    uint64_t max_body;
    enum resp_mode resp_mode;
    int64_t resp_remain;      /* RM_LENGTH: bytes left from upstream */
    uint64_t resp_bytes;      /* bytes written to the client */
    int static_fd;            /* sendfile source, -1 */
    uint64_t static_off, static_left;
    upconn_t *up;
    uint32_t server;          /* table server index, RT_NONE */
    arena_t arena;            /* strings for the upstream request and the log */
    char *method, *host, *uri, *path, *user_agent, *referer, *xff;
    size_t path_len;
    char request_id[17];
};

struct conn {
    ev_io_t io;
    ev_timer_t timer;
    iobuf_t *in, *out;
    request_t *req;
    conn_t *next;             /* deferred-free list */
    conn_t *all_prev, *all_next; /* every open connection of the worker */
    uint8_t state;            /* conn_state */
    bool closed, read_paused, tls;
    bool tls_want_write;      /* the TLS layer needs writability to make progress */
    bool read_deferred;       /* queued for a read of data the TLS layer holds */
    struct ssl_st *ssl;       /* TLS connections only */
    tref_t *hs_table;         /* during the handshake: the table its SNI callback reads */
    uint8_t peer_family;      /* 4 or 6 (0 unix) */
    uint16_t peer_port, local_port;
    uint8_t peer_ip[16];
    uint32_t linger_left;     /* CS_LINGER: bytes we still drain */
};

void conn_accept(listener_t *l);
void conn_close(conn_t *c, const char *reason);
/* Write what is in c->out; arranges EV_WRITE for the rest.  -1 if the
 * connection was closed. */
int conn_flush(conn_t *c);
/* An error response (only before any response byte was sent; otherwise the
 * connection is closed).  reason goes to the error log. */
void conn_error(conn_t *c, int status, const char *reason);
/* The response has been completely queued in c->out. */
void conn_response_complete(conn_t *c);
/* Stop / resume reading the client (backpressure). */
void conn_pause_read(conn_t *c, bool pause);
/* Make room in c->out (allocating it); returns space available. */
size_t conn_out_space(conn_t *c);
void conn_free_deferred(void);
/* Draining: give connections between requests a short grace, then close. */
void conn_drain_idle(void);
/* (Re)arm the client body timeout while the proxy waits on request bytes. */
void conn_arm_body_timer(conn_t *c);
/* Reading resumed: a TLS connection may hold decrypted bytes epoll cannot
 * report; read them from the event loop's idle hook. */
void conn_run_deferred_reads(void);
const char *status_reason(int status);
/* Response head pieces: status line, Server, Date, security headers. */
void conn_head_begin(conn_t *c, int status);
void conn_printf(conn_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void conn_write(conn_t *c, const char *p, size_t n);
void conn_write_str(conn_t *c, const char *s);
#define CONN_LIT(c, lit) conn_write((c), (lit), sizeof(lit) - 1)
void conn_write_u64(conn_t *c, uint64_t v);

#endif

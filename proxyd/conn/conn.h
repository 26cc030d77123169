/*
 * conn.h - the transport of a client connection: accept, bytes in and out
 * (plain or TLS), one timer, lingering close and draining.  It knows
 * nothing of HTTP: the protocol spoken on a connection is a session behind
 * conn_session_ops_t, chosen when the connection is ready (HTTP/1.1 today;
 * ALPN will pick HTTP/2), which turns c->in into requests and writes their
 * responses into c->out.
 *
 *   [PROXY] --> [HANDSHAKE on TLS listeners] --> OPEN (the session runs) --> [LINGER] --> closed
 *
 * PROXY: on a listen entry with proxy_protocol, the PROXY protocol header
 * is read first (exactly its bytes: what follows is the client's) and the
 * address it states becomes the peer's, when the connecting peer is a
 * trusted proxy.
 *
 * LINGER: our side is shut after a final response and the client's unread
 * bytes are drained for a moment, so they cannot turn the response into a
 * reset (RFC 9112 §9.6).
 *
 * Invariants: a connection holds buffers only while bytes are in flight;
 * every teardown goes through conn_close(c, reason), which the session
 * hears first (on_close), and the memory is freed after the current batch
 * of events, since another event of the batch may still name it.
 */
#ifndef PROXYD_CONN_H
#define PROXYD_CONN_H

#include <sys/socket.h>
#include <sys/types.h>

#include "core/worker.h"

enum conn_state { CONN_HANDSHAKE, CONN_OPEN, CONN_LINGER, CONN_PROXY };

/* What a protocol session does with its connection's events. */
typedef struct conn_session_ops {
    const char *name;
    /* The session starts on a ready connection (bytes may already wait). */
    void (*on_open)(conn_t *c);
    /* n > 0: bytes were appended to c->in; -1: nothing new (the socket had
     * nothing, or c->in is full); 0: the client closed its side; -2: error. */
    void (*on_read)(conn_t *c, ssize_t n);
    /* Everything queued (c->out and a file segment) has been written. */
    void (*on_writable)(conn_t *c);
    /* The connection's timer fired (the session armed it). */
    void (*on_timeout)(conn_t *c);
    /* The connection is going away; tear down every request. */
    void (*on_close)(conn_t *c, conn_close_reason_t reason);
    /* The worker drains: close when idle, finish what is in flight. */
    void (*on_drain)(conn_t *c);
} conn_session_ops_t;

/* Room for a small session's state inside the connection (HTTP/1.1 fits;
 * a larger session keeps a pointer to its own allocation there), so an idle
 * connection is one allocation.  During the TLS handshake, before any
 * session, it holds the table the SNI callback reads. */
#define CONN_SESSION_INLINE 16

/* A file segment being sent after c->out (sendfile, or staged for TLS). */
typedef struct {
    int fd;
    uint64_t off, left;
} conn_file_t;

struct conn {
    ev_io_t io;
    ev_timer_t timer;
    iobuf_t *in, *out;
    const conn_session_ops_t *ops;
    conn_t *next;             /* deferred-free list */
    conn_t *all_prev, *all_next; /* every open connection of the worker */
    uint8_t state;            /* conn_state */
    bool closed, tls;
    bool want_read;           /* the session wants client bytes now */
    bool read_paused;         /* backpressure: the consumer has not taken what c->in holds */
    bool tls_want_write;      /* the TLS layer needs writability to make progress */
    bool read_deferred;       /* queued for a read of data the TLS layer holds */
    bool peer_counted;        /* counted for max_connections_per_ip (conn/peers.c) */
    uint8_t peer_family;      /* 4 or 6 (0 unix) */
    uint16_t peer_port, local_port;
    uint8_t peer_ip[16];
    uint32_t linger_left;     /* CONN_LINGER: bytes we still drain */
    uint8_t linger_why;       /* CONN_LINGER: the reason the close is counted under */
    struct ssl_st *ssl;       /* TLS connections only */
    uint64_t bytes_out;       /* written to the client, all requests */
    conn_file_t *file;        /* while a file segment is queued, else NULL */
    _Alignas(void *) unsigned char session_space[CONN_SESSION_INLINE];
};

/* The session's state, in the connection (see CONN_SESSION_INLINE). */
static inline void *conn_session(conn_t *c) { return c->session_space; }

void conn_accept(listener_t *l);
/* Serve fd, a connected non-blocking stream socket, as a connection accepted
 * on a plain listener of local_port from peer (the unit tests drive the
 * transport over a socketpair this way).  The session starts at once and
 * may already have closed it: the pointer is valid until the next
 * conn_free_deferred.  NULL (fd closed) when it cannot be set up. */
conn_t *conn_adopt(int fd, const struct sockaddr_storage *peer, uint16_t local_port);
/* The single teardown: the session hears reason, which is logged at debug
 * level and counted by kind in the worker's metrics. */
void conn_close(conn_t *c, conn_close_reason_t reason);
const char *conn_close_name(conn_close_reason_t reason);
/* How a ready connection picks its session (set once by the worker: the
 * HTTP layer looks at ALPN). */
void conn_set_selector(const conn_session_ops_t *(*select)(conn_t *c));
/* Write what is queued now and arrange EV_WRITE for the rest; when a later
 * write event empties it, ops->on_writable is called (not when this call
 * writes everything: the caller knows, by conn_pending).  -1 if the
 * connection closed. */
int conn_flush(conn_t *c);
/* Is output still queued (c->out or a file segment)? */
static inline bool conn_pending(const conn_t *c) { return iobuf_len(c->out) || c->file; }
/* Make room in c->out (allocating it); returns space available. */
size_t conn_out_space(conn_t *c);
void conn_write(conn_t *c, const char *p, size_t n);
void conn_write_str(conn_t *c, const char *s);
#define CONN_LIT(c, lit) conn_write((c), (lit), sizeof(lit) - 1)
void conn_write_u64(conn_t *c, uint64_t v);
/* Queue len bytes of fd from off after c->out (the connection closes fd). */
void conn_send_file(conn_t *c, int fd, uint64_t off, uint64_t len);
/* Read what the socket holds now and hand it to the session. */
void conn_read(conn_t *c);
/* Reading interest and backpressure; both re-register epoll interest. */
void conn_want_read(conn_t *c, bool want);
void conn_pause_read(conn_t *c, bool pause);
/* (Re)arm or stop the connection's timer; it calls ops->on_timeout. */
void conn_timer(conn_t *c, uint64_t ms);
void conn_timer_stop(conn_t *c);
/* Close after a final response, politely (see LINGER above). */
void conn_linger(conn_t *c);
/* The same, the close then counted under why (an HTTP/2 GOAWAY with an error). */
void conn_linger_for(conn_t *c, conn_close_reason_t why);
/* Worker housekeeping: free closed connections, run reads TLS deferred,
 * tell every session the worker drains. */
void conn_free_deferred(void);
void conn_run_deferred_reads(void);
void conn_drain_all(void);

/* The module: accepts on the worker's listeners, frees closed connections
 * after each batch, tells sessions the worker drains. */
extern const module_t conn_module;

#endif

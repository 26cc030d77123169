/*
 * pool.h - upstream connections and their per-worker keep-alive pools.
 *
 * An upconn_t is one connection to one server: connect (plain or TLS),
 * its buffers and its timer.  Whoever uses it (the proxy handler today,
 * FastCGI next) installs on_event/on_timeout and owns what it reads; the
 * pool only keeps idle connections and closes those the upstream closes.
 *
 * A pool holds the idle connections to one address with one TLS identity
 * (on/off, SNI, verification, CA file, client certificate), shared by every
 * table that names it, so a reload keeps them.  A table caches its servers'
 * pools on first use (module state MOD_POOL); a pool lives while a table
 * caches it or a connection belongs to it.
 */
#ifndef PROXYD_POOL_H
#define PROXYD_POOL_H

#include "core/worker.h"
#include "upstream/health.h"

enum upconn_state { US_CONNECTING, US_HANDSHAKE, US_ACTIVE, US_IDLE };

typedef struct upool upool_t;

struct upconn {
    ev_io_t io;
    ev_timer_t timer;
    ev_timer_t wait_timer;      /* FastCGI: FCGI_WAIT_GRACE_MS after connecting, upconn_wait */
    iobuf_t *in, *out;
    request_t *req;             /* the request it serves; NULL while idle */
    void (*on_event)(upconn_t *u, uint32_t revents);
    void (*on_timeout)(upconn_t *u);
    upconn_t *next;             /* its pool's idle list or the deferred-free list */
    upool_t *pool;              /* the keep-alive pool it belongs to (one reference) */
    uint8_t state;              /* upconn_state */
    bool closed, reused, head_done, read_paused, got_bytes;
    uint8_t body;               /* h1_body_t of the response */
    uint32_t server;            /* index in the request's table */
    uint32_t keepalive;         /* pool limit of its upstream; 0: do not pool */
    health_slot_t *slot;        /* the server's shared state, while counted */
    bool counted;               /* counted in the server's requests in flight */
    bool fcgi;                  /* speaks FastCGI: see upconn_wait */
    bool waiting;               /* counted in its slot's waiting (upconn_wait) */
    uint64_t idle_since;        /* pooled: when it went idle (ms) */
    uint8_t tries;              /* attempts of this request so far, this one included */
    uint64_t tried;             /* pool positions (bit pos % 64) this request tried */
    uint64_t sent;              /* bytes of this request written to the server */
    h1_chunked_t chunks;        /* response body decoder */
    struct ssl_st *ssl;         /* https upstreams */
};

/* The pool of a table's server (found or made, then cached); for a server
 * given by name, the pool of the address its next connection takes
 * (upstream/resolve.h).  NULL out of memory. */
upool_t *upool_of(tref_t *tr, uint32_t server);
/* A connection through p to server failed: the address is skipped for a
 * while when the server's name has others (true: one of them may take the
 * attempt again), else the server's passive health counts it
 * (health_failed) and the result is false. */
bool upool_failed(upool_t *p, tref_t *tr, uint32_t server, uint64_t now, const char *why);
/* The address gone (any port) left the answer for host: its idle pooled
 * connections close, those in use close when done. */
void upool_retire(const char *host, const struct sockaddr_storage *gone);
/* The pool's name for the error log: "[tls:SNI@]address[=resolved]". */
const char *upool_name(const upool_t *p);
/* A pooled idle connection (marked reused), or NULL. */
upconn_t *upool_take(upool_t *p);
/* Done with u: back to its pool when it may be kept, else closed. */
void upool_put(upconn_t *u);
/* Close every idle connection (draining). */
void upool_close_idle(void);

/* A new connection to server of tr (connect started); NULL with *why. */
upconn_t *upconn_connect(tref_t *tr, uint32_t server, upool_t *p, const char **why);
/* Count u against its server's requests in flight until upconn_unclaim. */
void upconn_claim(upconn_t *u, health_slot_t *slot);
void upconn_unclaim(upconn_t *u);
/* FastCGI servers (php-fpm) give each connection a child of their own and
 * keep it while the connection is kept (FCGI_KEEP_CONN), so a new connection
 * waits in the server's backlog as long as every child sits on a connection
 * idling in a pool.  A new FastCGI connection that has no answer byte
 * FCGI_WAIT_GRACE_MS after it was made (upconn_wait_later) counts in its
 * server's shared `waiting` (upconn_wait(u, true)) until its first byte;
 * while any does, no worker keeps an idle FastCGI connection to that server:
 * one being put back is closed, and pooled ones close within
 * FCGI_IDLE_CHECK_MS.  The grace keeps a busy server's connections kept:
 * counted at once, every new connection (the next request while all are
 * busy) would close the connections coming back, and the next request would
 * need a new one again. */
#define FCGI_IDLE_CHECK_MS 50
#define FCGI_WAIT_GRACE_MS 200
void upconn_wait(upconn_t *u, bool on);
void upconn_wait_later(upconn_t *u);
void upconn_close(upconn_t *u);
/* Free connections closed during this batch of events. */
void upconn_free_deferred(void);
/* (Re)arm u's timer: its on_timeout runs (an idle connection just closes). */
void upconn_timer(upconn_t *u, uint64_t ms);
/* Socket I/O, plain or TLS: >0 bytes, 0 EOF (reads), -1 try later, -2 error (errno). */
ssize_t upconn_io(upconn_t *u, bool wr, void *p, size_t n);

extern const module_t pool_module;

#endif

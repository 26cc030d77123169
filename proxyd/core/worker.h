/*
 * worker.h - one worker process: its event loop, the current table, the
 * listeners it accepts on, its stats slot, and the types the connection
 * modules share (client connection, request, upstream connection).
 *
 * A worker is single-threaded; the one worker_t of the process is `W`.
 */
#ifndef PROXYD_WORKER_H
#define PROXYD_WORKER_H

#include <stdbool.h>
#include <stdint.h>

#include "../common/ruletable.h"
#include "../common/util.h"
#include "core/event.h"
#include "http/http1.h"
#include "core/iobuf.h"
#include "core/stats.h"
#include "core/table.h"

typedef struct conn conn_t;
typedef struct upconn upconn_t;
typedef struct request request_t;

typedef struct {
    ev_io_t io;
    int fd;
    uint8_t kind;      /* rt_listen_kind */
    uint8_t addr_kind; /* rt_addr_kind of the address bound */
    uint16_t port;
    uint8_t ip[16];
    uint8_t flags;              /* RT_LF_* of its listen entry in flags_table */
    const tref_t *flags_table;  /* the table flags were looked up in */
} listener_t;

typedef struct {
    ev_loop_t *loop;
    int id;
    const char *db;            /* the store's path, to resolve relative paths; never opened here */
    tref_t *table;             /* current; requests hold their own reference */
    stats_shm_t *shm;
    worker_stats_t *stats;     /* this worker's slot in shm */
    listener_t *listeners;
    int nlisteners;
    conn_t *closed;            /* freed after the current batch of events */
    upconn_t *up_closed;
    h1_request_t *hreq;        /* parse scratch (large; never per connection) */
    h1_response_t *hres;
    uint64_t seq;              /* request id counter */
    uint32_t pid_hash;         /* request ids: unique per worker process */
    uint32_t conns;
    bool draining;
    char date[40];             /* "Date: ..." line, refreshed once per second */
    uint64_t date_sec;
} worker_t;

extern worker_t *W;

/* Run a worker on inherited listeners, table (prepared by the master) its
 * first generation, chan its end of the master's channel; returns the
 * process exit status. */
int worker_main(int id, const char *db, int chan, tref_t *table, listener_t *ls, int nls, stats_shm_t *shm);
/* Refresh and return the cached Date header line (with CRLF). */
const char *worker_date(void);

/* Started as root, the account the workers take: *pw, or NULL to stay
 * as they are (not root, or `user: root` written); -1 with a reason when
 * `user` (default 'proxyd') does not exist: workers never fall back to root. */
struct passwd;
int worker_account(const char *user, struct passwd **pw, char *err, size_t errlen);
/* Started as root: become that account (warn once when it is root).  Also
 * used by the HA replication process. */
int drop_privileges(const char *user, bool warn);

#endif

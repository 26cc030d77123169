/*
 * health.h - upstream server state shared by every process of the node:
 * requests in flight, passive failure accounting, active health checks.
 *
 * The master maps one region of HEALTH_SLOTS slots before forking; every
 * process writes it with atomics only (no locks, no per-worker copies), so
 * a server marked down by one worker is skipped by all of them at once.
 * A slot is keyed by site, upstream and address: a reload that keeps a
 * server keeps its state, counters and check results.  Only the master
 * creates and recycles slots (when it prepares a table, before any worker
 * loads it); workers look theirs up.  A table prepared without the region
 * (proxyd --check, a full region) gets private slots.
 *
 * Passive health: an attempt that fails counts against its server (connect
 * error or timeout, TLS failure, reset or close before a complete response
 * head, an invalid head, a send or read timeout before the response head,
 * and a response status the route lists in retry.on).  max_fails such
 * failures within fail_timeout mark the server down for fail_timeout.  As in
 * nginx, max_fails 0 disables this and a pool of one server is never marked
 * down passively: there is nowhere else to send its traffic.
 *
 * Active health: one checker for the node, in worker 0 (restarted with it),
 * sends `GET path` to every server of the upstreams that have a
 * health_check, every interval, without blocking its loop; `fall`
 * consecutive failures (connect error, timeout, a status other than
 * `expect`) mark the server down, `rise` consecutive successes bring it
 * back (and clear a passive mark: the check is fresher evidence).  Servers
 * start up; the first check runs within a second of a (re)load.
 */
#ifndef PROXYD_HEALTH_H
#define PROXYD_HEALTH_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/event.h"
#include "core/table.h"

#define HEALTH_SLOTS 262144 /* servers per node, live or recently removed; power of two (32 MiB) */
/* A key lies within this many slots of its hash (linear probing); past it a
 * lookup gives up, so a region filled beyond its size costs a bounded probe
 * per server instead of a walk of the whole region (100,000 servers in a
 * region of 65,536 took 45 s to bind). */
#define HEALTH_PROBE_MAX 256

/* Why the last active check failed. */
enum hc_error { HC_OK, HC_ERR_CONNECT, HC_ERR_TIMEOUT, HC_ERR_CLOSED, HC_ERR_STATUS, HC_ERR_TLS, HC_ERR_RESPONSE };

typedef struct health_slot {
    _Atomic uint64_t key;            /* 0 free, 1 recycled; else hash of site, upstream, address */
    _Atomic int32_t inflight;        /* requests being served by it, all workers */
    _Atomic uint32_t hc_down;        /* active checks: 1 = down */
    _Atomic uint64_t fail_window;    /* passive: window start (ms) << 16 | failures in it */
    _Atomic uint64_t down_until;     /* passive: down until this monotonic ms; 0 = never marked */
    _Atomic uint64_t requests;       /* attempts sent to it */
    _Atomic uint64_t failures;       /* attempts that failed */
    _Atomic uint64_t downs;          /* times it was marked down (passive or active) */
    _Atomic uint64_t hc_checks;      /* active checks completed */
    _Atomic uint64_t hc_last_ms;     /* wall clock (unix ms) of the last check; 0 = none yet */
    _Atomic uint32_t hc_fails;       /* consecutive failed checks */
    _Atomic uint32_t hc_oks;         /* consecutive good checks */
    _Atomic uint32_t hc_last_status; /* HTTP status of the last check; 0 = no response */
    _Atomic uint32_t hc_last_error;  /* enum hc_error */
    _Atomic uint32_t waiting;        /* FastCGI: new connections (requests and checks) without an answer byte yet */
    uint64_t seen;                   /* master only: epoch of the last table that used it */
} __attribute__((aligned(128))) health_slot_t;

/* Each server's slot in one table (tref_t.mod[MOD_HEALTH]). */
typedef struct {
    health_slot_t **slot;        /* per server: its shared slot, or one of `own` */
    health_slot_t *own;          /* private slots when there is no shared region */
} health_table_t;

static inline health_slot_t *health_slot_of(const tref_t *tr, uint32_t server)
{
    return ((const health_table_t *)tr->mod[MOD_HEALTH])->slot[server];
}

/* Master, before forking: map the shared region. 0 or -1. */
int health_init(void);
/* Give every server of a prepared table its slot (tr->slot); the master
 * creates missing slots and recycles those no table has used for two
 * reloads.  0 or -1 when out of memory. */
int health_bind(tref_t *tr);
void health_release(tref_t *tr);

/* A failed attempt on server at monotonic time now (ms); why names the
 * failure for the log.  Returns true when this failure marked it down. */
bool health_failed(tref_t *tr, uint32_t server, uint64_t now, const char *why);
const char *health_error_name(unsigned e);

static inline bool health_passive_down(const health_slot_t *s, uint64_t now)
{
    uint64_t until = atomic_load_explicit(&s->down_until, memory_order_relaxed);
    return until != 0 && now < until;
}

/* May server take traffic?  hc: its upstream has active checks. */
static inline bool health_usable(const health_slot_t *s, bool hc, uint64_t now)
{
    if (hc && atomic_load_explicit(&s->hc_down, memory_order_relaxed))
        return false;
    return !health_passive_down(s, now);
}

static inline int32_t health_load(const health_slot_t *s)
{
    return atomic_load_explicit(&s->inflight, memory_order_relaxed);
}

/* An attempt starts / stops occupying the server. */
static inline void health_begin(health_slot_t *s)
{
    atomic_fetch_add_explicit(&s->inflight, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->requests, 1, memory_order_relaxed);
}

static inline void health_end(health_slot_t *s)
{
    atomic_fetch_sub_explicit(&s->inflight, 1, memory_order_relaxed);
}

/* The active checker (worker 0): start on loop with the current table,
 * follow a reload, stop when draining.  No-ops in other processes. */
void health_checker_start(ev_loop_t *loop, tref_t *table);
void health_checker_switch(tref_t *table);
void health_checker_stop(void);

extern const module_t health_module;

#endif

/*
 * admin.h - the admin interface in the master: HTTP/1.1 over the admin unix
 * socket (GET /status, GET /metrics, GET /health, POST /reload, POST
 * /challenges: read the store's ACME challenges again) and, when
 * metrics_listen is set, GET /metrics on that TCP address.
 */
#ifndef PROXYD_ADMIN_H
#define PROXYD_ADMIN_H

#include <stdbool.h>

#include <sys/types.h>

#include "core/event.h"
#include "core/replica.h"
#include "core/stats.h"
#include "core/table.h"

/* What /status and /metrics read of the master, as of one request. */
typedef struct {
    const tref_t *table;               /* the master's current table */
    const stats_shm_t *shm;            /* the workers' counters */
    int nworkers;
    const pid_t *pids;                 /* [nworkers] */
    uint64_t started;                  /* unix seconds */
    const char *db;
    const char *last_reload_error;     /* "" when the last reload worked */
    const replica_shm_t *replica;      /* NULL: no HA replication */
    const char *ha_node, *ha_peer;     /* "" when not an HA node */
    bool replica_running;
} admin_view_t;

/* How the admin interface reaches the master (it knows no master globals). */
typedef struct {
    void (*view)(admin_view_t *out);
    int (*live_workers)(void);
    int (*reload)(char *err, size_t errlen);
    /* Publish the store's ACME challenges to the workers: how many, or -1. */
    int (*challenges)(char *err, size_t errlen);
} admin_ops_t;

/* Bind the admin socket (removing a stale one) and the metrics listener. */
int admin_start(ev_loop_t *loop, const rt_table_t *t, const admin_ops_t *ops);
/* keep_path: the socket file now belongs to a new master (binary upgrade). */
void admin_stop(bool keep_path);
/* The listening fds, to hand over to a new master. */
int admin_fds(int *unix_fd, int *metrics_fd);
/* A forked worker drops the master's admin sockets. */
void admin_close_in_child(void);

#endif

/*
 * master.h - the master process: binds listeners, keeps N workers alive,
 * owns reloads, and answers the admin socket.  It never serves traffic.
 */
#ifndef PROXYD_MASTER_H
#define PROXYD_MASTER_H

#include <stdbool.h>
#include <sys/types.h>

#include "../common/ha.h"
#include "core/event.h"
#include "core/replica.h"
#include "core/stats.h"
#include "core/table.h"
#include "core/worker.h"

typedef struct {
    const char *db;
    tref_t *table;             /* the master's verified current generation */
    stats_shm_t *shm;
    listener_t *ls;
    int nls;
    int nworkers;
    pid_t pids[STATS_MAX_WORKERS];
    int chan[STATS_MAX_WORKERS];            /* the master's end of each worker's channel, -1 when none */
    uint64_t spawned_ms[STATS_MAX_WORKERS]; /* loop clock at fork */
    uint64_t backoff_ms[STATS_MAX_WORKERS]; /* restart delay of a worker that keeps dying young */
    ev_loop_t *loop;
    bool stopping;
    uint64_t started;
    char last_reload_error[256];
    char *exe;                 /* the binary, resolved at start: SIGUSR2 executes it again */
    pid_t replica_pid;         /* the HA replication process, 0 when none runs */
    int replica_chan;          /* the master's end of its channel, -1 when none */
    uint64_t replica_spawned_ms;
    ha_conf_t replica_conf;    /* the ha settings it runs with (node "" = none) */
    replica_shm_t *replica;    /* what it reports */
    char **argv;
} master_t;

extern master_t M;

/* Run the master until it stops; returns the exit status. */
int master_main(const char *db, tref_t *table, int workers, char **argv);
/* Load and verify the active generation, then tell every worker to switch.
 * 0 (also when already current) or -1 with the reason in err. */
int master_reload(char *err, size_t errlen);
int master_live_workers(void);

#endif

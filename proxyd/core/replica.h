/*
 * replica.h - the HA replication process (SPEC §8).
 *
 * When the store holds this node's `ha` settings, the master forks one more
 * child beside the workers.  It answers the peer on the replication listener
 * (mutual TLS with the cluster CA) and, 4 times a second, asks the peer for its
 * state and pulls a snapshot when this node should follow it (ha_pull in
 * common/ha.c).  After a pull it sends SIGHUP to the master, which reloads.
 * It never touches traffic: a peer that is down, slow or untrusted costs
 * this process time, never a request.
 */
#ifndef PROXYD_REPLICA_H
#define PROXYD_REPLICA_H

#include <stdint.h>

/* What the replication process reports, for the admin /status. */
typedef struct {
    char node[64];
    char role[8];
    int64_t serial;
    char peer[128];          /* address */
    char peer_node[64];
    char peer_role[8];
    int64_t peer_serial;
    int64_t last_contact;    /* unix seconds of the last answer from the peer */
    int64_t last_pull;       /* unix seconds of the last snapshot applied */
    uint64_t pulls;
    uint64_t served;         /* requests answered for the peer */
    char last_error[600];    /* "" while the link works */
} replica_shm_t;

/* Run the replication process; ctl is its end of the master's channel (it
 * writes 'R' there to have the master reload after a pull, and stops when
 * the master closes it).  Returns its exit status. */
int replica_main(const char *db, const char *user, replica_shm_t *shm, int ctl);

#endif

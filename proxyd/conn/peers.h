/*
 * peers.h - open connections per client address, for the node
 * (limits.max_connections_per_ip, nginx's limit_conn).
 *
 * Each worker counts its own connections in its own table of a region the
 * master maps before forking; the node's count for an address is the sum
 * over the live workers' tables.  A worker writes only its table, so no
 * lock is shared, and the master empties the table of a worker that died
 * before its successor starts: a crash cannot leave counts behind.
 */
#ifndef PROXYD_PEERS_H
#define PROXYD_PEERS_H

#include <stdbool.h>
#include <stdint.h>

/* Master: map the region (0, or -1 with errno); empty worker id's table. */
int peers_init(void);
void peers_reset(int id);

/* Worker: count one more connection from the address (family 4 or 6), or
 * refuse it (false) when the node already has `cap` from it.  Addresses
 * the table cannot place (a full window) are let through, uncounted. */
bool peers_take(int family, const uint8_t *ip, uint32_t cap, bool *counted);
void peers_release(int family, const uint8_t *ip);

#endif

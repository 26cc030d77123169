/*
 * net.h - rule-table addresses as socket addresses, and listening sockets.
 */
#ifndef PROXYD_NET_H
#define PROXYD_NET_H

#include <sys/socket.h>

#include "../common/ruletable.h"

/* An IPv4, IPv6 or unix: address of the table as a sockaddr; -1 for a host
 * name (resolved by the workers, upstream/resolve.c). */
int net_sockaddr(const rt_table_t *t, const rt_sockaddr_t *a, struct sockaddr_storage *ss, socklen_t *len);
/* A non-blocking, close-on-exec listening TCP socket on l, or -1 with errno. */
int net_listen(const rt_table_t *t, const rt_listen_t *l, int backlog);

#endif

/*
 * resolve.h - upstream servers given by host name: every A and AAAA
 * address of the name, kept current by the worker's own DNS stub
 * (upstream/dns.h) without ever blocking its event loop.
 *
 * A named server stays one server of its pool for balancing and for its
 * shared health slot; its weight counts once per address it has, and its
 * connections rotate over those addresses, skipping for fail_timeout one
 * that just failed (resolve_failed).  A name that has not resolved yet
 * makes its server count as down.
 */
#ifndef PROXYD_RESOLVE_H
#define PROXYD_RESOLVE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "core/table.h"

/* The public face of a table's state (tref_t.mod[MOD_RESOLVE]). */
typedef struct {
    const unsigned **naddrs; /* per server: its name's address count now; NULL for one given by address */
} resolve_table_t;

/* Is server (of a loaded table) given by a name? */
bool resolve_named(const struct tref *tr, uint32_t server);
/* The addresses a named server has now: 0 when it never resolved; 1 for
 * a server given by address (or a table without this module's state). */
static inline unsigned resolve_count(const struct tref *tr, uint32_t server)
{
    const resolve_table_t *rt = tr->mod[MOD_RESOLVE];
    return rt == NULL || rt->naddrs[server] == NULL ? 1 : *rt->naddrs[server];
}
/* The next address of named server for a new connection (rotating,
 * skipping those marked failed while another is not): 0, or -1 with *why. */
int resolve_pick(const struct tref *tr, uint32_t server, uint64_t now, struct sockaddr_storage *ss, socklen_t *sl,
                 const char **why);
/* The first usable address (active health checks, logs): as resolve_pick
 * without moving the rotation. */
int resolve_first(const struct tref *tr, uint32_t server, uint64_t now, struct sockaddr_storage *ss, socklen_t *sl,
                  const char **why);
/* A connection to ss, an address of named server, failed at now: it is
 * skipped for the server's fail_timeout.  True when another address of the
 * name is still usable (the server itself has not failed). */
bool resolve_failed(const struct tref *tr, uint32_t server, const struct sockaddr_storage *ss, uint64_t now);

/* The address text ("app.internal:3000") of a server of upstream whose
 * host name has not resolved yet, or NULL (for the 503's log line). */
const char *resolve_unresolved(const struct tref *tr, uint32_t upstream);

struct module;
extern const struct module resolve_module;

#endif

/*
 * table.h - a loaded generation as a worker uses it: the verified rule
 * table (read in place) and one slot per
 * module (core/module.h) for what each module derives from it once per
 * load (route regexes, static roots, balancing state, TLS contexts, health
 * slots, keep-alive pools).  The loader calls the modules' hooks in
 * registry order and names none of them.
 *
 * A table is reference counted.  The worker holds one reference for "the
 * current table" and every request holds one for the table it started on,
 * so a reload can swap the current pointer between requests while requests
 * in flight finish on their own table; the last tref_put frees it.
 */
#ifndef PROXYD_TABLE_H
#define PROXYD_TABLE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "../common/ruletable.h"
#include "core/module.h"

typedef struct tref {
    unsigned refs;
    int64_t generation;
    uint8_t *blob;
    size_t len;
    rt_table_t t;
    void *mod[MOD_COUNT];  /* each module's per-generation state (module.h) */
} tref_t;

/* Master: generation gen (0: the active one) of the store, with the
 * certificates of its TLS sites, as a bundle (core/bundle.h) in *p, *n
 * (free with tref_bundle_free, which wipes it).  0, or -1 with a reason in
 * err when it is missing or unreadable. */
int tref_bundle_load(const char *db, int64_t gen, uint8_t **p, size_t *n, char *err, size_t errlen);
void tref_bundle_free(uint8_t *p, size_t n);
/* A table from a bundle: verified (a table that fails is refused), and every module's table_init run with the bundle's
 * certificates (db, the store's path, only to resolve relative paths
 * against).  NULL with a reason in err.  p may be freed afterwards. */
tref_t *tref_open(const char *db, const uint8_t *p, size_t n, char *err, size_t errlen);
/* tref_bundle_load and tref_open: the master's way to a table. */
tref_t *tref_load(const char *db, int64_t gen, char *err, size_t errlen);
static inline tref_t *tref_get(tref_t *r) { r->refs++; return r; }
void tref_put(tref_t *r);
/* The socket address of server (for a host name, the first usable address
 * the worker's resolver has for it, upstream/resolve.h): 0, or -1 with a
 * reason in *why. */
int tref_sockaddr(const tref_t *r, uint32_t server, struct sockaddr_storage *ss, socklen_t *len, const char **why);

#endif

/*
 * cache.h - the response cache (SPEC §9, nginx's proxy_cache).
 *
 * Two halves:
 *   - index.c: the zones' indexes in one shared memory file that the
 *     master creates (or takes over at a binary upgrade) and every worker
 *     maps, the entry files on disk, the loader that rebuilds an index from
 *     disk, purge and stats (the master's admin side);
 *   - cache.c: the request side: the cache phase (lookup, lock, HIT,
 *     STALE, UPDATING), the filter that stores an answer as it passes, and
 *     the proxy's questions (conditional headers, stale on failure, 304).
 *
 * docs/cache.md explains the design; docs/architecture.md places it.
 */
#ifndef PROXYD_CACHE_H
#define PROXYD_CACHE_H

#include <stdbool.h>
#include <stdint.h>

#include "../common/str.h"
#include "core/module.h"
#include "core/table.h"
#include "http/http1.h"

struct request;

/* ---- the entry file (index.c writes, reads and checks it) ------------------ */

#define CACHE_FILE_MAGIC "PXCACHE1"

/* At offset 0 of every entry file, then the key, the site's name, the
 * Vary names, the stored response fields ("Name: value\r\n" each), and the
 * body from head_len on. */
typedef struct {
    char magic[8];
    uint64_t h1, h2;       /* the key's hash: the file's name */
    uint64_t stored_ms;    /* when stored or last revalidated (wall clock): Age */
    uint64_t expires_ms;   /* fresh until (wall clock) */
    uint64_t body_len;
    uint32_t head_len;     /* where the body starts */
    uint32_t key_len, site_len, path_len, vary_len, fields_len;
    uint16_t status;
    uint16_t flags;        /* CACHE_F_* */
    uint32_t pad;
} cache_file_head_t;

#define CACHE_F_VARY 1u       /* a marker: the answer varies on vary names; variants are entries of their own */
#define CACHE_F_VALIDATORS 2u /* has ETag or Last-Modified: can be revalidated */

/* ---- the index (index.c) --------------------------------------------------- */

typedef struct cache_zone cache_zone_t; /* a zone's index in the shared region */

typedef struct {
    uint64_t expires_ms;
    uint64_t size;
    uint16_t flags;
} cache_entry_t;

enum cache_begin {
    CACHE_FRESH,  /* an entry, fresh: *e */
    CACHE_LOCKED, /* missing or expired, and now locked by the caller to fill it (*e: the expired one, expires 0 none) */
    CACHE_BUSY,   /* another request is filling it (*e: an expired entry, expires 0 none) */
    CACHE_NONE,   /* no room to even lock it: go to the origin, store nothing */
};

/* Master: create the shared region or take over the one a previous master
 * handed on (PROXYD_CACHE_FD); export it to the new binary. */
int cache_shm_init(void);
void cache_shm_export(void);
/* Find (master: also claim, creating the zone's directory) the region's
 * zone of each of tr's cache zones; a relative path is the store's (db)
 * directory's. */
int cache_bind(tref_t *tr, const char *db);
/* The region's zone of tr's cache zone i, NULL when it has none. */
cache_zone_t *cache_zone_of(const tref_t *tr, uint32_t i);
uint32_t cache_zone_incarnation(const cache_zone_t *z);
const char *cache_zone_path(const cache_zone_t *z);

/* The key's state, taking the fill lock (until lock_ms from now) when it is
 * missing or expired and nobody holds it. */
enum cache_begin cache_begin(cache_zone_t *z, uint64_t h1, uint64_t h2, uint64_t now_ms, uint32_t lock_ms,
                             cache_entry_t *e);
/* The lock holder stored the entry (size bytes on disk, fresh until
 * expires_ms): unlock, account, and evict beyond max_size.  Also for a key
 * not locked (a Vary marker).  incarnation: the zone's when the fill began
 * (a zone recreated since then does not take it). */
void cache_commit(cache_zone_t *z, uint32_t incarnation, uint64_t h1, uint64_t h2, uint64_t size,
                  uint64_t expires_ms, uint16_t flags);
/* The lock holder gives up: the entry stays as it was (dropped when empty). */
void cache_unlock(cache_zone_t *z, uint32_t incarnation, uint64_t h1, uint64_t h2);
/* The entry's file is gone or unusable: forget it. */
void cache_forget(cache_zone_t *z, uint64_t h1, uint64_t h2);
/* The entry file's path: "<zone path>/<xx>/<32 hex>". */
void cache_file_path(const cache_zone_t *z, uint64_t h1, uint64_t h2, char *out, size_t n);

enum cache_count { CC_HIT, CC_MISS, CC_EXPIRED, CC_STALE, CC_UPDATING, CC_REVALIDATED, CC_BYPASS, CC_COUNT };
extern const char *const cache_status_names[CC_COUNT]; /* "HIT", ... */
void cache_count(cache_zone_t *z, enum cache_count c);
/* Log a storage failure of the zone once (not per request) until it has
 * stored something again. */
void cache_store_failed(cache_zone_t *z, const char *what, const char *path, int err);
void cache_store_ok(cache_zone_t *z);

/* Worker: the housekeeping timer (inactive entries, the loader's steps);
 * true while a loader step is due soon. */
bool cache_worker_tick(void);
/* Master: a worker died; its temporary files go. */
void cache_worker_died(int pid);

/* Master (admin): stats of every zone of t as JSON, and purge. */
typedef struct {
    uint64_t counts[CC_COUNT], evictions, entries, size, max_size, memory, nslots;
    bool loading, found;
} cache_zone_stats_t;
cache_zone_stats_t cache_zone_stats(const char *name);
void cache_stats_json(const rt_table_t *t, str_buf_t *b);
/* Remove the entries of site (its name) whose path starts with prefix
 * (NULL: all of the site's); -1 when the table has no such site. */
long cache_purge(const rt_table_t *t, const char *site, const char *prefix);

/* ---- the request side (cache.c) --------------------------------------------- */

/* Worker start: the store filter joins the chains. */
int cache_filter_init(void);

/* The cache phase (http/phases.c). */
int cache_phase(struct request *r);
/* proxy: before it builds the upstream head: true when the request fills
 * the cache (the client's Range and conditionals are not passed on);
 * appends the cache's own conditional fields to b. */
bool cache_upstream_fields(struct request *r, str_buf_t *b);
/* proxy: the upstream answered (res) or failed (res NULL, status 502/503/504)
 * before any byte reached the client: true when the cache answers instead
 * (stale entry, or a 304 revalidating it); the upstream is let go first. */
bool cache_upstream_answer(struct request *r, int status, const h1_response_t *res);

extern const module_t cache_module;

#endif

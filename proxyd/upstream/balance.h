/*
 * balance.h - choosing a server of an upstream pool for one attempt.
 *
 * The pure algorithms work on a list of candidates (the servers that may
 * take this attempt, with their weights and the requests they have in
 * flight across all workers) and know nothing of tables or shared memory,
 * so the unit tests drive them directly:
 *
 *   bal_swrr        smooth weighted round robin (nginx's): over any window of
 *                   sum(weights) picks each server gets exactly its weight,
 *                   spread out rather than in bursts.
 *   bal_least_conn  the fewest requests in flight per unit of weight; ties
 *                   go round robin, so idle servers share by weight.
 *   bal_random_two  power of two choices: two distinct candidates drawn by
 *                   weight, the less loaded (per unit of weight) wins.
 *   bal_ring_*      consistent hashing for ip_hash: every server owns
 *                   BAL_RING_POINTS points per unit of weight on a 32-bit
 *                   ring, placed by hashing its address, so adding or
 *                   removing a server moves only the clients of that server.
 *
 * balance_pick() applies them to a loaded table: it skips servers that are
 * down (health.h) or already tried by this request, and uses backup servers
 * only when no primary is left.
 */
#ifndef PROXYD_BALANCE_H
#define PROXYD_BALANCE_H

#include <stddef.h>
#include <stdint.h>

#define BAL_NONE        UINT32_MAX
#define BAL_RING_POINTS 512        /* ring points per unit of weight */
#define BAL_RING_MAX    (1u << 20) /* points per ring at most; weights scale down beyond */

typedef struct {
    int32_t current; /* smooth weighted round robin state, per worker */
    int32_t effective;
} rr_state_t;

/* A server that may take the attempt. */
typedef struct {
    uint32_t pos;    /* position in its pool */
    uint32_t weight; /* >= 1 */
    int64_t load;    /* requests in flight, all workers */
} bal_cand_t;

typedef struct {
    uint32_t point;
    uint32_t pos; /* position in the pool */
} bal_vnode_t;

typedef struct {
    bal_vnode_t *v; /* sorted by point */
    uint32_t n;
} bal_ring_t;

/* Each returns an index into c (n >= 1).  rr is indexed by pool position. */
uint32_t bal_swrr(rr_state_t *rr, const bal_cand_t *c, uint32_t n);
/* Reorders c (the least loaded first). */
uint32_t bal_least_conn(rr_state_t *rr, bal_cand_t *c, uint32_t n);
uint32_t bal_random_two(const bal_cand_t *c, uint32_t n, uint64_t *rng);

/* Build a ring for n servers named by keys (their addresses) with weights;
 * 0, or -1 when out of memory. */
int bal_ring_build(bal_ring_t *r, const char *const *keys, const uint32_t *weights, uint32_t n);
void bal_ring_free(bal_ring_t *r);
/* The first server clockwise from hash whose ok[pos] is set, or BAL_NONE. */
uint32_t bal_ring_lookup(const bal_ring_t *r, uint32_t hash, const uint8_t *ok);
/* Where a client (its address bytes) sits on the ring. */
uint32_t bal_hash_client(const void *p, size_t n);
uint64_t bal_random(uint64_t *state);

/* ---- on a loaded table ---------------------------------------------------- */

struct tref;

/* Derive the per-table balancing state (round robin counters, hash rings,
 * scratch); 0 or -1 when out of memory.  balance_release frees it. */
int balance_prepare(struct tref *tr);
void balance_release(struct tref *tr);

/* The server (table index) for the next attempt of a request to upstream,
 * from client (address bytes, for ip_hash), skipping the pool positions in
 * tried (bit pos % 64); RT_NONE when no server can take it.  now: the
 * monotonic clock in ms. */
uint32_t balance_pick(struct tref *tr, uint32_t upstream, const void *client, size_t clen, uint64_t tried,
                      uint64_t now);

/* The module (per-generation state) for the registry. */
struct module;
extern const struct module balance_module;

#endif

/*
 * limit.h - rate limits (SPEC §9, nginx's limit_req): the limit phase and
 * the zones' shared state.
 *
 * A zone is a table of keys in one shared memory file that the master
 * creates once and hands to the next master at a binary upgrade.  Workers
 * inherit the mapping, so all of a node's workers (and both generations of
 * workers while an upgrade drains) count in the same buckets, and a reload
 * keeps them: a zone keeps its state as long as its name stays.
 *
 * The bucket is GCRA, the virtual-scheduling form of the leaky bucket: a
 * key holds one time, `tat`, when its bucket will be empty.  A request at
 * `now` waits max(tat, now) - now (the requests ahead of it, drained at the
 * rate); it is refused when that wait is beyond burst * interval, else it
 * takes one interval (tat = max(tat, now) + interval) and goes now
 * (nodelay, or nothing ahead) or after its wait.  One 64-bit word per key,
 * updated with compare-and-swap: no lock a dying worker could hold.
 */
#ifndef PROXYD_LIMIT_H
#define PROXYD_LIMIT_H

#include <stdbool.h>
#include <stdint.h>

#include "core/module.h"
#include "core/table.h"

struct request;

enum rl_verdict { RL_PASS, RL_DELAY, RL_REFUSE };

/* The arithmetic of one request (pure, for the unit tests): its verdict,
 * *wait_ns (RL_DELAY: how long it waits; RL_REFUSE: how long until it
 * would fit) and the key's next tat (unchanged when refused). */
static inline enum rl_verdict rl_gcra(uint64_t tat, uint64_t now, uint64_t interval, uint32_t burst, bool nodelay,
                                      uint64_t *next_tat, uint64_t *wait_ns)
{
    uint64_t base = tat > now ? tat : now;
    uint64_t wait = base - now;
    uint64_t tau = (uint64_t)burst * interval;
    if (wait > tau) {
        *next_tat = tat;
        *wait_ns = wait - tau;
        return RL_REFUSE;
    }
    *next_tat = base + interval;
    *wait_ns = nodelay ? 0 : wait;
    return *wait_ns ? RL_DELAY : RL_PASS;
}

/* Retry-After (seconds, at least 1) for a refusal that would fit after wait_ns. */
static inline uint64_t rl_retry_after(uint64_t wait_ns) { return wait_ns ? (wait_ns + 999999999) / 1000000000 : 1; }

/* Master: create the shared region, or adopt the one a previous master
 * handed over (PROXYD_LIMITS_FD).  0, or -1 with errno. */
int limit_shm_init(void);
/* Master, in the child about to execute the new binary: hand the region on. */
void limit_shm_export(void);

/* Find (master: also claim) the region's zone of each of tr's zones. */
int limit_bind(tref_t *tr);

/* A zone's counters, summed over the node (admin /metrics). */
typedef struct {
    uint64_t allowed, delayed, refused, evicted;
    bool found;
} limit_zone_stats_t;
limit_zone_stats_t limit_zone_stats(const char *name);

/* The limit phase (http/phases.c): HTTP_PHASE_* or HTTP_PHASE_SUSPEND. */
int limit_phase(struct request *r);

extern const module_t limit_module;

#endif

/*
 * stats.h - per-worker counters in shared memory, written by one worker
 * each (plain aligned 64-bit stores, no locks) and read by the master for
 * /status and /metrics.  The master maps one region for all workers before
 * forking, so a restarted worker reuses its slot.
 */
#ifndef PROXYD_STATS_H
#define PROXYD_STATS_H

#include <stdint.h>
#include <sys/types.h>

#define STATS_MAX_WORKERS 64
#define STATS_MAX_SITES 16384 /* sites beyond this are counted under "other" */
#define STATS_CLASSES 5        /* 1xx..5xx */
#define STATS_LAT_BUCKETS 12

/* Upper bounds (ms) of the upstream response-time histogram; the last is +Inf. */
#define STATS_LAT_BOUNDS {5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 0}

typedef struct {
    volatile int64_t pid;         /* 0: slot unused */
    volatile int64_t generation;  /* table the worker serves */
    volatile uint64_t started;    /* unix seconds */
    volatile uint64_t epoch;      /* the master's table epoch the worker serves */
    volatile uint64_t conns_active, conns_total;
    volatile uint64_t requests_total, bytes_in, bytes_out;
    volatile uint64_t upstream_count, upstream_ms_sum;
    volatile uint64_t upstream_hist[STATS_LAT_BUCKETS]; /* non-cumulative */
    volatile uint64_t other_site[STATS_CLASSES];
    volatile uint64_t site[STATS_MAX_SITES][STATS_CLASSES]; /* by site index of `generation` */
} worker_stats_t;

typedef struct {
    volatile int64_t generation;   /* the master's active generation */
    volatile uint64_t epoch;       /* bumped at every table swap, also one that only re-resolved host names */
    volatile uint64_t reloads;
    worker_stats_t workers[STATS_MAX_WORKERS];
} stats_shm_t;

#endif

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

/* Why connections closed (conn_close), counted per worker: X(enum, metric label). */
#define STATS_CLOSE_REASONS(X)                                                                          \
    X(CLOSE_DONE, "done") X(CLOSE_CLIENT_EOF, "client_closed") X(CLOSE_CLIENT_ERROR, "client_error")   \
    X(CLOSE_KEEPALIVE_TIMEOUT, "keepalive_timeout") X(CLOSE_HEADER_TIMEOUT, "header_timeout")           \
    X(CLOSE_SEND_TIMEOUT, "send_timeout") X(CLOSE_TLS_FAILED, "tls_handshake_failed")                   \
    X(CLOSE_TLS_TIMEOUT, "tls_handshake_timeout") X(CLOSE_UPSTREAM, "upstream_closed")                  \
    X(CLOSE_ABORTED, "response_aborted") X(CLOSE_DRAIN, "drain") X(CLOSE_NO_MEMORY, "out_of_memory")    \
    X(CLOSE_FILE_ERROR, "file_error") X(CLOSE_TUNNEL_IDLE, "tunnel_idle_timeout")                       \
    X(CLOSE_REFUSED, "refused_at_accept") X(CLOSE_PER_IP, "over_max_connections_per_ip")                \
    X(CLOSE_PROXY_PROTOCOL, "proxy_protocol_error") X(CLOSE_H2_ERROR, "http2_protocol_error")            \
    X(CLOSE_H2_ABUSE, "http2_abuse")
#define STATS_CLOSE_ENUM(e, label) e,
typedef enum { STATS_CLOSE_REASONS(STATS_CLOSE_ENUM) STATS_CLOSE_COUNT } conn_close_reason_t;

/* What the HTTP/2 session refused (a stream or the whole connection), counted
 * per worker: X(enum, metric label). */
#define STATS_H2_REFUSALS(X)                                                                             \
    X(H2_REFUSED_RAPID_RESET, "rapid_reset") X(H2_REFUSED_CONTINUATION, "continuation_flood")           \
    X(H2_REFUSED_HPACK_BOMB, "hpack_bomb") X(H2_REFUSED_CONTROL_FLOOD, "control_frame_flood")           \
    X(H2_REFUSED_SETTINGS_FLOOD, "settings_flood") X(H2_REFUSED_ZERO_WINDOW, "zero_window_stall")       \
    X(H2_REFUSED_HEADERS_TOO_LARGE, "oversize_headers") X(H2_REFUSED_INVALID_HEADERS, "invalid_headers") \
    X(H2_REFUSED_PROTOCOL, "protocol_error")
typedef enum { STATS_H2_REFUSALS(STATS_CLOSE_ENUM) STATS_H2_REFUSED_COUNT } h2_refusal_t;

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
    volatile uint64_t closed[STATS_CLOSE_COUNT];        /* connections, by conn_close_reason_t */
    volatile uint64_t requests_h2;                      /* of requests_total */
    volatile uint64_t conns_h1, conns_h2;               /* connections whose session started, by protocol */
    volatile uint64_t h2_refused[STATS_H2_REFUSED_COUNT]; /* by h2_refusal_t */
    volatile uint64_t spool_responses, spool_file_responses; /* buffering: responses spooled, of them to a file */
    volatile uint64_t spool_file_bytes;                  /* bytes written to spool files */
    volatile uint64_t spool_mem_now, spool_disk_now;     /* bytes held now in memory buffers, in spool files */
    volatile uint64_t site[STATS_MAX_SITES][STATS_CLASSES]; /* by site index of `generation` */
} worker_stats_t;

typedef struct {
    volatile int64_t generation;   /* the master's active generation */
    volatile uint64_t epoch;       /* bumped at every table swap, also one that only re-resolved host names */
    volatile uint64_t reloads;
    worker_stats_t workers[STATS_MAX_WORKERS];
} stats_shm_t;

#endif

/*
 * channel.h - the master's channel to each worker: an AF_UNIX seqpacket
 * socketpair made at fork.  A reload names a generation (and the epoch of
 * its host-name resolution) and carries the sealed memfd holding it (a
 * bundle, core/bundle.h), so a worker reloads without opening the store;
 * drain and quit are the master's stop orders.  Orders travel here rather
 * than as signals because the workers run as another user than the master,
 * which under systemd has no CAP_KILL to signal them.
 */
#ifndef PROXYD_CHANNEL_H
#define PROXYD_CHANNEL_H

#include <stdint.h>
#include <sys/types.h>

/* CHAN_LOGFD carries a log file the master opened again (SIGUSR1, after
 * logrotate moved it): generation says which, CHAN_LOG_*. */
enum chan_cmd { CHAN_RELOAD = 1, CHAN_DRAIN, CHAN_QUIT, CHAN_LOGFD };
enum chan_log { CHAN_LOG_ERROR = 0, CHAN_LOG_ACCESS_JSON = 1, CHAN_LOG_ACCESS_COMBINED = 2 };

typedef struct {
    uint32_t cmd; /* chan_cmd */
    uint32_t pad;
    int64_t generation; /* CHAN_RELOAD: what the memfd holds */
    uint64_t epoch;
} chan_msg_t;

/* A sealed memfd holding p[0..n): the fd, or -1 with errno. */
int chan_memfd(const void *p, size_t n);
/* Send m (with fd attached unless it is -1) without blocking: 0, or -1
 * with errno (EAGAIN: the worker has that many messages unread). */
int chan_send(int sock, const chan_msg_t *m, int fd);
/* Receive one message and its fd (-1 when none came) without blocking: 1,
 * 0 at EOF (the master is gone), -1 when none is waiting or on error.  A
 * malformed message (wrong size, a reload or log without its fd) is skipped. */
ssize_t chan_recv(int sock, chan_msg_t *m, int *fd);

#endif

/*
 * event.h - the event loop: readiness of file descriptors (epoll, level
 * triggered) and one-shot timers (a binary min-heap keyed by deadline).
 *
 * Everything a worker does is a callback from ev_run().  A handler owns the
 * ev_io_t / ev_timer_t it registers and must ev_del / ev_timer_stop them
 * before freeing their memory.  Time is a cached monotonic millisecond clock,
 * refreshed once per loop iteration (ev_now), so the request path makes no
 * clock syscalls.
 */
#ifndef PROXYD_EVENT_H
#define PROXYD_EVENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ev_loop ev_loop_t;
typedef struct ev_io ev_io_t;
typedef struct ev_timer ev_timer_t;

typedef void (*ev_io_cb)(ev_loop_t *loop, ev_io_t *io, uint32_t revents);
typedef void (*ev_timer_cb)(ev_loop_t *loop, ev_timer_t *t);

enum { EV_READ = 1u, EV_WRITE = 4u, EV_ERROR = 8u, EV_HUP = 16u }; /* EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP */

struct ev_io {
    int fd;
    uint32_t events;  /* the interest asked for: EV_READ|EV_WRITE */
    uint32_t kernel;  /* the interest epoll has (ev_set changes reach it before the next wait) */
    uint32_t pending; /* 1 + its place in the loop's change list, 0 none */
    ev_io_cb cb;
};

struct ev_timer {
    uint64_t deadline; /* its place in the heap, ms on the loop clock; 0 = not armed */
    uint64_t due;      /* when it fires: >= deadline (a later re-arm only moves this) */
    uint32_t heap_idx;
    ev_timer_cb cb;
};

ev_loop_t *ev_new(void);
void ev_free(ev_loop_t *loop);
/* Register, change or remove interest; events 0 keeps the fd registered but silent.
 * ev_set is deferred: epoll hears of the last interest set before it waits
 * again, so a change and its undoing within one turn (a response written at
 * once, reading resumed) cost no system call. */
int ev_add(ev_loop_t *loop, ev_io_t *io, int fd, uint32_t events, ev_io_cb cb);
int ev_set(ev_loop_t *loop, ev_io_t *io, uint32_t events);
int ev_add_exclusive(ev_loop_t *loop, ev_io_t *io, int fd, ev_io_cb cb); /* EPOLLEXCLUSIVE accept sockets */
void ev_del(ev_loop_t *loop, ev_io_t *io);
/* io's fd is about to be closed: forget it without a system call.  close()
 * drops the registration itself when no other descriptor refers to the
 * file; use this only for fds that are never duplicated or inherited
 * (a worker's connections), ev_del otherwise. */
void ev_close(ev_loop_t *loop, ev_io_t *io);
/* Arm (or re-arm) t to fire after ms; ev_timer_stop disarms (no-op if not armed). */
void ev_timer_start(ev_loop_t *loop, ev_timer_t *t, uint64_t ms, ev_timer_cb cb);
void ev_timer_stop(ev_loop_t *loop, ev_timer_t *t);
static inline bool ev_timer_armed(const ev_timer_t *t) { return t->deadline != 0; }
uint64_t ev_now(const ev_loop_t *loop);
/* Run until ev_stop; each iteration also calls the idle hook (log flushing). */
void ev_run(ev_loop_t *loop);
void ev_stop(ev_loop_t *loop);
void ev_set_idle(ev_loop_t *loop, void (*fn)(void *), void *arg);

#endif

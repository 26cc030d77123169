/*
 * event.c - epoll loop and timer heap (see event.h).
 *
 * Timers live in a binary heap of pointers; each timer knows its slot, so
 * stop and re-arm are O(log n) without search.  A connection re-arms its one
 * timer on every state change; nothing allocates per event.  Re-arming to a
 * later time, the common case (a timeout pushed on by progress), is O(1): only
 * the timer's due time moves, and when its old heap place comes up it is
 * put back at the due time instead of firing.
 */
#include "core/event.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#define EV_BATCH 256

struct ev_loop {
    int epfd;
    bool stop;
    uint64_t now;
    ev_timer_t **heap;
    uint32_t nheap, capheap;
    void (*idle)(void *);
    void *idle_arg;
    ev_io_t **changes; /* ev_set since the last wait (NULL: withdrawn by ev_del/ev_close) */
    uint32_t nchanges, capchanges;
};

static uint64_t clock_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

ev_loop_t *ev_new(void)
{
    ev_loop_t *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return NULL;
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (l->epfd < 0) {
        free(l);
        return NULL;
    }
    l->now = clock_ms();
    return l;
}

void ev_free(ev_loop_t *l)
{
    if (l == NULL)
        return;
    close(l->epfd);
    free(l->heap);
    free(l->changes);
    free(l);
}

uint64_t ev_now(const ev_loop_t *l) { return l->now; }
void ev_stop(ev_loop_t *l) { l->stop = true; }

void ev_set_idle(ev_loop_t *l, void (*fn)(void *), void *arg)
{
    l->idle = fn;
    l->idle_arg = arg;
}

static int ctl(ev_loop_t *l, int op, ev_io_t *io, uint32_t events)
{
    struct epoll_event e = {.events = events, .data.ptr = io};
    return epoll_ctl(l->epfd, op, io->fd, &e);
}

int ev_add(ev_loop_t *l, ev_io_t *io, int fd, uint32_t events, ev_io_cb cb)
{
    io->fd = fd;
    io->events = io->kernel = events;
    io->pending = 0;
    io->cb = cb;
    return ctl(l, EPOLL_CTL_ADD, io, events);
}

int ev_add_exclusive(ev_loop_t *l, ev_io_t *io, int fd, ev_io_cb cb)
{
    io->fd = fd;
    io->events = io->kernel = EV_READ;
    io->pending = 0;
    io->cb = cb;
    return ctl(l, EPOLL_CTL_ADD, io, EPOLLIN | EPOLLEXCLUSIVE);
}

int ev_set(ev_loop_t *l, ev_io_t *io, uint32_t events)
{
    if (io->events == events)
        return 0;
    io->events = events;
    if (io->pending)
        return 0;
    if (l->nchanges == l->capchanges) {
        uint32_t cap = l->capchanges ? l->capchanges * 2 : 256;
        ev_io_t **c = realloc(l->changes, cap * sizeof(*c));
        if (c == NULL) { /* no room to defer it: now */
            io->kernel = events;
            return ctl(l, EPOLL_CTL_MOD, io, events);
        }
        l->changes = c;
        l->capchanges = cap;
    }
    l->changes[l->nchanges++] = io;
    io->pending = l->nchanges;
    return 0;
}

/* Hand epoll the interest changed since the last wait. */
static void apply_changes(ev_loop_t *l)
{
    for (uint32_t i = 0; i < l->nchanges; i++) {
        ev_io_t *io = l->changes[i];
        if (io == NULL)
            continue;
        io->pending = 0;
        if (io->kernel != io->events) {
            io->kernel = io->events;
            ctl(l, EPOLL_CTL_MOD, io, io->events);
        }
    }
    l->nchanges = 0;
}

static void withdraw(ev_loop_t *l, ev_io_t *io)
{
    if (io->pending && io->pending <= l->nchanges && l->changes[io->pending - 1] == io)
        l->changes[io->pending - 1] = NULL;
    io->pending = 0;
    io->events = io->kernel = 0;
}

void ev_del(ev_loop_t *l, ev_io_t *io)
{
    if (io->fd >= 0)
        epoll_ctl(l->epfd, EPOLL_CTL_DEL, io->fd, NULL);
    withdraw(l, io);
}

void ev_close(ev_loop_t *l, ev_io_t *io) { withdraw(l, io); }

/* ---- timer heap ----------------------------------------------------------- */

static void heap_place(ev_loop_t *l, uint32_t i, ev_timer_t *t)
{
    l->heap[i] = t;
    t->heap_idx = i;
}

static void sift_up(ev_loop_t *l, uint32_t i)
{
    ev_timer_t *t = l->heap[i];
    while (i > 0) {
        uint32_t p = (i - 1) / 2;
        if (l->heap[p]->deadline <= t->deadline)
            break;
        heap_place(l, i, l->heap[p]);
        i = p;
    }
    heap_place(l, i, t);
}

static void sift_down(ev_loop_t *l, uint32_t i)
{
    ev_timer_t *t = l->heap[i];
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= l->nheap)
            break;
        if (c + 1 < l->nheap && l->heap[c + 1]->deadline < l->heap[c]->deadline)
            c++;
        if (t->deadline <= l->heap[c]->deadline)
            break;
        heap_place(l, i, l->heap[c]);
        i = c;
    }
    heap_place(l, i, t);
}

void ev_timer_stop(ev_loop_t *l, ev_timer_t *t)
{
    if (t->deadline == 0)
        return;
    uint32_t i = t->heap_idx;
    t->deadline = 0;
    ev_timer_t *last = l->heap[--l->nheap];
    if (i == l->nheap)
        return;
    heap_place(l, i, last);
    sift_down(l, i);
    sift_up(l, last->heap_idx);
}

void ev_timer_start(ev_loop_t *l, ev_timer_t *t, uint64_t ms, ev_timer_cb cb)
{
    uint64_t due = l->now + (ms ? ms : 1);
    t->cb = cb;
    if (t->deadline != 0 && due >= t->deadline) {
        t->due = due;
        return;
    }
    ev_timer_stop(l, t);
    if (l->nheap == l->capheap) {
        uint32_t cap = l->capheap ? l->capheap * 2 : 256;
        ev_timer_t **h = realloc(l->heap, cap * sizeof(*h));
        if (h == NULL)
            abort();
        l->heap = h;
        l->capheap = cap;
    }
    t->deadline = t->due = due;
    heap_place(l, l->nheap++, t);
    sift_up(l, l->nheap - 1);
}

static void run_timers(ev_loop_t *l)
{
    while (l->nheap && l->heap[0]->deadline <= l->now) {
        ev_timer_t *t = l->heap[0];
        if (t->due > l->now) { /* re-armed later meanwhile: take its place at the due time */
            t->deadline = t->due;
            sift_down(l, 0);
            continue;
        }
        ev_timer_stop(l, t);
        t->cb(l, t);
    }
}

static int next_timeout(const ev_loop_t *l)
{
    if (l->nheap == 0)
        return 1000;
    uint64_t d = l->heap[0]->deadline;
    return d <= l->now ? 0 : d - l->now > 1000 ? 1000 : (int)(d - l->now);
}

void ev_run(ev_loop_t *l)
{
    struct epoll_event evs[EV_BATCH];
    l->stop = false;
    while (!l->stop) {
        if (l->idle)
            l->idle(l->idle_arg);
        if (l->stop)
            break;
        apply_changes(l);
        int n = epoll_wait(l->epfd, evs, EV_BATCH, next_timeout(l));
        l->now = clock_ms();
        if (n < 0 && errno != EINTR)
            break;
        for (int i = 0; i < n; i++) {
            ev_io_t *io = evs[i].data.ptr;
            io->cb(l, io, evs[i].events);
        }
        run_timers(l);
    }
}

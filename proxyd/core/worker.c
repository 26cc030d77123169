/*
 * worker.c - a worker process: accepts on the inherited listeners and runs
 * every connection to completion on its event loop.
 *
 * A reload arrives on the worker's channel from the master: the new
 * generation, verified by the master, as a bundle (core/bundle.h) in a
 * sealed memfd; the worker never opens the store.  It swaps the new table in
 * between requests (requests in flight keep the table they started with).
 * Signals arrive through a signalfd, so handlers are ordinary loop
 * callbacks.  Drain (stop accepting, let requests finish, close idle
 * connections) and quit (exit now) come as orders on the channel, or as
 * TERM and QUIT from someone allowed to signal the worker.
 */
#include "core/worker.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include "../common/log.h"
#include "core/channel.h"
#include "core/module.h"
#include "core/sandbox.h"
#include "http/accesslog.h"

worker_t *W;

static ev_io_t sig_io, chan_io;
static ev_timer_t drain_timer;

const char *worker_date(void)
{
    time_t now = time(NULL);
    if ((uint64_t)now != W->date_sec) {
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(W->date, sizeof(W->date), "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
        W->date_sec = (uint64_t)now;
    }
    return W->date;
}

static void idle(void *arg)
{
    (void)arg;
    modules_worker_idle();
    if (W->draining && W->conns == 0)
        ev_stop(W->loop);
}

/* Per-site counters are indexed by a table's site order; carry them over to
 * the new table by name (both tables list sites sorted by name). */
static void remap_site_counters(const rt_table_t *from, const rt_table_t *to)
{
    uint32_t nf = from->nsites < STATS_MAX_SITES ? from->nsites : STATS_MAX_SITES;
    uint32_t nt = to->nsites < STATS_MAX_SITES ? to->nsites : STATS_MAX_SITES;
    uint64_t (*old)[STATS_CLASSES] = malloc((nf + 1) * sizeof(*old));
    if (old == NULL)
        return;
    for (uint32_t i = 0; i < nf; i++)
        for (int k = 0; k < STATS_CLASSES; k++)
            old[i][k] = W->stats->site[i][k];
    for (uint32_t i = 0; i < nt || i < nf; i++)
        for (int k = 0; k < STATS_CLASSES; k++)
            W->stats->site[i][k] = 0;
    for (uint32_t i = 0, j = 0; i < nf && j < nt;) {
        int c = strcmp(rt_cstr(from, from->sites[i].name), rt_cstr(to, to->sites[j].name));
        if (c == 0)
            for (int k = 0; k < STATS_CLASSES; k++)
                W->stats->site[j][k] = old[i][k];
        i += c <= 0;
        j += c >= 0;
    }
    free(old);
}

/* Make the generation in the bundle fd (a sealed memfd from the master)
 * current. */
static void reload(int fd, const chan_msg_t *m)
{
    if (m->generation == W->table->generation && m->epoch == W->stats->epoch)
        return; /* (a new epoch of the same generation: host names resolve anew) */
    char err[512];
    struct stat sb;
    tref_t *t = NULL;
    int seals = fcntl(fd, F_GET_SEALS);
    if (fstat(fd, &sb) < 0 || sb.st_size <= 0 || seals < 0 || !(seals & F_SEAL_WRITE)) {
        snprintf(err, sizeof(err), "the master's generation is not a sealed memfd");
    } else {
        void *p = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED)
            snprintf(err, sizeof(err), "cannot map the master's generation: %s", strerror(errno));
        else {
            t = tref_open(W->db, p, (size_t)sb.st_size, err, sizeof(err));
            munmap(p, (size_t)sb.st_size);
        }
    }
    if (t == NULL) {
        log_err("reload refused, keeping generation %lld: %s", (long long)W->table->generation, err);
        return;
    }
    remap_site_counters(&W->table->t, &t->t);
    tref_put(W->table);
    W->table = t;
    W->stats->generation = t->generation;
    W->stats->epoch = m->epoch;
    modules_worker_switch(t);
}

static void drain_expired(ev_loop_t *loop, ev_timer_t *t)
{
    (void)t;
    log_warn("drain timeout: closing %u connections", W->conns);
    ev_stop(loop);
}

static void start_drain(void)
{
    if (W->draining)
        return;
    W->draining = true;
    /* Close our copies: once every process has, new connections are refused
     * instead of waiting in a backlog nobody accepts from. */
    for (int i = 0; i < W->nlisteners; i++) {
        ev_del(W->loop, &W->listeners[i].io);
        close(W->listeners[i].fd);
        W->listeners[i].fd = -1;
    }
    modules_worker_drain();
    ev_timer_start(W->loop, &drain_timer, W->table->t.global->drain_timeout_ms, drain_expired);
}

/* Orders from the master: the newest reload wins (older ones queued behind
 * it are skipped); a drain or quit after it is obeyed once it is in. */
static void on_channel(ev_loop_t *loop, ev_io_t *io, uint32_t revents)
{
    chan_msg_t m, last = {0};
    int fd, last_fd = -1;
    bool drain = false, quit = false;
    ssize_t n;
    (void)revents;
    while ((n = chan_recv(io->fd, &m, &fd)) > 0) {
        drain |= m.cmd == CHAN_DRAIN;
        quit |= m.cmd == CHAN_QUIT;
        if (m.cmd == CHAN_LOGFD) {
            /* The master's reopened log: it takes this one's number, the old file is closed. */
            if (m.generation == CHAN_LOG_ERROR)
                log_take_fd(fd);
            else
                accesslog_take_fd(m.generation == CHAN_LOG_ACCESS_JSON ? RT_LOG_JSON : RT_LOG_COMBINED, fd);
            continue;
        }
        if (m.cmd != CHAN_RELOAD) {
            if (fd >= 0)
                close(fd);
            continue;
        }
        if (last_fd >= 0)
            close(last_fd);
        last = m;
        last_fd = fd;
    }
    if (last_fd >= 0) {
        reload(last_fd, &last);
        close(last_fd);
    }
    if (n == 0) /* the master is gone: PDEATHSIG follows */
        ev_del(loop, io);
    if (quit)
        ev_stop(loop);
    else if (drain)
        start_drain();
}

static void on_signal(ev_loop_t *loop, ev_io_t *io, uint32_t revents)
{
    struct signalfd_siginfo si;
    (void)revents;
    while (read(io->fd, &si, sizeof(si)) == sizeof(si)) {
        if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)
            start_drain();
        else if (si.ssi_signo == SIGQUIT)
            ev_stop(loop);
    }
}

static int setup_signals(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGQUIT);
    sigaddset(&set, SIGUSR1); /* logrotate's, maybe sent to the whole unit: the master orders the reopen */
    sigprocmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    int fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    return fd < 0 ? -1 : ev_add(W->loop, &sig_io, fd, EV_READ, on_signal);
}

/* Started as root: run as `user` (global setting) once the listeners are
 * bound.  The master keeps root to bind new listeners and read keys. */
int worker_account(const char *user, struct passwd **pw, char *err, size_t errlen)
{
    bool dflt = user == NULL || *user == '\0';
    *pw = NULL;
    if (geteuid() != 0 || (!dflt && strcmp(user, "root") == 0))
        return 0;
    if ((*pw = getpwnam(dflt ? "proxyd" : user)) != NULL)
        return 0;
    if (dflt)
        snprintf(err, errlen, "refusing to run the workers as root: no 'user' is set and user 'proxyd' does not "
                              "exist (create it: useradd --system proxyd; or write user: root in proxy.yaml)");
    else
        snprintf(err, errlen, "user '%s' does not exist; refusing to serve as root", user);
    return -1;
}

int drop_privileges(const char *user, bool warn)
{
    struct passwd *pw;
    char err[256];
    if (worker_account(user, &pw, err, sizeof(err)) < 0) {
        log_err("%s", err);
        return -1;
    }
    if (pw == NULL) {
        if (warn && geteuid() == 0)
            log_warn("workers run as root: proxy.yaml says user: root");
        return 0;
    }
    user = pw->pw_name;
    if (setgroups(0, NULL) < 0 || initgroups(user, pw->pw_gid) < 0 || setgid(pw->pw_gid) < 0 ||
        setuid(pw->pw_uid) < 0) {
        log_err("cannot drop privileges to '%s': %s", user, strerror(errno));
        return -1;
    }
    prctl(PR_SET_PDEATHSIG, SIGQUIT); /* setuid clears it */
    return 0;
}

int worker_main(int id, const char *db, int chan, tref_t *table, listener_t *ls, int nls, stats_shm_t *shm)
{
    static worker_t w;
    char ident[32];
    W = &w;
    w.id = id;
    w.db = db;
    w.table = table;
    w.listeners = ls;
    w.nlisteners = nls;
    w.shm = shm;
    w.stats = &shm->workers[id];
    worker_stats_t *stats = w.stats;
    snprintf(ident, sizeof(ident), "worker %d", id);
    log_set_ident(ident);
    prctl(PR_SET_PDEATHSIG, SIGQUIT); /* never outlive the master */
    if (drop_privileges(rt_cstr(&table->t, table->t.global->user), id == 0) < 0)
        return 1;
    w.loop = ev_new();
    w.hreq = malloc(sizeof(*w.hreq));
    w.hres = malloc(sizeof(*w.hres));
    if (w.loop == NULL || w.hreq == NULL || w.hres == NULL || setup_signals() < 0 ||
        ev_add(w.loop, &chan_io, chan, EV_READ, on_channel) < 0) {
        log_err("cannot start: %s", strerror(errno));
        return 1;
    }
    stats->pid = getpid();
    w.pid_hash = (uint32_t)getpid() * 2654435761u ^ (uint32_t)time(NULL);
    stats->generation = table->generation;
    stats->epoch = shm->epoch;
    stats->started = (uint64_t)time(NULL);
    stats->conns_active = 0;
    if (modules_worker_init() < 0 || sandbox_worker() < 0)
        return 1;
    ev_set_idle(w.loop, idle, NULL);
    ev_run(w.loop);
    modules_worker_exit();
    return 0;
}

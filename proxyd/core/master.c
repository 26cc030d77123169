/*
 * master.c - the master process (see master.h).
 *
 * The master binds every listener once, maps the shared stats region, and
 * forks the workers, which inherit both and the master's prepared table.
 * Its loop handles signals (through a signalfd), worker exits (restarting
 * them at once), and the admin socket.  Only the master opens the store
 * (root's, mode 0600): a reload is read and verified here first, so a bad
 * generation is refused before any worker sees it, and then handed to each
 * worker over its channel (core/channel.h) with the certificates it needs.
 */
#include "core/master.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "../common/ha.h"
#include "../common/log.h"
#include "core/admin.h"
#include "core/channel.h"
#include "core/net.h"
#include "http/limit.h"
#include "cache/cache.h"
#include "upstream/health.h"
#include "core/replica.h"
#include "conn/peers.h"
#include "conn/tls.h"
#include "handlers/challenges.h"
#include "http/accesslog.h"

master_t M;

static ev_io_t sig_io, upgrade_io, replica_io;
static ev_timer_t stop_timer, ticket_timer, upgrade_timer, watchdog_timer, challenge_timer;
static uint64_t watchdog_ms;
static pid_t upgrade_pid;

static void upgrade_abort(const char *why);
static void stop_expired(ev_loop_t *loop, ev_timer_t *t);

/* Session-ticket keys: kept in the store (so the HA peer can share them),
 * rotated here, published to the workers through shared memory. */
static void publish_tickets(void)
{
    store_t st;
    char err[512];
    ha_state_t hs = {0};
    ha_conf_t hc;
    uint32_t rotation = M.table->t.global->ticket_key_rotation_s;
    bool ok = store_open(&st, M.db, 0) == 0 && ha_state_get(&st, &hs) == 0;
    /* In a pair only the MASTER (or a node keepalived has not reported on
     * yet) makes keys; the others use the ones replicated from it. */
    bool rotate = !ok || ha_conf_load(&st, &hc) <= 0 || hs.role[0] == '\0' || strcmp(hs.role, "MASTER") == 0;
    if (!ok || tls_rotate_ticket_keys(&st, rotation, rotate, err, sizeof(err)) < 0)
        log_err("session ticket keys: %s", ok ? err : st.err);
    store_close(&st);
}

static void rotate_tickets(ev_loop_t *loop, ev_timer_t *t)
{
    publish_tickets();
    uint32_t rotation = M.table->t.global->ticket_key_rotation_s;
    uint64_t every = rotation ? (uint64_t)rotation * 1000 / 4 : 3600000;
    ev_timer_start(loop, t, every > 300000 ? 300000 : every, rotate_tickets);
}

/* In a freshly forked child: drop the master's loop, admin socket and
 * signal handling. */
static void child_after_fork(void)
{
    for (int i = 0; i < STATS_MAX_WORKERS; i++)
        if (M.chan[i] >= 0) {
            close(M.chan[i]);
            M.chan[i] = -1;
        }
    if (M.replica_chan >= 0)
        close(M.replica_chan);
    M.replica_chan = -1;
    admin_close_in_child();
    ev_free(M.loop);
    close(sig_io.fd);
    /* SIGUSR1 stays blocked: logrotate may signal the whole unit (systemctl kill) while
     * a new worker is still on its way to its own signalfd, and its default would kill it. */
    sigset_t keep;
    sigemptyset(&keep);
    sigaddset(&keep, SIGUSR1);
    sigprocmask(SIG_SETMASK, &keep, NULL);
}

/* ---- HA replication process ---------------------------------------------------------- */

static ev_timer_t replica_timer;

/* Closing the channel tells the replication process to stop (it runs as
 * `user`: the master may have no right to signal it). */
static void replica_stop(void)
{
    if (M.replica_chan < 0)
        return;
    ev_del(M.loop, &replica_io);
    close(M.replica_chan);
    M.replica_chan = -1;
}

/* The replication process pulled a new state: reload. */
static void on_replica(ev_loop_t *loop, ev_io_t *io, uint32_t revents)
{
    char b[16], err[256];
    ssize_t n;
    bool reload = false;
    (void)loop;
    (void)revents;
    while ((n = recv(io->fd, b, sizeof(b), MSG_DONTWAIT)) > 0)
        reload |= memchr(b, 'R', (size_t)n) != NULL;
    if (n == 0)
        replica_stop();
    if (reload)
        master_reload(err, sizeof(err));
}

static void replica_spawn(void)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
        log_err("replication process: channel: %s", strerror(errno));
        return;
    }
    pid_t pid = fork();
    if (pid < 0) {
        log_err("fork replication process: %s", strerror(errno));
        close(sv[0]);
        close(sv[1]);
        return;
    }
    if (pid == 0) {
        close(sv[0]);
        child_after_fork();
        for (int i = 0; i < M.nls; i++)
            close(M.ls[i].fd);
        _exit(replica_main(M.db, rt_cstr(&M.table->t, M.table->t.global->user), M.replica, sv[1]));
    }
    close(sv[1]);
    replica_stop();
    M.replica_chan = sv[0];
    ev_add(M.loop, &replica_io, sv[0], EV_READ, on_replica);
    M.replica_pid = pid;
    M.replica_spawned_ms = ev_now(M.loop);
}

static void replica_due(ev_loop_t *loop, ev_timer_t *t)
{
    (void)loop;
    (void)t;
    if (!M.stopping && M.replica_pid == 0 && M.replica_conf.node[0])
        replica_spawn();
}

/* Start, restart or stop the replication process to match the store's ha
 * settings (at start and on every reload). */
static void replica_sync(void)
{
    store_t st;
    ha_conf_t c;
    int have = store_open(&st, M.db, STORE_RDONLY) == 0 ? ha_conf_load(&st, &c) : -1;
    store_close(&st);
    if (have < 0)
        return;
    if (have == 0)
        memset(&c, 0, sizeof(c));
    bool changed = memcmp(&c, &M.replica_conf, sizeof(c)) != 0;
    M.replica_conf = c;
    if (changed && M.replica_pid > 0)
        replica_stop(); /* it exits, is reaped, then started again with the new settings */
    else if (have && M.replica_pid == 0)
        replica_spawn();
}

static void replica_exited(int status)
{
    M.replica_pid = 0;
    bool asked = M.replica_chan < 0; /* we closed its channel */
    replica_stop();
    if (M.stopping || M.replica_conf.node[0] == '\0')
        return;
    bool expected = (asked && WIFEXITED(status) && WEXITSTATUS(status) == 0) ||
                    (WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM);
    if (!expected)
        log_err("replication process exited (%s %d); restarting", WIFSIGNALED(status) ? "signal" : "status",
                WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
    uint64_t young = ev_now(M.loop) - M.replica_spawned_ms < 1000;
    ev_timer_start(M.loop, &replica_timer, young ? 2000 : 0, replica_due);
}

int master_live_workers(void)
{
    int n = 0;
    for (int i = 0; i < M.nworkers; i++)
        n += M.pids[i] > 0;
    return n;
}

/* ---- listeners ------------------------------------------------------------------ */

static void listener_from(const rt_listen_t *l, listener_t *out)
{
    out->kind = l->kind;
    out->port = l->sa.port;
    out->addr_kind = l->sa.kind;
    memcpy(out->ip, l->sa.ip, sizeof(out->ip));
}

static int bind_listener(const rt_table_t *t, const rt_listen_t *l, listener_t *out)
{
    int fd = net_listen(t, l, 4096);
    if (fd < 0) {
        log_err("listen %s: %s", rt_cstr(t, l->sa.addr), strerror(errno));
        return -1;
    }
    out->fd = fd;
    listener_from(l, out);
    return 0;
}

/* A listener from systemd socket activation (proxyd.socket): the fds from
 * SD_LISTEN_FDS_START on, matched to the table's listen addresses by what
 * they are bound to. */
static int activated_listener(const rt_listen_t *l, listener_t *out)
{
    static int n = -1;
    if (n < 0)
        n = sd_listen_fds(0);
    for (int fd = SD_LISTEN_FDS_START; fd < SD_LISTEN_FDS_START + n; fd++) {
        int family = l->sa.kind == RT_ADDR_INET ? AF_INET : AF_INET6;
        if (sd_is_socket_inet(fd, family, SOCK_STREAM, 1, l->sa.port) <= 0)
            continue;
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
            continue;
        const void *ip = family == AF_INET ? (const void *)&((struct sockaddr_in *)&ss)->sin_addr
                                           : (const void *)&((struct sockaddr_in6 *)&ss)->sin6_addr;
        if (memcmp(ip, l->sa.ip, family == AF_INET ? 4 : 16) != 0)
            continue;
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        out->fd = fd;
        listener_from(l, out);
        return 0;
    }
    return -1;
}

/* A listener handed over by the previous master (binary upgrade):
 * PROXYD_LISTEN_FDS="fd kind addr;fd kind addr;..." */
static int adopt_listener(const rt_listen_t *l, const char *addr, listener_t *out)
{
    const char *v = getenv("PROXYD_LISTEN_FDS");
    for (const char *p = v; p && *p;) {
        int fd, kind, used = 0;
        char a[128];
        if (sscanf(p, "%d %d %127[^;]%n", &fd, &kind, a, &used) != 3)
            break;
        p += used + (p[used] == ';');
        if (kind != l->kind || strcmp(a, addr) != 0)
            continue;
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        out->fd = fd;
        listener_from(l, out);
        return 0;
    }
    return -1;
}

static int bind_all(const rt_table_t *t)
{
    M.ls = calloc(t->global->listens.count + 1, sizeof(*M.ls));
    if (M.ls == NULL)
        return -1;
    for (uint32_t i = 0; i < t->global->listens.count; i++) {
        const rt_listen_t *l = &t->listens[t->global->listens.first + i];
        if (l->kind != RT_LISTEN_HTTP && l->kind != RT_LISTEN_HTTPS)
            continue;
        if (adopt_listener(l, rt_cstr(t, l->sa.addr), &M.ls[M.nls]) < 0 &&
            activated_listener(l, &M.ls[M.nls]) < 0 && bind_listener(t, l, &M.ls[M.nls]) < 0)
            return -1;
        M.nls++;
    }
    if (M.nls == 0) {
        log_err("no HTTP or HTTPS listener configured");
        return -1;
    }
    return 0;
}

/* ---- workers ---------------------------------------------------------------------- */

static int spawn(int id)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
        log_err("worker %d: channel: %s", id, strerror(errno));
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        log_err("fork worker %d: %s", id, strerror(errno));
        close(sv[0]);
        close(sv[1]);
        return -1;
    }
    if (pid == 0) {
        close(sv[0]);
        child_after_fork();
        /* Inherited table: the master's current generation, prepared. */
        _exit(worker_main(id, M.db, sv[1], tref_get(M.table), M.ls, M.nls, M.shm));
    }
    close(sv[1]);
    fcntl(sv[0], F_SETFL, O_NONBLOCK);
    M.chan[id] = sv[0];
    M.pids[id] = pid;
    M.spawned_ms[id] = ev_now(M.loop);
    return 0;
}

/* A worker that dies right after it starts (bad user, no memory, a crash on
 * the table) would otherwise be restarted in a tight loop: back off. */
static ev_timer_t respawn_timer[STATS_MAX_WORKERS];

static void respawn_due(ev_loop_t *loop, ev_timer_t *t)
{
    (void)loop;
    int id = (int)(t - respawn_timer);
    if (!M.stopping && M.pids[id] == 0)
        spawn(id);
}

static void respawn(int id)
{
    if (ev_now(M.loop) - M.spawned_ms[id] >= 1000) {
        M.backoff_ms[id] = 0;
        spawn(id);
        return;
    }
    M.backoff_ms[id] = M.backoff_ms[id] ? M.backoff_ms[id] * 2 : 100;
    if (M.backoff_ms[id] > 5000)
        M.backoff_ms[id] = 5000;
    ev_timer_start(M.loop, &respawn_timer[id], M.backoff_ms[id], respawn_due);
}

static void reap(void)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        if (pid == M.replica_pid) {
            replica_exited(status);
            continue;
        }
        if (pid == upgrade_pid) {
            upgrade_pid = 0;
            if (upgrade_io.fd >= 0) {
                char why[96];
                snprintf(why, sizeof(why), "the new master exited (%s %d) before it was ready",
                         WIFSIGNALED(status) ? "signal" : "status", WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
                upgrade_abort(why);
            }
            continue;
        }
        for (int i = 0; i < M.nworkers; i++) {
            if (M.pids[i] != pid)
                continue;
            M.pids[i] = 0;
            close(M.chan[i]);
            M.chan[i] = -1;
            M.shm->workers[i].conns_active = 0;
            peers_reset(i); /* its connections are gone with it */
            cache_worker_died(pid); /* and its half-written cache files */
            if (M.stopping)
                break;
            if (WIFSIGNALED(status))
                log_err("worker %d (pid %d) killed by signal %d; restarting", i, (int)pid, WTERMSIG(status));
            else
                log_err("worker %d (pid %d) exited with status %d; restarting", i, (int)pid, WEXITSTATUS(status));
            respawn(i);
        }
    }
    if (M.stopping && master_live_workers() == 0)
        ev_stop(M.loop);
}

/* Tell every worker to drain or to quit, over its channel; and stop the
 * replication process. */
static void order_workers(uint32_t cmd)
{
    chan_msg_t m = {.cmd = cmd};
    for (int i = 0; i < M.nworkers; i++)
        if (M.pids[i] > 0 && (M.chan[i] < 0 || chan_send(M.chan[i], &m, -1) < 0))
            kill(M.pids[i], cmd == CHAN_QUIT ? SIGQUIT : SIGTERM); /* its channel is full: as far as we may */
    replica_stop();
}

/* The drain timeout passed: as far as we may (a master without CAP_KILL
 * leaves them to PDEATHSIG when it exits). */
static void kill_children(void)
{
    for (int i = 0; i < M.nworkers; i++)
        if (M.pids[i] > 0)
            kill(M.pids[i], SIGKILL);
    if (M.replica_pid > 0)
        kill(M.replica_pid, SIGKILL);
}

static void admin_view(admin_view_t *v)
{
    *v = (admin_view_t){
        .table = M.table,
        .shm = M.shm,
        .nworkers = M.nworkers,
        .pids = M.pids,
        .started = M.started,
        .db = M.db,
        .last_reload_error = M.last_reload_error,
        .replica = M.replica,
        .ha_node = M.replica_conf.node,
        .ha_peer = M.replica_conf.peer,
        .replica_running = M.replica_pid > 0,
    };
}

static int refresh_challenges(char *err, size_t errlen)
{
    int n = challenges_refresh(M.db, err, errlen);
    if (n < 0)
        log_err("acme challenges: %s", err);
    return n;
}

/* Challenges written without telling us (an older proxyctl, a replicated
 * store) are served within a second. */
static void poll_challenges(ev_loop_t *loop, ev_timer_t *t)
{
    challenges_poll(M.db);
    ev_timer_start(loop, t, 1000, poll_challenges);
}

static const admin_ops_t admin_ops = {admin_view, master_live_workers, master_reload, refresh_challenges};

/* Hand the current generation (its bundle, p[0..n)) to every worker.  A
 * worker whose channel is full (it has not read that many reloads) is told
 * to drain: it is restarted on the current generation. */
static void send_generation(const uint8_t *p, size_t n)
{
    int fd = chan_memfd(p, n);
    if (fd < 0) {
        log_err("reload: cannot hand generation %lld to the workers: memfd: %s", (long long)M.table->generation,
                strerror(errno));
        return;
    }
    chan_msg_t m = {.cmd = CHAN_RELOAD, .generation = M.table->generation, .epoch = M.shm->epoch};
    for (int i = 0; i < M.nworkers; i++) {
        if (M.pids[i] <= 0 || M.chan[i] < 0 || chan_send(M.chan[i], &m, fd) == 0)
            continue;
        log_err("reload: worker %d (pid %d) did not take generation %lld (%s); restarting it", i, (int)M.pids[i],
                (long long)m.generation, strerror(errno));
        kill(M.pids[i], SIGTERM); /* as far as we may: a worker that never reads its channel is stuck anyway */
    }
    close(fd);
}

/* ---- log files (SIGUSR1) -------------------------------------------------------------
 *
 * logrotate moves the files and sends SIGUSR1: the master opens every log
 * file again at its configured path (making directories as needed) and
 * hands each worker the new descriptors over its channel; the worker puts
 * them in place of the old ones, which closes the moved files.  The master
 * opens them because the workers, after dropping privileges, may not be
 * allowed to.  A file that cannot be opened is reported and the old one
 * kept.  The replication process keeps the error-log descriptor it started
 * with until it is restarted.
 */
static void send_log_fd(uint32_t which, int fd)
{
    chan_msg_t m = {.cmd = CHAN_LOGFD, .generation = which};
    for (int i = 0; i < M.nworkers; i++)
        if (M.pids[i] > 0 && M.chan[i] >= 0 && chan_send(M.chan[i], &m, fd) < 0)
            log_err("worker %d: cannot hand over the reopened log: %s", i, strerror(errno));
}

static void reopen_logs(bool error_log)
{
    char why[4200];
    int fd;
    if (error_log) {
        if ((fd = log_reopen(why, sizeof(why))) < 0)
            log_err("error log: %s; still writing to the old file", why);
        else if (fd > 2)
            send_log_fd(CHAN_LOG_ERROR, fd);
    }
    if (accesslog_reopen(&M.table->t, why, sizeof(why)) < 0)
        log_err("access log: %s; still writing to the old file", why);
    if ((fd = accesslog_fd(RT_LOG_JSON)) > 2)
        send_log_fd(CHAN_LOG_ACCESS_JSON, fd);
    if ((fd = accesslog_fd(RT_LOG_COMBINED)) > 2)
        send_log_fd(CHAN_LOG_ACCESS_COMBINED, fd);
    if (error_log)
        log_info("log files reopened");
}

int master_reload(char *err, size_t errlen)
{
    publish_tickets(); /* replicated ticket keys arrive with a reload */
    replica_sync();
    challenges_poll(M.db);
    uint8_t *p = NULL;
    size_t n = 0;
    tref_t *t = tref_bundle_load(M.db, 0, &p, &n, err, errlen) == 0 ? tref_open(M.db, p, n, err, errlen) : NULL;
    if (t == NULL) {
        tref_bundle_free(p, n);
        snprintf(M.last_reload_error, sizeof(M.last_reload_error), "%s", err);
        log_err("reload refused, keeping generation %lld: %s", (long long)M.table->generation, err);
        return -1;
    }
    M.last_reload_error[0] = '\0';
    /* Host names follow DNS in the workers (upstream/resolve.c): the same
     * generation again changes nothing. */
    if (t->generation == M.table->generation) {
        tref_put(t);
        tref_bundle_free(p, n);
        return 0;
    }
    tref_put(M.table);
    M.table = t;
    M.shm->generation = t->generation;
    M.shm->epoch++;
    M.shm->reloads++;
    log_info("reload: generation %lld (%u sites)", (long long)t->generation, t->t.nsites);
    sd_notifyf(0, "RELOADING=1\nSTATUS=reloading to generation %lld", (long long)t->generation);
    send_generation(p, n);
    tref_bundle_free(p, n);
    if (accesslog_wants_reopen(&t->t)) /* the first site in the combined format */
        reopen_logs(false);
    sd_notifyf(0, "READY=1\nSTATUS=serving generation %lld (%u sites)", (long long)t->generation, t->t.nsites);
    return 0;
}

/* ---- binary upgrade (SIGUSR2) --------------------------------------------------------
 *
 * The master forks and executes the proxyd binary again, handing over the
 * listening sockets and the admin socket by fd number.  The new master
 * writes one byte to a pipe once its workers run; only then does this
 * master retire: its workers stop accepting and drain, and it exits when
 * they are done.  If the new binary fails before that, nothing changes here
 * and the reason is logged.
 */

static void upgrade_abort(const char *why)
{
    log_err("binary upgrade failed, still serving: %s", why);
    if (upgrade_io.fd >= 0) {
        ev_del(M.loop, &upgrade_io);
        close(upgrade_io.fd);
        upgrade_io.fd = -1;
    }
    ev_timer_stop(M.loop, &upgrade_timer);
    for (int i = 0; i < M.nls; i++)
        fcntl(M.ls[i].fd, F_SETFD, FD_CLOEXEC);
    if (upgrade_pid > 0) {
        kill(upgrade_pid, SIGKILL);
        upgrade_pid = 0;
    }
}

static void retire(void)
{
    log_info("binary upgrade: new master %d serves; draining %d workers", (int)upgrade_pid, master_live_workers());
    /* Under systemd (NotifyAccess=main) only we may name the new main pid. */
    sd_notifyf(0, "MAINPID=%d", (int)upgrade_pid);
    ev_del(M.loop, &upgrade_io);
    close(upgrade_io.fd);
    upgrade_io.fd = -1;
    ev_timer_stop(M.loop, &upgrade_timer);
    M.stopping = true;
    admin_stop(true);
    for (int i = 0; i < M.nls; i++)
        close(M.ls[i].fd);
    order_workers(CHAN_DRAIN);
    ev_timer_start(M.loop, &stop_timer, (uint64_t)M.table->t.global->drain_timeout_ms + 1000, stop_expired);
    if (master_live_workers() == 0)
        ev_stop(M.loop);
}

static void on_upgrade_pipe(ev_loop_t *loop, ev_io_t *io, uint32_t revents)
{
    char b;
    (void)loop;
    (void)revents;
    if (read(io->fd, &b, 1) == 1 && b == 'R')
        retire();
    else
        upgrade_abort("the new master exited before it was ready (see its log lines above)");
}

static void upgrade_expired(ev_loop_t *loop, ev_timer_t *t)
{
    (void)loop;
    (void)t;
    upgrade_abort("the new master did not report ready within 15 s");
}

static void upgrade_env(int pipe_w)
{
    char buf[4096] = "", item[256], n[16];
    for (int i = 0; i < M.nls; i++) {
        const rt_table_t *t = &M.table->t;
        const char *addr = "";
        for (uint32_t k = 0; k < t->global->listens.count; k++) {
            const rt_listen_t *l = &t->listens[t->global->listens.first + k];
            if (l->kind == M.ls[i].kind && l->sa.port == M.ls[i].port)
                addr = rt_cstr(t, l->sa.addr);
        }
        snprintf(item, sizeof(item), "%s%d %d %s", i ? ";" : "", M.ls[i].fd, M.ls[i].kind, addr);
        strncat(buf, item, sizeof(buf) - strlen(buf) - 1);
        fcntl(M.ls[i].fd, F_SETFD, 0);
    }
    setenv("PROXYD_LISTEN_FDS", buf, 1);
    int ufd, mfd;
    admin_fds(&ufd, &mfd);
    fd_hand_on("PROXYD_ADMIN_FD", ufd);
    if (mfd >= 0)
        fd_hand_on("PROXYD_METRICS_FD", mfd);
    snprintf(n, sizeof(n), "%d", pipe_w);
    setenv("PROXYD_UPGRADE_FD", n, 1);
    limit_shm_export();
    cache_shm_export();
}

static void upgrade_start(void)
{
    int p[2];
    if (upgrade_pid > 0 || M.stopping) {
        log_warn("binary upgrade already in progress or stopping; SIGUSR2 ignored");
        return;
    }
    if (pipe2(p, O_CLOEXEC) < 0) {
        log_err("binary upgrade: pipe: %s", strerror(errno));
        return;
    }
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        fcntl(p[1], F_SETFD, 0);
        upgrade_env(p[1]);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execv(M.exe, M.argv);
        log_err("binary upgrade: cannot execute %s: %s", M.exe, strerror(errno));
        _exit(127);
    }
    close(p[1]);
    if (pid < 0) {
        close(p[0]);
        log_err("binary upgrade: fork: %s", strerror(errno));
        return;
    }
    upgrade_pid = pid;
    log_info("binary upgrade: started %s as pid %d", M.exe, (int)pid);
    ev_add(M.loop, &upgrade_io, p[0], EV_READ, on_upgrade_pipe);
    ev_timer_start(M.loop, &upgrade_timer, 15000, upgrade_expired);
}

/* The new master, once its workers run: tell the previous one to retire. */
static void upgrade_report_ready(void)
{
    const char *v = getenv("PROXYD_UPGRADE_FD");
    if (v == NULL)
        return;
    int fd = atoi(v);
    ssize_t w = write(fd, "R", 1);
    (void)w;
    close(fd);
    unsetenv("PROXYD_UPGRADE_FD");
    unsetenv("PROXYD_LISTEN_FDS");
    unsetenv("PROXYD_ADMIN_FD");
    unsetenv("PROXYD_METRICS_FD");
}

/* systemd's watchdog: pet it only while every worker is alive. */
static void watchdog(ev_loop_t *loop, ev_timer_t *t)
{
    if (master_live_workers() == M.nworkers)
        sd_notify(0, "WATCHDOG=1");
    ev_timer_start(loop, t, watchdog_ms / 2, watchdog);
}

/* ---- signals ------------------------------------------------------------------------- */

static void stop_expired(ev_loop_t *loop, ev_timer_t *t)
{
    (void)t;
    log_warn("workers did not finish within the drain timeout; killing them");
    kill_children();
    ev_stop(loop);
}

static void begin_stop(int sig)
{
    if (M.stopping && sig != SIGQUIT)
        return;
    M.stopping = true;
    sd_notify(0, "STOPPING=1");
    admin_stop(upgrade_pid > 0 && upgrade_io.fd < 0);
    for (int i = 0; i < M.nls; i++)
        close(M.ls[i].fd); /* the workers close theirs: new connections are refused, not left waiting */
    M.nls = 0;
    order_workers(sig == SIGQUIT ? CHAN_QUIT : CHAN_DRAIN);
    ev_timer_start(M.loop, &stop_timer, (uint64_t)M.table->t.global->drain_timeout_ms + 1000, stop_expired);
    if (master_live_workers() == 0)
        ev_stop(M.loop);
}

static void on_signal(ev_loop_t *loop, ev_io_t *io, uint32_t revents)
{
    struct signalfd_siginfo si;
    char err[256];
    (void)loop;
    (void)revents;
    while (read(io->fd, &si, sizeof(si)) == sizeof(si)) {
        switch (si.ssi_signo) {
        case SIGCHLD: reap(); break;
        case SIGHUP: master_reload(err, sizeof(err)); break;
        case SIGTERM:
        case SIGINT:
        case SIGQUIT: begin_stop((int)si.ssi_signo); break;
        case SIGUSR2: upgrade_start(); break;
        case SIGUSR1: reopen_logs(true); break;
        default: break;
        }
    }
}

static int setup_signals(void)
{
    sigset_t set;
    sigemptyset(&set);
    int sigs[] = {SIGCHLD, SIGHUP, SIGTERM, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2};
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
        sigaddset(&set, sigs[i]);
    sigprocmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    int fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    return fd < 0 ? -1 : ev_add(M.loop, &sig_io, fd, EV_READ, on_signal);
}

int master_main(const char *db, tref_t *table, int workers, char **argv)
{
    upgrade_io.fd = -1;
    for (int i = 0; i < STATS_MAX_WORKERS; i++)
        M.chan[i] = -1;
    M.replica_chan = -1;
    M.argv = argv;
    M.exe = realpath(argv[0], NULL);
    if (M.exe == NULL)
        M.exe = argv[0];
    M.db = db;
    M.table = table;
    M.started = (uint64_t)time(NULL);
    log_set_ident("master");
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    M.nworkers = workers ? workers : table->t.global->workers ? (int)table->t.global->workers : (int)(ncpu > 0 ? ncpu : 1);
    if (M.nworkers > STATS_MAX_WORKERS)
        M.nworkers = STATS_MAX_WORKERS;
    M.shm = mmap(NULL, sizeof(stats_shm_t), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    M.loop = ev_new();
    if (M.shm == MAP_FAILED || M.loop == NULL || setup_signals() < 0) {
        log_err("cannot start: %s", strerror(errno));
        return 1;
    }
    M.shm->generation = table->generation;
    if (limit_shm_init() < 0 || limit_bind(table) < 0) {
        log_err("cannot map rate-limit state: %s", strerror(errno));
        return 1;
    }
    if (cache_shm_init() < 0 || cache_bind(table, M.db) < 0) {
        log_err("cannot map the cache indexes: %s", strerror(errno));
        return 1;
    }
    if (peers_init() < 0) {
        log_err("cannot map connection counts: %s", strerror(errno));
        return 1;
    }
    if (health_init() < 0 || health_bind(table) < 0) {
        log_err("cannot map upstream state: %s", strerror(errno));
        return 1;
    }
    tls_ticket_shm_t *tickets = mmap(NULL, sizeof(*tickets), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (tickets == MAP_FAILED) {
        log_err("cannot map ticket keys: %s", strerror(errno));
        return 1;
    }
    tls_set_ticket_shm(tickets);
    if (challenges_init() < 0) {
        log_err("cannot map acme challenges: %s", strerror(errno));
        return 1;
    }
    poll_challenges(M.loop, &challenge_timer);
    M.replica = mmap(NULL, sizeof(*M.replica), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (M.replica == MAP_FAILED) {
        log_err("cannot map replication state: %s", strerror(errno));
        return 1;
    }
    rotate_tickets(M.loop, &ticket_timer);
    if (bind_all(&table->t) < 0 || admin_start(M.loop, &table->t, &admin_ops) < 0)
        return 1;
    for (int i = 0; i < M.nworkers; i++)
        if (spawn(i) < 0)
            return 1;
    replica_sync();
    log_info("serving generation %lld (%u sites) with %d workers", (long long)table->generation, table->t.nsites,
             M.nworkers);
    sd_notifyf(0, "READY=1\nMAINPID=%d\nSTATUS=serving generation %lld (%u sites)", (int)getpid(),
               (long long)table->generation, table->t.nsites);
    upgrade_report_ready();
    uint64_t usec;
    if (sd_watchdog_enabled(0, &usec) > 0 && (watchdog_ms = usec / 1000) > 0)
        watchdog(M.loop, &watchdog_timer);
    ev_run(M.loop);
    admin_stop(upgrade_pid > 0);
    log_info("stopped");
    return 0;
}

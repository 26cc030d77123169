/*
 * replica.c - the HA replication process (see replica.h).
 *
 * One poll() loop.  Server side: up to MAX_PEERS non-blocking TLS
 * connections, each a small state machine (handshake, read an 8-byte
 * request, write the response, back to reading), each with a deadline.
 * Client side: every PULL_EVERY_MS a bounded, blocking exchange with the peer
 * (ha_pull), at most PULL_TIMEOUT_MS long.
 */
#include "core/replica.h"

#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>

#include "../common/ha.h"
#include "../common/log.h"
#include "core/worker.h"

#define MAX_PEERS 8
#define PULL_EVERY_MS 250
#define PULL_TIMEOUT_MS 1500
#define HANDSHAKE_MS 3000
#define IDLE_MS 30000

enum { S_HANDSHAKE, S_READ, S_WRITE };

typedef struct {
    int fd;
    SSL *ssl;
    int state;
    uint8_t req[HA_REQ_LEN];
    size_t reqlen;
    str_buf_t out;
    size_t sent;
    int64_t deadline;
    short events;
    char addr[64];
} peer_conn_t;

static volatile sig_atomic_t stop;
static peer_conn_t conns[MAX_PEERS];
static store_t st;
static ha_conf_t conf;
static replica_shm_t *R;
static int master_fd = -1; /* the master's channel: 'R' asks it to reload; EOF means stop */

static void on_term(int sig)
{
    (void)sig;
    stop = 1;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The same complaint once a minute at most (a wrong peer retries 4 times a second). */
static void complain(const char *msg)
{
    static char last[256];
    static int64_t last_at;
    int64_t now = now_ms();
    if (strcmp(last, msg) != 0 || now - last_at >= 60000) {
        log_err("%s", msg);
        snprintf(last, sizeof(last), "%s", msg);
        last_at = now;
    }
}

static void conn_close(peer_conn_t *c)
{
    SSL_free(c->ssl);
    close(c->fd);
    str_buf_free(&c->out);
    memset(c, 0, sizeof(*c));
    c->fd = -1;
}

static int listen_on(const char *addr)
{
    rt_sockaddr_t a;
    const char *why;
    if (parse_sockaddr(addr, strlen(addr), &a, &why) < 0 || a.kind > RT_ADDR_INET6) {
        log_err("replication listener '%s': %s", addr, why);
        return -1;
    }
    struct sockaddr_storage ss = {0};
    socklen_t sl;
    if (a.kind == RT_ADDR_INET) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons(a.port);
        memcpy(&s4->sin_addr, a.ip, 4);
        sl = sizeof(*s4);
    } else {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(a.port);
        memcpy(&s6->sin6_addr, a.ip, 16);
        sl = sizeof(*s6);
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    /* SO_REUSEPORT: across a binary upgrade the old and the new process listen at once. */
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 || bind(fd, (struct sockaddr *)&ss, sl) < 0 ||
        listen(fd, 16) < 0) {
        log_err("replication listener %s: %s", addr, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

static void on_accept(int lfd, SSL_CTX *ctx)
{
    for (;;) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        peer_conn_t *c = NULL;
        for (int i = 0; i < MAX_PEERS && c == NULL; i++)
            if (conns[i].fd < 0)
                c = &conns[i];
        if (c == NULL || (c->ssl = SSL_new(ctx)) == NULL) {
            close(fd); /* a pair has one peer: more connections are not ours to serve */
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        SSL_set_fd(c->ssl, fd);
        c->fd = fd;
        c->state = S_HANDSHAKE;
        c->deadline = now_ms() + HANDSHAKE_MS;
        c->events = POLLIN;
        if (ss.ss_family == AF_INET)
            inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, c->addr, sizeof(c->addr));
        else
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, c->addr, sizeof(c->addr));
    }
}

/* SSL wants more: set the poll events; false on a real error. */
static bool want(peer_conn_t *c, int r)
{
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        c->events = e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
        return true;
    }
    if (c->state == S_HANDSHAKE) {
        char msg[300];
        long v = SSL_get_verify_result(c->ssl);
        unsigned long err = ERR_peek_error();
        snprintf(msg, sizeof(msg), "replication: refused %s: %s", c->addr,
                 v != X509_V_OK ? X509_verify_cert_error_string(v)
                 : err          ? ERR_reason_error_string(err)
                                : "handshake failed");
        complain(msg);
    }
    ERR_clear_error();
    return false;
}

static void serve(peer_conn_t *c)
{
    char err[300], peer_node[64];
    int r;
    switch (c->state) {
    case S_HANDSHAKE:
        if ((r = SSL_accept(c->ssl)) <= 0) {
            if (!want(c, r))
                conn_close(c);
            return;
        }
        if (ha_check_peer(c->ssl, conf.node, peer_node, sizeof(peer_node), err, sizeof(err)) < 0) {
            char msg[400];
            snprintf(msg, sizeof(msg), "replication: refused %s: %s", c->addr, err);
            complain(msg);
            conn_close(c);
            return;
        }
        c->state = S_READ;
        c->deadline = now_ms() + IDLE_MS;
        /* fall through */
    case S_READ:
        while (c->reqlen < HA_REQ_LEN) {
            if ((r = SSL_read(c->ssl, c->req + c->reqlen, (int)(HA_REQ_LEN - c->reqlen))) <= 0) {
                if (!want(c, r))
                    conn_close(c);
                return;
            }
            c->reqlen += (size_t)r;
        }
        if (memcmp(c->req, "PXHA\x01", 5) != 0 || (c->req[5] != HA_CMD_META && c->req[5] != HA_CMD_SNAPSHOT)) {
            complain("replication: a peer sent a request this node does not understand");
            conn_close(c);
            return;
        }
        if (ha_snapshot_encode(&st, conf.node, c->req[5] == HA_CMD_SNAPSHOT, &c->out) < 0) {
            complain(st.err);
            conn_close(c);
            return;
        }
        R->served++;
        c->state = S_WRITE;
        c->sent = 0;
        /* fall through */
    case S_WRITE:
        while (c->sent < c->out.len) {
            size_t n = c->out.len - c->sent;
            if ((r = SSL_write(c->ssl, c->out.p + c->sent, n > (1u << 30) ? 1 << 30 : (int)n)) <= 0) {
                if (!want(c, r))
                    conn_close(c);
                return;
            }
            c->sent += (size_t)r;
            c->deadline = now_ms() + IDLE_MS;
        }
        c->out.len = c->sent = c->reqlen = 0;
        c->state = S_READ;
        c->events = POLLIN;
        c->deadline = now_ms() + IDLE_MS;
        return;
    }
}

static void pull(SSL_CTX *cctx, ha_client_t *client)
{
    char err[600];
    bool pulled, reload;
    ha_meta_t peer;
    ha_state_t s;
    int rc = ha_pull(&st, client, cctx, &conf, false, PULL_TIMEOUT_MS, &pulled, &reload, &peer, err, sizeof(err));
    if (ha_state_get(&st, &s) == 0) {
        snprintf(R->role, sizeof(R->role), "%s", s.role);
        R->serial = s.serial;
    }
    if (rc < 0) {
        if (R->last_error[0] == '\0')
            log_err("replication: %s", err);
        else
            complain(err);
        snprintf(R->last_error, sizeof(R->last_error), "%s", err);
        return;
    }
    if (R->last_error[0])
        log_info("replication: peer %s (%s) answers again", conf.peer, peer.node);
    R->last_error[0] = '\0';
    R->last_contact = (int64_t)time(NULL);
    snprintf(R->peer_node, sizeof(R->peer_node), "%s", peer.node);
    snprintf(R->peer_role, sizeof(R->peer_role), "%s", peer.role);
    R->peer_serial = peer.serial;
    if (pulled) {
        R->pulls++;
        R->last_pull = R->last_contact;
        R->serial = peer.serial;
        log_info("replication: pulled from %s (%s, serial %lld): generation %lld %.12s", peer.node, peer.role,
                 (long long)peer.serial, (long long)peer.generation, peer.digest);
        if (reload && write(master_fd, "R", 1) != 1)
            log_err("replication: cannot ask the master to reload: %s", strerror(errno));
    }
}

static int pull_loop(void);
static int serve_loop(int lfd);

/* Each process its own connection (sqlite's must not cross a fork), opened
 * before it drops to user: the store is root's, mode 0600, and sqlite keeps
 * the database, -wal and -shm files open for the connection's life. */
static int open_store(const char *db, const char *user)
{
    if (store_open(&st, db, 0) < 0) {
        log_err("replication: %s", st.err);
        return -1;
    }
    if (drop_privileges(user, false) < 0)
        return -1;
    prctl(PR_SET_PDEATHSIG, SIGTERM); /* setuid clears it */
    return 0;
}

/* Wait up to ms for the master to close our channel (it wants us to stop,
 * or it is gone): true when it did, and stop is set. */
static bool master_says_stop(int ms)
{
    struct pollfd p = {master_fd, POLLIN, 0};
    if (poll(&p, 1, ms) > 0) {
        char b;
        if (recv(master_fd, &b, 1, MSG_DONTWAIT) <= 0 || (p.revents & (POLLHUP | POLLERR)))
            stop = 1;
    }
    return stop;
}

int replica_main(const char *db, const char *user, replica_shm_t *shm, int ctl)
{
    R = shm;
    master_fd = ctl;
    log_set_ident("ha");
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    struct sigaction sa = {.sa_handler = on_term};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGQUIT, &sa, NULL);
    signal(SIGHUP, SIG_IGN);
    signal(SIGUSR1, SIG_IGN); /* logrotate's, sent to the whole unit: the master's to handle */
    signal(SIGPIPE, SIG_IGN);
    for (int i = 0; i < MAX_PEERS; i++)
        conns[i].fd = -1;
    int have = store_open(&st, db, STORE_RDONLY) < 0 ? -1 : ha_conf_load(&st, &conf);
    store_close(&st);
    if (have <= 0) {
        log_err("replication: %s", have == 0 ? "this node has no ha settings" : st.err);
        return 1;
    }
    snprintf(R->node, sizeof(R->node), "%s", conf.node);
    snprintf(R->peer, sizeof(R->peer), "%s", conf.peer);
    int lfd = listen_on(conf.listen);
    if (lfd < 0)
        return 1;
    log_info("replication: node %s listening on %s, peer %s", conf.node, conf.listen, conf.peer);
    /* The pulling side blocks (boundedly) on the peer, whose own pull may be
     * waiting on us at that moment: it runs in a process of its own. */
    pid_t puller = fork();
    if (puller < 0) {
        log_err("replication: fork: %s", strerror(errno));
        return 1;
    }
    if (puller == 0) {
        close(lfd);
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        return open_store(db, user) < 0 ? 1 : pull_loop();
    }
    int rc = open_store(db, user) < 0 ? 1 : serve_loop(lfd);
    kill(puller, SIGTERM);
    waitpid(puller, NULL, 0);
    close(lfd);
    store_close(&st);
    return rc;
}

/* Keys may arrive after proxyd started (`ha init` or `--join` while it
 * runs): retry every 5 s until they do. */
static SSL_CTX *await_ctx(bool server)
{
    char err[300];
    SSL_CTX *ctx;
    while (!stop && (ctx = ha_ssl_ctx(&st, server, err, sizeof(err))) == NULL) {
        complain(err);
        snprintf(R->last_error, sizeof(R->last_error), "%s", err);
        for (int i = 0; i < 50 && !stop; i++)
            master_says_stop(100);
    }
    return stop ? NULL : ctx;
}

static int pull_loop(void)
{
    SSL_CTX *cctx = await_ctx(false);
    ha_client_t client;
    ha_client_init(&client);
    while (!stop && cctx) {
        int64_t next = now_ms() + PULL_EVERY_MS;
        pull(cctx, &client);
        for (int64_t left; !stop && (left = next - now_ms()) > 0;)
            master_says_stop((int)left);
    }
    ha_client_close(&client);
    SSL_CTX_free(cctx);
    store_close(&st);
    return 0;
}

static int serve_loop(int lfd)
{
    SSL_CTX *sctx = await_ctx(true);
    while (!stop && sctx) {
        if (waitpid(-1, NULL, WNOHANG) > 0) {
            log_err("replication: the pulling process died; restarting both");
            SSL_CTX_free(sctx);
            return 1;
        }
        int64_t wake = now_ms() + 1000;
        struct pollfd fds[MAX_PEERS + 2];
        peer_conn_t *which[MAX_PEERS + 2];
        int n = 0;
        fds[n] = (struct pollfd){master_fd, POLLIN, 0};
        which[n++] = NULL;
        fds[n] = (struct pollfd){lfd, POLLIN, 0};
        which[n++] = NULL;
        for (int i = 0; i < MAX_PEERS; i++) {
            if (conns[i].fd < 0)
                continue;
            if (conns[i].deadline <= now_ms()) {
                conn_close(&conns[i]);
                continue;
            }
            if (conns[i].deadline < wake)
                wake = conns[i].deadline;
            fds[n] = (struct pollfd){conns[i].fd, conns[i].events, 0};
            which[n++] = &conns[i];
        }
        int64_t left = wake - now_ms();
        int k = poll(fds, (nfds_t)n, left < 0 ? 0 : (int)left);
        for (int i = 0; k > 0 && i < n; i++) {
            if (fds[i].revents == 0)
                continue;
            if (fds[i].fd == master_fd)
                master_says_stop(0);
            else if (which[i] == NULL)
                on_accept(lfd, sctx);
            else
                serve(which[i]);
        }
    }
    for (int i = 0; i < MAX_PEERS; i++)
        if (conns[i].fd >= 0)
            conn_close(&conns[i]);
    SSL_CTX_free(sctx);
    return 0;
}

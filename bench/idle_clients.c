/*
 * idle_clients.c - open many TCP connections and hold them idle.
 *
 *   idle_clients HOST PORT N SECONDS [--request] [--path P] [--host-header H]
 *                [--parallel P] [--timeout T]
 *
 * Opens N connections to HOST:PORT with non-blocking connects, at most P
 * (default 200) in progress at once so a listen backlog does not overflow.
 * With --request each connection then sends one "GET P HTTP/1.1" and reads
 * the whole response (Content-Length or chunked), so a proxy holds it as an
 * idle keep-alive connection rather than one waiting for a request head.
 * The set-up phase ends after T seconds (default 30) at the latest; what is
 * not done by then counts as failed.  Then every connection is held for
 * SECONDS, watching for the server closing any of them.
 *
 * Output (stdout, one line per phase, flushed, for scripts to wait on):
 *   idle_clients: holding 5000 open (0 failed) for 10 s
 *   idle_clients: 5000 open after 10 s (0 closed by the server)
 * A response other than 2xx or 3xx counts as a failed connection.
 * Exit status 0 when all N were open to the end, 1 otherwise, 2 on usage.
 * RLIMIT_NOFILE is raised to fit N (raising the hard limit needs root).
 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define HEAD_MAX   8192            /* response head limit */
#define MAX_EVENTS 512

enum client_state { CL_UNUSED, CL_CONNECTING, CL_SENDING, CL_READING, CL_IDLE, CL_DEAD };

struct client {
    int fd;
    enum client_state state;
    size_t sent;
    char *head;                 /* CL_READING: the response head so far */
    size_t head_len;
    bool head_done, chunked;
    uint64_t body_left;         /* Content-Length bytes still to read */
    char tail[5];               /* chunked: the last bytes seen, for "0\r\n\r\n" */
};

static struct {
    const char *host, *port, *path, *host_header;
    int n, seconds, parallel, timeout;
    bool request;
    struct addrinfo *addr;
    int epfd;
    struct client *clients;
    int active, open, failed;
    char req[1024];
    size_t req_len;
} g;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int raise_nofile(rlim_t need)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return -1;
    if (rl.rlim_cur >= need)
        return 0;
    if (rl.rlim_max < need)
        rl.rlim_max = need;     /* works as root; otherwise setrlimit fails */
    rl.rlim_cur = need;
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
        fprintf(stderr, "idle_clients: cannot raise RLIMIT_NOFILE to %lu: %s\n",
                (unsigned long)need, strerror(errno));
        return -1;
    }
    return 0;
}

static void client_watch(struct client *c, uint32_t events, int op)
{
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(g.epfd, op, c->fd, &ev);
}

static void client_fail(struct client *c)
{
    if (c->state == CL_IDLE)
        g.open--;
    else
        g.active--;
    if (c->fd >= 0)
        close(c->fd);
    free(c->head);
    c->head = NULL;
    c->state = CL_DEAD;
    g.failed++;
}

/* The connection is ready to be held: watch it only for the server closing it. */
static void client_idle(struct client *c)
{
    free(c->head);
    c->head = NULL;
    c->state = CL_IDLE;
    g.active--;
    g.open++;
    client_watch(c, EPOLLIN | EPOLLRDHUP, EPOLL_CTL_MOD);
}

static void client_start(struct client *c)
{
    const struct addrinfo *a = g.addr;
    c->fd = socket(a->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    g.active++;
    c->state = CL_CONNECTING;
    if (c->fd < 0) {
        fprintf(stderr, "idle_clients: socket: %s\n", strerror(errno));
        client_fail(c);
        return;
    }
    if (connect(c->fd, a->ai_addr, a->ai_addrlen) < 0 && errno != EINPROGRESS) {
        client_fail(c);
        return;
    }
    client_watch(c, EPOLLOUT, EPOLL_CTL_ADD);
}

static void client_connected(struct client *c)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err != 0) {
        client_fail(c);
        return;
    }
    if (!g.request) {
        client_idle(c);
        return;
    }
    c->head = malloc(HEAD_MAX);
    if (c->head == NULL) {
        client_fail(c);
        return;
    }
    c->state = CL_SENDING;
}

static void client_send(struct client *c)
{
    ssize_t n = send(c->fd, g.req + c->sent, g.req_len - c->sent, MSG_NOSIGNAL);
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR)
            client_fail(c);
        return;
    }
    c->sent += (size_t)n;
    if (c->sent == g.req_len) {
        c->state = CL_READING;
        client_watch(c, EPOLLIN, EPOLL_CTL_MOD);
    }
}

/* Parses the status line and framing of a complete head; -1 unless 2xx or 3xx. */
static int head_parse(struct client *c, size_t head_len)
{
    c->head[head_len - 1] = '\0';
    if (head_len < 12 || memcmp(c->head, "HTTP/1.", 7) != 0 || c->head[9] < '2' ||
        c->head[9] > '3')
        return -1;
    for (char *line = strstr(c->head, "\r\n"); line != NULL; line = strstr(line + 2, "\r\n")) {
        const char *f = line + 2;
        if (strncasecmp(f, "content-length:", 15) == 0)
            c->body_left = strtoull(f + 15, NULL, 10);
        else if (strncasecmp(f, "transfer-encoding:", 18) == 0)
            c->chunked = strstr(f, "chunked") != NULL;
    }
    return 0;
}

/*
 * Response body bytes; true when the response is complete.  A chunked body
 * ends at "0\r\n\r\n" (no trailers expected from a benchmark origin).
 */
static bool body_feed(struct client *c, const char *p, size_t n)
{
    if (!c->chunked) {
        c->body_left -= n < c->body_left ? n : c->body_left;
        return c->body_left == 0;
    }
    for (size_t i = 0; i < n; i++) {
        memmove(c->tail, c->tail + 1, sizeof c->tail - 1);
        c->tail[sizeof c->tail - 1] = p[i];
    }
    return memcmp(c->tail, "0\r\n\r\n", 5) == 0;
}

static void client_read(struct client *c)
{
    char buf[16384];
    ssize_t n = recv(c->fd, buf, sizeof buf, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        client_fail(c);
        return;
    }
    size_t off = 0;
    if (!c->head_done) {
        size_t take = (size_t)n < HEAD_MAX - c->head_len ? (size_t)n : HEAD_MAX - c->head_len;
        memcpy(c->head + c->head_len, buf, take);
        char *e = memmem(c->head, c->head_len + take, "\r\n\r\n", 4);
        if (e == NULL) {
            c->head_len += take;
            if (c->head_len == HEAD_MAX)
                client_fail(c);
            return;
        }
        size_t head_len = (size_t)(e - c->head) + 4;
        off = head_len - c->head_len;
        c->head_done = true;
        if (head_parse(c, head_len) < 0) {
            client_fail(c);
            return;
        }
    }
    if (body_feed(c, buf + off, (size_t)n - off))
        client_idle(c);
}

static void client_event(struct client *c, uint32_t events)
{
    switch (c->state) {
    case CL_CONNECTING:
        client_connected(c);
        if (c->state == CL_SENDING)
            client_send(c);
        break;
    case CL_SENDING:
        client_send(c);
        break;
    case CL_READING:
        client_read(c);
        break;
    case CL_IDLE: {
        /* Any readable event on an idle connection: data (unexpected, dropped) or EOF. */
        char buf[4096];
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR) || (events & EPOLLERR))
            client_fail(c);
        break;
    }
    default:
        break;
    }
}

/* Waits for events until deadline_ms; returns when it passes. */
static void pump(int64_t deadline_ms, bool setup)
{
    struct epoll_event evs[MAX_EVENTS];
    int next = 0;
    for (int64_t now = now_ms(); now < deadline_ms; now = now_ms()) {
        while (setup && next < g.n && g.active < g.parallel)
            client_start(&g.clients[next++]);
        if (setup && next == g.n && g.active == 0)
            return;
        int64_t wait = deadline_ms - now < 100 ? deadline_ms - now : 100;
        int n = epoll_wait(g.epfd, evs, MAX_EVENTS, (int)wait);
        for (int i = 0; i < n; i++)
            client_event(evs[i].data.ptr, evs[i].events);
    }
    /* Set-up time is over: whatever is still in progress failed. */
    for (int i = 0; setup && i < g.n; i++) {
        enum client_state s = g.clients[i].state;
        if (s == CL_CONNECTING || s == CL_SENDING || s == CL_READING)
            client_fail(&g.clients[i]);
        else if (s == CL_UNUSED)
            g.failed++;
    }
}

static void usage(void)
{
    fprintf(stderr,
            "usage: idle_clients HOST PORT N SECONDS [--request] [--path P] [--host-header H]\n"
            "                    [--parallel P] [--timeout T]\n"
            "  opens N connections (with --request: one GET each, response read), holds\n"
            "  them idle for SECONDS, prints how many are open; set-up is bounded by T s.\n");
}

static int parse_int(const char *s, int min, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < min || v > 10000000)
        return -1;
    *out = (int)v;
    return 0;
}

static int parse_args(int argc, char **argv)
{
    const char *pos[4];
    int npos = 0;
    g.path = "/";
    g.parallel = 200;
    g.timeout = 30;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool v = i + 1 < argc;
        if (strcmp(a, "--request") == 0)
            g.request = true;
        else if (strcmp(a, "--path") == 0 && v)
            g.path = argv[++i];
        else if (strcmp(a, "--host-header") == 0 && v)
            g.host_header = argv[++i];
        else if (strcmp(a, "--parallel") == 0 && v && parse_int(argv[i + 1], 1, &g.parallel) == 0)
            i++;
        else if (strcmp(a, "--timeout") == 0 && v && parse_int(argv[i + 1], 1, &g.timeout) == 0)
            i++;
        else if (a[0] != '-' && npos < 4)
            pos[npos++] = a;
        else
            return -1;
    }
    if (npos != 4 || parse_int(pos[2], 1, &g.n) < 0 || parse_int(pos[3], 0, &g.seconds) < 0)
        return -1;
    g.host = pos[0];
    g.port = pos[1];
    if (g.host_header == NULL)
        g.host_header = g.host;
    int len = snprintf(g.req, sizeof g.req,
                       "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: idle_clients\r\n\r\n",
                       g.path, g.host_header);
    if (len < 0 || (size_t)len >= sizeof g.req)
        return -1;
    g.req_len = (size_t)len;
    return 0;
}

int main(int argc, char **argv)
{
    if (parse_args(argc, argv) < 0) {
        usage();
        return 2;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    int rc = getaddrinfo(g.host, g.port, &hints, &g.addr);
    if (rc != 0) {
        fprintf(stderr, "idle_clients: %s:%s: %s\n", g.host, g.port, gai_strerror(rc));
        return 1;
    }
    if (raise_nofile((rlim_t)g.n + 64) < 0)
        return 1;
    g.epfd = epoll_create1(EPOLL_CLOEXEC);
    g.clients = calloc((size_t)g.n, sizeof *g.clients);
    if (g.epfd < 0 || g.clients == NULL) {
        fprintf(stderr, "idle_clients: out of resources\n");
        return 1;
    }

    pump(now_ms() + (int64_t)g.timeout * 1000, true);
    printf("idle_clients: holding %d open (%d failed) for %d s\n", g.open, g.failed, g.seconds);
    fflush(stdout);
    int before = g.open;
    pump(now_ms() + (int64_t)g.seconds * 1000, false);
    printf("idle_clients: %d open after %d s (%d closed by the server)\n", g.open, g.seconds,
           before - g.open);
    fflush(stdout);
    return g.open == g.n ? 0 : 1;
}

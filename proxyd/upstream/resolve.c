/*
 * resolve.c - the worker's resolver of upstream host names (see resolve.h).
 *
 * Where it runs: in every worker, in the worker's own event loop, as nginx's
 * resolver does.  The master could resolve and push addresses over the
 * channel, but a worker would then depend on a message for every change
 * and the channel would grow a second kind of table state; resolving where
 * the addresses are used keeps one owner per state, costs N small queries
 * per interval for N workers, and needs nothing of the master but the
 * name servers (read with the table: proxy.yaml `resolver`, or the
 * `nameserver` lines of /etc/resolv.conf, both at every load) and a head
 * start: the master, which serves nothing, gives each name new to it one
 * bounded try at a load (prime), so that workers forked later start with
 * addresses.
 *
 * A name (with its `resolve:` interval) is one entry shared by every table
 * that names it, so a reload finds its addresses known and a new table never
 * starts without them.  An entry asks for A and AAAA at once on one UDP
 * socket connected to one name server (the kernel picks a random source
 * port; a connected socket receives only that server's datagrams), with
 * random ids; an answer counts only when its id, question name and type
 * are ours.  A try waits RS_TRY_MS, then the next server is asked, each
 * server RS_TRIES times.  SERVFAIL, REFUSED and truncated answers (no TCP
 * fallback) move to the next server; NXDOMAIN ends the resolution.
 *
 * Names in /etc/hosts are taken from it (read again at each resolution,
 * a local file) and asked of no server.  With `resolve: D` a name is
 * resolved again every D; without it, when its records' TTL runs out
 * (clamped to RS_TTL_MIN_MS..RS_TTL_MAX_MS; hosts-file names every
 * RS_HOSTS_MS).  A failed resolution keeps the last good addresses, says
 * so once in the error log, and is tried again after D (or RS_RETRY_MS).
 * When the set changes, idle pooled connections to the addresses that left
 * it are closed; connections in use finish.
 */
#include "upstream/resolve.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "../common/log.h"
#include "core/net.h"
#include "core/worker.h"
#include "upstream/dns.h"
#include "upstream/pool.h"

#define RS_MAX_NS      8
#define RS_TRY_MS      1000u
#define RS_TRIES       2
#define RS_RETRY_MS    5000
#define RS_HOSTS_MS    5000
#define RS_TTL_MIN_MS  1000
#define RS_TTL_MAX_MS  3600000
#define RS_PRIME_MS    500   /* the master's head start, per table load */
#define RS_FAIL_MS     10000 /* an address is skipped this long after a failure when fail_timeout is 0 */

typedef struct {
    struct sockaddr_storage sa[RS_MAX_NS];
    socklen_t len[RS_MAX_NS];
    unsigned n;
} rs_servers_t;

typedef struct rs_name {
    struct rs_name *next;
    unsigned refs;
    uint32_t every_ms;             /* resolve: of its upstreams; 0: the records' TTL */
    char host[DNS_MAX_NAME];
    bool ever, failing, started;
    bool busy;                     /* a resolution through the name servers is in progress */
    unsigned naddrs, rot;
    dns_addr_t addrs[DNS_MAX_ADDRS]; /* IPv4 first, each family in byte order */
    uint64_t failed_until[DNS_MAX_ADDRS];
    /* the resolution in progress */
    ev_io_t io;                    /* fd -1: no query in flight */
    ev_timer_t timer;              /* the try's timeout, or the next resolution */
    unsigned attempt;
    uint16_t id[2];                /* of the A and the AAAA query */
    uint8_t answered;              /* bit 0 A, bit 1 AAAA */
    unsigned nfresh;
    dns_addr_t fresh[DNS_MAX_ADDRS];
    uint32_t ttl;
    char why[160];                 /* the last try's failure */
} rs_name_t;

/* A table's state: its named servers' entries and its name servers. */
typedef struct {
    resolve_table_t pub;
    rs_name_t **name; /* per server; NULL for one given by address */
    rs_servers_t ns;
} rs_table_t;

static rs_name_t *names; /* this process's entries */

static void rs_start(rs_name_t *n);
static void rs_try(rs_name_t *n);

static rs_table_t *rs_of(const tref_t *tr) { return tr->mod[MOD_RESOLVE]; }

static rs_name_t *name_of(const tref_t *tr, uint32_t server)
{
    const rs_table_t *rt = rs_of(tr);
    return rt && server < tr->t.nservers ? rt->name[server] : NULL;
}

static bool in_worker(void) { return W != NULL && W->loop != NULL; }

static const char *addr_text(const dns_addr_t *a, char *buf, size_t cap)
{
    return inet_ntop(a->len == 4 ? AF_INET : AF_INET6, a->ip, buf, (socklen_t)cap) ? buf : "?";
}

static void to_sockaddr(const dns_addr_t *a, uint16_t port, struct sockaddr_storage *ss, socklen_t *sl)
{
    memset(ss, 0, sizeof(*ss));
    if (a->len == 4) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons(port);
        memcpy(&s4->sin_addr, a->ip, 4);
        *sl = sizeof(*s4);
    } else {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(port);
        memcpy(&s6->sin6_addr, a->ip, 16);
        *sl = sizeof(*s6);
    }
}

static bool same_addr(const dns_addr_t *a, const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return a->len == 4 && memcmp(a->ip, &((const struct sockaddr_in *)ss)->sin_addr, 4) == 0;
    return ss->ss_family == AF_INET6 && a->len == 16 &&
           memcmp(a->ip, &((const struct sockaddr_in6 *)ss)->sin6_addr, 16) == 0;
}

static int addr_cmp(const void *x, const void *y)
{
    const dns_addr_t *a = x, *b = y;
    if (a->len != b->len)
        return a->len < b->len ? -1 : 1;
    return memcmp(a->ip, b->ip, a->len);
}

/* Add a to set[0..*n) unless it is there or the set is full. */
static void add_addr(dns_addr_t *set, unsigned *n, const dns_addr_t *a)
{
    for (unsigned i = 0; i < *n; i++)
        if (addr_cmp(&set[i], a) == 0)
            return;
    if (*n < DNS_MAX_ADDRS)
        set[(*n)++] = *a;
}

/* ---- sources: /etc/hosts and the name servers ------------------------------------------ */

/* The addresses /etc/hosts gives host (0 when it names none). */
static unsigned hosts_lookup(const char *host, dns_addr_t *out)
{
    FILE *f = fopen("/etc/hosts", "re");
    char line[512];
    unsigned n = 0;
    while (f && fgets(line, sizeof(line), f)) {
        char *save = NULL, *ip = strtok_r(line, " \t\r\n", &save);
        if (ip == NULL || *ip == '#')
            continue;
        dns_addr_t a = {0};
        int fam = 0;
        if (parse_ip(ip, strlen(ip), a.ip, &fam) < 0)
            continue;
        a.len = fam == 4 ? 4 : 16;
        for (char *name; (name = strtok_r(NULL, " \t\r\n", &save)) != NULL && *name != '#';)
            if (strcasecmp(name, host) == 0)
                add_addr(out, &n, &a);
    }
    if (f)
        fclose(f);
    return n;
}

/* proxy.yaml's `resolver` (listen entries of kind RT_LISTEN_RESOLVER), else
 * the nameserver lines of /etc/resolv.conf. */
static void read_servers(const rt_table_t *t, rs_servers_t *ns)
{
    ns->n = 0;
    for (uint32_t i = 0; i < t->global->listens.count && ns->n < RS_MAX_NS; i++) {
        const rt_listen_t *l = &t->listens[t->global->listens.first + i];
        if (l->kind == RT_LISTEN_RESOLVER && net_sockaddr(t, &l->sa, &ns->sa[ns->n], &ns->len[ns->n]) == 0)
            ns->n++;
    }
    if (ns->n)
        return;
    FILE *f = fopen("/etc/resolv.conf", "re");
    char line[256];
    while (f && fgets(line, sizeof(line), f) && ns->n < RS_MAX_NS) {
        char *save = NULL, *k = strtok_r(line, " \t\r\n", &save), *v = k ? strtok_r(NULL, " \t\r\n%", &save) : NULL;
        dns_addr_t a = {0};
        int fam = 0;
        if (k == NULL || v == NULL || strcmp(k, "nameserver") != 0 || parse_ip(v, strlen(v), a.ip, &fam) < 0)
            continue;
        a.len = fam == 4 ? 4 : 16;
        to_sockaddr(&a, 53, &ns->sa[ns->n], &ns->len[ns->n]);
        ns->n++;
    }
    if (f)
        fclose(f);
}

static const rs_servers_t *servers_now(void)
{
    static const rs_servers_t none;
    const rs_table_t *rt = W && W->table ? rs_of(W->table) : NULL;
    return rt ? &rt->ns : &none;
}

static const char *ns_text(const struct sockaddr_storage *ss, char *buf, size_t cap)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    const void *a = ss->ss_family == AF_INET ? (const void *)&((const struct sockaddr_in *)ss)->sin_addr
                                             : (const void *)&((const struct sockaddr_in6 *)ss)->sin6_addr;
    uint16_t port = ss->ss_family == AF_INET ? ((const struct sockaddr_in *)ss)->sin_port
                                             : ((const struct sockaddr_in6 *)ss)->sin6_port;
    inet_ntop(ss->ss_family, a, ip, sizeof(ip));
    snprintf(buf, cap, ss->ss_family == AF_INET ? "%s:%u" : "[%s]:%u", ip, ntohs(port));
    return buf;
}

/* ---- one resolution --------------------------------------------------------------------- */

static void rs_close(rs_name_t *n)
{
    if (n->io.fd < 0)
        return;
    ev_close(W->loop, &n->io);
    close(n->io.fd);
    n->io.fd = -1;
}

static void set_text(const dns_addr_t *set, unsigned cnt, char *buf, size_t cap)
{
    size_t o = 0;
    buf[0] = '\0';
    for (unsigned i = 0; i < cnt && o + 2 < cap; i++) {
        char ip[INET6_ADDRSTRLEN];
        int w = snprintf(buf + o, cap - o, "%s%s", i ? " " : "", addr_text(&set[i], ip, sizeof(ip)));
        o += w > 0 ? (size_t)w : 0;
    }
}

/* Take set as the name's addresses: those that left are retired from the
 * keep-alive pools, those that stay keep their failure marks. */
static void apply(rs_name_t *n, dns_addr_t *set, unsigned cnt)
{
    uint64_t marks[DNS_MAX_ADDRS] = {0};
    qsort(set, cnt, sizeof(*set), addr_cmp);
    bool changed = cnt != n->naddrs;
    for (unsigned i = 0; i < cnt; i++)
        for (unsigned k = 0; k < n->naddrs; k++)
            if (addr_cmp(&set[i], &n->addrs[k]) == 0)
                marks[i] = n->failed_until[k];
    for (unsigned i = 0; !changed && i < cnt; i++)
        changed = addr_cmp(&set[i], &n->addrs[i]) != 0;
    if (!changed && n->ever)
        return;
    char was[256], now[256];
    set_text(n->addrs, n->naddrs, was, sizeof(was));
    set_text(set, cnt, now, sizeof(now));
    if (n->ever)
        log_info("upstream name %s: now %s (was %s)", n->host, now, was);
    else
        log_info("upstream name %s: %s", n->host, now);
    for (unsigned k = 0; k < n->naddrs; k++) {
        bool stays = false;
        for (unsigned i = 0; i < cnt; i++)
            stays |= addr_cmp(&set[i], &n->addrs[k]) == 0;
        if (!stays) {
            struct sockaddr_storage ss;
            socklen_t sl;
            to_sockaddr(&n->addrs[k], 0, &ss, &sl);
            upool_retire(n->host, &ss);
        }
    }
    memcpy(n->addrs, set, cnt * sizeof(*set));
    memcpy(n->failed_until, marks, sizeof(marks));
    n->naddrs = cnt;
    n->rot = 0;
    n->ever = true;
}

static void rs_timer(ev_loop_t *loop, ev_timer_t *t);

static void done_ok(rs_name_t *n, dns_addr_t *set, unsigned cnt, uint64_t next_ms)
{
    rs_close(n);
    n->busy = false;
    if (n->failing)
        log_info("upstream name %s: resolves again", n->host);
    n->failing = false;
    apply(n, set, cnt);
    ev_timer_start(W->loop, &n->timer, n->every_ms ? n->every_ms : next_ms, rs_timer);
}

static void done_failed(rs_name_t *n, const char *why)
{
    rs_close(n);
    n->busy = false;
    if (!n->failing) {
        if (n->ever)
            log_err("upstream name %s: cannot resolve: %s; keeping its %u address%s of the last answer", n->host,
                    why, n->naddrs, n->naddrs == 1 ? "" : "es");
        else
            log_err("upstream name %s: cannot resolve: %s; its servers count as down until it does", n->host, why);
    }
    n->failing = true;
    ev_timer_start(W->loop, &n->timer, n->every_ms ? n->every_ms : RS_RETRY_MS, rs_timer);
}

/* One answer datagram for query q (0 A, 1 AAAA): 1 when the resolution
 * ended or moved on (n's socket may be gone), 0 to keep reading. */
static int on_answer(rs_name_t *n, const uint8_t *buf, size_t len, int q, const char *server)
{
    dns_answer_t a;
    const char *why;
    char rc[24];
    if (dns_parse(buf, len, n->id[q], n->host, q ? DNS_T_AAAA : DNS_T_A, &a, &why) < 0) {
        log_debug("upstream name %s: answer from %s ignored: %s", n->host, server, why);
        return 0;
    }
    if (a.rcode == DNS_R_NXDOMAIN) {
        snprintf(n->why, sizeof(n->why), "no such name (NXDOMAIN from %s)", server);
        done_failed(n, n->why);
        return 1;
    }
    if (a.rcode != DNS_R_NOERROR || a.truncated) {
        snprintf(n->why, sizeof(n->why), "%s from %s", a.truncated ? "truncated answer" : dns_rcode_name(a.rcode, rc, sizeof(rc)),
                 server);
        rs_try(n);
        return 1;
    }
    if (a.naddrs && (n->nfresh == 0 || a.ttl < n->ttl)) /* the least TTL of the records kept */
        n->ttl = a.ttl;
    for (unsigned i = 0; i < a.naddrs; i++)
        add_addr(n->fresh, &n->nfresh, &a.addrs[i]);
    n->answered |= (uint8_t)(1u << q);
    if (n->answered != 3)
        return 0;
    if (n->nfresh == 0) {
        snprintf(n->why, sizeof(n->why), "no A or AAAA records (from %s)", server);
        done_failed(n, n->why);
        return 1;
    }
    uint64_t ttl_ms = (uint64_t)n->ttl * 1000;
    done_ok(n, n->fresh, n->nfresh, ttl_ms < RS_TTL_MIN_MS ? RS_TTL_MIN_MS : ttl_ms > RS_TTL_MAX_MS ? RS_TTL_MAX_MS : ttl_ms);
    return 1;
}

static void rs_io(ev_loop_t *loop, ev_io_t *io, uint32_t revents)
{
    rs_name_t *n = (rs_name_t *)((char *)io - offsetof(rs_name_t, io));
    uint8_t buf[DNS_MAX_MSG];
    char server[64];
    const rs_servers_t *ns = servers_now();
    unsigned which = ns->n ? (n->attempt - 1) % ns->n : 0;
    (void)loop;
    (void)revents;
    if (ns->n)
        ns_text(&ns->sa[which], server, sizeof(server));
    else
        snprintf(server, sizeof(server), "?");
    for (int k = 0; k < 16; k++) {
        ssize_t r = recv(n->io.fd, buf, sizeof(buf), 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EAGAIN)
            return;
        if (r < 0) {
            snprintf(n->why, sizeof(n->why), "%s: %s", server, strerror(errno));
            rs_try(n);
            return;
        }
        uint16_t id = dns_id(buf, (size_t)r);
        for (int q = 0; q < 2; q++)
            if (!(n->answered >> q & 1) && id == n->id[q] && on_answer(n, buf, (size_t)r, q, server))
                return;
    }
}

/* Ask the next name server, or give up when every one had its tries. */
static void rs_try(rs_name_t *n)
{
    const rs_servers_t *ns = servers_now();
    rs_close(n);
    if (ns->n == 0) {
        done_failed(n, "no name server (proxy.yaml resolver, /etc/resolv.conf)");
        return;
    }
    if (n->attempt >= ns->n * RS_TRIES) {
        done_failed(n, n->why);
        return;
    }
    const struct sockaddr_storage *sa = &ns->sa[n->attempt % ns->n];
    socklen_t sl = ns->len[n->attempt % ns->n];
    char server[64];
    ns_text(sa, server, sizeof(server));
    n->attempt++;
    n->answered = 0;
    n->nfresh = 0;
    n->ttl = 0;
    snprintf(n->why, sizeof(n->why), "%s: no answer within %ums (%u tries)", server, RS_TRY_MS, n->attempt);
    uint8_t q[2][DNS_MAX_NAME + 20];
    int ql[2] = {-1, -1};
    /* Should getrandom fail (an unseeded pool at boot), weaker ids: a hash of clock, pid and entry. */
    if (getrandom(n->id, sizeof(n->id), GRND_NONBLOCK) != (ssize_t)sizeof(n->id)) {
        uint64_t x = hash_mix64(ev_now(W->loop) ^ (uint64_t)(uintptr_t)n ^ ((uint64_t)getpid() << 32) ^ n->attempt);
        n->id[0] = (uint16_t)x;
        n->id[1] = (uint16_t)(x >> 16);
    }
    if (n->id[0] == n->id[1])
        n->id[1] ^= 0x5a5a;
    int fd = socket(sa->ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (const struct sockaddr *)sa, sl) == 0 && ev_add(W->loop, &n->io, fd, EV_READ, rs_io) == 0) {
        ql[0] = dns_query(q[0], sizeof(q[0]), n->id[0], n->host, DNS_T_A);
        ql[1] = dns_query(q[1], sizeof(q[1]), n->id[1], n->host, DNS_T_AAAA);
        for (int i = 0; i < 2; i++)
            if (ql[i] < 0 || send(fd, q[i], (size_t)ql[i], 0) != ql[i])
                snprintf(n->why, sizeof(n->why), "%s: send: %s", server, ql[i] < 0 ? "not a host name" : strerror(errno));
        ev_timer_start(W->loop, &n->timer, RS_TRY_MS, rs_timer);
        return;
    }
    snprintf(n->why, sizeof(n->why), "%s: %s", server, strerror(errno));
    if (fd >= 0)
        close(fd);
    ev_timer_start(W->loop, &n->timer, RS_TRY_MS, rs_timer); /* try the next one a little later */
}

static void rs_start(rs_name_t *n)
{
    dns_addr_t set[DNS_MAX_ADDRS];
    unsigned cnt = hosts_lookup(n->host, set);
    n->started = true;
    if (cnt) {
        done_ok(n, set, cnt, RS_HOSTS_MS);
        return;
    }
    n->attempt = 0;
    n->busy = true;
    rs_try(n);
}

/* A try timed out, or the next resolution is due. */
static void rs_timer(ev_loop_t *loop, ev_timer_t *t)
{
    rs_name_t *n = (rs_name_t *)((char *)t - offsetof(rs_name_t, timer));
    (void)loop;
    if (n->busy) {
        rs_try(n);
        return;
    }
    rs_start(n);
}

/* ---- entries and tables ------------------------------------------------------------------- */

static rs_name_t *name_get(const char *host, size_t len, uint32_t every_ms)
{
    for (rs_name_t *n = names; n; n = n->next)
        if (n->every_ms == every_ms && strlen(n->host) == len && strncasecmp(n->host, host, len) == 0) {
            n->refs++;
            return n;
        }
    rs_name_t *n = calloc(1, sizeof(*n));
    if (n == NULL || len >= sizeof(n->host)) {
        free(n);
        return NULL;
    }
    memcpy(n->host, host, len);
    n->every_ms = every_ms;
    n->refs = 1;
    n->io.fd = -1;
    n->next = names;
    names = n;
    return n;
}

static void name_put(rs_name_t *n)
{
    if (n == NULL || --n->refs > 0)
        return;
    for (rs_name_t **pp = &names; *pp; pp = &(*pp)->next)
        if (*pp == n) {
            *pp = n->next;
            break;
        }
    if (in_worker()) {
        rs_close(n);
        ev_timer_stop(W->loop, &n->timer);
    }
    free(n);
}

/* ---- the master's head start ------------------------------------------------------------- */

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* One A and AAAA exchange with one name server, waiting at most until
 * deadline: the addresses (0 on any failure). */
static unsigned ask_once(const char *host, const struct sockaddr_storage *sa, socklen_t sl, uint64_t deadline,
                         dns_addr_t *set)
{
    uint8_t q[DNS_MAX_NAME + 20], buf[DNS_MAX_MSG];
    uint16_t id[2] = {0x1234, 0x4321};
    unsigned cnt = 0, answered = 0;
    bool bad = false;
    if (getrandom(id, sizeof(id), GRND_NONBLOCK) != (ssize_t)sizeof(id) || id[0] == id[1])
        id[1] = (uint16_t)(id[0] ^ 0x5a5a);
    int fd = socket(sa->ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    for (int k = 0; k < 2 && !bad; k++) {
        int ql = dns_query(q, sizeof(q), id[k], host, k ? DNS_T_AAAA : DNS_T_A);
        bad = ql < 0 || (k == 0 && connect(fd, (const struct sockaddr *)sa, sl) < 0) || send(fd, q, (size_t)ql, 0) != ql;
    }
    while (!bad && answered != 3) {
        uint64_t now = mono_ms();
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (now >= deadline || poll(&pfd, 1, (int)(deadline - now)) <= 0)
            break;
        ssize_t r = recv(fd, buf, sizeof(buf), 0);
        if (r < 0) {
            bad = errno != EAGAIN && errno != EINTR;
            continue;
        }
        for (int k = 0; k < 2; k++) {
            dns_answer_t a;
            const char *why;
            if ((answered >> k & 1) || dns_id(buf, (size_t)r) != id[k] ||
                dns_parse(buf, (size_t)r, id[k], host, k ? DNS_T_AAAA : DNS_T_A, &a, &why) < 0)
                continue;
            bad |= a.rcode != DNS_R_NOERROR || a.truncated;
            for (unsigned i = 0; i < a.naddrs; i++)
                add_addr(set, &cnt, &a.addrs[i]);
            answered |= 1u << k;
        }
    }
    close(fd);
    return bad || answered != 3 ? 0 : cnt;
}

/* The master (no serving path: it loads tables, workers serve) gives a name
 * it has not resolved yet one bounded try, RS_PRIME_MS per load for all, so
 * that the workers it forks, also one restarted after a crash or those of a
 * binary upgrade, start with addresses rather than counting the server down
 * until their own first answer.  Whatever is not resolved by then is left
 * to the workers, which resolve every name again at once anyway. */
static void prime(rs_name_t *n, const rs_servers_t *ns, uint64_t deadline)
{
    dns_addr_t set[DNS_MAX_ADDRS];
    unsigned cnt = hosts_lookup(n->host, set);
    if (cnt == 0 && ns->n > 0 && mono_ms() < deadline)
        cnt = ask_once(n->host, &ns->sa[0], ns->len[0], deadline, set);
    if (cnt)
        apply(n, set, cnt);
}

/* Start resolving n soon (from the loop, not inside a table load). */
static void kick(rs_name_t *n)
{
    if (in_worker() && !n->started && !ev_timer_armed(&n->timer)) {
        n->started = true;
        ev_timer_start(W->loop, &n->timer, 0, rs_timer);
    }
}

static int resolve_table_init(tref_t *tr, const module_load_t *ld, char *err, size_t errlen)
{
    const rt_table_t *t = &tr->t;
    (void)ld;
    rs_table_t *rt = calloc(1, sizeof(*rt));
    tr->mod[MOD_RESOLVE] = rt;
    if (rt == NULL || (rt->name = calloc(t->nservers + 1, sizeof(*rt->name))) == NULL ||
        (rt->pub.naddrs = calloc(t->nservers + 1, sizeof(*rt->pub.naddrs))) == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    read_servers(t, &rt->ns);
    uint64_t deadline = mono_ms() + RS_PRIME_MS;
    for (uint32_t i = 0; i < t->nservers; i++) {
        const rt_server_t *sv = &t->servers[i];
        if (sv->sa.kind != RT_ADDR_NAME)
            continue;
        const char *text = rt_cstr(t, sv->sa.addr), *colon = strrchr(text, ':');
        size_t len = colon ? (size_t)(colon - text) : strlen(text);
        if ((rt->name[i] = name_get(text, len, t->upstreams[sv->upstream].resolve_ms)) == NULL) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        rt->pub.naddrs[i] = &rt->name[i]->naddrs;
        if (!in_worker() && !rt->name[i]->ever && rt->name[i]->refs == 1)
            prime(rt->name[i], &rt->ns, deadline);
        kick(rt->name[i]);
    }
    return 0;
}

static void resolve_table_free(tref_t *tr)
{
    rs_table_t *rt = rs_of(tr);
    if (rt == NULL)
        return;
    for (uint32_t i = 0; rt->name && i < tr->t.nservers; i++)
        name_put(rt->name[i]);
    free(rt->name);
    free(rt->pub.naddrs);
    free(rt);
    tr->mod[MOD_RESOLVE] = NULL;
}

/* Entries inherited from the master's load start resolving in the worker. */
static int resolve_worker_init(void)
{
    for (rs_name_t *n = names; n; n = n->next)
        kick(n);
    return 0;
}

static void resolve_worker_exit(void)
{
    for (rs_name_t *n = names; n; n = n->next) {
        rs_close(n);
        ev_timer_stop(W->loop, &n->timer);
    }
}

const module_t resolve_module = {.name = "resolve",
                                  .table_init = resolve_table_init,
                                  .table_free = resolve_table_free,
                                  .worker_init = resolve_worker_init,
                                  .worker_exit = resolve_worker_exit};

/* ---- what the pools and the balancer ask ------------------------------------------------------ */

bool resolve_named(const tref_t *tr, uint32_t server) { return tr->t.servers[server].sa.kind == RT_ADDR_NAME; }

static int choose(const tref_t *tr, uint32_t server, uint64_t now, bool advance, struct sockaddr_storage *ss,
                  socklen_t *sl, const char **why)
{
    rs_name_t *n = name_of(tr, server);
    if (n == NULL || !n->ever || n->naddrs == 0) {
        *why = "its host name has not resolved";
        return -1;
    }
    unsigned start = advance ? n->rot : 0, pick = start % n->naddrs;
    for (unsigned k = 0; k < n->naddrs; k++) {
        unsigned i = (start + k) % n->naddrs;
        if (n->failed_until[i] <= now) {
            pick = i;
            break;
        }
        if (n->failed_until[i] < n->failed_until[pick])
            pick = i; /* every one failed: the one that failed longest ago */
    }
    if (advance)
        n->rot = pick + 1;
    to_sockaddr(&n->addrs[pick], tr->t.servers[server].sa.port, ss, sl);
    return 0;
}

int resolve_pick(const tref_t *tr, uint32_t server, uint64_t now, struct sockaddr_storage *ss, socklen_t *sl,
                 const char **why)
{
    return choose(tr, server, now, true, ss, sl, why);
}

int resolve_first(const tref_t *tr, uint32_t server, uint64_t now, struct sockaddr_storage *ss, socklen_t *sl,
                  const char **why)
{
    return choose(tr, server, now, false, ss, sl, why);
}

bool resolve_failed(const tref_t *tr, uint32_t server, const struct sockaddr_storage *ss, uint64_t now)
{
    rs_name_t *n = name_of(tr, server);
    if (n == NULL || !resolve_named(tr, server))
        return false;
    uint32_t span = tr->t.servers[server].fail_timeout_ms ? tr->t.servers[server].fail_timeout_ms : RS_FAIL_MS;
    bool other = false;
    for (unsigned i = 0; i < n->naddrs; i++) {
        if (same_addr(&n->addrs[i], ss))
            n->failed_until[i] = now + span;
        else
            other |= n->failed_until[i] <= now;
    }
    return other;
}

const char *resolve_unresolved(const tref_t *tr, uint32_t upstream)
{
    const rt_table_t *t = &tr->t;
    const rt_upstream_t *u = &t->upstreams[upstream];
    for (uint32_t i = 0; i < u->servers.count; i++)
        if (resolve_count(tr, u->servers.first + i) == 0)
            return rt_cstr(t, t->servers[u->servers.first + i].sa.addr);
    return NULL;
}

/*
 * pool.c - upstream connections and keep-alive pools (see pool.h).
 */
#include "upstream/pool.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../common/log.h"
#include "conn/tls.h"
#include "upstream/resolve.h"

#define POOL_BUCKETS 256

struct upool {
    upool_t *next;              /* hash chain */
    upconn_t *idle;             /* most recently used first */
    unsigned nidle;
    unsigned refs;              /* caching tables + connections */
    uint32_t hash;
    bool retired;               /* its address left its name's answer: keep no connection */
    uint32_t host_hash;         /* a named server's pool: rt_hash of its host name (upool_retire) */
    struct sockaddr_storage sa; /* where its connections go (family 0: nowhere yet) */
    socklen_t salen;
    size_t len;
    char key[];                 /* "name\0identity": what makes its connections interchangeable */
};

static upool_t *pools[POOL_BUCKETS];
static bool sweep; /* a named server's pool may be left without references (upool_of) */

static void up_io(ev_loop_t *loop, ev_io_t *io, uint32_t revents);
static void up_timer(ev_loop_t *loop, ev_timer_t *t);

const char *upool_name(const upool_t *p) { return p->key; }

/* A FastCGI server has a new connection waiting for a child (upconn_wait). */
static bool fcgi_wanted(const upconn_t *u)
{
    return u->fcgi && u->slot && atomic_load_explicit(&u->slot->waiting, memory_order_relaxed) > 0;
}

static void pool_unref(upool_t *p)
{
    if (p == NULL || --p->refs > 0)
        return;
    for (upool_t **pp = &pools[p->hash & (POOL_BUCKETS - 1)]; *pp; pp = &(*pp)->next)
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    free(p);
}

upconn_t *upool_take(upool_t *p)
{
    upconn_t *u = p->idle;
    if (u == NULL)
        return NULL;
    p->idle = u->next;
    p->nidle--;
    u->next = NULL;
    u->reused = true;
    return u;
}

void upool_put(upconn_t *u)
{
    upool_t *p = u->pool;
    upconn_unclaim(u);
    if (W->draining || p->retired || p->nidle >= u->keepalive || fcgi_wanted(u)) {
        upconn_close(u);
        return;
    }
    iobuf_put(u->in);
    iobuf_put(u->out);
    u->in = u->out = NULL;
    u->req = NULL;
    u->on_event = NULL;
    u->on_timeout = NULL;
    u->state = US_IDLE;
    u->head_done = u->got_bytes = u->read_paused = false;
    ev_set(W->loop, &u->io, EV_READ); /* an idle upstream speaking means it is closing */
    u->idle_since = ev_now(W->loop);
    ev_timer_start(W->loop, &u->timer, u->fcgi ? FCGI_IDLE_CHECK_MS : W->table->t.global->keepalive_timeout_ms,
                   up_timer);
    u->next = p->idle;
    p->idle = u;
    p->nidle++;
}

static void pool_remove(upconn_t *u)
{
    for (upconn_t **pp = &u->pool->idle; *pp; pp = &(*pp)->next)
        if (*pp == u) {
            *pp = u->next;
            u->next = NULL;
            u->pool->nidle--;
            return;
        }
}

void upool_close_idle(void)
{
    for (int b = 0; b < POOL_BUCKETS; b++)
        for (upool_t *p = pools[b]; p; p = p->next)
            while (p->idle) /* the pool outlives them: they are freed later (upconn_free_deferred) */
                upconn_close(p->idle);
}

void upconn_claim(upconn_t *u, health_slot_t *slot)
{
    u->slot = slot;
    u->counted = true;
    health_begin(slot);
}

void upconn_unclaim(upconn_t *u)
{
    if (u->counted)
        health_end(u->slot);
    u->counted = false;
    upconn_wait(u, false);
}

static void wait_timer(ev_loop_t *loop, ev_timer_t *t)
{
    (void)loop;
    upconn_wait((upconn_t *)((char *)t - offsetof(upconn_t, wait_timer)), true);
}

void upconn_wait_later(upconn_t *u)
{
    ev_timer_start(W->loop, &u->wait_timer, FCGI_WAIT_GRACE_MS, wait_timer);
}

void upconn_wait(upconn_t *u, bool on)
{
    if (!on)
        ev_timer_stop(W->loop, &u->wait_timer);
    if (on == u->waiting || u->slot == NULL)
        return;
    u->waiting = on;
    if (on)
        atomic_fetch_add(&u->slot->waiting, 1);
    else
        atomic_fetch_sub(&u->slot->waiting, 1);
}


void upconn_close(upconn_t *u)
{
    if (u->closed)
        return;
    u->closed = true;
    upconn_unclaim(u);
    if (u->state == US_IDLE)
        pool_remove(u);
    ev_timer_stop(W->loop, &u->timer);
    ev_timer_stop(W->loop, &u->wait_timer);
    ev_close(W->loop, &u->io); /* close() below unregisters it */
    tls_free(u->ssl);
    u->ssl = NULL;
    close(u->io.fd);
    iobuf_put(u->in);
    iobuf_put(u->out);
    u->in = u->out = NULL;
    u->next = W->up_closed;
    W->up_closed = u;
}

void upconn_free_deferred(void)
{
    while (W->up_closed) {
        upconn_t *u = W->up_closed;
        W->up_closed = u->next;
        pool_unref(u->pool);
        free(u);
    }
    if (!sweep)
        return;
    sweep = false;
    for (int b = 0; b < POOL_BUCKETS; b++)
        for (upool_t **pp = &pools[b]; *pp;) {
            upool_t *p = *pp;
            if (p->refs == 0) {
                *pp = p->next;
                free(p);
            } else
                pp = &p->next;
        }
}

/* ---- which pool ------------------------------------------------------------------------ */

static upool_t **cache_of(const tref_t *tr) { return tr->mod[MOD_POOL]; }

/* Everything that makes a connection different goes into the key: the
 * address (a name with the address it resolved to: each of a name's
 * addresses has a pool of its own) and, for TLS, SNI, verification, CA file
 * and client certificate. */
static size_t pool_key(const tref_t *tr, uint32_t server, const struct sockaddr_storage *ss, char *key, size_t cap)
{
    const rt_table_t *t = &tr->t;
    const rt_server_t *sv = &t->servers[server];
    const rt_upstream_t *u = &t->upstreams[sv->upstream];
    char ip[INET6_ADDRSTRLEN + 1] = "";
    if (sv->sa.kind == RT_ADDR_NAME) {
        const void *a = ss->ss_family == AF_INET ? (const void *)&((const struct sockaddr_in *)ss)->sin_addr
                                                 : (const void *)&((const struct sockaddr_in6 *)ss)->sin6_addr;
        ip[0] = '=';
        inet_ntop(ss->ss_family, a, ip + 1, sizeof(ip) - 1);
    }
    /* The name (error log) first, NUL-terminated, then the rest of the identity. */
    int n = u->tls_flags & RT_UTLS_ON
                ? snprintf(key, cap, "tls:%s@%s%s%cverify=%d ca=%s cert=%s", rt_cstr(t, u->tls_sni),
                           rt_cstr(t, sv->sa.addr), ip, '\0', (u->tls_flags & RT_UTLS_VERIFY) != 0,
                           rt_cstr(t, u->tls_ca_file), rt_cstr(t, u->tls_cert_file))
                : snprintf(key, cap, "%s%s", rt_cstr(t, sv->sa.addr), ip);
    return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
}

static uint32_t host_hash(const rt_table_t *t, const rt_server_t *sv)
{
    const char *text = rt_cstr(t, sv->sa.addr), *colon = strrchr(text, ':');
    return rt_hash(text, colon ? (size_t)(colon - text) : strlen(text));
}

static upool_t *pool_find(const tref_t *tr, uint32_t server, const struct sockaddr_storage *ss, socklen_t sl)
{
    char key[1536];
    size_t len = pool_key(tr, server, ss, key, sizeof(key));
    uint32_t h = rt_hash(key, len);
    upool_t *p = pools[h & (POOL_BUCKETS - 1)];
    while (p && (p->hash != h || p->len != len || memcmp(p->key, key, len) != 0))
        p = p->next;
    if (p == NULL) {
        if ((p = calloc(1, sizeof(*p) + len + 1)) == NULL)
            return NULL;
        memcpy(p->key, key, len);
        p->len = len;
        p->hash = h;
        if (tr->t.servers[server].sa.kind == RT_ADDR_NAME)
            p->host_hash = host_hash(&tr->t, &tr->t.servers[server]);
        p->sa = *ss;
        p->salen = sl;
        p->next = pools[h & (POOL_BUCKETS - 1)];
        pools[h & (POOL_BUCKETS - 1)] = p;
    }
    return p;
}

/* A named server's pool is that of the address its next connection takes
 * (resolve_pick); it is not cached by the table, and one that no connection
 * came to refer to is freed after the batch of events (sweep).  A name that
 * has not resolved has the pool of no address, which connects nowhere. */
upool_t *upool_of(tref_t *tr, uint32_t server)
{
    upool_t **cache = cache_of(tr);
    struct sockaddr_storage ss = {0};
    socklen_t sl = 0;
    const char *why;
    if (cache == NULL)
        return NULL;
    if (cache[server])
        return cache[server];
    if (resolve_named(tr, server)) {
        resolve_pick(tr, server, ev_now(W->loop), &ss, &sl, &why);
        upool_t *p = pool_find(tr, server, &ss, sl);
        if (p) {
            sweep |= p->refs == 0;
            p->retired = false; /* its address is in the answer (again) */
        }
        return p;
    }
    if (tref_sockaddr(tr, server, &ss, &sl, &why) < 0)
        sl = 0;
    upool_t *p = pool_find(tr, server, &ss, sl);
    if (p == NULL)
        return NULL;
    p->refs++;
    cache[server] = p;
    return p;
}

void upool_retire(const char *host, const struct sockaddr_storage *gone)
{
    uint32_t h = rt_hash(host, strlen(host));
    for (int b = 0; b < POOL_BUCKETS; b++)
        for (upool_t *p = pools[b]; p; p = p->next) {
            if (p->host_hash != h || p->sa.ss_family != gone->ss_family)
                continue;
            bool same = gone->ss_family == AF_INET
                            ? memcmp(&((const struct sockaddr_in *)&p->sa)->sin_addr,
                                     &((const struct sockaddr_in *)gone)->sin_addr, 4) == 0
                            : memcmp(&((const struct sockaddr_in6 *)&p->sa)->sin6_addr,
                                     &((const struct sockaddr_in6 *)gone)->sin6_addr, 16) == 0;
            while (same && p->idle) /* in use ones finish, then close when put back (p->retired) */
                upconn_close(p->idle);
            p->retired |= same;
        }
}

bool upool_failed(upool_t *p, tref_t *tr, uint32_t server, uint64_t now, const char *why)
{
    if (p && p->salen && resolve_failed(tr, server, &p->sa, now)) {
        log_warn("upstream %s: %s; its other addresses take the next connections", upool_name(p), why);
        return true;
    }
    health_failed(tr, server, now, why);
    return false;
}

static int pool_table_init(tref_t *tr, const module_load_t *ld, char *err, size_t errlen)
{
    (void)ld;
    if ((tr->mod[MOD_POOL] = calloc(tr->t.nservers + 1, sizeof(upool_t *))) == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

static void pool_table_free(tref_t *tr)
{
    upool_t **cache = cache_of(tr);
    for (uint32_t i = 0; cache && i < tr->t.nservers; i++)
        pool_unref(cache[i]);
    free(cache);
    tr->mod[MOD_POOL] = NULL;
}

const module_t pool_module = {.name = "pool",
                               .table_init = pool_table_init,
                               .table_free = pool_table_free,
                               .worker_idle = upconn_free_deferred,
                               .worker_drain = upool_close_idle};

/* ---- connect and I/O ---------------------------------------------------------------------- */

upconn_t *upconn_connect(tref_t *tr, uint32_t server, upool_t *p, const char **why)
{
    (void)tr;
    (void)server;
    if (p == NULL) {
        *why = "out of memory";
        return NULL;
    }
    if (p->salen == 0) {
        *why = p->host_hash ? "its host name has not resolved" : "unusable address";
        return NULL;
    }
    struct sockaddr_storage ss = p->sa;
    socklen_t sl = p->salen;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *why = strerror(errno);
        return NULL;
    }
    if (ss.ss_family != AF_UNIX) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    if (connect(fd, (const struct sockaddr *)&ss, sl) < 0 && errno != EINPROGRESS) {
        *why = errno == ECONNREFUSED ? "connection refused" : strerror(errno);
        close(fd);
        return NULL;
    }
    upconn_t *u = calloc(1, sizeof(*u));
    if (u == NULL || ev_add(W->loop, &u->io, fd, EV_WRITE, up_io) < 0) {
        *why = "out of memory";
        free(u);
        close(fd);
        return NULL;
    }
    u->state = US_CONNECTING;
    u->pool = p;
    p->refs++;
    return u;
}

ssize_t upconn_io(upconn_t *u, bool wr, void *p, size_t n)
{
    if (u->ssl) {
        ssize_t r = wr ? tls_write(u->ssl, p, n) : tls_read(u->ssl, p, n);
        if (r >= 0)
            return r;
        if (r == TLS_WANT_READ || r == TLS_WANT_WRITE) {
            errno = EAGAIN;
            return -1;
        }
        errno = EPROTO;
        return -2;
    }
    ssize_t r;
    do
        r = wr ? write(u->io.fd, p, n) : read(u->io.fd, p, n);
    while (r < 0 && errno == EINTR);
    return r >= 0 ? r : errno == EAGAIN ? -1 : -2;
}

void upconn_timer(upconn_t *u, uint64_t ms) { ev_timer_start(W->loop, &u->timer, ms, up_timer); }

static void up_io(ev_loop_t *loop, ev_io_t *io, uint32_t revents)
{
    upconn_t *u = (upconn_t *)io;
    (void)loop;
    if (u->closed)
        return;
    if (u->state == US_IDLE) {
        upconn_close(u); /* data or EOF on an idle pooled connection */
        return;
    }
    if (u->on_event)
        u->on_event(u, revents);
}

static void up_timer(ev_loop_t *loop, ev_timer_t *t)
{
    upconn_t *u = (upconn_t *)((char *)t - offsetof(upconn_t, timer));
    uint64_t keep = W->table->t.global->keepalive_timeout_ms, idle = ev_now(loop) - u->idle_since;
    if (u->state == US_IDLE && u->fcgi && !fcgi_wanted(u) && idle < keep) {
        ev_timer_start(loop, &u->timer, keep - idle < FCGI_IDLE_CHECK_MS ? keep - idle : FCGI_IDLE_CHECK_MS, up_timer);
        return; /* kept: no new connection to its server is waiting */
    }
    if (u->state == US_IDLE || u->req == NULL || u->on_timeout == NULL) {
        upconn_close(u);
        return;
    }
    u->on_timeout(u);
}

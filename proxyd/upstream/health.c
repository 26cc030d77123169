/*
 * health.c - shared server state and the active checker (see health.h).
 *
 * The region is an open-addressed hash of slots (linear probing).  Keys are
 * published last with release stores, so a process that finds a key sees
 * an initialised slot.  Only the master writes keys, and it recycles a slot
 * (marks it 1, a tombstone that keeps probe chains intact) only when
 * neither of the two latest tables uses it and nothing is in flight on it.
 */
#include "upstream/health.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "../common/log.h"
#include "core/worker.h"
#include "conn/tls.h"
#include "upstream/fastcgi.h"

#define KEY_FREE     0
#define KEY_RECYCLED 1

static health_slot_t *region; /* HEALTH_SLOTS slots, or NULL */
static pid_t region_owner;    /* the master; other processes only look up */
static uint64_t epoch;        /* master: tables bound so far */

int health_init(void)
{
    void *p =
        mmap(NULL, HEALTH_SLOTS * sizeof(health_slot_t), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return -1;
    region = p;
    region_owner = getpid();
    return 0;
}

/* ---- naming --------------------------------------------------------------------- */

static const char *site_of(const rt_table_t *t, uint32_t server)
{
    return rt_cstr(t, t->sites[t->upstreams[t->servers[server].upstream].site].name);
}

static const char *upstream_of(const rt_table_t *t, uint32_t server)
{
    return rt_cstr(t, t->upstreams[t->servers[server].upstream].name);
}

static const char *addr_of(const rt_table_t *t, uint32_t server)
{
    return rt_cstr(t, t->servers[server].sa.addr);
}

const char *health_error_name(unsigned e)
{
    static const char *const names[] = {"",
                                        "connect failed",
                                        "timed out",
                                        "closed without a status line",
                                        "unexpected status",
                                        "TLS handshake failed",
                                        "invalid response"};
    return e < sizeof(names) / sizeof(names[0]) ? names[e] : "?";
}

/* ---- slots ------------------------------------------------------------------------- */

static uint64_t fnv64(uint64_t h, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 0x100000001b3ull;
    return (h ^ 0xff) * 0x100000001b3ull; /* a separator, so "a"+"bc" differs from "ab"+"c" */
}

static uint64_t slot_key(const rt_table_t *t, uint32_t server)
{
    const char *parts[] = {site_of(t, server), upstream_of(t, server), addr_of(t, server)};
    uint64_t h = 0xcbf29ce484222325ull;
    for (int i = 0; i < 3; i++)
        h = fnv64(h, parts[i], strlen(parts[i]));
    return h > KEY_RECYCLED ? h : h + 2;
}

static void slot_clear(health_slot_t *s)
{
    atomic_store(&s->inflight, 0);
    atomic_store(&s->hc_down, 0);
    atomic_store(&s->fail_window, 0);
    atomic_store(&s->down_until, 0);
    atomic_store(&s->requests, 0);
    atomic_store(&s->failures, 0);
    atomic_store(&s->downs, 0);
    atomic_store(&s->hc_checks, 0);
    atomic_store(&s->hc_last_ms, 0);
    atomic_store(&s->hc_fails, 0);
    atomic_store(&s->hc_oks, 0);
    atomic_store(&s->hc_last_status, 0);
    atomic_store(&s->hc_last_error, HC_OK);
    atomic_store(&s->waiting, 0);
}

/* The slot of key; the master claims one when it is missing.  NULL when the
 * key is unknown (workers) or the region is full. */
static health_slot_t *slot_find(uint64_t key, bool create)
{
    health_slot_t *reuse = NULL;
    for (uint32_t k = 0, i = (uint32_t)key & (HEALTH_SLOTS - 1); k < HEALTH_PROBE_MAX;
         k++, i = (i + 1) & (HEALTH_SLOTS - 1)) {
        uint64_t have = atomic_load_explicit(&region[i].key, memory_order_acquire);
        if (have == key)
            return &region[i];
        if (have == KEY_RECYCLED && reuse == NULL)
            reuse = &region[i];
        if (have == KEY_FREE) {
            if (reuse == NULL)
                reuse = &region[i];
            break;
        }
    }
    if (!create || reuse == NULL)
        return NULL;
    slot_clear(reuse);
    atomic_store_explicit(&reuse->key, key, memory_order_release);
    return reuse;
}

/* Recycle slots the last two tables did not use (only the master). */
static void sweep(void)
{
    for (uint32_t i = 0; i < HEALTH_SLOTS; i++) {
        health_slot_t *s = &region[i];
        uint64_t key = atomic_load_explicit(&s->key, memory_order_relaxed);
        if (key > KEY_RECYCLED && s->seen + 1 < epoch && atomic_load(&s->inflight) <= 0)
            atomic_store_explicit(&s->key, KEY_RECYCLED, memory_order_release);
    }
}

/* The master carries a slot over to a new table: state the new
 * configuration no longer asks for is dropped. */
static void adopt(const rt_table_t *t, uint32_t server, health_slot_t *s)
{
    const rt_server_t *sv = &t->servers[server];
    const rt_upstream_t *u = &t->upstreams[sv->upstream];
    s->seen = epoch;
    if (u->hc_interval_ms == 0) {
        atomic_store(&s->hc_down, 0);
        atomic_store(&s->hc_fails, 0);
        atomic_store(&s->hc_oks, 0);
    }
    if (sv->max_fails == 0 || u->servers.count < 2)
        atomic_store(&s->down_until, 0);
}

void health_release(tref_t *tr)
{
    health_table_t *h = tr->mod[MOD_HEALTH];
    if (h == NULL)
        return;
    free(h->slot);
    free(h->own);
    free(h);
    tr->mod[MOD_HEALTH] = NULL;
}

int health_bind(tref_t *tr)
{
    const rt_table_t *t = &tr->t;
    bool master = region && getpid() == region_owner;
    bool full = false;
    health_release(tr);
    size_t n = t->nservers ? t->nservers : 1;
    health_table_t *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return -1;
    tr->mod[MOD_HEALTH] = h;
    h->slot = calloc(n, sizeof(*h->slot));
    h->own = aligned_alloc(_Alignof(health_slot_t), n * sizeof(health_slot_t));
    if (h->slot == NULL || h->own == NULL)
        return -1;
    memset(h->own, 0, n * sizeof(health_slot_t));
    if (master)
        epoch++;
    for (uint32_t i = 0; i < t->nservers; i++) {
        health_slot_t *s = region ? slot_find(slot_key(t, i), master) : NULL;
        if (s && master)
            adopt(t, i, s);
        full |= region && s == NULL && master;
        h->slot[i] = s ? s : &h->own[i];
    }
    if (full)
        log_warn("upstream state: the shared region (%d slots) is full; some servers are tracked per worker only",
                 HEALTH_SLOTS);
    if (master)
        sweep();
    return 0;
}

/* ---- passive health ------------------------------------------------------------------- */

bool health_failed(tref_t *tr, uint32_t server, uint64_t now, const char *why)
{
    const rt_table_t *t = &tr->t;
    const rt_server_t *sv = &t->servers[server];
    health_slot_t *s = health_slot_of(tr, server);
    atomic_fetch_add_explicit(&s->failures, 1, memory_order_relaxed);
    if (sv->max_fails == 0 || t->upstreams[sv->upstream].servers.count < 2)
        return false;
    uint64_t span = sv->fail_timeout_ms ? sv->fail_timeout_ms : 1;
    uint64_t w = atomic_load(&s->fail_window), nw;
    do {
        uint64_t start = w >> 16, count = w & 0xffff;
        nw = w == 0 || now - start >= span ? now << 16 | 1 : start << 16 | (count < 0xffff ? count + 1 : count);
    } while (!atomic_compare_exchange_weak(&s->fail_window, &w, nw));
    if ((nw & 0xffff) != sv->max_fails)
        return false; /* below the limit, or another failure already crossed it */
    atomic_compare_exchange_strong(&s->fail_window, &nw, 0);
    uint64_t was = atomic_exchange(&s->down_until, now + span);
    if (was != 0 && now < was)
        return false; /* it was down already: marked again, no news */
    atomic_fetch_add(&s->downs, 1);
    char d[32];
    if (span % 1000 == 0)
        snprintf(d, sizeof(d), "%llus", (unsigned long long)span / 1000);
    else
        snprintf(d, sizeof(d), "%llums", (unsigned long long)span);
    log_warn("upstream %s (site %s, upstream %s): down for %s after %u failure%s within %s (last: %s)",
             addr_of(t, server), site_of(t, server), upstream_of(t, server), d, sv->max_fails,
             sv->max_fails == 1 ? "" : "s", d, why);
    return true;
}

/* ---- the active checker ------------------------------------------------------------------ */

enum hc_phase { HC_IDLE, HC_CONNECTING, HC_HANDSHAKE, HC_SENDING, HC_READING };

typedef struct {
    ev_io_t io;       /* first: the io callback gets this pointer */
    ev_timer_t timer; /* next check while idle, the check's timeout while busy */
    uint32_t server;
    uint8_t phase; /* enum hc_phase */
    bool waiting;  /* FastCGI: counted in its slot's waiting until it ends (pool.h) */
    SSL *ssl;
    size_t off;   /* request bytes sent, then response bytes read */
    char buf[1024]; /* the start of the response: its status line (FastCGI: the records of the CGI head) */
} hc_probe_t;

static struct {
    ev_loop_t *loop; /* NULL: not the checker process */
    tref_t *table;
    hc_probe_t *probes;
    uint32_t n;
    hc_probe_t *retired; /* the previous table's probes: events of this loop round may still name them */
} hc;

static void hc_timer(ev_loop_t *loop, ev_timer_t *t);
static void hc_io(ev_loop_t *loop, ev_io_t *io, uint32_t revents);

static const rt_upstream_t *upstream_of_probe(const hc_probe_t *p)
{
    return &hc.table->t.upstreams[hc.table->t.servers[p->server].upstream];
}

static bool fastcgi(const hc_probe_t *p) { return upstream_of_probe(p)->flags & RT_UF_FASTCGI; }

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Rise and fall: count the verdict, change state when a threshold is met. */
static void record(hc_probe_t *p, unsigned err, unsigned status)
{
    const rt_table_t *t = &hc.table->t;
    const rt_upstream_t *u = upstream_of_probe(p);
    health_slot_t *s = health_slot_of(hc.table, p->server);
    atomic_store(&s->hc_last_ms, wall_ms());
    atomic_store(&s->hc_last_status, status);
    atomic_store(&s->hc_last_error, err);
    atomic_fetch_add(&s->hc_checks, 1);
    if (err == HC_OK) {
        uint32_t oks = atomic_fetch_add(&s->hc_oks, 1) + 1;
        atomic_store(&s->hc_fails, 0);
        if (atomic_load(&s->hc_down) && oks >= u->hc_rise) {
            atomic_store(&s->down_until, 0);
            atomic_store(&s->hc_down, 0);
            log_info("upstream %s (site %s, upstream %s): up after %u good health check%s", addr_of(t, p->server),
                     site_of(t, p->server), upstream_of(t, p->server), oks, oks == 1 ? "" : "s");
        }
        return;
    }
    uint32_t fails = atomic_fetch_add(&s->hc_fails, 1) + 1;
    atomic_store(&s->hc_oks, 0);
    if (!atomic_load(&s->hc_down) && fails >= u->hc_fall) {
        atomic_store(&s->hc_down, 1);
        atomic_fetch_add(&s->downs, 1);
        char st[16] = "";
        if (err == HC_ERR_STATUS)
            snprintf(st, sizeof(st), " %u", status);
        log_warn("upstream %s (site %s, upstream %s): down after %u failed health check%s (last: %s%s)",
                 addr_of(t, p->server), site_of(t, p->server), upstream_of(t, p->server), fails, fails == 1 ? "" : "s",
                 health_error_name(err), st);
    }
}

static void hc_close(hc_probe_t *p)
{
    if (p->waiting)
        atomic_fetch_sub(&health_slot_of(hc.table, p->server)->waiting, 1);
    p->waiting = false;
    if (p->io.fd < 0)
        return;
    ev_del(hc.loop, &p->io);
    tls_free(p->ssl);
    p->ssl = NULL;
    close(p->io.fd);
    p->io.fd = -1;
}

static void finish(hc_probe_t *p, unsigned err, unsigned status)
{
    hc_close(p);
    record(p, err, status);
    p->phase = HC_IDLE;
    ev_timer_start(hc.loop, &p->timer, upstream_of_probe(p)->hc_interval_ms, hc_timer);
}

/* The Host a check names: the site's first exact host name, else the server's address. */
static const char *check_host(const hc_probe_t *p)
{
    const rt_table_t *t = &hc.table->t;
    const rt_upstream_t *u = upstream_of_probe(p);
    const rt_site_t *site = &t->sites[u->site];
    if (u->tls_sni.len)
        return rt_cstr(t, u->tls_sni);
    for (uint32_t i = 0; i < site->hosts.count; i++) {
        const char *h = rt_cstr(t, t->strlist[site->hosts.first + i]);
        if (*h && *h != '*')
            return h;
    }
    return t->servers[p->server].sa.kind == RT_ADDR_UNIX ? "localhost" : addr_of(t, p->server);
}

static void begin(hc_probe_t *p)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    const char *why;
    p->off = 0;
    p->phase = HC_CONNECTING;
    ev_timer_start(hc.loop, &p->timer, upstream_of_probe(p)->hc_timeout_ms, hc_timer);
    if (tref_sockaddr(hc.table, p->server, &ss, &sl, &why) < 0) {
        finish(p, HC_ERR_CONNECT, 0);
        return;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fastcgi(p)) { /* a check waits for a child like a request: kept connections let theirs go */
        atomic_fetch_add(&health_slot_of(hc.table, p->server)->waiting, 1);
        p->waiting = true;
    }
    if (fd < 0 || (connect(fd, (struct sockaddr *)&ss, sl) < 0 && errno != EINPROGRESS) ||
        ev_add(hc.loop, &p->io, fd, EV_WRITE, hc_io) < 0) {
        if (fd >= 0)
            close(fd);
        p->io.fd = -1;
        finish(p, HC_ERR_CONNECT, 0);
    }
}

/* Socket I/O, plain or TLS: >0 bytes, 0 EOF, -1 wait (events set), -2 error. */
static ssize_t probe_io(hc_probe_t *p, bool wr, void *b, size_t n)
{
    ssize_t r;
    if (p->ssl) {
        r = wr ? tls_write(p->ssl, b, n) : tls_read(p->ssl, b, n);
        if (r == TLS_WANT_READ || r == TLS_WANT_WRITE) {
            ev_set(hc.loop, &p->io, r == TLS_WANT_READ ? EV_READ : EV_WRITE);
            return -1;
        }
        return r < 0 ? -2 : r;
    }
    r = wr ? write(p->io.fd, b, n) : read(p->io.fd, b, n);
    if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
        ev_set(hc.loop, &p->io, wr ? EV_WRITE : EV_READ);
        return -1;
    }
    return r < 0 ? -2 : r;
}

/* "HTTP/1.x NNN": the status, or 0. */
static unsigned status_of(const char *b, size_t n)
{
    if (n < 12 || memcmp(b, "HTTP/1.", 7) != 0 || b[8] != ' ')
        return 0;
    unsigned s = 0;
    for (int i = 9; i < 12; i++) {
        if (b[i] < '0' || b[i] > '9')
            return 0;
        s = s * 10 + (unsigned)(b[i] - '0');
    }
    return s;
}

static int step_connect(hc_probe_t *p)
{
    int err = 0;
    socklen_t len = sizeof(err);
    getsockopt(p->io.fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        finish(p, HC_ERR_CONNECT, 0);
        return -1;
    }
    uint32_t up = hc.table->t.servers[p->server].upstream;
    p->phase = HC_SENDING;
    if (tls_upstream_on(hc.table, up)) {
        if ((p->ssl = tls_connect(hc.table, up, p->io.fd)) == NULL) {
            finish(p, HC_ERR_TLS, 0);
            return -1;
        }
        p->phase = HC_HANDSHAKE;
    }
    return 0;
}

static int step_handshake(hc_probe_t *p)
{
    int rc = tls_handshake(p->ssl);
    if (rc == TLS_WANT_READ || rc == TLS_WANT_WRITE) {
        ev_set(hc.loop, &p->io, rc == TLS_WANT_READ ? EV_READ : EV_WRITE);
        return -1;
    }
    if (rc != 1) {
        finish(p, HC_ERR_TLS, 0);
        return -1;
    }
    p->phase = HC_SENDING;
    return 0;
}

/* A FastCGI check runs the script at path under the root of the first
 * fastcgi route of the upstream (php-fpm's ping.path needs none). */
static const char *fastcgi_root(const hc_probe_t *p)
{
    const rt_table_t *t = &hc.table->t;
    uint32_t up = t->servers[p->server].upstream;
    for (uint32_t i = 0; i < t->nroutes; i++)
        if (t->routes[i].action == RT_ACT_FASTCGI && t->routes[i].upstream == up)
            return rt_cstr(t, t->routes[i].target);
    return "/";
}

static int step_send(hc_probe_t *p)
{
    const rt_table_t *t = &hc.table->t;
    char req[4096];
    size_t len;
    if (fastcgi(p)) {
        str_buf_t b = str_buf_fixed(req, sizeof(req));
        fcgi_probe_request(&b, fastcgi_root(p), rt_cstr(t, upstream_of_probe(p)->hc_path), check_host(p));
        len = b.overflow ? 0 : b.len;
    } else {
        int n = snprintf(req, sizeof(req),
                         "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: proxyd-health-check\r\nConnection: close\r\n\r\n",
                         rt_cstr(t, upstream_of_probe(p)->hc_path), check_host(p));
        len = n < 0 ? 0 : (size_t)n < sizeof(req) ? (size_t)n : sizeof(req) - 1;
    }
    while (p->off < len) {
        ssize_t w = probe_io(p, true, req + p->off, len - p->off);
        if (w == -1)
            return -1;
        if (w <= 0) {
            finish(p, HC_ERR_CLOSED, 0);
            return -1;
        }
        p->off += (size_t)w;
    }
    p->off = 0;
    p->phase = HC_READING;
    ev_set(hc.loop, &p->io, EV_READ);
    return 0;
}

static void step_read(hc_probe_t *p)
{
    bool fcgi = fastcgi(p);
    for (;;) {
        ssize_t r = probe_io(p, false, p->buf + p->off, sizeof(p->buf) - p->off);
        if (r == -1)
            return;
        if (r > 0)
            p->off += (size_t)r;
        int fs = fcgi ? fcgi_probe_status(p->buf, p->off) : 0;
        if (r > 0 && (fcgi ? fs == 0 && p->off < sizeof(p->buf) : p->off < 12))
            continue;
        unsigned status = fcgi ? (fs > 0 ? (unsigned)fs : 0) : status_of(p->buf, p->off);
        unsigned expect = upstream_of_probe(p)->hc_expect;
        char sink[4096]; /* what else already arrived: closing on unread bytes would reset */
        for (int i = 0; r > 0 && i < 16 && (r = probe_io(p, false, sink, sizeof(sink))) > 0; i++)
            ;
        if (status == 0)
            finish(p, r <= 0 && p->off == 0 ? HC_ERR_CLOSED : HC_ERR_RESPONSE, 0);
        else
            finish(p, status == expect ? HC_OK : HC_ERR_STATUS, status);
        return;
    }
}

static void hc_io(ev_loop_t *loop, ev_io_t *io, uint32_t revents)
{
    hc_probe_t *p = (hc_probe_t *)io;
    (void)loop;
    (void)revents;
    if (p->phase == HC_CONNECTING && step_connect(p) < 0)
        return;
    if (p->phase == HC_HANDSHAKE && step_handshake(p) < 0)
        return;
    if (p->phase == HC_SENDING && step_send(p) < 0)
        return;
    if (p->phase == HC_READING)
        step_read(p);
}

static void hc_timer(ev_loop_t *loop, ev_timer_t *t)
{
    hc_probe_t *p = (hc_probe_t *)((char *)t - offsetof(hc_probe_t, timer));
    (void)loop;
    if (p->phase == HC_IDLE)
        begin(p);
    else
        finish(p, HC_ERR_TIMEOUT, 0);
}

static void probes_free(void)
{
    for (uint32_t i = 0; i < hc.n; i++) {
        ev_timer_stop(hc.loop, &hc.probes[i].timer);
        hc_close(&hc.probes[i]);
        hc.probes[i].phase = HC_IDLE;
    }
    free(hc.retired);
    hc.retired = hc.probes;
    hc.probes = NULL;
    hc.n = 0;
    tref_put(hc.table);
    hc.table = NULL;
}

/* One probe per checked server (a server listed twice in a pool shares its slot: once). */
static void probes_build(tref_t *table)
{
    const rt_table_t *t = &table->t;
    hc.table = tref_get(table);
    hc.probes = calloc(t->nservers + 1, sizeof(*hc.probes));
    if (hc.probes == NULL) {
        log_err("health checks: out of memory");
        return;
    }
    for (uint32_t s = 0; s < t->nservers; s++) {
        const rt_upstream_t *u = &t->upstreams[t->servers[s].upstream];
        bool dup = false;
        for (uint32_t k = u->servers.first; k < s; k++)
            dup |= health_slot_of(table, k) == health_slot_of(table, s);
        if (u->hc_interval_ms == 0 || dup)
            continue;
        hc_probe_t *p = &hc.probes[hc.n++];
        p->server = s;
        p->io.fd = -1;
        /* The first round within a second, spread so the checks do not all start together. */
        uint64_t spread = u->hc_interval_ms < 1000 ? u->hc_interval_ms : 1000;
        ev_timer_start(hc.loop, &p->timer, 1 + (hc.n * 97) % spread, hc_timer);
    }
}

void health_checker_start(ev_loop_t *loop, tref_t *table)
{
    hc.loop = loop;
    probes_build(table);
}

void health_checker_switch(tref_t *table)
{
    if (hc.loop == NULL || hc.table == table)
        return;
    probes_free();
    probes_build(table);
}

void health_checker_stop(void)
{
    if (hc.loop == NULL)
        return;
    probes_free();
    hc.loop = NULL;
}

static int health_table_init(tref_t *tr, const module_load_t *ld, char *err, size_t errlen)
{
    (void)ld;
    if (health_bind(tr) == 0)
        return 0;
    snprintf(err, errlen, "out of memory");
    return -1;
}

static int health_worker_init(void)
{
    if (W->id == 0)
        health_checker_start(W->loop, W->table); /* one checker for the node */
    return 0;
}

const module_t health_module = {.name = "health",
                                 .table_init = health_table_init,
                                 .table_free = health_release,
                                 .worker_init = health_worker_init,
                                 .worker_switch = health_checker_switch,
                                 .worker_drain = health_checker_stop};

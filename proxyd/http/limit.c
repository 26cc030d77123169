/*
 * limit.c - rate-limit zones in shared memory and the limit phase (see limit.h).
 *
 * The region: a head (a random hash seed, the master's bind epoch, and the
 * directory of RT_RATE_ZONES_MAX zones by name with their counters), then
 * RL_KEYS slots per zone.  A slot is {key, tat}; key 0 is free.  A key
 * lives in one aligned window of RL_WINDOW slots (two cache lines): found
 * there, or it takes a free slot, else one whose bucket has drained (tat in
 * the past: the same as absent), else the one nearest to draining, which is
 * counted as an eviction.  Only the master writes the directory.
 */
#include "http/limit.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../common/log.h"
#include "../common/str.h"
#include "http/phases.h"
#include "http/request.h"

#define RL_MAGIC "prxyrl01"
#define RL_KEYS_LOG2 16
#define RL_KEYS (1u << RL_KEYS_LOG2)
#define RL_WINDOW 8u
#define RL_NAME_MAX 48

typedef struct {
    _Atomic uint64_t key;
    _Atomic uint64_t tat; /* CLOCK_MONOTONIC ns: when this key's bucket is empty */
} rl_slot_t;

typedef struct {
    char name[RL_NAME_MAX]; /* "" = free */
    uint64_t seen;          /* the master's bind epoch that last named it */
    uint64_t pad;
    _Atomic uint64_t allowed, delayed, refused, evicted;
    uint64_t pad2[4];
} rl_zone_t;

typedef struct {
    char magic[8];
    uint64_t size;
    uint64_t seed;
    uint64_t epoch;
    uint64_t pad[4];
    rl_zone_t zones[RT_RATE_ZONES_MAX];
} rl_head_t;

#define RL_HEAD_SIZE ((sizeof(rl_head_t) + 4095) & ~(size_t)4095)
#define RL_ZONE_BYTES ((size_t)RL_KEYS * sizeof(rl_slot_t))
#define RL_SIZE (RL_HEAD_SIZE + RT_RATE_ZONES_MAX * RL_ZONE_BYTES)

static rl_head_t *head; /* NULL: no region (unit tests), every request passes */
static int region_fd = -1;
static pid_t region_owner;

static rl_slot_t *zone_slots(int z) { return (rl_slot_t *)((char *)head + RL_HEAD_SIZE + (size_t)z * RL_ZONE_BYTES); }

/* ---- the region ------------------------------------------------------------------- */

static int adopt(int fd)
{
    struct stat st;
    if (fstat(fd, &st) < 0 || (uint64_t)st.st_size != RL_SIZE)
        return -1;
    void *p = mmap(NULL, RL_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        return -1;
    if (memcmp(((rl_head_t *)p)->magic, RL_MAGIC, 8) != 0 || ((rl_head_t *)p)->size != RL_SIZE) {
        munmap(p, RL_SIZE);
        return -1;
    }
    head = p;
    return 0;
}

int limit_shm_init(void)
{
    region_owner = getpid();
    int old = fd_take_over("PROXYD_LIMITS_FD");
    if (old >= 0) {
        if (adopt(old) == 0) {
            region_fd = old;
            log_info("rate limits: state taken over from the previous master");
            return 0;
        }
        log_warn("rate limits: the previous master's state has another layout; starting empty");
        close(old);
    }
    int fd = memfd_create("proxyd-rate-limits", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)RL_SIZE) < 0) { /* sparse: pages exist once touched */
        if (fd >= 0)
            close(fd);
        return -1;
    }
    void *p = mmap(NULL, RL_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        close(fd);
        return -1;
    }
    head = p;
    region_fd = fd;
    if (getrandom(&head->seed, sizeof(head->seed), 0) != sizeof(head->seed))
        head->seed = (uint64_t)time(NULL) * 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid();
    head->size = RL_SIZE;
    memcpy(head->magic, RL_MAGIC, 8);
    return 0;
}

void limit_shm_export(void)
{
    if (region_fd >= 0)
        fd_hand_on("PROXYD_LIMITS_FD", region_fd);
}

/* ---- zones of a table -------------------------------------------------------------- */

typedef struct {
    int8_t zone[RT_RATE_ZONES_MAX]; /* table zone -> region zone, -1 none */
} limit_table_t;

static limit_table_t *limit_of(const tref_t *tr) { return tr->mod[MOD_LIMIT]; }

static int find_zone(const char *name)
{
    for (int z = 0; z < RT_RATE_ZONES_MAX; z++)
        if (head->zones[z].name[0] && strcmp(head->zones[z].name, name) == 0)
            return z;
    return -1;
}

/* Master: a free zone for name, emptied (its pages go back to the system). */
static int claim_zone(const char *name)
{
    for (int z = 0; z < RT_RATE_ZONES_MAX; z++) {
        rl_zone_t *h = &head->zones[z];
        if (h->name[0])
            continue;
        if (fallocate(region_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                      (off_t)(RL_HEAD_SIZE + (size_t)z * RL_ZONE_BYTES), (off_t)RL_ZONE_BYTES) < 0)
            memset(zone_slots(z), 0, RL_ZONE_BYTES);
        atomic_store(&h->allowed, 0);
        atomic_store(&h->delayed, 0);
        atomic_store(&h->refused, 0);
        atomic_store(&h->evicted, 0);
        snprintf(h->name, sizeof(h->name), "%s", name);
        return z;
    }
    return -1;
}

static void limit_table_free(tref_t *tr)
{
    free(tr->mod[MOD_LIMIT]);
    tr->mod[MOD_LIMIT] = NULL;
}

int limit_bind(tref_t *tr)
{
    const rt_table_t *t = &tr->t;
    limit_table_free(tr);
    limit_table_t *lt = calloc(1, sizeof(*lt));
    if (lt == NULL)
        return -1;
    tr->mod[MOD_LIMIT] = lt;
    memset(lt->zone, -1, sizeof(lt->zone));
    if (head == NULL || t->nrate_zones > RT_RATE_ZONES_MAX)
        return 0;
    bool master = getpid() == region_owner;
    uint64_t epoch = master ? ++head->epoch : 0;
    for (uint32_t i = 0; i < t->nrate_zones; i++) {
        const char *name = rt_cstr(t, t->rate_zones[i].name);
        int z = find_zone(name);
        if (z < 0 && master)
            z = claim_zone(name);
        if (z >= 0 && master)
            head->zones[z].seen = epoch;
        lt->zone[i] = (int8_t)z;
    }
    if (master) /* zones neither this table nor the one before names are free again */
        for (int z = 0; z < RT_RATE_ZONES_MAX; z++)
            if (head->zones[z].name[0] && head->zones[z].seen + 1 < epoch)
                head->zones[z].name[0] = '\0';
    return 0;
}

static int limit_table_init(tref_t *tr, const module_load_t *ld, char *err, size_t errlen)
{
    (void)ld;
    if (limit_bind(tr) == 0)
        return 0;
    snprintf(err, errlen, "out of memory");
    return -1;
}

limit_zone_stats_t limit_zone_stats(const char *name)
{
    limit_zone_stats_t s = {0};
    int z = head ? find_zone(name) : -1;
    if (z < 0)
        return s;
    const rl_zone_t *h = &head->zones[z];
    s = (limit_zone_stats_t){atomic_load(&h->allowed), atomic_load(&h->delayed), atomic_load(&h->refused),
                             atomic_load(&h->evicted), true};
    return s;
}

/* ---- keys ---------------------------------------------------------------------------- */

/* FNV-1a from a secret seed, then a finaliser.  Not a keyed PRF: a client
 * who picks its own keys (header:NAME) could aim them at a window, but such
 * a client can as well send fresh keys; what the seed does is keep one
 * node's windows unlike another's. */
static uint64_t finish(uint64_t x)
{
    x = hash_mix64(x);
    return x ? x : 1; /* 0 is a free slot */
}

/* The request's key in zone z, or 0 when it has none (a header key whose
 * header is absent or empty: such requests are not limited, as in nginx). */
static uint64_t request_key(const request_t *r, const rt_rate_zone_t *z)
{
    uint64_t h = head->seed ^ HASH_FNV64_INIT;
    switch (z->key) {
    case RT_RKEY_HOST: return finish(hash_fnv64(h, r->host.p, r->host.n, true));
    case RT_RKEY_SITE: return finish(hash_fnv64(h, &r->site, sizeof(r->site), false));
    case RT_RKEY_HEADER: {
        const char *name = rt_cstr(&r->table->t, z->header);
        for (size_t i = 0; i < r->nheaders; i++) {
            const h1_header_t *x = &r->headers[i];
            if (x->name.n == z->header.len && strncasecmp(x->name.p, name, x->name.n) == 0 && x->value.n)
                return finish(hash_fnv64(h, x->value.p, x->value.n, false));
        }
        return 0;
    }
    default:
        h = hash_fnv64(h, &r->client_family, 1, false);
        return finish(hash_fnv64(h, r->client_ip, r->client_family == 4 ? 4 : 16, false));
    }
}

/* The slot of key in zone z's window, taken if need be. */
static rl_slot_t *slot_for(int z, uint64_t key, uint64_t now)
{
    rl_slot_t *w = zone_slots(z) + ((key >> 8) & (RL_KEYS - 1) & ~(RL_WINDOW - 1));
    for (int attempt = 0; attempt < 4; attempt++) {
        rl_slot_t *victim = NULL;
        uint64_t victim_key = 0, victim_tat = UINT64_MAX;
        int rank = 3; /* 0 free, 1 drained, 2 evicted: the lowest wins */
        for (unsigned i = 0; i < RL_WINDOW; i++) {
            uint64_t k = atomic_load_explicit(&w[i].key, memory_order_acquire);
            if (k == key)
                return &w[i];
            uint64_t tat = atomic_load_explicit(&w[i].tat, memory_order_relaxed);
            int rk = k == 0 ? 0 : tat <= now ? 1 : 2;
            if (rk < rank || (rk == 2 && rank == 2 && tat < victim_tat)) {
                rank = rk;
                victim = &w[i];
                victim_key = k;
                victim_tat = tat;
            }
        }
        if (atomic_compare_exchange_strong(&victim->key, &victim_key, key)) {
            atomic_store_explicit(&victim->tat, 0, memory_order_relaxed); /* a fresh bucket */
            if (rank == 2)
                atomic_fetch_add_explicit(&head->zones[z].evicted, 1, memory_order_relaxed);
            return victim;
        }
        if (victim_key == key) /* another worker took it for the same key */
            return victim;
    }
    return NULL;
}

/* ---- the phase ------------------------------------------------------------------------ */

typedef struct {
    ev_timer_t timer; /* first: the callback gets this */
    request_t *r;
} limit_delay_t;

static void delay_abort(request_t *r)
{
    limit_delay_t *d = r->ctx[MODULE_CTX_LIMIT];
    ev_timer_stop(W->loop, &d->timer);
    r->on_abort = NULL;
}

static void delay_done(ev_loop_t *loop, ev_timer_t *t)
{
    (void)loop;
    request_t *r = ((limit_delay_t *)t)->r;
    r->on_abort = NULL;
    request_run(r);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int limit_phase(request_t *r)
{
    const rt_table_t *t = &r->table->t;
    const rt_policy_t *p = &t->policies[t->routes[r->route].policy];
    if (p->rate_zone == RT_NONE || head == NULL)
        return HTTP_PHASE_NEXT;
    int z = limit_of(r->table)->zone[p->rate_zone];
    const rt_rate_zone_t *rz = &t->rate_zones[p->rate_zone];
    uint64_t key = z >= 0 ? request_key(r, rz) : 0;
    if (key == 0)
        return HTTP_PHASE_NEXT;
    uint64_t now = now_ns(), wait = 0, next;
    rl_slot_t *s = slot_for(z, key, now);
    if (s == NULL)
        return HTTP_PHASE_NEXT; /* four races lost in a row: let it through rather than spin */
    rl_zone_t *zh = &head->zones[z];
    enum rl_verdict v;
    uint64_t tat = atomic_load_explicit(&s->tat, memory_order_relaxed);
    do
        v = rl_gcra(tat, now, rz->interval_ns, p->rate_burst, p->rate_flags & RT_RATE_NODELAY, &next, &wait);
    while (v != RL_REFUSE && !atomic_compare_exchange_weak(&s->tat, &tat, next));
    if (v == RL_REFUSE) {
        atomic_fetch_add_explicit(&zh->refused, 1, memory_order_relaxed);
        char ra[24];
        size_t n = fmt_u64(ra, rl_retry_after(wait));
        http_resp_init(r, 429);
        http_resp_add(r, "Retry-After", 11, ra, n);
        if (!r->body_done)
            r->keep_alive = false; /* the unread body would be taken for the next request */
        http_send_status_body(r);
        return HTTP_PHASE_DONE;
    }
    if (v == RL_PASS) {
        atomic_fetch_add_explicit(&zh->allowed, 1, memory_order_relaxed);
        return HTTP_PHASE_NEXT;
    }
    atomic_fetch_add_explicit(&zh->delayed, 1, memory_order_relaxed);
    limit_delay_t *d = arena_alloc(&r->arena, sizeof(*d));
    d->r = r;
    r->ctx[MODULE_CTX_LIMIT] = d;
    r->on_abort = delay_abort;
    ev_timer_start(W->loop, &d->timer, (wait + 999999) / 1000000, delay_done);
    return HTTP_PHASE_SUSPEND;
}

const module_t limit_module = {
    .name = "limit",
    .table_init = limit_table_init,
    .table_free = limit_table_free,
};

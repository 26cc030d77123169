/*
 * balance.c - server choice (see balance.h).
 *
 * Round robin state is per worker: every worker walks the smooth sequence
 * on its own, so the node as a whole still gives each server its weight's
 * share.  Load (requests in flight) is per node, read from the shared
 * health slots, so least_conn and random_two see what every worker sent.
 */
#include "upstream/balance.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../common/util.h"
#include "upstream/health.h"
#include "upstream/resolve.h"
#include "core/table.h"

/* ---- hashing ------------------------------------------------------------------ */

uint32_t bal_hash_client(const void *p, size_t n)
{
    return (uint32_t)(hash_mix64(hash_fnv64(HASH_FNV64_INIT, p, n, false)) >> 32);
}

uint64_t bal_random(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull); /* splitmix64 */
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* ---- the algorithms ------------------------------------------------------------- */

uint32_t bal_swrr(rr_state_t *rr, const bal_cand_t *c, uint32_t n)
{
    int32_t total = 0;
    uint32_t best = 0;
    for (uint32_t i = 0; i < n; i++) {
        rr_state_t *st = &rr[c[i].pos];
        st->current += st->effective;
        total += st->effective;
        if (st->current > rr[c[best].pos].current)
            best = i;
    }
    rr[c[best].pos].current -= total;
    return best;
}

/* a carries less load per unit of weight than b. */
static int lighter(const bal_cand_t *a, const bal_cand_t *b)
{
    int64_t l = a->load * (int64_t)b->weight, r = b->load * (int64_t)a->weight;
    return l < r ? 1 : l > r ? -1 : 0;
}

uint32_t bal_least_conn(rr_state_t *rr, bal_cand_t *c, uint32_t n)
{
    uint32_t ties = 1; /* c[0..ties) carry the least load seen so far */
    for (uint32_t i = 1; i < n; i++) {
        int cmp = lighter(&c[i], &c[0]);
        if (cmp < 0)
            continue;
        uint32_t to = cmp > 0 ? 0 : ties; /* a new minimum leads alone; an equal one joins */
        bal_cand_t x = c[i];
        c[i] = c[to];
        c[to] = x;
        ties = cmp > 0 ? 1 : ties + 1;
    }
    return bal_swrr(rr, c, ties);
}

/* One candidate drawn by weight, leaving out index skip (or n for none). */
static uint32_t draw(const bal_cand_t *c, uint32_t n, uint32_t skip, uint64_t total, uint64_t *rng)
{
    uint64_t x = total ? bal_random(rng) % total : 0;
    for (uint32_t i = 0; i < n; i++) {
        if (i == skip)
            continue;
        if (x < c[i].weight)
            return i;
        x -= c[i].weight;
    }
    return n - 1 == skip ? n - 2 : n - 1; /* not reached */
}

uint32_t bal_random_two(const bal_cand_t *c, uint32_t n, uint64_t *rng)
{
    if (n == 1)
        return 0;
    uint64_t total = 0;
    for (uint32_t i = 0; i < n; i++)
        total += c[i].weight;
    uint32_t a = draw(c, n, n, total, rng);
    uint32_t b = draw(c, n, a, total - c[a].weight, rng);
    return lighter(&c[b], &c[a]) > 0 ? b : a;
}

/* ---- the ring ------------------------------------------------------------------------ */

static int vnode_cmp(const void *x, const void *y)
{
    const bal_vnode_t *a = x, *b = y;
    if (a->point != b->point)
        return a->point < b->point ? -1 : 1;
    return a->pos < b->pos ? -1 : a->pos > b->pos;
}

int bal_ring_build(bal_ring_t *r, const char *const *keys, const uint32_t *weights, uint32_t n)
{
    uint64_t total = 0;
    for (uint32_t i = 0; i < n; i++)
        total += weights[i] ? weights[i] : 1;
    /* A constant number of points per unit of weight keeps every other
     * server's points where they are when one server comes or goes. */
    uint64_t per = BAL_RING_POINTS;
    if (total * per > BAL_RING_MAX)
        per = BAL_RING_MAX / total ? BAL_RING_MAX / total : 1;
    r->n = 0;
    r->v = malloc((total * per + 1) * sizeof(*r->v));
    if (r->v == NULL)
        return -1;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t base = hash_fnv64(HASH_FNV64_INIT, keys[i], strlen(keys[i]), false);
        uint64_t points = (weights[i] ? weights[i] : 1) * per;
        for (uint64_t k = 0; k < points; k++) {
            r->v[r->n].point = (uint32_t)(hash_mix64(base ^ hash_mix64(k + 1)) >> 32);
            r->v[r->n++].pos = i;
        }
    }
    qsort(r->v, r->n, sizeof(*r->v), vnode_cmp);
    return 0;
}

void bal_ring_free(bal_ring_t *r)
{
    free(r->v);
    r->v = NULL;
    r->n = 0;
}

uint32_t bal_ring_lookup(const bal_ring_t *r, uint32_t hash, const uint8_t *ok)
{
    uint32_t lo = 0, hi = r->n;
    while (lo < hi) { /* the first point >= hash */
        uint32_t mid = lo + (hi - lo) / 2;
        if (r->v[mid].point < hash)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (uint32_t k = 0; k < r->n; k++) {
        const bal_vnode_t *v = &r->v[(lo + k) % r->n];
        if (ok[v->pos])
            return v->pos;
    }
    return BAL_NONE;
}

/* ---- on a loaded table ------------------------------------------------------------------ */

/* This worker's balancing state of one table (tref_t.mod[MOD_BALANCE]). */
typedef struct {
    rr_state_t *rr;        /* per server: smooth weighted round robin */
    bal_ring_t *ring;      /* per upstream: ip_hash ring (empty for other algorithms) */
    bal_cand_t *cand;      /* scratch of one pick, as long as the largest pool */
    uint8_t *ok;           /* scratch of one ip_hash pick, as long as the largest pool */
} bal_table_t;

static bal_table_t *bal_of(const tref_t *tr) { return tr->mod[MOD_BALANCE]; }

int balance_prepare(tref_t *tref)
{
    const rt_table_t *t = &tref->t;
    uint32_t largest = 1;
    bal_table_t *tr = calloc(1, sizeof(*tr));
    if (tr == NULL)
        return -1;
    tref->mod[MOD_BALANCE] = tr;
    tr->rr = calloc(t->nservers + 1, sizeof(*tr->rr));
    tr->ring = calloc(t->nupstreams + 1, sizeof(*tr->ring));
    if (tr->rr == NULL || tr->ring == NULL)
        return -1;
    for (uint32_t i = 0; i < t->nservers; i++)
        tr->rr[i].effective = (int32_t)(t->servers[i].weight ? t->servers[i].weight : 1);
    for (uint32_t i = 0; i < t->nupstreams; i++) {
        const rt_upstream_t *u = &t->upstreams[i];
        if (u->servers.count > largest)
            largest = u->servers.count;
        if (u->balance != RT_BAL_IP_HASH)
            continue;
        const char **keys = malloc(u->servers.count * sizeof(*keys));
        uint32_t *weights = malloc(u->servers.count * sizeof(*weights));
        int rc = keys && weights ? 0 : -1;
        for (uint32_t k = 0; rc == 0 && k < u->servers.count; k++) {
            keys[k] = rt_cstr(t, t->servers[u->servers.first + k].sa.addr);
            weights[k] = t->servers[u->servers.first + k].weight;
        }
        if (rc == 0)
            rc = bal_ring_build(&tr->ring[i], keys, weights, u->servers.count);
        free(keys);
        free(weights);
        if (rc < 0)
            return -1;
    }
    tr->cand = calloc(largest, sizeof(*tr->cand));
    tr->ok = calloc(largest, 1);
    return tr->cand && tr->ok ? 0 : -1;
}

void balance_release(tref_t *tref)
{
    bal_table_t *tr = bal_of(tref);
    if (tr == NULL)
        return;
    for (uint32_t i = 0; tr->ring && i < tref->t.nupstreams; i++)
        bal_ring_free(&tr->ring[i]);
    free(tr->ring);
    free(tr->rr);
    free(tr->cand);
    free(tr->ok);
    free(tr);
    tref->mod[MOD_BALANCE] = NULL;
}

static int balance_table_init(tref_t *tr, const module_load_t *ld, char *err, size_t errlen)
{
    (void)ld;
    if (balance_prepare(tr) == 0)
        return 0;
    snprintf(err, errlen, "out of memory");
    return -1;
}

const module_t balance_module = {.name = "balance", .table_init = balance_table_init, .table_free = balance_release};

/* The servers that may take this attempt: primaries that are up and not yet
 * tried; when there is none, the backups that are. */
static uint32_t candidates(tref_t *tref, const rt_upstream_t *u, uint64_t tried, uint64_t now)
{
    const rt_table_t *t = &tref->t;
    bal_table_t *tr = bal_of(tref);
    bool hc = u->hc_interval_ms != 0;
    uint32_t n = 0;
    for (int backup = 0; backup < 2 && n == 0; backup++)
        for (uint32_t pos = 0; pos < u->servers.count; pos++) {
            uint32_t s = u->servers.first + pos;
            const rt_server_t *sv = &t->servers[s];
            unsigned addrs = resolve_count(tref, s); /* 0: a host name that has not resolved */
            if (!(sv->flags & RT_SVF_BACKUP) != !backup || (tried >> (pos % 64) & 1) || addrs == 0 ||
                !health_usable(health_slot_of(tref, s), hc, now))
                continue;
            /* A name weighs once per address: each is a server of the pool. */
            uint32_t w = (sv->weight ? sv->weight : 1) * (addrs < 64 ? addrs : 64);
            tr->rr[s].effective = (int32_t)w;
            tr->cand[n].pos = pos;
            tr->cand[n].weight = w;
            tr->cand[n++].load = health_load(health_slot_of(tref, s));
        }
    return n;
}

uint32_t balance_pick(tref_t *tref, uint32_t upstream, const void *client, size_t clen, uint64_t tried, uint64_t now)
{
    static uint64_t rng;
    const rt_upstream_t *u = &tref->t.upstreams[upstream];
    bal_table_t *tr = bal_of(tref);
    uint32_t n = candidates(tref, u, tried, now), i = 0;
    if (n == 0)
        return RT_NONE;
    rr_state_t *rr = tr->rr + u->servers.first;
    switch (u->balance) {
    case RT_BAL_LEAST_CONN: i = bal_least_conn(rr, tr->cand, n); break;
    case RT_BAL_RANDOM_TWO:
        if (rng == 0) /* first pick in this process: workers must not share a sequence */
            rng = (uint64_t)getpid() << 32 ^ (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)&rng;
        i = bal_random_two(tr->cand, n, &rng);
        break;
    case RT_BAL_IP_HASH: {
        memset(tr->ok, 0, u->servers.count);
        for (uint32_t k = 0; k < n; k++)
            tr->ok[tr->cand[k].pos] = 1;
        uint32_t pos = bal_ring_lookup(&tr->ring[upstream], bal_hash_client(client, clen), tr->ok);
        return pos == BAL_NONE ? RT_NONE : u->servers.first + pos;
    }
    default: i = bal_swrr(rr, tr->cand, n); break;
    }
    return u->servers.first + tr->cand[i].pos;
}

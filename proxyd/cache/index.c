/*
 * index.c - the cache zones' shared indexes, their files on disk, the
 * loader, purge and stats (see cache.h and docs/cache.md).
 *
 * The region: a directory page, then one window of RT_CACHE_MEMORY_MAX
 * bytes per zone slot (sparse: a zone touches only its `memory`).  A
 * window starts with the zone's head (a process-shared robust mutex, its
 * name, path and limits, counters), then the hash buckets (u32 slot
 * indices), then the entry slots, 64 bytes each: the key's 128-bit hash,
 * expiry, size on disk, the fill lock's deadline, last access, LRU links
 * and the bucket chain.  The key itself lives only in the entry's file
 * (checked on every read), so an entry costs the index 64 bytes plus its
 * share of the buckets.
 *
 * Every index operation is a few slot visits under the zone's mutex.  The
 * mutex is robust: a worker killed while holding it hands it to the next
 * locker (EOWNERDEAD), which marks it consistent and goes on; the slot
 * being changed at that moment may be left half-updated, which costs at
 * worst one entry (its file is checked on every read).
 */
#include "cache/cache.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <pwd.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../common/log.h"
#include "core/worker.h"

#define CZ_MAGIC "prxycz01"
#define CZ_NAME_MAX 64
#define CZ_PATH_MAX 256
#define CZ_NONE UINT32_MAX
#define CZ_HEAD_BYTES 4096u
#define CZ_WINDOW RT_CACHE_MEMORY_MAX
#define CZ_VICTIMS 64
#define CZ_LOAD_STEP 256 /* directory entries a loader step reads */

typedef struct {
    uint64_t h1, h2;
    uint64_t expires_ms;    /* 0: no content yet (locked for its first fill) */
    uint64_t size;          /* bytes on disk */
    uint64_t lock_until_ms; /* 0: unlocked */
    uint32_t access_s;
    uint32_t prev, next;    /* LRU, head = most recent */
    uint32_t hnext;         /* bucket chain, or the free list */
    uint16_t flags;
    uint16_t used;
    uint32_t lock_pid;      /* the process holding the fill lock */
} cz_slot_t;

_Static_assert(sizeof(cz_slot_t) == 64, "an index entry is one cache line");

struct cache_zone {
    pthread_mutex_t mu;
    char name[CZ_NAME_MAX];
    char path[CZ_PATH_MAX];
    uint64_t memory, max_size;
    uint32_t inactive_s, incarnation;
    uint32_t nslots, nbuckets, nused_ever, free_head, lru_head, lru_tail;
    uint64_t size, entries;
    _Atomic uint64_t counts[CC_COUNT];
    _Atomic uint64_t evictions;
    _Atomic uint32_t error_logged;
    _Atomic uint32_t loading;        /* the disk has not been walked into the index yet */
    _Atomic uint32_t loader_pid;
    _Atomic uint64_t loader_beat_ms;
    _Atomic uint64_t last_sweep_s;
};

_Static_assert(sizeof(struct cache_zone) <= CZ_HEAD_BYTES, "zone head fits its page");

typedef struct {
    char name[CZ_NAME_MAX];
    char path[CZ_PATH_MAX];
    uint64_t memory;
    uint64_t seen;  /* the master's bind epoch that last named it */
    uint32_t used;
    uint32_t pad;
} cz_dir_t;

typedef struct {
    char magic[8];
    uint64_t size;
    uint64_t epoch;
    uint32_t incarnations;
    uint32_t pad;
    cz_dir_t dir[RT_CACHE_ZONES_MAX];
} cz_region_t;

#define CZ_REGION_HEAD (((sizeof(cz_region_t) + 4095) / 4096) * 4096)
#define CZ_REGION_SIZE (CZ_REGION_HEAD + (uint64_t)RT_CACHE_ZONES_MAX * CZ_WINDOW)

const char *const cache_status_names[CC_COUNT] = {"HIT", "MISS", "EXPIRED", "STALE", "UPDATING", "REVALIDATED", "BYPASS"};

static cz_region_t *region; /* NULL: no cache (unit tests) */
static int region_fd = -1;
static pid_t region_owner;

static cache_zone_t *window(int i) { return (cache_zone_t *)((char *)region + CZ_REGION_HEAD + (uint64_t)i * CZ_WINDOW); }
static uint32_t *buckets(cache_zone_t *z) { return (uint32_t *)((char *)z + CZ_HEAD_BYTES); }
static cz_slot_t *slots(cache_zone_t *z)
{
    return (cz_slot_t *)((char *)z + CZ_HEAD_BYTES + (((size_t)z->nbuckets * 4 + 63) & ~(size_t)63));
}

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- the region --------------------------------------------------------------------- */

static int map_region(int fd)
{
    void *p = mmap(NULL, CZ_REGION_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
    if (p == MAP_FAILED)
        return -1;
    region = p;
    region_fd = fd;
    return 0;
}

int cache_shm_init(void)
{
    region_owner = getpid();
    int old = fd_take_over("PROXYD_CACHE_FD");
    if (old >= 0) {
        struct stat st;
        if (fstat(old, &st) == 0 && (uint64_t)st.st_size == CZ_REGION_SIZE && map_region(old) == 0) {
            if (memcmp(region->magic, CZ_MAGIC, 8) == 0 && region->size == CZ_REGION_SIZE) {
                log_info("cache: indexes taken over from the previous master");
                return 0;
            }
            munmap(region, CZ_REGION_SIZE);
            region = NULL;
        }
        log_warn("cache: the previous master's indexes have another layout; rebuilding them from disk");
        close(old);
    }
    int fd = memfd_create("proxyd-cache", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)CZ_REGION_SIZE) < 0 || map_region(fd) < 0) {
        if (fd >= 0)
            close(fd);
        region_fd = -1;
        return -1;
    }
    region->size = CZ_REGION_SIZE;
    memcpy(region->magic, CZ_MAGIC, 8);
    return 0;
}

void cache_shm_export(void)
{
    if (region_fd >= 0)
        fd_hand_on("PROXYD_CACHE_FD", region_fd);
}

static void zlock(cache_zone_t *z)
{
    if (pthread_mutex_lock(&z->mu) == EOWNERDEAD)
        pthread_mutex_consistent(&z->mu); /* its holder died mid-operation: at worst one slot is off */
}

static void zunlock(cache_zone_t *z) { pthread_mutex_unlock(&z->mu); }

/* ---- binding a table's zones ----------------------------------------------------------- */

typedef struct {
    int8_t zone[RT_CACHE_ZONES_MAX]; /* table zone -> window, -1 none */
} cache_table_t;

static int find_dir(const char *name, const char *path, uint64_t memory)
{
    for (int i = 0; i < RT_CACHE_ZONES_MAX; i++) {
        const cz_dir_t *d = &region->dir[i];
        if (d->used && strcmp(d->name, name) == 0 && strcmp(d->path, path) == 0 && d->memory == memory)
            return i;
    }
    return -1;
}

/* A directory of the workers' account (uid, gid): made as that account
 * when its parent lets it (the master under systemd has no CAP_CHOWN, only
 * CAP_SETUID/SETGID), else made by root and given away; one that exists
 * already is given away only when it is not the account's. */
static int own_dir(const char *p, uid_t uid, gid_t gid)
{
    struct stat st;
    if (stat(p, &st) == 0)
        return S_ISDIR(st.st_mode) && (st.st_uid == uid || chown(p, uid, gid) == 0) ? 0 : -1;
    int rc = -1, e = 0;
    if (geteuid() == 0 && uid != 0 && setegid(gid) == 0) {
        if (seteuid(uid) == 0) {
            rc = mkdir(p, 0700);
            e = errno;
            if (seteuid(0) < 0)
                abort(); /* cannot happen: the saved set-user-ID is root's */
        }
        if (setegid(0) < 0)
            abort();
    }
    if (rc == 0)
        return 0;
    if (mkdir(p, 0700) < 0 && errno != EEXIST)
        return -1;
    if (geteuid() == 0 && chown(p, uid, gid) < 0) {
        errno = e && e != EACCES ? e : errno;
        return -1;
    }
    return 0;
}

/* mkdir -p: the parents root's (or the caller's), the zone and its tmp/ the
 * workers' account's. */
static int make_dirs(const char *path, uid_t uid, gid_t gid)
{
    char p[CZ_PATH_MAX + 8];
    snprintf(p, sizeof(p), "%s", path);
    for (char *s = p + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(p, 0755) < 0 && errno != EEXIST)
            return -1;
        *s = '/';
    }
    if (own_dir(p, uid, gid) < 0)
        return -1;
    size_t n = strlen(p);
    snprintf(p + n, sizeof(p) - n, "/tmp");
    return own_dir(p, uid, gid);
}

static void zone_init(cache_zone_t *z, const char *name, const char *path, uint64_t memory)
{
    size_t avail = memory - CZ_HEAD_BYTES;
    uint32_t nslots = (uint32_t)(avail / (sizeof(cz_slot_t) + 4));
    uint32_t nb = 1;
    while ((uint64_t)nb * 2 <= nslots)
        nb *= 2;
    z->nbuckets = nb;
    /* what the buckets leave (rounded to a cache line) */
    z->nslots = (uint32_t)((avail - (((size_t)nb * 4 + 63) & ~(size_t)63)) / sizeof(cz_slot_t));
    memset(buckets(z), 0xff, (size_t)nb * 4);
    snprintf(z->name, sizeof(z->name), "%s", name);
    snprintf(z->path, sizeof(z->path), "%s", path);
    z->memory = memory;
    z->free_head = z->lru_head = z->lru_tail = CZ_NONE;
    z->incarnation = ++region->incarnations;
    atomic_store(&z->loading, 1);
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(&z->mu, &a);
    pthread_mutexattr_destroy(&a);
}

/* Master: a free window for the zone, emptied. */
static int claim(const char *name, const char *path, uint64_t memory)
{
    for (int i = 0; i < RT_CACHE_ZONES_MAX; i++) {
        cz_dir_t *d = &region->dir[i];
        if (d->used)
            continue;
        uint64_t off = CZ_REGION_HEAD + (uint64_t)i * CZ_WINDOW;
        if (fallocate(region_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)CZ_WINDOW) < 0)
            memset(window(i), 0, memory);
        zone_init(window(i), name, path, memory);
        snprintf(d->name, sizeof(d->name), "%s", name);
        snprintf(d->path, sizeof(d->path), "%s", path);
        d->memory = memory;
        d->used = 1;
        return i;
    }
    return -1;
}

static cache_table_t *table_of(const tref_t *tr) { return tr->mod[MOD_CACHE]; }

static void cache_table_free(tref_t *tr)
{
    free(tr->mod[MOD_CACHE]);
    tr->mod[MOD_CACHE] = NULL;
}

int cache_bind(tref_t *tr, const char *db)
{
    const rt_table_t *t = &tr->t;
    cache_table_free(tr);
    cache_table_t *ct = calloc(1, sizeof(*ct));
    if (ct == NULL)
        return -1;
    tr->mod[MOD_CACHE] = ct;
    memset(ct->zone, -1, sizeof(ct->zone));
    if (region == NULL || t->ncache_zones > RT_CACHE_ZONES_MAX)
        return 0;
    bool master = getpid() == region_owner;
    uint64_t epoch = master ? ++region->epoch : 0;
    uid_t uid = geteuid();
    gid_t gid = getegid();
    struct passwd *pw = NULL;
    char why[256];
    if (master && worker_account(rt_cstr(t, t->global->user), &pw, why, sizeof(why)) == 0 && pw) {
        uid = pw->pw_uid;
        gid = pw->pw_gid;
    }
    for (uint32_t i = 0; i < t->ncache_zones; i++) {
        const rt_cache_zone_t *cz = &t->cache_zones[i];
        const char *name = rt_cstr(t, cz->name);
        char *path = path_beside(db, rt_cstr(t, cz->path));
        if (path == NULL || cz->name.len >= CZ_NAME_MAX || strlen(path) >= CZ_PATH_MAX ||
            cz->memory < RT_CACHE_MEMORY_MIN || cz->memory > RT_CACHE_MEMORY_MAX) {
            free(path);
            continue;
        }
        int w = find_dir(name, path, cz->memory);
        if (w < 0 && master) {
            if (make_dirs(path, uid, gid) < 0)
                log_err("cache zone %s: cannot make %s for uid %u: %s (answers of its routes are served, not "
                        "stored; give its parent directory to the `user` account)",
                        name, path, (unsigned)uid, strerror(errno));
            w = claim(name, path, cz->memory);
        }
        free(path);
        if (w < 0)
            continue;
        if (master) {
            region->dir[w].seen = epoch;
            window(w)->max_size = cz->max_size;
            window(w)->inactive_s = cz->inactive_s;
        }
        ct->zone[i] = (int8_t)w;
    }
    if (master) /* zones neither this table nor the one before names are free again */
        for (int i = 0; i < RT_CACHE_ZONES_MAX; i++)
            if (region->dir[i].used && region->dir[i].seen + 1 < epoch)
                region->dir[i].used = 0;
    return 0;
}

static int cache_table_init(tref_t *tr, const module_load_t *ld, char *err, size_t errlen)
{
    if (cache_bind(tr, ld->db) == 0)
        return 0;
    snprintf(err, errlen, "out of memory");
    return -1;
}

cache_zone_t *cache_zone_of(const tref_t *tr, uint32_t i)
{
    const cache_table_t *ct = table_of(tr);
    if (ct == NULL || i >= RT_CACHE_ZONES_MAX || ct->zone[i] < 0)
        return NULL;
    return window(ct->zone[i]);
}

uint32_t cache_zone_incarnation(const cache_zone_t *z) { return z->incarnation; }
const char *cache_zone_path(const cache_zone_t *z) { return z->path; }

/* ---- the index ------------------------------------------------------------------------- */

static uint32_t bucket_of(const cache_zone_t *z, uint64_t h1) { return (uint32_t)(h1 & (z->nbuckets - 1)); }

static uint32_t idx(cache_zone_t *z, const cz_slot_t *s) { return (uint32_t)(s - slots(z)); }

static cz_slot_t *find(cache_zone_t *z, uint64_t h1, uint64_t h2)
{
    cz_slot_t *s = slots(z);
    for (uint32_t i = buckets(z)[bucket_of(z, h1)]; i != CZ_NONE && i < z->nslots; i = s[i].hnext)
        if (s[i].h1 == h1 && s[i].h2 == h2)
            return &s[i];
    return NULL;
}

static void lru_unlink(cache_zone_t *z, cz_slot_t *s)
{
    cz_slot_t *all = slots(z);
    if (s->prev == CZ_NONE && z->lru_head != idx(z, s))
        return; /* not on the list (a slot just taken) */
    if (s->prev != CZ_NONE)
        all[s->prev].next = s->next;
    else
        z->lru_head = s->next;
    if (s->next != CZ_NONE)
        all[s->next].prev = s->prev;
    else
        z->lru_tail = s->prev;
    s->prev = s->next = CZ_NONE;
}

static void lru_front(cache_zone_t *z, cz_slot_t *s)
{
    uint32_t i = idx(z, s);
    if (z->lru_head == i)
        return;
    lru_unlink(z, s);
    s->next = z->lru_head;
    if (z->lru_head != CZ_NONE)
        slots(z)[z->lru_head].prev = i;
    z->lru_head = i;
    if (z->lru_tail == CZ_NONE)
        z->lru_tail = i;
}

typedef struct {
    uint64_t h[CZ_VICTIMS][2];
    int n;
} victims_t;

static void drop(cache_zone_t *z, cz_slot_t *s, victims_t *v)
{
    uint32_t i = idx(z, s);
    uint32_t *b = &buckets(z)[bucket_of(z, s->h1)];
    cz_slot_t *all = slots(z);
    while (*b != CZ_NONE && *b != i)
        b = &all[*b].hnext;
    if (*b == i)
        *b = s->hnext;
    lru_unlink(z, s);
    if (s->expires_ms) {
        z->size -= s->size < z->size ? s->size : z->size;
        z->entries -= z->entries ? 1 : 0;
    }
    if (v && v->n < CZ_VICTIMS) {
        v->h[v->n][0] = s->h1;
        v->h[v->n][1] = s->h2;
        v->n++;
    }
    memset(s, 0, sizeof(*s));
    s->hnext = z->free_head;
    z->free_head = i;
}

/* Evict from the cold end: entries with content, not being filled. */
static void evict_one(cache_zone_t *z, uint64_t now_ms, victims_t *v)
{
    cz_slot_t *all = slots(z);
    for (uint32_t i = z->lru_tail, k = 0; i != CZ_NONE && k < 64; i = all[i].prev, k++) {
        cz_slot_t *s = &all[i];
        if (s->lock_until_ms > now_ms)
            continue;
        atomic_fetch_add_explicit(&z->evictions, 1, memory_order_relaxed);
        drop(z, s, v);
        return;
    }
}

/* Evict from the cold end until the zone is within max_size (keep: the
 * entry just stored, which is never evicted for its own sake). */
static void evict_to_size(cache_zone_t *z, const cz_slot_t *keep, uint64_t now_ms, victims_t *v)
{
    while (z->size > z->max_size && z->lru_tail != idx(z, keep) && v->n < CZ_VICTIMS) {
        int before = v->n;
        evict_one(z, now_ms, v);
        if (v->n == before)
            break;
    }
}

static cz_slot_t *take_slot(cache_zone_t *z, uint64_t h1, uint64_t h2, uint64_t now_ms, victims_t *v)
{
    uint32_t i;
    if (z->free_head == CZ_NONE && z->nused_ever >= z->nslots)
        evict_one(z, now_ms, v);
    if (z->free_head != CZ_NONE) {
        i = z->free_head;
        z->free_head = slots(z)[i].hnext;
    } else if (z->nused_ever < z->nslots) {
        i = z->nused_ever++;
    } else {
        return NULL;
    }
    cz_slot_t *s = &slots(z)[i];
    memset(s, 0, sizeof(*s));
    s->h1 = h1;
    s->h2 = h2;
    s->used = 1;
    s->prev = s->next = CZ_NONE;
    uint32_t *b = &buckets(z)[bucket_of(z, h1)];
    s->hnext = *b;
    *b = i;
    lru_front(z, s);
    return s;
}

static void unlink_victims(cache_zone_t *z, const victims_t *v)
{
    char path[CZ_PATH_MAX + 48];
    for (int i = 0; i < v->n; i++) {
        cache_file_path(z, v->h[i][0], v->h[i][1], path, sizeof(path));
        unlink(path);
    }
}

enum cache_begin cache_begin(cache_zone_t *z, uint64_t h1, uint64_t h2, uint64_t now_ms, uint32_t lock_ms,
                             cache_entry_t *e)
{
    victims_t v = {.n = 0};
    enum cache_begin rc;
    *e = (cache_entry_t){0, 0, 0};
    zlock(z);
    cz_slot_t *s = find(z, h1, h2);
    if (s && s->expires_ms) {
        *e = (cache_entry_t){s->expires_ms, s->size, s->flags};
        s->access_s = (uint32_t)(now_ms / 1000);
        lru_front(z, s);
    }
    if (s && s->expires_ms > now_ms) {
        rc = CACHE_FRESH;
    } else if (s && s->lock_until_ms > now_ms) {
        rc = CACHE_BUSY;
    } else {
        if (s == NULL)
            s = take_slot(z, h1, h2, now_ms, &v);
        if (s) {
            s->lock_until_ms = now_ms + lock_ms;
            s->lock_pid = (uint32_t)getpid();
            s->access_s = (uint32_t)(now_ms / 1000);
        }
        rc = s ? CACHE_LOCKED : CACHE_NONE;
    }
    zunlock(z);
    unlink_victims(z, &v);
    return rc;
}

void cache_commit(cache_zone_t *z, uint32_t incarnation, uint64_t h1, uint64_t h2, uint64_t size,
                  uint64_t expires_ms, uint16_t flags)
{
    victims_t v = {.n = 0};
    uint64_t now = wall_ms();
    zlock(z);
    if (z->incarnation != incarnation) {
        zunlock(z);
        return;
    }
    cz_slot_t *s = find(z, h1, h2);
    if (s == NULL)
        s = take_slot(z, h1, h2, now, &v);
    if (s) {
        if (s->expires_ms) {
            z->size -= s->size < z->size ? s->size : z->size;
            z->entries--;
        }
        s->size = size;
        s->expires_ms = expires_ms ? expires_ms : 1;
        s->flags = flags;
        s->lock_until_ms = 0;
        s->access_s = (uint32_t)(now / 1000);
        z->size += size;
        z->entries++;
        lru_front(z, s);
        evict_to_size(z, s, now, &v);
    }
    zunlock(z);
    unlink_victims(z, &v);
}

void cache_unlock(cache_zone_t *z, uint32_t incarnation, uint64_t h1, uint64_t h2)
{
    zlock(z);
    cz_slot_t *s = z->incarnation == incarnation ? find(z, h1, h2) : NULL;
    if (s) {
        s->lock_until_ms = 0;
        if (s->expires_ms == 0)
            drop(z, s, NULL);
    }
    zunlock(z);
}

void cache_forget(cache_zone_t *z, uint64_t h1, uint64_t h2)
{
    zlock(z);
    cz_slot_t *s = find(z, h1, h2);
    if (s)
        drop(z, s, NULL);
    zunlock(z);
}

/* The loader's insert: an entry found on disk, unless the key is indexed already. */
static void insert_loaded(cache_zone_t *z, uint64_t h1, uint64_t h2, uint64_t size, uint64_t expires_ms, uint16_t flags)
{
    victims_t v = {.n = 0};
    uint64_t now = wall_ms();
    zlock(z);
    if (find(z, h1, h2) == NULL) {
        cz_slot_t *s = take_slot(z, h1, h2, now, &v);
        if (s) {
            s->size = size;
            s->expires_ms = expires_ms ? expires_ms : 1;
            s->flags = flags;
            s->access_s = (uint32_t)(now / 1000);
            z->size += size;
            z->entries++;
            evict_to_size(z, s, now, &v);
        }
    }
    zunlock(z);
    unlink_victims(z, &v);
}

void cache_file_path(const cache_zone_t *z, uint64_t h1, uint64_t h2, char *out, size_t n)
{
    snprintf(out, n, "%s/%02x/%016" PRIx64 "%016" PRIx64, z->path, (unsigned)(h1 >> 56), h1, h2);
}

void cache_count(cache_zone_t *z, enum cache_count c) { atomic_fetch_add_explicit(&z->counts[c], 1, memory_order_relaxed); }

void cache_store_failed(cache_zone_t *z, const char *what, const char *path, int err)
{
    uint32_t no = 0;
    if (atomic_compare_exchange_strong(&z->error_logged, &no, 1))
        log_err("cache zone %s: cannot %s %s: %s (answers are served from the origin, not stored; "
                "logged once until the zone stores again)",
                z->name, what, path, strerror(err));
}

void cache_store_ok(cache_zone_t *z)
{
    if (atomic_load_explicit(&z->error_logged, memory_order_relaxed))
        atomic_store(&z->error_logged, 0);
}

/* ---- entry files ------------------------------------------------------------------------ */

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* A file name of 32 lower-case hex digits: its two hashes. */
static bool parse_name(const char *s, uint64_t *h1, uint64_t *h2)
{
    uint64_t a = 0, b = 0;
    for (int i = 0; i < 32; i++) {
        int d = hexval(s[i]);
        if (d < 0)
            return false;
        if (i < 16)
            a = a << 4 | (uint64_t)d;
        else
            b = b << 4 | (uint64_t)d;
    }
    if (s[32] != '\0')
        return false;
    *h1 = a;
    *h2 = b;
    return true;
}

/* The head of the entry file at dirfd/name, checked against its name and
 * size; *text (malloc'd, NULL when not wanted) the head's bytes after the
 * fixed part.  0, or -1 when it is not a sound entry. */
static int read_head(int dirfd, const char *name, cache_file_head_t *h, uint64_t *fsize, char **text)
{
    uint64_t h1, h2;
    if (!parse_name(name, &h1, &h2))
        return -1;
    int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return -1;
    struct stat st;
    int rc = -1;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && pread(fd, h, sizeof(*h), 0) == (ssize_t)sizeof(*h) &&
        memcmp(h->magic, CACHE_FILE_MAGIC, 8) == 0 && h->h1 == h1 && h->h2 == h2 && h->head_len >= sizeof(*h) &&
        h->head_len <= 1u << 20 &&
        (uint64_t)h->key_len + h->site_len + h->path_len + h->vary_len + h->fields_len <= h->head_len - sizeof(*h) &&
        (uint64_t)st.st_size == h->head_len + h->body_len) {
        rc = 0;
        *fsize = (uint64_t)st.st_size;
        if (text) {
            size_t n = h->head_len - sizeof(*h);
            *text = malloc(n + 1);
            if (*text == NULL || pread(fd, *text, n, sizeof(*h)) != (ssize_t)n) {
                free(*text);
                *text = NULL;
                rc = -1;
            }
        }
    }
    close(fd);
    return rc;
}

/* ---- the loader and housekeeping (workers) -------------------------------------------------- */

typedef struct {
    int zone;     /* window being loaded, -1 none */
    int dir;      /* 0..255: the subdirectory; 256 done */
    DIR *d;
} loader_t;

static loader_t L = {-1, 0, NULL};

static void loader_close(void)
{
    if (L.d)
        closedir(L.d);
    L = (loader_t){-1, 0, NULL};
}

/* The temporary files of a fresh zone are leftovers of processes gone. */
static void clean_tmp(const cache_zone_t *z)
{
    char p[CZ_PATH_MAX + 8];
    snprintf(p, sizeof(p), "%s/tmp", z->path);
    DIR *d = opendir(p);
    if (d == NULL)
        return;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        if (e->d_name[0] != '.')
            unlinkat(dirfd(d), e->d_name, 0);
    closedir(d);
}

/* One step of loading window w: up to CZ_LOAD_STEP directory entries. */
static void load_step(int w)
{
    cache_zone_t *z = window(w);
    if (L.zone != w) {
        loader_close();
        L.zone = w;
        clean_tmp(z);
    }
    atomic_store(&z->loader_beat_ms, wall_ms());
    for (int n = 0; n < CZ_LOAD_STEP;) {
        if (L.dir >= 256) {
            loader_close();
            atomic_store(&z->loading, 0);
            atomic_store(&z->loader_pid, 0);
            log_info("cache zone %s: index rebuilt from %s (%" PRIu64 " entries)", z->name, z->path, z->entries);
            return;
        }
        if (L.d == NULL) {
            char p[CZ_PATH_MAX + 8];
            snprintf(p, sizeof(p), "%s/%02x", z->path, (unsigned)L.dir);
            if ((L.d = opendir(p)) == NULL) {
                L.dir++;
                continue;
            }
        }
        struct dirent *e = readdir(L.d);
        if (e == NULL) {
            closedir(L.d);
            L.d = NULL;
            L.dir++;
            continue;
        }
        n++;
        if (e->d_name[0] == '.')
            continue;
        cache_file_head_t h;
        uint64_t size;
        if (read_head(dirfd(L.d), e->d_name, &h, &size, NULL) == 0)
            insert_loaded(z, h.h1, h.h2, size, h.expires_ms, h.flags);
        else
            unlinkat(dirfd(L.d), e->d_name, 0); /* not an entry of ours, or half of one */
    }
}

#define SWEEP_BATCHES 64 /* at most 4,096 inactive entries a second per zone, 64 per hold of the lock */

/* Inactive entries go, from the cold end; once a second per zone per node. */
static void sweep(cache_zone_t *z, uint64_t now_ms)
{
    uint64_t now_s = now_ms / 1000, last = atomic_load(&z->last_sweep_s);
    if (last >= now_s || !atomic_compare_exchange_strong(&z->last_sweep_s, &last, now_s))
        return;
    for (int batch = 0; batch < SWEEP_BATCHES; batch++) {
        victims_t v = {.n = 0};
        bool more = false;
        zlock(z);
        cz_slot_t *all = slots(z);
        for (uint32_t i = z->lru_tail; i != CZ_NONE;) {
            cz_slot_t *s = &all[i];
            i = s->prev;
            if ((uint64_t)s->access_s + z->inactive_s >= now_s) /* access_s is truncated: never early */
                break;
            if (v.n == CZ_VICTIMS) {
                more = true;
                break;
            }
            if (s->lock_until_ms <= now_ms)
                drop(z, s, &v);
        }
        zunlock(z);
        unlink_victims(z, &v);
        if (!more)
            return;
    }
}

bool cache_worker_tick(void)
{
    if (region == NULL || W == NULL || W->table == NULL)
        return false;
    const cache_table_t *ct = table_of(W->table);
    uint64_t now = wall_ms();
    bool loading = false;
    uint32_t me = (uint32_t)getpid();
    for (uint32_t i = 0; ct && i < W->table->t.ncache_zones && i < RT_CACHE_ZONES_MAX; i++) {
        int w = ct->zone[i];
        if (w < 0)
            continue;
        cache_zone_t *z = window(w);
        sweep(z, now);
        if (!atomic_load(&z->loading))
            continue;
        uint32_t owner = atomic_load(&z->loader_pid);
        if (owner != me && (owner == 0 || atomic_load(&z->loader_beat_ms) + 3000 < now)) {
            if (!atomic_compare_exchange_strong(&z->loader_pid, &owner, me))
                continue;
            if (L.zone == w)
                loader_close(); /* a takeover starts the walk again */
        }
        if (atomic_load(&z->loader_pid) == me) {
            load_step(w);
            loading = true;
        }
    }
    return loading;
}

/* A dead process's fill locks are let go at once (its waiters fill the
 * keys themselves instead of waiting out the lock). */
static void unlock_dead(cache_zone_t *z, uint32_t pid)
{
    zlock(z);
    cz_slot_t *all = slots(z);
    for (uint32_t i = 0; i < z->nused_ever && i < z->nslots; i++) {
        cz_slot_t *s = &all[i];
        if (!s->used || s->lock_until_ms == 0 || s->lock_pid != pid)
            continue;
        s->lock_until_ms = 0;
        if (s->expires_ms == 0)
            drop(z, s, NULL);
    }
    zunlock(z);
}

void cache_worker_died(int pid)
{
    if (region == NULL)
        return;
    for (int i = 0; i < RT_CACHE_ZONES_MAX; i++)
        if (region->dir[i].used)
            unlock_dead(window(i), (uint32_t)pid);
    char prefix[24];
    int pn = snprintf(prefix, sizeof(prefix), "%d.", pid);
    for (int i = 0; i < RT_CACHE_ZONES_MAX; i++) {
        if (!region->dir[i].used)
            continue;
        char p[CZ_PATH_MAX + 8];
        snprintf(p, sizeof(p), "%s/tmp", window(i)->path);
        DIR *d = opendir(p);
        if (d == NULL)
            continue;
        for (struct dirent *e; (e = readdir(d)) != NULL;)
            if (strncmp(e->d_name, prefix, (size_t)pn) == 0)
                unlinkat(dirfd(d), e->d_name, 0);
        closedir(d);
    }
}

/* ---- admin (master) ------------------------------------------------------------------------ */

static cache_zone_t *zone_named(const char *name)
{
    if (region == NULL)
        return NULL;
    cache_zone_t *best = NULL;
    uint64_t seen = 0;
    for (int i = 0; i < RT_CACHE_ZONES_MAX; i++)
        if (region->dir[i].used && strcmp(region->dir[i].name, name) == 0 && region->dir[i].seen >= seen) {
            best = window(i);
            seen = region->dir[i].seen;
        }
    return best;
}

cache_zone_stats_t cache_zone_stats(const char *name)
{
    cache_zone_stats_t s = {{0}, 0, 0, 0, 0, 0, 0, false, false};
    cache_zone_t *z = zone_named(name);
    if (z == NULL)
        return s;
    for (int c = 0; c < CC_COUNT; c++)
        s.counts[c] = atomic_load(&z->counts[c]);
    s.evictions = atomic_load(&z->evictions);
    zlock(z);
    s.entries = z->entries;
    s.size = z->size;
    zunlock(z);
    s.max_size = z->max_size;
    s.memory = z->memory;
    s.nslots = z->nslots;
    s.loading = atomic_load(&z->loading) != 0;
    s.found = true;
    return s;
}

void cache_stats_json(const rt_table_t *t, str_buf_t *b)
{
    static const char *const keys[CC_COUNT] = {"hits", "misses", "expired", "stale", "updating", "revalidated", "bypass"};
    STR_APPEND_LIT(b, "{\"zones\":[");
    for (uint32_t i = 0; i < t->ncache_zones; i++) {
        const char *name = rt_cstr(t, t->cache_zones[i].name);
        cache_zone_stats_t s = cache_zone_stats(name);
        str_printf(b, "%s{\"name\":\"", i ? "," : "");
        str_json_escape(b, name, strlen(name), SIZE_MAX);
        STR_APPEND_LIT(b, "\",\"path\":\"");
        str_json_escape(b, rt_cstr(t, t->cache_zones[i].path), t->cache_zones[i].path.len, SIZE_MAX);
        str_printf(b, "\",\"entries\":%" PRIu64 ",\"size\":%" PRIu64 ",\"max_size\":%" PRIu64 ",\"memory\":%" PRIu64
                      ",\"max_entries\":%" PRIu64 ",\"index_bytes_per_entry\":%.1f",
                   s.entries, s.size, t->cache_zones[i].max_size, t->cache_zones[i].memory, s.nslots,
                   s.nslots ? (double)(s.memory - CZ_HEAD_BYTES) / (double)s.nslots : 0.0);
        uint64_t lookups = s.counts[CC_HIT] + s.counts[CC_MISS] + s.counts[CC_EXPIRED] + s.counts[CC_STALE] +
                           s.counts[CC_UPDATING] + s.counts[CC_REVALIDATED];
        for (int c = 0; c < CC_COUNT; c++)
            str_printf(b, ",\"%s\":%" PRIu64, keys[c], s.counts[c]);
        str_printf(b, ",\"evictions\":%" PRIu64 ",\"hit_ratio\":%.4f,\"loading\":%s}", s.evictions,
                   lookups ? (double)(s.counts[CC_HIT] + s.counts[CC_STALE] + s.counts[CC_UPDATING] +
                                      s.counts[CC_REVALIDATED]) / (double)lookups
                           : 0.0,
                   s.loading ? "true" : "false");
    }
    STR_APPEND_LIT(b, "]}\n");
}

/* Does the entry's text (key, site, path...) name site and a path under prefix? */
static bool purge_match(const cache_file_head_t *h, const char *text, const char *site, const char *prefix)
{
    const char *s = text + h->key_len, *p = s + h->site_len;
    size_t sn = strlen(site);
    if (h->site_len != sn || memcmp(s, site, sn) != 0)
        return false;
    size_t pn = prefix ? strlen(prefix) : 0;
    return pn == 0 || (h->path_len >= pn && memcmp(p, prefix, pn) == 0);
}

long cache_purge(const rt_table_t *t, const char *site, const char *prefix)
{
    bool known = false;
    for (uint32_t i = 0; i < t->nsites && !known; i++)
        known = strcmp(rt_cstr(t, t->sites[i].name), site) == 0;
    if (!known)
        return -1;
    long purged = 0;
    for (uint32_t i = 0; i < t->ncache_zones; i++) {
        cache_zone_t *z = zone_named(rt_cstr(t, t->cache_zones[i].name));
        if (z == NULL)
            continue;
        for (int dir = 0; dir < 256; dir++) {
            char p[CZ_PATH_MAX + 8];
            snprintf(p, sizeof(p), "%s/%02x", z->path, (unsigned)dir);
            DIR *d = opendir(p);
            if (d == NULL)
                continue;
            for (struct dirent *e; (e = readdir(d)) != NULL;) {
                cache_file_head_t h;
                uint64_t size;
                char *text = NULL;
                if (e->d_name[0] == '.' || read_head(dirfd(d), e->d_name, &h, &size, &text) < 0)
                    continue;
                if (purge_match(&h, text, site, prefix) && unlinkat(dirfd(d), e->d_name, 0) == 0) {
                    cache_forget(z, h.h1, h.h2);
                    purged += (h.flags & CACHE_F_VARY) ? 0 : 1;
                }
                free(text);
            }
            closedir(d);
        }
    }
    return purged;
}

/* ---- worker hooks ----------------------------------------------------------------------------- */

static ev_timer_t tick_timer;

static void on_tick(ev_loop_t *loop, ev_timer_t *t)
{
    bool loading = cache_worker_tick();
    ev_timer_start(loop, t, loading ? 2 : 1000, on_tick);
}

static int cache_worker_init(void)
{
    if (region)
        ev_timer_start(W->loop, &tick_timer, 1, on_tick);
    return 0;
}

static void cache_worker_drain(void) { ev_timer_stop(W->loop, &tick_timer); }

static void cache_worker_exit(void) { loader_close(); }

static int cache_module_worker_init(void)
{
    if (cache_filter_init() < 0)
        return -1;
    return cache_worker_init();
}

const module_t cache_module = {
    .name = "cache",
    .table_init = cache_table_init,
    .table_free = cache_table_free,
    .worker_init = cache_module_worker_init,
    .worker_drain = cache_worker_drain,
    .worker_exit = cache_worker_exit,
};

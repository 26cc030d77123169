/*
 * peers.c - open connections per client address (see peers.h).
 *
 * A worker's table: PEERS_SLOTS slots {key, count}; an address lives in one
 * aligned window of PEERS_WINDOW slots, in the slot holding its key with a
 * count, else it takes one whose count is 0.  Slots are written by their
 * worker only (plain stores other workers read racily: the sum may be off
 * by a connection being opened or closed at that instant, as nginx's
 * limit_conn is between its check and its increment).
 */
#include "conn/peers.h"

#include <string.h>
#include <sys/mman.h>

#include "../common/log.h"
#include "core/worker.h"

#define PEERS_SLOTS (1u << 16)
#define PEERS_WINDOW 16u

typedef struct {
    volatile uint64_t key;
    volatile uint32_t count;
    uint32_t pad;
} peer_slot_t;

static peer_slot_t *region; /* STATS_MAX_WORKERS tables */

int peers_init(void)
{
    void *p = mmap(NULL, (size_t)STATS_MAX_WORKERS * PEERS_SLOTS * sizeof(peer_slot_t), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return -1;
    region = p;
    return 0;
}

void peers_reset(int id)
{
    if (region == NULL || id < 0 || id >= STATS_MAX_WORKERS)
        return;
    peer_slot_t *t = region + (size_t)id * PEERS_SLOTS;
    if (madvise(t, PEERS_SLOTS * sizeof(*t), MADV_REMOVE) < 0) /* zero pages, and give them back */
        memset(t, 0, PEERS_SLOTS * sizeof(*t));
}

static uint64_t key_of(int family, const uint8_t *ip)
{
    uint64_t h = hash_fnv64(HASH_FNV64_INIT, &family, sizeof(family), false);
    h = hash_mix64(hash_fnv64(h, ip, family == 4 ? 4 : 16, false));
    return h ? h : 1;
}

static peer_slot_t *window(int id, uint64_t key)
{
    return region + (size_t)id * PEERS_SLOTS + ((key >> 16) & (PEERS_SLOTS - 1) & ~(PEERS_WINDOW - 1));
}

static peer_slot_t *find(peer_slot_t *w, uint64_t key)
{
    for (unsigned i = 0; i < PEERS_WINDOW; i++)
        if (w[i].count && w[i].key == key)
            return &w[i];
    return NULL;
}

bool peers_take(int family, const uint8_t *ip, uint32_t cap, bool *counted)
{
    *counted = false;
    if (region == NULL || (family != 4 && family != 6))
        return true;
    uint64_t key = key_of(family, ip), node = 0;
    for (int i = 0; i < STATS_MAX_WORKERS; i++) {
        if (W->shm->workers[i].pid == 0)
            continue;
        const peer_slot_t *s = find(window(i, key), key);
        node += s ? s->count : 0;
    }
    if (node >= cap)
        return false;
    peer_slot_t *w = window(W->id, key), *s = find(w, key);
    for (unsigned i = 0; s == NULL && i < PEERS_WINDOW; i++)
        if (w[i].count == 0) {
            s = &w[i];
            s->key = key;
        }
    if (s == NULL) {
        static log_limit_t limit;
        unsigned long quiet;
        if (log_limited(&limit, &quiet))
            log_warn("max_connections_per_ip: too many client addresses at once to count them all; some pass uncounted");
        return true;
    }
    s->count++;
    *counted = true;
    return true;
}

void peers_release(int family, const uint8_t *ip)
{
    uint64_t key = key_of(family, ip);
    peer_slot_t *s = find(window(W->id, key), key);
    if (s)
        s->count--;
}

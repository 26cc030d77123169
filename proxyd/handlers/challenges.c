/*
 * challenges.c - ACME HTTP-01 answers in shared memory (see challenges.h).
 */
#include "handlers/challenges.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>

#include "../common/log.h"
#include "../common/store.h"

typedef struct {
    uint16_t token_len, ka_len;
    int64_t expires;
    char token[CHALLENGE_TOKEN_MAX];
    char ka[CHALLENGE_KA_MAX];
} challenge_t;

typedef struct {
    _Atomic uint64_t seq; /* odd while the master writes */
    uint32_t count;
    challenge_t c[CHALLENGES_MAX];
} challenges_shm_t;

static challenges_shm_t *shm;

int challenges_init(void)
{
    void *p = mmap(NULL, sizeof(*shm), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return -1;
    shm = p;
    return 0;
}

static void publish(const challenge_t *c, uint32_t n)
{
    uint64_t s = atomic_load_explicit(&shm->seq, memory_order_relaxed);
    atomic_store_explicit(&shm->seq, s + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    memcpy(shm->c, c, n * sizeof(*c));
    shm->count = n;
    atomic_store_explicit(&shm->seq, s + 2, memory_order_release);
}

int challenges_refresh(const char *db, char *err, size_t errlen)
{
    static challenge_t fresh[CHALLENGES_MAX];
    store_t st;
    uint32_t n = 0;
    if (shm == NULL)
        return 0;
    if (store_open(&st, db, STORE_RDONLY) < 0) {
        snprintf(err, errlen, "%s", st.err);
        return -1;
    }
    sqlite3_stmt *q = store_prepare(&st, "SELECT token, key_authorization, expires FROM acme_challenges "
                                         "WHERE expires > strftime('%s','now') ORDER BY expires DESC LIMIT 64");
    if (q == NULL) {
        snprintf(err, errlen, "%s", st.err);
        store_close(&st);
        return -1;
    }
    while (sqlite3_step(q) == SQLITE_ROW && n < CHALLENGES_MAX) {
        int tn = sqlite3_column_bytes(q, 0), kn = sqlite3_column_bytes(q, 1);
        const void *token = sqlite3_column_text(q, 0), *ka = sqlite3_column_text(q, 1);
        if (token == NULL || ka == NULL || tn <= 0 || tn > CHALLENGE_TOKEN_MAX || kn <= 0 || kn > CHALLENGE_KA_MAX)
            continue; /* not an answer proxyd could be asked for */
        challenge_t *c = &fresh[n++];
        memset(c, 0, sizeof(*c));
        c->token_len = (uint16_t)tn;
        c->ka_len = (uint16_t)kn;
        c->expires = sqlite3_column_int64(q, 2);
        memcpy(c->token, token, (size_t)tn);
        memcpy(c->ka, ka, (size_t)kn);
    }
    sqlite3_finalize(q);
    store_close(&st);
    publish(fresh, n);
    return (int)n;
}

/* What changes when anything writes the store (WAL mode: the -wal file). */
typedef struct {
    ino_t ino[2];
    off_t size[2];
    struct timespec mtime[2];
} store_look_t;

void challenges_poll(const char *db)
{
    static store_look_t last;
    store_look_t now;
    char path[4096], err[512];
    memset(&now, 0, sizeof(now));
    for (int i = 0; i < 2; i++) {
        struct stat sb;
        snprintf(path, sizeof(path), "%s%s", db, i ? "-wal" : "");
        if (stat(path, &sb) == 0) {
            now.ino[i] = sb.st_ino;
            now.size[i] = sb.st_size;
            now.mtime[i] = sb.st_mtim;
        }
    }
    if (memcmp(&now, &last, sizeof(now)) == 0)
        return;
    last = now;
    if (challenges_refresh(db, err, sizeof(err)) < 0)
        log_err("acme challenges: %s", err);
}

ssize_t challenges_find(const char *token, size_t n, char *out, size_t cap)
{
    if (shm == NULL || n == 0 || n > CHALLENGE_TOKEN_MAX)
        return -1;
    for (int tries = 0; tries < 1000; tries++) {
        uint64_t s = atomic_load_explicit(&shm->seq, memory_order_acquire);
        if (s & 1)
            continue; /* the master is writing: its copy takes microseconds */
        ssize_t found = -1;
        int64_t expires = 0;
        uint32_t count = shm->count < CHALLENGES_MAX ? shm->count : CHALLENGES_MAX;
        for (uint32_t i = 0; i < count && found < 0; i++) {
            const challenge_t *c = &shm->c[i];
            size_t kn = c->ka_len;
            if (c->token_len != n || memcmp(c->token, token, n) != 0 || kn > CHALLENGE_KA_MAX || kn > cap)
                continue;
            memcpy(out, c->ka, kn);
            expires = c->expires;
            found = (ssize_t)kn;
        }
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&shm->seq, memory_order_relaxed) == s)
            return found >= 0 && expires > (int64_t)time(NULL) ? found : -1;
    }
    return -1;
}

/*
 * store.c - sqlite store access (see store.h).
 *
 * The schema itself is schema/store.sql, compiled in as store_sql[] by the
 * Makefile, so the file a reader studies is the one that runs.
 */
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/sha.h>

extern const char store_sql[], store_v2_sql[];

static int fail(store_t *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(store_t *s, const char *fmt, ...)
{
    va_list ap;
    int n = snprintf(s->err, sizeof(s->err), "store %s: ", s->path);
    va_start(ap, fmt);
    vsnprintf(s->err + n, sizeof(s->err) - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

static int fail_db(store_t *s, const char *what)
{
    return fail(s, "%s: %s", what, s->db ? sqlite3_errmsg(s->db) : "not open");
}

/* sqlite creates the file with the process umask; create it ourselves first
 * so the store (and the -wal/-shm files, which copy its mode) is 0600. */
static int create_private(store_t *s, const char *path)
{
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return fail(s, "cannot create: %s", strerror(errno));
    close(fd);
    return 0;
}

int store_open(store_t *s, const char *path, int flags)
{
    memset(s, 0, sizeof(*s));
    s->path = path;
    int oflags = SQLITE_OPEN_NOMUTEX;
    if (flags & STORE_RDONLY)
        oflags |= SQLITE_OPEN_READONLY;
    else
        oflags |= SQLITE_OPEN_READWRITE;
    if (flags & STORE_CREATE) {
        if (create_private(s, path) < 0)
            return -1;
    } else if (access(path, (flags & STORE_RDONLY) ? R_OK : R_OK | W_OK) < 0) {
        if (errno == ENOENT)
            return fail(s, "does not exist (run 'proxyctl init' first)");
        return fail(s, "cannot open: %s", strerror(errno));
    }
    if (sqlite3_open_v2(path, &s->db, oflags, NULL) != SQLITE_OK) {
        fail_db(s, "cannot open");
        store_close(s);
        return -1;
    }
    sqlite3_busy_timeout(s->db, STORE_BUSY_MS);
    if (!(flags & STORE_RDONLY)) {
        /* Keep -wal and -shm after the last writer closes: a read-only reader
         * (proxyd's unprivileged workers) cannot create them itself. */
        int persist = 1;
        sqlite3_file_control(s->db, "main", SQLITE_FCNTL_PERSIST_WAL, &persist);
        if (store_exec(s, "PRAGMA journal_mode=WAL") < 0)
            goto fail;
    }
    if (store_exec(s, "PRAGMA foreign_keys=ON; PRAGMA synchronous=NORMAL") < 0)
        goto fail;
    return 0;
fail:
    sqlite3_close(s->db);
    s->db = NULL;
    return -1;
}

void store_close(store_t *s)
{
    if (s->db)
        sqlite3_close(s->db);
    s->db = NULL;
}

int store_exec(store_t *s, const char *sql)
{
    char *msg = NULL;
    if (sqlite3_exec(s->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        fail(s, "%s", msg ? msg : sqlite3_errmsg(s->db));
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

sqlite3_stmt *store_prepare(store_t *s, const char *sql)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK) {
        fail_db(s, "query failed");
        return NULL;
    }
    return st;
}

static int user_version(store_t *s, int *v)
{
    sqlite3_stmt *st = store_prepare(s, "PRAGMA user_version");
    if (st == NULL)
        return -1;
    int rc = sqlite3_step(st);
    *v = rc == SQLITE_ROW ? sqlite3_column_int(st, 0) : -1;
    sqlite3_finalize(st);
    return rc == SQLITE_ROW ? 0 : fail_db(s, "cannot read schema version");
}

int store_migrate(store_t *s, int *from)
{
    static const char *const migrations[] = {store_sql, store_v2_sql}; /* index i moves version i to i+1 */
    int v;
    if (store_begin(s) < 0)
        return -1;
    if (user_version(s, &v) < 0)
        goto fail;
    *from = v;
    if (v > STORE_VERSION) {
        fail(s, "schema version %d is newer than this proxyctl (%d)", v, STORE_VERSION);
        goto fail;
    }
    for (; v < STORE_VERSION; v++) {
        char pragma[64];
        snprintf(pragma, sizeof(pragma), "PRAGMA user_version=%d", v + 1);
        if (store_exec(s, migrations[v]) < 0 || store_exec(s, pragma) < 0)
            goto fail;
    }
    return store_commit(s);
fail:
    store_rollback(s);
    return -1;
}

int store_begin(store_t *s) { return store_exec(s, "BEGIN IMMEDIATE"); }
int store_commit(store_t *s) { return store_exec(s, "COMMIT"); }

void store_rollback(store_t *s)
{
    char keep[sizeof(s->err)];
    memcpy(keep, s->err, sizeof(keep));
    if (sqlite3_get_autocommit(s->db) == 0)
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    memcpy(s->err, keep, sizeof(keep));
}

static int step_done(store_t *s, sqlite3_stmt *st, const char *what)
{
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : fail_db(s, what);
}

int store_event(store_t *s, const char *command, const char *what, int64_t generation)
{
    sqlite3_stmt *st = store_prepare(s, "INSERT INTO events (at, command, what, generation) VALUES (?,?,?,?)");
    if (st == NULL)
        return -1;
    sqlite3_bind_int64(st, 1, (sqlite3_int64)time(NULL));
    sqlite3_bind_text(st, 2, command, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, what, -1, SQLITE_STATIC);
    if (generation > 0)
        sqlite3_bind_int64(st, 4, generation);
    return step_done(s, st, "cannot record event");
}

int store_get_setting(store_t *s, const char *key, char **value)
{
    *value = NULL;
    sqlite3_stmt *st = store_prepare(s, "SELECT value FROM settings WHERE key = ?");
    if (st == NULL)
        return -1;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *value = strdup((const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : fail_db(s, "cannot read settings");
}

int store_set_setting(store_t *s, const char *key, const char *value)
{
    sqlite3_stmt *st = store_prepare(s, "INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)");
    if (st == NULL)
        return -1;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, value, -1, SQLITE_STATIC);
    return step_done(s, st, "cannot write settings");
}

static int blob_query(store_t *s, sqlite3_stmt *st, int64_t *id, uint8_t **blob, size_t *len)
{
    *blob = NULL;
    *len = 0;
    if (id)
        *id = 0;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        size_t n = (size_t)sqlite3_column_bytes(st, 1);
        const void *p = sqlite3_column_blob(st, 1);
        /* Tables are read in place as arrays of 8-byte aligned records. */
        uint8_t *copy = aligned_alloc(8, (n + 7) & ~(size_t)7);
        if (copy == NULL) {
            sqlite3_finalize(st);
            return fail(s, "out of memory reading a generation of %zu bytes", n);
        }
        if (n)
            memcpy(copy, p, n);
        if (id)
            *id = sqlite3_column_int64(st, 0);
        *blob = copy;
        *len = n;
    }
    sqlite3_finalize(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : fail_db(s, "cannot read generation");
}

int store_active(store_t *s, int64_t *id, uint8_t **blob, size_t *len)
{
    sqlite3_stmt *st = store_prepare(s, "SELECT id, blob FROM generations WHERE active = 1");
    return st ? blob_query(s, st, id, blob, len) : -1;
}

int store_generation_blob(store_t *s, int64_t id, uint8_t **blob, size_t *len)
{
    sqlite3_stmt *st = store_prepare(s, "SELECT id, blob FROM generations WHERE id = ?");
    if (st == NULL)
        return -1;
    sqlite3_bind_int64(st, 1, id);
    if (blob_query(s, st, NULL, blob, len) < 0)
        return -1;
    return *blob ? 0 : fail(s, "no generation %lld", (long long)id);
}

void store_digest_hex(const void *p, size_t n, char hex[65])
{
    uint8_t md[SHA256_DIGEST_LENGTH];
    SHA256(p, n, md);
    for (int i = 0; i < SHA256_DIGEST_LENGTH; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
}

int store_add_generation(store_t *s, const uint8_t *blob, size_t len, const char *comment,
                         const char *global_yaml, int64_t *id)
{
    char hex[65];
    store_digest_hex(blob, len, hex);
    if (store_exec(s, "UPDATE generations SET active = 0 WHERE active = 1") < 0)
        return -1;
    sqlite3_stmt *st = store_prepare(
        s, "INSERT INTO generations (created, digest, blob, comment, active, global_yaml) VALUES (?,?,?,?,1,?)");
    if (st == NULL)
        return -1;
    sqlite3_bind_int64(st, 1, (sqlite3_int64)time(NULL));
    sqlite3_bind_text(st, 2, hex, -1, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 3, blob, (int)len, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, comment, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, global_yaml ? global_yaml : "", -1, SQLITE_STATIC);
    if (step_done(s, st, "cannot store generation") < 0)
        return -1;
    *id = sqlite3_last_insert_rowid(s->db);
    return store_prune_generations(s, STORE_KEEP_GENERATIONS, NULL);
}

int store_prune_generations(store_t *s, int64_t keep, int64_t *deleted)
{
    /* Never the active one, nor the one a bare 'rollback' goes to (the
     * newest before the active); an HA snapshot carries only the active. */
    sqlite3_stmt *st = store_prepare(
        s, "DELETE FROM generations WHERE active = 0 "
           "AND id NOT IN (SELECT id FROM generations ORDER BY id DESC LIMIT ?) "
           "AND id <> coalesce((SELECT max(id) FROM generations WHERE id < (SELECT id FROM generations WHERE active = 1)), 0)");
    if (st == NULL)
        return -1;
    sqlite3_bind_int64(st, 1, keep);
    if (step_done(s, st, "cannot delete old generations") < 0)
        return -1;
    if (deleted)
        *deleted = sqlite3_changes(s->db);
    return 0;
}

/*
 * store.h - access to the sqlite store shared by proxyctl (read-write) and
 * proxyd (read-only).  Opening sets WAL, a busy timeout and foreign keys;
 * creating makes the file 0600 and applies the migrations by user_version.
 * All functions return 0 / -1 and leave a message naming the store in err.
 */
#ifndef COMMON_STORE_H
#define COMMON_STORE_H

#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

#define STORE_VERSION 2
#define STORE_BUSY_MS 10000
/* Every new generation deletes all but the newest this many. */
#define STORE_KEEP_GENERATIONS 50

enum { STORE_RDONLY = 1, STORE_CREATE = 2 };

typedef struct store {
    sqlite3 *db;
    const char *path;
    char err[512];
} store_t;

int store_open(store_t *s, const char *path, int flags);
void store_close(store_t *s);
/* Create or upgrade the schema; *from receives the version found. */
int store_migrate(store_t *s, int *from);
int store_begin(store_t *s); /* BEGIN IMMEDIATE: one writer at a time */
int store_commit(store_t *s);
void store_rollback(store_t *s);
int store_exec(store_t *s, const char *sql);
/* Prepare or fail with the sqlite message in s->err. */
sqlite3_stmt *store_prepare(store_t *s, const char *sql);
int store_event(store_t *s, const char *command, const char *what, int64_t generation);
int store_get_setting(store_t *s, const char *key, char **value); /* *value NULL when absent */
int store_set_setting(store_t *s, const char *key, const char *value);
/* The active generation: id and a malloc'ed, 8-byte aligned copy of its blob.
 * *id is 0 when the store has none. */
int store_active(store_t *s, int64_t *id, uint8_t **blob, size_t *len);
/* Fetch generation id's blob (as store_active). */
int store_generation_blob(store_t *s, int64_t id, uint8_t **blob, size_t *len);
/* Insert a generation and make it the only active one; *id receives its id.
 * Older generations beyond STORE_KEEP_GENERATIONS are deleted. */
int store_add_generation(store_t *s, const uint8_t *blob, size_t len, const char *comment,
                         const char *global_yaml, int64_t *id);
/* Delete all but the newest keep generations, never the active one nor the
 * newest before it (rollback's default); *deleted (if given) the count. */
int store_prune_generations(store_t *s, int64_t keep, int64_t *deleted);
/* Hex SHA-256 of p[0..n) into hex[65]. */
void store_digest_hex(const void *p, size_t n, char hex[65]);

#endif

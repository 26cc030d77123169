/*
 * test_store.c - store creation (mode 0600, WAL, user_version), migration
 * refusal of newer stores, one active generation, settings and events.
 */
#include "proxyctl_all.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include <cmocka.h>

static char dir[64];
static char path[128];

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/proxyd-store-XXXXXX");
    if (mkdtemp(dir) == NULL)
        return -1;
    snprintf(path, sizeof(path), "%s/store.db", dir);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[200];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    return system(cmd);
}

static int64_t scalar_int(store_t *s, const char *sql)
{
    sqlite3_stmt *q = store_prepare(s, sql);
    assert_non_null(q);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(q, 0);
    sqlite3_finalize(q);
    return v;
}

static void test_create(void **state)
{
    (void)state;
    store_t s;
    int from = -1;
    assert_int_equal(store_open(&s, path, STORE_CREATE), 0);
    assert_int_equal(store_migrate(&s, &from), 0);
    assert_int_equal(from, 0);
    assert_int_equal(scalar_int(&s, "PRAGMA user_version"), STORE_VERSION);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    sqlite3_stmt *q = store_prepare(&s, "PRAGMA journal_mode");
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(q, 0), "wal");
    sqlite3_finalize(q);
    assert_int_equal(store_migrate(&s, &from), 0); /* idempotent */
    assert_int_equal(from, STORE_VERSION);
    store_close(&s);
}

static void test_missing_store(void **state)
{
    (void)state;
    store_t s;
    char p[200];
    snprintf(p, sizeof(p), "%s/none.db", dir);
    assert_int_equal(store_open(&s, p, 0), -1);
    assert_non_null(strstr(s.err, "does not exist (run 'proxyctl init' first)"));
}

static void test_newer_schema_refused(void **state)
{
    (void)state;
    store_t s;
    int from;
    assert_int_equal(store_open(&s, path, STORE_CREATE), 0);
    assert_int_equal(store_exec(&s, "PRAGMA user_version=99"), 0);
    assert_int_equal(store_migrate(&s, &from), -1);
    assert_non_null(strstr(s.err, "schema version 99 is newer than this proxyctl"));
    store_close(&s);
}

static void test_generations(void **state)
{
    (void)state;
    store_t s;
    int from;
    assert_int_equal(store_open(&s, path, STORE_CREATE), 0);
    assert_int_equal(store_migrate(&s, &from), 0);
    uint8_t blob[24] = {1, 2, 3};
    int64_t id1, id2, active;
    assert_int_equal(store_begin(&s), 0);
    assert_int_equal(store_add_generation(&s, blob, sizeof(blob), "one", "", &id1), 0);
    assert_int_equal(store_event(&s, "test", "first", id1), 0);
    assert_int_equal(store_commit(&s), 0);
    blob[0] = 9;
    assert_int_equal(store_begin(&s), 0);
    assert_int_equal(store_add_generation(&s, blob, sizeof(blob), "two", "", &id2), 0);
    store_rollback(&s); /* nothing of an aborted change remains */
    uint8_t *got;
    size_t len;
    assert_int_equal(store_active(&s, &active, &got, &len), 0);
    assert_int_equal(active, id1);
    assert_int_equal(len, sizeof(blob));
    assert_int_equal(got[0], 1);
    assert_int_equal((uintptr_t)got % 8, 0);
    free(got);
    assert_int_equal(scalar_int(&s, "SELECT count(*) FROM generations WHERE active = 1"), 1);
    assert_int_equal(scalar_int(&s, "SELECT count(*) FROM events"), 1);
    char *v;
    assert_int_equal(store_set_setting(&s, "k", "v"), 0);
    assert_int_equal(store_get_setting(&s, "k", &v), 0);
    assert_string_equal(v, "v");
    free(v);
    assert_int_equal(store_get_setting(&s, "absent", &v), 0);
    assert_null(v);
    assert_int_equal(store_generation_blob(&s, 999, &got, &len), -1);
    assert_non_null(strstr(s.err, "no generation 999"));
    store_close(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_create, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_store, setup, teardown),
        cmocka_unit_test_setup_teardown(test_newer_schema_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_generations, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

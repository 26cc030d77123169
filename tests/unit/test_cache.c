/*
 * test_cache.c - the cache index (cache/index.c) in a real shared region:
 * the fill lock, commit and expiry, LRU eviction by max_size and by the
 * index's size, the loader rebuilding an index from entry files (and
 * removing what is not one), and purge by site and path prefix.
 */
#include "proxyd_fixture.h"

#include <dirent.h>
#include <inttypes.h>
#include <time.h>

#include "cache/cache.h"

static uint64_t wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static const char site_yaml[] = "site: shop\n"
                                "hosts: [shop.test]\n"
                                "upstreams: {app: {servers: [{address: \"127.0.0.1:9\"}]}}\n"
                                "routes:\n"
                                "  - match: {path_prefix: /}\n"
                                "    upstream: app\n"
                                "    cache: {zone: z, valid: {\"200\": 1m}}\n";

/* A table whose zone z lives in DIR/NAME, max_size and memory as given. */
static tref_t *table_with_zone(const char *name, const char *max_size, const char *memory)
{
    char global[512];
    snprintf(global, sizeof(global), "cache_zones: {z: {path: %s/%s, max_size: %s, memory: %s}}\n", fx_dir, name,
             max_size, memory);
    tref_t *t = fx_table(global, site_yaml);
    assert_non_null(cache_zone_of(t, 0));
    return t;
}

static int setup(void **state)
{
    (void)state;
    fx_worker_init();
    return cache_shm_init();
}

static int teardown(void **state)
{
    (void)state;
    fx_worker_free();
    return 0;
}

static void test_lock_commit_expire(void **state)
{
    (void)state;
    tref_t *t = table_with_zone("a", "1m", "256k");
    cache_zone_t *z = cache_zone_of(t, 0);
    uint32_t inc = cache_zone_incarnation(z);
    cache_entry_t e;
    uint64_t now = wall_now();
    assert_int_equal(cache_begin(z, 1, 2, now, 5000, &e), CACHE_LOCKED);
    assert_int_equal(e.expires_ms, 0);
    assert_int_equal(cache_begin(z, 1, 2, now, 5000, &e), CACHE_BUSY); /* one fill per key */
    assert_int_equal(cache_begin(z, 1, 2, now + 5001, 5000, &e), CACHE_LOCKED); /* the lock expired */
    cache_commit(z, inc, 1, 2, 100, now + 60000, 0);
    assert_int_equal(cache_begin(z, 1, 2, now, 5000, &e), CACHE_FRESH);
    assert_int_equal(e.size, 100);
    /* expired: the first asker takes the lock and sees the old entry */
    assert_int_equal(cache_begin(z, 1, 2, now + 61000, 5000, &e), CACHE_LOCKED);
    assert_int_equal(e.expires_ms, now + 60000);
    assert_int_equal(cache_begin(z, 1, 2, now + 61000, 5000, &e), CACHE_BUSY);
    cache_unlock(z, inc, 1, 2); /* given up: the old entry stays */
    assert_int_equal(cache_begin(z, 1, 2, now, 5000, &e), CACHE_FRESH);
    /* a lock on a missing key, given up, leaves nothing */
    assert_int_equal(cache_begin(z, 3, 4, now, 5000, &e), CACHE_LOCKED);
    cache_unlock(z, inc, 3, 4);
    cache_zone_stats_t s = cache_zone_stats("z");
    assert_true(s.found);
    assert_int_equal(s.entries, 1);
    assert_int_equal(s.size, 100);
    /* a commit from an older incarnation of the zone is dropped */
    cache_commit(z, inc + 1000, 5, 6, 100, now + 60000, 0);
    assert_int_equal(cache_zone_stats("z").entries, 1);
    cache_forget(z, 1, 2);
    assert_int_equal(cache_zone_stats("z").entries, 0);
    /* the locks of a dead worker go at once (the master calls this) */
    assert_int_equal(cache_begin(z, 7, 8, now, 5000, &e), CACHE_LOCKED);
    assert_int_equal(cache_begin(z, 7, 8, now, 5000, &e), CACHE_BUSY);
    cache_worker_died(getpid());
    assert_int_equal(cache_begin(z, 7, 8, now, 5000, &e), CACHE_LOCKED);
    tref_put(t);
}

static bool exists(const char *p) { return access(p, F_OK) == 0; }

static void touch(cache_zone_t *z, uint64_t h1, uint64_t h2, char *path, size_t n)
{
    cache_file_path(z, h1, h2, path, n);
    char dir[400];
    snprintf(dir, sizeof(dir), "%s", path);
    *strrchr(dir, '/') = '\0';
    mkdir(dir, 0700);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fclose(f);
}

static void test_lru_eviction_by_size(void **state)
{
    (void)state;
    tref_t *t = table_with_zone("b", "3k", "256k");
    cache_zone_t *z = cache_zone_of(t, 0);
    uint32_t inc = cache_zone_incarnation(z);
    uint64_t now = wall_now();
    char p[4][400];
    cache_entry_t e;
    for (uint64_t k = 1; k <= 3; k++) {
        touch(z, k << 56, k, p[k - 1], sizeof(p[0]));
        assert_int_equal(cache_begin(z, k << 56, k, now, 5000, &e), CACHE_LOCKED);
        cache_commit(z, inc, k << 56, k, 1000, now + 60000, 0);
        if (k == 2) /* entry 1 read again: entry 2 is now the least recently used */
            assert_int_equal(cache_begin(z, 1ull << 56, 1, now, 5000, &e), CACHE_FRESH);
    }
    touch(z, 4ull << 56, 4, p[3], sizeof(p[0]));
    assert_int_equal(cache_begin(z, 4ull << 56, 4, now, 5000, &e), CACHE_LOCKED);
    cache_commit(z, inc, 4ull << 56, 4, 1000, now + 60000, 0); /* 4000 > 3k: one goes */
    assert_int_equal(cache_begin(z, 1ull << 56, 1, now, 5000, &e), CACHE_FRESH);
    assert_int_equal(cache_begin(z, 3ull << 56, 3, now, 5000, &e), CACHE_FRESH);
    assert_int_equal(cache_begin(z, 4ull << 56, 4, now, 5000, &e), CACHE_FRESH);
    assert_false(exists(p[1]));            /* entry 2's file went with it */
    assert_true(exists(p[0]) && exists(p[2]) && exists(p[3]));
    cache_zone_stats_t s = cache_zone_stats("z");
    assert_int_equal(s.evictions, 1);
    assert_true(s.size <= 3072);
    tref_put(t);
}

static void test_full_index_evicts(void **state)
{
    (void)state;
    tref_t *t = table_with_zone("c", "1g", "256k");
    cache_zone_t *z = cache_zone_of(t, 0);
    uint32_t inc = cache_zone_incarnation(z);
    uint64_t nslots = cache_zone_stats("z").nslots;
    assert_true(nslots > 3000 && nslots < 4000); /* 256k at about 66 bytes an entry */
    uint64_t now = wall_now();
    cache_entry_t e;
    for (uint64_t k = 1; k <= nslots + 10; k++) {
        assert_int_equal(cache_begin(z, k * 0x9e3779b97f4a7c15ull, k, now, 5000, &e), CACHE_LOCKED);
        cache_commit(z, inc, k * 0x9e3779b97f4a7c15ull, k, 10, now + 60000, 0);
    }
    cache_zone_stats_t s = cache_zone_stats("z");
    assert_int_equal(s.entries, nslots);
    assert_int_equal(s.evictions, 10);
    /* the oldest went, the newest stayed */
    assert_int_equal(cache_begin(z, 1 * 0x9e3779b97f4a7c15ull, 1, now, 5000, &e), CACHE_LOCKED);
    assert_int_equal(cache_begin(z, (nslots + 10) * 0x9e3779b97f4a7c15ull, nslots + 10, now, 5000, &e), CACHE_FRESH);
    tref_put(t);
}

/* An entry file as the store filter writes it. */
static void write_entry(const char *zdir, const char *key, const char *site, const char *path, const char *body,
                        uint64_t h1, uint64_t h2)
{
    cache_file_head_t h;
    memset(&h, 0, sizeof(h));
    memcpy(h.magic, CACHE_FILE_MAGIC, 8);
    h.h1 = h1;
    h.h2 = h2;
    h.stored_ms = wall_now();
    h.expires_ms = h.stored_ms + 60000;
    const char *fields = "Content-Type: text/plain\r\n";
    h.key_len = (uint32_t)strlen(key);
    h.site_len = (uint32_t)strlen(site);
    h.path_len = (uint32_t)strlen(path);
    h.fields_len = (uint32_t)strlen(fields);
    h.head_len = (uint32_t)(sizeof(h) + h.key_len + h.site_len + h.path_len + h.fields_len);
    h.body_len = strlen(body);
    h.status = 200;
    char dir[400], file[440];
    snprintf(dir, sizeof(dir), "%s/%02x", zdir, (unsigned)(h1 >> 56));
    mkdir(dir, 0700);
    snprintf(file, sizeof(file), "%s/%016" PRIx64 "%016" PRIx64, dir, h1, h2);
    FILE *f = fopen(file, "w");
    assert_non_null(f);
    fwrite(&h, sizeof(h), 1, f);
    fputs(key, f);
    fputs(site, f);
    fputs(path, f);
    fputs(fields, f);
    fputs(body, f);
    fclose(f);
}

static void test_loader_and_purge(void **state)
{
    (void)state;
    char zdir[256], junk[320], tmpfile[320];
    snprintf(zdir, sizeof(zdir), "%s/d", fx_dir);
    mkdir(zdir, 0700);
    write_entry(zdir, "http://shop.test/a/1\ncoding:identity", "shop", "/a/1", "one", 0x11ull << 56, 1);
    write_entry(zdir, "http://shop.test/a/2\ncoding:identity", "shop", "/a/2", "two", 0x22ull << 56, 2);
    write_entry(zdir, "http://shop.test/b/3\ncoding:identity", "shop", "/b/3", "three", 0x33ull << 56, 3);
    write_entry(zdir, "http://other.test/a/4\ncoding:identity", "other", "/a/4", "four", 0x44ull << 56, 4);
    snprintf(junk, sizeof(junk), "%s/11/0123456789abcdef0123456789abcdef", zdir); /* not an entry */
    FILE *f = fopen(junk, "w");
    fputs("junk", f);
    fclose(f);
    snprintf(tmpfile, sizeof(tmpfile), "%s/tmp", zdir);
    mkdir(tmpfile, 0700);
    snprintf(tmpfile, sizeof(tmpfile), "%s/tmp/999999.1", zdir); /* a fill a crash left */
    f = fopen(tmpfile, "w");
    fclose(f);

    tref_t *t = table_with_zone("d", "1g", "1m");
    tref_t *old = W->table;
    W->table = t;
    assert_true(cache_zone_stats("z").loading);
    for (int i = 0; i < 100 && cache_zone_stats("z").loading; i++)
        cache_worker_tick();
    cache_zone_stats_t s = cache_zone_stats("z");
    assert_false(s.loading);
    assert_int_equal(s.entries, 4);
    assert_false(exists(junk));
    assert_false(exists(tmpfile));
    cache_zone_t *z = cache_zone_of(t, 0);
    cache_entry_t e;
    assert_int_equal(cache_begin(z, 0x22ull << 56, 2, wall_now(), 5000, &e), CACHE_FRESH);

    assert_int_equal(cache_purge(&t->t, "nosuchsite", NULL), -1);
    assert_int_equal(cache_purge(&t->t, "shop", "/a/"), 2);
    assert_int_equal(cache_zone_stats("z").entries, 2);
    assert_int_equal(cache_begin(z, 0x22ull << 56, 2, wall_now(), 5000, &e), CACHE_LOCKED);
    assert_int_equal(cache_begin(z, 0x33ull << 56, 3, wall_now(), 5000, &e), CACHE_FRESH);
    assert_int_equal(cache_purge(&t->t, "shop", NULL), 1);
    assert_int_equal(cache_begin(z, 0x44ull << 56, 4, wall_now(), 5000, &e), CACHE_FRESH); /* another site's */
    W->table = old;
    tref_put(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lock_commit_expire),
        cmocka_unit_test(test_lru_eviction_by_size),
        cmocka_unit_test(test_full_index_evicts),
        cmocka_unit_test(test_loader_and_purge),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}

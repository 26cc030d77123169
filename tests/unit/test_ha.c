/*
 * test_ha.c - the replication snapshot (common/ha.c): a snapshot of one
 * store applied to another makes their replicated state equal (the same
 * rule table bytes, sites, certificates, ACME accounts, ticket keys and
 * change serial) and leaves node-local state alone; a damaged message is
 * refused whole and changes nothing.
 */
#include "proxyctl_all.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

static char dir[64], path_a[128], path_b[128];
static store_t A, B;

static const char site_yaml[] = "site: shop\n"
                                "hosts: [shop.example.com]\n"
                                "upstreams:\n"
                                "  app:\n"
                                "    servers:\n"
                                "      - address: \"127.0.0.1:9001\"\n"
                                "routes:\n"
                                "  - match: {path_prefix: /}\n"
                                "    upstream: app\n";

static void open_store(store_t *s, const char *path)
{
    int from;
    assert_int_equal(store_open(s, path, STORE_CREATE), 0);
    assert_int_equal(store_migrate(s, &from), 0);
}

/* Store A: one compiled generation with its sources, a certificate, an
 * ACME account, two ticket keys; its own node-local settings and role. */
static void fill_a(void)
{
    arena_t a;
    diag_t d = {0};
    arena_init(&a, 0);
    cfg_global_t *g = config_global(&a, "proxy.yaml", NULL, &d);
    cfg_site_t *s = config_site(&a, "shop.yaml", site_yaml, &d);
    assert_non_null(g);
    assert_non_null(s);
    uint8_t *blob;
    size_t len;
    int64_t gen;
    assert_int_equal(compile_table(g, &s, 1, &blob, &len), 0);
    assert_int_equal(store_begin(&A), 0);
    assert_int_equal(store_add_generation(&A, blob, len, "add-site shop.yaml", "", &gen), 0);
    free(blob);
    char sql[1024];
    snprintf(sql, sizeof(sql),
             "INSERT INTO generation_sites VALUES (%lld, 'shop', 'yaml text', 'shop.yaml');"
             "INSERT INTO sites VALUES ('shop', 'yaml text', 'shop.yaml', 'abc', 1700000000);"
             "INSERT INTO certificates VALUES ('shop', 'shop.example.com', 'CERT', '', 'KEY', 1, 2, 'self-signed', "
             "'me', 3);"
             "INSERT INTO acme_accounts VALUES ('https://acme/dir', 'ops@x', 'ACCOUNTKEY', 'kid1', 5);"
             "INSERT INTO ticket_keys VALUES (7, zeroblob(16), randomblob(64), 10, 20);"
             "INSERT INTO ticket_keys VALUES (9, randomblob(16), randomblob(64), 11, 21);"
             "INSERT INTO settings VALUES ('global_yaml', 'workers: 2');",
             (long long)gen);
    assert_int_equal(store_exec(&A, sql), 0);
    assert_int_equal(store_commit(&A), 0);
    assert_int_equal(ha_set_role(&A, "MASTER", "test"), 0);
    arena_free(&a);
    diag_free(&d);
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/proxyd-ha-XXXXXX");
    if (mkdtemp(dir) == NULL)
        return -1;
    snprintf(path_a, sizeof(path_a), "%s/a.db", dir);
    snprintf(path_b, sizeof(path_b), "%s/b.db", dir);
    open_store(&A, path_a);
    open_store(&B, path_b);
    fill_a();
    assert_int_equal(store_exec(&B, "INSERT INTO settings VALUES ('global_yaml', 'workers: 2  # b');"
                                    "INSERT INTO ha_keys VALUES ('node', 'BCERT', 'BKEY', 'lb1', 1);"
                                    "INSERT INTO sites VALUES ('old', 'y', 's', 'd', 1)"),
                     0);
    assert_int_equal(ha_set_role(&B, "BACKUP", "test"), 0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    store_close(&A);
    store_close(&B);
    char cmd[200];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    return system(cmd);
}

/* A digest of what a query returns, to compare two stores. */
static void rows_digest(store_t *s, const char *sql, char hex[65])
{
    str_buf_t b = {0};
    sqlite3_stmt *q = store_prepare(s, sql);
    assert_non_null(q);
    while (sqlite3_step(q) == SQLITE_ROW)
        for (int i = 0; i < sqlite3_column_count(q); i++) {
            str_append(&b, sqlite3_column_blob(q, i), (size_t)sqlite3_column_bytes(q, i));
            str_append(&b, "|", 1);
        }
    sqlite3_finalize(q);
    store_digest_hex(b.p ? b.p : "", b.len, hex);
    str_buf_free(&b);
}

static const char *const replicated[] = {
    "SELECT digest, blob FROM generations WHERE active = 1",
    "SELECT name, yaml, source FROM generation_sites WHERE generation = (SELECT id FROM generations WHERE active = 1)",
    "SELECT * FROM sites ORDER BY name",
    "SELECT * FROM certificates ORDER BY site",
    "SELECT * FROM acme_accounts ORDER BY directory",
    "SELECT * FROM ticket_keys ORDER BY id",
    "SELECT serial FROM ha_state",
};

static void assert_same(bool same)
{
    for (size_t i = 0; i < ARRAY_LEN(replicated); i++) {
        char ha[65], hb[65];
        rows_digest(&A, replicated[i], ha);
        rows_digest(&B, replicated[i], hb);
        if (same)
            assert_string_equal(ha, hb);
        else if (strcmp(ha, hb) != 0)
            return;
    }
    if (!same)
        fail_msg("the stores were expected to differ");
}

static void snapshot(str_buf_t *out, bool full)
{
    out->len = 0;
    assert_int_equal(ha_snapshot_encode(&A, "lb0", full, out), 0);
}

/* HA_SEED_DIR=dir: write the messages used here as fuzz seeds. */
static void seed(const char *name, const str_buf_t *m)
{
    const char *d = getenv("HA_SEED_DIR");
    if (d == NULL)
        return;
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", d, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fwrite(m->p, 1, m->len, f);
    fclose(f);
}

static void test_apply_makes_equal(void **state)
{
    (void)state;
    str_buf_t m = {0};
    char err[300];
    bool reload;
    assert_same(false);
    snapshot(&m, false);
    seed("meta", &m);
    snapshot(&m, true);
    seed("full", &m);
    ha_meta_t meta;
    assert_int_equal(ha_snapshot_check((const uint8_t *)m.p, m.len, &meta, err, sizeof(err)), 0);
    assert_string_equal(meta.node, "lb0");
    assert_string_equal(meta.role, "MASTER");
    assert_int_equal(ha_snapshot_apply(&B, (const uint8_t *)m.p, m.len, "ha sync from lb0", NULL, &reload, err, sizeof(err)), 0);
    assert_true(reload);
    assert_same(true);
    /* node-local state stays: settings, HA keys, role */
    char hex[65], *gy;
    rows_digest(&B, "SELECT cert_pem, key_pem, subject FROM ha_keys", hex);
    assert_int_equal(store_get_setting(&B, "global_yaml", &gy), 0);
    assert_string_equal(gy, "workers: 2  # b");
    free(gy);
    ha_state_t s;
    assert_int_equal(ha_state_get(&B, &s), 0);
    assert_string_equal(s.role, "BACKUP");
    assert_string_equal(s.synced_from, "lb0");
    /* the generation keeps this node's settings and names its origin */
    sqlite3_stmt *q = store_prepare(&B, "SELECT comment, global_yaml FROM generations WHERE active = 1");
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    assert_non_null(strstr((const char *)sqlite3_column_text(q, 0), "replicated from lb0 generation"));
    assert_string_equal((const char *)sqlite3_column_text(q, 1), "workers: 2  # b");
    sqlite3_finalize(q);
    /* applied again: no second generation */
    int64_t gen1, gen2;
    char d1[65], d2[65];
    ha_active(&B, &gen1, d1);
    assert_int_equal(ha_snapshot_apply(&B, (const uint8_t *)m.p, m.len, "ha sync from lb0", NULL, &reload, err, sizeof(err)), 0);
    ha_active(&B, &gen2, d2);
    assert_int_equal(gen1, gen2);
    assert_same(true);
    str_buf_free(&m);
}

static void test_serial_counts_changes(void **state)
{
    (void)state;
    ha_state_t s0, s1;
    assert_int_equal(ha_state_get(&A, &s0), 0);
    assert_true(s0.serial > 0);
    assert_int_equal(store_exec(&A, "UPDATE certificates SET updated = updated + 1"), 0);
    assert_int_equal(ha_state_get(&A, &s1), 0);
    assert_int_equal(s1.serial, s0.serial + 1);
    /* the role is not replicated state */
    assert_int_equal(ha_set_role(&A, "MASTER", "test"), 0);
    assert_int_equal(ha_state_get(&A, &s0), 0);
    assert_int_equal(s0.serial, s1.serial);
}

static void test_meta_only(void **state)
{
    (void)state;
    str_buf_t m = {0};
    char err[300];
    bool reload;
    ha_meta_t meta;
    snapshot(&m, false);
    assert_int_equal(ha_snapshot_check((const uint8_t *)m.p, m.len, &meta, err, sizeof(err)), 0);
    assert_int_equal(strlen(meta.digest), 64);
    assert_int_equal(ha_snapshot_apply(&B, (const uint8_t *)m.p, m.len, "t", NULL, &reload, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "not a full snapshot"));
    str_buf_free(&m);
}

/* Every truncation and every single-byte change of a full snapshot is
 * refused, and B is left exactly as it was. */
static void test_damage_refused(void **state)
{
    (void)state;
    str_buf_t m = {0};
    char err[300];
    bool reload;
    snapshot(&m, true);
    assert_same(false);
    for (size_t n = 0; n < m.len; n++)
        assert_int_equal(ha_snapshot_apply(&B, (const uint8_t *)m.p, n, "t", NULL, &reload, err, sizeof(err)), -1);
    for (size_t i = 0; i < m.len; i++) {
        m.p[i] ^= 0x20;
        assert_int_equal(ha_snapshot_apply(&B, (const uint8_t *)m.p, m.len, "t", NULL, &reload, err, sizeof(err)), -1);
        m.p[i] ^= 0x20;
    }
    assert_same(false);
    str_buf_free(&m);
}

/* With the body digest repaired after each change, the record checks are
 * what stands: no change may crash, and whatever is accepted leaves B with
 * an active generation that verifies. */
static void test_structural_damage(void **state)
{
    (void)state;
    str_buf_t m = {0};
    char err[300];
    bool reload;
    snapshot(&m, true);
    uint32_t seed = 12345;
    int refused = 0;
    for (int round = 0; round < 3000; round++) {
        str_buf_t c = {0};
        str_append(&c, m.p, m.len);
        for (int k = 0; k < 1 + round % 3; k++) {
            seed = seed * 1103515245 + 12345;
            size_t at = HA_HDR_LEN + (seed >> 8) % (c.len - HA_HDR_LEN);
            c.p[at] = (char)(seed >> 3);
        }
        SHA256((const uint8_t *)c.p + HA_HDR_LEN, c.len - HA_HDR_LEN, (uint8_t *)c.p + 24);
        if (ha_snapshot_apply(&B, (const uint8_t *)c.p, c.len, "t", NULL, &reload, err, sizeof(err)) < 0) {
            refused++;
        } else {
            uint8_t *blob;
            size_t len;
            int64_t id;
            rt_table_t t;
            char why[200];
            assert_int_equal(store_active(&B, &id, &blob, &len), 0);
            assert_int_equal(rt_open(&t, blob, len, why, sizeof(why)), 0);
            free(blob);
        }
        str_buf_free(&c);
    }
    assert_true(refused > 0);
    str_buf_free(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_apply_makes_equal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_serial_counts_changes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_meta_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_damage_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_structural_damage, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * test_ruletable.c - the writer and the verifying reader: round trip, and
 * refusal of every truncation, every header corruption, and structural
 * corruptions made behind a recomputed checksum (the case a bug in a writer
 * would produce).
 */
#include "proxyctl_all.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

static const char *SITE =
    "site: shop\nhosts: [shop.example.com, \"*.shop.example.com\"]\n"
    "upstreams:\n  app:\n    servers: [{address: \"127.0.0.1:3001\"}, {address: \"unix:/run/app.sock\"}]\n"
    "routes:\n  - match: {path_prefix: /api/}\n    upstream: app\n    allow: [10.0.0.0/8]\n"
    "    headers: {request: {set: {X-Id: $request_id}}}\n"
    "  - match: {path_exact: /x}\n    return: {status: 204}\n"
    "  - match: {path_regex: '^/r'}\n    redirect: {to: /y}\n";

static uint8_t *build(size_t *len)
{
    arena_t a;
    diag_t d = {0};
    arena_init(&a, 0);
    cfg_global_t *g = config_global(&a, "p.yaml", NULL, &d);
    cfg_site_t *s = config_site(&a, "s.yaml", SITE, &d);
    assert_non_null(g);
    /* proxyctl refuses rate_limit_zones until proxyd rate-limits, but the
     * format carries the section: set the zone in the model directly. */
    cfg_rate_zone_t zone = {.pos = {"p.yaml", 1, 1}, .name = "api", .rate = "5r/s", .interval_ns = 200000000, .key = RT_RKEY_CLIENT_IP};
    g->rate_zones = &zone;
    g->nrate_zones = 1;
    assert_non_null(s);
    check_sites(g, &s, 1, &d);
    assert_int_equal(d.errors, 0);
    uint8_t *blob;
    assert_int_equal(compile_table(g, &s, 1, &blob, len), 0);
    diag_free(&d);
    arena_free(&a);
    return blob;
}

static void rehash(uint8_t *b, size_t len)
{
    rt_header_t *h = (rt_header_t *)b;
    (void)h;
    rt_checksum(b, len, b + offsetof(rt_header_t, sha256));
}

static void test_roundtrip(void **state)
{
    (void)state;
    size_t len;
    uint8_t *b = build(&len);
    rt_table_t t;
    char why[256];
    assert_int_equal(rt_open(&t, b, len, why, sizeof(why)), 0);
    assert_int_equal(t.nsites, 1);
    assert_string_equal(rt_cstr(&t, t.sites[0].name), "shop");
    assert_int_equal(t.sites[0].routes.count, 3);
    assert_int_equal(t.servers[1].sa.kind, RT_ADDR_UNIX);
    assert_int_equal(t.nrate_zones, 1);
    free(b);
}

static void test_truncations(void **state)
{
    (void)state;
    size_t len;
    uint8_t *b = build(&len);
    char why[256];
    for (size_t n = 0; n < len; n++) {
        uint8_t *c = aligned_alloc(8, len);
        memcpy(c, b, n);
        rt_table_t t;
        assert_int_equal(rt_open(&t, c, n, why, sizeof(why)), -1);
        free(c);
    }
    free(b);
}

static void test_every_byte_flip(void **state)
{
    (void)state;
    size_t len;
    uint8_t *b = build(&len);
    char why[256];
    for (size_t i = 0; i < len; i++) {
        b[i] ^= 0x5a;
        rt_table_t t;
        if (rt_open(&t, b, len, why, sizeof(why)) == 0)
            fail_msg("flipping byte %zu of %zu went unnoticed", i, len);
        b[i] ^= 0x5a;
    }
    free(b);
}

/* Corruptions with a valid checksum: only the structural checks stand. */
static void corrupt_and_expect(uint8_t *b, size_t len, void *field, size_t size, uint64_t value, const char *want)
{
    uint8_t keep[8];
    memcpy(keep, field, size);
    memcpy(field, &value, size);
    rehash(b, len);
    rt_table_t t;
    char why[256];
    assert_int_equal(rt_open(&t, b, len, why, sizeof(why)), -1);
    if (strstr(why, want) == NULL)
        fail_msg("expected '%s' in '%s'", want, why);
    memcpy(field, keep, size);
    rehash(b, len);
    assert_int_equal(rt_open(&t, b, len, why, sizeof(why)), 0);
}

static void test_structural(void **state)
{
    (void)state;
    size_t len;
    uint8_t *b = build(&len);
    rt_table_t t;
    char why[256];
    assert_int_equal(rt_open(&t, b, len, why, sizeof(why)), 0);
    rt_site_t *s = (rt_site_t *)t.sites;
    rt_route_t *r = (rt_route_t *)t.routes;
    rt_server_t *sv = (rt_server_t *)t.servers;
    rt_path_t *p = (rt_path_t *)t.paths;
    rt_host_t *h = (rt_host_t *)t.hosts;
    corrupt_and_expect(b, len, &s->name.off, 4, 0xfffffff0, "site 0: string out of bounds");
    corrupt_and_expect(b, len, &s->routes.count, 4, 1000, "site 0: span out of bounds");
    corrupt_and_expect(b, len, &r->upstream, 4, 7, "upstream is not one of its site's");
    corrupt_and_expect(b, len, &r->policy, 4, 99, "route 0: index out of range");
    corrupt_and_expect(b, len, &r->match, 1, 9, "route 0: unknown enum value");
    corrupt_and_expect(b, len, &sv->weight, 4, 0, "zero weight");
    corrupt_and_expect(b, len, &p->refs.first, 4, 1u << 30, "span out of bounds");
    corrupt_and_expect(b, len, &s->exact_paths.count, 4, 3, "not a power of two");
    for (uint32_t i = 0; i < t.nhosts; i++)
        if (h[i].site != RT_NONE) {
            corrupt_and_expect(b, len, &h[i].hash, 4, h[i].hash + 1, "hash does not match");
            break;
        }
    rt_header_t *hd = (rt_header_t *)b;
    corrupt_and_expect(b, len, &hd->sections[RT_SEC_ROUTES].off, 4, hd->sections[RT_SEC_ROUTES].off + 4, "section");
    corrupt_and_expect(b, len, &hd->sections[RT_SEC_SITES].count, 4, 100000, "section");
    /* A string whose terminating NUL is overwritten. */
    uint8_t *strs = b + hd->sections[RT_SEC_STRINGS].off;
    corrupt_and_expect(b, len, strs + s->name.off + s->name.len, 1, 'x', "string out of bounds");
    free(b);
}

static void test_header_refusals(void **state)
{
    (void)state;
    size_t len;
    uint8_t *b = build(&len);
    rt_table_t t;
    char why[256];
    rt_header_t *h = (rt_header_t *)b;
    h->version = 99;
    assert_int_equal(rt_open(&t, b, len, why, sizeof(why)), -1);
    assert_non_null(strstr(why, "unsupported format version 99"));
    h->version = RT_VERSION;
    h->magic[0] = 'X';
    assert_int_equal(rt_open(&t, b, len, why, sizeof(why)), -1);
    assert_non_null(strstr(why, "bad magic"));
    h->magic[0] = 'P';
    b[len - 1] ^= 1;
    assert_int_equal(rt_open(&t, b, len, why, sizeof(why)), -1);
    assert_non_null(strstr(why, "checksum mismatch"));
    free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),   cmocka_unit_test(test_truncations), cmocka_unit_test(test_every_byte_flip),
        cmocka_unit_test(test_structural),  cmocka_unit_test(test_header_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * test_compile.c - YAML front end, semantic checks, compiler and matcher:
 * diagnostics with their positions, byte-identical output, and the
 * first-match-wins semantics of the route index against a brute-force walk.
 */
#include "proxyctl_all.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

static const char *SHOP =
    "site: shop\n"
    "hosts: [shop.example.com, \"*.shop.example.com\"]\n"
    "upstreams:\n"
    "  app:\n"
    "    servers:\n"
    "      - {address: \"127.0.0.1:3001\", weight: 5}\n"
    "      - {address: \"[::1]:3002\", backup: true}\n"
    "routes:\n"
    "  - match: {path_regex: '(?i)\\.(git|env)$'}\n"
    "    return: {status: 404}\n"
    "  - match: {path_prefix: /api/, methods: [GET, POST]}\n"
    "    upstream: app\n"
    "    strip_prefix: true\n"
    "  - match: {path_exact: /old}\n"
    "    redirect: {to: \"https://shop.example.com/new\", status: 308}\n"
    "  - match: {path_prefix: /api/v2/}\n"
    "    return: {status: 410}\n"
    "  - match: {path_prefix: /}\n"
    "    upstream: app\n";

typedef struct {
    arena_t a;
    diag_t d;
    uint8_t *blob;
    size_t len;
    rt_table_t t;
} fixture_t;

static int compile_texts(fixture_t *f, const char *global, const char *const *texts, size_t n)
{
    arena_init(&f->a, 0);
    memset(&f->d, 0, sizeof(f->d));
    cfg_global_t *g = config_global(&f->a, "proxy.yaml", global, &f->d);
    cfg_site_t *sites[16];
    for (size_t i = 0; i < n; i++) {
        char *name = arena_printf(&f->a, "site%zu.yaml", i);
        sites[i] = config_site(&f->a, name, texts[i], &f->d);
    }
    if (g == NULL || f->d.errors)
        return -1;
    check_sites(g, sites, n, &f->d);
    if (f->d.errors)
        return -1;
    char why[256];
    if (compile_table(g, sites, n, &f->blob, &f->len) < 0 || rt_open(&f->t, f->blob, f->len, why, sizeof(why)) < 0)
        return -1;
    return 0;
}

static void fixture_free(fixture_t *f)
{
    free(f->blob);
    diag_free(&f->d);
    arena_free(&f->a);
}

/* Render diagnostics as the CLI prints them, into a string. */
static char *diag_text(const diag_t *d)
{
    static char buf[8192];
    FILE *m = fmemopen(buf, sizeof(buf), "w");
    diag_print(d, m);
    fclose(m);
    return buf;
}

static void expect_diag(const char *text, const char *line)
{
    fixture_t f = {0};
    const char *t[] = {text};
    assert_int_equal(compile_texts(&f, NULL, t, 1), -1);
    char *out = diag_text(&f.d);
    if (strstr(out, line) == NULL)
        fail_msg("expected diagnostic\n  %s\ngot\n%s", line, out);
    fixture_free(&f);
}

static void test_diagnostics(void **state)
{
    (void)state;
    expect_diag("site: a\nhosts: [a.example.com]\nupstreem: x\n",
                "site0.yaml:3:1: error: unknown key 'upstreem' (did you mean 'upstreams'?)");
    expect_diag("site: a\nhosts: [a.example.com]\nroutes:\n  - match: {path_prefix: /}\n    upstream: ap\n"
                "upstreams:\n  app: {servers: [{address: \"127.0.0.1:1\"}]}\n",
                "site0.yaml:5:15: error: undefined upstream 'ap' (did you mean 'app'?)");
    expect_diag("site: a\nhosts: [a.example.com]\nroutes:\n  - match: {path_regex: '(abc'}\n    return: {status: 404}\n",
                "site0.yaml:4:30: error: invalid regex '(abc': missing closing parenthesis at offset 4");
    expect_diag("site: a\nhosts: [a.example.com]\nroutes:\n  - match: {path_exact: /x}\n    strip_prefix: true\n"
                "    return: {status: 200}\n",
                "site0.yaml:5:19: error: strip_prefix requires a path_prefix match");
    expect_diag("site: a\nhosts: [a.example.com]\nroutes:\n  - allow: [10.0.0.0/33]\n    return: {status: 200}\n",
                "site0.yaml:4:13: error: invalid CIDR '10.0.0.0/33': prefix length must be 0..32");
    expect_diag("site: a\nhosts: [a.example.com]\nroutes:\n  - return: {status: 700}\n",
                "site0.yaml:4:22: error: invalid status code '700' (expected 100..599)");
    expect_diag("site: a\nhosts: [a.example.com]\nroutes:\n  - timeouts: {read: 5x}\n    return: {status: 200}\n",
                "site0.yaml:4:22: error: invalid duration '5x' for 'read': unknown unit (use ms, s, m, h or d)");
    expect_diag("site: a\nsite: b\n", "site0.yaml:2:1: error: duplicate key 'site' (first defined at line 1)");
}

/* Keys proxyd does not execute yet are refused at the key, values unread
 * (SPEC §9; config.c unsupported_keys). */
/* cache: every key checked where it is written, with the zone's bounds. */
static void test_cache_keys(void **state)
{
    (void)state;
    expect_diag("site: a\nhosts: [a.example.com]\nroutes:\n  - return: {status: 200}\n    cache: 1\n",
                "site0.yaml:5:12: error: 'cache' must be a mapping, not a scalar");
    expect_diag("site: a\nhosts: [a.example.com]\nroutes:\n  - return: {status: 200}\n    cache: {zone: c, key_headers: [\"a b\"]}\n",
                "site0.yaml:5:36: error: invalid header name 'a b' in cache.key_headers");
    fixture_t f = {0};
    assert_int_equal(compile_texts(&f, "workers: 2\ncache_zones: {c: {path: /c, memory: 2g}}\nrate_limit_zones: {api: {rate: x}}\n",
                                   NULL, 0),
                     -1);
    assert_string_equal(diag_text(&f.d), "proxy.yaml:2:18: error: cache zone 'c': memory must be between 256k and 1g\n"
                                         "proxy.yaml:3:32: error: invalid rate 'x': expected a rate like 10r/s or 600r/m\n");
    fixture_free(&f);
}

/* compression: every key checked where it is written; a clean one compiles
 * into the site record (flags, levels, min_length, lower-cased types). */
static void test_compression(void **state)
{
    (void)state;
    expect_diag("site: a\nhosts: [a.example.com]\ncompression: {gzip: maybe}\n",
                "site0.yaml:3:21: error: 'gzip' must be true or false, not 'maybe'");
    expect_diag("site: a\nhosts: [a.example.com]\ncompression: {brotli: true, brotli_level: 12}\n",
                "site0.yaml:3:43: error: 'brotli_level' must be a whole number from 0 to 11, not '12'");
    expect_diag("site: a\nhosts: [a.example.com]\ncompression: {zstd: true, types: [text/html, text/HTML]}\n",
                "site0.yaml:3:46: error: media type 'text/HTML' is listed twice in 'types' (first at 3:35)");
    expect_diag("site: a\nhosts: [a.example.com]\ncompression: {gzip: true, types: [\"text/html;q=1\"]}\n",
                "site0.yaml:3:35: error: invalid media type 'text/html;q=1' in 'types': write type/subtype without "
                "parameters; it matches whatever parameters a response has");
    expect_diag("site: a\nhosts: [a.example.com]\ncompression: {gzip: true, levle: 3}\n",
                "site0.yaml:3:27: error: unknown key 'levle' (did you mean 'level'?)");
    fixture_t f = {0};
    const char *site = "site: a\nhosts: [a.example.com]\nroutes:\n  - match: {path_prefix: /}\n    return: {status: 200}\n"
                       "compression: {gzip: true, zstd: true, level: 6, zstd_level: 9, min_length: 1k, types: [Text/*]}\n";
    assert_int_equal(compile_texts(&f, NULL, &site, 1), 0);
    const rt_site_t *s = &f.t.sites[0];
    assert_int_equal(s->flags & RT_SF_COMPRESS, RT_SF_GZIP | RT_SF_ZSTD);
    assert_int_equal(s->gzip_level, 6);
    assert_int_equal(rt_site_zstd_level(s), 9);
    assert_int_equal(rt_site_brotli_level(s), 4);
    assert_int_equal(s->compress_min_length, 1024);
    assert_int_equal(s->compress_types.count, 1);
    assert_string_equal(rt_cstr(&f.t, f.t.strlist[s->compress_types.first]), "text/*");
    fixture_free(&f);
    /* no types: the default list; no compression: no types at all */
    site = "site: a\nhosts: [a.example.com]\nroutes:\n  - match: {path_prefix: /}\n    return: {status: 200}\n"
           "compression: {brotli: true}\n";
    assert_int_equal(compile_texts(&f, NULL, &site, 1), 0);
    assert_int_equal(f.t.sites[0].compress_types.count, 9);
    assert_int_equal(f.t.sites[0].compress_min_length, 256);
    fixture_free(&f);
    site = "site: a\nhosts: [a.example.com]\nroutes:\n  - match: {path_prefix: /}\n    return: {status: 200}\n";
    assert_int_equal(compile_texts(&f, NULL, &site, 1), 0);
    assert_int_equal(f.t.sites[0].flags & RT_SF_COMPRESS, 0);
    assert_int_equal(f.t.sites[0].compress_types.count, 0);
    fixture_free(&f);
}

static void test_all_errors_reported(void **state)
{
    (void)state;
    fixture_t f = {0};
    const char *t[] = {"site: a\nhosts: [a.example.com]\nbogus: 1\nroutes:\n  - return: {status: 99}\n  - upstream: nope\n"};
    assert_int_equal(compile_texts(&f, NULL, t, 1), -1);
    assert_int_equal(f.d.errors, 3);
    fixture_free(&f);
}

static void test_cross_site(void **state)
{
    (void)state;
    fixture_t f = {0};
    const char *t[] = {"site: a\ndefault: true\nhosts: [x.example.com]\n", "site: b\ndefault: true\nhosts: [X.example.com]\n"};
    assert_int_equal(compile_texts(&f, NULL, t, 2), -1);
    char *out = diag_text(&f.d);
    assert_non_null(strstr(out, "site1.yaml:3:9: error: host 'x.example.com' is already claimed by site 'a' (site0.yaml:3:9)"));
    assert_non_null(strstr(out, "site1.yaml:2:10: error: site 'b' is also marked default"));
    fixture_free(&f);
}

static void test_byte_identical(void **state)
{
    (void)state;
    fixture_t a = {0}, b = {0};
    const char *t1[] = {SHOP, "site: blog\nhosts: [blog.example.com]\nroutes:\n  - return: {status: 200}\n"};
    const char *t2[] = {t1[1], t1[0]};
    assert_int_equal(compile_texts(&a, NULL, t1, 2), 0);
    assert_int_equal(compile_texts(&b, NULL, t2, 2), 0);
    /* Input order must not matter except for the recorded source names. */
    assert_int_equal(a.t.nsites, 2);
    assert_string_equal(rt_cstr(&a.t, a.t.sites[0].name), "blog");
    fixture_t c = {0};
    assert_int_equal(compile_texts(&c, NULL, t1, 2), 0);
    assert_int_equal(a.len, c.len);
    assert_memory_equal(a.blob, c.blob, a.len);
    fixture_free(&a);
    fixture_free(&b);
    fixture_free(&c);
}

static int regex_cb(void *ud, uint32_t r, const char *path, size_t n)
{
    const rt_table_t *t = ud;
    int code;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)rt_cstr(t, t->routes[r].path), PCRE2_ZERO_TERMINATED, 0, &code, &off, NULL);
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    int rc = pcre2_match(re, (PCRE2_SPTR)path, n, 0, 0, md, NULL);
    pcre2_match_data_free(md);
    pcre2_code_free(re);
    return rc >= 0;
}

static uint32_t match(const rt_table_t *t, const char *host, const char *method, const char *path, int *status)
{
    uint32_t s = route_site(t, host, strlen(host));
    if (s == RT_NONE) {
        *status = 404;
        return RT_NONE;
    }
    route_result_t res;
    route_match(t, s, method, strlen(method), path, strlen(path), regex_cb, (void *)t, &res);
    *status = res.status;
    return res.route == RT_NONE ? RT_NONE : res.route - t->sites[s].routes.first + 1;
}

static void test_routing(void **state)
{
    (void)state;
    fixture_t f = {0};
    const char *t[] = {SHOP};
    assert_int_equal(compile_texts(&f, NULL, t, 1), 0);
    int st;
    assert_int_equal(match(&f.t, "shop.example.com", "GET", "/.ENV", &st), 1);
    assert_int_equal(match(&f.t, "SHOP.example.com:8080", "GET", "/api/users", &st), 2);
    assert_int_equal(match(&f.t, "a.b.shop.example.com", "POST", "/api/v2/x", &st), 2); /* first match wins */
    assert_int_equal(match(&f.t, "shop.example.com", "DELETE", "/api/v2/x", &st), 4);
    assert_int_equal(match(&f.t, "shop.example.com", "GET", "/old", &st), 3);
    assert_int_equal(match(&f.t, "shop.example.com", "GET", "/older", &st), 5);
    assert_int_equal(match(&f.t, "shop.example.com.", "GET", "/", &st), 5);
    assert_int_equal(match(&f.t, "example.com", "GET", "/", &st), RT_NONE);
    assert_int_equal(st, 404);
    fixture_free(&f);
}

static void test_method_not_allowed(void **state)
{
    (void)state;
    fixture_t f = {0};
    const char *t[] = {"site: a\nhosts: [a.example.com]\nroutes:\n  - match: {path_prefix: /api/, methods: [GET, HEAD]}\n"
                       "    return: {status: 200}\n  - match: {path_exact: /api/x, methods: [PUT]}\n    return: {status: 201}\n"};
    assert_int_equal(compile_texts(&f, NULL, t, 1), 0);
    uint32_t s = route_site(&f.t, "a.example.com", 13);
    route_result_t res;
    route_match(&f.t, s, "POST", 4, "/api/x", 6, regex_cb, &f.t, &res);
    assert_int_equal(res.status, 405);
    assert_int_equal(res.allow, RT_M_GET | RT_M_HEAD | RT_M_PUT);
    route_match(&f.t, s, "BREW", 4, "/api/x", 6, regex_cb, &f.t, &res);
    assert_int_equal(res.status, 405);
    fixture_free(&f);
}

/* The index must agree with a plain walk in file order on every path. */
static void test_index_matches_walk(void **state)
{
    (void)state;
    static const char *const paths[] = {"/", "/a", "/a/", "/a/b", "/ab", "/a/b/c", "/b", "/b/", "/c", "/a/bc", "/x"};
    str_buf_t y = {0};
    str_printf(&y, "site: a\nhosts: [a.example.com]\nroutes:\n");
    unsigned seed = 12345;
    for (int i = 0; i < 40; i++) {
        seed = seed * 1103515245 + 12345;
        const char *p = paths[(seed >> 16) % ARRAY_LEN(paths)];
        const char *kind = (seed >> 8) % 3 == 0 ? "path_exact" : "path_prefix";
        str_printf(&y, "  - match: {%s: \"%s\"%s}\n    return: {status: %d}\n", kind, p,
                   (seed >> 4) % 4 == 0 ? ", methods: [POST]" : "", 200 + i);
    }
    str_append(&y, "", 1);
    fixture_t f = {0};
    const char *t[] = {(const char *)y.p};
    assert_int_equal(compile_texts(&f, NULL, t, 1), 0);
    const rt_site_t *s = &f.t.sites[0];
    const char *methods[] = {"GET", "POST"};
    for (size_t pi = 0; pi < ARRAY_LEN(paths); pi++) {
        for (int m = 0; m < 2; m++) {
            route_result_t res;
            route_match(&f.t, 0, methods[m], strlen(methods[m]), paths[pi], strlen(paths[pi]), NULL, NULL, &res);
            uint32_t want_r = RT_NONE;
            for (uint32_t k = 0; k < s->routes.count && want_r == RT_NONE; k++) {
                const rt_route_t *r = &f.t.routes[s->routes.first + k];
                const char *rp = rt_cstr(&f.t, r->path);
                int pm = r->match == RT_MATCH_EXACT ? strcmp(rp, paths[pi]) == 0 : strncmp(rp, paths[pi], strlen(rp)) == 0;
                if (pm && (r->methods == RT_M_ALL || (r->methods & rt_method_bit(methods[m], strlen(methods[m])))))
                    want_r = s->routes.first + k;
            }
            assert_int_equal(res.route, want_r);
        }
    }
    str_buf_free(&y);
    fixture_free(&f);
}

static void test_warning_shadowed(void **state)
{
    (void)state;
    fixture_t f = {0};
    const char *t[] = {"site: a\nhosts: [a.example.com]\nroutes:\n  - match: {path_prefix: /api/}\n    return: {status: 200}\n"
                       "  - match: {path_exact: /api/x}\n    return: {status: 201}\n"};
    assert_int_equal(compile_texts(&f, NULL, t, 1), 0);
    assert_int_equal(f.d.warnings, 1);
    assert_non_null(strstr(diag_text(&f.d), "site0.yaml:6:5: warning: route can never match (shadowed by line 4)"));
    fixture_free(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_diagnostics),      cmocka_unit_test(test_all_errors_reported),
        cmocka_unit_test(test_cross_site),       cmocka_unit_test(test_byte_identical),
        cmocka_unit_test(test_routing),          cmocka_unit_test(test_method_not_allowed),
        cmocka_unit_test(test_index_matches_walk), cmocka_unit_test(test_warning_shadowed),
        cmocka_unit_test(test_cache_keys),
        cmocka_unit_test(test_compression),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

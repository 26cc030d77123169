/*
 * test_route.c - route_match fails closed: a regex match that cannot be
 * decided (the callback returns -1) counts as a match of a `return` route
 * and ends matching with 500 on any other route that takes the method,
 * never falling through to a later route.  Scripted callbacks pin the rule;
 * a PCRE2 callback with the limits of route.h shows (a+)+$ hitting them.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "proxyctl_all.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <pcre2.h>

typedef struct {
    arena_t a;
    diag_t d;
    uint8_t *blob;
    size_t len;
    rt_table_t t;
} fixture_t;

static void compile_one(fixture_t *f, const char *yaml)
{
    arena_init(&f->a, 0);
    memset(&f->d, 0, sizeof(f->d));
    cfg_global_t *g = config_global(&f->a, "proxy.yaml", NULL, &f->d);
    cfg_site_t *s = config_site(&f->a, "site.yaml", yaml, &f->d);
    assert_non_null(g);
    assert_non_null(s);
    check_sites(g, &s, 1, &f->d);
    assert_int_equal(f->d.errors, 0);
    char why[256];
    assert_int_equal(compile_table(g, &s, 1, &f->blob, &f->len), 0);
    assert_int_equal(rt_open(&f->t, f->blob, f->len, why, sizeof(why)), 0);
}

static void fixture_free(fixture_t *f)
{
    free(f->blob);
    diag_free(&f->d);
    arena_free(&f->a);
}

/* What the callback answers per route index, and which routes it was asked about. */
typedef struct {
    int answer[8];
    unsigned asked; /* bit per route index */
} script_t;

static int scripted(void *ud, uint32_t r, const char *path, size_t n)
{
    (void)path;
    (void)n;
    script_t *s = ud;
    s->asked |= 1u << r;
    return s->answer[r];
}

static const char *FOUR =
    "site: a\nhosts: [a.example.com]\n"
    "upstreams: {app: {servers: ['127.0.0.1:3001']}}\n"
    "routes:\n"
    "  - match: {path_regex: '^/deny'}\n    return: {status: 403}\n"
    "  - match: {path_regex: '^/app'}\n    upstream: app\n"
    "  - match: {path_regex: '^/get', methods: [GET]}\n    upstream: app\n"
    "  - match: {path_prefix: /}\n    return: {status: 200}\n";

static route_result_t run(const fixture_t *f, const char *method, script_t *s)
{
    route_result_t res;
    route_match(&f->t, 0, method, strlen(method), "/x", 2, scripted, s, &res);
    return res;
}

static void test_error_on_return_route_is_a_match(void **state)
{
    (void)state;
    fixture_t f;
    compile_one(&f, FOUR);
    script_t s = {{-1, 0, 0, 0}, 0};
    route_result_t res = run(&f, "GET", &s);
    assert_int_equal(res.status, 0);
    assert_int_equal(res.route, 0);
    assert_int_equal(res.failed, 0);
    assert_int_equal(s.asked, 1u); /* nothing after the deny rule is consulted */
    fixture_free(&f);
}

static void test_error_on_other_route_is_500(void **state)
{
    (void)state;
    fixture_t f;
    compile_one(&f, FOUR);
    script_t s = {{0, -1, 1, 0}, 0};
    route_result_t res = run(&f, "GET", &s);
    assert_int_equal(res.status, 500);
    assert_int_equal(res.route, RT_NONE); /* not the later prefix route */
    assert_int_equal(res.failed, 1);
    assert_int_equal(s.asked, 3u); /* matching ended at the failure */
    /* The same on a route restricted to the request's method. */
    script_t g = {{0, 0, -1, 0}, 0};
    res = run(&f, "GET", &g);
    assert_int_equal(res.status, 500);
    assert_int_equal(res.route, RT_NONE);
    assert_int_equal(res.failed, 2);
    fixture_free(&f);
}

static void test_error_on_route_without_the_method(void **state)
{
    (void)state;
    fixture_t f;
    compile_one(&f, FOUR);
    /* Route 3 takes GET only: for POST it could never win, so its failure
     * cannot hide a better route; matching goes on (its methods join Allow). */
    script_t s = {{0, 0, -1, 0}, 0};
    route_result_t res = run(&f, "POST", &s);
    assert_int_equal(res.status, 0);
    assert_int_equal(res.route, 3);
    assert_int_equal(res.failed, 2);
    assert_int_equal(res.allow, RT_M_GET);
    fixture_free(&f);
}

static void test_no_error_unchanged(void **state)
{
    (void)state;
    fixture_t f;
    compile_one(&f, FOUR);
    script_t s = {{0, 0, 0, 0}, 0};
    route_result_t res = run(&f, "GET", &s);
    assert_int_equal(res.status, 0);
    assert_int_equal(res.route, 3);
    assert_int_equal(res.failed, RT_NONE);
    script_t m = {{0, 1, 0, 0}, 0};
    res = run(&f, "GET", &m);
    assert_int_equal(res.route, 1);
    assert_int_equal(res.failed, RT_NONE);
    fixture_free(&f);
}

static void test_error_after_the_winner_is_not_consulted(void **state)
{
    (void)state;
    fixture_t f;
    compile_one(&f, "site: a\nhosts: [a.example.com]\nupstreams: {app: {servers: ['127.0.0.1:3001']}}\nroutes:\n"
                    "  - match: {path_prefix: /x}\n    return: {status: 204}\n"
                    "  - match: {path_regex: '^/x'}\n    upstream: app\n");
    script_t s = {{0, -1}, 0};
    route_result_t res = run(&f, "GET", &s);
    assert_int_equal(res.status, 0);
    assert_int_equal(res.route, 0);
    assert_int_equal(s.asked, 0u);
    fixture_free(&f);
}

/* The matcher route-test and proxyd use, with the limits of route.h. */
static int pcre2_limited(void *ud, uint32_t r, const char *path, size_t n)
{
    const rt_table_t *t = ud;
    int code;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)rt_cstr(t, t->routes[r].path), PCRE2_ZERO_TERMINATED, PCRE2_UTF, &code,
                                   &off, NULL);
    assert_non_null(re);
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    pcre2_match_context *mc = pcre2_match_context_create(NULL);
    pcre2_set_match_limit(mc, ROUTE_REGEX_MATCH_LIMIT);
    pcre2_set_depth_limit(mc, ROUTE_REGEX_DEPTH_LIMIT);
    pcre2_jit_stack *js = pcre2_jit_stack_create(32 * 1024, ROUTE_REGEX_JIT_STACK, NULL);
    pcre2_jit_stack_assign(mc, NULL, js);
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    int rc = pcre2_match(re, (PCRE2_SPTR)path, n, 0, 0, md, mc);
    pcre2_match_data_free(md);
    pcre2_jit_stack_free(js);
    pcre2_match_context_free(mc);
    pcre2_code_free(re);
    return rc >= 0 ? 1 : rc == PCRE2_ERROR_NOMATCH ? 0 : -1;
}

static const char *EVIL = "/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!";

static void test_pcre2_limit_fails_closed(void **state)
{
    (void)state;
    fixture_t deny, proxy;
    compile_one(&deny, "site: a\nhosts: [a.example.com]\nupstreams: {app: {servers: ['127.0.0.1:3001']}}\nroutes:\n"
                       "  - match: {path_regex: '(a+)+$'}\n    return: {status: 403}\n"
                       "  - match: {path_prefix: /}\n    upstream: app\n");
    compile_one(&proxy, "site: a\nhosts: [a.example.com]\nupstreams: {app: {servers: ['127.0.0.1:3001']}}\nroutes:\n"
                        "  - match: {path_regex: '(a+)+$'}\n    upstream: app\n"
                        "  - match: {path_prefix: /}\n    return: {status: 200}\n");
    assert_int_equal(pcre2_limited(&deny.t, 0, EVIL, strlen(EVIL)), -1);
    assert_int_equal(pcre2_limited(&deny.t, 0, "/aaa", 4), 1);
    assert_int_equal(pcre2_limited(&deny.t, 0, "/b", 2), 0);
    route_result_t res;
    route_match(&deny.t, 0, "GET", 3, EVIL, strlen(EVIL), pcre2_limited, &deny.t, &res);
    assert_int_equal(res.status, 0);
    assert_int_equal(res.route, 0); /* the deny rule, not the proxy behind it */
    route_match(&proxy.t, 0, "GET", 3, EVIL, strlen(EVIL), pcre2_limited, &proxy.t, &res);
    assert_int_equal(res.status, 500);
    assert_int_equal(res.route, RT_NONE); /* not the 200 behind it */
    route_match(&proxy.t, 0, "GET", 3, "/b!", 3, pcre2_limited, &proxy.t, &res);
    assert_int_equal(res.route, 1);
    fixture_free(&deny);
    fixture_free(&proxy);
}

/* route_upstream_path: rewrite_prefix, strip_prefix (rewrite_prefix "/")
 * and one slash where both sides bring one. */
static void expect_path(const fixture_t *f, uint32_t route, const char *path, const char *want)
{
    const char *head, *rest;
    size_t hn, rn;
    route_upstream_path(&f->t, &f->t.routes[route], path, strlen(path), &head, &hn, &rest, &rn);
    char got[256];
    snprintf(got, sizeof(got), "%.*s%.*s", (int)hn, head, (int)rn, rest);
    assert_string_equal(got, want);
}

static void test_upstream_path_rewrites(void **state)
{
    (void)state;
    fixture_t f;
    compile_one(&f, "site: a\nhosts: [a.example.com]\n"
                    "upstreams: {app: {servers: ['127.0.0.1:3001']}}\n"
                    "routes:\n"
                    "  - match: {path_prefix: /blog/}\n    upstream: app\n    rewrite_prefix: /wordpress/\n"
                    "  - match: {path_prefix: /api}\n    upstream: app\n    strip_prefix: true\n"
                    "  - match: {path_prefix: /x}\n    upstream: app\n    rewrite_prefix: /y\n"
                    "  - match: {path_prefix: /}\n    upstream: app\n");
    expect_path(&f, 0, "/blog/a/b", "/wordpress/a/b");
    expect_path(&f, 0, "/blog/", "/wordpress/");
    expect_path(&f, 1, "/api/users", "/users");
    expect_path(&f, 1, "/api", "/");
    expect_path(&f, 1, "/apix", "/x");
    expect_path(&f, 2, "/x/1", "/y/1");
    expect_path(&f, 2, "/xz", "/yz");
    expect_path(&f, 3, "/blog/a", "/blog/a");
    fixture_free(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_error_on_return_route_is_a_match),
        cmocka_unit_test(test_error_on_other_route_is_500),
        cmocka_unit_test(test_error_on_route_without_the_method),
        cmocka_unit_test(test_no_error_unchanged),
        cmocka_unit_test(test_error_after_the_winner_is_not_consulted),
        cmocka_unit_test(test_pcre2_limit_fails_closed),
        cmocka_unit_test(test_upstream_path_rewrites),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

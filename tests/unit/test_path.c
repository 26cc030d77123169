/*
 * test_path.c - path normalization: the table of inputs every consumer of
 * the path (routing, static files, the upstream request) must agree on.
 */
#include "../../proxyd/http/path.c"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

static void test_table(void **state)
{
    (void)state;
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"/", "/"},
        {"/a/b", "/a/b"},
        {"/a/./b", "/a/b"},
        {"/a/../b", "/b"},
        {"/a/b/..", "/a/"},
        {"/a/b/.", "/a/b/"},
        {"/a/%2e%2e/b", "/b"},
        {"/a/%2E%2e/%2e/b", "/b"},
        {"/%61%62c", "/abc"},
        {"/a%2fb", "/a%2Fb"},
        {"/a%2Fb/..", "/"},
        {"/100%25", "/100%25"},
        {"/%252e%252e/x", "/%252e%252e/x"},
        {"//a//b", "//a//b"},
        {"/a/..", "/"},
        {"/.", "/"},
        {"/caf%C3%A9", "/caf\xc3\xa9"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char out[256];
        const char *why = NULL;
        long n = path_normalize(cases[i].in, strlen(cases[i].in), out, sizeof(out), &why);
        if (n < 0 || (size_t)n != strlen(cases[i].out) || memcmp(out, cases[i].out, (size_t)n) != 0)
            fail_msg("%s -> %.*s (want %s; %s)", cases[i].in, n < 0 ? 0 : (int)n, out, cases[i].out, why ? why : "");
    }
}

static void test_refused(void **state)
{
    (void)state;
    static const char *const bad[] = {"/..", "/../etc/passwd", "/a/../../b", "/%2e%2e/", "/%00", "/a%0", "/a%zz", "x"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char out[256];
        const char *why = NULL;
        if (path_normalize(bad[i], strlen(bad[i]), out, sizeof(out), &why) >= 0)
            fail_msg("%s accepted", bad[i]);
        assert_non_null(why);
    }
}

static void test_encode(void **state)
{
    (void)state;
    char out[128];
    const char *in = "/a b/caf\xc3\xa9/%2F\"<x>";
    path_encode(in, strlen(in), out);
    assert_string_equal(out, "/a%20b/caf%C3%A9/%2F%22%3Cx%3E");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_encode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * test_check.c - the path_regex backtracking warning of check.c: patterns
 * whose repeated group can match one text more than one way are reported
 * (at the group, naming the inner quantifier or alternation); the patterns
 * sites really use, and the safe shapes of nested repeats, are not.
 */
#include "proxyctl_all.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

/* The warning check_backtracking gives for pattern at line 4, column 30, or "". */
static const char *warning_for(const char *pattern)
{
    static char buf[1024];
    diag_t d = {0};
    cfg_route_t r = {0};
    r.match = RT_MATCH_REGEX;
    r.path = (cstr_t){{"site.yaml", 4, 30}, (char *)pattern};
    check_backtracking(&r, &d);
    buf[0] = '\0';
    if (d.n) {
        FILE *m = fmemopen(buf, sizeof(buf), "w");
        diag_print(&d, m);
        fclose(m);
    }
    assert_true(d.errors == 0 && d.warnings == (buf[0] != '\0'));
    diag_free(&d);
    return buf;
}

static void test_catastrophic_patterns_warn(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "(a+)+",        "(a*)*",         "(a|a)*",          "(\\w+\\s?)*",     "(.*a){3}",
        "^/(a+)+$",     "(ab|ac)+",      "(x+x+)+y",        "((a+)b?)+",       "(?:a+)+",
        "(?i)(A+)+$",   "(a?a)+",        "^(\\d+)*$",       "(?<n>a+)+",       "(.*)*",
        "(a|b|ab)*c",   "([a-z]+.)+$",   "(\\w+\\.?)+@",    "(?x) ( a + ) +",  "(a+){2,}",
        "(\\d|\\w)+$",  "(.+\\/)+x",     "(?:(a|aa))+$",    "(\\p{L}+\\s?)*",  "(a+\\1)+",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *w = warning_for(bad[i]);
        if (strstr(w, "warning: path_regex may backtrack catastrophically (nested quantifier over ") == NULL)
            fail_msg("no warning for %s", bad[i]);
    }
}

static void test_safe_patterns_do_not_warn(void **state)
{
    (void)state;
    static const char *const good[] = {
        "^/api/(v1|v2)/",
        "\\.(git|env)$",
        "(?i)\\.php$",
        "(?i)\\.(git|env|bak|sql|log)$",
        "^/users/[0-9]+/avatar\\.(png|jpg)$",
        "^/(\\w+/)*\\w+\\.php$",
        "(/[a-z]+)+",
        "(\\d{1,3}\\.){3}\\d{1,3}",
        "(ab?)+",
        "(a++)+",
        "(?>a+)+",
        "(a+)++",
        "(a{3})+",
        "a+b+c*",
        "(a|b)+$",
        "^/x{2,3}$",
        "a{,3}b",
        "[(a+)+]",
        "\\Q(a+)+\\E",
        "(?#(a+)+)x",
        "^/(?=.*a)",
        "(foo|bar|baz)/+",
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        const char *w = warning_for(good[i]);
        if (w[0])
            fail_msg("unexpected warning for %s: %s", good[i], w);
    }
}

static void test_warning_position_and_text(void **state)
{
    (void)state;
    assert_string_equal(warning_for("^/x/(a+)+$"),
                        "site.yaml:4:34: warning: path_regex may backtrack catastrophically (nested quantifier over "
                        "'a+' in '(a+)+'): a path that nearly matches hits proxyd's match limit, and the route fails "
                        "closed\n");
    assert_string_equal(warning_for("(a|a)*"),
                        "site.yaml:4:30: warning: path_regex may backtrack catastrophically (nested quantifier over "
                        "alternatives that can match the same text, '(a|a)' in '(a|a)*'): a path that nearly matches "
                        "hits proxyd's match limit, and the route fails closed\n");
    assert_non_null(strstr(warning_for("(\\w+\\s?)*"), "over '\\w+' in '(\\w+\\s?)*'"));
    assert_non_null(strstr(warning_for("(.*a){3}"), "over '.*' in '(.*a){3}'"));
}

/* Whatever PCRE2 accepts, the scanner ends and stays in bounds (ASan). */
static void test_odd_syntax_is_survived(void **state)
{
    (void)state;
    static const char *const odd[] = {
        "",          "\\",        "(",          "((((((((((((((((((((a))))))))))))))))))))+", "[]a]+",   "[^]]*",
        "[a-]+",     "[\\d-z]+",  "[[:alpha:]]+", "[[:^digit:]x]*", "(*UTF)(a+)+", "(?(1)a|b)+",
        "(?|(a)|(b))+", "\\x{41}+", "\\x41\\o{101}\\101\\cA", "(?-i:a)+", "(?R)?", "a{99999999}",
        "\\g{-1}\\k<n>\\pL\\P{Lu}\\N\\X\\R", "é+(ü|ö)*",
    };
    for (size_t i = 0; i < sizeof(odd) / sizeof(odd[0]); i++)
        warning_for(odd[i]);
    char deep[400];
    memset(deep, '(', 200);
    memset(deep + 200, ')', 199);
    deep[399] = '\0';
    warning_for(deep);
}

static void test_warning_reaches_the_diagnostics(void **state)
{
    (void)state;
    arena_t a;
    arena_init(&a, 0);
    diag_t d = {0};
    cfg_global_t *g = config_global(&a, "proxy.yaml", NULL, &d);
    cfg_site_t *s = config_site(&a, "site.yaml",
                                "site: a\nhosts: [a.example.com]\nroutes:\n  - match: {path_regex: '(a+)+$'}\n"
                                "    return: {status: 404}\n",
                                &d);
    assert_non_null(s);
    check_sites(g, &s, 1, &d);
    assert_int_equal(d.errors, 0);
    assert_int_equal(d.warnings, 1);
    diag_free(&d);
    arena_free(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_catastrophic_patterns_warn),  cmocka_unit_test(test_safe_patterns_do_not_warn),
        cmocka_unit_test(test_warning_position_and_text),   cmocka_unit_test(test_odd_syntax_is_survived),
        cmocka_unit_test(test_warning_reaches_the_diagnostics),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

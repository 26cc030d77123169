/*
 * test_coding.c - Accept-Encoding negotiation (common/coding.c): weights,
 * "*", identity, the server's preference at equal weight, q=0 refusals,
 * several fields, and the elements a client gets wrong (skipped, the rest
 * still counts).
 */
#include "../../common/coding.c"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#define ALL (CODING_BIT(CODING_GZIP) | CODING_BIT(CODING_ZSTD) | CODING_BIT(CODING_BR))
#define GZ  CODING_BIT(CODING_GZIP)

static enum coding pick(const char *field, unsigned offered)
{
    coding_accept_t a;
    coding_accept_init(&a);
    if (field)
        coding_accept_parse(&a, field, strlen(field));
    return coding_choose(&a, offered);
}

static unsigned weight(const char *field, enum coding c)
{
    coding_accept_t a;
    coding_accept_init(&a);
    coding_accept_parse(&a, field, strlen(field));
    return coding_weight(&a, c);
}

static void test_preference_at_equal_weight(void **state)
{
    (void)state;
    assert_int_equal(pick("gzip, deflate, br, zstd", ALL), CODING_BR);
    assert_int_equal(pick("gzip, zstd", ALL), CODING_ZSTD);
    assert_int_equal(pick("gzip", ALL), CODING_GZIP);
    assert_int_equal(pick("br, gzip", GZ), CODING_GZIP); /* only what is offered */
    assert_int_equal(pick("br", GZ), CODING_IDENTITY);
    assert_int_equal(pick("gzip;q=0.5, br;q=0.5", ALL), CODING_BR);
}

static void test_weights_first(void **state)
{
    (void)state;
    assert_int_equal(pick("br;q=0.5, gzip", ALL), CODING_GZIP);
    assert_int_equal(pick("br;q=0.1, zstd;q=0.2, gzip;q=0.3", ALL), CODING_GZIP);
    assert_int_equal(pick("gzip;q=0.001, br;q=0", ALL), CODING_GZIP);
    assert_int_equal(pick("gzip;Q=1.000", ALL), CODING_GZIP);
    assert_int_equal(weight("gzip;q=0.75", CODING_GZIP), 750);
    assert_int_equal(weight("gzip;q=1.", CODING_GZIP), 1000);
    assert_int_equal(weight("gzip;q=0", CODING_GZIP), 0);
}

static void test_refusals(void **state)
{
    (void)state;
    assert_int_equal(pick("gzip;q=0", ALL), CODING_IDENTITY);
    assert_int_equal(pick("*;q=0", ALL), CODING_IDENTITY);
    assert_int_equal(pick("br;q=0, *", ALL), CODING_ZSTD);
    assert_int_equal(pick("br;q=0, zstd;q=0, *;q=0.5", ALL), CODING_GZIP);
}

static void test_star_and_identity(void **state)
{
    (void)state;
    assert_int_equal(pick("*", ALL), CODING_BR);
    assert_int_equal(pick("*", GZ), CODING_GZIP);
    assert_int_equal(weight("*;q=0", CODING_IDENTITY), 0);
    assert_int_equal(weight("gzip", CODING_IDENTITY), 1000); /* not listed: acceptable */
    assert_int_equal(weight("identity;q=0.2, *", CODING_IDENTITY), 200);
    /* identity is chosen over a coding only with a higher weight */
    assert_int_equal(pick("gzip;q=0.5, identity", ALL), CODING_IDENTITY);
    assert_int_equal(pick("gzip;q=0.5, identity;q=0.5", ALL), CODING_GZIP);
    assert_int_equal(pick("identity", ALL), CODING_IDENTITY);
    /* everything refused: identity is still what is sent */
    assert_int_equal(pick("identity;q=0, *;q=0", ALL), CODING_IDENTITY);
}

static void test_absent_and_empty(void **state)
{
    (void)state;
    assert_int_equal(pick(NULL, ALL), CODING_IDENTITY);
    assert_int_equal(pick("", ALL), CODING_IDENTITY);
    assert_int_equal(pick("  ,  , ", ALL), CODING_IDENTITY);
}

static void test_names(void **state)
{
    (void)state;
    assert_int_equal(pick("GZIP", ALL), CODING_GZIP);
    assert_int_equal(pick("x-gzip", ALL), CODING_GZIP);
    assert_int_equal(pick("Br", ALL), CODING_BR);
    assert_int_equal(pick("gzipx, brr, zst", ALL), CODING_IDENTITY);
    assert_int_equal(pick("compress, deflate", ALL), CODING_IDENTITY);
    assert_string_equal(coding_name(CODING_ZSTD), "zstd");
    assert_string_equal(coding_suffix(CODING_BR), ".br");
    assert_string_equal(coding_suffix(CODING_IDENTITY), "");
}

static void test_first_weight_counts(void **state)
{
    (void)state;
    assert_int_equal(pick("gzip;q=0, gzip", ALL), CODING_IDENTITY);
    assert_int_equal(pick("gzip, gzip;q=0", ALL), CODING_GZIP);
    assert_int_equal(pick("x-gzip;q=0, gzip", ALL), CODING_IDENTITY);
}

static void test_several_fields(void **state)
{
    (void)state;
    coding_accept_t a;
    coding_accept_init(&a);
    coding_accept_parse(&a, "gzip", 4);
    coding_accept_parse(&a, "br;q=0.9", 8);
    assert_int_equal(coding_choose(&a, ALL), CODING_GZIP);
    coding_accept_parse(&a, "zstd", 4);
    assert_int_equal(coding_choose(&a, ALL), CODING_ZSTD);
}

static void test_bad_elements_skipped(void **state)
{
    (void)state;
    assert_int_equal(pick("br;q=2, gzip", ALL), CODING_GZIP);      /* weight above 1 */
    assert_int_equal(pick("br;q=0.0001, gzip", ALL), CODING_GZIP); /* four decimals */
    assert_int_equal(pick("br;q=1.5, gzip", ALL), CODING_GZIP);
    assert_int_equal(pick("br;q=, gzip", ALL), CODING_GZIP);
    assert_int_equal(pick("br;q=abc, gzip", ALL), CODING_GZIP);
    assert_int_equal(pick("br;q = 1, gzip", ALL), CODING_GZIP); /* no space around '=' */
    assert_int_equal(pick("br junk, gzip", ALL), CODING_GZIP);
    assert_int_equal(pick("\"br\", gzip", ALL), CODING_GZIP);
    assert_int_equal(pick("br;x=\"a,b\";q=0, gzip", ALL), CODING_GZIP); /* comma inside quotes */
    assert_int_equal(pick("br;x=\"a,b\", gzip;q=0.5", ALL), CODING_BR);
    assert_int_equal(pick("br;x=\"unterminated, gzip", ALL), CODING_IDENTITY);
    assert_int_equal(pick("br;;q=0.5, gzip;q=0.4", ALL), CODING_BR); /* an empty parameter */
    assert_int_equal(pick("br;level=5", ALL), CODING_BR);            /* other parameters ignored */
    assert_int_equal(pick("\tgzip\t;\tq=0.5\t", ALL), CODING_GZIP);
    assert_int_equal(pick("gzip;q=0.5;q=0", ALL), CODING_IDENTITY); /* the last q given */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_preference_at_equal_weight),
        cmocka_unit_test(test_weights_first),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_star_and_identity),
        cmocka_unit_test(test_absent_and_empty),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_first_weight_counts),
        cmocka_unit_test(test_several_fields),
        cmocka_unit_test(test_bad_elements_skipped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

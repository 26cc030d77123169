/*
 * test_util.c - the hot-path formatters agree with the C library: fmt_u64
 * with "%llu" and fmt_ip with inet_ntop, over edge values and a sweep.
 */
#include "proxyctl_all.h"

#include <arpa/inet.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

static void check_u64(uint64_t v)
{
    char want[32], got[21];
    snprintf(want, sizeof(want), "%llu", (unsigned long long)v);
    size_t n = fmt_u64(got, v);
    assert_string_equal(got, want);
    assert_int_equal(n, strlen(want));
}

static void test_fmt_u64(void **state)
{
    (void)state;
    uint64_t edges[] = {0, 1, 9, 10, 99, 100, 65535, 4294967295u, 4294967296u, 9999999999999999999u, UINT64_MAX};
    for (size_t i = 0; i < sizeof(edges) / sizeof(edges[0]); i++)
        check_u64(edges[i]);
    for (uint64_t v = 1; v < UINT64_MAX / 3; v = v * 3 + 1)
        check_u64(v), check_u64(v - 1);
}

static void check_ip(int family, const uint8_t *a)
{
    char want[INET6_ADDRSTRLEN], got[46];
    assert_non_null(inet_ntop(family == 4 ? AF_INET : AF_INET6, a, want, sizeof(want)));
    size_t n = fmt_ip(got, family, a);
    assert_string_equal(got, want);
    assert_int_equal(n, strlen(want));
}

static void test_fmt_ip(void **state)
{
    (void)state;
    uint8_t a[16] = {0};
    for (unsigned b = 0; b < 256; b++) { /* every byte value in every position */
        for (int pos = 0; pos < 4; pos++) {
            memset(a, (int)(255 - b), 4);
            a[pos] = (uint8_t)b;
            check_ip(4, a);
        }
    }
    static const uint8_t v6[][16] = {
        {0}, {[15] = 1}, {0x20, 0x01, 0x0d, 0xb8, [15] = 0x42},
        {[10] = 0xff, [11] = 0xff, [12] = 127, [15] = 1}, /* v4-mapped */
        {0xfe, 0x80, [8] = 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0},
        {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
    };
    for (size_t i = 0; i < sizeof(v6) / sizeof(v6[0]); i++)
        check_ip(6, v6[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_fmt_u64), cmocka_unit_test(test_fmt_ip)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}

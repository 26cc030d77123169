/*
 * test_bundle.c - the generation bundle the master hands to workers
 * (proxyd/core/bundle.c): round trip, and refusal of every truncation, of
 * lengths that point past the end (behind a consistent total size, the case
 * a bug in the writer would produce), of strings without their NUL or with
 * one inside, and of garbage.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../proxyd/core/bundle.c"

static const uint8_t BLOB[] = "\x01\x02\x03 a rule table of 27 bytes";

static const bundle_cert_t CERTS[] = {
    {"shop", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "",
     "-----BEGIN PRIVATE KEY-----\nBBBB\n-----END PRIVATE KEY-----\n"},
    {"blog", "CERT2", "CHAIN2\nCHAIN2b", "KEY2"},
};

static uint8_t *make(size_t *n)
{
    *n = bundle_size(sizeof(BLOB), CERTS, 2);
    uint8_t *p = malloc(*n);
    assert_non_null(p);
    bundle_write(p, 42, BLOB, sizeof(BLOB), CERTS, 2);
    return p;
}

static int read_ok(const uint8_t *p, size_t n, bundle_t *b)
{
    char err[256] = "";
    int rc = bundle_read(p, n, b, err, sizeof(err));
    if (rc < 0)
        assert_non_null(strstr(err, "generation handed over by the master refused: "));
    return rc;
}

static void test_round_trip(void **state)
{
    (void)state;
    size_t n;
    uint8_t *p = make(&n);
    assert_int_equal(n % 8, 0);
    bundle_t b;
    assert_int_equal(read_ok(p, n, &b), 0);
    assert_int_equal(b.generation, 42);
    assert_int_equal(b.blob_len, sizeof(BLOB));
    assert_memory_equal(b.blob, BLOB, sizeof(BLOB));
    assert_int_equal(b.ncerts, 2);
    for (size_t i = 0; i < 2; i++) {
        bundle_cert_t c;
        assert_int_equal(bundle_cert(&b, CERTS[i].site, &c), 0);
        assert_string_equal(c.site, CERTS[i].site);
        assert_string_equal(c.cert, CERTS[i].cert);
        assert_string_equal(c.chain, CERTS[i].chain);
        assert_string_equal(c.key, CERTS[i].key);
    }
    bundle_cert_t c;
    assert_int_equal(bundle_cert(&b, "shopx", &c), -1);
    assert_int_equal(bundle_cert(&b, "sho", &c), -1);
    free(p);
}

static void test_empty(void **state)
{
    (void)state;
    size_t n = bundle_size(0, NULL, 0);
    uint8_t p[64];
    assert_true(n <= sizeof(p));
    bundle_write(p, 1, BLOB, 0, NULL, 0);
    bundle_t b;
    assert_int_equal(read_ok(p, n, &b), 0);
    assert_int_equal(b.blob_len, 0);
    assert_int_equal(b.ncerts, 0);
    bundle_cert_t c;
    assert_int_equal(bundle_cert(&b, "shop", &c), -1);
}

static void test_truncations_refused(void **state)
{
    (void)state;
    size_t n;
    uint8_t *p = make(&n);
    bundle_t b;
    for (size_t k = 0; k < n; k++) {
        uint8_t *q = malloc(k ? k : 1); /* exactly k bytes: ASan sees a read beyond */
        memcpy(q, p, k);
        assert_int_equal(read_ok(q, k, &b), -1);
        if (k >= 24) { /* the header's total agreeing with the cut: the parts must not fit */
            uint64_t total = k;
            memcpy(q + 16, &total, 8);
            assert_int_equal(read_ok(q, k, &b), -1);
        }
        free(q);
    }
    free(p);
}

/* Offset of the first certificate record in the bundle make() writes. */
static size_t first_record(void)
{
    return 32 + pad8(sizeof(BLOB));
}

static void test_lengths_past_the_end_refused(void **state)
{
    (void)state;
    size_t n;
    uint8_t *p = make(&n);
    bundle_t b;
    uint32_t big[] = {UINT32_MAX, (uint32_t)n, (uint32_t)n - 40};
    for (size_t i = 0; i < sizeof(big) / sizeof(big[0]); i++) {
        uint8_t *q = malloc(n);
        memcpy(q, p, n);
        memcpy(q + 24, &big[i], 4); /* the blob */
        assert_int_equal(read_ok(q, n, &b), -1);
        for (int k = 0; k < 4; k++) { /* each string of the first record */
            memcpy(q, p, n);
            memcpy(q + first_record() + 4 * (size_t)k, &big[i], 4);
            assert_int_equal(read_ok(q, n, &b), -1);
        }
        memcpy(q, p, n);
        uint32_t more = 3;
        memcpy(q + 28, &more, 4); /* a certificate count beyond the records */
        assert_int_equal(read_ok(q, n, &b), -1);
        free(q);
    }
    uint32_t fewer = 1;
    memcpy(p + 28, &fewer, 4); /* bytes after the records that are counted */
    assert_int_equal(read_ok(p, n, &b), -1);
    free(p);
}

static void test_malformed_strings_refused(void **state)
{
    (void)state;
    size_t n;
    uint8_t *p = make(&n);
    bundle_t b;
    size_t site = first_record() + 16; /* "shop\0" */
    p[site + 4] = 'x';                 /* no NUL after the site */
    assert_int_equal(read_ok(p, n, &b), -1);
    p[site + 4] = 0;
    p[site + 1] = 0; /* a NUL inside it */
    assert_int_equal(read_ok(p, n, &b), -1);
    p[site + 1] = 'h';
    assert_int_equal(read_ok(p, n, &b), 0);
    uint32_t zero = 0;
    memcpy(p + first_record(), &zero, 4); /* an empty site name */
    assert_int_equal(read_ok(p, n, &b), -1);
    free(p);
}

static void test_garbage_refused(void **state)
{
    (void)state;
    size_t n;
    uint8_t *p = make(&n);
    bundle_t b;
    p[0] ^= 1; /* magic */
    assert_int_equal(read_ok(p, n, &b), -1);
    srand(17);
    for (int round = 0; round < 2000; round++) {
        size_t len = (size_t)rand() % 256;
        uint8_t *q = malloc(len ? len : 1);
        for (size_t i = 0; i < len; i++)
            q[i] = (uint8_t)rand();
        if (len >= 32 && round % 2) { /* a valid header over random parts */
            memcpy(q, "PXDBNDL1", 8);
            uint64_t total = len;
            memcpy(q + 16, &total, 8);
        }
        int rc = read_ok(q, len, &b);
        if (rc == 0) { /* whatever it accepted lies inside q */
            assert_true(b.blob + b.blob_len <= q + len);
            bundle_cert_t c;
            bundle_cert(&b, "shop", &c);
        }
        free(q);
    }
    free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_truncations_refused),
        cmocka_unit_test(test_lengths_past_the_end_refused),
        cmocka_unit_test(test_malformed_strings_refused),
        cmocka_unit_test(test_garbage_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

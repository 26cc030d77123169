/*
 * test_dns.c - the DNS wire format of the upstream resolver
 * (proxyd/upstream/dns.c): queries as RFC 1035 writes them, and answers
 * that are ours, not ours, malformed or hostile (compression loops,
 * truncated records, wrong ids, CNAME chains).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "upstream/dns.h"

/* ---- building answers ------------------------------------------------------------------ */

typedef struct {
    uint8_t b[1024];
    size_t n;
} msg_t;

static void put(msg_t *m, const void *p, size_t n)
{
    memcpy(m->b + m->n, p, n);
    m->n += n;
}

static void put16(msg_t *m, unsigned v)
{
    uint8_t x[2] = {(uint8_t)(v >> 8), (uint8_t)v};
    put(m, x, 2);
}

static void put32(msg_t *m, uint32_t v)
{
    put16(m, v >> 16);
    put16(m, v & 0xffff);
}

static void put_name(msg_t *m, const char *name)
{
    while (*name) {
        const char *dot = strchr(name, '.');
        size_t l = dot ? (size_t)(dot - name) : strlen(name);
        uint8_t len = (uint8_t)l;
        put(m, &len, 1);
        put(m, name, l);
        name += l + (dot ? 1 : 0);
    }
    uint8_t z = 0;
    put(m, &z, 1);
}

/* Header and question: id, flags (QR set unless asked otherwise), counts. */
static void head(msg_t *m, uint16_t id, unsigned flags, unsigned an, const char *qname, uint16_t qtype)
{
    m->n = 0;
    put16(m, id);
    put16(m, flags);
    put16(m, 1);
    put16(m, an);
    put16(m, 0);
    put16(m, 0);
    put_name(m, qname);
    put16(m, qtype);
    put16(m, 1);
}

/* A record's type, class IN, TTL and data length (after its owner name). */
static void rr_head(msg_t *m, uint16_t type, uint32_t ttl, unsigned rdlen)
{
    put16(m, type);
    put16(m, 1);
    put32(m, ttl);
    put16(m, rdlen);
}

/* A record owned by the question's name (pointer to offset 12). */
static void rr_a(msg_t *m, uint32_t ttl, uint8_t a, uint8_t b, uint8_t c, uint8_t d)
{
    put16(m, 0xc00c);
    rr_head(m, DNS_T_A, ttl, 4);
    uint8_t ip[4] = {a, b, c, d};
    put(m, ip, 4);
}

static int parse(const msg_t *m, uint16_t id, const char *name, uint16_t qtype, dns_answer_t *a, const char **why)
{
    *why = NULL;
    return dns_parse(m->b, m->n, id, name, qtype, a, why);
}

/* ---- tests ------------------------------------------------------------------------------ */

static void test_query(void **state)
{
    (void)state;
    uint8_t b[300];
    int n = dns_query(b, sizeof(b), 0xbeef, "App.Example.", DNS_T_AAAA);
    static const uint8_t want[] = {0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 3, 'A', 'p', 'p', 7, 'E', 'x',
                                   'a',  'm',  'p',  'l',  'e', 0, 0, 28, 0, 1};
    assert_int_equal(n, sizeof(want));
    assert_memory_equal(b, want, sizeof(want));
    assert_int_equal(dns_query(b, sizeof(b), 1, "a..b", DNS_T_A), -1);
    assert_int_equal(dns_query(b, sizeof(b), 1, "", DNS_T_A), -1);
    assert_int_equal(dns_query(b, sizeof(b), 1, "sp ace", DNS_T_A), -1);
    assert_int_equal(dns_query(b, 10, 1, "a.b", DNS_T_A), -1);
    char longlabel[80];
    memset(longlabel, 'x', 64);
    longlabel[64] = '\0';
    assert_false(dns_name_ok(longlabel));
    longlabel[63] = '\0';
    assert_true(dns_name_ok(longlabel));
    assert_int_equal(dns_id(b, 2), 0);
}

static void test_two_addresses(void **state)
{
    (void)state;
    msg_t m;
    dns_answer_t a;
    const char *why;
    head(&m, 7, 0x8180, 2, "app.test", DNS_T_A);
    rr_a(&m, 300, 127, 0, 0, 2);
    rr_a(&m, 60, 127, 0, 0, 3);
    assert_int_equal(parse(&m, 7, "APP.test.", DNS_T_A, &a, &why), 0);
    assert_int_equal(a.rcode, DNS_R_NOERROR);
    assert_int_equal(a.naddrs, 2);
    assert_int_equal(a.ttl, 60);
    assert_int_equal(a.addrs[1].len, 4);
    assert_int_equal(a.addrs[1].ip[3], 3);
}

static void test_not_ours(void **state)
{
    (void)state;
    msg_t m;
    dns_answer_t a;
    const char *why;
    head(&m, 7, 0x8180, 1, "app.test", DNS_T_A);
    rr_a(&m, 300, 10, 0, 0, 1);
    assert_int_equal(parse(&m, 8, "app.test", DNS_T_A, &a, &why), -1); /* wrong id */
    assert_string_equal(why, "wrong id");
    assert_int_equal(parse(&m, 7, "other.test", DNS_T_A, &a, &why), -1); /* another name */
    assert_string_equal(why, "answer to another question");
    assert_int_equal(parse(&m, 7, "app.test", DNS_T_AAAA, &a, &why), -1); /* another type */
    head(&m, 7, 0x0100, 0, "app.test", DNS_T_A); /* a query, not an answer */
    assert_int_equal(parse(&m, 7, "app.test", DNS_T_A, &a, &why), -1);
    m.n = 11;
    assert_int_equal(parse(&m, 7, "app.test", DNS_T_A, &a, &why), -1);
}

static void test_rcodes(void **state)
{
    (void)state;
    msg_t m;
    dns_answer_t a;
    const char *why;
    char buf[16];
    head(&m, 9, 0x8183, 0, "gone.test", DNS_T_A);
    assert_int_equal(parse(&m, 9, "gone.test", DNS_T_A, &a, &why), 0);
    assert_int_equal(a.rcode, DNS_R_NXDOMAIN);
    assert_string_equal(dns_rcode_name(a.rcode, buf, sizeof(buf)), "NXDOMAIN");
    head(&m, 9, 0x8182, 0, "gone.test", DNS_T_A);
    assert_int_equal(parse(&m, 9, "gone.test", DNS_T_A, &a, &why), 0);
    assert_int_equal(a.rcode, DNS_R_SERVFAIL);
    assert_string_equal(dns_rcode_name(9, buf, sizeof(buf)), "rcode 9");
    head(&m, 9, 0x8380, 0, "big.test", DNS_T_A); /* TC */
    assert_int_equal(parse(&m, 9, "big.test", DNS_T_A, &a, &why), 0);
    assert_true(a.truncated);
    head(&m, 9, 0x8180, 0, "none.test", DNS_T_AAAA); /* NODATA */
    assert_int_equal(parse(&m, 9, "none.test", DNS_T_AAAA, &a, &why), 0);
    assert_int_equal(a.naddrs, 0);
}

static void test_compression_loops(void **state)
{
    (void)state;
    msg_t m;
    dns_answer_t a;
    const char *why;
    /* An answer whose owner is a pointer to itself. */
    head(&m, 1, 0x8180, 1, "x.test", DNS_T_A);
    size_t at = m.n;
    put16(&m, 0xc000 | (unsigned)at);
    rr_head(&m, DNS_T_A, 1, 4);
    put32(&m, 0x7f000001);
    assert_int_equal(parse(&m, 1, "x.test", DNS_T_A, &a, &why), -1);
    assert_string_equal(why, "malformed answer record");
    /* Two labels pointing at each other: the second points forward. */
    head(&m, 1, 0x8180, 1, "x.test", DNS_T_A);
    at = m.n;
    uint8_t loop[] = {1, 'a', 0xc0, (uint8_t)(at + 4), 1, 'b', 0xc0, (uint8_t)at};
    put(&m, loop, sizeof(loop));
    rr_head(&m, DNS_T_A, 1, 4);
    put32(&m, 0x7f000001);
    assert_int_equal(parse(&m, 1, "x.test", DNS_T_A, &a, &why), -1);
    /* The question name itself a pointer into the header. */
    m.n = 12;
    put16(&m, 0xc000);
    put16(&m, DNS_T_A);
    put16(&m, 1);
    assert_int_equal(parse(&m, 1, "x.test", DNS_T_A, &a, &why), -1);
}

static void test_truncated_records(void **state)
{
    (void)state;
    msg_t m;
    dns_answer_t a;
    const char *why;
    head(&m, 3, 0x8180, 1, "t.test", DNS_T_A);
    rr_a(&m, 5, 1, 2, 3, 4);
    size_t full = m.n;
    for (size_t cut = full - 1; cut > full - 16; cut--) {
        m.n = cut;
        assert_int_equal(parse(&m, 3, "t.test", DNS_T_A, &a, &why), -1);
        assert_non_null(why);
    }
    /* Two answers announced, one there. */
    head(&m, 3, 0x8180, 2, "t.test", DNS_T_A);
    rr_a(&m, 5, 1, 2, 3, 4);
    assert_int_equal(parse(&m, 3, "t.test", DNS_T_A, &a, &why), -1);
    /* An A record of 5 bytes. */
    head(&m, 3, 0x8180, 1, "t.test", DNS_T_A);
    put16(&m, 0xc00c);
    rr_head(&m, DNS_T_A, 5, 5);
    put32(&m, 0x01020304);
    uint8_t extra = 5;
    put(&m, &extra, 1);
    assert_int_equal(parse(&m, 3, "t.test", DNS_T_A, &a, &why), -1);
    assert_string_equal(why, "address record of the wrong size");
}

/* app.test CNAME web.test (compressed), web.test CNAME edge.test, edge.test A. */
static void test_cname_chain(void **state)
{
    (void)state;
    msg_t m;
    dns_answer_t a;
    const char *why;
    head(&m, 4, 0x8180, 4, "app.test", DNS_T_A);
    put16(&m, 0xc00c);
    put16(&m, DNS_T_CNAME);
    put16(&m, 1);
    put32(&m, 100);
    size_t web = m.n + 2;
    put16(&m, 6); /* "web" + pointer to "test" at 16 */
    uint8_t w[] = {3, 'w', 'e', 'b', 0xc0, 16};
    put(&m, w, sizeof(w));
    rr_a(&m, 50, 9, 9, 9, 9); /* an A of app.test itself next to its CNAME: not the chain's end */
    put16(&m, 0xc000 | (unsigned)web);
    rr_head(&m, DNS_T_CNAME, 30, 11);
    put_name(&m, "edge.test");
    put_name(&m, "edge.test");
    rr_head(&m, DNS_T_A, 200, 4);
    put32(&m, 0x0a000005);
    assert_int_equal(parse(&m, 4, "app.test", DNS_T_A, &a, &why), 0);
    assert_int_equal(a.ncnames, 2);
    assert_int_equal(a.naddrs, 1);
    assert_int_equal(a.addrs[0].ip[3], 5);
    assert_int_equal(a.ttl, 30);
}

/* A CNAME that points back at the name: followed no further than DNS_MAX_CNAMES. */
static void test_cname_loop(void **state)
{
    (void)state;
    msg_t m;
    dns_answer_t a;
    const char *why;
    head(&m, 5, 0x8180, 2, "a.test", DNS_T_A);
    put16(&m, 0xc00c);
    rr_head(&m, DNS_T_CNAME, 1, 8);
    put_name(&m, "b.test");
    put_name(&m, "b.test");
    rr_head(&m, DNS_T_CNAME, 1, 2);
    put16(&m, 0xc00c);
    assert_int_equal(parse(&m, 5, "a.test", DNS_T_A, &a, &why), -1);
    assert_string_equal(why, "CNAME chain too long");
}

static void test_aaaa_and_many(void **state)
{
    (void)state;
    msg_t m;
    dns_answer_t a;
    const char *why;
    head(&m, 6, 0x8180, DNS_MAX_ADDRS + 4, "v6.test", DNS_T_AAAA);
    for (unsigned i = 0; i < DNS_MAX_ADDRS + 4; i++) {
        put16(&m, 0xc00c);
        put16(&m, DNS_T_AAAA);
        put16(&m, 1);
        put32(&m, 0x80000000u); /* top bit set: a TTL of 0 (RFC 2181) */
        put16(&m, 16);
        uint8_t ip[16] = {0x20, 0x01, 0x0d, 0xb8};
        ip[15] = (uint8_t)i;
        put(&m, ip, 16);
    }
    assert_int_equal(parse(&m, 6, "v6.test", DNS_T_AAAA, &a, &why), 0);
    assert_int_equal(a.naddrs, DNS_MAX_ADDRS);
    assert_int_equal(a.addrs[0].len, 16);
    assert_int_equal(a.ttl, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_query),          cmocka_unit_test(test_two_addresses),
        cmocka_unit_test(test_not_ours),       cmocka_unit_test(test_rcodes),
        cmocka_unit_test(test_compression_loops), cmocka_unit_test(test_truncated_records),
        cmocka_unit_test(test_cname_chain),    cmocka_unit_test(test_cname_loop),
        cmocka_unit_test(test_aaaa_and_many),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

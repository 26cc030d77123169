/*
 * test_proxyproto.c - unit tests for proxyd/conn/proxyproto.c.
 *
 * Mostly tables, each row its own cmocka test named after it.  A row's input
 * is written as two literals, SPLIT(head, tail):
 *  - for a valid header, head is the header and tail what follows it (bytes
 *    the caller must not consume): every prefix shorter than the header must
 *    answer 0, every longer one the header's length and address;
 *  - for a refusal, head ends with the byte that decides it: every shorter
 *    prefix must answer 0 and every longer one -1 with the row's reason, so
 *    the rows pin down how early a refusal comes, not only that it comes.
 * Every parse runs on an exact-size heap copy so ASan catches a read past n.
 * The fixed tests sweep whole byte ranges (first byte, v2 version/command and
 * family bytes, every port number) and the two length limits.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "conn/proxyproto.h"

#define SPLIT(head, tail) head tail, sizeof(head) - 1, sizeof(head tail) - 1
#define NTAB(a) (sizeof(a) / sizeof((a)[0]))

#define NOT_PROXY "not a PROXY protocol header"

/* v2 pieces; literals are split wherever a hex escape would swallow the next character. */
#define SIG "\r\n\r\n\0\r\nQUIT\n"
#define ADDR4 "\xC0\x00\x02\x01" "\xC6\x33\x64\x02" "\xDC\x04" "\x01\xBB" /* 192.0.2.1:56324 -> 198.51.100.2:443 */
#define IP6_SRC "\x20\x01\x0D\xB8" "\0\0\0\0" "\0\0\0\0" "\0\0\0\x01" /* 2001:db8::1 */
#define IP6_DST "\x20\x01\x0D\xB8" "\0\0\0\0" "\0\0\0\0" "\0\0\0\x02"
#define ADDR6 IP6_SRC IP6_DST "\x1F\x90" "\x01\xBB" /* port 8080 -> 443 */
#define Z12 "\0\0\0\0\0\0\0\0\0\0\0\0"
#define Z36 Z12 Z12 Z12
#define Z216 Z36 Z36 Z36 Z36 Z36 Z36
/* 90 and 91 filler bytes for v1 lines at the length limit */
#define A10 "aaaaaaaaaa"
#define A90 A10 A10 A10 A10 A10 A10 A10 A10 A10
#define V6V4 "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255" /* 45 bytes, the longest IPv6 text */

static uint8_t *dup_exact(const void *s, size_t n)
{
    uint8_t *p = malloc(n ? n : 1);
    assert_non_null(p);
    memcpy(p, s, n);
    return p;
}

static long parse_copy(const void *s, size_t n, pp_addr_t *src, const char **why)
{
    uint8_t *p = dup_exact(s, n);
    long r = pp_parse(p, n, src, why);
    free(p);
    return r;
}

/* ---- valid headers ------------------------------------------------------- */

typedef struct {
    const char *name;
    const char *in;
    size_t hlen, len; /* the header; the whole input (header and what follows) */
    uint8_t family;
    uint8_t ip[16];
    uint16_t port;
} valid_t;

#define IP4_192_0_2_1 {192, 0, 2, 1}
#define IP6_2001_DB8_1 {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}

static const valid_t valids[] = {
    {"v1_tcp4", SPLIT("PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n", "GET / HTTP/1.1\r\n\r\n"), 4,
     IP4_192_0_2_1, 56324},
    {"v1_tcp4_longest", SPLIT("PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n", ""), 4,
     {255, 255, 255, 255}, 65535},
    {"v1_tcp4_zeros", SPLIT("PROXY TCP4 0.0.0.0 10.0.0.1 0 0\r\n", "\r\n"), 4, {0}, 0},
    {"v1_tcp4_then_v1", SPLIT("PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n", "PROXY TCP4 10.0.0.1 10.0.0.2 3 4\r\n"), 4,
     IP4_192_0_2_1, 1},
    {"v1_tcp6", SPLIT("PROXY TCP6 2001:db8::1 2001:db8::2 8080 443\r\n", "x"), 6, IP6_2001_DB8_1, 8080},
    {"v1_tcp6_upper", SPLIT("PROXY TCP6 2001:DB8::1 ::1 1 2\r\n", ""), 6, IP6_2001_DB8_1, 1},
    {"v1_tcp6_longest",
     SPLIT("PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
           "GET"),
     6, {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 65535},
    {"v1_tcp6_v4_mapped", SPLIT("PROXY TCP6 ::ffff:192.0.2.1 :: 1 2\r\n", ""), 6,
     {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1}, 1},
    {"v1_unknown", SPLIT("PROXY UNKNOWN\r\n", "GET / HTTP/1.1\r\n"), 0, {0}, 0},
    {"v1_unknown_addresses", SPLIT("PROXY UNKNOWN ffff:: ffff:: 65535 65535\r\n", ""), 0, {0}, 0},
    {"v1_unknown_anything", SPLIT("PROXY UNKNOWN  what\x01\xff ever \r\n", "\n"), 0, {0}, 0},
    {"v1_unknown_longest", SPLIT("PROXY UNKNOWN " A90 "a\r\n", "b"), 0, {0}, 0},

    {"v2_inet", SPLIT(SIG "\x21\x11\x00\x0C" ADDR4, "GET / HTTP/1.1\r\n"), 4, IP4_192_0_2_1, 56324},
    {"v2_inet_tlvs", SPLIT(SIG "\x21\x11\x00\x1F" ADDR4 "\x02\x00\x0B" "example.com" "\x04\x00\x02" "\0\0", "\r\n"), 4,
     IP4_192_0_2_1, 56324},
    {"v2_inet_long_block", SPLIT(SIG "\x21\x11\x00\x0D" ADDR4 "\x99", ""), 4, IP4_192_0_2_1, 56324},
    {"v2_inet6", SPLIT(SIG "\x21\x21\x00\x24" ADDR6, "\x16\x03\x01"), 6, IP6_2001_DB8_1, 8080},
    {"v2_inet6_tlvs",
     SPLIT(SIG "\x21\x21\x00\x3A" ADDR6 "\x03\x00\x04" "\x12\x34\x56\x78" "\x05\x00\x07" "conn-42" "\x01\x00\x02" "h2",
           ""),
     6, IP6_2001_DB8_1, 8080},
    {"v2_unspec", SPLIT(SIG "\x21\x00\x00\x00", "GET"), 0, {0}, 0},
    {"v2_unspec_with_block", SPLIT(SIG "\x21\x00\x00\x0C" ADDR4, ""), 0, {0}, 0},
    {"v2_unix", SPLIT(SIG "\x21\x31\x00\xD8" Z216, "x"), 0, {0}, 0},
    {"v2_unix_tlv", SPLIT(SIG "\x21\x31\x00\xDD" Z216 "\x04\x00\x02" "\0\0", ""), 0, {0}, 0},
    {"v2_local", SPLIT(SIG "\x20\x00\x00\x00", "GET / HTTP/1.1\r\n"), 0, {0}, 0},
    {"v2_local_with_addresses", SPLIT(SIG "\x20\x11\x00\x0C" ADDR4, ""), 0, {0}, 0},
    {"v2_local_tlv", SPLIT(SIG "\x20\x00\x00\x07" "\x04\x00\x04" "\0\0\0\0", "\0"), 0, {0}, 0},
    {"v2_local_family_ignored", SPLIT(SIG "\x20\xFF\x00\x00", ""), 0, {0}, 0},
    {"v2_local_short_block", SPLIT(SIG "\x20\x21\x00\x04" "abcd", ""), 0, {0}, 0},
};

static void assert_addr(const pp_addr_t *a, uint8_t family, const uint8_t ip[16], uint16_t port)
{
    assert_int_equal(a->family, family);
    assert_memory_equal(a->ip, ip, 16);
    assert_int_equal(a->port, port);
}

static void test_valid(void **state)
{
    const valid_t *t = *state;
    for (size_t k = 0; k <= t->len; k++) {
        pp_addr_t src;
        const char *why = "unset";
        memset(&src, 0xAA, sizeof(src));
        long r = parse_copy(t->in, k, &src, &why);
        assert_null(why);
        if (k < t->hlen) {
            assert_int_equal(r, 0);
            continue;
        }
        assert_int_equal(r, (long)t->hlen);
        assert_addr(&src, t->family, t->ip, t->port);
    }
}

/* ---- refusals ------------------------------------------------------------ */

typedef struct {
    const char *name;
    const char *in;
    size_t at, len; /* the verdict is due once `at` bytes are in; the whole input */
    const char *why;
} refusal_t;

#define TCP4_TAIL " 198.51.100.2 1 2\r\n"

static const refusal_t refusals[] = {
    /* not a PROXY header at all: told at the first byte that cannot start one */
    {"http_get", SPLIT("G", "ET / HTTP/1.1\r\nHost: a\r\n\r\n"), NOT_PROXY},
    {"http_post", SPLIT("PO", "ST / HTTP/1.1\r\nHost: a\r\n\r\n"), NOT_PROXY},
    {"http_put", SPLIT("PU", "T / HTTP/1.1\r\n\r\n"), NOT_PROXY},
    {"tls_client_hello", SPLIT("\x16", "\x03\x01\x00\xa5\x01"), NOT_PROXY},
    {"empty_line", SPLIT("\r\n\r\n\r", "\n"), NOT_PROXY},
    {"lowercase_proxy", SPLIT("p", "roxy TCP4 192.0.2.1" TCP4_TAIL), NOT_PROXY},
    {"proxy_without_space", SPLIT("PROXY\r", "\n"), NOT_PROXY},
    {"proxy_tab", SPLIT("PROXY\t", "TCP4 192.0.2.1" TCP4_TAIL), NOT_PROXY},
    /* v1 protocol */
    {"v1_double_space_after_proxy", SPLIT("PROXY  ", "TCP4 192.0.2.1" TCP4_TAIL), "bad v1 protocol"},
    {"v1_udp4", SPLIT("PROXY UD", "P4 192.0.2.1" TCP4_TAIL), "bad v1 protocol"},
    {"v1_tcp5", SPLIT("PROXY TCP5", " 192.0.2.1" TCP4_TAIL), "bad v1 protocol"},
    {"v1_lowercase_tcp4", SPLIT("PROXY t", "cp4 192.0.2.1" TCP4_TAIL), "bad v1 protocol"},
    {"v1_tcp44", SPLIT("PROXY TCP44", " 192.0.2.1" TCP4_TAIL), "bad v1 protocol"},
    {"v1_unknownx", SPLIT("PROXY UNKNOWNX", "\r\n"), "bad v1 protocol"},
    /* v1 field structure */
    {"v1_tcp4_alone", SPLIT("PROXY TCP4\r", "\n"), "v1 line has too few fields"},
    {"v1_three_fields", SPLIT("PROXY TCP4 192.0.2.1 198.51.100.2 1\r", "\n"), "v1 line has too few fields"},
    {"v1_five_fields", SPLIT("PROXY TCP4 192.0.2.1 198.51.100.2 1 2 ", "3\r\n"), "v1 line has too many fields"},
    {"v1_space_before_crlf", SPLIT("PROXY TCP4 192.0.2.1 198.51.100.2 1 2 ", "\r\n"), "v1 line has too many fields"},
    {"v1_double_space_src", SPLIT("PROXY TCP4  ", "192.0.2.1" TCP4_TAIL), "bad v1 address"},
    {"v1_double_space_dst", SPLIT("PROXY TCP4 192.0.2.1  ", "198.51.100.2 1 2\r\n"), "bad v1 address"},
    {"v1_double_space_port", SPLIT("PROXY TCP4 192.0.2.1 198.51.100.2 1  ", "2\r\n"), "bad v1 port"},
    {"v1_tab_separator", SPLIT("PROXY TCP4 192.0.2.1\t", "198.51.100.2 1 2\r\n"), "bad v1 address"},
    /* v1 line ends */
    {"v1_missing_cr", SPLIT("PROXY TCP4 192.0.2.1 198.51.100.2 1 2\n", "GET /"), "bare LF in v1 line"},
    {"v1_missing_cr_unknown", SPLIT("PROXY UNKNOWN\n", ""), "bare LF in v1 line"},
    {"v1_missing_cr_unknown_rest", SPLIT("PROXY UNKNOWN 1.2.3.4\n", "\r\n"), "bare LF in v1 line"},
    {"v1_lf_after_src", SPLIT("PROXY TCP4 192.0.2.1\n", "198.51.100.2 1 2\r\n"), "bare LF in v1 line"},
    {"v1_bare_cr", SPLIT("PROXY TCP4 192.0.2.1 198.51.100.2 1 2\rG", "ET /"), "bare CR in v1 line"},
    {"v1_cr_cr_lf", SPLIT("PROXY UNKNOWN\r\r", "\n"), "bare CR in v1 line"},
    {"v1_too_long_unknown", SPLIT("PROXY UNKNOWN " A90 "aaa", "\r\n"), "v1 line longer than 107 bytes"},
    {"v1_cr_at_107", SPLIT("PROXY UNKNOWN " A90 "aa\r", "\n"), "v1 line longer than 107 bytes"},
    {"v1_too_long_tcp6", SPLIT("PROXY TCP6 " V6V4 " " V6V4 " 6553", "5 65535\r\n"), "v1 line longer than 107 bytes"},
    /* v1 addresses */
    {"v1_octet_256", SPLIT("PROXY TCP4 192.0.2.256 ", "198.51.100.2 1 2\r\n"), "bad v1 address"},
    {"v1_octet_leading_zero", SPLIT("PROXY TCP4 192.0.2.01 ", "198.51.100.2 1 2\r\n"), "bad v1 address"},
    {"v1_first_octet_leading_zero", SPLIT("PROXY TCP4 010.0.0.1 ", "198.51.100.2 1 2\r\n"), "bad v1 address"},
    {"v1_three_octets", SPLIT("PROXY TCP4 192.0.2 ", "198.51.100.2 1 2\r\n"), "bad v1 address"},
    {"v1_five_octets", SPLIT("PROXY TCP4 192.0.2.1.5 ", "198.51.100.2 1 2\r\n"), "bad v1 address"},
    {"v1_empty_octet", SPLIT("PROXY TCP4 192..2.1 ", "198.51.100.2 1 2\r\n"), "bad v1 address"},
    {"v1_trailing_dot", SPLIT("PROXY TCP4 192.0.2.1. ", "198.51.100.2 1 2\r\n"), "bad v1 address"},
    {"v1_ipv4_too_long", SPLIT("PROXY TCP4 1111111111111111", " 198.51.100.2 1 2\r\n"), "bad v1 address"},
    {"v1_hostname", SPLIT("PROXY TCP4 l", "ocalhost" TCP4_TAIL), "bad v1 address"},
    {"v1_nul_in_address", SPLIT("PROXY TCP4 192.0.2.1\0", TCP4_TAIL), "bad v1 address"},
    {"v1_bad_dst", SPLIT("PROXY TCP4 192.0.2.1 198.51.100.300 ", "1 2\r\n"), "bad v1 address"},
    {"v1_ipv6_in_tcp4", SPLIT("PROXY TCP4 :", ":1 ::1 1 2\r\n"), "bad v1 address"},
    {"v1_ipv6_dst_in_tcp4", SPLIT("PROXY TCP4 192.0.2.1 2001:", "db8::1 1 2\r\n"), "bad v1 address"},
    {"v1_ipv4_in_tcp6", SPLIT("PROXY TCP6 192.0.2.1 ", "::1 1 2\r\n"), "bad v1 address"},
    {"v1_ipv4_dst_in_tcp6", SPLIT("PROXY TCP6 ::1 192.0.2.1 ", "1 2\r\n"), "bad v1 address"},
    {"v1_ipv6_two_gaps", SPLIT("PROXY TCP6 1::2::3 ", "::1 1 2\r\n"), "bad v1 address"},
    {"v1_ipv6_triple_colon", SPLIT("PROXY TCP6 1:::3 ", "::1 1 2\r\n"), "bad v1 address"},
    {"v1_ipv6_nine_groups", SPLIT("PROXY TCP6 1:2:3:4:5:6:7:8:9 ", "::1 1 2\r\n"), "bad v1 address"},
    {"v1_ipv6_five_digits", SPLIT("PROXY TCP6 12345:: ", "::1 1 2\r\n"), "bad v1 address"},
    {"v1_ipv6_bad_char", SPLIT("PROXY TCP6 ::g", " ::1 1 2\r\n"), "bad v1 address"},
    {"v1_ipv6_zone", SPLIT("PROXY TCP6 fe80::1%", "eth0 ::1 1 2\r\n"), "bad v1 address"},
    {"v1_ipv6_brackets", SPLIT("PROXY TCP6 [", "::1] ::1 1 2\r\n"), "bad v1 address"},
    {"v1_ipv6_too_long", SPLIT("PROXY TCP6 0000:0000:0000:0000:0000:0000:0000:0000:0000:0", "000 ::1 1 2\r\n"),
     "bad v1 address"},
    /* v1 ports */
    {"v1_port_65536", SPLIT("PROXY TCP4 192.0.2.1 198.51.100.2 65536 ", "443\r\n"), "bad v1 port"},
    {"v1_dport_65536", SPLIT("PROXY TCP4 192.0.2.1 198.51.100.2 1 65536\r", "\n"), "bad v1 port"},
    {"v1_port_99999", SPLIT("PROXY TCP4 192.0.2.1 198.51.100.2 99999 ", "443\r\n"), "bad v1 port"},
    {"v1_port_six_digits", SPLIT("PROXY TCP4 192.0.2.1 198.51.100.2 100000", " 443\r\n"), "bad v1 port"},
    {"v1_port_leading_zeros", SPLIT("PROXY TCP4 192.0.2.1 198.51.100.2 00", "80 443\r\n"), "bad v1 port"},
    {"v1_dport_leading_zero", SPLIT("PROXY TCP4 192.0.2.1 198.51.100.2 80 04", "43\r\n"), "bad v1 port"},
    {"v1_port_plus", SPLIT("PROXY TCP4 192.0.2.1 198.51.100.2 +", "80 443\r\n"), "bad v1 port"},
    {"v1_port_minus", SPLIT("PROXY TCP4 192.0.2.1 198.51.100.2 -", "1 443\r\n"), "bad v1 port"},
    {"v1_port_hex", SPLIT("PROXY TCP4 192.0.2.1 198.51.100.2 0x", "50 443\r\n"), "bad v1 port"},
    {"v1_port_missing", SPLIT("PROXY TCP4 192.0.2.1 198.51.100.2 1 \r", "\n"), "bad v1 port"},
    /* v2 */
    {"v2_bad_signature", SPLIT("\r\n\r\n\0\r\nQUIX", "\n\x21\x11\x00\x0C" ADDR4), NOT_PROXY},
    {"v2_crlf_then_http", SPLIT("\r\nG", "ET / HTTP/1.1\r\n"), NOT_PROXY},
    {"v2_version_1", SPLIT(SIG "\x11", "\x11\x00\x0C" ADDR4), "bad v2 version/command"},
    {"v2_version_3", SPLIT(SIG "\x31", "\x11\x00\x0C" ADDR4), "bad v2 version/command"},
    {"v2_version_0", SPLIT(SIG "\x01", "\x11\x00\x0C" ADDR4), "bad v2 version/command"},
    {"v2_command_2", SPLIT(SIG "\x22", "\x11\x00\x0C" ADDR4), "bad v2 version/command"},
    {"v2_command_15", SPLIT(SIG "\x2F", "\x11\x00\x0C" ADDR4), "bad v2 version/command"},
    {"v2_family_4", SPLIT(SIG "\x21\x41", "\x00\x0C" ADDR4), "bad v2 address family/protocol"},
    {"v2_family_15", SPLIT(SIG "\x21\xF1", "\x00\x0C" ADDR4), "bad v2 address family/protocol"},
    {"v2_protocol_3", SPLIT(SIG "\x21\x13", "\x00\x0C" ADDR4), "bad v2 address family/protocol"},
    {"v2_unix_protocol_3", SPLIT(SIG "\x21\x33", "\x00\xD8" Z216), "bad v2 address family/protocol"},
    {"v2_udp4", SPLIT(SIG "\x21\x12", "\x00\x0C" ADDR4), "v2 transport is not TCP"},
    {"v2_udp6", SPLIT(SIG "\x21\x22", "\x00\x24" ADDR6), "v2 transport is not TCP"},
    {"v2_inet_unspec_transport", SPLIT(SIG "\x21\x10", "\x00\x0C" ADDR4), "v2 transport is not TCP"},
    {"v2_short_inet", SPLIT(SIG "\x21\x11\x00\x0B", "\xC0\x00\x02\x01" "\xC6\x33\x64\x02" "\xDC\x04" "\x01"),
     "v2 address block too short"},
    {"v2_short_inet_empty", SPLIT(SIG "\x21\x11\x00\x00", ""), "v2 address block too short"},
    {"v2_short_inet6", SPLIT(SIG "\x21\x21\x00\x0C", ADDR4), "v2 address block too short"},
    {"v2_short_unix", SPLIT(SIG "\x21\x31\x00\x24", ADDR6), "v2 address block too short"},
    {"v2_too_long", SPLIT(SIG "\x21\x11\x0F\xF1", ADDR4), "v2 header longer than 4096 bytes"},
    {"v2_too_long_local", SPLIT(SIG "\x20\x00\xFF\xFF", ""), "v2 header longer than 4096 bytes"},
};

static void test_refusal(void **state)
{
    const refusal_t *t = *state;
    for (size_t k = 0; k <= t->len; k++) {
        pp_addr_t src, before;
        const char *why = NULL;
        memset(&src, 0x5A, sizeof(src));
        before = src;
        long r = parse_copy(t->in, k, &src, &why);
        assert_memory_equal(&src, &before, sizeof(src)); /* written only on success */
        if (k < t->at) {
            assert_int_equal(r, 0);
            assert_null(why);
            continue;
        }
        assert_int_equal(r, -1);
        assert_non_null(why);
        assert_string_equal(why, t->why);
    }
}

/* ---- fixed tests --------------------------------------------------------- */

/* A client that does not speak PROXY is told at its first byte, unless it starts like "PROXY" or the v2 signature. */
static void test_first_byte(void **state)
{
    (void)state;
    for (unsigned c = 0; c < 256; c++) {
        uint8_t b = (uint8_t)c;
        pp_addr_t src;
        const char *why = NULL;
        long r = parse_copy(&b, 1, &src, &why);
        if (c == 'P' || c == '\r') {
            assert_int_equal(r, 0);
        } else {
            assert_int_equal(r, -1);
            assert_string_equal(why, NOT_PROXY);
        }
    }
    assert_int_equal(pp_parse(NULL, 0, NULL, NULL), 0);
}

/* Byte 13: only version 2 with LOCAL (0) or PROXY (1). */
static void test_v2_version_command_byte(void **state)
{
    static const uint8_t hdr[] = SIG "\x21\x11\x00\x0C" ADDR4;
    (void)state;
    for (unsigned c = 0; c < 256; c++) {
        uint8_t in[sizeof(hdr) - 1];
        memcpy(in, hdr, sizeof(in));
        in[12] = (uint8_t)c;
        pp_addr_t src;
        const char *why = NULL;
        long r = parse_copy(in, sizeof(in), &src, &why);
        if (c == 0x20 || c == 0x21) {
            assert_int_equal(r, (long)sizeof(in));
            assert_int_equal(src.family, c == 0x21 ? 4 : 0);
        } else {
            assert_int_equal(r, -1);
            assert_string_equal(why, "bad v2 version/command");
        }
    }
}

/* Byte 14 under PROXY: TCP over IPv4/IPv6, or UNSPEC/UNIX (any transport) for "keep the peer"; under LOCAL: any. */
static void test_v2_family_byte(void **state)
{
    static const uint8_t proxy_hdr[] = SIG "\x21\x00\x00\xD8" IP6_SRC IP6_DST "\x1F\x90" "\x01\xBB" Z36 Z36 Z36 Z36 Z36;
    (void)state;
    assert_int_equal(sizeof(proxy_hdr) - 1, 16 + 216);
    for (unsigned local = 0; local < 2; local++) {
        for (unsigned c = 0; c < 256; c++) {
            uint8_t in[sizeof(proxy_hdr) - 1];
            memcpy(in, proxy_hdr, sizeof(in));
            in[12] = local ? 0x20 : 0x21;
            in[13] = (uint8_t)c;
            pp_addr_t src;
            const char *why = NULL;
            long r = parse_copy(in, sizeof(in), &src, &why);
            bool ok = local || c == 0x11 || c == 0x21 || c == 0x00 || c == 0x01 || c == 0x02 || c == 0x30 ||
                      c == 0x31 || c == 0x32;
            if (!ok) {
                assert_int_equal(r, -1);
                continue;
            }
            assert_int_equal(r, (long)sizeof(in));
            uint8_t want = local ? 0 : c == 0x11 ? 4 : c == 0x21 ? 6 : 0;
            assert_int_equal(src.family, want);
            /* the block holds IPv6 addresses: read as IPv4, its port bytes (8..9) are zero */
            assert_int_equal(src.port, want == 6 ? 8080 : 0);
            if (want != 0)
                assert_memory_equal(src.ip, "\x20\x01\x0D\xB8", 4);
        }
    }
}

/* The longest v1 line is 107 bytes with its CRLF; the 107th byte decides. */
static void test_v1_length_limit(void **state)
{
    static const char line[] = "PROXY UNKNOWN " A90 "a\r\n";
    static const char over[] = "PROXY UNKNOWN " A90 "aa\r\n";
    pp_addr_t src;
    const char *why = NULL;
    (void)state;
    assert_int_equal(sizeof(line) - 1, PP_V1_MAX);
    assert_int_equal(parse_copy(line, sizeof(line) - 1, &src, &why), PP_V1_MAX);
    assert_int_equal(parse_copy(over, PP_V1_MAX - 1, &src, &why), 0);
    assert_int_equal(parse_copy(over, PP_V1_MAX, &src, &why), -1);
    assert_string_equal(why, "v1 line longer than 107 bytes");
    assert_int_equal(parse_copy(over, sizeof(over) - 1, &src, &why), -1);
}

/* A v2 header may fill PP_V2_MAX, not one byte more; the length is judged at byte 16. */
static void test_v2_length_limit(void **state)
{
    static const uint8_t fixed[] = SIG "\x21\x11\x0F\xF0" ADDR4 "\x04\x0F\xE1"; /* 4080-byte block: a NOOP TLV */
    uint8_t *in = calloc(1, PP_V2_MAX + 10);
    pp_addr_t src;
    const char *why = NULL;
    (void)state;
    assert_non_null(in);
    memcpy(in, fixed, sizeof(fixed) - 1);
    assert_int_equal(parse_copy(in, PP_V2_MAX - 1, &src, &why), 0);
    assert_int_equal(parse_copy(in, PP_V2_MAX, &src, &why), PP_V2_MAX);
    assert_int_equal(parse_copy(in, PP_V2_MAX + 10, &src, &why), PP_V2_MAX);
    assert_addr(&src, 4, (const uint8_t[16])IP4_192_0_2_1, 56324);
    in[15] = 0xF1;
    assert_int_equal(parse_copy(in, 16, &src, &why), -1);
    assert_string_equal(why, "v2 header longer than 4096 bytes");
    free(in);
}

/* A truncated v2 header is not refused: TCP may deliver it in pieces; the caller's timeout ends the wait. */
static void test_v2_truncated(void **state)
{
    static const uint8_t hdr[] = SIG "\x21\x21\x00\x2B" ADDR6 "\x05\x00\x04" "abcd";
    pp_addr_t src;
    const char *why = NULL;
    (void)state;
    for (size_t k = 0; k < sizeof(hdr) - 1; k++)
        assert_int_equal(parse_copy(hdr, k, &src, &why), 0);
    assert_int_equal(parse_copy(hdr, sizeof(hdr) - 1, &src, &why), (long)sizeof(hdr) - 1);
    assert_int_equal(src.family, 6);
}

/* Every port 0..65535 in both positions, and each with a leading zero refused. */
static void test_v1_every_port(void **state)
{
    (void)state;
    for (unsigned port = 0; port <= 65535; port++) {
        char in[64];
        pp_addr_t src;
        const char *why = NULL;
        int n = snprintf(in, sizeof(in), "PROXY TCP4 192.0.2.1 198.51.100.2 %u %u\r\n", port, 65535 - port);
        assert_int_equal(parse_copy(in, (size_t)n, &src, &why), n);
        assert_int_equal(src.port, port);
        n = snprintf(in, sizeof(in), "PROXY TCP4 192.0.2.1 198.51.100.2 0%u 1\r\n", port);
        assert_int_equal(parse_copy(in, (size_t)n, &src, &why), -1);
        assert_string_equal(why, "bad v1 port");
    }
}

/* Every octet value in every position; a leading zero is refused (it would read as octal elsewhere). */
static void test_v1_every_octet(void **state)
{
    (void)state;
    for (unsigned pos = 0; pos < 4; pos++) {
        for (unsigned v = 0; v < 256; v++) {
            unsigned o[4] = {10, 20, 30, 40};
            char in[80];
            pp_addr_t src;
            const char *why = NULL;
            o[pos] = v;
            int n = snprintf(in, sizeof(in), "PROXY TCP4 %u.%u.%u.%u 198.51.100.2 1 2\r\n", o[0], o[1], o[2], o[3]);
            assert_int_equal(parse_copy(in, (size_t)n, &src, &why), n);
            assert_int_equal(src.ip[pos], v);
            n = snprintf(in, sizeof(in), "PROXY TCP4 %s%u.%s%u.%s%u.%s%u 198.51.100.2 1 2\r\n", pos == 0 ? "0" : "",
                         o[0], pos == 1 ? "0" : "", o[1], pos == 2 ? "0" : "", o[2], pos == 3 ? "0" : "", o[3]);
            assert_int_equal(parse_copy(in, (size_t)n, &src, &why), -1);
            assert_string_equal(why, "bad v1 address");
        }
    }
}

/* why may be NULL; src is only written on success. */
static void test_optional_why(void **state)
{
    static const char bad[] = "PROXY TCP4 192.0.2.1 198.51.100.2 1 65536\r\n";
    static const char good[] = "PROXY TCP4 192.0.2.1 198.51.100.2 7 8\r\n";
    pp_addr_t src;
    (void)state;
    memset(&src, 0x77, sizeof(src));
    assert_int_equal(parse_copy(bad, sizeof(bad) - 1, &src, NULL), -1);
    assert_int_equal(src.family, 0x77);
    assert_int_equal(parse_copy(good, sizeof(good) - 1, &src, NULL), (long)sizeof(good) - 1);
    assert_addr(&src, 4, (const uint8_t[16])IP4_192_0_2_1, 7);
}

/* ---- runner -------------------------------------------------------------- */

int main(void)
{
    static const struct CMUnitTest fixed[] = {
        cmocka_unit_test(test_first_byte),      cmocka_unit_test(test_v2_version_command_byte),
        cmocka_unit_test(test_v2_family_byte),  cmocka_unit_test(test_v1_length_limit),
        cmocka_unit_test(test_v2_length_limit), cmocka_unit_test(test_v2_truncated),
        cmocka_unit_test(test_v1_every_port),   cmocka_unit_test(test_v1_every_octet),
        cmocka_unit_test(test_optional_why),
    };
    enum { N = NTAB(fixed) + NTAB(valids) + NTAB(refusals) };
    static struct CMUnitTest tests[N];
    size_t n = 0;
    for (size_t i = 0; i < NTAB(fixed); i++)
        tests[n++] = fixed[i];
    for (size_t i = 0; i < NTAB(valids); i++)
        tests[n++] = (struct CMUnitTest){valids[i].name, test_valid, NULL, NULL, (void *)&valids[i]};
    for (size_t i = 0; i < NTAB(refusals); i++)
        tests[n++] = (struct CMUnitTest){refusals[i].name, test_refusal, NULL, NULL, (void *)&refusals[i]};
    return _cmocka_run_group_tests("proxyproto", tests, n, NULL, NULL);
}

/*
 * fuzz_proxyproto.c - libFuzzer target for proxyd/conn/proxyproto.c.
 *
 * Each input is parsed whole and cut at a point derived from it.  Besides the
 * sanitizers it checks the parser's own promises, aborting when one is broken:
 *  - a header is no longer than the input and its version's limit, its family
 *    is 0, 4 or 6 and unused address bytes are zero; a v1 header ends in CRLF,
 *    a v2 header is 16 plus its announced length;
 *  - 0 ("need more") only while the input is shorter than the limit;
 *  - a refusal has a reason; *src is written only on success, *why only set
 *    on a refusal;
 *  - a prefix answers 0 or the whole input's verdict (same length and address,
 *    or the same reason), and the header alone parses to the same result;
 *  - a v1 TCP4 source is canonical: its address and port read back exactly as
 *    inet_ntop and "%u" would write them (no leading zeros got through).
 * Parses run on exact-size heap copies so ASan sees overreads.
 */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "conn/proxyproto.h"

#define CHECK(c)                                                                                                       \
    do {                                                                                                               \
        if (!(c))                                                                                                      \
            abort();                                                                                                   \
    } while (0)

typedef struct {
    long r;
    pp_addr_t src;
    const char *why;
} verdict_t;

static verdict_t parse(const uint8_t *d, size_t n)
{
    verdict_t v;
    uint8_t *p = malloc(n ? n : 1);
    CHECK(p != NULL);
    memcpy(p, d, n);
    memset(&v.src, 0xA5, sizeof(v.src));
    pp_addr_t before = v.src;
    v.why = "unset";
    v.r = pp_parse(p, n, &v.src, &v.why);
    free(p);
    CHECK(v.r >= -1 && (v.r <= 0 || (size_t)v.r <= n));
    CHECK((v.r < 0) == (v.why != NULL));
    if (v.r <= 0)
        CHECK(memcmp(&v.src, &before, sizeof(before)) == 0);
    if (v.r < 0)
        CHECK(v.why[0] != '\0');
    return v;
}

static bool same(const verdict_t *a, const verdict_t *b)
{
    if (a->r != b->r)
        return false;
    if (a->r > 0)
        return memcmp(&a->src, &b->src, sizeof(a->src)) == 0;
    return a->r == 0 || strcmp(a->why, b->why) == 0;
}

/* "PROXY TCP4 <src> <dst> <sport> <dport>\r\n" in d[0..r): the source address and port as written. */
static void check_tcp4_canonical(const uint8_t *d, size_t r, const pp_addr_t *src)
{
    char addr[INET_ADDRSTRLEN], want[32];
    CHECK(inet_ntop(AF_INET, src->ip, addr, sizeof(addr)) != NULL);
    int n = snprintf(want, sizeof(want), "PROXY TCP4 %s ", addr);
    CHECK(n > 0 && (size_t)n < r && memcmp(d, want, (size_t)n) == 0);
    const uint8_t *dst = d + n, *end = d + r;
    const uint8_t *sport = memchr(dst, ' ', (size_t)(end - dst));
    CHECK(sport != NULL);
    sport++;
    n = snprintf(want, sizeof(want), "%u ", (unsigned)src->port);
    CHECK(n > 0 && (size_t)n <= (size_t)(end - sport) && memcmp(sport, want, (size_t)n) == 0);
}

static void check_header(const uint8_t *d, const verdict_t *v)
{
    size_t r = (size_t)v->r;
    bool v1 = d[0] == 'P';
    CHECK(r <= (v1 ? PP_V1_MAX : PP_V2_MAX));
    CHECK(v->src.family == 0 || v->src.family == 4 || v->src.family == 6);
    for (size_t i = v->src.family == 6 ? 16 : v->src.family == 4 ? 4 : 0; i < 16; i++)
        CHECK(v->src.ip[i] == 0);
    if (v->src.family == 0)
        CHECK(v->src.port == 0);
    if (v1) {
        CHECK(r >= 15 && d[r - 2] == '\r' && d[r - 1] == '\n');
        CHECK(memchr(d, '\n', r - 1) == NULL);
        if (v->src.family == 4)
            check_tcp4_canonical(d, r, &v->src);
    } else {
        CHECK(r >= 16 && r == 16 + ((size_t)d[14] << 8 | d[15]));
    }
    verdict_t alone = parse(d, r);
    CHECK(same(&alone, v));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    verdict_t whole = parse(data, size);
    if (whole.r > 0)
        check_header(data, &whole);
    else if (whole.r == 0)
        CHECK(size < (size && data[0] == 'P' ? PP_V1_MAX : PP_V2_MAX));

    uint64_t h = 1469598103934665603u;
    for (size_t i = 0; i < size && i < 16; i++)
        h = (h ^ data[i]) * 1099511628211u;
    size_t cut = size ? (size_t)(h % size) : 0;
    verdict_t pre = parse(data, cut);
    if (whole.r > 0 && cut >= (size_t)whole.r)
        CHECK(same(&pre, &whole));
    else
        CHECK(pre.r == 0 || (whole.r < 0 && same(&pre, &whole)));
    return 0;
}

/*
 * fuzz_dns.c - libFuzzer target for the DNS answer parser
 * (proxyd/upstream/dns.c), which reads what any host that can send a UDP
 * datagram to a worker's resolver socket wrote.
 *
 * The first byte chooses the query type (A or AAAA); the question name is
 * the one the input's own question carries when it is a valid host name
 * (so deep parses are reached), else "app.test"; the id is the input's.
 * Besides the sanitizers it checks the parser's promises, aborting when one
 * is broken:
 *  - a refusal has a reason; an acceptance has none and at most
 *    DNS_MAX_ADDRS addresses, each 4 bytes for A and 16 for AAAA;
 *  - no more CNAMEs followed than DNS_MAX_CNAMES;
 *  - an error rcode or a truncated answer carries no addresses;
 *  - the parse is a function of its input: a second run agrees.
 * Parses run on exact-size heap copies so ASan sees overreads.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "upstream/dns.h"

#define CHECK(c)                                                                                                       \
    do {                                                                                                               \
        if (!(c))                                                                                                      \
            abort();                                                                                                   \
    } while (0)

/* The question's name as text when it is plain labels (no pointer). */
static void question_name(const uint8_t *d, size_t n, char *out, size_t cap)
{
    size_t o = 12, len = 0;
    out[0] = '\0';
    while (o < n && d[o] != 0 && d[o] < 64 && o + 1 + d[o] <= n) {
        if (len + d[o] + 2 >= cap)
            return;
        if (len)
            out[len++] = '.';
        memcpy(out + len, d + o + 1, d[o]);
        len += d[o];
        o += 1 + (size_t)d[o];
    }
    out[len] = '\0';
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint16_t qtype = data[0] & 1 ? DNS_T_AAAA : DNS_T_A;
    const uint8_t *d = data + 1;
    size_t n = size - 1;
    uint8_t *copy = malloc(n ? n : 1);
    if (copy == NULL)
        return 0;
    memcpy(copy, d, n);
    char name[300];
    question_name(copy, n, name, sizeof(name));
    if (!dns_name_ok(name))
        strcpy(name, "app.test");
    uint16_t id = dns_id(copy, n);

    dns_answer_t a, b;
    const char *why = NULL, *why2 = NULL;
    int r = dns_parse(copy, n, id, name, qtype, &a, &why);
    if (r < 0) {
        CHECK(why != NULL);
    } else {
        CHECK(r == 0);
        CHECK(a.naddrs <= DNS_MAX_ADDRS);
        CHECK(a.ncnames <= DNS_MAX_CNAMES);
        for (unsigned i = 0; i < a.naddrs; i++)
            CHECK(a.addrs[i].len == (qtype == DNS_T_A ? 4 : 16));
        if (a.rcode != DNS_R_NOERROR || a.truncated)
            CHECK(a.naddrs == 0);
    }
    int r2 = dns_parse(copy, n, id, name, qtype, &b, &why2);
    CHECK(r2 == r);
    if (r == 0)
        CHECK(memcmp(&a, &b, sizeof(a)) == 0);
    else
        CHECK(strcmp(why, why2) == 0);

    uint8_t q[300];
    int ql = dns_query(q, sizeof(q), id, name, qtype);
    CHECK(ql > 12 && (size_t)ql <= sizeof(q));
    free(copy);
    return 0;
}

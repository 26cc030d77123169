/*
 * dns.h - the DNS wire format, as much as a stub resolver needs (RFC 1035,
 * RFC 3596): a query for the A or AAAA records of one name, and the parse
 * of the answer to that query.
 *
 * Pure functions on byte buffers: no sockets, no state, no allocation, so
 * the unit tests and the fuzz target (tests/fuzz/fuzz_dns.c) drive them
 * directly.  An answer is untrusted input: every length, offset and
 * compression pointer is checked, and a pointer must point before the
 * label that holds it, so a compression loop cannot exist.
 */
#ifndef PROXYD_DNS_H
#define PROXYD_DNS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DNS_MAX_ADDRS   16  /* addresses of one name kept (the rest are dropped) */
#define DNS_MAX_NAME    254 /* text of a name without its final dot, plus NUL */
#define DNS_MAX_CNAMES  8   /* a longer CNAME chain is refused */
#define DNS_MAX_MSG     1232 /* the largest UDP answer we read (the DNS flag day's EDNS size) */

enum dns_type { DNS_T_A = 1, DNS_T_CNAME = 5, DNS_T_AAAA = 28 };
enum dns_rcode { DNS_R_NOERROR = 0, DNS_R_FORMERR = 1, DNS_R_SERVFAIL = 2, DNS_R_NXDOMAIN = 3, DNS_R_REFUSED = 5 };

typedef struct {
    uint8_t len;    /* 4 or 16 */
    uint8_t ip[16]; /* network order */
} dns_addr_t;

typedef struct {
    unsigned rcode;      /* dns_rcode */
    bool truncated;      /* TC: the answer did not fit in UDP */
    uint32_t ttl;        /* the least TTL of the records used (addresses and CNAMEs); 0 when none */
    unsigned naddrs;
    unsigned ncnames;    /* CNAME records followed */
    dns_addr_t addrs[DNS_MAX_ADDRS];
} dns_answer_t;

/* Is name a host name we can query (letters, digits, '-', '_', dots;
 * labels 1..63 bytes; at most 253 bytes, a final dot allowed)? */
bool dns_name_ok(const char *name);
/* Write a recursive query for qtype records of name with id into buf:
 * its length, or -1 when name is not dns_name_ok or cap is too small. */
int dns_query(uint8_t *buf, size_t cap, uint16_t id, const char *name, uint16_t qtype);
/* The id of a message (0 when shorter than a header). */
uint16_t dns_id(const uint8_t *p, size_t n);
/* Parse p[0..n) as the answer to the query (id, name, qtype): 0 with *a
 * filled (its rcode may be an error, naddrs may be 0: no such records), or
 * -1 with *why when it is not an answer to that query or is malformed.
 * Address records count only when they belong to the name or to the end of
 * its CNAME chain. */
int dns_parse(const uint8_t *p, size_t n, uint16_t id, const char *name, uint16_t qtype, dns_answer_t *a,
              const char **why);
/* The rcode's name ("NXDOMAIN"), or "rcode N" in buf. */
const char *dns_rcode_name(unsigned rcode, char *buf, size_t cap);

#endif

/*
 * proxyproto.h - parser for the PROXY protocol header a load balancer sends
 * ahead of the client's bytes (HAProxy's "The PROXY protocol", version 1
 * text and version 2 binary), naming the client's address.
 *
 * Invariants:
 *  - pp_parse() is a pure function of (p, n) and allocates nothing.  A prefix
 *    of the input answers 0 ("need more") or the whole input's verdict, with
 *    the same reason: a prefix of a valid header is never refused, and a
 *    refusal comes as soon as the bytes seen decide it ("GET /" is refused at
 *    its first byte, so a client speaking HTTP to a PROXY listener learns at
 *    once).
 *  - Nothing past the header is read: at most PP_V1_MAX bytes for v1, 16 plus
 *    the announced length for v2.  0 is only answered while n is below the
 *    limit, so a caller that has buffered PP_V2_MAX bytes always gets an answer.
 *  - Only the source address is reported; for v2 the TLVs are skipped unread.
 *    Family 0 (v1 UNKNOWN, v2 LOCAL, AF_UNSPEC, AF_UNIX) means "keep the TCP
 *    peer's address".  Datagram (UDP) headers are refused: this is a TCP
 *    listener's parser.
 *
 * Self-contained (no other project header) so the fuzzer can build it alone.
 */
#ifndef PROXYD_PROXYPROTO_H
#define PROXYD_PROXYPROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    /* 4 or 6: the source address the header states; 0: LOCAL (v2) or UNKNOWN/UNSPEC: keep the TCP peer */
    uint8_t family;
    uint8_t ip[16]; /* network order; 4 bytes used for family 4 */
    uint16_t port;  /* host order */
} pp_addr_t;

#define PP_V1_MAX 107  /* longest v1 line, CRLF included */
#define PP_V2_MAX 4096 /* we refuse v2 headers longer than this (16-byte fixed part + addresses + TLVs) */

/* Parse a PROXY protocol header at the start of p[0..n) (the bytes peeked so far).
 * Returns the header's total length (> 0, the caller consumes exactly that many bytes) with *src filled;
 * 0 when more bytes are needed to decide (n is short of a complete header but what is there is valid so far);
 * -1 when it is not a valid PROXY header, with *why a static reason string ("not a PROXY protocol header",
 * "v1 line longer than 107 bytes", "bad v1 address", "v2 header longer than 4096 bytes",
 * "bad v2 version/command", ...).
 * *src is written only on success (all of it: unused ip bytes are zero); *why is NULL unless -1 is returned,
 * and why may be NULL. */
long pp_parse(const uint8_t *p, size_t n, pp_addr_t *src, const char **why);

#endif

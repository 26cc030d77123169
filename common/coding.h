/*
 * coding.h - content codings (RFC 9110 §8.4.1) and the negotiation of one
 * from a request's Accept-Encoding (§12.5.3).  proxyd's compression filter
 * and static handler ask it which coding to send; proxyctl route-test asks
 * it what proxyd would choose for given request headers.
 *
 * The rules (docs/compression.md has them in prose):
 *  - weights are thousandths (q=0.5 is 500); a weight of 0 refuses;
 *  - a coding not listed takes the weight of "*" when that is listed,
 *    else it is refused; identity, when neither it nor "*" is listed, is
 *    acceptable (weight 1000);
 *  - no Accept-Encoding field, or an empty one: identity (RFC 9110 allows
 *    any coding without the field, but no client that wants one omits it);
 *  - the highest weight among the offered codings wins; at equal weight
 *    the server's preference br > zstd > gzip decides; identity wins only
 *    with a weight above the best coding's;
 *  - a coding listed twice keeps its first weight; "x-gzip" is gzip
 *    (§8.4.1.3); an element that cannot be read (bad token, bad weight) is
 *    skipped, the rest of the field still counts.
 * Nothing here allocates; the parser reads the value in place.
 */
#ifndef COMMON_CODING_H
#define COMMON_CODING_H

#include <stddef.h>
#include <stdint.h>

#include "ruletable.h"

/* In the server's order of preference, best last. */
enum coding { CODING_IDENTITY, CODING_GZIP, CODING_ZSTD, CODING_BR, CODING_COUNT };
#define CODING_BIT(c)     (1u << (c))
#define CODING_WEIGHT_MAX 1000

/* What a request accepts: explicit weights (-1 not listed) and the weight
 * of "*" (-1 not listed). */
typedef struct {
    int16_t q[CODING_COUNT];
    int16_t star;
    uint8_t fields; /* Accept-Encoding fields seen */
} coding_accept_t;

void coding_accept_init(coding_accept_t *a);
/* Add one Accept-Encoding field value (a request may carry several). */
void coding_accept_parse(coding_accept_t *a, const char *p, size_t n);
/* The weight the request gives coding c, 0..1000. */
unsigned coding_weight(const coding_accept_t *a, enum coding c);
/* The coding to send among `offered` (CODING_BIT mask; identity is always
 * possible), by the rules above. */
enum coding coding_choose(const coding_accept_t *a, unsigned offered);

/* The codings a site sends (its RT_SF_GZIP/BROTLI/ZSTD flags), as CODING_BITs. */
unsigned coding_site_offered(const rt_site_t *s);

/* "gzip", "zstd", "br", "identity": the Content-Encoding token. */
const char *coding_name(enum coding c);
/* File suffix of a precompressed copy: ".gz", ".zst", ".br" ("" for identity). */
const char *coding_suffix(enum coding c);

#endif

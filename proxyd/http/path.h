/*
 * path.h - the request path in the one form that routing, static files and
 * the upstream request all use, so they cannot disagree about which
 * resource a request names (the root of path-confusion attacks).
 *
 * Normal form: percent-decoded except %25 ('%') and %2F ('/'), which stay
 * encoded (upper-case hex) so that a decoded byte can never be mistaken for
 * a separator or an escape; "." and ".." segments resolved (RFC 3986
 * §5.2.4).  Refused (400): NUL (%00), bad escapes, ".." above the root.
 */
#ifndef PROXYD_PATH_H
#define PROXYD_PATH_H

#include <stddef.h>

/* Normalize in[0..n) (starts with '/') into out (cap >= n + 1).  Returns
 * the length, or -1 with *why set. */
long path_normalize(const char *in, size_t n, char *out, size_t cap, const char **why);
/* Percent-encode a normalized path for the wire: bytes outside RFC 3986
 * pchar / '/' are escaped; '%' passes (it only precedes 25 or 2F).  out
 * needs 3 * n + 1 bytes.  Returns the length. */
size_t path_encode(const char *in, size_t n, char *out);

#endif

/*
 * return.h - the content handlers that answer from the rule table alone:
 * `return` (a status and body), `redirect` (a Location with variables), and
 * the two answers the route phase gives before any route: ACME HTTP-01
 * challenge tokens and redirect_http's move to https.
 */
#ifndef PROXYD_RETURN_H
#define PROXYD_RETURN_H

#include "http/request.h"

extern const http_handler_t return_handler;
extern const http_handler_t redirect_handler;

/* The key authorization of the token after the first prefix_len bytes of
 * the path, when the store holds it (RFC 8555 §8.3); false: not ours. */
bool return_acme_challenge(request_t *r, size_t prefix_len);
/* 301 to the same host (port dropped) and target over https. */
void return_https_redirect(request_t *r);

#endif

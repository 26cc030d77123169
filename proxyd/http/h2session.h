/*
 * h2session.h - the HTTP/2 protocol session (RFC 9113) for clients, over
 * TLS by ALPN "h2" or cleartext by prior knowledge (http2_cleartext).
 * nghttp2 does the framing, HPACK and flow-control bookkeeping; each stream
 * is a request_t that runs the same phases, handlers and filters as an
 * HTTP/1.1 request.
 */
#ifndef PROXYD_H2SESSION_H
#define PROXYD_H2SESSION_H

#include "http/request.h"

extern const conn_session_ops_t h2_session_ops;

/* The session for a ready connection when HTTP/2 applies to it (ALPN chose
 * "h2"; or a plain listener with http2_cleartext, which first looks for
 * the client preface), else NULL. */
const conn_session_ops_t *h2_select_session(conn_t *c);

/* The module: sends what handlers queued after each batch of events. */
extern const module_t h2_session_module;

#endif

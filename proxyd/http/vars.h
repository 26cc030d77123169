/*
 * vars.h - the variables a site's header values and redirect targets may
 * use ($host $scheme $remote_addr $request_id $server_port $request_uri),
 * and the lookup of a route's header operations by name.
 */
#ifndef PROXYD_VARS_H
#define PROXYD_VARS_H

#include <stdbool.h>
#include <stddef.h>

#include "http/request.h"

/* Expand tmpl for request r into out (always NUL-terminated); returns the
 * length, or cap when the result did not fit (out then holds the pieces
 * before the one that did not). */
size_t vars_expand(const request_t *r, const char *tmpl, char *out, size_t cap);
/* Does route r have a header operation (set or remove) in direction dir for name? */
bool vars_route_names(const rt_table_t *t, const rt_route_t *r, int dir, const char *name, size_t n);
/* An address as text, NUL-terminated, in out[VARS_PEER_MAX]; returns its
 * length: the connection's peer (the TCP peer, or the address a PROXY
 * protocol header stated), or the request's client ($remote_addr: what a
 * trusted proxy's X-Forwarded-For says, else the peer). */
#define VARS_PEER_MAX 46
size_t vars_peer(const conn_t *c, char *out);
size_t vars_client(const request_t *r, char *out);

#endif

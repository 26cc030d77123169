/*
 * proxy.h - the upstream side of a proxied request: server choice, the
 * per-worker keep-alive pool, connect, the rewritten request head, and both
 * body directions streamed with backpressure (never buffered whole).
 */
#ifndef PROXYD_PROXY_H
#define PROXYD_PROXY_H

#include "conn/conn.h"

/* Start proxying c->req (route action upstream). */
void proxy_start(conn_t *c, const h1_request_t *h);
/* The client sent more request bytes (in c->in) or closed. */
void proxy_client_input(conn_t *c);
/* The client's output buffer drained: upstream reading may resume. */
void proxy_client_drained(conn_t *c);
/* The request is being torn down (client gone or finished). */
void proxy_detach(conn_t *c, bool reusable);
void proxy_free_deferred(void);
void proxy_pool_close_all(void);
/* A table is freed: drop its cached references to keep-alive pools. */
void proxy_table_release(tref_t *tr);

#endif

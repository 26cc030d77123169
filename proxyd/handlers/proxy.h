/*
 * proxy.h - the content handler of `upstream:` routes: server choice,
 * connect (through the keep-alive pool, upstream/pool.h), the rewritten
 * request head, and both body directions streamed with backpressure
 * (never buffered whole), retries and passive health.
 */
#ifndef PROXYD_PROXY_H
#define PROXYD_PROXY_H

#include "http/request.h"

extern const http_handler_t proxy_handler;
/* fastcgi: routes: the same handler, speaking FastCGI (upstream/fastcgi.h)
 * to the server instead of HTTP/1.1. */
extern const http_handler_t fastcgi_handler;

#endif

/*
 * static_handler.h - the content handler of `static:` routes: the file
 * decision of static.c turned into a response (sendfile for the body).
 */
#ifndef PROXYD_STATIC_HANDLER_H
#define PROXYD_STATIC_HANDLER_H

#include "http/request.h"

extern const http_handler_t static_handler;

/* Send len bytes of fd from off as the body and end it (sendfile, or read
 * piece by piece when a body filter changes the bytes); takes fd.  Also
 * the cache's, for its entries. */
void static_send_body(request_t *r, int fd, uint64_t off, uint64_t len);
/* Per-generation state: each static route's root, opened once per load. */
extern const module_t static_module;

#endif

/*
 * static_handler.h - the content handler of `static:` routes: the file
 * decision of static.c turned into a response (sendfile for the body).
 */
#ifndef PROXYD_STATIC_HANDLER_H
#define PROXYD_STATIC_HANDLER_H

#include "http/request.h"

extern const http_handler_t static_handler;
/* Per-generation state: each static route's root, opened once per load. */
extern const module_t static_module;

#endif

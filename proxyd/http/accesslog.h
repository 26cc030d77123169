/*
 * accesslog.h - one line per finished request, in the site's format
 * (json or combined), buffered per worker and written with one write(2)
 * per loop iteration (or when the buffer fills), O_APPEND so that workers
 * never interleave inside a line.
 */
#ifndef PROXYD_ACCESSLOG_H
#define PROXYD_ACCESSLOG_H

#include "http/request.h"

int accesslog_open(const char *path); /* "" = stderr, "off" = nowhere */
bool accesslog_on(void);              /* false: logs.access is "off" */
void accesslog_request(const request_t *r);
void accesslog_flush(void);
/* The module: the log phase, flushed after every batch and at exit. */
extern const module_t accesslog_module;

#endif

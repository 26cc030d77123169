/*
 * accesslog.h - one line per finished request, in the site's format
 * (json or combined), buffered per worker and written with one write(2)
 * per loop iteration (or when the buffer fills), O_APPEND so that workers
 * never interleave inside a line.
 */
#ifndef PROXYD_ACCESSLOG_H
#define PROXYD_ACCESSLOG_H

#include "http/request.h"

/* path "" = stderr (both formats), "off" = nowhere; else the JSON file at
 * path and, when t has a combined-format site, the combined one beside it
 * (see accesslog.c).  Directories are made.  0, or -1 with why. */
int accesslog_open(const char *path, const rt_table_t *t, char *why, size_t cap);
/* The master: open the files again (SIGUSR1), or the combined one for the
 * first time when t needs it.  0, or -1 with why (the old ones kept). */
int accesslog_reopen(const rt_table_t *t, char *why, size_t cap);
/* Does t have a combined-format site whose file is not open yet? */
bool accesslog_wants_reopen(const rt_table_t *t);
/* The descriptor of format fmt (RT_LOG_JSON, RT_LOG_COMBINED), -1 if none. */
int accesslog_fd(int fmt);
/* From now on write format fmt's lines to fd (a worker, from the master). */
void accesslog_take_fd(int fmt, int fd);
bool accesslog_on(void);              /* false: logs.access is "off" */
void accesslog_request(const request_t *r);
void accesslog_flush(void);
/* The module: the log phase, flushed after every batch and at exit. */
extern const module_t accesslog_module;

#endif

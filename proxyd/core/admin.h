/*
 * admin.h - the admin interface in the master: HTTP/1.1 over the admin unix
 * socket (GET /status, GET /metrics, GET /health, POST /reload) and, when
 * metrics_listen is set, GET /metrics on that TCP address.
 */
#ifndef PROXYD_ADMIN_H
#define PROXYD_ADMIN_H

#include <stdbool.h>

#include "core/event.h"
#include "core/table.h"

/* Bind the admin socket (removing a stale one) and the metrics listener. */
int admin_start(ev_loop_t *loop, const rt_table_t *t);
/* keep_path: the socket file now belongs to a new master (binary upgrade). */
void admin_stop(bool keep_path);
/* The listening fds, to hand over to a new master. */
int admin_fds(int *unix_fd, int *metrics_fd);
/* A forked worker drops the master's admin sockets. */
void admin_close_in_child(void);

#endif

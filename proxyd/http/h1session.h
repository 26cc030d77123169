/*
 * h1session.h - the HTTP/1.1 session behind conn_session_ops_t, and the
 * choice of a session for a ready connection (ALPN will pick HTTP/2).
 */
#ifndef PROXYD_H1SESSION_H
#define PROXYD_H1SESSION_H

#include "http/request.h"

extern const conn_session_ops_t h1_session_ops;

/* The session a ready connection speaks (conn_set_selector). */
const conn_session_ops_t *http_select_session(conn_t *c);

/* The module: installs http_select_session in every worker. */
extern const module_t h1_session_module;

#endif

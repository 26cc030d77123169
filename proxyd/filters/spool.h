/*
 * spool.h - response buffering (SPEC §10 `buffering`, nginx's proxy_buffering
 * with proxy_max_temp_file_size): the body filter nearest the session.
 *
 * For a proxied response of a route with `buffering: true` (the default) the
 * filter takes the body as fast as the upstream sends it: what the session
 * cannot take now is held, first in memory (SPOOL_MEM_BUFS buffers), then in
 * a temporary file, so the proxy reads the upstream to its end and gives the
 * connection back to its keep-alive pool while a slow client still
 * downloads.  A route's `buffering_max` (default 1g) bounds the bytes one
 * response writes to its file; beyond it the rest streams with the client's
 * backpressure, as without buffering.  `buffering: false` (SSE) and every
 * other response (static, return, cache hits, tunnels) pass through
 * untouched.
 *
 * Invariants:
 *  - Order is kept: memory holds older bytes than the file; while the file
 *    holds unsent bytes, new ones go to the file too.
 *  - Memory per response: SPOOL_MEM_BUFS buffers and one read buffer.  Per
 *    worker, spooled memory is capped (SPOOL_WORKER_MEM_BUFS buffers; beyond
 *    it bytes go to the file) and so are the bytes of spool files at once
 *    (SPOOL_WORKER_DISK; beyond it a response streams).
 *  - A spool file is unlinked from the start (O_TMPFILE, else created and
 *    unlinked at once): nothing is left on disk by a crash.  It lives in
 *    $TMPDIR as proxyd started, else /var/tmp (private under the systemd
 *    unit's PrivateTmp), and is emptied whenever the client has taken all
 *    of it.
 *  - A client that takes nothing for the route's read timeout while the
 *    filter holds bytes is cut (send timeout), so a stalled client cannot
 *    keep a spool forever.
 */
#ifndef PROXYD_SPOOL_H
#define PROXYD_SPOOL_H

#include "http/request.h"

#define SPOOL_MEM_BUFS 4                      /* 64 KiB of memory per response before the file */
#define SPOOL_WORKER_MEM_BUFS 1024            /* 16 MiB of spooled memory per worker */
#define SPOOL_WORKER_DISK (8ull << 30)        /* bytes of spool files per worker at once */
#define SPOOL_DEFAULT_MAX (1ull << 30)        /* buffering_max not written (0 in the table) */

extern const module_t spool_filter_module;

#endif

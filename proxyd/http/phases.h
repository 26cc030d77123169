/*
 * phases.h - the ordered phases every request runs before its content
 * handler (nginx's phase engine, reduced to what proxyd needs):
 *
 *   route   path normalization, ACME HTTP-01 answers, the site by Host,
 *           redirect_http, the route by method and path; picks r->handler
 *   access  allow lists (403) and max_body by Content-Length (413)
 *   limit   rate limits (http/limit.c): 429, or a delay
 *
 * A phase returns HTTP_PHASE_NEXT to go on or HTTP_PHASE_DONE when it has
 * answered (or handed the request on).  Adding a phase is a function and
 * one entry in http_phases[] (phases.c).
 */
#ifndef PROXYD_PHASES_H
#define PROXYD_PHASES_H

#include "http/request.h"

/* HTTP_PHASE_SUSPEND: the request waits (a rate limit's delay); whoever
 * holds it calls request_run() again, which goes on with the next phase. */
enum { HTTP_PHASE_NEXT, HTTP_PHASE_DONE, HTTP_PHASE_SUSPEND };
typedef int (*http_phase_t)(request_t *r);

/* NULL-terminated, in order. */
extern const http_phase_t http_phases[];

#endif

/*
 * route.h - request to site and route, read straight from a verified rule
 * table.  Shared by proxyd (every request) and proxyctl route-test, so that
 * the explanation and the behaviour cannot drift apart.
 */
#ifndef COMMON_ROUTE_H
#define COMMON_ROUTE_H

#include "ruletable.h"

/* Regex routes are compiled by the caller (proxyd once per table, route-test
 * on demand); this asks whether route idx's pattern matches the path. */
typedef int (*route_regex_fn)(void *ud, uint32_t route, const char *path, size_t n);

typedef struct {
    uint32_t route;   /* RT_NONE when no route matched */
    uint32_t allow;   /* for 405: methods of routes whose path matched */
    int status;       /* 0 matched, 404 no route, 405 method not allowed */
} route_result_t;

/* Site for a Host header value (port and trailing dot ignored, any case):
 * exact name, then the longest wildcard suffix, then the default site. */
uint32_t route_site(const rt_table_t *t, const char *host, size_t n);
/* The same without the default site: RT_NONE when no site names this host. */
uint32_t route_site_named(const rt_table_t *t, const char *host, size_t n);
/* The first route of site, in file order, that matches method and path. */
void route_match(const rt_table_t *t, uint32_t site, const char *method, size_t mlen, const char *path, size_t plen,
                 route_regex_fn regex, void *ud, route_result_t *res);

#endif

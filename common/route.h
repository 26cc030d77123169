/*
 * route.h - request to site and route, read straight from a verified rule
 * table.  Shared by proxyd (every request) and proxyctl route-test, so that
 * the explanation and the behaviour cannot drift apart.
 */
#ifndef COMMON_ROUTE_H
#define COMMON_ROUTE_H

#include "ruletable.h"

/* Regex routes are compiled by the caller (proxyd once per table, route-test
 * on demand); this asks whether route idx's pattern matches the path: 1 it
 * does, 0 it does not, -1 the match could not be decided (PCRE2 match or
 * depth limit, JIT stack, invalid UTF-8 in the path: any error but "no
 * match").  Routing fails closed on -1, see route_match. */
typedef int (*route_regex_fn)(void *ud, uint32_t route, const char *path, size_t n);

/* The limits both callers set on every regex match (pcre2_set_match_limit,
 * pcre2_set_depth_limit, a JIT stack of this size), so that route-test and
 * proxyd decide alike.  PCRE2's default match limit (10 million) lets one
 * request with a pathological pattern such as (a+)+$ cost a worker about
 * 25 ms with JIT and 200 ms without; 100000 stops it within 2 ms and is far
 * above what ordinary patterns need on a path of the largest allowed size
 * (max_uri_size).  The depth limit applies to the interpreter only (when JIT
 * is unavailable).  The default 32 KiB JIT stack runs out on a legitimate
 * ^/(\w+/)*\w+\.php$ over a 4 KiB path of short segments; 1 MiB does not. */
#define ROUTE_REGEX_MATCH_LIMIT 100000
#define ROUTE_REGEX_DEPTH_LIMIT 10000
#define ROUTE_REGEX_JIT_STACK (1024 * 1024)

typedef struct {
    uint32_t route;   /* RT_NONE when no route matched */
    uint32_t allow;   /* for 405: methods of routes whose path matched */
    int status;       /* 0 matched, 404 no route, 405 method not allowed,
                       * 500 a regex route that could have won did not decide */
    uint32_t failed;  /* the first regex route whose match failed (-1), or RT_NONE */
} route_result_t;

/* Site for a Host header value (port and trailing dot ignored, any case):
 * exact name, then the longest wildcard suffix, then the default site. */
uint32_t route_site(const rt_table_t *t, const char *host, size_t n);
/* The same without the default site: RT_NONE when no site names this host. */
uint32_t route_site_named(const rt_table_t *t, const char *host, size_t n);
/* The first route of site, in file order, that matches method and path.
 * Fails closed when a regex match fails (the callback returns -1): on a
 * `return` route (a deny rule) the failure counts as a match; on any other
 * route that takes the method it ends matching with status 500, never with
 * a later route, since the failed route might have been the one to win. */
void route_match(const rt_table_t *t, uint32_t site, const char *method, size_t mlen, const char *path, size_t plen,
                 route_regex_fn regex, void *ud, route_result_t *res);

/* The path a proxy route sends upstream for a request path that matched
 * it: strip_prefix and rewrite_prefix replace the route's prefix (strip_prefix
 * by "/").  The new path is *head followed by *rest (one '/' where both would
 * bring one); *head is "" when the route rewrites nothing. */
void route_upstream_path(const rt_table_t *t, const rt_route_t *r, const char *path, size_t n, const char **head,
                         size_t *head_len, const char **rest, size_t *rest_len);

/* How a fastcgi route splits a request path (nginx's fastcgi_split_path_info
 * idiom): SCRIPT_NAME is path[0..return), up to the end of the first path
 * segment ending in ".php"; PATH_INFO is the rest.  Without such a segment
 * the whole path is the script, and a path ending in '/' gets the route's
 * index file appended (*add_index). */
size_t route_fastcgi_script(const char *path, size_t n, bool *add_index);

#endif

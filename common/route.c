/*
 * route.c - host and route lookup (see route.h).
 *
 * Cost: one hash probe for the host (plus one per label for wildcards), one
 * hash probe for exact paths, a binary search and a parent walk for
 * prefixes, and the site's regex routes only up to the best candidate so
 * far.  Nothing depends on the number of sites.
 *
 * A regex that cannot be decided (a PCRE2 limit) never reads as "no match":
 * that would let a request step past a deny rule to a later route.
 */
#include "route.h"

#include <stdbool.h>
#include <string.h>
#include <strings.h>

static uint32_t host_probe(const rt_table_t *t, const rt_host_t *tab, uint32_t cap, const char *h, size_t n)
{
    if (cap == 0)
        return RT_NONE;
    uint32_t hash = rt_hash(h, n);
    for (uint32_t i = hash & (cap - 1);; i = (i + 1) & (cap - 1)) {
        const rt_host_t *e = &tab[i];
        if (e->site == RT_NONE)
            return RT_NONE;
        if (e->hash == hash && e->name.len == n && strncasecmp(rt_cstr(t, e->name), h, n) == 0)
            return e->site;
    }
}

uint32_t route_site_named(const rt_table_t *t, const char *host, size_t n)
{
    if (n == 0)
        return RT_NONE;
    /* Strip ":port" (but not inside an IPv6 literal) and one trailing dot. */
    if (host[0] == '[') {
        const char *close = memchr(host, ']', n);
        if (close)
            n = (size_t)(close - host) + 1;
    } else {
        const char *colon = memchr(host, ':', n);
        if (colon)
            n = (size_t)(colon - host);
    }
    if (n && host[n - 1] == '.')
        n--;
    uint32_t s = host_probe(t, t->hosts, t->nhosts, host, n);
    if (s != RT_NONE)
        return s;
    for (size_t i = 1; i < n && t->nwildcards; i++) {
        if (host[i] != '.')
            continue;
        s = host_probe(t, t->wildcards, t->nwildcards, host + i, n - i);
        if (s != RT_NONE)
            return s;
    }
    return RT_NONE;
}

uint32_t route_site(const rt_table_t *t, const char *host, size_t n)
{
    uint32_t s = route_site_named(t, host, n);
    return s != RT_NONE ? s : t->global->default_site;
}

typedef struct {
    const rt_table_t *t;
    uint32_t mbit;      /* 0 for methods outside the known set */
    route_result_t *res;
} matcher_t;

/* Does route rt take the method?  TRACE only where the route names it: it
 * echoes the request, cookies included, back to a script (cross-site
 * tracing), so a route without a methods list does not take it. */
static bool takes(const rt_route_t *rt, uint32_t mbit)
{
    return rt->methods == RT_M_ALL ? mbit != RT_M_TRACE : (rt->methods & mbit) != 0;
}

static uint32_t allowed_methods(const rt_route_t *rt)
{
    return rt->methods == RT_M_ALL ? RT_M_ALL & ~(uint32_t)RT_M_TRACE : rt->methods;
}

static void consider(matcher_t *m, uint32_t r)
{
    const rt_route_t *rt = &m->t->routes[r];
    if (takes(rt, m->mbit)) {
        if (m->res->route == RT_NONE || r < m->res->route)
            m->res->route = r;
    } else {
        m->res->allow |= allowed_methods(rt);
    }
}

static void consider_refs(matcher_t *m, rt_span_t refs)
{
    for (uint32_t i = 0; i < refs.count; i++)
        consider(m, m->t->refs[refs.first + i]);
}

static void match_exact(matcher_t *m, const rt_site_t *s, const char *path, size_t n)
{
    uint32_t cap = s->exact_paths.count;
    if (cap == 0)
        return;
    uint32_t h = rt_hash(path, n);
    for (uint32_t i = h & (cap - 1);; i = (i + 1) & (cap - 1)) {
        const rt_path_t *p = &m->t->paths[s->exact_paths.first + i];
        if (p->refs.count == 0)
            return;
        if (p->hash == h && p->path.len == n && memcmp(rt_cstr(m->t, p->path), path, n) == 0) {
            consider_refs(m, p->refs);
            return;
        }
    }
}

static int bytes_cmp(const char *a, size_t an, const char *b, size_t bn)
{
    int c = memcmp(a, b, an < bn ? an : bn);
    return c ? c : (an > bn) - (an < bn);
}

static void match_prefix(matcher_t *m, const rt_site_t *s, const char *path, size_t n)
{
    const rt_path_t *v = &m->t->paths[s->prefix_paths.first];
    uint32_t lo = 0, hi = s->prefix_paths.count;
    /* Last entry <= path: every stored prefix of path is on its parent chain. */
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (bytes_cmp(rt_cstr(m->t, v[mid].path), v[mid].path.len, path, n) <= 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (uint32_t i = lo ? lo - 1 : RT_NONE; i != RT_NONE; i = v[i].parent) {
        if (v[i].path.len <= n && memcmp(rt_cstr(m->t, v[i].path), path, v[i].path.len) == 0)
            consider_refs(m, v[i].refs);
    }
}

/* Route r's regex could not be decided.  A deny rule (`return`) counts as
 * matched; so does a route that does not take the method, as it can only
 * add to Allow.  Any other route might have won: 0 tells the caller to stop
 * with 500 rather than fall through to a later route. */
static int regex_failed(matcher_t *m, uint32_t r)
{
    const rt_route_t *rt = &m->t->routes[r];
    if (m->res->failed == RT_NONE)
        m->res->failed = r;
    if (rt->action == RT_ACT_RETURN || !takes(rt, m->mbit)) {
        consider(m, r);
        return 1;
    }
    return 0;
}

void route_match(const rt_table_t *t, uint32_t site, const char *method, size_t mlen, const char *path, size_t plen,
                 route_regex_fn regex, void *ud, route_result_t *res)
{
    const rt_site_t *s = &t->sites[site];
    res->route = RT_NONE;
    res->allow = 0;
    res->status = 0;
    res->failed = RT_NONE;
    matcher_t m = {t, rt_method_bit(method, mlen), res};
    match_exact(&m, s, path, plen);
    match_prefix(&m, s, path, plen);
    for (uint32_t i = 0; i < s->scan.count; i++) {
        uint32_t r = t->refs[s->scan.first + i];
        if (res->route != RT_NONE && r > res->route)
            break; /* scan list is in file order: nothing later can win */
        int hit = t->routes[r].match == RT_MATCH_ANY ? 1 : regex ? regex(ud, r, path, plen) : 0;
        if (hit < 0 && !regex_failed(&m, r)) {
            res->route = RT_NONE;
            res->status = 500;
            return;
        }
        if (hit > 0)
            consider(&m, r);
    }
    res->status = res->route != RT_NONE ? 0 : res->allow ? 405 : 404;
}

void route_upstream_path(const rt_table_t *t, const rt_route_t *r, const char *path, size_t n, const char **head,
                         size_t *head_len, const char **rest, size_t *rest_len)
{
    *head = "";
    *head_len = 0;
    *rest = path;
    *rest_len = n;
    if (r->match != RT_MATCH_PREFIX || !(r->flags & (RT_RF_STRIP_PREFIX | RT_RF_REWRITE_PREFIX)) || n < r->path.len)
        return;
    if (r->flags & RT_RF_REWRITE_PREFIX) {
        *head = rt_cstr(t, r->extra);
        *head_len = r->extra.len;
    } else {
        *head = "/";
        *head_len = 1;
    }
    *rest = path + r->path.len;
    *rest_len = n - r->path.len;
    if (*head_len && (*head)[*head_len - 1] == '/' && *rest_len && (*rest)[0] == '/') {
        (*rest)++; /* "/" + "/users" (prefix "/api" without its slash): one slash */
        (*rest_len)--;
    }
}

size_t route_fastcgi_script(const char *path, size_t n, bool *add_index)
{
    for (size_t i = 0; i + 4 <= n; i++)
        if (memcmp(path + i, ".php", 4) == 0 && i > 0 && path[i - 1] != '/' && (i + 4 == n || path[i + 4] == '/')) {
            *add_index = false;
            return i + 4;
        }
    *add_index = n > 0 && path[n - 1] == '/';
    return n;
}

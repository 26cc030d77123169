/*
 * compile.c - the model of checked sites into a rule table.
 *
 * Sites are emitted in name order and everything else in source order, so
 * the output depends only on the inputs (byte-identical when recompiled).
 * Identical policies are stored once.  Per site, exact paths go into a small
 * open-addressed hash, prefixes into a sorted array with parent links, and
 * the routes neither can place (regex, match-all) into a scan list; the
 * matcher (common/route.c) combines them to find the first route in file
 * order without walking every route.
 */
#include <stdlib.h>
#include <string.h>

#include "../common/rtwrite.h"
#include "../common/str.h"
#include "config.h"

typedef struct {
    rtw_t *w;
    uint32_t *pol_tab; /* open-addressed policy indices, RT_NONE empty */
    uint32_t pol_cap;
    const cfg_global_t *g;
} comp_t;

static uint32_t pow2_at_least(uint32_t n)
{
    uint32_t c = 1;
    while (c < n)
        c <<= 1;
    return c;
}

static uint32_t bytes_hash(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 16777619u;
    return h;
}

static uint32_t add_policy(comp_t *c, const rt_policy_t *p)
{
    if (rtw_count(c->w, RT_SEC_POLICIES) * 2 >= c->pol_cap) {
        uint32_t cap = c->pol_cap ? c->pol_cap * 2 : 256;
        uint32_t *tab = malloc(cap * sizeof(*tab));
        if (tab == NULL)
            abort();
        memset(tab, 0xff, cap * sizeof(*tab));
        for (uint32_t i = 0; i < rtw_count(c->w, RT_SEC_POLICIES); i++) {
            uint32_t h = bytes_hash(rtw_rec(c->w, RT_SEC_POLICIES, i), sizeof(*p)) & (cap - 1);
            while (tab[h] != RT_NONE)
                h = (h + 1) & (cap - 1);
            tab[h] = i;
        }
        free(c->pol_tab);
        c->pol_tab = tab;
        c->pol_cap = cap;
    }
    uint32_t h = bytes_hash(p, sizeof(*p)) & (c->pol_cap - 1);
    for (; c->pol_tab[h] != RT_NONE; h = (h + 1) & (c->pol_cap - 1))
        if (memcmp(rtw_rec(c->w, RT_SEC_POLICIES, c->pol_tab[h]), p, sizeof(*p)) == 0)
            return c->pol_tab[h];
    return c->pol_tab[h] = rtw_add(c->w, RT_SEC_POLICIES, p, 1);
}

static uint32_t ms32(uint64_t ms) { return ms > UINT32_MAX ? UINT32_MAX : (uint32_t)ms; }

/* Every empty span is {0, 0}, wherever it would have started: the linker
 * then moves exactly the spans with records (link_site). */
static rt_span_t span(uint32_t first, uint32_t count) { return count ? (rt_span_t){first, count} : (rt_span_t){0, 0}; }

static uint32_t zone_index(const char *name, const void *zones, size_t n, size_t stride)
{
    for (size_t i = 0; name && i < n; i++)
        if (strcmp(*(char *const *)((const char *)zones + i * stride + sizeof(pos_t)), name) == 0)
            return (uint32_t)i;
    return RT_NONE;
}

/* Without retry.tries written, a failed attempt may go on to every other server
 * of the pool (nginx's proxy_next_upstream error timeout with unlimited
 * tries, SPEC §10); the 64 a request can keep track of at most. */
#define RETRY_DEFAULT_MAX 64

static uint32_t default_tries(const cfg_site_t *s, const cfg_route_t *r)
{
    for (size_t i = 0; rt_action_upstream(r->action) && i < s->nups; i++)
        if (strcmp(s->ups[i].name, r->upstream.s) == 0)
            return s->ups[i].nservers > RETRY_DEFAULT_MAX ? RETRY_DEFAULT_MAX : (uint32_t)s->ups[i].nservers;
    return 1;
}

/* The policy's access list: the site's and the route's deny entries, then
 * the route's allow list, or the site's when the route has none. */
static rt_span_t access_span(comp_t *c, const cfg_site_t *site, const cfg_route_t *r)
{
    rt_span_t sp = {rtw_count(c->w, RT_SEC_CIDRS), 0};
    const rt_cidr_t *lists[3] = {site->deny, r->deny, r->nallow ? r->allow : site->allow};
    size_t counts[3] = {site->ndeny, r->ndeny, r->nallow ? r->nallow : site->nallow};
    for (int k = 0; k < 3; k++)
        for (size_t i = 0; i < counts[k]; i++) {
            rt_cidr_t x = lists[k][i];
            x.flags = k < 2 ? RT_CIDR_DENY : 0;
            rtw_add(c->w, RT_SEC_CIDRS, &x, 1);
            sp.count++;
        }
    if (sp.count == 0)
        sp.first = 0;
    return sp;
}

static uint32_t route_policy(comp_t *c, const cfg_site_t *site, const cfg_route_t *r)
{
    rt_policy_t p;
    memset(&p, 0, sizeof(p));
    p.connect_ms = ms32(r->connect_ms);
    p.read_ms = ms32(r->read_ms);
    p.send_ms = ms32(r->send_ms);
    p.retry_on = r->retry_on;
    p.retry_tries = r->retry_tries ? r->retry_tries : default_tries(site, r);
    p.rate_zone = zone_index(r->rate_zone.s, c->g->rate_zones, c->g->nrate_zones, sizeof(cfg_rate_zone_t));
    p.rate_burst = r->rate_burst;
    p.rate_flags = r->rate_nodelay ? RT_RATE_NODELAY : 0;
    if (r->lock_timeout_ms) {
        uint64_t u = (r->lock_timeout_ms + 99) / 100;
        p.rate_flags |= (uint32_t)(u > 0xffff ? 0xffff : u) << RT_CACHE_LOCK_SHIFT;
    }
    p.cache_zone = zone_index(r->cache_zone.s, c->g->cache_zones, c->g->ncache_zones, sizeof(cfg_cache_zone_t));
    p.cache_use_stale = r->use_stale;
    p.max_body = r->max_body;
    if (r->nvalid) {
        p.cache_valid.first = rtw_count(c->w, RT_SEC_STATUS_TTLS);
        p.cache_valid.count = (uint32_t)r->nvalid;
        for (size_t i = 0; i < r->nvalid; i++) {
            rt_status_ttl_t t = {r->valid[i].status, ms32(r->valid[i].ttl_ms / 1000)};
            rtw_add(c->w, RT_SEC_STATUS_TTLS, &t, 1);
        }
    }
    if (r->nbypass + r->nkey_headers) {
        p.cache_bypass.first = rtw_count(c->w, RT_SEC_STRLIST);
        p.cache_bypass.count = (uint32_t)(r->nbypass + r->nkey_headers);
        for (size_t i = 0; i < r->nbypass; i++) {
            rt_str_t s = rtw_cstr(c->w, r->bypass[i]);
            rtw_add(c->w, RT_SEC_STRLIST, &s, 1);
        }
        for (size_t i = 0; i < r->nkey_headers; i++) {
            char name[300];
            snprintf(name, sizeof(name), RT_CACHE_KEY_HEADER "%s", r->key_headers[i]);
            rt_str_t s = rtw_cstr(c->w, name);
            rtw_add(c->w, RT_SEC_STRLIST, &s, 1);
        }
    }
    p.allow = access_span(c, site, r);
    return add_policy(c, &p);
}

static rt_sockaddr_t sockaddr_rec(comp_t *c, const char *text, const rt_sockaddr_t *sa)
{
    rt_sockaddr_t r;
    memset(&r, 0, sizeof(r));
    r.addr = rtw_cstr(c->w, text);
    r.kind = sa->kind;
    r.port = sa->port;
    memcpy(r.ip, sa->ip, sizeof(r.ip));
    return r;
}

static void emit_upstreams(comp_t *c, const cfg_site_t *s, uint32_t site, rt_site_t *rec)
{
    rec->upstreams = span(rtw_count(c->w, RT_SEC_UPSTREAMS), (uint32_t)s->nups);
    for (size_t i = 0; i < s->nups; i++) {
        const cfg_upstream_t *u = &s->ups[i];
        rt_upstream_t r;
        memset(&r, 0, sizeof(r));
        uint32_t idx = rtw_count(c->w, RT_SEC_UPSTREAMS);
        r.name = rtw_cstr(c->w, u->name);
        r.site = site;
        r.balance = (uint8_t)u->balance;
        r.tls_flags = (uint8_t)((u->tls ? RT_UTLS_ON : 0) | (u->tls_verify ? RT_UTLS_VERIFY : 0));
        r.flags = u->fastcgi ? RT_UF_FASTCGI : 0;
        r.keepalive = u->keepalive;
        r.resolve_ms = ms32(u->resolve_ms);
        if (u->hc) {
            r.hc_interval_ms = ms32(u->hc_interval_ms);
            r.hc_timeout_ms = ms32(u->hc_timeout_ms);
            r.hc_rise = (uint16_t)u->hc_rise;
            r.hc_fall = (uint16_t)u->hc_fall;
            r.hc_expect = (uint16_t)u->hc_expect;
            r.hc_path = rtw_cstr(c->w, u->hc_path);
        }
        r.tls_ca_file = rtw_cstr(c->w, u->ca_file);
        r.tls_sni = rtw_cstr(c->w, u->sni);
        r.tls_cert_file = rtw_cstr(c->w, u->cert_file);
        r.tls_key_file = rtw_cstr(c->w, u->key_file);
        r.servers = span(rtw_count(c->w, RT_SEC_SERVERS), (uint32_t)u->nservers);
        for (size_t k = 0; k < u->nservers; k++) {
            const cfg_server_t *sv = &u->servers[k];
            rt_server_t x;
            memset(&x, 0, sizeof(x));
            x.sa = sockaddr_rec(c, sv->address, &sv->sa);
            x.upstream = idx;
            x.weight = sv->weight;
            x.max_fails = sv->max_fails;
            x.fail_timeout_ms = ms32(sv->fail_timeout_ms);
            x.flags = sv->backup ? RT_SVF_BACKUP : 0;
            rtw_add(c->w, RT_SEC_SERVERS, &x, 1);
        }
        rtw_add(c->w, RT_SEC_UPSTREAMS, &r, 1);
    }
}

static uint32_t upstream_index(const cfg_site_t *s, const rt_site_t *rec, const char *name)
{
    for (size_t i = 0; i < s->nups; i++)
        if (strcmp(s->ups[i].name, name) == 0)
            return rec->upstreams.first + (uint32_t)i;
    return RT_NONE;
}

static rt_span_t emit_hdrops(comp_t *c, const cfg_route_t *r)
{
    rt_span_t sp = span(rtw_count(c->w, RT_SEC_HEADER_OPS), (uint32_t)r->nhdrops);
    for (size_t i = 0; i < r->nhdrops; i++) {
        rt_header_op_t h;
        memset(&h, 0, sizeof(h));
        h.dir = (uint8_t)r->hdrops[i].dir;
        h.op = (uint8_t)r->hdrops[i].op;
        h.name = rtw_cstr(c->w, r->hdrops[i].name);
        h.value = rtw_cstr(c->w, r->hdrops[i].value);
        rtw_add(c->w, RT_SEC_HEADER_OPS, &h, 1);
    }
    return sp;
}

static void emit_routes(comp_t *c, const cfg_site_t *s, uint32_t site, rt_site_t *rec)
{
    rec->routes = span(rtw_count(c->w, RT_SEC_ROUTES), (uint32_t)s->nroutes);
    for (size_t i = 0; i < s->nroutes; i++) {
        const cfg_route_t *r = &s->routes[i];
        rt_route_t x;
        memset(&x, 0, sizeof(x));
        x.site = site;
        x.line = (uint32_t)r->pos.line;
        x.col = (uint32_t)r->pos.col;
        x.methods = r->methods ? r->methods : RT_M_ALL;
        x.match = (uint8_t)r->match;
        x.action = (uint8_t)r->action;
        x.status = (uint16_t)r->status;
        x.flags = (r->strip_prefix ? RT_RF_STRIP_PREFIX : 0) | (r->websocket ? RT_RF_WEBSOCKET : 0) |
                  (r->buffering ? 0 : RT_RF_NO_BUFFERING) | (r->rewrite_prefix ? RT_RF_REWRITE_PREFIX : 0);
        x.path = rtw_cstr(c->w, r->path.s);
        x.target = rtw_cstr(c->w, r->target);
        x.extra = rtw_cstr(c->w, r->rewrite_prefix ? r->rewrite_prefix : r->index);
        x.upstream = rt_action_upstream(r->action) ? upstream_index(s, rec, r->upstream.s) : RT_NONE;
        x.expires_s = ms32(r->expires_ms / 1000);
        x.buffering_max_kib = (uint32_t)((r->buffering_max + 1023) >> 10);
        x.policy = route_policy(c, s, r);
        x.header_ops = emit_hdrops(c, r);
        rtw_add(c->w, RT_SEC_ROUTES, &x, 1);
    }
}

/* ---- per-site path index -------------------------------------------------- */

typedef struct {
    const char *path;
    uint32_t route; /* global route index */
} path_ref_t;

static int path_ref_cmp(const void *a, const void *b)
{
    const path_ref_t *x = a, *y = b;
    int c = strcmp(x->path, y->path);
    return c ? c : (x->route > y->route) - (x->route < y->route);
}

/* Collect routes of one match kind, sorted by path then route index. */
static size_t collect(const cfg_site_t *s, const rt_site_t *rec, int kind, path_ref_t *out)
{
    size_t n = 0;
    for (size_t i = 0; i < s->nroutes; i++)
        if (s->routes[i].match == kind)
            out[n++] = (path_ref_t){s->routes[i].path.s, rec->routes.first + (uint32_t)i};
    qsort(out, n, sizeof(*out), path_ref_cmp);
    return n;
}

/* Emit one rt_path_t per distinct path (refs appended); returns their count. */
static uint32_t emit_groups(comp_t *c, const path_ref_t *v, size_t n, rt_path_t *out)
{
    uint32_t groups = 0;
    for (size_t i = 0; i < n;) {
        size_t j = i;
        rt_path_t *p = &out[groups++];
        memset(p, 0, sizeof(*p));
        p->path = rtw_cstr(c->w, v[i].path);
        p->hash = rt_hash(v[i].path, strlen(v[i].path));
        p->parent = RT_NONE;
        p->refs.first = rtw_count(c->w, RT_SEC_REFS);
        for (; j < n && strcmp(v[j].path, v[i].path) == 0; j++)
            rtw_add(c->w, RT_SEC_REFS, &v[j].route, 1);
        p->refs.count = (uint32_t)(j - i);
        i = j;
    }
    return groups;
}

static void emit_exact(comp_t *c, const cfg_site_t *s, rt_site_t *rec, path_ref_t *tmp, rt_path_t *groups)
{
    uint32_t n = emit_groups(c, tmp, collect(s, rec, RT_MATCH_EXACT, tmp), groups);
    if (n == 0)
        return;
    uint32_t cap = pow2_at_least(n * 2);
    rec->exact_paths.first = rtw_add(c->w, RT_SEC_PATHS, NULL, cap);
    rec->exact_paths.count = cap;
    for (uint32_t i = 0; i < cap; i++)
        ((rt_path_t *)rtw_rec(c->w, RT_SEC_PATHS, rec->exact_paths.first + i))->parent = RT_NONE;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t h = groups[i].hash & (cap - 1);
        while (((rt_path_t *)rtw_rec(c->w, RT_SEC_PATHS, rec->exact_paths.first + h))->refs.count)
            h = (h + 1) & (cap - 1);
        *(rt_path_t *)rtw_rec(c->w, RT_SEC_PATHS, rec->exact_paths.first + h) = groups[i];
    }
}

static int is_prefix(const char *p, const char *s) { return strncmp(p, s, strlen(p)) == 0; }

static void emit_prefixes(comp_t *c, const cfg_site_t *s, rt_site_t *rec, path_ref_t *tmp, rt_path_t *groups)
{
    size_t nrefs = collect(s, rec, RT_MATCH_PREFIX, tmp);
    uint32_t n = emit_groups(c, tmp, nrefs, groups);
    /* The distinct paths in sorted order, to compute parents. */
    const char **names = malloc((n + 1) * sizeof(*names));
    if (names == NULL)
        abort();
    for (size_t i = 0, g = 0; i < nrefs; i++)
        if (i == 0 || strcmp(tmp[i].path, tmp[i - 1].path) != 0)
            names[g++] = tmp[i].path;
    /* Sorted order puts every prefix of X before X, the longest of them
     * last; so X's parent is on the parent chain of its predecessor. */
    for (uint32_t k = 1; k < n; k++) {
        uint32_t j = k - 1;
        while (j != RT_NONE && !is_prefix(names[j], names[k]))
            j = groups[j].parent;
        groups[k].parent = j;
    }
    free(names);
    rec->prefix_paths.first = n ? rtw_add(c->w, RT_SEC_PATHS, groups, n) : 0;
    rec->prefix_paths.count = n;
}

static void emit_scan(comp_t *c, const cfg_site_t *s, rt_site_t *rec)
{
    uint32_t first = rtw_count(c->w, RT_SEC_REFS), count = 0;
    for (size_t i = 0; i < s->nroutes; i++) {
        if (s->routes[i].match != RT_MATCH_REGEX && s->routes[i].match != RT_MATCH_ANY)
            continue;
        uint32_t r = rec->routes.first + (uint32_t)i;
        rtw_add(c->w, RT_SEC_REFS, &r, 1);
        count++;
    }
    rec->scan = span(first, count);
}

static void emit_site(comp_t *c, const cfg_site_t *s, uint32_t idx)
{
    rt_site_t rec;
    memset(&rec, 0, sizeof(rec));
    rec.name = rtw_cstr(c->w, s->name.s);
    rec.source = rtw_cstr(c->w, s->file);
    rec.hosts = span(rtw_count(c->w, RT_SEC_STRLIST), (uint32_t)s->nhosts);
    for (size_t i = 0; i < s->nhosts; i++) {
        rt_str_t h = rtw_cstr(c->w, s->hosts[i].s);
        rtw_add(c->w, RT_SEC_STRLIST, &h, 1);
    }
    rec.compress_types = span(rtw_count(c->w, RT_SEC_STRLIST), s->compression ? (uint32_t)s->ntypes : 0);
    for (size_t i = 0; i < rec.compress_types.count; i++) {
        rt_str_t t = rtw_cstr(c->w, s->types[i]);
        rtw_add(c->w, RT_SEC_STRLIST, &t, 1);
    }
    rec.flags = (s->is_default ? RT_SF_DEFAULT : 0) | (s->redirect_http ? RT_SF_REDIRECT_HTTP : 0) |
                (s->hsts ? RT_SF_HSTS : 0) | (s->hsts_subdomains ? RT_SF_HSTS_SUBDOMAINS : 0) |
                (s->hsts_preload ? RT_SF_HSTS_PRELOAD : 0) | (s->gzip ? RT_SF_GZIP : 0) |
                (s->brotli ? RT_SF_BROTLI : 0) | (s->zstd ? RT_SF_ZSTD : 0);
    rec.hsts_max_age = ms32(s->hsts_max_age);
    rec.cert_mode = (uint8_t)s->cert_mode;
    rec.security_headers = (uint8_t)s->security_headers;
    rec.access_log = (uint8_t)s->access_log;
    rec.gzip_level = (uint8_t)s->gzip_level;
    rec.flags |= (uint32_t)s->brotli_level << RT_SF_BROTLI_LEVEL_SHIFT | (uint32_t)s->zstd_level << RT_SF_ZSTD_LEVEL_SHIFT;
    rec.compress_min_length = ms32(s->min_length);
    emit_upstreams(c, s, idx, &rec);
    emit_routes(c, s, idx, &rec);
    path_ref_t *tmp = malloc((s->nroutes + 1) * sizeof(*tmp));
    rt_path_t *groups = malloc((s->nroutes + 1) * sizeof(*groups));
    if (tmp == NULL || groups == NULL)
        abort();
    emit_exact(c, s, &rec, tmp, groups);
    emit_prefixes(c, s, &rec, tmp, groups);
    emit_scan(c, s, &rec);
    free(tmp);
    free(groups);
    *(rt_site_t *)rtw_rec(c->w, RT_SEC_SITES, idx) = rec;
}

/* One open-addressed host table of the sites already emitted (their host
 * lists); wildcard "*.x" is keyed by ".x". */
static void emit_hosts(comp_t *c, int wild)
{
    unsigned sec = wild ? RT_SEC_WILDCARDS : RT_SEC_HOSTS;
    uint32_t nsites = rtw_count(c->w, RT_SEC_SITES), count = 0;
    for (uint32_t i = 0; i < nsites; i++) {
        rt_span_t hs = ((const rt_site_t *)rtw_rec(c->w, RT_SEC_SITES, i))->hosts;
        for (uint32_t k = 0; k < hs.count; k++) {
            const rt_str_t *h = rtw_rec(c->w, RT_SEC_STRLIST, hs.first + k);
            count += (strncmp(rtw_strp(c->w, *h), "*.", 2) == 0) == wild;
        }
    }
    if (count == 0)
        return;
    uint32_t cap = pow2_at_least(count * 2);
    uint32_t first = rtw_add(c->w, sec, NULL, cap);
    for (uint32_t i = 0; i < cap; i++)
        ((rt_host_t *)rtw_rec(c->w, sec, first + i))->site = RT_NONE;
    for (uint32_t i = 0; i < nsites; i++) {
        rt_span_t hs = ((const rt_site_t *)rtw_rec(c->w, RT_SEC_SITES, i))->hosts;
        for (uint32_t k = 0; k < hs.count; k++) {
            rt_str_t hn = *(const rt_str_t *)rtw_rec(c->w, RT_SEC_STRLIST, hs.first + k);
            const char *h = rtw_strp(c->w, hn);
            if ((strncmp(h, "*.", 2) == 0) != wild)
                continue;
            rt_host_t e;
            memset(&e, 0, sizeof(e));
            /* A wildcard's key ".x" is a new string: interned from a copy,
             * as interning may move the strings h points into. */
            size_t n = hn.len - (wild ? 1 : 0);
            char *key = strndup(h + (wild ? 1 : 0), n);
            if (key == NULL)
                abort();
            e.hash = rt_hash(key, n);
            e.site = i;
            e.name = rtw_str(c->w, key, n);
            free(key);
            uint32_t b = e.hash & (cap - 1);
            while (((rt_host_t *)rtw_rec(c->w, sec, first + b))->site != RT_NONE)
                b = (b + 1) & (cap - 1);
            *(rt_host_t *)rtw_rec(c->w, sec, first + b) = e;
        }
    }
}

static void emit_global(comp_t *c, uint32_t default_site)
{
    const cfg_global_t *g = c->g;
    rt_global_t r;
    memset(&r, 0, sizeof(r));
    r.workers = g->workers;
    r.max_connections = g->max_connections;
    r.max_conns_per_ip = g->max_conns_per_ip;
    r.header_timeout_ms = ms32(g->header_timeout_ms);
    r.body_timeout_ms = ms32(g->body_timeout_ms);
    r.keepalive_timeout_ms = ms32(g->keepalive_timeout_ms);
    r.drain_timeout_ms = ms32(g->drain_timeout_ms);
    r.max_header_size = ms32(g->max_header_size);
    r.max_uri_size = ms32(g->max_uri_size);
    r.body_min_rate = (uint32_t)g->body_min_rate;
    r.max_headers = g->max_headers;
    r.ticket_key_rotation_s = ms32(g->ticket_key_rotation_ms / 1000);
    r.tls_protocols = g->tls_protocols;
    r.flags = (g->session_tickets ? RT_GF_SESSION_TICKETS : 0) | (g->unknown_sni_reject ? RT_GF_UNKNOWN_SNI_REJECT : 0) |
              (g->http2 ? RT_GF_HTTP2 : 0) | (g->http2_cleartext ? RT_GF_HTTP2_CLEARTEXT : 0);
    r.h2_max_streams = g->http2 || g->http2_cleartext ? g->h2_max_streams : 0;
    r.user = rtw_cstr(c->w, g->user);
    r.admin_socket = rtw_cstr(c->w, g->admin_socket);
    r.access_log_path = rtw_cstr(c->w, g->access_log_path);
    r.error_log_path = rtw_cstr(c->w, g->error_log_path);
    r.listens.first = rtw_count(c->w, RT_SEC_LISTENS);
    size_t nl = g->nlistens + (g->has_metrics ? 1 : 0);
    for (size_t i = 0; i < nl + g->nresolvers; i++) {
        const cfg_listen_t *l = i < g->nlistens ? &g->listens[i] : i < nl ? &g->metrics : &g->resolvers[i - nl];
        rt_listen_t x;
        memset(&x, 0, sizeof(x));
        x.kind = (uint8_t)l->kind;
        x.flags = l->proxy_protocol ? RT_LF_PROXY_PROTOCOL : 0;
        x.sa = sockaddr_rec(c, l->text, &l->sa);
        rtw_add(c->w, RT_SEC_LISTENS, &x, 1);
        r.listens.count++;
    }
    r.trusted_proxies.first = g->ntrusted ? rtw_add(c->w, RT_SEC_CIDRS, g->trusted, (uint32_t)g->ntrusted) : 0;
    r.trusted_proxies.count = (uint32_t)g->ntrusted;
    r.default_site = default_site;
    rtw_add(c->w, RT_SEC_GLOBAL, &r, 1);
    for (size_t i = 0; i < g->nrate_zones; i++) {
        rt_rate_zone_t z;
        memset(&z, 0, sizeof(z));
        z.name = rtw_cstr(c->w, g->rate_zones[i].name);
        z.rate = rtw_cstr(c->w, g->rate_zones[i].rate);
        z.header = rtw_cstr(c->w, g->rate_zones[i].header ? g->rate_zones[i].header : "");
        z.interval_ns = g->rate_zones[i].interval_ns;
        z.key = (uint8_t)g->rate_zones[i].key;
        rtw_add(c->w, RT_SEC_RATE_ZONES, &z, 1);
    }
    for (size_t i = 0; i < g->ncache_zones; i++) {
        rt_cache_zone_t z;
        memset(&z, 0, sizeof(z));
        z.name = rtw_cstr(c->w, g->cache_zones[i].name);
        z.path = rtw_cstr(c->w, g->cache_zones[i].path);
        z.max_size = g->cache_zones[i].max_size;
        z.memory = g->cache_zones[i].memory;
        z.inactive_s = ms32(g->cache_zones[i].inactive_ms / 1000);
        rtw_add(c->w, RT_SEC_CACHE_ZONES, &z, 1);
    }
}

static int site_name_cmp(const void *a, const void *b)
{
    return strcmp((*(cfg_site_t *const *)a)->name.s, (*(cfg_site_t *const *)b)->name.s);
}

int compile_table(const cfg_global_t *g, cfg_site_t **in, size_t n, uint8_t **out, size_t *len)
{
    cfg_site_t **sites = malloc((n + 1) * sizeof(*sites));
    if (sites == NULL)
        abort();
    if (n)
        memcpy(sites, in, n * sizeof(*sites));
    qsort(sites, n, sizeof(*sites), site_name_cmp);
    comp_t c = {rtw_new(), NULL, 0, g};
    uint32_t def = RT_NONE;
    for (size_t i = 0; i < n; i++)
        if (sites[i]->is_default)
            def = (uint32_t)i;
    emit_global(&c, def);
    rtw_add(c.w, RT_SEC_SITES, NULL, (uint32_t)n);
    for (size_t i = 0; i < n; i++)
        emit_site(&c, sites[i], (uint32_t)i);
    emit_hosts(&c, 0);
    emit_hosts(&c, 1);
    int rc = rtw_finish(c.w, out, len);
    rtw_free(c.w);
    free(c.pol_tab);
    free(sites);
    return rc;
}

/* ---- fragments and the linker ------------------------------------------- */

/*
 * A fragment is one site compiled alone, as if it were site 0 of a table
 * with nothing before it: its records use local indices and a local string
 * pool.  Linking appends each fragment's records to the table's sections
 * and moves every reference by where the section stood before it (the
 * site's base), every string to where the table interns it, and every
 * policy to the table's copy of it.
 *
 * Why the result is byte-identical to compile_table: the full compile emits
 * the sites one after another, so within each section a site's records are
 * contiguous and in the order the fragment has them; a site's strings are
 * interned in the order of their first use, which is the order of the
 * fragment's pool; and policies are deduplicated in the order of their first
 * use, which is the order of the fragment's (locally deduplicated) policies.
 * Empty spans are {0, 0} in both (span()), so a span is moved exactly when
 * it has records.  The host tables and the global record are built from the
 * linked sites as compile_table builds them.
 *
 * Layout: frag_head_t, the lengths of the pool's strings (u32, in pool
 * order; the pool is those strings, each followed by a NUL, after the ""
 * at offset 0), then each section's records in id order, 8-byte aligned.
 */
#define FRAG_MAGIC "PXFRAG1"

typedef struct {
    char magic[8];
    uint32_t count[RT_SEC_COUNT]; /* records; bytes for RT_SEC_STRINGS */
    uint32_t nstr;                /* strings in the pool */
    uint32_t pad;
} frag_head_t;

static size_t align8(size_t n) { return (n + 7) & ~(size_t)7; }

int compile_fragment(const cfg_global_t *g, const cfg_site_t *s, uint8_t **out, size_t *len)
{
    comp_t c = {rtw_new(), NULL, 0, g};
    rtw_add(c.w, RT_SEC_SITES, NULL, 1);
    emit_site(&c, s, 0);
    uint8_t *table;
    size_t tlen;
    /* The pool's string lengths, walked from the finished section. */
    int rc = -1;
    if (rtw_finish(c.w, &table, &tlen) == 0) {
        const rt_header_t *h = (const rt_header_t *)table;
        frag_head_t fh;
        memset(&fh, 0, sizeof(fh));
        memcpy(fh.magic, FRAG_MAGIC, 8);
        for (unsigned i = 0; i < RT_SEC_COUNT; i++)
            fh.count[i] = h->sections[i].count;
        const char *pool = (const char *)table + h->sections[RT_SEC_STRINGS].off;
        size_t plen = h->sections[RT_SEC_STRINGS].count;
        str_buf_t lens = {0};
        for (size_t off = 1; off < plen;) {
            uint32_t n = (uint32_t)strlen(pool + off);
            str_append(&lens, &n, sizeof(n));
            fh.nstr++;
            off += n + 1;
        }
        size_t total = sizeof(fh) + align8(lens.len);
        for (unsigned i = 0; i < RT_SEC_COUNT; i++)
            total += align8((size_t)fh.count[i] * rt_entsize(i));
        uint8_t *p = calloc(1, total);
        if (p == NULL)
            abort();
        memcpy(p, &fh, sizeof(fh));
        if (lens.len)
            memcpy(p + sizeof(fh), lens.p, lens.len);
        size_t at = sizeof(fh) + align8(lens.len);
        for (unsigned i = 0; i < RT_SEC_COUNT; i++) {
            size_t n = (size_t)fh.count[i] * rt_entsize(i);
            if (n)
                memcpy(p + at, table + h->sections[i].off, n);
            at += align8(n);
        }
        str_buf_free(&lens);
        free(table);
        *out = p;
        *len = total;
        rc = 0;
    }
    rtw_free(c.w);
    free(c.pol_tab);
    return rc;
}

/* A fragment taken apart: where its lengths and sections are. */
typedef struct {
    const frag_head_t *h;
    const uint32_t *lens;
    const uint8_t *sec[RT_SEC_COUNT];
} frag_t;

static int frag_open(frag_t *f, const uint8_t *p, size_t len)
{
    if (len < sizeof(frag_head_t) || ((uintptr_t)p & 7) != 0)
        return -1;
    f->h = (const frag_head_t *)p;
    if (memcmp(f->h->magic, FRAG_MAGIC, 8) != 0 || f->h->count[RT_SEC_SITES] != 1)
        return -1;
    size_t at = sizeof(frag_head_t);
    if ((size_t)f->h->nstr * 4 > len - at)
        return -1;
    f->lens = (const uint32_t *)(p + at);
    at += align8((size_t)f->h->nstr * 4);
    for (unsigned i = 0; i < RT_SEC_COUNT; i++) {
        size_t n = (size_t)f->h->count[i] * rt_entsize(i);
        if (at > len || n > len - at)
            return -1;
        f->sec[i] = p + at;
        at += align8(n);
    }
    /* The pool: "" then each string with its NUL, as the lengths say. */
    size_t plen = f->h->count[RT_SEC_STRINGS], off = 1;
    if (plen == 0 || f->sec[RT_SEC_STRINGS][0] != '\0')
        return -1;
    for (uint32_t k = 0; k < f->h->nstr; k++) {
        if (f->lens[k] == 0 || f->lens[k] >= plen - off || f->sec[RT_SEC_STRINGS][off + f->lens[k]] != '\0')
            return -1;
        off += (size_t)f->lens[k] + 1;
    }
    return off == plen ? 0 : -1;
}

const char *fragment_site_name(const uint8_t *p, size_t len)
{
    frag_t f;
    if (frag_open(&f, p, len) < 0)
        return NULL;
    rt_str_t n = ((const rt_site_t *)f.sec[RT_SEC_SITES])->name;
    if (n.off >= f.h->count[RT_SEC_STRINGS])
        return NULL;
    return (const char *)f.sec[RT_SEC_STRINGS] + n.off;
}

int fragment_site_info(const uint8_t *p, size_t len, frag_info_t *out)
{
    frag_t f;
    if (frag_open(&f, p, len) < 0)
        return -1;
    const rt_site_t *s = (const rt_site_t *)f.sec[RT_SEC_SITES];
    const char *pool = (const char *)f.sec[RT_SEC_STRINGS];
    uint32_t plen = f.h->count[RT_SEC_STRINGS];
    if (s->name.off >= plen || s->hosts.first > f.h->count[RT_SEC_STRLIST] ||
        s->hosts.count > f.h->count[RT_SEC_STRLIST] - s->hosts.first)
        return -1;
    out->name = pool + s->name.off;
    out->is_default = (s->flags & RT_SF_DEFAULT) != 0;
    out->cert_mode = s->cert_mode;
    out->nhosts = s->hosts.count;
    out->hosts = malloc((s->hosts.count + 1) * sizeof(*out->hosts));
    if (out->hosts == NULL)
        abort();
    const rt_str_t *hl = (const rt_str_t *)f.sec[RT_SEC_STRLIST] + s->hosts.first;
    for (uint32_t i = 0; i < s->hosts.count; i++) {
        if (hl[i].off >= plen)
            return free(out->hosts), -1;
        out->hosts[i] = pool + hl[i].off;
    }
    return 0;
}

/* The linker's view of one fragment being appended. */
typedef struct {
    frag_t f;
    uint32_t base[RT_SEC_COUNT];
    uint32_t *loff;   /* the pool's string offsets, ascending */
    rt_str_t *gstr;   /* where the table interned each */
    uint32_t *pmap;   /* local policy -> table policy */
    int bad;
} link_t;

static rt_str_t link_str(link_t *l, rt_str_t s)
{
    if (s.len == 0 && s.off == 0)
        return s;
    uint32_t lo = 0, hi = l->f.h->nstr;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (l->loff[mid] < s.off)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == l->f.h->nstr || l->loff[lo] != s.off || l->f.lens[lo] != s.len) {
        l->bad = 1;
        return (rt_str_t){0, 0};
    }
    return l->gstr[lo];
}

static rt_span_t link_span(link_t *l, unsigned sec, rt_span_t sp)
{
    if (sp.count == 0)
        return sp;
    if (sp.first > l->f.h->count[sec] || sp.count > l->f.h->count[sec] - sp.first)
        l->bad = 1;
    sp.first += l->base[sec];
    return sp;
}

static uint32_t link_index(link_t *l, unsigned sec, uint32_t i)
{
    if (i == RT_NONE)
        return i;
    if (i >= l->f.h->count[sec])
        l->bad = 1;
    return i + l->base[sec];
}

/* Copy a fragment's section sec and move each record's references. */
static void link_section(comp_t *c, link_t *l, unsigned sec, uint32_t site)
{
    uint32_t n = l->f.h->count[sec];
    if (n == 0)
        return;
    uint32_t first = rtw_add(c->w, sec, l->f.sec[sec], n);
    for (uint32_t i = 0; i < n; i++) {
        void *rec = rtw_rec(c->w, sec, first + i);
        switch (sec) {
        case RT_SEC_ROUTES: {
            rt_route_t *r = rec;
            r->site = site;
            r->path = link_str(l, r->path);
            r->target = link_str(l, r->target);
            r->extra = link_str(l, r->extra);
            r->upstream = link_index(l, RT_SEC_UPSTREAMS, r->upstream);
            r->policy = r->policy < l->f.h->count[RT_SEC_POLICIES] ? l->pmap[r->policy] : (l->bad = 1, 0);
            r->header_ops = link_span(l, RT_SEC_HEADER_OPS, r->header_ops);
            break;
        }
        case RT_SEC_PATHS: {
            rt_path_t *p = rec;
            p->path = link_str(l, p->path);
            p->refs = link_span(l, RT_SEC_REFS, p->refs);
            break;
        }
        case RT_SEC_REFS:
            *(uint32_t *)rec = link_index(l, RT_SEC_ROUTES, *(uint32_t *)rec);
            break;
        case RT_SEC_UPSTREAMS: {
            rt_upstream_t *u = rec;
            u->name = link_str(l, u->name);
            u->site = site;
            u->hc_path = link_str(l, u->hc_path);
            u->tls_ca_file = link_str(l, u->tls_ca_file);
            u->tls_sni = link_str(l, u->tls_sni);
            u->tls_cert_file = link_str(l, u->tls_cert_file);
            u->tls_key_file = link_str(l, u->tls_key_file);
            u->servers = link_span(l, RT_SEC_SERVERS, u->servers);
            break;
        }
        case RT_SEC_SERVERS: {
            rt_server_t *sv = rec;
            sv->sa.addr = link_str(l, sv->sa.addr);
            sv->upstream = link_index(l, RT_SEC_UPSTREAMS, sv->upstream);
            break;
        }
        case RT_SEC_HEADER_OPS: {
            rt_header_op_t *h = rec;
            h->name = link_str(l, h->name);
            h->value = link_str(l, h->value);
            break;
        }
        case RT_SEC_STRLIST:
            *(rt_str_t *)rec = link_str(l, *(rt_str_t *)rec);
            break;
        case RT_SEC_CIDRS:
        case RT_SEC_STATUS_TTLS:
            break;
        default: /* a site compiles to nothing else */
            l->bad = 1;
        }
    }
}

static int link_site(comp_t *c, const frag_t *f, uint32_t site)
{
    link_t l = {.f = *f};
    for (unsigned i = 0; i < RT_SEC_COUNT; i++)
        l.base[i] = rtw_count(c->w, i);
    uint32_t ns = f->h->nstr, np = f->h->count[RT_SEC_POLICIES];
    l.loff = malloc((ns + 1) * sizeof(*l.loff));
    l.gstr = malloc((ns + 1) * sizeof(*l.gstr));
    l.pmap = malloc((np + 1) * sizeof(*l.pmap));
    if (l.loff == NULL || l.gstr == NULL || l.pmap == NULL)
        abort();
    const char *pool = (const char *)f->sec[RT_SEC_STRINGS];
    for (uint32_t k = 0, off = 1; k < ns; off += f->lens[k++] + 1) {
        l.loff[k] = off;
        l.gstr[k] = rtw_str(c->w, pool + off, f->lens[k]);
    }
    /* Policies first (routes refer to them), each through the table's
     * deduplication, as compile_table adds them. */
    const rt_policy_t *pol = (const rt_policy_t *)f->sec[RT_SEC_POLICIES];
    for (uint32_t k = 0; k < np; k++) {
        rt_policy_t p = pol[k];
        p.cache_valid = link_span(&l, RT_SEC_STATUS_TTLS, p.cache_valid);
        p.cache_bypass = link_span(&l, RT_SEC_STRLIST, p.cache_bypass);
        p.allow = link_span(&l, RT_SEC_CIDRS, p.allow);
        l.pmap[k] = add_policy(c, &p);
    }
    static const unsigned order[] = {RT_SEC_ROUTES, RT_SEC_PATHS, RT_SEC_REFS, RT_SEC_UPSTREAMS, RT_SEC_SERVERS,
                                     RT_SEC_HEADER_OPS, RT_SEC_CIDRS, RT_SEC_STATUS_TTLS, RT_SEC_STRLIST};
    for (unsigned i = 0; i < RT_SEC_COUNT; i++) {
        bool listed = i == RT_SEC_STRINGS || i == RT_SEC_SITES || i == RT_SEC_POLICIES;
        for (size_t k = 0; k < sizeof(order) / sizeof(order[0]); k++)
            listed |= order[k] == i;
        if (!listed && f->h->count[i])
            l.bad = 1;
    }
    for (size_t k = 0; k < sizeof(order) / sizeof(order[0]); k++)
        link_section(c, &l, order[k], site);
    rt_site_t s = *(const rt_site_t *)f->sec[RT_SEC_SITES];
    s.name = link_str(&l, s.name);
    s.source = link_str(&l, s.source);
    s.hosts = link_span(&l, RT_SEC_STRLIST, s.hosts);
    s.routes = link_span(&l, RT_SEC_ROUTES, s.routes);
    s.upstreams = link_span(&l, RT_SEC_UPSTREAMS, s.upstreams);
    s.exact_paths = link_span(&l, RT_SEC_PATHS, s.exact_paths);
    s.prefix_paths = link_span(&l, RT_SEC_PATHS, s.prefix_paths);
    s.scan = link_span(&l, RT_SEC_REFS, s.scan);
    s.compress_types = link_span(&l, RT_SEC_STRLIST, s.compress_types);
    *(rt_site_t *)rtw_rec(c->w, RT_SEC_SITES, site) = s;
    free(l.loff);
    free(l.gstr);
    free(l.pmap);
    return l.bad ? -1 : 0;
}

typedef struct {
    frag_t f;
    const char *name;
} frag_ref_t;

static int frag_ref_cmp(const void *a, const void *b)
{
    return strcmp(((const frag_ref_t *)a)->name, ((const frag_ref_t *)b)->name);
}

int link_table(const cfg_global_t *g, uint8_t *const *frags, const size_t *lens, size_t n, uint8_t **out,
               size_t *len)
{
    frag_ref_t *v = malloc((n + 1) * sizeof(*v));
    if (v == NULL)
        abort();
    uint32_t def = RT_NONE;
    int rc = -1;
    for (size_t i = 0; i < n; i++) {
        if (frag_open(&v[i].f, frags[i], lens[i]) < 0 || (v[i].name = fragment_site_name(frags[i], lens[i])) == NULL)
            goto out;
    }
    qsort(v, n, sizeof(*v), frag_ref_cmp);
    for (size_t i = 0; i < n; i++)
        if (((const rt_site_t *)v[i].f.sec[RT_SEC_SITES])->flags & RT_SF_DEFAULT)
            def = (uint32_t)i;
    comp_t c = {rtw_new(), NULL, 0, g};
    emit_global(&c, def);
    rtw_add(c.w, RT_SEC_SITES, NULL, (uint32_t)n);
    rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = link_site(&c, &v[i].f, (uint32_t)i);
    if (rc == 0) {
        emit_hosts(&c, 0);
        emit_hosts(&c, 1);
        rc = rtw_finish(c.w, out, len);
    }
    rtw_free(c.w);
    free(c.pol_tab);
out:
    free(v);
    return rc;
}

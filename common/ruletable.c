/*
 * ruletable.c - the verifying reader of the rule table (see ruletable.h).
 *
 * Invariant established by rt_open(): the checksum covers every byte (header
 * included), every rt_str_t in the table lies inside
 * the string section and is followed by a NUL with no NUL inside it; every
 * span and index is in range of the section it names; every enum is known;
 * hash tables have power-of-two sizes and every bucket hash matches its name;
 * prefix parents point backwards.  Readers rely on this and check nothing.
 */
#include "ruletable.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>

#include "str.h"

static const size_t entsize[RT_SEC_COUNT] = {
    [RT_SEC_STRINGS] = 1,
    [RT_SEC_GLOBAL] = sizeof(rt_global_t),
    [RT_SEC_HOSTS] = sizeof(rt_host_t),
    [RT_SEC_WILDCARDS] = sizeof(rt_host_t),
    [RT_SEC_SITES] = sizeof(rt_site_t),
    [RT_SEC_ROUTES] = sizeof(rt_route_t),
    [RT_SEC_PATHS] = sizeof(rt_path_t),
    [RT_SEC_REFS] = sizeof(uint32_t),
    [RT_SEC_POLICIES] = sizeof(rt_policy_t),
    [RT_SEC_UPSTREAMS] = sizeof(rt_upstream_t),
    [RT_SEC_SERVERS] = sizeof(rt_server_t),
    [RT_SEC_HEADER_OPS] = sizeof(rt_header_op_t),
    [RT_SEC_CIDRS] = sizeof(rt_cidr_t),
    [RT_SEC_STATUS_TTLS] = sizeof(rt_status_ttl_t),
    [RT_SEC_RATE_ZONES] = sizeof(rt_rate_zone_t),
    [RT_SEC_CACHE_ZONES] = sizeof(rt_cache_zone_t),
    [RT_SEC_LISTENS] = sizeof(rt_listen_t),
    [RT_SEC_STRLIST] = sizeof(rt_str_t),
};

/* Records are read in place: sizes must keep every record 8-byte aligned. */
_Static_assert(sizeof(rt_header_t) % RT_ALIGN == 0, "header alignment");
_Static_assert(sizeof(rt_global_t) % RT_ALIGN == 0, "global alignment");
_Static_assert(sizeof(rt_site_t) % RT_ALIGN == 0, "site alignment");
_Static_assert(sizeof(rt_route_t) % RT_ALIGN == 0, "route alignment");
_Static_assert(sizeof(rt_path_t) % RT_ALIGN == 0, "path alignment");
_Static_assert(sizeof(rt_policy_t) % RT_ALIGN == 0, "policy alignment");
_Static_assert(sizeof(rt_upstream_t) % RT_ALIGN == 0, "upstream alignment");
_Static_assert(sizeof(rt_server_t) % RT_ALIGN == 0, "server alignment");
_Static_assert(sizeof(rt_header_op_t) % RT_ALIGN == 0, "header op alignment");
_Static_assert(sizeof(rt_cidr_t) % RT_ALIGN == 0, "cidr alignment");
_Static_assert(sizeof(rt_cache_zone_t) % RT_ALIGN == 0, "cache zone alignment");
_Static_assert(sizeof(rt_rate_zone_t) % RT_ALIGN == 0, "rate zone alignment");
_Static_assert(sizeof(rt_listen_t) % RT_ALIGN == 0, "listen alignment");

size_t rt_entsize(unsigned sec) { return sec < RT_SEC_COUNT ? entsize[sec] : 0; }

static const char *const method_names[RT_M_COUNT] = {
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
};

static const char *const cond_names[RT_COND_COUNT] = {
    "error", "timeout", "updating", "http_500", "http_502", "http_503", "http_504", "http_429",
};

uint32_t rt_hash(const char *p, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h = (h ^ (uint32_t)str_lower_char((unsigned char)p[i])) * 16777619u;
    }
    return h;
}

uint32_t rt_method_bit(const char *p, size_t n)
{
    for (unsigned i = 0; i < RT_M_COUNT; i++)
        if (strlen(method_names[i]) == n && memcmp(method_names[i], p, n) == 0)
            return 1u << i;
    return 0;
}

const char *rt_method_name(unsigned idx) { return idx < RT_M_COUNT ? method_names[idx] : "?"; }
const char *rt_cond_name(unsigned idx) { return idx < RT_COND_COUNT ? cond_names[idx] : "?"; }

const char *rt_enum_name(const char *kind, unsigned v)
{
    static const char *const balance[] = {"round_robin", "least_conn", "ip_hash", "random_two"};
    static const char *const cert[] = {"none", "files", "self-signed", "acme"};
    static const char *const sechdr[] = {"none", "basic", "strict"};
    static const char *const logfmt[] = {"json", "combined", "off"};
    static const char *const match[] = {"any", "path_exact", "path_prefix", "path_regex"};
    static const char *const action[] = {"upstream", "return", "redirect", "static", "fastcgi"};
    _Static_assert(sizeof(action) / sizeof(action[0]) == RT_ACT_MAX, "a name for every rt_action");
    static const char *const rkey[] = {"client_ip", "host", "site", "header:"};
    static const char *const listen[] = {"http", "https", "metrics", "resolver"};
    static const struct {
        const char *kind;
        const char *const *names;
        unsigned n;
    } tab[] = {
        {"balance", balance, 4}, {"cert", cert, 4},     {"sechdr", sechdr, 3},
        {"logfmt", logfmt, 3},   {"match", match, 4},   {"action", action, RT_ACT_MAX},
        {"rkey", rkey, 4},       {"listen", listen, 4},
    };
    for (size_t i = 0; i < sizeof(tab) / sizeof(tab[0]); i++)
        if (strcmp(tab[i].kind, kind) == 0)
            return v < tab[i].n ? tab[i].names[v] : "?";
    return "?";
}

/* ---- verification ------------------------------------------------------ */

typedef struct {
    rt_table_t *t;
    char *err;
    size_t errlen;
} vctx_t;

#define FAIL(v, ...)                                        \
    do {                                                    \
        snprintf((v)->err, (v)->errlen, __VA_ARGS__);       \
        return -1;                                          \
    } while (0)

static int str_ok(const rt_table_t *t, rt_str_t s)
{
    if (s.off >= t->strings_len || s.len >= t->strings_len - s.off)
        return 0;
    const char *p = t->strings + s.off;
    return p[s.len] == '\0' && memchr(p, '\0', s.len) == NULL;
}

static int span_ok(rt_span_t s, uint32_t n) { return s.first <= n && s.count <= n - s.first; }

static int idx_ok(uint32_t i, uint32_t n) { return i < n; }
static int opt_idx_ok(uint32_t i, uint32_t n) { return i == RT_NONE || i < n; }
static int pow2_or_zero(uint32_t n) { return (n & (n - 1)) == 0; }

#define CHECK_STR(v, s, what, i) \
    if (!str_ok((v)->t, (s)))    \
    FAIL(v, "%s %u: string out of bounds", what, (unsigned)(i))
#define CHECK_SPAN(v, s, n, what, i) \
    if (!span_ok((s), (n)))          \
    FAIL(v, "%s %u: span out of bounds", what, (unsigned)(i))

void rt_checksum(const uint8_t *b, size_t len, uint8_t out[32])
{
    static const uint8_t zero[32];
    const size_t at = offsetof(rt_header_t, sha256);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned n = 32;
    if (ctx == NULL || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1 || EVP_DigestUpdate(ctx, b, at) != 1 ||
        EVP_DigestUpdate(ctx, zero, sizeof(zero)) != 1 ||
        EVP_DigestUpdate(ctx, b + at + sizeof(zero), len - at - sizeof(zero)) != 1 ||
        EVP_DigestFinal_ex(ctx, out, &n) != 1)
        memset(out, 0xff, 32); /* never matches a stored checksum */
    EVP_MD_CTX_free(ctx);
}

static int checksum_ok(const uint8_t *b, size_t len)
{
    uint8_t md[32];
    rt_checksum(b, len, md);
    return memcmp(md, b + offsetof(rt_header_t, sha256), sizeof(md)) == 0;
}

static int verify_header(vctx_t *v, const uint8_t *b, size_t len)
{
    const rt_header_t *h = (const rt_header_t *)b;
    if (((uintptr_t)b & (RT_ALIGN - 1)) != 0)
        FAIL(v, "table buffer is not %d-byte aligned", RT_ALIGN);
    if (len < sizeof(*h))
        FAIL(v, "table truncated: %zu bytes, header needs %zu", len, sizeof(*h));
    if (memcmp(h->magic, RT_MAGIC, 8) != 0)
        FAIL(v, "bad magic: not a rule table");
    if (h->version != RT_VERSION)
        FAIL(v, "unsupported format version %u (this reader knows %d)", h->version, RT_VERSION);
    if (h->header_size != sizeof(*h) || h->section_count != RT_SEC_COUNT || h->reserved != 0)
        FAIL(v, "header size or section count mismatch");
    if (h->total_size != len)
        FAIL(v, "table size %zu does not match header (%llu)", len, (unsigned long long)h->total_size);
    if (checksum_ok(b, len) == 0)
        FAIL(v, "checksum mismatch: table is corrupted");
    for (unsigned i = 0; i < RT_SEC_COUNT; i++) {
        const rt_section_t *s = &h->sections[i];
        uint64_t end = (uint64_t)s->off + (uint64_t)s->count * entsize[i];
        if (s->off % RT_ALIGN != 0 || s->off < h->header_size || end > len)
            FAIL(v, "section %u out of bounds", i);
    }
    return 0;
}

static const void *sec(const uint8_t *b, unsigned i, uint32_t *count)
{
    const rt_header_t *h = (const rt_header_t *)b;
    *count = h->sections[i].count;
    return b + h->sections[i].off;
}

static void map_sections(rt_table_t *t, const uint8_t *b, size_t len)
{
    uint32_t n;
    t->base = b;
    t->size = len;
    t->strings = sec(b, RT_SEC_STRINGS, &t->strings_len);
    t->global = sec(b, RT_SEC_GLOBAL, &n);
    t->hosts = sec(b, RT_SEC_HOSTS, &t->nhosts);
    t->wildcards = sec(b, RT_SEC_WILDCARDS, &t->nwildcards);
    t->sites = sec(b, RT_SEC_SITES, &t->nsites);
    t->routes = sec(b, RT_SEC_ROUTES, &t->nroutes);
    t->paths = sec(b, RT_SEC_PATHS, &t->npaths);
    t->refs = sec(b, RT_SEC_REFS, &t->nrefs);
    t->policies = sec(b, RT_SEC_POLICIES, &t->npolicies);
    t->upstreams = sec(b, RT_SEC_UPSTREAMS, &t->nupstreams);
    t->servers = sec(b, RT_SEC_SERVERS, &t->nservers);
    t->hdrops = sec(b, RT_SEC_HEADER_OPS, &t->nhdrops);
    t->cidrs = sec(b, RT_SEC_CIDRS, &t->ncidrs);
    t->ttls = sec(b, RT_SEC_STATUS_TTLS, &t->nttls);
    t->rate_zones = sec(b, RT_SEC_RATE_ZONES, &t->nrate_zones);
    t->cache_zones = sec(b, RT_SEC_CACHE_ZONES, &t->ncache_zones);
    t->listens = sec(b, RT_SEC_LISTENS, &t->nlistens);
    t->strlist = sec(b, RT_SEC_STRLIST, &t->nstrlist);
}

static int verify_hosts(vctx_t *v, const rt_host_t *hs, uint32_t n, const char *what)
{
    const rt_table_t *t = v->t;
    if (!pow2_or_zero(n))
        FAIL(v, "%s table size %u is not a power of two", what, n);
    for (uint32_t i = 0; i < n; i++) {
        if (hs[i].site == RT_NONE)
            continue;
        if (!idx_ok(hs[i].site, t->nsites))
            FAIL(v, "%s %u: site index out of range", what, i);
        CHECK_STR(v, hs[i].name, what, i);
        if (rt_hash(rt_cstr(t, hs[i].name), hs[i].name.len) != hs[i].hash)
            FAIL(v, "%s %u: hash does not match name", what, i);
    }
    return 0;
}

static int verify_sockaddr(vctx_t *v, const rt_sockaddr_t *sa, const char *what, uint32_t i)
{
    CHECK_STR(v, sa->addr, what, i);
    if (sa->kind >= RT_ADDR_MAX)
        FAIL(v, "%s %u: unknown address kind", what, i);
    return 0;
}

static int verify_global(vctx_t *v)
{
    const rt_table_t *t = v->t;
    const rt_global_t *g = t->global;
    CHECK_STR(v, g->user, "global", 0);
    CHECK_STR(v, g->admin_socket, "global", 0);
    CHECK_STR(v, g->access_log_path, "global", 0);
    CHECK_STR(v, g->error_log_path, "global", 0);
    if (g->max_headers > RT_MAX_HEADERS_CAP)
        FAIL(v, "global: max_headers beyond %d", RT_MAX_HEADERS_CAP);
    if (g->flags & ~(RT_GF_SESSION_TICKETS | RT_GF_UNKNOWN_SNI_REJECT | RT_GF_HTTP2 | RT_GF_HTTP2_CLEARTEXT))
        FAIL(v, "global: unknown flags 0x%x", g->flags);
    int h2 = (g->flags & (RT_GF_HTTP2 | RT_GF_HTTP2_CLEARTEXT)) != 0;
    if (h2 ? g->h2_max_streams == 0 || g->h2_max_streams > RT_H2_MAX_STREAMS_LIMIT : g->h2_max_streams != 0)
        FAIL(v, "global: h2_max_streams %u out of range", g->h2_max_streams);
    CHECK_SPAN(v, g->listens, t->nlistens, "global", 0);
    CHECK_SPAN(v, g->trusted_proxies, t->ncidrs, "global", 0);
    if (!opt_idx_ok(g->default_site, t->nsites))
        FAIL(v, "global: default site out of range");
    for (uint32_t i = 0; i < t->nlistens; i++) {
        if (t->listens[i].kind >= RT_LISTEN_MAX)
            FAIL(v, "listen %u: unknown kind", i);
        if ((t->listens[i].flags & ~RT_LF_PROXY_PROTOCOL) ||
            (t->listens[i].flags && (t->listens[i].kind == RT_LISTEN_METRICS || t->listens[i].kind == RT_LISTEN_RESOLVER)))
            FAIL(v, "listen %u: invalid flags", i);
        if (t->listens[i].kind == RT_LISTEN_RESOLVER && t->listens[i].sa.kind != RT_ADDR_INET &&
            t->listens[i].sa.kind != RT_ADDR_INET6)
            FAIL(v, "listen %u: a resolver must be an IP address", i);
        if (verify_sockaddr(v, &t->listens[i].sa, "listen", i) < 0)
            return -1;
    }
    return 0;
}

static int verify_paths(vctx_t *v, const rt_site_t *s, uint32_t si)
{
    const rt_table_t *t = v->t;
    CHECK_SPAN(v, s->exact_paths, t->npaths, "site", si);
    CHECK_SPAN(v, s->prefix_paths, t->npaths, "site", si);
    if (!pow2_or_zero(s->exact_paths.count))
        FAIL(v, "site %u: exact path table size not a power of two", si);
    for (uint32_t k = 0; k < s->exact_paths.count; k++) {
        const rt_path_t *p = &t->paths[s->exact_paths.first + k];
        if (p->refs.count && rt_hash(rt_cstr(t, p->path), p->path.len) != p->hash)
            FAIL(v, "site %u: exact path %u hash does not match", si, k);
    }
    for (uint32_t k = 0; k < s->prefix_paths.count; k++) {
        const rt_path_t *p = &t->paths[s->prefix_paths.first + k];
        if (p->parent != RT_NONE && p->parent >= k)
            FAIL(v, "site %u: prefix %u parent does not point backwards", si, k);
    }
    return 0;
}

static int route_refs_ok(const rt_table_t *t, rt_span_t refs, const rt_site_t *s)
{
    for (uint32_t k = 0; k < refs.count; k++) {
        uint32_t r = t->refs[refs.first + k];
        if (r < s->routes.first || r - s->routes.first >= s->routes.count)
            return 0;
    }
    return 1;
}

static int verify_sites(vctx_t *v)
{
    const rt_table_t *t = v->t;
    for (uint32_t i = 0; i < t->nsites; i++) {
        const rt_site_t *s = &t->sites[i];
        CHECK_STR(v, s->name, "site", i);
        CHECK_STR(v, s->source, "site", i);
        CHECK_SPAN(v, s->hosts, t->nstrlist, "site", i);
        CHECK_SPAN(v, s->routes, t->nroutes, "site", i);
        CHECK_SPAN(v, s->upstreams, t->nupstreams, "site", i);
        CHECK_SPAN(v, s->scan, t->nrefs, "site", i);
        CHECK_SPAN(v, s->compress_types, t->nstrlist, "site", i);
        if (s->cert_mode >= RT_CERT_MAX || s->security_headers >= RT_SECHDR_MAX || s->access_log >= RT_LOG_MAX ||
            s->gzip_level > 9 || rt_site_brotli_level(s) > 11 || rt_site_zstd_level(s) > 19 ||
            (s->flags & ~RT_SF_KNOWN) || ((s->flags & RT_SF_GZIP) && s->gzip_level < 1) ||
            ((s->flags & RT_SF_ZSTD) && rt_site_zstd_level(s) < 1))
            FAIL(v, "site %u: unknown enum value", i);
        if (verify_paths(v, s, i) < 0)
            return -1;
        if (!route_refs_ok(t, s->scan, s))
            FAIL(v, "site %u: scan list names a route of another site", i);
        for (uint32_t k = 0; k < s->exact_paths.count + s->prefix_paths.count; k++) {
            uint32_t pi = k < s->exact_paths.count ? s->exact_paths.first + k
                                                   : s->prefix_paths.first + k - s->exact_paths.count;
            if (!route_refs_ok(t, t->paths[pi].refs, s))
                FAIL(v, "site %u: path index names a route of another site", i);
        }
        for (uint32_t k = 0; k < s->routes.count; k++)
            if (t->routes[s->routes.first + k].site != i)
                FAIL(v, "site %u: route %u belongs to another site", i, s->routes.first + k);
    }
    return 0;
}

static int verify_routes(vctx_t *v)
{
    const rt_table_t *t = v->t;
    for (uint32_t i = 0; i < t->nroutes; i++) {
        const rt_route_t *r = &t->routes[i];
        if (!idx_ok(r->site, t->nsites) || !idx_ok(r->policy, t->npolicies))
            FAIL(v, "route %u: index out of range", i);
        if (r->match >= RT_MATCH_MAX || r->action >= RT_ACT_MAX || (r->methods & ~RT_M_ALL) || r->methods == 0)
            FAIL(v, "route %u: unknown enum value", i);
        CHECK_STR(v, r->path, "route", i);
        CHECK_STR(v, r->target, "route", i);
        CHECK_STR(v, r->extra, "route", i);
        CHECK_SPAN(v, r->header_ops, t->nhdrops, "route", i);
        const rt_site_t *s = &t->sites[r->site];
        if (rt_action_upstream(r->action) &&
            (r->upstream < s->upstreams.first || r->upstream - s->upstreams.first >= s->upstreams.count))
            FAIL(v, "route %u: upstream is not one of its site's", i);
        if (!rt_action_upstream(r->action) && r->upstream != RT_NONE)
            FAIL(v, "route %u: upstream set on a non-proxy route", i);
        /* An upstream speaks one protocol: its routes' and its checks'. */
        if (rt_action_upstream(r->action) &&
            !(t->upstreams[r->upstream].flags & RT_UF_FASTCGI) != (r->action == RT_ACT_UPSTREAM))
            FAIL(v, "route %u: FastCGI and HTTP routes share upstream %u", i, r->upstream);
        if (r->action == RT_ACT_FASTCGI && (r->target.len == 0 || rt_cstr(t, r->target)[0] != '/' ||
                                            (r->flags & (RT_RF_STRIP_PREFIX | RT_RF_WEBSOCKET))))
            FAIL(v, "route %u: a FastCGI route needs an absolute root and takes no prefix strip or WebSocket", i);
        if ((r->flags & ~RT_RF_KNOWN) ||
            ((r->flags & RT_RF_REWRITE_PREFIX) &&
             (r->action != RT_ACT_UPSTREAM || r->match != RT_MATCH_PREFIX || r->extra.len == 0 ||
              rt_cstr(t, r->extra)[0] != '/' || (r->flags & RT_RF_STRIP_PREFIX))))
            FAIL(v, "route %u: invalid flags or rewrite_prefix", i);
    }
    return 0;
}

static int verify_paths_refs(vctx_t *v)
{
    const rt_table_t *t = v->t;
    for (uint32_t i = 0; i < t->nrefs; i++)
        if (!idx_ok(t->refs[i], t->nroutes))
            FAIL(v, "ref %u: route index out of range", i);
    for (uint32_t i = 0; i < t->npaths; i++) {
        CHECK_STR(v, t->paths[i].path, "path", i);
        CHECK_SPAN(v, t->paths[i].refs, t->nrefs, "path", i);
    }
    return 0;
}

static int verify_policies(vctx_t *v)
{
    const rt_table_t *t = v->t;
    for (uint32_t i = 0; i < t->npolicies; i++) {
        const rt_policy_t *p = &t->policies[i];
        if (!opt_idx_ok(p->rate_zone, t->nrate_zones) || !opt_idx_ok(p->cache_zone, t->ncache_zones))
            FAIL(v, "policy %u: zone out of range", i);
        CHECK_SPAN(v, p->cache_valid, t->nttls, "policy", i);
        CHECK_SPAN(v, p->cache_bypass, t->nstrlist, "policy", i);
        CHECK_SPAN(v, p->allow, t->ncidrs, "policy", i);
        if (p->retry_tries == 0 || (p->retry_on >> RT_COND_COUNT) || (p->cache_use_stale >> RT_COND_COUNT))
            FAIL(v, "policy %u: invalid retry or stale settings", i);
    }
    return 0;
}

static int verify_upstreams(vctx_t *v)
{
    const rt_table_t *t = v->t;
    for (uint32_t i = 0; i < t->nupstreams; i++) {
        const rt_upstream_t *u = &t->upstreams[i];
        CHECK_STR(v, u->name, "upstream", i);
        CHECK_STR(v, u->hc_path, "upstream", i);
        CHECK_STR(v, u->tls_ca_file, "upstream", i);
        CHECK_STR(v, u->tls_sni, "upstream", i);
        CHECK_STR(v, u->tls_cert_file, "upstream", i);
        CHECK_STR(v, u->tls_key_file, "upstream", i);
        CHECK_SPAN(v, u->servers, t->nservers, "upstream", i);
        if (!idx_ok(u->site, t->nsites) || u->balance >= RT_BAL_MAX || u->servers.count == 0 ||
            (u->flags & ~RT_UF_KNOWN) || ((u->flags & RT_UF_FASTCGI) && (u->tls_flags & RT_UTLS_ON)))
            FAIL(v, "upstream %u: invalid site, balance, flags or empty server list", i);
        for (uint32_t k = 0; k < u->servers.count; k++)
            if (t->servers[u->servers.first + k].upstream != i)
                FAIL(v, "upstream %u: server %u belongs to another upstream", i, u->servers.first + k);
    }
    for (uint32_t i = 0; i < t->nservers; i++) {
        const rt_server_t *s = &t->servers[i];
        if (verify_sockaddr(v, &s->sa, "server", i) < 0)
            return -1;
        if (!idx_ok(s->upstream, t->nupstreams) || s->weight == 0)
            FAIL(v, "server %u: invalid upstream or zero weight", i);
    }
    return 0;
}

static int verify_leaves(vctx_t *v)
{
    const rt_table_t *t = v->t;
    for (uint32_t i = 0; i < t->nhdrops; i++) {
        const rt_header_op_t *h = &t->hdrops[i];
        if (h->dir >= RT_HDR_DIR_MAX || h->op >= RT_HDR_OP_MAX)
            FAIL(v, "header op %u: unknown enum value", i);
        CHECK_STR(v, h->name, "header op", i);
        CHECK_STR(v, h->value, "header op", i);
    }
    for (uint32_t i = 0; i < t->ncidrs; i++) {
        const rt_cidr_t *c = &t->cidrs[i];
        if (!((c->family == 4 && c->bits <= 32) || (c->family == 6 && c->bits <= 128)) || (c->flags & ~RT_CIDR_DENY))
            FAIL(v, "cidr %u: invalid family, prefix length or flags", i);
    }
    for (uint32_t i = 0; i < t->nrate_zones; i++) {
        CHECK_STR(v, t->rate_zones[i].name, "rate zone", i);
        CHECK_STR(v, t->rate_zones[i].rate, "rate zone", i);
        CHECK_STR(v, t->rate_zones[i].header, "rate zone", i);
        if (t->rate_zones[i].key >= RT_RKEY_MAX || t->rate_zones[i].interval_ns == 0 ||
            (t->rate_zones[i].key == RT_RKEY_HEADER) != (t->rate_zones[i].header.len > 0))
            FAIL(v, "rate zone %u: invalid key or rate", i);
    }
    for (uint32_t i = 0; i < t->ncache_zones; i++) {
        CHECK_STR(v, t->cache_zones[i].name, "cache zone", i);
        CHECK_STR(v, t->cache_zones[i].path, "cache zone", i);
    }
    for (uint32_t i = 0; i < t->nstrlist; i++)
        CHECK_STR(v, t->strlist[i], "string list", i);
    return 0;
}

int rt_open(rt_table_t *t, const void *buf, size_t len, char *err, size_t errlen)
{
    memset(t, 0, sizeof(*t));
    vctx_t v = {t, err, errlen};
    uint32_t nglobal;
    if (verify_header(&v, buf, len) < 0)
        return -1;
    map_sections(t, buf, len);
    sec(buf, RT_SEC_GLOBAL, &nglobal);
    if (nglobal != 1)
        FAIL(&v, "table must hold exactly one global record, found %u", nglobal);
    if (t->strings_len == 0 || t->strings[0] != '\0' || t->strings[t->strings_len - 1] != '\0')
        FAIL(&v, "string section must start and end with NUL");
    if (verify_global(&v) < 0 || verify_hosts(&v, t->hosts, t->nhosts, "host") < 0 ||
        verify_hosts(&v, t->wildcards, t->nwildcards, "wildcard") < 0 || verify_paths_refs(&v) < 0 ||
        verify_sites(&v) < 0 || verify_routes(&v) < 0 || verify_policies(&v) < 0 ||
        verify_upstreams(&v) < 0 || verify_leaves(&v) < 0) {
        memset(t, 0, sizeof(*t));
        return -1;
    }
    return 0;
}

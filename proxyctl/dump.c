/*
 * dump.c - rule table to text (see dump.h).  The output mirrors the YAML
 * keys so an operator can map every line back to a site file.
 */
#include "dump.h"

#include <inttypes.h>
#include <stdbool.h>
#include <string.h>

#include <arpa/inet.h>

const char *dump_duration(uint32_t ms, char buf[32])
{
    if (ms % 86400000 == 0 && ms)
        snprintf(buf, 32, "%ud", ms / 86400000);
    else if (ms % 3600000 == 0 && ms)
        snprintf(buf, 32, "%uh", ms / 3600000);
    else if (ms % 60000 == 0 && ms)
        snprintf(buf, 32, "%um", ms / 60000);
    else if (ms % 1000 == 0)
        snprintf(buf, 32, "%us", ms / 1000);
    else
        snprintf(buf, 32, "%ums", ms);
    return buf;
}

static void methods(uint32_t m, FILE *out)
{
    if (m == RT_M_ALL) {
        fputs("any", out);
        return;
    }
    for (unsigned i = 0, first = 1; i < RT_M_COUNT; i++)
        if (m & (1u << i)) {
            fprintf(out, "%s%s", first ? "" : ",", rt_method_name(i));
            first = 0;
        }
}

static void conds(uint32_t m, FILE *out)
{
    for (unsigned i = 0, first = 1; i < RT_COND_COUNT; i++)
        if (m & (1u << i)) {
            fprintf(out, "%s%s", first ? "" : ",", rt_cond_name(i));
            first = 0;
        }
}

static void cidr(const rt_cidr_t *c, FILE *out)
{
    char buf[64];
    inet_ntop(c->family == 4 ? AF_INET : AF_INET6, c->addr, buf, sizeof(buf));
    fprintf(out, "%s/%u", buf, c->bits);
}

void dump_policy(const rt_table_t *t, uint32_t pi, const char *in, FILE *out)
{
    const rt_policy_t *p = &t->policies[pi];
    char a[32], b[32], c[32];
    fprintf(out, "%stimeouts: connect %s, read %s, send %s\n", in, dump_duration(p->connect_ms, a),
            dump_duration(p->read_ms, b), dump_duration(p->send_ms, c));
    if (p->retry_tries > 1) {
        fprintf(out, "%sretry: %u tries on ", in, p->retry_tries);
        conds(p->retry_on, out);
        fputc('\n', out);
    }
    if (p->rate_zone != RT_NONE)
        fprintf(out, "%srate_limit: zone %s, burst %u%s\n", in, rt_cstr(t, t->rate_zones[p->rate_zone].name),
                p->rate_burst, p->rate_flags & RT_RATE_NODELAY ? ", nodelay" : "");
    if (p->cache_zone != RT_NONE) {
        fprintf(out, "%scache: zone %s", in, rt_cstr(t, t->cache_zones[p->cache_zone].name));
        for (uint32_t i = 0; i < p->cache_valid.count; i++) {
            const rt_status_ttl_t *v = &t->ttls[p->cache_valid.first + i];
            if (v->status)
                fprintf(out, ", %u for %s", v->status, dump_duration(v->ttl_s * 1000, a));
            else
                fprintf(out, ", any for %s", dump_duration(v->ttl_s * 1000, a));
        }
        for (uint32_t i = 0; i < p->cache_bypass.count; i++) {
            const char *bp = rt_cstr(t, t->strlist[p->cache_bypass.first + i]);
            size_t kn = sizeof(RT_CACHE_KEY_HEADER) - 1;
            if (strncmp(bp, RT_CACHE_KEY_HEADER, kn) == 0)
                fprintf(out, ", key header %s", bp + kn);
            else
                fprintf(out, ", bypass on %s", bp);
        }
        fprintf(out, ", lock timeout %s", dump_duration(rt_cache_lock_ms(p->rate_flags), a));
        if (p->cache_use_stale) {
            fputs(", stale on ", out);
            conds(p->cache_use_stale, out);
        }
        fputc('\n', out);
    }
    if (p->max_body)
        fprintf(out, "%smax_body: %" PRIu64 " bytes\n", in, p->max_body);
    for (unsigned deny = 1; p->allow.count && deny < 2; deny--) {
        bool any = false;
        for (uint32_t i = 0; i < p->allow.count; i++) {
            const rt_cidr_t *x = &t->cidrs[p->allow.first + i];
            if ((x->flags & RT_CIDR_DENY) != deny)
                continue;
            if (!any)
                fprintf(out, "%s%s:", in, deny ? "deny" : "allow");
            fputc(' ', out);
            any = true;
            cidr(x, out);
        }
        if (any)
            fputs(deny ? " (403)\n" : " (others 403)\n", out);
    }
}

void dump_upstream(const rt_table_t *t, uint32_t ui, const char *in, FILE *out)
{
    const rt_upstream_t *u = &t->upstreams[ui];
    char a[32], b[32];
    fprintf(out, "%supstream %s: %s, keepalive %u%s\n", in, rt_cstr(t, u->name), rt_enum_name("balance", u->balance),
            u->keepalive, u->tls_flags & RT_UTLS_ON ? (u->tls_flags & RT_UTLS_VERIFY ? ", tls verify" : ", tls no-verify") : "");
    for (uint32_t i = 0; i < u->servers.count; i++) {
        const rt_server_t *s = &t->servers[u->servers.first + i];
        fprintf(out, "%s  server %s weight %u max_fails %u fail_timeout %s%s\n", in, rt_cstr(t, s->sa.addr), s->weight,
                s->max_fails, dump_duration(s->fail_timeout_ms, a), s->flags & RT_SVF_BACKUP ? " backup" : "");
    }
    if (u->hc_interval_ms)
        fprintf(out, "%s  health_check %s every %s timeout %s rise %u fall %u expect %u\n", in, rt_cstr(t, u->hc_path),
                dump_duration(u->hc_interval_ms, a), dump_duration(u->hc_timeout_ms, b), u->hc_rise, u->hc_fall,
                u->hc_expect);
}

void dump_route(const rt_table_t *t, uint32_t ri, const char *in, FILE *out)
{
    const rt_route_t *r = &t->routes[ri];
    const rt_site_t *s = &t->sites[r->site];
    char a[32];
    fprintf(out, "%sroute %u (%s:%u:%u): ", in, ri - s->routes.first + 1, rt_cstr(t, s->source), r->line, r->col);
    if (r->match == RT_MATCH_ANY)
        fputs("any path", out);
    else
        fprintf(out, "%s %s", rt_enum_name("match", r->match), rt_cstr(t, r->path));
    fputs(", methods ", out);
    methods(r->methods, out);
    fputc('\n', out);
    switch (r->action) {
    case RT_ACT_UPSTREAM:
        fprintf(out, "%s  proxy to upstream %s%s%s%s%s%s\n", in, rt_cstr(t, t->upstreams[r->upstream].name),
                r->flags & RT_RF_STRIP_PREFIX ? ", strip_prefix" : "",
                r->flags & RT_RF_REWRITE_PREFIX ? ", rewrite_prefix " : "",
                r->flags & RT_RF_REWRITE_PREFIX ? rt_cstr(t, r->extra) : "", r->flags & RT_RF_WEBSOCKET ? ", websocket" : "",
                r->flags & RT_RF_NO_BUFFERING ? ", buffering off" : "");
        if (r->buffering_max_kib && !(r->flags & RT_RF_NO_BUFFERING))
            fprintf(out, "%s  buffering_max: %llu bytes\n", in, (unsigned long long)r->buffering_max_kib << 10);
        break;
    case RT_ACT_RETURN:
        fprintf(out, "%s  return %u%s%s\n", in, r->status, r->target.len ? " body: " : "", rt_cstr(t, r->target));
        break;
    case RT_ACT_REDIRECT:
        fprintf(out, "%s  redirect %u to %s\n", in, r->status, rt_cstr(t, r->target));
        break;
    case RT_ACT_STATIC:
        fprintf(out, "%s  static root %s, expires %s\n", in, rt_cstr(t, r->target), dump_duration(r->expires_s * 1000, a));
        break;
    case RT_ACT_FASTCGI:
        fprintf(out, "%s  fastcgi to upstream %s, root %s, index %s%s\n", in,
                rt_cstr(t, t->upstreams[r->upstream].name), rt_cstr(t, r->target), rt_cstr(t, r->extra),
                r->flags & RT_RF_NO_BUFFERING ? ", buffering off" : "");
        if (r->buffering_max_kib && !(r->flags & RT_RF_NO_BUFFERING))
            fprintf(out, "%s  buffering_max: %llu bytes\n", in, (unsigned long long)r->buffering_max_kib << 10);
        break;
    }
    char in2[64];
    snprintf(in2, sizeof(in2), "%s  ", in);
    dump_policy(t, r->policy, in2, out);
    for (uint32_t i = 0; i < r->header_ops.count; i++) {
        const rt_header_op_t *h = &t->hdrops[r->header_ops.first + i];
        if (h->op == RT_HDR_SET)
            fprintf(out, "%s%s header set %s: %s\n", in2, h->dir == RT_HDR_REQUEST ? "request" : "response",
                    rt_cstr(t, h->name), rt_cstr(t, h->value));
        else
            fprintf(out, "%s%s header remove %s\n", in2, h->dir == RT_HDR_REQUEST ? "request" : "response",
                    rt_cstr(t, h->name));
    }
}

static void dump_global(const rt_table_t *t, FILE *out)
{
    const rt_global_t *g = t->global;
    char a[32], b[32], c[32];
    fprintf(out, "global:\n  workers %s", g->workers ? "" : "auto");
    if (g->workers)
        fprintf(out, "%u", g->workers);
    fprintf(out, ", max_connections %u", g->max_connections);
    if (g->max_conns_per_ip)
        fprintf(out, " (%u per client address)", g->max_conns_per_ip);
    fprintf(out, ", user '%s', admin socket %s\n", rt_cstr(t, g->user), rt_cstr(t, g->admin_socket));
    for (uint32_t i = 0; i < g->listens.count; i++) {
        const rt_listen_t *l = &t->listens[g->listens.first + i];
        fprintf(out, "  listen %s %s%s\n", rt_enum_name("listen", l->kind), rt_cstr(t, l->sa.addr),
                l->flags & RT_LF_PROXY_PROTOCOL ? " (PROXY protocol)" : "");
    }
    fprintf(out, "  limits: header_timeout %s, body_timeout %s, keepalive_timeout %s, max_header_size %u, max_uri_size %u",
            dump_duration(g->header_timeout_ms, a), dump_duration(g->body_timeout_ms, b),
            dump_duration(g->keepalive_timeout_ms, c), g->max_header_size, g->max_uri_size);
    if (g->max_headers)
        fprintf(out, ", max_headers %u", g->max_headers);
    fprintf(out, ", body_min_rate %u/s\n", g->body_min_rate);
    if (g->flags & (RT_GF_HTTP2 | RT_GF_HTTP2_CLEARTEXT))
        fprintf(out, "  http2: %s%s, max %u streams per connection\n",
                g->flags & RT_GF_HTTP2 ? "ALPN h2 on TLS listeners" : "not on TLS listeners",
                g->flags & RT_GF_HTTP2_CLEARTEXT ? ", prior knowledge on plain listeners" : "", g->h2_max_streams);
    else
        fputs("  http2: off (HTTP/1.1 only)\n", out);
    fputs("  trusted_proxies:", out);
    for (uint32_t i = 0; i < g->trusted_proxies.count; i++) {
        fputc(' ', out);
        cidr(&t->cidrs[g->trusted_proxies.first + i], out);
    }
    fputc('\n', out);
    for (uint32_t i = 0; i < t->nrate_zones; i++)
        fprintf(out, "  rate_limit_zone %s: %s by %s%s\n", rt_cstr(t, t->rate_zones[i].name),
                rt_cstr(t, t->rate_zones[i].rate), rt_enum_name("rkey", t->rate_zones[i].key),
                rt_cstr(t, t->rate_zones[i].header));
    for (uint32_t i = 0; i < t->ncache_zones; i++)
        fprintf(out, "  cache_zone %s: path %s, max_size %" PRIu64 "\n", rt_cstr(t, t->cache_zones[i].name),
                rt_cstr(t, t->cache_zones[i].path), t->cache_zones[i].max_size);
}

void dump_compression(const rt_table_t *t, const rt_site_t *s, const char *ind, FILE *out)
{
    if (!(s->flags & RT_SF_COMPRESS))
        return;
    fprintf(out, "%scompression:", ind);
    const char *sep = " ";
    if (s->flags & RT_SF_BROTLI) {
        fprintf(out, "%sbr level %u", sep, rt_site_brotli_level(s));
        sep = ", ";
    }
    if (s->flags & RT_SF_ZSTD) {
        fprintf(out, "%szstd level %u", sep, rt_site_zstd_level(s));
        sep = ", ";
    }
    if (s->flags & RT_SF_GZIP)
        fprintf(out, "%sgzip level %u", sep, s->gzip_level);
    fprintf(out, "; min_length %u; types", s->compress_min_length);
    for (uint32_t k = 0; k < s->compress_types.count; k++)
        fprintf(out, " %s", rt_cstr(t, t->strlist[s->compress_types.first + k]));
    fputc('\n', out);
}

void dump_table(const rt_table_t *t, FILE *out)
{
    dump_global(t, out);
    for (uint32_t i = 0; i < t->nsites; i++) {
        const rt_site_t *s = &t->sites[i];
        fprintf(out, "site %s (%s)%s\n  hosts:", rt_cstr(t, s->name), rt_cstr(t, s->source),
                s->flags & RT_SF_DEFAULT ? " default" : "");
        for (uint32_t k = 0; k < s->hosts.count; k++)
            fprintf(out, " %s", rt_cstr(t, t->strlist[s->hosts.first + k]));
        fprintf(out, "\n  tls: certificate %s%s", rt_enum_name("cert", s->cert_mode),
                s->flags & RT_SF_REDIRECT_HTTP ? ", redirect_http" : "");
        if (s->flags & RT_SF_HSTS)
            fprintf(out, ", hsts max_age %u%s%s", s->hsts_max_age, s->flags & RT_SF_HSTS_SUBDOMAINS ? " include_subdomains" : "",
                    s->flags & RT_SF_HSTS_PRELOAD ? " preload" : "");
        fprintf(out, "\n  security_headers %s, access_log %s", rt_enum_name("sechdr", s->security_headers),
                rt_enum_name("logfmt", s->access_log));
        fputc('\n', out);
        dump_compression(t, s, "  ", out);
        for (uint32_t k = 0; k < s->upstreams.count; k++)
            dump_upstream(t, s->upstreams.first + k, "  ", out);
        for (uint32_t k = 0; k < s->routes.count; k++)
            dump_route(t, s->routes.first + k, "  ", out);
    }
}

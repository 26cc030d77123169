/*
 * dump.c - rule table to text or JSON (see dump.h).  The output mirrors
 * the YAML keys so an operator can map every line back to a site file.
 */
#include "dump.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
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

/* Is a server of u given by a host name (its resolve setting applies)? */
static bool upstream_named(const rt_table_t *t, const rt_upstream_t *u)
{
    for (uint32_t i = 0; i < u->servers.count; i++)
        if (t->servers[u->servers.first + i].sa.kind == RT_ADDR_NAME)
            return true;
    return false;
}

void dump_upstream(const rt_table_t *t, uint32_t ui, const char *in, FILE *out)
{
    const rt_upstream_t *u = &t->upstreams[ui];
    char a[32], b[32];
    bool named = upstream_named(t, u);
    fprintf(out, "%supstream %s: %s, keepalive %u%s", in, rt_cstr(t, u->name), rt_enum_name("balance", u->balance),
            u->keepalive, u->tls_flags & RT_UTLS_ON ? (u->tls_flags & RT_UTLS_VERIFY ? ", tls verify" : ", tls no-verify") : "");
    if (u->resolve_ms)
        fprintf(out, ", resolve every %s", dump_duration(u->resolve_ms, a));
    else if (named)
        fputs(", resolve at the records' TTL", out);
    fputc('\n', out);
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
        fprintf(out, "  %s %s %s%s\n", l->kind == RT_LISTEN_RESOLVER ? "dns" : "listen", rt_enum_name("listen", l->kind), rt_cstr(t, l->sa.addr),
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

/* ---- JSON (dump --json, route-test --json) ----------------------------------------
 *
 * The same records as the text above, as jansson values with the YAML's key
 * names; durations in milliseconds (_ms) or seconds (_s), sizes in bytes.
 */

/* A table string as JSON; bytes that are not UTF-8 (jansson refuses them)
 * become '?'. */
json_t *dump_json_str(const rt_table_t *t, rt_str_t s)
{
    const char *c = rt_cstr(t, s);
    json_t *v = json_string(c);
    if (v)
        return v;
    char *copy = strdup(c);
    if (copy == NULL)
        abort();
    for (char *p = copy; *p; p++)
        if ((unsigned char)*p >= 0x80)
            *p = '?';
    v = json_string(copy);
    free(copy);
    return v;
}

static json_t *json_methods(uint32_t m)
{
    if (m == RT_M_ALL)
        return json_string("any");
    json_t *a = json_array();
    for (unsigned i = 0; i < RT_M_COUNT; i++)
        if (m & (1u << i))
            json_array_append_new(a, json_string(rt_method_name(i)));
    return a;
}

static json_t *json_conds(uint32_t m)
{
    json_t *a = json_array();
    for (unsigned i = 0; i < RT_COND_COUNT; i++)
        if (m & (1u << i))
            json_array_append_new(a, json_string(rt_cond_name(i)));
    return a;
}

static json_t *json_cidr(const rt_cidr_t *c)
{
    char buf[64], out[80];
    inet_ntop(c->family == 4 ? AF_INET : AF_INET6, c->addr, buf, sizeof(buf));
    snprintf(out, sizeof(out), "%s/%u", buf, c->bits);
    return json_string(out);
}

static json_t *json_cache(const rt_table_t *t, const rt_policy_t *p)
{
    json_t *valid = json_array(), *bypass = json_array(), *keys = json_array();
    for (uint32_t i = 0; i < p->cache_valid.count; i++) {
        const rt_status_ttl_t *v = &t->ttls[p->cache_valid.first + i];
        json_array_append_new(valid, json_pack("{s:o,s:I}", "status", v->status ? json_integer(v->status) : json_string("any"),
                                               "ttl_s", (json_int_t)v->ttl_s));
    }
    size_t kn = sizeof(RT_CACHE_KEY_HEADER) - 1;
    for (uint32_t i = 0; i < p->cache_bypass.count; i++) {
        const char *bp = rt_cstr(t, t->strlist[p->cache_bypass.first + i]);
        json_array_append_new(strncmp(bp, RT_CACHE_KEY_HEADER, kn) == 0 ? keys : bypass,
                              json_string(strncmp(bp, RT_CACHE_KEY_HEADER, kn) == 0 ? bp + kn : bp));
    }
    return json_pack("{s:o,s:o,s:o,s:o,s:I,s:o}", "zone", dump_json_str(t, t->cache_zones[p->cache_zone].name), "valid", valid,
                     "bypass_on", bypass, "key_headers", keys, "lock_timeout_ms",
                     (json_int_t)rt_cache_lock_ms(p->rate_flags), "use_stale", json_conds(p->cache_use_stale));
}

json_t *dump_json_policy(const rt_table_t *t, uint32_t pi)
{
    const rt_policy_t *p = &t->policies[pi];
    json_t *o = json_pack("{s:{s:I,s:I,s:I}}", "timeouts", "connect_ms", (json_int_t)p->connect_ms, "read_ms",
                          (json_int_t)p->read_ms, "send_ms", (json_int_t)p->send_ms);
    if (p->retry_tries > 1)
        json_object_set_new(o, "retry", json_pack("{s:I,s:o}", "tries", (json_int_t)p->retry_tries, "on", json_conds(p->retry_on)));
    if (p->rate_zone != RT_NONE)
        json_object_set_new(o, "rate_limit", json_pack("{s:o,s:I,s:b}", "zone", dump_json_str(t, t->rate_zones[p->rate_zone].name),
                                                       "burst", (json_int_t)p->rate_burst,
                                                       "nodelay", (p->rate_flags & RT_RATE_NODELAY) != 0));
    if (p->cache_zone != RT_NONE)
        json_object_set_new(o, "cache", json_cache(t, p));
    if (p->max_body)
        json_object_set_new(o, "max_body", json_integer((json_int_t)p->max_body));
    if (p->allow.count) {
        json_t *allow = json_array(), *deny = json_array();
        for (uint32_t i = 0; i < p->allow.count; i++) {
            const rt_cidr_t *x = &t->cidrs[p->allow.first + i];
            json_array_append_new(x->flags & RT_CIDR_DENY ? deny : allow, json_cidr(x));
        }
        json_object_set_new(o, "allow", allow);
        json_object_set_new(o, "deny", deny);
    }
    return o;
}

json_t *dump_json_upstream(const rt_table_t *t, uint32_t ui)
{
    const rt_upstream_t *u = &t->upstreams[ui];
    json_t *servers = json_array();
    for (uint32_t i = 0; i < u->servers.count; i++) {
        const rt_server_t *s = &t->servers[u->servers.first + i];
        json_array_append_new(servers, json_pack("{s:o,s:I,s:I,s:I,s:b}", "address", dump_json_str(t, s->sa.addr), "weight",
                                                 (json_int_t)s->weight, "max_fails", (json_int_t)s->max_fails,
                                                 "fail_timeout_ms", (json_int_t)s->fail_timeout_ms, "backup",
                                                 (s->flags & RT_SVF_BACKUP) != 0));
    }
    json_t *o = json_pack("{s:o,s:s,s:I,s:o,s:o}", "name", dump_json_str(t, u->name), "balance", rt_enum_name("balance", u->balance),
                          "keepalive", (json_int_t)u->keepalive, "tls",
                          u->tls_flags & RT_UTLS_ON ? json_pack("{s:b}", "verify", (u->tls_flags & RT_UTLS_VERIFY) != 0)
                                                    : json_null(),
                          "servers", servers);
    bool named = upstream_named(t, u);
    if (named || u->resolve_ms) /* 0: again when the records' TTL runs out */
        json_object_set_new(o, "resolve_ms", json_integer((json_int_t)u->resolve_ms));
    if (u->hc_interval_ms)
        json_object_set_new(o, "health_check",
                            json_pack("{s:o,s:I,s:I,s:I,s:I,s:I}", "path", dump_json_str(t, u->hc_path), "interval_ms",
                                      (json_int_t)u->hc_interval_ms, "timeout_ms", (json_int_t)u->hc_timeout_ms, "rise",
                                      (json_int_t)u->hc_rise, "fall", (json_int_t)u->hc_fall, "expect",
                                      (json_int_t)u->hc_expect));
    return o;
}

/* The route's action and what it takes, into o. */
static void json_action(const rt_table_t *t, const rt_route_t *r, json_t *o)
{
    json_object_set_new(o, "action", json_string(rt_enum_name("action", r->action)));
    switch (r->action) {
    case RT_ACT_UPSTREAM:
        json_object_set_new(o, "upstream", dump_json_str(t, t->upstreams[r->upstream].name));
        json_object_set_new(o, "strip_prefix", json_boolean(r->flags & RT_RF_STRIP_PREFIX));
        json_object_set_new(o, "rewrite_prefix", r->flags & RT_RF_REWRITE_PREFIX ? dump_json_str(t, r->extra) : json_null());
        json_object_set_new(o, "websocket", json_boolean(r->flags & RT_RF_WEBSOCKET));
        json_object_set_new(o, "buffering", json_boolean(!(r->flags & RT_RF_NO_BUFFERING)));
        if (r->buffering_max_kib && !(r->flags & RT_RF_NO_BUFFERING))
            json_object_set_new(o, "buffering_max", json_integer((json_int_t)r->buffering_max_kib << 10));
        break;
    case RT_ACT_RETURN:
        json_object_set_new(o, "return", json_pack("{s:I,s:o}", "status", (json_int_t)r->status, "body", dump_json_str(t, r->target)));
        break;
    case RT_ACT_REDIRECT:
        json_object_set_new(o, "redirect", json_pack("{s:I,s:o}", "status", (json_int_t)r->status, "to", dump_json_str(t, r->target)));
        break;
    case RT_ACT_STATIC:
        json_object_set_new(o, "static", json_pack("{s:o,s:I}", "root", dump_json_str(t, r->target), "expires_s", (json_int_t)r->expires_s));
        break;
    case RT_ACT_FASTCGI:
        json_object_set_new(o, "fastcgi", json_pack("{s:o,s:o,s:o}", "upstream", dump_json_str(t, t->upstreams[r->upstream].name),
                                                    "root", dump_json_str(t, r->target), "index", dump_json_str(t, r->extra)));
        json_object_set_new(o, "buffering", json_boolean(!(r->flags & RT_RF_NO_BUFFERING)));
        if (r->buffering_max_kib && !(r->flags & RT_RF_NO_BUFFERING))
            json_object_set_new(o, "buffering_max", json_integer((json_int_t)r->buffering_max_kib << 10));
        break;
    }
}

json_t *dump_json_route(const rt_table_t *t, uint32_t ri)
{
    const rt_route_t *r = &t->routes[ri];
    const rt_site_t *s = &t->sites[r->site];
    json_t *o = json_pack("{s:I,s:o,s:I,s:I}", "route", (json_int_t)(ri - s->routes.first + 1), "source", dump_json_str(t, s->source),
                          "line", (json_int_t)r->line, "col", (json_int_t)r->col);
    json_object_set_new(o, "match", r->match == RT_MATCH_ANY ? json_string("any")
                                                             : json_pack("{s:o}", rt_enum_name("match", r->match), dump_json_str(t, r->path)));
    json_object_set_new(o, "methods", json_methods(r->methods));
    json_action(t, r, o);
    json_object_set_new(o, "policy", dump_json_policy(t, r->policy));
    json_t *hdrs = json_array();
    for (uint32_t i = 0; i < r->header_ops.count; i++) {
        const rt_header_op_t *h = &t->hdrops[r->header_ops.first + i];
        json_t *e = json_pack("{s:s,s:s,s:o}", "direction", h->dir == RT_HDR_REQUEST ? "request" : "response", "op",
                              h->op == RT_HDR_SET ? "set" : "remove", "name", dump_json_str(t, h->name));
        if (h->op == RT_HDR_SET)
            json_object_set_new(e, "value", dump_json_str(t, h->value));
        json_array_append_new(hdrs, e);
    }
    json_object_set_new(o, "headers", hdrs);
    return o;
}

json_t *dump_json_compression(const rt_table_t *t, const rt_site_t *s)
{
    if (!(s->flags & RT_SF_COMPRESS))
        return json_null();
    json_t *codings = json_array(), *types = json_array();
    if (s->flags & RT_SF_BROTLI)
        json_array_append_new(codings, json_pack("{s:s,s:I}", "coding", "br", "level", (json_int_t)rt_site_brotli_level(s)));
    if (s->flags & RT_SF_ZSTD)
        json_array_append_new(codings, json_pack("{s:s,s:I}", "coding", "zstd", "level", (json_int_t)rt_site_zstd_level(s)));
    if (s->flags & RT_SF_GZIP)
        json_array_append_new(codings, json_pack("{s:s,s:I}", "coding", "gzip", "level", (json_int_t)s->gzip_level));
    for (uint32_t k = 0; k < s->compress_types.count; k++)
        json_array_append_new(types, dump_json_str(t, t->strlist[s->compress_types.first + k]));
    return json_pack("{s:o,s:I,s:o}", "codings", codings, "min_length", (json_int_t)s->compress_min_length, "types", types);
}

static json_t *json_global(const rt_table_t *t)
{
    const rt_global_t *g = t->global;
    json_t *listen = json_array(), *trusted = json_array(), *rz = json_array(), *cz = json_array();
    for (uint32_t i = 0; i < g->listens.count; i++) {
        const rt_listen_t *l = &t->listens[g->listens.first + i];
        json_array_append_new(listen, json_pack("{s:s,s:o,s:b}", "kind", rt_enum_name("listen", l->kind), "address",
                                                dump_json_str(t, l->sa.addr), "proxy_protocol", (l->flags & RT_LF_PROXY_PROTOCOL) != 0));
    }
    for (uint32_t i = 0; i < g->trusted_proxies.count; i++)
        json_array_append_new(trusted, json_cidr(&t->cidrs[g->trusted_proxies.first + i]));
    for (uint32_t i = 0; i < t->nrate_zones; i++)
        json_array_append_new(rz, json_pack("{s:o,s:o,s:s,s:o}", "name", dump_json_str(t, t->rate_zones[i].name), "rate",
                                            dump_json_str(t, t->rate_zones[i].rate), "key", rt_enum_name("rkey", t->rate_zones[i].key),
                                            "header", dump_json_str(t, t->rate_zones[i].header)));
    for (uint32_t i = 0; i < t->ncache_zones; i++)
        json_array_append_new(cz, json_pack("{s:o,s:o,s:I}", "name", dump_json_str(t, t->cache_zones[i].name), "path",
                                            dump_json_str(t, t->cache_zones[i].path), "max_size", (json_int_t)t->cache_zones[i].max_size));
    json_t *o = json_pack("{s:o,s:I,s:I,s:o,s:o,s:o}", "workers", g->workers ? json_integer(g->workers) : json_string("auto"),
                          "max_connections", (json_int_t)g->max_connections, "max_connections_per_ip",
                          (json_int_t)g->max_conns_per_ip, "user", dump_json_str(t, g->user), "admin_socket", dump_json_str(t, g->admin_socket),
                          "listen", listen);
    json_object_set_new(o, "limits", json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "header_timeout_ms",
                                               (json_int_t)g->header_timeout_ms, "body_timeout_ms",
                                               (json_int_t)g->body_timeout_ms, "keepalive_timeout_ms",
                                               (json_int_t)g->keepalive_timeout_ms, "max_header_size",
                                               (json_int_t)g->max_header_size, "max_uri_size", (json_int_t)g->max_uri_size,
                                               "max_headers", (json_int_t)g->max_headers, "body_min_rate",
                                               (json_int_t)g->body_min_rate));
    json_object_set_new(o, "http2", json_pack("{s:b,s:b,s:I}", "tls", (g->flags & RT_GF_HTTP2) != 0, "cleartext",
                                              (g->flags & RT_GF_HTTP2_CLEARTEXT) != 0, "max_streams",
                                              (json_int_t)g->h2_max_streams));
    json_object_set_new(o, "trusted_proxies", trusted);
    json_object_set_new(o, "rate_limit_zones", rz);
    json_object_set_new(o, "cache_zones", cz);
    return o;
}

static json_t *json_site(const rt_table_t *t, const rt_site_t *s)
{
    json_t *hosts = json_array(), *ups = json_array(), *routes = json_array();
    for (uint32_t k = 0; k < s->hosts.count; k++)
        json_array_append_new(hosts, dump_json_str(t, t->strlist[s->hosts.first + k]));
    for (uint32_t k = 0; k < s->upstreams.count; k++)
        json_array_append_new(ups, dump_json_upstream(t, s->upstreams.first + k));
    for (uint32_t k = 0; k < s->routes.count; k++)
        json_array_append_new(routes, dump_json_route(t, s->routes.first + k));
    json_t *hsts = s->flags & RT_SF_HSTS ? json_pack("{s:I,s:b,s:b}", "max_age", (json_int_t)s->hsts_max_age,
                                                     "include_subdomains", (s->flags & RT_SF_HSTS_SUBDOMAINS) != 0,
                                                     "preload", (s->flags & RT_SF_HSTS_PRELOAD) != 0)
                                         : json_null();
    return json_pack("{s:o,s:o,s:b,s:o,s:{s:s,s:b,s:o},s:s,s:s,s:o,s:o,s:o}", "name", dump_json_str(t, s->name), "source",
                     dump_json_str(t, s->source), "default", (s->flags & RT_SF_DEFAULT) != 0, "hosts", hosts, "tls", "certificate",
                     rt_enum_name("cert", s->cert_mode), "redirect_http", (s->flags & RT_SF_REDIRECT_HTTP) != 0, "hsts",
                     hsts, "security_headers", rt_enum_name("sechdr", s->security_headers), "access_log",
                     rt_enum_name("logfmt", s->access_log), "compression", dump_json_compression(t, s), "upstreams", ups,
                     "routes", routes);
}

json_t *dump_json_table(const rt_table_t *t)
{
    json_t *sites = json_array();
    for (uint32_t i = 0; i < t->nsites; i++)
        json_array_append_new(sites, json_site(t, &t->sites[i]));
    return json_pack("{s:o,s:o}", "global", json_global(t), "sites", sites);
}

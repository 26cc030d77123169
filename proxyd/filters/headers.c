/*
 * headers.c - response header filter (see headers.h).
 *
 * Adding a filter is this file's shape: keep the chain's top as `next`,
 * put yourself on top in worker_init, call next when done, and list the
 * module in core/modules.c (later entries sit nearer the top).
 */
#include "filters/headers.h"

#include <string.h>
#include <strings.h>

#include "http/vars.h"

static http_header_filter_t next_header;

typedef struct {
    const char *name, *value;
    uint8_t min;                /* the least rt_sechdr level that sends it */
} preset_t;

static const preset_t presets[] = {
    {"X-Content-Type-Options", "nosniff", RT_SECHDR_BASIC},
    {"Referrer-Policy", "strict-origin-when-cross-origin", RT_SECHDR_BASIC},
    {"Permissions-Policy", "camera=(), microphone=(), geolocation=()", RT_SECHDR_STRICT},
    {"Cross-Origin-Opener-Policy", "same-origin", RT_SECHDR_STRICT},
};

#define VALUE_MAX 1024

static bool route_names(const rt_table_t *t, const rt_route_t *rt, const char *name, size_t n)
{
    for (uint32_t i = 0; i < rt->header_ops.count; i++) {
        const rt_header_op_t *o = &t->hdrops[rt->header_ops.first + i];
        if (o->dir == RT_HDR_RESPONSE && n == o->name.len && strncasecmp(name, rt_cstr(t, o->name), n) == 0)
            return true;
    }
    return false;
}

/* A preset header, unless the route says otherwise; it replaces the upstream's. */
static void preset(request_t *r, const rt_route_t *rt, const char *name, const char *value)
{
    size_t n = strlen(name);
    if (rt && route_names(&r->table->t, rt, name, n))
        return;
    http_resp_remove(r, name, n);
    http_resp_add(r, name, n, value, strlen(value));
}

static void hsts(request_t *r, const rt_site_t *s, const rt_route_t *rt)
{
    if (!r->conn->tls)
        return;
    if (s->flags & RT_SF_HSTS) {
        char *v = arena_alloc(&r->arena, 64);
        size_t o = 0;
        memcpy(v, "max-age=", 8);
        o = 8 + fmt_u64(v + 8, s->hsts_max_age);
        if (s->flags & RT_SF_HSTS_SUBDOMAINS) {
            memcpy(v + o, "; includeSubDomains", 19);
            o += 19;
        }
        if (s->flags & RT_SF_HSTS_PRELOAD) {
            memcpy(v + o, "; preload", 9);
            o += 9;
        }
        v[o] = '\0';
        preset(r, rt, "Strict-Transport-Security", v);
    } else if (s->security_headers >= RT_SECHDR_STRICT) {
        preset(r, rt, "Strict-Transport-Security", "max-age=63072000; includeSubDomains");
    }
}

static void security_headers(request_t *r, const rt_route_t *rt)
{
    const rt_site_t *s = &r->table->t.sites[r->site];
    hsts(r, s, rt);
    if (s->security_headers >= RT_SECHDR_BASIC)
        preset(r, rt, "X-Frame-Options", s->security_headers >= RT_SECHDR_STRICT ? "DENY" : "SAMEORIGIN");
    for (size_t i = 0; i < sizeof(presets) / sizeof(presets[0]); i++)
        if (s->security_headers >= presets[i].min)
            preset(r, rt, presets[i].name, presets[i].value);
}

/* The route's headers.response: every field it names goes, then its sets. */
static void route_headers(request_t *r, const rt_route_t *rt)
{
    const rt_table_t *t = &r->table->t;
    for (uint32_t i = 0; i < rt->header_ops.count; i++) {
        const rt_header_op_t *o = &t->hdrops[rt->header_ops.first + i];
        if (o->dir == RT_HDR_RESPONSE)
            http_resp_remove(r, rt_cstr(t, o->name), o->name.len);
    }
    for (uint32_t i = 0; i < rt->header_ops.count; i++) {
        const rt_header_op_t *o = &t->hdrops[rt->header_ops.first + i];
        if (o->dir != RT_HDR_RESPONSE || o->op != RT_HDR_SET)
            continue;
        char *v = arena_alloc(&r->arena, VALUE_MAX);
        size_t vn = vars_expand(r, rt_cstr(t, o->value), v, VALUE_MAX);
        http_resp_add(r, rt_cstr(t, o->name), o->name.len, v, vn < VALUE_MAX ? vn : strlen(v));
    }
}

static void headers_filter(request_t *r)
{
    const rt_route_t *rt = r->route == RT_NONE ? NULL : &r->table->t.routes[r->route];
    if (rt && rt->header_ops.count)
        route_headers(r, rt);
    if (r->site != RT_NONE)
        security_headers(r, rt);
    next_header(r);
}

static void headers_init(void)
{
    next_header = http_top_header_filter;
    http_top_header_filter = headers_filter;
}

const module_t headers_filter_module = {.name = "headers", .worker_init = headers_init};

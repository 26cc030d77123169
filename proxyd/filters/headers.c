/*
 * headers.c - response header filter (see headers.h).
 *
 * Adding a filter is this file's shape: keep the chain's top as `next`,
 * put yourself on top in worker_init, call next when done, and list the
 * module in core/modules.c (later entries sit nearer the top).
 */
#include "filters/headers.h"

#include <string.h>

#include "../common/str.h"
#include "http/vars.h"

static http_header_filter_t next_header;

typedef struct {
    slice_t name, value;
} preset_t;

#define PRESET(n, v) {SLICE_LIT(n), SLICE_LIT(v)}
/* SPEC §9: basic, and strict (which adds HSTS over https, below). */
static const preset_t basic[] = {
    PRESET("X-Frame-Options", "SAMEORIGIN"),
    PRESET("X-Content-Type-Options", "nosniff"),
    PRESET("Referrer-Policy", "strict-origin-when-cross-origin"),
};
static const preset_t strict[] = {
    PRESET("X-Frame-Options", "DENY"),
    PRESET("X-Content-Type-Options", "nosniff"),
    PRESET("Referrer-Policy", "strict-origin-when-cross-origin"),
    PRESET("Permissions-Policy", "camera=(), microphone=(), geolocation=()"),
    PRESET("Cross-Origin-Opener-Policy", "same-origin"),
};
#define NPRESET(a) (sizeof(a) / sizeof((a)[0]))
static const slice_t hsts_name = SLICE_LIT("Strict-Transport-Security");
static const slice_t hsts_strict = SLICE_LIT("max-age=63072000; includeSubDomains");

#define VALUE_MAX 1024


static slice_t hsts_value(request_t *r, const rt_site_t *s)
{
    if (!(s->flags & RT_SF_HSTS))
        return hsts_strict;
    str_buf_t b = str_buf_fixed(arena_alloc_raw(&r->arena, 64), 64);
    STR_APPEND_LIT(&b, "max-age=");
    str_append_u64(&b, s->hsts_max_age);
    if (s->flags & RT_SF_HSTS_SUBDOMAINS)
        STR_APPEND_LIT(&b, "; includeSubDomains");
    if (s->flags & RT_SF_HSTS_PRELOAD)
        STR_APPEND_LIT(&b, "; preload");
    return (slice_t){b.p, b.len};
}

/* Does the route name this header (then it, not the preset, decides)? */
static bool route_owns(const request_t *r, const rt_route_t *rt, slice_t name)
{
    return rt && rt->header_ops.count && vars_route_names(&r->table->t, rt, RT_HDR_RESPONSE, name.p, name.n);
}

/* The preset replaces the upstream's values: every removal first, so the
 * removals scan only the fields that came in (see http_resp_t.name_lens). */
static void security_headers(request_t *r, const rt_route_t *rt)
{
    const rt_site_t *s = &r->table->t.sites[r->site];
    bool hsts = r->conn->tls && ((s->flags & RT_SF_HSTS) || s->security_headers >= RT_SECHDR_STRICT);
    const preset_t *p = s->security_headers >= RT_SECHDR_STRICT ? strict : basic;
    size_t n = s->security_headers >= RT_SECHDR_STRICT ? NPRESET(strict)
             : s->security_headers >= RT_SECHDR_BASIC ? NPRESET(basic) : 0;
    if (hsts && !route_owns(r, rt, hsts_name))
        http_resp_remove(r, hsts_name.p, hsts_name.n);
    for (size_t i = 0; i < n; i++)
        if (!route_owns(r, rt, p[i].name))
            http_resp_remove(r, p[i].name.p, p[i].name.n);
    if (hsts && !route_owns(r, rt, hsts_name)) {
        slice_t v = hsts_value(r, s);
        http_resp_add(r, hsts_name.p, hsts_name.n, v.p, v.n);
    }
    for (size_t i = 0; i < n; i++)
        if (!route_owns(r, rt, p[i].name))
            http_resp_add(r, p[i].name.p, p[i].name.n, p[i].value.p, p[i].value.n);
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

static int headers_init(void)
{
    next_header = http_top_header_filter;
    http_top_header_filter = headers_filter;
    return 0;
}

const module_t headers_filter_module = {.name = "headers", .worker_init = headers_init};

/*
 * phases.c - the route, access and limit phases (see phases.h).
 */
#include "http/phases.h"

#include <stdio.h>
#include <string.h>

#include "../common/route.h"
#include "../common/str.h"
#include "cache/cache.h"
#include "conn/tls.h"
#include "handlers/proxy.h"
#include "handlers/return.h"
#include "handlers/static_handler.h"
#include "http/limit.h"
#include "http/path.h"
#include "http/route_regex.h"

#define ACME_PREFIX "/.well-known/acme-challenge/"
#define ACME_PREFIX_LEN (sizeof(ACME_PREFIX) - 1)

static bool acme_path(const request_t *r)
{
    return r->path.n >= ACME_PREFIX_LEN && memcmp(r->path.p, ACME_PREFIX, ACME_PREFIX_LEN) == 0;
}

/* The normalized path replaces the one received (RFC 3986 §6.2.2). */
static int normalize(request_t *r)
{
    const char *why;
    char *out = arena_alloc(&r->arena, r->path.n + 1);
    long pn = path_normalize(r->path.p, r->path.n, out, r->path.n + 1, &why);
    if (pn < 0)
        return -1;
    r->path = (slice_t){out, (size_t)pn};
    return 0;
}

#define ALLOW_MAX 128 /* every method name of RT_M_*, comma-separated */

static void allow_header(request_t *r, uint32_t mask)
{
    str_buf_t b = str_buf_fixed(arena_alloc_raw(&r->arena, ALLOW_MAX), ALLOW_MAX);
    for (unsigned i = 0; i < RT_M_COUNT; i++)
        if (mask & (1u << i)) {
            if (b.len)
                STR_APPEND_LIT(&b, ", ");
            str_append_str(&b, rt_method_name(i));
        }
    http_resp_add(r, "Allow", 5, b.p, b.len);
}

/* Over TLS the certificate was chosen by SNI: a Host of another site was
 * not meant for this connection (RFC 9110 §15.5.20), whatever the client
 * thought it could reuse. */
static bool misdirected(const request_t *r)
{
    const char *sni = r->conn->ssl ? tls_sni(r->conn->ssl) : NULL;
    return sni && route_site(&r->table->t, sni, strlen(sni)) != r->site;
}

/* ---- the client address (SPEC §9) ------------------------------------------------- */

/* One element of X-Forwarded-For: 192.0.2.1, 2001:db8::1, [2001:db8::1]:443
 * or 192.0.2.1:80 (some proxies add the port). */
static int xff_addr(const char *p, size_t n, uint8_t ip[16], int *family)
{
    if (n && p[0] == '[') {
        const char *e = memchr(p, ']', n);
        return e && parse_ip(p + 1, (size_t)(e - p - 1), ip, family) == 0 && *family == 6 ? 0 : -1;
    }
    if (parse_ip(p, n, ip, family) == 0)
        return 0;
    const char *colon = memchr(p, ':', n);
    return colon && parse_ip(p, (size_t)(colon - p), ip, family) == 0 && *family == 4 ? 0 : -1;
}

static bool ows(char ch) { return ch == ' ' || ch == '\t'; }

/* From a trusted peer, X-Forwarded-For is walked from the right (the
 * nearest hop) past the trusted proxies: the first untrusted address is the
 * client.  An element that is not an address ends the walk at the last one
 * believed; when every address is trusted, the leftmost is the client. */
static void client_address(request_t *r, const rt_table_t *t)
{
    r->peer_trusted = trusted_proxy(t, r->conn->peer_family, r->conn->peer_ip);
    for (size_t i = r->nheaders; r->peer_trusted && i-- > 0;) {
        if (r->headers[i].id != H1_HDR_X_FORWARDED_FOR)
            continue;
        const char *p = r->headers[i].value.p;
        size_t end = r->headers[i].value.n;
        while (end > 0) {
            size_t start = end, e = end;
            while (start > 0 && p[start - 1] != ',')
                start--;
            size_t b = start;
            while (b < e && ows(p[b]))
                b++;
            while (e > b && ows(p[e - 1]))
                e--;
            end = start ? start - 1 : 0;
            if (b == e)
                continue; /* an empty list element (RFC 9110 §5.6.1) */
            uint8_t ip[16];
            int family;
            if (xff_addr(p + b, e - b, ip, &family) < 0)
                return;
            r->client_family = (uint8_t)ip_unmap(family, ip);
            memcpy(r->client_ip, ip, sizeof(ip));
            if (!trusted_proxy(t, r->client_family, r->client_ip))
                return;
        }
    }
}

static const http_handler_t *const action_handler[] = {
    [RT_ACT_UPSTREAM] = &proxy_handler,
    [RT_ACT_STATIC] = &static_handler,
    [RT_ACT_FASTCGI] = &fastcgi_handler,
    [RT_ACT_RETURN] = &return_handler,
    [RT_ACT_REDIRECT] = &redirect_handler,
};

static int phase_route(request_t *r)
{
    const rt_table_t *t = &r->table->t;
    if (r->form == H1_FORM_AUTHORITY || r->form == H1_FORM_ASTERISK) {
        http_error(r, r->form == H1_FORM_AUTHORITY ? 405 : 404, NULL);
        return HTTP_PHASE_DONE;
    }
    client_address(r, t);
    if (normalize(r) < 0) {
        http_error(r, 400, NULL);
        return HTTP_PHASE_DONE;
    }
    if (acme_path(r) && !r->conn->tls && return_acme_challenge(r, ACME_PREFIX_LEN))
        return HTTP_PHASE_DONE;
    if (r->host.n == 0 && !r->http10) {
        http_error(r, 400, NULL); /* an http URI has a host (RFC 9110 §4.2.1); only HTTP/1.0 may omit it */
        return HTTP_PHASE_DONE;
    }
    r->site = route_site(t, r->host.p, r->host.n);
    if (r->site == RT_NONE) {
        http_error(r, 404, NULL);
        return HTTP_PHASE_DONE;
    }
    if (misdirected(r)) {
        http_error(r, 421, NULL);
        return HTTP_PHASE_DONE;
    }
    if ((t->sites[r->site].flags & RT_SF_REDIRECT_HTTP) && !r->conn->tls && !acme_path(r)) {
        return_https_redirect(r);
        return HTTP_PHASE_DONE;
    }
    route_result_t res;
    route_match(t, r->site, r->method.p, r->method.n, r->path.p, r->path.n, route_regex_match, r->table, &res);
    if (res.status == 405) {
        http_resp_init(r, 405);
        allow_header(r, res.allow);
        http_send_status_body(r);
        return HTTP_PHASE_DONE;
    }
    if (res.status) {
        http_error(r, res.status, NULL);
        return HTTP_PHASE_DONE;
    }
    r->route = res.route;
    uint8_t action = t->routes[res.route].action;
    r->handler = action < sizeof(action_handler) / sizeof(action_handler[0]) ? action_handler[action] : NULL;
    if (r->handler == NULL) {
        http_error(r, 500, "route action unknown to this proxyd");
        return HTTP_PHASE_DONE;
    }
    return HTTP_PHASE_NEXT;
}

/* deny entries first (site's and route's), then a non-empty allow list
 * lets in only its own (the route's, or the site's). */
static bool allowed(const request_t *r, const rt_table_t *t, const rt_policy_t *p)
{
    bool listed = false, allow = false;
    for (uint32_t i = 0; i < p->allow.count; i++) {
        const rt_cidr_t *c = &t->cidrs[p->allow.first + i];
        bool hit = cidr_contains(c, r->client_family, r->client_ip);
        if (c->flags & RT_CIDR_DENY) {
            if (hit)
                return false;
            continue;
        }
        listed = true;
        allow |= hit;
    }
    return !listed || allow;
}

static int phase_access(request_t *r)
{
    const rt_table_t *t = &r->table->t;
    const rt_policy_t *p = &t->policies[t->routes[r->route].policy];
    if (!allowed(r, t, p)) {
        http_error(r, 403, NULL);
        return HTTP_PHASE_DONE;
    }
    r->max_body = p->max_body;
    if (p->max_body && r->content_length > 0 && (uint64_t)r->content_length > p->max_body) {
        http_error(r, 413, NULL);
        return HTTP_PHASE_DONE;
    }
    return HTTP_PHASE_NEXT;
}

const http_phase_t http_phases[] = {phase_route, phase_access, limit_phase, cache_phase, NULL};

void request_run(request_t *r)
{
    while (http_phases[r->phase]) {
        int rc = http_phases[r->phase](r);
        if (rc == HTTP_PHASE_DONE)
            return;
        r->phase++;
        if (rc == HTTP_PHASE_SUSPEND)
            return;
    }
    r->handler->start(r);
}

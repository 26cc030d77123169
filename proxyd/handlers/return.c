/*
 * return.c - return, redirect, ACME challenges and redirect_http (see return.h).
 */
#include "handlers/return.h"

#include <string.h>

#include "../common/str.h"
#include "handlers/challenges.h"
#include "http/vars.h"

static void return_start(request_t *r)
{
    const rt_table_t *t = &r->table->t;
    const rt_route_t *rt = &t->routes[r->route];
    if (rt->target.len == 0 && rt->status >= 400) {
        http_error(r, rt->status, NULL);
        return;
    }
    const char *ctype = rt->extra.len ? rt_cstr(t, rt->extra) : "text/plain; charset=utf-8";
    http_respond(r, rt->status, ctype, rt_cstr(t, rt->target), rt->target.len);
}

const http_handler_t return_handler = {"return", return_start};

#define REDIRECT_MAX 2048

static void redirect_start(request_t *r)
{
    const rt_table_t *t = &r->table->t;
    const rt_route_t *rt = &t->routes[r->route];
    char *to = arena_alloc(&r->arena, REDIRECT_MAX);
    size_t n = vars_expand(r, rt_cstr(t, rt->target), to, REDIRECT_MAX);
    if (n >= REDIRECT_MAX) {
        http_error(r, 500, "redirect target too long after expansion");
        return;
    }
    http_redirect(r, rt->status, to, n);
}

const http_handler_t redirect_handler = {"redirect", redirect_start};

#define ACME_TOKEN_MAX CHALLENGE_TOKEN_MAX
static const char token_chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

bool return_acme_challenge(request_t *r, size_t prefix_len)
{
    const char *token = r->path.p + prefix_len;
    size_t n = r->path.n - prefix_len;
    if (n == 0 || n > ACME_TOKEN_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (memchr(token_chars, token[i], sizeof(token_chars) - 1) == NULL)
            return false;
    char *ka = arena_alloc(&r->arena, CHALLENGE_KA_MAX);
    ssize_t kn = challenges_find(token, n, ka, CHALLENGE_KA_MAX);
    if (kn < 0)
        return false;
    http_respond(r, 200, "application/octet-stream", ka, (size_t)kn);
    return true;
}

/* The host without its port (an IPv6 literal keeps its brackets). */
static size_t host_name_len(slice_t h)
{
    if (h.n && h.p[0] == '[') {
        const char *e = memchr(h.p, ']', h.n);
        return e ? (size_t)(e - h.p) + 1 : 0;
    }
    const char *colon = memchr(h.p, ':', h.n);
    return colon ? (size_t)(colon - h.p) : h.n;
}

/* The port of the first HTTPS listener when it is not 443 (SPEC §10: the
 * redirect keeps a non-default HTTPS port), else 0. */
static unsigned https_port(const rt_table_t *t)
{
    for (uint32_t i = 0; i < t->global->listens.count; i++) {
        const rt_listen_t *l = &t->listens[t->global->listens.first + i];
        if (l->kind == RT_LISTEN_HTTPS)
            return l->sa.port == 443 ? 0 : l->sa.port;
    }
    return 0;
}

void return_https_redirect(request_t *r)
{
    size_t hn = host_name_len(r->host);
    if (hn == 0) {
        http_error(r, 400, NULL); /* no host to redirect to */
        return;
    }
    unsigned port = https_port(&r->table->t);
    size_t cap = 8 + hn + 6 + r->target.n + r->path_raw.n + r->query.n + 2; /* the longest form, so it fits */
    str_buf_t to = str_buf_fixed(arena_alloc(&r->arena, cap), cap);
    STR_APPEND_LIT(&to, "https://");
    str_append(&to, r->host.p, hn);
    if (port) {
        STR_APPEND_LIT(&to, ":");
        str_append_u64(&to, port);
    }
    if (r->form == H1_FORM_ABSOLUTE) {
        str_append(&to, r->path_raw.p, r->path_raw.n);
        if (r->query.p) {
            STR_APPEND_LIT(&to, "?");
            str_append(&to, r->query.p, r->query.n);
        }
    } else {
        str_append(&to, r->target.p, r->target.n);
    }
    http_redirect(r, 301, to.p, to.len);
}

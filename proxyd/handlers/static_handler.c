/*
 * static_handler.c - static routes (see static_handler.h).
 */
#include "handlers/static_handler.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/log.h"
#include "../common/str.h"
#include "handlers/static.h"

/* Per table: each route's root directory as an O_PATH fd, or -1. */
static int *roots(const tref_t *t) { return t->mod[MOD_STATIC]; }

static int static_table_init(tref_t *tr, const module_load_t *ld, char *err, size_t errlen)
{
    const rt_table_t *t = &tr->t;
    int *fd = malloc((t->nroutes + 1) * sizeof(int));
    (void)ld;
    if (fd == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (uint32_t i = 0; i < t->nroutes; i++)
        fd[i] = t->routes[i].action == RT_ACT_STATIC
                    ? open(rt_cstr(t, t->routes[i].target), O_PATH | O_DIRECTORY | O_CLOEXEC)
                    : -1;
    tr->mod[MOD_STATIC] = fd;
    return 0;
}

static void static_table_free(tref_t *tr)
{
    int *fd = roots(tr);
    for (uint32_t i = 0; fd && i < tr->t.nroutes; i++)
        if (fd[i] >= 0)
            close(fd[i]);
    free(fd);
    tr->mod[MOD_STATIC] = NULL;
}

const module_t static_module = {.name = "static", .table_init = static_table_init, .table_free = static_table_free};

static void answer_status(request_t *r, const static_result_t *sr)
{
    http_resp_init(r, sr->status);
    if (sr->status == 416)
        http_resp_add_str(r, "Content-Range", arena_strdup(&r->arena, sr->content_range));
    if (sr->status == 405)
        HTTP_RESP_LIT(r, "Allow", STATIC_ALLOW);
    http_send_status_body(r);
}

static void answer_file(request_t *r, const rt_route_t *rt, const static_result_t *sr)
{
    http_resp_init(r, sr->status);
    http_resp_add_str(r, "Last-Modified", arena_strdup(&r->arena, sr->last_modified));
    http_resp_add_str(r, "ETag", arena_strdup(&r->arena, sr->etag));
    HTTP_RESP_LIT(r, "Accept-Ranges", "bytes");
    if (rt->expires_s) {
        str_buf_t v = str_buf_fixed(arena_alloc_raw(&r->arena, 32), 32);
        STR_APPEND_LIT(&v, "max-age=");
        str_append_u64(&v, rt->expires_s);
        http_resp_add(r, "Cache-Control", 13, v.p, v.len);
    }
    if (sr->status != 304) {
        http_resp_add_str(r, "Content-Type", sr->content_type);
        if (sr->status == 206)
            http_resp_add_str(r, "Content-Range", arena_strdup(&r->arena, sr->content_range));
        r->resp.length = (int64_t)sr->length;
        r->resp.body = r->head ? HTTP_BODY_NONE : HTTP_BODY_LENGTH;
    }
    http_send_head(r);
    if (sr->status != 304 && !r->head)
        http_send_file(r, sr->fd, sr->offset, sr->length);
    else if (sr->fd >= 0)
        close(sr->fd);
    http_send_end(r);
}

static void static_start(request_t *r)
{
    const rt_table_t *t = &r->table->t;
    const rt_route_t *rt = &t->routes[r->route];
    size_t skip = (rt->flags & RT_RF_STRIP_PREFIX) && rt->match == RT_MATCH_PREFIX ? rt->path.len : 0;
    if (skip && rt_cstr(t, rt->path)[skip - 1] == '/')
        skip--; /* keep the leading slash of the remainder */
    static_req_t sq = {
        .path = r->path,
        .strip = skip,
        .index = rt->extra.len ? rt_cstr(t, rt->extra) : NULL,
        .method = (h1_method_t)r->method_id,
        .headers = r->headers,
        .nheaders = r->nheaders,
        .expires_s = rt->expires_s,
    };
    int root = roots(r->table)[r->route];
    if (root < 0) {
        log_err("site %s: static root %s cannot be opened", rt_cstr(t, t->sites[r->site].name), rt_cstr(t, rt->target));
        http_error(r, 404, NULL);
        return;
    }
    static_result_t sr;
    if (static_serve(root, &sq, &sr) < 0) {
        log_err("static %.*s: %s", (int)r->path.n, r->path.p, strerror(errno));
        http_error(r, 500, NULL);
        return;
    }
    if (sr.status == 301) {
        char *loc = arena_alloc(&r->arena, r->path.n + 2);
        memcpy(loc, r->path.p, r->path.n);
        loc[r->path.n] = '/';
        http_redirect(r, 301, loc, r->path.n + 1);
        return;
    }
    if (sr.status != 200 && sr.status != 206 && sr.status != 304) {
        answer_status(r, &sr);
        return;
    }
    answer_file(r, rt, &sr);
}

const http_handler_t static_handler = {"static", static_start};

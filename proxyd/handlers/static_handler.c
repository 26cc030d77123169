/*
 * static_handler.c - static routes (see static_handler.h).
 *
 * The body goes as a file segment (sendfile, or staged through the TLS
 * layer by the connection), unless a body filter changes the bytes
 * (compression, r->body_filtered): then it is read in pieces of what the
 * filters take, driven by on_drain, one 16 KiB buffer on the stack.
 *
 * A site that compresses serves FILE.br, FILE.zst or FILE.gz in place of
 * FILE when the client accepts that coding, the site has it on, and the
 * copy is not older than FILE (docs/compression.md); never for a request
 * with Range, which is answered from FILE itself.
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
#include "filters/compress.h"
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

/* A body a filter changes: the file read piece by piece (r->ctx[MODULE_CTX_STATIC]). */
typedef struct {
    int fd;
    uint64_t off, left;
} static_body_t;

#define READ_PIECE 16384

static void body_close(request_t *r)
{
    static_body_t *b = r->ctx[MODULE_CTX_STATIC];
    if (b->fd >= 0)
        close(b->fd);
    b->fd = -1;
    r->on_drain = NULL;
    r->on_abort = NULL;
}

/* Read and send until the file ends or the client is behind (on_drain
 * calls again).  The filters may take nothing while they hand on what they
 * hold, a session's worth at a time: each pass sends bytes or flushes. */
static void body_pump(request_t *r)
{
    static_body_t *b = r->ctx[MODULE_CTX_STATIC];
    char buf[READ_PIECE];
    for (;;) {
        size_t space = http_send_space(r);
        if (space == 0) {
            uint64_t before = r->conn->bytes_out;
            int pending = r->sess->flush(r);
            if (pending != 0)
                return; /* on_drain resumes, or the connection is gone */
            if (r->conn->bytes_out == before)
                return; /* nothing to write and the filters take nothing: never, but no spin */
            continue;
        }
        size_t k = space < sizeof(buf) ? space : sizeof(buf);
        if (k > b->left)
            k = (size_t)b->left;
        ssize_t n = pread(b->fd, buf, k, (off_t)b->off);
        if (n <= 0) {
            log_err("static file read failed: %s", n == 0 ? "file shrank while sending" : strerror(errno));
            body_close(r);
            r->sess->abort(r, CLOSE_FILE_ERROR);
            return;
        }
        b->off += (uint64_t)n;
        b->left -= (uint64_t)n;
        http_send_data(r, buf, (size_t)n);
        if (b->left == 0) {
            body_close(r);
            http_send_end(r);
            return;
        }
    }
}

void static_send_body(request_t *r, int fd, uint64_t off, uint64_t len)
{
    if (!r->body_filtered || len == 0) {
        http_send_file(r, fd, off, len);
        http_send_end(r);
        return;
    }
    static_body_t *b = arena_alloc(&r->arena, sizeof(*b));
    *b = (static_body_t){fd, off, len};
    r->ctx[MODULE_CTX_STATIC] = b;
    r->on_drain = body_pump;
    r->on_abort = body_close;
    body_pump(r);
}

static void answer_file(request_t *r, const rt_route_t *rt, const static_result_t *sr, const enum coding *variants)
{
    http_resp_init(r, sr->status);
    http_resp_add_str(r, "Last-Modified", arena_strdup(&r->arena, sr->last_modified));
    http_resp_add_str(r, "ETag", arena_strdup(&r->arena, sr->etag));
    if (sr->variant >= 0) {
        http_resp_add_str(r, "Content-Encoding", coding_name(variants[sr->variant]));
        compress_vary(r);
    } else {
        HTTP_RESP_LIT(r, "Accept-Ranges", "bytes");
    }
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
    if (sr->status != 304 && !r->head) {
        static_send_body(r, sr->fd, sr->offset, sr->length);
        return;
    }
    if (sr->fd >= 0)
        close(sr->fd);
    http_send_end(r);
}

/* The precompressed copies to look for, best first (static.h): the site's
 * codings the client takes, none for a request with Range.  Returns how
 * many; suffixes[i] is the file suffix of codings[i]. */
static size_t variants_for(const request_t *r, const rt_site_t *s, enum coding *codings, const char **suffixes)
{
    unsigned offered = coding_site_offered(s);
    size_t at = 0, n = 0;
    if (offered == 0 || http_req_field(r, "Range", 5, &at))
        return 0;
    coding_accept_t a;
    compress_accept(r, &a);
    for (enum coding c; n < CODING_COUNT && (c = coding_choose(&a, offered)) != CODING_IDENTITY; n++) {
        codings[n] = c;
        suffixes[n] = coding_suffix(c);
        offered &= ~CODING_BIT(c);
    }
    return n;
}

static void static_start(request_t *r)
{
    const rt_table_t *t = &r->table->t;
    const rt_route_t *rt = &t->routes[r->route];
    size_t skip = (rt->flags & RT_RF_STRIP_PREFIX) && rt->match == RT_MATCH_PREFIX ? rt->path.len : 0;
    if (skip && rt_cstr(t, rt->path)[skip - 1] == '/')
        skip--; /* keep the leading slash of the remainder */
    enum coding codings[CODING_COUNT];
    const char *suffixes[CODING_COUNT];
    size_t nvariants = variants_for(r, &t->sites[r->site], codings, suffixes);
    static_req_t sq = {
        .variants = suffixes,
        .nvariants = nvariants,
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
    answer_file(r, rt, &sr, codings);
}

const http_handler_t static_handler = {"static", static_start};

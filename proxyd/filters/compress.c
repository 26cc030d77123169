/*
 * compress.c - response compression (see compress.h).
 *
 * The body filter codes what it is given straight from the caller's bytes
 * into `out` (an iobuf) and hands out to the session as far as the session
 * takes it.  When out is full and the session too, further output goes to
 * `spill` (a growing buffer) instead of being refused: a compressor may
 * emit a whole block at once (zstd 128 KiB), and the caller's bytes must
 * all be consumed in the call.  While anything is held, the space filter
 * answers 0, so the producer waits for the drain (HTTP_BODY_RESUME), which
 * hands the rest on first.
 *
 * Each coding is a coder_t: start (take a context for the response), run
 * (one call of the library's streaming function) and release.  A flush or
 * finish runs to its end within one filter call (spill takes what does not
 * fit), so no library ever sees an operation change half-way.
 */
#include "filters/compress.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <brotli/encode.h>
#include <zlib.h>
#include <zstd.h>

#include "../common/log.h"
#include "../common/str.h"

#define TAKE          IOBUF_SIZE /* input taken per call when nothing is held */
#define MIN_ROOM      64         /* less room than this in out: hand it on or spill */
#define SPILL_STEP    IOBUF_SIZE
#define POOL_MAX      8  /* idle zlib and zstd contexts a worker keeps */
#define BROTLI_WINDOW 20 /* 1 MiB: brotli's default 4 MiB costs memory per response for little gain */

enum op { OP_PROCESS, OP_FLUSH, OP_FINISH };

typedef struct compress_ctx compress_ctx_t;

typedef struct {
    /* A context for a response of the site (length: Content-Length, -1 unknown). */
    int (*start)(compress_ctx_t *cx, const rt_site_t *s, int64_t length);
    /* One call of the streaming function: *in_n bytes offered, *out_n room;
     * on return, consumed and made.  1 when op is complete (for OP_PROCESS:
     * the input taken), 0 when not yet, -1 on an error. */
    int (*run)(compress_ctx_t *cx, const char *in, size_t *in_n, char *out, size_t *out_n, enum op op);
    void (*release)(compress_ctx_t *cx);
} coder_t;

struct compress_ctx {
    const coder_t *coder;
    void *state;      /* the library's context; NULL once released */
    iobuf_t *out;     /* output the session has not taken (NULL when none) */
    str_buf_t spill;  /* output after out, while out is full */
    size_t spill_off; /* bytes of spill taken */
    bool to_spill;    /* where the last out_room pointed */
    bool dirty;       /* input since the last flush */
    bool ending;      /* finished: the rest of the output, then the end */
    bool broken;      /* the library failed: input is dropped until the stream can be cut */
};

static http_header_filter_t next_header;
static http_body_filter_t next_body;
static http_space_filter_t next_space;

static compress_ctx_t *ctx_of(const request_t *r)
{
    return r->ctx[MODULE_CTX_COMPRESS];
}

/* ---- gzip (zlib) ------------------------------------------------------------------- */

typedef struct {
    z_stream z;
    int level;
} gz_t;

static gz_t *gz_pool[POOL_MAX];
static unsigned ngz_pool;

static void gz_free(gz_t *g)
{
    deflateEnd(&g->z);
    free(g);
}

static int gz_start(compress_ctx_t *cx, const rt_site_t *s, int64_t length)
{
    int level = s->gzip_level;
    gz_t *g = ngz_pool ? gz_pool[--ngz_pool] : NULL;
    (void)length;
    if (g && (deflateReset(&g->z) != Z_OK ||
              (g->level != level && deflateParams(&g->z, level, Z_DEFAULT_STRATEGY) != Z_OK))) {
        gz_free(g);
        g = NULL;
    }
    if (g == NULL) {
        if ((g = calloc(1, sizeof(*g))) == NULL)
            return -1;
        /* windowBits 15 + 16: a gzip wrapper (RFC 1952), not zlib's */
        if (deflateInit2(&g->z, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
            free(g);
            return -1;
        }
    }
    g->level = level;
    cx->state = g;
    return 0;
}

static int gz_run(compress_ctx_t *cx, const char *in, size_t *in_n, char *out, size_t *out_n, enum op op)
{
    z_stream *z = &((gz_t *)cx->state)->z;
    z->next_in = (Bytef *)(uintptr_t)in;
    z->avail_in = (uInt)*in_n;
    z->next_out = (Bytef *)out;
    z->avail_out = (uInt)*out_n;
    int rc = deflate(z, op == OP_FINISH ? Z_FINISH : op == OP_FLUSH ? Z_SYNC_FLUSH : Z_NO_FLUSH);
    if (rc == Z_STREAM_ERROR)
        return -1;
    *in_n -= z->avail_in;
    *out_n -= z->avail_out;
    if (op == OP_FINISH)
        return rc == Z_STREAM_END;
    /* A flush is complete when it left room unused: nothing more to write. */
    return z->avail_in == 0 && (op == OP_PROCESS || z->avail_out != 0);
}

static void gz_release(compress_ctx_t *cx)
{
    if (ngz_pool < POOL_MAX)
        gz_pool[ngz_pool++] = cx->state;
    else
        gz_free(cx->state);
}

/* ---- br (brotli) ------------------------------------------------------------------- */

static int br_start(compress_ctx_t *cx, const rt_site_t *s, int64_t length)
{
    BrotliEncoderState *b = BrotliEncoderCreateInstance(NULL, NULL, NULL);
    if (b == NULL)
        return -1;
    BrotliEncoderSetParameter(b, BROTLI_PARAM_QUALITY, (int)rt_site_brotli_level(s));
    BrotliEncoderSetParameter(b, BROTLI_PARAM_LGWIN, BROTLI_WINDOW);
    if (length >= 0)
        BrotliEncoderSetParameter(b, BROTLI_PARAM_SIZE_HINT, length > (1 << 30) ? 1u << 30 : (uint32_t)length);
    cx->state = b;
    return 0;
}

static int br_run(compress_ctx_t *cx, const char *in, size_t *in_n, char *out, size_t *out_n, enum op op)
{
    BrotliEncoderState *b = cx->state;
    size_t avail_in = *in_n, avail_out = *out_n;
    const uint8_t *next_in = (const uint8_t *)in;
    uint8_t *next_out = (uint8_t *)out;
    BrotliEncoderOperation o = op == OP_FINISH  ? BROTLI_OPERATION_FINISH
                               : op == OP_FLUSH ? BROTLI_OPERATION_FLUSH
                                                : BROTLI_OPERATION_PROCESS;
    if (!BrotliEncoderCompressStream(b, o, &avail_in, &next_in, &avail_out, &next_out, NULL))
        return -1;
    *in_n -= avail_in;
    *out_n -= avail_out;
    if (op == OP_FINISH)
        return BrotliEncoderIsFinished(b) ? 1 : 0;
    return avail_in == 0 && (op == OP_PROCESS || !BrotliEncoderHasMoreOutput(b));
}

static void br_release(compress_ctx_t *cx)
{
    BrotliEncoderDestroyInstance(cx->state);
}

/* ---- zstd -------------------------------------------------------------------------- */

static ZSTD_CCtx *zs_pool[POOL_MAX];
static unsigned nzs_pool;

static int zs_start(compress_ctx_t *cx, const rt_site_t *s, int64_t length)
{
    ZSTD_CCtx *z = nzs_pool ? zs_pool[--nzs_pool] : ZSTD_createCCtx();
    if (z == NULL)
        return -1;
    /* The level's parameters, adapted to a known length (a small body gets
     * small tables); the window stays within RFC 9659's 8 MiB at every
     * level we accept (1-19). */
    if (ZSTD_isError(ZSTD_CCtx_reset(z, ZSTD_reset_session_and_parameters)) ||
        ZSTD_isError(ZSTD_CCtx_setParameter(z, ZSTD_c_compressionLevel, (int)rt_site_zstd_level(s))) ||
        (length >= 0 && ZSTD_isError(ZSTD_CCtx_setPledgedSrcSize(z, (unsigned long long)length)))) {
        ZSTD_freeCCtx(z);
        return -1;
    }
    cx->state = z;
    return 0;
}

static int zs_run(compress_ctx_t *cx, const char *in, size_t *in_n, char *out, size_t *out_n, enum op op)
{
    ZSTD_inBuffer ib = {in, *in_n, 0};
    ZSTD_outBuffer ob = {out, *out_n, 0};
    size_t left = ZSTD_compressStream2(cx->state, &ob, &ib,
                                       op == OP_FINISH  ? ZSTD_e_end
                                       : op == OP_FLUSH ? ZSTD_e_flush
                                                        : ZSTD_e_continue);
    if (ZSTD_isError(left))
        return -1;
    *in_n = ib.pos;
    *out_n = ob.pos;
    return ib.pos == ib.size && (op == OP_PROCESS || left == 0);
}

static void zs_release(compress_ctx_t *cx)
{
    if (nzs_pool < POOL_MAX)
        zs_pool[nzs_pool++] = cx->state;
    else
        ZSTD_freeCCtx(cx->state);
}

static const coder_t coders[CODING_COUNT] = {
    [CODING_GZIP] = {gz_start, gz_run, gz_release},
    [CODING_ZSTD] = {zs_start, zs_run, zs_release},
    [CODING_BR] = {br_start, br_run, br_release},
};

/* ---- the response's context ----------------------------------------------------------- */

static void ctx_release(request_t *r)
{
    compress_ctx_t *cx = ctx_of(r);
    if (cx == NULL)
        return;
    if (cx->state)
        cx->coder->release(cx);
    cx->state = NULL;
    iobuf_put(cx->out);
    cx->out = NULL;
    str_buf_free(&cx->spill);
    r->ctx[MODULE_CTX_COMPRESS] = NULL;
    r->body_filtered = false;
}

static size_t held(const compress_ctx_t *cx)
{
    return iobuf_len(cx->out) + cx->spill.len - cx->spill_off;
}

/* Hand the session as much of what cx holds as it takes now (out first,
 * then spill: that is their order). */
static void push_some(request_t *r, compress_ctx_t *cx)
{
    for (;;) {
        bool from_out = iobuf_len(cx->out) > 0;
        size_t n = from_out ? iobuf_len(cx->out) : cx->spill.len - cx->spill_off, space;
        if (n == 0 || (space = next_space(r)) == 0)
            return;
        const char *p = from_out ? iobuf_rd(cx->out) : cx->spill.p + cx->spill_off;
        size_t k = n < space ? n : space;
        next_body(r, p, k, 0);
        if (from_out) {
            iobuf_consume(cx->out, k);
        } else if ((cx->spill_off += k) == cx->spill.len) {
            str_buf_free(&cx->spill); /* rare and large: not kept */
            cx->spill_off = 0;
        }
    }
}

/* push_some, and when arm is set and bytes are left, flush the session so
 * that its drain calls back (after LAST or RESUME nobody else flushes).
 * 0 all handed on, 1 some held, -1 the request went away in the flush. */
static int push(request_t *r, compress_ctx_t *cx, bool arm)
{
    for (size_t last = SIZE_MAX;;) {
        push_some(r, cx);
        size_t left = held(cx);
        if (left == 0) {
            iobuf_put(cx->out); /* an idle stream (SSE) holds no buffer */
            cx->out = NULL;
            return 0;
        }
        /* left == last: the session wrote all it had, then took nothing:
         * never happens, but must not spin */
        if (!arm || left == last)
            return 1;
        last = left;
        int rc = r->sess->flush(r);
        if (rc != 0)
            return rc < 0 ? -1 : 1;
    }
}

/* Where the coder writes next: the rest of out, or spill when out is full
 * and the session does not take it.  -1 out of buffers. */
static int out_room(request_t *r, compress_ctx_t *cx, char **dst, size_t *room)
{
    if (cx->spill.len == 0) {
        if (cx->out == NULL && (cx->out = iobuf_get()) == NULL)
            return -1;
        if (iobuf_space(cx->out) < MIN_ROOM) {
            push_some(r, cx);
            iobuf_compact(cx->out);
        }
        if (iobuf_space(cx->out) >= MIN_ROOM) {
            *dst = iobuf_wr(cx->out);
            *room = iobuf_space(cx->out);
            cx->to_spill = false;
            return 0;
        }
    }
    str_reserve(&cx->spill, SPILL_STEP); /* a growing buffer: aborts rather than fail */
    *dst = cx->spill.p + cx->spill.len;
    *room = cx->spill.cap - cx->spill.len;
    cx->to_spill = true;
    return 0;
}

/* Code n bytes (all of them) with op, to its end. */
static int code(request_t *r, compress_ctx_t *cx, const char *p, size_t n, enum op op)
{
    for (unsigned stuck = 0;;) {
        char *dst;
        size_t room, in_n = n, out_n;
        if (out_room(r, cx, &dst, &room) < 0)
            return -1;
        out_n = room;
        int rc = cx->coder->run(cx, p, &in_n, dst, &out_n, op);
        if (rc < 0)
            return -1;
        if (cx->to_spill)
            cx->spill.len += out_n;
        else
            cx->out->end += (uint32_t)out_n;
        if (in_n) { /* p is NULL for a flush or finish without bytes */
            p += in_n;
            n -= in_n;
        }
        if (rc == 1 && n == 0)
            break;
        stuck = in_n || out_n ? 0 : stuck + 1;
        if (stuck > 2)
            return -1; /* no progress with room to write: a library that will not go on */
    }
    cx->dirty = op == OP_PROCESS;
    return 0;
}

/* ---- the filters ----------------------------------------------------------------------- */

static const char *site_name(const request_t *r)
{
    return rt_cstr(&r->table->t, r->table->t.sites[r->site].name);
}

/* The library failed (out of memory; a body shorter than its Content-Length
 * at the finish).  The stream is cut where a filter may end the request (at
 * LAST or RESUME: nobody touches the request after those); until then the
 * producer's bytes are dropped, so it neither stalls nor spins. */
static void broken(request_t *r, compress_ctx_t *cx, unsigned flags)
{
    if (!cx->broken) {
        log_err("site %s: %s compression failed: the response is cut", site_name(r),
                coding_name((enum coding)(cx->coder - coders)));
        cx->broken = true;
    }
    if (!(flags & (HTTP_BODY_LAST | HTTP_BODY_RESUME)))
        return;
    ctx_release(r);
    http_error(r, 500, NULL); /* a 500 if nothing has left yet, else the stream is cut */
}

static void compress_body(request_t *r, const char *p, size_t n, unsigned flags)
{
    compress_ctx_t *cx = ctx_of(r);
    if (cx == NULL) {
        next_body(r, p, n, flags);
        return;
    }
    if (cx->broken) {
        broken(r, cx, flags);
        return;
    }
    if (!cx->ending) {
        enum op op = (flags & HTTP_BODY_LAST)                        ? OP_FINISH
                     : (flags & HTTP_BODY_FLUSH) && (cx->dirty || n) ? OP_FLUSH
                                                                     : OP_PROCESS;
        if ((n || op != OP_PROCESS) && code(r, cx, p, n, op) < 0) {
            broken(r, cx, flags);
            return;
        }
        if (op == OP_FINISH) {
            cx->ending = true;
            cx->coder->release(cx); /* done with it: back to the pool before the last bytes leave */
            cx->state = NULL;
        }
    }
    int rc = push(r, cx, cx->ending || (flags & HTTP_BODY_RESUME));
    if (rc != 0)
        return; /* held (the drain resumes it), or the request is gone */
    if (cx->ending) {
        ctx_release(r);
        next_body(r, NULL, 0, HTTP_BODY_LAST);
    } else if (flags & (HTTP_BODY_FLUSH | HTTP_BODY_RESUME)) {
        next_body(r, NULL, 0, flags & (HTTP_BODY_FLUSH | HTTP_BODY_RESUME));
    }
}

static size_t compress_space(request_t *r)
{
    compress_ctx_t *cx = ctx_of(r);
    if (cx == NULL)
        return next_space(r);
    if (cx->broken)
        return TAKE; /* dropped: see broken() */
    if (cx->ending)
        return 0;
    if (held(cx)) {
        push_some(r, cx);
        if (held(cx))
            return 0;
    }
    return TAKE;
}

/* ---- the decision ----------------------------------------------------------------------- */

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* Does a list field value (RFC 9110 §5.6.1) have the element tok, by its
 * name before any "=" or ";" (Cache-Control directives, Vary names)? */
static bool list_has(slice_t v, const char *tok, size_t tn)
{
    const char *p = v.p, *end = v.p + v.n;
    while (p < end) {
        while (p < end && (*p == ',' || is_ows(*p)))
            p++;
        const char *s = p;
        while (p < end && *p != ',' && *p != '=' && *p != ';' && !is_ows(*p))
            p++;
        if ((size_t)(p - s) == tn && strncasecmp(s, tok, tn) == 0)
            return true;
        for (bool quoted = false; p < end && (quoted || *p != ','); p++) /* the rest of the element */
            if (*p == '"')
                quoted = !quoted;
            else if (*p == '\\' && quoted && p + 1 < end)
                p++;
    }
    return false;
}

/* Any response field named name with the element tok. */
static bool resp_list_has(const request_t *r, const char *name, size_t nlen, const char *tok, size_t tn)
{
    const http_resp_t *s = &r->resp;
    if (!(s->name_lens & HTTP_NAME_LEN_BIT(nlen)))
        return false;
    for (uint32_t i = 0; i < s->nfields; i++)
        if (s->fields[i].name.n == nlen && strncasecmp(s->fields[i].name.p, name, nlen) == 0 &&
            list_has(s->fields[i].value, tok, tn))
            return true;
    return false;
}

/* Is the media type of Content-Type value ct (parameters aside) one the
 * site lists?  Entries are lower case "type/subtype" or "type/" and '*'. */
static bool type_listed(const rt_table_t *t, const rt_site_t *s, slice_t ct)
{
    const char *p = ct.p;
    size_t n = 0;
    while (n < ct.n && ct.p[n] != ';')
        n++;
    while (n && is_ows(p[n - 1]))
        n--;
    while (n && is_ows(*p))
        p++, n--;
    const char *slash = memchr(p, '/', n);
    if (slash == NULL)
        return false;
    size_t type_len = (size_t)(slash - p) + 1; /* with the slash */
    for (uint32_t i = 0; i < s->compress_types.count; i++) {
        rt_str_t e = t->strlist[s->compress_types.first + i];
        const char *es = rt_cstr(t, e);
        bool any = e.len >= 2 && es[e.len - 1] == '*';
        if (any ? e.len - 1 == type_len && strncasecmp(p, es, type_len) == 0 : e.len == n && strncasecmp(p, es, n) == 0)
            return true;
    }
    return false;
}

/* A response of the site that compression applies to (compress.h), the
 * client's Accept-Encoding aside. */
static bool eligible(request_t *r, const rt_site_t *s)
{
    const http_resp_t *p = &r->resp;
    if (p->status < 200 || p->status == 204 || p->status == 206 || p->status == 304 || p->body == HTTP_BODY_TUNNEL)
        return false;
    if (p->length >= 0 && (uint64_t)p->length < s->compress_min_length)
        return false;
    if (http_resp_field(r, "Content-Encoding", 16) || resp_list_has(r, "Cache-Control", 13, "no-transform", 12))
        return false;
    const h1_header_t *ct = http_resp_field(r, "Content-Type", 12);
    return ct && type_listed(&r->table->t, s, ct->value);
}

void compress_vary(request_t *r)
{
    http_resp_t *s = &r->resp;
    h1_header_t *first = NULL;
    for (uint32_t i = 0; (s->name_lens & HTTP_NAME_LEN_BIT(4)) && i < s->nfields; i++) {
        h1_header_t *f = &s->fields[i];
        if (f->name.n != 4 || strncasecmp(f->name.p, "Vary", 4) != 0)
            continue;
        if (list_has(f->value, "accept-encoding", 15) || list_has(f->value, "*", 1))
            return;
        first = first ? first : f;
    }
    if (first == NULL || first->value.n == 0) {
        if (first)
            first->value = SLICE_LIT("Accept-Encoding");
        else
            HTTP_RESP_LIT(r, "Vary", "Accept-Encoding");
        return;
    }
    static const char more[] = ", Accept-Encoding";
    char *v = arena_alloc_raw(&r->arena, first->value.n + sizeof(more) - 1);
    memcpy(v, first->value.p, first->value.n);
    memcpy(v + first->value.n, more, sizeof(more) - 1);
    first->value = (slice_t){v, first->value.n + sizeof(more) - 1};
}

void compress_accept(const request_t *r, coding_accept_t *a)
{
    size_t at = 0;
    const h1_header_t *h;
    coding_accept_init(a);
    while ((h = http_req_field(r, "Accept-Encoding", 15, &at)) != NULL)
        coding_accept_parse(a, h->value.p, h->value.n);
}

/* A compressed body is another representation: its validator is weak
 * (RFC 9110 §8.8.1), "x" -> W/"x". */
static void weaken_etag(request_t *r)
{
    h1_header_t *e = http_resp_field(r, "ETag", 4);
    if (e == NULL || e->value.n == 0 || e->value.p[0] != '"')
        return;
    char *v = arena_alloc_raw(&r->arena, e->value.n + 2);
    v[0] = 'W';
    v[1] = '/';
    memcpy(v + 2, e->value.p, e->value.n);
    e->value = (slice_t){v, e->value.n + 2};
}

static void start(request_t *r, const rt_site_t *s, enum coding c, bool had_ctx)
{
    compress_ctx_t *cx = arena_alloc(&r->arena, sizeof(*cx));
    cx->coder = &coders[c];
    if (cx->coder->start(cx, s, r->resp.length) < 0) {
        log_err("site %s: no %s context (out of memory): the response is sent uncompressed", site_name(r),
                coding_name(c));
        return;
    }
    if (!had_ctx) /* a retracted response's context had it added already */
        request_cleanup_add(r, ctx_release);
    r->ctx[MODULE_CTX_COMPRESS] = cx;
    r->body_filtered = true;
    http_resp_remove(r, "Content-Length", 14);
    http_resp_remove(r, "Accept-Ranges", 13); /* ranges of the compressed bytes are not served */
    http_resp_add_str(r, "Content-Encoding", coding_name(c));
    weaken_etag(r);
    r->resp.length = -1;
    r->resp.body = HTTP_BODY_STREAM;
}

static void compress_header(request_t *r)
{
    bool had_ctx = ctx_of(r) != NULL;
    if (had_ctx)
        ctx_release(r); /* an error answer replaces a retracted response */
    const rt_site_t *s = r->site == RT_NONE ? NULL : &r->table->t.sites[r->site];
    unsigned offered = s ? coding_site_offered(s) : 0;
    if (offered && eligible(r, s)) {
        compress_vary(r);
        if (!r->head && r->resp.body != HTTP_BODY_NONE) {
            coding_accept_t a;
            compress_accept(r, &a);
            enum coding c = coding_choose(&a, offered);
            if (c != CODING_IDENTITY)
                start(r, s, c, had_ctx);
        }
    }
    next_header(r);
}

/* ---- the module ---------------------------------------------------------------------------- */

static int compress_init(void)
{
    next_header = http_top_header_filter;
    http_top_header_filter = compress_header;
    next_body = http_top_body_filter;
    http_top_body_filter = compress_body;
    next_space = http_top_space_filter;
    http_top_space_filter = compress_space;
    return 0;
}

static void compress_exit(void)
{
    while (ngz_pool)
        gz_free(gz_pool[--ngz_pool]);
    while (nzs_pool)
        ZSTD_freeCCtx(zs_pool[--nzs_pool]);
}

const module_t compress_filter_module = {
    .name = "compress", .worker_init = compress_init, .worker_exit = compress_exit};

/*
 * cache.c - the request side of the cache (see cache.h, docs/cache.md):
 *
 *   cache phase   key -> index: HIT (served from the entry file here), or
 *                 the fill lock (MISS / EXPIRED: the proxy goes on), or a
 *                 wait for another request's fill (BUSY), or the expired
 *                 entry at once (UPDATING) while a background request
 *                 refreshes it;
 *   proxy hooks   conditional fields for an expired entry; a 304 refreshes
 *                 it (REVALIDATED); a failure serves it (STALE); the
 *                 origin's head decides whether and how long to store;
 *   filter        below compression: the answer's fields and bytes go to a
 *                 temporary file as they pass, renamed into place at the
 *                 end, so a crash never leaves half an entry to be served.
 */
#include "cache/cache.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../common/coding.h"
#include "../common/log.h"
#include "filters/compress.h"
#include "handlers/proxy.h"
#include "handlers/static.h"
#include "handlers/static_handler.h"
#include "http/phases.h"
#include "http/request.h"

#define WAIT_STEP_MS 20          /* how often a request waiting for another's fill looks again */
#define FIELDS_MAX (64u << 10)   /* stored response fields */

enum cache_mode { CM_NONE, CM_FETCH, CM_BYPASS };

typedef struct {
    ev_timer_t timer;        /* first: the wait's callback gets this */
    request_t *r;
    cache_zone_t *z;
    uint32_t inc;
    uint8_t mode, label;
    bool locked;             /* this request holds the fill lock of (lh1, lh2) */
    bool have_stale;         /* an expired entry of (h1, h2) exists */
    bool revalidating;       /* the upstream got its validators */
    bool vary_resolved;      /* (h1, h2) is a variant found through a Vary marker */
    bool storing, refresh, counted;
    uint64_t h1, h2, lh1, lh2, ph1, ph2;
    uint64_t wait_until_ms;
    uint64_t ttl_ms;         /* from the origin's head; 0: not stored */
    str_buf_t key;           /* the primary key's text (arena) */
    char *vary;              /* the origin's Vary names, lower case, comma-separated */
    size_t vary_len;
    int fd;                  /* the temporary file being written */
    char *tmp;               /* its name (arena; a fill only) */
    uint64_t body_len;
    uint32_t head_len;
    cache_file_head_t head;
} cache_ctx_t;

static cache_ctx_t *ctx_of(const request_t *r) { return r->ctx[MODULE_CTX_CACHE]; }
static const rt_policy_t *policy_of(const request_t *r) { return &r->table->t.policies[r->table->t.routes[r->route].policy]; }

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void hash128(const char *p, size_t n, uint64_t *h1, uint64_t *h2)
{
    *h1 = hash_mix64(hash_fnv64(HASH_FNV64_INIT, p, n, false));
    *h2 = hash_mix64(hash_fnv64(0x84222325cbf29ce4ull, p, n, false) ^ n);
}

/* ---- the key ---------------------------------------------------------------------------- */

static const h1_header_t *req_field(const request_t *r, const char *name, size_t n)
{
    size_t at = 0;
    return http_req_field(r, name, n, &at);
}

/* All the request's values of a field, comma-joined, into b. */
static void field_values(const request_t *r, const char *name, size_t n, str_buf_t *b)
{
    size_t at = 0;
    bool first = true;
    for (const h1_header_t *h; (h = http_req_field(r, name, n, &at)) != NULL; first = false) {
        if (!first)
            STR_APPEND_LIT(b, ",");
        str_append(b, h->value.p, h->value.n);
    }
}

static void build_key(request_t *r, const rt_policy_t *p, str_buf_t *b)
{
    const rt_table_t *t = &r->table->t;
    str_append_str(b, r->conn->tls ? "https://" : "http://");
    size_t at = b->len;
    str_append(b, r->host.p, r->host.n);
    if (!b->overflow)
        for (size_t i = at; i < b->len; i++)
            if (b->p[i] >= 'A' && b->p[i] <= 'Z')
                b->p[i] = (char)(b->p[i] + 32);
    str_append(b, r->path.p, r->path.n);
    if (r->query.p) {
        STR_APPEND_LIT(b, "?");
        str_append(b, r->query.p, r->query.n);
    }
    const rt_site_t *s = &t->sites[r->site];
    unsigned offered = coding_site_offered(s);
    enum coding c = CODING_IDENTITY;
    if (offered) {
        coding_accept_t a;
        compress_accept(r, &a);
        c = coding_choose(&a, offered);
    }
    STR_APPEND_LIT(b, "\ncoding:");
    str_append_str(b, coding_name(c));
    size_t kn = sizeof(RT_CACHE_KEY_HEADER) - 1;
    for (uint32_t i = 0; i < p->cache_bypass.count; i++) {
        rt_str_t e = t->strlist[p->cache_bypass.first + i];
        const char *v = rt_cstr(t, e);
        if (e.len <= kn || strncmp(v, RT_CACHE_KEY_HEADER, kn) != 0)
            continue;
        STR_APPEND_LIT(b, "\nh:");
        str_append(b, v + kn, e.len - kn);
        STR_APPEND_LIT(b, "=");
        field_values(r, v + kn, e.len - kn, b);
    }
}

/* The variant key: the primary key and the request's values of the Vary names. */
static void variant_key(request_t *r, const cache_ctx_t *cx, const char *names, size_t n, str_buf_t *b)
{
    str_append(b, cx->key.p, cx->key.len);
    STR_APPEND_LIT(b, "\nvary:");
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j < n && names[j] != ',')
            j++;
        STR_APPEND_LIT(b, "\n");
        str_append(b, names + i, j - i);
        STR_APPEND_LIT(b, "=");
        field_values(r, names + i, j - i, b);
        i = j + 1;
    }
}

/* ---- bypass_on ------------------------------------------------------------------------------ */

static bool set_value(const char *p, size_t n) { return n > 0 && !(n == 1 && p[0] == '0'); }

/* name=value in a list separated by sep (Cookie: "; ", query: "&"). */
static bool list_value(const char *p, size_t n, char sep, const char *name, size_t nn)
{
    for (size_t i = 0; i < n;) {
        while (i < n && (p[i] == ' ' || p[i] == sep))
            i++;
        size_t j = i;
        while (j < n && p[j] != sep)
            j++;
        if (j - i > nn && memcmp(p + i, name, nn) == 0 && p[i + nn] == '=')
            return set_value(p + i + nn + 1, j - i - nn - 1);
        i = j;
    }
    return false;
}

static bool bypassed(const request_t *r, const rt_policy_t *p)
{
    const rt_table_t *t = &r->table->t;
    for (uint32_t i = 0; i < p->cache_bypass.count; i++) {
        rt_str_t e = t->strlist[p->cache_bypass.first + i];
        const char *v = rt_cstr(t, e);
        const h1_header_t *h;
        if (strcmp(v, "authorization") == 0) {
            if ((h = req_field(r, "Authorization", 13)) && h->value.n)
                return true;
        } else if (strncmp(v, "cookie:", 7) == 0) {
            size_t at = 0;
            while ((h = http_req_field(r, "Cookie", 6, &at)) != NULL)
                if (list_value(h->value.p, h->value.n, ';', v + 7, e.len - 7))
                    return true;
        } else if (strncmp(v, "header:", 7) == 0) {
            if ((h = req_field(r, v + 7, e.len - 7)) && set_value(h->value.p, h->value.n))
                return true;
        } else if (strncmp(v, "query:", 6) == 0) {
            if (r->query.p && list_value(r->query.p, r->query.n, '&', v + 6, e.len - 6))
                return true;
        }
    }
    return false;
}

/* ---- entries: reading and serving ------------------------------------------------------------ */

#define ENTRY_FIRST_READ 8192 /* a typical entry's head and text, and a small body, in one pread */

typedef struct {
    int fd;
    cache_file_head_t h;
    char *text;              /* key, site, path, vary, fields (arena) */
    const char *body;        /* the whole body when the first read took it (in buf), else NULL */
    char buf[ENTRY_FIRST_READ];
} entry_t;

/* Open (h1, h2)'s file and check it is the entry of `key`. */
static int entry_open(request_t *r, cache_ctx_t *cx, uint64_t h1, uint64_t h2, const char *key, size_t klen, entry_t *e)
{
    char path[400];
    cache_file_path(cx->z, h1, h2, path, sizeof(path));
    e->fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (e->fd < 0)
        return -1;
    struct stat st;
    cache_file_head_t *h = &e->h;
    char *buf = e->buf;
    e->body = NULL;
    ssize_t got = pread(e->fd, buf, ENTRY_FIRST_READ, 0);
    if (got >= (ssize_t)sizeof(*h))
        memcpy(h, buf, sizeof(*h));
    if (got >= (ssize_t)sizeof(*h) && memcmp(h->magic, CACHE_FILE_MAGIC, 8) == 0 && h->h1 == h1 && h->h2 == h2 &&
        h->head_len >= sizeof(*h) && h->head_len <= sizeof(*h) + FIELDS_MAX + 65536 &&
        (uint64_t)h->key_len + h->site_len + h->path_len + h->vary_len + h->fields_len <= h->head_len - sizeof(*h) &&
        h->key_len == klen && fstat(e->fd, &st) == 0 && (uint64_t)st.st_size == h->head_len + h->body_len) {
        size_t n = h->head_len - sizeof(*h);
        e->text = arena_alloc_raw(&r->arena, n + 1);
        if (h->head_len <= (size_t)got)
            memcpy(e->text, buf + sizeof(*h), n);
        else if (pread(e->fd, e->text, n, sizeof(*h)) != (ssize_t)n)
            e->text = NULL;
        if (e->text && memcmp(e->text, key, klen) == 0) {
            if ((uint64_t)h->head_len + h->body_len <= (uint64_t)got)
                e->body = buf + h->head_len;
            return 0;
        }
    }
    close(e->fd);
    e->fd = -1;
    return -1;
}

static slice_t entry_vary(const entry_t *e)
{
    return (slice_t){e->text + e->h.key_len + e->h.site_len + e->h.path_len, e->h.vary_len};
}

/* ---- small entries kept in the worker's memory ---------------------------------------------- */

/* A hit on a small entry (head and body in one first read) re-reads
 * nothing: the worker keeps its bytes, valid while the index says the same
 * expiry and size (a new fill, a revalidation, a purge, an eviction change
 * or remove them). Direct-mapped by hash, at most MEM_SLOTS entries of at
 * most ENTRY_FIRST_READ bytes per worker. */
#define MEM_SLOTS 1024

typedef struct {
    uint64_t h1, h2, expires_ms, size;
    uint32_t inc;
    cache_file_head_t h;
    char *data; /* the text, then the body */
} mem_entry_t;

static mem_entry_t *mem;

static mem_entry_t *mem_slot(uint64_t h1) { return mem ? &mem[h1 & (MEM_SLOTS - 1)] : NULL; }

static void mem_drop(uint64_t h1, uint64_t h2)
{
    mem_entry_t *m = mem_slot(h1);
    if (m && m->data && m->h1 == h1 && m->h2 == h2) {
        free(m->data);
        m->data = NULL;
    }
}

static void mem_keep(const cache_ctx_t *cx, const entry_t *e, const cache_entry_t *ix)
{
    if (e->body == NULL || (mem == NULL && (mem = calloc(MEM_SLOTS, sizeof(*mem))) == NULL))
        return;
    mem_entry_t *m = mem_slot(e->h.h1);
    size_t n = e->h.head_len - sizeof(e->h) + e->h.body_len;
    char *d = malloc(n);
    if (d == NULL)
        return;
    memcpy(d, e->buf + sizeof(e->h), n);
    free(m->data);
    m->data = d;
    m->h1 = e->h.h1;
    m->h2 = e->h.h2;
    m->expires_ms = ix->expires_ms;
    m->size = ix->size;
    m->inc = cx->inc;
    m->h = e->h;
}

/* The entry from the worker's memory, as entry_open gives it (no fd). */
static bool mem_get(request_t *r, const cache_ctx_t *cx, const cache_entry_t *ix, const char *key, size_t klen,
                    entry_t *e)
{
    mem_entry_t *m = mem_slot(cx->h1);
    if (m == NULL || m->data == NULL || m->h1 != cx->h1 || m->h2 != cx->h2 || m->expires_ms != ix->expires_ms ||
        m->size != ix->size || m->inc != cx->inc || m->h.key_len != klen || memcmp(m->data, key, klen) != 0)
        return false;
    size_t tn = m->h.head_len - sizeof(m->h);
    e->fd = -1;
    e->h = m->h;
    e->text = arena_alloc_raw(&r->arena, tn + 1);
    memcpy(e->text, m->data, tn);
    e->body = m->data + tn;
    return true;
}

/* The stored fields into r->resp (slices into the entry's text). */
static void entry_fields(request_t *r, const entry_t *e)
{
    const char *p = e->text + e->h.key_len + e->h.site_len + e->h.path_len + e->h.vary_len;
    const char *end = p + e->h.fields_len;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (eol == NULL)
            break;
        const char *colon = memchr(p, ':', (size_t)(eol - p));
        if (colon) {
            const char *v = colon + 1;
            while (v < eol && *v == ' ')
                v++;
            const char *ve = eol;
            if (ve > v && ve[-1] == '\r')
                ve--;
            http_resp_add(r, p, (size_t)(colon - p), v, (size_t)(ve - v));
        }
        p = eol + 1;
    }
}

static const h1_header_t *resp_field(request_t *r, const char *name, size_t n) { return http_resp_field(r, name, n); }

static void entry_close(entry_t *e)
{
    if (e->fd >= 0)
        close(e->fd);
    e->fd = -1;
}

/* A body held in memory, sent as the session takes it. */
typedef struct {
    const char *p;
    size_t left;
} mem_body_t;

static void mem_pump(request_t *r)
{
    mem_body_t *m = r->ctx[MODULE_CTX_STATIC];
    while (m->left) {
        size_t k = http_send_space(r);
        if (k == 0) {
            if (r->sess->flush(r) != 0)
                return; /* on_drain resumes, or the connection is gone */
            if ((k = http_send_space(r)) == 0)
                return;
        }
        k = k < m->left ? k : m->left;
        http_send_data(r, m->p, k);
        m->p += k;
        m->left -= k;
    }
    r->on_drain = NULL;
    http_send_end(r);
}

static void body_from_memory(request_t *r, const char *p, size_t n)
{
    if (http_send_space(r) >= n) {
        http_send_data(r, p, n);
        http_send_end(r);
        return;
    }
    mem_body_t *m = arena_alloc(&r->arena, sizeof(*m));
    char *copy = arena_alloc_raw(&r->arena, n);
    memcpy(copy, p, n);
    *m = (mem_body_t){copy, n};
    r->ctx[MODULE_CTX_STATIC] = m;
    r->on_drain = mem_pump;
    mem_pump(r);
}

/* Answer from the entry: its fields, Age, and the client's conditionals and
 * Range decided as for a static file.  Takes e->fd. */
static void entry_send(request_t *r, cache_ctx_t *cx, entry_t *e, enum cache_count label)
{
    cx->mode = CM_NONE;
    cx->label = (uint8_t)label;
    http_resp_init(r, e->h.status);
    entry_fields(r, e);
    static_req_t sq = {.method = (h1_method_t)r->method_id, .headers = r->headers, .nheaders = r->nheaders};
    static_result_t so;
    memset(&so, 0, sizeof(so));
    so.status = e->h.status;
    so.size = so.length = e->h.body_len;
    const h1_header_t *etag = resp_field(r, "ETag", 4), *lm = resp_field(r, "Last-Modified", 13);
    if (etag && etag->value.n < sizeof(so.etag))
        memcpy(so.etag, etag->value.p, etag->value.n);
    if (lm == NULL || static_parse_http_date(lm->value.p, lm->value.n, &so.mtime) < 0)
        so.mtime = (time_t)(e->h.stored_ms / 1000);
    if (e->h.status == 200)
        static_conditions(&sq, &so);
    uint64_t off = 0, len = e->h.body_len;
    if (so.status == 304 || so.status == 412) {
        if (so.status == 412) {
            http_resp_init(r, 412);
            entry_close(e);
            http_send_status_body(r);
            return;
        }
        r->resp.status = 304;
        http_resp_remove(r, "Content-Type", 12);
        r->resp.body = HTTP_BODY_NONE;
        r->resp.length = -1;
        len = 0;
    } else if (so.status == 416) {
        http_resp_init(r, 416);
        http_resp_add_str(r, "Content-Range", arena_strdup(&r->arena, so.content_range));
        entry_close(e);
        http_send_status_body(r);
        return;
    } else {
        if (so.status == 206) {
            r->resp.status = 206;
            off = so.offset;
            len = so.length;
            http_resp_add_str(r, "Content-Range", arena_strdup(&r->arena, so.content_range));
        }
        r->resp.length = (int64_t)len;
        r->resp.body = r->head ? HTTP_BODY_NONE : HTTP_BODY_LENGTH;
    }
    char *age = arena_alloc_raw(&r->arena, 24);
    uint64_t now = wall_ms();
    size_t an = fmt_u64(age, now > e->h.stored_ms ? (now - e->h.stored_ms) / 1000 : 0);
    http_resp_add(r, "Age", 3, age, an);
    http_send_head(r);
    if (r->head || len == 0 || so.status == 304) {
        entry_close(e);
        http_send_end(r);
        return;
    }
    if (e->body) { /* read already: it goes out with the head, one write */
        entry_close(e);
        body_from_memory(r, e->body + off, len);
        return;
    }
    static_send_body(r, e->fd, e->h.head_len + off, len);
}

/* ---- the background refresh (use_stale: updating) ---------------------------------------------- */

/* A request without a client: its answer goes only to the cache. */
static void bg_head(request_t *r) { (void)r; }
static size_t bg_space(request_t *r)
{
    (void)r;
    return 1u << 20;
}
static void bg_data(request_t *r, const char *p, size_t n) { (void)r, (void)p, (void)n; }
static void bg_file(request_t *r, int fd, uint64_t off, uint64_t len) { (void)r, (void)off, (void)len, close(fd); }
static void bg_done(request_t *r)
{
    conn_t *c = r->conn;
    request_finish(r);
    free(c);
}
static void bg_end(request_t *r)
{
    r->response_done = true;
    bg_done(r);
}
static int bg_flush(request_t *r)
{
    (void)r;
    return 0;
}
static void bg_interim(request_t *r, int status) { (void)r, (void)status; }
static int bg_body(request_t *r, size_t max, slice_t *data)
{
    (void)r, (void)max, (void)data;
    return 2;
}
static void bg_abort(request_t *r, conn_close_reason_t why)
{
    (void)why;
    bg_done(r);
}
static bool bg_retract(request_t *r)
{
    (void)r;
    return true;
}

static const http_session_ops_t bg_ops = {"background", bg_head, bg_space, bg_data, bg_file, bg_end,
                                          bg_flush,     bg_interim, bg_body, bg_abort, bg_retract};

/* What a background GET does not copy from the request that started it. */
static bool not_refreshed(const h1_header_t *x)
{
    return x->hop || x->id == H1_HDR_HOST || x->id == H1_HDR_CONTENT_LENGTH || x->id == H1_HDR_TRANSFER_ENCODING ||
           x->id == H1_HDR_EXPECT || http_field_conditional(x);
}

static void cache_cleanup(request_t *r);

static h1_request_t *bg_parse; /* the parse scratch of background heads */

/* A GET of r's target with r's fields, run through the phases to the
 * proxy; it inherits the fill lock cx holds. */
static bool start_refresh(request_t *r, cache_ctx_t *cx)
{
    if (bg_parse == NULL && (bg_parse = calloc(1, sizeof(*bg_parse))) == NULL)
        return false;
    str_buf_t h = {0};
    STR_APPEND_LIT(&h, "GET ");
    str_append(&h, r->target.p, r->target.n);
    STR_APPEND_LIT(&h, " HTTP/1.1\r\n");
    if (r->host.n) {
        STR_APPEND_LIT(&h, "Host: ");
        str_append(&h, r->host.p, r->host.n);
        STR_APPEND_LIT(&h, "\r\n");
    }
    for (size_t i = 0; i < r->nheaders; i++) {
        const h1_header_t *x = &r->headers[i];
        if (not_refreshed(x))
            continue;
        str_append(&h, x->name.p, x->name.n);
        STR_APPEND_LIT(&h, ": ");
        str_append(&h, x->value.p, x->value.n);
        STR_APPEND_LIT(&h, "\r\n");
    }
    STR_APPEND_LIT(&h, "\r\n");
    h1_limits_t lim = {h.len + 1, h.len + 1, H1_MAX_HEADERS};
    conn_t *c = calloc(1, sizeof(*c));
    request_t *b = NULL;
    bool ok = c && h.p && h1_parse_request(h.p, h.len, bg_parse, &lim) == (int)h.len;
    if (ok) {
        c->io.fd = -1;
        c->tls = r->conn->tls;
        c->peer_family = r->conn->peer_family;
        memcpy(c->peer_ip, r->conn->peer_ip, sizeof(c->peer_ip));
        c->peer_port = r->conn->peer_port;
        c->local_port = r->conn->local_port;
        ok = (b = request_new(c, &bg_ops)) != NULL && request_set_head(b, bg_parse, h.len) == 0;
    }
    str_buf_free(&h);
    if (!ok) {
        if (b)
            bg_done(b);
        else
            free(c);
        return false;
    }
    b->keep_alive = false;
    cache_ctx_t *bx = arena_alloc(&b->arena, sizeof(*bx));
    *bx = *cx;
    bx->r = b;
    bx->refresh = true;
    bx->counted = true;
    bx->fd = -1;
    bx->key = (str_buf_t){0};
    str_append(&bx->key, cx->key.p, cx->key.len); /* heap: freed by the cleanup */
    b->ctx[MODULE_CTX_CACHE] = bx;
    request_cleanup_add(b, cache_cleanup); /* whatever way it ends, even before the cache phase */
    cx->locked = false; /* the lock is the refresh's now */
    request_run(b);
    return true;
}

/* ---- the phase ----------------------------------------------------------------------------------- */

static void cache_cleanup(request_t *r)
{
    cache_ctx_t *cx = ctx_of(r);
    if (cx == NULL)
        return;
    if (ev_timer_armed(&cx->timer))
        ev_timer_stop(W->loop, &cx->timer);
    if (cx->storing) {
        close(cx->fd);
        unlink(cx->tmp);
        cx->storing = false;
    }
    if (cx->locked)
        cache_unlock(cx->z, cx->inc, cx->lh1, cx->lh2);
    cx->locked = false;
    if (cx->refresh)
        str_buf_free(&cx->key);
}

static void wait_abort(request_t *r)
{
    cache_ctx_t *cx = ctx_of(r);
    ev_timer_stop(W->loop, &cx->timer);
    r->on_abort = NULL;
}

static int decide(request_t *r, cache_ctx_t *cx);

static void wait_done(ev_loop_t *loop, ev_timer_t *t)
{
    (void)loop;
    cache_ctx_t *cx = (cache_ctx_t *)t;
    request_t *r = cx->r;
    r->on_abort = NULL;
    if (decide(r, cx) == HTTP_PHASE_NEXT)
        request_run(r);
}

/* Follow a fresh Vary marker to the variant of this request. */
static int follow_marker(request_t *r, cache_ctx_t *cx)
{
    entry_t e;
    if (entry_open(r, cx, cx->h1, cx->h2, cx->key.p, cx->key.len, &e) < 0)
        return -1;
    close(e.fd);
    slice_t names = entry_vary(&e);
    str_buf_t vk = {0};
    variant_key(r, cx, names.p, names.n, &vk);
    cx->ph1 = cx->h1;
    cx->ph2 = cx->h2;
    hash128(vk.p, vk.len, &cx->h1, &cx->h2);
    str_buf_free(&vk);
    cx->vary = arena_strndup(&r->arena, names.p, names.n);
    cx->vary_len = names.n;
    cx->vary_resolved = true;
    return 0;
}

/* The key text of (h1, h2): the primary key, or the variant's. */
static str_buf_t entry_key(request_t *r, cache_ctx_t *cx)
{
    if (!cx->vary_resolved)
        return cx->key;
    str_buf_t vk = {0};
    variant_key(r, cx, cx->vary, cx->vary_len, &vk);
    char *a = arena_alloc_raw(&r->arena, vk.len + 1);
    memcpy(a, vk.p, vk.len);
    str_buf_t out = {.p = a, .len = vk.len, .cap = vk.len + 1, .fixed = true};
    str_buf_free(&vk);
    return out;
}

static int decide(request_t *r, cache_ctx_t *cx)
{
    const rt_policy_t *p = policy_of(r);
    uint32_t lock_ms = rt_cache_lock_ms(p->rate_flags);
    for (int attempt = 0; attempt < 3; attempt++) {
        uint64_t now = wall_ms();
        cache_entry_t e;
        enum cache_begin b = cache_begin(cx->z, cx->h1, cx->h2, now, lock_ms, &e);
        if (e.expires_ms && (e.flags & CACHE_F_VARY)) {
            /* A Vary marker, fresh or not (its names hold): on to this request's variant. */
            if (b == CACHE_LOCKED)
                cache_unlock(cx->z, cx->inc, cx->h1, cx->h2);
            if (cx->vary_resolved || follow_marker(r, cx) < 0)
                cache_forget(cx->z, cx->h1, cx->h2);
            continue;
        }
        if (b != CACHE_FRESH)
            mem_drop(cx->h1, cx->h2);
        if (b == CACHE_FRESH) {
            entry_t en;
            str_buf_t k = entry_key(r, cx);
            if (!mem_get(r, cx, &e, k.p, k.len, &en)) {
                if (entry_open(r, cx, cx->h1, cx->h2, k.p, k.len, &en) < 0 || (en.h.flags & CACHE_F_VARY)) {
                    entry_close(&en);
                    cache_forget(cx->z, cx->h1, cx->h2); /* purged, or not ours: a miss */
                    continue;
                }
                mem_keep(cx, &en, &e);
            }
            entry_send(r, cx, &en, CC_HIT);
            return HTTP_PHASE_DONE;
        }
        bool stale = e.expires_ms && !(e.flags & CACHE_F_VARY);
        if (b == CACHE_LOCKED) {
            cx->locked = true;
            cx->lh1 = cx->h1;
            cx->lh2 = cx->h2;
            cx->have_stale = stale;
            cx->mode = CM_FETCH;
            cx->label = stale ? CC_EXPIRED : CC_MISS;
            if (stale && (p->cache_use_stale & RT_ON_UPDATING) && !cx->refresh) {
                entry_t en;
                str_buf_t k = entry_key(r, cx);
                if (entry_open(r, cx, cx->h1, cx->h2, k.p, k.len, &en) == 0) {
                    if (!start_refresh(r, cx)) {
                        cache_unlock(cx->z, cx->inc, cx->lh1, cx->lh2);
                        cx->locked = false;
                    }
                    entry_send(r, cx, &en, CC_UPDATING);
                    return HTTP_PHASE_DONE;
                }
                cx->have_stale = false;
                cx->label = CC_MISS;
            }
            return HTTP_PHASE_NEXT;
        }
        if (b == CACHE_BUSY) {
            if (stale && (p->cache_use_stale & RT_ON_UPDATING)) {
                entry_t en;
                str_buf_t k = entry_key(r, cx);
                if (entry_open(r, cx, cx->h1, cx->h2, k.p, k.len, &en) == 0) {
                    entry_send(r, cx, &en, CC_UPDATING);
                    return HTTP_PHASE_DONE;
                }
            }
            if (cx->wait_until_ms == 0)
                cx->wait_until_ms = now + lock_ms;
            if (now < cx->wait_until_ms) {
                r->on_abort = wait_abort;
                ev_timer_start(W->loop, &cx->timer, WAIT_STEP_MS, wait_done);
                return HTTP_PHASE_SUSPEND;
            }
        }
        break; /* the lock timed out, or no room: the origin answers, nothing is stored */
    }
    cx->mode = CM_FETCH;
    cx->label = CC_MISS;
    return HTTP_PHASE_NEXT;
}

int cache_phase(request_t *r)
{
    const rt_policy_t *p = policy_of(r);
    if (p->cache_zone == RT_NONE || (r->handler != &proxy_handler && r->handler != &fastcgi_handler))
        return HTTP_PHASE_NEXT;
    cache_ctx_t *cx = ctx_of(r);
    if (cx && cx->refresh) /* a background refresh: it holds the lock already */
        return HTTP_PHASE_NEXT;
    cx = arena_alloc(&r->arena, sizeof(*cx));
    cx->r = r;
    cx->fd = -1;
    r->ctx[MODULE_CTX_CACHE] = cx;
    request_cleanup_add(r, cache_cleanup);
    cx->z = cache_zone_of(r->table, p->cache_zone);
    if ((r->method_id != H1_METHOD_GET && r->method_id != H1_METHOD_HEAD) || bypassed(r, p)) {
        cx->mode = CM_BYPASS;
        cx->label = CC_BYPASS;
        return HTTP_PHASE_NEXT;
    }
    cx->mode = CM_FETCH;
    cx->label = CC_MISS;
    if (cx->z == NULL)
        return HTTP_PHASE_NEXT;
    cx->inc = cache_zone_incarnation(cx->z);
    char kb[4096];
    str_buf_t k = str_buf_fixed(kb, sizeof(kb));
    build_key(r, p, &k);
    if (k.overflow) { /* a key beyond 4 KiB: not cached */
        cx->z = NULL;
        return HTTP_PHASE_NEXT;
    }
    char *kp = arena_alloc_raw(&r->arena, k.len + 1);
    memcpy(kp, k.p, k.len);
    cx->key = (str_buf_t){.p = kp, .len = k.len, .cap = k.len + 1, .fixed = true};
    hash128(cx->key.p, cx->key.len, &cx->h1, &cx->h2);
    return decide(r, cx);
}

/* ---- the proxy's questions ---------------------------------------------------------------------------- */

bool cache_upstream_fields(request_t *r, str_buf_t *b)
{
    cache_ctx_t *cx = ctx_of(r);
    if (cx == NULL || cx->mode != CM_FETCH || cx->z == NULL)
        return false;
    if (cx->have_stale && !r->head) {
        entry_t e;
        str_buf_t k = entry_key(r, cx);
        if (entry_open(r, cx, cx->h1, cx->h2, k.p, k.len, &e) == 0) {
            close(e.fd);
            http_resp_t saved = r->resp; /* the fields are parsed into r->resp: nothing is sent yet */
            http_resp_init(r, 200);
            entry_fields(r, &e);
            const h1_header_t *etag = resp_field(r, "ETag", 4), *lm = resp_field(r, "Last-Modified", 13);
            if (etag) {
                STR_APPEND_LIT(b, "If-None-Match: ");
                str_append(b, etag->value.p, etag->value.n);
                STR_APPEND_LIT(b, "\r\n");
            }
            if (lm) {
                STR_APPEND_LIT(b, "If-Modified-Since: ");
                str_append(b, lm->value.p, lm->value.n);
                STR_APPEND_LIT(b, "\r\n");
            }
            cx->revalidating = etag || lm;
            r->resp = saved;
        } else {
            cx->have_stale = false;
        }
    }
    return cx->locked || cx->revalidating;
}

/* The response fields that decide storing: how long, 0 for not at all. */
static uint64_t ttl_of(request_t *r, cache_ctx_t *cx, int status, const h1_response_t *res)
{
    const rt_table_t *t = &r->table->t;
    const rt_policy_t *p = policy_of(r);
    int64_t valid = -1;
    for (uint32_t i = 0; i < p->cache_valid.count; i++) {
        const rt_status_ttl_t *v = &t->ttls[p->cache_valid.first + i];
        if (v->status == (uint32_t)status)
            valid = v->ttl_s;
        else if (v->status == 0 && valid < 0)
            valid = v->ttl_s;
    }
    if (valid < 0)
        return 0;
    int64_t maxage = -1, smaxage = -1, expires = -1, date = -1;
    cx->vary = NULL; /* the answer's own Vary says what it varies on */
    cx->vary_len = 0;
    bool shared_ok = false; /* public, s-maxage or must-revalidate: storable for an authorized request */
    for (size_t i = 0; i < res->nheaders; i++) {
        const h1_header_t *h = &res->headers[i];
#define NAME_IS(lit) (h->name.n == sizeof(lit) - 1 && strncasecmp(h->name.p, lit, sizeof(lit) - 1) == 0)
        if (NAME_IS("Set-Cookie"))
            return 0;
        if (NAME_IS("Cache-Control")) {
            const char *v = h->value.p, *end = v + h->value.n;
            while (v < end) {
                while (v < end && (*v == ' ' || *v == ','))
                    v++;
                const char *d = v;
                while (v < end && *v != ',')
                    v++;
                size_t n = (size_t)(v - d);
                while (n && d[n - 1] == ' ')
                    n--;
#define DIR_IS(lit) (n >= sizeof(lit) - 1 && strncasecmp(d, lit, sizeof(lit) - 1) == 0)
                if ((DIR_IS("no-store") && n == 8) || (DIR_IS("private") && (n == 7 || d[7] == '=')) ||
                    (DIR_IS("no-cache") && (n == 8 || d[8] == '=')))
                    return 0;
                if ((DIR_IS("public") && n == 6) || (DIR_IS("must-revalidate") && n == 15))
                    shared_ok = true;
                if (DIR_IS("s-maxage=")) {
                    smaxage = strtol(d + 9, NULL, 10);
                    shared_ok = true;
                } else if (DIR_IS("max-age=")) {
                    maxage = strtol(d + 8, NULL, 10);
                }
#undef DIR_IS
            }
        } else if (NAME_IS("Expires")) {
            time_t x;
            expires = static_parse_http_date(h->value.p, h->value.n, &x) == 0 ? (int64_t)x : 0;
        } else if (NAME_IS("Date")) {
            time_t x;
            if (static_parse_http_date(h->value.p, h->value.n, &x) == 0)
                date = (int64_t)x;
        } else if (NAME_IS("Vary")) {
            for (size_t k = 0; k < h->value.n; k++)
                if (h->value.p[k] == '*')
                    return 0;
            char *v = arena_alloc_raw(&r->arena, cx->vary_len + h->value.n + 2);
            size_t n = 0;
            if (cx->vary_len) {
                memcpy(v, cx->vary, cx->vary_len);
                n = cx->vary_len;
            }
            for (size_t k = 0; k < h->value.n; k++) {
                char c = h->value.p[k];
                if (c == ' ' || c == '\t')
                    continue;
                if (c == ',' && (n == 0 || v[n - 1] == ','))
                    continue;
                if (n && k == 0 && v[n - 1] != ',')
                    v[n++] = ',';
                v[n++] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
            }
            while (n && v[n - 1] == ',')
                n--;
            cx->vary = v;
            cx->vary_len = n;
        }
#undef NAME_IS
    }
    /* RFC 9111 §3.5: a shared cache stores the answer to a request with
     * Authorization only when the origin says it may. */
    if (!shared_ok && req_field(r, "Authorization", 13))
        return 0;
    if (smaxage >= 0)
        return (uint64_t)smaxage * 1000;
    if (maxage >= 0)
        return (uint64_t)maxage * 1000;
    if (expires >= 0) { /* counted from the origin's Date when it sent one (its clock, not ours) */
        int64_t left = expires - (date >= 0 ? date : (int64_t)(wall_ms() / 1000));
        return left > 0 ? (uint64_t)left * 1000 : 0;
    }
    return (uint64_t)valid * 1000;
}

/* The upstream is let go of, nothing having reached the client. */
static void let_go(request_t *r)
{
    if (r->on_abort) {
        r->on_abort(r);
        r->on_abort = NULL;
    }
    r->on_drain = NULL;
    r->on_body = NULL;
}

/* The entry answers instead of the upstream (a background refresh just ends). */
static void answer_instead(request_t *r, cache_ctx_t *cx, entry_t *e, enum cache_count label)
{
    let_go(r);
    if (cx->locked)
        cache_unlock(cx->z, cx->inc, cx->lh1, cx->lh2);
    cx->locked = false;
    if (cx->refresh) {
        entry_close(e);
        bg_done(r);
        return;
    }
    entry_send(r, cx, e, label);
}

static bool stale_instead(request_t *r, cache_ctx_t *cx, unsigned cond)
{
    entry_t e;
    if (!cx->have_stale || !(policy_of(r)->cache_use_stale & cond))
        return false;
    str_buf_t k = entry_key(r, cx);
    if (entry_open(r, cx, cx->h1, cx->h2, k.p, k.len, &e) < 0)
        return false;
    answer_instead(r, cx, &e, CC_STALE);
    return true;
}

bool cache_upstream_answer(request_t *r, int status, const h1_response_t *res)
{
    cache_ctx_t *cx = ctx_of(r);
    if (cx == NULL || cx->mode != CM_FETCH || cx->z == NULL)
        return false;
    if (res == NULL)
        return stale_instead(r, cx, status == 504 ? RT_ON_TIMEOUT : RT_ON_ERROR);
    if (status == 304 && cx->revalidating) {
        entry_t e;
        str_buf_t k = entry_key(r, cx);
        if (entry_open(r, cx, cx->h1, cx->h2, k.p, k.len, &e) < 0)
            return false;
        uint64_t ttl = ttl_of(r, cx, e.h.status, res);
        uint64_t now = wall_ms();
        e.h.stored_ms = now;
        e.h.expires_ms = now + (ttl ? ttl : 1000);
        char path[400];
        cache_file_path(cx->z, cx->h1, cx->h2, path, sizeof(path));
        int wfd = open(path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
        if (wfd >= 0) {
            if (pwrite(wfd, &e.h, sizeof(e.h), 0) == (ssize_t)sizeof(e.h))
                cache_commit(cx->z, cx->inc, cx->h1, cx->h2, e.h.head_len + e.h.body_len, e.h.expires_ms, e.h.flags);
            close(wfd);
        }
        answer_instead(r, cx, &e, CC_REVALIDATED);
        return true;
    }
    unsigned cond = rt_status_cond(status);
    if (cond && stale_instead(r, cx, cond))
        return true;
    cx->ttl_ms = (r->method_id == H1_METHOD_GET && !r->head) ? ttl_of(r, cx, status, res) : 0;
    return false;
}

/* ---- the store filter ----------------------------------------------------------------------------------- */

static http_header_filter_t next_header;
static http_body_filter_t next_body;

static bool skip_stored(const h1_header_t *f)
{
    static const char *const skip[] = {"server", "date", "content-length", "transfer-encoding", "connection",
                                       "keep-alive", "x-cache-status", "age", "set-cookie"};
    for (size_t i = 0; i < sizeof(skip) / sizeof(skip[0]); i++)
        if (f->name.n == strlen(skip[i]) && strncasecmp(f->name.p, skip[i], f->name.n) == 0)
            return true;
    return false;
}

static bool write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return false;
        c += w;
        n -= (size_t)w;
    }
    return true;
}

static void fill_abort(cache_ctx_t *cx, const char *what, const char *path, int err)
{
    if (what)
        cache_store_failed(cx->z, what, path, err);
    close(cx->fd);
    unlink(cx->tmp);
    cx->storing = false;
    cx->fd = -1;
}

static unsigned tmp_seq;

static void fill_begin(request_t *r, cache_ctx_t *cx)
{
    const rt_table_t *t = &r->table->t;
    uint64_t h1 = cx->h1, h2 = cx->h2;
    str_buf_t key = cx->key;
    if (cx->vary_len) { /* the answer varies: it is the variant's entry, under a marker */
        str_buf_t vk = {0};
        variant_key(r, cx, cx->vary, cx->vary_len, &vk);
        char *a = arena_alloc_raw(&r->arena, vk.len + 1);
        memcpy(a, vk.p, vk.len);
        key = (str_buf_t){.p = a, .len = vk.len, .cap = vk.len + 1, .fixed = true};
        str_buf_free(&vk);
        hash128(key.p, key.len, &h1, &h2);
        if (!cx->vary_resolved) {
            cx->ph1 = cx->h1;
            cx->ph2 = cx->h2;
        }
        cx->vary_resolved = true;
    } else if (cx->vary_resolved) { /* found through a marker, no longer varies: the entry replaces the marker */
        h1 = cx->ph1;
        h2 = cx->ph2;
        cx->vary_resolved = false;
    }
    cx->h1 = h1;
    cx->h2 = h2;
    str_buf_t fields = {0};
    for (uint32_t i = 0; i < r->resp.nfields; i++) {
        const h1_header_t *f = &r->resp.fields[i];
        if (skip_stored(f))
            continue;
        str_append(&fields, f->name.p, f->name.n);
        STR_APPEND_LIT(&fields, ": ");
        str_append(&fields, f->value.p, f->value.n);
        STR_APPEND_LIT(&fields, "\r\n");
    }
    const char *site = rt_cstr(t, t->sites[r->site].name);
    size_t sn = t->sites[r->site].name.len;
    cache_file_head_t *h = &cx->head;
    memset(h, 0, sizeof(*h));
    memcpy(h->magic, CACHE_FILE_MAGIC, 8);
    h->h1 = h1;
    h->h2 = h2;
    h->stored_ms = wall_ms();
    h->expires_ms = h->stored_ms + cx->ttl_ms;
    h->key_len = (uint32_t)key.len;
    h->site_len = (uint32_t)sn;
    h->path_len = (uint32_t)r->path.n;
    h->vary_len = 0;
    h->fields_len = (uint32_t)fields.len;
    h->head_len = (uint32_t)(sizeof(*h) + key.len + sn + r->path.n + fields.len);
    h->status = (uint16_t)r->resp.status;
    if (http_resp_field(r, "ETag", 4) || http_resp_field(r, "Last-Modified", 13))
        h->flags |= CACHE_F_VALIDATORS;
    if (fields.len > FIELDS_MAX || !fields.p) {
        str_buf_free(&fields);
        return;
    }
    size_t tn = strlen(cache_zone_path(cx->z)) + 32;
    cx->tmp = arena_alloc_raw(&r->arena, tn);
    snprintf(cx->tmp, tn, "%s/tmp/%d.%u", cache_zone_path(cx->z), (int)getpid(), ++tmp_seq);
    cx->fd = open(cx->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (cx->fd < 0) {
        cache_store_failed(cx->z, "create", cx->tmp, errno);
        str_buf_free(&fields);
        return;
    }
    cx->storing = true;
    if (!write_all(cx->fd, h, sizeof(*h)) || !write_all(cx->fd, key.p, key.len) || !write_all(cx->fd, site, sn) ||
        !write_all(cx->fd, r->path.p, r->path.n) || !write_all(cx->fd, fields.p, fields.len))
        fill_abort(cx, "write", cx->tmp, errno);
    str_buf_free(&fields);
    cx->body_len = 0;
}

/* The temporary file becomes the entry of (h1, h2). */
static int place(cache_ctx_t *cx, const char *tmp, uint64_t h1, uint64_t h2)
{
    char path[400];
    cache_file_path(cx->z, h1, h2, path, sizeof(path));
    if (rename(tmp, path) == 0)
        return 0;
    if (errno == ENOENT) { /* the first entry of its subdirectory */
        char dir[400];
        snprintf(dir, sizeof(dir), "%s", path);
        *strrchr(dir, '/') = '\0';
        if ((mkdir(dir, 0700) == 0 || errno == EEXIST) && rename(tmp, path) == 0)
            return 0;
    }
    cache_store_failed(cx->z, "rename into", path, errno);
    unlink(tmp);
    return -1;
}

/* A Vary marker at the primary key: the names the answer varies on. */
static void fill_marker(request_t *r, cache_ctx_t *cx)
{
    const rt_table_t *t = &r->table->t;
    char tmp[340];
    snprintf(tmp, sizeof(tmp), "%s/tmp/%d.%u", cache_zone_path(cx->z), (int)getpid(), ++tmp_seq);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return;
    const char *site = rt_cstr(t, t->sites[r->site].name);
    size_t sn = t->sites[r->site].name.len;
    cache_file_head_t h = cx->head;
    h.h1 = cx->ph1;
    h.h2 = cx->ph2;
    h.body_len = 0;
    h.key_len = (uint32_t)cx->key.len;
    h.vary_len = (uint32_t)cx->vary_len;
    h.fields_len = 0;
    h.flags = CACHE_F_VARY;
    h.head_len = (uint32_t)(sizeof(h) + cx->key.len + sn + r->path.n + cx->vary_len);
    bool ok = write_all(fd, &h, sizeof(h)) && write_all(fd, cx->key.p, cx->key.len) && write_all(fd, site, sn) &&
              write_all(fd, r->path.p, r->path.n) && write_all(fd, cx->vary, cx->vary_len);
    close(fd);
    if (ok && place(cx, tmp, cx->ph1, cx->ph2) == 0)
        cache_commit(cx->z, cx->inc, cx->ph1, cx->ph2, h.head_len, h.expires_ms, CACHE_F_VARY);
    else if (!ok)
        unlink(tmp);
}

static void fill_end(request_t *r, cache_ctx_t *cx)
{
    cache_file_head_t *h = &cx->head;
    h->body_len = cx->body_len;
    cx->storing = false;
    if ((r->resp.length >= 0 && (uint64_t)r->resp.length != cx->body_len) ||
        pwrite(cx->fd, h, sizeof(*h), 0) != (ssize_t)sizeof(*h)) {
        fill_abort(cx, r->resp.length >= 0 ? NULL : "write", cx->tmp, errno);
        return;
    }
    close(cx->fd);
    cx->fd = -1;
    if (place(cx, cx->tmp, h->h1, h->h2) < 0)
        return;
    cache_commit(cx->z, cx->inc, h->h1, h->h2, h->head_len + h->body_len, h->expires_ms, h->flags);
    if (cx->vary_len)
        fill_marker(r, cx);
    if (cx->locked && (cx->lh1 != h->h1 || cx->lh2 != h->h2) && (cx->lh1 != cx->ph1 || cx->lh2 != cx->ph2))
        cache_unlock(cx->z, cx->inc, cx->lh1, cx->lh2);
    cx->locked = false; /* committed entries are unlocked */
    cache_store_ok(cx->z);
}

static void cache_header(request_t *r)
{
    cache_ctx_t *cx = ctx_of(r);
    if (cx == NULL) {
        next_header(r);
        return;
    }
    if (cx->mode == CM_FETCH && cx->z && cx->locked && cx->ttl_ms && r->upstream_answered &&
        r->resp.body != HTTP_BODY_TUNNEL && !cx->storing)
        fill_begin(r, cx);
    if (cx->mode == CM_FETCH && cx->locked && !cx->storing) {
        cache_unlock(cx->z, cx->inc, cx->lh1, cx->lh2);
        cx->locked = false;
    }
    if (!cx->refresh) {
        http_resp_remove(r, "X-Cache-Status", 14);
        http_resp_add_str(r, "X-Cache-Status", cache_status_names[cx->label]);
        if (cx->z && !cx->counted)
            cache_count(cx->z, cx->label);
        cx->counted = true;
    }
    next_header(r);
}

static void cache_body(request_t *r, const char *p, size_t n, unsigned flags)
{
    cache_ctx_t *cx = ctx_of(r);
    if (cx && cx->storing) {
        if (n && !write_all(cx->fd, p, n))
            fill_abort(cx, "write", cx->tmp, errno);
        cx->body_len += n;
        if (cx->storing && (flags & HTTP_BODY_LAST))
            fill_end(r, cx);
    }
    next_body(r, p, n, flags);
}

int cache_filter_init(void)
{
    next_header = http_top_header_filter;
    http_top_header_filter = cache_header;
    next_body = http_top_body_filter;
    http_top_body_filter = cache_body;
    return 0;
}

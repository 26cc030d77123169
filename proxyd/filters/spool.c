/*
 * spool.c - response buffering (see spool.h).
 *
 * Held bytes are, in their order: the memory ring (mem[], oldest first),
 * the read buffer (bytes read back from the file, not yet sent), then the
 * file between rd and wr.  Bytes the producer gives go straight to the
 * session while nothing is held and the session takes them; the rest is
 * appended: to memory while the file part is empty and memory has room,
 * else to the file.  The space filter answers what the session takes now
 * plus what the spool can still take (spool_room), so the producer is held
 * back only once buffering_max is spent; RESUME is passed on to the producer
 * whenever the spool has room again.  Whenever bytes are held the filter
 * flushes the session itself, so that its drain (RESUME) calls back.
 */
#include "filters/spool.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/log.h"
#include "http/vars.h"

#define SPOOL_TAKE (4 * IOBUF_SIZE) /* most the space filter offers in one answer */

typedef struct {
    ev_timer_t timer;        /* send timeout while bytes are held */
    request_t *r;
    uint64_t id;             /* r->id when started */
    iobuf_t *mem[SPOOL_MEM_BUFS];
    unsigned mem_head, mem_count;
    iobuf_t *rbuf;           /* bytes read back from the file */
    int fd;                  /* -1: no file yet */
    uint64_t rd, wr;         /* file offsets: [rd, wr) not read back yet */
    uint64_t file_written;   /* bytes this response wrote to its file (buffering_max bounds it) */
    uint64_t max;            /* buffering_max in bytes */
    uint32_t timeout_ms;
    bool ending;             /* LAST came: the rest, then the end */
    bool broken;             /* a file write or read failed: the stream is cut at LAST or RESUME */
    bool no_file;            /* no file could be made for this response */
} spool_t;

static http_header_filter_t next_header;
static http_body_filter_t next_body;
static http_space_filter_t next_space;
static char spool_dir[256] = "/var/tmp";
static unsigned worker_bufs;   /* memory buffers held by every spool of the worker */
static uint64_t worker_disk;   /* bytes in every spool file of the worker */
static uint64_t last_open_error_ms;

static spool_t *ctx_of(const request_t *r) { return r->ctx[MODULE_CTX_SPOOL]; }

static size_t mem_len(const spool_t *sp)
{
    size_t n = 0;
    for (unsigned i = 0; i < sp->mem_count; i++)
        n += iobuf_len(sp->mem[(sp->mem_head + i) % SPOOL_MEM_BUFS]);
    return n;
}

static bool file_pending(const spool_t *sp) { return sp->rd < sp->wr || iobuf_len(sp->rbuf) > 0; }

static uint64_t held(const spool_t *sp) { return mem_len(sp) + iobuf_len(sp->rbuf) + (sp->wr - sp->rd); }

static const char *site_name(const request_t *r)
{
    return r->site == RT_NONE ? "-" : rt_cstr(&r->table->t, r->table->t.sites[r->site].name);
}

/* ---- the file ------------------------------------------------------------------------------ */

/* An anonymous file in spool_dir: O_TMPFILE, else a name unlinked at once. */
static int spool_open(void)
{
    int fd = open(spool_dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0 || (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL))
        return fd;
    static unsigned seq;
    for (int tries = 0; tries < 8; tries++) {
        char name[320];
        snprintf(name, sizeof(name), "%s/proxyd-spool-%d-%u-%u", spool_dir, (int)getpid(), ++seq, (unsigned)rand());
        fd = open(name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
        if (fd >= 0) {
            unlink(name);
            return fd;
        }
        if (errno != EEXIST)
            break;
    }
    return -1;
}

/* The file may take n more bytes (opening it on first use). */
static bool file_ok(const request_t *r, spool_t *sp, size_t n)
{
    if (sp->no_file || sp->file_written + n > sp->max || worker_disk + n > SPOOL_WORKER_DISK)
        return false;
    if (sp->fd >= 0)
        return true;
    if ((sp->fd = spool_open()) >= 0) {
        W->stats->spool_file_responses++;
        return true;
    }
    sp->no_file = true;
    uint64_t now = ev_now(W->loop);
    if (last_open_error_ms == 0 || now - last_open_error_ms > 60000) {
        last_open_error_ms = now;
        log_err("site %s: cannot make a buffering file in %s: %s; the response streams", site_name(r), spool_dir,
                strerror(errno));
    }
    return false;
}

static int file_append(spool_t *sp, const char *p, size_t n)
{
    while (n) {
        ssize_t k = pwrite(sp->fd, p, n, (off_t)sp->wr);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        p += k;
        n -= (size_t)k;
        sp->wr += (uint64_t)k;
        sp->file_written += (uint64_t)k;
        worker_disk += (uint64_t)k;
        W->stats->spool_file_bytes += (uint64_t)k;
    }
    W->stats->spool_disk_now = worker_disk;
    return 0;
}

/* Everything written was read back: the file starts again at 0. */
static void file_rewind(spool_t *sp)
{
    if (sp->fd < 0 || sp->wr == 0 || sp->rd < sp->wr)
        return;
    worker_disk -= sp->wr;
    W->stats->spool_disk_now = worker_disk;
    if (ftruncate(sp->fd, 0) < 0)
        log_warn("buffering file: truncate: %s", strerror(errno));
    sp->rd = sp->wr = 0;
}

/* Refill the read buffer from the file: 0, or -1 on a read error. */
static int file_read(spool_t *sp)
{
    if (sp->rbuf == NULL && (sp->rbuf = iobuf_get()) == NULL)
        return -1;
    size_t want = sp->wr - sp->rd < IOBUF_SIZE ? (size_t)(sp->wr - sp->rd) : IOBUF_SIZE;
    ssize_t k;
    do
        k = pread(sp->fd, sp->rbuf->data, want, (off_t)sp->rd);
    while (k < 0 && errno == EINTR);
    if (k <= 0)
        return -1;
    sp->rbuf->start = 0;
    sp->rbuf->end = (uint32_t)k;
    sp->rd += (uint64_t)k;
    return 0;
}

/* ---- memory ----------------------------------------------------------------------------- */

static iobuf_t *mem_tail(spool_t *sp)
{
    return sp->mem_count ? sp->mem[(sp->mem_head + sp->mem_count - 1) % SPOOL_MEM_BUFS] : NULL;
}

/* Bytes memory can take now (0 while the file part holds bytes: order). */
static size_t mem_room(const spool_t *sp)
{
    if (file_pending(sp))
        return 0;
    iobuf_t *t = sp->mem_count ? sp->mem[(sp->mem_head + sp->mem_count - 1) % SPOOL_MEM_BUFS] : NULL;
    size_t room = t ? iobuf_space(t) : 0;
    unsigned more = SPOOL_MEM_BUFS - sp->mem_count, spare = SPOOL_WORKER_MEM_BUFS - worker_bufs;
    return room + (size_t)(more < spare ? more : spare) * IOBUF_SIZE;
}

/* Copy into memory what fits: the bytes taken. */
static size_t mem_append(spool_t *sp, const char *p, size_t n)
{
    size_t done = 0;
    while (done < n && !file_pending(sp)) {
        iobuf_t *t = mem_tail(sp);
        if (t == NULL || iobuf_space(t) == 0) {
            if (sp->mem_count == SPOOL_MEM_BUFS || worker_bufs >= SPOOL_WORKER_MEM_BUFS || (t = iobuf_get()) == NULL)
                break;
            sp->mem[(sp->mem_head + sp->mem_count++) % SPOOL_MEM_BUFS] = t;
            worker_bufs++;
        }
        size_t k = n - done < iobuf_space(t) ? n - done : iobuf_space(t);
        memcpy(iobuf_wr(t), p + done, k);
        t->end += (uint32_t)k;
        done += k;
    }
    W->stats->spool_mem_now += done;
    return done;
}

static void mem_pop(spool_t *sp)
{
    iobuf_put(sp->mem[sp->mem_head]);
    sp->mem[sp->mem_head] = NULL;
    sp->mem_head = (sp->mem_head + 1) % SPOOL_MEM_BUFS;
    sp->mem_count--;
    worker_bufs--;
}

/* ---- the spool ------------------------------------------------------------------------------- */

static void spool_release(request_t *r)
{
    spool_t *sp = ctx_of(r);
    if (sp == NULL)
        return;
    ev_timer_stop(W->loop, &sp->timer);
    W->stats->spool_mem_now -= mem_len(sp);
    while (sp->mem_count)
        mem_pop(sp);
    iobuf_put(sp->rbuf);
    sp->rbuf = NULL;
    if (sp->fd >= 0) {
        worker_disk -= sp->wr;
        W->stats->spool_disk_now = worker_disk;
        close(sp->fd);
        sp->fd = -1;
    }
    r->ctx[MODULE_CTX_SPOOL] = NULL;
}

/* Bytes the spool can still take (the session's own space aside). */
static size_t spool_room(const request_t *r, spool_t *sp)
{
    size_t room = mem_room(sp);
    if (room < SPOOL_TAKE && file_ok(r, sp, SPOOL_TAKE))
        room = SPOOL_TAKE;
    return room < SPOOL_TAKE ? room : SPOOL_TAKE;
}

/* Hold n bytes (n <= spool_room): 0, or -1 when the file failed. */
static int spool_append(const request_t *r, spool_t *sp, const char *p, size_t n)
{
    size_t k = mem_append(sp, p, n);
    if (k == n)
        return 0;
    if (!file_ok(r, sp, n - k))
        return -1;
    return file_append(sp, p + k, n - k);
}

static void on_stalled(ev_loop_t *loop, ev_timer_t *t);

/* Hand the session what it takes now, oldest first: 0, -1 on a file error. */
static int push_some(request_t *r, spool_t *sp)
{
    for (;;) {
        iobuf_t *b = sp->mem_count ? sp->mem[sp->mem_head] : iobuf_len(sp->rbuf) ? sp->rbuf : NULL;
        if (b == NULL && sp->rd < sp->wr) {
            if (file_read(sp) < 0)
                return -1;
            b = sp->rbuf;
        }
        if (b == NULL) {
            file_rewind(sp);
            return 0;
        }
        size_t space = next_space(r);
        if (space == 0)
            return 0;
        size_t k = iobuf_len(b) < space ? iobuf_len(b) : space;
        next_body(r, iobuf_rd(b), k, 0);
        iobuf_consume(b, k);
        if (b != sp->rbuf) {
            W->stats->spool_mem_now -= k;
            if (iobuf_len(b) == 0)
                mem_pop(sp);
        }
        ev_timer_start(W->loop, &sp->timer, sp->timeout_ms, on_stalled); /* progress: the send timeout starts again */
    }
}

/* push_some, then while bytes are held flush the session so that its drain
 * calls back.  0 nothing held, 1 held, -1 the request went away. */
static int push(request_t *r, spool_t *sp)
{
    for (uint64_t last = UINT64_MAX;;) {
        if (push_some(r, sp) < 0) {
            sp->broken = true;
            return 1;
        }
        uint64_t left = held(sp);
        if (left == 0) {
            ev_timer_stop(W->loop, &sp->timer);
            return 0;
        }
        if (!ev_timer_armed(&sp->timer))
            ev_timer_start(W->loop, &sp->timer, sp->timeout_ms, on_stalled);
        if (left == last)
            return 1; /* the session wrote all it had, then took nothing: must not spin */
        last = left;
        int rc = r->sess->flush(r);
        if (rc != 0)
            return rc < 0 ? -1 : 1;
    }
}

/* The client took nothing for the route's read timeout while bytes were held. */
static void on_stalled(ev_loop_t *loop, ev_timer_t *t)
{
    (void)loop;
    spool_t *sp = (spool_t *)t;
    request_t *r = sp->r;
    if (r->id != sp->id)
        return;
    char peer[VARS_PEER_MAX];
    vars_client(r, peer);
    log_warn("client %s (site %s): send timed out after %ums: the client stopped reading the response (buffered)", peer,
             site_name(r), sp->timeout_ms);
    r->sess->abort(r, CLOSE_SEND_TIMEOUT);
}

/* A file error: the stream is cut where a filter may end the request (at
 * LAST or RESUME); until then the producer's bytes are dropped. */
static void broken(request_t *r, unsigned flags)
{
    if (!(flags & (HTTP_BODY_LAST | HTTP_BODY_RESUME)))
        return;
    log_err("site %s: buffering file failed: %s; the response is cut", site_name(r), strerror(errno));
    spool_release(r);
    http_error(r, 502, NULL);
}

static void spool_body(request_t *r, const char *p, size_t n, unsigned flags)
{
    spool_t *sp = ctx_of(r);
    if (sp == NULL) {
        next_body(r, p, n, flags);
        return;
    }
    if (!sp->broken && n && held(sp) == 0) {
        size_t space = next_space(r), k = n < space ? n : space;
        if (k)
            next_body(r, p, k, 0);
        p += k;
        n -= k;
    }
    if (!sp->broken && n && spool_append(r, sp, p, n) < 0)
        sp->broken = true;
    if (flags & HTTP_BODY_LAST)
        sp->ending = true;
    if (sp->broken) {
        broken(r, flags);
        return;
    }
    int rc = push(r, sp);
    if (rc < 0)
        return;
    if (sp->broken) {
        broken(r, flags);
        return;
    }
    if (sp->ending) {
        if (rc == 0) {
            spool_release(r);
            next_body(r, NULL, 0, HTTP_BODY_LAST);
        }
        return;
    }
    if (flags & HTTP_BODY_FLUSH)
        next_body(r, NULL, 0, HTTP_BODY_FLUSH);
    if ((flags & HTTP_BODY_RESUME) && (rc == 0 || spool_room(r, sp) > 0))
        next_body(r, NULL, 0, HTTP_BODY_RESUME);
}

static size_t spool_space(request_t *r)
{
    spool_t *sp = ctx_of(r);
    if (sp == NULL)
        return next_space(r);
    if (sp->broken)
        return SPOOL_TAKE; /* dropped: see broken() */
    if (sp->ending)
        return 0;
    if (held(sp) && push_some(r, sp) < 0) {
        sp->broken = true;
        return SPOOL_TAKE;
    }
    return (held(sp) ? 0 : next_space(r)) + spool_room(r, sp);
}

/* ---- the decision ---------------------------------------------------------------------- */

/* A proxied response of a route with buffering on, with a body to spool. */
static bool wanted(const request_t *r)
{
    if (!r->upstream_answered || r->route == RT_NONE || r->head || r->tunnel)
        return false;
    const rt_route_t *rt = &r->table->t.routes[r->route];
    const http_resp_t *s = &r->resp;
    return rt_action_upstream(rt->action) && !(rt->flags & RT_RF_NO_BUFFERING) &&
           (s->body == HTTP_BODY_STREAM || (s->body == HTTP_BODY_LENGTH && s->length > 0));
}

static void spool_header(request_t *r)
{
    bool had_ctx = ctx_of(r) != NULL;
    if (had_ctx)
        spool_release(r); /* an error answer replaces a retracted response */
    if (wanted(r)) {
        spool_t *sp = arena_alloc(&r->arena, sizeof(*sp));
        const rt_route_t *rt = &r->table->t.routes[r->route];
        sp->r = r;
        sp->id = r->id;
        sp->fd = -1;
        sp->max = rt->buffering_max_kib ? (uint64_t)rt->buffering_max_kib << 10 : SPOOL_DEFAULT_MAX;
        sp->timeout_ms = r->table->t.policies[rt->policy].read_ms;
        if (sp->timeout_ms == 0)
            sp->timeout_ms = 60000;
        if (!had_ctx)
            request_cleanup_add(r, spool_release);
        r->ctx[MODULE_CTX_SPOOL] = sp;
        W->stats->spool_responses++;
    }
    next_header(r);
}

/* ---- the module ---------------------------------------------------------------------------- */

static int spool_init(void)
{
    const char *d = getenv("TMPDIR");
    if (d && d[0] == '/' && strlen(d) < sizeof(spool_dir))
        snprintf(spool_dir, sizeof(spool_dir), "%s", d);
    next_header = http_top_header_filter;
    http_top_header_filter = spool_header;
    next_body = http_top_body_filter;
    http_top_body_filter = spool_body;
    next_space = http_top_space_filter;
    http_top_space_filter = spool_space;
    return 0;
}

const module_t spool_filter_module = {.name = "spool", .worker_init = spool_init};

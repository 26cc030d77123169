/*
 * request.c - a request's life (see request.h): from the free list, through
 * the phases and a content handler, its response through the filter chains
 * to the session, and back to the free list with one access-log line.
 *
 * Requests are recycled through a small free list with their arena's first
 * chunk, so a typical request allocates nothing.
 */
#include "http/request.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "../common/log.h"

#define REQ_KEEP 64 /* beyond what a worker has in flight at once, a kept request is only memory */
/* A typical request (head copy, header index, response fields, handler
 * state) fits the arena's first chunk, which the free list keeps. */
#define REQ_ARENA 2048

/* Free requests, linked through next_free. */
static request_t *req_free;
static unsigned nreq_free;

http_header_filter_t http_top_header_filter;
http_body_filter_t http_top_body_filter;
http_space_filter_t http_top_space_filter;
void (*http_log)(const request_t *r);
bool http_log_agents;

const char *http_status_reason(int s)
{
    switch (s) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 410: return "Gone";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 416: return "Range Not Satisfiable";
    case 421: return "Misdirected Request";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return s < 200 ? "Informational" : s < 300 ? "OK" : s < 400 ? "Redirect" : s < 500 ? "Client Error" : "Server Error";
    }
}

/* ---- life -------------------------------------------------------------------------- */

static void hex32(char *out, uint32_t v)
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 7; i >= 0; i--, v >>= 4)
        out[i] = digits[v & 15];
}

request_t *request_new(conn_t *c, const http_session_ops_t *sess)
{
    request_t *r = req_free;
    if (r) {
        req_free = r->next_free;
        nreq_free--;
        arena_t keep = r->arena;
        memset(r, 0, sizeof(*r));
        r->arena = keep;
    } else {
        if ((r = calloc(1, sizeof(*r))) == NULL)
            return NULL;
        arena_init(&r->arena, REQ_ARENA);
    }
    r->conn = c;
    r->sess = sess;
    r->client_family = c->peer_family;
    memcpy(r->client_ip, c->peer_ip, sizeof(r->client_ip));
    r->table = tref_get(W->table);
    r->site = r->route = RT_NONE;
    r->content_length = -1;
    r->resp.length = -1;
    r->started_ms = ev_now(W->loop);
    r->id = ++W->seq;
    hex32(r->request_id, W->pid_hash);
    hex32(r->request_id + 8, (uint32_t)r->id);
    W->stats->requests_total++;
    return r;
}

/* A slice of the parsed head, moved from the read buffer into the copy. */
static slice_t rebase(slice_t s, const char *from, size_t len, const char *to)
{
    if (s.p >= from && s.p < from + len)
        s.p = to + (s.p - from);
    return s;
}

int request_set_head(request_t *r, const h1_request_t *h, size_t head_len)
{
    const char *from = h->method.p;
    char *raw = arena_alloc_raw(&r->arena, head_len + 1);
    h1_header_t *hd = h->nheaders ? arena_alloc_raw(&r->arena, h->nheaders * sizeof(*hd)) : NULL;
    memcpy(raw, from, head_len);
    for (size_t i = 0; i < h->nheaders; i++) {
        hd[i] = h->headers[i];
        hd[i].name = rebase(hd[i].name, from, head_len, raw);
        hd[i].value = rebase(hd[i].value, from, head_len, raw);
    }
    r->headers = hd;
    r->nheaders = h->nheaders;
    r->method = rebase(h->method, from, head_len, raw);
    r->target = rebase(h->target, from, head_len, raw);
    r->host = h->host.p ? rebase(h->host, from, head_len, raw) : SLICE_LIT(""); /* HTTP/1.0 may omit Host */
    r->query = rebase(h->query, from, head_len, raw);
    r->upgrade_proto = rebase(h->upgrade_proto, from, head_len, raw);
    r->path = rebase(h->path, from, head_len, raw); /* normalized by the route phase */
    r->path_raw = r->path;
    if (http_log_agents) { /* only the access log reads them */
        const h1_header_t *ua = h1_find_header(hd, r->nheaders, H1_HDR_USER_AGENT);
        const h1_header_t *ref = h1_find_header(hd, r->nheaders, H1_HDR_REFERER);
        r->user_agent = ua ? ua->value : (slice_t){NULL, 0};
        r->referer = ref ? ref->value : (slice_t){NULL, 0};
    }
    r->method_id = (uint8_t)h->method_id;
    r->form = (uint8_t)h->form;
    r->head = h->method_id == H1_METHOD_HEAD;
    r->keep_alive = h->keep_alive && !W->draining;
    r->expect_continue = h->expect_continue;
    r->upgrade = h->upgrade;
    r->http10 = h->minor == 0;
    r->content_length = h->content_length;
    r->body_length = h->chunked ? -1 : h->content_length > 0 ? h->content_length : 0;
    r->body_done = r->body_length == 0;
    return 0;
}

static void count_status(uint32_t site, int status)
{
    if (status < 100 || status > 599)
        return;
    unsigned cls = (unsigned)status / 100 - 1;
    if (site != RT_NONE && site < STATS_MAX_SITES)
        W->stats->site[site][cls]++;
    else
        W->stats->other_site[cls]++;
}

void request_cleanup_add(request_t *r, void (*fn)(request_t *r))
{
    request_cleanup_t *c = arena_alloc_raw(&r->arena, sizeof(*c));
    c->fn = fn;
    c->next = r->cleanups;
    r->cleanups = c;
}

void request_finish(request_t *r)
{
    if (r->on_abort)
        r->on_abort(r);
    for (request_cleanup_t *c = r->cleanups; c; c = c->next)
        c->fn(r);
    if (r->status && !r->response_done && !r->response_started)
        r->status = 499; /* the client went away before an answer */
    if (r->response_done)
        count_status(r->site, r->status);
    if (http_log)
        http_log(r);
    tref_put(r->table);
    r->id = 0; /* ids start at 1: whoever kept a pointer and the id sees the request is gone */
    if (nreq_free >= REQ_KEEP) {
        arena_free(&r->arena);
        free(r);
        return;
    }
    arena_reset(&r->arena);
    r->next_free = req_free;
    req_free = r;
    nreq_free++;
}

/* ---- the response ------------------------------------------------------------------ */

void http_resp_init(request_t *r, int status)
{
    r->resp.status = status;
    r->resp.body = HTTP_BODY_NONE;
    r->resp.length = -1;
    r->resp.nfields = 0;
    r->resp.cap = 0;
    r->resp.fields = NULL;
    r->resp.name_lens = 0;
    HTTP_RESP_LIT(r, "Server", "proxyd");
}

void http_resp_add(request_t *r, const char *name, size_t nlen, const char *value, size_t vlen)
{
    http_resp_t *s = &r->resp;
    if (s->nfields == s->cap) {
        uint32_t cap = s->cap ? s->cap * 2 : 12;
        h1_header_t *f = arena_alloc_raw(&r->arena, cap * sizeof(*f));
        if (s->nfields)
            memcpy(f, s->fields, s->nfields * sizeof(*f));
        s->fields = f;
        s->cap = cap;
    }
    s->fields[s->nfields++] = (h1_header_t){{name, nlen}, {value, vlen}, H1_HDR_OTHER, false};
    s->name_lens |= HTTP_NAME_LEN_BIT(nlen);
}

void http_resp_add_str(request_t *r, const char *name, const char *value)
{
    http_resp_add(r, name, strlen(name), value, strlen(value));
}

void http_resp_remove(request_t *r, const char *name, size_t nlen)
{
    http_resp_t *s = &r->resp;
    uint32_t k = 0;
    if (!(s->name_lens & HTTP_NAME_LEN_BIT(nlen)))
        return; /* no field has a name of this length */
    for (uint32_t i = 0; i < s->nfields; i++)
        if (!(s->fields[i].name.n == nlen && strncasecmp(s->fields[i].name.p, name, nlen) == 0))
            s->fields[k++] = s->fields[i];
    s->nfields = k;
}

h1_header_t *http_resp_field(request_t *r, const char *name, size_t nlen)
{
    http_resp_t *s = &r->resp;
    if (!(s->name_lens & HTTP_NAME_LEN_BIT(nlen)))
        return NULL;
    for (uint32_t i = 0; i < s->nfields; i++)
        if (s->fields[i].name.n == nlen && strncasecmp(s->fields[i].name.p, name, nlen) == 0)
            return &s->fields[i];
    return NULL;
}

const h1_header_t *http_req_field(const request_t *r, const char *name, size_t nlen, size_t *at)
{
    for (size_t i = *at; i < r->nheaders; i++)
        if (r->headers[i].name.n == nlen && strncasecmp(r->headers[i].name.p, name, nlen) == 0) {
            *at = i + 1;
            return &r->headers[i];
        }
    *at = r->nheaders;
    return NULL;
}

bool http_field_conditional(const h1_header_t *x)
{
    static const char *const names[] = {"range", "if-range", "if-none-match", "if-modified-since", "if-match",
                                        "if-unmodified-since"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (x->name.n == strlen(names[i]) && strncasecmp(x->name.p, names[i], x->name.n) == 0)
            return true;
    return false;
}

void http_send_head(request_t *r)
{
    r->status = r->resp.status;
    r->response_started = true;
    http_top_header_filter(r);
}

size_t http_send_space(request_t *r) { return http_top_space_filter(r); }

void http_send_data(request_t *r, const char *p, size_t n) { http_top_body_filter(r, p, n, 0); }

void http_send_flush(request_t *r) { http_top_body_filter(r, NULL, 0, HTTP_BODY_FLUSH); }

void http_send_file(request_t *r, int fd, uint64_t off, uint64_t len) { r->sess->send_file(r, fd, off, len); }

void http_send_end(request_t *r) { http_top_body_filter(r, NULL, 0, HTTP_BODY_LAST); }

void http_drained(request_t *r) { http_top_body_filter(r, NULL, 0, HTTP_BODY_RESUME); }

/* The bottoms of the chains: the session. */
static void session_header_filter(request_t *r) { r->sess->send_head(r); }

static void session_body_filter(request_t *r, const char *p, size_t n, unsigned flags)
{
    if (n)
        r->sess->send_data(r, p, n);
    if (flags & HTTP_BODY_LAST)
        r->sess->send_end(r);
    else if ((flags & HTTP_BODY_RESUME) && r->on_drain)
        r->on_drain(r);
}

static size_t session_space_filter(request_t *r) { return r->sess->send_space(r); }

/* The chains start at the session; filter modules listed after this one
 * in core/modules.c put themselves on top. */
static int request_worker_init(void)
{
    http_top_header_filter = session_header_filter;
    http_top_body_filter = session_body_filter;
    http_top_space_filter = session_space_filter;
    return 0;
}

const module_t request_module = {.name = "request", .worker_init = request_worker_init};

void http_respond(request_t *r, int status, const char *ctype, const char *body, size_t blen)
{
    http_resp_init(r, status);
    http_resp_add_str(r, "Content-Type", ctype);
    r->resp.length = (int64_t)blen;
    r->resp.body = r->head ? HTTP_BODY_NONE : HTTP_BODY_LENGTH;
    http_send_head(r);
    if (!r->head && blen)
        http_send_data(r, body, blen);
    http_send_end(r);
}

void http_send_status_body(request_t *r)
{
    char *body = arena_alloc(&r->arena, 96);
    int n = snprintf(body, 96, "%d %s\n", r->resp.status, http_status_reason(r->resp.status));
    HTTP_RESP_LIT(r, "Content-Type", "text/plain; charset=utf-8");
    r->resp.length = n;
    r->resp.body = r->head ? HTTP_BODY_NONE : HTTP_BODY_LENGTH;
    http_send_head(r);
    if (!r->head)
        http_send_data(r, body, (size_t)n);
    http_send_end(r);
}

void http_error(request_t *r, int status, const char *reason)
{
    if (r->response_started && r->sess->retract(r)) {
        log_warn("%.*s %.*s: the response failed before any byte of it was sent: %d instead", (int)r->method.n,
                 r->method.p ? r->method.p : "-", (int)r->target.n, r->target.p ? r->target.p : "-", status);
    } else if (r->response_started) {
        /* Part of the response is out: the only honest end is to abort the stream. */
        if (reason)
            log_warn("%.*s: closing mid-response: %s", (int)r->host.n, r->host.p ? r->host.p : "-", reason);
        r->status = status;
        r->sess->abort(r, CLOSE_ABORTED);
        return;
    }
    if (reason && status >= 500)
        log_err("%.*s %.*s: %d: %s", (int)r->method.n, r->method.p ? r->method.p : "-", (int)r->target.n,
                r->target.p ? r->target.p : "-", status, reason);
    if (r->on_abort) {
        r->on_abort(r);
        r->on_abort = NULL;
    }
    if (status >= 400 && status != 404 && status != 403 && status != 405)
        r->keep_alive = false;
    if (!r->body_done)
        r->keep_alive = false; /* unread request body: the stream is out of sync */
    http_resp_init(r, status);
    http_send_status_body(r);
}

void http_redirect(request_t *r, int status, const char *location, size_t n)
{
    http_resp_init(r, status);
    http_resp_add(r, "Location", 8, location, n);
    http_send_status_body(r);
}

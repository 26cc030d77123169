/*
 * accesslog.c - access log lines (see accesslog.h).
 */
#include "http/accesslog.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../common/util.h"
#include "http/vars.h"
#include "core/worker.h"

#define LOGBUF 32768

static int log_fd = 2;
static char buf[LOGBUF];
static size_t used;

int accesslog_open(const char *path)
{
    if (path == NULL || *path == '\0')
        return log_fd = 2, 0;
    if (strcmp(path, "off") == 0)
        return log_fd = -1, 0;
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0)
        return -1;
    log_fd = fd;
    return 0;
}

bool accesslog_on(void) { return log_fd >= 0; }

void accesslog_flush(void)
{
    if (used && log_fd >= 0) {
        ssize_t w = write(log_fd, buf, used);
        (void)w;
    }
    used = 0;
}

/*
 * A line is built straight into buf with bounded appends (no stdio): every
 * field has a cap on its escaped length, so a line stays under LOG_LINE_MAX and
 * the buffer is flushed first when less than that is left.
 */
#define LOG_LINE_MAX 8192

typedef struct {
    char *p;
    size_t n, cap;
} line_t;

static void put(line_t *l, const char *s, size_t n)
{
    if (n > l->cap - l->n)
        n = l->cap - l->n;
    memcpy(l->p + l->n, s, n);
    l->n += n;
}

#define PUT_LIT(l, lit) put((l), (lit), sizeof(lit) - 1)

static void put_str(line_t *l, const char *s) { put(l, s, strlen(s)); }

static void put_u64(line_t *l, uint64_t v)
{
    char tmp[24];
    put(l, tmp, fmt_u64(tmp, v));
}

static const char hex[] = "0123456789abcdef";

/* JSON string escaping of untrusted bytes (RFC 8259 §7), at most max bytes out. */
static void put_json(line_t *l, slice_t v, size_t max)
{
    size_t end = l->n + max < l->cap ? l->n + max : l->cap;
    for (size_t i = 0; i < v.n && l->n + 6 <= end; i++) {
        unsigned char ch = (unsigned char)v.p[i];
        if (ch == '"' || ch == '\\') {
            l->p[l->n++] = '\\';
            l->p[l->n++] = (char)ch;
        } else if (ch < 0x20 || ch == 0x7f) {
            char e[6] = {'\\', 'u', '0', '0', hex[ch >> 4], hex[ch & 15]};
            put(l, e, 6);
        } else {
            l->p[l->n++] = (char)ch;
        }
    }
}

/* Combined format escapes '"', '\\' and bytes outside printable ASCII as nginx
 * does (\xHH); an empty or missing value is "-".  At most max bytes out. */
static void put_clf(line_t *l, slice_t v, size_t max)
{
    static const char HEX[] = "0123456789ABCDEF";
    size_t end = l->n + max < l->cap ? l->n + max : l->cap;
    if (v.n == 0)
        v = SLICE_LIT("-");
    for (size_t i = 0; i < v.n && l->n + 4 <= end; i++) {
        unsigned char ch = (unsigned char)v.p[i];
        if (ch == '"' || ch == '\\' || ch < 0x20 || ch >= 0x7f) {
            char e[4] = {'\\', 'x', HEX[ch >> 4], HEX[ch & 15]};
            put(l, e, 4);
        } else {
            l->p[l->n++] = (char)ch;
        }
    }
}

/* The two time stamps, made once per second. */
static time_t stamp_sec = -1;
static char stamp_iso[32], stamp_clf[40];

static void stamps(void)
{
    time_t now = time(NULL);
    if (now == stamp_sec)
        return;
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(stamp_iso, sizeof(stamp_iso), "%Y-%m-%dT%H:%M:%SZ", &tm);
    strftime(stamp_clf, sizeof(stamp_clf), "%d/%b/%Y:%H:%M:%S +0000", &tm);
    stamp_sec = now;
}

void accesslog_request(const request_t *r)
{
    const conn_t *c = r->conn;
    if (log_fd < 0 || r->status == 0)
        return;
    int fmt = r->site == RT_NONE ? RT_LOG_JSON : r->table->t.sites[r->site].access_log;
    if (fmt == RT_LOG_OFF)
        return;
    char peer[VARS_PEER_MAX];
    size_t peer_len = vars_peer(c, peer);
    stamps();
    if (used + LOG_LINE_MAX > LOGBUF)
        accesslog_flush();
    line_t l = {buf + used, 0, LOG_LINE_MAX};
    slice_t method = r->method.n ? r->method : SLICE_LIT("-");
    if (fmt == RT_LOG_JSON) {
        PUT_LIT(&l, "{\"time\":\"");
        put_str(&l, stamp_iso);
        PUT_LIT(&l, "\",\"remote_addr\":\"");
        put(&l, peer, peer_len);
        PUT_LIT(&l, "\",\"host\":\"");
        put_json(&l, r->host, 255);
        PUT_LIT(&l, "\",\"method\":\"");
        put_json(&l, method, 255);
        PUT_LIT(&l, "\",\"uri\":\"");
        put_json(&l, r->target, 2047);
        PUT_LIT(&l, "\",\"status\":");
        put_u64(&l, (uint64_t)r->status);
        PUT_LIT(&l, ",\"bytes_sent\":");
        put_u64(&l, r->resp_bytes);
        PUT_LIT(&l, ",\"request_time_ms\":");
        put_u64(&l, ev_now(W->loop) - r->started_ms);
        PUT_LIT(&l, ",\"upstream_time_ms\":");
        if (r->upstream_answered)
            put_u64(&l, r->upstream_ms);
        else
            PUT_LIT(&l, "-1");
        PUT_LIT(&l, ",\"site\":\"");
        if (r->site != RT_NONE)
            put_json(&l, (slice_t){rt_cstr(&r->table->t, r->table->t.sites[r->site].name),
                               r->table->t.sites[r->site].name.len}, 255);
        PUT_LIT(&l, "\",\"request_id\":\"");
        put_str(&l, r->request_id);
        PUT_LIT(&l, "\",\"user_agent\":\"");
        put_json(&l, r->user_agent, 511);
        PUT_LIT(&l, "\",\"referer\":\"");
        put_json(&l, r->referer, 511);
        PUT_LIT(&l, "\"}\n");
    } else {
        put(&l, peer, peer_len);
        PUT_LIT(&l, " - - [");
        put_str(&l, stamp_clf);
        PUT_LIT(&l, "] \"");
        put_clf(&l, method, 255);
        PUT_LIT(&l, " ");
        put_clf(&l, r->target, 2047);
        PUT_LIT(&l, " ");
        put_str(&l, r->sess->proto);
        PUT_LIT(&l, "\" ");
        put_u64(&l, (uint64_t)r->status);
        PUT_LIT(&l, " ");
        put_u64(&l, r->resp_bytes);
        PUT_LIT(&l, " \"");
        put_clf(&l, r->referer, 511);
        PUT_LIT(&l, "\" \"");
        put_clf(&l, r->user_agent, 511);
        PUT_LIT(&l, "\"\n");
    }
    used += l.n;
}

static int accesslog_worker_init(void)
{
    http_log = accesslog_request;
    http_log_agents = accesslog_on();
    return 0;
}

const module_t accesslog_module = {
    .name = "accesslog", .worker_init = accesslog_worker_init, .worker_idle = accesslog_flush, .worker_exit = accesslog_flush};

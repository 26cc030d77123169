/*
 * accesslog.c - access log lines (see accesslog.h).
 *
 * One file per format, so that no file mixes JSON and combined lines:
 * logs.access names the JSON one (requests no site claims are logged
 * there too), and the combined lines of sites that ask for them go to the
 * same name with ".combined" before its extension (access.log ->
 * access.combined.log), opened only once a site uses that format.  The
 * master opens both (the workers may not be able to after dropping
 * privileges) and hands them over at SIGUSR1 (core/channel.h).
 */
#include "http/accesslog.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../common/log.h"
#include "../common/str.h"
#include "../common/util.h"
#include "http/vars.h"
#include "core/worker.h"

#define LOGBUF 32768

/* Indexed by rt_logfmt (RT_LOG_JSON, RT_LOG_COMBINED): -1 when off or not
 * open yet, 2 for stderr. */
static int log_fds[RT_LOG_COMBINED + 1] = {2, 2};
static char log_paths[RT_LOG_COMBINED + 1][4096];
static bool off;
/* One buffer per format: a flush writes each to its own file. */
static char bufs[RT_LOG_COMBINED + 1][LOGBUF];
static size_t used[RT_LOG_COMBINED + 1];

/* access.log -> access.combined.log; access -> access.combined */
static void combined_path(const char *path, char *out, size_t cap)
{
    const char *base = strrchr(path, '/');
    const char *dot = strrchr(base ? base + 1 : path, '.');
    if (dot == NULL || dot == (base ? base + 1 : path))
        snprintf(out, cap, "%s.combined", path);
    else
        snprintf(out, cap, "%.*s.combined%s", (int)(dot - path), path, dot);
}

static bool table_uses(const rt_table_t *t, int fmt)
{
    for (uint32_t i = 0; i < t->nsites; i++)
        if (t->sites[i].access_log == fmt)
            return true;
    return false;
}

int accesslog_open(const char *path, const rt_table_t *t, char *why, size_t cap)
{
    off = path && strcmp(path, "off") == 0;
    if (path == NULL || *path == '\0' || off) {
        log_fds[RT_LOG_JSON] = log_fds[RT_LOG_COMBINED] = off ? -1 : 2;
        return 0;
    }
    snprintf(log_paths[RT_LOG_JSON], sizeof(log_paths[0]), "%s", path);
    combined_path(path, log_paths[RT_LOG_COMBINED], sizeof(log_paths[0]));
    log_fds[RT_LOG_JSON] = log_fds[RT_LOG_COMBINED] = -1;
    return accesslog_reopen(t, why, cap);
}

int accesslog_reopen(const rt_table_t *t, char *why, size_t cap)
{
    if (off || log_paths[RT_LOG_JSON][0] == '\0')
        return 0;
    for (int f = RT_LOG_JSON; f <= RT_LOG_COMBINED; f++) {
        if (f == RT_LOG_COMBINED && log_fds[f] < 0 && !table_uses(t, f))
            continue;
        int fd = log_open_file(log_paths[f], why, cap);
        if (fd < 0)
            return -1;
        accesslog_take_fd(f, fd);
    }
    return 0;
}

bool accesslog_wants_reopen(const rt_table_t *t)
{
    return !off && log_paths[RT_LOG_JSON][0] && log_fds[RT_LOG_COMBINED] < 0 && table_uses(t, RT_LOG_COMBINED);
}

int accesslog_fd(int fmt) { return fmt >= RT_LOG_JSON && fmt <= RT_LOG_COMBINED ? log_fds[fmt] : -1; }

void accesslog_take_fd(int fmt, int fd)
{
    if (fmt < RT_LOG_JSON || fmt > RT_LOG_COMBINED) {
        close(fd);
        return;
    }
    accesslog_flush();
    if (log_fds[fmt] > 2 && fd != log_fds[fmt]) {
        /* The same number from now on; the old file is closed by it. */
        if (dup3(fd, log_fds[fmt], O_CLOEXEC) == 0)
            close(fd);
    } else {
        log_fds[fmt] = fd;
    }
}

bool accesslog_on(void) { return !off; }

void accesslog_flush(void)
{
    for (int f = RT_LOG_JSON; f <= RT_LOG_COMBINED; f++) {
        if (used[f] && log_fds[f] >= 0) {
            ssize_t w = write(log_fds[f], bufs[f], used[f]);
            (void)w;
        }
        used[f] = 0;
    }
}

/*
 * A line is built straight into buf with a fixed str_buf_t (no stdio, no
 * copy): every field has a cap on its escaped length, so a line stays under
 * LOG_LINE_MAX and the buffer is flushed first when less than that is left.
 */
#define LOG_LINE_MAX 8192

/* Combined format escapes '"', '\\' and bytes outside printable ASCII as nginx
 * does (\xHH); an empty or missing value is "-".  At most max bytes out. */
static void put_clf(str_buf_t *l, slice_t v, size_t max)
{
    static const char HEX[] = "0123456789ABCDEF";
    size_t room = l->cap - l->len, end = l->len + (max < room ? max : room), i = 0;
    if (v.n == 0)
        v = SLICE_LIT("-");
    for (; i < v.n && l->len + 4 <= end; i++) {
        unsigned char ch = (unsigned char)v.p[i];
        if (ch == '"' || ch == '\\' || ch < 0x20 || ch >= 0x7f) {
            char e[4] = {'\\', 'x', HEX[ch >> 4], HEX[ch & 15]};
            str_append(l, e, 4);
        } else {
            l->p[l->len++] = (char)ch;
        }
    }
    if (i < v.n && room < max) /* cut short by the line, not by max (as str_json_escape) */
        str_refuse(l);
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
    if (off || r->status == 0)
        return;
    int fmt = r->site == RT_NONE ? RT_LOG_JSON : r->table->t.sites[r->site].access_log;
    if (fmt == RT_LOG_OFF || fmt > RT_LOG_COMBINED || log_fds[fmt] < 0)
        return;
    char peer[VARS_PEER_MAX];
    size_t peer_len = vars_client(r, peer);
    stamps();
    if (used[fmt] + LOG_LINE_MAX > LOGBUF)
        accesslog_flush();
    str_buf_t l = str_buf_fixed(bufs[fmt] + used[fmt], LOG_LINE_MAX);
    slice_t method = r->method.n ? r->method : SLICE_LIT("-");
    if (fmt == RT_LOG_JSON) {
        STR_APPEND_LIT(&l, "{\"time\":\"");
        str_append_str(&l, stamp_iso);
        STR_APPEND_LIT(&l, "\",\"remote_addr\":\"");
        str_append(&l, peer, peer_len);
        STR_APPEND_LIT(&l, "\",\"host\":\"");
        str_json_escape(&l, r->host.p, r->host.n, 255);
        STR_APPEND_LIT(&l, "\",\"method\":\"");
        str_json_escape(&l, method.p, method.n, 255);
        STR_APPEND_LIT(&l, "\",\"uri\":\"");
        str_json_escape(&l, r->target.p, r->target.n, 2047);
        STR_APPEND_LIT(&l, "\",\"protocol\":\"");
        str_append_str(&l, r->sess->proto);
        STR_APPEND_LIT(&l, "\",\"status\":");
        str_append_u64(&l, (uint64_t)r->status);
        STR_APPEND_LIT(&l, ",\"bytes_sent\":");
        str_append_u64(&l, r->resp_bytes);
        STR_APPEND_LIT(&l, ",\"request_time_ms\":");
        str_append_u64(&l, ev_now(W->loop) - r->started_ms);
        STR_APPEND_LIT(&l, ",\"upstream_time_ms\":");
        if (r->upstream_answered)
            str_append_u64(&l, r->upstream_ms);
        else
            STR_APPEND_LIT(&l, "-1");
        STR_APPEND_LIT(&l, ",\"site\":\"");
        if (r->site != RT_NONE)
            str_json_escape(&l, rt_cstr(&r->table->t, r->table->t.sites[r->site].name),
                            r->table->t.sites[r->site].name.len, 255);
        STR_APPEND_LIT(&l, "\",\"request_id\":\"");
        str_append_str(&l, r->request_id);
        STR_APPEND_LIT(&l, "\",\"user_agent\":\"");
        str_json_escape(&l, r->user_agent.p, r->user_agent.n, 511);
        STR_APPEND_LIT(&l, "\",\"referer\":\"");
        str_json_escape(&l, r->referer.p, r->referer.n, 511);
        STR_APPEND_LIT(&l, "\"}\n");
    } else {
        str_append(&l, peer, peer_len);
        STR_APPEND_LIT(&l, " - - [");
        str_append_str(&l, stamp_clf);
        STR_APPEND_LIT(&l, "] \"");
        put_clf(&l, method, 255);
        STR_APPEND_LIT(&l, " ");
        put_clf(&l, r->target, 2047);
        STR_APPEND_LIT(&l, " ");
        str_append_str(&l, r->sess->proto);
        STR_APPEND_LIT(&l, "\" ");
        str_append_u64(&l, (uint64_t)r->status);
        STR_APPEND_LIT(&l, " ");
        str_append_u64(&l, r->resp_bytes);
        STR_APPEND_LIT(&l, " \"");
        put_clf(&l, r->referer, 511);
        STR_APPEND_LIT(&l, "\" \"");
        put_clf(&l, r->user_agent, 511);
        STR_APPEND_LIT(&l, "\"\n");
    }
    used[fmt] += l.len;
}

static int accesslog_worker_init(void)
{
    http_log = accesslog_request;
    http_log_agents = accesslog_on();
    return 0;
}

const module_t accesslog_module = {
    .name = "accesslog", .worker_init = accesslog_worker_init, .worker_idle = accesslog_flush, .worker_exit = accesslog_flush};

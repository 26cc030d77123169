/*
 * accesslog.c - access log lines (see accesslog.h).
 */
#include "accesslog.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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

void accesslog_flush(void)
{
    if (used && log_fd >= 0) {
        ssize_t w = write(log_fd, buf, used);
        (void)w;
    }
    used = 0;
}

/* JSON string escaping of untrusted bytes (RFC 8259 §7). */
static void json_esc(char *out, size_t cap, const char *s)
{
    size_t o = 0;
    for (; s && *s && o + 7 < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            out[o++] = '\\';
            out[o++] = (char)ch;
        } else if (ch < 0x20 || ch == 0x7f) {
            o += (size_t)snprintf(out + o, cap - o, "\\u%04x", ch);
        } else {
            out[o++] = (char)ch;
        }
    }
    out[o] = '\0';
}

/* Combined format escapes '"' and control bytes as nginx does (\xHH). */
static void clf_esc(char *out, size_t cap, const char *s)
{
    size_t o = 0;
    if (s == NULL || *s == '\0')
        s = "-";
    for (; *s && o + 5 < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\' || ch < 0x20 || ch >= 0x7f)
            o += (size_t)snprintf(out + o, cap - o, "\\x%02X", ch);
        else
            out[o++] = (char)ch;
    }
    out[o] = '\0';
}

static void peer_text(const conn_t *c, char *out, size_t cap)
{
    if (c->peer_family == 4)
        inet_ntop(AF_INET, c->peer_ip, out, (socklen_t)cap);
    else if (c->peer_family == 6)
        inet_ntop(AF_INET6, c->peer_ip, out, (socklen_t)cap);
    else
        snprintf(out, cap, "unix");
}

void accesslog_request(const conn_t *c, const request_t *r)
{
    if (log_fd < 0 || r->status == 0)
        return;
    int fmt = r->site == RT_NONE ? RT_LOG_JSON : r->table->t.sites[r->site].access_log;
    if (fmt == RT_LOG_OFF)
        return;
    char peer[64], uri[2048], ua[512], ref[512], host[256];
    peer_text(c, peer, sizeof(peer));
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    char ts[40];
    uint64_t ms = ev_now(W->loop) - r->started_ms;
    if (used + 4096 > LOGBUF)
        accesslog_flush();
    char *o = buf + used;
    size_t cap = LOGBUF - used;
    int n;
    if (fmt == RT_LOG_JSON) {
        strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
        json_esc(uri, sizeof(uri), r->uri);
        json_esc(ua, sizeof(ua), r->user_agent);
        json_esc(ref, sizeof(ref), r->referer);
        json_esc(host, sizeof(host), r->host);
        n = snprintf(o, cap,
                     "{\"time\":\"%s\",\"remote_addr\":\"%s\",\"host\":\"%s\",\"method\":\"%s\",\"uri\":\"%s\","
                     "\"status\":%d,\"bytes_sent\":%llu,\"request_time_ms\":%llu,\"upstream_time_ms\":%lld,"
                     "\"site\":\"%s\",\"request_id\":\"%s\",\"user_agent\":\"%s\",\"referer\":\"%s\"}\n",
                     ts, peer, host, r->method ? r->method : "-", uri, r->status, (unsigned long long)r->resp_bytes,
                     (unsigned long long)ms, r->upstream_answered ? (long long)r->upstream_ms : -1LL,
                     r->site == RT_NONE ? "" : rt_cstr(&r->table->t, r->table->t.sites[r->site].name), r->request_id,
                     ua, ref);
    } else {
        strftime(ts, sizeof(ts), "%d/%b/%Y:%H:%M:%S +0000", &tm);
        clf_esc(uri, sizeof(uri), r->uri);
        clf_esc(ua, sizeof(ua), r->user_agent);
        clf_esc(ref, sizeof(ref), r->referer);
        n = snprintf(o, cap, "%s - - [%s] \"%s %s HTTP/1.1\" %d %llu \"%s\" \"%s\"\n", peer, ts,
                     r->method ? r->method : "-", uri, r->status, (unsigned long long)r->resp_bytes, ref, ua);
    }
    if (n > 0 && (size_t)n < cap)
        used += (size_t)n;
}

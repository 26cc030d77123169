/*
 * admin.c - admin HTTP in the master (see admin.h).
 *
 * Requests are tiny and the master is otherwise idle, so each admin
 * connection reads one request head, answers from shared memory, and
 * closes.  Responses are built in a growable buffer and written with
 * non-blocking writes driven by the loop.
 */
#include "core/admin.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "../common/ha.h"
#include "../common/log.h"
#include "../common/store.h"
#include "../common/str.h"
#include "../common/util.h"
#include "cache/cache.h"
#include "http/limit.h"
#include "upstream/health.h"
#include "http/http1.h"
#include "core/net.h"

static const admin_ops_t *OPS;
static admin_view_t V; /* refreshed at every request (route) */

typedef struct {
    ev_io_t io;
    bool metrics_only;
} admin_listener_t;

typedef struct admin_conn {
    ev_io_t io;
    ev_timer_t timer;
    struct admin_conn *prev, *next; /* open connections: a forked worker closes them */
    bool metrics_only;
    char in[8192];
    size_t inlen;
    str_buf_t out;
    size_t sent;
} admin_conn_t;

static admin_listener_t unix_l = {.io = {.fd = -1}}, tcp_l = {.io = {.fd = -1}};
static char sock_path[108];
static ev_loop_t *loop;
static admin_conn_t *open_conns;

static void conn_done(admin_conn_t *a)
{
    if (a->prev)
        a->prev->next = a->next;
    else
        open_conns = a->next;
    if (a->next)
        a->next->prev = a->prev;
    ev_timer_stop(loop, &a->timer);
    ev_del(loop, &a->io);
    close(a->io.fd);
    str_buf_free(&a->out);
    free(a);
}

/* ---- bodies ----------------------------------------------------------------------- */

/* s inside a JSON string. */
static void put_json(str_buf_t *b, const char *s) { str_json_escape(b, s, strlen(s), SIZE_MAX); }

/* s inside a Prometheus label value: the text format escapes only '\\', '"'
 * and line feed, and has no \u escape. */
static void put_label(str_buf_t *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            str_append(b, "\\", 1);
        if (*s == '\n')
            STR_APPEND_LIT(b, "\\n");
        else
            str_append(b, s, 1);
    }
}

/* Every server of every upstream with its shared state (health.h). */
static void status_check(str_buf_t *b, const health_slot_t *s)
{
    uint64_t last = atomic_load(&s->hc_last_ms);
    str_printf(b, ",\"check\":{\"state\":\"%s\",\"checks\":%llu,\"consecutive_failures\":%u,"
                  "\"consecutive_successes\":%u,\"last_status\":%u,\"last_error\":\"%s\",\"last_check\":",
               atomic_load(&s->hc_down) ? "down" : "up", (unsigned long long)atomic_load(&s->hc_checks),
               atomic_load(&s->hc_fails), atomic_load(&s->hc_oks), atomic_load(&s->hc_last_status),
               health_error_name(atomic_load(&s->hc_last_error)));
    if (last)
        str_printf(b, "%llu.%03llu}", (unsigned long long)(last / 1000), (unsigned long long)(last % 1000));
    else
        str_printf(b, "null}");
}

static void status_server(str_buf_t *b, const rt_table_t *t, uint32_t i, const health_slot_t *s, uint64_t now)
{
    const rt_server_t *sv = &t->servers[i];
    bool hc = t->upstreams[sv->upstream].hc_interval_ms != 0;
    uint64_t until = atomic_load(&s->down_until);
    bool passive = health_passive_down(s, now);
    str_printf(b, "{\"address\":\"");
    put_json(b, rt_cstr(t, sv->sa.addr));
    str_printf(b, "\",\"weight\":%u,\"backup\":%s,\"state\":\"%s\",\"in_flight\":%d,\"requests\":%llu,"
                  "\"failures\":%llu,\"downs\":%llu,\"passive_down\":%s,\"down_for_ms\":%llu",
               sv->weight, sv->flags & RT_SVF_BACKUP ? "true" : "false",
               health_usable(s, hc, now) ? "up" : "down", health_load(s),
               (unsigned long long)atomic_load(&s->requests), (unsigned long long)atomic_load(&s->failures),
               (unsigned long long)atomic_load(&s->downs), passive ? "true" : "false",
               (unsigned long long)(passive ? until - now : 0));
    if (hc)
        status_check(b, s);
    str_printf(b, "}");
}

static void status_upstreams(str_buf_t *b)
{
    const tref_t *tr = V.table;
    const rt_table_t *t = &tr->t;
    uint64_t now = ev_now(loop);
    str_printf(b, ",\"upstreams\":[");
    for (uint32_t i = 0; i < t->nupstreams; i++) {
        const rt_upstream_t *u = &t->upstreams[i];
        str_printf(b, "%s{\"site\":\"%s\",\"upstream\":\"%s\",\"balance\":\"%s\",\"servers\":[", i ? "," : "",
                   rt_cstr(t, t->sites[u->site].name), rt_cstr(t, u->name), rt_enum_name("balance", u->balance));
        for (uint32_t k = 0; k < u->servers.count; k++) {
            str_printf(b, "%s", k ? "," : "");
            status_server(b, t, u->servers.first + k, health_slot_of(tr, u->servers.first + k), now);
        }
        str_printf(b, "]}");
    }
    str_printf(b, "]");
}

/* The pair, as keepalived last reported this node's role (read fresh from
 * the store) and as the replication process sees the peer. */
static void status_ha(str_buf_t *b)
{
    const replica_shm_t *r = V.replica;
    if (V.ha_node[0] == '\0' || r == NULL)
        return;
    store_t st;
    ha_state_t hs = {0};
    if (store_open(&st, V.db, STORE_RDONLY) == 0)
        ha_state_get(&st, &hs);
    store_close(&st);
    str_printf(b, ",\"ha\":{\"node\":\"");
    put_json(b, V.ha_node);
    str_printf(b, "\",\"role\":\"%s\",\"role_changed\":%lld,\"serial\":%lld,\"synced\":%lld,\"replication\":%s,", hs.role,
               (long long)hs.role_changed, (long long)hs.serial, (long long)hs.synced, V.replica_running ? "true" : "false");
    str_printf(b, "\"peer\":{\"address\":\"");
    put_json(b, V.ha_peer);
    str_printf(b, "\",\"node\":\"");
    put_json(b, r->peer_node);
    str_printf(b, "\",\"role\":\"%s\",\"serial\":%lld,\"last_contact\":%lld},", r->peer_role, (long long)r->peer_serial,
               (long long)r->last_contact);
    str_printf(b, "\"pulls\":%llu,\"last_pull\":%lld,\"served\":%llu,\"last_error\":\"", (unsigned long long)r->pulls,
               (long long)r->last_pull, (unsigned long long)r->served);
    put_json(b, r->last_error);
    str_printf(b, "\"}");
}

static void status_json(str_buf_t *b)
{
    const stats_shm_t *s = V.shm;
    uint64_t conns = 0, reqs = 0;
    str_printf(b, "{\"pid\":%d,\"generation\":%lld,\"reloads\":%llu,\"uptime_s\":%llu,\"workers\":[", (int)getpid(),
               (long long)s->generation, (unsigned long long)s->reloads,
               (unsigned long long)((uint64_t)time(NULL) - V.started));
    for (int i = 0; i < V.nworkers; i++) {
        const worker_stats_t *w = &s->workers[i];
        bool alive = V.pids[i] > 0 && w->pid == V.pids[i];
        conns += alive ? w->conns_active : 0;
        reqs += w->requests_total;
        str_printf(b, "%s{\"id\":%d,\"pid\":%d,\"alive\":%s,\"generation\":%lld,\"connections\":%llu,\"requests\":%llu}",
                   i ? "," : "", i, (int)V.pids[i], alive ? "true" : "false", (long long)w->generation,
                   (unsigned long long)w->conns_active, (unsigned long long)w->requests_total);
    }
    str_printf(b, "],\"connections\":%llu,\"requests\":%llu,\"sites\":%u", (unsigned long long)conns,
               (unsigned long long)reqs, V.table->t.nsites);
    if (V.last_reload_error[0]) {
        STR_APPEND_LIT(b, ",\"last_reload_error\":\"");
        str_json_escape(b, V.last_reload_error, strlen(V.last_reload_error), SIZE_MAX);
        STR_APPEND_LIT(b, "\"");
    }
    status_upstreams(b);
    status_ha(b);
    str_printf(b, "}\n");
}

static void metric_header(str_buf_t *b, const char *name, const char *type, const char *help)
{
    str_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static uint64_t sum_field(size_t offset)
{
    uint64_t v = 0;
    for (int i = 0; i < V.nworkers; i++)
        v += *(const volatile uint64_t *)((const char *)&V.shm->workers[i] + offset);
    return v;
}

static void metrics_requests(str_buf_t *b)
{
    const rt_table_t *t = &V.table->t;
    static const char *const cls[] = {"1xx", "2xx", "3xx", "4xx", "5xx"};
    metric_header(b, "proxyd_requests_total", "counter", "Requests answered, by site and status class.");
    for (uint32_t s = 0; s < t->nsites && s < STATS_MAX_SITES; s++)
        for (int c = 0; c < STATS_CLASSES; c++) {
            uint64_t v = 0;
            for (int i = 0; i < V.nworkers; i++)
                v += V.shm->workers[i].site[s][c];
            if (v)
                str_printf(b, "proxyd_requests_total{site=\"%s\",class=\"%s\"} %llu\n", rt_cstr(t, t->sites[s].name),
                           cls[c], (unsigned long long)v);
        }
    for (int c = 0; c < STATS_CLASSES; c++) {
        uint64_t v = 0;
        for (int i = 0; i < V.nworkers; i++)
            v += V.shm->workers[i].other_site[c];
        if (v)
            str_printf(b, "proxyd_requests_total{site=\"\",class=\"%s\"} %llu\n", cls[c], (unsigned long long)v);
    }
}

static void metrics_latency(str_buf_t *b)
{
    static const uint64_t bounds[STATS_LAT_BUCKETS] = STATS_LAT_BOUNDS;
    metric_header(b, "proxyd_upstream_response_seconds", "histogram",
                  "Time from sending a request upstream to its response head.");
    uint64_t cum = 0;
    for (int k = 0; k < STATS_LAT_BUCKETS; k++) {
        for (int i = 0; i < V.nworkers; i++)
            cum += V.shm->workers[i].upstream_hist[k];
        if (bounds[k])
            str_printf(b, "proxyd_upstream_response_seconds_bucket{le=\"%.3f\"} %llu\n", (double)bounds[k] / 1000.0,
                       (unsigned long long)cum);
        else
            str_printf(b, "proxyd_upstream_response_seconds_bucket{le=\"+Inf\"} %llu\n", (unsigned long long)cum);
    }
    str_printf(b, "proxyd_upstream_response_seconds_sum %.3f\nproxyd_upstream_response_seconds_count %llu\n",
               (double)sum_field(offsetof(worker_stats_t, upstream_ms_sum)) / 1000.0,
               (unsigned long long)sum_field(offsetof(worker_stats_t, upstream_count)));
}

enum server_metric { SM_UP, SM_IN_FLIGHT, SM_REQUESTS, SM_FAILURES, SM_DOWNS, SM_CHECK_FAILURES, SM_LAST_CHECK };

/* One metric family over every server; false leaves a server out. */
static bool server_value(enum server_metric m, const rt_table_t *t, uint32_t i, const health_slot_t *s, uint64_t now,
                         double *v)
{
    bool hc = t->upstreams[t->servers[i].upstream].hc_interval_ms != 0;
    switch (m) {
    case SM_UP: *v = health_usable(s, hc, now); return true;
    case SM_IN_FLIGHT: *v = health_load(s); return true;
    case SM_REQUESTS: *v = (double)atomic_load(&s->requests); return true;
    case SM_FAILURES: *v = (double)atomic_load(&s->failures); return true;
    case SM_DOWNS: *v = (double)atomic_load(&s->downs); return true;
    case SM_CHECK_FAILURES: *v = atomic_load(&s->hc_fails); return hc;
    case SM_LAST_CHECK: *v = (double)atomic_load(&s->hc_last_ms) / 1000.0; return hc && *v > 0;
    }
    return false;
}

static void metrics_servers(str_buf_t *b)
{
    static const struct {
        const char *name, *type, *help;
    } fam[] = {
        {"proxyd_upstream_server_up", "gauge", "1 when the server takes traffic, 0 when passive or active health marks it down."},
        {"proxyd_upstream_server_in_flight", "gauge", "Requests being served by the server, all workers."},
        {"proxyd_upstream_server_requests_total", "counter", "Attempts sent to the server (retries included)."},
        {"proxyd_upstream_server_failures_total", "counter", "Attempts that failed (connect, timeout, reset, retry.on statuses)."},
        {"proxyd_upstream_server_downs_total", "counter", "Times the server was marked down."},
        {"proxyd_upstream_server_check_failures", "gauge", "Consecutive failed active health checks."},
        {"proxyd_upstream_server_last_check_timestamp_seconds", "gauge", "Unix time of the last active health check."},
    };
    const tref_t *tr = V.table;
    const rt_table_t *t = &tr->t;
    uint64_t now = ev_now(loop);
    for (unsigned m = 0; m < sizeof(fam) / sizeof(fam[0]); m++) {
        metric_header(b, fam[m].name, fam[m].type, fam[m].help);
        for (uint32_t i = 0; i < t->nservers; i++) {
            double v;
            if (!server_value((enum server_metric)m, t, i, health_slot_of(tr, i), now, &v))
                continue;
            const rt_upstream_t *u = &t->upstreams[t->servers[i].upstream];
            str_printf(b, "%s{site=\"%s\",upstream=\"%s\",server=\"", fam[m].name, rt_cstr(t, t->sites[u->site].name),
                       rt_cstr(t, u->name));
            put_label(b, rt_cstr(t, t->servers[i].sa.addr));
            str_printf(b, m == SM_LAST_CHECK ? "\"} %.3f\n" : "\"} %.0f\n", v);
        }
    }
}

/* Rate-limit zones of the active table (their counters outlive reloads). */
static void metrics_limits(str_buf_t *b)
{
    const rt_table_t *t = &V.table->t;
    if (t->nrate_zones == 0)
        return;
    metric_header(b, "proxyd_rate_limit_requests_total", "counter",
                  "Requests a rate-limit zone let through at once (allowed), after a wait (delayed) or refused with 429.");
    for (uint32_t i = 0; i < t->nrate_zones; i++) {
        limit_zone_stats_t s = limit_zone_stats(rt_cstr(t, t->rate_zones[i].name));
        const char *z = rt_cstr(t, t->rate_zones[i].name);
        str_printf(b, "proxyd_rate_limit_requests_total{zone=\"%s\",result=\"allowed\"} %llu\n", z, (unsigned long long)s.allowed);
        str_printf(b, "proxyd_rate_limit_requests_total{zone=\"%s\",result=\"delayed\"} %llu\n", z, (unsigned long long)s.delayed);
        str_printf(b, "proxyd_rate_limit_requests_total{zone=\"%s\",result=\"refused\"} %llu\n", z, (unsigned long long)s.refused);
    }
    metric_header(b, "proxyd_rate_limit_evictions_total", "counter",
                  "Keys whose bucket was dropped, not yet drained, to make room for another (the zone is too small for its traffic).");
    for (uint32_t i = 0; i < t->nrate_zones; i++) {
        limit_zone_stats_t s = limit_zone_stats(rt_cstr(t, t->rate_zones[i].name));
        str_printf(b, "proxyd_rate_limit_evictions_total{zone=\"%s\"} %llu\n", rt_cstr(t, t->rate_zones[i].name),
                   (unsigned long long)s.evicted);
    }
}

/* The cache zones: answers by X-Cache-Status, size, entries, evictions. */
static void metrics_cache(str_buf_t *b)
{
    const rt_table_t *t = &V.table->t;
    static const char *const labels[CC_COUNT] = {"hit", "miss", "expired", "stale", "updating", "revalidated", "bypass"};
    if (t->ncache_zones == 0)
        return;
    metric_header(b, "proxyd_cache_requests_total", "counter", "Answers of cached routes, by their X-Cache-Status.");
    for (uint32_t i = 0; i < t->ncache_zones; i++) {
        cache_zone_stats_t s = cache_zone_stats(rt_cstr(t, t->cache_zones[i].name));
        for (int c = 0; c < CC_COUNT; c++)
            str_printf(b, "proxyd_cache_requests_total{zone=\"%s\",status=\"%s\"} %llu\n", rt_cstr(t, t->cache_zones[i].name),
                       labels[c], (unsigned long long)s.counts[c]);
    }
#define CACHE_METRIC(metric, type, help, field)                                                                   \
    metric_header(b, metric, type, help);                                                                         \
    for (uint32_t i = 0; i < t->ncache_zones; i++) {                                                            \
        cache_zone_stats_t s = cache_zone_stats(rt_cstr(t, t->cache_zones[i].name));                           \
        str_printf(b, metric "{zone=\"%s\"} %llu\n", rt_cstr(t, t->cache_zones[i].name), (unsigned long long)s.field); \
    }
    CACHE_METRIC("proxyd_cache_bytes", "gauge", "Bytes the zone's entries take on disk.", size)
    CACHE_METRIC("proxyd_cache_entries", "gauge", "Entries in the zone's index.", entries)
    CACHE_METRIC("proxyd_cache_evictions_total", "counter",
                 "Entries evicted to stay within max_size or the index's memory.", evictions)
#undef CACHE_METRIC
}

/* Requests and connections by protocol, and what the HTTP/2 session refused. */
static void metrics_http2(str_buf_t *b)
{
    uint64_t req = sum_field(offsetof(worker_stats_t, requests_total)), h2 = sum_field(offsetof(worker_stats_t, requests_h2));
    uint64_t h1c = sum_field(offsetof(worker_stats_t, conns_h1)), h2c = sum_field(offsetof(worker_stats_t, conns_h2));
    metric_header(b, "proxyd_requests_by_protocol_total", "counter", "Client requests by protocol.");
    str_printf(b, "proxyd_requests_by_protocol_total{protocol=\"HTTP/1.1\"} %llu\n", (unsigned long long)(req - h2));
    str_printf(b, "proxyd_requests_by_protocol_total{protocol=\"HTTP/2.0\"} %llu\n", (unsigned long long)h2);
    metric_header(b, "proxyd_connections_by_protocol_total", "counter",
                  "Client connections by the protocol they spoke (those that got as far as a protocol).");
    str_printf(b, "proxyd_connections_by_protocol_total{protocol=\"HTTP/1.1\"} %llu\n", (unsigned long long)h1c);
    str_printf(b, "proxyd_connections_by_protocol_total{protocol=\"HTTP/2.0\"} %llu\n", (unsigned long long)h2c);
    metric_header(b, "proxyd_http2_refused_total", "counter",
                  "HTTP/2 streams or connections refused, by reason (attacks and malformed requests).");
#define H2_METRIC(e, label)                                                                                 \
    str_printf(b, "proxyd_http2_refused_total{reason=\"%s\"} %llu\n", label,                                \
               (unsigned long long)sum_field(offsetof(worker_stats_t, h2_refused) + e * sizeof(uint64_t)));
    STATS_H2_REFUSALS(H2_METRIC)
#undef H2_METRIC
}

/* Response buffering (filters/spool.c): counters, and what is held now. */
static void metrics_buffering(str_buf_t *b)
{
    static const struct {
        const char *name, *type, *help;
        size_t field;
    } m[] = {
        {"proxyd_buffering_responses_total", "counter", "Proxied responses buffered (buffering: true).",
         offsetof(worker_stats_t, spool_responses)},
        {"proxyd_buffering_file_responses_total", "counter", "Buffered responses that needed a temporary file.",
         offsetof(worker_stats_t, spool_file_responses)},
        {"proxyd_buffering_file_written_bytes_total", "counter", "Bytes written to buffering files.",
         offsetof(worker_stats_t, spool_file_bytes)},
        {"proxyd_buffering_memory_bytes", "gauge", "Response bytes held in buffering memory now.",
         offsetof(worker_stats_t, spool_mem_now)},
        {"proxyd_buffering_file_bytes", "gauge", "Bytes of buffering files now.", offsetof(worker_stats_t, spool_disk_now)},
    };
    for (size_t i = 0; i < sizeof(m) / sizeof(m[0]); i++) {
        metric_header(b, m[i].name, m[i].type, m[i].help);
        str_printf(b, "%s %llu\n", m[i].name, (unsigned long long)sum_field(m[i].field));
    }
}

static void metrics_text(str_buf_t *b)
{
    metrics_requests(b);
    metrics_latency(b);
    metrics_servers(b);
    metrics_limits(b);
    metrics_cache(b);
    metrics_buffering(b);
    metric_header(b, "proxyd_connections_active", "gauge", "Open client connections.");
    str_printf(b, "proxyd_connections_active %llu\n", (unsigned long long)sum_field(offsetof(worker_stats_t, conns_active)));
    metric_header(b, "proxyd_connections_total", "counter", "Client connections accepted.");
    str_printf(b, "proxyd_connections_total %llu\n", (unsigned long long)sum_field(offsetof(worker_stats_t, conns_total)));
    metric_header(b, "proxyd_connections_closed_total", "counter", "Client connections closed, by reason.");
#define CLOSE_METRIC(e, label)                                                                              \
    str_printf(b, "proxyd_connections_closed_total{reason=\"%s\"} %llu\n", label,                          \
               (unsigned long long)sum_field(offsetof(worker_stats_t, closed) + e * sizeof(uint64_t)));
    STATS_CLOSE_REASONS(CLOSE_METRIC)
#undef CLOSE_METRIC
    metrics_http2(b);
    metric_header(b, "proxyd_bytes_received_total", "counter", "Bytes read from clients.");
    str_printf(b, "proxyd_bytes_received_total %llu\n", (unsigned long long)sum_field(offsetof(worker_stats_t, bytes_in)));
    metric_header(b, "proxyd_bytes_sent_total", "counter", "Bytes written to clients.");
    str_printf(b, "proxyd_bytes_sent_total %llu\n", (unsigned long long)sum_field(offsetof(worker_stats_t, bytes_out)));
    metric_header(b, "proxyd_generation", "gauge", "Active rule-table generation.");
    str_printf(b, "proxyd_generation %lld\n", (long long)V.shm->generation);
    metric_header(b, "proxyd_workers", "gauge", "Live worker processes.");
    str_printf(b, "proxyd_workers %d\n", OPS->live_workers());
}

/* ---- requests ------------------------------------------------------------------------ */

/* One query argument, percent-decoded into out (NUL-terminated); false when absent. */
static bool query_arg(const h1_request_t *h, const char *name, char *out, size_t n)
{
    size_t nn = strlen(name);
    const char *q = h->query.p, *end = q ? q + h->query.n : NULL;
    for (const char *p = q; p && p < end;) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *e = amp ? amp : end;
        if ((size_t)(e - p) > nn && memcmp(p, name, nn) == 0 && p[nn] == '=') {
            size_t k = 0;
            for (const char *s = p + nn + 1; s < e && k + 1 < n; s++) {
                int hi, lo;
                if (*s == '%' && e - s > 2 && (hi = str_hexval(s[1])) >= 0 && (lo = str_hexval(s[2])) >= 0) {
                    out[k++] = (char)(hi * 16 + lo);
                    s += 2;
                } else {
                    out[k++] = *s == '+' ? ' ' : *s;
                }
            }
            out[k] = '\0';
            return true;
        }
        p = amp ? amp + 1 : end;
    }
    return false;
}

/* POST /cache/purge?site=NAME[&prefix=/path] */
static int cache_purge_request(const h1_request_t *h, str_buf_t *body)
{
    char site[256], prefix[1024];
    if (!query_arg(h, "site", site, sizeof(site)) || site[0] == '\0') {
        str_printf(body, "{\"error\":\"name the site: /cache/purge?site=NAME[&prefix=/path]\"}\n");
        return 400;
    }
    bool has_prefix = query_arg(h, "prefix", prefix, sizeof(prefix)) && prefix[0];
    long n = cache_purge(&V.table->t, site, has_prefix ? prefix : NULL);
    if (n < 0) {
        STR_APPEND_LIT(body, "{\"error\":\"no site named ");
        str_json_escape(body, site, strlen(site), SIZE_MAX);
        STR_APPEND_LIT(body, "\"}\n");
        return 404;
    }
    str_printf(body, "{\"purged\":%ld}\n", n);
    return 200;
}

static void reply(admin_conn_t *a, int status, const char *ctype, str_buf_t *body)
{
    str_printf(&a->out, "HTTP/1.1 %d %s\r\nServer: proxyd\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                        "Connection: close\r\n\r\n",
               status, status == 200 ? "OK" : status == 404 ? "Not Found" : status == 400 ? "Bad Request" : status == 405 ? "Method Not Allowed"
                                                                          : status == 503 ? "Service Unavailable"
                                                                                          : "Error",
               ctype, body->len);
    str_append(&a->out, body->p, body->len);
}

/* A failed POST: {"error": "..."}, status 500. */
static int error_body(str_buf_t *b, const char *err)
{
    STR_APPEND_LIT(b, "{\"error\":\"");
    str_json_escape(b, err, strlen(err), SIZE_MAX);
    STR_APPEND_LIT(b, "\"}\n");
    return 500;
}

static void route(admin_conn_t *a, const h1_request_t *h)
{
    OPS->view(&V);
    str_buf_t body = {0};
    int status = 200;
    const char *ctype = "application/json";
    bool get = h->method_id == H1_METHOD_GET, post = h->method_id == H1_METHOD_POST;
#define PATH_IS(s) (h->path.n == strlen(s) && memcmp(h->path.p, s, h->path.n) == 0)
    if (PATH_IS("/metrics") && get) {
        ctype = "text/plain; version=0.0.4";
        metrics_text(&body);
    } else if (a->metrics_only) {
        status = 404;
        str_printf(&body, "{\"error\":\"only /metrics is served here\"}\n");
    } else if (PATH_IS("/status") && get) {
        status_json(&body);
    } else if (PATH_IS("/health") && get) {
        bool ok = OPS->live_workers() == V.nworkers && V.shm->generation > 0;
        status = ok ? 200 : 503;
        str_printf(&body, "{\"healthy\":%s,\"workers\":%d,\"generation\":%lld}\n", ok ? "true" : "false",
                   OPS->live_workers(), (long long)V.shm->generation);
    } else if (PATH_IS("/reload") && post) {
        char err[256];
        if (OPS->reload(err, sizeof(err)) == 0)
            str_printf(&body, "{\"generation\":%lld}\n", (long long)V.shm->generation);
        else
            status = error_body(&body, err);
    } else if (PATH_IS("/challenges") && post) {
        char err[256];
        int n = OPS->challenges(err, sizeof(err));
        if (n >= 0)
            str_printf(&body, "{\"challenges\":%d}\n", n);
        else
            status = error_body(&body, err);
    } else if (PATH_IS("/cache/stats") && get) {
        cache_stats_json(&V.table->t, &body);
    } else if (PATH_IS("/cache/purge") && post) {
        status = cache_purge_request(h, &body);
    } else if (PATH_IS("/status") || PATH_IS("/metrics") || PATH_IS("/health") || PATH_IS("/reload") ||
               PATH_IS("/challenges") || PATH_IS("/cache/stats") || PATH_IS("/cache/purge")) {
        status = 405;
        str_printf(&body, "{\"error\":\"method not allowed\"}\n");
    } else {
        status = 404;
        str_printf(&body, "{\"error\":\"unknown path\"}\n");
    }
#undef PATH_IS
    reply(a, status, ctype, &body);
    str_buf_free(&body);
}

static void on_conn(ev_loop_t *l, ev_io_t *io, uint32_t revents)
{
    admin_conn_t *a = (admin_conn_t *)io;
    (void)l;
    if (a->out.len == 0 && (revents & EV_READ)) {
        ssize_t n = read(io->fd, a->in + a->inlen, sizeof(a->in) - a->inlen);
        if (n <= 0 && !(n < 0 && errno == EAGAIN)) {
            conn_done(a);
            return;
        }
        if (n > 0)
            a->inlen += (size_t)n;
        static h1_request_t h;
        int rc = h1_parse_request(a->in, a->inlen, &h, NULL);
        if (rc == 0 && a->inlen < sizeof(a->in))
            return;
        if (rc <= 0) {
            str_buf_t body = {0};
            str_printf(&body, "{\"error\":\"bad request\"}\n");
            reply(a, 400, "application/json", &body);
            str_buf_free(&body);
        } else {
            route(a, &h);
        }
        ev_set(loop, io, EV_WRITE);
    }
    if (a->out.len) {
        ssize_t n = write(io->fd, a->out.p + a->sent, a->out.len - a->sent);
        if (n > 0)
            a->sent += (size_t)n;
        if ((n < 0 && errno != EAGAIN) || a->sent == a->out.len)
            conn_done(a);
    }
}

static void on_timeout(ev_loop_t *l, ev_timer_t *t)
{
    (void)l;
    conn_done((admin_conn_t *)((char *)t - offsetof(admin_conn_t, timer)));
}

static void on_accept(ev_loop_t *l, ev_io_t *io, uint32_t revents)
{
    admin_listener_t *al = (admin_listener_t *)io;
    (void)revents;
    for (;;) {
        int fd = accept4(io->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        admin_conn_t *a = calloc(1, sizeof(*a));
        if (a == NULL || ev_add(l, &a->io, fd, EV_READ, on_conn) < 0) {
            free(a);
            close(fd);
            continue;
        }
        a->metrics_only = al->metrics_only;
        a->next = open_conns;
        if (open_conns)
            open_conns->prev = a;
        open_conns = a;
        ev_timer_start(l, &a->timer, 10000, on_timeout);
    }
}

static int bind_unix(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path)) {
        log_err("admin socket path %s is longer than %zu bytes", path, sizeof(sa.sun_path) - 1);
        return -1;
    }
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    if (mkdir_parents(path, 0750, NULL, 0) < 0) {
        log_err("admin socket %s: cannot create its directory: %s", path, strerror(errno));
        return -1;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    /* A socket file nobody answers on is left from a crash: replace it. */
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
        log_err("admin socket %s: another proxyd answers there", path);
        close(fd);
        return -1;
    }
    unlink(path);
    mode_t old = umask(0117);
    int rc = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    umask(old);
    if (rc < 0 || listen(fd, 64) < 0) {
        log_err("admin socket %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    snprintf(sock_path, sizeof(sock_path), "%s", path);
    return fd;
}


/* An fd number handed over by the previous master in an environment variable. */
static int inherited(const char *var)
{
    const char *v = getenv(var);
    if (v == NULL || *v == '\0')
        return -1;
    int fd = atoi(v);
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    return fd;
}

int admin_start(ev_loop_t *l, const rt_table_t *t, const admin_ops_t *ops)
{
    OPS = ops;
    OPS->view(&V);
    loop = l;
    int fd = inherited("PROXYD_ADMIN_FD");
    char *path = path_beside(V.db, rt_cstr(t, t->global->admin_socket));
    if (path == NULL)
        return -1;
    if (fd >= 0)
        snprintf(sock_path, sizeof(sock_path), "%s", path);
    else
        fd = bind_unix(path);
    free(path);
    if (fd < 0 || ev_add(l, &unix_l.io, fd, EV_READ, on_accept) < 0)
        return -1;
    for (uint32_t i = 0; i < t->global->listens.count; i++) {
        const rt_listen_t *ls = &t->listens[t->global->listens.first + i];
        if (ls->kind != RT_LISTEN_METRICS)
            continue;
        int mfd = inherited("PROXYD_METRICS_FD");
        if (mfd < 0)
            mfd = net_listen(t, ls, 64);
        if (mfd < 0) {
            log_err("metrics_listen %s: %s", rt_cstr(t, ls->sa.addr), strerror(errno));
            return -1;
        }
        tcp_l.metrics_only = true;
        ev_add(l, &tcp_l.io, mfd, EV_READ, on_accept);
    }
    return 0;
}

int admin_fds(int *unix_fd, int *metrics_fd)
{
    *unix_fd = unix_l.io.fd;
    *metrics_fd = tcp_l.io.fd;
    return 0;
}

void admin_stop(bool keep_path)
{
    if (unix_l.io.fd >= 0) {
        ev_del(loop, &unix_l.io);
        close(unix_l.io.fd);
        unix_l.io.fd = -1;
        if (!keep_path)
            unlink(sock_path);
    }
    if (tcp_l.io.fd >= 0) {
        ev_del(loop, &tcp_l.io);
        close(tcp_l.io.fd);
        tcp_l.io.fd = -1;
    }
}

void admin_close_in_child(void)
{
    for (admin_conn_t *a = open_conns; a; a = a->next)
        close(a->io.fd); /* or the client waits for an answer the master sent long ago */
    if (unix_l.io.fd >= 0)
        close(unix_l.io.fd);
    if (tcp_l.io.fd >= 0)
        close(tcp_l.io.fd);
}

/*
 * cmd_admin.c - reload, status and health: HTTP requests to proxyd's admin
 * unix socket.  When nothing answers there, proxyd is not running: say so
 * and exit 3.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "../common/ruletable.h"
#include "../common/str.h"
#include "../common/util.h"
#include "cli.h"

#include <jansson.h>

static char *admin_path(cli_t *cli)
{
    store_t st;
    if (cli_open_store(cli, &st, STORE_RDONLY) < 0)
        return NULL;
    uint8_t *blob = NULL;
    size_t len;
    int64_t id;
    rt_table_t t;
    char why[256], *path = NULL;
    if (store_active(&st, &id, &blob, &len) < 0 || blob == NULL)
        fprintf(stderr, "proxyctl: %s\n", blob ? st.err : "the store has no active generation");
    else if (rt_open(&t, blob, len, why, sizeof(why)) < 0)
        fprintf(stderr, "proxyctl: generation %lld: %s\n", (long long)id, why);
    else
        path = path_beside(cli->db, rt_cstr(&t, t.global->admin_socket));
    free(blob);
    store_close(&st);
    return path;
}

/* One request, the whole response into out (NUL-terminated, growing as the
 * answer needs: /status of 10,000 sites is several MiB); returns the status
 * code or -1. */
static int admin_request(const char *path, const char *method, const char *target, str_buf_t *out)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    /* A master that accepts but never answers counts as not running (keepalived's
     * track script must get its answer within its own timeout). */
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    char req[256];
    int n = snprintf(req, sizeof(req), "%s %s HTTP/1.1\r\nHost: proxyd\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                     method, target);
    if (write(fd, req, (size_t)n) == n) {
        ssize_t r;
        do {
            str_reserve(out, 65536);
            r = read(fd, out->p + out->len, out->cap - out->len - 1);
            if (r > 0)
                out->len += (size_t)r;
        } while (r > 0);
    }
    close(fd);
    str_reserve(out, 1);
    out->p[out->len] = '\0';
    if (out->len < 12 || strncmp((const char *)out->p, "HTTP/1.", 7) != 0) {
        errno = EPROTO;
        return -1;
    }
    return atoi((const char *)out->p + 9);
}

/* One admin request; a 200's body into *out (malloc'd, NUL-terminated)
 * when out is given, else printed when print_body.  Anything else is
 * reported on stderr and EXIT_RUNTIME. */
static int call_into(cli_t *cli, const char *method, const char *target, int print_body, char **out)
{
    char *path = admin_path(cli);
    if (path == NULL)
        return EXIT_RUNTIME;
    str_buf_t resp = {0};
    int status = admin_request(path, method, target, &resp);
    const char *body = resp.p ? strstr((const char *)resp.p, "\r\n\r\n") : NULL;
    int rc = EXIT_OK;
    if (status < 0) {
        fprintf(stderr, "proxyctl: proxyd is not running (no answer on admin socket %s: %s)\n", path, strerror(errno));
        rc = EXIT_RUNTIME;
    } else if (status != 200) {
        fprintf(stderr, "proxyctl: proxyd answered %d: %s\n", status, body ? body + 4 : "");
        rc = EXIT_RUNTIME;
    } else if (out) {
        *out = strdup(body ? body + 4 : "");
    } else if (print_body) {
        fputs(body ? body + 4 : "", stdout);
    }
    str_buf_free(&resp);
    free(path);
    return rc;
}

static int call(cli_t *cli, const char *method, const char *target, int print_body)
{
    return call_into(cli, method, target, print_body, NULL);
}

int cmd_reload(cli_t *cli, int argc, char **argv)
{
    int bad = cli_arity(find_command("reload"), argc, argv, 0, 0, "");
    if (bad)
        return bad;
    int rc = call(cli, "POST", "/reload", 0);
    if (rc == EXIT_OK)
        printf("proxyd reloaded\n");
    return rc;
}

static uint64_t jnum(const json_t *o, const char *k) { return (uint64_t)json_integer_value(json_object_get(o, k)); }

static const char *jstr(const json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

/* Workers alive, and connections and requests, from /status. */
static void summary_workers(const json_t *j)
{
    const json_t *ws = json_object_get(j, "workers");
    size_t alive = 0;
    for (size_t i = 0; i < json_array_size(ws); i++)
        alive += json_is_true(json_object_get(json_array_get(ws, i), "alive"));
    printf("workers:     %zu of %zu alive\n", alive, json_array_size(ws));
    printf("connections: %llu open, %llu requests served\n", (unsigned long long)jnum(j, "connections"),
           (unsigned long long)jnum(j, "requests"));
}

/* One line for a server that is not up. */
static void summary_down(const json_t *u, const json_t *sv)
{
    if (strcmp(jstr(sv, "state"), "up") == 0)
        return;
    const json_t *hc = json_object_get(sv, "check");
    printf("  down: site %s, upstream %s, server %s", jstr(u, "site"), jstr(u, "upstream"), jstr(sv, "address"));
    if (hc && *jstr(hc, "last_error"))
        printf(" (health check: %s)", jstr(hc, "last_error"));
    else if (json_is_true(json_object_get(sv, "passive_down")))
        printf(" (failed requests; retried in %llu ms)", (unsigned long long)jnum(sv, "down_for_ms"));
    putchar('\n');
}

/* Servers up of all, then one line per server that is down. */
static void summary_upstreams(const json_t *j)
{
    const json_t *ups = json_object_get(j, "upstreams");
    size_t up = 0, all = 0;
    for (size_t i = 0; i < json_array_size(ups); i++) {
        const json_t *svs = json_object_get(json_array_get(ups, i), "servers");
        for (size_t k = 0; k < json_array_size(svs); k++, all++)
            up += strcmp(jstr(json_array_get(svs, k), "state"), "up") == 0;
    }
    printf("upstreams:   %zu of %zu server%s up\n", up, all, all == 1 ? "" : "s");
    for (size_t i = 0; i < json_array_size(ups); i++) {
        const json_t *u = json_array_get(ups, i), *svs = json_object_get(u, "servers");
        for (size_t k = 0; k < json_array_size(svs); k++)
            summary_down(u, json_array_get(svs, k));
    }
}

/* Certificates whose not_after is within 30 days, from the store. */
static void summary_certs(cli_t *cli)
{
    store_t st;
    if (store_open(&st, cli->db, STORE_RDONLY) < 0) {
        printf("certificates: cannot read the store: %s\n", st.err);
        return;
    }
    int64_t now = (int64_t)time(NULL);
    sqlite3_stmt *q = store_prepare(&st, "SELECT site, not_after FROM certificates WHERE not_after < ? ORDER BY not_after");
    int n = 0;
    if (q) {
        sqlite3_bind_int64(q, 1, now + 30 * 86400);
        while (sqlite3_step(q) == SQLITE_ROW) {
            int64_t na = sqlite3_column_int64(q, 1);
            char when[32];
            time_t t = (time_t)na;
            strftime(when, sizeof(when), "%Y-%m-%d", gmtime(&t));
            if (n++ == 0)
                printf("certificates due within 30 days:\n");
            printf("  %s: expires %s (%s%lld days%s)\n", (const char *)sqlite3_column_text(q, 0), when,
                   na < now ? "expired " : "", (long long)((na > now ? na - now : now - na) / 86400),
                   na < now ? " ago" : " left");
        }
        sqlite3_finalize(q);
    }
    if (n == 0)
        printf("certificates: none due within 30 days\n");
    store_close(&st);
}

static void summary_ha(const json_t *j)
{
    json_t *ha = json_object_get(j, "ha");
    if (ha == NULL) {
        printf("ha:          not in a pair (no ha block in proxy.yaml)\n");
        return;
    }
    json_t *peer = json_object_get(ha, "peer");
    printf("ha:          node %s, role %s; peer %s %s", jstr(ha, "node"), *jstr(ha, "role") ? jstr(ha, "role") : "unknown",
           *jstr(peer, "node") ? jstr(peer, "node") : "(not reached)", jstr(peer, "address"));
    if (*jstr(peer, "role"))
        printf(" (%s)", jstr(peer, "role"));
    putchar('\n');
    if (*jstr(ha, "last_error"))
        printf("  replication: %s\n", jstr(ha, "last_error"));
}

/* status without --json: the same facts, one line each. */
static int status_summary(cli_t *cli)
{
    char *body = NULL;
    int rc = call_into(cli, "GET", "/status", 0, &body);
    if (rc != EXIT_OK)
        return rc;
    json_error_t je;
    json_t *j = json_loads(body, 0, &je);
    free(body);
    if (!json_is_object(j)) {
        fprintf(stderr, "proxyctl: proxyd's /status is not JSON: %s\n", je.text);
        json_decref(j);
        return EXIT_RUNTIME;
    }
    uint64_t up = jnum(j, "uptime_s");
    printf("proxyd:      pid %llu, up %llud%02lluh%02llum, %llu reload%s\n", (unsigned long long)jnum(j, "pid"),
           (unsigned long long)(up / 86400), (unsigned long long)(up / 3600 % 24), (unsigned long long)(up / 60 % 60),
           (unsigned long long)jnum(j, "reloads"), jnum(j, "reloads") == 1 ? "" : "s");
    printf("generation:  %llu (%llu site%s)\n", (unsigned long long)jnum(j, "generation"),
           (unsigned long long)jnum(j, "sites"), jnum(j, "sites") == 1 ? "" : "s");
    if (*jstr(j, "last_reload_error"))
        printf("  last reload refused: %s\n", jstr(j, "last_reload_error"));
    summary_workers(j);
    summary_upstreams(j);
    summary_certs(cli);
    summary_ha(j);
    json_decref(j);
    return EXIT_OK;
}

int cmd_status(cli_t *cli, int argc, char **argv)
{
    int bad = cli_arity(find_command("status"), argc, argv, 0, 0, "");
    if (bad)
        return bad;
    return cli->json ? call(cli, "GET", "/status", 1) : status_summary(cli);
}

int cmd_health(cli_t *cli, int argc, char **argv)
{
    int bad = cli_arity(find_command("health"), argc, argv, 0, 0, "");
    if (bad)
        return bad;
    return call(cli, "GET", "/health", 0);
}

/* ---- cache ------------------------------------------------------------------------ */

/* 1536 -> "1.5K", as a column of 10. */
static void print_size(uint64_t n)
{
    static const char units[] = "BKMGT";
    double v = (double)n;
    int u = 0;
    while (v >= 1024 && u < 4) {
        v /= 1024;
        u++;
    }
    char buf[32];
    if (u == 0)
        snprintf(buf, sizeof(buf), "%llu", (unsigned long long)n);
    else
        snprintf(buf, sizeof(buf), "%.1f%c", v, units[u]);
    printf("%-10s", buf);
}

static int cache_stats(cli_t *cli)
{
    char *body = NULL;
    int rc = call_into(cli, "GET", "/cache/stats", 0, cli->json ? NULL : &body);
    if (rc != EXIT_OK || cli->json)
        return rc == EXIT_OK ? call(cli, "GET", "/cache/stats", 1) : rc;
    json_error_t je;
    json_t *j = json_loads(body, 0, &je);
    free(body);
    json_t *zones = json_object_get(j, "zones");
    if (!json_is_array(zones)) {
        fprintf(stderr, "proxyctl: proxyd's /cache/stats is not what this proxyctl reads\n");
        json_decref(j);
        return EXIT_RUNTIME;
    }
    if (json_array_size(zones) == 0)
        printf("no cache zones (proxy.yaml cache_zones)\n");
    else
        printf("%-16s %10s %-10s %-10s %9s %10s %10s %8s %9s  %s\n", "ZONE", "ENTRIES", "SIZE", "MAX_SIZE", "HIT_RATIO",
               "HITS", "MISSES", "STALE", "EVICTED", "PATH");
    size_t i;
    json_t *z;
    json_array_foreach(zones, i, z) {
        printf("%-16s %10llu ", json_string_value(json_object_get(z, "name")), (unsigned long long)jnum(z, "entries"));
        print_size(jnum(z, "size"));
        putchar(' ');
        print_size(jnum(z, "max_size"));
        printf(" %8.1f%% %10llu %10llu %8llu %9llu  %s%s\n", 100 * json_number_value(json_object_get(z, "hit_ratio")),
               (unsigned long long)jnum(z, "hits"), (unsigned long long)jnum(z, "misses"),
               (unsigned long long)jnum(z, "stale"), (unsigned long long)jnum(z, "evictions"),
               json_string_value(json_object_get(z, "path")),
               json_is_true(json_object_get(z, "loading")) ? " (index being rebuilt from disk)" : "");
    }
    json_decref(j);
    return EXIT_OK;
}

/* Percent-encode a query value. */
static void query_value(str_buf_t *b, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || strchr("-._~/", c))
            str_append(b, (const char *)&c, 1);
        else
            str_printf(b, "%%%02X", c);
    }
}

/* A site name the store does not have: say so, with a suggestion, before
 * asking proxyd (EXIT_INVALID); 0 when it has it or cannot be read. */
static int unknown_site(cli_t *cli, const char *site)
{
    store_t st;
    if (store_open(&st, cli->db, STORE_RDONLY) < 0) {
        store_close(&st);
        return 0;
    }
    sqlite3_stmt *q = store_prepare(&st, "SELECT 1 FROM sites WHERE name = ?");
    int rc = 0;
    if (q && sqlite3_bind_text(q, 1, site, -1, SQLITE_STATIC) == SQLITE_OK && sqlite3_step(q) == SQLITE_DONE)
        rc = cli_no_site(&st, site);
    sqlite3_finalize(q);
    store_close(&st);
    return rc;
}

static int cache_purge_cmd(cli_t *cli, const char *site, const char *prefix)
{
    int bad = unknown_site(cli, site);
    if (bad)
        return bad;
    str_buf_t t = {0};
    STR_APPEND_LIT(&t, "/cache/purge?site=");
    query_value(&t, site);
    if (prefix) {
        STR_APPEND_LIT(&t, "&prefix=");
        query_value(&t, prefix);
    }
    str_append(&t, "", 1); /* the target is a C string */
    char *body = NULL;
    int rc = call_into(cli, "POST", (const char *)t.p, 0, &body);
    str_buf_free(&t);
    if (rc != EXIT_OK)
        return rc;
    json_error_t je;
    json_t *j = json_loads(body, 0, &je);
    if (cli->json)
        fputs(body, stdout);
    else
    {
        unsigned long long n = (unsigned long long)json_integer_value(json_object_get(j, "purged"));
        printf("purged %llu %s of site %s%s%s\n", n, n == 1 ? "entry" : "entries", site, prefix ? " under " : "",
               prefix ? prefix : "");
    }
    json_decref(j);
    free(body);
    return EXIT_OK;
}

int cmd_cache(cli_t *cli, int argc, char **argv)
{
    int n = argc - (cli->json ? 1 : 0); /* --json stays in argv */
    const char *args[4] = {0};
    int k = 0;
    for (int i = 1; i < argc && k < 4; i++)
        if (strcmp(argv[i], "--json") != 0)
            args[k++] = argv[i];
    if (k == 0)
        return cli_usage(find_command("cache"), "missing SUBCOMMAND (stats or purge)");
    if (strcmp(args[0], "stats") == 0)
        return n == 2 ? cache_stats(cli) : cli_usage(find_command("cache stats"), "unexpected argument '%s'", args[1]);
    if (strcmp(args[0], "purge") == 0) {
        if (n < 3)
            return cli_usage(find_command("cache purge"), "missing SITE");
        if (n > 4)
            return cli_usage(find_command("cache purge"), "unexpected argument '%s'", args[3]);
        return cache_purge_cmd(cli, args[1], n == 4 ? args[2] : NULL);
    }
    static const char *const subs[] = {"stats", "purge"};
    const char *s = diag_suggest(args[0], subs, 2);
    return s ? cli_usage(find_command("cache"), "unknown subcommand '%s' (did you mean '%s'?)", args[0], s)
             : cli_usage(find_command("cache"), "unknown subcommand '%s'", args[0]);
}

/*
 * build.c - from stored sources to an active generation.
 *
 * Every command that changes sites ends here, inside its own BEGIN IMMEDIATE
 * transaction: all sources are parsed and checked together (so a new site is
 * checked against every stored one), compiled, verified by the same reader
 * proxyd uses, and stored with the sources they came from.  Nothing invalid
 * is stored: on any diagnostic the caller rolls back.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "../common/ha.h"
#include "../common/ruletable.h"
#include "../common/str.h"
#include "cli.h"
#include "certs.h"
#include "config.h"

void site_list_add(site_list_t *l, const char *name, const char *yaml, const char *source)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 16;
        l->v = realloc(l->v, l->cap * sizeof(*l->v));
        if (l->v == NULL)
            abort();
    }
    site_src_t *s = &l->v[l->n++];
    s->name = strdup(name ? name : "");
    s->yaml = strdup(yaml);
    s->source = strdup(source);
    if (!s->name || !s->yaml || !s->source)
        abort();
}

static void site_src_free(site_src_t *s)
{
    free(s->name);
    free(s->yaml);
    free(s->source);
}

int site_list_remove(site_list_t *l, const char *name)
{
    for (size_t i = 0; i < l->n; i++) {
        if (strcmp(l->v[i].name, name) != 0)
            continue;
        site_src_free(&l->v[i]);
        memmove(&l->v[i], &l->v[i + 1], (l->n - i - 1) * sizeof(*l->v));
        l->n--;
        return 1;
    }
    return 0;
}

void site_list_free(site_list_t *l)
{
    for (size_t i = 0; i < l->n; i++)
        site_src_free(&l->v[i]);
    free(l->v);
    memset(l, 0, sizeof(*l));
}

int cli_open_store(cli_t *cli, store_t *st, int flags)
{
    if (store_open(st, cli->db, flags) < 0) {
        fprintf(stderr, "proxyctl: %s\n", st->err);
        return -1;
    }
    int from;
    if (!(flags & STORE_RDONLY) && !(flags & STORE_CREATE)) {
        /* Existing stores are migrated on first write by a newer proxyctl. */
        if (store_migrate(st, &from) < 0) {
            fprintf(stderr, "proxyctl: %s\n", st->err);
            store_close(st);
            return -1;
        }
    }
    return 0;
}

int cli_load_sites(store_t *st, site_list_t *out)
{
    sqlite3_stmt *q = store_prepare(st, "SELECT name, yaml, source FROM sites ORDER BY name");
    if (q == NULL)
        return -1;
    int rc;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW)
        site_list_add(out, (const char *)sqlite3_column_text(q, 0), (const char *)sqlite3_column_text(q, 1),
                      (const char *)sqlite3_column_text(q, 2));
    sqlite3_finalize(q);
    if (rc != SQLITE_DONE) {
        snprintf(st->err, sizeof(st->err), "store %s: cannot read sites: %s", st->path, sqlite3_errmsg(st->db));
        return -1;
    }
    return 0;
}

int cli_load_global(store_t *st, char **yaml, char **source)
{
    if (store_get_setting(st, "global_yaml", yaml) < 0 || store_get_setting(st, "global_source", source) < 0)
        return -1;
    return 0;
}

static int put_site(store_t *st, const site_src_t *s)
{
    char hex[65];
    store_digest_hex(s->yaml, strlen(s->yaml), hex);
    sqlite3_stmt *q = store_prepare(st, "INSERT INTO sites (name, yaml, source, digest, updated) VALUES (?,?,?,?,?)");
    if (q == NULL)
        return -1;
    sqlite3_bind_text(q, 1, s->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 2, s->yaml, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 3, s->source, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 4, hex, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 5, (sqlite3_int64)time(NULL));
    int rc = sqlite3_step(q);
    sqlite3_finalize(q);
    if (rc != SQLITE_DONE) {
        snprintf(st->err, sizeof(st->err), "store %s: cannot store site '%s': %s", st->path, s->name,
                 sqlite3_errmsg(st->db));
        return -1;
    }
    return 0;
}

/* As root, keep the store root's own, mode 0600: it holds every private key
 * and only proxyd's master (root) reads it; the workers get what they need
 * from the master.  A store an older proxyctl handed to proxyd's user is
 * taken back here (sqlite's -wal and -shm files too). */
void cli_store_private(const char *db)
{
    if (geteuid() != 0)
        return;
    static const char *const ext[] = {"", "-wal", "-shm"};
    char path[4096];
    for (size_t i = 0; i < 3; i++) {
        snprintf(path, sizeof(path), "%s%s", db, ext[i]);
        struct stat sb;
        if (lstat(path, &sb) < 0 || !S_ISREG(sb.st_mode))
            continue;
        if ((sb.st_uid != 0 || sb.st_gid != 0) && chown(path, 0, 0) < 0)
            fprintf(stderr, "proxyctl: cannot give %s back to root: %s\n", path, strerror(errno));
        if ((sb.st_mode & 07777) != 0600 && chmod(path, 0600) < 0)
            fprintf(stderr, "proxyctl: cannot make %s mode 0600: %s\n", path, strerror(errno));
    }
}

int store_put_sites(store_t *st, site_list_t *sites, const char *gyaml, const char *gsource)
{
    if (store_exec(st, "DELETE FROM sites") < 0)
        return -1;
    for (size_t i = 0; i < sites->n; i++)
        if (put_site(st, &sites->v[i]) < 0)
            return -1;
    if (store_set_setting(st, "global_yaml", gyaml ? gyaml : "") < 0 ||
        store_set_setting(st, "global_source", gsource ? gsource : "") < 0)
        return -1;
    return 0;
}

static int record_sources(store_t *st, int64_t gen, const site_list_t *sites)
{
    sqlite3_stmt *q = store_prepare(st, "INSERT INTO generation_sites (generation, name, yaml, source) VALUES (?,?,?,?)");
    if (q == NULL)
        return -1;
    for (size_t i = 0; i < sites->n; i++) {
        sqlite3_reset(q);
        sqlite3_bind_int64(q, 1, gen);
        sqlite3_bind_text(q, 2, sites->v[i].name, -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 3, sites->v[i].yaml, -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 4, sites->v[i].source, -1, SQLITE_STATIC);
        if (sqlite3_step(q) != SQLITE_DONE) {
            snprintf(st->err, sizeof(st->err), "store %s: cannot record sources: %s", st->path, sqlite3_errmsg(st->db));
            sqlite3_finalize(q);
            return -1;
        }
    }
    sqlite3_finalize(q);
    return 0;
}

/* The active generation's id when its table is byte-identical to blob
 * (digests equal), else 0. */
static int64_t active_with_digest(store_t *st, const uint8_t *blob, size_t len)
{
    char hex[65];
    store_digest_hex(blob, len, hex);
    sqlite3_stmt *q = store_prepare(st, "SELECT id FROM generations WHERE active = 1 AND digest = ?");
    int64_t id = 0;
    if (q && sqlite3_bind_text(q, 1, hex, -1, SQLITE_STATIC) == SQLITE_OK && sqlite3_step(q) == SQLITE_ROW)
        id = sqlite3_column_int64(q, 0);
    sqlite3_finalize(q);
    return id;
}

/* The table is the active one's: keep that generation, with these sources
 * (they may differ in comments or layout) so that rollback restores them. */
static int keep_generation(store_t *st, int64_t gen, const site_list_t *sites, const char *gyaml)
{
    sqlite3_stmt *q = store_prepare(st, "DELETE FROM generation_sites WHERE generation = ?");
    if (q == NULL)
        return -1;
    sqlite3_bind_int64(q, 1, gen);
    int rc = sqlite3_step(q) == SQLITE_DONE ? 0 : -1;
    sqlite3_finalize(q);
    q = rc == 0 ? store_prepare(st, "UPDATE generations SET global_yaml = ? WHERE id = ?") : NULL;
    if (q) {
        sqlite3_bind_text(q, 1, gyaml ? gyaml : "", -1, SQLITE_STATIC);
        sqlite3_bind_int64(q, 2, gen);
        rc = sqlite3_step(q) == SQLITE_DONE ? 0 : -1;
        sqlite3_finalize(q);
    }
    if (rc < 0 || q == NULL) {
        snprintf(st->err, sizeof(st->err), "store %s: cannot update generation %lld: %s", st->path, (long long)gen,
                 sqlite3_errmsg(st->db));
        return -1;
    }
    return record_sources(st, gen, sites);
}

static int compile_and_store(store_t *st, cfg_global_t *g, cfg_site_t **parsed, site_list_t *sites,
                             const char *comment, const char *gyaml, int64_t *gen, size_t *table_size, bool *unchanged)
{
    uint8_t *blob = NULL;
    size_t len = 0;
    rt_table_t t;
    char why[256];
    int rc = EXIT_RUNTIME;
    if (compile_table(g, parsed, sites->n, &blob, &len) < 0) {
        snprintf(st->err, sizeof(st->err), "rule table too large");
        goto out;
    }
    /* Never store what proxyd would refuse. */
    if (rt_open(&t, blob, len, why, sizeof(why)) < 0) {
        snprintf(st->err, sizeof(st->err), "internal error: compiled table fails verification: %s", why);
        goto out;
    }
    for (size_t i = 0; i < sites->n; i++) {
        if (parsed[i]->cert_mode == RT_CERT_FILE && certs_import_files(st, parsed[i]) < 0)
            goto out;
        if (certs_ensure(st, parsed[i]) < 0)
            goto out;
    }
    *table_size = len;
    if (unchanged && (*gen = active_with_digest(st, blob, len)) != 0) {
        *unchanged = true;
        rc = keep_generation(st, *gen, sites, gyaml) < 0 ? EXIT_RUNTIME : EXIT_OK;
        goto out;
    }
    if (store_add_generation(st, blob, len, comment, gyaml, gen) < 0 || record_sources(st, *gen, sites) < 0 ||
        certs_prune(st, *gen) < 0)
        goto out;
    rc = EXIT_OK;
out:
    free(blob);
    return rc;
}

int build_generation(store_t *st, const char *gyaml, const char *gsource, site_list_t *sites, const char *comment,
                     diag_t *d, int64_t *gen, size_t *table_size, bool *unchanged)
{
    arena_t a;
    arena_init(&a, 1 << 16);
    cfg_site_t **parsed = calloc(sites->n + 1, sizeof(*parsed));
    if (parsed == NULL)
        abort();
    int rc = EXIT_INVALID;
    cfg_global_t *g = config_global(&a, gsource && *gsource ? gsource : "proxy.yaml", gyaml && *gyaml ? gyaml : NULL, d);
    for (size_t i = 0; i < sites->n; i++)
        parsed[i] = config_site(&a, sites->v[i].source, sites->v[i].yaml, d);
    if (g == NULL || d->errors)
        goto out;
    check_sites(g, parsed, sites->n, d);
    if (d->errors)
        goto out;
    for (size_t i = 0; i < sites->n; i++) {
        free(sites->v[i].name);
        sites->v[i].name = strdup(parsed[i]->name.s);
    }
    /* The node-local ha block is kept beside, for proxyd's replication. */
    if (ha_conf_save(st, g->has_ha ? g->ha_node : NULL, g->ha_peer, g->ha_listen) < 0) {
        fprintf(stderr, "proxyctl: %s\n", st->err);
        rc = EXIT_RUNTIME;
        goto out;
    }
    if (unchanged)
        *unchanged = false;
    rc = compile_and_store(st, g, parsed, sites, comment, gyaml, gen, table_size, unchanged);
    if (rc == EXIT_OK)
        cli_store_private(st->path);
out:
    free(parsed);
    arena_free(&a);
    return rc;
}

/* The admin socket path of the active generation (or the default). */
static char *admin_socket_path(store_t *st)
{
    uint8_t *blob;
    size_t len;
    int64_t id;
    rt_table_t t;
    char why[128], *path = NULL;
    if (store_active(st, &id, &blob, &len) == 0 && blob && rt_open(&t, blob, len, why, sizeof(why)) == 0)
        path = path_beside(st->path, rt_cstr(&t, t.global->admin_socket));
    free(blob);
    return path;
}

/* POST target on the admin socket of the running proxyd: its status, 0 when
 * none runs (no socket, or nobody listening on it). */
static int admin_post(store_t *st, const char *target, char **path)
{
    *path = admin_socket_path(st);
    if (*path == NULL)
        return 0;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", *path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int status = 0;
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
        char req[256], resp[512];
        int len = snprintf(req, sizeof(req), "POST %s HTTP/1.1\r\nHost: proxyd\r\nContent-Length: 0\r\n"
                                             "Connection: close\r\n\r\n", target);
        ssize_t n = write(fd, req, (size_t)len) == len ? read(fd, resp, sizeof(resp) - 1) : -1;
        status = n >= 12 ? atoi(resp + 9) : -1;
    }
    if (fd >= 0)
        close(fd);
    return status;
}

int cli_notify_reload(cli_t *cli, store_t *st)
{
    (void)cli;
    char *path;
    int status = admin_post(st, "/reload", &path);
    if (status != 0 && status != 200)
        fprintf(stderr, "proxyctl: proxyd refused to reload (admin socket %s)\n", path);
    free(path);
    return status == 0 || status == 200 ? 0 : -1;
}

void cli_notify_challenges(store_t *st)
{
    char *path;
    int status = admin_post(st, "/challenges", &path);
    /* A proxyd that does not know the request (an older one) still finds
     * them within a second by itself. */
    if (status != 0 && status != 200 && status != 404)
        fprintf(stderr, "proxyctl: proxyd did not take the new ACME challenges (admin socket %s, status %d)\n",
                path, status);
    free(path);
}

void cli_json_str(FILE *out, const char *s)
{
    str_buf_t b = {0};
    STR_APPEND_LIT(&b, "\"");
    str_json_escape(&b, s, strlen(s), SIZE_MAX);
    STR_APPEND_LIT(&b, "\"");
    fwrite(b.p, 1, b.len, out);
    str_buf_free(&b);
}

int site_list_unknown(const site_list_t *l, const char *name)
{
    const char **names = calloc(l->n + 1, sizeof(*names));
    if (names == NULL)
        abort();
    for (size_t i = 0; i < l->n; i++)
        names[i] = l->v[i].name;
    const char *s = diag_suggest(name, names, l->n);
    if (s)
        fprintf(stderr, "proxyctl: no site named '%s' (did you mean '%s'?)\n", name, s);
    else
        fprintf(stderr, "proxyctl: no site named '%s'%s\n", name, l->n ? "" : " (the store has no sites)");
    free(names);
    return EXIT_INVALID;
}

int cli_no_site(store_t *st, const char *name)
{
    site_list_t l = {0};
    cli_load_sites(st, &l);
    site_list_unknown(&l, name);
    site_list_free(&l);
    return EXIT_INVALID;
}

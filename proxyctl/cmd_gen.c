/*
 * cmd_gen.c - generations, rollback and dump.
 *
 * rollback never rewrites history: it adds a new generation whose table is
 * byte-for-byte GEN's and restores the site sources GEN was compiled from,
 * and the certificates GEN's sites need (made again when deleted since).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/ruletable.h"
#include "certs.h"
#include "cli.h"
#include "dump.h"

static void iso_time(time_t t, char out[32]) { strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", gmtime(&t)); }

/* generations prune --keep N */
static int generations_prune(cli_t *cli, int argc, char **argv)
{
    const command_t *self = find_command("generations prune");
    long long keep = 0;
    char *end = NULL;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--keep") == 0 && i + 1 < argc) {
            keep = strtoll(argv[++i], &end, 10);
            if (*argv[i] == '\0' || *end != '\0' || keep < 1)
                return cli_usage(self, "--keep needs a number of generations, at least 1, not '%s'", argv[i]);
        } else {
            return cli_usage(self, "unexpected argument '%s'", argv[i]);
        }
    }
    if (keep == 0)
        return cli_usage(self, "missing --keep N");
    store_t st;
    if (cli_open_store(cli, &st, 0) < 0)
        return EXIT_RUNTIME;
    int64_t deleted = 0, left = 0;
    char what[96];
    snprintf(what, sizeof(what), "generations pruned to the newest %lld", keep);
    sqlite3_stmt *q = NULL;
    int rc = EXIT_RUNTIME;
    if (store_begin(&st) < 0 || store_prune_generations(&st, keep, &deleted) < 0 ||
        store_event(&st, cli->cmdline, what, 0) < 0 || (q = store_prepare(&st, "SELECT count(*) FROM generations")) == NULL ||
        sqlite3_step(q) != SQLITE_ROW)
        goto out;
    left = sqlite3_column_int64(q, 0);
    if (store_commit(&st) < 0)
        goto out;
    printf("deleted %lld generation%s; %lld left\n", (long long)deleted, deleted == 1 ? "" : "s", (long long)left);
    rc = EXIT_OK;
out:
    if (rc != EXIT_OK) {
        fprintf(stderr, "proxyctl: %s\n", st.err);
        store_rollback(&st);
    }
    sqlite3_finalize(q);
    store_close(&st);
    return rc;
}

int cmd_generations(cli_t *cli, int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "prune") == 0)
        return generations_prune(cli, argc, argv);
    int bad = cli_arity(find_command("generations"), argc, argv, 0, 0, "");
    if (bad)
        return bad;
    store_t st;
    if (cli_open_store(cli, &st, STORE_RDONLY) < 0)
        return EXIT_RUNTIME;
    sqlite3_stmt *q = store_prepare(&st, "SELECT g.id, g.created, g.active, length(g.blob), g.digest, g.comment, "
                                         "(SELECT count(*) FROM generation_sites s WHERE s.generation = g.id) "
                                         "FROM generations g ORDER BY g.id");
    if (q == NULL) {
        fprintf(stderr, "proxyctl: %s\n", st.err);
        store_close(&st);
        return EXIT_RUNTIME;
    }
    int first = 1;
    if (cli->json)
        printf("[");
    else
        printf("%-6s %-1s %-20s %6s %9s %-12s %s\n", "GEN", "", "CREATED", "SITES", "BYTES", "DIGEST", "COMMAND");
    while (sqlite3_step(q) == SQLITE_ROW) {
        char ts[32];
        iso_time((time_t)sqlite3_column_int64(q, 1), ts);
        long long id = sqlite3_column_int64(q, 0), size = sqlite3_column_int64(q, 3), nsites = sqlite3_column_int64(q, 6);
        int active = sqlite3_column_int(q, 2);
        const char *digest = (const char *)sqlite3_column_text(q, 4), *comment = (const char *)sqlite3_column_text(q, 5);
        if (cli->json)
            printf("%s{\"id\":%lld,\"created\":\"%s\",\"active\":%s,\"sites\":%lld,\"bytes\":%lld,\"digest\":\"%s\"}",
                   first ? "" : ",", id, ts, active ? "true" : "false", nsites, size, digest);
        else
            printf("%-6lld %-1s %-20s %6lld %9lld %.12s %s\n", id, active ? "*" : "", ts, nsites, size, digest, comment);
        first = 0;
    }
    if (cli->json)
        printf("]\n");
    sqlite3_finalize(q);
    store_close(&st);
    return EXIT_OK;
}

static int parse_gen(const char *s, int64_t *gen)
{
    char *end;
    long long v = strtoll(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v <= 0)
        return -1;
    *gen = v;
    return 0;
}

static int64_t previous_generation(store_t *st)
{
    sqlite3_stmt *q = store_prepare(st, "SELECT max(id) FROM generations WHERE id < (SELECT id FROM generations WHERE active = 1)");
    int64_t id = 0;
    if (q && sqlite3_step(q) == SQLITE_ROW)
        id = sqlite3_column_int64(q, 0);
    sqlite3_finalize(q);
    return id;
}

static int restore_sources(store_t *st, int64_t gen, site_list_t *sites, char **gyaml)
{
    sqlite3_stmt *q = store_prepare(st, "SELECT name, yaml, source FROM generation_sites WHERE generation = ? ORDER BY name");
    if (q == NULL)
        return -1;
    sqlite3_bind_int64(q, 1, gen);
    while (sqlite3_step(q) == SQLITE_ROW)
        site_list_add(sites, (const char *)sqlite3_column_text(q, 0), (const char *)sqlite3_column_text(q, 1),
                      (const char *)sqlite3_column_text(q, 2));
    sqlite3_finalize(q);
    q = store_prepare(st, "SELECT global_yaml FROM generations WHERE id = ?");
    if (q == NULL)
        return -1;
    sqlite3_bind_int64(q, 1, gen);
    if (sqlite3_step(q) == SQLITE_ROW)
        *gyaml = strdup((const char *)sqlite3_column_text(q, 0));
    sqlite3_finalize(q);
    return *gyaml ? 0 : -1;
}

/* Does site name have a certificate row? */
static bool has_certificate(store_t *st, const char *name)
{
    sqlite3_stmt *q = store_prepare(st, "SELECT 1 FROM certificates WHERE site = ?");
    bool found = q && sqlite3_bind_text(q, 1, name, -1, SQLITE_STATIC) == SQLITE_OK && sqlite3_step(q) == SQLITE_ROW;
    sqlite3_finalize(q);
    return found;
}

/* Site i of the table rolled back to gets the certificate row it needs: a
 * self-signed or temporary one is kept if it still serves, else made anew
 * (hosts and mode are read from the table, not parsed again: an old source
 * need not pass a newer proxyctl); cert files are imported again, from the
 * paths in the restored source, when the row is gone. */
static int restore_certificate(store_t *st, const rt_table_t *t, uint32_t i, const site_list_t *sites, arena_t *a)
{
    const rt_site_t *rs = &t->sites[i];
    const char *name = rt_cstr(t, rs->name);
    if (rs->cert_mode == RT_CERT_NONE || (rs->cert_mode == RT_CERT_FILE && has_certificate(st, name)))
        return 0;
    if (rs->cert_mode == RT_CERT_FILE) {
        const site_src_t *src = NULL;
        for (size_t k = 0; k < sites->n && src == NULL; k++)
            src = strcmp(sites->v[k].name, name) == 0 ? &sites->v[k] : NULL;
        diag_t quiet = {0};
        cfg_site_t *s = src ? config_site(a, src->source, src->yaml, &quiet) : NULL;
        diag_free(&quiet);
        if (s == NULL || s->cert_mode != RT_CERT_FILE) {
            snprintf(st->err, sizeof(st->err),
                     "site '%s' has no certificate in the store and its source no longer names the certificate files",
                     name);
            return -1;
        }
        return certs_import_files(st, s);
    }
    cfg_site_t s = {.name = {{0}, arena_strdup(a, name)}, .cert_mode = rs->cert_mode, .nhosts = rs->hosts.count};
    s.hosts = arena_alloc(a, (s.nhosts + 1) * sizeof(*s.hosts));
    for (size_t k = 0; k < s.nhosts; k++)
        s.hosts[k].s = arena_strdup(a, rt_cstr(t, t->strlist[rs->hosts.first + k]));
    return certs_ensure(st, &s);
}

/* A generation proxyd can load: every TLS site of the table has its
 * certificate, though remove-site or apply may have deleted it since. */
static int restore_certificates(store_t *st, const uint8_t *blob, size_t len, const site_list_t *sites)
{
    rt_table_t t;
    char why[256];
    if (rt_open(&t, blob, len, why, sizeof(why)) < 0) {
        snprintf(st->err, sizeof(st->err), "store %s: the generation fails verification: %s", st->path, why);
        return -1;
    }
    arena_t a;
    arena_init(&a, 0);
    int rc = 0;
    for (uint32_t i = 0; i < t.nsites && rc == 0; i++)
        rc = restore_certificate(st, &t, i, sites, &a);
    arena_free(&a);
    return rc;
}

static int record_rollback(store_t *st, int64_t gen, const uint8_t *blob, size_t len, site_list_t *sites,
                           const char *gyaml, const char *gsource, cli_t *cli, int64_t *newgen)
{
    char comment[64];
    snprintf(comment, sizeof(comment), "rollback to %lld", (long long)gen);
    if (store_add_generation(st, blob, len, cli->cmdline, gyaml, newgen) < 0 ||
        store_put_sites(st, sites, gyaml, gsource) < 0 || store_event(st, cli->cmdline, comment, *newgen) < 0)
        return -1;
    sqlite3_stmt *q = store_prepare(st, "INSERT INTO generation_sites (generation, name, yaml, source) "
                                        "SELECT ?, name, yaml, source FROM generation_sites WHERE generation = ?");
    if (q == NULL)
        return -1;
    sqlite3_bind_int64(q, 1, *newgen);
    sqlite3_bind_int64(q, 2, gen);
    int rc = sqlite3_step(q) == SQLITE_DONE ? 0 : -1;
    sqlite3_finalize(q);
    if (rc == 0 && (restore_certificates(st, blob, len, sites) < 0 || certs_prune(st, *newgen) < 0))
        rc = -1;
    return rc;
}

int cmd_rollback(cli_t *cli, int argc, char **argv)
{
    int64_t gen = 0, newgen = 0;
    int bad = cli_arity(find_command("rollback"), argc, argv, 0, 1, "");
    if (bad)
        return bad;
    if (argc == 2 && parse_gen(argv[1], &gen) < 0)
        return cli_usage(find_command("rollback"), "GEN must be a generation number, not '%s'", argv[1]);
    store_t st;
    if (cli_open_store(cli, &st, 0) < 0)
        return EXIT_RUNTIME;
    site_list_t sites = {0};
    char *gyaml = NULL, *gsource = NULL;
    uint8_t *blob = NULL;
    size_t len = 0;
    int rc = EXIT_RUNTIME;
    if (store_begin(&st) < 0)
        goto fail;
    if (gen == 0 && (gen = previous_generation(&st)) == 0) {
        fprintf(stderr, "proxyctl: no generation before the active one\n");
        rc = EXIT_INVALID;
        goto out;
    }
    if (store_generation_blob(&st, gen, &blob, &len) < 0) {
        rc = EXIT_INVALID;
        goto fail;
    }
    if (restore_sources(&st, gen, &sites, &gyaml) < 0 || store_get_setting(&st, "global_source", &gsource) < 0 ||
        record_rollback(&st, gen, blob, len, &sites, gyaml, gsource, cli, &newgen) < 0 || store_commit(&st) < 0)
        goto fail;
    printf("rolled back to generation %lld; generation %lld active (%zu site%s)\n", (long long)gen, (long long)newgen,
           sites.n, sites.n == 1 ? "" : "s");
    rc = cli_notify_reload(cli, &st) < 0 ? EXIT_RUNTIME : EXIT_OK;
    goto out;
fail:
    fprintf(stderr, "proxyctl: %s\n", st.err);
out:
    store_rollback(&st);
    store_close(&st);
    site_list_free(&sites);
    free(gyaml);
    free(gsource);
    free(blob);
    return rc;
}

int cmd_dump(cli_t *cli, int argc, char **argv)
{
    int64_t gen = 0;
    int bad = cli_arity(find_command("dump"), argc, argv, 0, 1, "");
    if (bad)
        return bad;
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--json") != 0 && parse_gen(argv[i], &gen) < 0)
            return cli_usage(find_command("dump"), "GEN must be a generation number, not '%s'", argv[i]);
    store_t st;
    if (cli_open_store(cli, &st, STORE_RDONLY) < 0)
        return EXIT_RUNTIME;
    uint8_t *blob = NULL;
    size_t len = 0;
    int rc = gen ? store_generation_blob(&st, gen, &blob, &len) : store_active(&st, &gen, &blob, &len);
    if (rc < 0 || blob == NULL) {
        fprintf(stderr, "proxyctl: %s\n", rc < 0 ? st.err : "the store has no active generation");
        store_close(&st);
        return rc < 0 && strstr(st.err, "no generation") ? EXIT_INVALID : EXIT_RUNTIME;
    }
    rt_table_t t;
    char why[256];
    if (rt_open(&t, blob, len, why, sizeof(why)) < 0) {
        fprintf(stderr, "proxyctl: generation %lld: %s\n", (long long)gen, why);
        rc = EXIT_RUNTIME;
    } else {
        if (cli->json) {
            json_t *j = json_pack("{s:I,s:I}", "generation", (json_int_t)gen, "bytes", (json_int_t)len);
            json_t *table = dump_json_table(&t);
            json_object_update(j, table);
            json_decref(table);
            json_dumpf(j, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
            putchar('\n');
            json_decref(j);
        } else {
            printf("# generation %lld, %zu bytes\n", (long long)gen, len);
            dump_table(&t, stdout);
        }
        rc = EXIT_OK;
    }
    free(blob);
    store_close(&st);
    return rc;
}

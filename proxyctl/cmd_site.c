/*
 * cmd_site.c - commands that change or show the stored sites: init,
 * validate, add-site, remove-site, list-sites, show-site, apply.
 *
 * Each changing command is one transaction: load everything, apply the
 * change in memory, rebuild, store, record an event, commit.  A failure at
 * any step rolls back, so the store never holds a half change.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "../common/str.h"
#include "cli.h"
#include "config.h"
#include "yaml.h"

/* A site or global file.  Only a regular file: a FIFO would block and a
 * device never ends (read_file refuses both at once, EINVAL; a directory
 * EISDIR).  No NUL byte: libyaml would take it for the end of the text and
 * the rest of the file would be dropped without a word. */
static int read_source(const char *path, char **text)
{
    size_t len;
    *text = read_file(path, &len);
    if (*text == NULL) {
        if (errno == EISDIR || errno == EINVAL)
            fprintf(stderr, "%s: error: not a regular file\n", path);
        else
            fprintf(stderr, "%s: error: cannot read file: %s\n", path, strerror(errno));
        return -1;
    }
    const char *nul = memchr(*text, '\0', len);
    if (nul == NULL)
        return 0;
    int line = 1, col = 1; /* columns count characters, as libyaml's do */
    for (const char *p = *text; p < nul; p++) {
        if (*p == '\n')
            line++, col = 1;
        else if (((unsigned char)*p & 0xc0) != 0x80)
            col++;
    }
    fprintf(stderr, "%s:%d:%d: error: NUL byte in YAML\n", path, line, col);
    free(*text);
    *text = NULL;
    return -1;
}

/* A proxy.yaml passed where a site file goes: named so, or a mapping
 * without 'site' whose keys are global settings'. */
static bool looks_global(const char *path, const char *text)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    if (strcmp(base, "proxy.yaml") == 0 || strcmp(base, "proxy.yml") == 0)
        return true;
    static const char *const global_only[] = {"listen", "workers", "user", "admin", "trusted_proxies", "acme",
                                              "cache_zones", "rate_limit_zones", "limits", "ha", "logs", "resolver"};
    arena_t a;
    arena_init(&a, 0);
    diag_t quiet = {0};
    ynode_t *root = yaml_load(&a, path, text, strlen(text), &quiet);
    bool global = false;
    if (root && root->kind == YN_MAP && yaml_get(root, "site") == NULL)
        for (size_t i = 0; i < sizeof(global_only) / sizeof(global_only[0]) && !global; i++)
            global = yaml_get(root, global_only[i]) != NULL;
    diag_free(&quiet);
    arena_free(&a);
    return global;
}

static void global_hint(const char *cmd, const char *path)
{
    fprintf(stderr, "%s: error: this is the global settings file (proxy.yaml), not a site: use 'proxyctl %s --global %s'\n",
            path, cmd, path);
}

/* The site name a YAML text declares (NULL if it does not parse). */
static char *site_name_of(const char *file, const char *text, diag_t *d)
{
    arena_t a;
    arena_init(&a, 0);
    cfg_site_t *s = config_site(&a, file, text, d);
    char *name = s ? strdup(s->name.s) : NULL;
    arena_free(&a);
    return name;
}

static void print_diag(diag_t *d)
{
    diag_print(d, stderr);
    if (d->errors)
        fprintf(stderr, "%d error%s, %d warning%s\n", d->errors, d->errors == 1 ? "" : "s", d->warnings,
                d->warnings == 1 ? "" : "s");
}

/* Transaction: sites (already changed in memory) -> store -> generation.
 * A table identical to the active one makes no generation; a dry run
 * builds and checks everything, then rolls back. */
static int commit_change(cli_t *cli, store_t *st, site_list_t *sites, const char *gyaml, const char *gsource,
                         const char *what, bool dry_run)
{
    diag_t d = {0};
    int64_t gen = 0;
    size_t size = 0;
    bool unchanged = false;
    int rc = build_generation(st, gyaml, gsource, sites, cli->cmdline, &d, &gen, &size, &unchanged);
    print_diag(&d);
    diag_free(&d);
    if (rc == EXIT_OK && dry_run) {
        store_rollback(st);
        if (unchanged)
            printf("dry run: no change: generation %lld is already active\n", (long long)gen);
        else
            printf("dry run: valid; a new generation would be made (%zu site%s, %zu bytes); nothing stored\n",
                   sites->n, sites->n == 1 ? "" : "s", size);
        return EXIT_OK;
    }
    /* An unchanged table is still an event (the sources may differ in comments),
     * with no generation: it made none active. */
    char same[96];
    snprintf(same, sizeof(same), "no change: generation %lld is already active", (long long)gen);
    if (rc == EXIT_OK && (store_put_sites(st, sites, gyaml, gsource) < 0 ||
                          store_event(st, cli->cmdline, unchanged ? same : what, unchanged ? 0 : gen) < 0))
        rc = EXIT_RUNTIME;
    if (rc == EXIT_OK && store_commit(st) < 0)
        rc = EXIT_RUNTIME;
    if (rc != EXIT_OK) {
        if (rc == EXIT_RUNTIME)
            fprintf(stderr, "proxyctl: %s\n", st->err);
        store_rollback(st);
        return rc;
    }
    if (unchanged) {
        printf("%s\n", same);
        return EXIT_OK;
    }
    printf("%s; generation %lld active (%zu site%s, %zu bytes)\n", what, (long long)gen, sites->n,
           sites->n == 1 ? "" : "s", size);
    if (cli_notify_reload(cli, st) < 0)
        return EXIT_RUNTIME;
    return EXIT_OK;
}

/* Open the store, start the transaction, load sites and global. */
static int begin_change(cli_t *cli, store_t *st, site_list_t *sites, char **gyaml, char **gsource)
{
    if (cli_open_store(cli, st, 0) < 0)
        return EXIT_RUNTIME;
    if (store_begin(st) < 0 || cli_load_sites(st, sites) < 0 || cli_load_global(st, gyaml, gsource) < 0) {
        fprintf(stderr, "proxyctl: %s\n", st->err);
        store_rollback(st);
        store_close(st);
        return EXIT_RUNTIME;
    }
    return EXIT_OK;
}

static void end_change(store_t *st, site_list_t *sites, char *gyaml, char *gsource)
{
    site_list_free(sites);
    free(gyaml);
    free(gsource);
    store_close(st);
}

/* ---- init ----------------------------------------------------------------- */

static int parse_global_opt(int *argc, char **argv, const char **global)
{
    int out = 0;
    for (int i = 0; i < *argc; i++) {
        if (strcmp(argv[i], "--global") == 0) {
            if (i + 1 >= *argc)
                return -1;
            *global = argv[++i];
        } else if (strcmp(argv[i], "--json") != 0) {
            argv[out++] = argv[i];
        }
    }
    *argc = out;
    return 0;
}

int cmd_init(cli_t *cli, int argc, char **argv)
{
    const char *global = NULL;
    if (parse_global_opt(&argc, argv, &global) < 0 || argc != 1)
        return argc == 1 ? cli_usage(find_command("init"), "option '--global' needs a value")
                         : cli_usage(find_command("init"), "unexpected argument '%s'", argv[1]);
    char *gtext = NULL;
    if (global && read_source(global, &gtext) < 0)
        return EXIT_INVALID;
    if (mkdir_parents(cli->db, 0700, NULL, 0) < 0) {
        fprintf(stderr, "proxyctl: cannot create the directory of %s: %s\n", cli->db, strerror(errno));
        free(gtext);
        return EXIT_RUNTIME;
    }
    store_t st;
    int from = 0, rc;
    if (store_open(&st, cli->db, STORE_CREATE) < 0 || store_migrate(&st, &from) < 0) {
        fprintf(stderr, "proxyctl: %s\n", st.err);
        store_close(&st);
        free(gtext);
        return EXIT_RUNTIME;
    }
    site_list_t sites = {0};
    char *gyaml = NULL, *gsource = NULL;
    if (store_begin(&st) < 0 || cli_load_sites(&st, &sites) < 0 || cli_load_global(&st, &gyaml, &gsource) < 0) {
        fprintf(stderr, "proxyctl: %s\n", st.err);
        store_rollback(&st);
        end_change(&st, &sites, gyaml, gsource);
        free(gtext);
        return EXIT_RUNTIME;
    }
    int64_t active = 0;
    uint8_t *blob = NULL;
    size_t len;
    store_active(&st, &active, &blob, &len);
    free(blob);
    if (gtext == NULL && active) {
        store_rollback(&st);
        printf("store %s is at schema version %d (was %d); generation %lld active\n", cli->db, STORE_VERSION, from,
               (long long)active);
        rc = EXIT_OK;
    } else {
        const char *gy = gtext ? gtext : gyaml, *gs = gtext ? global : gsource;
        char what[256];
        snprintf(what, sizeof(what), "store initialised%s", gtext ? " with global settings" : "");
        rc = commit_change(cli, &st, &sites, gy, gs, what, false);
    }
    if (rc == EXIT_OK)
        cli_store_private(cli->db); /* also a store an older proxyctl gave to proxyd's user */
    end_change(&st, &sites, gyaml, gsource);
    free(gtext);
    return rc;
}

/* ---- validate ---------------------------------------------------------- */

int cmd_validate(cli_t *cli, int argc, char **argv)
{
    const char *global = NULL;
    if (parse_global_opt(&argc, argv, &global) < 0)
        return cli_usage(find_command("validate"), "option '--global' needs a value");
    if (argc < 2 && global == NULL)
        return cli_usage(find_command("validate"), "missing FILE");
    char *gtext = NULL;
    if (global && read_source(global, &gtext) < 0)
        return EXIT_INVALID;
    arena_t a;
    arena_init(&a, 1 << 16);
    diag_t d = {0};
    char *stored_g = NULL, *stored_gs = NULL;
    site_list_t stored = {0};
    store_t st;
    /* Check against the store's other sites and settings when there is one. */
    if (store_open(&st, cli->db, STORE_RDONLY) == 0) {
        cli_load_sites(&st, &stored);
        cli_load_global(&st, &stored_g, &stored_gs);
        store_close(&st);
    }
    cfg_global_t *g = config_global(&a, global ? global : stored_gs, global ? gtext : stored_g && *stored_g ? stored_g : NULL, &d);
    size_t n = (size_t)argc - 1;
    cfg_site_t **sites = calloc(n + stored.n + 1, sizeof(*sites));
    char **texts = calloc(n + 1, sizeof(*texts));
    char **names = calloc(n + 1, sizeof(*names));
    for (size_t i = 0; i < n; i++)
        if (read_source(argv[i + 1], &texts[i]) < 0)
            d.errors++;
        else if (looks_global(argv[i + 1], texts[i]))
            global_hint("validate", argv[i + 1]), d.errors++;
        else
            names[i] = site_name_of(argv[i + 1], texts[i], &d);
    /* Stored sites come first: a conflict is reported at the file being validated. */
    size_t k = 0;
    for (size_t i = 0; i < stored.n; i++) {
        int replaced = 0;
        for (size_t j = 0; j < n; j++)
            replaced |= names[j] && strcmp(names[j], stored.v[i].name) == 0;
        diag_t quiet = {0};
        cfg_site_t *s = replaced ? NULL : config_site(&a, stored.v[i].source, stored.v[i].yaml, &quiet);
        diag_free(&quiet);
        if (s)
            sites[k++] = s;
    }
    for (size_t i = 0; i < n; i++) {
        diag_t quiet = {0};
        cfg_site_t *s = names[i] ? config_site(&a, argv[i + 1], texts[i], &quiet) : NULL;
        diag_free(&quiet);
        if (s)
            sites[k++] = s;
        free(names[i]);
    }
    free(names);
    if (g && d.errors == 0)
        check_sites(g, sites, k, &d);
    print_diag(&d);
    int rc = d.errors ? EXIT_INVALID : EXIT_OK;
    if (rc == EXIT_OK && n == 0)
        printf("global settings valid\n");
    else if (rc == EXIT_OK)
        printf("%zu file%s valid\n", n, n == 1 ? "" : "s");
    for (size_t i = 0; i < n; i++)
        free(texts[i]);
    free(texts);
    free(sites);
    free(gtext);
    free(stored_g);
    free(stored_gs);
    site_list_free(&stored);
    diag_free(&d);
    arena_free(&a);
    return rc;
}

/* ---- add-site -------------------------------------------------------------- */

static void yaml_quoted(char *out, size_t cap, const char *s)
{
    size_t n = 0;
    out[n++] = '"';
    for (; *s && n + 4 < cap; s++) {
        if (*s == '"' || *s == '\\')
            out[n++] = '\\';
        out[n++] = *s;
    }
    out[n++] = '"';
    out[n] = '\0';
}

/* add-site NAME --host H... --upstream ADDR... [--tls MODE] -> YAML text */
static char *flag_form_yaml(int argc, char **argv, char *why, size_t whylen)
{
    str_buf_t b = {0};
    char q[1024];
    int nhost = 0, nup = 0;
    const char *tls = NULL;
    yaml_quoted(q, sizeof(q), argv[1]);
    str_printf(&b, "site: %s\nhosts:\n", q);
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            continue;
        if (argv[i][0] != '-') {
            snprintf(why, whylen, "unexpected argument '%s'", argv[i]);
            goto usage;
        }
        if (i + 1 >= argc) {
            snprintf(why, whylen, "option '%s' needs a value", argv[i]);
            goto usage;
        }
        if (strcmp(argv[i], "--host") == 0) {
            yaml_quoted(q, sizeof(q), argv[++i]);
            str_printf(&b, "  - %s\n", q);
            nhost++;
        } else if (strcmp(argv[i], "--tls") == 0) {
            tls = argv[++i];
        } else if (strcmp(argv[i], "--upstream") != 0) {
            snprintf(why, whylen, "unknown option '%s'", argv[i]);
            goto usage;
        } else {
            i++;
        }
    }
    if (nhost == 0) {
        snprintf(why, whylen, "missing --host");
        goto usage;
    }
    if (tls) {
        yaml_quoted(q, sizeof(q), tls);
        str_printf(&b, "tls:\n  certificate: %s\n", q);
    }
    str_printf(&b, "upstreams:\n  app:\n    servers:\n");
    for (int i = 2; i + 1 < argc; i++) {
        if (strcmp(argv[i], "--upstream") != 0)
            continue;
        yaml_quoted(q, sizeof(q), argv[++i]);
        str_printf(&b, "      - address: %s\n", q);
        nup++;
    }
    if (nup == 0) {
        snprintf(why, whylen, "missing --upstream");
        goto usage;
    }
    str_printf(&b, "routes:\n  - match: {path_prefix: /}\n    upstream: app\n");
    str_append(&b, "", 1);
    return b.p;
usage:
    str_buf_free(&b);
    return NULL;
}

int cmd_add_site(cli_t *cli, int argc, char **argv)
{
    const command_t *self = find_command("add-site");
    if (argc < 2)
        return cli_usage(self, "missing FILE.yaml or NAME");
    char *text = NULL, source[512], why[256];
    int flag_form = argc > 2 && argv[2][0] == '-';
    if (flag_form) {
        text = flag_form_yaml(argc, argv, why, sizeof(why));
        if (text == NULL)
            return cli_usage(self, "%s", why);
        snprintf(source, sizeof(source), "add-site:%s", argv[1]);
    } else {
        if (argc != 2)
            return cli_usage(self, "unexpected argument '%s' (the flag form is NAME --host H --upstream ADDR)", argv[2]);
        if (read_source(argv[1], &text) < 0)
            return EXIT_INVALID;
        snprintf(source, sizeof(source), "%s", argv[1]);
    }
    diag_t d = {0};
    char *name = site_name_of(source, text, &d);
    if (name == NULL) {
        print_diag(&d);
        diag_free(&d);
        free(text);
        return EXIT_INVALID;
    }
    diag_free(&d);
    store_t st;
    site_list_t sites = {0};
    char *gyaml = NULL, *gsource = NULL;
    int rc = begin_change(cli, &st, &sites, &gyaml, &gsource);
    if (rc == EXIT_OK) {
        int replaced = site_list_remove(&sites, name);
        site_list_add(&sites, name, text, source);
        char what[300];
        snprintf(what, sizeof(what), "site '%s' %s", name, replaced ? "replaced" : "added");
        rc = commit_change(cli, &st, &sites, gyaml, gsource, what, false);
        end_change(&st, &sites, gyaml, gsource);
    }
    free(name);
    free(text);
    return rc;
}

/* ---- remove-site, list-sites, show-site ------------------------------------ */

int cmd_remove_site(cli_t *cli, int argc, char **argv)
{
    int bad = cli_arity(find_command("remove-site"), argc, argv, 1, 1, "SITE");
    if (bad)
        return bad;
    store_t st;
    site_list_t sites = {0};
    char *gyaml = NULL, *gsource = NULL;
    int rc = begin_change(cli, &st, &sites, &gyaml, &gsource);
    if (rc != EXIT_OK)
        return rc;
    if (!site_list_remove(&sites, argv[1])) {
        cli_no_site(&st, argv[1]);
        store_rollback(&st);
        end_change(&st, &sites, gyaml, gsource);
        return EXIT_INVALID;
    }
    char what[300]; /* its certificate goes with the build (certs_prune) */
    snprintf(what, sizeof(what), "site '%s' removed", argv[1]);
    rc = commit_change(cli, &st, &sites, gyaml, gsource, what, false);
    end_change(&st, &sites, gyaml, gsource);
    return rc;
}

int cmd_list_sites(cli_t *cli, int argc, char **argv)
{
    int bad = cli_arity(find_command("list-sites"), argc, argv, 0, 0, "");
    if (bad)
        return bad;
    store_t st;
    if (cli_open_store(cli, &st, STORE_RDONLY) < 0)
        return EXIT_RUNTIME;
    sqlite3_stmt *q = store_prepare(&st, "SELECT name, source, digest, updated FROM sites ORDER BY name");
    if (q == NULL) {
        fprintf(stderr, "proxyctl: %s\n", st.err);
        store_close(&st);
        return EXIT_RUNTIME;
    }
    int first = 1;
    if (cli->json)
        printf("[");
    while (sqlite3_step(q) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(q, 0), *src = (const char *)sqlite3_column_text(q, 1);
        time_t when = (time_t)sqlite3_column_int64(q, 3);
        char ts[32];
        strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", gmtime(&when));
        if (cli->json) {
            printf("%s{\"name\":", first ? "" : ",");
            cli_json_str(stdout, name);
            printf(",\"source\":");
            cli_json_str(stdout, src);
            printf(",\"digest\":\"%s\",\"updated\":\"%s\"}", sqlite3_column_text(q, 2), ts);
        } else {
            if (first)
                printf("%-24s %-20s %s\n", "SITE", "UPDATED", "SOURCE");
            printf("%-24s %-20s %s\n", name, ts, src);
        }
        first = 0;
    }
    if (cli->json)
        printf("]\n");
    else if (first) /* stderr: a script reading stdout gets no lines, as for no sites */
        fprintf(stderr, "no sites in %s (add one with 'proxyctl add-site FILE.yaml' or 'proxyctl apply DIR')\n", cli->db);
    sqlite3_finalize(q);
    store_close(&st);
    return EXIT_OK;
}

int cmd_show_site(cli_t *cli, int argc, char **argv)
{
    int bad = cli_arity(find_command("show-site"), argc, argv, 1, 1, "SITE");
    if (bad)
        return bad;
    store_t st;
    if (cli_open_store(cli, &st, STORE_RDONLY) < 0)
        return EXIT_RUNTIME;
    sqlite3_stmt *q = store_prepare(&st, "SELECT yaml FROM sites WHERE name = ?");
    int rc = EXIT_RUNTIME;
    if (q) {
        sqlite3_bind_text(q, 1, argv[1], -1, SQLITE_STATIC);
        if (sqlite3_step(q) == SQLITE_ROW) {
            fputs((const char *)sqlite3_column_text(q, 0), stdout);
            rc = EXIT_OK;
        } else {
            rc = cli_no_site(&st, argv[1]);
        }
        sqlite3_finalize(q);
    }
    store_close(&st);
    return rc;
}

/* ---- apply ----------------------------------------------------------------- */

static int yaml_name(const char *n)
{
    size_t l = strlen(n);
    return n[0] != '.' && ((l > 5 && strcmp(n + l - 5, ".yaml") == 0) || (l > 4 && strcmp(n + l - 4, ".yml") == 0));
}

static int name_cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Expand DIR into its *.yaml files (sorted); a proxy.yaml there is the global file. */
static int expand_dir(const char *dir, char ***files, size_t *n, char **global)
{
    DIR *dp = opendir(dir);
    if (dp == NULL) {
        fprintf(stderr, "%s: error: cannot open directory: %s\n", dir, strerror(errno));
        return -1;
    }
    struct dirent *e;
    while ((e = readdir(dp)) != NULL) {
        if (!yaml_name(e->d_name))
            continue;
        char *path = malloc(strlen(dir) + strlen(e->d_name) + 2);
        sprintf(path, "%s/%s", dir, e->d_name);
        if (strcmp(e->d_name, "proxy.yaml") == 0 || strcmp(e->d_name, "proxy.yml") == 0) {
            free(*global);
            *global = path;
            continue;
        }
        *files = realloc(*files, (*n + 1) * sizeof(**files));
        (*files)[(*n)++] = path;
    }
    closedir(dp);
    if (*n)
        qsort(*files, *n, sizeof(**files), name_cmp);
    return 0;
}

static int collect_inputs(int argc, char **argv, char ***files, size_t *n, char **global)
{
    const char *def[] = {"sites"};
    char **args = argc > 1 ? argv + 1 : (char **)def;
    int nargs = argc > 1 ? argc - 1 : 1;
    for (int i = 0; i < nargs; i++) {
        struct stat sb;
        if (stat(args[i], &sb) == 0 && S_ISDIR(sb.st_mode)) {
            if (expand_dir(args[i], files, n, global) < 0)
                return -1;
            continue;
        }
        *files = realloc(*files, (*n + 1) * sizeof(**files));
        (*files)[(*n)++] = strdup(args[i]);
    }
    return 0;
}

static const site_list_t *dup_list; /* qsort has no context argument */

static int by_name_then_order(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    int c = strcmp(dup_list->v[x].name, dup_list->v[y].name);
    return c ? c : (x > y) - (x < y);
}

/* A site name defined twice is an error at the later file: sorted by name
 * (and input order), so 100,000 files cost n log n comparisons, not n². */
static int check_duplicates(const site_list_t *sites)
{
    size_t *ix = malloc((sites->n ? sites->n : 1) * sizeof(*ix));
    if (ix == NULL) {
        fprintf(stderr, "proxyctl: out of memory\n");
        return -1;
    }
    for (size_t i = 0; i < sites->n; i++)
        ix[i] = i;
    dup_list = sites;
    qsort(ix, sites->n, sizeof(*ix), by_name_then_order);
    int rc = 0;
    for (size_t k = 1; k < sites->n; k++) {
        const site_src_t *first = &sites->v[ix[k - 1]], *again = &sites->v[ix[k]];
        if (strcmp(first->name, again->name) != 0)
            continue;
        for (size_t j = k; j > 0 && strcmp(sites->v[ix[j - 1]].name, again->name) == 0; j--)
            first = &sites->v[ix[j - 1]]; /* every later definition names the first */
        fprintf(stderr, "%s: error: site '%s' is also defined in %s\n", again->source, again->name, first->source);
        rc = -1;
    }
    free(ix);
    return rc;
}

static int load_inputs(char **files, size_t n, site_list_t *sites)
{
    int rc = 0;
    diag_t d = {0};
    for (size_t i = 0; i < n; i++) {
        char *text;
        if (read_source(files[i], &text) < 0) {
            rc = -1;
            continue;
        }
        char *name = looks_global(files[i], text) ? (global_hint("apply", files[i]), NULL) : site_name_of(files[i], text, &d);
        if (name)
            site_list_add(sites, name, text, files[i]);
        else
            rc = -1;
        free(name);
        free(text);
    }
    if (rc == 0)
        rc = check_duplicates(sites);
    print_diag(&d);
    diag_free(&d);
    return rc;
}

/* Top-level keys whose values differ between two texts of a site, into
 * out ("routes, upstreams"); "" when only comments or layout differ. */
static void changed_keys(const char *old_yaml, const char *new_yaml, str_buf_t *out)
{
    arena_t a;
    arena_init(&a, 0);
    diag_t quiet = {0};
    ynode_t *o = yaml_load(&a, "old", old_yaml, strlen(old_yaml), &quiet);
    ynode_t *n = yaml_load(&a, "new", new_yaml, strlen(new_yaml), &quiet);
    diag_free(&quiet);
    for (int pass = 0; o && n && o->kind == YN_MAP && n->kind == YN_MAP && pass < 2; pass++) {
        const ynode_t *from = pass ? o : n, *to = pass ? n : o;
        for (size_t i = 0; i < from->n; i++) {
            const ynode_t *other = yaml_get(to, from->keys[i]->s);
            if ((pass == 0 && yaml_equal(from->vals[i], other)) || (pass == 1 && other))
                continue; /* pass 1 adds only the keys the new text dropped */
            str_printf(out, "%s%s%s", out->len ? ", " : "", from->keys[i]->s,
                       other == NULL ? (pass ? " removed" : " added") : "");
        }
    }
    arena_free(&a);
}

/* What apply changes, one line per site: + added, - removed, ~ changed
 * (with the keys); returns how many are removed. */
static size_t print_site_diff(const site_list_t *old, const site_list_t *in)
{
    size_t removed = 0, same = 0;
    for (size_t i = 0; i < in->n; i++) {
        const site_src_t *o = NULL;
        for (size_t k = 0; k < old->n && o == NULL; k++)
            o = strcmp(old->v[k].name, in->v[i].name) == 0 ? &old->v[k] : NULL;
        if (o == NULL) {
            printf("+ %s (%s)\n", in->v[i].name, in->v[i].source);
        } else if (strcmp(o->yaml, in->v[i].yaml) == 0) {
            same++;
        } else {
            str_buf_t keys = {0};
            changed_keys(o->yaml, in->v[i].yaml, &keys);
            bool layout = keys.len == 0;
            str_append(&keys, "", 1);
            printf("~ %s: %s\n", in->v[i].name, layout ? "comments or layout only" : (const char *)keys.p);
            str_buf_free(&keys);
        }
    }
    for (size_t k = 0; k < old->n; k++) {
        bool kept = false;
        for (size_t i = 0; i < in->n && !kept; i++)
            kept = strcmp(old->v[k].name, in->v[i].name) == 0;
        if (!kept) {
            printf("- %s\n", old->v[k].name);
            removed++;
        }
    }
    if (same)
        printf("= %zu site%s unchanged\n", same, same == 1 ? "" : "s");
    return removed;
}

/* apply's own flags, taken out of argv. */
static void apply_flags(int *argc, char **argv, bool *dry_run, bool *force)
{
    int out = 0;
    for (int i = 0; i < *argc; i++) {
        if (strcmp(argv[i], "--dry-run") == 0)
            *dry_run = true;
        else if (strcmp(argv[i], "--force") == 0)
            *force = true;
        else
            argv[out++] = argv[i];
    }
    *argc = out;
}

int cmd_apply(cli_t *cli, int argc, char **argv)
{
    const char *global = NULL;
    bool dry_run = false, force = false;
    apply_flags(&argc, argv, &dry_run, &force);
    if (parse_global_opt(&argc, argv, &global) < 0)
        return cli_usage(find_command("apply"), "option '--global' needs a value");
    char **files = NULL, *dir_global = NULL, *gtext = NULL;
    size_t n = 0;
    site_list_t in = {0};
    int rc = EXIT_INVALID;
    if (collect_inputs(argc, argv, &files, &n, &dir_global) < 0 || load_inputs(files, n, &in) < 0)
        goto out;
    const char *gpath = global ? global : dir_global;
    if (gpath && read_source(gpath, &gtext) < 0)
        goto out;
    store_t st;
    site_list_t old = {0};
    char *gyaml = NULL, *gsource = NULL;
    rc = begin_change(cli, &st, &old, &gyaml, &gsource);
    if (rc == EXIT_OK) {
        size_t removed = print_site_diff(&old, &in);
        char what[128];
        snprintf(what, sizeof(what), "applied %zu site%s (%zu before)", in.n, in.n == 1 ? "" : "s", old.n);
        if (removed * 2 > old.n && !force && !dry_run) {
            fprintf(stderr, "proxyctl: apply: refusing to remove %zu of the %zu stored sites (more than half); "
                            "check the inputs, or add --force\n", removed, old.n);
            store_rollback(&st);
            rc = EXIT_INVALID;
        } else {
            if (removed * 2 > old.n && !force)
                printf("note: removes %zu of the %zu stored sites: the real apply needs --force\n", removed, old.n);
            rc = commit_change(cli, &st, &in, gtext ? gtext : gyaml, gtext ? gpath : gsource, what, dry_run);
        }
        end_change(&st, &old, gyaml, gsource);
    }
out:
    for (size_t i = 0; i < n; i++)
        free(files[i]);
    free(files);
    free(dir_global);
    free(gtext);
    site_list_free(&in);
    return rc;
}

/*
 * cmd_cert.c - renew-cert and certs.
 *
 * renew-cert picks sites (named, --all ACME sites, or --due: every site whose
 * certificate is missing, temporary, for other hosts, or within
 * acme.renew_before of expiry), gets each a certificate (ACME over HTTP-01 via
 * acme.c, or a fresh self-signed one), and installs it with a new generation
 * built from the stored sources, exactly as add-site builds one, so proxyd
 * reloads.  The ACME exchange runs outside any store transaction (proxyd must
 * read the published challenges meanwhile); each site's certificate, its
 * generation and its event are then one transaction, so a failure keeps the
 * old certificate and a later site's failure keeps an earlier site's success.
 * One renew-cert at a time per store: an flock on STORE.renew.lock, so two
 * runs (a timer and an operator) never both place an order for one site.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include <openssl/pem.h>
#include <openssl/x509.h>

#include "acme.h"
#include "certs.h"
#include "../common/ha.h"
#include "cli.h"
#include "config.h"

typedef struct {
    bool all, due, force, dry_run;
    char **names;
    int nnames;
} renew_opts_t;

/* What renew-cert works on: the parsed global settings and sites (which point
 * into the stored sources, so those live as long). */
typedef struct {
    arena_t arena;
    site_list_t src;
    char *gyaml, *gsource;
    cfg_global_t *g;
    cfg_site_t **sites;
    size_t n;
} model_t;

static void iso(int64_t t, char out[32])
{
    time_t tt = (time_t)t;
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", gmtime(&tt));
}

/* Whole days left until t (negative once expired). */
static long days_left(int64_t t, int64_t now)
{
    int64_t d = t - now;
    return (long)(d >= 0 ? d / 86400 : -((-d + 86399) / 86400));
}

static double seconds_since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) + (double)(t.tv_nsec - t0->tv_nsec) / 1e9;
}

static int parse_opts(int argc, char **argv, renew_opts_t *o)
{
    memset(o, 0, sizeof(*o));
    o->names = calloc((size_t)argc, sizeof(*o->names));
    if (o->names == NULL)
        abort();
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--all") == 0)
            o->all = true;
        else if (strcmp(argv[i], "--due") == 0)
            o->due = true;
        else if (strcmp(argv[i], "--force") == 0)
            o->force = true;
        else if (strcmp(argv[i], "--dry-run") == 0)
            o->dry_run = true;
        else if (argv[i][0] == '-')
            return -1;
        else
            o->names[o->nnames++] = argv[i];
    }
    return (o->nnames > 0) + o->all + o->due == 1 ? 0 : -1;
}

static int load_model(store_t *st, model_t *m)
{
    diag_t d = {0};
    int rc = -1;
    arena_init(&m->arena, 1 << 16);
    if (cli_load_sites(st, &m->src) < 0 || cli_load_global(st, &m->gyaml, &m->gsource) < 0) {
        fprintf(stderr, "proxyctl: %s\n", st->err);
        goto out;
    }
    const char *gs = m->gsource && *m->gsource ? m->gsource : "proxy.yaml";
    m->g = config_global(&m->arena, gs, m->gyaml && *m->gyaml ? m->gyaml : NULL, &d);
    m->sites = arena_alloc(&m->arena, (m->src.n + 1) * sizeof(*m->sites));
    for (size_t i = 0; i < m->src.n; i++)
        if ((m->sites[m->n] = config_site(&m->arena, m->src.v[i].source, m->src.v[i].yaml, &d)) != NULL)
            m->n++;
    if (m->g == NULL || d.errors) { /* stored sources were valid when stored: a newer proxyctl? */
        diag_print(&d, stderr);
        fprintf(stderr, "proxyctl: the stored sites or settings do not parse; fix them with add-site or apply\n");
        goto out;
    }
    rc = 0;
out:
    diag_free(&d);
    return rc;
}

static void free_model(model_t *m)
{
    arena_free(&m->arena);
    site_list_free(&m->src);
    free(m->gyaml);
    free(m->gsource);
}

static cfg_site_t *find_site(const model_t *m, const char *name)
{
    for (size_t i = 0; i < m->n; i++)
        if (strcmp(m->sites[i]->name.s, name) == 0)
            return m->sites[i];
    return NULL;
}

/* Whether site s needs a new certificate; why says what was found. */
static bool cert_due(store_t *st, const cfg_site_t *s, uint64_t before_ms, char *why, size_t cap)
{
    const char *want = s->cert_mode == RT_CERT_ACME ? "acme" : "self-signed";
    char hosts[8192], when[32];
    certs_hosts(s, hosts, sizeof(hosts));
    sqlite3_stmt *q = store_prepare(st, "SELECT hosts, source, not_after FROM certificates WHERE site = ?");
    bool due = true;
    if (q == NULL) {
        snprintf(why, cap, "%s", st->err);
        return true;
    }
    sqlite3_bind_text(q, 1, s->name.s, -1, SQLITE_STATIC);
    if (sqlite3_step(q) != SQLITE_ROW) {
        snprintf(why, cap, "no certificate yet");
    } else {
        const char *h = (const char *)sqlite3_column_text(q, 0), *src = (const char *)sqlite3_column_text(q, 1);
        int64_t not_after = sqlite3_column_int64(q, 2), now = (int64_t)time(NULL);
        iso(not_after, when);
        if (strcmp(src, "temporary") == 0)
            snprintf(why, cap, "temporary self-signed certificate, until ACME issues one");
        else if (strcmp(src, want) != 0)
            snprintf(why, cap, "the certificate is %s, the site wants %s", src, want);
        else if (strcmp(h, hosts) != 0)
            snprintf(why, cap, "the certificate covers '%s', the site has '%s'", h, hosts);
        else if (not_after - now <= (int64_t)(before_ms / 1000))
            snprintf(why, cap, "expires %s, %ld days left (renew_before %llu days)", when, days_left(not_after, now),
                     (unsigned long long)(before_ms / 86400000));
        else {
            snprintf(why, cap, "expires %s, %ld days left", when, days_left(not_after, now));
            due = false;
        }
    }
    sqlite3_finalize(q);
    return due;
}

/* An ACME certificate needs exact names: HTTP-01 cannot prove a wildcard. */
static const cstr_t *wildcard_host(const cfg_site_t *s)
{
    for (size_t i = 0; i < s->nhosts; i++)
        if (strchr(s->hosts[i].s, '*'))
            return &s->hosts[i];
    return NULL;
}

static void wildcard_error(const cfg_site_t *s, const cstr_t *h)
{
    fprintf(stderr,
            "proxyctl: renew-cert %s: host '%s' (%s:%d:%d) is a wildcard: ACME issues wildcard certificates only over "
            "DNS-01 challenges, and proxyctl answers HTTP-01 only; list the exact names in hosts, or give the "
            "certificate as files (tls.certificate: {cert_file, key_file})\n",
            s->name.s, h->s, h->pos.file ? h->pos.file : s->file, h->pos.line, h->pos.col);
}

/* ---- installing a certificate ------------------------------------------------------ */

/* Inside the caller's transaction: new generation from the stored sources,
 * its event, commit, then tell proxyd. */
static int rebuild(cli_t *cli, store_t *st, const char *what, int64_t *gen)
{
    site_list_t sites = {0};
    char *gyaml = NULL, *gsource = NULL;
    diag_t d = {0};
    size_t size = 0;
    int rc = EXIT_RUNTIME;
    if (cli_load_sites(st, &sites) == 0 && cli_load_global(st, &gyaml, &gsource) == 0)
        rc = build_generation(st, gyaml, gsource, &sites, cli->cmdline, &d, gen, &size, NULL);
    diag_print(&d, stderr);
    if (rc == EXIT_OK && (store_event(st, cli->cmdline, what, *gen) < 0 || store_commit(st) < 0))
        rc = EXIT_RUNTIME;
    if (rc != EXIT_OK) {
        fprintf(stderr, "proxyctl: %s\n", st->err);
        store_rollback(st);
    }
    diag_free(&d);
    site_list_free(&sites);
    free(gyaml);
    free(gsource);
    if (rc == EXIT_OK && cli_notify_reload(cli, st) < 0)
        rc = EXIT_RUNTIME;
    return rc;
}

static int site_still_stored(store_t *st, const char *name)
{
    sqlite3_stmt *q = store_prepare(st, "SELECT 1 FROM sites WHERE name = ?");
    int found = 0;
    if (q) {
        sqlite3_bind_text(q, 1, name, -1, SQLITE_STATIC);
        found = sqlite3_step(q) == SQLITE_ROW;
    }
    sqlite3_finalize(q);
    return found;
}

static int put_acme_cert(store_t *st, const cfg_site_t *s, const acme_cert_t *c)
{
    char hosts[8192];
    certs_hosts(s, hosts, sizeof(hosts));
    sqlite3_stmt *q = store_prepare(st, "INSERT OR REPLACE INTO certificates (site, hosts, cert_pem, chain_pem, key_pem, "
                                        "not_before, not_after, source, issuer, updated) VALUES (?,?,?,?,?,?,?,'acme',?,?)");
    if (q == NULL)
        return -1;
    sqlite3_bind_text(q, 1, s->name.s, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 2, hosts, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 3, c->cert_pem, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 4, c->chain_pem, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 5, c->key_pem, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 6, c->not_before);
    sqlite3_bind_int64(q, 7, c->not_after);
    sqlite3_bind_text(q, 8, c->issuer, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 9, (sqlite3_int64)time(NULL));
    int rc = sqlite3_step(q) == SQLITE_DONE ? 0 : -1;
    if (rc < 0)
        snprintf(st->err, sizeof(st->err), "store %s: cannot store the certificate of site '%s': %s", st->path,
                 s->name.s, sqlite3_errmsg(st->db));
    sqlite3_finalize(q);
    return rc;
}

static int install_acme(cli_t *cli, store_t *st, const cfg_site_t *s, const acme_cert_t *c, double secs)
{
    char what[600], until[32];
    int64_t gen = 0;
    iso(c->not_after, until);
    if (store_begin(st) < 0) {
        fprintf(stderr, "proxyctl: renew-cert %s: %s\n", s->name.s, st->err);
        return EXIT_RUNTIME;
    }
    if (!site_still_stored(st, s->name.s)) {
        fprintf(stderr, "proxyctl: renew-cert %s: the site was removed meanwhile; certificate discarded\n", s->name.s);
        store_rollback(st);
        return EXIT_RUNTIME;
    }
    if (put_acme_cert(st, s, c) < 0) {
        fprintf(stderr, "proxyctl: renew-cert %s: %s\n", s->name.s, st->err);
        store_rollback(st);
        return EXIT_RUNTIME;
    }
    snprintf(what, sizeof(what), "renew-cert %s: acme certificate issued by %s, valid until %s", s->name.s, c->issuer,
             until);
    int rc = rebuild(cli, st, what, &gen);
    if (rc == EXIT_OK)
        printf("site '%s': certificate issued by %s, valid until %s (%ld days) in %.2f s; generation %lld active\n",
               s->name.s, c->issuer, until, days_left(c->not_after, (int64_t)time(NULL)), secs, (long long)gen);
    return rc;
}

static int renew_acme(cli_t *cli, store_t *st, const cfg_global_t *g, acme_t **acme, const cfg_site_t *s)
{
    const cstr_t *wild = wildcard_host(s);
    if (wild) {
        wildcard_error(s, wild);
        return EXIT_RUNTIME;
    }
    if (s->nhosts == 0) {
        fprintf(stderr, "proxyctl: renew-cert %s: the site has no hosts; an ACME certificate needs at least one name\n",
                s->name.s);
        return EXIT_RUNTIME;
    }
    acme_config_t cfg = {g->acme_directory, g->acme_email, g->acme_ca_file, cli_notify_challenges};
    if (*acme == NULL && (*acme = acme_new(st, &cfg)) == NULL) {
        fprintf(stderr, "proxyctl: renew-cert %s: cannot set up the ACME client\n", s->name.s);
        return EXIT_RUNTIME;
    }
    const char **hosts = calloc(s->nhosts, sizeof(*hosts));
    if (hosts == NULL)
        abort();
    for (size_t i = 0; i < s->nhosts; i++)
        hosts[i] = s->hosts[i].s;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    acme_cert_t c;
    int rc = EXIT_RUNTIME;
    if (acme_issue(*acme, hosts, s->nhosts, &c) < 0)
        fprintf(stderr, "proxyctl: renew-cert %s: %s\n", s->name.s, acme_error(*acme));
    else
        rc = install_acme(cli, st, s, &c, seconds_since(&t0));
    acme_cert_free(&c);
    free(hosts);
    return rc;
}

/* A fresh self-signed certificate: drop the old one and let the build make it. */
static int renew_self_signed(cli_t *cli, store_t *st, const cfg_site_t *s)
{
    char what[300];
    int64_t gen = 0;
    if (store_begin(st) < 0) {
        fprintf(stderr, "proxyctl: renew-cert %s: %s\n", s->name.s, st->err);
        return EXIT_RUNTIME;
    }
    sqlite3_stmt *q = store_prepare(st, "DELETE FROM certificates WHERE site = ?");
    if (q == NULL || (sqlite3_bind_text(q, 1, s->name.s, -1, SQLITE_STATIC), sqlite3_step(q)) != SQLITE_DONE) {
        fprintf(stderr, "proxyctl: renew-cert %s: %s\n", s->name.s, q ? sqlite3_errmsg(st->db) : st->err);
        sqlite3_finalize(q);
        store_rollback(st);
        return EXIT_RUNTIME;
    }
    sqlite3_finalize(q);
    snprintf(what, sizeof(what), "renew-cert %s: new self-signed certificate", s->name.s);
    int rc = rebuild(cli, st, what, &gen);
    if (rc == EXIT_OK)
        printf("site '%s': new self-signed certificate; generation %lld active\n", s->name.s, (long long)gen);
    return rc;
}

/* ---- renew-cert ------------------------------------------------------------------ */

/* The sites the options name; an explicitly named site must have a certificate
 * proxyctl makes. */
static int select_sites(const model_t *m, const renew_opts_t *o, const cfg_site_t **out, size_t *n)
{
    *n = 0;
    for (int i = 0; i < o->nnames; i++) {
        const cfg_site_t *s = find_site(m, o->names[i]);
        if (s == NULL)
            return site_list_unknown(&m->src, o->names[i]);
        if (s->cert_mode != RT_CERT_ACME && s->cert_mode != RT_CERT_SELF_SIGNED) {
            fprintf(stderr, "proxyctl: renew-cert %s: the site's certificate is %s (tls.certificate); only acme and "
                            "self-signed certificates are renewed\n",
                    s->name.s, s->cert_mode == RT_CERT_FILE ? "given as files" : "none");
            return EXIT_INVALID;
        }
        out[(*n)++] = s;
    }
    for (size_t i = 0; o->nnames == 0 && i < m->n; i++)
        if (m->sites[i]->cert_mode == RT_CERT_ACME || (o->due && m->sites[i]->cert_mode == RT_CERT_SELF_SIGNED))
            out[(*n)++] = m->sites[i];
    return EXIT_OK;
}

static int renew_one(cli_t *cli, store_t *st, const model_t *m, const renew_opts_t *o, acme_t **acme,
                     const cfg_site_t *s)
{
    char why[9000];
    bool acme_site = s->cert_mode == RT_CERT_ACME;
    bool due = cert_due(st, s, m->g->acme_renew_before_ms, why, sizeof(why));
    if (!due && !o->force) {
        printf("site '%s': not due (%s)%s\n", s->name.s, why, o->due ? "" : "; --force renews it anyway");
        return EXIT_OK;
    }
    if (o->dry_run) {
        const cstr_t *wild = acme_site ? wildcard_host(s) : NULL;
        if (wild)
            printf("site '%s': cannot renew: host '%s' is a wildcard (HTTP-01 cannot prove it)\n", s->name.s, wild->s);
        else if (acme_site)
            printf("site '%s': would renew from %s (%s)\n", s->name.s, m->g->acme_directory, why);
        else
            printf("site '%s': would make a new self-signed certificate (%s)\n", s->name.s, why);
        return EXIT_OK;
    }
    return acme_site ? renew_acme(cli, st, m->g, acme, s) : renew_self_signed(cli, st, s);
}

/* Take STORE.renew.lock without waiting: the fd (held until exit), -1 when
 * another run holds it, -2 on another error (printed). */
static int renew_lock(const char *db)
{
    char path[4096];
    if ((size_t)snprintf(path, sizeof(path), "%s.renew.lock", db) >= sizeof(path)) {
        fprintf(stderr, "proxyctl: renew-cert: store path too long for its lock file\n");
        return -2;
    }
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        fprintf(stderr, "proxyctl: renew-cert: %s: %s\n", path, strerror(errno));
        return -2;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) == 0)
        return fd;
    int e = errno;
    close(fd);
    if (e == EWOULDBLOCK)
        return -1;
    fprintf(stderr, "proxyctl: renew-cert: lock %s: %s\n", path, strerror(e));
    return -2;
}

int cmd_renew_cert(cli_t *cli, int argc, char **argv)
{
    renew_opts_t o;
    store_t st;
    model_t m = {0};
    acme_t *acme = NULL;
    const cfg_site_t **sel = NULL;
    size_t n = 0;
    int rc = parse_opts(argc, argv, &o);
    if (rc < 0) {
        free(o.names);
        return cli_usage(find_command("renew-cert"), "give SITE names, --all or --due (exactly one of them)");
    }
    if (cli_open_store(cli, &st, o.dry_run ? STORE_RDONLY : 0) < 0) {
        free(o.names);
        return EXIT_RUNTIME;
    }
    if (ha_is_backup(&st)) {
        /* The MASTER renews; its certificates reach this node by replication. */
        ha_state_t hs;
        ha_state_get(&st, &hs);
        printf("this node is %s in its HA pair: only the MASTER renews certificates%s\n", hs.role,
               o.due ? "; nothing to do" : "");
        free(o.names);
        store_close(&st);
        return o.due ? EXIT_OK : EXIT_RUNTIME;
    }
    int lock = o.dry_run ? INT_MAX : renew_lock(cli->db);
    if (lock < 0) {
        if (lock == -1)
            printf("another renew-cert is running on this store (%s.renew.lock)%s\n", cli->db,
                   o.due ? "; it renews what is due" : "; nothing renewed");
        free(o.names);
        store_close(&st);
        return lock == -1 && o.due ? EXIT_OK : EXIT_RUNTIME;
    }
    rc = load_model(&st, &m) < 0 ? EXIT_RUNTIME : EXIT_OK;
    if (rc == EXIT_OK) {
        sel = calloc(m.n + (size_t)o.nnames + 1, sizeof(*sel));
        if (sel == NULL)
            abort();
        rc = select_sites(&m, &o, sel, &n);
    }
    if (rc == EXIT_OK && n == 0)
        printf("no site has a certificate to renew\n");
    for (size_t i = 0; sel && rc != EXIT_INVALID && i < n; i++) { /* every site, even after a failure */
        int r = renew_one(cli, &st, &m, &o, &acme, sel[i]);
        rc = r > rc ? r : rc;
    }
    acme_free(acme);
    free(sel);
    free(o.names);
    free_model(&m);
    store_close(&st);
    if (lock != INT_MAX)
        close(lock); /* releases the lock */
    return rc;
}

/* ---- certs ---------------------------------------------------------------------- */

typedef struct {
    const char *site, *hosts, *source;
    char issuer[256];
    int64_t not_before, not_after;
} cert_row_t;

/* Certificates from files are stored with no dates: read them from the PEM. */
static void fill_from_pem(cert_row_t *r, const char *pem)
{
    BIO *b = pem ? BIO_new_mem_buf(pem, -1) : NULL;
    X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
    struct tm tm;
    if (x) {
        if (ASN1_TIME_to_tm(X509_get0_notBefore(x), &tm) == 1)
            r->not_before = (int64_t)timegm(&tm);
        if (ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) == 1)
            r->not_after = (int64_t)timegm(&tm);
        if (r->issuer[0] == '\0')
            X509_NAME_get_text_by_NID(X509_get_issuer_name(x), NID_commonName, r->issuer, sizeof(r->issuer));
    }
    X509_free(x);
    BIO_free(b);
}

static void print_cert(const cli_t *cli, const cert_row_t *r, bool first, int64_t now)
{
    char nb[32], na[32];
    iso(r->not_before, nb);
    iso(r->not_after, na);
    long days = days_left(r->not_after, now);
    if (cli->json) {
        printf("%s{\"site\":", first ? "" : ",");
        cli_json_str(stdout, r->site);
        printf(",\"hosts\":[");
        char *hosts = strdup(r->hosts), *save = NULL;
        int k = 0;
        for (char *h = strtok_r(hosts, " ", &save); h; h = strtok_r(NULL, " ", &save), k++) {
            printf("%s", k ? "," : "");
            cli_json_str(stdout, h);
        }
        free(hosts);
        printf("],\"source\":\"%s\",\"issuer\":", r->source);
        cli_json_str(stdout, r->issuer);
        printf(",\"not_before\":\"%s\",\"not_after\":\"%s\",\"days_left\":%ld}", nb, na, days);
        return;
    }
    if (first)
        printf("%-20s %-11s %-20s %5s  %-32s %s\n", "SITE", "SOURCE", "NOT AFTER", "DAYS", "ISSUER", "HOSTS");
    printf("%-20s %-11s %-20s %5ld  %-32s %s\n", r->site, r->source, na, days, r->issuer, r->hosts);
}

int cmd_certs(cli_t *cli, int argc, char **argv)
{
    int bad = cli_arity(find_command("certs"), argc, argv, 0, 0, "");
    if (bad)
        return bad;
    store_t st;
    if (cli_open_store(cli, &st, STORE_RDONLY) < 0)
        return EXIT_RUNTIME;
    sqlite3_stmt *q = store_prepare(&st, "SELECT site, hosts, source, issuer, not_before, not_after, cert_pem "
                                         "FROM certificates ORDER BY site");
    if (q == NULL) {
        fprintf(stderr, "proxyctl: %s\n", st.err);
        store_close(&st);
        return EXIT_RUNTIME;
    }
    int64_t now = (int64_t)time(NULL);
    bool first = true;
    if (cli->json)
        printf("[");
    while (sqlite3_step(q) == SQLITE_ROW) {
        cert_row_t r = {(const char *)sqlite3_column_text(q, 0), (const char *)sqlite3_column_text(q, 1),
                        (const char *)sqlite3_column_text(q, 2), "", sqlite3_column_int64(q, 4),
                        sqlite3_column_int64(q, 5)};
        snprintf(r.issuer, sizeof(r.issuer), "%s", (const char *)sqlite3_column_text(q, 3));
        if (r.not_after == 0 || r.issuer[0] == '\0')
            fill_from_pem(&r, (const char *)sqlite3_column_text(q, 6));
        print_cert(cli, &r, first, now);
        first = false;
    }
    if (cli->json)
        printf("]\n");
    else if (first)
        printf("no certificates\n");
    sqlite3_finalize(q);
    store_close(&st);
    return EXIT_OK;
}

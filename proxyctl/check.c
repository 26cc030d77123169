/*
 * check.c - semantic checks across sites and against the global settings:
 * a host claimed by two sites, two default sites, unknown cache or
 * rate-limit zones, certificate files that are
 * unreadable, mismatched, expired or do not cover the site's hosts, and
 * routes that an earlier route makes unreachable (a warning).
 */
#include "config.h"

#include <errno.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

typedef struct {
    const cstr_t *h;
    const cfg_site_t *s;
    size_t order;
} host_pair_t;

static int pair_cmp(const void *a, const void *b)
{
    const host_pair_t *x = a, *y = b;
    int c = strcmp(x->h->s, y->h->s);
    return c ? c : (x->order > y->order) - (x->order < y->order);
}

/* Sort (host, site) pairs by host, in declaration order within equal hosts,
 * and report every later claim of a host at its own position. */
static void check_hosts(cfg_site_t **sites, size_t n, diag_t *d)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += sites[i]->nhosts;
    if (total == 0)
        return;
    host_pair_t *v = malloc(total * sizeof(*v));
    if (v == NULL)
        abort();
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < sites[i]->nhosts; j++, k++)
            v[k] = (host_pair_t){&sites[i]->hosts[j], sites[i], k};
    qsort(v, total, sizeof(*v), pair_cmp);
    size_t first = 0;
    for (size_t i = 1; i < total; i++) {
        if (strcmp(v[i].h->s, v[first].h->s) != 0) {
            first = i;
            continue;
        }
        if (v[i].s == v[first].s)
            continue;
        const host_pair_t *owner = &v[first];
        diag_error(d, v[i].h->pos, "host '%s' is already claimed by site '%s' (%s:%d:%d)", v[i].h->s,
                   owner->s->name.s, owner->h->pos.file, owner->h->pos.line, owner->h->pos.col);
    }
    free(v);
}

static void check_defaults(cfg_site_t **sites, size_t n, diag_t *d)
{
    const cfg_site_t *first = NULL;
    for (size_t i = 0; i < n; i++) {
        if (!sites[i]->is_default)
            continue;
        if (first == NULL) {
            first = sites[i];
            continue;
        }
        diag_error(d, sites[i]->default_pos, "site '%s' is also marked default (site '%s' is the default, %s:%d:%d)",
                   sites[i]->name.s, first->name.s, first->default_pos.file, first->default_pos.line,
                   first->default_pos.col);
    }
}

static void check_zone(const cstr_t *z, const char *kind, const char *const *names, size_t n, diag_t *d)
{
    if (z->s == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        if (strcmp(names[i], z->s) == 0)
            return;
    const char *sg = diag_suggest(z->s, names, n);
    if (sg)
        diag_error(d, z->pos, "unknown %s zone '%s' (did you mean '%s'?)", kind, z->s, sg);
    else
        diag_error(d, z->pos, "unknown %s zone '%s' (define it under %s in the global settings)", kind, z->s,
                   strcmp(kind, "cache") == 0 ? "cache_zones" : "rate_limit_zones");
}

/* Does route a (earlier) match every request route b could match? */
static bool covers(const cfg_route_t *a, const cfg_route_t *b)
{
    uint32_t am = a->methods ? a->methods : RT_M_ALL, bm = b->methods ? b->methods : RT_M_ALL;
    if ((am & bm) != bm)
        return false;
    switch (a->match) {
    case RT_MATCH_ANY:
        return true;
    case RT_MATCH_PREFIX:
        return (b->match == RT_MATCH_PREFIX || b->match == RT_MATCH_EXACT) &&
               strncmp(b->path.s, a->path.s, strlen(a->path.s)) == 0;
    case RT_MATCH_EXACT:
        return b->match == RT_MATCH_EXACT && strcmp(a->path.s, b->path.s) == 0;
    default:
        return false; /* regex: undecidable in general */
    }
}

static void check_shadowed(const cfg_site_t *s, diag_t *d)
{
    for (size_t j = 1; j < s->nroutes; j++)
        for (size_t i = 0; i < j; i++)
            if (covers(&s->routes[i], &s->routes[j])) {
                diag_warning(d, s->routes[j].pos, "route can never match (shadowed by line %d)", s->routes[i].pos.line);
                break;
            }
}

static X509 *load_cert(const cstr_t *f, diag_t *d)
{
    BIO *b = BIO_new_file(f->s, "r");
    if (b == NULL) {
        diag_error(d, f->pos, "cannot read cert_file '%s': %s", f->s, strerror(errno ? errno : ENOENT));
        ERR_clear_error();
        return NULL;
    }
    X509 *x = PEM_read_bio_X509(b, NULL, NULL, NULL);
    BIO_free(b);
    if (x == NULL)
        diag_error(d, f->pos, "cert_file '%s' holds no PEM certificate", f->s);
    ERR_clear_error();
    return x;
}

static EVP_PKEY *load_key(const cstr_t *f, diag_t *d)
{
    BIO *b = BIO_new_file(f->s, "r");
    if (b == NULL) {
        diag_error(d, f->pos, "cannot read key_file '%s': %s", f->s, strerror(errno ? errno : ENOENT));
        ERR_clear_error();
        return NULL;
    }
    EVP_PKEY *k = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
    BIO_free(b);
    if (k == NULL)
        diag_error(d, f->pos, "key_file '%s' holds no PEM private key (or it is encrypted)", f->s);
    ERR_clear_error();
    return k;
}

static void check_cert_hosts(const cfg_site_t *s, X509 *x, diag_t *d)
{
    for (size_t i = 0; i < s->nhosts; i++) {
        const char *h = s->hosts[i].s;
        int ok = X509_check_host(x, h, 0, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS, NULL) == 1;
        if (!ok && strncmp(h, "*.", 2) == 0) {
            /* A wildcard site host is covered by the same wildcard in the certificate. */
            char probe[300];
            snprintf(probe, sizeof(probe), "proxyd-probe.%s", h + 2);
            ok = X509_check_host(x, probe, 0, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS, NULL) == 1;
        }
        if (!ok)
            diag_error(d, s->cert_file.pos, "certificate '%s' does not cover host '%s'", s->cert_file.s, h);
    }
}

static void check_cert_files(const cfg_site_t *s, diag_t *d)
{
    errno = 0;
    X509 *x = load_cert(&s->cert_file, d);
    errno = 0;
    EVP_PKEY *k = load_key(&s->key_file, d);
    if (x && k && X509_check_private_key(x, k) != 1)
        diag_error(d, s->key_file.pos, "key_file '%s' does not match cert_file '%s'", s->key_file.s, s->cert_file.s);
    if (x && X509_cmp_current_time(X509_get0_notAfter(x)) < 0)
        diag_error(d, s->cert_file.pos, "certificate '%s' has expired", s->cert_file.s);
    if (x)
        check_cert_hosts(s, x, d);
    ERR_clear_error();
    X509_free(x);
    EVP_PKEY_free(k);
}

void check_sites(cfg_global_t *g, cfg_site_t **sites, size_t n, diag_t *d)
{
    const char **cz = malloc((g->ncache_zones + 1) * sizeof(*cz)), **rz = malloc((g->nrate_zones + 1) * sizeof(*rz));
    if (cz == NULL || rz == NULL)
        abort();
    for (size_t i = 0; i < g->ncache_zones; i++)
        cz[i] = g->cache_zones[i].name;
    for (size_t i = 0; i < g->nrate_zones; i++)
        rz[i] = g->rate_zones[i].name;
    check_hosts(sites, n, d);
    check_defaults(sites, n, d);
    for (size_t i = 0; i < n; i++) {
        const cfg_site_t *s = sites[i];
        for (size_t j = 0; j < s->nroutes; j++) {
            const cfg_route_t *r = &s->routes[j];
            check_zone(&r->cache_zone, "cache", (const char *const *)cz, g->ncache_zones, d);
            check_zone(&r->rate_zone, "rate-limit", (const char *const *)rz, g->nrate_zones, d);
        }
        check_shadowed(s, d);
        if (s->cert_mode == RT_CERT_FILE)
            check_cert_files(s, d);
    }
    free(cz);
    free(rz);
}

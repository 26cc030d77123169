/*
 * table.c - loading and preparing a generation (see table.h).
 */
#include "core/table.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#include "../common/store.h"
#include "core/bundle.h"
#include "core/net.h"
#include "core/worker.h"
#include "upstream/resolve.h"

/* The store's certificate rows for the table's TLS sites (strings malloc'ed;
 * certs_free wipes the keys). */
static void certs_free(bundle_cert_t *c, size_t n)
{
    for (size_t i = 0; c && i < n; i++) {
        free((char *)c[i].site);
        free((char *)c[i].cert);
        free((char *)c[i].chain);
        if (c[i].key)
            explicit_bzero((char *)c[i].key, strlen(c[i].key));
        free((char *)c[i].key);
    }
    free(c);
}

static char *column_dup(sqlite3_stmt *q, int col)
{
    const char *s = (const char *)sqlite3_column_text(q, col);
    return strdup(s ? s : "");
}

static int read_certs(store_t *st, const rt_table_t *t, bundle_cert_t **out, size_t *n, char *err, size_t errlen)
{
    sqlite3_stmt *q = store_prepare(st, "SELECT cert_pem, chain_pem, key_pem FROM certificates WHERE site = ?");
    bundle_cert_t *c = calloc(t->nsites + 1, sizeof(*c));
    int rc = 0;
    *n = 0;
    if (q == NULL || c == NULL) {
        snprintf(err, errlen, "%s", q ? "out of memory" : st->err);
        rc = -1;
    }
    for (uint32_t i = 0; rc == 0 && i < t->nsites; i++) {
        const char *site = rt_cstr(t, t->sites[i].name);
        if (t->sites[i].cert_mode == RT_CERT_NONE)
            continue;
        sqlite3_reset(q);
        sqlite3_bind_text(q, 1, site, -1, SQLITE_STATIC);
        if (sqlite3_step(q) != SQLITE_ROW) {
            snprintf(err, errlen, "site %s: no certificate in the store (run 'proxyctl renew-cert %s')", site, site);
            rc = -1;
            break;
        }
        bundle_cert_t *e = &c[(*n)++];
        e->site = strdup(site);
        e->cert = column_dup(q, 0);
        e->chain = column_dup(q, 1);
        e->key = column_dup(q, 2);
        if (!e->site || !e->cert || !e->chain || !e->key) {
            snprintf(err, errlen, "out of memory");
            rc = -1;
        }
    }
    sqlite3_finalize(q);
    if (rc < 0) {
        certs_free(c, *n);
        c = NULL;
    }
    *out = c;
    return rc;
}

int tref_bundle_load(const char *db, int64_t gen, uint8_t **out, size_t *outlen, char *err, size_t errlen)
{
    store_t st;
    uint8_t *blob = NULL;
    size_t len = 0, ncerts = 0;
    int64_t id = 0;
    bundle_cert_t *certs = NULL;
    rt_table_t t;
    char why[256];
    int rc = -1;
    *out = NULL;
    if (store_open(&st, db, STORE_RDONLY) < 0) {
        snprintf(err, errlen, "%s", st.err);
        return -1;
    }
    /* One read transaction: the blob and its certificates of one moment. */
    int got = store_exec(&st, "BEGIN") < 0 ? -1 : gen ? store_generation_blob(&st, gen, &blob, &len)
                                                     : store_active(&st, &id, &blob, &len);
    if (gen)
        id = gen;
    if (got < 0 || blob == NULL)
        snprintf(err, errlen, "%s", blob ? st.err : "the store has no active generation (run 'proxyctl init')");
    else if (rt_open(&t, blob, len, why, sizeof(why)) < 0)
        snprintf(err, errlen, "generation %lld refused: %s", (long long)id, why);
    else if (read_certs(&st, &t, &certs, &ncerts, err, errlen) == 0) {
        *outlen = bundle_size(len, certs, ncerts);
        if ((*out = malloc(*outlen)) != NULL) {
            bundle_write(*out, id, blob, len, certs, ncerts);
            rc = 0;
        } else
            snprintf(err, errlen, "out of memory");
    }
    certs_free(certs, ncerts);
    free(blob);
    store_close(&st);
    return rc;
}

void tref_bundle_free(uint8_t *p, size_t n)
{
    if (p)
        explicit_bzero(p, n);
    free(p);
}

/* Run every module's table_init with the bundle's certificates: 0 or -1
 * with err. */
static int prepare(tref_t *r, const char *db, const bundle_t *b, char *err, size_t errlen)
{
    module_load_t ld = {db, b};
    for (const module_t *const *m = proxyd_modules; *m; m++)
        if ((*m)->table_init && (*m)->table_init(r, &ld, err, errlen) < 0)
            return -1;
    return 0;
}

tref_t *tref_open(const char *db, const uint8_t *p, size_t n, char *err, size_t errlen)
{
    bundle_t b;
    char why[256];
    if (bundle_read(p, n, &b, err, errlen) < 0)
        return NULL;
    tref_t *r = calloc(1, sizeof(*r));
    uint8_t *blob = malloc(b.blob_len ? b.blob_len : 1); /* malloc's alignment is what rt_open needs */
    if (r == NULL || blob == NULL) {
        snprintf(err, errlen, "out of memory");
        free(r);
        free(blob);
        return NULL;
    }
    memcpy(blob, b.blob, b.blob_len);
    r->refs = 1;
    r->generation = b.generation;
    r->blob = blob;
    r->len = b.blob_len;
    if (rt_open(&r->t, blob, b.blob_len, why, sizeof(why)) < 0) {
        snprintf(err, errlen, "generation %lld refused: %s", (long long)b.generation, why);
        free(blob);
        free(r);
        return NULL;
    }
    if (prepare(r, db, &b, err, errlen) < 0) {
        tref_put(r);
        return NULL;
    }
    return r;
}

tref_t *tref_load(const char *db, int64_t gen, char *err, size_t errlen)
{
    uint8_t *p;
    size_t n;
    if (tref_bundle_load(db, gen, &p, &n, err, errlen) < 0)
        return NULL;
    tref_t *r = tref_open(db, p, n, err, errlen);
    tref_bundle_free(p, n);
    return r;
}

void tref_put(tref_t *r)
{
    if (r == NULL || --r->refs > 0)
        return;
    size_t nmod = 0;
    while (proxyd_modules[nmod])
        nmod++;
    while (nmod-- > 0) /* in reverse; a module whose init did not run finds its slot NULL */
        if (proxyd_modules[nmod]->table_free)
            proxyd_modules[nmod]->table_free(r);
    free(r->blob);
    free(r);
}

int tref_sockaddr(const tref_t *r, uint32_t server, struct sockaddr_storage *ss, socklen_t *len, const char **why)
{
    const rt_table_t *t = &r->t;
    const rt_sockaddr_t *a = &t->servers[server].sa;
    if (net_sockaddr(t, a, ss, len) == 0)
        return 0;
    if (a->kind == RT_ADDR_NAME) /* the worker's resolver has its addresses */
        return resolve_first(r, server, W && W->loop ? ev_now(W->loop) : 0, ss, len, why);
    *why = "unusable address";
    return -1;
}

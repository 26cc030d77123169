/*
 * table.c - loading and preparing a generation (see table.h).
 */
#include "core/table.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#include "../common/store.h"
#include "core/net.h"

tref_t *tref_load(const char *db, int64_t gen, char *err, size_t errlen)
{
    store_t st;
    tref_t *r = NULL;
    uint8_t *blob = NULL;
    size_t len = 0;
    int64_t id = 0;
    if (store_open(&st, db, STORE_RDONLY) < 0) {
        snprintf(err, errlen, "%s", st.err);
        return NULL;
    }
    int rc = gen ? store_generation_blob(&st, gen, &blob, &len) : store_active(&st, &id, &blob, &len);
    if (gen)
        id = gen;
    if (rc < 0 || blob == NULL) {
        snprintf(err, errlen, "%s", blob ? st.err : "the store has no active generation (run 'proxyctl init')");
        goto out;
    }
    r = calloc(1, sizeof(*r));
    if (r == NULL)
        goto out;
    char why[256];
    if (rt_open(&r->t, blob, len, why, sizeof(why)) < 0) {
        snprintf(err, errlen, "generation %lld refused: %s", (long long)id, why);
        free(r);
        r = NULL;
        goto out;
    }
    r->refs = 1;
    r->generation = id;
    r->blob = blob;
    r->len = len;
    blob = NULL;
out:
    free(blob);
    store_close(&st);
    return r;
}

/* Servers given by name are resolved here, once per load (so again on every
 * reload), never on the request path. */
static void resolve_names(tref_t *r)
{
    const rt_table_t *t = &r->t;
    for (uint32_t i = 0; i < t->nservers; i++) {
        const rt_sockaddr_t *a = &t->servers[i].sa;
        if (a->kind != RT_ADDR_NAME)
            continue;
        const char *text = rt_cstr(t, a->addr);
        char host[256], port[8];
        snprintf(host, sizeof(host), "%.*s", (int)(strrchr(text, ':') - text), text);
        snprintf(port, sizeof(port), "%u", a->port);
        struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
        if (getaddrinfo(host, port, &hints, &res) == 0 && res) {
            memcpy(&r->resolved[i], res->ai_addr, res->ai_addrlen);
            freeaddrinfo(res);
        }
    }
}

int tref_prepare(tref_t *r, const char *db, char *err, size_t errlen)
{
    snprintf(err, errlen, "out of memory");
    r->resolved = calloc(r->t.nservers + 1, sizeof(*r->resolved));
    if (r->resolved == NULL)
        return -1;
    resolve_names(r);
    store_t st;
    if (store_open(&st, db, STORE_RDONLY) < 0) {
        snprintf(err, errlen, "%s", st.err);
        return -1;
    }
    int rc = 0;
    module_load_t ld = {db, &st};
    for (const module_t *const *m = proxyd_modules; rc == 0 && *m; m++)
        if ((*m)->table_init && (*m)->table_init(r, &ld, err, errlen) < 0)
            rc = -1;
    store_close(&st);
    r->prepared = rc == 0;
    return rc;
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
    free(r->resolved);
    free(r->blob);
    free(r);
}

int tref_sockaddr(const tref_t *r, uint32_t server, struct sockaddr_storage *ss, socklen_t *len, const char **why)
{
    const rt_table_t *t = &r->t;
    const rt_sockaddr_t *a = &t->servers[server].sa;
    if (net_sockaddr(t, a, ss, len) == 0)
        return 0;
    if (r->resolved && r->resolved[server].ss_family != 0) { /* a host name, resolved at load */
        *ss = r->resolved[server];
        *len = ss->ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
        return 0;
    }
    *why = a->kind == RT_ADDR_NAME ? "host name did not resolve when the table was loaded" : "unusable address";
    return -1;
}

bool tref_same_addresses(const tref_t *a, const tref_t *b)
{
    if (a->t.nservers != b->t.nservers || a->resolved == NULL || b->resolved == NULL)
        return a->t.nservers == b->t.nservers;
    for (uint32_t i = 0; i < a->t.nservers; i++)
        if (a->t.servers[i].sa.kind == RT_ADDR_NAME &&
            memcmp(&a->resolved[i], &b->resolved[i], sizeof(a->resolved[i])) != 0)
            return false;
    return true;
}

/*
 * table.c - loading and preparing a generation (see table.h).
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "core/table.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#include <pcre2.h>

#include "../common/store.h"
#include "upstream/health.h"
#include "core/net.h"
#include "handlers/proxy.h"
#include "conn/tls.h"

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

static int compile_regexes(tref_t *r, char *err, size_t errlen)
{
    const rt_table_t *t = &r->t;
    r->regex = calloc(t->nroutes + 1, sizeof(*r->regex));
    if (r->regex == NULL)
        return -1;
    uint32_t max_pairs = 1;
    for (uint32_t i = 0; i < t->nroutes; i++) {
        if (t->routes[i].match != RT_MATCH_REGEX)
            continue;
        int code;
        PCRE2_SIZE off;
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)rt_cstr(t, t->routes[i].path), PCRE2_ZERO_TERMINATED, PCRE2_UTF,
                                       &code, &off, NULL);
        if (re == NULL) {
            snprintf(err, errlen, "route %u: regex does not compile at offset %zu", i, (size_t)off);
            return -1;
        }
        pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* falls back to the interpreter if JIT is unavailable */
        uint32_t cap;
        pcre2_pattern_info(re, PCRE2_INFO_CAPTURECOUNT, &cap);
        if (cap + 1 > max_pairs)
            max_pairs = cap + 1;
        r->regex[i] = re;
    }
    r->match_data = pcre2_match_data_create(max_pairs, NULL);
    return r->match_data ? 0 : -1;
}

static int open_roots(tref_t *r)
{
    const rt_table_t *t = &r->t;
    r->root_fd = malloc((t->nroutes + 1) * sizeof(int));
    if (r->root_fd == NULL)
        return -1;
    for (uint32_t i = 0; i < t->nroutes; i++) {
        r->root_fd[i] = -1;
        if (t->routes[i].action == RT_ACT_STATIC)
            r->root_fd[i] = open(rt_cstr(t, t->routes[i].target), O_PATH | O_DIRECTORY | O_CLOEXEC);
    }
    return 0;
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
    if (compile_regexes(r, err, errlen) < 0 || open_roots(r) < 0)
        return -1;
    if (balance_prepare(r) < 0)
        return -1;
    r->resolved = calloc(r->t.nservers + 1, sizeof(*r->resolved));
    if (r->resolved == NULL)
        return -1;
    resolve_names(r);
    store_t st;
    if (store_open(&st, db, STORE_RDONLY) < 0) {
        snprintf(err, errlen, "%s", st.err);
        return -1;
    }
    int rc = tls_prepare(r, &st, err, errlen);
    store_close(&st);
    if (rc == 0 && health_bind(r) < 0) {
        snprintf(err, errlen, "out of memory");
        rc = -1;
    }
    return rc;
}

void tref_put(tref_t *r)
{
    if (r == NULL || --r->refs > 0)
        return;
    for (uint32_t i = 0; r->regex && i < r->t.nroutes; i++)
        pcre2_code_free(r->regex[i]);
    for (uint32_t i = 0; r->root_fd && i < r->t.nroutes; i++)
        if (r->root_fd[i] >= 0)
            close(r->root_fd[i]);
    pcre2_match_data_free(r->match_data);
    free(r->regex);
    free(r->root_fd);
    balance_release(r);
    health_release(r);
    proxy_table_release(r);
    free(r->resolved);
    tls_release(r);
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

int tref_regex(void *ud, uint32_t route, const char *path, size_t n)
{
    tref_t *r = ud;
    pcre2_code *re = r->regex[route];
    if (re == NULL)
        return 0;
    return pcre2_match(re, (PCRE2_SPTR)path, n, 0, 0, r->match_data, NULL) >= 0;
}

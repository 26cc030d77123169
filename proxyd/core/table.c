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
#include <time.h>
#include <unistd.h>

#include <pcre2.h>

#include "../common/log.h"
#include "../common/route.h"
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
    if (compile_regexes(r, err, errlen) < 0)
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
    int rc = 0;
    module_load_t ld = {db, &st};
    for (const module_t *const *m = proxyd_modules; rc == 0 && *m; m++)
        if ((*m)->table_init && (*m)->table_init(r, &ld, err, errlen) < 0)
            rc = -1;
    store_close(&st);
    return rc;
}

void tref_put(tref_t *r)
{
    if (r == NULL || --r->refs > 0)
        return;
    for (uint32_t i = 0; r->regex && i < r->t.nroutes; i++)
        pcre2_code_free(r->regex[i]);
    pcre2_match_data_free(r->match_data);
    free(r->regex);
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

/* 1 match, 0 no match, -1 undecided (route_match fails closed on it).  The
 * limits (route.h) live in one match context per process, made on first
 * use: a worker's requests run one at a time.  A failure is logged at most
 * once a second, with the count of those left out, so a flood of such paths
 * cannot fill the disk. */
int tref_regex(void *ud, uint32_t route, const char *path, size_t n)
{
    static pcre2_match_context *mctx;
    static time_t last;
    static unsigned long quiet;
    tref_t *r = ud;
    pcre2_code *re = r->regex[route];
    if (re == NULL)
        return 0;
    if (mctx == NULL && (mctx = pcre2_match_context_create(NULL)) != NULL) {
        pcre2_set_match_limit(mctx, ROUTE_REGEX_MATCH_LIMIT);
        pcre2_set_depth_limit(mctx, ROUTE_REGEX_DEPTH_LIMIT);
        pcre2_jit_stack *js = pcre2_jit_stack_create(32 * 1024, ROUTE_REGEX_JIT_STACK, NULL);
        if (js)
            pcre2_jit_stack_assign(mctx, NULL, js);
    }
    int rc = mctx ? pcre2_match(re, (PCRE2_SPTR)path, n, 0, 0, r->match_data, mctx) : PCRE2_ERROR_NOMEMORY;
    if (rc >= 0 || rc == PCRE2_ERROR_NOMATCH)
        return rc >= 0;
    time_t now = time(NULL);
    if (now == last) {
        quiet++;
        return -1;
    }
    const rt_table_t *t = &r->t;
    const rt_route_t *rt = &t->routes[route];
    const rt_site_t *s = &t->sites[rt->site];
    PCRE2_UCHAR why[128];
    char more[64] = "";
    pcre2_get_error_message(rc, why, sizeof(why));
    if (quiet)
        snprintf(more, sizeof(more), " (%lu more since the last such line)", quiet);
    log_warn("site %s: path_regex '%s' (route %u, %s:%u) failed on a %zu-byte path: %s; failing closed (%s)%s",
             rt_cstr(t, s->name), rt_cstr(t, rt->path), route - s->routes.first + 1, rt_cstr(t, s->source), rt->line,
             n, (const char *)why,
             rt->action == RT_ACT_RETURN ? "counted as a match of this return route" : "500 if the route takes the method",
             more);
    last = now;
    quiet = 0;
    return -1;
}

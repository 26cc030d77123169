/*
 * route_regex.c - path_regex routes: compiled with JIT once per generation
 * (module state MOD_ROUTE), matched with explicit limits (see route_regex.h).
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "http/route_regex.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <pcre2.h>

#include "../common/log.h"
#include "../common/route.h"

typedef struct {
    pcre2_code **re;             /* per route: its compiled pattern, or NULL */
    pcre2_match_data *match_data; /* sized for the largest pattern */
} regex_table_t;

static regex_table_t *regex_of(const tref_t *t) { return t->mod[MOD_ROUTE]; }

static void regex_table_free(tref_t *tr)
{
    regex_table_t *r = regex_of(tr);
    if (r == NULL)
        return;
    for (uint32_t i = 0; r->re && i < tr->t.nroutes; i++)
        pcre2_code_free(r->re[i]);
    pcre2_match_data_free(r->match_data);
    free(r->re);
    free(r);
    tr->mod[MOD_ROUTE] = NULL;
}

static int regex_table_init(tref_t *tr, const module_load_t *ld, char *err, size_t errlen)
{
    const rt_table_t *t = &tr->t;
    regex_table_t *r = calloc(1, sizeof(*r));
    (void)ld;
    snprintf(err, errlen, "out of memory");
    if (r == NULL)
        return -1;
    tr->mod[MOD_ROUTE] = r;
    r->re = calloc(t->nroutes + 1, sizeof(*r->re));
    if (r->re == NULL)
        return -1;
    uint32_t max_pairs = 1;
    for (uint32_t i = 0; i < t->nroutes; i++) {
        if (t->routes[i].match != RT_MATCH_REGEX)
            continue;
        int code;
        PCRE2_SIZE off;
        /* A path that is not UTF-8 (%FF) is matched, its invalid bytes matching no pattern character. */
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)rt_cstr(t, t->routes[i].path), PCRE2_ZERO_TERMINATED,
                                       PCRE2_UTF | PCRE2_MATCH_INVALID_UTF, &code, &off, NULL);
        if (re == NULL) {
            snprintf(err, errlen, "route %u: regex does not compile at offset %zu", i, (size_t)off);
            return -1;
        }
        pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* falls back to the interpreter if JIT is unavailable */
        uint32_t cap;
        pcre2_pattern_info(re, PCRE2_INFO_CAPTURECOUNT, &cap);
        if (cap + 1 > max_pairs)
            max_pairs = cap + 1;
        r->re[i] = re;
    }
    r->match_data = pcre2_match_data_create(max_pairs, NULL);
    return r->match_data ? 0 : -1;
}

const module_t route_regex_module = {.name = "route-regex", .table_init = regex_table_init, .table_free = regex_table_free};

/* 1 match, 0 no match, -1 undecided (route_match fails closed on it).  The
 * limits (route.h) live in one match context per process, made on first
 * use: a worker's requests run one at a time.  A failure is logged at most
 * once a second, with the count of those left out, so a flood of such paths
 * cannot fill the disk. */
int route_regex_match(void *ud, uint32_t route, const char *path, size_t n)
{
    static pcre2_match_context *mctx;
    static log_limit_t limit;
    unsigned long quiet;
    tref_t *tr = ud;
    regex_table_t *r = regex_of(tr);
    pcre2_code *re = r->re[route];
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
    if (!log_limited(&limit, &quiet))
        return -1;
    const rt_table_t *t = &tr->t;
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
    return -1;
}

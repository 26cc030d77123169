/*
 * cmd_route.c - route-test: explain a request against the compiled table,
 * using the same matcher as proxyd (common/route.c).
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <pcre2.h>

#include "../common/coding.h"
#include "../common/route.h"
#include "cli.h"
#include "dump.h"

typedef struct {
    const char *method;
    const char *host;
    size_t hostlen;
    const char *path;
    size_t pathlen;
    const char *scheme;
    coding_accept_t accept; /* the -H Accept-Encoding values */
} request_t;

/* The regex callback's state: route-test matches as proxyd does (JIT where
 * available, the limits of route.h) so that it gives the same outcome. */
typedef struct {
    const rt_table_t *t;
    pcre2_match_context *mctx;
    pcre2_jit_stack *js;
    int error; /* PCRE2 code of the first failed match, 0 none */
} regex_ctx_t;

static int regex_match(void *ud, uint32_t r, const char *path, size_t n)
{
    regex_ctx_t *rx = ud;
    int code, rc = PCRE2_ERROR_NOMEMORY;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)rt_cstr(rx->t, rx->t->routes[r].path), PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | PCRE2_MATCH_INVALID_UTF, &code, &off, NULL);
    if (re == NULL) {
        rc = code; /* never in a verified table: proxyd would refuse the generation */
    } else {
        pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
        pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
        if (md && rx->mctx)
            rc = pcre2_match(re, (PCRE2_SPTR)path, n, 0, 0, md, rx->mctx);
        pcre2_match_data_free(md);
        pcre2_code_free(re);
    }
    if (rc >= 0 || rc == PCRE2_ERROR_NOMATCH)
        return rc >= 0;
    if (rx->error == 0)
        rx->error = rc;
    return -1;
}

static void regex_ctx_init(regex_ctx_t *rx, const rt_table_t *t)
{
    *rx = (regex_ctx_t){t, pcre2_match_context_create(NULL), NULL, 0};
    if (rx->mctx == NULL)
        return;
    pcre2_set_match_limit(rx->mctx, ROUTE_REGEX_MATCH_LIMIT);
    pcre2_set_depth_limit(rx->mctx, ROUTE_REGEX_DEPTH_LIMIT);
    rx->js = pcre2_jit_stack_create(32 * 1024, ROUTE_REGEX_JIT_STACK, NULL);
    if (rx->js)
        pcre2_jit_stack_assign(rx->mctx, NULL, rx->js);
}

static void regex_ctx_free(regex_ctx_t *rx)
{
    pcre2_match_context_free(rx->mctx);
    pcre2_jit_stack_free(rx->js);
}

/* URL: scheme://host[:port]/path?query, or a bare /path with -H Host. */
static int parse_url(const char *url, request_t *rq)
{
    const char *p = url;
    const char *sep = strstr(url, "://");
    if (sep) {
        rq->scheme = strncmp(url, "https", 5) == 0 ? "https" : "http";
        p = sep + 3;
        const char *slash = strchr(p, '/');
        rq->host = p;
        rq->hostlen = slash ? (size_t)(slash - p) : strlen(p);
        p = slash ? slash : "/";
    } else if (url[0] != '/') {
        return -1;
    }
    rq->path = p;
    const char *q = strpbrk(p, "?#");
    rq->pathlen = q ? (size_t)(q - p) : strlen(p);
    return 0;
}

static int parse_args(int argc, char **argv, request_t *rq, char *why, size_t whylen)
{
    const char *url = NULL;
    rq->method = "GET";
    rq->scheme = "http";
    coding_accept_init(&rq->accept);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            continue;
        if (strcmp(argv[i], "-X") == 0 && i + 1 < argc) {
            rq->method = argv[++i];
        } else if (strcmp(argv[i], "-H") == 0 && i + 1 < argc) {
            const char *h = argv[++i];
            if (strncasecmp(h, "host:", 5) == 0) {
                for (h += 5; *h == ' ' || *h == '\t'; h++)
                    ;
                rq->host = h;
                rq->hostlen = strlen(h);
            } else if (strncasecmp(h, "accept-encoding:", 16) == 0) {
                coding_accept_parse(&rq->accept, h + 16, strlen(h + 16));
            } else if (strchr(h, ':') == NULL) {
                snprintf(why, whylen, "header '%s' has no ':' (write -H 'Name: value')", h);
                return -1;
            }
        } else if (url == NULL && argv[i][0] != '-') {
            url = argv[i];
        } else {
            snprintf(why, whylen, argv[i][0] == '-' ? "option '%s' needs a value" : "unexpected argument '%s'", argv[i]);
            return -1;
        }
    }
    if (url == NULL) {
        snprintf(why, whylen, "missing URL");
        return -1;
    }
    if (parse_url(url, rq) < 0 || rq->host == NULL) {
        snprintf(why, whylen, "'%s' is not a URL (http[s]://HOST/PATH, or /PATH with -H 'Host: NAME')", url);
        return -1;
    }
    return 0;
}

/* strip_prefix and rewrite_prefix: the path the upstream (or the static
 * root) sees, by the function proxyd uses. */
static void rewrite_show(const rt_table_t *t, const rt_route_t *r, const request_t *rq, FILE *out)
{
    if (r->match != RT_MATCH_PREFIX || !(r->flags & (RT_RF_STRIP_PREFIX | RT_RF_REWRITE_PREFIX)))
        return;
    const char *head, *rest;
    size_t hn, rn;
    route_upstream_path(t, r, rq->path, rq->pathlen, &head, &hn, &rest, &rn);
    fprintf(out, "  rewrite: %.*s -> %.*s%.*s\n", (int)rq->pathlen, rq->path, (int)hn, head, (int)rn, rest);
}

/* The script a fastcgi route runs for the request: SCRIPT_FILENAME and PATH_INFO. */
static void fastcgi_script(const rt_table_t *t, const rt_route_t *r, const request_t *rq, char *file, size_t cap,
                           const char **info, size_t *info_len)
{
    bool index;
    size_t sn = route_fastcgi_script(rq->path, rq->pathlen, &index);
    const char *root = rt_cstr(t, r->target);
    size_t rn = r->target.len;
    while (rn > 1 && root[rn - 1] == '/')
        rn--;
    snprintf(file, cap, "%.*s%.*s%s", (int)(rn == 1 ? 0 : rn), root, (int)sn, rq->path,
             index ? rt_cstr(t, r->extra) : "");
    *info = rq->path + sn;
    *info_len = rq->pathlen - sn;
}

static void fastcgi_show(const rt_table_t *t, const rt_route_t *r, const request_t *rq, FILE *out)
{
    char file[4096];
    const char *info;
    size_t in;
    fastcgi_script(t, r, rq, file, sizeof(file), &info, &in);
    fprintf(out, "  script: SCRIPT_FILENAME=%s PATH_INFO=%.*s\n", file, (int)in, info);
}

/* "upstream_path": the path the upstream sees, when the route rewrites it. */
static void json_upstream_path(const rt_table_t *t, const rt_route_t *r, const request_t *rq, json_t *o)
{
    if (r->match != RT_MATCH_PREFIX || !(r->flags & (RT_RF_STRIP_PREFIX | RT_RF_REWRITE_PREFIX)))
        return;
    const char *head, *rest;
    size_t hn, rn;
    route_upstream_path(t, r, rq->path, rq->pathlen, &head, &hn, &rest, &rn);
    char up[4096];
    snprintf(up, sizeof(up), "%.*s%.*s", (int)hn, head, (int)rn, rest);
    json_object_set_new(o, "upstream_path", json_string(up));
}

/* A JSON string of s that jansson accepts (bytes beyond ASCII of a
 * command-line argument need not be UTF-8). */
static json_t *json_arg(const char *s, size_t n)
{
    json_t *v = json_stringn(s, n);
    return v ? v : json_string("(not UTF-8)");
}

/* Everything the text form says, as one object: the site, the route with
 * its match, action, policies and header operations, the upstream pool,
 * the rewrite, redirect_http and compression. */
static void json_route(const rt_table_t *t, uint32_t site, const route_result_t *res, const request_t *rq,
                       const regex_ctx_t *rx)
{
    const rt_site_t *s = &t->sites[site];
    json_t *o = json_object();
    json_object_set_new(o, "site", dump_json_str(t, s->name));
    json_object_set_new(o, "source", dump_json_str(t, s->source));
    json_object_set_new(o, "status", json_integer(res->status ? res->status : 200));
    json_object_set_new(o, "request", json_pack("{s:o,s:s,s:o,s:o}", "method", json_arg(rq->method, strlen(rq->method)),
                                                "scheme", rq->scheme, "host", json_arg(rq->host, rq->hostlen), "path",
                                                json_arg(rq->path, rq->pathlen)));
    if (res->failed != RT_NONE) {
        PCRE2_UCHAR msg[128];
        pcre2_get_error_message(rx->error, msg, sizeof(msg));
        json_object_set_new(o, "regex_failed", json_pack("{s:I,s:I,s:s}", "route", (json_int_t)(res->failed - s->routes.first + 1),
                                                         "line", (json_int_t)t->routes[res->failed].line, "error", (const char *)msg));
    }
    if (res->route == RT_NONE && res->status == 405) {
        json_t *allow = json_array();
        for (unsigned i = 0; i < RT_M_COUNT; i++)
            if (res->allow & (1u << i))
                json_array_append_new(allow, json_string(rt_method_name(i)));
        json_object_set_new(o, "allow", allow);
    }
    if (res->route != RT_NONE) {
        const rt_route_t *r = &t->routes[res->route];
        json_t *rj = dump_json_route(t, res->route);
        json_object_update(o, rj);
        json_decref(rj);
        if ((s->flags & RT_SF_REDIRECT_HTTP) && strcmp(rq->scheme, "http") == 0 &&
            strncmp(rq->path, "/.well-known/acme-challenge/", 28) != 0)
            json_object_set_new(o, "redirect_http", json_true()); /* plain HTTP gets 301 first */
        if (rt_action_upstream(r->action)) {
            json_upstream_path(t, r, rq, o);
            json_object_set_new(o, "upstream_pool", dump_json_upstream(t, r->upstream));
        }
        if (r->action == RT_ACT_FASTCGI) {
            char file[4096], pi[4096];
            const char *info;
            size_t in;
            fastcgi_script(t, r, rq, file, sizeof(file), &info, &in);
            snprintf(pi, sizeof(pi), "%.*s", (int)in, info);
            /* "upstream" as for a proxy route (the "fastcgi" object names it too) */
            json_object_set_new(o, "upstream", json_string(rt_cstr(t, t->upstreams[r->upstream].name)));
            json_object_set_new(o, "script_filename", json_arg(file, strlen(file)));
            json_object_set_new(o, "path_info", json_arg(pi, strlen(pi)));
        }
    }
    if (s->flags & RT_SF_COMPRESS) {
        json_object_set_new(o, "compression", dump_json_compression(t, s));
        json_object_set_new(o, "encoding", json_string(coding_name(coding_choose(&rq->accept, coding_site_offered(s)))));
    }
    json_dumpf(o, stdout, JSON_COMPACT | JSON_PRESERVE_ORDER);
    putchar('\n');
    json_decref(o);
}

/* A regex match that could not be decided, and what proxyd makes of it
 * (route_match fails closed). */
static void explain_failed(const rt_table_t *t, const route_result_t *res, const regex_ctx_t *rx)
{
    if (res->failed == RT_NONE)
        return;
    const rt_route_t *r = &t->routes[res->failed];
    const rt_site_t *s = &t->sites[r->site];
    PCRE2_UCHAR msg[128];
    pcre2_get_error_message(rx->error, msg, sizeof(msg));
    printf("note: path_regex of route %u (%s:%u:%u) failed: %s; %s\n", res->failed - s->routes.first + 1,
           rt_cstr(t, s->source), r->line, r->col, (const char *)msg,
           res->status == 500             ? "proxyd fails closed with 500 and tries no later route"
           : r->action == RT_ACT_RETURN ? "proxyd counts it as a match of this return route"
                                        : "the route does not take this method");
}

/* The site's compression and the coding the request's Accept-Encoding
 * gets (proxyd also looks at the response: its type, length, status and
 * fields, docs/compression.md). */
static void explain_compression(const rt_table_t *t, const rt_site_t *s, const request_t *rq)
{
    if (!(s->flags & RT_SF_COMPRESS))
        return;
    dump_compression(t, s, "", stdout);
    enum coding c = coding_choose(&rq->accept, coding_site_offered(s));
    if (rq->accept.fields == 0)
        printf("  encoding: identity (the request has no Accept-Encoding)\n");
    else if (c == CODING_IDENTITY)
        printf("  encoding: identity (Accept-Encoding takes none of the site's codings)\n");
    else
        printf("  encoding: %s for a response of a listed type, of min_length bytes or of unknown length\n",
               coding_name(c));
}

static void explain(const rt_table_t *t, uint32_t site, const route_result_t *res, const request_t *rq,
                    const regex_ctx_t *rx)
{
    const rt_site_t *s = &t->sites[site];
    printf("request: %s %s://%.*s%.*s\n", rq->method, rq->scheme, (int)rq->hostlen, rq->host, (int)rq->pathlen, rq->path);
    printf("site: %s (%s)%s\n", rt_cstr(t, s->name), rt_cstr(t, s->source), s->flags & RT_SF_DEFAULT ? " [default]" : "");
    explain_failed(t, res, rx);
    if (res->route == RT_NONE) {
        printf("result: %d %s\n", res->status,
               res->status == 405 ? "method not allowed" : res->status == 500 ? "regex match failed" : "no route matches");
        if (res->status == 405) {
            printf("allow:");
            for (unsigned i = 0; i < RT_M_COUNT; i++)
                if (res->allow & (1u << i))
                    printf(" %s", rt_method_name(i));
            printf("\n");
        }
        return;
    }
    const rt_route_t *r = &t->routes[res->route];
    if ((s->flags & RT_SF_REDIRECT_HTTP) && strcmp(rq->scheme, "http") == 0 &&
        strncmp(rq->path, "/.well-known/acme-challenge/", 28) != 0)
        printf("note: plain HTTP gets 301 to https (redirect_http); over https:\n");
    dump_route(t, res->route, "", stdout);
    rewrite_show(t, r, rq, stdout);
    if (r->action == RT_ACT_FASTCGI)
        fastcgi_show(t, r, rq, stdout);
    if (rt_action_upstream(r->action))
        dump_upstream(t, r->upstream, "  ", stdout);
    explain_compression(t, s, rq);
}

int cmd_route_test(cli_t *cli, int argc, char **argv)
{
    request_t rq = {0};
    char why[256];
    if (parse_args(argc, argv, &rq, why, sizeof(why)) < 0)
        return cli_usage(find_command("route-test"), "%s", why);
    store_t st;
    if (cli_open_store(cli, &st, STORE_RDONLY) < 0)
        return EXIT_RUNTIME;
    uint8_t *blob = NULL;
    size_t len = 0;
    int64_t gen = 0;
    rt_table_t t;
    int rc = EXIT_RUNTIME;
    if (store_active(&st, &gen, &blob, &len) < 0 || blob == NULL) {
        fprintf(stderr, "proxyctl: %s\n", blob ? st.err : "the store has no active generation");
        goto out;
    }
    if (rt_open(&t, blob, len, why, sizeof(why)) < 0) {
        fprintf(stderr, "proxyctl: generation %lld: %s\n", (long long)gen, why);
        goto out;
    }
    uint32_t site = route_site(&t, rq.host, rq.hostlen);
    rc = EXIT_OK;
    if (site == RT_NONE) {
        if (cli->json)
            printf("{\"site\":null,\"status\":404}\n");
        else
            printf("request: %s %s://%.*s%.*s\nsite: none (no site claims this host and there is no default site)\n"
                   "result: 404\n", rq.method, rq.scheme, (int)rq.hostlen, rq.host, (int)rq.pathlen, rq.path);
        goto out;
    }
    route_result_t res;
    regex_ctx_t rx;
    regex_ctx_init(&rx, &t);
    route_match(&t, site, rq.method, strlen(rq.method), rq.path, rq.pathlen, regex_match, &rx, &res);
    if (cli->json)
        json_route(&t, site, &res, &rq, &rx);
    else
        explain(&t, site, &res, &rq, &rx);
    regex_ctx_free(&rx);
out:
    free(blob);
    store_close(&st);
    return rc;
}

/*
 * config.c - YAML tree to model, driven by declarative option tables.
 *
 * Each mapping type has a table of {key, type, offset, limits, handler}; one
 * walker checks node kinds, reports unknown keys with a suggestion, refuses
 * the keys proxyd does not execute yet (unsupported_keys), converts scalars
 * and stores them at the given offset.  Every problem is reported
 * (the walk never stops at the first) and the caller sees NULL if any was.
 * Cross-site checks live in check.c.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "config.h"

#include <ctype.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <pcre2.h>

#include "../common/str.h"

typedef struct {
    arena_t *a;
    diag_t *d;
    const char *file;
} ctx_t;

enum opt_type { T_STR, T_BOOL, T_U32, T_DUR, T_SIZE, T_ENUM, T_FN };

typedef struct opt {
    const char *key;
    enum opt_type type;
    size_t off;
    uint64_t min, max;
    const char *const *names; /* T_ENUM, NULL-terminated; stored as int */
    int (*fn)(ctx_t *c, const char *key, ynode_t *v, void *obj);
} opt_t;

#define STR(k, T, f) {k, T_STR, offsetof(T, f), 0, 0, NULL, NULL}
#define BOOL(k, T, f) {k, T_BOOL, offsetof(T, f), 0, 0, NULL, NULL}
#define U32(k, T, f, lo, hi) {k, T_U32, offsetof(T, f), lo, hi, NULL, NULL}
#define DUR(k, T, f) {k, T_DUR, offsetof(T, f), 0, 0, NULL, NULL}
#define SIZE(k, T, f) {k, T_SIZE, offsetof(T, f), 0, 0, NULL, NULL}
#define ENUM(k, T, f, names) {k, T_ENUM, offsetof(T, f), 0, 0, names, NULL}
#define FN(k, fn) {k, T_FN, 0, 0, 0, NULL, fn}
#define END {NULL, T_FN, 0, 0, 0, NULL, NULL}

static int err(ctx_t *c, const ynode_t *n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int err(ctx_t *c, const ynode_t *n, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    diag_error(c->d, n->pos, "%s", msg);
    return -1;
}

static int errp(ctx_t *c, pos_t at, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int errp(ctx_t *c, pos_t at, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    diag_error(c->d, at, "%s", msg);
    return -1;
}

static int want(ctx_t *c, const ynode_t *n, ynode_kind_t kind, const char *key)
{
    if (n->kind == kind && !(kind == YN_SCALAR && yaml_is_null(n)))
        return 0;
    static const char *const names[] = {"a string", "a mapping", "a list"};
    return err(c, n, "'%s' must be %s, not %s", key, names[kind],
               yaml_is_null(n) ? "empty" : yaml_kind_name(n));
}

static const char *suggest_key(const opt_t *opts, const char *word)
{
    const char *cands[64];
    size_t n = 0;
    for (; n < ARRAY_LEN(cands) && opts[n].key; n++)
        cands[n] = opts[n].key;
    return diag_suggest(word, cands, n);
}

static int unknown_key(ctx_t *c, const ynode_t *key, const opt_t *opts)
{
    const char *s = suggest_key(opts, key->s);
    if (s)
        return err(c, key, "unknown key '%s' (did you mean '%s'?)", key->s, s);
    return err(c, key, "unknown key '%s'", key->s);
}

static int enum_value(ctx_t *c, const char *key, ynode_t *v, const char *const *names, int *out)
{
    if (want(c, v, YN_SCALAR, key) < 0)
        return -1;
    size_t n = 0;
    for (; names[n]; n++)
        if (strcmp(names[n], v->s) == 0) {
            *out = (int)n;
            return 0;
        }
    char list[256] = "";
    for (size_t i = 0; i < n; i++)
        snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s", i ? ", " : "", names[i]);
    const char *s = diag_suggest(v->s, names, n);
    if (s)
        return err(c, v, "invalid %s '%s' (expected one of: %s; did you mean '%s'?)", key, v->s, list, s);
    return err(c, v, "invalid %s '%s' (expected one of: %s)", key, v->s, list);
}

static int parse_u64(const char *s, uint64_t *v)
{
    if (*s == '\0')
        return -1;
    uint64_t x = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || x > (UINT64_MAX - 9) / 10)
            return -1;
        x = x * 10 + (uint64_t)(*s - '0');
    }
    *v = x;
    return 0;
}

static int scalar(ctx_t *c, const opt_t *o, ynode_t *v, void *obj)
{
    char *field = (char *)obj + o->off;
    const char *why;
    uint64_t x;
    if (want(c, v, YN_SCALAR, o->key) < 0)
        return -1;
    switch (o->type) {
    case T_STR:
        *(char **)field = v->s;
        return 0;
    case T_BOOL:
        if (v->plain && (strcmp(v->s, "true") == 0 || strcmp(v->s, "false") == 0)) {
            *(bool *)field = v->s[0] == 't';
            return 0;
        }
        return err(c, v, "'%s' must be true or false, not '%s'", o->key, v->s);
    case T_U32:
        if (parse_u64(v->s, &x) < 0 || x < o->min || x > o->max)
            return err(c, v, "'%s' must be a whole number from %llu to %llu, not '%s'", o->key,
                       (unsigned long long)o->min, (unsigned long long)o->max, v->s);
        *(uint32_t *)field = (uint32_t)x;
        return 0;
    case T_DUR:
        if (parse_duration_ms(v->s, v->len, &x, &why) < 0)
            return err(c, v, "invalid duration '%s' for '%s': %s", v->s, o->key, why);
        *(uint64_t *)field = x;
        return 0;
    case T_SIZE:
        if (parse_size(v->s, v->len, &x, &why) < 0)
            return err(c, v, "invalid size '%s' for '%s': %s", v->s, o->key, why);
        *(uint64_t *)field = x;
        return 0;
    case T_ENUM:
        return enum_value(c, o->key, v, o->names, (int *)field);
    case T_FN:
        break;
    }
    return -1;
}

/* Walk a mapping with its option table; returns -1 if anything in it failed. */
static int walk(ctx_t *c, const char *what, ynode_t *map, const opt_t *opts, void *obj)
{
    if (want(c, map, YN_MAP, what) < 0)
        return -1;
    int rc = 0;
    for (size_t i = 0; i < map->n; i++) {
        ynode_t *k = map->keys[i], *v = map->vals[i];
        const opt_t *o = opts;
        while (o->key && strcmp(o->key, k->s) != 0)
            o++;
        if (o->key == NULL)
            rc |= unknown_key(c, k, opts);
        else if (o->type == T_FN)
            rc |= o->fn(c, o->key, v, obj);
        else
            rc |= scalar(c, o, v, obj);
    }
    return rc ? -1 : 0;
}

static int require(ctx_t *c, ynode_t *map, const char *key, const char *what)
{
    if (map->kind != YN_MAP || yaml_get(map, key))
        return 0;
    return err(c, map, "%s is missing required key '%s'", what, key);
}

/* ---- value helpers ------------------------------------------------------ */

static int seq_of_scalars(ctx_t *c, const char *key, ynode_t *v, cstr_t **out, size_t *n)
{
    if (want(c, v, YN_SEQ, key) < 0)
        return -1;
    cstr_t *items = arena_alloc(c->a, (v->n ? v->n : 1) * sizeof(*items));
    int rc = 0;
    for (size_t i = 0; i < v->n; i++) {
        if (want(c, v->vals[i], YN_SCALAR, key) < 0) {
            rc = -1;
            continue;
        }
        items[i] = (cstr_t){v->vals[i]->pos, v->vals[i]->s};
    }
    *out = items;
    *n = v->n;
    return rc;
}

static int strings(ctx_t *c, const char *key, ynode_t *v, char ***out, size_t *n)
{
    cstr_t *items;
    if (seq_of_scalars(c, key, v, &items, n) < 0)
        return -1;
    char **s = arena_alloc(c->a, (*n ? *n : 1) * sizeof(*s));
    for (size_t i = 0; i < *n; i++)
        s[i] = items[i].s;
    *out = s;
    return 0;
}

static int cidrs(ctx_t *c, const char *key, ynode_t *v, rt_cidr_t **out, size_t *n)
{
    if (want(c, v, YN_SEQ, key) < 0)
        return -1;
    rt_cidr_t *items = arena_alloc(c->a, (v->n ? v->n : 1) * sizeof(*items));
    int rc = 0;
    for (size_t i = 0; i < v->n; i++) {
        ynode_t *e = v->vals[i];
        const char *why;
        if (want(c, e, YN_SCALAR, key) < 0 || parse_cidr(e->s, e->len, &items[i], &why) < 0) {
            if (e->kind == YN_SCALAR && !yaml_is_null(e))
                err(c, e, "invalid CIDR '%s': %s", e->s, why);
            rc = -1;
        }
    }
    *out = items;
    *n = v->n;
    return rc;
}

static int cond_mask(ctx_t *c, const char *key, ynode_t *v, uint32_t *mask, bool allow_updating)
{
    static const char *const names[] = {"error",    "timeout",  "updating", "http_500", "http_502",
                                        "http_503", "http_504", "http_429", NULL};
    if (want(c, v, YN_SEQ, key) < 0)
        return -1;
    int rc = 0;
    *mask = 0;
    for (size_t i = 0; i < v->n; i++) {
        int bit;
        if (enum_value(c, key, v->vals[i], names, &bit) < 0) {
            rc = -1;
            continue;
        }
        if (bit == 2 && !allow_updating)
            rc = err(c, v->vals[i], "'updating' is only meaningful in cache.use_stale");
        *mask |= 1u << bit;
    }
    return rc;
}

/* ---- site: upstreams ---------------------------------------------------- */

static const char *const balance_names[] = {"round_robin", "least_conn", "ip_hash", "random_two", NULL};

static int server_address(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    cfg_server_t *s = obj;
    const char *why;
    if (want(c, v, YN_SCALAR, key) < 0)
        return -1;
    s->address = v->s;
    if (parse_sockaddr(v->s, v->len, &s->sa, &why) < 0)
        return err(c, v, "invalid address '%s': %s", v->s, why);
    return 0;
}

static const opt_t server_opts[] = {
    FN("address", server_address),
    U32("weight", cfg_server_t, weight, 1, 1000),
    U32("max_fails", cfg_server_t, max_fails, 0, 1000),
    DUR("fail_timeout", cfg_server_t, fail_timeout_ms),
    BOOL("backup", cfg_server_t, backup),
    END,
};

static int up_servers(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    cfg_upstream_t *u = obj;
    if (want(c, v, YN_SEQ, key) < 0)
        return -1;
    if (v->n == 0)
        return err(c, v, "upstream '%s' has no servers", u->name);
    u->servers = arena_alloc(c->a, v->n * sizeof(*u->servers));
    u->nservers = v->n;
    int rc = 0;
    for (size_t i = 0; i < v->n; i++) {
        cfg_server_t *s = &u->servers[i];
        s->pos = v->vals[i]->pos;
        s->weight = 1;
        s->max_fails = 1;
        s->fail_timeout_ms = 10000;
        if (v->vals[i]->kind == YN_SCALAR && !yaml_is_null(v->vals[i])) {
            rc |= server_address(c, "address", v->vals[i], s); /* shorthand: - "127.0.0.1:3000" */
            continue;
        }
        rc |= walk(c, "server", v->vals[i], server_opts, s);
        rc |= require(c, v->vals[i], "address", "server");
    }
    return rc;
}

static const opt_t up_tls_opts[] = {
    BOOL("verify", cfg_upstream_t, tls_verify),  STR("ca_file", cfg_upstream_t, ca_file),
    STR("sni", cfg_upstream_t, sni),             STR("cert_file", cfg_upstream_t, cert_file),
    STR("key_file", cfg_upstream_t, key_file),   END,
};

static int up_tls(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    cfg_upstream_t *u = obj;
    u->tls = true;
    u->tls_verify = true;
    int rc = walk(c, key, v, up_tls_opts, u);
    if (rc == 0 && (u->cert_file == NULL) != (u->key_file == NULL))
        return err(c, v, "upstream tls needs both cert_file and key_file, or neither");
    return rc;
}

static const opt_t hc_opts[] = {
    STR("path", cfg_upstream_t, hc_path),          DUR("interval", cfg_upstream_t, hc_interval_ms),
    DUR("timeout", cfg_upstream_t, hc_timeout_ms), U32("rise", cfg_upstream_t, hc_rise, 1, 100),
    U32("fall", cfg_upstream_t, hc_fall, 1, 100),  U32("expect", cfg_upstream_t, hc_expect, 100, 599),
    END,
};

static int up_health(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    cfg_upstream_t *u = obj;
    u->hc = true;
    u->hc_path = "/";
    u->hc_interval_ms = 5000;
    u->hc_timeout_ms = 2000;
    u->hc_rise = 2;
    u->hc_fall = 3;
    u->hc_expect = 200;
    if (walk(c, key, v, hc_opts, u) < 0)
        return -1;
    if (u->hc_path[0] != '/')
        return err(c, yaml_get(v, "path"), "health_check path must start with '/'");
    if (u->hc_interval_ms == 0 || u->hc_timeout_ms == 0)
        return err(c, v, "health_check interval and timeout must be positive");
    return 0;
}

#define RESOLVE_MIN_MS 1000u
#define RESOLVE_MAX_MS 86400000u

/* resolve: how often the upstream's host names are asked again. */
static int up_resolve(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    cfg_upstream_t *u = obj;
    const char *why;
    if (want(c, v, YN_SCALAR, key) < 0)
        return -1;
    if (parse_duration_ms(v->s, v->len, &u->resolve_ms, &why) < 0)
        return err(c, v, "invalid duration '%s' for 'resolve': %s", v->s, why);
    if (u->resolve_ms < RESOLVE_MIN_MS || u->resolve_ms > RESOLVE_MAX_MS)
        return err(c, v, "resolve must be between 1s and 24h (not '%s')", v->s);
    return 0;
}

static const opt_t upstream_opts[] = {
    ENUM("balance", cfg_upstream_t, balance, balance_names),
    FN("resolve", up_resolve),
    FN("servers", up_servers),
    U32("keepalive", cfg_upstream_t, keepalive, 0, 100000),
    FN("tls", up_tls),
    FN("health_check", up_health),
    END,
};

static int valid_name(const char *s, int allow_upper)
{
    if (*s == '\0')
        return 0;
    for (; *s; s++) {
        char ch = *s;
        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' ||
              (allow_upper && ((ch >= 'A' && ch <= 'Z') || ch == '_'))))
            return 0;
    }
    return 1;
}

static int site_upstreams(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    cfg_site_t *s = obj;
    if (want(c, v, YN_MAP, key) < 0)
        return -1;
    s->ups = arena_alloc(c->a, (v->n ? v->n : 1) * sizeof(*s->ups));
    s->nups = v->n;
    int rc = 0;
    for (size_t i = 0; i < v->n; i++) {
        cfg_upstream_t *u = &s->ups[i];
        u->pos = v->keys[i]->pos;
        u->name = v->keys[i]->s;
        u->keepalive = 32;
        if (!valid_name(u->name, 1))
            rc = err(c, v->keys[i], "invalid upstream name '%s' (use letters, digits, '-' and '_')", u->name);
        rc |= walk(c, "upstream", v->vals[i], upstream_opts, u);
        rc |= require(c, v->vals[i], "servers", "upstream");
        bool named = false;
        for (size_t k = 0; k < u->nservers; k++)
            named |= u->servers[k].sa.kind == RT_ADDR_NAME;
        if (u->resolve_ms && u->nservers && !named)
            diag_warning(c->d, yaml_get(v->vals[i], "resolve")->pos,
                         "resolve has no effect: no server of upstream '%s' is given by a host name", u->name);
    }
    return rc;
}

/* ---- site: routes -------------------------------------------------------- */

/* Compile with PCRE2 as proxyd will; place its error at the offending character. */
static int check_regex(ctx_t *c, const cfg_route_t *r)
{
    int code;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)r->path.s, PCRE2_ZERO_TERMINATED, PCRE2_UTF, &code, &off, NULL);
    if (re) {
        pcre2_code_free(re);
        return 0;
    }
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(code, msg, sizeof(msg));
    pos_t at = r->path.pos;
    at.col += (int)off;
    return errp(c, at, "invalid regex '%s': %s at offset %zu", r->path.s, (const char *)msg, (size_t)off);
}

static int match_path(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    cfg_route_t *r = obj;
    if (want(c, v, YN_SCALAR, key) < 0)
        return -1;
    if (r->match != RT_MATCH_ANY)
        return err(c, v, "a match takes only one of path_exact, path_prefix and path_regex");
    r->match = strcmp(key, "path_exact") == 0 ? RT_MATCH_EXACT : strcmp(key, "path_prefix") == 0 ? RT_MATCH_PREFIX
                                                                                                : RT_MATCH_REGEX;
    r->path = (cstr_t){v->pos, v->s};
    if (!v->plain)
        r->path.pos.col++; /* point at the pattern, not its opening quote */
    if (r->match == RT_MATCH_REGEX)
        return check_regex(c, r);
    if (v->s[0] != '/')
        return err(c, v, "%s must start with '/'", key);
    return 0;
}

static int match_methods(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    cfg_route_t *r = obj;
    static const char *const names[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", NULL};
    if (want(c, v, YN_SEQ, key) < 0)
        return -1;
    if (v->n == 0)
        return err(c, v, "methods must list at least one method");
    int rc = 0;
    for (size_t i = 0; i < v->n; i++) {
        int bit;
        if (enum_value(c, "method", v->vals[i], names, &bit) == 0)
            r->methods |= 1u << bit;
        else
            rc = -1;
    }
    return rc;
}

static const opt_t match_opts[] = {
    FN("path_exact", match_path), FN("path_prefix", match_path), FN("path_regex", match_path),
    FN("methods", match_methods), END,
};

static int route_match_key(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    return walk(c, key, v, match_opts, obj);
}

static int set_action(ctx_t *c, cfg_route_t *r, const char *key, ynode_t *v, int action)
{
    if (r->action >= 0)
        return err(c, v, "route has more than one action ('%s' and '%s')", r->action_key, key);
    r->action = action;
    r->action_key = key;
    r->action_pos = v->pos;
    return 0;
}

static int route_upstream(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    cfg_route_t *r = obj;
    if (want(c, v, YN_SCALAR, key) < 0)
        return -1;
    r->upstream = (cstr_t){v->pos, v->s};
    return set_action(c, r, key, v, RT_ACT_UPSTREAM);
}

static int status_code(ctx_t *c, ynode_t *v, uint32_t *out, const uint32_t *allowed, const char *what)
{
    uint64_t x;
    if (want(c, v, YN_SCALAR, "status") < 0)
        return -1;
    if (parse_u64(v->s, &x) < 0 || x < 100 || x > 599)
        return err(c, v, "invalid status code '%s' (expected 100..599)", v->s);
    if (allowed) {
        int ok = 0;
        for (const uint32_t *a = allowed; *a; a++)
            ok |= *a == x;
        if (!ok)
            return err(c, v, "invalid %s status %s (expected 301, 302, 303, 307 or 308)", what, v->s);
    }
    *out = (uint32_t)x;
    return 0;
}

static int ret_status(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    (void)key;
    return status_code(c, v, &((cfg_route_t *)obj)->status, NULL, "return");
}

static int redir_status(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    static const uint32_t ok[] = {301, 302, 303, 307, 308, 0};
    (void)key;
    return status_code(c, v, &((cfg_route_t *)obj)->status, ok, "redirect");
}

static const opt_t return_opts[] = {FN("status", ret_status), STR("body", cfg_route_t, target),
                                    STR("content_type", cfg_route_t, index), END};
static const opt_t redirect_opts[] = {STR("to", cfg_route_t, target), FN("status", redir_status), END};
static const opt_t static_opts[] = {STR("root", cfg_route_t, target), DUR("expires", cfg_route_t, expires_ms),
                                    STR("index", cfg_route_t, index), END};

static int fcgi_upstream(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    cfg_route_t *r = obj;
    if (want(c, v, YN_SCALAR, key) < 0)
        return -1;
    r->upstream = (cstr_t){v->pos, v->s};
    return 0;
}

static const opt_t fastcgi_opts[] = {FN("upstream", fcgi_upstream), STR("root", cfg_route_t, target),
                                     STR("index", cfg_route_t, index), END};

/* fastcgi: {upstream, root, index}: the script is root + path (+ index for a
 * path ending in '/'), as nginx's root and fastcgi_index make it. */
static int route_fastcgi(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    cfg_route_t *r = obj;
    int rc = set_action(c, r, key, v, RT_ACT_FASTCGI);
    rc |= walk(c, key, v, fastcgi_opts, r);
    rc |= require(c, v, "upstream", key);
    rc |= require(c, v, "root", key);
    if (rc == 0 && r->target[0] != '/')
        rc = err(c, yaml_get(v, "root"), "fastcgi root must be an absolute path");
    if (rc == 0 && r->index && r->index[0] == 0)
        rc = err(c, yaml_get(v, "index"), "fastcgi index must not be empty (it is the script run for a path ending in '/')");
    else if (rc == 0 && r->index && strchr(r->index, '/'))
        rc = err(c, yaml_get(v, "index"), "fastcgi index must be a file name (no '/')");
    if (r->index == NULL)
        r->index = "index.php";
    return rc;
}

static int route_action_map(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    cfg_route_t *r = obj;
    int action = strcmp(key, "return") == 0 ? RT_ACT_RETURN : strcmp(key, "redirect") == 0 ? RT_ACT_REDIRECT
                                                                                           : RT_ACT_STATIC;
    const opt_t *opts = action == RT_ACT_RETURN ? return_opts : action == RT_ACT_REDIRECT ? redirect_opts : static_opts;
    const char *required = action == RT_ACT_RETURN ? "status" : action == RT_ACT_REDIRECT ? "to" : "root";
    int rc = set_action(c, r, key, v, action);
    if (action == RT_ACT_REDIRECT)
        r->status = 301;
    rc |= walk(c, key, v, opts, r);
    rc |= require(c, v, required, key);
    if (rc == 0 && action == RT_ACT_STATIC && r->target[0] != '/')
        rc = err(c, yaml_get(v, "root"), "static root must be an absolute path");
    return rc;
}

static int route_strip(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    cfg_route_t *r = obj;
    static const opt_t o = BOOL("strip_prefix", cfg_route_t, strip_prefix);
    r->has_strip = true;
    r->strip_pos = v->pos;
    (void)key;
    return scalar(c, &o, v, r);
}

static int route_rewrite(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    cfg_route_t *r = obj;
    if (want(c, v, YN_SCALAR, key) < 0)
        return -1;
    r->rewrite_pos = v->pos;
    r->rewrite_prefix = v->s;
    if (v->s[0] != '/')
        return err(c, v, "rewrite_prefix must start with '/' (it replaces the matched path prefix)");
    for (const char *p = v->s; *p; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f || *p == '?' || *p == '#')
            return err(c, v, "rewrite_prefix '%s' contains a space, control character, '?' or '#'", v->s);
    return 0;
}

/* buffering_max: bytes one response may spool to its file, 1k..4t (KiB in the table). */
static int route_buffering_max(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    cfg_route_t *r = obj;
    static const opt_t o = SIZE("buffering_max", cfg_route_t, buffering_max);
    if (scalar(c, &o, v, r) < 0)
        return -1;
    (void)key;
    r->buffering_max_pos = v->pos;
    if (r->buffering_max < 1024 || r->buffering_max > (4ull << 40))
        return err(c, v, "buffering_max must be 1k..4t (buffering: false streams without spooling)");
    return 0;
}

static const opt_t timeout_opts[] = {DUR("connect", cfg_route_t, connect_ms), DUR("read", cfg_route_t, read_ms),
                                     DUR("send", cfg_route_t, send_ms), END};

static int route_timeouts(ctx_t *c, const char *key, ynode_t *v, void *obj) { return walk(c, key, v, timeout_opts, obj); }

static int retry_on(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    return cond_mask(c, key, v, &((cfg_route_t *)obj)->retry_on, false);
}

static const opt_t retry_opts[] = {FN("on", retry_on), U32("tries", cfg_route_t, retry_tries, 1, 10), END};

static int route_retry(ctx_t *c, const char *key, ynode_t *v, void *obj) { return walk(c, key, v, retry_opts, obj); }

static int zone_name(ctx_t *c, const char *key, ynode_t *v, cstr_t *out)
{
    if (want(c, v, YN_SCALAR, key) < 0)
        return -1;
    *out = (cstr_t){v->pos, v->s};
    return 0;
}

static int rl_zone(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    return zone_name(c, key, v, &((cfg_route_t *)obj)->rate_zone);
}

static const opt_t rl_opts[] = {FN("zone", rl_zone), U32("burst", cfg_route_t, rate_burst, 0, 1000000),
                                BOOL("nodelay", cfg_route_t, rate_nodelay), END};

static int route_rate_limit(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    int rc = walk(c, key, v, rl_opts, obj);
    return rc | require(c, v, "zone", key);
}

static int cache_zone(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    return zone_name(c, key, v, &((cfg_route_t *)obj)->cache_zone);
}

static int cache_valid(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    cfg_route_t *r = obj;
    if (want(c, v, YN_MAP, key) < 0)
        return -1;
    r->valid = arena_alloc(c->a, (v->n ? v->n : 1) * sizeof(*r->valid));
    r->nvalid = v->n;
    int rc = 0;
    for (size_t i = 0; i < v->n; i++) {
        cfg_ttl_t *t = &r->valid[i];
        uint64_t x;
        const char *why;
        t->pos = v->keys[i]->pos;
        if (strcmp(v->keys[i]->s, "any") == 0)
            t->status = 0;
        else if (parse_u64(v->keys[i]->s, &x) == 0 && x >= 100 && x <= 599)
            t->status = (uint32_t)x;
        else
            rc = err(c, v->keys[i], "invalid status code '%s' in cache.valid (expected 100..599 or 'any')", v->keys[i]->s);
        if (want(c, v->vals[i], YN_SCALAR, "valid") < 0)
            rc = -1;
        else if (parse_duration_ms(v->vals[i]->s, v->vals[i]->len, &t->ttl_ms, &why) < 0)
            rc = err(c, v->vals[i], "invalid duration '%s' for 'valid': %s", v->vals[i]->s, why);
    }
    return rc;
}

static int cache_bypass(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    cfg_route_t *r = obj;
    if (strings(c, key, v, &r->bypass, &r->nbypass) < 0)
        return -1;
    for (size_t i = 0; i < r->nbypass; i++) {
        const char *b = r->bypass[i];
        if (strcmp(b, "authorization") != 0 && strncmp(b, "cookie:", 7) != 0 && strncmp(b, "header:", 7) != 0 &&
            strncmp(b, "query:", 6) != 0)
            return err(c, v->vals[i], "invalid bypass_on '%s' (expected authorization, cookie:NAME, header:NAME or query:NAME)", b);
    }
    return 0;
}

static int cache_stale(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    return cond_mask(c, key, v, &((cfg_route_t *)obj)->use_stale, true);
}

static bool is_token(const char *s);

static int cache_key_headers(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    cfg_route_t *r = obj;
    if (strings(c, key, v, &r->key_headers, &r->nkey_headers) < 0)
        return -1;
    for (size_t i = 0; i < r->nkey_headers; i++)
        if (!is_token(r->key_headers[i]))
            return err(c, v->vals[i], "invalid header name '%s' in cache.key_headers", r->key_headers[i]);
    return 0;
}

static const opt_t cache_opts[] = {FN("zone", cache_zone), FN("valid", cache_valid), FN("bypass_on", cache_bypass),
                                   FN("use_stale", cache_stale), FN("key_headers", cache_key_headers),
                                   DUR("lock_timeout", cfg_route_t, lock_timeout_ms), END};

static int route_cache(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    int rc = walk(c, key, v, cache_opts, obj);
    return rc | require(c, v, "zone", key);
}

/* allow and deny lists (route or site): at least one address each. */
static int access_list(ctx_t *c, const char *key, ynode_t *v, rt_cidr_t **out, size_t *n)
{
    if (cidrs(c, key, v, out, n) < 0)
        return -1;
    if (*n == 0)
        return strcmp(key, "allow") == 0
                   ? err(c, v, "allow must list at least one address (an empty list would deny everyone)")
                   : err(c, v, "deny must list at least one address");
    return 0;
}

static int route_access(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    cfg_route_t *r = obj;
    bool allow = strcmp(key, "allow") == 0;
    return access_list(c, key, v, allow ? &r->allow : &r->deny, allow ? &r->nallow : &r->ndeny);
}

static int site_access(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    cfg_site_t *s = obj;
    bool allow = strcmp(key, "allow") == 0;
    return access_list(c, key, v, allow ? &s->allow : &s->deny, allow ? &s->nallow : &s->ndeny);
}

static bool is_token(const char *s)
{
    if (*s == '\0')
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              strchr("!#$%&'*+-.^_`|~", *s)))
            return false;
    return true;
}

static int hdr_add(ctx_t *c, cfg_route_t *r, ynode_t *at, int dir, int op, char *name, char *value)
{
    if (!is_token(name))
        return err(c, at, "invalid header name '%s'", name);
    for (const char *p = value; p && *p; p++)
        if ((unsigned char)*p < 0x20 && *p != '\t')
            return err(c, at, "header '%s' value contains a control character", name);
    cfg_hdrop_t *h = &r->hdrops[r->nhdrops++];
    *h = (cfg_hdrop_t){at->pos, dir, op, name, value};
    return 0;
}

static int hdr_dir(ctx_t *c, cfg_route_t *r, ynode_t *v, int dir, const char *key)
{
    static const char *const keys[] = {"set", "remove"};
    if (want(c, v, YN_MAP, key) < 0)
        return -1;
    int rc = 0;
    for (size_t i = 0; i < v->n; i++) {
        ynode_t *k = v->keys[i], *val = v->vals[i];
        if (strcmp(k->s, "set") == 0 && want(c, val, YN_MAP, "set") == 0) {
            for (size_t j = 0; j < val->n; j++)
                rc |= want(c, val->vals[j], YN_SCALAR, val->keys[j]->s) < 0
                          ? -1
                          : hdr_add(c, r, val->keys[j], dir, RT_HDR_SET, val->keys[j]->s, val->vals[j]->s);
        } else if (strcmp(k->s, "remove") == 0 && want(c, val, YN_SEQ, "remove") == 0) {
            for (size_t j = 0; j < val->n; j++)
                rc |= want(c, val->vals[j], YN_SCALAR, "remove") < 0
                          ? -1
                          : hdr_add(c, r, val->vals[j], dir, RT_HDR_REMOVE, val->vals[j]->s, NULL);
        } else if (strcmp(k->s, "set") != 0 && strcmp(k->s, "remove") != 0) {
            const char *s = diag_suggest(k->s, keys, 2);
            rc = s ? err(c, k, "unknown key '%s' (did you mean '%s'?)", k->s, s) : err(c, k, "unknown key '%s'", k->s);
        } else {
            rc = -1;
        }
    }
    return rc;
}

static size_t count_hdrops(ynode_t *v)
{
    size_t n = 0;
    for (size_t i = 0; v->kind == YN_MAP && i < v->n; i++)
        for (size_t j = 0; v->vals[i]->kind == YN_MAP && j < v->vals[i]->n; j++)
            n += v->vals[i]->vals[j]->kind == YN_MAP || v->vals[i]->vals[j]->kind == YN_SEQ ? v->vals[i]->vals[j]->n : 0;
    return n;
}

static int route_headers(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    static const char *const keys[] = {"request", "response"};
    cfg_route_t *r = obj;
    if (want(c, v, YN_MAP, key) < 0)
        return -1;
    r->hdrops = arena_alloc(c->a, (count_hdrops(v) + 1) * sizeof(*r->hdrops));
    int rc = 0;
    for (size_t i = 0; i < v->n; i++) {
        ynode_t *k = v->keys[i];
        if (strcmp(k->s, "request") == 0 || strcmp(k->s, "response") == 0) {
            rc |= hdr_dir(c, r, v->vals[i], k->s[2] == 'q' ? RT_HDR_REQUEST : RT_HDR_RESPONSE, k->s);
            continue;
        }
        const char *s = diag_suggest(k->s, keys, 2);
        rc = s ? err(c, k, "unknown key '%s' (did you mean '%s'?)", k->s, s) : err(c, k, "unknown key '%s'", k->s);
    }
    return rc;
}

static const opt_t route_opts[] = {
    FN("match", route_match_key),
    FN("upstream", route_upstream),
    FN("return", route_action_map),
    FN("redirect", route_action_map),
    FN("static", route_action_map),
    FN("fastcgi", route_fastcgi),
    FN("strip_prefix", route_strip),
    FN("rewrite_prefix", route_rewrite),
    FN("timeouts", route_timeouts),
    FN("retry", route_retry),
    FN("rate_limit", route_rate_limit),
    FN("cache", route_cache),
    SIZE("max_body", cfg_route_t, max_body),
    FN("allow", route_access),
    FN("deny", route_access),
    BOOL("websocket", cfg_route_t, websocket),
    BOOL("buffering", cfg_route_t, buffering),
    FN("buffering_max", route_buffering_max),
    FN("headers", route_headers),
    END,
};

static void route_defaults(cfg_route_t *r, ynode_t *at)
{
    r->pos = at->pos;
    r->action = -1;
    r->buffering = true;
    r->connect_ms = 5000;
    r->read_ms = 60000;
    r->send_ms = 60000;
    r->retry_on = RT_ON_ERROR | RT_ON_TIMEOUT;
    r->retry_tries = 0; /* not written: every server of the pool (compile.c) */
}

static int site_routes(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    cfg_site_t *s = obj;
    if (want(c, v, YN_SEQ, key) < 0)
        return -1;
    s->routes = arena_alloc(c->a, (v->n ? v->n : 1) * sizeof(*s->routes));
    s->nroutes = v->n;
    int rc = 0;
    for (size_t i = 0; i < v->n; i++) {
        cfg_route_t *r = &s->routes[i];
        route_defaults(r, v->vals[i]);
        if (walk(c, "route", v->vals[i], route_opts, r) < 0) {
            rc = -1;
            continue;
        }
        if (r->action < 0)
            rc = err(c, v->vals[i], "route has no action (one of upstream, fastcgi, return, redirect, static)");
        if (r->has_strip && r->strip_prefix && r->match != RT_MATCH_PREFIX)
            rc = errp(c, r->strip_pos, "strip_prefix requires a path_prefix match");
        if (r->rewrite_prefix && r->match != RT_MATCH_PREFIX)
            rc = errp(c, r->rewrite_pos, "rewrite_prefix requires a path_prefix match");
        else if (r->rewrite_prefix && r->has_strip)
            rc = errp(c, r->rewrite_pos, "rewrite_prefix and strip_prefix together (strip_prefix is rewrite_prefix: /)");
        else if (r->rewrite_prefix && r->action != RT_ACT_UPSTREAM && r->action != RT_ACT_FASTCGI)
            rc = errp(c, r->rewrite_pos, "rewrite_prefix applies to upstream routes only");
        if (r->buffering_max && !rt_action_upstream(r->action))
            rc = errp(c, r->buffering_max_pos, "buffering_max applies to upstream and fastcgi routes only");
        if (r->action == RT_ACT_FASTCGI && r->websocket)
            rc = err(c, yaml_get(v->vals[i], "websocket"), "websocket does not apply to a fastcgi route");
        if (r->action == RT_ACT_FASTCGI && r->has_strip)
            rc = errp(c, r->strip_pos, "strip_prefix does not apply to a fastcgi route (the script is root + path)");
        if (r->action == RT_ACT_FASTCGI && r->rewrite_prefix)
            rc = errp(c, r->rewrite_pos,
                      "rewrite_prefix does not apply to a fastcgi route (the script is root + path)");
    }
    return rc;
}

/* ---- site: the rest ------------------------------------------------------ */

static int check_host(ctx_t *c, const cstr_t *h)
{
    const char *p = h->s;
    size_t n = strlen(p);
    if (n > 2 && p[0] == '*' && p[1] == '.') {
        p += 2;
        n -= 2;
    }
    rt_sockaddr_t sa;
    const char *why;
    char probe[300];
    snprintf(probe, sizeof(probe), "%s:1", p);
    if (n == 0 || n > 253 || strchr(p, '*') || strchr(p, ':') || parse_sockaddr(probe, strlen(probe), &sa, &why) < 0)
        return errp(c, h->pos, "invalid host '%s' (expected a DNS name or '*.suffix')", h->s);
    return 0;
}

static int site_hosts(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    cfg_site_t *s = obj;
    if (seq_of_scalars(c, key, v, &s->hosts, &s->nhosts) < 0)
        return -1;
    if (s->nhosts == 0)
        return err(c, v, "hosts must list at least one host name");
    int rc = 0;
    for (size_t i = 0; i < s->nhosts; i++) {
        for (char *p = s->hosts[i].s; *p; p++)
            if (*p >= 'A' && *p <= 'Z')
                *p |= 0x20;
        rc |= check_host(c, &s->hosts[i]);
        for (size_t j = 0; j < i; j++)
            if (strcmp(s->hosts[i].s, s->hosts[j].s) == 0)
                rc = errp(c, s->hosts[i].pos, "host '%s' is listed twice (first at line %d)", s->hosts[i].s,
                                s->hosts[j].pos.line);
    }
    return rc;
}

static int site_name(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    cfg_site_t *s = obj;
    if (want(c, v, YN_SCALAR, key) < 0)
        return -1;
    s->name = (cstr_t){v->pos, v->s};
    if (!valid_name(v->s, 0) || v->len > 63)
        return err(c, v, "invalid site name '%s' (use a-z, 0-9 and '-', at most 63 characters)", v->s);
    return 0;
}

static int site_default(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    static const opt_t o = BOOL("default", cfg_site_t, is_default);
    ((cfg_site_t *)obj)->default_pos = v->pos;
    (void)key;
    return scalar(c, &o, v, obj);
}

static const opt_t hsts_opts[] = {U32("max_age", cfg_site_t, hsts_max_age, 0, UINT32_MAX),
                                  BOOL("include_subdomains", cfg_site_t, hsts_subdomains),
                                  BOOL("preload", cfg_site_t, hsts_preload), END};

static int tls_hsts(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    cfg_site_t *s = obj;
    s->hsts = true;
    s->hsts_max_age = 63072000;
    return walk(c, key, v, hsts_opts, obj);
}

static int tls_cert(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    static const char *const modes[] = {"none", "files", "self-signed", "acme", NULL};
    cfg_site_t *s = obj;
    s->cert_pos = v->pos;
    if (v->kind == YN_MAP) {
        int rc = 0;
        s->cert_mode = RT_CERT_FILE;
        for (size_t i = 0; i < v->n; i++) {
            ynode_t *k = v->keys[i], *val = v->vals[i];
            cstr_t *dst = strcmp(k->s, "cert_file") == 0 ? &s->cert_file : strcmp(k->s, "key_file") == 0 ? &s->key_file : NULL;
            if (dst == NULL) {
                static const char *const keys[] = {"cert_file", "key_file"};
                const char *sg = diag_suggest(k->s, keys, 2);
                rc = sg ? err(c, k, "unknown key '%s' (did you mean '%s'?)", k->s, sg) : err(c, k, "unknown key '%s'", k->s);
            } else if (want(c, val, YN_SCALAR, k->s) == 0) {
                *dst = (cstr_t){val->pos, val->s};
            } else {
                rc = -1;
            }
        }
        rc |= require(c, v, "cert_file", "certificate");
        rc |= require(c, v, "key_file", "certificate");
        return rc;
    }
    if (v->kind == YN_SCALAR && strcmp(v->s, "files") == 0)
        return err(c, v, "certificate files are given as {cert_file: PATH, key_file: PATH}");
    return enum_value(c, key, v, modes, &s->cert_mode);
}

static const opt_t tls_opts[] = {FN("certificate", tls_cert), BOOL("redirect_http", cfg_site_t, redirect_http),
                                 FN("hsts", tls_hsts), END};

static int site_tls(ctx_t *c, const char *key, ynode_t *v, void *obj) { return walk(c, key, v, tls_opts, obj); }

/* RFC 6838 §4.2 restricted-name: what a registered type or subtype is made of. */
static bool restricted_name(const char *p, size_t n)
{
    if (n == 0 || n > 127 || !isalnum((unsigned char)p[0]))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)p[i]) && strchr("!#$&^_.+-", p[i]) == NULL)
            return false;
    return true;
}

/* A media range as types: lists it: "type/subtype", or the type, a slash
 * and a star for every subtype; no parameters: a response's Content-Type
 * matches on its type and subtype only.  NULL, or what is wrong. */
static const char *media_type_error(const char *s)
{
    const char *slash = strchr(s, '/');
    if (slash == NULL)
        return "write it as type/subtype, e.g. text/html";
    if (strchr(s, ';'))
        return "write type/subtype without parameters; it matches whatever parameters a response has";
    if (slash - s == 1 && s[0] == '*')
        return "the type cannot be '*': list the types worth compressing (images and archives are compressed already)";
    const char *sub = slash + 1;
    if (strcmp(sub, "*") == 0 && restricted_name(s, (size_t)(slash - s)))
        return NULL;
    if (strchr(sub, '*') && restricted_name(s, (size_t)(slash - s)))
        return "'*' stands for a whole subtype only (type/*)";
    if (!restricted_name(s, (size_t)(slash - s)) || !restricted_name(sub, strlen(sub)))
        return "a type and a subtype start with a letter or digit and are made of letters, digits and !#$&^_.+-";
    return NULL;
}

static int comp_types(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    cfg_site_t *s = obj;
    cstr_t *items;
    size_t n;
    if (seq_of_scalars(c, key, v, &items, &n) < 0)
        return -1;
    int rc = 0;
    s->types = arena_alloc(c->a, (n ? n : 1) * sizeof(*s->types));
    s->ntypes = 0;
    for (size_t i = 0; i < n; i++) {
        const char *why = media_type_error(items[i].s);
        if (why) {
            rc = errp(c, items[i].pos, "invalid media type '%s' in 'types': %s", items[i].s, why);
            continue;
        }
        char *t = arena_strdup(c->a, items[i].s);
        str_lower(t, strlen(t));
        size_t k = 0;
        while (k < i && strcasecmp(items[k].s, t) != 0)
            k++;
        if (k < i) {
            rc = errp(c, items[i].pos, "media type '%s' is listed twice in 'types' (first at %d:%d)", items[i].s,
                      items[k].pos.line, items[k].pos.col);
            continue;
        }
        s->types[s->ntypes++] = t;
    }
    return rc;
}

/* Compressed when types: is not given (nginx's gzip_types is text/html
 * alone; these are the text formats sites send most). */
static const char *const default_types[] = {
    "text/html", "text/css", "text/plain", "text/xml", "text/javascript", "application/javascript",
    "application/json", "application/xml", "image/svg+xml",
};

static const opt_t comp_opts[] = {
    BOOL("gzip", cfg_site_t, gzip),
    BOOL("brotli", cfg_site_t, brotli),
    BOOL("zstd", cfg_site_t, zstd),
    U32("level", cfg_site_t, gzip_level, 1, 9),
    U32("brotli_level", cfg_site_t, brotli_level, 0, 11),
    U32("zstd_level", cfg_site_t, zstd_level, 1, 19),
    SIZE("min_length", cfg_site_t, min_length),
    FN("types", comp_types),
    END,
};

static int site_compression(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    cfg_site_t *s = obj;
    s->compression = true;
    s->compression_pos = v->pos;
    if (walk(c, key, v, comp_opts, obj) < 0)
        return -1;
    if (!s->gzip && !s->brotli && !s->zstd)
        diag_warning(c->d, v->pos, "compression enables no coding: nothing is compressed (set gzip, brotli or zstd to true)");
    if (s->types == NULL) {
        s->types = (char **)default_types;
        s->ntypes = ARRAY_LEN(default_types);
    }
    return 0;
}

static const char *const logfmt_names[] = {"json", "combined", "off", NULL};
static const opt_t alog_opts[] = {ENUM("format", cfg_site_t, access_log, logfmt_names), END};

static int site_access_log(ctx_t *c, const char *key, ynode_t *v, void *obj) { return walk(c, key, v, alog_opts, obj); }

static const char *const sechdr_names[] = {"none", "basic", "strict", NULL};

static const opt_t site_opts[] = {
    FN("site", site_name),
    FN("default", site_default),
    FN("hosts", site_hosts),
    FN("tls", site_tls),
    FN("upstreams", site_upstreams),
    FN("routes", site_routes),
    FN("compression", site_compression),
    ENUM("security_headers", cfg_site_t, security_headers, sechdr_names),
    FN("access_log", site_access_log),
    FN("allow", site_access),
    FN("deny", site_access),
    END,
};

/* Routes refer to upstreams of their own site. */
static int link_upstreams(ctx_t *c, cfg_site_t *s, bool warn_unused)
{
    int rc = 0;
    for (size_t i = 0; i < s->nroutes; i++) {
        cfg_route_t *r = &s->routes[i];
        if (!rt_action_upstream(r->action))
            continue;
        const char *names[64];
        size_t n = 0, found = 0;
        for (size_t k = 0; k < s->nups; k++) {
            cfg_upstream_t *u = &s->ups[k];
            if (n < ARRAY_LEN(names))
                names[n++] = u->name;
            if (strcmp(u->name, r->upstream.s) != 0)
                continue;
            found = 1;
            if (u->used && u->fastcgi != (r->action == RT_ACT_FASTCGI)) {
                diag_error(c->d, r->upstream.pos,
                           "upstream '%s' serves both fastcgi and HTTP routes (one protocol per upstream)", u->name);
                rc = -1;
            } else if (r->action == RT_ACT_FASTCGI && u->tls) {
                diag_error(c->d, r->upstream.pos, "upstream '%s' has tls, which FastCGI does not speak", u->name);
                rc = -1;
            }
            u->used = true;
            u->fastcgi = r->action == RT_ACT_FASTCGI;
        }
        if (found)
            continue;
        const char *sg = diag_suggest(r->upstream.s, names, n);
        if (sg)
            diag_error(c->d, r->upstream.pos, "undefined upstream '%s' (did you mean '%s'?)", r->upstream.s, sg);
        else
            diag_error(c->d, r->upstream.pos, "undefined upstream '%s'", r->upstream.s);
        rc = -1;
    }
    for (size_t k = 0; warn_unused && k < s->nups; k++)
        if (!s->ups[k].used)
            diag_warning(c->d, s->ups[k].pos, "upstream '%s' is not used by any route", s->ups[k].name);
    return rc;
}

cfg_site_t *config_site(arena_t *a, const char *file, const char *text, diag_t *d)
{
    ctx_t c = {a, d, file};
    int before = d->errors;
    ynode_t *root = yaml_load(a, file, text, strlen(text), d);
    if (root == NULL)
        return NULL;
    cfg_site_t *s = arena_alloc(a, sizeof(*s));
    s->file = file;
    s->yaml = text;
    s->pos = root->pos;
    s->security_headers = RT_SECHDR_BASIC;
    s->gzip_level = 4;
    s->brotli_level = 4;
    s->zstd_level = 3;
    s->min_length = 256;
    if (walk(&c, "site file", root, site_opts, s) == 0) {
        require(&c, root, "site", "site file");
        if (!s->is_default)
            require(&c, root, "hosts", "site file");
    }
    link_upstreams(&c, s, d->errors == before); /* unused-upstream warnings only for a clean parse */
    return d->errors > before ? NULL : s;
}

/* ---- global settings ---------------------------------------------------- */

static int listen_address(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    (void)obj;
    return want(c, v, YN_SCALAR, key);
}

static const opt_t listen_entry_opts[] = {FN("address", listen_address), BOOL("proxy_protocol", cfg_listen_t, proxy_protocol),
                                          END};

static int listen_list(ctx_t *c, cfg_global_t *g, ynode_t *v, int kind, const char *key)
{
    if (want(c, v, YN_SEQ, key) < 0)
        return -1;
    int rc = 0;
    for (size_t i = 0; i < v->n; i++) {
        ynode_t *e = v->vals[i];
        const char *why;
        cfg_listen_t *l = &g->listens[g->nlistens];
        *l = (cfg_listen_t){0};
        if (e->kind == YN_MAP) { /* {address: ..., proxy_protocol: true} */
            if (walk(c, "listen entry", e, listen_entry_opts, l) < 0 || require(c, e, "address", "listen entry") < 0) {
                rc = -1;
                continue;
            }
            e = yaml_get(e, "address");
        }
        if (want(c, e, YN_SCALAR, key) < 0) {
            rc = -1;
            continue;
        }
        l->pos = e->pos;
        l->kind = kind;
        l->text = e->s;
        if (parse_sockaddr(e->s, e->len, &l->sa, &why) < 0 || l->sa.kind == RT_ADDR_NAME || l->sa.kind == RT_ADDR_UNIX) {
            rc = err(c, e, "invalid listen address '%s': %s", e->s,
                     l->sa.kind == RT_ADDR_NAME ? "use an IP address, not a host name" : l->sa.kind == RT_ADDR_UNIX ? "unix sockets are not supported here" : why);
            continue;
        }
        g->nlistens++;
    }
    return rc;
}

static int g_listen(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    cfg_global_t *g = obj;
    static const char *const keys[] = {"http", "https"};
    if (want(c, v, YN_MAP, key) < 0)
        return -1;
    size_t total = 0;
    for (size_t i = 0; i < v->n; i++)
        total += v->vals[i]->kind == YN_SEQ ? v->vals[i]->n : 0;
    g->listens = arena_alloc(c->a, (total + 1) * sizeof(*g->listens));
    g->nlistens = 0;
    g->listen_set = true;
    int rc = 0;
    for (size_t i = 0; i < v->n; i++) {
        ynode_t *k = v->keys[i];
        if (strcmp(k->s, "http") == 0 || strcmp(k->s, "https") == 0) {
            rc |= listen_list(c, g, v->vals[i], k->s[4] == 's' ? RT_LISTEN_HTTPS : RT_LISTEN_HTTP, k->s);
            continue;
        }
        const char *sg = diag_suggest(k->s, keys, 2);
        rc = sg ? err(c, k, "unknown key '%s' (did you mean '%s'?)", k->s, sg) : err(c, k, "unknown key '%s'", k->s);
    }
    return rc;
}

static int g_workers(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    static const opt_t o = U32("workers", cfg_global_t, workers, 1, 256);
    if (v->kind == YN_SCALAR && strcmp(v->s, "auto") == 0) {
        ((cfg_global_t *)obj)->workers = 0;
        return 0;
    }
    (void)key;
    if (scalar(c, &o, v, obj) < 0)
        return -1;
    return 0;
}

static int g_metrics(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    cfg_global_t *g = obj;
    const char *why;
    if (want(c, v, YN_SCALAR, key) < 0)
        return -1;
    g->has_metrics = true;
    g->metrics.pos = v->pos;
    g->metrics.kind = RT_LISTEN_METRICS;
    g->metrics.text = v->s;
    if (parse_sockaddr(v->s, v->len, &g->metrics.sa, &why) < 0 || g->metrics.sa.kind >= RT_ADDR_UNIX)
        return err(c, v, "invalid listen address '%s': %s", v->s, g->metrics.sa.kind >= RT_ADDR_UNIX ? "use an IP address" : why);
    return 0;
}

static const opt_t admin_opts[] = {STR("socket", cfg_global_t, admin_socket), FN("metrics_listen", g_metrics), END};
static int g_admin(ctx_t *c, const char *key, ynode_t *v, void *obj) { return walk(c, key, v, admin_opts, obj); }

static int g_trusted(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    cfg_global_t *g = obj;
    return cidrs(c, key, v, &g->trusted, &g->ntrusted);
}

/* resolver: ["127.0.0.53", "[::1]:5353"]: IP addresses, port 53 unless given. */
static int g_resolver(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    cfg_global_t *g = obj;
    if (want(c, v, YN_SEQ, key) < 0)
        return -1;
    if (v->n == 0)
        return err(c, v, "resolver lists no address (leave it out to use /etc/resolv.conf)");
    g->resolvers = arena_alloc(c->a, v->n * sizeof(*g->resolvers));
    g->nresolvers = 0;
    int rc = 0;
    for (size_t i = 0; i < v->n; i++) {
        ynode_t *e = v->vals[i];
        uint8_t ip[16];
        int fam;
        const char *why = NULL;
        if (want(c, e, YN_SCALAR, key) < 0) {
            rc = -1;
            continue;
        }
        cfg_listen_t *l = &g->resolvers[g->nresolvers];
        memset(l, 0, sizeof(*l));
        l->pos = e->pos;
        l->kind = RT_LISTEN_RESOLVER;
        l->text = e->s;
        if (parse_ip(e->s, e->len, ip, &fam) == 0) /* no port: 53 */
            l->text = arena_printf(c->a, fam == 6 ? "[%s]:53" : "%s:53", e->s);
        else if (strchr(e->s, ':') == NULL) /* a name without a port: say it is a name */
            l->text = arena_printf(c->a, "%s:53", e->s);
        if (parse_sockaddr(l->text, strlen(l->text), &l->sa, &why) < 0 || l->sa.kind == RT_ADDR_NAME ||
            l->sa.kind == RT_ADDR_UNIX || l->sa.port == 0) {
            rc = err(c, e, "invalid resolver address '%s': %s", e->s,
                     l->sa.kind == RT_ADDR_NAME ? "use an IP address, not a host name"
                     : l->sa.kind == RT_ADDR_UNIX ? "unix sockets are not supported here"
                     : why ? why : "port 0");
            continue;
        }
        g->nresolvers++;
    }
    return rc;
}

static int g_protocols(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    static const char *const names[] = {"TLSv1.2", "TLSv1.3", NULL};
    cfg_global_t *g = obj;
    if (want(c, v, YN_SEQ, key) < 0)
        return -1;
    g->tls_protocols = 0;
    int rc = 0;
    for (size_t i = 0; i < v->n; i++) {
        int bit;
        if (enum_value(c, "protocol", v->vals[i], names, &bit) == 0)
            g->tls_protocols |= 1u << bit;
        else
            rc = -1;
    }
    if (rc == 0 && g->tls_protocols == 0)
        return err(c, v, "protocols must list TLSv1.2, TLSv1.3 or both");
    return rc;
}

static int g_unknown_sni(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    static const char *const names[] = {"default", "reject", NULL};
    int x;
    if (enum_value(c, key, v, names, &x) < 0)
        return -1;
    ((cfg_global_t *)obj)->unknown_sni_reject = x == 1;
    return 0;
}

static const opt_t gtls_opts[] = {FN("protocols", g_protocols), BOOL("session_tickets", cfg_global_t, session_tickets),
                                  DUR("ticket_key_rotation", cfg_global_t, ticket_key_rotation_ms),
                                  FN("unknown_sni", g_unknown_sni), END};
static int g_tls(ctx_t *c, const char *key, ynode_t *v, void *obj) { return walk(c, key, v, gtls_opts, obj); }

static int acme_ca(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    static const opt_t o = STR("ca_file", cfg_global_t, acme_ca_file);
    if (yaml_is_null(v)) {
        ((cfg_global_t *)obj)->acme_ca_file = NULL;
        return 0;
    }
    (void)key;
    return scalar(c, &o, v, obj);
}

static const opt_t acme_opts[] = {STR("directory", cfg_global_t, acme_directory), STR("email", cfg_global_t, acme_email),
                                  DUR("renew_before", cfg_global_t, acme_renew_before_ms), FN("ca_file", acme_ca), END};
static int g_acme(ctx_t *c, const char *key, ynode_t *v, void *obj) { return walk(c, key, v, acme_opts, obj); }

static const opt_t czone_opts[] = {STR("path", cfg_cache_zone_t, path), SIZE("max_size", cfg_cache_zone_t, max_size),
                                   SIZE("memory", cfg_cache_zone_t, memory),
                                   DUR("inactive", cfg_cache_zone_t, inactive_ms), END};

static int g_cache_zones(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    cfg_global_t *g = obj;
    if (want(c, v, YN_MAP, key) < 0)
        return -1;
    g->cache_zones = arena_alloc(c->a, (v->n + 1) * sizeof(*g->cache_zones));
    g->ncache_zones = v->n;
    int rc = 0;
    for (size_t i = 0; i < v->n; i++) {
        cfg_cache_zone_t *z = &g->cache_zones[i];
        *z = (cfg_cache_zone_t){v->keys[i]->pos, v->keys[i]->s, NULL, 1ull << 30, 64ull << 20, 3600000};
        if (!valid_name(z->name, 1))
            rc = err(c, v->keys[i], "invalid zone name '%s'", z->name);
        int zrc = walk(c, "cache zone", v->vals[i], czone_opts, z);
        zrc |= require(c, v->vals[i], "path", "cache zone");
        if (zrc == 0 && (z->memory < RT_CACHE_MEMORY_MIN || z->memory > RT_CACHE_MEMORY_MAX))
            zrc = err(c, v->vals[i], "cache zone '%s': memory must be between 256k and 1g", z->name);
        if (zrc == 0 && z->inactive_ms < 1000)
            zrc = err(c, v->vals[i], "cache zone '%s': inactive must be at least 1s", z->name);
        rc |= zrc;
    }
    if (v->n > RT_CACHE_ZONES_MAX)
        rc = err(c, v, "at most %d cache zones (proxyd keeps their indexes in a fixed shared region)", RT_CACHE_ZONES_MAX);
    return rc;
}

static int rz_rate(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    cfg_rate_zone_t *z = obj;
    const char *why;
    if (want(c, v, YN_SCALAR, key) < 0)
        return -1;
    if (parse_rate(v->s, v->len, &z->interval_ns, &why) < 0)
        return err(c, v, "invalid rate '%s': %s", v->s, why);
    z->rate = v->s;
    return 0;
}

/* client_ip | host | site | header:NAME */
static int rz_key(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    static const char *const names[] = {"client_ip", "host", "site", "header:NAME"};
    cfg_rate_zone_t *z = obj;
    if (want(c, v, YN_SCALAR, key) < 0)
        return -1;
    for (int i = 0; i < RT_RKEY_HEADER; i++)
        if (strcmp(v->s, names[i]) == 0) {
            z->key = i;
            return 0;
        }
    if (strncmp(v->s, "header:", 7) == 0) {
        if (!is_token(v->s + 7))
            return err(c, v, "invalid header name '%s' in key '%s'", v->s + 7, v->s);
        z->key = RT_RKEY_HEADER;
        z->header = v->s + 7;
        return 0;
    }
    const char *sg = diag_suggest(v->s, names, 4);
    return sg ? err(c, v, "invalid key '%s' (expected client_ip, host, site or header:NAME; did you mean '%s'?)", v->s, sg)
              : err(c, v, "invalid key '%s' (expected client_ip, host, site or header:NAME)", v->s);
}

static const opt_t rzone_opts[] = {FN("rate", rz_rate), FN("key", rz_key), END};

static int g_rate_zones(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    cfg_global_t *g = obj;
    if (want(c, v, YN_MAP, key) < 0)
        return -1;
    g->rate_zones = arena_alloc(c->a, (v->n + 1) * sizeof(*g->rate_zones));
    g->nrate_zones = v->n;
    int rc = 0;
    for (size_t i = 0; i < v->n; i++) {
        cfg_rate_zone_t *z = &g->rate_zones[i];
        *z = (cfg_rate_zone_t){.pos = v->keys[i]->pos, .name = v->keys[i]->s, .key = RT_RKEY_CLIENT_IP};
        if (!valid_name(z->name, 1))
            rc = err(c, v->keys[i], "invalid zone name '%s'", z->name);
        if (i == RT_RATE_ZONES_MAX)
            rc = err(c, v->keys[i], "too many rate-limit zones (at most %d)", RT_RATE_ZONES_MAX);
        rc |= walk(c, "rate-limit zone", v->vals[i], rzone_opts, z);
        rc |= require(c, v->vals[i], "rate", "rate-limit zone");
    }
    return rc;
}

static const opt_t limits_opts[] = {
    U32("max_connections", cfg_global_t, max_connections, 1, 10000000),
    U32("max_connections_per_ip", cfg_global_t, max_conns_per_ip, 0, 10000000),
    DUR("header_timeout", cfg_global_t, header_timeout_ms),
    DUR("body_timeout", cfg_global_t, body_timeout_ms),
    DUR("keepalive_timeout", cfg_global_t, keepalive_timeout_ms),
    DUR("drain_timeout", cfg_global_t, drain_timeout_ms),
    SIZE("max_header_size", cfg_global_t, max_header_size),
    SIZE("max_uri_size", cfg_global_t, max_uri_size),
    U32("max_headers", cfg_global_t, max_headers, 1, RT_MAX_HEADERS_CAP),
    SIZE("body_min_rate", cfg_global_t, body_min_rate),
    U32("h2_max_streams", cfg_global_t, h2_max_streams, 1, RT_H2_MAX_STREAMS_LIMIT),
    END,
};
static int g_limits(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    cfg_global_t *g = obj;
    if (walk(c, key, v, limits_opts, obj) < 0)
        return -1;
    if (g->max_header_size < 1024 || g->max_header_size > (1u << 20))
        return err(c, yaml_get(v, "max_header_size") ? yaml_get(v, "max_header_size") : v, "max_header_size must be between 1k and 1m");
    if (g->body_min_rate > UINT32_MAX)
        return err(c, yaml_get(v, "body_min_rate"), "body_min_rate must be at most 4g (bytes per second)");
    if (g->max_uri_size < 256 || g->max_uri_size > g->max_header_size)
        return err(c, yaml_get(v, "max_uri_size") ? yaml_get(v, "max_uri_size") : v, "max_uri_size must be between 256 and max_header_size");
    return 0;
}

static const opt_t logs_opts[] = {STR("access", cfg_global_t, access_log_path), STR("error", cfg_global_t, error_log_path), END};
static int g_logs(ctx_t *c, const char *key, ynode_t *v, void *obj) { return walk(c, key, v, logs_opts, obj); }

/* "10.0.0.1", "10.0.0.1/24", "fd00::1/64": an address, and the subnet's
 * prefix when given (host bits are expected: it is this host's address). */
static int addr_with_prefix(const char *s, const char **why)
{
    const char *slash = strchr(s, '/');
    char tmp[64];
    rt_cidr_t cidr;
    size_t alen = slash ? (size_t)(slash - s) : strlen(s);
    if (alen == 0 || alen >= sizeof(tmp)) {
        *why = "not an IP address";
        return -1;
    }
    memcpy(tmp, s, alen);
    tmp[alen] = '\0';
    if (parse_cidr(tmp, alen, &cidr, why) < 0)
        return -1;
    if (slash == NULL)
        return 0;
    const char *d = slash + 1;
    unsigned max = strchr(tmp, ':') ? 128 : 32, v = 0;
    if (*d == '\0' || strlen(d) > 3 || strspn(d, "0123456789") != strlen(d) || (v = (unsigned)atoi(d)) > max) {
        *why = max == 32 ? "the prefix length must be 0-32" : "the prefix length must be 0-128";
        return -1;
    }
    return 0;
}

static int ha_vips(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    cfg_global_t *g = obj;
    if (seq_of_scalars(c, key, v, &g->ha_vips, &g->nha_vips) < 0)
        return -1;
    if (g->nha_vips == 0)
        return err(c, v, "ha: virtual_ips needs at least one address");
    int rc = 0;
    for (size_t i = 0; i < g->nha_vips; i++) {
        const char *why;
        if (addr_with_prefix(g->ha_vips[i].s, &why) < 0)
            rc = errp(c, g->ha_vips[i].pos, "invalid virtual IP '%s': %s", g->ha_vips[i].s, why);
    }
    return rc;
}

static const opt_t ha_opts[] = {
    STR("node", cfg_global_t, ha_node),       STR("peer", cfg_global_t, ha_peer),
    STR("interface", cfg_global_t, ha_interface), FN("virtual_ips", ha_vips),
    U32("router_id", cfg_global_t, ha_router_id, 1, 255), U32("priority", cfg_global_t, ha_priority, 1, 254),
    BOOL("preempt", cfg_global_t, ha_preempt), DUR("advert_interval", cfg_global_t, ha_advert_ms),
    STR("auth_pass", cfg_global_t, ha_auth_pass), STR("listen", cfg_global_t, ha_listen),
    STR("address", cfg_global_t, ha_address), END,
};

/* An IP:port for the replication link. */
static int ha_ip_port(ctx_t *c, ynode_t *at, const char *what, const char *s)
{
    rt_sockaddr_t sa;
    const char *why;
    if (parse_sockaddr(s, strlen(s), &sa, &why) < 0)
        return err(c, at, "ha: invalid %s address '%s': %s", what, s, why);
    if (sa.kind >= RT_ADDR_UNIX || sa.port == 0)
        return err(c, at, "ha: %s must be an IP address with a port, e.g. 10.0.0.2:9443", what);
    return 0;
}

/* Values rendered into keepalived.conf must stay one token each. */
static bool keepalived_token(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max)
        return false;
    for (; *s; s++)
        if (*s <= ' ' || *s >= 0x7f || strchr("\"'{}#!\\", *s))
            return false;
    return true;
}

/* The ha block is node-local: it is stored with the node's settings and
 * never compiled into the rule table both nodes share.  Every problem is
 * reported, also after the first. */
static int g_ha(ctx_t *c, const char *key, ynode_t *v, void *obj)
{
    cfg_global_t *g = obj;
    int rc = walk(c, key, v, ha_opts, obj);
    if (v->kind != YN_MAP)
        return -1;
    static const char *const required[] = {"node", "peer", "interface", "virtual_ips"};
    for (size_t i = 0; i < ARRAY_LEN(required); i++)
        if (yaml_get(v, required[i]) == NULL)
            rc = err(c, v, "ha: missing '%s'", required[i]);
    if (g->ha_node && *g->ha_node &&
        (strspn(g->ha_node, "abcdefghijklmnopqrstuvwxyz0123456789-") != strlen(g->ha_node) || strlen(g->ha_node) > 63))
        rc = err(c, yaml_get(v, "node"), "ha: node name must be 1-63 of a-z, 0-9 and '-'");
    else if (yaml_get(v, "node") && (g->ha_node == NULL || *g->ha_node == '\0'))
        rc = err(c, yaml_get(v, "node"), "ha: node name must be 1-63 of a-z, 0-9 and '-'");
    if (g->ha_peer && ha_ip_port(c, yaml_get(v, "peer"), "peer", g->ha_peer) < 0)
        rc = -1;
    if (g->ha_listen && ha_ip_port(c, yaml_get(v, "listen"), "listen", g->ha_listen) < 0)
        rc = -1;
    if (g->ha_interface && !keepalived_token(g->ha_interface, 15))
        rc = err(c, yaml_get(v, "interface"), "ha: '%s' is not an interface name (1-15 characters, no spaces)",
                 g->ha_interface);
    const char *why;
    if (g->ha_address && addr_with_prefix(g->ha_address, &why) < 0)
        rc = err(c, yaml_get(v, "address"), "ha: invalid address '%s': %s", g->ha_address, why);
    if (g->ha_advert_ms < 10 || g->ha_advert_ms > 255000 || (g->ha_advert_ms >= 1000 && g->ha_advert_ms % 1000))
        rc = err(c, yaml_get(v, "advert_interval"),
                 "ha: advert_interval must be 10ms-255s, whole seconds from 1s (VRRPv2), or under 1s (VRRPv3)");
    if (g->ha_auth_pass && !keepalived_token(g->ha_auth_pass, 8))
        rc = err(c, yaml_get(v, "auth_pass"),
                 "ha: auth_pass must be 1-8 printable characters without spaces, quotes, braces, '#' or '!'");
    if (rc < 0)
        return -1;
    g->has_ha = true;
    if (g->ha_listen == NULL) {
        /* default: every address, on the port the peer listens on */
        const char *colon = strrchr(g->ha_peer, ':');
        g->ha_listen = arena_printf(c->a, "%s%s", g->ha_peer[0] == '[' ? "[::]" : "0.0.0.0", colon);
    }
    return 0;
}

static const opt_t global_opts[] = {
    FN("listen", g_listen),
    FN("workers", g_workers),
    STR("user", cfg_global_t, user),
    FN("admin", g_admin),
    FN("trusted_proxies", g_trusted),
    FN("resolver", g_resolver),
    FN("tls", g_tls),
    FN("acme", g_acme),
    FN("cache_zones", g_cache_zones),
    FN("rate_limit_zones", g_rate_zones),
    FN("limits", g_limits),
    FN("logs", g_logs),
    FN("ha", g_ha),
    BOOL("http2", cfg_global_t, http2),
    BOOL("http2_cleartext", cfg_global_t, http2_cleartext),
    END,
};

static void global_defaults(arena_t *a, cfg_global_t *g)
{
    bool root = geteuid() == 0;
    static const char *const http_root[] = {"0.0.0.0:80", "[::]:80"}, *const http_user[] = {"127.0.0.1:8080"};
    static const char *const https_root[] = {"0.0.0.0:443"}, *const https_user[] = {"127.0.0.1:8443"};
    g->listens = arena_alloc(a, 3 * sizeof(*g->listens));
    for (size_t i = 0; i < (root ? 2u : 1u); i++) {
        const char *s = root ? http_root[i] : http_user[i];
        const char *why;
        g->listens[g->nlistens] = (cfg_listen_t){.kind = RT_LISTEN_HTTP, .text = (char *)s};
        parse_sockaddr(s, strlen(s), &g->listens[g->nlistens++].sa, &why);
    }
    const char *s = root ? https_root[0] : https_user[0];
    const char *why;
    g->listens[g->nlistens] = (cfg_listen_t){.kind = RT_LISTEN_HTTPS, .text = (char *)s};
    parse_sockaddr(s, strlen(s), &g->listens[g->nlistens++].sa, &why);
    g->user = ""; /* absent: proxyd drops to 'proxyd' when that user exists (see worker.c) */
    g->admin_socket = root ? "/run/proxyd/admin.sock" : "run/admin.sock"; /* relative: beside the store */
    g->trusted = arena_alloc(a, sizeof(*g->trusted));
    parse_cidr("127.0.0.1/32", 12, &g->trusted[0], &why);
    g->ntrusted = 1;
    g->tls_protocols = 3;
    g->session_tickets = true;
    g->ticket_key_rotation_ms = 12 * 3600000ull;
    g->acme_directory = "https://acme-v02.api.letsencrypt.org/directory";
    g->acme_email = "";
    g->acme_renew_before_ms = 30 * 86400000ull;
    g->max_connections = 100000;
    g->header_timeout_ms = g->body_timeout_ms = 10000;
    g->keepalive_timeout_ms = 75000;
    g->drain_timeout_ms = 300000;
    g->max_header_size = 16384;
    g->max_uri_size = 8192;
    g->max_headers = 100;
    g->body_min_rate = 1024;
    g->http2 = true;
    g->h2_max_streams = 128;
    g->access_log_path = g->error_log_path = "";
    g->ha_priority = 100;
    g->ha_router_id = 51;
    g->ha_advert_ms = 1000;
    g->ha_node = "";
    g->ha_preempt = true;
}

cfg_global_t *config_global(arena_t *a, const char *file, const char *text, diag_t *d)
{
    ctx_t c = {a, d, file};
    cfg_global_t *g = arena_alloc(a, sizeof(*g));
    global_defaults(a, g);
    g->file = file;
    g->yaml = text ? text : "";
    if (text == NULL)
        return g;
    int before = d->errors;
    ynode_t *root = yaml_load(a, file, text, strlen(text), d);
    if (root == NULL)
        return NULL;
    if (walk(&c, "global settings", root, global_opts, g) < 0 || d->errors > before)
        return NULL;
    ynode_t *limits = yaml_get(root, "limits"), *streams = limits ? yaml_get(limits, "h2_max_streams") : NULL;
    if (streams && !g->http2 && !g->http2_cleartext) {
        err(&c, streams, "h2_max_streams has no effect with http2 and http2_cleartext both false; remove it or enable HTTP/2");
        return NULL;
    }
    return g;
}

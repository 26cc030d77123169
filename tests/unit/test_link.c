/*
 * test_link.c - incremental compilation: sites compiled alone into fragments
 * and linked give the table compile_table gives for the same sites, byte for
 * byte.  Random sites (every route kind, action and policy the compiler has,
 * policies shared between sites) go through random edits, fragments kept
 * across edits as the store keeps them; after every edit both tables are
 * compared.  Damaged fragments are refused, never linked.
 */
#include "proxyctl_all.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

static const char *GLOBAL = "rate_limit_zones:\n"
                            "  api: {rate: 10r/s}\n"
                            "  login: {rate: 6r/m, key: host}\n"
                            "cache_zones:\n"
                            "  news: {path: /tmp/proxyd-test-link-cache}\n";

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint32_t rnd(uint32_t n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng % n);
}

static void put(str_buf_t *b, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    str_append(b, line, strlen(line));
}

/* A random valid site named siteN; uniq keeps its hosts its own. */
static char *random_site(unsigned n, unsigned uniq, bool is_default)
{
    str_buf_t b = {0};
    put(&b, "site: site%u\n", n);
    if (is_default)
        put(&b, "default: true\n");
    put(&b, "hosts: [h%u-%u.example.com", n, uniq);
    for (uint32_t i = 0, k = rnd(3); i < k; i++)
        put(&b, ", \"%sa%u-%u-%u.example.com\"", rnd(2) ? "*." : "", i, n, uniq);
    put(&b, "]\n");
    uint32_t nups = 1 + rnd(3);
    put(&b, "upstreams:\n");
    for (uint32_t u = 0; u < nups; u++) {
        put(&b, "  up%u:\n", u);
        if (rnd(3) == 0)
            put(&b, "    balance: %s\n", rnd(2) ? "least_conn" : "ip_hash");
        if (rnd(3) == 0)
            put(&b, "    keepalive: %u\n", 1 + rnd(64));
        if (rnd(4) == 0)
            put(&b, "    health_check: {path: /hc%u, interval: %us}\n", rnd(3), 1 + rnd(5));
        if (rnd(5) == 0)
            put(&b, "    tls: {verify: false, sni: sni%u.example.com}\n", rnd(3));
        put(&b, "    servers:\n");
        for (uint32_t s = 0, k = 1 + rnd(3); s < k; s++)
            put(&b, "      - {address: \"127.0.0.%u:%u\", weight: %u%s}\n", 1 + rnd(3), 3000 + rnd(4), 1 + rnd(3),
                s && rnd(4) == 0 ? ", backup: true" : "");
    }
    put(&b, "routes:\n");
    for (uint32_t r = 0, k = 1 + rnd(8); r < k; r++) {
        uint32_t m = rnd(4);
        if (m == 0)
            put(&b, "  - match: {path_exact: /e%u}\n", rnd(4));
        else if (m == 1)
            put(&b, "  - match: {path_prefix: /p%u/%s}\n", rnd(3), rnd(2) ? "q/" : "");
        else if (m == 2)
            put(&b, "  - match: {path_regex: '\\.(x%u|y)$'}\n", rnd(3));
        else
            put(&b, "  - match: {path_prefix: /, methods: [GET%s]}\n", rnd(2) ? ", POST" : "");
        uint32_t a = rnd(6);
        if (a == 0) {
            put(&b, "    return: {status: %u, body: \"b%u\\n\"%s}\n", rnd(2) ? 200 : 404, rnd(3),
                rnd(2) ? ", content_type: text/x-t" : "");
            continue;
        }
        if (a == 1) {
            put(&b, "    redirect: {to: \"https://x%u.example.com/\", status: 301}\n", rnd(3));
            continue;
        }
        if (a == 2) {
            put(&b, "    static: {root: /var/www/s%u, expires: %uh%s}\n", rnd(3), 1 + rnd(3),
                rnd(2) ? ", index: i.html" : "");
            continue;
        }
        put(&b, "    upstream: up%u\n", rnd(nups));
        if (m == 1 && rnd(2) == 0)
            put(&b, rnd(2) ? "    strip_prefix: true\n" : "    rewrite_prefix: /r%u/\n", rnd(3));
        else if (m == 3 && rnd(4) == 0)
            put(&b, "    websocket: true\n");
        if (rnd(3) == 0)
            put(&b, "    timeouts: {connect: %us, read: %us}\n", 1 + rnd(2), 10 + rnd(2)); /* shared policies */
        if (rnd(4) == 0)
            put(&b, "    rate_limit: {zone: %s, burst: %u}\n", rnd(2) ? "api" : "login", rnd(5));
        if (rnd(4) == 0)
            put(&b, "    cache: {zone: news, valid: {\"200\": %um}, bypass_on: [authorization]}\n", 1 + rnd(3));
        if (rnd(4) == 0)
            put(&b, "    allow: [10.%u.0.0/16, 192.168.0.0/24]\n", rnd(3));
        if (rnd(5) == 0)
            put(&b, "    deny: [10.9.%u.0/24]\n", rnd(3));
        if (rnd(4) == 0)
            put(&b, "    headers: {request: {set: {X-A: \"v%u\"}}, response: {remove: [Server]}}\n", rnd(3));
        if (rnd(6) == 0)
            put(&b, "    buffering: false\n");
    }
    if (rnd(3) == 0)
        put(&b, "compression: {gzip: true, level: %u, types: [text/html, application/json]}\n", 1 + rnd(9));
    if (rnd(4) == 0)
        put(&b, "deny: [203.0.113.%u]\n", rnd(200));
    str_append(&b, "", 1);
    return b.p;
}

typedef struct {
    char *text;
    uint8_t *frag; /* NULL until compiled */
    size_t len;
} cached_t;

#define MAX_SITES 64

typedef struct {
    arena_t a;
    cfg_global_t *g;
    char *text[MAX_SITES];
    unsigned uniq[MAX_SITES];
    size_t n;
    cached_t cache[1024]; /* text -> fragment, as the store keeps them */
    size_t ncache;
} world_t;

static uint8_t *fragment_for(world_t *w, const char *text, cfg_site_t *s, size_t *len)
{
    for (size_t i = 0; i < w->ncache; i++)
        if (strcmp(w->cache[i].text, text) == 0) {
            *len = w->cache[i].len;
            return w->cache[i].frag;
        }
    assert_true(w->ncache < 1024);
    cached_t *c = &w->cache[w->ncache++];
    c->text = strdup(text);
    assert_int_equal(compile_fragment(w->g, s, &c->frag, &c->len), 0);
    *len = c->len;
    return c->frag;
}

/* Compile the world both ways; the tables must be equal and open. */
static void compare(world_t *w)
{
    diag_t d;
    memset(&d, 0, sizeof(d));
    cfg_site_t *sites[MAX_SITES];
    uint8_t *frags[MAX_SITES];
    size_t lens[MAX_SITES];
    for (size_t i = 0; i < w->n; i++) {
        sites[i] = config_site(&w->a, "site.yaml", w->text[i], &d);
        if (sites[i] == NULL)
            fprintf(stderr, "%s", w->text[i]);
        assert_non_null(sites[i]);
    }
    check_sites(w->g, sites, w->n, &d);
    assert_int_equal(d.errors, 0);
    diag_free(&d);
    for (size_t i = 0; i < w->n; i++)
        frags[i] = fragment_for(w, w->text[i], sites[i], &lens[i]);
    uint8_t *full, *linked;
    size_t flen, llen;
    assert_int_equal(compile_table(w->g, sites, w->n, &full, &flen), 0);
    assert_int_equal(link_table(w->g, frags, lens, w->n, &linked, &llen), 0);
    assert_int_equal(flen, llen);
    assert_memory_equal(full, linked, flen);
    rt_table_t t;
    char why[256];
    assert_int_equal(rt_open(&t, linked, llen, why, sizeof(why)), 0);
    free(full);
    free(linked);
}

static void world_free(world_t *w)
{
    for (size_t i = 0; i < w->n; i++)
        free(w->text[i]);
    for (size_t i = 0; i < w->ncache; i++) {
        free(w->cache[i].text);
        free(w->cache[i].frag);
    }
    arena_free(&w->a);
}

static void test_random_edits(void **state)
{
    (void)state;
    static world_t w;
    memset(&w, 0, sizeof(w));
    arena_init(&w.a, 0);
    diag_t d;
    memset(&d, 0, sizeof(d));
    w.g = config_global(&w.a, "proxy.yaml", GLOBAL, &d);
    assert_non_null(w.g);
    diag_free(&d);
    unsigned next = 0, uniq = 0;
    for (; w.n < 24; w.n++) {
        w.uniq[w.n] = uniq++;
        w.text[w.n] = random_site(next++, w.uniq[w.n], w.n == 5);
    }
    compare(&w);
    for (int step = 0; step < 60; step++) {
        uint32_t e = rnd(4);
        if (e == 0 && w.n < MAX_SITES) { /* add a site */
            w.uniq[w.n] = uniq++;
            w.text[w.n] = random_site(next++, w.uniq[w.n], false);
            w.n++;
        } else if (e == 1 && w.n > 2) { /* remove one (not the default) */
            size_t i = rnd((uint32_t)w.n);
            if (strstr(w.text[i], "default: true") == NULL) {
                free(w.text[i]);
                memmove(&w.text[i], &w.text[i + 1], (w.n - i - 1) * sizeof(w.text[0]));
                memmove(&w.uniq[i], &w.uniq[i + 1], (w.n - i - 1) * sizeof(w.uniq[0]));
                w.n--;
            }
        } else { /* change one: a new random body, same name */
            size_t i = rnd((uint32_t)w.n);
            unsigned name;
            assert_int_equal(sscanf(w.text[i], "site: site%u", &name), 1);
            bool def = strstr(w.text[i], "default: true") != NULL;
            free(w.text[i]);
            w.uniq[i] = uniq++;
            w.text[i] = random_site(name, w.uniq[i], def);
        }
        compare(&w);
    }
    world_free(&w);
}

/* A table of no sites, and one site, link as they compile. */
static void test_empty_and_one(void **state)
{
    (void)state;
    static world_t w;
    memset(&w, 0, sizeof(w));
    arena_init(&w.a, 0);
    diag_t d;
    memset(&d, 0, sizeof(d));
    w.g = config_global(&w.a, "proxy.yaml", NULL, &d);
    diag_free(&d);
    compare(&w);
    w.text[0] = strdup("site: one\nhosts: [one.example.com]\nroutes:\n  - match: {path_prefix: /}\n"
                       "    return: {status: 200}\n");
    w.n = 1;
    compare(&w);
    world_free(&w);
}

/* Every byte of a fragment changed in turn: linking either refuses it or
 * gives a table (which rt_open then judges); it never reads outside it. */
static void test_damaged_fragment(void **state)
{
    (void)state;
    arena_t a;
    arena_init(&a, 0);
    diag_t d;
    memset(&d, 0, sizeof(d));
    cfg_global_t *g = config_global(&a, "proxy.yaml", GLOBAL, &d);
    char *text = random_site(1, 1, false);
    cfg_site_t *s = config_site(&a, "s.yaml", text, &d);
    assert_non_null(s);
    diag_free(&d);
    uint8_t *frag;
    size_t len;
    assert_int_equal(compile_fragment(g, s, &frag, &len), 0);
    uint8_t *copy = aligned_alloc(8, (len + 7) & ~(size_t)7);
    int refused = 0;
    for (size_t i = 0; i < len; i++) {
        memcpy(copy, frag, len);
        copy[i] ^= 0x5a;
        uint8_t *out = NULL;
        size_t olen;
        if (link_table(g, &copy, &len, 1, &out, &olen) < 0)
            refused++;
        free(out);
    }
    assert_true(refused > 0);
    /* Short and misaligned fragments. */
    uint8_t *out = NULL;
    size_t olen, short_len = len / 2;
    assert_int_equal(link_table(g, &frag, &short_len, 1, &out, &olen), -1);
    frag_info_t info;
    assert_int_equal(fragment_site_info(frag, len, &info), 0);
    assert_string_equal(info.name, "site1");
    assert_true(info.nhosts >= 1);
    free(info.hosts);
    free(copy);
    free(frag);
    free(text);
    arena_free(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_and_one),
        cmocka_unit_test(test_random_edits),
        cmocka_unit_test(test_damaged_fragment),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

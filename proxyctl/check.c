/*
 * check.c - semantic checks across sites and against the global settings:
 * a host claimed by two sites, two default sites, unknown cache or
 * rate-limit zones, certificate files that are
 * unreadable, mismatched, expired or do not cover the site's hosts, and
 * two warnings: routes that an earlier route makes unreachable, and
 * path_regex patterns that may backtrack catastrophically.
 */
#include "config.h"

#include <ctype.h>
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

/* ---- path_regex: catastrophic backtracking (a warning) -------------------------
 *
 * A repeated group whose body can match one text in more than one way makes
 * backtracking exponential in the length of a path that nearly matches:
 * (a+)+$ against "/aaaa...!" tries every split of the a's.  proxyd stops such a
 * match at its limit and fails closed (common/route.c): the route then gives
 * 500 (or, a return route, counts as matched) for every such path.  So the
 * pattern is reported when it is compiled.  A small parser turns the PCRE2
 * syntax into character sets, sequences, alternations and repeats; a repeat
 * that can run more than once is reported when its body holds
 *  - a variable repeat whose item can match a character that may come right
 *    after it, in the body or at the start of the next turn: (a+)+, (a*)*,
 *    (\w+\s?)*, (.*a){3}; not (/[a-z]+)+ nor (\d{1,3}\.){3};
 *  - or an alternation with two branches that can start with the same
 *    character: (a|a)*, (ab|ac)+.
 * Possessive repeats and atomic groups never backtrack into themselves and
 * are left out.  Sets are of bytes (a multi-byte character counts as its lead
 * byte, \p{..} as any byte); back references match anything: in doubt, warn.
 */

enum { RX_SET, RX_EMPTY, RX_SEQ, RX_ALT, RX_REPEAT, RX_ATOMIC, RX_LOOK };
#define RX_INF UINT32_MAX
#define RX_MAX_DEPTH 64

typedef struct {
    uint8_t b[32];
} rx_set_t;

typedef struct rx_node {
    int kind;
    rx_set_t set;         /* RX_SET */
    uint32_t min, max;    /* RX_REPEAT */
    bool possessive;
    size_t at, end;       /* the node's text in the pattern */
    struct rx_node **kid; /* RX_SEQ, RX_ALT: nkid of them; RX_REPEAT, RX_ATOMIC, RX_LOOK: one */
    size_t nkid;
    bool nullable;        /* can match the empty string */
    rx_set_t first;       /* bytes a non-empty match can start with */
} rx_node_t;

typedef struct {
    const char *p; /* NUL-terminated, n bytes */
    size_t i, n;
    bool icase, extended;
    int depth;
    arena_t *a;
} rx_parser_t;

static void rx_add(rx_set_t *s, unsigned lo, unsigned hi)
{
    for (unsigned c = lo; c <= hi && c < 256; c++)
        s->b[c >> 3] |= (uint8_t)(1u << (c & 7));
}

static void rx_union(rx_set_t *s, const rx_set_t *o)
{
    for (size_t i = 0; i < sizeof(s->b); i++)
        s->b[i] |= o->b[i];
}

static void rx_invert(rx_set_t *s)
{
    for (size_t i = 0; i < sizeof(s->b); i++)
        s->b[i] = (uint8_t)~s->b[i];
}

static bool rx_meet(const rx_set_t *x, const rx_set_t *y)
{
    for (size_t i = 0; i < sizeof(x->b); i++)
        if (x->b[i] & y->b[i])
            return true;
    return false;
}

/* Under (?i) a letter stands for both its cases. */
static void rx_fold(const rx_parser_t *ps, rx_set_t *s)
{
    for (unsigned c = 'a'; ps->icase && c <= 'z'; c++)
        if (s->b[c >> 3] & (1u << (c & 7)) || s->b[(c - 32) >> 3] & (1u << ((c - 32) & 7))) {
            rx_add(s, c, c);
            rx_add(s, c - 32, c - 32);
        }
}

static rx_node_t *rx_node(rx_parser_t *ps, int kind, size_t at)
{
    rx_node_t *n = arena_alloc(ps->a, sizeof(*n));
    n->kind = kind;
    n->at = at;
    n->nullable = kind != RX_SET;
    return n;
}

static void rx_push(rx_parser_t *ps, rx_node_t *n, rx_node_t *k)
{
    if ((n->nkid & (n->nkid - 1)) == 0) { /* 0, 1, 2, 4...: room for twice as many */
        rx_node_t **v = arena_alloc(ps->a, (n->nkid ? n->nkid * 2 : 1) * sizeof(*v));
        if (n->nkid)
            memcpy(v, n->kid, n->nkid * sizeof(*v));
        n->kid = v;
    }
    n->kid[n->nkid++] = k;
}

/* Record where n ends and derive nullable and first from its kind and kids. */
static rx_node_t *rx_finish(rx_parser_t *ps, rx_node_t *n)
{
    n->end = ps->i;
    switch (n->kind) {
    case RX_SET:
        n->first = n->set;
        break;
    case RX_SEQ:
        n->nullable = true;
        for (size_t i = 0; i < n->nkid && n->nullable; i++) {
            rx_union(&n->first, &n->kid[i]->first);
            n->nullable = n->kid[i]->nullable;
        }
        break;
    case RX_ALT:
        n->nullable = false;
        for (size_t i = 0; i < n->nkid; i++) {
            rx_union(&n->first, &n->kid[i]->first);
            n->nullable |= n->kid[i]->nullable;
        }
        break;
    case RX_REPEAT:
    case RX_ATOMIC:
        n->first = n->kid[0]->first;
        n->nullable = n->kid[0]->nullable || (n->kind == RX_REPEAT && n->min == 0);
        break;
    default: /* RX_EMPTY, RX_LOOK: zero width */
        break;
    }
    return n;
}

/* A node for what this scanner does not decode: any byte, maybe nothing. */
static rx_node_t *rx_any(rx_parser_t *ps, size_t at, bool nullable)
{
    rx_node_t *n = rx_node(ps, RX_SET, at);
    rx_add(&n->set, 0, 255);
    rx_finish(ps, n);
    n->nullable = nullable;
    return n;
}

/* Skip to just past the ')' that closes the group whose '(' is behind i. */
static void rx_skip_group(rx_parser_t *ps)
{
    for (int open = 1; ps->i < ps->n && open > 0; ps->i++) {
        char c = ps->p[ps->i];
        if (c == '\\' && ps->i + 1 < ps->n)
            ps->i++;
        else
            open += (c == '(') - (c == ')');
    }
}

/* \d \w \s \h \v, upper case for the complement, added to s; false for other letters. */
static bool rx_class_escape(int c, rx_set_t *s)
{
    rx_set_t t = {{0}};
    switch (c | 0x20) {
    case 'd':
        rx_add(&t, '0', '9');
        break;
    case 'w':
        rx_add(&t, '0', '9'), rx_add(&t, 'a', 'z'), rx_add(&t, 'A', 'Z'), rx_add(&t, '_', '_');
        break;
    case 's':
        rx_add(&t, '\t', '\r'), rx_add(&t, ' ', ' ');
        break;
    case 'h':
        rx_add(&t, '\t', '\t'), rx_add(&t, ' ', ' '), rx_add(&t, 0x80, 0xff);
        break;
    case 'v':
        rx_add(&t, '\n', '\r'), rx_add(&t, 0x80, 0xff);
        break;
    default:
        return false;
    }
    if (c >= 'A' && c <= 'Z')
        rx_invert(&t);
    rx_union(s, &t);
    return true;
}

static unsigned long rx_number(rx_parser_t *ps, unsigned base, size_t max_digits)
{
    unsigned long v = 0;
    for (size_t k = 0; k < max_digits && ps->i < ps->n; k++, ps->i++) {
        int c = (unsigned char)ps->p[ps->i];
        unsigned d = isdigit(c) ? (unsigned)(c - '0') : isxdigit(c) ? (unsigned)((c | 0x20) - 'a' + 10) : 99;
        if (d >= base)
            break;
        v = v * base + d;
    }
    return v;
}

/* The byte an escaped character stands for (c after the backslash, its
 * arguments consumed): -1 for one above 255, -2 when c is no character escape. */
static int rx_escaped_char(rx_parser_t *ps, int c)
{
    static const char from[] = "ntrfea", to[] = "\n\t\r\f\033\a";
    const char *m = c ? strchr(from, c) : NULL;
    if (m)
        return (unsigned char)to[m - from];
    if (!isalnum(c))
        return c;
    bool brace = ps->p[ps->i] == '{';
    unsigned long v;
    switch (c) {
    case 'c':
        return ps->i < ps->n ? (toupper((unsigned char)ps->p[ps->i++]) ^ 0x40) & 0xff : -1;
    case 'x':
    case 'o':
        if (!brace && c == 'o')
            return -2;
        ps->i += brace;
        v = rx_number(ps, c == 'x' ? 16 : 8, brace ? 8 : 2);
        while (brace && ps->i < ps->n && ps->p[ps->i++] != '}')
            ;
        return v < 256 ? (int)v : -1;
    case '0':
        return (int)rx_number(ps, 8, 2);
    default:
        return -2;
    }
}

/* Skip the argument of \g, \k, \p, \P, \N (escape c): {...}, <...>, '...',
 * digits, or the one letter of \pL. */
static void rx_skip_argument(rx_parser_t *ps, int c)
{
    char open = ps->p[ps->i];
    if ((c == 'p' || c == 'P') && isalpha((unsigned char)open)) {
        ps->i++;
        return;
    }
    const char *close = open == '{' ? "}" : open == '<' ? ">" : open == '\'' ? "'" : NULL;
    if (close) {
        while (++ps->i < ps->n && ps->p[ps->i] != close[0])
            ;
        ps->i += ps->i < ps->n;
        return;
    }
    while (ps->i < ps->n && (isdigit((unsigned char)ps->p[ps->i]) || ps->p[ps->i] == '-'))
        ps->i++;
}

static rx_node_t *rx_quoted(rx_parser_t *ps, size_t at);

static rx_node_t *rx_escape(rx_parser_t *ps, size_t at)
{
    if (ps->i >= ps->n)
        return rx_any(ps, at, false);
    int c = (unsigned char)ps->p[ps->i++];
    rx_node_t *n = rx_node(ps, RX_SET, at);
    if (rx_class_escape(c, &n->set))
        return rx_finish(ps, n);
    if (strchr("bBAzZGKE", c) && c)
        return rx_finish(ps, rx_node(ps, RX_EMPTY, at));
    if (c == 'Q')
        return rx_quoted(ps, at);
    int v = rx_escaped_char(ps, c);
    if (v >= 0) {
        rx_add(&n->set, (unsigned)v, (unsigned)v);
        rx_fold(ps, &n->set);
        return rx_finish(ps, n);
    }
    /* Back references (\1, \g{-1}, \k<name>) may match anything, even
     * nothing; \p{..}, \X, \R, \N, \C match some character. */
    bool backref = isdigit(c) || c == 'g' || c == 'k';
    if (strchr("gkpPN", c) && c)
        rx_skip_argument(ps, c);
    else if (isdigit(c))
        rx_number(ps, 10, 3);
    return rx_any(ps, at, backref);
}

/* One literal character (a UTF-8 character as its lead byte). */
static rx_node_t *rx_literal(rx_parser_t *ps, size_t at)
{
    unsigned char c = (unsigned char)ps->p[ps->i++];
    while (c >= 0xc0 && ps->i < ps->n && ((unsigned char)ps->p[ps->i] & 0xc0) == 0x80)
        ps->i++;
    rx_node_t *n = rx_node(ps, RX_SET, at);
    rx_add(&n->set, c, c);
    rx_fold(ps, &n->set);
    return rx_finish(ps, n);
}

/* \Q...\E: a sequence of literal characters. */
static rx_node_t *rx_quoted(rx_parser_t *ps, size_t at)
{
    rx_node_t *seq = rx_node(ps, RX_SEQ, at);
    while (ps->i < ps->n && strncmp(ps->p + ps->i, "\\E", 2) != 0)
        rx_push(ps, seq, rx_literal(ps, ps->i));
    ps->i += ps->i < ps->n ? 2 : 0;
    return rx_finish(ps, seq);
}

/* [:name:] inside a class, added to s (roughly: in doubt, more). */
static void rx_posix(rx_parser_t *ps, rx_set_t *s)
{
    static const struct {
        const char *name;
        char like;
    } known[] = {{"digit", 'd'}, {"space", 's'}, {"blank", 's'}, {"alpha", 'w'}, {"alnum", 'w'},
                 {"upper", 'w'}, {"lower", 'w'}, {"word", 'w'},  {"xdigit", 'w'}};
    const char *name = ps->p + ps->i + 2, *close = strstr(name, ":]");
    if (close == NULL) { /* not a POSIX class after all: a plain '[' */
        rx_add(s, '[', '[');
        ps->i++;
        return;
    }
    ps->i = (size_t)(close - ps->p) + 2;
    for (size_t k = 0; k < sizeof(known) / sizeof(known[0]); k++)
        if (strlen(known[k].name) == (size_t)(close - name) && strncmp(name, known[k].name, (size_t)(close - name)) == 0) {
            rx_class_escape(known[k].like, s);
            return;
        }
    rx_add(s, 0, 255);
}

/* One member of a [...] class: its byte (-1: any byte), or -2 when it was a
 * whole class (\d, [:alpha:]) already added to s. */
static int rx_member(rx_parser_t *ps, rx_set_t *s)
{
    if (strncmp(ps->p + ps->i, "[:", 2) == 0) {
        rx_posix(ps, s);
        return -2;
    }
    unsigned char c = (unsigned char)ps->p[ps->i++];
    if (c != '\\' || ps->i >= ps->n) {
        while (c >= 0xc0 && ps->i < ps->n && ((unsigned char)ps->p[ps->i] & 0xc0) == 0x80)
            ps->i++;
        return c;
    }
    int e = (unsigned char)ps->p[ps->i++];
    if (rx_class_escape(e, s))
        return -2;
    if (e == 'b')
        return '\b';
    int v = rx_escaped_char(ps, e);
    if (v == -2 && strchr("pPN", e) && e)
        rx_skip_argument(ps, e);
    return v < 0 ? -1 : v;
}

static rx_node_t *rx_class(rx_parser_t *ps, size_t at)
{
    rx_node_t *n = rx_node(ps, RX_SET, at);
    bool negate = ps->p[ps->i] == '^';
    ps->i += negate;
    for (bool first = true; ps->i < ps->n && (ps->p[ps->i] != ']' || first); first = false) {
        int lo = rx_member(ps, &n->set), hi = lo;
        if (lo >= 0 && ps->p[ps->i] == '-' && ps->i + 1 < ps->n && ps->p[ps->i + 1] != ']') {
            ps->i++;
            hi = rx_member(ps, &n->set);
        }
        if (lo == -1 || hi == -1)
            rx_add(&n->set, 0, 255);
        else if (lo >= 0 && hi == -2) /* [a-\d]: a, '-' and the digits */
            rx_add(&n->set, (unsigned)lo, (unsigned)lo), rx_add(&n->set, '-', '-');
        else if (lo >= 0)
            rx_add(&n->set, (unsigned)lo, (unsigned)(hi >= lo ? hi : 255));
        if (lo >= 0x80 || hi >= 0x80)
            rx_add(&n->set, 0x80, 0xff); /* lead bytes stand for multi-byte ranges: be generous */
    }
    ps->i += ps->i < ps->n; /* ']' */
    rx_fold(ps, &n->set);
    if (negate)
        rx_invert(&n->set);
    return rx_finish(ps, n);
}

static rx_node_t *rx_alt(rx_parser_t *ps);

/* After "(?": the kind of group, or -1 for an item with no group body
 * (options, comments, references, callouts), whose node is left in *item. */
static int rx_group_kind(rx_parser_t *ps, size_t at, rx_node_t **item)
{
    char c = ps->p[ps->i], d = ps->p[ps->i + (ps->i < ps->n)];
    if (c == ':' || c == '|' || c == '>' || c == '=' || c == '!' || (c == '<' && (d == '=' || d == '!'))) {
        ps->i += 1 + (c == '<');
        return c == '>' ? RX_ATOMIC : c == ':' || c == '|' ? RX_ALT : RX_LOOK;
    }
    if (c == '<' || c == '\'' || (c == 'P' && d == '<')) { /* named group */
        ps->i += 1 + (c == 'P');
        while (ps->i < ps->n && ps->p[ps->i++] != (c == '\'' ? '\'' : '>'))
            ;
        return RX_ALT;
    }
    if (c == '(') { /* conditional: skip the condition, the branches follow */
        ps->i++;
        rx_skip_group(ps);
        return RX_ALT;
    }
    if (c == '#') { /* comment: up to the first ')', escapes or not */
        while (ps->i < ps->n && ps->p[ps->i++] != ')')
            ;
        *item = rx_finish(ps, rx_node(ps, RX_EMPTY, at));
        return -1;
    }
    bool icase = ps->icase, extended = ps->extended, on = true;
    for (; isalpha((unsigned char)ps->p[ps->i]) || ps->p[ps->i] == '-' || ps->p[ps->i] == '^'; ps->i++) {
        char o = ps->p[ps->i];
        on = o == '-' ? false : on;
        icase = o == 'i' ? on : o == '^' ? false : icase;
        extended = o == 'x' ? on : o == '^' ? false : extended;
    }
    bool letters = c != 'P' && c != 'R' && (isalpha((unsigned char)c) || c == '-' || c == '^');
    if (letters && ps->p[ps->i] == ':') {
        ps->i++;
        ps->icase = icase, ps->extended = extended; /* for this group only: rx_group restores */
        return RX_ALT;
    }
    if (letters && ps->p[ps->i] == ')')
        ps->icase = icase, ps->extended = extended; /* to the end of the enclosing group */
    bool options = letters && ps->p[ps->i] == ')';
    rx_skip_group(ps);
    /* (?R), (?1), (?&name), (?P>name), (?P=name): may match anything */
    *item = options ? rx_finish(ps, rx_node(ps, RX_EMPTY, at)) : rx_any(ps, at, true);
    return -1;
}

static rx_node_t *rx_group(rx_parser_t *ps, size_t at)
{
    bool icase = ps->icase, extended = ps->extended;
    rx_node_t *item = NULL;
    int kind = RX_ALT;
    if (ps->p[ps->i] == '*' || ps->depth >= RX_MAX_DEPTH) { /* (*VERB), or too deep to look into */
        rx_skip_group(ps);
        return ps->p[at + 1] == '*' ? rx_finish(ps, rx_node(ps, RX_EMPTY, at)) : rx_any(ps, at, true);
    }
    if (ps->p[ps->i] == '?') {
        ps->i++;
        kind = rx_group_kind(ps, at, &item);
        if (kind < 0)
            return item;
    }
    ps->depth++;
    rx_node_t *body = rx_alt(ps);
    ps->depth--;
    ps->icase = icase, ps->extended = extended;
    ps->i += ps->i < ps->n; /* ')' */
    body->at = at;
    body->end = ps->i;
    if (kind == RX_ALT)
        return body;
    rx_node_t *n = rx_node(ps, kind, at);
    rx_push(ps, n, body);
    return rx_finish(ps, n);
}

/* Under (?x), white space and # comments mean nothing: skip them. */
static void rx_skip_space(rx_parser_t *ps)
{
    while (ps->extended && ps->i < ps->n && (isspace((unsigned char)ps->p[ps->i]) || ps->p[ps->i] == '#')) {
        if (ps->p[ps->i] == '#')
            while (ps->i < ps->n && ps->p[ps->i] != '\n')
                ps->i++;
        ps->i += ps->i < ps->n;
    }
}

/* *, +, ?, {n}, {n,}, {n,m} at i: consumed, true; anything else (a '{' that
 * opens no quantifier is a literal) false. */
static bool rx_quantifier(rx_parser_t *ps, uint32_t *min, uint32_t *max)
{
    char c = ps->p[ps->i];
    if (c == '*' || c == '+' || c == '?') {
        ps->i++;
        *min = c == '+';
        *max = c == '?' ? 1 : RX_INF;
        return true;
    }
    if (c != '{' || !isdigit((unsigned char)ps->p[ps->i + 1]))
        return false;
    size_t save = ps->i++;
    *min = *max = (uint32_t)rx_number(ps, 10, 5);
    if (ps->p[ps->i] == ',') {
        ps->i++;
        *max = isdigit((unsigned char)ps->p[ps->i]) ? (uint32_t)rx_number(ps, 10, 5) : RX_INF;
    }
    if (ps->p[ps->i] == '}') {
        ps->i++;
        return true;
    }
    ps->i = save;
    return false;
}

static rx_node_t *rx_quantified(rx_parser_t *ps, rx_node_t *atom)
{
    uint32_t min, max;
    rx_skip_space(ps);
    if (ps->i >= ps->n || !rx_quantifier(ps, &min, &max))
        return atom;
    rx_node_t *r = rx_node(ps, RX_REPEAT, atom->at);
    r->min = min;
    r->max = max;
    r->possessive = ps->p[ps->i] == '+';
    ps->i += ps->p[ps->i] == '+' || ps->p[ps->i] == '?';
    rx_push(ps, r, atom);
    return rx_finish(ps, r);
}

/* One item, or NULL when only white space under (?x) was left. */
static rx_node_t *rx_atom(rx_parser_t *ps)
{
    rx_skip_space(ps);
    size_t at = ps->i;
    char c = ps->p[ps->i];
    if (ps->i >= ps->n || c == '|' || c == ')')
        return NULL;
    ps->i++;
    switch (c) {
    case '(':
        return rx_group(ps, at);
    case '[':
        return rx_class(ps, at);
    case '\\':
        return rx_escape(ps, at);
    case '^':
    case '$':
        return rx_finish(ps, rx_node(ps, RX_EMPTY, at));
    case '.': {
        rx_node_t *n = rx_any(ps, at, false);
        n->set.b['\n' >> 3] &= (uint8_t)~(1u << ('\n' & 7));
        n->first = n->set;
        return n;
    }
    default:
        ps->i = at;
        return rx_literal(ps, at);
    }
}

static rx_node_t *rx_seq(rx_parser_t *ps)
{
    rx_node_t *seq = rx_node(ps, RX_SEQ, ps->i);
    while (ps->i < ps->n && ps->p[ps->i] != '|' && ps->p[ps->i] != ')') {
        rx_node_t *atom = rx_atom(ps);
        if (atom)
            rx_push(ps, seq, rx_quantified(ps, atom));
    }
    return rx_finish(ps, seq);
}

static rx_node_t *rx_alt(rx_parser_t *ps)
{
    rx_node_t *alt = rx_node(ps, RX_ALT, ps->i);
    rx_push(ps, alt, rx_seq(ps));
    while (ps->i < ps->n && ps->p[ps->i] == '|') {
        ps->i++;
        rx_push(ps, alt, rx_seq(ps));
    }
    return rx_finish(ps, alt);
}

/* In a body that repeats, the part that lets one text match more than one
 * way, or NULL.  follow: the bytes that may come right after n. */
static const rx_node_t *rx_ambiguous(const rx_node_t *n, const rx_set_t *follow)
{
    const rx_node_t *found = NULL;
    rx_set_t f = *follow;
    switch (n->kind) {
    case RX_SEQ: /* backwards, so the follow set builds up; the leftmost finding is kept */
        for (size_t i = n->nkid; i-- > 0;) {
            const rx_node_t *k = n->kid[i], *bad = rx_ambiguous(k, &f);
            found = bad ? bad : found;
            if (!k->nullable)
                memset(&f, 0, sizeof(f));
            rx_union(&f, &k->first);
        }
        return found;
    case RX_ALT:
        for (size_t i = 0; i < n->nkid; i++)
            for (size_t j = i + 1; j < n->nkid; j++)
                if (rx_meet(&n->kid[i]->first, &n->kid[j]->first))
                    return n;
        for (size_t i = 0; i < n->nkid && found == NULL; i++)
            found = rx_ambiguous(n->kid[i], follow);
        return found;
    case RX_REPEAT:
        if (n->possessive)
            return NULL;
        if (n->min != n->max && rx_meet(&n->kid[0]->first, follow))
            return n;
        if (n->max > 1)
            rx_union(&f, &n->kid[0]->first);
        return rx_ambiguous(n->kid[0], &f);
    default: /* a set, zero width, or atomic */
        return NULL;
    }
}

/* The first repeat that can run more than once over an ambiguous body; *inner: what makes it so. */
static const rx_node_t *rx_find(const rx_node_t *n, const rx_node_t **inner)
{
    if (n->kind == RX_REPEAT && n->max > 1 && !n->possessive &&
        (*inner = rx_ambiguous(n->kid[0], &n->kid[0]->first)) != NULL)
        return n;
    for (size_t i = 0; i < n->nkid; i++) {
        const rx_node_t *r = rx_find(n->kid[i], inner);
        if (r)
            return r;
    }
    return NULL;
}

static void check_backtracking(const cfg_route_t *r, diag_t *d)
{
    arena_t a;
    arena_init(&a, 0);
    const char *p = r->path.s;
    rx_parser_t ps = {p, 0, strlen(p), false, false, 0, &a};
    const rx_node_t *inner = NULL, *outer = rx_find(rx_alt(&ps), &inner);
    if (outer) {
        pos_t at = r->path.pos;
        at.col += (int)outer->at;
        diag_warning(d, at,
                     "path_regex may backtrack catastrophically (nested quantifier over %s'%.*s' in '%.*s'): a path "
                     "that nearly matches hits proxyd's match limit, and the route fails closed",
                     inner->kind == RX_ALT ? "alternatives that can match the same text, " : "",
                     (int)(inner->end - inner->at), p + inner->at, (int)(outer->end - outer->at), p + outer->at);
    }
    arena_free(&a);
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
            if (r->cache_zone.s && !rt_action_upstream(r->action))
                diag_error(d, r->cache_zone.pos, "cache stores an upstream's answers: this route has no upstream");
            check_zone(&r->rate_zone, "rate-limit", (const char *const *)rz, g->nrate_zones, d);
            if (r->match == RT_MATCH_REGEX)
                check_backtracking(r, d);
        }
        check_shadowed(s, d);
        if (s->cert_mode == RT_CERT_FILE)
            check_cert_files(s, d);
    }
    free(cz);
    free(rz);
}

/*
 * coding.c - content codings and Accept-Encoding negotiation (see coding.h).
 *
 * The field is a list of elements (RFC 9110 §5.6.1, §12.5.3):
 *   codings *( OWS ";" OWS parameter ), parameter = name "=" ( token / quoted-string )
 * of which only the parameter q (the weight, §12.4.2) means anything.  A
 * cursor walks the value once; an element it cannot read is skipped to the
 * next comma outside a quoted string, so one bad element costs nothing but
 * itself.
 */
#include "coding.h"

#include <stdbool.h>
#include <strings.h>

#include "str.h"

static const char *const names[CODING_COUNT] = {"identity", "gzip", "zstd", "br"};
static const char *const suffixes[CODING_COUNT] = {"", ".gz", ".zst", ".br"};

const char *coding_name(enum coding c)
{
    return (unsigned)c < CODING_COUNT ? names[c] : "identity";
}
const char *coding_suffix(enum coding c)
{
    return (unsigned)c < CODING_COUNT ? suffixes[c] : "";
}

unsigned coding_site_offered(const rt_site_t *s)
{
    return ((s->flags & RT_SF_GZIP) ? CODING_BIT(CODING_GZIP) : 0) |
           ((s->flags & RT_SF_ZSTD) ? CODING_BIT(CODING_ZSTD) : 0) |
           ((s->flags & RT_SF_BROTLI) ? CODING_BIT(CODING_BR) : 0);
}

void coding_accept_init(coding_accept_t *a)
{
    for (unsigned i = 0; i < CODING_COUNT; i++)
        a->q[i] = -1;
    a->star = -1;
    a->fields = 0;
}

typedef struct {
    const char *p, *end;
} cur_t;

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static void skip_ows(cur_t *c)
{
    while (c->p < c->end && is_ows(*c->p))
        c->p++;
}

static size_t take_token(cur_t *c)
{
    const char *s = c->p;
    while (c->p < c->end && str_is_tchar((unsigned char)*c->p))
        c->p++;
    return (size_t)(c->p - s);
}

/* A quoted-string starting at c->p ('"'); false when it does not end. */
static bool take_quoted(cur_t *c)
{
    for (c->p++; c->p < c->end; c->p++) {
        if (*c->p == '\\' && c->p + 1 < c->end)
            c->p++;
        else if (*c->p == '"') {
            c->p++;
            return true;
        }
    }
    return false;
}

/* Past the next comma that is not inside a quoted string (or to the end). */
static void skip_element(cur_t *c)
{
    while (c->p < c->end && *c->p != ',') {
        if (*c->p == '"')
            take_quoted(c);
        else
            c->p++;
    }
}

/* qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] ): thousandths, or -1. */
static int qvalue(const char *p, size_t n)
{
    if (n == 0 || (p[0] != '0' && p[0] != '1') || n > 5 || (n > 1 && p[1] != '.'))
        return -1;
    int v = (p[0] - '0') * 1000, scale = 100;
    for (size_t i = 2; i < n; i++, scale /= 10) {
        if (p[i] < '0' || p[i] > '9' || (p[0] == '1' && p[i] != '0'))
            return -1;
        v += (p[i] - '0') * scale;
    }
    return v;
}

/* The parameters after a coding: its weight (1000 when none), or -1 when
 * one of them cannot be read. */
static int params(cur_t *c)
{
    int q = CODING_WEIGHT_MAX;
    for (;;) {
        skip_ows(c);
        if (c->p == c->end || *c->p == ',')
            return q;
        if (*c->p != ';')
            return -1;
        c->p++;
        skip_ows(c);
        const char *name = c->p;
        size_t nlen = take_token(c);
        if (nlen == 0)
            continue; /* "gzip;" or "gzip; ;q=1": an empty parameter */
        if (c->p == c->end || *c->p != '=')
            return -1;
        c->p++;
        const char *val = c->p;
        if (c->p < c->end && *c->p == '"') {
            if (!take_quoted(c))
                return -1;
        } else if (take_token(c) == 0) {
            return -1;
        }
        if (nlen == 1 && (name[0] == 'q' || name[0] == 'Q') && (q = qvalue(val, (size_t)(c->p - val))) < 0)
            return -1;
    }
}

/* The coding a token names: CODING_COUNT for "*", -1 for one we do not know. */
static int coding_of(const char *p, size_t n)
{
    if (n == 1 && p[0] == '*')
        return CODING_COUNT;
    if (n == 6 && strncasecmp(p, "x-gzip", 6) == 0)
        return CODING_GZIP;
    for (int i = 0; i < CODING_COUNT; i++)
        if (strlen(names[i]) == n && strncasecmp(p, names[i], n) == 0)
            return i;
    return -1;
}

void coding_accept_parse(coding_accept_t *a, const char *p, size_t n)
{
    cur_t c = {p, p + n};
    if (a->fields < UINT8_MAX)
        a->fields++;
    while (c.p < c.end) {
        while (c.p < c.end && (*c.p == ',' || is_ows(*c.p)))
            c.p++;
        const char *tok = c.p;
        size_t tlen = take_token(&c);
        if (tlen == 0) {
            skip_element(&c);
            continue;
        }
        int q = params(&c);
        if (q < 0) {
            skip_element(&c);
            continue;
        }
        int which = coding_of(tok, tlen);
        int16_t *slot = which < 0 ? NULL : which == CODING_COUNT ? &a->star : &a->q[which];
        if (slot && *slot < 0) /* the first weight given counts */
            *slot = (int16_t)q;
    }
}

unsigned coding_weight(const coding_accept_t *a, enum coding c)
{
    if ((unsigned)c >= CODING_COUNT)
        return 0;
    if (a->q[c] >= 0)
        return (unsigned)a->q[c];
    if (a->star >= 0)
        return (unsigned)a->star;
    return c == CODING_IDENTITY ? CODING_WEIGHT_MAX : 0;
}

enum coding coding_choose(const coding_accept_t *a, unsigned offered)
{
    enum coding best = CODING_IDENTITY;
    unsigned best_q = 0;
    if (a->fields == 0)
        return CODING_IDENTITY;
    /* Best last in the enum: walking down, a tie keeps the better coding. */
    for (int c = CODING_COUNT - 1; c > CODING_IDENTITY; c--) {
        unsigned q = (offered & CODING_BIT(c)) ? coding_weight(a, (enum coding)c) : 0;
        if (q > best_q) {
            best = (enum coding)c;
            best_q = q;
        }
    }
    /* An identity the field does not name is acceptable but has no weight
     * to compete with (§12.5.3): only a named one can win over a coding. */
    int id_q = a->q[CODING_IDENTITY] >= 0 ? a->q[CODING_IDENTITY] : a->star;
    return best_q > 0 && (int)best_q >= id_q ? best : CODING_IDENTITY;
}

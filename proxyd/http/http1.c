/*
 * http1.c - HTTP/1.1 request/response head parsers and chunked decoder
 * (see http1.h for the API and its invariants).
 *
 * The head parsers make one forward pass over buf[0..end), where end is
 * buf + min(len, max_header_size): nothing past the size limit is ever read,
 * and every check is made at the byte that decides it, so a prefix of the
 * input gives either 0 ("need more") or the same verdict as the whole.  Each
 * step returns 1 (done, cursor advanced), 0 (ran into `end`) or -1 (refused,
 * m->status and m->error set).  Field semantics (Content-Length, Host, ...)
 * are checked as each field line completes; framing rules that involve
 * several fields are checked once the empty line is seen.
 *
 * The chunked decoder is a byte-level state machine whose whole state lives
 * in h1_chunked_t, so input may be split anywhere; only chunk data is handed
 * out in bulk, as slices of the caller's input.
 */
#include "http/http1.h"

#include <limits.h>
#include <string.h>

#include "../common/str.h"

#define PARSE_MORE 0
#define PARSE_OK 1
#define PARSE_ERR (-1)

/* Working state of one head parse, shared by requests and responses. */
typedef struct {
    const char *p, *end; /* cursor and scan limit */
    h1_header_t *hdr;
    size_t nhdr, max_hdr;
    bool request;
    int status;
    const char *error;
    /* gathered from the field lines */
    int64_t clen;        /* -1: no Content-Length */
    bool te_seen, te_last_chunked, te_unknown;
    unsigned te_chunked; /* times "chunked" was listed */
    unsigned conn;       /* H1_CONN_* */
    unsigned nhost;
    h1_slice_t host;
    bool upgrade_seen, ws_token, expect_continue;
    h1_slice_t upgrade_val;
} msg_t;

/* ---- character classes (RFC 9110 §5.6.2, RFC 3986 §2) ------------------ */

static bool is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static bool is_alnum(unsigned char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/*
 * Byte classes of the hot loops, one table lookup each:
 *   CT_TCHAR   token characters (RFC 9110 §5.6.2): field names, methods
 *   CT_OWS     SP and HTAB
 *   CT_FVCHAR  visible field-value bytes: VCHAR and obs-text (RFC 9110 §5.5)
 *   CT_TARGET  request-target bytes (is_target_char below)
 */
enum { CT_TCHAR = 1, CT_OWS = 2, CT_FVCHAR = 4, CT_TARGET = 8 };

static const uint8_t ctype[256] = {
     0,  0,  0,  0,  0,  0,  0,  0,  0,  2,  0,  0,  0,  0,  0,  0,  /* 0x00 */
     0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  /* 0x10 */
     2, 13,  4,  5, 13, 13, 13, 13, 12, 12, 13, 13, 12, 13, 13, 12,  /* 0x20 */
    13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 12, 12,  4, 12,  4, 12,  /* 0x30 */
    12, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13,  /* 0x40 */
    13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 12,  4, 12, 13, 13,  /* 0x50 */
    13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13,  /* 0x60 */
    13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 12, 13, 12, 13,  0,  /* 0x70 */
     4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  /* 0x80 */
     4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  /* 0x90 */
     4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  /* 0xA0 */
     4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  /* 0xB0 */
     4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  /* 0xC0 */
     4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  /* 0xD0 */
     4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  /* 0xE0 */
     4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  /* 0xF0 */
};

static bool is_tchar(unsigned char c) { return ctype[c] & CT_TCHAR; }

static bool is_ows(unsigned char c) { return ctype[c] & CT_OWS; }

/* CTLs other than HTAB, and DEL, are never allowed in a field value (RFC
 * 9110 §5.5); obs-text (0x80-0xFF) is. */
static bool is_bad_ctl(unsigned char c) { return !(ctype[c] & (CT_FVCHAR | CT_OWS)); }

/*
 * Request-target bytes: RFC 3986 unreserved, sub-delims, ":@/?%", plus
 * "[]{}|^`", which browsers send unescaped (WHATWG URL percent-encode sets)
 * and which carry no delimiting meaning here.  Refused: CTLs, SP, DEL,
 * non-ASCII, '"', '<', '>', '\' and '#' (a fragment is never sent, RFC 9112
 * §3.2).
 */
static bool is_target_char(unsigned char c) { return ctype[c] & CT_TARGET; }

static bool is_sub_delim(unsigned char c)
{
    switch (c) {
    case '!': case '$': case '&': case '\'': case '(': case ')':
    case '*': case '+': case ',': case ';': case '=':
        return true;
    default:
        return false;
    }
}

static bool is_unreserved(unsigned char c)
{
    return is_alnum(c) || c == '-' || c == '.' || c == '_' || c == '~';
}

/* Case-insensitive comparison of a slice with a lowercase literal. */
static bool ieq(h1_slice_t s, const char *lit, size_t n)
{
    if (s.n != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (str_lower_char((unsigned char)s.p[i]) != (unsigned char)lit[i])
            return false;
    return true;
}

#define IEQ(s, lit) ieq((s), (lit), sizeof(lit) - 1)

static bool slice_ieq(h1_slice_t a, h1_slice_t b)
{
    if (a.n != b.n)
        return false;
    for (size_t i = 0; i < a.n; i++)
        if (str_lower_char((unsigned char)a.p[i]) != str_lower_char((unsigned char)b.p[i]))
            return false;
    return true;
}

static bool is_token(h1_slice_t s)
{
    if (s.n == 0)
        return false;
    for (size_t i = 0; i < s.n; i++)
        if (!is_tchar((unsigned char)s.p[i]))
            return false;
    return true;
}

/*
 * Next element of a comma-separated list (RFC 9110 §5.6.1), OWS trimmed.
 * Empty elements are returned too (callers skip them, as the RFC asks).
 * *pp is the cursor; it becomes NULL after the last element.
 */
static bool list_next(const char **pp, const char *end, h1_slice_t *e)
{
    const char *p = *pp;
    if (p == NULL)
        return false;
    const char *comma = memchr(p, ',', (size_t)(end - p));
    const char *q = comma ? comma : end;
    while (p < q && is_ows((unsigned char)*p))
        p++;
    while (q > p && is_ows((unsigned char)q[-1]))
        q--;
    e->p = p;
    e->n = (size_t)(q - p);
    *pp = comma ? comma + 1 : NULL;
    return true;
}

static int fail(msg_t *m, int status, const char *why)
{
    m->status = status;
    m->error = why;
    return PARSE_ERR;
}

/* ---- lookups ------------------------------------------------------------ */

static h1_method_t method_id(h1_slice_t m)
{
    static const struct {
        const char *s;
        size_t n;
        h1_method_t id;
    } tab[] = {
        {"GET", 3, H1_METHOD_GET},         {"HEAD", 4, H1_METHOD_HEAD},
        {"POST", 4, H1_METHOD_POST},       {"PUT", 3, H1_METHOD_PUT},
        {"DELETE", 6, H1_METHOD_DELETE},   {"PATCH", 5, H1_METHOD_PATCH},
        {"OPTIONS", 7, H1_METHOD_OPTIONS}, {"CONNECT", 7, H1_METHOD_CONNECT},
        {"TRACE", 5, H1_METHOD_TRACE},
    };
    /* Methods are case-sensitive (RFC 9110 §9.1). */
    for (size_t i = 0; i < sizeof(tab) / sizeof(tab[0]); i++)
        if (m.n == tab[i].n && memcmp(m.p, tab[i].s, m.n) == 0)
            return tab[i].id;
    return H1_METHOD_OTHER;
}

static h1_hdr_id_t header_id(h1_slice_t name)
{
    static const struct {
        const char *s;
        size_t n;
        h1_hdr_id_t id;
    } tab[] = {
        {"host", 4, H1_HDR_HOST},
        {"content-length", 14, H1_HDR_CONTENT_LENGTH},
        {"transfer-encoding", 17, H1_HDR_TRANSFER_ENCODING},
        {"connection", 10, H1_HDR_CONNECTION},
        {"keep-alive", 10, H1_HDR_KEEP_ALIVE},
        {"proxy-connection", 16, H1_HDR_PROXY_CONNECTION},
        {"te", 2, H1_HDR_TE},
        {"upgrade", 7, H1_HDR_UPGRADE},
        {"trailer", 7, H1_HDR_TRAILER},
        {"expect", 6, H1_HDR_EXPECT},
        {"user-agent", 10, H1_HDR_USER_AGENT},
        {"referer", 7, H1_HDR_REFERER},
        {"server", 6, H1_HDR_SERVER},
        {"date", 4, H1_HDR_DATE},
        {"x-forwarded-for", 15, H1_HDR_X_FORWARDED_FOR},
        {"x-real-ip", 9, H1_HDR_X_REAL_IP},
        {"x-forwarded-proto", 17, H1_HDR_X_FORWARDED_PROTO},
        {"x-forwarded-host", 16, H1_HDR_X_FORWARDED_HOST},
        {"x-forwarded-port", 16, H1_HDR_X_FORWARDED_PORT},
    };
    unsigned char c0 = (unsigned char)str_lower_char((unsigned char)name.p[0]); /* names are never empty */
    for (size_t i = 0; i < sizeof(tab) / sizeof(tab[0]); i++)
        if (tab[i].n == name.n && (unsigned char)tab[i].s[0] == c0 && ieq(name, tab[i].s, tab[i].n))
            return tab[i].id;
    return H1_HDR_OTHER;
}

/* Fields that are hop-by-hop whatever Connection says (RFC 9110 §7.6.1). */
static bool always_hop(h1_hdr_id_t id)
{
    switch (id) {
    case H1_HDR_CONNECTION: case H1_HDR_KEEP_ALIVE: case H1_HDR_PROXY_CONNECTION:
    case H1_HDR_TE: case H1_HDR_TRANSFER_ENCODING: case H1_HDR_UPGRADE:
        return true;
    default:
        return false;
    }
}

const h1_header_t *h1_find_header(const h1_header_t *h, size_t n, h1_hdr_id_t id)
{
    for (size_t i = 0; i < n; i++)
        if (h[i].id == id)
            return &h[i];
    return NULL;
}

/* ---- authority (RFC 3986 §3.2) ------------------------------------------ */

static bool valid_port(const char *p, size_t n, bool need_port)
{
    if (n == 0)
        return !need_port;
    if (n > 5)
        return false;
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!is_digit((unsigned char)p[i]))
            return false;
        v = v * 10 + (unsigned)(p[i] - '0');
    }
    return v <= 65535;
}

/* Length of a host (reg-name or IP-literal) at p[0..n), or -1 if invalid. */
static long host_len(const char *p, size_t n)
{
    size_t i = 0;
    if (n > 0 && p[0] == '[') {
        for (i = 1; i < n && p[i] != ']'; i++) {
            unsigned char c = (unsigned char)p[i];
            if (!is_unreserved(c) && !is_sub_delim(c) && c != ':' && c != '%')
                return -1;
        }
        return (i == n || i == 1) ? -1 : (long)i + 1;
    }
    for (; i < n && p[i] != ':'; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '%') {
            if (i + 2 >= n || str_hexval((unsigned char)p[i + 1]) < 0 ||
                str_hexval((unsigned char)p[i + 2]) < 0)
                return -1;
            i += 2;
        } else if (!is_unreserved(c) && !is_sub_delim(c)) {
            return -1;
        }
    }
    return (long)i;
}

/* uri-host [":" port]; userinfo ("@") is refused (RFC 9110 §4.2.4). */
static bool valid_authority(h1_slice_t a, bool need_host, bool need_port)
{
    long h = host_len(a.p, a.n);
    if (h < 0 || (h == 0 && need_host))
        return false;
    size_t i = (size_t)h;
    if (i == a.n)
        return !need_port;
    if (a.p[i] != ':')
        return false;
    return valid_port(a.p + i + 1, a.n - i - 1, need_port);
}

/* ---- field lines (RFC 9112 §5) ------------------------------------------ */

/* field-name ":" OWS field-value OWS CRLF, at m->p (not an empty line). */
static int parse_field_line(msg_t *m, h1_header_t *h)
{
    const char *s = m->p;
    while (m->p < m->end && is_tchar((unsigned char)*m->p))
        m->p++;
    if (m->p == m->end)
        return PARSE_MORE;
    if (*m->p != ':') {
        unsigned char c = (unsigned char)*m->p;
        if (m->p == s && is_ows(c)) /* RFC 9112 §5.2, §2.2 */
            return fail(m, 400, m->nhdr ? "obs-fold in header" : "whitespace before first header");
        if (is_ows(c)) /* RFC 9112 §5.1 */
            return fail(m, 400, "whitespace between field name and colon");
        if (c == '\n')
            return fail(m, 400, "bare LF in header");
        if (c == '\r')
            return fail(m, 400, "header line without colon");
        return fail(m, 400, "invalid character in field name");
    }
    if (m->p == s)
        return fail(m, 400, "empty field name");
    h->name.p = s;
    h->name.n = (size_t)(m->p - s);
    m->p++;
    while (m->p < m->end && is_ows((unsigned char)*m->p))
        m->p++;
    const char *v = m->p, *last = m->p, *p = m->p, *end = m->end;
    for (;;) { /* a run of visible bytes, then one other byte */
        const char *run = p;
        while (p < end && (ctype[(unsigned char)*p] & CT_FVCHAR))
            p++;
        if (p > run)
            last = p;
        if (p == end || *p == '\r' || !is_ows((unsigned char)*p))
            break;
        p++;
    }
    m->p = p;
    if (p < end && *p == '\n')
        return fail(m, 400, "bare LF in header");
    if (p < end && *p != '\r')
        return fail(m, 400, "control character in field value");
    if (m->end - m->p < 2)
        return PARSE_MORE;
    if (m->p[1] != '\n')
        return fail(m, 400, "bare CR in header");
    h->value.p = v;
    h->value.n = (size_t)(last - v);
    m->p += 2;
    return PARSE_OK;
}

/* Content-Length = 1*DIGIT, or a list of identical values (RFC 9110 §8.6). */
static int note_content_length(msg_t *m, h1_slice_t v)
{
    const char *p = v.p, *end = v.p + v.n;
    h1_slice_t e;
    while (list_next(&p, end, &e)) {
        int64_t n = 0;
        if (e.n == 0)
            return fail(m, 400, "invalid Content-Length");
        for (size_t i = 0; i < e.n; i++) {
            unsigned char c = (unsigned char)e.p[i];
            if (!is_digit(c))
                return fail(m, 400, "invalid Content-Length");
            if (n > (INT64_MAX - (c - '0')) / 10)
                return fail(m, 400, "Content-Length overflow");
            n = n * 10 + (c - '0');
        }
        if (m->clen >= 0 && m->clen != n)
            return fail(m, 400, "conflicting Content-Length");
        m->clen = n;
    }
    return PARSE_OK;
}

/* Remember the coding list; it is judged as a whole in check_framing(). */
static void note_transfer_encoding(msg_t *m, h1_slice_t v)
{
    const char *p = v.p, *end = v.p + v.n;
    h1_slice_t e;
    m->te_seen = true;
    while (list_next(&p, end, &e)) {
        if (e.n == 0)
            continue;
        if (IEQ(e, "chunked")) {
            m->te_chunked++;
            m->te_last_chunked = true;
        } else {
            m->te_unknown = true;
            m->te_last_chunked = false;
        }
    }
}

static int note_connection(msg_t *m, h1_slice_t v)
{
    const char *p = v.p, *end = v.p + v.n;
    h1_slice_t e;
    while (list_next(&p, end, &e)) {
        if (e.n == 0)
            continue;
        if (!is_token(e))
            return fail(m, 400, "invalid Connection option");
        if (IEQ(e, "close"))
            m->conn |= H1_CONN_CLOSE;
        else if (IEQ(e, "keep-alive"))
            m->conn |= H1_CONN_KEEP_ALIVE;
        else if (IEQ(e, "upgrade"))
            m->conn |= H1_CONN_UPGRADE;
    }
    return PARSE_OK;
}

/* Upgrade = #protocol, protocol = name ["/" version] (RFC 9110 §7.8). */
static void note_upgrade(msg_t *m, h1_slice_t v)
{
    const char *p = v.p, *end = v.p + v.n;
    h1_slice_t e;
    m->upgrade_seen = true;
    m->upgrade_val = v;
    while (list_next(&p, end, &e)) {
        const char *slash = e.n ? memchr(e.p, '/', e.n) : NULL;
        if (slash)
            e.n = (size_t)(slash - e.p);
        if (IEQ(e, "websocket"))
            m->ws_token = true;
    }
}

static void note_expect(msg_t *m, h1_slice_t v)
{
    const char *p = v.p, *end = v.p + v.n;
    h1_slice_t e;
    while (list_next(&p, end, &e))
        if (IEQ(e, "100-continue"))
            m->expect_continue = true;
}

static int note_field(msg_t *m, h1_header_t *h)
{
    h->id = (uint8_t)header_id(h->name);
    h->hop = always_hop((h1_hdr_id_t)h->id);
    switch (h->id) {
    case H1_HDR_HOST:
        if (!m->request)
            return PARSE_OK;
        if (++m->nhost > 1) /* RFC 9112 §3.2 */
            return fail(m, 400, "more than one Host");
        if (!valid_authority(h->value, false, false))
            return fail(m, 400, "invalid Host");
        m->host = h->value;
        return PARSE_OK;
    case H1_HDR_CONTENT_LENGTH:
        return note_content_length(m, h->value);
    case H1_HDR_TRANSFER_ENCODING:
        note_transfer_encoding(m, h->value);
        return PARSE_OK;
    case H1_HDR_CONNECTION:
        return note_connection(m, h->value);
    case H1_HDR_UPGRADE:
        note_upgrade(m, h->value);
        return PARSE_OK;
    case H1_HDR_EXPECT:
        note_expect(m, h->value);
        return PARSE_OK;
    default:
        return PARSE_OK;
    }
}

/* *( field-line CRLF ) CRLF */
static int parse_fields(msg_t *m)
{
    for (;;) {
        if (m->p == m->end)
            return PARSE_MORE;
        if (*m->p == '\r') {
            if (m->end - m->p < 2)
                return PARSE_MORE;
            if (m->p[1] != '\n')
                return fail(m, 400, "bare CR in header");
            m->p += 2;
            return PARSE_OK;
        }
        if (m->nhdr == m->max_hdr)
            return fail(m, 431, "too many header fields");
        int r = parse_field_line(m, &m->hdr[m->nhdr]);
        if (r != PARSE_OK)
            return r;
        m->nhdr++;
        if (note_field(m, &m->hdr[m->nhdr - 1]) < 0)
            return PARSE_ERR;
    }
}

/*
 * Message framing (RFC 9112 §6.1, §6.3).  Only "chunked" is implemented: a
 * final coding other than chunked is a 400 (§6.3 item 4: the length cannot be
 * determined), any other coding before it a 501 (§6.1).
 */
static int check_framing(msg_t *m, int minor)
{
    if (!m->te_seen)
        return PARSE_OK;
    if (m->clen >= 0) /* §6.3 item 3: a smuggling vector, always refused */
        return fail(m, 400, "Content-Length with Transfer-Encoding");
    if (minor == 0) /* §6.1: faulty framing from an HTTP/1.0 peer */
        return fail(m, 400, "Transfer-Encoding in HTTP/1.0");
    if (!m->te_last_chunked)
        return fail(m, 400, "final transfer coding is not chunked");
    if (m->te_chunked > 1) /* §7: chunked must not be applied twice */
        return fail(m, 400, "chunked applied more than once");
    if (m->te_unknown)
        return fail(m, 501, "unsupported transfer coding");
    return PARSE_OK;
}

/* Mark the fields named by Connection options as hop-by-hop.  Host and
 * Content-Length are never dropped that way: the proxy relies on them. */
static void mark_connection_options(h1_header_t *h, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (h[i].id != H1_HDR_CONNECTION)
            continue;
        const char *p = h[i].value.p, *end = p + h[i].value.n;
        h1_slice_t e;
        while (list_next(&p, end, &e)) {
            for (size_t j = 0; e.n && j < n; j++)
                if (h[j].id != H1_HDR_HOST && h[j].id != H1_HDR_CONTENT_LENGTH &&
                    slice_ieq(h[j].name, e))
                    h[j].hop = true;
        }
    }
}

static bool keep_alive(unsigned conn, int minor)
{
    if (conn & H1_CONN_CLOSE)
        return false;
    return minor == 1 || (conn & H1_CONN_KEEP_ALIVE); /* RFC 9112 §9.3 */
}

/* ---- shared driver ------------------------------------------------------ */

static void msg_init(msg_t *m, const char *buf, size_t len, const h1_limits_t *lim,
                     h1_header_t *hdr, bool request)
{
    size_t max = lim->max_header_size < INT_MAX ? lim->max_header_size : INT_MAX;
    memset(m, 0, sizeof(*m));
    m->p = buf;
    m->end = len ? buf + (len < max ? len : max) : buf;
    m->hdr = hdr;
    m->max_hdr = lim->max_headers < H1_HEADERS_CAP ? lim->max_headers : H1_HEADERS_CAP;
    m->request = request;
    m->clen = -1;
}

static int conclude(msg_t *m, int r, const char *buf, size_t len, const h1_limits_t *lim)
{
    if (r == PARSE_OK)
        return (int)(m->p - buf);
    if (r == PARSE_MORE && len > lim->max_header_size)
        r = fail(m, 431, "header section too large");
    return r;
}

/* ---- requests (RFC 9112 §3) ---------------------------------------------- */

/* RFC 9112 §2.2: ignore a few empty lines before the request-line. */
static int skip_leading_crlf(msg_t *m)
{
    for (int i = 0;; i++) {
        if (m->p == m->end)
            return PARSE_MORE;
        if (*m->p == '\n')
            return fail(m, 400, "bare LF in request line");
        if (*m->p != '\r')
            return PARSE_OK;
        if (i == H1_MAX_LEADING_CRLF)
            return fail(m, 400, "too many empty lines before request");
        if (m->end - m->p < 2)
            return PARSE_MORE;
        if (m->p[1] != '\n')
            return fail(m, 400, "bare CR in request line");
        m->p += 2;
    }
}

static int parse_method(msg_t *m, h1_request_t *req)
{
    const char *s = m->p;
    while (m->p < m->end && is_tchar((unsigned char)*m->p))
        m->p++;
    if (m->p == m->end)
        return PARSE_MORE;
    if (*m->p != ' ' || m->p == s)
        return fail(m, 400, "invalid character in method");
    req->method.p = s;
    req->method.n = (size_t)(m->p - s);
    req->method_id = method_id(req->method);
    m->p++;
    return PARSE_OK;
}

/* The request-target up to its SP; its length is checked at every byte so
 * that an endless target is refused with 414 as soon as it is too long. */
static int parse_target(msg_t *m, h1_request_t *req, size_t max_uri)
{
    const char *s = m->p;
    for (;;) {
        if ((size_t)(m->p - s) > max_uri)
            return fail(m, 414, "request-target too long");
        if (m->p == m->end)
            return PARSE_MORE;
        unsigned char c = (unsigned char)*m->p;
        if (c == ' ')
            break;
        if (c == '%') {
            if (m->end - m->p < 3)
                return PARSE_MORE;
            if (str_hexval((unsigned char)m->p[1]) < 0 || str_hexval((unsigned char)m->p[2]) < 0)
                return fail(m, 400, "invalid percent-encoding in request-target");
            m->p += 3;
            continue;
        }
        if (c == '\r' || c == '\n')
            return fail(m, 400, "missing HTTP version");
        if (!is_target_char(c))
            return fail(m, 400, "invalid character in request-target");
        m->p++;
    }
    if (m->p == s)
        return fail(m, 400, "empty request-target");
    req->target.p = s;
    req->target.n = (size_t)(m->p - s);
    m->p++;
    return PARSE_OK;
}

/* "/path?query" at p[0..n) into path and query. */
static void split_path(h1_request_t *req, const char *p, size_t n)
{
    const char *q = n ? memchr(p, '?', n) : NULL;
    req->path.p = p;
    req->path.n = q ? (size_t)(q - p) : n;
    if (q) {
        req->query.p = q + 1;
        req->query.n = n - req->path.n - 1;
    }
}

/* absolute-form: "http" / "https" "://" authority [path-abempty] ["?" query] */
static int parse_absolute_form(msg_t *m, h1_request_t *req)
{
    const char *t = req->target.p, *end = t + req->target.n;
    const char *colon = memchr(t, ':', req->target.n);
    h1_slice_t scheme = {t, colon ? (size_t)(colon - t) : 0};
    if (!colon || !(IEQ(scheme, "http") || IEQ(scheme, "https")))
        return fail(m, 400, "invalid request-target");
    if (end - colon < 3 || colon[1] != '/' || colon[2] != '/')
        return fail(m, 400, "invalid request-target");
    const char *a = colon + 3, *ae = a;
    while (ae < end && *ae != '/' && *ae != '?')
        ae++;
    h1_slice_t auth = {a, (size_t)(ae - a)};
    /* RFC 9110 §4.2.1: an http(s) URI with an empty host is invalid. */
    if (!valid_authority(auth, true, false))
        return fail(m, 400, "invalid authority in request-target");
    req->form = H1_FORM_ABSOLUTE;
    req->scheme = scheme;
    req->host = auth;
    split_path(req, ae, (size_t)(end - ae));
    if (req->path.n == 0) {
        req->path.p = "/";
        req->path.n = 1;
    }
    return PARSE_OK;
}

/* RFC 9112 §3.2: which target forms each method may use. */
static int classify_target(msg_t *m, h1_request_t *req)
{
    h1_slice_t t = req->target;
    if (req->method_id == H1_METHOD_CONNECT) {
        if (!valid_authority(t, true, true))
            return fail(m, 400, "CONNECT needs authority-form target");
        req->form = H1_FORM_AUTHORITY;
        req->host = t;
        return PARSE_OK;
    }
    if (t.p[0] == '/') {
        req->form = H1_FORM_ORIGIN;
        split_path(req, t.p, t.n);
        return PARSE_OK;
    }
    if (t.n == 1 && t.p[0] == '*') {
        if (req->method_id != H1_METHOD_OPTIONS)
            return fail(m, 400, "asterisk-form target outside OPTIONS");
        req->form = H1_FORM_ASTERISK;
        req->path = t;
        return PARSE_OK;
    }
    return parse_absolute_form(m, req);
}

/* HTTP-version = "HTTP/" DIGIT "." DIGIT (case-sensitive, RFC 9112 §2.3). */
static int parse_version(msg_t *m, int *minor)
{
    if (m->end - m->p < 8)
        return PARSE_MORE;
    const char *v = m->p;
    if (memcmp(v, "HTTP/", 5) != 0 || !is_digit((unsigned char)v[5]) || v[6] != '.' ||
        !is_digit((unsigned char)v[7]))
        return fail(m, 400, "invalid HTTP version");
    if (v[5] != '1' || (v[7] != '0' && v[7] != '1'))
        return fail(m, 505, "HTTP version not supported");
    *minor = v[7] - '0';
    m->p += 8;
    return PARSE_OK;
}

static int expect_crlf(msg_t *m, const char *what)
{
    if (m->p == m->end)
        return PARSE_MORE;
    if (*m->p == '\n')
        return fail(m, 400, "bare LF in start line");
    if (*m->p != '\r')
        return fail(m, 400, what);
    if (m->end - m->p < 2)
        return PARSE_MORE;
    if (m->p[1] != '\n')
        return fail(m, 400, "bare CR in start line");
    m->p += 2;
    return PARSE_OK;
}

/* request-line = method SP request-target SP HTTP-version CRLF */
static int parse_request_line(msg_t *m, h1_request_t *req, const h1_limits_t *lim)
{
    int r = skip_leading_crlf(m);
    if (r == PARSE_OK)
        r = parse_method(m, req);
    if (r == PARSE_OK)
        r = parse_target(m, req, lim->max_uri_size);
    if (r == PARSE_OK)
        r = classify_target(m, req);
    if (r == PARSE_OK)
        r = parse_version(m, &req->minor);
    if (r == PARSE_OK)
        r = expect_crlf(m, "invalid request line");
    return r;
}

static int finish_request(msg_t *m, h1_request_t *req)
{
    if (check_framing(m, req->minor) < 0)
        return PARSE_ERR;
    if (m->nhost == 0 && req->minor == 1) /* RFC 9112 §3.2 */
        return fail(m, 400, "missing Host");
    req->nheaders = m->nhdr;
    req->content_length = m->clen;
    req->chunked = m->te_seen;
    req->conn_flags = m->conn;
    req->keep_alive = keep_alive(m->conn, req->minor);
    /* RFC 9112 §3.2.2: the target's authority overrides Host. */
    if (req->form == H1_FORM_ORIGIN || req->form == H1_FORM_ASTERISK)
        req->host = m->host;
    req->upgrade = (m->conn & H1_CONN_UPGRADE) && m->upgrade_seen;
    req->upgrade_proto = m->upgrade_val;
    req->websocket = req->upgrade && m->ws_token && req->minor == 1 &&
                     req->method_id == H1_METHOD_GET;
    /* RFC 9110 §10.1.1: 100-continue from an HTTP/1.0 client is ignored. */
    req->expect_continue = m->expect_continue && req->minor == 1;
    mark_connection_options(req->headers, req->nheaders);
    return PARSE_OK;
}

int h1_parse_request(const char *buf, size_t len, h1_request_t *req, const h1_limits_t *lim)
{
    static const h1_limits_t defaults = H1_LIMITS_DEFAULT;
    msg_t m;
    if (lim == NULL)
        lim = &defaults;
    msg_init(&m, buf, len, lim, req->headers, true);
    memset(req, 0, offsetof(h1_request_t, headers));
    req->content_length = -1;
    int r = parse_request_line(&m, req, lim);
    if (r == PARSE_OK)
        r = parse_fields(&m);
    if (r == PARSE_OK)
        r = finish_request(&m, req);
    r = conclude(&m, r, buf, len, lim);
    if (r < 0) {
        req->status = m.status;
        req->error = m.error;
    }
    return r;
}

/* ---- responses (RFC 9112 §4) --------------------------------------------- */

/* status-line = HTTP-version SP status-code SP [reason-phrase] CRLF.  The
 * "SP reason" part may be missing altogether: it carries no framing. */
static int parse_status_line(msg_t *m, h1_response_t *res)
{
    int r = parse_version(m, &res->minor);
    if (r != PARSE_OK)
        return r;
    if (m->end - m->p < 4)
        return PARSE_MORE;
    const char *s = m->p;
    if (s[0] != ' ' || !is_digit((unsigned char)s[1]) || !is_digit((unsigned char)s[2]) ||
        !is_digit((unsigned char)s[3]))
        return fail(m, 502, "invalid status line");
    res->status = (s[1] - '0') * 100 + (s[2] - '0') * 10 + (s[3] - '0');
    if (res->status < 100 || res->status > 599)
        return fail(m, 502, "invalid status code");
    m->p += 4;
    if (m->p < m->end && *m->p == ' ') {
        const char *rs = ++m->p;
        while (m->p < m->end && !is_bad_ctl((unsigned char)*m->p))
            m->p++;
        res->reason.p = rs;
        res->reason.n = (size_t)(m->p - rs);
    }
    return expect_crlf(m, "invalid status line");
}

static int finish_response(msg_t *m, h1_response_t *res)
{
    if (check_framing(m, res->minor) < 0)
        return PARSE_ERR;
    res->nheaders = m->nhdr;
    res->content_length = m->clen;
    res->chunked = m->te_seen;
    res->conn_flags = m->conn;
    res->keep_alive = keep_alive(m->conn, res->minor);
    mark_connection_options(res->headers, res->nheaders);
    return PARSE_OK;
}

int h1_parse_response(const char *buf, size_t len, h1_response_t *res, const h1_limits_t *lim)
{
    static const h1_limits_t defaults = H1_LIMITS_DEFAULT;
    msg_t m;
    if (lim == NULL)
        lim = &defaults;
    msg_init(&m, buf, len, lim, res->headers, false);
    memset(res, 0, offsetof(h1_response_t, headers));
    res->content_length = -1;
    int r = parse_status_line(&m, res);
    if (r == PARSE_OK)
        r = parse_fields(&m);
    if (r == PARSE_OK)
        r = finish_response(&m, res);
    r = conclude(&m, r, buf, len, lim);
    if (r < 0)
        res->error = m.error;
    return r;
}

h1_body_t h1_response_body(const h1_response_t *res, h1_method_t req_method)
{
    if (res->status == 101 || (req_method == H1_METHOD_CONNECT && res->status / 100 == 2))
        return H1_BODY_TUNNEL;
    if (req_method == H1_METHOD_HEAD || res->status < 200 || res->status == 204 ||
        res->status == 304)
        return H1_BODY_NONE;
    if (res->chunked)
        return H1_BODY_CHUNKED;
    if (res->content_length >= 0)
        return res->content_length ? H1_BODY_LENGTH : H1_BODY_NONE;
    return H1_BODY_CLOSE;
}

bool h1_head_ready(const char *buf, size_t len, size_t *scanned, size_t max)
{
    if (len > max)
        return true;
    for (size_t i = *scanned; i < len; i++) {
        bool ready = false;
        if (buf[i] == '\n')
            ready = i < 1 || buf[i - 1] != '\r' || (i >= 2 && buf[i - 2] == '\n');
        else if (buf[i] == '\r')
            ready = i + 1 < len && buf[i + 1] != '\n';
        if (ready) {
            *scanned = i + 1;
            return true;
        }
    }
    /* A CR at the very end is judged again with its successor. */
    *scanned = (len > 0 && buf[len - 1] == '\r') ? len - 1 : len;
    return false;
}

/* ---- chunked decoder (RFC 9112 §7.1) ------------------------------------- */

enum {
    CS_SIZE_START, /* first hex digit of chunk-size */
    CS_SIZE,       /* more hex digits */
    CS_SIZE_WS,    /* BWS before ";" */
    CS_EXT,        /* chunk-ext, skipped up to CR */
    CS_SIZE_LF,
    CS_DATA,
    CS_DATA_CR,
    CS_DATA_LF,
    CS_TR_START,   /* start of a trailer line, or the final empty line */
    CS_TR_NAME,
    CS_TR_VALUE,
    CS_TR_LF,
    CS_TR_END_LF,
    CS_DONE,
    CS_ERROR,
};

void h1_chunked_init(h1_chunked_t *st)
{
    memset(st, 0, sizeof(*st));
    st->state = CS_SIZE_START;
    st->max_line = 4096;
    st->max_trailer = 8192;
}

static int chunk_fail(h1_chunked_t *st, const char *why)
{
    st->state = CS_ERROR;
    st->error = why;
    return -1;
}

/* After the size digits: BWS, ";" ext, or CRLF. */
static int size_end(h1_chunked_t *st, unsigned char c)
{
    if (c == ';')
        st->state = CS_EXT;
    else if (is_ows(c))
        st->state = CS_SIZE_WS;
    else if (c == '\r')
        st->state = CS_SIZE_LF;
    else
        return chunk_fail(st, c == '\n' ? "bare LF in chunk size line" : "invalid chunk size");
    return 0;
}

/* chunk-size [chunk-ext] CRLF, and the CRLF after chunk data. */
static int size_byte(h1_chunked_t *st, unsigned char c)
{
    int h = str_hexval(c);
    if (st->state != CS_DATA_CR && st->state != CS_DATA_LF && ++st->line_len > st->max_line)
        return chunk_fail(st, "chunk size line too long");
    switch (st->state) {
    case CS_SIZE_START:
        if (h < 0)
            return chunk_fail(st, c == '\n' ? "bare LF in chunk size line" : "invalid chunk size");
        st->remain = (uint64_t)h;
        st->state = CS_SIZE;
        return 0;
    case CS_SIZE:
        if (h < 0)
            return size_end(st, c);
        if (st->remain > (H1_CHUNK_MAX_SIZE - (uint64_t)h) / 16)
            return chunk_fail(st, "chunk size overflow");
        st->remain = st->remain * 16 + (uint64_t)h;
        return 0;
    case CS_SIZE_WS:
        if (c == ';')
            st->state = CS_EXT;
        else if (!is_ows(c))
            return chunk_fail(st, "invalid chunk size");
        return 0;
    case CS_EXT:
        if (c == '\r')
            st->state = CS_SIZE_LF;
        else if (c == '\n')
            return chunk_fail(st, "bare LF in chunk extension");
        else if (is_bad_ctl(c))
            return chunk_fail(st, "control character in chunk extension");
        return 0;
    case CS_SIZE_LF:
        if (c != '\n')
            return chunk_fail(st, "bare CR in chunk size line");
        st->state = st->remain ? CS_DATA : CS_TR_START;
        st->line_len = 0;
        return 0;
    case CS_DATA_CR:
    case CS_DATA_LF:
        if (c != (st->state == CS_DATA_CR ? '\r' : '\n'))
            return chunk_fail(st, "missing CRLF after chunk data");
        st->state = st->state == CS_DATA_CR ? CS_DATA_LF : CS_SIZE_START;
        return 0;
    default:
        return chunk_fail(st, "internal: bad chunk state");
    }
}

/* trailer-section = *( field-line CRLF ) CRLF, validated like a header. */
static int trailer_byte(h1_chunked_t *st, unsigned char c)
{
    if (++st->line_len > st->max_trailer)
        return chunk_fail(st, "trailer section too large");
    switch (st->state) {
    case CS_TR_START:
        if (c == '\r')
            st->state = CS_TR_END_LF;
        else if (is_tchar(c))
            st->state = CS_TR_NAME;
        else if (c == '\n')
            return chunk_fail(st, "bare LF in trailer");
        else
            return chunk_fail(st, is_ows(c) ? "obs-fold in trailer" : "invalid trailer field name");
        return 0;
    case CS_TR_NAME:
        if (c == ':') {
            st->state = CS_TR_VALUE;
            st->ntrailers++;
        } else if (!is_tchar(c)) {
            return chunk_fail(st, is_ows(c) ? "whitespace before colon in trailer"
                                            : "invalid trailer field name");
        }
        return 0;
    case CS_TR_VALUE:
        if (c == '\r')
            st->state = CS_TR_LF;
        else if (c == '\n')
            return chunk_fail(st, "bare LF in trailer");
        else if (is_bad_ctl(c))
            return chunk_fail(st, "control character in trailer value");
        return 0;
    case CS_TR_LF:
    case CS_TR_END_LF:
        if (c != '\n')
            return chunk_fail(st, "bare CR in trailer");
        st->state = st->state == CS_TR_LF ? CS_TR_START : CS_DONE;
        return 0;
    default:
        return chunk_fail(st, "internal: bad chunk state");
    }
}

int h1_chunked_decode(h1_chunked_t *st, const char *in, size_t len, size_t *consumed,
                      h1_slice_t *data)
{
    size_t i = 0;
    data->p = NULL;
    data->n = 0;
    for (;;) {
        if (st->state == CS_DONE || st->state == CS_ERROR || i == len) {
            *consumed = i;
            if (st->state == CS_DONE)
                return H1_CHUNK_DONE;
            return st->state == CS_ERROR ? H1_CHUNK_ERROR : H1_CHUNK_MORE;
        }
        if (st->state == CS_DATA) {
            size_t n = st->remain < len - i ? (size_t)st->remain : len - i;
            data->p = in + i;
            data->n = n;
            st->remain -= n;
            st->total += n;
            if (st->remain == 0)
                st->state = CS_DATA_CR;
            *consumed = i + n;
            return H1_CHUNK_DATA;
        }
        unsigned char c = (unsigned char)in[i];
        int r = st->state >= CS_TR_START ? trailer_byte(st, c) : size_byte(st, c);
        if (r < 0) {
            *consumed = i;
            return H1_CHUNK_ERROR;
        }
        i++;
    }
}

/*
 * proxyproto.c - PROXY protocol v1/v2 header parser (see proxyproto.h).
 *
 * Both versions are read in one forward pass in which every check is made at
 * the byte that decides it and looks only at the bytes before it; that is
 * what makes a prefix answer 0 or the whole input's verdict, reason included.
 *
 * A v1 line (spec §2.1) is read as fields, each ended by exactly one space or,
 * for the last, the CR of the CRLF: "PROXY", the protocol, then for TCP4/TCP6
 * two addresses and two ports.  Each field byte is checked for its class and
 * the field's length as it comes, and the field is parsed whole at the byte
 * that ends it: IPv4 by hand, since the spec forbids leading zeros (octal
 * confusion); IPv6 by inet_pton on a NUL-terminated copy of at most 45 bytes.
 * Reading stops at PP_V1_MAX bytes, so a line without CRLF by then is refused.
 *
 * A v2 header (spec §2.2) is decided byte by byte through its 16-byte fixed
 * part; its length is known at byte 16, so an over-long header or a short
 * address block is refused before the body arrives.  TLVs are not read.
 */
#include "conn/proxyproto.h"

#include <arpa/inet.h>
#include <string.h>
#include <sys/socket.h>

#define NOT_PROXY "not a PROXY protocol header"

static long fail(const char **why, const char *reason)
{
    if (why != NULL)
        *why = reason;
    return -1;
}

/* ---- v1: "PROXY TCP4 <src> <dst> <sport> <dport>\r\n" ----------------------- */

/* A v1 parse: p[i] is the next byte; nothing at or past end = min(n, PP_V1_MAX) is read.
 * Steps return 1 (done, cursor moved), 0 (ran into end) or -1 (refused, why set). */
typedef struct {
    const uint8_t *p;
    size_t i, end, n;
    const char *why;
} v1_t;

enum { V1_ADDR4, V1_ADDR6, V1_PORT };

static int v1_err(v1_t *v, const char *why)
{
    v->why = why;
    return -1;
}

/* Ran into end: more may come, unless the line already fills PP_V1_MAX. */
static int v1_more(v1_t *v)
{
    return v->n < PP_V1_MAX ? 0 : v1_err(v, "v1 line longer than 107 bytes");
}

/* How the bytes at the cursor compare with s: 1 they start with it, 0 they are a proper prefix of it, -1 neither. */
static int v1_cmp(const v1_t *v, const char *s)
{
    for (size_t k = 0; s[k] != '\0'; k++) {
        if (v->i + k == v->end)
            return 0;
        if (v->p[v->i + k] != (uint8_t)s[k])
            return -1;
    }
    return 1;
}

/* The protocol field; *family 4, 6 or 0 (UNKNOWN). */
static int v1_proto(v1_t *v, uint8_t *family)
{
    static const struct {
        const char *name;
        uint8_t family;
    } tab[] = {{"TCP4", 4}, {"TCP6", 6}, {"UNKNOWN", 0}};
    bool live = false;
    for (size_t k = 0; k < sizeof(tab) / sizeof(tab[0]); k++) {
        int r = v1_cmp(v, tab[k].name);
        if (r > 0) {
            v->i += strlen(tab[k].name);
            *family = tab[k].family;
            return 1;
        }
        live |= r == 0;
    }
    return live ? v1_more(v) : v1_err(v, "bad v1 protocol");
}

/* The byte that ends a field: want is ' ' (another field follows) or '\r' (the line ends); bad names the field. */
static int v1_delim(v1_t *v, uint8_t want, const char *bad)
{
    if (v->i == v->end)
        return v1_more(v);
    uint8_t c = v->p[v->i];
    if (c == want) {
        v->i++;
        return 1;
    }
    if (c == '\n')
        return v1_err(v, "bare LF in v1 line");
    if (c == '\r')
        return v1_err(v, "v1 line has too few fields");
    if (c == ' ')
        return v1_err(v, "v1 line has too many fields");
    return v1_err(v, bad);
}

/* After the CR, the LF: the spec forbids ending the line with either alone. */
static int v1_lf(v1_t *v)
{
    if (v->i == v->end)
        return v1_more(v);
    if (v->p[v->i] != '\n')
        return v1_err(v, "bare CR in v1 line");
    v->i++;
    return 1;
}

static bool v1_field_char(int kind, uint8_t c)
{
    if (c >= '0' && c <= '9')
        return true;
    switch (kind) {
    case V1_ADDR4: return c == '.';
    case V1_ADDR6: return c == '.' || c == ':' || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f');
    default: return false;
    }
}

/* Scan a field up to the byte that ends it (' ', CR or LF, left for v1_delim), checking each byte's class and
 * the field's length on the way: a field that cannot become valid is refused at its first wrong byte. */
static int v1_field(v1_t *v, int kind, const uint8_t **f, size_t *len)
{
    /* "255.255.255.255"; INET6_ADDRSTRLEN - 1 (an IPv4 tail allowed); "65535" */
    static const size_t max[] = {15, 45, 5};
    const char *bad = kind == V1_PORT ? "bad v1 port" : "bad v1 address";
    size_t start = v->i;
    for (;; v->i++) {
        if (v->i == v->end)
            return v1_more(v);
        uint8_t c = v->p[v->i];
        if (c == ' ' || c == '\r' || c == '\n')
            break;
        if (!v1_field_char(kind, c) || v->i - start == max[kind])
            return v1_err(v, bad);
        if (kind == V1_PORT && v->i - start == 1 && v->p[start] == '0')
            return v1_err(v, bad); /* no leading zeros */
    }
    if (v->i == start)
        return v1_err(v, bad); /* two spaces in a row, or a space before CR */
    *f = v->p + start;
    *len = v->i - start;
    return 1;
}

/* Four decimal numbers 0..255 without leading zeros, separated by single dots. */
static bool v1_ipv4(const uint8_t *s, size_t len, uint8_t out[4])
{
    size_t i = 0;
    for (int k = 0; k < 4; k++) {
        if (k > 0 && (i == len || s[i++] != '.'))
            return false;
        size_t start = i;
        unsigned val = 0;
        while (i < len && i - start < 3 && s[i] >= '0' && s[i] <= '9')
            val = val * 10 + (unsigned)(s[i++] - '0');
        if (i == start || val > 255 || (s[start] == '0' && i - start > 1))
            return false;
        out[k] = (uint8_t)val;
    }
    return i == len;
}

/* The field's class and length were checked by v1_field: only the value is left. */
static bool v1_addr(uint8_t family, const uint8_t *s, size_t len, uint8_t ip[16])
{
    char buf[46];
    if (family == 4)
        return v1_ipv4(s, len, ip);
    memcpy(buf, s, len);
    buf[len] = '\0';
    return inet_pton(AF_INET6, buf, ip) == 1;
}

static bool v1_port(const uint8_t *s, size_t len, uint16_t *port)
{
    uint32_t val = 0;
    for (size_t k = 0; k < len; k++)
        val = val * 10 + (uint32_t)(s[k] - '0');
    if (val > 65535)
        return false;
    *port = (uint16_t)val;
    return true;
}

/* After "TCP4"/"TCP6": " <src> <dst> <sport> <dport>\r"; the destination is checked, not reported. */
static int v1_tcp(v1_t *v, pp_addr_t *a)
{
    uint8_t ip[2][16];
    uint16_t port[2];
    int r = v1_delim(v, ' ', "bad v1 protocol");
    for (int k = 0; r > 0 && k < 4; k++) {
        int kind = k >= 2 ? V1_PORT : a->family == 4 ? V1_ADDR4 : V1_ADDR6;
        const uint8_t *f;
        size_t len;
        r = v1_field(v, kind, &f, &len);
        if (r <= 0)
            return r;
        if (kind == V1_PORT ? !v1_port(f, len, &port[k - 2]) : !v1_addr(a->family, f, len, ip[k]))
            return v1_err(v, kind == V1_PORT ? "bad v1 port" : "bad v1 address");
        r = v1_delim(v, k < 3 ? ' ' : '\r', "bad v1 port");
    }
    if (r > 0) {
        memcpy(a->ip, ip[0], a->family == 4 ? 4 : 16);
        a->port = port[0];
    }
    return r;
}

/* After "UNKNOWN": CR, or a space and anything but CR and LF, which the spec says to ignore. */
static int v1_unknown(v1_t *v)
{
    if (v->i < v->end && v->p[v->i] == ' ') {
        v->i++;
        while (v->i < v->end && v->p[v->i] != '\r' && v->p[v->i] != '\n')
            v->i++;
    }
    return v1_delim(v, '\r', "bad v1 protocol");
}

static long v1_parse(const uint8_t *p, size_t n, pp_addr_t *src, const char **why)
{
    v1_t v = {p, 0, n < PP_V1_MAX ? n : PP_V1_MAX, n, NULL};
    pp_addr_t a;
    memset(&a, 0, sizeof(a));
    int r = v1_cmp(&v, "PROXY ");
    if (r > 0) {
        v.i += 6;
        r = v1_proto(&v, &a.family);
    } else {
        r = r < 0 ? v1_err(&v, NOT_PROXY) : v1_more(&v);
    }
    if (r > 0)
        r = a.family == 0 ? v1_unknown(&v) : v1_tcp(&v, &a);
    if (r > 0)
        r = v1_lf(&v);
    if (r <= 0)
        return r < 0 ? fail(why, v.why) : 0;
    *src = a;
    return (long)v.i;
}

/* ---- v2: signature, version/command, family/protocol, length, block -------- */

/* Spec §2.2; it holds a NUL, so it is never a C string. */
static const uint8_t v2_sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

#define V2_FIXED 16 /* signature, version/command, family/protocol, 16-bit length */

enum { V2_UNSPEC, V2_INET, V2_INET6, V2_UNIX };

/* The source address from the block of a PROXY-command header of this family. */
static void v2_source(const uint8_t *block, unsigned family, pp_addr_t *src)
{
    memset(src, 0, sizeof(*src));
    if (family == V2_INET) {
        src->family = 4;
        memcpy(src->ip, block, 4);
        src->port = (uint16_t)(block[8] << 8 | block[9]);
    } else if (family == V2_INET6) {
        src->family = 6;
        memcpy(src->ip, block, 16);
        src->port = (uint16_t)(block[32] << 8 | block[33]);
    }
}

static long v2_parse(const uint8_t *p, size_t n, pp_addr_t *src, const char **why)
{
    /* The least address block of each family: two addresses and, for INET/INET6, two ports. */
    static const size_t min_block[] = {[V2_UNSPEC] = 0, [V2_INET] = 12, [V2_INET6] = 36, [V2_UNIX] = 216};
    if (memcmp(p, v2_sig, n < sizeof(v2_sig) ? n : sizeof(v2_sig)) != 0)
        return fail(why, NOT_PROXY);
    if (n <= 12)
        return 0;
    if (p[12] >> 4 != 2 || (p[12] & 0xf) > 1)
        return fail(why, "bad v2 version/command");
    if (n <= 13)
        return 0;
    /* LOCAL (0): the sender's own connection; its family byte is ignored and the block only skipped. */
    bool local = (p[12] & 0xf) == 0;
    unsigned family = local ? V2_UNSPEC : p[13] >> 4, proto = p[13] & 0xf;
    if (!local && (family > V2_UNIX || proto > 2))
        return fail(why, "bad v2 address family/protocol");
    if ((family == V2_INET || family == V2_INET6) && proto != 1)
        return fail(why, "v2 transport is not TCP"); /* UDP, or UNSPEC with INET addresses */
    if (n < V2_FIXED)
        return 0;
    size_t total = V2_FIXED + ((size_t)p[14] << 8 | p[15]);
    if (total > PP_V2_MAX)
        return fail(why, "v2 header longer than 4096 bytes");
    if (total - V2_FIXED < min_block[family])
        return fail(why, "v2 address block too short");
    if (n < total)
        return 0;
    v2_source(p + V2_FIXED, family, src);
    return (long)total;
}

long pp_parse(const uint8_t *p, size_t n, pp_addr_t *src, const char **why)
{
    if (why != NULL)
        *why = NULL;
    if (n == 0)
        return 0;
    if (p[0] == 'P')
        return v1_parse(p, n, src, why);
    if (p[0] == v2_sig[0])
        return v2_parse(p, n, src, why);
    return fail(why, NOT_PROXY);
}

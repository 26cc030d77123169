/*
 * dns.c - DNS queries and answers on the wire (see dns.h).
 *
 * The parse reads the header, the one question (it must be ours: the id,
 * the name case-insensitively, the type and class IN), then every answer
 * record into a small list, and follows the name's CNAME chain through
 * that list (DNS_MAX_CNAMES at most), keeping the address records of the
 * chain's end.  Authority and additional sections are not read: a stub
 * asks a recursive server and believes only the answer section.
 */
#include "upstream/dns.h"

#include <stdio.h>
#include <string.h>

#include "../common/util.h"

#define HDR 12
#define MAX_RECORDS 64 /* answer records looked at; a larger answer is refused */

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }

static char lower(char c) { return c >= 'A' && c <= 'Z' ? (char)(c + 32) : c; }

bool dns_name_ok(const char *name)
{
    size_t n = strlen(name);
    if (n > 0 && name[n - 1] == '.')
        n--;
    return hostname_ok(name, n);
}

int dns_query(uint8_t *buf, size_t cap, uint16_t id, const char *name, uint16_t qtype)
{
    size_t n = strlen(name);
    if (!dns_name_ok(name) || cap < HDR + n + 2 + 4)
        return -1;
    if (name[n - 1] == '.')
        n--;
    memset(buf, 0, HDR);
    buf[0] = (uint8_t)(id >> 8);
    buf[1] = (uint8_t)id;
    buf[2] = 0x01; /* RD: a stub asks for recursion */
    buf[5] = 1;    /* QDCOUNT */
    size_t o = HDR;
    for (size_t i = 0; i <= n;) {
        size_t j = i;
        while (j < n && name[j] != '.')
            j++;
        buf[o++] = (uint8_t)(j - i);
        memcpy(buf + o, name + i, j - i);
        o += j - i;
        i = j + 1;
    }
    buf[o++] = 0;
    buf[o++] = (uint8_t)(qtype >> 8);
    buf[o++] = (uint8_t)qtype;
    buf[o++] = 0;
    buf[o++] = 1; /* class IN */
    return (int)o;
}

uint16_t dns_id(const uint8_t *p, size_t n) { return n < HDR ? 0 : get16(p); }

/* The name at *off as lower-case text without its final dot ("" for the
 * root); *off moves past it (past the first pointer when compressed).
 * Every pointer must point before the label it replaces: no loop, and at
 * most one visit of each byte. */
static int read_name(const uint8_t *p, size_t n, size_t *off, char *out)
{
    size_t o = *off, len = 0, end = 0, floor = o;
    bool jumped = false;
    for (;;) {
        if (o >= n)
            return -1;
        uint8_t c = p[o];
        if ((c & 0xc0) == 0xc0) {
            if (o + 1 >= n)
                return -1;
            size_t to = (size_t)(c & 0x3f) << 8 | p[o + 1];
            if (to >= floor)
                return -1; /* forward or self: a loop could follow */
            if (!jumped)
                end = o + 2;
            jumped = true;
            floor = to;
            o = to;
            continue;
        }
        if (c & 0xc0)
            return -1; /* extended label types (RFC 6891 retired them) */
        if (c == 0) {
            o++;
            break;
        }
        if (o + 1 + c > n || len + c + 1 > DNS_MAX_NAME - 1)
            return -1;
        if (len)
            out[len++] = '.';
        for (size_t i = 0; i < c; i++)
            out[len++] = lower((char)p[o + 1 + i]);
        o += 1 + (size_t)c;
    }
    out[len] = '\0';
    *off = jumped ? end : o;
    return 0;
}

static bool same_name(const char *a, const char *query)
{
    size_t n = strlen(query);
    if (n && query[n - 1] == '.')
        n--;
    if (strlen(a) != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (a[i] != lower(query[i]))
            return false;
    return true;
}

typedef struct {
    char owner[DNS_MAX_NAME];
    uint16_t type, rdlen;
    uint32_t ttl;
    size_t rdata;  /* offset of the record data */
} record_t;

static int read_question(const uint8_t *p, size_t n, size_t *off, const char *name, uint16_t qtype, const char **why)
{
    char q[DNS_MAX_NAME];
    if (read_name(p, n, off, q) < 0 || *off + 4 > n) {
        *why = "malformed question";
        return -1;
    }
    if (!same_name(q, name) || get16(p + *off) != qtype || get16(p + *off + 2) != 1) {
        *why = "answer to another question";
        return -1;
    }
    *off += 4;
    return 0;
}

static int read_records(const uint8_t *p, size_t n, size_t off, unsigned count, record_t *rec, const char **why)
{
    for (unsigned i = 0; i < count; i++) {
        if (read_name(p, n, &off, rec[i].owner) < 0 || off + 10 > n) {
            *why = "malformed answer record";
            return -1;
        }
        rec[i].type = get16(p + off);
        rec[i].ttl = get32(p + off + 4) & 0x7fffffffu; /* RFC 2181 §8: the top bit set means 0 */
        if (get32(p + off + 4) & 0x80000000u)
            rec[i].ttl = 0;
        rec[i].rdlen = get16(p + off + 8);
        rec[i].rdata = off + 10;
        if (get16(p + off + 2) != 1) /* class IN only */
            rec[i].type = 0;
        off += 10 + (size_t)rec[i].rdlen;
        if (off > n) {
            *why = "truncated answer record";
            return -1;
        }
    }
    return 0;
}

static void take_ttl(dns_answer_t *a, uint32_t ttl, bool *first)
{
    if (*first || ttl < a->ttl)
        a->ttl = ttl;
    *first = false;
}

/* Follow the CNAME chain from name through rec[0..count) and keep the
 * address records of its end. */
static int follow(const uint8_t *p, size_t n, const record_t *rec, unsigned count, const char *name, uint16_t qtype,
                  dns_answer_t *a, const char **why)
{
    char target[DNS_MAX_NAME];
    bool first = true;
    snprintf(target, sizeof(target), "%s", name);
    size_t tl = strlen(target);
    if (tl && target[tl - 1] == '.')
        target[tl - 1] = '\0';
    for (size_t i = 0; target[i]; i++)
        target[i] = lower(target[i]);
    for (;;) {
        const record_t *cname = NULL;
        for (unsigned i = 0; i < count; i++)
            if (rec[i].type == DNS_T_CNAME && strcmp(rec[i].owner, target) == 0)
                cname = &rec[i];
        if (cname == NULL)
            break;
        if (++a->ncnames > DNS_MAX_CNAMES) {
            *why = "CNAME chain too long";
            return -1;
        }
        size_t off = cname->rdata;
        if (read_name(p, cname->rdata + cname->rdlen, &off, target) < 0 || off != cname->rdata + cname->rdlen) {
            *why = "malformed CNAME record";
            return -1;
        }
        take_ttl(a, cname->ttl, &first);
    }
    for (unsigned i = 0; i < count; i++) {
        if (rec[i].type != qtype || strcmp(rec[i].owner, target) != 0)
            continue;
        size_t len = qtype == DNS_T_A ? 4 : 16;
        if (rec[i].rdlen != len) {
            *why = "address record of the wrong size";
            return -1;
        }
        take_ttl(a, rec[i].ttl, &first);
        if (a->naddrs == DNS_MAX_ADDRS)
            continue;
        a->addrs[a->naddrs].len = (uint8_t)len;
        memcpy(a->addrs[a->naddrs++].ip, p + rec[i].rdata, len);
    }
    (void)n;
    return 0;
}

int dns_parse(const uint8_t *p, size_t n, uint16_t id, const char *name, uint16_t qtype, dns_answer_t *a,
              const char **why)
{
    static record_t rec[MAX_RECORDS]; /* one parse at a time per process (workers are single threaded) */
    memset(a, 0, sizeof(*a));
    if (n < HDR) {
        *why = "shorter than a header";
        return -1;
    }
    if (get16(p) != id) {
        *why = "wrong id";
        return -1;
    }
    if (!(p[2] & 0x80) || (p[2] & 0x78) != 0) {
        *why = "not an answer to a standard query";
        return -1;
    }
    a->truncated = (p[2] & 0x02) != 0;
    a->rcode = p[3] & 0x0f;
    unsigned qd = get16(p + 4), an = get16(p + 6);
    if (qd != 1) {
        *why = "not one question";
        return -1;
    }
    size_t off = HDR;
    if (read_question(p, n, &off, name, qtype, why) < 0)
        return -1;
    if (a->rcode != DNS_R_NOERROR || a->truncated)
        return 0;
    if (an > MAX_RECORDS) {
        *why = "too many answer records";
        return -1;
    }
    if (read_records(p, n, off, an, rec, why) < 0)
        return -1;
    return follow(p, n, rec, an, name, qtype, a, why);
}

const char *dns_rcode_name(unsigned rcode, char *buf, size_t cap)
{
    switch (rcode) {
    case DNS_R_NOERROR: return "NOERROR";
    case DNS_R_FORMERR: return "FORMERR";
    case DNS_R_SERVFAIL: return "SERVFAIL";
    case DNS_R_NXDOMAIN: return "NXDOMAIN";
    case DNS_R_REFUSED: return "REFUSED";
    default: snprintf(buf, cap, "rcode %u", rcode); return buf;
    }
}

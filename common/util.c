/*
 * util.c - arena, value-syntax parsers and hot-path formatters (see util.h).
 *
 * The parsers are strict: no leading or trailing blanks, no signs, and every
 * numeric result is checked for overflow before it is multiplied.
 */
#include "util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct arena_chunk {
    arena_chunk_t *next;
    size_t used, size;
    _Alignas(16) unsigned char data[];
};

void arena_init(arena_t *a, size_t chunk_size)
{
    a->head = NULL;
    a->chunk_size = chunk_size ? chunk_size : 16384;
}

void *arena_alloc(arena_t *a, size_t n)
{
    void *p = arena_alloc_raw(a, n);
    memset(p, 0, n);
    return p;
}

void *arena_alloc_raw(arena_t *a, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    arena_chunk_t *c = a->head;
    if (c == NULL || c->size - c->used < n) {
        size_t sz = n > a->chunk_size ? n : a->chunk_size;
        c = malloc(sizeof(*c) + sz);
        if (c == NULL)
            abort();
        c->size = sz;
        c->used = 0;
        c->next = a->head;
        a->head = c;
    }
    void *p = c->data + c->used;
    c->used += n;
    return p;
}

char *arena_strndup(arena_t *a, const char *s, size_t n)
{
    char *p = arena_alloc(a, n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *arena_strdup(arena_t *a, const char *s) { return arena_strndup(a, s, strlen(s)); }

char *arena_printf(arena_t *a, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *p = arena_alloc(a, (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}

void arena_free(arena_t *a)
{
    arena_chunk_t *c = a->head;
    while (c) {
        arena_chunk_t *next = c->next;
        free(c);
        c = next;
    }
    a->head = NULL;
}

void arena_reset(arena_t *a)
{
    arena_chunk_t *keep = a->head;
    if (keep == NULL)
        return;
    arena_chunk_t *c = keep->next;
    while (c) {
        arena_chunk_t *next = c->next;
        free(c);
        c = next;
    }
    keep->next = NULL;
    keep->used = 0;
}

/* Leading decimal digits of s[0..n) into *v; returns how many were read. */
static size_t scan_u64(const char *s, size_t n, uint64_t *v, bool *overflow)
{
    size_t i = 0;
    *v = 0;
    *overflow = false;
    for (; i < n && s[i] >= '0' && s[i] <= '9'; i++) {
        unsigned d = (unsigned)(s[i] - '0');
        if (*v > (UINT64_MAX - d) / 10)
            *overflow = true;
        else
            *v = *v * 10 + d;
    }
    return i;
}

static int scaled(uint64_t v, uint64_t mul, uint64_t *out, const char **why)
{
    if (mul && v > UINT64_MAX / mul) {
        *why = "value too large";
        return -1;
    }
    *out = v * mul;
    return 0;
}

int parse_duration_ms(const char *s, size_t n, uint64_t *ms, const char **why)
{
    uint64_t v;
    bool of;
    size_t i = scan_u64(s, n, &v, &of);
    if (i == 0) {
        *why = "expected a number followed by ms, s, m, h or d";
        return -1;
    }
    if (of) {
        *why = "value too large";
        return -1;
    }
    const char *u = s + i;
    size_t un = n - i;
    uint64_t mul;
    if (un == 0 || (un == 1 && *u == 's'))
        mul = 1000;
    else if (un == 2 && memcmp(u, "ms", 2) == 0)
        mul = 1;
    else if (un == 1 && *u == 'm')
        mul = 60000;
    else if (un == 1 && *u == 'h')
        mul = 3600000;
    else if (un == 1 && *u == 'd')
        mul = 86400000;
    else {
        *why = "unknown unit (use ms, s, m, h or d)";
        return -1;
    }
    return scaled(v, mul, ms, why);
}

int parse_size(const char *s, size_t n, uint64_t *bytes, const char **why)
{
    uint64_t v;
    bool of;
    size_t i = scan_u64(s, n, &v, &of);
    if (i == 0) {
        *why = "expected a number optionally followed by k, m or g";
        return -1;
    }
    if (of) {
        *why = "value too large";
        return -1;
    }
    uint64_t mul = 1;
    if (n - i == 1) {
        switch (s[i] | 0x20) {
        case 'k': mul = 1024; break;
        case 'm': mul = 1024 * 1024; break;
        case 'g': mul = 1024 * 1024 * 1024; break;
        default: *why = "unknown unit (use k, m or g)"; return -1;
        }
    } else if (n - i > 1) {
        *why = "unknown unit (use k, m or g)";
        return -1;
    }
    return scaled(v, mul, bytes, why);
}

/* inet_pton wants a C string; addresses are short, so copy to the stack. */
int parse_ip(const char *s, size_t n, uint8_t out[16], int *family)
{
    char tmp[64];
    if (n == 0 || n >= sizeof(tmp))
        return -1;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    memset(out, 0, 16);
    if (inet_pton(AF_INET, tmp, out) == 1) {
        *family = 4;
        return 0;
    }
    if (inet_pton(AF_INET6, tmp, out) == 1) {
        *family = 6;
        return 0;
    }
    return -1;
}

int parse_cidr(const char *s, size_t n, rt_cidr_t *out, const char **why)
{
    const char *slash = memchr(s, '/', n);
    size_t an = slash ? (size_t)(slash - s) : n;
    int family;
    memset(out, 0, sizeof(*out));
    if (parse_ip(s, an, out->addr, &family) < 0) {
        *why = "not an IPv4 or IPv6 address";
        return -1;
    }
    unsigned max = family == 4 ? 32 : 128, bits = max;
    if (slash) {
        uint64_t v;
        bool of;
        size_t rest = n - an - 1;
        if (rest == 0 || scan_u64(slash + 1, rest, &v, &of) != rest || of || v > max) {
            *why = family == 4 ? "prefix length must be 0..32" : "prefix length must be 0..128";
            return -1;
        }
        bits = (unsigned)v;
    }
    /* Host bits set below the prefix are almost always a typo (10.1.2.3/8). */
    for (unsigned b = bits; b < max; b++) {
        if (out->addr[b / 8] & (0x80u >> (b % 8))) {
            *why = "address has bits set beyond the prefix length";
            return -1;
        }
    }
    out->family = (uint8_t)family;
    out->bits = (uint8_t)bits;
    return 0;
}

int ip_unmap(int family, uint8_t addr[16])
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (family != 6 || memcmp(addr, mapped, 12) != 0)
        return family;
    memmove(addr, addr + 12, 4);
    memset(addr + 4, 0, 12);
    return 4;
}

bool cidr_contains(const rt_cidr_t *c, int family, const uint8_t *addr)
{
    if (c->family != family)
        return false;
    unsigned full = c->bits / 8, rem = c->bits % 8;
    if (memcmp(c->addr, addr, full) != 0)
        return false;
    if (rem == 0)
        return true;
    uint8_t mask = (uint8_t)(0xffu << (8 - rem));
    return (c->addr[full] & mask) == (addr[full] & mask);
}

bool trusted_proxy(const rt_table_t *t, int family, const uint8_t *ip)
{
    const rt_span_t tp = t->global->trusted_proxies;
    for (uint32_t i = 0; i < tp.count; i++)
        if (cidr_contains(&t->cidrs[tp.first + i], family, ip))
            return true;
    return false;
}

bool hostname_ok(const char *s, size_t n)
{
    if (n == 0 || n > 253)
        return false;
    size_t label = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '.') {
            if (label == 0)
                return false;
            label = 0;
            continue;
        }
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '_';
        if (!ok || ++label > 63)
            return false;
    }
    return label > 0;
}

int parse_sockaddr(const char *s, size_t n, rt_sockaddr_t *out, const char **why)
{
    memset(out, 0, sizeof(*out));
    if (n >= 5 && memcmp(s, "unix:", 5) == 0) {
        if (n == 5 || s[5] != '/') {
            *why = "unix socket path must be absolute (unix:/path)";
            return -1;
        }
        if (n - 5 > 107) {
            *why = "unix socket path longer than 107 bytes";
            return -1;
        }
        out->kind = RT_ADDR_UNIX;
        return 0;
    }
    const char *host = s, *colon;
    size_t hn;
    if (n && s[0] == '[') {
        const char *close = memchr(s, ']', n);
        if (close == NULL || (size_t)(close - s) + 1 >= n || close[1] != ':') {
            *why = "expected [IPv6]:port";
            return -1;
        }
        host = s + 1;
        hn = (size_t)(close - host);
        colon = close + 1;
    } else {
        colon = memrchr(s, ':', n);
        if (colon == NULL) {
            *why = "missing :port";
            return -1;
        }
        hn = (size_t)(colon - s);
        if (memchr(s, ':', hn)) {
            *why = "IPv6 addresses must be written in brackets: [::1]:80";
            return -1;
        }
    }
    size_t pn = n - (size_t)(colon + 1 - s);
    uint64_t port;
    bool of;
    if (pn == 0 || scan_u64(colon + 1, pn, &port, &of) != pn || of || port == 0 || port > 65535) {
        *why = "port must be 1..65535";
        return -1;
    }
    out->port = (uint16_t)port;
    int family;
    if (parse_ip(host, hn, out->ip, &family) == 0) {
        if (s[0] == '[' && family != 6) {
            *why = "brackets hold an IPv6 address";
            return -1;
        }
        out->kind = family == 4 ? RT_ADDR_INET : RT_ADDR_INET6;
        return 0;
    }
    if (s[0] == '[' || !hostname_ok(host, hn)) {
        *why = "not an IP address or host name";
        return -1;
    }
    out->kind = RT_ADDR_NAME;
    return 0;
}

int parse_rate(const char *s, size_t n, uint64_t *interval_ns, const char **why)
{
    uint64_t v;
    bool of;
    size_t i = scan_u64(s, n, &v, &of);
    if (i == 0 || n - i != 3 || s[i] != 'r' || s[i + 1] != '/' || (s[i + 2] != 's' && s[i + 2] != 'm')) {
        *why = "expected a rate like 10r/s or 600r/m";
        return -1;
    }
    if (of || v == 0 || v > 1000000) {
        *why = "rate must be between 1r/m and 1000000r/s";
        return -1;
    }
    *interval_ns = (s[i + 2] == 's' ? UINT64_C(1000000000) : UINT64_C(60000000000)) / v;
    return 0;
}

char *read_file(const char *path, size_t *len)
{
    struct stat st;
    /* Looked at before it is opened: opening a FIFO blocks until a writer
     * comes, and opening a device may do something.  The O_NONBLOCK open
     * and fstat cover a file swapped in between. */
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
        errno = S_ISDIR(st.st_mode) ? EISDIR : EINVAL;
        return NULL;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0)
        return NULL;
    char *p = NULL;
    if (fstat(fd, &st) < 0)
        goto fail;
    if (!S_ISREG(st.st_mode)) {
        errno = S_ISDIR(st.st_mode) ? EISDIR : EINVAL;
        goto fail;
    }
    size_t cap = (size_t)st.st_size + 1, n = 0;
    p = malloc(cap);
    if (p == NULL)
        goto fail;
    for (;;) {
        if (n + 1 >= cap) {
            char *q = realloc(p, cap * 2);
            if (q == NULL)
                goto fail;
            p = q;
            cap *= 2;
        }
        ssize_t r = read(fd, p + n, cap - n - 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            goto fail;
        if (r == 0)
            break;
        n += (size_t)r;
    }
    p[n] = '\0';
    close(fd);
    if (len)
        *len = n;
    return p;
fail:
    {
        int e = errno;
        free(p);
        close(fd);
        errno = e;
    }
    return NULL;
}

char *path_beside(const char *file, const char *rel)
{
    if (rel[0] == '\0' || rel[0] == '/')
        return strdup(rel);
    const char *slash = strrchr(file, '/');
    if (slash == NULL)
        return strdup(rel);
    if (rel[0] == '.' && rel[1] == '/')
        rel += 2;
    size_t n = (size_t)(slash - file) + 1 + strlen(rel) + 1;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%.*s/%s", (int)(slash - file), file, rel);
    return p;
}

/* ---- formatting on hot paths ------------------------------------------------ */

size_t fmt_u64(char *out, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do
        tmp[n++] = (char)('0' + v % 10);
    while ((v /= 10) != 0);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    out[n] = '\0';
    return n;
}

size_t fmt_ip(char *out, int family, const uint8_t *addr)
{
    if (family == 6) {
        inet_ntop(AF_INET6, addr, out, 46);
        return strlen(out);
    }
    size_t n = 0;
    for (int i = 0; i < 4; i++) {
        unsigned b = addr[i];
        if (b >= 100)
            out[n++] = (char)('0' + b / 100);
        if (b >= 10)
            out[n++] = (char)('0' + b / 10 % 10);
        out[n++] = (char)('0' + b % 10);
        out[n++] = '.';
    }
    out[n - 1] = '\0';
    return n - 1;
}

void fd_hand_on(const char *name, int fd)
{
    char n[16];
    snprintf(n, sizeof(n), "%d", fd);
    setenv(name, n, 1);
    fcntl(fd, F_SETFD, 0);
}

int fd_take_over(const char *name)
{
    const char *v = getenv(name);
    if (v == NULL)
        return -1;
    int fd = atoi(v);
    unsetenv(name);
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    return fd;
}

int mkdir_parents(const char *path, unsigned mode, char *failed, size_t cap)
{
    char dir[4096];
    if (snprintf(dir, sizeof(dir), "%s", path) >= (int)sizeof(dir)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    char *slash = strrchr(dir, '/');
    if (slash == NULL || slash == dir)
        return 0;
    *slash = '\0';
    for (char *p = dir + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char c = *p;
        *p = '\0';
        if (mkdir(dir, (mode_t)mode) < 0 && errno != EEXIST) {
            if (failed)
                snprintf(failed, cap, "%s", dir);
            return -1;
        }
        *p = c;
        if (c == '\0')
            return 0;
    }
}

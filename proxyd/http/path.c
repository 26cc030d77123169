/*
 * path.c - request path normalization (see path.h).
 */
#include "http/path.h"

#include <string.h>

#include "../common/str.h"

/* Decode into out; returns length or -1. */
static long decode(const char *in, size_t n, char *out, const char **why)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (in[i] != '%') {
            out[o++] = in[i];
            continue;
        }
        if (i + 2 >= n) {
            *why = "truncated percent escape";
            return -1;
        }
        int a = str_hexval((unsigned char)in[i + 1]), b = str_hexval((unsigned char)in[i + 2]);
        if (a < 0 || b < 0) {
            *why = "invalid percent escape";
            return -1;
        }
        int c = a * 16 + b;
        if (c == 0) {
            *why = "encoded NUL in path";
            return -1;
        }
        if (c == '%' || c == '/') {
            out[o++] = '%';
            out[o++] = '2';
            out[o++] = c == '%' ? '5' : 'F';
        } else {
            out[o++] = (char)c;
        }
        i += 2;
    }
    return (long)o;
}

/* Resolve dot segments in place over p[0..n); returns the new length or -1. */
static long remove_dots(char *p, size_t n, const char **why)
{
    size_t o = 0, i = 0;
    while (i < n) {
        /* p[i] is '/'; the segment runs to the next '/' or the end. */
        size_t j = i + 1;
        while (j < n && p[j] != '/')
            j++;
        size_t len = j - i - 1;
        const char *seg = p + i + 1;
        if (len == 1 && seg[0] == '.') {
            if (j == n)
                p[o++] = '/';
        } else if (len == 2 && seg[0] == '.' && seg[1] == '.') {
            if (o == 0) {
                *why = "path climbs above the root";
                return -1;
            }
            while (o > 0 && p[o - 1] != '/')
                o--;
            if (o > 0)
                o--; /* drop the slash; one is re-added below if needed */
            if (j == n)
                p[o++] = '/';
        } else {
            memmove(p + o, p + i, j - i);
            o += j - i;
        }
        i = j;
    }
    if (o == 0)
        p[o++] = '/';
    return (long)o;
}

long path_normalize(const char *in, size_t n, char *out, size_t cap, const char **why)
{
    if (n == 0 || in[0] != '/') {
        *why = "path does not start with '/'";
        return -1;
    }
    if (cap < n + 1) {
        *why = "path too long";
        return -1;
    }
    long m = decode(in, n, out, why);
    if (m < 0)
        return -1;
    return remove_dots(out, (size_t)m, why);
}

size_t path_encode(const char *in, size_t n, char *out)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)in[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 (c && strchr("-._~!$&'()*+,;=:@/%", c));
        if (ok) {
            out[o++] = (char)c;
        } else {
            out[o++] = '%';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        }
    }
    out[o] = '\0';
    return o;
}

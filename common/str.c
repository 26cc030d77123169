/*
 * str.c - the append buffer's slow paths, decimal and formatted appends,
 * and JSON string escaping (see str.h).
 *
 * Invariant of every str_buf_t: len <= cap, and nothing is ever written at
 * or beyond p + cap.  A fixed buffer that overflowed has cap == len.
 */
#include "str.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "util.h"

void str_refuse(str_buf_t *b)
{
    b->overflow = true;
    if (b->fixed)
        b->cap = b->len; /* a later, shorter append must not land after the gap */
}

bool str_reserve(str_buf_t *b, size_t extra)
{
    if (b->cap - b->len >= extra)
        return true;
    if (b->fixed) {
        str_refuse(b);
        return false;
    }
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < extra)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (p == NULL)
        abort();
    b->p = p;
    b->cap = cap;
    return true;
}

void str_append_slow(str_buf_t *b, const void *p, size_t n)
{
    if (n == 0 || !str_reserve(b, n))
        return;
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

void str_append_u64(str_buf_t *b, uint64_t v)
{
    if (b->cap - b->len > 20) { /* the digits and fmt_u64's NUL fit in place */
        b->len += fmt_u64(b->p + b->len, v);
        return;
    }
    char tmp[21];
    size_t n = fmt_u64(tmp, v);
    str_append(b, tmp, n);
}

void str_printf(str_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || !str_reserve(b, (size_t)n + 1))
        return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void str_json_escape(str_buf_t *b, const char *p, size_t n, size_t max)
{
    static const char hex[] = "0123456789abcdef";
    if (!b->fixed)
        str_reserve(b, n > max / 6 ? max : 6 * n); /* the worst case, so only max can stop it */
    size_t room = b->cap - b->len, end = b->len + (max < room ? max : room), k = b->len, i = 0;
    char *o = b->p;
    for (; i < n && k + 6 <= end; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch == '"' || ch == '\\') {
            o[k++] = '\\';
            o[k++] = (char)ch;
        } else if (ch < 0x20 || ch == 0x7f) {
            memcpy(o + k, "\\u00", 4);
            o[k + 4] = hex[ch >> 4];
            o[k + 5] = hex[ch & 15];
            k += 6;
        } else {
            o[k++] = (char)ch;
        }
    }
    b->len = k;
    if (i < n && room < max) /* cut short by cap, not by max */
        str_refuse(b);
}

void str_buf_free(str_buf_t *b)
{
    if (b->fixed)
        return;
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

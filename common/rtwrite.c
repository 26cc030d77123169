/*
 * rtwrite.c - rule-table writer (see rtwrite.h).
 *
 * String interning uses an open-addressed hash of offsets into the string
 * buffer itself, so the intern table never holds copies.
 */
#include "rtwrite.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "str.h"

struct rtw {
    str_buf_t sec[RT_SEC_COUNT];
    rt_str_t *intern; /* open addressing; len == UINT32_MAX marks empty */
    uint32_t intern_cap, intern_used;
};

rtw_t *rtw_new(void)
{
    rtw_t *w = calloc(1, sizeof(*w));
    if (w == NULL)
        abort();
    str_append(&w->sec[RT_SEC_STRINGS], "", 1); /* offset 0 is "" */
    return w;
}

void rtw_free(rtw_t *w)
{
    if (w == NULL)
        return;
    for (unsigned i = 0; i < RT_SEC_COUNT; i++)
        str_buf_free(&w->sec[i]);
    free(w->intern);
    free(w);
}

static void intern_grow(rtw_t *w)
{
    uint32_t cap = w->intern_cap ? w->intern_cap * 2 : 1024;
    rt_str_t *tab = malloc(sizeof(*tab) * cap);
    if (tab == NULL)
        abort();
    for (uint32_t i = 0; i < cap; i++)
        tab[i].len = UINT32_MAX;
    const char *base = (const char *)w->sec[RT_SEC_STRINGS].p;
    for (uint32_t i = 0; i < w->intern_cap; i++) {
        rt_str_t s = w->intern[i];
        if (s.len == UINT32_MAX)
            continue;
        uint32_t h = rt_hash(base + s.off, s.len) & (cap - 1);
        while (tab[h].len != UINT32_MAX)
            h = (h + 1) & (cap - 1);
        tab[h] = s;
    }
    free(w->intern);
    w->intern = tab;
    w->intern_cap = cap;
}

rt_str_t rtw_str(rtw_t *w, const char *s, size_t n)
{
    if (n == 0)
        return (rt_str_t){0, 0};
    if (w->intern_used * 2 >= w->intern_cap)
        intern_grow(w);
    str_buf_t *b = &w->sec[RT_SEC_STRINGS];
    uint32_t h = rt_hash(s, n) & (w->intern_cap - 1);
    for (;; h = (h + 1) & (w->intern_cap - 1)) {
        rt_str_t e = w->intern[h];
        if (e.len == UINT32_MAX)
            break;
        if (e.len == n && memcmp(b->p + e.off, s, n) == 0)
            return e;
    }
    rt_str_t r = {(uint32_t)b->len, (uint32_t)n};
    str_append(b, s, n);
    str_append(b, "", 1);
    w->intern[h] = r;
    w->intern_used++;
    return r;
}

const char *rtw_strp(const rtw_t *w, rt_str_t s) { return (const char *)w->sec[RT_SEC_STRINGS].p + s.off; }

rt_str_t rtw_cstr(rtw_t *w, const char *s) { return s ? rtw_str(w, s, strlen(s)) : (rt_str_t){0, 0}; }

uint32_t rtw_add(rtw_t *w, unsigned sec, const void *recs, uint32_t count)
{
    size_t es = rt_entsize(sec);
    str_buf_t *b = &w->sec[sec];
    uint32_t first = (uint32_t)(b->len / es);
    if (count == 0)
        return first;
    str_reserve(b, es * count);
    if (recs)
        memcpy(b->p + b->len, recs, es * count);
    else
        memset(b->p + b->len, 0, es * count);
    b->len += es * count;
    return first;
}

uint32_t rtw_count(const rtw_t *w, unsigned sec) { return (uint32_t)(w->sec[sec].len / rt_entsize(sec)); }

void *rtw_rec(rtw_t *w, unsigned sec, uint32_t idx) { return w->sec[sec].p + (size_t)idx * rt_entsize(sec); }

int rtw_finish(rtw_t *w, uint8_t **out, size_t *len)
{
    rt_header_t h;
    memset(&h, 0, sizeof(h));
    memcpy(h.magic, RT_MAGIC, 8);
    h.version = RT_VERSION;
    h.header_size = sizeof(h);
    h.section_count = RT_SEC_COUNT;
    size_t off = sizeof(h);
    for (unsigned i = 0; i < RT_SEC_COUNT; i++) {
        off = (off + RT_ALIGN - 1) & ~(size_t)(RT_ALIGN - 1);
        if (off > UINT32_MAX || w->sec[i].len > UINT32_MAX)
            return -1;
        h.sections[i].off = (uint32_t)off;
        h.sections[i].count = rtw_count(w, i);
        off += w->sec[i].len;
    }
    off = (off + RT_ALIGN - 1) & ~(size_t)(RT_ALIGN - 1);
    uint8_t *p = aligned_alloc(RT_ALIGN, off);
    if (p == NULL)
        return -1;
    memset(p, 0, off);
    for (unsigned i = 0; i < RT_SEC_COUNT; i++)
        if (w->sec[i].len)
            memcpy(p + h.sections[i].off, w->sec[i].p, w->sec[i].len);
    h.total_size = off;
    memcpy(p, &h, sizeof(h));
    rt_checksum(p, off, p + offsetof(rt_header_t, sha256)); /* covers the header too */
    *out = p;
    *len = off;
    return 0;
}

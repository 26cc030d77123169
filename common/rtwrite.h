/*
 * rtwrite.h - builds a rule table (see ruletable.h) in memory.
 *
 * Records are appended to per-section buffers and referenced by index;
 * strings are interned so equal strings share one copy.  rtw_finish() lays
 * the sections out in id order, 8-byte aligned, zero-padded, and stamps the
 * header with the body's SHA-256.  Output depends only on the sequence of
 * calls, so the same inputs compiled twice give byte-identical tables.
 */
#ifndef COMMON_RTWRITE_H
#define COMMON_RTWRITE_H

#include "ruletable.h"
#include "util.h"

typedef struct rtw rtw_t;

rtw_t *rtw_new(void);
void rtw_free(rtw_t *w);
rt_str_t rtw_str(rtw_t *w, const char *s, size_t n);
rt_str_t rtw_cstr(rtw_t *w, const char *s); /* NULL is "" */
/* The bytes of an interned string (NUL-terminated), valid until the next rtw_str. */
const char *rtw_strp(const rtw_t *w, rt_str_t s);
/* Append count records of section sec, copied from recs (NULL: zeroed); returns the first index. */
uint32_t rtw_add(rtw_t *w, unsigned sec, const void *recs, uint32_t count);
uint32_t rtw_count(const rtw_t *w, unsigned sec);
/* The record at idx, writable until the next rtw_add to the same section. */
void *rtw_rec(rtw_t *w, unsigned sec, uint32_t idx);
/* Lay out the table; *out is malloc'ed (8-byte aligned) and owned by the caller. */
int rtw_finish(rtw_t *w, uint8_t **out, size_t *len);

#endif

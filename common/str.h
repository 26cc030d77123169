/*
 * str.h - byte strings both programs share: hex digits, ASCII case, JSON
 * string escaping, and the one append buffer.  Strings are slices
 * (const char *p, size_t n); nothing here reads past n or looks for a NUL.
 *
 * str_buf_t is one type in two forms, with one set of append functions:
 *
 *   fixed    str_buf_fixed(p, cap): appends go into caller memory (an iobuf,
 *            a stack array, arena bytes) and never allocate.  An append that
 *            does not fit is refused whole and sets overflow; from then on
 *            the buffer takes nothing more (cap drops to len), so its
 *            contents are always whole appends and never reach past cap.
 *            The request-path builders (the upstream request head, access
 *            log lines, variable expansion) use this form.
 *   growing  str_buf_t b = {0}: malloc'ed, doubled as needed, aborting on
 *            OOM; never overflows; str_buf_free releases it.
 *
 * The append fast path is inline: one compare and a memcpy, as the
 * per-request builders need.  Only a full buffer takes the call.
 */
#ifndef COMMON_STR_H
#define COMMON_STR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ---- hex digits and ASCII case ------------------------------------------ */

/* The value of hex digit c (either case), or -1 when c is none. */
static inline int str_hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* ASCII lower case; every other byte (UTF-8 included) is left as it is. */
static inline int str_lower_char(int c) { return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c; }

static inline void str_lower(char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (char)str_lower_char((unsigned char)p[i]);
}

/* RFC 9110 §5.6.2 tchar: the bytes of a token (field names, codings,
 * media types).  http1.c has its own table for the request parser. */
static inline bool str_is_tchar(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* ---- the append buffer ----------------------------------------------------- */

typedef struct {
    char *p;
    size_t len, cap;
    bool fixed;    /* caller memory: refuse what does not fit, never allocate */
    bool overflow; /* a fixed buffer refused an append */
} str_buf_t;

static inline str_buf_t str_buf_fixed(char *p, size_t cap)
{
    return (str_buf_t){.p = p, .cap = cap, .fixed = true};
}

/* Room for extra more bytes at p + len.  Always true of a growing buffer;
 * false (and overflow set) when a fixed one lacks it. */
bool str_reserve(str_buf_t *b, size_t extra);
/* Record that b cannot take what the caller meant to append (a piece over
 * the caller's own limit): overflow is set and a fixed buffer takes nothing
 * more, as if an append had been refused. */
void str_refuse(str_buf_t *b);
/* The inline append's path for a full buffer: grow, or record overflow. */
void str_append_slow(str_buf_t *b, const void *p, size_t n);

static inline void str_append(str_buf_t *b, const void *p, size_t n)
{
    if (n == 0 || n > b->cap - b->len) {
        str_append_slow(b, p, n);
        return;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

static inline void str_append_str(str_buf_t *b, const char *s) { str_append(b, s, strlen(s)); }

#define STR_APPEND_LIT(b, lit) str_append((b), "" lit, sizeof(lit) - 1)

/* v in decimal. */
void str_append_u64(str_buf_t *b, uint64_t v);
/* Formatted text (not for the request path), followed by a NUL that len does
 * not count; a fixed buffer needs room for that NUL too. */
void str_printf(str_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The inside of a JSON string (RFC 8259 §7): '"' and '\\' get a backslash,
 * control characters and DEL become \u00xx, every other byte (UTF-8
 * included) is copied.  At most max bytes are written, whole escapes only,
 * and writing stops while fewer than 6 of them are left: a value cut short
 * at max is the caller's choice; one cut short by a fixed buffer's cap is an
 * overflow.  SIZE_MAX: no limit. */
void str_json_escape(str_buf_t *b, const char *p, size_t n, size_t max);
/* Free a growing buffer's memory and empty it; a fixed one is only emptied. */
void str_buf_free(str_buf_t *b);

#endif

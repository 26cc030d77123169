/*
 * iobuf.h - fixed-size I/O buffers from a per-worker free list.
 *
 * A connection holds buffers only while bytes are in flight; an idle
 * keep-alive connection holds none, which is what keeps idle connections
 * cheap.  Data lives in [start, end); space is [end, IOBUF_SIZE).
 */
#ifndef PROXYD_IOBUF_H
#define PROXYD_IOBUF_H

#include <stddef.h>
#include <stdint.h>

#define IOBUF_SIZE 16384

typedef struct iobuf {
    uint32_t start, end;
    struct iobuf *next_free;
    char data[IOBUF_SIZE];
} iobuf_t;

iobuf_t *iobuf_get(void);
void iobuf_put(iobuf_t *b); /* NULL is fine */
static inline size_t iobuf_len(const iobuf_t *b) { return b ? b->end - b->start : 0; }
static inline size_t iobuf_space(const iobuf_t *b) { return IOBUF_SIZE - b->end; }
static inline char *iobuf_rd(iobuf_t *b) { return b->data + b->start; }
static inline char *iobuf_wr(iobuf_t *b) { return b->data + b->end; }
/* Move unread bytes to the front when that makes room. */
void iobuf_compact(iobuf_t *b);
/* Consume n bytes; an emptied buffer rewinds to 0. */
void iobuf_consume(iobuf_t *b, size_t n);

#endif

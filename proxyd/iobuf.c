/*
 * iobuf.c - buffer free list (see iobuf.h).  The list is bounded so that a
 * burst of large transfers does not pin memory forever: beyond IOBUF_KEEP
 * free buffers, buffers go back to malloc (which, for blocks this size,
 * returns them to the kernel with its trim threshold).
 */
#include "iobuf.h"

#include <stdlib.h>
#include <string.h>

#define IOBUF_KEEP 64

static iobuf_t *free_list;
static unsigned nfree;

iobuf_t *iobuf_get(void)
{
    iobuf_t *b = free_list;
    if (b) {
        free_list = b->next_free;
        nfree--;
    } else {
        b = malloc(sizeof(*b));
        if (b == NULL)
            return NULL;
    }
    b->start = b->end = 0;
    b->next_free = NULL;
    return b;
}

void iobuf_put(iobuf_t *b)
{
    if (b == NULL)
        return;
    if (nfree >= IOBUF_KEEP) {
        free(b);
        return;
    }
    b->next_free = free_list;
    free_list = b;
    nfree++;
}

void iobuf_compact(iobuf_t *b)
{
    if (b->start == 0)
        return;
    size_t n = b->end - b->start;
    memmove(b->data, b->data + b->start, n);
    b->start = 0;
    b->end = (uint32_t)n;
}

void iobuf_consume(iobuf_t *b, size_t n)
{
    b->start += (uint32_t)n;
    if (b->start == b->end)
        b->start = b->end = 0;
}

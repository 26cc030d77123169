/*
 * iobuf.c - buffer free list (see iobuf.h).
 *
 * Buffers are whole anonymous mappings, not heap blocks: only the pages a
 * transfer touches become resident (a 300-byte response costs one page, not
 * 16 KiB), and a buffer beyond the IOBUF_KEEP (256) cached ones goes straight back
 * to the kernel instead of fragmenting the heap of a long-lived worker.
 */
#include "core/iobuf.h"

#include <string.h>
#include <sys/mman.h>

#define IOBUF_KEEP 256

static iobuf_t *free_list;
static unsigned nfree;

iobuf_t *iobuf_get(void)
{
    iobuf_t *b = free_list;
    if (b) {
        free_list = b->next_free;
        nfree--;
    } else {
        b = mmap(NULL, sizeof(*b), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (b == MAP_FAILED)
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
        munmap(b, sizeof(*b));
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

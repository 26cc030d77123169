/*
 * fuzz_accept_encoding.c - Accept-Encoding parsing and the choice of a
 * coding (common/coding.c) against arbitrary field values.
 *
 * Input: byte 0 is the mask of offered codings (its low bits, CODING_BIT);
 * the rest is one or more field values separated by '\n' (a request may
 * carry several Accept-Encoding lines).  Each value is handed over in a
 * buffer of exactly its size, so ASan sees any read past it.  Invariants
 * checked on every input:
 *  - weights are within 0..1000;
 *  - the choice is identity or an offered coding with a weight above 0
 *    that no other offered coding beats, and a named identity beats it
 *    never;
 *  - the first weight given to a coding counts: parsing the same fields
 *    again changes no choice.
 */
#include "../../common/coding.c"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void parse_fields(coding_accept_t *a, const uint8_t *p, size_t n)
{
    while (n) {
        const uint8_t *nl = memchr(p, '\n', n);
        size_t k = nl ? (size_t)(nl - p) : n;
        char *copy = malloc(k ? k : 1);
        if (copy == NULL)
            abort();
        memcpy(copy, p, k);
        coding_accept_parse(a, copy, k);
        free(copy);
        p += k + (nl != NULL);
        n -= k + (nl != NULL);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    unsigned offered = data[0] & (CODING_BIT(CODING_GZIP) | CODING_BIT(CODING_ZSTD) | CODING_BIT(CODING_BR));
    coding_accept_t a;
    coding_accept_init(&a);
    parse_fields(&a, data + 1, size - 1);
    enum coding c = coding_choose(&a, offered);
    for (int i = 0; i < CODING_COUNT; i++)
        if (coding_weight(&a, (enum coding)i) > CODING_WEIGHT_MAX)
            abort();
    if (c != CODING_IDENTITY) {
        unsigned q = coding_weight(&a, c);
        if (!(offered & CODING_BIT(c)) || q == 0)
            abort();
        for (int i = CODING_GZIP; i < CODING_COUNT; i++)
            if ((offered & CODING_BIT(i)) && coding_weight(&a, (enum coding)i) > q)
                abort();
        if (a.q[CODING_IDENTITY] > (int)q)
            abort();
    }
    coding_accept_t twice = a;
    parse_fields(&twice, data + 1, size - 1);
    if (coding_choose(&twice, offered) != c)
        abort();
    return 0;
}

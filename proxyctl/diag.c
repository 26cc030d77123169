/*
 * diag.c - diagnostics collection and "did you mean" suggestions.
 */
#include "diag.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

struct diag_entry {
    pos_t at;
    int file_rank; /* order in which files were first reported */
    size_t seq;
    int is_error;
    char *msg;
};

static int file_rank(diag_t *d, const char *file)
{
    for (size_t i = 0; i < d->n; i++)
        if (strcmp(d->items[i].at.file, file) == 0)
            return d->items[i].file_rank;
    int max = -1;
    for (size_t i = 0; i < d->n; i++)
        if (d->items[i].file_rank > max)
            max = d->items[i].file_rank;
    return max + 1;
}

static void add(diag_t *d, int is_error, pos_t at, const char *fmt, va_list ap)
{
    if (d->n == d->cap) {
        d->cap = d->cap ? d->cap * 2 : 16;
        d->items = realloc(d->items, d->cap * sizeof(*d->items));
        if (d->items == NULL)
            abort();
    }
    va_list cp;
    va_copy(cp, ap);
    int len = vsnprintf(NULL, 0, fmt, cp);
    va_end(cp);
    char *msg = malloc((size_t)len + 1);
    if (msg == NULL)
        abort();
    vsnprintf(msg, (size_t)len + 1, fmt, ap);
    if (at.file == NULL)
        at.file = "<input>";
    diag_entry_t *e = &d->items[d->n];
    e->file_rank = file_rank(d, at.file);
    e->at = at;
    e->seq = d->n;
    e->is_error = is_error;
    e->msg = msg;
    d->n++;
    if (is_error)
        d->errors++;
    else
        d->warnings++;
}

void diag_error(diag_t *d, pos_t at, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    add(d, 1, at, fmt, ap);
    va_end(ap);
}

void diag_warning(diag_t *d, pos_t at, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    add(d, 0, at, fmt, ap);
    va_end(ap);
}

static int cmp(const void *a, const void *b)
{
    const diag_entry_t *x = a, *y = b;
    if (x->file_rank != y->file_rank)
        return x->file_rank - y->file_rank;
    if (x->at.line != y->at.line)
        return x->at.line - y->at.line;
    if (x->at.col != y->at.col)
        return x->at.col - y->at.col;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

void diag_print(const diag_t *d, FILE *out)
{
    if (d->n == 0)
        return;
    diag_entry_t *v = malloc(d->n * sizeof(*v));
    if (v == NULL)
        abort();
    memcpy(v, d->items, d->n * sizeof(*v));
    qsort(v, d->n, sizeof(*v), cmp);
    for (size_t i = 0; i < d->n; i++) {
        const diag_entry_t *e = &v[i];
        if (e->at.line > 0)
            fprintf(out, "%s:%d:%d: %s: %s\n", e->at.file, e->at.line, e->at.col,
                    e->is_error ? "error" : "warning", e->msg);
        else
            fprintf(out, "%s: %s: %s\n", e->at.file, e->is_error ? "error" : "warning", e->msg);
    }
    free(v);
}

void diag_free(diag_t *d)
{
    for (size_t i = 0; i < d->n; i++)
        free(d->items[i].msg);
    free(d->items);
    memset(d, 0, sizeof(*d));
}

/* Optimal string alignment distance (Levenshtein plus transpositions). */
static size_t distance(const char *a, const char *b)
{
    size_t n = strlen(a), m = strlen(b);
    if (n > 64 || m > 64)
        return 99;
    size_t d[65][65];
    for (size_t i = 0; i <= n; i++)
        d[i][0] = i;
    for (size_t j = 0; j <= m; j++)
        d[0][j] = j;
    for (size_t i = 1; i <= n; i++) {
        for (size_t j = 1; j <= m; j++) {
            size_t cost = a[i - 1] != b[j - 1];
            size_t best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best)
                best = d[i][j - 1] + 1;
            if (d[i - 1][j - 1] + cost < best)
                best = d[i - 1][j - 1] + cost;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    }
    return d[n][m];
}

const char *diag_suggest(const char *word, const char *const *cands, size_t n)
{
    const char *best = NULL;
    size_t bestd = 99, len = strlen(word);
    size_t limit = len < 4 ? 1 : len < 9 ? 2 : 3;
    for (size_t i = 0; i < n; i++) {
        size_t dd = distance(word, cands[i]);
        if (dd < bestd) {
            bestd = dd;
            best = cands[i];
        }
    }
    return bestd <= limit ? best : NULL;
}

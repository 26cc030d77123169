/*
 * diag.h - compiler-style diagnostics: "file:line:col: error: message".
 *
 * Every stage of proxyctl reports into one diag_t so that a run shows all of
 * its problems at once, ordered by file and position.
 */
#ifndef PROXYCTL_DIAG_H
#define PROXYCTL_DIAG_H

#include <stddef.h>
#include <stdio.h>

typedef struct {
    const char *file;
    int line, col;
} pos_t;

typedef struct diag_entry diag_entry_t;
typedef struct {
    diag_entry_t *items;
    size_t n, cap;
    int errors, warnings;
} diag_t;

void diag_error(diag_t *d, pos_t at, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void diag_warning(diag_t *d, pos_t at, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Print sorted by file (in order of first report), line and column. */
void diag_print(const diag_t *d, FILE *out);
void diag_free(diag_t *d);
/* The candidate closest to word if it is close enough to be a likely typo. */
const char *diag_suggest(const char *word, const char *const *cands, size_t n);

#endif

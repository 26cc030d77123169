/*
 * yaml.h - libyaml events turned into a small tree whose every node keeps
 * the file, line and column it came from (1-based), so that each later
 * diagnostic can point at its source.  Nodes live in the caller's arena.
 */
#ifndef PROXYCTL_YAML_H
#define PROXYCTL_YAML_H

#include <stdbool.h>
#include <stddef.h>

#include "../common/util.h"
#include "diag.h"

typedef enum { YN_SCALAR, YN_MAP, YN_SEQ } ynode_kind_t;

typedef struct ynode {
    ynode_kind_t kind;
    pos_t pos;
    /* scalar */
    char *s;
    size_t len;
    bool plain;  /* unquoted: may be null, bool or number */
    /* map: keys[i] -> vals[i]; seq: vals[i] */
    size_t n;
    struct ynode **keys, **vals;
} ynode_t;

/* Parse one YAML document.  Returns the root, or NULL after reporting every
 * problem into d (syntax errors, duplicate keys, several documents).  An
 * empty document yields an empty mapping. */
ynode_t *yaml_load(arena_t *a, const char *file, const char *text, size_t len, diag_t *d);

/* The value of key in a mapping, or NULL. */
ynode_t *yaml_get(const ynode_t *map, const char *key);
bool yaml_is_null(const ynode_t *n);
const char *yaml_kind_name(const ynode_t *n);
/* Same content (positions aside; a mapping's key order aside). */
bool yaml_equal(const ynode_t *a, const ynode_t *b);

#endif

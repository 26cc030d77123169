/*
 * yaml.c - YAML front end: libyaml's event stream into ynode_t trees.
 *
 * Aliases are resolved to the anchored node (shared, not copied).  Keys must
 * be scalars and unique within their mapping: a duplicate key is an error,
 * not the silent "last one wins" of many loaders.
 */
#include "yaml.h"

#include <string.h>

#include <yaml.h>

typedef struct {
    arena_t *a;
    const char *file;
    diag_t *d;
    yaml_parser_t p;
    struct anchor {
        char *name;
        ynode_t *node;
    } *anchors;
    size_t nanchors, capanchors;
    int depth;
} loader_t;

#define MAX_DEPTH 64

static pos_t pos_of(loader_t *l, yaml_mark_t m) { return (pos_t){l->file, (int)m.line + 1, (int)m.column + 1}; }

static void remember_anchor(loader_t *l, const yaml_char_t *name, ynode_t *node)
{
    if (name == NULL)
        return;
    if (l->nanchors == l->capanchors) {
        size_t cap = l->capanchors ? l->capanchors * 2 : 8;
        struct anchor *v = arena_alloc(l->a, cap * sizeof(*v));
        if (l->nanchors)
            memcpy(v, l->anchors, l->nanchors * sizeof(*v));
        l->anchors = v;
        l->capanchors = cap;
    }
    l->anchors[l->nanchors].name = arena_strdup(l->a, (const char *)name);
    l->anchors[l->nanchors++].node = node;
}

static ynode_t *find_anchor(loader_t *l, const yaml_char_t *name)
{
    for (size_t i = l->nanchors; i-- > 0;)
        if (strcmp(l->anchors[i].name, (const char *)name) == 0)
            return l->anchors[i].node;
    return NULL;
}

static int next_event(loader_t *l, yaml_event_t *ev)
{
    if (yaml_parser_parse(&l->p, ev))
        return 0;
    pos_t at = pos_of(l, l->p.problem_mark);
    if (l->p.context)
        diag_error(l->d, at, "YAML syntax: %s %s", l->p.problem ? l->p.problem : "error", l->p.context);
    else
        diag_error(l->d, at, "YAML syntax: %s", l->p.problem ? l->p.problem : "error");
    return -1;
}

/* A growable list of node pointers, in the arena. */
typedef struct {
    ynode_t **v;
    size_t n, cap;
} nodelist_t;

static void push(loader_t *l, nodelist_t *nl, ynode_t *n)
{
    if (nl->n == nl->cap) {
        size_t cap = nl->cap ? nl->cap * 2 : 8;
        ynode_t **v = arena_alloc(l->a, cap * sizeof(*v));
        if (nl->n)
            memcpy(v, nl->v, nl->n * sizeof(*v));
        nl->v = v;
        nl->cap = cap;
    }
    nl->v[nl->n++] = n;
}

static ynode_t *load_node(loader_t *l, yaml_event_t *ev);

static int load_children(loader_t *l, ynode_t *node, yaml_event_type_t end)
{
    nodelist_t keys = {0}, vals = {0};
    int rc = 0;
    for (;;) {
        yaml_event_t ev;
        if (next_event(l, &ev) < 0)
            return -1;
        if (ev.type == end) {
            yaml_event_delete(&ev);
            break;
        }
        ynode_t *child = load_node(l, &ev);
        yaml_event_delete(&ev);
        if (child == NULL)
            return -1;
        if (node->kind == YN_SEQ) {
            push(l, &vals, child);
            continue;
        }
        if (next_event(l, &ev) < 0)
            return -1;
        ynode_t *val = load_node(l, &ev);
        yaml_event_delete(&ev);
        if (val == NULL)
            return -1;
        if (child->kind != YN_SCALAR) {
            diag_error(l->d, child->pos, "mapping keys must be plain strings");
            rc = -1;
            continue;
        }
        ynode_t *prev = NULL;
        for (size_t i = 0; i < keys.n && prev == NULL; i++)
            if (keys.v[i]->len == child->len && memcmp(keys.v[i]->s, child->s, child->len) == 0)
                prev = keys.v[i];
        if (prev) {
            diag_error(l->d, child->pos, "duplicate key '%s' (first defined at line %d)", child->s, prev->pos.line);
            rc = -1;
            continue;
        }
        push(l, &keys, child);
        push(l, &vals, val);
    }
    node->keys = keys.v;
    node->vals = vals.v;
    node->n = vals.n;
    return rc;
}

static ynode_t *load_node(loader_t *l, yaml_event_t *ev)
{
    if (ev->type == YAML_ALIAS_EVENT) {
        ynode_t *n = find_anchor(l, ev->data.alias.anchor);
        if (n == NULL)
            diag_error(l->d, pos_of(l, ev->start_mark), "unknown alias '*%s'", ev->data.alias.anchor);
        return n;
    }
    ynode_t *n = arena_alloc(l->a, sizeof(*n));
    n->pos = pos_of(l, ev->start_mark);
    if (ev->type == YAML_SCALAR_EVENT) {
        n->kind = YN_SCALAR;
        n->len = ev->data.scalar.length;
        n->s = arena_strndup(l->a, (const char *)ev->data.scalar.value, n->len);
        n->plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
        remember_anchor(l, ev->data.scalar.anchor, n);
        return n;
    }
    if (ev->type != YAML_MAPPING_START_EVENT && ev->type != YAML_SEQUENCE_START_EVENT) {
        diag_error(l->d, n->pos, "unexpected YAML event");
        return NULL;
    }
    if (++l->depth > MAX_DEPTH) {
        diag_error(l->d, n->pos, "nesting deeper than %d levels", MAX_DEPTH);
        return NULL;
    }
    int is_map = ev->type == YAML_MAPPING_START_EVENT;
    n->kind = is_map ? YN_MAP : YN_SEQ;
    remember_anchor(l, is_map ? ev->data.mapping_start.anchor : ev->data.sequence_start.anchor, n);
    int rc = load_children(l, n, is_map ? YAML_MAPPING_END_EVENT : YAML_SEQUENCE_END_EVENT);
    l->depth--;
    return rc < 0 ? NULL : n;
}

static ynode_t *load_stream(loader_t *l)
{
    yaml_event_t ev;
    ynode_t *root = NULL;
    int docs = 0;
    for (;;) {
        if (next_event(l, &ev) < 0)
            return NULL;
        yaml_event_type_t t = ev.type;
        if (t == YAML_STREAM_END_EVENT) {
            yaml_event_delete(&ev);
            break;
        }
        if (t == YAML_DOCUMENT_START_EVENT && ++docs > 1) {
            diag_error(l->d, pos_of(l, ev.start_mark), "only one YAML document per file");
            yaml_event_delete(&ev);
            return NULL;
        }
        if (t == YAML_SCALAR_EVENT || t == YAML_MAPPING_START_EVENT || t == YAML_SEQUENCE_START_EVENT ||
            t == YAML_ALIAS_EVENT) {
            root = load_node(l, &ev);
            yaml_event_delete(&ev);
            if (root == NULL)
                return NULL;
            continue;
        }
        yaml_event_delete(&ev);
    }
    if (root == NULL || (root->kind == YN_SCALAR && root->plain && root->len == 0)) {
        root = arena_alloc(l->a, sizeof(*root));
        root->kind = YN_MAP;
        root->pos = (pos_t){l->file, 1, 1};
    }
    return root;
}

ynode_t *yaml_load(arena_t *a, const char *file, const char *text, size_t len, diag_t *d)
{
    loader_t l = {.a = a, .file = file, .d = d};
    int before = d->errors;
    if (!yaml_parser_initialize(&l.p)) {
        diag_error(d, (pos_t){file, 0, 0}, "cannot initialise the YAML parser");
        return NULL;
    }
    yaml_parser_set_input_string(&l.p, (const unsigned char *)text, len);
    ynode_t *root = load_stream(&l);
    yaml_parser_delete(&l.p);
    return d->errors > before ? NULL : root;
}

ynode_t *yaml_get(const ynode_t *map, const char *key)
{
    if (map == NULL || map->kind != YN_MAP)
        return NULL;
    for (size_t i = 0; i < map->n; i++)
        if (strcmp(map->keys[i]->s, key) == 0)
            return map->vals[i];
    return NULL;
}

bool yaml_is_null(const ynode_t *n)
{
    if (n->kind != YN_SCALAR || !n->plain)
        return false;
    return n->len == 0 || strcmp(n->s, "~") == 0 || strcmp(n->s, "null") == 0 || strcmp(n->s, "Null") == 0 ||
           strcmp(n->s, "NULL") == 0;
}

const char *yaml_kind_name(const ynode_t *n)
{
    if (n->kind == YN_MAP)
        return "a mapping";
    if (n->kind == YN_SEQ)
        return "a list";
    return "a scalar";
}

bool yaml_equal(const ynode_t *a, const ynode_t *b)
{
    if (a == NULL || b == NULL)
        return a == b;
    if (a->kind != b->kind || a->n != b->n)
        return false;
    if (a->kind == YN_SCALAR)
        return a->len == b->len && a->plain == b->plain && memcmp(a->s, b->s, a->len) == 0;
    /* Keys are unique (yaml_load refuses duplicates) and as many on both sides. */
    for (size_t i = 0; i < a->n; i++) {
        const ynode_t *bv = a->kind == YN_MAP ? yaml_get(b, a->keys[i]->s) : b->vals[i];
        if (bv == NULL || !yaml_equal(a->vals[i], bv))
            return false;
    }
    return true;
}

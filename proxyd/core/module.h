/*
 * module.h - what a module of proxyd may register: per-generation state
 * (init when a table is loaded, free when its last reference goes) and a
 * per-request context slot.  core/modules.c lists the modules in the order
 * their hooks run; the table loader calls the hooks and knows no module by
 * name (nginx's module array and ctx_index, for the same reason).
 */
#ifndef PROXYD_MODULE_H
#define PROXYD_MODULE_H

#include <stddef.h>

struct tref;
struct bundle;

/* Per-request context slots (request_t.ctx), one per module that wants one. */
enum module_ctx {
    MODULE_CTX_PROXY, MODULE_CTX_STATIC, MODULE_CTX_LIMIT, MODULE_CTX_COMPRESS, MODULE_CTX_CACHE, MODULE_CTX_SPOOL, MODULE_CTX_MAX
};

/* Per-generation state slots (tref_t.mod), in hook order. */
enum module_id {
    MOD_ROUTE,    /* http/phases.c: compiled route regexes */
    MOD_LIMIT,    /* http/limit.c: the table's rate-limit zones in the shared region */
    MOD_STATIC,   /* handlers/static_handler.c: static roots opened once */
    MOD_RESOLVE,  /* upstream/resolve.c: host-name servers and their addresses */
    MOD_BALANCE,  /* upstream/balance.c: balancing state */
    MOD_TLS,      /* conn/tls.c: server and upstream TLS contexts */
    MOD_HEALTH,   /* upstream/health.c: each server's shared health slot */
    MOD_POOL,     /* upstream/pool.c: each server's keep-alive pool */
    MOD_CACHE,    /* cache/index.c: the table's cache zones in the shared region */
    MOD_COUNT
};

typedef struct {
    /* The store's path, to resolve relative paths against; only the master
     * ever opens it. */
    const char *db;
    /* The generation as the master read it from the store: its certificates
     * (bundle_cert). */
    const struct bundle *bundle;
} module_load_t;

typedef struct module {
    const char *name;
    /* Derive this module's state for table t: 0, or -1 with a reason in err. */
    int (*table_init)(struct tref *t, const module_load_t *ld, char *err, size_t errlen);
    /* Free it (also after a failed init of this or a later module). */
    void (*table_free)(struct tref *t);
    /* The worker's life, so that it names no module: once before it serves
     * (0, or -1 to refuse to start; filters register here), after every
     * batch of events, when a reload made t its current table, when it
     * stops accepting and drains, and when its loop has ended. */
    int (*worker_init)(void);
    void (*worker_idle)(void);
    void (*worker_switch)(struct tref *t);
    void (*worker_drain)(void);
    void (*worker_exit)(void);
} module_t;

/* The registry (core/modules.c), NULL-terminated, in hook order. */
extern const module_t *const proxyd_modules[];

/* Run one worker hook of every module, in registry order. */
int modules_worker_init(void);
void modules_worker_idle(void);
void modules_worker_switch(struct tref *t);
void modules_worker_drain(void);
void modules_worker_exit(void);

#endif

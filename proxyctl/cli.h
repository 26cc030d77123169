/*
 * cli.h - what every proxyctl command shares: the parsed global options,
 * exit codes (SPEC §4), the command table entry, and the helpers that open
 * the store and rebuild a generation from the stored sources.
 */
#ifndef PROXYCTL_CLI_H
#define PROXYCTL_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "../common/store.h"
#include "diag.h"

enum { EXIT_OK = 0, EXIT_INVALID = 1, EXIT_USAGE = 2, EXIT_RUNTIME = 3 };

typedef struct {
    const char *db;   /* resolved store path */
    bool json;
    const char *cmdline; /* "add-site shop.yaml", for the events table */
} cli_t;

typedef struct {
    const char *name;
    int (*run)(cli_t *cli, int argc, char **argv);
    const char *usage;
    const char *help;    /* one line */
    const char *opts;    /* "--global= --json": every option it takes, '=' when it has a value */
    const char *details; /* the options explained, and what else --help says */
    const char *example; /* lines of examples */
} command_t;

/* A site source as stored: name, YAML text, file it came from. */
typedef struct {
    char *name, *yaml, *source;
} site_src_t;

typedef struct {
    site_src_t *v;
    size_t n, cap;
} site_list_t;

void site_list_add(site_list_t *l, const char *name, const char *yaml, const char *source);
void site_list_free(site_list_t *l);
/* Remove by name; returns 1 if one was removed. */
int site_list_remove(site_list_t *l, const char *name);

/* "proxyctl: CMD: <what is wrong>", then the usage line; returns EXIT_USAGE. */
int cli_usage(const command_t *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Between min and max arguments besides the command (--json not counted):
 * 0, else the usage error naming what is missing or the first one too many. */
int cli_arity(const command_t *cmd, int argc, char **argv, int min, int max, const char *missing);
/* "no site named 'shp' (did you mean 'shop'?)" against l's names, or the
 * stored ones; both return EXIT_INVALID. */
int site_list_unknown(const site_list_t *l, const char *name);
int cli_no_site(store_t *st, const char *name);
int cli_open_store(cli_t *cli, store_t *st, int flags);
/* Load the stored sites (in name order) and global settings. */
int cli_load_sites(store_t *st, site_list_t *out);
int cli_load_global(store_t *st, char **yaml, char **source);

/* Parse, check and compile global+sites; on success store them as the new
 * active generation inside the caller's transaction.  Diagnostics go to d;
 * returns EXIT_OK, EXIT_INVALID or EXIT_RUNTIME.  With unchanged given, a
 * table byte-identical to the active one's makes no generation: *gen is
 * the active one, *unchanged true (its recorded sources become these). */
int build_generation(store_t *st, const char *gyaml, const char *gsource, site_list_t *sites, const char *comment,
                     diag_t *d, int64_t *gen, size_t *table_size, bool *unchanged);
/* Replace the sites table and settings with sites/global (in the transaction). */
int store_put_sites(store_t *st, site_list_t *sites, const char *gyaml, const char *gsource);
/* Ask a running proxyd to reload; returns 0 when it did or none runs. */
int cli_notify_reload(cli_t *cli, store_t *st);
/* Tell a running proxyd to publish the store's ACME challenges now. */
void cli_notify_challenges(store_t *st);
/* As root: make the store (and its -wal/-shm) root's, mode 0600. */
void cli_store_private(const char *db);
/* A JSON string literal of s (RFC 8259 escaping). */
void cli_json_str(FILE *out, const char *s);

int cmd_init(cli_t *, int, char **);
int cmd_validate(cli_t *, int, char **);
int cmd_add_site(cli_t *, int, char **);
int cmd_remove_site(cli_t *, int, char **);
int cmd_list_sites(cli_t *, int, char **);
int cmd_show_site(cli_t *, int, char **);
int cmd_apply(cli_t *, int, char **);
int cmd_generations(cli_t *, int, char **);
int cmd_rollback(cli_t *, int, char **);
int cmd_dump(cli_t *, int, char **);
int cmd_route_test(cli_t *, int, char **);
int cmd_renew_cert(cli_t *, int, char **);
int cmd_certs(cli_t *, int, char **);
int cmd_reload(cli_t *, int, char **);
int cmd_status(cli_t *, int, char **);
int cmd_ha(cli_t *, int, char **);
/* In an HA pair and not MASTER (keepalived's last report): no renewals here. */
bool ha_is_backup(store_t *st);
int cmd_health(cli_t *, int, char **);
int cmd_cache(cli_t *, int, char **);

extern const command_t commands[];
const command_t *find_command(const char *name);

#endif

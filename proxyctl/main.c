/*
 * main.c - proxyctl's entry point: global options, then a command table in
 * the manner of git's builtins (name, handler, usage, one-line help).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

const command_t commands[] = {
    {"init", cmd_init, "init [--global proxy.yaml]", "create or migrate the store; set the global settings"},
    {"validate", cmd_validate, "validate [--global proxy.yaml] FILE...", "check site files; nothing is stored"},
    {"add-site", cmd_add_site,
     "add-site FILE.yaml | add-site NAME --host H [--host H...] --upstream ADDR [--upstream ADDR...] [--tls acme|self-signed]",
     "validate and store a site, compile and activate a new generation"},
    {"remove-site", cmd_remove_site, "remove-site NAME", "remove a site and activate a new generation"},
    {"list-sites", cmd_list_sites, "list-sites [--json]", "list the stored sites"},
    {"show-site", cmd_show_site, "show-site NAME", "print a stored site's YAML"},
    {"apply", cmd_apply, "apply [--global proxy.yaml] [DIR|FILE...]",
     "make the stored sites equal to DIR (default ./sites) or the files, in one generation"},
    {"generations", cmd_generations, "generations [--json]", "list generations"},
    {"rollback", cmd_rollback, "rollback [GEN]", "activate a copy of GEN (default: the one before the active one)"},
    {"dump", cmd_dump, "dump [GEN]", "decode a rule table (default: the active one) to text"},
    {"route-test", cmd_route_test, "route-test URL [-X METHOD] [-H 'K: V']... [--json]",
     "explain which site, route, upstream and policies a request gets"},
    {"renew-cert", cmd_renew_cert, "renew-cert [SITE...|--all|--due] [--force] [--dry-run]",
     "obtain or renew certificates (ACME HTTP-01, self-signed)"},
    {"certs", cmd_certs, "certs [--json]", "hosts, source, issuer, not-after and days left per certificate"},
    {"reload", cmd_reload, "reload", "ask the running proxyd to reload the active generation"},
    {"status", cmd_status, "status [--json]", "show proxyd's generation, workers and upstream health"},
    {"cache", cmd_cache, "cache stats [--json] | cache purge SITE [PATH-PREFIX]",
     "the running proxyd's cache zones: size, entries, hit ratio; remove a site's entries"},
    {"health", cmd_health, "health", "exit 0 when the local proxyd is serving (keepalived's track script)"},
    {"ha", cmd_ha,
     "ha init [--issue NODE --out FILE | --join FILE] | ha render [--out FILE] [--proxyd PATH] [--template FILE] | "
     "ha notify MASTER|BACKUP|FAULT|STOP | ha sync [--force]",
     "HA pair: cluster CA and node certificates, keepalived.conf, VRRP role, pull the peer's state"},
    {NULL, NULL, NULL, NULL},
};

const command_t *find_command(const char *name)
{
    for (const command_t *c = commands; c->name; c++)
        if (strcmp(c->name, name) == 0)
            return c;
    return NULL;
}

static void usage(FILE *out)
{
    fprintf(out, "usage: proxyctl [--db PATH] COMMAND [ARGS...]\n\n"
                 "The store is --db, else $PROXYD_DB, else /var/lib/proxyd/store.db as root\n"
                 "and ./var/store.db otherwise.\n\ncommands:\n");
    for (const command_t *c = commands; c->name; c++)
        fprintf(out, "  %-12s %s\n", c->name, c->help);
    fprintf(out, "\n'proxyctl COMMAND --help' describes a command.\n"
                 "exit codes: 0 ok, 1 invalid input, 2 usage error, 3 runtime error\n");
}

int cli_usage(const command_t *cmd)
{
    fprintf(stderr, "usage: proxyctl %s\n", cmd->usage);
    return EXIT_USAGE;
}

static const char *default_db(void)
{
    const char *env = getenv("PROXYD_DB");
    if (env && *env)
        return env;
    return geteuid() == 0 ? "/var/lib/proxyd/store.db" : "./var/store.db";
}

static char *join_args(int argc, char **argv)
{
    size_t n = 1;
    for (int i = 0; i < argc; i++)
        n += strlen(argv[i]) + 1;
    char *s = calloc(1, n);
    if (s == NULL)
        abort();
    for (int i = 0; i < argc; i++) {
        if (i)
            strcat(s, " ");
        strcat(s, argv[i]);
    }
    return s;
}

int main(int argc, char **argv)
{
    cli_t cli = {default_db(), false, NULL};
    int i = 1;
    umask(077); /* the store and everything proxyctl writes holds secrets */
    signal(SIGPIPE, SIG_IGN); /* a peer or proxyd closing on us is an error to report, not a death */
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "--db") == 0 && i + 1 < argc) {
            cli.db = argv[++i];
        } else if (strncmp(argv[i], "--db=", 5) == 0) {
            cli.db = argv[i] + 5;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return EXIT_OK;
        } else {
            fprintf(stderr, "proxyctl: unknown option '%s'\n", argv[i]);
            usage(stderr);
            return EXIT_USAGE;
        }
    }
    if (i == argc) {
        usage(stderr);
        return EXIT_USAGE;
    }
    const command_t *cmd = find_command(argv[i]);
    if (cmd == NULL) {
        fprintf(stderr, "proxyctl: unknown command '%s'\n", argv[i]);
        usage(stderr);
        return EXIT_USAGE;
    }
    for (int k = i + 1; k < argc; k++) {
        if (strcmp(argv[k], "--help") == 0 || strcmp(argv[k], "-h") == 0) {
            printf("usage: proxyctl %s\n\n%s\n", cmd->usage, cmd->help);
            return EXIT_OK;
        }
        if (strcmp(argv[k], "--json") == 0)
            cli.json = true;
    }
    char *line = join_args(argc - i, argv + i);
    cli.cmdline = line;
    int rc = cmd->run(&cli, argc - i, argv + i);
    free(line);
    return rc;
}

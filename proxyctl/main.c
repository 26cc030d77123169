/*
 * main.c - proxyctl's entry point: global options, then a command table in
 * the manner of git's builtins (name, handler, usage, one-line help, the
 * options it takes, what they do, examples).  Usage errors are decided here
 * where they can be (unknown command or option, with a suggestion) and say
 * what is wrong before the usage line; exit code 2.
 */
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

#ifndef PROXYD_VERSION
#error "PROXYD_VERSION comes from the VERSION file through the Makefile"
#endif

/*
 * The command table.  opts lists every option a command (or subcommand)
 * takes, "=" marking one that takes a value: main checks them all before
 * the command runs, so an unknown or misspelt option is a usage error with
 * a suggestion wherever it is.  Subcommands ("ha init") have entries of
 * their own, for their --help and usage errors; run is NULL there.
 */
const command_t commands[] = {
    {"init", cmd_init, "init [--global proxy.yaml]", "create or migrate the store; set the global settings", "--global=",
     "  --global FILE   the global settings (proxy.yaml) to store with the new generation\n"
     "The store is created 0600 (WAL); an existing one is migrated. With no --global and an active\n"
     "generation nothing else changes.",
     "proxyctl init --global /etc/proxyd/proxy.yaml"},
    {"validate", cmd_validate, "validate [--global proxy.yaml] FILE...", "check site files; nothing is stored", "--global=",
     "  --global FILE   check against these global settings instead of the stored ones\n"
     "Each FILE is checked against the stored sites too (host conflicts, zones). A proxy.yaml is\n"
     "not a site file: pass it with --global.",
     "proxyctl validate sites/shop.yaml\nproxyctl validate --global proxy.yaml sites/*.yaml"},
    {"add-site", cmd_add_site,
     "add-site FILE.yaml | add-site NAME --host H [--host H...] --upstream ADDR [--upstream ADDR...] [--tls acme|self-signed]",
     "validate and store a site, compile and activate a new generation", "--host= --upstream= --tls=",
     "  --host H          a host name of the site (repeatable; flag form)\n"
     "  --upstream ADDR   a server of its one upstream, host:port or unix:/path (repeatable)\n"
     "  --tls MODE        acme or self-signed (default: none)\n"
     "A site of the same name is replaced. A running proxyd is told to reload.",
     "proxyctl add-site sites/shop.yaml\nproxyctl add-site blog --host blog.example.com --upstream 127.0.0.1:3000 --tls acme"},
    {"remove-site", cmd_remove_site, "remove-site SITE", "remove a site and activate a new generation", "", "",
     "proxyctl remove-site shop"},
    {"list-sites", cmd_list_sites, "list-sites [--json]", "list the stored sites", "--json",
     "  --json   a JSON array (empty when there are no sites)\n"
     "With no sites the text form says so on stderr and exits 0.",
     "proxyctl list-sites\nproxyctl list-sites --json"},
    {"show-site", cmd_show_site, "show-site SITE", "print a stored site's YAML", "", "", "proxyctl show-site shop"},
    {"apply", cmd_apply, "apply [--global proxy.yaml] [--dry-run] [--force] [DIR|FILE...]",
     "make the stored sites equal to DIR (default ./sites) or the files, in one generation",
     "--global= --dry-run --force",
     "  --global FILE   the global settings (default: a proxy.yaml in DIR, else the stored ones)\n"
     "  --dry-run       print what would be added, removed and changed; store nothing\n"
     "  --force         allow removing more than half of the stored sites\n"
     "Prints per site: '+ NAME' added, '- NAME' removed, '~ NAME (keys...)' changed. Refuses\n"
     "(exit 1) to remove more than half of the stored sites without --force. When the compiled\n"
     "table is the active one's, no generation is made.",
     "proxyctl apply --dry-run /etc/proxyd/sites\nproxyctl apply /etc/proxyd/sites"},
    {"generations", cmd_generations, "generations [--json] | generations prune --keep N",
     "list generations; delete old ones", "--json",
     "  --json   a JSON array\n"
     "'generations prune --keep N' deletes all but the newest N (see 'proxyctl generations prune --help').",
     "proxyctl generations\nproxyctl generations prune --keep 10"},
    {"generations prune", NULL, "generations prune --keep N", "delete all but the newest N generations", "--keep=",
     "  --keep N   how many of the newest generations to keep (N >= 1)\n"
     "The active generation and the one 'rollback' with no argument goes to are never deleted.\n"
     "Every new generation also prunes to the newest 50.",
     "proxyctl generations prune --keep 10"},
    {"rollback", cmd_rollback, "rollback [GEN]", "activate a copy of GEN (default: the one before the active one)", "",
     "GEN is a number from 'proxyctl generations'. The stored sites become GEN's.",
     "proxyctl rollback\nproxyctl rollback 12"},
    {"dump", cmd_dump, "dump [--json] [GEN]", "decode a rule table (default: the active one) to text or JSON", "--json",
     "  --json   the table as JSON (global settings, sites, routes, upstreams)",
     "proxyctl dump\nproxyctl dump --json 12"},
    {"route-test", cmd_route_test, "route-test URL [-X METHOD] [-H 'K: V']... [--json]",
     "explain which site, route, upstream and policies a request gets", "-X= -H= --json",
     "  -X METHOD   the request method (default GET)\n"
     "  -H 'K: V'   a request header (Host overrides the URL's; Accept-Encoding is used)\n"
     "  --json      the same as JSON, every policy included",
     "proxyctl route-test https://shop.example.com/api/users -X POST\n"
     "proxyctl route-test http://127.0.0.1/ -H 'Host: shop.example.com' --json"},
    {"renew-cert", cmd_renew_cert, "renew-cert [SITE...|--all|--due] [--force] [--dry-run]",
     "obtain or renew certificates (ACME HTTP-01, self-signed)", "--all --due --force --dry-run",
     "  --all       every site with a certificate\n"
     "  --due       those within acme.renew_before of expiry (the timer's choice)\n"
     "  --force     renew even when not due\n"
     "  --dry-run   say what would be renewed",
     "proxyctl renew-cert --due\nproxyctl renew-cert shop --force"},
    {"certs", cmd_certs, "certs [--json]", "hosts, source, issuer, not-after and days left per certificate", "--json",
     "  --json   a JSON array", "proxyctl certs"},
    {"reload", cmd_reload, "reload", "ask the running proxyd to reload the active generation", "",
     "Exit 3 when proxyd is not running.", "proxyctl reload"},
    {"status", cmd_status, "status [--json]",
     "proxyd's generation, workers, connections, upstream health, certificates due, HA role", "--json",
     "  --json   the admin socket's /status JSON as it is\n"
     "Exit 3 when proxyd is not running.",
     "proxyctl status\nproxyctl status --json"},
    {"cache", cmd_cache, "cache stats [--json] | cache purge SITE [PATH-PREFIX]",
     "the running proxyd's cache zones: size, entries, hit ratio; remove a site's entries", "--json",
     "See 'proxyctl cache stats --help' and 'proxyctl cache purge --help'.",
     "proxyctl cache stats\nproxyctl cache purge shop /static/"},
    {"cache stats", NULL, "cache stats [--json]", "size, entries and hit ratio per cache zone", "--json",
     "  --json   the admin socket's /cache/stats JSON", "proxyctl cache stats"},
    {"cache purge", NULL, "cache purge SITE [PATH-PREFIX]", "remove a site's cached entries (under PATH-PREFIX)",
     "--json", "  --json   the answer as JSON", "proxyctl cache purge shop\nproxyctl cache purge shop /static/"},
    {"health", cmd_health, "health", "exit 0 when the local proxyd is serving (keepalived's track script)", "",
     "Exit 3 when proxyd does not answer within 5 s.", "proxyctl health && echo serving"},
    {"ha", cmd_ha,
     "ha init [--issue NODE --out FILE | --join FILE] | ha render [--out FILE] [--proxyd PATH] [--template FILE] | "
     "ha notify MASTER|BACKUP|FAULT|STOP | ha sync [--force]",
     "HA pair: cluster CA and node certificates, keepalived.conf, VRRP role, pull the peer's state",
     "--issue= --out= --join= --proxyd= --template= --force",
     "Subcommands: init, render, notify, sync ('proxyctl ha SUBCOMMAND --help').",
     "proxyctl ha init\nproxyctl ha render --out /etc/keepalived/keepalived.conf"},
    {"ha init", NULL, "ha init [--issue NODE --out FILE | --join FILE]",
     "create the pair's cluster CA and this node's certificate; issue or import the peer's", "--issue= --out= --join=",
     "  --issue NODE   make a join bundle (CA + NODE's certificate and key) for the peer\n"
     "  --out FILE     where to write it (with --issue)\n"
     "  --join FILE    import a bundle made on the other node",
     "proxyctl ha init\nproxyctl ha init --issue lb1 --out lb1.bundle\nproxyctl ha init --join lb1.bundle"},
    {"ha render", NULL, "ha render [--out FILE] [--proxyd PATH] [--template FILE]",
     "keepalived.conf for this node from the proxy.yaml ha block", "--out= --proxyd= --template=",
     "  --out FILE        write there (default: stdout)\n"
     "  --proxyd PATH     proxyd's path in the track script\n"
     "  --template FILE   another template than the built-in templates/keepalived.conf.in",
     "proxyctl ha render --out /etc/keepalived/keepalived.conf"},
    {"ha notify", NULL, "ha notify MASTER|BACKUP|FAULT|STOP", "record a VRRP transition (keepalived's notify script)",
     "", "", "proxyctl ha notify MASTER"},
    {"ha sync", NULL, "ha sync [--force]", "pull the peer's state now", "--force",
     "  --force   pull even when the peer's serial is not newer", "proxyctl ha sync"},
    {NULL, NULL, NULL, NULL, NULL, NULL, NULL},
};

const command_t *find_command(const char *name)
{
    for (const command_t *c = commands; c->name; c++)
        if (strcmp(c->name, name) == 0)
            return c;
    return NULL;
}

/* "ha" and "init" -> the "ha init" entry, or NULL. */
static const command_t *find_subcommand(const command_t *cmd, const char *sub)
{
    char name[64];
    snprintf(name, sizeof(name), "%s %s", cmd->name, sub);
    return find_command(name);
}

static void usage(FILE *out)
{
    fprintf(out, "usage: proxyctl [--db PATH] COMMAND [ARGS...]\n"
                 "       proxyctl --version | --help\n\n"
                 "The store is --db, else $PROXYD_DB, else /var/lib/proxyd/store.db as root\n"
                 "and ./var/store.db otherwise.\n\ncommands:\n");
    for (const command_t *c = commands; c->name; c++)
        if (c->run)
            fprintf(out, "  %-12s %s\n", c->name, c->help);
    fprintf(out, "\n'proxyctl COMMAND --help' describes a command, its options and examples.\n"
                 "exit codes: 0 ok, 1 invalid input, 2 usage error, 3 runtime error\n");
}

static void command_help(const command_t *cmd)
{
    printf("usage: proxyctl %s\n\n%s\n", cmd->usage, cmd->help);
    if (*cmd->details)
        printf("\n%s\n", cmd->details);
    printf("\nexample%s:\n", strchr(cmd->example, '\n') ? "s" : "");
    for (const char *p = cmd->example; *p;) {
        const char *nl = strchr(p, '\n');
        int n = nl ? (int)(nl - p) : (int)strlen(p);
        printf("  %.*s\n", n, p);
        p += n + (nl != NULL);
    }
}

/* The usage error: what is wrong, then the usage line; exit code 2. */
int cli_usage(const command_t *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "proxyctl: %s: ", cmd->name);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nusage: proxyctl %s\n(see 'proxyctl %s --help')\n", cmd->usage, cmd->name);
    return EXIT_USAGE;
}

int cli_arity(const command_t *cmd, int argc, char **argv, int min, int max, const char *missing)
{
    int n = 0, first_extra = -1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            continue;
        if (++n > max && first_extra < 0)
            first_extra = i;
    }
    if (n < min)
        return cli_usage(cmd, "missing %s", missing);
    if (first_extra >= 0)
        return cli_usage(cmd, "unexpected argument '%s'", argv[first_extra]);
    return 0;
}

/* Does cmd's option list have name (and does it take a value)? */
static bool option_known(const char *opts, const char *name, bool *takes_value)
{
    size_t n = strlen(name);
    for (const char *p = opts; (p = strstr(p, name)) != NULL; p += n) {
        bool starts = p == opts || p[-1] == ' ';
        if (starts && (p[n] == ' ' || p[n] == '\0' || p[n] == '=')) {
            *takes_value = p[n] == '=';
            return true;
        }
    }
    return false;
}

static const char *option_suggest(const char *opts, const char *name)
{
    char buf[256], *save = NULL;
    const char *cands[16];
    size_t n = 0;
    snprintf(buf, sizeof(buf), "%s", opts);
    for (char *t = strtok_r(buf, " ", &save); t && n < 16; t = strtok_r(NULL, " ", &save)) {
        t[strcspn(t, "=")] = '\0';
        cands[n++] = t;
    }
    const char *s = diag_suggest(name, cands, n);
    static char out[64];
    if (s == NULL)
        return NULL;
    snprintf(out, sizeof(out), "%s", s);
    return out;
}

/* Every option of the command line is one the command takes (with its
 * value when it needs one), before the command runs. */
static int check_options(const command_t *cmd, int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] != '-' || a[1] == '\0')
            continue;
        bool takes_value = false;
        if (!option_known(cmd->opts, a, &takes_value)) {
            const char *s = option_suggest(cmd->opts, a);
            if (s)
                return cli_usage(cmd, "unknown option '%s' (did you mean '%s'?)", a, s);
            return cli_usage(cmd, "unknown option '%s'", a);
        }
        if (takes_value && ++i >= argc)
            return cli_usage(cmd, "option '%s' needs a value", a);
    }
    return 0;
}

static int unknown_command(const char *name)
{
    const char *cands[64] = {"version"};
    size_t n = 1;
    for (const command_t *c = commands; c->name && n < 64; c++)
        if (c->run)
            cands[n++] = c->name;
    const char *s = diag_suggest(name, cands, n);
    if (s)
        fprintf(stderr, "proxyctl: unknown command '%s' (did you mean '%s'?)\n", name, s);
    else
        fprintf(stderr, "proxyctl: unknown command '%s'\n", name);
    fprintf(stderr, "usage: proxyctl [--db PATH] COMMAND [ARGS...] ('proxyctl --help' lists the commands)\n");
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
        } else if (strcmp(argv[i], "--version") == 0 || strcmp(argv[i], "-V") == 0) {
            printf("proxyctl %s\n", PROXYD_VERSION);
            return EXIT_OK;
        } else {
            static const char *const globals[] = {"--db", "--help", "--version"};
            const char *s = diag_suggest(argv[i], globals, 3);
            fprintf(stderr, "proxyctl: unknown option '%s'%s%s%s\n", argv[i], s ? " (did you mean '" : "", s ? s : "",
                    s ? "'?)" : "");
            fprintf(stderr, "usage: proxyctl [--db PATH] COMMAND [ARGS...] ('proxyctl --help' lists the commands)\n");
            return EXIT_USAGE;
        }
    }
    if (i == argc) {
        fprintf(stderr, "proxyctl: missing COMMAND\n");
        usage(stderr);
        return EXIT_USAGE;
    }
    if (strcmp(argv[i], "version") == 0 && i + 1 == argc) {
        printf("proxyctl %s\n", PROXYD_VERSION);
        return EXIT_OK;
    }
    const command_t *cmd = find_command(argv[i]);
    if (cmd == NULL || cmd->run == NULL)
        return unknown_command(argv[i]);
    /* A subcommand's own entry, for its --help, options and usage errors. */
    const command_t *sub = i + 1 < argc && argv[i + 1][0] != '-' ? find_subcommand(cmd, argv[i + 1]) : NULL;
    const command_t *about = sub ? sub : cmd;
    for (int k = i + 1; k < argc; k++) {
        if (strcmp(argv[k], "--help") == 0 || strcmp(argv[k], "-h") == 0) {
            command_help(about);
            return EXIT_OK;
        }
        if (strcmp(argv[k], "--json") == 0)
            cli.json = true;
    }
    int rc = check_options(about, argc - i - (sub != NULL), argv + i + (sub != NULL));
    if (rc != 0)
        return rc;
    char *line = join_args(argc - i, argv + i);
    cli.cmdline = line;
    rc = cmd->run(&cli, argc - i, argv + i);
    free(line);
    return rc;
}

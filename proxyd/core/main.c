/*
 * main.c - proxyd's entry point.
 *
 *   proxyd [--db PATH] [--foreground] [--workers N] [--check] [--debug]
 *
 * The store is --db, else $PROXYD_DB, else /var/lib/proxyd/store.db as root
 * and ./var/store.db otherwise (as proxyctl).  --check verifies the active
 * generation and what it refers to, prints "configuration OK" or the
 * reason, and exits.  --debug also logs every connection's close reason
 * (the counts by reason are in /metrics either way).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/log.h"
#include "../common/util.h"
#include "http/accesslog.h"
#include "core/master.h"

static void usage(FILE *out)
{
    fprintf(out, "usage: proxyd [--db PATH] [--foreground] [--workers N] [--check] [--debug] | --version\n");
}

static int daemonize(void)
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid > 0)
        _exit(0);
    if (setsid() < 0)
        return -1;
    int fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (fd >= 0) {
        dup2(fd, 0);
        dup2(fd, 1);
        close(fd);
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *db = getenv("PROXYD_DB");
    bool foreground = false, check = false;
    int workers = 0;
    if (db == NULL || *db == '\0')
        db = geteuid() == 0 ? "/var/lib/proxyd/store.db" : "./var/store.db";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--db") == 0 && i + 1 < argc)
            db = argv[++i];
        else if (strcmp(argv[i], "--foreground") == 0)
            foreground = true;
        else if (strcmp(argv[i], "--check") == 0)
            check = true;
        else if (strcmp(argv[i], "--debug") == 0)
            log_set_level(LOG_DEBUG);
        else if (strcmp(argv[i], "--workers") == 0 && i + 1 < argc && (workers = atoi(argv[i + 1])) > 0)
            i++;
        else if (strcmp(argv[i], "--version") == 0) {
            printf("proxyd %s\n", PROXYD_VERSION);
            return 0;
        } else if (strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    char err[512];
    tref_t *t = tref_load(db, 0, err, sizeof(err));
    if (t == NULL) {
        fprintf(stderr, "proxyd: %s\n", err);
        return 1;
    }
    struct passwd *pw;
    if (worker_account(rt_cstr(&t->t, t->t.global->user), &pw, err, sizeof(err)) < 0) {
        /* The table is fine, the machine is not (yet): --check says so, a start refuses. */
        fprintf(stderr, "proxyd: %s%s\n", check ? "warning: started as root, " : "", err);
        if (!check) {
            tref_put(t);
            return 1;
        }
    }
    if (check) {
        printf("configuration OK: generation %lld, %u sites, %u routes, %zu bytes\n", (long long)t->generation,
               t->t.nsites, t->t.nroutes, t->len);
        tref_put(t);
        return 0;
    }
    const rt_global_t *g = t->t.global;
    char *elog = path_beside(db, rt_cstr(&t->t, g->error_log_path));
    const char *access = rt_cstr(&t->t, g->access_log_path);
    char *alog = strcmp(access, "off") == 0 ? strdup(access) : path_beside(db, access);
    char why[4200];
    if (elog == NULL || alog == NULL) {
        fprintf(stderr, "proxyd: out of memory\n");
        return 1;
    }
    if (log_open(elog, why, sizeof(why)) < 0) {
        fprintf(stderr, "proxyd: error log (proxy.yaml logs.error): %s\n", why);
        return 1;
    }
    if (accesslog_open(alog, &t->t, why, sizeof(why)) < 0) {
        fprintf(stderr, "proxyd: access log (proxy.yaml logs.access): %s\n", why);
        return 1;
    }
    free(elog);
    free(alog);
    if (!foreground && getenv("PROXYD_UPGRADE_FD") == NULL && daemonize() < 0) {
        fprintf(stderr, "proxyd: cannot daemonize: %s\n", strerror(errno));
        return 1;
    }
    return master_main(db, t, workers, argv);
}

/*
 * log.c - error log (see log.h).  Each line is built whole and written with
 * one write(2), so lines from several processes never interleave.  Under
 * systemd (JOURNAL_STREAM set) every line is also a structured journal
 * entry, whether or not logs.error names a file: the file is for the
 * operator's tools, the journal for systemctl status and journalctl -u.
 */
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-journal.h>
/* sd-journal.h brings syslog.h, whose LOG_ERR, LOG_INFO and LOG_DEBUG macros
 * (3, 6, 7) would stand for log.h's levels below: log_max_level = LOG_INFO
 * made it 6, and every log_debug line (compared with log.h's LOG_DEBUG, 3)
 * was written without --debug. */
#undef LOG_ERR
#undef LOG_INFO
#undef LOG_DEBUG

#include "util.h"

static int log_fd = 2;
static int journal;          /* structured entries to journald too */
static char log_path[4096];  /* "" = stderr */
static char ident[32] = "proxyd";
enum log_level log_max_level = LOG_INFO;

void log_set_level(enum log_level lvl) { log_max_level = lvl; }

bool log_limited(log_limit_t *l, unsigned long *left_out)
{
    long now = (long)time(NULL);
    if (now == l->last) {
        l->quiet++;
        return false;
    }
    *left_out = l->quiet;
    l->last = now;
    l->quiet = 0;
    return true;
}

int log_open_file(const char *path, char *why, size_t cap)
{
    char dir[4096];
    if (mkdir_parents(path, 0750, dir, sizeof(dir)) < 0) {
        snprintf(why, cap, "cannot create directory %s: %s", dir, strerror(errno));
        return -1;
    }
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0)
        snprintf(why, cap, "cannot open %s: %s", path, strerror(errno));
    return fd;
}

int log_open(const char *path, char *why, size_t cap)
{
    /* Under systemd stderr is a journal stream: send structured entries. */
    journal = getenv("JOURNAL_STREAM") != NULL;
    if (path == NULL || *path == '\0') {
        log_fd = 2;
        log_path[0] = '\0';
        return 0;
    }
    int fd = log_open_file(path, why, cap);
    if (fd < 0)
        return -1;
    if (log_fd > 2)
        close(log_fd);
    log_fd = fd;
    snprintf(log_path, sizeof(log_path), "%s", path);
    return 0;
}

int log_reopen(char *why, size_t cap)
{
    if (log_path[0] == '\0')
        return log_fd;
    int fd = log_open_file(log_path, why, cap);
    if (fd < 0)
        return -1;
    log_take_fd(fd);
    return log_fd;
}

void log_take_fd(int fd)
{
    if (log_fd > 2 && fd != log_fd) {
        /* The same number from now on: nothing else holds it. */
        if (dup3(fd, log_fd, O_CLOEXEC) == 0)
            close(fd);
    } else {
        log_fd = fd;
    }
}

void log_set_ident(const char *s) { snprintf(ident, sizeof(ident), "%s", s); }

void log_msg(enum log_level lvl, const char *fmt, ...)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    char line[2048];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    size_t n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%SZ", &tm);
    n += (size_t)snprintf(line + n, sizeof(line) - n, " [%s] %s: ", names[lvl], ident);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - n - 1, fmt, ap);
    va_end(ap);
    if (journal) {
        static const int prio[] = {3, 4, 6, 7}; /* syslog levels of err, warning, info, debug */
        sd_journal_send("MESSAGE=%s", line + n, "PRIORITY=%d", prio[lvl], "SYSLOG_IDENTIFIER=proxyd",
                        "PROXYD_PROCESS=%s", ident, NULL);
        if (log_path[0] == '\0')
            return; /* stderr is the journal stream: the entry is there already */
    }
    n = m < 0 ? n : n + (size_t)m >= sizeof(line) - 1 ? sizeof(line) - 2 : n + (size_t)m;
    line[n++] = '\n';
    ssize_t w = write(log_fd, line, n);
    (void)w;
}

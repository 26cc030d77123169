/*
 * log.c - error log (see log.h).  Each line is built whole and written with
 * one write(2), so lines from several processes never interleave.
 */
#include "log.h"

#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-journal.h>

static int log_fd = 2;
static int journal; /* structured entries to journald instead of text lines */
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

int log_open(const char *path)
{
    if (path == NULL || *path == '\0') {
        /* Under systemd stderr is a journal stream: send structured entries instead. */
        journal = getenv("JOURNAL_STREAM") != NULL;
        log_fd = 2;
        return 0;
    }
    journal = 0;
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0)
        return -1;
    if (log_fd > 2)
        close(log_fd);
    log_fd = fd;
    return 0;
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
        return;
    }
    n = m < 0 ? n : n + (size_t)m >= sizeof(line) - 1 ? sizeof(line) - 2 : n + (size_t)m;
    line[n++] = '\n';
    ssize_t w = write(log_fd, line, n);
    (void)w;
}

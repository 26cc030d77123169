/*
 * log.h - the error log: one line per event, "TIME [level] who: message",
 * to stderr or to a file opened O_APPEND (shared safely by every process).
 */
#ifndef COMMON_LOG_H
#define COMMON_LOG_H

#include <stdbool.h>
#include <stddef.h>

enum log_level { LOG_ERR, LOG_WARN, LOG_INFO, LOG_DEBUG };

/* path NULL or "" logs to stderr.  The file's directories are made as
 * needed.  Returns 0, or -1 with the reason (naming the path) in why. */
int log_open(const char *path, char *why, size_t cap);
/* Open path for appending (O_APPEND, 0640), making its directories: the
 * descriptor, or -1 with the reason in why. */
int log_open_file(const char *path, char *why, size_t cap);
/* SIGUSR1 in the master: open the file again (it was moved by logrotate);
 * the new descriptor (to hand to the workers), the stderr one when there is
 * no file, or -1 with why (the old file is kept). */
int log_reopen(char *why, size_t cap);
/* A worker: from now on log to fd (the master's reopened file). */
void log_take_fd(int fd);
void log_set_ident(const char *ident); /* "master", "worker 2" */
void log_msg(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_err(...) log_msg(LOG_ERR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
/* Debug lines are formatted only when asked for (log_set_level). */
extern enum log_level log_max_level;
void log_set_level(enum log_level lvl);
#define log_debug(...) (log_max_level >= LOG_DEBUG ? log_msg(LOG_DEBUG, __VA_ARGS__) : (void)0)

/* Lines a client can cause are limited to one a second per kind, so a
 * flood cannot fill the disk: log_limited says whether this one may be
 * written, and *left_out how many were dropped since the last that was. */
typedef struct {
    long last;               /* time(NULL) of the last line written */
    unsigned long quiet;     /* lines dropped since */
} log_limit_t;
bool log_limited(log_limit_t *l, unsigned long *left_out);

#endif

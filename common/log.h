/*
 * log.h - the error log: one line per event, "TIME [level] who: message",
 * to stderr or to a file opened O_APPEND (shared safely by every process).
 */
#ifndef COMMON_LOG_H
#define COMMON_LOG_H

enum log_level { LOG_ERR, LOG_WARN, LOG_INFO, LOG_DEBUG };

/* path NULL or "" logs to stderr.  Returns 0, or -1 with errno set. */
int log_open(const char *path);
void log_set_ident(const char *ident); /* "master", "worker 2" */
void log_msg(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_err(...) log_msg(LOG_ERR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
/* Debug lines are formatted only when asked for (log_set_level). */
extern enum log_level log_max_level;
void log_set_level(enum log_level lvl);
#define log_debug(...) (log_max_level >= LOG_DEBUG ? log_msg(LOG_DEBUG, __VA_ARGS__) : (void)0)

#endif

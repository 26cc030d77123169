/*
 * sandbox.h - what a worker may do once it serves: no new privileges, and a
 * seccomp filter of the system calls it needs (core/sandbox.c).
 */
#ifndef PROXYD_SANDBOX_H
#define PROXYD_SANDBOX_H

/* Set no_new_privs and load the filter: 0, or -1 (logged). */
int sandbox_worker(void);

#endif

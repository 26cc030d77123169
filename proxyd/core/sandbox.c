/*
 * sandbox.c - the workers' system-call filter (see sandbox.h).
 *
 * An allow list: what the event loop, the handlers, TLS, the resolver
 * of upstream host names (upstream/resolve.c: a UDP socket, send, recv,
 * getrandom for query ids, reads of /etc/hosts) and the sanitizers call.
 * Workers never open the store (a reload comes from the master as a memfd
 * over the worker's channel, ACME answers from a shared map), so nothing of
 * SQLite's is here: no fsync, fdatasync, flock, getcwd, nor the fchown it
 * calls on its -wal and -shm files as root.  Anything else
 * fails with EPERM rather than killing the worker, so a call missed here
 * is an error the worker reports, not a crash; exec, ptrace, mount, module
 * loading, process creation and the like are simply not on it.  The list
 * was taken from strace of the test suite's scenarios
 * (tests/integration/test_systemd.py traces the same for the unit's filter),
 * plus the plain forms (open, stat, time) that valgrind, which runs inside
 * the process, calls where glibc uses openat, newfstatat and the vDSO.
 */
#include "core/sandbox.h"

#include <errno.h>
#include <string.h>
#include <sys/prctl.h>

#include <seccomp.h>

#include "../common/log.h"

static const char *const allowed[] = {
    /* memory */
    "brk", "mmap", "munmap", "mremap", "mprotect", "madvise",
    /* files and descriptors */
    "read", "write", "readv", "writev", "pread64", "pwrite64", "close", "lseek", "fstat", "newfstatat", "statx",
    "open", "openat", "openat2", "stat", "lstat", "fcntl", "ftruncate", "ioctl", "getdents64",
    "faccessat", "faccessat2", "access", "readlink", "readlinkat", "unlink", "unlinkat", "dup", "dup3",
    "sendfile", "rename", "renameat", "renameat2", "mkdir", "mkdirat",
    /* network */
    "socket", "connect", "accept4", "bind", "getsockname", "getpeername", "setsockopt", "getsockopt", "shutdown",
    "sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg",
    /* events, time, signals */
    "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "poll", "ppoll", "signalfd4", "clock_gettime",
    "clock_nanosleep", "nanosleep", "gettimeofday", "time", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn",
    "sigaltstack", "restart_syscall",
    /* the process itself */
    "getpid", "gettid", "getuid", "geteuid", "getgid", "getegid", "getrandom", "uname", "sysinfo", "prctl",
    "prlimit64", "futex", "sched_yield", "set_robust_list", "tgkill", "exit", "exit_group",
};

int sandbox_worker(void)
{
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
        log_err("no_new_privs: %s", strerror(errno));
        return -1;
    }
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ERRNO(EPERM));
    if (ctx == NULL) {
        log_err("seccomp: cannot make a filter");
        return -1;
    }
    int rc = 0;
    for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]) && rc == 0; i++) {
        int nr = seccomp_syscall_resolve_name(allowed[i]);
        if (nr != __NR_SCMP_ERROR) /* a call this architecture does not have */
            rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0);
    }
    if (rc == 0)
        rc = seccomp_load(ctx);
    seccomp_release(ctx);
    if (rc < 0) {
        log_err("seccomp: %s", strerror(-rc));
        return -1;
    }
    return 0;
}

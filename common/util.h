/*
 * util.h - small pieces both programs share: an arena, the hot-path number
 * and address formatters, and the parsers for the value syntaxes of the site
 * YAML (durations, sizes, CIDRs, socket addresses).  The value parsers take
 * slices and never allocate; they return 0 or -1 and, on -1, leave a short
 * reason in *why.  The append buffer is str_buf_t (str.h).
 */
#ifndef COMMON_UTIL_H
#define COMMON_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ruletable.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ---- arena: many small allocations freed at once ---------------------- */
typedef struct arena_chunk arena_chunk_t;
typedef struct {
    arena_chunk_t *head;
    size_t chunk_size;
} arena_t;

void arena_init(arena_t *a, size_t chunk_size);
void *arena_alloc(arena_t *a, size_t n);   /* zeroed, 16-byte aligned; aborts on OOM */
void *arena_alloc_raw(arena_t *a, size_t n); /* the same, not zeroed (the caller fills it) */
char *arena_strndup(arena_t *a, const char *s, size_t n);
char *arena_strdup(arena_t *a, const char *s);
char *arena_printf(arena_t *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void arena_free(arena_t *a);
/* Forget every allocation but keep one chunk for reuse (per-request arenas). */
void arena_reset(arena_t *a);

/* ---- value syntaxes ------------------------------------------------------ */
/* "250ms", "30s", "5m", "12h", "30d", or a bare number of seconds. */
int parse_duration_ms(const char *s, size_t n, uint64_t *ms, const char **why);
/* "512", "16k", "10m", "1g" (binary multiples). */
int parse_size(const char *s, size_t n, uint64_t *bytes, const char **why);
/* "10.0.0.0/8", "2001:db8::/32", or a bare address (a host route). */
int parse_cidr(const char *s, size_t n, rt_cidr_t *out, const char **why);
/* A host name: letters, digits, '-' and '_' in dot-separated labels of
 * 1..63 bytes, 253 bytes at most, no final dot. */
bool hostname_ok(const char *s, size_t n);
/* "1.2.3.4:80", "[::1]:80", "unix:/path", "name:port" (kind RT_ADDR_NAME). */
int parse_sockaddr(const char *s, size_t n, rt_sockaddr_t *out, const char **why);
/* "10r/s", "600r/m" -> requests per 1000 s */
int parse_rate(const char *s, size_t n, uint64_t *interval_ns, const char **why);
/* An IPv4 or IPv6 address of n bytes (not NUL-terminated) into out (16
 * bytes, zero-filled; 4 used for IPv4): 0 with *family 4 or 6, else -1. */
int parse_ip(const char *s, size_t n, uint8_t out[16], int *family);
/* An IPv4-mapped IPv6 address (::ffff:a.b.c.d) becomes the IPv4 one in
 * place; returns the family it has now. */
int ip_unmap(int family, uint8_t addr[16]);
/* FNV-1a 64 over n bytes from h (0xcbf29ce484222325 to start), optionally
 * ASCII-lower-cased, and MurmurHash3's finaliser (every input bit moves
 * every output bit): the non-cryptographic hashes of balancing and limits. */
#define HASH_FNV64_INIT 0xcbf29ce484222325ull
static inline uint64_t hash_fnv64(uint64_t h, const void *p, size_t n, bool lower)
{
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = s[i];
        if (lower && ch >= 'A' && ch <= 'Z')
            ch = (unsigned char)(ch + 32);
        h = (h ^ ch) * 0x100000001b3ull;
    }
    return h;
}
static inline uint64_t hash_mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}
/* Is the address in the table's trusted_proxies? */
bool trusted_proxy(const rt_table_t *t, int family, const uint8_t *ip);
bool cidr_contains(const rt_cidr_t *c, int family, const uint8_t *addr);

/* ---- formatting on hot paths (no stdio) ----------------------------------- */
/* v in decimal, NUL-terminated; out holds 21 bytes.  Returns the length. */
size_t fmt_u64(char *out, uint64_t v);
/* An address (family 4 or 6, as in rt_cidr_t) in its text form, NUL-terminated;
 * out holds 46 bytes.  Returns the length. */
size_t fmt_ip(char *out, int family, const uint8_t *addr);

/* A path named in the settings, relative ones resolved against the directory
 * of file (the store): both nodes of a pair share settings, not directories.
 * malloc'ed; "" and absolute paths are returned as they are. */
char *path_beside(const char *file, const char *rel);
/* mkdir -p of the directory holding path (each one made with mode): 0, or
 * -1 with errno and the directory that failed in failed[cap] (if given). */
int mkdir_parents(const char *path, unsigned mode, char *failed, size_t cap);

/* A descriptor handed to the program this process executes next (a binary
 * upgrade): its number in the environment variable name, close-on-exec
 * cleared; fd_take_over, in that program, gives it back (close-on-exec set
 * again, the variable removed), or -1 when there is none. */
void fd_hand_on(const char *name, int fd);
int fd_take_over(const char *name);
/* Whole-file read, NUL-terminated; NULL with errno set on failure.  Only a
 * regular file is read, and anything else is refused at once, never waited
 * on (a FIFO): errno EISDIR for a directory, EINVAL for the rest. */
char *read_file(const char *path, size_t *len);

#endif

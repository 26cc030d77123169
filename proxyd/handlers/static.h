/*
 * static.h - the static-file handler: maps a normalized request path under a
 * route's root directory to a file and decides the response (status, byte
 * range, validators, content type).  It never touches a socket: the
 * connection code sends what it returns, the body with sendfile(2).
 *
 * Invariants:
 *  - Nothing outside the root is ever opened: every open is an openat2(2)
 *    relative to the root fd with RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS, so
 *    "..", absolute symlinks and symlinks that climb out fail in the kernel.
 *    The path is also checked syntactically first (defence in depth).
 *  - No allocation; request data stays in slices.  The only copy is the
 *    NUL-terminated relative path that openat2 needs, in a PATH_MAX stack
 *    buffer.
 *  - out->fd is an open descriptor only when the caller has a body to send
 *    (200/206 to GET); in every other case it is -1 and nothing is left open.
 */
#ifndef PROXYD_STATIC_H
#define PROXYD_STATIC_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "http/http1.h"

/* The Allow field value for a 405 (RFC 9110 §15.5.6 requires one). */
#define STATIC_ALLOW "GET, HEAD"

/* Index file served for a path ending in '/' when the route names none. */
#define STATIC_DEFAULT_INDEX "index.html"

typedef struct {
    h1_slice_t path;    /* after the caller's normalization: percent-decoded except
                           %2F, dot segments resolved, starting with '/'; no query */
    size_t strip;       /* bytes of the matched route prefix to drop (strip_prefix), else 0 */
    const char *index;  /* index file name; NULL for STATIC_DEFAULT_INDEX */
    h1_method_t method; /* GET and HEAD are served; anything else gets 405 */
    const h1_header_t *headers; /* request fields: Range, If-Range, If-Match, If-None-Match,
                                   If-Modified-Since, If-Unmodified-Since */
    size_t nheaders;
    uint32_t expires_s; /* the route's expires, echoed into the result */
    /* Precompressed copies to look for beside the file, best first: FILE
     * plus each suffix (".br"), taken when it is a regular file not older
     * than FILE.  The caller lists only codings the client accepts, and
     * none for a request with Range (ranges are of the file itself). */
    const char *const *variants;
    size_t nvariants;
} static_req_t;

typedef struct {
    /*
     * 200 whole file, 206 one range, 304 not modified, 412 If-Match /
     * If-Unmodified-Since failed, 416 range not satisfiable, 301 directory
     * without trailing '/', 403 unreadable file or directory without index,
     * 404 anything else that cannot be served, 405 method other than GET/HEAD,
     * 500 system error (static_serve returned -1, errno says why).
     */
    int status;
    int fd;                  /* O_RDONLY|O_CLOEXEC regular file for 200/206 to GET, else -1;
                                the caller closes it */
    uint64_t offset, length; /* bytes to send (200: 0 and size; 206: the range); also set
                                for HEAD, where Content-Length is still `length` */
    /* The fields below are filled whenever a regular file was found
       (200, 206, 304, 412, 416); otherwise zero, "" or NULL. */
    uint64_t size;            /* whole file size, for Content-Range */
    const char *content_type; /* static string */
    time_t mtime;
    char last_modified[32];  /* IMF-fixdate, e.g. "Sun, 06 Nov 1994 08:49:37 GMT" */
    char etag[128];          /* strong: "<size hex>-<mtime ns hex>" with the quotes */
    char content_range[80];  /* 206: "bytes a-b/size"; 416: "bytes *\/size"; else "" */
    char location_suffix[2]; /* 301: "/" to append to the request path; else "" */
    uint32_t expires_s;      /* echo of static_req_t.expires_s (Cache-Control max-age) */
    int variant;             /* index in static_req_t.variants of the copy served, -1 the file
                                itself; with a copy, fd, size, validators and length are the
                                copy's, content_type the file's */
} static_result_t;

/*
 * Decide the response for `req` under the directory root_fd (from
 * static_open_root).  Returns 0 with out->status set, or -1 with errno set and
 * out->status 500 on a system error the caller should log (EMFILE, EIO,
 * ENOSYS when openat2 is missing: there is no unsafe fallback).
 */
int static_serve(int root_fd, const static_req_t *req, static_result_t *out);

/* For a representation found elsewhere (the cache): out->size, etag and
 * mtime set and out->status 200; decides 304/412 by the request's
 * preconditions, else 206/416 by its Range, as for a file. */
void static_conditions(const static_req_t *req, static_result_t *out);

/* O_PATH|O_DIRECTORY|O_CLOEXEC fd for root, cached by the caller per rule
   table; -1 with errno set. */
int static_open_root(const char *root);

/* Content-Type for a file name, by its extension, case-insensitively;
   "application/octet-stream" when unknown. */
const char *static_content_type(const char *name, size_t n);

/* HTTP-date parsing (all three forms, RFC 9110 §5.6.7) and IMF-fixdate
   formatting; exposed for the cache and the Date/Expires fields. */
int static_parse_http_date(const char *s, size_t n, time_t *out);
void static_format_http_date(time_t t, char buf[32]);

#endif

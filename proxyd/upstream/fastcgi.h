/*
 * fastcgi.h - the FastCGI 1.0 wire format, as the proxy handler speaks it to
 * a responder (php-fpm and the like): records out (BEGIN_REQUEST, PARAMS,
 * STDIN), records in (STDOUT, STDERR, END_REQUEST), and the CGI response head
 * a responder writes on STDOUT (RFC 3875 §6: Status, Location, fields).
 *
 * Nothing here allocates or knows a request: handlers/proxy.c builds the
 * parameters from the request and drives a connection; upstream/health.c
 * sends its checks.  The decoder reads untrusted bytes, so it is a pure
 * function of its input and state (tests/fuzz/fuzz_fastcgi.c).
 *
 * One request per connection at a time, always with request id 1: a
 * connection is kept (FCGI_KEEP_CONN) only between requests, as nginx does;
 * multiplexing is not offered and php-fpm does not take it.
 */
#ifndef PROXYD_FASTCGI_H
#define PROXYD_FASTCGI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/str.h"

#define FCGI_HEADER_LEN 8u
#define FCGI_MAX_CONTENT 65535
#define FCGI_REQUEST_ID 1

enum fcgi_type {
    FCGI_BEGIN_REQUEST = 1, FCGI_ABORT_REQUEST, FCGI_END_REQUEST, FCGI_PARAMS, FCGI_STDIN, FCGI_STDOUT,
    FCGI_STDERR, FCGI_DATA, FCGI_GET_VALUES, FCGI_GET_VALUES_RESULT, FCGI_UNKNOWN_TYPE,
};

/* END_REQUEST protocol status */
enum { FCGI_REQUEST_COMPLETE, FCGI_CANT_MPX_CONN, FCGI_OVERLOADED, FCGI_UNKNOWN_ROLE };

/* ---- records out ------------------------------------------------------------ */

/* A record header: type, request id 1, n content bytes (n <= FCGI_MAX_CONTENT), no padding. */
void fcgi_header(char out[FCGI_HEADER_LEN], unsigned type, size_t n);
/* BEGIN_REQUEST for the responder role; keep: FCGI_KEEP_CONN. */
void fcgi_begin(str_buf_t *b, bool keep);
/* The PARAMS stream: open reserves a record header, param appends one
 * name-value pair, close fills the header and ends the stream with an empty
 * PARAMS record.  A stream over FCGI_MAX_CONTENT bytes sets b->overflow. */
size_t fcgi_params_open(str_buf_t *b);
void fcgi_param(str_buf_t *b, const char *name, size_t nn, const char *value, size_t vn);
/* One parameter whose value is the pieces one after another. */
typedef struct {
    const char *p;
    size_t n;
} fcgi_piece_t;
void fcgi_param_pieces(str_buf_t *b, const char *name, size_t nn, const fcgi_piece_t *v, size_t nv);
void fcgi_param_str(str_buf_t *b, const char *name, const char *value);
void fcgi_params_close(str_buf_t *b, size_t at);
/* The header fields of an HTTP/1.1 request head (what the proxy would send:
 * a request line, "Name: value" lines, an empty line) as CGI meta-variables:
 * Content-Type and Content-Length as CONTENT_TYPE and CONTENT_LENGTH, the
 * others as HTTP_NAME (upper case, '-' as '_'), repeated fields joined
 * (", "; "; " for Cookie).  Left out: Transfer-Encoding, names with '_'
 * (HTTP_X_A would be ambiguous between X-A and X_A) and Proxy (httpoxy,
 * CVE-2016-5385). */
void fcgi_params_from_head(str_buf_t *b, const char *head, size_t n);

/* A whole health-check request (GET of path, no body) into b. */
void fcgi_probe_request(str_buf_t *b, const char *root, const char *path, const char *host);

/* ---- records in ---------------------------------------------------------------- */

typedef struct {
    uint8_t hdr[FCGI_HEADER_LEN];
    uint8_t have;           /* header bytes collected; FCGI_HEADER_LEN while in a record */
    uint8_t type;
    uint8_t pad;            /* padding bytes still to come */
    uint8_t endhave;        /* END_REQUEST body bytes collected */
    uint16_t left;          /* content bytes of the record still to come */
    uint8_t end[8];
    bool ended;             /* END_REQUEST (and its padding) consumed */
    uint32_t app_status;
    uint8_t protocol_status;
    const char *error;      /* FCGI_ERROR: a short static reason */
} fcgi_decoder_t;

enum { FCGI_ERROR = -1, FCGI_MORE = 0, FCGI_TEXT = 1, FCGI_END = 2 };

/*
 * Decode records from in[0..n), adding to *used the bytes taken.  STDOUT
 * content is appended to out[*outn..cap) (*outn grows).  Returns
 *   FCGI_MORE   all of in is taken, or out is full;
 *   FCGI_TEXT   text[0..textn) is STDERR content (in in): log it, call again
 *               with the rest;
 *   FCGI_END    END_REQUEST was taken (app_status, protocol_status set);
 *               bytes after it are not taken;
 *   FCGI_ERROR  d->error says why (a bad version, request id, record type or
 *               END_REQUEST length); the connection is unusable.
 */
int fcgi_decode(fcgi_decoder_t *d, const char *in, size_t n, size_t *used, char *out, size_t cap, size_t *outn,
                const char **text, size_t *textn);

/* A Status field's value ("404 Not Found", "404"): the code 100..999, or -1. */
int fcgi_status_value(const char *v, size_t n);

/* The status a health check got, from the records in buf[0..n): >0 the CGI
 * head's Status (200 without one, 302 with Location alone), 0 when more
 * bytes are needed, -1 when the answer is not a FastCGI response. */
int fcgi_probe_status(const char *buf, size_t n);

#endif

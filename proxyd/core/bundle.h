/*
 * bundle.h - a generation as the master hands it to the workers: the rule
 * table blob and the certificates (PEM: leaf, chain, private key) of the
 * table's TLS sites, in one flat buffer.
 *
 * Workers never open the store (it holds every private key and is root's,
 * mode 0600).  The master reads a generation from it, serializes it here,
 * verifies and prepares it itself, and passes the same bytes to each worker
 * in a sealed memfd over the worker's channel (core/master.c); the worker
 * reads them back with bundle_read, which checks every length against the
 * buffer before anything is used, as rt_open does for the table inside.
 *
 * Layout (host byte order: both ends are the same binary on one machine),
 * every part padded to 8 bytes:
 *   header   "PXDBNDL1", int64 generation, uint64 total size,
 *            uint32 blob length, uint32 certificate count
 *   blob     the rule table
 *   per certificate: uint32 lengths of site, cert, chain, key, then the
 *            four strings, each followed by a NUL (PEM text has none inside)
 */
#ifndef PROXYD_BUNDLE_H
#define PROXYD_BUNDLE_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *site, *cert, *chain, *key; /* NUL-terminated */
} bundle_cert_t;

typedef struct bundle {
    int64_t generation;
    const uint8_t *blob; /* inside the buffer read: not aligned for rt_open */
    size_t blob_len;
    uint32_t ncerts;
    const uint8_t *certs; /* the first certificate record */
    const uint8_t *end;
} bundle_t;

/* Bytes bundle_write needs for these parts. */
size_t bundle_size(size_t blob_len, const bundle_cert_t *certs, size_t n);
/* Serialize into out, which has bundle_size() bytes. */
void bundle_write(uint8_t *out, int64_t generation, const uint8_t *blob, size_t blob_len, const bundle_cert_t *certs,
                  size_t n);
/* Check p[0..n) and describe it in *b (pointers into p): 0, or -1 with a
 * reason in err (truncated, bad magic, a length beyond the buffer, a string
 * without its NUL or with one inside). */
int bundle_read(const uint8_t *p, size_t n, bundle_t *b, char *err, size_t errlen);
/* The certificate of site in a bundle that bundle_read accepted: 0, or -1
 * when it has none. */
int bundle_cert(const bundle_t *b, const char *site, bundle_cert_t *out);

#endif

/*
 * bundle.c - a generation's table and certificates in one buffer (see
 * bundle.h).
 */
#include "core/bundle.h"

#include <stdio.h>
#include <string.h>

#define MAGIC       "PXDBNDL1"
#define HEADER_LEN  32
#define RECORD_HEAD 16

static size_t pad8(size_t n)
{
    return (n + 7) & ~(size_t)7;
}

static size_t record_size(const bundle_cert_t *c)
{
    return pad8(RECORD_HEAD + strlen(c->site) + strlen(c->cert) + strlen(c->chain) + strlen(c->key) + 4);
}

size_t bundle_size(size_t blob_len, const bundle_cert_t *certs, size_t n)
{
    size_t total = HEADER_LEN + pad8(blob_len);
    for (size_t i = 0; i < n; i++)
        total += record_size(&certs[i]);
    return total;
}

static uint8_t *put_u32(uint8_t *p, uint32_t v)
{
    memcpy(p, &v, 4);
    return p + 4;
}

void bundle_write(uint8_t *out, int64_t generation, const uint8_t *blob, size_t blob_len, const bundle_cert_t *certs,
                  size_t n)
{
    uint64_t total = bundle_size(blob_len, certs, n);
    memset(out, 0, total);
    memcpy(out, MAGIC, 8);
    memcpy(out + 8, &generation, 8);
    memcpy(out + 16, &total, 8);
    put_u32(put_u32(out + 24, (uint32_t)blob_len), (uint32_t)n);
    memcpy(out + HEADER_LEN, blob, blob_len);
    uint8_t *p = out + HEADER_LEN + pad8(blob_len);
    for (size_t i = 0; i < n; i++) {
        const char *s[4] = {certs[i].site, certs[i].cert, certs[i].chain, certs[i].key};
        uint8_t *rec = p, *q = p + RECORD_HEAD;
        for (int k = 0; k < 4; k++) {
            size_t len = strlen(s[k]);
            put_u32(p + 4 * k, (uint32_t)len);
            memcpy(q, s[k], len + 1);
            q += len + 1;
        }
        p = rec + record_size(&certs[i]);
    }
}

static int refuse(char *err, size_t errlen, const char *why)
{
    snprintf(err, errlen, "generation handed over by the master refused: %s", why);
    return -1;
}

/* One certificate record at *p (within end): its strings, and *p moved past
 * it.  0, or -1 with the reason. */
static int read_record(const uint8_t **p, const uint8_t *end, bundle_cert_t *c, const char **why)
{
    const char **s[4] = {&c->site, &c->cert, &c->chain, &c->key};
    if ((size_t)(end - *p) < RECORD_HEAD) {
        *why = "a certificate record is truncated";
        return -1;
    }
    const uint8_t *q = *p + RECORD_HEAD;
    for (int k = 0; k < 4; k++) {
        uint32_t len;
        memcpy(&len, *p + 4 * k, 4);
        if ((size_t)(end - q) <= len) {
            *why = "a certificate string runs past the end";
            return -1;
        }
        if (q[len] != 0 || memchr(q, 0, len) != NULL || (k == 0 && len == 0)) {
            *why = "a certificate string is malformed";
            return -1;
        }
        *s[k] = (const char *)q;
        q += len + 1;
    }
    size_t used = pad8((size_t)(q - *p));
    if (used > (size_t)(end - *p)) {
        *why = "a certificate record is truncated";
        return -1;
    }
    *p += used;
    return 0;
}

int bundle_read(const uint8_t *p, size_t n, bundle_t *b, char *err, size_t errlen)
{
    uint64_t total;
    uint32_t blob_len;
    const char *why = NULL;
    if (n < HEADER_LEN || memcmp(p, MAGIC, 8) != 0)
        return refuse(err, errlen, n < HEADER_LEN ? "truncated header" : "bad magic");
    memcpy(&b->generation, p + 8, 8);
    memcpy(&total, p + 16, 8);
    memcpy(&blob_len, p + 24, 4);
    memcpy(&b->ncerts, p + 28, 4);
    if (total != n)
        return refuse(err, errlen, "size does not match its header");
    if (pad8(blob_len) > n - HEADER_LEN)
        return refuse(err, errlen, "table blob runs past the end");
    b->blob = p + HEADER_LEN;
    b->blob_len = blob_len;
    b->certs = b->blob + pad8(blob_len);
    b->end = p + n;
    const uint8_t *q = b->certs;
    bundle_cert_t c;
    for (uint32_t i = 0; i < b->ncerts; i++)
        if (read_record(&q, b->end, &c, &why) < 0)
            return refuse(err, errlen, why);
    if (q != b->end)
        return refuse(err, errlen, "bytes after the last certificate");
    return 0;
}

int bundle_cert(const bundle_t *b, const char *site, bundle_cert_t *out)
{
    const uint8_t *q = b->certs;
    const char *why;
    for (uint32_t i = 0; i < b->ncerts; i++) {
        if (read_record(&q, b->end, out, &why) < 0)
            return -1;
        if (strcmp(out->site, site) == 0)
            return 0;
    }
    return -1;
}

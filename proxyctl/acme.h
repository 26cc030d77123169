/*
 * acme.h - an ACME v2 client (RFC 8555) that obtains certificates over
 * HTTP-01 for proxyctl's renew-cert.
 *
 * The client never runs inside proxyd: it publishes each challenge's key
 * authorization in the store's acme_challenges table (one committed
 * transaction), then calls cfg->published so that proxyd's master reads them
 * into the map its workers answer /.well-known/acme-challenge/TOKEN from.  The account key (ECDSA
 * P-256) is made once per directory URL and kept in acme_accounts with the
 * account URL.  The store must not be inside a transaction when acme_issue
 * runs: it commits its own short ones around the network exchanges.
 */
#ifndef PROXYCTL_ACME_H
#define PROXYCTL_ACME_H

#include <stddef.h>
#include <stdint.h>

#include "../common/store.h"

typedef struct {
    const char *directory; /* the CA's directory URL */
    const char *email;     /* account contact; "" or NULL for none */
    const char *ca_file;   /* CA bundle trusted for the directory; NULL: the system's */
    void (*published)(store_t *st); /* challenges committed: tell proxyd (NULL: nobody) */
} acme_config_t;

/* An issued certificate: the leaf, the rest of the chain, the new key. */
typedef struct {
    char *cert_pem, *chain_pem, *key_pem;
    char issuer[256];  /* the leaf's issuer CN */
    int64_t not_before, not_after;
} acme_cert_t;

typedef struct acme acme_t;

/* A client for one directory; nothing is fetched yet.  NULL only on OOM. */
acme_t *acme_new(store_t *st, const acme_config_t *cfg);
void acme_free(acme_t *a);

/* Order, validate, finalize and download a certificate for hosts (exact
 * names only).  0, or -1 with acme_error() set, e.g.
 * "urn:ietf:params:acme:error:connection: <the CA's detail>". */
int acme_issue(acme_t *a, const char *const *hosts, size_t nhosts, acme_cert_t *out);
const char *acme_error(const acme_t *a);

/* Frees the PEM strings (the key is wiped first). */
void acme_cert_free(acme_cert_t *c);

#endif

/*
 * certs.h - certificates proxyctl makes itself: self-signed ones for sites
 * that ask for them, and temporary self-signed ones for ACME sites whose
 * certificate is not issued yet (replaced by renew-cert); certificate files
 * imported into the store; rows of removed sites pruned.
 */
#ifndef PROXYCTL_CERTS_H
#define PROXYCTL_CERTS_H

#include <stddef.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "../common/store.h"
#include "config.h"

/* Make sure site s has a usable certificate row in the store (inside the
 * caller's transaction): kept when it covers the site's hosts and has more
 * than a week left, otherwise (re)made.  0, or -1 with st->err set. */
int certs_ensure(store_t *st, const cfg_site_t *s);

/* Copy a site's cert_file and key_file into its certificate row, so proxyd
 * (and the HA peer) never depend on the operator's file paths.  0, or -1
 * with st->err set. */
int certs_import_files(store_t *st, const cfg_site_t *s);

/* Delete the certificate rows of sites that generation gen does not have
 * (inside the caller's transaction).  0, or -1 with st->err set. */
int certs_prune(store_t *st, int64_t gen);

/* The site's hosts as stored in certificates.hosts: space-separated. */
void certs_hosts(const cfg_site_t *s, char *out, size_t cap);

/* What certs_make puts in a certificate: extension values in openssl's
 * configuration syntax (NULL: left out). */
typedef struct {
    const char *cn, *org, *san, *basic, *key_usage, *ext_key_usage;
    int days;
} cert_spec_t;

/* A certificate for key, signed by issuer_key as issuer (both NULL:
 * self-signed), valid from an hour ago for spec->days.  NULL on failure. */
X509 *certs_make(const cert_spec_t *spec, EVP_PKEY *key, X509 *issuer, EVP_PKEY *issuer_key);

/* PEM of a private key (key != NULL) or a certificate, malloc'ed; NULL on
 * failure.  The caller wipes a key's PEM before freeing it. */
char *certs_pem(EVP_PKEY *key, X509 *x);

#endif

/*
 * certs.h - certificates proxyctl makes itself: self-signed ones for sites
 * that ask for them, and temporary self-signed ones for ACME sites whose
 * certificate is not issued yet (replaced by renew-cert).
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

/* The site's hosts as stored in certificates.hosts: space-separated. */
void certs_hosts(const cfg_site_t *s, char *out, size_t cap);

/* PEM of a private key (key != NULL) or a certificate, malloc'ed; NULL on
 * failure.  The caller wipes a key's PEM before freeing it. */
char *certs_pem(EVP_PKEY *key, X509 *x);

#endif

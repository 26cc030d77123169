/*
 * tls.h - TLS termination (OpenSSL 3) and TLS to upstreams.
 *
 * Per loaded table: one server SSL_CTX per site that has a certificate in
 * the store (read by the master, handed over in the generation's bundle,
 * core/bundle.h: a worker never opens the store), chosen by SNI; a request for an unknown name gets the default
 * site's certificate or a handshake alert (tls.unknown_sni).  TLS 1.2 and
 * 1.3 only (as configured), AEAD suites with forward secrecy, ALPN
 * http/1.1.  Session tickets are encrypted with keys the master keeps in
 * the store and publishes in shared memory, so every worker (and, by
 * replication, the HA peer) resumes sessions any of them issued.
 *
 * I/O helpers return >0 bytes, 0 for EOF, TLS_WANT_READ / TLS_WANT_WRITE
 * when the operation must be retried on that readiness, or TLS_ERROR.
 */
#ifndef PROXYD_TLS_H
#define PROXYD_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <openssl/ssl.h>

#include "../common/store.h"
#include "core/table.h"

enum { TLS_WANT_READ = -2, TLS_WANT_WRITE = -3, TLS_ERROR = -4 };

#define TLS_TICKET_KEYS 4

/* Session-ticket keys as the master publishes them (newest first). */
typedef struct {
    uint8_t name[16];
    uint8_t hmac[32];
    uint8_t aes[32];
    int64_t created;
} tls_ticket_key_t;

typedef struct {
    volatile uint64_t version;           /* bumped on every change */
    volatile uint32_t count;
    tls_ticket_key_t keys[TLS_TICKET_KEYS];
} tls_ticket_shm_t;

/* Where workers find the ticket keys (set once before forking). */
void tls_set_ticket_shm(tls_ticket_shm_t *shm);
/* Master: make sure the store has a current key (newer than rotation) and
 * publish the newest TLS_TICKET_KEYS into shm.  0 or -1 with err. */
int tls_rotate_ticket_keys(store_t *st, uint32_t rotation_s, bool rotate, char *err, size_t errlen);

/* The module: a table's server contexts from the bundle's certificates and
 * its upstream client contexts (init fails with a reason naming the site). */
extern const module_t tls_module;
/* Does upstream speak TLS (a client context exists)? */
bool tls_upstream_on(const tref_t *t, uint32_t upstream);

/* A server-side SSL for an accepted socket (the table chooses certificates). */
SSL *tls_accept(tref_t *t, int fd);
/* A client-side SSL to upstream u (SNI, verification, client certificate). */
SSL *tls_connect(tref_t *t, uint32_t upstream, int fd);
int tls_handshake(SSL *ssl);
ssize_t tls_read(SSL *ssl, void *buf, size_t n);
ssize_t tls_write(SSL *ssl, const void *buf, size_t n);
void tls_free(SSL *ssl);
/* The server name the client sent (SNI), or NULL. */
const char *tls_sni(SSL *ssl);
/* A short reason for the last failure on this thread (for the error log). */
const char *tls_error(void);

#endif

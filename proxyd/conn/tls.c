/*
 * tls.c - TLS contexts, SNI, session tickets and non-blocking I/O (see tls.h).
 *
 * Why one SSL_CTX per site rather than one context with many certificates:
 * OpenSSL chooses among the certificates of a context by key type only, so
 * per-name selection is done by switching the connection's context in the
 * SNI callback; each site context then carries that site's ECDSA and/or RSA
 * certificate side by side.
 */
#include "conn/tls.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "../common/log.h"
#include "../common/route.h"
#include "core/bundle.h"

/* TLS 1.2 suites: ECDHE only (forward secrecy), AEAD only. TLS 1.3 suites are all AEAD. */
#define TLS12_CIPHERS                                                                                 \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"        \
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
#define TLS13_SUITES "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
#define SESSION_CONTEXT "proxyd"

static tls_ticket_shm_t *tickets;
static char last_error[256];

void tls_set_ticket_shm(tls_ticket_shm_t *shm) { tickets = shm; }

const char *tls_error(void)
{
    unsigned long e = ERR_peek_last_error();
    if (e)
        ERR_error_string_n(e, last_error, sizeof(last_error));
    else
        snprintf(last_error, sizeof(last_error), "%s", errno ? strerror(errno) : "connection closed");
    ERR_clear_error();
    return last_error;
}

/* ---- session tickets ------------------------------------------------------------ */

static int ticket_cb(SSL *s, unsigned char name[16], unsigned char *iv, EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *hctx,
                     int enc)
{
    /* Fetched once: handing OpenSSL 3 the built-in EVP_aes_256_cbc() makes
     * it fetch the implementation again (locks, name lookups) every call. */
    static EVP_CIPHER *aes;
    (void)s;
    if (aes == NULL && (aes = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL)) == NULL)
        return -1;
    if (tickets == NULL || tickets->count == 0)
        return enc ? -1 : 0;
    const tls_ticket_key_t *k = NULL;
    uint32_t i = 0;
    if (enc) {
        k = &tickets->keys[0];
        if (RAND_bytes(iv, EVP_MAX_IV_LENGTH) != 1)
            return -1;
        memcpy(name, k->name, 16);
    } else {
        for (; i < tickets->count && i < TLS_TICKET_KEYS; i++)
            if (memcmp(name, tickets->keys[i].name, 16) == 0)
                break;
        if (i == tickets->count || i == TLS_TICKET_KEYS)
            return 0; /* unknown key: full handshake */
        k = &tickets->keys[i];
    }
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, (void *)k->hmac, sizeof(k->hmac)),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    if (EVP_MAC_CTX_set_params(hctx, params) != 1)
        return -1;
    int ok = enc ? EVP_EncryptInit_ex(cctx, aes, NULL, k->aes, iv) : EVP_DecryptInit_ex(cctx, aes, NULL, k->aes, iv);
    if (ok != 1)
        return -1;
    return enc ? 1 : i == 0 ? 1 : 2; /* 2: valid, but issue a ticket under the newest key */
}

static int insert_key(store_t *st, int64_t now, uint32_t rotation_s)
{
    uint8_t name[16], keys[64];
    if (RAND_bytes(name, sizeof(name)) != 1 || RAND_bytes(keys, sizeof(keys)) != 1)
        return -1;
    sqlite3_stmt *q = store_prepare(st, "INSERT INTO ticket_keys (name, keys, created, expires) VALUES (?,?,?,?)");
    if (q == NULL)
        return -1;
    sqlite3_bind_blob(q, 1, name, sizeof(name), SQLITE_TRANSIENT);
    sqlite3_bind_blob(q, 2, keys, sizeof(keys), SQLITE_TRANSIENT);
    sqlite3_bind_int64(q, 3, now);
    sqlite3_bind_int64(q, 4, now + 3 * (int64_t)rotation_s);
    int rc = sqlite3_step(q) == SQLITE_DONE ? 0 : -1;
    sqlite3_finalize(q);
    OPENSSL_cleanse(keys, sizeof(keys));
    return rc;
}

static int publish_keys(store_t *st, int64_t now)
{
    sqlite3_stmt *q = store_prepare(st, "SELECT name, keys, created FROM ticket_keys WHERE expires > ? "
                                        "ORDER BY created DESC, id DESC LIMIT 4");
    if (q == NULL)
        return -1;
    sqlite3_bind_int64(q, 1, now);
    tls_ticket_shm_t fresh;
    memset(&fresh, 0, sizeof(fresh));
    while (sqlite3_step(q) == SQLITE_ROW && fresh.count < TLS_TICKET_KEYS) {
        if (sqlite3_column_bytes(q, 0) != 16 || sqlite3_column_bytes(q, 1) != 64)
            continue;
        tls_ticket_key_t *k = &fresh.keys[fresh.count++];
        memcpy(k->name, sqlite3_column_blob(q, 0), 16);
        memcpy(k->hmac, sqlite3_column_blob(q, 1), 32);
        memcpy(k->aes, (const uint8_t *)sqlite3_column_blob(q, 1) + 32, 32);
        k->created = sqlite3_column_int64(q, 2);
    }
    sqlite3_finalize(q);
    if (tickets && (fresh.count != tickets->count || memcmp(fresh.keys, tickets->keys, sizeof(fresh.keys)) != 0)) {
        memcpy(tickets->keys, fresh.keys, sizeof(fresh.keys));
        tickets->count = fresh.count;
        tickets->version++;
    }
    OPENSSL_cleanse(&fresh, sizeof(fresh));
    return 0;
}

int tls_rotate_ticket_keys(store_t *st, uint32_t rotation_s, bool rotate, char *err, size_t errlen)
{
    int64_t now = (int64_t)time(NULL);
    if (rotation_s == 0)
        rotation_s = 12 * 3600;
    if (!rotate) {
        if (store_exec(st, "BEGIN") < 0 || publish_keys(st, now) < 0 || store_commit(st) < 0)
            goto fail;
        return 0;
    }
    if (store_begin(st) < 0)
        goto fail;
    sqlite3_stmt *q = store_prepare(st, "SELECT max(created) FROM ticket_keys");
    int64_t newest = 0;
    if (q && sqlite3_step(q) == SQLITE_ROW)
        newest = sqlite3_column_int64(q, 0);
    sqlite3_finalize(q);
    if (now - newest >= (int64_t)rotation_s) {
        if (insert_key(st, now, rotation_s) < 0 || store_event(st, "proxyd", "ticket key rotated", 0) < 0)
            goto fail;
    }
    if (store_exec(st, "DELETE FROM ticket_keys WHERE expires < strftime('%s','now') - 86400") < 0 ||
        publish_keys(st, now) < 0 || store_commit(st) < 0)
        goto fail;
    return 0;
fail:
    snprintf(err, errlen, "%s", st->err);
    store_rollback(st);
    return -1;
}

/* ---- server contexts --------------------------------------------------------------- */

static int apply_protocols(SSL_CTX *ctx, uint32_t protocols)
{
    int min = (protocols & 1) ? TLS1_2_VERSION : TLS1_3_VERSION;
    int max = (protocols & 2) ? TLS1_3_VERSION : TLS1_2_VERSION;
    return SSL_CTX_set_min_proto_version(ctx, min) == 1 && SSL_CTX_set_max_proto_version(ctx, max) == 1 ? 0 : -1;
}

/* What we offer, in our order of preference: the first of ours the client
 * also lists is chosen (RFC 7301).  arg is one of these lists. */
static const unsigned char alpn_h2[] = "\x02h2\x08http/1.1";
static const unsigned char alpn_h1[] = "\x08http/1.1";

static int alpn_cb(SSL *s, const unsigned char **out, unsigned char *outlen, const unsigned char *in, unsigned inlen,
                   void *arg)
{
    const unsigned char *ours = arg;
    unsigned n = ours == alpn_h2 ? sizeof(alpn_h2) - 1 : sizeof(alpn_h1) - 1;
    (void)s;
    if (SSL_select_next_proto((unsigned char **)out, outlen, ours, n, in, inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_ALERT_FATAL; /* a client that offers ALPN but nothing of ours */
    return SSL_TLSEXT_ERR_OK;
}

static int sni_cb(SSL *s, int *alert, void *arg);

static SSL_CTX *server_ctx(const rt_table_t *t)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL)
        return NULL;
    const rt_global_t *g = t->global;
    uint64_t opts = SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION;
    if (!(g->flags & RT_GF_SESSION_TICKETS))
        opts |= SSL_OP_NO_TICKET;
    SSL_CTX_set_options(ctx, opts);
    if (apply_protocols(ctx, g->tls_protocols) < 0 || SSL_CTX_set_cipher_list(ctx, TLS12_CIPHERS) != 1 ||
        SSL_CTX_set_ciphersuites(ctx, TLS13_SUITES) != 1 || SSL_CTX_set1_groups_list(ctx, "X25519:P-256:P-384") != 1) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
    /* One read(2) per record instead of two (header, then body); conn.c asks
     * SSL_has_pending, which also sees bytes read ahead but not decrypted. */
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_session_id_context(ctx, (const unsigned char *)SESSION_CONTEXT, sizeof(SESSION_CONTEXT) - 1);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF); /* stateless tickets only: shared by every worker */
    SSL_CTX_set_num_tickets(ctx, 1);
    SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_cb);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_cb, (void *)((g->flags & RT_GF_HTTP2) ? alpn_h2 : alpn_h1));
    return ctx;
}

/* Load cert (leaf first, then chain), optional extra chain, and key from PEM text. */
static int load_pem(SSL_CTX *ctx, const char *cert_pem, const char *chain_pem, const char *key_pem)
{
    BIO *b = BIO_new_mem_buf(cert_pem, -1);
    X509 *leaf = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
    int rc = -1;
    if (leaf == NULL || SSL_CTX_use_certificate(ctx, leaf) != 1)
        goto out;
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) {
            BIO_free(b);
            b = BIO_new_mem_buf(chain_pem ? chain_pem : "", -1);
        }
        X509 *x;
        while (b && (x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL)
            if (SSL_CTX_add0_chain_cert(ctx, x) != 1) {
                X509_free(x);
                goto out;
            }
        ERR_clear_error(); /* end of PEM data */
    }
    BIO_free(b);
    b = BIO_new_mem_buf(key_pem, -1);
    EVP_PKEY *key = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
    if (key && SSL_CTX_use_PrivateKey(ctx, key) == 1 && SSL_CTX_check_private_key(ctx) == 1)
        rc = 0;
    EVP_PKEY_free(key);
out:
    X509_free(leaf);
    BIO_free(b);
    return rc;
}

static int site_certificate(const bundle_t *b, const char *site, SSL_CTX *ctx, char *err, size_t errlen)
{
    bundle_cert_t c;
    if (bundle_cert(b, site, &c) < 0) {
        snprintf(err, errlen, "site %s: no certificate in the store (run 'proxyctl renew-cert %s')", site, site);
        return -1;
    }
    if (load_pem(ctx, c.cert, c.chain, c.key) < 0) {
        snprintf(err, errlen, "site %s: certificate does not load: %s", site, tls_error());
        return -1;
    }
    return 0;
}

/* A table's TLS contexts (tref_t.mod[MOD_TLS]). */
typedef struct {
    SSL_CTX **site_ctx;    /* per site: its certificate(s), or NULL */
    SSL_CTX **up_ctx;      /* per upstream: TLS client context, or NULL */
    SSL_CTX *base_ctx;     /* every accepted TLS connection starts here; SNI switches */
    SSL_CTX *default_ctx;  /* base_ctx when the default site has a certificate */
} tls_table_t;

static tls_table_t *tls_of(const tref_t *t) { return t->mod[MOD_TLS]; }

static int sni_cb(SSL *s, int *alert, void *arg)
{
    tref_t *tr = arg;
    tls_table_t *t = tls_of(tr);
    const char *name = SSL_get_servername(s, TLSEXT_NAMETYPE_host_name);
    uint32_t site = name ? route_site_named(&tr->t, name, strlen(name)) : RT_NONE;
    if (site != RT_NONE && t->site_ctx[site]) {
        SSL_set_SSL_CTX(s, t->site_ctx[site]);
        return SSL_TLSEXT_ERR_OK;
    }
    if ((tr->t.global->flags & RT_GF_UNKNOWN_SNI_REJECT) || t->default_ctx == NULL) {
        *alert = SSL_AD_UNRECOGNIZED_NAME;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    return SSL_TLSEXT_ERR_OK; /* the base context carries the default site's certificate */
}

static int prepare_server(tref_t *tr, const bundle_t *b, char *err, size_t errlen)
{
    const rt_table_t *t = &tr->t;
    tls_table_t *r = tls_of(tr);
    r->site_ctx = calloc(t->nsites + 1, sizeof(*r->site_ctx));
    if (r->site_ctx == NULL)
        return -1;
    for (uint32_t i = 0; i < t->nsites; i++) {
        if (t->sites[i].cert_mode == RT_CERT_NONE)
            continue;
        if ((r->site_ctx[i] = server_ctx(t)) == NULL) {
            snprintf(err, errlen, "TLS context: %s", tls_error());
            return -1;
        }
        if (site_certificate(b, rt_cstr(t, t->sites[i].name), r->site_ctx[i], err, errlen) < 0)
            return -1;
    }
    if ((r->base_ctx = server_ctx(t)) == NULL) {
        snprintf(err, errlen, "TLS context: %s", tls_error());
        return -1;
    }
    uint32_t def = t->global->default_site;
    if (def != RT_NONE && r->site_ctx[def]) {
        if (site_certificate(b, rt_cstr(t, t->sites[def].name), r->base_ctx, err, errlen) < 0)
            return -1;
        r->default_ctx = r->base_ctx;
    }
    SSL_CTX_set_tlsext_servername_callback(r->base_ctx, sni_cb);
    SSL_CTX_set_tlsext_servername_arg(r->base_ctx, tr);
    return 0;
}

/* ---- upstream contexts ------------------------------------------------------------------ */

static int prepare_upstreams(tref_t *tr, char *err, size_t errlen)
{
    const rt_table_t *t = &tr->t;
    tls_table_t *r = tls_of(tr);
    r->up_ctx = calloc(t->nupstreams + 1, sizeof(*r->up_ctx));
    if (r->up_ctx == NULL)
        return -1;
    for (uint32_t i = 0; i < t->nupstreams; i++) {
        const rt_upstream_t *u = &t->upstreams[i];
        if (!(u->tls_flags & RT_UTLS_ON))
            continue;
        SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
        r->up_ctx[i] = ctx;
        if (ctx == NULL || SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1)
            goto fail;
        SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
        if (u->tls_flags & RT_UTLS_VERIFY) {
            SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
            int ok = u->tls_ca_file.len ? SSL_CTX_load_verify_locations(ctx, rt_cstr(t, u->tls_ca_file), NULL)
                                        : SSL_CTX_set_default_verify_paths(ctx);
            if (ok != 1)
                goto fail;
        }
        if (u->tls_cert_file.len &&
            (SSL_CTX_use_certificate_chain_file(ctx, rt_cstr(t, u->tls_cert_file)) != 1 ||
             SSL_CTX_use_PrivateKey_file(ctx, rt_cstr(t, u->tls_key_file), SSL_FILETYPE_PEM) != 1))
            goto fail;
        continue;
    fail:
        snprintf(err, errlen, "upstream %s (site %s): TLS setup: %s", rt_cstr(t, u->name),
                 rt_cstr(t, t->sites[u->site].name), tls_error());
        return -1;
    }
    return 0;
}


static void tls_release(tref_t *tr)
{
    tls_table_t *r = tls_of(tr);
    if (r == NULL)
        return;
    for (uint32_t i = 0; r->site_ctx && i < tr->t.nsites; i++)
        SSL_CTX_free(r->site_ctx[i]);
    for (uint32_t i = 0; r->up_ctx && i < tr->t.nupstreams; i++)
        SSL_CTX_free(r->up_ctx[i]);
    SSL_CTX_free(r->base_ctx);
    free(r->site_ctx);
    free(r->up_ctx);
    free(r);
    tr->mod[MOD_TLS] = NULL;
}

static int tls_table_init(tref_t *tr, const module_load_t *ld, char *err, size_t errlen)
{
    if ((tr->mod[MOD_TLS] = calloc(1, sizeof(tls_table_t))) == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (prepare_server(tr, ld->bundle, err, errlen) < 0 || prepare_upstreams(tr, err, errlen) < 0) {
        tls_release(tr);
        return -1;
    }
    return 0;
}

const module_t tls_module = {.name = "tls", .table_init = tls_table_init, .table_free = tls_release};

const char *tls_sni(SSL *ssl) { return SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name); }

bool tls_upstream_on(const tref_t *tr, uint32_t upstream)
{
    const tls_table_t *t = tls_of(tr);
    return t && t->up_ctx && t->up_ctx[upstream];
}

/* ---- connections --------------------------------------------------------------------- */

SSL *tls_accept(tref_t *tr, int fd)
{
    SSL *s = SSL_new(tls_of(tr)->base_ctx);
    if (s == NULL || SSL_set_fd(s, fd) != 1) {
        SSL_free(s);
        return NULL;
    }
    SSL_set_accept_state(s);
    return s;
}

SSL *tls_connect(tref_t *tr, uint32_t upstream, int fd)
{
    const rt_table_t *t = &tr->t;
    const rt_upstream_t *u = &t->upstreams[upstream];
    SSL *s = tls_upstream_on(tr, upstream) ? SSL_new(tls_of(tr)->up_ctx[upstream]) : NULL;
    if (s == NULL || SSL_set_fd(s, fd) != 1)
        goto fail;
    char name[256];
    if (u->tls_sni.len) {
        snprintf(name, sizeof(name), "%s", rt_cstr(t, u->tls_sni));
    } else {
        const char *a = rt_cstr(t, t->servers[u->servers.first].sa.addr);
        snprintf(name, sizeof(name), "%.*s", (int)strcspn(a, ":"), a);
    }
    /* SNI only for names; verification checks the name (or the IP literal). */
    if (strspn(name, "0123456789.") != strlen(name))
        SSL_set_tlsext_host_name(s, name);
    if ((u->tls_flags & RT_UTLS_VERIFY) && SSL_set1_host(s, name) != 1)
        goto fail;
    SSL_set_connect_state(s);
    return s;
fail:
    SSL_free(s);
    return NULL;
}

static ssize_t result(SSL *s, int rc)
{
    if (rc > 0)
        return rc;
    switch (SSL_get_error(s, rc)) {
    case SSL_ERROR_WANT_READ: return TLS_WANT_READ;
    case SSL_ERROR_WANT_WRITE: return TLS_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN: return 0;
    case SSL_ERROR_SYSCALL: return errno == 0 ? 0 : TLS_ERROR; /* EOF without close_notify */
    default: return TLS_ERROR;
    }
}

int tls_handshake(SSL *s)
{
    ERR_clear_error();
    int rc = SSL_do_handshake(s);
    if (rc == 1)
        return 1;
    ssize_t r = result(s, rc);
    return r == 0 ? TLS_ERROR : (int)r;
}

ssize_t tls_read(SSL *s, void *buf, size_t n)
{
    ERR_clear_error();
    errno = 0;
    return result(s, SSL_read(s, buf, n > INT32_MAX ? INT32_MAX : (int)n));
}

ssize_t tls_write(SSL *s, const void *buf, size_t n)
{
    ERR_clear_error();
    errno = 0;
    ssize_t r = result(s, SSL_write(s, buf, n > INT32_MAX ? INT32_MAX : (int)n));
    return r == 0 ? TLS_ERROR : r;
}

void tls_free(SSL *s)
{
    if (s == NULL)
        return;
    /* Send close_notify (RFC 8446 §6.1) without waiting for the peer's: a
     * client that sees the TCP close without it treats the session as
     * truncated and will not resume it. */
    if (SSL_is_init_finished(s)) {
        ERR_clear_error();
        SSL_shutdown(s);
    }
    ERR_clear_error();
    SSL_free(s);
}

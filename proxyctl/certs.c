/*
 * certs.c - self-signed and temporary certificates (see certs.h).
 *
 * Keys are ECDSA P-256; certificates carry the site's hosts as DNS SANs
 * (the CN is only the first host, for humans), serverAuth usage and a
 * random 128-bit serial.  The private key PEM exists in memory only long
 * enough to be stored and is wiped after.
 *
 * The certificates table holds a row for the sites of the active generation
 * only: every new generation (a build or a rollback) prunes the rows of the
 * sites it no longer has, so no private key of a removed site stays behind.
 */
#include "certs.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#define SELF_SIGNED_DAYS 365
#define TEMPORARY_DAYS 90
#define RENEW_WITHIN (7 * 86400)

void certs_hosts(const cfg_site_t *s, char *out, size_t cap)
{
    out[0] = '\0';
    for (size_t i = 0; i < s->nhosts; i++)
        snprintf(out + strlen(out), cap - strlen(out), "%s%s", i ? " " : "", s->hosts[i].s);
    if (s->nhosts == 0)
        snprintf(out, cap, "localhost");
}

/* 1 when the stored certificate still serves: same hosts, not about to expire. */
static int current(store_t *st, const char *site, const char *hosts, const char *source)
{
    sqlite3_stmt *q = store_prepare(st, "SELECT hosts, not_after, source FROM certificates WHERE site = ?");
    int ok = 0;
    if (q == NULL)
        return 0;
    sqlite3_bind_text(q, 1, site, -1, SQLITE_STATIC);
    if (sqlite3_step(q) == SQLITE_ROW) {
        const char *h = (const char *)sqlite3_column_text(q, 0), *src = (const char *)sqlite3_column_text(q, 2);
        int64_t not_after = sqlite3_column_int64(q, 1);
        /* An issued ACME certificate is renew-cert's business, never replaced here. */
        ok = strcmp(src, "acme") == 0 ||
             (strcmp(h, hosts) == 0 && strcmp(src, source) == 0 && not_after - time(NULL) > RENEW_WITHIN);
    }
    sqlite3_finalize(q);
    return ok;
}

X509 *certs_make(const cert_spec_t *spec, EVP_PKEY *key, X509 *issuer, EVP_PKEY *issuer_key)
{
    X509 *x = X509_new();
    unsigned char serial[16];
    if (x == NULL || RAND_bytes(serial, sizeof(serial)) != 1)
        goto fail;
    serial[0] &= 0x7f; /* positive */
    BIGNUM *bn = BN_bin2bn(serial, sizeof(serial), NULL);
    ASN1_INTEGER *ai = bn ? BN_to_ASN1_INTEGER(bn, NULL) : NULL;
    BN_free(bn);
    if (ai == NULL || X509_set_serialNumber(x, ai) != 1) {
        ASN1_INTEGER_free(ai);
        goto fail;
    }
    ASN1_INTEGER_free(ai);
    X509_set_version(x, 2);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), (long)spec->days * 86400);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)spec->cn, -1, -1, 0);
    X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)spec->org, -1, -1, 0);
    X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name);
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer ? issuer : x, x, NULL, NULL, 0);
    const struct {
        int nid;
        const char *value;
    } ext[] = {{NID_subject_alt_name, spec->san},   {NID_basic_constraints, spec->basic},
               {NID_key_usage, spec->key_usage},     {NID_ext_key_usage, spec->ext_key_usage},
               {NID_subject_key_identifier, "hash"}, {NID_authority_key_identifier, issuer ? "keyid:always" : NULL}};
    if (X509_set_pubkey(x, key) != 1)
        goto fail;
    for (size_t i = 0; i < sizeof(ext) / sizeof(ext[0]); i++) {
        if (ext[i].value == NULL)
            continue;
        X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &ctx, ext[i].nid, ext[i].value);
        int ok = e && X509_add_ext(x, e, -1) == 1;
        X509_EXTENSION_free(e);
        if (!ok)
            goto fail;
    }
    if (X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256()) == 0)
        goto fail;
    return x;
fail:
    X509_free(x);
    return NULL;
}

static X509 *make_cert(EVP_PKEY *key, const cfg_site_t *s, int days)
{
    char san[8192] = "";
    for (size_t i = 0; i < s->nhosts || (i == 0 && s->nhosts == 0); i++)
        snprintf(san + strlen(san), sizeof(san) - strlen(san), "%sDNS:%s", i ? "," : "",
                 s->nhosts ? s->hosts[i].s : "localhost");
    cert_spec_t spec = {s->nhosts ? s->hosts[0].s : "localhost", "proxyd self-signed", san, "critical,CA:FALSE",
                        "critical,digitalSignature", "serverAuth", days};
    return certs_make(&spec, key, NULL, NULL);
}

char *certs_pem(EVP_PKEY *key, X509 *x)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *out = NULL, *data;
    if (b == NULL)
        return NULL;
    if ((key ? PEM_write_bio_PrivateKey(b, key, NULL, NULL, 0, NULL, NULL) : PEM_write_bio_X509(b, x)) == 1) {
        long n = BIO_get_mem_data(b, &data);
        out = malloc((size_t)n + 1);
        if (out) {
            memcpy(out, data, (size_t)n);
            out[n] = '\0';
        }
        OPENSSL_cleanse(data, (size_t)n);
    }
    BIO_free(b);
    return out;
}

static int store_cert(store_t *st, const cfg_site_t *s, const char *hosts, const char *cert, const char *key,
                      X509 *x, const char *source)
{
    sqlite3_stmt *q = store_prepare(st, "INSERT OR REPLACE INTO certificates (site, hosts, cert_pem, chain_pem, key_pem, "
                                        "not_before, not_after, source, issuer, updated) VALUES (?,?,?,'',?,?,?,?,?,?)");
    if (q == NULL)
        return -1;
    struct tm tb, ta;
    ASN1_TIME_to_tm(X509_get0_notBefore(x), &tb);
    ASN1_TIME_to_tm(X509_get0_notAfter(x), &ta);
    sqlite3_bind_text(q, 1, s->name.s, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 2, hosts, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 3, cert, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 4, key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 5, (sqlite3_int64)timegm(&tb));
    sqlite3_bind_int64(q, 6, (sqlite3_int64)timegm(&ta));
    sqlite3_bind_text(q, 7, source, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 8, "proxyd self-signed", -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 9, (sqlite3_int64)time(NULL));
    int rc = sqlite3_step(q) == SQLITE_DONE ? 0 : -1;
    if (rc < 0)
        snprintf(st->err, sizeof(st->err), "store %s: cannot store certificate of site '%s': %s", st->path, s->name.s,
                 sqlite3_errmsg(st->db));
    sqlite3_finalize(q);
    return rc;
}

int certs_ensure(store_t *st, const cfg_site_t *s)
{
    if (s->cert_mode != RT_CERT_SELF_SIGNED && s->cert_mode != RT_CERT_ACME)
        return 0;
    const char *source = s->cert_mode == RT_CERT_ACME ? "temporary" : "self-signed";
    char hosts[8192];
    certs_hosts(s, hosts, sizeof(hosts));
    if (current(st, s->name.s, hosts, source))
        return 0;
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = key ? make_cert(key, s, s->cert_mode == RT_CERT_ACME ? TEMPORARY_DAYS : SELF_SIGNED_DAYS) : NULL;
    char *cert = x ? certs_pem(NULL, x) : NULL, *kp = x ? certs_pem(key, NULL) : NULL;
    int rc = cert && kp ? store_cert(st, s, hosts, cert, kp, x, source) : -1;
    if (!(cert && kp))
        snprintf(st->err, sizeof(st->err), "cannot make a certificate for site '%s'", s->name.s);
    if (kp)
        OPENSSL_cleanse(kp, strlen(kp));
    free(kp);
    free(cert);
    X509_free(x);
    EVP_PKEY_free(key);
    ERR_clear_error();
    return rc;
}

int certs_import_files(store_t *st, const cfg_site_t *s)
{
    size_t cn, kn;
    char *cert = read_file(s->cert_file.s, &cn), *key = read_file(s->key_file.s, &kn);
    int rc = -1;
    if (cert == NULL || key == NULL) {
        snprintf(st->err, sizeof(st->err), "cannot read certificate files of site '%s': %s", s->name.s, strerror(errno));
        goto out;
    }
    char hosts[4096] = "";
    for (size_t i = 0; i < s->nhosts; i++)
        snprintf(hosts + strlen(hosts), sizeof(hosts) - strlen(hosts), "%s%s", i ? " " : "", s->hosts[i].s);
    sqlite3_stmt *q = store_prepare(st, "INSERT OR REPLACE INTO certificates (site, hosts, cert_pem, key_pem, not_before, "
                                        "not_after, source, issuer, updated) VALUES (?,?,?,?,0,0,'files','',?)");
    if (q == NULL)
        goto out;
    sqlite3_bind_text(q, 1, s->name.s, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 2, hosts, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 3, cert, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 4, key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 5, (sqlite3_int64)time(NULL));
    rc = sqlite3_step(q) == SQLITE_DONE ? 0 : -1;
    if (rc < 0)
        snprintf(st->err, sizeof(st->err), "store %s: cannot store certificate: %s", st->path, sqlite3_errmsg(st->db));
    sqlite3_finalize(q);
out:
    if (key)
        explicit_bzero(key, kn);
    free(cert);
    free(key);
    return rc;
}

int certs_prune(store_t *st, int64_t gen)
{
    sqlite3_stmt *q = store_prepare(st, "DELETE FROM certificates WHERE site NOT IN "
                                        "(SELECT name FROM generation_sites WHERE generation = ?)");
    if (q == NULL)
        return -1;
    sqlite3_bind_int64(q, 1, gen);
    int rc = sqlite3_step(q) == SQLITE_DONE ? 0 : -1;
    if (rc < 0)
        snprintf(st->err, sizeof(st->err), "store %s: cannot remove certificates of removed sites: %s", st->path,
                 sqlite3_errmsg(st->db));
    sqlite3_finalize(q);
    return rc;
}

/*
 * acme.c - ACME v2 (RFC 8555) over HTTP-01; see acme.h.
 *
 * HTTPS goes through libcurl (one easy handle, so every request after the
 * first reuses the TLS connection), JSON through jansson; keys, JWS
 * signatures and the CSR through OpenSSL.  ES256 signatures are the raw
 * 64-byte r||s of RFC 7518 §3.4, not OpenSSL's DER.
 *
 * Flow (RFC 8555 §7.1): directory, newNonce, newAccount, newOrder; for each
 * pending authorization publish the key authorization in the store, POST the
 * challenge and poll; poll the order until ready; finalize with a CSR; poll;
 * download the chain.  A signed POST refused with badNonce is resent with the
 * nonce that came with the refusal (§6.5).  Polls start at 50 ms and double up
 * to 1 s, a server's Retry-After is honoured (§7.5.1), and the whole issuance
 * is bounded by ACME_DEADLINE_MS.  Invariant: whatever happens, the challenge
 * rows published by an issuance are deleted before acme_issue returns.
 */
#include "acme.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509v3.h>

#include "../common/str.h"
#include "../common/util.h"
#include "certs.h"

#define ACME_POLL_FIRST_MS 50
#define ACME_POLL_MAX_MS 1000
#define ACME_DEADLINE_MS 90000   /* one issuance, every poll included */
#define ACME_CONNECT_MS 10000
#define ACME_REQUEST_MS 30000
#define ACME_NONCE_TRIES 8
#define ACME_CHALLENGE_TTL 600   /* seconds a published key authorization lives */
#define ACME_MAX_BODY (1 << 20)
#define TOKEN_CHARS "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"

typedef struct {
    long status;
    str_buf_t body;
    char location[2048];
    char content_type[128];
    char nonce[256];
    int64_t retry_after_ms; /* -1: none given */
} resp_t;

/* One HTTP-01 challenge this issuance answers. */
typedef struct {
    char *authz_url, *url, *token, *name;
    bool pending;
} chal_t;

struct acme {
    store_t *st;
    char *directory, *email, *ca_file;
    void (*published)(store_t *st);
    CURL *curl;
    struct curl_slist *hdr_jose, *hdr_pem;
    bool want_pem;
    char curl_err[CURL_ERROR_SIZE];
    char err[2048];
    char ptype[160]; /* type of the last problem document, "" if none */
    char nonce[256];
    json_t *dir;
    char *dir_err; /* why the directory could not be had, once it could not */
    EVP_PKEY *key;
    json_t *jwk;
    char *kid, *thumbprint;
    int64_t deadline;
};

static int fail(acme_t *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(acme_t *a, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(a->err, sizeof(a->err), fmt, ap);
    va_end(ap);
    ERR_clear_error();
    return -1;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int64_t ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) < 0)
        ;
}

static const char *jstr(const json_t *o, const char *key) { return json_string_value(json_object_get(o, key)); }

/* A string member, or dflt when it is absent. */
static const char *jstr_or(const json_t *o, const char *key, const char *dflt)
{
    const char *s = jstr(o, key);
    return s ? s : dflt;
}

/* ---- base64url, keys, JWS ----------------------------------------------------------- */

static char *b64u(const void *p, size_t n)
{
    char *out = malloc(4 * ((n + 2) / 3) + 1);
    if (out == NULL)
        abort();
    int len = EVP_EncodeBlock((unsigned char *)out, p, (int)n);
    while (len > 0 && out[len - 1] == '=')
        len--;
    out[len] = '\0';
    for (char *c = out; *c; c++)
        *c = *c == '+' ? '-' : *c == '/' ? '_' : *c;
    return out;
}

static char *b64u_str(const char *s) { return b64u(s, strlen(s)); }

/* The account key's public JWK (RFC 7517) and its RFC 7638 thumbprint. */
static int make_jwk(acme_t *a)
{
    BIGNUM *x = NULL, *y = NULL;
    unsigned char bx[32], by[32];
    int rc = -1;
    if (EVP_PKEY_get_bn_param(a->key, OSSL_PKEY_PARAM_EC_PUB_X, &x) != 1 ||
        EVP_PKEY_get_bn_param(a->key, OSSL_PKEY_PARAM_EC_PUB_Y, &y) != 1 || BN_bn2binpad(x, bx, 32) != 32 ||
        BN_bn2binpad(y, by, 32) != 32) {
        fail(a, "the ACME account key of %s is not a P-256 key", a->directory);
        goto out;
    }
    char *sx = b64u(bx, 32), *sy = b64u(by, 32);
    a->jwk = json_pack("{s:s, s:s, s:s, s:s}", "crv", "P-256", "kty", "EC", "x", sx, "y", sy);
    free(sx);
    free(sy);
    /* RFC 7638 §3: required members only, sorted, no whitespace. */
    char *canon = a->jwk ? json_dumps(a->jwk, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    if (canon == NULL)
        abort();
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)canon, strlen(canon), md);
    a->thumbprint = b64u(md, sizeof(md));
    free(canon);
    rc = 0;
out:
    BN_free(x);
    BN_free(y);
    return rc;
}

/* ES256 (RFC 7518 §3.4) of data: base64url of r||s, 32 bytes each. */
static char *es256(EVP_PKEY *key, const char *data, size_t n)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char der[128], raw[64];
    size_t dlen = sizeof(der);
    char *out = NULL;
    if (md && EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) == 1 &&
        EVP_DigestSign(md, der, &dlen, (const unsigned char *)data, n) == 1) {
        const unsigned char *p = der;
        ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &p, (long)dlen);
        const BIGNUM *r, *s;
        if (sig) {
            ECDSA_SIG_get0(sig, &r, &s);
            if (BN_bn2binpad(r, raw, 32) == 32 && BN_bn2binpad(s, raw + 32, 32) == 32)
                out = b64u(raw, sizeof(raw));
            ECDSA_SIG_free(sig);
        }
    }
    EVP_MD_CTX_free(md);
    return out;
}

/* The flattened JWS (RFC 8555 §6.2) of payload (NULL: POST-as-GET, §6.3). */
static char *jws(acme_t *a, const char *url, const char *payload)
{
    json_t *prot = json_pack("{s:s, s:s, s:s}", "alg", "ES256", "nonce", a->nonce, "url", url);
    if (prot == NULL)
        abort();
    if (a->kid)
        json_object_set_new(prot, "kid", json_string(a->kid));
    else
        json_object_set(prot, "jwk", a->jwk);
    char *ptext = json_dumps(prot, JSON_COMPACT);
    json_decref(prot);
    if (ptext == NULL)
        abort();
    char *p64 = b64u_str(ptext), *pl64 = b64u_str(payload ? payload : "");
    free(ptext);
    str_buf_t in = {0};
    str_printf(&in, "%s.%s", p64, pl64);
    char *sig = es256(a->key, (const char *)in.p, in.len), *out = NULL;
    str_buf_free(&in);
    if (sig) {
        json_t *body = json_pack("{s:s, s:s, s:s}", "protected", p64, "payload", pl64, "signature", sig);
        out = body ? json_dumps(body, JSON_COMPACT) : NULL;
        json_decref(body);
    }
    free(p64);
    free(pl64);
    free(sig);
    return out;
}

/* ---- HTTP ------------------------------------------------------------------------------ */

static void resp_free(resp_t *r) { str_buf_free(&r->body); }

static void resp_reset(resp_t *r)
{
    str_buf_free(&r->body);
    memset(r, 0, sizeof(*r));
    r->retry_after_ms = -1;
}

static int64_t retry_after(const char *v)
{
    char *end;
    long s = strtol(v, &end, 10);
    if (end != v && *end == '\0')
        return s < 0 ? 0 : (int64_t)s * 1000;
    time_t t = curl_getdate(v, NULL); /* the HTTP-date form */
    return t < 0 ? -1 : t <= time(NULL) ? 0 : (int64_t)(t - time(NULL)) * 1000;
}

/* A header value into dst, cut to fit (an over-long one is useless anyway). */
static void copy_value(char *dst, size_t cap, const char *v, size_t n)
{
    n = n < cap ? n : cap - 1;
    memcpy(dst, v, n);
    dst[n] = '\0';
}

static size_t on_header(char *p, size_t size, size_t nitems, void *arg)
{
    resp_t *r = arg;
    size_t n = size * nitems;
    if (n >= 5 && strncmp(p, "HTTP/", 5) == 0) { /* a new response (after 100 Continue) */
        str_buf_t keep = r->body;
        r->body = (str_buf_t){0};
        resp_reset(r);
        r->body = keep;
        return n;
    }
    const char *colon = memchr(p, ':', n);
    if (colon == NULL)
        return n;
    size_t klen = (size_t)(colon - p);
    const char *v = colon + 1, *end = p + n;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
        end--;
    size_t vlen = (size_t)(end - v);
    if (klen == 12 && strncasecmp(p, "Replay-Nonce", 12) == 0)
        copy_value(r->nonce, sizeof(r->nonce), v, vlen);
    else if (klen == 8 && strncasecmp(p, "Location", 8) == 0)
        copy_value(r->location, sizeof(r->location), v, vlen);
    else if (klen == 12 && strncasecmp(p, "Content-Type", 12) == 0)
        copy_value(r->content_type, sizeof(r->content_type), v, vlen);
    else if (klen == 11 && strncasecmp(p, "Retry-After", 11) == 0) {
        char val[64];
        copy_value(val, sizeof(val), v, vlen);
        r->retry_after_ms = retry_after(val);
    }
    return n;
}

static size_t on_body(char *p, size_t size, size_t nitems, void *arg)
{
    resp_t *r = arg;
    size_t n = size * nitems;
    if (r->body.len + n > ACME_MAX_BODY)
        return 0; /* aborts the transfer */
    str_append(&r->body, p, n);
    str_reserve(&r->body, 1);
    r->body.p[r->body.len] = '\0';
    return n;
}

/* One request: GET (post NULL), HEAD (head) or POST of a JWS.  -1 only when
 * no HTTP response came; what names the endpoint in that message. */
static int http_do(acme_t *a, const char *what, const char *url, const char *post, bool head, resp_t *r)
{
    CURL *c = a->curl;
    resp_reset(r);
    curl_easy_reset(c); /* keeps the connection, DNS and TLS session caches */
    a->curl_err[0] = '\0';
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https");
    curl_easy_setopt(c, CURLOPT_USERAGENT, "proxyctl-acme/1");
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, a->curl_err);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)ACME_CONNECT_MS);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)ACME_REQUEST_MS);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    if (a->ca_file)
        curl_easy_setopt(c, CURLOPT_CAINFO, a->ca_file);
    if (head) {
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    } else if (post) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, post);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(post));
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, a->want_pem ? a->hdr_pem : a->hdr_jose);
    }
    CURLcode rc = curl_easy_perform(c);
    if (rc != CURLE_OK)
        return fail(a, "cannot reach the %s %s: %s", what, url, a->curl_err[0] ? a->curl_err : curl_easy_strerror(rc));
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    if (r->nonce[0])
        memcpy(a->nonce, r->nonce, sizeof(a->nonce));
    return 0;
}

static bool is_json(const resp_t *r)
{
    return strncasecmp(r->content_type, "application/json", 16) == 0 ||
           strncasecmp(r->content_type, "application/problem+json", 24) == 0;
}

/* "type: detail" of a problem document (RFC 8555 §6.7), subproblems appended. */
static int problem(acme_t *a, const json_t *p, const char *fallback)
{
    const char *type = jstr(p, "type"), *detail = jstr(p, "detail");
    snprintf(a->ptype, sizeof(a->ptype), "%s", type ? type : "");
    int n = snprintf(a->err, sizeof(a->err), "%s: %s", type ? type : "about:blank", detail ? detail : fallback);
    size_t i;
    json_t *sub;
    json_array_foreach(json_object_get(p, "subproblems"), i, sub)
    {
        if (n < 0 || (size_t)n >= sizeof(a->err))
            break;
        n += snprintf(a->err + n, sizeof(a->err) - (size_t)n, "; %s: %s", jstr_or(json_object_get(sub, "identifier"), "value", "?"),
                      jstr_or(sub, "detail", ""));
    }
    return -1;
}

/* The JSON body (when there is one) into *json; a 4xx/5xx becomes the error. */
static int check_response(acme_t *a, const char *url, const resp_t *r, json_t **json)
{
    json_t *j = NULL;
    if (is_json(r)) {
        json_error_t je;
        j = json_loadb((const char *)r->body.p, r->body.len, 0, &je);
        if (j == NULL)
            return fail(a, "ACME server %s sent invalid JSON (HTTP %ld): %s", url, r->status, je.text);
    }
    if (r->status >= 400) {
        if (j && json_is_object(j))
            problem(a, j, "no detail given");
        else
            fail(a, "ACME server %s answered HTTP %ld", url, r->status);
        json_decref(j);
        return -1;
    }
    if (json)
        *json = j;
    else
        json_decref(j);
    return 0;
}

static bool bad_nonce(const resp_t *r)
{
    if (r->status != 400 || !is_json(r))
        return false;
    json_t *j = json_loadb((const char *)r->body.p, r->body.len, 0, NULL);
    const char *type = jstr(j, "type");
    bool bad = type && strcmp(type, "urn:ietf:params:acme:error:badNonce") == 0;
    json_decref(j);
    return bad;
}

static const char *dir_url(acme_t *a, const char *key) { return jstr(a->dir, key); }

static int new_nonce(acme_t *a)
{
    resp_t r = {0};
    int rc = http_do(a, "ACME server", dir_url(a, "newNonce"), NULL, true, &r);
    if (rc == 0 && a->nonce[0] == '\0')
        rc = fail(a, "ACME server %s gave no Replay-Nonce (HTTP %ld)", dir_url(a, "newNonce"), r.status);
    resp_free(&r);
    return rc;
}

/* A signed POST; the response in r (caller frees) and its JSON in *json. */
static int post(acme_t *a, const char *url, const char *payload, resp_t *r, json_t **json)
{
    if (json)
        *json = NULL;
    a->ptype[0] = '\0';
    for (int tries = 1;; tries++) {
        if (a->nonce[0] == '\0' && new_nonce(a) < 0)
            return -1;
        char *body = jws(a, url, payload);
        if (body == NULL)
            return fail(a, "cannot sign a request to %s with the account key", url);
        a->nonce[0] = '\0'; /* spent; the response brings the next one */
        int rc = http_do(a, "ACME server", url, body, false, r);
        free(body);
        if (rc < 0)
            return -1;
        if (tries < ACME_NONCE_TRIES && bad_nonce(r))
            continue;
        return check_response(a, url, r, json);
    }
}

/* POST-as-GET of url until its status is none of busy[]; *out receives it. */
static int poll(acme_t *a, const char *url, const char *what, const char *const *busy, json_t **out)
{
    int64_t delay = ACME_POLL_FIRST_MS;
    for (;;) {
        resp_t r = {0};
        json_t *j = NULL;
        int rc = post(a, url, NULL, &r, &j);
        int64_t after = r.retry_after_ms;
        resp_free(&r);
        if (rc < 0)
            return -1;
        const char *s = jstr(j, "status");
        bool waiting = false;
        for (size_t i = 0; s && busy[i]; i++)
            waiting |= strcmp(s, busy[i]) == 0;
        if (!waiting) {
            *out = j;
            return 0;
        }
        int64_t wait = after > delay ? after : delay;
        if (now_ms() + wait > a->deadline) {
            rc = fail(a, "%s is still '%s' after %d s; giving up (%s)", what, s, ACME_DEADLINE_MS / 1000, url);
            json_decref(j);
            return rc;
        }
        json_decref(j);
        sleep_ms(wait);
        delay = delay * 2 > ACME_POLL_MAX_MS ? ACME_POLL_MAX_MS : delay * 2;
    }
}

/* ---- directory and account ------------------------------------------------------------------ */

static int directory(acme_t *a)
{
    if (a->dir)
        return 0;
    if (a->dir_err) /* one unreachable CA fails every site at once, not after a timeout each */
        return fail(a, "%s", a->dir_err);
    if (strncmp(a->directory, "https://", 8) != 0)
        return fail(a, "ACME directory %s is not an https:// URL (RFC 8555 §6.1)", a->directory);
    if (a->ca_file && access(a->ca_file, R_OK) < 0)
        return fail(a, "acme.ca_file %s (the CA bundle trusted for %s): %s", a->ca_file, a->directory, strerror(errno));
    resp_t r = {0};
    json_t *j = NULL;
    int rc = http_do(a, "ACME directory", a->directory, NULL, false, &r);
    if (rc == 0 && (r.status != 200 || !is_json(&r)))
        rc = fail(a, "ACME directory %s answered HTTP %ld (%s), not a directory", a->directory, r.status,
                  r.content_type[0] ? r.content_type : "no content type");
    if (rc == 0)
        j = json_loadb((const char *)r.body.p, r.body.len, 0, NULL);
    if (rc == 0 && !(jstr(j, "newNonce") && jstr(j, "newAccount") && jstr(j, "newOrder"))) {
        rc = fail(a, "ACME directory %s lacks newNonce, newAccount or newOrder", a->directory);
        json_decref(j);
        j = NULL;
    }
    a->dir = j;
    if (rc < 0)
        a->dir_err = strdup(a->err);
    resp_free(&r);
    return rc;
}

/* Run sql (binding the given texts in order) as one committed transaction. */
static int store_tx(acme_t *a, const char *sql, const char *const *texts, size_t n, int64_t num)
{
    store_t *st = a->st;
    if (store_begin(st) < 0)
        return fail(a, "%s", st->err);
    sqlite3_stmt *q = store_prepare(st, sql);
    int rc = q ? 0 : -1;
    for (size_t i = 0; q && i < n; i++)
        sqlite3_bind_text(q, (int)i + 1, texts[i], -1, SQLITE_STATIC);
    if (q && num >= 0)
        sqlite3_bind_int64(q, (int)n + 1, num);
    if (q && sqlite3_step(q) != SQLITE_DONE) {
        snprintf(st->err, sizeof(st->err), "store %s: %s", st->path, sqlite3_errmsg(st->db));
        rc = -1;
    }
    sqlite3_finalize(q);
    if (rc == 0 && store_commit(st) < 0)
        rc = -1;
    if (rc < 0) {
        store_rollback(st);
        return fail(a, "%s", st->err);
    }
    return 0;
}

/* The account key of this directory from the store, or a new one stored at once. */
static int account_key(acme_t *a, bool *existed)
{
    sqlite3_stmt *q = store_prepare(a->st, "SELECT key_pem FROM acme_accounts WHERE directory = ?");
    if (q == NULL)
        return fail(a, "%s", a->st->err);
    sqlite3_bind_text(q, 1, a->directory, -1, SQLITE_STATIC);
    *existed = sqlite3_step(q) == SQLITE_ROW;
    if (*existed) {
        const void *pem = sqlite3_column_blob(q, 0);
        BIO *b = BIO_new_mem_buf(pem, sqlite3_column_bytes(q, 0));
        a->key = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
        BIO_free(b);
    }
    sqlite3_finalize(q);
    if (*existed)
        return a->key ? make_jwk(a) : fail(a, "the stored ACME account key of %s is unreadable", a->directory);
    a->key = EVP_EC_gen("P-256");
    char *pem = a->key ? certs_pem(a->key, NULL) : NULL;
    if (pem == NULL)
        return fail(a, "cannot make an ACME account key");
    const char *v[] = {a->directory, a->email, pem};
    int rc = store_tx(a, "INSERT INTO acme_accounts (directory, email, key_pem, kid, created) VALUES (?,?,?,'',?)", v, 3,
                      (int64_t)time(NULL));
    OPENSSL_cleanse(pem, strlen(pem));
    free(pem);
    return rc < 0 ? -1 : make_jwk(a);
}

/* newAccount (§7.3): look the key's account up; register it when there is none. */
static int account(acme_t *a)
{
    bool existed = false;
    if (a->kid)
        return 0;
    if (account_key(a, &existed) < 0)
        return -1;
    const char *url = dir_url(a, "newAccount");
    resp_t r = {0};
    int rc = -1;
    if (existed) {
        rc = post(a, url, "{\"onlyReturnExisting\":true}", &r, NULL);
        if (rc < 0 && strcmp(a->ptype, "urn:ietf:params:acme:error:accountDoesNotExist") != 0)
            goto out;
    }
    if (rc < 0) {
        json_t *p = json_pack("{s:b}", "termsOfServiceAgreed", 1);
        if (a->email[0])
            json_object_set_new(p, "contact", json_pack("[s+]", "mailto:", a->email));
        char *payload = json_dumps(p, JSON_COMPACT);
        json_decref(p);
        rc = post(a, url, payload, &r, NULL);
        free(payload);
        if (rc < 0)
            goto out;
    }
    if (r.location[0] == '\0') {
        rc = fail(a, "ACME server %s gave no account URL (HTTP %ld)", url, r.status);
        goto out;
    }
    a->kid = strdup(r.location);
    const char *v[] = {a->kid, a->email, a->directory};
    rc = store_tx(a, "UPDATE acme_accounts SET kid = ?, email = ? WHERE directory = ?", v, 3, -1);
out:
    resp_free(&r);
    return rc;
}

/* ---- authorizations and challenges ------------------------------------------------------ */

/* Why an authorization is not valid: its challenge's error, else its status. */
static int authz_failed(acme_t *a, const json_t *az)
{
    const char *name = jstr(json_object_get(az, "identifier"), "value");
    size_t i;
    json_t *ch;
    json_array_foreach(json_object_get(az, "challenges"), i, ch)
    {
        const json_t *e = json_object_get(ch, "error");
        if (json_is_object(e))
            return problem(a, e, "validation failed");
    }
    return fail(a, "authorization for %s is '%s'", name ? name : "?", jstr_or(az, "status", "?"));
}

static void chal_free(chal_t *c, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(c[i].authz_url);
        free(c[i].url);
        free(c[i].token);
        free(c[i].name);
    }
}

/* Record the http-01 challenge of a pending authorization. */
static int pick_http01(acme_t *a, const char *authz_url, const json_t *az, chal_t *out)
{
    const char *name = jstr(json_object_get(az, "identifier"), "value");
    size_t i;
    json_t *ch;
    json_array_foreach(json_object_get(az, "challenges"), i, ch)
    {
        const char *type = jstr(ch, "type"), *token = jstr(ch, "token"), *url = jstr(ch, "url");
        if (type == NULL || strcmp(type, "http-01") != 0)
            continue;
        size_t n = token ? strlen(token) : 0;
        if (url == NULL || n == 0 || n > 128 || strspn(token, TOKEN_CHARS) != n)
            return fail(a, "ACME server sent a malformed http-01 challenge for %s", name ? name : "?");
        out->authz_url = strdup(authz_url);
        out->url = strdup(url);
        out->token = strdup(token);
        out->name = strdup(name ? name : "?");
        out->pending = jstr(ch, "status") && strcmp(jstr(ch, "status"), "pending") == 0;
        return 0;
    }
    return fail(a, "the CA offers no http-01 challenge for %s", name ? name : "?");
}

/* Key authorizations into acme_challenges, committed, and proxyd told: it
 * serves them before the CA is asked to look (published returns once the
 * master has them in the workers' map). */
static int publish(acme_t *a, const chal_t *c, size_t n)
{
    store_t *st = a->st;
    if (store_begin(st) < 0)
        return fail(a, "%s", st->err);
    int64_t now = (int64_t)time(NULL);
    int rc = store_exec(st, "DELETE FROM acme_challenges WHERE expires <= strftime('%s','now')");
    sqlite3_stmt *q = rc == 0 ? store_prepare(st, "INSERT OR REPLACE INTO acme_challenges (token, key_authorization, "
                                                   "expires) VALUES (?,?,?)") : NULL;
    for (size_t i = 0; q && rc == 0 && i < n; i++) {
        char ka[512];
        snprintf(ka, sizeof(ka), "%s.%s", c[i].token, a->thumbprint); /* §8.1 */
        sqlite3_reset(q);
        sqlite3_bind_text(q, 1, c[i].token, -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 2, ka, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(q, 3, now + ACME_CHALLENGE_TTL);
        if (sqlite3_step(q) != SQLITE_DONE) {
            snprintf(st->err, sizeof(st->err), "store %s: cannot publish a challenge: %s", st->path, sqlite3_errmsg(st->db));
            rc = -1;
        }
    }
    sqlite3_finalize(q);
    if (q == NULL || rc < 0 || store_commit(st) < 0) {
        store_rollback(st);
        return fail(a, "%s", st->err);
    }
    if (a->published)
        a->published(st);
    return 0;
}

static void unpublish(acme_t *a, const chal_t *c, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const char *v[] = {c[i].token};
        char keep[sizeof(a->err)];
        memcpy(keep, a->err, sizeof(keep)); /* a cleanup failure must not hide the real error */
        store_tx(a, "DELETE FROM acme_challenges WHERE token = ?", v, 1, -1);
        memcpy(a->err, keep, sizeof(keep));
    }
}

/* Every authorization of the order valid: answer the pending ones over HTTP-01
 * (ch has room for one per identifier, which is what §7.1.3 promises). */
static int authorize(acme_t *a, const json_t *order, chal_t *ch, size_t cap, size_t *nch)
{
    size_t i;
    json_t *u;
    if (json_array_size(json_object_get(order, "authorizations")) > cap)
        return fail(a, "the order holds more authorizations than identifiers");
    json_array_foreach(json_object_get(order, "authorizations"), i, u)
    {
        resp_t r = {0};
        json_t *az = NULL;
        int rc = json_string_value(u) ? post(a, json_string_value(u), NULL, &r, &az) : fail(a, "malformed order");
        resp_free(&r);
        const char *s = jstr(az, "status");
        if (rc == 0 && s && strcmp(s, "pending") == 0)
            rc = pick_http01(a, json_string_value(u), az, &ch[(*nch)++]);
        else if (rc == 0 && (s == NULL || strcmp(s, "valid") != 0))
            rc = authz_failed(a, az);
        json_decref(az);
        if (rc < 0)
            return -1;
    }
    if (*nch && publish(a, ch, *nch) < 0)
        return -1;
    for (i = 0; i < *nch; i++) { /* §7.5.1: the client says it is ready */
        resp_t r = {0};
        int rc = ch[i].pending ? post(a, ch[i].url, "{}", &r, NULL) : 0;
        resp_free(&r);
        if (rc < 0)
            return -1;
    }
    static const char *const busy[] = {"pending", NULL};
    for (i = 0; i < *nch; i++) {
        json_t *az = NULL;
        char what[300];
        snprintf(what, sizeof(what), "the authorization for %s", ch[i].name);
        if (poll(a, ch[i].authz_url, what, busy, &az) < 0)
            return -1;
        int rc = strcmp(jstr_or(az, "status", ""), "valid") == 0 ? 0 : authz_failed(a, az);
        json_decref(az);
        if (rc < 0)
            return -1;
    }
    return 0;
}

/* ---- order, finalize, download ---------------------------------------------------------- */

static char *csr_der_b64u(EVP_PKEY *key, const char *const *hosts, size_t n)
{
    X509_REQ *req = X509_REQ_new();
    GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();
    STACK_OF(X509_EXTENSION) *exts = NULL;
    char *out = NULL;
    if (req == NULL || gens == NULL)
        goto out;
    X509_REQ_set_version(req, 0);
    if (strlen(hosts[0]) <= 64) /* ub-common-name; the SANs are what counts */
        X509_NAME_add_entry_by_txt(X509_REQ_get_subject_name(req), "CN", MBSTRING_ASC,
                                   (const unsigned char *)hosts[0], -1, -1, 0);
    for (size_t i = 0; i < n; i++) {
        GENERAL_NAME *g = GENERAL_NAME_new();
        ASN1_IA5STRING *ia5 = ASN1_IA5STRING_new();
        if (g == NULL || ia5 == NULL || ASN1_STRING_set(ia5, hosts[i], -1) != 1) {
            GENERAL_NAME_free(g);
            ASN1_IA5STRING_free(ia5);
            goto out;
        }
        GENERAL_NAME_set0_value(g, GEN_DNS, ia5);
        sk_GENERAL_NAME_push(gens, g);
    }
    if (X509V3_add1_i2d(&exts, NID_subject_alt_name, gens, 0, X509V3_ADD_DEFAULT) != 1 ||
        X509_REQ_add_extensions(req, exts) != 1 || X509_REQ_set_pubkey(req, key) != 1 ||
        X509_REQ_sign(req, key, EVP_sha256()) == 0)
        goto out;
    int len = i2d_X509_REQ(req, NULL);
    unsigned char *der = len > 0 ? malloc((size_t)len) : NULL, *p = der;
    if (der && i2d_X509_REQ(req, &p) == len)
        out = b64u(der, (size_t)len);
    free(der);
out:
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    GENERAL_NAMES_free(gens);
    X509_REQ_free(req);
    return out;
}

static const char *const order_busy[] = {"pending", "processing", NULL};

/* Why an order ended in a state other than the one wanted. */
static int order_failed(acme_t *a, const json_t *o, const char *want)
{
    if (json_is_object(json_object_get(o, "error")))
        return problem(a, json_object_get(o, "error"), "order failed");
    return fail(a, "the order is '%s', expected '%s'", jstr_or(o, "status", "?"), want);
}

/* finalize (§7.4) with a CSR for a new key; *order becomes the valid order. */
static int finalize(acme_t *a, const char *order_url, json_t **order, const char *const *hosts, size_t n,
                    EVP_PKEY **key)
{
    *key = EVP_EC_gen("P-256");
    char *csr = *key ? csr_der_b64u(*key, hosts, n) : NULL;
    if (csr == NULL)
        return fail(a, "cannot make a certificate request");
    json_t *p = json_pack("{s:s}", "csr", csr);
    char *payload = json_dumps(p, JSON_COMPACT);
    json_decref(p);
    free(csr);
    resp_t r = {0};
    json_t *j = NULL;
    int rc = post(a, jstr(*order, "finalize"), payload, &r, &j);
    free(payload);
    resp_free(&r);
    if (rc == 0 && strcmp(jstr_or(j, "status", ""), "valid") != 0) {
        json_decref(j);
        j = NULL;
        rc = poll(a, order_url, "the order", order_busy, &j);
    }
    if (rc == 0 && strcmp(jstr_or(j, "status", ""), "valid") != 0)
        rc = order_failed(a, j, "valid");
    if (rc == 0 && jstr(j, "certificate") == NULL)
        rc = fail(a, "the valid order %s names no certificate", order_url);
    json_decref(*order);
    *order = j;
    return rc;
}

static int64_t asn1_unix(const ASN1_TIME *t)
{
    struct tm tm;
    return ASN1_TIME_to_tm(t, &tm) == 1 ? (int64_t)timegm(&tm) : 0;
}

/* Split the PEM chain (§7.4.2: leaf first) and check it against key and hosts. */
static int take_chain(acme_t *a, const str_buf_t *pem, EVP_PKEY *key, const char *const *hosts, size_t n,
                      acme_cert_t *out)
{
    BIO *b = BIO_new_mem_buf(pem->p, (int)pem->len);
    X509 *leaf = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL, *x;
    str_buf_t chain = {0};
    int rc = -1;
    if (leaf == NULL) {
        fail(a, "the CA sent no PEM certificate");
        goto out;
    }
    while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
        char *p = certs_pem(NULL, x);
        if (p)
            str_printf(&chain, "%s", p);
        free(p);
        X509_free(x);
    }
    if (X509_check_private_key(leaf, key) != 1) {
        fail(a, "the CA's certificate does not match the key of the request");
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        if (X509_check_host(leaf, hosts[i], 0, 0, NULL) != 1) {
            fail(a, "the CA's certificate does not cover %s", hosts[i]);
            goto out;
        }
    out->cert_pem = certs_pem(NULL, leaf);
    out->key_pem = certs_pem(key, NULL);
    out->chain_pem = strdup(chain.p ? (const char *)chain.p : "");
    out->not_before = asn1_unix(X509_get0_notBefore(leaf));
    out->not_after = asn1_unix(X509_get0_notAfter(leaf));
    if (X509_NAME_get_text_by_NID(X509_get_issuer_name(leaf), NID_commonName, out->issuer, sizeof(out->issuer)) < 0)
        snprintf(out->issuer, sizeof(out->issuer), "?");
    rc = out->cert_pem && out->key_pem && out->chain_pem ? 0 : fail(a, "out of memory");
out:
    str_buf_free(&chain);
    X509_free(leaf);
    BIO_free(b);
    return rc;
}

static int download(acme_t *a, const char *url, EVP_PKEY *key, const char *const *hosts, size_t n, acme_cert_t *out)
{
    resp_t r = {0};
    a->want_pem = true; /* Accept: application/pem-certificate-chain */
    int rc = post(a, url, NULL, &r, NULL);
    a->want_pem = false;
    if (rc == 0 && r.status != 200)
        rc = fail(a, "certificate download from %s answered HTTP %ld", url, r.status);
    if (rc == 0)
        rc = take_chain(a, &r.body, key, hosts, n, out);
    resp_free(&r);
    return rc;
}

/* newOrder (§7.4); *order and *url receive the order and its URL. */
static int new_order(acme_t *a, const char *const *hosts, size_t n, json_t **order, char **url)
{
    json_t *ids = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(ids, json_pack("{s:s, s:s}", "type", "dns", "value", hosts[i]));
    json_t *p = json_pack("{s:o}", "identifiers", ids);
    char *payload = json_dumps(p, JSON_COMPACT);
    json_decref(p);
    resp_t r = {0};
    int rc = post(a, dir_url(a, "newOrder"), payload, &r, order);
    free(payload);
    if (rc == 0 && (r.location[0] == '\0' || !json_is_object(*order)))
        rc = fail(a, "ACME server %s gave no order URL (HTTP %ld)", dir_url(a, "newOrder"), r.status);
    if (rc == 0)
        *url = strdup(r.location);
    resp_free(&r);
    return rc;
}

/* ---- public ------------------------------------------------------------------------------ */

/* The steps after newOrder; an order the CA already has 'ready' (authorizations
 * reused, §7.1.3) skips the challenges. */
static int fulfil(acme_t *a, const char *url, json_t **order, const char *const *hosts, size_t n, acme_cert_t *out,
                  chal_t *ch, size_t *nch)
{
    static const char *const pending[] = {"pending", NULL};
    EVP_PKEY *key = NULL;
    const char *s = jstr_or(*order, "status", "");
    int rc = 0;
    if (strcmp(s, "valid") == 0 || strcmp(s, "processing") == 0)
        return fail(a, "the CA returned an order already '%s' (%s), finalized with a key proxyctl does not have", s, url);
    if (strcmp(s, "pending") == 0) {
        json_t *o = NULL;
        rc = authorize(a, *order, ch, n, nch);
        if (rc == 0)
            rc = poll(a, url, "the order", pending, &o);
        if (rc == 0) {
            json_decref(*order);
            *order = o;
        }
    }
    if (rc == 0 && strcmp(jstr_or(*order, "status", ""), "ready") != 0)
        rc = order_failed(a, *order, "ready");
    if (rc == 0)
        rc = finalize(a, url, order, hosts, n, &key);
    if (rc == 0)
        rc = download(a, jstr(*order, "certificate"), key, hosts, n, out);
    EVP_PKEY_free(key);
    return rc;
}

int acme_issue(acme_t *a, const char *const *hosts, size_t n, acme_cert_t *out)
{
    memset(out, 0, sizeof(*out));
    a->err[0] = '\0';
    if (n == 0)
        return fail(a, "no host names to put in a certificate");
    for (size_t i = 0; i < n; i++)
        if (strchr(hosts[i], '*'))
            return fail(a, "host '%s' is a wildcard: ACME issues wildcard certificates only over DNS-01, and "
                           "proxyctl answers HTTP-01 only", hosts[i]);
    a->deadline = now_ms() + ACME_DEADLINE_MS;
    if (directory(a) < 0 || account(a) < 0)
        return -1;
    json_t *order = NULL;
    char *url = NULL;
    chal_t *ch = calloc(n, sizeof(*ch));
    size_t nch = 0;
    if (ch == NULL)
        abort();
    int rc = new_order(a, hosts, n, &order, &url);
    if (rc == 0)
        rc = fulfil(a, url, &order, hosts, n, out, ch, &nch);
    unpublish(a, ch, nch);
    chal_free(ch, nch);
    free(ch);
    free(url);
    json_decref(order);
    if (rc < 0)
        acme_cert_free(out);
    return rc;
}

const char *acme_error(const acme_t *a) { return a->err; }

acme_t *acme_new(store_t *st, const acme_config_t *cfg)
{
    acme_t *a = calloc(1, sizeof(*a));
    if (a == NULL || curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        free(a);
        return NULL;
    }
    a->st = st;
    a->directory = strdup(cfg->directory ? cfg->directory : "");
    a->email = strdup(cfg->email ? cfg->email : "");
    a->ca_file = cfg->ca_file && *cfg->ca_file ? strdup(cfg->ca_file) : NULL;
    a->published = cfg->published;
    a->curl = curl_easy_init();
    a->hdr_jose = curl_slist_append(NULL, "Content-Type: application/jose+json");
    a->hdr_pem = curl_slist_append(curl_slist_append(NULL, "Content-Type: application/jose+json"),
                                   "Accept: application/pem-certificate-chain");
    if (!a->directory || !a->email || !a->curl || !a->hdr_jose || !a->hdr_pem) {
        acme_free(a);
        return NULL;
    }
    return a;
}

void acme_free(acme_t *a)
{
    if (a == NULL)
        return;
    if (a->curl)
        curl_easy_cleanup(a->curl);
    curl_slist_free_all(a->hdr_jose);
    curl_slist_free_all(a->hdr_pem);
    json_decref(a->dir);
    free(a->dir_err);
    json_decref(a->jwk);
    EVP_PKEY_free(a->key);
    free(a->kid);
    free(a->thumbprint);
    free(a->directory);
    free(a->email);
    free(a->ca_file);
    free(a);
    curl_global_cleanup();
}

void acme_cert_free(acme_cert_t *c)
{
    if (c->key_pem)
        OPENSSL_cleanse(c->key_pem, strlen(c->key_pem));
    free(c->cert_pem);
    free(c->chain_pem);
    free(c->key_pem);
    memset(c, 0, sizeof(*c));
}

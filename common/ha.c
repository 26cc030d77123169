/*
 * ha.c - the HA pair's settings, snapshot and TLS link (see ha.h).
 */
#include "ha.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509v3.h>

#include "ruletable.h"

static int seterr(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int seterr(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* ---- settings and state ------------------------------------------------------ */

static void copy_setting(store_t *st, const char *key, char *out, size_t cap)
{
    char *v = NULL;
    store_get_setting(st, key, &v);
    snprintf(out, cap, "%s", v ? v : "");
    free(v);
}

int ha_conf_load(store_t *st, ha_conf_t *c)
{
    memset(c, 0, sizeof(*c));
    char *node = NULL;
    if (store_get_setting(st, "ha_node", &node) < 0)
        return -1;
    if (node == NULL || *node == '\0') {
        free(node);
        return 0;
    }
    snprintf(c->node, sizeof(c->node), "%s", node);
    free(node);
    copy_setting(st, "ha_peer", c->peer, sizeof(c->peer));
    copy_setting(st, "ha_listen", c->listen, sizeof(c->listen));
    return 1;
}

int ha_conf_save(store_t *st, const char *node, const char *peer, const char *listen)
{
    if (node == NULL)
        return store_exec(st, "DELETE FROM settings WHERE key IN ('ha_node', 'ha_peer', 'ha_listen')");
    return store_set_setting(st, "ha_node", node) < 0 || store_set_setting(st, "ha_peer", peer) < 0 ||
                   store_set_setting(st, "ha_listen", listen) < 0
               ? -1
               : 0;
}

int ha_state_get(store_t *st, ha_state_t *s)
{
    memset(s, 0, sizeof(*s));
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(st->db, "SELECT role, role_changed, serial, synced, synced_from FROM ha_state WHERE id = 1",
                           -1, &q, NULL) != SQLITE_OK)
        return 0; /* a schema-1 store: no HA state yet */
    int rc = sqlite3_step(q);
    if (rc == SQLITE_ROW) {
        snprintf(s->role, sizeof(s->role), "%s", (const char *)sqlite3_column_text(q, 0));
        s->role_changed = sqlite3_column_int64(q, 1);
        s->serial = sqlite3_column_int64(q, 2);
        s->synced = sqlite3_column_int64(q, 3);
        snprintf(s->synced_from, sizeof(s->synced_from), "%s", (const char *)sqlite3_column_text(q, 4));
    }
    sqlite3_finalize(q);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        snprintf(st->err, sizeof(st->err), "store %s: cannot read ha_state: %s", st->path, sqlite3_errmsg(st->db));
        return -1;
    }
    return 0;
}

bool ha_role_valid(const char *role)
{
    static const char *const roles[] = {"MASTER", "BACKUP", "FAULT", "STOP"};
    for (size_t i = 0; i < ARRAY_LEN(roles); i++)
        if (strcmp(role, roles[i]) == 0)
            return true;
    return false;
}

int ha_set_role(store_t *st, const char *role, const char *command)
{
    if (store_begin(st) < 0)
        return -1;
    sqlite3_stmt *q = store_prepare(st, "UPDATE ha_state SET role = ?, role_changed = ? WHERE id = 1");
    if (q == NULL)
        goto fail;
    sqlite3_bind_text(q, 1, role, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 2, (sqlite3_int64)time(NULL));
    int rc = sqlite3_step(q);
    sqlite3_finalize(q);
    char what[64];
    snprintf(what, sizeof(what), "VRRP role %s", role);
    if (rc != SQLITE_DONE || store_event(st, command, what, 0) < 0 || store_commit(st) < 0)
        goto fail;
    return 0;
fail:
    if (st->err[0] == '\0')
        snprintf(st->err, sizeof(st->err), "store %s: cannot record the role: %s", st->path, sqlite3_errmsg(st->db));
    store_rollback(st);
    return -1;
}

int ha_active(store_t *st, int64_t *id, char digest[65])
{
    *id = 0;
    digest[0] = '\0';
    sqlite3_stmt *q = store_prepare(st, "SELECT id, digest FROM generations WHERE active = 1");
    if (q == NULL)
        return -1;
    int rc = sqlite3_step(q);
    if (rc == SQLITE_ROW) {
        *id = sqlite3_column_int64(q, 0);
        snprintf(digest, 65, "%s", (const char *)sqlite3_column_text(q, 1));
    }
    sqlite3_finalize(q);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : -1;
}

/* ---- records ------------------------------------------------------------------ */

/* Field types: I decimal integer, t text (no NUL), b bytes. */
enum { R_META = 1, R_GEN, R_GENSITE, R_SITE, R_CERT, R_ACCOUNT, R_TICKET, R_MAX };

typedef struct {
    const char *types;
    const char *select; /* the rows to send, in a stable order */
    const char *insert; /* how the receiver stores one (NULL: handled apart) */
    const char *clear;
} kind_t;

static const kind_t kinds[R_MAX] = {
    [R_META] = {"ttIIt", NULL, NULL, NULL},
    [R_GEN] = {"IItttb", "SELECT id, created, digest, comment, global_yaml, blob FROM generations WHERE active = 1", NULL,
               NULL},
    [R_GENSITE] = {"ttt",
                   "SELECT name, yaml, source FROM generation_sites WHERE generation = "
                   "(SELECT id FROM generations WHERE active = 1) ORDER BY name",
                   "INSERT INTO generation_sites (generation, name, yaml, source) VALUES (?9,?1,?2,?3)", NULL},
    [R_SITE] = {"ttttI", "SELECT name, yaml, source, digest, updated FROM sites ORDER BY name",
                "INSERT INTO sites (name, yaml, source, digest, updated) VALUES (?1,?2,?3,?4,?5)", "DELETE FROM sites"},
    [R_CERT] = {"tttttIIttI",
                "SELECT site, hosts, cert_pem, chain_pem, key_pem, not_before, not_after, source, issuer, updated "
                "FROM certificates ORDER BY site",
                "INSERT INTO certificates (site, hosts, cert_pem, chain_pem, key_pem, not_before, not_after, source, "
                "issuer, updated) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)",
                "DELETE FROM certificates"},
    [R_ACCOUNT] = {"ttttI", "SELECT directory, email, key_pem, kid, created FROM acme_accounts ORDER BY directory",
                   "INSERT INTO acme_accounts (directory, email, key_pem, kid, created) VALUES (?1,?2,?3,?4,?5)",
                   "DELETE FROM acme_accounts"},
    [R_TICKET] = {"IbbII", "SELECT id, name, keys, created, expires FROM ticket_keys ORDER BY id",
                  "INSERT INTO ticket_keys (id, name, keys, created, expires) VALUES (?1,?2,?3,?4,?5)",
                  "DELETE FROM ticket_keys"},
};

static void put_u32(str_buf_t *b, uint32_t v)
{
    uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    str_append(b, x, 4);
}

static uint32_t get_u32(const uint8_t *p) { return p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }

static void put_field(str_buf_t *b, const void *p, size_t n)
{
    put_u32(b, (uint32_t)n);
    str_append(b, p, n);
}

static void put_str(str_buf_t *b, const char *s) { put_field(b, s, strlen(s)); }

static void put_int(str_buf_t *b, int64_t v)
{
    char t[24];
    int n = snprintf(t, sizeof(t), "%lld", (long long)v);
    put_field(b, t, (size_t)n);
}

/* One record per row of the kind's query. */
static int put_rows(store_t *st, str_buf_t *b, uint32_t kind)
{
    const kind_t *k = &kinds[kind];
    sqlite3_stmt *q = store_prepare(st, k->select);
    if (q == NULL)
        return -1;
    int rc;
    uint32_t nf = (uint32_t)strlen(k->types);
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        put_u32(b, kind);
        put_u32(b, nf);
        for (uint32_t i = 0; i < nf; i++) {
            if (k->types[i] == 'I')
                put_int(b, sqlite3_column_int64(q, (int)i));
            else
                put_field(b, k->types[i] == 'b' ? sqlite3_column_blob(q, (int)i) : (const void *)sqlite3_column_text(q, (int)i),
                          (size_t)sqlite3_column_bytes(q, (int)i));
        }
    }
    sqlite3_finalize(q);
    if (rc != SQLITE_DONE) {
        snprintf(st->err, sizeof(st->err), "store %s: cannot read for replication: %s", st->path, sqlite3_errmsg(st->db));
        return -1;
    }
    return 0;
}

int ha_snapshot_encode(store_t *st, const char *node, bool full, str_buf_t *out)
{
    if (store_exec(st, "BEGIN") < 0) /* one read transaction: a consistent snapshot */
        return -1;
    ha_state_t s;
    int64_t gen;
    char digest[65];
    str_buf_t body = {0};
    if (ha_state_get(st, &s) < 0 || ha_active(st, &gen, digest) < 0)
        goto fail;
    put_u32(&body, R_META);
    put_u32(&body, 5);
    put_str(&body, node);
    put_str(&body, s.role);
    put_int(&body, s.serial);
    put_int(&body, gen);
    put_str(&body, digest);
    for (uint32_t kind = R_GEN; full && kind < R_MAX; kind++)
        if (put_rows(st, &body, kind) < 0)
            goto fail;
    store_exec(st, "COMMIT");
    uint8_t hdr[HA_HDR_LEN] = "PXHASNAP";
    hdr[8] = 1; /* version */
    hdr[12] = full;
    for (int i = 0; i < 8; i++)
        hdr[16 + i] = (uint8_t)((uint64_t)body.len >> (8 * i));
    SHA256((const uint8_t *)(body.p ? body.p : ""), body.len, hdr + 24);
    out->len = 0;
    str_append(out, hdr, sizeof(hdr));
    str_append(out, body.p, body.len);
    str_buf_free(&body);
    return 0;
fail:
    str_buf_free(&body);
    store_rollback(st);
    return -1;
}

/* ---- checking a snapshot ---------------------------------------------------------- */

typedef struct {
    const uint8_t *p;
    uint32_t n;
} field_t;

typedef struct {
    uint32_t kind;
    uint32_t nf;
    field_t f[10];
} rec_t;

typedef struct {
    const uint8_t *p, *end;
} cursor_t;

static bool parse_int(const field_t *f, int64_t *v)
{
    if (f->n == 0 || f->n > 20)
        return false;
    size_t i = f->p[0] == '-';
    if (i == f->n)
        return false;
    int64_t x = 0;
    for (; i < f->n; i++) {
        if (f->p[i] < '0' || f->p[i] > '9' || x > (INT64_MAX - 9) / 10)
            return false;
        x = x * 10 + (f->p[i] - '0');
    }
    *v = f->p[0] == '-' ? -x : x;
    return true;
}

/* The next record, checked against its kind's field types; 1, 0 at the
 * end, -1 when malformed. */
static int next_rec(cursor_t *c, rec_t *r, char *err, size_t errlen)
{
    if (c->p == c->end)
        return 0;
    if (c->end - c->p < 8)
        return seterr(err, errlen, "truncated record header");
    r->kind = get_u32(c->p);
    r->nf = get_u32(c->p + 4);
    c->p += 8;
    if (r->kind == 0 || r->kind >= R_MAX)
        return seterr(err, errlen, "unknown record kind %u", r->kind);
    const char *types = kinds[r->kind].types;
    if (r->nf != strlen(types))
        return seterr(err, errlen, "record kind %u has %u fields, expected %zu", r->kind, r->nf, strlen(types));
    for (uint32_t i = 0; i < r->nf; i++) {
        if (c->end - c->p < 4)
            return seterr(err, errlen, "truncated field");
        uint32_t n = get_u32(c->p);
        c->p += 4;
        if ((size_t)(c->end - c->p) < n)
            return seterr(err, errlen, "field of %u bytes runs past the end", n);
        r->f[i] = (field_t){c->p, n};
        c->p += n;
        int64_t v;
        if (types[i] == 'I' && !parse_int(&r->f[i], &v))
            return seterr(err, errlen, "record kind %u field %u is not a number", r->kind, i);
        if (types[i] == 't' && memchr(r->f[i].p, '\0', n) != NULL)
            return seterr(err, errlen, "record kind %u field %u holds a NUL byte", r->kind, i);
    }
    return 1;
}

static void field_str(const field_t *f, char *out, size_t cap)
{
    size_t n = f->n < cap - 1 ? f->n : cap - 1;
    memcpy(out, f->p, n);
    out[n] = '\0';
}

static int check_meta(const rec_t *r, ha_meta_t *m, char *err, size_t errlen)
{
    memset(m, 0, sizeof(*m));
    if (r->f[0].n == 0 || r->f[0].n >= sizeof(m->node) || r->f[1].n >= sizeof(m->role) ||
        (r->f[4].n != 0 && r->f[4].n != 64))
        return seterr(err, errlen, "malformed META record");
    field_str(&r->f[0], m->node, sizeof(m->node));
    field_str(&r->f[1], m->role, sizeof(m->role));
    field_str(&r->f[4], m->digest, sizeof(m->digest));
    parse_int(&r->f[2], &m->serial);
    parse_int(&r->f[3], &m->generation);
    if (m->role[0] && !ha_role_valid(m->role))
        return seterr(err, errlen, "unknown role '%s' in META", m->role);
    return 0;
}

/* A generation record: the digest must be the blob's, and the blob a table
 * that rt_open accepts. */
static int check_gen(const rec_t *r, const ha_meta_t *m, char *err, size_t errlen)
{
    const field_t *digest = &r->f[2], *blob = &r->f[5];
    char hex[65], why[200];
    store_digest_hex(blob->p, blob->n, hex);
    if (digest->n != 64 || memcmp(digest->p, hex, 64) != 0 || strcmp(m->digest, hex) != 0)
        return seterr(err, errlen, "the generation's digest does not match its rule table");
    uint8_t *copy = aligned_alloc(8, (blob->n + 7) & ~(size_t)7);
    if (copy == NULL)
        return seterr(err, errlen, "out of memory");
    memcpy(copy, blob->p, blob->n);
    rt_table_t t;
    int rc = rt_open(&t, copy, blob->n, why, sizeof(why));
    free(copy);
    return rc < 0 ? seterr(err, errlen, "the peer's rule table is refused: %s", why) : 0;
}

int ha_snapshot_check(const uint8_t *p, size_t n, ha_meta_t *meta, char *err, size_t errlen)
{
    if (n < HA_HDR_LEN || memcmp(p, "PXHASNAP", 8) != 0)
        return seterr(err, errlen, "not a replication message");
    if (get_u32(p + 8) != 1)
        return seterr(err, errlen, "replication format version %u (this node speaks 1)", get_u32(p + 8));
    if (get_u32(p + 12) > 1)
        return seterr(err, errlen, "unknown flags %#x", get_u32(p + 12));
    uint64_t len = 0;
    for (int i = 7; i >= 0; i--)
        len = len << 8 | p[16 + i];
    if (len != n - HA_HDR_LEN)
        return seterr(err, errlen, "body is %zu bytes, the header says %llu", n - HA_HDR_LEN, (unsigned long long)len);
    uint8_t md[SHA256_DIGEST_LENGTH];
    SHA256(p + HA_HDR_LEN, n - HA_HDR_LEN, md);
    if (memcmp(md, p + 24, sizeof(md)) != 0)
        return seterr(err, errlen, "body does not match its SHA-256");
    cursor_t c = {p + HA_HDR_LEN, p + n};
    rec_t r;
    int got, seen[R_MAX] = {0};
    bool first = true;
    while ((got = next_rec(&c, &r, err, errlen)) > 0) {
        if (first != (r.kind == R_META))
            return seterr(err, errlen, "META must come first, once");
        first = false;
        seen[r.kind]++;
        if (r.kind == R_META && check_meta(&r, meta, err, errlen) < 0)
            return -1;
        if (r.kind == R_GEN && (seen[R_GEN] > 1 || check_gen(&r, meta, err, errlen) < 0))
            return seen[R_GEN] > 1 ? seterr(err, errlen, "two generations in one snapshot") : -1;
        if (r.kind == R_GENSITE && !seen[R_GEN])
            return seterr(err, errlen, "generation sources without a generation");
        if (r.kind == R_TICKET && (r.f[1].n != 16 || r.f[2].n != 64))
            return seterr(err, errlen, "malformed ticket key");
    }
    if (got < 0)
        return -1;
    if (first)
        return seterr(err, errlen, "no META record");
    if ((p[12] & 1) && (!seen[R_GEN] || meta->digest[0] == '\0'))
        return seterr(err, errlen, "a full snapshot without its active generation");
    return 0;
}

/* ---- applying a snapshot ----------------------------------------------------------- */

static int insert_rec(store_t *st, sqlite3_stmt *q, const rec_t *r, int64_t gen)
{
    const char *types = kinds[r->kind].types;
    sqlite3_reset(q);
    sqlite3_clear_bindings(q);
    for (uint32_t i = 0; i < r->nf; i++) {
        int64_t v;
        if (types[i] == 'I' && parse_int(&r->f[i], &v))
            sqlite3_bind_int64(q, (int)i + 1, v);
        else if (types[i] == 't')
            sqlite3_bind_text(q, (int)i + 1, (const char *)r->f[i].p, (int)r->f[i].n, SQLITE_STATIC);
        else
            sqlite3_bind_blob(q, (int)i + 1, r->f[i].p, (int)r->f[i].n, SQLITE_STATIC);
    }
    if (r->kind == R_GENSITE)
        sqlite3_bind_int64(q, 9, gen);
    if (sqlite3_step(q) != SQLITE_DONE) {
        snprintf(st->err, sizeof(st->err), "store %s: cannot store a replicated row: %s", st->path, sqlite3_errmsg(st->db));
        return -1;
    }
    return 0;
}

/* Store the peer's generation as this node's active one (a new local id,
 * the same blob); the node keeps its own settings as the generation's. */
static int apply_gen(store_t *st, const rec_t *r, const ha_meta_t *m, int64_t *gen)
{
    char *gyaml = NULL, comment[160];
    snprintf(comment, sizeof(comment), "replicated from %s generation %lld", m->node, (long long)m->generation);
    if (store_get_setting(st, "global_yaml", &gyaml) < 0)
        return -1;
    int rc = store_add_generation(st, r->f[5].p, r->f[5].n, comment, gyaml ? gyaml : "", gen);
    free(gyaml);
    return rc;
}

int ha_snapshot_apply(store_t *st, const uint8_t *p, size_t n, const char *command, ha_meta_t *meta, bool *reload,
                      char *err, size_t errlen)
{
    ha_meta_t m;
    *reload = false;
    if (ha_snapshot_check(p, n, &m, err, errlen) < 0)
        return -1;
    if (meta)
        *meta = m;
    if (!(p[12] & 1))
        return seterr(err, errlen, "not a full snapshot");
    if (store_begin(st) < 0)
        return seterr(err, errlen, "%s", st->err);
    int64_t local_gen, gen = 0;
    char local_digest[65];
    sqlite3_stmt *ins[R_MAX] = {0};
    if (ha_active(st, &local_gen, local_digest) < 0)
        goto fail;
    bool new_gen = m.digest[0] && strcmp(m.digest, local_digest) != 0;
    for (uint32_t k = R_SITE; k < R_MAX; k++)
        if (store_exec(st, kinds[k].clear) < 0)
            goto fail;
    for (uint32_t k = R_GENSITE; k < R_MAX; k++)
        if ((ins[k] = store_prepare(st, kinds[k].insert)) == NULL)
            goto fail;
    cursor_t c = {p + HA_HDR_LEN, p + n};
    rec_t r;
    while (next_rec(&c, &r, err, errlen) > 0) {
        if (r.kind == R_META || ((r.kind == R_GEN || r.kind == R_GENSITE) && !new_gen))
            continue;
        if (r.kind == R_GEN ? apply_gen(st, &r, &m, &gen) < 0 : insert_rec(st, ins[r.kind], &r, gen) < 0)
            goto fail;
    }
    sqlite3_stmt *q = store_prepare(st, "UPDATE ha_state SET serial = ?, synced = ?, synced_from = ? WHERE id = 1");
    if (q == NULL)
        goto fail;
    sqlite3_bind_int64(q, 1, m.serial);
    sqlite3_bind_int64(q, 2, (sqlite3_int64)time(NULL));
    sqlite3_bind_text(q, 3, m.node, -1, SQLITE_STATIC);
    int rc = sqlite3_step(q);
    sqlite3_finalize(q);
    char what[256];
    snprintf(what, sizeof(what), "pulled from %s (serial %lld): generation %lld %.12s%s", m.node, (long long)m.serial,
             (long long)m.generation, m.digest, new_gen ? "" : " (already active)");
    if (rc != SQLITE_DONE || store_event(st, command, what, gen) < 0)
        goto fail;
    for (uint32_t k = 0; k < R_MAX; k++)
        sqlite3_finalize(ins[k]);
    if (store_commit(st) < 0)
        return seterr(err, errlen, "%s", st->err);
    *reload = true;
    return 0;
fail:
    for (uint32_t k = 0; k < R_MAX; k++)
        sqlite3_finalize(ins[k]);
    seterr(err, errlen, "%s", st->err[0] ? st->err : sqlite3_errmsg(st->db));
    store_rollback(st);
    return -1;
}

/* ---- TLS ----------------------------------------------------------------------------- */

static void ssl_reason(char *err, size_t errlen, const char *what)
{
    unsigned long e = ERR_get_error();
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    ERR_clear_error();
    seterr(err, errlen, "%s: %s", what, e ? buf : "failed");
}

static int load_key_row(store_t *st, const char *name, char **cert, char **key)
{
    *cert = *key = NULL;
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(st->db, "SELECT cert_pem, key_pem FROM ha_keys WHERE name = ?", -1, &q, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_text(q, 1, name, -1, SQLITE_STATIC);
    if (sqlite3_step(q) == SQLITE_ROW) {
        *cert = strdup((const char *)sqlite3_column_text(q, 0));
        *key = strdup((const char *)sqlite3_column_text(q, 1));
    }
    sqlite3_finalize(q);
    return *cert ? 0 : -1;
}

static void free_key_row(char *cert, char *key)
{
    free(cert);
    if (key)
        OPENSSL_cleanse(key, strlen(key));
    free(key);
}

SSL_CTX *ha_ssl_ctx(store_t *st, bool server, char *err, size_t errlen)
{
    char *ca_pem, *ca_key, *cert_pem, *key_pem;
    if (load_key_row(st, "ca", &ca_pem, &ca_key) < 0 || load_key_row(st, "node", &cert_pem, &key_pem) < 0) {
        seterr(err, errlen, "no cluster certificate in the store %s (run 'proxyctl ha init')", st->path);
        return NULL;
    }
    free_key_row(NULL, ca_key);
    SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    BIO *b1 = BIO_new_mem_buf(ca_pem, -1), *b2 = BIO_new_mem_buf(cert_pem, -1), *b3 = BIO_new_mem_buf(key_pem, -1);
    X509 *ca = b1 ? PEM_read_bio_X509(b1, NULL, NULL, NULL) : NULL;
    X509 *cert = b2 ? PEM_read_bio_X509(b2, NULL, NULL, NULL) : NULL;
    EVP_PKEY *key = b3 ? PEM_read_bio_PrivateKey(b3, NULL, NULL, NULL) : NULL;
    bool ok = ctx && ca && cert && key && SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) == 1 &&
              X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx), ca) == 1 && SSL_CTX_use_certificate(ctx, cert) == 1 &&
              SSL_CTX_use_PrivateKey(ctx, key) == 1 && SSL_CTX_check_private_key(ctx) == 1;
    if (!ok) {
        ssl_reason(err, errlen, "the cluster certificate in the store is unusable");
        SSL_CTX_free(ctx);
        ctx = NULL;
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
        SSL_CTX_set_verify_depth(ctx, 1);
        SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
        if (server)
            SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"proxyd-ha", 9);
    }
    X509_free(ca);
    X509_free(cert);
    EVP_PKEY_free(key);
    BIO_free(b1);
    BIO_free(b2);
    BIO_free(b3);
    free_key_row(ca_pem, NULL);
    free_key_row(cert_pem, key_pem);
    return ctx;
}

int ha_check_peer(SSL *ssl, const char *self, char *peer_node, size_t cap, char *err, size_t errlen)
{
    X509 *pc = SSL_get1_peer_certificate(ssl);
    if (pc == NULL || SSL_get_verify_result(ssl) != X509_V_OK) {
        X509_free(pc);
        return seterr(err, errlen, "the peer presented no certificate the cluster CA issued");
    }
    char cn[64] = "";
    X509_NAME_get_text_by_NID(X509_get_subject_name(pc), NID_commonName, cn, sizeof(cn));
    X509_free(pc);
    snprintf(peer_node, cap, "%s", cn);
    if (cn[0] == '\0' || strcmp(cn, self) == 0)
        return seterr(err, errlen, "the peer's certificate names node '%s', which is this node", cn);
    return 0;
}

/* ---- the client ---------------------------------------------------------------------- */

void ha_client_init(ha_client_t *c)
{
    memset(c, 0, sizeof(*c));
    c->fd = -1;
}

void ha_client_close(ha_client_t *c)
{
    if (c->ssl)
        SSL_free(c->ssl);
    if (c->fd >= 0)
        close(c->fd);
    ha_client_init(c);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait for fd to become ready for ev before the deadline; 0 or -1 (ETIMEDOUT). */
static int wait_fd(int fd, short ev, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - now_ms();
        if (left <= 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        struct pollfd p = {fd, ev, 0};
        int n = poll(&p, 1, (int)left);
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR)
            return -1;
    }
}

/* Drive one SSL call until it completes; its result, or -1 with err set. */
static int ssl_call(ha_client_t *c, int (*op)(SSL *, void *, int), void *buf, int n, int64_t deadline, const char *what,
                    char *err, size_t errlen)
{
    for (;;) {
        ERR_clear_error();
        int r = op ? op(c->ssl, buf, n) : SSL_connect(c->ssl);
        if (r > 0)
            return r;
        int e = SSL_get_error(c->ssl, r);
        short ev = e == SSL_ERROR_WANT_READ ? POLLIN : e == SSL_ERROR_WANT_WRITE ? POLLOUT : 0;
        if (ev && wait_fd(c->fd, ev, deadline) == 0)
            continue;
        if (ev)
            return seterr(err, errlen, "%s: timed out", what);
        long v = SSL_get_verify_result(c->ssl);
        if (v != X509_V_OK)
            return seterr(err, errlen, "%s: the peer's certificate is not from the cluster CA: %s", what,
                          X509_verify_cert_error_string(v));
        if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0))
            return seterr(err, errlen, "%s: the peer closed the connection%s", what,
                          op == NULL ? " (it refused our certificate?)" : "");
        ssl_reason(err, errlen, what);
        return -1;
    }
}

static int ssl_read_op(SSL *s, void *b, int n) { return SSL_read(s, b, n); }
static int ssl_write_op(SSL *s, void *b, int n) { return SSL_write(s, b, n); }

static int peer_sockaddr(const char *peer, struct sockaddr_storage *ss, socklen_t *len)
{
    rt_sockaddr_t a;
    const char *why;
    if (parse_sockaddr(peer, strlen(peer), &a, &why) < 0 || a.kind > RT_ADDR_INET6)
        return -1;
    memset(ss, 0, sizeof(*ss));
    if (a.kind == RT_ADDR_INET) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons(a.port);
        memcpy(&s4->sin_addr, a.ip, 4);
        *len = sizeof(*s4);
    } else {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(a.port);
        memcpy(&s6->sin6_addr, a.ip, 16);
        *len = sizeof(*s6);
    }
    return 0;
}

static int client_connect(ha_client_t *c, SSL_CTX *ctx, const char *peer, const char *self, int64_t deadline, char *err,
                          size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    if (peer_sockaddr(peer, &ss, &sl) < 0)
        return seterr(err, errlen, "invalid peer address '%s'", peer);
    c->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return seterr(err, errlen, "socket: %s", strerror(errno));
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(c->fd, (struct sockaddr *)&ss, sl) < 0) {
        if (errno != EINPROGRESS)
            return seterr(err, errlen, "connect: %s", strerror(errno));
        int soerr = 0;
        socklen_t el = sizeof(soerr);
        if (wait_fd(c->fd, POLLOUT, deadline) < 0)
            return seterr(err, errlen, "connect: %s", errno == ETIMEDOUT ? "timed out" : strerror(errno));
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &el);
        if (soerr)
            return seterr(err, errlen, "connect: %s", strerror(soerr));
    }
    c->ssl = SSL_new(ctx);
    if (c->ssl == NULL || SSL_set_fd(c->ssl, c->fd) != 1)
        return seterr(err, errlen, "out of memory");
    if (ssl_call(c, NULL, NULL, 0, deadline, "TLS handshake", err, errlen) < 0)
        return -1;
    return ha_check_peer(c->ssl, self, c->peer_node, sizeof(c->peer_node), err, errlen);
}

static int read_full(ha_client_t *c, uint8_t *p, size_t n, int64_t deadline, char *err, size_t errlen)
{
    while (n > 0) {
        int r = ssl_call(c, ssl_read_op, p, n > (1u << 30) ? 1 << 30 : (int)n, deadline, "reading", err, errlen);
        if (r < 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* One request and its response on the current (or a new) connection. */
static int fetch_once(ha_client_t *c, SSL_CTX *ctx, const char *peer, const char *self, char cmd, str_buf_t *out,
                      int64_t deadline, char *why, size_t whylen)
{
    uint8_t req[HA_REQ_LEN] = {'P', 'X', 'H', 'A', 1, (uint8_t)cmd, 0, 0};
    out->len = 0;
    if (c->ssl == NULL && client_connect(c, ctx, peer, self, deadline, why, whylen) < 0)
        return -1;
    if (ssl_call(c, ssl_write_op, req, sizeof(req), deadline, "sending", why, whylen) < 0)
        return -1;
    str_reserve(out, HA_HDR_LEN);
    uint8_t *hdr = (uint8_t *)out->p; /* until the reserve below moves it */
    if (read_full(c, hdr, HA_HDR_LEN, deadline, why, whylen) < 0)
        return -1;
    if (memcmp(hdr, "PXHASNAP", 8) != 0)
        return seterr(why, whylen, "the peer does not speak the replication protocol");
    uint64_t len = 0;
    for (int i = 7; i >= 0; i--)
        len = len << 8 | hdr[16 + i];
    if (len > HA_MAX_BODY)
        return seterr(why, whylen, "the peer announces %llu bytes (limit %u)", (unsigned long long)len, HA_MAX_BODY);
    str_reserve(out, HA_HDR_LEN + (size_t)len);
    if (read_full(c, (uint8_t *)out->p + HA_HDR_LEN, (size_t)len, deadline, why, whylen) < 0)
        return -1;
    out->len = HA_HDR_LEN + (size_t)len;
    return 0;
}

int ha_fetch(ha_client_t *c, SSL_CTX *ctx, const char *peer, const char *self, char cmd, str_buf_t *out, int timeout_ms,
             char *err, size_t errlen)
{
    int64_t deadline = now_ms() + timeout_ms;
    char why[400];
    bool reused = c->ssl != NULL;
    if (fetch_once(c, ctx, peer, self, cmd, out, deadline, why, sizeof(why)) == 0)
        return 0;
    ha_client_close(c);
    /* a kept connection the peer closed meanwhile: one new one */
    if (reused && fetch_once(c, ctx, peer, self, cmd, out, deadline, why, sizeof(why)) == 0)
        return 0;
    ha_client_close(c);
    return seterr(err, errlen, "peer %s: %s", peer, why);
}

int ha_pull(store_t *st, ha_client_t *c, SSL_CTX *ctx, const ha_conf_t *conf, bool force, int timeout_ms, bool *pulled,
            bool *reload, ha_meta_t *peer, char *err, size_t errlen)
{
    *pulled = *reload = false;
    str_buf_t b = {0};
    ha_state_t s;
    int64_t gen;
    char digest[65];
    int rc = -1;
    memset(peer, 0, sizeof(*peer));
    if (ha_fetch(c, ctx, conf->peer, conf->node, HA_CMD_META, &b, timeout_ms, err, errlen) < 0)
        goto out;
    if (ha_snapshot_check((const uint8_t *)b.p, b.len, peer, err, errlen) < 0) {
        ha_client_close(c);
        goto out;
    }
    if (ha_state_get(st, &s) < 0 || ha_active(st, &gen, digest) < 0) {
        seterr(err, errlen, "%s", st->err);
        goto out;
    }
    bool same = peer->serial == s.serial && strcmp(peer->digest, digest) == 0;
    int64_t since = (int64_t)time(NULL) - s.role_changed;
    bool peer_master = strcmp(peer->role, "MASTER") == 0, self_master = strcmp(s.role, "MASTER") == 0;
    /* A node that just changed role and holds newer changes than the new
     * MASTER gives that MASTER time to catch up instead of losing them. */
    bool follow = peer_master && !self_master && !(s.serial > peer->serial && since <= 10);
    bool catch_up = self_master && !peer_master && peer->serial > s.serial && since <= 10;
    if (!force && (same || !(follow || catch_up))) {
        rc = 0;
        goto out;
    }
    if (ha_fetch(c, ctx, conf->peer, conf->node, HA_CMD_SNAPSHOT, &b, timeout_ms, err, errlen) < 0)
        goto out;
    char cmd[96];
    snprintf(cmd, sizeof(cmd), "ha sync from %s", peer->node);
    char why[400];
    /* peer receives the snapshot's own META, which may be newer than the one that decided */
    if (ha_snapshot_apply(st, (const uint8_t *)b.p, b.len, cmd, peer, reload, why, sizeof(why)) < 0) {
        seterr(err, errlen, "peer %s: snapshot refused: %s", conf->peer, why);
        goto out;
    }
    *pulled = true;
    rc = 0;
out:
    str_buf_free(&b);
    return rc;
}

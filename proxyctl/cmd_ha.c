/*
 * cmd_ha.c - the HA pair (SPEC §8): `ha init`, `ha render`, `ha notify`,
 * `ha sync`.
 *
 * The pair authenticates its replication link with a small cluster CA made
 * by `ha init` on the first node.  That node issues the second node's
 * certificate into a join bundle (`ha init --issue lb1 --out FILE`), which
 * the second node imports (`ha init --join FILE`); the CA key never leaves
 * the first node.  Keys live in the store (mode 0600) and are never printed.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/x509v3.h>

#include "../common/ha.h"
#include "../common/str.h"
#include "certs.h"
#include "cli.h"
#include "config.h"

extern const char keepalived_conf_in[];

#define CA_DAYS 3650
#define NODE_DAYS 1825

static const command_t *ha_cmd(void) { return find_command("ha"); }

/* The parsed global settings of this node (with its ha block), or NULL
 * after printing why. */
static cfg_global_t *load_ha_settings(store_t *st, arena_t *a)
{
    char *gyaml = NULL, *gsource = NULL;
    diag_t d = {0};
    cfg_global_t *g = NULL;
    if (cli_load_global(st, &gyaml, &gsource) < 0) {
        fprintf(stderr, "proxyctl: %s\n", st->err);
    } else {
        g = config_global(a, gsource && *gsource ? gsource : "proxy.yaml",
                          gyaml && *gyaml ? arena_strdup(a, gyaml) : NULL, &d);
        diag_print(&d, stderr);
        if (g && !g->has_ha) {
            fprintf(stderr, "proxyctl: the global settings have no 'ha' block (add one to proxy.yaml, then run "
                            "'proxyctl init --global proxy.yaml')\n");
            g = NULL;
        }
    }
    diag_free(&d);
    free(gyaml);
    free(gsource);
    return g;
}

/* ---- keys and certificates -------------------------------------------------------- */

static void sha256_fingerprint(X509 *x, char out[96])
{
    unsigned char md[32];
    unsigned int n = 0;
    X509_digest(x, EVP_sha256(), md, &n);
    for (unsigned i = 0; i < n && i < 32; i++)
        snprintf(out + 3 * i, 4, "%02X%s", md[i], i + 1 < n ? ":" : "");
}

static X509 *pem_cert(const char *pem)
{
    BIO *b = BIO_new_mem_buf(pem, -1);
    X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    return x;
}

static EVP_PKEY *pem_key(const char *pem)
{
    BIO *b = BIO_new_mem_buf(pem, -1);
    EVP_PKEY *k = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    return k;
}

static void free_secret(char *s)
{
    if (s)
        OPENSSL_cleanse(s, strlen(s));
    free(s);
}

/* ha_keys row name: *cert and *key malloc'ed (key "" when absent); 1 found, 0 not. */
static int get_keys(store_t *st, const char *name, char **cert, char **key, char **subject)
{
    *cert = *key = NULL;
    if (subject)
        *subject = NULL;
    sqlite3_stmt *q = store_prepare(st, "SELECT cert_pem, key_pem, subject FROM ha_keys WHERE name = ?");
    if (q == NULL)
        return -1;
    sqlite3_bind_text(q, 1, name, -1, SQLITE_STATIC);
    int found = sqlite3_step(q) == SQLITE_ROW;
    if (found) {
        *cert = strdup((const char *)sqlite3_column_text(q, 0));
        *key = strdup((const char *)sqlite3_column_text(q, 1));
        if (subject)
            *subject = strdup((const char *)sqlite3_column_text(q, 2));
    }
    sqlite3_finalize(q);
    return found;
}

static int put_keys(store_t *st, const char *name, const char *cert, const char *key, const char *subject)
{
    sqlite3_stmt *q = store_prepare(st, "INSERT OR REPLACE INTO ha_keys (name, cert_pem, key_pem, subject, created) "
                                        "VALUES (?,?,?,?,?)");
    if (q == NULL)
        return -1;
    sqlite3_bind_text(q, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 2, cert, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 3, key, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 4, subject, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 5, (sqlite3_int64)time(NULL));
    int rc = sqlite3_step(q) == SQLITE_DONE ? 0 : -1;
    sqlite3_finalize(q);
    if (rc < 0)
        snprintf(st->err, sizeof(st->err), "store %s: cannot store HA keys: %s", st->path, sqlite3_errmsg(st->db));
    return rc;
}

/* A new ECDSA P-256 key and a certificate for node, issued by the CA. */
static int issue_node(X509 *ca, EVP_PKEY *ca_key, const char *node, char **cert_pem, char **key_pem)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    char san[96];
    snprintf(san, sizeof(san), "DNS:%s", node);
    cert_spec_t spec = {node, "proxyd HA node", san, "critical,CA:FALSE", "critical,digitalSignature",
                        "serverAuth,clientAuth", NODE_DAYS};
    X509 *x = key ? certs_make(&spec, key, ca, ca_key) : NULL;
    *cert_pem = x ? certs_pem(NULL, x) : NULL;
    *key_pem = x ? certs_pem(key, NULL) : NULL;
    X509_free(x);
    EVP_PKEY_free(key);
    return *cert_pem && *key_pem ? 0 : -1;
}

static int make_ca(char **cert_pem, char **key_pem, char fp[96])
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    unsigned char id[6];
    char cn[64];
    RAND_bytes(id, sizeof(id));
    snprintf(cn, sizeof(cn), "proxyd cluster CA %02x%02x%02x%02x%02x%02x", id[0], id[1], id[2], id[3], id[4], id[5]);
    cert_spec_t spec = {cn, "proxyd HA pair", NULL, "critical,CA:TRUE,pathlen:0", "critical,keyCertSign,cRLSign", NULL,
                        CA_DAYS};
    X509 *x = key ? certs_make(&spec, key, NULL, NULL) : NULL;
    *cert_pem = x ? certs_pem(NULL, x) : NULL;
    *key_pem = x ? certs_pem(key, NULL) : NULL;
    if (x)
        sha256_fingerprint(x, fp);
    X509_free(x);
    EVP_PKEY_free(key);
    return *cert_pem && *key_pem ? 0 : -1;
}

/* `ha init` on the first node: the CA (once) and this node's certificate. */
static int init_first(store_t *st, const char *node)
{
    char *ca_pem = NULL, *ca_key = NULL, *cert = NULL, *key = NULL, *subject = NULL, fp[96] = "";
    int rc = EXIT_RUNTIME;
    if (get_keys(st, "ca", &ca_pem, &ca_key, NULL) < 0)
        goto out;
    bool new_ca = ca_pem == NULL;
    if (new_ca && (make_ca(&ca_pem, &ca_key, fp) < 0 || put_keys(st, "ca", ca_pem, ca_key, "cluster CA") < 0))
        goto out;
    X509 *ca = pem_cert(ca_pem);
    EVP_PKEY *cak = ca_key[0] ? pem_key(ca_key) : NULL;
    if (ca)
        sha256_fingerprint(ca, fp);
    if (get_keys(st, "node", &cert, &key, &subject) < 0)
        goto out_ca;
    if (cert && strcmp(subject, node) == 0) {
        printf("node %s already has its certificate; cluster CA %s\n", node, fp);
        rc = EXIT_OK;
        goto out_ca;
    }
    if (cak == NULL) {
        fprintf(stderr, "proxyctl: this node joined with a bundle and holds no CA key: issue a certificate for node "
                        "'%s' on the first node ('proxyctl ha init --issue %s --out FILE') and join with it\n",
                node, node);
        rc = EXIT_INVALID;
        goto out_ca;
    }
    free(cert);
    free_secret(key);
    if (issue_node(ca, cak, node, &cert, &key) < 0 || put_keys(st, "node", cert, key, node) < 0)
        goto out_ca;
    printf("%s cluster CA %s\nnode %s: certificate issued (%d days)\nnext: on the first node, 'proxyctl ha init "
           "--issue PEER --out bundle.pem'; copy it to the peer and run 'proxyctl ha init --join bundle.pem' there\n",
           new_ca ? "created" : "kept", fp, node, NODE_DAYS);
    rc = EXIT_OK;
out_ca:
    X509_free(ca);
    EVP_PKEY_free(cak);
out:
    if (rc == EXIT_RUNTIME)
        fprintf(stderr, "proxyctl: %s\n", st->err[0] ? st->err : "cannot make the cluster certificates");
    free(ca_pem);
    free_secret(ca_key);
    free(cert);
    free_secret(key);
    free(subject);
    return rc;
}

/* `ha init --issue NODE --out FILE`: a join bundle for the peer. */
static int init_issue(store_t *st, const char *self, const char *node, const char *out)
{
    char *ca_pem = NULL, *ca_key = NULL, *cert = NULL, *key = NULL;
    int rc = EXIT_RUNTIME;
    if (strcmp(node, self) == 0 || strlen(node) > 63 || strspn(node, "abcdefghijklmnopqrstuvwxyz0123456789-") != strlen(node)) {
        fprintf(stderr, "proxyctl: '%s' is not a valid peer node name (a-z, 0-9, '-'; not this node's)\n", node);
        return EXIT_INVALID;
    }
    if (get_keys(st, "ca", &ca_pem, &ca_key, NULL) <= 0 || ca_key[0] == '\0') {
        fprintf(stderr, "proxyctl: no cluster CA key in this store: run 'proxyctl ha init' first (on the node that "
                        "made the CA)\n");
        rc = EXIT_INVALID;
        goto out;
    }
    X509 *ca = pem_cert(ca_pem);
    EVP_PKEY *cak = pem_key(ca_key);
    if (ca && cak && issue_node(ca, cak, node, &cert, &key) == 0) {
        int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
        FILE *f = fd >= 0 && fchmod(fd, 0600) == 0 ? fdopen(fd, "w") : NULL;
        if (f == NULL) {
            fprintf(stderr, "proxyctl: %s: %s\n", out, strerror(errno));
            if (fd >= 0)
                close(fd);
        } else {
            fprintf(f, "# proxyd HA join bundle for node %s: the cluster CA certificate, then the node's\n"
                       "# certificate and private key.  Secret: copy it to %s, run\n"
                       "# 'proxyctl ha init --join FILE' there, then delete it.\n%s%s%s",
                    node, node, ca_pem, cert, key);
            if (fclose(f) == 0) {
                printf("wrote the join bundle for node %s to %s (mode 0600)\n", node, out);
                rc = EXIT_OK;
            } else {
                fprintf(stderr, "proxyctl: %s: %s\n", out, strerror(errno));
            }
        }
    } else {
        fprintf(stderr, "proxyctl: cannot issue a certificate for node %s\n", node);
    }
    X509_free(ca);
    EVP_PKEY_free(cak);
out:
    free(ca_pem);
    free_secret(ca_key);
    free(cert);
    free_secret(key);
    return rc;
}

/* PEM blocks of one kind from text, in order. */
static char *pem_block(const char *text, const char *label, int index)
{
    char begin[64], end[64];
    snprintf(begin, sizeof(begin), "-----BEGIN %s-----", label);
    snprintf(end, sizeof(end), "-----END %s-----", label);
    const char *p = text;
    for (int i = 0; (p = strstr(p, begin)) != NULL; i++) {
        const char *e = strstr(p, end);
        if (e == NULL)
            return NULL;
        e += strlen(end);
        if (i == index) {
            char *s = malloc((size_t)(e - p) + 2);
            if (s)
                snprintf(s, (size_t)(e - p) + 2, "%.*s\n", (int)(e - p), p);
            return s;
        }
        p = e;
    }
    return NULL;
}

/* `ha init --join FILE` on the second node. */
static int init_join(store_t *st, const char *self, const char *file)
{
    char *text = read_file(file, NULL);
    if (text == NULL) {
        fprintf(stderr, "proxyctl: %s: %s\n", file, strerror(errno));
        return EXIT_INVALID;
    }
    char *ca_pem = pem_block(text, "CERTIFICATE", 0), *cert_pem = pem_block(text, "CERTIFICATE", 1);
    char *key_pem = pem_block(text, "PRIVATE KEY", 0);
    free_secret(text);
    X509 *ca = ca_pem ? pem_cert(ca_pem) : NULL, *cert = cert_pem ? pem_cert(cert_pem) : NULL;
    EVP_PKEY *key = key_pem ? pem_key(key_pem) : NULL;
    char cn[64] = "", fp[96] = "";
    int rc = EXIT_INVALID;
    if (ca == NULL || cert == NULL || key == NULL) {
        fprintf(stderr, "%s: error: not a join bundle (expected the CA certificate, the node certificate and its "
                        "key, as 'proxyctl ha init --issue' writes them)\n", file);
        goto out;
    }
    X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof(cn));
    EVP_PKEY *ca_pub = X509_get0_pubkey(ca);
    if (X509_check_ca(ca) == 0 || ca_pub == NULL || X509_verify(cert, ca_pub) != 1 ||
        X509_check_private_key(cert, key) != 1) {
        fprintf(stderr, "%s: error: the node certificate was not issued by the bundle's CA, or does not match the "
                        "key\n", file);
        goto out;
    }
    if (strcmp(cn, self) != 0) {
        fprintf(stderr, "%s: error: the bundle is for node '%s', but this node is '%s' (ha.node in proxy.yaml)\n",
                file, cn, self);
        goto out;
    }
    if (X509_cmp_current_time(X509_get0_notAfter(cert)) <= 0) {
        fprintf(stderr, "%s: error: the node certificate has expired\n", file);
        goto out;
    }
    rc = EXIT_RUNTIME;
    if (store_begin(st) < 0 || put_keys(st, "ca", ca_pem, "", "cluster CA") < 0 ||
        put_keys(st, "node", cert_pem, key_pem, self) < 0 || store_event(st, "ha init --join", "joined the HA pair", 0) < 0 ||
        store_commit(st) < 0) {
        fprintf(stderr, "proxyctl: %s\n", st->err);
        store_rollback(st);
        goto out;
    }
    sha256_fingerprint(ca, fp);
    printf("node %s joined: cluster CA %s\n", self, fp);
    rc = EXIT_OK;
out:
    X509_free(ca);
    X509_free(cert);
    EVP_PKEY_free(key);
    free(ca_pem);
    free(cert_pem);
    free_secret(key_pem);
    return rc;
}

static int ha_init(cli_t *cli, int argc, char **argv)
{
    const char *issue = NULL, *out = NULL, *join = NULL;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--issue") == 0 && i + 1 < argc)
            issue = argv[++i];
        else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc)
            out = argv[++i];
        else if (strcmp(argv[i], "--join") == 0 && i + 1 < argc)
            join = argv[++i];
        else
            return cli_usage(find_command("ha init"), "unexpected argument '%s'", argv[i]);
    }
    if ((issue != NULL) != (out != NULL) || (join && issue))
        return cli_usage(find_command("ha init"), "%s",
                         join && issue ? "--join and --issue exclude each other" : "--issue NODE and --out FILE go together");
    store_t st;
    if (cli_open_store(cli, &st, 0) < 0)
        return EXIT_RUNTIME;
    arena_t a;
    arena_init(&a, 1 << 14);
    cfg_global_t *g = load_ha_settings(&st, &a);
    int rc = EXIT_INVALID;
    if (g && issue)
        rc = init_issue(&st, g->ha_node, issue, out);
    else if (g && join)
        rc = init_join(&st, g->ha_node, join);
    else if (g) {
        if (store_begin(&st) < 0) {
            fprintf(stderr, "proxyctl: %s\n", st.err);
            rc = EXIT_RUNTIME;
        } else if ((rc = init_first(&st, g->ha_node)) == EXIT_OK &&
                   (store_event(&st, cli->cmdline, "HA keys ready", 0) < 0 || store_commit(&st) < 0)) {
            fprintf(stderr, "proxyctl: %s\n", st.err);
            rc = EXIT_RUNTIME;
        }
        store_rollback(&st);
    }
    if (rc == EXIT_OK)
        cli_store_private(cli->db);
    arena_free(&a);
    store_close(&st);
    return rc;
}

/* ---- render ------------------------------------------------------------------------ */

/* proxyd beside this proxyctl, else the installed one. */
static void default_proxyd(char *out, size_t cap)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n > 0) {
        self[n] = '\0';
        char *slash = strrchr(self, '/');
        if (slash) {
            snprintf(out, cap, "%.*s/proxyd", (int)(slash - self), self);
            if (access(out, X_OK) == 0)
                return;
        }
    }
    snprintf(out, cap, "/usr/local/bin/proxyd");
}

typedef struct {
    const char *key;
    const char *value;
} subst_t;

/* The template with every {{key}} replaced; unknown keys are an error. */
static int expand(const char *tpl, const subst_t *subs, size_t nsubs, str_buf_t *out)
{
    const char *p = tpl;
    for (const char *o; (o = strstr(p, "{{")) != NULL;) {
        const char *c = strstr(o, "}}");
        if (c == NULL)
            break;
        str_append(out, p, (size_t)(o - p));
        size_t klen = (size_t)(c - o - 2);
        size_t i = 0;
        while (i < nsubs && (strlen(subs[i].key) != klen || memcmp(subs[i].key, o + 2, klen) != 0))
            i++;
        if (i == nsubs) {
            fprintf(stderr, "proxyctl: the keepalived template names an unknown value {{%.*s}}\n", (int)klen, o + 2);
            return -1;
        }
        str_append(out, subs[i].value, strlen(subs[i].value));
        p = c + 2;
        /* a line that held only a placeholder which expanded to nothing goes */
        if (subs[i].value[0] == '\0' && *p == '\n' && (o == tpl || o[-1] == '\n'))
            p++;
    }
    str_append(out, p, strlen(p));
    return 0;
}

static int ha_render(cli_t *cli, int argc, char **argv)
{
    const char *out = NULL, *tpl_file = NULL;
    char proxyd[PATH_MAX], proxyctl[PATH_MAX], db[PATH_MAX];
    default_proxyd(proxyd, sizeof(proxyd));
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--out") == 0 && i + 1 < argc)
            out = argv[++i];
        else if (strcmp(argv[i], "--template") == 0 && i + 1 < argc)
            tpl_file = argv[++i];
        else if (strcmp(argv[i], "--proxyd") == 0 && i + 1 < argc)
            snprintf(proxyd, sizeof(proxyd), "%s", argv[++i]);
        else
            return cli_usage(find_command("ha render"), "unexpected argument '%s'", argv[i]);
    }
    ssize_t n = readlink("/proc/self/exe", proxyctl, sizeof(proxyctl) - 1);
    proxyctl[n > 0 ? n : 0] = '\0';
    if (realpath(cli->db, db) == NULL) {
        fprintf(stderr, "proxyctl: %s: %s\n", cli->db, strerror(errno));
        return EXIT_RUNTIME;
    }
    if (strpbrk(db, " \t\"'\\") || strpbrk(proxyctl, " \t\"'\\") || strpbrk(proxyd, " \t\"'\\")) {
        fprintf(stderr, "proxyctl: paths with spaces or quotes cannot go into keepalived's script lines: %s\n", db);
        return EXIT_INVALID;
    }
    char *tpl = tpl_file ? read_file(tpl_file, NULL) : strdup(keepalived_conf_in);
    if (tpl == NULL) {
        fprintf(stderr, "proxyctl: %s: %s\n", tpl_file, strerror(errno));
        return EXIT_INVALID;
    }
    store_t st;
    if (cli_open_store(cli, &st, STORE_RDONLY) < 0) {
        free(tpl);
        return EXIT_RUNTIME;
    }
    arena_t a;
    arena_init(&a, 1 << 14);
    cfg_global_t *g = load_ha_settings(&st, &a);
    int rc = EXIT_INVALID;
    str_buf_t text = {0};
    if (g) {
        char peer_ip[64], advert[32], router_id[16], priority[16], version[4], src[96] = "", auth[160] = "";
        snprintf(peer_ip, sizeof(peer_ip), "%s", g->ha_peer[0] == '[' ? g->ha_peer + 1 : g->ha_peer);
        char *colon = strrchr(peer_ip, g->ha_peer[0] == '[' ? ']' : ':');
        if (colon)
            *colon = '\0';
        bool v3 = g->ha_advert_ms < 1000;
        if (v3)
            snprintf(advert, sizeof(advert), "%.2f", (double)g->ha_advert_ms / 1000.0);
        else
            snprintf(advert, sizeof(advert), "%llu", (unsigned long long)(g->ha_advert_ms / 1000));
        snprintf(router_id, sizeof(router_id), "%u", g->ha_router_id);
        snprintf(priority, sizeof(priority), "%u", g->ha_priority);
        snprintf(version, sizeof(version), "%d", v3 ? 3 : 2);
        if (g->ha_address) {
            char addr[64];
            snprintf(addr, sizeof(addr), "%s", g->ha_address);
            char *slash = strchr(addr, '/');
            if (slash)
                *slash = '\0';
            snprintf(src, sizeof(src), "    unicast_src_ip %s", addr);
        }
        if (g->ha_auth_pass && v3)
            fprintf(stderr, "proxyctl: warning: auth_pass is ignored: VRRPv3 (advert_interval under 1s) has no "
                            "authentication\n");
        else if (g->ha_auth_pass)
            snprintf(auth, sizeof(auth), "    authentication {\n        auth_type PASS\n        auth_pass %s\n    }",
                     g->ha_auth_pass);
        str_buf_t vips = {0};
        for (size_t i = 0; i < g->nha_vips; i++)
            str_printf(&vips, "        %s dev %s\n", g->ha_vips[i].s, g->ha_interface);
        if (vips.len)
            vips.p[--vips.len] = '\0'; /* the template's own newline follows */
        str_append(&vips, "", 1);
        const subst_t subs[] = {
            {"node", g->ha_node},
            {"peer_ip", peer_ip},
            {"vrrp_version", version},
            {"proxyd", proxyd},
            {"proxyctl", proxyctl},
            {"db", db},
            {"interface", g->ha_interface},
            {"router_id", router_id},
            {"priority", priority},
            {"advert_int", advert},
            {"nopreempt", g->ha_preempt ? "    # preempt: a node with a higher priority takes the VIPs back"
                                        : "    nopreempt"},
            {"unicast_src_ip", src},
            {"authentication", auth},
            {"virtual_ips", (const char *)vips.p},
        };
        if (expand(tpl, subs, sizeof(subs) / sizeof(subs[0]), &text) == 0) {
            FILE *f = out ? fopen(out, "w") : stdout;
            if (f == NULL || fwrite(text.p, 1, text.len, f) != text.len || (out && fclose(f) != 0)) {
                fprintf(stderr, "proxyctl: %s: %s\n", out ? out : "stdout", strerror(errno));
                rc = EXIT_RUNTIME;
            } else {
                rc = EXIT_OK;
                if (out)
                    fprintf(stderr, "wrote %s for node %s (VRRPv%s, advert %ss, priority %s%s)\n", out, g->ha_node,
                            version, advert, priority, g->ha_preempt ? "" : ", nopreempt");
            }
        }
        str_buf_free(&vips);
    }
    str_buf_free(&text);
    arena_free(&a);
    store_close(&st);
    free(tpl);
    return rc;
}

/* ---- notify, sync --------------------------------------------------------------------- */

static int ha_notify(cli_t *cli, int argc, char **argv)
{
    if (argc != 3)
        return argc < 3 ? cli_usage(find_command("ha notify"), "missing STATE (MASTER, BACKUP, FAULT or STOP)")
                        : cli_usage(find_command("ha notify"), "unexpected argument '%s'", argv[3]);
    char role[8];
    snprintf(role, sizeof(role), "%s", argv[2]);
    for (char *p = role; *p; p++)
        if (*p >= 'a' && *p <= 'z')
            *p = (char)(*p - 'a' + 'A');
    if (!ha_role_valid(role)) {
        fprintf(stderr, "proxyctl: unknown VRRP state '%s' (MASTER, BACKUP, FAULT or STOP)\n", argv[2]);
        return EXIT_USAGE;
    }
    store_t st;
    if (cli_open_store(cli, &st, 0) < 0)
        return EXIT_RUNTIME;
    int rc = EXIT_OK;
    if (ha_set_role(&st, role, cli->cmdline) < 0) {
        fprintf(stderr, "proxyctl: %s\n", st.err);
        rc = EXIT_RUNTIME;
    } else {
        printf("role %s recorded\n", role);
    }
    store_close(&st);
    return rc;
}

/* After a sync the sites are the peer's: compiled with this node's own
 * settings they must give the replicated table.  If not, the nodes' settings
 * differ outside `ha`, and a generation made here after a failover would
 * serve differently: say so. */
static void compare_settings(store_t *st, const char *peer_node)
{
    site_list_t sites = {0};
    char *gyaml = NULL, *gsource = NULL, hex[65], active[65];
    int64_t gen;
    arena_t a;
    diag_t d = {0};
    arena_init(&a, 1 << 16);
    if (cli_load_sites(st, &sites) == 0 && cli_load_global(st, &gyaml, &gsource) == 0 && ha_active(st, &gen, active) == 0) {
        cfg_global_t *g = config_global(&a, "proxy.yaml", gyaml && *gyaml ? gyaml : NULL, &d);
        cfg_site_t **parsed = calloc(sites.n + 1, sizeof(*parsed));
        for (size_t i = 0; parsed && i < sites.n; i++)
            parsed[i] = config_site(&a, sites.v[i].source, sites.v[i].yaml, &d);
        if (g && parsed && d.errors == 0)
            check_sites(g, parsed, sites.n, &d);
        uint8_t *blob = NULL;
        size_t len;
        if (g && parsed && d.errors == 0 && compile_table(g, parsed, sites.n, &blob, &len) == 0) {
            store_digest_hex(blob, len, hex);
            if (strcmp(hex, active) != 0)
                fprintf(stderr, "proxyctl: warning: this node's settings differ from %s's outside the 'ha' block: the "
                                "replicated table has digest %.12s, compiled here it would be %.12s (make proxy.yaml "
                                "equal on both nodes except 'ha')\n",
                        peer_node, active, hex);
        }
        free(blob);
        free(parsed);
    }
    diag_free(&d);
    arena_free(&a);
    free(gyaml);
    free(gsource);
    site_list_free(&sites);
}

static int ha_sync(cli_t *cli, int argc, char **argv)
{
    bool force = false;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--force") == 0)
            force = true;
        else
            return cli_usage(find_command("ha sync"), "unexpected argument '%s'", argv[i]);
    }
    store_t st;
    if (cli_open_store(cli, &st, 0) < 0)
        return EXIT_RUNTIME;
    ha_conf_t conf;
    char err[600];
    int rc = EXIT_RUNTIME;
    SSL_CTX *ctx = NULL;
    int have = ha_conf_load(&st, &conf);
    if (have <= 0) {
        fprintf(stderr, "proxyctl: %s\n", have < 0 ? st.err : "this node has no 'ha' settings (proxy.yaml's ha block)");
        rc = have < 0 ? EXIT_RUNTIME : EXIT_INVALID;
        goto out;
    }
    if ((ctx = ha_ssl_ctx(&st, false, err, sizeof(err))) == NULL) {
        fprintf(stderr, "proxyctl: %s\n", err);
        goto out;
    }
    ha_client_t c;
    ha_client_init(&c);
    bool pulled, reload;
    ha_meta_t peer;
    if (ha_pull(&st, &c, ctx, &conf, force, 3000, &pulled, &reload, &peer, err, sizeof(err)) < 0) {
        fprintf(stderr, "proxyctl: ha sync: %s\n", err);
    } else if (!pulled) {
        ha_state_t s;
        ha_state_get(&st, &s);
        printf("nothing to pull: peer %s is %s at serial %lld, this node %s is %s at serial %lld%s\n", peer.node,
               peer.role[0] ? peer.role : "without a role", (long long)peer.serial, conf.node,
               s.role[0] ? s.role : "without a role", (long long)s.serial,
               peer.serial == s.serial ? " (in sync)" : " ('ha sync --force' pulls anyway)");
        if (peer.serial == s.serial)
            compare_settings(&st, peer.node);
        rc = EXIT_OK;
    } else {
        printf("pulled from %s (%s, serial %lld): generation %lld %s\n", peer.node, peer.role[0] ? peer.role : "no role",
               (long long)peer.serial, (long long)peer.generation, peer.digest);
        compare_settings(&st, peer.node);
        rc = reload && cli_notify_reload(cli, &st) < 0 ? EXIT_RUNTIME : EXIT_OK;
    }
    ha_client_close(&c);
out:
    SSL_CTX_free(ctx);
    store_close(&st);
    return rc;
}

int cmd_ha(cli_t *cli, int argc, char **argv)
{
    if (argc < 2)
        return cli_usage(ha_cmd(), "missing SUBCOMMAND (init, render, notify or sync)");
    if (strcmp(argv[1], "init") == 0)
        return ha_init(cli, argc, argv);
    if (strcmp(argv[1], "render") == 0)
        return ha_render(cli, argc, argv);
    if (strcmp(argv[1], "notify") == 0)
        return ha_notify(cli, argc, argv);
    if (strcmp(argv[1], "sync") == 0)
        return ha_sync(cli, argc, argv);
    static const char *const subs[] = {"init", "render", "notify", "sync"};
    const char *sg = diag_suggest(argv[1], subs, 4);
    if (sg)
        return cli_usage(ha_cmd(), "unknown subcommand '%s' (did you mean '%s'?)", argv[1], sg);
    return cli_usage(ha_cmd(), "unknown subcommand '%s'", argv[1]);
}

/* In a pair, keepalived last reported a role other than MASTER: this node
 * leaves certificate renewal to the MASTER. */
bool ha_is_backup(store_t *st)
{
    ha_conf_t c;
    ha_state_t s;
    return ha_conf_load(st, &c) > 0 && ha_state_get(st, &s) == 0 && s.role[0] && strcmp(s.role, "MASTER") != 0;
}

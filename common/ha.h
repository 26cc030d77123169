/*
 * ha.h - the HA pair's shared machinery (SPEC §8): node-local settings, the
 * role keepalived reported, the replication snapshot and its wire format,
 * and the mutually authenticated TLS link between the two nodes.
 *
 * What replicates: the active generation (its blob byte for byte, so both
 * nodes serve the same rule table), the site sources, certificates, ACME
 * accounts and TLS session-ticket keys.  What does not: the node's own
 * settings (proxy.yaml with its `ha` block), its role, its HA keys and the
 * audit log.
 *
 * Wire format.  A request is 8 bytes: "PXHA", version 1, a command ('M' for
 * the peer's metadata, 'S' for a full snapshot), two zero bytes.  A response
 * is a 56-byte header -- "PXHASNAP", u32 version, u32 flags, u64 body length,
 * SHA-256 of the body -- then the body: records, each a u32 kind, a u32 field
 * count and that many fields (u32 length, bytes).  Integers are little-endian;
 * numbers inside fields are decimal text.  The first record is always META.
 */
#ifndef COMMON_HA_H
#define COMMON_HA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

#include "store.h"
#include "str.h"
#include "util.h"

#define HA_REQ_LEN 8
#define HA_HDR_LEN 56
#define HA_MAX_BODY (1u << 30)
#define HA_CMD_META 'M'
#define HA_CMD_SNAPSHOT 'S'

/* This node's HA settings (from proxy.yaml's `ha`, stored by proxyctl). */
typedef struct {
    char node[64];
    char peer[128];   /* "10.0.0.2:9443" */
    char listen[128]; /* "0.0.0.0:9443" */
} ha_conf_t;

/* This node's view of the pair (the ha_state row). */
typedef struct {
    char role[8];     /* "", MASTER, BACKUP, FAULT, STOP */
    int64_t role_changed;
    int64_t serial;
    int64_t synced;
    char synced_from[64];
} ha_state_t;

/* What a META record says about a node. */
typedef struct {
    char node[64];
    char role[8];
    int64_t serial;
    int64_t generation;
    char digest[65];  /* active generation's SHA-256, hex; "" when none */
} ha_meta_t;

/* 1 when this node has an `ha` block, 0 when not, -1 on a store error. */
int ha_conf_load(store_t *st, ha_conf_t *c);
/* Store (node != NULL) or clear the node's HA settings, in the caller's transaction. */
int ha_conf_save(store_t *st, const char *node, const char *peer, const char *listen);
/* The ha_state row; a store without one (schema 1) reads as all zero. */
int ha_state_get(store_t *st, ha_state_t *s);
/* Record a VRRP transition (MASTER, BACKUP, FAULT, STOP) with an event. */
int ha_set_role(store_t *st, const char *role, const char *command);
bool ha_role_valid(const char *role);
/* The active generation's id and digest (id 0 and "" when none). */
int ha_active(store_t *st, int64_t *id, char digest[65]);

/* ---- snapshot ------------------------------------------------------------ */

/* The response to a request: META only, or META and all replicated rows,
 * read in one transaction.  out receives header and body. */
int ha_snapshot_encode(store_t *st, const char *node, bool full, str_buf_t *out);
/* Check the header, the digest and every record's shape; fill meta.
 * 0, or -1 with the reason in err. */
int ha_snapshot_check(const uint8_t *p, size_t n, ha_meta_t *meta, char *err, size_t errlen);
/* Replace this node's replicated state with the snapshot's, in one
 * transaction: the generation is verified as rt_open() would before it is
 * stored.  meta (may be NULL) receives the snapshot's META; *reload is set
 * when something was applied.  0, or -1 with the reason in err (nothing
 * changed then). */
int ha_snapshot_apply(store_t *st, const uint8_t *p, size_t n, const char *command, ha_meta_t *meta, bool *reload,
                      char *err, size_t errlen);

/* ---- the TLS link ---------------------------------------------------------- */

/* An SSL_CTX that presents this node's certificate and accepts only a peer
 * whose certificate the cluster CA issued (TLS 1.3).  NULL with err set
 * (e.g. when `proxyctl ha init` has not run). */
SSL_CTX *ha_ssl_ctx(store_t *st, bool server, char *err, size_t errlen);
/* After the handshake: the peer's node name (its certificate's CN) must not
 * be ours.  0, or -1 with err set. */
int ha_check_peer(SSL *ssl, const char *self, char *peer_node, size_t cap, char *err, size_t errlen);

/* A client connection to the peer, kept open between requests. */
typedef struct {
    int fd;
    SSL *ssl;
    char peer_node[64];
} ha_client_t;

void ha_client_init(ha_client_t *c);
void ha_client_close(ha_client_t *c);
/* Send one request and read the whole response into out (header
 * included), connecting first when needed.  Every step is bounded by
 * timeout_ms in total.  0, or -1 with err set and the connection closed. */
int ha_fetch(ha_client_t *c, SSL_CTX *ctx, const char *peer, const char *self, char cmd, str_buf_t *out, int timeout_ms,
             char *err, size_t errlen);
/* Pull from the peer once: fetch META, decide, fetch and apply a snapshot.
 * force pulls whatever the roles; otherwise a pull happens when the peer is
 * MASTER and differs, or (catching up) when it holds newer changes.
 * *pulled is 1 when something was applied, *reload as ha_snapshot_apply.
 * 0, or -1 with err set. */
int ha_pull(store_t *st, ha_client_t *c, SSL_CTX *ctx, const ha_conf_t *conf, bool force, int timeout_ms, bool *pulled,
            bool *reload, ha_meta_t *peer, char *err, size_t errlen);

#endif

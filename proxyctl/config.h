/*
 * config.h - the model of sites and global settings that the YAML front end
 * builds (config.c), the semantic checks validate (check.c) and the compiler
 * turns into a rule table (compile.c).  Every value that a diagnostic may
 * point at keeps its source position.  All memory belongs to one arena.
 */
#ifndef PROXYCTL_CONFIG_H
#define PROXYCTL_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "../common/ruletable.h"
#include "../common/util.h"
#include "diag.h"
#include "yaml.h"

typedef struct {
    pos_t pos;
    char *s;
} cstr_t;

typedef struct {
    pos_t pos;
    char *address;
    rt_sockaddr_t sa;
    uint32_t weight, max_fails;
    uint64_t fail_timeout_ms;
    bool backup;
} cfg_server_t;

typedef struct {
    pos_t pos;
    char *name;
    int balance;
    cfg_server_t *servers;
    size_t nservers;
    uint32_t keepalive;
    bool tls, tls_verify;
    char *ca_file, *sni, *cert_file, *key_file;
    bool hc;
    char *hc_path;
    uint64_t hc_interval_ms, hc_timeout_ms;
    uint32_t hc_rise, hc_fall, hc_expect;
    uint64_t resolve_ms;     /* resolve: 0 = at the records' TTL */
    bool used;
    bool fastcgi;           /* its routes are fastcgi routes (config.c makes sure all are) */
} cfg_upstream_t;

typedef struct {
    pos_t pos;
    int dir, op;
    char *name, *value;
} cfg_hdrop_t;

typedef struct {
    pos_t pos;
    uint32_t status;
    uint64_t ttl_ms;
} cfg_ttl_t;

typedef struct {
    pos_t pos;
    int match;              /* rt_match */
    cstr_t path;
    uint32_t methods;       /* 0 = all */
    int action;             /* rt_action, -1 = none yet */
    pos_t action_pos;
    const char *action_key;
    cstr_t upstream;
    uint32_t status;
    char *target;           /* redirect to / static root / return body */
    char *index;
    uint64_t expires_ms;
    bool strip_prefix, websocket, buffering;
    uint64_t buffering_max; /* bytes; 0: not written (1g) */
    pos_t buffering_max_pos;
    pos_t strip_pos;
    bool has_strip;
    char *rewrite_prefix;   /* NULL: none; strip_prefix is rewrite_prefix "/" */
    pos_t rewrite_pos;
    uint64_t connect_ms, read_ms, send_ms;
    uint32_t retry_on, retry_tries; /* tries 0: not written */
    cstr_t rate_zone;
    uint32_t rate_burst;
    bool rate_nodelay;
    cstr_t cache_zone;
    cfg_ttl_t *valid;
    size_t nvalid;
    char **bypass;
    size_t nbypass;
    uint32_t use_stale;
    char **key_headers;     /* cache.key_headers */
    size_t nkey_headers;
    uint64_t lock_timeout_ms; /* cache.lock_timeout; 0: the default */
    uint64_t max_body;
    rt_cidr_t *allow;
    size_t nallow;
    rt_cidr_t *deny;
    size_t ndeny;
    cfg_hdrop_t *hdrops;
    size_t nhdrops;
} cfg_route_t;

typedef struct {
    const char *file;
    const char *yaml;       /* source text as given */
    pos_t pos;
    cstr_t name;
    bool is_default;
    pos_t default_pos;
    cstr_t *hosts;
    size_t nhosts;
    int cert_mode;          /* rt_cert_mode */
    pos_t cert_pos;
    cstr_t cert_file, key_file;
    bool redirect_http;
    bool hsts, hsts_subdomains, hsts_preload;
    uint64_t hsts_max_age;
    cfg_upstream_t *ups;
    size_t nups;
    cfg_route_t *routes;
    size_t nroutes;
    /* compression: (docs/compression.md); each coding off unless named */
    bool compression;       /* the key is present */
    pos_t compression_pos;
    bool gzip, brotli, zstd;
    uint32_t gzip_level, brotli_level, zstd_level;
    uint64_t min_length;
    char **types;           /* lower case type/subtype, or type/ and a star */
    size_t ntypes;
    int security_headers;   /* rt_sechdr */
    int access_log;         /* rt_logfmt */
    rt_cidr_t *allow, *deny; /* site-wide: every route's deny, and the allow of a route without its own */
    size_t nallow, ndeny;
} cfg_site_t;

typedef struct {
    pos_t pos;
    char *name, *path;
    uint64_t max_size, memory, inactive_ms;
} cfg_cache_zone_t;

typedef struct {
    pos_t pos;
    char *name;
    char *rate;             /* as written */
    uint64_t interval_ns;
    int key;                /* rt_rate_key */
    char *header;           /* key header:NAME */
} cfg_rate_zone_t;

typedef struct {
    pos_t pos;
    int kind;               /* rt_listen_kind */
    rt_sockaddr_t sa;
    char *text;
    bool proxy_protocol;
} cfg_listen_t;

typedef struct {
    const char *file;       /* NULL: every key at its default */
    const char *yaml;
    cfg_listen_t *listens;
    size_t nlistens;
    bool listen_set;
    uint32_t workers;
    char *user;
    char *admin_socket;
    cfg_listen_t metrics;
    bool has_metrics;
    rt_cidr_t *trusted;
    size_t ntrusted;
    cfg_listen_t *resolvers;  /* resolver: kind RT_LISTEN_RESOLVER; none: /etc/resolv.conf */
    size_t nresolvers;
    uint32_t tls_protocols;
    bool session_tickets, unknown_sni_reject;
    bool http2, http2_cleartext;  /* ALPN h2 on TLS listeners; prior knowledge on plain ones */
    uint32_t h2_max_streams;
    uint64_t ticket_key_rotation_ms;
    char *acme_directory, *acme_email, *acme_ca_file;
    uint64_t acme_renew_before_ms;
    cfg_cache_zone_t *cache_zones;
    size_t ncache_zones;
    cfg_rate_zone_t *rate_zones;
    size_t nrate_zones;
    uint32_t max_connections, max_conns_per_ip;
    uint64_t header_timeout_ms, body_timeout_ms, keepalive_timeout_ms, drain_timeout_ms;
    uint64_t max_header_size, max_uri_size, body_min_rate;
    uint32_t max_headers;
    char *access_log_path, *error_log_path;
    bool has_ha;
    char *ha_node, *ha_peer, *ha_interface, *ha_auth_pass, *ha_listen, *ha_address;
    cstr_t *ha_vips;
    size_t nha_vips;
    uint32_t ha_router_id, ha_priority;
    bool ha_preempt;
    uint64_t ha_advert_ms;
} cfg_global_t;

/* Parse a site file's text (diagnostics name file).  NULL when invalid. */
cfg_site_t *config_site(arena_t *a, const char *file, const char *text, diag_t *d);
/* Parse proxy.yaml (text NULL: defaults).  NULL when invalid. */
cfg_global_t *config_global(arena_t *a, const char *file, const char *text, diag_t *d);

/* Cross-checks of sites against each other and the global settings
 * (hosts claimed twice, two defaults, zones, shadowed routes, files). */
void check_sites(cfg_global_t *g, cfg_site_t **sites, size_t n, diag_t *d);

/* Compile into a rule table (malloc'ed, 8-byte aligned).  The sites must
 * have passed check_sites; they are compiled in name order. */
int compile_table(const cfg_global_t *g, cfg_site_t **sites, size_t n, uint8_t **out, size_t *len);

/* Incremental compilation (compile.c): one checked site compiled alone into
 * a fragment (malloc'ed, 8-byte aligned), and fragments linked into the
 * table compile_table would give for those sites, byte for byte.  A
 * fragment depends on its site and on the names of the rate-limit and cache
 * zones (in order); link_table returns -1 for a fragment that is not one. */
int compile_fragment(const cfg_global_t *g, const cfg_site_t *s, uint8_t **out, size_t *len);
int link_table(const cfg_global_t *g, uint8_t *const *frags, const size_t *lens, size_t n, uint8_t **out, size_t *len);

typedef struct {
    const char *name;   /* these point into the fragment */
    const char **hosts; /* malloc'ed array, the caller frees it */
    size_t nhosts;
    bool is_default;
    int cert_mode;
} frag_info_t;

/* What the cross-site checks need of a fragment's site; -1 if it is none. */
int fragment_site_info(const uint8_t *p, size_t len, frag_info_t *out);
const char *fragment_site_name(const uint8_t *p, size_t len);

#endif

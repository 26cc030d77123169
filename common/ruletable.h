/*
 * ruletable.h - the on-disk rule table: the only contract between proxyctl
 * (which writes it) and proxyd (which executes it).
 *
 * A table is one position-independent little-endian blob: a fixed header,
 * then sections addressed by (offset, count).  Every record has a fixed size
 * and is 8-byte aligned; records refer to each other by index and to strings
 * by (offset, length) into the string section, never by pointer.  Strings in
 * that section are also NUL-terminated so that the few consumers that need a
 * C string (PCRE2, open(2)) can use them in place.
 *
 * rt_open() verifies every offset, count, index, enum and string once; after
 * it returns 0 a reader may follow any reference without further checks.
 * docs/ruletable.md describes the format in prose.
 */
#ifndef COMMON_RULETABLE_H
#define COMMON_RULETABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RT_MAGIC "PXRTABLE"
#define RT_VERSION 1
#define RT_NONE UINT32_MAX /* "no index" in any u32 reference */
#define RT_ALIGN 8

/* A string: offset and length into the string section (offset 0 = ""). */
typedef struct {
    uint32_t off;
    uint32_t len;
} rt_str_t;

/* A run of records in another section: first index and count. */
typedef struct {
    uint32_t first;
    uint32_t count;
} rt_span_t;

enum rt_section_id {
    RT_SEC_STRINGS,
    RT_SEC_GLOBAL,    /* exactly one rt_global_t */
    RT_SEC_HOSTS,     /* open-addressed hash of exact host names */
    RT_SEC_WILDCARDS, /* open-addressed hash of wildcard suffixes */
    RT_SEC_SITES,
    RT_SEC_ROUTES,
    RT_SEC_PATHS,     /* per-site path index entries (exact hash + sorted prefixes) */
    RT_SEC_REFS,      /* u32 route indices referenced by path entries and scans */
    RT_SEC_POLICIES,
    RT_SEC_UPSTREAMS,
    RT_SEC_SERVERS,
    RT_SEC_HEADER_OPS,
    RT_SEC_CIDRS,
    RT_SEC_STATUS_TTLS,
    RT_SEC_RATE_ZONES,
    RT_SEC_CACHE_ZONES,
    RT_SEC_LISTENS,
    RT_SEC_STRLIST,   /* rt_str_t lists: site hosts, compression types, allow methods... */
    RT_SEC_COUNT
};

typedef struct {
    uint32_t off;   /* from the start of the table, RT_ALIGN-aligned */
    uint32_t count; /* records (bytes for RT_SEC_STRINGS) */
} rt_section_t;

typedef struct {
    char magic[8];
    uint32_t version;
    uint32_t header_size;
    uint64_t total_size;
    uint8_t sha256[32];      /* SHA-256 of the whole table, taken with this field zeroed */
    uint32_t section_count;
    uint32_t reserved;
    rt_section_t sections[RT_SEC_COUNT];
} rt_header_t;

/* ---- enums stored in records ------------------------------------------ */

enum rt_balance { RT_BAL_ROUND_ROBIN, RT_BAL_LEAST_CONN, RT_BAL_IP_HASH, RT_BAL_RANDOM_TWO, RT_BAL_MAX };
enum rt_cert_mode { RT_CERT_NONE, RT_CERT_FILE, RT_CERT_SELF_SIGNED, RT_CERT_ACME, RT_CERT_MAX };
enum rt_sechdr { RT_SECHDR_NONE, RT_SECHDR_BASIC, RT_SECHDR_STRICT, RT_SECHDR_MAX };
enum rt_logfmt { RT_LOG_JSON, RT_LOG_COMBINED, RT_LOG_OFF, RT_LOG_MAX };
enum rt_match { RT_MATCH_ANY, RT_MATCH_EXACT, RT_MATCH_PREFIX, RT_MATCH_REGEX, RT_MATCH_MAX };
enum rt_action { RT_ACT_UPSTREAM, RT_ACT_RETURN, RT_ACT_REDIRECT, RT_ACT_STATIC, RT_ACT_FASTCGI, RT_ACT_MAX };

/* Actions that send the request to a server of the route's upstream: HTTP,
 * or FastCGI (target: the root, extra: the index file). */
static inline bool rt_action_upstream(unsigned a) { return a == RT_ACT_UPSTREAM || a == RT_ACT_FASTCGI; }
enum rt_hdr_dir { RT_HDR_REQUEST, RT_HDR_RESPONSE, RT_HDR_DIR_MAX };
enum rt_hdr_op { RT_HDR_SET, RT_HDR_REMOVE, RT_HDR_OP_MAX };
enum rt_addr_kind { RT_ADDR_INET, RT_ADDR_INET6, RT_ADDR_UNIX, RT_ADDR_NAME, RT_ADDR_MAX };
enum rt_rate_key { RT_RKEY_CLIENT_IP, RT_RKEY_HOST, RT_RKEY_SITE, RT_RKEY_HEADER, RT_RKEY_MAX };
/* RT_LISTEN_RESOLVER is no listening socket: a DNS server proxyd asks
 * (proxy.yaml resolver), kept in the listens span so that the global record
 * keeps its size (older tables have none: /etc/resolv.conf). */
enum rt_listen_kind { RT_LISTEN_HTTP, RT_LISTEN_HTTPS, RT_LISTEN_METRICS, RT_LISTEN_RESOLVER, RT_LISTEN_MAX };

/* Method bits, in the order of method_names[] in ruletable.c. */
enum rt_method {
    RT_M_GET = 1u << 0, RT_M_HEAD = 1u << 1, RT_M_POST = 1u << 2, RT_M_PUT = 1u << 3,
    RT_M_DELETE = 1u << 4, RT_M_PATCH = 1u << 5, RT_M_OPTIONS = 1u << 6,
    RT_M_CONNECT = 1u << 7, RT_M_TRACE = 1u << 8,
};
#define RT_M_COUNT 9
#define RT_M_ALL ((1u << RT_M_COUNT) - 1)

/* retry.on and cache.use_stale bits */
enum rt_cond {
    RT_ON_ERROR = 1u << 0, RT_ON_TIMEOUT = 1u << 1, RT_ON_UPDATING = 1u << 2,
    RT_ON_500 = 1u << 3, RT_ON_502 = 1u << 4, RT_ON_503 = 1u << 5, RT_ON_504 = 1u << 6,
    RT_ON_429 = 1u << 7,
};
#define RT_COND_COUNT 8

/* The rt_cond bit a response status stands for (retry.on, cache.use_stale), 0 none. */
static inline unsigned rt_status_cond(int status)
{
    switch (status) {
    case 500: return RT_ON_500;
    case 502: return RT_ON_502;
    case 503: return RT_ON_503;
    case 504: return RT_ON_504;
    case 429: return RT_ON_429;
    default: return 0;
    }
}

/* ---- records ----------------------------------------------------------- */

typedef struct {
    rt_str_t addr;       /* "host:port", "[v6]:port" or "unix:/path" as written */
    uint8_t kind;        /* rt_addr_kind */
    uint8_t pad[3];
    uint16_t port;       /* host order */
    uint16_t pad2;
    uint8_t ip[16];      /* 4 or 16 bytes, network order */
} rt_sockaddr_t;

typedef struct {
    uint8_t kind;        /* rt_listen_kind */
    uint8_t flags;       /* RT_LF_* */
    uint8_t pad[6];
    rt_sockaddr_t sa;
} rt_listen_t;

#define RT_LF_PROXY_PROTOCOL (1u << 0) /* connections start with a PROXY protocol v1/v2 header */

typedef struct {
    uint32_t workers;            /* 0 = one per CPU */
    uint32_t max_connections;
    uint32_t header_timeout_ms;
    uint32_t body_timeout_ms;
    uint32_t keepalive_timeout_ms;
    uint32_t drain_timeout_ms;
    uint32_t max_header_size;
    uint32_t max_uri_size;
    uint32_t ticket_key_rotation_s;
    uint32_t tls_protocols;      /* bit 0 TLSv1.2, bit 1 TLSv1.3 */
    uint32_t flags;              /* RT_GF_* */
    uint32_t max_conns_per_ip;   /* 0 = no cap */
    rt_str_t user;
    rt_str_t admin_socket;
    rt_str_t access_log_path;    /* "" = stderr */
    rt_str_t error_log_path;     /* "" = stderr */
    rt_span_t listens;           /* RT_SEC_LISTENS */
    rt_span_t trusted_proxies;   /* RT_SEC_CIDRS */
    uint32_t body_min_rate;      /* bytes/s a request body keeps up once body_timeout has passed; 0 off */
    uint32_t max_headers;        /* header fields per request head; 0 (older tables): the parser's default */
    uint32_t default_site;       /* site index or RT_NONE */
    uint32_t h2_max_streams;     /* SETTINGS_MAX_CONCURRENT_STREAMS; 0 only with neither RT_GF_HTTP2* (older tables) */
} rt_global_t;

#define RT_MAX_HEADERS_CAP 128 /* the HTTP/1.1 parser's field capacity (H1_HEADERS_CAP) */

#define RT_GF_SESSION_TICKETS (1u << 0)
#define RT_GF_UNKNOWN_SNI_REJECT (1u << 1)
#define RT_GF_HTTP2 (1u << 2)           /* ALPN offers "h2" before "http/1.1" on TLS listeners */
#define RT_GF_HTTP2_CLEARTEXT (1u << 3) /* plain listeners take the HTTP/2 preface (prior knowledge) */
#define RT_H2_MAX_STREAMS_LIMIT 65536

/* Hash bucket, used by both host tables.  Empty buckets have site RT_NONE. */
typedef struct {
    uint32_t hash;  /* rt_hash() of the lower-case name */
    uint32_t site;
    rt_str_t name;  /* exact host, or for wildcards the suffix with its dot: ".shop.example.com" */
} rt_host_t;

typedef struct {
    rt_str_t name;
    rt_str_t source;          /* file the site came from, for diagnostics and route-test */
    rt_span_t hosts;          /* RT_SEC_STRLIST, as written */
    rt_span_t routes;         /* RT_SEC_ROUTES, file order */
    rt_span_t upstreams;      /* RT_SEC_UPSTREAMS */
    rt_span_t exact_paths;    /* RT_SEC_PATHS, open-addressed, power-of-two count or 0 */
    rt_span_t prefix_paths;   /* RT_SEC_PATHS, sorted by bytes, parent links */
    rt_span_t scan;           /* RT_SEC_REFS: routes the index cannot place (regex, any) */
    rt_span_t compress_types; /* RT_SEC_STRLIST: lower case type/subtype, or type/ followed by a star */
    uint32_t flags;           /* RT_SF_* */
    uint32_t hsts_max_age;
    uint8_t cert_mode;        /* rt_cert_mode */
    uint8_t security_headers; /* rt_sechdr */
    uint8_t access_log;       /* rt_logfmt */
    uint8_t gzip_level;       /* 1..9 */
    uint32_t compress_min_length; /* bytes; a known Content-Length below it is sent as it is */
} rt_site_t;

#define RT_SF_DEFAULT (1u << 0)
#define RT_SF_REDIRECT_HTTP (1u << 1)
#define RT_SF_HSTS (1u << 2)
#define RT_SF_HSTS_SUBDOMAINS (1u << 3)
#define RT_SF_HSTS_PRELOAD (1u << 4)
#define RT_SF_GZIP (1u << 5)   /* compression: the codings the site sends */
#define RT_SF_BROTLI (1u << 6)
#define RT_SF_ZSTD (1u << 7)
#define RT_SF_COMPRESS (RT_SF_GZIP | RT_SF_BROTLI | RT_SF_ZSTD)
/* The brotli (0..11) and zstd (1..19) levels live in flags bits 8-11 and
 * 12-16, so a site record keeps the size every stored table has. */
#define RT_SF_BROTLI_LEVEL_SHIFT 8
#define RT_SF_ZSTD_LEVEL_SHIFT 12
#define RT_SF_KNOWN 0x1ffffu
static inline unsigned rt_site_brotli_level(const rt_site_t *s) { return (s->flags >> RT_SF_BROTLI_LEVEL_SHIFT) & 15u; }
static inline unsigned rt_site_zstd_level(const rt_site_t *s) { return (s->flags >> RT_SF_ZSTD_LEVEL_SHIFT) & 31u; }

/* Path index entry.  In an exact table, hash/path/refs; empty buckets have
 * refs.count == 0.  In a prefix array, parent is the index (within the
 * site's prefix span) of the longest other entry that is a prefix of this
 * one, or RT_NONE; parent < own index always holds. */
typedef struct {
    uint32_t hash;
    uint32_t parent;
    rt_str_t path;
    rt_span_t refs; /* RT_SEC_REFS, ascending route indices */
} rt_path_t;

typedef struct {
    uint32_t site;
    uint32_t line;          /* source position of the route, for explain */
    uint32_t col;
    uint32_t methods;       /* RT_M_* mask, RT_M_ALL when unrestricted */
    uint8_t match;          /* rt_match */
    uint8_t action;         /* rt_action */
    uint16_t status;        /* return / redirect status */
    uint32_t flags;         /* RT_RF_* */
    rt_str_t path;          /* exact path, prefix or regex pattern */
    rt_str_t target;        /* redirect to, static root, return body */
    uint32_t upstream;      /* RT_SEC_UPSTREAMS index, or RT_NONE */
    uint32_t policy;        /* RT_SEC_POLICIES index */
    rt_span_t header_ops;   /* RT_SEC_HEADER_OPS */
    uint32_t expires_s;     /* static */
    uint32_t buffering_max_kib; /* upstream: buffering_max in KiB; 0 (older tables): 1 GiB (former padding) */
    rt_str_t extra;         /* static: index file; return: content type;
                             * upstream with RT_RF_REWRITE_PREFIX: the new prefix */
} rt_route_t;

#define RT_RF_STRIP_PREFIX (1u << 0)
#define RT_RF_WEBSOCKET (1u << 1)
#define RT_RF_NO_BUFFERING (1u << 2)
#define RT_RF_REWRITE_PREFIX (1u << 3) /* upstream, path_prefix: the prefix becomes extra */
#define RT_RF_KNOWN 0xfu

typedef struct {
    uint32_t connect_ms, read_ms, send_ms;
    uint32_t retry_on;       /* rt_cond bits */
    uint32_t retry_tries;    /* 1 = no retry */
    uint32_t rate_zone;      /* RT_SEC_RATE_ZONES or RT_NONE */
    uint32_t rate_burst;
    uint32_t rate_flags;     /* bit 0: nodelay */
    uint32_t cache_zone;     /* RT_SEC_CACHE_ZONES or RT_NONE */
    uint32_t cache_use_stale; /* rt_cond bits */
    rt_span_t cache_valid;   /* RT_SEC_STATUS_TTLS */
    rt_span_t cache_bypass;  /* RT_SEC_STRLIST: "authorization", "cookie:session" */
    rt_span_t allow;         /* RT_SEC_CIDRS: deny entries (RT_CIDR_DENY) then allow entries; count 0 = everyone */
    uint64_t max_body;       /* 0 = unlimited */
} rt_policy_t;

typedef struct {
    rt_str_t name;
    uint32_t site;
    uint8_t balance;         /* rt_balance */
    uint8_t tls_flags;       /* RT_UTLS_* */
    uint16_t flags;          /* RT_UF_*; the former padding, zero in older tables */
    uint32_t keepalive;
    uint32_t hc_interval_ms; /* 0 = no active health check */
    uint32_t hc_timeout_ms;
    uint16_t hc_rise, hc_fall;
    uint16_t hc_expect;
    uint16_t pad2;
    rt_str_t hc_path;
    rt_str_t tls_ca_file;
    rt_str_t tls_sni;
    rt_str_t tls_cert_file;
    rt_str_t tls_key_file;
    rt_span_t servers;       /* RT_SEC_SERVERS */
    uint32_t resolve_ms;     /* resolve: re-resolve host names this often; 0 (older tables): at the records' TTL */
} rt_upstream_t;

#define RT_UF_FASTCGI (1u << 0) /* its routes speak FastCGI (and so do its health checks) */
#define RT_UF_KNOWN 0x1u

#define RT_UTLS_ON (1u << 0)
#define RT_UTLS_VERIFY (1u << 1)

typedef struct {
    rt_sockaddr_t sa;
    uint32_t upstream;
    uint32_t weight;
    uint32_t max_fails;
    uint32_t fail_timeout_ms;
    uint32_t flags;          /* RT_SVF_* */
    uint32_t pad;
} rt_server_t;

#define RT_SVF_BACKUP (1u << 0)

typedef struct {
    uint8_t dir;   /* rt_hdr_dir */
    uint8_t op;    /* rt_hdr_op */
    uint16_t pad;
    uint32_t pad2;
    rt_str_t name;
    rt_str_t value; /* may contain $variables, expanded per request */
} rt_header_op_t;

typedef struct {
    uint8_t family; /* 4 or 6 */
    uint8_t bits;
    uint8_t flags;  /* RT_CIDR_*; the former padding, zero in older tables */
    uint8_t pad[5];
    uint8_t addr[16];
} rt_cidr_t;

/* In a policy's allow span: an entry of the deny list (checked first);
 * entries without it are the allow list (when there are any, the rest of
 * the world is denied).  Not in trusted_proxies. */
#define RT_CIDR_DENY 1u

typedef struct {
    uint32_t status;
    uint32_t ttl_s;
} rt_status_ttl_t;

#define RT_RATE_ZONES_MAX 64 /* proxyd keeps their state in a fixed shared region */

typedef struct {
    rt_str_t name;
    rt_str_t rate;           /* as written: "10r/s", "600r/m" */
    rt_str_t header;         /* RT_RKEY_HEADER: the header's name */
    uint64_t interval_ns;    /* the time one request takes at the rate */
    uint8_t key;             /* rt_rate_key */
    uint8_t pad[7];
} rt_rate_zone_t;

#define RT_CACHE_ZONES_MAX 16                /* proxyd keeps their indexes in a fixed shared region */
#define RT_CACHE_MEMORY_MIN (256ull << 10)
#define RT_CACHE_MEMORY_MAX (1ull << 30)

typedef struct {
    rt_str_t name;
    rt_str_t path;
    uint64_t max_size;
    uint64_t memory;         /* the index: RT_CACHE_MEMORY_MIN..MAX */
    uint32_t inactive_s;
    uint32_t pad;
} rt_cache_zone_t;

/* A policy's rate_flags: bit 0 nodelay; bits 16-31 the cache lock timeout
 * in 100 ms units (0: the default, 5 s). */
#define RT_RATE_NODELAY 1u
#define RT_CACHE_LOCK_SHIFT 16
#define RT_CACHE_LOCK_DEFAULT_MS 5000u
static inline uint32_t rt_cache_lock_ms(uint32_t rate_flags)
{
    uint32_t u = rate_flags >> RT_CACHE_LOCK_SHIFT;
    return u ? u * 100u : RT_CACHE_LOCK_DEFAULT_MS;
}
/* In a policy's cache_bypass span, entries that start with this prefix are
 * cache.key_headers (the header's name follows), not bypass conditions. */
#define RT_CACHE_KEY_HEADER "key_header:"

/* ---- the verified view ------------------------------------------------- */

typedef struct {
    const uint8_t *base;
    size_t size;
    const char *strings;
    uint32_t strings_len;
    const rt_global_t *global;
    const rt_host_t *hosts;        uint32_t nhosts;
    const rt_host_t *wildcards;    uint32_t nwildcards;
    const rt_site_t *sites;        uint32_t nsites;
    const rt_route_t *routes;      uint32_t nroutes;
    const rt_path_t *paths;        uint32_t npaths;
    const uint32_t *refs;          uint32_t nrefs;
    const rt_policy_t *policies;   uint32_t npolicies;
    const rt_upstream_t *upstreams; uint32_t nupstreams;
    const rt_server_t *servers;    uint32_t nservers;
    const rt_header_op_t *hdrops;  uint32_t nhdrops;
    const rt_cidr_t *cidrs;        uint32_t ncidrs;
    const rt_status_ttl_t *ttls;   uint32_t nttls;
    const rt_rate_zone_t *rate_zones; uint32_t nrate_zones;
    const rt_cache_zone_t *cache_zones; uint32_t ncache_zones;
    const rt_listen_t *listens;    uint32_t nlistens;
    const rt_str_t *strlist;       uint32_t nstrlist;
} rt_table_t;

/* Verify buf as a rule table and fill t with views into it (no copy).
 * Returns 0, or -1 with a reason in err. buf must be 8-byte aligned and stay
 * alive and unchanged as long as t is used. */
int rt_open(rt_table_t *t, const void *buf, size_t len, char *err, size_t errlen);

static inline const char *rt_cstr(const rt_table_t *t, rt_str_t s) { return t->strings + s.off; }

/* The table checksum: SHA-256 of b[0..len) with the checksum field taken as
 * zeros (len >= sizeof(rt_header_t)). */
void rt_checksum(const uint8_t *b, size_t len, uint8_t out[32]);

/* Record size of section sec (1 for strings). */
size_t rt_entsize(unsigned sec);

/* FNV-1a over the ASCII-lower-cased bytes; the hash of every table index. */
uint32_t rt_hash(const char *p, size_t n);

/* Method name <-> bit; rt_method_bit returns 0 for unknown methods. */
uint32_t rt_method_bit(const char *p, size_t n);
const char *rt_method_name(unsigned idx);
const char *rt_enum_name(const char *kind, unsigned v);
const char *rt_cond_name(unsigned idx);

#endif

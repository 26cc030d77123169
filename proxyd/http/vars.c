/*
 * vars.c - variable expansion and header-operation lookup (see vars.h).
 */
#include "http/vars.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "../common/str.h"

static size_t addr_text(int family, const uint8_t *ip, char *out)
{
    if (family == 4 || family == 6)
        return fmt_ip(out, family, ip);
    memcpy(out, "unix", 5);
    return 4;
}

size_t vars_peer(const conn_t *c, char *out) { return addr_text(c->peer_family, c->peer_ip, out); }

size_t vars_client(const request_t *r, char *out) { return addr_text(r->client_family, r->client_ip, out); }

size_t vars_expand(const request_t *r, const char *v, char *out, size_t cap)
{
    const conn_t *c = r->conn;
    static const char *const names[] = {"host", "scheme", "remote_addr", "request_id", "server_port", "request_uri"};
    if (cap == 0)
        return 0;
    str_buf_t b = str_buf_fixed(out, cap - 1); /* and the NUL */
    while (*v && !b.overflow) {
        const char *d = strchr(v, '$');
        if (d == NULL) {
            str_append_str(&b, v);
            break;
        }
        str_append(&b, v, (size_t)(d - v));
        size_t k = 0, len = 0;
        for (; k < sizeof(names) / sizeof(names[0]); k++)
            if (strncmp(d + 1, names[k], len = strlen(names[k])) == 0)
                break;
        char tmp[64];
        const char *val = tmp;
        size_t vn;
        switch (k) {
        case 0: val = r->host.p; vn = r->host.n; break;
        case 1: val = c->tls ? "https" : "http"; vn = strlen(val); break;
        case 2: vn = vars_client(r, tmp); break;
        case 3: val = r->request_id; vn = 16; break;
        case 4: vn = fmt_u64(tmp, c->local_port); break;
        case 5: val = r->target.p; vn = r->target.n; break;
        default: val = "$"; vn = 1; len = 0; break; /* not a variable: a literal dollar */
        }
        str_append(&b, val, vn);
        v = d + 1 + len;
    }
    out[b.len] = '\0';
    return b.overflow ? cap : b.len;
}

bool vars_route_names(const rt_table_t *t, const rt_route_t *r, int dir, const char *name, size_t n)
{
    for (uint32_t i = 0; i < r->header_ops.count; i++) {
        const rt_header_op_t *o = &t->hdrops[r->header_ops.first + i];
        if (o->dir == dir && n == o->name.len && strncasecmp(name, rt_cstr(t, o->name), n) == 0)
            return true;
    }
    return false;
}

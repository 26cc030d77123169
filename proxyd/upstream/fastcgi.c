/*
 * fastcgi.c - FastCGI records and the CGI response head (see fastcgi.h).
 */
#include "upstream/fastcgi.h"

#include <string.h>
#include <strings.h>

/* ---- records out ------------------------------------------------------------ */

void fcgi_header(char out[FCGI_HEADER_LEN], unsigned type, size_t n)
{
    out[0] = 1; /* FCGI_VERSION_1 */
    out[1] = (char)type;
    out[2] = 0;
    out[3] = FCGI_REQUEST_ID;
    out[4] = (char)(n >> 8);
    out[5] = (char)(n & 0xff);
    out[6] = 0;
    out[7] = 0;
}

void fcgi_begin(str_buf_t *b, bool keep)
{
    char rec[FCGI_HEADER_LEN + 8] = {0};
    fcgi_header(rec, FCGI_BEGIN_REQUEST, 8);
    rec[FCGI_HEADER_LEN + 1] = 1;               /* FCGI_RESPONDER */
    rec[FCGI_HEADER_LEN + 2] = keep ? 1 : 0;    /* FCGI_KEEP_CONN */
    str_append(b, rec, sizeof(rec));
}

size_t fcgi_params_open(str_buf_t *b)
{
    size_t at = b->len;
    char h[FCGI_HEADER_LEN] = {0};
    str_append(b, h, sizeof(h));
    return at;
}

static void put_len(str_buf_t *b, size_t n)
{
    if (n < 128) {
        char c = (char)n;
        str_append(b, &c, 1);
        return;
    }
    char l[4] = {(char)(0x80 | ((n >> 24) & 0x7f)), (char)(n >> 16), (char)(n >> 8), (char)n};
    str_append(b, l, 4);
}

void fcgi_param_pieces(str_buf_t *b, const char *name, size_t nn, const fcgi_piece_t *v, size_t nv)
{
    size_t vn = 0;
    for (size_t i = 0; i < nv; i++)
        vn += v[i].n;
    if (nn > FCGI_MAX_CONTENT || vn > FCGI_MAX_CONTENT) {
        str_refuse(b);
        return;
    }
    put_len(b, nn);
    put_len(b, vn);
    str_append(b, name, nn);
    for (size_t i = 0; i < nv; i++)
        str_append(b, v[i].p, v[i].n);
}

void fcgi_param(str_buf_t *b, const char *name, size_t nn, const char *value, size_t vn)
{
    fcgi_piece_t v = {value, vn};
    fcgi_param_pieces(b, name, nn, &v, 1);
}

void fcgi_param_str(str_buf_t *b, const char *name, const char *value)
{
    fcgi_param(b, name, strlen(name), value, strlen(value));
}

void fcgi_params_close(str_buf_t *b, size_t at)
{
    if (b->overflow)
        return;
    size_t n = b->len - at - FCGI_HEADER_LEN;
    if (n > FCGI_MAX_CONTENT) {
        str_refuse(b);
        return;
    }
    fcgi_header(b->p + at, FCGI_PARAMS, n);
    char end[FCGI_HEADER_LEN];
    fcgi_header(end, FCGI_PARAMS, 0);
    str_append(b, end, sizeof(end));
}

/* The next "Name: value" line of a head at p[0..n): false at the empty line or the end. */
static bool next_field(const char **p, const char *end, const char **name, size_t *nn, const char **v, size_t *vn)
{
    const char *s = *p, *eol = memchr(s, '\n', (size_t)(end - s));
    if (eol == NULL)
        return false;
    *p = eol + 1;
    if (eol > s && eol[-1] == '\r')
        eol--;
    if (eol == s)
        return false;
    *name = s;
    const char *colon = memchr(s, ':', (size_t)(eol - s));
    if (colon == NULL) {
        *nn = 0;
        return true; /* not a field: the caller skips it */
    }
    *nn = (size_t)(colon - s);
    const char *vs = colon + 1;
    while (vs < eol && (*vs == ' ' || *vs == '\t'))
        vs++;
    *v = vs;
    *vn = (size_t)(eol - vs);
    return true;
}

static bool name_is(const char *p, size_t n, const char *lit)
{
    return n == strlen(lit) && strncasecmp(p, lit, n) == 0;
}

#define CGI_NAME_MAX 256

void fcgi_params_from_head(str_buf_t *b, const char *head, size_t n)
{
    const char *end = head + n, *nl = memchr(head, '\n', n);
    if (nl == NULL)
        return;
    const char *fields = nl + 1, *p = fields, *name, *v;
    size_t nn, vn;
    while (next_field(&p, end, &name, &nn, &v, &vn)) {
        if (nn == 0 || nn > CGI_NAME_MAX - 5 || memchr(name, '_', nn) || name_is(name, nn, "Proxy") ||
            name_is(name, nn, "Transfer-Encoding"))
            continue;
        /* Only the first field of a name speaks, for all of them. */
        const char *q = fields, *n2, *v2;
        size_t nn2, vn2, total = 0;
        bool first = true, seen = false;
        while (next_field(&q, end, &n2, &nn2, &v2, &vn2) && n2 != name) {
            if (nn2 == nn && strncasecmp(n2, name, nn) == 0) {
                seen = true;
                break;
            }
        }
        if (seen)
            continue;
        bool cookie = name_is(name, nn, "Cookie");
        q = name;
        while (next_field(&q, end, &n2, &nn2, &v2, &vn2))
            if (nn2 == nn && strncasecmp(n2, name, nn) == 0) {
                total += (first ? 0 : 2) + vn2;
                first = false;
            }
        char cgi[CGI_NAME_MAX];
        size_t cn = 0;
        if (name_is(name, nn, "Content-Type") || name_is(name, nn, "Content-Length")) {
            cn = 0;
        } else {
            memcpy(cgi, "HTTP_", 5);
            cn = 5;
        }
        for (size_t i = 0; i < nn; i++) {
            char c = name[i];
            cgi[cn++] = c == '-' ? '_' : (c >= 'a' && c <= 'z') ? (char)(c - 'a' + 'A') : c;
        }
        put_len(b, cn);
        put_len(b, total);
        str_append(b, cgi, cn);
        first = true;
        q = name;
        while (next_field(&q, end, &n2, &nn2, &v2, &vn2))
            if (nn2 == nn && strncasecmp(n2, name, nn) == 0) {
                if (!first)
                    str_append(b, cookie ? "; " : ", ", 2);
                str_append(b, v2, vn2);
                first = false;
            }
    }
}

void fcgi_probe_request(str_buf_t *b, const char *root, const char *path, const char *host)
{
    fcgi_begin(b, false);
    size_t at = fcgi_params_open(b);
    size_t rn = strlen(root);
    while (rn && root[rn - 1] == '/')
        rn--;
    fcgi_piece_t file[2] = {{root, rn}, {path, strlen(path)}};
    fcgi_param_pieces(b, "SCRIPT_FILENAME", 15, file, 2);
    fcgi_param_str(b, "GATEWAY_INTERFACE", "CGI/1.1");
    fcgi_param_str(b, "SERVER_SOFTWARE", "proxyd");
    fcgi_param_str(b, "SERVER_PROTOCOL", "HTTP/1.1");
    fcgi_param_str(b, "REQUEST_METHOD", "GET");
    fcgi_param_str(b, "SCRIPT_NAME", path);
    fcgi_param_str(b, "REQUEST_URI", path);
    fcgi_param_str(b, "DOCUMENT_URI", path);
    fcgi_param(b, "DOCUMENT_ROOT", 13, root, rn);
    fcgi_param_str(b, "QUERY_STRING", "");
    fcgi_param_str(b, "REMOTE_ADDR", "127.0.0.1");
    fcgi_param_str(b, "HTTP_HOST", host);
    fcgi_param_str(b, "HTTP_USER_AGENT", "proxyd-health-check");
    fcgi_params_close(b, at);
    char stdin_end[FCGI_HEADER_LEN];
    fcgi_header(stdin_end, FCGI_STDIN, 0);
    str_append(b, stdin_end, sizeof(stdin_end));
}

/* ---- records in ---------------------------------------------------------------- */

static int bad(fcgi_decoder_t *d, const char *why)
{
    d->error = why;
    return FCGI_ERROR;
}

/* A complete header in d->hdr: check it and enter its record. */
static int enter_record(fcgi_decoder_t *d)
{
    const uint8_t *h = d->hdr;
    if (h[0] != 1)
        return bad(d, "not FastCGI version 1");
    unsigned id = (unsigned)h[2] << 8 | h[3];
    d->type = h[1];
    d->left = (uint16_t)((unsigned)h[4] << 8 | h[5]);
    d->pad = h[6];
    d->endhave = 0;
    switch (d->type) {
    case FCGI_STDOUT:
    case FCGI_STDERR:
        break;
    case FCGI_END_REQUEST:
        if (d->left != 8)
            return bad(d, "END_REQUEST of a length other than 8");
        break;
    default:
        return bad(d, "unexpected record type");
    }
    if (id != FCGI_REQUEST_ID)
        return bad(d, "record of another request id");
    return 0;
}

int fcgi_decode(fcgi_decoder_t *d, const char *in, size_t n, size_t *used, char *out, size_t cap, size_t *outn,
                const char **text, size_t *textn)
{
    size_t i = 0;
    int rc = FCGI_MORE;
    if (d->error)
        return FCGI_ERROR;
    if (d->ended)
        return FCGI_END;
    for (;;) {
        if (d->have < FCGI_HEADER_LEN) {
            if (i == n)
                break;
            size_t want = FCGI_HEADER_LEN - d->have, k = want < n - i ? want : n - i;
            memcpy(d->hdr + d->have, in + i, k);
            d->have = (uint8_t)(d->have + k);
            i += k;
            if (d->have == FCGI_HEADER_LEN && enter_record(d) < 0) {
                rc = FCGI_ERROR;
                break;
            }
            continue;
        }
        if (d->left) {
            if (i == n)
                break;
            size_t k = d->left < n - i ? d->left : n - i;
            if (d->type == FCGI_STDOUT) {
                if (*outn >= cap)
                    break; /* out is full: the rest waits */
                if (k > cap - *outn)
                    k = cap - *outn;
                memcpy(out + *outn, in + i, k);
                *outn += k;
            } else if (d->type == FCGI_STDERR) {
                *text = in + i;
                *textn = k;
                rc = FCGI_TEXT;
            } else {
                memcpy(d->end + d->endhave, in + i, k);
                d->endhave = (uint8_t)(d->endhave + k);
            }
            d->left = (uint16_t)(d->left - k);
            i += k;
            if (rc == FCGI_TEXT)
                break;
            continue;
        }
        if (d->pad) {
            if (i == n)
                break;
            size_t k = d->pad < n - i ? d->pad : n - i;
            d->pad = (uint8_t)(d->pad - k);
            i += k;
            continue;
        }
        d->have = 0; /* the record is complete */
        if (d->type == FCGI_END_REQUEST) {
            d->app_status =
                (uint32_t)d->end[0] << 24 | (uint32_t)d->end[1] << 16 | (uint32_t)d->end[2] << 8 | d->end[3];
            d->protocol_status = d->end[4];
            d->ended = true;
            rc = FCGI_END;
            break;
        }
    }
    *used += i;
    return rc;
}

int fcgi_status_value(const char *v, size_t n)
{
    if (n < 3 || (n > 3 && v[3] != ' '))
        return -1;
    int s = 0;
    for (int i = 0; i < 3; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        s = s * 10 + (v[i] - '0');
    }
    return s >= 100 ? s : -1;
}

#define PROBE_OUT 4096

int fcgi_probe_status(const char *buf, size_t n)
{
    fcgi_decoder_t d;
    memset(&d, 0, sizeof(d));
    char out[PROBE_OUT];
    size_t used = 0, outn = 0;
    bool ended = false;
    for (;;) {
        const char *text;
        size_t textn;
        int rc = fcgi_decode(&d, buf + used, n - used, &used, out, sizeof(out), &outn, &text, &textn);
        if (rc == FCGI_ERROR)
            return -1;
        if (rc == FCGI_END)
            ended = true;
        if (rc != FCGI_TEXT)
            break;
    }
    /* The head: fields up to an empty line. */
    const char *p = out, *end = out + outn, *name, *v;
    size_t nn, vn;
    int status = 0;
    bool location = false;
    for (;;) {
        const char *line = p;
        if (!next_field(&p, end, &name, &nn, &v, &vn)) {
            bool complete = p != line; /* an empty line was taken */
            if (!complete)
                return ended || outn == sizeof(out) ? -1 : 0;
            return status ? status : location ? 302 : 200;
        }
        if (nn == 0)
            return -1;
        if (name_is(name, nn, "Status") && (status = fcgi_status_value(v, vn)) < 0)
            return -1;
        if (name_is(name, nn, "Location"))
            location = true;
    }
}

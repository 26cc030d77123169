/*
 * fuzz_http1.c - libFuzzer target for proxyd/http/http1.c.
 *
 * Each input is run through the request parser (default and tiny limits),
 * the response parser and the chunked decoder.  Besides the sanitizers it
 * checks the parsers' own promises, aborting when one is broken:
 *  - slices stay inside the consumed head; counts stay within limits;
 *  - a prefix of the input parses as 0 or as the whole input's verdict, and
 *    a complete head re-parses to the same length;
 *  - the chunked decoder, fed the input in pseudo-random pieces (sizes
 *    derived from the input), yields exactly what a one-shot decode yields.
 * Prefixes and pieces are exact-size heap copies so ASan sees overreads.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http/http1.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c))                                                                                  \
            abort();                                                                               \
    } while (0)

static h1_request_t req, req2;
static h1_response_t res, res2;

static char *copy(const uint8_t *d, size_t n)
{
    char *p = malloc(n ? n : 1);
    CHECK(p != NULL);
    memcpy(p, d, n);
    return p;
}

static void check_slice(h1_slice_t s, const char *base, size_t n)
{
    if (s.n == 0)
        return;
    CHECK(s.p >= base && s.p + s.n <= base + n);
}

static void check_request(const char *buf, size_t r, const h1_request_t *q)
{
    check_slice(q->method, buf, r);
    check_slice(q->target, buf, r);
    check_slice(q->host, buf, r);
    check_slice(q->query, buf, r);
    if (!(q->path.n == 1 && q->path.p[0] == '/'))
        check_slice(q->path, buf, r);
    CHECK(q->minor == 0 || q->minor == 1);
    CHECK(q->content_length >= -1);
    CHECK(!(q->chunked && q->content_length >= 0));
    CHECK(q->nheaders <= 100);
    for (size_t i = 0; i < q->nheaders; i++) {
        CHECK(q->headers[i].name.n > 0);
        check_slice(q->headers[i].name, buf, r);
        check_slice(q->headers[i].value, buf, r);
    }
}

/* h1_head_ready: resumable, and never "not ready" when a parse would finish. */
static void fuzz_head_ready(const uint8_t *data, size_t size, size_t cut, int r, size_t max)
{
    const char *buf = (const char *)data;
    size_t fresh = 0, resumed = 0;
    bool whole = h1_head_ready(buf, size, &fresh, max);
    bool first = h1_head_ready(buf, cut, &resumed, max);
    CHECK(resumed <= cut);
    if (!first)
        CHECK(h1_head_ready(buf, size, &resumed, max) == whole);
    if (r > 0)
        CHECK(whole);
}

static void fuzz_request(const uint8_t *data, size_t size, const h1_limits_t *lim, size_t cut)
{
    static const h1_limits_t def = H1_LIMITS_DEFAULT;
    const h1_limits_t *l = lim ? lim : &def;
    char *buf = copy(data, size);
    int r = h1_parse_request(buf, size, &req, lim);
    if (r > 0) {
        CHECK((size_t)r <= size && (size_t)r <= l->max_header_size);
        check_request(buf, (size_t)r, &req);
        CHECK(h1_parse_request(buf, (size_t)r, &req2, lim) == r);
        CHECK(req2.nheaders == req.nheaders && req2.content_length == req.content_length);
    } else if (r < 0) {
        CHECK(req.error != NULL);
        CHECK(req.status == 400 || req.status == 414 || req.status == 431 ||
              req.status == 501 || req.status == 505);
    } else {
        CHECK(size <= l->max_header_size);
    }
    fuzz_head_ready(data, size, cut, r, l->max_header_size);
    /* A prefix answers "need more" or the same verdict. */
    if (cut < size && (r != 0 || cut > 0)) {
        size_t k = r > 0 && cut >= (size_t)r ? (size_t)r - 1 : cut;
        char *pre = copy(data, k);
        int rk = h1_parse_request(pre, k, &req2, lim);
        CHECK(rk == 0 || (r < 0 && rk == -1 && req2.status == req.status &&
                          strcmp(req2.error, req.error) == 0));
        free(pre);
    }
    free(buf);
}

static void fuzz_response(const uint8_t *data, size_t size, size_t cut)
{
    char *buf = copy(data, size);
    int r = h1_parse_response(buf, size, &res, NULL);
    if (r > 0) {
        CHECK(res.status >= 100 && res.status <= 599);
        check_slice(res.reason, buf, (size_t)r);
        for (size_t i = 0; i < res.nheaders; i++)
            check_slice(res.headers[i].value, buf, (size_t)r);
        for (int m = H1_METHOD_OTHER; m <= H1_METHOD_TRACE; m++) {
            h1_body_t b = h1_response_body(&res, (h1_method_t)m);
            CHECK(b != H1_BODY_CHUNKED || res.chunked);
            CHECK(b != H1_BODY_LENGTH || res.content_length > 0);
        }
    } else if (r < 0) {
        CHECK(res.error != NULL);
    }
    if (cut < size && (r != 0 || cut > 0)) {
        size_t k = r > 0 && cut >= (size_t)r ? (size_t)r - 1 : cut;
        char *pre = copy(data, k);
        int rk = h1_parse_response(pre, k, &res2, NULL);
        CHECK(rk == 0 || (r < 0 && rk == -1 && strcmp(res2.error, res.error) == 0));
        free(pre);
    }
    free(buf);
}

typedef struct {
    int result;
    size_t consumed;
    uint64_t hash, ndata;
    const char *error;
} chunk_run_t;

static uint64_t xorshift(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Decode data in pieces of 1..max bytes (max 0: all at once). */
static chunk_run_t chunk_run(const uint8_t *data, size_t size, uint64_t seed, size_t max,
                             size_t small)
{
    chunk_run_t o = {H1_CHUNK_MORE, 0, 1469598103934665603u, 0, NULL};
    h1_chunked_t st;
    h1_chunked_init(&st);
    if (small) {
        st.max_line = small;
        st.max_trailer = small * 4;
    }
    size_t off = 0;
    while (off < size && o.result != H1_CHUNK_DONE && o.result != H1_CHUNK_ERROR) {
        size_t n = max ? 1 + (size_t)(xorshift(&seed) % max) : size;
        n = n < size - off ? n : size - off;
        char *piece = copy(data + off, n);
        size_t pos = 0;
        for (;;) {
            size_t used = 0;
            h1_slice_t d;
            o.result = h1_chunked_decode(&st, piece + pos, n - pos, &used, &d);
            CHECK(used <= n - pos);
            pos += used;
            if (o.result != H1_CHUNK_DATA)
                break;
            CHECK(d.n > 0 && d.p >= piece && d.p + d.n <= piece + n);
            for (size_t i = 0; i < d.n; i++)
                o.hash = (o.hash ^ (uint8_t)d.p[i]) * 1099511628211u;
            o.ndata += d.n;
        }
        CHECK(o.result != H1_CHUNK_MORE || pos == n);
        o.consumed = off + pos;
        off += n;
        free(piece);
    }
    CHECK(o.ndata == st.total);
    o.error = st.error;
    return o;
}

static void fuzz_chunked(const uint8_t *data, size_t size, uint64_t seed, size_t small)
{
    chunk_run_t whole = chunk_run(data, size, seed, 0, small);
    chunk_run_t cut = chunk_run(data, size, seed, 1 + seed % 17, small);
    CHECK(whole.result == cut.result && whole.consumed == cut.consumed);
    CHECK(whole.hash == cut.hash && whole.ndata == cut.ndata);
    CHECK((whole.error == NULL) == (cut.error == NULL));
    if (whole.error)
        CHECK(strcmp(whole.error, cut.error) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const h1_limits_t tiny = {96, 24, 4};
    uint64_t seed = 0x9e3779b97f4a7c15u;
    for (size_t i = 0; i < size && i < 8; i++)
        seed = (seed ^ data[i]) * 0x100000001b3u;
    seed |= 1;
    size_t cut = size ? (size_t)(seed % size) : 0;
    fuzz_request(data, size, NULL, cut);
    fuzz_request(data, size, &tiny, cut);
    fuzz_response(data, size, cut);
    fuzz_chunked(data, size, seed, (seed >> 8) % 4 == 0 ? 1 + (seed >> 16) % 32 : 0);
    return 0;
}

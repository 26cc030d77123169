/*
 * fuzz_fastcgi.c - libFuzzer target for proxyd/upstream/fastcgi.c, the
 * decoder of what a FastCGI server sends (untrusted bytes).
 *
 * The first byte chooses a piece size and an output capacity; the rest is
 * the server's bytes.  Besides the sanitizers it checks the decoder's
 * promises, aborting when one is broken:
 *  - fed in pieces (and with a small output buffer drained between calls),
 *    it gives the same verdict, the same STDOUT and STDERR bytes and takes
 *    the same number of bytes as fed the whole input at once with room;
 *  - it never takes more than it is given nor writes past its output;
 *  - STDERR text lies inside the input it was given;
 *  - after FCGI_END or FCGI_ERROR it takes nothing more.
 * The same bytes also go through fcgi_probe_status (a health check's
 * answer) and, as a request head, through fcgi_params_from_head.
 * Decodes run on exact-size heap copies so ASan sees overreads.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "upstream/fastcgi.h"

#define CHECK(c)                                                                                                       \
    do {                                                                                                               \
        if (!(c))                                                                                                      \
            abort();                                                                                                   \
    } while (0)

typedef struct {
    int rc;
    size_t used;
    char *out, *err;
    size_t outn, errn;
} verdict_t;

static void run(const uint8_t *d, size_t n, size_t step, size_t cap, verdict_t *v)
{
    fcgi_decoder_t dec;
    memset(&dec, 0, sizeof(dec));
    v->out = malloc(n + 1);
    v->err = malloc(n + 1);
    v->outn = v->errn = v->used = 0;
    v->rc = FCGI_MORE;
    char *out = malloc(cap);
    for (int guard = 0; guard < 1 << 20; guard++) {
        size_t k = step && n - v->used > step ? step : n - v->used;
        char *piece = malloc(k ? k : 1);
        memcpy(piece, d + v->used, k);
        size_t used = 0, outn = 0, tn = 0;
        const char *text = NULL;
        v->rc = fcgi_decode(&dec, piece, k, &used, out, cap, &outn, &text, &tn);
        CHECK(used <= k && outn <= cap);
        memcpy(v->out + v->outn, out, outn);
        v->outn += outn;
        if (v->rc == FCGI_TEXT) {
            CHECK(text >= piece && text + tn <= piece + k);
            memcpy(v->err + v->errn, text, tn);
            v->errn += tn;
        }
        free(piece);
        v->used += used;
        CHECK(v->outn + v->errn <= v->used);
        if (v->rc == FCGI_ERROR || v->rc == FCGI_END) {
            size_t u2 = 0, o2 = 0, t2;
            const char *x;
            CHECK(fcgi_decode(&dec, "x", 1, &u2, out, cap, &o2, &x, &t2) == v->rc && u2 == 0 && o2 == 0);
            break;
        }
        if (v->rc == FCGI_MORE && v->used == n && outn < cap)
            break; /* all taken */
        if (v->rc == FCGI_MORE && used == 0 && outn == 0 && k > 0)
            abort(); /* no progress with room to write */
    }
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t step = data[0] & 15, cap = 1 + ((data[0] >> 4) * 7);
    data++;
    size--;
    verdict_t whole, parts;
    run(data, size, 0, size + 1, &whole);
    run(data, size, step, cap, &parts);
    CHECK(whole.rc == parts.rc);
    CHECK(whole.used == parts.used && whole.outn == parts.outn && whole.errn == parts.errn);
    CHECK(memcmp(whole.out, parts.out, whole.outn) == 0 && memcmp(whole.err, parts.err, whole.errn) == 0);
    free(whole.out);
    free(whole.err);
    free(parts.out);
    free(parts.err);

    char *copy = malloc(size ? size : 1);
    memcpy(copy, data, size);
    int st = fcgi_probe_status(copy, size);
    CHECK(st >= -1 && st <= 999);
    static char buf[FCGI_MAX_CONTENT + 64];
    str_buf_t b = str_buf_fixed(buf, sizeof(buf));
    size_t at = fcgi_params_open(&b);
    fcgi_params_from_head(&b, copy, size);
    fcgi_params_close(&b, at);
    CHECK(b.len <= sizeof(buf));
    free(copy);
    return 0;
}

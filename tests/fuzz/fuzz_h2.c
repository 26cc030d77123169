/*
 * fuzz_h2.c - libFuzzer target for the HTTP/2 session (proxyd/http/h2session.c).
 *
 * Each input is the byte stream a client sends after the connection preface,
 * fed to a real worker's transport and session over a socketpair (the unit
 * tests' fixture, tests/unit/proxyd_fixture.h): frames in any order, heads,
 * bodies, resets, floods.  The site answers from proxyd itself (return,
 * redirect, a static file), so every stream can run to its end.  The client
 * then closes its side; the connection must be gone within the loop's
 * deadline (no stream or buffer left behind), and the sanitizers watch
 * everything in between.  The corpus (tests/fuzz/corpus/h2) holds frame
 * sequences written by tests/fuzz/h2_corpus.py.
 */
#include "../unit/proxyd_fixture.h"

static const char PREFACE[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

static const char *SITE_FMT = "site: f\n"
                              "hosts: [f.test]\n"
                              "default: true\n"
                              "routes:\n"
                              "  - match: {path_exact: /r}\n"
                              "    return: {status: 200, body: \"hello\"}\n"
                              "  - match: {path_prefix: /files/}\n"
                              "    static: {root: \"%s\"}\n"
                              "  - match: {path_prefix: /}\n"
                              "    redirect: {to: \"/r\", status: 302}\n";

static const char *GLOBAL = "http2_cleartext: true\n"
                            "limits: {h2_max_streams: 16, header_timeout: 100ms, body_timeout: 100ms, "
                            "keepalive_timeout: 100ms}\n";

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fx_worker_init();
    char root[160], file[200], site[1024];
    snprintf(root, sizeof(root), "%s/www", fx_dir);
    snprintf(file, sizeof(file), "%s/files", root);
    if (mkdir(root, 0755) < 0 || mkdir(file, 0755) < 0)
        abort();
    snprintf(file, sizeof(file), "%s/files/a.txt", root);
    FILE *f = fopen(file, "w");
    if (f == NULL)
        abort();
    for (int i = 0; i < 4096; i++)
        fputs("0123456789abcdef", f); /* 64 KiB: more than one window */
    fclose(f);
    snprintf(site, sizeof(site), SITE_FMT, root);
    W->table = fx_table(GLOBAL, site);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fx_client_t *cl = fx_client();
    fx_send(cl, PREFACE, sizeof(PREFACE) - 1);
    fx_send(cl, (const char *)data, size);
    shutdown(cl->fd, SHUT_WR);
    if (!fx_run(fx_no_conns, NULL, 5000))
        abort(); /* the connection outlived its client: something holds it */
    fx_client_close(cl);
    return 0;
}

/*
 * fuzz_ruletable.c - the verifying reader against arbitrary tables.
 *
 * Each input is tried twice: as is (the checksum must reject almost all of
 * it), and with header size and checksum repaired, so that the structural
 * checks themselves are exercised.  Whatever rt_open accepts is then walked
 * completely: every host lookup, every route match and the full dump must
 * stay in bounds (ASan watches).
 */
#include "../unit/proxyctl_all.h"
#include "../../proxyctl/dump.c"

static int regex_never(void *ud, uint32_t r, const char *p, size_t n)
{
    (void)ud;
    (void)r;
    (void)p;
    return n % 2;
}

static void exercise(const rt_table_t *t)
{
    static const char *const paths[] = {"/", "/api/", "/api/x", "/static/a.css", "/old"};
    FILE *null = fopen("/dev/null", "w");
    dump_table(t, null);
    fclose(null);
    for (uint32_t i = 0; i < t->nhosts; i++)
        if (t->hosts[i].site != RT_NONE)
            route_site(t, rt_cstr(t, t->hosts[i].name), t->hosts[i].name.len);
    route_site(t, "a.b.example.com:80", 18);
    for (uint32_t s = 0; s < t->nsites; s++)
        for (size_t p = 0; p < ARRAY_LEN(paths); p++) {
            route_result_t res;
            route_match(t, s, "GET", 3, paths[p], strlen(paths[p]), regex_never, NULL, &res);
            route_match(t, s, "BREW", 4, paths[p], strlen(paths[p]), regex_never, NULL, &res);
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *b = aligned_alloc(8, (size + 15) & ~(size_t)7);
    rt_table_t t;
    char why[256];
    if (b == NULL)
        return 0;
    memcpy(b, data, size);
    if (rt_open(&t, b, size, why, sizeof(why)) == 0)
        exercise(&t);
    if (size >= sizeof(rt_header_t)) {
        rt_header_t *h = (rt_header_t *)b;
        h->total_size = size;
        rt_checksum(b, size, b + offsetof(rt_header_t, sha256));
        if (rt_open(&t, b, size, why, sizeof(why)) == 0)
            exercise(&t);
    }
    free(b);
    return 0;
}

/*
 * fuzz_config.c - the YAML front end against arbitrary site files.
 *
 * The input is split at the first NUL into a global file and a site file.
 * Property: whatever the front end and the checks accept, the compiler turns
 * into a table that the verifying reader accepts.  Anything else is a bug.
 */
#include "../unit/proxyctl_all.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = '\0';
    size_t glen = strlen(text);
    const char *site_text = glen < size ? text + glen + 1 : text;
    const char *global_text = glen < size ? text : NULL;
    arena_t a;
    diag_t d = {0};
    arena_init(&a, 0);
    cfg_global_t *g = config_global(&a, "proxy.yaml", global_text, &d);
    cfg_site_t *s = config_site(&a, "site.yaml", site_text, &d);
    FILE *null = fopen("/dev/null", "w");
    diag_print(&d, null);
    fclose(null);
    if (g && s && d.errors == 0) {
        check_sites(g, &s, 1, &d);
        if (d.errors == 0) {
            uint8_t *blob;
            size_t len;
            rt_table_t t;
            char why[256];
            if (compile_table(g, &s, 1, &blob, &len) != 0 || rt_open(&t, blob, len, why, sizeof(why)) != 0)
                abort();
            free(blob);
        }
    }
    diag_free(&d);
    arena_free(&a);
    free(text);
    return 0;
}

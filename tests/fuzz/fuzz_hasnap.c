/*
 * fuzz_hasnap.c - the replication snapshot reader (common/ha.c) against
 * arbitrary messages from a peer.
 *
 * Each input is checked as is (the body digest rejects almost all of it),
 * then with the header's length and digest repaired so that the record
 * parser itself is exercised, then applied to a scratch store: whatever is
 * accepted must leave an active generation that rt_open verifies.
 */
#include "../unit/proxyctl_all.h"

static store_t st;
static int ready;

static void scratch_store(void)
{
    char path[] = "/tmp/fuzz-hasnap-XXXXXX";
    int fd = mkstemp(path);
    int from;
    if (fd < 0)
        abort();
    close(fd);
    if (store_open(&st, strdup(path), 0) < 0 || store_migrate(&st, &from) < 0)
        abort();
    unlink(path); /* the open connection keeps it */
    ready = 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[400];
    ha_meta_t meta;
    bool reload;
    if (!ready)
        scratch_store();
    ha_snapshot_check(data, size, &meta, err, sizeof(err));
    if (size < HA_HDR_LEN)
        return 0;
    uint8_t *m = malloc(size);
    memcpy(m, data, size);
    memcpy(m, "PXHASNAP\x01\0\0\0", 12);
    uint64_t len = size - HA_HDR_LEN;
    for (int i = 0; i < 8; i++)
        m[16 + i] = (uint8_t)(len >> (8 * i));
    SHA256(m + HA_HDR_LEN, len, m + 24);
    if (ha_snapshot_check(m, size, &meta, err, sizeof(err)) == 0 &&
        ha_snapshot_apply(&st, m, size, "fuzz", NULL, &reload, err, sizeof(err)) == 0) {
        uint8_t *blob;
        size_t n;
        int64_t id;
        rt_table_t t;
        char why[200];
        if (store_active(&st, &id, &blob, &n) < 0 || (blob && rt_open(&t, blob, n, why, sizeof(why)) < 0))
            abort();
        free(blob);
    }
    free(m);
    return 0;
}

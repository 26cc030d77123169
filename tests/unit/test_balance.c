/*
 * test_balance.c - the balancing algorithms: smooth weighted round robin,
 * least_conn, power of two choices, the consistent-hash ring, and the
 * candidate rules of balance_pick() (down servers, tried servers, backups).
 */
#include "../../proxyd/upstream/balance.c"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

static double dabs(double x) { return x < 0 ? -x : x; }

static void cands(bal_cand_t *c, const uint32_t *w, const int64_t *load, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        c[i].pos = i;
        c[i].weight = w[i];
        c[i].load = load ? load[i] : 0;
    }
}

static void rr_init(rr_state_t *rr, const uint32_t *w, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        rr[i].current = 0;
        rr[i].effective = (int32_t)w[i];
    }
}

/* nginx's documented sequence for weights 5, 1, 1. */
static void test_swrr_sequence(void **state)
{
    (void)state;
    const uint32_t w[] = {5, 1, 1};
    rr_state_t rr[3];
    bal_cand_t c[3];
    rr_init(rr, w, 3);
    cands(c, w, NULL, 3);
    char seq[15] = "";
    for (int i = 0; i < 14; i++)
        seq[i] = (char)('a' + bal_swrr(rr, c, 3));
    assert_string_equal(seq, "aabacaaaabacaa");
}

static void test_swrr_exact_shares(void **state)
{
    (void)state;
    const uint32_t w[] = {1, 2, 3, 4};
    rr_state_t rr[4];
    bal_cand_t c[4];
    rr_init(rr, w, 4);
    cands(c, w, NULL, 4);
    unsigned got[4] = {0};
    for (int i = 0; i < 10 * 1000; i++)
        got[c[bal_swrr(rr, c, 4)].pos]++;
    for (int i = 0; i < 4; i++)
        assert_int_equal(got[i], 1000 * w[i]); /* every window of 10 picks is exact */
}

/* A server left out (down) does not disturb the others' proportions. */
static void test_swrr_subset(void **state)
{
    (void)state;
    const uint32_t w[] = {1, 2, 3};
    rr_state_t rr[3];
    bal_cand_t c[2] = {{0, 1, 0}, {2, 3, 0}};
    rr_init(rr, w, 3);
    unsigned got[3] = {0};
    for (int i = 0; i < 4000; i++)
        got[c[bal_swrr(rr, c, 2)].pos]++;
    assert_int_equal(got[0], 1000);
    assert_int_equal(got[1], 0);
    assert_int_equal(got[2], 3000);
}

static void test_least_conn(void **state)
{
    (void)state;
    const uint32_t w1[] = {1, 1, 1};
    const int64_t l1[] = {3, 0, 1};
    rr_state_t rr[3];
    bal_cand_t c[3];
    rr_init(rr, w1, 3);
    cands(c, w1, l1, 3);
    assert_int_equal(c[bal_least_conn(rr, c, 3)].pos, 1);

    /* Weighted: 2 in flight on weight 4 is lighter than 1 on weight 1. */
    const uint32_t w2[] = {1, 4};
    const int64_t l2[] = {1, 2};
    rr_init(rr, w2, 2);
    cands(c, w2, l2, 2);
    assert_int_equal(c[bal_least_conn(rr, c, 2)].pos, 1);

    /* Idle servers share by weight (ties go round robin). */
    const uint32_t w3[] = {1, 2, 3};
    rr_init(rr, w3, 3);
    unsigned got[3] = {0};
    for (int i = 0; i < 6000; i++) {
        cands(c, w3, NULL, 3);
        got[c[bal_least_conn(rr, c, 3)].pos]++;
    }
    assert_int_equal(got[0], 1000);
    assert_int_equal(got[1], 2000);
    assert_int_equal(got[2], 3000);

    /* Ties among the least loaded only: server 1 is busy. */
    const int64_t l3[] = {0, 5, 0};
    memset(got, 0, sizeof(got));
    for (int i = 0; i < 4000; i++) {
        cands(c, w3, l3, 3);
        got[c[bal_least_conn(rr, c, 3)].pos]++;
    }
    assert_int_equal(got[1], 0);
    assert_int_equal(got[0], 1000);
    assert_int_equal(got[2], 3000);
}

static void test_random_two(void **state)
{
    (void)state;
    const uint32_t w[] = {1, 2, 3};
    bal_cand_t c[4];
    uint64_t rng = 42;
    unsigned got[4] = {0};
    cands(c, w, NULL, 3);
    for (int i = 0; i < 60000; i++)
        got[c[bal_random_two(c, 3, &rng)].pos]++;
    for (int i = 0; i < 3; i++) /* idle: shares follow the weights */
        assert_true(abs((int)got[i] - 10000 * (int)w[i]) < 600);

    /* The most loaded of four is never chosen: two distinct draws, the lighter wins. */
    const uint32_t w4[] = {1, 1, 1, 1};
    const int64_t l4[] = {0, 1, 9, 2};
    cands(c, w4, l4, 4);
    memset(got, 0, sizeof(got));
    for (int i = 0; i < 20000; i++)
        got[c[bal_random_two(c, 4, &rng)].pos]++;
    assert_int_equal(got[2], 0);
    assert_true(got[0] > got[1] && got[1] > got[3]);

    /* A single candidate. */
    assert_int_equal(bal_random_two(c, 1, &rng), 0);
}

/* Share of the hash space each server owns (arc ending at each point). */
static void ring_shares(const bal_ring_t *r, double *share, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        share[i] = 0;
    for (uint32_t k = 0; k < r->n; k++) {
        uint64_t prev = k ? r->v[k - 1].point : (uint64_t)r->v[r->n - 1].point;
        uint64_t arc = k ? r->v[k].point - prev : (uint64_t)r->v[k].point + (1ull << 32) - prev;
        share[r->v[k].pos] += (double)arc / 4294967296.0;
    }
}

static void test_ring_weights(void **state)
{
    (void)state;
    const char *keys[] = {"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "[2001:db8::1]:80", "unix:/run/app.sock"};
    const uint32_t w[] = {1, 2, 3, 1, 1};
    bal_ring_t r;
    double share[5];
    assert_int_equal(bal_ring_build(&r, keys, w, 3), 0);
    assert_int_equal(r.n, 6 * BAL_RING_POINTS);
    for (uint32_t k = 1; k < r.n; k++)
        assert_true(r.v[k - 1].point <= r.v[k].point);
    ring_shares(&r, share, 3);
    for (int i = 0; i < 3; i++) {
        printf("    ring 1:2:3 share[%d] = %.4f (want %.4f)\n", i, share[i], w[i] / 6.0);
        assert_true(dabs(share[i] - w[i] / 6.0) < 0.03);
    }
    bal_ring_free(&r);
    const uint32_t eq[] = {1, 1, 1, 1, 1};
    assert_int_equal(bal_ring_build(&r, keys, eq, 5), 0);
    ring_shares(&r, share, 5);
    for (int i = 0; i < 5; i++)
        assert_true(dabs(share[i] - 0.2) < 0.04);
    bal_ring_free(&r);
}

/* Removing a server moves only its own clients; the others stay put. */
static void test_ring_stability(void **state)
{
    (void)state;
    const char *all[] = {"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80", "10.0.0.5:80"};
    const char *rest[] = {"10.0.0.1:80", "10.0.0.2:80", "10.0.0.4:80", "10.0.0.5:80"}; /* .3 left */
    const uint32_t w[] = {1, 1, 1, 1, 1};
    const uint8_t ok[] = {1, 1, 1, 1, 1};
    bal_ring_t a, b;
    assert_int_equal(bal_ring_build(&a, all, w, 5), 0);
    assert_int_equal(bal_ring_build(&b, rest, w, 4), 0);
    unsigned moved = 0, on_gone = 0, n = 100000;
    for (uint32_t i = 0; i < n; i++) {
        uint8_t ip[4] = {10, (uint8_t)(i >> 16), (uint8_t)(i >> 8), (uint8_t)i};
        uint32_t h = bal_hash_client(ip, 4);
        const char *before = all[bal_ring_lookup(&a, h, ok)];
        const char *after = rest[bal_ring_lookup(&b, h, ok)];
        if (strcmp(before, "10.0.0.3:80") == 0)
            on_gone++;
        else if (strcmp(before, after) != 0)
            moved++;
    }
    printf("    ring: %u of %u clients were on the removed server; %u others moved\n", on_gone, n, moved);
    assert_int_equal(moved, 0);
    assert_true(on_gone > n / 5 - n / 25 && on_gone < n / 5 + n / 25);
    bal_ring_free(&a);
    bal_ring_free(&b);
}

/* A server that is down (not ok) hands its clients to the next points; the rest stay. */
static void test_ring_skip_down(void **state)
{
    (void)state;
    const char *keys[] = {"a:1", "b:1", "c:1"};
    const uint32_t w[] = {1, 1, 1};
    const uint8_t all[] = {1, 1, 1}, no_b[] = {1, 0, 1}, none[] = {0, 0, 0};
    bal_ring_t r;
    assert_int_equal(bal_ring_build(&r, keys, w, 3), 0);
    unsigned moved = 0;
    for (uint32_t i = 0; i < 30000; i++) {
        uint32_t h = bal_hash_client(&i, sizeof(i));
        uint32_t x = bal_ring_lookup(&r, h, all), y = bal_ring_lookup(&r, h, no_b);
        assert_int_not_equal(y, 1);
        moved += x != y;
        if (x != 1)
            assert_int_equal(x, y);
    }
    assert_true(moved > 8000 && moved < 12000);
    assert_int_equal(bal_ring_lookup(&r, 123, none), BAL_NONE);
    /* Wrap-around: a hash past the last point lands on the first. */
    assert_int_equal(bal_ring_lookup(&r, UINT32_MAX, all), r.v[r.v[r.n - 1].point == UINT32_MAX ? r.n - 1 : 0].pos);
    bal_ring_free(&r);
}

/* ---- balance_pick on a hand-made table -------------------------------------------- */

typedef struct {
    tref_t tr;
    rt_upstream_t up;
    rt_server_t sv[4];
    rt_site_t site;
    health_slot_t slots[4];
    health_slot_t *slotp[4];
    health_table_t health;
} fake_t;

static char strings[] = "\0s\0app\0" "10.0.0.1:80\0" "10.0.0.2:80\0" "10.0.0.3:80\0" "10.0.0.9:80";

static void fake_init(fake_t *f, uint8_t balance, bool hc)
{
    memset(f, 0, sizeof(*f));
    f->tr.t.strings = strings;
    f->tr.t.strings_len = sizeof(strings);
    f->tr.t.upstreams = &f->up;
    f->tr.t.nupstreams = 1;
    f->tr.t.servers = f->sv;
    f->tr.t.nservers = 4;
    f->tr.t.sites = &f->site;
    f->tr.t.nsites = 1;
    f->up.balance = balance;
    f->up.hc_interval_ms = hc ? 1000 : 0;
    f->up.servers.first = 0;
    f->up.servers.count = 4;
    for (uint32_t i = 0; i < 4; i++) {
        f->sv[i].weight = 1;
        f->sv[i].sa.addr.off = 7 + 12 * i;
        f->sv[i].sa.addr.len = 11;
        f->slotp[i] = &f->slots[i];
    }
    f->sv[3].flags = RT_SVF_BACKUP;
    f->health.slot = f->slotp;
    f->tr.mod[MOD_HEALTH] = &f->health;
    assert_int_equal(balance_prepare(&f->tr), 0);
}

static void test_pick_rules(void **state)
{
    (void)state;
    static fake_t f;
    fake_init(&f, RT_BAL_ROUND_ROBIN, true);
    const uint8_t ip[4] = {192, 0, 2, 1};
    unsigned got[4] = {0};
    for (int i = 0; i < 300; i++)
        got[balance_pick(&f.tr, 0, ip, 4, 0, 1000)]++;
    assert_int_equal(got[0], 100); /* the backup gets nothing while primaries are up */
    assert_int_equal(got[3], 0);

    /* Tried servers are skipped (bit = pool position). */
    for (int i = 0; i < 10; i++)
        assert_int_equal(balance_pick(&f.tr, 0, ip, 4, 1u << 0 | 1u << 2, 1000), 1);

    /* Passive down until 5000: skipped before, back after. */
    atomic_store(&f.slots[1].down_until, 5000);
    for (int i = 0; i < 10; i++)
        assert_int_not_equal(balance_pick(&f.tr, 0, ip, 4, 0, 4999), 1);
    memset(got, 0, sizeof(got));
    for (int i = 0; i < 30; i++)
        got[balance_pick(&f.tr, 0, ip, 4, 0, 5000)]++;
    assert_int_equal(got[1], 10);

    /* Every primary down (active check or passive): the backup takes over, and hands back. */
    atomic_store(&f.slots[0].hc_down, 1);
    atomic_store(&f.slots[1].down_until, 9000);
    atomic_store(&f.slots[2].hc_down, 1);
    assert_int_equal(balance_pick(&f.tr, 0, ip, 4, 0, 6000), 3);
    /* All primaries tried counts as none left too. */
    atomic_store(&f.slots[0].hc_down, 0);
    assert_int_equal(balance_pick(&f.tr, 0, ip, 4, 1u << 0, 6000), 3);
    assert_int_equal(balance_pick(&f.tr, 0, ip, 4, 0, 6000), 0);
    /* Nothing at all: RT_NONE. */
    atomic_store(&f.slots[3].hc_down, 1);
    assert_int_equal(balance_pick(&f.tr, 0, ip, 4, 1u << 0, 6000), RT_NONE);
    balance_release(&f.tr);
}

/* Active-check state counts only where the upstream has checks. */
static void test_pick_ignores_stale_check_state(void **state)
{
    (void)state;
    static fake_t f;
    fake_init(&f, RT_BAL_LEAST_CONN, false);
    atomic_store(&f.slots[0].hc_down, 1);
    atomic_store(&f.slots[1].inflight, 3);
    atomic_store(&f.slots[2].inflight, 1);
    const uint8_t ip[4] = {192, 0, 2, 1};
    assert_int_equal(balance_pick(&f.tr, 0, ip, 4, 0, 1), 0);
    atomic_store(&f.slots[0].inflight, 2);
    assert_int_equal(balance_pick(&f.tr, 0, ip, 4, 0, 1), 2);
    balance_release(&f.tr);
}

static void test_pick_ip_hash(void **state)
{
    (void)state;
    static fake_t f;
    fake_init(&f, RT_BAL_IP_HASH, false);
    unsigned got[4] = {0}, moved = 0;
    for (uint32_t i = 0; i < 30000; i++) {
        uint8_t ip[4] = {10, (uint8_t)(i >> 16), (uint8_t)(i >> 8), (uint8_t)i};
        uint32_t s = balance_pick(&f.tr, 0, ip, 4, 0, 1);
        assert_int_equal(balance_pick(&f.tr, 0, ip, 4, 0, 1), s); /* sticky */
        got[s]++;
        atomic_store(&f.slots[2].down_until, 100);
        uint32_t t2 = balance_pick(&f.tr, 0, ip, 4, 0, 1);
        atomic_store(&f.slots[2].down_until, 0);
        if (s != 2)
            assert_int_equal(t2, s);
        moved += t2 != s;
    }
    assert_int_equal(got[3], 0);
    for (int i = 0; i < 3; i++)
        assert_true(got[i] > 8000 && got[i] < 12000);
    assert_int_equal(moved, got[2]);
    balance_release(&f.tr);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_swrr_sequence),
        cmocka_unit_test(test_swrr_exact_shares),
        cmocka_unit_test(test_swrr_subset),
        cmocka_unit_test(test_least_conn),
        cmocka_unit_test(test_random_two),
        cmocka_unit_test(test_ring_weights),
        cmocka_unit_test(test_ring_stability),
        cmocka_unit_test(test_ring_skip_down),
        cmocka_unit_test(test_pick_rules),
        cmocka_unit_test(test_pick_ignores_stale_check_state),
        cmocka_unit_test(test_pick_ip_hash),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

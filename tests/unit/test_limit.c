/*
 * test_limit.c - the rate-limit bucket arithmetic (http/limit.h): GCRA with
 * burst and nodelay against nginx's limit_req outcomes, and Retry-After.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "http/limit.h"

#define MS 1000000ull
#define SEC 1000000000ull

/* n requests at the same instant: how many pass, delayed or not. */
static int burst_at_once(uint64_t interval, uint32_t burst, bool nodelay, int n, uint64_t *waits)
{
    uint64_t tat = 0, now = 100 * SEC, next, wait;
    int passed = 0;
    for (int i = 0; i < n; i++) {
        enum rl_verdict v = rl_gcra(tat, now, interval, burst, nodelay, &next, &wait);
        if (v == RL_REFUSE) {
            assert_int_equal(next, tat); /* a refusal takes nothing */
            continue;
        }
        tat = next;
        if (waits)
            waits[passed] = wait;
        passed++;
    }
    return passed;
}

static void test_burst_plus_one_pass(void **state)
{
    (void)state;
    assert_int_equal(burst_at_once(100 * MS, 0, true, 10, NULL), 1);
    assert_int_equal(burst_at_once(100 * MS, 5, true, 10, NULL), 6);
    assert_int_equal(burst_at_once(100 * MS, 5, false, 10, NULL), 6);
    assert_int_equal(burst_at_once(60 * SEC, 20, true, 100, NULL), 21);
}

static void test_delays_follow_the_rate(void **state)
{
    (void)state;
    uint64_t waits[8];
    assert_int_equal(burst_at_once(200 * MS, 4, false, 8, waits), 5);
    for (int k = 0; k < 5; k++)
        assert_int_equal(waits[k], (uint64_t)k * 200 * MS); /* the k-th waits k intervals */
    assert_int_equal(burst_at_once(200 * MS, 4, true, 8, waits), 5);
    for (int k = 0; k < 5; k++)
        assert_int_equal(waits[k], 0); /* nodelay: all at once */
}

static void test_verdicts(void **state)
{
    (void)state;
    uint64_t next, wait, now = 50 * SEC, T = 100 * MS;
    /* an empty bucket (tat in the past) */
    assert_int_equal(rl_gcra(now - 5 * SEC, now, T, 0, false, &next, &wait), RL_PASS);
    assert_int_equal(next, now + T);
    assert_int_equal(wait, 0);
    /* one request ahead, burst 1, without nodelay: waits one interval */
    assert_int_equal(rl_gcra(now + T, now, T, 1, false, &next, &wait), RL_DELAY);
    assert_int_equal(wait, T);
    assert_int_equal(next, now + 2 * T);
    /* the same with nodelay passes at once but still takes its interval */
    assert_int_equal(rl_gcra(now + T, now, T, 1, true, &next, &wait), RL_PASS);
    assert_int_equal(next, now + 2 * T);
    /* beyond the burst: refused, told how long until it fits */
    assert_int_equal(rl_gcra(now + 3 * T + 7, now, T, 2, true, &next, &wait), RL_REFUSE);
    assert_int_equal(wait, T + 7);
    assert_int_equal(next, now + 3 * T + 7);
}

static void test_steady_rate_never_refused(void **state)
{
    (void)state;
    /* exactly at the rate, burst 0: every request passes, none waits */
    uint64_t tat = 0, next, wait, T = 100 * MS;
    for (int i = 0; i < 1000; i++) {
        assert_int_equal(rl_gcra(tat, SEC + (uint64_t)i * T, T, 0, true, &next, &wait), RL_PASS);
        tat = next;
    }
    /* 1 ns too early is refused, by 1 ns */
    assert_int_equal(rl_gcra(tat, tat - 1, T, 0, true, &next, &wait), RL_REFUSE);
    assert_int_equal(wait, 1);
}

static void test_drains_over_time(void **state)
{
    (void)state;
    uint64_t tat = 0, next, wait, T = SEC, now = 10 * SEC;
    for (int i = 0; i < 4; i++) { /* burst 3: four fill it */
        assert_int_not_equal(rl_gcra(tat, now, T, 3, true, &next, &wait), RL_REFUSE);
        tat = next;
    }
    assert_int_equal(rl_gcra(tat, now, T, 3, true, &next, &wait), RL_REFUSE);
    assert_int_equal(wait, T);
    /* two seconds later two more fit */
    now += 2 * SEC;
    for (int i = 0; i < 2; i++) {
        assert_int_equal(rl_gcra(tat, now, T, 3, true, &next, &wait), RL_PASS);
        tat = next;
    }
    assert_int_equal(rl_gcra(tat, now, T, 3, true, &next, &wait), RL_REFUSE);
}

static void test_extremes_do_not_overflow(void **state)
{
    (void)state;
    uint64_t next, wait, T = 60 * SEC; /* 1r/m */
    uint64_t now = UINT64_C(1) << 62;
    assert_int_equal(rl_gcra(0, now, T, 1000000, false, &next, &wait), RL_PASS);
    assert_int_equal(next, now + T);
    assert_int_equal(rl_gcra(now + 1000000 * T, now, T, 1000000, false, &next, &wait), RL_DELAY);
    assert_int_equal(wait, 1000000 * T);
    assert_int_equal(rl_gcra(0, now, 1000, 0, true, &next, &wait), RL_PASS); /* 1000000r/s */
}

static void test_retry_after(void **state)
{
    (void)state;
    assert_int_equal(rl_retry_after(0), 1);
    assert_int_equal(rl_retry_after(1), 1);
    assert_int_equal(rl_retry_after(SEC), 1);
    assert_int_equal(rl_retry_after(SEC + 1), 2);
    assert_int_equal(rl_retry_after(60 * SEC - 5), 60);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst_plus_one_pass), cmocka_unit_test(test_delays_follow_the_rate),
        cmocka_unit_test(test_verdicts),           cmocka_unit_test(test_steady_rate_never_refused),
        cmocka_unit_test(test_drains_over_time),   cmocka_unit_test(test_extremes_do_not_overflow),
        cmocka_unit_test(test_retry_after),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

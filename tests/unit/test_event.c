/*
 * test_event.c - the timer heap fires timers in deadline order, honours
 * stop and re-arm from inside callbacks, never fires a timer re-armed later
 * before its new time (nor one re-armed earlier after it), and fd events
 * reach their handler.
 */
#include "../../proxyd/core/event.c"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <cmocka.h>

#define N 500

static ev_timer_t timers[N];
static uint64_t fired_at[N];
static int order[N], nfired, armed;

static void on_fire(ev_loop_t *l, ev_timer_t *t)
{
    int i = (int)(t - timers);
    fired_at[i] = ev_now(l);
    order[nfired++] = i;
    if (nfired == armed)
        ev_stop(l);
}

static void test_heap_order(void **state)
{
    (void)state;
    ev_loop_t *l = ev_new();
    assert_non_null(l);
    unsigned seed = 7;
    for (int i = 0; i < N; i++) {
        seed = seed * 1103515245 + 12345;
        ev_timer_start(l, &timers[i], 1 + (seed >> 16) % 200, on_fire);
    }
    /* Stop every third, re-arm every fifth further out. */
    for (int i = 0; i < N; i += 3)
        ev_timer_stop(l, &timers[i]);
    for (int i = 1; i < N; i += 5)
        ev_timer_start(l, &timers[i], 300, on_fire);
    armed = 0;
    for (int i = 0; i < N; i++)
        armed += ev_timer_armed(&timers[i]);
    nfired = 0;
    ev_run(l); /* stops when the last armed timer fires */
    assert_int_equal(nfired, armed);
    assert_int_equal(l->nheap, 0);
    for (int k = 1; k < nfired; k++)
        assert_true(timers[order[k - 1]].deadline == 0 && fired_at[order[k - 1]] <= fired_at[order[k]]);
    for (int i = 0; i < N; i += 3)
        if (i % 5 != 1) /* stopped and not re-armed: must never fire */
            assert_int_equal(fired_at[i], 0);
    ev_free(l);
}

/* A re-arm to a later time only moves the due time (O(1)); the timer must
 * still fire then, not at its old heap place; one re-armed earlier moves up. */
static void test_rearm(void **state)
{
    (void)state;
    ev_loop_t *l = ev_new();
    assert_non_null(l);
    memset(timers, 0, sizeof(timers));
    memset(fired_at, 0, sizeof(fired_at));
    uint64_t t0 = ev_now(l);
    ev_timer_start(l, &timers[0], 20, on_fire);  /* pushed on to 120 below */
    ev_timer_start(l, &timers[1], 60, on_fire);
    ev_timer_start(l, &timers[2], 400, on_fire); /* pulled in to 10 below */
    ev_timer_start(l, &timers[3], 30, on_fire);  /* pushed on twice: 80, then 90 */
    ev_timer_start(l, &timers[0], 120, on_fire);
    ev_timer_start(l, &timers[2], 10, on_fire);
    ev_timer_start(l, &timers[3], 80, on_fire);
    ev_timer_start(l, &timers[3], 90, on_fire);
    armed = 4;
    nfired = 0;
    ev_run(l);
    assert_int_equal(nfired, 4);
    assert_int_equal(l->nheap, 0);
    int want[] = {2, 1, 3, 0};
    uint64_t due[] = {120, 60, 10, 90};
    for (int k = 0; k < 4; k++)
        assert_int_equal(order[k], want[k]);
    for (int i = 0; i < 4; i++)
        assert_true(fired_at[i] >= t0 + due[i]);
    ev_free(l);
}

static int got;
static void on_read(ev_loop_t *l, ev_io_t *io, uint32_t revents)
{
    char b[8];
    got += (revents & EV_READ) && read(io->fd, b, sizeof(b)) > 0;
    ev_stop(l);
}

static void test_io(void **state)
{
    (void)state;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    ev_loop_t *l = ev_new();
    ev_io_t io;
    assert_int_equal(ev_add(l, &io, sv[0], EV_READ, on_read), 0);
    assert_int_equal(write(sv[1], "x", 1), 1);
    ev_run(l);
    assert_int_equal(got, 1);
    ev_del(l, &io);
    close(sv[0]);
    close(sv[1]);
    ev_free(l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_heap_order), cmocka_unit_test(test_rearm),
                                       cmocka_unit_test(test_io)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}

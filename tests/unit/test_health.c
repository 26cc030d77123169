/*
 * test_health.c - upstream server state (upstream/health.c): passive
 * failure accounting (max_fails within fail_timeout marks a server down
 * for fail_timeout; never for max_fails 0 or a pool of one), the
 * usable/down predicates around the deadline, requests in flight, slots of
 * the shared region kept across a reload and recycled when unused, and the
 * active checker run on the test's own loop against a scripted backend
 * (fall, rise, the request it sends, connect failures).
 */
#include "proxyd_fixture.h"

/* Servers: 0 and 1 share upstream app (0: max_fails 2 within 1s; 1: max_fails
 * 1 within 500ms), 2 is alone in solo, 3 and 4 are in lax (3: max_fails 0). */
static const char *PASSIVE =
    "site: h\n"
    "hosts: [h.example]\n"
    "upstreams:\n"
    "  app:\n"
    "    servers:\n"
    "      - {address: \"127.0.0.1:9001\", max_fails: 2, fail_timeout: 1s}\n"
    "      - {address: \"127.0.0.1:9002\", max_fails: 1, fail_timeout: 500ms}\n"
    "  solo:\n"
    "    servers: [{address: \"127.0.0.1:9003\", max_fails: 1}]\n"
    "  lax:\n"
    "    servers: [{address: \"127.0.0.1:9004\", max_fails: 0}, \"127.0.0.1:9005\"]\n"
    "routes:\n"
    "  - match: {path_prefix: /a/}\n"
    "    upstream: app\n"
    "  - match: {path_prefix: /s/}\n"
    "    upstream: solo\n"
    "  - match: {path_prefix: /}\n"
    "    upstream: lax\n";

#define T0 1000000u /* a monotonic "now" in ms */

static int setup(void **state)
{
    tref_t *t = fx_table(NULL, PASSIVE);
    W->table = t;
    *state = t;
    fx_log_clear();
    return 0;
}

static int teardown(void **state)
{
    tref_t *t = *state;
    assert_int_equal(t->refs, 1);
    tref_put(t);
    W->table = NULL;
    return 0;
}

/* The index of the server at address in t (the compiler orders servers by upstream). */
static uint32_t server_at(const tref_t *t, const char *address)
{
    for (uint32_t i = 0; i < t->t.nservers; i++)
        if (strcmp(rt_cstr(&t->t, t->t.servers[i].sa.addr), address) == 0)
            return i;
    fail_msg("no server %s", address);
    return RT_NONE;
}

static void test_max_fails_within_fail_timeout(void **state)
{
    tref_t *t = *state;
    uint32_t a = server_at(t, "127.0.0.1:9001");
    health_slot_t *s = health_slot_of(t, a);
    assert_false(health_passive_down(s, T0));
    assert_false(health_failed(t, a, T0, "connect failed: connection refused"));
    assert_false(health_passive_down(s, T0 + 1));
    assert_true(health_usable(s, false, T0 + 1));
    assert_true(health_failed(t, a, T0 + 400, "read timed out after 60000ms"));
    assert_int_equal(atomic_load(&s->failures), 2);
    assert_int_equal(atomic_load(&s->downs), 1);
    /* down for fail_timeout from the failure that crossed the limit */
    assert_int_equal(atomic_load(&s->down_until), T0 + 400 + 1000);
    assert_true(fx_log_has("upstream 127.0.0.1:9001 (site h, upstream app): down for 1s after 2 failures within 1s "
                           "(last: read timed out after 60000ms)"));
    /* the other server of the pool is not touched */
    assert_true(health_usable(health_slot_of(t, server_at(t, "127.0.0.1:9002")), false, T0 + 400));
}

static void test_failures_outside_the_window(void **state)
{
    tref_t *t = *state;
    uint32_t a = server_at(t, "127.0.0.1:9001");
    health_slot_t *s = health_slot_of(t, a);
    assert_false(health_failed(t, a, T0, "x"));
    /* fail_timeout later the window starts again: this is its first failure */
    assert_false(health_failed(t, a, T0 + 1000, "x"));
    assert_false(health_passive_down(s, T0 + 1000));
    assert_int_equal(atomic_load(&s->down_until), 0);
    assert_true(health_failed(t, a, T0 + 1999, "x"));
    assert_int_equal(atomic_load(&s->down_until), T0 + 1999 + 1000);
    assert_int_equal(atomic_load(&s->failures), 3);
}

static void test_usable_around_the_deadline(void **state)
{
    tref_t *t = *state;
    uint32_t b = server_at(t, "127.0.0.1:9002");
    health_slot_t *s = health_slot_of(t, b);
    assert_true(health_failed(t, b, T0, "x")); /* max_fails 1 */
    assert_true(fx_log_has("down for 500ms after 1 failure within 500ms (last: x)"));
    assert_true(health_passive_down(s, T0));
    assert_true(health_passive_down(s, T0 + 499));
    assert_false(health_usable(s, false, T0 + 499));
    assert_false(health_usable(s, true, T0 + 499));
    assert_false(health_passive_down(s, T0 + 500));
    assert_true(health_usable(s, false, T0 + 500));
    assert_true(health_usable(s, true, T0 + 500));

    /* the active verdict counts only where the upstream has checks */
    atomic_store(&s->hc_down, 1);
    assert_false(health_usable(s, true, T0 + 500));
    assert_true(health_usable(s, false, T0 + 500));
    atomic_store(&s->hc_down, 0);
}

/* Marked again while down: the deadline moves on, but it is no news. */
static void test_failed_while_down(void **state)
{
    tref_t *t = *state;
    uint32_t b = server_at(t, "127.0.0.1:9002");
    health_slot_t *s = health_slot_of(t, b);
    assert_true(health_failed(t, b, T0, "x"));
    assert_false(health_failed(t, b, T0 + 100, "y"));
    assert_int_equal(atomic_load(&s->down_until), T0 + 100 + 500);
    assert_int_equal(atomic_load(&s->downs), 1);
    /* down again after it came back: news again */
    assert_true(health_failed(t, b, T0 + 700, "z"));
    assert_int_equal(atomic_load(&s->downs), 2);
    assert_int_equal(atomic_load(&s->failures), 3);
}

static void test_never_down(void **state)
{
    tref_t *t = *state;
    uint32_t solo = server_at(t, "127.0.0.1:9003"), lax = server_at(t, "127.0.0.1:9004");
    for (int i = 0; i < 5; i++) {
        assert_false(health_failed(t, solo, T0 + i, "x")); /* a pool of one: nowhere else to go */
        assert_false(health_failed(t, lax, T0 + i, "x"));  /* max_fails 0 */
    }
    assert_true(health_usable(health_slot_of(t, solo), false, T0 + 5));
    assert_true(health_usable(health_slot_of(t, lax), false, T0 + 5));
    assert_int_equal(atomic_load(&health_slot_of(t, solo)->failures), 5);
    assert_int_equal(atomic_load(&health_slot_of(t, lax)->failures), 5);
    assert_int_equal(atomic_load(&health_slot_of(t, lax)->downs), 0);
    assert_false(fx_log_has("down for"));
}

static void test_inflight(void **state)
{
    tref_t *t = *state;
    health_slot_t *s = health_slot_of(t, 0);
    assert_int_equal(health_load(s), 0);
    health_begin(s);
    health_begin(s);
    assert_int_equal(health_load(s), 2);
    assert_int_equal(atomic_load(&s->requests), 2);
    health_end(s);
    assert_int_equal(health_load(s), 1);
    health_end(s);
    assert_int_equal(health_load(s), 0);
    assert_int_equal(atomic_load(&s->requests), 2); /* attempts, not in flight */
}

static void test_error_names(void **state)
{
    (void)state;
    assert_string_equal(health_error_name(HC_OK), "");
    assert_string_equal(health_error_name(HC_ERR_CONNECT), "connect failed");
    assert_string_equal(health_error_name(HC_ERR_STATUS), "unexpected status");
    assert_string_equal(health_error_name(HC_ERR_RESPONSE), "invalid response");
    assert_string_equal(health_error_name(99), "?");
}

/* ---- the shared region (the test process is its "master") ---------------------------- */

static const char *SHARED_A =
    "site: r\nhosts: [r.example]\n"
    "upstreams:\n  app:\n    servers: [\"127.0.0.1:9101\", \"127.0.0.1:9102\"]\n"
    "routes:\n  - match: {path_prefix: /}\n    upstream: app\n";
/* the same site a reload later: 9102 gone, 9103 new, 9101 now max_fails 0 */
static const char *SHARED_B =
    "site: r\nhosts: [r.example]\n"
    "upstreams:\n  app:\n    servers: [{address: \"127.0.0.1:9101\", max_fails: 0}, \"127.0.0.1:9103\"]\n"
    "routes:\n  - match: {path_prefix: /}\n    upstream: app\n";

static void test_region_slots_across_reloads(void **state)
{
    (void)state;
    assert_int_equal(health_init(), 0);
    tref_t *a = fx_table(NULL, SHARED_A);
    health_slot_t *s9101 = health_slot_of(a, server_at(a, "127.0.0.1:9101"));
    health_slot_t *s9102 = health_slot_of(a, server_at(a, "127.0.0.1:9102"));
    health_slot_t *own = ((health_table_t *)a->mod[MOD_HEALTH])->own;
    /* shared slots, not the table's private ones */
    assert_true(s9101 < own || s9101 >= own + a->t.nservers);
    assert_ptr_not_equal(s9101, s9102);
    health_begin(s9101);
    health_end(s9101);
    assert_true(health_failed(a, server_at(a, "127.0.0.1:9101"), T0, "x"));
    assert_true(health_passive_down(s9101, T0 + 1));

    /* a reload that keeps 9101 keeps its slot, counters and all; the
     * passive mark goes, as max_fails 0 no longer asks for it */
    tref_t *b = fx_table(NULL, SHARED_B);
    assert_ptr_equal(health_slot_of(b, server_at(b, "127.0.0.1:9101")), s9101);
    assert_int_equal(atomic_load(&s9101->requests), 1);
    assert_int_equal(atomic_load(&s9101->failures), 1);
    assert_false(health_passive_down(s9101, T0 + 1));
    health_slot_t *s9103 = health_slot_of(b, server_at(b, "127.0.0.1:9103"));
    assert_ptr_not_equal(s9103, s9102);
    /* 9102 is unused by the latest table, but the one before still had it */
    assert_true(atomic_load(&s9102->key) > 1);

    /* two reloads without 9102: its slot is recycled */
    tref_t *c = fx_table(NULL, SHARED_B);
    assert_int_equal(atomic_load(&s9102->key), 1);
    assert_true(atomic_load(&s9101->key) > 1);
    assert_ptr_equal(health_slot_of(c, server_at(c, "127.0.0.1:9103")), s9103);
    tref_put(a);
    tref_put(b);
    tref_put(c);
}

/* ---- the active checker -------------------------------------------------------------------- */

static health_slot_t *hc_slot;
static uint32_t hc_want;

static bool hc_checks_reach(void *arg)
{
    (void)arg;
    return atomic_load(&hc_slot->hc_checks) >= hc_want;
}

static void run_checks(uint32_t more)
{
    hc_want = atomic_load(&hc_slot->hc_checks) + more;
    assert_true(fx_run(hc_checks_reach, NULL, 5000));
}

static void test_active_checks(void **state)
{
    (void)state;
    fx_backend_t *be = fx_backend_new("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    be->close_after = true;
    int refusing;
    char site[1024];
    snprintf(site, sizeof(site),
             "site: c\nhosts: [\"*.c.example\", c.example]\n"
             "upstreams:\n  app:\n"
             "    servers: [\"127.0.0.1:%u\", \"127.0.0.1:%u\"]\n"
             "    health_check: {path: /healthz, interval: 20ms, timeout: 500ms, rise: 2, fall: 2}\n"
             "routes:\n  - match: {path_prefix: /}\n    upstream: app\n",
             be->port, fx_refusing_port(&refusing));
    tref_t *t = fx_table(NULL, site);
    W->table = t;
    health_slot_t *dead = health_slot_of(t, 1);
    hc_slot = health_slot_of(t, 0);
    health_checker_start(W->loop, t);

    run_checks(1);
    assert_int_equal(atomic_load(&hc_slot->hc_last_status), 200);
    assert_int_equal(atomic_load(&hc_slot->hc_last_error), HC_OK);
    assert_int_equal(atomic_load(&hc_slot->hc_down), 0);
    assert_true(atomic_load(&hc_slot->hc_last_ms) > 0);
    /* the request: the path, the site's first exact host name, and a close */
    assert_non_null(strstr(be->request, "GET /healthz HTTP/1.1\r\n"));
    assert_non_null(strstr(be->request, "\r\nHost: c.example\r\n"));
    assert_non_null(strstr(be->request, "\r\nUser-Agent: proxyd-health-check\r\n"));
    assert_non_null(strstr(be->request, "\r\nConnection: close\r\n"));

    /* a wrong status: down after `fall` consecutive failures, not before */
    be->reply = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";
    run_checks(1);
    if (atomic_load(&hc_slot->hc_last_status) == 200) /* a check in flight as the reply changed */
        run_checks(1);
    assert_int_equal(atomic_load(&hc_slot->hc_last_status), 503);
    assert_int_equal(atomic_load(&hc_slot->hc_last_error), HC_ERR_STATUS);
    assert_int_equal(atomic_load(&hc_slot->hc_fails), 1);
    assert_int_equal(atomic_load(&hc_slot->hc_down), 0);
    run_checks(1);
    assert_int_equal(atomic_load(&hc_slot->hc_down), 1);
    assert_int_equal(atomic_load(&hc_slot->downs), 1);
    assert_false(health_usable(hc_slot, true, ev_now(W->loop)));
    assert_true(fx_log_has("down after 2 failed health checks (last: unexpected status 503)"));

    /* back after `rise` good checks, which also clear a passive mark */
    atomic_store(&hc_slot->down_until, ev_now(W->loop) + 3600000);
    be->reply = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    run_checks(1);
    if (atomic_load(&hc_slot->hc_last_status) == 503)
        run_checks(1);
    assert_int_equal(atomic_load(&hc_slot->hc_oks), 1);
    assert_int_equal(atomic_load(&hc_slot->hc_down), 1);
    run_checks(1);
    assert_int_equal(atomic_load(&hc_slot->hc_down), 0);
    assert_int_equal(atomic_load(&hc_slot->down_until), 0);
    assert_true(health_usable(hc_slot, true, ev_now(W->loop)));
    assert_true(fx_log_has("up after 2 good health checks"));

    /* the server nobody listens on: connect failures */
    assert_true(atomic_load(&dead->hc_checks) >= 2);
    assert_int_equal(atomic_load(&dead->hc_last_error), HC_ERR_CONNECT);
    assert_int_equal(atomic_load(&dead->hc_last_status), 0);
    assert_int_equal(atomic_load(&dead->hc_down), 1);
    assert_true(fx_log_has("(last: connect failed)"));

    /* a reload follows the new table; stop lets go of it */
    tref_t *t2 = fx_table(NULL, site);
    health_checker_switch(t2);
    assert_int_equal(t->refs, 1);
    assert_int_equal(t2->refs, 2);
    health_checker_stop();
    assert_int_equal(t2->refs, 1);
    uint64_t checks = atomic_load(&hc_slot->hc_checks);
    fx_run_for(60);
    assert_int_equal(atomic_load(&hc_slot->hc_checks), checks);
    tref_put(t2);
    tref_put(t);
    W->table = NULL;
    fx_backend_free(be);
    close(refusing);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_max_fails_within_fail_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failures_outside_the_window, setup, teardown),
        cmocka_unit_test_setup_teardown(test_usable_around_the_deadline, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_while_down, setup, teardown),
        cmocka_unit_test_setup_teardown(test_never_down, setup, teardown),
        cmocka_unit_test_setup_teardown(test_inflight, setup, teardown),
        cmocka_unit_test(test_error_names),
        cmocka_unit_test(test_active_checks),
        /* last: from here on tables bind slots of the shared region */
        cmocka_unit_test(test_region_slots_across_reloads),
    };
    return cmocka_run_group_tests(tests, fx_group_setup, fx_group_teardown);
}

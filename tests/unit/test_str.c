/*
 * test_str.c - the shared string module: hex digits and ASCII case against
 * the C library, JSON escaping of every byte value, the fixed buffer's
 * overflow (recorded, sticky, never a byte past cap), the growing buffer,
 * and decimal appends against "%llu".
 */
#include "../../common/util.c"
#include "../../common/str.c"

#include <ctype.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#define CANARY 0x5a

/* A fixed buffer of cap bytes inside a larger array whose other bytes are
 * canaries, so a write past cap (or before p) shows. */
typedef struct {
    char mem[16 + 256 + 16];
    str_buf_t b;
} fenced_t;

static void fence(fenced_t *f, size_t cap)
{
    assert_true(cap <= 256);
    memset(f->mem, CANARY, sizeof(f->mem));
    f->b = str_buf_fixed(f->mem + 16, cap);
}

static void assert_fence_intact(const fenced_t *f, size_t cap)
{
    for (size_t i = 0; i < 16; i++)
        assert_int_equal((unsigned char)f->mem[i], CANARY);
    for (size_t i = 16 + cap; i < sizeof(f->mem); i++)
        assert_int_equal((unsigned char)f->mem[i], CANARY);
}

/* ---- hex and case ------------------------------------------------------------ */

static void test_hexval(void **state)
{
    (void)state;
    for (int c = 0; c < 256; c++) {
        int want = -1;
        if (isxdigit(c)) {
            char s[2] = {(char)c, 0};
            want = (int)strtol(s, NULL, 16);
        }
        assert_int_equal(str_hexval(c), want);
    }
    assert_int_equal(str_hexval(-1), -1); /* EOF */
    assert_int_equal(str_hexval('F'), 15);
    assert_int_equal(str_hexval('f'), 15);
    assert_int_equal(str_hexval('g'), -1);
}

static void test_lower(void **state)
{
    (void)state;
    for (int c = 0; c < 256; c++) /* the C locale: only A-Z change */
        assert_int_equal(str_lower_char(c), tolower(c));
    char s[] = "MiXeD-Case.EXAMPLE\0ZZ\xc3\x84\xff@[`{";
    size_t n = sizeof(s) - 1;
    str_lower(s, n - 4); /* the last four bytes are outside the slice */
    assert_memory_equal(s, "mixed-case.example\0zz\xc3\x84\xff@[`{", n);
    str_lower(s + n - 4, 4);
    assert_memory_equal(s + n - 4, "@[`{", 4); /* the neighbours of A-Z stay */
    str_lower(NULL, 0);
}

/* ---- JSON escaping ------------------------------------------------------------- */

static void test_json_every_byte(void **state)
{
    (void)state;
    for (int c = 0; c < 256; c++) {
        char in = (char)c, want[8];
        if (c == '"' || c == '\\')
            snprintf(want, sizeof(want), "\\%c", c);
        else if (c < 0x20 || c == 0x7f)
            snprintf(want, sizeof(want), "\\u%04x", c);
        else
            want[0] = (char)c, want[1] = '\0';
        str_buf_t b = {0};
        str_json_escape(&b, &in, 1, SIZE_MAX);
        assert_int_equal(b.len, strlen(want));
        assert_memory_equal(b.p, want, b.len);
        assert_false(b.overflow);
        str_buf_free(&b);
    }
}

static void test_json_slice(void **state)
{
    (void)state;
    static const char in[] = "a\0\"\\\n\t\x1f\x7f\xc3\xa9/z"; /* NUL inside: a slice, not a C string */
    static const char want[] = "a\\u0000\\\"\\\\\\u000a\\u0009\\u001f\\u007f\xc3\xa9/z";
    str_buf_t b = {0};
    STR_APPEND_LIT(&b, "[");
    str_json_escape(&b, in, sizeof(in) - 1, SIZE_MAX);
    STR_APPEND_LIT(&b, "]");
    assert_int_equal(b.len, sizeof(want) - 1 + 2);
    assert_memory_equal(b.p, "[", 1);
    assert_memory_equal(b.p + 1, want, sizeof(want) - 1);
    assert_memory_equal(b.p + b.len - 1, "]", 1);
    str_json_escape(&b, NULL, 0, SIZE_MAX); /* nothing, without touching p */
    assert_int_equal(b.len, sizeof(want) - 1 + 2);
    str_buf_free(&b);

    /* A large value on a growing buffer: the worst case is reserved at once. */
    char ctl[10000];
    memset(ctl, 0x01, sizeof(ctl));
    str_json_escape(&b, ctl, sizeof(ctl), SIZE_MAX);
    assert_int_equal(b.len, 6 * sizeof(ctl));
    assert_memory_equal(b.p + b.len - 6, "\\u0001", 6);
    str_buf_free(&b);
}

/* max bounds what is written, whole escapes only, stopping while fewer than
 * 6 bytes of it are left (the access log's field caps). */
static void test_json_max(void **state)
{
    (void)state;
    char plain[300];
    memset(plain, 'x', sizeof(plain));
    str_buf_t b = {0};
    str_json_escape(&b, plain, sizeof(plain), 255);
    assert_int_equal(b.len, 250);
    assert_false(b.overflow);
    str_buf_free(&b);

    char ctl[100];
    memset(ctl, '\n', sizeof(ctl));
    str_json_escape(&b, ctl, sizeof(ctl), 20);
    assert_int_equal(b.len, 18); /* three escapes; a fourth would pass 20 */
    assert_false(b.overflow);
    str_buf_free(&b);

    str_json_escape(&b, "abc", 3, 5); /* fewer than 6 allowed: nothing */
    assert_int_equal(b.len, 0);
    str_buf_free(&b);

    fenced_t f;
    fence(&f, 64);
    str_json_escape(&f.b, plain, 10, 255); /* fits whole: max and cap both spare */
    assert_int_equal(f.b.len, 10);
    assert_false(f.b.overflow);
    str_json_escape(&f.b, plain, 40, 30); /* cut by max (room 54): no overflow */
    assert_int_equal(f.b.len, 10 + 25);
    assert_false(f.b.overflow);
    str_json_escape(&f.b, ctl, sizeof(ctl), 255); /* cut by cap: overflow */
    assert_true(f.b.overflow);
    assert_true(f.b.len <= 64);
    assert_int_equal((f.b.len - 35) % 6, 0); /* whole escapes only */
    assert_fence_intact(&f, 64);
}

/* ---- the fixed buffer -------------------------------------------------------------- */

static void test_fixed_overflow(void **state)
{
    (void)state;
    fenced_t f;
    fence(&f, 16);
    STR_APPEND_LIT(&f.b, "GET ");
    str_append_str(&f.b, "/index");
    str_append(&f.b, "", 0);
    assert_int_equal(f.b.len, 10);
    assert_false(f.b.overflow);
    str_append(&f.b, " HTTP/1.1", 9); /* 19 > 16: refused whole */
    assert_true(f.b.overflow);
    assert_int_equal(f.b.len, 10);
    assert_memory_equal(f.b.p, "GET /index", 10);
    str_append(&f.b, "!", 1); /* sticky: a shorter piece does not land after the gap */
    str_append_u64(&f.b, 7);
    str_printf(&f.b, "%d", 1);
    str_json_escape(&f.b, "a", 1, SIZE_MAX);
    assert_int_equal(f.b.len, 10);
    assert_true(f.b.overflow);
    assert_false(str_reserve(&f.b, 1));
    str_buf_free(&f.b); /* caller memory: left alone */
    assert_int_equal(f.b.len, 10);
    assert_memory_equal(f.mem + 16, "GET /index", 10);
    assert_fence_intact(&f, 16);

    fence(&f, 8); /* filling exactly is no overflow */
    str_append(&f.b, "12345678", 8);
    assert_int_equal(f.b.len, 8);
    assert_false(f.b.overflow);
    str_append(&f.b, "", 0);
    assert_false(f.b.overflow);
    str_append(&f.b, "9", 1);
    assert_true(f.b.overflow);
    assert_fence_intact(&f, 8);

    fence(&f, 0); /* no room at all */
    str_append(&f.b, "x", 1);
    assert_true(f.b.overflow);
    assert_int_equal(f.b.len, 0);
    assert_fence_intact(&f, 0);

    fence(&f, 32); /* str_refuse: a piece over the caller's own limit */
    STR_APPEND_LIT(&f.b, "abc");
    str_refuse(&f.b);
    STR_APPEND_LIT(&f.b, "d");
    assert_true(f.b.overflow);
    assert_int_equal(f.b.len, 3);
    assert_fence_intact(&f, 32);
}

static void test_fixed_printf(void **state)
{
    (void)state;
    fenced_t f;
    fence(&f, 12);
    str_printf(&f.b, "%s=%d", "ab", 42); /* 5 bytes and the NUL */
    assert_int_equal(f.b.len, 5);
    assert_string_equal(f.b.p, "ab=42");
    str_printf(&f.b, "%s", "1234567"); /* 7 bytes need 8 with the NUL; 7 left */
    assert_true(f.b.overflow);
    assert_int_equal(f.b.len, 5);
    assert_fence_intact(&f, 12);
}

/* Every append at every starting length of a small fixed buffer: what fits is
 * there, what does not is refused whole, nothing lands past cap. */
static void test_fixed_sweep(void **state)
{
    (void)state;
    static const char piece[] = "0123456789abcdefghij";
    for (size_t cap = 0; cap <= 24; cap++)
        for (size_t pre = 0; pre <= cap; pre++)
            for (size_t n = 0; n <= 20; n++) {
                fenced_t f;
                fence(&f, cap);
                str_append(&f.b, piece, pre > 20 ? 20 : pre);
                size_t len = f.b.len;
                str_append(&f.b, piece, n);
                if (len + n <= cap) {
                    assert_false(f.b.overflow);
                    assert_int_equal(f.b.len, len + n);
                    assert_memory_equal(f.b.p + len, piece, n);
                } else {
                    assert_true(f.b.overflow);
                    assert_int_equal(f.b.len, len);
                }
                assert_fence_intact(&f, cap);
            }
}

/* ---- the growing buffer ------------------------------------------------------------- */

static void test_growing(void **state)
{
    (void)state;
    str_buf_t b = {0};
    assert_true(str_reserve(&b, 0));
    for (int i = 0; i < 1000; i++) {
        str_printf(&b, "%d,", i);
        assert_int_equal(b.p[b.len], '\0'); /* printf leaves a NUL after the text */
    }
    STR_APPEND_LIT(&b, "end");
    assert_false(b.overflow);
    assert_false(b.fixed);
    assert_true(b.len <= b.cap);
    assert_memory_equal(b.p, "0,1,2,", 6);
    assert_memory_equal(b.p + b.len - 7, "999,end", 7);
    size_t len = b.len;
    assert_true(str_reserve(&b, 1 << 20));
    assert_true(b.cap - b.len >= 1 << 20);
    assert_int_equal(b.len, len);
    char big[5000];
    memset(big, 'q', sizeof(big));
    str_append(&b, big, sizeof(big));
    assert_int_equal(b.len, len + sizeof(big));
    str_buf_free(&b);
    assert_null(b.p);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, 0);
    str_append(&b, "again", 5); /* a freed buffer is an empty one */
    assert_memory_equal(b.p, "again", 5);
    str_buf_free(&b);
}

/* ---- decimal ---------------------------------------------------------------------------- */

static void check_u64(uint64_t v)
{
    char want[32];
    int wn = snprintf(want, sizeof(want), "%llu", (unsigned long long)v);
    str_buf_t g = {0}; /* growing: starts with no room */
    str_append_u64(&g, v);
    assert_int_equal(g.len, (size_t)wn);
    assert_memory_equal(g.p, want, g.len);
    str_buf_free(&g);
    for (size_t cap = (size_t)wn; cap <= 24; cap++) { /* tight and ample fixed room */
        fenced_t f;
        fence(&f, cap);
        str_append_u64(&f.b, v);
        assert_false(f.b.overflow);
        assert_int_equal(f.b.len, (size_t)wn);
        assert_memory_equal(f.b.p, want, f.b.len);
        assert_fence_intact(&f, cap);
    }
    fenced_t f;
    fence(&f, (size_t)wn - 1); /* one short: refused whole */
    str_append_u64(&f.b, v);
    assert_true(f.b.overflow);
    assert_int_equal(f.b.len, 0);
    assert_fence_intact(&f, (size_t)wn - 1);
}

static void test_u64(void **state)
{
    (void)state;
    uint64_t edges[] = {0, 1, 9, 10, 99, 100, 65535, 4294967295u, 4294967296u, 9999999999999999999u, UINT64_MAX};
    for (size_t i = 0; i < sizeof(edges) / sizeof(edges[0]); i++)
        check_u64(edges[i]);
    for (uint64_t v = 1; v < UINT64_MAX / 3; v = v * 3 + 1)
        check_u64(v), check_u64(v - 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hexval),          cmocka_unit_test(test_lower),
        cmocka_unit_test(test_json_every_byte), cmocka_unit_test(test_json_slice),
        cmocka_unit_test(test_json_max),        cmocka_unit_test(test_fixed_overflow),
        cmocka_unit_test(test_fixed_printf),    cmocka_unit_test(test_fixed_sweep),
        cmocka_unit_test(test_growing),         cmocka_unit_test(test_u64),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * test_static.c - unit tests for proxyd/handlers/static.c.
 *
 * The group setup builds a real tree in a temp directory (files, a nested
 * directory with an index, a directory without one, symlinks that stay
 * inside the root and symlinks that leave it, a hidden file, a FIFO) and
 * every table row runs static_serve() against it as its own cmocka test.
 * Each row also checks the descriptor contract: an open O_RDONLY, close-on-
 * exec fd exactly for a 200/206 to GET, and no descriptor left behind on any
 * other result (the lowest free fd before the call is still free after it).
 * The bytes a 200/206 would send are read back with pread and compared.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <inttypes.h>
#include <limits.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "handlers/static.h"

#define NTAB(a) (sizeof(a) / sizeof((a)[0]))

#define HELLO "hello world\n"  /* 12 bytes */
#define HELLO_MTIME 1000000000 /* Sun, 09 Sep 2001 01:46:40 GMT */
#define HELLO_LM "Sun, 09 Sep 2001 01:46:40 GMT"
#define EXPIRES 3600

static char base[64]; /* temp dir: base/root is the served root */
static char root_path[96];
static int root_fd = -1;
static char hello_etag[48]; /* computed from stat(2), independently of static.c */

/* ---- the tree ----------------------------------------------------------------- */

static int put(const char *rel, const char *content)
{
    char p[256];
    snprintf(p, sizeof p, "%s/%s", root_path, rel);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, content, strlen(content));
    close(fd);
    return n == (ssize_t)strlen(content) ? 0 : -1;
}

static int dir(const char *rel)
{
    char p[256];
    snprintf(p, sizeof p, "%s/%s", root_path, rel);
    return mkdir(p, 0755);
}

static int link_to(const char *target, const char *rel)
{
    char p[256];
    snprintf(p, sizeof p, "%s/%s", root_path, rel);
    return symlink(target, p);
}

static int build_tree(void)
{
    char p[256];
    snprintf(p, sizeof p, "%s/outside.txt", base);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || write(fd, "secret\n", 7) != 7)
        return -1;
    close(fd);
    int rc = mkdir(root_path, 0755) | put("hello.txt", HELLO) |
             put("index.html", "<h1>root</h1>\n") | put("empty.bin", "") |
             put("Photo.JPG", "jpeg") | put("noext", "x") | put(".hidden", "hidden") | dir("sub") |
             put("sub/index.html", "<h1>sub</h1>\n") | put("sub/page.css", "body{}\n") |
             dir("sub/.git") | put("sub/.git/config", "[core]\n") | dir("nodir") | dir("idxdir") |
             put("idxdir/default.htm", "<p>custom</p>\n") | dir("dirindex") |
             dir("dirindex/index.html") | put("locked.txt", "locked\n") |
             link_to("hello.txt", "link.txt") | link_to("../hello.txt", "sub/up.txt") |
             link_to("sub", "linkdir") | link_to("/etc/passwd", "passwd") |
             link_to("../outside.txt", "escape.txt") | link_to("/tmp", "tmpdir") |
             link_to("/proc/self/root/etc/passwd", "magic") | link_to("nowhere", "dangling");
    snprintf(p, sizeof p, "%s/fifo", root_path);
    rc |= mkfifo(p, 0644);
    snprintf(p, sizeof p, "%s/locked.txt", root_path);
    rc |= chmod(p, 0);
    return rc;
}

/* Fix hello.txt's mtime so Last-Modified is known, and compute the ETag the
   header documents ("<size hex>-<mtime ns hex>") from stat(2). */
static int pin_hello(void)
{
    char p[256];
    struct stat st;
    struct timespec ts[2] = {{HELLO_MTIME, 123456789}, {HELLO_MTIME, 123456789}};
    snprintf(p, sizeof p, "%s/hello.txt", root_path);
    if (utimensat(AT_FDCWD, p, ts, 0) < 0 || stat(p, &st) < 0)
        return -1;
    uint64_t ns = (uint64_t)st.st_mtim.tv_sec * 1000000000u + (uint64_t)st.st_mtim.tv_nsec;
    snprintf(hello_etag, sizeof hello_etag, "\"%" PRIx64 "-%" PRIx64 "\"", (uint64_t)st.st_size,
             ns);
    return 0;
}

static int group_setup(void **state)
{
    (void)state;
    snprintf(base, sizeof base, "/tmp/proxyd-static-XXXXXX");
    if (mkdtemp(base) == NULL || chmod(base, 0755) < 0)
        return -1;
    snprintf(root_path, sizeof root_path, "%s/root", base);
    if (build_tree() != 0 || pin_hello() != 0)
        return -1;
    root_fd = static_open_root(root_path);
    return root_fd < 0 ? -1 : 0;
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static int group_teardown(void **state)
{
    (void)state;
    close(root_fd);
    return nftw(base, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- running a request ------------------------------------------------------ */

typedef struct {
    const char *name;
    const char *path;
    size_t path_len;
    size_t strip;
    h1_method_t method; /* 0 (OTHER) means GET in rows; OTHER is spelled out below */
    const char *index;
    const char *hdrs[4]; /* "Name: value"; %E = hello.txt's ETag, %L = its Last-Modified */
    int status;
    const char *body; /* bytes of the 200/206 body, or NULL */
    const char *content_range;
    const char *content_type;
    const char *location; /* expected location_suffix, or NULL for "" */
} row_t;

#define PATH(lit) .path = lit, .path_len = sizeof(lit) - 1
#define HEAD_M .method = H1_METHOD_HEAD
#define GET_M .method = H1_METHOD_GET

/* "Name: value" with %E/%L expanded, into a header slot backed by `store`. */
static void make_header(const char *spec, char *store, size_t cap, h1_header_t *h)
{
    size_t n = 0;
    for (const char *s = spec; *s && n + 64 < cap; s++) {
        if (s[0] == '%' && (s[1] == 'E' || s[1] == 'L')) {
            const char *v = s[1] == 'E' ? hello_etag : HELLO_LM;
            n += (size_t)snprintf(store + n, cap - n, "%s", v);
            s++;
        } else {
            store[n++] = *s;
        }
    }
    store[n] = '\0';
    char *colon = strchr(store, ':');
    assert_non_null(colon);
    const char *v = colon + 1;
    while (*v == ' ')
        v++;
    h->name = (h1_slice_t){store, (size_t)(colon - store)};
    h->value = (h1_slice_t){v, strlen(v)};
    h->id = H1_HDR_OTHER;
    h->hop = false;
}

static int lowest_free_fd(void)
{
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    close(fd);
    return fd;
}

static void check_body(const static_result_t *out, const char *body)
{
    char buf[256];
    assert_true(out->length < sizeof buf);
    ssize_t n = pread(out->fd, buf, (size_t)out->length, (off_t)out->offset);
    assert_int_equal(n, (ssize_t)out->length);
    if (body != NULL) {
        assert_int_equal(out->length, strlen(body));
        assert_memory_equal(buf, body, out->length);
    }
}

/* The descriptor contract: open, read-only and close-on-exec for a body;
   -1 (and nothing leaked, checked by the caller) otherwise. */
static void check_fd(const static_result_t *out, h1_method_t method)
{
    bool body = method == H1_METHOD_GET && (out->status == 200 || out->status == 206);
    if (!body) {
        assert_int_equal(out->fd, -1);
        return;
    }
    assert_true(out->fd >= 0);
    assert_true(fcntl(out->fd, F_GETFD) & FD_CLOEXEC);
    assert_int_equal(fcntl(out->fd, F_GETFL) & O_ACCMODE, O_RDONLY);
    struct stat st;
    assert_int_equal(fstat(out->fd, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    assert_int_equal((uint64_t)st.st_size, out->size);
    assert_true(out->offset + out->length <= out->size);
}

static void run(const row_t *t, static_result_t *out)
{
    h1_header_t hs[4];
    char store[4][256];
    size_t n = 0;
    for (; n < NTAB(t->hdrs) && t->hdrs[n] != NULL; n++)
        make_header(t->hdrs[n], store[n], sizeof store[n], &hs[n]);
    static_req_t req = {
        .path = {t->path, t->path_len},
        .strip = t->strip,
        .index = t->index,
        .method = t->method == H1_METHOD_OTHER ? H1_METHOD_GET : t->method,
        .headers = hs,
        .nheaders = n,
        .expires_s = EXPIRES,
    };
    assert_int_equal(static_serve(root_fd, &req, out), 0);
}

static void test_row(void **state)
{
    const row_t *t = *state;
    h1_method_t m = t->method == H1_METHOD_OTHER ? H1_METHOD_GET : t->method;
    static_result_t out;
    int probe = lowest_free_fd();
    run(t, &out);
    assert_int_equal(out.status, t->status);
    assert_int_equal(out.expires_s, EXPIRES);
    check_fd(&out, m);
    if (out.fd >= 0) {
        check_body(&out, t->body);
        close(out.fd);
    }
    /* Nothing left open: the fd that was lowest free before is free again. */
    assert_int_equal(fcntl(probe, F_GETFD), -1);
    assert_int_equal(errno, EBADF);
    assert_string_equal(out.content_range, t->content_range ? t->content_range : "");
    assert_string_equal(out.location_suffix, t->location ? t->location : "");
    if (t->content_type != NULL)
        assert_string_equal(out.content_type, t->content_type);
    if (t->status == 200 || t->status == 304 || t->status == 206)
        assert_int_not_equal(out.etag[0], '\0');
}

#define TXT "text/plain; charset=utf-8"
#define HTML "text/html; charset=utf-8"

/* Paths: what is served, redirected, forbidden, or absent. */
static const row_t path_rows[] = {
    {"get_file", PATH("/hello.txt"), .status = 200, .body = HELLO, .content_type = TXT},
    {"head_file", PATH("/hello.txt"), HEAD_M, .status = 200, .content_type = TXT},
    {"post_405", PATH("/hello.txt"), .method = H1_METHOD_POST, .status = 405},
    {"put_405", PATH("/hello.txt"), .method = H1_METHOD_PUT, .status = 405},
    {"delete_405", PATH("/missing"), .method = H1_METHOD_DELETE, .status = 405},
    {"options_405", PATH("/"), .method = H1_METHOD_OPTIONS, .status = 405},
    {"root_index", PATH("/"), .status = 200, .body = "<h1>root</h1>\n", .content_type = HTML},
    {"sub_index", PATH("/sub/"), .status = 200, .body = "<h1>sub</h1>\n", .content_type = HTML},
    {"dir_no_slash_301", PATH("/sub"), .status = 301, .location = "/"},
    {"dir_without_index_403", PATH("/nodir/"), .status = 403},
    {"dir_without_index_no_slash_301", PATH("/nodir"), .status = 301, .location = "/"},
    {"custom_index", PATH("/idxdir/"), .index = "default.htm", .status = 200,
     .body = "<p>custom</p>\n", .content_type = HTML},
    {"custom_index_missing_403", PATH("/sub/"), .index = "default.htm", .status = 403},
    {"index_is_dir_404", PATH("/dirindex/"), .status = 404},
    {"missing_404", PATH("/missing.txt"), .status = 404},
    {"missing_dir_404", PATH("/missing/"), .status = 404},
    {"file_with_slash_404", PATH("/hello.txt/"), .status = 404},
    {"nested_css", PATH("/sub/page.css"), .status = 200, .content_type = "text/css; charset=utf-8"},
    {"symlink_inside", PATH("/link.txt"), .status = 200, .body = HELLO},
    {"symlink_dotdot_inside", PATH("/sub/up.txt"), .status = 200, .body = HELLO},
    {"symlink_dir_inside", PATH("/linkdir/page.css"), .status = 200, .body = "body{}\n"},
    {"symlink_abs_passwd_404", PATH("/passwd"), .status = 404},
    {"symlink_escape_404", PATH("/escape.txt"), .status = 404},
    {"symlink_dir_tmp_404", PATH("/tmpdir"), .status = 404},
    {"symlink_dir_tmp_slash_404", PATH("/tmpdir/"), .status = 404},
    {"symlink_magic_404", PATH("/magic"), .status = 404},
    {"symlink_dangling_404", PATH("/dangling"), .status = 404},
    {"dotdot_404", PATH("/../hello.txt"), .status = 404},
    {"dotdot_inner_404", PATH("/sub/../hello.txt"), .status = 404},
    {"dotdot_outside_404", PATH("/../outside.txt"), .status = 404},
    {"dotdot_last_404", PATH("/sub/.."), .status = 404},
    {"dot_404", PATH("/./hello.txt"), .status = 404},
    {"hidden_404", PATH("/.hidden"), .status = 404},
    {"hidden_dir_404", PATH("/sub/.git/config"), .status = 404},
    {"encoded_slash_404", PATH("/sub%2Fpage.css"), .status = 404},
    {"encoded_slash_lower_404", PATH("/sub%2fpage.css"), .status = 404},
    {"backslash_404", PATH("/sub\\page.css"), .status = 404},
    {"nul_404", PATH("/hello.txt\0.png"), .status = 404},
    {"fifo_404", PATH("/fifo"), .status = 404},
    {"empty_path_404", PATH(""), .status = 404},
    {"relative_path_404", PATH("hello.txt"), .status = 404},
    {"strip_past_end_404", PATH("/a"), .strip = 5, .status = 404},
    {"strip_file", PATH("/static/hello.txt"), .strip = 7, .status = 200, .body = HELLO},
    {"strip_slash_prefix", PATH("/static/hello.txt"), .strip = 8, .status = 200, .body = HELLO},
    {"strip_to_root_index", PATH("/static/"), .strip = 8, .status = 200, .content_type = HTML},
    {"strip_to_root_301", PATH("/static"), .strip = 7, .status = 301, .location = "/"},
    {"strip_straddle_hidden_404", PATH("/static.hidden"), .strip = 7, .status = 404},
    {"hidden_prefix_allowed", PATH("/.well-known/hello.txt"), .strip = 12, .status = 200},
    {"dotdot_in_prefix_404", PATH("/../x/hello.txt"), .strip = 5, .status = 404},
    {"empty_file", PATH("/empty.bin"), .status = 200, .body = ""},
    {"type_upper_ext", PATH("/Photo.JPG"), .status = 200, .content_type = "image/jpeg"},
    {"type_default", PATH("/noext"), .status = 200, .content_type = "application/octet-stream"},
    {"head_missing_404", PATH("/missing.txt"), HEAD_M, .status = 404},
    {"head_dir_301", PATH("/sub"), HEAD_M, .status = 301, .location = "/"},
};

/* Range (RFC 9110 §14) on hello.txt, 12 bytes. */
static const row_t range_rows[] = {
    {"range_first_last", PATH("/hello.txt"), .hdrs = {"Range: bytes=0-4"}, .status = 206,
     .body = "hello", .content_range = "bytes 0-4/12"},
    {"range_open_end", PATH("/hello.txt"), .hdrs = {"Range: bytes=6-"}, .status = 206,
     .body = "world\n", .content_range = "bytes 6-11/12"},
    {"range_suffix", PATH("/hello.txt"), .hdrs = {"Range: bytes=-6"}, .status = 206,
     .body = "world\n", .content_range = "bytes 6-11/12"},
    {"range_suffix_longer", PATH("/hello.txt"), .hdrs = {"Range: bytes=-100"}, .status = 206,
     .body = HELLO, .content_range = "bytes 0-11/12"},
    {"range_last_clamped", PATH("/hello.txt"), .hdrs = {"Range: bytes=6-100"}, .status = 206,
     .body = "world\n", .content_range = "bytes 6-11/12"},
    {"range_last_byte", PATH("/hello.txt"), .hdrs = {"Range: bytes=11-11"}, .status = 206,
     .body = "\n", .content_range = "bytes 11-11/12"},
    {"range_huge_last", PATH("/hello.txt"), .hdrs = {"Range: bytes=0-99999999999999999999999"},
     .status = 206, .body = HELLO, .content_range = "bytes 0-11/12"},
    {"range_unit_case", PATH("/hello.txt"), .hdrs = {"range: BYTES=0-0"}, .status = 206,
     .body = "h", .content_range = "bytes 0-0/12"},
    {"range_empty_members", PATH("/hello.txt"), .hdrs = {"Range: bytes= , 0-4 ,"}, .status = 206,
     .body = "hello", .content_range = "bytes 0-4/12"},
    {"range_past_end_416", PATH("/hello.txt"), .hdrs = {"Range: bytes=12-"}, .status = 416,
     .content_range = "bytes */12"},
    {"range_suffix_zero_416", PATH("/hello.txt"), .hdrs = {"Range: bytes=-0"}, .status = 416,
     .content_range = "bytes */12"},
    {"range_huge_first_416", PATH("/hello.txt"), .hdrs = {"Range: bytes=99999999999999999999-"},
     .status = 416, .content_range = "bytes */12"},
    {"range_empty_file_416", PATH("/empty.bin"), .hdrs = {"Range: bytes=0-"}, .status = 416,
     .content_range = "bytes */0"},
    {"range_multi_ignored", PATH("/hello.txt"), .hdrs = {"Range: bytes=0-1,3-4"}, .status = 200,
     .body = HELLO},
    {"range_two_fields_ignored", PATH("/hello.txt"),
     .hdrs = {"Range: bytes=0-1", "Range: bytes=3-4"}, .status = 200, .body = HELLO},
    {"range_reversed_ignored", PATH("/hello.txt"), .hdrs = {"Range: bytes=5-2"}, .status = 200},
    {"range_garbage_ignored", PATH("/hello.txt"), .hdrs = {"Range: bytes=abc"}, .status = 200},
    {"range_no_spec_ignored", PATH("/hello.txt"), .hdrs = {"Range: bytes="}, .status = 200},
    {"range_double_dash_ignored", PATH("/hello.txt"), .hdrs = {"Range: bytes=1-2-3"},
     .status = 200},
    {"range_other_unit_ignored", PATH("/hello.txt"), .hdrs = {"Range: items=0-4"}, .status = 200},
    {"range_space_before_eq_ignored", PATH("/hello.txt"), .hdrs = {"Range: bytes =0-4"},
     .status = 200},
    {"range_negative_ignored", PATH("/hello.txt"), .hdrs = {"Range: bytes=--1"}, .status = 200},
    {"range_head_ignored", PATH("/hello.txt"), HEAD_M, .hdrs = {"Range: bytes=0-4"}, .status = 200},
    {"range_missing_404", PATH("/missing"), .hdrs = {"Range: bytes=0-4"}, .status = 404},
    {"if_range_etag", PATH("/hello.txt"), .hdrs = {"Range: bytes=0-4", "If-Range: %E"},
     .status = 206, .body = "hello", .content_range = "bytes 0-4/12"},
    {"if_range_etag_other", PATH("/hello.txt"), .hdrs = {"Range: bytes=0-4", "If-Range: \"x\""},
     .status = 200, .body = HELLO},
    {"if_range_weak_never", PATH("/hello.txt"), .hdrs = {"Range: bytes=0-4", "If-Range: W/%E"},
     .status = 200},
    {"if_range_date", PATH("/hello.txt"), .hdrs = {"Range: bytes=0-4", "If-Range: %L"},
     .status = 206, .content_range = "bytes 0-4/12"},
    {"if_range_date_other", PATH("/hello.txt"),
     .hdrs = {"Range: bytes=0-4", "If-Range: Mon, 01 Jan 2001 00:00:00 GMT"}, .status = 200},
    {"if_range_garbage", PATH("/hello.txt"), .hdrs = {"Range: bytes=0-4", "If-Range: soon"},
     .status = 200},
};

#define OLD_DATE "Sat, 01 Jan 2000 00:00:00 GMT"
#define NEW_DATE "Fri, 01 Jan 2010 00:00:00 GMT"

/* Preconditions (RFC 9110 §13). */
static const row_t cond_rows[] = {
    {"inm_etag_304", PATH("/hello.txt"), .hdrs = {"If-None-Match: %E"}, .status = 304},
    {"inm_star_304", PATH("/hello.txt"), .hdrs = {"If-None-Match: *"}, .status = 304},
    {"inm_weak_304", PATH("/hello.txt"), .hdrs = {"If-None-Match: W/%E"}, .status = 304},
    {"inm_list_304", PATH("/hello.txt"), .hdrs = {"If-None-Match: \"a\", W/\"b\" ,%E"},
     .status = 304},
    {"inm_two_fields_304", PATH("/hello.txt"),
     .hdrs = {"If-None-Match: \"a\"", "if-none-match: %E"}, .status = 304},
    {"inm_other_200", PATH("/hello.txt"), .hdrs = {"If-None-Match: \"nope\""}, .status = 200,
     .body = HELLO},
    {"inm_malformed_200", PATH("/hello.txt"), .hdrs = {"If-None-Match: nope"}, .status = 200},
    {"inm_beats_ims", PATH("/hello.txt"),
     .hdrs = {"If-None-Match: \"nope\"", "If-Modified-Since: %L"}, .status = 200},
    {"inm_head_304", PATH("/hello.txt"), HEAD_M, .hdrs = {"If-None-Match: %E"}, .status = 304},
    {"inm_beats_range", PATH("/hello.txt"), .hdrs = {"If-None-Match: %E", "Range: bytes=0-1"},
     .status = 304},
    {"inm_missing_404", PATH("/missing"), .hdrs = {"If-None-Match: *"}, .status = 404},
    {"ims_equal_304", PATH("/hello.txt"), .hdrs = {"If-Modified-Since: %L"}, .status = 304},
    {"ims_later_304", PATH("/hello.txt"), .hdrs = {"If-Modified-Since: " NEW_DATE}, .status = 304},
    {"ims_earlier_200", PATH("/hello.txt"), .hdrs = {"If-Modified-Since: " OLD_DATE},
     .status = 200},
    {"ims_rfc850_304", PATH("/hello.txt"),
     .hdrs = {"If-Modified-Since: Sunday, 09-Sep-01 01:46:40 GMT"}, .status = 304},
    {"ims_asctime_304", PATH("/hello.txt"), .hdrs = {"If-Modified-Since: Sun Sep  9 01:46:40 2001"},
     .status = 304},
    {"ims_invalid_200", PATH("/hello.txt"), .hdrs = {"If-Modified-Since: yesterday"},
     .status = 200},
    {"ims_twice_ignored_200", PATH("/hello.txt"),
     .hdrs = {"If-Modified-Since: %L", "If-Modified-Since: %L"}, .status = 200},
    {"ims_head_304", PATH("/hello.txt"), HEAD_M, .hdrs = {"If-Modified-Since: %L"}, .status = 304},
    {"if_match_200", PATH("/hello.txt"), .hdrs = {"If-Match: %E"}, .status = 200, .body = HELLO},
    {"if_match_star_200", PATH("/hello.txt"), .hdrs = {"If-Match: *"}, .status = 200},
    {"if_match_other_412", PATH("/hello.txt"), .hdrs = {"If-Match: \"x\""}, .status = 412},
    {"if_match_weak_412", PATH("/hello.txt"), .hdrs = {"If-Match: W/%E"}, .status = 412},
    {"ius_earlier_412", PATH("/hello.txt"), .hdrs = {"If-Unmodified-Since: " OLD_DATE},
     .status = 412},
    {"ius_later_200", PATH("/hello.txt"), .hdrs = {"If-Unmodified-Since: " NEW_DATE},
     .status = 200},
    {"if_match_then_range", PATH("/hello.txt"), .hdrs = {"If-Match: %E", "Range: bytes=-1"},
     .status = 206, .body = "\n", .content_range = "bytes 11-11/12"},
    {"conditional_405", PATH("/hello.txt"), .method = H1_METHOD_POST, .hdrs = {"If-None-Match: *"},
     .status = 405},
};

/* ---- fixed tests --------------------------------------------------------------- */

/* The 304 keeps the validators and metadata the response must repeat
   (RFC 9110 §15.4.5). */
static void test_304_fields(void **state)
{
    (void)state;
    row_t t = {"x", PATH("/hello.txt"), .hdrs = {"If-None-Match: %E"}};
    static_result_t out;
    run(&t, &out);
    assert_int_equal(out.status, 304);
    assert_string_equal(out.etag, hello_etag);
    assert_string_equal(out.last_modified, HELLO_LM);
    assert_int_equal(out.mtime, HELLO_MTIME);
    assert_int_equal(out.size, 12);
    assert_string_equal(out.content_type, TXT);
}

static void test_head_fields(void **state)
{
    (void)state;
    row_t t = {"x", PATH("/hello.txt"), HEAD_M};
    static_result_t out;
    run(&t, &out);
    assert_int_equal(out.status, 200);
    assert_int_equal(out.fd, -1);
    assert_int_equal(out.offset, 0);
    assert_int_equal(out.length, 12);
    assert_string_equal(out.etag, hello_etag);
    assert_string_equal(out.last_modified, HELLO_LM);
}

/* A path through the /tmp symlink that names a file which does exist
   outside the root. */
static void test_escape_to_existing_file(void **state)
{
    (void)state;
    char p[256];
    int n = snprintf(p, sizeof p, "/tmpdir/%s/outside.txt", base + strlen("/tmp/"));
    row_t t = {"x", .path = p, .path_len = (size_t)n};
    static_result_t out;
    run(&t, &out);
    assert_int_equal(out.status, 404);
    assert_int_equal(out.fd, -1);
}

static void test_path_too_long(void **state)
{
    (void)state;
    static char p[PATH_MAX + 16];
    p[0] = '/';
    memset(p + 1, 'a', sizeof p - 1);
    row_t t = {"x", .path = p, .path_len = sizeof p};
    static_result_t out;
    run(&t, &out);
    assert_int_equal(out.status, 404);
}

/* EACCES -> 403.  Root bypasses file modes, so the request runs in a child
   that drops to nobody first. */
static void test_unreadable_403(void **state)
{
    (void)state;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (geteuid() == 0 && (setgroups(0, NULL) < 0 || setresgid(65534, 65534, 65534) < 0 ||
                               setresuid(65534, 65534, 65534) < 0))
            _exit(1);
        static_req_t req = {.path = {"/locked.txt", 11}, .method = H1_METHOD_GET};
        static_result_t out;
        static_serve(root_fd, &req, &out);
        _exit(out.status == 403 && out.fd == -1 ? 0 : 2);
    }
    int ws;
    assert_int_equal(waitpid(pid, &ws, 0), pid);
    assert_true(WIFEXITED(ws));
    assert_int_equal(WEXITSTATUS(ws), 0);
}

static void test_open_root(void **state)
{
    (void)state;
    char p[256];
    assert_int_equal(static_open_root("/nonexistent-proxyd-root"), -1);
    assert_int_equal(errno, ENOENT);
    snprintf(p, sizeof p, "%s/hello.txt", root_path);
    assert_int_equal(static_open_root(p), -1);
    assert_int_equal(errno, ENOTDIR);
    int fd = static_open_root(root_path);
    assert_true(fd >= 0);
    assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    close(fd);
}

static void test_content_types(void **state)
{
    (void)state;
    static const struct {
        const char *name, *type;
    } cases[] = {
        {"a.html", HTML},
        {"a.HTM", HTML},
        {"a.css", "text/css; charset=utf-8"},
        {"a.js", "text/javascript; charset=utf-8"},
        {"a.mjs", "text/javascript; charset=utf-8"},
        {"a.json", "application/json"},
        {"a.xml", "application/xml"},
        {"a.txt", TXT},
        {"a.csv", "text/csv; charset=utf-8"},
        {"a.svg", "image/svg+xml"},
        {"a.PNG", "image/png"},
        {"a.jpg", "image/jpeg"},
        {"a.jpeg", "image/jpeg"},
        {"a.gif", "image/gif"},
        {"a.webp", "image/webp"},
        {"a.avif", "image/avif"},
        {"favicon.ico", "image/x-icon"},
        {"a.woff", "font/woff"},
        {"a.woff2", "font/woff2"},
        {"a.ttf", "font/ttf"},
        {"a.otf", "font/otf"},
        {"a.pdf", "application/pdf"},
        {"a.zip", "application/zip"},
        {"a.tar.gz", "application/gzip"},
        {"a.tar", "application/x-tar"},
        {"a.mp4", "video/mp4"},
        {"a.webm", "video/webm"},
        {"a.mp3", "audio/mpeg"},
        {"a.wasm", "application/wasm"},
        {"app.js.map", "application/json"},
        {"README.md", "text/markdown; charset=utf-8"},
        {"a", "application/octet-stream"},
        {"a.", "application/octet-stream"},
        {".bashrc", "application/octet-stream"},
        {"d.html/x", "application/octet-stream"},
        {"d/.html", "application/octet-stream"},
        {"a.exe", "application/octet-stream"},
        {"a.htmlx", "application/octet-stream"},
        {"", "application/octet-stream"},
    };
    for (size_t i = 0; i < NTAB(cases); i++) {
        const char *got = static_content_type(cases[i].name, strlen(cases[i].name));
        if (strcmp(got, cases[i].type) != 0)
            fail_msg("%s: got %s, want %s", cases[i].name, got, cases[i].type);
    }
}

static void test_dates(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        time_t t; /* -1: must be refused */
    } cases[] = {
        {"Sun, 06 Nov 1994 08:49:37 GMT", 784111777},
        {"Sunday, 06-Nov-94 08:49:37 GMT", 784111777},
        {"Sun Nov  6 08:49:37 1994", 784111777},
        {"Thu, 01 Jan 1970 00:00:00 GMT", 0},
        {"Tue, 29 Feb 2000 12:00:00 GMT", 951825600},
        {"Wed, 31 Dec 2036 23:59:60 GMT", 2114380799},
        {"Sun, 06 Nov 1994 08:49:37 UTC", -1},
        {"Sun, 06 Nov 1994 08:49:37 GMT ", -1},
        {"sun, 06 Nov 1994 08:49:37 GMT", -1},
        {"Sun, 6 Nov 1994 08:49:37 GMT", -1},
        {"Sun, 31 Nov 1994 08:49:37 GMT", -1},
        {"Mon, 29 Feb 1900 00:00:00 GMT", -1},
        {"Sun, 06 Nov 1994 24:00:00 GMT", -1},
        {"Sun, 06 Foo 1994 08:49:37 GMT", -1},
        {"Sun Nov 6 08:49:37 1994", -1},
        {"Sunday, 06-Nov-1994 08:49:37 GMT", -1},
        {"", -1},
        {"Sun", -1},
    };
    for (size_t i = 0; i < NTAB(cases); i++) {
        time_t t = -1;
        int rc = static_parse_http_date(cases[i].s, strlen(cases[i].s), &t);
        if (cases[i].t == -1 ? rc != -1 : (rc != 0 || t != cases[i].t))
            fail_msg("'%s': rc %d t %lld", cases[i].s, rc, (long long)t);
    }
    char buf[32];
    static_format_http_date(784111777, buf);
    assert_string_equal(buf, "Sun, 06 Nov 1994 08:49:37 GMT");
    static_format_http_date(0, buf);
    assert_string_equal(buf, "Thu, 01 Jan 1970 00:00:00 GMT");
}

int main(void)
{
    static const struct CMUnitTest fixed[] = {
        cmocka_unit_test(test_304_fields),
        cmocka_unit_test(test_head_fields),
        cmocka_unit_test(test_escape_to_existing_file),
        cmocka_unit_test(test_path_too_long),
        cmocka_unit_test(test_unreadable_403),
        cmocka_unit_test(test_open_root),
        cmocka_unit_test(test_content_types),
        cmocka_unit_test(test_dates),
    };
    enum { N = NTAB(fixed) + NTAB(path_rows) + NTAB(range_rows) + NTAB(cond_rows) };
    static struct CMUnitTest tests[N];
    size_t n = 0;
    for (size_t i = 0; i < NTAB(fixed); i++)
        tests[n++] = fixed[i];
#define ADD_ROWS(tab)                                                                              \
    for (size_t i = 0; i < NTAB(tab); i++)                                                         \
    tests[n++] = (struct CMUnitTest){tab[i].name, test_row, NULL, NULL, (void *)&tab[i]}
    ADD_ROWS(path_rows);
    ADD_ROWS(range_rows);
    ADD_ROWS(cond_rows);
    return _cmocka_run_group_tests("static", tests, n, group_setup, group_teardown);
}

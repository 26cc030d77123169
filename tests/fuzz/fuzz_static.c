/*
 * fuzz_static.c - static_serve() and its parsers against arbitrary requests.
 *
 * Input: byte 0 picks the method (bit 0: HEAD, bit 1: POST) and how many
 * bytes of prefix to strip (bits 2-4); the rest is lines: the request path,
 * then "Name: value" header lines.  The handler runs against a small real
 * tree (made once, removed at exit) whose root has a sibling file and
 * symlinks that lead out of it.  Invariants checked on every input:
 *  - a descriptor is returned exactly for a 200/206 to GET, and it is one of
 *    the regular files inside the tree (by inode), never anything outside;
 *  - no descriptor is left open on any result;
 *  - the range lies within the file; a parsed HTTP-date formats and parses
 *    back to the same time.
 * static.c is included (not linked) to reach its static parsers.
 */
#include "../../proxyd/handlers/static.c"

#include <ftw.h>
#include <stdlib.h>

static char base[64];
static int root_fd = -1;
static ino_t inside[8];
static size_t ninside;

/* servable: a file static_serve may hand out (inside the root, not hidden). */
static void make_file(const char *rel, const char *content, bool servable)
{
    char p[128];
    struct stat st;
    snprintf(p, sizeof p, "%s/%s", base, rel);
    FILE *f = fopen(p, "w");
    if (f == NULL || fputs(content, f) < 0 || fclose(f) != 0 || stat(p, &st) != 0)
        abort();
    if (servable)
        inside[ninside++] = st.st_ino;
}

static void make_link(const char *target, const char *rel)
{
    char p[128];
    snprintf(p, sizeof p, "%s/%s", base, rel);
    if (symlink(target, p) != 0)
        abort();
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static void remove_tree(void)
{
    nftw(base, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void make_tree(void)
{
    char p[128];
    snprintf(base, sizeof base, "/tmp/proxyd-fuzz-static-XXXXXX");
    if (mkdtemp(base) == NULL)
        abort();
    atexit(remove_tree);
    static const char *const dirs[] = {"root", "root/sub", "root/nodir"};
    for (size_t i = 0; i < NTAB(dirs); i++) {
        snprintf(p, sizeof p, "%s/%s", base, dirs[i]);
        if (mkdir(p, 0755) != 0)
            abort();
    }
    make_file("outside.txt", "outside\n", false);
    make_file("root/hello.txt", "hello world\n", true);
    make_file("root/index.html", "<h1>root</h1>\n", true);
    make_file("root/sub/index.html", "<h1>sub</h1>\n", true);
    make_file("root/.env", "SECRET=1\n", false);
    make_link("/etc/passwd", "root/passwd");
    make_link("../outside.txt", "root/escape");
    make_link("../hello.txt", "root/sub/up.txt");
    snprintf(p, sizeof p, "%s/root", base);
    root_fd = static_open_root(p);
    if (root_fd < 0)
        abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    make_tree();
    return 0;
}

static int lowest_free_fd(void)
{
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        abort();
    close(fd);
    return fd;
}

static void check_value(h1_slice_t v)
{
    time_t t, back;
    char buf[32];
    if (static_parse_http_date(v.p, v.n, &t) == 0) {
        static_format_http_date(t, buf);
        if (static_parse_http_date(buf, strlen(buf), &back) != 0 || back != t)
            abort();
    }
    uint64_t first, last;
    uint64_t sizes[] = {0, 1, 12, UINT64_MAX};
    for (size_t i = 0; i < NTAB(sizes); i++)
        if (parse_range(v, sizes[i], &first, &last) == RANGE_OK &&
            (first > last || last >= sizes[i]))
            abort();
    static_content_type(v.p, v.n);
}

static bool is_inside(int fd)
{
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        return false;
    for (size_t i = 0; i < ninside; i++)
        if (inside[i] == st.st_ino)
            return true;
    return false;
}

static void check_result(const static_req_t *req, const static_result_t *o)
{
    bool body = req->method == H1_METHOD_GET && (o->status == 200 || o->status == 206);
    if (body != (o->fd >= 0))
        abort();
    if (o->fd >= 0 &&
        (!is_inside(o->fd) || o->offset + o->length > o->size || o->offset + o->length < o->offset))
        abort();
    if (o->status == 206 && (o->length == 0 || o->content_range[0] == '\0'))
        abort();
}

/* Split data into the path line and up to H1_HEADERS_CAP header lines. */
static size_t split(const char *p, const char *end, h1_slice_t *path, h1_header_t *hs)
{
    size_t n = 0;
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    *path = (h1_slice_t){p, (size_t)((nl ? nl : end) - p)};
    for (p = nl ? nl + 1 : end; p < end && n < H1_HEADERS_CAP;) {
        nl = memchr(p, '\n', (size_t)(end - p));
        const char *e = nl ? nl : end;
        const char *colon = memchr(p, ':', (size_t)(e - p));
        if (colon != NULL) {
            const char *v = colon + 1;
            while (v < e && *v == ' ')
                v++;
            hs[n].name = (h1_slice_t){p, (size_t)(colon - p)};
            hs[n].value = (h1_slice_t){v, (size_t)(e - v)};
            hs[n].id = H1_HDR_OTHER;
            hs[n].hop = false;
            check_value(hs[n++].value);
        }
        p = nl ? nl + 1 : end;
    }
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static h1_header_t hs[H1_HEADERS_CAP];
    if (size == 0)
        return 0;
    static_req_t req;
    memset(&req, 0, sizeof req);
    req.method = (data[0] & 2) ? H1_METHOD_POST : (data[0] & 1) ? H1_METHOD_HEAD : H1_METHOD_GET;
    req.nheaders = split((const char *)data + 1, (const char *)data + size, &req.path, hs);
    req.headers = hs;
    req.strip = (size_t)(data[0] >> 2) & 7;
    if (req.strip > req.path.n)
        req.strip = 0;
    int probe = lowest_free_fd();
    static_result_t out;
    if (static_serve(root_fd, &req, &out) != 0)
        abort();
    check_result(&req, &out);
    if (out.fd >= 0)
        close(out.fd);
    if (fcntl(probe, F_GETFD) != -1)
        abort();
    return 0;
}

/*
 * static.c - the static-file handler (see static.h for the contract).
 *
 * Order of decisions, each step only when the previous one let the request
 * through:
 *   1. method: GET and HEAD only (405);
 *   2. path: refused syntactically (NUL, backslash, "..", an encoded slash
 *      the caller left as %2F, a hidden segment) before any system call;
 *   3. open under the root with openat2(RESOLVE_BENEATH|RESOLVE_NO_MAGICLINKS):
 *      the kernel, not string checks, is what keeps us inside the root;
 *   4. preconditions in the order of RFC 9110 §13.2.2 (412 / 304);
 *   5. Range and If-Range (RFC 9110 §14.2, §13.1.5) for GET only.
 * The descriptor is closed on every path that ends without a body to send.
 */
#include "handlers/static.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../common/str.h"

#define NTAB(a) (sizeof(a) / sizeof((a)[0]))

/* ---- small helpers ------------------------------------------------------ */

static bool ieq(const char *p, size_t n, const char *lit)
{
    if (strlen(lit) != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (str_lower_char((unsigned char)p[i]) != (unsigned char)lit[i])
            return false;
    return true;
}

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Field name equality; `lit` is lower case. */
static bool name_is(const h1_header_t *h, const char *lit)
{
    return ieq(h->name.p, h->name.n, lit);
}

/* The only field named `lit`; NULL when absent or repeated (a repeated
   singleton field is invalid and ignored, RFC 9110 §5.3). */
static const h1_header_t *single_field(const static_req_t *r, const char *lit)
{
    const h1_header_t *found = NULL;
    for (size_t i = 0; i < r->nheaders; i++) {
        if (!name_is(&r->headers[i], lit))
            continue;
        if (found != NULL)
            return NULL;
        found = &r->headers[i];
    }
    return found;
}

static bool has_field(const static_req_t *r, const char *lit)
{
    for (size_t i = 0; i < r->nheaders; i++)
        if (name_is(&r->headers[i], lit))
            return true;
    return false;
}

/* ---- content types -------------------------------------------------------- */

static const struct {
    const char *ext;
    const char *type;
} content_types[] = {
    {"html", "text/html; charset=utf-8"},
    {"htm", "text/html; charset=utf-8"},
    {"css", "text/css; charset=utf-8"},
    {"js", "text/javascript; charset=utf-8"}, /* RFC 9239 §6 */
    {"mjs", "text/javascript; charset=utf-8"},
    {"json", "application/json"}, /* no charset parameter: RFC 8259 §11 */
    {"map", "application/json"},
    {"webmanifest", "application/manifest+json"},
    {"xml", "application/xml"},
    {"txt", "text/plain; charset=utf-8"},
    {"csv", "text/csv; charset=utf-8"},
    {"md", "text/markdown; charset=utf-8"},
    {"svg", "image/svg+xml"},
    {"png", "image/png"},
    {"jpg", "image/jpeg"},
    {"jpeg", "image/jpeg"},
    {"gif", "image/gif"},
    {"webp", "image/webp"},
    {"avif", "image/avif"},
    {"ico", "image/x-icon"},
    {"woff", "font/woff"},
    {"woff2", "font/woff2"},
    {"ttf", "font/ttf"},
    {"otf", "font/otf"},
    {"pdf", "application/pdf"},
    {"zip", "application/zip"},
    {"gz", "application/gzip"},
    {"tar", "application/x-tar"},
    {"mp4", "video/mp4"},
    {"webm", "video/webm"},
    {"mp3", "audio/mpeg"},
    {"wasm", "application/wasm"},
};

const char *static_content_type(const char *name, size_t n)
{
    size_t i = n;
    while (i > 0 && name[i - 1] != '.' && name[i - 1] != '/')
        i--;
    /* No dot, or a dot that starts the name (".bashrc" has no extension). */
    if (i == 0 || name[i - 1] != '.' || i == 1 || name[i - 2] == '/')
        return "application/octet-stream";
    for (size_t k = 0; k < NTAB(content_types); k++)
        if (ieq(name + i, n - i, content_types[k].ext))
            return content_types[k].type;
    return "application/octet-stream";
}

/* ---- HTTP-date (RFC 9110 §5.6.7) ------------------------------------------ */

static const char *const day_short[7] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
static const char *const day_long[7] = {"Sunday",   "Monday", "Tuesday", "Wednesday",
                                        "Thursday", "Friday", "Saturday"};
static const char *const month_name[12] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                           "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

void static_format_http_date(time_t t, char buf[32])
{
    struct tm tm;
    buf[0] = '\0';
    if (gmtime_r(&t, &tm) == NULL || tm.tm_year < -1900 || tm.tm_year > 9999 - 1900)
        return;
    snprintf(buf, 32, "%s, %02d %s %04d %02d:%02d:%02d GMT", day_short[tm.tm_wday % 7],
             tm.tm_mday % 100, month_name[tm.tm_mon % 12], (tm.tm_year + 1900) % 10000,
             tm.tm_hour % 100, tm.tm_min % 100, tm.tm_sec % 100);
}

/* A cursor over a date being parsed; every step fails once p passes end. */
typedef struct {
    const char *p, *end;
} cur_t;

static bool take_lit(cur_t *c, const char *lit)
{
    size_t n = strlen(lit);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, lit, n) != 0)
        return false;
    c->p += n;
    return true;
}

static bool take_num(cur_t *c, int ndigits, int *v)
{
    *v = 0;
    if (c->end - c->p < ndigits)
        return false;
    for (int i = 0; i < ndigits; i++, c->p++) {
        if (!is_digit(*c->p))
            return false;
        *v = *v * 10 + (*c->p - '0');
    }
    return true;
}

/* Index of the name in `names` that the cursor starts with (names are
   case-sensitive in the grammar), or -1. */
static int take_name(cur_t *c, const char *const *names, int count)
{
    for (int i = 0; i < count; i++)
        if (take_lit(c, names[i]))
            return i;
    return -1;
}

static bool take_time(cur_t *c, int *hh, int *mm, int *ss)
{
    return take_num(c, 2, hh) && take_lit(c, ":") && take_num(c, 2, mm) && take_lit(c, ":") &&
           take_num(c, 2, ss);
}

typedef struct {
    int year, mon, day, hh, mm, ss; /* mon 0..11 */
} date_t;

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
   days_from_civil), so that no time zone or locale is involved. */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static bool date_to_time(const date_t *d, time_t *out)
{
    static const int mdays[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (d->year % 4 == 0 && d->year % 100 != 0) || d->year % 400 == 0;
    if (d->mon < 0 || d->mon > 11 || d->day < 1 || d->day > mdays[d->mon] ||
        (d->mon == 1 && d->day == 29 && !leap) || d->hh > 23 || d->mm > 59 || d->ss > 60)
        return false;
    /* The grammar allows a leap second (second 60); time_t cannot hold it. */
    int ss = d->ss == 60 ? 59 : d->ss;
    *out = (time_t)(days_from_civil(d->year, d->mon + 1, d->day) * 86400 + (int64_t)d->hh * 3600 +
                    (int64_t)d->mm * 60 + ss);
    return true;
}

/* IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT" */
static bool parse_imf(cur_t *c, date_t *d)
{
    return take_name(c, day_short, 7) >= 0 && take_lit(c, ", ") && take_num(c, 2, &d->day) &&
           take_lit(c, " ") && (d->mon = take_name(c, month_name, 12)) >= 0 && take_lit(c, " ") &&
           take_num(c, 4, &d->year) && take_lit(c, " ") && take_time(c, &d->hh, &d->mm, &d->ss) &&
           take_lit(c, " GMT");
}

/* The year of an rfc850-date: a two-digit year that would be more than 50
   years in the future is the most recent past year with those digits
   (RFC 9110 §5.6.7). */
static int rfc850_year(int yy)
{
    time_t now = time(NULL);
    struct tm tm;
    int cur = gmtime_r(&now, &tm) ? tm.tm_year + 1900 : 2000;
    int y = cur - cur % 100 + yy;
    return y > cur + 50 ? y - 100 : y;
}

/* rfc850-date: "Sunday, 06-Nov-94 08:49:37 GMT" */
static bool parse_rfc850(cur_t *c, date_t *d)
{
    int yy = 0;
    if (!(take_name(c, day_long, 7) >= 0 && take_lit(c, ", ") && take_num(c, 2, &d->day) &&
          take_lit(c, "-") && (d->mon = take_name(c, month_name, 12)) >= 0 && take_lit(c, "-") &&
          take_num(c, 2, &yy) && take_lit(c, " ") && take_time(c, &d->hh, &d->mm, &d->ss) &&
          take_lit(c, " GMT")))
        return false;
    d->year = rfc850_year(yy);
    return true;
}

/* asctime-date: "Sun Nov  6 08:49:37 1994" (day is 2DIGIT or SP DIGIT) */
static bool parse_asctime(cur_t *c, date_t *d)
{
    if (!(take_name(c, day_short, 7) >= 0 && take_lit(c, " ") &&
          (d->mon = take_name(c, month_name, 12)) >= 0 && take_lit(c, " ")))
        return false;
    if (take_lit(c, " ")) {
        if (!take_num(c, 1, &d->day))
            return false;
    } else if (!take_num(c, 2, &d->day)) {
        return false;
    }
    return take_lit(c, " ") && take_time(c, &d->hh, &d->mm, &d->ss) && take_lit(c, " ") &&
           take_num(c, 4, &d->year);
}

/* All three forms, since RFC 9110 §5.6.7 says a recipient MUST accept them;
   the separator after the day name tells which one it is. */
int static_parse_http_date(const char *s, size_t n, time_t *out)
{
    cur_t c = {s, s + n};
    date_t d = {0, 0, 0, 0, 0, 0};
    bool ok;
    if (n > 3 && s[3] == ',')
        ok = parse_imf(&c, &d);
    else if (n > 3 && s[3] == ' ')
        ok = parse_asctime(&c, &d);
    else
        ok = parse_rfc850(&c, &d);
    if (!ok || c.p != c.end || !date_to_time(&d, out))
        return -1;
    return 0;
}

/* ---- entity tags (RFC 9110 §8.8.3) ------------------------------------------ */

typedef struct {
    h1_slice_t opaque; /* with its quotes */
    bool weak;
} etag_t;

/* etagc = %x21 / %x23-7E / obs-text */
static bool is_etagc(unsigned char c)
{
    return c == 0x21 || (c >= 0x23 && c != 0x7f);
}

/* Next member of an entity-tag list (empty members and OWS skipped, as
   the #rule of RFC 9110 §5.6.1 asks).  1: *e set; 0: end; -1: malformed. */
static int etag_next(const char **pp, const char *end, etag_t *e)
{
    const char *p = *pp;
    while (p < end && (*p == ',' || is_ows(*p)))
        p++;
    if (p == end)
        return 0;
    e->weak = end - p >= 2 && p[0] == 'W' && p[1] == '/';
    if (e->weak)
        p += 2;
    if (p == end || *p != '"')
        return -1;
    const char *q = p + 1;
    while (q < end && *q != '"' && is_etagc((unsigned char)*q))
        q++;
    if (q == end || *q != '"')
        return -1;
    e->opaque = (h1_slice_t){p, (size_t)(q + 1 - p)};
    p = q + 1;
    while (p < end && is_ows(*p))
        p++;
    if (p < end && *p != ',')
        return -1;
    *pp = p;
    return 1;
}

/* RFC 9110 §8.8.3.2: strong comparison needs both tags strong; weak
   comparison looks at the opaque tags only.  Our own tag is always strong. */
static bool etag_eq(const etag_t *e, const char *ours, bool weak_cmp)
{
    if (e->weak && !weak_cmp)
        return false;
    return e->opaque.n == strlen(ours) && memcmp(e->opaque.p, ours, e->opaque.n) == 0;
}

static bool is_star(h1_slice_t v)
{
    return v.n == 1 && v.p[0] == '*';
}

/* Does any field `lit` (a list, possibly spread over several lines) hold
   "*" or a tag equal to ours?  A malformed list matches nothing past the
   error. */
static bool etag_list_matches(const static_req_t *r, const char *lit, const char *ours,
                              bool weak_cmp)
{
    for (size_t i = 0; i < r->nheaders; i++) {
        const h1_header_t *h = &r->headers[i];
        if (!name_is(h, lit))
            continue;
        if (is_star(h->value))
            return true;
        const char *p = h->value.p, *end = p + h->value.n;
        etag_t e;
        while (etag_next(&p, end, &e) == 1)
            if (etag_eq(&e, ours, weak_cmp))
                return true;
    }
    return false;
}

/* ---- preconditions (RFC 9110 §13.2.2) --------------------------------------- */

/* A valid single date field, or false (RFC 9110 §13.1.3/§13.1.4: ignore an
   invalid or repeated date). */
static bool field_date(const static_req_t *r, const char *lit, time_t *t)
{
    const h1_header_t *h = single_field(r, lit);
    return h != NULL && static_parse_http_date(h->value.p, h->value.n, t) == 0;
}

/* 412, 304, or 0 to go on.  Steps 1-4 of §13.2.2; step 5 (If-Range) is
   part of range handling.  Last-Modified has one-second resolution, so the
   date comparisons use the truncated mtime. */
static int preconditions(const static_req_t *r, const static_result_t *o)
{
    time_t t;
    if (has_field(r, "if-match")) {
        if (!etag_list_matches(r, "if-match", o->etag, false))
            return 412;
    } else if (field_date(r, "if-unmodified-since", &t) && o->mtime > t) {
        return 412;
    }
    /* If-None-Match takes precedence: If-Modified-Since is only looked at
       when it is absent (§13.1.3), being the less accurate validator. */
    if (has_field(r, "if-none-match"))
        return etag_list_matches(r, "if-none-match", o->etag, true) ? 304 : 0;
    if (field_date(r, "if-modified-since", &t) && o->mtime <= t)
        return 304;
    return 0;
}

/* ---- ranges (RFC 9110 §14) ---------------------------------------------------- */

enum { RANGE_IGNORE, RANGE_OK, RANGE_UNSATISFIABLE };

/* 1*DIGIT, saturating at UINT64_MAX: a huge first-pos is then simply past
   the end (416) and a huge last-pos is clamped, as §14.1.2 directs. */
static bool take_pos(const char **pp, const char *end, uint64_t *v)
{
    const char *p = *pp;
    *v = 0;
    while (p < end && is_digit(*p)) {
        unsigned d = (unsigned)(*p - '0');
        *v = *v > (UINT64_MAX - d) / 10 ? UINT64_MAX : *v * 10 + d;
        p++;
    }
    if (p == *pp)
        return false;
    *pp = p;
    return true;
}

/* One range-spec, p..end exactly: "a-b", "a-" or "-n" (§14.1.2). */
static int range_spec(const char *p, const char *end, uint64_t size, uint64_t *first,
                      uint64_t *last)
{
    uint64_t a, b;
    if (p < end && *p == '-') {
        p++;
        if (!take_pos(&p, end, &b) || p != end)
            return RANGE_IGNORE;
        if (b == 0 || size == 0)
            return RANGE_UNSATISFIABLE;
        *first = b >= size ? 0 : size - b;
        *last = size - 1;
        return RANGE_OK;
    }
    if (!take_pos(&p, end, &a) || p == end || *p++ != '-')
        return RANGE_IGNORE;
    b = UINT64_MAX;
    if (p != end && (!take_pos(&p, end, &b) || p != end))
        return RANGE_IGNORE;
    if (b < a) /* invalid range-spec: the whole field is ignored */
        return RANGE_IGNORE;
    if (a >= size)
        return RANGE_UNSATISFIABLE;
    *first = a;
    *last = b >= size ? size - 1 : b;
    return RANGE_OK;
}

/*
 * "bytes=" range-set.  Only a single range is honoured: several ranges would
 * need a multipart/byteranges body generated around the file (§14.6), which
 * cannot be one sendfile(2) call, and they are the classic amplification
 * vector (many overlapping ranges of one large file).  §14.2 lets a server
 * ignore Range, so a request for several ranges gets the whole file (200).
 */
static int parse_range(h1_slice_t v, uint64_t size, uint64_t *first, uint64_t *last)
{
    const char *p = v.p, *end = v.p + v.n;
    const char *eq = memchr(p, '=', v.n);
    if (eq == NULL || !ieq(p, (size_t)(eq - p), "bytes"))
        return RANGE_IGNORE;
    const char *spec = NULL, *spec_end = NULL;
    for (p = eq + 1; p < end;) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *e = comma ? comma : end;
        while (p < e && is_ows(*p))
            p++;
        const char *t = e;
        while (t > p && is_ows(t[-1]))
            t--;
        if (t > p) {
            if (spec != NULL)
                return RANGE_IGNORE;
            spec = p;
            spec_end = t;
        }
        p = comma ? comma + 1 : end;
    }
    if (spec == NULL)
        return RANGE_IGNORE;
    return range_spec(spec, spec_end, size, first, last);
}

/* §13.1.5: If-Range holds when its entity tag matches ours by strong
   comparison, or its date equals Last-Modified and that date is a strong
   validator (§8.8.2.2: at least a second older than the response's Date). */
static bool if_range_holds(const static_req_t *r, const static_result_t *o)
{
    if (!has_field(r, "if-range"))
        return true;
    const h1_header_t *h = single_field(r, "if-range");
    if (h == NULL)
        return false;
    time_t t;
    /* A date starts with a day name ("Wed, ..."), never with '"' or "W/". */
    if (h->value.n > 1 &&
        (h->value.p[0] == '"' || (h->value.p[0] == 'W' && h->value.p[1] == '/'))) {
        const char *p = h->value.p;
        etag_t e;
        return etag_next(&p, p + h->value.n, &e) == 1 && p == h->value.p + h->value.n &&
               etag_eq(&e, o->etag, false);
    }
    return static_parse_http_date(h->value.p, h->value.n, &t) == 0 && t == o->mtime &&
           o->mtime < time(NULL);
}

/* Range is defined for GET only (§14.2: ignore it on other methods). */
static void apply_range(const static_req_t *r, static_result_t *o)
{
    const h1_header_t *h = single_field(r, "range");
    uint64_t first, last;
    if (r->method != H1_METHOD_GET || h == NULL || !if_range_holds(r, o))
        return;
    switch (parse_range(h->value, o->size, &first, &last)) {
    case RANGE_OK:
        o->status = 206;
        o->offset = first;
        o->length = last - first + 1;
        snprintf(o->content_range, sizeof o->content_range,
                 "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, first, last, o->size);
        break;
    case RANGE_UNSATISFIABLE:
        o->status = 416;
        o->offset = o->length = 0;
        snprintf(o->content_range, sizeof o->content_range, "bytes */%" PRIu64, o->size);
        break;
    default:
        break;
    }
}

/* ---- paths ---------------------------------------------------------------------- */

static bool has_encoded_slash(const char *p, size_t n)
{
    for (size_t i = 0; i + 2 < n; i++)
        if (p[i] == '%' && p[i + 1] == '2' && str_lower_char((unsigned char)p[i + 2]) == 'f')
            return true;
    return false;
}

/* Defence in depth before the kernel sees anything: openat2 would catch
   ".." escapes anyway, but a backslash, NUL or leftover %2F means the
   caller's normalization and ours disagree, and hidden files (".git",
   ".env", ".htpasswd") are never content.  Hidden segments are looked for
   in the part after the stripped prefix only: that is the part that names
   a file under the root. */
static bool path_is_safe(h1_slice_t path, size_t strip)
{
    if (path.n == 0 || path.p[0] != '/' || strip > path.n)
        return false;
    if (memchr(path.p, '\0', path.n) || memchr(path.p, '\\', path.n) ||
        has_encoded_slash(path.p, path.n))
        return false;
    const char *p = path.p, *end = path.p + path.n, *rest = path.p + strip;
    while (p < end) {
        const char *s = p;
        while (p < end && *p != '/')
            p++;
        if (p - s == 2 && s[0] == '.' && s[1] == '.')
            return false;
        if (p > s && s >= rest && s[0] == '.')
            return false;
        p++;
    }
    /* A segment that starts inside the prefix but continues past it, as
       "/static.env" under prefix "/static", names ".env" under the root. */
    return strip == 0 || strip == path.n || rest[-1] == '/' || rest[0] != '.';
}

/* Open rel under root (flags without O_CLOEXEC, which is always added;
   openat2 refuses O_PATH combined with anything but O_DIRECTORY, O_NOFOLLOW
   and O_CLOEXEC).  EAGAIN means the kernel saw a concurrent rename or
   mount during a ".." walk and could not prove containment: try again. */
static int open_beneath(int root_fd, const char *rel, uint64_t flags)
{
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = flags | O_CLOEXEC;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
    for (int tries = 0;; tries++) {
        long fd = syscall(SYS_openat2, root_fd, rel, &how, sizeof how);
        if (fd >= 0 || errno != EAGAIN || tries == 3)
            return (int)fd;
    }
}

/* The status for a failed open, or -1 for an error to report (500). EXDEV
   and ELOOP are what RESOLVE_BENEATH / RESOLVE_NO_MAGICLINKS answer to an
   escape; ENXIO is a socket. */
static int open_errno_status(int err)
{
    switch (err) {
    case ENOENT:
    case ENOTDIR:
    case EXDEV:
    case ELOOP:
    case ENAMETOOLONG:
    case ENXIO:
    case ENODEV:
        return 404;
    case EACCES:
    case EPERM:
        return 403;
    default:
        return -1;
    }
}

typedef struct {
    char buf[PATH_MAX];
    size_t dir_len;  /* rel of the directory part (no trailing '/') */
    size_t len;      /* whole rel, with the index name when slash */
    size_t name_off; /* start of the last segment, for the content type */
    bool slash;      /* the request path ends in '/' */
} rel_path_t;

/* The NUL-terminated path relative to the root: the request path minus the
   stripped prefix and leading slashes, plus the index file after a '/'. */
static bool build_rel(const static_req_t *r, rel_path_t *rp)
{
    const char *p = r->path.p + r->strip, *end = r->path.p + r->path.n;
    const char *index = r->index && r->index[0] ? r->index : STATIC_DEFAULT_INDEX;
    size_t ilen = strlen(index);
    while (p < end && *p == '/')
        p++;
    size_t n = (size_t)(end - p);
    rp->slash = r->path.p[r->path.n - 1] == '/';
    while (n > 0 && p[n - 1] == '/')
        n--;
    if (n + 1 + ilen + 1 > sizeof rp->buf)
        return false;
    memcpy(rp->buf, p, n);
    rp->dir_len = rp->len = n;
    if (rp->slash) {
        if (n > 0)
            rp->buf[rp->len++] = '/';
        memcpy(rp->buf + rp->len, index, ilen);
        rp->len += ilen;
    }
    rp->buf[rp->len] = '\0';
    const char *slash = memrchr(rp->buf, '/', rp->len);
    rp->name_off = slash ? (size_t)(slash + 1 - rp->buf) : 0;
    return true;
}

/* After a missing index: 403 for an existing directory (like nginx: the
   listing is forbidden, not absent), 404 otherwise. */
static int missing_index_status(int root_fd, rel_path_t *rp)
{
    rp->buf[rp->dir_len] = '\0';
    int fd = open_beneath(root_fd, rp->dir_len ? rp->buf : ".", O_PATH | O_DIRECTORY);
    if (fd < 0)
        return open_errno_status(errno);
    close(fd);
    return 403;
}

static void fill_metadata(const struct stat *st, const rel_path_t *rp, static_result_t *o)
{
    o->size = (uint64_t)st->st_size;
    o->offset = 0;
    o->length = o->size;
    o->mtime = st->st_mtim.tv_sec;
    static_format_http_date(o->mtime, o->last_modified);
    /* Strong: size plus nanosecond mtime changes whenever the content does
       in practice, and If-Range needs a strong validator (§13.1.5). */
    uint64_t ns = (uint64_t)st->st_mtim.tv_sec * 1000000000u + (uint64_t)st->st_mtim.tv_nsec;
    snprintf(o->etag, sizeof o->etag, "\"%" PRIx64 "-%" PRIx64 "\"", o->size, ns);
    o->content_type = static_content_type(rp->buf + rp->name_off, rp->len - rp->name_off);
}

/* Is a not older than b (nanoseconds count)? */
static bool not_older(const struct timespec *a, const struct timespec *b)
{
    return a->tv_sec > b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec >= b->tv_nsec);
}

/* The first precompressed copy of rp's file that is a regular file not
 * older than it (*st the file's stat): its fd, with *st its stat, and
 * o->variant set; -1 when none.  rp->buf is left as it was. */
static int open_variant(int root_fd, const static_req_t *r, rel_path_t *rp, struct stat *st, static_result_t *o)
{
    for (size_t i = 0; i < r->nvariants; i++) {
        size_t sl = strlen(r->variants[i]);
        struct stat vst;
        if (rp->len + sl + 1 > sizeof rp->buf)
            continue;
        memcpy(rp->buf + rp->len, r->variants[i], sl + 1);
        int fd = open_beneath(root_fd, rp->buf, O_RDONLY | O_NONBLOCK | O_NOCTTY);
        rp->buf[rp->len] = '\0';
        if (fd < 0)
            continue;
        if (fstat(fd, &vst) == 0 && S_ISREG(vst.st_mode) && not_older(&vst.st_mtim, &st->st_mtim)) {
            *st = vst;
            o->variant = (int)i;
            return fd;
        }
        close(fd);
    }
    return -1;
}

/*
 * Open the file the request names and set o->fd and metadata; returns a
 * final status (without an open fd) or 0 when a regular file is open.
 * O_NONBLOCK keeps open(2) of a FIFO from waiting for a writer; it has no
 * effect on reads or sendfile(2) of a regular file.  A precompressed copy
 * the request asks for (r->variants) replaces the file, its content type
 * aside.
 */
static int open_file(int root_fd, const static_req_t *r, static_result_t *o)
{
    rel_path_t rp;
    struct stat st;
    if (!build_rel(r, &rp))
        return 404;
    int fd = open_beneath(root_fd, rp.len ? rp.buf : ".", O_RDONLY | O_NONBLOCK | O_NOCTTY);
    if (fd < 0 && rp.slash && errno == ENOENT)
        return missing_index_status(root_fd, &rp);
    if (fd < 0)
        return open_errno_status(errno);
    if (fstat(fd, &st) < 0) {
        int err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        /* A directory named without its '/': redirect so that relative
           links in its index resolve against the directory. */
        if (S_ISDIR(st.st_mode) && !rp.slash) {
            o->location_suffix[0] = '/';
            return 301;
        }
        return 404;
    }
    int vfd = rp.len && r->nvariants ? open_variant(root_fd, r, &rp, &st, o) : -1;
    if (vfd >= 0) {
        close(fd);
        fd = vfd;
    }
    o->fd = fd;
    fill_metadata(&st, &rp, o);
    return 0;
}

static void result_init(static_result_t *o, uint32_t expires_s)
{
    memset(o, 0, sizeof *o);
    o->fd = -1;
    o->variant = -1;
    o->expires_s = expires_s;
}

static void drop_fd(static_result_t *o)
{
    if (o->fd >= 0)
        close(o->fd);
    o->fd = -1;
}

int static_serve(int root_fd, const static_req_t *req, static_result_t *out)
{
    result_init(out, req->expires_s);
    if (req->method != H1_METHOD_GET && req->method != H1_METHOD_HEAD) {
        out->status = 405;
        return 0;
    }
    if (!path_is_safe(req->path, req->strip)) {
        out->status = 404;
        return 0;
    }
    int st = open_file(root_fd, req, out);
    if (st < 0) {
        out->status = 500;
        return -1;
    }
    if (st > 0) {
        out->status = st;
        return 0;
    }
    out->status = 200;
    st = preconditions(req, out);
    if (st != 0)
        out->status = st;
    else
        apply_range(req, out);
    /* A body only for 200/206 to GET; HEAD gets the same fields (§9.3.2). */
    if (req->method != H1_METHOD_GET || (out->status != 200 && out->status != 206))
        drop_fd(out);
    return 0;
}

void static_conditions(const static_req_t *req, static_result_t *out)
{
    out->status = 200;
    out->offset = 0;
    out->length = out->size;
    int st = preconditions(req, out);
    if (st != 0)
        out->status = st;
    else
        apply_range(req, out);
}

int static_open_root(const char *root)
{
    return open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
}

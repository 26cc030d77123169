/*
 * cmd_admin.c - reload, status and health: HTTP requests to proxyd's admin
 * unix socket.  When nothing answers there, proxyd is not running: say so
 * and exit 3.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "../common/ruletable.h"
#include "../common/str.h"
#include "../common/util.h"
#include "cli.h"

static char *admin_path(cli_t *cli)
{
    store_t st;
    if (cli_open_store(cli, &st, STORE_RDONLY) < 0)
        return NULL;
    uint8_t *blob = NULL;
    size_t len;
    int64_t id;
    rt_table_t t;
    char why[256], *path = NULL;
    if (store_active(&st, &id, &blob, &len) < 0 || blob == NULL)
        fprintf(stderr, "proxyctl: %s\n", blob ? st.err : "the store has no active generation");
    else if (rt_open(&t, blob, len, why, sizeof(why)) < 0)
        fprintf(stderr, "proxyctl: generation %lld: %s\n", (long long)id, why);
    else
        path = path_beside(cli->db, rt_cstr(&t, t.global->admin_socket));
    free(blob);
    store_close(&st);
    return path;
}

/* One request, the whole response into out (NUL-terminated, growing as the
 * answer needs: /status of 10,000 sites is several MiB); returns the status
 * code or -1. */
static int admin_request(const char *path, const char *method, const char *target, str_buf_t *out)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    /* A master that accepts but never answers counts as not running (keepalived's
     * track script must get its answer within its own timeout). */
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    char req[256];
    int n = snprintf(req, sizeof(req), "%s %s HTTP/1.1\r\nHost: proxyd\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                     method, target);
    if (write(fd, req, (size_t)n) == n) {
        ssize_t r;
        do {
            str_reserve(out, 65536);
            r = read(fd, out->p + out->len, out->cap - out->len - 1);
            if (r > 0)
                out->len += (size_t)r;
        } while (r > 0);
    }
    close(fd);
    str_reserve(out, 1);
    out->p[out->len] = '\0';
    if (out->len < 12 || strncmp((const char *)out->p, "HTTP/1.", 7) != 0) {
        errno = EPROTO;
        return -1;
    }
    return atoi((const char *)out->p + 9);
}

static int call(cli_t *cli, const char *method, const char *target, int print_body)
{
    char *path = admin_path(cli);
    if (path == NULL)
        return EXIT_RUNTIME;
    str_buf_t resp = {0};
    int status = admin_request(path, method, target, &resp);
    const char *body = resp.p ? strstr((const char *)resp.p, "\r\n\r\n") : NULL;
    int rc = EXIT_OK;
    if (status < 0) {
        fprintf(stderr, "proxyctl: proxyd is not running (no answer on admin socket %s: %s)\n", path, strerror(errno));
        rc = EXIT_RUNTIME;
    } else if (status != 200) {
        fprintf(stderr, "proxyctl: proxyd answered %d: %s\n", status, body ? body + 4 : "");
        rc = EXIT_RUNTIME;
    } else if (print_body) {
        fputs(body ? body + 4 : "", stdout);
    }
    str_buf_free(&resp);
    free(path);
    return rc;
}

int cmd_reload(cli_t *cli, int argc, char **argv)
{
    (void)argv;
    if (argc != 1)
        return cli_usage(find_command("reload"));
    int rc = call(cli, "POST", "/reload", 0);
    if (rc == EXIT_OK)
        printf("proxyd reloaded\n");
    return rc;
}

int cmd_status(cli_t *cli, int argc, char **argv)
{
    (void)argv;
    if (argc > 2 || (argc == 2 && !cli->json))
        return cli_usage(find_command("status"));
    return call(cli, "GET", "/status", 1);
}

int cmd_health(cli_t *cli, int argc, char **argv)
{
    (void)argv;
    if (argc != 1)
        return cli_usage(find_command("health"));
    return call(cli, "GET", "/health", 0);
}

/*
 * net.c - socket addresses and listeners (see net.h).
 */
#include "core/net.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

int net_sockaddr(const rt_table_t *t, const rt_sockaddr_t *a, struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof(*ss));
    if (a->kind == RT_ADDR_INET) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons(a->port);
        memcpy(&s4->sin_addr, a->ip, 4);
        *len = sizeof(*s4);
    } else if (a->kind == RT_ADDR_INET6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(a->port);
        memcpy(&s6->sin6_addr, a->ip, 16);
        *len = sizeof(*s6);
    } else if (a->kind == RT_ADDR_UNIX) {
        struct sockaddr_un *su = (struct sockaddr_un *)ss;
        su->sun_family = AF_UNIX;
        snprintf(su->sun_path, sizeof(su->sun_path), "%s", rt_cstr(t, a->addr) + 5);
        *len = sizeof(*su);
    } else {
        return -1;
    }
    return 0;
}

int net_listen(const rt_table_t *t, const rt_listen_t *l, int backlog)
{
    struct sockaddr_storage ss;
    socklen_t len;
    if (net_sockaddr(t, &l->sa, &ss, &len) < 0)
        return -1;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    if (fd < 0)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)); /* [::] and 0.0.0.0 side by side */
    if (bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, backlog) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/*
 * modules.c - the registry of proxyd's modules (module.h), in the order
 * their hooks run: per-generation state in this order at load (and freed
 * in reverse), worker_init in this order at worker start, so a filter
 * listed later sits nearer the top of its chain (runs first).
 */
#include "core/module.h"

#include <stddef.h>

#include "cache/cache.h"
#include "conn/conn.h"
#include "conn/tls.h"
#include "filters/compress.h"
#include "filters/headers.h"
#include "filters/spool.h"
#include "handlers/static_handler.h"
#include "http/accesslog.h"
#include "http/h1session.h"
#include "http/h2session.h"
#include "http/limit.h"
#include "http/request.h"
#include "http/route_regex.h"
#include "upstream/balance.h"
#include "upstream/health.h"
#include "upstream/pool.h"
#include "upstream/resolve.h"

const module_t *const proxyd_modules[] = {
    &conn_module,
    &h1_session_module,
    &h2_session_module,
    &request_module,
    &accesslog_module,
    &route_regex_module,
    &limit_module,
    &static_module,
    &resolve_module,
    &balance_module,
    &tls_module,
    &health_module,
    &pool_module,
    &spool_filter_module,    /* nearest the session: holds what the client cannot take yet (buffering) */
    &cache_module,           /* below compression: it stores the compressed bytes, one entry per coding */
    &compress_filter_module, /* below headers: it sees the route's and the preset's fields */
    &headers_filter_module,
    NULL,
};

#define EACH(m) for (const module_t *const *m = proxyd_modules; *m; m++)

int modules_worker_init(void)
{
    EACH(m)
    if ((*m)->worker_init && (*m)->worker_init() < 0)
        return -1;
    return 0;
}

void modules_worker_idle(void)
{
    EACH(m)
    if ((*m)->worker_idle)
        (*m)->worker_idle();
}

void modules_worker_switch(struct tref *t)
{
    EACH(m)
    if ((*m)->worker_switch)
        (*m)->worker_switch(t);
}

void modules_worker_drain(void)
{
    EACH(m)
    if ((*m)->worker_drain)
        (*m)->worker_drain();
}

void modules_worker_exit(void)
{
    EACH(m)
    if ((*m)->worker_exit)
        (*m)->worker_exit();
}

/*
 * modules.c - the registry of proxyd's modules (module.h), in the order
 * their hooks run: per-generation state in this order at load (and freed
 * in reverse), worker_init in this order at worker start, so a filter
 * listed later sits nearer the top of its chain (runs first).
 */
#include "core/module.h"

#include <stddef.h>

#include "conn/tls.h"
#include "filters/headers.h"
#include "handlers/static_handler.h"
#include "upstream/balance.h"
#include "upstream/health.h"
#include "upstream/pool.h"

const module_t *const proxyd_modules[] = {
    &static_module,
    &balance_module,
    &tls_module,
    &health_module,
    &pool_module,
    &headers_filter_module,
    NULL,
};

/*
 * headers.h - the response header filter: the route's headers.response
 * (remove, then set with variables expanded) and the site's security
 * header preset (SPEC §9 "Security headers") with HSTS.  The route's own
 * headers win over the preset; the preset replaces the upstream's value of
 * the same header.
 */
#ifndef PROXYD_FILTER_HEADERS_H
#define PROXYD_FILTER_HEADERS_H

#include "http/request.h"

extern const module_t headers_filter_module;

#endif

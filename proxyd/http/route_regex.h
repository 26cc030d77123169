/*
 * route_regex.h - the path_regex routes of a generation, for the route
 * phase: compiled once per load (a module), matched with the PCRE2 limits
 * of common/route.h.  A match that errors is neither a match nor a miss:
 * route_match fails closed on it (issue 17), and it is logged at most once
 * a second.
 */
#ifndef PROXYD_ROUTE_REGEX_H
#define PROXYD_ROUTE_REGEX_H

#include "core/table.h"

extern const module_t route_regex_module;

/* route_match's regex callback (ud: the tref_t): 1 match, 0 no match, -1 error. */
int route_regex_match(void *ud, uint32_t route, const char *path, size_t n);

#endif

/*
 * dump.h - a verified rule table as readable text or JSON: the whole table
 * (dump) or single records (route-test's explanation).
 */
#ifndef PROXYCTL_DUMP_H
#define PROXYCTL_DUMP_H

#include <stdio.h>

#include <jansson.h>

#include "../common/ruletable.h"

void dump_table(const rt_table_t *t, FILE *out);
void dump_route(const rt_table_t *t, uint32_t r, const char *indent, FILE *out);
void dump_upstream(const rt_table_t *t, uint32_t u, const char *indent, FILE *out);
/* The site's compression line (nothing when it compresses nothing). */
void dump_compression(const rt_table_t *t, const rt_site_t *s, const char *indent, FILE *out);
void dump_policy(const rt_table_t *t, uint32_t p, const char *indent, FILE *out);
/* The same as JSON values (the caller owns them), for --json. */
json_t *dump_json_str(const rt_table_t *t, rt_str_t s); /* bytes that are not UTF-8 become '?' */
json_t *dump_json_table(const rt_table_t *t);
json_t *dump_json_route(const rt_table_t *t, uint32_t r);
json_t *dump_json_upstream(const rt_table_t *t, uint32_t u);
json_t *dump_json_policy(const rt_table_t *t, uint32_t p);
json_t *dump_json_compression(const rt_table_t *t, const rt_site_t *s); /* null when it compresses nothing */
/* "30s", "5m", "250ms" */
const char *dump_duration(uint32_t ms, char buf[32]);

#endif

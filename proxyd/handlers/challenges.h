/*
 * challenges.h - the ACME HTTP-01 answers (token -> key authorization) the
 * workers serve at /.well-known/acme-challenge/, in shared memory that only
 * the master writes.
 *
 * proxyctl renew-cert puts each challenge in the store's acme_challenges
 * table and then asks proxyd over the admin socket (POST /challenges) to
 * read them again; the master also reads them on every reload and whenever
 * the store's files change (a 1 s check of their size and time), so one
 * written by anything else (an older proxyctl) is served within a second.
 * Workers never open the store.
 *
 * The region is a sequence lock: the master makes the count odd while it
 * rewrites the entries; a reader copies what it needs and retries when the
 * count moved.  A killed reader leaves nothing held.
 */
#ifndef PROXYD_CHALLENGES_H
#define PROXYD_CHALLENGES_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define CHALLENGES_MAX      64
#define CHALLENGE_TOKEN_MAX 128
#define CHALLENGE_KA_MAX    256

/* Master, before forking: map the region.  0 or -1 with errno. */
int challenges_init(void);
/* Master: read the unexpired challenges of the store db and publish them:
 * how many, or -1 with a reason in err. */
int challenges_refresh(const char *db, char *err, size_t errlen);
/* Master, on a timer: refresh when the store's files changed since the last
 * look. */
void challenges_poll(const char *db);
/* Worker: the key authorization for token[0..n) into out (cap bytes): its
 * length, or -1 when there is none (or it expired). */
ssize_t challenges_find(const char *token, size_t n, char *out, size_t cap);

#endif

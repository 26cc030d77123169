/*
 * compress.h - response compression (SPEC §9 "Compression",
 * docs/compression.md): a header filter that decides, per response,
 * whether and how to compress, and a body filter that does it as the body
 * streams, with gzip (zlib), br (brotli) or zstd (Zstandard).
 *
 * The decision, in order (the first that fails sends the response as it is):
 *   the site has a coding on; the status has a body to compress (not 1xx,
 *   204, 206 or 304; not a tunnel); no Content-Encoding yet; no
 *   Cache-Control: no-transform; the Content-Type is one of the site's
 *   types; a known Content-Length is at least min_length (an unknown one,
 *   chunked or streamed, counts as long enough).  Such a response varies
 *   with Accept-Encoding, so it gets Vary: Accept-Encoding (merged into a
 *   Vary it has, never twice), HEAD answers included.  Then, unless it is
 *   a HEAD answer or the request's Accept-Encoding takes none of the
 *   site's codings (common/coding.h), it is compressed: Content-Encoding
 *   set, Content-Length dropped (chunked on HTTP/1.1, close-delimited on
 *   HTTP/1.0), a strong ETag made weak (W/), Accept-Ranges dropped.
 *
 * Invariants:
 *  - A response that is not compressed costs one flag test per filter call.
 *  - Memory per compressed response is bounded whatever the body size: the
 *    compressor's own state, one 16 KiB output buffer, and, only when the
 *    session is full at the moment a compressor emits a large block, a
 *    spill of at most that block; while any of it is held, the space
 *    filter answers 0, so the producer stops.
 *  - The compressor is flushed whenever the producer has nothing more for
 *    now (HTTP_BODY_FLUSH), so a slow stream or SSE is not held back.
 *  - Compressor contexts are per worker and reused (deflateReset,
 *    ZSTD_CCtx_reset); brotli has no reset and is made per response.  All
 *    are released when the request ends, however it ends.
 */
#ifndef PROXYD_FILTER_COMPRESS_H
#define PROXYD_FILTER_COMPRESS_H

#include "../common/coding.h"
#include "http/request.h"

extern const module_t compress_filter_module;

/* The codings r's Accept-Encoding fields take, as parsed by coding.h. */
void compress_accept(const request_t *r, coding_accept_t *a);
/* Add Vary: Accept-Encoding to r's response unless it says so already. */
void compress_vary(request_t *r);

#endif

/* BLAKE2b (RFC 7693), just enough to derive event ids exactly as busd's Python SDK does. */
#ifndef C_PARSER_BLAKE2B_H
#define C_PARSER_BLAKE2B_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint8_t b[128];  /* input buffer */
    uint64_t h[8];   /* chained state */
    uint64_t t[2];   /* total number of bytes */
    size_t c;        /* pointer for b[] */
    size_t outlen;   /* digest size */
} blake2b_ctx;

/* Unkeyed hashing only; outlen is 1..64 bytes. */
void blake2b_init(blake2b_ctx *ctx, size_t outlen);
void blake2b_update(blake2b_ctx *ctx, const void *in, size_t inlen);
void blake2b_final(blake2b_ctx *ctx, void *out);

#endif

/* Force-included (`-include`) into llama.cpp's sources by `make install` and the benchmarks'
   llama-server build. GCC 12's _tile_loadconfig tells the optimizer that `ldtilecfg` reads 8
   bytes ("m" on a pointer-sized lvalue) of the 64-byte tile configuration, so the stores of the
   other 56 are dropped, ldtilecfg loads garbage and the CPU faults: SIGSEGV in
   ggml_backend_amx_mul_mat on the first prompt (llama.cpp#20824). This macro says all 64 bytes
   are read. Elsewhere (no AMX, clang, other CPUs) the file is empty. */
#pragma once
#if defined(__x86_64__) && defined(__AMX_TILE__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define _tile_loadconfig(cfg) \
    __asm__ volatile("ldtilecfg\t%X0" ::"m"(*(const unsigned char(*)[64])(cfg)))
#endif

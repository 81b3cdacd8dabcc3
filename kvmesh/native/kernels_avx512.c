/* The kernels compiled for AVX-512F; only called when the CPU has it. */
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx512f")
#define KVM_ISA avx512
#include "kernels_impl.h"
#endif

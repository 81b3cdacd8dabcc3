/* The kernels compiled for AVX2; only called when the CPU has it. */
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2")
#define KVM_ISA avx2
#include "kernels_impl.h"
#endif

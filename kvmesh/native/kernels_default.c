/* The kernels for the build's baseline target (SSE2 on x86-64). */
#define KVM_ISA default
#include "kernels_impl.h"

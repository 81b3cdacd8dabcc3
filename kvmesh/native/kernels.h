/* The two C kernels of kvmesh.native, built once per x86 instruction set.
 *
 * kernels_impl.h holds the code; kernels_{sse2,avx2,avx512}.c each compile it
 * for one target (xxhash picks its vector code from the target macros), and
 * _speedups.c calls the best one the CPU supports. The `xxhash` wheel does
 * the same dispatch, so the hashing speeds compare like for like.
 */
#ifndef KVMESH_NATIVE_KERNELS_H
#define KVMESH_NATIVE_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#define KVM_KEY_BYTES 16

/* keys_out[i] = xxh3_128(key_{i-1} || tokens[i*chunk_bytes:(i+1)*chunk_bytes]) as
 * canonical (big-endian) bytes, key_{-1} = root. scratch: KEY_BYTES + chunk_bytes. */
typedef void (*kvm_chain_keys_fn)(const uint8_t *root, const uint8_t *tokens, size_t chunk_bytes,
                                  size_t n, uint8_t *scratch, uint8_t *keys_out);
/* dst[:len] = src[:len]; returns xxh3_64 of the bytes (see kernels_impl.h). */
typedef uint64_t (*kvm_copy_checksum_fn)(uint8_t *dst, const uint8_t *src, size_t len);
/* dst[:len] = src[:len] with cache-bypassing stores (see kernels_impl.h). */
typedef void (*kvm_copy_stream_fn)(uint8_t *dst, const uint8_t *src, size_t len);

#define KVM_DECLARE(isa)                                                                   \
    void kvm_chain_keys_##isa(const uint8_t *, const uint8_t *, size_t, size_t, uint8_t *, \
                              uint8_t *);                                                  \
    uint64_t kvm_copy_checksum_##isa(uint8_t *, const uint8_t *, size_t);                  \
    void kvm_copy_stream_##isa(uint8_t *, const uint8_t *, size_t);

/* The kvm_copy_stream of the best instruction set this CPU has; set when the
 * module is imported (_speedups.c), for the other C files of the module. */
extern kvm_copy_stream_fn kvm_copy_stream_best;

KVM_DECLARE(default)
#if defined(__x86_64__) && defined(__GNUC__)
#define KVM_X86_DISPATCH 1
KVM_DECLARE(avx2)
KVM_DECLARE(avx512)
#endif

#endif

/* Kernel bodies; included by kernels_<isa>.c with KVM_ISA set (see kernels.h).
 * Everything from xxhash.h is static here, so each includer gets a private
 * copy compiled for its own target. */
#include <string.h>

#include "kernels.h"

#define XXH_INLINE_ALL
#include "xxhash.h"

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#define KVM_CAT2(a, b) a##_##b
#define KVM_CAT(a, b) KVM_CAT2(a, b)
#define KVM_FN(name) KVM_CAT(name, KVM_ISA)

/* Blocks of the fused copy: one block is copied, then hashed from L1. */
#define COPY_BLOCK 4096

/* xxh3_128(key || chunk), key + chunk over XXH3_MIDSIZE_MAX bytes, reading the
 * chunk in place: copying each chunk after its key took ~30% of the chain's
 * time. This is XXH3_hashLong_128b_internal with the default secret (xxhash.h
 * 0.8.2), its stripe loop rewritten for an input in two pieces: only stripe 0
 * holds key bytes, so only it is assembled; stripe s > 0 starts at input
 * offset 64*s, i.e. at chunk + 64*s - KVM_KEY_BYTES. Tests check it against
 * xxhash at each edge (short inputs, blocks, the last stripe). */
static XXH128_hash_t hash_key_chunk(const uint8_t *key, const uint8_t *chunk, size_t chunk_bytes)
{
    const uint8_t *secret = XXH3_kSecret;
    const size_t secret_size = sizeof(XXH3_kSecret);
    const size_t per_block = (secret_size - XXH_STRIPE_LEN) / XXH_SECRET_CONSUME_RATE;
    const size_t len = KVM_KEY_BYTES + chunk_bytes;
    const size_t stripes = (len - 1) / XXH_STRIPE_LEN; /* then a last one, ending at len */
    XXH_ALIGN(XXH_ACC_ALIGN) xxh_u64 acc[XXH_ACC_NB] = XXH3_INIT_ACC;
    uint8_t first[XXH_STRIPE_LEN];
    memcpy(first, key, KVM_KEY_BYTES);
    memcpy(first + KVM_KEY_BYTES, chunk, XXH_STRIPE_LEN - KVM_KEY_BYTES);
    XXH3_accumulate_512(acc, first, secret);
    for (size_t s = 1; s < stripes;) {
        size_t in_block = s % per_block;
        size_t run = per_block - in_block < stripes - s ? per_block - in_block : stripes - s;
        XXH3_accumulate(acc, chunk + s * XXH_STRIPE_LEN - KVM_KEY_BYTES,
                        secret + in_block * XXH_SECRET_CONSUME_RATE, run);
        s += run;
        if (s % per_block == 0)
            XXH3_scrambleAcc(acc, secret + secret_size - XXH_STRIPE_LEN);
    }
    XXH3_accumulate_512(acc, chunk + chunk_bytes - XXH_STRIPE_LEN,
                        secret + secret_size - XXH_STRIPE_LEN - XXH_SECRET_LASTACC_START);
    XXH128_hash_t h;
    h.low64 = XXH3_mergeAccs(acc, secret + XXH_SECRET_MERGEACCS_START, (xxh_u64)len * XXH_PRIME64_1);
    h.high64 = XXH3_mergeAccs(acc, secret + secret_size - sizeof(acc) - XXH_SECRET_MERGEACCS_START,
                              ~((xxh_u64)len * XXH_PRIME64_2));
    return h;
}

void KVM_FN(kvm_chain_keys)(const uint8_t *root, const uint8_t *tokens, size_t chunk_bytes,
                            size_t n, uint8_t *scratch, uint8_t *keys_out)
{
    /* Short inputs take other XXH3 paths: those chunks are copied after the key. */
    const int in_place = KVM_KEY_BYTES + chunk_bytes > XXH3_MIDSIZE_MAX;
    XXH128_canonical_t key;
    memcpy(key.digest, root, KVM_KEY_BYTES);
    for (size_t i = 0; i < n; i++) {
        const uint8_t *chunk = tokens + i * chunk_bytes;
        XXH128_hash_t h;
        if (in_place) {
            h = hash_key_chunk(key.digest, chunk, chunk_bytes);
        } else {
            memcpy(scratch, key.digest, KVM_KEY_BYTES);
            memcpy(scratch + KVM_KEY_BYTES, chunk, chunk_bytes);
            h = XXH3_128bits(scratch, KVM_KEY_BYTES + chunk_bytes);
        }
        XXH128_canonicalFromHash(&key, h);
        memcpy(keys_out + i * KVM_KEY_BYTES, key.digest, KVM_KEY_BYTES);
    }
}

/* memcpy with non-temporal (cache-bypassing) stores: a chunk is megabytes, and
 * plain stores first read every destination line into cache (~30% slower
 * here, and they evict the source stream). Caller issues the sfence. */
static void stream_copy(uint8_t *dst, const uint8_t *src, size_t len)
{
#if defined(__AVX512F__)
#define VEC 64
#define LOAD(p) _mm512_loadu_si512((const void *)(p))
#define STREAM(p, v) _mm512_stream_si512((void *)(p), v)
#elif defined(__AVX2__)
#define VEC 32
#define LOAD(p) _mm256_loadu_si256((const __m256i *)(p))
#define STREAM(p, v) _mm256_stream_si256((__m256i *)(p), v)
#elif defined(__SSE2__)
#define VEC 16
#define LOAD(p) _mm_loadu_si128((const __m128i *)(p))
#define STREAM(p, v) _mm_stream_si128((__m128i *)(p), v)
#endif
#ifdef VEC
    size_t head = (size_t)(-(uintptr_t)dst) & (VEC - 1); /* streaming stores need aligned dst */
    head = head < len ? head : len;
    memcpy(dst, src, head);
    size_t i = head;
    for (; i + 4 * VEC <= len; i += 4 * VEC) {
        STREAM(dst + i, LOAD(src + i));
        STREAM(dst + i + VEC, LOAD(src + i + VEC));
        STREAM(dst + i + 2 * VEC, LOAD(src + i + 2 * VEC));
        STREAM(dst + i + 3 * VEC, LOAD(src + i + 3 * VEC));
    }
    memcpy(dst + i, src + i, len - i);
#undef VEC
#undef LOAD
#undef STREAM
#else
    memcpy(dst, src, len);
#endif
}

/* Each block is copied first and hashed second, both from `src`: the copy
 * pulls the block into L1, so the hash costs no second trip to memory. The
 * order matters when `src` is another process's memory: bytes that change
 * after the copy read them show up in the hash (a mismatch, never a silent
 * bad copy); a wrong copy could only pass if the source changed and changed
 * back to the original bytes within the same block's copy and hash. */
uint64_t KVM_FN(kvm_copy_checksum)(uint8_t *dst, const uint8_t *src, size_t len)
{
    XXH3_state_t state;
    XXH3_64bits_reset(&state);
    for (size_t off = 0; off < len; off += COPY_BLOCK) {
        size_t part = len - off < COPY_BLOCK ? len - off : COPY_BLOCK;
        stream_copy(dst + off, src + off, part);
        XXH3_64bits_update(&state, src + off, part);
    }
#if defined(__SSE2__)
    _mm_sfence(); /* streaming stores are weakly ordered: publish them before returning */
#endif
    return XXH3_64bits_digest(&state);
}

/* A plain copy of a chunk-sized buffer with streaming stores: at 2 MiB, glibc's
 * memcpy still uses plain stores (it streams only above a fraction of the L3),
 * and reading every destination line first costs ~30% of the bandwidth. */
void KVM_FN(kvm_copy_stream)(uint8_t *dst, const uint8_t *src, size_t len)
{
    stream_copy(dst, src, len);
#if defined(__SSE2__)
    _mm_sfence();
#endif
}

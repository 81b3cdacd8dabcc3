/* The element math and the row loops of quant.c, compiled for AVX2 + F16C.
 *
 * Included once, by quant.c, inside its KVM_QUANT section (TGT and the kind
 * enums come from there). Rows are m runs of n elements; the run's values
 * and codes are contiguous, its scales one for the run or one per element.
 */
#ifndef KVMESH_NATIVE_QUANT_KERNELS_H
#define KVMESH_NATIVE_QUANT_KERNELS_H

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

#endif

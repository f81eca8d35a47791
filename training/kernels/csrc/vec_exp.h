/* Vector exp for float32 on x86 SIMD (AVX-512; AVX2 + FMA), included by se_cpu.c before the
 * kernels that use it (attention_impl.h, mamba_infer_impl.h). The training path's scalar exp_f32
 * (se_cpu.c) is the reference. All compute 2^t as 2^k 2^r with k = round(t), r = t - k (exact) in
 * [-1/2, 1/2], so that every vector width gives the same values, and 2^r by a polynomial: the
 * general exp (SiLU, softplus) by the degree-6 Taylor polynomial (EXP2_POLY6); the decays of the
 * inference scan (t <= 0) and the softmax weights by one degree-5 minimax polynomial (EXP2_C5*,
 * relative error 2.4e-7 evaluated in float32, against 1.6e-7), in Horner's form for the scan (fewest
 * FMAs: it is bound by their throughput) and in Estrin's for the softmax (shortest chain: it is
 * bound by latency). */
/* 2^r for r in [-1/2, 1/2]: the degree-6 Taylor polynomial of exp(r ln 2) by Horner's rule, for any
 * vector width (FMADD(a, b, c) = a b + c, SET1 a broadcast constant). */
#define EXP2_POLY6(FMADD, SET1, r)                                                                     \
    FMADD(r, FMADD(r, FMADD(r, FMADD(r, FMADD(r, FMADD(r, SET1(1.540353039e-04f), SET1(1.333355815e-03f)), \
                                               SET1(9.618129108e-03f)),                                \
                                     SET1(5.550410866e-02f)),                                          \
                           SET1(2.402265070e-01f)),                                                    \
                 SET1(6.931471806e-01f)),                                                              \
          SET1(1.f))

/* The degree-5 minimax polynomial of 2^r on [-1/2, 1/2] (coefficients of r^0 .. r^5), and its
 * Horner evaluation for any vector width. */
#define EXP2_C50 1.0000001192092896f
#define EXP2_C51 6.931469440460205e-01f
#define EXP2_C52 2.402212023735046e-01f
#define EXP2_C53 5.550713092088699e-02f
#define EXP2_C54 9.675540961325169e-03f
#define EXP2_C55 1.327647129073739e-03f
#define EXP2_POLY5(FMADD, SET1, r)                                                                     \
    FMADD(r, FMADD(r, FMADD(r, FMADD(r, FMADD(r, SET1(EXP2_C55), SET1(EXP2_C54)), SET1(EXP2_C53)),       \
                            SET1(EXP2_C52)),                                                           \
                  SET1(EXP2_C51)),                                                                     \
          SET1(EXP2_C50))

#if defined(__AVX512F__)
#include <immintrin.h>

/* 2^t on 16 lanes (exp_v512): 2^k 2^r with k = round(t) and r = t - k (exact) in [-1/2, 1/2]; 2^r
 * by the degree-6 Taylor polynomial of exp(r ln 2) (relative error < 2e-7), the scaling by one
 * vscalefps; k >= -126 as in exp_f32. */
static inline __m512 exp2_v512(__m512 t) {
    __m512 kf = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_sub_ps(t, kf);
    __m512 p = EXP2_POLY6(_mm512_fmadd_ps, _mm512_set1_ps, r);
    return _mm512_scalef_ps(p, _mm512_max_ps(kf, _mm512_set1_ps(-126.f)));
}

/* 2^t for t <= 0 (the scan's decays, exp(dt A) = 2^(dt A log2 e)): exp2_v512 with the degree-5
 * polynomial; k >= -125, as exp2_neg_v256. */
static inline __m512 exp2_neg_v512(__m512 t) {
    __m512 kf = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 p = EXP2_POLY5(_mm512_fmadd_ps, _mm512_set1_ps, _mm512_sub_ps(t, kf));
    return _mm512_scalef_ps(p, _mm512_max_ps(kf, _mm512_set1_ps(-125.f)));
}

/* exp(x) = 2^(x log2 e) for any x (inf above the float range, 2^-126 scale floor below). */
static inline __m512 exp_v512(__m512 x) { return exp2_v512(_mm512_mul_ps(x, _mm512_set1_ps(1.4426950408889634f))); }
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

/* The AVX-512 functions above on 8 lanes (AVX2 + FMA: AMD Zen 2/3 such as LUMI's, Intel before
 * Skylake-SP): the same polynomial and rounding, 2^k built in the exponent bits (k clamped to
 * [-126, 128]; 128 gives inf, as vscalefps overflows), so the results equal the AVX-512 path's. */
static inline __m256 exp2_v256(__m256 t) {
    __m256 kf = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_sub_ps(t, kf);
    __m256 p = EXP2_POLY6(_mm256_fmadd_ps, _mm256_set1_ps, r);
    kf = _mm256_min_ps(_mm256_max_ps(kf, _mm256_set1_ps(-126.f)), _mm256_set1_ps(128.f));
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(kf), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

/* 2^t for t <= 0 (the scan's decays) with fewer operations: exp2_v256's rounding, the degree-5
 * polynomial, the scaling an integer add of k << 23 to the exponent field of p (exact while 2^k p
 * is normal, so equal to exp2_neg_v512 for t >= -125.5), and k clamped to >= -125 after the
 * conversion, off the polynomial's dependency chain: below 2^-125 a value under 3e-38 instead of 0
 * or a subnormal. */
static inline __m256 exp2_neg_v256(__m256 t) {
    __m256 kf = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_sub_ps(t, kf);
    __m256 p = EXP2_POLY5(_mm256_fmadd_ps, _mm256_set1_ps, r);
    __m256i k = _mm256_max_epi32(_mm256_cvtps_epi32(kf), _mm256_set1_epi32(-125));
    return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), _mm256_slli_epi32(k, 23)));
}

/* 2^t for t <= 0 (score - row max, in log2 units), for softmax weights: t >= -125 so that 2^k
 * stays normal; k = round(t); 2^r for r = t - k in [-1/2, 1/2] by the degree-5 polynomial in
 * Estrin's form (short dependency chain); the scaling by 2^k an integer add to the exponent field. */
static inline __m256 exp2_softmax_v256(__m256 t) {
    t = _mm256_max_ps(t, _mm256_set1_ps(-125.f));
    __m256 kf = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_sub_ps(t, kf), r2 = _mm256_mul_ps(r, r);
    __m256 p01 = _mm256_fmadd_ps(r, _mm256_set1_ps(EXP2_C51), _mm256_set1_ps(EXP2_C50));
    __m256 p23 = _mm256_fmadd_ps(r, _mm256_set1_ps(EXP2_C53), _mm256_set1_ps(EXP2_C52));
    __m256 p45 = _mm256_fmadd_ps(r, _mm256_set1_ps(EXP2_C55), _mm256_set1_ps(EXP2_C54));
    __m256 p = _mm256_fmadd_ps(r2, _mm256_fmadd_ps(r2, p45, p23), p01);
    __m256i k23 = _mm256_slli_epi32(_mm256_cvtps_epi32(kf), 23);
    return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), k23));
}

static inline __m256 exp_v256(__m256 x) { return exp2_v256(_mm256_mul_ps(x, _mm256_set1_ps(1.4426950408889634f))); }
#endif

/* Multi-head self-attention forward for inference on CPU, for the small heads of the TF blocks
 * (head size 4, 6, 8, 12 or 16); float32; included once by se_cpu.c.
 *
 *     out[s, i, h*dh:(h+1)*dh] = softmax_j(<q_si, k_sj> / sqrt(dh)) @ v_s[:, h]      (no mask)
 *
 * Input is the packed projection qkv: (S, L, 3, H, dh) C-contiguous (what F.linear with an
 * nn.MultiheadAttention's in_proj gives, viewed); output (S, L, H * dh), the layout out_proj
 * reads: no transposing copies on either side. Work item i = (sequence s = i / H, head h = i % H).
 *
 * Why not PyTorch's SDPA here: its CPU flash kernel runs blocked GEMMs whose inner dimension is
 * the head size; with heads of 4 or 8 channels those GEMMs are almost all overhead (measured:
 * about 3x slower than this for the time axis of 10 s of audio). Here QB queries share vector
 * lanes: for each key, a score for QB queries costs dh FMAs with the key's channels broadcast,
 * and the softmax needs no horizontal reductions. Two passes over the keys: scores and row
 * maxima (scores kept in a buffer of L * QB), then exp, row sums and the weighted sum of values.
 */

/* Copy head h of sequence s's keys and values, plus their biases bk, bv, into contiguous (L, dh)
 * buffers (dh 4, 6, 8, 12 or 16: loops of a constant length, which compile to vector code). */
#define ATTN_PACK_ROWS(DH)                                                                           \
    for (long j = 0; j < L; j++) {                                                                   \
        const float *row = qkv + (s * L + j) * 3 * C + h * DH;                                       \
        for (long c = 0; c < DH; c++) {                                                              \
            kp[j * DH + c] = row[C + c] + bk[c];                                                     \
            vp[j * DH + c] = row[2 * C + c] + bv[c];                                                 \
        }                                                                                            \
    }

static void attn_pack(const float *restrict qkv, const float *restrict bk, const float *restrict bv, long L,
                      long H, long dh, long s, long h, float *restrict kp, float *restrict vp) {
    long C = H * dh;
    switch (dh) {
    case 4: ATTN_PACK_ROWS(4) break;
    case 6: ATTN_PACK_ROWS(6) break;
    case 8: ATTN_PACK_ROWS(8) break;
    case 12: ATTN_PACK_ROWS(12) break;
    default: ATTN_PACK_ROWS(16) break;
    }
}

#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)
/* AVX2 + FMA (AMD Zen 2/3, Intel before Skylake-SP). 16 vector registers: the generic block below,
 * 16 queries over two registers, spills them. Here a block is 8 queries, one register, in three
 * passes over the keys: scores and row maxima (the query vectors in registers, two keys at a
 * time, each as two partial sums: short dependency chains); the exponentials in place and the
 * row sums; the weighted sum of values (one accumulator per channel). Separate passes because a
 * fused exp + accumulate keeps each exponential's ~40-cycle dependency chain ahead of the FMAs that need it,
 * more than the out-of-order window hides: on an AMD EPYC (dh 8, 20 x 1601 queries, 1 thread, the
 * same background load) 524 ms fused, 336 ms in three passes; ~14 cycles per 8 queries x 8 keys
 * once tuned, where the FLOP limit grants 16 FMAs = 8 cycles. The queries are scaled by
 * log2(e) / sqrt(dh), so that the exponentials are powers of two (exp2_softmax_v256, vec_exp.h). */
#define QB 8

/* Pass 1 over channels [c0, c0 + W) of keys of DH channels: sc[j] = (add ? sc[j] : 0) + <q, k_j> for
 * the block's 8 queries; returns the row maxima of what it stored. The passes are always inlined
 * (an out-of-line copy with a run-time DH and add was 7 % slower at dh 8). */
#define ATTN_SCORES(W)                                                                               \
    static inline __attribute__((always_inline)) __m256 attn_scores_##W(                         \
        const float *restrict kp, long DH, long c0, long L, const float *restrict q, float *restrict sc, \
        int add) {                                                                                   \
        __m256 qr[W];                                                                                \
        _Pragma("GCC unroll 16") for (int c = 0; c < W; c++) qr[c] = _mm256_loadu_ps(q + 8 * (c0 + c)); \
        __m256 mx = _mm256_set1_ps(-INFINITY);                                                       \
        long j = 0;                                                                                  \
        for (; j + 2 <= L; j += 2) {                                                                 \
            const float *k0 = kp + j * DH + c0, *k1 = k0 + DH;                                       \
            __m256 a0 = _mm256_mul_ps(qr[0], _mm256_broadcast_ss(k0));                               \
            __m256 b0 = _mm256_mul_ps(qr[1], _mm256_broadcast_ss(k0 + 1));                           \
            __m256 a1 = _mm256_mul_ps(qr[0], _mm256_broadcast_ss(k1));                               \
            __m256 b1 = _mm256_mul_ps(qr[1], _mm256_broadcast_ss(k1 + 1));                           \
            _Pragma("GCC unroll 16") for (int c = 2; c < W; c += 2) {                                \
                a0 = _mm256_fmadd_ps(qr[c], _mm256_broadcast_ss(k0 + c), a0);                        \
                b0 = _mm256_fmadd_ps(qr[c + 1], _mm256_broadcast_ss(k0 + c + 1), b0);                \
                a1 = _mm256_fmadd_ps(qr[c], _mm256_broadcast_ss(k1 + c), a1);                        \
                b1 = _mm256_fmadd_ps(qr[c + 1], _mm256_broadcast_ss(k1 + c + 1), b1);                \
            }                                                                                        \
            __m256 s0 = _mm256_add_ps(a0, b0), s1 = _mm256_add_ps(a1, b1);                           \
            if (add) {                                                                               \
                s0 = _mm256_add_ps(_mm256_loadu_ps(sc + j * 8), s0);                                 \
                s1 = _mm256_add_ps(_mm256_loadu_ps(sc + j * 8 + 8), s1);                             \
            }                                                                                        \
            _mm256_storeu_ps(sc + j * 8, s0);                                                        \
            _mm256_storeu_ps(sc + j * 8 + 8, s1);                                                    \
            mx = _mm256_max_ps(mx, _mm256_max_ps(s0, s1));                                           \
        }                                                                                            \
        for (; j < L; j++) {                                                                         \
            const float *k0 = kp + j * DH + c0;                                                      \
            __m256 a0 = _mm256_mul_ps(qr[0], _mm256_broadcast_ss(k0));                               \
            __m256 b0 = _mm256_mul_ps(qr[1], _mm256_broadcast_ss(k0 + 1));                           \
            _Pragma("GCC unroll 16") for (int c = 2; c < W; c += 2) {                                \
                a0 = _mm256_fmadd_ps(qr[c], _mm256_broadcast_ss(k0 + c), a0);                        \
                b0 = _mm256_fmadd_ps(qr[c + 1], _mm256_broadcast_ss(k0 + c + 1), b0);                \
            }                                                                                        \
            __m256 s0 = _mm256_add_ps(a0, b0);                                                       \
            if (add) s0 = _mm256_add_ps(_mm256_loadu_ps(sc + j * 8), s0);                            \
            _mm256_storeu_ps(sc + j * 8, s0);                                                        \
            mx = _mm256_max_ps(mx, s0);                                                              \
        }                                                                                            \
        return mx;                                                                                   \
    }

/* Pass 3 over channels [c0, c0 + W): o[c] = sum_j sc[j] v_j[c] / sum, for the block's 8 queries. */
#define ATTN_VALUES(W)                                                                               \
    static inline __attribute__((always_inline)) void attn_values_##W(                           \
        const float *restrict vp, long DH, long c0, long L, const float *restrict sc, __m256 sum,    \
        float *restrict o) {                                                                         \
        __m256 acc[W];                                                                               \
        _Pragma("GCC unroll 16") for (int c = 0; c < W; c++) acc[c] = _mm256_setzero_ps();           \
        for (long j = 0; j < L; j++) {                                                               \
            const float *v = vp + j * DH + c0;                                                       \
            __m256 e = _mm256_loadu_ps(sc + j * 8);                                                  \
            _Pragma("GCC unroll 16") for (int c = 0; c < W; c++)                                     \
                acc[c] = _mm256_fmadd_ps(e, _mm256_broadcast_ss(v + c), acc[c]);                     \
        }                                                                                            \
        _Pragma("GCC unroll 16") for (int c = 0; c < W; c++)                                         \
            _mm256_storeu_ps(o + 8 * (c0 + c), _mm256_div_ps(acc[c], sum));                          \
    }

ATTN_SCORES(4)
ATTN_SCORES(6)
ATTN_SCORES(8)
ATTN_VALUES(4)
ATTN_VALUES(6)
ATTN_VALUES(8)

/* Pass 2: sc[j] <- 2^(sc[j] - mx) in place; returns the row sums. */
static inline __attribute__((always_inline)) __m256 attn_exp(float *restrict sc, long L, __m256 mx) {
    __m256 sum0 = _mm256_setzero_ps(), sum1 = _mm256_setzero_ps();
    long j = 0;
    for (; j + 2 <= L; j += 2) {
        __m256 e0 = exp2_softmax_v256(_mm256_sub_ps(_mm256_loadu_ps(sc + j * 8), mx));
        __m256 e1 = exp2_softmax_v256(_mm256_sub_ps(_mm256_loadu_ps(sc + j * 8 + 8), mx));
        _mm256_storeu_ps(sc + j * 8, e0);
        _mm256_storeu_ps(sc + j * 8 + 8, e1);
        sum0 = _mm256_add_ps(sum0, e0);
        sum1 = _mm256_add_ps(sum1, e1);
    }
    for (; j < L; j++) {
        __m256 e0 = exp2_softmax_v256(_mm256_sub_ps(_mm256_loadu_ps(sc + j * 8), mx));
        _mm256_storeu_ps(sc + j * 8, e0);
        sum0 = _mm256_add_ps(sum0, e0);
    }
    return _mm256_add_ps(sum0, sum1);
}

/* One block of 8 queries. Passes 1 and 3 run on slices of at most 8 channels (heads of 12 as 8 + 4,
 * of 16 as 8 + 8): 16 query vectors or 16 accumulators would take every register. */
#define ATTN_BLOCK(DH)                                                                               \
    static void attn_block_##DH(const float *restrict kp, const float *restrict vp, long L,          \
                                const float *restrict q, float *restrict sc, float *restrict o) {   \
        __m256 mx;                                                                                   \
        if (DH == 4) {                                                                               \
            mx = attn_scores_4(kp, DH, 0, L, q, sc, 0);                                              \
        } else if (DH == 6) {                                                                        \
            mx = attn_scores_6(kp, DH, 0, L, q, sc, 0);                                              \
        } else {                                                                                     \
            mx = attn_scores_8(kp, DH, 0, L, q, sc, 0);                                              \
            if (DH == 12) mx = attn_scores_4(kp, DH, 8, L, q, sc, 1);                                \
            if (DH == 16) mx = attn_scores_8(kp, DH, 8, L, q, sc, 1);                                \
        }                                                                                            \
        __m256 sum = attn_exp(sc, L, mx);                                                            \
        if (DH == 4) {                                                                               \
            attn_values_4(vp, DH, 0, L, sc, sum, o);                                                 \
        } else if (DH == 6) {                                                                        \
            attn_values_6(vp, DH, 0, L, sc, sum, o);                                                 \
        } else {                                                                                     \
            attn_values_8(vp, DH, 0, L, sc, sum, o);                                                 \
            if (DH == 12) attn_values_4(vp, DH, 8, L, sc, sum, o);                                   \
            if (DH == 16) attn_values_8(vp, DH, 8, L, sc, sum, o);                                   \
        }                                                                                            \
    }

#define ATTN_SCORE_SCALE 1.4426950408889634f /* scores in log2 units for exp2_softmax_v256 */
#else
#define QB 16
#define ATTN_SCORE_SCALE 1.f

/* One block of QB queries against all L keys. q: (DH, QB) scaled queries; o: (DH, QB) output. */
#define ATTN_BLOCK(DH)                                                                               \
    static void attn_block_##DH(const float *restrict kp, const float *restrict vp, long L,          \
                                const float *restrict q, float *restrict sc, float *restrict o) {   \
        float mx[QB], sum[QB], acc[DH][QB];                                                          \
        for (long t = 0; t < QB; t++) mx[t] = -INFINITY;                                             \
        for (long j = 0; j < L; j++) {                                                               \
            const float *k = kp + j * DH;                                                            \
            float *srow = sc + j * QB;                                                               \
            _Pragma("omp simd") for (long t = 0; t < QB; t++) {                                      \
                float v = 0;                                                                         \
                for (long c = 0; c < DH; c++) v += q[c * QB + t] * k[c];                             \
                srow[t] = v;                                                                         \
                mx[t] = v > mx[t] ? v : mx[t];                                                       \
            }                                                                                        \
        }                                                                                            \
        for (long t = 0; t < QB; t++) sum[t] = 0;                                                    \
        for (long c = 0; c < DH; c++)                                                                \
            for (long t = 0; t < QB; t++) acc[c][t] = 0;                                             \
        for (long j = 0; j < L; j++) {                                                               \
            const float *v = vp + j * DH, *srow = sc + j * QB;                                       \
            _Pragma("omp simd") for (long t = 0; t < QB; t++) {                                      \
                float e = exp_f32(srow[t] - mx[t]);                                                  \
                sum[t] += e;                                                                         \
                for (long c = 0; c < DH; c++) acc[c][t] += e * v[c];                                 \
            }                                                                                        \
        }                                                                                            \
        for (long c = 0; c < DH; c++)                                                                \
            for (long t = 0; t < QB; t++) o[c * QB + t] = acc[c][t] / sum[t];                        \
    }

#endif

ATTN_BLOCK(4)
ATTN_BLOCK(6)
ATTN_BLOCK(8)
ATTN_BLOCK(12)
ATTN_BLOCK(16)

/* Items [lo, hi). dh must be 4, 6, 8, 12 or 16 (the caller checks). bias: the projection's bias
 * (3 * H * dh, added to q, k and v here, so that the caller's matmul need not broadcast it over
 * the whole output first), or NULL for none. Returns 0, or -1 without memory. */
int attn_forward_f32(const float *restrict qkv, const float *restrict bias, long S, long L, long H, long dh,
                     long lo, long hi, float *restrict out) {
    (void)S;
    long C = H * dh;
    float *mem = calloc(2 * L * dh + L * QB + 2 * dh * QB + (bias ? 0 : 3 * C), sizeof(float));
    if (!mem) return -1;
    if (!bias) bias = mem + 2 * L * dh + L * QB + 2 * dh * QB; /* zeros */
    float *kp = mem, *vp = kp + L * dh, *sc = vp + L * dh, *q = sc + L * QB, *o = q + dh * QB;
    float scale = ATTN_SCORE_SCALE / sqrtf((float)dh);
    for (long i = lo; i < hi; i++) {
        long s = i / H, h = i % H;
        const float *bq = bias + h * dh;
        attn_pack(qkv, bq + C, bq + 2 * C, L, H, dh, s, h, kp, vp);
        for (long i0 = 0; i0 < L; i0 += QB) {
            long m = L - i0 < QB ? L - i0 : QB;
            for (long t = 0; t < QB; t++) { /* queries past the end repeat the last one */
                const float *row = qkv + (s * L + i0 + (t < m ? t : m - 1)) * 3 * C + h * dh;
                for (long c = 0; c < dh; c++) q[c * QB + t] = (row[c] + bq[c]) * scale;
            }
            switch (dh) {
            case 4: attn_block_4(kp, vp, L, q, sc, o); break;
            case 6: attn_block_6(kp, vp, L, q, sc, o); break;
            case 8: attn_block_8(kp, vp, L, q, sc, o); break;
            case 12: attn_block_12(kp, vp, L, q, sc, o); break;
            default: attn_block_16(kp, vp, L, q, sc, o); break;
            }
            for (long t = 0; t < m; t++) {
                float *dst = out + (s * L + i0 + t) * C + h * dh;
                for (long c = 0; c < dh; c++) dst[c] = o[c * QB + t];
            }
        }
    }
    free(mem);
    return 0;
}

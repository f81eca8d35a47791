/* Inference-only fused Mamba layer, float32, channel-last; included by se_cpu.c after the scan.
 * One call runs [optional RMSNorm] -> in_proj -> causal depthwise conv + SiLU -> x_proj -> dt_proj
 * -> softplus -> selective scan (D skip, silu(z) gate) -> out_proj [-> + residual] on whole
 * sequences, chunk by chunk, so that every intermediate stays in a per-thread buffer of CH rows
 * (no (B, L, E) tensor is ever written). Work item = one sequence (batch row).
 *     x: (nb, L, dm) rows;  out: row t of sequence b at out + (b L + t) ldo, dm values
 *     normw: (dm) RMSNorm weight or NULL (then x goes to in_proj as is); eps its epsilon
 *     reverse: the sequence is read (and written) from its last row to its first (flip, mixer, flip)
 *     residual: out = x + mixer(...), else out = mixer(...)
 *     winT: (dm, 2E) in_proj weight transposed;  bin: (2E) or NULL
 *     cwT: (K, E) conv weight transposed;  cb: (E) or NULL
 *     wxT: (E, P) x_proj weight transposed, P = R + 2N padded with zero columns to a multiple of 16
 *     wdtT: (R, E);  dtb: (E) dt_proj bias;  At: (N, E) A transposed;  D: (E)
 *     woT: (E, dmp) out_proj weight transposed, dmp = dm padded to a multiple of 16;  bo: (dm) or NULL
 * E must be a multiple of BLOCK. The arithmetic of each step is that of the training path's kernels
 * (the same exp/softplus polynomials, the same order inside the scan and the conv); only the
 * projections' sums run in another order (float32 rounding, ~1e-7 relative). */

/* The projections and the conv work in vectors of VW floats: a whole register of the target (a wider
 * GCC vector than the target's registers is passed through memory: 10x slower). */
#if defined(__AVX512F__)
#define VW 16
#elif defined(__AVX__)
#define VW 8
#else
#define VW 4
#endif
typedef float vecf __attribute__((vector_size(VW * 4)));
#define CH 36 /* time steps per chunk: a multiple of the projections' 6-row tiles (32 = 5 x 6 + 2 ran 2 rows at
               * a time: ~9 % slower on the mambattention layer) */

static inline vecf vload(const float *p) { vecf v; memcpy(&v, p, sizeof v); return v; }
static inline void vstore(float *p, vecf v) { memcpy(p, &v, sizeof v); }

/* The projections read their weights packed in panels of PW columns: panel q holds columns
 * [q PW, (q + 1) PW) of all Kd rows, row after row (Kd x PW floats, contiguous). A column block of a
 * row-major weight would be read with a stride of its row length, often a power of two (in_proj:
 * 2 E floats), whose rows share a few L1 sets and evict each other; a panel is one contiguous run
 * (mambattention's BiMamba, 12 x 1601 steps, 1 thread, AVX2: 122 -> 117 ms; with 36-step chunks
 * instead of 32 as well: 135 -> 117 ms). */
#define PW 16

/* Wp <- the panels of W (Kd x Nc, row stride ldw), Nc a multiple of PW. */
static void pack_panels(const float *restrict W, long ldw, long Kd, long Nc, float *restrict Wp) {
    for (long q = 0; q < Nc / PW; q++)
        for (long k = 0; k < Kd; k++) memcpy(Wp + (q * Kd + k) * PW, W + k * ldw + q * PW, PW * sizeof(float));
}

/* One tile of C: RT rows x NV vectors of columns, over all Kd (the RT x NV sums in registers: 12 of
 * 16 on AVX2 with 6 x 2, enough independent FMA chains to fill both FMA pipes). Vector v of row k
 * of the weight is at W + v vs + k PW (in the packed panels; vs = VW within a panel on AVX2, a
 * whole panel on AVX-512, whose vectors are PW wide). */
#define GEMM_TILE(RT, NV)                                                                              \
    static inline void gemm_tile_##RT##_##NV(const float *restrict A, long lda, long Kd,               \
                                             const float *restrict W, long vs, const float *restrict bias, \
                                             float *restrict C, long ldc) {                            \
        vecf s[RT][NV];                                                                                \
        _Pragma("GCC unroll 8") for (int i = 0; i < RT; i++)                                           \
            _Pragma("GCC unroll 2") for (int v = 0; v < NV; v++) s[i][v] = (vecf){0};                 \
        for (long k = 0; k < Kd; k++) {                                                                \
            vecf w[NV];                                                                                \
            _Pragma("GCC unroll 2") for (int v = 0; v < NV; v++) w[v] = vload(W + v * vs + k * PW);   \
            _Pragma("GCC unroll 8") for (int i = 0; i < RT; i++) {                                     \
                float a = A[i * lda + k];                                                              \
                _Pragma("GCC unroll 2") for (int v = 0; v < NV; v++) s[i][v] += a * w[v];              \
            }                                                                                          \
        }                                                                                              \
        _Pragma("GCC unroll 8") for (int i = 0; i < RT; i++)                                           \
            _Pragma("GCC unroll 2") for (int v = 0; v < NV; v++) {                                     \
                if (bias) s[i][v] += vload(bias + v * VW);                                             \
                vstore(C + i * ldc + v * VW, s[i][v]);                                                 \
            }                                                                                          \
    }
GEMM_TILE(6, 2)
GEMM_TILE(4, 2)
GEMM_TILE(1, 2)
GEMM_TILE(6, 1)
GEMM_TILE(4, 1)
GEMM_TILE(1, 1)

/* C[r, c] = sum_k A[r, k] W[k, c] (+ bias[c]) for r < M, c < Nc (Nc a multiple of PW), W in panels
 * (Wp, pack_panels). Column blocks outer (a block of W stays in L1 for all rows), tiles of rows
 * inner. Each sum runs over k in order, then adds the bias: the same float32 result whatever the
 * tiling. (Tiles of 4 rows with rows outer reached 41-64 GFLOP/s on AVX2 at these shapes, 6-row
 * tiles 75-91, of ~93 peak; the caller's chunks are a multiple of 6 rows.) */
static void gemm_rows_f32(const float *restrict A, long lda, long M, long Kd, const float *restrict Wp, long Nc,
                          const float *restrict bias, float *restrict C, long ldc) {
    long vs = VW < PW ? VW : Kd * PW; /* from a tile's first vector to its second */
    long c = 0;
    for (; c + 2 * VW <= Nc; c += 2 * VW) {
        const float *W = Wp + c / PW * Kd * PW + c % PW, *bc = bias ? bias + c : NULL;
        long r = 0;
        for (; r + 6 <= M; r += 6) gemm_tile_6_2(A + r * lda, lda, Kd, W, vs, bc, C + r * ldc + c, ldc);
        for (; r + 4 <= M; r += 4) gemm_tile_4_2(A + r * lda, lda, Kd, W, vs, bc, C + r * ldc + c, ldc);
        for (; r < M; r++) gemm_tile_1_2(A + r * lda, lda, Kd, W, vs, bc, C + r * ldc + c, ldc);
    }
    for (; c < Nc; c += VW) {
        const float *W = Wp + c / PW * Kd * PW + c % PW, *bc = bias ? bias + c : NULL;
        long r = 0;
        for (; r + 6 <= M; r += 6) gemm_tile_6_1(A + r * lda, lda, Kd, W, vs, bc, C + r * ldc + c, ldc);
        for (; r + 4 <= M; r += 4) gemm_tile_4_1(A + r * lda, lda, Kd, W, vs, bc, C + r * ldc + c, ldc);
        for (; r < M; r++) gemm_tile_1_1(A + r * lda, lda, Kd, W, vs, bc, C + r * ldc + c, ldc);
    }
}

/* The scan of one chunk (m steps) for the BLOCK channels at offset o, as scan_forward_f32 does it:
 * decays exp(dt A) into eb, then the recurrence on the states held in state (N, E). */
static void scan_block_f32(long m, long N, long E, long P, long R, long o, const float *restrict dt,
                           const float *restrict u, const float *restrict xd, const float *restrict At,
                           const float *restrict D, const float *restrict gate, float *restrict state,
                           float *restrict y, float *restrict eb) {
    decays_f32(dt, At, m, N, E, o, eb); /* the training scan's decays: dt and A both of row stride E here */
    for (long k = 0; k < m; k++) {
        const float *bt = xd + k * P + R, *ct = bt + N;
        const float *uk = u + k * E + o, *dk = dt + k * E + o;
        float dtu[BLOCK], yy[BLOCK];
#pragma omp simd
        for (long j = 0; j < BLOCK; j++) {
            dtu[j] = dk[j] * uk[j];
            yy[j] = D[o + j] * uk[j];
        }
        for (long n = 0; n < N; n++) {
            float bn = bt[n], cn = ct[n];
            const float *e = eb + (k * N + n) * BLOCK;
            float *h = state + n * E + o;
#pragma omp simd
            for (long j = 0; j < BLOCK; j++) {
                float hh = e[j] * h[j] + dtu[j] * bn;
                h[j] = hh;
                yy[j] += hh * cn;
            }
        }
        float *yk = y + k * E + o;
        const float *gk = gate + k * E + o;
#pragma omp simd
        for (long j = 0; j < BLOCK; j++) yk[j] = yy[j] * gk[j];
    }
}

#if defined(__AVX512F__)
/* x <- x / (1 + exp(-x)) over n (a multiple of 16) values. */
static void silu_v512(float *restrict x, long n) {
    for (long q = 0; q < n; q += 16) {
        __m512 v = _mm512_loadu_ps(x + q);
        __m512 e = exp_v512(_mm512_sub_ps(_mm512_setzero_ps(), v));
        _mm512_storeu_ps(x + q, _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.f), e)));
    }
}

/* dt <- softplus(dt) = max(dt, 0) + log1p(exp(-|dt|)), gate <- z sigmoid(z), over n (a multiple of 16)
 * values; tmp (n values) is scratch. */
static void softplus_gate_v512(float *restrict dt, const float *restrict z, float *restrict gate, float *restrict tmp,
                               long n) {
    for (long q = 0; q < n; q += 16) {
        __m512 v = _mm512_loadu_ps(dt + q), zz = _mm512_loadu_ps(z + q);
        _mm512_storeu_ps(tmp + q, exp_v512(_mm512_min_ps(v, _mm512_sub_ps(_mm512_setzero_ps(), v))));
        __m512 e = exp_v512(_mm512_sub_ps(_mm512_setzero_ps(), zz));
        _mm512_storeu_ps(gate + q, _mm512_mul_ps(zz, _mm512_div_ps(_mm512_set1_ps(1.f), _mm512_add_ps(_mm512_set1_ps(1.f), e))));
    }
#pragma omp simd
    for (long q = 0; q < n; q++) dt[q] = (dt[q] > 0 ? dt[q] : 0.f) + log1p_unit_f32(tmp[q]);
}

/* scan_block_f32 for N = 16 with the 16 states of the block in registers and the decays computed
 * where they are used (no decay buffer, no state loads and stores per step), as 2^(dt (A log2 e)):
 * one multiply less per decay than exp_f32, and a degree-5 polynomial (exp2_neg_v512: the decays
 * differ from the training kernel's by ~3e-7 relative). */
static void scan_block16_v512(long m, long E, long P, long R, long o, const float *restrict dt,
                              const float *restrict u, const float *restrict xd, const float *restrict At,
                              const float *restrict D, const float *restrict gate, float *restrict state,
                              float *restrict y) {
    __m512 h[16];
    float a2[16 * 16]; /* A log2 e of the block, (n, lane) */
#pragma GCC unroll 16
    for (int n = 0; n < 16; n++) {
        h[n] = _mm512_loadu_ps(state + n * E + o);
        _mm512_storeu_ps(a2 + 16 * n, _mm512_mul_ps(_mm512_loadu_ps(At + n * E + o), _mm512_set1_ps(1.4426950408889634f)));
    }
    __m512 dv = _mm512_loadu_ps(D + o);
    for (long k = 0; k < m; k++) {
        __m512 dk = _mm512_loadu_ps(dt + k * E + o), uk = _mm512_loadu_ps(u + k * E + o);
        __m512 dtu = _mm512_mul_ps(dk, uk), yy = _mm512_mul_ps(dv, uk);
        const float *bt = xd + k * P + R, *ct = bt + 16;
#pragma GCC unroll 16
        for (int n = 0; n < 16; n++) {
            __m512 e = exp2_neg_v512(_mm512_mul_ps(dk, _mm512_loadu_ps(a2 + 16 * n)));
            h[n] = _mm512_fmadd_ps(e, h[n], _mm512_mul_ps(dtu, _mm512_set1_ps(bt[n])));
            yy = _mm512_fmadd_ps(h[n], _mm512_set1_ps(ct[n]), yy);
        }
        _mm512_storeu_ps(y + k * E + o, _mm512_mul_ps(yy, _mm512_loadu_ps(gate + k * E + o)));
    }
#pragma GCC unroll 16
    for (int n = 0; n < 16; n++) _mm512_storeu_ps(state + n * E + o, h[n]);
}
#elif defined(__AVX2__) && defined(__FMA__)
/* The AVX-512 functions above on 8 lanes (AVX2 + FMA), with exp_v256 and exp2_neg_v256 (vec_exp.h). */
static void silu_v256(float *restrict x, long n) {
    for (long q = 0; q < n; q += 8) {
        __m256 v = _mm256_loadu_ps(x + q);
        __m256 e = exp_v256(_mm256_sub_ps(_mm256_setzero_ps(), v));
        _mm256_storeu_ps(x + q, _mm256_div_ps(v, _mm256_add_ps(_mm256_set1_ps(1.f), e)));
    }
}

static void softplus_gate_v256(float *restrict dt, const float *restrict z, float *restrict gate, float *restrict tmp,
                               long n) {
    for (long q = 0; q < n; q += 8) {
        __m256 v = _mm256_loadu_ps(dt + q), zz = _mm256_loadu_ps(z + q);
        _mm256_storeu_ps(tmp + q, exp_v256(_mm256_min_ps(v, _mm256_sub_ps(_mm256_setzero_ps(), v))));
        __m256 e = exp_v256(_mm256_sub_ps(_mm256_setzero_ps(), zz));
        _mm256_storeu_ps(gate + q, _mm256_mul_ps(zz, _mm256_div_ps(_mm256_set1_ps(1.f), _mm256_add_ps(_mm256_set1_ps(1.f), e))));
    }
#pragma omp simd
    for (long q = 0; q < n; q++) dt[q] = (dt[q] > 0 ? dt[q] : 0.f) + log1p_unit_f32(tmp[q]);
}

/* scan_block16_v512 on one half (8 channels at offset o) of a block: the 16 states in registers. */
static void scan_half16_v256(long m, long E, long P, long R, long o, const float *restrict dt,
                             const float *restrict u, const float *restrict xd, const float *restrict At,
                             const float *restrict D, const float *restrict gate, float *restrict state,
                             float *restrict y) {
    __m256 h[16];
    float a2[16 * 8];
#pragma GCC unroll 16
    for (int n = 0; n < 16; n++) {
        h[n] = _mm256_loadu_ps(state + n * E + o);
        _mm256_storeu_ps(a2 + 8 * n, _mm256_mul_ps(_mm256_loadu_ps(At + n * E + o), _mm256_set1_ps(1.4426950408889634f)));
    }
    __m256 dv = _mm256_loadu_ps(D + o);
    for (long k = 0; k < m; k++) {
        __m256 dk = _mm256_loadu_ps(dt + k * E + o), uk = _mm256_loadu_ps(u + k * E + o);
        __m256 dtu = _mm256_mul_ps(dk, uk), yy = _mm256_mul_ps(dv, uk);
        const float *bt = xd + k * P + R, *ct = bt + 16;
#pragma GCC unroll 16
        for (int n = 0; n < 16; n++) {
            __m256 e = exp2_neg_v256(_mm256_mul_ps(dk, _mm256_loadu_ps(a2 + 8 * n)));
            h[n] = _mm256_fmadd_ps(e, h[n], _mm256_mul_ps(dtu, _mm256_set1_ps(bt[n])));
            yy = _mm256_fmadd_ps(h[n], _mm256_set1_ps(ct[n]), yy);
        }
        _mm256_storeu_ps(y + k * E + o, _mm256_mul_ps(yy, _mm256_loadu_ps(gate + k * E + o)));
    }
#pragma GCC unroll 16
    for (int n = 0; n < 16; n++) _mm256_storeu_ps(state + n * E + o, h[n]);
}
#endif

int mamba_infer_f32(const float *restrict x, const float *restrict normw, float eps, int reverse, int residual,
                    const float *restrict winT, const float *restrict bin, const float *restrict cwT,
                    const float *restrict cb, const float *restrict wxT, const float *restrict wdtT,
                    const float *restrict dtb, const float *restrict At, const float *restrict D,
                    const float *restrict woT, const float *restrict bo, long nb, long L, long dm, long E,
                    long R, long N, long P, long K, long lo, long hi, float *restrict out, long ldo) {
    (void)nb;
    long dmp = (dm + 15) / 16 * 16;
    long nfl = CH * dm + (K - 1 + CH) * E + 5 * CH * E + CH * P + CH * dmp + N * E + CH * N * BLOCK;
    long nw = dm * 2 * E + E * P + R * E + E * dmp;
    float *mem = calloc(nfl + nw, sizeof(float));
    if (!mem) return -1;
    float *pin = mem + nfl, *px = pin + dm * 2 * E, *pdt = px + E * P, *pout = pdt + R * E;
    pack_panels(winT, 2 * E, dm, 2 * E, pin);
    pack_panels(wxT, P, E, P, px);
    pack_panels(wdtT, E, R, E, pdt);
    pack_panels(woT, dmp, E, dmp, pout);
    float *xn = mem, *xh = xn + CH * dm, *z = xh + (K - 1 + CH) * E, *u = z + CH * E, *dt = u + CH * E;
    float *y = dt + CH * E, *gate = y + CH * E, *xd = gate + CH * E, *ob = xd + CH * P, *state = ob + CH * dmp;
    float *eb = state + N * E;
    for (long b = lo; b < hi; b++) {
        memset(xh, 0, (K - 1) * E * sizeof(float));
        memset(state, 0, N * E * sizeof(float));
        for (long t0 = 0; t0 < L; t0 += CH) {
            long m = L - t0 < CH ? L - t0 : CH;
            /* rows of this chunk (in scan order), normalised */
            for (long k = 0; k < m; k++) {
                long tt = reverse ? L - 1 - (t0 + k) : t0 + k;
                const float *xr = x + (b * L + tt) * dm;
                float *dst = xn + k * dm;
                if (normw) {
                    float ss = 0;
#pragma omp simd reduction(+ : ss)
                    for (long j = 0; j < dm; j++) ss += xr[j] * xr[j];
                    float rs = 1.f / sqrtf(ss / (float)dm + eps);
                    for (long j = 0; j < dm; j++) dst[j] = xr[j] * rs * normw[j];
                } else {
                    memcpy(dst, xr, dm * sizeof(float));
                }
            }
            /* in_proj: x part after the K - 1 carried rows, z part */
            float *xc = xh + (K - 1) * E;
            gemm_rows_f32(xn, dm, m, dm, pin, E, bin, xc, E);
            gemm_rows_f32(xn, dm, m, dm, pin + E * dm, E, bin ? bin + E : NULL, z, E);
            /* causal conv + SiLU: row k of u reads rows k .. k + K - 1 of xh */
            for (long k = 0; k < m; k++) {
                long q0 = t0 + k - K + 1 < 0 ? K - 1 - t0 - k : 0; /* taps before the start are skipped */
                for (long d = 0; d < E; d += VW) { /* the training kernel's order, sums in registers */
                    vecf acc = cb ? vload(cb + d) : (vecf){0};
                    for (long q = q0; q < K; q++) acc += vload(cwT + q * E + d) * vload(xh + (k + q) * E + d);
                    vstore(u + k * E + d, acc);
                }
            }
#if defined(__AVX512F__)
            silu_v512(u, m * E);
#elif defined(__AVX2__) && defined(__FMA__)
            silu_v256(u, m * E);
#else
#pragma omp simd
            for (long q = 0; q < m * E; q++) u[q] = u[q] / (1.f + exp_f32(-u[q]));
#endif
            memmove(xh, xh + m * E, (K - 1) * E * sizeof(float)); /* keep the last K - 1 rows */
            /* x_proj -> (dt rank, B, C); dt_proj; softplus(dt + bias); gate = silu(z) */
            gemm_rows_f32(u, E, m, E, px, P, NULL, xd, P);
            gemm_rows_f32(xd, P, m, R, pdt, E, NULL, dt, E);
            for (long k = 0; k < m; k++)
                for (long d = 0; d < E; d++) dt[k * E + d] += dtb[d];
#if defined(__AVX512F__)
            softplus_gate_v512(dt, z, gate, y, m * E); /* y: scratch until the scan writes it */
#elif defined(__AVX2__) && defined(__FMA__)
            softplus_gate_v256(dt, z, gate, y, m * E);
#else
#pragma omp simd
            for (long q = 0; q < m * E; q++) {
                float v = dt[q];
                float e = exp_f32(v > 0 ? -v : v);
                dt[q] = (v > 0 ? v : 0.f) + log1p_unit_f32(e);
                float sgm = 1.f / (1.f + exp_f32(-z[q]));
                gate[q] = z[q] * sgm;
            }
#endif
            /* the scan, per BLOCK of channels */
            for (long o = 0; o < E; o += BLOCK) {
#if defined(__AVX512F__)
                if (N == 16) {
                    scan_block16_v512(m, E, P, R, o, dt, u, xd, At, D, gate, state, y);
                    continue;
                }
#elif defined(__AVX2__) && defined(__FMA__)
                if (N == 16) {
                    scan_half16_v256(m, E, P, R, o, dt, u, xd, At, D, gate, state, y);
                    scan_half16_v256(m, E, P, R, o + 8, dt, u, xd, At, D, gate, state, y);
                    continue;
                }
#endif
                scan_block_f32(m, N, E, P, R, o, dt, u, xd, At, D, gate, state, y, eb);
            }
            /* out_proj (+ residual), rows back in sequence order */
            gemm_rows_f32(y, E, m, E, pout, dmp, NULL, ob, dmp);
            for (long k = 0; k < m; k++) {
                long tt = reverse ? L - 1 - (t0 + k) : t0 + k;
                const float *xr = x + (b * L + tt) * dm, *ok = ob + k * dmp;
                float *dst = out + (b * L + tt) * ldo;
                for (long j = 0; j < dm; j++) {
                    float v = bo ? ok[j] + bo[j] : ok[j];
                    dst[j] = residual ? xr[j] + v : v;
                }
            }
        }
    }
    free(mem);
    return 0;
}

#undef CH
#undef PW
#undef VW

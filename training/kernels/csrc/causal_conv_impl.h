/* Causal depthwise conv + SiLU, channel-last; included by se_cpu.c with REAL and SUF defined.
 *     x, out, dout, dx: (nb, L, nd)    wT: (K, nd) (the conv weight (nd, 1, K) transposed)
 *     bias: (nd)    dw_part: (nb, K, nd) double    dbias_part: (nb, nd) double
 *     pre[t, d] = bias[d] + sum_k wT[k, d] x[t - K + 1 + k, d]  (x before the start is 0)
 *     out = silu(pre)
 * Work item = one batch row; items write disjoint outputs. */
#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define FN(name) CAT(name, SUF)
#define EXP CAT(exp, SUF)

/* pre-activations of row t of batch row b into pre[0:nd]. */
static void FN(conv_pre)(const REAL *restrict x, const REAL *restrict wT, const REAL *restrict bias, int has_bias,
                         long L, long nd, long K, long b, long t, REAL *restrict pre) {
    for (long d = 0; d < nd; d++) pre[d] = has_bias ? bias[d] : (REAL)0;
    for (long k = 0; k < K; k++) {
        long tt = t - K + 1 + k;
        if (tt < 0) continue;
        const REAL *xr = x + (b * L + tt) * nd, *wk = wT + k * nd;
#pragma omp simd
        for (long d = 0; d < nd; d++) pre[d] += wk[d] * xr[d];
    }
}

int FN(conv_forward)(const REAL *restrict x, const REAL *restrict wT, const REAL *restrict bias, int has_bias,
                     long nb, long L, long nd, long K, long lo, long hi, REAL *restrict out) {
    (void)nb;
    for (long b = lo; b < hi; b++) {
        REAL *o = out + b * L * nd;
        for (long t = 0; t < L; t++) FN(conv_pre)(x, wT, bias, has_bias, L, nd, K, b, t, o + t * nd);
        /* SiLU over the whole batch row: one long loop keeps the exp/divide pipeline full */
#pragma omp simd
        for (long q = 0; q < L * nd; q++) o[q] = o[q] / ((REAL)1 + EXP(-o[q]));
    }
    return 0;
}

/* g = dout * silu'(pre) is written into dx first, then turned into dx in place from the last row
 * backwards: dx[t] = sum_k wT[k] g[t + K - 1 - k] only reads rows >= t. */
int FN(conv_backward)(const REAL *restrict x, const REAL *restrict wT, const REAL *restrict bias, int has_bias,
                      long nb, long L, long nd, long K, long lo, long hi, const REAL *restrict dout,
                      REAL *restrict dx, double *restrict dw_part, double *restrict dbias_part) {
    (void)nb;
    REAL *gk = malloc(nd * K * sizeof(REAL)); /* K rows of g, a ring indexed by t mod K */
    double *acc = calloc(nd * (K + 1), sizeof(double));
    if (!gk || !acc) { free(gk); free(acc); return -1; }
    for (long b = lo; b < hi; b++) {
        memset(acc, 0, nd * (K + 1) * sizeof(double));
        REAL *gb = dx + b * L * nd;
        const REAL *db = dout + b * L * nd;
        for (long t = 0; t < L; t++) FN(conv_pre)(x, wT, bias, has_bias, L, nd, K, b, t, gb + t * nd);
#pragma omp simd
        for (long q = 0; q < L * nd; q++) { /* g = dout * silu'(pre), over the whole batch row */
            REAL p = gb[q], s = (REAL)1 / ((REAL)1 + EXP(-p));
            gb[q] = db[q] * s * ((REAL)1 + p * ((REAL)1 - s));
        }
        for (long t = 0; t < L; t++) {
            const REAL *g = gb + t * nd;
            for (long d = 0; d < nd; d++) acc[K * nd + d] += g[d];
            for (long k = 0; k < K; k++) {
                long tt = t - K + 1 + k;
                if (tt < 0) continue;
                const REAL *xr = x + (b * L + tt) * nd;
                for (long d = 0; d < nd; d++) acc[k * nd + d] += (double)(g[d] * xr[d]);
            }
        }
        /* dx in place, last row first; keep the K - 1 newest g rows needed by earlier rows */
        for (long t = L - 1; t >= 0; t--) {
            REAL *row = dx + (b * L + t) * nd;
            REAL *gt = gk + (t % K) * nd;
            memcpy(gt, row, nd * sizeof(REAL));
            for (long d = 0; d < nd; d++) row[d] = wT[(K - 1) * nd + d] * gt[d];
            for (long k = 0; k < K - 1; k++) {
                long tt = t + K - 1 - k;
                if (tt >= L) continue;
                const REAL *gr = gk + (tt % K) * nd, *wk = wT + k * nd;
#pragma omp simd
                for (long d = 0; d < nd; d++) row[d] += wk[d] * gr[d];
            }
        }
        memcpy(dw_part + b * K * nd, acc, K * nd * sizeof(double));
        memcpy(dbias_part + b * nd, acc + K * nd, nd * sizeof(double));
    }
    free(gk);
    free(acc);
    return 0;
}

#undef CAT_
#undef CAT
#undef FN
#undef EXP

/* The kernels for one float type; included by selective_scan.c with REAL and SUF defined. */
#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define FN(name) CAT(name, SUF)
#define EXP CAT(exp, SUF)
#define LOG1P_UNIT CAT(log1p_unit, SUF)

/* Per-thread scratch. "Rows" buffers hold one chunk of an item's channels, (chunk, Wp) with
 * Wp = the item's channel count rounded up to BLOCK (zero past the last channel); "block"
 * buffers hold one BLOCK of channels. */
typedef struct {
    REAL *dt, *sg, *gate, *sig, *u, *y, *dy, *dout, *du, *ddelta, *dz; /* rows */
    REAL *state, *a;                                                   /* (N, Wp) */
    REAL *eb, *hb, *dal;  /* block: decays (chunk, N, BLOCK), states (chunk + 1, N, BLOCK), (N, BLOCK) */
    REAL *dBl, *dCl;      /* per-lane partial sums of dB, dC over a chunk's blocks: (chunk, N, BLOCK) */
    double *dA, *dD, *dbias; /* (N, Wp), (Wp), (Wp) */
    void *mem;
} FN(scratch);

static int FN(scratch_alloc)(FN(scratch) *s, long chunk, long N, long nd) {
    long wmax = (nd + BLOCK - 1) / BLOCK * BLOCK, rows = chunk * wmax;
    long nreal = 11 * rows + 2 * N * wmax + 3 * chunk * N * BLOCK + (chunk + 1) * N * BLOCK + N * BLOCK;
    long ndouble = N * wmax + 2 * wmax;
    char *p = calloc(1, ndouble * sizeof(double) + nreal * sizeof(REAL));
    if (!p) return -1;
    s->mem = p;
    s->dA = (double *)p;
    s->dD = s->dA + N * wmax;
    s->dbias = s->dD + wmax;
    REAL *r = (REAL *)(s->dbias + wmax);
    REAL **rowbufs[] = {&s->dt, &s->sg, &s->gate, &s->sig, &s->u, &s->y, &s->dy, &s->dout, &s->du, &s->ddelta, &s->dz};
    for (int q = 0; q < 11; q++, r += rows) *rowbufs[q] = r;
    s->state = r;
    s->a = r + N * wmax;
    s->eb = s->a + N * wmax;
    s->hb = s->eb + chunk * N * BLOCK;
    s->dal = s->hb + (chunk + 1) * N * BLOCK;
    s->dBl = s->dal + N * BLOCK;
    s->dCl = s->dBl + chunk * N * BLOCK;
    return 0;
}

static void FN(item_range)(long i, long groups, long nd, long *b, long *g, long *dlo, long *dhi) {
    long nblk = (nd + BLOCK - 1) / BLOCK;
    *b = i / groups;
    *g = i - *b * groups;
    *dlo = (*g * nblk / groups) * BLOCK;
    long hi = ((*g + 1) * nblk / groups) * BLOCK;
    *dhi = hi < nd ? hi : nd;
}

/* dst[k*Wp + j] = src[(b, t0 + k, dlo + j)] for j < W, zero up to Wp: whole contiguous row pieces. */
static void FN(load_rows)(const REAL *restrict src, long L, long nd, long b, long t0, long m, long dlo, long W,
                          long Wp, REAL *restrict dst) {
    for (long k = 0; k < m; k++) {
        memcpy(dst + k * Wp, src + (b * L + t0 + k) * nd + dlo, W * sizeof(REAL));
        for (long j = W; j < Wp; j++) dst[k * Wp + j] = 0;
    }
}

static void FN(store_rows)(const REAL *restrict src, long L, long nd, long b, long t0, long m, long dlo, long W,
                           long Wp, REAL *restrict dst) {
    for (long k = 0; k < m; k++) memcpy(dst + (b * L + t0 + k) * nd + dlo, src + k * Wp, W * sizeof(REAL));
}

/* The chunk's rows of every per-(t, d) input: dt = softplus(delta + bias) and sg = d dt / d delta
 * (or delta itself and 1), u, and when z is given gate = silu(z), sig = sigmoid(z). */
static void FN(load_chunk)(const REAL *restrict u, const REAL *restrict delta, const REAL *restrict bias,
                           const REAL *restrict z, int flags, long L, long nd, long b, long t0, long m, long dlo,
                           long W, long Wp, FN(scratch) *s) {
    long M = m * Wp;
    FN(load_rows)(delta, L, nd, b, t0, m, dlo, W, Wp, s->dt);
    if (flags & HAS_BIAS)
        for (long k = 0; k < m; k++)
            for (long j = 0; j < W; j++) s->dt[k * Wp + j] += bias[dlo + j];
    if (flags & SOFTPLUS) {
        REAL *restrict dt = s->dt, *restrict sg = s->sg;
#pragma omp simd
        for (long q = 0; q < M; q++) {
            REAL x = dt[q];
            REAL e = EXP(x > 0 ? -x : x); /* exp(-|x|) in (0, 1] */
            REAL inv = (REAL)1 / ((REAL)1 + e);
            sg[q] = x > 0 ? inv : e * inv; /* sigmoid(x) */
            dt[q] = (x > 0 ? x : (REAL)0) + LOG1P_UNIT(e);
        }
    } else {
        for (long q = 0; q < M; q++) s->sg[q] = 1;
    }
    FN(load_rows)(u, L, nd, b, t0, m, dlo, W, Wp, s->u);
    if (flags & HAS_Z) {
        FN(load_rows)(z, L, nd, b, t0, m, dlo, W, Wp, s->gate);
        REAL *restrict gate = s->gate, *restrict sig = s->sig;
#pragma omp simd
        for (long q = 0; q < M; q++) {
            REAL sgm = (REAL)1 / ((REAL)1 + EXP(-gate[q]));
            sig[q] = sgm;
            gate[q] = gate[q] * sgm;
        }
    }
}

/* dblk[j] = D[dlo + o + j] for the block at channel offset o (zero past W or without D). */
static void FN(load_dblk)(const REAL *restrict D, int flags, long dlo, long o, long W, REAL *restrict dblk) {
    for (long j = 0; j < BLOCK; j++) dblk[j] = (flags & HAS_D) && o + j < W ? D[dlo + o + j] : (REAL)0;
}

/* a[n*Wp + j] = A[dlo + j, n] (zero past W: decay 1 on lanes that stay zero). */
static void FN(load_a)(const REAL *restrict At, long nd, long N, long dlo, long W, long Wp, REAL *restrict a) {
    for (long n = 0; n < N; n++)
        for (long j = 0; j < Wp; j++) a[n * Wp + j] = j < W ? At[n * nd + dlo + j] : (REAL)0;
}

/* eb[(k*N + n)*BLOCK + j] = exp(dt[k, o + j] * A[n, o + j]) for the block at channel offset o. */
static void FN(decays)(const REAL *restrict dt, const REAL *restrict a, long m, long N, long Wp, long o,
                       REAL *restrict eb) {
    for (long k = 0; k < m; k++)
        for (long n = 0; n < N; n++) {
            REAL *e = eb + (k * N + n) * BLOCK;
            const REAL *dk = dt + k * Wp + o, *an = a + n * Wp + o;
#pragma omp simd
            for (long j = 0; j < BLOCK; j++) e[j] = EXP(dk[j] * an[j]);
        }
}

/* Forward for items [lo, hi). ckpt may be NULL (no checkpoints). Returns 0, or -1 without memory. */
int FN(scan_forward)(const REAL *restrict u, const REAL *restrict delta, const REAL *restrict At,
                     const REAL *restrict Bt, const REAL *restrict Ct, const REAL *restrict D,
                     const REAL *restrict bias, const REAL *restrict z, int flags, long nb, long L, long nd,
                     long N, long groups, long chunk, long lo, long hi, REAL *restrict out, REAL *restrict ckpt) {
    (void)nb;
    FN(scratch) s;
    if (FN(scratch_alloc)(&s, chunk, N, nd)) return -1;
    long nchunk = (L + chunk - 1) / chunk;
    for (long i = lo; i < hi; i++) {
        long b, g, dlo, dhi;
        FN(item_range)(i, groups, nd, &b, &g, &dlo, &dhi);
        long W = dhi - dlo, Wp = (W + BLOCK - 1) / BLOCK * BLOCK;
        FN(load_a)(At, nd, N, dlo, W, Wp, s.a);
        memset(s.state, 0, N * Wp * sizeof(REAL));
        for (long c = 0; c < nchunk; c++) {
            long t0 = c * chunk, m = L - t0 < chunk ? L - t0 : chunk;
            if (ckpt)
                for (long n = 0; n < N; n++)
                    memcpy(ckpt + ((b * nchunk + c) * N + n) * nd + dlo, s.state + n * Wp, W * sizeof(REAL));
            FN(load_chunk)(u, delta, bias, z, flags, L, nd, b, t0, m, dlo, W, Wp, &s);
            for (long o = 0; o < Wp; o += BLOCK) {
                REAL dblk[BLOCK];
                FN(load_dblk)(D, flags, dlo, o, W, dblk);
                FN(decays)(s.dt, s.a, m, N, Wp, o, s.eb);
                for (long k = 0; k < m; k++) {
                    const REAL *bt = Bt + (b * L + t0 + k) * N, *ct = Ct + (b * L + t0 + k) * N;
                    const REAL *uk = s.u + k * Wp + o, *dk = s.dt + k * Wp + o;
                    REAL dtu[BLOCK], y[BLOCK];
#pragma omp simd
                    for (long j = 0; j < BLOCK; j++) {
                        dtu[j] = dk[j] * uk[j];
                        y[j] = dblk[j] * uk[j];
                    }
                    for (long n = 0; n < N; n++) {
                        REAL bn = bt[n], cn = ct[n];
                        const REAL *e = s.eb + (k * N + n) * BLOCK;
                        REAL *h = s.state + n * Wp + o;
#pragma omp simd
                        for (long j = 0; j < BLOCK; j++) {
                            REAL hh = e[j] * h[j] + dtu[j] * bn;
                            h[j] = hh;
                            y[j] += hh * cn;
                        }
                    }
                    REAL *yk = s.y + k * Wp + o;
                    const REAL *gk = s.gate + k * Wp + o;
                    if (flags & HAS_Z) {
#pragma omp simd
                        for (long j = 0; j < BLOCK; j++) yk[j] = y[j] * gk[j];
                    } else {
                        memcpy(yk, y, sizeof y);
                    }
                }
            }
            FN(store_rows)(s.y, L, nd, b, t0, m, dlo, W, Wp, out);
        }
    }
    free(s.mem);
    return 0;
}

/* Backward for items [lo, hi): a reverse scan that recomputes each chunk's states from ckpt.
 * With the adjoint g_t = dL/dh_t = dy_t C_t + exp(dt_{t+1} A) g_{t+1} (dy before the gate):
 *   du_t = dt_t <g_t, B_t> + D dy_t;   d dt_t = <g_t, A e_t h_{t-1} + B_t u_t>;
 *   dA = sum_t g_t e_t h_{t-1} dt_t;  dB_t = sum_d g_t dt_t u_t;  dC_t = sum_d dy_t h_t.
 * Writes du, ddelta (through the softplus), dz, dA_part, dD_part, dbias_part (sum of ddelta over
 * the batch row); adds to dB_part, dC_part (which must start at zero). */
int FN(scan_backward)(const REAL *restrict u, const REAL *restrict delta, const REAL *restrict At,
                      const REAL *restrict Bt, const REAL *restrict Ct, const REAL *restrict D,
                      const REAL *restrict bias, const REAL *restrict z, int flags, long nb, long L, long nd,
                      long N, long groups, long chunk, long lo, long hi, const REAL *restrict dout,
                      const REAL *restrict ckpt, REAL *restrict du, REAL *restrict ddelta, REAL *restrict dz,
                      double *restrict dA_part, double *restrict dD_part, double *restrict dbias_part,
                      REAL *restrict dB_part, REAL *restrict dC_part) {
    FN(scratch) s;
    if (FN(scratch_alloc)(&s, chunk, N, nd)) return -1;
    long nchunk = (L + chunk - 1) / chunk;
    REAL *gs = s.state; /* the adjoint carried to the previous step, (N, Wp) */
    for (long i = lo; i < hi; i++) {
        long b, g, dlo, dhi;
        FN(item_range)(i, groups, nd, &b, &g, &dlo, &dhi);
        long W = dhi - dlo, Wp = (W + BLOCK - 1) / BLOCK * BLOCK;
        REAL *dBg = dB_part + (g * nb + b) * L * N, *dCg = dC_part + (g * nb + b) * L * N;
        FN(load_a)(At, nd, N, dlo, W, Wp, s.a);
        memset(gs, 0, N * Wp * sizeof(REAL));
        memset(s.dA, 0, N * Wp * sizeof(double));
        memset(s.dD, 0, Wp * sizeof(double));
        memset(s.dbias, 0, Wp * sizeof(double));
        for (long c = nchunk - 1; c >= 0; c--) {
            long t0 = c * chunk, m = L - t0 < chunk ? L - t0 : chunk, M = m * Wp;
            FN(load_chunk)(u, delta, bias, z, flags, L, nd, b, t0, m, dlo, W, Wp, &s);
            FN(load_rows)(dout, L, nd, b, t0, m, dlo, W, Wp, s.dout);
            for (long q = 0; q < M; q++) s.dy[q] = (flags & HAS_Z) ? s.dout[q] * s.gate[q] : s.dout[q];
            memset(s.dBl, 0, 2 * chunk * N * BLOCK * sizeof(REAL)); /* dBl and dCl */
            for (long o = 0; o < Wp; o += BLOCK) {
                long w = W - o < BLOCK ? W - o : BLOCK;
                REAL dblk[BLOCK];
                FN(load_dblk)(D, flags, dlo, o, W, dblk);
                /* (1) decays and states hb[k + 1] of this block (hb[0]: the checkpoint) */
                FN(decays)(s.dt, s.a, m, N, Wp, o, s.eb);
                for (long n = 0; n < N; n++)
                    for (long j = 0; j < BLOCK; j++)
                        s.hb[n * BLOCK + j] = j < w ? ckpt[((b * nchunk + c) * N + n) * nd + dlo + o + j] : (REAL)0;
                for (long k = 0; k < m; k++) {
                    const REAL *bt = Bt + (b * L + t0 + k) * N;
                    const REAL *uk = s.u + k * Wp + o, *dk = s.dt + k * Wp + o;
                    REAL dtu[BLOCK];
                    for (long j = 0; j < BLOCK; j++) dtu[j] = dk[j] * uk[j];
                    for (long n = 0; n < N; n++) {
                        REAL bn = bt[n];
                        const REAL *e = s.eb + (k * N + n) * BLOCK, *hp = s.hb + (k * N + n) * BLOCK;
                        REAL *hn = s.hb + ((k + 1) * N + n) * BLOCK;
#pragma omp simd
                        for (long j = 0; j < BLOCK; j++) hn[j] = e[j] * hp[j] + dtu[j] * bn;
                    }
                }
                /* (2) walk the chunk backwards */
                memset(s.dal, 0, N * BLOCK * sizeof(REAL));
                for (long k = m - 1; k >= 0; k--) {
                    long t = t0 + k, ko = k * Wp + o;
                    const REAL *bt = Bt + (b * L + t) * N, *ct = Ct + (b * L + t) * N;
                    const REAL *uv = s.u + ko, *dk = s.dt + ko, *dy = s.dy + ko;
                    REAL dtu[BLOCK], sdu[BLOCK] = {0}, sdt[BLOCK] = {0}, shc[BLOCK] = {0};
                    for (long j = 0; j < BLOCK; j++) dtu[j] = dk[j] * uv[j];
                    for (long n = 0; n < N; n++) {
                        REAL bn = bt[n], cn = ct[n];
                        const REAL *e = s.eb + (k * N + n) * BLOCK, *hp = s.hb + (k * N + n) * BLOCK;
                        const REAL *hn = hp + N * BLOCK, *an = s.a + n * Wp + o;
                        REAL *gn = gs + n * Wp + o, *dl = s.dal + n * BLOCK;
                        REAL *dbl = s.dBl + (k * N + n) * BLOCK, *dcl = s.dCl + (k * N + n) * BLOCK;
#pragma omp simd
                        for (long j = 0; j < BLOCK; j++) {
                            REAL gg = gn[j] + dy[j] * cn;
                            REAL eh = e[j] * hp[j];
                            sdu[j] += gg * bn;
                            sdt[j] += gg * (an[j] * eh + bn * uv[j]);
                            dl[j] += gg * eh * dk[j];
                            shc[j] += hn[j] * cn;
                            dbl[j] += gg * dtu[j];
                            dcl[j] += dy[j] * hn[j];
                            gn[j] = gg * e[j];
                        }
                    }
                    /* whole BLOCKs (vectorised): padded lanes hold finite values, stored rows skip them */
                    REAL *duk = s.du + ko, *ddk = s.ddelta + ko;
                    const REAL *sgk = s.sg + ko;
                    double *dbs = s.dbias + o, *dDs = s.dD + o;
#pragma omp simd
                    for (long j = 0; j < BLOCK; j++) {
                        duk[j] = sdu[j] * dk[j] + dy[j] * dblk[j];
                        REAL ddt = sdt[j] * sgk[j];
                        ddk[j] = ddt;
                        dbs[j] += (double)ddt;
                        dDs[j] += (double)(dy[j] * uv[j]);
                    }
                    if (flags & HAS_Z) { /* silu'(z) = s (1 + z (1 - s)), s = sigmoid(z), gate = z s */
                        const REAL *sig = s.sig + ko, *gate = s.gate + ko, *dok = s.dout + ko;
                        REAL *dzk = s.dz + ko;
#pragma omp simd
                        for (long j = 0; j < BLOCK; j++)
                            dzk[j] = dok[j] * (shc[j] + dblk[j] * uv[j]) * (sig[j] + gate[j] * ((REAL)1 - sig[j]));
                    }
                }
                for (long n = 0; n < N; n++)
                    for (long j = 0; j < BLOCK; j++) s.dA[n * Wp + o + j] += s.dal[n * BLOCK + j];
            }
            for (long q = 0; q < m * N; q++) { /* one horizontal sum per (t, n) and chunk */
                REAL sb_ = 0, sc_ = 0;

                for (long j = 0; j < BLOCK; j++) {
                    sb_ += s.dBl[q * BLOCK + j];
                    sc_ += s.dCl[q * BLOCK + j];
                }
                dBg[t0 * N + q] += sb_;
                dCg[t0 * N + q] += sc_;
            }
            FN(store_rows)(s.du, L, nd, b, t0, m, dlo, W, Wp, du);
            FN(store_rows)(s.ddelta, L, nd, b, t0, m, dlo, W, Wp, ddelta);
            if (flags & HAS_Z) FN(store_rows)(s.dz, L, nd, b, t0, m, dlo, W, Wp, dz);
        }
        for (long n = 0; n < N; n++)
            for (long j = 0; j < W; j++) dA_part[(b * N + n) * nd + dlo + j] = s.dA[n * Wp + j];
        for (long j = 0; j < W; j++) {
            dD_part[b * nd + dlo + j] = s.dD[j];
            dbias_part[b * nd + dlo + j] = s.dbias[j];
        }
    }
    free(s.mem);
    return 0;
}

#undef CAT_
#undef CAT
#undef FN
#undef EXP
#undef LOG1P_UNIT

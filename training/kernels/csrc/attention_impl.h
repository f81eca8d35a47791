/* Multi-head self-attention forward for inference on CPU, for the small heads of the TF blocks
 * (head size 4 to 16); float32; included once by se_cpu.c.
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

#define QB 16

/* Copy head h of sequence s's keys and values into contiguous (L, dh) buffers. */
static void attn_pack(const float *restrict qkv, long L, long H, long dh, long s, long h, float *restrict kp,
                      float *restrict vp) {
    long C = H * dh;
    for (long j = 0; j < L; j++) {
        const float *row = qkv + (s * L + j) * 3 * C + h * dh;
        memcpy(kp + j * dh, row + C, dh * sizeof(float));
        memcpy(vp + j * dh, row + 2 * C, dh * sizeof(float));
    }
}

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

ATTN_BLOCK(4)
ATTN_BLOCK(8)
ATTN_BLOCK(16)

/* Items [lo, hi). dh must be 4, 8 or 16 (the caller checks). Returns 0, or -1 without memory. */
int attn_forward_f32(const float *restrict qkv, long S, long L, long H, long dh, long lo, long hi,
                     float *restrict out) {
    (void)S;
    long C = H * dh;
    float *mem = malloc((2 * L * dh + L * QB + 2 * dh * QB) * sizeof(float));
    if (!mem) return -1;
    float *kp = mem, *vp = kp + L * dh, *sc = vp + L * dh, *q = sc + L * QB, *o = q + dh * QB;
    float scale = 1.f / sqrtf((float)dh);
    for (long i = lo; i < hi; i++) {
        long s = i / H, h = i % H;
        attn_pack(qkv, L, H, dh, s, h, kp, vp);
        for (long i0 = 0; i0 < L; i0 += QB) {
            long m = L - i0 < QB ? L - i0 : QB;
            for (long t = 0; t < QB; t++) { /* queries past the end repeat the last one */
                const float *row = qkv + (s * L + i0 + (t < m ? t : m - 1)) * 3 * C + h * dh;
                for (long c = 0; c < dh; c++) q[c * QB + t] = row[c] * scale;
            }
            if (dh == 4)
                attn_block_4(kp, vp, L, q, sc, o);
            else if (dh == 8)
                attn_block_8(kp, vp, L, q, sc, o);
            else
                attn_block_16(kp, vp, L, q, sc, o);
            for (long t = 0; t < m; t++) {
                float *dst = out + (s * L + i0 + t) * C + h * dh;
                for (long c = 0; c < dh; c++) dst[c] = o[c * QB + t];
            }
        }
    }
    free(mem);
    return 0;
}

/* The dense codec's element-wise steps at inference on CPU (training/kernels/codec_cpu.py); float32;
 * included once by se_cpu.c.
 *
 * inorm_prelu_f32: instance norm followed by PReLU,
 *
 *     out[b, c] = prelu_c(gamma_c * (x[b, c] - mean) / sqrt(var + eps) + beta_c)
 *
 * over each plane x[b, c] of HW contiguous values (mean and biased variance of that plane, as
 * nn.InstanceNorm2d without running statistics; prelu_c(y) = y > 0 ? y : alpha_c y, one alpha
 * shared by all channels when n_alpha is 1). Work item i = plane (b = i / C, c = i % C). The
 * output planes are contiguous but batch items lie ldo_b values apart, so the result can land in
 * a channel slice of a bigger buffer (the dense blocks' concatenation) without another copy.
 * Two passes over the input (statistics, then the transform), one over the output, where
 * PyTorch's instance_norm + prelu + cat make seven. */

/* Mean and biased variance of n floats in one pass: sums of (x - K) and (x - K)^2 with K the mean
 * of the first block, so that a mean large against the spread does not cancel the variance away;
 * float partial sums over blocks of 512 values (8 lanes), added up in double, so the error does
 * not grow with the plane's size. */
static void plane_moments(const float *restrict x, long n, double *mean, double *var) {
    long m0 = n < 512 ? n : 512;
    float k = 0;
#pragma omp simd reduction(+ : k)
    for (long i = 0; i < m0; i++) k += x[i];
    k /= (float)m0;
    double s = 0, ss = 0;
    for (long i0 = 0; i0 < n; i0 += 512) {
        long m = n - i0 < 512 ? n - i0 : 512;
        float a = 0, b = 0;
#pragma omp simd reduction(+ : a, b)
        for (long i = 0; i < m; i++) {
            float v = x[i0 + i] - k;
            a += v;
            b += v * v;
        }
        s += a;
        ss += b;
    }
    double d = s / (double)n;
    *mean = k + d;
    double v = ss / (double)n - d * d;
    *var = v > 0 ? v : 0;
}

int inorm_prelu_f32(const float *restrict x, const float *restrict gamma, const float *restrict beta,
                    const float *restrict alpha, long n_alpha, float eps, long C, long HW, long lo, long hi,
                    float *restrict out, long ldo_b) {
    for (long i = lo; i < hi; i++) {
        long c = i % C;
        const float *xi = x + i * HW;
        float *o = out + (i / C) * ldo_b + c * HW;
        double mean, var;
        plane_moments(xi, HW, &mean, &var);
        float scale = (float)(gamma[c] / sqrt(var + eps));
        float shift = (float)(beta[c] - mean * scale);
        float a = alpha[n_alpha == 1 ? 0 : c];
#pragma omp simd
        for (long j = 0; j < HW; j++) {
            float y = xi[j] * scale + shift;
            o[j] = y > 0 ? y : a * y;
        }
    }
    return 0;
}

/* convt_freq_f32: the overlap-add of a ConvTranspose2d with kernel (1, K) and stride (1, S) along
 * the last axis (no padding), after its matmul: z (B, K, C, T, F) holds the K taps' products,
 *
 *     out[b, c, t, f * S + k] += z[b, k, c, t, f],   out = bias[c] first,
 *
 * out (B, C, T, (F - 1) * S + K). One write of each output row, where the strided in-place adds
 * of PyTorch ops take K + 1 passes. Work item i = plane (b = i / C, c = i % C). */
int convt_freq_f32(const float *restrict z, const float *restrict bias, long C, long K, long S, long T, long F,
                   long lo, long hi, float *restrict out) {
    long Fo = (F - 1) * S + K;
    for (long i = lo; i < hi; i++) {
        long b = i / C, c = i % C;
        float bc = bias ? bias[c] : 0.f;
        for (long t = 0; t < T; t++) {
            float *o = out + (i * T + t) * Fo;
            for (long f = 0; f < Fo; f++) o[f] = bc;
            for (long k = 0; k < K; k++) {
                const float *zk = z + (((b * K + k) * C + c) * T + t) * F;
                for (long f = 0; f < F; f++) o[f * S + k] += zk[f];
            }
        }
    }
    return 0;
}

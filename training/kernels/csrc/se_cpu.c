/* CPU kernels: the Mamba mixer's fused selective scan (selective_scan_impl.h) and causal
 * depthwise conv + SiLU (causal_conv_impl.h), forward and backward, for float and double; and
 * small-head self-attention for inference (attention_impl.h, float); and the whole Mamba layer for
 * inference (mamba_infer_impl.h, float). Each runs one range of work
 * items.
 *
 * Built and loaded by training/native.py (cc -O3 -march=native, no OpenMP runtime: the
 * caller runs item ranges on its own threads). Semantics as mamba_ssm's selective_scan_fn:
 *     dt = softplus(delta + bias);  h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t;  h_{-1} = 0
 *     y_t = <h_t, C_t> + D u_t;     out_t = y_t * silu(z_t)
 * Layout is channel-last; every array is C-contiguous:
 *     u, delta, z, out, du, ddelta, dz: (nb, L, nd)    At: (N, nd) (A transposed)
 *     Bt, Ct: (nb, L, N)    D, bias: (nd)    ckpt: (nb, ceil(L / chunk), N, nd)
 *     dA_part: (nb, N, nd), dD_part, dbias_part: (nb, nd) double   dB_part, dC_part: (groups, nb, L, N)
 * Work item i = (batch row b = i / groups, channel group g = i % groups); a group owns whole
 * blocks of BLOCK channels. Per chunk of time steps an item loads the chunk's rows of its
 * channels as contiguous row pieces, computes the steps and gates in long vectorised loops, then
 * per BLOCK of channels the decays exp(dt A) and the recurrence (the N states of each channel in
 * a small buffer), and stores the results back as row pieces. Items write disjoint outputs
 * (dB_part/dC_part per group), so results do not depend on how items are split over threads.
 * Lanes past the last channel of a partial block are kept at zero.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 16
#define HAS_D 1
#define HAS_BIAS 2
#define HAS_Z 4
#define SOFTPLUS 8

/* exp for float32: 2^k exp(r), k = round(x / ln2), |r| <= ln2 / 2, degree-6 Taylor polynomial
 * (relative error < 5e-7). Written without libm calls so that loops over it vectorise. k is
 * clamped as an integer to [-126, 127], so results saturate at about 1.2e-38 and 1.7e38 and
 * never go subnormal; NaN stays NaN. (A clamp of x itself lets the compiler fold whole
 * expressions for the clamped constant and evaluate them speculatively, into subnormals that
 * cost a microcode assist each.) */
static inline float exp_f32(float x) {
    float kf = (x * 1.4426950408889634f + 12582912.f) - 12582912.f; /* round to nearest */
    float r = x - kf * 0.693359375f;
    r = r - kf * -2.1219444005469057e-4f;
    float p = 1.f + r * (1.f + r * (0.5f + r * (1.f / 6 + r * (1.f / 24 + r * (1.f / 120 + r * (1.f / 720))))));
    int32_t k = (int32_t)kf;
    k = k < -126 ? -126 : k;
    k = k > 127 ? 127 : k;
    int32_t bits = (k + 127) << 23;
    float s;
    memcpy(&s, &bits, sizeof s);
    return p * s;
}

/* log1p(t) for t in [0, 1]: 2 atanh(s), s = t / (2 + t) <= 1/3, odd series to s^13 (< 1e-8). */
static inline float log1p_unit_f32(float t) {
    float s = t / (2.f + t), s2 = s * s;
    return 2.f * s * (1.f + s2 * (1.f / 3 + s2 * (1.f / 5 + s2 * (1.f / 7 + s2 * (1.f / 9 + s2 * (1.f / 11 + s2 * (1.f / 13)))))));
}

static inline double exp_f64(double x) { return exp(x); }
static inline double log1p_unit_f64(double t) { return log1p(t); }

#define REAL float
#define SUF f32
#include "selective_scan_impl.h"
#include "causal_conv_impl.h"
#undef REAL
#undef SUF

#define REAL double
#define SUF f64
#include "selective_scan_impl.h"
#include "causal_conv_impl.h"
#undef REAL
#undef SUF

#include "vec_exp.h"
#include "attention_impl.h"
#include "mamba_infer_impl.h"
#include "codec_impl.h"

"""Numba kernels of the fused CPU selective scan (used by ``scan_fused``; import numba here only).

Shapes (all arrays C-contiguous, one float dtype per call):
    u, delta, z, out: (nb, nd, L)   A: (nd, N)   Bt, Ct: (nb, L, N)   D, bias: (nd,)
B and C come transposed so that the inner loop over the state reads contiguous memory.
Absent D / z / bias are passed as dummy arrays with their ``has_*`` flag false.

Each parallel work item is one batch row ``b`` and one group ``g`` of contiguous channels; it
keeps one channel's state (``N`` numbers) in a small local array and loops over time, so nothing
of shape (nb, nd, L, N) is ever materialised. Work items write disjoint outputs and the caller
reduces the per-item partial sums in a fixed order, so results do not depend on the thread count.
The bias, softplus, D skip and silu(z) gate are applied inside the kernels (no temporaries).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

# No 'nnan'/'ninf': NaN and inf must propagate as in the reference.
_FASTMATH = {"contract", "reassoc", "nsz", "arcp"}
_SOFTPLUS_THRESHOLD = 20.0  # torch.nn.functional.softplus default: identity above it


def _jit(fn):
    """``njit(parallel)`` with an on-disk cache when a cache folder is writable."""
    try:
        return numba.njit(parallel=True, cache=True, fastmath=_FASTMATH, nogil=True)(fn)
    except RuntimeError:  # numba found no writable cache location
        return numba.njit(parallel=True, cache=False, fastmath=_FASTMATH, nogil=True)(fn)


# exp for float32: exp(x) = 2**k * exp(r), k = rint(x / ln 2), |r| <= ln2 / 2, exp(r) by its
# degree-6 Taylor polynomial (relative error < 5e-7). Unlike a libm call it vectorises.
_F32 = np.float32
_LOG2E = _F32(1.4426950408889634)
_LN2_HI = _F32(0.693359375)  # ln 2 split in two so that k * _LN2_HI is exact
_LN2_LO = _F32(-2.1219444005469057e-4)
_ONE = _F32(1.0)
_TAYLOR = tuple(_F32(1.0 / math.factorial(i)) for i in range(2, 7))
_X_MIN = _F32(-87.0)  # exp(-87) ~ 1.6e-38, still a normal float32
_X_MAX = _F32(88.0)
_C2, _C3, _C4, _C5, _C6 = _TAYLOR


def _exp32_inplace(x, bits, scale, N):
    """x[:N] <- exp(x[:N]) (float32). bits: int32 scratch, scale: the same memory as float32."""
    for n in range(N):
        xn = min(max(x[n], _X_MIN), _X_MAX)
        kf = np.rint(xn * _LOG2E)
        r = xn - kf * _LN2_HI
        r = r - kf * _LN2_LO
        x[n] = _ONE + r * (_ONE + r * (_C2 + r * (_C3 + r * (_C4 + r * (_C5 + r * _C6)))))
        bits[n] = (np.int32(kf) + np.int32(127)) << np.int32(23)
    for n in range(N):
        x[n] = x[n] * scale[n]


_exp32_inplace = numba.njit(inline="always", fastmath=_FASTMATH)(_exp32_inplace)


def _exp_inplace(x, bits, scale, N, fast):
    """x[:N] <- exp(x[:N]); the polynomial when ``fast`` (float32 only), else libm."""
    if fast:
        _exp32_inplace(x, bits, scale, N)
    else:
        for n in range(N):
            x[n] = math.exp(x[n])


_exp_inplace = numba.njit(inline="always", fastmath=_FASTMATH)(_exp_inplace)


def _split(i, groups, nd):
    b = i // groups
    g = i - b * groups
    return b, g, (g * nd) // groups, ((g + 1) * nd) // groups


_split = numba.njit(inline="always")(_split)


@_jit
def scan_forward(u, delta, A, Bt, Ct, D, z, bias, has_D, has_z, has_bias, softplus, fast,
                 groups, chunk, save, out, ckpt):
    """out = (<h_t, C_t> + D u_t) silu(z_t); h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t; h_{-1} = 0,
    dt = softplus(delta + bias).

    When ``save``: ckpt[b, d, c, :] = h before step c*chunk, shape (nb, nd, ceil(L/chunk), N).
    """
    nb, nd, L = u.shape
    N = A.shape[1]
    for i in prange(nb * groups):
        b, g, d0, d1 = _split(i, groups, nd)
        h = np.empty(N, dtype=out.dtype)
        a = np.empty(N, dtype=out.dtype)
        e = np.empty(N, dtype=out.dtype)
        bits = np.empty(N, dtype=np.int32)
        scale = bits.view(np.float32)
        cast = np.zeros(1, dtype=out.dtype)  # storing through it rounds a float64 to out's dtype
        zero = cast[0]
        for d in range(d0, d1):
            bias_d = bias[d] if has_bias else 0.0
            D_d = D[d] if has_D else 0.0
            for n in range(N):
                h[n] = 0.0
                a[n] = A[d, n]
            for t in range(L):
                if save and t % chunk == 0:
                    c = t // chunk
                    for n in range(N):
                        ckpt[b, d, c, n] = h[n]
                ut = u[b, d, t]
                raw = delta[b, d, t] + bias_d
                if softplus and raw <= _SOFTPLUS_THRESHOLD:
                    raw = math.log1p(math.exp(raw))
                cast[0] = raw
                dtt = cast[0]
                dtu = dtt * ut
                for n in range(N):
                    e[n] = dtt * a[n]
                _exp_inplace(e, bits, scale, N, fast)
                acc = zero
                for n in range(N):
                    hn = e[n] * h[n] + dtu * Bt[b, t, n]
                    h[n] = hn
                    acc += hn * Ct[b, t, n]
                yt = acc + D_d * ut
                if has_z:
                    zt = z[b, d, t]
                    yt = yt * zt / (1.0 + math.exp(-zt))
                out[b, d, t] = yt


@_jit
def scan_backward(u, delta, A, Bt, Ct, D, z, bias, has_D, has_z, has_bias, softplus, fast,
                  dout, ckpt, groups, chunk,
                  du, ddelta, dz, dA_part, dD_part, dbias_part, dB_part, dC_part):
    """Reverse scan. Recomputes each chunk's states from ``ckpt``, then walks it backwards.

    Written: du, ddelta, dz (nb, nd, L); per batch row (float64) dA_part (nb, nd, N),
    dD_part and dbias_part (nb, nd). Accumulated (must start at zero): dB_part, dC_part
    (groups, nb, L, N), dL/dBt and dL/dCt summed over each channel group.
    """
    nb, nd, L = u.shape
    N = A.shape[1]
    nchunk = ckpt.shape[2]
    for i in prange(nb * groups):
        b, g, d0, d1 = _split(i, groups, nd)
        hbuf = np.empty((chunk + 1, N), dtype=du.dtype)
        ebuf = np.empty((chunk, N), dtype=du.dtype)
        dtbuf = np.empty(chunk, dtype=du.dtype)
        gs = np.empty(N, dtype=du.dtype)
        a = np.empty(N, dtype=du.dtype)
        dal = np.empty(N, dtype=np.float64)
        bits = np.empty(N, dtype=np.int32)
        scale = bits.view(np.float32)
        cast = np.zeros(1, dtype=du.dtype)
        zero = cast[0]
        for d in range(d0, d1):
            bias_d = bias[d] if has_bias else 0.0
            D_d = D[d] if has_D else 0.0
            dD_acc = 0.0
            dbias_acc = 0.0
            for n in range(N):
                a[n] = A[d, n]
                gs[n] = 0.0
                dal[n] = 0.0
            for c in range(nchunk - 1, -1, -1):
                t0 = c * chunk
                m = min(L - t0, chunk)
                for n in range(N):
                    hbuf[0, n] = ckpt[b, d, c, n]
                for k in range(m):
                    t = t0 + k
                    raw = delta[b, d, t] + bias_d
                    if softplus and raw <= _SOFTPLUS_THRESHOLD:
                        raw = math.log1p(math.exp(raw))
                    dtbuf[k] = raw
                    dtt = dtbuf[k]
                    dtu = dtt * u[b, d, t]
                    ek = ebuf[k]
                    for n in range(N):
                        ek[n] = dtt * a[n]
                    _exp_inplace(ek, bits, scale, N, fast)
                    for n in range(N):
                        hbuf[k + 1, n] = ek[n] * hbuf[k, n] + dtu * Bt[b, t, n]
                for k in range(m - 1, -1, -1):
                    t = t0 + k
                    dtt = dtbuf[k]
                    ut = u[b, d, t]
                    dout_t = dout[b, d, t]
                    zt = 0.0
                    sz = 0.0
                    cast[0] = dout_t
                    if has_z:
                        zt = z[b, d, t]
                        sz = 1.0 / (1.0 + math.exp(-zt))
                        cast[0] = dout_t * zt * sz
                    dyt = cast[0]
                    dtu = dtt * ut
                    sdu = zero
                    sdt = zero
                    shc = zero
                    for n in range(N):
                        # gs holds dL/dh_t once the output term of step t is added.
                        cn = Ct[b, t, n]
                        hn = hbuf[k + 1, n]
                        gn = gs[n] + dyt * cn
                        shc += hn * cn
                        dC_part[g, b, t, n] += dyt * hn
                        bn = Bt[b, t, n]
                        dB_part[g, b, t, n] += gn * dtu
                        eh = ebuf[k, n] * hbuf[k, n]
                        sdu += gn * bn
                        sdt += gn * (a[n] * eh + bn * ut)
                        dal[n] += gn * dtt * eh
                        gs[n] = gn * ebuf[k, n]
                    if has_z:
                        dz[b, d, t] = dout_t * (shc + D_d * ut) * sz * (1.0 + zt * (1.0 - sz))
                    du[b, d, t] = sdu * dtt + dyt * D_d
                    dD_acc += dyt * ut
                    if softplus:
                        x = delta[b, d, t] + bias_d
                        if x <= _SOFTPLUS_THRESHOLD:
                            sdt = sdt / (1.0 + math.exp(-x))
                    ddelta[b, d, t] = sdt
                    dbias_acc += sdt
            for n in range(N):
                dA_part[b, d, n] = dal[n]
            dD_part[b, d] = dD_acc
            dbias_part[b, d] = dbias_acc

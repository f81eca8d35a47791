"""Numba kernels of the fused CPU selective scan (used by ``scan_fused``; import numba here only).

Shapes (all arrays C-contiguous, one float dtype per call):
    u, dt, z, out: (nb, nd, L)   A: (nd, N)   Bt, Ct: (nb, L, N)   D: (nd,)
dt is the step after bias and softplus (left to torch, which vectorises log1p).
B and C come transposed so that the inner loop over the state reads contiguous memory.
An absent D or z is passed as a dummy array with its ``has_*`` flag false.

Each parallel work item is one batch row ``b`` and one group ``g`` of contiguous channels; it
keeps one channel's state (``N`` numbers) in a small local array and loops over time, so nothing
of shape (nb, nd, L, N) is ever materialised. Work items write disjoint outputs and the caller
reduces the per-item partial sums in a fixed order, so results do not depend on the thread count.
The D skip and the gate are applied inside the kernels.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

# No 'nnan'/'ninf': NaN and inf must propagate as in the reference.
_FASTMATH = {"contract", "reassoc", "nsz", "arcp"}


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


def _decays(dt, a, b, d, t0, m, N, fast, ebuf, bits, scale):
    """For steps t0..t0+m-1 of channel (b, d): ebuf[k*N + n] = exp(dt * a[n])."""
    for k in range(m):
        dtt = dt[b, d, t0 + k]
        for n in range(N):
            ebuf[k * N + n] = dtt * a[n]
    # One exp over the whole chunk: long vectors amortise the loop overhead.
    _exp_inplace(ebuf, bits, scale, m * N, fast)


_decays = numba.njit(inline="always", fastmath=_FASTMATH)(_decays)


def _sigmoids(z, b, d, t0, m, fast, sbuf, bits, scale):
    """sbuf[k] = sigmoid(z[b, d, t0 + k]) for k < m (vectorised exp when ``fast``)."""
    for k in range(m):
        sbuf[k] = -z[b, d, t0 + k]
    _exp_inplace(sbuf, bits, scale, m, fast)
    for k in range(m):
        sbuf[k] = 1.0 / (1.0 + sbuf[k])


_sigmoids = numba.njit(inline="always", fastmath=_FASTMATH)(_sigmoids)


def _buffers(chunk, N, dtype):
    """Per-work-item scratch: exp(dt A) and states of one chunk, exp's int32 scratch."""
    ebuf = np.empty(chunk * N, dtype=dtype)
    hbuf = np.empty((chunk + 1) * N, dtype=dtype)
    bits = np.empty(chunk * N, dtype=np.int32)
    return ebuf, hbuf, bits, bits.view(np.float32)


_buffers = numba.njit(inline="always")(_buffers)


@_jit
def scan_forward(u, dt, A, Bt, Ct, D, z, has_D, has_z, fast, groups, chunk, save, out, ckpt):
    """out = (<h_t, C_t> + D u_t) silu(z_t);  h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t;  h_{-1} = 0.

    When ``save``: ckpt[b, d, c, :] = h before step c*chunk, shape (nb, nd, ceil(L/chunk), N).
    """
    nb, nd, L = u.shape
    N = A.shape[1]
    nchunk = (L + chunk - 1) // chunk
    for i in prange(nb * groups):
        b, g, d0, d1 = _split(i, groups, nd)
        ebuf, _, bits, scale = _buffers(chunk, N, out.dtype)
        sbuf = np.empty(chunk, dtype=out.dtype)
        h = np.empty(N, dtype=out.dtype)
        a = np.empty(N, dtype=out.dtype)
        zero = np.zeros(1, dtype=out.dtype)[0]
        for d in range(d0, d1):
            D_d = D[d] if has_D else zero
            for n in range(N):
                h[n] = 0.0
                a[n] = A[d, n]
            for c in range(nchunk):
                t0 = c * chunk
                m = min(chunk, L - t0)
                if save:
                    for n in range(N):
                        ckpt[b, d, c, n] = h[n]
                _decays(dt, a, b, d, t0, m, N, fast, ebuf, bits, scale)
                if has_z:
                    _sigmoids(z, b, d, t0, m, fast, sbuf, bits, scale)
                for k in range(m):
                    t = t0 + k
                    ut = u[b, d, t]
                    dtu = dt[b, d, t] * ut
                    acc = zero
                    for n in range(N):
                        hn = ebuf[k * N + n] * h[n] + dtu * Bt[b, t, n]
                        h[n] = hn
                        acc += hn * Ct[b, t, n]
                    yt = acc + D_d * ut
                    out[b, d, t] = yt * z[b, d, t] * sbuf[k] if has_z else yt


@_jit
def scan_backward(u, dt, A, Bt, Ct, D, z, has_D, has_z, fast, dout, ckpt, groups, chunk,
                  du, ddt, dz, dA_part, dD_part, dB_part, dC_part):
    """Reverse scan. Recomputes each chunk's states from ``ckpt``, then walks it backwards.

    Written: du, ddt (dL/d dt), dz (nb, nd, L); per batch row (float64) dA_part (nb, nd, N) and
    dD_part (nb, nd). Accumulated (must start at zero): dB_part, dC_part (groups, nb, L, N),
    dL/dBt and dL/dCt summed over each channel group.

    Per chunk: (1) recompute exp(dt A) and the states h; (2) the only serial part, the adjoint
    g_t = dL/dh_t = dy_t C_t + exp(dt_{t+1} A) g_{t+1}, into a buffer; (3) every gradient from
    h, g and exp(dt A) in loops without a carried dependency (each writes one array, so that
    they vectorise).
    """
    nb, nd, L = u.shape
    N = A.shape[1]
    nchunk = ckpt.shape[2]
    for i in prange(nb * groups):
        b, g, d0, d1 = _split(i, groups, nd)
        ebuf, hbuf, bits, scale = _buffers(chunk, N, du.dtype)
        gbuf = np.empty(chunk * N, dtype=du.dtype)
        dyv = np.empty(chunk, dtype=du.dtype)
        sbuf = np.empty(chunk, dtype=du.dtype)
        gs = np.empty(N, dtype=du.dtype)
        a = np.empty(N, dtype=du.dtype)
        dal = np.empty(N, dtype=du.dtype)  # one chunk's part of dL/dA
        dA_acc = np.empty(N, dtype=np.float64)
        zero = np.zeros(1, dtype=du.dtype)[0]
        for d in range(d0, d1):
            D_d = D[d] if has_D else zero
            dD_acc = 0.0
            for n in range(N):
                a[n] = A[d, n]
                gs[n] = zero
                dA_acc[n] = 0.0
            for c in range(nchunk - 1, -1, -1):
                t0 = c * chunk
                m = min(L - t0, chunk)
                # (1) states
                _decays(dt, a, b, d, t0, m, N, fast, ebuf, bits, scale)
                for n in range(N):
                    hbuf[n] = ckpt[b, d, c, n]
                for k in range(m):
                    t = t0 + k
                    dtu = dt[b, d, t] * u[b, d, t]
                    for n in range(N):
                        hbuf[(k + 1) * N + n] = ebuf[k * N + n] * hbuf[k * N + n] + dtu * Bt[b, t, n]
                # (2) adjoint; dy = dL/dy before the gate
                if has_z:
                    _sigmoids(z, b, d, t0, m, fast, sbuf, bits, scale)
                for k in range(m):
                    t = t0 + k
                    dyv[k] = dout[b, d, t] * z[b, d, t] * sbuf[k] if has_z else dout[b, d, t]
                for k in range(m - 1, -1, -1):
                    t = t0 + k
                    dyt = dyv[k]
                    for n in range(N):
                        gn = gs[n] + dyt * Ct[b, t, n]
                        gbuf[k * N + n] = gn
                        gs[n] = gn * ebuf[k * N + n]
                # (3) gradients
                for n in range(N):
                    dal[n] = zero
                for k in range(m):
                    t = t0 + k
                    dtt = dt[b, d, t]
                    ut = u[b, d, t]
                    dyt = dyv[k]
                    sdu = zero
                    sdt = zero
                    shc = zero
                    for n in range(N):
                        gn = gbuf[k * N + n]
                        bn = Bt[b, t, n]
                        eh = ebuf[k * N + n] * hbuf[k * N + n]
                        sdu += gn * bn
                        sdt += gn * (a[n] * eh + bn * ut)
                        shc += hbuf[(k + 1) * N + n] * Ct[b, t, n]
                    for n in range(N):
                        dal[n] += gbuf[k * N + n] * ebuf[k * N + n] * hbuf[k * N + n] * dtt
                    for n in range(N):
                        dC_part[g, b, t, n] += dyt * hbuf[(k + 1) * N + n]
                    dtu = dtt * ut
                    for n in range(N):
                        dB_part[g, b, t, n] += gbuf[k * N + n] * dtu
                    if has_z:  # silu'(z) = s (1 + z (1 - s)), s = sigmoid(z)
                        sk = sbuf[k]
                        zt = z[b, d, t]
                        dz[b, d, t] = dout[b, d, t] * (shc + D_d * ut) * sk * (1.0 + zt * (1.0 - sk))
                    du[b, d, t] = sdu * dtt + dyt * D_d
                    dD_acc += dyt * ut
                    ddt[b, d, t] = sdt
                for n in range(N):
                    dA_acc[n] += dal[n]
            for n in range(N):
                dA_part[b, d, n] = dA_acc[n]
            dD_part[b, d] = dD_acc

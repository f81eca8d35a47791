"""Numba kernels of the fused CPU selective scan (used by ``scan_fused``; import numba here only).

Shapes (all arrays C-contiguous, one float dtype ``f`` per call):
    u, dt: (nb, nd, L)   A: (nd, N)   Bt, Ct: (nb, L, N)   (B and C transposed so that the
    inner loop over the state runs over contiguous memory)

Each parallel work item is one batch row ``b`` and a group ``g`` of ``G`` contiguous channel
ranges; it keeps the state of one channel (``N`` numbers) in a small local array and loops over
time, so nothing of shape (nb, nd, L, N) is ever materialised. Every work item writes disjoint
outputs, so results do not depend on the number of threads.
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


@_jit
def scan_forward(u, dt, A, Bt, Ct, groups, chunk, save, y, ckpt):
    """y[b,d,t] = <h_t, C_t>; h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t; h_{-1} = 0.

    When ``save``: ckpt[b, d, c, :] = h before step c*chunk, shape (nb, nd, ceil(L/chunk), N).
    """
    nb, nd, L = u.shape
    N = A.shape[1]
    for i in prange(nb * groups):
        b = i // groups
        g = i - b * groups
        d0 = (g * nd) // groups
        d1 = ((g + 1) * nd) // groups
        h = np.empty(N, dtype=y.dtype)
        a = np.empty(N, dtype=y.dtype)
        for d in range(d0, d1):
            for n in range(N):
                h[n] = 0.0
                a[n] = A[d, n]
            for t in range(L):
                if save and t % chunk == 0:
                    c = t // chunk
                    for n in range(N):
                        ckpt[b, d, c, n] = h[n]
                dtt = dt[b, d, t]
                dtu = dtt * u[b, d, t]
                acc = 0.0
                for n in range(N):
                    hn = math.exp(dtt * a[n]) * h[n] + dtu * Bt[b, t, n]
                    h[n] = hn
                    acc += hn * Ct[b, t, n]
                y[b, d, t] = acc


@_jit
def scan_backward(u, dt, A, Bt, Ct, dy, ckpt, groups, chunk, du, ddt, dA_part, dB_part, dC_part):
    """Reverse scan. Recomputes each chunk's states from ``ckpt``, then walks it backwards.

    Outputs (written, not accumulated, except dB_part/dC_part which must start at zero):
        du, ddt: (nb, nd, L)   scan part of dL/du and dL/ddt (D and z handled by the caller)
        dA_part: (nb, nd, N) float64, dL/dA summed over time for each batch row
        dB_part, dC_part: (groups, nb, L, N), dL/dBt and dL/dCt summed over each channel group
    """
    nb, nd, L = u.shape
    N = A.shape[1]
    nchunk = ckpt.shape[2]
    for i in prange(nb * groups):
        b = i // groups
        g = i - b * groups
        d0 = (g * nd) // groups
        d1 = ((g + 1) * nd) // groups
        hbuf = np.empty((chunk + 1, N), dtype=du.dtype)
        ebuf = np.empty((chunk, N), dtype=du.dtype)
        gs = np.empty(N, dtype=du.dtype)
        a = np.empty(N, dtype=du.dtype)
        dal = np.empty(N, dtype=np.float64)
        for d in range(d0, d1):
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
                    dtt = dt[b, d, t]
                    dtu = dtt * u[b, d, t]
                    for n in range(N):
                        e = math.exp(dtt * a[n])
                        ebuf[k, n] = e
                        hbuf[k + 1, n] = e * hbuf[k, n] + dtu * Bt[b, t, n]
                for k in range(m - 1, -1, -1):
                    t = t0 + k
                    dtt = dt[b, d, t]
                    ut = u[b, d, t]
                    dyt = dy[b, d, t]
                    dtu = dtt * ut
                    sdu = 0.0
                    sdt = 0.0
                    for n in range(N):
                        # gs holds dL/dh_t once the output term of step t is added.
                        gn = gs[n] + dyt * Ct[b, t, n]
                        dC_part[g, b, t, n] += dyt * hbuf[k + 1, n]
                        bn = Bt[b, t, n]
                        dB_part[g, b, t, n] += gn * dtu
                        eh = ebuf[k, n] * hbuf[k, n]
                        sdu += gn * bn
                        sdt += gn * (a[n] * eh + bn * ut)
                        dal[n] += gn * dtt * eh
                        gs[n] = gn * ebuf[k, n]
                    du[b, d, t] = sdu * dtt
                    ddt[b, d, t] = sdt
            for n in range(N):
                dA_part[b, d, n] = dal[n]

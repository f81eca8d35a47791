"""Build, cache and load this package's C kernels for CPU (``csrc/se_cpu.c``): the Mamba mixer's
selective scan and causal conv, and the small-head attention used at inference.

The library is compiled on first use with the system C compiler (``$CC``, else ``cc``) for the
CPU it runs on (``-O3 -march=native``), then cached: the file name holds a hash of the sources,
the compiler's version, the flags and the CPU's model and flags, so that a login node and compute
nodes of another CPU type each get their own build. Concurrent builds (DDP ranks, sweep cells)
are safe: each compiles to a temporary name and renames it into place atomically.

``SE_NATIVE_PORTABLE=1`` builds without ``-march=native`` (generic C paths, no AVX2/AVX-512
intrinsics): one library for every CPU of the architecture, e.g. a cache shared by nodes of
different CPU types; the tests compare it with the native build.

Cache folder: ``$SE_NATIVE_CACHE``, else ``$XDG_CACHE_HOME/se-orchestrator``, else
``~/.cache/se-orchestrator``. :func:`load` raises :class:`NativeBuildError` (an ImportError) with
the compiler's message when no library can be built; ``training.mamba.scan`` then falls back to
the pure-PyTorch scan (and attention to PyTorch's SDPA). :func:`kernel` gives one function of the
library or None; :func:`plain_inference` is the one rule for when an inference fast path may stand in
for module calls (no autograd, no autocast).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from common import cache

_CSRC = Path(__file__).with_name("csrc")
SOURCES = (_CSRC / "se_cpu.c", _CSRC / "selective_scan_impl.h", _CSRC / "causal_conv_impl.h",
           _CSRC / "vec_exp.h", _CSRC / "attention_impl.h", _CSRC / "mamba_infer_impl.h", _CSRC / "codec_impl.h")
FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared")
PORTABLE_FLAGS = tuple(f for f in FLAGS if f != "-march=native")  # compilers without -march=native


class NativeBuildError(ImportError):
    """The C kernels could not be compiled or loaded here."""


def cache_dir() -> Path:
    if os.environ.get("SE_NATIVE_CACHE"):
        return Path(os.environ["SE_NATIVE_CACHE"])
    return cache.cache_dir()


def _compiler() -> str:
    cc = os.environ.get("CC") or "cc"
    if shutil.which(cc.split()[0]) is None:
        raise NativeBuildError(f"CPU kernels: no C compiler ({cc!r} not found; set $CC or install gcc)")
    return cc


def _cpu_signature() -> str:
    """CPU model and feature flags (what -march=native compiles for)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        keep = [line for line in lines if line.startswith(("model name", "flags", "Features", "CPU part"))]
        return "\n".join(dict.fromkeys(keep))
    except OSError:
        return platform.processor() or platform.machine()


def _compiler_version(cc: str) -> str:
    try:
        return subprocess.run([*cc.split(), "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NativeBuildError(f"CPU kernels: cannot run the C compiler {cc!r}: {e}") from e


def flag_sets() -> tuple[tuple[str, ...], ...]:
    """The compiler flags to try in order: native, then portable where the compiler refuses
    ``-march=native``; only the portable ones under ``SE_NATIVE_PORTABLE=1``."""
    return (PORTABLE_FLAGS,) if os.environ.get("SE_NATIVE_PORTABLE") == "1" else (FLAGS, PORTABLE_FLAGS)


def library_path(cc: str) -> Path:
    """The cache file: a hash of the sources, the compiler, the flags and, for a native build only,
    the CPU (a portable build is the same for every CPU of the architecture)."""
    flags = flag_sets()[0]
    h = hashlib.sha256()
    for src in SOURCES:
        h.update(src.read_bytes())
    cpu = _cpu_signature() if flags == FLAGS else ""
    for part in (_compiler_version(cc), " ".join(flags), cpu, platform.machine()):
        h.update(part.encode())
    return cache_dir() / f"se_cpu-{h.hexdigest()[:16]}.so"


def _compile(cc: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        errors = []
        for flags in flag_sets():
            cmd = [*cc.split(), *flags, str(SOURCES[0]), "-o", tmp, "-lm"]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if r.returncode == 0:
                os.replace(tmp, target)  # atomic: a concurrent loader sees all or nothing
                return
            errors.append(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}")
        raise NativeBuildError(f"CPU kernels: compiling {SOURCES[0].name} with {cc!r} failed: {errors[-1]}")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


_P = ctypes.c_void_p
_L = ctypes.c_long
_I = ctypes.c_int
# scan_forward(u, delta, At, Bt, Ct, D, bias, z, flags, nb, L, nd, N, groups, chunk, lo, hi, out, ckpt)
_FORWARD_ARGS = [_P] * 8 + [_I] + [_L] * 8 + [_P, _P]
# scan_backward(..., lo, hi, dout, ckpt, du, ddelta, dz, dA_part, dD_part, dbias_part, dB_part, dC_part)
_BACKWARD_ARGS = [_P] * 8 + [_I] + [_L] * 8 + [_P] * 10
# conv_forward(x, wT, bias, has_bias, nb, L, nd, K, lo, hi, out)
_CONV_FORWARD_ARGS = [_P] * 3 + [_I] + [_L] * 6 + [_P]
# conv_backward(x, wT, bias, has_bias, nb, L, nd, K, lo, hi, dout, dx, dw_part, dbias_part)
_CONV_BACKWARD_ARGS = [_P] * 3 + [_I] + [_L] * 6 + [_P] * 4
_SIGNATURES = {
    "scan_forward": _FORWARD_ARGS, "scan_backward": _BACKWARD_ARGS,
    "conv_forward": _CONV_FORWARD_ARGS, "conv_backward": _CONV_BACKWARD_ARGS,
}
# attn_forward_f32(qkv, bias, S, L, H, dh, lo, hi, out)
# mamba_infer_f32(x, normw, eps, reverse, residual, winT, bin, cwT, cb, wxT, wdtT, dtb, At, D, woT, bo,
#                 nb, L, dm, E, R, N, P, K, lo, hi, out, ldo)
# inorm_prelu_f32(x, gamma, beta, alpha, n_alpha, eps, C, HW, lo, hi, out, ldo_b)
# convt_freq_f32(z, bias, C, K, S, T, F, lo, hi, out)
_SIGNATURES_F32 = {"attn_forward": [_P, _P] + [_L] * 6 + [_P],
                   "mamba_infer": [_P, _P, ctypes.c_float, _I, _I] + [_P] * 11 + [_L] * 10 + [_P, _L],
                   "inorm_prelu": [_P] * 4 + [_L, ctypes.c_float] + [_L] * 4 + [_P, _L],
                   "convt_freq": [_P, _P] + [_L] * 7 + [_P]}


@functools.cache
def load() -> ctypes.CDLL:
    """The kernel library for this CPU, compiled first if it is not cached yet."""
    cc = _compiler()
    path = library_path(cc)
    if not path.exists():
        try:
            _compile(cc, path)
        except OSError as e:  # unwritable cache folder, compiler killed, ...
            raise NativeBuildError(f"CPU kernels: cannot build into {path.parent}: {e}") from e
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        raise NativeBuildError(f"CPU kernels: cannot load {path}: {e}") from e
    for suffix, signatures in (("f32", _SIGNATURES | _SIGNATURES_F32), ("f64", _SIGNATURES)):
        for name, args in signatures.items():
            fn = getattr(lib, f"{name}_{suffix}")
            fn.argtypes, fn.restype = args, ctypes.c_int
    return lib


@functools.cache  # a failed build is not retried on every call
def kernel(name: str):
    """The library's function ``name``, or None when no library builds here (the caller runs PyTorch)."""
    try:
        return getattr(load(), name)
    except NativeBuildError:
        return None


def plain_inference(device_type: str) -> bool:
    """Whether inference fast paths may stand in for module calls on ``device_type`` now: no autograd
    (they write in place and record no graph) and no autocast (the modules would run in another dtype)."""
    return not torch.is_grad_enabled() and not torch.is_autocast_enabled(device_type)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The kernels' float type for ``x``: float64 stays float64, everything else is float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def as_array(x: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """A C-contiguous numpy view of ``x`` in ``dtype`` (a copy only when layout or dtype differ)."""
    return x.detach().to(dtype).contiguous().numpy()


def ptr(a: np.ndarray | None) -> int | None:
    """The data address of a C-contiguous array (None stays None: a NULL pointer)."""
    return None if a is None else a.ctypes.data


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def run_items(fn, n_items: int, head: tuple, tail: tuple) -> None:
    """``fn(*head, lo, hi, *tail)`` over the work items [0, n_items), split in contiguous ranges
    over ``torch.get_num_threads()`` threads (ctypes releases the GIL during the call). The
    kernels' results do not depend on the split. Raises MemoryError when a kernel returns -1."""
    global _pool
    threads = max(1, min(torch.get_num_threads(), n_items))

    def part(k: int) -> int:
        return fn(*head, n_items * k // threads, n_items * (k + 1) // threads, *tail)

    if threads == 1:
        codes = [part(0)]
    else:
        with _pool_lock:
            if _pool is None or _pool._max_workers < threads:
                _pool = ThreadPoolExecutor(threads, thread_name_prefix="mamba-cpu")
            pool = _pool
        codes = list(pool.map(part, range(threads)))
    if any(codes):
        raise MemoryError(f"{fn.__name__}: the kernel could not allocate its scratch buffers")

"""mamba-ssm's fused GPU kernels, imported once, with the reason kept when they cannot be used.

The fast path is chosen on mamba-ssm's own interface module, ``mamba_ssm.ops.selective_scan_interface``:
it must define ``selective_scan_fn`` and ``mamba_inner_fn`` and hold its causal-conv1d binding
(``causal_conv1d_fwd_function`` from ``causal_conv1d.cpp_functions`` in mamba-ssm >= 2.2.5,
``causal_conv1d_cuda`` in <= 2.2.4; mamba-ssm sets them to None when the import fails, and its
``mamba_inner_fn`` then fails at the first forward). A known-bad version pair (mamba-ssm <= 2.2.4
calls ``causal_conv1d_fwd`` with 7 arguments, causal-conv1d >= 1.5.1 takes more) is refused by
version. Nothing here is silent: `load().error` is the one-line reason, which
``training.mamba.scan`` raises for GPU tensors unless ``SE_SCAN_BACKEND=torch`` asks for the torch scan.

Tested pair (the ``cuda``/``rocm`` extras): mamba-ssm 2.2.6.post3 with causal-conv1d 1.5.2.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

INTERFACE = "mamba_ssm.ops.selective_scan_interface"
PINNED = {"mamba_ssm": "2.2.6.post3", "causal_conv1d": "1.5.2"}


@dataclass(frozen=True)
class MambaKernels:
    """The two entry points the mixer uses, or ``error`` saying why they are not usable."""

    selective_scan_fn: Callable | None = None
    mamba_inner_fn: Callable | None = None
    error: str | None = None

    @property
    def available(self) -> bool:
        return self.error is None


_cached: MambaKernels | None = None


def versions() -> dict[str, str]:
    """Installed versions of mamba-ssm and causal-conv1d ("not installed" when absent)."""
    out = {}
    for name in ("mamba_ssm", "causal_conv1d"):
        try:
            out[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _release(version: str) -> tuple[int, ...] | None:
    m = re.match(r"(\d+)\.(\d+)\.(\d+)", version)
    return tuple(int(x) for x in m.groups()) if m else None


def version_problem(v: dict[str, str] | None = None) -> str | None:
    """Why this mamba-ssm / causal-conv1d pair cannot work together (None when it can)."""
    v = versions() if v is None else v
    mamba, conv = _release(v["mamba_ssm"]), _release(v["causal_conv1d"])
    if mamba is None:
        return f"mamba-ssm is {v['mamba_ssm']}"
    if conv is None:
        return f"causal-conv1d is {v['causal_conv1d']} (mamba-ssm's fused Mamba path needs it)"
    if mamba <= (2, 2, 4) and conv >= (1, 5, 1):
        return (f"mamba-ssm {v['mamba_ssm']} calls causal_conv1d_fwd with 7 arguments, causal-conv1d "
                f"{v['causal_conv1d']} (>= 1.5.1) changed that signature; install the tested pair "
                f"mamba-ssm=={PINNED['mamba_ssm']} causal-conv1d=={PINNED['causal_conv1d']}")
    if mamba >= (2, 2, 5) and conv < (1, 5, 1):
        return (f"mamba-ssm {v['mamba_ssm']} imports causal_conv1d.cpp_functions, which causal-conv1d "
                f"{v['causal_conv1d']} (< 1.5.1) lacks; install causal-conv1d=={PINNED['causal_conv1d']}")
    return None


def from_interface(ssi) -> MambaKernels:
    """The kernels of an imported ``mamba_ssm.ops.selective_scan_interface`` module (or why not)."""
    missing = [n for n in ("selective_scan_fn", "mamba_inner_fn") if getattr(ssi, n, None) is None]
    if missing:
        return MambaKernels(error=f"{INTERFACE} defines no {', '.join(missing)}")
    if getattr(ssi, "causal_conv1d_fwd_function", None) is None and getattr(ssi, "causal_conv1d_cuda", None) is None:
        return MambaKernels(error=f"{INTERFACE} imported without its causal-conv1d binding "
                                  "(causal_conv1d.cpp_functions / causal_conv1d_cuda failed to import: "
                                  "causal-conv1d missing, or built for another torch)")
    return MambaKernels(ssi.selective_scan_fn, ssi.mamba_inner_fn)


def _import() -> MambaKernels:
    problem = version_problem()
    if problem is not None:
        return MambaKernels(error=problem)
    try:
        import importlib

        ssi = importlib.import_module(INTERFACE)
    except Exception as e:  # ImportError, or an extension that will not load (undefined symbol, wrong arch)
        return MambaKernels(error=f"import {INTERFACE} failed: {type(e).__name__}: {e}")
    return from_interface(ssi)


def load() -> MambaKernels:
    """The kernels (imported on first call, then cached for the process)."""
    global _cached
    if _cached is None:
        _cached = _import()
    return _cached

"""Seeding and RNG state capture/restore (python, numpy, torch, CUDA) in `weights_only`-safe form.

`GlobalRNG()` is the same pair as a checkpoint part (`state_dict` / `load_state_dict`).

`rng_state()` returns only tensors, lists, tuples, ints, floats and strings, so a checkpoint holding
it loads with `torch.load(weights_only=True)`. Every tensor in it is a CPU tensor (the generators'
states are CPU ByteTensors even for CUDA devices); `set_rng_state` accepts them from any device
(a rank file loaded with a GPU `map_location`) and restores each onto its own generator.
"""

from __future__ import annotations

import logging
import random

import numpy as np
import torch

log = logging.getLogger(__name__)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch (all devices); optionally ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def rng_state() -> dict:
    """The global RNG states of python, numpy, torch CPU and every CUDA device."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": int(version), "state": list(internal), "gauss": gauss},
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _cpu_bytes(t: torch.Tensor) -> torch.Tensor:
    """A generator state as the CPU ByteTensor `set_rng_state` wants (whatever device it was loaded to)."""
    return t.detach().to("cpu", torch.uint8).contiguous()


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state()` captured, onto the CPU generator and the CUDA generators present.

    A checkpoint from a run with CUDA states restores them onto the visible devices 0..k-1
    (k = the smaller count); on a machine without CUDA they are skipped with a log line."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = state["numpy"]
    keys = npy["keys"].detach().cpu().numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached"]))
    torch.set_rng_state(_cpu_bytes(state["torch"]))
    cuda = state.get("cuda")
    if not cuda:
        return
    if not torch.cuda.is_available():
        log.info("checkpoint holds %d CUDA RNG state(s); no CUDA device here: not restored", len(cuda))
        return
    count = torch.cuda.device_count()
    if count != len(cuda):
        log.warning("checkpoint holds %d CUDA RNG states, %d device(s) visible: restoring the first %d",
                    len(cuda), count, min(count, len(cuda)))
    for index, s_ in enumerate(cuda[:count]):
        torch.cuda.set_rng_state(_cpu_bytes(s_), index)


class GlobalRNG:
    """The process's global RNGs as a checkpoint part (`rng_state` / `set_rng_state`)."""

    def state_dict(self) -> dict:
        return rng_state()

    def load_state_dict(self, state: dict) -> None:
        set_rng_state(state)

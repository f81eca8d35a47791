#!/usr/bin/env bash
# Install everything this project needs on a fresh Debian machine (idempotent; rerun is quick).
#   apt: SLURM (slurmctld, two slurmd, munge) for the real-cluster tests, espeak-ng for demo speech,
#        libsndfile for soundfile.
#   pip: a venv in .venv with torch pinned to the CPU build (constraints.txt) and the project + dev extra.
# Usage: bash .ci/setup.sh            (then use .venv/bin/orchestrate, .venv/bin/pytest)
# Set SE_SKIP_APT=1 to skip the apt step (e.g. not root; SLURM tests then skip with a reason).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(slurm-wlm slurmctld slurmd slurm-client munge espeak-ng libsndfile1 gcc libc6-dev)

if [[ "${SE_SKIP_APT:-0}" != 1 ]]; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    echo "[setup] apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    SUDO=""; [[ $(id -u) != 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
# torch first, from the pinned CPU build; then the project with the same pins, with the dnsmos extra
# (DNSMOS P.835 ONNX models in speechmos: Table II's metric, tested on generated speech).
.venv/bin/pip install -q -c constraints.txt torch==2.13.0
.venv/bin/pip install -q -c constraints.txt -e '.[dev,dnsmos]'
# mamba-ssm + causal-conv1d (the cuda extra's pinned pair) as Python files only, no kernels:
# tests/test_gpu_path.py runs the Mamba mixer's GPU branch on CPU with their reference functions.
# (--no-build-isolation: their setup.py imports torch, packaging and wheel from this venv.)
.venv/bin/pip install -q -c constraints.txt 'setuptools>=68' wheel packaging
MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE \
  .venv/bin/pip install -q --no-build-isolation --no-deps mamba-ssm==2.2.6.post3 causal-conv1d==1.5.2
# test-only references for the composite measures: pysepm-evo (its numba/srmrpy imports are bypassed by
# the test) and, unpacked outside site-packages, sonusai 0.15.9, whose calc_metric_spenh.py ships CMGAN's
# compute_metrics functions (tests/test_fidelity_composite.py compiles only those; sonusai is never imported)
.venv/bin/pip install -q --no-deps pysepm-evo==0.1.1
[[ -f .venv/reference/sonusai/calc_metric_spenh.py ]] || \
  .venv/bin/pip install -q --no-deps --target .venv/reference sonusai==0.15.9
echo "[setup] ready: $(.venv/bin/python -c 'import torch; print("torch", torch.__version__)')"

"""Portable Mamba: mamba_ssm-compatible mixer, wrappers and the selective-scan dispatcher."""

from training.mamba.blocks import BiMamba, ResidualMamba, RMSNorm
from training.mamba.mixer import Mamba
from training.mamba.scan import selective_scan

__all__ = ["Mamba", "RMSNorm", "ResidualMamba", "BiMamba", "selective_scan"]

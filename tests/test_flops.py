"""FLOP counter: exact small cases, and the RWSA paper's published number."""

import torch
import torch.nn as nn

from training.mamba import Mamba
from training.models import build_model
from training.models.flops import count_all, count_macs, flops_input, paper_frames


def test_conv_linear_norm_rules():
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.InstanceNorm2d(4, affine=True), nn.PReLU(4))
    x = torch.zeros(1, 2, 5, 6)
    out_elems = 4 * 5 * 6
    conv = out_elems * 2 * 9
    norm = 2 * out_elems * 2
    assert count_macs(net, (x,), "full") == conv + norm
    assert count_macs(net, (x,), "thop") == conv + norm + out_elems  # thop profiles in eval: PReLU counts
    lin = nn.Linear(8, 3)
    assert count_all(lin, (torch.zeros(5, 8),)) == {"full": 5 * 8 * 3, "thop": 5 * 8 * 3}


def test_transposed_conv_conventions():
    m = nn.ConvTranspose1d(6, 2, 3, stride=2)
    x = torch.zeros(1, 6, 10)  # output length 21
    assert count_macs(m, (x,), "thop") == 2 * 21 * 6 * 3  # thop: out_elems * C_in * k
    assert count_macs(m, (x,), "full") == 6 * 10 * 2 * 3  # true MACs: in_elems * C_out * k


def test_mamba_conventions():
    m = Mamba(16, d_state=4, expand=2)  # d_inner 32, dt_rank 1
    b, length = 2, 7
    x = torch.randn(b, length, 16)
    conv = b * 32 * (length + 3) * 4  # conv1d output before cropping
    x_proj = b * length * 32 * (1 + 8)
    out_proj = b * length * 32 * 16
    assert count_macs(m, (x,), "thop") == conv + x_proj + out_proj
    in_proj, dt_proj = b * length * 16 * 64, b * length * 1 * 32
    scan = b * 32 * length * (6 * 4 + 2)
    assert count_macs(m, (x,), "full") == conv + x_proj + out_proj + in_proj + dt_proj + scan


def test_shared_module_counted_per_path_squared():
    shared = nn.Linear(4, 4)

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = shared, shared

        def forward(self, x):
            return self.a(x)  # two attributes of one parent: still one path

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.p, self.q = nn.Sequential(shared), nn.Sequential(shared)

        def forward(self, x):
            return self.p(x)

    x = torch.zeros(1, 4)
    assert count_macs(Two(), (x,), "thop") == 16  # named_children dedups within a parent
    assert count_macs(Outer(), (x,), "thop") == 16 * 4  # 2 paths: 2 hooks x 2 visits
    assert count_macs(Outer(), (x,), "full") == 16


def test_rwsa_xs_reproduces_paper_gflops():
    torch.manual_seed(0)
    model = build_model("rwsa-xs", seed=0)
    assert paper_frames(model) == 256
    macs = count_macs(model, flops_input(model, 256), "thop")
    assert round(macs / 1e9, 2) == 9.22


def test_mambattention_reproduces_paper_gflops():
    # MambAttention paper, Table VI: 65.52 G for one 2 s clip (T = 321)
    model = build_model("mambattention", seed=0)
    assert paper_frames(model) == 321
    assert round(count_macs(model, flops_input(model, 321), "thop") / 1e9, 2) == 65.52

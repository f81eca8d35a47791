"""Cluster profiles are data: the shipped ones load; mistakes name the file and key."""

from __future__ import annotations

import pytest

from common.config import ConfigError
from orchestrator.profiles import list_profiles, load_profile


def test_shipped_profiles_load():
    assert {"lumi", "cuda", "local"} <= set(list_profiles())
    lumi = load_profile("lumi")
    assert lumi.defaults["gpus_per_node"] == 8 and lumi.defaults["nproc"] == 8
    assert lumi.defaults["partition"] == "standard-g" and lumi.defaults["account"] == "project_xxx"
    masks = lumi.cpu_bind.removeprefix("mask_cpu:").split(",")
    assert len(masks) == 8 and len(set(masks)) == 8
    # 7 cores per GCD, disjoint masks (the first core of each CCD is left to the OS)
    bits = [int(m, 16) for m in masks]
    assert all(bin(b).count("1") == 7 for b in bits)
    union = 0
    for b in bits:
        assert union & b == 0
        union |= b
    assert union == int("fe" * 8, 16)  # cores 1-7 of each of the 8 CCDs of the 64-core CPU
    assert lumi.env["NCCL_SOCKET_IFNAME"] == "hsn0,hsn1,hsn2,hsn3" and lumi.env["NCCL_NET_GDR_LEVEL"] == "3"
    assert lumi.env["MIOPEN_USER_DB_PATH"].startswith("/tmp/")
    assert lumi.container.exec == "singularity exec" and lumi.container.image.endswith(".sif")
    # each task sees the job's GCDs and picks its own (training.distributed.pick_device)
    assert "ROCR_VISIBLE_DEVICES" not in lumi.task_env
    # CPU masks only for whole nodes; aws-ofi-rccl required (no TCP fallback); non-deprecated NCCL names
    assert lumi.cpu_bind_for(8) == lumi.cpu_bind and lumi.cpu_bind_for(4) is None
    assert lumi.env["NCCL_NET"] == "AWS Libfabric" and "module load singularity-AI-bindings" in lumi.setup
    cuda = load_profile("cuda")
    assert "CUDA_VISIBLE_DEVICES" not in cuda.task_env and cuda.cpu_bind_for(2) == cuda.cpu_bind == "cores"
    for prof in (lumi, cuda):
        assert "NCCL_ASYNC_ERROR_HANDLING" not in prof.env and prof.env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    local = load_profile("local")
    assert local.master_addr == "127.0.0.1" and local.python is None and local.requeue


@pytest.mark.parametrize("text, msg", [
    ("name: x\ndefaults: {gpus: 2}\n", "defaults.gpus: unknown resource"),
    ("name: x\nsignal_before_end_s: ten\n", "signal_before_end_s expects an integer"),
    ("name: x\nenv: {NCCL_X: 'a\"b'}\n", "env.NCCL_X: value may not contain"),
    ("name: x\nenv: {'1BAD': a}\n", "env.1BAD: not a valid environment variable name"),
    ("name: x\ncontainer: {imag: a.sif}\n", "container.imag"),
])
def test_profile_errors_name_file_and_key(tmp_path, text, msg):
    p = tmp_path / "prof.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_profile(str(p))
    assert str(p) in str(e.value) and msg in str(e.value), str(e.value)


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ConfigError, match="cluster profile not found .*lumi"):
        load_profile("nosuchcluster")

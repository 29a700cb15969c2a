"""CUDA and MPS probes. Marked; they skip cleanly where the device is absent. The first tests run
everywhere: a probe that cannot run says so in one line, and a CPU build's zeros are never taken."""
from __future__ import annotations

import pytest
import torch

from estimator.spec import load_spec
from estimator.workload import Workload
from harness.measure import CudaProbe, MpsProbe, build_model, measure, run_point
from tests.harness_helpers import quiet, tiny

quiet()
HAS_CUDA = torch.cuda.is_available()
HAS_MPS = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
WL = Workload(batch=2, prompt_len=16, dtype="bf16")


@pytest.mark.skipif(HAS_CUDA, reason="checks the no-CUDA path")
def test_cuda_unavailable_is_one_line_unsupported():
    r = measure(tiny("llama"), WL, device="cuda")
    assert r.status == "unsupported" and "\n" not in r.message and "CUDA" in r.message
    assert r.peak_allocated_bytes is None and r.peak_reserved_bytes is None  # never a CPU build's 0
    assert CudaProbe().unavailable()


@pytest.mark.skipif(HAS_MPS, reason="checks the no-MPS path")
def test_mps_unavailable_is_one_line_unsupported():
    r = measure(tiny("llama"), WL, device="mps")
    assert r.status == "unsupported" and "MPS" in r.message
    assert MpsProbe().unavailable()


@pytest.mark.cuda
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("phase", ["prefill", "generate"])
def test_cuda_probe_and_dry_run_agreement(phase):
    wl = Workload(batch=2, prompt_len=64, new_tokens=8 if phase == "generate" else 0, dtype="bf16", phase=phase)
    r = measure(tiny("llama"), wl, device="cuda")
    assert r.ok, r.message
    assert r.peak_allocated_bytes >= r.peak_tensor_bytes > r.weights_bytes > 0
    assert r.peak_reserved_bytes >= r.peak_allocated_bytes
    assert r.env["device_total_bytes"] > 0 and r.env["device_name"]
    dry = measure(tiny("llama"), wl, device="dry-run")
    # the tracker sees the same tensors on the GPU as the dry run does on fake cpu tensors, except where
    # a kernel picks a different path on CUDA (recorded, not asserted equal)
    assert abs(dry.peak_tensor_bytes - r.peak_tensor_bytes) <= 0.05 * r.peak_tensor_bytes


@pytest.mark.cuda
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_cuda_oom_is_recorded_and_process_stays_usable():
    free, _ = torch.cuda.mem_get_info()
    spec = load_spec(tiny("llama", vocab_size=32000))
    # logits alone: b * s * vocab * 2 bytes, far beyond the free memory
    batch = int(free // (4096 * 32000 * 2)) + 8
    r = measure(spec, Workload(batch=batch, prompt_len=4096, dtype="bf16"), device="cuda")
    assert r.status == "oom"
    again = measure(spec, Workload(batch=1, prompt_len=16, dtype="bf16"), device="cuda")
    assert again.ok


@pytest.mark.cuda
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_cuda_quantized_weight_bytes_match_cpu():
    pytest.importorskip("bitsandbytes")
    spec = load_spec(tiny("llama", hidden_size=128, intermediate_size=256))
    wl = Workload(batch=1, prompt_len=8, dtype="bf16", weights="nf4")
    gpu = build_model(spec, wl, "cuda")
    cpu = build_model(spec, wl, "cpu")
    assert gpu.weight_bytes == cpu.weight_bytes
    assert run_point(gpu, wl).ok


@pytest.mark.mps
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_MPS, reason="no MPS device")
def test_mps_probe_samples():
    r = measure(tiny("llama"), WL, device="mps")
    assert r.ok, r.message
    assert r.peak_tensor_bytes > r.weights_bytes > 0
    assert r.peak_allocated_bytes is not None and r.peak_allocated_bytes > 0

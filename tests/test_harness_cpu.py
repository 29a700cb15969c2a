"""The cpu probe on tiny models: tensor level vs torch.profiler and PyTorch's MemTracker, KV bytes,
quantized weight bytes, the memory cap, and the record."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from estimator.errors import MemcalError
from estimator.spec import load_spec
from estimator.workload import Workload
from harness import Measurement
from harness.measure import StorageTracker, build_model, make_inputs, measure, run_phase, run_point
from tests.harness_helpers import TINY, quiet, tiny

quiet()
FP32_PREFILL = Workload(batch=2, prompt_len=8, dtype="fp32", attention="sdpa")


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "phi3", "gemma", "mixtral"])
def test_tensor_peak_equals_profiler_peak_fp32(family):
    r = measure(tiny(family), FP32_PREFILL, device="cpu")
    assert r.ok, r.message
    assert r.peak_tensor_bytes == r.peak_allocated_bytes
    assert r.peak_tensor_bytes > r.weights_bytes > 0


def test_gpt2_profiler_sees_wrapped_scalars():
    # GPT-2's NewGELU multiplies by Python floats: TensorIterator wraps them in 4/8-byte tensors
    # inside the kernel call, never dispatched, so only the allocator sees them (20 bytes here).
    r = measure(tiny("gpt2"), FP32_PREFILL, device="cpu")
    assert 0 <= r.peak_allocated_bytes - r.peak_tensor_bytes <= 64


def test_bf16_matmul_scratch_is_allocator_only():
    r = measure(tiny("llama"), Workload(batch=2, prompt_len=8, dtype="bf16"), device="cpu")
    assert r.peak_allocated_bytes > r.peak_tensor_bytes


@pytest.mark.parametrize("family", sorted(TINY))
def test_tensor_peak_equals_pytorch_memtracker(family):
    from torch.distributed._tools.mem_tracker import MemTracker
    wl = FP32_PREFILL.with_(attention="eager")
    built = build_model(load_spec(tiny(family)), wl, "cpu")
    ids = make_inputs(built, wl)
    tracker = StorageTracker()
    tracker.track(built.tensors())
    tracker.track([ids])
    mem = MemTracker()
    mem.track_external(built.model, ids)
    with mem, tracker:
        run_phase(built, wl, ids)
    assert tracker.peak_bytes == mem.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]


def _kv_formula(spec, batch, length, dtype_bytes):
    return 2 * spec.num_layers * batch * length * spec.num_kv_heads * spec.head_dim * dtype_bytes


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2"])
@pytest.mark.parametrize("phase,cache", [("prefill", "dynamic"), ("generate", "dynamic"), ("generate", "static")])
def test_kv_bytes_dense(family, phase, cache):
    spec = load_spec(tiny(family))
    wl = Workload(batch=3, prompt_len=7, new_tokens=4 if phase == "generate" else 0, dtype="bf16",
                  phase=phase, cache=cache)
    r = measure(spec, wl, device="cpu")
    assert r.ok, r.message
    # generate never feeds its last token back: kv_len positions. transformers 5.23 sizes a static
    # cache max_length - 1 = kv_len too, and each StaticLayer adds an int64 `cumulative_length`.
    bookkeeping = 8 * spec.num_layers if cache == "static" else 0
    assert r.kv_cache_bytes == _kv_formula(spec, 3, wl.kv_len, 2) + bookkeeping


def test_kv_bytes_sliding_window_keeps_full_storage():
    # transformers 5.23: DynamicSlidingWindowLayer keeps keys = full[:, :, -window+1:], a view: the
    # storage of the whole concatenation stays alive and is what memory holds; each layer also keeps
    # an int64 `_sliding_window_tensor`.
    spec = load_spec(tiny("mistral", sliding_window=4))
    r = measure(spec, Workload(batch=2, prompt_len=10, dtype="fp32"), device="cpu")
    assert r.kv_cache_bytes == _kv_formula(spec, 2, 10, 4) + 8 * spec.num_layers


@pytest.mark.parametrize("weights,double_quant", [("int8", False), ("nf4", False), ("nf4", True), ("fp4", False)])
def test_quantized_weight_bytes(weights, double_quant):
    pytest.importorskip("bitsandbytes")
    formulas = pytest.importorskip("estimator.formulas.memcal")
    spec = load_spec(tiny("llama", hidden_size=128, intermediate_size=256))
    wl = Workload(batch=1, prompt_len=4, dtype="bf16", weights=weights, double_quant=double_quant)
    built = build_model(spec, wl, "cpu")
    buffers = sum(b.untyped_storage().nbytes() for b in built.model.buffers())  # rotary inv_freq (x2)
    quant_state = built.weight_bytes - sum(p.untyped_storage().nbytes() for p in built.model.parameters()) - buffers
    assert quant_state > 0  # SCB / absmax / quant maps: what get_memory_footprint leaves out
    assert built.model.get_memory_footprint() < built.weight_bytes
    # Measured = parameters (int8 / packed uint8, the rest in bf16) + buffers + SCB or absmax (+ nested
    # absmax, nested code, offset) + one 16-entry fp32 quant map per 4-bit Linear; 4-bit weights after
    # bitsandbytes' CPU repacking (bf16 absmax, no nesting) where the build's warm-up triggered it.
    repacked = any("repacked" in note for note in built.notes)
    assert formulas.weight_bytes(spec, wl, device="cpu" if repacked else None) == built.weight_bytes
    r = run_point(built, wl)
    assert r.ok, r.message


def test_memory_cap_records_oom_then_next_point_runs():
    spec = load_spec(tiny("llama"))
    wl = Workload(batch=2, prompt_len=16, dtype="fp32")
    ok = measure(spec, wl, device="cpu")
    cap = ok.baseline_bytes + ok.activation_bytes // 2
    oom = measure(spec, wl, device="cpu", memory_cap=cap)
    assert oom.status == "oom" and "memory cap" in oom.message
    assert oom.memory_cap_bytes == cap and oom.peak_tensor_bytes > cap
    again = measure(spec, wl, device="cpu")
    assert again.ok and again.peak_tensor_bytes == ok.peak_tensor_bytes


def test_built_model_is_reused_across_points():
    spec = load_spec(tiny("qwen2"))
    built = build_model(spec, Workload(batch=1, prompt_len=4, dtype="fp32"), "cpu")
    peaks = [run_point(built, Workload(batch=b, prompt_len=8, dtype="fp32")).peak_tensor_bytes for b in (1, 2, 4)]
    assert peaks[0] < peaks[1] < peaks[2]
    with pytest.raises(MemcalError):
        run_point(built, Workload(batch=1, prompt_len=4, dtype="bf16"))


@pytest.mark.parametrize("changes,reason", [
    (dict(weights="Q4_K_M"), "GGUF"), (dict(kv_dtype="fp8"), "estimate-only")])
def test_estimate_only_settings_are_unsupported(changes, reason):
    r = measure(tiny("llama"), Workload(batch=1, prompt_len=4, **changes), device="cpu")
    assert r.status == "unsupported" and reason in r.message


def test_record_roundtrip_and_validation():
    r = measure(tiny("llama"), Workload(batch=1, prompt_len=4, dtype="fp32"), device="cpu")
    data = r.to_dict()
    assert all(isinstance(data[k], int) for k in ("weights_bytes", "kv_cache_bytes", "peak_tensor_bytes"))
    assert data["env"]["torch"] == torch.__version__ and data["schema_version"] == 2  # 2: CUDA target fields
    assert Measurement.from_dict(data) == r
    with pytest.raises(TypeError):
        dataclasses.replace(r, weights_bytes=1.5)
    with pytest.raises(ValueError):
        dataclasses.replace(r, kv_cache_bytes=-1)
    with pytest.raises(ValueError):
        dataclasses.replace(r, status="fine")
    with pytest.raises(ValueError):
        Measurement.from_dict({**data, "schema_version": 99})


def test_static_cache_is_sized_per_point_not_by_an_earlier_larger_call():
    """transformers remembers the largest static cache a model's generate made; points must not inherit it."""
    from estimator.formulas import memcal
    from estimator.spec import load_spec
    from harness.measure import build_model, run_point
    config = tiny("llama")
    big = Workload(batch=2, prompt_len=40, new_tokens=8, dtype="fp32", cache="static")
    small = big.with_(prompt_len=8, new_tokens=4)
    built = build_model(load_spec(config), big, "cpu")
    first, second = run_point(built, big), run_point(built, small)
    assert first.status == second.status == "ok"
    assert second.kv_cache_bytes == memcal.kv_cache_bytes(load_spec(config), small) < first.kv_cache_bytes

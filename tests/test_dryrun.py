"""The dry run (fake tensors) against real CPU runs of the same tiny models, to the byte; and the
dry run at real sizes (Llama-3-70B, b=16, s=8192) on this machine, in seconds."""
from __future__ import annotations

import time

import pytest

from estimator.spec import load_spec
from estimator.workload import Workload
from harness.measure import build_model, measure, run_point
from tests.harness_helpers import DENSE, quiet, tiny

quiet()


def _pair(config, dtype, attention, workloads, cache="dynamic"):
    spec = load_spec(config)
    first = Workload(batch=1, prompt_len=4, dtype=dtype, attention=attention)
    real, fake = build_model(spec, first, "cpu"), build_model(spec, first, "dry-run")
    assert real.weight_bytes == fake.weight_bytes
    for wl in workloads:
        traces = [], []
        r = run_point(real, wl, keep_trace=True, tracker_out=traces[0])
        f = run_point(fake, wl, keep_trace=True, tracker_out=traces[1])
        assert r.ok and f.ok, (r.message, f.message)
        real_trace, fake_trace = ([(e.op, e.delta_bytes) for e in t[0].trace] for t in traces)
        yield wl, r, f, real_trace, fake_trace


def _workloads(dtype, attention, cache="dynamic"):
    return [Workload(batch=2, prompt_len=8, dtype=dtype, attention=attention),
            Workload(batch=2, prompt_len=8, new_tokens=3, dtype=dtype, attention=attention, cache=cache)]


CASES = [(f, d, a) for f in DENSE for d in ("fp32", "bf16") for a in ("eager", "sdpa")]
CASES += [("mixtral", "bf16", "eager"), ("mixtral", "bf16", "sdpa"), ("mixtral", "fp32", "eager"),
          ("gemma2", "fp32", "eager"), ("gemma2", "bf16", "eager")]


@pytest.mark.slow
@pytest.mark.parametrize("family,dtype,attention", CASES)
def test_dry_run_equals_real_cpu(family, dtype, attention):
    for wl, real, fake, real_trace, fake_trace in _pair(tiny(family), dtype, attention, _workloads(dtype, attention)):
        assert fake.peak_tensor_bytes == real.peak_tensor_bytes, wl.describe()
        assert fake.kv_cache_bytes == real.kv_cache_bytes
        assert fake_trace == real_trace  # every allocation and free, in order


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "mistral", "gpt2"])
def test_dry_run_static_cache_and_sliding_window(family):
    config = tiny(family, sliding_window=4) if family == "mistral" else tiny(family)
    wls = [Workload(batch=2, prompt_len=8, new_tokens=3, dtype="bf16", cache="static")]
    for wl, real, fake, real_trace, fake_trace in _pair(config, "bf16", "sdpa", wls):
        assert fake.peak_tensor_bytes == real.peak_tensor_bytes
        assert fake_trace == real_trace


@pytest.mark.slow
def test_dry_run_decode_dominated_peak():
    # One prompt token, many new ones: the peak is in the decode loop (cache growth), not the prefill.
    wls = [Workload(batch=4, prompt_len=1, new_tokens=16, dtype="fp32", attention="eager")]
    for wl, real, fake, real_trace, fake_trace in _pair(tiny("gpt2", vocab_size=64), "fp32", "eager", wls):
        prefill = measure(tiny("gpt2", vocab_size=64), Workload(batch=4, prompt_len=1, dtype="fp32"), device="cpu")
        assert real.peak_tensor_bytes > prefill.peak_tensor_bytes
        assert fake.peak_tensor_bytes == real.peak_tensor_bytes
        assert fake_trace == real_trace


def test_moe_dry_run_equals_real_cpu_where_grouped_mm_rejects_the_strides():
    # hidden 36 and expert width 20 in bf16: rows of 72 and 40 bytes, which torch's CPU grouped_mm
    # refuses; both runs take transformers' fallback op (harness/measure/_experts.py)
    config = tiny("mixtral", hidden_size=36, intermediate_size=20, num_attention_heads=2, num_key_value_heads=1)
    for wl, real, fake, real_trace, fake_trace in _pair(config, "bf16", "eager", _workloads("bf16", "eager")):
        assert fake.peak_tensor_bytes == real.peak_tensor_bytes, wl.describe()
        assert fake_trace == real_trace


LLAMA3_70B = dict(model_type="llama", hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                  num_attention_heads=64, num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072,
                  rope_theta=500000.0, tie_word_embeddings=False, _name_or_path="llama-3-70b-shape")


@pytest.mark.slow
def test_llama3_70b_dry_run_in_seconds():
    spec = load_spec(LLAMA3_70B)
    wl = Workload(batch=16, prompt_len=8192, dtype="bf16", attention="sdpa")
    start = time.perf_counter()
    r = measure(spec, wl, device="dry-run")
    elapsed = time.perf_counter() - start
    assert r.ok, r.message
    assert elapsed < 60
    assert r.weights_bytes == 2 * spec.parameters + 2 * 64 * 4  # + rotary inv_freq, original_inv_freq (fp32)
    assert r.kv_cache_bytes == 2 * 80 * 16 * 8192 * 8 * 128 * 2  # 40 GiB
    logits = 16 * 8192 * 128256 * 2
    assert r.peak_tensor_bytes > r.weights_bytes + r.kv_cache_bytes + logits


def test_dry_run_memory_cap_answers_does_it_fit():
    spec = load_spec(LLAMA3_70B)
    r = measure(spec, Workload(batch=1, prompt_len=128, dtype="bf16"), device="dry-run", memory_cap=24 * 2**30)
    assert r.status == "oom" and "memory cap" in r.message
    small = measure(tiny("llama"), Workload(batch=1, prompt_len=8), device="dry-run", memory_cap=24 * 2**30)
    assert small.ok


@pytest.mark.parametrize("family,attention", [("llama", "sdpa"), ("llama", "eager"), ("gpt2", "sdpa"),
                                              ("mistral", "sdpa")])
def test_dry_run_with_a_padded_batch_equals_real_cpu(family, attention):
    """A padded batch (rows 2.. left-padded, the mask passed as a tokenizer passes it): the dry run knows
    the mask's value, so transformers' padding masks, positions and every allocation are the real run's."""
    wls = [Workload(batch=3, prompt_len=12, dtype="bf16", attention=attention, padding=5),
           Workload(batch=3, prompt_len=12, new_tokens=3, dtype="bf16", attention=attention, padding=5)]
    for wl, real, fake, real_trace, fake_trace in _pair(tiny(family), "bf16", attention, wls):
        assert fake.peak_tensor_bytes == real.peak_tensor_bytes, wl.describe()
        assert fake.kv_cache_bytes == real.kv_cache_bytes
        assert fake_trace == real_trace

"""A dry-run generate with its periodic decode steps computed in closed form (harness/measure/_decode.py)
against the full trace of the same point: peak, final KV bytes, baseline and peak op identical to the
byte, for every family the formula supports (random small configs, tests/family_cases.py), at
new-token counts that cross sliding windows, attention chunks and Phi-3's original_max_position_embeddings.
"""
from __future__ import annotations

import pytest

from estimator import Workload
from estimator.spec import spec_from_dict, supported_families
from tests.family_cases import random_configs
from tests.harness_helpers import quiet, tiny

pytest.importorskip("torch")
import harness.measure._decode as decode  # noqa: E402  (white box: the pattern, the range's peak)
from harness.measure import build_model, run_point  # noqa: E402

quiet()
PROMPT = 6
CLOSED_FORM = "computed in closed form"


def _phi3_longrope(**extra) -> dict:
    """Phi-3 with long RoPE switching at 16 positions: generate re-runs the cache there (modeling_phi3)."""
    half = 8  # head_dim 16
    return tiny("phi3", head_dim=16, max_position_embeddings=64, original_max_position_embeddings=16,
                rope_parameters=dict(rope_type="longrope", rope_theta=10000.0, short_factor=[1.0] * half,
                                     long_factor=[1.5] * half, original_max_position_embeddings=16), **extra)


class _Refused(Exception):
    """transformers or the harness refuses to build this combination (e.g. Falcon's ALiBi over a static cache)."""


def compare(config: dict, counts, *, cache: str = "dynamic", batch: int = 2) -> list[str]:
    """Full and extrapolated dry runs at each new-token count; returns the extrapolated records' notes."""
    spec = spec_from_dict(config)
    notes = []
    for attention in ("sdpa", "eager"):
        first = Workload(batch=batch, prompt_len=PROMPT, new_tokens=counts[0], dtype="fp32", attention=attention,
                         phase="generate", cache=cache)
        try:
            built = build_model(spec, first, "dry-run")
        except ValueError as exc:  # no SDPA for this family: eager
            refused = str(exc).splitlines()[0]
            continue
        for n in counts:
            w = Workload(batch=batch, prompt_len=PROMPT, new_tokens=n, dtype="fp32", attention=attention,
                         phase="generate", cache=cache)
            # a fresh model each: a first generate leaves state on the model (Phi-3's long_inv_freq, 32 bytes)
            full = run_point(built if n == counts[0] else build_model(spec, w, "dry-run"), w, extrapolate=False)
            fast = run_point(build_model(spec, w, "dry-run"), w)
            label = f"{spec.family} {cache} {attention} new_tokens={n}: {full.message or fast.message}"
            assert (full.status, fast.status) == (full.status, full.status), label
            assert full.peak_tensor_bytes == fast.peak_tensor_bytes, label
            assert full.kv_cache_bytes == fast.kv_cache_bytes, label
            assert full.baseline_bytes == fast.baseline_bytes, label
            assert full.peak_op == fast.peak_op, label
            notes.extend(n for n in fast.notes if n.startswith("dry-run generate") and "decode step" in n)
        return notes
    raise _Refused(f"{spec.family} ({cache} cache): no attention implementation builds: {refused}")


def test_llama_extrapolated_equals_full():
    notes = compare(tiny("llama"), [24])
    assert CLOSED_FORM in notes[0], notes


def test_sliding_window_and_static_caches():
    notes = compare(tiny("mistral", sliding_window=8), [24])
    notes += compare(tiny("llama"), [24], cache="static")
    notes += compare(tiny("mistral", sliding_window=8), [24], cache="static")
    assert all(CLOSED_FORM in n for n in notes), notes


def test_phi3_longrope_crossing():
    notes = compare(_phi3_longrope(), [30])
    assert CLOSED_FORM in notes[0], notes


def test_range_peak_is_the_first_of_equal_maxima():
    # two events: +10 (grows by 1 a step), -10 (shrinks by 1): net 0 per step
    ops, base, slope = ("a", "free"), [10, -10], [1, -1]
    assert decode._range_peak(ops, base, slope, 0, 100, 3, 7) == (117, 7, "a")
    flat = decode._range_peak(("a", "free"), [5, -5], [0, 0], 0, 100, 3, 7)
    assert flat == (105, 3, "a")


def test_pattern_needs_consecutive_affine_steps():
    steps = [(j, 0, [("cat", 8 * j), ("free", -8 * j)]) for j in range(2, 6)]
    assert decode._pattern(steps) == (("cat", "free"), [16, -16], [8, -8], 2)
    broken = steps[:3] + [(5, 0, [("cat", 41), ("free", -40)])]
    assert decode._pattern(broken) is None
    assert decode._pattern(steps[:2] + steps[3:]) is None  # not consecutive


def _family_config(family: str) -> dict:
    """A random config of `family` (Phi-3's with long RoPE), with room for 6 + 28 positions in a learned table."""
    config = random_configs(family, 1, seed="decode14")[0]
    if family == "phi3":
        config = _phi3_longrope()
    if spec_from_dict(config).learned_positions:
        key = "n_positions" if "n_positions" in config else "max_position_embeddings"
        config = {**config, key: max(config.get(key) or 0, 40)}
    return config


@pytest.mark.slow
@pytest.mark.parametrize("family", supported_families())
def test_every_family_extrapolated_equals_full(family):
    config = _family_config(family)
    # 10 tokens: one range skipped; 28: sliding windows and chunks of 4, 8 and 16 filled after a prompt of 6
    notes = compare(config, [10, 28], batch=1)
    print(family, notes)


def test_measure_freezes_the_collector_only_while_it_runs():
    import gc

    from harness.measure import measure
    frozen, enabled = gc.get_freeze_count(), gc.isenabled()
    w = Workload(batch=1, prompt_len=4, new_tokens=12, dtype="fp32", attention="sdpa", phase="generate")
    fast = measure(tiny("llama"), w, device="dry-run")
    full = measure(tiny("llama"), w, device="dry-run", extrapolate=False)
    assert gc.get_freeze_count() == frozen and gc.isenabled() == enabled
    assert (fast.peak_tensor_bytes, fast.kv_cache_bytes) == (full.peak_tensor_bytes, full.kv_cache_bytes)
    assert any(CLOSED_FORM in n for n in fast.notes) and not any(CLOSED_FORM in n for n in full.notes)


@pytest.mark.slow
@pytest.mark.parametrize("family", supported_families())
def test_every_family_static_cache_extrapolated_equals_full(family):
    config = _family_config(family)
    try:
        notes = compare(config, [28], cache="static", batch=1)
    except _Refused as exc:
        pytest.skip(str(exc))
    print(family, "static", notes)

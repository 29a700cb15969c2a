"""A dry run with its repeated decoder layers computed from their templates (harness/measure/_layers.py)
against the full trace of the same point: peak, KV bytes, baseline, weights and peak op identical to
the byte, for every family the formula supports (random small configs with 8 layers,
tests/family_cases.py), prefill and generate, dynamic and static caches.
"""
from __future__ import annotations

import pytest

from estimator import Workload
from estimator.spec import spec_from_dict, supported_families
from tests.family_cases import random_configs
from tests.harness_helpers import quiet, tiny

pytest.importorskip("torch")
import torch  # noqa: E402

import harness.measure._layers as layers_mod  # noqa: E402  (white box: the layer list, the keys)
from harness.measure import build_model, measure, run_point  # noqa: E402

quiet()
LAYERS = 8
COMPUTED = "decoder layers per forward computed from their templates"
FIELDS = ("status", "peak_tensor_bytes", "kv_cache_bytes", "baseline_bytes", "weights_bytes", "peak_op")


class _Refused(Exception):
    """transformers or the harness refuses to build this combination."""


def _workload(phase: str, attention: str, cache: str = "dynamic", batch: int = 1, dtype: str = "fp32") -> Workload:
    new = 6 if phase == "generate" else 0
    return Workload(batch=batch, prompt_len=10, new_tokens=new, dtype=dtype, attention=attention, phase=phase,
                    cache=cache)


def compare(config: dict, phase: str, cache: str = "dynamic", batch: int = 1) -> list[str]:
    """Full and computed dry runs of one point; returns the computed record's notes."""
    spec = spec_from_dict(config)
    refused = ""
    for attention in ("sdpa", "eager"):
        w = _workload(phase, attention, cache, batch)
        try:
            full = run_point(build_model(spec, w, "dry-run"), w, extrapolate=False)
        except ValueError as exc:  # no SDPA for this family: eager
            refused = str(exc).splitlines()[0]
            continue
        fast = run_point(build_model(spec, w, "dry-run"), w)
        label = f"{spec.family} {phase} {cache} {attention}: {full.message or fast.message} {fast.notes}"
        for field in FIELDS:
            assert getattr(full, field) == getattr(fast, field), f"{field}: {label}"
        assert not any(COMPUTED in n for n in full.notes), full.notes
        return list(fast.notes)
    raise _Refused(f"{spec.family} ({cache} cache): no attention implementation builds: {refused}")


def _family_config(family: str) -> dict:
    # nemotron_h's default draw has no block kind four times (nothing to compute); this one has five attention blocks
    seed = "layers14-0" if family == "nemotron_h" else "layers14"
    config = random_configs(family, 1, seed=seed, layers=LAYERS)[0]
    if spec_from_dict(config).learned_positions:
        key = "n_positions" if "n_positions" in config else "max_position_embeddings"
        config = {**config, key: max(config.get(key) or 0, 40)}
    return config


def _computed(notes) -> bool:
    return any(COMPUTED in n for n in notes)


@pytest.mark.parametrize("phase", ["prefill", "generate"])
def test_llama_layers_computed_equal_full(phase):
    notes = compare(tiny("llama", num_hidden_layers=LAYERS), phase)
    assert f"5 of {LAYERS} {COMPUTED}" in " ".join(notes), notes


def test_sliding_window_and_static_caches():
    notes = compare(tiny("mistral", sliding_window=8, num_hidden_layers=LAYERS), "generate")
    notes += compare(tiny("llama", num_hidden_layers=LAYERS), "generate", cache="static")
    notes += compare(tiny("llama", num_hidden_layers=LAYERS), "prefill", cache="static")
    assert sum(COMPUTED in n for n in notes) == 3, notes


def test_long_generate_with_decode_steps_in_closed_form():
    """Both extrapolations at once: the decode pattern is read off steps whose middle layers were computed."""
    config = tiny("llama", num_hidden_layers=LAYERS)
    w = Workload(batch=2, prompt_len=6, new_tokens=24, dtype="fp32", attention="sdpa", phase="generate")
    fast = measure(config, w, device="dry-run")
    full = measure(config, w, device="dry-run", extrapolate=False)
    for field in FIELDS:
        assert getattr(full, field) == getattr(fast, field), (field, fast.notes)
    assert any("computed in closed form" in n for n in fast.notes), fast.notes
    assert _computed(fast.notes), fast.notes


def _peaks_per_layer(config: dict, phase: str, extrapolate: bool, attention: str = "sdpa", dtype: str = "fp32",
                     batch: int = 1) -> list[tuple]:
    """(peak bytes, peak op, live bytes) at the end of every decoder layer call of a dry run."""
    spec = spec_from_dict(config)
    w = _workload(phase, attention, batch=batch, dtype=dtype)
    built = build_model(spec, w, "dry-run")
    seen = []

    def after(module, args, output):
        tracker = built.fake_mode.tracker
        seen.append((tracker.peak_bytes, tracker.peak_op, tracker.live_bytes))
    for layer in layers_mod.decoder_layers(built.model):
        layer.register_forward_hook(after)
    record = run_point(built, w, extrapolate=extrapolate)
    assert record.status == "ok", record.message
    return seen, _computed(record.notes)


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen3_next"])
@pytest.mark.parametrize("phase", ["prefill", "generate"])
def test_the_peak_after_every_layer(family, phase):
    """A computed layer sets the peak (and its op) as the traced one did: each layer adds its keys and
    values, so every layer's own peak passes the run's peak so far."""
    config = tiny(family, num_hidden_layers=LAYERS) if family != "qwen3_next" else _family_config(family)
    (full, _), (fast, computed) = _peaks_per_layer(config, phase, False), _peaks_per_layer(config, phase, True)
    assert computed and len(full) == len(fast) and full == fast
    assert len({peak for peak, _, _ in full[:LAYERS]}) >= LAYERS - 1  # the peak moved in (nearly) every layer


def test_layer_list_and_keys():
    from transformers import AutoConfig, AutoModelForCausalLM
    config = dict(tiny("llama", num_hidden_layers=4))
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
    layers = layers_mod.decoder_layers(model)
    assert layers is model.model.layers
    keys = {layers_mod.structure(layer) for layer in layers}
    assert len(keys) == 1  # layer_idx left out: one structure
    layers[2].mlp.up_proj = torch.nn.Linear(layers[2].mlp.up_proj.in_features, 3, bias=False)
    assert len({layers_mod.structure(layer) for layer in layers}) == 2


def test_a_middle_layer_that_differs_is_the_known_limit():
    """A middle layer allocating more than its template is not seen (it is never run): the documented limit.
    The same extra allocation in the last layer of the structure is caught, and the point measured in full."""
    config = tiny("llama", num_hidden_layers=LAYERS)
    spec = spec_from_dict(config)
    w = _workload("prefill", "sdpa")
    extra = []

    def odd(layer):
        mlp = layer.mlp.forward  # an instance attribute of a submodule: not in the layer's structural key

        def patched(*args, **kwargs):
            extra.append(torch.empty(4096, dtype=torch.float32, device=args[0].device))  # kept: 16 KiB
            return mlp(*args, **kwargs)
        layer.mlp.forward = patched

    def run(index, extrapolate):
        built = build_model(spec, w, "dry-run")
        odd(built.model.model.layers[index])
        extra.clear()
        return run_point(built, w, extrapolate=extrapolate)

    full = run(LAYERS - 1, False)
    fast = run(LAYERS - 1, True)
    assert full.peak_tensor_bytes == fast.peak_tensor_bytes
    assert any("every decoder layer traced" in n and f"layer {LAYERS - 1} differs" in n for n in fast.notes), fast.notes
    middle_full, middle_fast = run(4, False), run(4, True)
    assert middle_fast.peak_tensor_bytes != middle_full.peak_tensor_bytes  # the limit: see _layers.py's module doc
    assert _computed(middle_fast.notes)


def test_off_for_the_cuda_target_and_a_split_model():
    from estimator.spec import load_spec
    from harness.measure import device_placement
    config = tiny("llama", num_hidden_layers=LAYERS)
    w = _workload("prefill", "sdpa")
    assert _computed(measure(config, w, device="dry-run").notes)
    assert not _computed(measure(config, w, device="dry-run", gpu="H100-80GB").notes)
    spec = load_spec(config)
    placement = device_placement(spec, w, gpus=2, strategy="auto", max_memory={0: 1 << 20, 1: 1 << 30})
    split = measure(spec, w, device="dry-run", placement=placement)
    assert split.status == "ok" and len(split.devices) == 2 and not _computed(split.notes), split.message


def test_a_cap_passed_inside_a_middle_layer():
    """The cap falls inside layer 3 (one that would be computed): that layer is traced, the tracker raises at
    the exact op, and the record equals the full trace's."""
    config = tiny("llama", num_hidden_layers=LAYERS)
    peaks, _ = _peaks_per_layer(config, "prefill", False)
    assert peaks[2][0] < peaks[3][0]
    w = _workload("prefill", "sdpa")
    fast = measure(config, w, device="dry-run", memory_cap=peaks[3][0] - 1)
    full = measure(config, w, device="dry-run", memory_cap=peaks[3][0] - 1, extrapolate=False)
    assert fast.status == full.status == "oom"
    assert (fast.peak_tensor_bytes, fast.message) == (full.peak_tensor_bytes, full.message)


def test_off_with_a_trace_or_a_cap_past_the_peak():
    config = tiny("llama", num_hidden_layers=LAYERS)
    w = _workload("prefill", "sdpa")
    traced = measure(config, w, device="dry-run", keep_trace=True)
    assert not _computed(traced.notes)
    fast = measure(config, w, device="dry-run")
    capped = measure(config, w, device="dry-run", memory_cap=fast.peak_tensor_bytes - 1)
    full_capped = measure(config, w, device="dry-run", memory_cap=fast.peak_tensor_bytes - 1, extrapolate=False)
    assert capped.status == full_capped.status == "oom"
    assert (capped.peak_tensor_bytes, capped.message) == (full_capped.peak_tensor_bytes, full_capped.message)


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["prefill", "generate"])
@pytest.mark.parametrize("family", supported_families())
def test_every_family_computed_equals_full(family, phase):
    notes = compare(_family_config(family), phase)
    print(family, phase, notes)


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["prefill", "generate"])
@pytest.mark.parametrize("family", supported_families())
def test_every_family_the_peak_after_every_layer(family, phase):
    """bf16, eager attention, batch 2 (sdpa where eager is refused): the peak, its op and the live bytes
    after every decoder layer call, computed and traced."""
    config = _family_config(family)
    try:
        full, _ = _peaks_per_layer(config, phase, False, "eager", "bf16", 2)
        fast, computed = _peaks_per_layer(config, phase, True, "eager", "bf16", 2)
    except ValueError:
        full, _ = _peaks_per_layer(config, phase, False, "sdpa", "bf16", 2)
        fast, computed = _peaks_per_layer(config, phase, True, "sdpa", "bf16", 2)
    assert computed and full == fast
    print(family, phase, len(full))


@pytest.mark.slow
@pytest.mark.parametrize("family", supported_families())
def test_every_family_long_generate_both_extrapolations(family):
    """28 new tokens after a prompt of 6: sliding windows and chunks fill up, the decode steps between
    are computed in closed form from steps whose middle layers were computed from their templates."""
    from tests.test_decode_extrapolation import compare as compare_decode
    config = _family_config(family)
    if family == "phi3":
        from tests.test_decode_extrapolation import _phi3_longrope
        config = _phi3_longrope(num_hidden_layers=LAYERS)
    notes = compare_decode(config, [28], batch=1)
    print(family, notes)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "mistral", "gemma2", "qwen3_next", "gpt_oss", "nemotron_h"])
def test_static_cache_computed_equals_full(family):
    try:
        notes = compare(_family_config(family), "generate", cache="static")
    except _Refused as exc:
        pytest.skip(str(exc))
    print(family, "static", notes)

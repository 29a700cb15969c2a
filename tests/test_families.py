"""Every record of the architecture table against transformers itself.

For each family: the record's config defaults are the config class's (dataclass field defaults, the
attribute map); on random small configs (hypothesis, tests/family_cases.py) the spec reads the same
KV heads, head_dim and per-layer attention kinds as the config object and transformers' cache
(`get_layer_types_and_kwargs`); and the parameter layout lists exactly the parameters and buffers
(name, shape, dtype) of the model built on the meta device. Families are data: a record written into
a temporary folder (a renamed copy of a known family) is read, laid out and estimated with no code
change.
"""
from __future__ import annotations

import dataclasses
import re
import shutil
from collections import Counter

import pytest

from estimator import Workload, families
from estimator.formulas import memcal
from estimator.params import parameter_layout
from estimator.spec import load_spec, spec_from_dict, supported_families
from tests.family_cases import configs

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
hypothesis = pytest.importorskip("hypothesis")
from transformers import CONFIG_MAPPING, AutoModelForCausalLM  # noqa: E402
from transformers.cache_utils import get_layer_types_and_kwargs  # noqa: E402

transformers.logging.set_verbosity_error()
FAMILIES = supported_families()
EXAMPLES = 50
_DTYPES = {"fp32": torch.float32, "bool": torch.bool, "int64": torch.int64, "compute": torch.bfloat16}


def hf_config(config: dict):
    return CONFIG_MAPPING[config["model_type"]].from_dict(dict(config))


def meta_model(config: dict, dtype=torch.bfloat16):
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(hf_config(config), dtype=dtype)


def relative(record: families.FamilyRecord, name: str) -> str:
    """A parameter's name relative to its layer ('model.layers.3.mlp.up_proj.weight' -> 'mlp.up_proj.weight')."""
    prefix = re.escape(record.prefix)
    return re.sub(rf"^{prefix}\.({re.escape(record.layers_path)}\.\d+\.)?", "", name)


def assert_matches_meta(config: dict) -> None:
    spec = spec_from_dict(config)
    layout = parameter_layout(spec)
    model = meta_model(config)
    seen = Counter((relative(spec.record, n), tuple(p.shape)) for n, p in model.named_parameters())
    want = Counter()
    for name, shape, count in layout.stored():
        want[(name, shape)] += count
    assert seen == want, f"model has {seen - want}, layout has {want - seen}"
    assert layout.parameters == sum(p.numel() for p in model.parameters())
    buffers = Counter((relative(spec.record, n), tuple(b.shape), b.dtype) for n, b in model.named_buffers())
    want_buffers = Counter({(t.name, t.shape, _DTYPES[t.dtype]): t.count for t in layout.buffers})
    assert buffers == want_buffers
    assert memcal.buffer_bytes(spec, Workload(dtype="bf16")) == \
        sum(b.numel() * b.element_size() for b in model.buffers())


def assert_reads_like_transformers(config: dict) -> None:
    spec = spec_from_dict(config)
    hf = hf_config(config)
    text = hf.get_text_config()
    if spec.declares_kv_heads:  # other classes keep a stray num_key_value_heads as a plain attribute
        assert spec.num_kv_heads == text.num_key_value_heads
        assert spec.head_dim == (getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads)
    types, kwargs = get_layer_types_and_kwargs(hf)
    assert spec.layer_types == tuple(types)
    windows = {kw["sliding_window"] for t, kw in zip(types, kwargs) if t == "sliding_attention"}
    assert windows <= {spec.sliding_window}


@pytest.mark.parametrize("family", FAMILIES)
def test_record_defaults_are_the_config_class_defaults(family):
    record = families.get(family)
    cls = CONFIG_MAPPING[family]
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    for key, value in record.config.items():
        if key in defaults:
            assert defaults[key] == value, f"{family}.{key}: class default {defaults[key]!r}, record {value!r}"
    for key in record.nulls:
        if key in defaults:
            assert defaults[key] is None, f"{family}.{key}: class default {defaults[key]!r}, record None"
    assert dict(record.attribute_map).items() <= dict(getattr(cls, "attribute_map", {})).items()
    assert record.declares_kv_heads == hasattr(cls(), "num_key_value_heads")


@pytest.mark.parametrize("family", FAMILIES)
def test_random_configs_read_and_lay_out_like_transformers(family):
    """≥50 random configs per family: dims, layer kinds, every parameter and buffer."""
    @hypothesis.settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(configs(family))
    def check(config):
        assert_reads_like_transformers(config)
        assert_matches_meta(config)

    check()


def test_every_record_evaluates_on_its_class_defaults():
    """No record reads a name it does not define (a typo shows here): each is read on a config of
    nothing but the sizes."""
    for family in FAMILIES:
        spec = load_spec(dict(model_type=family, hidden_size=128, num_attention_heads=32, num_hidden_layers=2,
                              intermediate_size=32, vocab_size=100, n_embd=128, n_head=32, n_layer=2))
        assert parameter_layout(spec).parameters > 0
        assert memcal.estimate(spec, Workload(batch=1, prompt_len=8)).total_bytes > 0


def test_a_new_record_is_estimated_with_no_code_change(tmp_path):
    """A test-only family: Qwen2's record renamed. It reads, lays out and estimates exactly as qwen2."""
    source = families.get("qwen2").path
    text = open(source).read().replace('model_type = "qwen2"', 'model_type = "memcal_test_family"')
    (tmp_path / "memcal_test_family.toml").write_text(text)
    shutil.copy(families.get("llama").path, tmp_path / "llama.toml")  # its parent resolves from the folder too
    families.add_path(tmp_path)
    try:
        assert "memcal_test_family" in supported_families()
        config = dict(model_type="qwen2", hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                      num_hidden_layers=3, intermediate_size=96, vocab_size=500)
        ours, theirs = spec_from_dict({**config, "model_type": "memcal_test_family"}), spec_from_dict(config)
        assert parameter_layout(ours).parameters == parameter_layout(theirs).parameters == \
            sum(p.numel() for p in meta_model(config).parameters())
        for w in (Workload(batch=2, prompt_len=64), Workload(batch=2, prompt_len=64, new_tokens=8, attention="eager")):
            same = memcal.estimate(ours, w).to_dict()
            same["notes"] = [n.replace("memcal_test_family", "qwen2") for n in same["notes"]]  # its name in a note
            assert same == memcal.estimate(theirs, w).to_dict()
    finally:
        families.remove_path(tmp_path)
    assert "memcal_test_family" not in supported_families()


def test_unknown_model_type_reads_generically_for_the_seeds():
    spec = load_spec(dict(model_type="not_a_family", d_model=64, n_layers=3, n_heads=8, num_kv_heads=2,
                          vocab_size=100))
    assert spec.generic and (spec.hidden_size, spec.num_layers, spec.num_heads, spec.num_kv_heads) == (64, 3, 8, 2)
    from estimator import estimate
    result = estimate(spec, batch=1, seq=128, params=1_000_000)
    assert result.breakdowns["per-token"].total_bytes > 0
    assert "memcal" in result.refusals and "\n" not in result.refusals["memcal"]


def test_a_type_without_a_record_is_read_from_the_model_on_the_meta_device():
    """OLMoE has no record: its layout comes from the model transformers builds on the meta device, so
    memcal's weights equal the dry run's to the byte; with the harness at hand (every verb) its
    activation and KV terms are a dry run of the workload, so the total is exact and says so. With the
    layout alone, the activations replay the generic decoder program (an approximation, said so)."""
    pytest.importorskip("torch")
    from estimator.params import attach_layout
    from harness.measure import build_model, meta_layout, run_point
    from memcal.commands._spec import resolve
    config = dict(model_type="olmoe", hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                  num_hidden_layers=2, intermediate_size=48, vocab_size=300, num_experts=8, num_experts_per_tok=2)
    spec = load_spec(config)
    assert spec.generic and families.get("olmoe") is None
    layout = meta_layout(spec)
    assert layout.parameters == sum(p.numel() for p in meta_model(config).parameters())
    attach_layout(spec, layout)
    w = Workload(batch=2, prompt_len=32, dtype="bf16")
    m = run_point(build_model(spec, w, "dry-run"), w)
    b = memcal.estimate(spec, w)
    assert b.weights_bytes == m.weights_bytes and b.kv_cache_bytes == m.kv_cache_bytes
    assert any("generic decoder program" in n for n in b.notes)
    assert abs(b.total_bytes - m.peak_tensor_bytes) <= 0.5 * (m.peak_tensor_bytes - m.weights_bytes)
    traced = resolve(load_spec(config))
    for w in (w, Workload(batch=1, prompt_len=20, new_tokens=4, dtype="fp32", attention="eager")):
        b = memcal.estimate(traced, w)
        m = run_point(build_model(spec, w, "dry-run"), w)
        assert b.total_bytes == m.peak_tensor_bytes and any("from a dry run" in n for n in b.notes)


def test_estimate_prices_a_type_without_a_record(tmp_path, capsys):
    """`memcal estimate` answers with memcal's row for a model_type the table lacks (no refusal)."""
    pytest.importorskip("torch")
    import json

    from memcal.cli import main
    path = tmp_path / "config.json"
    path.write_text(json.dumps(dict(model_type="olmoe", hidden_size=64, num_attention_heads=4, num_hidden_layers=2,
                                    intermediate_size=48, vocab_size=300, num_experts=8, num_experts_per_tok=2)))
    assert main(["estimate", str(path), "--seq", "64", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "memcal" in out["formulas"] and "memcal" not in out["refusals"]

"""Experiment files: validation names the file, the key and the problem; grids expand and order."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from estimator.catalogue import entries
from estimator.spec import load_spec
from harness.sweep import ExperimentError, load_experiment, shard_groups
from tests.sweep_helpers import write_experiment

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "configs").mkdir(exist_ok=True)
    (tmp_path / "configs" / "m.json").write_text(json.dumps(
        dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
             vocab_size=64)))
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return path


GOOD = """[experiment]
device = "cpu"
[[grid]]
models = ["configs/m.json"]
batch_sizes = [1]
prompt_lengths = [8]
"""


@pytest.mark.parametrize("text, where, problem", [
    (GOOD.replace("batch_sizes", "batch_size"), "grid[0].batch_size", "did you mean 'batch_sizes'"),
    (GOOD + 'dtypes = ["fp8"]\n', "grid[0].dtypes[0]", "unknown dtype 'fp8'"),
    (GOOD.replace('"cpu"', '"tpu"'), "experiment.device", "unknown value 'tpu'"),
    (GOOD.replace("[1]", '["one"]'), "grid[0].batch_sizes[0]", "must be a positive integer"),
    (GOOD.replace("[1]", "[0]"), "grid[0].batch_sizes[0]", "must be a positive integer"),
    (GOOD.replace("configs/m.json", "configs/missing.json"), "grid[0].models[0]", "no such file"),
    (GOOD.replace('models = ["configs/m.json"]\n', ""), "grid[0].models", "missing"),
    (GOOD + 'phases = ["generate"]\n', "grid[0].new_tokens", "phase generate needs"),
    (GOOD + 'phases = ["decode"]\n', "grid[0].phases[0]", "unknown value 'decode'"),
    (GOOD.replace('device = "cpu"', 'device = "cpu"\nmemory_cap = "lots"'), "experiment.memory_cap",
     "not a memory size"),
    (GOOD + 'weights = ["none"]\ndouble_quant = [true]\n', "grid[0]", "double quantization"),
    (GOOD + "[other]\n", "other", "unknown top-level table"),
    ('[experiment]\ndevice = "cpu"\n', "grid", "missing"),
])
def test_errors_name_file_key_and_problem(tmp_path, text, where, problem):
    path = _write(tmp_path, text)
    with pytest.raises(ExperimentError) as info:
        load_experiment(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {where}: "), message
    assert problem in message
    assert "\n" not in message


def test_bad_toml_is_one_line_with_its_position(tmp_path):
    path = _write(tmp_path, "[experiment\n")
    with pytest.raises(ExperimentError, match=rf"^{path}: not valid TOML .*line 1"):
        load_experiment(path)


def test_expansion_groups_and_orders_small_to_large(tmp_path):
    exp = load_experiment(write_experiment(tmp_path, grids=[dict(
        models=["configs/tiny-a.json", "configs/tiny-b.json"], dtypes=["fp32", "bf16"], batch_sizes=[4, 1],
        prompt_lengths=[64, 8], phases=["prefill", "generate"], new_tokens=[2])], experiment={"repeats": 2}))
    assert len(exp.points) == 2 * 2 * 2 * 2 * 2 * 2
    groups = exp.groups()
    assert len(groups) == 4  # model x dtype; phases and sizes share a built model
    for points in groups.values():
        sizes = [p.size for p in points]
        assert sizes == sorted(sizes)
        assert len({(p.model, p.workload.dtype) for p in points}) == 1
    first = next(iter(groups.values()))
    assert (first[0].workload.batch, first[0].workload.prompt_len, first[0].repeat) == (1, 8, 0)
    assert first[1].point_id == first[0].point_id and first[1].repeat == 1  # repeats share a point id
    assert len({p.key for p in exp.points}) == len(exp.points)


def test_point_ids_and_fingerprint_are_stable_and_sensitive(tmp_path):
    path = write_experiment(tmp_path)
    a, b = load_experiment(path), load_experiment(path)
    assert [p.key for p in a.points] == [p.key for p in b.points] and a.fingerprint == b.fingerprint
    assert a.with_device("cpu").fingerprint != a.fingerprint
    assert {p.point_id for p in a.with_device("cpu").points}.isdisjoint({p.point_id for p in a.points})
    config = tmp_path / "configs" / "tiny-a.json"
    config.write_text(config.read_text().replace('"hidden_size": 32', '"hidden_size": 64'))
    changed = load_experiment(path)
    assert changed.fingerprint != a.fingerprint
    assert sum(p.point_id != q.point_id for p, q in zip(a.points, changed.points)) == len(a.points) // 2


def test_point_id_is_pinned():
    """Changing how point ids are made orphans every results file: this pin says so loudly."""
    from estimator.workload import Workload
    from harness.sweep import canonical_hash
    from harness.sweep._experiment import _point
    spec = load_spec("gpt2")
    config = dict(spec.config)
    p = _point(spec.name, config, canonical_hash(config), spec.family, "dry-run", Workload(batch=1, prompt_len=512), 0)
    assert canonical_hash({"a": 1}) == "015abd7f5cc57a2d"
    assert len(p.point_id) == 16 and len(p.group_id) == 12
    assert p.point_id == canonical_hash({"model": "openai-community/gpt2", "config": canonical_hash(config),
                                         "device": "dry-run", "workload": {
        "batch": 1, "prompt_len": 512, "new_tokens": 0, "dtype": "bf16", "weights": "none", "kv_dtype": "bf16",
        "attention": "sdpa", "phase": "prefill", "cache": "dynamic", "double_quant": False}})


def test_padding_axis_pads_batches_of_two_or_more_and_keeps_unpadded_ids(tmp_path):
    """`padding = [0, 3]`: each padded point is a new one (batch 1 has no row to pad: left out); the
    unpadded points keep the ids they had before the axis existed (the field is left out at its default)."""
    plain = load_experiment(write_experiment(tmp_path, grids=[dict(
        models=["configs/tiny-a.json"], batch_sizes=[1, 2], prompt_lengths=[8])]))
    padded = load_experiment(write_experiment(tmp_path, grids=[dict(
        models=["configs/tiny-a.json"], batch_sizes=[1, 2], prompt_lengths=[8], padding=[0, 3])]))
    assert [(p.workload.batch, p.workload.padding) for p in padded.points] == [(1, 0), (2, 0), (2, 3)]
    assert {p.point_id for p in plain.points} < {p.point_id for p in padded.points}


def test_dominates_is_per_phase_and_componentwise(tmp_path):
    exp = load_experiment(write_experiment(tmp_path, models=("tiny-a",)))
    by = {(p.workload.batch, p.workload.prompt_len, p.workload.phase): p for p in exp.points}
    assert by[(2, 16, "prefill")].dominates(by[(1, 8, "prefill")])
    assert by[(1, 8, "prefill")].dominates(by[(1, 8, "prefill")])
    assert not by[(2, 8, "prefill")].dominates(by[(1, 16, "prefill")])
    assert not by[(2, 16, "generate")].dominates(by[(1, 8, "prefill")])


def test_shards_partition_whole_groups_deterministically(tmp_path):
    exp = load_experiment(write_experiment(tmp_path, models=("tiny-a", "tiny-b", "tiny-c"), grids=[dict(
        models=["configs/tiny-a.json", "configs/tiny-b.json", "configs/tiny-c.json"], dtypes=["fp32", "bf16"],
        batch_sizes=[1, 2], prompt_lengths=[8])]))
    groups = exp.groups()
    shards = [shard_groups(groups, i, 3) for i in (1, 2, 3)]
    assert sorted(g for s in shards for g in s) == sorted(groups)
    assert all(len(s) == 2 for s in shards)
    assert shards == [shard_groups(groups, i, 3) for i in (1, 2, 3)]


@pytest.mark.parametrize("name", ["cpu-smoke", "cpu-grid", "dryrun-catalogue", "cuda-calibration", "mps-calibration"])
def test_shipped_experiments_validate(name):
    exp = load_experiment(EXPERIMENTS / f"{name}.toml")
    assert exp.name == name and exp.points
    assert exp.device == {"cpu-smoke": "cpu", "cpu-grid": "cpu", "dryrun-catalogue": "dry-run",
                          "cuda-calibration": "cuda", "mps-calibration": "mps"}[name]


def test_cpu_grid_covers_what_the_issue_asks():
    exp = load_experiment(EXPERIMENTS / "cpu-grid.toml")
    specs = {p.model: load_spec(dict(p.config), p.model) for p in exp.points}
    assert len(exp.points) >= 300 and len(specs) >= 6
    assert any(s.is_moe for s in specs.values())
    longest = max(p.workload.prompt_len for p in exp.points)
    assert any(s.sliding_window and s.sliding_window < longest for s in specs.values())
    seen = {(p.workload.dtype, p.workload.weights, p.workload.phase) for p in exp.points}
    for dtype in ("fp32", "bf16"):
        for weights in ("none", "int8", "nf4"):
            assert {(dtype, weights, "prefill"), (dtype, weights, "generate")} <= seen
    assert len({p.workload.batch for p in exp.points}) >= 3 and len({p.workload.prompt_len for p in exp.points}) >= 3


def test_dryrun_catalogue_covers_every_catalogue_model():
    exp = load_experiment(EXPERIMENTS / "dryrun-catalogue.toml")
    # quantized checkpoints (a quantization_config) are estimate-only on the dry run: it cannot quantize
    dense = {r for r, e in entries().items() if "quantization_config" not in e["config"]}
    assert {p.model for p in exp.points} == dense
    assert {p.workload.batch for p in exp.points} == {1, 4, 16}
    assert {p.workload.dtype for p in exp.points} == {"bf16"}
    assert min(p.workload.prompt_len for p in exp.points) == 512
    assert max(p.workload.prompt_len for p in exp.points) == 32768
    assert {p.workload.phase for p in exp.points} == {"prefill", "generate"}

"""The fit: synthetic datasets with known factors are recovered; splits, profile contents, the CLI."""
from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest

from estimator.errors import MemcalError
from estimator.formulas import Options, get
from estimator.spec import load_spec
from estimator.workload import Workload
from harness.analysis import FitSettings, fit, fit_dataset, holdout_split, kfold_folds, load_dataset
from harness.analysis._fit import robust_line
from harness.sweep import ResultsWriter, canonical_hash
from memcal.cli import main

MODELS = ("Qwen/Qwen2.5-0.5B", "meta-llama/Llama-3.2-1B", "openai-community/gpt2")
ENV = {"device": "cpu", "device_name": "synthetic", "torch": "2.13.0+cpu", "transformers": "5.23.0",
       "bitsandbytes": None, "commit": "0" * 40, "dirty": False}


def workloads():
    for phase, new in (("prefill", 0), ("generate", 8)):
        for batch in (1, 2, 4, 8):
            for prompt in (128, 256, 512, 1024):
                yield Workload(batch=batch, prompt_len=prompt, new_tokens=new, phase=phase, dtype="bf16")


def synthetic(path, formula="memcal", scale=1.25, offset=3000, allocator_extra=None, outlier=None, models=MODELS,
              coefficients=None):
    """A results file whose tensor-level peak is formula's weights + KV + scale * activations + offset
    (memcal's formula with other `coefficients`, if given)."""
    module = get(formula)
    extra = {} if coefficients is None else {"coefficients": module.DEFAULT.with_(**coefficients)}
    specs = {m: load_spec(m) for m in models}
    header = {"schema_version": 1, "experiment": "synthetic", "fingerprint": "f" * 16, "device": "cpu",
              "models": {m: canonical_hash(dict(s.config)) for m, s in specs.items()}, "env": ENV,
              "experiment_toml": "", "created": "2026-01-01T00:00:00+00:00"}
    with ResultsWriter.create(path, header) as writer, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for n, (model, w) in enumerate((m, w) for m in models for w in workloads()):
            b = module.estimate(specs[model], w, Options(), **extra)
            peak = b.weights_bytes + b.kv_cache_bytes + round(scale * b.activation_bytes + offset)
            if outlier is not None and n == outlier:
                peak = round(peak * 1.3)
            record = {"point_id": canonical_hash([model, dataclasses.asdict(w)]), "repeat": 0, "group_id": "g",
                      "stage": "run", "model": model, "family": specs[model].family, "device": "cpu",
                      "workload": dataclasses.asdict(w), "status": "ok", "message": "",
                      "weights_bytes": b.weights_bytes, "kv_cache_bytes": b.kv_cache_bytes,
                      "peak_tensor_bytes": peak, "env": ENV, "schema_version": 1,
                      "peak_allocated_bytes": None if allocator_extra is None else peak + allocator_extra}
            writer.write(record)
        writer.write({"point_id": "x" * 16, "repeat": 0, "group_id": "g", "stage": "run", "model": models[0],
                      "family": specs[models[0]].family, "device": "cpu", "status": "oom", "message": "too big",
                      "workload": dataclasses.asdict(Workload(batch=64, prompt_len=4096)), "env": ENV,
                      "schema_version": 1})
    return path


def test_known_factors_of_memcal_are_recovered(tmp_path):
    result = fit([synthetic(tmp_path / "s.jsonl")], formulas=["memcal"])
    f = result.fits["memcal"]
    assert f.factors.activation_scale == pytest.approx(1.25, rel=1e-9)
    assert f.factors.activation_offset_bytes == pytest.approx(3000, abs=1)
    assert (f.factors.overhead_scale, f.factors.overhead_offset_bytes) == (0.0, 0)  # the tensor level has none
    assert f.errors["in_sample"]["max"] < 1e-8  # offsets are whole bytes
    assert f.errors["holdout"]["calibrated"]["max"] < 1e-8 and f.errors["kfold"]["calibrated"]["max"] < 1e-8
    assert f.errors["raw"]["median"] > 0.01  # the raw formula is off: scale 1 and no offset
    assert result.calibration.data["excluded"] == {"oom": 1}


def test_known_factors_of_a_seed_are_recovered(tmp_path):
    # per-token's 100 MiB overhead is no part of a tensor-level peak: the fit removes it.
    path = synthetic(tmp_path / "s.jsonl", formula="per-token", scale=40.0, offset=-20_000)
    f = fit([path], formulas=["per-token"]).fits["per-token"]
    assert f.factors.activation_scale == pytest.approx(40.0, rel=1e-9)
    assert f.factors.activation_offset_bytes == pytest.approx(-20_000, abs=1)
    assert f.factors.overhead_scale == 0.0 and f.factors.overhead_offset_bytes == 0


def test_the_robust_fit_resists_an_outlier(tmp_path):
    huber = fit([synthetic(tmp_path / "a.jsonl", outlier=5)], formulas=["memcal"]).fits["memcal"].factors
    lsq = fit([synthetic(tmp_path / "b.jsonl", outlier=5)], formulas=["memcal"],
              settings=FitSettings(method="lsq")).fits["memcal"].factors
    assert huber.activation_scale == pytest.approx(1.25, rel=1e-3)
    assert abs(lsq.activation_scale - 1.25) > abs(huber.activation_scale - 1.25)


def test_overhead_at_the_allocator_level_is_recovered(tmp_path):
    path = synthetic(tmp_path / "s.jsonl", allocator_extra=65536)
    f = fit([path], formulas=["memcal"], settings=FitSettings(target="allocator")).fits["memcal"].factors
    assert f.overhead_offset_bytes == pytest.approx(65536, abs=1)
    assert f.activation_scale == pytest.approx(1.25, rel=1e-6)
    with pytest.raises(MemcalError, match="no peak_device_bytes"):
        fit([path], formulas=["memcal"], settings=FitSettings(target="device"))


@pytest.mark.slow
def test_a_named_memcal_coefficient_is_recovered(tmp_path):
    from estimator.formulas import memcal
    # Qwen2.5's 152k vocabulary: a short prompt's generate peaks while processing the last position's
    # logits, whose fp32 copies processor_copies counts (elsewhere a forward sets the peak)
    truth = memcal.DEFAULT.processor_copies + 0.5
    path = synthetic(tmp_path / "s.jsonl", scale=1.0, offset=0, models=("Qwen/Qwen2.5-0.5B",),
                     coefficients={"processor_copies": truth})
    plain = fit([path], formulas=["memcal"]).fits["memcal"]
    result = fit([path], formulas=["memcal"], settings=FitSettings(coefficients=("processor_copies",)))
    f = result.fits["memcal"].factors
    assert f.coefficients["processor_copies"] == pytest.approx(truth, abs=0.02)
    assert result.fits["memcal"].errors["in_sample"]["max"] < min(0.002, plain.errors["in_sample"]["max"])
    with pytest.raises(MemcalError, match="unknown coefficient"):
        FitSettings(coefficients=("activation_scale",))


def test_splits_hold_out_the_largest_workloads_and_folds_partition(tmp_path):
    dataset = load_dataset([synthetic(tmp_path / "s.jsonl")])
    train, test = holdout_split(dataset, 0.3)
    assert sorted(train + test) == list(range(len(dataset.points)))
    for model in MODELS:
        tr = [dataset.points[i] for i in train if dataset.points[i]["model"] == model]
        te = [dataset.points[i] for i in test if dataset.points[i]["model"] == model]
        assert len(te) == round(0.3 * (len(tr) + len(te)))
        tokens = lambda r: r["workload"]["batch"] * (r["workload"]["prompt_len"] + r["workload"]["new_tokens"])  # noqa: E731
        assert max(map(tokens, tr)) <= min(map(tokens, te))
    folds = kfold_folds(dataset, 5)
    assert len(folds) == 5 and sorted(i for f in folds for i in f) == list(range(len(dataset.points)))
    assert max(map(len, folds)) - min(map(len, folds)) <= 1


def test_robust_line_keeps_scales_non_negative():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    y = np.array([10.0, 8.0, 6.0, 4.0])
    s, o = robust_line(x, y, np.ones(4), "lsq")
    assert s == 0.0 and o == pytest.approx(7.0)
    s, o = robust_line(x, -y, np.ones(4), "lsq", fit_scale=False, scale=0.0, nonneg_offset=True)
    assert (s, o) == (0.0, 0.0)


def test_profile_records_provenance_and_errors(tmp_path):
    out = tmp_path / "cal" / "synthetic.json"
    fit([synthetic(tmp_path / "s.jsonl")], out=out, formulas=["memcal", "per-token"])
    data = json.loads(out.read_text())
    assert data["name"] == "synthetic" and data["target"] == "peak_tensor_bytes"
    source = data["data"]["sources"][0]
    assert (source["torch"], source["transformers"], source["device_name"]) == ("2.13.0+cpu", "5.23.0", "synthetic")
    assert len(data["data"]["fingerprint"]) == 16 and data["data"]["points"] == 96
    for fid in ("memcal", "per-token"):
        e = data["errors"][fid]
        assert {"raw", "in_sample", "holdout", "kfold"} <= set(e)
        assert e["holdout"]["test_points"] + e["holdout"]["train_points"] == 96
    assert data["method"]["method"] == "huber" and data["method"]["folds"] == 5


def test_fit_cli(tmp_path, capsys):
    path = synthetic(tmp_path / "s.jsonl")
    out = tmp_path / "p.json"
    assert main(["fit", str(path), "--out", str(out), "--formula", "memcal"]) == 0
    assert "1 formulas fitted on 96 points" in capsys.readouterr().out
    assert main(["fit", str(path), "--out", str(out), "--formula", "memcal"]) == 2  # refuses to overwrite
    assert "exists" in capsys.readouterr().err
    assert main(["fit", str(path), "--out", str(out), "--formula", "memcal", "--force", "--method", "lsq"]) == 0


def test_a_changed_config_is_not_comparable(tmp_path):
    path = synthetic(tmp_path / "s.jsonl", models=("meta-llama/Llama-3.2-1B",))
    text = path.read_text().replace(canonical_hash(dict(load_spec("meta-llama/Llama-3.2-1B").config)), "0" * 16, 1)
    path.write_text(text)
    with pytest.raises(MemcalError, match="not comparable"):
        load_dataset([path])


def test_fitting_needs_points(tmp_path):
    path = synthetic(tmp_path / "s.jsonl", models=("meta-llama/Llama-3.2-1B",))
    lines = path.read_text().splitlines()
    (tmp_path / "one.jsonl").write_text("\n".join(lines[:2]) + "\n")
    with pytest.raises(MemcalError, match="at least 2"):
        fit_dataset(load_dataset([tmp_path / "one.jsonl"]))


def test_every_fittable_coefficient_is_documented():
    from pathlib import Path

    from estimator.formulas.memcal import Coefficients
    from harness.analysis._fit import NOT_COEFFICIENTS
    doc = (Path(__file__).parent.parent / "docs" / "calibration.md").read_text()
    missing = [n for n in Coefficients.__dataclass_fields__ if n not in NOT_COEFFICIENTS and f"| `{n}` |" not in doc]
    assert not missing, f"document what these coefficients count in docs/calibration.md: {missing}"

"""The regression gate: a planted regression is caught and named, a clean rerun passes, another environment is
not comparable, a calibrated formula past its bound fails; plus the rules and the report on synthetic files.

The planted regression: the experiment's points are measured in this process with `build_model` +
`run_point` (the sweep worker's own two calls; `harness.measure` has no other injection point) after a
forward pre-hook is registered on one model; on one point only, the hook allocates an extra 64 KiB
tensor that stays alive to the end of the run, so that point's tensor-level peak grows by exactly
65,536 bytes and every other point stays identical to the sweep's baseline.
"""
from __future__ import annotations

import copy
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness import point_label
from harness.gate import Thresholds, compare, heldout_bound, junit_xml, markdown, verdict_line
from harness.sweep import ResultsFile, ResultsWriter, read_results
from memcal.cli import main
from memcal.commands.regress import parse_tolerance
from memcal.commands.sweep import sweep
from tests.sweep_helpers import write_experiment

PLANTED_BYTES = 16384 * 4
EXACT = ["--tolerance", "0", "--abs", "0"]


# --- a real tiny experiment on the CPU -------------------------------------------------------------------
@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """(experiment file, baseline results) -- 8 CPU prefill points of two tiny models, measured by `memcal sweep`."""
    folder = tmp_path_factory.mktemp("regress")
    exp = write_experiment(folder, experiment={"device": "cpu"}, grids=[dict(
        models=["configs/tiny-a.json", "configs/tiny-b.json"], dtypes=["fp32"], batch_sizes=[1, 2],
        prompt_lengths=[8, 16], phases=["prefill"])])
    baseline = folder / "baseline.jsonl"
    summary = sweep(str(exp), out=str(baseline), progress=False)
    assert summary.counts == {"ok": 8}
    return exp, baseline


def measure_in_process(exp: Path, baseline: Path, out: Path, plant: str | None = None) -> Path:
    """The experiment's points measured here (build_model + run_point), the `plant` model hooked to allocate
    PLANTED_BYTES more on its batch-2, prompt-16 point; written as a results file."""
    import torch

    from estimator.spec import spec_from_dict
    from harness.measure import build_model, capture, run_point
    from harness.sweep import load_experiment

    header = {k: v for k, v in read_results(baseline).header.items() if k != "type"}
    header["env"] = capture("cpu")
    with ResultsWriter.create(out, header) as writer:
        for points in load_experiment(exp).groups().values():
            first = points[0]
            built = build_model(spec_from_dict(first.config, first.model), first.workload, "cpu")
            kept: list = []
            if first.model == plant:
                def hook(module, args, kwargs):
                    ids = kwargs.get("input_ids", args[0] if args else None)
                    if tuple(ids.shape) == (2, 16):
                        kept.append(torch.zeros(PLANTED_BYTES // 4))   # alive until the run is over
                built.model.register_forward_pre_hook(hook, with_kwargs=True)
            for point in points:
                record = run_point(built, point.workload).to_dict()
                kept.clear()
                writer.write({"point_id": point.point_id, "repeat": point.repeat, "group_id": point.group_id,
                              "stage": "run", "worker_pid": os.getpid(), **record})
    return out


@pytest.mark.slow
def test_a_planted_regression_is_caught_with_the_right_point_named(experiment, tmp_path, capsys):
    exp, baseline = experiment
    current = measure_in_process(exp, baseline, tmp_path / "planted.jsonl", plant="tiny-b")
    junit = tmp_path / "junit.xml"
    code = main(["regress", "--baseline", str(baseline), "--current", str(current), *EXACT, "--junit", str(junit)])
    out = capsys.readouterr().out
    assert code == 1
    rows = [line for line in out.splitlines() if line.startswith("| ❌")]
    assert len(rows) == 1 and "| tiny-b fp32 b2 s16 prefill `" in rows[0]
    assert "| peak_tensor_bytes |" in rows[0] and "+64.00 KiB (+65,536 B, +" in rows[0]
    assert "7 of 8 points unchanged." in out   # measured here or in a sweep worker: the same bytes
    assert "memcal regress: FAIL (1 of 8 points regressed)" in out
    failures = list(ET.parse(junit).iter("failure"))
    assert len(failures) == 1 and "+65,536 B" in failures[0].get("message")
    # The default gate (2 % and 64 MiB, both) lets 64 KiB through, and says so.
    assert main(["regress", "--baseline", str(baseline), "--current", str(current)]) == 0
    assert "(within threshold)" in capsys.readouterr().out


@pytest.mark.slow
def test_a_clean_rerun_passes(experiment, tmp_path, capsys):
    exp, baseline = experiment
    out = tmp_path / "current.jsonl"
    code = main(["regress", "--baseline", str(baseline), "--experiment", str(exp), "--out", str(out), *EXACT])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "No changes: all 8 points identical in peak_tensor_bytes." in text and out.exists()
    # the gate measures into a new file: an existing --out is refused, not resumed
    assert main(["regress", "--baseline", str(baseline), "--experiment", str(exp), "--out", str(out)]) == 2
    # a changed experiment is not comparable, and is refused before anything runs
    changed = write_experiment(tmp_path, experiment={"device": "cpu"}, grids=[dict(
        models=["configs/tiny-a.json"], dtypes=["fp32"], batch_sizes=[1], prompt_lengths=[8], phases=["prefill"])])
    capsys.readouterr()
    assert main(["regress", "--baseline", str(baseline), "--experiment", str(changed),
                 "--out", str(tmp_path / "never.jsonl")]) == 2
    assert "not comparable" in capsys.readouterr().err and not (tmp_path / "never.jsonl").exists()


@pytest.mark.slow
def test_another_environment_is_not_comparable_unless_allowed(experiment, tmp_path, capsys):
    _, baseline = experiment
    head, *rest = baseline.read_text().splitlines(keepends=True)
    header = json.loads(head)
    header["env"].update(host="another-host", commit="0" * 40, device_total_bytes=1)  # none of these matter
    same = tmp_path / "other-host.jsonl"
    same.write_text(json.dumps(header) + "\n" + "".join(rest))
    assert main(["regress", "--baseline", str(baseline), "--current", str(same), *EXACT]) == 0
    original, header["env"]["torch"] = header["env"]["torch"], "2.99.0"
    newer = tmp_path / "newer-torch.jsonl"
    newer.write_text(json.dumps(header) + "\n" + "".join(rest))
    capsys.readouterr()
    assert main(["regress", "--baseline", str(baseline), "--current", str(newer), *EXACT]) == 2
    captured = capsys.readouterr()
    assert "## memcal regress: NOT COMPARABLE" in captured.out
    assert f"- torch: {original!r} vs '2.99.0'" in captured.out
    assert "not comparable" in captured.err.lower()
    assert main(["regress", "--baseline", str(baseline), "--current", str(newer), *EXACT,
                 "--allow-env-change"]) == 0
    assert "Environment changed, compared anyway (`--allow-env-change`):** torch:" in capsys.readouterr().out


def profile(bound: float, formula: str = "memcal") -> dict:
    """A calibration profile as `memcal fit` writes it, with identity factors and a chosen held-out bound."""
    stats = {"n": 4, "median": bound / 2, "max": bound}
    return {"type": "memcal-calibration", "schema_version": 1, "name": "test", "target": "peak_tensor_bytes",
            "formulas": {formula: {}}, "data": {"sources": [{"device": "cpu"}]},
            "errors": {formula: {"holdout": {"calibrated": stats}, "in_sample": stats, "kfold": {"calibrated": stats}}}}


@pytest.mark.slow
def test_a_formula_past_its_profiles_bound_fails_the_gate(experiment, tmp_path, capsys):
    _, baseline = experiment
    tight, loose = tmp_path / "tight.json", tmp_path / "loose.json"
    # the tight bound on a seed formula: memcal's own is now exact on these tiny CPU points (0.00%)
    tight.write_text(json.dumps(profile(0.0001, "per-token")))
    loose.write_text(json.dumps(profile(10.0)))
    base = ["regress", "--baseline", str(baseline), "--current", str(baseline), *EXACT, "--calibration"]
    assert main([*base, str(loose)]) == 0
    capsys.readouterr()
    assert main([*base, str(tight), str(loose)]) == 1
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ❌ | per-token | `tight.json`")]
    assert len(rows) == 1 and "| 0.01% |" in rows[0] and "(8 points)" in rows[0] and "**past its bound**" in rows[0]
    assert "1 of 2 calibrated formulas past their profile's bound" in out


@pytest.mark.slow
def test_a_profile_fitted_on_the_baseline_passes_on_the_same_data(experiment, tmp_path, capsys):
    from harness.analysis import fit
    _, baseline = experiment
    fitted = tmp_path / "fitted.json"
    fit([baseline], out=fitted, formulas=["memcal", "per-token"])
    assert main(["regress", "--baseline", str(baseline), "--current", str(baseline), *EXACT,
                 "--calibration", str(fitted)]) == 0
    assert "0 of 2 calibrated formulas past" in capsys.readouterr().out


# --- the rules, on synthetic files -------------------------------------------------------------------
ENV = {"device": "cpu", "device_name": "x86_64", "torch": "2.13.0+cpu", "transformers": "5.23.0",
       "bitsandbytes": "0.50.2", "host": "a"}


def record(pid: str, peak: int | None = 1000, status: str = "ok", batch: int = 1, **extra) -> dict:
    return {"type": "point", "point_id": pid, "repeat": 0, "model": "tiny", "family": "llama", "device": "cpu",
            "workload": {"batch": batch, "prompt_len": 8, "new_tokens": 0, "dtype": "fp32", "weights": "none",
                         "kv_dtype": "fp32", "attention": "sdpa", "phase": "prefill", "cache": "dynamic"},
            "status": status, "message": "" if status == "ok" else f"{status}: boom", "peak_tensor_bytes": peak,
            "env": dict(ENV), **extra}


def results(name: str, records: list[dict], env: dict | None = None, fingerprint: str = "f1") -> ResultsFile:
    header = {"type": "header", "schema_version": 1, "experiment": "exp", "fingerprint": fingerprint,
              "device": "cpu", "env": env or dict(ENV)}
    return ResultsFile(name, header, copy.deepcopy(records))


def test_growth_fails_only_past_both_thresholds():
    t = Thresholds(0.02, 100)
    assert not t.exceeded(1000, 1100)          # +10 %, but only 100 bytes
    assert not t.exceeded(100_000, 101_000)    # +1,000 bytes, but only 1 %
    assert t.exceeded(1000, 1101) and t.exceeded(100_000, 102_001)
    exact = Thresholds(0, 0)
    assert exact.exceeded(1000, 1001) and not exact.exceeded(1000, 1000) and not exact.exceeded(1000, 999)
    with pytest.raises(ValueError):
        Thresholds(-0.1, 0)


def test_status_changes_missing_and_new_points():
    base = results("b", [record("p1"), record("p2", batch=2), record("p3", batch=3), record("p4", None, "oom", 4)])
    cur = results("c", [record("p1", 900), record("p2", None, "oom", 2), record("p4", 5000, batch=4),
                        record("p5", batch=5)])
    result = compare(base, cur, thresholds=Thresholds(0, 0))
    assert result.verdict == "fail" and result.exit_code == 1 and result.compared == 3
    kinds = {c.point_id: (c.kind, c.regression) for c in result.changes}
    assert kinds == {"p1": ("shrank", False), "p2": ("status", True), "p3": ("missing", True),
                     "p4": ("status", False), "p5": ("new", False)}
    assert [c.point_id for c in result.regressions] == ["p2", "p3"]   # status changes first
    assert result.changes[0].message == "oom: boom"


def test_repeats_fold_to_the_worst():
    base = results("b", [record("p1", 1000), {**record("p1", 1000), "repeat": 1}])
    cur = results("c", [record("p1", 1000), {**record("p1", 1200), "repeat": 1}])
    assert compare(base, cur, thresholds=Thresholds(0, 0)).changes[0].current_bytes == 1200
    flaky = results("c", [record("p1", 1000), {**record("p1", None, "error"), "repeat": 1}])
    assert compare(base, flaky).regressions[0].current_status == "error"


def test_not_comparable_on_fingerprint_device_kind_or_libraries_never_on_host():
    base = results("b", [record("p1")])
    assert compare(base, results("c", [record("p1")], env={**ENV, "host": "b", "python": "3.12"})).verdict == "pass"
    for key, value in (("device_name", "aarch64"), ("transformers", "5.24.0"), ("bitsandbytes", None)):
        result = compare(base, results("c", [record("p1", 5000)], env={**ENV, key: value}))
        assert result.verdict == "not-comparable" and result.exit_code == 2 and not result.changes
        assert result.reasons[0].startswith(f"{key}: ")
    other = compare(base, results("c", [record("p1")], fingerprint="f2"))
    assert other.verdict == "not-comparable" and "fingerprint" in other.reasons[0]
    disjoint = compare(base, results("c", [record("p9")]))
    assert disjoint.verdict == "not-comparable" and disjoint.reasons == ("no point of the baseline is in the "
                                                                         "current run",)


def test_gpu_files_gate_the_device_peak_too():
    env = {**ENV, "device": "cuda", "device_name": "NVIDIA H100"}
    gpu = {"device": "cuda", "peak_reserved_bytes": 10 * 2**30}
    base = results("b", [record("p1", **gpu)], env=env)
    base.header["device"] = "cuda"
    cur = results("c", [record("p1", **{**gpu, "peak_reserved_bytes": 11 * 2**30})], env=env)
    result = compare(base, cur)
    assert result.metrics == ("peak_tensor_bytes", "peak_bytes")
    assert [(c.metric, c.regression) for c in result.changes] == [("peak_bytes", True)]


def test_markdown_report_of_a_regression():
    base = results("base.jsonl", [record("aaaaaaaaaaaa", 2_000_000), record("bbbbbbbbbbbb", 1000, batch=2)])
    cur = results("cur.jsonl", [record("aaaaaaaaaaaa", 2_100_000), record("bbbbbbbbbbbb", None, "oom", batch=2)])
    result = compare(base, cur, thresholds=Thresholds(0.02, 0))
    assert markdown(result) == """\
## memcal regress: FAIL

Baseline `base.jsonl`, current `cur.jsonl`: experiment `exp` (fingerprint `f1`) on cpu.
Gate: growth by more than 2% and more than 0 B fails in peak_tensor_bytes; an ok point that is no longer ok fails.

| | point | metric | baseline | current | change |
|---|---|---|---:|---:|---|
| ❌ | tiny fp32 b2 s8 prefill `bbbbbbbb` | status | ok | oom | ok → oom: oom: boom (**regression**) |
| ❌ | tiny fp32 b1 s8 prefill `aaaaaaaa` | peak_tensor_bytes | 1.91 MiB | 2.00 MiB | +97.66 KiB (+100,000 B, +5.00%) (**regression**) |

0 of 2 points unchanged.

**memcal regress: FAIL (2 of 2 points regressed)**
"""  # noqa: E501  (the report's own table rows)
    assert verdict_line(result) == "memcal regress: FAIL (2 of 2 points regressed)"
    suite = ET.fromstring(junit_xml(result).split("?>", 1)[1])
    assert (suite.get("tests"), suite.get("failures")) == ("2", "2")


def test_heldout_bound_and_labels_and_tolerance_parsing():
    from estimator.calibration import load_calibration
    assert heldout_bound(load_calibration(profile(0.25)), "memcal") == 0.25
    assert heldout_bound(load_calibration(profile(0.25)), "per-token") is None
    r = record("p")
    r["workload"].update(weights="nf4", double_quant=True, attention="eager", phase="generate", new_tokens=4)
    assert point_label(r) == "tiny fp32/nf4+dq b1 s8+4 generate (attention=eager)"
    assert [parse_tolerance(t) for t in ("2%", "0.02", "0", "0%")] == [0.02, 0.02, 0.0, 0.0]
    from estimator.errors import MemcalError
    for bad in ("2", "-1%", "two"):
        with pytest.raises(MemcalError):
            parse_tolerance(bad)


def test_a_calibration_check_that_cannot_run_fails_the_gate():
    from types import SimpleNamespace

    base = results("b.jsonl", [record("p1"), record("p2")])
    bound = {"memcal": {"in_sample": {"max": 0.5}}}
    with_bound = SimpleNamespace(path="c.json", target="peak_tensor_bytes", formulas={"memcal": {}}, errors=bound,
                                 data={})
    no_bound = SimpleNamespace(path="n.json", target="peak_tensor_bytes", formulas={"memcal": {}}, errors={}, data={})
    exact = compare(base, base, calibrations=[with_bound], predict=lambda r, c, f: r["peak_tensor_bytes"])
    assert exact.verdict == "pass"
    unknown = compare(base, base, calibrations=[with_bound], predict=lambda r, c, f: None)  # config unknown
    assert unknown.verdict == "fail" and unknown.formula_checks[0].unchecked
    assert "1 calibrated formulas could not be checked" in verdict_line(unknown)
    assert compare(base, base, calibrations=[no_bound], predict=lambda r, c, f: 1).verdict == "fail"


def test_missing_points_are_counted_apart_from_regressed_ones():
    base = results("b.jsonl", [record("p1"), record("p2"), record("p3")])
    cur = results("c.jsonl", [record("p1", peak=2000)])
    line = verdict_line(compare(base, cur, thresholds=Thresholds(0, 0)))
    assert line == "memcal regress: FAIL (1 of 1 points regressed; 2 baseline points missing from the current run)"

"""Self-contained results files (schema 2): the header keeps each model's config, so fit, report and
regress work on a file moved anywhere; schema-1 files are migrated when read; regress fails when it
cannot check what it was asked to."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from estimator.errors import MemcalError
from harness.analysis import load_dataset
from harness.sweep import RESULTS_SCHEMA_VERSION, read_results
from memcal.cli import main
from tests.sweep_helpers import write_experiment

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="module")
def moved(tmp_path_factory):
    """A dry-run sweep's results file, then moved away from its experiment and config files."""
    work = tmp_path_factory.mktemp("work")
    exp = write_experiment(work)
    out = work / "r.jsonl"
    assert main(["sweep", str(exp), "--out", str(out), "--quiet"]) == 0
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "r.jsonl"
    shutil.move(out, elsewhere)
    shutil.rmtree(work)  # the experiment and its configs are gone
    return elsewhere


def test_schema_2_header_keeps_each_models_config(moved):
    header = read_results(moved).header
    assert header["schema_version"] == RESULTS_SCHEMA_VERSION == 2
    assert set(header["model_configs"]) == set(header["models"]) == {"tiny-a", "tiny-b"}
    assert header["model_configs"]["tiny-a"]["model_type"] == "llama" and "[[grid]]" in header["experiment_toml"]


def test_fit_report_and_regress_work_on_a_moved_file(moved, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing to find from here but the file itself
    assert set(load_dataset([moved]).specs) == {"tiny-a", "tiny-b"}
    profile = tmp_path / "cal.json"
    assert main(["fit", str(moved), "--out", str(profile), "--formula", "memcal"]) == 0
    assert main(["report", str(moved), "--out", str(tmp_path / "report"), "--formula", "memcal"]) == 0
    assert (tmp_path / "report" / "report.md").is_file()
    capsys.readouterr()
    code = main(["regress", "--baseline", str(moved), "--current", str(moved), "--calibration", str(profile),
                 "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "could not be checked" not in out


def test_a_schema_1_file_is_migrated_when_read(tmp_path, monkeypatch):
    raw = json.loads((DATA / "schema1-results.jsonl").read_text().splitlines()[0])
    assert raw["schema_version"] == 1 and "model_configs" not in raw
    results = read_results(DATA / "schema1-results.jsonl")
    assert results.header["schema_version"] == 2 and results.header["migrated_from"] == 1
    assert results.header["model_configs"] == {}  # tiny configs: not in the catalogue, found by search
    assert len(results.records) == 36
    assert set(load_dataset([DATA / "schema1-results.jsonl"]).specs) == {"tiny-llama", "tiny-gpt2"}
    # moved away from its config files, a schema-1 file cannot be fitted: refused by name, never guessed
    monkeypatch.chdir(tmp_path)
    moved = tmp_path / "old.jsonl"
    shutil.copy(DATA / "schema1-results.jsonl", moved)
    with pytest.raises(MemcalError, match="cannot find the configs measured for tiny-gpt2, tiny-llama"):
        load_dataset([moved])


def test_regress_fails_when_it_cannot_check_the_calibration(moved, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    old = tmp_path / "old.jsonl"
    shutil.copy(DATA / "schema1-results.jsonl", old)
    profile = tmp_path / "cal.json"
    assert main(["fit", str(moved), "--out", str(profile), "--formula", "memcal"]) == 0
    capsys.readouterr()
    code = main(["regress", "--baseline", str(old), "--current", str(old), "--calibration", str(profile)])
    err = capsys.readouterr().err
    assert code == 2 and "cannot check the calibration profiles" in err and err.strip().count("\n") == 0


def test_a_config_with_non_finite_floats_travels_in_the_header(tmp_path, monkeypatch):
    """Real configs carry JSON's Infinity (Nemotron-H: time_step_limit [0.0, Infinity]); strict JSON cannot:
    the header spells it "Infinity", and the config read back hashes as the original."""
    work = tmp_path / "work"
    exp = write_experiment(work, grids=[dict(models=["configs/tiny-inf.json"], dtypes=["fp32"], batch_sizes=[1],
                                             prompt_lengths=[8], phases=["prefill"])])
    config = json.loads((work / "configs" / "tiny-a.json").read_text())
    (work / "configs" / "tiny-inf.json").write_text(json.dumps({**config, "time_step_limit": [0.0, float("inf")]}))
    out = tmp_path / "r.jsonl"
    assert main(["sweep", str(exp), "--out", str(out), "--quiet"]) == 0
    header = json.loads(out.read_text().splitlines()[0])  # strict JSON: no bare Infinity
    assert header["model_configs"]["tiny-inf"]["time_step_limit"] == [0.0, "Infinity"]
    shutil.rmtree(work)
    monkeypatch.chdir(tmp_path)
    assert set(load_dataset([out]).specs) == {"tiny-inf"}  # found by its hash: the float came back

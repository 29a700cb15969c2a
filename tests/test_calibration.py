"""Calibration profiles: validation, versioned JSON, and how the estimator applies them (no torch)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from estimator import estimate
from estimator.breakdown import Breakdown
from estimator.calibration import CALIBRATION_SCHEMA_VERSION, Calibration, Factors, apply_factors, load_calibration
from estimator.errors import MemcalError
from memcal.cli import main

MODEL = "meta-llama/Llama-3.1-8B"


def profile(**formulas) -> Calibration:
    return Calibration(name="test", formulas={k: Factors(**v) for k, v in formulas.items()},
                       data={"points": 3, "fingerprint": "abc",
                             "sources": [{"device": "cpu", "device_name": "x86_64"}]})


def test_factors_validate_themselves():
    with pytest.raises(MemcalError, match="activation_scale"):
        Factors(activation_scale=-1.0)
    with pytest.raises(MemcalError, match="overhead_offset_bytes"):
        Factors(overhead_offset_bytes=1.5)
    assert Factors(activation_offset_bytes=7.0).activation_offset_bytes == 7  # a whole float is an int
    assert Factors().is_identity


def test_apply_factors_scales_offsets_and_clips_at_zero():
    b = Breakdown("x", "x", weights_bytes=100, kv_cache_bytes=50, activation_bytes=1000, overhead_bytes=10)
    c = apply_factors(b, Factors(activation_scale=1.5, activation_offset_bytes=-100, overhead_scale=0.0,
                                 overhead_offset_bytes=7))
    assert (c.weights_bytes, c.kv_cache_bytes, c.activation_bytes, c.overhead_bytes) == (100, 50, 1400, 7)
    assert apply_factors(b, Factors(activation_scale=0.0, activation_offset_bytes=-5)).activation_bytes == 0
    assert apply_factors(b, Factors()) is b
    assert c.notes[-1].startswith("calibrated:")


def test_profile_round_trip_and_overwrite(tmp_path):
    path = tmp_path / "p.json"
    p = profile(memcal={"activation_scale": 1.25, "activation_offset_bytes": 4096,
                        "coefficients": {"processor_copies": 1.5}})
    p.dump(path)
    data = json.loads(path.read_text())
    assert data["type"] == "memcal-calibration" and data["schema_version"] == CALIBRATION_SCHEMA_VERSION
    back = load_calibration(path)
    assert back.factors("memcal") == p.factors("memcal")
    assert back.factors("per-token").is_identity  # not covered: left as it is
    with pytest.raises(MemcalError, match="exists"):
        p.dump(path)
    p.dump(path, force=True)


def test_loader_refuses_newer_schemas_and_other_files(tmp_path):
    data = profile(memcal={}).to_dict()
    with pytest.raises(MemcalError, match="newer"):
        load_calibration({**data, "schema_version": CALIBRATION_SCHEMA_VERSION + 1})
    with pytest.raises(MemcalError, match="not a memcal calibration"):
        load_calibration({"type": "header"})
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(MemcalError, match="not valid JSON"):
        load_calibration(bad)
    with pytest.raises(MemcalError, match="cannot read"):
        load_calibration(tmp_path / "missing.json")


def test_estimate_applies_a_profile_to_the_formulas_it_covers(tmp_path):
    path = profile(**{"memcal": {"activation_scale": 2.0, "activation_offset_bytes": 1000,
                                 "overhead_scale": 0.0, "overhead_offset_bytes": 123},
                      "bit-width": {"overhead_scale": 0.0}}).dump(tmp_path / "p.json")
    raw = estimate(MODEL, batch=2, seq=1024)
    cal = estimate(MODEL, batch=2, seq=1024, calibration=str(path))
    r, c = raw.breakdowns["memcal"], cal.breakdowns["memcal"]
    assert (c.weights_bytes, c.kv_cache_bytes) == (r.weights_bytes, r.kv_cache_bytes)
    assert c.activation_bytes == 2 * r.activation_bytes + 1000
    assert c.overhead_bytes == 123
    assert cal.breakdowns["bit-width"].overhead_bytes == 0
    assert cal.breakdowns["per-token"] == raw.breakdowns["per-token"]
    assert cal.to_dict()["calibration"]["name"] == "test"


def test_memcal_coefficients_are_applied_inside_the_formula():
    # Llama 3's 128k vocabulary: a short generate peaks processing its logits, which processor_copies counts.
    raw = estimate(MODEL, batch=8, seq=16, new_tokens=2, formulas=["memcal"]).breakdowns["memcal"]
    assert "processing" in raw.notes[0]
    cal = estimate(MODEL, batch=8, seq=16, new_tokens=2, formulas=["memcal"],
                   calibration=profile(memcal={"coefficients": {"processor_copies": 5.0}})).breakdowns["memcal"]
    assert cal.activation_bytes > raw.activation_bytes
    with pytest.raises(MemcalError, match="coefficients apply to memcal"):
        estimate(MODEL, formulas=["per-token"], calibration=profile(**{"per-token": {"coefficients": {"x": 1}}}))
    with pytest.raises(MemcalError, match="unknown coefficient"):
        estimate(MODEL, formulas=["memcal"], calibration=profile(memcal={"coefficients": {"nonsense": 1}}))


def test_estimate_cli_takes_a_calibration(tmp_path, capsys):
    path = profile(memcal={"activation_scale": 0.0, "activation_offset_bytes": 0}).dump(tmp_path / "p.json")
    assert main(["estimate", MODEL, "--seq", "512", "--formula", "memcal", "--calibration", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["formulas"]["memcal"]["activation_bytes"] == 0
    assert out["calibration"]["formulas"]["memcal"]["activation_scale"] == 0.0
    assert main(["estimate", MODEL, "--calibration", str(path)]) == 0
    assert "calibration  test (fitted on 3 points: cpu (x86_64))" in capsys.readouterr().out
    assert main(["estimate", MODEL, "--calibration", str(tmp_path / "none.json")]) == 2


def test_the_estimator_stays_free_of_torch_numpy_and_pandas():
    code = ("import sys, estimator, estimator.calibration; from estimator import estimate; "
            "estimate('gpt2', calibration={'type': 'memcal-calibration', 'schema_version': 1, "
            "'formulas': {'memcal': {'activation_scale': 1.1}}}); "
            "print(sorted(m for m in ('torch', 'numpy', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

"""Capacity planning, checked against the dry run with the memory as a cap: the planned point fits and
the next step does not."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from estimator import estimate
from estimator.calibration import Calibration, Factors
from estimator.errors import MemcalError
from harness.analysis import plan, verify
from memcal.cli import main

TINY = str(Path(__file__).parent / "data" / "configs" / "tiny-llama.json")
MEMORY = 3_500_000  # bytes: the tiny Llama's weights are 2,099,840


@pytest.mark.slow
@pytest.mark.parametrize("kwargs", [dict(seq=128), dict(batch=2), dict(batch=1, new_tokens=4)])
def test_the_plan_is_confirmed_by_the_capped_dry_run(kwargs):
    p = plan(TINY, MEMORY, dtype="fp32", **kwargs)
    assert p.fits and p.breakdown.total_bytes <= MEMORY < p.next_breakdown.total_bytes
    check = verify(p)
    assert check.planned.status == "ok" and check.planned.peak_tensor_bytes <= MEMORY
    assert check.next.status == "oom"
    assert check.confirmed


def test_plan_answers_the_question_asked():
    by_batch = plan("meta-llama/Llama-3.1-8B", 24 * 2**30, seq=8192)
    assert by_batch.axis == "batch" and by_batch.workload.prompt_len == 8192
    assert by_batch.next_workload.batch == by_batch.value + 1
    by_seq = plan("meta-llama/Llama-3.1-8B", 24 * 2**30, batch=1)
    assert by_seq.axis == "seq" and by_seq.next_workload.prompt_len == by_seq.value + 1
    # every prompt length below the answer fits too
    assert estimate("meta-llama/Llama-3.1-8B", batch=1, seq=by_seq.value // 2,
                    formulas=["memcal"]).breakdowns["memcal"].total_bytes <= 24 * 2**30


def test_plan_limits_and_failures():
    gpt2 = plan("gpt2", 24 * 2**30, batch=1)
    assert gpt2.value == 1024 and gpt2.next_workload is None  # its learned position table
    nothing = plan("meta-llama/Llama-3.1-8B", 8 * 2**30, seq=512)
    assert not nothing.fits and nothing.next_workload.batch == 1
    with pytest.raises(MemcalError, match="one of them"):
        plan("gpt2", 2**30, batch=1, seq=128)
    with pytest.raises(MemcalError, match="one of them"):
        plan("gpt2", 2**30)


def test_a_calibration_moves_the_plan():
    raw = plan("meta-llama/Llama-3.1-8B", 24 * 2**30, batch=1)
    bigger = Calibration("x", {"memcal": Factors(activation_scale=2.0, overhead_offset_bytes=2**30)})
    cal = plan("meta-llama/Llama-3.1-8B", 24 * 2**30, batch=1, calibration=bigger)
    assert cal.value < raw.value and cal.calibration == "x"


def test_plan_cli(capsys):
    assert main(["plan", TINY, "--memory", str(MEMORY), "--seq", "128", "--dtype", "fp32", "--verify"]) == 0
    out = capsys.readouterr().out
    assert "batch 1: the largest that fits at prompt 128" in out
    assert "verdict   confirmed" in out
    assert main(["plan", "meta-llama/Llama-3.1-8B", "--memory", "24GiB", "--batch", "1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["axis"] == "seq" and data["breakdown"]["total_bytes"] <= 24 * 2**30 < data["next_total_bytes"]
    assert main(["plan", "meta-llama/Llama-3.1-8B", "--memory", "8GiB", "--seq", "512"]) == 1
    assert "nothing fits" in capsys.readouterr().out
    assert main(["plan", "gpt2", "--memory", "lots", "--seq", "512"]) == 2


def test_the_verdict_says_what_was_checked():
    from types import SimpleNamespace as M

    from harness.analysis import Verification
    ok, oom = M(status="ok", message=""), M(status="oom", message="cap")
    assert Verification(ok, oom).verdict() == "confirmed: the planned point fits and the next step does not"
    assert Verification(ok, None).verdict().startswith("confirmed: the planned point fits (no next step")
    cannot = Verification(M(status="unsupported", message="dry run: reads data"), None)
    assert not cannot.confirmed and cannot.verdict().startswith("NOT checked: the dry run could not run the planned")
    assert Verification(ok, M(status="error", message="boom")).verdict().startswith("NOT checked")
    disagrees = "NOT confirmed: the dry run disagrees with the plan (the next step fits too)"
    assert Verification(ok, ok).verdict() == disagrees
    assert "does not fit" in Verification(oom, oom).verdict()


def test_plan_refuses_batch_0_and_positions_past_the_config():
    with pytest.raises(MemcalError, match="--batch must be a whole number of at least 1"):
        plan(TINY, MEMORY, batch=0)
    with pytest.raises(MemcalError, match=r"unsupported: 200000 positions pass .*max_position_embeddings \(131072\)"):
        plan("meta-llama/Llama-3.1-8B", 80 * 2**30, seq=200_000)
    # dynamic RoPE rescales past max_position_embeddings by design: planned, with the note
    dynamic = {**json.loads(Path(TINY).read_text()),
               "rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}}
    p = plan(dynamic, 2**30, seq=dynamic["max_position_embeddings"] + 10, dtype="fp32")
    assert p.value and "dynamic RoPE rescales" in p.warnings[0]
    with pytest.raises(MemcalError, match="learned positions|learned position"):
        plan("gpt2", 2**30, seq=5000)

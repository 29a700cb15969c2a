"""The sweep runner: resume, OOM skipping, crashes and timeouts as data, shards, isolation.

Workers are real processes (forked from the sweep's fork server); models are tiny, mostly on the
dry run, so the whole file takes seconds.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from estimator.errors import MemcalError
from harness.sweep import load_experiment, load_results, read_results
from memcal.cli import main
from memcal.commands.sweep import sweep
from tests.sweep_helpers import TINY, lines, write_experiment


def statuses(path: Path) -> dict[tuple, str]:
    return {(r["model"], r["workload"]["batch"], r["workload"]["prompt_len"], r["workload"]["phase"]): r["status"]
            for r in read_results(path).records}


def test_sweep_measures_every_point_once_and_resumes_with_nothing_to_do(tmp_path):
    exp = write_experiment(tmp_path)
    out = tmp_path / "r.jsonl"
    first = sweep(str(exp), out=str(out), progress=False)
    assert first.planned == first.written == 16 and first.counts == Counter(ok=16)
    again = sweep(str(exp), out=str(out), progress=False)
    assert again.already == 16 and again.written == 0
    records = lines(out)
    assert records[0]["type"] == "header" and records[0]["fingerprint"] == load_experiment(exp).fingerprint
    assert records[0]["env"]["torch"] and records[0]["env"]["torch_threads"] == 1
    points = records[1:]
    assert len({(r["point_id"], r["repeat"]) for r in points}) == 16
    assert {r["peak_tensor_bytes"] > r["weights_bytes"] > 0 for r in points} == {True}
    # one worker per group, points small to large within it
    by_group: dict[str, list] = {}
    for r in points:
        by_group.setdefault(r["group_id"], []).append(r)
    assert len(by_group) == 2
    for group in by_group.values():
        assert len({r["worker_pid"] for r in group}) == 1
        tokens = [r["workload"]["batch"] * (r["workload"]["prompt_len"] + r["workload"]["new_tokens"]) for r in group]
        assert tokens == sorted(tokens)


def test_oom_under_the_cpu_memory_cap_skips_larger_points_of_its_group_only(tmp_path):
    # tiny-a fp32 prefill peaks: b4 s8 96,000 bytes; b1 s64 144,832 bytes (tiny-b: 104,576 and 157,504)
    exp = write_experiment(tmp_path, experiment={"device": "cpu", "memory_cap": 120_000}, grids=[dict(
        models=["configs/tiny-a.json", "configs/tiny-b.json"], dtypes=["fp32"], batch_sizes=[1, 2, 4],
        prompt_lengths=[8, 64], phases=["prefill"])])
    out = tmp_path / "r.jsonl"
    summary = sweep(str(exp), out=str(out), progress=False)
    assert summary.counts == Counter(ok=6, oom=2, skipped=4)
    got = statuses(out)
    for model in ("tiny-a", "tiny-b"):
        assert [got[(model, b, 8, "prefill")] for b in (1, 2, 4)] == ["ok", "ok", "ok"]
        assert [got[(model, b, 64, "prefill")] for b in (1, 2, 4)] == ["oom", "skipped", "skipped"]
    records = read_results(out).records
    oom = next(r for r in records if r["status"] == "oom")
    assert "memory cap" in oom["message"] and oom["memory_cap_bytes"] == 120_000
    skipped = next(r for r in records if r["status"] == "skipped")
    assert "batch 1, prompt 64, prefill" in skipped["message"] and "ran out of memory" in skipped["message"]
    # resuming keeps the rule: nothing is retried, nothing is added
    assert sweep(str(exp), out=str(out), progress=False).written == 0


@pytest.mark.slow
def test_a_dying_worker_and_a_hanging_one_are_data_and_the_sweep_goes_on(tmp_path):
    exp = write_experiment(tmp_path, experiment={"timeout_s": 3}, grids=[dict(
        models=["configs/tiny-a.json", "configs/tiny-b.json"], dtypes=["fp32"], batch_sizes=[1, 2],
        prompt_lengths=[8, 16], phases=["prefill"])])
    hook = {"crash": [{"model": "tiny-a", "batch": 2, "prompt_len": 8}],
            "hang": [{"model": "tiny-b", "batch": 1, "prompt_len": 16}]}
    out = tmp_path / "r.jsonl"
    summary = sweep(str(exp), out=str(out), progress=False,
                    worker_env={"MEMCAL_SWEEP_TEST_HOOK": json.dumps(hook)})
    got = statuses(out)
    assert got[("tiny-a", 2, 8, "prefill")] == "crashed"
    assert got[("tiny-a", 1, 16, "prefill")] == got[("tiny-a", 2, 16, "prefill")] == "ok"  # a fresh worker
    assert got[("tiny-b", 1, 16, "prefill")] == "timeout"
    assert got[("tiny-b", 2, 16, "prefill")] == "skipped"  # at least as large as the point that hung
    assert got[("tiny-b", 2, 8, "prefill")] == "ok"
    assert summary.counts == Counter(ok=5, crashed=1, timeout=1, skipped=1)
    records = {r["status"]: r for r in read_results(out).records}
    assert "exit code 3" in records["crashed"]["message"]
    assert "no result within 3 s" in records["timeout"]["message"]
    pids = [r["worker_pid"] for r in read_results(out).records if r["model"] == "tiny-a"]
    assert len(set(pids)) == 2


@pytest.mark.slow
def test_shards_merged_equal_an_unsharded_run(tmp_path):
    exp = write_experiment(tmp_path, models=("tiny-a", "tiny-b", "tiny-c"))
    whole = tmp_path / "whole.jsonl"
    sweep(str(exp), out=str(whole), progress=False)
    shards = []
    for i in (1, 2, 3):
        shards.append(tmp_path / f"s{i}.jsonl")
        summary = sweep(str(exp), out=str(shards[-1]), shard=f"{i}/3", progress=False)
        assert summary.planned == 8 and read_results(shards[-1]).header["shard"] == f"{i}/3"
    merged = tmp_path / "merged.jsonl"
    assert main(["merge", *map(str, shards), "--out", str(merged)]) == 0
    columns = ["point_id", "repeat", "group_id", "status", "weights_bytes", "peak_tensor_bytes", "kv_cache_bytes"]
    a = load_results(whole)[columns].sort_values(["point_id", "repeat"]).reset_index(drop=True)
    b = load_results(merged)[columns].sort_values(["point_id", "repeat"]).reset_index(drop=True)
    assert len(a) == 24 and a.equals(b)
    # the merged file is the unsharded experiment's: a sweep into it has nothing left to do
    assert sweep(str(exp), out=str(merged), progress=False).written == 0


@pytest.mark.slow
def test_merging_files_of_different_experiments_fails_clearly(tmp_path, capsys):
    one = write_experiment(tmp_path / "one", models=("tiny-a",))
    two = write_experiment(tmp_path / "two", models=("tiny-b",))
    sweep(str(one), out=str(tmp_path / "one.jsonl"), progress=False)
    sweep(str(two), out=str(tmp_path / "two.jsonl"), progress=False)
    code = main(["merge", str(tmp_path / "one.jsonl"), str(tmp_path / "two.jsonl"), "--out", str(tmp_path / "m.jsonl")])
    assert code == 2
    assert "experiment fingerprints differ" in capsys.readouterr().err
    assert not (tmp_path / "m.jsonl").exists()


def test_resume_refuses_a_changed_experiment_or_another_environment(tmp_path):
    exp = write_experiment(tmp_path, models=("tiny-a",))
    out = tmp_path / "r.jsonl"
    sweep(str(exp), out=str(out), progress=False)
    before = out.read_bytes()
    changed = write_experiment(tmp_path, name="changed", grids=[dict(
        models=["configs/tiny-a.json"], dtypes=["fp32"], batch_sizes=[1, 2, 3], prompt_lengths=[8, 16],
        phases=["prefill", "generate"], new_tokens=[2])])
    with pytest.raises(MemcalError, match="fingerprint"):
        sweep(str(changed), out=str(out), progress=False)
    head, *rest = out.read_text().splitlines(keepends=True)
    header = json.loads(head)
    header["env"]["torch"] = "1.0.0"
    out.write_text(json.dumps(header) + "\n" + "".join(rest[:3]))
    with pytest.raises(MemcalError, match=r"another environment \(torch: '1.0.0'"):
        sweep(str(exp), out=str(out), progress=False)
    assert len(out.read_text().splitlines()) == 4 and before.startswith(b"{")


def test_isolate_gives_every_point_a_fresh_worker(tmp_path):
    exp = write_experiment(tmp_path, grids=[dict(models=["configs/tiny-a.json"], dtypes=["fp32"], batch_sizes=[1, 2],
                                                 prompt_lengths=[8], phases=["prefill"])])
    out = tmp_path / "r.jsonl"
    summary = sweep(str(exp), out=str(out), isolate=True, progress=False)
    assert summary.counts == Counter(ok=2)
    assert len({r["worker_pid"] for r in read_results(out).records}) == 2


def test_unsupported_points_are_recorded_not_run(tmp_path):
    # the dry run cannot quantize; gpt2's learned positions end at 64 in tiny-c; tiny-a's rotary
    # max_position_embeddings is 256 (refused past it), tiny-d is tiny-a with dynamic RoPE (rescales: runs)
    exp = write_experiment(tmp_path, grids=[
        dict(models=["configs/tiny-a.json"], dtypes=["fp32"], weights=["nf4"], batch_sizes=[1], prompt_lengths=[8]),
        dict(models=["configs/tiny-c.json"], dtypes=["fp32"], batch_sizes=[1], prompt_lengths=[32, 128]),
        dict(models=["configs/tiny-a.json", "configs/tiny-d.json"], dtypes=["fp32"], batch_sizes=[1],
             prompt_lengths=[300])])
    dynamic = {**TINY["tiny-a"], "rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}}
    (tmp_path / "configs" / "tiny-d.json").write_text(json.dumps(dynamic))
    out = tmp_path / "r.jsonl"
    sweep(str(exp), out=str(out), progress=False)
    got = {(r["model"], r["workload"]["prompt_len"]): r for r in read_results(out).records}
    assert got[("tiny-a", 8)]["status"] == "unsupported" and "dry run cannot quantize" in got[("tiny-a", 8)]["message"]
    assert got[("tiny-c", 32)]["status"] == "ok"
    assert got[("tiny-c", 128)]["status"] == "unsupported" and "learned positions" in got[("tiny-c", 128)]["message"]
    assert got[("tiny-a", 300)]["status"] == "unsupported"
    assert "pass tiny-a's max_position_embeddings (256)" in got[("tiny-a", 300)]["message"]
    assert got[("tiny-d", 300)]["status"] == "ok", got[("tiny-d", 300)]["message"]
    assert any("dynamic RoPE rescales" in n for n in got[("tiny-d", 300)]["notes"])


def test_shard_syntax_is_checked(tmp_path):
    exp = write_experiment(tmp_path)
    for bad in ("0/3", "4/3", "2", "a/b"):
        with pytest.raises(MemcalError, match="--shard"):
            sweep(str(exp), out=str(tmp_path / "r.jsonl"), shard=bad, progress=False)

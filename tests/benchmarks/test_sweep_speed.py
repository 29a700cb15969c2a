"""Sweep throughput, end to end: `memcal sweep EXPERIMENT --out <fresh file>` in a subprocess.

* experiments/cpu-smoke.toml: 72 tiny-model points on CPU (3 architectures, fp32/bf16, prefill/generate).
* experiments/dryrun-catalogue.toml: the whole grid (924 points, 22 models at real size) takes ~25
  minutes here, so this benchmarks one deterministic shard of it, `--shard 1/22`: one whole group,
  meta-llama/Llama-2-7b-hf, 42 points (b 1/4/16 x s 512..32768 x prefill/generate with 4 new tokens).
  The shard assignment depends only on the experiment file (harness/sweep/_plan.py).

Wall time includes starting the sweep, its fork server's imports (~3 s) and every worker. Points per
minute = points written / median wall seconds * 60 (the CPU clock misses the workers, grandchildren
of this process). No target in issue 7: figures for the docs.
"""
from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

from side_by_side import side_by_side

ROOT = Path(__file__).resolve().parents[2]


def _sweeper(tmp_path: Path, experiment: str, *extra: str):
    counter = itertools.count()
    outs: list[Path] = []

    def run() -> None:
        out = tmp_path / f"round-{next(counter)}.jsonl"
        outs.append(out)
        subprocess.run([sys.executable, "-m", "memcal", "sweep", str(ROOT / experiment), "--out", str(out),
                        "--quiet", *extra], check=True, capture_output=True)
    return run, outs


def _statuses(path: Path) -> Counter:
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return Counter(r["status"] for r in lines if r.get("type") == "point")


def _record(benchmark, cmp, outs: list[Path]) -> None:
    counts = _statuses(outs[-1])
    points = sum(counts.values())
    benchmark.extra_info["points"] = points
    benchmark.extra_info["statuses"] = dict(counts)
    benchmark.extra_info["points_per_minute_wall"] = round(points / cmp.median() * 60, 1)
    benchmark.extra_info["seconds_per_point_wall"] = round(cmp.median() / points, 3)


def test_sweep_cpu_smoke(benchmark, tmp_path):
    run, outs = _sweeper(tmp_path, "experiments/cpu-smoke.toml")
    cmp = side_by_side(benchmark, run, rounds=3, warmup=False)
    _record(benchmark, cmp, outs)
    assert _statuses(outs[-1]) == Counter(ok=72)


def test_sweep_dryrun_catalogue_shard(benchmark, tmp_path):
    run, outs = _sweeper(tmp_path, "experiments/dryrun-catalogue.toml", "--shard", "1/22")
    cmp = side_by_side(benchmark, run, rounds=1, warmup=False)
    _record(benchmark, cmp, outs)
    benchmark.extra_info["subset"] = "--shard 1/22: meta-llama/Llama-2-7b-hf, 42 of the 924 points"
    assert _statuses(outs[-1]) == Counter(ok=42)

"""kill -9 of `memcal sweep` at random moments, then resume: every point measured exactly once, every
line of the file valid JSON, and no worker left running after its sweep died."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.sweep import load_experiment
from tests.sweep_helpers import write_experiment

ROOT = Path(__file__).resolve().parent.parent


def _descendants(pid: int) -> set[int]:
    """Children, grandchildren... of a process, from /proc (Linux)."""
    out, todo = set(), [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in out:
                    out.add(child)
                    todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _sweep(experiment: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "memcal", "sweep", str(experiment), "--out", str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_lines(out: Path, at_least: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if out.exists() and out.read_bytes().count(b"\n") >= at_least:
            return
        time.sleep(0.02)


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_measures_every_point_exactly_once(tmp_path):
    experiment = write_experiment(tmp_path, models=("tiny-a", "tiny-b", "tiny-c"), grids=[dict(
        models=["configs/tiny-a.json", "configs/tiny-b.json", "configs/tiny-c.json"], dtypes=["fp32"],
        batch_sizes=[1, 2, 3], prompt_lengths=[8, 16, 24, 32], phases=["prefill", "generate"], new_tokens=[2])])
    expected = {p.key for p in load_experiment(experiment).points}
    assert len(expected) == 72
    out = tmp_path / "r.jsonl"
    rng = random.Random(20261121)
    counts = []
    for _ in range(3):
        proc = _sweep(experiment, out)
        done = out.read_bytes().count(b"\n") if out.exists() else 0
        _wait_for_lines(out, done + 2, timeout_s=60)  # the fork server has started; points are flowing
        time.sleep(rng.uniform(0.0, 0.4))
        family = _descendants(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in family) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in family if _alive(p)], "workers outlived their sweep"
        counts.append(out.read_bytes().count(b"\n"))
    assert counts[-1] < 73, "the kills came too late to interrupt anything"
    with open(out, "ab") as f:  # and a write torn half-way, as a kill inside os.write would leave it
        f.write(b'{"type":"point","point_id":"0123')
    proc = _sweep(experiment, out)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr.decode()
    assert b"torn last line" in stderr
    assert b"pt/s" not in stderr and b"\r" not in stderr  # no progress bar when not on a terminal
    records = [json.loads(line) for line in out.read_text().splitlines()]  # every line is valid JSON
    assert [r["type"] for r in records].count("header") == 1 and records[0]["type"] == "header"
    keys = [(r["point_id"], r["repeat"]) for r in records[1:]]
    assert len(keys) == len(set(keys)) == 72 and set(keys) == expected
    assert {r["status"] for r in records[1:]} == {"ok"}

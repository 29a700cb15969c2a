"""Results files under concurrency: one writer at a time (flock), the second refused in one line that
names the holder's pid; merge drops a point written twice into one file and says which."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from estimator.errors import MemcalError
from harness.sweep import ResultsWriter, lock_holder, merge_results, read_results
from memcal.cli import main
from tests.test_results import header, record, write

ROOT = Path(__file__).resolve().parents[1]


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    path = write(tmp_path / "r.jsonl", header(), [record(0)])
    with ResultsWriter.append(path, header()):
        assert lock_holder(path) == os.getpid()
        with pytest.raises(MemcalError, match=rf"another memcal writer \(pid {os.getpid()}\)"):
            ResultsWriter.append(path, header())
    with ResultsWriter.append(path, header()) as again:  # released on close
        again.write(record(1))
    assert len(read_results(path).records) == 2 and lock_holder(path) is None


def test_creating_an_existing_file_is_one_line_not_a_traceback(tmp_path):
    path = write(tmp_path / "r.jsonl", header(), [])
    with pytest.raises(MemcalError, match="never overwrites"):
        ResultsWriter.create(path, header())
    with pytest.raises(MemcalError, match="is a directory"):
        ResultsWriter.create(tmp_path, header())


def test_a_torn_tail_is_cut_only_under_the_lock_and_reported(tmp_path):
    path = write(tmp_path / "r.jsonl", header(), [record(0)])
    with open(path, "ab") as f:
        f.write(b'{"type": "point", "tor')
    with ResultsWriter.append(path, header()) as w:
        assert w.repaired_bytes == len(b'{"type": "point", "tor')


_HOLD = """
import sys, time
from harness.sweep import ResultsWriter
w = ResultsWriter.append(sys.argv[1], {})
print("locked", flush=True)
time.sleep(60)
"""


def test_a_sweep_on_a_file_another_process_writes_is_refused_with_its_pid(tmp_path, capsys):
    from tests.sweep_helpers import write_experiment
    exp = write_experiment(tmp_path)
    out = tmp_path / "r.jsonl"
    assert main(["sweep", str(exp), "--out", str(out), "--quiet"]) == 0
    before = out.read_bytes()
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        capsys.readouterr()
        assert main(["sweep", str(exp), "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"pid {holder.pid}" in err and "another memcal writer" in err
    finally:
        holder.kill()
        holder.wait()
    assert out.read_bytes() == before


@pytest.mark.slow
def test_two_sweeps_on_one_file_measure_every_point_once(tmp_path):
    from tests.sweep_helpers import write_experiment
    exp = write_experiment(tmp_path)
    out = tmp_path / "r.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "memcal", "sweep", str(exp), "--out", str(out), "--quiet"]
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while lock_holder(out) is None and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    second = subprocess.run(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True, timeout=300)
    first.wait(timeout=300)
    assert first.returncode == 0, first.stderr.read()
    if second.returncode == 2:  # refused while the first one wrote
        assert f"pid {first.pid}" in second.stderr and second.stderr.strip().count("\n") == 0
    else:  # the first one had finished: nothing left to do
        assert second.returncode == 0
    records = read_results(out).records
    assert len(records) == 16 == len({(r["point_id"], r["repeat"]) for r in records})


def test_merge_drops_a_point_written_twice_in_one_file_and_says_which(tmp_path, capsys):
    a = write(tmp_path / "a.jsonl", header(shard="1/2"), [record(0), record(1), record(0, status="error")])
    b = write(tmp_path / "b.jsonl", header(shard="2/2"), [record(2)])
    merged = merge_results([a, b], tmp_path / "m.jsonl")
    assert [r["point_id"] for r in merged.records] == [f"{i:016x}" for i in range(3)]
    assert merged.records[0]["status"] == "ok"  # the first record of the point is kept
    assert len(merged.dropped) == 1 and f"{0:016x}" in merged.dropped[0] and "a.jsonl" in merged.dropped[0]
    assert main(["merge", str(a), str(b), "--out", str(tmp_path / "m2.jsonl")]) == 0
    captured = capsys.readouterr()
    assert "1 duplicate records dropped" in captured.out and f"point {0:016x}" in captured.err


def test_merge_refuses_a_point_in_two_files(tmp_path, capsys):
    a = write(tmp_path / "a.jsonl", header(), [record(0)])
    b = write(tmp_path / "b.jsonl", header(), [record(0)])
    assert main(["merge", str(a), str(b), "--out", str(tmp_path / "m.jsonl")]) == 2
    assert "is in both" in capsys.readouterr().err
    assert not (tmp_path / "m.jsonl").exists()

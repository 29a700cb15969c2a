"""The dry run of a Llama-3-70B-shaped prefill (b=4, s=8192, bf16): memcal's tracker vs PyTorch's MemTracker.

Both trackers watch the same trace: the model built once under FakeTensorMode (harness.build), the
same prompt ids, the same `run_phase`, MemTracker entered inside the fake mode as memcal's tracker
is. `bare_fake` is the trace with no tracker at all: FakeTensorMode's own cost, which neither tracker
can go below (so MemTracker / bare_fake bounds the speed-up any tracker on this trace can show).

Targets (issue 7): the traced prefill <= 2 s, and >= 15x faster than MemTracker. Run with `make bench`.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from side_by_side import check_target, side_by_side

MODEL = "meta-llama/Meta-Llama-3-70B"
SHAPE = dict(batch=4, prompt_len=8192, dtype="bf16")


@pytest.fixture(scope="module")
def fake_70b():
    from estimator.spec import load_spec
    from estimator.workload import Workload
    from harness.build import build_model
    from harness.phases import make_inputs
    workload = Workload(**SHAPE)
    built = build_model(load_spec(MODEL), workload, "dry-run")
    return built, workload, make_inputs(built, workload)


def _traces(built, workload, ids):
    import torch
    from torch.distributed._tools.mem_tracker import MemTracker

    from harness.phases import run_phase
    from harness.tracker import StorageTracker

    def bare_fake():
        with built.fake_mode:
            run_phase(built, workload, ids)

    def memcal_tracker():
        tracker = StorageTracker()
        tracker.track(built.tensors(), "weights")
        tracker.track([ids], "inputs")
        with built.fake_mode, tracker:
            run_phase(built, workload, ids)
        return tracker.peak_bytes

    def memtracker():
        mem = MemTracker()
        mem.track_external(built.model, ids)
        with built.fake_mode, mem:
            run_phase(built, workload, ids)
        return mem.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]

    return bare_fake, memcal_tracker, memtracker


def test_dryrun_70b_prefill_tracker_vs_memtracker(benchmark, fake_70b):
    bare_fake, memcal_tracker, memtracker = _traces(*fake_70b)
    assert memcal_tracker() == memtracker()  # the same trace, the same peak, to the byte
    cmp = side_by_side(benchmark, memcal_tracker, {"memtracker": memtracker, "bare_fake": bare_fake}, rounds=5)
    for clock in ("wall", "cpu"):
        benchmark.extra_info[f"memtracker_over_memcal_{clock}"] = round(cmp.ratio("memtracker", clock=clock), 3)
        benchmark.extra_info[f"memtracker_over_bare_fake_{clock}"] = round(cmp.ratio("memtracker", "bare_fake", clock), 3)
        benchmark.extra_info[f"memcal_over_bare_fake_{clock}"] = round(cmp.ratio("subject", "bare_fake", clock), 3)
    check_target(benchmark, "70B dry-run prefill trace under memcal's tracker", cmp.median(), at_most=2.0, unit=" s")
    check_target(benchmark, "MemTracker / memcal tracker, same fake trace (wall)", cmp.ratio("memtracker"),
                 at_least=15.0, unit="x")
    check_target(benchmark, "MemTracker / memcal tracker, same fake trace (cpu)", cmp.ratio("memtracker", clock="cpu"),
                 at_least=15.0, unit="x")


def test_dryrun_70b_prefill_measure(benchmark):
    """The whole in-process `measure(...)` (build, protocol, record) once the libraries are imported."""
    from estimator.workload import Workload
    from harness.measure import measure

    def run():
        record = measure(MODEL, Workload(**SHAPE), device="dry-run")
        assert record.ok, record.message
        return record

    cmp = side_by_side(benchmark, run, rounds=5)
    check_target(benchmark, "70B dry-run prefill, measure() end to end (warm process)", cmp.median(),
                 at_most=2.0, unit=" s")


def _cli(*args: str) -> None:
    subprocess.run([sys.executable, *args], check=True, capture_output=True)


def test_dryrun_70b_prefill_cli_cold(benchmark):
    """`memcal measure ... --device dry-run` in a fresh interpreter, beside a bare `import torch`.

    Not a target of issue 7: most of it is importing torch, transformers and (on the first fake
    trace) torch._dynamo; recorded so that the docs can say where a cold run's seconds go."""
    cmp = side_by_side(
        benchmark,
        lambda: _cli("-m", "memcal", "measure", MODEL, "--device", "dry-run", "--batch", "4", "--seq", "8192",
                     "--dtype", "bf16", "--json"),
        {"import_torch": lambda: _cli("-c", "import torch")}, rounds=3)
    benchmark.extra_info["cli_minus_import_torch_wall_s"] = round(cmp.median() - cmp.median("import_torch"), 3)

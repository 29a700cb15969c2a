"""The dry run of a Llama-3-70B-shaped prefill (b=4, s=8192, bf16): memcal's tracker vs PyTorch's MemTracker.

memcal's dry run is `harness.measure.DryRunMode` (FakeTensorMode with a faster cache key and the
storage tracker inside it), entered the way the protocol enters it (`DryRunProbe.context()` and
`.tracking(tracker)`). Beside it, on the same model, prompt ids and `run_phase`:

* `memtracker`: PyTorch's MemTracker on the same trace (stacked on the same DryRunMode): the target;
* `memtracker_stock`: MemTracker on a model built under PyTorch's own FakeTensorMode (how a PyTorch
  user would run it);
* `before`: memcal's dry run before DryRunMode: stock FakeTensorMode, the StorageTracker a second
  dispatch mode on top of it (the before/after of docs/performance.md);
* `bare_fake`, `bare_stock`: the trace with no tracker under DryRunMode and under FakeTensorMode.

Targets (issue 7): the traced prefill <= 2 s, and >= 15x faster than MemTracker. Run with `make bench`.
"""
from __future__ import annotations

import subprocess
import sys
from unittest import mock

import pytest
from side_by_side import check_target, side_by_side

MODEL = "meta-llama/Meta-Llama-3-70B"
SHAPE = dict(batch=4, prompt_len=8192, dtype="bf16")


@pytest.fixture(scope="module")
def fake_70b():
    from torch._subclasses.fake_tensor import FakeTensorMode

    import harness.measure._fakemode as fakemode
    from estimator.spec import load_spec
    from estimator.workload import Workload
    from harness.measure import build_model, make_inputs
    workload, spec = Workload(**SHAPE), load_spec(MODEL)
    built = build_model(spec, workload, "dry-run")
    with mock.patch.object(fakemode, "DryRunMode", FakeTensorMode):
        stock = build_model(spec, workload, "dry-run")
    assert type(built.fake_mode) is fakemode.DryRunMode and type(stock.fake_mode) is FakeTensorMode
    return workload, (built, make_inputs(built, workload)), (stock, make_inputs(stock, workload))


def _traces(workload, ours, stock):
    import torch
    from torch.distributed._tools.mem_tracker import MemTracker

    from harness.measure import DryRunProbe, StorageTracker, run_phase

    def bare(built, ids):
        def run():
            with built.fake_mode:
                run_phase(built, workload, ids)
        return run

    def storage_tracker(built, ids):  # as harness.measure.measuring runs it
        def run():
            tracker = StorageTracker()
            tracker.track(built.tensors(), "weights")
            tracker.track([ids], "inputs")
            probe = DryRunProbe(built.fake_mode)
            with probe.context(), probe.tracking(tracker):
                run_phase(built, workload, ids)
            return tracker.peak_bytes
        return run

    def memtracker(built, ids):
        def run():
            mem = MemTracker()
            mem.track_external(built.model, ids)
            with built.fake_mode, mem:
                run_phase(built, workload, ids)
            return mem.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
        return run

    subject = storage_tracker(*ours)
    baselines = {"memtracker": memtracker(*ours), "memtracker_stock": memtracker(*stock),
                 "before": storage_tracker(*stock), "bare_fake": bare(*ours), "bare_stock": bare(*stock)}
    return subject, baselines


def test_dryrun_70b_prefill_tracker_vs_memtracker(benchmark, fake_70b):
    subject, baselines = _traces(*fake_70b)
    peak = subject()
    for name in ("memtracker", "memtracker_stock", "before"):  # the same trace, the same peak, to the byte
        assert baselines[name]() == peak, name
    cmp = side_by_side(benchmark, subject, baselines, rounds=5)
    for clock in ("wall", "cpu"):
        for name in baselines:
            benchmark.extra_info[f"{name}_over_memcal_{clock}"] = round(cmp.ratio(name, clock=clock), 3)
        for name in ("memtracker", "subject", "bare_stock"):
            label = "memcal" if name == "subject" else name
            benchmark.extra_info[f"{label}_over_bare_fake_{clock}"] = round(cmp.ratio(name, "bare_fake", clock), 3)
    check_target(benchmark, "70B dry-run prefill trace under memcal's tracker", cmp.median(), at_most=2.0, unit=" s")
    for clock in ("wall", "cpu"):
        check_target(benchmark, f"MemTracker / memcal tracker, same fake trace ({clock})",
                     cmp.ratio("memtracker", clock=clock), at_least=15.0, unit="x")
    check_target(benchmark, "MemTracker on PyTorch's FakeTensorMode / memcal tracker (wall)",
                 cmp.ratio("memtracker_stock"), at_least=15.0, unit="x")


def test_dryrun_70b_prefill_measure(benchmark):
    """The whole in-process `measure(...)` (build, protocol, record) once the libraries are imported."""
    from estimator.workload import Workload
    from harness.measure import measure

    def run():
        record = measure(MODEL, Workload(**SHAPE), device="dry-run")
        assert record.ok, record.message
        return record

    cmp = side_by_side(benchmark, run, rounds=5)
    # issue 7 asked for 2 s; issue 14 (the collector frozen around a one-off measure()) for 1.2 s
    check_target(benchmark, "70B dry-run prefill, measure() end to end (warm process)", cmp.median(),
                 at_most=1.2, unit=" s")


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

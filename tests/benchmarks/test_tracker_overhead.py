"""The storage tracker's overhead on a real CPU forward of a tiny model at 2048 tokens, vs the bare forward.

experiments/configs/tiny-llama.json (2 layers, hidden 128, vocab 512), fp32, sdpa, batch 1, a
2048-token prefill, one torch thread (as the CPU sweeps run). Target (issue 7): tracked / bare <= 1.15x.
Run with `make bench`.
"""
from __future__ import annotations

import gc
from pathlib import Path

import pytest
from side_by_side import check_target, side_by_side

TINY_LLAMA = Path(__file__).resolve().parents[2] / "experiments" / "configs" / "tiny-llama.json"


@pytest.fixture(scope="module")
def tiny_2048():
    import torch

    from estimator.spec import load_spec
    from estimator.workload import Workload
    from harness.measure import build_model, make_inputs
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    workload = Workload(batch=1, prompt_len=2048, dtype="fp32", attention="sdpa")
    built = build_model(load_spec(str(TINY_LLAMA)), workload, "cpu")
    yield built, workload, make_inputs(built, workload)
    torch.set_num_threads(threads)


def test_tracker_overhead_tiny_cpu_forward(benchmark, tiny_2048):
    from harness.measure import StorageTracker, run_phase
    built, workload, ids = tiny_2048

    def bare():
        run_phase(built, workload, ids)

    def tracked():
        tracker = StorageTracker()
        tracker.track(built.tensors(), "weights")
        tracker.track([ids], "inputs")
        with tracker:
            run_phase(built, workload, ids)
        return tracker.peak_bytes

    cmp = side_by_side(benchmark, tracked, {"bare": bare}, rounds=40)
    benchmark.extra_info["tracked_over_bare_cpu"] = round(cmp.ratio("subject", "bare", "cpu"), 4)
    check_target(benchmark, "tracker overhead, tiny CPU forward at 2048 tokens (wall)",
                 cmp.ratio("subject", "bare"), at_most=1.15, unit="x")
    check_target(benchmark, "tracker overhead, tiny CPU forward at 2048 tokens (cpu)",
                 cmp.ratio("subject", "bare", "cpu"), at_most=1.15, unit="x")


def test_cpu_point_protocol_overhead(benchmark, tiny_2048):
    """A whole measured CPU point (`run_point`: protocol, tracker, torch.profiler memory events, record)
    vs the bare forward. The garbage collector is frozen as in a sweep worker (harness/sweep/_worker.py):
    otherwise the protocol's gc.collect() with transformers loaded dominates. Not a target; context."""
    from harness.measure import run_phase, run_point
    built, workload, ids = tiny_2048
    gc.collect()
    gc.freeze()
    try:
        cmp = side_by_side(benchmark, lambda: run_point(built, workload),
                           {"bare": lambda: run_phase(built, workload, ids)}, rounds=20)
    finally:
        gc.unfreeze()
    benchmark.extra_info["point_over_bare_wall"] = round(cmp.ratio("subject", "bare"), 4)
    benchmark.extra_info["point_over_bare_cpu"] = round(cmp.ratio("subject", "bare", "cpu"), 4)

"""Before/after for a change to the storage tracker's hot path: two versions of the tracker, side by side.

    git show c7a501b:harness/measure/_tracker.py > /tmp/tracker_before.py
    .venv/bin/python tests/benchmarks/compare_trackers.py /tmp/tracker_before.py --rounds 9 [--memtracker]

Runs, interleaved round by round (the order reversed every other round), the bare trace, the trace
under the `before` tracker and under the working tree's tracker, on the two traces of issue 7: the
Llama-3-70B-shaped dry-run prefill (b=4, s=8192, bf16, fake tensors) and the tiny-llama CPU prefill
(b=1, s=2048, fp32, one torch thread). Prints medians (wall and CPU seconds) and ratios to the bare
trace; both trackers must find the same peak. Not a pytest file: a one-off measurement for the docs.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def _load(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _functions(built, workload, ids, trackers: dict, memtracker: bool) -> dict:
    import torch

    from harness.measure import run_phase

    def context():
        return built.fake_mode if built.fake_mode is not None else contextlib.nullcontext()

    def bare():
        with context():
            run_phase(built, workload, ids)

    def tracked(module):
        def run():
            tracker = module.StorageTracker()
            tracker.track(built.tensors(), "weights")
            tracker.track([ids], "inputs")
            with context(), tracker:
                run_phase(built, workload, ids)
            return tracker.peak_bytes
        return run

    def mem():
        from torch.distributed._tools.mem_tracker import MemTracker
        m = MemTracker()
        m.track_external(built.model, ids)
        with context(), m:
            run_phase(built, workload, ids)
        return m.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]

    fns = {"bare": bare, **{name: tracked(module) for name, module in trackers.items()}}
    if memtracker:
        fns["memtracker"] = mem
    return fns


def _interleave(fns: dict, rounds: int) -> dict[str, list[tuple[float, float]]]:
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for fn in fns.values():  # warm-up
        fn()
    for i in range(rounds):
        for name in (list(fns) if i % 2 == 0 else list(fns)[::-1]):
            gc.collect()
            cpu, wall = time.process_time(), time.perf_counter()
            fns[name]()
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return times


def _report(title: str, times: dict) -> None:
    med = {n: (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v)) for n, v in times.items()}
    print(f"\n{title} ({len(times['bare'])} rounds)")
    print(f"{'':12s} {'wall s':>9s} {'cpu s':>9s} {'wall/bare':>10s} {'cpu/bare':>9s}")
    for name, (wall, cpu) in med.items():
        print(f"{name:12s} {wall:9.4f} {cpu:9.4f} {wall / med['bare'][0]:10.3f} {cpu / med['bare'][1]:9.3f}")
    if "memtracker" in med:
        for name in ("before", "after"):
            print(f"memtracker / {name}: wall {med['memtracker'][0] / med[name][0]:.2f}x, "
                  f"cpu {med['memtracker'][1] / med[name][1]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", help="the older harness/measure/_tracker.py (e.g. from git show)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--memtracker", action="store_true",
                        help="add PyTorch's MemTracker on the 70B trace (~11 s a round)")
    args = parser.parse_args()

    import torch

    from estimator.spec import load_spec
    from estimator.workload import Workload
    from harness.measure import _tracker as after
    from harness.measure import build_model, make_inputs
    trackers = {"before": _load(args.before, "tracker_before"), "after": after}

    wl = Workload(batch=4, prompt_len=8192, dtype="bf16")
    built = build_model(load_spec("meta-llama/Meta-Llama-3-70B"), wl, "dry-run")
    fns = _functions(built, wl, make_inputs(built, wl), trackers, args.memtracker)
    peaks = {fns[n]() for n in fns if n != "bare"}
    assert len(peaks) == 1, peaks
    _report("Llama-3-70B dry-run prefill, b=4 s=8192 bf16", _interleave(fns, args.rounds))
    del built, fns

    torch.set_num_threads(1)
    wl = Workload(batch=1, prompt_len=2048, dtype="fp32")
    built = build_model(load_spec(str(ROOT / "experiments/configs/tiny-llama.json")), wl, "cpu")
    fns = _functions(built, wl, make_inputs(built, wl), trackers, False)
    _report("tiny-llama CPU prefill, b=1 s=2048 fp32, 1 thread", _interleave(fns, args.rounds * 4))


if __name__ == "__main__":
    main()

"""Side-by-side timing for the benchmark suite, and the targets of issue 7.

This machine is shared (2 cores, other jobs running), so an absolute time from one test and another
from a second test minutes later are not comparable. Every comparison here is made in one run:
`side_by_side` lets pytest-benchmark time the subject, and in each round's setup (not timed by
pytest-benchmark) runs and times every baseline first, so a subject round and its baselines' rounds
share the machine's load. Ratios are ratios of medians, on two clocks:

* wall: `time.perf_counter()`;
* cpu: this process's CPU time (`time.process_time()`) plus that of its reaped children
  (`getrusage(RUSAGE_CHILDREN)`), which other jobs on the machine disturb less than the wall clock.
  A sweep's workers are grandchildren that nobody here reaps: for sweeps only the wall clock counts.

A missed target is reported (in `extra_info` and in the summary at the end of `make bench`), not
failed: timings on a shared VM are evidence, not a verdict. `--benchmark-compare-fail` is the gate
for regressions between saved runs.
"""
from __future__ import annotations

import gc
import resource
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["Comparison", "Target", "side_by_side", "check_target", "RESULTS"]

SUBJECT = "subject"


def _cpu_s() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


@dataclass
class Comparison:
    """Per-round (wall, cpu) seconds of the subject and of each baseline, measured interleaved."""

    times: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def median(self, name: str = SUBJECT, clock: str = "wall") -> float:
        return statistics.median(t[0 if clock == "wall" else 1] for t in self.times[name])

    def ratio(self, a: str, b: str = SUBJECT, clock: str = "wall") -> float:
        """median(a) / median(b) on one clock."""
        return self.median(a, clock) / self.median(b, clock)

    def to_info(self) -> dict[str, Any]:
        names = list(self.times)
        return {"rounds": len(self.times[SUBJECT]),
                "order": "each round: gc, every baseline, gc, the subject",
                "wall_median_s": {n: round(self.median(n, "wall"), 6) for n in names},
                "wall_min_s": {n: round(min(t[0] for t in self.times[n]), 6) for n in names},
                "cpu_median_s": {n: round(self.median(n, "cpu"), 6) for n in names}}


def side_by_side(benchmark, subject: Callable[[], Any], baselines: dict[str, Callable[[], Any]] | None = None, *,
                 rounds: int, warmup: bool = True) -> Comparison:
    """Time `subject` with pytest-benchmark and `baselines` round by round beside it; returns the timings.

    With ``warmup`` every function runs once, untimed, first (imports, caches, the first fake trace).
    """
    baselines = baselines or {}
    cmp = Comparison({SUBJECT: [], **{name: [] for name in baselines}})

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        gc.collect()
        cpu, wall = _cpu_s(), time.perf_counter()
        result = fn()
        cmp.times[name].append((time.perf_counter() - wall, _cpu_s() - cpu))
        return result

    if warmup:
        for fn in (*baselines.values(), subject):
            fn()

    def setup() -> None:
        for name, fn in baselines.items():
            timed(name, fn)
        gc.collect()

    def target() -> Any:
        cpu, wall = _cpu_s(), time.perf_counter()
        result = subject()
        cmp.times[SUBJECT].append((time.perf_counter() - wall, _cpu_s() - cpu))
        return result

    benchmark.pedantic(target, setup=setup, rounds=rounds, warmup_rounds=0)
    benchmark.extra_info["side_by_side"] = cmp.to_info()
    return cmp


@dataclass(frozen=True)
class Target:
    """One target of issue 7 and what this run measured for it."""

    test: str
    what: str
    measured: float
    limit: float
    at_most: bool          # True: measured <= limit; False: measured >= limit
    unit: str

    @property
    def met(self) -> bool:
        return self.measured <= self.limit if self.at_most else self.measured >= self.limit

    def line(self) -> str:
        op = "<=" if self.at_most else ">="
        return (f"{'met   ' if self.met else 'MISSED'} {self.what}: {self.measured:.3g}{self.unit} "
                f"(target {op} {self.limit:g}{self.unit})  [{self.test}]")


RESULTS: list[Target] = []  # printed by conftest.py at the end of the session


def check_target(benchmark, what: str, measured: float, *, at_most: float | None = None,
                 at_least: float | None = None, unit: str = "") -> Target:
    """Record a target and whether this run met it (extra_info["targets"], and the session summary)."""
    limit = at_most if at_most is not None else at_least
    target = Target(benchmark.name, what, measured, limit, at_most is not None, unit)
    RESULTS.append(target)
    benchmark.extra_info.setdefault("targets", []).append(
        {"what": what, "measured": round(measured, 6), "limit": limit, "unit": unit,
         "kind": "at_most" if target.at_most else "at_least", "met": target.met})
    return target
